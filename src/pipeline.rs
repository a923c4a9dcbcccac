//! The running pipeline: shard programs and the control plane's handle on
//! them.
//!
//! Each shard runs one [`ShardProgram`]: a loop that drains its lanes,
//! drives the operators of every stream, and pushes results into its
//! subscriber rings. All of a shard's state lives in its program and is
//! touched only by its thread. The control plane talks to a shard only
//! through its control channel (adding lanes and subscribers, stopping),
//! which is off the data path.
//!
//! A shard's *inputs* are the sources (one lane per source handle) and the
//! exchanges (one lane from every shard). A stream reads one input, or the
//! output of another stream (a cascading stream). A downstream stream that
//! needs its rows keyed differently than they are runs behind an exchange:
//! each shard re-partitions the upstream's output by the downstream's key
//! into shard-to-shard SPSC rings, followed by the upstream's watermark,
//! and the receiving shard's watermark for the exchange is the minimum over
//! the senders, as for source handles. A downstream that keeps no keyed
//! state runs on the same shard as its upstream, fed directly.
//!
//! An exchange ring that is full does not block its sender: the message
//! waits in the sender's outbox while the sender stops taking new source
//! rows and keeps draining its own exchange lanes. Two shards pushing to
//! each other through full rings therefore cannot deadlock, and the
//! outboxes stay bounded by what was already in flight.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::Poll;
use std::time::{Duration, Instant};

use arrow::array::{Int64Array, RecordBatch};
use futures::task::AtomicWaker;
use laminar_operators::{BatchTime, EventTimeUnit, Operator};
use laminar_runtime::executor::ShardThreads;
use laminar_runtime::router::HashPartitioner;
use laminar_runtime::spsc::{Consumer, Producer, PushError};
use laminar_runtime::{Error, ErrorCode, Result};
use laminar_sql::Routing;

use crate::graph::Target;
use crate::shard_wal::ShardWal;

use crate::metrics::ShardCounters;
use crate::storage::{Durability, LaneAck, WalRecord, LOG_ONLY_ROUTE};
use crate::subscription::Emitted;
use crate::Backpressure;

/// A message on a lane: from a source handle, or from a shard through an
/// exchange.
pub(crate) enum Ingress {
    /// Rows of input `input` for the streams of route `route`.
    Batch {
        input: usize,
        route: usize,
        batch: RecordBatch,
        /// Per-row watermark, when the batch was out of order enough for
        /// it to differ between rows (see `source.rs`).
        row_watermarks: Option<Int64Array>,
        pushed_at: Instant,
        /// The message's WAL record, encoded by the pushing handle (durable
        /// databases); the shard writes it before running the message.
        record: Option<WalRecord>,
    },
    /// The sender's watermark for `input` reached `watermark_ms`.
    Watermark {
        input: usize,
        watermark_ms: i64,
        pushed_at: Instant,
        record: Option<WalRecord>,
    },
    /// Recovery: a handle of an earlier run connects (a virtual lane of
    /// `input`, holding its watermark back like the handle did).
    ReplayOpen { key: u64, input: usize },
    /// Recovery: that handle went away.
    ReplayClose { key: u64 },
    /// Recovery: a logged message of that handle.
    Replayed { key: u64, message: Box<Ingress> },
    /// The last message of the replay lane: the sender is told once the
    /// shard has run everything before it.
    Fence(Sender<()>),
    /// Checkpoint `epoch`'s marker on an exchange lane: what the sender
    /// produced before its cut came before it (see `checkpoint.rs`).
    Barrier { epoch: u64 },
}

/// A message from the control plane to a shard.
pub(crate) enum Control {
    AddLane {
        input: usize,
        ring: Consumer<Ingress>,
        /// Where the shard reports the lane's durable progress (durable
        /// databases).
        ack: Option<Arc<LaneAck>>,
        /// The recovery replay lane: its messages are in the WAL already.
        replay: bool,
        /// `(generation, handle)` of a live handle's lane in a durable
        /// database: its opening and closing are logged.
        log_key: Option<(u32, u32)>,
    },
    AddSubscriber {
        stream: usize,
        ring: Producer<Emitted>,
    },
    /// Rows written to the table that `stream` (a lookup join) reads.
    TableRows {
        stream: usize,
        rows: RecordBatch,
        /// The rows are the table's whole content (a lookup table's
        /// refresh).
        replace: bool,
    },
    /// Take a checkpoint (see `checkpoint.rs`).
    Checkpoint(Arc<crate::checkpoint::Barrier>),
    /// Start a task on the shard's executor (a generator's partition, see
    /// `generator.rs`); the shard does not stop before the task ends.
    Spawn(SpawnFn),
    Stop,
}

/// Makes, on the shard, a task to run there.
pub(crate) type SpawnFn = Box<dyn FnOnce() -> std::pin::Pin<Box<dyn Future<Output = ()>>> + Send>;

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
    /// Per-key watermarks (`WITH (watermark_key = ...)`).
    pub key: Option<crate::key_watermark::KeySpec>,
}

/// A source while the pipeline runs.
pub(crate) struct SourceRuntime {
    pub name: String,
    /// The source's last rows, for ad-hoc queries.
    pub retention: Arc<crate::retention::Retention>,
    /// The source's watermark alignment group.
    pub alignment: Option<Arc<crate::alignment::AlignmentGroup>>,
    /// Idle timeout of the source's partitions.
    pub idle_timeout: Option<Duration>,
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
    pub durability: Durability,
    /// Generation of this database open (stamps pushes in the WAL).
    pub generation: u32,
    /// The largest WAL record a push may produce.
    pub wal_max_payload_bytes: usize,
    /// Numbers the source handles of this generation.
    pub next_handle: AtomicU32,
    /// The first WAL failure: from then on nothing is accepted.
    pub failure: Arc<OnceLock<Error>>,
    /// Set once recovery has replayed the WAL (at once without one).
    pub replayed: Latch,
    /// `[source]` -> rows recovered from the WAL at start.
    pub recovered_rows: Vec<u64>,
    /// Every live source handle of this run, for checkpoints' cuts (a
    /// dropped one leaves at the next checkpoint).
    pub handle_cuts: Mutex<Vec<Arc<crate::checkpoint::HandleCut>>>,
    /// `[source]` -> rows of this run's dropped handles, retired from
    /// `handle_cuts` (touched by the checkpoint coordinator only).
    pub retired_rows: Mutex<Vec<u64>>,
    /// The next checkpoint's epoch; held while a checkpoint runs, so
    /// there is one at a time.
    pub next_epoch: Mutex<u64>,
    /// The epoch pushes are stamped with (see `checkpoint::HandleCut`).
    pub requested_epoch: std::sync::atomic::AtomicU64,
    /// Materialized views (each reports its contents to checkpoints).
    pub views: usize,
    /// Streams whose operators cannot be checkpointed yet.
    pub not_checkpointable: Vec<String>,
    pub checkpoint_counters: crate::checkpoint::CheckpointCounters,
    /// The periodic checkpoint thread, joined by shutdown: a checkpoint
    /// still writing after shutdown returned would race whoever deletes
    /// or reopens the storage directory next.
    pub checkpoint_thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// `[shard]` -> the base the next checkpoint may patch (the
    /// coordinator's, touched under `next_epoch`).
    pub checkpoint_bases: Mutex<crate::checkpoint::Bases>,
}

