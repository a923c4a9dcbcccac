//! Checkpoint files: what a checkpoint writes, how it is made current,
//! and how it is read back.
//!
//! Layout under the storage directory:
//!
//! ```text
//! checkpoints/MANIFEST                    the current checkpoint (text; CRC32C on its last line)
//! checkpoints/<epoch>/shard-NNN.ckpt      a shard's state (whole, or a patch over a base's)
//! checkpoints/<epoch>/view-NNN.arrow      a view's or retained output's rows
//! checkpoints/<epoch>/retained-NNN.arrow  a source's retained rows
//! ```
//!
//! The shard file's format is in [`super::shard_file`]; a shard file may
//! be a patch over the shard's file in an earlier checkpoint directory,
//! which is then kept for as long as a manifest names it as a base. View
//! and retained-row files are an Arrow IPC stream followed by the CRC32C
//! of its bytes.
//!
//! The parts are written and synced first, then the manifest (write to
//! `MANIFEST.tmp`, fsync, rename, fsync the directory): a crash before the
//! rename leaves the previous checkpoint in force. Only then are older
//! checkpoints (but the bases the new one patches) and the WAL segments
//! it covers deleted.

use std::fs::File;
use std::path::{Path, PathBuf};

use arrow::array::RecordBatch;
use arrow::ipc::reader::StreamReader;
use arrow::ipc::writer::StreamWriter;
use laminar_runtime::{Error, ErrorCode, Result};

use laminar_state::Part;

use super::rows_file::{self, RowsBase, RowsPlan};
use super::shard_file::{plan, Plan, ShardBase, ShardFile, ShardSnapshot};

const MANIFEST_HEADER: &str = "LaminarDB checkpoint manifest v1";

fn io_error(op: &str, path: &Path, e: impl std::fmt::Display) -> Error {
    Error::new(
        ErrorCode::Checkpoint,
        format!("checkpoint: cannot {op} {}: {e}", path.display()),
    )
}

pub(super) fn corrupt(path: &Path, detail: impl std::fmt::Display) -> Error {
    Error::new(
        ErrorCode::StorageCorrupt,
        format!("checkpoint file {}: {detail}", path.display()),
    )
    .with_hint("the checkpoint named by checkpoints/MANIFEST is damaged; restore the storage directory from a backup")
}

pub(super) fn ipc_bytes(batches: &[RecordBatch], out: &mut Vec<u8>) -> Result<()> {
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

/// Section kinds a batch of state takes in shard and row files: whole
/// (an Arrow IPC stream) or a patch over the base's.
pub(super) const WHOLE_SECTION: u32 = 2;
pub(super) const PATCH_SECTION: u32 = 6;

/// Writes `part`'s section payload into `out` (cleared first); returns
/// the section kind.
pub(super) fn part_section(part: &laminar_state::Part, out: &mut Vec<u8>) -> Result<u32> {
    out.clear();
    match part {
        laminar_state::Part::Whole(batch) => {
            ipc_bytes(std::slice::from_ref(batch), out)?;
            Ok(WHOLE_SECTION)
        }
        laminar_state::Part::Patch(patch) => {
            patch.encode(out)?;
            Ok(PATCH_SECTION)
        }
    }
}

/// The parts a section of `kind` (whole or patch) holds; `patched`: the
/// file has a base, without which a patch is damage.
pub(super) fn section_parts(
    path: &Path,
    kind: u32,
    payload: &[u8],
    patched: bool,
) -> Result<Vec<laminar_state::Part>> {
    use laminar_state::{Part, Patch};
    match kind {
        WHOLE_SECTION => Ok(read_ipc(payload)
            .map_err(|e| corrupt(path, e))?
            .into_iter()
            .map(Part::Whole)
            .collect()),
        PATCH_SECTION if patched => Ok(vec![Part::Patch(
            Patch::decode(payload).map_err(|e| corrupt(path, e))?,
        )]),
        PATCH_SECTION => Err(corrupt(path, "a patch in a file without a base")),
        other => Err(corrupt(path, format!("unknown section kind {other}"))),
    }
}

/// The `len` bytes of a section's payload at `*at`, moving `*at` past them.
pub(super) fn section_payload<'a>(
    path: &Path,
    body: &'a [u8],
    at: &mut usize,
    len: usize,
) -> Result<&'a [u8]> {
    let payload = body
        .get(*at..at.saturating_add(len))
        .ok_or_else(|| corrupt(path, "section past the end"))?;
    *at += len;
    Ok(payload)
}

