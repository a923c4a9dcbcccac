//! # LaminarDB
//!
//! An embedded streaming SQL database: declare sources and continuous
//! queries in SQL, push Arrow batches, subscribe to results that update as
//! data arrives. Each shard is a Glommio executor pinned to a core that owns
//! its slice of all keyed state; rows reach it through lock-free rings.
//!
//! ```
//! use std::sync::Arc;
//! use laminar_db::arrow::array::{Float64Array, Int64Array, RecordBatch, StringArray};
//! use laminar_db::LaminarDB;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let rt = tokio::runtime::Builder::new_current_thread().build()?;
//! # rt.block_on(async {
//! let db = LaminarDB::builder().shards(1).build()?;
//! db.execute("CREATE SOURCE trades (symbol VARCHAR NOT NULL, price DOUBLE NOT NULL,
//!             ts BIGINT NOT NULL, WATERMARK FOR ts AS ts - INTERVAL '1' SECOND)").await?;
//! db.execute("CREATE STREAM avg_price AS
//!             SELECT symbol, AVG(price) AS avg_price FROM trades
//!             GROUP BY symbol, tumble(ts, INTERVAL '1' MINUTE)
//!             EMIT ON WINDOW CLOSE").await?;
//! let mut results = db.subscribe("avg_price")?;
//! let trades = db.source_untyped("trades")?;
//! db.start().await?;
//!
//! let batch = RecordBatch::try_new(trades.schema(), vec![
//!     Arc::new(StringArray::from(vec!["AAPL", "AAPL"])),
//!     Arc::new(Float64Array::from(vec![10.0, 20.0])),
//!     Arc::new(Int64Array::from(vec![1_000, 2_000])),
//! ])?;
//! trades.push(batch)?;
//! trades.watermark(60_000)?; // close the first minute
//!
//! let out = results.recv().expect("one window");
//! assert_eq!(out.num_rows(), 1);
//! db.shutdown().await?;
//! # Ok::<_, Box<dyn std::error::Error>>(())
//! # })?;
//! # Ok(())
//! # }
//! ```
//!
//! Modules: [`source`] (pushing rows, the router), [`generator`] (input
//! made inside the shards), [`subscription`]
//! (reading results), [`metrics`]; the pipeline's shard loop is in
//! `pipeline.rs`.

mod alignment;
mod checkpoint;
mod describe;
pub mod generator;
mod graph;
mod key_watermark;
mod lookup;
mod pipeline;
mod retention;
mod shard_checkpoint;
mod shard_wal;
mod sql_context;
mod storage;
mod table_log;
mod tables;
mod views;

pub mod metrics;
pub mod source;
pub mod subscription;

/// Allocation counts per shard (feature `allocation-tracking`).
///
/// With the feature on, this crate installs a counting global allocator
/// that counts what each shard thread allocates; other threads (yours,
/// subscribers, the control plane) are not counted. Counts are per shard
/// index and process-wide: two databases in one process add into the same
/// shard 0. Read them before and after some work and subtract:
///
/// ```
/// use std::sync::Arc;
/// use laminar_db::arrow::array::{Int64Array, RecordBatch};
/// use laminar_db::allocations::shard_allocations;
/// use laminar_db::LaminarDB;
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let rt = tokio::runtime::Builder::new_current_thread().build()?;
/// # rt.block_on(async {
/// let db = LaminarDB::builder().shards(1).build()?;
/// db.execute("CREATE SOURCE t (x BIGINT NOT NULL)").await?;
/// db.execute("CREATE STREAM big AS SELECT x * 2 AS y FROM t WHERE x > 1").await?;
/// let mut results = db.subscribe("big")?;
/// let source = db.source_untyped("t")?;
/// db.start().await?;
/// let batch = RecordBatch::try_new(source.schema(), vec![
///     Arc::new(Int64Array::from_iter_values(0..1_000)),
/// ])?;
/// let before = shard_allocations(1)[0];
/// source.push(batch)?;
/// let out = results.recv().expect("the filtered rows");
/// let after = shard_allocations(1)[0];
/// assert_eq!(out.num_rows(), 998);
/// // Filtering and projecting 1,000 rows took a few allocations on the
/// // shard, none per row.
/// let used = after.allocations - before.allocations;
/// assert!(used > 0 && used < 100, "{used}");
/// db.shutdown().await?;
/// # Ok::<_, Box<dyn std::error::Error>>(())
/// # })?;
/// # Ok(())
/// # }
/// ```
///
/// The feature exists so that programs with a global allocator of their
/// own can leave it off; it costs a thread-local read per allocation.
/// [`shard_allocations_total`] works with or without it.
#[cfg(feature = "allocation-tracking")]
pub mod allocations {
    /// Allocations every shard thread of the process made so far.
    pub fn total() -> u64 {
        shard_allocations(MAX_TRACKED_SHARDS)
            .iter()
            .map(|c| c.allocations)
            .sum()
    }

    /// Counts the calling thread's allocations in slot `slot` from now on,
    /// as if it were that shard: a way to measure a thread of yours (a
    /// pushing thread, say) with a slot no shard uses.
    pub use laminar_runtime::alloc_tracking::track_current_thread;
    pub use laminar_runtime::alloc_tracking::{
        shard_allocations, AllocationCount, MAX_TRACKED_SHARDS,
    };

    #[global_allocator]
    static ALLOCATOR: laminar_runtime::alloc_tracking::TrackingAllocator =
        laminar_runtime::alloc_tracking::TrackingAllocator;
}

/// Allocations every shard thread of the process made so far, with the
/// `allocation-tracking` feature; `None` without it. Benchmarks print
/// allocations per event with it when the feature is on.
pub fn shard_allocations_total() -> Option<u64> {
    #[cfg(feature = "allocation-tracking")]
    {
        Some(allocations::total())
    }
    #[cfg(not(feature = "allocation-tracking"))]
    None
}

use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use datafusion::prelude::SessionContext;
use laminar_runtime::executor::{ExecutorConfig, ShardMain, ShardThreads};
use laminar_runtime::placement::{discover_cpus, plan, restrict, ShardPlacement};
use laminar_runtime::spsc::{ring, Consumer, Producer};
use laminar_sql::planner::{register_table, resolve_source};
use laminar_sql::{
    new_session_context, parse_script, plan_stream, DropKind, ShowWhat, SourceDef, StreamPlan,
};

pub use arrow;
pub use checkpoint::CheckpointInfo;
pub use datafusion::common::ScalarValue;
pub use describe::Description;
pub use generator::{Generation, Generator};
pub use laminar_runtime::{Error, ErrorCode, Result};
/// Whether expressions run as Cranelift kernels: process-wide, read when
/// a stream is created (also set by the `LAMINARDB_JIT` environment
/// variable: `off`, `adaptive`, the default, or `eager`).
pub use laminar_sql::jit::{set_mode as set_jit_mode, JitMode};

/// How long [`LaminarDB::start`] waits for the kernels of the streams
/// created before it.
const START_COMPILE_LIMIT: std::time::Duration = std::time::Duration::from_secs(1);
pub use laminar_sql::Statement;
pub use metrics::{
    CheckpointMetrics, LatencyHistogram, LookupTableMetrics, Metrics, SourceMetrics, StreamMetrics,
    WalMetrics,
};
pub use source::SourceHandle;
pub use storage::{Durability, ASYNC_SYNC_INTERVAL};
pub use subscription::Subscription;

use alignment::AlignmentGroup;
use graph::Graph;
use laminar_runtime::router::HashPartitioner;
use laminar_sql::{Routing, StreamInput, StreamOperator};
use metrics::ShardCounters;
use pipeline::{
    control_channel, Control, ExchangeOut, Ingress, Lane, Pipeline, ShardProgram, ShardStream,
    SourceRuntime, SourceTime, StreamRuntime,
};
use subscription::Emitted;
use tables::Table;
use views::View;

/// What `push` does when a shard's ingest ring is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Backpressure {
    /// Wait until there is room (the pusher slows to the engine's pace).
    #[default]
    Block,
    /// Fail with `LDB-2002`; nothing of the batch is accepted.
    Error,
}

/// Builds a [`LaminarDB`].
#[derive(Debug, Clone)]
pub struct LaminarDbBuilder {
    shards: Option<usize>,
    cpus: Option<Vec<usize>>,
    idle_spin: Duration,
    ring_capacity: usize,
    backpressure: Backpressure,
    executor: ExecutorConfig,
    storage_dir: Option<std::path::PathBuf>,
    durability: Option<Durability>,
    wal: laminar_wal::WalConfig,
    checkpoint_interval: Option<Duration>,
}

impl Default for LaminarDbBuilder {
    fn default() -> Self {
        Self {
            shards: None,
            cpus: None,
            idle_spin: Duration::from_micros(100),
            ring_capacity: 64,
            backpressure: Backpressure::Block,
            executor: ExecutorConfig::default(),
            storage_dir: None,
            durability: None,
            wal: laminar_wal::WalConfig::default(),
            checkpoint_interval: None,
        }
    }
}

impl LaminarDbBuilder {
    /// Number of shards (default: one per physical core this process may
    /// use). More shards than CPUs is allowed; shards then share CPUs.
    pub fn shards(mut self, shards: usize) -> Self {
        self.shards = Some(shards);
        self
    }

    /// Runs the shards only on these CPUs (OS indices, as in `taskset`),
    /// instead of every CPU the process may use: for several databases
    /// in one process, each on cores of its own. Without
    /// [`shards`](Self::shards), one shard per physical core in the list.
    /// `build` fails with `LDB-5002` if a listed CPU is not available.
    pub fn cpus(mut self, cpus: impl IntoIterator<Item = usize>) -> Self {
        self.cpus = Some(cpus.into_iter().collect());
        self
    }

    /// Capacity, in batches, of each ring between a source handle and a
    /// shard and between a shard and a subscriber (default 64).
    pub fn ring_capacity(mut self, batches: usize) -> Self {
        self.ring_capacity = batches;
        self
    }

    /// What `push` does when a ring is full (default: wait).
    pub fn backpressure(mut self, policy: Backpressure) -> Self {
        self.backpressure = policy;
        self
    }

    /// How long an idle shard keeps polling its rings before it sleeps
    /// (default 100 µs). Longer means lower wake-up latency after a pause,
    /// and more idle CPU.
    pub fn idle_spin(mut self, spin: Duration) -> Self {
        self.idle_spin = spin;
        self
    }

