//! An interval join's bucket: the rows of one side within a stretch of
//! time, chained per key, and the table that finds a key's chain.

use hashbrown::HashTable;

#[cfg(doc)]
use crate::groups::OwnedKeys;
use crate::groups::{bytes_eq, key_head};

/// The end of a chain.
pub(super) const NONE: u32 = u32::MAX;

/// One stored row.
#[derive(Debug, Clone, Copy)]
pub(super) struct Entry {
    /// The stored batch it is in (a sequence number).
    pub batch: u64,
    pub row: u32,
    /// The next older entry of the same key in the bucket, or `NONE`.
    pub next: u32,
    pub time_ms: i64,
}

/// A key as a bucket compares it: its hash, its length and a word of its
/// bytes inline (all of them for keys of up to 8 bytes: every BIGINT,
/// most symbols, which then compare without leaving the hash table's
/// slot), the rest in the bucket's `key_bytes`.
#[derive(Debug, Clone, Copy)]
pub(super) struct KeyRef {
    hash: u64,
    head: u64,
    /// The length, saturated (Arrow strings stop at 2 GiB anyway).
    len: u32,
}

impl KeyRef {
    #[inline]
    pub fn new(hash: u64, key: &[u8]) -> Self {
        Self {
            hash,
            head: key_head(key),
            len: u32::try_from(key.len()).unwrap_or(u32::MAX),
        }
    }
}

/// One key's rows in a bucket: its key (a [`KeyRef`], laid out flat so
/// that the slot is 32 bytes) and its newest entry.
#[derive(Debug, Clone, Copy)]
pub(super) struct Chain {
    hash: u64,
    head: u64,
    /// Where the key's bytes are in the bucket's `key_bytes`, when it is
    /// longer than 8 bytes.
    key_start: usize,
    len: u32,
    /// The key's newest entry.
    pub newest: u32,
}

impl Chain {
    #[inline]
    fn is(&self, key: &KeyRef, bytes: &[u8], key_bytes: &[u8]) -> bool {
        self.hash == key.hash
            && self.head == key.head
            && self.len == key.len
            && (bytes.len() <= 8
                || key_bytes
                    .get(self.key_start..self.key_start + bytes.len())
                    .is_some_and(|stored| bytes_eq(stored, bytes)))
    }
}

/// A side's rows with event time (or, on a side carrying a row bound, a
/// bound) in `[start, start + width)`.
#[derive(Default)]
pub(super) struct Bucket {
    /// Each key's chain, hashed by the key's hash.
    chains: HashTable<Chain>,
    /// The bytes of the chains' keys longer than 8 bytes (see
    /// [`OwnedKeys::key_bytes`]), one after another.
    key_bytes: Vec<u8>,
    pub entries: Vec<Entry>,
}

impl Bucket {
    /// The chain of the key with these bytes.
    #[inline]
    pub fn chain_of(&self, key: &KeyRef, bytes: &[u8]) -> Option<&Chain> {
        self.chains
            .find(key.hash, |c| c.is(key, bytes, &self.key_bytes))
    }

    /// Appends an entry as the newest of its key's chain.
    #[inline]
    pub fn push(&mut self, key: &KeyRef, bytes: &[u8], mut entry: Entry) {
        let Bucket {
            chains,
            key_bytes,
            entries,
        } = self;
        let index = entries.len() as u32;
        entry.next = match chains.find_mut(key.hash, |c| c.is(key, bytes, key_bytes)) {
            Some(chain) => std::mem::replace(&mut chain.newest, index),
            None => {
                let key_start = key_bytes.len();
                if bytes.len() > 8 {
                    key_bytes.extend_from_slice(bytes);
                }
                let chain = Chain {
                    hash: key.hash,
                    head: key.head,
                    key_start,
                    len: key.len,
                    newest: index,
                };
                chains.insert_unique(key.hash, chain, |c| c.hash);
                NONE
            }
        };
        entries.push(entry);
    }

    /// Empty, keeping its memory.
    pub fn clear(&mut self) {
        self.chains.clear();
        self.key_bytes.clear();
        self.entries.clear();
    }

    pub fn bytes(&self) -> usize {
        self.chains.capacity() * (std::mem::size_of::<Chain>() + 1)
            + self.key_bytes.capacity()
            + self.entries.capacity() * std::mem::size_of::<Entry>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Keys that share their first 8 bytes, differ only in length or in
    /// one byte, and all hash alike: each still gets a chain of its own
    /// rows.
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
        let mut bucket = Bucket::default();
        for round in 0..3u32 {
            for (i, key) in keys.iter().enumerate() {
                let entry = Entry {
                    batch: u64::from(round),
                    row: i as u32,
                    next: NONE,
                    time_ms: 0,
                };
                bucket.push(&KeyRef::new(42, key), key, entry);
            }
        }
        for (i, key) in keys.iter().enumerate() {
            let chain = bucket.chain_of(&KeyRef::new(42, key), key).expect("stored");
            let mut rounds = Vec::new();
            let mut e = chain.newest;
            while e != NONE {
                let entry = &bucket.entries[e as usize];
                assert_eq!(entry.row as usize, i, "{key:?}");
                rounds.push(entry.batch);
                e = entry.next;
            }
            assert_eq!(rounds, [2, 1, 0], "{key:?}: newest first");
        }
        assert!(bucket
            .chain_of(&KeyRef::new(42, b"AAAAAAAA3"), b"AAAAAAAA3")
            .is_none());
        assert_eq!(std::mem::size_of::<Chain>(), 32, "a slot stays 32 bytes");
        bucket.clear();
        assert!(bucket
            .chain_of(&KeyRef::new(42, b"AAAA"), b"AAAA")
            .is_none());
    }
}
