//! Planning a stream: DataFusion logical plan -> streaming operator spec.
//!
//! The `SELECT` is planned and optimised by DataFusion as an ordinary query
//! over empty tables with the sources' schemas. The optimised plan must have
//! one of two shapes, read from the top:
//!
//! ```text
//! [Projection | Filter]* -> TableScan(source)                      stateless
//! [Projection | Filter]* -> Aggregate(keys, tumble(...); aggs)
//!                        -> [Projection | Filter]* -> TableScan     windowed
//! ```
//!
//! Expressions become DataFusion physical expressions (the interpreted
//! path); aggregates become DataFusion aggregate expressions whose group
//! accumulators hold the window state. Every other node is an `LDB-1004`
//! error naming what is not supported.
//!
//! A stream runs one stateful operator. A query with several (an
//! aggregate over a join, a join of aggregates, a join of a join) is
//! split into a chain of streams: each input of a stateful node that
//! holds a stateful node of its own becomes a stage stream,
//! `<name>_stage<k>`, planned first, and the query reads it.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::datatypes::{DataType, Schema, SchemaRef};
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::{DFSchema, DataFusionError, TableReference};
use datafusion::datasource::empty::EmptyTable;
use datafusion::execution::context::ExecutionProps;
use datafusion::logical_expr::expr::{AggregateFunction, Sort};
use datafusion::logical_expr::physical_planning_context::PhysicalPlanningContext;
use datafusion::logical_expr::ExprSchemable;
use datafusion::logical_expr::{Aggregate, DdlStatement, Expr, LogicalPlan};
use datafusion::physical_expr::aggregate::{AggregateFunctionExpr, LoweredAggregateBuilder};
use datafusion::physical_expr::{create_physical_expr, PhysicalExpr, PhysicalSortExpr};
use datafusion::prelude::{SessionConfig, SessionContext};
use laminar_operators::{
    AggregateSpec, Analytic, AnalyticFunction, AnalyticSpec, AsofJoin, AsofJoinSpec,
    ChangelogAggregate, EventTimeUnit, InstantAggregate, IntervalJoin, IntervalJoinSpec,
    LookupJoin, LookupJoinSpec, Operator, RunningFrame, RunningKind, SessionAggregate, Stage,
    Stateless, TopN, TopNSpec, WindowAggregate, WindowBinding, WindowKind, WindowSpec,
    WEIGHT_COLUMN,
};
use laminar_runtime::{Error, ErrorCode, Result};

use crate::dialect::{EmitMode, SourceDef, SourceDefSyntax, StreamDef};
use crate::functions::{interval_ms, register_functions, HOP, SESSION, SLIDE, TUMBLE};
use crate::join_bounds::SideOf;

/// How the router spreads a source's rows over shards for one stream.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Routing {
    /// By hash of these source columns: rows with equal keys meet on one
    /// shard.
    Keys(Vec<usize>),
    /// Anywhere: the stream keeps no keyed state.
    Any,
    /// Everything on shard 0: keyed state whose key is not a plain source
    /// column (or no key at all), so no hash of source columns is safe.
    Single,
}

/// What a stream reads.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum StreamInput {
    /// A source's pushed rows.
    Source(String),
    /// Another stream's output (a cascading stream).
    Stream(String),
    /// The rows another stream found late (its late side output).
    LateOf(String),
}

impl StreamInput {
    /// The source's or stream's name.
    pub fn name(&self) -> &str {
        match self {
            StreamInput::Source(name) | StreamInput::Stream(name) | StreamInput::LateOf(name) => {
                name
            }
        }
    }
}

impl std::fmt::Display for StreamInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StreamInput::Source(name) => write!(f, "source {name}"),
            StreamInput::Stream(name) => write!(f, "stream {name}"),
            StreamInput::LateOf(name) => write!(f, "late rows of {name}"),
        }
    }
}

/// The operator a stream runs on each shard.
#[derive(Debug, Clone)]
pub enum StreamOperator {
    /// Filters and projections only.
    Stateless(Vec<Stage>),
    /// A windowed aggregate emitted when each window closes.
    WindowAggregate(AggregateSpec),
    /// An aggregate grouped by an event-time column without a window,
    /// each group emitted once the watermark passes its time.
    InstantAggregate {
        /// The aggregate; its keys include the event-time column.
        spec: AggregateSpec,
        /// That column as a window of one ms (lateness and closing).
        time: WindowBinding,
    },
    /// An aggregate emitting a changelog on every batch (`EMIT CHANGES`).
    ChangelogAggregate(AggregateSpec),
    /// A session-window aggregate emitted when each session closes, or as
    /// a changelog (`changes`).
    SessionAggregate {
        /// The aggregate.
        spec: AggregateSpec,
        /// `EMIT CHANGES`.
        changes: bool,
    },
    /// Top-N per partition (`ROW_NUMBER() ... <= N`), as a changelog.
    TopN(TopNSpec),
    /// Window functions over event time, emitted as rows become final.
    Analytic(AnalyticSpec),
    /// A stream-stream join with time bounds (two inputs).
    IntervalJoin(IntervalJoinSpec),
    /// An ASOF or temporal join (two inputs).
    AsofJoin(AsofJoinSpec),
    /// A join against a table's replica on each shard (one input).
    LookupJoin(LookupJoinSpec),
}

impl StreamOperator {
    /// The operator's name, with its phase: what a checkpoint's state is
    /// laid out for.
    pub fn kind(&self) -> &'static str {
        match self {
            StreamOperator::Stateless(_) => "Stateless",
            StreamOperator::WindowAggregate(spec) => match spec.phase {
                laminar_operators::AggregatePhase::Whole => "WindowAggregate",
                laminar_operators::AggregatePhase::Partial(_) => "WindowAggregate(partial)",
                laminar_operators::AggregatePhase::Final => "WindowAggregate(final)",
            },
            StreamOperator::InstantAggregate { .. } => "InstantAggregate",
            StreamOperator::ChangelogAggregate(_) => "ChangelogAggregate",
            StreamOperator::SessionAggregate { changes: false, .. } => "SessionAggregate",
            StreamOperator::SessionAggregate { changes: true, .. } => "SessionAggregate(changes)",
            StreamOperator::TopN(_) => "TopN",
            StreamOperator::Analytic(_) => "Analytic",
            StreamOperator::IntervalJoin(_) => "IntervalJoin",
            StreamOperator::AsofJoin(_) => "AsofJoin",
            StreamOperator::LookupJoin(_) => "LookupJoin",
        }
    }

    /// Builds a fresh operator instance (one per shard).
    pub fn instantiate(&self, output_schema: &SchemaRef) -> Result<Box<dyn Operator>> {
        Ok(match self {
            StreamOperator::Stateless(stages) => {
                Box::new(Stateless::new(stages.clone(), Arc::clone(output_schema)))
            }
            StreamOperator::WindowAggregate(spec) => Box::new(WindowAggregate::new(spec.clone())?),
            StreamOperator::InstantAggregate { spec, time } => {
                Box::new(InstantAggregate::new(spec.clone(), time.clone())?)
            }
            StreamOperator::SessionAggregate { spec, changes } => Box::new(SessionAggregate::new(
                spec.clone(),
                changes.then(|| Arc::clone(output_schema)),
            )?),
            StreamOperator::ChangelogAggregate(spec) => Box::new(ChangelogAggregate::new(
                spec.clone(),
                Arc::clone(output_schema),
            )?),
            StreamOperator::TopN(spec) => {
                Box::new(TopN::new(spec.clone(), Arc::clone(output_schema))?)
            }
            StreamOperator::Analytic(spec) => Box::new(Analytic::new(spec.clone())?),
            StreamOperator::IntervalJoin(spec) => Box::new(IntervalJoin::new(spec.clone())?),
            StreamOperator::AsofJoin(spec) => Box::new(AsofJoin::new(spec.clone())?),
            StreamOperator::LookupJoin(spec) => Box::new(LookupJoin::new(spec.clone())?),
        })
    }
}

/// A planned stream.
#[derive(Debug, Clone)]
pub struct StreamPlan {
    /// Stream name.
    pub name: String,
    /// What it reads.
    pub input: StreamInput,
    /// Schema of its output batches.
    pub output_schema: SchemaRef,
    /// How its input is spread over shards.
    pub routing: Routing,
    /// A join's right side (port 1) and how it is spread; `input` and
    /// `routing` are then its left side.
    pub right_input: Option<(StreamInput, Routing)>,
    /// The table a lookup join reads.
    pub lookup_table: Option<String>,
    /// Output columns that carry event time under the stream's output
    /// watermark (a window's start, a source's event time passed through,
    /// a joined side's time): what a downstream join may bound by.
    pub time_columns: Vec<usize>,
    /// Those of `time_columns` whose rows are final once the output
    /// watermark reaches them (never retracted afterwards): all of them
    /// for an append-only stream; for a changelog, a windowed aggregate's
    /// window end. ASOF and temporal joins read a changelog only by such
    /// a column.
    pub settled_time_columns: Vec<usize>,
    /// What runs on each shard.
    pub operator: StreamOperator,
    /// Human-readable plan, for logs and `EXPLAIN`.
    pub explain: String,
    /// The plan's expressions that run compiled (or will, once their
    /// kernels are ready), for `EXPLAIN`.
    pub compiled: Vec<Arc<crate::jit::CompiledExpr>>,
    /// With `late_data = 'side_output'`: the schema of the late rows (the
    /// stream's input, as it arrives).
    pub late_side_output: Option<SchemaRef>,
    /// The statement that created it.
    pub sql: String,
    /// For a stage split off a query with several stateful steps: the
    /// stream whose query it computes a part of (dropped with it).
    pub part_of: Option<String>,
    /// For a deduplication keeping each key's latest row by event time
    /// (`ROW_NUMBER() OVER (PARTITION BY k ORDER BY ts DESC) = 1`, with no
    /// other filter, showing its input's columns as they are): a query
    /// over its input giving the rows it deduplicates, which are the
    /// versions a temporal join against it reads.
    pub versions_query: Option<String>,
}

/// A `RANGE` frame's `d PRECEDING` in the unit of the `ORDER BY` column:
/// ms for a `BIGINT` event time, the timestamp's unit for an interval of
/// days and smaller parts. Part of a tick rounds up: DataFusion subtracts
/// `d` from the row's time and floors the result to the column's unit,
/// which reaches back `ceil(d)` ticks. `None` for anything else: months
/// have no fixed length, nor have days in a time zone that may change its
/// clocks (a zoned column takes hours instead).
fn range_in_ticks(
    bound: &datafusion::common::ScalarValue,
    order_type: &arrow::datatypes::DataType,
) -> Option<i64> {
    use arrow::datatypes::{DataType, TimeUnit};
    use datafusion::common::ScalarValue;
    const NANOS_PER_DAY: i128 = 86_400 * 1_000_000_000;
    match order_type {
        DataType::Int64 => match bound.cast_to(&DataType::Int64).ok()? {
            ScalarValue::Int64(Some(d)) if d >= 0 => Some(d),
            _ => None,
        },
        DataType::Timestamp(unit, zone) => {
            let days_fixed = |days: i32| days == 0 || zone.is_none();
            let nanos: i128 = match bound {
                ScalarValue::IntervalMonthDayNano(Some(v))
                    if v.months == 0 && days_fixed(v.days) =>
                {
                    i128::from(v.days) * NANOS_PER_DAY + i128::from(v.nanoseconds)
                }
                ScalarValue::IntervalDayTime(Some(v)) if days_fixed(v.days) => {
                    i128::from(v.days) * NANOS_PER_DAY + i128::from(v.milliseconds) * 1_000_000
                }
                ScalarValue::DurationSecond(Some(v)) => i128::from(*v) * 1_000_000_000,
                ScalarValue::DurationMillisecond(Some(v)) => i128::from(*v) * 1_000_000,
                ScalarValue::DurationMicrosecond(Some(v)) => i128::from(*v) * 1_000,
                ScalarValue::DurationNanosecond(Some(v)) => i128::from(*v),
                _ => return None,
            };
            let per_tick: i128 = match unit {
                TimeUnit::Second => 1_000_000_000,
                TimeUnit::Millisecond => 1_000_000,
                TimeUnit::Microsecond => 1_000,
                TimeUnit::Nanosecond => 1,
            };
            let ticks = (nanos + per_tick - 1).div_euclid(per_tick);
            (nanos >= 0).then(|| i64::try_from(ticks).unwrap_or(i64::MAX))
        }
        _ => None,
    }
}

/// Whether `expr` over `node`'s output is the end of the aggregate's
/// window of `size_ms` (`window_end`, `tumble_end(...)`), through
/// projections, filters and aliases down to the aggregate that groups by
/// the window.
fn is_window_end(expr: &Expr, mut node: &LogicalPlan, size_ms: i64) -> bool {
    let ends_window = |expr: &Expr| {
        matches!(expr, Expr::ScalarFunction(f)
            if f.name() == crate::window_tvf::WINDOW_END
                && matches!(f.args.get(1), Some(Expr::Literal(size, _))
                    if crate::functions::interval_ms(size) == Some(size_ms)))
    };
    let mut expr = expr.clone().unalias();
    loop {
        if let Expr::ScalarFunction(_) = &expr {
            return ends_window(&expr);
        }
        let Expr::Column(column) = &expr else {
            return false;
        };
        let Ok(index) = node.schema().index_of_column(column) else {
            return false;
        };
        match node {
            LogicalPlan::Projection(projection) => {
                expr = projection.expr[index].clone().unalias();
                node = &projection.input;
            }
            LogicalPlan::Filter(_) | LogicalPlan::SubqueryAlias(_) => {
                let (qualifier, field) = node.inputs()[0].schema().qualified_field(index);
                expr = Expr::Column(datafusion::common::Column::new(
                    qualifier.cloned(),
                    field.name(),
                ));
                node = node.inputs()[0];
            }
            LogicalPlan::Aggregate(aggregate) => {
                return aggregate
                    .group_expr
                    .get(index)
                    .is_some_and(|e| ends_window(&e.clone().unalias()));
            }
            _ => return false,
        }
    }
}