pub(super) fn read_ipc(bytes: &[u8]) -> Result<Vec<RecordBatch>> {
    if bytes.is_empty() {
        return Ok(Vec::new());
    }
    let reader = StreamReader::try_new(std::io::Cursor::new(bytes), None)?;
    Ok(reader.collect::<std::result::Result<Vec<_>, _>>()?)
}

/// Appends the CRC32C of everything before it.
pub(super) fn seal(mut bytes: Vec<u8>) -> Vec<u8> {
    let crc = crc32c::crc32c(&bytes);
    bytes.extend_from_slice(&crc.to_le_bytes());
    bytes
}

/// The bytes before a valid CRC32C trailer.
pub(super) fn unseal<'a>(path: &Path, bytes: &'a [u8]) -> Result<&'a [u8]> {
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

/// What `checkpoints/MANIFEST` records.
#[derive(Debug, Clone, Default)]
pub(crate) struct Manifest {
    pub epoch: u64,
    pub shards: usize,
    /// `[shard]` -> the last LSN the checkpoint covers.
    pub covered_lsn: Vec<u64>,
    /// `[shard]` -> the epoch of the checkpoint whose shard file this
    /// one's patches apply to (this epoch for a whole file).
    pub bases: Vec<u64>,
    /// `[view]`, `[source]` -> the same for view and retained-row files.
    pub view_bases: Vec<u64>,
    pub retained_bases: Vec<u64>,
    /// `[source]` -> rows accepted up to the checkpoint, all runs together.
    pub rows: Vec<u64>,
    pub views: usize,
    pub sources: usize,
    /// Lane key -> pushes before the cut, for the handles the cut knows
    /// (recovery numbers their later pushes on from there).
    pub handles: Vec<(u64, u64)>,
}

impl Manifest {
    /// Whether some file of this checkpoint patches checkpoint `epoch`'s.
    fn is_base(&self, epoch: u64) -> bool {
        self.bases
            .iter()
            .chain(&self.view_bases)
            .chain(&self.retained_bases)
            .any(|&b| b == epoch)
    }

    fn render(&self) -> String {
        let mut text = format!(
            "{MANIFEST_HEADER}\nepoch {}\nshards {}\nviews {}\nsources {}\n",
            self.epoch, self.shards, self.views, self.sources
        );
        for (shard, lsn) in self.covered_lsn.iter().enumerate() {
            let base = self.bases.get(shard).copied().unwrap_or(self.epoch);
            text.push_str(&format!("shard {shard} lsn {lsn} base {base}\n"));
        }
        for (source, rows) in self.rows.iter().enumerate() {
            text.push_str(&format!("source {source} rows {rows}\n"));
        }
        for (view, base) in self.view_bases.iter().enumerate() {
            text.push_str(&format!("view {view} base {base}\n"));
        }
        for (source, base) in self.retained_bases.iter().enumerate() {
            text.push_str(&format!("retained {source} base {base}\n"));
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
                Some("shard") => {
                    manifest.covered_lsn.push(number(3)?);
                    // Manifests before incremental checkpoints have no base.
                    manifest.bases.push(if words.len() > 4 {
                        number(5)?
                    } else {
                        u64::MAX
                    });
                }
                Some("source") => manifest.rows.push(number(3)?),
                Some("view") => manifest.view_bases.push(number(3)?),
                Some("retained") => manifest.retained_bases.push(number(3)?),
                Some("handle") => manifest.handles.push((number(1)?, number(3)?)),
                _ => return Err(bad("unknown line")),
            }
        }
        if manifest.covered_lsn.len() != manifest.shards || manifest.rows.len() != manifest.sources
        {
            return Err(bad("incomplete"));
        }
        // Manifests before incremental checkpoints name no view or
        // retained-row bases: those files are whole.
        for (bases, count) in [
            (&mut manifest.view_bases, manifest.views),
            (&mut manifest.retained_bases, manifest.sources),
        ] {
            if bases.is_empty() {
                bases.resize(count, manifest.epoch);
            } else if bases.len() != count {
                return Err(bad("incomplete"));
            }
        }
        for base in manifest
            .bases
            .iter_mut()
            .chain(&mut manifest.view_bases)
            .chain(&mut manifest.retained_bases)
        {
            if *base == u64::MAX {
                *base = manifest.epoch;
            } else if *base > manifest.epoch {
                return Err(bad("a base later than the checkpoint"));
            }
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

/// Creates `path` holding `bytes`, durable once this returns (direct I/O
/// where the file system has it).
fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    laminar_state::file::write_durable(path, bytes)
        .map(|_| ())
        .map_err(|e| io_error("write", path, e))
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_error("sync", dir, e))
}

