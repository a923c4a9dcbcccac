//! Throughput of the streaming operators beyond tumbling windows, each
//! beside DataFusion running the same query (or its plain-SQL meaning) as a
//! batch over the same rows, in the same process.
//!
//! Run: `cargo bench --bench operators`. One shard, batches of 1,024 rows,
//! 1 M events over 100 keys, in bursts of 1,000 ms separated by 1 s of
//! silence (so session windows have sessions). A LaminarDB iteration
//! starts a fresh database (untimed), then times: push every batch, advance
//! the watermark to the end, and shut down (which drains every result to
//! the subscriber). The DataFusion iteration times `collect()`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use datafusion::arrow::array::RecordBatch;
use datafusion::datasource::MemTable;
use laminar_db::LaminarDB;

mod common;

use common::schema;
const EVENTS: usize = 1_000_000;
const BATCH_ROWS: usize = 1024;

use common::TRADES_DDL as DDL;

/// Moving aggregates: the same text in a stream and as a batch query.
const MOVING_ROWS: &str = "SELECT symbol, ts,
        AVG(price) OVER (PARTITION BY symbol ORDER BY ts
                         ROWS BETWEEN 19 PRECEDING AND CURRENT ROW) AS mean20,
        MAX(price) OVER (PARTITION BY symbol ORDER BY ts
                         ROWS BETWEEN 19 PRECEDING AND CURRENT ROW) AS high20
    FROM trades";
const MOVING_RANGE: &str = "SELECT symbol, ts,
        SUM(volume) OVER (PARTITION BY symbol ORDER BY ts
                          RANGE BETWEEN 5000 PRECEDING AND CURRENT ROW) AS volume5s,
        MIN(price) OVER (PARTITION BY symbol ORDER BY ts
                         RANGE BETWEEN 5000 PRECEDING AND CURRENT ROW) AS low5s
    FROM trades";

/// (name, upstream streams, the stream, its batch meaning)
const WORKLOADS: &[(&str, &str, &str, &str)] = &[
    (
        "sliding_10s_by_2s",
        "",
        "SELECT symbol, slide(ts, INTERVAL '10' SECOND, INTERVAL '2' SECOND) AS w,
                COUNT(*) AS n, SUM(volume) AS v
         FROM trades GROUP BY symbol, slide(ts, INTERVAL '10' SECOND, INTERVAL '2' SECOND)",
        "SELECT symbol, w, COUNT(*) AS n, SUM(volume) AS v FROM (
             SELECT *, tumble(ts, 2000) AS w FROM trades UNION ALL
             SELECT *, tumble(ts, 2000) - 2000 AS w FROM trades UNION ALL
             SELECT *, tumble(ts, 2000) - 4000 AS w FROM trades UNION ALL
             SELECT *, tumble(ts, 2000) - 6000 AS w FROM trades UNION ALL
             SELECT *, tumble(ts, 2000) - 8000 AS w FROM trades)
         GROUP BY symbol, w",
    ),
    (
        "session_500ms",
        "",
        "SELECT symbol, session(ts, INTERVAL '500' MILLISECOND) AS s, COUNT(*) AS n,
                SUM(volume) AS v
         FROM trades GROUP BY symbol, session(ts, INTERVAL '500' MILLISECOND)",
        "WITH marked AS (
             SELECT *, CASE WHEN ts - LAG(ts) OVER (PARTITION BY symbol ORDER BY ts) < 500
                            THEN 0 ELSE 1 END AS new_session FROM trades),
         numbered AS (
             SELECT *, SUM(new_session) OVER (PARTITION BY symbol ORDER BY ts
                 ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS sid FROM marked)
         SELECT symbol, MIN(ts) AS s, COUNT(*) AS n, SUM(volume) AS v
         FROM numbered GROUP BY symbol, sid",
    ),
    (
        "emit_changes_group_by",
        "",
        "SELECT symbol, COUNT(*) AS n, SUM(volume) AS v, MAX(price) AS hi
         FROM trades GROUP BY symbol EMIT CHANGES",
        "SELECT symbol, COUNT(*) AS n, SUM(volume) AS v, MAX(price) AS hi
         FROM trades GROUP BY symbol",
    ),
    (
        "top_3_per_key",
        "",
        "SELECT symbol, price, ts, rn FROM (
             SELECT *, ROW_NUMBER() OVER (PARTITION BY symbol ORDER BY price DESC, ts) AS rn
             FROM trades) WHERE rn <= 3 EMIT CHANGES",
        "SELECT symbol, price, ts, rn FROM (
             SELECT *, ROW_NUMBER() OVER (PARTITION BY symbol ORDER BY price DESC, ts) AS rn
             FROM trades) WHERE rn <= 3",
    ),
    (
        "lag_over_event_time",
        "",
        "SELECT symbol, ts, price - LAG(price) OVER (PARTITION BY symbol ORDER BY ts) AS delta
         FROM trades",
        "SELECT symbol, ts, price - LAG(price) OVER (PARTITION BY symbol ORDER BY ts) AS delta
         FROM trades",
    ),
    ("moving_last_20_rows", "", MOVING_ROWS, MOVING_ROWS),
    ("moving_last_5s", "", MOVING_RANGE, MOVING_RANGE),
    (
        "cascading_10s_to_1m_bars",
        "CREATE STREAM bars AS
         SELECT symbol, tumble(ts, INTERVAL '10' SECOND) AS w, MAX(price) AS high,
                SUM(volume) AS volume
         FROM trades GROUP BY symbol, tumble(ts, INTERVAL '10' SECOND);",
        "SELECT symbol, tumble(w, INTERVAL '1' MINUTE) AS m, MAX(high) AS high,
                SUM(volume) AS volume
         FROM bars GROUP BY symbol, tumble(w, INTERVAL '1' MINUTE)",
        "SELECT symbol, tumble(ts, INTERVAL '1' MINUTE) AS m, MAX(price) AS high,
                SUM(volume) AS volume
         FROM trades GROUP BY symbol, tumble(ts, INTERVAL '1' MINUTE)",
    ),
];

