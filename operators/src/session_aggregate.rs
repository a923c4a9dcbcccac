//! Keyed session windows, emitted when each session closes.
//!
//! A session holds the rows of one key that are less than `gap` apart in
//! event time; it starts at its first row and ends `gap` after its last.
//! A row within `gap` of two sessions of its key bridges them: they merge.
//! A session closes when the watermark reaches its end.
//!
//! Rows are not folded into accumulators as they arrive, because a merge
//! would need to combine two groups' states, which DataFusion's
//! accumulators cannot do for a single group. Instead the aggregate input
//! batches are kept (columnar, as they came), each open session lists its
//! rows as (batch, row) references, and a closing session's rows are
//! gathered once and aggregated in one pass. State is therefore the rows of
//! open sessions; a buffered batch is freed when no open session refers to
//! it. Every aggregate DataFusion has works, in the same order-insensitive
//! way as in a batch query.
//!
//! With `EMIT CHANGES`, after every batch each session that changed is
//! re-aggregated from its rows: its previous row is retracted and the new
//! one emitted; a session merged into another has its row retracted. A
//! closing session then emits nothing more.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::sync::Arc;

use arrow::array::{
    Array, BinaryArray, BooleanArray, Int64Array, RecordBatch, UInt32Array, UInt64Array,
};
use arrow::datatypes::{DataType, Field, Schema};
use datafusion::logical_expr::EmitTo;
use laminar_runtime::{Error, ErrorCode, Result};

use crate::aggregate::{drop_late, AggregateSpec, WindowBinding, WindowKind};
use crate::groups::{GroupTable, KeyEncoder};
use crate::stage::{apply_all, emit_weighted, evaluate_all};
use crate::{BatchTime, Operator};