/// An identifier, double-quoted for SQL text.
fn quoted(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// A DataFusion context set up the way LaminarDB plans: one partition,
/// `VARCHAR` as `Utf8` (what Arrow producers push), LaminarDB's functions
/// and the JSON functions (`json_get_str`, `->`, ...).
pub fn new_session_context() -> SessionContext {
    let mut config = SessionConfig::new().with_target_partitions(1);
    config.options_mut().sql_parser.map_string_types_to_utf8view = false;
    let mut ctx = SessionContext::new_with_config(config);
    // This rule turns `COUNT(DISTINCT x)` (the only aggregate) into a
    // GROUP BY over x under a second GROUP BY; a windowed stream would lose
    // its window to the inner one and be refused. DataFusion's distinct
    // accumulators give the same answer in one aggregate.
    ctx.remove_optimizer_rule("single_distinct_aggregation_to_group_by");
    register_functions(&ctx);
    if let Err(e) = datafusion_functions_json::register_all(&mut ctx) {
        log::warn!("JSON functions are unavailable: {e}");
    }
    ctx
}

pub(crate) fn planning_error(e: DataFusionError) -> Error {
    let message = e.strip_backtrace().to_string();
    let code = match &e {
        DataFusionError::SQL(..) => ErrorCode::SqlSyntax,
        _ if message.contains("not found") || message.contains("No field named") => {
            ErrorCode::UnknownObject
        }
        _ => ErrorCode::Planning,
    };
    Error::new(code, message)
}

pub(crate) fn unsupported(what: impl Into<String>, hint: &str) -> Error {
    Error::new(ErrorCode::Unsupported, what).with_hint(hint)
}

/// Resolves a `CREATE SOURCE`'s column types through DataFusion and checks
/// its watermark column.
pub async fn resolve_source(ctx: &SessionContext, syntax: SourceDefSyntax) -> Result<SourceDef> {
    let plan = ctx
        .state()
        .create_logical_plan(&syntax.create_table_sql)
        .await
        .map_err(planning_error)?;
    let LogicalPlan::Ddl(DdlStatement::CreateMemoryTable(table)) = plan else {
        return Err(Error::new(
            ErrorCode::Planning,
            "CREATE SOURCE did not describe a table",
        ));
    };
    let schema: SchemaRef = Arc::new(table.input.schema().as_arrow().clone());
    if syntax.alignment.is_some() && syntax.watermark.is_none() {
        return Err(Error::new(
            ErrorCode::InvalidWatermark,
            format!(
                "source '{}' joins an alignment group but has no WATERMARK: alignment is in event time",
                syntax.name
            ),
        )
        .with_hint("add WATERMARK FOR <column> AS <column> - INTERVAL '...'"));
    }
    if let Some(watermark) = &syntax.watermark {
        let field = schema.field_with_name(&watermark.column).map_err(|_| {
            Error::new(
                ErrorCode::InvalidWatermark,
                format!(
                    "WATERMARK FOR names column '{}', which source '{}' does not have",
                    watermark.column, syntax.name
                ),
            )
        })?;
        EventTimeUnit::of(field.data_type(), field.name())
            .map_err(|e| Error::new(ErrorCode::InvalidWatermark, e.message().to_string()))?;
    }
    if let Some(key) = &syntax.watermark_key {
        let invalid = |message: String| {
            Error::new(ErrorCode::InvalidWatermark, message).with_hint(
                "WITH (watermark_key = '<integer or string column>'), with a WATERMARK FOR clause",
            )
        };
        if syntax.watermark.is_none() {
            return Err(invalid(format!(
                "source '{}' has watermark_key but no WATERMARK: per-key watermarks need an event time and a bound",
                syntax.name
            )));
        }
        let field = schema.field_with_name(&key.column).map_err(|_| {
            invalid(format!(
                "watermark_key names column '{}', which source '{}' does not have",
                key.column, syntax.name
            ))
        })?;
        let data_type = field.data_type();
        if !(data_type.is_integer() || matches!(data_type, DataType::Utf8)) {
            return Err(invalid(format!(
                "watermark_key column '{}' is {data_type}: only integer and string columns key watermarks",
                key.column
            )));
        }
        if syntax.alignment.is_some() {
            return Err(unsupported(
                format!(
                    "source '{}': watermark_key together with an alignment group is not supported yet",
                    syntax.name
                ),
                "use one of the two",
            ));
        }
    }
    Ok(SourceDef {
        name: syntax.name,
        schema,
        watermark: syntax.watermark,
        watermark_key: syntax.watermark_key,
        idle_timeout_ms: syntax.idle_timeout_ms,
        alignment: syntax.alignment,
        retention_rows: syntax.retention_rows,
        sql: syntax.sql,
    })
}

/// A `CREATE TABLE`: columns and primary key.
#[derive(Debug, Clone)]
pub struct TableDef {
    /// Table name.
    pub name: String,
    /// Columns (primary-key columns are NOT NULL).
    pub schema: SchemaRef,
    /// Indices of the primary-key columns; empty for an append-only table.
    pub primary_key: Vec<usize>,
    /// The statement's text.
    pub sql: String,
}

/// Resolves a `CREATE TABLE` through DataFusion: column types and the
/// primary key.
pub async fn resolve_table(ctx: &SessionContext, name: &str, sql: &str) -> Result<TableDef> {
    let plan = ctx
        .state()
        .create_logical_plan(sql)
        .await
        .map_err(planning_error)?;
    let LogicalPlan::Ddl(DdlStatement::CreateMemoryTable(table)) = plan else {
        return Err(unsupported(
            "CREATE TABLE ... AS SELECT is not supported",
            "declare the columns: CREATE TABLE t (id BIGINT, ..., PRIMARY KEY (id))",
        ));
    };
    let mut primary_key = Vec::new();
    for constraint in table.constraints.iter() {
        match constraint {
            datafusion::common::Constraint::PrimaryKey(columns) => {
                primary_key = columns.clone();
            }
            datafusion::common::Constraint::Unique(_) => {
                return Err(unsupported(
                    "UNIQUE constraints are not supported",
                    "declare a PRIMARY KEY",
                ))
            }
        }
    }
    let arrow_schema = table.input.schema().as_arrow().clone();
    // Primary-key columns cannot be NULL.
    let fields: Vec<_> = arrow_schema
        .fields()
        .iter()
        .enumerate()
        .map(|(i, f)| {
            if primary_key.contains(&i) {
                Arc::new(f.as_ref().clone().with_nullable(false))
            } else {
                Arc::clone(f)
            }
        })
        .collect();
    Ok(TableDef {
        name: name.to_string(),
        schema: Arc::new(Schema::new(fields)),
        primary_key,
        sql: sql.to_string(),
    })
}

/// Registers a source (or a stream's output) as an empty table so queries
/// over it can be planned.
pub fn register_table(ctx: &SessionContext, name: &str, schema: SchemaRef) -> Result<()> {
    ctx.register_table(
        TableReference::bare(name),
        Arc::new(EmptyTable::new(schema)),
    )
    .map_err(planning_error)?;
    Ok(())
}

/// Plans a query for batch execution with LaminarDB's semantics (the
/// oracle's plan): the same rewrites as streaming planning.
pub async fn plan_for_batch(ctx: &SessionContext, sql: &str) -> Result<LogicalPlan> {
    let sql = crate::window_tvf::rewrite(sql)?;
    if crate::asof::rewrite(&sql, |_| Some(crate::asof::Versioned::any()))?
        .1
        .is_some()
    {
        return Err(unsupported(
            "DataFusion has no ASOF join: the batch oracle cannot run one",
            "compare ASOF results with a ROW_NUMBER() formulation",
        ));
    }
    let plan = ctx
        .state()
        .create_logical_plan(&sql)
        .await
        .map_err(planning_error)?;
    order_first_last_by_event_time(plan)
}

/// `first_value`/`last_value` without `ORDER BY` in a windowed aggregate
/// take the row with the smallest/largest event time (the window's time
/// argument), never "whatever arrived first", so results do not depend on
/// arrival order across shards. The rewritten aggregate keeps its original
/// output name so the plan above it is unchanged.
fn order_first_last_by_event_time(plan: LogicalPlan) -> Result<LogicalPlan> {
    plan.transform_up(|node| {
        let LogicalPlan::Aggregate(aggregate) = &node else {
            return Ok(Transformed::no(node));
        };
        let Some(found) = find_window(&aggregate.group_expr) else {
            return Ok(Transformed::no(node));
        };
        let event_time = found.args[0].clone();
        let mut changed = false;
        let mut aggr_expr = Vec::with_capacity(aggregate.aggr_expr.len());
        for expr in &aggregate.aggr_expr {
            let name = expr.schema_name().to_string();
            match expr.clone().unalias() {
                Expr::AggregateFunction(mut f)
                    if matches!(f.func.name(), "first_value" | "last_value")
                        && f.params.order_by.is_empty() =>
                {
                    f.params.order_by = vec![Sort::new(event_time.clone(), true, false)];
                    aggr_expr.push(Expr::AggregateFunction(AggregateFunction { ..f }).alias(name));
                    changed = true;
                }
                _ => aggr_expr.push(expr.clone()),
            }
        }
        if !changed {
            return Ok(Transformed::no(node));
        }
        let rewritten = Aggregate::try_new(
            Arc::clone(&aggregate.input),
            aggregate.group_expr.clone(),
            aggr_expr,
        )?;
        Ok(Transformed::yes(LogicalPlan::Aggregate(rewritten)))
    })
    .map(|t| t.data)
    .map_err(planning_error)
}

/// A window function in a GROUP BY.
struct FoundWindow {
    position: usize,
    name: String,
    args: Vec<Expr>,
}

/// Gives a join over a changelog (a side with a `_weight` column) the
/// weight of each pair: the projection above the join (through filters)
/// outputs `_weight` as the product of the sides' weights, replacing any
/// `_weight` it selected. Z-sets join bilinearly, so a retracted row
/// retracts each pair it made, and a row joined with both a version and
/// its retraction adds nothing: the join itself needs no change, and the
/// stream is a changelog. Returns whether anything changed.
fn weigh_changelog_joins(plan: &LogicalPlan) -> Result<(LogicalPlan, bool)> {
    use datafusion::logical_expr::{JoinType, Projection};
    let mut changed = false;
    let mut inputs = Vec::new();
    for input in plan.inputs() {
        let (input, input_changed) = weigh_changelog_joins(input)?;
        changed |= input_changed;
        inputs.push(input);
    }
    let node = if changed {
        plan.with_new_exprs(plan.expressions(), inputs)
            .map_err(planning_error)?
    } else {
        plan.clone()
    };
    let LogicalPlan::Projection(projection) = &node else {
        return Ok((node, changed));
    };
    let mut below = projection.input.as_ref();
    while let LogicalPlan::Filter(filter) = below {
        below = filter.input.as_ref();
    }
    let LogicalPlan::Join(join) = below else {
        return Ok((node, changed));
    };
    // Semi and anti joins output one side only (and are refused over a
    // changelog when lowered).
    if matches!(
        join.join_type,
        JoinType::LeftSemi
            | JoinType::LeftAnti
            | JoinType::RightSemi
            | JoinType::RightAnti
            | JoinType::LeftMark
            | JoinType::RightMark
    ) {
        return Ok((node, changed));
    }
    // Every input row's weight: a side may itself be a join of several.
    // An outer join's padded side weighs 1 (an ASOF LEFT JOIN's unmatched
    // rows; other outer joins over changelogs are refused when lowered).
    let padded = |right: bool| match join.join_type {
        JoinType::Left => right,
        JoinType::Right => !right,
        JoinType::Full => true,
        _ => false,
    };
    let weights: Vec<Expr> = [(&join.left, false), (&join.right, true)]
        .iter()
        .flat_map(|(side, right)| {
            side.schema()
                .qualified_fields_with_unqualified_name(WEIGHT_COLUMN)
                .into_iter()
                .map(|(qualifier, _)| {
                    let weight = Expr::Column(datafusion::common::Column::new(
                        qualifier.cloned(),
                        WEIGHT_COLUMN,
                    ));
                    if padded(*right) {
                        datafusion::functions::core::expr_fn::coalesce(vec![
                            weight,
                            datafusion::logical_expr::lit(1i64),
                        ])
                    } else {
                        weight
                    }
                })
                .collect::<Vec<_>>()
        })
        .collect();
    let Some(product) = weights.into_iter().reduce(|a, b| a * b) else {
        return Ok((node, changed));
    };
    let mut exprs: Vec<Expr> = projection
        .expr
        .iter()
        .filter(|e| {
            e.schema_name().to_string() != WEIGHT_COLUMN
                && !matches!(e, Expr::Column(c) if c.name == WEIGHT_COLUMN)
        })
        .cloned()
        .collect();
    exprs.push(product.alias(WEIGHT_COLUMN));
    let projection =
        Projection::try_new(exprs, Arc::clone(&projection.input)).map_err(planning_error)?;
    Ok((LogicalPlan::Projection(projection), true))
}

/// Rewrites aggregates over a changelog (an input with a `_weight`
/// column, from an `EMIT CHANGES` stream) so that each row counts with its
/// weight: `COUNT(*)` becomes `SUM(_weight)`, `COUNT(x)` sums the weights
/// of non-NULL `x`, `SUM(x)` becomes `SUM(x * _weight)`. A hidden
/// `SUM(_weight)` per group drops groups whose rows were all retracted.
/// Aggregates that cannot be retracted this way are `LDB-1004`.
fn weigh_changelog_aggregates(plan: LogicalPlan) -> Result<LogicalPlan> {
    weigh_aggregates_where(plan, |_| true)
}

/// [`weigh_changelog_aggregates`] for the aggregates whose input's
/// `_weight` is one of `stages`' own (qualified by the stage's name): an
/// input that became a changelog when a stage was split off. Others were
/// weighed before the split.
fn weigh_aggregates_over_stages(plan: LogicalPlan, stages: &[String]) -> Result<LogicalPlan> {
    weigh_aggregates_where(plan, |qualifier| {
        qualifier.is_some_and(|q| stages.iter().any(|s| s.as_str() == q.table()))
    })
}

fn weigh_aggregates_where(
    plan: LogicalPlan,
    weight_of: impl Fn(Option<&TableReference>) -> bool,
) -> Result<LogicalPlan> {
    use datafusion::functions_aggregate::expr_fn::sum;
    use datafusion::logical_expr::{col, lit, when, LogicalPlanBuilder};
    const ROWS: &str = "__laminar_rows";
    plan.transform_up(|node| {
        let LogicalPlan::Aggregate(aggregate) = &node else {
            return Ok(Transformed::no(node));
        };
        let input_schema = aggregate.input.schema();
        let weights = input_schema.qualified_fields_with_unqualified_name(WEIGHT_COLUMN);
        if weights.len() > 1 {
            // A join of changelogs right below: each row's weight would
            // be the product, which the aggregate does not read.
            return Err(DataFusionError::Plan(
                "LDB-1004: an aggregate over a join of two changelogs (EMIT CHANGES) is not supported yet"
                    .into(),
            ));
        }
        let Some((qualifier, _)) = weights
            .first()
            .copied()
            .filter(|(qualifier, _)| weight_of(*qualifier))
        else {
            return Ok(Transformed::no(node));
        };
        let weight = Expr::Column(datafusion::common::Column::new(
            qualifier.cloned(),
            WEIGHT_COLUMN,
        ));
        if aggregate
            .group_expr
            .iter()
            .any(|e| matches!(e, Expr::GroupingSet(_)))
        {
            return Err(DataFusionError::Plan(
                "LDB-1004: GROUPING SETS over a changelog stream are not supported".into(),
            ));
        }
        let mut aggr_expr = Vec::with_capacity(aggregate.aggr_expr.len() + 1);
        // What each original output column becomes above the rewritten
        // aggregate (AVG is a quotient of two hidden sums).
        let mut replacement: Vec<Option<Expr>> = Vec::new();
        let with_filter = |e: Expr, filter: &Option<Box<Expr>>| match (e, filter) {
            (Expr::AggregateFunction(mut w), Some(filter)) => {
                w.params.filter = Some(filter.clone());
                Expr::AggregateFunction(w)
            }
            (e, _) => e,
        };
        for (i, expr) in aggregate.aggr_expr.iter().enumerate() {
            let name = expr.schema_name().to_string();
            let Expr::AggregateFunction(f) = expr.clone().unalias() else {
                return Err(DataFusionError::Plan(format!("LDB-1004: unexpected aggregate {expr}")));
            };
            let function = f.func.name().to_lowercase();
            if f.params.distinct {
                return Err(DataFusionError::Plan(format!(
                    "LDB-1004: {function}(DISTINCT ...) over a changelog (EMIT CHANGES) stream is not supported"
                )));
            }
            let weighted_count = |arg: &Expr| -> datafusion::common::Result<Expr> {
                Ok(sum(when(arg.clone().is_null(), lit(0i64)).otherwise(weight.clone())?))
            };
            let weighted = match (function.as_str(), f.params.args.as_slice()) {
                ("count", []) => sum(weight.clone()),
                ("count", [Expr::Literal(value, _)]) if !value.is_null() => sum(weight.clone()),
                ("count", [arg]) => weighted_count(arg)?,
                ("sum", [arg]) => {
                    let data_type = arg.get_type(input_schema)?;
                    sum(arg.clone() * datafusion::logical_expr::cast(weight.clone(), data_type))
                }
                (extreme @ ("min" | "max"), [arg]) => {
                    let udaf = datafusion::logical_expr::AggregateUDF::new_from_impl(
                        crate::retractable::RetractableExtreme::new(extreme == "max"),
                    );
                    udaf.call(vec![arg.clone(), weight.clone()])
                }
                ("avg", [arg]) if arg.get_type(input_schema)?.is_numeric()
                    && !matches!(
                        arg.get_type(input_schema)?,
                        arrow::datatypes::DataType::Decimal128(..)
                            | arrow::datatypes::DataType::Decimal256(..)
                    ) =>
                {
                    use arrow::datatypes::DataType::Float64;
                    let total = format!("__laminar_avg_sum_{i}");
                    let count = format!("__laminar_avg_count_{i}");
                    let value = datafusion::logical_expr::cast(arg.clone(), Float64);
                    aggr_expr.push(
                        with_filter(
                            sum(value * datafusion::logical_expr::cast(weight.clone(), Float64)),
                            &f.params.filter,
                        )
                        .alias(&total),
                    );
                    aggr_expr.push(with_filter(weighted_count(arg)?, &f.params.filter).alias(&count));
                    // NULL when no non-NULL value is left, like AVG.
                    let quotient = when(col(&count).eq(lit(0i64)), lit(datafusion::common::ScalarValue::Float64(None)))
                        .otherwise(col(&total) / datafusion::logical_expr::cast(col(&count), Float64))?;
                    replacement.push(Some(quotient.alias(name)));
                    continue;
                }
                _ => {
                    return Err(DataFusionError::Plan(format!(
                        "LDB-1004: {function}() over a changelog (EMIT CHANGES) stream is not supported: \
                         only COUNT, SUM, AVG, MIN and MAX can take retractions"
                    )))
                }
            };
            aggr_expr.push(with_filter(weighted, &f.params.filter).alias(name));
            replacement.push(None);
        }
        aggr_expr.push(sum(weight).alias(ROWS));
        let rewritten = Aggregate::try_new(
            Arc::clone(&aggregate.input),
            aggregate.group_expr.clone(),
            aggr_expr,
        )?;
        let group_count = aggregate.group_expr.len();
        let visible: Vec<Expr> = aggregate
            .schema
            .iter()
            .enumerate()
            .map(|(i, (q, f))| {
                let column = Expr::Column(datafusion::common::Column::new(q.cloned(), f.name()));
                match i.checked_sub(group_count).and_then(|a| replacement[a].clone()) {
                    Some(expr) => expr,
                    None => column,
                }
            })
            .collect();
        let plan = LogicalPlanBuilder::from(LogicalPlan::Aggregate(rewritten))
            .filter(col(ROWS).not_eq(lit(0i64)))?
            .project(visible)?
            .build()?;
        Ok(Transformed::yes(plan))
    })
    .map(|t| t.data)
    .map_err(|e| {
        let message = e.strip_backtrace().to_string();
        match message.find("LDB-1004: ") {
            Some(i) => unsupported(
                message[i + "LDB-1004: ".len()..].to_string(),
                "aggregate the source instead, or use an EMIT ON WINDOW CLOSE upstream (append-only)",
            ),
            None => planning_error(e),
        }
    })
}

/// Finds the window function (`tumble`, `slide`, `hop`, `session`) among GROUP BY
/// expressions.
fn find_window(group_expr: &[Expr]) -> Option<FoundWindow> {
    group_expr
        .iter()
        .enumerate()
        .find_map(|(i, e)| match e.clone().unalias() {
            Expr::ScalarFunction(f) if [TUMBLE, SLIDE, HOP, SESSION].contains(&f.func.name()) => {
                Some(FoundWindow {
                    position: i,
                    name: f.func.name().to_string(),
                    args: f.args,
                })
            }
            _ => None,
        })
}

/// The window a GROUP BY window function describes.
fn window_kind(found: &FoundWindow) -> Result<WindowKind> {
    let name = found.name.as_str();
    let literal_ms = |e: &Expr, what: &str| -> Result<i64> {
        match e.clone().unalias() {
            Expr::Literal(value, _) => interval_ms(&value),
            _ => None,
        }
        .ok_or_else(|| {
            Error::new(
                ErrorCode::InvalidWindow,
                format!(
                    "{name}(): the {what} must be a constant INTERVAL of days or less, got {e}"
                ),
            )
        })
    };
    let args = &found.args;
    if name == TUMBLE {
        if !(2..=3).contains(&args.len()) {
            return Err(Error::new(
                ErrorCode::InvalidWindow,
                "tumble() takes (event_time, size [, offset])",
            ));
        }
        let size_ms = literal_ms(&args[1], "window size")?;
        let offset_ms = args
            .get(2)
            .map_or(Ok(0), |a| literal_ms(a, "window offset"))?;
        return Ok(WindowKind::Fixed(WindowSpec::tumble(size_ms, offset_ms)?));
    }
    if name == SESSION {
        if args.len() != 2 {
            return Err(Error::new(
                ErrorCode::InvalidWindow,
                "session() takes (event_time, gap)",
            ));
        }
        let gap_ms = literal_ms(&args[1], "session gap")?;
        if gap_ms <= 0 {
            return Err(Error::new(
                ErrorCode::InvalidWindow,
                format!("session(): the gap must be positive, got {gap_ms} ms"),
            ));
        }
        return Ok(WindowKind::Session { gap_ms });
    }
    if !(3..=4).contains(&args.len()) {
        return Err(Error::new(
            ErrorCode::InvalidWindow,
            format!("{name}() takes (event_time, size, slide [, offset])"),
        ));
    }
    let size_ms = literal_ms(&args[1], "window size")?;
    let slide_ms = literal_ms(&args[2], "window slide")?;
    let offset_ms = args
        .get(3)
        .map_or(Ok(0), |a| literal_ms(a, "window offset"))?;
    Ok(WindowKind::Fixed(WindowSpec::slide(
        size_ms, slide_ms, offset_ms,
    )?))
}

pub(crate) struct Lowering<'a> {
    props: ExecutionProps,
    pub(crate) sources: &'a HashMap<String, SourceDef>,
    /// The existing streams.
    pub(crate) known: &'a KnownStreams,
    /// Existing streams' output schemas, by name.
    streams: &'a HashMap<String, SchemaRef>,
    /// Tables (lookup joins read them).
    pub(crate) tables: &'a HashMap<String, TableDef>,
    /// Expressions handed to the JIT, for `EXPLAIN`.
    compiled: std::cell::RefCell<Vec<Arc<crate::jit::CompiledExpr>>>,
    /// The stream emits a changelog (`EMIT CHANGES`).
    emit_changes: bool,
}

