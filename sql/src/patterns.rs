//! Regular expressions compiled once per query, not once per batch.
//!
//! DataFusion's `regexp_match` and `regexp_like` compile a literal pattern
//! on every call, that is on every batch: at one row per push, a compile
//! per row (tens of microseconds, more than the rest of the row's work).
//! Planning replaces each call with a literal pattern (and literal flags)
//! by a [`PrecompiledRegex`] that holds the compiled pattern and runs the
//! same kernels' logic (arrow's `regexp_match` and
//! `regexp_is_match_scalar`: same output type, same NULLs, the same
//! special case for an empty pattern). A pattern that does not compile is
//! then a planning error (`LDB-1007`) at `CREATE STREAM`, rather than a
//! failure of every batch once the stream runs. `regexp_match(...)[k]`
//! (`array_element` of it with a literal `k`) finds the one element
//! without building the list, reusing its capture slots from row to row.
//!
//! Other shapes (a pattern column, NULL or `g` flags, other string types)
//! stay DataFusion's.

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, BooleanBufferBuilder, ListBuilder, RecordBatch,
    StringBuilder,
};
use arrow::buffer::{BooleanBuffer, NullBuffer};
use arrow::datatypes::{DataType, Schema};
use datafusion::common::{Result as DfResult, ScalarValue};
use datafusion::logical_expr::ColumnarValue;
use datafusion::physical_expr::expressions::Literal;
use datafusion::physical_expr::{PhysicalExpr, ScalarFunctionExpr};
use laminar_runtime::{Error, ErrorCode, Result};

use crate::captures::{Groups, Pattern};
use crate::specialized::literals;
use regex::Regex;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// `regexp_match`: the capture groups (or the whole match) as a list.
    Match,
    /// `regexp_match(...)[k]`: one element of that list, found without
    /// building it (`array_element`'s rules: 1-based, negative from the
    /// end, NULL out of range).
    Element(i64),
    /// `regexp_like`: whether the value matches.
    Like,
}

/// A `regexp_match` or `regexp_like` call with its pattern compiled.
#[derive(Debug)]
pub struct PrecompiledRegex {
    /// The call as DataFusion planned it: its type, its display, and the
    /// path for what this one does not cover (a scalar value).
    call: Arc<dyn PhysicalExpr>,
    values: Arc<dyn PhysicalExpr>,
    kind: Kind,
    pattern: Pattern,
    /// The flags and pattern together were empty: the kernels then match
    /// every value without compiling.
    empty: bool,
}

/// The [`PrecompiledRegex`] for `node`, when it is a call this covers; an
/// error when its pattern does not compile.
pub(crate) fn precompiled(
    node: &Arc<dyn PhysicalExpr>,
    schema: &Schema,
) -> Result<Option<Arc<dyn PhysicalExpr>>> {
    let Some(call) = node.as_ref().downcast_ref::<ScalarFunctionExpr>() else {
        return Ok(None);
    };
    if let Some(element) = element_of_match(node, call) {
        return Ok(Some(element));
    }
    let name = call.name();
    let kind = match name {
        "regexp_match" => Kind::Match,
        "regexp_like" => Kind::Like,
        _ => return Ok(None),
    };
    let literal = |expr: &Arc<dyn PhysicalExpr>| {
        expr.as_ref()
            .downcast_ref::<Literal>()
            .and_then(|l| match l.value() {
                ScalarValue::Utf8(Some(text)) => Some(text.clone()),
                _ => None,
            })
    };
    let (values, pattern, flags) = match call.args() {
        [values, pattern] => (values, literal(pattern), None),
        [values, pattern, flags] => match literal(flags) {
            Some(flags) => (values, literal(pattern), Some(flags)),
            None => return Ok(None),
        },
        _ => return Ok(None),
    };
    let Some(pattern) = pattern else {
        return Ok(None);
    };
    if values.data_type(schema).ok() != Some(DataType::Utf8) {
        return Ok(None);
    }
    // The `g` flag is an error of DataFusion's own; leave it to say so.
    match (kind, flags.as_deref()) {
        (Kind::Match, Some("g")) => return Ok(None),
        (Kind::Like, Some(flags)) if flags.contains('g') => return Ok(None),
        _ => {}
    }
    let full = match &flags {
        Some(flags) => format!("(?{flags}){pattern}"),
        None => pattern.clone(),
    };
    let regex = Regex::new(&full).map_err(|e| {
        Error::new(
            ErrorCode::Planning,
            format!("{name}: the pattern '{pattern}' is not a valid regular expression: {e}"),
        )
    })?;
    Ok(Some(Arc::new(PrecompiledRegex {
        call: Arc::clone(node),
        values: Arc::clone(values),
        kind,
        empty: full.is_empty(),
        pattern: Pattern::new(regex),
    })))
}

