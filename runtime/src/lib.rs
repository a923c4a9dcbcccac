//! # laminar-runtime
//!
//! The bottom layer of LaminarDB: where code runs and how bytes move between
//! threads. Nothing here knows about SQL.
//!
//! - [`error`]: the one error type every crate returns, with a stable
//!   `LDB-NNNN` code.
//! - [`placement`]: which core each shard runs on, decided once, from the
//!   hwloc topology (NUMA-aware) or, without hwloc, from sysfs.
//! - [`spsc`]: the bounded lock-free single-producer/single-consumer ring
//!   that is the only way data crosses threads on the data path. A full ring
//!   is backpressure, never growth.
//! - [`router`]: hash partitioning of Arrow batches into per-shard
//!   sub-batches.
//! - [`executor`]: one Glommio executor per shard, pinned to its core.
//! - `alloc_tracking` (feature `allocation-tracking`): a global allocator
//!   that counts each shard thread's allocations.

#[cfg(feature = "allocation-tracking")]
pub mod alloc_tracking;
pub mod error;
pub mod executor;
pub mod placement;
pub mod router;
pub mod spsc;

pub use error::{Error, ErrorCode, Result};
