//! Reading a join's time bounds from its condition: comparisons of the
//! two sides' event times shifted by constants (`b.ts BETWEEN a.ts - X AND
//! a.ts + Y`), equal window times, a bound by a column of one side's rows
//! (`b.ts <= a.expires`), and whether a join relates the times at all (a
//! regular join does not).

use datafusion::common::{Column, DFSchema, ExprSchema, ScalarValue};
use datafusion::logical_expr::utils::split_conjunction;
use datafusion::logical_expr::{BinaryExpr, Expr, ExprSchemable, Join, Operator};
use laminar_operators::EventTimeUnit;
use laminar_runtime::{Error, ErrorCode, Result};

use crate::functions::interval_ms;
use crate::planner::{planning_error, unsupported, Lowering};

/// Which side of the joined schema a column is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SideOf {
    Left,
    Right,
}

/// `column + offset_ms`, one side's event time shifted by a constant.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Shifted {
    pub column: Column,
    pub side: SideOf,
    pub offset_ms: i64,
}

/// The time bounds of a join bounded at one end by a column of the rows:
/// the event-time columns, the constant bounds on `right - left` (the one
/// the row bound stands for unbounded) and the row bound.
pub(crate) struct RowBounded {
    pub left: Column,
    pub right: Column,
    pub lower_ms: i64,
    pub upper_ms: i64,
    pub bound: laminar_operators::RowBound,
}

/// A comparison of the two sides' times: `right - left  op  c`.
#[derive(Debug, Clone)]
pub(crate) struct TimeBound {
    pub left: Column,
    pub right: Column,
    pub op: Operator,
    pub c_ms: i64,
}

/// Which side a column of the joined schema belongs to.
pub(crate) fn side_of(join: &Join, column: &Column) -> Option<SideOf> {
    if join.left.schema().has_column(column) {
        Some(SideOf::Left)
    } else if join.right.schema().has_column(column) {
        Some(SideOf::Right)
    } else {
        None
    }
}

/// Reads `column`, `column + c`, `column - c` or `c + column`, where `c`
/// is a constant number of ms or a fixed INTERVAL.
pub(crate) fn shifted(join: &Join, expr: &Expr) -> Option<Shifted> {
    match expr {
        Expr::Column(column) => Some(Shifted {
            column: column.clone(),
            side: side_of(join, column)?,
            offset_ms: 0,
        }),
        // A cast that keeps milliseconds (BIGINT ms <-> TIMESTAMP(ms)).
        Expr::Cast(cast)
            if matches!(
                cast.expr.get_type(&join.schema),
                Ok(arrow::datatypes::DataType::Int64)
                    | Ok(arrow::datatypes::DataType::Timestamp(
                        arrow::datatypes::TimeUnit::Millisecond,
                        _
                    ))
            ) && matches!(
                cast.field.data_type(),
                arrow::datatypes::DataType::Int64
                    | arrow::datatypes::DataType::Timestamp(
                        arrow::datatypes::TimeUnit::Millisecond,
                        _
                    )
            ) =>
        {
            shifted(join, &cast.expr)
        }
        Expr::BinaryExpr(BinaryExpr { left, op, right }) => {
            let constant = |e: &Expr| match e {
                Expr::Literal(value, _) => interval_ms(value).or(match value {
                    ScalarValue::DurationMillisecond(Some(v)) => Some(*v),
                    ScalarValue::DurationSecond(Some(v)) => v.checked_mul(1000),
                    _ => None,
                }),
                _ => None,
            };
            match op {
                Operator::Plus => {
                    if let Some(c) = constant(right) {
                        let mut s = shifted(join, left)?;
                        s.offset_ms = s.offset_ms.checked_add(c)?;
                        Some(s)
                    } else {
                        let c = constant(left)?;
                        let mut s = shifted(join, right)?;
                        s.offset_ms = s.offset_ms.checked_add(c)?;
                        Some(s)
                    }
                }
                Operator::Minus => {
                    let c = constant(right)?;
                    let mut s = shifted(join, left)?;
                    s.offset_ms = s.offset_ms.checked_sub(c)?;
                    Some(s)
                }
                _ => None,
            }
        }
        _ => None,
    }
}

