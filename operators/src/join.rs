//! What the join operators share: each side's planned input (stages,
//! event time, keys), lateness per side, and building joined rows.
//!
//! A join has two inputs, port 0 (left) and port 1 (right), each with its
//! own watermark. A row is late when its event time is behind its own
//! side's watermark when it arrives; late rows are dropped and counted.
//! That is what lets a join forget the other side's rows: once the left
//! watermark passes a point, no on-time left row can reach back before it.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, BooleanArray, Int64Array, RecordBatch, StringArray};
use arrow::buffer::ScalarBuffer;
use arrow::compute::{filter_record_batch, interleave, take};
use arrow::datatypes::{Field, FieldRef, SchemaRef};
use datafusion::physical_expr::PhysicalExpr;
use laminar_runtime::{Error, ErrorCode, Result};

use crate::groups::KeyEncoder;
use crate::stage::{apply_all, apply_all_carrying, evaluate_all, Stage};
use crate::time::EventTimeUnit;
use crate::BatchTime;

/// One side of a join, as planned.
#[derive(Debug, Clone)]
pub struct JoinSide {
    /// Filters/projections from the side's input batch to the join input.
    pub pre: Vec<Stage>,
    /// The event-time column in the side's input batch and how it stores
    /// time: lateness is decided on it before any filter runs, and its
    /// values (in ms) are carried through `pre` as the rows' times.
    /// `None` for a regular join, which ignores event time: no row is
    /// late and every row's time is 0.
    pub event_time: Option<(usize, EventTimeUnit)>,
    /// Equi-join keys over the join input (the same types on both sides).
    pub keys: Vec<Arc<dyn PhysicalExpr>>,
    /// Schema of the join input (after `pre`).
    pub schema: SchemaRef,
}

/// One side's batch, ready to probe and store: on-time rows only.
pub(crate) struct SideBatch {
    pub rows: RecordBatch,
    /// Event time of each row, in ms.
    pub times_ms: ScalarBuffer<i64>,
    pub key_arrays: Vec<ArrayRef>,
    /// Rows whose key has a NULL (they match nothing); `None`: none.
    pub null_keys: Option<BooleanArray>,
}

impl SideBatch {
    /// Splits off the rows whose key has a NULL: `(the others, those)`,
    /// either `None` when empty.
    pub(crate) fn split_null_keys(self) -> Result<(Option<SideBatch>, Option<RecordBatch>)> {
        let Some(null_keys) = &self.null_keys else {
            return Ok((Some(self), None));
        };
        let null_rows = filter_record_batch(&self.rows, null_keys)?;
        let keep = arrow::compute::not(null_keys)?;
        if keep.true_count() == 0 {
            return Ok((None, Some(null_rows)));
        }
        let times_ms = self
            .times_ms
            .iter()
            .zip(keep.values().iter())
            .filter_map(|(&t, k)| k.then_some(t))
            .collect();
        let key_arrays = self
            .key_arrays
            .iter()
            .map(|a| Ok(arrow::compute::filter(a, &keep)?))
            .collect::<Result<Vec<_>>>()?;
        Ok((
            Some(SideBatch {
                rows: filter_record_batch(&self.rows, &keep)?,
                times_ms,
                key_arrays,
                null_keys: None,
            }),
            Some(null_rows),
        ))
    }
}

impl JoinSide {
    /// Drops late rows (counted in `late`), runs the stages and evaluates
    /// keys. `None` when no row is left.
    pub(crate) fn prepare(
        &self,
        batch: &RecordBatch,
        time: BatchTime<'_>,
        late: &mut u64,
    ) -> Result<Option<SideBatch>> {
        let Some((time_column, time_unit)) = &self.event_time else {
            return self.prepare_untimed(batch);
        };
        // Shared with the batch's own column where it is in ms already.
        let times_ms = time_unit.array_ms_buffer(batch.column(*time_column).as_ref())?;
        let row_watermark = |i: usize| {
            time.row_watermarks_ms
                .map_or(time.watermark_ms, |w| w[i].max(time.watermark_ms))
        };
        let on_time: Option<BooleanArray> = match time.row_watermarks_ms {
            None if times_ms.iter().all(|&t| t >= time.watermark_ms) => None,
            _ => Some(
                times_ms
                    .iter()
                    .enumerate()
                    .map(|(i, &t)| Some(t >= row_watermark(i)))
                    .collect(),
            ),
        };
        let times: ArrayRef = Arc::new(Int64Array::new(times_ms, None));
        let (batch, times) = match &on_time {
            Some(mask) => {
                let kept = mask.true_count();
                *late += (mask.len() - kept) as u64;
                if kept == 0 {
                    return Ok(None);
                }
                (
                    filter_record_batch(batch, mask)?,
                    arrow::compute::filter(&times, mask)?,
                )
            }
            None => (batch.clone(), times),
        };
        let (rows, times) = apply_all_carrying(&self.pre, &batch, Some(times))?;
        if rows.num_rows() == 0 {
            return Ok(None);
        }
        let times_ms = times
            .expect("carried")
            .as_any()
            .downcast_ref::<Int64Array>()
            .expect("an Int64 carry")
            .values()
            .clone();
        Ok(Some(self.side_batch(rows, times_ms)?))
    }

