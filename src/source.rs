//! Source handles: how rows get in.
//!
//! A [`SourceHandle`] owns one ingest lane (an SPSC ring) to every shard, so
//! handles on different threads never share a ring. It is `Send` but not
//! `Sync`: give each pushing thread its own handle (`clone()` makes a new
//! one with its own lanes).
//!
//! Per push, on the pushing thread (the router): check the schema, read the
//! event times, advance the source's watermark, split the batch by each
//! stream's routing key, and hand the pieces to the shards.
//!
//! Watermark semantics (what makes results independent of batch size and
//! shard count): each handle is a partition of its source with its own
//! watermark, the largest event time it pushed minus the declared bound (or
//! a later value set with [`SourceHandle::watermark`]), in force from the
//! row after the one that raised it. A shard's watermark for the source is
//! the minimum over the handles that are connected (from their first push,
//! or, for a generator's, from its start) and still open (a dropped handle
//! stops holding time back once its rows are processed),
//! and it never moves back. With one handle per source, the source's
//! watermark is simply its largest event time minus the bound. Rows in one batch are judged one after another, exactly as if
//! they had been pushed one at a time. The common case (no row is behind the
//! watermark in force when it arrives) sends no per-row data; otherwise the
//! batch carries each row's watermark to the shards.

use std::cell::RefCell;
use std::sync::Arc;
use std::time::Instant;

use arrow::array::{ArrayRef, Int64Array, RecordBatch};
use arrow::datatypes::{DataType, Schema, SchemaRef};
use laminar_runtime::router::HashPartitioner;
use laminar_runtime::spsc::{ring, Producer, PushError};
use laminar_runtime::{Error, ErrorCode, Result};
use laminar_sql::Routing;

use crate::alignment::{AlignmentGroup, Member};
use crate::pipeline::{Control, Ingress, Pipeline};
use crate::storage::{Durability, LaneAck, PushTag, LOG_ONLY_ROUTE};
use crate::{Backpressure, Shared};

/// A handle to push rows into a source. See the module docs.
pub struct SourceHandle {
    shared: Arc<Shared>,
    name: String,
    schema: SchemaRef,
    event_time_column: Option<usize>,
    lanes: RefCell<Option<Lanes>>,
}

impl std::fmt::Debug for SourceHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SourceHandle")
            .field("source", &self.name)
            .finish()
    }
}

impl Clone for SourceHandle {
    /// A new handle on the same source with its own lanes.
    fn clone(&self) -> Self {
        Self::new(
            Arc::clone(&self.shared),
            self.name.clone(),
            Arc::clone(&self.schema),
            self.event_time_column,
        )
    }
}

/// This handle's connection to a running pipeline.
struct Lanes {
    pipeline: Arc<Pipeline>,
    source: usize,
    producers: Vec<Producer<Ingress>>,
    partitioners: Vec<Option<HashPartitioner>>,
    next_shard: usize,
    /// This handle's watermark: the largest event time it pushed minus the
    /// bound, or what it set explicitly.
    watermark_ms: i64,
    /// This handle in its source's alignment group.
    member: Option<Arc<Member>>,
    /// Per-key watermarks, when the source keys them.
    keys: Option<crate::key_watermark::KeyWatermarks>,
    times_ms: Vec<i64>,
    /// This handle's number in its generation (durable databases).
    handle: u32,
    /// Pushes so far that produced messages (durable databases).
    pushes: u64,
    /// `[shard]` -> messages sent on this handle's lane.
    sent: Vec<u64>,
    /// `[shard]` -> how many of them the shard has made durable.
    acks: Vec<Arc<LaneAck>>,
    /// Rows of this handle's pushes so far (durable databases).
    rows_pushed: u64,
    /// Where this handle publishes what it delivered, for checkpoints
    /// (durable databases).
    cut: Option<Arc<crate::checkpoint::HandleCut>>,
    /// The checkpoint epoch of this handle's last marker.
    epoch: u64,
    /// Wait for room in a full ring even under `Backpressure::Error` (a
    /// generator's handle).
    always_wait: bool,
}

/// A push under way, for checkpoints; ends when dropped.
struct Pushing(Arc<crate::checkpoint::HandleCut>);

impl Drop for Pushing {
    fn drop(&mut self) {
        self.0.end();
    }
}

