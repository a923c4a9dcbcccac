//! Shared test helpers: synthetic data, the streaming run, the batch
//! oracle, and multiset comparison.

#![allow(dead_code)]

use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, Float64Array, Int64Array, RecordBatch, StringArray,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::datasource::MemTable;
use laminar_db::LaminarDB;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Trades schema used by most tests.
pub fn trades_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("symbol", DataType::Utf8, false),
        Field::new("price", DataType::Float64, false),
        Field::new("volume", DataType::Int64, false),
        Field::new("ts", DataType::Int64, false),
    ]))
}

pub const TRADES_DDL: &str = "CREATE SOURCE trades (
    symbol VARCHAR NOT NULL, price DOUBLE NOT NULL, volume BIGINT NOT NULL, ts BIGINT NOT NULL,
    WATERMARK FOR ts AS ts - INTERVAL '5' SECOND)";

/// A trade row.
#[derive(Debug, Clone, PartialEq)]
pub struct Trade {
    pub symbol: String,
    pub price: f64,
    pub volume: i64,
    pub ts: i64,
}

/// `n` trades over `symbols` keys with unique event times 7 ms apart,
/// shuffled within blocks so no row is more than `disorder_ms` out of order
/// (keep it under the 5 s watermark bound for no late rows).
pub fn trades(seed: u64, n: usize, symbols: usize, disorder_ms: i64) -> Vec<Trade> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut rows: Vec<Trade> = (0..n)
        .map(|i| Trade {
            symbol: format!("S{:03}", rng.random_range(0..symbols)),
            price: (rng.random_range(1_000..100_000) as f64) / 100.0,
            volume: rng.random_range(1..1_000),
            ts: 1_700_000_000_000 + i as i64 * 7,
        })
        .collect();
    let block = ((disorder_ms / 7) as usize).max(1);
    for chunk in rows.chunks_mut(block) {
        for i in (1..chunk.len()).rev() {
            let j = rng.random_range(0..=i);
            chunk.swap(i, j);
        }
    }
    rows
}

pub fn trades_batch(rows: &[Trade]) -> RecordBatch {
    RecordBatch::try_new(
        trades_schema(),
        vec![
            Arc::new(StringArray::from_iter_values(
                rows.iter().map(|r| r.symbol.as_str()),
            )),
            Arc::new(Float64Array::from_iter_values(rows.iter().map(|r| r.price))),
            Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.volume))),
            Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.ts))),
        ],
    )
    .unwrap()
}

/// Splits rows into batches of random sizes in `1..=max_batch`.
pub fn random_batches(rows: &[Trade], seed: u64, max_batch: usize) -> Vec<RecordBatch> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut out = Vec::new();
    let mut i = 0;
    while i < rows.len() {
        let n = rng.random_range(1..=max_batch).min(rows.len() - i);
        out.push(trades_batch(&rows[i..i + n]));
        i += n;
    }
    out
}

/// Receives a subscription's batches on a thread of its own until it ends.
pub fn collect(mut sub: laminar_db::Subscription) -> std::thread::JoinHandle<Vec<RecordBatch>> {
    std::thread::spawn(move || {
        let mut got = Vec::new();
        while let Some(b) = sub.recv() {
            got.push(b);
        }
        got
    })
}

/// Runs `ddl` (sources and streams), pushes `batches` into `source`, then
/// closes every window and returns what `stream` emitted.
pub async fn run_stream(
    ddl: &str,
    source: &str,
    stream: &str,
    batches: Vec<RecordBatch>,
    shards: usize,
) -> (Vec<RecordBatch>, laminar_db::Metrics) {
    let db = LaminarDB::builder().shards(shards).build().unwrap();
    db.execute(ddl).await.unwrap();
    let sub = db.subscribe(stream).unwrap();
    let handle = db.source_untyped(source).unwrap();
    db.start().await.unwrap();
    let collector = collect(sub);
    for b in batches {
        handle.push(b).unwrap();
    }
    handle.watermark(i64::MAX).unwrap();
    db.shutdown().await.unwrap();
    let got = collector.join().unwrap();
    assert!(db.errors().is_empty(), "shard errors: {:?}", db.errors());
    (got, db.metrics())
}

/// Runs `query` as a DataFusion batch query over `rows` registered as
/// `source`, with LaminarDB's functions and rewrites.
pub async fn run_batch(
    query: &str,
    source: &str,
    rows: Vec<RecordBatch>,
    schema: SchemaRef,
) -> Vec<RecordBatch> {
    let ctx = laminar_sql::new_session_context();
    let table = MemTable::try_new(schema, vec![rows]).unwrap();
    ctx.register_table(source, Arc::new(table)).unwrap();
    let plan = laminar_sql::plan_for_batch(&ctx, query).await.unwrap();
    ctx.execute_logical_plan(plan)
        .await
        .unwrap()
        .collect()
        .await
        .unwrap()
}

