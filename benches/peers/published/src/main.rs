//! The published crates.io `laminar-db` 0.33.0 (the "peer": an older,
//! different project of the same name) on the shared workloads.
//!
//! `run <workload> <events> <batch_rows> [expect_rows]` prints one JSON line
//! (`workload::Report`). The input is generated and the database, its
//! sources and its stream are built before timing; the timed part pushes
//! every batch (`push_arrow` on `source_untyped` handles), then a closing
//! row one hour later (its event-time watermark, `ts - 1 s`, closes every
//! window of the data), and ends when the subscriber (`open_subscription`,
//! tail) has received `expect_rows` rows. Any engine error is reported as
//! `Err(message)` (exit status 0).

#[path = "../../src/workload.rs"]
#[allow(dead_code)]
mod workload;

use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{ArrayRef, RecordBatch};
use arrow::datatypes::SchemaRef;
use laminar_core::streaming::StreamingError;
use laminar_db::subscription::{PortalFrame, SubscribeStart};
use laminar_db::{LaminarDB, UntypedSourceHandle};
use workload::{Args, Report, Workload};

const ENGINE: &str = "laminar-db 0.33";

/// Name of the stream every workload's result is in.
const OUT: &str = "bench_out";

/// Without `expect_rows`: stop once nothing came for this long after the
/// closing row was pushed.
const IDLE_END: Duration = Duration::from_secs(2);

/// With `expect_rows`: give up (and report how many came) once nothing came
/// for this long after the closing row was pushed.
const STALL_END: Duration = Duration::from_secs(60);

fn source_ddl(name: &str) -> String {
    format!(
        "CREATE SOURCE {name} (symbol VARCHAR NOT NULL, price DOUBLE NOT NULL, \
         volume BIGINT NOT NULL, ts TIMESTAMP NOT NULL, \
         WATERMARK FOR ts AS ts - INTERVAL '1' SECOND)"
    )
}

/// The workload's meaning in the peer's dialect: windows are `TUMBLE(...)` /
/// `SESSION(...)` in `GROUP BY` (the peer adds `window_start`/`window_end`),
/// emitted once per window when the watermark passes its end.
fn stream_sql(workload: Workload) -> String {
    let query = match workload {
        Workload::Filter => "SELECT symbol, price, volume, ts FROM trades WHERE price > 105",
        Workload::Vwap => {
            "SELECT symbol, TUMBLE(ts, INTERVAL '1' MINUTE) AS bucket, \
             SUM(price * CAST(volume AS DOUBLE)) / SUM(CAST(volume AS DOUBLE)) AS vwap, \
             COUNT(*) AS trades \
             FROM trades GROUP BY symbol, TUMBLE(ts, INTERVAL '1' MINUTE) \
             EMIT ON WINDOW CLOSE"
        }
        Workload::Ohlc => {
            "SELECT symbol, TUMBLE(ts, INTERVAL '1' MINUTE) AS bucket, \
             FIRST_VALUE(price ORDER BY ts) AS open_price, MAX(price) AS high_price, \
             MIN(price) AS low_price, LAST_VALUE(price ORDER BY ts) AS close_price, \
             SUM(volume) AS total_volume \
             FROM trades GROUP BY symbol, TUMBLE(ts, INTERVAL '1' MINUTE) \
             EMIT ON WINDOW CLOSE"
        }
        Workload::Session => {
            "SELECT symbol, SESSION(ts, INTERVAL '500' MILLISECOND) AS bucket, \
             COUNT(*) AS trades, SUM(volume) AS total_volume \
             FROM trades GROUP BY symbol, SESSION(ts, INTERVAL '500' MILLISECOND) \
             EMIT ON WINDOW CLOSE"
        }
        // The peer admits only `right.ts BETWEEN left.ts AND left.ts +
        // INTERVAL d` (its parser requires a bare column as the lower bound;
        // `o.ts - INTERVAL ...` is refused: "streaming interval join
        // timestamps must be qualified column references"). So the orders'
        // event times are shifted 50 ms earlier before timing (`JOIN_SHIFT_MS`)
        // and the window is 100 ms wide: `t.ts` in `[o.ts - 50, o.ts + 50]`,
        // the same pairs (`o.ts` is not in the output).
        Workload::Join => {
            "SELECT o.symbol AS symbol, o.price AS order_price, t.price AS trade_price \
             FROM orders o JOIN trades t ON o.symbol = t.symbol \
             AND t.ts BETWEEN o.ts AND o.ts + INTERVAL '100' MILLISECOND"
        }
    };
    format!("CREATE STREAM {OUT} AS {query}")
}

