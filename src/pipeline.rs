//! The running pipeline: shard programs and the control plane's handle on
//! them.
//!
//! Each shard runs one [`ShardProgram`]: a loop that drains its ingest
//! lanes (one SPSC ring per source handle), drives the operators of every
//! stream, and pushes results into its subscriber rings. All of a shard's
//! state lives in its program and is touched only by its thread. The
//! control plane talks to a shard only through its control channel
//! (adding lanes and subscribers, stopping), which is off the data path.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::{Duration, Instant};

use arrow::array::{Int64Array, RecordBatch};
use futures::task::AtomicWaker;
use laminar_operators::{BatchTime, EventTimeUnit, Operator};
use laminar_runtime::executor::ShardThreads;
use laminar_runtime::spsc::{Consumer, Producer};
use laminar_runtime::{Error, ErrorCode, Result};
use laminar_sql::Routing;

use crate::metrics::ShardCounters;
use crate::subscription::Emitted;
use crate::Backpressure;

/// A message on an ingest lane, from a source handle to a shard.
pub(crate) enum Ingress {
    /// Rows of `source` for the streams of route `route`.
    Batch {
        source: usize,
        route: usize,
        batch: RecordBatch,
        /// Per-row watermark, when the batch was out of order enough for
        /// it to differ between rows (see `source.rs`).
        row_watermarks: Option<Int64Array>,
        pushed_at: Instant,
    },
    /// `source`'s watermark reached `watermark_ms`.
    Watermark {
        source: usize,
        watermark_ms: i64,
        pushed_at: Instant,
    },
}

/// A message from the control plane to a shard.
pub(crate) enum Control {
    AddLane {
        source: usize,
        ring: Consumer<Ingress>,
    },
    AddSubscriber {
        stream: usize,
        ring: Producer<Emitted>,
    },
    Stop,
}

/// The control plane's end of a shard's control channel.
pub(crate) struct ShardControl {
    sender: Mutex<Sender<Control>>,
    waker: Arc<AtomicWaker>,
    sent: Arc<AtomicUsize>,
}

impl ShardControl {
    pub fn send(&self, message: Control) -> Result<()> {
        self.sender
            .lock()
            .map_err(|_| Error::new(ErrorCode::NotRunning, "shard control channel poisoned"))?
            .send(message)
            .map_err(|_| Error::new(ErrorCode::NotRunning, "the shard has stopped"))?;
        self.sent.fetch_add(1, Ordering::Release);
        self.waker.wake();
        Ok(())
    }
}

/// Event time of a source, as the router needs it.
pub(crate) struct SourceTime {
    pub column: usize,
    pub unit: EventTimeUnit,
    pub bound_ms: i64,
}

/// A source while the pipeline runs.
pub(crate) struct SourceRuntime {
    pub name: String,
    pub time: Option<SourceTime>,
    /// Distinct routings of the streams reading this source.
    pub routes: Vec<Routing>,
}

/// A stream while the pipeline runs.
pub(crate) struct StreamRuntime {
    pub name: String,
}

/// Everything the control plane and source handles share about a running
/// pipeline.
pub(crate) struct Pipeline {
    pub shards: usize,
    pub ring_capacity: usize,
    pub backpressure: Backpressure,
    pub sources: Vec<SourceRuntime>,
    pub streams: Vec<StreamRuntime>,
    pub controls: Vec<ShardControl>,
    pub counters: Vec<Arc<ShardCounters>>,
    pub stopped: AtomicBool,
    pub threads: Mutex<Option<ShardThreads>>,
    /// Errors raised on shards (first few), reported by `LaminarDB::errors`.
    pub errors: Arc<Mutex<Vec<Error>>>,
}

impl Pipeline {
    pub fn source_id(&self, name: &str) -> Option<usize> {
        self.sources.iter().position(|s| s.name == name)
    }

    pub fn check_running(&self) -> Result<()> {
        if self.stopped.load(Ordering::Acquire) {
            return Err(Error::new(
                ErrorCode::NotRunning,
                "the pipeline has been shut down",
            ));
        }
        Ok(())
    }
}