    /// Keeps the database in `dir`: each shard writes what it is given to
    /// its write-ahead log there (a push is acknowledged once durable), and
    /// [`LaminarDB::start`] replays what an earlier run left (same SQL and
    /// shard count required). The directory is created if missing and
    /// locked while the database lives. Durability defaults to
    /// [`Durability::Sync`] with a storage directory.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use laminar_db::arrow::array::{Int64Array, RecordBatch};
    /// use laminar_db::LaminarDB;
    ///
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let rt = tokio::runtime::Builder::new_current_thread().build()?;
    /// # rt.block_on(async {
    /// let dir = tempfile::tempdir()?;
    /// let sql = "CREATE SOURCE clicks (user_id BIGINT NOT NULL, ts BIGINT NOT NULL,
    ///                WATERMARK FOR ts AS ts - INTERVAL '1' SECOND);
    ///            CREATE STREAM per_user AS SELECT user_id, COUNT(*) AS clicks FROM clicks
    ///                GROUP BY user_id, tumble(ts, INTERVAL '1' MINUTE)";
    /// {
    ///     let db = LaminarDB::builder().shards(1).storage_dir(dir.path()).build()?;
    ///     db.execute(sql).await?;
    ///     let clicks = db.source_untyped("clicks")?;
    ///     db.start().await?;
    ///     clicks.push(RecordBatch::try_new(clicks.schema(), vec![
    ///         Arc::new(Int64Array::from(vec![7, 7])),
    ///         Arc::new(Int64Array::from(vec![1_000, 2_000])),
    ///     ])?)?; // returns once both rows are on disk
    ///     db.shutdown().await?; // the window is still open
    /// }
    /// // Later (or after a crash): same directory, same SQL.
    /// let db = LaminarDB::builder().shards(1).storage_dir(dir.path()).build()?;
    /// db.execute(sql).await?;
    /// let mut results = db.subscribe("per_user")?;
    /// let clicks = db.source_untyped("clicks")?;
    /// db.start().await?;
    /// assert_eq!(db.recovered_rows("clicks")?, 2);
    /// clicks.watermark(i64::MAX)?; // close the window
    /// let counted = results.recv().expect("the window");
    /// assert_eq!(counted.num_rows(), 1); // user 7: 2 clicks, from before the restart
    /// db.shutdown().await?;
    /// # Ok::<_, Box<dyn std::error::Error>>(())
    /// # })?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn storage_dir(mut self, dir: impl Into<std::path::PathBuf>) -> Self {
        self.storage_dir = Some(dir.into());
        self
    }

    /// How much is kept on disk and when `push` returns (see
    /// [`Durability`]). `Async` and `Sync` need a storage directory.
    pub fn durability(mut self, durability: Durability) -> Self {
        self.durability = Some(durability);
        self
    }

    /// Size of each WAL segment file (default 16 MiB; a multiple of 4096,
    /// at least 64 KiB). One pushed batch must fit in a segment.
    pub fn wal_segment_bytes(mut self, bytes: u64) -> Self {
        self.wal.segment_bytes = bytes;
        self
    }

    /// Builds the database. Shard placement is decided here (and logged);
    /// shards start with [`LaminarDB::start`].
    /// Takes a checkpoint every `interval` while the pipeline runs (see
    /// [`LaminarDB::checkpoint`]), so the WAL stays short and a restart
    /// replays only what came after the last one. Needs a storage
    /// directory; starting fails with `LDB-1004` if a stream's operator
    /// cannot be checkpointed yet.
    pub fn checkpoint_interval(mut self, interval: Duration) -> Self {
        self.checkpoint_interval = Some(interval);
        self
    }

    pub fn build(self) -> Result<LaminarDB> {
        if self.checkpoint_interval.is_some() && self.storage_dir.is_none() {
            return Err(Error::new(
                ErrorCode::InvalidConfig,
                "checkpoints need a storage directory",
            )
            .with_hint("add .storage_dir(path) to the builder"));
        }
        if self.checkpoint_interval.is_some_and(|d| d.is_zero()) {
            return Err(Error::new(
                ErrorCode::InvalidConfig,
                "the checkpoint interval must be longer than zero",
            ));
        }
        if self.ring_capacity == 0 || self.ring_capacity > 1 << 20 {
            return Err(Error::new(
                ErrorCode::InvalidConfig,
                format!(
                    "ring capacity must be 1..=1048576 batches, got {}",
                    self.ring_capacity
                ),
            ));
        }
        let storage = match (self.storage_dir, self.durability) {
            (None, None | Some(Durability::Memory)) => None,
            (None, Some(durability)) => {
                return Err(Error::new(
                    ErrorCode::InvalidConfig,
                    format!("durability {durability:?} needs a storage directory"),
                )
                .with_hint("add .storage_dir(path) to the builder"))
            }
            (Some(dir), Some(Durability::Memory)) => {
                return Err(Error::new(
                    ErrorCode::InvalidConfig,
                    format!(
                        "durability Memory keeps nothing on disk, but a storage directory ({}) was given",
                        dir.display()
                    ),
                )
                .with_hint("drop .storage_dir(..), or choose Durability::Sync or Async"))
            }
            (Some(dir), durability) => Some(storage::Storage::open(storage::StorageConfig {
                dir,
                durability: durability.unwrap_or(Durability::Sync),
                wal: self.wal,
            })?),
        };
        let cpus = match &self.cpus {
            Some(wanted) => restrict(discover_cpus()?, wanted)?,
            None => discover_cpus()?,
        };
        let placements = plan(self.shards, &cpus)?;
        Ok(LaminarDB {
            shared: Arc::new(Shared {
                placements,
                ring_capacity: self.ring_capacity,
                backpressure: self.backpressure,
                executor: self.executor,
                idle_spin: self.idle_spin,
                ctx: new_session_context(),
                catalog: Mutex::new(Catalog::default()),
                pipeline: OnceLock::new(),
                views: Mutex::new(Vec::new()),
                tables: Mutex::new(Vec::new()),
                storage,
                checkpoint_interval: self.checkpoint_interval,
            }),
        })
    }
}

/// Sources, streams and subscribers declared before start.
#[derive(Default)]
struct Catalog {
    sources: Vec<SourceDef>,
    streams: Vec<StreamPlan>,
    /// `[stream]` -> created as a MATERIALIZED VIEW.
    materialized: Vec<bool>,
    /// Streams whose output is retained (`LaminarDB::retain_output`).
    retained_outputs: Vec<String>,
    /// Names of the tables (their rows live in `Shared::tables`).
    tables: Vec<String>,
    /// Subscriber rings waiting for the pipeline: `[stream] -> [(shard, ring)]`.
    pending_outputs: HashMap<usize, Vec<(usize, Producer<Emitted>)>>,
    started: bool,
}

impl Catalog {
    fn source_map(&self) -> HashMap<String, SourceDef> {
        self.sources
            .iter()
            .map(|s| (s.name.clone(), s.clone()))
            .collect()
    }

    fn name_taken(&self, name: &str) -> bool {
        self.sources.iter().any(|s| s.name == name)
            || self.streams.iter().any(|s| s.name == name)
            || self.tables.iter().any(|t| t == name)
    }
}

/// State shared by the database, its source handles and its pipeline.
pub(crate) struct Shared {
    placements: Vec<ShardPlacement>,
    ring_capacity: usize,
    backpressure: Backpressure,
    executor: ExecutorConfig,
    idle_spin: Duration,
    ctx: SessionContext,
    catalog: Mutex<Catalog>,
    pub(crate) pipeline: OnceLock<Arc<Pipeline>>,
    views: Mutex<Vec<View>>,
    tables: Mutex<Vec<Arc<Table>>>,
    /// The storage directory of a durable database.
    storage: Option<storage::Storage>,
    checkpoint_interval: Option<Duration>,
}

/// An embedded streaming database. Cheap to clone (a handle).
#[derive(Clone)]
pub struct LaminarDB {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for LaminarDB {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LaminarDB")
            .field("shards", &self.shared.placements.len())
            .finish()
    }
}

/// What [`LaminarDB::execute`] did.
#[derive(Debug, Clone, PartialEq)]
pub enum ExecuteResult {
    /// A source was created.
    SourceCreated(String),
    /// A source already existed and `IF NOT EXISTS` was given.
    SourceExists(String),
    /// A stream was created.
    StreamCreated(String),
    /// A materialized view was created.
    ViewCreated(String),
    /// A table was created.
    TableCreated(String),
    /// Rows were inserted into a source or table.
    Inserted {
        /// The source or table.
        target: String,
        /// How many rows.
        rows: usize,
    },
    /// A source, stream or view was dropped.
    Dropped(String),
    /// `DROP ... IF EXISTS` named nothing.
    NothingToDrop(String),
    /// Rows of a `SELECT`, `SHOW` or `EXPLAIN`.
    Rows(Vec<RecordBatch>),
}

/// What planning a stream reads besides the sources and the streams'
/// schemas.
struct PlanningContext {
    streams: laminar_sql::KnownStreams,
    tables: HashMap<String, laminar_sql::TableDef>,
}

fn poisoned() -> Error {
    Error::new(
        ErrorCode::Execution,
        "internal lock poisoned by an earlier panic",
    )
}

impl LaminarDB {
    /// Opens an in-memory database with default settings.
    pub fn open() -> Result<Self> {
        Self::builder().build()
    }

    /// A builder for non-default settings.
    pub fn builder() -> LaminarDbBuilder {
        LaminarDbBuilder::default()
    }

    /// The shard placement: which CPU and NUMA node each shard runs on.
    pub fn placement(&self) -> &[ShardPlacement] {
        &self.shared.placements
    }

    /// Executes one or more `;`-separated statements (`CREATE SOURCE`,
    /// `CREATE STREAM`). Returns what each did. Streams must be created
    /// before [`LaminarDB::start`].
    pub async fn execute(&self, sql: &str) -> Result<Vec<ExecuteResult>> {
        let statements = parse_script(sql).map_err(|e| sql_context::locate(e, sql, 0, sql))?;
        let mut results = Vec::new();
        let mut searched = 0;
        for statement in statements {
            // Where the statement is in the script, to point errors at it.
            let (offset, text) = match statement_text(&statement) {
                Some(text) => match sql[searched..].find(text) {
                    Some(i) => {
                        searched += i;
                        (searched, &sql[searched..searched + text.len()])
                    }
                    None => (0, sql),
                },
                None => (0, sql),
            };
            let result = self
                .execute_one(statement)
                .await
                .map_err(|e| sql_context::locate(e, sql, offset, text))?;
            results.push(result);
        }
        Ok(results)
    }

