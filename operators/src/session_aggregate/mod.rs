//! Keyed session windows, emitted when each session closes.
//!
//! A session holds the rows of one key that are less than `gap` apart in
//! event time; it starts at its first row and ends `gap` after its last.
//! A row within `gap` of two sessions of its key bridges them: they merge.
//! A session closes when the watermark reaches its end.
//!
//! What a session keeps of its rows depends on its aggregates
//! (`contents.rs`): plain `COUNT`/`SUM`/`MIN`/`MAX`/`AVG`
//! are folded into per-session accumulator slots as rows arrive (and
//! merged when sessions merge); any other aggregate keeps the input rows
//! and aggregates a session's rows once, when it closes. With a fused
//! plan ([`crate::fused`]) whose kernel is compiled, folding skips the
//! stages: the `WHERE` gives a selection over the source batch, and one
//! compiled loop folds every selected row into its session's slot.
//!
//! With `EMIT CHANGES`, after every batch each session that changed is
//! re-aggregated: its previous row is retracted and the new one emitted;
//! a session merged into another has its row retracted. A closing session
//! then emits nothing more.
//!
//! Checkpoints (`checkpoint.rs`) save the open sessions with their partial
//! aggregate states or their rows.

mod checkpoint;
mod contents;

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::Arc;

use arrow::array::{ArrayRef, BooleanArray, RecordBatch, UInt32Array};
use laminar_runtime::{Error, ErrorCode, Result};

use crate::aggregate::{AggregateSpec, LateRows, WindowBinding, WindowKind};
use crate::fused::{selection_of, FusedAggregate};
use crate::groups::{GroupTable, KeyEncoder};
use crate::stage::{apply_all, emit_weighted, evaluate_all};
use crate::{BatchTime, Operator};
use contents::{Folded, Rows};

/// One open session of one key.
struct Session {
    start_ms: i64,
    last_ms: i64,
    /// Its rows as (kept batch sequence number, row) ([`Contents::Rows`]).
    rows: Vec<(u64, u32)>,
    /// Its accumulator slot ([`Contents::Folded`]).
    slot: u32,
    /// Changed since its row was last emitted (`EMIT CHANGES`).
    dirty: bool,
    /// Its last emitted aggregate row, in row format (`EMIT CHANGES`).
    emitted: Option<Box<[u8]>>,
}

/// What `EMIT CHANGES` needs on top of the window-close mode.
struct Changes {
    /// The stream's schema: the query's columns then `_weight`.
    output_schema: arrow::datatypes::SchemaRef,
    /// Aggregate rows <-> bytes, to compare and retract them.
    rows: arrow::row::RowConverter,
    /// Rows of sessions merged away since the last batch, to retract.
    retract: Vec<Box<[u8]>>,
    /// Keys whose sessions changed in this batch.
    touched: Vec<u32>,
}

/// What the open sessions keep (`contents.rs`).
enum Contents {
    Rows(Rows),
    Folded(Folded),
}

/// The operator. One instance per stream per shard.
pub struct SessionAggregate {
    spec: AggregateSpec,
    binding: WindowBinding,
    gap_ms: i64,
    encoder: KeyEncoder,
    keys: GroupTable,
    /// Open sessions per key id, sorted by start; consecutive sessions are
    /// at least `gap` apart.
    sessions: Vec<Vec<Session>>,
    /// (end, key, start) of sessions, earliest end first. An entry whose
    /// session has since grown is pushed again with its new end when it
    /// comes up; one whose session merged away is skipped.
    ends: BinaryHeap<Reverse<(i64, u32, i64)>>,
    contents: Contents,
    late: LateRows,
    /// `EMIT CHANGES` mode.
    changes: Option<Changes>,
    // Scratch buffers reused across batches.
    times_ms: Vec<i64>,
}

impl std::fmt::Debug for SessionAggregate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionAggregate")
            .field("gap_ms", &self.gap_ms)
            .field("folded", &matches!(self.contents, Contents::Folded(_)))
            .field("late_rows", &self.late.count)
            .finish()
    }
}

