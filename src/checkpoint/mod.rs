//! Checkpoints: a consistent copy of the whole pipeline's state, so that
//! recovery replays only the WAL written after it and the WAL before it can
//! go.
//!
//! The cut. Every push is stamped with the checkpoint epoch requested when
//! it began; the first push a handle stamps with a new epoch first puts
//! that epoch's marker on each of its lanes, in band ([`HandleCut`]). A
//! handle that does not push after the request sends no marker; its cut is
//! what it had delivered, which it publishes after every push (a seqlock).
//! The coordinator ([`take`]) bumps the requested epoch, waits for pushes
//! stamped earlier to finish, reads each handle's counts as of its marker
//! (or its latest ones), and sends each shard a [`Barrier`] carrying them.
//! A shard stops reading a handle's lane at its marker or its count,
//! whichever comes first (the same position). Once every input feeding an
//! exchange is at the cut, the shard sends the marker down that exchange
//! to every shard, after what it produced before the cut; a shard stops
//! reading an exchange lane at its marker. When all of a shard's inputs
//! are at the cut it syncs its WAL, notes the last LSN written (everything
//! up to it is before the cut, since a shard logs messages in the order it
//! runs them), copies its state, puts a marker into every subscription ring
//! and reports; then its lanes move on (`shard_checkpoint.rs`).
//! Chandy-Lamport with aligned barriers: the copies together are the state
//! after exactly the pushes before the cut, and no push straddles it.
//!
//! Materialized views and retained outputs read their stream's rings up to
//! the markers of all shards and report their contents there. The
//! coordinator writes the parts ([`files`]), syncs them, then the manifest:
//! a checkpoint exists once its manifest does. Recovery loads it into the
//! shards before anything else, then replays each shard's WAL after the
//! manifest's LSN for it.

pub(crate) mod files;
mod rows_file;
mod shard_file;

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use laminar_runtime::{Error, ErrorCode, Result};

use crate::pipeline::{Control, Pipeline};

pub(crate) use files::Bases;
use files::Gathered;
pub(crate) use files::{load, Manifest, Restored};
pub(crate) use shard_file::ShardSnapshot;

/// A source handle's side of checkpoints.
///
/// Each push is stamped with the checkpoint epoch requested when it
/// began. The first push a handle stamps with a new epoch first puts that
/// epoch's marker on every one of its lanes, in band: everything after
/// the marker is after the cut. A handle that has not pushed since the
/// request sends no marker; its cut is what it had delivered (the
/// coordinator waits for pushes stamped before the request to finish, so
/// that count is stable), and the shard stops reading its lane there.
/// The counts are published with a seqlock (one writer: the handle).
pub(crate) struct HandleCut {
    /// The handle's lane key (generation, handle).
    pub key: u64,
    pub source: usize,
    /// 0 while idle; `epoch + 1` while a push stamped `epoch` is under way.
    pushing: AtomicU64,
    /// Odd while the handle writes the fields below.
    version: AtomicU64,
    /// The epoch of the handle's last marker, and its counts then.
    entered: AtomicU64,
    at_entry: Counts,
    /// Its counts after its last push.
    latest: Counts,
}

struct Counts {
    pushes: AtomicU64,
    rows: AtomicU64,
    /// `[shard]` -> messages put on the handle's lane to that shard.
    sent: Vec<AtomicU64>,
}

