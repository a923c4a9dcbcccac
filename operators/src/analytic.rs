//! Window functions over event time: `ROW_NUMBER`, `RANK`, `DENSE_RANK`,
//! `LAG`, `LEAD` and running aggregates (`SUM`, `COUNT`, `MIN`, `MAX`,
//! `AVG`, see [`crate::running`]) `OVER (PARTITION BY k ORDER BY ts)`,
//! where `ts` is the event-time column.
//!
//! A row's result depends on every row of its partition before it in
//! event time, so a row is emitted once the watermark makes it *final*:
//! when the watermark passes its event time, no row that is not late can
//! still come before it. Until then rows wait in the order they arrived
//! (each batch sorted by event time once, so a watermark takes a prefix of
//! each). At a watermark the final rows are gathered, ordered by
//! (partition, event time, arrival), numbered and emitted once: the output
//! is append-only. A row arriving behind the watermark is late: dropped
//! and counted. With `LEAD(x, k)` the last `k` final rows of a partition
//! are held back until `k` more rows of the partition are final (or the
//! input ends), since their `LEAD` is not known before.
//!
//! State per partition: the row count, the last event time and rank, and
//! for `LAG(x, k)` the last `k` values of `x`, kept as (chunk, row)
//! references into columnar chunks (one per watermark step, compacted when
//! mostly stale). Rows wait only as long as the watermark bound.

use std::collections::VecDeque;
use std::sync::Arc;

use arrow::array::{
    new_null_array, Array, ArrayRef, Int64Array, RecordBatch, UInt32Array, UInt64Array,
};
use arrow::compute::{interleave, interleave_record_batch, take_record_batch};
use datafusion::common::ScalarValue;
use datafusion::physical_expr::{PhysicalExpr, PhysicalSortExpr};
use laminar_runtime::{Error, ErrorCode, Result};

use crate::groups::{GroupTable, KeyEncoder};
use crate::running::{running, RunningFrame, RunningKind, RunningState};
use crate::stage::{apply_all, evaluate_all, Stage};
use crate::time::EventTimeUnit;
use crate::{BatchTime, Operator};

/// One function in the `SELECT` list.
#[derive(Debug, Clone)]
pub enum AnalyticFunction {
    /// `ROW_NUMBER()`: 1, 2, 3, ... per partition.
    RowNumber,
    /// `RANK()`: rows with equal event time share a rank; gaps follow.
    Rank,
    /// `DENSE_RANK()`: like `RANK` without gaps.
    DenseRank,
    /// `LEAD(argument, offset, default)`: the row is emitted once the
    /// `offset` rows after it are final too (or the input ended).
    Lead {
        /// The value to look ahead at.
        argument: Arc<dyn PhysicalExpr>,
        /// How many rows ahead (>= 1).
        offset: usize,
        /// Value when there is no such row (NULL if `None`).
        default: Option<ScalarValue>,
    },
    /// `LAG(argument, offset, default)`.
    Lag {
        /// The value to look back at.
        argument: Arc<dyn PhysicalExpr>,
        /// How many rows back (>= 1).
        offset: usize,
        /// Value when there is no such row (NULL if `None`).
        default: Option<ScalarValue>,
    },
    /// A running `SUM`/`COUNT`/`MIN`/`MAX`/`AVG` over the rows of its
    /// frame up to the current one (see [`crate::running`]).
    Running {
        /// Which aggregate.
        kind: RunningKind,
        /// Its argument, computed as `BIGINT` or `DOUBLE`
        /// ([`crate::running::argument_type`]).
        argument: Arc<dyn PhysicalExpr>,
        /// From the first row (peers sharing a value or not), or over the
        /// last rows.
        frame: RunningFrame,
    },
}

/// Everything needed to build an [`Analytic`] operator on a shard.
#[derive(Debug, Clone)]
pub struct AnalyticSpec {
    /// Filters/projections from the source batch to the window input.
    pub pre: Vec<Stage>,
    /// The event-time column of the window input.
    pub event_time: Arc<dyn PhysicalExpr>,
    /// Its unit.
    pub unit: EventTimeUnit,
    /// `PARTITION BY` expressions over the window input.
    pub partition_by: Vec<Arc<dyn PhysicalExpr>>,
    /// `ORDER BY` keys after the event time, which order rows of equal
    /// event time; empty: they keep their arrival order. Only functions
    /// that have no peers take them (`ROW_NUMBER`, `LAG`, `LEAD`, `ROWS`
    /// frames): the planner refuses the rest.
    pub tie_break: Vec<PhysicalSortExpr>,
    /// The functions, in the window node's output order.
    pub functions: Vec<AnalyticFunction>,
    /// The window input's columns followed by one column per function.
    pub window_schema: arrow::datatypes::SchemaRef,
    /// Stages above the window functions (WHERE on their results, SELECT).
    pub post: Vec<Stage>,
}

/// Rows waiting for the watermark: one batch, sorted by event time once.
struct Waiting {
    batch: RecordBatch,
    /// Row indices in event-time order (stable: arrival breaks ties).
    order: Vec<u32>,
    /// Event times in `order`, in the column's unit (ticks: rows a ms
    /// apart or less keep their order).
    times: Vec<i64>,
    /// Rows of `order` already emitted (a prefix).
    emitted: usize,
}