/// A one-shot gate, awaited or waited on until it opens, with a result.
pub(crate) struct Latch {
    sender: Mutex<Option<futures::channel::oneshot::Sender<Result<()>>>>,
    opened: futures::future::Shared<futures::channel::oneshot::Receiver<Result<()>>>,
}

impl Default for Latch {
    fn default() -> Self {
        let (sender, receiver) = futures::channel::oneshot::channel();
        Self {
            sender: Mutex::new(Some(sender)),
            opened: futures::FutureExt::shared(receiver),
        }
    }
}

impl Latch {
    pub fn open(&self, result: Result<()>) {
        if let Some(sender) = self.sender.lock().ok().and_then(|mut s| s.take()) {
            let _ = sender.send(result);
        }
    }

    pub fn is_open(&self) -> bool {
        self.opened.peek().is_some()
    }

    /// Waits until open; returns its result.
    pub async fn wait(&self) -> Result<()> {
        match self.opened.clone().await {
            Ok(result) => result,
            Err(_) => Err(Error::new(
                ErrorCode::Execution,
                "recovery ended without a result",
            )),
        }
    }

    /// Waits on this thread (never on a shard).
    pub fn wait_blocking(&self) -> Result<()> {
        futures::executor::block_on(self.wait())
    }
}

impl Pipeline {
    /// Sends table rows to every shard's instance of lookup join `stream`.
    pub fn send_table_rows(&self, stream: usize, rows: &RecordBatch, replace: bool) -> Result<()> {
        for control in &self.controls {
            control.send(Control::TableRows {
                stream,
                rows: rows.clone(),
                replace,
            })?;
        }
        Ok(())
    }

    pub fn source_id(&self, name: &str) -> Option<usize> {
        self.sources.iter().position(|s| s.name == name)
    }

    pub fn check_running(&self) -> Result<()> {
        if let Some(failure) = self.failure.get() {
            return Err(failure.clone());
        }
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
    /// Subscribers.
    pub outputs: Vec<Output>,
    /// Ports on this shard fed directly by this one's output.
    pub local: Vec<Target>,
    /// Streams fed by this one's late rows.
    pub late: Vec<usize>,
    /// Exchanges fed by this one's output.
    pub exchanges: Vec<usize>,
    /// The watermark of this stream's output on this shard, as passed on
    /// to its downstreams (see `Operator::output_watermark`).
    pub watermark_ms: i64,
}

/// One input of a shard: a source or an exchange.
pub(crate) struct Input {
    /// This shard's watermark for the input: the minimum over its open
    /// lanes, never moving back.
    pub watermark_ms: i64,
    /// `[route]` -> ports fed by that route (an exchange has one route).
    pub routes: Vec<Vec<Target>>,
    /// Every port reading the input directly, in creation order.
    pub targets: Vec<Target>,
    /// Sources finish when the pipeline stops and their lanes are drained;
    /// exchanges when every sender has closed its ring.
    pub is_source: bool,
    /// A lane silent for this long stops holding the watermark back.
    pub idle_timeout: Option<Duration>,
}

/// The sending side of one exchange on one shard.
pub(crate) struct ExchangeOut {
    /// The exchange's input id on the receiving shards.
    pub input: usize,
    /// `None`: everything goes to shard 0.
    pub partitioner: Option<HashPartitioner>,
    /// One ring per receiving shard; dropped (closing the lanes) when the
    /// input feeding this exchange is finished.
    pub rings: Option<Vec<Producer<Ingress>>>,
    /// Messages waiting for room, per receiving shard, in order.
    pub outbox: Vec<VecDeque<Ingress>>,
    /// The inputs (on this shard) whose rows reach this exchange.
    pub feeding_inputs: Vec<usize>,
}

impl ExchangeOut {
    pub(crate) fn send(&mut self, shard: usize, message: Ingress) {
        let Some(rings) = self.rings.as_mut() else {
            return;
        };
        if self.outbox[shard].is_empty() {
            match rings[shard].try_push(message) {
                Ok(()) => {}
                Err(PushError::Full(message)) => self.outbox[shard].push_back(message),
                // The receiving shard is gone (stopping); nothing reads it.
                Err(PushError::Closed(_)) => {}
            }
        } else {
            self.outbox[shard].push_back(message);
        }
    }

    /// Sends a message made by `make` to every receiving shard.
    pub(crate) fn send_to_all(&mut self, make: impl Fn() -> Ingress) {
        for shard in 0..self.outbox.len() {
            self.send(shard, make());
        }
    }

    /// Moves waiting messages into rings with room; true if any moved.
    fn flush(&mut self) -> bool {
        let Some(rings) = self.rings.as_mut() else {
            return false;
        };
        let mut moved = false;
        for (shard, outbox) in self.outbox.iter_mut().enumerate() {
            while let Some(message) = outbox.pop_front() {
                match rings[shard].try_push(message) {
                    Ok(()) => moved = true,
                    Err(PushError::Full(message)) => {
                        outbox.push_front(message);
                        break;
                    }
                    Err(PushError::Closed(_)) => outbox.clear(),
                }
            }
        }
        moved
    }

