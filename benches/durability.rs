//! What durability costs on the hot path: the same VWAP run (1 shard) with
//! `Memory`, `Async` and `Sync` durability side by side, at batch 1024 and
//! 64, and the latency of one durable single-row push. And what recovery
//! costs: reopening a storage directory holding 1 M logged events and
//! replaying them, beside running the same events with no log at all.
//!
//! Run: `cargo bench --bench durability`. Storage directories go under the
//! target directory (a real disk, not a tmpfs). Each iteration starts a
//! fresh database (untimed), then times: push every batch (in `Sync`, each
//! push returns once it is durable), close the windows, and wait for every
//! result.

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use datafusion::arrow::array::RecordBatch;
use futures::StreamExt;
use laminar_db::{Durability, LaminarDB, LatencyHistogram};

mod common;

use common::{batches, storage_root, SYMBOLS};

const DDL: &str = "CREATE SOURCE trades (symbol VARCHAR NOT NULL, price DOUBLE NOT NULL,
    volume BIGINT NOT NULL, ts BIGINT NOT NULL, WATERMARK FOR ts AS ts - INTERVAL '1' SECOND);
CREATE STREAM vwap AS SELECT symbol,
       SUM(price * CAST(volume AS DOUBLE)) / SUM(CAST(volume AS DOUBLE)) AS vwap,
       COUNT(*) AS trades
FROM trades GROUP BY symbol, tumble(ts, INTERVAL '1' MINUTE)";

fn open(durability: Durability) -> (LaminarDB, Option<tempfile::TempDir>) {
    let builder = LaminarDB::builder().shards(1);
    match durability {
        Durability::Memory => (builder.build().expect("db"), None),
        _ => {
            let dir = tempfile::tempdir_in(storage_root("durability-bench")).expect("dir");
            let db = builder
                .storage_dir(dir.path())
                .durability(durability)
                .build()
                .expect("db");
            (db, Some(dir))
        }
    }
}

fn run_once(
    rt: &tokio::runtime::Runtime,
    durability: Durability,
    input: &[RecordBatch],
) -> Duration {
    rt.block_on(async {
        let (db, _dir) = open(durability);
        db.execute(DDL).await.expect("ddl");
        let events: usize = input.iter().map(|b| b.num_rows()).sum();
        common::time_run(db, "vwap", input, events.div_ceil(60_000) * SYMBOLS).await
    })
}

const MODES: [(&str, Durability); 3] = [
    ("memory", Durability::Memory),
    ("async", Durability::Async),
    ("sync", Durability::Sync),
];

fn throughput(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("rt");
    let mut group = c.benchmark_group("durability_vwap");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(8));
    for (batch_rows, events) in [(1024usize, 1_000_000usize), (64, 200_000)] {
        let input = batches(events, batch_rows);
        group.throughput(Throughput::Elements(events as u64));
        for (name, durability) in MODES {
            group.bench_with_input(BenchmarkId::new(name, batch_rows), &input, |b, input| {
                b.iter_custom(|iters| (0..iters).map(|_| run_once(&rt, durability, input)).sum())
            });
        }
    }
    group.finish();
}

/// One single-row push, returned: in `Sync` that is one WAL write and one
/// `fdatasync`; p50/p99 per mode, alternating modes so they share the
/// disk's weather.
fn push_latency(_: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("rt");
    let one = batches(1, 1).remove(0);
    let mut histograms: Vec<LatencyHistogram> = MODES.iter().map(|_| Default::default()).collect();
    for _round in 0..4 {
        for (m, (_, durability)) in MODES.iter().enumerate() {
            rt.block_on(async {
                let (db, _dir) = open(*durability);
                db.execute(DDL).await.expect("ddl");
                let source = db.source_untyped("trades").expect("source");
                db.start().await.expect("start");
                for i in 0..500 {
                    let started = Instant::now();
                    source.push(one.clone()).expect("push");
                    if i >= 50 {
                        histograms[m].record(started.elapsed());
                    }
                }
                db.shutdown().await.expect("shutdown");
            });
        }
    }
    for ((name, _), h) in MODES.iter().zip(&histograms) {
        println!(
            "single-row push returned ({name}): p50 {:?} p99 {:?} ({} samples)",
            h.quantile(0.5).unwrap_or_default(),
            h.quantile(0.99).unwrap_or_default(),
            h.count()
        );
    }
}

/// The VWAP pipeline on an `Async` storage directory.
async fn open_at(dir: &std::path::Path) -> LaminarDB {
    let db = LaminarDB::builder()
        .shards(1)
        .storage_dir(dir)
        .durability(Durability::Async)
        .build()
        .expect("db");
    db.execute(DDL).await.expect("ddl");
    db
}

/// Reopen + replay of a log of 1 M events (batch 1024, ~40 MB of WAL),
/// until the subscriber has every result, against pushing the same events
/// into a `Memory` database: replay is the engine's own work plus reading
/// and decoding the log.
fn recovery(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("rt");
    let events = 1_000_000;
    let input = batches(events, 1024);
    let want = events.div_ceil(60_000) * SYMBOLS;
    let dir = tempfile::tempdir_in(storage_root("durability-bench")).expect("dir");
    rt.block_on(async {
        let db = open_at(dir.path()).await;
        let source = db.source_untyped("trades").expect("source");
        db.start().await.expect("start");
        for batch in &input {
            source.push(batch.clone()).expect("push");
        }
        source.watermark(i64::MAX).expect("watermark");
        db.shutdown().await.expect("shutdown");
    });
    let mut group = c.benchmark_group("recovery");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(10));
    group.throughput(Throughput::Elements(events as u64));
    group.bench_function("replay_1M_events", |b| {
        b.iter_custom(|iters| {
            (0..iters)
                .map(|_| {
                    rt.block_on(async {
                        let started = Instant::now();
                        let db = open_at(dir.path()).await;
                        let mut sub = db.subscribe("vwap").expect("subscribe");
                        db.start().await.expect("start");
                        let mut rows = 0;
                        while rows < want {
                            rows += sub.next().await.expect("results").num_rows();
                        }
                        let elapsed = started.elapsed();
                        db.shutdown().await.expect("shutdown");
                        elapsed
                    })
                })
                .sum()
        })
    });
    group.bench_function("memory_push_1M_events", |b| {
        b.iter_custom(|iters| {
            (0..iters)
                .map(|_| run_once(&rt, Durability::Memory, &input))
                .sum()
        })
    });
    group.finish();
}

criterion_group!(benches, push_latency, throughput, recovery);
criterion_main!(benches);
