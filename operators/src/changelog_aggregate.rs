//! Aggregation with `EMIT CHANGES`: a Z-set changelog updated on every
//! batch.
//!
//! After each input batch, every group whose result changed emits a
//! retraction of its previous row (`_weight = -1`, exactly the row emitted
//! before) and its new row (`_weight = +1`); a new group emits only the
//! `+1`; a group whose result did not change emits nothing. Summing the
//! weights of all emitted rows gives the current result of the query.
//!
//! DataFusion's accumulators can only be read by consuming them, so the
//! state of each group lives between batches in DataFusion's *partial
//! state* form (the arrays a partial aggregate hands to a final one). Per
//! batch, only the touched groups are loaded into fresh accumulators
//! (`merge_batch` of their states), updated with the batch, saved again
//! (`state`) and evaluated. States and last results are kept in columnar
//! chunks, one chunk per batch, with a (chunk, row) location per group;
//! chunks are compacted into one when most of their rows are stale. Work
//! per batch is proportional to the groups it touches, not to all groups.
//!
//! When every aggregate is a plain `COUNT`/`SUM`/`MIN`/`MAX`/`AVG` that
//! [`FusedAccumulator`] computes as DataFusion does, the state is instead
//! one live accumulator per aggregate holding every group (*folded*): it
//! can be read without being consumed, so a batch reads its touched
//! groups' old results, updates the accumulators in place and reads the
//! new ones, with no per-batch accumulators, merges or stored chunks. Its
//! snapshot has the same layout, so a checkpoint restores in either form.
//! A folded aggregate may also have a fused plan ([`crate::fused`]): once
//! its kernel is compiled, a batch skips the stages (no filtered copy, no
//! argument arrays): the `WHERE` selects, the touched groups are found
//! from the source's key columns, and one compiled loop updates the same
//! accumulators the interpreted path does, so the switch happens between
//! two batches without moving any state.
//!
//! With a window in the GROUP BY, each window has its own groups; a window
//! that closes is dropped (its last emitted rows stand as its final
//! result). Without a window the groups live as long as the stream.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, BooleanArray, Int64Array, RecordBatch, UInt32Array};
use arrow::datatypes::SchemaRef;
use datafusion::logical_expr::{EmitTo, GroupsAccumulator};
use hashbrown::HashSet;
use laminar_runtime::Result;

use crate::aggregate::{assign_windows, combine_masks, AggregateSpec, Inputs, LateRows};
use crate::fused::{selection_of, FusedAccumulator, FusedAggregate};
use crate::groups::{BatchKeys, GroupTable, KeyEncoder};
use crate::snapshot;
use crate::stage::{self, apply_all_carrying};
use crate::time::WindowSpec;
use crate::{BatchTime, Operator};

/// Name of the weight column every `EMIT CHANGES` stream ends with.
pub const WEIGHT_COLUMN: &str = "_weight";

/// Stored states and results of some groups, written by one batch.
struct Chunk {
    /// `[aggregate][state field]`.
    states: Vec<Vec<ArrayRef>>,
    /// `[aggregate]`: the result last emitted.
    values: Vec<ArrayRef>,
    /// Rows of this chunk still referenced by a group.
    live: usize,
}

/// The groups of one window (or of the whole stream).
struct ChangeState {
    groups: GroupTable,
    /// Where each group's state is: (chunk, row). Unused when folded.
    located: Vec<(u32, u32)>,
    chunks: Vec<Chunk>,
    /// When every aggregate folds ([`AggregateSpec::foldable`]): one live
    /// accumulator per aggregate holding every group, read without being
    /// consumed, in place of `located` and `chunks`.
    folded: Vec<FusedAccumulator>,
}

/// Where a batch's aggregate inputs come from.
#[derive(Clone, Copy)]
enum Rows<'a> {
    /// Argument arrays computed by the stages over the staged batch.
    Staged(&'a Inputs),
    /// The source batch itself, read by the fused kernel.
    Source(&'a FusedAggregate, &'a RecordBatch),
}

