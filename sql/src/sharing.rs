//! One evaluation of a costly expression that a `WHERE` and the `SELECT`
//! after it both compute.
//!
//! `SELECT CASE ... ELSE regexp_match(url, p)[2] END ... WHERE
//! regexp_match(url, p)[2] IS NOT NULL` runs the pattern over every row
//! for the filter and again over the rows the filter keeps. DataFusion's
//! own common-subexpression pass works within one plan node, so it does
//! not join the two. Here, before the stages are compiled, such an
//! expression is computed once, ahead of the filter, as an extra column;
//! the filter and the projections read the column instead, and columns
//! that only the shared expression read are dropped before the filter
//! copies its rows.
//!
//! Only expressions the filter evaluates on every row are shared (not
//! those in the second operand of `AND`/`OR`, in a `CASE` branch, ...):
//! computing them ahead of the filter then does no work, and raises no
//! error, that the filter would not. Volatile functions are never shared.
//! What counts as costly: a precompiled pattern, a specialized call
//! (`crate::specialized`), or a function that
//! returns strings, lists or other non-primitive values; cheap arithmetic
//! stays where it is, where the JIT can fuse it.

use std::collections::BTreeSet;
use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::logical_expr::Operator;
use datafusion::physical_expr::expressions::{
    BinaryExpr, CastExpr, Column, InListExpr, IsNotNullExpr, IsNullExpr, NegativeExpr, NotExpr,
    TryCastExpr,
};
use datafusion::physical_expr::utils::collect_columns;
use datafusion::physical_expr::{PhysicalExpr, ScalarFunctionExpr};
use laminar_operators::stage::Stage;

use crate::patterns::PrecompiledRegex;

/// A stage and the schema of the batches it reads.
pub(crate) type Staged = (Stage, SchemaRef);

/// Rewrites `stages` so that each costly expression a filter shares with
/// the projections after it is evaluated once, and says how many were.
/// The last stage's output schema does not change.
pub(crate) fn share(mut stages: Vec<Staged>) -> (Vec<Staged>, usize) {
    let mut index = 0;
    let mut shared = 0;
    while index < stages.len() {
        if let Some((rewritten, count)) = share_filter(&stages, index) {
            // The widening projection went in before the filter.
            stages = rewritten;
            index += 1;
            shared += count;
        }
        index += 1;
    }
    if shared > 0 {
        prune(&mut stages);
    }
    (stages, shared)
}