impl SourceHandle {
    pub(crate) fn new(
        shared: Arc<Shared>,
        name: String,
        schema: SchemaRef,
        event_time_column: Option<usize>,
    ) -> Self {
        Self {
            shared,
            name,
            schema,
            event_time_column,
            lanes: RefCell::new(None),
        }
    }

    /// Index of the column named in the source's `WATERMARK FOR` clause.
    pub fn event_time_column(&self) -> Option<usize> {
        self.event_time_column
    }

    /// The source's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The schema pushed batches must have.
    pub fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    /// Pushes a batch. With [`Backpressure::Block`] (the default) this waits
    /// while a shard's ring is full; with [`Backpressure::Error`] it returns
    /// `LDB-2002` instead and nothing of the batch is accepted.
    ///
    /// Blocks the calling thread: from async code prefer
    /// [`SourceHandle::push_async`].
    pub fn push(&self, batch: RecordBatch) -> Result<()> {
        if let Some(pipeline) = self.replaying() {
            pipeline.replayed.wait_blocking()?;
        }
        let mut lanes = self
            .lanes
            .try_borrow_mut()
            .map_err(|_| Error::new(ErrorCode::Execution, "SourceHandle::push re-entered"))?;
        let lanes = self.connect(&mut lanes)?;
        let batch = conform(&self.schema, batch)?;
        if let Some(candidate) = lanes.needs_alignment(&batch)? {
            let (group, member) = lanes.alignment().expect("checked");
            let pipeline = Arc::clone(&lanes.pipeline);
            group.wait_until_aligned(
                &member,
                &self.name,
                candidate,
                pipeline.backpressure,
                || pipeline.check_running(),
            )?;
        }
        let retention = Arc::clone(&lanes.pipeline.sources[lanes.source].retention);
        let kept = retention.is_on().then(|| batch.clone());
        let rows = batch.num_rows() as u64;
        let mut messages = lanes.route(&self.schema, batch)?;
        let _pushing = lanes.begin_push_blocking(!messages.is_empty())?;
        lanes.check_room(&messages)?;
        lanes.seal(&mut messages, rows)?;
        lanes.deliver_blocking(messages)?;
        futures::executor::block_on(lanes.durable())?;
        lanes.publish();
        if let Some(batch) = kept {
            retention.keep_tagged(&batch, lanes.tag());
        }
        lanes.publish_cut();
        Ok(())
    }

    /// Pushes a batch, waiting asynchronously while a shard's ring is full.
    pub async fn push_async(&mut self, batch: RecordBatch) -> Result<()> {
        if let Some(pipeline) = self.replaying() {
            pipeline.replayed.wait().await?;
        }
        let schema = Arc::clone(&self.schema);
        let mut slot = std::mem::take(self.lanes.get_mut());
        let lanes = self.connect(&mut slot)?;
        let result = async {
            let batch = conform(&schema, batch)?;
            if let Some(candidate) = lanes.needs_alignment(&batch)? {
                // Waiting for the rest of the group blocks: do it on a
                // helper thread, not on the caller's executor.
                let (group, member) = lanes.alignment().expect("checked");
                let pipeline = Arc::clone(&lanes.pipeline);
                let name = self.name.clone();
                let (done, waited) = futures::channel::oneshot::channel();
                std::thread::Builder::new()
                    .name("laminar-align".into())
                    .spawn(move || {
                        let _ = done.send(group.wait_until_aligned(
                            &member,
                            &name,
                            candidate,
                            pipeline.backpressure,
                            || pipeline.check_running(),
                        ));
                    })
                    .map_err(|e| {
                        Error::new(
                            ErrorCode::RuntimeStart,
                            format!("cannot spawn a thread: {e}"),
                        )
                    })?;
                waited.await.map_err(|_| {
                    Error::new(ErrorCode::Execution, "alignment wait thread vanished")
                })??;
            }
            let retention = Arc::clone(&lanes.pipeline.sources[lanes.source].retention);
            let kept = retention.is_on().then(|| batch.clone());
            let rows = batch.num_rows() as u64;
            let mut messages = lanes.route(&schema, batch)?;
            let _pushing = lanes.begin_push_async(!messages.is_empty()).await?;
            lanes.check_room(&messages)?;
            lanes.seal(&mut messages, rows)?;
            lanes.deliver_async(messages).await?;
            lanes.durable().await?;
            lanes.publish();
            if let Some(batch) = kept {
                retention.keep_tagged(&batch, lanes.tag());
            }
            lanes.publish_cut();
            Ok(())
        }
        .await;
        *self.lanes.get_mut() = slot;
        result
    }