/// The nodes between an aggregate (or the top) and the scan.
pub(crate) struct Chain<'p> {
    pub(crate) stages: Vec<Stage>,
    /// Expressions a filter and the projections after it share, evaluated
    /// once ([`crate::sharing`]).
    pub(crate) shared: usize,
    pub(crate) scan_source: String,
    pub(crate) below: &'p LogicalPlan,
}

impl<'a> Lowering<'a> {
    fn new(
        ctx: &SessionContext,
        sources: &'a HashMap<String, SourceDef>,
        known: &'a KnownStreams,
        tables: &'a HashMap<String, TableDef>,
        emit_changes: bool,
    ) -> Self {
        Lowering {
            props: ctx.state().execution_props().clone(),
            sources,
            known,
            streams: &known.schemas,
            tables,
            compiled: Default::default(),
            emit_changes,
        }
    }
}

impl Lowering<'_> {
    /// The schema of a source or stream the query reads.
    pub(crate) fn input_schema(&self, name: &str) -> &SchemaRef {
        match (self.sources.get(name), self.tables.get(name)) {
            (Some(source), _) => &source.schema,
            (None, Some(table)) => &table.schema,
            _ => &self.streams[name],
        }
    }

    /// The input named in a scan.
    pub(crate) fn input(&self, name: &str) -> StreamInput {
        if self.sources.contains_key(name) {
            StreamInput::Source(name.to_string())
        } else {
            StreamInput::Stream(name.to_string())
        }
    }

    /// `expr` as the physical expression operators run: compiled where
    /// the JIT supports it (see [`crate::jit`]).
    pub(crate) fn physical(&self, expr: &Expr, schema: &DFSchema) -> Result<Arc<dyn PhysicalExpr>> {
        let physical = self.raw_physical(expr, schema)?;
        Ok(self.compile(physical, schema.as_arrow()))
    }

    /// `expr` as an interpreted physical expression (for rewriting before
    /// it is compiled).
    pub(crate) fn raw_physical(
        &self,
        expr: &Expr,
        schema: &DFSchema,
    ) -> Result<Arc<dyn PhysicalExpr>> {
        let physical = create_physical_expr(
            expr,
            schema,
            &self.props,
            &PhysicalPlanningContext::default(),
        )
        .map_err(planning_error)?;
        crate::specialized::specialize(physical, schema.as_arrow())
    }

    /// `expr` compiled where the JIT supports it.
    pub(crate) fn compile_physical(
        &self,
        expr: Arc<dyn PhysicalExpr>,
        schema: &Schema,
    ) -> Arc<dyn PhysicalExpr> {
        self.compile(expr, schema)
    }

    fn compile(&self, expr: Arc<dyn PhysicalExpr>, schema: &Schema) -> Arc<dyn PhysicalExpr> {
        crate::jit::compile_tree(expr, schema, &mut self.compiled.borrow_mut())
    }

    /// An aggregate whose arguments (and ORDER BY and FILTER expressions)
    /// run compiled where the JIT supports them.
    fn compile_aggregate(
        &self,
        aggregate: Arc<AggregateFunctionExpr>,
        schema: &Schema,
    ) -> Result<Arc<AggregateFunctionExpr>> {
        let prepared = |e: Arc<dyn PhysicalExpr>| -> Result<Arc<dyn PhysicalExpr>> {
            Ok(self.compile(crate::specialized::specialize(e, schema)?, schema))
        };
        let args = aggregate
            .expressions()
            .into_iter()
            .map(prepared)
            .collect::<Result<_>>()?;
        let order_bys = aggregate
            .order_bys()
            .iter()
            .map(|s| prepared(Arc::clone(&s.expr)))
            .collect::<Result<_>>()?;
        Ok(match aggregate.with_new_expressions(args, order_bys) {
            Some(compiled) => Arc::new(compiled),
            None => aggregate,
        })
    }

    /// Walks Projection/Filter/SubqueryAlias nodes down to the next
    /// Aggregate or TableScan. Stages come out in execution order (scan
    /// first).
    pub(crate) fn chain<'p>(&self, node: &'p LogicalPlan) -> Result<Chain<'p>> {
        self.chain_with(node, false)
    }

    /// [`Lowering::chain`] for a stream's last stages, where a costly
    /// expression that a filter shares with the projections after it is
    /// evaluated once ([`crate::sharing`]). Stages below an operator keep
    /// their plain shape, which fused aggregates and joins read.
    pub(crate) fn top_chain<'p>(&self, node: &'p LogicalPlan) -> Result<Chain<'p>> {
        self.chain_with(node, true)
    }

    fn chain_with<'p>(&self, mut node: &'p LogicalPlan, share: bool) -> Result<Chain<'p>> {
        // Each stage with the schema it reads, interpreted until the end.
        let mut stages: Vec<(Stage, SchemaRef)> = Vec::new();
        let arrow_schema = |plan: &LogicalPlan| Arc::new(plan.schema().as_arrow().clone());
        loop {
            match node {
                LogicalPlan::Projection(p) => {
                    let exprs = p
                        .expr
                        .iter()
                        .map(|e| self.raw_physical(e, p.input.schema()))
                        .collect::<Result<Vec<_>>>()?;
                    stages.push((
                        Stage::Project {
                            exprs,
                            schema: Arc::new(p.schema.as_arrow().clone()),
                        },
                        arrow_schema(&p.input),
                    ));
                    node = &p.input;
                }
                LogicalPlan::Filter(f) => {
                    stages.push((
                        Stage::Filter(self.raw_physical(&f.predicate, f.input.schema())?),
                        arrow_schema(&f.input),
                    ));
                    node = &f.input;
                }
                LogicalPlan::SubqueryAlias(s) => node = &s.input,
                LogicalPlan::Unnest(u) => {
                    stages.push((unnest_stage(u)?, arrow_schema(&u.input)));
                    node = &u.input;
                }
                LogicalPlan::Aggregate(_) | LogicalPlan::Window(_) | LogicalPlan::Join(_) => {
                    let (stages, shared) = self.finish_stages(stages, share);
                    return Ok(Chain {
                        stages,
                        shared,
                        scan_source: String::new(),
                        below: node,
                    });
                }
                LogicalPlan::TableScan(scan) => {
                    let name = scan.table_name.table().to_string();
                    if !self.sources.contains_key(&name)
                        && !self.streams.contains_key(&name)
                        && !self.tables.contains_key(&name)
                    {
                        return Err(Error::new(
                            ErrorCode::UnknownObject,
                            format!("unknown source or stream '{name}'"),
                        ));
                    }
                    if !scan.filters.is_empty() || scan.fetch.is_some() {
                        return Err(Error::new(
                            ErrorCode::Planning,
                            "internal: the scan of a source carried pushed-down filters or a limit",
                        ));
                    }
                    if let Some(projection) = &scan.projection {
                        let source_schema = self.input_schema(&name);
                        let exprs = projection
                            .iter()
                            .map(|&i| {
                                Arc::new(datafusion::physical_expr::expressions::Column::new(
                                    source_schema.field(i).name(),
                                    i,
                                )) as Arc<dyn PhysicalExpr>
                            })
                            .collect();
                        stages.push((
                            Stage::Project {
                                exprs,
                                schema: Arc::new(scan.projected_schema.as_arrow().clone()),
                            },
                            Arc::clone(source_schema),
                        ));
                    }
                    let (stages, shared) = self.finish_stages(stages, share);
                    return Ok(Chain {
                        stages,
                        shared,
                        scan_source: name,
                        below: node,
                    });
                }
                other => return Err(unsupported_node(other)),
            }
        }
    }

    /// Stages collected top down, in execution order, shared
    /// ([`crate::sharing`]) if asked and then compiled; with the number of
    /// expressions shared.
    fn finish_stages(
        &self,
        mut stages: Vec<(Stage, SchemaRef)>,
        share: bool,
    ) -> (Vec<Stage>, usize) {
        stages.reverse();
        let mut shared = 0;
        if share {
            (stages, shared) = crate::sharing::share(stages);
        }
        let stages = stages
            .into_iter()
            .map(|(stage, input)| match stage {
                Stage::Filter(predicate) => Stage::Filter(self.compile(predicate, &input)),
                Stage::Project { exprs, schema } => Stage::Project {
                    exprs: exprs.into_iter().map(|e| self.compile(e, &input)).collect(),
                    schema,
                },
                other => other,
            })
            .collect();
        (stages, shared)
    }

    /// Key expressions over `input` as physical expressions, and how rows
    /// must be routed so that equal keys meet on one shard: by the source
    /// columns the keys are, or all to one shard when a key is computed
    /// (or there is none).
    fn keyed(
        &self,
        exprs: &[Expr],
        input: &LogicalPlan,
    ) -> Result<(Vec<Arc<dyn PhysicalExpr>>, Routing)> {
        let mut physical = Vec::with_capacity(exprs.len());
        let mut columns = Some(Vec::with_capacity(exprs.len()));
        for expr in exprs {
            physical.push(self.physical(expr, input.schema())?);
            match (self.trace_to_source(expr, input), columns.as_mut()) {
                (Some(column), Some(columns)) => columns.push(column),
                _ => columns = None,
            }
        }
        let routing = match columns {
            Some(columns) if !columns.is_empty() => Routing::Keys(columns),
            _ => Routing::Single,
        };
        Ok((physical, routing))
    }

    /// Whether `expr` over `node`'s output is an event-time column: a
    /// source's `WATERMARK` column, an upstream stream's time column, a
    /// window function in a `GROUP BY` (or the window's end), or one of
    /// those through projections, filters, joins and casts that keep
    /// milliseconds.
    pub(crate) fn is_time(&self, expr: &Expr, mut node: &LogicalPlan) -> bool {
        let mut expr = expr.clone().unalias();
        loop {
            // A window's end is its start plus the size: no earlier than
            // the start, so as much event time as the start is.
            if let Expr::ScalarFunction(function) = &expr {
                if function.name() == crate::window_tvf::WINDOW_END && function.args.len() == 2 {
                    expr = function.args[0].clone().unalias();
                    continue;
                }
            }
            if let Expr::Cast(cast) = &expr {
                let keeps_ms = matches!(
                    cast.expr.get_type(node.schema()),
                    Ok(arrow::datatypes::DataType::Int64)
                        | Ok(arrow::datatypes::DataType::Timestamp(
                            arrow::datatypes::TimeUnit::Millisecond,
                            _
                        ))
                );
                if !keeps_ms {
                    return false;
                }
                expr = cast.expr.as_ref().clone().unalias();
                continue;
            }
            let Expr::Column(column) = &expr else {
                return false;
            };
            let Ok(index) = node.schema().index_of_column(column) else {
                return false;
            };
            match node {
                LogicalPlan::TableScan(scan) => {
                    let name = scan.table_name.table();
                    let column = scan.projection.as_ref().map_or(index, |p| p[index]);
                    return match self.sources.get(name) {
                        Some(source) => source
                            .watermark
                            .as_ref()
                            .is_some_and(|w| source.schema.field(column).name() == &w.column),
                        None => self
                            .known
                            .time_columns
                            .get(name)
                            .is_some_and(|columns| columns.contains(&column)),
                    };
                }
                LogicalPlan::Aggregate(aggregate) => {
                    let Some(key) = aggregate.group_expr.get(index) else {
                        return false;
                    };
                    if find_window(std::slice::from_ref(key)).is_some() {
                        return true;
                    }
                    // A windowless aggregate grouped by event time emits
                    // each group once the watermark passes its time key
                    // (other time keys may be older), unless it emits a
                    // changelog (which takes late rows too).
                    if self.emit_changes
                        || find_window(&aggregate.group_expr).is_some()
                        || self.time_key(aggregate) != Some(index)
                    {
                        return false;
                    }
                    expr = key.clone().unalias();
                    node = &aggregate.input;
                }
                // Window functions pass their input's columns on.
                LogicalPlan::Window(window) if index < window.input.schema().fields().len() => {
                    let (qualifier, field) = window.input.schema().qualified_field(index);
                    expr = Expr::Column(datafusion::common::Column::new(
                        qualifier.cloned(),
                        field.name(),
                    ));
                    node = &window.input;
                }
                LogicalPlan::Join(join) => {
                    // A regular join, or one bounded by a column of the
                    // rows, keeps rows of any age: no output time is
                    // covered by a watermark.
                    let table = self.table_side(join).ok().flatten().is_some();
                    let asof = crate::join::is_asof(join);
                    let left = join.left.schema().fields().len();
                    let from_left = index < left;
                    if !asof && !table && !self.join_keeps_time(join) {
                        // A bound by a column of one side's rows keeps
                        // that side's rows to any age, but the other
                        // side's times still follow the watermark.
                        let covered_side = self.row_bounded_time_side(join);
                        if covered_side.is_none_or(|side| (side == SideOf::Left) != from_left) {
                            return false;
                        }
                    }
                    // The output watermark covers only rows that carry
                    // the time: not an outer join's padded side (NULLs),
                    // nor an ASOF join's versions (older than the probe).
                    let covered = match join.join_type {
                        datafusion::logical_expr::JoinType::Inner => from_left || !asof,
                        datafusion::logical_expr::JoinType::Left => from_left,
                        datafusion::logical_expr::JoinType::Right => !from_left,
                        // Left rows, emitted on a match (semi) or once no
                        // match can come (anti), as an outer side's are.
                        datafusion::logical_expr::JoinType::LeftSemi
                        | datafusion::logical_expr::JoinType::LeftAnti => from_left,
                        _ => false,
                    };
                    if !covered {
                        return false;
                    }
                    let (side, i) = if from_left {
                        (join.left.as_ref(), index)
                    } else {
                        (join.right.as_ref(), index - left)
                    };
                    let (qualifier, field) = side.schema().qualified_field(i);
                    expr = Expr::Column(datafusion::common::Column::new(
                        qualifier.cloned(),
                        field.name(),
                    ));
                    node = side;
                }
                _ => match step_down(index, node) {
                    Some((e, n)) => {
                        expr = e.unalias();
                        node = n;
                    }
                    None => return false,
                },
            }
        }
    }

    /// The source column an expression reads unchanged, if it is one.
    pub(crate) fn trace_to_source(&self, expr: &Expr, mut node: &LogicalPlan) -> Option<usize> {
        let mut expr = expr.clone().unalias();
        loop {
            let Expr::Column(column) = &expr else {
                return None;
            };
            let index = node.schema().index_of_column(column).ok()?;
            if let LogicalPlan::TableScan(scan) = node {
                return Some(scan.projection.as_ref().map_or(index, |p| p[index]));
            }
            (expr, node) = step_down(index, node)?;
        }
    }

    /// Lowers an aggregate (with `post` stages above it) to its operator.
    fn aggregate(
        &self,
        aggregate: &Aggregate,
        post: Vec<Stage>,
        emit: Option<EmitMode>,
        late_side_output: bool,
    ) -> Result<(StreamInput, Routing, StreamOperator, String)> {
        let found = find_window(&aggregate.group_expr);
        // Grouped by an event-time column, a group closes when the
        // watermark passes its time, as a window does.
        let instant = match (&found, emit) {
            (None, Some(EmitMode::Changes)) | (Some(_), _) => None,
            (None, _) => self.time_key(aggregate),
        };
        if found.is_none() && instant.is_none() && emit != Some(EmitMode::Changes) {
            return Err(unsupported(
                "a GROUP BY without a window or an event-time column never closes, so it can only emit a changelog",
                "add EMIT CHANGES (rows then carry a _weight of +1/-1), a window such as tumble(ts, INTERVAL '1' MINUTE), or the event-time column itself to the GROUP BY",
            ));
        }
        if let Some(found) = &found {
            if find_window(&aggregate.group_expr[found.position + 1..]).is_some() {
                return Err(Error::new(
                    ErrorCode::InvalidWindow,
                    "a stream may GROUP BY only one window function",
                ));
            }
        }
        if aggregate
            .group_expr
            .iter()
            .any(|e| matches!(e, Expr::GroupingSet(_)))
        {
            return Err(unsupported(
                "GROUPING SETS, CUBE and ROLLUP are not supported in streams",
                "use one GROUP BY per stream",
            ));
        }

        let chain = self.chain(&aggregate.input)?;
        let source_name = chain.scan_source.clone();
        if source_name.is_empty() {
            return Err(unsupported(
                "an aggregate over another aggregate is not supported yet",
                "use one GROUP BY per stream",
            ));
        }
        let input_schema = aggregate.input.schema();
        let window = match &found {
            Some(found) => Some(self.window_binding(found, aggregate, &source_name)?),
            None => None,
        };
        let instant = match instant {
            Some(position) => Some(self.window_binding(
                &FoundWindow {
                    position,
                    name: TUMBLE.to_string(),
                    args: vec![
                        aggregate.group_expr[position].clone(),
                        Expr::Literal(
                            datafusion::common::ScalarValue::new_interval_mdn(0, 0, 1_000_000),
                            None,
                        ),
                    ],
                },
                aggregate,
                &source_name,
            )?),
            None => None,
        };

        let key_exprs: Vec<Expr> = aggregate
            .group_expr
            .iter()
            .enumerate()
            .filter(|(i, _)| found.as_ref().is_none_or(|f| f.position != *i))
            .map(|(_, e)| e.clone())
            .collect();
        let (keys, routing) = self.keyed(&key_exprs, &aggregate.input)?;

        let physical_input_schema: Schema = input_schema.as_arrow().clone();
        let mut aggregates = Vec::new();
        let mut aggregate_filters = Vec::new();
        // Before compilation, for the fused form.
        let mut raw_aggregates = Vec::new();
        let mut raw_filters = Vec::new();
        for expr in &aggregate.aggr_expr {
            let planning_ctx = PhysicalPlanningContext::default();
            let lowered = LoweredAggregateBuilder::new(
                expr,
                input_schema,
                &physical_input_schema,
                &self.props,
                &planning_ctx,
            )
            .build()
            .map_err(planning_error)?;
            raw_aggregates.push(Arc::clone(&lowered.aggregate));
            raw_filters.push(lowered.filter.clone());
            aggregates.push(self.compile_aggregate(lowered.aggregate, &physical_input_schema)?);
            aggregate_filters.push(match lowered.filter {
                Some(f) => {
                    let f = crate::specialized::specialize(f, &physical_input_schema)?;
                    Some(self.compile(f, &physical_input_schema))
                }
                None => None,
            });
        }
        let changes = emit == Some(EmitMode::Changes);
        let session = matches!(
            window.as_ref().map(|w| w.kind),
            Some(WindowKind::Session { .. })
        );
        // Sessions fold rows into per-session state; changelog aggregates
        // keep live accumulators they read without consuming.
        let foldable = (session || changes)
            .then(|| crate::fused::foldable_kinds(&raw_aggregates, &physical_input_schema))
            .flatten();
        let window_text = match window.as_ref().map(|w| w.kind) {
            Some(WindowKind::Fixed(w)) if w.is_tumbling() => {
                format!("tumble size={}ms offset={}ms", w.size_ms, w.offset_ms)
            }
            Some(WindowKind::Fixed(w)) => format!(
                "slide size={}ms slide={}ms offset={}ms",
                w.size_ms, w.slide_ms, w.offset_ms
            ),
            Some(WindowKind::Session { gap_ms }) => format!(
                "session gap={gap_ms}ms state={}",
                if foldable.is_some() { "folded" } else { "rows" }
            ),
            None => match &instant {
                Some(time) => format!(
                    "closes at {} past the watermark",
                    aggregate.group_expr[time.position]
                ),
                None => "no window".to_string(),
            },
        };
        let explain = format!(
            "{}[{window_text}, keys={}, aggregates=[{}], routing={:?}] <- {} stage(s) <- {}{}",
            match (changes, session) {
                (true, true) => "SessionAggregate(changes)",
                (true, false) if foldable.is_some() => "ChangelogAggregate(folded)",
                (true, false) => "ChangelogAggregate",
                (false, true) => "SessionAggregate",
                (false, false) if instant.is_some() => "InstantAggregate",
                (false, false) => "WindowAggregate",
            },
            keys.len(),
            aggregate
                .aggr_expr
                .iter()
                .map(|e| e.schema_name().to_string())
                .collect::<Vec<_>>()
                .join(", "),
            routing,
            chain.stages.len(),
            self.input(&source_name),
            if post.is_empty() {
                String::new()
            } else {
                format!(" -> {} stage(s)", post.len())
            }
        );
        let fused = match (&window, changes, session) {
            (Some(window), false, false) if instant.is_none() => self.fused_aggregate(
                aggregate,
                Some(window),
                &key_exprs,
                &raw_aggregates,
                &raw_filters,
                true,
            ),
            // A session's and a changelog's fused kernel fold into the
            // same slots as their interpreted path.
            (window, true, _) | (window @ Some(_), _, true) if foldable.is_some() => self
                .fused_aggregate(
                    aggregate,
                    window.as_ref(),
                    &key_exprs,
                    &raw_aggregates,
                    &raw_filters,
                    false,
                )
                .filter(|f| foldable.as_ref() == Some(&f.aggregates)),
            _ => None,
        };
        let spec = AggregateSpec {
            pre: chain.stages,
            window,
            keys,
            aggregates,
            aggregate_filters,
            aggregate_schema: Arc::new(aggregate.schema.as_arrow().clone()),
            post,
            late_side_output,
            fused,
            foldable,
            phase: laminar_operators::AggregatePhase::Whole,
        };
        let operator = match (changes, session, instant) {
            (changes, true, _) => StreamOperator::SessionAggregate { spec, changes },
            (true, false, _) => StreamOperator::ChangelogAggregate(spec),
            (false, false, Some(time)) => StreamOperator::InstantAggregate { spec, time },
            (false, false, None) => StreamOperator::WindowAggregate(spec),
        };
        Ok((self.input(&source_name), routing, operator, explain))
    }

    /// Lowers window functions ordered by event time.
    fn analytic(
        &self,
        window: &datafusion::logical_expr::Window,
        post: Vec<Stage>,
    ) -> Result<(StreamInput, Routing, StreamOperator, String)> {
        let chain = self.chain(&window.input)?;
        if chain.scan_source.is_empty() {
            return Err(unsupported(
                "window functions over an aggregate in the same stream are not supported",
                "aggregate in one stream and use window functions in a stream reading it",
            ));
        }
        // A changelog's rows may be retracted after the watermark passed
        // them, and a function's value depends on every row before it:
        // emitted once, it could not be corrected.
        if self
            .input_schema(&chain.scan_source)
            .field_with_name(WEIGHT_COLUMN)
            .is_ok()
        {
            return Err(unsupported(
                "window functions over a changelog (a GROUP BY without a window, or a stream with EMIT CHANGES) are not supported yet",
                "window functions read append-only input: a source, a windowed aggregate emitted when its windows close, or a join of those",
            ));
        }
        let input_schema = window.input.schema();
        let mut partition_by: Option<Vec<Expr>> = None;
        let mut event_time: Option<Expr> = None;
        let mut tie_break: Option<Vec<datafusion::logical_expr::SortExpr>> = None;
        let mut functions = Vec::new();
        let hint = "window functions in streams: ROW_NUMBER, RANK, DENSE_RANK, LAG, LEAD, running SUM/COUNT/MIN/MAX/AVG OVER (PARTITION BY ... ORDER BY <event time>), or ROW_NUMBER filtered by rn <= N";
        let input_columns = input_schema.fields().len();
        for (position, expr) in window.window_expr.iter().enumerate() {
            let Expr::WindowFunction(function) = expr.clone().unalias() else {
                return Err(unsupported(
                    format!("unexpected window expression {expr}"),
                    hint,
                ));
            };
            let name = function.fun.name().to_lowercase();
            let params = &function.params;
            // Every function must share one window: same partitions, ordered
            // by the event-time column, ascending.
            match &partition_by {
                None => partition_by = Some(params.partition_by.clone()),
                Some(p) if *p == params.partition_by => {}
                Some(_) => {
                    return Err(unsupported(
                        "window functions with different PARTITION BY in one stream",
                        "use one PARTITION BY per stream",
                    ))
                }
            }
            let [sort, ties @ ..] = params.order_by.as_slice() else {
                return Err(unsupported(
                    format!("{name}() OVER (...) must be ordered by the event-time column"),
                    hint,
                ));
            };
            match &tie_break {
                None => tie_break = Some(ties.to_vec()),
                Some(t) if t.as_slice() == ties => {}
                Some(_) => {
                    return Err(unsupported(
                        "window functions ordered by different keys in one stream",
                        "order every function by the event-time column and the same further keys",
                    ))
                }
            }
            if !sort.asc {
                return Err(unsupported(
                    format!("{name}() OVER (... ORDER BY {} DESC) cannot be streamed: it would wait for the end of time", sort.expr),
                    "order by event time ascending, or use ROW_NUMBER filtered by rn <= N for a Top-N",
                ));
            }
            match &event_time {
                None => event_time = Some(sort.expr.clone()),
                Some(e) if *e == sort.expr => {}
                Some(_) => {
                    return Err(unsupported(
                        "window functions ordered by different columns in one stream",
                        "order every function by the event-time column",
                    ))
                }
            }
            let literal = |e: &Expr| match e.clone().unalias() {
                Expr::Literal(v, _) => Some(v),
                _ => None,
            };
            functions.push(match (name.as_str(), params.args.as_slice()) {
                ("row_number", []) => AnalyticFunction::RowNumber,
                ("rank", []) => AnalyticFunction::Rank,
                ("dense_rank", []) => AnalyticFunction::DenseRank,
                (kind @ ("lag" | "lead"), [argument, rest @ ..]) if rest.len() <= 2 => {
                    let offset = match rest.first().map(literal) {
                        None => 1,
                        Some(Some(v)) => v
                            .cast_to(&arrow::datatypes::DataType::Int64)
                            .ok()
                            .and_then(|v| match v {
                                datafusion::common::ScalarValue::Int64(Some(n)) if n >= 1 => {
                                    usize::try_from(n).ok()
                                }
                                _ => None,
                            })
                            .ok_or_else(|| {
                                unsupported("LAG's offset must be a positive constant", hint)
                            })?,
                        Some(None) => {
                            return Err(unsupported(
                                "LAG's offset must be a positive constant",
                                hint,
                            ))
                        }
                    };
                    let default = match rest.get(1) {
                        None => None,
                        Some(e) => Some(literal(e).ok_or_else(|| {
                            unsupported(
                                format!("{}'s default must be a constant", kind.to_uppercase()),
                                hint,
                            )
                        })?),
                    };
                    let argument = self.physical(argument, input_schema)?;
                    if kind == "lag" {
                        AnalyticFunction::Lag {
                            argument,
                            offset,
                            default,
                        }
                    } else {
                        AnalyticFunction::Lead {
                            argument,
                            offset,
                            default,
                        }
                    }
                }
                (kind @ ("sum" | "count" | "min" | "max" | "avg"), [argument]) => {
                    use datafusion::logical_expr::{WindowFrameBound, WindowFrameUnits};
                    let frame = &params.window_frame;
                    let rows = frame.units == WindowFrameUnits::Rows;
                    let running_frame = match (&frame.start_bound, &frame.end_bound) {
                        (start, WindowFrameBound::CurrentRow) if start.is_unbounded() => {
                            RunningFrame::Unbounded { peers: !rows }
                        }
                        (WindowFrameBound::CurrentRow, WindowFrameBound::CurrentRow) if rows => {
                            RunningFrame::Rows { preceding: 0 }
                        }
                        (WindowFrameBound::CurrentRow, WindowFrameBound::CurrentRow)
                            if frame.units == WindowFrameUnits::Range =>
                        {
                            RunningFrame::Range { preceding: 0 }
                        }
                        (WindowFrameBound::Preceding(d), WindowFrameBound::CurrentRow)
                            if frame.units == WindowFrameUnits::Range =>
                        {
                            let order_type = sort.expr.get_type(input_schema).map_err(planning_error)?;
                            let preceding = range_in_ticks(d, &order_type).ok_or_else(|| {
                                unsupported(
                                    format!("{name}() OVER (... {frame}): the frame's length must be a constant of fixed length (no months) in the ORDER BY column's terms"),
                                    "RANGE BETWEEN INTERVAL '5' MINUTE PRECEDING AND CURRENT ROW over a TIMESTAMP, or a number of ms over a BIGINT event time",
                                )
                            })?;
                            RunningFrame::Range { preceding }
                        }
                        (WindowFrameBound::Preceding(n), WindowFrameBound::CurrentRow)
                            if rows =>
                        {
                            let preceding = n
                                .cast_to(&arrow::datatypes::DataType::UInt64)
                                .ok()
                                .and_then(|v| match v {
                                    datafusion::common::ScalarValue::UInt64(Some(n)) => {
                                        usize::try_from(n).ok()
                                    }
                                    _ => None,
                                })
                                .ok_or_else(|| {
                                    unsupported(
                                        format!("{name}() OVER (... {frame}): the frame's length must be a constant"),
                                        "ROWS BETWEEN <n> PRECEDING AND CURRENT ROW",
                                    )
                                })?;
                            RunningFrame::Rows { preceding }
                        }
                        _ => {
                            return Err(unsupported(
                                format!("{name}() OVER (... {frame}) cannot be streamed yet"),
                                "running aggregates in streams cover UNBOUNDED PRECEDING to CURRENT ROW (the default frame), the last rows (ROWS BETWEEN <n> PRECEDING AND CURRENT ROW) or the last stretch of event time (RANGE BETWEEN INTERVAL '...' PRECEDING AND CURRENT ROW)",
                            ))
                        }
                    };
                    if params.distinct || params.filter.is_some() {
                        return Err(unsupported(
                            format!("{name}(DISTINCT ...) or FILTER in a running aggregate is not supported in streams yet"),
                            hint,
                        ));
                    }
                    let kind = match kind {
                        "sum" => RunningKind::Sum,
                        "count" => RunningKind::Count,
                        "min" => RunningKind::Min,
                        "max" => RunningKind::Max,
                        _ => RunningKind::Avg,
                    };
                    let output = window
                        .schema
                        .field(input_columns + position)
                        .data_type();
                    let argument_type = laminar_operators::running::argument_type(kind, output)?;
                    let argument = Expr::Cast(datafusion::logical_expr::Cast::new(
                        Box::new(argument.clone()),
                        argument_type,
                    ));
                    AnalyticFunction::Running {
                        kind,
                        argument: self.physical(&argument, input_schema)?,
                        frame: running_frame,
                    }
                }
                _ => {
                    return Err(unsupported(
                        format!("{name}() OVER (...) is not supported in streams yet"),
                        hint,
                    ))
                }
            });
        }
        let has = |f: fn(&AnalyticFunction) -> bool| functions.iter().any(f);
        if has(|f| matches!(f, AnalyticFunction::Running { .. }))
            && has(|f| matches!(f, AnalyticFunction::Lead { .. }))
        {
            return Err(unsupported(
                "running aggregates and LEAD in one stream are not supported yet",
                "compute them in two streams reading the same input",
            ));
        }
        let tie_break = tie_break.unwrap_or_default();
        // Further ORDER BY keys decide the order among rows of equal
        // event time; functions with peers would also need them for
        // deciding who is a peer.
        let has_peers = |f: &AnalyticFunction| match f {
            AnalyticFunction::Rank | AnalyticFunction::DenseRank => true,
            AnalyticFunction::Running { frame, .. } => !matches!(
                frame,
                RunningFrame::Rows { .. } | RunningFrame::Unbounded { peers: false }
            ),
            _ => false,
        };
        if !tie_break.is_empty() && functions.iter().any(has_peers) {
            return Err(unsupported(
                "RANK, DENSE_RANK and RANGE frames ordered by more keys than the event time are not supported yet",
                "order them by the event-time column alone (rows of equal time are peers), or use ROW_NUMBER, LAG, LEAD or a ROWS frame",
            ));
        }
        let tie_break = self.sort_exprs(&tie_break, input_schema)?;
        let event_time = event_time.expect("at least one window function");
        let time_column = self.trace_to_source(&event_time, &window.input);
        let watermark_column = self
            .sources
            .get(&chain.scan_source)
            .and_then(|s| s.watermark.as_ref())
            .map(|w| w.column.clone());
        let source_schema = self.input_schema(&chain.scan_source);
        let is_event_time = match (time_column, &watermark_column) {
            (Some(column), Some(watermark)) => source_schema.field(column).name() == watermark,
            // A stream's columns carry its input's watermark.
            (Some(_), None) => self.streams.contains_key(&chain.scan_source),
            _ => false,
        };
        if !is_event_time {
            return Err(unsupported(
                format!(
                    "window functions must be ordered by the event-time column, not {event_time}"
                ),
                "declare WATERMARK FOR <column> on the source and ORDER BY that column",
            ));
        }
        let time_type = event_time.get_type(input_schema).map_err(planning_error)?;
        let unit = EventTimeUnit::of(&time_type, &event_time.to_string())?;
        let partition_exprs = partition_by.unwrap_or_default();
        let (partition_physical, routing) = self.keyed(&partition_exprs, &window.input)?;
        let input = self.input(&chain.scan_source);
        let explain = format!(
            "WindowFunctions[{} function(s), partition_by={}, order_by={event_time}{}, routing={routing:?}] <- {} stage(s) <- {input}{}",
            functions.len(),
            partition_exprs.len(),
            tie_break
                .iter()
                .map(|s| format!(", {s}"))
                .collect::<String>(),
            chain.stages.len(),
            if post.is_empty() { String::new() } else { format!(" -> {} stage(s)", post.len()) }
        );
        let spec = AnalyticSpec {
            pre: chain.stages,
            event_time: self.physical(&event_time, input_schema)?,
            unit,
            partition_by: partition_physical,
            tie_break,
            functions,
            window_schema: Arc::new(window.schema.as_arrow().clone()),
            post,
        };
        Ok((input, routing, StreamOperator::Analytic(spec), explain))
    }

    /// Lowers `ROW_NUMBER() OVER (...)` kept to `limit` rows per partition.
    fn top_n(
        &self,
        window: &datafusion::logical_expr::Window,
        post: Vec<Stage>,
        limit: usize,
    ) -> Result<(StreamInput, Routing, StreamOperator, String)> {
        let [expr] = window.window_expr.as_slice() else {
            return Err(unsupported(
                "one OVER (...) function per stream is supported",
                "split the query into cascading streams",
            ));
        };
        let Expr::WindowFunction(function) = expr.clone().unalias() else {
            return Err(unsupported(
                format!("unexpected window expression {expr}"),
                "",
            ));
        };
        let name = function.fun.name().to_lowercase();
        if name != "row_number" {
            return Err(unsupported(
                format!("{name}() OVER (...) is not supported in streams yet"),
                "ROW_NUMBER() OVER (PARTITION BY ... ORDER BY ...) filtered by rn <= N works",
            ));
        }
        let params = &function.params;
        if params.order_by.is_empty() {
            return Err(unsupported(
                "ROW_NUMBER() OVER (...) needs an ORDER BY in a stream",
                "order by the column that ranks rows, e.g. ORDER BY price DESC",
            ));
        }
        let chain = self.chain(&window.input)?;
        if chain.scan_source.is_empty() {
            return Err(unsupported(
                "ROW_NUMBER() over an aggregate in the same stream is not supported",
                "aggregate in one stream and rank in a stream reading it",
            ));
        }
        let input_schema = window.input.schema();
        let (partition_by, routing) = self.keyed(&params.partition_by, &window.input)?;
        let order_by = self.sort_exprs(&params.order_by, input_schema)?;
        let input = self.input(&chain.scan_source);
        let explain = format!(
            "TopN[limit={limit}, partition_by={}, order_by={}, routing={routing:?}] <- {} stage(s) <- {input}{}",
            params.partition_by.len(),
            params
                .order_by
                .iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>()
                .join(", "),
            chain.stages.len(),
            if post.is_empty() { String::new() } else { format!(" -> {} stage(s)", post.len()) }
        );
        let spec = TopNSpec {
            pre: chain.stages,
            partition_by,
            order_by,
            limit,
            ranked_schema: Arc::new(window.schema.as_arrow().clone()),
            post,
        };
        Ok((input, routing, StreamOperator::TopN(spec), explain))
    }

    /// For a Top-1 over `window` that keeps each key's latest row by
    /// event time, filters on nothing but the rank and shows columns of
    /// its input as they are: `SELECT <those columns> FROM <input>`, the
    /// rows it deduplicates. A temporal join reads them as the versions
    /// (each valid from its time until its key's next), which, unlike the
    /// changelog of net changes per batch, does not depend on batching.
    fn versions_query(
        &self,
        plan: &LogicalPlan,
        window: &datafusion::logical_expr::Window,
        spec: &TopNSpec,
        input: &StreamInput,
    ) -> Option<String> {
        let [expr] = window.window_expr.as_slice() else {
            return None;
        };
        let Expr::WindowFunction(function) = expr.clone().unalias() else {
            return None;
        };
        let params = &function.params;
        let [sort] = params.order_by.as_slice() else {
            return None;
        };
        if sort.asc || params.partition_by.is_empty() || !self.is_time(&sort.expr, &window.input) {
            return None;
        }
        if spec
            .pre
            .iter()
            .any(|stage| matches!(stage, Stage::Filter(_)))
        {
            return None;
        }
        // Above the window: the rank filter alone, and plain columns.
        let mut node = plan;
        let mut filters = 0;
        while !matches!(node, LogicalPlan::Window(_)) {
            match node {
                LogicalPlan::Filter(filter) => {
                    filters += 1;
                    if datafusion::logical_expr::utils::split_conjunction(&filter.predicate).len()
                        != 1
                    {
                        return None;
                    }
                }
                LogicalPlan::Projection(_) | LogicalPlan::SubqueryAlias(_) => {}
                _ => return None,
            }
            node = node.inputs().first()?;
        }
        let LogicalPlan::Projection(top) = plan else {
            return None;
        };
        let input_schema = self.input_schema(input.name());
        let mut columns = Vec::new();
        for (expr, field) in top.expr.iter().zip(top.schema.fields()) {
            let Expr::Column(column) = expr.clone().unalias() else {
                return None;
            };
            let source = input_schema.field_with_name(&column.name).ok()?;
            if column.name != *field.name() || source.data_type() != field.data_type() {
                return None;
            }
            columns.push(quoted(&column.name));
        }
        (filters == 1).then(|| {
            format!(
                "SELECT {} FROM {}",
                columns.join(", "),
                quoted(input.name())
            )
        })
    }

    /// `ORDER BY` keys as physical sort expressions over `schema`.
    fn sort_exprs(
        &self,
        order_by: &[datafusion::logical_expr::SortExpr],
        schema: &DFSchema,
    ) -> Result<Vec<PhysicalSortExpr>> {
        order_by
            .iter()
            .map(|sort| {
                Ok(PhysicalSortExpr {
                    expr: self.physical(&sort.expr, schema)?,
                    options: arrow::compute::SortOptions {
                        descending: !sort.asc,
                        nulls_first: sort.nulls_first,
                    },
                })
            })
            .collect()
    }

    /// The position of the first GROUP BY expression of a windowless
    /// aggregate that is an event-time column of its input, read as it is,
    /// if any: the key by which its groups close. None over a changelog,
    /// whose rows for a time may still change after the watermark passed
    /// it (a windowed `EMIT CHANGES` stream's window start).
    pub(crate) fn time_key(&self, aggregate: &Aggregate) -> Option<usize> {
        if aggregate
            .input
            .schema()
            .has_column_with_unqualified_name(WEIGHT_COLUMN)
        {
            return None;
        }
        aggregate.group_expr.iter().position(|e| {
            self.trace_to_source(e, &aggregate.input).is_some() && self.is_time(e, &aggregate.input)
        })
    }

    /// Checks a GROUP BY window function against its source and binds it.
    fn window_binding(
        &self,
        found: &FoundWindow,
        aggregate: &Aggregate,
        source_name: &str,
    ) -> Result<WindowBinding> {
        let window = window_kind(found)?;
        let name = &found.name;
        let event_time = &found.args[0];
        let source_schema = self.input_schema(source_name);
        let watermark = self
            .sources
            .get(source_name)
            .and_then(|s| s.watermark.as_ref());
        let input_schema = aggregate.input.schema();
        let time_column = self
            .trace_to_source(event_time, &aggregate.input)
            .ok_or_else(|| {
                Error::new(
                    ErrorCode::InvalidWindow,
                    format!(
                        "{name}(): the event-time argument '{event_time}' must be a column of '{source_name}'"
                    ),
                )
            })?;
        let time_field = source_schema.field(time_column);
        if !self.sources.contains_key(source_name) && !self.is_time(event_time, &aggregate.input) {
            return Err(Error::new(
                ErrorCode::InvalidWindow,
                format!(
                    "{name}(): column '{}' of stream '{source_name}' does not carry event time, so the stream's watermark says nothing about it",
                    time_field.name()
                ),
            )
            .with_hint("window by a window's start or a column that is its source's event time"));
        }
        if let Some(watermark) = watermark {
            if &watermark.column != time_field.name() {
                return Err(Error::new(
                    ErrorCode::InvalidWindow,
                    format!(
                        "{name}() uses column '{}' but source '{source_name}' has its WATERMARK on '{}'",
                        time_field.name(),
                        watermark.column
                    ),
                ));
            }
        }
        let source_time_unit = EventTimeUnit::of(time_field.data_type(), time_field.name())?;
        let window_type = event_time.get_type(input_schema).map_err(planning_error)?;
        Ok(WindowBinding {
            source_time_column: time_column,
            source_time_unit,
            event_time: self.physical(event_time, input_schema)?,
            kind: window,
            unit: EventTimeUnit::of(&window_type, &event_time.to_string())?,
            position: found.position,
        })
    }
}

