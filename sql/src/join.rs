//! Lowering joins: the two sides' chains, keys and routing, and the time
//! bounds of the join condition.
//!
//! ```text
//! [Projection | Filter]* -> Join(keys, filter) -> side chain -> TableScan   (x2)
//! ```
//!
//! A stream-stream join needs both sides' event times related by bounds
//! (`b.ts BETWEEN a.ts - X AND a.ts + Y`, or `>=`/`<=` forms) so that the
//! watermarks can retire state; ASOF joins (see [`crate::asof`]) relate
//! them by the match condition instead.

use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use datafusion::common::Column;
use datafusion::logical_expr::utils::conjunction;
use datafusion::logical_expr::{Expr, ExprSchemable, Join, JoinType, Operator};
use laminar_operators::{EventTimeUnit, JoinMode, JoinSide};
use laminar_runtime::{Error, ErrorCode, Result};

use crate::join_bounds::{
    conjuncts, implied_by_bounds, interval_bounds, shifted, show_ms, time_bound, whole_ms, SideOf,
};
use crate::planner::{planning_error, unsupported, Lowering, Routing, StreamInput};

/// One planned side, before the operator is chosen.
pub(crate) struct PlannedSide {
    pub input: StreamInput,
    pub side: JoinSide,
    /// The source (or stream) columns the keys are, when they all are.
    pub key_columns: Option<Vec<usize>>,
    pub key_types: Vec<arrow::datatypes::DataType>,
}

/// Both sides of a join, with their routings decided together.
pub(crate) struct PlannedJoin {
    pub left: PlannedSide,
    pub right: PlannedSide,
    pub left_routing: Routing,
    pub right_routing: Routing,
    pub joined_schema: SchemaRef,
}

/// A lowered two-input join: left input and routing, right input and
/// routing, the operator, and its `EXPLAIN` line.
pub(crate) type LoweredJoin = (
    StreamInput,
    Routing,
    (StreamInput, Routing),
    crate::planner::StreamOperator,
    String,
);