/// Which groups a batch's selected rows touch (each once, in order of
/// first touch), from their group ids.
struct Touching<'a> {
    /// Group id -> position in `touched`, `u32::MAX` when not yet.
    compact_of: &'a mut Vec<u32>,
    touched: &'a mut Vec<u32>,
    /// Per row: the group id, turned into its position in `touched`
    /// unless folded.
    group_ids: &'a mut [usize],
    folded: bool,
}

impl Touching<'_> {
    #[inline]
    fn rows(&mut self, rows: impl Iterator<Item = usize>) {
        for row in rows {
            let id = self.group_ids[row];
            if id >= self.compact_of.len() {
                self.compact_of.resize(id + 1, u32::MAX);
            }
            if self.compact_of[id] == u32::MAX {
                self.compact_of[id] = self.touched.len() as u32;
                self.touched.push(id as u32);
            }
            if !self.folded {
                self.group_ids[row] = self.compact_of[id] as usize;
            }
        }
    }
}

/// Chunks kept before compaction is considered.
const MAX_CHUNKS: usize = 32;

/// The operator. One instance per stream per shard.
pub struct ChangelogAggregate {
    spec: Arc<AggregateSpec>,
    /// The fixed window, when windowed.
    window: Option<WindowSpec>,
    encoder: Arc<KeyEncoder>,
    /// Window start -> groups; `i64::MIN` holds the groups of an
    /// unwindowed aggregate.
    windows: BTreeMap<i64, ChangeState>,
    /// Output schema: the query's columns then `_weight`.
    output_schema: SchemaRef,
    late: LateRows,
    times_ms: Vec<i64>,
    starts: HashSet<i64>,
    group_ids: Vec<usize>,
    /// Scratch: group id -> position among the batch's touched groups.
    compact_of: Vec<u32>,
}

impl std::fmt::Debug for ChangelogAggregate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChangelogAggregate")
            .field("open_windows", &self.windows.len())
            .field("late_rows", &self.late.count)
            .finish()
    }
}

impl ChangelogAggregate {
    /// Builds the operator's empty state. `output_schema` is the stream's:
    /// the query's columns followed by [`WEIGHT_COLUMN`].
    pub fn new(spec: AggregateSpec, output_schema: SchemaRef) -> Result<Self> {
        let encoder = Arc::new(KeyEncoder::new(&spec.key_fields())?);
        let window = match &spec.window {
            Some(binding) => Some(binding.kind.fixed("EMIT CHANGES")?),
            None => None,
        };
        if let Some(fused) = &spec.fused {
            let windows_agree = spec.window.is_some() == fused.time_column.is_some();
            if spec.foldable.as_ref() != Some(&fused.aggregates) || !windows_agree {
                return Err(laminar_runtime::Error::new(
                    laminar_runtime::ErrorCode::Execution,
                    "internal: a fused changelog aggregate must fold what it computes, over its window's time",
                ));
            }
        }
        let late = LateRows::new(spec.late_side_output);
        Ok(Self {
            window,
            spec: Arc::new(spec),
            encoder,
            windows: BTreeMap::new(),
            output_schema,
            late,
            times_ms: Vec::new(),
            starts: HashSet::new(),
            group_ids: Vec::new(),
            compact_of: Vec::new(),
        })
    }

