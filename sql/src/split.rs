//! `split_part(s, 'c', k)` with a one-byte delimiter and a literal
//! position, as one scan of each value's bytes.
//!
//! DataFusion's `split_part` searches for the delimiter with a substring
//! finder, one search per field up to the one asked for. For a one-byte
//! delimiter and the short values it usually splits (paths, URLs, dotted
//! names; Nexmark q22 takes three directories of every bid's URL), the
//! searches' setup costs more than the bytes: [`SplitPart`] reads each
//! value 64 bytes at a time as a bit mask of its delimiters and counts
//! the bits off instead. Same answers: the `k`-th field
//! (1-based), `''` when there are fewer fields, NULL for NULL. Other
//! shapes (a longer or empty delimiter, a position from the end, a column
//! for either) stay DataFusion's.

use std::sync::Arc;

use arrow::array::{Array, AsArray, RecordBatch, StringArray};
use arrow::buffer::OffsetBuffer;
use arrow::datatypes::{DataType, Schema};
use datafusion::common::{Result as DfResult, ScalarValue};
use datafusion::logical_expr::ColumnarValue;
use datafusion::physical_expr::expressions::Literal;
use datafusion::physical_expr::{PhysicalExpr, ScalarFunctionExpr};

use crate::specialized::{rebuilt, utf8_values};

/// A `split_part` call with a one-byte delimiter and a literal position.
#[derive(Debug)]
pub struct SplitPart {
    /// The call as planned: type, display, and the path for scalars.
    call: Arc<dyn PhysicalExpr>,
    values: Arc<dyn PhysicalExpr>,
    delimiter: u8,
    /// 0-based field index.
    field: usize,
}

/// The [`SplitPart`] for `node`, when it is a call this covers.
pub(crate) fn split_part_of(node: &Arc<dyn PhysicalExpr>, schema: &Schema) -> Option<SplitPart> {
    let call = node.as_ref().downcast_ref::<ScalarFunctionExpr>()?;
    if call.name() != "split_part" || node.data_type(schema).ok()? != DataType::Utf8 {
        return None;
    }
    let [values, delimiter, position] = call.args() else {
        return None;
    };
    let literal = |e: &Arc<dyn PhysicalExpr>| {
        e.as_ref()
            .downcast_ref::<Literal>()
            .map(|l| l.value().clone())
    };
    let delimiter = match literal(delimiter)? {
        ScalarValue::Utf8(Some(d)) if d.len() == 1 => d.as_bytes()[0],
        _ => return None,
    };
    let field = match literal(position)? {
        ScalarValue::Int64(Some(k)) if k >= 1 => usize::try_from(k - 1).ok()?,
        _ => return None,
    };
    if values.data_type(schema).ok()? != DataType::Utf8 {
        return None;
    }
    Some(SplitPart {
        call: Arc::clone(node),
        values: Arc::clone(values),
        delimiter,
        field,
    })
}

/// Bit `i` set where `window[i]` is `delimiter`: four 16-byte compares
/// and byte-mask moves (SSE2, which every x86-64 CPU has).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn delimiters(window: &[u8; 64], delimiter: u8) -> u64 {
    use std::arch::x86_64::{_mm_cmpeq_epi8, _mm_loadu_si128, _mm_movemask_epi8, _mm_set1_epi8};
    let mut mask = 0;
    for (i, chunk) in window.chunks_exact(16).enumerate() {
        // SAFETY: SSE2 is part of x86-64; the load reads the chunk's 16
        // bytes, with no alignment required.
        let found = unsafe {
            let bytes = _mm_loadu_si128(chunk.as_ptr().cast());
            _mm_movemask_epi8(_mm_cmpeq_epi8(bytes, _mm_set1_epi8(delimiter as i8)))
        };
        mask |= u64::from(found as u16) << (16 * i);
    }
    mask
}

/// Bit `i` set where `window[i]` is `delimiter`.
#[cfg(not(target_arch = "x86_64"))]
#[inline(always)]
fn delimiters(window: &[u8; 64], delimiter: u8) -> u64 {
    window.iter().enumerate().fold(0, |mask, (i, &byte)| {
        mask | (u64::from(byte == delimiter) << i)
    })
}

/// The bytes of field `field` (0-based) of the value at
/// `data[start..end]` cut at `delimiter`: `start..start` when it has
/// fewer fields. The value is read 64 bytes at a time, as a mask of its
/// delimiters, whose set bits are counted off.
#[inline]
fn field_range(
    data: &[u8],
    start: usize,
    end: usize,
    delimiter: u8,
    field: usize,
) -> (usize, usize) {
    let mut skip = field;
    let mut from = start;
    let mut base = start;
    loop {
        let mut mask = match data.get(base..base + 64) {
            Some(window) => delimiters(window.try_into().expect("64 bytes"), delimiter),
            // The last bytes of the array: the rest of the window is not
            // the value's (masked off below).
            None => {
                let mut window = [0u8; 64];
                window[..data.len() - base].copy_from_slice(&data[base..]);
                delimiters(&window, delimiter)
            }
        };
        let left = end - base;
        if left < 64 {
            mask &= (1 << left) - 1;
        }
        while skip > 0 && mask != 0 {
            from = base + mask.trailing_zeros() as usize + 1;
            mask &= mask - 1;
            skip -= 1;
        }
        if skip == 0 && mask != 0 {
            return (from, base + mask.trailing_zeros() as usize);
        }
        if left <= 64 {
            return if skip == 0 {
                (from, end)
            } else {
                (start, start)
            };
        }
        base += 64;
    }
}