    /// Runs one or more statements and returns the rows of the last one
    /// (empty for DDL): the shape of an interactive `sql()` call. Print them
    /// with [`pretty`].
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let rt = tokio::runtime::Builder::new_current_thread().build()?;
    /// # rt.block_on(async {
    /// let db = laminar_db::LaminarDB::builder().shards(1).build()?;
    /// db.sql("CREATE SOURCE s (k BIGINT NOT NULL, v BIGINT NOT NULL)").await?;
    /// let rows = db.sql("SHOW SOURCES").await?;
    /// println!("{}", laminar_db::pretty(&rows)?);
    /// # Ok::<_, Box<dyn std::error::Error>>(())
    /// # })?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn sql(&self, sql: &str) -> Result<Vec<RecordBatch>> {
        Ok(match self.execute(sql).await?.pop() {
            Some(ExecuteResult::Rows(rows)) => rows,
            _ => Vec::new(),
        })
    }

    /// Parses a script into statements without running them (for callers
    /// that run some statements later, like the CLI's end-of-input
    /// queries).
    pub fn parse(sql: &str) -> Result<Vec<Statement>> {
        parse_script(sql)
    }

    /// Executes one parsed statement.
    pub async fn execute_statement(&self, statement: Statement) -> Result<ExecuteResult> {
        self.execute_one(statement).await
    }

    async fn execute_one(&self, statement: Statement) -> Result<ExecuteResult> {
        match statement {
            Statement::Query(sql) => return self.query(&sql).await.map(ExecuteResult::Rows),
            Statement::Show(what) => return self.show(what).map(ExecuteResult::Rows),
            Statement::Explain {
                name,
                analyze: false,
            } => {
                let plan = self.explain(&name)?;
                let batch = RecordBatch::try_from_iter(vec![(
                    "plan",
                    Arc::new(arrow::array::StringArray::from(vec![plan])) as _,
                )])?;
                return Ok(ExecuteResult::Rows(vec![batch]));
            }
            Statement::Explain {
                name,
                analyze: true,
            } => return self.explain_analyze(&name).map(ExecuteResult::Rows),
            Statement::Describe(name) => return self.describe(&name).map(ExecuteResult::Rows),
            Statement::CreateTable {
                name,
                if_not_exists,
                sql,
            } => return self.create_table(&name, if_not_exists, &sql).await,
            Statement::CreateLookupTable {
                name,
                if_not_exists,
                columns_sql,
                connector,
                options,
                sql,
            } => {
                return self
                    .create_lookup_table(
                        &name,
                        if_not_exists,
                        columns_sql.as_deref(),
                        (&connector, &options),
                        &sql,
                    )
                    .await
            }
            Statement::Insert {
                target,
                columns,
                query,
                ..
            } => return self.insert(&target, columns.as_deref(), &query).await,
            Statement::Drop {
                kind: DropKind::Table,
                name,
                if_exists,
            } => return self.drop_table(&name, if_exists),
            Statement::ShowCreate(name) => return self.show_create(&name).map(ExecuteResult::Rows),
            _ => {}
        }
        let sources = {
            let catalog = self.shared.catalog.lock().map_err(|_| poisoned())?;
            if catalog.started {
                return Err(Error::new(
                    ErrorCode::AlreadyStarted,
                    "sources and streams must be created before db.start()",
                )
                .with_hint("adding queries to a running pipeline is not supported yet"));
            }
            catalog.source_map()
        };
        match statement {
            Statement::CreateSource(syntax) => {
                let name = syntax.name.clone();
                if sources.contains_key(&name) && syntax.if_not_exists {
                    return Ok(ExecuteResult::SourceExists(name));
                }
                let def = resolve_source(&self.shared.ctx, syntax).await?;
                let mut catalog = self.shared.catalog.lock().map_err(|_| poisoned())?;
                if catalog.name_taken(&name) {
                    return Err(already_exists(&name));
                }
                if let Some(alignment) = &def.alignment {
                    let other = catalog.sources.iter().find_map(|s| {
                        s.alignment
                            .as_ref()
                            .filter(|a| {
                                a.group == alignment.group
                                    && a.max_drift_ms != alignment.max_drift_ms
                            })
                            .map(|a| (s.name.clone(), a.max_drift_ms))
                    });
                    if let Some((other, drift)) = other {
                        return Err(Error::new(
                            ErrorCode::InvalidConfig,
                            format!(
                                "alignment group '{}' has max drift {drift} ms (source '{other}'), not {} ms",
                                alignment.group, alignment.max_drift_ms
                            ),
                        ));
                    }
                }
                register_table(&self.shared.ctx, &name, Arc::clone(&def.schema))?;
                catalog.sources.push(def);
                Ok(ExecuteResult::SourceCreated(name))
            }
            Statement::Query(_)
            | Statement::Show(_)
            | Statement::Explain { .. }
            | Statement::Describe(_)
            | Statement::ShowCreate(_)
            | Statement::CreateTable { .. }
            | Statement::CreateLookupTable { .. }
            | Statement::Insert { .. } => unreachable!("handled above"),
            Statement::Drop {
                kind,
                name,
                if_exists,
            } => self.drop_object(kind, &name, if_exists),
            Statement::CreateStream(def) => {
                let context = self.planning_context()?;
                let mut stages = plan_stream(
                    &self.shared.ctx,
                    &def,
                    &sources,
                    &context.streams,
                    &context.tables,
                )
                .await?;
                let plan = stages.pop().expect("the stream's own plan comes last");
                let mut catalog = self.shared.catalog.lock().map_err(|_| poisoned())?;
                for name in stages.iter().map(|s| &s.name).chain([&def.name]) {
                    if catalog.name_taken(name) {
                        return Err(already_exists(name));
                    }
                }
                let late = plan.late_side_output.as_ref().map(|schema| StreamPlan {
                    name: format!("{}_late", def.name),
                    input: StreamInput::LateOf(def.name.clone()),
                    output_schema: Arc::clone(schema),
                    routing: Routing::Any,
                    right_input: None,
                    lookup_table: None,
                    time_columns: Vec::new(),
                    settled_time_columns: Vec::new(),
                    operator: StreamOperator::Stateless(Vec::new()),
                    explain: format!("LateRows <- stream {}", def.name),
                    compiled: Vec::new(),
                    late_side_output: None,
                    sql: format!("-- the late rows of {}", def.name),
                    part_of: Some(def.name.clone()),
                    versions_query: None,
                });
                if let Some(late) = &late {
                    if catalog.name_taken(&late.name) {
                        return Err(already_exists(&late.name));
                    }
                }
                // Stages first (the stream reads them), its late rows last.
                let parts = stages
                    .into_iter()
                    .map(|stage| (stage, false))
                    .chain([(plan, def.materialized)])
                    .chain(late.map(|late| (late, false)));
                for (stream, materialized) in parts {
                    register_table(
                        &self.shared.ctx,
                        &stream.name,
                        Arc::clone(&stream.output_schema),
                    )?;
                    catalog.streams.push(stream);
                    catalog.materialized.push(materialized);
                }
                if def.materialized {
                    Ok(ExecuteResult::ViewCreated(def.name))
                } else {
                    Ok(ExecuteResult::StreamCreated(def.name))
                }
            }
        }
    }

    /// A handle to push rows into a source. Works before and after
    /// [`LaminarDB::start`]; pushing needs a started pipeline.
    pub fn source_untyped(&self, name: &str) -> Result<SourceHandle> {
        let catalog = self.shared.catalog.lock().map_err(|_| poisoned())?;
        let source = catalog
            .sources
            .iter()
            .find(|s| s.name == name || s.name == name.to_lowercase())
            .ok_or_else(|| unknown(name, "source"))?;
        let event_time_column = source
            .watermark
            .as_ref()
            .and_then(|w| source.schema.index_of(&w.column).ok());
        Ok(SourceHandle::new(
            Arc::clone(&self.shared),
            source.name.clone(),
            Arc::clone(&source.schema),
            event_time_column,
        ))
    }

    /// Runs a generator inside the shards: `partition(k, n)` builds the
    /// part shard `k` of `n` makes, which then runs on that shard, feeding
    /// `sources` (its batches name them by index). See [`generator`] for
    /// how it shares the shard and what its end means.
    ///
    /// Needs a started pipeline in [`Durability::Memory`] (a restart would
    /// generate again from the start and count its rows twice: `LDB-1004`
    /// on a durable database). An unknown source is `LDB-1002`.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use laminar_db::arrow::array::{Int64Array, RecordBatch};
    /// use laminar_db::arrow::datatypes::{DataType, Field, Schema};
    /// use laminar_db::{Generator, LaminarDB};
    ///
    /// /// Rows 0, 1, 2, ... below `end`: partition `k` of `n` takes every
    /// /// `n`th thousand.
    /// struct Counter { next: i64, step: i64, end: i64 }
    ///
    /// impl Generator for Counter {
    ///     fn next_batch(&mut self) -> Option<(usize, RecordBatch)> {
    ///         if self.next >= self.end {
    ///             return None;
    ///         }
    ///         let values: Vec<i64> = (self.next..(self.next + 1_000).min(self.end)).collect();
    ///         self.next += self.step;
    ///         let schema = Arc::new(Schema::new(vec![Field::new("n", DataType::Int64, false)]));
    ///         Some((0, RecordBatch::try_new(schema, vec![Arc::new(Int64Array::from(values))]).ok()?))
    ///     }
    /// }
    ///
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let rt = tokio::runtime::Builder::new_current_thread().build()?;
    /// # rt.block_on(async {
    /// let db = LaminarDB::builder().shards(2).build()?;
    /// db.execute("CREATE SOURCE numbers (n BIGINT NOT NULL, WATERMARK FOR n AS n)").await?;
    /// db.execute("CREATE STREAM per_second AS SELECT COUNT(*) AS rows FROM numbers
    ///             GROUP BY tumble(n, INTERVAL '1' SECOND) EMIT ON WINDOW CLOSE").await?;
    /// let mut results = db.subscribe("per_second")?;
    /// db.start().await?;
    /// let generation = db.generate(&["numbers"], |k, n| Counter {
    ///     next: k as i64 * 1_000,
    ///     step: n as i64 * 1_000,
    ///     end: 10_000,
    /// })?;
    /// assert_eq!(generation.finished().await?, 10_000);
    /// db.shutdown().await?;
    /// let mut windows = 0;
    /// while let Some(batch) = results.recv() {
    ///     windows += batch.num_rows();
    /// }
    /// assert_eq!(windows, 10); // ten one-second windows, all closed
    /// # Ok::<_, Box<dyn std::error::Error>>(())
    /// # })?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn generate<G: Generator>(
        &self,
        sources: &[&str],
        mut partition: impl FnMut(usize, usize) -> G,
    ) -> Result<Generation> {
        let pipeline = self.shared.pipeline.get().ok_or_else(|| {
            Error::new(
                ErrorCode::NotRunning,
                "cannot generate before the pipeline starts",
            )
            .with_hint("call db.start().await first")
        })?;
        pipeline.check_running()?;
        if pipeline.durability != Durability::Memory {
            return Err(Error::new(
                ErrorCode::Unsupported,
                "generators run only on a Durability::Memory database",
            )
            .with_hint(
                "a restart would generate again from the start; push the rows instead, \
                 or resume from db.recovered_rows(source)",
            ));
        }
        if sources.is_empty() {
            return Err(Error::new(
                ErrorCode::InvalidConfig,
                "a generator needs at least one source",
            ));
        }
        let handles = sources
            .iter()
            .map(|name| self.source_untyped(name))
            .collect::<Result<Vec<_>>>()?;
        let shards = pipeline.shards;
        // Each partition pushes through handles of its own: its own lanes
        // and its own watermark. All are connected before any starts, so
        // that every shard holds the sources' watermarks back for every
        // partition from the first row: a partition that finished before
        // another started would otherwise close every window ahead of the
        // other's rows. All partitions are built before any is sent, so
        // that a failure leaves none running unwatched.
        let generation = Generation::new(shards);
        let mut parts = Vec::with_capacity(shards);
        for shard in 0..shards {
            let mut own = handles.to_vec();
            for handle in &mut own {
                handle.connect_for_generator()?;
            }
            parts.push(generator::Partition::new(
                generation.clone(),
                Box::new(partition(shard, shards)),
                own,
                Arc::clone(&pipeline.errors),
            ));
        }
        for (control, part) in pipeline.controls.iter().zip(parts) {
            let start: pipeline::SpawnFn = Box::new(move || Box::pin(part.run()));
            control.send(Control::Spawn(start))?;
        }
        Ok(generation)
    }

    /// Subscribes to a stream's output. Subscribe before `start` to see
    /// every result; a later subscription sees results from then on.
    pub fn subscribe(&self, name: &str) -> Result<Subscription> {
        let mut catalog = self.shared.catalog.lock().map_err(|_| poisoned())?;
        let (stream, plan) = catalog
            .streams
            .iter()
            .enumerate()
            .find(|(_, s)| s.name == name || s.name == name.to_lowercase())
            .ok_or_else(|| unknown(name, "stream"))?;
        let (schema, stream_name) = (Arc::clone(&plan.output_schema), plan.name.clone());
        self.subscribe_to(&mut catalog, stream, stream_name, schema)
    }

    /// Creates a subscription's rings and hands the producing ends to the
    /// shards (or keeps them for start).
    fn subscribe_to(
        &self,
        catalog: &mut Catalog,
        stream: usize,
        stream_name: String,
        schema: SchemaRef,
    ) -> Result<Subscription> {
        let mut consumers: Vec<Consumer<Emitted>> = Vec::new();
        let mut producers = Vec::new();
        for shard in 0..self.shared.placements.len() {
            let (producer, consumer) = ring(self.shared.ring_capacity);
            consumers.push(consumer);
            producers.push((shard, producer));
        }
        match self.shared.pipeline.get() {
            Some(pipeline) => {
                pipeline.check_running()?;
                for (shard, ring) in producers {
                    pipeline.controls[shard].send(Control::AddSubscriber { stream, ring })?;
                }
            }
            None => catalog
                .pending_outputs
                .entry(stream)
                .or_default()
                .extend(producers),
        }
        Ok(Subscription::new(stream_name, schema, consumers))
    }

    /// Starts the shards. Sources and streams are fixed from here on.
    ///
    /// In the adaptive JIT mode (the default) it first waits, up to a
    /// second, for the streams' kernels queued at `CREATE STREAM` to
    /// compile (well under a millisecond each), so that the first batch
    /// already runs compiled.
    pub async fn start(&self) -> Result<()> {
        // Kernels queued by the streams created so far are compiled before
        // the first batch, so those streams run compiled from it.
        if !laminar_sql::jit::wait_for_compiles(START_COMPILE_LIMIT) {
            log::warn!(
                "JIT: kernels still compiling after {START_COMPILE_LIMIT:?}; \
                 their streams start interpreted and switch when they are ready"
            );
        }
        let mut catalog = self.shared.catalog.lock().map_err(|_| poisoned())?;
        if catalog.started {
            return Err(Error::new(
                ErrorCode::AlreadyStarted,
                "the pipeline is already started",
            ));
        }
        let shards = self.shared.placements.len();
        let mut sources: Vec<SourceRuntime> = catalog
            .sources
            .iter()
            .map(|def| {
                let time = match &def.watermark {
                    Some(w) => {
                        let column = def.schema.index_of(&w.column)?;
                        Some(SourceTime {
                            column,
                            unit: laminar_operators::EventTimeUnit::of(
                                def.schema.field(column).data_type(),
                                &w.column,
                            )?,
                            bound_ms: w.bound_ms,
                            key: match &def.watermark_key {
                                Some(key) => Some(key_watermark::KeySpec {
                                    column: def.schema.index_of(&key.column)?,
                                    skew_ms: key.skew_ms,
                                }),
                                None => None,
                            },
                        })
                    }
                    None => None,
                };
                Ok(SourceRuntime {
                    retention: Arc::new(retention::Retention::new(
                        def.retention_rows
                            .unwrap_or(retention::DEFAULT_RETENTION_ROWS),
                    )),
                    alignment: None,
                    name: def.name.clone(),
                    idle_timeout: def
                        .idle_timeout_ms
                        .map(|ms| Duration::from_millis(ms.unsigned_abs())),
                    time,
                    routes: Vec::new(),
                })
            })
            .collect::<Result<_>>()?;
        let mut groups: HashMap<String, AlignmentGroup> = HashMap::new();
        for (id, def) in catalog.sources.iter().enumerate() {
            if let Some(alignment) = &def.alignment {
                groups
                    .entry(alignment.group.clone())
                    .or_insert_with(|| {
                        AlignmentGroup::new(alignment.group.clone(), alignment.max_drift_ms)
                    })
                    .add_source(id, def.name.clone(), sources[id].idle_timeout);
            }
        }
        let groups: HashMap<String, Arc<AlignmentGroup>> =
            groups.into_iter().map(|(k, v)| (k, Arc::new(v))).collect();
        for (id, def) in catalog.sources.iter().enumerate() {
            sources[id].alignment = def
                .alignment
                .as_ref()
                .map(|a| Arc::clone(&groups[&a.group]));
        }
        let graph = Graph::build(&catalog.streams, &mut sources)?;
        let mut restored: Option<checkpoint::Restored> = None;
        let recovery = match &self.shared.storage {
            Some(storage) => {
                let statements: Vec<&str> = catalog
                    .sources
                    .iter()
                    .map(|s| s.sql.as_str())
                    .chain(catalog.streams.iter().map(|s| s.sql.as_str()))
                    .collect();
                let operators: Vec<String> = catalog
                    .streams
                    .iter()
                    .map(|s| format!("{} {}", s.name, s.operator.kind()))
                    .collect();
                storage.check_pipeline(shards, &statements, &operators)?;
                for shard in 0..shards {
                    let dir = storage.shard_dir(shard);
                    std::fs::create_dir_all(&dir).map_err(|e| {
                        Error::new(
                            ErrorCode::Io,
                            format!("cannot create {}: {e}", dir.display()),
                        )
                    })?;
                }
                restored = checkpoint::load(
                    &storage.config.dir,
                    shards,
                    catalog.materialized.iter().filter(|&&m| m).count()
                        + catalog.retained_outputs.len(),
                    sources.len(),
                )?;
                Some(Arc::new(storage::Recovery::analyze(
                    storage,
                    shards,
                    sources.len(),
                    restored.as_ref(),
                )?))
            }
            None => None,
        };
        let next_epoch = checkpoint::next_epoch(restored.as_ref().map(|r| &r.manifest));
        let mut restored_shards: Vec<Option<checkpoint::ShardSnapshot>> = match &mut restored {
            Some(r) => std::mem::take(&mut r.shards)
                .into_iter()
                .map(Some)
                .collect(),
            None => (0..shards).map(|_| None).collect(),
        };
        let mut restored_views: Vec<Option<Vec<RecordBatch>>> = match &mut restored {
            Some(r) => std::mem::take(&mut r.views).into_iter().map(Some).collect(),
            None => Vec::new(),
        };
        if let Some(r) = &restored {
            for (source, batches) in r.retained.iter().enumerate() {
                for batch in batches {
                    sources[source].retention.keep(batch);
                }
            }
            log::info!(
                "recovery: loaded checkpoint {} ({} shard(s))",
                r.manifest.epoch,
                shards
            );
        }
        let failure = Arc::new(OnceLock::new());
        let mut views = Vec::new();
        for stream in 0..catalog.streams.len() {
            if catalog.materialized[stream] {
                let plan = &catalog.streams[stream];
                let (name, schema) = (plan.name.clone(), Arc::clone(&plan.output_schema));
                let subscription = self.subscribe_to(&mut catalog, stream, name.clone(), schema)?;
                views.push((name, subscription, false));
            }
        }
        for name in catalog.retained_outputs.clone() {
            let stream = catalog
                .streams
                .iter()
                .position(|s| s.name == name)
                .ok_or_else(|| unknown(&name, "stream"))?;
            let schema = Arc::clone(&catalog.streams[stream].output_schema);
            let subscription = self.subscribe_to(&mut catalog, stream, name.clone(), schema)?;
            views.push((name, subscription, true));
        }

        let errors = Arc::new(Mutex::new(Vec::new()));
        let mut controls = Vec::with_capacity(shards);
        let mut counters = Vec::with_capacity(shards);
        let mut mains: Vec<ShardMain> = Vec::with_capacity(shards);
        let mut pending = std::mem::take(&mut catalog.pending_outputs);
        // Exchange rings: [exchange][sender][receiver].
        let mut exchange_producers: Vec<Vec<Vec<Producer<Ingress>>>> = Vec::new();
        let mut exchange_consumers: Vec<Vec<Vec<Consumer<Ingress>>>> = Vec::new();
        for _ in &graph.exchanges {
            let mut producers: Vec<Vec<Producer<Ingress>>> =
                (0..shards).map(|_| Vec::new()).collect();
            let mut consumers: Vec<Vec<Consumer<Ingress>>> =
                (0..shards).map(|_| Vec::new()).collect();
            for sender in producers.iter_mut() {
                for receiver in consumers.iter_mut() {
                    let (producer, consumer) = ring(self.shared.ring_capacity);
                    sender.push(producer);
                    receiver.push(consumer);
                }
            }
            exchange_producers.push(producers);
            exchange_consumers.push(consumers);
        }
        let mut not_checkpointable = Vec::new();
        for shard in (0..shards).rev() {
            let mut streams = Vec::with_capacity(catalog.streams.len());
            for (id, plan) in catalog.streams.iter().enumerate() {
                let outputs = pending
                    .get_mut(&id)
                    .map(|rings| {
                        let (mine, rest): (Vec<_>, Vec<_>) = std::mem::take(rings)
                            .into_iter()
                            .partition(|(s, _)| *s == shard);
                        *rings = rest;
                        mine.into_iter()
                            .map(|(_, ring)| pipeline::Output::new(ring))
                            .collect()
                    })
                    .unwrap_or_default();
                let operator = plan.operator.instantiate(&plan.output_schema)?;
                if shard == 0 && !operator.checkpoints() {
                    not_checkpointable.push(plan.name.clone());
                }
                streams.push(ShardStream {
                    operator,
                    outputs,
                    local: graph.local[id].clone(),
                    late: graph.late[id].clone(),
                    exchanges: graph.exchanges_of[id].clone(),
                    watermark_ms: i64::MIN,
                });
            }
            let mut lanes = Vec::new();
            let mut exchanges = Vec::with_capacity(graph.exchanges.len());
            for (e, exchange) in graph.exchanges.iter().enumerate() {
                let input = sources.len() + e;
                for (sender, consumer) in exchange_consumers[e][shard].drain(..).enumerate() {
                    let mut lane = Lane::new(consumer, input);
                    lane.exchange_sender = Some(sender);
                    lanes.push(lane);
                }
                exchanges.push(ExchangeOut {
                    input,
                    partitioner: match &exchange.routing {
                        Routing::Keys(columns) => {
                            Some(HashPartitioner::new(columns.clone(), shards))
                        }
                        _ => None,
                    },
                    rings: Some(std::mem::take(&mut exchange_producers[e][shard])),
                    outbox: (0..shards).map(|_| Default::default()).collect(),
                    feeding_inputs: graph.roots[exchange.upstream].clone(),
                });
            }
            let (control, receiver, waker, sent) = control_channel();
            let shard_counters = Arc::new(ShardCounters::new(
                catalog.streams.len(),
                catalog.sources.len(),
            ));
            let program = ShardProgram {
                streams,
                inputs: graph.inputs(),
                exchanges,
                lanes,
                control: receiver,
                control_waker: waker,
                control_sent: sent,
                control_seen: 0,
                counters: Arc::clone(&shard_counters),
                errors: Arc::clone(&errors),
                idle_spin: self.shared.idle_spin,
                idle_timeouts: sources.iter().any(|s| s.idle_timeout.is_some()),
                work_queue: Vec::new(),
                out: Vec::new(),
                wal: self
                    .shared
                    .storage
                    .as_ref()
                    .map(|storage| shard_wal::ShardWal {
                        dir: storage.shard_dir(shard),
                        shard: shard as u32,
                        generation: storage.generation,
                        tail: recovery.as_ref().and_then(|r| r.tails[shard].clone()),
                        config: storage.config.wal,
                        sync: storage.config.durability == Durability::Sync,
                        unsynced: false,
                        last_sync: std::time::Instant::now(),
                    }),
                group: Vec::new(),
                failure: Arc::clone(&failure),
                shard,
                checkpoint: None,
                restore: restored_shards[shard].take(),
                // Markers of the restored checkpoint's epoch (a handle
                // connecting before the next one) are for one already taken.
                last_epoch: next_epoch - 1,
                spawned: Arc::default(),
                pending: Vec::new(),
            };
            controls.push(control);
            counters.push(shard_counters);
            mains.push(Box::new(move || Box::pin(program.run())));
        }
        controls.reverse();
        counters.reverse();
        mains.reverse();
        if self.shared.checkpoint_interval.is_some() && !not_checkpointable.is_empty() {
            return Err(checkpoint::not_supported(&not_checkpointable));
        }
        let threads = ShardThreads::spawn(&self.shared.placements, &self.shared.executor, mains)?;
        let pipeline = Arc::new(Pipeline {
            shards,
            ring_capacity: self.shared.ring_capacity,
            backpressure: self.shared.backpressure,
            sources,
            streams: catalog
                .streams
                .iter()
                .map(|p| StreamRuntime {
                    name: p.name.clone(),
                })
                .collect(),
            controls,
            counters,
            stopped: AtomicBool::new(false),
            threads: Mutex::new(Some(threads)),
            errors,
            durability: self
                .shared
                .storage
                .as_ref()
                .map_or(Durability::Memory, |s| s.config.durability),
            generation: self.shared.storage.as_ref().map_or(0, |s| s.generation),
            wal_max_payload_bytes: self
                .shared
                .storage
                .as_ref()
                .map_or(usize::MAX, |s| s.config.wal.max_payload_bytes()),
            next_handle: std::sync::atomic::AtomicU32::new(0),
            failure,
            replayed: pipeline::Latch::default(),
            recovered_rows: recovery
                .as_ref()
                .map_or_else(|| vec![0; catalog.sources.len()], |r| r.rows.clone()),
            handle_cuts: Mutex::new(Vec::new()),
            retired_rows: Mutex::new(vec![0; catalog.sources.len()]),
            next_epoch: Mutex::new(next_epoch),
            requested_epoch: std::sync::atomic::AtomicU64::new(next_epoch - 1),
            views: views.len(),
            not_checkpointable,
            checkpoint_counters: Default::default(),
            checkpoint_thread: Mutex::new(None),
            checkpoint_bases: Mutex::new(Default::default()),
        });
        catalog.started = true;
        let view_errors = Arc::clone(&pipeline.errors);
        let _ = self.shared.pipeline.set(Arc::clone(&pipeline));
        // From here on the pipeline is visible: whatever fails must still
        // open the recovery latch, or pushes and shutdown would wait on it.
        let started = (|| {
            // Lookup joins start from their table's rows, before any input
            // (the replay included) reaches the shards.
            for (stream, plan) in catalog.streams.iter().enumerate() {
                if let Some(name) = &plan.lookup_table {
                    let table = self.table(name).ok_or_else(|| unknown(name, "table"))?;
                    table.attach(&pipeline, stream)?;
                }
            }
            let mut kept = self.shared.views.lock().map_err(|_| poisoned())?;
            for (index, (name, subscription, output)) in views.into_iter().enumerate() {
                let contents = restored_views.get_mut(index).and_then(Option::take);
                kept.push(View::start(
                    name,
                    subscription,
                    Arc::clone(&view_errors),
                    index,
                    contents,
                    output,
                )?);
            }
            drop(kept);
            match (recovery, &self.shared.storage) {
                (Some(recovery), Some(storage)) if recovery.needs_replay() => {
                    let shapes = storage::SourceShapes {
                        schemas: catalog
                            .sources
                            .iter()
                            .map(|s| Arc::clone(&s.schema))
                            .collect(),
                        routes: pipeline.sources.iter().map(|s| s.routes.len()).collect(),
                    };
                    let dirs: Vec<std::path::PathBuf> =
                        (0..shards).map(|shard| storage.shard_dir(shard)).collect();
                    log::info!(
                        "recovery: replaying {} WAL records into {shards} shard(s)",
                        recovery.records
                    );
                    spawn_replay(Arc::clone(&pipeline), recovery, dirs, shapes)
                }
                _ => {
                    pipeline.replayed.open(Ok(()));
                    Ok(())
                }
            }
        })();
        if let Err(e) = &started {
            pipeline.replayed.open(Err(e.clone()));
        }
        started?;
        if let (Some(interval), Ok(dir)) = (self.shared.checkpoint_interval, self.storage_dir()) {
            spawn_checkpoints(Arc::clone(&pipeline), dir, interval)?;
        }
        Ok(())
    }

    /// Waits until the pipeline has started and recovery has replayed the
    /// storage directory's WAL (at once without one). Returns recovery's
    /// error if it failed.
    pub async fn wait_recovered(&self) -> Result<()> {
        let pipeline = self.shared.pipeline.get().ok_or_else(|| {
            Error::new(ErrorCode::NotRunning, "the pipeline has not started")
                .with_hint("call db.start().await first")
        })?;
        pipeline.replayed.wait().await
    }

    /// How many rows of `source` were recovered from the storage directory
    /// when the pipeline started (0 without one): the rows of every push
    /// that was whole in the WAL. A program feeding the source from a
    /// replayable input (a file, a queue offset) resumes after them.
    pub fn recovered_rows(&self, source: &str) -> Result<u64> {
        let pipeline = self.shared.pipeline.get().ok_or_else(|| {
            Error::new(ErrorCode::NotRunning, "the pipeline has not started")
                .with_hint("call db.start().await first")
        })?;
        let id = pipeline.source_id(source).ok_or_else(|| {
            Error::new(
                ErrorCode::UnknownObject,
                format!("unknown source '{source}'"),
            )
        })?;
        Ok(pipeline.recovered_rows[id])
    }

    /// Takes a checkpoint now: a consistent copy of every shard's state,
    /// the materialized views and the sources' retained rows, written to
    /// the storage directory, after which the WAL it covers is deleted
    /// and a restart replays only what came later. Input keeps flowing
    /// while the shards align (each source lane waits at the cut only
    /// until its shard has copied its state). One checkpoint runs at a
    /// time; a second call waits for the first.
    ///
    /// Fails with `LDB-1004` for a pipeline with a stream whose operator
    /// cannot be checkpointed yet, `LDB-5002` without a storage directory,
    /// and `LDB-6006` if the pipeline stops meanwhile or a file cannot be
    /// written (the previous checkpoint and the WAL still hold
    /// everything).
    ///
    /// ```
    /// use std::sync::Arc;
    /// use laminar_db::arrow::array::{Int64Array, RecordBatch};
    /// use laminar_db::LaminarDB;
    ///
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let rt = tokio::runtime::Builder::new_current_thread().build()?;
    /// # rt.block_on(async {
    /// let dir = tempfile::tempdir()?;
    /// let sql = "CREATE SOURCE clicks (user_id BIGINT NOT NULL, ts BIGINT NOT NULL,
    ///                WATERMARK FOR ts AS ts - INTERVAL '1' SECOND);
    ///            CREATE STREAM per_user AS SELECT user_id, COUNT(*) AS clicks FROM clicks
    ///                GROUP BY user_id, tumble(ts, INTERVAL '1' MINUTE)";
    /// {
    ///     let db = LaminarDB::builder().shards(1).storage_dir(dir.path()).build()?;
    ///     db.execute(sql).await?;
    ///     let clicks = db.source_untyped("clicks")?;
    ///     db.start().await?;
    ///     clicks.push(RecordBatch::try_new(clicks.schema(), vec![
    ///         Arc::new(Int64Array::from(vec![7, 7])),
    ///         Arc::new(Int64Array::from(vec![1_000, 2_000])),
    ///     ])?)?;
    ///     let checkpoint = db.checkpoint().await?; // the open window is in it
    ///     assert_eq!(checkpoint.epoch, 1);
    ///     db.shutdown().await?;
    /// }
    /// let db = LaminarDB::builder().shards(1).storage_dir(dir.path()).build()?;
    /// db.execute(sql).await?;
    /// let mut results = db.subscribe("per_user")?;
    /// let clicks = db.source_untyped("clicks")?;
    /// db.start().await?; // loads the checkpoint; nothing to replay
    /// assert_eq!(db.recovered_rows("clicks")?, 2);
    /// clicks.watermark(i64::MAX)?;
    /// let counted = results.recv().expect("the window");
    /// assert_eq!(counted.num_rows(), 1);
    /// db.shutdown().await?;
    /// # Ok::<_, Box<dyn std::error::Error>>(())
    /// # })?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn checkpoint(&self) -> Result<CheckpointInfo> {
        let pipeline = self.shared.pipeline.get().cloned().ok_or_else(|| {
            Error::new(ErrorCode::NotRunning, "the pipeline has not started")
                .with_hint("call db.start().await first")
        })?;
        let dir = self.storage_dir()?;
        let (done, taken) = futures::channel::oneshot::channel();
        std::thread::Builder::new()
            .name("laminar-checkpoint".into())
            .spawn(move || {
                let _ = done.send(checkpoint::take(&pipeline, &dir));
            })
            .map_err(|e| {
                Error::new(
                    ErrorCode::RuntimeStart,
                    format!("cannot spawn a thread: {e}"),
                )
            })?;
        taken
            .await
            .map_err(|_| Error::new(ErrorCode::Checkpoint, "the checkpoint thread vanished"))?
    }

    fn storage_dir(&self) -> Result<std::path::PathBuf> {
        self.shared
            .storage
            .as_ref()
            .map(|s| s.config.dir.clone())
            .ok_or_else(|| {
                Error::new(
                    ErrorCode::InvalidConfig,
                    "checkpoints need a storage directory",
                )
                .with_hint("build the database with .storage_dir(path)")
            })
    }

    /// Keeps every batch `stream` emits, as emitted (with the `_weight`
    /// column of an `EMIT CHANGES` stream), for
    /// [`LaminarDB::retained_output`]: an exactly-once sink inside the
    /// database. With a storage directory the kept batches come back after
    /// a restart: checkpoints save them, and the replay after the last
    /// checkpoint emits the rest again, so each output row is held once.
    /// Call before [`LaminarDB::start`].
    pub fn retain_output(&self, stream: &str) -> Result<()> {
        let mut catalog = self.shared.catalog.lock().map_err(|_| poisoned())?;
        if catalog.started {
            return Err(Error::new(
                ErrorCode::AlreadyStarted,
                "outputs are retained from the start: call retain_output before start",
            ));
        }
        let name = catalog
            .streams
            .iter()
            .find(|s| s.name == stream || s.name == stream.to_lowercase())
            .map(|s| s.name.clone())
            .ok_or_else(|| unknown(stream, "stream"))?;
        if !catalog.retained_outputs.contains(&name) {
            catalog.retained_outputs.push(name);
        }
        Ok(())
    }

    /// The batches kept so far for a stream named in
    /// [`LaminarDB::retain_output`] (all of them once the database has
    /// shut down).
    pub fn retained_output(&self, stream: &str) -> Result<Vec<RecordBatch>> {
        let views = self.shared.views.lock().map_err(|_| poisoned())?;
        let view = views
            .iter()
            .find(|v| v.output && (v.name == stream || v.name == stream.to_lowercase()))
            .ok_or_else(|| {
                Error::new(
                    ErrorCode::UnknownObject,
                    format!("the output of '{stream}' is not retained"),
                )
                .with_hint("call db.retain_output(stream) before start")
            })?;
        let state = view.state.lock().map_err(|_| poisoned())?;
        state.snapshot()
    }

    /// Stops the pipeline: pushes from now on fail with `LDB-2003`, shards
    /// process everything already accepted, emit it, and exit; their
    /// threads are joined. A push racing the shutdown on another thread
    /// either returns `Ok`, and its rows are processed like the others, or
    /// fails with `LDB-2003` (a memory-only database may then have taken
    /// the part of a push that had reached a shard first). Open windows are not emitted (advance the
    /// watermark first to close them). Subscriptions end after their last
    /// batch. A checkpoint under way either gives up or finishes writing
    /// first, so once this returns nothing writes to the storage
    /// directory. Calling it again is a no-op.
    pub async fn shutdown(&self) -> Result<()> {
        let Some(pipeline) = self.shared.pipeline.get() else {
            return Ok(());
        };
        if pipeline
            .stopped
            .swap(true, std::sync::atomic::Ordering::AcqRel)
        {
            return Ok(());
        }
        let threads = pipeline.threads.lock().map_err(|_| poisoned())?.take();
        let Some(threads) = threads else {
            return Ok(());
        };
        // Waiting for recovery and joining block, so they happen on their
        // own thread; this task waits without blocking the caller's
        // executor.
        let (done, joined) = futures::channel::oneshot::channel();
        let stopping = Arc::clone(pipeline);
        std::thread::Builder::new()
            .name("laminar-shutdown".into())
            .spawn(move || {
                // A replay still running must finish first: its lanes
                // would otherwise look drained and be cut short.
                let _ = stopping.replayed.wait_blocking();
                for control in &stopping.controls {
                    // A shard that already exited has nothing left to drain.
                    let _ = control.send(Control::Stop);
                }
                let joined = threads.join();
                // A checkpoint under way sees the stop and gives up, or
                // finishes its files: either way nothing writes to the
                // storage directory once shutdown returns.
                let periodic = match stopping.checkpoint_thread.lock() {
                    Ok(mut thread) => thread.take(),
                    Err(poisoned) => poisoned.into_inner().take(),
                };
                if let Some(periodic) = periodic {
                    let _ = periodic.join();
                }
                drop(stopping.next_epoch.lock());
                let _ = done.send(joined);
            })
            .map_err(|e| {
                Error::new(
                    ErrorCode::RuntimeStart,
                    format!("cannot spawn a thread: {e}"),
                )
            })?;
        joined
            .await
            .map_err(|_| Error::new(ErrorCode::Execution, "shard join thread vanished"))??;
        // The shards are gone, so every view's stream has ended: wait for
        // the views to take in their last batches.
        let mut views = std::mem::take(&mut *self.shared.views.lock().map_err(|_| poisoned())?);
        let (done, joined) = futures::channel::oneshot::channel();
        std::thread::Builder::new()
            .name("laminar-shutdown".into())
            .spawn(move || {
                for view in &mut views {
                    view.join();
                }
                let _ = done.send(views);
            })
            .map_err(|e| {
                Error::new(
                    ErrorCode::RuntimeStart,
                    format!("cannot spawn a thread: {e}"),
                )
            })?;
        let views = joined
            .await
            .map_err(|_| Error::new(ErrorCode::Execution, "view join thread vanished"))?;
        *self.shared.views.lock().map_err(|_| poisoned())? = views;
        Ok(())
    }

    /// Runs an ad-hoc query over the materialized views' current contents
    /// (DataFusion, on the caller's task). Sources and plain streams keep
    /// no rows to query.
    async fn query(&self, sql: &str) -> Result<Vec<RecordBatch>> {
        if let Some(pipeline) = self.shared.pipeline.get() {
            // After a restart, answers include the recovered input.
            pipeline.replayed.wait().await?;
        }
        if laminar_sql::has_asof(sql)? {
            return self.adhoc_asof(sql).await;
        }
        let ctx = self.query_context()?;
        let frame = ctx.sql(sql).await.map_err(|e| self.query_error(e))?;
        let schema: SchemaRef = Arc::new(frame.schema().as_arrow().clone());
        let mut batches = frame.collect().await?;
        if batches.is_empty() {
            // Keep the columns of an empty result.
            batches.push(RecordBatch::new_empty(schema));
        }
        Ok(batches)
    }

    /// A DataFusion context holding what ad-hoc queries read, as of now:
    /// the views' contents, the sources' retained rows and the tables.
    fn query_context(&self) -> Result<datafusion::prelude::SessionContext> {
        let ctx = laminar_sql::new_session_context();
        let views: Vec<(String, SchemaRef, Vec<RecordBatch>)> = {
            let views = self.shared.views.lock().map_err(|_| poisoned())?;
            let mut snapshots = Vec::with_capacity(views.len());
            for view in views.iter().filter(|v| !v.output) {
                let state = view.state.lock().map_err(|_| poisoned())?;
                snapshots.push((view.name.clone(), state.schema(), state.snapshot()?));
            }
            snapshots
        };
        let catalog_views: Vec<(String, SchemaRef)> = {
            let catalog = self.shared.catalog.lock().map_err(|_| poisoned())?;
            catalog
                .streams
                .iter()
                .zip(&catalog.materialized)
                .filter(|(_, &m)| m)
                .map(|(p, _)| (p.name.clone(), visible_schema(&p.output_schema)))
                .collect()
        };
        // Views of a pipeline not started yet are empty.
        for (name, schema) in catalog_views {
            let (schema, batches) = match views.iter().find(|(n, _, _)| *n == name) {
                Some((_, schema, batches)) => (Arc::clone(schema), batches.clone()),
                None => (schema, Vec::new()),
            };
            let table = datafusion::datasource::MemTable::try_new(schema, vec![batches])?;
            ctx.register_table(name.as_str(), Arc::new(table))?;
        }
        // Sources: their retained rows (none before start).
        let sources: Vec<(String, SchemaRef, usize)> = {
            let catalog = self.shared.catalog.lock().map_err(|_| poisoned())?;
            catalog
                .sources
                .iter()
                .enumerate()
                .filter(|(_, s)| s.retention_rows != Some(0))
                .map(|(i, s)| (s.name.clone(), Arc::clone(&s.schema), i))
                .collect()
        };
        for (name, schema, index) in sources {
            let rows = self
                .shared
                .pipeline
                .get()
                .map(|p| p.sources[index].retention.snapshot())
                .unwrap_or_default();
            let memory = datafusion::datasource::MemTable::try_new(schema, vec![rows])?;
            ctx.register_table(name.as_str(), Arc::new(memory))?;
        }
        let tables: Vec<Arc<Table>> = self.shared.tables.lock().map_err(|_| poisoned())?.clone();
        for table in tables {
            let memory = datafusion::datasource::MemTable::try_new(
                Arc::clone(&table.def.schema),
                vec![table.snapshot()?],
            )?;
            ctx.register_table(table.def.name.as_str(), Arc::new(memory))?;
        }
        Ok(ctx)
    }

    /// What planning needs to know of the existing streams and tables.
    fn planning_context(&self) -> Result<PlanningContext> {
        let catalog = self.shared.catalog.lock().map_err(|_| poisoned())?;
        let mut streams = laminar_sql::KnownStreams::default();
        for plan in &catalog.streams {
            streams.insert(plan);
        }
        drop(catalog);
        let tables = self
            .shared
            .tables
            .lock()
            .map_err(|_| poisoned())?
            .iter()
            .map(|t| (t.def.name.clone(), t.def.clone()))
            .collect();
        Ok(PlanningContext { streams, tables })
    }

    /// An ad-hoc query with an ASOF or temporal join: planned like a
    /// stream, run by the same operator over the inputs' kept rows
    /// (sources' retained rows, materialized views), with all time closed.
    async fn adhoc_asof(&self, sql: &str) -> Result<Vec<RecordBatch>> {
        let (sources, views) = {
            let catalog = self.shared.catalog.lock().map_err(|_| poisoned())?;
            (
                catalog.source_map(),
                catalog
                    .streams
                    .iter()
                    .zip(&catalog.materialized)
                    .filter(|(_, &m)| m)
                    .map(|(s, _)| s.name.clone())
                    .collect::<Vec<_>>(),
            )
        };
        let context = self.planning_context()?;
        let def = laminar_sql::dialect::StreamDef {
            name: "query".into(),
            query: sql.to_string(),
            emit: None,
            materialized: false,
            late_side_output: false,
            two_phase: Default::default(),
            sql: sql.to_string(),
        };
        let plans = plan_stream(
            &self.shared.ctx,
            &def,
            &sources,
            &context.streams,
            &context.tables,
        )
        .await?;
        let plan = match plans.as_slice() {
            [plan] => plan,
            _ => {
                return Err(Error::new(
                    ErrorCode::Unsupported,
                    "an ad-hoc ASOF query must be one ASOF join of two sources or views",
                ))
            }
        };
        let Some((right, _)) = plan.right_input.clone() else {
            return Err(Error::new(
                ErrorCode::Unsupported,
                "an ad-hoc ASOF query must be one ASOF join of two sources or views",
            ));
        };
        let rows_of = |input: &StreamInput| -> Result<Vec<RecordBatch>> {
            match input {
                StreamInput::Source(name) => {
                    let index = self
                        .shared
                        .catalog
                        .lock()
                        .map_err(|_| poisoned())?
                        .sources
                        .iter()
                        .position(|s| &s.name == name)
                        .ok_or_else(|| unknown(name, "source"))?;
                    Ok(self
                        .shared
                        .pipeline
                        .get()
                        .map(|p| p.sources[index].retention.snapshot())
                        .unwrap_or_default())
                }
                StreamInput::Stream(name) if views.contains(name) => {
                    let views = self.shared.views.lock().map_err(|_| poisoned())?;
                    match views.iter().find(|v| &v.name == name && !v.output) {
                        Some(view) => view
                            .state
                            .lock()
                            .map_err(|_| poisoned())?
                            .snapshot_as_stream(),
                        None => Ok(Vec::new()),
                    }
                }
                other => Err(Error::new(
                    ErrorCode::Unsupported,
                    format!("{other} keeps no rows to query ad hoc"),
                )
                .with_hint("create a materialized view over it")),
            }
        };
        let (left_rows, right_rows) = (rows_of(&plan.input)?, rows_of(&right)?);
        let mut operator = plan.operator.instantiate(&plan.output_schema)?;
        let mut out = Vec::new();
        let time = laminar_operators::BatchTime {
            watermark_ms: i64::MIN,
            row_watermarks_ms: None,
        };
        for batch in &right_rows {
            operator.on_input_batch(1, batch, time, &mut out)?;
        }
        for batch in &left_rows {
            operator.on_input_batch(0, batch, time, &mut out)?;
        }
        operator.on_input_watermark(1, i64::MAX, &mut out)?;
        operator.on_input_watermark(0, i64::MAX, &mut out)?;
        if out.is_empty() {
            out.push(RecordBatch::new_empty(Arc::clone(&plan.output_schema)));
        }
        Ok(out)
    }

    /// Explains a failed ad-hoc query, naming sources and streams that
    /// cannot be queried.
    fn query_error(&self, e: datafusion::error::DataFusionError) -> Error {
        let message = e.strip_backtrace().to_string();
        if let Ok(catalog) = self.shared.catalog.lock() {
            let names = catalog
                .sources
                .iter()
                .map(|s| s.name.as_str())
                .chain(catalog.streams.iter().map(|s| s.name.as_str()));
            for name in names {
                if message.contains(&format!("table '{name}' not found"))
                    || message.contains(&format!(".{name}' not found"))
                {
                    return Error::new(
                        ErrorCode::Unsupported,
                        format!("'{name}' keeps no rows to query ad hoc: {message}"),
                    )
                    .with_hint(format!(
                        "create a materialized view over it: CREATE MATERIALIZED VIEW v AS SELECT ... FROM {name}"
                    ));
                }
            }
        }
        let code = if matches!(e, datafusion::error::DataFusionError::SQL(..)) {
            ErrorCode::SqlSyntax
        } else if message.contains("not found") || message.contains("No field named") {
            ErrorCode::UnknownObject
        } else {
            ErrorCode::Planning
        };
        Error::new(code, message)
    }

    /// `CREATE TABLE`: a control-plane table (any time, also while
    /// running).
    async fn create_table(
        &self,
        name: &str,
        if_not_exists: bool,
        sql: &str,
    ) -> Result<ExecuteResult> {
        let def = laminar_sql::resolve_table(&self.shared.ctx, name, sql).await?;
        let mut catalog = self.shared.catalog.lock().map_err(|_| poisoned())?;
        if catalog.name_taken(name) {
            if if_not_exists && catalog.tables.iter().any(|t| t == name) {
                return Ok(ExecuteResult::TableCreated(name.to_string()));
            }
            return Err(already_exists(name));
        }
        let mut table = Table::new(def)?;
        if let Some(storage) = &self.shared.storage {
            let (log, logged) = table_log::TableLog::open(
                &storage.tables_dir(),
                name,
                sql,
                storage.config.durability == Durability::Sync,
            )?;
            for batch in &logged {
                let batch = batch.clone().with_schema(Arc::clone(&table.def.schema))?;
                table.upsert(&batch)?;
            }
            table.log = Some(log);
        }
        // Streams plan lookup joins against the table's columns.
        register_table(&self.shared.ctx, name, Arc::clone(&table.def.schema))?;
        self.shared
            .tables
            .lock()
            .map_err(|_| poisoned())?
            .push(Arc::new(table));
        catalog.tables.push(name.to_string());
        Ok(ExecuteResult::TableCreated(name.to_string()))
    }

    /// `CREATE LOOKUP TABLE ... FROM POSTGRES (...)`: a primary-keyed table
    /// loaded now from the database, and refreshed in the background.
    async fn create_lookup_table(
        &self,
        name: &str,
        if_not_exists: bool,
        columns_sql: Option<&str>,
        (connector, options): (&str, &[(String, String)]),
        sql: &str,
    ) -> Result<ExecuteResult> {
        if connector != "postgres" && connector != "postgresql" {
            return Err(Error::new(
                ErrorCode::Unsupported,
                format!("lookup tables load from POSTGRES; '{connector}' is not supported yet"),
            ));
        }
        {
            let catalog = self.shared.catalog.lock().map_err(|_| poisoned())?;
            if catalog.name_taken(name) {
                if if_not_exists && catalog.tables.iter().any(|t| t == name) {
                    return Ok(ExecuteResult::TableCreated(name.to_string()));
                }
                return Err(already_exists(name));
            }
        }
        let lookup = lookup::PostgresLookup::from_options(options)?;
        let declared = match columns_sql {
            Some(sql) => Some(laminar_sql::resolve_table(&self.shared.ctx, name, sql).await?),
            None => None,
        };
        if declared.is_some() && !lookup.primary_key.is_empty() {
            return Err(Error::new(
                ErrorCode::InvalidConfig,
                "give the primary key either in the column list or as primary_key = '...', not both",
            ));
        }
        let (rows, loader) = lookup
            .start(declared.as_ref().map(|d| Arc::clone(&d.schema)))
            .await?;
        let mut def = match declared {
            Some(def) => def,
            None => lookup_table_def(name, &rows.schema(), &lookup.primary_key)?,
        };
        // SHOW CREATE shows the statement, never the password.
        def.sql = options
            .iter()
            .filter(|(key, value)| key == "password" && !value.is_empty())
            .fold(sql.to_string(), |text, (_, value)| {
                text.replace(&format!("'{value}'"), "'********'")
            });
        if def.primary_key.is_empty() {
            return Err(Error::new(
                ErrorCode::InvalidConfig,
                format!("lookup table '{name}' needs a primary key to be looked up by"),
            )
            .with_hint(
                "add primary_key = 'column' to the options, or PRIMARY KEY (...) to a column list",
            ));
        }
        let rows = RecordBatch::try_new(Arc::clone(&def.schema), rows.columns().to_vec()).map_err(
            |e| {
                Error::new(
                    ErrorCode::SchemaMismatch,
                    format!("lookup table '{name}': {e} (a primary-key column has NULLs?)"),
                )
            },
        )?;
        let mut table = Table::new(def)?;
        table.upsert(&rows)?;
        table.loader = Some(loader);
        let table = Arc::new(table);
        if let Some(loader) = &table.loader {
            loader.attach(&table);
        }
        let mut catalog = self.shared.catalog.lock().map_err(|_| poisoned())?;
        if catalog.name_taken(name) {
            return Err(already_exists(name));
        }
        register_table(&self.shared.ctx, name, Arc::clone(&table.def.schema))?;
        self.shared
            .tables
            .lock()
            .map_err(|_| poisoned())?
            .push(table);
        catalog.tables.push(name.to_string());
        log::info!(
            "lookup table {name}: {} rows from {}, refreshed every {}",
            rows.num_rows(),
            lookup.target,
            lookup
                .refresh
                .map_or("never".to_string(), |d| format!("{d:?}"))
        );
        Ok(ExecuteResult::TableCreated(name.to_string()))
    }

    /// `INSERT INTO`: the rows of a `VALUES` list or query, into a table
    /// (upserted by primary key) or a source (pushed like any batch, through
    /// a source handle used for this statement only, so it does not hold
    /// the source's watermark back afterwards).
    async fn insert(
        &self,
        target: &str,
        columns: Option<&[String]>,
        query: &str,
    ) -> Result<ExecuteResult> {
        let rows = self.query(query).await?;
        if let Some(table) = self.table(target) {
            let batch = tables::align(&rows, &table.def.schema, columns, target)?;
            let written = table.insert(&batch)?;
            return Ok(ExecuteResult::Inserted {
                target: target.to_string(),
                rows: written,
            });
        }
        let mut handle = self.source_untyped(target).map_err(|_| {
            Error::new(
                ErrorCode::UnknownObject,
                format!("INSERT INTO names '{target}', which is neither a source nor a table"),
            )
        })?;
        let batch = tables::align(&rows, &handle.schema(), columns, target)?;
        let written = batch.num_rows();
        if written > 0 {
            handle.push_async(batch).await?;
        }
        Ok(ExecuteResult::Inserted {
            target: target.to_string(),
            rows: written,
        })
    }

    /// `DROP TABLE`.
    fn drop_table(&self, name: &str, if_exists: bool) -> Result<ExecuteResult> {
        let mut catalog = self.shared.catalog.lock().map_err(|_| poisoned())?;
        let Some(index) = catalog.tables.iter().position(|t| t == name) else {
            if if_exists {
                return Ok(ExecuteResult::NothingToDrop(name.to_string()));
            }
            return Err(unknown(name, "table"));
        };
        let readers: Vec<&str> = catalog
            .streams
            .iter()
            .filter(|s| s.lookup_table.as_deref() == Some(name))
            .map(|s| s.name.as_str())
            .collect();
        if !readers.is_empty() {
            return Err(Error::new(
                ErrorCode::InUse,
                format!("'{name}' is read by {}", readers.join(", ")),
            )
            .with_hint("drop those first"));
        }
        if let Some(storage) = &self.shared.storage {
            table_log::TableLog::remove(&storage.tables_dir(), name)?;
        }
        catalog.tables.remove(index);
        let _ = self.shared.ctx.deregister_table(name);
        self.shared
            .tables
            .lock()
            .map_err(|_| poisoned())?
            .retain(|t| t.def.name != name);
        Ok(ExecuteResult::Dropped(name.to_string()))
    }

    fn table(&self, name: &str) -> Option<Arc<Table>> {
        self.shared
            .tables
            .lock()
            .ok()?
            .iter()
            .find(|t| t.def.name == name)
            .cloned()
    }

    /// `DESCRIBE name`: one row per column.
    fn describe(&self, name: &str) -> Result<Vec<RecordBatch>> {
        use arrow::array::{BooleanArray, StringArray};
        let catalog = self.shared.catalog.lock().map_err(|_| poisoned())?;
        let schema = catalog
            .sources
            .iter()
            .find(|s| s.name == name)
            .map(|s| Arc::clone(&s.schema))
            .or_else(|| {
                catalog
                    .streams
                    .iter()
                    .find(|s| s.name == name)
                    .map(|s| Arc::clone(&s.output_schema))
            })
            .or_else(|| self.table(name).map(|t| Arc::clone(&t.def.schema)))
            .ok_or_else(|| unknown(name, "source, stream or table"))?;
        let fields = schema.fields();
        Ok(vec![RecordBatch::try_from_iter(vec![
            (
                "column",
                Arc::new(StringArray::from_iter_values(
                    fields.iter().map(|f| f.name().as_str()),
                )) as _,
            ),
            (
                "type",
                Arc::new(StringArray::from_iter_values(
                    fields.iter().map(|f| f.data_type().to_string()),
                )) as _,
            ),
            (
                "nullable",
                Arc::new(BooleanArray::from_iter(
                    fields.iter().map(|f| Some(f.is_nullable())),
                )) as _,
            ),
        ])?])
    }

    /// `SHOW CREATE ... name`: the statement that made it.
    fn show_create(&self, name: &str) -> Result<Vec<RecordBatch>> {
        use arrow::array::StringArray;
        let catalog = self.shared.catalog.lock().map_err(|_| poisoned())?;
        let sql = catalog
            .sources
            .iter()
            .find(|s| s.name == name)
            .map(|s| s.sql.clone())
            .or_else(|| {
                catalog
                    .streams
                    .iter()
                    .find(|s| s.name == name)
                    .map(|s| s.sql.clone())
            })
            .or_else(|| self.table(name).map(|t| t.def.sql.clone()))
            .ok_or_else(|| unknown(name, "source, stream or table"))?;
        Ok(vec![RecordBatch::try_from_iter(vec![
            ("name", Arc::new(StringArray::from(vec![name])) as _),
            ("sql", Arc::new(StringArray::from(vec![sql])) as _),
        ])?])
    }

    /// `EXPLAIN ANALYZE name`: the plan's counters, one row per shard.
    fn explain_analyze(&self, name: &str) -> Result<Vec<RecordBatch>> {
        use arrow::array::{StringArray, UInt64Array};
        use std::sync::atomic::Ordering::Relaxed;
        let plan = self.explain(name)?;
        let pipeline = self.shared.pipeline.get().ok_or_else(|| {
            Error::new(
                ErrorCode::NotRunning,
                "EXPLAIN ANALYZE needs a started pipeline",
            )
            .with_hint("use EXPLAIN before db.start()")
        })?;
        let stream = pipeline
            .streams
            .iter()
            .position(|s| s.name == name)
            .ok_or_else(|| unknown(name, "stream"))?;
        let counters: Vec<_> = pipeline
            .counters
            .iter()
            .map(|c| &c.streams[stream])
            .collect();
        let column = |f: &dyn Fn(&metrics::StreamCounters) -> u64| -> arrow::array::ArrayRef {
            Arc::new(UInt64Array::from_iter_values(counters.iter().map(|c| f(c))))
        };
        // Bucket upper bounds (powers of two ns) of the timed calls:
        // batches sampled 1 in 16, every watermark call.
        let quantile = |q: f64| -> arrow::array::ArrayRef {
            Arc::new(arrow::array::Float64Array::from_iter_values(
                counters.iter().map(|c| c.call_quantile_us(q)),
            ))
        };
        let placements = &self.shared.placements;
        Ok(vec![RecordBatch::try_from_iter(vec![
            (
                "shard",
                Arc::new(UInt64Array::from_iter_values(0..placements.len() as u64)) as _,
            ),
            (
                "cpu",
                Arc::new(UInt64Array::from_iter_values(
                    placements.iter().map(|p| p.cpu as u64),
                )) as _,
            ),
            (
                "numa_node",
                Arc::new(UInt64Array::from_iter_values(
                    placements.iter().map(|p| p.numa_node as u64),
                )) as _,
            ),
            ("rows_in", column(&|c| c.rows_in.load(Relaxed))),
            ("rows_out", column(&|c| c.rows_out.load(Relaxed))),
            ("late_rows", column(&|c| c.late_rows.load(Relaxed))),
            ("operator_calls", column(&|c| c.calls.load(Relaxed))),
            ("busy_us", column(&|c| c.busy_ns.load(Relaxed) / 1_000)),
            ("call_p50_us", quantile(0.5)),
            ("call_p99_us", quantile(0.99)),
            ("call_max_us", quantile(1.0)),
            ("state_bytes", column(&|c| c.state_bytes.load(Relaxed))),
            (
                "plan",
                Arc::new(StringArray::from_iter_values(
                    placements.iter().map(|_| plan.as_str()),
                )) as _,
            ),
        ])?])
    }

    /// `DROP ...`: before start only, and only when nothing reads it.
    fn drop_object(&self, kind: DropKind, name: &str, if_exists: bool) -> Result<ExecuteResult> {
        let mut catalog = self.shared.catalog.lock().map_err(|_| poisoned())?;
        if catalog.started {
            return Err(Error::new(
                ErrorCode::AlreadyStarted,
                format!("cannot drop '{name}' from a running pipeline"),
            )
            .with_hint(
                "changing a running pipeline is not supported yet: drop before db.start()",
            ));
        }
        let source = catalog.sources.iter().position(|s| s.name == name);
        let stream = catalog.streams.iter().position(|s| s.name == name);
        let found = match (kind, source, stream) {
            (DropKind::Source, Some(i), _) => Some((true, i)),
            (DropKind::Stream, _, Some(i)) if !catalog.materialized[i] => Some((false, i)),
            (DropKind::MaterializedView, _, Some(i)) if catalog.materialized[i] => Some((false, i)),
            (DropKind::Table, _, _) => unreachable!("DROP TABLE is handled by drop_table"),
            (_, None, None) => None,
            _ => {
                return Err(Error::new(
                    ErrorCode::UnknownObject,
                    format!(
                        "'{name}' is not a {}",
                        match kind {
                            DropKind::Source => "source",
                            DropKind::Stream => "stream",
                            DropKind::MaterializedView => "materialized view",
                            DropKind::Table => "table",
                        }
                    ),
                )
                .with_hint("use DROP SOURCE, DROP STREAM or DROP MATERIALIZED VIEW as fits"))
            }
        };
        let Some((is_source, index)) = found else {
            if if_exists {
                return Ok(ExecuteResult::NothingToDrop(name.to_string()));
            }
            return Err(unknown(name, "source or stream"));
        };
        // Its parts (its late side output, the stages of its query) go
        // with it.
        let parts: Vec<String> = catalog
            .streams
            .iter()
            .filter(|s| !is_source && s.part_of.as_deref() == Some(name))
            .map(|s| s.name.clone())
            .collect();
        let going = |n: &str| n == name || parts.iter().any(|p| p == n);
        let dependents: Vec<String> = catalog
            .streams
            .iter()
            .filter(|s| !going(&s.name))
            .filter(|s| {
                std::iter::once(&s.input)
                    .chain(s.right_input.as_ref().map(|(input, _)| input))
                    .any(|input| match input {
                        StreamInput::Source(input) => is_source && input == name,
                        StreamInput::Stream(input) | StreamInput::LateOf(input) => {
                            !is_source && going(input)
                        }
                    })
            })
            .map(|s| s.name.clone())
            .collect();
        if !dependents.is_empty() {
            return Err(Error::new(
                ErrorCode::InUse,
                format!("'{name}' is read by {}", dependents.join(", ")),
            )
            .with_hint("drop those first"));
        }
        if is_source {
            catalog.sources.remove(index);
        } else {
            let mut doomed = vec![index];
            doomed.extend(
                catalog
                    .streams
                    .iter()
                    .enumerate()
                    .filter(|(_, s)| parts.contains(&s.name))
                    .map(|(i, _)| i),
            );
            doomed.sort_unstable();
            for &i in doomed.iter().rev() {
                let removed = catalog.streams.remove(i);
                catalog.materialized.remove(i);
                catalog.retained_outputs.retain(|n| *n != removed.name);
                let _ = self.shared.ctx.deregister_table(removed.name.as_str());
                // Subscriptions taken before start follow their stream.
                let pending = std::mem::take(&mut catalog.pending_outputs);
                catalog.pending_outputs = pending
                    .into_iter()
                    .filter(|(stream, _)| *stream != i)
                    .map(|(stream, rings)| (if stream > i { stream - 1 } else { stream }, rings))
                    .collect();
            }
        }
        let _ = self.shared.ctx.deregister_table(name);
        Ok(ExecuteResult::Dropped(name.to_string()))
    }

    /// `SHOW ...` as rows.
    fn show(&self, what: ShowWhat) -> Result<Vec<RecordBatch>> {
        use arrow::array::StringArray;
        let catalog = self.shared.catalog.lock().map_err(|_| poisoned())?;
        let batch = match what {
            ShowWhat::Sources => {
                let columns = catalog.sources.iter().map(|s| {
                    s.schema
                        .fields()
                        .iter()
                        .map(|f| format!("{} {}", f.name(), f.data_type()))
                        .collect::<Vec<_>>()
                        .join(", ")
                });
                let watermarks = catalog.sources.iter().map(|s| {
                    s.watermark
                        .as_ref()
                        .map(|w| format!("{} - {} ms", w.column, w.bound_ms))
                });
                RecordBatch::try_from_iter(vec![
                    (
                        "name",
                        Arc::new(StringArray::from_iter_values(
                            catalog.sources.iter().map(|s| s.name.as_str()),
                        )) as _,
                    ),
                    (
                        "columns",
                        Arc::new(StringArray::from_iter_values(columns)) as _,
                    ),
                    (
                        "watermark",
                        Arc::new(watermarks.collect::<StringArray>()) as _,
                    ),
                ])?
            }
            ShowWhat::Tables => {
                let tables: Vec<Arc<Table>> =
                    self.shared.tables.lock().map_err(|_| poisoned())?.clone();
                let keys = tables.iter().map(|t| {
                    t.def
                        .primary_key
                        .iter()
                        .map(|&i| t.def.schema.field(i).name().as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                });
                RecordBatch::try_from_iter(vec![
                    (
                        "name",
                        Arc::new(StringArray::from_iter_values(
                            tables.iter().map(|t| t.def.name.as_str()),
                        )) as _,
                    ),
                    (
                        "primary_key",
                        Arc::new(StringArray::from_iter_values(keys)) as _,
                    ),
                ])?
            }
            ShowWhat::Sinks => RecordBatch::try_from_iter(vec![
                ("name", Arc::new(StringArray::from(Vec::<&str>::new())) as _),
                (
                    "connector",
                    Arc::new(StringArray::from(Vec::<&str>::new())) as _,
                ),
            ])?,
            ShowWhat::Streams | ShowWhat::MaterializedViews => {
                let rows: Vec<(&StreamPlan, bool)> = catalog
                    .streams
                    .iter()
                    .zip(catalog.materialized.iter().copied())
                    .filter(|(_, m)| *m || what == ShowWhat::Streams)
                    .collect();
                RecordBatch::try_from_iter(vec![
                    (
                        "name",
                        Arc::new(StringArray::from_iter_values(
                            rows.iter().map(|(p, _)| p.name.as_str()),
                        )) as _,
                    ),
                    (
                        "kind",
                        Arc::new(StringArray::from_iter_values(rows.iter().map(|(_, m)| {
                            if *m {
                                "materialized view"
                            } else {
                                "stream"
                            }
                        }))) as _,
                    ),
                    (
                        "input",
                        Arc::new(StringArray::from_iter_values(
                            rows.iter().map(|(p, _)| p.input.to_string()),
                        )) as _,
                    ),
                    (
                        "plan",
                        Arc::new(StringArray::from_iter_values(
                            rows.iter().map(|(p, _)| p.explain.as_str()),
                        )) as _,
                    ),
                ])?
            }
        };
        Ok(vec![batch])
    }

    /// Counters summed over shards.
    pub fn metrics(&self) -> Metrics {
        use std::sync::atomic::Ordering::Relaxed;
        let lookup_tables = self
            .shared
            .tables
            .lock()
            .map(|tables| {
                tables
                    .iter()
                    .filter_map(|table| {
                        let counters = &table.loader.as_ref()?.counters;
                        Some(metrics::LookupTableMetrics {
                            name: table.def.name.clone(),
                            refreshes: counters.refreshes.load(Relaxed),
                            refresh_failures: counters.failures.load(Relaxed),
                        })
                    })
                    .collect()
            })
            .unwrap_or_default();
        let Some(pipeline) = self.shared.pipeline.get() else {
            return Metrics {
                lookup_tables,
                ..Metrics::default()
            };
        };
        let mut metrics = Metrics {
            lookup_tables,
            shard_batches: pipeline
                .counters
                .iter()
                .map(|c| c.batches.load(Relaxed))
                .sum(),
            shard_queue_depth: pipeline
                .counters
                .iter()
                .map(|c| c.queue_depth.load(Relaxed))
                .collect(),
            streams: Vec::new(),
            sources: pipeline
                .sources
                .iter()
                .enumerate()
                .map(|(i, source)| metrics::SourceMetrics {
                    name: source.name.clone(),
                    watermark_ms: pipeline
                        .counters
                        .iter()
                        .map(|c| c.watermarks[i].load(Relaxed))
                        .min()
                        .filter(|&w| w != i64::MIN),
                    rows: pipeline
                        .counters
                        .iter()
                        .map(|c| c.source_rows[i].load(Relaxed))
                        .sum(),
                })
                .collect(),
            wal: metrics::WalMetrics::default(),
            checkpoints: {
                let c = &pipeline.checkpoint_counters;
                metrics::CheckpointMetrics {
                    completed: c.completed.load(Relaxed),
                    failed: c.failed.load(Relaxed),
                    last_epoch: c.last_epoch.load(Relaxed),
                    last_duration_us: c.last_duration_us.load(Relaxed),
                    last_bytes: c.last_bytes.load(Relaxed),
                    last_patched_files: c.last_patched_files.load(Relaxed),
                    last_files: c.last_files.load(Relaxed),
                    marker_waits: pipeline
                        .counters
                        .iter()
                        .map(|c| c.marker_waits.load(Relaxed))
                        .sum(),
                }
            },
        };
        let mut cumulative = 0;
        for (b, &bound) in metrics::WAL_SYNC_BUCKETS_US.iter().enumerate() {
            cumulative += pipeline
                .counters
                .iter()
                .map(|c| c.wal.buckets[b].load(Relaxed))
                .sum::<u64>();
            metrics.wal.sync_buckets.push((bound, cumulative));
        }
        for c in &pipeline.counters {
            metrics.wal.syncs += c.wal.syncs.load(Relaxed);
            metrics.wal.sync_ns += c.wal.sync_ns.load(Relaxed);
        }
        for (i, stream) in pipeline.streams.iter().enumerate() {
            let mut m = StreamMetrics {
                name: stream.name.clone(),
                ..Default::default()
            };
            for c in &pipeline.counters {
                m.rows_in += c.streams[i].rows_in.load(Relaxed);
                m.rows_out += c.streams[i].rows_out.load(Relaxed);
                m.late_rows += c.streams[i].late_rows.load(Relaxed);
                m.state_bytes += c.streams[i].state_bytes.load(Relaxed);
            }
            metrics.streams.push(m);
        }
        metrics
    }

    /// Errors raised while running (e.g. an expression that failed on some
    /// rows). The batch that failed is skipped for that stream; the first
    /// few errors are kept here.
    pub fn errors(&self) -> Vec<Error> {
        self.shared
            .pipeline
            .get()
            .and_then(|p| p.errors.lock().ok().map(|e| e.clone()))
            .unwrap_or_default()
    }

    /// Names of the sources.
    pub fn sources(&self) -> Vec<String> {
        self.shared
            .catalog
            .lock()
            .map(|c| c.sources.iter().map(|s| s.name.clone()).collect())
            .unwrap_or_default()
    }

    /// Names of the streams, in creation order.
    pub fn streams(&self) -> Vec<String> {
        self.shared
            .catalog
            .lock()
            .map(|c| c.streams.iter().map(|s| s.name.clone()).collect())
            .unwrap_or_default()
    }

    /// Names of the tables and lookup tables, in creation order.
    pub fn tables(&self) -> Vec<String> {
        self.shared
            .catalog
            .lock()
            .map(|c| c.tables.clone())
            .unwrap_or_default()
    }

    /// The output schema of a stream.
    pub fn stream_schema(&self, name: &str) -> Result<SchemaRef> {
        let catalog = self.shared.catalog.lock().map_err(|_| poisoned())?;
        catalog
            .streams
            .iter()
            .find(|s| s.name == name)
            .map(|s| Arc::clone(&s.output_schema))
            .ok_or_else(|| unknown(name, "stream"))
    }

    /// How a stream runs: operator, window, key routing, and the shards
    /// (CPU and NUMA node) it runs on.
    pub fn explain(&self, name: &str) -> Result<String> {
        let catalog = self.shared.catalog.lock().map_err(|_| poisoned())?;
        let plan = catalog
            .streams
            .iter()
            .find(|s| s.name == name)
            .map(|s| format!("{}\n{}", s.explain, s.explain_jit()))
            .ok_or_else(|| unknown(name, "stream"))?;
        let shards: Vec<String> = self
            .shared
            .placements
            .iter()
            .map(|p| format!("shard {} on cpu {} (node {})", p.shard, p.cpu, p.numa_node))
            .collect();
        Ok(format!(
            "{plan}\non {} shard(s): {}",
            shards.len(),
            shards.join(", ")
        ))
    }
}

