//! # laminar-operators
//!
//! Streaming operators that run on a shard over Arrow batches. A shard owns
//! one instance of each operator per stream; nothing here is shared between
//! threads or locked.
//!
//! - [`time`]: event time (BIGINT epoch ms or TIMESTAMP) and tumbling /
//!   sliding window assignment, shared with the SQL window functions so
//!   that the streaming and batch answers agree by construction.
//! - [`stage`]: stateless filter/projection stages (DataFusion physical
//!   expressions: the interpreted path).
//! - [`groups`]: group tables (key -> dense id) with fast paths for single
//!   string and integer keys.
//! - [`aggregate`]: the spec shared by the aggregate operators, lateness,
//!   window assignment.
//! - [`window_aggregate`]: keyed window aggregation with
//!   `EMIT ON WINDOW CLOSE`, DataFusion group accumulators as state.
//! - [`fused`]: the window and session aggregates' compiled form
//!   (filter, arguments and accumulator updates in one loop) and its
//!   plain-vector state; [`fused_lookup`]: the group table as such a
//!   loop probes it itself.
//! - [`session_aggregate`]: keyed session windows (gap-based, merging),
//!   emitted when each session closes, keeping folded accumulators or
//!   the open sessions' rows.
//! - [`analytic`]: `ROW_NUMBER`/`RANK`/`DENSE_RANK`/`LAG`/`LEAD` over
//!   event time, emitted when the watermark makes each row final, and
//!   [`running`] aggregates (`SUM(x) OVER (...)`) computed there.
//! - [`top_n`]: streaming Top-N and deduplication
//!   (`ROW_NUMBER() OVER (...) <= N`) as a changelog.
//! - [`instant_aggregate`]: aggregation grouped by an event-time column
//!   without a window, each group emitted once the watermark passes its
//!   time.
//! - [`changelog_aggregate`]: `EMIT CHANGES` aggregation (windowed or
//!   not) producing a Z-set changelog with a `_weight` column.
//! - [`join`] and [`interval_join`]: stream-stream interval joins (inner
//!   and outer) over event-time buckets, state bounded by the watermarks.
//! - [`asof_join`]: ASOF and temporal joins (backward, forward, nearest),
//!   answered once the right watermark makes each answer final.
//! - [`lookup_join`]: stream rows enriched from a per-shard replica of a
//!   primary-keyed table, kept current by the table's upserts.
//! - [`Operator`]: the small trait the shard drives.

pub mod aggregate;
pub mod analytic;
pub mod asof_join;
pub mod changelog_aggregate;
pub mod fused;
pub mod fused_lookup;
pub mod groups;
pub mod instant_aggregate;
pub mod interval_join;
pub mod join;
pub mod lookup_join;
pub mod running;
pub mod session_aggregate;
mod snapshot;
pub mod stage;
pub mod time;
mod time_buckets;
pub mod top_n;
pub mod window_aggregate;

use arrow::array::RecordBatch;
use laminar_runtime::Result;

pub use aggregate::{AggregatePhase, AggregateSpec, WindowBinding, WindowKind};
pub use analytic::{Analytic, AnalyticFunction, AnalyticSpec};
pub use asof_join::{AsofDirection, AsofJoin, AsofJoinSpec};
pub use changelog_aggregate::{ChangelogAggregate, WEIGHT_COLUMN};
pub use instant_aggregate::InstantAggregate;
pub use interval_join::{IntervalJoin, IntervalJoinSpec, RowBound};
pub use join::{JoinMode, JoinSide};
pub use lookup_join::{LookupJoin, LookupJoinSpec};
pub use running::{RunningFrame, RunningKind};
pub use session_aggregate::SessionAggregate;
pub use stage::{Stage, Stateless};
pub use time::{EventTimeUnit, WindowSpec};
pub use top_n::{TopN, TopNSpec};
pub use window_aggregate::WindowAggregate;

/// What a shard knows about time when it hands an operator a batch.
#[derive(Debug, Clone, Copy)]
pub struct BatchTime<'a> {
    /// The shard's watermark for the batch's source, in epoch ms
    /// (`i64::MIN` before the first one).
    pub watermark_ms: i64,
    /// Per-row watermark in force when each row arrived, when the batch was
    /// out of order enough that it differs between rows (see the router in
    /// `laminar-db`). `None` means `watermark_ms` holds for every row.
    pub row_watermarks_ms: Option<&'a [i64]>,
}

/// A streaming operator on one shard.
///
/// Both calls append finished output batches to `out`; an operator never
/// emits anything on its own.
pub trait Operator: Send {
    /// Processes one input batch of the operator's source.
    fn on_batch(
        &mut self,
        batch: &RecordBatch,
        time: BatchTime<'_>,
        out: &mut Vec<RecordBatch>,
    ) -> Result<()>;

