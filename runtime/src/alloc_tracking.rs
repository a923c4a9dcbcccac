//! Allocation counting on shard threads (cargo feature
//! `allocation-tracking`).
//!
//! The hot-path rule is "no per-row allocation, a bounded number per
//! batch". This makes the rule measurable: [`TrackingAllocator`] is a
//! global allocator over the system's that counts the allocations (and
//! reallocations) each shard thread makes, in a counter of that shard's
//! own. Threads that are not shards (the application's pushing threads,
//! subscribers, the control plane) are not counted, so a figure is the
//! engine's data path alone.
//!
//! `laminar-db` installs it as the process's global allocator when built
//! with its `allocation-tracking` feature (which is why it is a feature: a
//! program may have a global allocator of its own). The shard executor
//! tags its thread at start ([`track_current_thread`]); the counts are read
//! with [`shard_allocations`].
//!
//! Cost when on: a thread-local read per allocation, and on shard threads
//! two uncontended atomic adds on a cache line that shard alone writes.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};

use crossbeam_utils::CachePadded;

/// Shards beyond this many are not counted (their counts read as zero).
pub const MAX_TRACKED_SHARDS: usize = 256;

/// Allocations made by one shard's thread since the process started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AllocationCount {
    /// Calls to `alloc`, `alloc_zeroed` and `realloc`.
    pub allocations: u64,
    /// Bytes those calls asked for (a `realloc` counts its new size).
    pub bytes: u64,
}

struct Counter {
    allocations: AtomicU64,
    bytes: AtomicU64,
}

static COUNTERS: [CachePadded<Counter>; MAX_TRACKED_SHARDS] = [const {
    CachePadded::new(Counter {
        allocations: AtomicU64::new(0),
        bytes: AtomicU64::new(0),
    })
}; MAX_TRACKED_SHARDS];

/// Sentinel for threads that are not shards.
const UNTRACKED: usize = usize::MAX;

thread_local! {
    // `const` initialisation: reading it never allocates, which matters
    // inside an allocator.
    static SHARD: Cell<usize> = const { Cell::new(UNTRACKED) };
}

/// Counts the calling thread's allocations as shard `shard`'s from now on.
/// Called by the shard executor as its thread starts.
pub fn track_current_thread(shard: usize) {
    SHARD.with(|s| s.set(shard));
}

/// `[shard]` -> that shard's allocations so far, for the first `shards`
/// shards.
pub fn shard_allocations(shards: usize) -> Vec<AllocationCount> {
    (0..shards)
        .map(|shard| match COUNTERS.get(shard) {
            Some(counter) => AllocationCount {
                allocations: counter.allocations.load(Ordering::Relaxed),
                bytes: counter.bytes.load(Ordering::Relaxed),
            },
            None => AllocationCount::default(),
        })
        .collect()
}

#[inline]
fn record(bytes: usize) {
    // `try_with`: during thread teardown the slot may be gone; such
    // allocations are simply not counted.
    let shard = SHARD.try_with(Cell::get).unwrap_or(UNTRACKED);
    if let Some(counter) = COUNTERS.get(shard) {
        counter.allocations.fetch_add(1, Ordering::Relaxed);
        counter.bytes.fetch_add(bytes as u64, Ordering::Relaxed);
    }
}

/// The counting global allocator (see the module docs).
pub struct TrackingAllocator;

// SAFETY: every call is forwarded unchanged to the system allocator;
// counting touches only atomics and a `const`-initialised thread-local,
// neither of which allocates.
unsafe impl GlobalAlloc for TrackingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        record(layout.size());
        // SAFETY: the caller's contract is System's contract.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        record(layout.size());
        // SAFETY: as above.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        record(new_size);
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The unit test binary does not install the allocator; this checks the
    // bookkeeping itself.
    #[test]
    fn counts_only_tagged_threads_into_their_shard() {
        let shard = MAX_TRACKED_SHARDS - 1;
        let before = shard_allocations(MAX_TRACKED_SHARDS)[shard];
        record(100); // this thread is not a shard: not counted
        std::thread::spawn(move || {
            track_current_thread(shard);
            record(10);
            record(20);
        })
        .join()
        .unwrap();
        let after = shard_allocations(MAX_TRACKED_SHARDS)[shard];
        assert_eq!(after.allocations - before.allocations, 2);
        assert_eq!(after.bytes - before.bytes, 30);
        assert_eq!(
            shard_allocations(MAX_TRACKED_SHARDS + 2)[MAX_TRACKED_SHARDS + 1],
            AllocationCount::default()
        );
    }
}
