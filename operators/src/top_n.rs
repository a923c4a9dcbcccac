//! Streaming Top-N and deduplication: `ROW_NUMBER() OVER (PARTITION BY k
//! ORDER BY x) <= N`, emitted as a changelog.
//!
//! Each partition keeps its current best N rows, ordered by the `ORDER BY`
//! key (Arrow's row format, which compares as bytes and honours ASC/DESC
//! and NULLS FIRST/LAST), then by arrival. A batch may push rows into a
//! partition's top N and others out, and shift the rank of those below a
//! newcomer: for every partition the batch touched, the rows whose
//! (row, rank) pair changed are retracted (`_weight = -1`) and the new ones
//! inserted (`+1`). Consolidating the changelog gives the current top N of
//! every partition. Deduplication is the case N = 1 (keep the first row
//! per key with `ORDER BY ts`, the latest with `ORDER BY ts DESC`).
//!
//! State is N rows per partition (row-format bytes), whatever the input's
//! size; a row that does not make its partition's top N costs one
//! comparison with the partition's worst row.
//!
//! Nothing is allocated per row: kept rows' bytes live in one arena (a
//! byte vector compacted when half of it is dead), each partition's rows
//! are a sorted chain of slots in one slot vector (a free list reuses the
//! slots of rows pushed out), and the per-batch bookkeeping lives in
//! scratch vectors that keep their memory.

use std::sync::Arc;

use arrow::array::{ArrayRef, BinaryArray, Int64Array, RecordBatch, UInt64Array};
use arrow::datatypes::{DataType, SchemaRef};
use arrow::row::{RowConverter, SortField};
use datafusion::physical_expr::{PhysicalExpr, PhysicalSortExpr};
use laminar_runtime::Result;

use crate::groups::{GroupTable, KeyEncoder};
use crate::stage::{apply_all, emit_changes, evaluate_all, Stage};
use crate::{BatchTime, Operator};

/// Everything needed to build a [`TopN`] on a shard.
#[derive(Debug, Clone)]
pub struct TopNSpec {
    /// Filters/projections from the source batch to the window input.
    pub pre: Vec<Stage>,
    /// `PARTITION BY` expressions over the window input.
    pub partition_by: Vec<Arc<dyn PhysicalExpr>>,
    /// `ORDER BY` of the window function.
    pub order_by: Vec<PhysicalSortExpr>,
    /// N: rows kept per partition.
    pub limit: usize,
    /// The window input's schema plus the rank column.
    pub ranked_schema: SchemaRef,
    /// Stages above the window function (the rank filter, SELECT list).
    pub post: Vec<Stage>,
}

/// No slot: the end of a chain, an empty partition.
const NONE: u32 = u32::MAX;

/// Bytes in the arena.
#[derive(Clone, Copy)]
struct Span {
    offset: usize,
    len: usize,
}

/// One kept row.
#[derive(Clone, Copy)]
struct Slot {
    /// The `ORDER BY` key, in Arrow's row format.
    order: Span,
    /// The row, in Arrow's row format.
    row: Span,
    arrival: u64,
    /// The partition's next worse row, or `NONE`.
    next: u32,
    /// The partition's next better row, or `NONE`.
    prev: u32,
}

/// The kept rows of every partition.
#[derive(Default)]
struct Kept {
    arena: Vec<u8>,
    /// Arena bytes of rows no longer kept.
    dead_bytes: usize,
    slots: Vec<Slot>,
    free: Vec<u32>,
    /// `[partition]` -> its best row's slot.
    heads: Vec<u32>,
    /// `[partition]` -> its worst row's slot.
    tails: Vec<u32>,
    /// `[partition]` -> rows kept.
    lens: Vec<u32>,
}

impl Kept {
    fn bytes_of(&self, span: Span) -> &[u8] {
        &self.arena[span.offset..span.offset + span.len]
    }

    fn store(&mut self, bytes: &[u8]) -> Span {
        let span = Span {
            offset: self.arena.len(),
            len: bytes.len(),
        };
        self.arena.extend_from_slice(bytes);
        span
    }