/// Whether a window node is a Top-N: one `ROW_NUMBER()` with a filter on
/// its rank above it.
fn is_top_n(
    window: &datafusion::logical_expr::Window,
    plan: &LogicalPlan,
    node: &LogicalPlan,
) -> bool {
    let single_row_number = match window.window_expr.as_slice() {
        [expr] => matches!(
            expr.clone().unalias(),
            Expr::WindowFunction(f) if f.fun.name().eq_ignore_ascii_case("row_number")
        ),
        _ => false,
    };
    single_row_number && rank_limit(plan, node).is_some()
}

/// `UNNEST` of one list column, one level deep.
fn unnest_stage(u: &datafusion::logical_expr::Unnest) -> Result<Stage> {
    use datafusion::common::NullHandling;
    let [(column, list)] = u.list_type_columns.as_slice() else {
        return Err(unsupported(
            "UNNEST of several columns at once is not supported in streams",
            "unnest one list column per stream",
        ));
    };
    if list.depth != 1 || !u.struct_type_columns.is_empty() {
        return Err(unsupported(
            "UNNEST of structs or nested lists is not supported in streams",
            "unnest one level of a list column",
        ));
    }
    let (keep_null, keep_empty) = match u.options.null_handling {
        NullHandling::Drop => (false, false),
        NullHandling::Preserve => (true, false),
        NullHandling::PreserveAndExpandEmpty => (true, true),
    };
    Ok(Stage::Unnest {
        column: *column,
        keep_null,
        keep_empty,
        sources: u.dependency_indices.clone(),
        schema: Arc::new(u.schema.as_arrow().clone()),
    })
}

