//! Generators: input made inside the shards.
//!
//! A program that makes its input itself (synthetic load, a benchmark's
//! event generator, a replay computed from a seed) can run the producer on
//! the shards instead of on a thread of its own. [`LaminarDB::generate`]
//! builds one [`Generator`] per shard (partition `k` of `N`), and each runs
//! as a task on its shard's executor, taking turns with the shard's loop
//! one batch at a time: the shard processes a batch while it is still in
//! cache, and the producer steals no core. With one shard, a figure per
//! core therefore includes making the input.
//!
//! A generated batch takes the path of a pushed one: the schema check,
//! event time and watermark, routing by each stream's key (to any shard),
//! through source handles of the partition's own. So each partition is a
//! partition of its sources with a watermark of its own, and results do
//! not depend on how many shards generate.
//!
//! A finite generator is the whole input of its sources: when a partition
//! ends, its handles' watermarks go to the end of time and every window
//! closes (another handle pushing to the same sources still holds time
//! back as usual).
//!
//! [`LaminarDB::generate`]: crate::LaminarDB::generate

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Poll, Waker};

use arrow::array::RecordBatch;
use laminar_runtime::{Error, ErrorCode, Result};

use crate::pipeline::{YieldNow, MAX_KEPT_ERRORS};
use crate::source::SourceHandle;

/// One partition of a generator, run on one shard.
///
/// `next_batch` runs on the shard's thread between batches of the shard's
/// own work: keep each call to one batch's worth (a few thousand rows),
/// and never block in it.
pub trait Generator: Send + 'static {
    /// The next batch and the source it goes to (an index into the list
    /// given to [`LaminarDB::generate`](crate::LaminarDB::generate));
    /// `None` once this partition is done.
    fn next_batch(&mut self) -> Option<(usize, RecordBatch)>;
}

/// A running generator: how far it got and whether it finished.
///
/// Dropping it does not stop the generator.
#[derive(Debug, Clone)]
pub struct Generation {
    state: Arc<State>,
}

#[derive(Debug)]
struct State {
    /// Partitions still running.
    running: AtomicUsize,
    /// Rows accepted so far, all partitions together.
    rows: AtomicU64,
    /// The first partition's failure.
    error: Mutex<Option<Error>>,
    /// Tasks waiting in [`Generation::finished`] (any number of them).
    waiters: Mutex<Vec<Waker>>,
}

impl Generation {
    pub(crate) fn new(partitions: usize) -> Self {
        Self {
            state: Arc::new(State {
                running: AtomicUsize::new(partitions),
                rows: AtomicU64::new(0),
                error: Mutex::new(None),
                waiters: Mutex::new(Vec::new()),
            }),
        }
    }

    /// Rows the shards have accepted from the generator so far.
    pub fn rows(&self) -> u64 {
        self.state.rows.load(Ordering::Acquire)
    }

    /// Waits until every partition has ended and returns the rows
    /// generated, or the first partition's error (a batch that does not
    /// fit its source is `LDB-2001`, a source index out of range
    /// `LDB-4002`, a pipeline shut down meanwhile `LDB-2003`). A failed
    /// partition stops; the others run on.
    ///
    /// Results of the generated rows are still on their way to the
    /// subscribers when this returns; [`LaminarDB::shutdown`] then lets
    /// the shards finish them.
    ///
    /// [`LaminarDB::shutdown`]: crate::LaminarDB::shutdown
    pub async fn finished(&self) -> Result<u64> {
        std::future::poll_fn(|cx| {
            if self.state.running.load(Ordering::Acquire) > 0 {
                let Ok(mut waiters) = self.state.waiters.lock() else {
                    return Poll::Ready(Err(Error::new(
                        ErrorCode::Execution,
                        "a generator's state was poisoned",
                    )));
                };
                // Checked again under the lock the last partition takes to
                // wake the waiters: it cannot end in between unseen.
                if self.state.running.load(Ordering::Acquire) > 0 {
                    if !waiters.iter().any(|w| w.will_wake(cx.waker())) {
                        waiters.push(cx.waker().clone());
                    }
                    return Poll::Pending;
                }
            }
            let error = self.state.error.lock().ok().and_then(|e| e.clone());
            Poll::Ready(match error {
                Some(error) => Err(error),
                None => Ok(self.rows()),
            })
        })
        .await
    }

    /// Records a partition's failure: the first one is what
    /// [`Generation::finished`] returns.
    fn fail(&self, error: Error, errors: &Mutex<Vec<Error>>) {
        log::error!("generator: {error}");
        if let Ok(mut errors) = errors.lock() {
            if errors.len() < MAX_KEPT_ERRORS {
                errors.push(error.clone());
            }
        }
        if let Ok(mut first) = self.state.error.lock() {
            first.get_or_insert(error);
        }
    }
}

/// One partition on its way to its shard, and then running there. However
/// it ends (done, failed, or dropped unstarted with a shard that stopped
/// first: a shard does not stop while a partition it started runs), it
/// counts itself out of its [`Generation`] once.
pub(crate) struct Partition {
    generation: Generation,
    generator: Box<dyn Generator>,
    /// One handle per source, of this partition's own.
    handles: Vec<SourceHandle>,
    errors: Arc<Mutex<Vec<Error>>>,
    ended: bool,
}

impl Partition {
    pub(crate) fn new(
        generation: Generation,
        generator: Box<dyn Generator>,
        handles: Vec<SourceHandle>,
        errors: Arc<Mutex<Vec<Error>>>,
    ) -> Self {
        Self {
            generation,
            generator,
            handles,
            errors,
            ended: false,
        }
    }

    /// Runs on the current shard: each batch is pushed through the
    /// partition's handles, then the shard gets a turn.
    pub(crate) async fn run(mut self) {
        let result = self.generate().await;
        if let Err(error) = result {
            self.generation.fail(error, &self.errors);
        }
        self.ended = true;
    }

    async fn generate(&mut self) -> Result<()> {
        while let Some((source, batch)) = self.generator.next_batch() {
            let sources = self.handles.len();
            let handle = self.handles.get_mut(source).ok_or_else(|| {
                Error::new(
                    ErrorCode::InvalidInput,
                    format!("a generator's batch names source #{source}, but it writes {sources}"),
                )
            })?;
            let rows = batch.num_rows() as u64;
            handle.push_async(batch).await?;
            self.generation.state.rows.fetch_add(rows, Ordering::AcqRel);
            YieldNow(false).await;
        }
        for handle in &mut self.handles {
            handle.watermark_async(i64::MAX).await?;
        }
        Ok(())
    }
}

impl Drop for Partition {
    fn drop(&mut self) {
        if !self.ended {
            self.generation.fail(
                Error::new(
                    ErrorCode::NotRunning,
                    "the pipeline stopped before a generator's partition ended",
                ),
                &self.errors,
            );
        }
        // Closing the lanes before reporting: a caller that shuts down
        // next finds them finished.
        self.handles.clear();
        let state = &self.generation.state;
        let waiters = match state.waiters.lock() {
            Ok(mut waiters) => {
                if state.running.fetch_sub(1, Ordering::AcqRel) == 1 {
                    std::mem::take(&mut *waiters)
                } else {
                    Vec::new()
                }
            }
            Err(_) => {
                state.running.fetch_sub(1, Ordering::AcqRel);
                Vec::new()
            }
        };
        for waiter in waiters {
            waiter.wake();
        }
    }
}
