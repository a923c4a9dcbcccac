//! Tables on disk: in a durable database, every `INSERT INTO table` is
//! appended to the table's log before it changes the table, and
//! `CREATE TABLE` on a storage directory that has the table reads the log
//! back.
//!
//! Files, in `DIR/tables/`: `<name>.sql` holds the `CREATE TABLE`
//! statement (a table re-created with other SQL is refused: `LDB-6002`),
//! `<name>.log` a sequence of frames:
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 4 | magic `LTBL` |
//! | 4 | 4 | payload length (little-endian) |
//! | 8 | 4 | CRC32C of the payload |
//! | 12 | 4 | reserved, zero |
//! | 16 | n | the inserted rows as an Arrow IPC stream |
//!
//! The log ends at the first frame that is incomplete or fails its
//! checksum (a torn tail); it is cut there on open. Tables live on the
//! control plane, so this is plain `std::fs`, written on the caller's
//! thread; in `Sync` durability each insert is `fdatasync`ed before it
//! returns, in `Async` it is written (a process crash keeps it; a power
//! loss may not).

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use arrow::array::RecordBatch;
use arrow::ipc::reader::StreamReader;
use arrow::ipc::writer::StreamWriter;
use laminar_runtime::{Error, ErrorCode, Result};

const MAGIC: [u8; 4] = *b"LTBL";
const FRAME_HEADER_BYTES: usize = 16;

/// The append end of one table's log.
pub(crate) struct TableLog {
    path: PathBuf,
    file: Mutex<File>,
    sync: bool,
}

fn io_error(op: &str, path: &Path, e: impl std::fmt::Display) -> Error {
    Error::new(
        ErrorCode::Io,
        format!("cannot {op} {}: {e}", path.display()),
    )
}

/// A file name for a table: the name itself when it is plain, else hex.
fn file_stem(name: &str) -> String {
    if !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
    {
        name.to_string()
    } else {
        let hex: String = name.bytes().map(|b| format!("{b:02x}")).collect();
        format!("x{hex}")
    }
}

impl TableLog {
    /// Opens (or starts) table `name`'s log in `dir`; returns it with the
    /// rows logged so far, in order.
    pub fn open(dir: &Path, name: &str, sql: &str, sync: bool) -> Result<(Self, Vec<RecordBatch>)> {
        std::fs::create_dir_all(dir).map_err(|e| io_error("create", dir, e))?;
        let stem = file_stem(name);
        let sql_path = dir.join(format!("{stem}.sql"));
        let path = dir.join(format!("{stem}.log"));
        match std::fs::read_to_string(&sql_path) {
            Ok(existing) if existing.trim() == sql.trim() => {}
            Ok(_) => {
                return Err(Error::new(
                    ErrorCode::StorageMismatch,
                    format!(
                        "table '{name}' in the storage directory was created with other SQL ({})",
                        sql_path.display()
                    ),
                )
                .with_hint("create it with the same statement, or DROP TABLE it first"))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                // A log without its statement is left over from a drop
                // that did not finish: it belongs to no table.
                let _ = std::fs::remove_file(&path);
                let mut file =
                    File::create(&sql_path).map_err(|e| io_error("create", &sql_path, e))?;
                file.write_all(sql.trim().as_bytes())
                    .and_then(|()| file.sync_all())
                    .map_err(|e| io_error("write", &sql_path, e))?;
            }
            Err(e) => return Err(io_error("read", &sql_path, e)),
        }
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(io_error("read", &path, e)),
        };
        let (batches, valid) = read_frames(&bytes, &path)?;
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| io_error("open", &path, e))?;
        if valid < bytes.len() {
            log::warn!(
                "table '{name}': cut a torn tail of {} bytes from {}",
                bytes.len() - valid,
                path.display()
            );
            file.set_len(valid as u64)
                .and_then(|()| file.sync_all())
                .map_err(|e| io_error("truncate", &path, e))?;
        }
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| io_error("sync", dir, e))?;
        Ok((
            Self {
                path,
                file: Mutex::new(file),
                sync,
            },
            batches,
        ))
    }

    /// Appends inserted rows; durable on return in `Sync` durability.
    pub fn append(&self, batch: &RecordBatch) -> Result<()> {
        let mut payload = Vec::new();
        let mut writer = StreamWriter::try_new(&mut payload, &batch.schema())?;
        writer.write(batch)?;
        writer.finish()?;
        let mut frame = Vec::with_capacity(FRAME_HEADER_BYTES + payload.len());
        frame.extend_from_slice(&MAGIC);
        frame.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        frame.extend_from_slice(&crc32c::crc32c(&payload).to_le_bytes());
        frame.extend_from_slice(&0u32.to_le_bytes());
        frame.extend_from_slice(&payload);
        let mut file = self.file.lock().map_err(|_| {
            Error::new(
                ErrorCode::Execution,
                "table log lock poisoned by an earlier panic",
            )
        })?;
        let written =
            file.write_all(&frame)
                .and_then(|()| if self.sync { file.sync_data() } else { Ok(()) });
        written.map_err(|e| {
            let error = Error::new(
                ErrorCode::WalWrite,
                format!("cannot write table log {}: {e}", self.path.display()),
            );
            if e.kind() == std::io::ErrorKind::StorageFull {
                error.with_hint(
                    "the disk holding the storage directory is full; the insert was not applied",
                )
            } else {
                error.with_hint("the insert was not applied")
            }
        })
    }

    /// Removes the table's files (`DROP TABLE`): the statement first, so a
    /// crash in between leaves a log that belongs to no table.
    pub fn remove(dir: &Path, name: &str) -> Result<()> {
        let stem = file_stem(name);
        for path in [
            dir.join(format!("{stem}.sql")),
            dir.join(format!("{stem}.log")),
        ] {
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_error("remove", &path, e)),
            }
        }
        Ok(())
    }
}

/// The batches of the valid frames, and how many bytes they span.
fn read_frames(bytes: &[u8], path: &Path) -> Result<(Vec<RecordBatch>, usize)> {
    let mut batches = Vec::new();
    let mut offset = 0;
    while let Some(header) = bytes.get(offset..offset + FRAME_HEADER_BYTES) {
        let length = u32::from_le_bytes(header[4..8].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(header[8..12].try_into().expect("4 bytes"));
        let start = offset + FRAME_HEADER_BYTES;
        let Some(payload) = bytes.get(start..start + length) else {
            break;
        };
        if header[..4] != MAGIC || crc32c::crc32c(payload) != crc {
            break;
        }
        let reader = StreamReader::try_new(std::io::Cursor::new(payload), None).map_err(|e| {
            Error::new(
                ErrorCode::StorageCorrupt,
                format!("{} at byte {offset}: {e}", path.display()),
            )
        })?;
        for batch in reader {
            batches.push(batch.map_err(|e| {
                Error::new(
                    ErrorCode::StorageCorrupt,
                    format!("{} at byte {offset}: {e}", path.display()),
                )
            })?);
        }
        offset = start + length;
    }
    Ok((batches, offset))
}
