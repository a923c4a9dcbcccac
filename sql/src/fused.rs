//! Planning a window, session or changelog aggregate's fused form
//! ([`laminar_operators::fused`]), and which session aggregates fold
//! into per-session accumulators at all ([`foldable_kinds`]):
//! the aggregate's inputs rewritten as expressions over the source batch,
//! so that one compiled loop can read the source rows directly.
//!
//! A plan is fused only where that cannot change an answer: the chain
//! below the aggregate is projections, aliases and at most one filter
//! over a scan (a second filter could guard a row the first removes);
//! nothing volatile (`random()`) is substituted into several places;
//! every `GROUP BY` key and the window's time (if any) are plain source columns,
//! with keys no more nullable than the aggregate declares them; every
//! aggregate is a plain `COUNT`/`SUM`/`MIN`/`MAX`/`AVG` whose argument
//! and `FILTER` compile and cannot fail. Anything else runs as before.

use std::sync::Arc;

use arrow::datatypes::DataType;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::logical_expr::{Aggregate, LogicalPlan};
use datafusion::physical_expr::aggregate::AggregateFunctionExpr;
use datafusion::physical_expr::expressions::Column;
use datafusion::physical_expr::PhysicalExpr;
use laminar_operators::fused::{
    fused_type, FusedAggregate, FusedAggregateKind, FusedFunction, FusedType,
};
use laminar_operators::fused_lookup::LookupKey;
use laminar_operators::WindowBinding;

use crate::jit::{FusedInput, FusedLookup};
use crate::planner::Lowering;

/// What a chain of stages computes, seen from the source batch.
struct SourceView {
    /// Each output column as an expression over the source batch.
    columns: Vec<Arc<dyn PhysicalExpr>>,
    /// The chain's filter, over the source batch.
    predicate: Option<Arc<dyn PhysicalExpr>>,
    /// The source's (or upstream stream's) name.
    source: String,
}

