//! Keyed aggregation over tumbling and sliding windows, emitted when each
//! window closes (`EMIT ON WINDOW CLOSE`, the default).
//!
//! State per open window: a group table (key -> dense group id) and one
//! DataFusion `GroupsAccumulator` per aggregate.
//!
//! Per batch: drop late rows, run the pre-aggregate stages, compute each
//! row's event time, encode the keys once, then for each window the batch
//! touches (usually one when tumbling, `size / slide` when sliding) resolve
//! group ids and call every accumulator once over the whole batch with a
//! row mask. No per-row allocation except for a key's first appearance in
//! a window.
//!
//! A window `[start, end)` closes when the watermark reaches `end`; its
//! groups are emitted as one batch and its state is freed, so state is
//! bounded by the number of open windows times keys.
//!
//! With a fused plan ([`crate::fused`]) and its kernel compiled, a batch
//! skips the stages: the `WHERE` gives a selection over the source batch,
//! group ids are resolved for the selected rows only, and one compiled
//! loop evaluates every argument and updates every accumulator. Until the
//! kernel is ready the same state is updated through the stages.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{Array, BooleanArray, Int64Array, RecordBatch};
use datafusion::logical_expr::{EmitTo, GroupsAccumulator};
use hashbrown::HashSet;
use laminar_runtime::{Error, ErrorCode, Result};

use crate::aggregate::{
    assign_windows, combine_masks, AggregatePhase, AggregateSpec, LateRows, WindowBinding,
};
use crate::fused::{selection_of, FusedAccumulator, FusedAggregate, GroupsOf};
use crate::groups::{BatchKeys, GroupTable, KeyEncoder};
use crate::snapshot;
use crate::stage::{apply_all, apply_all_carrying};
use crate::time::WindowSpec;
use crate::{BatchTime, Operator};

/// One open window.
struct WindowState {
    groups: GroupTable,
    accumulators: Accumulators,
}

/// A window's aggregate state: DataFusion's accumulators, or the plain
/// vectors a fused kernel writes (which are accumulators too).
enum Accumulators {
    DataFusion(Vec<Box<dyn GroupsAccumulator>>),
    Fused(Vec<FusedAccumulator>),
}

impl Accumulators {
    fn all(&mut self) -> Vec<&mut dyn GroupsAccumulator> {
        match self {
            Accumulators::DataFusion(a) => a.iter_mut().map(|a| a.as_mut() as _).collect(),
            Accumulators::Fused(a) => a.iter_mut().map(|a| a as _).collect(),
        }
    }

    fn bytes(&self) -> usize {
        match self {
            Accumulators::DataFusion(a) => a.iter().map(|a| a.size()).sum(),
            Accumulators::Fused(a) => a.iter().map(|a| a.size()).sum(),
        }
    }
}

/// The operator. One instance per stream per shard.
pub struct WindowAggregate {
    spec: AggregateSpec,
    binding: WindowBinding,
    window: WindowSpec,
    encoder: KeyEncoder,
    windows: BTreeMap<i64, WindowState>,
    late: LateRows,
    // Scratch buffers reused across batches.
    times_ms: Vec<i64>,
    starts: HashSet<i64>,
    group_ids: Vec<usize>,
    /// For a final phase: how many state columns each aggregate has.
    state_widths: Arc<[usize]>,
}

impl std::fmt::Debug for WindowAggregate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WindowAggregate")
            .field("window", &self.window)
            .field("open_windows", &self.windows.len())
            .field("late_rows", &self.late.count)
            .finish()
    }
}

