//! Row digests: 128 bits of XXH3 over an encoding of each row that is
//! equal exactly when the rows' values are.
//!
//! Batches whose columns are all fixed-width primitives, booleans or
//! strings/binaries (the usual shape of operator state) are encoded here:
//! each column gives a null flag byte and its value's bytes (a string its
//! own XXH3-128, so the row stays fixed-width), a NULL's value bytes are
//! zero. Rows are encoded 1,024 at a time into one buffer, then hashed.
//! Any other batch goes through Arrow's row format, which encodes every
//! value injectively but costs about three times as much. Both encodings
//! depend only on the schema, and only batches of equal schemas are
//! compared. A false match between unequal rows needs a 128-bit
//! collision: with a billion rows compared, about 1 in 10^20.

use arrow::array::RecordBatch;
use arrow::row::{RowConverter, SortField};
use laminar_runtime::Result;
use twox_hash::XxHash3_128;

/// A row's digest.
pub type Digest = u128;

/// The digest of every row of `batch`, in order; `None` when the row
/// format cannot encode one of its column types (the caller then writes
/// the batch whole) or the batch has no columns.
pub fn row_digests(batch: &RecordBatch) -> Result<Option<Vec<Digest>>> {
    if batch.num_columns() == 0 {
        return Ok(None);
    }
    if let Some(digests) = fixed_width_digests(batch) {
        return Ok(Some(digests));
    }
    row_format_digests(batch)
}

/// Digests through Arrow's row format (any type it encodes).
fn row_format_digests(batch: &RecordBatch) -> Result<Option<Vec<Digest>>> {
    let fields: Vec<SortField> = batch
        .schema()
        .fields()
        .iter()
        .map(|f| SortField::new(f.data_type().clone()))
        .collect();
    if !RowConverter::supports_fields(&fields) {
        return Ok(None);
    }
    // A batch the row format fails on is written whole, never a failed
    // checkpoint.
    let Ok(converter) = RowConverter::new(fields) else {
        return Ok(None);
    };
    let Ok(rows) = converter.convert_columns(batch.columns()) else {
        return Ok(None);
    };
    Ok(Some(
        (0..rows.num_rows())
            .map(|i| XxHash3_128::oneshot(rows.row(i).as_ref()))
            .collect(),
    ))
}

/// How a column is encoded in a fixed-width row.
enum Encoding<'a> {
    /// `width` bytes of each value from the values buffer.
    Primitive {
        values: &'a [u8],
        width: usize,
    },
    Boolean(&'a arrow::array::BooleanArray),
    /// Each value's own digest.
    Bytes(Vec<Digest>),
}

/// Digests by the fixed-width encoding, or `None` when a column is of
/// another type.
fn fixed_width_digests(batch: &RecordBatch) -> Option<Vec<Digest>> {
    use arrow::array::{Array, AsArray};
    use arrow::datatypes::DataType;

    let rows = batch.num_rows();
    // Owned handles on the buffers, for the primitive columns' bytes.
    let datas: Vec<arrow::array::ArrayData> = batch.columns().iter().map(|c| c.to_data()).collect();
    let mut columns = Vec::with_capacity(batch.num_columns());
    for (column, data) in batch.columns().iter().zip(&datas) {
        let data_type = column.data_type();
        let encoding = match data_type {
            DataType::Boolean => Encoding::Boolean(column.as_boolean()),
            DataType::Utf8 => Encoding::Bytes(bytes_digests(
                column
                    .as_string::<i32>()
                    .iter()
                    .map(|v| v.map(str::as_bytes)),
            )),
            DataType::LargeUtf8 => Encoding::Bytes(bytes_digests(
                column
                    .as_string::<i64>()
                    .iter()
                    .map(|v| v.map(str::as_bytes)),
            )),
            DataType::Binary => Encoding::Bytes(bytes_digests(column.as_binary::<i32>().iter())),
            DataType::LargeBinary => {
                Encoding::Bytes(bytes_digests(column.as_binary::<i64>().iter()))
            }
            t if t.is_primitive() => {
                let width = t.primitive_width()?;
                let values = data.buffers().first()?.as_slice();
                let start = data.offset() * width;
                Encoding::Primitive {
                    values: values.get(start..start + rows * width)?,
                    width,
                }
            }
            _ => return None,
        };
        columns.push((column, encoding));
    }
    let row_bytes: usize = columns
        .iter()
        .map(|(_, e)| {
            1 + match e {
                Encoding::Primitive { width, .. } => *width,
                Encoding::Boolean(_) => 1,
                Encoding::Bytes(_) => size_of::<Digest>(),
            }
        })
        .sum();
    const CHUNK_ROWS: usize = 1024;
    let mut buffer = vec![0u8; row_bytes * CHUNK_ROWS.min(rows)];
    let mut digests = Vec::with_capacity(rows);
    for start in (0..rows).step_by(CHUNK_ROWS) {
        let len = CHUNK_ROWS.min(rows - start);
        let mut at = 0;
        for (column, encoding) in &columns {
            let width = match encoding {
                Encoding::Primitive { width, .. } => *width,
                Encoding::Boolean(_) => 1,
                Encoding::Bytes(_) => size_of::<Digest>(),
            };
            let region = &mut buffer[..len * row_bytes];
            match encoding {
                Encoding::Primitive { values, width } => {
                    let values = &values[start * width..(start + len) * width];
                    for (row, value) in region
                        .chunks_exact_mut(row_bytes)
                        .zip(values.chunks_exact(*width))
                    {
                        row[at + 1..at + 1 + width].copy_from_slice(value);
                    }
                }
                Encoding::Boolean(array) => {
                    for (i, row) in region.chunks_exact_mut(row_bytes).enumerate() {
                        row[at + 1] = u8::from(array.value(start + i));
                    }
                }
                Encoding::Bytes(own) => {
                    for (row, digest) in region.chunks_exact_mut(row_bytes).zip(&own[start..]) {
                        row[at + 1..at + 1 + width].copy_from_slice(&digest.to_le_bytes());
                    }
                }
            }
            // The flag bytes start at zero and only a column with NULLs
            // writes its own.
            if let Some(nulls) = column.nulls().filter(|n| n.null_count() > 0) {
                for (i, row) in region.chunks_exact_mut(row_bytes).enumerate() {
                    let null = nulls.is_null(start + i);
                    row[at] = u8::from(null);
                    if null {
                        row[at + 1..at + 1 + width].fill(0);
                    }
                }
            }
            at += 1 + width;
        }
        digests.extend(
            buffer[..len * row_bytes]
                .chunks_exact(row_bytes)
                .map(XxHash3_128::oneshot),
        );
    }
    Some(digests)
}