/// The stages with the filter at `filter` sharing what it can, and how
/// many expressions it shares; `None` when it shares nothing.
fn share_filter(stages: &[Staged], filter: usize) -> Option<(Vec<Staged>, usize)> {
    let (Stage::Filter(predicate), input) = &stages[filter] else {
        return None;
    };
    let mut candidates = Vec::new();
    unconditional(predicate, input, &mut candidates);
    if candidates.is_empty() {
        return None;
    }
    // Where each candidate is used: which projection stages after the
    // filter compute it, their columns traced back to the filter's input
    // through the columns each projection passes on.
    let mut lineage = identity(input);
    let mut last_use = vec![None; candidates.len()];
    for (offset, (stage, _)) in stages[filter + 1..].iter().enumerate() {
        let Stage::Project { exprs, .. } = stage else {
            break;
        };
        for expr in exprs {
            for (k, candidate) in candidates.iter().enumerate() {
                if contains(expr, candidate, &lineage) {
                    last_use[k] = Some(filter + 1 + offset);
                }
            }
        }
        lineage = exprs.iter().map(|e| traced(e, &lineage)).collect();
    }
    let mut shared: Vec<(Arc<dyn PhysicalExpr>, usize)> = candidates
        .into_iter()
        .zip(last_use)
        .filter_map(|(c, last)| last.map(|last| (c, last)))
        .collect();
    let last = shared.iter().map(|(_, last)| *last).max()?;
    // Larger first: one candidate may hold another (the filter computes
    // `f(g(x))` and, elsewhere, `g(x)`), and replacing the inner one
    // first would hide the outer one.
    shared.sort_by_key(|(expr, _)| std::cmp::Reverse(size(expr)));

    let width = input.fields().len();
    let fields: Vec<Field> = shared
        .iter()
        .enumerate()
        .map(|(j, (expr, _))| {
            Field::new(
                format!("__laminar_shared_{j}"),
                expr.data_type(input).ok()?,
                expr.nullable(input).ok()?,
            )
            .into()
        })
        .collect::<Option<Vec<_>>>()?;

    // The filter reads the shared columns, appended after its input's.
    let mut predicate = Arc::clone(predicate);
    for (j, (expr, _)) in shared.iter().enumerate() {
        predicate = replace(predicate, expr, (width + j, &fields[j]), &identity(input));
    }

    // Each projection up to the last use reads them (traced as above) and
    // all but the last pass them on at the end of their output.
    let mut projections = Vec::new();
    let mut lineage = identity(input);
    let mut carried_at = width;
    for (position, (stage, stage_input)) in
        stages.iter().enumerate().take(last + 1).skip(filter + 1)
    {
        let Stage::Project { exprs, schema } = stage else {
            unreachable!("uses are found in projections only");
        };
        let mut new_exprs: Vec<Arc<dyn PhysicalExpr>> = exprs
            .iter()
            .map(|e| {
                shared
                    .iter()
                    .enumerate()
                    .fold(Arc::clone(e), |e, (j, (s, _))| {
                        replace(e, s, (carried_at + j, &fields[j]), &lineage)
                    })
            })
            .collect();
        let mut new_schema = Arc::clone(schema);
        if position < last {
            for (j, field) in fields.iter().enumerate() {
                new_exprs.push(Arc::new(Column::new(field.name(), carried_at + j)));
            }
            new_schema = widen(schema, &fields);
        }
        // The first one's input is the filter's, widened below.
        let new_input = if position == filter + 1 {
            Arc::clone(stage_input)
        } else {
            widen(stage_input, &fields)
        };
        lineage = exprs.iter().map(|e| traced(e, &lineage)).collect();
        carried_at = exprs.len();
        projections.push((
            Stage::Project {
                exprs: new_exprs,
                schema: new_schema,
            },
            new_input,
        ));
    }

    // Ahead of the filter: its input's columns, then the shared values.
    let mut widening_exprs: Vec<Arc<dyn PhysicalExpr>> = input
        .fields()
        .iter()
        .enumerate()
        .map(|(i, f)| Arc::new(Column::new(f.name(), i)) as Arc<dyn PhysicalExpr>)
        .collect();
    widening_exprs.extend(shared.iter().map(|(expr, _)| Arc::clone(expr)));
    let widened = widen(input, &fields);
    let mut out: Vec<Staged> = stages[..filter].to_vec();
    out.push((
        Stage::Project {
            exprs: widening_exprs,
            schema: Arc::clone(&widened),
        },
        Arc::clone(input),
    ));
    out.push((Stage::Filter(predicate), Arc::clone(&widened)));
    for (position, (stage, stage_input)) in projections.into_iter().enumerate() {
        out.push((
            stage,
            if position == 0 {
                Arc::clone(&widened)
            } else {
                stage_input
            },
        ));
    }
    out.extend(stages[last + 1..].iter().cloned());
    Some((out, shared.len()))
}