/// The N of a Top-N: a filter between the top of `plan` and the window
/// node `window` that keeps ranks `<= N`, `< N + 1` or `= 1`.
fn rank_limit(plan: &LogicalPlan, window: &LogicalPlan) -> Option<usize> {
    use datafusion::logical_expr::{BinaryExpr, Operator};
    let rank_index = window.schema().fields().len() - 1;
    let mut node = plan;
    while !std::ptr::eq(node, window) {
        if let LogicalPlan::Filter(filter) = node {
            for conjunct in datafusion::logical_expr::utils::split_conjunction(&filter.predicate) {
                let Expr::BinaryExpr(BinaryExpr { left, op, right }) = conjunct else {
                    continue;
                };
                let (column, op, value) = match (left.as_ref(), right.as_ref()) {
                    (c @ Expr::Column(_), Expr::Literal(v, _)) => (c, *op, v),
                    (Expr::Literal(v, _), c @ Expr::Column(_)) => (c, op.swap()?, v),
                    _ => continue,
                };
                if trace_to(column, &filter.input, window) != Some(rank_index) {
                    continue;
                }
                let n = match value {
                    datafusion::common::ScalarValue::UInt64(Some(n)) => *n as i64,
                    datafusion::common::ScalarValue::Int64(Some(n)) => *n,
                    datafusion::common::ScalarValue::Int32(Some(n)) => i64::from(*n),
                    _ => continue,
                };
                let limit = match op {
                    Operator::LtEq => n,
                    Operator::Lt => n - 1,
                    Operator::Eq if n == 1 => 1,
                    _ => continue,
                };
                if limit >= 1 {
                    return usize::try_from(limit).ok();
                }
            }
        }
        node = match node {
            LogicalPlan::Projection(p) => &p.input,
            LogicalPlan::Filter(f) => &f.input,
            LogicalPlan::SubqueryAlias(s) => &s.input,
            _ => return None,
        };
    }
    None
}

