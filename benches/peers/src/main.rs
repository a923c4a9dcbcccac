//! Side-by-side runs of the same workloads on LaminarDB, DataFusion (a
//! batch query over the same rows: the ceiling) and, through their own
//! binaries, the published `laminar-db` crate (`published/`) and Flink SQL
//! (`flink/`).
//!
//! ```text
//! peers laminardb run <workload> <events> <batch_rows> [expect_rows]
//! peers datafusion run <workload> <events> <batch_rows> [expect_rows]
//! peers compare [--events N] [--join-events N] [--batch-rows 1024,8192]
//!               [--runs 5] [--workloads filter,vwap,...] [--published PATH]
//!               [--flink CMD] [--no-datafusion] [--csv PATH]
//! ```
//!
//! `run` prints one JSON line (see `workload.rs`). `compare` runs every
//! engine on every workload in a process of its own, `--runs` times, and
//! prints the medians as a table with ratios to LaminarDB.

use std::sync::Arc;
use std::time::Instant;

use datafusion::arrow::array::RecordBatch;
use datafusion::datasource::MemTable;
use datafusion::prelude::SessionContext;
use laminar_db::LaminarDB;

#[path = "workload.rs"]
mod workload;

use workload::{Args, Report, Workload};

const TRADES: &str = "CREATE SOURCE trades (symbol VARCHAR NOT NULL, price DOUBLE NOT NULL,
    volume BIGINT NOT NULL, ts TIMESTAMP(3) NOT NULL, WATERMARK FOR ts AS ts - INTERVAL '1' SECOND)";
const ORDERS: &str = "CREATE SOURCE orders (symbol VARCHAR NOT NULL, price DOUBLE NOT NULL,
    volume BIGINT NOT NULL, ts TIMESTAMP(3) NOT NULL, WATERMARK FOR ts AS ts - INTERVAL '1' SECOND)";

/// LaminarDB's stream for each workload.
fn laminardb_sql(workload: Workload) -> &'static str {
    match workload {
        Workload::Filter => "SELECT symbol, price, volume, ts FROM trades WHERE price > 105",
        Workload::Vwap => {
            "SELECT symbol, tumble(ts, INTERVAL '1' MINUTE) AS w,
                SUM(price * CAST(volume AS DOUBLE)) / SUM(CAST(volume AS DOUBLE)) AS vwap,
                COUNT(*) AS trades
             FROM trades GROUP BY symbol, tumble(ts, INTERVAL '1' MINUTE)"
        }
        Workload::Ohlc => {
            "SELECT symbol, tumble(ts, INTERVAL '1' MINUTE) AS w,
                first_value(price ORDER BY ts) AS open, MAX(price) AS high,
                MIN(price) AS low, last_value(price ORDER BY ts) AS close,
                SUM(volume) AS volume
             FROM trades GROUP BY symbol, tumble(ts, INTERVAL '1' MINUTE)"
        }
        Workload::Session => {
            "SELECT symbol, session(ts, INTERVAL '500' MILLISECOND) AS s,
                COUNT(*) AS n, SUM(volume) AS volume
             FROM trades GROUP BY symbol, session(ts, INTERVAL '500' MILLISECOND)"
        }
        Workload::Join => {
            "SELECT o.symbol, o.price AS order_price, t.price AS trade_price
             FROM orders o JOIN trades t ON o.symbol = t.symbol
              AND t.ts BETWEEN o.ts - INTERVAL '50' MILLISECOND AND o.ts + INTERVAL '50' MILLISECOND"
        }
    }
}

/// The same meaning as a DataFusion batch query.
fn datafusion_sql(workload: Workload) -> &'static str {
    match workload {
        Workload::Filter => "SELECT symbol, price, volume, ts FROM trades WHERE price > 105",
        Workload::Vwap => {
            "SELECT symbol, date_bin(INTERVAL '1 minute', ts) AS w,
                SUM(price * CAST(volume AS DOUBLE)) / SUM(CAST(volume AS DOUBLE)) AS vwap,
                COUNT(*) AS trades
             FROM trades GROUP BY symbol, date_bin(INTERVAL '1 minute', ts)"
        }
        Workload::Ohlc => {
            "SELECT symbol, date_bin(INTERVAL '1 minute', ts) AS w,
                first_value(price ORDER BY ts) AS open, MAX(price) AS high,
                MIN(price) AS low, last_value(price ORDER BY ts) AS close,
                SUM(volume) AS volume
             FROM trades GROUP BY symbol, date_bin(INTERVAL '1 minute', ts)"
        }
        Workload::Session => {
            "SELECT symbol, MIN(ts) AS s, COUNT(*) AS n, SUM(volume) AS volume FROM (
               SELECT *, SUM(new_session) OVER (PARTITION BY symbol ORDER BY ts
                 ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS session_id FROM (
                 SELECT *, CASE WHEN ts - LAG(ts) OVER (PARTITION BY symbol ORDER BY ts)
                   < INTERVAL '500 milliseconds' THEN 0 ELSE 1 END AS new_session
                 FROM trades))
             GROUP BY symbol, session_id"
        }
        Workload::Join => {
            "SELECT o.symbol, o.price AS order_price, t.price AS trade_price
             FROM orders o JOIN trades t ON o.symbol = t.symbol
              AND t.ts BETWEEN o.ts - INTERVAL '50 milliseconds' AND o.ts + INTERVAL '50 milliseconds'"
        }
    }
}