    /// A batch through the fused kernel: no stage runs and no column is
    /// copied; the `WHERE` selects, the source's key columns find the
    /// touched groups, and the kernel updates the folded accumulators.
    fn on_batch_fused(
        &mut self,
        fused: &FusedAggregate,
        batch: &RecordBatch,
        time: BatchTime<'_>,
        out: &mut Vec<RecordBatch>,
    ) -> Result<()> {
        let (on_time, row_watermarks) = match &self.spec.window {
            Some(binding) => self
                .late
                .drop_from(binding, batch, time, &mut self.times_ms)?,
            None => (batch.clone(), None),
        };
        let rows = on_time.num_rows();
        if rows == 0 {
            return Ok(());
        }
        let selection = match &fused.predicate {
            Some(predicate) => crate::stage::filter_mask(predicate, &on_time)?.map(selection_of),
            None => None,
        };
        if selection.as_ref().is_some_and(|s| s.true_count() == 0) {
            return Ok(());
        }
        let encoder = Arc::clone(&self.encoder);
        let key_arrays: Vec<ArrayRef> = fused
            .key_columns
            .iter()
            .map(|&c| Arc::clone(on_time.column(c)))
            .collect();
        let keys = encoder.encode(&key_arrays)?;
        let assigned = match (&self.spec.window, self.window.as_ref(), fused.time_column) {
            (Some(binding), Some(window), Some(column)) => {
                let times_ms = binding
                    .unit
                    .ms_values(on_time.column(column).as_ref(), &mut self.times_ms)?;
                let row_watermarks: Option<&[i64]> = row_watermarks
                    .as_ref()
                    .and_then(|a| a.as_any().downcast_ref::<Int64Array>())
                    .map(|a| a.values().as_ref());
                assign_windows(
                    window,
                    times_ms,
                    row_watermarks,
                    time.watermark_ms,
                    &mut self.starts,
                )
            }
            _ => vec![(i64::MIN, None)],
        };
        for (start, window_mask) in assigned {
            let mask = combine_masks(selection.as_ref(), window_mask.as_ref())?;
            if mask.as_ref().is_some_and(|m| m.true_count() == 0) {
                continue;
            }
            let rows_of = Rows::Source(fused, &on_time);
            self.update_window(start, mask.as_ref(), rows, &keys, rows_of, out)?;
        }
        Ok(())
    }

    /// Applies one window's rows (`mask`) and appends its changes to `out`.
    #[allow(clippy::too_many_arguments)]
    fn update_window(
        &mut self,
        start: i64,
        mask: Option<&BooleanArray>,
        rows: usize,
        keys: &BatchKeys<'_>,
        inputs: Rows<'_>,
        out: &mut Vec<RecordBatch>,
    ) -> Result<()> {
        if !self.windows.contains_key(&start) {
            let state = self.new_state(self.encoder.table());
            self.windows.insert(start, state);
        }
        let folded = self.spec.foldable.is_some();
        let state = self.windows.get_mut(&start).expect("inserted");
        // Groups seen before this batch (a folded state's first new id).
        let before = state.groups.len();
        // Touched groups, each with its position in this batch's
        // accumulators (its id itself when folded).
        let mut touched: Vec<u32> = Vec::new();
        // Unselected rows keep group 0.
        self.encoder
            .resolve(&mut state.groups, keys, mask, rows, &mut self.group_ids);
        let mut touching = Touching {
            compact_of: &mut self.compact_of,
            touched: &mut touched,
            group_ids: &mut self.group_ids,
            folded,
        };
        match mask {
            None => touching.rows(0..rows),
            Some(mask) => touching.rows(mask.values().set_indices()),
        }
        for &id in &touched {
            self.compact_of[id as usize] = u32::MAX;
        }
        if touched.is_empty() {
            return Ok(());
        }
        if folded {
            return self.update_folded(start, mask, before, &touched, inputs, out);
        }
        let Rows::Staged(inputs) = inputs else {
            return Err(laminar_runtime::Error::new(
                laminar_runtime::ErrorCode::Execution,
                "internal: a fused changelog aggregate must fold its state",
            ));
        };
        let touched_count = touched.len();
        // Groups seen in an earlier batch: their positions among the
        // touched ones, and where their state is.
        let existing: Vec<(u32, (u32, u32))> = touched
            .iter()
            .enumerate()
            .filter_map(|(position, &id)| {
                state
                    .located
                    .get(id as usize)
                    .map(|&location| (position as u32, location))
            })
            .collect();
        let positions: Vec<usize> = existing.iter().map(|&(p, _)| p as usize).collect();
        let locations: Vec<(usize, usize)> = existing
            .iter()
            .map(|&(_, (c, r))| (c as usize, r as usize))
            .collect();

        let mut accumulators = self.spec.accumulators()?;
        let mut new_states = Vec::with_capacity(accumulators.len());
        let mut old_values = Vec::with_capacity(accumulators.len());
        for (j, accumulator) in accumulators.iter_mut().enumerate() {
            if !existing.is_empty() {
                let fields = state.chunks[0].states[j].len();
                let states = (0..fields)
                    .map(|f| gather(&state.chunks, |c| &c.states[j][f], &locations))
                    .collect::<Result<Vec<_>>>()?;
                accumulator.merge_batch(&states, &positions, touched_count)?;
                old_values.push(gather(&state.chunks, |c| &c.values[j], &locations)?);
            }
            let filter = combine_masks(mask, inputs.filters[j].as_ref())?;
            accumulator.update_batch(
                &inputs.arguments[j],
                &self.group_ids,
                filter.as_ref(),
                touched_count,
            )?;
            new_states.push(accumulator.state(EmitTo::All)?);
        }
        // Results come from a second set of accumulators fed the saved
        // states, since evaluating consumes.
        let all_positions: Vec<usize> = (0..touched_count).collect();
        let mut new_values = Vec::with_capacity(accumulators.len());
        for (j, mut accumulator) in self.spec.accumulators()?.into_iter().enumerate() {
            accumulator.merge_batch(&new_states[j], &all_positions, touched_count)?;
            new_values.push(accumulator.evaluate(EmitTo::All)?);
        }

        // Save the new states and results.
        let chunk_index = state.chunks.len() as u32;
        for &(_, (c, _)) in &existing {
            state.chunks[c as usize].live -= 1;
        }
        for (position, &id) in touched.iter().enumerate() {
            let location = (chunk_index, position as u32);
            match state.located.get_mut(id as usize) {
                Some(slot) => *slot = location,
                None => {
                    debug_assert_eq!(state.located.len(), id as usize);
                    state.located.push(location);
                }
            }
        }
        state.chunks.push(Chunk {
            states: new_states,
            values: new_values.clone(),
            live: touched_count,
        });
        compact(state)?;

        let existing_positions: Vec<u32> = existing.iter().map(|&(p, _)| p).collect();
        self.emit_changes(
            start,
            &touched,
            &existing_positions,
            &old_values,
            &new_values,
            out,
        )
    }

