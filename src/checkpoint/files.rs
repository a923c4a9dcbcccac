//! Checkpoint files: what a checkpoint writes, how it is made current,
//! and how it is read back.
//!
//! Layout under the storage directory:
//!
//! ```text
//! checkpoints/MANIFEST                    the current checkpoint (text; CRC32C on its last line)
//! checkpoints/<epoch>/shard-NNN.ckpt      a shard's state
//! checkpoints/<epoch>/view-NNN.arrow      a view's or retained output's rows
//! checkpoints/<epoch>/retained-NNN.arrow  a source's retained rows
//! ```
//!
//! Shard file (little-endian):
//!
//! ```text
//! 0   8  magic "LDBCKPT1"
//! 8   4  format version (1)
//! 12  4  shard
//! 16  8  epoch
//! 24  8  last LSN the state covers
//! 32  .. sections: kind u32, a u32, b u32, length u64, payload
//! end 4  CRC32C of every byte before it
//! ```
//!
//! Section kinds: 1 a stream's output watermark (a = stream, i64), 2 one
//! batch of a stream's operator state (a = stream, an Arrow IPC stream), 3
//! an input's watermark (a = input, i64), 4 a source handle's lane (a =
//! input, u64 lane key then i64 watermark), 5 an exchange lane (a = input,
//! b = sending shard, i64 watermark). View and retained-row files are an
//! Arrow IPC stream followed by the CRC32C of its bytes.
//!
//! The parts are written and synced first, then the manifest (write to
//! `MANIFEST.tmp`, fsync, rename, fsync the directory): a crash before the
//! rename leaves the previous checkpoint in force. Only then are older
//! checkpoints and the WAL segments the new one covers deleted.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use arrow::array::RecordBatch;
use arrow::ipc::reader::StreamReader;
use arrow::ipc::writer::StreamWriter;
use laminar_runtime::{Error, ErrorCode, Result};

const MAGIC: &[u8; 8] = b"LDBCKPT1";
const VERSION: u32 = 1;
const HEADER_BYTES: usize = 32;
const SECTION_BYTES: usize = 20;
const STREAM_WATERMARK: u32 = 1;
const STREAM_STATE: u32 = 2;
const INPUT_WATERMARK: u32 = 3;
const SOURCE_LANE: u32 = 4;
const EXCHANGE_LANE: u32 = 5;
const MANIFEST_HEADER: &str = "LaminarDB checkpoint manifest v1";

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

fn io_error(op: &str, path: &Path, e: impl std::fmt::Display) -> Error {
    Error::new(
        ErrorCode::Checkpoint,
        format!("checkpoint: cannot {op} {}: {e}", path.display()),
    )
}

fn corrupt(path: &Path, detail: impl std::fmt::Display) -> Error {
    Error::new(
        ErrorCode::StorageCorrupt,
        format!("checkpoint file {}: {detail}", path.display()),
    )
    .with_hint("the checkpoint named by checkpoints/MANIFEST is damaged; restore the storage directory from a backup")
}

fn ipc_bytes(batches: &[RecordBatch], out: &mut Vec<u8>) -> Result<()> {
    let Some(first) = batches.first() else {
        return Ok(());
    };
    let mut writer = StreamWriter::try_new(out, &first.schema())?;
    for batch in batches {
        writer.write(batch)?;
    }
    writer.finish()?;
    Ok(())
}

fn read_ipc(bytes: &[u8]) -> Result<Vec<RecordBatch>> {
    if bytes.is_empty() {
        return Ok(Vec::new());
    }
    let reader = StreamReader::try_new(std::io::Cursor::new(bytes), None)?;
    Ok(reader.collect::<std::result::Result<Vec<_>, _>>()?)
}

fn section(out: &mut Vec<u8>, kind: u32, a: usize, b: usize, payload: &[u8]) {
    out.extend_from_slice(&kind.to_le_bytes());
    out.extend_from_slice(&(a as u32).to_le_bytes());
    out.extend_from_slice(&(b as u32).to_le_bytes());
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    out.extend_from_slice(payload);
}

/// Appends the CRC32C of everything before it.
fn seal(mut bytes: Vec<u8>) -> Vec<u8> {
    let crc = crc32c::crc32c(&bytes);
    bytes.extend_from_slice(&crc.to_le_bytes());
    bytes
}