#[derive(Default)]
struct PartitionState {
    rows: u64,
    /// The last emitted row's event time, in ticks.
    last_time: Option<i64>,
    rank: u64,
    dense_rank: u64,
    /// Per LAG function: references to its last `offset` values, oldest
    /// first.
    history: Vec<VecDeque<(u32, u32)>>,
    /// Final rows not emitted yet because a `LEAD` needs rows after them:
    /// (held chunk, row, event time in ticks).
    held: VecDeque<(u32, u32, i64)>,
}

/// Chunks of `LAG` argument values, one chunk per watermark step.
struct History {
    chunks: Vec<ArrayRef>,
}

/// The operator. One instance per stream per shard.
pub struct Analytic {
    spec: AnalyticSpec,
    encoder: KeyEncoder,
    partitions: GroupTable,
    states: Vec<PartitionState>,
    waiting: VecDeque<Waiting>,
    /// Per LAG function.
    histories: Vec<History>,
    /// Chunks the held rows live in.
    held_chunks: Vec<RecordBatch>,
    /// The window input's schema.
    input_schema: arrow::datatypes::SchemaRef,
    /// Rows held back per partition: the largest `LEAD` offset.
    max_lead: usize,
    /// Per running aggregate, per partition.
    running: Vec<Vec<RunningState>>,
    /// The bounded frames' bytes as last summed, and the `state_bytes`
    /// calls since: summing visits every partition, too much for every
    /// batch.
    frames_bytes: std::cell::Cell<(u32, usize)>,
    watermark_ms: i64,
    late_rows: u64,
    times_ms: Vec<i64>,
}

/// `state_bytes` calls between two sums of the frames' bytes.
const FRAMES_BYTES_EVERY: u32 = 64;

impl std::fmt::Debug for Analytic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Analytic")
            .field("partitions", &self.states.len())
            .field("waiting_batches", &self.waiting.len())
            .finish()
    }
}

/// Chunks kept per LAG function before compaction is considered.
const MAX_CHUNKS: usize = 32;

impl Analytic {
    /// Builds the operator's empty state.
    pub fn new(spec: AnalyticSpec) -> Result<Self> {
        let fields = crate::groups::key_fields(&spec.partition_by, &spec.window_schema)?;
        let encoder = KeyEncoder::new(&fields)?;
        let lags = spec
            .functions
            .iter()
            .filter(|f| matches!(f, AnalyticFunction::Lag { .. }))
            .count();
        let running = spec
            .functions
            .iter()
            .filter(|f| matches!(f, AnalyticFunction::Running { .. }))
            .count();
        Ok(Self {
            partitions: encoder.table(),
            encoder,
            states: Vec::new(),
            waiting: VecDeque::new(),
            histories: (0..lags).map(|_| History { chunks: Vec::new() }).collect(),
            held_chunks: Vec::new(),
            input_schema: Arc::new(arrow::datatypes::Schema::new(
                spec.window_schema.fields()
                    [..spec.window_schema.fields().len() - spec.functions.len()]
                    .to_vec(),
            )),
            max_lead: spec
                .functions
                .iter()
                .map(|f| match f {
                    AnalyticFunction::Lead { offset, .. } => *offset,
                    _ => 0,
                })
                .max()
                .unwrap_or(0),
            running: vec![Vec::new(); running],
            frames_bytes: std::cell::Cell::new((0, 0)),
            watermark_ms: i64::MIN,
            late_rows: 0,
            times_ms: Vec::new(),
            spec,
        })
    }