/// Reads a conjunct comparing the two sides' shifted columns as a bound
/// on `right - left`.
pub(crate) fn time_bound(join: &Join, expr: &Expr) -> Option<TimeBound> {
    let Expr::BinaryExpr(BinaryExpr { left, op, right }) = expr else {
        return None;
    };
    if !matches!(
        op,
        Operator::Lt | Operator::LtEq | Operator::Gt | Operator::GtEq
    ) {
        return None;
    }
    let (a, b) = (shifted(join, left)?, shifted(join, right)?);
    // a.col + a.off  op  b.col + b.off
    match (a.side, b.side) {
        // r + a  op  l + b   =>   r - l  op  b - a
        (SideOf::Right, SideOf::Left) => Some(TimeBound {
            left: b.column,
            right: a.column,
            op: *op,
            c_ms: b.offset_ms.checked_sub(a.offset_ms)?,
        }),
        // l + a  op  r + b   =>   r - l  swap(op)  a - b
        (SideOf::Left, SideOf::Right) => Some(TimeBound {
            left: a.column,
            right: b.column,
            op: op.swap()?,
            c_ms: a.offset_ms.checked_sub(b.offset_ms)?,
        }),
        _ => None,
    }
}

/// The join condition's conjuncts (the filter besides the equal keys),
/// with BETWEEN split into its two comparisons.
pub(crate) fn conjuncts(filter: Option<&Expr>) -> Vec<Expr> {
    let mut out = Vec::new();
    if let Some(filter) = filter {
        for c in split_conjunction(filter) {
            match c {
                Expr::Between(between) if !between.negated => {
                    out.push(Expr::BinaryExpr(BinaryExpr::new(
                        between.expr.clone(),
                        Operator::GtEq,
                        between.low.clone(),
                    )));
                    out.push(Expr::BinaryExpr(BinaryExpr::new(
                        between.expr.clone(),
                        Operator::LtEq,
                        between.high.clone(),
                    )));
                }
                other => out.push(other.clone()),
            }
        }
    }
    out
}

/// The time columns the first of the conjuncts' time bounds relates and
/// the tightest `[lower, upper]` on `right - left` in ms that the bounds
/// between those columns give, a missing end unbounded (`i64::MIN`,
/// `i64::MAX`); `None` without a bound.
fn constant_bounds(join: &Join, conjuncts: &[Expr]) -> Option<(Column, Column, i64, i64)> {
    let bounds: Vec<TimeBound> = conjuncts
        .iter()
        .filter_map(|c| time_bound(join, c))
        .collect();
    let first = bounds.first()?;
    let (left, right) = (first.left.clone(), first.right.clone());
    let (mut lower, mut upper) = (i64::MIN, i64::MAX);
    for bound in bounds.iter().filter(|b| b.left == left && b.right == right) {
        match bound.op {
            Operator::Gt | Operator::GtEq => lower = lower.max(bound.c_ms),
            _ => upper = upper.min(bound.c_ms),
        }
    }
    Some((left, right, lower, upper))
}

/// The time columns the bounds relate and `[lower, upper]` on `right -
/// left` in ms, widened by 1 ms for sub-millisecond time units (event
/// times are compared in whole ms; the exact condition runs on the rows).
pub(crate) fn interval_bounds(
    join: &Join,
    conjuncts: &[Expr],
) -> Result<(Column, Column, i64, i64)> {
    let Some((left, right, mut lower, mut upper)) = constant_bounds(join, conjuncts) else {
        return Err(no_bounds());
    };
    if lower == i64::MIN || upper == i64::MAX {
        return Err(no_bounds());
    }
    if lower > upper {
        return Err(Error::new(
            ErrorCode::InvalidWindow,
            format!("the join's time bounds leave no room: right - left must be in [{lower}, {upper}] ms"),
        ));
    }
    if finer_than_ms(&left, join.left.schema()) || finer_than_ms(&right, join.right.schema()) {
        lower = lower.saturating_sub(1);
        upper = upper.saturating_add(1);
    }
    Ok((left, right, lower, upper))
}