impl WindowAggregate {
    /// Builds the operator's empty state.
    pub fn new(spec: AggregateSpec) -> Result<Self> {
        let binding = spec.window.clone().ok_or_else(|| {
            Error::new(
                ErrorCode::Planning,
                "internal: EMIT ON WINDOW CLOSE needs a window",
            )
        })?;
        let window = binding.kind.fixed("this window aggregate")?;
        let encoder = KeyEncoder::new(&spec.key_fields())?;
        let state_widths = match spec.phase {
            AggregatePhase::Final => spec
                .aggregates
                .iter()
                .map(|a| Ok(a.state_fields()?.len()))
                .collect::<Result<Arc<[usize]>>>()?,
            _ => Arc::new([]),
        };
        let late = LateRows::new(spec.late_side_output);
        Ok(Self {
            state_widths,
            spec,
            binding,
            window,
            encoder,
            windows: BTreeMap::new(),
            late,
            times_ms: Vec::new(),
            starts: HashSet::new(),
            group_ids: Vec::new(),
        })
    }

    /// Number of windows holding state.
    pub fn open_windows(&self) -> usize {
        self.windows.len()
    }

    fn emit(&mut self, start_ms: i64, mut state: WindowState) -> Result<RecordBatch> {
        let ids = state.groups.all_ids();
        let key_columns = self.encoder.key_columns(&state.groups, &ids)?;
        let window_column = self.binding.unit.constant_array(start_ms, ids.len());
        if let AggregatePhase::Partial(schema) = &self.spec.phase {
            let mut columns = Vec::with_capacity(schema.fields().len());
            columns.push(window_column);
            columns.extend(key_columns);
            for accumulator in state.accumulators.all() {
                columns.extend(accumulator.state(EmitTo::All)?);
            }
            return RecordBatch::try_new(Arc::clone(schema), columns).map_err(|e| {
                Error::new(
                    ErrorCode::Execution,
                    format!("partial aggregate state does not fit its schema: {e}"),
                )
            });
        }
        let values = state
            .accumulators
            .all()
            .into_iter()
            .map(|a| a.evaluate(EmitTo::All))
            .collect::<datafusion::common::Result<Vec<_>>>()?;
        let aggregated = self
            .spec
            .assemble(Some(window_column), key_columns, values)?;
        apply_all(&self.spec.post, &aggregated)
    }
}

impl Operator for WindowAggregate {
    fn on_batch(
        &mut self,
        batch: &RecordBatch,
        time: BatchTime<'_>,
        _out: &mut Vec<RecordBatch>,
    ) -> Result<()> {
        // Output only ever leaves when a window closes (on_watermark).
        if let AggregatePhase::Final = self.spec.phase {
            return self.merge_partials(batch);
        }
        if let Some(fused) = self.spec.fused.as_ref().filter(|f| f.update.is_ready()) {
            return self.on_batch_fused(&Arc::clone(fused), batch, time);
        }
        let Some((on_time, row_watermarks)) = self.on_time_rows(batch, time)? else {
            return Ok(());
        };
        let (input, row_watermarks) = apply_all_carrying(&self.spec.pre, &on_time, row_watermarks)?;
        let rows = input.num_rows();
        if rows == 0 {
            return Ok(());
        }
        let times = self.binding.event_time.evaluate(&input)?.into_array(rows)?;
        let assigned =
            self.windows_of(times.as_ref(), row_watermarks.as_ref(), time.watermark_ms)?;
        let inputs = self.spec.inputs(&input)?;
        let keys = self.encoder.encode(&inputs.key_arrays)?;
        let mut group_ids = std::mem::take(&mut self.group_ids);
        for (start, window_mask) in assigned {
            // Rows outside the window are masked out below.
            let state =
                self.window_groups(start, &keys, window_mask.as_ref(), rows, &mut group_ids)?;
            let groups = state.groups.len();
            for (j, accumulator) in state.accumulators.all().into_iter().enumerate() {
                let mask = combine_masks(window_mask.as_ref(), inputs.filters[j].as_ref())?;
                accumulator.update_batch(
                    &inputs.arguments[j],
                    &group_ids,
                    mask.as_ref(),
                    groups,
                )?;
            }
        }
        self.group_ids = group_ids;
        Ok(())
    }

