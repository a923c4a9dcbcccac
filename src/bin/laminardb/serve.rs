//! `laminardb serve`: the engine as a daemon, with an HTTP API.
//!
//! | route | what |
//! |---|---|
//! | `GET /health` | 200 while the process runs (no token needed) |
//! | `GET /ready` | 200 once pipelines run and recovery replayed the WAL, else 503 |
//! | `GET /metrics` | Prometheus text: per-stream rows in/out, late rows, state bytes |
//! | `POST /sources/{name}` | body: JSON lines, one row each; accepted whole (one push) or not at all |
//! | `POST /query` | body: SQL; rows as a JSON array (an Arrow IPC stream with `Accept: application/vnd.apache.arrow.stream`), or what the statement did |
//! | `GET /streams/{name}` | the stream's results from now on, as JSON lines, until the client leaves |
//! | `GET /ws/streams/{name}` | the same over a WebSocket: one text message (a JSON array of rows) per result batch |
//!
//! With a token in the config, every route but `/health` needs
//! `Authorization: Bearer <token>`. SIGTERM or SIGINT stops taking
//! requests, drains the shards (everything accepted is processed) and
//! exits 0.
//!
//! Under systemd (`Type=notify`), the server sends `READY=1` once it is
//! ready, `STOPPING=1` when it starts to stop, and `WATCHDOG=1` at half the
//! unit's `WatchdogSec` while it runs (`deploy/systemd/`).

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path as UrlPath, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use laminar_db::{Backpressure, Error, ErrorCode, ExecuteResult, LaminarDB, Result, SourceHandle};

use crate::config::Config;

/// Result batches a tailing client may fall behind by before it is cut
/// off (so a slow client never holds the shards back).
const TAIL_BATCHES: usize = 1024;

/// Rows per decoded chunk (a request is pushed as one batch).
const BATCH_ROWS: usize = 8192;
/// The largest request body taken (64 MiB).
const MAX_BODY_BYTES: usize = 64 << 20;

struct App {
    db: LaminarDB,
    token: Option<String>,
    started: Instant,
    ready: AtomicBool,
    /// One handle per source, shared by the requests that push to it.
    handles: HashMap<String, Mutex<SourceHandle>>,
    schemas: HashMap<String, laminar_db::arrow::datatypes::SchemaRef>,
}

/// Checks the config and the pipelines' SQL without starting anything or
/// touching the storage directory.
pub async fn check(path: &Path) -> Result<()> {
    let config = Config::load(path)?;
    let db = LaminarDB::builder().shards(1).build()?;
    for (name, statements) in &config.pipelines {
        for statement in statements {
            db.execute_statement(statement.clone())
                .await
                .map_err(|e| prefixed(name, e))?;
        }
    }
    println!(
        "{}: ok ({} pipelines; sources: {}; streams: {})",
        path.display(),
        config.pipelines.len(),
        db.sources().join(", "),
        db.streams().join(", ")
    );
    Ok(())
}

fn prefixed(pipeline: &str, e: Error) -> Error {
    let mut error = Error::new(e.code(), format!("pipeline '{pipeline}': {}", e.message()));
    if let Some(hint) = e.hint() {
        error = error.with_hint(hint);
    }
    if let Some(context) = e.context() {
        error = error.with_context(context);
    }
    error
}

