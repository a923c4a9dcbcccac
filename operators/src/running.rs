//! Running aggregates over event time: `SUM`, `COUNT`, `MIN`, `MAX` and
//! `AVG` `OVER (PARTITION BY k ORDER BY ts)`, the partition's rows from
//! its first up to the current one.
//!
//! They run inside the [`crate::analytic`] operator, which emits each row
//! once the watermark makes it final, in (partition, event time, arrival)
//! order; here each partition keeps one small state per function
//! (count, sum, best value) that every emitted row updates. With a `RANGE`
//! (or `GROUPS`) frame, the default, rows of equal event time are peers
//! and share the value after the last of them; all peers are always final
//! together, since the watermark passes one event time at once. With
//! `ROWS`, each row has its own value (ties in arrival order).
//!
//! A bounded frame, `ROWS BETWEEN n PRECEDING AND CURRENT ROW` (the last
//! `n + 1` rows) or `RANGE BETWEEN d PRECEDING AND CURRENT ROW` (the rows
//! at most `d` of event time before the current one, and its peers),
//! keeps the event times and arguments of the rows in it too: each row
//! adds its value, then the values that left the frame are taken out
//! (DataFusion's sliding accumulators do the same; for `ROWS`, in the same
//! order, so float sums round alike). `MIN`/`MAX` keep the frame's rows
//! that may still become its extreme ([`Extremes`]), O(1) per row.
//!
//! Arithmetic is DataFusion's: integer sums wrap, float sums add in row
//! order, `AVG` is a float, `MIN`/`MAX` of floats use IEEE total order,
//! NULL arguments are skipped, and a function over no non-NULL value yet is
//! NULL (`COUNT` is 0).

use std::collections::VecDeque;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, Float64Array, Int64Array};
use arrow::datatypes::{DataType, Float64Type, Int64Type};
use laminar_runtime::{Error, ErrorCode, Result};

/// Which running aggregate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunningKind {
    /// `SUM(x)`.
    Sum,
    /// `COUNT(x)` (`COUNT(*)` counts a constant).
    Count,
    /// `MIN(x)`.
    Min,
    /// `MAX(x)`.
    Max,
    /// `AVG(x)`.
    Avg,
}

/// One partition's state of one running aggregate.
#[derive(Debug, Clone, Default)]
pub(crate) struct RunningState {
    pub(crate) count: i64,
    pub(crate) sum_int: i64,
    pub(crate) sum_float: f64,
    pub(crate) best_int: Option<i64>,
    pub(crate) best_float: Option<f64>,
    /// With a bounded frame: the event times and arguments of the rows in
    /// it, oldest first, the arguments as [`argument_type`] makes them
    /// (one of the two lists is used).
    pub(crate) frame_times: VecDeque<i64>,
    pub(crate) frame_int: VecDeque<Option<i64>>,
    pub(crate) frame_float: VecDeque<Option<f64>>,
    /// `MIN`/`MAX` over a bounded frame: the rows that may still become
    /// its extreme (rebuilt from the frame after a restore).
    pub(crate) extremes: Extremes,
}

/// The rows of a bounded frame that can still be its `MIN` (or `MAX`):
/// each is better than every row after it, so the first is the extreme,
/// and a row that a later one matches or beats is dropped for good. A row
/// is pushed and dropped at most once: O(1) per row, amortized, however
/// long the frame.
#[derive(Debug, Clone, Default)]
pub(crate) struct Extremes {
    /// Positions in the partition's rows, best first.
    positions: VecDeque<u64>,
    /// Position of the frame's oldest row.
    first: u64,
    /// Whether `positions` reflects the frame (false in a new or
    /// restored state until the first row rebuilds it).
    ready: bool,
}

