//! `CASE WHEN k = 'a' THEN 'x' WHEN k = 'b' THEN 'y' ... ELSE e END` as
//! one evaluation of `k` and a lookup.
//!
//! DataFusion runs a searched `CASE` one `WHEN` at a time: it evaluates
//! the condition over the rows still without an answer, then copies
//! those rows' columns without the ones just answered, for the next
//! `WHEN`. When every `WHEN` compares the same expression with a literal,
//! that is the expression evaluated once per `WHEN` and a filtered copy
//! of the columns per `WHEN` (Nexmark q21: `lower(channel)` against four
//! names, then a pattern's result). [`CaseLookup`] evaluates the
//! expression once, compares it with each literal over the whole batch,
//! gives each row the first `WHEN` it meets, and evaluates the `ELSE`
//! only over the rows left (over all of them when it is a column or a
//! literal, which cost nothing and cannot fail), then takes each row's
//! value from its `THEN` or the `ELSE` in one pass. The rows left are
//! copied for the `ELSE` only in the columns it reads (q21's pattern reads
//! the URL, not the bid's other columns), and string answers are copied
//! into their array directly rather than through arrow's `interleave`,
//! which looks each row's source up twice.
//!
//! Covered: two or more `WHEN`s, each `expr = literal` (either side) with
//! the same non-volatile `expr` and literals of one non-nested type (or
//! the same written `CASE expr WHEN literal ...` with an `ELSE` that is
//! not a literal: DataFusion has a lookup table for the rest), and
//! literal `THEN`s of one type. Same answers as DataFusion's: a NULL
//! `expr` meets no `WHEN`, the first `WHEN` met wins, no `ELSE` is NULL.
//! Anything else, or a batch whose types differ from the literals', is
//! DataFusion's `CASE`.

use std::sync::Arc;

use arrow::array::{
    new_null_array, Array, ArrayRef, AsArray, BooleanArray, RecordBatch, Scalar, StringArray,
};
use arrow::buffer::{BooleanBuffer, NullBuffer, OffsetBuffer};
use arrow::compute::kernels::cmp::eq;
use arrow::compute::{filter_record_batch, interleave};
use arrow::datatypes::DataType;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::{Result as DfResult, ScalarValue};
use datafusion::logical_expr::{ColumnarValue, Operator};
use datafusion::physical_expr::expressions::{BinaryExpr, CaseExpr, Column, Literal};
use datafusion::physical_expr::PhysicalExpr;

/// A `CASE` over equalities of one expression with literals.
#[derive(Debug)]
pub struct CaseLookup {
    /// The `CASE` as planned: type, display, and the path for what this
    /// does not cover.
    call: Arc<dyn PhysicalExpr>,
    key: Arc<dyn PhysicalExpr>,
    /// Each `WHEN`'s literal, as a one-row array.
    whens: Vec<ArrayRef>,
    /// Each `THEN`'s literal, as a one-row array.
    thens: Vec<ArrayRef>,
    otherwise: Option<Arc<dyn PhysicalExpr>>,
    /// The `ELSE` is a column or a literal: evaluated over the whole
    /// batch, with no copy of the rows left.
    otherwise_everywhere: bool,
    /// Otherwise, the columns the `ELSE` reads, and the `ELSE` reading
    /// them as columns 0, 1, ... of a batch of those alone.
    narrowed: Option<(Vec<usize>, Arc<dyn PhysicalExpr>)>,
    /// Written `CASE key WHEN literal ...` (rebuilt in the same form).
    simple: bool,
}