    fn ensure_partition(&mut self, partition: usize) {
        if partition >= self.heads.len() {
            self.heads.resize(partition + 1, NONE);
            self.tails.resize(partition + 1, NONE);
            self.lens.resize(partition + 1, 0);
        }
    }

    /// The partition's slots, best first.
    fn chain(&self, partition: usize) -> impl Iterator<Item = u32> + '_ {
        let mut at = self.heads[partition];
        std::iter::from_fn(move || {
            (at != NONE).then(|| {
                let here = at;
                at = self.slots[here as usize].next;
                here
            })
        })
    }

    /// Would a row with this order key enter the partition's top `limit`?
    fn enters(&self, partition: usize, order: &[u8], limit: usize) -> bool {
        if (self.lens[partition] as usize) < limit {
            return true;
        }
        // Full: it must beat the worst (ties keep the earlier arrival).
        let worst = self.tails[partition];
        worst != NONE && order < self.bytes_of(self.slots[worst as usize].order)
    }

    /// Inserts a row in order of (order key, arrival); if that makes more
    /// than `limit`, unlinks the worst and returns its slot (its bytes stay
    /// readable until [`Kept::release`]).
    fn insert(
        &mut self,
        partition: usize,
        order: &[u8],
        row: &[u8],
        arrival: u64,
        limit: usize,
    ) -> Option<u32> {
        let slot = Slot {
            order: self.store(order),
            row: self.store(row),
            arrival,
            next: NONE,
            prev: NONE,
        };
        let index = match self.free.pop() {
            Some(i) => {
                self.slots[i as usize] = slot;
                i
            }
            None => {
                self.slots.push(slot);
                (self.slots.len() - 1) as u32
            }
        };
        let key = (order, arrival);
        let sorts_after = |kept: &Self, at: u32| {
            let other = &kept.slots[at as usize];
            (kept.bytes_of(other.order), other.arrival) > key
        };
        // The slot the new row goes after. A new best row (a dedup keeping
        // the latest) goes first at once; otherwise search from the worst
        // end (a restore appends in order), so neither common case walks
        // the chain.
        let head = self.heads[partition];
        let before = if head == NONE || sorts_after(self, head) {
            NONE
        } else {
            let mut at = self.tails[partition];
            while sorts_after(self, at) {
                at = self.slots[at as usize].prev;
            }
            at
        };
        let after = if before == NONE {
            head
        } else {
            self.slots[before as usize].next
        };
        self.slots[index as usize].prev = before;
        self.slots[index as usize].next = after;
        if before == NONE {
            self.heads[partition] = index;
        } else {
            self.slots[before as usize].next = index;
        }
        if after == NONE {
            self.tails[partition] = index;
        } else {
            self.slots[after as usize].prev = index;
        }
        self.lens[partition] += 1;
        if self.lens[partition] as usize <= limit {
            return None;
        }
        // Unlink the worst: the tail.
        let worst = self.tails[partition];
        let previous = self.slots[worst as usize].prev;
        if previous == NONE {
            self.heads[partition] = NONE;
        } else {
            self.slots[previous as usize].next = NONE;
        }
        self.tails[partition] = previous;
        self.lens[partition] -= 1;
        Some(worst)
    }

    /// Frees slots unlinked by [`Kept::insert`], and compacts the arena
    /// once most of it is dead.
    fn release(&mut self, slots: &[u32]) {
        for &slot in slots {
            let s = self.slots[slot as usize];
            self.dead_bytes += s.order.len + s.row.len;
            self.free.push(slot);
        }
        if self.dead_bytes > 1 << 20 && self.dead_bytes * 2 > self.arena.len() {
            self.compact();
        }
    }

    /// Copies the live rows' bytes into a fresh arena.
    fn compact(&mut self) {
        let mut arena = Vec::with_capacity(self.arena.len() - self.dead_bytes);
        for partition in 0..self.heads.len() {
            let mut at = self.heads[partition];
            while at != NONE {
                let slot = &mut self.slots[at as usize];
                for span in [&mut slot.order, &mut slot.row] {
                    let bytes = &self.arena[span.offset..span.offset + span.len];
                    span.offset = arena.len();
                    arena.extend_from_slice(bytes);
                }
                at = slot.next;
            }
        }
        self.arena = arena;
        self.dead_bytes = 0;
    }

    fn bytes(&self) -> usize {
        self.arena.len()
            + self.slots.capacity() * std::mem::size_of::<Slot>()
            + self.heads.capacity() * 12
    }
}