/// One open session of one key.
struct Session {
    start_ms: i64,
    last_ms: i64,
    /// (buffered batch sequence number, row).
    rows: Vec<(u64, u32)>,
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

/// A kept aggregate-input batch and how many open-session rows use it.
struct Buffered {
    batch: RecordBatch,
    live: usize,
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
    buffers: VecDeque<Buffered>,
    /// Sequence number of `buffers[0]`.
    buffers_base: u64,
    late_rows: u64,
    /// `EMIT CHANGES` mode.
    changes: Option<Changes>,
    /// Late rows waiting for the late side output.
    late_batches: Vec<RecordBatch>,
    times_ms: Vec<i64>,
}

impl std::fmt::Debug for SessionAggregate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionAggregate")
            .field("gap_ms", &self.gap_ms)
            .field("buffered_batches", &self.buffers.len())
            .field("late_rows", &self.late_rows)
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
        let binding = spec.window.clone().ok_or_else(|| {
            Error::new(
                ErrorCode::Planning,
                "internal: a session aggregate needs a window",
            )
        })?;
        let WindowKind::Session { gap_ms } = binding.kind else {
            return Err(Error::new(
                ErrorCode::Planning,
                "internal: a session aggregate needs a session window",
            ));
        };
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
        Ok(Self {
            changes,
            spec,
            binding,
            gap_ms,
            encoder,
            keys,
            sessions: Vec::new(),
            ends: BinaryHeap::new(),
            buffers: VecDeque::new(),
            buffers_base: 0,
            late_rows: 0,
            late_batches: Vec::new(),
            times_ms: Vec::new(),
        })
    }

    /// Adds row `row` of buffered batch `sequence` at `t_ms` to key `key`.
    fn add_row(&mut self, key: usize, t_ms: i64, sequence: u64, row: u32) {
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
                sessions.insert(
                    first,
                    Session {
                        start_ms: t_ms,
                        last_ms: t_ms,
                        rows: vec![(sequence, row)],
                        dirty: true,
                        emitted: None,
                    },
                );
                self.ends
                    .push(Reverse((t_ms.saturating_add(gap), key as u32, t_ms)));
            }
            1 => {
                let session = &mut sessions[first];
                session.dirty = true;
                session.rows.push((sequence, row));
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
                session.rows.extend(later.rows);
                session.rows.push((sequence, row));
                session.last_ms = session.last_ms.max(later.last_ms).max(t_ms);
            }
        }
    }

    /// The aggregate rows (GROUP BY columns, then aggregates) of sessions.
    fn aggregate_rows(&self, sessions: &[(u32, &Session)]) -> Result<RecordBatch> {
        let mut references = Vec::new();
        let mut group_ids = Vec::new();
        for (group, (_, session)) in sessions.iter().enumerate() {
            for &(sequence, row) in &session.rows {
                references.push(((sequence - self.buffers_base) as usize, row as usize));
                group_ids.push(group);
            }
        }
        let batches: Vec<&RecordBatch> = self.buffers.iter().map(|b| &b.batch).collect();
        let rows = arrow::compute::interleave_record_batch(&batches, &references)?;
        let inputs = self.spec.inputs(&rows)?;
        let mut values = Vec::with_capacity(self.spec.aggregates.len());
        for (j, mut accumulator) in self.spec.accumulators()?.into_iter().enumerate() {
            accumulator.update_batch(
                &inputs.arguments[j],
                &group_ids,
                inputs.filters[j].as_ref(),
                sessions.len(),
            )?;
            values.push(accumulator.evaluate(EmitTo::All)?);
        }
        let key_ids: Vec<u32> = sessions.iter().map(|(key, _)| *key).collect();
        let key_columns = self.encoder.key_columns(&self.keys, &key_ids)?;
        let starts = self
            .binding
            .unit
            .array_from_ms(sessions.iter().map(|(_, s)| s.start_ms));
        self.spec.assemble(Some(starts), key_columns, values)
    }

    /// Frees the buffered rows of sessions that are gone.
    fn release(&mut self, sessions: &[(u32, Session)]) {
        for (_, session) in sessions {
            for &(sequence, _) in &session.rows {
                self.buffers[(sequence - self.buffers_base) as usize].live -= 1;
            }
        }
        while self.buffers.front().is_some_and(|b| b.live == 0) {
            self.buffers.pop_front();
            self.buffers_base += 1;
        }
    }

    /// Emits the given closed sessions as one batch.
    fn emit(&mut self, closed: Vec<(u32, Session)>, out: &mut Vec<RecordBatch>) -> Result<()> {
        if self.changes.is_none() {
            let refs: Vec<(u32, &Session)> = closed.iter().map(|(k, s)| (*k, s)).collect();
            let aggregated = self.aggregate_rows(&refs)?;
            let result = apply_all(&self.spec.post, &aggregated)?;
            if result.num_rows() > 0 {
                out.push(result);
            }
        }
        // With EMIT CHANGES a closed session's last row stands.
        self.release(&closed);
        Ok(())
    }

    /// After a batch (`EMIT CHANGES`): retracts merged-away sessions, and
    /// for each changed session retracts its previous row and emits the new
    /// one.
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
        let mut inserted: Vec<u32> = Vec::new();
        if !dirty.is_empty() {
            let sessions: Vec<(u32, &Session)> = dirty
                .iter()
                .map(|&(key, i)| (key, &self.sessions[key as usize][i]))
                .collect();
            let aggregated = self.aggregate_rows(&sessions)?;
            let changes = self.changes.as_ref().expect("checked");
            let rows = changes.rows.convert_columns(aggregated.columns())?;
            let mut updates = Vec::with_capacity(dirty.len());
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
                inserted.push(position as u32);
                updates.push((key, i, Some(new_row)));
            }
            for (key, i, new_row) in updates {
                let session = &mut self.sessions[key as usize][i];
                session.dirty = false;
                if new_row.is_some() {
                    session.emitted = new_row;
                }
            }
            let inserted = arrow::compute::take_record_batch(
                &aggregated,
                &arrow::array::UInt32Array::from(inserted),
            )?;
            if !retract.is_empty() {
                let changes = self.changes.as_ref().expect("checked");
                let parser = changes.rows.parser();
                let columns = changes
                    .rows
                    .convert_rows(retract.iter().map(|r| parser.parse(r)))?;
                let old = RecordBatch::try_new(Arc::clone(&self.spec.aggregate_schema), columns)?;
                self.weighted(old, -1, out)?;
            }
            self.weighted(inserted, 1, out)?;
        } else if !retract.is_empty() {
            let changes = self.changes.as_ref().expect("checked");
            let parser = changes.rows.parser();
            let columns = changes
                .rows
                .convert_rows(retract.iter().map(|r| parser.parse(r)))?;
            let old = RecordBatch::try_new(Arc::clone(&self.spec.aggregate_schema), columns)?;
            self.weighted(old, -1, out)?;
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
        let (on_time, _, late) = drop_late(
            &self.binding,
            batch,
            time,
            &mut self.times_ms,
            self.spec.late_side_output.then_some(&mut self.late_batches),
        )?;
        self.late_rows += late;
        let input = apply_all(&self.spec.pre, &on_time)?;
        let rows = input.num_rows();
        if rows == 0 {
            return Ok(());
        }
        let times = self.binding.event_time.evaluate(&input)?.into_array(rows)?;
        self.binding
            .unit
            .array_to_ms(times.as_ref(), &mut self.times_ms)?;
        let key_arrays = evaluate_all(&self.spec.keys, &input)?;
        let keys = self.encoder.encode(&key_arrays)?;
        let sequence = self.buffers_base + self.buffers.len() as u64;
        let mut key_ids = Vec::with_capacity(rows);
        for row in 0..rows {
            key_ids.push(self.encoder.group_id(&mut self.keys, &keys, row));
        }
        drop(keys);
        if self.sessions.len() < self.keys.len() {
            self.sessions.resize_with(self.keys.len(), Vec::new);
        }
        for (row, &key) in key_ids.iter().enumerate() {
            let t_ms = self.times_ms[row];
            self.add_row(key, t_ms, sequence, row as u32);
        }
        self.buffers.push_back(Buffered {
            batch: input,
            live: rows,
        });
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
        self.late_rows
    }

    fn state_bytes(&self) -> usize {
        // Buffered rows dominate; session row lists are 12 bytes a row.
        let buffered: usize = self
            .buffers
            .iter()
            .map(|b| b.batch.get_array_memory_size())
            .sum();
        let live: usize = self.buffers.iter().map(|b| b.live).sum();
        buffered + live * 12 + self.keys.bytes()
    }

    fn drain_late(&mut self, out: &mut Vec<RecordBatch>) {
        out.append(&mut self.late_batches);
    }

    fn checkpoints(&self) -> bool {
        true
    }

    /// Two batches when sessions are open: the open sessions (`key_<i>`,
    /// `start_ms`, `last_ms`, `emitted` row, `dirty`, `rows`), key by key
    /// in order, then their rows session by session (the aggregate input's
    /// own columns and schema, plus `__session`).
    fn snapshot(&mut self) -> Result<Vec<RecordBatch>> {
        let mut key_ids = Vec::new();
        let mut starts = Vec::new();
        let mut lasts = Vec::new();
        let mut emitted: Vec<Option<&[u8]>> = Vec::new();
        let mut dirty = Vec::new();
        let mut counts = Vec::new();
        let mut references = Vec::new();
        let mut session_of = Vec::new();
        for (key, sessions) in self.sessions.iter().enumerate() {
            for session in sessions {
                let number = key_ids.len() as u32;
                key_ids.push(key as u32);
                starts.push(session.start_ms);
                lasts.push(session.last_ms);
                emitted.push(session.emitted.as_deref());
                dirty.push(session.dirty);
                counts.push(session.rows.len() as u64);
                for &(sequence, row) in &session.rows {
                    references.push(((sequence - self.buffers_base) as usize, row as usize));
                    session_of.push(number);
                }
            }
        }
        if key_ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut names = Vec::new();
        let mut columns: Vec<arrow::array::ArrayRef> = Vec::new();
        crate::snapshot::push_keys(
            &self.encoder,
            &self.keys,
            &key_ids,
            &mut names,
            &mut columns,
        )?;
        names.extend(
            ["start_ms", "last_ms", "emitted", "dirty", "rows"]
                .iter()
                .map(|n| n.to_string()),
        );
        columns.push(Arc::new(Int64Array::from(starts)));
        columns.push(Arc::new(Int64Array::from(lasts)));
        columns.push(Arc::new(BinaryArray::from(emitted)));
        columns.push(Arc::new(BooleanArray::from(dirty)));
        columns.push(Arc::new(UInt64Array::from(counts)));
        let sessions = crate::snapshot_batch(names, columns)?;
        let batches: Vec<&RecordBatch> = self.buffers.iter().map(|b| &b.batch).collect();
        let rows = arrow::compute::interleave_record_batch(&batches, &references)?;
        let mut fields = rows.schema().fields().to_vec();
        fields.push(Arc::new(Field::new("__session", DataType::UInt32, false)));
        let mut row_columns = rows.columns().to_vec();
        row_columns.push(Arc::new(UInt32Array::from(session_of)));
        let rows = RecordBatch::try_new(Arc::new(Schema::new(fields)), row_columns)?;
        Ok(vec![sessions, rows])
    }

    fn restore(&mut self, state: &[RecordBatch]) -> Result<()> {
        let [sessions, rows] = state else {
            return if state.is_empty() {
                Ok(())
            } else {
                Err(crate::snapshot::corrupt("session state"))
            };
        };
        use crate::snapshot::column;
        let starts: Int64Array = column(sessions, "start_ms")?;
        let lasts: Int64Array = column(sessions, "last_ms")?;
        let emitted: BinaryArray = column(sessions, "emitted")?;
        let dirty: BooleanArray = column(sessions, "dirty")?;
        let counts: UInt64Array = column(sessions, "rows")?;
        // The rows, under the aggregate input's own schema (new batches
        // are gathered together with them).
        let n = rows.num_columns() - 1;
        let schema = Arc::new(Schema::new(rows.schema().fields()[..n].to_vec()));
        let input = RecordBatch::try_new(schema, rows.columns()[..n].to_vec())?;
        let sequence = self.buffers_base + self.buffers.len() as u64;
        let keys = crate::snapshot::columns_with_prefix(sessions, "key_");
        let encoded = self.encoder.encode(&keys)?;
        let mut next_row = 0u32;
        for i in 0..sessions.num_rows() {
            let key = self.encoder.group_id(&mut self.keys, &encoded, i);
            if self.sessions.len() < self.keys.len() {
                self.sessions.resize_with(self.keys.len(), Vec::new);
            }
            let count = counts.value(i) as u32;
            let session = Session {
                start_ms: starts.value(i),
                last_ms: lasts.value(i),
                rows: (next_row..next_row + count)
                    .map(|r| (sequence, r))
                    .collect(),
                dirty: dirty.value(i),
                emitted: emitted.is_valid(i).then(|| emitted.value(i).into()),
            };
            next_row += count;
            self.ends.push(Reverse((
                session.last_ms.saturating_add(self.gap_ms),
                key as u32,
                session.start_ms,
            )));
            self.sessions[key].push(session);
        }
        if next_row as usize != input.num_rows() {
            return Err(crate::snapshot::corrupt("session rows"));
        }
        self.buffers.push_back(Buffered {
            live: input.num_rows(),
            batch: input,
        });
        Ok(())
    }
}