    fn is_backed_up(&self) -> bool {
        self.outbox.iter().any(|o| !o.is_empty())
    }
}

/// One ring into this shard: a source handle (a partition of its source,
/// with its own watermark) or one sender of an exchange.
pub(crate) struct Lane {
    ring: Consumer<Ingress>,
    pub(crate) input: usize,
    pub(crate) watermark_ms: i64,
    /// When the lane last delivered a message.
    last_active: Instant,
    /// Silent past its input's idle timeout: left out of the watermark
    /// until it delivers again.
    idle: bool,
    /// Where durable progress is reported to the pushing handle.
    pub(crate) ack: Option<Arc<LaneAck>>,
    /// Messages of this lane written to the WAL.
    pub(crate) logged: u64,
    /// The recovery replay lane (not logged again, holds no watermark).
    replay: bool,
    /// Set when the lane's `Fence` arrived: it is removed, then told.
    fence: Option<Sender<()>>,
    /// A live handle's `(generation, handle)` (durable databases).
    pub(crate) log_key: Option<(u32, u32)>,
    /// A handle of an earlier run, replayed: fed by the replay lane, and
    /// its own ring stays empty (`hold` keeps it open).
    virtual_key: Option<u64>,
    hold: Option<Producer<Ingress>>,
    /// A virtual lane whose handle went away: removed after this turn.
    closing: bool,
    /// Messages taken from the ring.
    popped: u64,
    /// While a checkpoint aligns: how many messages of this source lane
    /// come before the cut.
    pub(crate) cut: Option<u64>,
    /// An exchange lane that delivered its checkpoint marker: read no
    /// further until the shard has taken its checkpoint.
    pub(crate) at_barrier: bool,
    /// For an exchange lane, the sending shard.
    pub(crate) exchange_sender: Option<usize>,
}

impl Lane {
    pub fn new(ring: Consumer<Ingress>, input: usize) -> Self {
        Self {
            ring,
            input,
            watermark_ms: i64::MIN,
            last_active: Instant::now(),
            idle: false,
            ack: None,
            logged: 0,
            replay: false,
            fence: None,
            log_key: None,
            virtual_key: None,
            hold: None,
            closing: false,
            popped: 0,
            cut: None,
            at_barrier: false,
            exchange_sender: None,
        }
    }

    /// The next message; rows and watermarks are counted against a
    /// checkpoint's cut.
    fn take(&mut self) -> Option<Ingress> {
        let message = self.ring.try_pop()?;
        if !matches!(message, Ingress::Barrier { .. }) {
            self.popped += 1;
            debug_assert!(
                self.cut.is_none_or(|cut| self.popped <= cut),
                "a lane ran past its checkpoint cut"
            );
        }
        Some(message)
    }

    /// Whether the shard may take the lane's next message: not while a
    /// checkpoint holds it at its cut.
    pub(crate) fn may_take(&self) -> bool {
        !self.at_barrier && self.cut.is_none_or(|cut| self.popped < cut)
    }

    /// Whether the lane is at a pending checkpoint's cut: at its marker,
    /// or (a source handle that sent none) past what it had delivered.
    pub(crate) fn at_cut(&self) -> bool {
        self.at_barrier
            || (self.exchange_sender.is_none() && self.cut.is_none_or(|cut| self.popped >= cut))
    }

    /// A replayed handle of an earlier run.
    pub(crate) fn virtual_lane(key: u64, input: usize) -> Self {
        let (hold, ring) = laminar_runtime::spsc::ring(1);
        let mut lane = Self::new(ring, input);
        lane.virtual_key = Some(key);
        lane.hold = Some(hold);
        lane
    }
}

/// Work for one stream, queued so that a stream's output reaches its local
/// downstreams before their watermark does.
pub(crate) enum Work {
    Batch {
        target: Target,
        batch: RecordBatch,
        watermark_ms: i64,
        row_watermarks: Option<Int64Array>,
    },
    Watermark {
        target: Target,
        watermark_ms: i64,
    },
}

/// Everything one shard owns.
pub(crate) struct ShardProgram {
    pub streams: Vec<ShardStream>,
    /// Sources first (input id = source id), then exchanges.
    pub inputs: Vec<Input>,
    pub exchanges: Vec<ExchangeOut>,
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
    /// Whether any input has an idle timeout (else idle checks are skipped).
    pub idle_timeouts: bool,
    /// Reused buffers of `run_work`.
    pub work_queue: Vec<Work>,
    pub out: Vec<RecordBatch>,
    /// The shard's WAL, in durable databases.
    pub wal: Option<ShardWal>,
    /// Source messages of one turn, logged as one group before they run.
    pub group: Vec<(usize, Ingress)>,
    /// The pipeline's first WAL failure.
    pub failure: Arc<OnceLock<Error>>,
    pub shard: usize,
    /// A checkpoint this shard is aligning for, and which exchanges have
    /// had its marker.
    pub checkpoint: Option<(Arc<crate::checkpoint::Barrier>, Vec<bool>)>,
    /// A checkpoint's state to load before anything runs (recovery).
    pub restore: Option<crate::checkpoint::ShardSnapshot>,
    /// The last checkpoint this shard took or gave up.
    pub last_epoch: u64,
    /// Tasks started here by `Control::Spawn` that have not ended (only
    /// this shard's thread touches it).
    pub spawned: Arc<AtomicUsize>,
    /// `[input]` -> rows taken in this pass over the lanes, not
    /// yet run (see [`ShardProgram::coalesce`]).
    pub pending: Vec<Pending>,
}

/// Rows of one input taken from its lanes in one pass, run as one batch
/// per route at the end of the pass.
///
/// A push, or an operator's output batch sent through an exchange, is cut
/// into one piece per shard, so at N shards a shard gets N pieces of about
/// 1/N of a batch for each batch pushed or made anywhere, each followed by
/// a watermark. Run one by one, each piece pays a whole operator call, and
/// a changelog operator emits an update per call: at 16 shards Nexmark
/// q4 emitted 50 times the rows per event one shard did, and its total
/// rate fell below one shard's.
/// Running what the lanes already hold as one batch waits for nothing, so
/// latency does not grow.
#[derive(Default)]
pub(crate) struct Pending {
    /// `(route, rows)`, in the order taken.
    batches: Vec<(usize, RecordBatch)>,
    rows: usize,
    /// When the earliest of the rows was pushed.
    pushed_at: Option<Instant>,
    /// Set when a lane of the input delivered a watermark while rows were
    /// pending (when the latest such was pushed): the input's watermark
    /// is recomputed after they run.
    advanced_at: Option<Instant>,
}

/// Messages taken from one lane before looking at the next, so one busy
/// handle cannot starve the others.
const LANE_BUDGET: usize = 16;
/// Rows pending for one input that are run at once rather than
/// at the end of the pass: bounds the memory a pass holds and keeps the
/// batch within what the operators handle well.
const PENDING_ROWS_MAX: usize = 8192;
/// Shard errors kept for `LaminarDB::errors`.
pub(crate) const MAX_KEPT_ERRORS: usize = 16;
/// One operator call in this many is timed and has its state measured.
const SAMPLE: u64 = 16;
/// How long a busy shard may leave a subscriber's new batches
/// unannounced. Waking a subscriber's thread that sleeps is a futex
/// syscall (about 7 us of the shard's time on a VM, where it is an
/// inter-processor interrupt): at one per emitted batch it was 5-10% of a
/// shard's time on Nexmark's stateless queries. A shard that runs out of
/// work wakes its subscribers at once, so this delays only results that
/// come while more input is already waiting.
const SUBSCRIBER_WAKE_INTERVAL: Duration = Duration::from_millis(1);

/// A subscriber's ring, and whether its consumer is owed a wake.
pub(crate) struct Output {
    pub ring: Producer<Emitted>,
    /// Pushed to since the last wake.
    owed: bool,
    /// The last wake.
    woken_at: Option<Instant>,
}

impl Output {
    pub fn new(ring: Producer<Emitted>) -> Self {
        Self {
            ring,
            owed: false,
            woken_at: None,
        }
    }