/// How much earlier the join's orders are pushed (see `stream_sql`).
const JOIN_SHIFT_MS: i64 = 50;

/// `batch` with its event time (`ts`, column 3) moved by `delta_ms`.
fn shift_ts(batch: &RecordBatch, delta_ms: i64) -> Result<RecordBatch, String> {
    use arrow::array::{Array, TimestampMillisecondArray};
    let ts = batch
        .column(3)
        .as_any()
        .downcast_ref::<TimestampMillisecondArray>()
        .ok_or("ts is not a millisecond timestamp")?;
    let shifted: TimestampMillisecondArray = ts.unary(|v| v + delta_ms);
    let mut columns = batch.columns().to_vec();
    columns[3] = Arc::new(shifted.with_timezone_opt(ts.timezone()));
    RecordBatch::try_new(batch.schema(), columns).map_err(|e| e.to_string())
}

/// `batch` with the source's own schema (the push is refused unless the
/// schema is equal), each column cast where the source's type differs.
/// Done before timing.
fn conform(batch: &RecordBatch, schema: &SchemaRef) -> Result<RecordBatch, String> {
    let columns = batch
        .columns()
        .iter()
        .zip(schema.fields())
        .map(|(column, field)| {
            if column.data_type() == field.data_type() {
                Ok(Arc::clone(column))
            } else {
                arrow::compute::cast(column, field.data_type())
                    .map(|c| -> ArrayRef { c })
                    .map_err(|e| format!("cast to the source's {}: {e}", field.data_type()))
            }
        })
        .collect::<Result<Vec<_>, _>>()?;
    RecordBatch::try_new(Arc::clone(schema), columns).map_err(|e| e.to_string())
}

/// One input: its handle and its batches (the last one is the closing row).
struct Input {
    handle: UntypedSourceHandle,
    batches: Vec<RecordBatch>,
}

/// Push, retrying while the source's queue is full (the peer rejects a push
/// at once when its ring is saturated rather than waiting).
fn push(handle: &UntypedSourceHandle, batch: &RecordBatch) -> Result<(), String> {
    loop {
        match handle.push_arrow(batch.clone()) {
            Ok(()) => return Ok(()),
            Err(StreamingError::ChannelFull) => std::thread::sleep(Duration::from_micros(20)),
            Err(e) => return Err(format!("push to {}: {e}", handle.name())),
        }
    }
}

/// Pushes every input's batches in order, interleaved batch by batch (the
/// join's two sides advance together). Returns when it started and when the
/// closing rows were pushed.
fn push_all(inputs: Vec<Input>) -> Result<(Instant, Instant), String> {
    let longest = inputs.iter().map(|i| i.batches.len()).max().unwrap_or(0);
    let start = Instant::now();
    for k in 0..longest {
        for input in &inputs {
            if let Some(batch) = input.batches.get(k) {
                push(&input.handle, batch)?;
            }
        }
    }
    Ok((start, Instant::now()))
}

