//! A shard's checkpoint file: its operators' state, watermarks and lanes,
//! written whole or as patches over the shard's file of an earlier
//! checkpoint (its *base*).
//!
//! Layout (little-endian):
//!
//! ```text
//! 0   8  magic "LDBCKPT1"
//! 8   4  format version (2; version 1 files, without the base field, are read too)
//! 12  4  shard
//! 16  8  epoch
//! 24  8  last LSN the state covers
//! 32  8  base epoch: this epoch for a file that holds its state whole
//! 40  .. sections: kind u32, a u32, b u32, length u64, payload
//! end 4  CRC32C of every byte before it
//! ```
//!
//! Section kinds: 1 a stream's output watermark (a = stream, i64), 2 one
//! batch of a stream's operator state (a = stream, an Arrow IPC stream), 3
//! an input's watermark (a = input, i64), 4 a source handle's lane (a =
//! input, u64 lane key then i64 watermark), 5 an exchange lane (a = input,
//! b = sending shard, i64 watermark), 6 one batch of a stream's operator
//! state as a patch over a batch of the base's same stream (a = stream;
//! payload in `laminar_state::patch`). A stream's batches are its kind 2
//! and 6 sections in file order. A base is always a whole file, so
//! recovery reads at most two files per shard.
//!
//! When to patch ([`plan`]): the coordinator keeps each shard's base as
//! row digests (16 bytes a row). A checkpoint diffs the shard's state
//! against them and writes a patch if it writes at most half of the rows;
//! otherwise the file is whole and becomes the new base.

use std::path::Path;

use arrow::array::RecordBatch;
use laminar_runtime::Result;
use laminar_state::{Base, Part};

use super::files::{
    corrupt, ipc_bytes, part_section, seal, section_parts, section_payload, unseal,
};

const MAGIC: &[u8; 8] = b"LDBCKPT1";
const VERSION: u32 = 2;
const HEADER_BYTES: usize = 40;
const V1_HEADER_BYTES: usize = 32;
const SECTION_BYTES: usize = 20;
const STREAM_WATERMARK: u32 = 1;
const STREAM_STATE: u32 = super::files::WHOLE_SECTION;
const INPUT_WATERMARK: u32 = 3;
const SOURCE_LANE: u32 = 4;
const EXCHANGE_LANE: u32 = 5;
const STREAM_STATE_PATCH: u32 = super::files::PATCH_SECTION;

/// The state of one shard at a checkpoint.
#[derive(Debug, Default)]
pub(crate) struct ShardSnapshot {
    pub covered_lsn: u64,
    /// `[stream]` -> (output watermark, operator state).
    pub streams: Vec<(i64, Vec<RecordBatch>)>,
    /// `[input]` -> watermark.
    pub inputs: Vec<i64>,
    /// Source handles' lanes: (input, lane key, watermark).
    pub source_lanes: Vec<(usize, u64, i64)>,
    /// Exchange lanes: (input, sending shard, watermark).
    pub exchange_lanes: Vec<(usize, usize, i64)>,
}

/// A shard's base as the coordinator keeps it between checkpoints.
pub(crate) struct ShardBase {
    pub epoch: u64,
    /// `[stream]` -> digests of its state batches.
    streams: Vec<Base>,
}

/// How a checkpoint writes a shard's state.
pub(crate) enum Plan {
    /// Whole; once the checkpoint stands, this is the shard's base.
    Whole(ShardBase),
    /// `[stream]` -> parts over the base of `epoch`.
    Patch { base: u64, streams: Vec<Vec<Part>> },
}