    /// Emits every waiting row with event time before `watermark_ms`
    /// (keeping back, per partition, the last rows whose `LEAD` is not
    /// final yet).
    fn release(&mut self, watermark_ms: i64, out: &mut Vec<RecordBatch>) -> Result<()> {
        let at_end = watermark_ms == i64::MAX;
        // The newly final rows: a prefix of each waiting batch.
        let mut references = Vec::new();
        let mut final_times = Vec::new();
        let unit = &self.spec.unit;
        for (i, waiting) in self.waiting.iter_mut().enumerate() {
            let cut = waiting.emitted
                + waiting.times[waiting.emitted..]
                    .partition_point(|&t| unit.tick_to_ms(t) < watermark_ms);
            for position in waiting.emitted..cut {
                references.push((i, waiting.order[position] as usize));
                final_times.push(waiting.times[position]);
            }
            waiting.emitted = cut;
        }
        if references.is_empty() && !(at_end && self.held_rows() > 0) {
            return Ok(());
        }
        let fresh = if references.is_empty() {
            RecordBatch::new_empty(Arc::clone(&self.input_schema))
        } else {
            let batches: Vec<&RecordBatch> = self.waiting.iter().map(|w| &w.batch).collect();
            interleave_record_batch(&batches, &references)?
        };
        while self
            .waiting
            .front()
            .is_some_and(|w| w.emitted == w.order.len())
        {
            self.waiting.pop_front();
        }
        let fresh_partitions = self.partition_ids(&fresh)?;

        // Rows held back earlier for the partitions this step touches (all
        // of them at the end) come first: they are older.
        let mut touched: Vec<usize> = if at_end {
            (0..self.states.len()).collect()
        } else {
            fresh_partitions.clone()
        };
        touched.sort_unstable();
        touched.dedup();
        let mut held_refs = Vec::new();
        let mut times = Vec::new();
        let mut partitions = Vec::new();
        for &partition in &touched {
            for (chunk, row, time) in self.states[partition].held.drain(..) {
                held_refs.push((chunk as usize, row as usize));
                times.push(time);
                partitions.push(partition);
            }
        }
        let rows = if held_refs.is_empty() {
            fresh
        } else {
            let chunks: Vec<&RecordBatch> = self.held_chunks.iter().collect();
            let held = interleave_record_batch(&chunks, &held_refs)?;
            arrow::compute::concat_batches(&fresh.schema(), [&held, &fresh])?
        };
        times.extend(final_times);
        partitions.extend(fresh_partitions);

        // (partition, time, arrival) order: held rows, then fresh rows in
        // arrival order within each waiting batch, batches in arrival order.
        // Rows of equal time are all final at the same watermark, so the
        // tie-breaking keys order them within this one step.
        let n = rows.num_rows();
        let order = if self.spec.tie_break.is_empty() {
            let mut order: Vec<u32> = (0..n as u32).collect();
            order.sort_by_key(|&i| (partitions[i as usize], times[i as usize], i));
            order
        } else {
            self.tie_broken_order(&rows, &partitions, &times)?
        };
        let sorted = take_record_batch(&rows, &UInt32Array::from(order.clone()))?;
        let sorted_partitions: Vec<usize> = order.iter().map(|&i| partitions[i as usize]).collect();
        let sorted_times: Vec<i64> = order.iter().map(|&i| times[i as usize]).collect();

        // Per partition run, emit all but the last `hold` rows.
        let hold = if at_end { 0 } else { self.max_lead };
        let chunk = self.held_chunks.len() as u32;
        let mut emitted: Vec<u32> = Vec::with_capacity(n);
        let mut run_ends: Vec<usize> = Vec::with_capacity(n);
        let mut any_held = false;
        let mut start = 0;
        while start < n {
            let mut end = start + 1;
            while end < n && sorted_partitions[end] == sorted_partitions[start] {
                end += 1;
            }
            let emit_to = end - hold.min(end - start);
            for position in start..emit_to {
                emitted.push(position as u32);
                run_ends.push(end);
            }
            for position in emit_to..end {
                self.states[sorted_partitions[position]].held.push_back((
                    chunk,
                    position as u32,
                    sorted_times[position],
                ));
                any_held = true;
            }
            start = end;
        }
        if any_held {
            self.held_chunks.push(sorted.clone());
        }
        self.compact_held()?;
        if emitted.is_empty() {
            return Ok(());
        }
        let emitted_index = UInt32Array::from(emitted.clone());
        let emitted_rows = take_record_batch(&sorted, &emitted_index)?;
        let emitted_partitions: Vec<usize> = emitted
            .iter()
            .map(|&p| sorted_partitions[p as usize])
            .collect();
        let m = emitted_rows.num_rows();

        let mut numbers = Vec::with_capacity(m);
        let mut ranks = Vec::with_capacity(m);
        let mut dense_ranks = Vec::with_capacity(m);
        for &position in &emitted {
            let (partition, time) = (
                sorted_partitions[position as usize],
                sorted_times[position as usize],
            );
            let state = &mut self.states[partition];
            state.rows += 1;
            if state.last_time != Some(time) {
                state.rank = state.rows;
                state.dense_rank += 1;
                state.last_time = Some(time);
            }
            numbers.push(state.rows);
            ranks.push(state.rank);
            dense_ranks.push(state.dense_rank);
        }
        let mut columns = emitted_rows.columns().to_vec();
        let mut lag_index = 0;
        let mut running_index = 0;
        let emitted_times: Vec<i64> = emitted.iter().map(|&p| sorted_times[p as usize]).collect();
        let functions = self.spec.functions.clone();
        for function in &functions {
            let column: ArrayRef = match function {
                AnalyticFunction::RowNumber => Arc::new(UInt64Array::from(numbers.clone())),
                AnalyticFunction::Rank => Arc::new(UInt64Array::from(ranks.clone())),
                AnalyticFunction::DenseRank => Arc::new(UInt64Array::from(dense_ranks.clone())),
                AnalyticFunction::Lag {
                    argument,
                    offset,
                    default,
                } => {
                    let values = argument.evaluate(&emitted_rows)?.into_array(m)?;
                    let column = self.lag(
                        lag_index,
                        &values,
                        *offset,
                        default.as_ref(),
                        &emitted_partitions,
                    )?;
                    lag_index += 1;
                    column
                }
                AnalyticFunction::Lead {
                    argument,
                    offset,
                    default,
                } => {
                    // The row `offset` later in the same partition run, if
                    // the run has it (it does, except at the end).
                    let values = argument.evaluate(&sorted)?.into_array(n)?;
                    let missing = missing_value(values.data_type(), default.as_ref())?;
                    let picks: Vec<(usize, usize)> = emitted
                        .iter()
                        .zip(&run_ends)
                        .map(|(&position, &end)| {
                            let target = position as usize + offset;
                            if target < end {
                                (0, target)
                            } else {
                                (1, 0)
                            }
                        })
                        .collect();
                    interleave(&[values.as_ref(), missing.as_ref()], &picks)?
                }
                AnalyticFunction::Running {
                    kind,
                    argument,
                    frame,
                } => {
                    let values = argument.evaluate(&emitted_rows)?.into_array(m)?;
                    let states = &mut self.running[running_index];
                    running_index += 1;
                    running(
                        *kind,
                        *frame,
                        &values,
                        &emitted_partitions,
                        &emitted_times,
                        states,
                    )?
                }
            };
            columns.push(column);
        }
        let windowed = RecordBatch::try_new(Arc::clone(&self.spec.window_schema), columns)
            .map_err(|e| {
                Error::new(
                    ErrorCode::Execution,
                    format!("window functions produced a batch that does not fit: {e}"),
                )
            })?;
        let result = apply_all(&self.spec.post, &windowed)?;
        if result.num_rows() > 0 {
            out.push(result);
        }
        Ok(())
    }

