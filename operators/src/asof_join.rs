//! ASOF joins: each left row meets the one right row of its key whose
//! event time is the latest at or before its own (backward), the earliest
//! at or after it (forward) or the nearest, optionally within a
//! tolerance. Temporal joins (`FOR SYSTEM_TIME AS OF`) are the backward
//! form.
//!
//! Right rows are versions: per key, kept sorted by event time (rows with
//! equal times in arrival order, the later one winning). A left row is
//! answered once the right watermark proves no later right row can change
//! its answer: at once when the right side is already past it, else it
//! waits, ordered by time, and the right watermark releases it. So the
//! answer never depends on how the two inputs interleave.
//!
//! Versions no future or waiting left row can pick are dropped: for a
//! backward join everything before the latest version at or below the
//! oldest left time still possible. A key's last version stays (it is the
//! answer for every later left row), so state is one version per key plus
//! the versions of the last watermark delay.
//!
//! A right side that is a changelog (an `EMIT CHANGES` stream timed by a
//! column it never retracts at or below its watermark, such as a window's
//! end) is read as its changes: a row with a positive weight is a version,
//! one with a negative weight withdraws the equal version (matched by a
//! 128-bit digest of its values). Answers wait for the right watermark as
//! before, and by then every version they may pick is settled, so they do
//! not depend on how the changelog was batched (versions of one key and
//! time are ordered by their digests, not by arrival, which for a
//! changelog is the order of the last updates); pruning never drops a
//! version the watermark has not settled. A left changelog needs nothing
//! here: its weights pass through as a column, and a retraction meets the
//! same version its row did.

use std::collections::VecDeque;

use arrow::array::{Array, Int64Array, RecordBatch};
use arrow::datatypes::SchemaRef;
use laminar_runtime::{Error, ErrorCode, Result};
use laminar_state::Digest;

use crate::groups::{GroupTable, KeyEncoder};
use crate::join::{joined, nulls, shared_encoder, JoinSide, SideBatch, StoredBatches};
use crate::stage::{apply_all, Stage};
use crate::{BatchTime, Operator};

/// Which right row an ASOF join picks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AsofDirection {
    /// The latest at or before the left row's time (`a.ts >= b.ts`).
    Backward,
    /// The earliest at or after it (`a.ts <= b.ts`).
    Forward,
    /// The nearest either way; on a tie, the earlier one.
    Nearest,
}

/// Everything needed to build an ASOF join on a shard.
#[derive(Debug, Clone)]
pub struct AsofJoinSpec {
    /// Port 0: the rows that look up.
    pub left: JoinSide,
    /// Port 1: the versions.
    pub right: JoinSide,
    pub direction: AsofDirection,
    /// The picked right time minus the left time is at least this (ms;
    /// `i64::MIN`: no bound)...
    pub lower_ms: i64,
    /// ... and at most this (`i64::MAX`: no bound).
    pub upper_ms: i64,
    /// Left rows without a match are emitted with NULLs (`ASOF LEFT JOIN`).
    pub left_outer: bool,
    /// Schema of the joined rows.
    pub joined_schema: SchemaRef,
    /// Filters/projections after the join.
    pub post: Vec<Stage>,
    /// The right side's `_weight` column (an `Int64`) when it is a
    /// changelog.
    pub right_weight: Option<usize>,
}

#[derive(Debug, Clone, Copy)]
struct Version {
    time_ms: i64,
    batch: u64,
    row: u32,
}

/// A left row waiting for the right watermark.
#[derive(Debug, Clone, Copy)]
struct Waiting {
    time_ms: i64,
    batch: u64,
    row: u32,
    group: u32,
    /// Answered; removed after the pass that answered it.
    done: bool,
}