/// Drops the columns of each projection but the last that no later stage
/// reads, so that a filter does not copy them (a column that only a
/// shared expression read, for one). Stops at the first stage, counting
/// back, that is neither a filter nor a projection.
fn prune(stages: &mut [Staged]) {
    // The columns of the current stage's output that later stages read;
    // `None`: all of them (the stream's output).
    let mut needed: Option<BTreeSet<usize>> = None;
    for k in (0..stages.len()).rev() {
        let reads = match &stages[k].0 {
            Stage::Filter(predicate) => {
                let Some(mut set) = needed.take() else {
                    return;
                };
                set.extend(collect_columns(predicate).iter().map(Column::index));
                set
            }
            Stage::Project { exprs, schema } => {
                if let Some(keep) = &needed {
                    if keep.len() < exprs.len() {
                        let renumber: Vec<Option<usize>> = {
                            let mut to = vec![None; exprs.len()];
                            for (position, &i) in keep.iter().enumerate() {
                                to[i] = Some(position);
                            }
                            to
                        };
                        let narrowed: SchemaRef = Arc::new(Schema::new_with_metadata(
                            keep.iter()
                                .map(|&i| Arc::clone(&schema.fields()[i]))
                                .collect::<Vec<_>>(),
                            schema.metadata().clone(),
                        ));
                        let exprs = keep.iter().map(|&i| Arc::clone(&exprs[i])).collect();
                        if !renumber_from(stages, k + 1, &renumber, &narrowed) {
                            return;
                        }
                        stages[k].0 = Stage::Project {
                            exprs,
                            schema: narrowed,
                        };
                    }
                }
                let Stage::Project { exprs, .. } = &stages[k].0 else {
                    unreachable!("a projection");
                };
                exprs
                    .iter()
                    .flat_map(|e| collect_columns(e).into_iter().map(|c| c.index()))
                    .collect()
            }
            Stage::Unnest { .. } => return,
        };
        needed = Some(reads);
    }
}

/// Makes the stages from `start` read `schema`, the output of the stage
/// before with column `i` now at `to[i]`: through filters (which pass
/// their input on) up to and including the next projection. `false`, with
/// nothing changed, where a column could not be renumbered.
fn renumber_from(
    stages: &mut [Staged],
    start: usize,
    to: &[Option<usize>],
    schema: &SchemaRef,
) -> bool {
    let mut rewritten = Vec::new();
    for (stage, _) in &stages[start..] {
        match stage {
            Stage::Filter(predicate) => {
                let Some(p) = renumbered(Arc::clone(predicate), to, schema) else {
                    return false;
                };
                rewritten.push(Stage::Filter(p));
            }
            Stage::Project { exprs, schema: out } => {
                let Some(exprs) = exprs
                    .iter()
                    .map(|e| renumbered(Arc::clone(e), to, schema))
                    .collect::<Option<Vec<_>>>()
                else {
                    return false;
                };
                rewritten.push(Stage::Project {
                    exprs,
                    schema: Arc::clone(out),
                });
                break;
            }
            Stage::Unnest { .. } => return false,
        }
    }
    for (offset, stage) in rewritten.into_iter().enumerate() {
        stages[start + offset] = (stage, Arc::clone(schema));
    }
    true
}

/// What each column of a stage's input is, as an expression over the
/// filter's input; `None` where it is not computed from it alone.
type Lineage = Vec<Option<Arc<dyn PhysicalExpr>>>;

/// The lineage of the filter's input itself.
fn identity(input: &Schema) -> Lineage {
    input
        .fields()
        .iter()
        .enumerate()
        .map(|(i, f)| Some(Arc::new(Column::new(f.name(), i)) as Arc<dyn PhysicalExpr>))
        .collect()
}

/// The number of nodes in `expr`.
fn size(expr: &Arc<dyn PhysicalExpr>) -> usize {
    let mut nodes = 0;
    let _ = expr.apply(|_| {
        nodes += 1;
        Ok(TreeNodeRecursion::Continue)
    });
    nodes
}

/// `schema` with `fields` appended.
fn widen(schema: &SchemaRef, fields: &[Field]) -> SchemaRef {
    let mut all: Vec<Arc<Field>> = schema.fields().iter().cloned().collect();
    all.extend(fields.iter().cloned().map(Arc::new));
    Arc::new(Schema::new_with_metadata(all, schema.metadata().clone()))
}