impl Counts {
    fn new(shards: usize) -> Self {
        Self {
            pushes: AtomicU64::new(0),
            rows: AtomicU64::new(0),
            sent: (0..shards).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    fn store(&self, pushes: u64, rows: u64, sent: &[u64]) {
        self.pushes.store(pushes, Ordering::Relaxed);
        self.rows.store(rows, Ordering::Relaxed);
        for (slot, &n) in self.sent.iter().zip(sent) {
            slot.store(n, Ordering::Relaxed);
        }
    }

    fn load(&self) -> Cut {
        Cut {
            pushes: self.pushes.load(Ordering::Relaxed),
            rows: self.rows.load(Ordering::Relaxed),
            sent: self
                .sent
                .iter()
                .map(|n| n.load(Ordering::Relaxed))
                .collect(),
        }
    }
}

/// One handle's part of a cut: what it delivered before it.
#[derive(Debug, Clone)]
pub(crate) struct Cut {
    pub pushes: u64,
    pub rows: u64,
    pub sent: Vec<u64>,
}

impl HandleCut {
    /// A handle with nothing delivered yet; it learns its starting epoch
    /// through [`HandleCut::enter`].
    pub fn new(key: u64, source: usize, shards: usize) -> Self {
        Self {
            key,
            source,
            pushing: AtomicU64::new(0),
            version: AtomicU64::new(0),
            entered: AtomicU64::new(0),
            at_entry: Counts::new(shards),
            latest: Counts::new(shards),
        }
    }

    /// Starts a push: returns the epoch to stamp it with.
    pub fn begin(&self, requested: &AtomicU64) -> u64 {
        loop {
            let epoch = requested.load(Ordering::SeqCst);
            self.pushing.store(epoch + 1, Ordering::SeqCst);
            // Either the coordinator sees this push as under way, or the
            // push sees its request (both orders are SeqCst).
            if requested.load(Ordering::SeqCst) == epoch {
                return epoch;
            }
        }
    }

    /// The push has ended (delivered or failed).
    pub fn end(&self) {
        self.pushing.store(0, Ordering::Release);
    }

    fn write(&self, update: impl FnOnce()) {
        let version = self.version.load(Ordering::Relaxed);
        self.version.store(version + 1, Ordering::Relaxed);
        std::sync::atomic::fence(Ordering::Release);
        update();
        self.version.store(version + 2, Ordering::Release);
    }

    /// The handle moved to `epoch` (its marker is on its lanes) having
    /// delivered this much before it.
    pub fn enter(&self, epoch: u64, pushes: u64, rows: u64, sent: &[u64]) {
        self.write(|| {
            self.entered.store(epoch, Ordering::Relaxed);
            self.at_entry.store(pushes, rows, sent);
        });
    }

    /// Called by the handle's own thread after every whole push.
    pub fn publish(&self, pushes: u64, rows: u64, sent: &[u64]) {
        self.write(|| self.latest.store(pushes, rows, sent));
    }

    /// The coordinator, after requesting `epoch`: waits until no push
    /// stamped with an earlier epoch is under way.
    fn wait_for_earlier_pushes(
        &self,
        epoch: u64,
        abort: &impl Fn() -> Option<Error>,
    ) -> Result<()> {
        let backoff = crossbeam_utils::Backoff::new();
        loop {
            let pushing = self.pushing.load(Ordering::SeqCst);
            if pushing == 0 || pushing > epoch {
                return Ok(());
            }
            if let Some(error) = abort() {
                return Err(error);
            }
            if backoff.is_completed() {
                std::thread::sleep(Duration::from_micros(50));
            } else {
                backoff.snooze();
            }
        }
    }

    /// What the handle delivered before `epoch`'s cut.
    fn cut(&self, epoch: u64) -> Cut {
        let mut backoff = crossbeam_utils::Backoff::new();
        loop {
            let before = self.version.load(Ordering::Acquire);
            if before.is_multiple_of(2) {
                let cut = if self.entered.load(Ordering::Relaxed) >= epoch {
                    self.at_entry.load()
                } else {
                    self.latest.load()
                };
                std::sync::atomic::fence(Ordering::Acquire);
                if self.version.load(Ordering::Relaxed) == before {
                    return cut;
                }
            }
            if backoff.is_completed() {
                std::thread::yield_now();
                backoff = crossbeam_utils::Backoff::new();
            } else {
                backoff.snooze();
            }
        }
    }
}

/// A checkpoint on its way through the pipeline: what shards and views
/// read, and where they report.
pub(crate) struct Barrier {
    pub epoch: u64,
    /// Lane key -> `[shard]` -> messages before the cut.
    pub cuts: HashMap<u64, Vec<u64>>,
    reports: Mutex<Reports>,
    reported: Condvar,
}

#[derive(Default)]
struct Reports {
    shards: Vec<Option<Result<ShardSnapshot>>>,
    views: Vec<Option<Result<Vec<RecordBatch>>>>,
}

impl std::fmt::Debug for Barrier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Barrier")
            .field("epoch", &self.epoch)
            .finish()
    }
}

impl Barrier {
    pub fn new(epoch: u64, cuts: HashMap<u64, Vec<u64>>, shards: usize, views: usize) -> Self {
        Self {
            epoch,
            cuts,
            reports: Mutex::new(Reports {
                shards: (0..shards).map(|_| None).collect(),
                views: (0..views).map(|_| None).collect(),
            }),
            reported: Condvar::new(),
        }
    }

    /// Messages of lane `key` to `shard` before the cut (0 for a handle
    /// the cut does not know).
    pub fn limit(&self, key: u64, shard: usize) -> u64 {
        self.cuts
            .get(&key)
            .and_then(|sent| sent.get(shard).copied())
            .unwrap_or(0)
    }

    pub fn report_shard(&self, shard: usize, snapshot: Result<ShardSnapshot>) {
        if let Ok(mut reports) = self.reports.lock() {
            if let Some(slot) = reports.shards.get_mut(shard) {
                *slot = Some(snapshot);
            }
            self.reported.notify_all();
        }
    }

    pub fn report_view(&self, view: usize, contents: Result<Vec<RecordBatch>>) {
        if let Ok(mut reports) = self.reports.lock() {
            if let Some(slot) = reports.views.get_mut(view) {
                *slot = Some(contents);
            }
            self.reported.notify_all();
        }
    }

