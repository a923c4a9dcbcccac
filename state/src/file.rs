//! Checkpoint files written with direct I/O.
//!
//! A checkpoint's files are written once and read back only by recovery:
//! through the page cache they would evict the data the engine is using
//! and be copied twice. They are written with `O_DIRECT` from 4 KiB
//! aligned buffers, 1 MiB per write, padded to a whole block; the file is
//! then cut to its length and synced with its metadata. A file system
//! without direct I/O (it refuses `O_DIRECT` with `EINVAL`, as tmpfs did
//! before Linux 6.6) gets the same bytes through the page cache.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;

use zerocopy::IntoBytes;

/// The alignment and size unit of direct I/O.
pub const BLOCK_BYTES: usize = 4096;
const CHUNK_BLOCKS: usize = 256;

#[derive(
    Clone,
    Copy,
    zerocopy::FromBytes,
    zerocopy::IntoBytes,
    zerocopy::Immutable,
    zerocopy::KnownLayout,
)]
#[repr(C, align(4096))]
struct Block([u8; BLOCK_BYTES]);

/// How a file was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    Direct,
    /// The file system refused `O_DIRECT`.
    Buffered,
}

/// Creates (or replaces) `path` holding `bytes`, durable when this
/// returns.
pub fn write_durable(path: &Path, bytes: &[u8]) -> std::io::Result<Written> {
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .custom_flags(libc::O_DIRECT)
        .open(path);
    let file = match file {
        Ok(file) => file,
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            let mut file = File::create(path)?;
            file.write_all(bytes)?;
            file.sync_all()?;
            return Ok(Written::Buffered);
        }
        Err(e) => return Err(e),
    };
    // A Vec of blocks is aligned as a block is.
    let mut blocks = vec![Block([0; BLOCK_BYTES]); CHUNK_BLOCKS];
    let buffer = blocks.as_mut_slice().as_mut_bytes();
    for (i, chunk) in bytes.chunks(buffer.len()).enumerate() {
        let padded = chunk.len().next_multiple_of(BLOCK_BYTES);
        buffer[..chunk.len()].copy_from_slice(chunk);
        buffer[chunk.len()..padded].fill(0);
        write_blocks(&file, &buffer[..padded], (i * buffer.len()) as u64)?;
    }
    file.set_len(bytes.len() as u64)?;
    file.sync_all()?;
    Ok(Written::Direct)
}

/// Writes whole blocks at `offset`. A direct write that comes back short
/// by a part of a block cannot be continued (the rest would be
/// misaligned), so it is an error saying so rather than a confusing
/// `EINVAL` from the retry.
fn write_blocks(file: &File, mut blocks: &[u8], mut offset: u64) -> std::io::Result<()> {
    while !blocks.is_empty() {
        let written = file.write_at(blocks, offset)?;
        if written == 0 || written % BLOCK_BYTES != 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::WriteZero,
                format!(
                    "a direct write stored {written} of {} bytes (is the disk full?)",
                    blocks.len()
                ),
            ));
        }
        blocks = &blocks[written..];
        offset += written as u64;
    }
    Ok(())
}
