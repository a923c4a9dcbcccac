//! Durability: the storage directory, what goes into each shard's WAL, and
//! recovery on start.
//!
//! Layout of a storage directory:
//!
//! ```text
//! LOCK                held (flock) while a database has the directory open
//! GENERATION          a counter bumped at every open; stamps WAL records
//! PIPELINE            shard count and the sources' and streams' SQL
//! wal/shard-NNN/      each shard's log (see wal/FORMAT.md)
//! tables/             each table's statement and insert log (table_log.rs)
//! ```
//!
//! What is logged: every message a source handle sends a shard (a batch
//! piece or a watermark), encoded by the handle on the pushing thread and
//! written by the shard before it runs the message, plus the opening and
//! closing of each handle's lane on that shard. Each message carries a
//! push tag (handle, sequence number, how many messages the push produced
//! across all shards), so recovery can tell whole pushes from pushes cut
//! short by a crash and replays, per handle, the longest run of whole
//! pushes: a push is applied entirely or not at all. Exchange traffic is
//! not logged; replaying the sources recomputes it.
//!
//! Recovery replays each shard's log into that shard in log order, which
//! is the order the shard ran the messages in, through one replay lane.
//! Each handle of an earlier run becomes a virtual lane on the shard,
//! opened and closed where the log says, so watermarks (the minimum over
//! a source's lanes) move exactly as they did; handles still open when
//! their process ended close before the next generation's first record.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use arrow::array::{ArrayRef, Int64Array, RecordBatch};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::ipc::reader::StreamReader;
use arrow::ipc::writer::StreamWriter;
use futures::task::AtomicWaker;
use laminar_runtime::spsc::ring;
use laminar_runtime::{Error, ErrorCode, Result};
use laminar_wal::{Record, Tail, WalConfig};

use crate::pipeline::{Control, Ingress, Pipeline};

/// How much a database keeps on disk, and when `push` returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// Nothing on disk (the default without a storage directory). A crash
    /// loses everything.
    #[default]
    Memory,
    /// `push` returns once the batch is queued; shards write it to their
    /// WAL before processing it and sync at least every
    /// [`ASYNC_SYNC_INTERVAL`] and whenever they go idle. A crash may lose
    /// the pushes of that last interval (whole pushes, never part of one).
    Async,
    /// `push` returns only once every shard that got part of the batch has
    /// it in its WAL and synced (`fdatasync`). A crash loses nothing that
    /// was acknowledged.
    Sync,
}

/// In [`Durability::Async`], the longest a written WAL group waits for its
/// sync.
pub const ASYNC_SYNC_INTERVAL: std::time::Duration = std::time::Duration::from_millis(10);

/// WAL record kinds written by the database (wal/FORMAT.md).
const KIND_BATCH: u16 = 1;
const KIND_WATERMARK: u16 = 2;
const KIND_LANE_OPEN: u16 = 3;
const KIND_LANE_CLOSE: u16 = 4;
const TAG_BYTES: usize = 48;
const LANE_BYTES: usize = 16;
/// Push tag flag: the IPC stream's last column holds row watermarks.
const FLAG_ROW_WATERMARKS: u32 = 1;
/// The route of a batch logged only to keep it (a source no stream reads):
/// shards do nothing with it, recovery gives it back to the source's
/// retained rows.
pub(crate) const LOG_ONLY_ROUTE: usize = u32::MAX as usize;

/// Where a message sits among the pushes of its source handle.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct PushTag {
    /// Generation of the handle's database open.
    pub generation: u32,
    /// The handle, numbered per generation.
    pub handle: u32,
    /// The push, numbered per handle from 1.
    pub seq: u64,
    /// Messages the push produced across all shards.
    pub parts: u32,
    /// Rows of the pushed batch.
    pub rows: u64,
}

impl PushTag {
    fn encode(&self, source: usize, route: usize, flags: u32, out: &mut Vec<u8>) {
        out.extend_from_slice(&(source as u32).to_le_bytes());
        out.extend_from_slice(&(route as u32).to_le_bytes());
        out.extend_from_slice(&self.generation.to_le_bytes());
        out.extend_from_slice(&self.handle.to_le_bytes());
        out.extend_from_slice(&self.seq.to_le_bytes());
        out.extend_from_slice(&self.parts.to_le_bytes());
        out.extend_from_slice(&flags.to_le_bytes());
        out.extend_from_slice(&self.rows.to_le_bytes());
        out.extend_from_slice(&0u64.to_le_bytes());
    }

