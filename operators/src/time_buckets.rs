//! An ordered map from a bucket's start time to the bucket, kept as a
//! sorted ring instead of a tree.
//!
//! Buckets of event time are created mostly at the newest end (time moves
//! forward) and dropped from the oldest (the watermark passes them). A
//! `BTreeMap` allocates and frees a node for about every ten buckets as
//! they come and go, which made a join's allocations grow with the event
//! time a batch covers. A `VecDeque` sorted by start keeps its memory:
//! appending at the back and popping at the front are O(1) and allocate
//! nothing once the ring has grown to the most buckets alive at once. A
//! bucket that arrives out of order is inserted in place (a shift of the
//! buckets after it: few, as disorder is bounded by the watermark).

use std::collections::VecDeque;

/// Buckets by start time, in ascending order of start.
pub(crate) struct TimeBuckets<B> {
    ring: VecDeque<(i64, B)>,
}

impl<B> Default for TimeBuckets<B> {
    fn default() -> Self {
        Self {
            ring: VecDeque::new(),
        }
    }
}

impl<B> TimeBuckets<B> {
    pub fn len(&self) -> usize {
        self.ring.len()
    }

    /// The bucket starting at `start`, made by `make` if there is none.
    #[inline]
    pub fn get_or_insert_with(&mut self, start: i64, make: impl FnOnce() -> B) -> &mut B {
        // In order: the newest bucket, or a new one after it.
        let index = match self.ring.back() {
            Some(&(last, _)) if last == start => self.ring.len() - 1,
            Some(&(last, _)) if last > start => {
                let at = self.ring.partition_point(|&(s, _)| s < start);
                if self.ring[at].0 != start {
                    self.ring.insert(at, (start, make()));
                }
                at
            }
            _ => {
                self.ring.push_back((start, make()));
                self.ring.len() - 1
            }
        };
        &mut self.ring[index].1
    }

    /// Lays the ring out as one slice in place (a rotation, only when
    /// it wraps), for [`TimeBuckets::as_slice`].
    pub fn make_contiguous(&mut self) {
        self.ring.make_contiguous();
    }

    /// Every bucket with its start, oldest first, for [`range_of`]:
    /// all of them after [`TimeBuckets::make_contiguous`], else only
    /// those up to where the ring wraps.
    pub fn as_slice(&self) -> &[(i64, B)] {
        let (head, tail) = self.ring.as_slices();
        debug_assert!(tail.is_empty(), "made contiguous first");
        head
    }

    /// The oldest bucket's start.
    pub fn first_start(&self) -> Option<i64> {
        self.ring.front().map(|&(s, _)| s)
    }

    /// Removes and returns the oldest bucket.
    pub fn pop_first(&mut self) -> Option<(i64, B)> {
        self.ring.pop_front()
    }

    /// Every bucket, oldest first.
    pub fn values(&self) -> impl Iterator<Item = &B> {
        self.ring.iter().map(|(_, b)| b)
    }
}

/// The buckets of `buckets` (oldest first, as [`TimeBuckets::as_slice`]
/// gives them) with `first <= start <= last`. `hint` is where the
/// previous range began (0 at first): consecutive ranges over times in
/// order begin at the same bucket or the next, found without a search
/// (also past the newest bucket, where a probe running ahead of the
/// other side's rows looks).
#[inline]
pub(crate) fn range_of<'a, B>(
    buckets: &'a [(i64, B)],
    first: i64,
    last: i64,
    hint: &mut usize,
) -> &'a [(i64, B)] {
    let begins_at = |at: usize| {
        at <= buckets.len()
            && buckets.get(at).is_none_or(|&(s, _)| s >= first)
            && (at == 0 || buckets[at - 1].0 < first)
    };
    let from = if begins_at(*hint) {
        *hint
    } else if begins_at(*hint + 1) {
        *hint + 1
    } else {
        buckets.partition_point(|&(s, _)| s < first)
    };
    *hint = from;
    let mut to = from;
    while to < buckets.len() && buckets[to].0 <= last {
        to += 1;
    }
    &buckets[from..to]
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    use rand::{Rng, SeedableRng};

    /// Same answers as a `BTreeMap` under random inserts, range reads and
    /// pops from the front.
    #[test]
    fn behaves_as_an_ordered_map() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut ours: TimeBuckets<u32> = TimeBuckets::default();
        let mut model: BTreeMap<i64, u32> = BTreeMap::new();
        let mut now = 0i64;
        let mut hint = 0;
        for step in 0..20_000u32 {
            match rng.random_range(0..10) {
                0..=5 => {
                    now += rng.random_range(0..3);
                    let start = now - rng.random_range(0..5);
                    *ours.get_or_insert_with(start, || step) += 1;
                    *model.entry(start).or_insert(step) += 1;
                }
                6 | 7 => {
                    let first = now - rng.random_range(0..8);
                    let last = first + rng.random_range(0..4);
                    ours.make_contiguous();
                    let got: Vec<(i64, u32)> =
                        range_of(ours.as_slice(), first, last, &mut hint).to_vec();
                    let want: Vec<(i64, u32)> =
                        model.range(first..=last).map(|(s, b)| (*s, *b)).collect();
                    assert_eq!(got, want);
                }
                _ => assert_eq!(ours.pop_first(), model.pop_first()),
            }
            assert_eq!(ours.len(), model.len());
            assert_eq!(ours.first_start(), model.keys().next().copied());
        }
        let all: Vec<u32> = ours.values().copied().collect();
        assert_eq!(all, model.values().copied().collect::<Vec<_>>());
    }
}