/// An ASOF join on one shard.
pub struct AsofJoin {
    spec: AsofJoinSpec,
    encoder: KeyEncoder,
    /// Keys of both sides; a key's versions are `versions[group]`.
    table: GroupTable,
    versions: Vec<Vec<Version>>,
    version_count: usize,
    /// Versions counted at the last full sweep.
    swept_at: usize,
    /// With a changelog right side, each stored batch's row digests
    /// (without the weight), by which retractions find their version.
    right_batches: StoredBatches<Vec<Digest>>,
    /// Left rows waiting, ordered by (time, arrival): mostly appended (in
    /// order) and released from the front, in memory kept between batches.
    waiting: VecDeque<Waiting>,
    left_batches: StoredBatches<()>,
    watermarks_ms: [i64; 2],
    late: u64,
}

impl std::fmt::Debug for AsofJoin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AsofJoin")
            .field("direction", &self.spec.direction)
            .field("keys", &self.versions.len())
            .field("versions", &self.version_count)
            .field("waiting", &self.waiting.len())
            .finish()
    }
}

/// Where a joined row's left half comes from.
#[derive(Clone, Copy)]
enum LeftRow {
    /// Row of the batch being processed.
    New(u32),
    /// A waiting row.
    Stored(u64, u32),
}

impl AsofJoin {
    /// A join with empty state.
    pub fn new(spec: AsofJoinSpec) -> Result<Self> {
        let encoder = shared_encoder(&spec.left, &spec.right)?;
        let table = encoder.table();
        Ok(Self {
            spec,
            encoder,
            table,
            versions: Vec::new(),
            version_count: 0,
            swept_at: 0,
            right_batches: StoredBatches::default(),
            waiting: VecDeque::new(),
            left_batches: StoredBatches::default(),
            watermarks_ms: [i64::MIN; 2],
            late: 0,
        })
    }

    /// Versions kept and left rows waiting (for tests and metrics).
    pub fn state_rows(&self) -> (usize, usize) {
        (self.version_count, self.waiting.len())
    }

    /// The version a left row at `t_ms` picks among `versions`, and the
    /// right watermark from which that answer is final.
    fn pick(&self, versions: &[Version], t_ms: i64) -> (Option<Version>, i64) {
        let (lower, upper) = (self.spec.lower_ms, self.spec.upper_ms);
        let low = t_ms.saturating_add(lower);
        let high = t_ms.saturating_add(upper);
        // The latest version at or before `at`.
        let latest = |at: i64| {
            let i = versions.partition_point(|v| v.time_ms <= at);
            (i > 0).then(|| versions[i - 1])
        };
        // The earliest version at or after `at`: the first of that time,
        // then the last with the same time (later arrivals win).
        let earliest = |at: i64| {
            let i = versions.partition_point(|v| v.time_ms < at);
            versions.get(i).map(|v| latest(v.time_ms).unwrap_or(*v))
        };
        let within = |v: &Version| (low..=high).contains(&v.time_ms);
        let after = |time: i64| time.saturating_add(1);
        match self.spec.direction {
            // Everything at or before `high` must have arrived.
            AsofDirection::Backward => (latest(high).filter(within), after(high)),
            AsofDirection::Forward => match earliest(low).filter(within) {
                // A later arrival with the same time would win.
                Some(v) => (Some(v), after(v.time_ms)),
                None => (None, after(high)),
            },
            AsofDirection::Nearest => {
                let back = latest(t_ms).filter(within);
                let forward = earliest(after(t_ms)).filter(within);
                let back_wins =
                    |b: &Version| forward.is_none_or(|f| t_ms - b.time_ms <= f.time_ms - t_ms);
                match (back, forward) {
                    // A future version at the same distance ahead loses
                    // the tie; one closer ahead would win.
                    (Some(b), _) if back_wins(&b) => {
                        let distance = t_ms.saturating_sub(b.time_ms);
                        (Some(b), after(t_ms).max(t_ms.saturating_add(distance)))
                    }
                    (_, Some(f)) => (Some(f), after(f.time_ms)),
                    _ => (None, after(high).max(after(t_ms))),
                }
            }
        }
    }