/// Whether a conjunct holds for every pair with `right - left` in
/// `[lower, upper]` ms, the times being the columns `left` and `right`:
/// the join's range check on the stored times then does its work, and it
/// need not run on each pair. The caller makes sure the columns hold whole
/// ms, as the stored times do.
pub(crate) fn implied_by_bounds(
    join: &Join,
    conjunct: &Expr,
    (left, right): (&Column, &Column),
    lower: i64,
    upper: i64,
) -> bool {
    let Some(bound) = time_bound(join, conjunct) else {
        return false;
    };
    if &bound.left != left || &bound.right != right || casts_to_a_zone(conjunct) {
        return false;
    }
    match bound.op {
        Operator::GtEq => bound.c_ms <= lower,
        Operator::Gt => bound.c_ms < lower,
        Operator::LtEq => bound.c_ms >= upper,
        Operator::Lt => bound.c_ms > upper,
        _ => false,
    }
}

/// Whether `expr` casts something to a timestamp with a time zone, where
/// `+ INTERVAL '1' DAY` follows the zone's calendar.
fn casts_to_a_zone(expr: &Expr) -> bool {
    use datafusion::common::tree_node::TreeNode;
    expr.exists(|e| {
        Ok(matches!(e, Expr::Cast(cast) if matches!(
            cast.field.data_type(),
            arrow::datatypes::DataType::Timestamp(_, Some(_))
        )))
    })
    .unwrap_or(true)
}

/// Whether a time column holds exactly the ms the join compares: BIGINT
/// epoch ms or `TIMESTAMP(3)` without a time zone (with one, `+ INTERVAL
/// '1' DAY` follows the zone's calendar, not 86,400,000 ms).
pub(crate) fn whole_ms(column: &Column, schema: &DFSchema) -> bool {
    schema.field_from_column(column).is_ok_and(|f| {
        matches!(
            f.data_type(),
            arrow::datatypes::DataType::Int64
                | arrow::datatypes::DataType::Timestamp(
                    arrow::datatypes::TimeUnit::Millisecond,
                    None
                )
        )
    })
}

/// Whether a time column counts finer than ms (its ms are rounded down).
fn finer_than_ms(column: &Column, schema: &DFSchema) -> bool {
    schema.field_from_column(column).is_ok_and(|f| {
        matches!(
            f.data_type(),
            arrow::datatypes::DataType::Timestamp(
                arrow::datatypes::TimeUnit::Microsecond | arrow::datatypes::TimeUnit::Nanosecond,
                _
            )
        )
    })
}

/// A bound in ms for `EXPLAIN`, infinite ones as such.
pub(crate) fn show_ms(v: i64) -> String {
    match v {
        i64::MIN => "-inf".to_string(),
        i64::MAX => "+inf".to_string(),
        v => v.to_string(),
    }
}

pub(crate) fn no_bounds() -> Error {
    unsupported(
        "a join of two streams needs their event times bounded on both sides, or its state would grow forever",
        "add a time bound: ON a.k = b.k AND b.ts BETWEEN a.ts - INTERVAL '10' SECOND AND a.ts + INTERVAL '10' SECOND",
    )
}