impl Extremes {
    /// Takes in the frame's newest row (already pushed onto `frame`);
    /// `dominated(held, new)` says a held value can no longer be the
    /// extreme once `new` is in the frame.
    fn push<T: Copy>(&mut self, frame: &VecDeque<Option<T>>, dominated: impl Fn(T, T) -> bool) {
        if !self.ready {
            self.positions.clear();
            self.ready = true;
            for i in 0..frame.len() {
                self.take_in(frame, self.first + i as u64, &dominated);
            }
            return;
        }
        let newest = self.first + frame.len() as u64 - 1;
        self.take_in(frame, newest, &dominated);
    }

    fn take_in<T: Copy>(
        &mut self,
        frame: &VecDeque<Option<T>>,
        position: u64,
        dominated: &impl Fn(T, T) -> bool,
    ) {
        let Some(new) = frame[(position - self.first) as usize] else {
            return;
        };
        while let Some(&held) = self.positions.back() {
            match frame[(held - self.first) as usize] {
                Some(value) if !dominated(value, new) => break,
                _ => {
                    self.positions.pop_back();
                }
            }
        }
        self.positions.push_back(position);
    }

    /// The frame's oldest row leaves (call before popping it).
    fn pop_front(&mut self) {
        if self.positions.front() == Some(&self.first) {
            self.positions.pop_front();
        }
        self.first += 1;
    }

    fn best<T: Copy>(&self, frame: &VecDeque<Option<T>>) -> Option<T> {
        self.positions
            .front()
            .and_then(|&p| frame[(p - self.first) as usize])
    }
}

/// The rows a running aggregate covers, ending at the current row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunningFrame {
    /// From the partition's first row; with `peers`, rows of equal event
    /// time share the value after the last of them (`RANGE`, `GROUPS`).
    Unbounded {
        /// Whether peers share a value.
        peers: bool,
    },
    /// `ROWS BETWEEN n PRECEDING AND CURRENT ROW`: the last `n + 1` rows.
    Rows {
        /// `n`.
        preceding: usize,
    },
    /// `RANGE BETWEEN d PRECEDING AND CURRENT ROW`: the rows whose event
    /// time is at most `d` before the current row's, and its peers.
    Range {
        /// `d`, in the event-time column's unit.
        preceding: i64,
    },
}

impl RunningFrame {
    /// Whether the oldest row of a frame (with these event times, the
    /// current row's last) has left it.
    #[inline]
    fn leaves(&self, times: &VecDeque<i64>, now: i64) -> bool {
        match *self {
            RunningFrame::Unbounded { .. } => false,
            RunningFrame::Rows { preceding } => times.len() > preceding.saturating_add(1),
            RunningFrame::Range { preceding } => times
                .front()
                .is_some_and(|&oldest| oldest < now.saturating_sub(preceding)),
        }
    }
}

/// The type the argument is computed in: `BIGINT` when the result is
/// (integer `SUM`, `MIN`, `MAX`), `DOUBLE` otherwise.
pub fn argument_type(kind: RunningKind, output: &DataType) -> Result<DataType> {
    match (kind, output) {
        (RunningKind::Count, DataType::Int64) => Ok(DataType::Int64),
        (RunningKind::Avg, DataType::Float64) => Ok(DataType::Float64),
        (RunningKind::Sum | RunningKind::Min | RunningKind::Max, DataType::Int64) => {
            Ok(DataType::Int64)
        }
        (RunningKind::Sum | RunningKind::Min | RunningKind::Max, DataType::Float64) => {
            Ok(DataType::Float64)
        }
        (kind, other) => Err(Error::new(
            ErrorCode::Unsupported,
            format!("a running {kind:?} returning {other} is not supported in streams yet"),
        )
        .with_hint("running SUM, COUNT, MIN, MAX and AVG take BIGINT or DOUBLE arguments")),
    }
}