/// The inputs: `(source name, batches)`; generated before anything is
/// timed.
fn inputs(args: &Args) -> Vec<(&'static str, Vec<RecordBatch>)> {
    let trades = workload::batches(args.workload, args.events, args.batch_rows, 0);
    if args.workload == Workload::Join {
        let orders = workload::batches(args.workload, args.events, args.batch_rows, 1);
        vec![("orders", orders), ("trades", trades)]
    } else {
        vec![("trades", trades)]
    }
}

fn shards() -> usize {
    std::env::var("PEERS_SHARDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1)
}

/// One LaminarDB run: build and start (untimed), then push every batch
/// (the join's two inputs interleaved batch by batch), close all time and
/// wait for the last expected row.
fn run_laminardb(args: &Args) -> Result<(f64, usize), String> {
    let inputs = inputs(args);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(async {
        let db = LaminarDB::builder()
            .shards(shards())
            .build()
            .map_err(|e| e.to_string())?;
        let ddl = if args.workload == Workload::Join {
            format!("{TRADES}; {ORDERS}")
        } else {
            TRADES.to_string()
        };
        db.execute(&format!(
            "{ddl}; CREATE STREAM out AS {}",
            laminardb_sql(args.workload)
        ))
        .await
        .map_err(|e| e.to_string())?;
        let mut sub = db.subscribe("out").map_err(|e| e.to_string())?;
        let handles = inputs
            .iter()
            .map(|(name, _)| db.source_untyped(name).map_err(|e| e.to_string()))
            .collect::<Result<Vec<_>, _>>()?;
        db.start().await.map_err(|e| e.to_string())?;
        let want = args.expect_rows;
        let started = Instant::now();
        let reader = std::thread::spawn(move || {
            let mut rows = 0;
            while want.is_none_or(|w| rows < w) {
                match sub.recv() {
                    Some(batch) => rows += batch.num_rows(),
                    None => break,
                }
            }
            (started.elapsed(), rows)
        });
        let longest = inputs.iter().map(|(_, b)| b.len()).max().unwrap_or(0);
        for i in 0..longest {
            for ((_, batches), handle) in inputs.iter().zip(&handles) {
                if let Some(batch) = batches.get(i) {
                    handle.push(batch.clone()).map_err(|e| e.to_string())?;
                }
            }
        }
        for handle in &handles {
            handle.watermark(i64::MAX).map_err(|e| e.to_string())?;
        }
        if want.is_none() {
            // Without a count to wait for, shutting down drains every
            // result to the subscriber and ends it.
            db.shutdown().await.map_err(|e| e.to_string())?;
        }
        let (elapsed, rows) = reader.join().map_err(|_| "the reader panicked")?;
        if want.is_some() {
            db.shutdown().await.map_err(|e| e.to_string())?;
        }
        Ok((elapsed.as_secs_f64(), rows))
    })
}

/// One DataFusion run: the batch query over every row, `collect()` timed.
fn run_datafusion(args: &Args) -> Result<(f64, usize), String> {
    let inputs = inputs(args);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(async {
        // One partition, one thread: the per-core figure.
        let config = datafusion::prelude::SessionConfig::new().with_target_partitions(1);
        let ctx = SessionContext::new_with_config(config);
        for (name, batches) in &inputs {
            let table = MemTable::try_new(workload::schema(), vec![batches.clone()])
                .map_err(|e| e.to_string())?;
            ctx.register_table(*name, Arc::new(table))
                .map_err(|e| e.to_string())?;
        }
        let started = Instant::now();
        let frame = ctx
            .sql(datafusion_sql(args.workload))
            .await
            .map_err(|e| e.to_string())?;
        let result = frame.collect().await.map_err(|e| e.to_string())?;
        let elapsed = started.elapsed();
        Ok((
            elapsed.as_secs_f64(),
            result.iter().map(RecordBatch::num_rows).sum(),
        ))
    })
}

fn main() {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let (engine, rest) = match argv.split_first() {
        Some((engine, rest)) => (engine.as_str(), rest),
        None => ("", &argv[..]),
    };
    if engine == "compare" {
        if let Err(e) = compare::main(rest) {
            eprintln!("peers compare: {e}");
            std::process::exit(2);
        }
        return;
    }
    let run = match engine {
        "laminardb" => run_laminardb,
        "datafusion" => run_datafusion,
        _ => {
            eprintln!("usage: peers <laminardb|datafusion> run ... | peers compare [options]");
            std::process::exit(2);
        }
    };
    let args = match Args::parse(rest) {
        Ok(args) => args,
        Err(usage) => {
            eprintln!("{usage}");
            std::process::exit(2);
        }
    };
    Report {
        engine,
        workload: args.workload,
        events: args.events,
        batch_rows: args.batch_rows,
        outcome: run(&args),
    }
    .print();
}

mod compare;
