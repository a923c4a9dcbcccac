//! An interval join's bucket: the rows of one side within a stretch of
//! time, grouped by key, and the table that finds a key's rows.
//!
//! A batch's rows are stored a segment at a time (consecutive rows that
//! fall in the same bucket: most of a batch, as rows come in time order).
//! A segment's rows of one key become one *run*, contiguous in the
//! bucket's `times_ms`/`rows`, and each key's runs form a chain, newest
//! first. A probe then reads a key's rows of a segment as one stretch of
//! memory (four rows of a key in a 400 ms bucket: one cache line of
//! times) instead of following a pointer per row, each a likely cache
//! miss. A batch of one row makes a run of one row.

#[cfg(doc)]
use crate::groups::OwnedKeys;
use crate::groups::{bytes_eq, key_head};

/// The end of a chain; an empty table slot.
pub(super) const NONE: u32 = u32::MAX;

/// One key's rows stored by one segment of a stored batch.
#[derive(Debug, Clone, Copy)]
pub(super) struct Run {
    /// The stored batch the rows are in (a sequence number).
    pub batch: u64,
    /// Where the rows are in the bucket's `times_ms` and `rows`.
    pub start: u32,
    pub len: u32,
    /// The key's next older run in the bucket, or `NONE`.
    pub next: u32,
}

impl Run {
    #[inline]
    pub fn span(&self) -> std::ops::Range<usize> {
        self.start as usize..(self.start + self.len) as usize
    }
}

/// A key as a bucket compares it: its hash, its length and a word of its
/// bytes inline (all of them for keys of up to 8 bytes: every BIGINT,
/// most symbols, which then compare without leaving the table's slot),
/// the rest in the bucket's `key_bytes`.
#[derive(Debug, Clone, Copy)]
pub(super) struct KeyRef {
    hash: u64,
    head: u64,
    /// The length, saturated (Arrow strings stop at 2 GiB anyway).
    len: u32,
}

impl KeyRef {
    #[cfg(test)]
    pub fn new(hash: u64, key: &[u8]) -> Self {
        Self::with_head(hash, key_head(key), key)
    }

    /// The key `key` with this hash, its head already read ([`key_head`]).
    #[inline]
    pub fn with_head(hash: u64, head: u64, key: &[u8]) -> Self {
        debug_assert_eq!(head, key_head(key));
        Self {
            hash,
            head,
            len: u32::try_from(key.len()).unwrap_or(u32::MAX),
        }
    }
}

/// A table slot: one key's chain of runs in a bucket, with its key (a
/// [`KeyRef`], laid out flat so that the slot is 32 bytes, two to a
/// cache line).
#[derive(Debug, Clone, Copy)]
struct Chain {
    hash: u64,
    head: u64,
    /// Where the key's bytes are in the bucket's `key_bytes`, when it is
    /// longer than 8 bytes.
    key_start: usize,
    len: u32,
    /// The key's newest run; `NONE` in an empty slot.
    newest: u32,
}

const EMPTY: Chain = Chain {
    hash: 0,
    head: 0,
    key_start: 0,
    len: 0,
    newest: NONE,
};

impl Chain {
    /// Whether the slot holds `key`, whose bytes `bytes` reads only when
    /// the head does not hold them all.
    #[inline]
    fn is<'k>(&self, key: &KeyRef, bytes: impl Fn() -> &'k [u8], key_bytes: &[u8]) -> bool {
        self.hash == key.hash
            && self.head == key.head
            && self.len == key.len
            && (self.len <= 8 || {
                let bytes = bytes();
                key_bytes
                    .get(self.key_start..self.key_start + bytes.len())
                    .is_some_and(|stored| bytes_eq(stored, bytes))
            })
    }
}

/// How many rows ahead a store fetches the table slot it will read.
const PREFETCH_ROWS: usize = 8;

/// Slots per chain at most, before the table doubles: at half full, a
/// lookup reads one slot, rarely two (linear probing).
const LOAD_DIVISOR: usize = 2;

/// A side's rows with event time (or, on a side carrying a row bound, a
/// bound) in `[start, start + width)`.
#[derive(Default)]
pub(super) struct Bucket {
    /// Each key's chain, open addressing with linear probing (its own
    /// table rather than a general one, so that a probe can prefetch a
    /// key's slot rows ahead of reading it). Empty or a power of two.
    slots: Vec<Chain>,
    chains: usize,
    /// The bytes of the chains' keys longer than 8 bytes (see
    /// [`OwnedKeys::key_bytes`]), one after another.
    key_bytes: Vec<u8>,
    pub runs: Vec<Run>,
    /// Each stored row's event time, by run.
    pub times_ms: Vec<i64>,
    /// Each stored row's row in its batch, by run.
    pub rows: Vec<u32>,
}