#[derive(Debug, Clone, PartialEq, PartialOrd)]
enum Cell {
    Null,
    Text(String),
    Float(f64),
}

fn cells(batches: &[RecordBatch]) -> Vec<Vec<Cell>> {
    let mut rows = Vec::new();
    for b in batches {
        for r in 0..b.num_rows() {
            let row = b.columns().iter().map(|c| cell(c, r)).collect::<Vec<_>>();
            rows.push(row);
        }
    }
    rows
}

fn cell(array: &ArrayRef, row: usize) -> Cell {
    if array.is_null(row) {
        return Cell::Null;
    }
    match array.data_type() {
        DataType::Float64 => Cell::Float(
            array
                .as_any()
                .downcast_ref::<Float64Array>()
                .unwrap()
                .value(row),
        ),
        _ => {
            Cell::Text(datafusion::arrow::util::display::array_value_to_string(array, row).unwrap())
        }
    }
}

fn close(a: &Cell, b: &Cell) -> bool {
    match (a, b) {
        (Cell::Float(x), Cell::Float(y)) => {
            x == y || (x - y).abs() <= 1e-9 * x.abs().max(y.abs()).max(1.0)
        }
        _ => a == b,
    }
}

/// Asserts two results are equal as multisets of rows (floats compared
/// with a relative tolerance, since sums in another order round
/// differently).
pub fn assert_same_rows(streaming: &[RecordBatch], batch: &[RecordBatch]) {
    let sort = |mut rows: Vec<Vec<Cell>>| {
        rows.sort_by(|a, b| a.partial_cmp(b).unwrap());
        rows
    };
    let got = sort(cells(streaming));
    let want = sort(cells(batch));
    assert_eq!(
        got.len(),
        want.len(),
        "row counts differ: streaming {} vs batch {}",
        got.len(),
        want.len()
    );
    for (g, w) in got.iter().zip(&want) {
        assert!(
            g.len() == w.len() && g.iter().zip(w).all(|(a, b)| close(a, b)),
            "row differs:\n streaming {g:?}\n batch     {w:?}"
        );
    }
}

pub fn row_count(batches: &[RecordBatch]) -> usize {
    batches.iter().map(|b| b.num_rows()).sum()
}

/// Sums the `_weight` of identical rows in a changelog (the last column)
/// and returns the rows whose total is positive, as many times as their
/// total, without the weight column. Panics on a negative total: a
/// retraction of a row that was never emitted.
pub fn consolidate(changelog: &[RecordBatch]) -> Vec<RecordBatch> {
    use datafusion::arrow::row::{RowConverter, SortField};
    use std::collections::HashMap;
    if changelog.is_empty() {
        return Vec::new();
    }
    let schema = changelog[0].schema();
    let weight_index = schema.fields().len() - 1;
    assert_eq!(schema.field(weight_index).name(), "_weight");
    let all = datafusion::arrow::compute::concat_batches(&schema, changelog).unwrap();
    let data = all.project(&(0..weight_index).collect::<Vec<_>>()).unwrap();
    let converter = RowConverter::new(
        data.schema()
            .fields()
            .iter()
            .map(|f| SortField::new(f.data_type().clone()))
            .collect(),
    )
    .unwrap();
    let rows = converter.convert_columns(data.columns()).unwrap();
    let weights = all
        .column(weight_index)
        .as_any()
        .downcast_ref::<Int64Array>()
        .unwrap();
    let mut totals: HashMap<Vec<u8>, (i64, usize)> = HashMap::new();
    for i in 0..all.num_rows() {
        let entry = totals
            .entry(rows.row(i).as_ref().to_vec())
            .or_insert((0, i));
        entry.0 += weights.value(i);
    }
    let mut keep = Vec::new();
    for (total, first) in totals.values() {
        assert!(
            *total >= 0,
            "row retracted more often than inserted: {:?}",
            data.slice(*first, 1)
        );
        for _ in 0..*total {
            keep.push(*first as u32);
        }
    }
    let indices = datafusion::arrow::array::UInt32Array::from(keep);
    vec![datafusion::arrow::compute::take_record_batch(&data, &indices).unwrap()]
}

/// Waits up to 10 s for `condition`, polling; panics if it never holds.
pub fn eventually(mut condition: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !condition() {
        assert!(
            std::time::Instant::now() < deadline,
            "condition not met within 10 s"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

/// Waits up to 30 s for `done` (which may await, e.g. an ad-hoc query),
/// polling; panics naming `what` if it never holds.
pub async fn wait_until(what: &str, mut done: impl AsyncFnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !done().await {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
}