    fn right_schema(&self) -> &SchemaRef {
        &self.spec.right.schema
    }

    /// Emits answered left rows: `left` columns from `new` (the batch
    /// being processed) or the waiting rows' batches.
    fn emit(
        &self,
        new: Option<&RecordBatch>,
        answered: &[(LeftRow, Option<Version>)],
        out: &mut Vec<RecordBatch>,
    ) -> Result<()> {
        let mut matched: Vec<(LeftRow, (u64, u32))> = Vec::new();
        let mut unmatched: Vec<LeftRow> = Vec::new();
        for &(left, version) in answered {
            match version {
                Some(v) => matched.push((left, (v.batch, v.row))),
                None if self.spec.left_outer => unmatched.push(left),
                None => {}
            }
        }
        if !matched.is_empty() {
            let left_rows: Vec<LeftRow> = matched.iter().map(|(l, _)| *l).collect();
            let right_rows: Vec<(u64, u32)> = matched.iter().map(|(_, r)| *r).collect();
            let left = self.left_columns(new, &left_rows)?;
            let right = self
                .right_batches
                .gather(&right_rows, self.right_schema())?;
            self.emit_rows(joined(&self.spec.joined_schema, left, right)?, out)?;
        }
        if !unmatched.is_empty() {
            let left = self.left_columns(new, &unmatched)?;
            let right = nulls(self.right_schema(), unmatched.len());
            self.emit_rows(joined(&self.spec.joined_schema, left, right)?, out)?;
        }
        Ok(())
    }

    fn emit_rows(&self, rows: RecordBatch, out: &mut Vec<RecordBatch>) -> Result<()> {
        let result = apply_all(&self.spec.post, &rows)?;
        if result.num_rows() > 0 {
            out.push(result);
        }
        Ok(())
    }

    fn left_columns(
        &self,
        new: Option<&RecordBatch>,
        rows: &[LeftRow],
    ) -> Result<Vec<arrow::array::ArrayRef>> {
        // The batch being processed takes a sequence number no stored
        // batch has.
        let new_seq = u64::MAX;
        let mut batches: Vec<&RecordBatch> = Vec::new();
        let mut positions: std::collections::HashMap<u64, usize> = Default::default();
        let indices: Vec<(usize, usize)> = rows
            .iter()
            .map(|row| {
                let (seq, r) = match *row {
                    LeftRow::New(r) => (new_seq, r),
                    LeftRow::Stored(seq, r) => (seq, r),
                };
                let position = *positions.entry(seq).or_insert_with(|| {
                    batches.push(if seq == new_seq {
                        new.expect("new rows come with their batch")
                    } else {
                        &self.left_batches.get(seq).rows
                    });
                    batches.len() - 1
                });
                (position, r as usize)
            })
            .collect();
        crate::join::gather(&batches, &indices, &self.spec.left.schema)
    }

    fn on_left(&mut self, input: SideBatch, out: &mut Vec<RecordBatch>) -> Result<()> {
        let (input, null_rows) = input.split_null_keys()?;
        if let (Some(null_rows), true) = (null_rows, self.spec.left_outer) {
            let right = nulls(self.right_schema(), null_rows.num_rows());
            self.emit_rows(
                joined(
                    &self.spec.joined_schema,
                    null_rows.columns().to_vec(),
                    right,
                )?,
                out,
            )?;
        }
        let Some(input) = input else {
            return Ok(());
        };
        let keys = self.encoder.encode(&input.key_arrays)?;
        let right_watermark = self.watermarks_ms[1];
        let mut answered = Vec::new();
        let mut waiting = Vec::new();
        for (row, &t) in input.times_ms.iter().enumerate() {
            let group = self.encoder.group_id(&mut self.table, &keys, row);
            if group == self.versions.len() {
                self.versions.push(Vec::new());
            }
            let (version, final_from) = self.pick(&self.versions[group], t);
            if right_watermark >= final_from || right_watermark == i64::MAX {
                answered.push((LeftRow::New(row as u32), version));
            } else {
                waiting.push((t, row as u32, group as u32));
            }
        }
        self.emit(Some(&input.rows), &answered, out)?;
        if !waiting.is_empty() {
            let seq = self.left_batches.push(input.rows, waiting.len(), ());
            for (t, row, group) in waiting {
                let entry = Waiting {
                    time_ms: t,
                    batch: seq,
                    row,
                    group,
                    done: false,
                };
                // After every row with the same or an earlier time: arrival
                // order among equal times.
                let at = if self.waiting.back().is_none_or(|w| w.time_ms <= t) {
                    self.waiting.len()
                } else {
                    self.waiting.partition_point(|w| w.time_ms <= t)
                };
                self.waiting.insert(at, entry);
            }
        }
        Ok(())
    }

