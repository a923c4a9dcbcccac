//! What the aggregate operators share: the planned spec, lateness, and the
//! per-batch evaluation of keys, arguments and `FILTER` masks.
//!
//! Aggregate functions are DataFusion's own `GroupsAccumulator`s, so they
//! behave exactly as DataFusion's batch `GROUP BY` does (types, NULLs,
//! overflow, float rules): the batch engine is our oracle, and this makes
//! agreement a matter of feeding it the same rows.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, BooleanArray, Int64Array, RecordBatch};
use arrow::buffer::BooleanBuffer;
use arrow::compute::filter_record_batch;
use arrow::datatypes::{FieldRef, SchemaRef};
use datafusion::logical_expr::GroupsAccumulator;
use datafusion::physical_expr::aggregate::AggregateFunctionExpr;
use datafusion::physical_expr::{GroupsAccumulatorAdapter, PhysicalExpr};
use hashbrown::HashSet;
use laminar_runtime::{Error, ErrorCode, Result};

use crate::time::{EventTimeUnit, WindowSpec};
use crate::BatchTime;

/// The window of a windowed aggregate.
#[derive(Debug, Clone)]
pub struct WindowBinding {
    /// Index of the event-time column in the source batch; lateness is
    /// decided on it before any filter runs.
    pub source_time_column: usize,
    /// How the source stores event time.
    pub source_time_unit: EventTimeUnit,
    /// The window's event-time argument, over the aggregate input.
    pub event_time: Arc<dyn PhysicalExpr>,
    /// The window.
    pub kind: WindowKind,
    /// Type of the window column in the output (the event-time type).
    pub unit: EventTimeUnit,
    /// Position of the window among the GROUP BY expressions.
    pub position: usize,
}

/// The windows of a windowed aggregate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowKind {
    /// Tumbling or sliding windows of fixed length.
    Fixed(WindowSpec),
    /// Session windows per key: rows less than `gap_ms` apart (in event
    /// time) share a session, which ends `gap_ms` after its last row.
    Session {
        /// Inactivity that ends a session, in ms (> 0).
        gap_ms: i64,
    },
}

impl WindowKind {
    /// End of the earliest window a row at `t_ms` belongs to (for a
    /// session: the session the row would open on its own).
    #[inline]
    pub fn first_end(&self, t_ms: i64) -> i64 {
        match self {
            WindowKind::Fixed(w) => w.end_of(w.first_start_of(t_ms)),
            WindowKind::Session { gap_ms } => t_ms.saturating_add(*gap_ms),
        }
    }

    /// End of the latest window a row at `t_ms` belongs to.
    #[inline]
    pub fn last_end(&self, t_ms: i64) -> i64 {
        match self {
            WindowKind::Fixed(w) => w.end_of(w.start_of(t_ms)),
            WindowKind::Session { gap_ms } => t_ms.saturating_add(*gap_ms),
        }
    }

    /// The fixed window, or an error for operators that take only those.
    pub fn fixed(&self, what: &str) -> Result<WindowSpec> {
        match self {
            WindowKind::Fixed(w) => Ok(*w),
            WindowKind::Session { .. } => Err(Error::new(
                ErrorCode::Unsupported,
                format!("{what} is not supported with session windows yet"),
            )),
        }
    }
}

