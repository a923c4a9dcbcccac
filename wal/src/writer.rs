//! Appending to a shard's log, on the shard's own thread: Glommio DMA files
//! (O_DIRECT through io_uring), so a write or a sync never blocks the
//! shard's thread, only the task that awaits it.
//!
//! Group commit: [`WalWriter::append`] only copies a record into memory;
//! [`WalWriter::submit`] starts writing everything appended since the last
//! submit in one write (whole 4 KiB blocks, starting at the block that
//! holds the end of the previous one) and, when asked, one `fdatasync`,
//! and returns without waiting for them; [`WalWriter::wait`] waits.
//! [`WalWriter::commit`] is both. A shard appends every message it drained
//! in one turn of its loop, submits once, runs the messages while the disk
//! works, then waits: the I/O overlaps the processing, and many pushes
//! share one write and one sync. One write is in flight at a time, since
//! consecutive writes may rewrite the same block and must land in order.
//!
//! Rewriting the last, partly filled block is safe: the bytes of records
//! already committed in it are the same in the old and the new version of
//! the block, so however a torn write mixes the two sectors by sector,
//! committed records survive.

use std::path::{Path, PathBuf};
use std::rc::Rc;

use glommio::io::{DmaFile, OpenOptions};
use laminar_runtime::{Error, ErrorCode, Result};
use zerocopy::IntoBytes;

use crate::format::{
    record_span, RecordHeader, SegmentHeader, BLOCK_BYTES, RECORD_ALIGN, RECORD_HEADER_BYTES,
    SEGMENT_HEADER_BYTES,
};
use crate::reader::{segment_name, Tail};

/// Size of one zero-filling write when a segment is created.
const ZERO_FILL_BYTES: usize = 256 * 1024;

/// Settings of a shard's log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WalConfig {
    /// Size of each segment file, preallocated and zero-filled when it is
    /// created (default 16 MiB). A record must fit in one segment.
    pub segment_bytes: u64,
}

impl Default for WalConfig {
    fn default() -> Self {
        Self {
            segment_bytes: 16 << 20,
        }
    }
}

impl WalConfig {
    /// Smallest allowed segment.
    pub const MIN_SEGMENT_BYTES: u64 = 64 * 1024;

    /// Checks the settings.
    pub fn validate(&self) -> Result<()> {
        if self.segment_bytes < Self::MIN_SEGMENT_BYTES
            || self.segment_bytes > u32::MAX as u64
            || !self.segment_bytes.is_multiple_of(BLOCK_BYTES as u64)
        {
            return Err(Error::new(
                ErrorCode::InvalidConfig,
                format!(
                    "WAL segment size must be a multiple of 4096 between {} and {} bytes, got {}",
                    Self::MIN_SEGMENT_BYTES,
                    u32::MAX as u64 / BLOCK_BYTES as u64 * BLOCK_BYTES as u64,
                    self.segment_bytes
                ),
            ));
        }
        Ok(())
    }

    /// The largest payload one record can carry.
    pub fn max_payload_bytes(&self) -> usize {
        self.segment_bytes as usize - SEGMENT_HEADER_BYTES - record_span(0)
    }
}

/// The writing end of one shard's log.
pub struct WalWriter {
    dir: PathBuf,
    shard: u32,
    generation: u32,
    config: WalConfig,
    file: Rc<DmaFile>,
    segment_index: u64,
    /// File offset of `pending[0]`; a multiple of the block size.
    block_start: u64,
    /// The bytes from `block_start` to the end of the appended records,
    /// in a DMA buffer that is handed to the write as it is (one copy per
    /// record, at append).
    pending: Staging,
    /// How much of `pending` has been written.
    written: usize,
    /// Whether written bytes await an `fdatasync`.
    unsynced: bool,
    /// The write (and sync) submitted last, until it is waited for.
    in_flight: Option<glommio::Task<Result<()>>>,
    next_lsn: u64,
    /// Set by the first failed write: the log's state on disk is unknown
    /// from there on, so nothing more is appended.
    failed: Option<Error>,
}