pub async fn serve(path: &Path) -> Result<()> {
    let config = Config::load(path)?;
    // A full ring answers 429 instead of holding a request (and its
    // source's handle) until the shards catch up.
    let mut builder = LaminarDB::builder().backpressure(Backpressure::Error);
    if let Some(shards) = config.shards {
        builder = builder.shards(shards);
    }
    if let Some((dir, durability)) = &config.storage {
        builder = builder.storage_dir(dir).durability(*durability);
    }
    if let Some(interval) = config.checkpoint_interval {
        builder = builder.checkpoint_interval(interval);
    }
    let db = builder.build()?;
    for (name, statements) in &config.pipelines {
        for statement in statements {
            db.execute_statement(statement.clone())
                .await
                .map_err(|e| prefixed(name, e))?;
        }
    }
    let schemas = db
        .sources()
        .into_iter()
        .map(|name| Ok((name.clone(), db.source_untyped(&name)?.schema())))
        .collect::<Result<HashMap<_, _>>>()?;
    let handles = db
        .sources()
        .into_iter()
        .map(|name| Ok((name.clone(), Mutex::new(db.source_untyped(&name)?))))
        .collect::<Result<HashMap<_, _>>>()?;
    db.start().await?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| {
            Error::new(
                ErrorCode::InvalidConfig,
                format!("cannot listen on {}: {e}", config.listen),
            )
        })?;
    let app = Arc::new(App {
        db: db.clone(),
        token: config.token,
        started: Instant::now(),
        ready: AtomicBool::new(false),
        handles,
        schemas,
    });
    // A failed recovery stops the server with its error: serving a
    // database that lost its state would be worse than not serving.
    let (recovery_failed, failed) = tokio::sync::oneshot::channel::<Error>();
    {
        let app = Arc::clone(&app);
        tokio::spawn(async move {
            match app.db.wait_recovered().await {
                Ok(()) => {
                    app.ready.store(true, Ordering::Release);
                    notify(sd_notify::NotifyState::Ready);
                }
                Err(e) => {
                    let _ = recovery_failed.send(e);
                }
            }
        });
    }
    if let Some(interval) = sd_notify::watchdog_enabled() {
        // Pinged from the control plane's runtime: a stalled runtime stops
        // the pings, and systemd restarts the unit.
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(interval / 2);
            loop {
                ticks.tick().await;
                notify(sd_notify::NotifyState::Watchdog);
            }
        });
    }
    let router = Router::new()
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .route("/sources/{name}", post(push))
        .route("/query", post(query))
        .route("/streams/{name}", get(tail))
        .route("/ws/streams/{name}", get(tail_websocket))
        // The token is checked before a body is read.
        .route_layer(axum::middleware::from_fn_with_state(
            Arc::clone(&app),
            authorize,
        ))
        .route("/health", get(|| async { "ok\n" }))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(Arc::clone(&app));
    let pg_listener = match &config.pgwire {
        Some(pg) => {
            let address = pg.listen;
            let listener = tokio::net::TcpListener::bind(address).await.map_err(|e| {
                Error::new(
                    ErrorCode::InvalidConfig,
                    format!("cannot listen on {address}: {e}"),
                )
            })?;
            let tls = match &pg.tls {
                Some((cert, key)) => Some(crate::pg::tls_acceptor(cert, key)?),
                None => None,
            };
            eprintln!(
                "laminardb: PostgreSQL protocol on {address} ({:?}{})",
                pg.auth,
                if tls.is_some() { ", TLS" } else { "" }
            );
            let (db, pg) = (db.clone(), pg.clone());
            Some(tokio::spawn(async move {
                loop {
                    match listener.accept().await {
                        Ok((socket, _)) => {
                            // Handlers per connection: its cursors end
                            // with it.
                            let handlers = Arc::new(crate::pg::Handlers::new(db.clone(), &pg));
                            let tls = tls.clone();
                            tokio::spawn(async move {
                                if let Err(e) =
                                    pgwire::tokio::process_socket(socket, tls, handlers).await
                                {
                                    log::debug!("pgwire connection ended: {e}");
                                }
                            });
                        }
                        Err(e) => log::warn!("pgwire accept failed: {e}"),
                    }
                }
            }))
        }
        None => None,
    };
    eprintln!(
        "laminardb: serving {} pipeline(s) on http://{}",
        config.pipelines.len(),
        config.listen
    );
    let recovery_error = Arc::new(Mutex::new(None));
    let stop = {
        let recovery_error = Arc::clone(&recovery_error);
        async move {
            tokio::select! {
                () = stop_signal() => {}
                Ok(e) = failed => {
                    log::error!("recovery failed: {e}");
                    if let Ok(mut slot) = recovery_error.lock() {
                        *slot = Some(e);
                    }
                }
            }
        }
    };
    axum::serve(listener, router)
        .with_graceful_shutdown(stop)
        .await
        .map_err(|e| Error::new(ErrorCode::Io, format!("HTTP server failed: {e}")))?;
    if let Some(e) = recovery_error.lock().ok().and_then(|mut slot| slot.take()) {
        if let Some(pg) = pg_listener {
            pg.abort();
        }
        return Err(e);
    }
    notify(sd_notify::NotifyState::Stopping);
    if let Some(pg) = pg_listener {
        pg.abort();
    }
    eprintln!("laminardb: stopping: draining the shards");
    // Requests are done; handles drop with the app.
    drop(app);
    if config.checkpoint_interval.is_some() {
        // A last checkpoint, so the next start replays (almost) nothing.
        match db.checkpoint().await {
            Ok(info) => eprintln!("laminardb: final checkpoint {}", info.epoch),
            Err(e) => eprintln!("laminardb: final checkpoint failed: {e}"),
        }
    }
    db.shutdown().await?;
    eprintln!("laminardb: stopped");
    Ok(())
}

