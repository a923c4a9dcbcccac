//! Hash partitioning of Arrow batches into per-shard sub-batches.
//!
//! Rows with equal key values always go to the same shard, in their arrival
//! order, whatever the batch boundaries: the shard that owns a key sees every
//! row of that key, so keyed state never needs to cross shards. The hash is
//! DataFusion's vectorised column hash with a fixed seed, so the same key
//! lands on the same shard in every process (recovery depends on this).

use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch, UInt32Array};
use arrow::compute::take_record_batch;
use datafusion_common::hash_utils::{create_hashes, RandomState};

use crate::error::Result;

/// Seed for routing hashes. Changing it re-shuffles keys across shards and
/// breaks recovery of existing storage: it is part of the on-disk contract.
const ROUTING_SEED: u64 = 0x4c61_6d69_6e61_7244;

/// Maps a 64-bit hash onto `0..shards` without a division (Lemire's
/// multiply-shift), uniform when the hash is.
#[inline]
pub fn shard_of(hash: u64, shards: usize) -> usize {
    ((u128::from(hash) * shards as u128) >> 64) as usize
}

/// Splits batches by the hash of some key columns. Keeps its scratch
/// buffers between calls, so steady-state partitioning allocates only the
/// output sub-batches.
#[derive(Debug)]
pub struct HashPartitioner {
    key_columns: Vec<usize>,
    shards: usize,
    state: RandomState,
    hashes: Vec<u64>,
    indices: Vec<Vec<u32>>,
}

impl HashPartitioner {
    /// Partitions on `key_columns` (indices into the batch) over `shards`.
    pub fn new(key_columns: Vec<usize>, shards: usize) -> Self {
        assert!(shards > 0, "at least one shard");
        Self {
            key_columns,
            shards,
            state: RandomState::with_seed(ROUTING_SEED),
            hashes: Vec::new(),
            indices: vec![Vec::new(); shards],
        }
    }

    /// Number of shards.
    pub fn shards(&self) -> usize {
        self.shards
    }

    /// Returns `(shard, sub_batch)` for every shard that gets rows. Row order
    /// within a sub-batch is the input order.
    pub fn partition(&mut self, batch: &RecordBatch) -> Result<Vec<(usize, RecordBatch)>> {
        if self.shards == 1 || batch.num_rows() == 0 {
            return Ok(vec![(0, batch.clone())]);
        }
        let keys: Vec<ArrayRef> = self
            .key_columns
            .iter()
            .map(|&i| Arc::clone(batch.column(i)))
            .collect();
        self.hashes.clear();
        self.hashes.resize(batch.num_rows(), 0);
        create_hashes(&keys, &self.state, &mut self.hashes)?;
        for list in &mut self.indices {
            list.clear();
        }
        for (row, &hash) in self.hashes.iter().enumerate() {
            self.indices[shard_of(hash, self.shards)].push(row as u32);
        }
        let mut out = Vec::with_capacity(self.shards);
        for (shard, rows) in self.indices.iter().enumerate() {
            if rows.is_empty() {
                continue;
            }
            if rows.len() == batch.num_rows() {
                // Every row belongs to one shard: hand the batch on as is.
                return Ok(vec![(shard, batch.clone())]);
            }
            let rows = UInt32Array::from(rows.clone());
            out.push((shard, take_record_batch(batch, &rows)?));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int64Array, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};

    fn batch(keys: &[&str]) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("k", DataType::Utf8, false),
            Field::new("v", DataType::Int64, false),
        ]));
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from(keys.to_vec())),
                Arc::new(Int64Array::from_iter_values(0..keys.len() as i64)),
            ],
        )
        .unwrap()
    }

    #[test]
    fn equal_keys_land_on_one_shard_in_order() {
        let mut p = HashPartitioner::new(vec![0], 4);
        let keys: Vec<String> = (0..1000).map(|i| format!("k{}", i % 37)).collect();
        let refs: Vec<&str> = keys.iter().map(|s| s.as_str()).collect();
        let parts = p.partition(&batch(&refs)).unwrap();
        assert!(parts.len() > 1);
        let total: usize = parts.iter().map(|(_, b)| b.num_rows()).sum();
        assert_eq!(total, 1000);
        let mut owner = std::collections::HashMap::new();
        for (shard, b) in &parts {
            let k = b.column(0).as_any().downcast_ref::<StringArray>().unwrap();
            let v = b.column(1).as_any().downcast_ref::<Int64Array>().unwrap();
            assert!(v.values().windows(2).all(|w| w[0] < w[1]));
            for key in k.iter().flatten() {
                assert_eq!(*owner.entry(key.to_string()).or_insert(*shard), *shard);
            }
        }
    }

    #[test]
    fn routing_is_stable_across_partitioners() {
        let b = batch(&["a", "b", "c", "d", "e", "f"]);
        let mut p1 = HashPartitioner::new(vec![0], 3);
        let mut p2 = HashPartitioner::new(vec![0], 3);
        let s1: Vec<_> = p1
            .partition(&b)
            .unwrap()
            .into_iter()
            .map(|(s, b)| (s, b.num_rows()))
            .collect();
        let s2: Vec<_> = p2
            .partition(&b)
            .unwrap()
            .into_iter()
            .map(|(s, b)| (s, b.num_rows()))
            .collect();
        assert_eq!(s1, s2);
    }

    #[test]
    fn shard_of_is_in_range() {
        for h in [0, 1, u64::MAX, u64::MAX / 2] {
            assert!(shard_of(h, 7) < 7);
        }
    }
}
