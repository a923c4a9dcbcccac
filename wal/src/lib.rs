//! The per-shard write-ahead log.
//!
//! Each shard owns one log: a directory of preallocated segment files
//! that only that shard's thread writes. Records are opaque payloads with
//! a kind, framed by a fixed header (magic, version, kind, length,
//! generation, LSN, CRC32C); the byte layout is specified in `FORMAT.md`.
//!
//! - [`format`]: the headers and their checksums.
//! - [`writer`]: [`WalWriter`], appending with Glommio DMA files and group
//!   commit (one write and at most one `fdatasync` per group).
//! - [`reader`]: [`scan`] reads a log back at recovery and finds where it
//!   ends (torn or corrupt tails are cut there); [`cut`] removes segment
//!   files past the end.
//!
//! Generations: every time a database opens its storage, it writes with a
//! generation newer than any in the log. A record older than the one
//! before it ends the log, so stale bytes past a cut can never be read as
//! part of it after new records are written over the cut.

pub mod format;
pub mod reader;
pub mod writer;

pub use reader::{
    cut, release, scan, segment_name, segments, spare_path, Record, Tail, SPARE_SEGMENTS,
};
pub use writer::{WalConfig, WalWriter};