/// Decides how to write `snapshot`, given the shard's current base.
pub(crate) fn plan(snapshot: &ShardSnapshot, base: Option<&ShardBase>, epoch: u64) -> Result<Plan> {
    let streams = match base.filter(|b| b.streams.len() == snapshot.streams.len()) {
        Some(base) => {
            let diffs = snapshot
                .streams
                .iter()
                .zip(&base.streams)
                .map(|((_, batches), b)| b.diff(batches))
                .collect::<Result<Vec<_>>>()?;
            let rows: usize = diffs.iter().map(|d| d.rows).sum();
            let written: usize = diffs.iter().map(|d| d.written_rows).sum();
            if written * 2 <= rows {
                return Ok(Plan::Patch {
                    base: base.epoch,
                    streams: diffs.into_iter().map(|d| d.parts).collect(),
                });
            }
            // Whole after all: the digests the diffs took make the base.
            diffs
                .into_iter()
                .zip(&snapshot.streams)
                .map(|(diff, (_, batches))| diff.into_base(batches))
                .collect::<Result<_>>()?
        }
        None => snapshot
            .streams
            .iter()
            .map(|(_, batches)| Base::new(batches))
            .collect::<Result<_>>()?,
    };
    Ok(Plan::Whole(ShardBase { epoch, streams }))
}

fn section(out: &mut Vec<u8>, kind: u32, a: usize, b: usize, payload: &[u8]) {
    out.extend_from_slice(&kind.to_le_bytes());
    out.extend_from_slice(&(a as u32).to_le_bytes());
    out.extend_from_slice(&(b as u32).to_le_bytes());
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    out.extend_from_slice(payload);
}

/// A shard file read back, its patches not yet applied.
pub(crate) struct ShardFile {
    /// Everything but the streams' batches.
    pub snapshot: ShardSnapshot,
    /// The epoch of the file its patches apply to (its own if none).
    pub base: u64,
    /// `[stream]` -> its batches as written.
    parts: Vec<Vec<Part>>,
}

impl ShardFile {
    /// The snapshot, its patches applied to `base` (the base file's
    /// snapshot; `None` for a whole file).
    pub fn resolve(self, path: &Path, base: Option<&ShardSnapshot>) -> Result<ShardSnapshot> {
        let mut snapshot = self.snapshot;
        for (stream, parts) in self.parts.into_iter().enumerate() {
            let old = base
                .and_then(|b| b.streams.get(stream))
                .map_or(&[][..], |(_, batches)| &batches[..]);
            snapshot.streams[stream].1 =
                laminar_state::apply(old, parts).map_err(|e| corrupt(path, e))?;
        }
        Ok(snapshot)
    }
}

impl ShardSnapshot {
    /// The file's bytes: the state whole, or as `patch`'s parts over the
    /// base of that epoch.
    pub fn encode(
        &self,
        shard: usize,
        epoch: u64,
        patch: Option<(u64, &[Vec<Part>])>,
    ) -> Result<Vec<u8>> {
        let mut out = Vec::with_capacity(4096);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.extend_from_slice(&(shard as u32).to_le_bytes());
        out.extend_from_slice(&epoch.to_le_bytes());
        out.extend_from_slice(&self.covered_lsn.to_le_bytes());
        out.extend_from_slice(&patch.map_or(epoch, |(base, _)| base).to_le_bytes());
        let mut payload = Vec::new();
        for (stream, (watermark_ms, batches)) in self.streams.iter().enumerate() {
            section(
                &mut out,
                STREAM_WATERMARK,
                stream,
                0,
                &watermark_ms.to_le_bytes(),
            );
            let parts = patch.and_then(|(_, parts)| parts.get(stream));
            match parts {
                Some(parts) => {
                    for part in parts {
                        let kind = part_section(part, &mut payload)?;
                        section(&mut out, kind, stream, 0, &payload);
                    }
                }
                None => {
                    for batch in batches {
                        payload.clear();
                        ipc_bytes(std::slice::from_ref(batch), &mut payload)?;
                        section(&mut out, STREAM_STATE, stream, 0, &payload);
                    }
                }
            }
        }
        for (input, watermark_ms) in self.inputs.iter().enumerate() {
            section(
                &mut out,
                INPUT_WATERMARK,
                input,
                0,
                &watermark_ms.to_le_bytes(),
            );
        }
        for &(input, key, watermark_ms) in &self.source_lanes {
            let mut lane = key.to_le_bytes().to_vec();
            lane.extend_from_slice(&watermark_ms.to_le_bytes());
            section(&mut out, SOURCE_LANE, input, 0, &lane);
        }
        for &(input, sender, watermark_ms) in &self.exchange_lanes {
            section(
                &mut out,
                EXCHANGE_LANE,
                input,
                sender,
                &watermark_ms.to_le_bytes(),
            );
        }
        Ok(seal(out))
    }