    /// Partition ids of a batch of window-input rows.
    /// The order of `rows` by (partition, time, tie-breaking keys,
    /// arrival). Rows of equal partition and time are few: the rows are
    /// sorted without the keys, then each run of equal (partition, time)
    /// by the keys.
    fn tie_broken_order(
        &self,
        rows: &RecordBatch,
        partitions: &[usize],
        times: &[i64],
    ) -> Result<Vec<u32>> {
        use arrow::compute::{LexicographicalComparator, SortColumn};
        let n = rows.num_rows();
        let mut order: Vec<u32> = (0..n as u32).collect();
        order.sort_by_key(|&i| (partitions[i as usize], times[i as usize], i));
        let key = |i: u32| (partitions[i as usize], times[i as usize]);
        let mut keys: Option<LexicographicalComparator> = None;
        let mut start = 0;
        while start < n {
            let mut end = start + 1;
            while end < n && key(order[end]) == key(order[start]) {
                end += 1;
            }
            if end - start > 1 {
                let keys = match &mut keys {
                    Some(keys) => keys,
                    None => {
                        let columns = self
                            .spec
                            .tie_break
                            .iter()
                            .map(|k| {
                                Ok(SortColumn {
                                    values: k.expr.evaluate(rows)?.into_array(n)?,
                                    options: Some(k.options),
                                })
                            })
                            .collect::<Result<Vec<_>>>()?;
                        keys.insert(LexicographicalComparator::try_new(&columns)?)
                    }
                };
                order[start..end]
                    .sort_by(|&a, &b| keys.compare(a as usize, b as usize).then(a.cmp(&b)));
            }
            start = end;
        }
        Ok(order)
    }

    fn partition_ids(&mut self, rows: &RecordBatch) -> Result<Vec<usize>> {
        let n = rows.num_rows();
        let partition_arrays = evaluate_all(&self.spec.partition_by, rows)?;
        let keys = self.encoder.encode(&partition_arrays)?;
        let partitions: Vec<usize> = (0..n)
            .map(|row| self.encoder.group_id(&mut self.partitions, &keys, row))
            .collect();
        drop(keys);
        for states in &mut self.running {
            states.resize_with(self.partitions.len(), RunningState::default);
        }
        if self.states.len() < self.partitions.len() {
            let lags = self.histories.len();
            self.states
                .resize_with(self.partitions.len(), || PartitionState {
                    history: vec![VecDeque::new(); lags],
                    ..Default::default()
                });
        }
        Ok(partitions)
    }

    fn held_rows(&self) -> usize {
        self.states.iter().map(|s| s.held.len()).sum()
    }

    /// Rewrites the held rows into one chunk when most stored rows are
    /// stale.
    fn compact_held(&mut self) -> Result<()> {
        let stored: usize = self.held_chunks.iter().map(|c| c.num_rows()).sum();
        let live = self.held_rows();
        if live == 0 {
            self.held_chunks.clear();
            return Ok(());
        }
        if self.held_chunks.len() <= MAX_CHUNKS && stored <= 2 * live + 1024 {
            return Ok(());
        }
        let mut picks = Vec::with_capacity(live);
        for state in &mut self.states {
            for held in state.held.iter_mut() {
                picks.push((held.0 as usize, held.1 as usize));
                *held = (0, picks.len() as u32 - 1, held.2);
            }
        }
        let chunks: Vec<&RecordBatch> = self.held_chunks.iter().collect();
        let compacted = interleave_record_batch(&chunks, &picks)?;
        self.held_chunks = vec![compacted];
        Ok(())
    }

    /// `LAG` of emitted rows (in emission order, `partitions[i]` being row
    /// `i`'s partition), continuing each partition's history; updates the
    /// history.
    fn lag(
        &mut self,
        lag_index: usize,
        values: &ArrayRef,
        offset: usize,
        default: Option<&ScalarValue>,
        partitions: &[usize],
    ) -> Result<ArrayRef> {
        let history = &mut self.histories[lag_index];
        let chunk = history.chunks.len() as u32;
        let missing = missing_value(values.data_type(), default)?;
        // Sources for interleave: the history chunks, this step's values,
        // then the one-row "no such row" value.
        let mut sources: Vec<&dyn Array> = history.chunks.iter().map(|c| c.as_ref()).collect();
        sources.push(values.as_ref());
        sources.push(missing.as_ref());
        let missing_source = sources.len() - 1;
        let mut picks = Vec::with_capacity(partitions.len());
        for (position, &partition) in partitions.iter().enumerate() {
            let state = &mut self.states[partition];
            let recent = &mut state.history[lag_index];
            // `recent` holds the partition's last `offset` values before
            // this row, oldest first.
            picks.push(if recent.len() == offset {
                let (c, r) = recent[0];
                (c as usize, r as usize)
            } else {
                (missing_source, 0)
            });
            recent.push_back((chunk, position as u32));
            if recent.len() > offset {
                recent.pop_front();
            }
        }
        let column = interleave(&sources, &picks)?;
        history.chunks.push(Arc::clone(values));
        self.compact(lag_index)?;
        Ok(column)
    }

