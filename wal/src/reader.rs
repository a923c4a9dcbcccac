//! Reading a shard's log back at recovery, on the control plane (plain
//! `std::fs`; no shard runs yet).
//!
//! The log is valid up to the first record that is not the next one: a
//! bad magic, a checksum that does not match, an LSN that is not the
//! previous plus one, a generation older than one already seen, or a
//! length running past the segment. At that point the reader tries the
//! next segment file, which continues the log only if its header is valid
//! and its first LSN is exactly the one expected; otherwise the log ends
//! there. Whatever follows the end (a torn tail, stale records of an
//! earlier generation, later segments) is not part of the log: [`cut`]
//! removes the later segment files so the writer can continue at the end.

use std::path::{Path, PathBuf};

use laminar_runtime::{Error, ErrorCode, Result};
use zerocopy::FromBytes;

use crate::format::{
    checksum, record_span, RecordHeader, SegmentHeader, FORMAT_VERSION, RECORD_HEADER_BYTES,
    RECORD_MAGIC, SEGMENT_HEADER_BYTES,
};

/// One record, as read back.
#[derive(Debug, Clone, Copy)]
pub struct Record<'a> {
    pub lsn: u64,
    pub generation: u32,
    pub kind: u16,
    pub payload: &'a [u8],
}

/// Where the valid log ends: the writer continues here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tail {
    /// Index of the segment holding the end of the log.
    pub segment_index: u64,
    /// Byte offset in that segment just past the last valid record.
    pub offset: u64,
    /// The LSN the next record gets.
    pub next_lsn: u64,
    /// The newest generation seen in the log.
    pub generation: u32,
    /// Segment files after the end of the log (removed by [`cut`]).
    pub beyond: Vec<PathBuf>,
    /// Bytes in the last segment after the end that were not zero (a torn
    /// or corrupt tail; reported, then overwritten).
    pub discarded_bytes: u64,
}

/// The file name of segment `index`.
pub fn segment_name(index: u64) -> String {
    format!("{index:020}.wal")
}

/// Released segment files kept for reuse (per log): a new segment taken
/// from a spare costs a rename and one header block instead of writing
/// the whole file with zeros.
pub const SPARE_SEGMENTS: usize = 2;

/// Where spare `slot` (0..[`SPARE_SEGMENTS`]) of a log lives. Not a
/// segment name, so the reader never sees spares.
pub fn spare_path(dir: &Path, slot: usize) -> PathBuf {
    dir.join(format!("spare-{slot}.wal-spare"))
}

/// The segment files in `dir`, by index.
pub fn segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_error("list", dir, &e)),
    };
    let mut found = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| io_error("list", dir, &e))?;
        let name = entry.file_name();
        let Some(index) = name
            .to_str()
            .and_then(|n| n.strip_suffix(".wal"))
            .and_then(|n| n.parse::<u64>().ok())
        else {
            continue;
        };
        found.push((index, entry.path()));
    }
    found.sort();
    Ok(found)
}

/// Reads shard `shard`'s log in `dir`, calling `visit` for each valid
/// record in LSN order. Returns where the log ends, or `None` for an empty
/// directory.
pub fn scan(
    dir: &Path,
    shard: u32,
    mut visit: impl FnMut(Record<'_>) -> Result<()>,
) -> Result<Option<Tail>> {
    let files = segments(dir)?;
    let mut tail: Option<Tail> = None;
    for (position, (index, path)) in files.iter().enumerate() {
        let bytes = std::fs::read(path).map_err(|e| io_error("read", path, &e))?;
        let Some(header) = SegmentHeader::parse(&bytes) else {
            break;
        };
        if header.version.get() != FORMAT_VERSION {
            return Err(Error::new(
                ErrorCode::StorageCorrupt,
                format!(
                    "WAL segment {} has format version {}, this build reads version {FORMAT_VERSION}",
                    path.display(),
                    header.version.get()
                ),
            )
            .with_hint("open the storage directory with the LaminarDB version that wrote it"));
        }
        let continues = match &tail {
            None => position == 0,
            Some(t) => {
                header.first_lsn.get() == t.next_lsn && header.generation.get() >= t.generation
            }
        };
        if !continues || header.shard.get() != shard || header.index.get() != *index {
            break;
        }
        let generation = tail
            .as_ref()
            .map_or(0, |t| t.generation)
            .max(header.generation.get());
        let mut t = Tail {
            segment_index: *index,
            offset: SEGMENT_HEADER_BYTES as u64,
            next_lsn: header.first_lsn.get(),
            generation,
            beyond: Vec::new(),
            discarded_bytes: 0,
        };
        let mut offset = SEGMENT_HEADER_BYTES;
        while let Some((record, span)) = next_record(&bytes, offset, &t, path)? {
            visit(record)?;
            t.next_lsn += 1;
            t.generation = record.generation;
            offset += span;
            t.offset = offset as u64;
        }
        t.discarded_bytes = bytes[offset.min(bytes.len())..]
            .iter()
            .filter(|&&b| b != 0)
            .count() as u64;
        tail = Some(t);
    }
    if let Some(t) = tail.as_mut() {
        t.beyond = files
            .iter()
            .filter(|(index, _)| *index > t.segment_index)
            .map(|(_, path)| path.clone())
            .collect();
    }
    Ok(tail)
}

/// The record at `offset` if it is the next one of the log. A whole,
/// checksummed record of another format version is an error, not an end:
/// a newer build wrote it.
fn next_record<'a>(
    bytes: &'a [u8],
    offset: usize,
    tail: &Tail,
    path: &Path,
) -> Result<Option<(Record<'a>, usize)>> {
    let Some((header, _)) = bytes
        .get(offset..)
        .and_then(|b| RecordHeader::read_from_prefix(b).ok())
    else {
        return Ok(None);
    };
    if header.magic.get() != RECORD_MAGIC {
        return Ok(None);
    }
    let payload_bytes = header.payload_bytes.get() as usize;
    let start = offset + RECORD_HEADER_BYTES;
    let Some(payload) = start
        .checked_add(payload_bytes)
        .and_then(|end| bytes.get(start..end))
    else {
        return Ok(None);
    };
    if checksum(&header, payload) != header.crc.get() {
        return Ok(None);
    }
    if u32::from(header.version.get()) != FORMAT_VERSION {
        return Err(Error::new(
            ErrorCode::StorageCorrupt,
            format!(
                "WAL record {} in {} has format version {}, this build reads version {FORMAT_VERSION}",
                header.lsn.get(),
                path.display(),
                header.version.get()
            ),
        )
        .with_hint("open the storage directory with the LaminarDB version that wrote it"));
    }
    if header.lsn.get() != tail.next_lsn || header.generation.get() < tail.generation {
        return Ok(None);
    }
    let record = Record {
        lsn: header.lsn.get(),
        generation: header.generation.get(),
        kind: header.kind.get(),
        payload,
    };
    Ok(Some((record, record_span(payload_bytes))))
}