/// The operator. One instance per stream per shard.
pub struct TopN {
    spec: TopNSpec,
    encoder: KeyEncoder,
    partitions: GroupTable,
    kept: Kept,
    order: RowConverter,
    rows: RowConverter,
    output_schema: SchemaRef,
    arrivals: u64,
    // Per-batch scratch, kept for its memory.
    /// `[partition]` -> the batch it was last touched in (`batches`).
    touched_in: Vec<u64>,
    batches: u64,
    /// Touched partitions and, in `before`, each one's slots before the
    /// batch: `(partition, start, end)` into `before`.
    touched: Vec<(usize, usize, usize)>,
    before: Vec<u32>,
    /// Slots pushed out during the batch.
    unlinked: Vec<u32>,
}

impl std::fmt::Debug for TopN {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TopN")
            .field("limit", &self.spec.limit)
            .field("partitions", &self.kept.heads.len())
            .finish()
    }
}

impl TopN {
    /// Builds the operator. `output_schema` is the stream's: the query's
    /// columns followed by `_weight`.
    pub fn new(spec: TopNSpec, output_schema: SchemaRef) -> Result<Self> {
        let fields = spec.ranked_schema.fields();
        let input_fields = &fields[..fields.len() - 1];
        let partition_fields = crate::groups::key_fields(&spec.partition_by, &spec.ranked_schema)?;
        let order = RowConverter::new(
            spec.order_by
                .iter()
                .map(|s| -> Result<SortField> {
                    Ok(SortField::new_with_options(
                        s.expr.data_type(&spec.ranked_schema)?,
                        s.options,
                    ))
                })
                .collect::<Result<Vec<_>>>()?,
        )?;
        let rows = RowConverter::new(
            input_fields
                .iter()
                .map(|f| SortField::new(f.data_type().clone()))
                .collect(),
        )?;
        let encoder = KeyEncoder::new(&partition_fields)?;
        Ok(Self {
            partitions: encoder.table(),
            encoder,
            kept: Kept::default(),
            order,
            rows,
            output_schema,
            arrivals: 0,
            touched_in: Vec::new(),
            batches: 0,
            touched: Vec::new(),
            before: Vec::new(),
            unlinked: Vec::new(),
            spec,
        })
    }

    /// Rows of the ranked schema from stored rows and their ranks.
    fn ranked_rows(&self, entries: &[(&[u8], u64)]) -> Result<RecordBatch> {
        let parser = self.rows.parser();
        let mut columns: Vec<ArrayRef> = self
            .rows
            .convert_rows(entries.iter().map(|(row, _)| parser.parse(row)))?;
        let ranks = entries.iter().map(|&(_, rank)| rank);
        let rank_type = self
            .spec
            .ranked_schema
            .fields()
            .last()
            .map(|f| f.data_type().clone());
        columns.push(match rank_type {
            Some(DataType::UInt64) => Arc::new(UInt64Array::from_iter_values(ranks)),
            _ => Arc::new(Int64Array::from_iter_values(ranks.map(|r| r as i64))),
        });
        Ok(RecordBatch::try_new(
            Arc::clone(&self.spec.ranked_schema),
            columns,
        )?)
    }
}