    /// Advances this handle's watermark to `watermark_ms` (epoch ms) if that
    /// is later than its current one. Once every open handle of the source
    /// has passed a window's end, the window closes and later rows for it
    /// are late. This is how a source without a `WATERMARK` clause, or one
    /// that went quiet, moves time forward; `i64::MAX` closes everything.
    pub fn watermark(&self, watermark_ms: i64) -> Result<()> {
        if let Some(pipeline) = self.replaying() {
            pipeline.replayed.wait_blocking()?;
        }
        let mut lanes = self
            .lanes
            .try_borrow_mut()
            .map_err(|_| Error::new(ErrorCode::Execution, "SourceHandle::watermark re-entered"))?;
        let lanes = self.connect(&mut lanes)?;
        if watermark_ms <= lanes.watermark_ms {
            return Ok(());
        }
        lanes.watermark_ms = watermark_ms;
        let mut messages = lanes.watermark_messages(watermark_ms, Instant::now());
        let _pushing = lanes.begin_push_blocking(true)?;
        lanes.check_room(&messages)?;
        lanes.seal(&mut messages, 0)?;
        lanes.deliver_blocking(messages)?;
        futures::executor::block_on(lanes.durable())?;
        lanes.publish();
        lanes.publish_cut();
        Ok(())
    }

    /// [`SourceHandle::watermark`], waiting asynchronously while a shard's
    /// ring is full: for async code, and the only form a task on a shard
    /// may use (blocking there would stop the shard that has to make room).
    pub async fn watermark_async(&mut self, watermark_ms: i64) -> Result<()> {
        if let Some(pipeline) = self.replaying() {
            pipeline.replayed.wait().await?;
        }
        let mut slot = std::mem::take(self.lanes.get_mut());
        let lanes = self.connect(&mut slot)?;
        let result = async {
            if watermark_ms <= lanes.watermark_ms {
                return Ok(());
            }
            lanes.watermark_ms = watermark_ms;
            let mut messages = lanes.watermark_messages(watermark_ms, Instant::now());
            let _pushing = lanes.begin_push_async(true).await?;
            lanes.check_room(&messages)?;
            lanes.seal(&mut messages, 0)?;
            lanes.deliver_async(messages).await?;
            lanes.durable().await?;
            lanes.publish();
            lanes.publish_cut();
            Ok(())
        }
        .await;
        *self.lanes.get_mut() = slot;
        result
    }

    /// Connects the handle to the running pipeline now rather than at its
    /// first push: from here on each shard counts it among its source's
    /// partitions, and holds the source's watermark back until it pushes.
    /// A generator's handle also always waits for room in a full ring,
    /// whatever the database's backpressure policy: a producer that runs
    /// on a shard would otherwise fail at once (`LDB-2002`), and waiting
    /// costs nobody a thread.
    pub(crate) fn connect_for_generator(&mut self) -> Result<()> {
        let mut slot = std::mem::take(self.lanes.get_mut());
        let connected = self
            .connect(&mut slot)
            .map(|lanes| lanes.always_wait = true);
        *self.lanes.get_mut() = slot;
        connected
    }

    /// The pipeline, while recovery is still replaying its WAL: new input
    /// waits for it, so it never interleaves with the replayed input.
    fn replaying(&self) -> Option<Arc<Pipeline>> {
        self.shared
            .pipeline
            .get()
            .filter(|p| !p.replayed.is_open())
            .cloned()
    }