/// Everything needed to build an aggregate operator on a shard. Cheap to
/// clone: expressions are shared, state is not.
#[derive(Debug, Clone)]
pub struct AggregateSpec {
    /// Filters/projections from the source batch to the aggregate input.
    pub pre: Vec<Stage>,
    /// The window, for a windowed aggregate.
    pub window: Option<WindowBinding>,
    /// The other GROUP BY expressions, over the aggregate input.
    pub keys: Vec<Arc<dyn PhysicalExpr>>,
    /// Aggregate functions.
    pub aggregates: Vec<Arc<AggregateFunctionExpr>>,
    /// `FILTER (WHERE ...)` of each aggregate, if any.
    pub aggregate_filters: Vec<Option<Arc<dyn PhysicalExpr>>>,
    /// Schema of the aggregate's output: GROUP BY columns, then aggregates.
    pub aggregate_schema: SchemaRef,
    /// Filters/projections after the aggregate (HAVING, SELECT list).
    pub post: Vec<Stage>,
    /// Keep late rows for the stream's late side output instead of only
    /// counting them.
    pub late_side_output: bool,
    /// The same aggregate as one compiled loop over the source batch, when
    /// the planner could build one (window aggregates only; see
    /// [`crate::fused`]).
    pub fused: Option<Arc<crate::fused::FusedAggregate>>,
    /// What each aggregate accumulates, when every one is a plain
    /// `COUNT`/`SUM`/`MIN`/`MAX`/`AVG` that
    /// [`crate::fused::FusedAccumulator`] computes and can merge (`MIN`/
    /// `MAX` of a timestamp included, as a `BIGINT` kind): session
    /// aggregates then fold rows into per-session state as they arrive
    /// instead of keeping them ([`crate::session_aggregate`]). Independent
    /// of the JIT, so a checkpoint restores whichever mode runs.
    pub foldable: Option<Vec<crate::fused::FusedAggregateKind>>,
    /// The part of a two-phase aggregate this is (window aggregates only).
    pub phase: AggregatePhase,
}

/// Where a window aggregate stands in a two-phase plan: each shard
/// aggregates the rows it holds (partial) and the shard owning the group
/// merges the shards' states (final), so that a group few keys share is
/// not one shard's work.
#[derive(Debug, Clone, Default)]
pub enum AggregatePhase {
    /// Rows in, results out.
    #[default]
    Whole,
    /// Rows in; when a window closes, its groups' partial states out, in
    /// this schema: the window's start, the keys, then each aggregate's
    /// state columns (DataFusion's `state_fields`). `post` is empty.
    Partial(SchemaRef),
    /// Partial states in (laid out as above), merged per group; results
    /// out when the window closes. `pre` is empty and no row is late: the
    /// partial side closed the window at the same watermark.
    Final,
}

use crate::stage::{evaluate_all, Stage};

/// One batch of aggregate input, evaluated once for every window it
/// touches.
pub(crate) struct Inputs {
    pub key_arrays: Vec<ArrayRef>,
    /// Arguments (plus ORDER BY columns) of each aggregate.
    pub arguments: Vec<Vec<ArrayRef>>,
    /// `FILTER` mask of each aggregate.
    pub filters: Vec<Option<BooleanArray>>,
}

impl AggregateSpec {
    /// The fields of the GROUP BY keys other than the window.
    pub fn key_fields(&self) -> Vec<FieldRef> {
        let fields = self.aggregate_schema.fields();
        (0..self.keys.len() + usize::from(self.window.is_some()))
            .filter(|&i| self.window.as_ref().is_none_or(|w| w.position != i))
            .map(|i| Arc::clone(&fields[i]))
            .collect()
    }

    /// Fresh accumulators, one per aggregate.
    pub(crate) fn accumulators(&self) -> Result<Vec<Box<dyn GroupsAccumulator>>> {
        self.aggregates
            .iter()
            .map(|agg| -> Result<Box<dyn GroupsAccumulator>> {
                if agg.groups_accumulator_supported() {
                    Ok(agg.create_groups_accumulator()?)
                } else {
                    let agg = Arc::clone(agg);
                    Ok(Box::new(GroupsAccumulatorAdapter::new(move || {
                        agg.create_accumulator()
                    })))
                }
            })
            .collect()
    }