/// `array_element(m, k)` of a precompiled `regexp_match` `m` and a
/// literal `k` (how `regexp_match(...)[k]` is planned).
fn element_of_match(
    node: &Arc<dyn PhysicalExpr>,
    call: &ScalarFunctionExpr,
) -> Option<Arc<dyn PhysicalExpr>> {
    if call.name() != "array_element" {
        return None;
    }
    let [list, index] = call.args() else {
        return None;
    };
    let matched = list.as_ref().downcast_ref::<PrecompiledRegex>()?;
    let index = match index.as_ref().downcast_ref::<Literal>()?.value() {
        ScalarValue::Int64(Some(index)) => *index,
        _ => return None,
    };
    (matched.kind == Kind::Match).then(|| {
        Arc::new(PrecompiledRegex {
            call: Arc::clone(node),
            values: Arc::clone(&matched.values),
            kind: Kind::Element(index),
            pattern: matched.pattern.clone(),
            empty: matched.empty,
        }) as Arc<dyn PhysicalExpr>
    })
}

/// The string argument of `call`, a call of `kind`'s shape: the first
/// argument of `regexp_match`/`regexp_like`, or of the `regexp_match`
/// (planned or precompiled) inside `array_element`.
fn values_of(call: &Arc<dyn PhysicalExpr>, kind: Kind) -> Option<Arc<dyn PhysicalExpr>> {
    let call = call.as_ref().downcast_ref::<ScalarFunctionExpr>()?;
    let (call, name) = match kind {
        Kind::Match => (call, "regexp_match"),
        Kind::Like => (call, "regexp_like"),
        Kind::Element(_) => {
            if call.name() != "array_element" {
                return None;
            }
            let inner = call.args().first()?;
            if let Some(matched) = inner.as_ref().downcast_ref::<PrecompiledRegex>() {
                return (matched.kind == Kind::Match).then(|| Arc::clone(&matched.values));
            }
            (
                inner.as_ref().downcast_ref::<ScalarFunctionExpr>()?,
                "regexp_match",
            )
        }
    };
    (call.name() == name).then(|| call.args().first().cloned())?
}

/// The list `regexp_match` gives for a match: the groups that took part,
/// or the whole match when the pattern has no groups.
fn taking_part<'a>(groups: &'a Groups<'_>) -> impl Iterator<Item = (usize, usize)> + 'a {
    let first = usize::from(groups.len() > 1);
    (first..groups.len()).filter_map(|g| groups.get(g))
}

/// `array_element`'s position of element `index` in a list of `len`.
fn element_position(index: i64, len: usize) -> Option<usize> {
    let len = len as i64;
    let position = if index < 0 { index + len } else { index - 1 };
    (0..len).contains(&position).then_some(position as usize)
}

impl PrecompiledRegex {
    /// Element `index` of what [`PrecompiledRegex::capture`] would give.
    fn element(&self, values: &arrow::array::StringArray, index: i64) -> ArrayRef {
        let mut out = StringBuilder::with_capacity(values.len(), 0);
        let mut groups = self.pattern.groups();
        for value in values.iter() {
            let Some(value) = value else {
                out.append_null();
                continue;
            };
            if self.empty {
                // The list is [""].
                match element_position(index, 1) {
                    Some(_) => out.append_value(""),
                    None => out.append_null(),
                }
                continue;
            }
            if !groups.search(value) {
                out.append_null();
                continue;
            }
            match element_position(index, taking_part(&groups).count()) {
                Some(position) => {
                    let (start, end) = taking_part(&groups).nth(position).expect("counted");
                    out.append_value(&value[start..end]);
                }
                None => out.append_null(),
            }
        }
        Arc::new(out.finish())
    }

    /// arrow's `regexp_match` over a scalar pattern.
    fn capture(&self, values: &arrow::array::StringArray) -> ArrayRef {
        let mut list = ListBuilder::new(StringBuilder::with_capacity(values.len(), 0));
        let mut groups = self.pattern.groups();
        for value in values.iter() {
            match value {
                // Postgres: regexp_match('foo', '') is {""}.
                Some(_) if self.empty => {
                    list.values().append_value("");
                    list.append(true);
                }
                Some(value) if groups.search(value) => {
                    for (start, end) in taking_part(&groups) {
                        list.values().append_value(&value[start..end]);
                    }
                    list.append(true);
                }
                _ => list.append(false),
            }
        }
        Arc::new(list.finish())
    }

