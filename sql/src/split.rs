//! `split_part(s, 'c', k)` with a one-byte delimiter and a literal
//! position, as one scan of each value's bytes.
//!
//! DataFusion's `split_part` searches for the delimiter with a substring
//! finder, one search per field up to the one asked for. For a one-byte
//! delimiter and the short values it usually splits (paths, URLs, dotted
//! names; Nexmark q22 takes three directories of every bid's URL), the
//! searches' setup costs more than the bytes: [`SplitPart`] counts
//! delimiters in one pass instead. Same answers: the `k`-th field
//! (1-based), `''` when there are fewer fields, NULL for NULL. Other
//! shapes (a longer or empty delimiter, a position from the end, a column
//! for either) stay DataFusion's.

use std::sync::Arc;

use arrow::array::{Array, AsArray, RecordBatch, StringArray, StringBuilder};
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

/// Field `field` of `value` split at `delimiter` (`""` past the last).
/// The delimiter is one byte of a UTF-8 string, so ASCII, and never
/// inside a character: the cuts fall on character boundaries.
#[inline]
fn nth_field(value: &str, delimiter: u8, field: usize) -> &str {
    let mut seen = 0;
    let mut start = 0;
    for (i, &b) in value.as_bytes().iter().enumerate() {
        if b == delimiter {
            if seen == field {
                return value.get(start..i).unwrap_or_default();
            }
            seen += 1;
            start = i + 1;
        }
    }
    if seen == field {
        value.get(start..).unwrap_or_default()
    } else {
        ""
    }
}

impl SplitPart {
    fn split(&self, values: &StringArray) -> StringArray {
        // Each field is part of its value: the values' bytes bound the
        // output's, so it is allocated once.
        let offsets = values.value_offsets();
        let bytes = (offsets[values.len()] - offsets[0]) as usize;
        let mut out = StringBuilder::with_capacity(values.len(), bytes);
        for row in 0..values.len() {
            if values.is_null(row) {
                out.append_null();
            } else {
                out.append_value(nth_field(values.value(row), self.delimiter, self.field));
            }
        }
        out.finish()
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
