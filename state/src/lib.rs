//! Per-shard state snapshots and what a checkpoint must write of them.
//!
//! Operators hand their state to a checkpoint as Arrow batches (see
//! `laminar_operators::Operator::snapshot`). Writing all of it at every
//! checkpoint costs I/O in proportion to the state, however little of it
//! changed. This crate makes checkpoints incremental without touching the
//! hot path:
//!
//! - [`digest`]: a 128-bit digest of every row of a batch (XXH3-128 over
//!   a fixed-width encoding of the row's values, or Arrow's row format
//!   for other types, so equal values give equal digests whatever the
//!   arrays' layout).
//! - [`patch`]: a [`Base`] remembers the digests of the snapshot last
//!   written in full; [`Base::diff`] describes a later snapshot as runs
//!   of the base's rows plus the rows that are new, and [`apply`] rebuilds
//!   it from the base's batches. The patch's byte format is specified in
//!   that module.
//! - [`file`]: writing a checkpoint file with direct I/O and making it
//!   durable.
//!
//! Patches are *cumulative*: each one is relative to the base, never to
//! the previous patch, so recovery reads exactly two files (base and
//! patch) and a lost or damaged intermediate patch cannot break a chain.
//! The caller compacts by writing a new base once a patch would be more
//! than half of the state (see [`Diff::worth_patching`]).
//!
//! Why diff at checkpoint time instead of logging every mutation: the
//! shards pay nothing per row (no dirty bit, no changelog append), and
//! operators whose state is DataFusion's accumulators (which can only be
//! read whole) need no change. The cost moves to the checkpoint thread:
//! encoding the rows and hashing them, O(state) CPU, while the disk
//! writes, which dominate on a shared virtio disk, follow what changed.

pub mod digest;
pub mod file;
pub mod patch;

pub use digest::{row_digests, Digest};
pub use patch::{apply, Base, Diff, Part, Patch, Run};
