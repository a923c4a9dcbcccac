//! A shard's write-ahead logging: the part of the shard loop that writes
//! a turn's source messages to the shard's WAL before they run (see
//! `pipeline.rs` for the loop, `storage.rs` for what the records hold).

use std::time::Instant;

use laminar_runtime::{Error, ErrorCode, Result};
use laminar_wal::WalWriter;

use crate::pipeline::{Ingress, ShardProgram, MAX_KEPT_ERRORS};
use crate::storage::ASYNC_SYNC_INTERVAL;

/// A shard's WAL settings; the shard opens the writer when it starts (a
/// DMA file belongs to the thread that opened it, so the writer lives in
/// [`ShardProgram::run`], not here).
pub(crate) struct ShardWal {
    pub dir: std::path::PathBuf,
    pub shard: u32,
    pub generation: u32,
    pub tail: Option<laminar_wal::Tail>,
    pub config: laminar_wal::WalConfig,
    /// `Durability::Sync`: every group is synced before it is processed.
    pub sync: bool,
    /// Written but not yet synced (`Durability::Async`).
    pub unsynced: bool,
    pub last_sync: Instant,
}

impl ShardProgram {
    /// Writes one record outside a group (a lane opening or closing): in
    /// order with the groups around it, synced with the next one.
    pub(crate) async fn log_now(
        &mut self,
        writer: &mut Option<WalWriter>,
        kind: u16,
        payload: &[u8],
    ) {
        if self.failure.get().is_some() {
            return;
        }
        let Some(w) = writer.as_mut() else {
            return;
        };
        let written = match w.append(kind, payload).await {
            Ok(_) => w.submit(false).await,
            Err(e) => Err(e),
        };
        match written {
            Ok(()) => {
                if let Some(wal) = self.wal.as_mut() {
                    wal.unsynced |= !wal.sync;
                }
            }
            Err(e) => self.fail(e),
        }
    }

    /// Opens the shard's WAL writer, continuing where recovery found the
    /// log's end.
    pub(crate) async fn open_wal(&mut self) -> Option<WalWriter> {
        let wal = self.wal.as_mut()?;
        let opened = laminar_wal::WalWriter::open(
            &wal.dir,
            wal.shard,
            wal.generation,
            wal.tail.as_ref(),
            wal.config,
        )
        .await;
        match opened {
            Ok(writer) => Some(writer),
            Err(e) => {
                self.fail(e);
                None
            }
        }
    }

    /// Logs the turn's source messages as one group: appends their records
    /// and submits one write (and in `Durability::Sync` one sync), runs the
    /// messages while the disk works, then, in `Sync`, waits for the disk
    /// and acknowledges them to their handles. Nothing is acknowledged
    /// before it is durable; results may leave before their input is (after
    /// a crash that input is not recovered, and in `Sync` its push never
    /// returned). If the WAL refuses the group, none of it runs.
    pub(crate) async fn log_group(&mut self, writer: &mut Option<WalWriter>) {
        let mut group = std::mem::take(&mut self.group);
        let submitted = Instant::now();
        match self.append_group(writer, &group).await {
            Ok(()) => {
                for (lane, _) in &group {
                    self.lanes[*lane].logged += 1;
                }
                for (lane, message) in group.drain(..) {
                    self.handle(lane, message).await;
                }
                let sync = self.wal.as_ref().is_some_and(|wal| wal.sync);
                if let (true, Some(w)) = (sync, writer.as_mut()) {
                    match w.wait().await {
                        Ok(()) => self.counters.wal.record(submitted.elapsed()),
                        Err(e) => self.fail(e),
                    }
                }
                if self.failure.get().is_none() {
                    for lane in &self.lanes {
                        if let Some(ack) = &lane.ack {
                            ack.advance(lane.logged);
                        }
                    }
                }
            }
            Err(e) => {
                group.clear();
                self.fail(e);
            }
        }
        self.group = group;
    }

    pub(crate) async fn append_group(
        &mut self,
        writer: &mut Option<WalWriter>,
        group: &[(usize, Ingress)],
    ) -> Result<()> {
        if let Some(failure) = self.failure.get() {
            return Err(failure.clone());
        }
        let wal = self.wal.as_mut().expect("logging needs a WAL");
        let Some(writer) = writer.as_mut() else {
            return Err(Error::new(ErrorCode::WalWrite, "the WAL is not open"));
        };
        for (_, message) in group {
            match message {
                Ingress::Batch {
                    record: Some((kind, payload)),
                    ..
                }
                | Ingress::Watermark {
                    record: Some((kind, payload)),
                    ..
                } => {
                    writer.append(*kind, payload).await?;
                }
                _ => {
                    return Err(Error::new(
                        ErrorCode::Execution,
                        "a message of a logged lane came without its WAL record",
                    ))
                }
            }
        }
        writer.submit(wal.sync).await?;
        if wal.sync {
            wal.last_sync = Instant::now();
        } else {
            wal.unsynced = true;
        }
        Ok(())
    }

    /// In `Durability::Async`, syncs what was written when the interval
    /// has passed (or always, with `now`: before sleeping or exiting).
    pub(crate) async fn sync_wal(&mut self, writer: &mut Option<WalWriter>, now: bool) {
        let Some(wal) = self.wal.as_mut() else {
            return;
        };
        if !wal.unsynced || !(now || wal.last_sync.elapsed() >= ASYNC_SYNC_INTERVAL) {
            return;
        }
        let Some(writer) = writer.as_mut() else {
            return;
        };
        wal.unsynced = false;
        wal.last_sync = Instant::now();
        let started = Instant::now();
        match writer.commit(true).await {
            Ok(_) => self.counters.wal.record(started.elapsed()),
            Err(e) => self.fail(e),
        }
    }

    /// The WAL failed: stop accepting input, everywhere. What was
    /// acknowledged is on disk; what was not is not processed either.
    pub(crate) fn fail(&mut self, error: Error) {
        log::error!("{error}");
        if self.failure.set(error.clone()).is_ok() {
            if let Ok(mut errors) = self.errors.lock() {
                if errors.len() < MAX_KEPT_ERRORS {
                    errors.push(error);
                }
            }
        }
        for lane in &self.lanes {
            if let Some(ack) = &lane.ack {
                ack.waker.wake();
            }
        }
    }
}
