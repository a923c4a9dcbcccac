//! A checkpoint file of rows: a materialized view's or retained output's
//! contents (`view-NNN.arrow`) or a source's retained rows
//! (`retained-NNN.arrow`), whole or as a patch over the same file of an
//! earlier checkpoint (its base).
//!
//! Layout (little-endian):
//!
//! ```text
//! 0   8  magic "LDBROWS2"
//! 8   8  base epoch: this checkpoint's for a file that holds its rows whole
//! 16  .. sections: kind u32, length u64, payload
//! end 4  CRC32C of every byte before it
//! ```
//!
//! Section kinds: 2 a batch of rows (an Arrow IPC stream), 6 a patch over
//! the base's rows (payload in `laminar_state::patch`). The rows are the
//! sections' batches in order. The rows are diffed as one batch, so rows
//! that moved (an append-only view whose oldest rows left) are runs too.
//! A file without the magic is the first format: an Arrow IPC stream of
//! the rows, then its CRC32C, always whole.

use std::path::Path;

use arrow::array::RecordBatch;
use arrow::compute::concat_batches;
use laminar_runtime::Result;
use laminar_state::{Base, Part};

use super::files::{corrupt, part_section, read_ipc, seal, section_parts, section_payload, unseal};

const MAGIC: &[u8; 8] = b"LDBROWS2";
const HEADER_BYTES: usize = 16;
const SECTION_BYTES: usize = 12;

/// A file's base as the coordinator keeps it between checkpoints.
pub(crate) struct RowsBase {
    pub epoch: u64,
    digests: Base,
}

/// How a checkpoint writes a file of rows.
pub(crate) enum RowsPlan {
    /// Whole; once the checkpoint stands, this is the file's base (if
    /// the rows could be made one batch to diff).
    Whole(Vec<RecordBatch>, Option<RowsBase>),
    /// Parts over the base of `base`.
    Patch { base: u64, parts: Vec<Part> },
}

/// The rows as one batch (none for no rows).
fn one_batch(batches: &[RecordBatch]) -> Result<Vec<RecordBatch>> {
    match batches {
        [] => Ok(Vec::new()),
        [one] => Ok(vec![one.clone()]),
        [first, ..] => Ok(vec![concat_batches(&first.schema(), batches)?]),
    }
}

/// Decides how to write `batches`, given the file's current base.
pub(crate) fn plan(
    batches: &[RecordBatch],
    base: Option<&RowsBase>,
    epoch: u64,
) -> Result<RowsPlan> {
    let Ok(rows) = one_batch(batches) else {
        // Batches that do not concatenate are written as they are, and
        // never patched.
        return Ok(RowsPlan::Whole(batches.to_vec(), None));
    };
    let digests = match base {
        Some(base) => {
            let diff = base.digests.diff(&rows)?;
            if diff.worth_patching() {
                return Ok(RowsPlan::Patch {
                    base: base.epoch,
                    parts: diff.parts,
                });
            }
            diff.into_base(&rows)?
        }
        None => Base::ranked(&rows)?,
    };
    Ok(RowsPlan::Whole(rows, Some(RowsBase { epoch, digests })))
}

fn section(out: &mut Vec<u8>, kind: u32, payload: &[u8]) {
    out.extend_from_slice(&kind.to_le_bytes());
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    out.extend_from_slice(payload);
}

/// The file's bytes: `parts` over the base of `base` (this checkpoint's
/// epoch when the parts are all whole).
pub(crate) fn encode(base: u64, parts: &[Part]) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(4096);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&base.to_le_bytes());
    let mut payload = Vec::new();
    for part in parts {
        let kind = part_section(part, &mut payload)?;
        section(&mut out, kind, &payload);
    }
    Ok(seal(out))
}

/// A file of rows read back, its patch not yet applied.
pub(crate) struct RowsFile {
    /// The epoch of the file its patches apply to (`epoch` if none).
    pub base: u64,
    parts: Vec<Part>,
}

impl RowsFile {
    /// The rows, patches applied to `base` (the base file's rows).
    pub fn resolve(self, path: &Path, base: Option<&[RecordBatch]>) -> Result<Vec<RecordBatch>> {
        let base = one_batch(base.unwrap_or_default())?;
        laminar_state::apply(&base, self.parts).map_err(|e| corrupt(path, e))
    }
}