    /// Connects to the running pipeline on first use.
    fn connect<'a>(&self, slot: &'a mut Option<Lanes>) -> Result<&'a mut Lanes> {
        if let Some(lanes) = slot {
            lanes.pipeline.check_running()?;
            return Ok(slot.as_mut().expect("checked"));
        }
        let pipeline = self.shared.pipeline.get().cloned().ok_or_else(|| {
            Error::new(
                ErrorCode::NotRunning,
                format!(
                    "cannot push to source '{}' before the pipeline starts",
                    self.name
                ),
            )
            .with_hint("call db.start().await first")
        })?;
        pipeline.check_running()?;
        let source = pipeline.source_id(&self.name).ok_or_else(|| {
            Error::new(
                ErrorCode::UnknownObject,
                format!("unknown source '{}'", self.name),
            )
        })?;
        let handle = pipeline
            .next_handle
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut producers = Vec::with_capacity(pipeline.shards);
        let mut acks = Vec::with_capacity(pipeline.shards);
        let durable = pipeline.durability != Durability::Memory;
        for control in &pipeline.controls {
            let (producer, consumer) = ring(pipeline.ring_capacity);
            let ack = Arc::new(LaneAck::default());
            control.send(Control::AddLane {
                input: source,
                ring: consumer,
                ack: durable.then(|| Arc::clone(&ack)),
                replay: false,
                log_key: durable.then_some((pipeline.generation, handle)),
            })?;
            producers.push(producer);
            acks.push(ack);
        }
        let routes = pipeline.sources[source].routes.len();
        let member = pipeline.sources[source]
            .alignment
            .as_ref()
            .map(|group| group.join(source));
        let mut epoch = 0;
        let cut = durable.then(|| {
            let cut = Arc::new(crate::checkpoint::HandleCut::new(
                crate::storage::lane_key(pipeline.generation, handle),
                source,
                pipeline.shards,
            ));
            if let Ok(mut cuts) = pipeline.handle_cuts.lock() {
                cuts.push(Arc::clone(&cut));
            }
            // Read after registering: a checkpoint that did not find this
            // handle was requested before, so the handle starts past its
            // cut, with nothing before it.
            epoch = pipeline
                .requested_epoch
                .load(std::sync::atomic::Ordering::SeqCst);
            cut.enter(epoch, 0, 0, &vec![0; pipeline.shards]);
            cut
        });
        // The handle entered the requested checkpoint at zero pushes: its
        // marker goes first on every lane, so that no shard runs a push of
        // this handle before that checkpoint's cut (the shard would have it
        // in its state, the manifest would not count it, and a restart
        // would take it again). A marker of a checkpoint already taken is
        // skipped by the shards. The rings are new: there is room.
        if epoch > 0 {
            for producer in &mut producers {
                if producer.try_push(Ingress::Barrier { epoch }).is_err() {
                    return Err(Error::new(
                        ErrorCode::NotRunning,
                        format!("source '{}': the pipeline stopped", self.name),
                    ));
                }
            }
        }
        let keys = pipeline.sources[source].time.as_ref().and_then(|time| {
            time.key
                .map(|spec| crate::key_watermark::KeyWatermarks::new(spec, time.bound_ms))
        });
        Ok(slot.insert(Lanes {
            pipeline,
            source,
            producers,
            partitioners: (0..routes).map(|_| None).collect(),
            next_shard: 0,
            watermark_ms: i64::MIN,
            member,
            keys,
            times_ms: Vec::new(),
            handle,
            pushes: 0,
            sent: vec![0; acks.len()],
            acks,
            rows_pushed: 0,
            cut,
            epoch,
            always_wait: false,
        }))
    }
}

fn schema_mismatch(expected: &Schema, got: &Schema, detail: String) -> Error {
    Error::new(
        ErrorCode::SchemaMismatch,
        format!("{detail}; the source expects ({})", describe(expected)),
    )
    .with_hint(format!("the pushed batch has ({})", describe(got)))
}

