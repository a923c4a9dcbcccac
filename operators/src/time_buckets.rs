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

    /// The bucket starting at `start`.
    pub fn get(&self, start: i64) -> Option<&B> {
        let at = self.ring.partition_point(|&(s, _)| s < start);
        self.ring
            .get(at)
            .filter(|&&(s, _)| s == start)
            .map(|(_, b)| b)
    }

    /// Lays the ring out as one slice in place (a rotation, only when
    /// it wraps), for [`TimeBuckets::as_slice`].
    pub fn make_contiguous(&mut self) {
        self.ring.make_contiguous();
    }

    /// Every bucket with its start, oldest first, for [`Ranges`]:
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

/// Ranges of buckets by start, read from one slice of buckets (oldest
/// first, as [`TimeBuckets::as_slice`] gives them), which it borrows, so
/// that they cannot change while it remembers its last answer.
pub(crate) struct Ranges<'a, B> {
    buckets: &'a [(i64, B)],
    /// The last answer, `buckets[from..to]` ...
    from: usize,
    to: usize,
    /// ... which is also the answer for any `first` in `(first_above,
    /// first_at_most]` and `last` in `[last_at_least, last_below)`: the
    /// starts around its ends. A probe's rows come mostly in time order,
    /// so most rows ask for the same buckets as the row before, and four
    /// compares answer them.
    first_above: i64,
    first_at_most: i64,
    last_at_least: i64,
    last_below: i64,
}

impl<'a, B> Ranges<'a, B> {
    pub fn new(buckets: &'a [(i64, B)]) -> Self {
        Self {
            buckets,
            from: 0,
            to: 0,
            // Holds for no `first`: the first range is searched for.
            first_above: i64::MAX,
            first_at_most: i64::MIN,
            last_at_least: i64::MAX,
            last_below: i64::MIN,
        }
    }

    /// The buckets with `first <= start <= last`.
    #[inline]
    pub fn of(&mut self, first: i64, last: i64) -> &'a [(i64, B)] {
        if first > self.first_above
            && first <= self.first_at_most
            && last >= self.last_at_least
            && last < self.last_below
        {
            return &self.buckets[self.from..self.to];
        }
        self.search(first, last)
    }

    /// [`Ranges::of`] when the last answer is not this one's. The range
    /// begins at the previous one's bucket or the next, when times come in
    /// order, found without a binary search (also past the newest bucket,
    /// where a probe running ahead of the other side's rows looks).
    fn search(&mut self, first: i64, last: i64) -> &'a [(i64, B)] {
        let buckets = self.buckets;
        let begins_at = |at: usize| {
            at <= buckets.len()
                && buckets.get(at).is_none_or(|&(s, _)| s >= first)
                && (at == 0 || buckets[at - 1].0 < first)
        };
        let from = if begins_at(self.from) {
            self.from
        } else if begins_at(self.from + 1) {
            self.from + 1
        } else {
            buckets.partition_point(|&(s, _)| s < first)
        };
        let mut to = from;
        while to < buckets.len() && buckets[to].0 <= last {
            to += 1;
        }
        // Where this answer holds (ends of i64 excluded: those search).
        let start = |at: usize, or: i64| buckets.get(at).map_or(or, |&(s, _)| s);
        self.first_above = if from == 0 {
            i64::MIN
        } else {
            start(from - 1, i64::MIN)
        };
        self.first_at_most = start(from, i64::MAX);
        self.last_at_least = if to == from {
            i64::MIN
        } else {
            start(to - 1, i64::MIN)
        };
        self.last_below = start(to, i64::MAX);
        (self.from, self.to) = (from, to);
        &buckets[from..to]
    }
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
        for step in 0..20_000u32 {
            match rng.random_range(0..10) {
                0..=5 => {
                    now += rng.random_range(0..3);
                    let start = now - rng.random_range(0..5);
                    *ours.get_or_insert_with(start, || step) += 1;
                    *model.entry(start).or_insert(step) += 1;
                }
                6 | 7 => {
                    // Several ranges from one borrow, mostly moving
                    // forward as a probe's rows do, some not.
                    ours.make_contiguous();
                    let mut ranges = Ranges::new(ours.as_slice());
                    let mut first = now - rng.random_range(0..8);
                    for _ in 0..4 {
                        first += rng.random_range(-2..4);
                        let last = first + rng.random_range(-1..4);
                        let got: Vec<(i64, u32)> = ranges.of(first, last).to_vec();
                        let want: Vec<(i64, u32)> = model
                            .range(first..=last.max(first))
                            .filter(|(s, _)| **s <= last)
                            .map(|(s, b)| (*s, *b))
                            .collect();
                        assert_eq!(got, want, "[{first}, {last}]");
                    }
                }
                _ => assert_eq!(ours.pop_first(), model.pop_first()),
            }
            assert_eq!(ours.len(), model.len());
            assert_eq!(ours.first_start(), model.keys().next().copied());
            let probe = now - rng.random_range(0..8);
            assert_eq!(ours.get(probe), model.get(&probe));
        }
        let all: Vec<u32> = ours.values().copied().collect();
        assert_eq!(all, model.values().copied().collect::<Vec<_>>());
    }
}
