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
//! | `GET /pipelines` | the running pipelines (JSON): name, origin, shards, objects, SQL |
//! | `GET /pipelines/{name}` | one of them |
//! | `POST /pipelines/{name}` | body: SQL (`CREATE` statements); starts a new pipeline, 201 |
//! | `DELETE /pipelines/{name}` | stops a pipeline created through the API and deletes its data |
//!
//! Each pipeline runs on its own engine (see `pipelines.rs`); statements
//! and routes go to the pipeline that owns the object they name.
//!
//! With a token in the config, every route but `/health` needs
//! `Authorization: Bearer <token>`. SIGTERM or SIGINT stops taking
//! requests, drains the shards (everything accepted is processed), takes
//! a final checkpoint per pipeline (with `checkpoint_interval_ms`) and
//! exits 0. SIGHUP rereads the config's `[[pipeline]]` sections and
//! reloads the pipelines that changed.
//!
//! Under systemd (`Type=notify`), the server sends `READY=1` once it is
//! ready, `RELOADING=1` then `READY=1` around a reload, `STOPPING=1` when
//! it starts to stop, and `WATCHDOG=1` at half the unit's `WatchdogSec`
//! while it runs (`deploy/systemd/`).

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
use laminar_db::{Error, ErrorCode, ExecuteResult, LaminarDB, Result};

use crate::config::Config;
use crate::pipelines::{Pipeline, PipelineAnswer, Pipelines, Settings};

/// Result batches a tailing client may fall behind by before it is cut
/// off (so a slow client never holds the shards back).
const TAIL_BATCHES: usize = 1024;

/// Rows per decoded chunk (a request is pushed as one batch).
const BATCH_ROWS: usize = 8192;
/// The largest request body taken (64 MiB).
const MAX_BODY_BYTES: usize = 64 << 20;

struct App {
    pipelines: Arc<Pipelines>,
    token: Option<String>,
    started: Instant,
    ready: AtomicBool,
}

