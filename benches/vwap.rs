//! VWAP throughput per shard and single-row push-to-subscriber latency.
//!
//! Run: `cargo bench --bench vwap`. Each throughput iteration starts a fresh
//! database (untimed), then times: push every pre-built batch, advance the
//! watermark past the end, and wait until the subscriber has every window's
//! result. The DataFusion baseline runs the same SQL as a one-shot batch
//! query over the same batches in the same process.
//!
//! With `--features allocation-tracking`, it first prints what the shard
//! threads allocate per 1,000 events at each batch size (one untimed run
//! each).

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use datafusion::arrow::array::RecordBatch;
use datafusion::datasource::MemTable;
use laminar_db::{LaminarDB, LatencyHistogram};

mod common;

use common::{batches, schema, SYMBOLS};

use common::TRADES_DDL as DDL;

const VWAP: &str = "SELECT symbol,
       SUM(price * CAST(volume AS DOUBLE)) / SUM(CAST(volume AS DOUBLE)) AS vwap,
       COUNT(*) AS trades
FROM trades
GROUP BY symbol, tumble(ts, INTERVAL '1' MINUTE)";

fn expected_rows(events: usize) -> usize {
    let windows = events.div_ceil(60_000);
    windows * SYMBOLS.min(events)
}

/// One timed run: push everything, close all windows, wait for the results.
fn run_once(
    rt: &tokio::runtime::Runtime,
    shards: usize,
    input: &[RecordBatch],
    events: usize,
) -> Duration {
    run_with_options(rt, shards, "", input, events)
}

/// The same, with source options (`WITH (...)`) appended to the DDL.
fn run_with_options(
    rt: &tokio::runtime::Runtime,
    shards: usize,
    options: &str,
    input: &[RecordBatch],
    events: usize,
) -> Duration {
    rt.block_on(async {
        let db = LaminarDB::builder().shards(shards).build().expect("db");
        db.execute(&format!("{DDL}{options}; CREATE STREAM vwap AS {VWAP}"))
            .await
            .expect("ddl");
        common::time_run(db, "vwap", input, expected_rows(events)).await
    })
}

/// Per-key watermarks (`watermark_key = 'symbol'`) against one watermark
/// per handle, same rows, same run: the cost of the per-row key lookup on
/// the pushing thread.
fn watermark_key(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("rt");
    let mut group = c.benchmark_group("vwap_watermark_key");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(8));
    let events = 4_000_000;
    for batch_rows in [64usize, 1024] {
        let input = batches(events, batch_rows);
        group.throughput(Throughput::Elements(events as u64));
        for (name, options) in [
            ("per_handle", ""),
            ("per_key", " WITH (watermark_key = 'symbol')"),
        ] {
            group.bench_with_input(BenchmarkId::new(name, batch_rows), &input, |b, input| {
                b.iter_custom(|iters| {
                    (0..iters)
                        .map(|_| run_with_options(&rt, 1, options, input, events))
                        .sum()
                })
            });
        }
    }
    group.finish();
}

fn throughput(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("rt");
    let mut group = c.benchmark_group("vwap_throughput");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(8));
    for batch_rows in [1usize, 64, 1024, 8192] {
        let events = match batch_rows {
            1 => 100_000,
            64 => 1_000_000,
            _ => 4_000_000,
        };
        let input = batches(events, batch_rows);
        group.throughput(Throughput::Elements(events as u64));
        for shards in [1usize, 2] {
            group.bench_with_input(
                BenchmarkId::new(format!("laminardb_{shards}_shards"), batch_rows),
                &input,
                |b, input| {
                    b.iter_custom(|iters| {
                        (0..iters)
                            .map(|_| run_once(&rt, shards, input, events))
                            .sum()
                    })
                },
            );
        }
        if batch_rows >= 1024 {
            // The ceiling: DataFusion's batch engine on the same rows, one
            // partition per core as the streaming side gets.
            for partitions in [1usize, 2] {
                let ctx = laminar_sql::new_session_context();
                let state = ctx.state();
                let mut config = state.config().clone();
                config.options_mut().execution.target_partitions = partitions;
                let ctx = datafusion::prelude::SessionContext::new_with_config(config);
                laminar_sql::functions::register_functions(&ctx);
                let per_partition: Vec<Vec<RecordBatch>> = (0..partitions)
                    .map(|p| input.iter().skip(p).step_by(partitions).cloned().collect())
                    .collect();
                let table = MemTable::try_new(schema(), per_partition).expect("memtable");
                ctx.register_table("trades", Arc::new(table))
                    .expect("register");
                group.bench_function(
                    BenchmarkId::new(
                        format!("datafusion_batch_{partitions}_partitions"),
                        batch_rows,
                    ),
                    |b| {
                        b.iter(|| {
                            rt.block_on(async {
                                let rows: usize = ctx
                                    .sql(VWAP)
                                    .await
                                    .expect("plan")
                                    .collect()
                                    .await
                                    .expect("run")
                                    .iter()
                                    .map(|b| b.num_rows())
                                    .sum();
                                assert_eq!(rows, expected_rows(events));
                            })
                        })
                    },
                );
            }
        }
    }
    group.finish();
}