impl Lowering<'_> {
    /// Whether a conjunct compares one side's event time with the other
    /// side (its time or another column): a join with none is a regular
    /// join, whose state nothing retires.
    pub(crate) fn relates_time(&self, join: &Join, conjunct: &Expr) -> bool {
        time_bound(join, conjunct).is_some_and(|b| {
            self.is_time(&Expr::Column(b.left.clone()), &join.left)
                || self.is_time(&Expr::Column(b.right.clone()), &join.right)
        })
    }

    /// Whether the time columns of `join`'s output carry event time: not
    /// when the join keeps rows without a bound by time (a regular join),
    /// or by a bound read from the rows (which says nothing about how old
    /// a kept row may be).
    pub(crate) fn join_keeps_time(&self, join: &Join) -> bool {
        let (_, bounds) = self.time_conjuncts(join);
        (bounds.is_empty() && self.equal_times(join).is_some())
            || interval_bounds(join, &bounds).is_ok()
    }

    /// The conjuncts of `join`'s condition, and those of them that compare
    /// the two sides' event-time columns: only these bound the state;
    /// others (`t.price > o.limit`) are conditions on the pairs.
    pub(crate) fn time_conjuncts(&self, join: &Join) -> (Vec<Expr>, Vec<Expr>) {
        let all = conjuncts(join.filter.as_ref());
        let bounds = all
            .iter()
            .filter(|c| time_bound(join, c).is_some_and(|b| self.bounds_times(join, &b)))
            .cloned()
            .collect();
        (all, bounds)
    }

    /// For a join bounded by a column of one side's rows: the side whose
    /// event time the join's output watermark still covers (the side
    /// without the row bound, whose time is bounded from below by the
    /// other side's time). `None` for other joins.
    pub(crate) fn row_bounded_time_side(&self, join: &Join) -> Option<SideOf> {
        let (all, bounds) = self.time_conjuncts(join);
        if bounds.is_empty() || interval_bounds(join, &bounds).is_ok() {
            return None;
        }
        let found = self.row_bounded(join, &bounds, &all).ok().flatten()?;
        match found.bound.port {
            0 if found.lower_ms != i64::MIN => Some(SideOf::Right),
            1 if found.upper_ms != i64::MAX => Some(SideOf::Left),
            _ => None,
        }
    }

    /// One constant bound on `right - left` plus, for the other
    /// direction, a bound by a column of one side's rows: `b.ts >= a.ts
    /// AND b.ts <= a.expires` (left rows bound the right time from above)
    /// or `a.ts <= b.ts + X AND a.ts <= b.until` (right rows bound the
    /// left time). The times, the constant bounds (the missing one
    /// unbounded) and the row bound.
    pub(crate) fn row_bounded(
        &self,
        join: &Join,
        time_conjuncts: &[Expr],
        all: &[Expr],
    ) -> Result<Option<RowBounded>> {
        let Some((left, right, lower, upper)) = constant_bounds(join, time_conjuncts) else {
            return Ok(None);
        };
        let left_is_time = |c: &Column| self.is_time(&Expr::Column(c.clone()), &join.left);
        let right_is_time = |c: &Column| self.is_time(&Expr::Column(c.clone()), &join.right);
        let found = all
            .iter()
            .filter_map(|c| time_bound(join, c))
            .find_map(|b| {
                let upper_by_left = matches!(b.op, Operator::Lt | Operator::LtEq)
                    && b.right == right
                    && !left_is_time(&b.left)
                    && lower != i64::MIN
                    && upper == i64::MAX;
                let lower_by_right = matches!(b.op, Operator::Gt | Operator::GtEq)
                    && b.left == left
                    && !right_is_time(&b.right)
                    && upper != i64::MAX
                    && lower == i64::MIN;
                // right - left.col <= c: right <= left.col + c;
                // right.col - left >= c: left <= right.col - c.
                if upper_by_left {
                    Some((0, b.left, join.left.schema(), b.c_ms))
                } else if lower_by_right {
                    Some((1, b.right, join.right.schema(), b.c_ms.checked_neg()?))
                } else {
                    None
                }
            });
        let Some((port, column, schema, offset_ms)) = found else {
            return Ok(None);
        };
        let index = schema.index_of_column(&column).map_err(planning_error)?;
        let field = schema.field(index);
        let unit = EventTimeUnit::of(field.data_type(), field.name())?;
        // Event times are compared in whole ms (the exact condition runs
        // on the rows): widen by 1 ms for finer units.
        let fine = finer_than_ms(&left, join.left.schema())
            || finer_than_ms(&right, join.right.schema())
            || finer_than_ms(&column, schema);
        let widen = i64::from(fine);
        let bound = laminar_operators::RowBound {
            port,
            column: index,
            unit,
            offset_ms: offset_ms.saturating_add(widen),
        };
        Ok(Some(RowBounded {
            left,
            right,
            lower_ms: lower.saturating_sub(widen),
            upper_ms: upper.saturating_add(widen),
            bound,
        }))
    }

    /// Whether a bound relates the two sides' event-time columns.
    pub(crate) fn bounds_times(&self, join: &Join, bound: &TimeBound) -> bool {
        self.is_time(&Expr::Column(bound.left.clone()), &join.left)
            && self.is_time(&Expr::Column(bound.right.clone()), &join.right)
    }

    /// An equality of the join that relates the two sides' event-time
    /// columns (`a.window_start = b.window_start`).
    pub(crate) fn equal_times(&self, join: &Join) -> Option<(Column, Column)> {
        join.on.iter().find_map(|(l, r)| match (l, r) {
            (Expr::Column(l), Expr::Column(r))
                if self.is_time(&Expr::Column(l.clone()), &join.left)
                    && self.is_time(&Expr::Column(r.clone()), &join.right) =>
            {
                Some((l.clone(), r.clone()))
            }
            _ => None,
        })
    }
}