/// Formats batches as a text table (for printing query results).
pub fn pretty(batches: &[RecordBatch]) -> Result<String> {
    Ok(arrow::util::pretty::pretty_format_batches(batches)?.to_string())
}

/// A lookup table's definition from its query's columns and the
/// `primary_key` option (those columns NOT NULL).
fn lookup_table_def(
    name: &str,
    schema: &arrow::datatypes::SchemaRef,
    primary_key: &[String],
) -> Result<laminar_sql::TableDef> {
    let mut key = Vec::with_capacity(primary_key.len());
    for column in primary_key {
        let index = schema
            .fields()
            .iter()
            .position(|f| f.name().eq_ignore_ascii_case(column))
            .ok_or_else(|| {
                Error::new(
                    ErrorCode::UnknownObject,
                    format!(
                        "primary_key column '{column}' is not among the lookup query's columns"
                    ),
                )
            })?;
        key.push(index);
    }
    let fields: Vec<arrow::datatypes::FieldRef> = schema
        .fields()
        .iter()
        .enumerate()
        .map(|(i, f)| Arc::new(f.as_ref().clone().with_nullable(!key.contains(&i))))
        .collect();
    Ok(laminar_sql::TableDef {
        name: name.to_string(),
        schema: Arc::new(arrow::datatypes::Schema::new(fields)),
        primary_key: key,
        sql: String::new(),
    })
}