/// The values of one running aggregate for the emitted rows: `values`
/// (its argument, in [`argument_type`]), each row's partition and event
/// time (in the column's unit), in emission order; `states` is indexed by
/// partition.
pub(crate) fn running(
    kind: RunningKind,
    frame: RunningFrame,
    values: &ArrayRef,
    partitions: &[usize],
    times: &[i64],
    states: &mut [RunningState],
) -> Result<ArrayRef> {
    let n = partitions.len();
    let bounded = !matches!(frame, RunningFrame::Unbounded { .. });
    let extreme = bounded && matches!(kind, RunningKind::Min | RunningKind::Max);
    let max = kind == RunningKind::Max;
    let dominated_int = |held: i64, new: i64| if max { held <= new } else { held >= new };
    let dominated_float = |held: f64, new: f64| {
        let order = held.total_cmp(&new);
        if max {
            order.is_le()
        } else {
            order.is_ge()
        }
    };
    let column: ArrayRef = match values.data_type() {
        DataType::Int64 => {
            let values = values.as_primitive::<Int64Type>();
            let mut out = Vec::with_capacity(n);
            for (row, &partition) in partitions.iter().enumerate() {
                let state = &mut states[partition];
                let value = values.is_valid(row).then(|| values.value(row));
                if let Some(v) = value {
                    state.count += 1;
                    state.sum_int = state.sum_int.wrapping_add(v);
                    state.best_int = Some(match (kind, state.best_int) {
                        (RunningKind::Min, Some(best)) => best.min(v),
                        (RunningKind::Max, Some(best)) => best.max(v),
                        _ => v,
                    });
                }
                if bounded {
                    let RunningState {
                        count,
                        sum_int,
                        best_int,
                        frame_times,
                        frame_int,
                        extremes,
                        ..
                    } = state;
                    let slide = Slide {
                        frame,
                        now: times[row],
                        times: frame_times,
                        extremes: extreme.then_some((extremes, dominated_int)),
                    };
                    let best = slide.take(frame_int, value, |gone| {
                        *count -= 1;
                        *sum_int = sum_int.wrapping_sub(gone);
                    });
                    if extreme {
                        *best_int = best;
                    }
                }
                out.push(match kind {
                    RunningKind::Count => Some(state.count),
                    _ if state.count == 0 => None,
                    RunningKind::Sum => Some(state.sum_int),
                    _ => state.best_int,
                });
            }
            Arc::new(Int64Array::from(out))
        }
        DataType::Float64 => {
            let values = values.as_primitive::<Float64Type>();
            let mut out = Vec::with_capacity(n);
            for (row, &partition) in partitions.iter().enumerate() {
                let state = &mut states[partition];
                let value = values.is_valid(row).then(|| values.value(row));
                if let Some(v) = value {
                    state.count += 1;
                    state.sum_float += v;
                    state.best_float = Some(match (kind, state.best_float) {
                        (RunningKind::Min, Some(best)) if best.total_cmp(&v).is_le() => best,
                        (RunningKind::Max, Some(best)) if best.total_cmp(&v).is_ge() => best,
                        _ => v,
                    });
                }
                if bounded {
                    let RunningState {
                        count,
                        sum_float,
                        best_float,
                        frame_times,
                        frame_float,
                        extremes,
                        ..
                    } = state;
                    let slide = Slide {
                        frame,
                        now: times[row],
                        times: frame_times,
                        extremes: extreme.then_some((extremes, dominated_float)),
                    };
                    let best = slide.take(frame_float, value, |gone| {
                        *count -= 1;
                        *sum_float -= gone;
                    });
                    if extreme {
                        *best_float = best;
                    }
                }
                out.push(match kind {
                    _ if state.count == 0 => None,
                    RunningKind::Sum => Some(state.sum_float),
                    RunningKind::Avg => Some(state.sum_float / state.count as f64),
                    _ => state.best_float,
                });
            }
            Arc::new(Float64Array::from(out))
        }
        other => {
            return Err(Error::new(
                ErrorCode::Execution,
                format!("internal: a running aggregate over {other}"),
            ))
        }
    };
    match frame {
        RunningFrame::Unbounded { peers: true } | RunningFrame::Range { .. } => {
            share_among_peers(&column, partitions, times)
        }
        _ => Ok(column),
    }
}