    /// Rewrites one LAG function's live history into a single chunk when
    /// most stored values are stale.
    fn compact(&mut self, lag_index: usize) -> Result<()> {
        let history = &mut self.histories[lag_index];
        let stored: usize = history.chunks.iter().map(|c| c.len()).sum();
        let live: usize = self.states.iter().map(|s| s.history[lag_index].len()).sum();
        if history.chunks.len() <= MAX_CHUNKS && stored <= 2 * live + 1024 {
            return Ok(());
        }
        let mut picks = Vec::with_capacity(live);
        for state in &mut self.states {
            for reference in state.history[lag_index].iter_mut() {
                picks.push((reference.0 as usize, reference.1 as usize));
                *reference = (0, picks.len() as u32 - 1);
            }
        }
        let sources: Vec<&dyn Array> = history.chunks.iter().map(|c| c.as_ref()).collect();
        let compacted = interleave(&sources, &picks)?;
        history.chunks = vec![compacted];
        Ok(())
    }
}

fn int64s(batch: &RecordBatch, name: &str) -> Result<Int64Array> {
    crate::snapshot::column(batch, name)
}

fn uint32s(batch: &RecordBatch, name: &str) -> Result<UInt32Array> {
    crate::snapshot::column(batch, name)
}

fn uint64s(batch: &RecordBatch, name: &str) -> Result<UInt64Array> {
    crate::snapshot::column(batch, name)
}

fn float64s(batch: &RecordBatch, name: &str) -> Result<arrow::array::Float64Array> {
    crate::snapshot::column(batch, name)
}

/// Checkpoint state of [`Analytic`] (see its `snapshot`).
impl Analytic {
    fn state_mut(&mut self, partition: u32) -> Result<&mut PartitionState> {
        self.states
            .get_mut(partition as usize)
            .ok_or_else(|| crate::snapshot::corrupt("a partition id"))
    }

    fn partitions_batch(&self) -> Result<RecordBatch> {
        let ids: Vec<u32> = (0..self.states.len() as u32).collect();
        let mut names = Vec::new();
        let mut columns: Vec<ArrayRef> = Vec::new();
        crate::snapshot::push_keys(
            &self.encoder,
            &self.partitions,
            &ids,
            &mut names,
            &mut columns,
        )?;
        let states = &self.states;
        names.extend(["rows", "last_time", "rank", "dense_rank"].map(String::from));
        columns.push(Arc::new(UInt64Array::from_iter_values(
            states.iter().map(|s| s.rows),
        )));
        columns.push(Arc::new(Int64Array::from_iter(
            states.iter().map(|s| s.last_time),
        )));
        columns.push(Arc::new(UInt64Array::from_iter_values(
            states.iter().map(|s| s.rank),
        )));
        columns.push(Arc::new(UInt64Array::from_iter_values(
            states.iter().map(|s| s.dense_rank),
        )));
        for (r, running) in self.running.iter().enumerate() {
            let default = RunningState::default();
            let parts: Vec<&RunningState> = (0..states.len())
                .map(|p| running.get(p).unwrap_or(&default))
                .collect();
            names.extend(
                ["count", "sum_int", "sum_float", "best_int", "best_float"]
                    .map(|n| format!("running_{r}_{n}")),
            );
            columns.push(Arc::new(Int64Array::from_iter_values(
                parts.iter().map(|p| p.count),
            )));
            columns.push(Arc::new(Int64Array::from_iter_values(
                parts.iter().map(|p| p.sum_int),
            )));
            columns.push(Arc::new(arrow::array::Float64Array::from_iter_values(
                parts.iter().map(|p| p.sum_float),
            )));
            columns.push(Arc::new(Int64Array::from_iter(
                parts.iter().map(|p| p.best_int),
            )));
            columns.push(Arc::new(arrow::array::Float64Array::from_iter(
                parts.iter().map(|p| p.best_float),
            )));
        }
        crate::snapshot_batch(names, columns)
    }