    /// Pushes without waking the subscriber, unless its last wake is
    /// [`SUBSCRIBER_WAKE_INTERVAL`] old. Returns the item if the
    /// subscriber is gone.
    pub(crate) async fn push(
        &mut self,
        item: Emitted,
        now: Instant,
    ) -> std::result::Result<(), Emitted> {
        self.ring.push_quiet(item).await?;
        self.owed = true;
        self.wake(now, false);
        Ok(())
    }

    /// Wakes the subscriber if it is owed a wake and either `all` or its
    /// last wake is [`SUBSCRIBER_WAKE_INTERVAL`] old.
    pub fn wake(&mut self, now: Instant, all: bool) {
        let due = self
            .woken_at
            .is_none_or(|at| now.saturating_duration_since(at) >= SUBSCRIBER_WAKE_INTERVAL);
        if self.owed && (all || due) {
            self.ring.wake_consumer();
            self.owed = false;
            self.woken_at = Some(now);
        }
    }
}

/// Gives the executor one turn, then resumes.
pub(crate) struct YieldNow(pub bool);

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
    /// The shard's main loop. Returns when told to stop and everything
    /// that reached it has been processed and passed on.
    pub async fn run(mut self) {
        let mut stopping = false;
        let mut last_work = Instant::now();
        let mut writer = self.open_wal().await;
        let writer = &mut writer;
        if let Some(snapshot) = self.restore.take() {
            if let Err(e) = self.load_snapshot(snapshot) {
                // Running on from empty state would compute something
                // else: stop taking input, like a WAL failure.
                self.fail(e);
            }
        }
        loop {
            self.take_controls(writer, &mut stopping).await;
            let mut worked = false;
            for exchange in &mut self.exchanges {
                worked |= exchange.flush();
            }
            // While an exchange is backed up, take no new source rows, but
            // keep draining exchanges: that is what frees the rings.
            let backed_up = self.exchanges.iter().any(ExchangeOut::is_backed_up);
            let mut lane = 0;
            while lane < self.lanes.len() {
                let input = self.lanes[lane].input;
                if !(backed_up && self.inputs[input].is_source) {
                    let mut lane_rows = 0;
                    for _ in 0..LANE_BUDGET {
                        // A batch's worth of rows from one lane, then the
                        // next lane's turn: the inputs of a join then take
                        // turns batch by batch, as they were pushed, instead
                        // of one side running eight batches ahead (its rows
                        // all kept until the other side's watermark comes).
                        // Not for a logged lane: its messages share a turn's
                        // one write (and, in `Sync`, one fdatasync).
                        if lane_rows >= PENDING_ROWS_MAX && self.lanes[lane].log_key.is_none() {
                            break;
                        }
                        if !self.lanes[lane].may_take() {
                            break;
                        }
                        let Some(message) = self.lanes[lane].take() else {
                            break;
                        };
                        // A control message sent before this one was
                        // pushed (an upsert into a table a join reads)
                        // applies first: read-your-writes across the two
                        // channels.
                        if self.control_sent.load(Ordering::Acquire) > self.control_seen {
                            // Messages taken before it run before it.
                            if !self.group.is_empty() {
                                self.log_group(writer).await;
                            }
                            self.run_all_pending().await;
                            self.take_controls(writer, &mut stopping).await;
                        }
                        if self.inputs[input].idle_timeout.is_some() {
                            let lane = &mut self.lanes[lane];
                            lane.last_active = Instant::now();
                            lane.idle = false;
                        }
                        worked = true;
                        match message {
                            Ingress::Fence(done) => {
                                self.lanes[lane].fence = Some(done);
                                break;
                            }
                            Ingress::Barrier { epoch } => {
                                // A handle's marker for a checkpoint this
                                // shard already took (it stopped reading
                                // at the handle's count) or gave up, or
                                // any marker once stopping (no checkpoint
                                // will come): nothing to do.
                                if epoch <= self.last_epoch || stopping {
                                    continue;
                                }
                                debug_assert!(self
                                    .checkpoint
                                    .as_ref()
                                    .is_none_or(|(barrier, _)| barrier.epoch == epoch));
                                // Messages taken before it run before the
                                // checkpoint.
                                if !self.group.is_empty() {
                                    self.log_group(writer).await;
                                }
                                self.run_pending(input).await;
                                self.lanes[lane].at_barrier = true;
                                if self.checkpoint.is_none() {
                                    ShardCounters::add(&self.counters.marker_waits, 1);
                                }
                                break;
                            }
                            Ingress::ReplayOpen { key, input } => {
                                self.lanes.push(Lane::virtual_lane(key, input));
                            }
                            Ingress::ReplayClose { key } => {
                                // Removed before the replay lane goes on,
                                // as the handle was before what followed.
                                if let Some(v) = self.virtual_lane(key) {
                                    self.lanes[v].closing = true;
                                }
                                break;
                            }
                            Ingress::Replayed { key, message } => {
                                let v = match self.virtual_lane(key) {
                                    Some(v) => v,
                                    None => {
                                        let input = match &*message {
                                            Ingress::Batch { input, .. }
                                            | Ingress::Watermark { input, .. } => *input,
                                            _ => 0,
                                        };
                                        self.lanes.push(Lane::virtual_lane(key, input));
                                        self.lanes.len() - 1
                                    }
                                };
                                self.handle(v, *message).await;
                            }
                            message => {
                                if let Ingress::Batch { batch, .. } = &message {
                                    lane_rows += batch.num_rows();
                                }
                                if self.lanes[lane].log_key.is_some() {
                                    // Write-ahead: runs after the group
                                    // is logged.
                                    self.group.push((lane, message));
                                } else if !self.lanes[lane].replay {
                                    if !self.coalesce(lane, message).await {
                                        break;
                                    }
                                } else {
                                    self.handle(lane, message).await;
                                }
                            }
                        }
                    }
                }
                lane += 1;
            }
            self.run_all_pending().await;
            if !self.group.is_empty() {
                self.log_group(writer).await;
            }
            if self.checkpoint.is_some() {
                worked |= self.advance_checkpoint(writer).await;
            }
            if worked {
                let depth: usize = self.lanes.iter().map(|lane| lane.ring.len()).sum();
                self.counters
                    .queue_depth
                    .store(depth as u64, Ordering::Relaxed);
            }
            let mut lane = 0;
            while lane < self.lanes.len() {
                let l = &self.lanes[lane];
                if l.fence.is_some()
                    || l.closing
                    || (l.ring.is_producer_closed() && l.ring.is_empty())
                {
                    // A finished partition no longer holds its input's
                    // watermark back.
                    let closed = self.lanes.swap_remove(lane);
                    if let Some((generation, handle)) = closed.log_key {
                        let record = crate::storage::lane_record(closed.input, generation, handle);
                        self.log_now(writer, crate::storage::LANE_CLOSE, &record)
                            .await;
                    }
                    if !closed.replay {
                        self.advance_watermark(closed.input, Instant::now()).await;
                    }
                    if let Some(done) = closed.fence {
                        let _ = done.send(());
                    }
                } else {
                    lane += 1;
                }
            }
            self.sync_wal(writer, false).await;
            self.mark_idle_lanes().await;
            if stopping {
                // Source pushes are refused from here on (lanes added
                // later too); those already made run before the shard
                // leaves. Exchange lanes end when their senders close.
                for lane in &self.lanes {
                    if self.inputs[lane.input].is_source {
                        lane.ring.close();
                    }
                }
                worked |= self.close_finished_exchanges();
            }
            // A pass that found work leaves its subscribers' wakes to a
            // later one (at most SUBSCRIBER_WAKE_INTERVAL later); a pass
            // that found none wakes them all, unless a generator running
            // here is about to bring more rows.
            let generating = self.spawned.load(Ordering::Relaxed) > 0;
            self.wake_subscribers(!worked && !generating);
            if worked {
                last_work = Instant::now();
                glommio::yield_if_needed().await;
                continue;
            }
            if stopping && self.is_drained() {
                if self.spawned.load(Ordering::Relaxed) > 0 {
                    // A task started here may be waiting for room in
                    // another shard's ring; it ends within a push once it
                    // sees the stop. Leaving now would strand it.
                    YieldNow(false).await;
                    continue;
                }
                self.sync_wal(writer, true).await;
                break;
            }
            if last_work.elapsed() < self.idle_spin {
                // Polling our own rings reacts in nanoseconds; a sleeping
                // executor needs a cross-thread wake (an eventfd write and
                // a few microseconds). Yield so other tasks still run.
                YieldNow(false).await;
                continue;
            }
            self.sync_wal(writer, true).await;
            self.wake_subscribers(true);
            self.wait_for_work().await;
            last_work = Instant::now();
        }
        self.abandon_checkpoint("the shard stopped");
        if let Some(w) = writer.take() {
            if let Err(e) = w.close().await {
                log::warn!("{e}");
            }
        }
        // A handle still waiting for durability learns that its shard is
        // gone (its lane's consumer is dropped with the program).
        for lane in &self.lanes {
            if let Some(ack) = &lane.ack {
                ack.waker.wake();
            }
        }
        // Dropping the output rings ends the subscriptions.
    }