/// Tells systemd (when `NOTIFY_SOCKET` is set; a no-op otherwise).
fn notify(state: sd_notify::NotifyState<'_>) {
    if let Err(e) = sd_notify::notify(&[state]) {
        log::warn!("sd_notify failed: {e}");
    }
}

async fn stop_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        log::error!("cannot install signal handlers; stop with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

/// An error as an HTTP response: `{"error": "LDB-NNNN: ..."}`.
fn failure(status: StatusCode, error: &Error) -> Response {
    let body = format!("{{\"error\":{}}}\n", json_string(&error.to_string()));
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

fn status_of(error: &Error) -> StatusCode {
    match error.code() {
        ErrorCode::UnknownObject => StatusCode::NOT_FOUND,
        ErrorCode::Backpressure => StatusCode::TOO_MANY_REQUESTS,
        ErrorCode::NotRunning
        | ErrorCode::WalWrite
        | ErrorCode::StorageCorrupt
        | ErrorCode::StorageLocked
        | ErrorCode::StorageMismatch => StatusCode::SERVICE_UNAVAILABLE,
        ErrorCode::RecordTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        ErrorCode::Execution | ErrorCode::Io | ErrorCode::RuntimeStart => {
            StatusCode::INTERNAL_SERVER_ERROR
        }
        _ => StatusCode::BAD_REQUEST,
    }
}

fn json_string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Every route but `/health` passes here first.
async fn authorize(
    State(app): State<Arc<App>>,
    request: Request,
    next: axum::middleware::Next,
) -> Response {
    match refuse(&app, request.headers()) {
        Some(refused) => refused,
        None => next.run(request).await,
    }
}

/// The refusal, if the request may not go on.
fn refuse(app: &App, headers: &HeaderMap) -> Option<Response> {
    let token = app.token.as_ref()?;
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if given.is_some_and(|g| constant_time_eq(g.as_bytes(), token.as_bytes())) {
        return None;
    }
    let error = Error::new(ErrorCode::Unauthorized, "missing or wrong bearer token")
        .with_hint("send Authorization: Bearer <token from the config>");
    let mut response = failure(StatusCode::UNAUTHORIZED, &error);
    response
        .headers_mut()
        .insert(header::WWW_AUTHENTICATE, "Bearer".parse().expect("static"));
    Some(response)
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn ready(State(app): State<Arc<App>>) -> Response {
    if app.ready.load(Ordering::Acquire) {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "recovering\n").into_response()
    }
}

async fn metrics(State(app): State<Arc<App>>) -> Response {
    let metrics = app.db.metrics();
    let mut out = String::new();
    let mut family = |name: &str, help: &str, kind: &str, rows: Vec<(String, u64)>| {
        out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
        for (stream, value) in rows {
            out.push_str(&format!(
                "{name}{{stream={}}} {value}\n",
                json_string(&stream)
            ));
        }
    };
    let per_stream = |f: fn(&laminar_db::StreamMetrics) -> u64| {
        metrics
            .streams
            .iter()
            .map(|s| (s.name.clone(), f(s)))
            .collect::<Vec<_>>()
    };
    family(
        "laminardb_stream_rows_in_total",
        "Rows a stream took in.",
        "counter",
        per_stream(|s| s.rows_in),
    );
    family(
        "laminardb_stream_rows_out_total",
        "Rows a stream emitted.",
        "counter",
        per_stream(|s| s.rows_out),
    );
    family(
        "laminardb_stream_late_rows_total",
        "Rows dropped because their window had closed.",
        "counter",
        per_stream(|s| s.late_rows),
    );
    family(
        "laminardb_stream_state_bytes",
        "Approximate bytes of operator state.",
        "gauge",
        per_stream(|s| s.state_bytes),
    );
    out.push_str(
        "# HELP laminardb_source_watermark_ms A source's watermark (lowest over shards), epoch ms.\n\
         # TYPE laminardb_source_watermark_ms gauge\n\
         # HELP laminardb_source_watermark_lag_seconds Wall-clock time minus the source's watermark.\n\
         # TYPE laminardb_source_watermark_lag_seconds gauge\n",
    );
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    for source in &metrics.sources {
        if let Some(watermark_ms) = source.watermark_ms {
            let name = json_string(&source.name);
            out.push_str(&format!(
                "laminardb_source_watermark_ms{{source={name}}} {watermark_ms}\n\
                 laminardb_source_watermark_lag_seconds{{source={name}}} {:.3}\n",
                now_ms.saturating_sub(watermark_ms) as f64 / 1000.0
            ));
        }
    }
    out.push_str(
        "# HELP laminardb_wal_sync_seconds Time to make a WAL group durable.\n\
         # TYPE laminardb_wal_sync_seconds histogram\n",
    );
    for (bound_us, count) in &metrics.wal.sync_buckets {
        out.push_str(&format!(
            "laminardb_wal_sync_seconds_bucket{{le=\"{}\"}} {count}\n",
            *bound_us as f64 / 1e6
        ));
    }
    out.push_str(&format!(
        "laminardb_wal_sync_seconds_bucket{{le=\"+Inf\"}} {}\n\
         laminardb_wal_sync_seconds_sum {:.6}\n\
         laminardb_wal_sync_seconds_count {}\n",
        metrics.wal.syncs,
        metrics.wal.sync_ns as f64 / 1e9,
        metrics.wal.syncs
    ));
    let checkpoints = &metrics.checkpoints;
    out.push_str(&format!(
        "# HELP laminardb_checkpoints_total Checkpoints completed since start.\n\
         # TYPE laminardb_checkpoints_total counter\n\
         laminardb_checkpoints_total {}\n\
         # HELP laminardb_checkpoint_failures_total Checkpoints that failed (the previous one stands).\n\
         # TYPE laminardb_checkpoint_failures_total counter\n\
         laminardb_checkpoint_failures_total {}\n\
         # HELP laminardb_checkpoint_epoch The last completed checkpoint's epoch.\n\
         # TYPE laminardb_checkpoint_epoch gauge\n\
         laminardb_checkpoint_epoch {}\n\
         # HELP laminardb_checkpoint_duration_seconds How long the last checkpoint took.\n\
         # TYPE laminardb_checkpoint_duration_seconds gauge\n\
         laminardb_checkpoint_duration_seconds {:.6}\n\
         # HELP laminardb_checkpoint_bytes State bytes the last checkpoint wrote.\n\
         # TYPE laminardb_checkpoint_bytes gauge\n\
         laminardb_checkpoint_bytes {}\n",
        checkpoints.completed,
        checkpoints.failed,
        checkpoints.last_epoch,
        checkpoints.last_duration_us as f64 / 1e6,
        checkpoints.last_bytes
    ));
    out.push_str(
        "# HELP laminardb_shard_queue_depth Messages waiting in a shard's input rings.\n\
         # TYPE laminardb_shard_queue_depth gauge\n",
    );
    for (shard, depth) in metrics.shard_queue_depth.iter().enumerate() {
        out.push_str(&format!(
            "laminardb_shard_queue_depth{{shard=\"{shard}\"}} {depth}\n"
        ));
    }
    out.push_str(
        "# HELP laminardb_lookup_refreshes_total Lookup table refreshes that replaced its rows.\n\
         # TYPE laminardb_lookup_refreshes_total counter\n\
         # HELP laminardb_lookup_refresh_failures_total Lookup table refreshes that failed (rows kept).\n\
         # TYPE laminardb_lookup_refresh_failures_total counter\n",
    );
    for table in &metrics.lookup_tables {
        out.push_str(&format!(
            "laminardb_lookup_refreshes_total{{table=\"{0}\"}} {1}\n\
             laminardb_lookup_refresh_failures_total{{table=\"{0}\"}} {2}\n",
            table.name, table.refreshes, table.refresh_failures
        ));
    }
    out.push_str(&format!(
        "# HELP laminardb_shard_batches_total Batches processed by shards.\n\
         # TYPE laminardb_shard_batches_total counter\n\
         laminardb_shard_batches_total {}\n\
         # HELP laminardb_ready Whether recovery is done and pipelines run.\n\
         # TYPE laminardb_ready gauge\n\
         laminardb_ready {}\n\
         # HELP laminardb_uptime_seconds Seconds since the server started.\n\
         # TYPE laminardb_uptime_seconds gauge\n\
         laminardb_uptime_seconds {:.3}\n",
        metrics.shard_batches,
        u8::from(app.ready.load(Ordering::Acquire)),
        app.started.elapsed().as_secs_f64()
    ));
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        out,
    )
        .into_response()
}

async fn push(
    State(app): State<Arc<App>>,
    UrlPath(name): UrlPath<String>,
    body: Bytes,
) -> Response {
    if body.len() > MAX_BODY_BYTES {
        let error = Error::new(
            ErrorCode::InvalidInput,
            format!(
                "request body of {} bytes is over the {MAX_BODY_BYTES}-byte limit",
                body.len()
            ),
        )
        .with_hint("send the rows in several requests");
        return failure(StatusCode::PAYLOAD_TOO_LARGE, &error);
    }
    if !app.handles.contains_key(&name) {
        let error = Error::new(ErrorCode::UnknownObject, format!("unknown source '{name}'"));
        return failure(StatusCode::NOT_FOUND, &error);
    }
    // Decoding and pushing block (a Sync push waits for the disk): off the
    // async workers.
    let worker = Arc::clone(&app);
    let pushed = tokio::task::spawn_blocking(move || push_rows(&worker, &name, &body)).await;
    match pushed {
        Ok(Ok((source, rows))) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            format!("{{\"source\":{},\"rows\":{rows}}}\n", json_string(&source)),
        )
            .into_response(),
        Ok(Err(e)) => failure(status_of(&e), &e),
        Err(e) => failure(
            StatusCode::INTERNAL_SERVER_ERROR,
            &Error::new(ErrorCode::Execution, format!("push task failed: {e}")),
        ),
    }
}