impl WalWriter {
    /// Opens shard `shard`'s log in `dir` for appending, continuing at
    /// `tail` (from [`crate::scan`], after [`crate::cut`]) or starting a
    /// new log. Records are stamped with `generation`, which must be newer
    /// than any in the log.
    pub async fn open(
        dir: &Path,
        shard: u32,
        generation: u32,
        tail: Option<&Tail>,
        config: WalConfig,
    ) -> Result<Self> {
        config.validate()?;
        if let Some(tail) = tail {
            assert!(
                generation > tail.generation,
                "a writer's generation must be newer than the log's"
            );
        }
        let (segment_index, next_lsn) = tail.map_or((0, 1), |t| (t.segment_index, t.next_lsn));
        let path = dir.join(segment_name(segment_index));
        let (file, block_start, pending): (DmaFile, u64, Vec<u8>) = match tail {
            Some(tail) => {
                let file = open_existing(&path).await?;
                let block_start = tail.offset / BLOCK_BYTES as u64 * BLOCK_BYTES as u64;
                let keep = (tail.offset - block_start) as usize;
                let mut pending = Vec::with_capacity(BLOCK_BYTES);
                if keep > 0 {
                    let block = file
                        .read_at_aligned(block_start, BLOCK_BYTES)
                        .await
                        .map_err(|e| io_error("read", &path, e.into()))?;
                    pending.extend_from_slice(&block[..keep]);
                }
                (file, block_start, pending)
            }
            None => (
                create_segment(dir, segment_index, config).await?,
                0,
                Vec::with_capacity(BLOCK_BYTES),
            ),
        };
        let mut staging = Staging::new(&file, STAGING_BYTES);
        staging.extend(&file, &pending);
        let mut writer = Self {
            dir: dir.to_path_buf(),
            shard,
            generation,
            config,
            file: Rc::new(file),
            segment_index,
            block_start,
            written: pending.len(),
            pending: staging,
            unsynced: false,
            in_flight: None,
            next_lsn,
            failed: None,
        };
        if tail.is_none() {
            writer.start_segment();
        }
        // The segment's bytes past the end may hold a torn or stale tail:
        // the next commit rewrites the block that holds the end, and the
        // generation in every new record tells it apart from what follows.
        writer.commit(true).await?;
        Ok(writer)
    }

    /// Closes the segment file (an unclosed DMA file would wait for its
    /// executor to close it).
    pub async fn close(mut self) -> Result<()> {
        let waited = self.wait().await;
        let path = self.dir.join(segment_name(self.segment_index));
        if let Ok(file) = Rc::try_unwrap(self.file) {
            file.close()
                .await
                .map_err(|e| io_error("close", &path, e.into()))?;
        }
        waited
    }

    /// The LSN the next appended record gets.
    pub fn next_lsn(&self) -> u64 {
        self.next_lsn
    }

    /// The largest payload one record can carry.
    pub fn max_payload_bytes(&self) -> usize {
        self.config.max_payload_bytes()
    }

    /// Appends a record to the in-memory group (moving to a new segment
    /// first when it does not fit the current one). Durable only after
    /// the next [`WalWriter::commit`] with `sync`.
    pub async fn append(&mut self, kind: u16, payload: &[u8]) -> Result<u64> {
        self.check_failed()?;
        if payload.len() > self.max_payload_bytes() {
            return Err(Error::new(
                ErrorCode::RecordTooLarge,
                format!(
                    "a WAL record of {} bytes does not fit a {}-byte segment",
                    payload.len(),
                    self.config.segment_bytes
                ),
            )
            .with_hint("push smaller batches, or raise the WAL segment size"));
        }
        let span = record_span(payload.len());
        let end = self.block_start + self.pending.len() as u64;
        if end + span as u64 > self.config.segment_bytes {
            self.roll().await?;
        }
        let lsn = self.next_lsn;
        let header = RecordHeader::new(kind, self.generation, lsn, payload);
        let padding = span - RECORD_HEADER_BYTES - payload.len();
        self.pending.extend(&self.file, header.as_bytes());
        self.pending.extend(&self.file, payload);
        self.pending
            .extend(&self.file, &[0u8; RECORD_ALIGN][..padding]);
        self.next_lsn += 1;
        Ok(lsn)
    }

    /// Writes what was appended since the last commit, in one write, and
    /// with `sync` makes it durable with one `fdatasync`; returns once done,
    /// with the last LSN written.
    pub async fn commit(&mut self, sync: bool) -> Result<u64> {
        self.submit(sync).await?;
        self.wait().await?;
        Ok(self.next_lsn - 1)
    }

