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

/// A source's retained rows.
pub(crate) struct Retention {
    limit: usize,
    batches: Mutex<(VecDeque<RecordBatch>, usize)>,
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
        if self.limit == 0 || batch.num_rows() == 0 {
            return;
        }
        let Ok(mut guard) = self.batches.lock() else {
            return;
        };
        let (batches, rows) = &mut *guard;
        batches.push_back(batch.clone());
        *rows += batch.num_rows();
        while batches
            .front()
            .is_some_and(|front| *rows - front.num_rows() >= self.limit)
        {
            *rows -= batches.pop_front().map_or(0, |b| b.num_rows());
        }
    }

    /// The last `limit` rows, oldest first.
    pub fn snapshot(&self) -> Vec<RecordBatch> {
        let Ok(guard) = self.batches.lock() else {
            return Vec::new();
        };
        let (batches, rows) = &*guard;
        let mut out: Vec<RecordBatch> = batches.iter().cloned().collect();
        if let Some(first) = out.first_mut() {
            let extra = rows.saturating_sub(self.limit);
            *first = first.slice(extra, first.num_rows() - extra);
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
}