fn bytes_digests<'a>(values: impl Iterator<Item = Option<&'a [u8]>>) -> Vec<Digest> {
    values.map(|v| v.map_or(0, XxHash3_128::oneshot)).collect()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{ArrayRef, DictionaryArray, Float64Array, Int64Array, StringArray};
    use arrow::datatypes::Int32Type;

    use super::*;

    fn batch(columns: Vec<(&str, ArrayRef)>) -> RecordBatch {
        RecordBatch::try_from_iter(columns).unwrap()
    }

    #[test]
    fn equal_values_give_equal_digests_whatever_the_layout() {
        let whole = batch(vec![
            (
                "k",
                Arc::new(StringArray::from(vec!["a", "b", "c"])) as ArrayRef,
            ),
            (
                "v",
                Arc::new(Int64Array::from(vec![Some(1), None, Some(3)])),
            ),
        ]);
        let digests = row_digests(&whole).unwrap().unwrap();
        let sliced = row_digests(&whole.slice(1, 2)).unwrap().unwrap();
        assert_eq!(&digests[1..], &sliced[..]);
        assert_ne!(digests[0], digests[1]);
        // A NULL differs from every value, and 0.0 from -0.0 (different
        // bits, which a restored accumulator would see).
        let floats = batch(vec![(
            "f",
            Arc::new(Float64Array::from(vec![Some(0.0), Some(-0.0), None])) as ArrayRef,
        )]);
        let d = row_digests(&floats).unwrap().unwrap();
        assert!(d[0] != d[1] && d[1] != d[2] && d[0] != d[2]);
        // NULLs are equal whatever bytes lie under them.
        let garbage = Int64Array::new(
            vec![5, 7].into(),
            Some(arrow::buffer::NullBuffer::new_null(2)),
        );
        let d = row_digests(&batch(vec![("g", Arc::new(garbage) as ArrayRef)]))
            .unwrap()
            .unwrap();
        assert_eq!(d[0], d[1]);
        // Dictionaries digest by value, not by key.
        let one: DictionaryArray<Int32Type> = vec!["x", "y"].into_iter().collect();
        let two: DictionaryArray<Int32Type> = vec!["y", "x"].into_iter().collect();
        let a = row_digests(&batch(vec![("d", Arc::new(one) as ArrayRef)]))
            .unwrap()
            .unwrap();
        let b = row_digests(&batch(vec![("d", Arc::new(two) as ArrayRef)]))
            .unwrap()
            .unwrap();
        assert_eq!((a[0], a[1]), (b[1], b[0]));
    }

    proptest::proptest! {
        /// The fixed-width encoding tells rows apart exactly as the row
        /// format does: equal digests for equal rows (whatever the
        /// offsets and the bytes under NULLs), different ones otherwise.
        #[test]
        fn the_fast_encoding_tells_rows_apart_like_the_row_format(
            rows in proptest::collection::vec(
                (proptest::option::of(0i64..3), proptest::option::of(0u8..3), proptest::bool::ANY, 0u8..3),
                1..60,
            ),
            offset in 0usize..5,
        ) {
            use arrow::array::BooleanArray;
            let padded: Vec<_> = std::iter::repeat_n((Some(9), Some(9), true, 9), offset)
                .chain(rows.iter().copied())
                .collect();
            let batch = batch(vec![
                ("i", Arc::new(Int64Array::from_iter(padded.iter().map(|r| r.0))) as ArrayRef),
                ("s", Arc::new(StringArray::from_iter(padded.iter().map(|r| r.1.map(|v| "ab".repeat(v as usize)))))),
                ("b", Arc::new(BooleanArray::from_iter(padded.iter().map(|r| Some(r.2))))),
                ("f", Arc::new(Float64Array::from_iter_values(padded.iter().map(|r| f64::from(r.3) - 1.0)))),
            ])
            .slice(offset, rows.len());
            let fast = fixed_width_digests(&batch).unwrap();
            let exact = row_format_digests(&batch).unwrap().unwrap();
            for i in 0..rows.len() {
                for j in 0..rows.len() {
                    proptest::prop_assert_eq!(fast[i] == fast[j], exact[i] == exact[j]);
                    proptest::prop_assert_eq!(fast[i] == fast[j], rows[i] == rows[j]);
                }
            }
        }
    }
}