    /// Runs the control messages sent so far (lanes, subscribers, table
    /// rows, stop).
    async fn take_controls(
        &mut self,
        writer: &mut Option<laminar_wal::WalWriter>,
        stopping: &mut bool,
    ) {
        while let Ok(message) = self.control.try_recv() {
            self.control_seen += 1;
            match message {
                Control::AddLane {
                    input,
                    ring,
                    ack,
                    replay,
                    log_key,
                } => {
                    let mut lane = Lane::new(ring, input);
                    lane.ack = ack;
                    lane.replay = replay;
                    if let Some((generation, handle)) = log_key.filter(|_| self.wal.is_some()) {
                        lane.log_key = Some((generation, handle));
                        if let Some((barrier, _)) = &self.checkpoint {
                            let key = crate::storage::lane_key(generation, handle);
                            lane.cut = Some(barrier.limit(key, self.shard));
                        }
                        let record = crate::storage::lane_record(input, generation, handle);
                        self.log_now(writer, crate::storage::LANE_OPEN, &record)
                            .await;
                    }
                    self.lanes.push(lane);
                }
                Control::AddSubscriber { stream, ring } => {
                    self.streams[stream].outputs.push(Output::new(ring))
                }
                Control::TableRows {
                    stream,
                    rows,
                    replace,
                } => {
                    let operator = &mut self.streams[stream].operator;
                    if let Err(e) = operator.on_table_rows(&rows, replace) {
                        self.record_error(stream, e);
                    }
                }
                Control::Checkpoint(barrier) => {
                    if self.checkpoint.is_some() || *stopping {
                        // Given up here: its markers are ignored from now
                        // on (a stopping shard already let its lanes go;
                        // a busy one lets them go when its checkpoint is
                        // taken).
                        self.last_epoch = self.last_epoch.max(barrier.epoch);
                        barrier.report_shard(
                            self.shard,
                            Err(Error::new(
                                ErrorCode::Checkpoint,
                                "a checkpoint reached a shard that is stopping or busy with another",
                            )),
                        );
                        continue;
                    }
                    for lane in &mut self.lanes {
                        if let Some((generation, handle)) = lane.log_key {
                            let key = crate::storage::lane_key(generation, handle);
                            lane.cut = Some(barrier.limit(key, self.shard));
                        }
                    }
                    self.checkpoint = Some((barrier, vec![false; self.exchanges.len()]));
                }
                Control::Spawn(make) => {
                    let running = Arc::clone(&self.spawned);
                    running.fetch_add(1, Ordering::Relaxed);
                    glommio::spawn_local(async move {
                        make().await;
                        running.fetch_sub(1, Ordering::Relaxed);
                    })
                    .detach();
                }
                Control::Stop => {
                    *stopping = true;
                    self.abandon_checkpoint("the pipeline is stopping");
                }
            }
        }
    }