    fn on_watermark(&mut self, watermark_ms: i64, out: &mut Vec<RecordBatch>) -> Result<()> {
        while let Some(entry) = self.windows.first_entry() {
            if self.window.end_of(*entry.key()) > watermark_ms {
                break;
            }
            let (start, state) = entry.remove_entry();
            let batch = self.emit(start, state)?;
            if batch.num_rows() > 0 {
                out.push(batch);
            }
        }
        Ok(())
    }

    /// Windows still to close end after the watermark, so they start
    /// after it minus the window size: held back by that much, a window's
    /// start (or end) column is a valid event time downstream.
    ///
    /// A partial phase's output is read by its final phase alone, which
    /// closes a window when this watermark reaches the window's end: every
    /// shard has sent that window's states by then.
    fn output_watermark(&self, input_watermark_ms: i64) -> i64 {
        if input_watermark_ms == i64::MAX || matches!(self.spec.phase, AggregatePhase::Partial(_)) {
            return input_watermark_ms;
        }
        input_watermark_ms.saturating_sub(self.window.size_ms)
    }

    fn late_rows(&self) -> u64 {
        self.late.count
    }

    fn state_bytes(&self) -> usize {
        self.windows
            .values()
            .map(|w| w.groups.bytes() + w.accumulators.bytes())
            .sum()
    }

    fn drain_late(&mut self, out: &mut Vec<RecordBatch>) {
        out.append(&mut self.late.batches);
    }

    fn checkpoints(&self) -> bool {
        true
    }

    fn snapshot(&mut self) -> Result<Vec<RecordBatch>> {
        let mut batches = Vec::with_capacity(self.windows.len());
        let starts: Vec<i64> = self.windows.keys().copied().collect();
        for start in starts {
            let state = self.windows.get_mut(&start).expect("listed above");
            if state.groups.is_empty() {
                continue;
            }
            let batch = snapshot::groups_batch(
                &self.encoder,
                start,
                &state.groups,
                state.accumulators.all(),
            )?;
            // Taking the state emptied the accumulators: load it back.
            let restored = self.restore_window(&batch)?;
            self.windows.insert(start, restored);
            batches.push(batch);
        }
        Ok(batches)
    }

    fn restore(&mut self, state: &[RecordBatch]) -> Result<()> {
        self.windows.clear();
        for batch in state {
            let start = snapshot::window_start(batch)?;
            let window = self.restore_window(batch)?;
            self.windows.insert(start, window);
        }
        Ok(())
    }
}

impl WindowAggregate {
    /// Empty state in the form this operator updates.
    fn new_accumulators(&self) -> Result<Accumulators> {
        Ok(match &self.spec.fused {
            Some(fused) => Accumulators::Fused(
                fused
                    .aggregates
                    .iter()
                    .map(|&k| FusedAccumulator::new(k))
                    .collect(),
            ),
            None => Accumulators::DataFusion(self.spec.accumulators()?),
        })
    }

    /// Window `start`'s state (created empty on its first row), with the
    /// group of each row `mask` keeps (every row when `None`) resolved
    /// into `group_ids`; other rows get group 0 and must be skipped by
    /// the same mask.
    fn window_groups(
        &mut self,
        start: i64,
        keys: &BatchKeys<'_>,
        mask: Option<&BooleanArray>,
        rows: usize,
        group_ids: &mut Vec<usize>,
    ) -> Result<&mut WindowState> {
        self.open_window(start)?;
        let state = self.windows.get_mut(&start).expect("opened above");
        self.encoder
            .resolve(&mut state.groups, keys, mask, rows, group_ids);
        Ok(state)
    }

    /// Creates window `start`'s state, empty, unless it exists.
    fn open_window(&mut self, start: i64) -> Result<()> {
        if !self.windows.contains_key(&start) {
            let state = WindowState {
                groups: self.encoder.table(),
                accumulators: self.new_accumulators()?,
            };
            self.windows.insert(start, state);
        }
        Ok(())
    }

