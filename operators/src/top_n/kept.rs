//! The rows a [`super::TopN`] keeps: each partition's best rows in order,
//! their bytes in a heap of reusable blocks.
//!
//! A kept row is one block of the heap: its `ORDER BY` key, then the row,
//! both in Arrow's row format. Block sizes are whole 16-byte granules,
//! and the block of a row pushed out goes on the free list of its size,
//! where the next row of that size takes it. A deduplication replaces a
//! row by one of about the same size on nearly every input row, so the
//! heap stops growing once it holds the partitions' rows, and a new row
//! lands in a block that was read (as the retraction of the row it held)
//! a batch earlier, still in cache. Appending every row to one growing
//! buffer instead, and copying the live rows out when half of it was
//! dead, wrote each row to memory the process had not touched yet: the
//! page faults and copies were a sixth of q18's time.
//!
//! A partition's rows form a doubly linked chain of slots, best first,
//! ordered by (order key, arrival); a partition's head, tail, length and
//! last batch sit together in one 16-byte record, so that a row of a
//! partition not in cache misses once for all four.

/// No slot: the end of a chain, an empty partition.
pub(super) const NONE: u32 = u32::MAX;

/// The unit of block sizes.
const GRANULE_BYTES: usize = 16;

/// Largest block, in granules, kept on a free list (4 KiB). Larger ones
/// are left for compaction, so that the free lists stay a short table.
const MAX_REUSED_GRANULES: usize = 256;

/// Free heap bytes above which, once they are also half the heap, the
/// live blocks are compacted into a new heap.
const COMPACT_FREE_BYTES: usize = 1 << 20;

/// One kept row.
#[derive(Clone, Copy)]
struct Slot {
    /// Where its block starts in the heap.
    offset: usize,
    order_len: u32,
    row_len: u32,
    arrival: u64,
    /// The partition's next worse row, or `NONE`.
    next: u32,
    /// The partition's next better row, or `NONE`.
    prev: u32,
}

impl Slot {
    fn granules(&self) -> usize {
        (self.order_len as usize + self.row_len as usize).div_ceil(GRANULE_BYTES)
    }
}

/// One partition's chain.
#[derive(Clone, Copy)]
struct Partition {
    /// Its best row's slot, or `NONE`.
    head: u32,
    /// Its worst row's slot, or `NONE`.
    tail: u32,
    /// Rows kept.
    len: u32,
    /// The batch ([`Kept::begin_batch`]) that last changed it.
    changed_in: u32,
}

const EMPTY_PARTITION: Partition = Partition {
    head: NONE,
    tail: NONE,
    len: 0,
    changed_in: 0,
};

/// The kept rows of every partition.
#[derive(Default)]
pub(super) struct Kept {
    heap: Vec<u8>,
    /// `[size in granules]` -> heap offsets of free blocks of that size.
    free_blocks: Vec<Vec<usize>>,
    /// Heap bytes in blocks of no kept row.
    free_bytes: usize,
    slots: Vec<Slot>,
    free_slots: Vec<u32>,
    partitions: Vec<Partition>,
    /// The current batch's number, from 1.
    batch: u32,
}

impl Kept {
    /// Partitions seen (ids are dense, from 0).
    pub(super) fn partition_count(&self) -> usize {
        self.partitions.len()
    }

    pub(super) fn ensure_partition(&mut self, partition: usize) {
        if partition >= self.partitions.len() {
            self.partitions.resize(partition + 1, EMPTY_PARTITION);
        }
    }

    /// Asks the CPU to fetch a partition's record, a few rows before it
    /// is needed.
    #[inline]
    pub(super) fn prefetch(&self, partition: usize) {
        if let Some(record) = self.partitions.get(partition) {
            crate::prefetch(record);
        }
    }