    pub fn decode(path: &Path, bytes: &[u8], shard: usize, epoch: u64) -> Result<ShardFile> {
        let body = unseal(path, bytes)?;
        if body.len() < V1_HEADER_BYTES || &body[..8] != MAGIC {
            return Err(corrupt(path, "not a shard checkpoint"));
        }
        let u32_at = |at: usize| u32::from_le_bytes(body[at..at + 4].try_into().expect("4"));
        let u64_at = |at: usize| u64::from_le_bytes(body[at..at + 8].try_into().expect("8"));
        let (mut at, base) = match u32_at(8) {
            1 => (V1_HEADER_BYTES, epoch),
            VERSION if body.len() >= HEADER_BYTES => (HEADER_BYTES, u64_at(32)),
            VERSION => return Err(corrupt(path, "not a shard checkpoint")),
            other => {
                return Err(corrupt(
                    path,
                    format!("format version {other}, this build reads 1 and {VERSION}"),
                ))
            }
        };
        if u32_at(12) as usize != shard || u64_at(16) != epoch {
            return Err(corrupt(path, "written for another shard or checkpoint"));
        }
        if base > epoch {
            return Err(corrupt(path, "its base is later than itself"));
        }
        let mut file = ShardFile {
            snapshot: ShardSnapshot {
                covered_lsn: u64_at(24),
                ..Default::default()
            },
            base,
            parts: Vec::new(),
        };
        let snapshot = &mut file.snapshot;
        let i64_of = |payload: &[u8]| -> Result<i64> {
            Ok(i64::from_le_bytes(
                payload
                    .get(..8)
                    .and_then(|b| b.try_into().ok())
                    .ok_or_else(|| corrupt(path, "short section"))?,
            ))
        };
        while at < body.len() {
            if body.len() - at < SECTION_BYTES {
                return Err(corrupt(path, "truncated section header"));
            }
            let kind = u32_at(at);
            let a = u32_at(at + 4) as usize;
            let b = u32_at(at + 8) as usize;
            let len = u64_at(at + 12) as usize;
            at += SECTION_BYTES;
            let payload = section_payload(path, body, &mut at, len)?;
            match kind {
                STREAM_WATERMARK | STREAM_STATE | STREAM_STATE_PATCH => {
                    if snapshot.streams.len() <= a {
                        snapshot
                            .streams
                            .resize_with(a + 1, || (i64::MIN, Vec::new()));
                        file.parts.resize_with(a + 1, Vec::new);
                    }
                    if kind == STREAM_WATERMARK {
                        snapshot.streams[a].0 = i64_of(payload)?;
                    } else {
                        file.parts[a].extend(section_parts(path, kind, payload, base != epoch)?);
                    }
                }
                INPUT_WATERMARK => {
                    if snapshot.inputs.len() <= a {
                        snapshot.inputs.resize(a + 1, i64::MIN);
                    }
                    snapshot.inputs[a] = i64_of(payload)?;
                }
                SOURCE_LANE => {
                    let key = i64_of(payload)? as u64;
                    let watermark_ms = i64_of(payload.get(8..).unwrap_or_default())?;
                    snapshot.source_lanes.push((a, key, watermark_ms));
                }
                EXCHANGE_LANE => snapshot.exchange_lanes.push((a, b, i64_of(payload)?)),
                other => return Err(corrupt(path, format!("unknown section kind {other}"))),
            }
        }
        Ok(file)
    }
}

#[cfg(test)]
mod tests;