impl SessionAggregate {
    /// Builds the operator's empty state. With `changes_schema` (the
    /// stream's schema, ending with `_weight`) it emits a changelog after
    /// every batch instead of each session once when it closes.
    pub fn new(
        spec: AggregateSpec,
        changes_schema: Option<arrow::datatypes::SchemaRef>,
    ) -> Result<Self> {
        let binding = spec
            .window
            .clone()
            .ok_or_else(|| internal("a session aggregate needs a window"))?;
        let WindowKind::Session { gap_ms } = binding.kind else {
            return Err(internal("a session aggregate needs a session window"));
        };
        let contents = match &spec.foldable {
            Some(kinds) if kinds.len() != spec.aggregates.len() => {
                return Err(internal("one folded kind per aggregate"));
            }
            Some(kinds) => {
                // The aggregates' columns end the aggregate's schema.
                let fields = spec.aggregate_schema.fields();
                let outputs: Vec<_> = fields[fields.len() - kinds.len()..]
                    .iter()
                    .map(|f| f.data_type().clone())
                    .collect();
                Contents::Folded(Folded::new(kinds, &outputs))
            }
            None => Contents::Rows(Rows::default()),
        };
        if let Some(fused) = &spec.fused {
            if spec.foldable.as_ref() != Some(&fused.aggregates) {
                return Err(internal(
                    "a fused session aggregate must fold what it computes",
                ));
            }
        }
        let encoder = KeyEncoder::new(&spec.key_fields())?;
        let keys = encoder.table();
        let changes = match changes_schema {
            Some(output_schema) => Some(Changes {
                output_schema,
                rows: arrow::row::RowConverter::new(
                    spec.aggregate_schema
                        .fields()
                        .iter()
                        .map(|f| arrow::row::SortField::new(f.data_type().clone()))
                        .collect(),
                )?,
                retract: Vec::new(),
                touched: Vec::new(),
            }),
            None => None,
        };
        let late = LateRows::new(spec.late_side_output);
        Ok(Self {
            changes,
            spec,
            binding,
            gap_ms,
            encoder,
            keys,
            sessions: Vec::new(),
            ends: BinaryHeap::new(),
            contents,
            late,
            times_ms: Vec::new(),
        })
    }

    /// Adds a row at `t_ms` of key `key` to its session, opening, growing
    /// or merging sessions; `reference` is where the row is kept
    /// ([`Contents::Rows`]). Returns the session's slot
    /// ([`Contents::Folded`]; 0 otherwise).
    fn add_row(&mut self, key: usize, t_ms: i64, reference: (u64, u32)) -> u32 {
        let gap = self.gap_ms;
        if let Some(changes) = self.changes.as_mut() {
            changes.touched.push(key as u32);
        }
        let sessions = &mut self.sessions[key];
        // Sessions the row is within `gap` of: at most two neighbours.
        let first = sessions.partition_point(|s| s.last_ms.saturating_add(gap) <= t_ms);
        let touches = |s: &Session| t_ms > s.start_ms.saturating_sub(gap);
        let reach = sessions[first..].iter().take_while(|s| touches(s)).count();
        match reach {
            0 => {
                let (rows, slot) = match &mut self.contents {
                    Contents::Rows(_) => (vec![reference], 0),
                    Contents::Folded(folded) => (Vec::new(), folded.allocate()),
                };
                sessions.insert(
                    first,
                    Session {
                        start_ms: t_ms,
                        last_ms: t_ms,
                        rows,
                        slot,
                        dirty: true,
                        emitted: None,
                    },
                );
                self.ends
                    .push(Reverse((t_ms.saturating_add(gap), key as u32, t_ms)));
                slot
            }
            1 => {
                let session = &mut sessions[first];
                session.dirty = true;
                if let Contents::Rows(_) = self.contents {
                    session.rows.push(reference);
                }
                session.last_ms = session.last_ms.max(t_ms);
                if t_ms < session.start_ms {
                    // Its identity (key, start) changed: queue it anew.
                    session.start_ms = t_ms;
                    self.ends.push(Reverse((
                        session.last_ms.saturating_add(gap),
                        key as u32,
                        t_ms,
                    )));
                }
                session.slot
            }
            _ => {
                // The row bridges two sessions: the later one folds into
                // the earlier, whose queue entry stays valid.
                debug_assert_eq!(reach, 2);
                let later = sessions.remove(first + 1);
                if let (Some(changes), Some(row)) = (self.changes.as_mut(), later.emitted) {
                    changes.retract.push(row);
                }
                let session = &mut sessions[first];
                session.dirty = true;
                match &mut self.contents {
                    Contents::Rows(_) => {
                        session.rows.extend(later.rows);
                        session.rows.push(reference);
                    }
                    Contents::Folded(folded) => folded.merge(session.slot, later.slot),
                }
                session.last_ms = session.last_ms.max(later.last_ms).max(t_ms);
                session.slot
            }
        }
    }