impl Lowering<'_> {
    /// Lowers both sides of `join`; `time` names each side's event-time
    /// column (in the join's input schemas), `None` for a regular join.
    pub(crate) fn join_sides(
        &self,
        join: &Join,
        time: Option<(&Column, &Column)>,
    ) -> Result<PlannedJoin> {
        if join.null_equality != datafusion::common::NullEquality::NullEqualsNothing {
            return Err(unsupported(
                "joins where NULL keys match each other are not supported in streams",
                "join on non-NULL keys (IS NOT DISTINCT FROM is not supported)",
            ));
        }
        let left = self.side(
            &join.left,
            join.on.iter().map(|(l, _)| l),
            time.map(|t| t.0),
        )?;
        let right = self.side(
            &join.right,
            join.on.iter().map(|(_, r)| r),
            time.map(|t| t.1),
        )?;
        if left.key_types != right.key_types {
            return Err(Error::new(
                ErrorCode::Planning,
                format!(
                    "the join keys have different types on each side ({:?} vs {:?})",
                    left.key_types, right.key_types
                ),
            )
            .with_hint("CAST one side's key to the other's type"));
        }
        // Equal keys meet on one shard only if both sides hash the same
        // values: the same key columns, of the same types, on both.
        let (left_routing, right_routing) = match (&left.key_columns, &right.key_columns) {
            (Some(l), Some(r))
                if !l.is_empty()
                    && l.iter().zip(r).all(|(&lc, &rc)| {
                        self.input_schema(left.input.name()).field(lc).data_type()
                            == self.input_schema(right.input.name()).field(rc).data_type()
                    }) =>
            {
                (Routing::Keys(l.clone()), Routing::Keys(r.clone()))
            }
            _ => (Routing::Single, Routing::Single),
        };
        Ok(PlannedJoin {
            left,
            right,
            left_routing,
            right_routing,
            joined_schema: Arc::new(join.schema.as_arrow().clone()),
        })
    }

    fn side<'e>(
        &self,
        node: &datafusion::logical_expr::LogicalPlan,
        keys: impl Iterator<Item = &'e Expr>,
        time: Option<&Column>,
    ) -> Result<PlannedSide> {
        let chain = self.chain(node)?;
        if chain.scan_source.is_empty() {
            return Err(not_an_input());
        }
        let input = self.input(&chain.scan_source);
        let schema = node.schema();
        let mut physical = Vec::new();
        let mut key_columns = Some(Vec::new());
        let mut key_types = Vec::new();
        for key in keys {
            physical.push(self.physical(key, schema)?);
            key_types.push(key.get_type(schema).map_err(planning_error)?);
            match (self.trace_to_source(key, node), key_columns.as_mut()) {
                (Some(column), Some(columns)) => columns.push(column),
                _ => key_columns = None,
            }
        }
        let side = |event_time| PlannedSide {
            side: JoinSide {
                pre: chain.stages.clone(),
                event_time,
                keys: physical.clone(),
                schema: Arc::new(schema.as_arrow().clone()),
            },
            input: input.clone(),
            key_columns: key_columns.clone(),
            key_types: key_types.clone(),
        };
        let Some(time) = time else {
            return Ok(side(None));
        };
        let time_expr = Expr::Column(time.clone());
        let time_column = self.trace_to_source(&time_expr, node).ok_or_else(|| {
            Error::new(
                ErrorCode::InvalidWindow,
                format!(
                    "the join's time column '{time}' must be a column of '{}' as it is",
                    input.name()
                ),
            )
        })?;
        let input_schema = self.input_schema(input.name());
        let time_field = input_schema.field(time_column);
        if !self.sources.contains_key(input.name()) && !self.is_time(&time_expr, node) {
            return Err(Error::new(
                ErrorCode::InvalidWindow,
                format!(
                    "column '{}' of stream '{}' does not carry event time, so the stream's watermark says nothing about it",
                    time_field.name(),
                    input.name()
                ),
            )
            .with_hint("relate a window's start or end (window_start, window_end, tumble(...)) or a column that is its source's event time"));
        }
        if let Some(source) = self.sources.get(input.name()) {
            match &source.watermark {
                Some(w) if &w.column == time_field.name() => {}
                Some(w) => {
                    return Err(Error::new(
                        ErrorCode::InvalidWindow,
                        format!(
                            "the join compares '{}' of source '{}', but its WATERMARK is on '{}'",
                            time_field.name(),
                            input.name(),
                            w.column
                        ),
                    )
                    .with_hint("relate the sources' event-time columns in the join condition"))
                }
                None => {
                    return Err(Error::new(
                        ErrorCode::InvalidWindow,
                        format!(
                            "source '{}' has no WATERMARK, so a join over it could never forget a row",
                            input.name()
                        ),
                    )
                    .with_hint(
                        "declare one: CREATE SOURCE ... (..., WATERMARK FOR ts AS ts - INTERVAL '5' SECOND)",
                    ))
                }
            }
        }
        let unit = EventTimeUnit::of(time_field.data_type(), time_field.name())?;
        Ok(side(Some((time_column, unit))))
    }
}

/// A join side that is not a plain source or stream.
fn not_an_input() -> Error {
    unsupported(
        "a join's inputs must be sources or streams, not aggregates or window functions",
        "compute the aggregate in a stream of its own and join that stream",
    )
}

/// Whether DataFusion's join type is one the interval join runs: its
/// outer sides and what it emits.
pub(crate) fn join_shape(join_type: JoinType) -> Result<(bool, bool, JoinMode)> {
    match join_type {
        JoinType::Inner => Ok((false, false, JoinMode::Pairs)),
        JoinType::Left => Ok((true, false, JoinMode::Pairs)),
        JoinType::Right => Ok((false, true, JoinMode::Pairs)),
        JoinType::Full => Ok((true, true, JoinMode::Pairs)),
        JoinType::LeftSemi => Ok((false, false, JoinMode::LeftSemi)),
        JoinType::LeftAnti => Ok((false, false, JoinMode::LeftAnti)),
        other => Err(unsupported(
            format!("{other} joins are not supported in streams yet"),
            "use INNER, LEFT, RIGHT or FULL OUTER JOIN, or EXISTS / NOT EXISTS with the outer stream first",
        )),
    }
}

