//! Row digests: 128 bits of XXH3 over each row in Arrow's row format.
//!
//! The row format encodes every value injectively (it can be decoded back),
//! so two rows get the same bytes exactly when their values are equal,
//! whatever the arrays' offsets, dictionaries or buffers. A false match
//! between unequal rows needs a 128-bit collision: with a billion rows
//! compared, about 1 in 10^20.

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
    let fields: Vec<SortField> = batch
        .schema()
        .fields()
        .iter()
        .map(|f| SortField::new(f.data_type().clone()))
        .collect();
    if !RowConverter::supports_fields(&fields) {
        return Ok(None);
    }
    let converter = RowConverter::new(fields)?;
    let rows = converter.convert_columns(batch.columns())?;
    Ok(Some(
        (0..rows.num_rows())
            .map(|i| XxHash3_128::oneshot(rows.row(i).as_ref()))
            .collect(),
    ))
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
}