/// The [`CaseLookup`] for `node`, when it is a `CASE` this covers.
pub(crate) fn case_lookup_of(node: &Arc<dyn PhysicalExpr>) -> Option<CaseLookup> {
    let case = node.as_ref().downcast_ref::<CaseExpr>()?;
    if case.when_then_expr().len() < 2 {
        return None;
    }
    // DataFusion answers `CASE k WHEN literal THEN literal` with a lookup
    // table of its own when the `ELSE` is a literal or absent.
    let literal_else = case.else_expr().is_none_or(|e| e.as_ref().is::<Literal>());
    if case.expr().is_some() && literal_else {
        return None;
    }
    let literal = |e: &Arc<dyn PhysicalExpr>| {
        let value = e.as_ref().downcast_ref::<Literal>()?.value();
        (!value.is_null()).then(|| value.to_array().ok())?
    };
    let mut key: Option<&Arc<dyn PhysicalExpr>> = None;
    let mut whens = Vec::new();
    let mut thens = Vec::new();
    for (when, then) in case.when_then_expr() {
        let (side, value) = match case.expr() {
            // `CASE key WHEN literal`: the same comparisons.
            Some(key) => (key, literal(when)?),
            None => {
                let equality = when.as_ref().downcast_ref::<BinaryExpr>()?;
                if *equality.op() != Operator::Eq {
                    return None;
                }
                match (literal(equality.left()), literal(equality.right())) {
                    (None, Some(value)) => (equality.left(), value),
                    (Some(value), None) => (equality.right(), value),
                    _ => return None,
                }
            }
        };
        match key {
            None => key = Some(side),
            Some(key) if key.as_ref() == side.as_ref() => {}
            Some(_) => return None,
        }
        whens.push(value);
        thens.push(literal(then)?);
    }
    let key = key?;
    let same_type = |arrays: &[ArrayRef]| {
        arrays
            .iter()
            .all(|a| a.data_type() == arrays[0].data_type())
    };
    if !same_type(&whens) || !same_type(&thens) || whens[0].data_type().is_nested() {
        return None;
    }
    // Evaluated once instead of once per `WHEN`: a volatile call would
    // draw differently.
    if crate::specialized::volatile(key) {
        return None;
    }
    let otherwise = case.else_expr().cloned();
    let otherwise_everywhere = everywhere(otherwise.as_ref());
    Some(CaseLookup {
        call: Arc::clone(node),
        key: Arc::clone(key),
        whens,
        thens,
        narrowed: narrowed(otherwise.as_ref()),
        otherwise,
        otherwise_everywhere,
        simple: case.expr().is_some(),
    })
}

impl CaseLookup {
    /// The `CASE` over `batch`, or `None` where the batch's types are not
    /// the literals' (DataFusion's `CASE` then answers).
    fn lookup(&self, batch: &RecordBatch) -> DfResult<Option<ArrayRef>> {
        let rows = batch.num_rows();
        let key = self.key.evaluate(batch)?.into_array(rows)?;
        if key.data_type() != self.whens[0].data_type() {
            return Ok(None);
        }
        // Each row's `WHEN`, as an index into `thens`; `thens.len()` for
        // the rows left to the `ELSE`. The last `WHEN` goes first, so the
        // first one met is what stays.
        let left = self.thens.len();
        let mut choice = vec![left; rows];
        for (index, value) in self.whens.iter().enumerate().rev() {
            let met = eq(&key, &Scalar::new(value))?;
            for row in met_rows(&met).set_indices() {
                choice[row] = index;
            }
        }
        let otherwise = match &self.otherwise {
            None => new_null_array(self.thens[0].data_type(), 1),
            Some(otherwise) if self.otherwise_everywhere => {
                otherwise.evaluate(batch)?.into_array(rows)?
            }
            // Every row met a `WHEN`: the `ELSE` is not evaluated at all.
            Some(_) if !choice.contains(&left) => new_null_array(self.thens[0].data_type(), 0),
            Some(otherwise) => {
                let remaining = BooleanArray::from_iter(choice.iter().map(|&c| Some(c == left)));
                let (batch, otherwise) = match &self.narrowed {
                    Some((columns, narrowed)) => (batch.project(columns)?, narrowed),
                    None => (batch.clone(), otherwise),
                };
                let remaining = filter_record_batch(&batch, &remaining)?;
                otherwise
                    .evaluate(&remaining)?
                    .into_array(remaining.num_rows())?
            }
        };
        if otherwise.data_type() != self.thens[0].data_type() {
            return Ok(None);
        }
        if let Some(strings) = self.pick_strings(&choice, &otherwise) {
            return Ok(Some(strings));
        }
        let spread = self.otherwise_everywhere;
        let mut next = 0;
        let picks: Vec<(usize, usize)> = choice
            .iter()
            .enumerate()
            .map(|(row, &c)| {
                if c < left {
                    (c, 0)
                } else if self.otherwise.is_none() {
                    (left, 0)
                } else if spread {
                    (left, row)
                } else {
                    next += 1;
                    (left, next - 1)
                }
            })
            .collect();
        let mut sources: Vec<&dyn Array> = self.thens.iter().map(|a| a.as_ref()).collect();
        sources.push(otherwise.as_ref());
        Ok(Some(interleave(&sources, &picks)?))
    }