    fn on_right(&mut self, input: SideBatch) -> Result<()> {
        let (input, _) = input.split_null_keys()?;
        let Some(input) = input else {
            return Ok(());
        };
        let keys = self.encoder.encode(&input.key_arrays)?;
        let (weights, digests) = match self.spec.right_weight {
            Some(column) => {
                let (weights, digests) = changes(&input.rows, column)?;
                (Some(weights), digests)
            }
            None => (None, Vec::new()),
        };
        let seq = self.right_batches.next_seq();
        let mut touched = Vec::new();
        let mut kept = 0usize;
        for (row, &t) in input.times_ms.iter().enumerate() {
            let group = self.encoder.group_id(&mut self.table, &keys, row);
            if group == self.versions.len() {
                self.versions.push(Vec::new());
            }
            let weight = weights.as_ref().map_or(1, |w| w.value(row));
            for _ in 0..weight.min(0).unsigned_abs() {
                // A version of this very batch is not stored yet.
                if let Some(v) = self.withdraw(group, t, digests[row], (seq, &digests)) {
                    if v.batch == seq {
                        kept -= 1;
                    } else {
                        self.right_batches.release(v.batch);
                    }
                    self.version_count -= 1;
                }
            }
            if weight <= 0 {
                continue;
            }
            let versions = &mut self.versions[group];
            // After the versions of the same time: the later arrival
            // wins. A changelog's rows of one time are ordered by their
            // values instead: arrival there is the order of the last
            // updates, which depends on batching.
            let at = if weights.is_some() {
                let batches = &self.right_batches;
                let digest_of = |v: &Version| {
                    if v.batch == seq {
                        digests[v.row as usize]
                    } else {
                        batches.get(v.batch).extra[v.row as usize]
                    }
                };
                versions.partition_point(|v| {
                    v.time_ms < t || (v.time_ms == t && digest_of(v) <= digests[row])
                })
            } else {
                versions.partition_point(|v| v.time_ms <= t)
            };
            for _ in 0..weight {
                versions.insert(
                    at,
                    Version {
                        time_ms: t,
                        batch: seq,
                        row: row as u32,
                    },
                );
                kept += 1;
            }
            self.version_count += weight as usize;
            touched.push(group);
        }
        self.right_batches.push(input.rows, kept, digests);
        touched.sort_unstable();
        touched.dedup();
        for group in touched {
            self.prune(group);
        }
        Ok(())
    }

    /// Removes and returns the version of `group` at `time_ms` whose values
    /// have `digest`; `current` is the batch being stored (its sequence
    /// number and digests). One that was pruned (no left row could pick it
    /// any more) is not there, and nothing is to do.
    fn withdraw(
        &mut self,
        group: usize,
        time_ms: i64,
        digest: Digest,
        (seq, digests): (u64, &[Digest]),
    ) -> Option<Version> {
        let batches = &self.right_batches;
        let versions = &mut self.versions[group];
        let start = versions.partition_point(|v| v.time_ms < time_ms);
        let end = versions.partition_point(|v| v.time_ms <= time_ms);
        let i = (start..end).rev().find(|&i| {
            let v = versions[i];
            let stored = if v.batch == seq {
                digests[v.row as usize]
            } else {
                batches.get(v.batch).extra[v.row as usize]
            };
            stored == digest
        })?;
        Some(versions.remove(i))
    }