/// The bytes before a valid CRC32C trailer.
fn unseal<'a>(path: &Path, bytes: &'a [u8]) -> Result<&'a [u8]> {
    let Some(split) = bytes.len().checked_sub(4) else {
        return Err(corrupt(path, "shorter than its checksum"));
    };
    let (body, trailer) = bytes.split_at(split);
    let expected = u32::from_le_bytes(trailer.try_into().expect("4 bytes"));
    if crc32c::crc32c(body) != expected {
        return Err(corrupt(path, "checksum mismatch"));
    }
    Ok(body)
}

impl ShardSnapshot {
    pub fn encode(&self, shard: usize, epoch: u64) -> Result<Vec<u8>> {
        let mut out = Vec::with_capacity(4096);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.extend_from_slice(&(shard as u32).to_le_bytes());
        out.extend_from_slice(&epoch.to_le_bytes());
        out.extend_from_slice(&self.covered_lsn.to_le_bytes());
        let mut payload = Vec::new();
        for (stream, (watermark_ms, batches)) in self.streams.iter().enumerate() {
            section(
                &mut out,
                STREAM_WATERMARK,
                stream,
                0,
                &watermark_ms.to_le_bytes(),
            );
            for batch in batches {
                payload.clear();
                ipc_bytes(std::slice::from_ref(batch), &mut payload)?;
                section(&mut out, STREAM_STATE, stream, 0, &payload);
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

    pub fn decode(path: &Path, bytes: &[u8], shard: usize, epoch: u64) -> Result<Self> {
        let body = unseal(path, bytes)?;
        if body.len() < HEADER_BYTES || &body[..8] != MAGIC {
            return Err(corrupt(path, "not a shard checkpoint"));
        }
        let u32_at = |at: usize| u32::from_le_bytes(body[at..at + 4].try_into().expect("4"));
        let u64_at = |at: usize| u64::from_le_bytes(body[at..at + 8].try_into().expect("8"));
        if u32_at(8) != VERSION {
            return Err(corrupt(
                path,
                format!("format version {}, this build reads {VERSION}", u32_at(8)),
            ));
        }
        if u32_at(12) as usize != shard || u64_at(16) != epoch {
            return Err(corrupt(path, "written for another shard or checkpoint"));
        }
        let mut snapshot = ShardSnapshot {
            covered_lsn: u64_at(24),
            ..Default::default()
        };
        let mut at = HEADER_BYTES;
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
            let payload = body
                .get(at..at.saturating_add(len))
                .ok_or_else(|| corrupt(path, "section past the end"))?;
            at += len;
            match kind {
                STREAM_WATERMARK | STREAM_STATE => {
                    if snapshot.streams.len() <= a {
                        snapshot
                            .streams
                            .resize_with(a + 1, || (i64::MIN, Vec::new()));
                    }
                    if kind == STREAM_WATERMARK {
                        snapshot.streams[a].0 = i64_of(payload)?;
                    } else {
                        snapshot.streams[a].1.extend(read_ipc(payload)?);
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
        Ok(snapshot)
    }
}

/// What `checkpoints/MANIFEST` records.
#[derive(Debug, Clone, Default)]
pub(crate) struct Manifest {
    pub epoch: u64,
    pub shards: usize,
    /// `[shard]` -> the last LSN the checkpoint covers.
    pub covered_lsn: Vec<u64>,
    /// `[source]` -> rows accepted up to the checkpoint, all runs together.
    pub rows: Vec<u64>,
    pub views: usize,
    pub sources: usize,
    /// Lane key -> pushes before the cut, for the handles the cut knows
    /// (recovery numbers their later pushes on from there).
    pub handles: Vec<(u64, u64)>,
}

impl Manifest {
    fn render(&self) -> String {
        let mut text = format!(
            "{MANIFEST_HEADER}\nepoch {}\nshards {}\nviews {}\nsources {}\n",
            self.epoch, self.shards, self.views, self.sources
        );
        for (shard, lsn) in self.covered_lsn.iter().enumerate() {
            text.push_str(&format!("shard {shard} lsn {lsn}\n"));
        }
        for (source, rows) in self.rows.iter().enumerate() {
            text.push_str(&format!("source {source} rows {rows}\n"));
        }
        for (key, pushes) in &self.handles {
            text.push_str(&format!("handle {key} pushes {pushes}\n"));
        }
        let crc = crc32c::crc32c(text.as_bytes());
        text.push_str(&format!("crc {crc}\n"));
        text
    }

    fn parse(path: &Path, text: &str) -> Result<Self> {
        let bad = |detail: &str| corrupt(path, detail);
        let body_end = text.rfind("crc ").ok_or_else(|| bad("no checksum line"))?;
        let (body, crc_line) = text.split_at(body_end);
        let crc: u32 = crc_line[4..]
            .trim()
            .parse()
            .map_err(|_| bad("bad checksum line"))?;
        if crc32c::crc32c(body.as_bytes()) != crc {
            return Err(bad("checksum mismatch"));
        }
        let mut lines = body.lines();
        if lines.next() != Some(MANIFEST_HEADER) {
            return Err(bad("unknown manifest format"));
        }
        let mut manifest = Manifest::default();
        for line in lines {
            let words: Vec<&str> = line.split_whitespace().collect();
            let number = |i: usize| -> Result<u64> {
                words
                    .get(i)
                    .and_then(|w| w.parse().ok())
                    .ok_or_else(|| bad("bad number"))
            };
            match words.first().copied() {
                Some("epoch") => manifest.epoch = number(1)?,
                Some("shards") => manifest.shards = number(1)? as usize,
                Some("views") => manifest.views = number(1)? as usize,
                Some("sources") => manifest.sources = number(1)? as usize,
                Some("shard") => manifest.covered_lsn.push(number(3)?),
                Some("source") => manifest.rows.push(number(3)?),
                Some("handle") => manifest.handles.push((number(1)?, number(3)?)),
                _ => return Err(bad("unknown line")),
            }
        }
        if manifest.covered_lsn.len() != manifest.shards || manifest.rows.len() != manifest.sources
        {
            return Err(bad("incomplete"));
        }
        Ok(manifest)
    }
}

/// A checkpoint read back at open: everything recovery loads.
pub(crate) struct Restored {
    pub manifest: Manifest,
    pub shards: Vec<ShardSnapshot>,
    pub views: Vec<Vec<RecordBatch>>,
    /// `[source]` -> retained rows.
    pub retained: Vec<Vec<RecordBatch>>,
}

/// The checkpoint directory of a storage directory.
pub(crate) fn root(storage_dir: &Path) -> PathBuf {
    storage_dir.join("checkpoints")
}

fn epoch_dir(storage_dir: &Path, epoch: u64) -> PathBuf {
    root(storage_dir).join(format!("{epoch:020}"))
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut file = File::create(path).map_err(|e| io_error("create", path, e))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(|e| io_error("write", path, e))
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_error("sync", dir, e))
}

fn read_sealed_batches(path: &Path) -> Result<Vec<RecordBatch>> {
    let bytes = std::fs::read(path).map_err(|e| io_error("read", path, e))?;
    read_ipc(unseal(path, &bytes)?).map_err(|e| corrupt(path, e))
}

/// Loads the newest checkpoint of a storage directory, if it has one.
/// `shards`, `views` and `sources` must match the pipeline opening it.
pub(crate) fn load(
    storage_dir: &Path,
    shards: usize,
    views: usize,
    sources: usize,
) -> Result<Option<Restored>> {
    let path = root(storage_dir).join("MANIFEST");
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_error("read", &path, e)),
    };
    let manifest = Manifest::parse(&path, &text)?;
    if manifest.shards != shards || manifest.views != views || manifest.sources != sources {
        return Err(Error::new(
            ErrorCode::StorageMismatch,
            format!(
                "checkpoint {} was taken with {} shard(s), {} view(s) and {} source(s); this pipeline has {shards}, {views} and {sources}",
                manifest.epoch, manifest.shards, manifest.views, manifest.sources
            ),
        )
        .with_hint("open the directory with the shard count and SQL it was written with"));
    }
    let dir = epoch_dir(storage_dir, manifest.epoch);
    let mut snapshots = Vec::with_capacity(shards);
    for shard in 0..shards {
        let path = dir.join(format!("shard-{shard:03}.ckpt"));
        let bytes = std::fs::read(&path).map_err(|e| io_error("read", &path, e))?;
        let snapshot = ShardSnapshot::decode(&path, &bytes, shard, manifest.epoch)?;
        if snapshot.covered_lsn != manifest.covered_lsn[shard] {
            return Err(corrupt(&path, "its LSN differs from the manifest's"));
        }
        snapshots.push(snapshot);
    }
    let views = (0..views)
        .map(|v| read_sealed_batches(&dir.join(format!("view-{v:03}.arrow"))))
        .collect::<Result<Vec<_>>>()?;
    let retained = (0..sources)
        .map(|s| read_sealed_batches(&dir.join(format!("retained-{s:03}.arrow"))))
        .collect::<Result<Vec<_>>>()?;
    Ok(Some(Restored {
        manifest,
        shards: snapshots,
        views,
        retained,
    }))
}

/// The parts of a checkpoint, gathered, ready to be written.
pub(crate) struct Gathered {
    pub epoch: u64,
    pub shards: Vec<ShardSnapshot>,
    pub views: Vec<Vec<RecordBatch>>,
    pub retained: Vec<Vec<RecordBatch>>,
    pub rows: Vec<u64>,
    pub handles: Vec<(u64, u64)>,
}

/// Writes a gathered checkpoint, makes it the current one, and deletes
/// what it replaces. Returns (bytes written, WAL segments released).
pub(crate) fn write(storage_dir: &Path, gathered: Gathered) -> Result<(u64, usize)> {
    let dir = epoch_dir(storage_dir, gathered.epoch);
    let root = root(storage_dir);
    if dir.exists() {
        // Left by a checkpoint that crashed before its manifest.
        std::fs::remove_dir_all(&dir).map_err(|e| io_error("remove", &dir, e))?;
    }
    std::fs::create_dir_all(&dir).map_err(|e| io_error("create", &dir, e))?;
    let mut bytes = 0u64;
    for (shard, snapshot) in gathered.shards.iter().enumerate() {
        let encoded = snapshot.encode(shard, gathered.epoch)?;
        bytes += encoded.len() as u64;
        write_synced(&dir.join(format!("shard-{shard:03}.ckpt")), &encoded)?;
    }
    let mut sealed = |name: String, batches: &[RecordBatch]| -> Result<()> {
        let mut encoded = Vec::new();
        ipc_bytes(batches, &mut encoded)?;
        let encoded = seal(encoded);
        bytes += encoded.len() as u64;
        write_synced(&dir.join(name), &encoded)
    };
    for (v, batches) in gathered.views.iter().enumerate() {
        sealed(format!("view-{v:03}.arrow"), batches)?;
    }
    for (s, batches) in gathered.retained.iter().enumerate() {
        sealed(format!("retained-{s:03}.arrow"), batches)?;
    }
    sync_dir(&dir)?;
    sync_dir(&root)?;
    failpoint("checkpoint-before-manifest");
    let manifest = Manifest {
        epoch: gathered.epoch,
        shards: gathered.shards.len(),
        covered_lsn: gathered.shards.iter().map(|s| s.covered_lsn).collect(),
        rows: gathered.rows,
        views: gathered.views.len(),
        sources: gathered.retained.len(),
        handles: gathered.handles,
    };
    let path = root.join("MANIFEST");
    let tmp = root.join("MANIFEST.tmp");
    write_synced(&tmp, manifest.render().as_bytes())?;
    failpoint("checkpoint-manifest-written");
    std::fs::rename(&tmp, &path).map_err(|e| io_error("rename", &tmp, e))?;
    sync_dir(&root)?;
    failpoint("checkpoint-before-cleanup");
    // The checkpoint stands; what it replaces can go.
    if let Ok(entries) = std::fs::read_dir(&root) {
        for entry in entries.flatten() {
            let older = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u64>().ok())
                .is_some_and(|epoch| epoch < gathered.epoch);
            if older {
                if let Err(e) = std::fs::remove_dir_all(entry.path()) {
                    log::warn!("checkpoint: cannot remove {}: {e}", entry.path().display());
                }
            }
        }
    }
    let mut released = 0;
    for (shard, lsn) in manifest.covered_lsn.iter().enumerate() {
        let wal = storage_dir.join("wal").join(format!("shard-{shard:03}"));
        released += laminar_wal::release(&wal, *lsn)?;
    }
    Ok((bytes, released))
}

/// Crash tests: `LAMINARDB_FAILPOINT=<name>` kills the process (abort, as
/// abrupt as SIGKILL) when a checkpoint reaches that point.
fn failpoint(name: &str) {
    if std::env::var_os("LAMINARDB_FAILPOINT").is_some_and(|v| v == name) {
        eprintln!("failpoint {name}: aborting");
        std::process::abort();
    }
}

/// Race tests: with `LAMINARDB_FAILPOINT=<name>` and
/// `LAMINARDB_FAILPOINT_DIR=<dir>`, a checkpoint reaching that point
/// creates `<dir>/<name>.held` and waits (on the checkpoint's own thread,
/// at most 30 s) until the test creates `<dir>/<name>.release`, so the
/// test acts inside the checkpoint without guessing at timing.
pub(crate) fn pause_point(name: &str) {
    if std::env::var_os("LAMINARDB_FAILPOINT").is_none_or(|v| v != name) {
        return;
    }
    let Some(dir) = std::env::var_os("LAMINARDB_FAILPOINT_DIR").map(std::path::PathBuf::from)
    else {
        return;
    };
    if std::fs::write(dir.join(format!("{name}.held")), b"").is_err() {
        return;
    }
    let release = dir.join(format!("{name}.release"));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !release.exists() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{Int64Array, StringArray};

    use super::*;

    fn state_batch() -> RecordBatch {
        RecordBatch::try_from_iter(vec![
            (
                "key_0",
                Arc::new(StringArray::from(vec!["a", "b"])) as arrow::array::ArrayRef,
            ),
            (
                "state_0_0",
                Arc::new(Int64Array::from(vec![Some(3), None])) as _,
            ),
        ])
        .unwrap()
    }

    fn snapshot() -> ShardSnapshot {
        ShardSnapshot {
            covered_lsn: 41,
            streams: vec![(7, vec![state_batch(), state_batch()]), (i64::MIN, vec![])],
            inputs: vec![5, i64::MIN],
            source_lanes: vec![(0, (3u64 << 32) | 2, 99)],
            exchange_lanes: vec![(1, 1, -4)],
        }
    }

    #[test]
    fn a_shard_file_reads_back_as_written() {
        let path = Path::new("shard-001.ckpt");
        let bytes = snapshot().encode(1, 9).unwrap();
        let back = ShardSnapshot::decode(path, &bytes, 1, 9).unwrap();
        assert_eq!(back.covered_lsn, 41);
        assert_eq!(back.inputs, vec![5, i64::MIN]);
        assert_eq!(back.source_lanes, vec![(0, (3u64 << 32) | 2, 99)]);
        assert_eq!(back.exchange_lanes, vec![(1, 1, -4)]);
        assert_eq!(back.streams.len(), 2);
        assert_eq!(back.streams[0].0, 7);
        assert_eq!(back.streams[0].1, vec![state_batch(), state_batch()]);
        assert_eq!(back.streams[1].0, i64::MIN);
        // Another shard's or checkpoint's file is refused.
        assert!(ShardSnapshot::decode(path, &bytes, 0, 9).is_err());
        assert!(ShardSnapshot::decode(path, &bytes, 1, 8).is_err());
    }

    #[test]
    fn any_damaged_byte_of_a_shard_file_is_caught() {
        let path = Path::new("shard-000.ckpt");
        let bytes = snapshot().encode(0, 1).unwrap();
        for at in 0..bytes.len() {
            let mut damaged = bytes.clone();
            damaged[at] ^= 0x01;
            let error = ShardSnapshot::decode(path, &damaged, 0, 1).unwrap_err();
            assert_eq!(error.code(), ErrorCode::StorageCorrupt, "byte {at}");
        }
        for len in 0..bytes.len() {
            assert!(ShardSnapshot::decode(path, &bytes[..len], 0, 1).is_err());
        }
    }

    #[test]
    fn a_manifest_reads_back_and_refuses_damage() {
        let manifest = Manifest {
            epoch: 12,
            shards: 2,
            covered_lsn: vec![100, 7],
            rows: vec![5_000, 0, 3],
            views: 1,
            sources: 3,
            handles: vec![(1 << 32, 40), ((2 << 32) | 5, 1)],
        };
        let text = manifest.render();
        let path = Path::new("MANIFEST");
        let back = Manifest::parse(path, &text).unwrap();
        assert_eq!(back.epoch, 12);
        assert_eq!(back.covered_lsn, vec![100, 7]);
        assert_eq!(back.rows, vec![5_000, 0, 3]);
        assert_eq!(back.handles, manifest.handles);
        assert_eq!((back.shards, back.views, back.sources), (2, 1, 3));
        let damaged = text.replacen("lsn 100", "lsn 900", 1);
        assert_eq!(
            Manifest::parse(path, &damaged).unwrap_err().code(),
            ErrorCode::StorageCorrupt
        );
        let cut_short = &text[..text.len() / 2];
        assert!(Manifest::parse(path, cut_short).is_err());
    }
}