/// One stream's operator on one shard, and where its output goes.
pub(crate) struct ShardStream {
    pub operator: Box<dyn Operator>,
    pub outputs: Vec<Producer<Emitted>>,
}

/// One source handle's ring into this shard. The handle is a partition of
/// its source: it carries its own watermark.
pub(crate) struct Lane {
    ring: Consumer<Ingress>,
    source: usize,
    watermark_ms: i64,
}

/// Everything one shard owns.
pub(crate) struct ShardProgram {
    pub streams: Vec<ShardStream>,
    /// `[source][route]` -> streams fed by that route.
    pub routes: Vec<Vec<Vec<usize>>>,
    /// `[source]` -> streams reading it.
    pub source_streams: Vec<Vec<usize>>,
    /// This shard's watermark for each source: the minimum over the
    /// source's open lanes, never moving back.
    pub watermarks: Vec<i64>,
    pub lanes: Vec<Lane>,
    pub control: Receiver<Control>,
    pub control_waker: Arc<AtomicWaker>,
    pub control_sent: Arc<AtomicUsize>,
    pub control_seen: usize,
    pub counters: Arc<ShardCounters>,
    pub errors: Arc<Mutex<Vec<Error>>>,
    /// How long to keep polling the lanes after the last message before
    /// sleeping.
    pub idle_spin: Duration,
}

/// Messages taken from one lane before looking at the next, so one busy
/// handle cannot starve the others.
const LANE_BUDGET: usize = 16;
/// Shard errors kept for `LaminarDB::errors`.
const MAX_KEPT_ERRORS: usize = 16;

/// Gives the executor one turn, then resumes.
struct YieldNow(bool);

