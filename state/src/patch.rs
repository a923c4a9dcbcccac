//! A snapshot described as a patch over a base snapshot.
//!
//! A snapshot is a list of batches. Each batch of a later snapshot is
//! matched with a batch of the base by its *slot*: a batch with an
//! `Int64` column `window_start` (an operator's state for one window) by
//! that window and its rank among batches of the same window, any other
//! batch by its rank among such batches. A matched batch with the same
//! schema becomes a [`Patch`]: [`Run`]s of consecutive base rows and of
//! new rows whose concatenation is the batch. The runs find rows that
//! stayed in place (state updated in place), rows that moved (a buffer
//! evicted from its front) and rows that are new. A batch with no match,
//! or for which a patch would save little, is written whole.
//!
//! Byte format of a patch (little-endian), as a checkpoint file stores it:
//!
//! ```text
//! 0      4  base batch: its index in the base snapshot's stream
//! 4      4  runs: n
//! 8   8*n   runs: start u32 (u32::MAX: the next rows of the new rows), len u32
//! ..        the new rows: an Arrow IPC stream of one batch
//! ```

use std::io::Cursor;

use arrow::array::{Array, Int64Array, RecordBatch};
use arrow::compute::concat_batches;
use arrow::datatypes::SchemaRef;
use arrow::ipc::reader::StreamReader;
use arrow::ipc::writer::StreamWriter;
use hashbrown::HashMap;
use laminar_runtime::{Error, ErrorCode, Result};

use crate::digest::{row_digests, Digest};

/// The end-of-stream marker an Arrow IPC stream closes with.
const IPC_END: [u8; 8] = [0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0];

/// A run's `start` meaning "from the new rows".
pub const NEW: u32 = u32::MAX;

/// `len` rows from `start` in the base batch, or the next `len` new rows
/// when `start` is [`NEW`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Run {
    pub start: u32,
    pub len: u32,
}

/// A batch as runs over a base batch and rows of its own.
#[derive(Debug, Clone)]
pub struct Patch {
    /// Index of the base batch in the base snapshot.
    pub base: usize,
    pub runs: Vec<Run>,
    /// The rows the base does not have, in the order the runs take them.
    pub rows: RecordBatch,
}

/// One batch of a snapshot, as written.
#[derive(Debug, Clone)]
pub enum Part {
    Whole(RecordBatch),
    Patch(Patch),
}

/// A snapshot described against a [`Base`].
#[derive(Debug)]
pub struct Diff {
    pub parts: Vec<Part>,
    /// Rows the snapshot has.
    pub rows: usize,
    /// Rows the parts write (whole batches and new rows).
    pub written_rows: usize,
    /// `[batch]` -> its rows' digests, where the diff computed them.
    digests: Vec<Option<Vec<Digest>>>,
    /// The base's way of matching batches, for the next base.
    windows: bool,
}