/// Decodes JSON lines with the source's schema and pushes them. All rows
/// are decoded before the first push, so a bad line rejects the request
/// whole.
fn push_rows(app: &App, name: &str, body: &[u8]) -> Result<(String, usize)> {
    let bad = |e: laminar_db::arrow::error::ArrowError| {
        Error::new(ErrorCode::InvalidInput, format!("source '{name}': {e}"))
    };
    let schema = app.schemas[name].clone();
    let batches = laminar_db::arrow::json::ReaderBuilder::new(schema.clone())
        .with_batch_size(BATCH_ROWS)
        .with_strict_mode(true)
        .build(body)
        .map_err(bad)?
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(bad)?;
    // One push: a request is accepted whole or not at all.
    let batch = laminar_db::arrow::compute::concat_batches(&schema, &batches).map_err(bad)?;
    let rows = batch.num_rows();
    if rows > 0 {
        let handle = app.handles[name]
            .lock()
            .map_err(|_| Error::new(ErrorCode::Execution, "source handle lock poisoned"))?;
        handle.push(batch)?;
    }
    Ok((name.to_string(), rows))
}

/// The media type of an Arrow IPC stream.
const ARROW_STREAM: &str = "application/vnd.apache.arrow.stream";

async fn query(State(app): State<Arc<App>>, headers: HeaderMap, body: Bytes) -> Response {
    let Ok(sql) = std::str::from_utf8(&body) else {
        let error = Error::new(ErrorCode::SqlSyntax, "the query is not UTF-8 text");
        return failure(StatusCode::BAD_REQUEST, &error);
    };
    let results = match app.db.execute(sql).await {
        Ok(results) => results,
        Err(e) => return failure(status_of(&e), &e),
    };
    let wants_arrow = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|accept| accept.contains(ARROW_STREAM));
    let body = match results.into_iter().last() {
        Some(ExecuteResult::Rows(batches)) if wants_arrow => {
            let Some(schema) = batches.first().map(|b| b.schema()) else {
                let error = Error::new(ErrorCode::Execution, "the query returned no schema");
                return failure(StatusCode::INTERNAL_SERVER_ERROR, &error);
            };
            let written = (|| {
                let mut writer =
                    laminar_db::arrow::ipc::writer::StreamWriter::try_new(Vec::new(), &schema)?;
                for batch in &batches {
                    writer.write(batch)?;
                }
                writer.finish()?;
                writer.into_inner()
            })();
            return match written {
                Ok(ipc) => {
                    (StatusCode::OK, [(header::CONTENT_TYPE, ARROW_STREAM)], ipc).into_response()
                }
                Err(e) => {
                    let error =
                        Error::new(ErrorCode::Execution, format!("cannot encode rows: {e}"));
                    failure(StatusCode::INTERNAL_SERVER_ERROR, &error)
                }
            };
        }
        Some(ExecuteResult::Rows(batches)) => {
            let mut writer = laminar_db::arrow::json::ArrayWriter::new(Vec::new());
            let written = batches
                .iter()
                .try_for_each(|b| writer.write(b))
                .and_then(|()| writer.finish());
            if let Err(e) = written {
                let error = Error::new(ErrorCode::Execution, format!("cannot encode rows: {e}"));
                return failure(StatusCode::INTERNAL_SERVER_ERROR, &error);
            }
            let mut json = writer.into_inner();
            if json.is_empty() {
                json.extend_from_slice(b"[]");
            }
            json.push(b'\n');
            json
        }
        Some(other) => {
            format!("{{\"result\":{}}}\n", json_string(&format!("{other:?}"))).into_bytes()
        }
        None => b"{\"result\":\"nothing to do\"}\n".to_vec(),
    };
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response()
}