    /// Starts a batch: [`Kept::first_change`] is true once per partition
    /// from here on.
    pub(super) fn begin_batch(&mut self) {
        self.batch = self.batch.wrapping_add(1);
        if self.batch == 0 {
            // Wrapped: no partition may look changed in a batch numbered
            // like a later one.
            for partition in &mut self.partitions {
                partition.changed_in = 0;
            }
            self.batch = 1;
        }
    }

    /// Whether this is the batch's first change to the partition (and
    /// notes it).
    pub(super) fn first_change(&mut self, partition: usize) -> bool {
        let record = &mut self.partitions[partition];
        let first = record.changed_in != self.batch;
        record.changed_in = self.batch;
        first
    }

    /// The partition's slots, best first.
    pub(super) fn chain(&self, partition: usize) -> impl Iterator<Item = u32> + '_ {
        let mut at = self.partitions[partition].head;
        std::iter::from_fn(move || {
            (at != NONE).then(|| {
                let here = at;
                at = self.slots[here as usize].next;
                here
            })
        })
    }

    fn order_of(&self, slot: &Slot) -> &[u8] {
        &self.heap[slot.offset..slot.offset + slot.order_len as usize]
    }

    /// A kept row's order key.
    pub(super) fn order(&self, slot: u32) -> &[u8] {
        self.order_of(&self.slots[slot as usize])
    }

    /// A kept row's bytes.
    pub(super) fn row(&self, slot: u32) -> &[u8] {
        let slot = &self.slots[slot as usize];
        let start = slot.offset + slot.order_len as usize;
        &self.heap[start..start + slot.row_len as usize]
    }

    /// A kept row's arrival number.
    pub(super) fn arrival(&self, slot: u32) -> u64 {
        self.slots[slot as usize].arrival
    }

    /// Would a row with this order key enter the partition's top `limit`?
    pub(super) fn enters(&self, partition: usize, order: &[u8], limit: usize) -> bool {
        let record = &self.partitions[partition];
        if (record.len as usize) < limit {
            return true;
        }
        // Full: it must beat the worst (ties keep the earlier arrival).
        record.tail != NONE && order < self.order(record.tail)
    }

    /// A block holding `order` then `row`: a free one of its size, or a
    /// new one at the heap's end.
    fn store(&mut self, order: &[u8], row: &[u8]) -> usize {
        let granules = (order.len() + row.len()).div_ceil(GRANULE_BYTES);
        match self.free_blocks.get_mut(granules).and_then(Vec::pop) {
            Some(offset) => {
                self.free_bytes -= granules * GRANULE_BYTES;
                let (order_bytes, row_bytes) =
                    self.heap[offset..offset + order.len() + row.len()].split_at_mut(order.len());
                order_bytes.copy_from_slice(order);
                row_bytes.copy_from_slice(row);
                offset
            }
            None => {
                let offset = self.heap.len();
                self.heap.extend_from_slice(order);
                self.heap.extend_from_slice(row);
                self.heap.resize(offset + granules * GRANULE_BYTES, 0);
                offset
            }
        }
    }

    /// Inserts a row in order of (order key, arrival); if that makes more
    /// than `limit`, unlinks the worst and returns its slot (its bytes stay
    /// readable until [`Kept::release`]).
    pub(super) fn insert(
        &mut self,
        partition: usize,
        order: &[u8],
        row: &[u8],
        arrival: u64,
        limit: usize,
    ) -> Option<u32> {
        // One row's bytes: Arrow's offsets keep a value under 2 GiB.
        let narrow = |len: usize| u32::try_from(len).expect("a row under 4 GiB");
        let slot = Slot {
            offset: self.store(order, row),
            order_len: narrow(order.len()),
            row_len: narrow(row.len()),
            arrival,
            next: NONE,
            prev: NONE,
        };
        let index = match self.free_slots.pop() {
            Some(i) => {
                self.slots[i as usize] = slot;
                i
            }
            None => {
                self.slots.push(slot);
                (self.slots.len() - 1) as u32
            }
        };
        let key = (order, arrival);
        let sorts_after = |kept: &Self, at: u32| {
            let other = &kept.slots[at as usize];
            (kept.order_of(other), other.arrival) > key
        };
        // The slot the new row goes after. A new best row (a dedup keeping
        // the latest) goes first at once; otherwise search from the worst
        // end (a restore appends in order), so neither common case walks
        // the chain.
        let Partition { head, tail, .. } = self.partitions[partition];
        let before = if head == NONE || sorts_after(self, head) {
            NONE
        } else {
            let mut at = tail;
            while sorts_after(self, at) {
                at = self.slots[at as usize].prev;
            }
            at
        };
        let after = if before == NONE {
            head
        } else {
            self.slots[before as usize].next
        };
        self.slots[index as usize].prev = before;
        self.slots[index as usize].next = after;
        if before == NONE {
            self.partitions[partition].head = index;
        } else {
            self.slots[before as usize].next = index;
        }
        if after == NONE {
            self.partitions[partition].tail = index;
        } else {
            self.slots[after as usize].prev = index;
        }
        let record = &mut self.partitions[partition];
        record.len += 1;
        if record.len as usize <= limit {
            return None;
        }
        // Unlink the worst: the tail.
        let worst = record.tail;
        let previous = self.slots[worst as usize].prev;
        record.tail = previous;
        record.len -= 1;
        if previous == NONE {
            record.head = NONE;
        } else {
            self.slots[previous as usize].next = NONE;
        }
        Some(worst)
    }

    /// Frees slots unlinked by [`Kept::insert`] and their blocks, and
    /// compacts the heap once most of it is free.
    pub(super) fn release(&mut self, slots: &[u32]) {
        for &slot in slots {
            let granules = self.slots[slot as usize].granules();
            if (1..=MAX_REUSED_GRANULES).contains(&granules) {
                if self.free_blocks.len() <= granules {
                    self.free_blocks.resize_with(granules + 1, Vec::new);
                }
                self.free_blocks[granules].push(self.slots[slot as usize].offset);
            }
            self.free_bytes += granules * GRANULE_BYTES;
            self.free_slots.push(slot);
        }
        if self.free_bytes > COMPACT_FREE_BYTES && self.free_bytes * 2 > self.heap.len() {
            self.compact();
        }
    }

    /// Copies the kept rows' blocks into a new heap with no free blocks.
    pub(super) fn compact(&mut self) {
        let mut heap = Vec::with_capacity(self.heap.len() - self.free_bytes);
        for partition in 0..self.partitions.len() {
            let mut at = self.partitions[partition].head;
            while at != NONE {
                let slot = &mut self.slots[at as usize];
                let len = slot.granules() * GRANULE_BYTES;
                let offset = heap.len();
                heap.extend_from_slice(&self.heap[slot.offset..slot.offset + len]);
                slot.offset = offset;
                at = slot.next;
            }
        }
        self.heap = heap;
        self.free_bytes = 0;
        for blocks in &mut self.free_blocks {
            blocks.clear();
        }
    }

    /// Bytes held.
    pub(super) fn bytes(&self) -> usize {
        let free_lists: usize = self.free_blocks.iter().map(Vec::capacity).sum();
        self.heap.capacity()
            + free_lists * std::mem::size_of::<usize>()
            + self.slots.capacity() * std::mem::size_of::<Slot>()
            + self.free_slots.capacity() * std::mem::size_of::<u32>()
            + self.partitions.capacity() * std::mem::size_of::<Partition>()
    }

    /// Rows kept in a partition.
    #[cfg(test)]
    fn len(&self, partition: usize) -> usize {
        self.partitions[partition].len as usize
    }
}

