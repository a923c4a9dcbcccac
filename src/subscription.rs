//! Subscriptions: a stream's output as Arrow batches.
//!
//! Each shard has its own ring to each subscriber, so shards never contend;
//! the subscription reads the rings round-robin. A slow subscriber fills its
//! rings, and the shards then wait for it (backpressure reaches the
//! pushers): output is never dropped or buffered without bound.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use laminar_runtime::spsc::Consumer;

use crate::metrics::LatencyHistogram;

/// One output batch and the moment the push that produced it was made.
#[derive(Debug, Clone)]
pub(crate) struct Emitted {
    pub batch: RecordBatch,
    pub origin: Instant,
    /// A checkpoint's marker (no rows): everything the shard emitted
    /// before the checkpoint's cut came before it.
    pub barrier: Option<std::sync::Arc<crate::checkpoint::Barrier>>,
}

/// A live subscription to a stream. Implements [`futures::Stream`] and has
/// blocking [`Subscription::recv`] / [`Subscription::recv_timeout`] and
/// non-blocking [`Subscription::poll`]. Ends (returns `None`) after the
/// database shuts down and everything emitted has been read.
pub struct Subscription {
    name: String,
    schema: SchemaRef,
    rings: Vec<Consumer<Emitted>>,
    next_ring: usize,
    latency: LatencyHistogram,
    /// `recv_marked`: the rings that delivered a checkpoint's marker.
    held: Vec<Option<std::sync::Arc<crate::checkpoint::Barrier>>>,
    /// `recv_marked`: per ring, batches that came after its marker.
    deferred: Vec<std::collections::VecDeque<Emitted>>,
}

/// What [`Subscription::recv_marked`] yields.
pub(crate) enum Marked {
    Batch(RecordBatch),
    Checkpoint(std::sync::Arc<crate::checkpoint::Barrier>),
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("stream", &self.name)
            .field("shards", &self.rings.len())
            .finish()
    }
}

impl Subscription {
    pub(crate) fn new(name: String, schema: SchemaRef, rings: Vec<Consumer<Emitted>>) -> Self {
        Self {
            name,
            schema,
            rings,
            next_ring: 0,
            latency: LatencyHistogram::default(),
            held: Vec::new(),
            deferred: Vec::new(),
        }
    }

    /// The stream's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The schema of every batch this subscription yields.
    pub fn schema(&self) -> SchemaRef {
        std::sync::Arc::clone(&self.schema)
    }

    /// Push-to-receive latency of the batches received so far: from the
    /// `push` (or `watermark`) call that produced a batch to the moment this
    /// subscription handed it out.
    pub fn latency(&self) -> &LatencyHistogram {
        &self.latency
    }

    /// Forgets the latency samples so far (e.g. after a warm-up).
    pub fn reset_latency(&mut self) {
        self.latency.clear();
    }

    fn take(&mut self, emitted: Emitted) -> RecordBatch {
        self.latency.record(emitted.origin.elapsed());
        emitted.batch
    }

    /// Returns a batch if one is ready, without waiting.
    pub fn poll(&mut self) -> Option<RecordBatch> {
        let n = self.rings.len();
        for i in 0..n {
            let ring = (self.next_ring + i) % n;
            while let Some(emitted) = self.rings[ring].try_pop() {
                if emitted.barrier.is_some() {
                    // Checkpoint markers matter to views only.
                    continue;
                }
                self.next_ring = (ring + 1) % n;
                return Some(self.take(emitted));
            }
        }
        None
    }

    /// For a reader whose contents are part of checkpoints (a
    /// materialized view): the next batch, or a checkpoint once every
    /// shard's marker has arrived. Batches a ring delivers after its
    /// marker are set aside until the others' markers arrive, so the
    /// batches before a checkpoint are exactly those the shards emitted
    /// before its cut. They are taken off the ring rather than left in
    /// it: a shard blocked on a full ring to this reader could otherwise
    /// hold up another shard's way to its cut (through an exchange), which
    /// the reader waits for. What is set aside is what the faster shards
    /// emit while the slowest aligns. `None` once the stream has ended.
    pub(crate) fn recv_marked(&mut self) -> Option<Marked> {
        futures::executor::block_on(std::future::poll_fn(|cx| {
            self.poll_with(cx, |this| {
                this.poll_marked().or_else(|| {
                    // Shards that stopped mid-checkpoint never send the
                    // markers still awaited: hand out what was set aside.
                    this.is_finished().then(|| {
                        this.held.iter_mut().for_each(|h| *h = None);
                        this.poll_marked()
                    })?
                })
            })
        }))
    }