/// One row's step of a bounded frame: the frame's event times, and its
/// extremes when the aggregate is a `MIN`/`MAX` (with the test of whether
/// a held value is dominated by a new one).
struct Slide<'a, D> {
    frame: RunningFrame,
    now: i64,
    times: &'a mut VecDeque<i64>,
    extremes: Option<(&'a mut Extremes, D)>,
}

impl<D> Slide<'_, D> {
    /// Takes the current row's argument into `values` (the frame's
    /// arguments), hands each argument of a row that left the frame to
    /// `gone`, and returns the frame's extreme (`None` without extremes).
    fn take<T: Copy>(
        self,
        values: &mut VecDeque<Option<T>>,
        value: Option<T>,
        mut gone: impl FnMut(T),
    ) -> Option<T>
    where
        D: Fn(T, T) -> bool,
    {
        let Slide {
            frame,
            now,
            times,
            mut extremes,
        } = self;
        times.push_back(now);
        values.push_back(value);
        if let Some((extremes, dominated)) = &mut extremes {
            extremes.push(values, &*dominated);
        }
        while frame.leaves(times, now) {
            times.pop_front();
            if let Some((extremes, _)) = &mut extremes {
                extremes.pop_front();
            }
            if let Some(Some(left)) = values.pop_front() {
                gone(left);
            }
        }
        extremes.and_then(|(extremes, _)| extremes.best(values))
    }
}