impl Lowering<'_> {
    /// The fused form of an aggregate, or `None` where it does not
    /// apply (see the module docs). `aggregates` and `filters` are the
    /// aggregate's functions and `FILTER`s before compilation, over the
    /// aggregate's input; `keys` its `GROUP BY` keys other than the
    /// window; `window` `None` for a changelog aggregate without one.
    /// `looking_up`: the operator can hand the kernel its group tables
    /// (a tumbling or hopping window aggregate), so a kernel with one
    /// short key looks groups up itself.
    pub(crate) fn fused_aggregate(
        &self,
        aggregate: &Aggregate,
        window: Option<&WindowBinding>,
        keys: &[datafusion::logical_expr::Expr],
        aggregates: &[Arc<AggregateFunctionExpr>],
        filters: &[Option<Arc<dyn PhysicalExpr>>],
        looking_up: bool,
    ) -> Option<Arc<FusedAggregate>> {
        let view = self.source_view(&aggregate.input)?;
        let source_schema = Arc::clone(self.input_schema(&view.source));
        let to_source = |expr: &Arc<dyn PhysicalExpr>| substitute(expr, &view.columns);
        let column_of = |expr: &Arc<dyn PhysicalExpr>| {
            to_source(expr)?.downcast_ref::<Column>().map(|c| c.index())
        };

        let time_column = match window {
            Some(window) => {
                let column = column_of(&window.event_time)?;
                if column != window.source_time_column {
                    return None;
                }
                Some(column)
            }
            None => None,
        };
        // Key fields as the aggregate declares them (its GROUP BY columns
        // come first in its schema).
        let group_fields = aggregate.schema.fields();
        let mut key_columns = Vec::with_capacity(keys.len());
        let mut lookup_key = None;
        let window_position = window.map(|w| w.position);
        let mut key_field = (0..aggregate.group_expr.len()).filter(|&i| Some(i) != window_position);
        for key in keys {
            let physical = self.raw_physical(key, aggregate.input.schema()).ok()?;
            let column = column_of(&physical)?;
            let declared = &group_fields[key_field.next()?];
            let source = source_schema.field(column);
            // Unselected rows are read too: a NULL there must not reach
            // a key the aggregate declared NOT NULL.
            if source.is_nullable() && !declared.is_nullable()
                || source.data_type() != declared.data_type()
            {
                return None;
            }
            key_columns.push(column);
            // The kind of group table the operator's encoder builds for
            // this key (`laminar_operators::groups`).
            lookup_key = match declared.data_type() {
                _ if declared.is_nullable() || keys.len() > 1 => None,
                DataType::Utf8 => Some(LookupKey::Utf8),
                DataType::Int64 => Some(LookupKey::Int64),
                _ => None,
            };
        }

        let mut inputs = Vec::with_capacity(aggregates.len());
        for (function, filter) in aggregates.iter().zip(filters) {
            let [argument] = function.expressions().try_into().ok()?;
            let argument = to_source(&argument)?;
            let kind = fused_kind(function, &argument.data_type(&source_schema).ok()?)?;
            let filter = match filter {
                Some(filter) => Some(to_source(filter)?),
                None => None,
            };
            inputs.push(FusedInput {
                kind,
                argument,
                filter,
            });
        }
        let lookup = lookup_key.filter(|_| looking_up).map(|key| FusedLookup {
            key,
            predicate: view.predicate.clone(),
        });
        let update = crate::jit::fused_update(&inputs, &source_schema, lookup.as_ref())?;
        let predicate = view
            .predicate
            .map(|p| self.compile_physical(p, &source_schema));
        Some(Arc::new(FusedAggregate {
            predicate,
            key_columns,
            time_column,
            aggregates: inputs.iter().map(|i| i.kind).collect(),
            update,
        }))
    }

    /// The chain from `node` down to its scan, as expressions over the
    /// scanned batch; `None` for anything but projections, aliases and
    /// one filter.
    fn source_view(&self, node: &LogicalPlan) -> Option<SourceView> {
        match node {
            LogicalPlan::TableScan(scan) => {
                if !scan.filters.is_empty() || scan.fetch.is_some() {
                    return None;
                }
                let source = scan.table_name.table().to_string();
                let schema = self.input_schema(&source);
                let indices: Vec<usize> = match &scan.projection {
                    Some(projection) => projection.clone(),
                    None => (0..schema.fields().len()).collect(),
                };
                let columns = indices
                    .into_iter()
                    .map(|i| {
                        Arc::new(Column::new(schema.field(i).name(), i)) as Arc<dyn PhysicalExpr>
                    })
                    .collect();
                Some(SourceView {
                    columns,
                    predicate: None,
                    source,
                })
            }
            LogicalPlan::SubqueryAlias(alias) => self.source_view(&alias.input),
            LogicalPlan::Projection(projection) => {
                // A volatile expression (`random()`) substituted into every
                // place that reads it would be drawn once per use.
                if projection.expr.iter().any(|e| e.is_volatile()) {
                    return None;
                }
                let below = self.source_view(&projection.input)?;
                let columns = projection
                    .expr
                    .iter()
                    .map(|e| {
                        let physical = self.raw_physical(e, projection.input.schema()).ok()?;
                        substitute(&physical, &below.columns)
                    })
                    .collect::<Option<Vec<_>>>()?;
                Some(SourceView { columns, ..below })
            }
            LogicalPlan::Filter(filter) => {
                if filter.predicate.is_volatile() {
                    return None;
                }
                let below = self.source_view(&filter.input)?;
                if below.predicate.is_some() {
                    return None;
                }
                let physical = self
                    .raw_physical(&filter.predicate, filter.input.schema())
                    .ok()?;
                let predicate = substitute(&physical, &below.columns)?;
                Some(SourceView {
                    predicate: Some(predicate),
                    ..below
                })
            }
            _ => None,
        }
    }
}