    /// The answers as one string array, when the `THEN`s and the `ELSE`
    /// are strings: each row's `THEN` or its `ELSE` value (the `ELSE`'s
    /// rows in order, or row for row when it was evaluated everywhere),
    /// copied in one pass. `None` for other types or over 2 GiB of
    /// characters (then `interleave` answers, or says why not).
    fn pick_strings(&self, choice: &[usize], otherwise: &ArrayRef) -> Option<ArrayRef> {
        let thens = self
            .thens
            .iter()
            .map(|then| Some(then.as_string_opt::<i32>()?.value(0).as_bytes()))
            .collect::<Option<Vec<&[u8]>>>()?;
        let otherwise: Option<&StringArray> = match &self.otherwise {
            Some(_) => Some(otherwise.as_string_opt::<i32>()?),
            None => None,
        };
        let left = thens.len();
        let spread = self.otherwise_everywhere;
        // The `ELSE`'s values read in place: each row's answer costs a
        // few loads and one copy.
        let (offsets_in, bytes_in, nulls_in) = match otherwise {
            Some(o) => (o.value_offsets(), o.value_data(), o.nulls()),
            None => (&[0][..], &[][..], None),
        };
        let longest_then = thens.iter().map(|t| t.len()).max().unwrap_or(0);
        let mut values = Vec::with_capacity(bytes_in.len() + longest_then * choice.len());
        let mut offsets = Vec::with_capacity(choice.len() + 1);
        offsets.push(0i32);
        let mut valid = Vec::with_capacity(choice.len());
        let mut taken = 0;
        for (row, &c) in choice.iter().enumerate() {
            let value = if c < left {
                Some(thens[c])
            } else if otherwise.is_some() {
                let at = if spread { row } else { taken };
                taken += 1;
                nulls_in
                    .is_none_or(|n| n.is_valid(at))
                    .then(|| &bytes_in[offsets_in[at] as usize..offsets_in[at + 1] as usize])
            } else {
                None
            };
            values.extend_from_slice(value.unwrap_or_default());
            valid.push(value.is_some());
            // Wraps past 2 GiB, which the check below then refuses.
            offsets.push(values.len() as i32);
        }
        i32::try_from(values.len()).ok()?;
        let nulls = NullBuffer::from(valid);
        let nulls = (nulls.null_count() > 0).then_some(nulls);
        // SAFETY: the offsets start at 0 and grow to `values.len()`, and
        // every value is a whole copy of a valid string.
        let array = unsafe {
            StringArray::new_unchecked(
                OffsetBuffer::new_unchecked(offsets.into()),
                values.into(),
                nulls,
            )
        };
        Some(Arc::new(array))
    }
}

