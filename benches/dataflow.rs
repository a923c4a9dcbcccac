//! The engine's plumbing, each beside the same work without it, same rows,
//! same run:
//!
//! - `exchange`: a windowed aggregate keyed by symbol fed through a
//!   shard-to-shard exchange (it reads a filter stream, whose rows are
//!   spread over the shards without regard to the key, so every row is
//!   re-partitioned) against the same aggregate reading the source
//!   directly (rows routed by symbol at push time, no exchange); 2 shards.
//! - `subscription_dispatch`: a filter stream with 1 and with 4
//!   subscribers, each receiving every result batch; 1 shard.
//! - `reactor_loop`: 100,000 one-row batches through a pass-through stream
//!   on 1 shard (handle ring, shard turn, operator call, subscriber ring):
//!   the engine's fixed cost per message, beside the same batches sent
//!   straight through one SPSC ring to a thread (the floor).
//!
//! Run: `cargo bench --bench dataflow`. 2 M events (100 symbols, one per
//! ms) in batches of 1,024; each iteration starts a fresh database
//! (untimed), then times pushing every batch, closing the windows and
//! receiving every result.

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use datafusion::arrow::array::RecordBatch;
use laminar_db::LaminarDB;

mod common;

use common::{batches, SYMBOLS, TRADES_DDL};

const EVENTS: usize = 2_000_000;
const AGGREGATE: &str = "SELECT symbol, SUM(volume) AS volume, COUNT(*) AS trades
    FROM {input} GROUP BY symbol, tumble(ts, INTERVAL '1' MINUTE)";

fn exchange_run(
    rt: &tokio::runtime::Runtime,
    through_exchange: bool,
    input: &[RecordBatch],
) -> Duration {
    rt.block_on(async {
        let db = LaminarDB::builder().shards(2).build().expect("db");
        let ddl = if through_exchange {
            format!(
                "{TRADES_DDL}; CREATE STREAM priced AS SELECT symbol, volume, ts FROM trades WHERE price > 0;
                 CREATE STREAM totals AS {}",
                AGGREGATE.replace("{input}", "priced")
            )
        } else {
            format!("{TRADES_DDL}; CREATE STREAM totals AS {}", AGGREGATE.replace("{input}", "trades"))
        };
        db.execute(&ddl).await.expect("ddl");
        let windows = EVENTS.div_ceil(60_000);
        common::time_run(db, "totals", input, windows * SYMBOLS).await
    })
}

fn exchange(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("rt");
    let input = batches(EVENTS, 1024);
    let mut group = c.benchmark_group("exchange");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(8))
        .throughput(Throughput::Elements(EVENTS as u64));
    for (name, through) in [("routed_at_push", false), ("through_exchange", true)] {
        group.bench_with_input(BenchmarkId::new(name, 2), &input, |b, input| {
            b.iter_custom(|iters| (0..iters).map(|_| exchange_run(&rt, through, input)).sum())
        });
    }
    group.finish();
}

fn dispatch_run(
    rt: &tokio::runtime::Runtime,
    subscribers: usize,
    input: &[RecordBatch],
) -> Duration {
    rt.block_on(async {
        let db = LaminarDB::builder().shards(1).build().expect("db");
        db.execute(&format!(
            "{TRADES_DDL}; CREATE STREAM priced AS SELECT symbol, price, volume FROM trades WHERE volume > 0"
        ))
        .await
        .expect("ddl");
        let subscriptions: Vec<_> = (0..subscribers)
            .map(|_| db.subscribe("priced").expect("subscribe"))
            .collect();
        let source = db.source_untyped("trades").expect("source");
        db.start().await.expect("start");
        let started = Instant::now();
        let readers: Vec<_> = subscriptions
            .into_iter()
            .map(|mut sub| {
                std::thread::spawn(move || {
                    let mut rows = 0;
                    while rows < EVENTS {
                        rows += sub.recv().expect("results").num_rows();
                    }
                })
            })
            .collect();
        for batch in input {
            source.push(batch.clone()).expect("push");
        }
        for reader in readers {
            reader.join().expect("reader");
        }
        let elapsed = started.elapsed();
        db.shutdown().await.expect("shutdown");
        elapsed
    })
}

fn subscription_dispatch(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("rt");
    let input = batches(EVENTS, 1024);
    let mut group = c.benchmark_group("subscription_dispatch");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(8))
        .throughput(Throughput::Elements(EVENTS as u64));
    for subscribers in [1usize, 4] {
        group.bench_with_input(
            BenchmarkId::new("subscribers", subscribers),
            &input,
            |b, input| {
                b.iter_custom(|iters| {
                    (0..iters)
                        .map(|_| dispatch_run(&rt, subscribers, input))
                        .sum()
                })
            },
        );
    }
    group.finish();
}

const SINGLE_ROWS: usize = 100_000;

fn reactor_run(rt: &tokio::runtime::Runtime, input: &[RecordBatch]) -> Duration {
    rt.block_on(async {
        let db = LaminarDB::builder().shards(1).build().expect("db");
        db.execute(&format!(
            "{TRADES_DDL}; CREATE STREAM passed AS SELECT symbol, price FROM trades"
        ))
        .await
        .expect("ddl");
        let mut subscription = db.subscribe("passed").expect("subscribe");
        let source = db.source_untyped("trades").expect("source");
        db.start().await.expect("start");
        let started = Instant::now();
        let reader = std::thread::spawn(move || {
            let mut rows = 0;
            while rows < SINGLE_ROWS {
                rows += subscription.recv().expect("results").num_rows();
            }
        });
        for batch in input {
            source.push(batch.clone()).expect("push");
        }
        reader.join().expect("reader");
        let elapsed = started.elapsed();
        db.shutdown().await.expect("shutdown");
        elapsed
    })
}

/// The floor: the same batches through one ring to a spinning thread.
fn ring_run(input: &[RecordBatch]) -> Duration {
    let (mut producer, mut consumer) = laminar_runtime::spsc::ring::<RecordBatch>(64);
    let started = Instant::now();
    let reader = std::thread::spawn(move || {
        let mut rows = 0;
        while rows < SINGLE_ROWS {
            match consumer.try_pop() {
                Some(batch) => rows += batch.num_rows(),
                None => std::hint::spin_loop(),
            }
        }
    });
    for batch in input {
        let mut message = batch.clone();
        while let Err(laminar_runtime::spsc::PushError::Full(back)) = producer.try_push(message) {
            message = back;
            std::hint::spin_loop();
        }
    }
    reader.join().expect("reader");
    started.elapsed()
}

fn reactor_loop(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("rt");
    let input = batches(SINGLE_ROWS, 1);
    let mut group = c.benchmark_group("reactor_loop");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(8))
        .throughput(Throughput::Elements(SINGLE_ROWS as u64));
    group.bench_with_input(
        BenchmarkId::new("pass_through_stream", 1),
        &input,
        |b, input| b.iter_custom(|iters| (0..iters).map(|_| reactor_run(&rt, input)).sum()),
    );
    group.bench_with_input(BenchmarkId::new("one_ring", 1), &input, |b, input| {
        b.iter_custom(|iters| (0..iters).map(|_| ring_run(input)).sum())
    });
    group.finish();
}

criterion_group!(benches, exchange, subscription_dispatch, reactor_loop);
criterion_main!(benches);
