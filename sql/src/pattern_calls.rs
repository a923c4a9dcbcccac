//! `regexp_replace` and `regexp_count` with their pattern compiled once
//! per query.
//!
//! DataFusion compiles a literal pattern of these functions on every
//! call, that is on every batch: 20-100 µs for an ordinary pattern,
//! against well under a microsecond to apply it to a short value, so at
//! one row per push nearly all of a row's time. Planning replaces each
//! call whose pattern (and replacement and flags) are literals by a
//! [`PatternCall`] holding the compiled pattern, with DataFusion's
//! answers: `regexp_replace` replaces the first match, or every match
//! with the `g` flag, and reads `\1` (or `\\1`) in the replacement as
//! group 1; `regexp_count` counts non-overlapping matches; NULL for
//! NULL. A pattern that does not compile is an error at `CREATE STREAM`
//! (`LDB-1007`), not at every batch. Other shapes (a pattern or
//! replacement from a column, `regexp_count` with a start position,
//! other string types) stay DataFusion's.

use std::sync::{Arc, LazyLock};

use arrow::array::{Array, AsArray, Int64Array, RecordBatch, StringArray, StringBuilder};
use arrow::datatypes::{DataType, Schema};
use datafusion::common::{Result as DfResult, ScalarValue};
use datafusion::logical_expr::ColumnarValue;
use datafusion::physical_expr::expressions::Literal;
use datafusion::physical_expr::{PhysicalExpr, ScalarFunctionExpr};

use crate::specialized::{rebuilt, utf8_values};
use laminar_runtime::{Error, ErrorCode, Result};
use regex::Regex;

/// A `regexp_replace` or `regexp_count` call with its pattern compiled.
#[derive(Debug)]
pub struct PatternCall {
    /// The call as planned: type, display, and the path for scalars.
    call: Arc<dyn PhysicalExpr>,
    values: Arc<dyn PhysicalExpr>,
    regex: Regex,
    op: Op,
}

#[derive(Debug, Clone)]
enum Op {
    /// `regexp_replace`: at most `limit` matches (0: all), each replaced
    /// by `replacement` in the `regex` crate's syntax (`${1}`).
    Replace { limit: usize, replacement: String },
    /// `regexp_count`: the number of matches.
    Count,
}

/// The [`PatternCall`] for `node`, when it is a call this covers; an
/// error when its pattern does not compile.
pub(crate) fn pattern_call_of(
    node: &Arc<dyn PhysicalExpr>,
    schema: &Schema,
) -> Result<Option<PatternCall>> {
    let Some(call) = node.as_ref().downcast_ref::<ScalarFunctionExpr>() else {
        return Ok(None);
    };
    let name = call.name();
    if !matches!(name, "regexp_replace" | "regexp_count") {
        return Ok(None);
    }
    let text = |e: &Arc<dyn PhysicalExpr>| match e.as_ref().downcast_ref::<Literal>()?.value() {
        ScalarValue::Utf8(Some(text)) => Some(text.clone()),
        _ => None,
    };
    let args = call.args();
    let Some(values) = args.first() else {
        return Ok(None);
    };
    if values.data_type(schema).ok() != Some(DataType::Utf8) {
        return Ok(None);
    }
    let texts: Option<Vec<String>> = args[1..].iter().map(text).collect();
    let (pattern, op) = match (name, texts.as_deref()) {
        ("regexp_count", Some([pattern])) => (pattern.clone(), Op::Count),
        ("regexp_replace", Some([pattern, replacement, flags @ ..])) if flags.len() <= 1 => {
            // DataFusion's rules: `g` alone replaces every match, other
            // flags go inline (less any `g`, which still means all).
            let (pattern, limit) = match flags.first().map(String::as_str) {
                None => (pattern.clone(), 1),
                Some("g") => (pattern.clone(), 0),
                Some(flags) => (
                    format!("(?{}){pattern}", flags.replace('g', "")),
                    usize::from(!flags.contains('g')),
                ),
            };
            let replacement = posix_groups(replacement);
            (pattern, Op::Replace { limit, replacement })
        }
        _ => return Ok(None),
    };
    if node.data_type(schema).ok()
        != Some(match op {
            Op::Count => DataType::Int64,
            Op::Replace { .. } => DataType::Utf8,
        })
    {
        return Ok(None);
    }
    let regex = Regex::new(&pattern).map_err(|e| {
        Error::new(
            ErrorCode::Planning,
            format!("{name}: the pattern '{pattern}' is not a valid regular expression: {e}"),
        )
    })?;
    Ok(Some(PatternCall {
        call: Arc::clone(node),
        values: Arc::clone(values),
        regex,
        op,
    }))
}

