//! The trades every benchmark feeds: one schema, one generator.

use std::sync::Arc;
use std::time::{Duration, Instant};

use datafusion::arrow::array::{Float64Array, Int64Array, RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};

/// Distinct symbols (group keys).
pub const SYMBOLS: usize = 100;

/// The `trades` source of [`schema`], with a one-second watermark bound.
#[allow(dead_code)] // not every benchmark uses it
pub const TRADES_DDL: &str = "CREATE SOURCE trades (symbol VARCHAR NOT NULL, price DOUBLE NOT NULL,
    volume BIGINT NOT NULL, ts BIGINT NOT NULL, WATERMARK FOR ts AS ts - INTERVAL '1' SECOND)";

pub fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("symbol", DataType::Utf8, false),
        Field::new("price", DataType::Float64, false),
        Field::new("volume", DataType::Int64, false),
        Field::new("ts", DataType::Int64, false),
    ]))
}

/// `events` trades in batches of `batch_rows`; row `i` has price
/// `price(i)` and event time `ts(i)`.
pub fn trades(
    events: usize,
    batch_rows: usize,
    price: impl Fn(usize) -> f64,
    ts: impl Fn(usize) -> i64,
) -> Vec<RecordBatch> {
    let names: Vec<String> = (0..SYMBOLS).map(|i| format!("SYM{i:04}")).collect();
    (0..events)
        .step_by(batch_rows)
        .map(|start| {
            let rows = start..start + batch_rows.min(events - start);
            RecordBatch::try_new(
                schema(),
                vec![
                    Arc::new(StringArray::from_iter_values(
                        rows.clone().map(|i| names[(i * 7919) % SYMBOLS].as_str()),
                    )),
                    Arc::new(Float64Array::from_iter_values(rows.clone().map(&price))),
                    Arc::new(Int64Array::from_iter_values(
                        rows.clone().map(|i| 1 + (i % 500) as i64),
                    )),
                    Arc::new(Int64Array::from_iter_values(rows.map(&ts))),
                ],
            )
            .expect("bench batch")
        })
        .collect()
}

/// `events` trades one ms apart, in batches of `batch_rows`.
#[allow(dead_code)] // not every benchmark uses it
pub fn batches(events: usize, batch_rows: usize) -> Vec<RecordBatch> {
    trades(
        events,
        batch_rows,
        |i| 100.0 + (i % 1000) as f64 / 100.0,
        |i| i as i64,
    )
}

#[allow(dead_code)] // not every benchmark uses it
/// One timed run on a database whose DDL already defines source `trades`
/// and stream `stream`: start it, push every batch, close all windows, and
/// wait until the subscriber has `want` rows. Starting is not timed.
pub async fn time_run(
    db: laminar_db::LaminarDB,
    stream: &str,
    input: &[RecordBatch],
    want: usize,
) -> Duration {
    measured_run(db, stream, input, want).await.0
}

#[allow(dead_code)] // not every benchmark uses it
/// [`time_run`], also returning what the shard threads allocated from the
/// first push to the last result (with the `allocation-tracking` feature;
/// `None` without it).
pub async fn measured_run(
    db: laminar_db::LaminarDB,
    stream: &str,
    input: &[RecordBatch],
    want: usize,
) -> (Duration, Option<u64>) {
    let mut sub = db.subscribe(stream).expect("subscribe");
    let source = db.source_untyped("trades").expect("source");
    db.start().await.expect("start");
    let allocations_before = laminar_db::shard_allocations_total();
    let started = Instant::now();
    let reader = std::thread::spawn(move || {
        let mut rows = 0;
        while rows < want {
            rows += sub.recv().expect("results").num_rows();
        }
    });
    for batch in input {
        source.push(batch.clone()).expect("push");
    }
    source.watermark(i64::MAX).expect("watermark");
    reader.join().expect("reader");
    let elapsed = started.elapsed();
    let allocations = laminar_db::shard_allocations_total().zip(allocations_before);
    db.shutdown().await.expect("shutdown");
    (elapsed, allocations.map(|(after, before)| after - before))
}

/// Criterion's output directory (`$CARGO_TARGET_DIR/criterion`), where
/// benchmarks also leave raw samples for `benches/plots`.
#[allow(dead_code)] // not every benchmark uses it
pub fn criterion_dir() -> std::path::PathBuf {
    let dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::PathBuf::from("target"))
        .join("criterion");
    std::fs::create_dir_all(&dir).expect("criterion dir");
    dir
}

/// A directory for a benchmark's storage directories, under the target
/// directory (a real disk, not a tmpfs).
#[allow(dead_code)] // not every benchmark uses it
pub fn storage_root(name: &str) -> std::path::PathBuf {
    let dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::PathBuf::from("target"))
        .join(name);
    std::fs::create_dir_all(&dir).expect("bench dir");
    dir
}