    /// Starts writing what was appended since the last submit (and with
    /// `sync`, an `fdatasync` after it), without waiting for the disk. It
    /// waits only for the previous submit's write, which must land first.
    pub async fn submit(&mut self, sync: bool) -> Result<()> {
        self.wait().await?;
        let mut buffer = None;
        if self.written < self.pending.len() {
            let len = self.pending.len();
            let length = len.next_multiple_of(BLOCK_BYTES);
            // The last, partly filled block stays in memory for the next
            // write, which rewrites it with more records.
            let full = len / BLOCK_BYTES * BLOCK_BYTES;
            let next = self.pending.split_off_tail(&self.file, full);
            let mut dma = std::mem::replace(&mut self.pending, next).into_buffer();
            dma.as_bytes_mut()[len..length].fill(0);
            dma.trim_to_size(length);
            buffer = Some((dma, self.block_start, length));
            self.block_start += full as u64;
            self.written = len - full;
            self.unsynced = true;
        }
        let sync = sync && self.unsynced;
        if buffer.is_none() && !sync {
            return Ok(());
        }
        if sync {
            self.unsynced = false;
        }
        let file = Rc::clone(&self.file);
        let path = self.dir.join(segment_name(self.segment_index));
        self.in_flight = Some(glommio::spawn_local(async move {
            if let Some((dma, position, length)) = buffer {
                let done = file
                    .write_at(dma, position)
                    .await
                    .map_err(|e| io_error("write", &path, e.into()))?;
                if done != length {
                    return Err(io_error(
                        "write",
                        &path,
                        std::io::Error::new(
                            std::io::ErrorKind::WriteZero,
                            format!("short write: {done} of {length} bytes"),
                        ),
                    ));
                }
            }
            if sync {
                file.fdatasync()
                    .await
                    .map_err(|e| io_error("sync", &path, e.into()))?;
            }
            Ok(())
        }));
        Ok(())
    }

    /// Waits for the last submitted write (and sync) to finish.
    pub async fn wait(&mut self) -> Result<()> {
        self.check_failed()?;
        if let Some(task) = self.in_flight.take() {
            if let Err(e) = task.await {
                self.failed = Some(e.clone());
                return Err(e);
            }
        }
        Ok(())
    }

    /// Closes the current segment (written and synced) and starts the next.
    async fn roll(&mut self) -> Result<()> {
        self.commit(true).await?;
        let index = self.segment_index + 1;
        let segment = match take_spare(&self.dir, index, self.config).await {
            Ok(Some(file)) => Ok(file),
            Ok(None) => create_segment(&self.dir, index, self.config).await,
            Err(e) => Err(e),
        };
        let file = match segment {
            Ok(file) => file,
            Err(e) => {
                self.failed = Some(e.clone());
                return Err(e);
            }
        };
        let old = std::mem::replace(&mut self.file, Rc::new(file));
        if let Ok(old) = Rc::try_unwrap(old) {
            let _ = old.close().await;
        }
        self.segment_index = index;
        self.block_start = 0;
        self.pending.clear();
        self.written = 0;
        self.start_segment();
        Ok(())
    }

    /// Puts the segment header at the start of a fresh segment.
    fn start_segment(&mut self) {
        let header = SegmentHeader::new(
            self.shard,
            self.segment_index,
            self.next_lsn,
            self.config.segment_bytes,
            self.generation,
        );
        debug_assert!(self.pending.len() == 0 && self.block_start == 0);
        self.pending.extend(&self.file, header.as_bytes());
    }

    fn check_failed(&self) -> Result<()> {
        match &self.failed {
            Some(e) => Err(e.clone()),
            None => Ok(()),
        }
    }
}

/// First size of a group's staging buffer; it doubles as groups need.
const STAGING_BYTES: usize = 256 * 1024;

/// Appended bytes waiting for their write, in a DMA buffer.
struct Staging {
    buffer: glommio::io::DmaBuffer,
    len: usize,
}

impl Staging {
    fn new(file: &DmaFile, capacity: usize) -> Self {
        Self {
            buffer: file.alloc_dma_buffer(capacity.next_multiple_of(BLOCK_BYTES)),
            len: 0,
        }
    }

    fn len(&self) -> usize {
        self.len
    }

    fn clear(&mut self) {
        self.len = 0;
    }