/// Collects the costly subexpressions of `expr` that are evaluated on
/// every row whenever `expr` is (the outermost of them).
fn unconditional(
    expr: &Arc<dyn PhysicalExpr>,
    schema: &Schema,
    found: &mut Vec<Arc<dyn PhysicalExpr>>,
) {
    if costly(expr, schema) {
        if !found.iter().any(|f| f.as_ref() == expr.as_ref()) {
            found.push(Arc::clone(expr));
        }
        return;
    }
    let any = expr.as_ref();
    if let Some(binary) = any.downcast_ref::<BinaryExpr>() {
        unconditional(binary.left(), schema, found);
        // The right operand of AND and OR may be skipped.
        if !matches!(binary.op(), Operator::And | Operator::Or) {
            unconditional(binary.right(), schema, found);
        }
    } else if let Some(list) = any.downcast_ref::<InListExpr>() {
        unconditional(list.expr(), schema, found);
    } else if let Some(call) = any.downcast_ref::<ScalarFunctionExpr>() {
        // Arguments are evaluated before the call, unless it is one that
        // evaluates them lazily.
        if !call.fun().short_circuits() {
            for arg in call.args() {
                unconditional(arg, schema, found);
            }
        }
    } else if any.is::<IsNullExpr>()
        || any.is::<IsNotNullExpr>()
        || any.is::<NotExpr>()
        || any.is::<CastExpr>()
        || any.is::<TryCastExpr>()
        || any.is::<NegativeExpr>()
    {
        for child in expr.children() {
            unconditional(child, schema, found);
        }
    }
}

fn costly(expr: &Arc<dyn PhysicalExpr>, schema: &Schema) -> bool {
    let pattern = expr.as_ref().is::<PrecompiledRegex>();
    if !crate::specialized::is_specialized(expr) && !expr.as_ref().is::<ScalarFunctionExpr>() {
        return false;
    }
    // A volatile call anywhere inside (`random()` in a pattern's input
    // too) must be drawn where it was.
    !crate::specialized::volatile(expr)
        && !collect_columns(expr).is_empty()
        && (pattern
            || expr
                .data_type(schema)
                .is_ok_and(|t| !t.is_primitive() && !t.is_null() && t != DataType::Boolean))
}

/// `expr` over the filter's input: its columns replaced by what they are
/// (a column passed on, or what an earlier projection computed, such as
/// DataFusion's `__common_expr_1`); `None` when one is not known.
fn traced(
    expr: &Arc<dyn PhysicalExpr>,
    lineage: &[Option<Arc<dyn PhysicalExpr>>],
) -> Option<Arc<dyn PhysicalExpr>> {
    let mut missing = false;
    let result = Arc::clone(expr)
        .transform_up(|e| {
            let Some(column) = e.as_ref().downcast_ref::<Column>() else {
                return Ok(Transformed::no(e));
            };
            match lineage.get(column.index()).cloned().flatten() {
                Some(source) => Ok(Transformed::yes(source)),
                None => {
                    missing = true;
                    Ok(Transformed::no(e))
                }
            }
        })
        .ok()?
        .data;
    (!missing).then_some(result)
}

/// `expr` with column `i` read as column `to[i]` of `schema`.
fn renumbered(
    expr: Arc<dyn PhysicalExpr>,
    to: &[Option<usize>],
    schema: &Schema,
) -> Option<Arc<dyn PhysicalExpr>> {
    let columns: Lineage = to
        .iter()
        .map(|i| i.map(|i| Arc::new(Column::new(schema.field(i).name(), i)) as _))
        .collect();
    traced(&expr, &columns)
}

/// Whether `expr` computes `shared` somewhere.
fn contains(
    expr: &Arc<dyn PhysicalExpr>,
    shared: &Arc<dyn PhysicalExpr>,
    lineage: &[Option<Arc<dyn PhysicalExpr>>],
) -> bool {
    let mut found = false;
    let _ = expr.apply(|e| {
        if traced(e, lineage).is_some_and(|t| t.as_ref() == shared.as_ref()) {
            found = true;
            return Ok(TreeNodeRecursion::Stop);
        }
        Ok(TreeNodeRecursion::Continue)
    });
    found
}

