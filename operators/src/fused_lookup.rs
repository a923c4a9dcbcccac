//! Group lookups inside a fused kernel: the frame a compiled loop reads
//! to probe a window's group table itself, and the Rust side that
//! resolves what the loop does not.
//!
//! Resolving every row's group in a pass of its own, then reading the ids
//! back in the kernel, cost a third of a fused window aggregate's time: a
//! second loop over the batch, a store and a load per row, and a mask of
//! the rows the `WHERE` kept, built only to tell the lookup which rows to
//! skip. A kernel that probes the table in its own loop needs none of it.
//!
//! The kernel handles the common case inline: a `BIGINT` key, or a string
//! key of 1 to 8 bytes (which its slot holds whole), already in the
//! table. It reads a string key as the 8-byte word that ends where the
//! key ends, hashes the key as [`crate::groups`] does (the folded
//! multiply with the process's [`crate::groups::short_key_seeds`], which
//! the kernel carries as constants) and probes the slots linearly,
//! comparing each slot's length and head word. At a row it cannot
//! resolve (a key not in the table yet, an empty string, or a key that
//! ends in the first 8 bytes of its column's buffer, where that word
//! would start before the buffer) it stops and returns that row; [`LookupRun::resolve`] looks
//! the key up (inserting it) the ordinary way, gives every accumulator
//! room for a new group, rewrites the frame's pointers (the table and the
//! state vectors may have moved) and leaves the group in
//! [`GroupLookup::pending_group`]; the kernel is called again from that
//! row and starts by updating it. The loop makes no call, so nothing in
//! it has to survive one: with a call inside, the register allocator kept
//! the loop's pointers on the stack and reloaded a dozen of them per row.
//!
//! A string key longer than 8 bytes would stop the kernel at every row:
//! a batch with one ([`BatchKeys::all_short`]) takes the operator's other
//! fused path (group ids resolved in a pass of their own).

use std::cell::Cell;

use arrow::array::Array;

use crate::fused::{FusedAccumulator, GroupsOf};
use crate::groups::{BatchKeys, GroupTable, KeyEncoder};

/// A key a kernel looks up itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LookupKey {
    /// One non-null `VARCHAR` column (32-bit offsets).
    Utf8,
    /// One non-null `BIGINT` column.
    Int64,
}

/// [`GroupLookup::pending_group`] when there is none.
pub const NO_GROUP: u64 = u64::MAX;

/// What a compiled loop reads to look groups up itself, in C layout (the
/// kernel reads its fields at their offsets). Constant during a kernel
/// call; rewritten between calls by [`LookupRun::resolve`].
#[repr(C)]
pub struct GroupLookup {
    /// The group table's slots, a power of two of them, 16 bytes each:
    /// group id (`u32`), key length (`u32`; `u32::MAX` in an empty slot,
    /// whose id is `u32::MAX` too), the key's first 8 bytes zero-padded
    /// as a little-endian word.
    pub slots: *const u8,
    /// Slots minus one.
    pub slot_mask: u64,
    /// A string key column's offsets (`i32`, row 0's first) or a `BIGINT`
    /// key column's values.
    pub keys: *const u8,
    /// A string key column's bytes (null for `BIGINT`): a key that ends
    /// at byte `end >= 8` is read as the word at `end - 8`.
    pub key_bytes: *const u8,
    /// Each aggregate's two state vectors (primary, secondary), in order.
    pub states: *const *mut u64,
    /// The group of the row the kernel starts at, when the previous call
    /// stopped there ([`NO_GROUP`] on the first call).
    pub pending_group: u64,
}

/// One kernel run's lookup: the frame, and what resolving a row the
/// kernel stopped at changes.
pub struct LookupRun<'a, 'k> {
    frame: GroupLookup,
    key: LookupKey,
    key_rows: usize,
    encoder: &'a KeyEncoder,
    table: &'a mut GroupTable,
    keys: &'a BatchKeys<'k>,
    accumulators: &'a mut [FusedAccumulator],
    states: Vec<*mut u64>,
}

impl<'a, 'k> LookupRun<'a, 'k> {
    /// A run over `groups` updating `accumulators` (given a state for
    /// every group of the table here); `None` when the keys are not of a
    /// kind a kernel looks up.
    pub fn new(groups: GroupsOf<'a, 'k>, accumulators: &'a mut [FusedAccumulator]) -> Option<Self> {
        let GroupsOf {
            encoder,
            table,
            keys,
        } = groups;
        let (key, keys_at, key_bytes, key_rows) = match keys {
            BatchKeys::Utf8(array) => (
                LookupKey::Utf8,
                array.value_offsets().as_ptr().cast::<u8>(),
                array.value_data(),
                array.len(),
            ),
            BatchKeys::Int64(values) => (
                LookupKey::Int64,
                values.as_ptr().cast::<u8>(),
                &[][..],
                values.len(),
            ),
            BatchKeys::Global | BatchKeys::Rows(_) => return None,
        };
        let groups = table.len();
        for accumulator in accumulators.iter_mut() {
            accumulator.ensure_groups(groups);
        }
        let mut run = LookupRun {
            frame: GroupLookup {
                slots: std::ptr::null(),
                slot_mask: 0,
                keys: keys_at,
                key_bytes: key_bytes.as_ptr(),
                states: std::ptr::null(),
                pending_group: NO_GROUP,
            },
            key,
            key_rows,
            encoder,
            table,
            keys,
            accumulators,
            states: STATES.take(),
        };
        run.refresh();
        Some(run)
    }

    /// The key kind the frame was built for.
    pub fn key(&self) -> LookupKey {
        self.key
    }

    /// Rows of the key column.
    pub fn key_rows(&self) -> usize {
        self.key_rows
    }

    /// The frame, for the next kernel call.
    pub fn frame(&mut self) -> *mut GroupLookup {
        &mut self.frame
    }

    /// Resolves row `row` (where a kernel stopped) the ordinary way,
    /// inserting its key if new, and leaves its group pending for the
    /// next call.
    pub fn resolve(&mut self, row: usize) {
        assert!(row < self.key_rows, "a kernel stopped past its rows");
        STOPS.set(STOPS.get() + 1);
        let group = self.encoder.group_id(self.table, self.keys, row);
        for accumulator in self.accumulators.iter_mut() {
            accumulator.ensure_groups(group + 1);
        }
        self.refresh();
        self.frame.pending_group = group as u64;
    }

    fn refresh(&mut self) {
        self.states.clear();
        for accumulator in self.accumulators.iter_mut() {
            self.states.extend(accumulator.state_pointers());
        }
        (self.frame.slots, self.frame.slot_mask) = self.table.raw_slots();
        self.frame.states = self.states.as_ptr();
    }
}

impl Drop for LookupRun<'_, '_> {
    fn drop(&mut self) {
        STATES.set(std::mem::take(&mut self.states));
    }
}

/// Rows kernels stopped at on this thread so far (each resolved by
/// [`LookupRun::resolve`]): a kernel that stops finding short keys inline
/// (its hash no longer the table's, say) still answers right, only
/// slower, and this is how tests see it.
pub fn lookup_stops() -> u64 {
    STOPS.get()
}

thread_local! {
    /// The state pointer list, reused across batches.
    static STATES: Cell<Vec<*mut u64>> = const { Cell::new(Vec::new()) };
    static STOPS: Cell<u64> = const { Cell::new(0) };
}