    /// Takes the next item with `next`, or parks the waker on every ring
    /// (before a last try, so a push between the try and the park cannot
    /// be missed); `None` once every ring is closed and drained.
    fn poll_with<T>(
        &mut self,
        cx: &mut Context<'_>,
        mut next: impl FnMut(&mut Self) -> Option<T>,
    ) -> Poll<Option<T>> {
        if let Some(item) = next(self) {
            return Poll::Ready(Some(item));
        }
        for ring in &self.rings {
            ring.register_and_check(cx.waker());
        }
        if let Some(item) = next(self) {
            return Poll::Ready(Some(item));
        }
        if self.is_finished() {
            Poll::Ready(None)
        } else {
            Poll::Pending
        }
    }

    fn poll_marked(&mut self) -> Option<Marked> {
        let n = self.rings.len();
        if self.held.len() != n {
            self.held = vec![None; n];
            self.deferred = (0..n).map(|_| Default::default()).collect();
        }
        let aligning = self.held.iter().any(Option::is_some);
        if !aligning {
            // Batches set aside during the last checkpoint come first.
            for ring in 0..n {
                if let Some(emitted) = self.deferred[ring].pop_front() {
                    return Some(Marked::Batch(self.take(emitted)));
                }
            }
        }
        for i in 0..n {
            let ring = (self.next_ring + i) % n;
            // A ring past its marker: set its batches aside (nothing of a
            // later checkpoint can come before this one completes).
            if self.held[ring].is_some() {
                while let Some(emitted) = self.rings[ring].try_pop() {
                    debug_assert!(emitted.barrier.is_none());
                    self.deferred[ring].push_back(emitted);
                }
                continue;
            }
            if !self.deferred[ring].is_empty() {
                // Its set-aside batches go before anything newer of it.
                continue;
            }
            if let Some(emitted) = self.rings[ring].try_pop() {
                self.next_ring = (ring + 1) % n;
                match emitted.barrier {
                    Some(barrier) => {
                        self.held[ring] = Some(barrier);
                        if self.held.iter().all(Option::is_some) {
                            let barrier = self.held[0].take().expect("all held");
                            self.held.iter_mut().for_each(|h| *h = None);
                            return Some(Marked::Checkpoint(barrier));
                        }
                    }
                    None => return Some(Marked::Batch(self.take(emitted))),
                }
            }
        }
        None
    }

    /// Whether every shard has finished and everything was read.
    pub fn is_finished(&self) -> bool {
        self.rings
            .iter()
            .all(|r| r.is_producer_closed() && r.is_empty())
    }

    /// Waits for the next batch; `None` once the stream has ended.
    pub fn recv(&mut self) -> Option<RecordBatch> {
        futures::executor::block_on(futures::StreamExt::next(self))
    }

    /// Waits up to `timeout` for the next batch. `Ok(None)` means the
    /// stream ended; `Err(())` means the time ran out.
    #[allow(clippy::result_unit_err)]
    pub fn recv_timeout(&mut self, timeout: Duration) -> Result<Option<RecordBatch>, ()> {
        let deadline = Instant::now() + timeout;
        let mut backoff = crossbeam_utils::Backoff::new();
        loop {
            if let Some(batch) = self.poll() {
                return Ok(Some(batch));
            }
            if self.is_finished() {
                // A last item may have landed between poll and the check.
                return Ok(self.poll());
            }
            if Instant::now() >= deadline {
                return Err(());
            }
            if backoff.is_completed() {
                std::thread::park_timeout(Duration::from_micros(200));
                backoff = crossbeam_utils::Backoff::new();
            } else {
                backoff.snooze();
            }
        }
    }
}

impl futures::Stream for Subscription {
    type Item = RecordBatch;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<RecordBatch>> {
        self.get_mut().poll_with(cx, Subscription::poll)
    }
}