/// The text of a parsed statement, when it keeps it.
fn statement_text(statement: &Statement) -> Option<&str> {
    match statement {
        Statement::CreateSource(syntax) => Some(&syntax.sql),
        Statement::CreateStream(def) => Some(&def.sql),
        Statement::Query(text) => Some(text),
        Statement::CreateTable { sql, .. }
        | Statement::CreateLookupTable { sql, .. }
        | Statement::Insert { sql, .. } => Some(sql),
        Statement::Drop { .. }
        | Statement::Show(_)
        | Statement::Explain { .. }
        | Statement::Describe(_)
        | Statement::ShowCreate(_) => None,
    }
}

/// A stream's schema as an ad-hoc query sees its view: without `_weight`.
fn visible_schema(schema: &SchemaRef) -> SchemaRef {
    match schema.fields().last() {
        Some(f) if f.name() == laminar_operators::WEIGHT_COLUMN => Arc::new(
            arrow::datatypes::Schema::new(schema.fields()[..schema.fields().len() - 1].to_vec()),
        ),
        _ => Arc::clone(schema),
    }
}

fn unknown(name: &str, what: &str) -> Error {
    Error::new(ErrorCode::UnknownObject, format!("unknown {what} '{name}'"))
}

fn already_exists(name: &str) -> Error {
    Error::new(
        ErrorCode::AlreadyExists,
        format!("a source or stream named '{name}' already exists"),
    )
}

