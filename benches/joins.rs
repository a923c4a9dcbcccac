//! Join throughput per core, beside DataFusion joining the same rows as a
//! batch in the same process, and join state per buffered row.
//!
//! Run: `cargo bench --bench joins`. One shard, batches of 1,024 rows.
//! Orders and trades, 500,000 of each, one every ms on each side, keys
//! spread over `KEYS` symbols; a batch of trades is pushed before the
//! orders of the same milliseconds (market data leads), so ASOF probes are
//! answered at once. A LaminarDB iteration starts a fresh database
//! (untimed), then times: push every batch, close all time, shut down
//! (which drains every result to the subscriber). The figure is input
//! rows (both sides) per second.
//!
//! - `interval_100ms`: `t.ts BETWEEN o.ts - 100 AND o.ts + 100` on 100
//!   keys (about two matches per order); DataFusion runs the same join.
//! - `asof_backward`: `ASOF JOIN ... o.ts >= t.ts` on 1,000 keys; the
//!   figure to read is probe (order) rows per second, half the input.
//!   DataFusion has no ASOF join; its baseline is the plain equi-join on
//!   the key with the time condition, which is a lower bound of the work
//!   (it returns every earlier trade, not the latest).
//! - `lookup_table`: orders enriched from a 1,000-row table; baseline:
//!   DataFusion's hash join with the same table.
//! - state: an interval join whose bound keeps everything (±1 hour), fed
//!   200,000 rows a side; bytes of state per buffered row from the
//!   operator's own accounting (`cargo bench --bench joins -- state` runs
//!   only this).

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use datafusion::arrow::array::{Float64Array, Int64Array, RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::datasource::MemTable;
use laminar_db::LaminarDB;

const EVENTS_PER_SIDE: usize = 500_000;
const BATCH_ROWS: usize = 1024;

const DDL: &str = "CREATE SOURCE trades (symbol VARCHAR NOT NULL, price DOUBLE NOT NULL,
        ts BIGINT NOT NULL, WATERMARK FOR ts AS ts - INTERVAL '1' SECOND);
    CREATE SOURCE orders (id BIGINT NOT NULL, symbol VARCHAR NOT NULL, qty BIGINT NOT NULL,
        ts BIGINT NOT NULL, WATERMARK FOR ts AS ts - INTERVAL '1' SECOND);
    CREATE TABLE instruments (symbol VARCHAR NOT NULL, sector VARCHAR, lot BIGINT,
        PRIMARY KEY (symbol))";

/// (name, keys, stream query, batch baseline)
const WORKLOADS: &[(&str, usize, &str, &str)] = &[
    (
        "interval_100ms",
        100,
        "SELECT o.id, t.price, t.ts FROM orders o JOIN trades t
         ON o.symbol = t.symbol AND t.ts BETWEEN o.ts - 100 AND o.ts + 100",
        "SELECT o.id, t.price, t.ts FROM orders o JOIN trades t
         ON o.symbol = t.symbol AND t.ts BETWEEN o.ts - 100 AND o.ts + 100",
    ),
    (
        "asof_backward",
        1000,
        "SELECT o.id, t.price FROM orders o ASOF JOIN trades t
         ON o.symbol = t.symbol AND o.ts >= t.ts",
        "SELECT o.id, t.price FROM orders o JOIN trades t
         ON o.symbol = t.symbol AND o.ts >= t.ts AND t.ts >= o.ts - 1000",
    ),
    (
        "lookup_table",
        1000,
        "SELECT o.id, o.qty * i.lot AS units, i.sector FROM orders o
         JOIN instruments i ON o.symbol = i.symbol",
        "SELECT o.id, o.qty * i.lot AS units, i.sector FROM orders o
         JOIN instruments i ON o.symbol = i.symbol",
    ),
];

fn names(keys: usize) -> Vec<String> {
    (0..keys).map(|i| format!("SYM{i:04}")).collect()
}

fn trades_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("symbol", DataType::Utf8, false),
        Field::new("price", DataType::Float64, false),
        Field::new("ts", DataType::Int64, false),
    ]))
}

fn orders_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("symbol", DataType::Utf8, false),
        Field::new("qty", DataType::Int64, false),
        Field::new("ts", DataType::Int64, false),
    ]))
}

/// Trades and orders, batch by batch, each side one row per ms.
fn input(keys: usize, events: usize) -> (Vec<RecordBatch>, Vec<RecordBatch>) {
    let names = names(keys);
    let mut trades = Vec::new();
    let mut orders = Vec::new();
    for start in (0..events).step_by(BATCH_ROWS) {
        let rows = start..(start + BATCH_ROWS).min(events);
        trades.push(
            RecordBatch::try_new(
                trades_schema(),
                vec![
                    Arc::new(StringArray::from_iter_values(
                        rows.clone().map(|i| names[(i * 7919) % keys].as_str()),
                    )),
                    Arc::new(Float64Array::from_iter_values(
                        rows.clone().map(|i| 100.0 + (i % 1000) as f64 / 100.0),
                    )),
                    Arc::new(Int64Array::from_iter_values(rows.clone().map(|i| i as i64))),
                ],
            )
            .expect("trades"),
        );
        orders.push(
            RecordBatch::try_new(
                orders_schema(),
                vec![
                    Arc::new(Int64Array::from_iter_values(rows.clone().map(|i| i as i64))),
                    Arc::new(StringArray::from_iter_values(
                        rows.clone()
                            .map(|i| names[(i * 104_729 + 13) % keys].as_str()),
                    )),
                    Arc::new(Int64Array::from_iter_values(
                        rows.clone().map(|i| 1 + (i % 100) as i64),
                    )),
                    Arc::new(Int64Array::from_iter_values(rows.map(|i| i as i64))),
                ],
            )
            .expect("orders"),
        );
    }
    (trades, orders)
}