impl Diff {
    /// The snapshot this diff describes as the next base, reusing the
    /// digests the diff computed (for a snapshot written whole after all).
    pub fn into_base(self, current: &[RecordBatch]) -> Result<Base> {
        let digests = self
            .digests
            .into_iter()
            .zip(current)
            .map(|(digests, batch)| match digests {
                Some(digests) => Ok(Some(digests)),
                None => digests_of(batch),
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Base::with_digests(current, digests, self.windows))
    }

    /// Whether writing the patch beats writing a new base: it writes less
    /// than half of the rows. Past that a new base costs at most twice a
    /// patch once, and every later patch starts small again.
    pub fn worth_patching(&self) -> bool {
        self.written_rows * 2 <= self.rows
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Slot {
    Window(i64, usize),
    Rank(usize),
}

/// Names each batch of a snapshot by its slot (by rank only, without
/// `windows`).
fn slots(batches: &[RecordBatch], windows: bool) -> Vec<Slot> {
    let mut per_window: HashMap<i64, usize> = HashMap::new();
    let mut others = 0;
    batches
        .iter()
        .map(|batch| {
            let window = windows
                .then(|| batch.column_by_name("window_start"))
                .flatten()
                .and_then(|c| c.as_any().downcast_ref::<Int64Array>())
                .filter(|c| !c.is_empty() && c.is_valid(0))
                .map(|c| c.value(0));
            match window {
                Some(start) => {
                    let rank = per_window.entry(start).or_default();
                    *rank += 1;
                    Slot::Window(start, *rank - 1)
                }
                None => {
                    others += 1;
                    Slot::Rank(others - 1)
                }
            }
        })
        .collect()
}

struct BaseBatch {
    schema: SchemaRef,
    /// `None`: it cannot be digested (no columns, a type neither encoding
    /// takes, more rows than a run can address); later batches in its
    /// slot are written whole.
    digests: Option<Vec<Digest>>,
}

/// What is kept of the snapshot last written in full: a digest per row
/// (16 bytes a row), not the rows.
pub struct Base {
    /// Whether batches are matched by window (see the module docs).
    windows: bool,
    slots: HashMap<Slot, usize>,
    batches: Vec<BaseBatch>,
}

impl Base {
    /// A base whose batches are matched by window or rank.
    pub fn new(batches: &[RecordBatch]) -> Result<Self> {
        Self::digest(batches, true)
    }

    /// A base whose batches are matched by rank only: for rows that are
    /// one sequence (a view's), where the first row's window says nothing
    /// of the batch.
    pub fn ranked(batches: &[RecordBatch]) -> Result<Self> {
        Self::digest(batches, false)
    }

    fn digest(batches: &[RecordBatch], windows: bool) -> Result<Self> {
        let digests = batches.iter().map(digests_of).collect::<Result<Vec<_>>>()?;
        Ok(Self::with_digests(batches, digests, windows))
    }

    fn with_digests(
        batches: &[RecordBatch],
        digests: Vec<Option<Vec<Digest>>>,
        windows: bool,
    ) -> Self {
        Self {
            windows,
            slots: slots(batches, windows)
                .into_iter()
                .enumerate()
                .map(|(i, s)| (s, i))
                .collect(),
            batches: batches
                .iter()
                .zip(digests)
                .map(|(b, digests)| BaseBatch {
                    schema: b.schema(),
                    digests,
                })
                .collect(),
        }
    }

    /// Bytes this base keeps in memory.
    pub fn memory_bytes(&self) -> usize {
        self.batches
            .iter()
            .map(|b| b.digests.as_ref().map_or(0, |d| d.len()) * size_of::<Digest>())
            .sum()
    }

    /// `current` as parts over this base.
    pub fn diff(&self, current: &[RecordBatch]) -> Result<Diff> {
        let mut diff = Diff {
            parts: Vec::with_capacity(current.len()),
            rows: 0,
            written_rows: 0,
            digests: Vec::with_capacity(current.len()),
            windows: self.windows,
        };
        for (batch, slot) in current.iter().zip(slots(current, self.windows)) {
            diff.rows += batch.num_rows();
            let old = self.slots.get(&slot).and_then(|&base| {
                let BaseBatch { schema, digests } = &self.batches[base];
                let old = digests.as_ref().filter(|_| *schema == batch.schema())?;
                Some((base, old))
            });
            let (part, digests) = match old {
                Some((base, old)) => match digests_of(batch)? {
                    Some(new) => (patch(base, old, batch, &new)?, Some(new)),
                    None => (None, None),
                },
                None => (None, None),
            };
            diff.digests.push(digests);
            let part = part.unwrap_or_else(|| Part::Whole(batch.clone()));
            diff.written_rows += match &part {
                Part::Whole(b) => b.num_rows(),
                Part::Patch(p) => p.rows.num_rows(),
            };
            diff.parts.push(part);
        }
        Ok(diff)
    }
}

/// How many times a patch looks for a row in the whole base before it
/// builds an index (or, if none was found, takes misses for new rows).
const SCANS: usize = 4;
/// How far a patch looks ahead for rows that line up again after a miss.
const LOOKAHEAD: usize = 4;

/// `batch` (digests `new`) as a patch over base batch `base` (digests
/// `old`), if one saves much.
///
/// Rows are first compared in place (state updated in place keeps its
/// position), a miss followed by rows that line up again within
/// [`LOOKAHEAD`] is a row replaced in place, and rows past the base's end
/// are new. Any other miss looks for the row in the whole base: a linear
/// scan (cheap next to a hash index of every base row) for the first
/// [`SCANS`] misses; if a scan finds a moved row (a buffer evicted from
/// its front), the base is indexed for the later misses, otherwise they
/// count as new. It gives up as soon as more than half of the rows are
/// new.
fn patch(base: usize, old: &[Digest], batch: &RecordBatch, new: &[Digest]) -> Result<Option<Part>> {
    let mut runs: Vec<Run> = Vec::new();
    let mut fresh: Vec<u32> = Vec::new();
    let mut index: Option<HashMap<Digest, u32>> = None;
    let mut scans = 0;
    let mut moved = false;
    let mut next = 0usize;
    let lines_up = |next: usize, row: usize| {
        (1..=LOOKAHEAD)
            .any(|k| matches!((old.get(next + k), new.get(row + k)), (Some(a), Some(b)) if a == b))
    };
    for (row, digest) in new.iter().enumerate() {
        let found = if old.get(next) == Some(digest) {
            Some(next)
        } else if next >= old.len() || lines_up(next, row) {
            None
        } else if let Some(index) = &index {
            index.get(digest).map(|&i| i as usize)
        } else if scans < SCANS {
            scans += 1;
            let at = old.iter().position(|d| d == digest);
            moved |= at.is_some();
            at
        } else if moved {
            let index = index.insert({
                let mut index = HashMap::with_capacity(old.len());
                for (i, d) in old.iter().enumerate().rev() {
                    index.insert(*d, i as u32);
                }
                index
            });
            index.get(digest).map(|&i| i as usize)
        } else {
            None
        };
        let start = match found {
            Some(at) => at as u32,
            None => {
                fresh.push(row as u32);
                if fresh.len() * 2 > new.len() {
                    return Ok(None);
                }
                NEW
            }
        };
        match runs.last_mut() {
            Some(run) if run.start == NEW && start == NEW => run.len += 1,
            Some(run) if run.start != NEW && start == run.start + run.len => run.len += 1,
            _ => runs.push(Run { start, len: 1 }),
        }
        next = found.map_or(next + 1, |at| at + 1);
    }
    // A run costs 8 bytes; a patch of many short runs is not worth its
    // bookkeeping.
    let row_bytes = batch.get_array_memory_size() / batch.num_rows().max(1);
    if runs.len() * 8 * 2 > new.len() * row_bytes.max(1) {
        return Ok(None);
    }
    let indices = arrow::array::UInt32Array::from(fresh);
    let columns = batch
        .columns()
        .iter()
        .map(|c| arrow::compute::take(c.as_ref(), &indices, None))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    Ok(Some(Part::Patch(Patch {
        base,
        runs,
        rows: RecordBatch::try_new(batch.schema(), columns)?,
    })))
}

/// A batch's digests, `None` when it has more rows than a run can address
/// (run positions are `u32`, and `u32::MAX` marks new rows).
fn digests_of(batch: &RecordBatch) -> Result<Option<Vec<Digest>>> {
    if batch.num_rows() >= NEW as usize {
        return Ok(None);
    }
    row_digests(batch)
}

fn corrupt(detail: impl std::fmt::Display) -> Error {
    Error::new(
        ErrorCode::StorageCorrupt,
        format!("checkpoint patch: {detail}"),
    )
}

/// Rebuilds a snapshot from its base's batches and its parts.
pub fn apply(base: &[RecordBatch], parts: Vec<Part>) -> Result<Vec<RecordBatch>> {
    parts
        .into_iter()
        .map(|part| match part {
            Part::Whole(batch) => Ok(batch),
            Part::Patch(patch) => {
                let old = base
                    .get(patch.base)
                    .ok_or_else(|| corrupt(format!("no base batch {}", patch.base)))?;
                apply_patch(old, &patch)
            }
        })
        .collect()
}

fn apply_patch(old: &RecordBatch, patch: &Patch) -> Result<RecordBatch> {
    if old.schema() != patch.rows.schema() {
        return Err(corrupt("its rows do not have the base batch's columns"));
    }
    let mut pieces = Vec::with_capacity(patch.runs.len());
    let mut taken = 0usize;
    for run in &patch.runs {
        let (from, start) = if run.start == NEW {
            taken += run.len as usize;
            (&patch.rows, taken - run.len as usize)
        } else {
            (old, run.start as usize)
        };
        if start + run.len as usize > from.num_rows() {
            return Err(corrupt("a run past the end of its rows"));
        }
        pieces.push(from.slice(start, run.len as usize));
    }
    if taken != patch.rows.num_rows() {
        return Err(corrupt("new rows that no run takes"));
    }
    Ok(concat_batches(&old.schema(), &pieces)?)
}

impl Patch {
    /// Appends the patch's bytes (format in the module docs).
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<()> {
        out.extend_from_slice(&(self.base as u32).to_le_bytes());
        out.extend_from_slice(&(self.runs.len() as u32).to_le_bytes());
        for run in &self.runs {
            out.extend_from_slice(&run.start.to_le_bytes());
            out.extend_from_slice(&run.len.to_le_bytes());
        }
        let mut writer = StreamWriter::try_new(out, &self.rows.schema())?;
        writer.write(&self.rows)?;
        writer.finish()?;
        Ok(())
    }

    pub fn decode(bytes: &[u8]) -> Result<Self> {
        let u32_at = |at: usize| -> Result<u32> {
            bytes
                .get(at..at + 4)
                .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")))
                .ok_or_else(|| corrupt("truncated"))
        };
        let base = u32_at(0)? as usize;
        let count = u32_at(4)? as usize;
        let rows_at = count
            .checked_mul(8)
            .and_then(|n| n.checked_add(8))
            .filter(|&end| end <= bytes.len())
            .ok_or_else(|| corrupt("truncated runs"))?;
        let runs = (0..count)
            .map(|i| {
                Ok(Run {
                    start: u32_at(8 + i * 8)?,
                    len: u32_at(12 + i * 8)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        // One batch, then the stream's end marker.
        if !bytes.ends_with(&IPC_END) {
            return Err(corrupt("truncated rows"));
        }
        let mut reader = StreamReader::try_new(Cursor::new(&bytes[rows_at..]), None)?;
        let rows = reader.next().ok_or_else(|| corrupt("no rows batch"))??;
        if reader.next().is_some() {
            return Err(corrupt("more than one rows batch"));
        }
        Ok(Self { base, runs, rows })
    }
}

#[cfg(test)]
mod tests;