/// Trades one ms apart in bursts of 1,000, each followed by 1 s of silence.
fn batches() -> Vec<RecordBatch> {
    common::trades(
        EVENTS,
        BATCH_ROWS,
        |i| 100.0 + ((i * 31) % 1000) as f64 / 100.0,
        |i| (i + (i / 1000) * 1000) as i64,
    )
}

fn run_once(
    rt: &tokio::runtime::Runtime,
    upstream: &str,
    query: &str,
    input: &[RecordBatch],
) -> (Duration, usize) {
    rt.block_on(async {
        let db = LaminarDB::builder().shards(1).build().expect("db");
        db.execute(&format!("{DDL}; {upstream} CREATE STREAM s AS {query}"))
            .await
            .expect("ddl");
        let mut sub = db.subscribe("s").expect("subscribe");
        let source = db.source_untyped("trades").expect("source");
        db.start().await.expect("start");
        let started = Instant::now();
        let reader = std::thread::spawn(move || {
            let mut rows = 0;
            while let Some(batch) = sub.recv() {
                rows += batch.num_rows();
            }
            rows
        });
        for batch in input {
            source.push(batch.clone()).expect("push");
        }
        source.watermark(i64::MAX).expect("watermark");
        db.shutdown().await.expect("shutdown");
        let rows = reader.join().expect("reader");
        (started.elapsed(), rows)
    })
}

fn operators(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("rt");
    let input = batches();
    let ctx = laminar_sql::new_session_context();
    let table = MemTable::try_new(schema(), vec![input.clone()]).expect("memtable");
    ctx.register_table("trades", Arc::new(table))
        .expect("register");
    let mut group = c.benchmark_group("operators");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(10));
    group.throughput(Throughput::Elements(EVENTS as u64));
    for &(name, upstream, query, batch_query) in WORKLOADS {
        let (_, rows) = run_once(&rt, upstream, query, &input);
        println!("{name}: {rows} output rows per run");
        group.bench_with_input(
            BenchmarkId::new("laminardb_1_shard", name),
            &input,
            |b, input| {
                b.iter_custom(|iters| {
                    (0..iters)
                        .map(|_| run_once(&rt, upstream, query, input).0)
                        .sum()
                })
            },
        );
        group.bench_function(
            BenchmarkId::new("datafusion_batch_1_partition", name),
            |b| {
                b.iter(|| {
                    rt.block_on(async {
                        let plan = laminar_sql::plan_for_batch(&ctx, batch_query)
                            .await
                            .expect("plan");
                        ctx.execute_logical_plan(plan)
                            .await
                            .expect("frame")
                            .collect()
                            .await
                            .expect("run")
                            .len()
                    })
                })
            },
        );
    }
    group.finish();
}

criterion_group!(benches, operators);
criterion_main!(benches);