    /// The oldest left time still to be answered: waiting rows, and on-time
    /// rows to come.
    fn left_cutoff(&self) -> i64 {
        let waiting = self.waiting.front().map_or(i64::MAX, |w| w.time_ms);
        waiting.min(self.watermarks_ms[0])
    }

    /// Drops the versions of `group` that no left row from the cutoff on
    /// can pick.
    fn prune(&mut self, group: usize) {
        let cutoff = self.left_cutoff();
        if cutoff == i64::MIN {
            return;
        }
        let versions = &self.versions[group];
        let low = cutoff.saturating_add(self.spec.lower_ms);
        // Below the tolerance of every left row still to come.
        let mut drop = versions.partition_point(|v| v.time_ms < low);
        if self.spec.direction != AsofDirection::Forward {
            // The latest version at or before this point beats every older
            // one for each left row from the cutoff on.
            let mut point = if self.spec.direction == AsofDirection::Backward {
                cutoff.saturating_add(self.spec.upper_ms.min(0))
            } else {
                cutoff
            };
            if self.spec.right_weight.is_some() {
                // A version after the right watermark may still be
                // withdrawn: the one before it must stay.
                point = point.min(self.watermarks_ms[1]);
            }
            let latest = versions.partition_point(|v| v.time_ms <= point);
            drop = drop.max(latest.saturating_sub(1));
        }
        if drop == 0 {
            return;
        }
        let versions = &mut self.versions[group];
        for v in versions.drain(..drop) {
            self.right_batches.release(v.batch);
        }
        self.version_count -= drop;
    }

    /// Answers the waiting left rows the right watermark has made final.
    fn release_waiting(&mut self, out: &mut Vec<RecordBatch>) -> Result<()> {
        let right_watermark = self.watermarks_ms[1];
        // No waiting row at or after this time can be final yet.
        let horizon = match self.spec.direction {
            _ if right_watermark == i64::MAX => i64::MAX,
            AsofDirection::Backward => right_watermark.saturating_sub(self.spec.upper_ms),
            AsofDirection::Forward => right_watermark.saturating_sub(self.spec.lower_ms.max(0)),
            AsofDirection::Nearest => right_watermark,
        };
        let candidates = self.waiting.partition_point(|w| w.time_ms < horizon);
        let mut answered = Vec::new();
        for i in 0..candidates {
            let w = self.waiting[i];
            let (version, final_from) = self.pick(&self.versions[w.group as usize], w.time_ms);
            if right_watermark >= final_from || right_watermark == i64::MAX {
                answered.push((LeftRow::Stored(w.batch, w.row), version));
                self.waiting[i].done = true;
            }
        }
        if answered.is_empty() {
            return Ok(());
        }
        self.emit(None, &answered, out)?;
        for w in self.waiting.range(..candidates) {
            if w.done {
                self.left_batches.release(w.batch);
            }
        }
        if answered.len() == candidates {
            // The usual case (every backward answer): a prefix.
            self.waiting.drain(..candidates);
        } else {
            self.waiting.retain(|w| !w.done);
        }
        Ok(())
    }

    /// Prunes every key when versions have doubled since the last sweep,
    /// so keys that stopped receiving rows do not keep old versions.
    fn sweep(&mut self) {
        if self.version_count < 2 * self.swept_at + 1024 {
            return;
        }
        for group in 0..self.versions.len() {
            self.prune(group);
        }
        self.swept_at = self.version_count;
    }
}