    /// Waits for every shard and view, giving up when `abort` says so.
    fn wait(
        &self,
        abort: impl Fn() -> Option<Error>,
    ) -> Result<(Vec<ShardSnapshot>, Vec<Vec<RecordBatch>>)> {
        let mut reports = self.reports.lock().map_err(|_| poisoned())?;
        loop {
            if reports.shards.iter().all(Option::is_some)
                && reports.views.iter().all(Option::is_some)
            {
                let shards = reports
                    .shards
                    .iter_mut()
                    .map(|s| s.take().expect("checked"))
                    .collect::<Result<Vec<_>>>()?;
                let views = reports
                    .views
                    .iter_mut()
                    .map(|v| v.take().expect("checked"))
                    .collect::<Result<Vec<_>>>()?;
                return Ok((shards, views));
            }
            if let Some(error) = abort() {
                return Err(error);
            }
            reports = self
                .reported
                .wait_timeout(reports, Duration::from_millis(50))
                .map_err(|_| poisoned())?
                .0;
        }
    }
}

fn poisoned() -> Error {
    Error::new(
        ErrorCode::Checkpoint,
        "checkpoint state poisoned by a panic",
    )
}

/// What a finished checkpoint did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointInfo {
    /// The checkpoint's number (one more than the last, across restarts).
    pub epoch: u64,
    /// Bytes of checkpoint files written.
    pub bytes: u64,
    /// WAL segment files deleted because the checkpoint covers them.
    pub wal_segments_released: usize,
    /// Shards whose state was written as a patch over an earlier
    /// checkpoint's (the rest were written whole).
    pub patched_shards: usize,
    /// Files of views' and sources' retained rows written as patches.
    pub patched_files: usize,
    /// From the request to the manifest being durable.
    pub duration: Duration,
}

/// The error for a pipeline with streams whose state cannot be
/// checkpointed yet.
pub(crate) fn not_supported(streams: &[String]) -> Error {
    Error::new(
        ErrorCode::Unsupported,
        format!(
            "checkpoints are not supported yet for stream(s) {}: their operators cannot save their state",
            streams.join(", ")
        ),
    )
    .with_hint("leave checkpoints off for this pipeline: recovery then replays the whole WAL")
}

/// Checkpoint figures for metrics.
#[derive(Debug, Default)]
pub(crate) struct CheckpointCounters {
    pub completed: AtomicU64,
    pub failed: AtomicU64,
    pub last_epoch: AtomicU64,
    pub last_duration_us: AtomicU64,
    pub last_bytes: AtomicU64,
    pub last_patched_files: AtomicU64,
    pub last_files: AtomicU64,
}

/// Takes a checkpoint of a running pipeline (blocking: call it off the
/// shards and off async tasks).
pub(crate) fn take(pipeline: &Pipeline, storage_dir: &Path) -> Result<CheckpointInfo> {
    let result = take_inner(pipeline, storage_dir);
    let counters = &pipeline.checkpoint_counters;
    match &result {
        Ok(info) => {
            counters.completed.fetch_add(1, Ordering::Relaxed);
            counters.last_epoch.store(info.epoch, Ordering::Relaxed);
            counters
                .last_duration_us
                .store(info.duration.as_micros() as u64, Ordering::Relaxed);
            counters.last_bytes.store(info.bytes, Ordering::Relaxed);
            let patched = info.patched_shards + info.patched_files;
            counters
                .last_patched_files
                .store(patched as u64, Ordering::Relaxed);
            let files = pipeline.shards + pipeline.views + pipeline.sources.len();
            counters.last_files.store(files as u64, Ordering::Relaxed);
        }
        Err(_) => {
            counters.failed.fetch_add(1, Ordering::Relaxed);
        }
    }
    result
}