/// The index in `target`'s schema of the column `expr` reads unchanged,
/// following projections and aliases from `node` down to `target`.
fn trace_to(expr: &Expr, mut node: &LogicalPlan, target: &LogicalPlan) -> Option<usize> {
    let mut expr = expr.clone().unalias();
    loop {
        let Expr::Column(column) = &expr else {
            return None;
        };
        let index = node.schema().index_of_column(column).ok()?;
        if std::ptr::eq(node, target) {
            return Some(index);
        }
        (expr, node) = step_down(index, node)?;
    }
}

/// What column `index` of `node`'s output is in terms of its input: the
/// expression (a column when passed through unchanged) and the input. Only
/// through nodes that keep rows as they are (projections, filters,
/// aliases, the repeated columns of an `UNNEST`).
fn step_down(index: usize, node: &LogicalPlan) -> Option<(Expr, &LogicalPlan)> {
    let column_of = |input: &LogicalPlan, i: usize| {
        let (qualifier, field) = input.schema().qualified_field(i);
        Expr::Column(datafusion::common::Column::new(
            qualifier.cloned(),
            field.name(),
        ))
    };
    match node {
        LogicalPlan::Projection(p) => Some((p.expr[index].clone().unalias(), &p.input)),
        LogicalPlan::Filter(f) => Some((column_of(&f.input, index), &f.input)),
        LogicalPlan::SubqueryAlias(s) => Some((column_of(&s.input, index), &s.input)),
        LogicalPlan::Unnest(u) => {
            // Repeated columns keep their values; the unnested one does not
            // come from an input column.
            let source = u.dependency_indices[index];
            let unnested = u.list_type_columns.iter().any(|(c, _)| *c == source)
                || u.struct_type_columns.contains(&source);
            (!unnested).then(|| (column_of(&u.input, source), u.input.as_ref()))
        }
        _ => None,
    }
}