impl AsofJoin {
    /// Keys of stored rows of `side` (restoring a snapshot).
    fn group_ids(&mut self, side: usize, rows: &RecordBatch) -> Result<Vec<usize>> {
        let exprs = if side == 0 {
            &self.spec.left.keys
        } else {
            &self.spec.right.keys
        };
        let key_arrays = crate::stage::evaluate_all(exprs, rows)?;
        let keys = self.encoder.encode(&key_arrays)?;
        let mut groups = Vec::with_capacity(rows.num_rows());
        for row in 0..rows.num_rows() {
            let group = self.encoder.group_id(&mut self.table, &keys, row);
            if group == self.versions.len() {
                self.versions.push(Vec::new());
            }
            groups.push(group);
        }
        Ok(groups)
    }

    /// A snapshot batch of stored rows: the side's columns, `time_ms`,
    /// `side`.
    fn rows_batch(
        &self,
        side: usize,
        rows: &[(u64, u32)],
        times: impl Iterator<Item = i64>,
    ) -> Result<RecordBatch> {
        let mut columns = if side == 0 {
            self.left_batches.gather(rows, &self.spec.left.schema)?
        } else {
            self.right_batches.gather(rows, &self.spec.right.schema)?
        };
        let mut names: Vec<String> = (0..columns.len()).map(|i| format!("c{i}")).collect();
        columns.push(std::sync::Arc::new(Int64Array::from_iter_values(times)));
        columns.push(std::sync::Arc::new(Int64Array::from_value(
            side as i64,
            rows.len(),
        )));
        names.extend(["time_ms".into(), "side".into()]);
        crate::snapshot_batch(names, columns)
    }
}

impl Operator for AsofJoin {
    fn checkpoints(&self) -> bool {
        true
    }

    /// The watermarks, then the right side's versions (key by key, in
    /// order) and the waiting left rows (in order).
    fn snapshot(&mut self) -> Result<Vec<RecordBatch>> {
        let meta = crate::snapshot_batch(
            ["left_watermark".into(), "right_watermark".into()],
            vec![
                std::sync::Arc::new(Int64Array::from(vec![self.watermarks_ms[0]])),
                std::sync::Arc::new(Int64Array::from(vec![self.watermarks_ms[1]])),
            ],
        )?;
        let mut batches = vec![meta];
        let versions: Vec<&Version> = self.versions.iter().flatten().collect();
        if !versions.is_empty() {
            let rows: Vec<(u64, u32)> = versions.iter().map(|v| (v.batch, v.row)).collect();
            batches.push(self.rows_batch(1, &rows, versions.iter().map(|v| v.time_ms))?);
        }
        if !self.waiting.is_empty() {
            let rows: Vec<(u64, u32)> = self.waiting.iter().map(|w| (w.batch, w.row)).collect();
            batches.push(self.rows_batch(0, &rows, self.waiting.iter().map(|w| w.time_ms))?);
        }
        Ok(batches)
    }

    fn restore(&mut self, state: &[RecordBatch]) -> Result<()> {
        let Some((meta, parts)) = state.split_first() else {
            return Ok(());
        };
        let int64 = crate::snapshot::column::<Int64Array>;
        self.watermarks_ms = [
            int64(meta, "left_watermark")?.value(0),
            int64(meta, "right_watermark")?.value(0),
        ];
        for part in parts {
            let side = int64(part, "side")?.value(0) as usize;
            let schema = if side == 0 {
                std::sync::Arc::clone(&self.spec.left.schema)
            } else {
                std::sync::Arc::clone(&self.spec.right.schema)
            };
            let n = schema.fields().len();
            if side > 1 || part.num_columns() != n + 2 {
                return Err(crate::snapshot::corrupt("ASOF join rows"));
            }
            let rows = RecordBatch::try_new(schema, part.columns()[..n].to_vec())?;
            let times = int64(part, "time_ms")?;
            let groups = self.group_ids(side, &rows)?;
            let count = rows.num_rows();
            if side == 1 {
                let digests = match self.spec.right_weight {
                    Some(column) => changes(&rows, column)?.1,
                    None => Vec::new(),
                };
                let seq = self.right_batches.push(rows, count, digests);
                for (row, (&group, &t)) in groups.iter().zip(times.values()).enumerate() {
                    // In order already: appending keeps it.
                    self.versions[group].push(Version {
                        time_ms: t,
                        batch: seq,
                        row: row as u32,
                    });
                }
                self.version_count += count;
            } else {
                let seq = self.left_batches.push(rows, count, ());
                for (row, (&group, &t)) in groups.iter().zip(times.values()).enumerate() {
                    self.waiting.push_back(Waiting {
                        time_ms: t,
                        batch: seq,
                        row: row as u32,
                        group: group as u32,
                        done: false,
                    });
                }
            }
        }
        self.swept_at = self.version_count;
        Ok(())
    }