fn describe(schema: &Schema) -> String {
    schema
        .fields()
        .iter()
        .map(|f| format!("{} {}", f.name(), f.data_type()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Whether a pushed column of type `have` is converted to the source's
/// `want` instead of rejected: other timestamp units, other string
/// encodings, and dictionary encodings of either or of `want` itself,
/// all of which carry the same values. (Columns are decoded at the push,
/// once: past it every operator and compiled kernel reads one layout.)
fn converts(have: &DataType, want: &DataType) -> bool {
    if let DataType::Dictionary(_, values) = have {
        return values.as_ref() == want || converts(values, want);
    }
    matches!(
        (have, want),
        (DataType::Timestamp(_, a), DataType::Timestamp(_, b)) if a == b
    ) || matches!(
        (have, want),
        (DataType::Utf8View | DataType::LargeUtf8, DataType::Utf8)
    )
}

/// Checks a pushed batch against the source's schema and re-labels it with
/// that schema.
fn conform(schema: &SchemaRef, batch: RecordBatch) -> Result<RecordBatch> {
    let got = batch.schema();
    if got.fields().len() != schema.fields().len() {
        return Err(schema_mismatch(
            schema,
            &got,
            format!(
                "expected {} columns, got {}",
                schema.fields().len(),
                got.fields().len()
            ),
        ));
    }
    let mut columns = batch.columns().to_vec();
    for (i, (want, have)) in schema.fields().iter().zip(got.fields()).enumerate() {
        let same_type = want.data_type() == have.data_type();
        if want.name().eq_ignore_ascii_case(have.name())
            && !same_type
            && converts(have.data_type(), want.data_type())
        {
            columns[i] = arrow::compute::cast(&columns[i], want.data_type())?;
            continue;
        }
        if !want.name().eq_ignore_ascii_case(have.name()) || !same_type {
            return Err(schema_mismatch(
                schema,
                &got,
                format!(
                    "column '{}' {} does not match '{}' {}",
                    have.name(),
                    have.data_type(),
                    want.name(),
                    want.data_type()
                ),
            ));
        }
    }
    RecordBatch::try_new(Arc::clone(schema), columns).map_err(|e| {
        Error::new(
            ErrorCode::SchemaMismatch,
            format!("batch does not fit the source's schema: {e}"),
        )
    })
}

impl Lanes {
    /// The handle's alignment group and membership, if its source has one.
    fn alignment(&self) -> Option<(Arc<AlignmentGroup>, Arc<Member>)> {
        let group = self.pipeline.sources[self.source].alignment.as_ref()?;
        Some((Arc::clone(group), Arc::clone(self.member.as_ref()?)))
    }

    /// The watermark a batch would move this handle to, when the source is
    /// in an alignment group and the batch moves it at all.
    fn needs_alignment(&mut self, batch: &RecordBatch) -> Result<Option<i64>> {
        let source = &self.pipeline.sources[self.source];
        let (Some(_), Some(time)) = (&source.alignment, &source.time) else {
            return Ok(None);
        };
        // A handle's first batch establishes where it is; holding it back
        // would leave two sources that start together waiting on each
        // other.
        if batch.num_rows() == 0 || self.watermark_ms == i64::MIN {
            return Ok(None);
        }
        time.unit
            .array_to_ms(batch.column(time.column).as_ref(), &mut self.times_ms)
            .map_err(|e| {
                Error::new(
                    ErrorCode::InvalidEventTime,
                    format!("source '{}': {}", source.name, e.message()),
                )
            })?;
        let latest = self.times_ms.iter().copied().max().unwrap_or(i64::MIN);
        let candidate = latest.saturating_sub(time.bound_ms);
        Ok((candidate > self.watermark_ms).then_some(candidate))
    }

    /// Tells the alignment group where this handle is now.
    fn publish(&self) {
        if let (Some(group), Some(member)) = (
            self.pipeline.sources[self.source].alignment.as_ref(),
            self.member.as_ref(),
        ) {
            group.publish(member, self.watermark_ms);
        }
    }

    /// Turns one pushed batch into the messages for the shards.
    /// `batch` is already conformed to the source's schema.
    fn route(&mut self, schema: &SchemaRef, batch: RecordBatch) -> Result<Vec<(usize, Ingress)>> {
        if batch.num_rows() == 0 {
            return Ok(Vec::new());
        }
        let pushed_at = Instant::now();
        let source = &self.pipeline.sources[self.source];
        let mut row_watermarks: Option<ArrayRef> = None;
        let mut advanced_to = None;
        if let Some(time) = &source.time {
            time.unit
                .array_to_ms(batch.column(time.column).as_ref(), &mut self.times_ms)
                .map_err(|e| {
                    Error::new(
                        ErrorCode::InvalidEventTime,
                        format!("source '{}': {}", source.name, e.message()),
                    )
                })?;
            let before = self.watermark_ms;
            if let (Some(keys), Some(spec)) = (self.keys.as_mut(), time.key) {
                let advanced = keys.advance(batch.column(spec.column), &self.times_ms, before)?;
                row_watermarks = advanced.row_watermarks.map(|a| Arc::new(a) as ArrayRef);
                if advanced.watermark_ms > before {
                    self.watermark_ms = advanced.watermark_ms;
                    advanced_to = Some(advanced.watermark_ms);
                }
            } else {
                let (rows, advanced) = partition_watermarks(&self.times_ms, before, time.bound_ms);
                row_watermarks = rows;
                if let Some(watermark_ms) = advanced {
                    self.watermark_ms = watermark_ms;
                    advanced_to = Some(watermark_ms);
                }
            }
        }

        let shards = self.pipeline.shards;
        let mut messages = Vec::new();
        for (route, routing) in source.routes.iter().enumerate() {
            let pieces: Vec<(usize, RecordBatch, Option<Int64Array>)> = match routing {
                Routing::Any => {
                    let shard = self.next_shard % shards;
                    self.next_shard = self.next_shard.wrapping_add(1);
                    vec![(shard, batch.clone(), row_watermarks.as_ref().map(as_int64))]
                }
                Routing::Single => {
                    vec![(0, batch.clone(), row_watermarks.as_ref().map(as_int64))]
                }
                Routing::Keys(columns) => {
                    let partitioner = self.partitioners[route]
                        .get_or_insert_with(|| HashPartitioner::new(columns.clone(), shards));
                    match &row_watermarks {
                        None => partitioner
                            .partition(&batch)?
                            .into_iter()
                            .map(|(shard, piece)| (shard, piece, None))
                            .collect(),
                        Some(per_row) => {
                            // Carry the per-row watermarks through the split
                            // as an extra column, then take them off again.
                            let widened =
                                crate::storage::with_row_watermarks(&batch, Arc::clone(per_row))?;
                            let last = widened.num_columns() - 1;
                            let keep: Vec<usize> = (0..last).collect();
                            partitioner
                                .partition(&widened)?
                                .into_iter()
                                .map(|(shard, piece)| {
                                    let marks = as_int64(piece.column(last));
                                    let piece =
                                        piece.project(&keep)?.with_schema(Arc::clone(schema))?;
                                    Ok((shard, piece, Some(marks)))
                                })
                                .collect::<Result<Vec<_>>>()?
                        }
                    }
                }
            };
            for (shard, piece, marks) in pieces {
                messages.push((
                    shard,
                    Ingress::Batch {
                        input: self.source,
                        route,
                        batch: piece,
                        row_watermarks: marks,
                        pushed_at,
                        record: None,
                    },
                ));
            }
        }
        if source.routes.is_empty() && self.pipeline.durability != Durability::Memory {
            // No stream reads the source, but its retained rows are part
            // of what was accepted: log them (on shard 0, which only
            // writes them down).
            messages.push((
                0,
                Ingress::Batch {
                    input: self.source,
                    route: LOG_ONLY_ROUTE,
                    batch,
                    row_watermarks: None,
                    pushed_at,
                    record: None,
                },
            ));
        }
        if let Some(watermark_ms) = advanced_to {
            messages.extend(self.watermark_messages(watermark_ms, pushed_at));
        }
        Ok(messages)
    }

    fn watermark_messages(&self, watermark_ms: i64, pushed_at: Instant) -> Vec<(usize, Ingress)> {
        (0..self.pipeline.shards)
            .map(|shard| {
                (
                    shard,
                    Ingress::Watermark {
                        input: self.source,
                        watermark_ms,
                        pushed_at,
                        record: None,
                    },
                )
            })
            .collect()
    }

    /// Durable databases: numbers a push's messages and encodes each one's
    /// WAL record, here on the pushing thread. Recovery replays a push only
    /// if all of its records reached the WALs. A record too large for a
    /// WAL segment fails the push before anything is sent.
    fn seal(&mut self, messages: &mut [(usize, Ingress)], rows: u64) -> Result<()> {
        if self.pipeline.durability == Durability::Memory || messages.is_empty() {
            return Ok(());
        }
        let tag = PushTag {
            generation: self.pipeline.generation,
            handle: self.handle,
            seq: self.pushes + 1,
            parts: messages.len() as u32,
            rows,
        };
        let mut records = Vec::with_capacity(messages.len());
        for (_, message) in messages.iter() {
            let record = crate::storage::encode(message, &tag)?;
            if let Some((_, payload)) = &record {
                if payload.len() > self.pipeline.wal_max_payload_bytes {
                    return Err(Error::new(
                        ErrorCode::RecordTooLarge,
                        format!(
                            "source '{}': a piece of this batch takes {} bytes in the WAL, more than a segment holds ({})",
                            self.pipeline.sources[self.source].name,
                            payload.len(),
                            self.pipeline.wal_max_payload_bytes
                        ),
                    )
                    .with_hint("push smaller batches, or raise wal_segment_bytes"));
                }
            }
            records.push(record);
        }
        self.rows_pushed += rows;
        for ((_, message), record) in messages.iter_mut().zip(records) {
            if let Ingress::Batch { record: r, .. } | Ingress::Watermark { record: r, .. } = message
            {
                *r = record;
            }
        }
        self.pushes += 1;
        Ok(())
    }

    /// Starts a push that sends messages (`sends`): stamps it with the
    /// requested checkpoint epoch and, the first time that epoch is seen,
    /// puts its marker on every lane ahead of the push (waiting for room).
    fn begin_push_blocking(&mut self, sends: bool) -> Result<Option<Pushing>> {
        futures::executor::block_on(self.begin_push_async(sends))
    }

    async fn begin_push_async(&mut self, sends: bool) -> Result<Option<Pushing>> {
        let Some((pushing, epoch)) = self.stamp(sends) else {
            return Ok(None);
        };
        if epoch > self.epoch {
            for producer in &mut self.producers {
                if producer.push(Ingress::Barrier { epoch }).await.is_err() {
                    return Err(self.stopped());
                }
            }
            self.entered(epoch);
        }
        Ok(Some(pushing))
    }

    fn stamp(&self, sends: bool) -> Option<(Pushing, u64)> {
        let cut = self.cut.as_ref().filter(|_| sends)?;
        let epoch = cut.begin(&self.pipeline.requested_epoch);
        Some((Pushing(Arc::clone(cut)), epoch))
    }

    fn entered(&mut self, epoch: u64) {
        if let Some(cut) = &self.cut {
            cut.enter(epoch, self.pushes, self.rows_pushed, &self.sent);
        }
        self.epoch = epoch;
    }

    /// The (lane key, push number) of the push just made (durable
    /// databases).
    fn tag(&self) -> Option<(u64, u64)> {
        self.cut.as_ref().map(|cut| (cut.key, self.pushes))
    }

    /// Publishes, for checkpoints, what this handle has delivered after a
    /// whole push.
    fn publish_cut(&self) {
        if let Some(cut) = &self.cut {
            cut.publish(self.pushes, self.rows_pushed, &self.sent);
        }
    }

    /// In `Durability::Sync`, waits until every shard has made all of this
    /// handle's messages durable.
    async fn durable(&self) -> Result<()> {
        if self.pipeline.durability != Durability::Sync {
            return Ok(());
        }
        std::future::poll_fn(|cx| {
            if let Some(failure) = self.pipeline.failure.get() {
                return std::task::Poll::Ready(Err(failure.clone()));
            }
            let mut done = true;
            for ((ack, &sent), producer) in self.acks.iter().zip(&self.sent).zip(&self.producers) {
                if ack.durable.load(std::sync::atomic::Ordering::Acquire) < sent {
                    ack.waker.register(cx.waker());
                    // Checked again after registering: a wake in between
                    // would be lost otherwise.
                    if ack.durable.load(std::sync::atomic::Ordering::Acquire) >= sent {
                        continue;
                    }
                    if producer.is_consumer_closed() {
                        // The shard is gone and never logged the rest.
                        return std::task::Poll::Ready(Err(self.stopped()));
                    }
                    done = false;
                }
            }
            if self.pipeline.failure.get().is_some() {
                return std::task::Poll::Ready(Err(self
                    .pipeline
                    .failure
                    .get()
                    .cloned()
                    .expect("set")));
            }
            if done {
                std::task::Poll::Ready(Ok(()))
            } else {
                std::task::Poll::Pending
            }
        })
        .await
    }

    fn stopped(&self) -> Error {
        Error::new(
            ErrorCode::NotRunning,
            format!(
                "source '{}': the pipeline stopped before the batch was accepted",
                self.pipeline.sources[self.source].name
            ),
        )
    }

    /// With `Backpressure::Error`, checks up front that every message fits,
    /// so a batch is accepted whole or not at all.
    fn check_room(&self, messages: &[(usize, Ingress)]) -> Result<()> {
        if self.always_wait || self.pipeline.backpressure != Backpressure::Error {
            return Ok(());
        }
        let mut needed = vec![0usize; self.producers.len()];
        for (shard, _) in messages {
            needed[*shard] += 1;
        }
        for (shard, &n) in needed.iter().enumerate() {
            if n > self.producers[shard].free_slots() {
                return Err(Error::new(
                    ErrorCode::Backpressure,
                    format!(
                        "source '{}': shard {shard}'s ingest ring is full",
                        self.pipeline.sources[self.source].name
                    ),
                )
                .with_hint("retry later, push larger batches, or use Backpressure::Block"));
            }
        }
        Ok(())
    }

    fn deliver_blocking(&mut self, messages: Vec<(usize, Ingress)>) -> Result<()> {
        let rows_end = Self::rows_end(&messages);
        for (i, (shard, message)) in messages.into_iter().enumerate() {
            self.sent[shard] += 1;
            let producer = &mut self.producers[shard];
            let refused = match producer.try_push(message) {
                Ok(()) => continue,
                Err(PushError::Closed(message)) => message,
                Err(PushError::Full(message)) => {
                    match futures::executor::block_on(producer.push(message)) {
                        Ok(()) => continue,
                        Err(message) => message,
                    }
                }
            };
            self.refused(shard, i >= rows_end, &refused)?;
        }
        Ok(())
    }

    async fn deliver_async(&mut self, messages: Vec<(usize, Ingress)>) -> Result<()> {
        let rows_end = Self::rows_end(&messages);
        for (i, (shard, message)) in messages.into_iter().enumerate() {
            self.sent[shard] += 1;
            if let Err(refused) = self.producers[shard].push(message).await {
                self.refused(shard, i >= rows_end, &refused)?;
            }
        }
        Ok(())
    }

    /// The index after a push's last batch message.
    fn rows_end(messages: &[(usize, Ingress)]) -> usize {
        messages
            .iter()
            .rposition(|(_, m)| matches!(m, Ingress::Batch { .. }))
            .map_or(0, |i| i + 1)
    }

    /// A stopping shard refused `message`. In a memory-only database a
    /// watermark refused after all of the push's rows were taken loses
    /// nothing (the shard that refused it takes no more input), so the
    /// push still counts as accepted. Anything else fails the push:
    /// durable recovery replays a push only if all of its records were
    /// logged.
    fn refused(&mut self, shard: usize, rows_taken: bool, message: &Ingress) -> Result<()> {
        if rows_taken
            && self.pipeline.durability == Durability::Memory
            && matches!(message, Ingress::Watermark { .. })
        {
            self.sent[shard] -= 1;
            return Ok(());
        }
        Err(self.stopped())
    }
}

/// One partition's watermark over a batch: the largest event time so far
/// minus the bound, in force from the row after the one that raised it.
/// Returns each row's watermark in force (only when some row was behind
/// it) and the new watermark, if the batch moved it.
fn partition_watermarks(
    times_ms: &[i64],
    before: i64,
    bound: i64,
) -> (Option<ArrayRef>, Option<i64>) {
    let mut max_seen = i64::MIN;
    let mut behind = false;
    for &t in times_ms {
        behind |= t < before.max(max_seen.saturating_sub(bound));
        max_seen = max_seen.max(t);
    }
    let row_watermarks = behind.then(|| {
        let mut running = i64::MIN;
        let per_row: Int64Array = times_ms
            .iter()
            .map(|&t| {
                let w = before.max(running.saturating_sub(bound));
                running = running.max(t);
                w
            })
            .collect();
        Arc::new(per_row) as ArrayRef
    });
    let candidate = max_seen.saturating_sub(bound);
    (row_watermarks, (candidate > before).then_some(candidate))
}

fn as_int64(array: &ArrayRef) -> Int64Array {
    array
        .as_any()
        .downcast_ref::<Int64Array>()
        .expect("row watermarks are Int64")
        .clone()
}