    fn restore_partitions(&mut self, batch: &RecordBatch) -> Result<()> {
        let keys = crate::snapshot::columns_with_prefix(batch, "key_");
        let encoded = self.encoder.encode(&keys)?;
        let n = batch.num_rows();
        for row in 0..n {
            if self.encoder.group_id(&mut self.partitions, &encoded, row) != row {
                return Err(crate::snapshot::corrupt("duplicate partitions"));
            }
        }
        drop(encoded);
        let (rows, last, rank, dense) = (
            uint64s(batch, "rows")?,
            self.ticks_column(batch, "last_time")?,
            uint64s(batch, "rank")?,
            uint64s(batch, "dense_rank")?,
        );
        let lags = self.histories.len();
        self.states = (0..n)
            .map(|p| PartitionState {
                rows: rows.value(p),
                last_time: last.is_valid(p).then(|| last.value(p)),
                rank: rank.value(p),
                dense_rank: dense.value(p),
                history: vec![VecDeque::new(); lags],
                held: VecDeque::new(),
            })
            .collect();
        for r in 0..self.running.len() {
            let name = |n: &str| format!("running_{r}_{n}");
            let count = int64s(batch, &name("count"))?;
            let sum_int = int64s(batch, &name("sum_int"))?;
            let sum_float = float64s(batch, &name("sum_float"))?;
            let best_int = int64s(batch, &name("best_int"))?;
            let best_float = float64s(batch, &name("best_float"))?;
            self.running[r] = (0..n)
                .map(|p| RunningState {
                    count: count.value(p),
                    sum_int: sum_int.value(p),
                    sum_float: sum_float.value(p),
                    best_int: best_int.is_valid(p).then(|| best_int.value(p)),
                    best_float: best_float.is_valid(p).then(|| best_float.value(p)),
                    ..RunningState::default()
                })
                .collect();
        }
        Ok(())
    }

    /// Window-input rows as a snapshot batch with extra columns.
    fn rows_with(&self, rows: RecordBatch, extra: Vec<(&str, ArrayRef)>) -> Result<RecordBatch> {
        let mut names: Vec<String> = (0..rows.num_columns()).map(|i| format!("c{i}")).collect();
        let mut columns = rows.columns().to_vec();
        for (name, column) in extra {
            names.push(name.to_string());
            columns.push(column);
        }
        crate::snapshot_batch(names, columns)
    }

    /// The first columns of a snapshot batch, as window-input rows.
    fn input_rows(&self, batch: &RecordBatch) -> Result<RecordBatch> {
        let n = self.input_schema.fields().len();
        if batch.num_columns() < n {
            return Err(crate::snapshot::corrupt("window input rows"));
        }
        Ok(RecordBatch::try_new(
            Arc::clone(&self.input_schema),
            batch.columns()[..n].to_vec(),
        )?)
    }

    fn waiting_batch(&self) -> Result<RecordBatch> {
        let mut references = Vec::new();
        let mut times = Vec::new();
        let mut waits = Vec::new();
        for (i, waiting) in self.waiting.iter().enumerate() {
            for position in waiting.emitted..waiting.order.len() {
                references.push((i, waiting.order[position] as usize));
                times.push(waiting.times[position]);
                waits.push(i as u32);
            }
        }
        let rows = if references.is_empty() {
            RecordBatch::new_empty(Arc::clone(&self.input_schema))
        } else {
            let batches: Vec<&RecordBatch> = self.waiting.iter().map(|w| &w.batch).collect();
            interleave_record_batch(&batches, &references)?
        };
        self.rows_with(
            rows,
            vec![
                ("__time", Arc::new(Int64Array::from(times))),
                ("__wait", Arc::new(UInt32Array::from(waits))),
            ],
        )
    }

    fn restore_waiting(&mut self, batch: &RecordBatch) -> Result<()> {
        let rows = self.input_rows(batch)?;
        let times = self.ticks_column(batch, "__time")?;
        let waits = uint32s(batch, "__wait")?;
        let mut start = 0;
        while start < rows.num_rows() {
            let mut end = start + 1;
            while end < rows.num_rows() && waits.value(end) == waits.value(start) {
                end += 1;
            }
            // Each waiting batch's rows were saved in event-time order.
            self.waiting.push_back(Waiting {
                batch: rows.slice(start, end - start),
                order: (0..(end - start) as u32).collect(),
                times: times.values()[start..end].to_vec(),
                emitted: 0,
            });
            start = end;
        }
        Ok(())
    }

    fn held_batch(&self) -> Result<RecordBatch> {
        let mut references = Vec::new();
        let mut partitions = Vec::new();
        let mut times = Vec::new();
        for (partition, state) in self.states.iter().enumerate() {
            for &(chunk, row, time) in &state.held {
                references.push((chunk as usize, row as usize));
                partitions.push(partition as u32);
                times.push(time);
            }
        }
        let rows = if references.is_empty() {
            RecordBatch::new_empty(Arc::clone(&self.input_schema))
        } else {
            let chunks: Vec<&RecordBatch> = self.held_chunks.iter().collect();
            interleave_record_batch(&chunks, &references)?
        };
        self.rows_with(
            rows,
            vec![
                ("__partition", Arc::new(UInt32Array::from(partitions))),
                ("__time", Arc::new(Int64Array::from(times))),
            ],
        )
    }

    fn restore_held(&mut self, batch: &RecordBatch) -> Result<()> {
        let rows = self.input_rows(batch)?;
        let partitions = uint32s(batch, "__partition")?;
        let times = self.ticks_column(batch, "__time")?;
        for i in 0..rows.num_rows() {
            let time = times.value(i);
            self.state_mut(partitions.value(i))?
                .held
                .push_back((0, i as u32, time));
        }
        self.held_chunks = if rows.num_rows() > 0 {
            vec![rows]
        } else {
            Vec::new()
        };
        Ok(())
    }

