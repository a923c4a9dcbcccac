//! What a session aggregate keeps of its open sessions, in one of two
//! forms chosen when the stream is planned:
//!
//! - [`Folded`], when every aggregate is a plain `COUNT`/`SUM`/`MIN`/
//!   `MAX`/`AVG` that [`FusedAccumulator`] computes (`MIN`/`MAX` of a
//!   timestamp too, as its `i64`s): each open session
//!   owns a *slot*, a group of those accumulators, and rows are folded in
//!   as they arrive. Two sessions that a row bridges merge their slots
//!   (counts and sums add, extremes compare, as DataFusion merges partial
//!   states). State is a few words per session and aggregate; a closing
//!   session reads its slot. The fused kernel ([`crate::fused`]) can do
//!   the folding over the source batch.
//! - [`Rows`], for every other aggregate (`first_value`, `MIN` of a
//!   string, ...): DataFusion's accumulators cannot merge two groups, so the
//!   aggregate input batches are kept as they came, each session lists
//!   its rows as (batch, row) references, and a closing session's rows
//!   are gathered and aggregated in one pass. A buffered batch is freed
//!   when no open session refers to it.
//!
//! Slots freed by a merge in the middle of a batch are not reused before
//! the batch ends: the batch's earlier rows may still name them, and are
//! forwarded to the slot they merged into before the batch is folded.

use std::collections::VecDeque;

use arrow::array::{ArrayRef, BooleanArray, RecordBatch};
use arrow::datatypes::DataType;
use datafusion::logical_expr::{EmitTo, GroupsAccumulator};
use laminar_runtime::Result;

use crate::aggregate::{AggregateSpec, Inputs};
use crate::fused::{FusedAccumulator, FusedAggregate, FusedAggregateKind};

/// No forwarding (a slot that did not merge away in this batch).
const NOT_FORWARDED: u32 = u32::MAX;

/// Open sessions' contents as accumulator slots.
pub(crate) struct Folded {
    accumulators: Vec<FusedAccumulator>,
    /// Slots in use or free: every accumulator holds this many groups.
    capacity: usize,
    /// Slots free for a new session.
    free: Vec<u32>,
    /// Slots merged away during the current batch (free after it).
    merged_away: Vec<u32>,
    /// `forward[s]`: the slot that slot `s` merged into in this batch.
    forward: Vec<u32>,
    /// The slot of each row of the current batch.
    row_slots: Vec<usize>,
}

impl Folded {
    /// Empty slots for aggregates of `kinds` whose results are of
    /// `outputs` types.
    pub(crate) fn new(kinds: &[FusedAggregateKind], outputs: &[DataType]) -> Self {
        Self {
            accumulators: kinds
                .iter()
                .zip(outputs)
                .map(|(&kind, output)| FusedAccumulator::with_output(kind, output))
                .collect(),
            capacity: 0,
            free: Vec::new(),
            merged_away: Vec::new(),
            forward: Vec::new(),
            row_slots: Vec::new(),
        }
    }

    /// An empty slot for a new session.
    pub(crate) fn allocate(&mut self) -> u32 {
        if let Some(slot) = self.free.pop() {
            for accumulator in &mut self.accumulators {
                accumulator.reset_group(slot as usize);
            }
            return slot;
        }
        let slot = self.capacity;
        self.capacity += 1;
        for accumulator in &mut self.accumulators {
            accumulator.ensure_groups(self.capacity);
        }
        self.forward.push(NOT_FORWARDED);
        u32::try_from(slot).expect("fewer than 2^32 open sessions")
    }

    /// Folds slot `from` into slot `into`: a row bridged their sessions.
    pub(crate) fn merge(&mut self, into: u32, from: u32) {
        for accumulator in &mut self.accumulators {
            accumulator.merge_group(into as usize, from as usize);
        }
        self.forward[from as usize] = into;
        self.merged_away.push(from);
    }

    /// Starts a batch of `rows` rows; rows not set with
    /// [`Folded::set_row`] stay in slot 0 and must be masked out.
    pub(crate) fn start_batch(&mut self, rows: usize) {
        self.row_slots.clear();
        self.row_slots.resize(rows, 0);
    }

    pub(crate) fn set_row(&mut self, row: usize, slot: u32) {
        self.row_slots[row] = slot as usize;
    }

    /// Points rows at the slots their slots merged into, and frees the
    /// merged-away slots.
    fn settle_merges(&mut self) {
        if self.merged_away.is_empty() {
            return;
        }
        let forward = &self.forward;
        for slot in &mut self.row_slots {
            while forward[*slot] != NOT_FORWARDED {
                *slot = forward[*slot] as usize;
            }
        }
        for &slot in &self.merged_away {
            self.forward[slot as usize] = NOT_FORWARDED;
        }
        self.free.append(&mut self.merged_away);
    }