    /// Emits a batch's changes in one window: `touched` groups (ids),
    /// those of them seen before at `existing` (positions in `touched`),
    /// their results before the batch (`old_values`, in `existing`'s
    /// order) and every touched group's results after it (`new_values`).
    /// A changed group retracts its old row and inserts its new one; a new
    /// group inserts.
    fn emit_changes(
        &self,
        start: i64,
        touched: &[u32],
        existing: &[u32],
        old_values: &[ArrayRef],
        new_values: &[ArrayRef],
        out: &mut Vec<RecordBatch>,
    ) -> Result<()> {
        let touched_count = touched.len();
        let existing_positions = UInt32Array::from(existing.to_vec());
        let mut changed = BooleanArray::from(vec![false; existing.len()]);
        for (old, new) in old_values.iter().zip(new_values) {
            let new_at_existing = arrow::compute::take(new, &existing_positions, None)?;
            let differs = arrow::compute::kernels::cmp::distinct(old, &new_at_existing)?;
            changed = arrow::compute::or(&changed, &differs)?;
        }
        let mut is_new = vec![true; touched_count];
        for &p in existing {
            is_new[p as usize] = false;
        }
        let retract: Vec<u32> = (0..existing.len() as u32)
            .filter(|&i| changed.value(i as usize))
            .collect();
        let mut insert: Vec<u32> = Vec::with_capacity(touched_count);
        for (i, &p) in existing.iter().enumerate() {
            if changed.value(i) {
                insert.push(p);
            }
        }
        insert.extend((0..touched_count as u32).filter(|&p| is_new[p as usize]));
        insert.sort_unstable();

        // Retractions of the old rows, then the new rows, in one batch:
        // each value column is the retracted groups' old values, then the
        // inserted groups' new ones.
        let window_start = (start != i64::MIN).then_some(start);
        let mut ids: Vec<u32> = retract
            .iter()
            .map(|&i| touched[existing[i as usize] as usize])
            .collect();
        ids.extend(insert.iter().map(|&p| touched[p as usize]));
        if ids.is_empty() {
            return Ok(());
        }
        let sources: Vec<(usize, usize)> = retract
            .iter()
            .map(|&i| (0, i as usize))
            .chain(insert.iter().map(|&p| (1, p as usize)))
            .collect();
        // Without groups seen before there are no old values, and nothing
        // to retract.
        debug_assert!(!old_values.is_empty() || retract.is_empty());
        let values = new_values
            .iter()
            .enumerate()
            .map(|(j, new)| {
                let old = old_values.get(j).unwrap_or(new);
                arrow::compute::interleave(&[old.as_ref(), new.as_ref()], &sources)
            })
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let rows = self.rows(&self.windows[&start].groups, window_start, &ids, values)?;
        stage::emit_changes(
            &self.spec.post,
            rows,
            retract.len(),
            &self.output_schema,
            out,
        )
    }