    /// arrow's `regexp_is_match_scalar`.
    fn is_match(&self, values: &arrow::array::StringArray) -> ArrayRef {
        let mut result = BooleanBufferBuilder::new(values.len());
        if self.empty {
            result.append_n(values.len(), true);
        } else {
            for i in 0..values.len() {
                result.append(self.pattern.regex().is_match(values.value(i)));
            }
        }
        let nulls = values
            .nulls()
            .map(|n| n.inner().sliced())
            .and_then(|b| NullBuffer::from_unsliced_buffer(b, values.len()));
        Arc::new(BooleanArray::new(BooleanBuffer::from(result), nulls))
    }
}

like_its_call!(PrecompiledRegex);

impl PhysicalExpr for PrecompiledRegex {
    call_methods!();

    fn evaluate(&self, batch: &RecordBatch) -> DfResult<ColumnarValue> {
        let Some(values) = crate::specialized::utf8_values(&self.values, batch)? else {
            return self.call.evaluate(batch);
        };
        let strings = values.as_string::<i32>();
        Ok(ColumnarValue::Array(match self.kind {
            Kind::Match => self.capture(strings),
            Kind::Element(index) => self.element(strings, index),
            Kind::Like => self.is_match(strings),
        }))
    }

    fn with_new_children(
        self: Arc<Self>,
        mut children: Vec<Arc<dyn PhysicalExpr>>,
    ) -> DfResult<Arc<dyn PhysicalExpr>> {
        // Rewrites that renumber columns (a `CASE` projects its batch to
        // the columns it reads, a filter's stage to what it keeps) must
        // keep the compiled pattern: the new call has the same shape, so
        // its values are found where the old one's were. A call of another
        // shape is DataFusion's again.
        let Some(call) = children.pop() else {
            return Ok(self);
        };
        // The compiled pattern and the index hold for a call with the
        // same literals (pattern, flags, index) only.
        if literals(&call) != literals(&self.call) {
            return Ok(call);
        }
        Ok(match values_of(&call, self.kind) {
            Some(values) => Arc::new(PrecompiledRegex {
                call,
                values,
                kind: self.kind,
                pattern: self.pattern.clone(),
                empty: self.empty,
            }),
            None => call,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::specialized::specialize;
    use crate::test_util::physical;
    use arrow::array::StringArray;
    use arrow::datatypes::Field;
    use datafusion::common::tree_node::{Transformed, TreeNode};

    /// Every case against DataFusion's own evaluation of the same call.
    #[test]
    fn precompiled_calls_give_datafusions_results() {
        let schema = Schema::new(vec![Field::new("s", DataType::Utf8, true)]);
        let values: ArrayRef = Arc::new(StringArray::from(vec![
            Some("https://x.com/a?channel_id=42&b=1"),
            None,
            Some("channel_id=7"),
            Some("Apple pie"),
            Some(""),
            Some("abcabc"),
            Some("no match here"),
            Some("ß日本 unicode"),
        ]));
        let batch = RecordBatch::try_new(Arc::new(schema.clone()), vec![values]).unwrap();
        let calls = [
            "regexp_match(s, '(&|^)channel_id=([^&]*)')",
            "regexp_match(s, 'channel_id=[0-9]+')",
            "regexp_match(s, '(a)|(b)')",
            "regexp_match(s, '')",
            "regexp_match(s, 'apple', 'i')",
            "regexp_match(s, '(?P<x>c)(d)?')",
            "regexp_match(s, '[^ ]+$')",
            "regexp_like(s, 'channel_id')",
            "regexp_like(s, '^a', 'i')",
            "regexp_like(s, '')",
            "regexp_like(s, 'x|日本')",
            "regexp_match(s, '(&|^)channel_id=([^&]*)')[2]",
            "regexp_match(s, '(a)|(b)')[1]",
            "regexp_match(s, '(a)|(b)')[2]",
            "regexp_match(s, '(x)?(c)(d)?')[-1]",
            "regexp_match(s, '(x)?(c)(d)?')[0]",
            "regexp_match(s, '(x)?(c)(d)?')[5]",
            "regexp_match(s, 'channel_id=[0-9]+')[1]",
            "regexp_match(s, '')[1]",
            "regexp_match(s, '')[2]",
            "regexp_match(s, 'apple', 'i')[-1]",
        ];
        for call in calls {
            let plain = physical(call, &schema);
            let fast = specialize(Arc::clone(&plain), &schema).unwrap();
            assert!(
                fast.as_ref().downcast_ref::<PrecompiledRegex>().is_some(),
                "{call} is precompiled"
            );
            let want = plain.evaluate(&batch).unwrap().into_array(8).unwrap();
            let got = fast.evaluate(&batch).unwrap().into_array(8).unwrap();
            assert_eq!(got.as_ref(), want.as_ref(), "{call}");
            assert_eq!(got.data_type(), &plain.data_type(&schema).unwrap());
        }
    }

    /// A `CASE` renumbers the columns of its branches to the ones it
    /// reads; the pattern must stay compiled through that rewrite.
    #[test]
    fn renumbered_columns_keep_the_compiled_pattern() {
        use datafusion::physical_expr::expressions::Column;
        let wide = Schema::new(vec![
            Field::new("n", DataType::Int64, true),
            Field::new("s", DataType::Utf8, true),
        ]);
        let narrow = Schema::new(vec![Field::new("s", DataType::Utf8, true)]);
        let values: ArrayRef = Arc::new(StringArray::from(vec![
            Some("a?channel_id=42&b=1"),
            None,
            Some("nothing"),
        ]));
        let batch = RecordBatch::try_new(Arc::new(narrow.clone()), vec![values]).unwrap();
        for call in [
            "regexp_match(s, '(&|^)channel_id=([^&]*)')[2]",
            "regexp_match(s, 'channel_id=[0-9]+')",
            "regexp_like(s, 'channel')",
        ] {
            let fast = specialize(physical(call, &wide), &wide).unwrap();
            let renumbered = fast
                .transform_down(|e| {
                    Ok(match e.as_ref().downcast_ref::<Column>() {
                        Some(c) if c.index() == 1 => {
                            Transformed::yes(Arc::new(Column::new(c.name(), 0)) as _)
                        }
                        _ => Transformed::no(e),
                    })
                })
                .unwrap()
                .data;
            assert!(
                renumbered
                    .as_ref()
                    .downcast_ref::<PrecompiledRegex>()
                    .is_some(),
                "{call} stays precompiled"
            );
            // A rewrite of a literal (another pattern) is DataFusion's call
            // again, not the old pattern under the new text.
            let repatterned = Arc::clone(&renumbered)
                .transform_down(|e| {
                    Ok(match e.as_ref().downcast_ref::<Literal>() {
                        Some(l) if matches!(l.value(), ScalarValue::Utf8(Some(_))) => {
                            Transformed::yes(Arc::new(Literal::new(ScalarValue::Utf8(Some(
                                "z".into(),
                            )))) as _)
                        }
                        _ => Transformed::no(e),
                    })
                })
                .unwrap()
                .data;
            assert!(
                repatterned
                    .as_ref()
                    .downcast_ref::<PrecompiledRegex>()
                    .is_none(),
                "{call} with another pattern"
            );
            let want = physical(call, &narrow)
                .evaluate(&batch)
                .unwrap()
                .into_array(3)
                .unwrap();
            let got = renumbered.evaluate(&batch).unwrap().into_array(3).unwrap();
            assert_eq!(got.as_ref(), want.as_ref(), "{call}");
        }
    }

    #[test]
    fn a_bad_pattern_is_a_planning_error_and_other_shapes_stay() {
        let schema = Schema::new(vec![
            Field::new("s", DataType::Utf8, true),
            Field::new("p", DataType::Utf8, true),
        ]);
        let error =
            specialize(physical("regexp_match(s, '(unclosed')", &schema), &schema).unwrap_err();
        assert_eq!(error.code(), ErrorCode::Planning);
        assert!(error.to_string().contains("(unclosed"), "{error}");
        for call in [
            "regexp_match(s, p)",
            "regexp_match(s, 'a', 'g')",
            "regexp_like(s, 'a', 'gi')",
            "regexp_like(s, NULL)",
        ] {
            let plain = physical(call, &schema);
            let kept = specialize(Arc::clone(&plain), &schema).unwrap();
            assert!(
                kept.as_ref().downcast_ref::<PrecompiledRegex>().is_none(),
                "{call} stays DataFusion's"
            );
        }
    }
}