    /// Puts the rows `selection` keeps (every row when `None`) into their
    /// keys' sessions; `times_ms[row]` is a row's event time.
    fn place(
        &mut self,
        key_arrays: &[ArrayRef],
        selection: Option<&BooleanArray>,
        times_ms: &[i64],
    ) -> Result<()> {
        let keys = self.encoder.encode(key_arrays)?;
        let sequence = match &mut self.contents {
            Contents::Rows(kept) => kept.next_sequence(),
            Contents::Folded(folded) => {
                folded.start_batch(times_ms.len());
                0
            }
        };
        let mut place_row = |row: usize| {
            let key = self.encoder.group_id(&mut self.keys, &keys, row);
            if key >= self.sessions.len() {
                self.sessions.resize_with(key + 1, Vec::new);
            }
            let slot = self.add_row(key, times_ms[row], (sequence, row as u32));
            if let Contents::Folded(folded) = &mut self.contents {
                folded.set_row(row, slot);
            }
        };
        match selection {
            Some(selection) => selection.values().set_indices().for_each(&mut place_row),
            None => (0..times_ms.len()).for_each(&mut place_row),
        }
        Ok(())
    }

    /// A batch through the stages: its rows placed, then kept or folded.
    fn add_batch(&mut self, on_time: &RecordBatch) -> Result<()> {
        let input = apply_all(&self.spec.pre, on_time)?;
        let rows = input.num_rows();
        if rows == 0 {
            return Ok(());
        }
        let times = self.binding.event_time.evaluate(&input)?.into_array(rows)?;
        let mut scratch = std::mem::take(&mut self.times_ms);
        let times_ms = self.binding.unit.ms_values(times.as_ref(), &mut scratch)?;
        if matches!(self.contents, Contents::Folded(_)) {
            let inputs = self.spec.inputs(&input)?;
            self.place(&inputs.key_arrays, None, times_ms)?;
            let Contents::Folded(folded) = &mut self.contents else {
                unreachable!("checked above")
            };
            folded.fold(&inputs)?;
        } else {
            let key_arrays = evaluate_all(&self.spec.keys, &input)?;
            self.place(&key_arrays, None, times_ms)?;
            let Contents::Rows(kept) = &mut self.contents else {
                unreachable!("checked above")
            };
            kept.keep(input, rows);
        }
        self.times_ms = scratch;
        Ok(())
    }

    /// A batch through the fused kernel: no stage runs and no column is
    /// copied; the `WHERE` selects, and selected rows fold into their
    /// sessions' slots.
    fn add_batch_fused(&mut self, fused: &FusedAggregate, on_time: &RecordBatch) -> Result<()> {
        let selection = match &fused.predicate {
            Some(predicate) => crate::stage::filter_mask(predicate, on_time)?.map(selection_of),
            None => None,
        };
        if selection.as_ref().is_some_and(|s| s.true_count() == 0) {
            return Ok(());
        }
        let key_arrays: Vec<ArrayRef> = fused
            .key_columns
            .iter()
            .map(|&c| Arc::clone(on_time.column(c)))
            .collect();
        let time_column = fused.time_column.ok_or_else(|| {
            laminar_runtime::Error::new(
                laminar_runtime::ErrorCode::Execution,
                "internal: a fused session aggregate has no time column",
            )
        })?;
        let mut scratch = std::mem::take(&mut self.times_ms);
        let times_ms = self
            .binding
            .source_time_unit
            .ms_values(on_time.column(time_column).as_ref(), &mut scratch)?;
        self.place(&key_arrays, selection.as_ref(), times_ms)?;
        self.times_ms = scratch;
        let Contents::Folded(folded) = &mut self.contents else {
            unreachable!("`new` refuses a fused plan over kept rows")
        };
        folded.fold_fused(fused, on_time, selection.as_ref())
    }