    /// [`ChangelogAggregate::update_window`] for a folded state:
    /// `self.group_ids` holds each row's group id, and ids from `before`
    /// on are new in this batch.
    fn update_folded(
        &mut self,
        start: i64,
        mask: Option<&BooleanArray>,
        before: usize,
        touched: &[u32],
        inputs: Rows<'_>,
        out: &mut Vec<RecordBatch>,
    ) -> Result<()> {
        let state = self.windows.get_mut(&start).expect("the window's state");
        let total = state.groups.len();
        let mut existing: Vec<u32> = Vec::new();
        let mut existing_ids: Vec<usize> = Vec::new();
        for (position, &id) in touched.iter().enumerate() {
            if (id as usize) < before {
                existing.push(position as u32);
                existing_ids.push(id as usize);
            }
        }
        let touched_ids: Vec<usize> = touched.iter().map(|&id| id as usize).collect();
        let old_values: Vec<ArrayRef> = state
            .folded
            .iter()
            .map(|accumulator| accumulator.evaluate_groups(&existing_ids))
            .collect();
        match inputs {
            Rows::Staged(inputs) => {
                for (j, accumulator) in state.folded.iter_mut().enumerate() {
                    let filter = combine_masks(mask, inputs.filters[j].as_ref())?;
                    accumulator.update_batch(
                        &inputs.arguments[j],
                        &self.group_ids,
                        filter.as_ref(),
                        total,
                    )?;
                }
            }
            Rows::Source(fused, batch) => {
                // Unselected rows carry group 0, which exists: this batch
                // touched a group.
                for accumulator in state.folded.iter_mut() {
                    accumulator.ensure_groups(total);
                }
                fused
                    .update
                    .update(batch, mask, &self.group_ids, &mut state.folded)?;
            }
        }
        let new_values: Vec<ArrayRef> = state
            .folded
            .iter()
            .map(|accumulator| accumulator.evaluate_groups(&touched_ids))
            .collect();
        self.emit_changes(start, touched, &existing, &old_values, &new_values, out)
    }

    /// An empty state for a window with these groups: folded
    /// accumulators when every aggregate folds.
    fn new_state(&self, groups: GroupTable) -> ChangeState {
        let folded = match &self.spec.foldable {
            Some(kinds) => kinds
                .iter()
                .zip(&self.spec.aggregates)
                .map(|(&kind, aggregate)| {
                    FusedAccumulator::with_output(kind, aggregate.field().data_type())
                })
                .collect(),
            None => Vec::new(),
        };
        ChangeState {
            groups,
            located: Vec::new(),
            chunks: Vec::new(),
            folded,
        }
    }

    /// Aggregate rows (GROUP BY columns, then aggregate values) of groups.
    fn rows(
        &self,
        groups: &GroupTable,
        window_start: Option<i64>,
        ids: &[u32],
        values: Vec<ArrayRef>,
    ) -> Result<RecordBatch> {
        let key_columns = self.encoder.key_columns(groups, ids)?;
        let window_column = match (&self.spec.window, window_start) {
            (Some(binding), Some(start)) => Some(binding.unit.constant_array(start, ids.len())),
            _ => None,
        };
        self.spec.assemble(window_column, key_columns, values)
    }
}