    /// Folds the batch's aggregate input (evaluated `inputs`) into the
    /// slots set for its rows.
    pub(crate) fn fold(&mut self, inputs: &Inputs) -> Result<()> {
        self.settle_merges();
        fold_rows(
            &mut self.accumulators,
            inputs,
            &self.row_slots,
            self.capacity,
        )
    }

    /// Folds the rows of a *source* batch that `selection` keeps, through
    /// the fused kernel.
    pub(crate) fn fold_fused(
        &mut self,
        fused: &FusedAggregate,
        batch: &RecordBatch,
        selection: Option<&BooleanArray>,
    ) -> Result<()> {
        self.settle_merges();
        fused
            .update
            .update(batch, selection, &self.row_slots, &mut self.accumulators)
    }

    /// Each aggregate's results for `slots`, in order.
    pub(crate) fn values(&self, slots: &[usize]) -> Vec<ArrayRef> {
        self.accumulators
            .iter()
            .map(|a| a.evaluate_groups(slots))
            .collect()
    }

    /// Each aggregate's partial state for `slots` (checkpoints).
    pub(crate) fn states(&self, slots: &[usize]) -> Vec<Vec<ArrayRef>> {
        self.accumulators
            .iter()
            .map(|a| a.state_groups(slots))
            .collect()
    }

    /// Loads partial states (aggregate `j`'s arrays at `states[j]`) into
    /// `slots`, row `i` into `slots[i]`.
    pub(crate) fn merge_states(&mut self, states: &[Vec<ArrayRef>], slots: &[usize]) -> Result<()> {
        for (accumulator, state) in self.accumulators.iter_mut().zip(states) {
            accumulator.merge_batch(state, slots, self.capacity)?;
        }
        Ok(())
    }

    /// Folds evaluated aggregate input into `slots`, row `i` into
    /// `slots[i]` (restoring rows kept by the other form).
    pub(crate) fn fold_into(&mut self, inputs: &Inputs, slots: &[usize]) -> Result<()> {
        fold_rows(&mut self.accumulators, inputs, slots, self.capacity)
    }

    /// Frees the slots of closed sessions.
    pub(crate) fn release(&mut self, slots: impl IntoIterator<Item = u32>) {
        self.free.extend(slots);
    }

    pub(crate) fn aggregates(&self) -> usize {
        self.accumulators.len()
    }

    pub(crate) fn bytes(&self) -> usize {
        self.accumulators.iter().map(|a| a.size()).sum::<usize>()
            + (self.free.capacity() + self.forward.capacity()) * 4
    }
}

/// Folds evaluated aggregate input into `accumulators`, row `i` into
/// slot `slots[i]`.
fn fold_rows(
    accumulators: &mut [FusedAccumulator],
    inputs: &Inputs,
    slots: &[usize],
    capacity: usize,
) -> Result<()> {
    for (j, accumulator) in accumulators.iter_mut().enumerate() {
        accumulator.update_batch(
            &inputs.arguments[j],
            slots,
            inputs.filters[j].as_ref(),
            capacity,
        )?;
    }
    Ok(())
}

/// A kept aggregate-input batch and how many open-session rows use it.
struct Buffered {
    batch: RecordBatch,
    live: usize,
}

/// Open sessions' contents as kept input rows.
#[derive(Default)]
pub(crate) struct Rows {
    buffers: VecDeque<Buffered>,
    /// Sequence number of `buffers[0]`.
    base: u64,
}

impl Rows {
    /// The sequence number the next kept batch gets.
    pub(crate) fn next_sequence(&self) -> u64 {
        self.base + self.buffers.len() as u64
    }

    /// Keeps a batch whose `live` rows were added to sessions.
    pub(crate) fn keep(&mut self, batch: RecordBatch, live: usize) {
        self.buffers.push_back(Buffered { batch, live });
    }

    /// The referenced rows, gathered into one batch.
    pub(crate) fn gather(&self, rows: impl IntoIterator<Item = (u64, u32)>) -> Result<RecordBatch> {
        let references: Vec<(usize, usize)> = rows
            .into_iter()
            .map(|(sequence, row)| ((sequence - self.base) as usize, row as usize))
            .collect();
        let batches: Vec<&RecordBatch> = self.buffers.iter().map(|b| &b.batch).collect();
        Ok(arrow::compute::interleave_record_batch(
            &batches,
            &references,
        )?)
    }