impl Operator for TopN {
    fn on_batch(
        &mut self,
        batch: &RecordBatch,
        _time: BatchTime<'_>,
        out: &mut Vec<RecordBatch>,
    ) -> Result<()> {
        let input = apply_all(&self.spec.pre, batch)?;
        let n = input.num_rows();
        if n == 0 {
            return Ok(());
        }
        let partition_arrays = evaluate_all(&self.spec.partition_by, &input)?;
        let order_arrays = self
            .spec
            .order_by
            .iter()
            .map(|s| s.expr.evaluate(&input)?.into_array(n))
            .collect::<datafusion::common::Result<Vec<_>>>()?;
        let order_keys = self.order.convert_columns(&order_arrays)?;
        let row_bytes = self.rows.convert_columns(input.columns())?;
        let keys = self.encoder.encode(&partition_arrays)?;
        let limit = self.spec.limit;
        self.batches += 1;
        self.touched.clear();
        self.before.clear();
        self.unlinked.clear();
        for row in 0..n {
            let partition = self.encoder.group_id(&mut self.partitions, &keys, row);
            self.kept.ensure_partition(partition);
            if partition >= self.touched_in.len() {
                self.touched_in.resize(partition + 1, 0);
            }
            let key = order_keys.row(row);
            let arrival = self.arrivals;
            self.arrivals += 1;
            if !self.kept.enters(partition, key.as_ref(), limit) {
                continue;
            }
            if self.touched_in[partition] != self.batches {
                // First change to this partition in the batch: note its
                // rows as they were.
                self.touched_in[partition] = self.batches;
                let start = self.before.len();
                self.before.extend(self.kept.chain(partition));
                self.touched.push((partition, start, self.before.len()));
            }
            let pushed_out = self.kept.insert(
                partition,
                key.as_ref(),
                row_bytes.row(row).as_ref(),
                arrival,
                limit,
            );
            self.unlinked.extend(pushed_out);
        }
        // Ranks are positions, so a row kept at the same rank is the
        // entry at that position in both lists.
        let kept = &self.kept;
        let row_at = |slot: u32| kept.bytes_of(kept.slots[slot as usize].row);
        let mut retract: Vec<(&[u8], u64)> = Vec::new();
        let mut insert: Vec<(&[u8], u64)> = Vec::new();
        for &(partition, start, end) in &self.touched {
            let old = &self.before[start..end];
            let mut new = kept.chain(partition);
            let mut position = 0;
            loop {
                let (old_slot, new_slot) = (old.get(position).copied(), new.next());
                if old_slot.is_none() && new_slot.is_none() {
                    break;
                }
                let rank = position as u64 + 1;
                let old_row = old_slot.map(row_at);
                let new_row = new_slot.map(row_at);
                if old_row != new_row {
                    retract.extend(old_row.map(|r| (r, rank)));
                    insert.extend(new_row.map(|r| (r, rank)));
                }
                position += 1;
            }
        }
        // Retractions, then insertions, in one batch.
        let retracted = retract.len();
        retract.append(&mut insert);
        let emitted = self.ranked_rows(&retract).and_then(|rows| {
            emit_changes(&self.spec.post, rows, retracted, &self.output_schema, out)
        });
        // Even on an error: the pushed-out rows are no longer kept.
        self.kept.release(&self.unlinked);
        emitted
    }

    fn on_watermark(&mut self, _watermark_ms: i64, _out: &mut Vec<RecordBatch>) -> Result<()> {
        Ok(())
    }

    fn late_rows(&self) -> u64 {
        0
    }

    fn state_bytes(&self) -> usize {
        self.kept.bytes() + self.partitions.bytes()
    }

    fn checkpoints(&self) -> bool {
        true
    }

    /// One batch: each kept row's partition key (`key_<i>`), its order key
    /// and row in Arrow's row format (`order`, `row`), its arrival number,
    /// and the operator's arrival counter (`arrivals`).
    fn snapshot(&mut self) -> Result<Vec<RecordBatch>> {
        let mut ids = Vec::new();
        let mut orders = Vec::new();
        let mut arrivals = Vec::new();
        let mut rows = Vec::new();
        let kept = &self.kept;
        for partition in 0..kept.heads.len() {
            for slot in kept.chain(partition) {
                let slot = &kept.slots[slot as usize];
                ids.push(partition as u32);
                orders.push(kept.bytes_of(slot.order));
                arrivals.push(slot.arrival);
                rows.push(kept.bytes_of(slot.row));
            }
        }
        let mut names = Vec::new();
        let mut columns: Vec<ArrayRef> = Vec::new();
        crate::snapshot::push_keys(
            &self.encoder,
            &self.partitions,
            &ids,
            &mut names,
            &mut columns,
        )?;
        names.extend([
            "order".into(),
            "arrival".into(),
            "row".into(),
            "arrivals".into(),
        ]);
        columns.push(Arc::new(BinaryArray::from_iter_values(orders)));
        columns.push(Arc::new(UInt64Array::from(arrivals)));
        columns.push(Arc::new(BinaryArray::from_iter_values(rows)));
        columns.push(Arc::new(UInt64Array::from_value(self.arrivals, ids.len())));
        if ids.is_empty() {
            // Keep the counter even without rows.
            return Ok(vec![crate::snapshot_batch(
                ["arrivals".to_string()],
                vec![Arc::new(UInt64Array::from(vec![self.arrivals]))],
            )?]);
        }
        Ok(vec![crate::snapshot_batch(names, columns)?])
    }