/// Gathers one array of stored rows at `locations`.
fn gather(
    chunks: &[Chunk],
    column: impl Fn(&Chunk) -> &ArrayRef,
    locations: &[(usize, usize)],
) -> Result<ArrayRef> {
    let arrays: Vec<&dyn Array> = chunks.iter().map(|c| column(c).as_ref()).collect();
    Ok(arrow::compute::interleave(&arrays, locations)?)
}

/// Rewrites the live rows of many chunks into one, when most stored rows
/// are stale or there are many chunks.
fn compact(state: &mut ChangeState) -> Result<()> {
    let stored: usize = state
        .chunks
        .iter()
        .map(|c| {
            c.states
                .first()
                .map_or(0, |s| s.first().map_or(0, |a| a.len()))
        })
        .sum();
    let live = state.located.len();
    if state.chunks.len() <= MAX_CHUNKS && stored <= 2 * live + 1024 {
        return Ok(());
    }
    let locations: Vec<(usize, usize)> = state
        .located
        .iter()
        .map(|&(c, r)| (c as usize, r as usize))
        .collect();
    let first = &state.chunks[0];
    let mut states = Vec::with_capacity(first.states.len());
    for j in 0..first.states.len() {
        states.push(
            (0..first.states[j].len())
                .map(|f| gather(&state.chunks, |c| &c.states[j][f], &locations))
                .collect::<Result<Vec<_>>>()?,
        );
    }
    let values = (0..first.values.len())
        .map(|j| gather(&state.chunks, |c| &c.values[j], &locations))
        .collect::<Result<Vec<_>>>()?;
    state.chunks = vec![Chunk {
        states,
        values,
        live,
    }];
    for (row, location) in state.located.iter_mut().enumerate() {
        *location = (0, row as u32);
    }
    Ok(())
}

impl Operator for ChangelogAggregate {
    fn on_batch(
        &mut self,
        batch: &RecordBatch,
        time: BatchTime<'_>,
        out: &mut Vec<RecordBatch>,
    ) -> Result<()> {
        if let Some(fused) = self.spec.fused.as_ref().filter(|f| f.update.is_ready()) {
            return self.on_batch_fused(&Arc::clone(fused), batch, time, out);
        }
        let (on_time, row_watermarks) = match &self.spec.window {
            Some(binding) => self
                .late
                .drop_from(binding, batch, time, &mut self.times_ms)?,
            None => (batch.clone(), None),
        };
        let (input, row_watermarks) = apply_all_carrying(&self.spec.pre, &on_time, row_watermarks)?;
        let rows = input.num_rows();
        if rows == 0 {
            return Ok(());
        }
        // Shared handles, so the batch's keys can borrow them while the
        // windows are updated.
        let spec = Arc::clone(&self.spec);
        let encoder = Arc::clone(&self.encoder);
        let inputs = spec.inputs(&input)?;
        let keys = encoder.encode(&inputs.key_arrays)?;
        let assigned = match &spec.window {
            Some(binding) => {
                let times = binding.event_time.evaluate(&input)?.into_array(rows)?;
                binding
                    .unit
                    .array_to_ms(times.as_ref(), &mut self.times_ms)?;
                let row_watermarks: Option<&[i64]> = row_watermarks
                    .as_ref()
                    .and_then(|a| a.as_any().downcast_ref::<Int64Array>())
                    .map(|a| a.values().as_ref());
                assign_windows(
                    &self.window.expect("a fixed window with the binding"),
                    &self.times_ms,
                    row_watermarks,
                    time.watermark_ms,
                    &mut self.starts,
                )
            }
            None => vec![(i64::MIN, None)],
        };
        for (start, mask) in assigned {
            self.update_window(
                start,
                mask.as_ref(),
                rows,
                &keys,
                Rows::Staged(&inputs),
                out,
            )?;
        }
        Ok(())
    }

    fn on_watermark(&mut self, watermark_ms: i64, _out: &mut Vec<RecordBatch>) -> Result<()> {
        // A closed window's last emitted rows are its final result.
        if let Some(window) = &self.window {
            while let Some(entry) = self.windows.first_entry() {
                if window.end_of(*entry.key()) > watermark_ms {
                    break;
                }
                entry.remove();
            }
        }
        Ok(())
    }