    fn restore_window(&self, batch: &RecordBatch) -> Result<WindowState> {
        let groups = snapshot::restore_groups(&self.encoder, batch)?;
        let mut accumulators = self.new_accumulators()?;
        for (j, accumulator) in accumulators.all().into_iter().enumerate() {
            snapshot::merge_states(accumulator, batch, j)?;
        }
        Ok(WindowState {
            groups,
            accumulators,
        })
    }

    /// The windows a batch's rows fall in ([`assign_windows`]), from their
    /// event times and the per-row watermarks the lateness step carried.
    fn windows_of(
        &mut self,
        times: &dyn Array,
        row_watermarks: Option<&arrow::array::ArrayRef>,
        watermark_ms: i64,
    ) -> Result<Vec<(i64, Option<BooleanArray>)>> {
        let row_watermarks: Option<&[i64]> = row_watermarks
            .and_then(|a| a.as_any().downcast_ref::<Int64Array>())
            .map(|a| a.values().as_ref());
        let times_ms = self.binding.unit.ms_values(times, &mut self.times_ms)?;
        Ok(assign_windows(
            &self.window,
            times_ms,
            row_watermarks,
            watermark_ms,
            &mut self.starts,
        ))
    }

    /// The batch without its late rows (counted, and kept for the late
    /// side output), with the per-row watermark when some rows may miss a
    /// window; `None` when no row is left.
    fn on_time_rows(
        &mut self,
        batch: &RecordBatch,
        time: BatchTime<'_>,
    ) -> Result<Option<(RecordBatch, Option<arrow::array::ArrayRef>)>> {
        let (on_time, row_watermarks) =
            self.late
                .drop_from(&self.binding, batch, time, &mut self.times_ms)?;
        Ok((on_time.num_rows() > 0).then_some((on_time, row_watermarks)))
    }