fn unsupported_node(node: &LogicalPlan) -> Error {
    let (what, hint) = match node {
        LogicalPlan::Join(_) => (
            "joins are not supported in streams yet",
            "one source per stream",
        ),
        LogicalPlan::Sort(_) => (
            "ORDER BY is not supported in streams",
            "order results in the subscriber",
        ),
        LogicalPlan::Limit(_) => ("LIMIT is not supported in streams", "remove the LIMIT"),
        LogicalPlan::Window(_) => (
            "OVER (...) here is not supported in streams yet",
            "ROW_NUMBER() OVER (PARTITION BY ... ORDER BY ...) filtered by rn <= N (Top-N) works",
        ),
        LogicalPlan::Distinct(_) => (
            "SELECT DISTINCT is not supported in streams yet",
            "use GROUP BY with a window",
        ),
        LogicalPlan::Union(_) => (
            "UNION is not supported in streams yet",
            "create one stream per input",
        ),
        LogicalPlan::EmptyRelation(_) | LogicalPlan::Values(_) => {
            ("a stream must read from a source", "add FROM <source>")
        }
        _ => (
            "this query shape is not supported in streams",
            "see docs/SQL_REFERENCE.md",
        ),
    };
    unsupported(format!("{what} (plan node: {})", node.display()), hint)
}

/// The schema with the changelog's `_weight` column added last.
fn with_weight_column(schema: &SchemaRef) -> Result<SchemaRef> {
    if schema.field_with_name(WEIGHT_COLUMN).is_ok() {
        return Err(Error::new(
            ErrorCode::Planning,
            format!("an EMIT CHANGES stream adds a column named {WEIGHT_COLUMN}; the query already has one"),
        )
        .with_hint("rename the query's column"));
    }
    let mut fields = schema.fields().to_vec();
    fields.push(Arc::new(arrow::datatypes::Field::new(
        WEIGHT_COLUMN,
        arrow::datatypes::DataType::Int64,
        false,
    )));
    Ok(Arc::new(Schema::new(fields)))
}

/// What planning knows of the existing streams, by name.
#[derive(Debug, Clone, Default)]
pub struct KnownStreams {
    /// Output schemas.
    pub schemas: HashMap<String, SchemaRef>,
    /// Event-time columns ([`StreamPlan::time_columns`]).
    pub time_columns: HashMap<String, Vec<usize>>,
    /// Settled event-time columns ([`StreamPlan::settled_time_columns`]).
    pub settled_time_columns: HashMap<String, Vec<usize>>,
    /// Deduplications' versions queries ([`StreamPlan::versions_query`]).
    pub versions: HashMap<String, String>,
}

impl KnownStreams {
    /// Adds a planned stream.
    pub fn insert(&mut self, plan: &StreamPlan) {
        let name = &plan.name;
        self.schemas
            .insert(name.clone(), Arc::clone(&plan.output_schema));
        self.time_columns
            .insert(name.clone(), plan.time_columns.clone());
        self.settled_time_columns
            .insert(name.clone(), plan.settled_time_columns.clone());
        if let Some(query) = &plan.versions_query {
            self.versions.insert(name.clone(), query.clone());
        }
    }
}

/// Plans `CREATE STREAM` over the given sources and existing streams:
/// the stream's plan, last, after the plans of the stage streams it reads
/// (see the module docs), in creation order.
pub async fn plan_stream(
    ctx: &SessionContext,
    def: &StreamDef,
    sources: &HashMap<String, SourceDef>,
    streams: &KnownStreams,
    tables: &HashMap<String, TableDef>,
) -> Result<Vec<StreamPlan>> {
    let query = crate::window_tvf::rewrite(&def.query)?;
    // A temporal join's versions are timed by a source's event time, or a
    // stream's (when it has exactly one event-time column; for a
    // changelog, exactly one settled one).
    let (query, asof) = crate::asof::rewrite(&query, |table| {
        let time = match sources.get(table) {
            Some(source) => source.watermark.as_ref().map(|w| w.column.clone()),
            None => {
                let schema = streams.schemas.get(table)?;
                let changelog = schema.field_with_name(WEIGHT_COLUMN).is_ok();
                // A changelog with no settled column is refused with the
                // reason when the join is lowered.
                let columns = match streams.settled_time_columns.get(table) {
                    Some(settled) if changelog && settled.len() == 1 => Some(settled),
                    _ => streams.time_columns.get(table),
                };
                match columns.map(Vec::as_slice) {
                    Some(&[column]) => Some(schema.field(column).name().clone()),
                    _ => None,
                }
            }
        }?;
        Some(crate::asof::Versioned {
            time,
            rows: streams.versions.get(table).cloned(),
        })
    })?;
    let plan = ctx
        .state()
        .create_logical_plan(&query)
        .await
        .map_err(planning_error)?;
    if !matches!(
        plan,
        LogicalPlan::Projection(_)
            | LogicalPlan::Filter(_)
            | LogicalPlan::Aggregate(_)
            | LogicalPlan::TableScan(_)
            | LogicalPlan::SubqueryAlias(_)
            | LogicalPlan::Sort(_)
            | LogicalPlan::Limit(_)
            | LogicalPlan::Join(_)
            | LogicalPlan::Window(_)
            | LogicalPlan::Distinct(_)
            | LogicalPlan::Union(_)
    ) {
        return Err(unsupported(
            format!("CREATE STREAM {} AS needs a SELECT query", def.name),
            "write CREATE STREAM name AS SELECT ... FROM source",
        ));
    }
    let plan = weigh_changelog_joins(&plan)?.0;
    let plan = weigh_changelog_aggregates(plan)?;
    let plan = if asof.is_some() {
        // An ASOF join picks among the right rows first, then the WHERE
        // clause filters what it picked: no predicate may move below it,
        // and the join's own condition must stay on the join.
        let state = ctx.state();
        let rules = state
            .optimizers()
            .iter()
            .filter(|rule| !["push_down_filter", "eliminate_cross_join"].contains(&rule.name()))
            .cloned()
            .collect();
        datafusion::execution::SessionStateBuilder::new_from_existing(state)
            .with_optimizer_rules(rules)
            .build()
            .optimize(&plan)
            .map_err(planning_error)?
    } else {
        ctx.state().optimize(&plan).map_err(planning_error)?
    };
    let plan = order_first_last_by_event_time(plan)?;
    let mut staging = Staging {
        ctx,
        def,
        sources,
        streams: streams.clone(),
        tables,
        plans: Vec::new(),
    };
    let (plan, staged) = staging.split(&plan)?;
    // A stage that is a changelog is read with its weights.
    let plan = if staged {
        let stages: Vec<String> = staging.plans.iter().map(|p| p.name.clone()).collect();
        weigh_aggregates_over_stages(weigh_changelog_joins(&plan)?.0, &stages)?
    } else {
        plan
    };
    let last = lower(ctx, def, &plan, sources, &staging.streams, tables)?;
    let mut plans = staging.plans;
    plans.extend(crate::two_phase::split(last, def.two_phase)?);
    if def.two_phase == crate::dialect::TwoPhase::On
        && !plans.iter().any(|p| {
            matches!(
                &p.operator,
                StreamOperator::WindowAggregate(AggregateSpec {
                    phase: laminar_operators::AggregatePhase::Partial(_),
                    ..
                })
            )
        })
    {
        return Err(unsupported(
            format!(
                "stream {}: two_phase = 'on' applies to window aggregates (tumbling or sliding, emitted when the window closes), and this query has none",
                def.name
            ),
            "drop the option",
        ));
    }
    Ok(plans)
}

/// Stage streams split off a query as it is planned, and the streams the
/// rest of it may read (the existing ones and the stages so far).
struct Staging<'a> {
    ctx: &'a SessionContext,
    def: &'a StreamDef,
    sources: &'a HashMap<String, SourceDef>,
    streams: KnownStreams,
    tables: &'a HashMap<String, TableDef>,
    plans: Vec<StreamPlan>,
}

/// Whether a plan node is a stateful step (a stream's one operator).
fn is_stateful(plan: &LogicalPlan) -> bool {
    matches!(
        plan,
        LogicalPlan::Aggregate(_) | LogicalPlan::Window(_) | LogicalPlan::Join(_)
    )
}

impl Staging<'_> {
    /// `plan` with each input of a stateful node that holds a stateful
    /// node of its own replaced by a stage stream computing it; whether
    /// anything was.
    fn split(&mut self, plan: &LogicalPlan) -> Result<(LogicalPlan, bool)> {
        let stateful = is_stateful(plan);
        let mut changed = false;
        let mut inputs = Vec::new();
        for input in plan.inputs() {
            let nested = input
                .exists(|node| Ok(is_stateful(node)))
                .map_err(planning_error)?;
            if stateful && nested {
                inputs.push(self.stage(input)?);
                changed = true;
            } else {
                let (input, input_changed) = self.split(input)?;
                changed |= input_changed;
                inputs.push(input);
            }
        }
        if !changed {
            return Ok((plan.clone(), false));
        }
        let plan = plan
            .with_new_exprs(plan.expressions(), inputs)
            .map_err(planning_error)?;
        Ok((plan, true))
    }

    /// Plans `input` as a stage stream and returns what reads it in its
    /// place: its columns under their names in `input`, and its `_weight`
    /// when it is a changelog.
    fn stage(&mut self, input: &LogicalPlan) -> Result<LogicalPlan> {
        use datafusion::common::Column;
        use datafusion::logical_expr::LogicalPlanBuilder;
        let (inner, _) = self.split(input)?;
        // A stage's weight is one column: a join of two changelogs inside
        // a larger query would carry two.
        if inner
            .schema()
            .qualified_fields_with_unqualified_name(WEIGHT_COLUMN)
            .len()
            > 1
        {
            return Err(unsupported(
                "a join of two changelogs (EMIT CHANGES) inside a larger query is not supported yet",
                "write that join as a stream of its own and read the stream",
            ));
        }
        let number = self.plans.len() + 1;
        let name = format!("{}_stage{number}", self.def.name);
        // A stream's columns need distinct names: `a.ts` and `b.ts` of a
        // join become `a_ts` and `b_ts`.
        let schema = Arc::clone(inner.schema());
        let mut flat: Vec<String> = Vec::new();
        for (qualifier, field) in schema.iter() {
            let shared = schema
                .fields()
                .iter()
                .filter(|f| f.name() == field.name())
                .count()
                > 1;
            let mut column = match qualifier {
                Some(q) if shared => format!("{}_{}", q.table(), field.name()),
                _ => field.name().clone(),
            };
            while flat.contains(&column) {
                column.push('_');
            }
            flat.push(column);
        }
        let renamed: Vec<Expr> = schema
            .iter()
            .zip(&flat)
            .map(|((qualifier, field), column)| {
                Expr::Column(Column::new(qualifier.cloned(), field.name())).alias(column)
            })
            .collect();
        let stage_plan = LogicalPlanBuilder::from(inner)
            .project(renamed)
            .and_then(|b| b.build())
            .map_err(planning_error)?;
        let def = StreamDef {
            name: name.clone(),
            query: String::new(),
            emit: stage_emit(
                &stage_plan,
                &Lowering::new(self.ctx, self.sources, &self.streams, self.tables, false),
            ),
            materialized: false,
            late_side_output: false,
            two_phase: self.def.two_phase,
            sql: format!("-- stage {number} of stream {}", self.def.name),
        };
        let planned = lower(
            self.ctx,
            &def,
            &stage_plan,
            self.sources,
            &self.streams,
            self.tables,
        )?;
        let mut parts = crate::two_phase::split(planned, self.def.two_phase)?;
        let planned = parts.pop().expect("split keeps the plan itself last");
        for part in parts {
            self.streams.insert(&part);
            self.plans.push(StreamPlan {
                part_of: Some(self.def.name.clone()),
                ..part
            });
        }
        let output = Arc::clone(&planned.output_schema);
        self.streams.insert(&planned);
        self.plans.push(StreamPlan {
            part_of: Some(self.def.name.clone()),
            ..planned
        });
        let source = datafusion::datasource::provider_as_source(Arc::new(EmptyTable::new(
            Arc::clone(&output),
        )));
        let mut columns: Vec<Expr> = schema
            .iter()
            .zip(&flat)
            .map(|((qualifier, field), column)| {
                Expr::Column(Column::new(Some(name.as_str()), column))
                    .alias_qualified(qualifier.cloned(), field.name())
            })
            .collect();
        // The stage's weight, unless a column of `input` already reads it.
        let restored = schema.fields().iter().any(|f| f.name() == WEIGHT_COLUMN);
        if output.field_with_name(WEIGHT_COLUMN).is_ok() && !restored {
            columns.push(Expr::Column(Column::new(
                Some(name.as_str()),
                WEIGHT_COLUMN,
            )));
        }
        LogicalPlanBuilder::scan(name.as_str(), source, None)
            .and_then(|b| b.project(columns))
            .and_then(|b| b.build())
            .map_err(planning_error)
    }
}

