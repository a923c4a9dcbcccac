//! The last rows pushed to each source, kept for ad-hoc queries
//! (`SELECT ... FROM source`). Bounded by a row count per source
//! (`retention_rows`, default [`DEFAULT_RETENTION_ROWS`]); whole batches are
//! kept (shared with the pipeline, not copied) and trimmed from the front.
//! Written by the pushing threads under a short lock per batch (off the
//! shards); zero rows turns it off.

use std::collections::VecDeque;
use std::sync::Mutex;

use arrow::array::RecordBatch;

/// Rows kept per source when `CREATE SOURCE` does not say.
pub const DEFAULT_RETENTION_ROWS: usize = 10_000;

/// A kept batch and the push that brought it, as (lane key, push number).
type Kept = (RecordBatch, Option<(u64, u64)>);

/// A source's retained rows.
pub(crate) struct Retention {
    limit: usize,
    /// Batches with the (lane key, push number) of the push that brought
    /// them (`None`: recovered), and the rows they hold.
    batches: Mutex<(VecDeque<Kept>, usize)>,
}

impl Retention {
    pub fn new(limit: usize) -> Self {
        Self {
            limit,
            batches: Mutex::new((VecDeque::new(), 0)),
        }
    }

    /// Whether the source keeps any rows.
    pub fn is_on(&self) -> bool {
        self.limit > 0
    }

    /// Keeps a pushed batch, dropping the oldest batches no longer needed.
    pub fn keep(&self, batch: &RecordBatch) {
        self.keep_tagged(batch, None);
    }

    /// Keeps a batch pushed as push `tag.1` of the handle with lane key
    /// `tag.0`, so that a checkpoint can tell which pushes it covers.
    pub fn keep_tagged(&self, batch: &RecordBatch, tag: Option<(u64, u64)>) {
        if self.limit == 0 || batch.num_rows() == 0 {
            return;
        }
        let Ok(mut guard) = self.batches.lock() else {
            return;
        };
        let (batches, rows) = &mut *guard;
        batches.push_back((batch.clone(), tag));
        *rows += batch.num_rows();
        while batches
            .front()
            .is_some_and(|(front, _)| *rows - front.num_rows() >= self.limit)
        {
            *rows -= batches.pop_front().map_or(0, |(b, _)| b.num_rows());
        }
    }

    /// The last `limit` rows, oldest first.
    pub fn snapshot(&self) -> Vec<RecordBatch> {
        let Ok(guard) = self.batches.lock() else {
            return Vec::new();
        };
        let (batches, _) = &*guard;
        self.last_rows(batches.iter().map(|(b, _)| b.clone()).collect())
    }

    /// Marks the batches of a handle that is gone as always covered by
    /// checkpoints (its pushes all precede any later cut).
    pub fn untag(&self, key: u64) {
        if let Ok(mut guard) = self.batches.lock() {
            for (_, tag) in guard.0.iter_mut() {
                if tag.is_some_and(|(k, _)| k == key) {
                    *tag = None;
                }
            }
        }
    }

    /// The kept rows a checkpoint covers: those recovered, and those of
    /// pushes up to each handle's number in `pushes` (by lane key).
    pub fn snapshot_at(&self, pushes: &std::collections::HashMap<u64, u64>) -> Vec<RecordBatch> {
        let Ok(guard) = self.batches.lock() else {
            return Vec::new();
        };
        let covered = guard
            .0
            .iter()
            .filter(|(_, tag)| {
                tag.is_none_or(|(key, seq)| pushes.get(&key).is_some_and(|&p| seq <= p))
            })
            .map(|(b, _)| b.clone())
            .collect();
        self.last_rows(covered)
    }

    fn last_rows(&self, mut out: Vec<RecordBatch>) -> Vec<RecordBatch> {
        let rows: usize = out.iter().map(RecordBatch::num_rows).sum();
        let mut extra = rows.saturating_sub(self.limit);
        while extra > 0 && !out.is_empty() {
            if out[0].num_rows() <= extra {
                extra -= out.remove(0).num_rows();
            } else {
                out[0] = out[0].slice(extra, out[0].num_rows() - extra);
                extra = 0;
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::Int64Array;
    use std::sync::Arc;

    #[test]
    fn keeps_the_last_rows() {
        let retention = Retention::new(5);
        for start in [0i64, 3, 6] {
            let batch = RecordBatch::try_from_iter(vec![(
                "a",
                Arc::new(Int64Array::from_iter_values(start..start + 3)) as _,
            )])
            .unwrap();
            retention.keep(&batch);
        }
        let kept: Vec<i64> = retention
            .snapshot()
            .iter()
            .flat_map(|b| {
                b.column(0)
                    .as_any()
                    .downcast_ref::<Int64Array>()
                    .unwrap()
                    .values()
                    .to_vec()
            })
            .collect();
        assert_eq!(kept, [4, 5, 6, 7, 8]);
        assert!(Retention::new(0).snapshot().is_empty());
    }

    #[test]
    fn a_checkpoint_keeps_the_pushes_before_its_cut() {
        let retention = Retention::new(100);
        let batch = |v: i64| {
            RecordBatch::try_from_iter(vec![("a", Arc::new(Int64Array::from(vec![v])) as _)])
                .unwrap()
        };
        retention.keep(&batch(0)); // recovered
        retention.keep_tagged(&batch(1), Some((7, 1)));
        retention.keep_tagged(&batch(2), Some((8, 1)));
        retention.keep_tagged(&batch(3), Some((7, 2)));
        let cut: std::collections::HashMap<u64, u64> = [(7, 1)].into_iter().collect();
        let kept: Vec<i64> = retention
            .snapshot_at(&cut)
            .iter()
            .map(|b| {
                b.column(0)
                    .as_any()
                    .downcast_ref::<Int64Array>()
                    .unwrap()
                    .value(0)
            })
            .collect();
        // Handle 8 is unknown to the cut: all its pushes are after it.
        assert_eq!(kept, vec![0, 1]);
    }
}