    /// [`JoinSide::prepare`] for a side without event time.
    fn prepare_untimed(&self, batch: &RecordBatch) -> Result<Option<SideBatch>> {
        let rows = apply_all(&self.pre, batch)?;
        if rows.num_rows() == 0 {
            return Ok(None);
        }
        let times_ms = vec![0; rows.num_rows()].into();
        Ok(Some(self.side_batch(rows, times_ms)?))
    }

    /// Evaluates the keys of prepared rows.
    fn side_batch(&self, rows: RecordBatch, times_ms: ScalarBuffer<i64>) -> Result<SideBatch> {
        let key_arrays = evaluate_all(&self.keys, &rows)?;
        let null_keys = if key_arrays.iter().any(|a| a.null_count() > 0) {
            let mut mask = vec![false; rows.num_rows()];
            for array in &key_arrays {
                if let Some(nulls) = array.nulls() {
                    for (i, valid) in nulls.iter().enumerate() {
                        mask[i] |= !valid;
                    }
                }
            }
            Some(BooleanArray::from(mask))
        } else {
            None
        };
        Ok(SideBatch {
            rows,
            times_ms,
            key_arrays,
            null_keys,
        })
    }

    /// The key fields, as the key encoder stores them (rows with a NULL
    /// key never reach it).
    pub(crate) fn key_fields(&self) -> Result<Vec<FieldRef>> {
        self.keys
            .iter()
            .enumerate()
            .map(|(i, k)| {
                Ok(Arc::new(Field::new(
                    format!("k{i}"),
                    k.data_type(&self.schema)?,
                    false,
                )))
            })
            .collect()
    }
}

/// The key encoder both sides share, after checking that their key types
/// agree.
pub(crate) fn shared_encoder(left: &JoinSide, right: &JoinSide) -> Result<KeyEncoder> {
    let fields = left.key_fields()?;
    let right_fields = right.key_fields()?;
    if fields.len() != right_fields.len()
        || fields
            .iter()
            .zip(&right_fields)
            .any(|(l, r)| l.data_type() != r.data_type())
    {
        return Err(Error::new(
            ErrorCode::Planning,
            "internal: the join's key types differ between its sides",
        ));
    }
    KeyEncoder::new(&fields)
}

/// Gathers rows from several stored batches: `(batch, row)` pairs index
/// into `batches`.
pub(crate) fn gather(
    batches: &[&RecordBatch],
    indices: &[(usize, usize)],
    schema: &SchemaRef,
) -> Result<Vec<ArrayRef>> {
    gather_columns(batches, indices, 0..schema.fields().len())
}

/// [`gather`] of some columns only, in the order given.
pub(crate) fn gather_columns(
    batches: &[&RecordBatch],
    indices: &[(usize, usize)],
    columns: impl IntoIterator<Item = usize>,
) -> Result<Vec<ArrayRef>> {
    columns
        .into_iter()
        .map(|c| {
            let columns: Vec<&dyn Array> = batches.iter().map(|b| b.column(c).as_ref()).collect();
            Ok(interleave(&columns, indices)?)
        })
        .collect()
}

/// What a join emits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum JoinMode {
    /// Joined pairs (and padded rows of outer sides).
    #[default]
    Pairs,
    /// Each left row once, when its first match arrives (`EXISTS`, `IN`).
    LeftSemi,
    /// Each left row that never matched, once no match can come any more
    /// (`NOT EXISTS`, `NOT IN`).
    LeftAnti,
}

/// Rows `indices` of one batch.
pub(crate) fn take_rows(batch: &RecordBatch, indices: &[u32]) -> Result<Vec<ArrayRef>> {
    take_columns(batch, indices, 0..batch.num_columns())
}

/// [`take_rows`] of some columns only, in the order given.
pub(crate) fn take_columns(
    batch: &RecordBatch,
    indices: &[u32],
    columns: impl IntoIterator<Item = usize>,
) -> Result<Vec<ArrayRef>> {
    // Made for the first column arrow's `take` gathers, if any.
    let mut index_array = None;
    columns
        .into_iter()
        .map(|c| {
            let column = batch.column(c);
            if let Some(taken) = column
                .as_string_opt::<i32>()
                .and_then(|s| take_short_strings(s, indices))
            {
                return Ok(Arc::new(taken) as ArrayRef);
            }
            let index_array = index_array
                .get_or_insert_with(|| arrow::array::UInt32Array::from(indices.to_vec()));
            Ok(take(column.as_ref(), index_array, None)?)
        })
        .collect()
}