/// A view's or source's rows in checkpoint `epoch`, its patch applied to
/// the file of checkpoint `base`.
fn read_rows(storage_dir: &Path, name: &str, epoch: u64, base: u64) -> Result<Vec<RecordBatch>> {
    let read = |epoch: u64| -> Result<(PathBuf, rows_file::RowsFile)> {
        let path = epoch_dir(storage_dir, epoch).join(name);
        let bytes = std::fs::read(&path).map_err(|e| io_error("read", &path, e))?;
        let file = rows_file::decode(&path, &bytes, epoch)?;
        Ok((path, file))
    };
    let (path, file) = read(epoch)?;
    if file.base != base {
        return Err(corrupt(&path, "its base differs from the manifest's"));
    }
    if base == epoch {
        return file.resolve(&path, None);
    }
    let (base_path, base_file) = read(base)?;
    if base_file.base != base {
        return Err(corrupt(&base_path, "a base that is itself a patch"));
    }
    let base_rows = base_file.resolve(&base_path, None)?;
    file.resolve(&path, Some(&base_rows))
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
        let name = format!("shard-{shard:03}.ckpt");
        let path = dir.join(&name);
        let file = read_shard(&path, shard, manifest.epoch)?;
        if file.snapshot.covered_lsn != manifest.covered_lsn[shard] {
            return Err(corrupt(&path, "its LSN differs from the manifest's"));
        }
        if file.base != manifest.bases[shard] {
            return Err(corrupt(&path, "its base differs from the manifest's"));
        }
        let snapshot = if file.base == manifest.epoch {
            file.resolve(&path, None)?
        } else {
            let base_path = epoch_dir(storage_dir, file.base).join(&name);
            let base = read_shard(&base_path, shard, file.base)?;
            if base.base != file.base {
                return Err(corrupt(&base_path, "a base that is itself a patch"));
            }
            let base = base.resolve(&base_path, None)?;
            file.resolve(&path, Some(&base))?
        };
        snapshots.push(snapshot);
    }
    let views = (0..views)
        .map(|v| {
            let name = format!("view-{v:03}.arrow");
            read_rows(storage_dir, &name, manifest.epoch, manifest.view_bases[v])
        })
        .collect::<Result<Vec<_>>>()?;
    let retained = (0..sources)
        .map(|s| {
            let name = format!("retained-{s:03}.arrow");
            read_rows(
                storage_dir,
                &name,
                manifest.epoch,
                manifest.retained_bases[s],
            )
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Some(Restored {
        manifest,
        shards: snapshots,
        views,
        retained,
    }))
}