    /// Evaluates keys, aggregate arguments and FILTER masks over a batch.
    pub(crate) fn inputs(&self, input: &RecordBatch) -> Result<Inputs> {
        let rows = input.num_rows();
        let key_arrays = evaluate_all(&self.keys, input)?;
        let mut arguments = Vec::with_capacity(self.aggregates.len());
        for agg in &self.aggregates {
            let mut exprs = agg.expressions();
            exprs.extend(agg.order_bys().iter().map(|s| Arc::clone(&s.expr)));
            arguments.push(evaluate_all(&exprs, input)?);
        }
        let mut filters = Vec::with_capacity(self.aggregates.len());
        for filter in &self.aggregate_filters {
            filters.push(match filter {
                Some(f) => Some(as_mask(f.evaluate(input)?.into_array(rows)?)?),
                None => None,
            });
        }
        Ok(Inputs {
            key_arrays,
            arguments,
            filters,
        })
    }

    /// Puts GROUP BY columns (window first placed at its position) and
    /// aggregate values together in the aggregate's schema.
    pub(crate) fn assemble(
        &self,
        window_column: Option<ArrayRef>,
        key_columns: Vec<ArrayRef>,
        aggregate_columns: Vec<ArrayRef>,
    ) -> Result<RecordBatch> {
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(self.aggregate_schema.fields().len());
        let mut keys = key_columns.into_iter();
        let mut window_column = window_column;
        let group_count = self.keys.len() + usize::from(self.window.is_some());
        for position in 0..group_count {
            match &self.window {
                Some(w) if w.position == position => {
                    columns.push(window_column.take().expect("a window column"))
                }
                _ => columns.push(keys.next().expect("one key column per key")),
            }
        }
        columns.extend(aggregate_columns);
        RecordBatch::try_new(Arc::clone(&self.aggregate_schema), columns).map_err(|e| {
            Error::new(
                ErrorCode::Execution,
                format!("aggregate produced a batch that does not fit its schema: {e}"),
            )
        })
    }
}

/// An aggregate's late rows: counted, and kept for the late side output
/// when the stream has one.
#[derive(Debug, Default)]
pub(crate) struct LateRows {
    /// Rows dropped so far.
    pub count: u64,
    /// Late rows waiting for the late side output.
    pub batches: Vec<RecordBatch>,
    keep: bool,
}

impl LateRows {
    pub fn new(keep: bool) -> Self {
        Self {
            keep,
            ..Self::default()
        }
    }

    /// [`drop_late`], counting (and keeping) what it drops.
    pub fn drop_from(
        &mut self,
        binding: &WindowBinding,
        batch: &RecordBatch,
        time: BatchTime<'_>,
        times_ms: &mut Vec<i64>,
    ) -> Result<(RecordBatch, Option<ArrayRef>)> {
        let kept = self.keep.then_some(&mut self.batches);
        let (on_time, carry, late) = drop_late(binding, batch, time, times_ms, kept)?;
        self.count += late;
        Ok((on_time, carry))
    }
}

/// Decides which rows of a source batch are late for a fixed-length
/// window: a row is late once the first window holding it has closed
/// (it would be missing from that window's result). Rows whose every
/// window closed are removed; a row still in some open window stays, and
/// the per-row watermark comes back with it (as the carry for the
/// pre-stages) so that it joins only the windows still open.
///
/// Returns the rows to aggregate, the per-row watermark when some rows may
/// not join all their windows, and the number of late rows; the late rows
/// themselves are appended to `late_out` when given (the late side
/// output). `times_ms` is scratch space (its contents are unspecified
/// afterwards).
pub(crate) fn drop_late(
    binding: &WindowBinding,
    batch: &RecordBatch,
    time: BatchTime<'_>,
    times_ms: &mut Vec<i64>,
    late_out: Option<&mut Vec<RecordBatch>>,
) -> Result<(RecordBatch, Option<ArrayRef>, u64)> {
    let times_ms = binding
        .source_time_unit
        .ms_values(batch.column(binding.source_time_column).as_ref(), times_ms)?;
    let kind = binding.kind;
    if time.row_watermarks_ms.is_none() {
        // Window ends grow with event time: if the earliest row is on
        // time, every row is, and no per-row work is needed.
        let earliest = crate::time::min_i64(times_ms).unwrap_or(i64::MAX);
        if kind.first_end(earliest) > time.watermark_ms {
            return Ok((batch.clone(), None, 0));
        }
    }
    let row_watermark = |i: usize| {
        time.row_watermarks_ms
            .map_or(time.watermark_ms, |w| w[i].max(time.watermark_ms))
    };
    let mut late = 0u64;
    let mut gone = 0usize;
    let keep: BooleanArray = times_ms
        .iter()
        .enumerate()
        .map(|(i, &t)| {
            let watermark = row_watermark(i);
            late += u64::from(kind.first_end(t) <= watermark);
            let keep = kind.last_end(t) > watermark;
            gone += usize::from(!keep);
            Some(keep)
        })
        .collect();
    if let Some(late_out) = late_out.filter(|_| late > 0) {
        let is_late: BooleanArray = times_ms
            .iter()
            .enumerate()
            .map(|(i, &t)| Some(kind.first_end(t) <= row_watermark(i)))
            .collect();
        late_out.push(filter_record_batch(batch, &is_late)?);
    }
    // Some kept row misses a window only when sliding windows overlap.
    let partial = late as usize > gone;
    let carry = partial.then(|| -> ArrayRef {
        Arc::new(Int64Array::from_iter_values(
            (0..times_ms.len()).map(row_watermark),
        ))
    });
    if gone == 0 {
        return Ok((batch.clone(), carry, late));
    }
    let carry = match carry {
        Some(c) => Some(arrow::compute::filter(&c, &keep)?),
        None => None,
    };
    Ok((filter_record_batch(batch, &keep)?, carry, late))
}