/// The most bytes a string may have for [`take_short_strings`].
const SHORT_STRING_BYTES: usize = 8;

/// Rows `indices` of a string column without NULLs whose values are all
/// short (a symbol, a code, an id), each copied as one 8-byte word:
/// arrow's `take` calls `memcpy` per value, which costs more than the
/// copy for a 7-byte symbol (a join takes one per output pair). `None`
/// when the column has NULLs or a longer value: arrow's `take` then.
fn take_short_strings(array: &StringArray, indices: &[u32]) -> Option<StringArray> {
    const WORD: usize = SHORT_STRING_BYTES;
    // Every value fits a word: the output is at most a word per row.
    let capacity = indices.len().checked_mul(WORD)?;
    if array.null_count() > 0 || i32::try_from(capacity).is_err() {
        return None;
    }
    let (offsets, values) = (array.value_offsets(), array.value_data());
    let mut out = vec![0u8; capacity + WORD];
    let (mut at, mut all_short) = (0usize, true);
    let mut out_offsets: Vec<i32> = Vec::with_capacity(indices.len() + 1);
    out_offsets.push(0);
    out_offsets.extend(indices.iter().map(|&i| {
        let i = i as usize;
        let (start, stop) = match offsets.get(i..i + 2) {
            Some(&[start, stop]) => (start as usize, stop as usize),
            _ => (0, usize::MAX),
        };
        let len = stop.wrapping_sub(start);
        if len <= WORD {
            // The value as one word; the next value overwrites the bytes
            // past its length, the last one's are cut off.
            let word: [u8; WORD] = match values.get(start..start + WORD) {
                Some(word) => word.try_into().unwrap_or_default(),
                // Near the end of the values: the bytes there are.
                None => {
                    let mut word = [0u8; WORD];
                    word[..len].copy_from_slice(&values[start..stop]);
                    word
                }
            };
            out[at..at + WORD].copy_from_slice(&word);
            at += len;
        } else {
            // Longer, or an index out of bounds: arrow's `take` decides.
            all_short = false;
        }
        at as i32
    }));
    if !all_short {
        return None;
    }
    out.truncate(at);
    // SAFETY: the offsets start at 0 and rise by each taken value's
    // length (at most `capacity`, which fits an i32), so they are valid
    // offsets, and each range of `out` they bound holds exactly the bytes
    // of one value of `array`, a valid string (copied whole: the word's
    // bytes past its length are overwritten or cut); the concatenation of
    // valid UTF-8 strings is valid UTF-8, split at their boundaries.
    let offsets = unsafe { arrow::buffer::OffsetBuffer::new_unchecked(out_offsets.into()) };
    Some(unsafe { StringArray::new_unchecked(offsets, out.into(), None) })
}

/// `n` NULLs for each field of one side (the padding of an outer join).
pub(crate) fn nulls(schema: &SchemaRef, n: usize) -> Vec<ArrayRef> {
    schema
        .fields()
        .iter()
        .map(|f| arrow::array::new_null_array(f.data_type(), n))
        .collect()
}

/// Joined rows that pass the join's own condition (besides the keys), and
/// the mask saying which candidate pairs did (`None`: all of them).
pub(crate) fn filter_pairs(
    filter: Option<&Arc<dyn PhysicalExpr>>,
    rows: RecordBatch,
) -> Result<(RecordBatch, Option<BooleanArray>)> {
    let Some(filter) = filter else {
        return Ok((rows, None));
    };
    match crate::stage::filter_mask(filter, &rows)? {
        Some(mask) => Ok((filter_record_batch(&rows, &mask)?, Some(mask))),
        None => Ok((rows, None)),
    }
}

/// Whether candidate pair `i` passed (see [`filter_pairs`]).
#[inline]
pub(crate) fn passed(mask: Option<&BooleanArray>, i: usize) -> bool {
    mask.is_none_or(|m| m.is_valid(i) && m.value(i))
}

/// Left columns then right columns, as a batch of the joined schema.
pub(crate) fn joined(
    schema: &SchemaRef,
    mut left: Vec<ArrayRef>,
    right: Vec<ArrayRef>,
) -> Result<RecordBatch> {
    left.extend(right);
    RecordBatch::try_new(Arc::clone(schema), left).map_err(|e| {
        Error::new(
            ErrorCode::Execution,
            format!("joined rows do not fit the join's schema: {e}"),
        )
    })
}

/// Batches of stored rows, by sequence number, each freed when its last
/// live row is released (rows are referenced as `(sequence, row)`). A map,
/// not a queue: one long-lived row (an ASOF key's last version) must not
/// keep a slot for every batch after it.
pub(crate) struct StoredBatches<T> {
    slots: hashbrown::HashMap<u64, Slot<T>>,
    next: u64,
    /// Arrow memory of the batches held.
    pub bytes: usize,
}