/// `\1` and `\\1` (POSIX groups, as DataFusion reads them) as `${1}`.
fn posix_groups(replacement: &str) -> String {
    static GROUP: LazyLock<Regex> =
        LazyLock::new(|| Regex::new(r"\\{1,2}(\d+)").expect("a valid pattern"));
    GROUP.replace_all(replacement, "$${$1}").into_owned()
}

impl PatternCall {
    fn apply(&self, values: &StringArray) -> Arc<dyn Array> {
        match &self.op {
            Op::Count => Arc::new(
                values
                    .iter()
                    .map(|v| v.map(|v| self.regex.find_iter(v).count() as i64))
                    .collect::<Int64Array>(),
            ),
            Op::Replace { limit, replacement } => {
                let offsets = values.value_offsets();
                let bytes = (offsets[values.len()] - offsets[0]) as usize;
                let mut out = StringBuilder::with_capacity(values.len(), bytes);
                for value in values.iter() {
                    match value {
                        Some(value) => out.append_value(self.regex.replacen(
                            value,
                            *limit,
                            replacement.as_str(),
                        )),
                        None => out.append_null(),
                    }
                }
                Arc::new(out.finish())
            }
        }
    }
}

like_its_call!(PatternCall);

impl PhysicalExpr for PatternCall {
    call_methods!();

    fn evaluate(&self, batch: &RecordBatch) -> DfResult<ColumnarValue> {
        let Some(values) = utf8_values(&self.values, batch)? else {
            return self.call.evaluate(batch);
        };
        Ok(ColumnarValue::Array(self.apply(values.as_string::<i32>())))
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn PhysicalExpr>>,
    ) -> DfResult<Arc<dyn PhysicalExpr>> {
        let rebuilt = rebuilt(&self.call, children, |call, values| {
            Arc::new(PatternCall {
                call,
                values,
                regex: self.regex.clone(),
                op: self.op.clone(),
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
    fn compiled_calls_give_datafusions_answers() {
        let schema = Schema::new(vec![Field::new("s", DataType::Utf8, true)]);
        let values: ArrayRef = Arc::new(StringArray::from(vec![
            Some("https://www.example.com/a/b?x=1"),
            None,
            Some(""),
            Some("12-34 and 56-78"),
            Some("Foo bar FOO baz"),
            Some("ß日本 unicode 日本"),
            Some("aaa"),
        ]));
        let batch = RecordBatch::try_new(Arc::new(schema.clone()), vec![values]).unwrap();
        for sql in [
            r"regexp_replace(s, '^https?://(?:www\.)?([^/]+)/.*$', '\1')",
            r"regexp_replace(s, '(\d+)-(\d+)', '\2-\1')",
            r"regexp_replace(s, '(\d+)-(\d+)', '\2-\1', 'g')",
            r"regexp_replace(s, 'foo', 'x', 'i')",
            r"regexp_replace(s, 'foo', 'x', 'gi')",
            r"regexp_replace(s, 'a', '$0b')",
            r"regexp_replace(s, '', '-', 'g')",
            r"regexp_replace(s, '日本', '', 'g')",
            r"regexp_count(s, 'a')",
            r"regexp_count(s, '[0-9]+')",
            r"regexp_count(s, '(?i)foo')",
            r"regexp_count(s, '')",
        ] {
            let plain = physical(sql, &schema);
            let fast = specialize(Arc::clone(&plain), &schema).unwrap();
            assert!(fast.as_ref().is::<PatternCall>(), "{sql} is compiled");
            let want = plain.evaluate(&batch).unwrap().into_array(7).unwrap();
            let got = fast.evaluate(&batch).unwrap().into_array(7).unwrap();
            assert_eq!(got.as_ref(), want.as_ref(), "{sql}");
        }
    }

    #[test]
    fn a_bad_pattern_is_a_planning_error_and_other_shapes_stay() {
        let schema = Schema::new(vec![
            Field::new("s", DataType::Utf8, true),
            Field::new("p", DataType::Utf8, true),
        ]);
        for sql in [
            "regexp_replace(s, '(open', 'x')",
            "regexp_count(s, '[z-a]')",
        ] {
            let error = specialize(physical(sql, &schema), &schema).unwrap_err();
            assert_eq!(error.code(), ErrorCode::Planning, "{sql}");
            assert!(error.to_string().contains("not a valid regular expression"));
        }
        for sql in [
            "regexp_replace(s, p, 'x')",
            "regexp_replace(s, 'a', p)",
            "regexp_replace(s, 'a', 'b', p)",
            "regexp_count(s, p)",
            "regexp_count(s, 'a', 2)",
        ] {
            let kept = specialize(physical(sql, &schema), &schema).unwrap();
            assert!(!kept.as_ref().is::<PatternCall>(), "{sql} stays");
        }
    }
}