fn read_shard(path: &Path, shard: usize, epoch: u64) -> Result<ShardFile> {
    let bytes = std::fs::read(path).map_err(|e| io_error("read", path, e))?;
    ShardSnapshot::decode(path, &bytes, shard, epoch)
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

/// What writing a checkpoint did.
pub(crate) struct Written {
    pub bytes: u64,
    pub wal_segments_released: usize,
    /// Shards whose file is a patch over an earlier one.
    pub patched_shards: usize,
    /// View and retained-row files that are patches.
    pub patched_files: usize,
}

/// What the coordinator keeps between checkpoints to write the next one
/// as patches: the bases, as digests.
#[derive(Default)]
pub(crate) struct Bases {
    pub shards: Vec<Option<ShardBase>>,
    pub views: Vec<Option<RowsBase>>,
    pub retained: Vec<Option<RowsBase>>,
}

/// Writes a gathered checkpoint, makes it the current one, and deletes
/// what it replaces. `bases` (kept by the coordinator between
/// checkpoints) decide which files are patches, and take the new bases
/// once the checkpoint stands.
pub(crate) fn write(storage_dir: &Path, gathered: Gathered, bases: &mut Bases) -> Result<Written> {
    let dir = epoch_dir(storage_dir, gathered.epoch);
    let root = root(storage_dir);
    if dir.exists() {
        // Left by a checkpoint that crashed before its manifest.
        std::fs::remove_dir_all(&dir).map_err(|e| io_error("remove", &dir, e))?;
    }
    std::fs::create_dir_all(&dir).map_err(|e| io_error("create", &dir, e))?;
    let parts = write_parts(&dir, &gathered, bases)?;
    sync_dir(&dir)?;
    sync_dir(&root)?;
    failpoint("checkpoint-before-manifest");
    let manifest = Manifest {
        epoch: gathered.epoch,
        shards: gathered.shards.len(),
        covered_lsn: gathered.shards.iter().map(|s| s.covered_lsn).collect(),
        bases: parts.shards.iter().map(|(base, _)| *base).collect(),
        view_bases: parts.views.iter().map(|(base, _)| *base).collect(),
        retained_bases: parts.retained.iter().map(|(base, _)| *base).collect(),
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
    // The checkpoint stands: files written whole are the next bases.
    let patched =
        |bases: &mut dyn Iterator<Item = u64>| bases.filter(|&b| b != manifest.epoch).count();
    let patched_shards = patched(&mut parts.shards.iter().map(|(b, _)| *b));
    let patched_files = patched(&mut parts.views.iter().chain(&parts.retained).map(|(b, _)| *b));
    take_new_bases(&mut bases.shards, parts.shards, manifest.epoch);
    take_new_bases(&mut bases.views, parts.views, manifest.epoch);
    take_new_bases(&mut bases.retained, parts.retained, manifest.epoch);
    failpoint("checkpoint-before-cleanup");
    // What it replaces can go, but the bases it patches.
    if let Ok(entries) = std::fs::read_dir(&root) {
        for entry in entries.flatten() {
            let older = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u64>().ok())
                .is_some_and(|epoch| epoch < manifest.epoch && !manifest.is_base(epoch));
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
    Ok(Written {
        bytes: parts.bytes,
        wal_segments_released: released,
        patched_shards,
        patched_files,
    })
}

/// Each file written: (the epoch of its base, its new base if whole).
struct Parts {
    bytes: u64,
    shards: Vec<(u64, Option<ShardBase>)>,
    views: Vec<(u64, Option<RowsBase>)>,
    retained: Vec<(u64, Option<RowsBase>)>,
}

/// Writes and syncs every file of the checkpoint but the manifest.
fn write_parts(dir: &Path, gathered: &Gathered, bases: &mut Bases) -> Result<Parts> {
    let epoch = gathered.epoch;
    let mut parts = Parts {
        bytes: 0,
        shards: Vec::with_capacity(gathered.shards.len()),
        views: Vec::with_capacity(gathered.views.len()),
        retained: Vec::with_capacity(gathered.retained.len()),
    };
    bases.shards.resize_with(gathered.shards.len(), || None);
    for (shard, snapshot) in gathered.shards.iter().enumerate() {
        let (encoded, written) = match plan(snapshot, bases.shards[shard].as_ref(), epoch)? {
            Plan::Patch { base, streams } => (
                snapshot.encode(shard, epoch, Some((base, &streams)))?,
                (base, None),
            ),
            Plan::Whole(base) => (snapshot.encode(shard, epoch, None)?, (epoch, Some(base))),
        };
        parts.bytes += encoded.len() as u64;
        write_synced(&dir.join(format!("shard-{shard:03}.ckpt")), &encoded)?;
        parts.shards.push(written);
    }
    let mut rows = |name: String, batches: &[RecordBatch], base: Option<&RowsBase>| {
        let (encoded, written) = match rows_file::plan(batches, base, epoch)? {
            RowsPlan::Patch { base, parts } => (rows_file::encode(base, &parts)?, (base, None)),
            RowsPlan::Whole(rows, new_base) => {
                let whole: Vec<Part> = rows.into_iter().map(Part::Whole).collect();
                (rows_file::encode(epoch, &whole)?, (epoch, new_base))
            }
        };
        parts.bytes += encoded.len() as u64;
        write_synced(&dir.join(name), &encoded)?;
        Ok::<_, Error>(written)
    };
    bases.views.resize_with(gathered.views.len(), || None);
    bases.retained.resize_with(gathered.retained.len(), || None);
    let views = (gathered.views.iter().enumerate())
        .map(|(v, batches)| {
            rows(
                format!("view-{v:03}.arrow"),
                batches,
                bases.views[v].as_ref(),
            )
        })
        .collect::<Result<Vec<_>>>()?;
    let retained = (gathered.retained.iter().enumerate())
        .map(|(s, batches)| {
            let name = format!("retained-{s:03}.arrow");
            rows(name, batches, bases.retained[s].as_ref())
        })
        .collect::<Result<Vec<_>>>()?;
    parts.views = views;
    parts.retained = retained;
    Ok(parts)
}

/// A file written whole in checkpoint `epoch` is the next one's base (or,
/// without one, the next one is whole too: the old base's directory is
/// about to go); a patch keeps its base.
fn take_new_bases<B>(bases: &mut [Option<B>], written: Vec<(u64, Option<B>)>, epoch: u64) {
    for (slot, (base, new)) in bases.iter_mut().zip(written) {
        if base == epoch {
            *slot = new;
        }
    }
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
    use super::*;

    #[test]
    fn a_file_written_whole_without_a_base_forgets_the_old_one() {
        // Its old base's directory is deleted once this checkpoint
        // stands, so the next checkpoint must not patch it.
        let mut bases = vec![Some("old"), Some("old"), Some("old")];
        take_new_bases(&mut bases, vec![(7, None), (3, None), (7, Some("new"))], 7);
        assert_eq!(bases, vec![None, Some("old"), Some("new")]);
    }

    #[test]
    fn a_manifest_reads_back_and_refuses_damage() {
        let manifest = Manifest {
            epoch: 12,
            shards: 2,
            covered_lsn: vec![100, 7],
            bases: vec![12, 9],
            view_bases: vec![10],
            retained_bases: vec![12, 12, 11],
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
        assert_eq!(back.bases, vec![12, 9]);
        assert_eq!(back.view_bases, vec![10]);
        assert_eq!(back.retained_bases, vec![12, 12, 11]);
        assert!(back.is_base(11) && back.is_base(9) && !back.is_base(8));
        // A manifest written before incremental checkpoints: every shard
        // file is whole.
        let old = "LaminarDB checkpoint manifest v1\nepoch 3\nshards 1\nviews 0\nsources 0\nshard 0 lsn 5\n";
        let old = format!("{old}crc {}\n", crc32c::crc32c(old.as_bytes()));
        assert_eq!(Manifest::parse(path, &old).unwrap().bases, vec![3]);
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