/// One stored batch.
pub(crate) struct Slot<T> {
    pub rows: RecordBatch,
    live: usize,
    /// Per-batch data of the operator (an outer join's matched flags).
    pub extra: T,
}

impl<T> Default for StoredBatches<T> {
    fn default() -> Self {
        Self {
            slots: hashbrown::HashMap::new(),
            next: 0,
            bytes: 0,
        }
    }
}

impl<T> StoredBatches<T> {
    /// The sequence number the next pushed batch gets.
    pub fn next_seq(&self) -> u64 {
        self.next
    }

    /// Keeps `rows` until `live` rows have been released.
    pub fn push(&mut self, rows: RecordBatch, live: usize, extra: T) -> u64 {
        let seq = self.next;
        self.next += 1;
        if live > 0 {
            self.bytes += rows.get_array_memory_size();
            self.slots.insert(seq, Slot { rows, live, extra });
        }
        seq
    }

    pub fn get(&self, seq: u64) -> &Slot<T> {
        self.slots.get(&seq).expect("a live row's batch is kept")
    }

    pub fn get_mut(&mut self, seq: u64) -> &mut Slot<T> {
        self.slots
            .get_mut(&seq)
            .expect("a live row's batch is kept")
    }

    /// One row of batch `seq` is no longer referenced.
    pub fn release(&mut self, seq: u64) {
        self.release_rows(seq, 1);
    }

    /// `rows` rows of batch `seq` are no longer referenced.
    pub fn release_rows(&mut self, seq: u64, rows: usize) {
        let stored = self
            .slots
            .get_mut(&seq)
            .expect("a live row's batch is kept");
        stored.live -= rows;
        if stored.live == 0 {
            self.bytes -= stored.rows.get_array_memory_size();
            self.slots.remove(&seq);
        }
    }

    /// Gathers rows `(seq, row)` of the stored batches as columns of
    /// `schema`.
    pub fn gather(&self, rows: &[(u64, u32)], schema: &SchemaRef) -> Result<Vec<ArrayRef>> {
        self.gather_columns(rows, 0..schema.fields().len())
    }

    /// [`StoredBatches::gather`] of some columns only, in the order given.
    pub fn gather_columns(
        &self,
        rows: &[(u64, u32)],
        columns: impl IntoIterator<Item = usize>,
    ) -> Result<Vec<ArrayRef>> {
        let mut positions: hashbrown::HashMap<u64, usize> = Default::default();
        let mut batches: Vec<&RecordBatch> = Vec::new();
        // Neighbouring rows mostly come from one batch: look up changes only.
        let mut last: Option<(u64, usize)> = None;
        let indices: Vec<(usize, usize)> = rows
            .iter()
            .map(|&(seq, row)| {
                let position = match last {
                    Some((last_seq, position)) if last_seq == seq => position,
                    _ => {
                        let position = *positions.entry(seq).or_insert_with(|| {
                            batches.push(&self.get(seq).rows);
                            batches.len() - 1
                        });
                        last = Some((seq, position));
                        position
                    }
                };
                (position, row as usize)
            })
            .collect();
        gather_columns(&batches, &indices, columns)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The word-at-a-time string take gives what arrow's `take` gives, on
    /// sliced arrays, empty and multi-byte strings and values near the end
    /// of the buffer; it declines NULLs and values past 8 bytes.
    #[test]
    fn short_strings_are_taken_as_arrow_takes_them() {
        let values = ["", "a", "ab", "SYM0042", "8 bytes!", "é", "日本", "z"];
        let array = StringArray::from_iter_values(values.iter().cycle().take(37));
        for (offset, len) in [(0, 37), (3, 20), (30, 7)] {
            let sliced = array.slice(offset, len);
            let indices: Vec<u32> = (0..len as u32)
                .rev()
                .chain([0, 0, len as u32 - 1])
                .collect();
            let ours = take_short_strings(&sliced, &indices).expect("all short, no NULLs");
            let arrows = take(
                &sliced,
                &arrow::array::UInt32Array::from(indices.clone()),
                None,
            )
            .unwrap();
            assert_eq!(&ours, arrows.as_string::<i32>(), "slice at {offset}");
        }
        assert!(take_short_strings(&array, &[]).is_some_and(|a| a.is_empty()));
        let long = StringArray::from_iter_values(["short", "nine byte"]);
        assert!(take_short_strings(&long, &[0]).is_some());
        assert!(take_short_strings(&long, &[0, 1]).is_none());
        let nulls = StringArray::from(vec![Some("a"), None]);
        assert!(take_short_strings(&nulls, &[0]).is_none());
        assert!(take_short_strings(&long, &[2]).is_none(), "out of bounds");
    }
}
