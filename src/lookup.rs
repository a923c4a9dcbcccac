//! Lookup tables loaded from PostgreSQL: `CREATE LOOKUP TABLE ... FROM
//! POSTGRES (...)`.
//!
//! The table is an ordinary primary-keyed table (ad-hoc queries read it,
//! lookup joins replicate it to every shard) whose rows come from a query
//! against PostgreSQL instead of `INSERT`. A loader thread of its own (with
//! a small tokio runtime, since the client is tokio-based and the library
//! does not require one) runs the query when the table is created and then
//! every `refresh_interval`; each result replaces the table's rows as a
//! whole, so rows deleted in PostgreSQL disappear too. A failed refresh
//! keeps the previous rows and logs a warning; the next one retries.
//!
//! Values travel as text (the simple query protocol) and are cast to the
//! column types strictly: a value that does not convert fails the load.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Weak};
use std::time::Duration;

use arrow::array::{ArrayRef, RecordBatch, StringArray};
use arrow::compute::CastOptions;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use laminar_runtime::{Error, ErrorCode, Result};

use crate::tables::Table;

/// Refresh period when the statement gives none.
pub(crate) const DEFAULT_REFRESH: Duration = Duration::from_secs(60);

/// A lookup table's connection and query.
#[derive(Clone)]
pub(crate) struct PostgresLookup {
    config: tokio_postgres::Config,
    query: String,
    /// `None`: loaded once, never refreshed.
    pub refresh: Option<Duration>,
    /// Primary-key column names, when the statement has no column list.
    pub primary_key: Vec<String>,
    /// Where to connect, for messages (never the password).
    pub target: String,
}

fn config_error(message: impl Into<String>) -> Error {
    Error::new(ErrorCode::InvalidConfig, message)
        .with_hint("see 'Lookup tables from PostgreSQL' in docs/SQL_REFERENCE.md")
}

fn unavailable(target: &str, e: impl std::fmt::Display) -> Error {
    Error::new(
        ErrorCode::ExternalUnavailable,
        format!("PostgreSQL at {target}: {e}"),
    )
}

impl PostgresLookup {
    /// Reads the statement's options.
    pub fn from_options(options: &[(String, String)]) -> Result<Self> {
        let mut config = tokio_postgres::Config::new();
        config.connect_timeout(Duration::from_secs(10));
        // Text values of timestamps with time zone come back in UTC.
        config.options("-c TimeZone=UTC");
        let mut host = None;
        let mut port = 5432u16;
        let mut database = None;
        let mut query = None;
        let mut refresh = Some(DEFAULT_REFRESH);
        let mut primary_key = Vec::new();
        for (key, value) in options {
            match key.as_str() {
                "hostname" | "host" => host = Some(value.clone()),
                "port" => {
                    port = value
                        .parse()
                        .map_err(|_| config_error(format!("port '{value}' is not a port number")))?
                }
                "database" | "dbname" => database = Some(value.clone()),
                "user" | "username" => {
                    config.user(value);
                }
                "password" => {
                    config.password(value);
                }
                "query" => query = Some(value.clone()),
                "table" => query = Some(format!("SELECT * FROM {value}")),
                "refresh_interval" => {
                    refresh = match laminar_sql::dialect::duration_ms(value) {
                        Some(0) => None,
                        Some(ms) if ms > 0 => Some(Duration::from_millis(ms as u64)),
                        _ => {
                            return Err(config_error(format!(
                                "refresh_interval '{value}' is not a duration ('30 s', '5 min', '0' for never)"
                            )))
                        }
                    }
                }
                "connect_timeout" => {
                    let timeout = laminar_sql::dialect::duration_ms(value)
                        .filter(|&ms| ms > 0)
                        .ok_or_else(|| {
                            config_error(format!("connect_timeout '{value}' is not a duration"))
                        })?;
                    config.connect_timeout(Duration::from_millis(timeout as u64));
                }
                "primary_key" => {
                    primary_key = value.split(',').map(|c| c.trim().to_string()).collect()
                }
                other => {
                    return Err(config_error(format!(
                        "unknown option '{other}' for FROM POSTGRES"
                    )))
                }
            }
        }
        let host = host.ok_or_else(|| config_error("FROM POSTGRES needs hostname = '...'"))?;
        let database =
            database.ok_or_else(|| config_error("FROM POSTGRES needs database = '...'"))?;
        let query = query.ok_or_else(|| {
            config_error("FROM POSTGRES needs query = 'SELECT ...' (or table = 'name')")
        })?;
        config.host(&host).port(port).dbname(&database);
        Ok(Self {
            config,
            query,
            refresh,
            primary_key,
            target: format!("{host}:{port}/{database}"),
        })
    }