    fn restore(&mut self, state: &[RecordBatch]) -> Result<()> {
        let Some(batch) = state.first() else {
            return Ok(());
        };
        use crate::snapshot::column;
        let counter: UInt64Array = column(batch, "arrivals")?;
        if batch.num_rows() == 1 && batch.num_columns() == 1 {
            self.arrivals = counter.value(0);
            return Ok(());
        }
        if let Some(&arrivals) = counter.values().first() {
            self.arrivals = arrivals;
        }
        let keys = crate::snapshot::columns_with_prefix(batch, "key_");
        let encoded = self.encoder.encode(&keys)?;
        let orders: BinaryArray = column(batch, "order")?;
        let arrivals: UInt64Array = column(batch, "arrival")?;
        let rows: BinaryArray = column(batch, "row")?;
        for i in 0..batch.num_rows() {
            let partition = self.encoder.group_id(&mut self.partitions, &encoded, i);
            self.kept.ensure_partition(partition);
            // A snapshot holds at most `limit` rows per partition, so
            // nothing is pushed out.
            self.kept.insert(
                partition,
                orders.value(i),
                rows.value(i),
                arrivals.value(i),
                usize::MAX,
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    use rand::{Rng, SeedableRng};

    /// A partition as the old operator kept it: (order key, arrival) -> row.
    type Model = BTreeMap<(Vec<u8>, u64), Vec<u8>>;

    /// The chains keep what a `BTreeMap` of (order key, arrival) capped at
    /// `limit` keeps, in its order, and push out its last entry; compaction
    /// keeps every live row's bytes.
    #[test]
    fn chains_keep_the_best_rows_in_order() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        for limit in [1usize, 2, 3, 10, 50] {
            let mut kept = Kept::default();
            kept.ensure_partition(3);
            let mut model: Vec<Model> = vec![BTreeMap::new(); 4];
            for arrival in 0..20_000u64 {
                let partition = rng.random_range(0..4usize);
                // Few distinct keys: many ties, broken by arrival.
                let order = vec![rng.random_range(0..30u8), 7];
                let row = arrival.to_le_bytes().to_vec();
                let model_part = &mut model[partition];
                let enters = model_part.len() < limit
                    || model_part
                        .last_key_value()
                        .is_some_and(|((worst, _), _)| order < *worst);
                assert_eq!(kept.enters(partition, &order, limit), enters);
                if !enters {
                    continue;
                }
                model_part.insert((order.clone(), arrival), row.clone());
                let expected_out = (model_part.len() > limit)
                    .then(|| model_part.pop_last().expect("over the limit").1);
                let out = kept.insert(partition, &order, &row, arrival, limit);
                assert_eq!(
                    out.map(|slot| kept.bytes_of(kept.slots[slot as usize].row).to_vec()),
                    expected_out
                );
                kept.release(&out.into_iter().collect::<Vec<_>>());
                if arrival % 5_000 == 0 {
                    kept.compact();
                }
                for (p, model_part) in model.iter().enumerate() {
                    if p != partition && arrival % 97 != 0 {
                        continue;
                    }
                    let ours: Vec<Vec<u8>> = kept
                        .chain(p)
                        .map(|s| kept.bytes_of(kept.slots[s as usize].row).to_vec())
                        .collect();
                    let theirs: Vec<Vec<u8>> = model_part.values().cloned().collect();
                    assert_eq!(ours, theirs, "limit {limit}, partition {p}");
                    assert_eq!(kept.lens[p] as usize, theirs.len());
                }
            }
        }
    }
}