/// The columns an `ELSE` evaluated over the rows left reads, and the
/// `ELSE` reading them from a batch of those columns alone, in order;
/// `None` for an `ELSE` evaluated everywhere or reading no column.
fn narrowed(
    otherwise: Option<&Arc<dyn PhysicalExpr>>,
) -> Option<(Vec<usize>, Arc<dyn PhysicalExpr>)> {
    let otherwise = otherwise.filter(|o| !everywhere(Some(o)))?;
    let mut columns: Vec<usize> = datafusion::physical_expr::utils::collect_columns(otherwise)
        .iter()
        .map(Column::index)
        .collect();
    columns.sort_unstable();
    columns.dedup();
    if columns.is_empty() {
        return None;
    }
    let narrowed = Arc::clone(otherwise)
        .transform_down(|e| {
            Ok(match e.as_ref().downcast_ref::<Column>() {
                Some(c) => {
                    let at = columns.binary_search(&c.index()).unwrap_or_default();
                    Transformed::yes(Arc::new(Column::new(c.name(), at)) as _)
                }
                None => Transformed::no(e),
            })
        })
        .ok()?
        .data;
    Some((columns, narrowed))
}

/// The rows where `met` is true (not NULL).
fn met_rows(met: &BooleanArray) -> BooleanBuffer {
    match met.nulls() {
        Some(nulls) => met.values() & nulls.inner(),
        None => met.values().clone(),
    }
}

like_its_call!(CaseLookup);

impl PhysicalExpr for CaseLookup {
    fn data_type(&self, input_schema: &arrow::datatypes::Schema) -> DfResult<DataType> {
        self.call.data_type(input_schema)
    }

    fn nullable(&self, input_schema: &arrow::datatypes::Schema) -> DfResult<bool> {
        self.call.nullable(input_schema)
    }

    fn fmt_sql(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.call.fmt_sql(f)
    }

    /// The key and the `ELSE`: rewrites (renumbered columns, compiled
    /// kernels, shared results) reach them, and leave the comparisons
    /// with the literals to the lookup.
    fn children(&self) -> Vec<&Arc<dyn PhysicalExpr>> {
        std::iter::once(&self.key)
            .chain(self.otherwise.as_ref())
            .collect()
    }

    fn evaluate(&self, batch: &RecordBatch) -> DfResult<ColumnarValue> {
        match self.lookup(batch)? {
            Some(values) => Ok(ColumnarValue::Array(values)),
            None => self.call.evaluate(batch),
        }
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn PhysicalExpr>>,
    ) -> DfResult<Arc<dyn PhysicalExpr>> {
        let mut children = children.into_iter();
        let (Some(key), otherwise) = (children.next(), children.next()) else {
            return Ok(self);
        };
        let literal = |value: &ArrayRef| -> DfResult<Arc<dyn PhysicalExpr>> {
            Ok(Arc::new(Literal::new(ScalarValue::try_from_array(
                value, 0,
            )?)))
        };
        let when_then = self
            .whens
            .iter()
            .zip(&self.thens)
            .map(|(when, then)| {
                let when = if self.simple {
                    literal(when)?
                } else {
                    Arc::new(BinaryExpr::new(
                        Arc::clone(&key),
                        Operator::Eq,
                        literal(when)?,
                    ))
                };
                Ok((when, literal(then)?))
            })
            .collect::<DfResult<Vec<_>>>()?;
        let simple = self.simple.then(|| Arc::clone(&key));
        let call: Arc<dyn PhysicalExpr> =
            Arc::new(CaseExpr::try_new(simple, when_then, otherwise.clone())?);
        let otherwise_everywhere = everywhere(otherwise.as_ref());
        Ok(Arc::new(CaseLookup {
            call,
            key,
            whens: self.whens.clone(),
            thens: self.thens.clone(),
            narrowed: narrowed(otherwise.as_ref()),
            otherwise,
            otherwise_everywhere,
            simple: self.simple,
        }))
    }
}