    /// The aggregate rows (GROUP BY columns, then aggregates) of sessions.
    fn aggregate_rows(&self, sessions: &[(u32, &Session)]) -> Result<RecordBatch> {
        let values = match &self.contents {
            Contents::Folded(folded) => {
                let slots: Vec<usize> = sessions.iter().map(|(_, s)| s.slot as usize).collect();
                folded.values(&slots)
            }
            Contents::Rows(kept) => kept.values(
                &self.spec,
                sessions.iter().map(|(_, session)| session.rows.as_slice()),
            )?,
        };
        let key_ids: Vec<u32> = sessions.iter().map(|(key, _)| *key).collect();
        let key_columns = self.encoder.key_columns(&self.keys, &key_ids)?;
        let starts = self
            .binding
            .unit
            .array_from_ms(sessions.iter().map(|(_, s)| s.start_ms));
        self.spec.assemble(Some(starts), key_columns, values)
    }

    /// Frees what sessions that are gone kept.
    fn release(&mut self, sessions: &[(u32, Session)]) {
        match &mut self.contents {
            Contents::Folded(folded) => folded.release(sessions.iter().map(|(_, s)| s.slot)),
            Contents::Rows(kept) => kept.release(sessions.iter().map(|(_, s)| s.rows.as_slice())),
        }
    }

    /// Emits the given closed sessions as one batch.
    fn emit(&mut self, closed: Vec<(u32, Session)>, out: &mut Vec<RecordBatch>) -> Result<()> {
        // With EMIT CHANGES a closed session's last row stands.
        let result = match self.changes {
            Some(_) => Ok(None),
            None => {
                let refs: Vec<(u32, &Session)> = closed.iter().map(|(k, s)| (*k, s)).collect();
                self.aggregate_rows(&refs)
                    .and_then(|aggregated| apply_all(&self.spec.post, &aggregated))
                    .map(Some)
            }
        };
        // The sessions are gone even when a stage above them failed.
        self.release(&closed);
        if let Some(result) = result?.filter(|r| r.num_rows() > 0) {
            out.push(result);
        }
        Ok(())
    }

    /// After a batch (`EMIT CHANGES`): retracts merged-away sessions, and
    /// for each changed session retracts its previous row and emits the new
    /// one. A session's row counts as emitted only once it was.
    fn emit_changes(&mut self, out: &mut Vec<RecordBatch>) -> Result<()> {
        let Some(changes) = self.changes.as_mut() else {
            return Ok(());
        };
        let mut touched = std::mem::take(&mut changes.touched);
        let mut retract = std::mem::take(&mut changes.retract);
        touched.sort_unstable();
        touched.dedup();
        let mut dirty: Vec<(u32, usize)> = Vec::new();
        for &key in &touched {
            for (i, session) in self.sessions[key as usize].iter().enumerate() {
                if session.dirty {
                    dirty.push((key, i));
                }
            }
        }
        let mut updates = Vec::with_capacity(dirty.len());
        let mut inserted = None;
        if !dirty.is_empty() {
            let sessions: Vec<(u32, &Session)> = dirty
                .iter()
                .map(|&(key, i)| (key, &self.sessions[key as usize][i]))
                .collect();
            let aggregated = self.aggregate_rows(&sessions)?;
            let changes = self.changes.as_ref().expect("checked");
            let rows = changes.rows.convert_columns(aggregated.columns())?;
            let mut positions: Vec<u32> = Vec::new();
            for (position, &(key, i)) in dirty.iter().enumerate() {
                let new_row: Box<[u8]> = rows.row(position).as_ref().into();
                let session = &self.sessions[key as usize][i];
                if session.emitted.as_deref() == Some(&new_row[..]) {
                    updates.push((key, i, None));
                    continue;
                }
                if let Some(old) = &session.emitted {
                    retract.push(old.clone());
                }
                positions.push(position as u32);
                updates.push((key, i, Some(new_row)));
            }
            inserted = Some(arrow::compute::take_record_batch(
                &aggregated,
                &UInt32Array::from(positions),
            )?);
        }
        if !retract.is_empty() {
            let changes = self.changes.as_ref().expect("checked");
            let parser = changes.rows.parser();
            let columns = changes
                .rows
                .convert_rows(retract.iter().map(|r| parser.parse(r)))?;
            let old = RecordBatch::try_new(Arc::clone(&self.spec.aggregate_schema), columns)?;
            self.weighted(old, -1, out)?;
        }
        if let Some(inserted) = inserted {
            self.weighted(inserted, 1, out)?;
        }
        for (key, i, new_row) in updates {
            let session = &mut self.sessions[key as usize][i];
            session.dirty = false;
            if new_row.is_some() {
                session.emitted = new_row;
            }
        }
        Ok(())
    }