    /// The source's watermark advanced to `watermark_ms`.
    fn on_watermark(&mut self, watermark_ms: i64, out: &mut Vec<RecordBatch>) -> Result<()>;

    /// Rows dropped so far because their window had already closed.
    fn late_rows(&self) -> u64;

    /// Approximate bytes of state the operator holds (for `EXPLAIN
    /// ANALYZE` and metrics). Cheap: called after every batch.
    fn state_bytes(&self) -> usize {
        0
    }

    /// Moves the late rows kept since the last call (for a late side
    /// output) into `out`, as they were pushed. Operators that keep none
    /// leave `out` alone.
    fn drain_late(&mut self, _out: &mut Vec<RecordBatch>) {}

    /// Processes one batch of input `port`. Operators with one input have
    /// only port 0; a join's left side is port 0 and its right side 1.
    fn on_input_batch(
        &mut self,
        port: usize,
        batch: &RecordBatch,
        time: BatchTime<'_>,
        out: &mut Vec<RecordBatch>,
    ) -> Result<()> {
        debug_assert_eq!(port, 0, "a single-input operator has only port 0");
        self.on_batch(batch, time, out)
    }

    /// The watermark of input `port` advanced to `watermark_ms`.
    fn on_input_watermark(
        &mut self,
        port: usize,
        watermark_ms: i64,
        out: &mut Vec<RecordBatch>,
    ) -> Result<()> {
        debug_assert_eq!(port, 0, "a single-input operator has only port 0");
        self.on_watermark(watermark_ms, out)
    }

    /// Rows written to the table a lookup join reads (in the table's
    /// schema; upserts by primary key, or, with `replace`, the table's
    /// whole new content).
    fn on_table_rows(&mut self, _rows: &RecordBatch, _replace: bool) -> Result<()> {
        Err(laminar_runtime::Error::new(
            laminar_runtime::ErrorCode::Execution,
            "internal: table rows sent to an operator that reads no table",
        ))
    }

    /// Whether [`Operator::snapshot`] and [`Operator::restore`] work for
    /// this operator (checkpoints refuse pipelines with one that does not).
    fn checkpoints(&self) -> bool {
        false
    }

    /// The operator's state for a checkpoint, as Arrow batches laid out as
    /// the operator defines (only [`Operator::restore`] of the same
    /// operator reads them). The operator carries on as before afterwards.
    fn snapshot(&mut self) -> Result<Vec<RecordBatch>> {
        Err(not_checkpointable())
    }

    /// Replaces the state of a newly built operator with what
    /// [`Operator::snapshot`] returned.
    fn restore(&mut self, _state: &[RecordBatch]) -> Result<()> {
        Err(not_checkpointable())
    }

    /// The watermark of the operator's output after its input's advanced
    /// to `input_watermark_ms`: no row it emits later has an event time
    /// below it, so downstream operators may close windows up to it. Most
    /// operators pass their input's on; `i64::MAX` (end of input) always
    /// passes through.
    fn output_watermark(&self, input_watermark_ms: i64) -> i64 {
        input_watermark_ms
    }
}

fn not_checkpointable() -> laminar_runtime::Error {
    laminar_runtime::Error::new(
        laminar_runtime::ErrorCode::Unsupported,
        "this operator's state cannot be checkpointed yet",
    )
}

/// A schema for snapshot columns: `names` and the arrays' own types, all
/// nullable (state arrays may hold NULLs whatever the output says).
pub(crate) fn snapshot_batch(
    names: impl IntoIterator<Item = String>,
    columns: Vec<arrow::array::ArrayRef>,
) -> Result<RecordBatch> {
    let fields: Vec<arrow::datatypes::Field> = names
        .into_iter()
        .zip(&columns)
        .map(|(name, c)| arrow::datatypes::Field::new(name, c.data_type().clone(), true))
        .collect();
    let schema = std::sync::Arc::new(arrow::datatypes::Schema::new(fields));
    Ok(RecordBatch::try_new_with_options(
        schema,
        columns,
        &arrow::array::RecordBatchOptions::new().with_row_count(None),
    )?)
}

/// Asks the CPU to fetch the cache line holding `value`, for a lookup a
/// few rows ahead: a prefetch reads nothing architecturally and cannot
/// fault, and is nothing off x86-64.
#[inline]
pub(crate) fn prefetch<T>(value: &T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: the pointer comes from a reference; a prefetch has no
    // effect a program can observe beyond timing.
    unsafe {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        _mm_prefetch::<_MM_HINT_T0>(std::ptr::from_ref(value).cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = value;
}