/// `GET /ws/streams/{name}`: the stream's results from the moment of the
/// request, over a WebSocket: one text message per result batch, a JSON
/// array of row objects. Like [`tail`], a client more than
/// [`TAIL_BATCHES`] batches behind is disconnected (close code 1008, "fell
/// behind"); when the stream ends (shutdown) the server closes with 1001.
async fn tail_websocket(
    State(app): State<Arc<App>>,
    UrlPath(name): UrlPath<String>,
    upgrade: axum::extract::ws::WebSocketUpgrade,
) -> Response {
    use axum::extract::ws::{CloseFrame, Message};
    use futures::StreamExt;
    let mut subscription = match app.db.subscribe(&name) {
        Ok(subscription) => subscription,
        Err(e) => return failure(status_of(&e), &e),
    };
    upgrade.on_upgrade(move |mut socket| async move {
        let (sender, mut receiver) = tokio::sync::mpsc::channel::<String>(TAIL_BATCHES);
        let fell_behind = Arc::new(AtomicBool::new(false));
        let behind = Arc::clone(&fell_behind);
        let drain = tokio::spawn(async move {
            while let Some(batch) = subscription.next().await {
                let mut writer = laminar_db::arrow::json::ArrayWriter::new(Vec::new());
                if writer.write(&batch).and_then(|()| writer.finish()).is_err() {
                    break;
                }
                let text = String::from_utf8_lossy(&writer.into_inner()).into_owned();
                match sender.try_send(text) {
                    Ok(()) => {}
                    Err(tokio::sync::mpsc::error::TrySendError::Full(_)) => {
                        log::warn!(
                            "stream '{name}': a WebSocket client fell behind; disconnecting it"
                        );
                        behind.store(true, Ordering::Release);
                        break;
                    }
                    Err(tokio::sync::mpsc::error::TrySendError::Closed(_)) => break,
                }
            }
        });
        loop {
            tokio::select! {
                message = receiver.recv() => match message {
                    Some(text) => {
                        if socket.send(Message::Text(text.into())).await.is_err() {
                            break;
                        }
                    }
                    None => {
                        let (code, reason) = if fell_behind.load(Ordering::Acquire) {
                            (1008, "fell behind")
                        } else {
                            (1001, "the stream ended")
                        };
                        let frame = CloseFrame { code, reason: reason.into() };
                        let _ = socket.send(Message::Close(Some(frame))).await;
                        break;
                    }
                },
                incoming = socket.recv() => match incoming {
                    None | Some(Err(_)) | Some(Ok(Message::Close(_))) => break,
                    Some(Ok(_)) => {}
                },
            }
        }
        drain.abort();
    })
}