/// `expr` with every place that computes `shared` reading the column
/// `(index, field)`.
fn replace(
    expr: Arc<dyn PhysicalExpr>,
    shared: &Arc<dyn PhysicalExpr>,
    (index, field): (usize, &Field),
    lineage: &[Option<Arc<dyn PhysicalExpr>>],
) -> Arc<dyn PhysicalExpr> {
    let original = Arc::clone(&expr);
    expr.transform_down(|e| {
        if traced(&e, lineage).is_some_and(|t| t.as_ref() == shared.as_ref()) {
            let column: Arc<dyn PhysicalExpr> = Arc::new(Column::new(field.name(), index));
            return Ok(Transformed::new(column, true, TreeNodeRecursion::Jump));
        }
        Ok(Transformed::no(e))
    })
    .map_or(original, |t| t.data)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::physical;
    use arrow::array::{ArrayRef, Int64Array, RecordBatch, StringArray};
    use laminar_operators::stage::apply_all;

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("n", DataType::Int64, false),
            Field::new("s", DataType::Utf8, true),
            Field::new("url", DataType::Utf8, true),
        ]))
    }

    fn batch() -> RecordBatch {
        let n: ArrayRef = Arc::new(Int64Array::from(vec![1, 2, 3, 4, 5]));
        let s: ArrayRef = Arc::new(StringArray::from(vec![
            Some("Apple"),
            None,
            Some("x"),
            Some("Baidu"),
            Some("y"),
        ]));
        let url: ArrayRef = Arc::new(StringArray::from(vec![
            Some("a?channel_id=1"),
            Some("b?channel_id=2&z=1"),
            Some("c"),
            None,
            Some("d?channel_id="),
        ]));
        RecordBatch::try_new(schema(), vec![n, s, url]).unwrap()
    }

    /// `SQL` over `schema` as a physical expression, calls specialized.
    fn expr(sql: &str, schema: &SchemaRef) -> Arc<dyn PhysicalExpr> {
        crate::specialized::specialize(physical(sql, schema), schema).unwrap()
    }

    fn project(sqls: &[&str], input: &SchemaRef) -> Staged {
        let exprs: Vec<_> = sqls.iter().map(|s| expr(s, input)).collect();
        let fields: Vec<Field> = exprs
            .iter()
            .enumerate()
            .map(|(i, e)| {
                Field::new(
                    format!("c{i}"),
                    e.data_type(input).unwrap(),
                    e.nullable(input).unwrap(),
                )
            })
            .collect();
        let schema = Arc::new(Schema::new(fields));
        (Stage::Project { exprs, schema }, Arc::clone(input))
    }

    fn output_schema(stage: &Stage) -> SchemaRef {
        match stage {
            Stage::Project { schema, .. } => Arc::clone(schema),
            _ => unreachable!(),
        }
    }

    fn run(stages: &[Staged]) -> RecordBatch {
        let plain: Vec<Stage> = stages.iter().map(|(s, _)| s.clone()).collect();
        apply_all(&plain, &batch()).unwrap()
    }

    /// q21's shape: the pattern in the filter's first operand and in a
    /// `CASE` two projections later, read through a pass-through one.
    #[test]
    fn a_pattern_in_the_filter_and_a_later_case_is_computed_once() {
        let input = schema();
        let element = "regexp_match(url, '(&|^|\\?)channel_id=([^&]*)')[2]";
        let filter: Staged = (
            Stage::Filter(expr(
                &format!("{element} IS NOT NULL OR lower(s) IN ('apple', 'baidu')"),
                &input,
            )),
            Arc::clone(&input),
        );
        let middle = project(&["n", "lower(s)", "url"], &input);
        let middle_out = output_schema(&middle.0);
        let last = project(
            &[
                "c0",
                &format!("CASE WHEN c1 = 'apple' THEN '0' ELSE {element} END").replace("url", "c2"),
            ],
            &middle_out,
        );
        let stages = vec![filter, middle, last];
        let (shared, _) = share(stages.clone());
        assert_eq!(shared.len(), 4, "{shared:?}");
        let Stage::Project { exprs, schema } = &shared[0].0 else {
            panic!("a widening projection first: {shared:?}");
        };
        assert!(exprs[exprs.len() - 1].as_ref().is::<PrecompiledRegex>());
        // `url` is read by the shared pattern only after the filter, and
        // by nothing in the filter, so it is not copied by it.
        assert_eq!(
            schema
                .fields()
                .iter()
                .map(|f| f.name().as_str())
                .collect::<Vec<_>>(),
            ["n", "s", "__laminar_shared_0"],
        );
        let count = |stages: &[Staged]| {
            let mut count = 0;
            for (stage, _) in stages {
                let exprs = match stage {
                    Stage::Filter(p) => vec![Arc::clone(p)],
                    Stage::Project { exprs, .. } => exprs.clone(),
                    _ => vec![],
                };
                for e in exprs {
                    e.apply(|e| {
                        if e.as_ref().is::<PrecompiledRegex>() {
                            count += 1;
                            return Ok(TreeNodeRecursion::Jump);
                        }
                        Ok(TreeNodeRecursion::Continue)
                    })
                    .unwrap();
                }
            }
            count
        };
        assert_eq!(count(&stages), 2);
        assert_eq!(count(&shared), 1);
        assert_eq!(run(&shared), run(&stages));
        assert_eq!(run(&shared).num_rows(), 4);
    }

    /// What the filter may skip, volatile calls and cheap arithmetic are
    /// not moved ahead of it.
    #[test]
    fn only_what_the_filter_always_computes_is_shared() {
        let input = schema();
        for (predicate, select) in [
            ("n > 1 AND upper(s) = 'X'", "upper(s)"),
            ("n > 1 OR upper(s) = 'X'", "upper(s)"),
            (
                "CASE WHEN n > 1 THEN upper(s) = 'X' ELSE false END",
                "upper(s)",
            ),
            ("n * 2 > 3", "n * 2"),
            ("coalesce(n, length(upper(s))) > 3", "upper(s)"),
            (
                "concat(s, CAST(random() AS VARCHAR)) <> 'x'",
                "concat(s, CAST(random() AS VARCHAR))",
            ),
        ] {
            let stages = vec![
                (Stage::Filter(expr(predicate, &input)), Arc::clone(&input)),
                project(&[select, "n"], &input),
            ];
            let (shared, _) = share(stages.clone());
            assert_eq!(shared.len(), 2, "{predicate}: {shared:?}");
        }
        // A precompiled pattern over a volatile input is not costly
        // (movable) either; over a column it is.
        let volatile = expr(
            "regexp_like(CASE WHEN random() < 0.5 THEN s ELSE url END, '^a')",
            &input,
        );
        assert!(volatile.as_ref().is::<PrecompiledRegex>());
        assert!(!costly(&volatile, &input));
        assert!(costly(&expr("regexp_like(s, '^a')", &input), &input));
        // Nested candidates: both kept and both shared.
        let stages = vec![
            (
                Stage::Filter(expr(
                    "length(upper(s)) + length(concat(upper(s), 'x')) > 2",
                    &input,
                )),
                Arc::clone(&input),
            ),
            project(&["concat(upper(s), 'x')", "upper(s)", "n"], &input),
        ];
        let (shared, count) = share(stages.clone());
        assert_eq!(count, 2);
        assert_eq!(run(&shared), run(&stages));
        let Stage::Project { exprs, .. } = &shared[2].0 else {
            panic!("{shared:?}");
        };
        assert!(
            exprs[..2].iter().all(|e| e.as_ref().is::<Column>()),
            "both read from the shared columns: {exprs:?}"
        );
        // The same expressions as the left operand, or as the argument of
        // a function that takes its arguments evaluated, are shared.
        for predicate in ["upper(s) = 'X' AND n > 1", "length(upper(s)) = 1 OR n > 1"] {
            let stages = vec![
                (Stage::Filter(expr(predicate, &input)), Arc::clone(&input)),
                project(&["upper(s)", "n"], &input),
            ];
            let (shared, _) = share(stages.clone());
            assert_eq!(shared.len(), 3, "{predicate}");
            assert_eq!(run(&shared), run(&stages));
        }
    }
}