async fn run(args: &Args) -> Result<(f64, usize), String> {
    // Input, generated before anything is timed.
    let sides: Vec<(&str, usize)> = if args.workload == Workload::Join {
        vec![("orders", 1), ("trades", 0)]
    } else {
        vec![("trades", 0)]
    };
    let generated: Vec<(&str, Vec<RecordBatch>)> = sides
        .iter()
        .map(|&(name, seed)| {
            let mut batches = workload::batches(args.workload, args.events, args.batch_rows, seed);
            // Windows close only when a row moves time past them; the
            // inner interval join emits each pair as it finds it (and two
            // closing rows would join each other).
            if args.workload != Workload::Join {
                batches.push(workload::closing_row(args.workload, args.events));
            }
            (name, batches)
        })
        .collect();
    let generated = generated
        .into_iter()
        .map(|(name, batches)| {
            if name == "orders" {
                let shifted = batches.iter().map(|b| shift_ts(b, -JOIN_SHIFT_MS));
                Ok((name, shifted.collect::<Result<Vec<_>, String>>()?))
            } else {
                Ok((name, batches))
            }
        })
        .collect::<Result<Vec<_>, String>>()?;

    // The database, its sources and its stream (untimed).
    let db = LaminarDB::open().map_err(|e| e.to_string())?;
    for (name, _) in &generated {
        db.execute(&source_ddl(name))
            .await
            .map_err(|e| e.to_string())?;
    }
    db.execute(&stream_sql(args.workload))
        .await
        .map_err(|e| e.to_string())?;
    db.start().await.map_err(|e| e.to_string())?;
    let mut portal = db
        .open_subscription(OUT, None, SubscribeStart::Tail)
        .await
        .map_err(|e| e.to_string())?;
    let mut inputs = Vec::new();
    for (name, batches) in generated {
        let handle = db.source_untyped(name).map_err(|e| e.to_string())?;
        let schema = Arc::clone(handle.schema());
        let batches = batches
            .iter()
            .map(|b| conform(b, &schema))
            .collect::<Result<Vec<_>, _>>()?;
        inputs.push(Input { handle, batches });
    }

    // Timed: the pushes run on their own thread while this task reads the
    // subscription.
    let mut pusher = tokio::task::spawn_blocking(move || push_all(inputs));
    let mut pushed: Option<(Instant, Instant)> = None;
    let mut rows = 0usize;
    let mut last_row: Option<Instant> = None;
    loop {
        if pushed.is_none() && pusher.is_finished() {
            pushed = Some((&mut pusher).await.map_err(|e| e.to_string())??);
        }
        if let Some(expect) = args.expect_rows {
            if rows >= expect && pushed.is_some() {
                break;
            }
        }
        match tokio::time::timeout(Duration::from_millis(50), portal.next_frame()).await {
            Ok(Some(PortalFrame::Batch { batch, .. })) => {
                rows += batch.num_rows();
                last_row = Some(Instant::now());
            }
            Ok(Some(PortalFrame::Lagged(skipped))) => {
                return Err(format!("subscriber lagged: {skipped} log entries skipped"));
            }
            Ok(Some(PortalFrame::Error { message })) => return Err(message),
            Ok(Some(_)) => {}
            Ok(None) => return Err("subscription ended".into()),
            Err(_) => {}
        }
        if db.pipeline_state() == "Faulted" {
            return Err(db.last_fault().unwrap_or_else(|| "pipeline faulted".into()));
        }
        if let Some((_, closed)) = pushed {
            let quiet = last_row.map_or(closed, |t| t.max(closed)).elapsed();
            match args.expect_rows {
                // Only for finding the count: the time is still the first
                // push to the last row received (the idle wait is not in it),
                // but an engine pausing over 2 s would end it early.
                None if quiet >= IDLE_END => break,
                Some(expect) if quiet >= STALL_END => {
                    return Err(format!(
                        "received {rows} of {expect} rows; none for {} s",
                        STALL_END.as_secs()
                    ));
                }
                _ => {}
            }
        }
    }
    let (start, closed) = pushed.expect("pushes finished");
    let end = last_row.map_or(closed, |t| t.max(start));
    Ok((end.duration_since(start).as_secs_f64(), rows))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let args = match Args::parse(&argv) {
        Ok(args) => args,
        Err(usage) => {
            eprintln!("{usage}");
            std::process::exit(2);
        }
    };
    let outcome = run(&args).await;
    Report {
        engine: ENGINE,
        workload: args.workload,
        events: args.events,
        batch_rows: args.batch_rows,
        outcome,
    }
    .print();
    // No shutdown: the result is printed, and the peer's shutdown can wait
    // on its own timers.
    std::process::exit(0);
}