    /// Appends `bytes`, moving to a buffer twice as large when full (one
    /// more block than needed, so the write's padding always fits).
    fn extend(&mut self, file: &DmaFile, bytes: &[u8]) {
        let end = self.len + bytes.len();
        if end + BLOCK_BYTES > self.buffer.len() {
            let capacity = (end + BLOCK_BYTES).max(self.buffer.len() * 2);
            let mut bigger = file.alloc_dma_buffer(capacity.next_multiple_of(BLOCK_BYTES));
            bigger.as_bytes_mut()[..self.len].copy_from_slice(&self.buffer.as_bytes()[..self.len]);
            self.buffer = bigger;
        }
        self.buffer.as_bytes_mut()[self.len..end].copy_from_slice(bytes);
        self.len = end;
    }

    /// A new staging buffer holding the bytes from `from` on (less than a
    /// block), sized like this one.
    fn split_off_tail(&self, file: &DmaFile, from: usize) -> Self {
        let mut next = Self::new(file, self.buffer.len());
        next.extend(file, &self.buffer.as_bytes()[from..self.len]);
        next
    }

    fn into_buffer(self) -> glommio::io::DmaBuffer {
        self.buffer
    }
}

/// Reuses a spare (a segment a checkpoint released) as segment `index`:
/// renamed, its directory entry synced. Its old records stay until
/// overwritten; until the first write puts the new header in its first
/// block, the old header names another index, so a crash before then ends
/// the log at the previous segment, and after it the old records' LSNs are
/// older than the log's. A spare of another size is deleted. `None` when
/// no spare is left.
async fn take_spare(dir: &Path, index: u64, config: WalConfig) -> Result<Option<DmaFile>> {
    let path = dir.join(segment_name(index));
    for slot in 0..crate::reader::SPARE_SEGMENTS {
        let spare = crate::reader::spare_path(dir, slot);
        if glommio::io::rename(&spare, &path).await.is_err() {
            // Not there (the common case), or not movable: try the next.
            continue;
        }
        let file = open_existing(&path).await?;
        let size = file
            .file_size()
            .await
            .map_err(|e| io_error("stat", &path, e.into()))?;
        if size != config.segment_bytes {
            let _ = file.close().await;
            glommio::io::remove(&path)
                .await
                .map_err(|e| io_error("remove", &path, e.into()))?;
            continue;
        }
        sync_directory(dir).await?;
        return Ok(Some(file));
    }
    Ok(None)
}

/// Opens an existing segment for reading and writing (O_DIRECT).
async fn open_existing(path: &Path) -> Result<DmaFile> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .dma_open(path)
        .await
        .map_err(|e| io_error("open", path, e.into()))
}

async fn sync_directory(dir: &Path) -> Result<()> {
    let directory = glommio::io::Directory::open(dir)
        .await
        .map_err(|e| io_error("open", dir, e.into()))?;
    directory
        .sync()
        .await
        .map_err(|e| io_error("sync", dir, e.into()))?;
    let _ = directory.close().await;
    Ok(())
}

/// Creates segment `index`: preallocated and zero-filled (overwriting
/// written blocks is cheaper than growing a file), synced, and its
/// directory entry synced.
async fn create_segment(dir: &Path, index: u64, config: WalConfig) -> Result<DmaFile> {
    let path = dir.join(segment_name(index));
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .dma_open(&path)
        .await
        .map_err(|e| io_error("create", &path, e.into()))?;
    file.pre_allocate(config.segment_bytes, false)
        .await
        .map_err(|e| io_error("preallocate", &path, e.into()))?;
    let mut position = 0;
    while position < config.segment_bytes {
        let length = ZERO_FILL_BYTES.min((config.segment_bytes - position) as usize);
        let mut zeros = file.alloc_dma_buffer(length);
        zeros.as_bytes_mut().fill(0);
        file.write_at(zeros, position)
            .await
            .map_err(|e| io_error("zero-fill", &path, e.into()))?;
        position += length as u64;
    }
    file.fdatasync()
        .await
        .map_err(|e| io_error("sync", &path, e.into()))?;
    sync_directory(dir).await?;
    Ok(file)
}

fn io_error(op: &str, path: &Path, e: std::io::Error) -> Error {
    let full = e.kind() == std::io::ErrorKind::StorageFull || e.raw_os_error() == Some(28);
    let error = Error::new(
        ErrorCode::WalWrite,
        format!("cannot {op} WAL file {}: {e}", path.display()),
    );
    if full {
        error.with_hint(
            "the disk holding the storage directory is full: free space, then reopen the \
             database (everything acknowledged is kept)",
        )
    } else {
        error.with_hint(
            "reopen the database once the storage is healthy; acknowledged input is kept",
        )
    }
}
