//! A shard's part of a checkpoint: aligning its lanes at the cut, sending
//! markers down its exchanges, copying its state, and loading a copy back
//! at recovery (the protocol is described in `checkpoint.rs`).

use std::sync::Arc;

use laminar_runtime::{Error, ErrorCode, Result};
use laminar_wal::WalWriter;

use crate::checkpoint::ShardSnapshot;
use crate::pipeline::{Ingress, Lane, ShardProgram};
use crate::subscription::Emitted;

impl ShardProgram {
    /// Whether every lane of `input` is at the pending checkpoint's cut.
    fn input_at_cut(&self, input: usize) -> bool {
        self.lanes
            .iter()
            .filter(|lane| lane.input == input)
            .all(Lane::at_cut)
    }

    /// Sends the checkpoint's marker down every exchange whose inputs are
    /// all at the cut, and takes the shard's checkpoint once every input
    /// is. Returns whether anything moved.
    pub(crate) async fn advance_checkpoint(&mut self, writer: &mut Option<WalWriter>) -> bool {
        let Some((barrier, mut marked)) = self.checkpoint.take() else {
            return false;
        };
        let mut moved = false;
        for (e, marked) in marked.iter_mut().enumerate() {
            if *marked {
                continue;
            }
            let ready = self.exchanges[e]
                .feeding_inputs
                .iter()
                .all(|&input| self.input_at_cut(input));
            if ready {
                let epoch = barrier.epoch;
                self.exchanges[e].send_to_all(|| Ingress::Barrier { epoch });
                *marked = true;
                moved = true;
            }
        }
        let aligned = marked.iter().all(|&m| m)
            && (0..self.inputs.len()).all(|input| self.input_at_cut(input))
            && self.group.is_empty();
        if !aligned {
            self.checkpoint = Some((barrier, marked));
            return moved;
        }
        let snapshot = self.snapshot(writer).await;
        if snapshot.is_ok() {
            // Subscribers that take part (materialized views) learn where
            // the checkpoint falls among the stream's batches.
            for stream in 0..self.streams.len() {
                let outputs = &mut self.streams[stream].outputs;
                let mut i = 0;
                while i < outputs.len() {
                    let marker = Emitted {
                        batch: arrow::array::RecordBatch::new_empty(Arc::new(
                            arrow::datatypes::Schema::empty(),
                        )),
                        origin: std::time::Instant::now(),
                        barrier: Some(Arc::clone(&barrier)),
                    };
                    if outputs[i]
                        .push(marker, std::time::Instant::now())
                        .await
                        .is_err()
                    {
                        outputs.swap_remove(i);
                    } else {
                        i += 1;
                    }
                }
            }
        }
        barrier.report_shard(self.shard, snapshot);
        self.last_epoch = self.last_epoch.max(barrier.epoch);
        self.release_lanes();
        true
    }

    /// The shard's state at the cut, with the WAL synced up to it.
    async fn snapshot(&mut self, writer: &mut Option<WalWriter>) -> Result<ShardSnapshot> {
        if let Some(failure) = self.failure.get() {
            return Err(failure.clone());
        }
        let covered_lsn = match writer.as_mut() {
            Some(w) => {
                // Recovery replays after this LSN, so the log must reach
                // it on disk before the manifest names it.
                w.commit(true).await?;
                w.next_lsn() - 1
            }
            None => {
                return Err(Error::new(
                    ErrorCode::Checkpoint,
                    "checkpoints need a storage directory",
                ))
            }
        };
        let mut streams = Vec::with_capacity(self.streams.len());
        for stream in &mut self.streams {
            streams.push((stream.watermark_ms, stream.operator.snapshot()?));
        }
        let mut snapshot = ShardSnapshot {
            covered_lsn,
            streams,
            inputs: self.inputs.iter().map(|i| i.watermark_ms).collect(),
            ..Default::default()
        };
        for lane in &self.lanes {
            if let Some(sender) = lane.exchange_sender {
                snapshot
                    .exchange_lanes
                    .push((lane.input, sender, lane.watermark_ms));
            } else if let Some((generation, handle)) = lane.log_key {
                let key = crate::storage::lane_key(generation, handle);
                snapshot
                    .source_lanes
                    .push((lane.input, key, lane.watermark_ms));
            }
        }
        Ok(snapshot)
    }

    /// Lets every lane run on past the cut.
    fn release_lanes(&mut self) {
        for lane in &mut self.lanes {
            lane.cut = None;
            lane.at_barrier = false;
        }
    }

    /// Gives up a pending checkpoint (the shard stops).
    pub(crate) fn abandon_checkpoint(&mut self, why: &str) {
        if let Some((barrier, _)) = self.checkpoint.take() {
            self.last_epoch = self.last_epoch.max(barrier.epoch);
            barrier.report_shard(
                self.shard,
                Err(Error::new(
                    ErrorCode::Checkpoint,
                    format!("checkpoint {} abandoned: {why}", barrier.epoch),
                )),
            );
        }
        self.release_lanes();
    }

    /// Recovery: loads a checkpoint's state into the newly built shard.
    pub(crate) fn load_snapshot(&mut self, snapshot: ShardSnapshot) -> Result<()> {
        let mismatch = |what: &str| {
            Error::new(
                ErrorCode::StorageMismatch,
                format!("the checkpoint's {what} do not match this pipeline's"),
            )
        };
        if snapshot.streams.len() > self.streams.len() || snapshot.inputs.len() != self.inputs.len()
        {
            return Err(mismatch("streams or inputs"));
        }
        for (stream, (watermark_ms, state)) in snapshot.streams.into_iter().enumerate() {
            let target = &mut self.streams[stream];
            target.watermark_ms = watermark_ms;
            target.operator.restore(&state)?;
        }
        for (input, watermark_ms) in snapshot.inputs.into_iter().enumerate() {
            self.inputs[input].watermark_ms = watermark_ms;
        }
        for (input, sender, watermark_ms) in snapshot.exchange_lanes {
            let lane = self
                .lanes
                .iter_mut()
                .find(|l| l.input == input && l.exchange_sender == Some(sender))
                .ok_or_else(|| mismatch("exchanges"))?;
            lane.watermark_ms = watermark_ms;
        }
        // The handles of the run that took the checkpoint: virtual lanes
        // until the replay closes them, as it does for every handle of an
        // earlier run.
        for (input, key, watermark_ms) in snapshot.source_lanes {
            let mut lane = Lane::virtual_lane(key, input);
            lane.watermark_ms = watermark_ms;
            self.lanes.push(lane);
        }
        Ok(())
    }
}