impl Bucket {
    /// Rows stored.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    #[inline]
    fn slot_of<'k>(&self, key: &KeyRef, bytes: impl Fn() -> &'k [u8]) -> Result<usize, usize> {
        if self.slots.is_empty() {
            return Err(0);
        }
        let mask = self.slots.len() - 1;
        let mut at = key.hash as usize & mask;
        loop {
            let slot = &self.slots[at];
            if slot.newest == NONE {
                return Err(at);
            }
            if slot.is(key, &bytes, &self.key_bytes) {
                return Ok(at);
            }
            at = (at + 1) & mask;
        }
    }

    /// The newest run of the key with the bytes `bytes` returns (called
    /// for keys longer than 8 bytes only).
    #[inline]
    pub fn newest_run<'k>(&self, key: &KeyRef, bytes: impl Fn() -> &'k [u8]) -> Option<u32> {
        self.slot_of(key, bytes)
            .ok()
            .map(|at| self.slots[at].newest)
    }

    /// Asks the CPU to fetch the slot a lookup of `key` reads first.
    #[inline]
    pub fn prefetch(&self, key: &KeyRef) {
        if self.slots.is_empty() {
            return;
        }
        let at = key.hash as usize & (self.slots.len() - 1);
        crate::prefetch(&self.slots[at]);
    }

    /// Stores the rows `segment` of stored batch `batch` (their times in
    /// `times_ms`, their keys in `keys` and `key_bytes`, all indexed by
    /// row): each key's rows as one run, newest of its chain. Returns the
    /// runs made, one per key, indices into `runs`. `scratch` is reused
    /// between calls.
    pub fn append<'k>(
        &mut self,
        batch: u64,
        segment: std::ops::Range<usize>,
        times_ms: &[i64],
        keys: &[KeyRef],
        key_bytes: impl Fn(usize) -> &'k [u8],
        scratch: &mut Vec<u32>,
    ) -> std::ops::Range<u32> {
        let first_run = self.runs.len() as u32;
        // First each row's run, counting each run's rows ...
        scratch.clear();
        for row in segment.clone() {
            // The slot of a row a few ahead is fetched while this one is
            // stored.
            if row + PREFETCH_ROWS < segment.end {
                self.prefetch(&keys[row + PREFETCH_ROWS]);
            }
            let key = &keys[row];
            let (at, fresh) = match self.slot_of(key, || key_bytes(row)) {
                Ok(at) => (at, false),
                Err(empty) => (self.insert(key, || key_bytes(row), empty), true),
            };
            let chain = &mut self.slots[at];
            let run = if !fresh && chain.newest >= first_run {
                chain.newest
            } else {
                let index = self.runs.len() as u32;
                self.runs.push(Run {
                    batch,
                    start: 0,
                    len: 0,
                    next: if fresh { NONE } else { chain.newest },
                });
                chain.newest = index;
                index
            };
            self.runs[run as usize].len += 1;
            scratch.push(run);
        }
        // ... then lay the runs out one after another and fill them.
        let mut end = self.rows.len() as u32;
        for run in &mut self.runs[first_run as usize..] {
            run.start = end;
            end += std::mem::take(&mut run.len);
        }
        self.times_ms.resize(end as usize, 0);
        self.rows.resize(end as usize, 0);
        for (row, &run) in segment.zip(scratch.iter()) {
            let run = &mut self.runs[run as usize];
            let at = (run.start + run.len) as usize;
            run.len += 1;
            self.times_ms[at] = times_ms[row];
            self.rows[at] = row as u32;
        }
        first_run..self.runs.len() as u32
    }

    /// A slot for a new key, with no runs yet (`newest` is `NONE` until
    /// the caller links the first): `empty`, the empty slot its lookup
    /// stopped at, unless the table grows first. The key's bytes, which
    /// `bytes` returns, are read only when it is longer than 8 bytes.
    fn insert<'k>(&mut self, key: &KeyRef, bytes: impl Fn() -> &'k [u8], empty: usize) -> usize {
        let mut at = empty;
        if (self.chains + 1) * LOAD_DIVISOR > self.slots.len() {
            self.grow();
            let mask = self.slots.len() - 1;
            at = key.hash as usize & mask;
            while self.slots[at].newest != NONE {
                at = (at + 1) & mask;
            }
        }
        debug_assert_eq!(self.slots[at].newest, NONE);
        let key_start = self.key_bytes.len();
        if key.len > 8 {
            self.key_bytes.extend_from_slice(bytes());
        }
        self.slots[at] = Chain {
            hash: key.hash,
            head: key.head,
            key_start,
            len: key.len,
            // Claimed: the caller links a run at once.
            newest: NONE - 1,
        };
        self.chains += 1;
        at
    }

    fn grow(&mut self) {
        let capacity = (self.slots.len() * 2).max(16);
        let old = std::mem::replace(&mut self.slots, vec![EMPTY; capacity]);
        let mask = capacity - 1;
        for chain in old.into_iter().filter(|c| c.newest != NONE) {
            let mut at = chain.hash as usize & mask;
            while self.slots[at].newest != NONE {
                at = (at + 1) & mask;
            }
            self.slots[at] = chain;
        }
    }

    /// Empty, keeping its memory.
    pub fn clear(&mut self) {
        if self.chains > 0 {
            self.slots.fill(EMPTY);
        }
        self.chains = 0;
        self.key_bytes.clear();
        self.runs.clear();
        self.times_ms.clear();
        self.rows.clear();
    }

    pub fn bytes(&self) -> usize {
        self.slots.capacity() * std::mem::size_of::<Chain>()
            + self.key_bytes.capacity()
            + self.runs.capacity() * std::mem::size_of::<Run>()
            + self.times_ms.capacity() * std::mem::size_of::<i64>()
            + self.rows.capacity() * std::mem::size_of::<u32>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A key's rows as `(batch, row)`, newest run first.
    fn rows_of(bucket: &Bucket, key: &[u8], hash: u64) -> Vec<(u64, u32)> {
        let mut out = Vec::new();
        let mut r = bucket
            .newest_run(&KeyRef::new(hash, key), || key)
            .unwrap_or(NONE);
        while r != NONE {
            let run = bucket.runs[r as usize];
            out.extend(bucket.rows[run.span()].iter().map(|&row| (run.batch, row)));
            r = run.next;
        }
        out
    }

    /// Keys that share their first 8 bytes, differ only in length or in
    /// one byte, and all hash alike: each still gets a chain of its own
    /// rows, one run per key and segment.
    #[test]
    fn bucket_chains_tell_keys_apart_past_their_first_8_bytes() {
        let keys: [&[u8]; 17] = [
            b"",
            b"a",
            b"ab",
            b"ba",
            b"abc",
            b"acb",
            b"abcd",
            b"abce",
            b"abcdefg",
            b"abcdefh",
            b"bbcdefg",
            b"AAAA",
            b"AAAA\0\0\0\0",
            b"AAAAAAAA",
            b"AAAAAAAA1",
            b"AAAAAAAA2",
            b"AAAAAAAA2-and-then-some",
        ];
        // Each batch: every key twice, as rows i and i + 17.
        let batch_keys: Vec<&[u8]> = keys.iter().chain(&keys).copied().collect();
        let refs: Vec<KeyRef> = batch_keys.iter().map(|k| KeyRef::new(42, k)).collect();
        let times: Vec<i64> = (0..batch_keys.len() as i64).collect();
        let mut bucket = Bucket::default();
        let mut scratch = Vec::new();
        for round in 0..3u64 {
            let runs = bucket.append(
                round,
                0..batch_keys.len(),
                &times,
                &refs,
                |row| batch_keys[row],
                &mut scratch,
            );
            // One run per key, the segment's, made last.
            assert_eq!(runs, 17 * round as u32..17 * (round as u32 + 1));
        }
        for (i, key) in keys.iter().enumerate() {
            let (a, b) = (i as u32, i as u32 + 17);
            assert_eq!(
                rows_of(&bucket, key, 42),
                [(2, a), (2, b), (1, a), (1, b), (0, a), (0, b)],
                "{key:?}: newest run first, rows in order within a run"
            );
            let run = bucket.runs[bucket.newest_run(&refs[i], || *key).unwrap() as usize];
            assert_eq!(bucket.times_ms[run.span()], [i as i64, i as i64 + 17]);
        }
        assert_eq!(bucket.len(), 3 * 34);
        assert!(bucket
            .newest_run(&KeyRef::new(42, b"AAAAAAAA3"), || &b"AAAAAAAA3"[..])
            .is_none());
        assert_eq!(std::mem::size_of::<Chain>(), 32, "a slot stays 32 bytes");
        bucket.clear();
        assert!(bucket
            .newest_run(&KeyRef::new(42, b"AAAA"), || &b"AAAA"[..])
            .is_none());
        assert_eq!(bucket.len(), 0);
    }

    /// Many keys with spread hashes: the table grows, every key keeps
    /// its rows, segments of one row make runs of one row.
    #[test]
    fn bucket_grows_and_keeps_every_key() {
        let names: Vec<Vec<u8>> = (0..1_000)
            .map(|i| format!("key-{i}").into_bytes())
            .collect();
        let refs: Vec<KeyRef> = names
            .iter()
            .enumerate()
            .map(|(i, k)| KeyRef::new((i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15), k))
            .collect();
        let times = vec![7; names.len()];
        let mut bucket = Bucket::default();
        let mut scratch = Vec::new();
        for row in 0..names.len() {
            bucket.append(9, row..row + 1, &times, &refs, |r| &names[r], &mut scratch);
        }
        bucket.append(
            10,
            0..names.len(),
            &times,
            &refs,
            |r| &names[r],
            &mut scratch,
        );
        for (i, name) in names.iter().enumerate() {
            let hash = refs[i].hash;
            assert_eq!(
                rows_of(&bucket, name, hash),
                [(10, i as u32), (9, i as u32)]
            );
        }
        assert_eq!(bucket.runs.len(), 2_000);
    }
}
