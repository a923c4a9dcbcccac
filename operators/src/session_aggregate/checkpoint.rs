//! A session aggregate's checkpoint state: the open sessions, key by key
//! in order, as one batch (`key_<i>`, `start_ms`, `last_ms`, `emitted`
//! row, `dirty`, `rows`), with each folded session's partial aggregate
//! states (`state_<j>_<f>`), or, for sessions that keep rows, a second
//! batch of their rows session by session (the aggregate input's own
//! columns and schema, plus `__session`). Rows saved by a build that did
//! not fold these aggregates restore into folded sessions.

use std::cmp::Reverse;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, BinaryArray, BooleanArray, Int64Array, RecordBatch, UInt32Array, UInt64Array,
};
use arrow::datatypes::{DataType, Field, Schema};
use laminar_runtime::Result;

use super::{Contents, Session, SessionAggregate};

impl SessionAggregate {
    /// The state in the layout the module docs give.
    pub(super) fn save(&self) -> Result<Vec<RecordBatch>> {
        let mut key_ids = Vec::new();
        let mut starts = Vec::new();
        let mut lasts = Vec::new();
        let mut emitted: Vec<Option<&[u8]>> = Vec::new();
        let mut dirty = Vec::new();
        let mut counts = Vec::new();
        let mut slots = Vec::new();
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
                slots.push(session.slot as usize);
                for &reference in &session.rows {
                    references.push(reference);
                    session_of.push(number);
                }
            }
        }
        if key_ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut names = Vec::new();
        let mut columns: Vec<ArrayRef> = Vec::new();
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
        let kept = match &self.contents {
            Contents::Folded(folded) => {
                for (j, states) in folded.states(&slots).into_iter().enumerate() {
                    for (f, state) in states.into_iter().enumerate() {
                        names.push(format!("state_{j}_{f}"));
                        columns.push(state);
                    }
                }
                return Ok(vec![crate::snapshot_batch(names, columns)?]);
            }
            Contents::Rows(kept) => kept,
        };
        let sessions = crate::snapshot_batch(names, columns)?;
        let rows = kept.gather(references)?;
        let mut fields = rows.schema().fields().to_vec();
        fields.push(Arc::new(Field::new("__session", DataType::UInt32, false)));
        let mut row_columns = rows.columns().to_vec();
        row_columns.push(Arc::new(UInt32Array::from(session_of)));
        let rows = RecordBatch::try_new(Arc::new(Schema::new(fields)), row_columns)?;
        Ok(vec![sessions, rows])
    }

    /// Loads what [`SessionAggregate::save`] (of this build or an
    /// earlier one) wrote.
    pub(super) fn load(&mut self, state: &[RecordBatch]) -> Result<()> {
        use crate::snapshot::{column, corrupt};
        let (sessions, rows) = match state {
            [] => return Ok(()),
            [sessions] => (sessions, None),
            [sessions, rows] => (sessions, Some(rows)),
            _ => return Err(corrupt("session state")),
        };
        let starts: Int64Array = column(sessions, "start_ms")?;
        let lasts: Int64Array = column(sessions, "last_ms")?;
        let emitted: BinaryArray = column(sessions, "emitted")?;
        let dirty: BooleanArray = column(sessions, "dirty")?;
        let counts: UInt64Array = column(sessions, "rows")?;
        let sequence = match &self.contents {
            Contents::Rows(kept) => kept.next_sequence(),
            Contents::Folded(_) => 0,
        };
        let keys = crate::snapshot::columns_with_prefix(sessions, "key_");
        let encoded = self.encoder.encode(&keys)?;
        let mut slots = Vec::with_capacity(sessions.num_rows());
        let mut next_row = 0u64;
        for i in 0..sessions.num_rows() {
            let key = self.encoder.group_id(&mut self.keys, &encoded, i);
            if key >= self.sessions.len() {
                self.sessions.resize_with(key + 1, Vec::new);
            }
            let count = counts.value(i);
            let (session_rows, slot) = match &mut self.contents {
                Contents::Rows(_) => (
                    (next_row..next_row + count)
                        .map(|r| (sequence, r as u32))
                        .collect(),
                    0,
                ),
                Contents::Folded(folded) => (Vec::new(), folded.allocate()),
            };
            next_row += count;
            slots.push(slot as usize);
            let session = Session {
                start_ms: starts.value(i),
                last_ms: lasts.value(i),
                rows: session_rows,
                slot,
                dirty: dirty.value(i),
                emitted: emitted.is_valid(i).then(|| emitted.value(i).into()),
            };
            self.ends.push(Reverse((
                session.last_ms.saturating_add(self.gap_ms),
                key as u32,
                session.start_ms,
            )));
            self.sessions[key].push(session);
        }
        match (&mut self.contents, rows) {
            (Contents::Folded(folded), None) => {
                let states: Vec<Vec<ArrayRef>> = (0..folded.aggregates())
                    .map(|j| crate::snapshot::columns_with_prefix(sessions, &format!("state_{j}_")))
                    .collect();
                if states.iter().any(Vec::is_empty) {
                    return Err(corrupt("missing aggregate state"));
                }
                folded.merge_states(&states, &slots)
            }
            (contents, Some(rows)) => {
                // The rows, under the aggregate input's own schema.
                let session_of: UInt32Array = column(rows, "__session")?;
                let n = rows.num_columns() - 1;
                let schema = Arc::new(Schema::new(rows.schema().fields()[..n].to_vec()));
                let input = RecordBatch::try_new(schema, rows.columns()[..n].to_vec())?;
                if next_row != input.num_rows() as u64 {
                    return Err(corrupt("session rows"));
                }
                match contents {
                    Contents::Rows(kept) => kept.keep(input, next_row as usize),
                    // Kept by a build that did not fold these aggregates:
                    // fold the rows into their sessions' slots now.
                    Contents::Folded(folded) => {
                        let row_slots = session_of
                            .values()
                            .iter()
                            .map(|&s| slots.get(s as usize).copied())
                            .collect::<Option<Vec<usize>>>()
                            .ok_or_else(|| corrupt("session rows"))?;
                        folded.fold_into(&self.spec.inputs(&input)?, &row_slots)?;
                    }
                }
                Ok(())
            }
            (Contents::Rows(_), None) => Err(corrupt(
                "the sessions were saved as accumulators, and this stream keeps rows",
            )),
        }
    }
}