    /// Runs the query once: its rows as a batch of `schema`, or, without
    /// one, of the types PostgreSQL reports.
    async fn load(&self, schema: Option<&SchemaRef>) -> Result<RecordBatch> {
        let (client, connection) = self
            .config
            .connect(tokio_postgres::NoTls)
            .await
            .map_err(|e| unavailable(&self.target, e))?;
        let connection = tokio::spawn(connection);
        let result = self.fetch(&client, schema).await;
        drop(client);
        let _ = connection.await;
        result
    }

    async fn fetch(
        &self,
        client: &tokio_postgres::Client,
        schema: Option<&SchemaRef>,
    ) -> Result<RecordBatch> {
        let statement = client
            .prepare(&self.query)
            .await
            .map_err(|e| query_error(&self.target, &e))?;
        let columns = statement.columns();
        let schema = match schema {
            Some(schema) => {
                if schema.fields().len() != columns.len() {
                    return Err(Error::new(
                        ErrorCode::SchemaMismatch,
                        format!(
                            "the lookup query returns {} columns, the table declares {}",
                            columns.len(),
                            schema.fields().len()
                        ),
                    ));
                }
                Arc::clone(schema)
            }
            None => Arc::new(Schema::new(
                columns
                    .iter()
                    .map(|c| Ok(Field::new(c.name(), arrow_type(c.name(), c.type_())?, true)))
                    .collect::<Result<Vec<_>>>()?,
            )),
        };
        let messages = client
            .simple_query(&self.query)
            .await
            .map_err(|e| query_error(&self.target, &e))?;
        let mut text: Vec<Vec<Option<String>>> = vec![Vec::new(); columns.len()];
        for message in messages {
            if let tokio_postgres::SimpleQueryMessage::Row(row) = message {
                for (c, values) in text.iter_mut().enumerate() {
                    values.push(row.get(c).map(str::to_string));
                }
            }
        }
        let strict = CastOptions {
            safe: false,
            ..Default::default()
        };
        let arrays = text
            .into_iter()
            .zip(schema.fields())
            .map(|(values, field)| {
                let strings: ArrayRef = Arc::new(StringArray::from(values));
                arrow::compute::cast_with_options(&strings, field.data_type(), &strict).map_err(
                    |e| {
                        Error::new(
                            ErrorCode::SchemaMismatch,
                            format!(
                                "lookup column '{}': a value does not convert to {}: {e}",
                                field.name(),
                                field.data_type()
                            ),
                        )
                    },
                )
            })
            .collect::<Result<Vec<_>>>()?;
        RecordBatch::try_new(schema, arrays).map_err(|e| {
            Error::new(
                ErrorCode::SchemaMismatch,
                format!("the lookup query's rows do not fit the table: {e}"),
            )
        })
    }