    fn history_batch(&self, lag: usize) -> Result<RecordBatch> {
        let mut picks = Vec::new();
        let mut partitions = Vec::new();
        for (partition, state) in self.states.iter().enumerate() {
            for &(chunk, row) in &state.history[lag] {
                picks.push((chunk as usize, row as usize));
                partitions.push(partition as u32);
            }
        }
        let chunks = &self.histories[lag].chunks;
        let values = if picks.is_empty() {
            let data_type = chunks
                .first()
                .map(|c| c.data_type().clone())
                .unwrap_or(arrow::datatypes::DataType::Null);
            arrow::array::new_empty_array(&data_type)
        } else {
            let sources: Vec<&dyn Array> = chunks.iter().map(|c| c.as_ref()).collect();
            interleave(&sources, &picks)?
        };
        crate::snapshot_batch(
            ["partition".to_string(), "value".to_string()],
            vec![Arc::new(UInt32Array::from(partitions)), values],
        )
    }
}

impl Analytic {
    /// A snapshot column of event times in ticks, `name`; one written
    /// before times were kept in ticks (`<name>_ms`, in epoch ms) is
    /// converted, losing only what it never held.
    fn ticks_column(&self, batch: &RecordBatch, name: &str) -> Result<Int64Array> {
        if batch.column_by_name(name).is_some() {
            return int64s(batch, name);
        }
        let ms = int64s(batch, &format!("{name}_ms"))?;
        Ok(ms.unary(|m| self.spec.unit.from_ms(m)))
    }
}

/// Running aggregates over bounded frames, whose frames are state.
impl Analytic {
    /// Indices (among the running aggregates) of those with a bounded
    /// frame.
    fn bounded_running(&self) -> Vec<usize> {
        self.spec
            .functions
            .iter()
            .filter_map(|f| match f {
                AnalyticFunction::Running { frame, .. } => Some(*frame),
                _ => None,
            })
            .enumerate()
            .filter(|(_, frame)| !matches!(frame, RunningFrame::Unbounded { .. }))
            .map(|(r, _)| r)
            .collect()
    }

    /// A running aggregate's frames: (`partition`, `time`, `value`), each
    /// partition's oldest first; `value` is of the argument's type.
    fn frame_batch(&self, r: usize) -> Result<RecordBatch> {
        let states = &self.running[r];
        let partitions: Vec<u32> = states
            .iter()
            .enumerate()
            .flat_map(|(p, s)| {
                std::iter::repeat_n(p as u32, s.frame_int.len() + s.frame_float.len())
            })
            .collect();
        let times = states.iter().flat_map(|s| s.frame_times.iter().copied());
        let ints = states.iter().flat_map(|s| s.frame_int.iter().copied());
        let floats = states.iter().flat_map(|s| s.frame_float.iter().copied());
        let values: ArrayRef = if self.frame_is_float(r)? {
            Arc::new(arrow::array::Float64Array::from_iter(floats))
        } else {
            Arc::new(Int64Array::from_iter(ints))
        };
        crate::snapshot_batch(
            ["partition", "time", "value"].map(String::from),
            vec![
                Arc::new(UInt32Array::from(partitions)),
                Arc::new(Int64Array::from_iter_values(times)),
                values,
            ],
        )
    }

    fn restore_frame(&mut self, r: usize, batch: &RecordBatch) -> Result<()> {
        let partitions = uint32s(batch, "partition")?;
        let times = int64s(batch, "time")?;
        let float = self.frame_is_float(r)?;
        let (ints, floats) = if float {
            (None, Some(float64s(batch, "value")?))
        } else {
            (Some(int64s(batch, "value")?), None)
        };
        for (i, &partition) in partitions.values().iter().enumerate() {
            let state = self.running[r]
                .get_mut(partition as usize)
                .ok_or_else(|| crate::snapshot::corrupt("a frame's partition"))?;
            state.frame_times.push_back(times.value(i));
            match (&ints, &floats) {
                (Some(v), _) => state.frame_int.push_back(v.is_valid(i).then(|| v.value(i))),
                (_, Some(v)) => state
                    .frame_float
                    .push_back(v.is_valid(i).then(|| v.value(i))),
                _ => unreachable!("one of the two"),
            }
        }
        Ok(())
    }

    /// Whether running aggregate `r` takes `DOUBLE` arguments (else
    /// `BIGINT`, see [`crate::running::argument_type`]).
    fn frame_is_float(&self, r: usize) -> Result<bool> {
        let argument = self
            .spec
            .functions
            .iter()
            .filter_map(|f| match f {
                AnalyticFunction::Running { argument, .. } => Some(argument),
                _ => None,
            })
            .nth(r)
            .ok_or_else(|| crate::snapshot::corrupt("a running aggregate"))?;
        Ok(argument.data_type(&self.input_schema)? == arrow::datatypes::DataType::Float64)
    }
}

/// The one-row value standing for "no such row": the default, or NULL.
fn missing_value(
    data_type: &arrow::datatypes::DataType,
    default: Option<&ScalarValue>,
) -> Result<ArrayRef> {
    Ok(match default {
        Some(value) => value.cast_to(data_type)?.to_array_of_size(1)?,
        None => new_null_array(data_type, 1),
    })
}