    fn late_rows(&self) -> u64 {
        self.late.count
    }

    fn state_bytes(&self) -> usize {
        self.windows
            .values()
            .map(|w| {
                w.groups.bytes()
                    + w.folded.iter().map(|a| a.size()).sum::<usize>()
                    + w.located.capacity() * 8
                    + w.chunks
                        .iter()
                        .map(|c| {
                            c.values
                                .iter()
                                .map(|a| a.get_array_memory_size())
                                .sum::<usize>()
                                + c.states
                                    .iter()
                                    .flatten()
                                    .map(|a| a.get_array_memory_size())
                                    .sum::<usize>()
                        })
                        .sum::<usize>()
            })
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
        for (&start, state) in &self.windows {
            if state.groups.is_empty() {
                continue;
            }
            let ids = state.groups.all_ids();
            let mut names = vec!["window_start".to_string()];
            let mut columns: Vec<ArrayRef> =
                vec![Arc::new(Int64Array::from_value(start, ids.len()))];
            snapshot::push_keys(&self.encoder, &state.groups, &ids, &mut names, &mut columns)?;
            // Both forms write DataFusion's partial states and the results.
            let (states, values) = if self.spec.foldable.is_none() {
                let locations: Vec<(usize, usize)> = state
                    .located
                    .iter()
                    .map(|&(c, r)| (c as usize, r as usize))
                    .collect();
                let first = &state.chunks[0];
                let states = (0..first.states.len())
                    .map(|j| {
                        (0..first.states[j].len())
                            .map(|f| gather(&state.chunks, |c| &c.states[j][f], &locations))
                            .collect::<Result<Vec<_>>>()
                    })
                    .collect::<Result<Vec<_>>>()?;
                let values = (0..first.values.len())
                    .map(|j| gather(&state.chunks, |c| &c.values[j], &locations))
                    .collect::<Result<Vec<_>>>()?;
                (states, values)
            } else {
                let ids: Vec<usize> = ids.iter().map(|&id| id as usize).collect();
                let states = state.folded.iter().map(|a| a.state_groups(&ids)).collect();
                let values = state
                    .folded
                    .iter()
                    .map(|a| a.evaluate_groups(&ids))
                    .collect();
                (states, values)
            };
            for (j, fields) in states.into_iter().enumerate() {
                for (f, column) in fields.into_iter().enumerate() {
                    names.push(format!("state_{j}_{f}"));
                    columns.push(column);
                }
            }
            for (j, column) in values.into_iter().enumerate() {
                names.push(format!("value_{j}"));
                columns.push(column);
            }
            batches.push(crate::snapshot_batch(names, columns)?);
        }
        Ok(batches)
    }

    fn restore(&mut self, state: &[RecordBatch]) -> Result<()> {
        self.windows.clear();
        let aggregates = self.spec.accumulators()?.len();
        for batch in state {
            let start = snapshot::window_start(batch)?;
            let groups = snapshot::restore_groups(&self.encoder, batch)?;
            let states = (0..aggregates)
                .map(|j| snapshot::columns_with_prefix(batch, &format!("state_{j}_")))
                .collect::<Vec<_>>();
            let values = (0..aggregates)
                .map(|j| {
                    batch
                        .column_by_name(&format!("value_{j}"))
                        .cloned()
                        .ok_or_else(|| snapshot::corrupt("missing an emitted value"))
                })
                .collect::<Result<Vec<_>>>()?;
            let rows = batch.num_rows();
            let mut state = self.new_state(groups);
            if self.spec.foldable.is_none() {
                state.located = (0..rows as u32).map(|r| (0, r)).collect();
                state.chunks = vec![Chunk {
                    states,
                    values,
                    live: rows,
                }];
            } else {
                let ids: Vec<usize> = (0..rows).collect();
                for (accumulator, states) in state.folded.iter_mut().zip(&states) {
                    if states.is_empty() {
                        return Err(snapshot::corrupt("missing aggregate state"));
                    }
                    accumulator.merge_batch(states, &ids, rows)?;
                }
            }
            self.windows.insert(start, state);
        }
        Ok(())
    }
}
