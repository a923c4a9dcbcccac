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
//! Arithmetic is DataFusion's: integer sums wrap, float sums add in row
//! order, `AVG` is a float, `MIN`/`MAX` of floats use IEEE total order,
//! NULL arguments are skipped, and a function over no non-NULL value yet is
//! NULL (`COUNT` is 0).

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
/// time, in emission order; `states` is indexed by partition.
pub(crate) fn running(
    kind: RunningKind,
    peers: bool,
    values: &ArrayRef,
    partitions: &[usize],
    times_ms: &[i64],
    states: &mut [RunningState],
) -> Result<ArrayRef> {
    let n = partitions.len();
    let mut column: ArrayRef = match values.data_type() {
        DataType::Int64 => {
            let values = values.as_primitive::<Int64Type>();
            let mut out = Vec::with_capacity(n);
            for (row, &partition) in partitions.iter().enumerate() {
                let state = &mut states[partition];
                if values.is_valid(row) {
                    let v = values.value(row);
                    state.count += 1;
                    state.sum_int = state.sum_int.wrapping_add(v);
                    state.best_int = Some(match (kind, state.best_int) {
                        (RunningKind::Min, Some(best)) => best.min(v),
                        (RunningKind::Max, Some(best)) => best.max(v),
                        _ => v,
                    });
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
                if values.is_valid(row) {
                    let v = values.value(row);
                    state.count += 1;
                    state.sum_float += v;
                    state.best_float = Some(match (kind, state.best_float) {
                        (RunningKind::Min, Some(best)) if best.total_cmp(&v).is_le() => best,
                        (RunningKind::Max, Some(best)) if best.total_cmp(&v).is_ge() => best,
                        _ => v,
                    });
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
    if peers {
        column = share_among_peers(&column, partitions, times_ms)?;
    }
    Ok(column)
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
            true,
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
            false,
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
        let next = running(RunningKind::Count, false, &more, &[0], &[40], &mut states).unwrap();
        assert_eq!(next.as_primitive::<Int64Type>().value(0), 4);
    }
}