/// The windows a batch's rows fall in, each with the mask of its rows
/// (`None`: every row). Windows already closed at `watermark_ms` are left
/// out, and with per-row watermarks a row joins only the windows still
/// open when it arrived.
pub(crate) fn assign_windows(
    window: &WindowSpec,
    times_ms: &[i64],
    row_watermarks: Option<&[i64]>,
    watermark_ms: i64,
    starts: &mut HashSet<i64>,
) -> Vec<(i64, Option<BooleanArray>)> {
    let Some((earliest, latest)) = crate::time::min_max_i64(times_ms) else {
        return Vec::new();
    };
    // Most tumbling batches fall in one window: then no per-row window math
    // and no mask.
    if window.is_tumbling()
        && window.start_of(earliest) == window.start_of(latest)
        && row_watermarks.is_none()
    {
        let start = window.start_of(earliest);
        if window.end_of(start) <= watermark_ms {
            return Vec::new();
        }
        return vec![(start, None)];
    }
    // The starts that hold some row, so that masks are built for those
    // windows only. When the aligned starts between the earliest row's
    // first window and the latest row's last are few (the usual batch),
    // rows mark them in a bitmap; when the batch's times are spread out
    // (an outlier far from the rest, or times so far apart that the
    // distance overflows), each row's windows go into a set.
    let first = window.first_start_of(earliest);
    let last = window.start_of(latest);
    let slide = window.slide_ms;
    // slide > 0 and size >= slide, both positive.
    let windows_per_row = (window.size_ms + slide - 1) / slide;
    let span = last.checked_sub(first).map(|distance| distance / slide + 1);
    let mut sorted: Vec<i64> = match span {
        Some(span) if span <= times_ms.len() as i64 + windows_per_row => {
            let mut occupied = vec![false; span as usize];
            for &t in times_ms {
                // Both within first..=last: no overflow.
                let from = (window.first_start_of(t) - first) / slide;
                let to = (window.start_of(t) - first) / slide;
                for index in from..=to {
                    occupied[index as usize] = true;
                }
            }
            occupied
                .iter()
                .enumerate()
                .filter(|&(_, &o)| o)
                .map(|(index, _)| first + index as i64 * slide)
                .collect()
        }
        _ => {
            starts.clear();
            for &t in times_ms {
                let mut start = window.first_start_of(t);
                while start <= t {
                    starts.insert(start);
                    match start.checked_add(slide) {
                        Some(next) => start = next,
                        None => break,
                    }
                }
            }
            let mut sorted: Vec<i64> = starts.iter().copied().collect();
            sorted.sort_unstable();
            sorted
        }
    };
    sorted.retain(|&start| window.end_of(start) > watermark_ms);
    sorted
        .into_iter()
        .filter_map(|start| {
            let end = window.end_of(start);
            let mask = BooleanArray::new(
                BooleanBuffer::collect_bool(times_ms.len(), |i| {
                    let t = times_ms[i];
                    start <= t && t < end && row_watermarks.is_none_or(|w| end > w[i])
                }),
                None,
            );
            (mask.true_count() > 0).then_some((start, Some(mask)))
        })
        .collect()
}