    /// The virtual lane of a replayed handle.
    fn virtual_lane(&self, key: u64) -> Option<usize> {
        self.lanes.iter().position(|l| l.virtual_key == Some(key))
    }

    /// Marks lanes silent past their input's idle timeout and lets the
    /// watermark move on without them.
    async fn mark_idle_lanes(&mut self) {
        if !self.idle_timeouts {
            return;
        }
        let now = Instant::now();
        for lane in 0..self.lanes.len() {
            let input = self.lanes[lane].input;
            let Some(timeout) = self.inputs[input].idle_timeout else {
                continue;
            };
            let lane_state = &mut self.lanes[lane];
            if !lane_state.idle && now.duration_since(lane_state.last_active) >= timeout {
                lane_state.idle = true;
                log::debug!("input {input}: a lane is idle, the watermark moves on without it");
                self.advance_watermark(input, now).await;
            }
        }
    }

    /// When the next active lane with an idle timeout would become idle.
    fn next_idle_deadline(&self) -> Option<Instant> {
        self.lanes
            .iter()
            .filter(|lane| !lane.idle)
            .filter_map(|lane| {
                self.inputs[lane.input]
                    .idle_timeout
                    .map(|timeout| lane.last_active + timeout)
            })
            .min()
    }

    /// Whether an input can send nothing more: a source once the pipeline
    /// stops, its lanes refuse pushes with none still on its way, and they
    /// are empty; an exchange once all its senders closed.
    fn input_finished(&self, input: usize) -> bool {
        self.lanes
            .iter()
            .filter(|lane| lane.input == input)
            .all(|lane| {
                self.inputs[input].is_source && lane.ring.is_settled() && lane.ring.is_empty()
            })
    }

    /// Closes, after a stop, the exchanges whose feeding input is finished.
    fn close_finished_exchanges(&mut self) -> bool {
        let mut closed = false;
        for e in 0..self.exchanges.len() {
            let exchange = &self.exchanges[e];
            if exchange.rings.is_some()
                && !exchange.is_backed_up()
                && exchange
                    .feeding_inputs
                    .iter()
                    .all(|&input| self.input_finished(input))
            {
                self.exchanges[e].rings = None;
                closed = true;
            }
        }
        closed
    }

    /// After a stop: nothing left to read or to send.
    fn is_drained(&self) -> bool {
        self.exchanges.iter().all(|e| e.rings.is_none())
            && (0..self.inputs.len()).all(|input| self.input_finished(input))
    }

    /// Wakes the subscribers owed a wake: all of them when `all`, else
    /// those last woken [`SUBSCRIBER_WAKE_INTERVAL`] ago or more.
    fn wake_subscribers(&mut self, all: bool) {
        let now = Instant::now();
        for stream in &mut self.streams {
            for output in &mut stream.outputs {
                output.wake(now, all);
            }
        }
    }