/// Whether an `ELSE` is a column or a literal (see `otherwise_everywhere`).
fn everywhere(otherwise: Option<&Arc<dyn PhysicalExpr>>) -> bool {
    otherwise.is_some_and(|e| e.as_ref().is::<Column>() || e.as_ref().is::<Literal>())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::specialized::specialize;
    use crate::test_util::physical;
    use arrow::array::{Int64Array, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};
    use proptest::prelude::*;

    fn schema() -> Schema {
        Schema::new(vec![
            Field::new("s", DataType::Utf8, true),
            Field::new("n", DataType::Int64, true),
            Field::new("t", DataType::Utf8, true),
        ])
    }

    fn batch(s: Vec<Option<&str>>, n: Vec<Option<i64>>, t: Vec<Option<&str>>) -> RecordBatch {
        RecordBatch::try_new(
            Arc::new(schema()),
            vec![
                Arc::new(StringArray::from(s)),
                Arc::new(Int64Array::from(n)),
                Arc::new(StringArray::from(t)),
            ],
        )
        .unwrap()
    }

    /// DataFusion's `CASE` and the lookup over `batch`.
    fn both(sql: &str, batch: &RecordBatch) -> (ArrayRef, ArrayRef) {
        let schema = schema();
        let plain = physical(sql, &schema);
        let fast = specialize(Arc::clone(&plain), &schema).unwrap();
        assert!(fast.as_ref().is::<CaseLookup>(), "{sql}: {fast}");
        let rows = batch.num_rows();
        (
            plain.evaluate(batch).unwrap().into_array(rows).unwrap(),
            fast.evaluate(batch).unwrap().into_array(rows).unwrap(),
        )
    }

    const CASES: &[&str] = &[
        "CASE WHEN lower(s) = 'apple' THEN '0' WHEN lower(s) = 'google' THEN '1' \
         WHEN lower(s) = 'baidu' THEN '3' ELSE t END",
        "CASE WHEN s = 'a' THEN 1 WHEN 'b' = s THEN 2 WHEN s = 'a' THEN 3 END",
        "CASE WHEN n = 1 THEN 'one' WHEN n = 2 THEN 'two' ELSE 'many' END",
        "CASE WHEN n = 1 THEN 'one' WHEN n = 2 THEN 'two' ELSE concat(t, '!') END",
        "CASE WHEN n % 3 = 0 THEN 10 WHEN n % 3 = 1 THEN 11 ELSE n END",
        // The `ELSE` fails on the rows a `WHEN` took (division by zero),
        // so it must only see the others.
        "CASE WHEN n = 0 THEN 0 WHEN n = 5 THEN 5 ELSE 100 / n END",
        "CASE s WHEN 'a' THEN 1 WHEN 'b' THEN 2 ELSE n END",
        "CASE lower(s) WHEN 'a' THEN 'A' WHEN 'ab' THEN 'AB' ELSE concat(t, '?') END",
        "CASE n WHEN 0 THEN 0 WHEN 5 THEN 5 ELSE 100 / n END",
    ];

    #[test]
    fn lookups_give_datafusions_answers() {
        let batch = batch(
            vec![
                Some("Apple"),
                None,
                Some("a"),
                Some("b"),
                Some("GOOGLE"),
                Some("x"),
            ],
            vec![Some(0), Some(1), None, Some(2), Some(5), Some(7)],
            vec![
                Some("t0"),
                Some("t1"),
                None,
                Some("t3"),
                Some("t4"),
                Some("t5"),
            ],
        );
        for sql in CASES {
            let (want, got) = both(sql, &batch);
            assert_eq!(got.as_ref(), want.as_ref(), "{sql}");
        }
    }

    #[test]
    fn other_cases_stay_datafusions() {
        let schema = schema();
        for sql in [
            "CASE WHEN s = 'a' THEN 1 END",
            "CASE WHEN s = 'a' THEN 1 WHEN t = 'b' THEN 2 END",
            "CASE WHEN s = 'a' THEN 1 WHEN s > 'b' THEN 2 END",
            "CASE WHEN s = 'a' THEN n WHEN s = 'b' THEN 2 END",
            "CASE s WHEN 'a' THEN 1 END",
            "CASE s WHEN 'a' THEN 1 WHEN 'b' THEN 2 END",
            "CASE s WHEN 'a' THEN 1 WHEN 'b' THEN 2 ELSE 3 END",
            "CASE WHEN n + random() = 1 THEN 1 WHEN n + random() = 2 THEN 2 END",
        ] {
            let kept = specialize(physical(sql, &schema), &schema).unwrap();
            assert!(!kept.as_ref().is::<CaseLookup>(), "{sql} stays");
        }
    }

    /// Rewrites reach the key and the `ELSE` (a stage renumbers
    /// columns, the JIT compiles the key) and keep the lookup.
    #[test]
    fn rewritten_children_keep_the_lookup() {
        use datafusion::common::tree_node::{Transformed, TreeNode};
        let schema = schema();
        for (sql, shown) in [
            (
                "CASE WHEN lower(s) = 'a' THEN 'A' WHEN lower(s) = 'b' THEN 'B' ELSE t END",
                "CASE WHEN lower(s@2) = a THEN A WHEN lower(s@2) = b THEN B ELSE t@0 END",
            ),
            (
                "CASE lower(s) WHEN 'a' THEN 'A' WHEN 'b' THEN 'B' ELSE t END",
                "CASE lower(s@2) WHEN a THEN A WHEN b THEN B ELSE t@0 END",
            ),
        ] {
            let fast = specialize(physical(sql, &schema), &schema).unwrap();
            assert_eq!(fast.children().len(), 2, "the key and the ELSE");
            // The columns swapped: `s` read from 2, `t` from 0.
            let swapped = fast
                .transform_down(|e| {
                    Ok(match e.as_ref().downcast_ref::<Column>() {
                        Some(c) if c.index() != 1 => {
                            Transformed::yes(Arc::new(Column::new(c.name(), 2 - c.index())) as _)
                        }
                        _ => Transformed::no(e),
                    })
                })
                .unwrap()
                .data;
            assert!(swapped.as_ref().is::<CaseLookup>());
            let (s, t) = (
                vec![Some("A"), Some("b"), None, Some("c")],
                vec![Some("x"); 4],
            );
            let original = batch(s.clone(), vec![None; 4], t.clone());
            let reordered = batch(t, vec![None; 4], s);
            let want = physical(sql, &schema).evaluate(&original).unwrap();
            let got = swapped.evaluate(&reordered).unwrap();
            assert_eq!(
                got.into_array(4).unwrap().as_ref(),
                want.into_array(4).unwrap().as_ref()
            );
            // It shows as the `CASE` it stands for, over the new columns.
            assert_eq!(swapped.to_string(), shown);
        }
    }

    proptest! {
        #[test]
        fn the_same_answers_as_datafusion(
            rows in proptest::collection::vec(
                (
                    proptest::option::weighted(0.8, "[ab]{0,2}"),
                    proptest::option::weighted(0.8, 0i64..8),
                    proptest::option::weighted(0.8, "[xy]{1,2}"),
                ),
                1..40,
            ),
        ) {
            let batch = batch(
                rows.iter().map(|r| r.0.as_deref()).collect(),
                rows.iter().map(|r| r.1).collect(),
                rows.iter().map(|r| r.2.as_deref()).collect(),
            );
            for sql in CASES.iter().copied().chain([
                "CASE WHEN s = 'a' THEN 'A' WHEN s = '' THEN 'empty' WHEN s = 'ab' THEN 'AB' END",
                "CASE WHEN s = 'b' THEN t WHEN s = 'a' THEN 'A' ELSE s END",
            ]) {
                let schema = schema();
                let plain = physical(sql, &schema);
                let fast = specialize(Arc::clone(&plain), &schema).unwrap();
                let n = batch.num_rows();
                let want = plain.evaluate(&batch).unwrap().into_array(n).unwrap();
                let got = fast.evaluate(&batch).unwrap().into_array(n).unwrap();
                prop_assert_eq!(got.as_ref(), want.as_ref(), "{}", sql);
            }
        }
    }
}