/// Single-row push to subscriber, through a filter stream: criterion's
/// mean, plus p50/p99 from our histogram over many samples.
fn latency(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("rt");
    let (db, source, mut sub) = rt.block_on(async {
        let db = LaminarDB::builder()
            .shards(1)
            .idle_spin(Duration::from_millis(5))
            .build()
            .expect("db");
        db.execute(&format!(
            "{DDL}; CREATE STREAM big AS SELECT symbol, price FROM trades WHERE volume > 0"
        ))
        .await
        .expect("ddl");
        let sub = db.subscribe("big").expect("subscribe");
        let source = db.source_untyped("trades").expect("source");
        db.start().await.expect("start");
        (db, source, sub)
    });
    let rows = batches(1, 1);
    let one = rows[0].clone();
    let round_trip = |sub: &mut laminar_db::Subscription| {
        source.push(one.clone()).expect("push");
        loop {
            if sub.poll().is_some() {
                break;
            }
            std::hint::spin_loop();
        }
    };
    for _ in 0..10_000 {
        round_trip(&mut sub);
    }
    let mut histogram = LatencyHistogram::default();
    let mut samples_ns: Vec<u64> = Vec::with_capacity(100_000);
    for _ in 0..100_000 {
        let started = Instant::now();
        round_trip(&mut sub);
        let elapsed = started.elapsed();
        histogram.record(elapsed);
        samples_ns.push(elapsed.as_nanos() as u64);
    }
    // Every sample, for the latency plot (benches/plots).
    let path = common::criterion_dir().join("vwap_latency_samples_ns.csv");
    let text: String = samples_ns.iter().map(|ns| format!("{ns}\n")).collect();
    std::fs::write(&path, format!("latency_ns\n{text}")).expect("write the latency samples");
    println!(
        "single-row push-to-subscriber latency: p50 {:?} p99 {:?} p99.9 {:?} ({} samples)",
        histogram.quantile(0.5).unwrap_or_default(),
        histogram.quantile(0.99).unwrap_or_default(),
        histogram.quantile(0.999).unwrap_or_default(),
        histogram.count()
    );
    c.bench_function("single_row_push_to_subscriber", |b| {
        b.iter(|| round_trip(&mut sub))
    });
    rt.block_on(db.shutdown()).expect("shutdown");
}

/// Shard-thread allocations per 1,000 events at each batch size (feature
/// `allocation-tracking`; prints nothing without it). Not timed.
fn allocations(_: &mut Criterion) {
    if laminar_db::shard_allocations_total().is_none() {
        return;
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("rt");
    for batch_rows in [1usize, 64, 1024, 8192] {
        let events = if batch_rows == 1 { 100_000 } else { 1_000_000 };
        let input = batches(events, batch_rows);
        for shards in [1usize, 2] {
            let (_, counted) = rt.block_on(async {
                let db = LaminarDB::builder().shards(shards).build().expect("db");
                db.execute(&format!("{DDL}; CREATE STREAM vwap AS {VWAP}"))
                    .await
                    .expect("ddl");
                common::measured_run(db, "vwap", &input, expected_rows(events)).await
            });
            let per_1000 = counted.unwrap_or(0) as f64 * 1000.0 / events as f64;
            println!(
                "vwap_allocations/{shards}_shards/{batch_rows}: {per_1000:.2} shard-thread allocations per 1,000 events"
            );
        }
    }
}

criterion_group!(benches, allocations, latency, throughput, watermark_key);
criterion_main!(benches);