impl Operator for Analytic {
    fn on_batch(
        &mut self,
        batch: &RecordBatch,
        time: BatchTime<'_>,
        _out: &mut Vec<RecordBatch>,
    ) -> Result<()> {
        let input = apply_all(&self.spec.pre, batch)?;
        let n = input.num_rows();
        if n == 0 {
            return Ok(());
        }
        let times = self.spec.event_time.evaluate(&input)?.into_array(n)?;
        self.spec
            .unit
            .array_to_ms(times.as_ref(), &mut self.times_ms)?;
        // Rows before the watermark come after rows already emitted.
        let watermark = time.watermark_ms.max(self.watermark_ms);
        let on_time: Vec<u32> = (0..n as u32)
            .filter(|&i| {
                let row_watermark = time
                    .row_watermarks_ms
                    .map_or(watermark, |w| w[i as usize].max(watermark));
                self.times_ms[i as usize] >= row_watermark
            })
            .collect();
        self.late_rows += (n - on_time.len()) as u64;
        if on_time.is_empty() {
            return Ok(());
        }
        // Ordered by the column's own values: rows within one ms keep
        // their order, as the batch engine sorts them.
        let ticks = self.spec.unit.ticks(times.as_ref())?;
        let mut order = on_time;
        order.sort_by_key(|&i| ticks[i as usize]);
        let times = order.iter().map(|&i| ticks[i as usize]).collect();
        self.waiting.push_back(Waiting {
            batch: input,
            order,
            times,
            emitted: 0,
        });
        Ok(())
    }

    fn on_watermark(&mut self, watermark_ms: i64, out: &mut Vec<RecordBatch>) -> Result<()> {
        self.watermark_ms = self.watermark_ms.max(watermark_ms);
        self.release(watermark_ms, out)
    }

    fn late_rows(&self) -> u64 {
        self.late_rows
    }

    fn checkpoints(&self) -> bool {
        true
    }

    /// Batches, by position: the watermark; the partitions (key, row
    /// count, last time, ranks, running aggregates' state); the rows still
    /// waiting (window input columns, `__time_ms`, `__wait`: which waiting
    /// batch); the rows held for `LEAD` (`__partition`, `__time_ms`); then
    /// per `LAG` function its history (`partition`, `value`), each
    /// partition's oldest first; then per running aggregate over a bounded
    /// frame the arguments in its frames (`partition`, `int`, `float`),
    /// oldest first. Partitions are restored in id order, so the ids
    /// stored in the other batches stay valid.
    fn snapshot(&mut self) -> Result<Vec<RecordBatch>> {
        let mut batches = vec![crate::snapshot_batch(
            ["watermark_ms".to_string()],
            vec![Arc::new(Int64Array::from(vec![self.watermark_ms]))],
        )?];
        batches.push(self.partitions_batch()?);
        batches.push(self.waiting_batch()?);
        batches.push(self.held_batch()?);
        for lag in 0..self.histories.len() {
            batches.push(self.history_batch(lag)?);
        }
        for r in self.bounded_running() {
            batches.push(self.frame_batch(r)?);
        }
        Ok(batches)
    }

    fn restore(&mut self, state: &[RecordBatch]) -> Result<()> {
        if state.is_empty() {
            return Ok(());
        }
        let lags = self.histories.len();
        let [meta, partitions, waiting, held, rest @ ..] = state else {
            return Err(crate::snapshot::corrupt("window function state"));
        };
        let bounded = self.bounded_running();
        if rest.len() != lags + bounded.len() {
            return Err(crate::snapshot::corrupt("LAG histories and frames"));
        }
        let (histories, frames) = rest.split_at(lags);
        self.watermark_ms = int64s(meta, "watermark_ms")?.value(0);
        self.restore_partitions(partitions)?;
        self.restore_waiting(waiting)?;
        self.restore_held(held)?;
        for (lag, batch) in histories.iter().enumerate() {
            let ids = uint32s(batch, "partition")?;
            let values = batch
                .column_by_name("value")
                .cloned()
                .ok_or_else(|| crate::snapshot::corrupt("LAG values"))?;
            for (i, &partition) in ids.values().iter().enumerate() {
                self.state_mut(partition)?.history[lag].push_back((0, i as u32));
            }
            // An empty history has no type of its own to keep.
            self.histories[lag].chunks = if values.is_empty() {
                Vec::new()
            } else {
                vec![values]
            };
        }
        for (r, batch) in bounded.into_iter().zip(frames) {
            self.restore_frame(r, batch)?;
        }
        Ok(())
    }

    fn state_bytes(&self) -> usize {
        let waiting: usize = self
            .waiting
            .iter()
            .map(|w| w.batch.get_array_memory_size() + w.order.capacity() * 12)
            .sum();
        let history: usize = self
            .histories
            .iter()
            .flat_map(|h| &h.chunks)
            .map(|c| c.get_array_memory_size())
            .sum();
        let held: usize = self
            .held_chunks
            .iter()
            .map(|c| c.get_array_memory_size())
            .sum();
        let frames = match self.frames_bytes.get() {
            (calls, bytes) if calls > 0 => {
                self.frames_bytes
                    .set(((calls + 1) % FRAMES_BYTES_EVERY, bytes));
                bytes
            }
            _ => {
                let bytes: usize = self
                    .running
                    .iter()
                    .flatten()
                    .map(|s| {
                        (s.frame_times.capacity()
                            + s.frame_int.capacity()
                            + s.frame_float.capacity())
                            * 16
                    })
                    .sum();
                self.frames_bytes.set((1, bytes));
                bytes
            }
        };
        waiting
            + history
            + held
            + frames
            + self.states.len() * std::mem::size_of::<PartitionState>()
            + self.partitions.bytes()
    }
}