const _: () = assert!(std::mem::size_of::<Slot>() == 32);
const _: () = assert!(std::mem::size_of::<Partition>() == 16);

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    use rand::{Rng, SeedableRng};

    /// A partition as a sorted map keeps it: (order key, arrival) -> row.
    type Model = BTreeMap<(Vec<u8>, u64), Vec<u8>>;

    /// The chains keep what a `BTreeMap` of (order key, arrival) capped at
    /// `limit` keeps, in its order, and push out its last entry; reused
    /// blocks and compaction keep every live row's bytes.
    #[test]
    fn chains_keep_the_best_rows_in_order() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        for limit in [1usize, 2, 3, 10, 50] {
            let mut kept = Kept::default();
            kept.ensure_partition(3);
            let mut model: Vec<Model> = vec![BTreeMap::new(); 4];
            for arrival in 0..20_000u64 {
                let partition = rng.random_range(0..4usize);
                // Few distinct keys: many ties, broken by arrival.
                let order = vec![rng.random_range(0..30u8), 7];
                // Rows of many sizes, some past the largest reused block.
                let row_len = match rng.random_range(0..50) {
                    0 => rng.random_range(4_000..6_000),
                    _ => rng.random_range(8..90),
                };
                let mut row = vec![(arrival % 251) as u8; row_len];
                row[..8].copy_from_slice(&arrival.to_le_bytes());
                let model_part = &mut model[partition];
                let enters = model_part.len() < limit
                    || model_part
                        .last_key_value()
                        .is_some_and(|((worst, _), _)| order < *worst);
                assert_eq!(kept.enters(partition, &order, limit), enters);
                if !enters {
                    continue;
                }
                model_part.insert((order.clone(), arrival), row.clone());
                let expected_out = (model_part.len() > limit)
                    .then(|| model_part.pop_last().expect("over the limit").1);
                let out = kept.insert(partition, &order, &row, arrival, limit);
                assert_eq!(out.map(|slot| kept.row(slot).to_vec()), expected_out);
                kept.release(&out.into_iter().collect::<Vec<_>>());
                if arrival % 5_000 == 0 {
                    kept.compact();
                }
                for (p, model_part) in model.iter().enumerate() {
                    if p != partition && arrival % 97 != 0 {
                        continue;
                    }
                    let ours: Vec<(Vec<u8>, u64, Vec<u8>)> = kept
                        .chain(p)
                        .map(|s| {
                            (
                                kept.order(s).to_vec(),
                                kept.arrival(s),
                                kept.row(s).to_vec(),
                            )
                        })
                        .collect();
                    let theirs: Vec<(Vec<u8>, u64, Vec<u8>)> = model_part
                        .iter()
                        .map(|((order, arrival), row)| (order.clone(), *arrival, row.clone()))
                        .collect();
                    assert_eq!(ours, theirs, "limit {limit}, partition {p}");
                    assert_eq!(kept.len(p), theirs.len());
                }
            }
        }
    }

    /// Replacing rows by rows of the same sizes reuses their blocks: the
    /// heap does not grow past what the kept rows need.
    #[test]
    fn a_deduplication_reuses_its_blocks() {
        let mut kept = Kept::default();
        let partitions = 1_000;
        kept.ensure_partition(partitions - 1);
        let mut heap_after_first_round = 0;
        for round in 0..20u64 {
            kept.begin_batch();
            let mut out = Vec::new();
            for partition in 0..partitions {
                let row = vec![round as u8; 40 + partition % 60];
                let order = (u64::MAX - round).to_be_bytes();
                out.extend(kept.insert(partition, &order, &row, round, 1));
            }
            kept.release(&out);
            if round == 1 {
                heap_after_first_round = kept.heap.len();
            }
        }
        assert_eq!(kept.heap.len(), heap_after_first_round);
        for partition in 0..partitions {
            let best: Vec<u32> = kept.chain(partition).collect();
            assert_eq!(best.len(), 1);
            assert_eq!(kept.row(best[0]), vec![19u8; 40 + partition % 60]);
        }
    }
}