/// `expr` with each column replaced by what `columns` says it is.
fn substitute(
    expr: &Arc<dyn PhysicalExpr>,
    columns: &[Arc<dyn PhysicalExpr>],
) -> Option<Arc<dyn PhysicalExpr>> {
    let mut missing = false;
    let rewritten = Arc::clone(expr)
        .transform_up(|e| {
            if let Some(column) = e.downcast_ref::<Column>() {
                return Ok(match columns.get(column.index()) {
                    Some(replacement) => Transformed::yes(Arc::clone(replacement)),
                    None => {
                        missing = true;
                        Transformed::no(e)
                    }
                });
            }
            Ok(Transformed::no(e))
        })
        .ok()?
        .data;
    (!missing).then_some(rewritten)
}

/// What each aggregate accumulates, when every one folds into a
/// [`laminar_operators::fused::FusedAccumulator`] (see
/// `AggregateSpec::foldable`); `None` otherwise. `input_schema` is the
/// aggregate input's.
pub(crate) fn foldable_kinds(
    aggregates: &[Arc<AggregateFunctionExpr>],
    input_schema: &arrow::datatypes::Schema,
) -> Option<Vec<FusedAggregateKind>> {
    aggregates
        .iter()
        .map(|function| {
            let [argument] = function.expressions().try_into().ok()?;
            let argument_type = argument.data_type(input_schema).ok()?;
            fused_kind(function, &argument_type)
                .or_else(|| timestamp_extreme(function, &argument_type))
        })
        .collect()
}

/// `MIN`/`MAX` of a timestamp, which folds as its `i64` values (a
/// `BIGINT`'s kind, with a timestamp result); the fused kernels take
/// `BIGINT` and `DOUBLE` arguments only, so such a plan is not fused.
fn timestamp_extreme(
    function: &AggregateFunctionExpr,
    argument_type: &arrow::datatypes::DataType,
) -> Option<FusedAggregateKind> {
    let plain = !function.is_distinct() && function.order_bys().is_empty();
    let timestamp = matches!(argument_type, arrow::datatypes::DataType::Timestamp(..));
    if !plain || !timestamp || function.field().data_type() != argument_type {
        return None;
    }
    let function = match function.fun().name().to_ascii_lowercase().as_str() {
        "min" => FusedFunction::Min,
        "max" => FusedFunction::Max,
        _ => return None,
    };
    Some(FusedAggregateKind {
        function,
        ty: FusedType::Int64,
    })
}

/// What `function` (over an argument of `argument_type`) accumulates, if
/// the fused path computes it exactly as DataFusion does.
fn fused_kind(
    function: &AggregateFunctionExpr,
    argument_type: &arrow::datatypes::DataType,
) -> Option<FusedAggregateKind> {
    if function.is_distinct() || !function.order_bys().is_empty() {
        return None;
    }
    let output_type = function.field().data_type().clone();
    let name = function.fun().name().to_ascii_lowercase();
    let (function, ty) = match name.as_str() {
        "count" => (FusedFunction::Count, FusedType::Int64),
        "sum" => (FusedFunction::Sum, fused_type(argument_type)?),
        "min" => (FusedFunction::Min, fused_type(argument_type)?),
        "max" => (FusedFunction::Max, fused_type(argument_type)?),
        "avg" => (FusedFunction::Avg, FusedType::Float64),
        _ => return None,
    };
    // The output type the fused accumulator produces must be DataFusion's.
    let produces = match (function, ty) {
        (FusedFunction::Count, _) | (_, FusedType::Int64) => arrow::datatypes::DataType::Int64,
        (_, FusedType::Float64) => arrow::datatypes::DataType::Float64,
    };
    let argument_fits = function == FusedFunction::Count || fused_type(argument_type) == Some(ty);
    (output_type == produces && argument_fits).then_some(FusedAggregateKind { function, ty })
}