    /// Merges partial states (window start, keys, states) into the
    /// windows they belong to: each row into exactly the window starting
    /// at its start, which is still open (the partial side closes it at
    /// the watermark that closes it here, and sends its states first).
    fn merge_partials(&mut self, batch: &RecordBatch) -> Result<()> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        let times_ms = self
            .binding
            .unit
            .ms_values(batch.column(0).as_ref(), &mut self.times_ms)?;
        let first = times_ms[0];
        let pieces = if times_ms.iter().all(|&t| t == first) {
            vec![(first, batch.clone())]
        } else {
            let mut starts: Vec<i64> = times_ms.to_vec();
            starts.sort_unstable();
            starts.dedup();
            let times_ms = times_ms.to_vec();
            starts
                .into_iter()
                .map(|start| {
                    let mask: BooleanArray = times_ms.iter().map(|&t| Some(t == start)).collect();
                    Ok((start, arrow::compute::filter_record_batch(batch, &mask)?))
                })
                .collect::<Result<Vec<_>>>()?
        };
        let keys_end = 1 + self.spec.keys.len();
        let widths = Arc::clone(&self.state_widths);
        let mut group_ids = std::mem::take(&mut self.group_ids);
        for (start, rows) in pieces {
            let key_arrays = rows.columns()[1..keys_end].to_vec();
            let keys = self.encoder.encode(&key_arrays)?;
            let state = self.window_groups(start, &keys, None, rows.num_rows(), &mut group_ids)?;
            let groups = state.groups.len();
            let mut column = keys_end;
            for (j, accumulator) in state.accumulators.all().into_iter().enumerate() {
                let width = widths[j];
                accumulator.merge_batch(
                    &rows.columns()[column..column + width],
                    &group_ids,
                    groups,
                )?;
                column += width;
            }
        }
        self.group_ids = group_ids;
        Ok(())
    }

    /// A batch through the fused kernel: no stage runs and no column is
    /// copied; only the group lookup stays outside the compiled loop.
    fn on_batch_fused(
        &mut self,
        fused: &FusedAggregate,
        batch: &RecordBatch,
        time: BatchTime<'_>,
    ) -> Result<()> {
        let Some((on_time, row_watermarks)) = self.on_time_rows(batch, time)? else {
            return Ok(());
        };
        let key_arrays: Vec<_> = fused
            .key_columns
            .iter()
            .map(|&c| Arc::clone(on_time.column(c)))
            .collect();
        let keys = self.encoder.encode(&key_arrays)?;
        if fused.update.looks_up_groups() && keys.all_short() {
            return self.on_batch_looking_up(fused, &on_time, row_watermarks, &keys, time);
        }
        let rows = on_time.num_rows();
        let selection = match &fused.predicate {
            Some(predicate) => crate::stage::filter_mask(predicate, &on_time)?.map(selection_of),
            None => None,
        };
        if selection.as_ref().is_some_and(|s| s.true_count() == 0) {
            return Ok(());
        }
        let assigned = self.fused_windows(fused, &on_time, row_watermarks, time)?;
        let mut group_ids = std::mem::take(&mut self.group_ids);
        for (start, window_mask) in assigned {
            let mask = combine_masks(selection.as_ref(), window_mask.as_ref())?;
            if mask.as_ref().is_some_and(|m| m.true_count() == 0) {
                continue;
            }
            // The kernel skips unselected rows by the same mask.
            let state = self.window_groups(start, &keys, mask.as_ref(), rows, &mut group_ids)?;
            let Accumulators::Fused(accumulators) = &mut state.accumulators else {
                unreachable!("a fused plan's windows hold fused state")
            };
            let groups = state.groups.len();
            for accumulator in accumulators.iter_mut() {
                accumulator.ensure_groups(groups);
            }
            fused
                .update
                .update(&on_time, mask.as_ref(), &group_ids, accumulators)?;
        }
        self.group_ids = group_ids;
        Ok(())
    }

    /// The windows a fused plan's batch touches, each with the mask of
    /// its rows (`None`: all of them).
    fn fused_windows(
        &mut self,
        fused: &FusedAggregate,
        on_time: &RecordBatch,
        row_watermarks: Option<arrow::array::ArrayRef>,
        time: BatchTime<'_>,
    ) -> Result<Vec<(i64, Option<BooleanArray>)>> {
        let time_column = fused.time_column.ok_or_else(|| {
            Error::new(
                ErrorCode::Execution,
                "internal: a fused window aggregate has no time column",
            )
        })?;
        self.windows_of(
            on_time.column(time_column).as_ref(),
            row_watermarks.as_ref(),
            time.watermark_ms,
        )
    }

    /// [`WindowAggregate::on_batch_fused`] with a kernel that evaluates
    /// the `WHERE` and looks each row's group up itself (every key short:
    /// [`BatchKeys::all_short`]): per window, one run over the rows in it.
    fn on_batch_looking_up(
        &mut self,
        fused: &FusedAggregate,
        on_time: &RecordBatch,
        row_watermarks: Option<arrow::array::ArrayRef>,
        keys: &BatchKeys<'_>,
        time: BatchTime<'_>,
    ) -> Result<()> {
        let assigned = self.fused_windows(fused, on_time, row_watermarks, time)?;
        for (start, window_mask) in assigned {
            let mask = combine_masks(None, window_mask.as_ref())?;
            if mask.as_ref().is_some_and(|m| m.true_count() == 0) {
                continue;
            }
            self.open_window(start)?;
            let state = self.windows.get_mut(&start).expect("opened above");
            let Accumulators::Fused(accumulators) = &mut state.accumulators else {
                unreachable!("a fused plan's windows hold fused state")
            };
            let groups = GroupsOf {
                encoder: &self.encoder,
                table: &mut state.groups,
                keys,
            };
            fused
                .update
                .update_looking_up(on_time, mask.as_ref(), groups, accumulators)?;
        }
        Ok(())
    }
}