/// Checks the config and the pipelines' SQL without starting anything or
/// touching the storage directory.
pub async fn check(path: &Path) -> Result<()> {
    let config = Config::load(path)?;
    let mut owners: Vec<(String, String)> = Vec::new();
    for pipeline in &config.pipelines {
        let mut db = LaminarDB::builder().shards(1);
        if let Some(cpus) = pipeline.cpus.as_ref().or(config.cpus.as_ref()) {
            db = db.cpus(cpus.iter().copied());
        }
        let db = db
            .build()
            .map_err(|e| crate::pipelines::prefixed(&pipeline.name, e))?;
        for statement in &pipeline.statements {
            db.execute_statement(statement.clone())
                .await
                .map_err(|e| crate::pipelines::prefixed(&pipeline.name, e))?;
        }
        for object in crate::pipelines::objects(&db) {
            if let Some((_, other)) = owners.iter().find(|(o, _)| o.eq_ignore_ascii_case(&object)) {
                return Err(Error::new(
                    ErrorCode::AlreadyExists,
                    format!(
                        "pipeline '{}': '{object}' is already an object of pipeline '{other}'",
                        pipeline.name
                    ),
                )
                .with_hint("object names are unique across pipelines"));
            }
            owners.push((object, pipeline.name.clone()));
        }
    }
    println!(
        "{}: ok ({} pipelines; objects: {})",
        path.display(),
        config.pipelines.len(),
        owners
            .iter()
            .map(|(object, pipeline)| format!("{pipeline}.{object}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(())
}

pub async fn serve(path: &Path) -> Result<()> {
    let config = Config::load(path)?;
    let pipelines = Arc::new(Pipelines::new(Settings {
        shards: config.shards,
        cpus: config.cpus.clone(),
        storage: config.storage.clone(),
        checkpoint_interval: config.checkpoint_interval,
    })?);
    if let Err(e) = pipelines.start(&config.pipelines).await {
        pipelines.shutdown().await;
        return Err(e);
    }
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| {
            Error::new(
                ErrorCode::InvalidConfig,
                format!("cannot listen on {}: {e}", config.listen),
            )
        });
    let listener = match listener {
        Ok(listener) => listener,
        Err(e) => {
            pipelines.shutdown().await;
            return Err(e);
        }
    };
    let app = Arc::new(App {
        pipelines: Arc::clone(&pipelines),
        token: config.token,
        started: Instant::now(),
        ready: AtomicBool::new(false),
    });
    // A failed recovery stops the server with its error: serving a
    // database that lost its state would be worse than not serving.
    let (recovery_failed, failed) = tokio::sync::oneshot::channel::<Error>();
    {
        let app = Arc::clone(&app);
        tokio::spawn(async move {
            match app.pipelines.wait_recovered().await {
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
    tokio::spawn(reload_on_hangup(path.to_path_buf(), Arc::clone(&pipelines)));
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
        .route("/pipelines", get(list_pipelines))
        .route(
            "/pipelines/{name}",
            get(show_pipeline)
                .post(create_pipeline)
                .delete(drop_pipeline),
        )
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
            });
            let listener = match listener {
                Ok(listener) => listener,
                Err(e) => {
                    pipelines.shutdown().await;
                    return Err(e);
                }
            };
            let tls = match &pg.tls {
                Some((cert, key)) => Some(crate::pg::tls_acceptor(cert, key)?),
                None => None,
            };
            eprintln!(
                "laminardb: PostgreSQL protocol on {address} ({:?}{})",
                pg.auth,
                if tls.is_some() { ", TLS" } else { "" }
            );
            let (pipelines, pg) = (Arc::clone(&pipelines), pg.clone());
            Some(tokio::spawn(async move {
                loop {
                    match listener.accept().await {
                        Ok((socket, _)) => {
                            // Handlers per connection: its cursors end
                            // with it.
                            let handlers =
                                Arc::new(crate::pg::Handlers::new(Arc::clone(&pipelines), &pg));
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
        pipelines.all().len(),
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
    let served = axum::serve(listener, router)
        .with_graceful_shutdown(stop)
        .await
        .map_err(|e| Error::new(ErrorCode::Io, format!("HTTP server failed: {e}")));
    notify(sd_notify::NotifyState::Stopping);
    if let Some(pg) = pg_listener {
        pg.abort();
    }
    eprintln!("laminardb: stopping: draining the shards");
    drop(app);
    pipelines.shutdown().await;
    served?;
    if let Some(e) = recovery_error.lock().ok().and_then(|mut slot| slot.take()) {
        return Err(e);
    }
    eprintln!("laminardb: stopped");
    Ok(())
}

/// SIGHUP: rereads the config and reloads the pipelines that changed. A
/// config that no longer loads changes nothing.
async fn reload_on_hangup(path: std::path::PathBuf, pipelines: Arc<Pipelines>) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut hangups) = signal(SignalKind::hangup()) else {
        log::error!("cannot install the SIGHUP handler; reloading is off");
        return;
    };
    while hangups.recv().await.is_some() {
        notify(sd_notify::NotifyState::Reloading);
        eprintln!("laminardb: SIGHUP: reloading {}", path.display());
        match Config::load(&path) {
            Ok(config) => {
                let done = pipelines.reload(&config.pipelines).await;
                eprintln!(
                    "laminardb: reloaded: started [{}], replaced [{}], stopped [{}], unchanged [{}]",
                    done.started.join(", "),
                    done.replaced.join(", "),
                    done.stopped.join(", "),
                    done.unchanged.join(", ")
                );
                for (name, e) in done.failed {
                    eprintln!("laminardb: reload of pipeline '{name}' failed, left as it was: {e}");
                }
            }
            Err(e) => {
                pipelines.reload_failures.fetch_add(1, Ordering::Relaxed);
                eprintln!("laminardb: reload failed, nothing changed: {e}");
            }
        }
        notify(sd_notify::NotifyState::Ready);
    }
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
        ErrorCode::AlreadyExists | ErrorCode::InUse => StatusCode::CONFLICT,
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

/// Prometheus text: every series carries its pipeline's name.
async fn metrics(State(app): State<Arc<App>>) -> Response {
    let pipelines: Vec<(String, laminar_db::Metrics)> = app
        .pipelines
        .all()
        .iter()
        .map(|p| (json_string(&p.name), p.db.metrics()))
        .collect();
    let mut out = String::new();
    let mut family =
        |name: &str, help: &str, kind: &str, rows: &mut dyn Iterator<Item = String>| {
            out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
            for row in rows {
                out.push_str(name);
                out.push_str(&row);
                out.push('\n');
            }
        };
    let per_stream = |f: fn(&laminar_db::StreamMetrics) -> u64| {
        pipelines.iter().flat_map(move |(pipeline, m)| {
            m.streams.iter().map(move |s| {
                format!(
                    "{{pipeline={pipeline},stream={}}} {}",
                    json_string(&s.name),
                    f(s)
                )
            })
        })
    };
    family(
        "laminardb_stream_rows_in_total",
        "Rows a stream took in.",
        "counter",
        &mut per_stream(|s| s.rows_in),
    );
    family(
        "laminardb_stream_rows_out_total",
        "Rows a stream emitted.",
        "counter",
        &mut per_stream(|s| s.rows_out),
    );
    family(
        "laminardb_stream_late_rows_total",
        "Rows dropped because their window had closed.",
        "counter",
        &mut per_stream(|s| s.late_rows),
    );
    family(
        "laminardb_stream_state_bytes",
        "Approximate bytes of operator state.",
        "gauge",
        &mut per_stream(|s| s.state_bytes),
    );
    family(
        "laminardb_source_rows_total",
        "Rows pushed to a source since the pipeline started.",
        "counter",
        &mut pipelines.iter().flat_map(|(pipeline, m)| {
            m.sources.iter().map(move |s| {
                format!(
                    "{{pipeline={pipeline},source={}}} {}",
                    json_string(&s.name),
                    s.rows
                )
            })
        }),
    );
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    let watermarks = || {
        pipelines.iter().flat_map(|(pipeline, m)| {
            m.sources.iter().filter_map(move |s| {
                s.watermark_ms.map(|w| {
                    (
                        format!("{{pipeline={pipeline},source={}}}", json_string(&s.name)),
                        w,
                    )
                })
            })
        })
    };
    family(
        "laminardb_source_watermark_ms",
        "A source's watermark (lowest over shards), epoch ms.",
        "gauge",
        &mut watermarks().map(|(labels, w)| format!("{labels} {w}")),
    );
    family(
        "laminardb_source_watermark_lag_seconds",
        "Wall-clock time minus the source's watermark.",
        "gauge",
        &mut watermarks()
            .map(|(labels, w)| format!("{labels} {:.3}", now_ms.saturating_sub(w) as f64 / 1000.0)),
    );
    family(
        "laminardb_wal_sync_seconds",
        "Time to make a WAL group durable.",
        "histogram",
        &mut pipelines.iter().flat_map(|(pipeline, m)| {
            let wal = &m.wal;
            wal.sync_buckets
                .iter()
                .map(move |(bound_us, count)| {
                    format!(
                        "_bucket{{pipeline={pipeline},le=\"{}\"}} {count}",
                        *bound_us as f64 / 1e6
                    )
                })
                .chain([
                    format!("_bucket{{pipeline={pipeline},le=\"+Inf\"}} {}", wal.syncs),
                    format!(
                        "_sum{{pipeline={pipeline}}} {:.6}",
                        wal.sync_ns as f64 / 1e9
                    ),
                    format!("_count{{pipeline={pipeline}}} {}", wal.syncs),
                ])
        }),
    );
    let per_pipeline = |f: &dyn Fn(&laminar_db::Metrics) -> String| {
        pipelines
            .iter()
            .map(|(pipeline, m)| format!("{{pipeline={pipeline}}} {}", f(m)))
            .collect::<Vec<_>>()
            .into_iter()
    };
    family(
        "laminardb_checkpoints_total",
        "Checkpoints completed since start.",
        "counter",
        &mut per_pipeline(&|m| m.checkpoints.completed.to_string()),
    );
    family(
        "laminardb_checkpoint_failures_total",
        "Checkpoints that failed (the previous one stands).",
        "counter",
        &mut per_pipeline(&|m| m.checkpoints.failed.to_string()),
    );
    family(
        "laminardb_checkpoint_epoch",
        "The last completed checkpoint's epoch.",
        "gauge",
        &mut per_pipeline(&|m| m.checkpoints.last_epoch.to_string()),
    );
    family(
        "laminardb_checkpoint_duration_seconds",
        "How long the last checkpoint took.",
        "gauge",
        &mut per_pipeline(&|m| format!("{:.6}", m.checkpoints.last_duration_us as f64 / 1e6)),
    );
    family(
        "laminardb_checkpoint_bytes",
        "State bytes the last checkpoint wrote.",
        "gauge",
        &mut per_pipeline(&|m| m.checkpoints.last_bytes.to_string()),
    );
    family(
        "laminardb_checkpoint_patched_files",
        "Files of the last checkpoint written as patches over an earlier one's.",
        "gauge",
        &mut per_pipeline(&|m| m.checkpoints.last_patched_files.to_string()),
    );
    family(
        "laminardb_checkpoint_files",
        "Files of state the last checkpoint wrote (shards, views, sources' retained rows).",
        "gauge",
        &mut per_pipeline(&|m| m.checkpoints.last_files.to_string()),
    );
    family(
        "laminardb_checkpoint_marker_waits_total",
        "Times a source lane held its rows at a checkpoint marker until its shard heard of the checkpoint.",
        "counter",
        &mut per_pipeline(&|m| m.checkpoints.marker_waits.to_string()),
    );
    family(
        "laminardb_shard_queue_depth",
        "Messages waiting in a shard's input rings.",
        "gauge",
        &mut pipelines.iter().flat_map(|(pipeline, m)| {
            m.shard_queue_depth
                .iter()
                .enumerate()
                .map(move |(shard, depth)| {
                    format!("{{pipeline={pipeline},shard=\"{shard}\"}} {depth}")
                })
        }),
    );
    let lookups = |f: fn(&laminar_db::LookupTableMetrics) -> u64| {
        pipelines.iter().flat_map(move |(pipeline, m)| {
            m.lookup_tables.iter().map(move |t| {
                format!(
                    "{{pipeline={pipeline},table={}}} {}",
                    json_string(&t.name),
                    f(t)
                )
            })
        })
    };
    family(
        "laminardb_lookup_refreshes_total",
        "Lookup table refreshes that replaced its rows.",
        "counter",
        &mut lookups(|t| t.refreshes),
    );
    family(
        "laminardb_lookup_refresh_failures_total",
        "Lookup table refreshes that failed (rows kept).",
        "counter",
        &mut lookups(|t| t.refresh_failures),
    );
    family(
        "laminardb_shard_batches_total",
        "Batches processed by shards.",
        "counter",
        &mut per_pipeline(&|m| m.shard_batches.to_string()),
    );
    let reloads = app.pipelines.reloads.load(Ordering::Relaxed);
    let reload_failures = app.pipelines.reload_failures.load(Ordering::Relaxed);
    out.push_str(&format!(
        "# HELP laminardb_pipelines Pipelines running.\n\
         # TYPE laminardb_pipelines gauge\n\
         laminardb_pipelines {}\n\
         # HELP laminardb_reloads_total SIGHUP reloads of the config.\n\
         # TYPE laminardb_reloads_total counter\n\
         laminardb_reloads_total {reloads}\n\
         # HELP laminardb_reload_failures_total Pipelines (or whole configs) a reload could not apply.\n\
         # TYPE laminardb_reload_failures_total counter\n\
         laminardb_reload_failures_total {reload_failures}\n\
         # HELP laminardb_ready Whether recovery is done and pipelines run.\n\
         # TYPE laminardb_ready gauge\n\
         laminardb_ready {}\n\
         # HELP laminardb_uptime_seconds Seconds since the server started.\n\
         # TYPE laminardb_uptime_seconds gauge\n\
         laminardb_uptime_seconds {:.3}\n",
        pipelines.len(),
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
    let Some(pipeline) = app
        .pipelines
        .owner(&name)
        .filter(|p| p.handles.contains_key(&name))
    else {
        let error = Error::new(ErrorCode::UnknownObject, format!("unknown source '{name}'"));
        return failure(StatusCode::NOT_FOUND, &error);
    };
    // Decoding and pushing block (a Sync push waits for the disk): off the
    // async workers.
    let pushed = tokio::task::spawn_blocking(move || push_rows(&pipeline, &name, &body)).await;
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
fn push_rows(pipeline: &Pipeline, name: &str, body: &[u8]) -> Result<(String, usize)> {
    let bad = |e: laminar_db::arrow::error::ArrowError| {
        Error::new(ErrorCode::InvalidInput, format!("source '{name}': {e}"))
    };
    let schema = pipeline.schemas[name].clone();
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
        let handle = pipeline.handles[name]
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
    let results = match pipeline_statement(&app.pipelines, sql).await {
        Ok(Some(PipelineAnswer::Rows(batch))) => vec![ExecuteResult::Rows(vec![batch])],
        Ok(Some(PipelineAnswer::Done(tag))) => {
            return json_response(
                StatusCode::OK,
                format!("{{\"result\":{}}}", json_string(tag)),
            )
        }
        Ok(None) => match app.pipelines.execute(sql).await {
            Ok(results) => results,
            Err(e) => return failure(status_of(&e), &e),
        },
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

/// Runs a body that is one pipeline statement (`CREATE PIPELINE`, `DROP
/// PIPELINE`, `SHOW PIPELINES`); `None` for any other body.
async fn pipeline_statement(pipelines: &Pipelines, sql: &str) -> Result<Option<PipelineAnswer>> {
    let statements = crate::pg_cursor::split_statements(sql);
    let [statement] = statements.as_slice() else {
        return Ok(None);
    };
    match crate::pipelines::parse_pipeline_statement(statement)? {
        Some(statement) => pipelines.run_pipeline_statement(statement).await.map(Some),
        None => Ok(None),
    }
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
    let mut subscription = match app.pipelines.subscribe(&name) {
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
    let mut subscription = match app.pipelines.subscribe(&name) {
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

/// A pipeline as JSON: name, origin, objects, whether recovery is done,
/// and its SQL.
fn pipeline_json(pipeline: &Pipeline) -> String {
    let list = |names: Vec<String>| {
        let quoted: Vec<String> = names.iter().map(|n| json_string(n)).collect();
        format!("[{}]", quoted.join(","))
    };
    let db = &pipeline.db;
    let cpus: Vec<String> = db.placement().iter().map(|p| p.cpu.to_string()).collect();
    format!(
        "{{\"name\":{},\"origin\":\"{}\",\"shards\":{},\"cpus\":[{}],\"sources\":{},\"streams\":{},\"tables\":{},\"sql\":{}}}",
        json_string(&pipeline.name),
        pipeline.origin.as_str(),
        db.placement().len(),
        cpus.join(","),
        list(db.sources()),
        list(db.streams()),
        list(db.tables()),
        json_string(&pipeline.sql)
    )
}

fn json_response(status: StatusCode, body: String) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body + "\n",
    )
        .into_response()
}

/// `GET /pipelines`: every running pipeline.
async fn list_pipelines(State(app): State<Arc<App>>) -> Response {
    let all: Vec<String> = app
        .pipelines
        .all()
        .iter()
        .map(|p| pipeline_json(p))
        .collect();
    json_response(StatusCode::OK, format!("[{}]", all.join(",")))
}

/// `GET /pipelines/{name}`.
async fn show_pipeline(State(app): State<Arc<App>>, UrlPath(name): UrlPath<String>) -> Response {
    match app.pipelines.get(&name) {
        Some(pipeline) => json_response(StatusCode::OK, pipeline_json(&pipeline)),
        None => {
            let error = Error::new(
                ErrorCode::UnknownObject,
                format!("unknown pipeline '{name}'"),
            );
            failure(StatusCode::NOT_FOUND, &error)
        }
    }
}

/// `POST /pipelines/{name}`, body: the pipeline's SQL (`CREATE`
/// statements). Starts it next to the others; kept across restarts when
/// the server has a storage directory.
async fn create_pipeline(
    State(app): State<Arc<App>>,
    UrlPath(name): UrlPath<String>,
    body: Bytes,
) -> Response {
    let Ok(sql) = std::str::from_utf8(&body) else {
        let error = Error::new(ErrorCode::SqlSyntax, "the pipeline's SQL is not UTF-8 text");
        return failure(StatusCode::BAD_REQUEST, &error);
    };
    match app.pipelines.create(&name, sql).await {
        Ok(pipeline) => json_response(StatusCode::CREATED, pipeline_json(&pipeline)),
        Err(e) => failure(status_of(&e), &e),
    }
}

/// `DELETE /pipelines/{name}`: stops a pipeline created through the API
/// and deletes its data.
async fn drop_pipeline(State(app): State<Arc<App>>, UrlPath(name): UrlPath<String>) -> Response {
    match app.pipelines.drop_pipeline(&name).await {
        Ok(()) => json_response(
            StatusCode::OK,
            format!("{{\"dropped\":{}}}", json_string(&name)),
        ),
        Err(e) => failure(status_of(&e), &e),
    }
}