    /// Sleeps until a lane has data, a lane closes, a backed-up exchange
    /// ring has room, or a control message arrives.
    async fn wait_for_work(&mut self) {
        let mut idle_timer = self.next_idle_deadline().map(|deadline| {
            Box::pin(glommio::timer::sleep(
                deadline.saturating_duration_since(Instant::now()),
            ))
        });
        std::future::poll_fn(|cx| {
            if let Some(timer) = idle_timer.as_mut() {
                if timer.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(());
                }
            }
            self.control_waker.register(cx.waker());
            let mut ready = self.control_sent.load(Ordering::Acquire) != self.control_seen;
            for lane in &self.lanes {
                ready |= lane.ring.register_and_check(cx.waker());
            }
            for exchange in &self.exchanges {
                if let Some(rings) = &exchange.rings {
                    for (shard, outbox) in exchange.outbox.iter().enumerate() {
                        if !outbox.is_empty() {
                            ready |= rings[shard].register_space_and_check(cx.waker());
                        }
                    }
                }
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

    /// Recomputes an input's watermark from its lanes and closes what it
    /// passed.
    async fn advance_watermark(&mut self, input: usize, pushed_at: Instant) {
        let Some(watermark_ms) = self
            .lanes
            .iter()
            .filter(|lane| lane.input == input && !lane.idle && !lane.replay)
            .map(|lane| lane.watermark_ms)
            .min()
        else {
            return;
        };
        if watermark_ms <= self.inputs[input].watermark_ms {
            return;
        }
        self.inputs[input].watermark_ms = watermark_ms;
        if let Some(published) = self.counters.watermarks.get(input) {
            published.store(watermark_ms, Ordering::Relaxed);
        }
        for i in 0..self.inputs[input].targets.len() {
            let target = self.inputs[input].targets[i];
            self.run_work(
                Work::Watermark {
                    target,
                    watermark_ms,
                },
                pushed_at,
            )
            .await;
        }
    }

    /// Takes a lane's message into its input's pending rows; false when
    /// the lane must not be read further in this pass.
    ///
    /// Running the pending rows at the end of the pass, at the input's
    /// watermark as it stands, is what running them one by one would do
    /// had the shard taken the lanes in another order: each lane's rows
    /// still run after that lane's earlier watermarks and before its later
    /// ones. That is why a lane that delivers a watermark while rows are
    /// pending is read no further: its later rows come after it. Rows with
    /// watermarks of their own, and the WAL's messages, run as they come.
    async fn coalesce(&mut self, lane: usize, message: Ingress) -> bool {
        if self.pending.len() < self.inputs.len() {
            self.pending
                .resize_with(self.inputs.len(), Pending::default);
        }
        match message {
            Ingress::Batch {
                input,
                route,
                batch,
                row_watermarks: None,
                pushed_at,
                record: None,
            } if route != LOG_ONLY_ROUTE => {
                self.count(input, route, &batch);
                let pending = &mut self.pending[input];
                pending.rows += batch.num_rows();
                pending.pushed_at = Some(pending.pushed_at.map_or(pushed_at, |t| t.min(pushed_at)));
                pending.batches.push((route, batch));
                if pending.rows >= PENDING_ROWS_MAX {
                    self.run_pending(input).await;
                }
                true
            }
            Ingress::Watermark {
                input,
                watermark_ms,
                pushed_at,
                record: None,
            } if !self.pending[input].batches.is_empty() => {
                ShardCounters::add(&self.counters.batches, 1);
                let lane = &mut self.lanes[lane];
                lane.watermark_ms = lane.watermark_ms.max(watermark_ms);
                let pending = &mut self.pending[input];
                pending.advanced_at =
                    Some(pending.advanced_at.map_or(pushed_at, |t| t.max(pushed_at)));
                false
            }
            message => {
                if let Ingress::Batch { input, .. } | Ingress::Watermark { input, .. } = &message {
                    self.run_pending(*input).await;
                }
                self.handle(lane, message).await;
                true
            }
        }
    }

    /// Runs the rows pending for `input`, one batch per route, then the
    /// watermark its lanes delivered meanwhile.
    async fn run_pending(&mut self, input: usize) {
        let Some(pending) = self.pending.get_mut(input) else {
            return;
        };
        if pending.batches.is_empty() {
            return;
        }
        let pushed_at = pending.pushed_at.take().unwrap_or_else(Instant::now);
        let advanced_at = pending.advanced_at.take();
        pending.rows = 0;
        let mut pieces = std::mem::take(&mut pending.batches);
        // Routes feed different ports, so their order does not matter;
        // within a route the rows keep the order they were taken in.
        pieces.sort_by_key(|(route, _)| *route);
        let mut drained = pieces.drain(..).peekable();
        let mut group = Vec::new();
        while let Some((route, first)) = drained.next() {
            group.push(first);
            while let Some((_, piece)) = drained.next_if(|(r, _)| *r == route) {
                group.push(piece);
            }
            if group.len() > 1 {
                // The pieces of one input and route share a schema.
                match arrow::compute::concat_batches(&group[0].schema(), &group) {
                    Ok(batch) => {
                        group.clear();
                        group.push(batch);
                    }
                    Err(e) => log::warn!("input #{input}: pieces run one by one: {e}"),
                }
            }
            // Moved, not cloned: the last port may take the batch itself.
            for batch in group.drain(..) {
                self.run_batch(input, route, batch, None, pushed_at).await;
            }
        }
        drop(drained);
        // The vector's room is kept for the next pass.
        if let Some(pending) = self.pending.get_mut(input) {
            pending.batches = pieces;
        }
        if let Some(advanced_at) = advanced_at {
            self.advance_watermark(input, advanced_at).await;
        }
    }

    async fn run_all_pending(&mut self) {
        for input in 0..self.pending.len() {
            self.run_pending(input).await;
        }
    }

    /// Counts a message's rows (every route of a push carries all its
    /// rows: count one).
    fn count(&self, input: usize, route: usize, batch: &RecordBatch) {
        ShardCounters::add(&self.counters.batches, 1);
        if route == 0 || route == LOG_ONLY_ROUTE {
            if let Some(rows) = self.counters.source_rows.get(input) {
                ShardCounters::add(rows, batch.num_rows() as u64);
            }
        }
    }

    pub(crate) async fn handle(&mut self, lane: usize, message: Ingress) {
        match &message {
            Ingress::Batch {
                input,
                route,
                batch,
                ..
            } => self.count(*input, *route, batch),
            _ => ShardCounters::add(&self.counters.batches, 1),
        }
        match message {
            Ingress::Batch { route, .. } if route == LOG_ONLY_ROUTE => {}
            Ingress::Batch {
                input,
                route,
                batch,
                row_watermarks,
                pushed_at,
                ..
            } => {
                self.run_batch(input, route, batch, row_watermarks, pushed_at)
                    .await;
            }
            Ingress::Watermark {
                input,
                watermark_ms,
                pushed_at,
                ..
            } => {
                debug_assert_eq!(self.lanes[lane].input, input);
                let lane = &mut self.lanes[lane];
                lane.watermark_ms = lane.watermark_ms.max(watermark_ms);
                self.advance_watermark(input, pushed_at).await;
            }
            Ingress::Fence(_)
            | Ingress::ReplayOpen { .. }
            | Ingress::ReplayClose { .. }
            | Ingress::Replayed { .. }
            | Ingress::Barrier { .. } => {
                unreachable!("replay and checkpoint markers are taken off in the drain loop")
            }
        }
    }

    /// Runs one batch of `input`'s route `route` through every port it
    /// feeds.
    async fn run_batch(
        &mut self,
        input: usize,
        route: usize,
        batch: RecordBatch,
        row_watermarks: Option<Int64Array>,
        pushed_at: Instant,
    ) {
        let watermark_ms = self.inputs[input].watermark_ms;
        let targets = self.inputs[input].routes[route].len();
        let mut batch = Some(batch);
        let mut row_watermarks = Some(row_watermarks);
        for i in 0..targets {
            let target = self.inputs[input].routes[route][i];
            // The last port takes the batch itself.
            let (batch, row_watermarks) = if i + 1 == targets {
                (
                    batch.take().expect("once"),
                    row_watermarks.take().expect("once"),
                )
            } else {
                (
                    batch.clone().expect("not taken yet"),
                    row_watermarks.clone().expect("not taken yet"),
                )
            };
            self.run_work(
                Work::Batch {
                    target,
                    batch,
                    watermark_ms,
                    row_watermarks,
                },
                pushed_at,
            )
            .await;
        }
    }

    /// Runs one stream's work and everything it causes downstream on this
    /// shard, depth first: a stream's output batches reach its local
    /// downstreams (and exchanges) before the watermark that produced them
    /// does.
    async fn run_work(&mut self, work: Work, origin: Instant) {
        // Buffers kept across calls: no allocation per message.
        let mut queue = std::mem::take(&mut self.work_queue);
        let mut out = std::mem::take(&mut self.out);
        queue.push(work);
        while let Some(work) = queue.pop() {
            let (stream, advanced_to) = match work {
                Work::Batch {
                    target: Target { stream, port },
                    batch,
                    watermark_ms,
                    row_watermarks,
                } => {
                    let counters = &self.counters.streams[stream];
                    ShardCounters::add(&counters.rows_in, batch.num_rows() as u64);
                    let operator = &mut self.streams[stream].operator;
                    let late_before = operator.late_rows();
                    let time = BatchTime {
                        watermark_ms,
                        row_watermarks_ms: row_watermarks.as_ref().map(|a| a.values().as_ref()),
                    };
                    let calls = counters.calls.load(Ordering::Relaxed);
                    // Busy time and state size are sampled (1 call in
                    // SAMPLE): two clock reads and a state walk per batch
                    // would cost more than a one-row batch's processing.
                    let sampled = calls.is_multiple_of(SAMPLE);
                    let started = sampled.then(Instant::now);
                    let result = operator.on_input_batch(port, &batch, time, &mut out);
                    if let Some(started) = started {
                        let elapsed_ns = started.elapsed().as_nanos() as u64;
                        ShardCounters::add(&counters.busy_ns, elapsed_ns * SAMPLE);
                        counters.record_call(elapsed_ns);
                        counters
                            .state_bytes
                            .store(operator.state_bytes() as u64, Ordering::Relaxed);
                    }
                    ShardCounters::add(&counters.calls, 1);
                    ShardCounters::add(&counters.late_rows, operator.late_rows() - late_before);
                    if let Err(e) = result {
                        out.clear();
                        self.record_error(stream, e);
                        continue;
                    }
                    if !self.streams[stream].late.is_empty() {
                        let mut late = Vec::new();
                        self.streams[stream].operator.drain_late(&mut late);
                        for batch in late {
                            for &next in &self.streams[stream].late {
                                queue.push(Work::Batch {
                                    target: Target {
                                        stream: next,
                                        port: 0,
                                    },
                                    batch: batch.clone(),
                                    watermark_ms,
                                    row_watermarks: None,
                                });
                            }
                        }
                    }
                    (stream, None)
                }
                Work::Watermark {
                    target: Target { stream, port },
                    watermark_ms,
                } => {
                    let started = Instant::now();
                    let operator = &mut self.streams[stream].operator;
                    let result = operator.on_input_watermark(port, watermark_ms, &mut out);
                    let counters = &self.counters.streams[stream];
                    let elapsed_ns = started.elapsed().as_nanos() as u64;
                    ShardCounters::add(&counters.busy_ns, elapsed_ns);
                    counters.record_call(elapsed_ns);
                    ShardCounters::add(&counters.calls, 1);
                    counters
                        .state_bytes
                        .store(operator.state_bytes() as u64, Ordering::Relaxed);
                    let output_ms = operator.output_watermark(watermark_ms);
                    if let Err(e) = result {
                        out.clear();
                        self.record_error(stream, e);
                    }
                    (
                        stream,
                        (output_ms > self.streams[stream].watermark_ms).then_some(output_ms),
                    )
                }
            };
            // Output rows are judged by downstreams against the watermark
            // in force before the one that produced them.
            let watermark_ms = self.streams[stream].watermark_ms;
            // Local downstreams see the watermark after the batches it
            // produced: queue it first (the queue is a stack).
            if let Some(advanced_to) = advanced_to {
                self.streams[stream].watermark_ms = advanced_to;
                for &next in self.streams[stream].local.iter().rev() {
                    queue.push(Work::Watermark {
                        target: next,
                        watermark_ms: advanced_to,
                    });
                }
            }
            for batch in out.iter().rev() {
                for &next in self.streams[stream].local.iter().rev() {
                    queue.push(Work::Batch {
                        target: next,
                        batch: batch.clone(),
                        watermark_ms,
                        row_watermarks: None,
                    });
                }
            }
            for batch in &out {
                for e in 0..self.streams[stream].exchanges.len() {
                    let exchange = self.streams[stream].exchanges[e];
                    if let Err(error) = self.exchange_batch(exchange, batch, origin) {
                        self.record_error(stream, error);
                    }
                }
            }
            if let Some(advanced_to) = advanced_to {
                for &exchange in &self.streams[stream].exchanges {
                    let exchange = &mut self.exchanges[exchange];
                    let input = exchange.input;
                    exchange.send_to_all(|| Ingress::Watermark {
                        input,
                        watermark_ms: advanced_to,
                        pushed_at: origin,
                        record: None,
                    });
                }
            }
            self.emit(stream, &mut out, origin).await;
        }
        self.work_queue = queue;
        self.out = out;
    }

    /// Re-partitions one output batch into an exchange.
    fn exchange_batch(
        &mut self,
        exchange: usize,
        batch: &RecordBatch,
        origin: Instant,
    ) -> Result<()> {
        let exchange = &mut self.exchanges[exchange];
        let pieces = match exchange.partitioner.as_mut() {
            Some(partitioner) => partitioner.partition(batch)?,
            None => vec![(0, batch.clone())],
        };
        for (shard, piece) in pieces {
            exchange.send(
                shard,
                Ingress::Batch {
                    input: exchange.input,
                    route: 0,
                    batch: piece,
                    row_watermarks: None,
                    pushed_at: origin,
                    record: None,
                },
            );
        }
        Ok(())
    }

    /// Hands a stream's finished batches to its subscribers, waiting on
    /// full rings (backpressure). Rings whose subscriber is gone are
    /// dropped.
    async fn emit(&mut self, stream: usize, out: &mut Vec<RecordBatch>, origin: Instant) {
        let now = Instant::now();
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
                    barrier: None,
                };
                if outputs[i].push(emitted, now).await.is_err() {
                    outputs.swap_remove(i);
                } else {
                    i += 1;
                }
            }
        }
    }
}