/// Takes a checkpoint every `interval` until the pipeline stops.
fn spawn_checkpoints(
    pipeline: Arc<Pipeline>,
    dir: std::path::PathBuf,
    interval: Duration,
) -> Result<()> {
    // Weak, so a database dropped without shutdown lets its pipeline go
    // (and this thread with it).
    let periodic = Arc::downgrade(&pipeline);
    let thread = std::thread::Builder::new()
        .name("laminar-checkpoints".into())
        .spawn(move || {
            let mut next = std::time::Instant::now() + interval;
            // After failures the next try waits longer (up to a minute),
            // so a lasting fault (a full disk) is not retried in a loop.
            let mut wait = interval;
            loop {
                let Some(pipeline) = periodic.upgrade() else {
                    return;
                };
                let stopped = || pipeline.stopped.load(std::sync::atomic::Ordering::Acquire);
                if stopped() {
                    return;
                }
                // Short naps, so a stopped pipeline lets the thread go.
                let now = std::time::Instant::now();
                if now < next {
                    drop(pipeline);
                    std::thread::sleep((next - now).min(Duration::from_millis(20)));
                    continue;
                }
                match checkpoint::take(&pipeline, &dir) {
                    Ok(_) => wait = interval,
                    Err(e) => {
                        if !stopped() {
                            log::warn!("periodic checkpoint failed: {e}");
                        }
                        wait = (wait * 2).min(interval.max(Duration::from_secs(60)));
                    }
                }
                next = std::time::Instant::now() + wait;
            }
        })
        .map_err(|e| {
            Error::new(
                ErrorCode::RuntimeStart,
                format!("cannot spawn a thread: {e}"),
            )
        })?;
    *pipeline.checkpoint_thread.lock().map_err(|_| poisoned())? = Some(thread);
    Ok(())
}