impl SplitPart {
    fn split(&self, values: &StringArray) -> StringArray {
        const WORD: usize = 16;
        let data = values.value_data();
        let offsets = values.value_offsets();
        // Each field is part of its value: the values' bytes bound the
        // output's (plus a word of slack for the copies below).
        let mut out = vec![0u8; (offsets[values.len()] - offsets[0]) as usize + WORD];
        let mut at = 0;
        let mut out_offsets = Vec::with_capacity(values.len() + 1);
        out_offsets.push(0i32);
        let nulls = values.nulls().filter(|nulls| nulls.null_count() > 0);
        out_offsets.extend(offsets.windows(2).enumerate().map(|(row, ends)| {
            let (start, end) = (ends[0] as usize, ends[1] as usize);
            let (from, to) = if nulls.is_some_and(|nulls| nulls.is_null(row)) {
                (start, start)
            } else {
                field_range(data, start, end, self.delimiter, self.field)
            };
            let length = to - from;
            match data.get(from..from + WORD) {
                // A short field as one word: the next field overwrites
                // the bytes past its length, the last one's are cut off.
                Some(word) if length <= WORD => out[at..at + WORD].copy_from_slice(word),
                _ => out[at..at + length].copy_from_slice(&data[from..to]),
            }
            at += length;
            at as i32
        }));
        out.truncate(at);
        debug_assert!(std::str::from_utf8(&out).is_ok());
        // SAFETY: the offsets start at 0 and rise by each field's length
        // (their sum is at most the values' bytes, which fit an i32). Each
        // field is cut from a valid string at its ends or next to an ASCII
        // delimiter byte, so at character boundaries: each is valid UTF-8.
        // A NULL row's field is empty, under the values' null mask.
        let offsets = unsafe { OffsetBuffer::new_unchecked(out_offsets.into()) };
        unsafe { StringArray::new_unchecked(offsets, out.into(), values.nulls().cloned()) }
    }
}

like_its_call!(SplitPart);

impl PhysicalExpr for SplitPart {
    call_methods!();

    fn evaluate(&self, batch: &RecordBatch) -> DfResult<ColumnarValue> {
        let Some(values) = utf8_values(&self.values, batch)? else {
            return self.call.evaluate(batch);
        };
        Ok(ColumnarValue::Array(Arc::new(
            self.split(values.as_string::<i32>()),
        )))
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn PhysicalExpr>>,
    ) -> DfResult<Arc<dyn PhysicalExpr>> {
        let rebuilt = rebuilt(&self.call, children, |call, values| {
            Arc::new(SplitPart {
                call,
                values,
                ..*self
            })
        });
        Ok(rebuilt.unwrap_or(self))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::specialized::specialize;
    use crate::test_util::physical;
    use arrow::array::ArrayRef;
    use arrow::datatypes::Field;

    #[test]
    fn one_byte_splits_give_datafusions_answer() {
        let schema = Schema::new(vec![Field::new("s", DataType::Utf8, true)]);
        let values: ArrayRef = Arc::new(StringArray::from(vec![
            Some("https://www.nexmark.com/abc/de_f/ghi/item.htm?query=1"),
            None,
            Some(""),
            Some("/"),
            Some("a//b/"),
            Some("no delimiter"),
            Some("ß/日本/é"),
        ]));
        let batch = RecordBatch::try_new(Arc::new(schema.clone()), vec![values]).unwrap();
        let physical = |sql: &str| physical(sql, &schema);
        for k in 1..=7 {
            for d in ["/", ".", " "] {
                let sql = format!("split_part(s, '{d}', {k})");
                let plain = physical(&sql);
                let fast = specialize(Arc::clone(&plain), &schema).unwrap();
                assert!(fast.as_ref().is::<SplitPart>(), "{sql}");
                let want = plain.evaluate(&batch).unwrap().into_array(7).unwrap();
                let got = fast.evaluate(&batch).unwrap().into_array(7).unwrap();
                assert_eq!(got.as_ref(), want.as_ref(), "{sql}");
            }
        }
        let long = "/".repeat(63) + "x/" + &"ab/".repeat(40) + "tail";
        let values: ArrayRef = Arc::new(StringArray::from(vec![
            Some("a".repeat(64)),
            Some("a".repeat(63) + "/"),
            Some("a".repeat(64) + "/b"),
            None,
            Some(long.clone()),
            Some("é/".repeat(50)),
            Some(long),
        ]));
        // Sliced, so the values start past the buffer's first byte and
        // the last one ends at its end.
        let values = values.slice(1, 6);
        let batch = RecordBatch::try_new(Arc::new(schema.clone()), vec![values]).unwrap();
        for k in [1, 2, 3, 63, 64, 65, 66, 100, 105, 106, 200] {
            let sql = format!("split_part(s, '/', {k})");
            let plain = physical(&sql);
            let fast = specialize(Arc::clone(&plain), &schema).unwrap();
            let want = plain.evaluate(&batch).unwrap().into_array(6).unwrap();
            let got = fast.evaluate(&batch).unwrap().into_array(6).unwrap();
            assert_eq!(got.as_ref(), want.as_ref(), "{sql}");
        }
        for sql in [
            "split_part(s, '//', 2)",
            "split_part(s, '', 1)",
            "split_part(s, '/', -1)",
            "split_part(s, s, 1)",
        ] {
            let kept = specialize(physical(sql), &schema).unwrap();
            assert!(!kept.as_ref().is::<SplitPart>(), "{sql} stays");
        }
    }
}