    /// Loads the table's first rows on a loader thread of its own, which
    /// then refreshes the table every `refresh` until the table is
    /// dropped. The first load's result comes back before this returns.
    pub async fn start(&self, schema: Option<SchemaRef>) -> Result<(RecordBatch, Loader)> {
        let (first_tx, first_rx) = futures::channel::oneshot::channel();
        let (attach_tx, attach_rx) = std::sync::mpsc::channel::<Weak<Table>>();
        let lookup = self.clone();
        let counters = Arc::new(RefreshCounters::default());
        let loader_counters = Arc::clone(&counters);
        std::thread::Builder::new()
            .name("laminar-lookup".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime,
                    Err(e) => {
                        let _ = first_tx.send(Err(Error::new(
                            ErrorCode::RuntimeStart,
                            format!("cannot start the lookup loader: {e}"),
                        )));
                        return;
                    }
                };
                let first = runtime.block_on(lookup.load(schema.as_ref()));
                let ok = first.is_ok();
                let _ = first_tx.send(first);
                if ok {
                    lookup.refresh_loop(&runtime, attach_rx, &loader_counters);
                }
            })
            .map_err(|e| {
                Error::new(
                    ErrorCode::RuntimeStart,
                    format!("cannot start the lookup loader: {e}"),
                )
            })?;
        let first = first_rx
            .await
            .map_err(|_| Error::new(ErrorCode::Execution, "the lookup loader stopped"))??;
        Ok((
            first,
            Loader {
                attach: attach_tx,
                counters,
            },
        ))
    }

    fn refresh_loop(
        &self,
        runtime: &tokio::runtime::Runtime,
        attach: Receiver<Weak<Table>>,
        counters: &RefreshCounters,
    ) {
        // The table, once created; the loader ends when it is dropped (its
        // end of the channel goes with it).
        let Ok(table) = attach.recv() else {
            return;
        };
        let Some(every) = self.refresh else {
            let _ = attach.recv();
            return;
        };
        loop {
            match attach.recv_timeout(every) {
                Err(RecvTimeoutError::Timeout) => {}
                Ok(_) | Err(RecvTimeoutError::Disconnected) => return,
            }
            let Some(table) = table.upgrade() else {
                return;
            };
            // The table's own schema: its key columns are NOT NULL.
            let refreshed = runtime
                .block_on(self.load(Some(&table.def.schema)))
                .and_then(|rows| table.replace_all(&rows));
            match refreshed {
                Ok(()) => counters.refreshes.fetch_add(1, Ordering::Relaxed),
                Err(e) => {
                    log::warn!(
                        "lookup table {}: refresh failed, keeping the previous rows: {e}",
                        table.def.name
                    );
                    counters.failures.fetch_add(1, Ordering::Relaxed)
                }
            };
        }
    }
}

/// Refreshes of a lookup table since it was created.
#[derive(Debug, Default)]
pub(crate) struct RefreshCounters {
    /// Refreshes that replaced the table's rows.
    pub refreshes: AtomicU64,
    /// Refreshes that failed (database unreachable, a query or type
    /// error): the table kept its previous rows.
    pub failures: AtomicU64,
}

/// The control plane's end of a loader thread: hand it the table; drop
/// it (with the table) to stop the thread.
pub(crate) struct Loader {
    attach: Sender<Weak<Table>>,
    pub counters: Arc<RefreshCounters>,
}

impl Loader {
    pub fn attach(&self, table: &Arc<Table>) {
        let _ = self.attach.send(Arc::downgrade(table));
    }
}

fn query_error(target: &str, e: &tokio_postgres::Error) -> Error {
    match e.as_db_error() {
        Some(db) => Error::new(
            ErrorCode::InvalidInput,
            format!(
                "PostgreSQL at {target} refused the lookup query: {}",
                db.message()
            ),
        ),
        None => unavailable(target, e),
    }
}

/// The Arrow type a PostgreSQL column is loaded as.
fn arrow_type(column: &str, pg: &tokio_postgres::types::Type) -> Result<DataType> {
    use tokio_postgres::types::Type;
    Ok(match *pg {
        Type::BOOL => DataType::Boolean,
        Type::INT2 => DataType::Int16,
        Type::INT4 => DataType::Int32,
        Type::INT8 => DataType::Int64,
        Type::FLOAT4 => DataType::Float32,
        Type::FLOAT8 => DataType::Float64,
        Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME => DataType::Utf8,
        Type::DATE => DataType::Date32,
        Type::TIMESTAMP => DataType::Timestamp(TimeUnit::Microsecond, None),
        Type::TIMESTAMPTZ => DataType::Timestamp(TimeUnit::Microsecond, Some("+00:00".into())),
        _ => return Err(Error::new(
            ErrorCode::SchemaMismatch,
            format!("lookup column '{column}' has PostgreSQL type {pg}, which is not supported"),
        )
        .with_hint(
            "cast it in the query (e.g. price::float8, id::text), or declare the table's columns",
        )),
    })
}