fn take_inner(pipeline: &Pipeline, storage_dir: &Path) -> Result<CheckpointInfo> {
    let started = Instant::now();
    pipeline.check_running()?;
    if !pipeline.not_checkpointable.is_empty() {
        return Err(not_supported(&pipeline.not_checkpointable));
    }
    if let Some(failure) = pipeline.failure.get() {
        return Err(failure.clone());
    }
    // Recovery's replay lanes are not logged again: a cut taken while they
    // run would miss what they still have to apply.
    pipeline.replayed.wait_blocking()?;
    let mut next_epoch = pipeline.next_epoch.lock().map_err(|_| poisoned())?;
    // Shutdown waits for the checkpoint holding this lock; one that gets
    // it after the stop must not start writing.
    pipeline.check_running()?;
    let epoch = *next_epoch;
    // An epoch is used once, whatever happens to this checkpoint: shards
    // and handles may have moved past it.
    *next_epoch = epoch + 1;
    let abort = || {
        if let Some(failure) = pipeline.failure.get() {
            return Some(failure.clone());
        }
        pipeline.stopped.load(Ordering::Acquire).then(|| {
            Error::new(
                ErrorCode::Checkpoint,
                "the pipeline stopped during a checkpoint",
            )
        })
    };
    // From here on, every push is stamped with this epoch; a handle that
    // connects later starts at it.
    pipeline.requested_epoch.store(epoch, Ordering::SeqCst);
    files::pause_point("checkpoint-requested");
    // Nothing from here to the barriers' sending may return early: a
    // handle may already have put this epoch's marker on its lanes, and
    // the shards must hear of the epoch to move past it.
    // A handle only the registry still holds was dropped: its cut is
    // final, and once this checkpoint stands it is retired (the registry
    // would otherwise grow with every handle ever made, e.g. one per
    // `INSERT INTO source`).
    let (handles, retired): (Vec<Arc<HandleCut>>, Vec<bool>) = {
        let registry = match pipeline.handle_cuts.lock() {
            Ok(registry) => registry,
            Err(poisoned) => poisoned.into_inner(),
        };
        registry
            .iter()
            .map(|h| {
                // Read before cloning, which counts too.
                let dropped = Arc::strong_count(h) == 1;
                (Arc::clone(h), dropped)
            })
            .unzip()
    };
    let mut cuts: Vec<(Arc<HandleCut>, Cut)> = Vec::with_capacity(handles.len());
    let mut waited = Ok(());
    for handle in handles {
        if waited.is_ok() {
            waited = handle.wait_for_earlier_pushes(epoch, &abort);
        }
        let cut = handle.cut(epoch);
        cuts.push((handle, cut));
    }
    // The shards must hear of the epoch even if this checkpoint is given
    // up: a lane that delivered its marker waits for it.
    let barrier = Arc::new(Barrier::new(
        epoch,
        cuts.iter().map(|(h, c)| (h.key, c.sent.clone())).collect(),
        pipeline.shards,
        pipeline.views,
    ));
    let mut sent = Ok(());
    for control in &pipeline.controls {
        if let Err(e) = control.send(Control::Checkpoint(Arc::clone(&barrier))) {
            sent = Err(e);
        }
    }
    sent?;
    waited?;
    let (shards, views) = barrier.wait(abort)?;
    let pushes: HashMap<u64, u64> = cuts.iter().map(|(h, c)| (h.key, c.pushes)).collect();
    let mut retired_rows = pipeline.retired_rows.lock().map_err(|_| poisoned())?;
    let mut rows: Vec<u64> = pipeline
        .recovered_rows
        .iter()
        .zip(retired_rows.iter())
        .map(|(recovered, retired)| recovered + retired)
        .collect();
    for (handle, cut) in &cuts {
        if let Some(r) = rows.get_mut(handle.source) {
            *r += cut.rows;
        }
    }
    let gathered = Gathered {
        epoch,
        shards,
        views,
        retained: pipeline
            .sources
            .iter()
            .map(|s| s.retention.snapshot_at(&pushes))
            .collect(),
        rows,
        handles: {
            let mut handles: Vec<(u64, u64)> = pushes.into_iter().collect();
            handles.sort_unstable();
            handles
        },
    };
    files::pause_point("checkpoint-gathered");
    let written = {
        let mut bases = pipeline.checkpoint_bases.lock().map_err(|_| poisoned())?;
        files::write(storage_dir, gathered, &mut bases)?
    };
    let bytes = written.bytes;
    let mut gone = std::collections::HashSet::new();
    for ((handle, cut), _) in cuts.iter().zip(&retired).filter(|(_, &r)| r) {
        retired_rows[handle.source] += cut.rows;
        pipeline.sources[handle.source].retention.untag(handle.key);
        gone.insert(handle.key);
    }
    if !gone.is_empty() {
        let mut registry = match pipeline.handle_cuts.lock() {
            Ok(registry) => registry,
            Err(poisoned) => poisoned.into_inner(),
        };
        registry.retain(|h| !gone.contains(&h.key));
    }
    drop(retired_rows);
    drop(next_epoch);
    let info = CheckpointInfo {
        epoch,
        bytes,
        wal_segments_released: written.wal_segments_released,
        patched_shards: written.patched_shards,
        patched_files: written.patched_files,
        duration: started.elapsed(),
    };
    log::info!(
        "checkpoint {epoch}: {bytes} bytes in {:?} ({} of {} shard(s) as patches), {} WAL segment(s) released",
        info.duration,
        info.patched_shards,
        pipeline.shards,
        info.wal_segments_released
    );
    Ok(info)
}

/// The next epoch after what the directory holds.
pub(crate) fn next_epoch(restored: Option<&Manifest>) -> u64 {
    restored.map_or(1, |m| m.epoch + 1)
}