/// How a stage emits: a `GROUP BY` with neither a window nor an
/// event-time column as a changelog (it never closes), anything else as
/// it would by default.
fn stage_emit(plan: &LogicalPlan, lowering: &Lowering<'_>) -> Option<EmitMode> {
    let mut node = plan;
    loop {
        match node {
            LogicalPlan::Aggregate(aggregate) => {
                let closes = find_window(&aggregate.group_expr).is_some()
                    || lowering.time_key(aggregate).is_some();
                return (!closes).then_some(EmitMode::Changes);
            }
            LogicalPlan::Projection(_) | LogicalPlan::Filter(_) | LogicalPlan::SubqueryAlias(_) => {
                node = node.inputs()[0];
            }
            _ => return None,
        }
    }
}

impl StreamPlan {
    /// `EXPLAIN`'s JIT lines: each compiled expression and, for a window
    /// or session aggregate, its fused kernel, with their states.
    pub fn explain_jit(&self) -> String {
        let mut text = crate::jit::explain(&self.compiled);
        let spec = match &self.operator {
            StreamOperator::WindowAggregate(spec)
            | StreamOperator::SessionAggregate { spec, .. }
            | StreamOperator::ChangelogAggregate(spec) => Some(spec),
            _ => None,
        };
        if let Some(AggregateSpec {
            fused: Some(fused), ..
        }) = spec
        {
            let lookup = if fused.update.is_ready() && fused.update.looks_up_groups() {
                ", group lookup in the loop"
            } else {
                ""
            };
            text.push_str(&format!(
                "\nJIT fused aggregate (WHERE, arguments and accumulator updates in one loop per batch): {}{lookup}",
                fused.update.state()
            ));
        }
        text
    }
}

/// Lowers an optimised plan to one stream.
fn lower(
    ctx: &SessionContext,
    def: &StreamDef,
    plan: &LogicalPlan,
    sources: &HashMap<String, SourceDef>,
    streams: &KnownStreams,
    tables: &HashMap<String, TableDef>,
) -> Result<StreamPlan> {
    let lowering = Lowering::new(
        ctx,
        sources,
        streams,
        tables,
        def.emit == Some(EmitMode::Changes),
    );
    let output_schema: SchemaRef = Arc::new(plan.schema().as_arrow().clone());
    let chain = lowering.top_chain(plan)?;
    let asof = matches!(chain.below, LogicalPlan::Join(join) if crate::join::is_asof(join));
    let mut right_input: Option<(StreamInput, Routing)> = None;
    let mut lookup_table: Option<String> = None;
    let shared = chain.shared;
    let (input, routing, operator, mut explain) = match chain.below {
        LogicalPlan::Join(join) => {
            let changes = match def.emit {
                None => None,
                // A join over a changelog is one already (its `_weight`
                // computed by the projection).
                Some(EmitMode::Changes) if output_schema.field_with_name(WEIGHT_COLUMN).is_ok() => {
                    None
                }
                Some(EmitMode::Changes) if !asof => Some(with_weight_column(&output_schema)?),
                Some(_) => {
                    return Err(Error::new(
                        ErrorCode::InvalidWindow,
                        format!(
                            "stream {}: a join emits each joined row once, as soon as it is known",
                            def.name
                        ),
                    )
                    .with_hint("drop the EMIT clause (interval joins also take EMIT CHANGES)"))
                }
            };
            if let Some(table) = lowering.table_side(join)? {
                if asof {
                    return Err(unsupported(
                        format!(
                            "'{table}' is a table: ASOF and temporal joins read sources or streams"
                        ),
                        "join the table with a plain JOIN (it is looked up as it is now)",
                    ));
                }
                if changes.is_some() {
                    return Err(Error::new(
                        ErrorCode::InvalidWindow,
                        format!("stream {}: a lookup join emits each row once", def.name),
                    )
                    .with_hint("drop the EMIT clause"));
                }
                let (input, operator, explain) =
                    lowering.lookup_join(join, chain.stages, &table)?;
                lookup_table = Some(table);
                (input, Routing::Any, operator, explain)
            } else {
                let (input, routing, right, operator, explain) = if asof {
                    lowering.asof_join(join, chain.stages)?
                } else {
                    lowering.interval_join(join, chain.stages, changes)?
                };
                right_input = Some(right);
                (input, routing, operator, explain)
            }
        }
        LogicalPlan::Aggregate(aggregate) => {
            lowering.aggregate(aggregate, chain.stages, def.emit, def.late_side_output)?
        }
        LogicalPlan::Window(window) if !is_top_n(window, plan, chain.below) => {
            if def.emit.is_some() {
                return Err(Error::new(
                    ErrorCode::InvalidWindow,
                    format!(
                        "stream {}: window functions over event time emit each row once, when it is final",
                        def.name
                    ),
                )
                .with_hint("drop the EMIT clause"));
            }
            lowering.analytic(window, chain.stages)?
        }
        LogicalPlan::Window(window) => {
            if def.emit == Some(EmitMode::OnWindowClose) {
                return Err(Error::new(
                    ErrorCode::InvalidWindow,
                    format!(
                        "stream {}: a Top-N never closes; it emits a changelog",
                        def.name
                    ),
                )
                .with_hint("drop the EMIT clause or write EMIT CHANGES"));
            }
            let limit = rank_limit(plan, chain.below).ok_or_else(|| {
                unsupported(
                    "ROW_NUMBER() OVER (...) in a stream needs a filter on it (WHERE rn <= N, rn < N or rn = 1)",
                    "wrap it: SELECT * FROM (SELECT *, ROW_NUMBER() OVER (PARTITION BY k ORDER BY x DESC) AS rn FROM t) WHERE rn <= 10",
                )
            })?;
            lowering.top_n(window, chain.stages, limit)?
        }
        _ => {
            if def.emit.is_some() {
                return Err(Error::new(
                    ErrorCode::InvalidWindow,
                    format!(
                        "stream {} has an EMIT clause but no GROUP BY",
                        def.name
                    ),
                )
                .with_hint("drop the EMIT clause: a filter/projection stream emits every row as it arrives"));
            }
            let input = lowering.input(&chain.scan_source);
            if matches!(input, StreamInput::Stream(_))
                && lowering.streams[input.name()]
                    .field_with_name(WEIGHT_COLUMN)
                    .is_ok()
                && output_schema.field_with_name(WEIGHT_COLUMN).is_err()
            {
                return Err(unsupported(
                    format!(
                        "stream {} reads the changelog of {} but drops its {WEIGHT_COLUMN} column",
                        def.name,
                        input.name()
                    ),
                    "select _weight too, so that retractions stay retractions",
                ));
            }
            let explain = format!("Stateless[{} stage(s)] <- {input}", chain.stages.len());
            (
                input,
                Routing::Any,
                StreamOperator::Stateless(chain.stages),
                explain,
            )
        }
    };
    if shared > 0 {
        explain.push_str(&format!(
            " (WHERE and SELECT share {shared} expression(s), computed once before the filter)"
        ));
    }
    let output_schema = match &operator {
        StreamOperator::ChangelogAggregate(_)
        | StreamOperator::TopN(_)
        | StreamOperator::SessionAggregate { changes: true, .. } => {
            with_weight_column(&output_schema)?
        }
        StreamOperator::IntervalJoin(spec) if spec.changes.is_some() => {
            with_weight_column(&output_schema)?
        }
        _ => output_schema,
    };
    let late_side_output = match (&operator, def.late_side_output) {
        (_, false) => None,
        (
            StreamOperator::IntervalJoin(_)
            | StreamOperator::AsofJoin(_)
            | StreamOperator::LookupJoin(_),
            true,
        ) => {
            return Err(unsupported(
                format!(
                    "stream {}: late_data = 'side_output' is not supported for joins yet",
                    def.name
                ),
                "drop the option; late join rows are counted in late_rows",
            ))
        }
        (StreamOperator::Stateless(_), true) => {
            return Err(Error::new(
                ErrorCode::InvalidWindow,
                format!(
                    "stream {} asks for a late side output but has no window: no row is ever late",
                    def.name
                ),
            )
            .with_hint("late_data = 'side_output' needs a windowed GROUP BY"))
        }
        (StreamOperator::ChangelogAggregate(spec), true) if spec.window.is_none() => {
            return Err(Error::new(
                ErrorCode::InvalidWindow,
                format!(
                    "stream {} asks for a late side output but has no window: no row is ever late",
                    def.name
                ),
            )
            .with_hint("late_data = 'side_output' needs a windowed GROUP BY"))
        }
        (_, true) => Some(Arc::clone(lowering.input_schema(input.name()))),
    };
    let time_columns = (0..plan.schema().fields().len())
        .filter(|&i| {
            let (qualifier, field) = plan.schema().qualified_field(i);
            let column = Expr::Column(datafusion::common::Column::new(
                qualifier.cloned(),
                field.name(),
            ));
            lowering.is_time(&column, plan)
        })
        .collect::<Vec<usize>>();
    let settled_time_columns = if output_schema.field_with_name(WEIGHT_COLUMN).is_err() {
        time_columns.clone()
    } else if let StreamOperator::ChangelogAggregate(laminar_operators::AggregateSpec {
        window:
            Some(laminar_operators::WindowBinding {
                kind: laminar_operators::WindowKind::Fixed(window),
                ..
            }),
        ..
    }) = &operator
    {
        // A window's rows change only while it is open, and it is open
        // only while the watermark is below its end.
        time_columns
            .iter()
            .copied()
            .filter(|&i| {
                let (qualifier, field) = plan.schema().qualified_field(i);
                let column = Expr::Column(datafusion::common::Column::new(
                    qualifier.cloned(),
                    field.name(),
                ));
                is_window_end(&column, plan, window.size_ms)
            })
            .collect()
    } else {
        Vec::new()
    };
    let versions_query = match (&operator, chain.below) {
        (StreamOperator::TopN(spec), LogicalPlan::Window(window))
            if spec.limit == 1 && !time_columns.is_empty() =>
        {
            lowering.versions_query(plan, window, spec, &input)
        }
        _ => None,
    };
    log::info!("stream {}: {explain}", def.name);
    Ok(StreamPlan {
        name: def.name.clone(),
        input,
        late_side_output,
        sql: def.sql.clone(),
        output_schema,
        routing,
        right_input,
        lookup_table,
        time_columns,
        settled_time_columns,
        operator,
        explain,
        compiled: lowering.compiled.take(),
        part_of: None,
        versions_query,
    })
}

#[cfg(test)]
mod tests {
    use super::range_in_ticks;
    use arrow::datatypes::{DataType, IntervalMonthDayNano, TimeUnit};
    use datafusion::common::ScalarValue;

    #[test]
    fn range_frame_lengths_in_ticks() {
        let interval = |months, days, nanoseconds| {
            ScalarValue::IntervalMonthDayNano(Some(IntervalMonthDayNano::new(
                months,
                days,
                nanoseconds,
            )))
        };
        let ts = |unit| DataType::Timestamp(unit, None);
        let zoned = DataType::Timestamp(TimeUnit::Millisecond, Some("Europe/Berlin".into()));
        let cases = [
            (
                ScalarValue::Int64(Some(1_000)),
                DataType::Int64,
                Some(1_000),
            ),
            (ScalarValue::UInt64(Some(7)), DataType::Int64, Some(7)),
            (
                interval(0, 0, 1_500_000),
                ts(TimeUnit::Millisecond),
                Some(2),
            ),
            (
                interval(0, 0, 2_000_000),
                ts(TimeUnit::Millisecond),
                Some(2),
            ),
            (interval(0, 0, 1), ts(TimeUnit::Second), Some(1)),
            (interval(0, 1, 0), ts(TimeUnit::Second), Some(86_400)),
            (
                interval(0, 1, 5),
                ts(TimeUnit::Nanosecond),
                Some(86_400_000_000_005),
            ),
            (interval(1, 0, 0), ts(TimeUnit::Millisecond), None),
            (interval(0, 1, 0), zoned.clone(), None),
            (interval(0, 0, 3_600_000_000_000), zoned, Some(3_600_000)),
            (interval(0, 0, 5), DataType::Utf8, None),
        ];
        for (bound, order_type, want) in cases {
            assert_eq!(
                range_in_ticks(&bound, &order_type),
                want,
                "{bound:?} over {order_type}"
            );
        }
    }
}