    /// (source, route, flags, tag) from a record's payload.
    fn decode(payload: &[u8]) -> Option<(usize, usize, u32, PushTag)> {
        let bytes = payload.get(..TAG_BYTES)?;
        let u32_at = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4"));
        let u64_at = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8"));
        Some((
            u32_at(0) as usize,
            u32_at(4) as usize,
            u32_at(28),
            PushTag {
                generation: u32_at(8),
                handle: u32_at(12),
                seq: u64_at(16),
                parts: u32_at(24),
                rows: u64_at(32),
            },
        ))
    }
}

/// A replay lane's key: the handle it stands for.
pub(crate) fn lane_key(generation: u32, handle: u32) -> u64 {
    (u64::from(generation) << 32) | u64::from(handle)
}

/// The payload of a lane open or close record.
pub(crate) fn lane_record(source: usize, generation: u32, handle: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(LANE_BYTES);
    out.extend_from_slice(&(source as u32).to_le_bytes());
    out.extend_from_slice(&generation.to_le_bytes());
    out.extend_from_slice(&handle.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out
}

/// The record kinds of lane open and close.
pub(crate) const LANE_OPEN: u16 = KIND_LANE_OPEN;
pub(crate) const LANE_CLOSE: u16 = KIND_LANE_CLOSE;

/// A lane's progress through its shard's WAL, which the pushing handle
/// waits on in [`Durability::Sync`].
#[derive(Default)]
pub(crate) struct LaneAck {
    /// Messages of the lane that are durable.
    pub durable: AtomicU64,
    pub waker: AtomicWaker,
}

impl LaneAck {
    pub fn advance(&self, durable: u64) {
        self.durable.store(durable, Ordering::Release);
        self.waker.wake();
    }
}

/// `batch` with the rows' own watermarks as an extra last column (how
/// they travel through a hash split and into the WAL).
pub(crate) fn with_row_watermarks(batch: &RecordBatch, marks: ArrayRef) -> Result<RecordBatch> {
    let mut fields = batch.schema().fields().to_vec();
    fields.push(Arc::new(Field::new(
        "__row_watermark",
        DataType::Int64,
        false,
    )));
    let mut columns = batch.columns().to_vec();
    columns.push(marks);
    Ok(RecordBatch::try_new(
        Arc::new(Schema::new(fields)),
        columns,
    )?)
}

/// A message's WAL record, made on the pushing thread: its kind and
/// payload.
pub(crate) type WalRecord = (u16, Box<[u8]>);

/// Encodes a source message of push `tag` as its WAL record.
pub(crate) fn encode(message: &Ingress, tag: &PushTag) -> Result<Option<WalRecord>> {
    let mut out = Vec::new();
    match message {
        Ingress::Batch {
            input,
            route,
            batch,
            row_watermarks,
            ..
        } => {
            let flags = if row_watermarks.is_some() {
                FLAG_ROW_WATERMARKS
            } else {
                0
            };
            tag.encode(*input, *route, flags, &mut out);
            let batch = match row_watermarks {
                None => batch.clone(),
                Some(marks) => with_row_watermarks(batch, Arc::new(marks.clone()))?,
            };
            let mut writer = StreamWriter::try_new(&mut out, &batch.schema())?;
            writer.write(&batch)?;
            writer.finish()?;
            Ok(Some((KIND_BATCH, out.into_boxed_slice())))
        }
        Ingress::Watermark {
            input,
            watermark_ms,
            ..
        } => {
            tag.encode(*input, 0, 0, &mut out);
            out.extend_from_slice(&watermark_ms.to_le_bytes());
            Ok(Some((KIND_WATERMARK, out.into_boxed_slice())))
        }
        _ => Ok(None),
    }
}

fn corrupt(shard: usize, record: &Record<'_>, detail: impl std::fmt::Display) -> Error {
    Error::new(
        ErrorCode::StorageCorrupt,
        format!(
            "shard {shard} WAL record {} cannot be replayed: {detail}",
            record.lsn
        ),
    )
}

/// What one record of a shard's log says.
enum Logged {
    Message(PushTag, Box<Ingress>),
    LaneOpen { source: usize, key: u64 },
    LaneClose { key: u64 },
}

/// The sources' schemas and route counts, to check records against.
pub(crate) struct SourceShapes {
    pub schemas: Vec<SchemaRef>,
    pub routes: Vec<usize>,
}

impl SourceShapes {
    fn check(
        &self,
        shard: usize,
        record: &Record<'_>,
        source: usize,
        route: Option<usize>,
    ) -> Result<()> {
        let routes = self
            .routes
            .get(source)
            .ok_or_else(|| corrupt(shard, record, format!("unknown source #{source}")))?;
        match route {
            Some(route) if route != LOG_ONLY_ROUTE && route >= *routes => {
                Err(corrupt(shard, record, format!("unknown route #{route}")))
            }
            _ => Ok(()),
        }
    }
}

/// Decodes a record back into what it was.
fn decode(shard: usize, record: &Record<'_>, shapes: &SourceShapes) -> Result<Logged> {
    if matches!(record.kind, KIND_LANE_OPEN | KIND_LANE_CLOSE) {
        let bytes = record
            .payload
            .get(..LANE_BYTES)
            .ok_or_else(|| corrupt(shard, record, "short lane record"))?;
        let u32_at = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4"));
        let source = u32_at(0) as usize;
        shapes.check(shard, record, source, None)?;
        let key = lane_key(u32_at(4), u32_at(8));
        return Ok(if record.kind == KIND_LANE_OPEN {
            Logged::LaneOpen { source, key }
        } else {
            Logged::LaneClose { key }
        });
    }
    let (source, route, flags, tag) =
        PushTag::decode(record.payload).ok_or_else(|| corrupt(shard, record, "short payload"))?;
    let body = &record.payload[TAG_BYTES..];
    match record.kind {
        KIND_BATCH => {
            shapes.check(shard, record, source, Some(route))?;
            let mut reader = StreamReader::try_new(std::io::Cursor::new(body), None)
                .map_err(|e| corrupt(shard, record, e))?;
            let batch = reader
                .next()
                .ok_or_else(|| corrupt(shard, record, "no batch"))?
                .map_err(|e| corrupt(shard, record, e))?;
            let (batch, row_watermarks) = if flags & FLAG_ROW_WATERMARKS != 0 {
                let last = batch
                    .num_columns()
                    .checked_sub(1)
                    .ok_or_else(|| corrupt(shard, record, "no columns"))?;
                let marks = batch
                    .column(last)
                    .as_any()
                    .downcast_ref::<Int64Array>()
                    .ok_or_else(|| corrupt(shard, record, "bad row watermarks"))?
                    .clone();
                let keep: Vec<usize> = (0..last).collect();
                (batch.project(&keep)?, Some(marks))
            } else {
                (batch, None)
            };
            let batch = batch
                .with_schema(Arc::clone(&shapes.schemas[source]))
                .map_err(|e| corrupt(shard, record, e))?;
            Ok(Logged::Message(
                tag,
                Box::new(Ingress::Batch {
                    input: source,
                    route,
                    batch,
                    row_watermarks,
                    pushed_at: Instant::now(),
                    record: None,
                }),
            ))
        }
        KIND_WATERMARK => {
            shapes.check(shard, record, source, None)?;
            let bytes: [u8; 8] = body
                .get(..8)
                .and_then(|b| b.try_into().ok())
                .ok_or_else(|| corrupt(shard, record, "short watermark"))?;
            Ok(Logged::Message(
                tag,
                Box::new(Ingress::Watermark {
                    input: source,
                    watermark_ms: i64::from_le_bytes(bytes),
                    pushed_at: Instant::now(),
                    record: None,
                }),
            ))
        }
        kind => Err(corrupt(shard, record, format!("unknown kind {kind}"))),
    }
}

/// How durability was asked for.
#[derive(Debug, Clone)]
pub(crate) struct StorageConfig {
    pub dir: PathBuf,
    pub durability: Durability,
    pub wal: WalConfig,
}

/// An open storage directory.
pub(crate) struct Storage {
    pub config: StorageConfig,
    /// This open's generation.
    pub generation: u32,
    /// Held for as long as the database lives.
    _lock: File,
}

fn io_error(op: &str, path: &Path, e: impl std::fmt::Display) -> Error {
    Error::new(
        ErrorCode::Io,
        format!("cannot {op} {}: {e}", path.display()),
    )
}

/// Writes a small file atomically: temporary file, sync, rename, sync the
/// directory.
fn write_atomically(path: &Path, contents: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = path.with_extension("tmp");
    let mut file = File::create(&tmp).map_err(|e| io_error("create", &tmp, e))?;
    file.write_all(contents)
        .and_then(|()| file.sync_all())
        .map_err(|e| io_error("write", &tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| io_error("rename", &tmp, e))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_error("sync", dir, e))
}

impl Storage {
    /// Opens (creating if needed) and locks a storage directory, and takes
    /// the next generation.
    pub fn open(mut config: StorageConfig) -> Result<Self> {
        config.wal.validate()?;
        std::fs::create_dir_all(config.dir.join("wal"))
            .map_err(|e| io_error("create", &config.dir, e))?;
        // Absolute, so that shards (and Glommio, which opens directories
        // relative to nothing) never depend on the working directory.
        config.dir =
            std::fs::canonicalize(&config.dir).map_err(|e| io_error("resolve", &config.dir, e))?;
        let dir = &config.dir;
        let lock_path = dir.join("LOCK");
        let lock = File::create(&lock_path).map_err(|e| io_error("create", &lock_path, e))?;
        // A lock can be held for a moment by a process this one forks
        // (between fork and exec, before close-on-exec): retry briefly
        // before calling the directory taken.
        let mut attempt = 0;
        let locked = loop {
            match lock.try_lock() {
                Err(std::fs::TryLockError::WouldBlock) if attempt < 50 => {
                    attempt += 1;
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                other => break other,
            }
        };
        match locked {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(Error::new(
                    ErrorCode::StorageLocked,
                    format!(
                        "storage directory {} is in use by another database",
                        dir.display()
                    ),
                )
                .with_hint("close the other database or process first, or use another directory"))
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(io_error("lock", &lock_path, e)),
        }
        let path = dir.join("GENERATION");
        let previous = match std::fs::read_to_string(&path) {
            Ok(text) => text.trim().parse::<u32>().map_err(|_| {
                Error::new(
                    ErrorCode::StorageCorrupt,
                    format!("{} does not hold a generation number", path.display()),
                )
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => return Err(io_error("read", &path, e)),
        };
        let generation = previous.checked_add(1).ok_or_else(|| {
            Error::new(
                ErrorCode::StorageCorrupt,
                "the generation counter is exhausted",
            )
        })?;
        write_atomically(&path, format!("{generation}\n").as_bytes())?;
        Ok(Self {
            config,
            generation,
            _lock: lock,
        })
    }

    /// Where tables keep their logs.
    pub fn tables_dir(&self) -> PathBuf {
        self.config.dir.join("tables")
    }

    pub fn shard_dir(&self, shard: usize) -> PathBuf {
        self.config
            .dir
            .join("wal")
            .join(format!("shard-{shard:03}"))
    }

    /// Records the pipeline this directory belongs to, or checks that it is
    /// the same one as before: replaying a log into other SQL, or into
    /// another shard count, would compute something else.
    pub fn check_pipeline(
        &self,
        shards: usize,
        statements: &[&str],
        operators: &[String],
    ) -> Result<()> {
        let mut text = format!("LaminarDB pipeline v1\nshards {shards}\n");
        for sql in statements {
            text.push_str(sql.trim());
            text.push_str("\n;\n");
        }
        let sql_text = text.clone();
        // The same SQL may be planned into other operators by another
        // version, whose checkpoints this one could not read.
        text.push_str("operators\n");
        for operator in operators {
            text.push_str(operator);
            text.push('\n');
        }
        let path = self.config.dir.join("PIPELINE");
        match std::fs::read_to_string(&path) {
            Ok(existing) if existing == text => Ok(()),
            Ok(existing) => {
                let was_shards = existing.lines().nth(1).unwrap_or_default();
                let detail = if was_shards != format!("shards {shards}") {
                    format!("it was written with {was_shards}, this database has {shards}")
                } else if existing.starts_with(&sql_text) {
                    format!(
                        "its SQL is the same, but this version of LaminarDB plans it into other operators ({})",
                        operators.join(", ")
                    )
                } else {
                    "its sources and streams were created with different SQL".to_string()
                };
                Err(Error::new(
                    ErrorCode::StorageMismatch,
                    format!(
                        "storage directory {} belongs to another pipeline: {detail}",
                        self.config.dir.display()
                    ),
                )
                .with_hint(format!(
                    "open it with the same shard count and SQL as before (see {}), or use a new directory",
                    path.display()
                )))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                write_atomically(&path, text.as_bytes())
            }
            Err(e) => Err(io_error("read", &path, e)),
        }
    }
}

/// One push, as far as the logs hold it.
struct PushSeen {
    records: u32,
    parts: u32,
    rows: u64,
}

/// What recovery found, before replaying it.
pub(crate) struct Recovery {
    /// Where each shard's log ends (`None`: empty).
    pub tails: Vec<Option<Tail>>,
    /// `(generation, handle)` -> the last push replayed (all before it are
    /// whole).
    committed: HashMap<(u32, u32), u64>,
    /// `[source]` -> rows of the pushes replayed.
    pub rows: Vec<u64>,
    /// Records that will be replayed.
    pub records: u64,
    /// `[shard]` -> the last LSN the loaded checkpoint covers (0: none).
    covered: Vec<u64>,
    /// `[shard]` -> lane keys of handles the checkpoint restored as
    /// virtual lanes (the replay closes them).
    restored_lanes: Vec<Vec<u64>>,
}

impl Recovery {
    /// Reads every shard's log, finds where each ends and which pushes are
    /// whole, and cuts the logs there.
    pub fn analyze(
        storage: &Storage,
        shards: usize,
        sources: usize,
        checkpoint: Option<&crate::checkpoint::Restored>,
    ) -> Result<Self> {
        let covered: Vec<u64> =
            checkpoint.map_or_else(|| vec![0; shards], |c| c.manifest.covered_lsn.clone());
        let mut pushes: HashMap<(u32, u32), BTreeMap<u64, PushSeen>> = HashMap::new();
        let mut push_source: HashMap<(u32, u32), usize> = HashMap::new();
        let mut tails = Vec::with_capacity(shards);
        for (shard, &covered_lsn) in covered.iter().enumerate() {
            let dir = storage.shard_dir(shard);
            let tail = laminar_wal::scan(&dir, shard as u32, |record| {
                if matches!(record.kind, KIND_LANE_OPEN | KIND_LANE_CLOSE)
                    || record.lsn <= covered_lsn
                {
                    return Ok(());
                }
                let (source, _, _, tag) = PushTag::decode(record.payload)
                    .ok_or_else(|| corrupt(shard, &record, "short payload"))?;
                let seen = pushes
                    .entry((tag.generation, tag.handle))
                    .or_default()
                    .entry(tag.seq)
                    .or_insert(PushSeen {
                        records: 0,
                        parts: tag.parts,
                        rows: tag.rows,
                    });
                seen.records += 1;
                push_source.insert((tag.generation, tag.handle), source);
                Ok(())
            })?;
            if let Some(tail) = &tail {
                if tail.discarded_bytes > 0 || !tail.beyond.is_empty() {
                    log::warn!(
                        "shard {shard}: WAL ends at LSN {}; {} bytes and {} segment(s) after it were cut",
                        tail.next_lsn - 1,
                        tail.discarded_bytes,
                        tail.beyond.len()
                    );
                }
                laminar_wal::cut(tail)?;
                if tail.next_lsn <= covered_lsn {
                    return Err(Error::new(
                        ErrorCode::StorageCorrupt,
                        format!(
                            "shard {shard}: the WAL ends at LSN {}, before the LSN {} its checkpoint covers",
                            tail.next_lsn - 1,
                            covered_lsn
                        ),
                    )
                    .with_hint("records that were synced before the checkpoint are missing"));
                }
                if tail.generation >= storage.generation {
                    return Err(Error::new(
                        ErrorCode::StorageCorrupt,
                        format!(
                            "shard {shard} WAL has generation {}, newer than the directory's GENERATION",
                            tail.generation
                        ),
                    ));
                }
            }
            if tail.is_none() && covered_lsn > 0 {
                return Err(Error::new(
                    ErrorCode::StorageCorrupt,
                    format!("shard {shard}: the WAL is missing, but a checkpoint refers to it"),
                ));
            }
            tails.push(tail);
        }
        let mut committed = HashMap::new();
        let mut rows = checkpoint.map_or_else(|| vec![0u64; sources], |c| c.manifest.rows.clone());
        let mut records = 0u64;
        let before_cut: HashMap<u64, u64> = checkpoint
            .map(|c| c.manifest.handles.iter().copied().collect())
            .unwrap_or_default();
        for (key, seqs) in &pushes {
            let mut last = before_cut
                .get(&lane_key(key.0, key.1))
                .copied()
                .unwrap_or(0);
            for (&seq, seen) in seqs {
                if seq != last + 1 || seen.records != seen.parts {
                    break;
                }
                last = seq;
                records += u64::from(seen.records);
                if let Some(r) = push_source.get(key).and_then(|&s| rows.get_mut(s)) {
                    *r += seen.rows;
                }
            }
            committed.insert(*key, last);
        }
        let restored_lanes = match checkpoint {
            Some(c) => c
                .shards
                .iter()
                .map(|s| s.source_lanes.iter().map(|&(_, key, _)| key).collect())
                .collect(),
            None => vec![Vec::new(); shards],
        };
        Ok(Self {
            tails,
            committed,
            rows,
            records,
            covered,
            restored_lanes,
        })
    }

    /// Whether the replay has anything to do: records to replay, or
    /// handles a checkpoint restored that it must close.
    pub fn needs_replay(&self) -> bool {
        self.records > 0 || self.restored_lanes.iter().any(|l| !l.is_empty())
    }

    fn is_committed(&self, tag: &PushTag) -> bool {
        self.committed
            .get(&(tag.generation, tag.handle))
            .is_some_and(|&last| tag.seq <= last)
    }
}

/// Replays one shard's log into it, in log order, through one replay lane
/// (on a thread of its own: pushes block). Each old handle becomes a
/// virtual lane on the shard, opened and closed where the log says it
/// was; handles still open when a generation ended close before the next
/// generation's first record, as they did when that process went away.
pub(crate) fn replay_shard(
    pipeline: &Pipeline,
    recovery: &Recovery,
    storage_dir: &Path,
    shard: usize,
    shapes: &SourceShapes,
) -> Result<()> {
    let (mut carrier, consumer) = ring(pipeline.ring_capacity);
    pipeline.controls[shard].send(Control::AddLane {
        input: 0,
        ring: consumer,
        ack: None,
        replay: true,
        log_key: None,
    })?;
    let mut open: HashSet<u64> = recovery.restored_lanes[shard].iter().copied().collect();
    let covered = recovery.covered[shard];
    let mut generation = 0u32;
    let close_older = |open: &mut HashSet<u64>,
                       carrier: &mut laminar_runtime::spsc::Producer<Ingress>,
                       generation: u32|
     -> Result<()> {
        let older: Vec<u64> = open
            .iter()
            .copied()
            .filter(|key| (key >> 32) < u64::from(generation))
            .collect();
        for key in older {
            open.remove(&key);
            push_blocking(carrier, Ingress::ReplayClose { key })?;
        }
        Ok(())
    };
    laminar_wal::scan(storage_dir, shard as u32, |record| {
        if record.lsn <= covered {
            // The checkpoint holds its effect.
            return Ok(());
        }
        let (key, entry) = match decode(shard, &record, shapes)? {
            Logged::LaneOpen { source, key } => {
                (key, Some(Ingress::ReplayOpen { key, input: source }))
            }
            Logged::LaneClose { key } => {
                let entry = open.remove(&key).then_some(Ingress::ReplayClose { key });
                (key, entry)
            }
            Logged::Message(tag, message) => {
                if !recovery.is_committed(&tag) {
                    return Ok(());
                }
                if let Ingress::Batch {
                    input,
                    route,
                    batch,
                    ..
                } = &*message
                {
                    if *route == 0 || *route == LOG_ONLY_ROUTE {
                        pipeline.sources[*input].retention.keep(batch);
                    }
                }
                let key = lane_key(tag.generation, tag.handle);
                let entry = (*route_of(&message) != LOG_ONLY_ROUTE)
                    .then(|| Ingress::Replayed { key, message });
                (key, entry)
            }
        };
        let record_generation = (key >> 32) as u32;
        if record_generation > generation {
            generation = record_generation;
            close_older(&mut open, &mut carrier, generation)?;
        }
        if let Some(entry) = entry {
            if let Ingress::ReplayOpen { key, .. } = &entry {
                open.insert(*key);
            }
            push_blocking(&mut carrier, entry)?;
        }
        Ok(())
    })?;
    close_older(&mut open, &mut carrier, u32::MAX)?;
    let (done, waited) = std::sync::mpsc::channel();
    push_blocking(&mut carrier, Ingress::Fence(done))?;
    waited.recv().map_err(|_| stopped())
}

/// The route of a logged message (watermarks have none: 0).
fn route_of(message: &Ingress) -> &usize {
    match message {
        Ingress::Batch { route, .. } => route,
        _ => &0,
    }
}

fn push_blocking(
    lane: &mut laminar_runtime::spsc::Producer<Ingress>,
    message: Ingress,
) -> Result<()> {
    futures::executor::block_on(lane.push(message)).map_err(|_| stopped())
}

fn stopped() -> Error {
    Error::new(
        ErrorCode::NotRunning,
        "the pipeline stopped while recovery was replaying the WAL",
    )
}