/// Replays each shard's WAL on a thread of its own, then opens the
/// pipeline's `replayed` latch (with the first error, if any).
fn spawn_replay(
    pipeline: Arc<Pipeline>,
    recovery: Arc<storage::Recovery>,
    dirs: Vec<std::path::PathBuf>,
    shapes: storage::SourceShapes,
) -> Result<()> {
    let spawn_error = |e: std::io::Error| {
        Error::new(
            ErrorCode::RuntimeStart,
            format!("cannot spawn a thread: {e}"),
        )
    };
    let shapes = Arc::new(shapes);
    let mut workers = Vec::with_capacity(dirs.len());
    for (shard, dir) in dirs.into_iter().enumerate() {
        let (pipeline, recovery, shapes) = (
            Arc::clone(&pipeline),
            Arc::clone(&recovery),
            Arc::clone(&shapes),
        );
        workers.push(
            std::thread::Builder::new()
                .name(format!("laminar-replay-{shard}"))
                .spawn(move || storage::replay_shard(&pipeline, &recovery, &dir, shard, &shapes))
                .map_err(spawn_error)?,
        );
    }
    std::thread::Builder::new()
        .name("laminar-replay".into())
        .spawn(move || {
            let mut result = Ok(());
            for worker in workers {
                let outcome = worker.join().unwrap_or_else(|_| {
                    Err(Error::new(ErrorCode::Execution, "a replay thread panicked"))
                });
                if result.is_ok() {
                    result = outcome;
                }
            }
            if let Err(e) = &result {
                log::error!("recovery failed: {e}");
                if let Ok(mut errors) = pipeline.errors.lock() {
                    errors.push(e.clone());
                }
            }
            pipeline.replayed.open(result);
        })
        .map_err(spawn_error)?;
    Ok(())
}