    /// Each aggregate's results for sessions given by their row lists:
    /// their rows gathered once and aggregated in one pass.
    pub(crate) fn values<'a>(
        &self,
        spec: &AggregateSpec,
        sessions: impl Iterator<Item = &'a [(u64, u32)]> + Clone,
    ) -> Result<Vec<ArrayRef>> {
        let group_ids: Vec<usize> = sessions
            .clone()
            .enumerate()
            .flat_map(|(group, rows)| std::iter::repeat_n(group, rows.len()))
            .collect();
        let groups = sessions.clone().count();
        let rows = self.gather(sessions.flat_map(|rows| rows.iter().copied()))?;
        let inputs = spec.inputs(&rows)?;
        let mut values = Vec::with_capacity(spec.aggregates.len());
        for (j, mut accumulator) in spec.accumulators()?.into_iter().enumerate() {
            accumulator.update_batch(
                &inputs.arguments[j],
                &group_ids,
                inputs.filters[j].as_ref(),
                groups,
            )?;
            values.push(accumulator.evaluate(EmitTo::All)?);
        }
        Ok(values)
    }

    /// Frees the rows of sessions that are gone.
    pub(crate) fn release<'a>(&mut self, sessions: impl Iterator<Item = &'a [(u64, u32)]>) {
        for rows in sessions {
            for &(sequence, _) in rows {
                self.buffers[(sequence - self.base) as usize].live -= 1;
            }
        }
        while self.buffers.front().is_some_and(|b| b.live == 0) {
            self.buffers.pop_front();
            self.base += 1;
        }
    }

    pub(crate) fn bytes(&self) -> usize {
        // Session row lists are 12 bytes a row.
        self.buffers
            .iter()
            .map(|b| b.batch.get_array_memory_size() + b.live * 12)
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{Array, AsArray, Int64Array};
    use arrow::datatypes::Int64Type;

    use super::*;
    use crate::fused::{FusedFunction, FusedType};

    /// `COUNT(x)` and `SUM(x)` slots.
    fn count_and_sum() -> Folded {
        let kind = |function| FusedAggregateKind {
            function,
            ty: FusedType::Int64,
        };
        Folded::new(
            &[kind(FusedFunction::Count), kind(FusedFunction::Sum)],
            &[DataType::Int64, DataType::Int64],
        )
    }

    fn batch(values: &[i64]) -> Inputs {
        let values: ArrayRef = Arc::new(Int64Array::from(values.to_vec()));
        Inputs {
            key_arrays: Vec::new(),
            arguments: vec![vec![Arc::clone(&values)], vec![values]],
            filters: vec![None, None],
        }
    }

    /// (count, sum or `None`) of each slot.
    fn read(folded: &Folded, slots: &[u32]) -> Vec<(i64, Option<i64>)> {
        let slots: Vec<usize> = slots.iter().map(|&s| s as usize).collect();
        let values = folded.values(&slots);
        let counts = values[0].as_primitive::<Int64Type>();
        let sums = values[1].as_primitive::<Int64Type>();
        (0..slots.len())
            .map(|i| (counts.value(i), sums.is_valid(i).then(|| sums.value(i))))
            .collect()
    }

    /// Rows placed in slots that merge away later in the same batch (c
    /// into b, then b into a) end in the surviving slot, with the state
    /// the merged slots held before; the merged slots are reused only
    /// after the batch, and come back empty.
    #[test]
    fn merges_forward_the_batch_rows_and_free_slots_after_it() {
        let mut folded = count_and_sum();
        let (a, b, c) = (folded.allocate(), folded.allocate(), folded.allocate());
        folded.start_batch(3);
        for (row, slot) in [a, b, c].into_iter().enumerate() {
            folded.set_row(row, slot);
        }
        folded.fold(&batch(&[1, 2, 4])).unwrap();

        folded.start_batch(3);
        folded.set_row(0, c);
        folded.merge(b, c);
        folded.set_row(1, b);
        folded.merge(a, b);
        folded.set_row(2, a);
        assert!(folded.free.is_empty(), "reused while the batch names it");
        folded.fold(&batch(&[10, 20, 40])).unwrap();
        assert_eq!(read(&folded, &[a]), [(6, Some(77))]);

        let reused = [folded.allocate(), folded.allocate()];
        assert!(reused.contains(&b) && reused.contains(&c), "{reused:?}");
        assert_eq!(read(&folded, &reused), [(0, None), (0, None)]);
        assert_eq!(folded.allocate(), 3, "a new slot once none is free");
    }

    /// A closed session's slot is free at once (no batch is in flight).
    #[test]
    fn released_slots_come_back_empty() {
        let mut folded = count_and_sum();
        let a = folded.allocate();
        folded.start_batch(2);
        folded.set_row(0, a);
        folded.set_row(1, a);
        folded.fold(&batch(&[5, 6])).unwrap();
        assert_eq!(read(&folded, &[a]), [(2, Some(11))]);
        folded.release([a]);
        assert_eq!(folded.allocate(), a);
        assert_eq!(read(&folded, &[a]), [(0, None)]);
    }
}