    /// Post-aggregate stages over aggregate rows, with a weight column.
    fn weighted(&self, rows: RecordBatch, weight: i64, out: &mut Vec<RecordBatch>) -> Result<()> {
        let changes = self.changes.as_ref().expect("changes mode");
        emit_weighted(&self.spec.post, rows, weight, &changes.output_schema, out)
    }
}

impl Operator for SessionAggregate {
    fn on_batch(
        &mut self,
        batch: &RecordBatch,
        time: BatchTime<'_>,
        out: &mut Vec<RecordBatch>,
    ) -> Result<()> {
        let (on_time, _) = self
            .late
            .drop_from(&self.binding, batch, time, &mut self.times_ms)?;
        if on_time.num_rows() == 0 {
            return Ok(());
        }
        match self.spec.fused.as_ref().filter(|f| f.update.is_ready()) {
            Some(fused) => self.add_batch_fused(&Arc::clone(fused), &on_time)?,
            None => self.add_batch(&on_time)?,
        }
        self.emit_changes(out)
    }

    fn on_watermark(&mut self, watermark_ms: i64, out: &mut Vec<RecordBatch>) -> Result<()> {
        let mut closed = Vec::new();
        while let Some(&Reverse((end, key, start))) = self.ends.peek() {
            if end > watermark_ms {
                break;
            }
            self.ends.pop();
            let sessions = &mut self.sessions[key as usize];
            let Some(i) = sessions.iter().position(|s| s.start_ms == start) else {
                continue; // merged into an earlier session, or restarted
            };
            let current_end = sessions[i].last_ms.saturating_add(self.gap_ms);
            if current_end > watermark_ms {
                self.ends.push(Reverse((current_end, key, start)));
                continue;
            }
            closed.push((key, sessions.remove(i)));
        }
        if closed.is_empty() {
            return Ok(());
        }
        self.emit(closed, out)
    }

    fn late_rows(&self) -> u64 {
        self.late.count
    }

    fn state_bytes(&self) -> usize {
        let contents = match &self.contents {
            Contents::Rows(kept) => kept.bytes(),
            Contents::Folded(folded) => folded.bytes(),
        };
        let sessions: usize = self
            .sessions
            .iter()
            .map(|s| s.capacity() * std::mem::size_of::<Session>())
            .sum();
        // The rows last emitted (`EMIT CHANGES`), kept to retract them.
        let emitted: usize = match self.changes {
            Some(_) => self
                .sessions
                .iter()
                .flatten()
                .filter_map(|s| s.emitted.as_ref().map(|row| row.len()))
                .sum(),
            None => 0,
        };
        let ends = self.ends.len() * std::mem::size_of::<Reverse<(i64, u32, i64)>>();
        contents + sessions + emitted + ends + self.keys.bytes()
    }

    fn drain_late(&mut self, out: &mut Vec<RecordBatch>) {
        out.append(&mut self.late.batches);
    }

    fn checkpoints(&self) -> bool {
        true
    }

    fn snapshot(&mut self) -> Result<Vec<RecordBatch>> {
        self.save()
    }

    fn restore(&mut self, state: &[RecordBatch]) -> Result<()> {
        self.load(state)
    }
}

fn internal(what: &str) -> Error {
    Error::new(ErrorCode::Planning, format!("internal: {what}"))
}