/// Removes the segment files after the end of the log, so that the writer,
/// continuing at the end, is never followed by stale segments.
///
/// Only a segment whose header never made it to disk can follow the end of
/// the log: a segment is synced whole before the next one is started, so
/// a torn tail is always in the last segment. A later segment with a valid
/// header of its own (naming its file's index) therefore means that synced
/// data was damaged, and it may hold acknowledged records: it is not
/// removed, and recovery stops with `LDB-6004`.
pub fn cut(tail: &Tail) -> Result<()> {
    for path in &tail.beyond {
        let mut header = [0u8; SEGMENT_HEADER_BYTES];
        let readable = std::fs::File::open(path)
            .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut header))
            .is_ok();
        // A recycled segment whose new header never reached the disk still
        // has its old one, naming another index: nothing in it was written
        // (the header goes out with the segment's first records).
        let index = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".wal"))
            .and_then(|n| n.parse::<u64>().ok());
        let its_own = SegmentHeader::parse(&header).is_some_and(|h| Some(h.index.get()) == index);
        if readable && its_own {
            return Err(Error::new(
                ErrorCode::StorageCorrupt,
                format!(
                    "the WAL ends at LSN {} in segment {}, but {} follows it: a record before it is damaged",
                    tail.next_lsn.saturating_sub(1),
                    tail.segment_index,
                    path.display()
                ),
            )
            .with_hint(
                "the disk damaged synced data; to open the database with what precedes the \
                 damage, move that segment and the ones after it out of the directory",
            ));
        }
    }
    for path in &tail.beyond {
        std::fs::remove_file(path).map_err(|e| io_error("remove", path, &e))?;
    }
    if let Some(dir) = tail.beyond.first().and_then(|p| p.parent()) {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| io_error("sync", dir, &e))?;
    }
    Ok(())
}

fn io_error(op: &str, path: &Path, e: &std::io::Error) -> Error {
    Error::new(
        ErrorCode::Io,
        format!("cannot {op} {}: {e}", path.display()),
    )
}

/// Releases the oldest segment files while every record in them has an
/// LSN up to `lsn` (a checkpoint covers them): a segment goes when the one
/// after it starts at or before `lsn + 1`. The log stays contiguous (only
/// a prefix of the files goes) and the newest segment always stays, so
/// the writer's position and the LSNs after `lsn` are kept. Released files
/// become spares while fewer than [`SPARE_SEGMENTS`] are kept (the writer
/// reuses them), and are deleted otherwise. Their stale records can never
/// be read as part of the log: their LSNs are older than any the writer
/// gives. Returns how many files were released.
pub fn release(dir: &Path, lsn: u64) -> Result<usize> {
    let files = segments(dir)?;
    let mut released = 0;
    for pair in files.windows(2) {
        let (_, path) = &pair[0];
        let (next_index, next) = &pair[1];
        let mut header = [0u8; SEGMENT_HEADER_BYTES];
        let readable = std::fs::File::open(next)
            .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut header))
            .is_ok();
        let Some(next_header) = readable.then(|| SegmentHeader::parse(&header)).flatten() else {
            break;
        };
        // A spare the writer is making the next segment keeps its old
        // header (another index, an old first LSN) until the writer's
        // first write: the log does not go on there yet, so the segment
        // before it still holds the log's end and must stay.
        if next_header.index.get() != *next_index
            || next_header.first_lsn.get() > lsn.saturating_add(1)
        {
            break;
        }
        // Only this function fills spare slots (the writer empties them),
        // so a slot seen free stays free until it is filled here.
        match (0..SPARE_SEGMENTS)
            .map(|slot| spare_path(dir, slot))
            .find(|spare| !spare.exists())
        {
            Some(spare) => {
                std::fs::rename(path, &spare).map_err(|e| io_error("rename", path, &e))?
            }
            None => std::fs::remove_file(path).map_err(|e| io_error("remove", path, &e))?,
        }
        released += 1;
    }
    if released > 0 {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| io_error("sync", dir, &e))?;
    }
    Ok(released)
}