/// Gives every run of rows with the same partition and event time the
/// value of the run's last row.
fn share_among_peers(
    column: &ArrayRef,
    partitions: &[usize],
    times_ms: &[i64],
) -> Result<ArrayRef> {
    let n = partitions.len();
    let mut last_of_run = vec![0u32; n];
    let mut end = n;
    for row in (0..n).rev() {
        if row + 1 < n
            && (partitions[row], times_ms[row]) != (partitions[row + 1], times_ms[row + 1])
        {
            end = row + 1;
        }
        last_of_run[row] = (end - 1) as u32;
    }
    Ok(arrow::compute::take(
        column.as_ref(),
        &arrow::array::UInt32Array::from(last_of_run),
        None,
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_share_the_value_after_the_last_of_them() {
        let values: ArrayRef = Arc::new(Int64Array::from(vec![
            Some(1),
            Some(2),
            None,
            Some(4),
            Some(5),
        ]));
        let partitions = [0, 0, 0, 0, 1];
        let times = [10, 20, 20, 30, 10];
        let mut states = vec![RunningState::default(); 2];
        let sums = running(
            RunningKind::Sum,
            RunningFrame::Unbounded { peers: true },
            &values,
            &partitions,
            &times,
            &mut states,
        )
        .unwrap();
        let sums = sums.as_primitive::<Int64Type>();
        assert_eq!(sums.values().to_vec(), [1, 3, 3, 7, 5]);
        let mut states = vec![RunningState::default(); 2];
        let counts = running(
            RunningKind::Count,
            RunningFrame::Unbounded { peers: false },
            &values,
            &partitions,
            &times,
            &mut states,
        )
        .unwrap();
        assert_eq!(
            counts.as_primitive::<Int64Type>().values().to_vec(),
            [1, 2, 2, 3, 1]
        );
        // State carries over to the next rows of a partition.
        let more: ArrayRef = Arc::new(Int64Array::from(vec![Some(10)]));
        let unbounded = RunningFrame::Unbounded { peers: false };
        let next = running(
            RunningKind::Count,
            unbounded,
            &more,
            &[0],
            &[40],
            &mut states,
        )
        .unwrap();
        assert_eq!(next.as_primitive::<Int64Type>().value(0), 4);
    }

    /// The last `n + 1` rows of each partition, NULLs counted as rows,
    /// against sums and extremes computed over each frame from scratch.
    #[test]
    fn bounded_frames_cover_the_last_rows() {
        let values: Vec<Option<i64>> = vec![
            Some(5),
            Some(1),
            None,
            Some(9),
            Some(9),
            Some(2),
            None,
            None,
            None,
            Some(-4),
            Some(7),
        ];
        let partitions: Vec<usize> = (0..values.len()).map(|i| usize::from(i % 4 == 3)).collect();
        let times: Vec<i64> = (0..values.len() as i64).collect();
        for preceding in [0, 1, 2, 5] {
            let frame = RunningFrame::Rows { preceding };
            for kind in [
                RunningKind::Sum,
                RunningKind::Count,
                RunningKind::Min,
                RunningKind::Max,
            ] {
                // Two calls, so that the frame carries over between them.
                let mut states = vec![RunningState::default(); 2];
                let mut got = Vec::new();
                for (from, to) in [(0, 4), (4, values.len())] {
                    let array: ArrayRef = Arc::new(Int64Array::from(values[from..to].to_vec()));
                    let column = running(
                        kind,
                        frame,
                        &array,
                        &partitions[from..to],
                        &times[from..to],
                        &mut states,
                    )
                    .unwrap();
                    got.extend(column.as_primitive::<Int64Type>().iter());
                }
                let want: Vec<Option<i64>> = (0..values.len())
                    .map(|row| {
                        let earlier: Vec<i64> = (0..=row)
                            .rev()
                            .filter(|&r| partitions[r] == partitions[row])
                            .take(preceding + 1)
                            .filter_map(|r| values[r])
                            .collect();
                        match kind {
                            RunningKind::Count => Some(earlier.len() as i64),
                            _ if earlier.is_empty() => None,
                            RunningKind::Sum => Some(earlier.iter().sum()),
                            RunningKind::Min => earlier.iter().min().copied(),
                            _ => earlier.iter().max().copied(),
                        }
                    })
                    .collect();
                assert_eq!(got, want, "{kind:?} over {preceding} preceding");
            }
        }
    }

    /// MIN and MAX over bounded frames of a long, mostly falling series
    /// (the extreme leaves on nearly every row), against each frame's
    /// extreme computed from scratch; halfway the states are rebuilt as a
    /// restore leaves them.
    #[test]
    fn frame_extremes_follow_the_frame() {
        let n = 400;
        let values: Vec<Option<f64>> = (0..n)
            .map(|i| (i % 13 != 5).then(|| f64::from(1_000 - i) + f64::from(i % 7) * 3.5))
            .collect();
        let times: Vec<i64> = (0..n as i64).map(|i| i * 10 - i % 3).collect();
        let partitions = vec![0usize; n as usize];
        for frame in [
            RunningFrame::Rows { preceding: 0 },
            RunningFrame::Rows { preceding: 6 },
            RunningFrame::Range { preceding: 45 },
        ] {
            for kind in [RunningKind::Min, RunningKind::Max] {
                let mut states = vec![RunningState::default(); 1];
                let mut got: Vec<Option<f64>> = Vec::new();
                for (from, to) in [(0usize, 150usize), (150, n as usize)] {
                    if from > 0 {
                        // What a restore brings back: the frame, no extremes.
                        let state = &mut states[0];
                        state.extremes = Extremes::default();
                    }
                    let array: ArrayRef = Arc::new(Float64Array::from(values[from..to].to_vec()));
                    let column = running(
                        kind,
                        frame,
                        &array,
                        &partitions[from..to],
                        &times[from..to],
                        &mut states,
                    )
                    .unwrap();
                    got.extend(column.as_primitive::<Float64Type>().iter());
                }
                let want: Vec<Option<f64>> = (0..n as usize)
                    .map(|row| {
                        let inside = |r: usize| match frame {
                            RunningFrame::Rows { preceding } => row - r <= preceding,
                            RunningFrame::Range { preceding } => times[r] >= times[row] - preceding,
                            RunningFrame::Unbounded { .. } => true,
                        };
                        let frame_values =
                            (0..=row).filter(|&r| inside(r)).filter_map(|r| values[r]);
                        match kind {
                            RunningKind::Max => frame_values.max_by(f64::total_cmp),
                            _ => frame_values.min_by(f64::total_cmp),
                        }
                    })
                    .collect();
                assert_eq!(got, want, "{kind:?} over {frame:?}");
            }
        }
    }
}