    fn on_batch(
        &mut self,
        batch: &RecordBatch,
        time: BatchTime<'_>,
        out: &mut Vec<RecordBatch>,
    ) -> Result<()> {
        self.on_input_batch(0, batch, time, out)
    }

    fn on_watermark(&mut self, watermark_ms: i64, out: &mut Vec<RecordBatch>) -> Result<()> {
        self.on_input_watermark(0, watermark_ms, out)
    }

    fn on_input_batch(
        &mut self,
        port: usize,
        batch: &RecordBatch,
        time: BatchTime<'_>,
        out: &mut Vec<RecordBatch>,
    ) -> Result<()> {
        let side = if port == 0 {
            &self.spec.left
        } else {
            &self.spec.right
        };
        let Some(input) = side.prepare(batch, time, &mut self.late)? else {
            return Ok(());
        };
        if port == 0 {
            self.on_left(input, out)
        } else {
            self.on_right(input)
        }
    }

    fn on_input_watermark(
        &mut self,
        port: usize,
        watermark_ms: i64,
        out: &mut Vec<RecordBatch>,
    ) -> Result<()> {
        let watermark = &mut self.watermarks_ms[port];
        *watermark = (*watermark).max(watermark_ms);
        if port == 1 {
            self.release_waiting(out)?;
        }
        self.sweep();
        Ok(())
    }

    /// Rows come out in the left side's time: no earlier than the oldest
    /// waiting row or the left watermark.
    fn output_watermark(&self, _input_watermark_ms: i64) -> i64 {
        if self.watermarks_ms == [i64::MAX; 2] {
            return i64::MAX;
        }
        self.left_cutoff()
    }

    fn late_rows(&self) -> u64 {
        self.late
    }

    fn state_bytes(&self) -> usize {
        self.right_batches.bytes
            + self.left_batches.bytes
            + self.table.bytes()
            + self.version_count * std::mem::size_of::<Version>()
            + self
                .spec
                .right_weight
                .map_or(0, |_| self.version_count * std::mem::size_of::<Digest>())
            + self.versions.capacity() * std::mem::size_of::<Vec<Version>>()
            + self.waiting.capacity() * std::mem::size_of::<Waiting>()
    }
}

/// A changelog batch's weights and the digests of its rows' values (the
/// weight left out).
fn changes(rows: &RecordBatch, weight: usize) -> Result<(Int64Array, Vec<Digest>)> {
    let weights = rows
        .column(weight)
        .as_any()
        .downcast_ref::<Int64Array>()
        .filter(|w| w.null_count() == 0)
        .ok_or_else(|| {
            Error::new(
                ErrorCode::Execution,
                "an ASOF join's changelog side has no Int64 weights without NULLs",
            )
        })?
        .clone();
    let values: Vec<usize> = (0..rows.num_columns()).filter(|&c| c != weight).collect();
    let digests = laminar_state::row_digests(&rows.project(&values)?)?.ok_or_else(|| {
        Error::new(
            ErrorCode::Unsupported,
            "an ASOF join cannot compare the rows of its changelog side (a column type without a row encoding)",
        )
    })?;
    Ok((weights, digests))
}