impl Lowering<'_> {
    /// Lowers a stream-stream interval join with `post` stages above it.
    pub(crate) fn interval_join(
        &self,
        join: &Join,
        post: Vec<laminar_operators::Stage>,
        changes: Option<SchemaRef>,
    ) -> Result<LoweredJoin> {
        let (left_outer, right_outer, mode) = join_shape(join.join_type)?;
        if join.null_aware {
            // NOT IN: one NULL among the subquery's values empties the
            // answer, which a streaming join cannot know in time.
            return Err(unsupported(
                "NOT IN over a stream is not supported (a NULL arriving later would change every answer)",
                "use NOT EXISTS (SELECT 1 FROM ... WHERE ... = ...), which has no such rule",
            ));
        }
        if mode != JoinMode::Pairs && changes.is_some() {
            return Err(unsupported(
                "EMIT CHANGES on a semi or anti join (EXISTS, IN, NOT EXISTS) is not supported yet",
                "drop EMIT CHANGES: the join emits each row once, when it is final",
            ));
        }
        let (all, conjuncts) = self.time_conjuncts(join);
        let has_bounds = !conjuncts.is_empty();
        let mut row_bound = None;
        let (times, lower_ms, upper_ms) = match self.equal_times(join) {
            // `a.w = b.w` on both sides' event times: the bound [0, 0].
            Some((left, right)) if !has_bounds => (Some((left, right)), 0, 0),
            // Nothing relates the sides' times: a regular join.
            _ if !all.iter().any(|c| self.relates_time(join, c)) => (None, i64::MIN, i64::MAX),
            _ => match interval_bounds(join, &conjuncts) {
                Ok((left, right, lower, upper)) => (Some((left, right)), lower, upper),
                Err(e) => match self.row_bounded(join, &conjuncts, &all)? {
                    Some(bounded) => {
                        row_bound = Some(bounded.bound);
                        let times = (bounded.left, bounded.right);
                        (Some(times), bounded.lower_ms, bounded.upper_ms)
                    }
                    None => {
                        // Compared columns that are not event times: say
                        // why (a source without a WATERMARK, a plain
                        // stream column).
                        if let Some(b) = all.iter().find_map(|c| time_bound(join, c)) {
                            self.join_sides(join, Some((&b.left, &b.right)))?;
                        }
                        return Err(e);
                    }
                },
            },
        };
        let planned = self.join_sides(join, times.as_ref().map(|(l, r)| (l, r)))?;
        // A changelog input joins with its rows' weights (the query's
        // projection multiplies them, see `weigh_changelog_joins`): inner
        // joins only, since an outer row's padding would have to follow
        // the net count of its matches.
        if self.reads_changelog(join)? && (mode != JoinMode::Pairs || left_outer || right_outer) {
            return Err(unsupported(
                format!(
                    "a {} join over a changelog (EMIT CHANGES) input is not supported yet",
                    join.join_type
                ),
                "use an inner join, or join the append-only stream the changelog is computed from",
            ));
        }
        // The filter reads both sides; a semi or anti join's own schema
        // has the left side's columns only.
        let pairs_schema = if mode == JoinMode::Pairs {
            Arc::clone(&join.schema)
        } else {
            Arc::new(
                join.left
                    .schema()
                    .join(join.right.schema())
                    .map_err(planning_error)?,
            )
        };
        // With plain bounds on whole-ms times, the operator's range check
        // is exactly the bounds' conjuncts: only the rest runs per pair.
        let exact_times = times.as_ref().filter(|(left, right)| {
            has_bounds
                && row_bound.is_none()
                && whole_ms(left, join.left.schema())
                && whole_ms(right, join.right.schema())
        });
        let pair_filter = match exact_times {
            Some((left, right)) => conjunction(
                all.iter()
                    .filter(|c| !implied_by_bounds(join, c, (left, right), lower_ms, upper_ms))
                    .cloned(),
            ),
            None => join.filter.clone(),
        };
        let filter = pair_filter
            .as_ref()
            .map(|f| self.physical(f, &pairs_schema))
            .transpose()?;
        let bounds = match (&times, &row_bound) {
            (None, _) => "no time bound, every row kept".to_string(),
            (Some(_), Some(bound)) => {
                let (side, column, other) = if bound.port == 0 {
                    ("left", join.left.schema(), "right")
                } else {
                    ("right", join.right.schema(), "left")
                };
                format!(
                    "{other} time <= {side}.{} {:+} ms, right - left in [{}, {}] ms",
                    column.field(bound.column).name(),
                    bound.offset_ms,
                    show_ms(lower_ms),
                    show_ms(upper_ms)
                )
            }
            (Some(_), None) => format!("right - left in [{lower_ms}, {upper_ms}] ms"),
        };
        let bounds = match &pair_filter {
            Some(f) => format!("{bounds}, pairs filtered by {f}"),
            None => format!("{bounds}, no pair filter"),
        };
        let explain = format!(
            "{}[{} {}, {bounds}, {} post stage(s)] <- {} ({:?}), {} ({:?})",
            if times.is_some() {
                "IntervalJoin"
            } else {
                "RegularJoin"
            },
            join.join_type,
            if join.on.is_empty() {
                "no keys".to_string()
            } else {
                format!("{} key(s)", join.on.len())
            },
            post.len(),
            planned.left.input,
            planned.left_routing,
            planned.right.input,
            planned.right_routing,
        );
        let spec = laminar_operators::IntervalJoinSpec {
            left: planned.left.side,
            right: planned.right.side,
            lower_ms,
            upper_ms,
            filter,
            left_outer,
            right_outer,
            joined_schema: Arc::new(pairs_schema.as_arrow().clone()),
            post,
            changes,
            mode,
            row_bound,
        };
        Ok((
            planned.left.input,
            planned.left_routing,
            (planned.right.input, planned.right_routing),
            crate::planner::StreamOperator::IntervalJoin(spec),
            explain,
        ))
    }

    /// Whether either side of `join` reads a changelog (a stream with a
    /// `_weight` column).
    pub(crate) fn reads_changelog(&self, join: &Join) -> Result<bool> {
        for side in [&join.left, &join.right] {
            let source = self.chain(side)?.scan_source;
            if !source.is_empty()
                && self
                    .input_schema(&source)
                    .field_with_name(laminar_operators::WEIGHT_COLUMN)
                    .is_ok()
            {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Whether `input` is a changelog (has a `_weight` column).
    fn is_changelog(&self, input: &StreamInput) -> bool {
        self.input_schema(input.name())
            .field_with_name(laminar_operators::WEIGHT_COLUMN)
            .is_ok()
    }

    /// An ASOF join side that reads a changelog must be timed by one of
    /// its settled columns.
    fn settled_changelog(&self, side: &PlannedSide) -> Result<()> {
        let input = &side.input;
        if !self.is_changelog(input) {
            return Ok(());
        }
        let settled = side.side.event_time.as_ref().is_some_and(|(column, _)| {
            self.known
                .settled_time_columns
                .get(input.name())
                .is_some_and(|columns| columns.contains(column))
        });
        if settled {
            return Ok(());
        }
        Err(unsupported(
            format!(
                "{input} is a changelog (EMIT CHANGES) whose rows at this time column may still be retracted after the watermark passes them; an ASOF or temporal join would depend on how it was batched"
            ),
            "time it by its window's end (window_end, tumble_end(...)), or join the append-only stream it is computed from",
        ))
    }

    /// Lookup joins read append-only inputs: a changelog's retractions
    /// would be looked up as if they were rows.
    pub(crate) fn refuse_changelog(&self, input: &StreamInput) -> Result<()> {
        if self.is_changelog(input) {
            return Err(unsupported(
                format!("{input} is a changelog (EMIT CHANGES); joining it is not supported yet"),
                "join the append-only stream it is computed from, or emit it ON WINDOW CLOSE",
            ));
        }
        Ok(())
    }
}

impl Lowering<'_> {
    /// Lowers an ASOF or temporal join (`syntax` from [`crate::asof`]).
    pub(crate) fn asof_join(
        &self,
        join: &Join,
        post: Vec<laminar_operators::Stage>,
    ) -> Result<LoweredJoin> {
        let left_outer = match join.join_type {
            JoinType::Inner => false,
            JoinType::Left => true,
            other => {
                return Err(unsupported(
                    format!("ASOF and temporal joins are INNER or LEFT, not {other}"),
                    "write ASOF JOIN or ASOF LEFT JOIN",
                ))
            }
        };
        let mut bounds = Vec::new();
        let mut nearest: Option<(Column, Column)> = None;
        for conjunct in conjuncts(join.filter.as_ref()) {
            if is_marker(&conjunct) {
                continue;
            }
            if let Some(bound) = time_bound(join, &conjunct).filter(|b| self.bounds_times(join, b))
            {
                bounds.push(bound);
            } else if let Some(pair) = nearest_call(join, &conjunct) {
                nearest = Some(pair);
            } else {
                return Err(unsupported(
                    format!("an ASOF join's condition holds key equalities, one time comparison and a tolerance; '{conjunct}' is none of those"),
                    "filter the inputs in a stream of their own, or the output with WHERE",
                ));
            }
        }
        let (left_time, right_time) = if let Some(pair) = &nearest {
            pair.clone()
        } else if let Some(first) = bounds.first() {
            (first.left.clone(), first.right.clone())
        } else {
            return Err(unsupported(
                "an ASOF join needs a time comparison",
                "ASOF JOIN b ON a.k = b.k AND a.ts >= b.ts (latest before), a.ts <= b.ts (earliest after), or MATCH_CONDITION(NEAREST(a.ts, b.ts))",
            ));
        };
        let mut lower = i64::MIN;
        let mut upper = i64::MAX;
        for bound in &bounds {
            if bound.left != left_time || bound.right != right_time {
                return Err(unsupported(
                    "an ASOF join compares one pair of time columns",
                    "compare the same left and right time columns in every condition",
                ));
            }
            match bound.op {
                Operator::Gt => lower = lower.max(bound.c_ms.saturating_add(1)),
                Operator::GtEq => lower = lower.max(bound.c_ms),
                Operator::Lt => upper = upper.min(bound.c_ms.saturating_sub(1)),
                _ => upper = upper.min(bound.c_ms),
            }
        }
        let direction = if nearest.is_some() {
            laminar_operators::AsofDirection::Nearest
        } else if upper <= 0 {
            laminar_operators::AsofDirection::Backward
        } else if lower >= 0 {
            laminar_operators::AsofDirection::Forward
        } else {
            return Err(unsupported(
                "the ASOF join's condition does not say which way to look",
                "a.ts >= b.ts picks the latest before, a.ts <= b.ts the earliest after, MATCH_CONDITION(NEAREST(a.ts, b.ts)) the nearest",
            ));
        };
        if lower > upper {
            return Err(Error::new(
                ErrorCode::InvalidWindow,
                format!("the ASOF join's time bounds leave no room: right - left must be in [{lower}, {upper}] ms"),
            ));
        }
        let planned = self.join_sides(join, Some((&left_time, &right_time)))?;
        // A changelog shows the net change of each batch, not every
        // version. Read by a column its rows are final at (a window's
        // end), the versions an answer may pick are settled by the time
        // the watermark lets it go, whatever the batches were.
        for side in [&planned.left, &planned.right] {
            self.settled_changelog(side)?;
        }
        // A changelog side read without its weights would take its
        // retractions for rows.
        let weight_of = |side: &PlannedSide| {
            self.is_changelog(&side.input)
                .then(|| side.side.schema.index_of(laminar_operators::WEIGHT_COLUMN))
                .transpose()
                .map_err(|_| {
                    unsupported(
                        format!(
                            "the ASOF join reads the changelog {} without its {} column",
                            side.input,
                            laminar_operators::WEIGHT_COLUMN
                        ),
                        "keep the changelog's _weight column in the subquery",
                    )
                })
        };
        weight_of(&planned.left)?;
        let right_weight = weight_of(&planned.right)?;
        let explain = format!(
            "AsofJoin[{}{direction:?}, right - left in [{}, {}] ms, {} key(s), {} post stage(s)] <- {} ({:?}), {} ({:?})",
            if left_outer { "LEFT " } else { "" },
            show_ms(lower),
            show_ms(upper),
            join.on.len(),
            post.len(),
            planned.left.input,
            planned.left_routing,
            planned.right.input,
            planned.right_routing,
        );
        let spec = laminar_operators::AsofJoinSpec {
            left: planned.left.side,
            right: planned.right.side,
            direction,
            lower_ms: lower,
            upper_ms: upper,
            left_outer,
            joined_schema: planned.joined_schema,
            post,
            right_weight,
        };
        Ok((
            planned.left.input,
            planned.left_routing,
            (planned.right.input, planned.right_routing),
            crate::planner::StreamOperator::AsofJoin(spec),
            explain,
        ))
    }
}

/// Whether `join` is an ASOF or temporal join: its condition holds the
/// marker the syntax rewrite put there (see [`crate::asof`]).
pub(crate) fn is_asof(join: &Join) -> bool {
    conjuncts(join.filter.as_ref()).iter().any(is_marker)
}

fn is_marker(expr: &Expr) -> bool {
    matches!(expr, Expr::ScalarFunction(call) if call.name() == crate::functions::ASOF_JOIN)
}

/// `NEAREST(left.ts, right.ts)` (in either order): the two time columns.
fn nearest_call(join: &Join, expr: &Expr) -> Option<(Column, Column)> {
    let Expr::ScalarFunction(call) = expr else {
        return None;
    };
    if call.name() != crate::functions::ASOF_NEAREST {
        return None;
    }
    let [a, b] = call.args.as_slice() else {
        return None;
    };
    let (a, b) = (shifted(join, a)?, shifted(join, b)?);
    if a.offset_ms != 0 || b.offset_ms != 0 {
        return None;
    }
    match (a.side, b.side) {
        (SideOf::Left, SideOf::Right) => Some((a.column, b.column)),
        (SideOf::Right, SideOf::Left) => Some((b.column, a.column)),
        _ => None,
    }
}

impl Lowering<'_> {
    /// The table a join reads, when one side is a table.
    pub(crate) fn table_side(&self, join: &Join) -> Result<Option<String>> {
        let left = self.chain(&join.left)?.scan_source;
        let right = self.chain(&join.right)?.scan_source;
        if self.tables.contains_key(&left) {
            return Err(unsupported(
                format!("'{left}' is a table on the left of the join"),
                "put the stream first: FROM stream s JOIN table t ON ...",
            ));
        }
        Ok(self.tables.contains_key(&right).then_some(right))
    }

    /// Lowers a lookup join of a stream (left) against `table` (right).
    pub(crate) fn lookup_join(
        &self,
        join: &Join,
        post: Vec<laminar_operators::Stage>,
        table: &str,
    ) -> Result<(StreamInput, crate::planner::StreamOperator, String)> {
        let left_outer = match join.join_type {
            JoinType::Inner => false,
            JoinType::Left => true,
            other => {
                return Err(unsupported(
                    format!("a lookup join of a stream and a table is INNER or LEFT, not {other}"),
                    "write JOIN or LEFT JOIN with the table on the right",
                ))
            }
        };
        let def = &self.tables[table];
        if def.primary_key.is_empty() {
            return Err(unsupported(
                format!("table '{table}' has no PRIMARY KEY to look rows up by"),
                "declare one: CREATE TABLE t (id BIGINT, ..., PRIMARY KEY (id))",
            ));
        }
        let left_chain = self.chain(&join.left)?;
        if left_chain.scan_source.is_empty() {
            return Err(not_an_input());
        }
        let input = self.input(&left_chain.scan_source);
        self.refuse_changelog(&input)?;
        let right_chain = self.chain(&join.right)?;
        let mut keys = Vec::new();
        let mut table_key = Vec::new();
        for (l, r) in &join.on {
            let column = self.trace_to_source(r, &join.right).ok_or_else(|| {
                unsupported(
                    format!("the lookup key '{r}' must be a column of table '{table}'"),
                    "join on the table's primary-key columns as they are",
                )
            })?;
            let left_type = l.get_type(join.left.schema()).map_err(planning_error)?;
            let key_type = def.schema.field(column).data_type();
            if &left_type != key_type {
                return Err(Error::new(
                    ErrorCode::Planning,
                    format!(
                        "the lookup key '{l}' is {left_type}, but '{table}'.{} is {key_type}",
                        def.schema.field(column).name()
                    ),
                )
                .with_hint("CAST the stream's side to the table's type"));
            }
            keys.push(self.physical(l, join.left.schema())?);
            table_key.push(column);
        }
        let mut sorted = table_key.clone();
        sorted.sort_unstable();
        let mut primary = def.primary_key.clone();
        primary.sort_unstable();
        if sorted != primary {
            let names = |columns: &[usize]| {
                columns
                    .iter()
                    .map(|&c| def.schema.field(c).name().as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            return Err(unsupported(
                format!(
                    "a lookup join matches the whole primary key of '{table}' ({}); this one joins on ({})",
                    names(&def.primary_key),
                    names(&table_key)
                ),
                "join with equalities on exactly the primary-key columns",
            ));
        }
        let filter = join
            .filter
            .as_ref()
            .map(|f| self.physical(f, &join.schema))
            .transpose()?;
        let explain = format!(
            "LookupJoin[{}table {table} by primary key, {} post stage(s)] <- {input}",
            if left_outer { "LEFT, " } else { "" },
            post.len()
        );
        let spec = laminar_operators::LookupJoinSpec {
            pre: left_chain.stages,
            keys,
            left_schema: Arc::new(join.left.schema().as_arrow().clone()),
            table_key,
            table_stages: right_chain.stages,
            right_schema: Arc::new(join.right.schema().as_arrow().clone()),
            filter,
            left_outer,
            joined_schema: Arc::new(join.schema.as_arrow().clone()),
            post,
        };
        Ok((
            input,
            crate::planner::StreamOperator::LookupJoin(spec),
            explain,
        ))
    }
}