/// Reads a file of rows written for checkpoint `epoch`.
pub(crate) fn decode(path: &Path, bytes: &[u8], epoch: u64) -> Result<RowsFile> {
    let body = unseal(path, bytes)?;
    if !body.starts_with(MAGIC) {
        // The first format: the rows whole.
        let batches = read_ipc(body).map_err(|e| corrupt(path, e))?;
        return Ok(RowsFile {
            base: epoch,
            parts: batches.into_iter().map(Part::Whole).collect(),
        });
    }
    if body.len() < HEADER_BYTES {
        return Err(corrupt(path, "truncated header"));
    }
    let base = u64::from_le_bytes(body[8..16].try_into().expect("8 bytes"));
    if base > epoch {
        return Err(corrupt(path, "its base is later than itself"));
    }
    let mut parts = Vec::new();
    let mut at = HEADER_BYTES;
    while at < body.len() {
        if body.len() - at < SECTION_BYTES {
            return Err(corrupt(path, "truncated section header"));
        }
        let kind = u32::from_le_bytes(body[at..at + 4].try_into().expect("4 bytes"));
        let len = u64::from_le_bytes(body[at + 4..at + 12].try_into().expect("8 bytes")) as usize;
        at += SECTION_BYTES;
        let payload = section_payload(path, body, &mut at, len)?;
        parts.extend(section_parts(path, kind, payload, base != epoch)?);
    }
    Ok(RowsFile { base, parts })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{ArrayRef, Int64Array, StringArray};
    use laminar_runtime::ErrorCode;

    use super::super::files::ipc_bytes;
    use super::*;

    fn rows(keys: std::ops::Range<i64>) -> RecordBatch {
        RecordBatch::try_from_iter(vec![
            (
                "k",
                Arc::new(Int64Array::from_iter_values(keys.clone())) as ArrayRef,
            ),
            (
                "s",
                Arc::new(StringArray::from_iter_values(keys.map(|k| format!("v{k}")))) as _,
            ),
        ])
        .unwrap()
    }

    fn whole_file(batches: &[RecordBatch], epoch: u64) -> (Vec<u8>, RowsBase) {
        let RowsPlan::Whole(rows, Some(base)) = plan(batches, None, epoch).unwrap() else {
            panic!("no base: whole");
        };
        let parts: Vec<Part> = rows.into_iter().map(Part::Whole).collect();
        (encode(epoch, &parts).unwrap(), base)
    }

    #[test]
    fn an_append_only_view_whose_oldest_rows_left_is_a_patch() {
        let path = Path::new("view-000.arrow");
        let first = vec![rows(0..500), rows(500..1_000)];
        let (base_bytes, base) = whole_file(&first, 3);
        let later = vec![rows(100..500), rows(500..1_000), rows(1_000..1_050)];
        let RowsPlan::Patch { base: epoch, parts } = plan(&later, Some(&base), 5).unwrap() else {
            panic!("a patch");
        };
        assert_eq!(epoch, 3);
        let bytes = encode(3, &parts).unwrap();
        assert!(
            bytes.len() * 4 < base_bytes.len(),
            "{} vs {}",
            bytes.len(),
            base_bytes.len()
        );
        let base_rows = decode(path, &base_bytes, 3)
            .unwrap()
            .resolve(path, None)
            .unwrap();
        let file = decode(path, &bytes, 5).unwrap();
        assert_eq!(file.base, 3);
        let back = file.resolve(path, Some(&base_rows)).unwrap();
        let want = concat_batches(&later[0].schema(), &later).unwrap();
        assert_eq!(back, vec![want]);
    }

    #[test]
    fn rows_with_windows_are_one_sequence_too() {
        // A retained window output: its first row's window changes as the
        // oldest rows leave, which must not make the file whole.
        let windowed = |keys: std::ops::Range<i64>| {
            let batch = rows(keys.clone());
            let starts = Int64Array::from_iter_values(keys.map(|k| k / 100 * 60_000));
            let mut columns = batch.columns().to_vec();
            columns.insert(0, Arc::new(starts));
            RecordBatch::try_from_iter(["window_start", "k", "s"].into_iter().zip(columns)).unwrap()
        };
        let (_, base) = whole_file(&[windowed(0..1_000)], 3);
        let later = [windowed(300..1_000), windowed(1_000..1_020)];
        let plan = plan(&later, Some(&base), 4).unwrap();
        assert!(matches!(plan, RowsPlan::Patch { base: 3, .. }));
    }

    #[test]
    fn the_first_format_still_reads_and_damage_is_caught() {
        let path = Path::new("view-000.arrow");
        let batches = vec![rows(0..10), rows(10..20)];
        let mut first_format = Vec::new();
        ipc_bytes(&batches, &mut first_format).unwrap();
        let first_format = seal(first_format);
        let file = decode(path, &first_format, 2).unwrap();
        assert_eq!(file.base, 2);
        assert_eq!(file.resolve(path, None).unwrap(), batches);
        let (bytes, _) = whole_file(&batches, 2);
        for at in 0..bytes.len() {
            let mut damaged = bytes.clone();
            damaged[at] ^= 0x01;
            let Err(error) = decode(path, &damaged, 2) else {
                panic!("byte {at}: accepted");
            };
            assert_eq!(error.code(), ErrorCode::StorageCorrupt, "byte {at}");
        }
        // No rows: no sections.
        let (empty, _) = whole_file(&[], 4);
        let back = decode(path, &empty, 4)
            .unwrap()
            .resolve(path, None)
            .unwrap();
        assert!(back.is_empty());
    }
}