fn instruments(keys: usize) -> RecordBatch {
    RecordBatch::try_new(
        Arc::new(Schema::new(vec![
            Field::new("symbol", DataType::Utf8, false),
            Field::new("sector", DataType::Utf8, true),
            Field::new("lot", DataType::Int64, true),
        ])),
        vec![
            Arc::new(StringArray::from_iter_values(names(keys))),
            Arc::new(StringArray::from_iter_values(
                (0..keys).map(|i| format!("sector{}", i % 11)),
            )),
            Arc::new(Int64Array::from_iter_values(
                (0..keys as i64).map(|i| 1 + i % 100),
            )),
        ],
    )
    .expect("instruments")
}

/// One timed run; returns the time and the output rows.
fn run_once(
    rt: &tokio::runtime::Runtime,
    query: &str,
    keys: usize,
    trades: &[RecordBatch],
    orders: &[RecordBatch],
) -> (Duration, usize, laminar_db::Metrics) {
    rt.block_on(async {
        let db = LaminarDB::builder().shards(1).build().expect("db");
        db.execute(DDL).await.expect("ddl");
        let values: Vec<String> = names(keys)
            .iter()
            .enumerate()
            .map(|(i, n)| format!("('{n}', 'sector{}', {})", i % 11, 1 + i % 100))
            .collect();
        db.execute(&format!(
            "INSERT INTO instruments VALUES {}",
            values.join(", ")
        ))
        .await
        .expect("insert");
        db.execute(&format!("CREATE STREAM s AS {query}"))
            .await
            .expect("stream");
        let mut sub = db.subscribe("s").expect("subscribe");
        let trade_source = db.source_untyped("trades").expect("source");
        let order_source = db.source_untyped("orders").expect("source");
        db.start().await.expect("start");
        let started = Instant::now();
        let reader = std::thread::spawn(move || {
            let mut rows = 0;
            while let Some(batch) = sub.recv() {
                rows += batch.num_rows();
            }
            rows
        });
        for (t, o) in trades.iter().zip(orders) {
            trade_source.push(t.clone()).expect("push");
            order_source.push(o.clone()).expect("push");
        }
        trade_source.watermark(i64::MAX).expect("watermark");
        order_source.watermark(i64::MAX).expect("watermark");
        db.shutdown().await.expect("shutdown");
        let rows = reader.join().expect("reader");
        (started.elapsed(), rows, db.metrics())
    })
}

fn joins(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("rt");
    let mut group = c.benchmark_group("joins");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(10));
    group.throughput(Throughput::Elements(2 * EVENTS_PER_SIDE as u64));
    for &(name, keys, query, batch_query) in WORKLOADS {
        let (trades, orders) = input(keys, EVENTS_PER_SIDE);
        let (_, rows, _) = run_once(&rt, query, keys, &trades, &orders);
        println!("{name}: {rows} output rows per run");
        group.bench_function(BenchmarkId::new("laminardb_1_shard", name), |b| {
            b.iter_custom(|iters| {
                (0..iters)
                    .map(|_| run_once(&rt, query, keys, &trades, &orders).0)
                    .sum()
            })
        });
        let ctx = laminar_sql::new_session_context();
        for (table, schema, rows) in [
            ("trades", trades_schema(), trades.clone()),
            ("orders", orders_schema(), orders.clone()),
            (
                "instruments",
                instruments(keys).schema(),
                vec![instruments(keys)],
            ),
        ] {
            let memory = MemTable::try_new(schema, vec![rows]).expect("memtable");
            ctx.register_table(table, Arc::new(memory))
                .expect("register");
        }
        group.bench_function(
            BenchmarkId::new("datafusion_batch_1_partition", name),
            |b| {
                b.iter(|| {
                    rt.block_on(async {
                        ctx.sql(batch_query)
                            .await
                            .expect("plan")
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
    state_per_row(&rt);
}

/// Bytes of interval-join state per buffered row, when nothing can be
/// retired yet (a bound of an hour, and a condition on both sides that
/// holds for no pair, so the output costs nothing and both sides store
/// every row).
fn state_per_row(rt: &tokio::runtime::Runtime) {
    let events = 200_000;
    let (trades, orders) = input(100, events);
    rt.block_on(async {
        let db = LaminarDB::builder().shards(1).build().expect("db");
        db.execute(DDL).await.expect("ddl");
        db.execute(
            "CREATE STREAM s AS SELECT o.id, t.price FROM orders o JOIN trades t
             ON o.symbol = t.symbol AND t.ts BETWEEN o.ts - 3600000 AND o.ts + 3600000
             AND t.price < CAST(o.qty AS DOUBLE) - 1000",
        )
        .await
        .expect("stream");
        let trade_source = db.source_untyped("trades").expect("source");
        let order_source = db.source_untyped("orders").expect("source");
        db.start().await.expect("start");
        for (t, o) in trades.iter().zip(&orders) {
            trade_source.push(t.clone()).expect("push");
            order_source.push(o.clone()).expect("push");
        }
        // The watermark message after the last batch publishes the state
        // size.
        let deadline = Instant::now() + Duration::from_secs(30);
        let rows_in = 2 * events as u64;
        while db.metrics().streams[0].rows_in < rows_in && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        std::thread::sleep(Duration::from_millis(200));
        let bytes = db.metrics().streams[0].state_bytes as f64;
        println!(
            "interval join state: {:.0} bytes per buffered row ({} rows of 3-4 columns buffered)",
            bytes / rows_in as f64,
            rows_in
        );
        db.shutdown().await.expect("shutdown");
    });
}

criterion_group!(benches, joins);
criterion_main!(benches);