impl std::future::Future for YieldNow {
    type Output = ();

    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<()> {
        if self.0 {
            return Poll::Ready(());
        }
        self.0 = true;
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

/// Creates a shard's control channel.
pub(crate) fn control_channel() -> (
    ShardControl,
    Receiver<Control>,
    Arc<AtomicWaker>,
    Arc<AtomicUsize>,
) {
    let (sender, receiver) = std::sync::mpsc::channel();
    let waker = Arc::new(AtomicWaker::new());
    let sent = Arc::new(AtomicUsize::new(0));
    (
        ShardControl {
            sender: Mutex::new(sender),
            waker: Arc::clone(&waker),
            sent: Arc::clone(&sent),
        },
        receiver,
        waker,
        sent,
    )
}

impl ShardProgram {
    /// The shard's main loop. Returns when told to stop and every lane is
    /// drained.
    pub async fn run(mut self) {
        let mut out = Vec::new();
        let mut stopping = false;
        let mut last_work = Instant::now();
        loop {
            while let Ok(message) = self.control.try_recv() {
                self.control_seen += 1;
                match message {
                    Control::AddLane { source, ring } => self.lanes.push(Lane {
                        ring,
                        source,
                        watermark_ms: i64::MIN,
                    }),
                    Control::AddSubscriber { stream, ring } => {
                        self.streams[stream].outputs.push(ring)
                    }
                    Control::Stop => stopping = true,
                }
            }
            let mut worked = false;
            let mut lane = 0;
            while lane < self.lanes.len() {
                for _ in 0..LANE_BUDGET {
                    let Some(message) = self.lanes[lane].ring.try_pop() else {
                        break;
                    };
                    self.handle(lane, message, &mut out).await;
                    worked = true;
                }
                let ring = &self.lanes[lane].ring;
                if ring.is_producer_closed() && ring.is_empty() {
                    // A finished partition no longer holds its source's
                    // watermark back.
                    let closed = self.lanes.swap_remove(lane);
                    self.advance_watermark(closed.source, Instant::now(), &mut out)
                        .await;
                } else {
                    lane += 1;
                }
            }
            if worked {
                last_work = Instant::now();
                glommio::yield_if_needed().await;
                continue;
            }
            if stopping {
                break;
            }
            if last_work.elapsed() < self.idle_spin {
                // Polling our own rings reacts in nanoseconds; a sleeping
                // executor needs a cross-thread wake (an eventfd write and
                // a few microseconds). Yield so other tasks still run.
                YieldNow(false).await;
                continue;
            }
            self.wait_for_work().await;
            last_work = Instant::now();
        }
        // Dropping the output rings ends the subscriptions.
    }

    /// Sleeps until a lane has data, a lane closes or a control message
    /// arrives.
    async fn wait_for_work(&mut self) {
        std::future::poll_fn(|cx| {
            self.control_waker.register(cx.waker());
            let mut ready = self.control_sent.load(Ordering::Acquire) != self.control_seen;
            for lane in &self.lanes {
                ready |= lane.ring.register_and_check(cx.waker());
            }
            if ready {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await
    }

    fn record_error(&self, stream: usize, error: Error) {
        log::error!("stream #{stream}: {error}");
        if let Ok(mut errors) = self.errors.lock() {
            if errors.len() < MAX_KEPT_ERRORS {
                errors.push(error);
            }
        }
    }

    /// Recomputes a source's watermark from its lanes and closes what it
    /// passed.
    async fn advance_watermark(
        &mut self,
        source: usize,
        pushed_at: Instant,
        out: &mut Vec<RecordBatch>,
    ) {
        let Some(watermark_ms) = self
            .lanes
            .iter()
            .filter(|lane| lane.source == source)
            .map(|lane| lane.watermark_ms)
            .min()
        else {
            return;
        };
        if watermark_ms <= self.watermarks[source] {
            return;
        }
        self.watermarks[source] = watermark_ms;
        for i in 0..self.source_streams[source].len() {
            let stream = self.source_streams[source][i];
            if let Err(e) = self.streams[stream]
                .operator
                .on_watermark(watermark_ms, out)
            {
                out.clear();
                self.record_error(stream, e);
                continue;
            }
            self.emit(stream, out, pushed_at).await;
        }
    }

    async fn handle(&mut self, lane: usize, message: Ingress, out: &mut Vec<RecordBatch>) {
        ShardCounters::add(&self.counters.batches, 1);
        match message {
            Ingress::Batch {
                source,
                route,
                batch,
                row_watermarks,
                pushed_at,
            } => {
                let time = BatchTime {
                    watermark_ms: self.watermarks[source],
                    row_watermarks_ms: row_watermarks.as_ref().map(|a| a.values().as_ref()),
                };
                for i in 0..self.routes[source][route].len() {
                    let stream = self.routes[source][route][i];
                    let counters = &self.counters.streams[stream];
                    ShardCounters::add(&counters.rows_in, batch.num_rows() as u64);
                    let operator = &mut self.streams[stream].operator;
                    let late_before = operator.late_rows();
                    let result = operator.on_batch(&batch, time, out);
                    ShardCounters::add(&counters.late_rows, operator.late_rows() - late_before);
                    if let Err(e) = result {
                        out.clear();
                        self.record_error(stream, e);
                        continue;
                    }
                    self.emit(stream, out, pushed_at).await;
                }
            }
            Ingress::Watermark {
                source,
                watermark_ms,
                pushed_at,
            } => {
                debug_assert_eq!(self.lanes[lane].source, source);
                let lane = &mut self.lanes[lane];
                lane.watermark_ms = lane.watermark_ms.max(watermark_ms);
                self.advance_watermark(source, pushed_at, out).await;
            }
        }
    }

    /// Hands a stream's finished batches to its subscribers, waiting on
    /// full rings (backpressure). Rings whose subscriber is gone are
    /// dropped.
    async fn emit(&mut self, stream: usize, out: &mut Vec<RecordBatch>, origin: Instant) {
        for batch in out.drain(..) {
            ShardCounters::add(
                &self.counters.streams[stream].rows_out,
                batch.num_rows() as u64,
            );
            let outputs = &mut self.streams[stream].outputs;
            let mut i = 0;
            while i < outputs.len() {
                let emitted = Emitted {
                    batch: batch.clone(),
                    origin,
                };
                if outputs[i].push(emitted).await.is_err() {
                    outputs.swap_remove(i);
                } else {
                    i += 1;
                }
            }
        }
    }
}