fn as_mask(array: ArrayRef) -> Result<BooleanArray> {
    array
        .as_any()
        .downcast_ref::<BooleanArray>()
        .cloned()
        .ok_or_else(|| {
            Error::new(
                ErrorCode::Execution,
                format!("FILTER clause produced {}, not BOOLEAN", array.data_type()),
            )
        })
}

/// `a AND b` for optional masks.
pub(crate) fn combine_masks(
    a: Option<&BooleanArray>,
    b: Option<&BooleanArray>,
) -> Result<Option<BooleanArray>> {
    Ok(match (a, b) {
        (None, None) => None,
        (Some(m), None) | (None, Some(m)) => Some(m.clone()),
        (Some(a), Some(b)) => Some(arrow::compute::and(a, b)?),
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    /// Each row's windows, listed row by row: what `assign_windows` must
    /// return (windows closed at `watermark_ms` left out).
    fn reference(window: &WindowSpec, times: &[i64], watermark_ms: i64) -> Vec<(i64, Vec<bool>)> {
        let mut windows: BTreeMap<i64, Vec<bool>> = BTreeMap::new();
        for (row, &t) in times.iter().enumerate() {
            let mut start = window.first_start_of(t);
            while start <= t {
                windows
                    .entry(start)
                    .or_insert_with(|| vec![false; times.len()])[row] = true;
                start += window.slide_ms;
            }
        }
        windows
            .into_iter()
            .filter(|&(start, _)| window.end_of(start) > watermark_ms)
            .collect()
    }

    fn assigned(window: &WindowSpec, times: &[i64], watermark_ms: i64) -> Vec<(i64, Vec<bool>)> {
        assign_windows(window, times, None, watermark_ms, &mut HashSet::new())
            .into_iter()
            .map(|(start, mask)| {
                let rows = (0..times.len())
                    .map(|i| mask.as_ref().is_none_or(|m| m.value(i)))
                    .collect();
                (start, rows)
            })
            .collect()
    }

    #[test]
    fn windows_match_the_row_by_row_listing() {
        let tumbling = WindowSpec::tumble(1_000, 0).unwrap();
        let sliding = WindowSpec::slide(1_000, 300, 50).unwrap();
        let batches: [&[i64]; 6] = [
            &[5, 10, 999],
            &[999, 1_000, 2_500, -1],
            // An outlier far from the rest: listed row by row.
            &[100, 200, 9_000_000],
            &[0, 1, 2, 3, 4_000, 4_001],
            &[-2_000, 7_777, 7_778, 12_345],
            &[42],
        ];
        for window in [tumbling, sliding] {
            for times in batches {
                for watermark_ms in [i64::MIN, 1_000, 5_000] {
                    assert_eq!(
                        assigned(&window, times, watermark_ms),
                        reference(&window, times, watermark_ms),
                        "{window:?} {times:?} watermark {watermark_ms}"
                    );
                }
            }
        }
    }

    #[test]
    fn times_too_far_apart_for_a_range_keep_their_rows() {
        // The distance between the two windows overflows an i64.
        let times = [-4_700_000_000_000_000_000, 4_700_000_000_000_000_000];
        let window = WindowSpec::tumble(60_000, 0).unwrap();
        let windows = assigned(&window, &times, i64::MIN);
        assert_eq!(windows.len(), 2, "{windows:?}");
        assert_eq!(windows, reference(&window, &times, i64::MIN));
    }
}