/// `GET /streams/{name}`: the stream's results from the moment of the
/// request, as JSON lines (one row each), for as long as the client reads.
/// A task drains the subscription into a bounded queue; a client that
/// falls more than [`TAIL_BATCHES`] batches behind is disconnected, since
/// a subscription that is not drained makes the shards wait.
async fn tail(State(app): State<Arc<App>>, UrlPath(name): UrlPath<String>) -> Response {
    use futures::StreamExt;
    let mut subscription = match app.db.subscribe(&name) {
        Ok(subscription) => subscription,
        Err(e) => return failure(status_of(&e), &e),
    };
    let (sender, receiver) = tokio::sync::mpsc::channel::<Bytes>(TAIL_BATCHES);
    tokio::spawn(async move {
        while let Some(batch) = subscription.next().await {
            let mut writer = laminar_db::arrow::json::LineDelimitedWriter::new(Vec::new());
            if writer.write(&batch).and_then(|()| writer.finish()).is_err() {
                break;
            }
            match sender.try_send(Bytes::from(writer.into_inner())) {
                Ok(()) => {}
                Err(tokio::sync::mpsc::error::TrySendError::Full(_)) => {
                    log::warn!("stream '{name}': a tailing client fell behind; disconnecting it");
                    break;
                }
                Err(tokio::sync::mpsc::error::TrySendError::Closed(_)) => break,
            }
        }
    });
    let body = futures::stream::unfold(receiver, |mut receiver| async move {
        receiver
            .recv()
            .await
            .map(|chunk| (Ok::<_, std::convert::Infallible>(chunk), receiver))
    });
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        axum::body::Body::from_stream(body),
    )
        .into_response()
}
