//! Joins: once every watermark has passed, a streaming join emits exactly
//! what the same SQL returns as a DataFusion batch join over the same rows,
//! whatever the batch sizes, the interleaving of the two inputs, the
//! disorder (within the bound) and the shard count.

mod common;

use std::sync::Arc;

use common::*;
use datafusion::arrow::array::{Int64Array, RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::datasource::MemTable;
use laminar_db::LaminarDB;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const ORDERS_DDL: &str = "CREATE SOURCE orders (
    order_id BIGINT NOT NULL, symbol VARCHAR, qty BIGINT NOT NULL, ts BIGINT NOT NULL,
    WATERMARK FOR ts AS ts - INTERVAL '5' SECOND)";

fn orders_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("order_id", DataType::Int64, false),
        Field::new("symbol", DataType::Utf8, true),
        Field::new("qty", DataType::Int64, false),
        Field::new("ts", DataType::Int64, false),
    ]))
}

/// Orders over the same symbols and time span as `trades(seed, ..)`, at
/// other instants, a few with a NULL symbol.
fn orders(seed: u64, n: usize, symbols: usize) -> RecordBatch {
    let rows = trades(seed + 1000, n, symbols, 4_000);
    let mut rng = StdRng::seed_from_u64(seed);
    RecordBatch::try_new(
        orders_schema(),
        vec![
            Arc::new(Int64Array::from_iter_values(0..n as i64)),
            Arc::new(StringArray::from_iter(rows.iter().map(|r| {
                (rng.random_range(0..50) != 0).then(|| r.symbol.clone())
            }))),
            Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.volume))),
            Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.ts + 3))),
        ],
    )
    .unwrap()
}

/// Splits a batch into random sizes in `1..=max_batch`.
fn split(batch: &RecordBatch, rng: &mut StdRng, max_batch: usize) -> Vec<RecordBatch> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < batch.num_rows() {
        let n = rng.random_range(1..=max_batch).min(batch.num_rows() - i);
        out.push(batch.slice(i, n));
        i += n;
    }
    out
}

/// Runs `ddl`, pushes orders and trades in random batches, interleaved at
/// random, closes all time and returns what `stream` emitted.
async fn run_join(
    ddl: &str,
    stream: &str,
    orders: &RecordBatch,
    trades: &RecordBatch,
    seed: u64,
    max_batch: usize,
    shards: usize,
) -> (Vec<RecordBatch>, laminar_db::Metrics) {
    run_two_sources(
        ddl,
        stream,
        [("orders", orders), ("trades", trades)],
        seed,
        max_batch,
        shards,
    )
    .await
}

/// Runs `ddl`, pushes the two named sources' rows in random batches,
/// interleaved at random, closes all time and returns what `stream`
/// emitted (the run must raise no shard error).
async fn run_two_sources(
    ddl: &str,
    stream: &str,
    [(left, left_rows), (right, right_rows)]: [(&str, &RecordBatch); 2],
    seed: u64,
    max_batch: usize,
    shards: usize,
) -> (Vec<RecordBatch>, laminar_db::Metrics) {
    let db = LaminarDB::builder().shards(shards).build().unwrap();
    db.execute(ddl).await.unwrap();
    let sub = db.subscribe(stream).unwrap();
    let left_handle = db.source_untyped(left).unwrap();
    let right_handle = db.source_untyped(right).unwrap();
    db.start().await.unwrap();
    let collector = collect(sub);
    push_interleaved(
        (&left_handle, left_rows),
        (&right_handle, right_rows),
        seed,
        max_batch,
    );
    db.shutdown().await.unwrap();
    let got = collector.join().unwrap();
    assert!(db.errors().is_empty(), "shard errors: {:?}", db.errors());
    (got, db.metrics())
}

/// Pushes two inputs in random batches, interleaved at random, then
/// closes all time on both.
fn push_interleaved(
    left: (&laminar_db::SourceHandle, &RecordBatch),
    right: (&laminar_db::SourceHandle, &RecordBatch),
    seed: u64,
    max_batch: usize,
) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut left_batches = split(left.1, &mut rng, max_batch).into_iter().peekable();
    let mut right_batches = split(right.1, &mut rng, max_batch).into_iter().peekable();
    while left_batches.peek().is_some() || right_batches.peek().is_some() {
        if right_batches.peek().is_none() || (left_batches.peek().is_some() && rng.random_bool(0.5))
        {
            left.0.push(left_batches.next().unwrap()).unwrap();
        } else {
            right.0.push(right_batches.next().unwrap()).unwrap();
        }
    }
    left.0.watermark(i64::MAX).unwrap();
    right.0.watermark(i64::MAX).unwrap();
}

async fn run_batch_join(
    query: &str,
    orders: &RecordBatch,
    trades: &RecordBatch,
) -> Vec<RecordBatch> {
    let ctx = laminar_sql::new_session_context();
    for (name, batch) in [("orders", orders), ("trades", trades)] {
        let table = MemTable::try_new(batch.schema(), vec![vec![batch.clone()]]).unwrap();
        ctx.register_table(name, Arc::new(table)).unwrap();
    }
    let plan = laminar_sql::plan_for_batch(&ctx, query).await.unwrap();
    ctx.execute_logical_plan(plan)
        .await
        .unwrap()
        .collect()
        .await
        .unwrap()
}

/// The join as a stream (after `upstream` streams, reading `stream`) and
/// as a batch query, across seeds, batch sizes and 1 and 2 shards.
async fn join_differential(upstream: &str, query: &str, batch_query: &str, stream: &str) {
    for (seed, max_batch) in [(1u64, 1usize), (2, 13), (3, 300), (4, 4096)] {
        let n = if max_batch == 1 { 300 } else { 2_000 };
        let orders = orders(seed, n, 20);
        let trades = trades_batch(&trades(seed, n, 20, 4_000));
        let want = run_batch_join(batch_query, &orders, &trades).await;
        assert!(row_count(&want) > 0, "the oracle returned nothing");
        for shards in [1, 2] {
            let ddl = format!("{ORDERS_DDL}; {TRADES_DDL}; {upstream}; CREATE STREAM j AS {query}");
            let (got, metrics) =
                run_join(&ddl, stream, &orders, &trades, seed, max_batch, shards).await;
            let late: u64 = metrics.streams.iter().map(|s| s.late_rows).sum();
            assert_eq!(late, 0, "no row is late within the bound");
            assert_same_rows(&got, &want);
        }
    }
}

/// `query` as a changelog stream (after `upstream`), consolidated, against
/// the batch answer to `batch` over the same rows, at 1 and 2 shards.
async fn changelog_differential(
    upstream: &str,
    query: &str,
    batch: &str,
    seed: u64,
    (orders, trades): (&RecordBatch, &RecordBatch),
    max_batch: usize,
) {
    let want = run_batch_join(batch, orders, trades).await;
    assert!(row_count(&want) > 0, "the oracle returned nothing");
    for shards in [1, 2] {
        let ddl = format!("{ORDERS_DDL}; {TRADES_DDL}; {upstream}; CREATE STREAM j AS {query}");
        let (got, _) = run_join(&ddl, "j", orders, trades, seed, max_batch, shards).await;
        assert_same_rows(&consolidate(&got), &want);
    }
}

/// The error `sql` fails with.
async fn error_of(db: &LaminarDB, sql: &str) -> String {
    db.execute(sql).await.unwrap_err().to_string()
}

/// `sql` fails with `code` and a message holding `words`.
async fn assert_refused(db: &LaminarDB, sql: &str, code: &str, words: &str) {
    let error = error_of(db, sql).await;
    assert!(
        error.contains(code) && error.contains(words),
        "{sql}: {error}"
    );
}

/// A one-shard database with the orders and trades sources and `ddl`.
async fn planned(ddl: &str) -> LaminarDB {
    let db = LaminarDB::builder().shards(1).build().unwrap();
    db.execute(&format!("{ORDERS_DDL}; {TRADES_DDL}; {ddl}"))
        .await
        .unwrap();
    db
}

const INNER: &str = "SELECT o.order_id, o.symbol, o.qty, t.price, t.ts AS trade_ts
FROM orders o JOIN trades t
  ON o.symbol = t.symbol AND t.ts BETWEEN o.ts - 1000 AND o.ts + 500";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interval_inner_join() {
    join_differential("", INNER, INNER, "j").await;
}

/// How a bound-edges test declares its times: BIGINT ms, `TIMESTAMP(3)`
/// (ms) or `TIMESTAMP` (ns).
#[derive(Clone, Copy, PartialEq)]
enum EdgeTimes {
    Bigint,
    Millis,
    Nanos,
}

/// Orders and trades whose time differences sit on and around the ends of
/// `[-1000, 500]` ms: an order every 100 s and, per order, trades 998-1002
/// ms before it, 498-502 ms after it and at the same instant.
fn bound_edges(unit: EdgeTimes) -> (String, RecordBatch, RecordBatch) {
    use datafusion::arrow::array::{
        ArrayRef, Float64Array, TimestampMillisecondArray, TimestampNanosecondArray,
    };
    use datafusion::arrow::datatypes::TimeUnit;
    let (time_type, sql_type) = match unit {
        EdgeTimes::Bigint => (DataType::Int64, "BIGINT"),
        EdgeTimes::Millis => (
            DataType::Timestamp(TimeUnit::Millisecond, None),
            "TIMESTAMP(3)",
        ),
        EdgeTimes::Nanos => (DataType::Timestamp(TimeUnit::Nanosecond, None), "TIMESTAMP"),
    };
    let times = |ms: Vec<i64>| -> ArrayRef {
        match unit {
            EdgeTimes::Bigint => Arc::new(Int64Array::from(ms)),
            EdgeTimes::Millis => Arc::new(TimestampMillisecondArray::from(ms)),
            EdgeTimes::Nanos => Arc::new(TimestampNanosecondArray::from_iter_values(
                ms.into_iter().map(|t| t * 1_000_000),
            )),
        }
    };
    let order_ts: Vec<i64> = (0..20).map(|i| 1_700_000_000_000 + i * 100_000).collect();
    let offsets: Vec<i64> = (-1002..=-998).chain(498..=502).chain([0]).collect();
    let trade_ts: Vec<i64> = order_ts
        .iter()
        .flat_map(|&o| offsets.iter().map(move |&d| o + d))
        .collect();
    let schema = |first: (&str, DataType)| {
        Arc::new(Schema::new(vec![
            Field::new(first.0, first.1, false),
            Field::new("symbol", DataType::Utf8, false),
            Field::new("ts", time_type.clone(), false),
        ]))
    };
    let orders = RecordBatch::try_new(
        schema(("order_id", DataType::Int64)),
        vec![
            Arc::new(Int64Array::from_iter_values(0..order_ts.len() as i64)),
            Arc::new(StringArray::from_iter_values(order_ts.iter().map(|_| "A"))),
            times(order_ts.clone()),
        ],
    )
    .unwrap();
    let trades = RecordBatch::try_new(
        schema(("price", DataType::Float64)),
        vec![
            Arc::new(Float64Array::from_iter_values(
                (0..trade_ts.len()).map(|i| (i % 7) as f64 * 100.0),
            )),
            Arc::new(StringArray::from_iter_values(trade_ts.iter().map(|_| "A"))),
            times(trade_ts),
        ],
    )
    .unwrap();
    let ddl = format!(
        "CREATE SOURCE orders (order_id BIGINT NOT NULL, symbol VARCHAR NOT NULL, ts {sql_type} NOT NULL,
           WATERMARK FOR ts AS ts - INTERVAL '5' SECOND);
         CREATE SOURCE trades (price DOUBLE NOT NULL, symbol VARCHAR NOT NULL, ts {sql_type} NOT NULL,
           WATERMARK FOR ts AS ts - INTERVAL '5' SECOND)"
    );
    (ddl, orders, trades)
}

/// A join whose time bounds the operator checks on its own (whole-ms
/// times, non-strict bounds) runs no per-pair filter for them; pairs on
/// the bounds' ends are in or out exactly as the batch join says, in
/// every form of the condition, and with nanosecond times or a cast to a
/// zoned timestamp (which keep the filter).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interval_join_bounds_hold_exactly_at_their_ends() {
    for unit in [EdgeTimes::Bigint, EdgeTimes::Millis, EdgeTimes::Nanos] {
        let (ddl, orders, trades) = bound_edges(unit);
        let (before, after) = if unit == EdgeTimes::Bigint {
            ("1000", "500")
        } else {
            ("INTERVAL '1' SECOND", "INTERVAL '500' MILLISECOND")
        };
        let on = "SELECT o.order_id, t.price, t.ts FROM orders o JOIN trades t ON o.symbol = t.symbol AND";
        let exact = unit != EdgeTimes::Nanos;
        // (condition, whether the bounds alone decide, what else is
        // filtered per pair)
        let cases = [
            (format!("t.ts BETWEEN o.ts - {before} AND o.ts + {after}"), exact, "o.ts"),
            (format!("o.ts BETWEEN t.ts - {after} AND t.ts + {before}"), exact, "t.ts"),
            (
                format!("t.ts >= o.ts - {before} AND t.ts <= o.ts + {after} AND t.ts > o.ts - {before} - {before}"),
                exact,
                "o.ts",
            ),
            (format!("t.ts > o.ts - {before} AND t.ts < o.ts + {after}"), false, "o.ts"),
            (
                format!("t.ts BETWEEN o.ts - {before} AND o.ts + {after} AND t.price > o.order_id * 20"),
                false,
                "order_id",
            ),
        ];
        // A cast to a zoned timestamp: a day is the zone's calendar day.
        let zoned = |column: &str| {
            format!("arrow_cast({column}, 'Timestamp(Millisecond, Some(\"+01:00\"))')")
        };
        let zoned_case = (
            format!(
                "{} BETWEEN {} - {before} AND {} + {after}",
                zoned("t.ts"),
                zoned("o.ts"),
                zoned("o.ts")
            ),
            false,
            "o.ts",
        );
        let cases = cases
            .into_iter()
            .chain((unit == EdgeTimes::Millis).then_some(zoned_case));
        for (condition, bounds_alone, filtered) in cases {
            let query = format!("{on} {condition}");
            let want = run_batch_join(&query, &orders, &trades).await;
            assert!(row_count(&want) > 0, "{query}: the oracle returned nothing");
            let full_ddl = format!("{ddl}; CREATE STREAM j AS {query}");
            let db = LaminarDB::builder().shards(1).build().unwrap();
            db.execute(&full_ddl).await.unwrap();
            let plan = db.explain("j").unwrap();
            if bounds_alone {
                assert!(plan.contains("no pair filter"), "{query}: {plan}");
            } else {
                assert!(
                    plan.contains("pairs filtered by") && plan.contains(filtered),
                    "{query}: {plan}"
                );
            }
            for (seed, max_batch) in [(1, 1), (2, 7), (3, 4096)] {
                let (got, _) = run_join(&full_ddl, "j", &orders, &trades, seed, max_batch, 1).await;
                assert_same_rows(&got, &want);
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interval_outer_joins() {
    for kind in ["LEFT", "RIGHT", "FULL OUTER"] {
        let query = format!(
            "SELECT o.order_id, o.symbol AS order_symbol, t.symbol, t.price, t.ts
             FROM orders o {kind} JOIN trades t
               ON o.symbol = t.symbol AND t.ts >= o.ts - 300 AND t.ts <= o.ts + 200 AND t.price > 300"
        );
        join_differential("", &query, &query, "j").await;
    }
}

/// `EXISTS` / `IN` (semi) and `NOT EXISTS` (anti) over a time-bounded
/// subquery: each order once, when its first trade arrives, or once no
/// trade can come any more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn semi_and_anti_interval_joins() {
    for negation in ["", "NOT "] {
        let query = format!(
            "SELECT o.order_id, o.symbol, o.qty FROM orders o
             WHERE {negation}EXISTS (
               SELECT 1 FROM trades t
               WHERE t.symbol = o.symbol AND t.ts BETWEEN o.ts - 300 AND o.ts + 200
                 AND t.price > 300)"
        );
        join_differential("", &query, &query, "j").await;
        let db = LaminarDB::builder().shards(1).build().unwrap();
        db.execute(&format!(
            "{ORDERS_DDL}; {TRADES_DDL}; CREATE STREAM j AS {query}"
        ))
        .await
        .unwrap();
        let kind = if negation.is_empty() {
            "LeftSemi"
        } else {
            "LeftAnti"
        };
        let plan = db.explain("j").unwrap();
        assert!(plan.starts_with(&format!("IntervalJoin[{kind}")), "{plan}");
    }
    let in_query = "SELECT o.order_id, o.qty FROM orders o
        WHERE o.symbol IN (SELECT t.symbol FROM trades t
                           WHERE t.ts BETWEEN o.ts - 100 AND o.ts + 100)";
    join_differential("", in_query, in_query, "j").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interval_join_over_a_stream_feeding_an_aggregate() {
    // A filter stream on one side, and a windowed count over the join's
    // output downstream (the join's output watermark closes its windows).
    let upstream = "CREATE STREAM big AS SELECT symbol, price, ts FROM trades WHERE volume > 200";
    let join = "SELECT o.symbol, o.ts, t.price FROM orders o JOIN big t
                ON o.symbol = t.symbol AND o.ts BETWEEN t.ts - 800 AND t.ts + 800;
                CREATE STREAM counts AS SELECT symbol, COUNT(*) AS n, MAX(price) AS top
                FROM j GROUP BY symbol, tumble(ts, INTERVAL '2' SECOND)";
    let batch = "SELECT o.symbol, COUNT(*) AS n, MAX(t.price) AS top
                 FROM orders o JOIN (SELECT symbol, price, ts FROM trades WHERE volume > 200) t
                 ON o.symbol = t.symbol AND o.ts BETWEEN t.ts - 800 AND t.ts + 800
                 GROUP BY o.symbol, tumble(o.ts, INTERVAL '2' SECOND)";
    join_differential(upstream, join, batch, "counts").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interval_join_without_keys_runs_on_one_shard() {
    let query = "SELECT o.order_id, t.symbol, t.ts FROM orders o JOIN trades t
                 ON t.ts BETWEEN o.ts - 20 AND o.ts + 20";
    join_differential("", query, query, "j").await;
}

/// Regular joins (nothing relates the sides' times): every row is kept,
/// so each pair is found whenever its second row arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regular_joins() {
    let inner = "SELECT o.order_id, o.symbol, t.symbol AS trade_symbol, t.price, t.ts
                 FROM orders o JOIN trades t ON o.qty = t.volume";
    join_differential("", inner, inner, "j").await;
    // Unmatched rows are final only at the end of input: emitted then.
    let left = "SELECT o.order_id, t.price FROM orders o LEFT JOIN trades t
                ON o.qty = t.volume AND t.price > 500";
    join_differential("", left, left, "j").await;
    let semi = "SELECT o.order_id, o.qty FROM orders o
                WHERE EXISTS (SELECT 1 FROM trades t WHERE t.volume = o.qty AND t.symbol = o.symbol)";
    join_differential("", semi, semi, "j").await;
    let db = planned(&format!("CREATE STREAM j AS {inner}")).await;
    let plan = db.explain("j").unwrap();
    assert!(
        plan.starts_with("RegularJoin[Inner 1 key(s), no time bound"),
        "{plan}"
    );
    // Its output carries no event time: a window over it is refused.
    let error = error_of(
        &db,
        "CREATE STREAM w AS SELECT COUNT(*) FROM j GROUP BY tumble(ts, INTERVAL '1' SECOND)",
    )
    .await;
    assert!(error.contains("does not carry event time"), "{error}");
}

/// A regular LEFT JOIN as a changelog: an order is shown padded at once
/// and retracted when its first trade arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regular_outer_join_as_a_changelog() {
    let query = "SELECT o.order_id, t.price FROM orders o LEFT JOIN trades t ON o.qty = t.volume";
    let orders = orders(8, 1_500, 20);
    let trades = trades_batch(&trades(8, 1_500, 20, 4_000));
    let changes = format!("{query} EMIT CHANGES");
    changelog_differential("", &changes, query, 8, (&orders, &trades), 50).await;
}

/// Joins whose window is bounded on one end by a column of the rows
/// (`t.ts BETWEEN o.ts AND o.until`, Nexmark's bids during an auction):
/// the rows carrying the bound are dropped once the other side's
/// watermark passes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joins_bounded_by_a_column_of_the_rows() {
    let until_orders =
        "CREATE STREAM o2 AS SELECT order_id, symbol, qty, ts, ts + qty AS until FROM orders";
    let o2 = "(SELECT order_id, symbol, qty, ts, ts + qty AS until FROM orders)";
    for kind in ["", "LEFT"] {
        let query = format!(
            "SELECT o.order_id, o.until, t.price, t.ts FROM o2 o {kind} JOIN trades t
             ON o.symbol = t.symbol AND t.ts BETWEEN o.ts AND o.until"
        );
        let batch = query.replace("o2 o", &format!("{o2} o"));
        join_differential(until_orders, &query, &batch, "j").await;
    }
    // The right side carries the bound: orders up to 200 ms before a
    // trade and no later than its `until`.
    let until_trades =
        "CREATE STREAM t2 AS SELECT symbol, price, ts, ts + volume AS until FROM trades";
    let t2 = "(SELECT symbol, price, ts, ts + volume AS until FROM trades)";
    let query = "SELECT o.order_id, t.price, t.until FROM orders o JOIN t2 t
                 ON o.symbol = t.symbol AND o.ts >= t.ts - 200 AND o.ts <= t.until";
    let batch = query.replace("t2 t", &format!("{t2} t"));
    join_differential(until_trades, query, &batch, "j").await;

    let db = planned(&format!(
        "{until_orders}; CREATE STREAM j AS
         SELECT o.order_id, t.price FROM o2 o JOIN trades t
         ON o.symbol = t.symbol AND t.ts BETWEEN o.ts AND o.until"
    ))
    .await;
    let plan = db.explain("j").unwrap();
    assert!(
        plan.starts_with("IntervalJoin[Inner 1 key(s), right time <= left.until +0 ms"),
        "{plan}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interval_join_state_stays_bounded_and_late_rows_are_dropped() {
    let db = LaminarDB::builder().shards(1).build().unwrap();
    db.execute(&format!(
        "{ORDERS_DDL}; {TRADES_DDL}; CREATE STREAM j AS {INNER}"
    ))
    .await
    .unwrap();
    let explain = db.explain("j").unwrap();
    assert!(explain.contains("IntervalJoin"), "{explain}");
    assert!(explain.contains("Keys"), "routed by the key: {explain}");
    let sub = db.subscribe("j").unwrap();
    let order_handle = db.source_untyped("orders").unwrap();
    let trade_handle = db.source_untyped("trades").unwrap();
    db.start().await.unwrap();
    let collector = collect(sub);
    // 200 s of event time in 1 s steps on both sides; the bound keeps
    // about 6.5 s of rows (1.5 s of join range, 5 s of watermark delay).
    let mut peak = 0u64;
    for step in 0..200i64 {
        let orders = orders(step as u64, 140, 20);
        let trades = trades_batch(&trades(step as u64, 140, 20, 0));
        let shift = |b: &RecordBatch| {
            let ts = b.column(3).as_any().downcast_ref::<Int64Array>().unwrap();
            let shifted = Int64Array::from_iter_values(ts.values().iter().map(|t| t + step * 1000));
            let mut columns = b.columns().to_vec();
            columns[3] = Arc::new(shifted);
            RecordBatch::try_new(b.schema(), columns).unwrap()
        };
        order_handle.push(shift(&orders)).unwrap();
        trade_handle.push(shift(&trades)).unwrap();
        if step % 20 == 19 {
            // State is sampled: give the shard a moment to publish it.
            eventually(|| db.metrics().streams[0].state_bytes > 0);
            peak = peak.max(db.metrics().streams[0].state_bytes);
        }
    }
    // One order far behind the watermark: late, dropped and counted.
    let late = orders(999, 1, 20);
    order_handle.push(late).unwrap();
    order_handle.watermark(i64::MAX).unwrap();
    trade_handle.watermark(i64::MAX).unwrap();
    db.shutdown().await.unwrap();
    let got = collector.join().unwrap();
    assert!(row_count(&got) > 10_000);
    let metrics = db.metrics();
    assert_eq!(metrics.streams[0].late_rows, 1);
    // 200 s of input is ~28,000 rows per side; what is kept is a few
    // seconds' worth (~1,000 rows a side, well under 1 MB).
    assert!(peak < 2_000_000, "join state grew to {peak} bytes");
}

#[tokio::test]
async fn join_errors_name_what_is_missing() {
    let db = LaminarDB::open().unwrap();
    db.execute(&format!("{ORDERS_DDL}; {TRADES_DDL}"))
        .await
        .unwrap();
    db.execute("CREATE SOURCE plain (symbol VARCHAR, ts BIGINT)")
        .await
        .unwrap();
    let cases = [
        (
            "CREATE STREAM b AS SELECT * FROM orders o JOIN trades t ON o.symbol = t.symbol AND t.ts >= o.ts",
            "LDB-1004",
            "both sides",
        ),
        (
            "CREATE STREAM c AS SELECT * FROM orders o JOIN plain p ON o.symbol = p.symbol AND p.ts BETWEEN o.ts - 1 AND o.ts + 1",
            "LDB-",
            "no WATERMARK",
        ),
        (
            "CREATE STREAM d AS SELECT * FROM orders o JOIN trades t ON o.symbol = t.symbol AND t.ts BETWEEN o.ts - 1 AND o.ts + 1 EMIT ON WINDOW CLOSE",
            "LDB-",
            "EMIT",
        ),
        (
            "CREATE STREAM e AS SELECT * FROM orders o JOIN trades t ON o.symbol = t.symbol AND t.ts BETWEEN o.ts + 5 AND o.ts - 5",
            "LDB-",
            "no room",
        ),
        (
            "CREATE STREAM i AS SELECT * FROM orders o WHERE NOT EXISTS (SELECT 1 FROM trades t
               WHERE t.symbol = o.symbol AND t.ts BETWEEN o.ts - 1 AND o.ts + 1) EMIT CHANGES",
            "LDB-1004",
            "semi or anti",
        ),
        (
            "CREATE STREAM k AS SELECT * FROM orders o WHERE o.symbol NOT IN (SELECT t.symbol FROM trades t
               WHERE t.ts BETWEEN o.ts - 1 AND o.ts + 1)",
            "LDB-1004",
            "NOT IN",
        ),
    ];
    db.execute(
        "CREATE STREAM counts AS SELECT symbol, tumble(ts, INTERVAL '1' SECOND) AS w,
           COUNT(*) AS n FROM trades GROUP BY symbol, tumble(ts, INTERVAL '1' SECOND)",
    )
    .await
    .unwrap();
    db.execute(
        "CREATE STREAM top_price AS SELECT symbol, price, ts FROM (SELECT *, ROW_NUMBER() OVER
           (PARTITION BY symbol ORDER BY price DESC) AS rn FROM trades) WHERE rn = 1 EMIT CHANGES",
    )
    .await
    .unwrap();
    let cases = cases.into_iter().chain([
        (
            "CREATE STREAM g AS SELECT * FROM orders o JOIN top_price FOR SYSTEM_TIME AS OF o.ts AS l
         ON o.symbol = l.symbol",
            "LDB-1004",
            "changelog",
        ),
        (
            "CREATE STREAM f AS SELECT * FROM orders o JOIN counts c ON o.symbol = c.symbol
         AND c.n BETWEEN o.ts - 1 AND o.ts + 1",
            "LDB-1006",
            "does not carry event time",
        ),
    ]);
    for (sql, code, words) in cases {
        let error = error_of(&db, sql).await;
        assert!(error.contains(code), "{sql}: {error}");
        assert!(error.contains(words), "{sql}: {error}");
    }
}

/// The batch meaning of an ASOF join: the join on keys and the time
/// condition, then per order the first trade by `order_by`.
fn asof_oracle(kind: &str, condition: &str, order_by: &str) -> String {
    format!(
        "SELECT order_id, symbol, qty, price, trade_ts FROM (
           SELECT o.order_id, o.symbol, o.qty, t.price, t.ts AS trade_ts,
                  ROW_NUMBER() OVER (PARTITION BY o.order_id ORDER BY {order_by}) AS rn
           FROM orders o {kind} JOIN trades t ON o.symbol = t.symbol AND {condition}) AS ranked
         WHERE rn = 1"
    )
}

const ASOF_SELECT: &str = "SELECT o.order_id, o.symbol, o.qty, t.price, t.ts AS trade_ts";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asof_join_backward_forward_nearest() {
    let cases = [
        (
            "ASOF JOIN trades t ON o.symbol = t.symbol AND o.ts >= t.ts",
            asof_oracle("", "o.ts >= t.ts", "t.ts DESC"),
        ),
        (
            "ASOF LEFT JOIN trades t ON o.symbol = t.symbol AND o.ts >= t.ts AND t.ts >= o.ts - 150",
            asof_oracle("LEFT", "o.ts >= t.ts AND t.ts >= o.ts - 150", "t.ts DESC NULLS LAST"),
        ),
        (
            "ASOF LEFT JOIN trades t MATCH_CONDITION(o.ts <= t.ts) ON o.symbol = t.symbol",
            asof_oracle("LEFT", "o.ts <= t.ts", "t.ts ASC NULLS LAST"),
        ),
        (
            "ASOF JOIN trades t MATCH_CONDITION(NEAREST(o.ts, t.ts)) ON o.symbol = t.symbol",
            asof_oracle("", "TRUE", "abs(o.ts - t.ts), t.ts"),
        ),
        (
            "ASOF LEFT JOIN trades t MATCH_CONDITION(NEAREST(t.ts, o.ts)) ON o.symbol = t.symbol
               AND t.ts BETWEEN o.ts - 100 AND o.ts + 60",
            asof_oracle(
                "LEFT",
                "t.ts BETWEEN o.ts - 100 AND o.ts + 60",
                "abs(o.ts - t.ts) NULLS LAST, t.ts",
            ),
        ),
    ];
    for (join, oracle) in cases {
        let query = format!("{ASOF_SELECT} FROM orders o {join}");
        join_differential("", &query, &oracle, "j").await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn temporal_join_picks_the_version_valid_at_the_probe_time() {
    let query = format!(
        "{ASOF_SELECT} FROM orders o JOIN trades FOR SYSTEM_TIME AS OF o.ts AS t ON o.symbol = t.symbol"
    );
    join_differential(
        "",
        &query,
        &asof_oracle("", "o.ts >= t.ts", "t.ts DESC"),
        "j",
    )
    .await;
}

/// A temporal join against a deduplicating view (each symbol's latest
/// trade, a changelog) reads the trades it deduplicates as the versions:
/// the same answer as the join against the trades, whatever the batches.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn temporal_join_against_a_deduplicating_view() {
    let latest = "CREATE STREAM latest AS SELECT symbol, price, ts FROM (SELECT *, ROW_NUMBER()
        OVER (PARTITION BY symbol ORDER BY ts DESC) AS rn FROM trades) WHERE rn = 1 EMIT CHANGES";
    let query = format!(
        "{ASOF_SELECT} FROM orders o JOIN latest FOR SYSTEM_TIME AS OF o.ts AS t ON o.symbol = t.symbol"
    );
    join_differential(
        latest,
        &query,
        &asof_oracle("", "o.ts >= t.ts", "t.ts DESC"),
        "j",
    )
    .await;
    let db = planned(&format!("{latest}; CREATE STREAM j AS {query}")).await;
    let plan = db.explain("j").unwrap();
    assert!(plan.contains("source trades"), "{plan}");
}

/// Versions (quotes) and the rows that look them up (probes), for the
/// hand-computed ASOF cases.
const QUOTES_AND_PROBES: &str = "
    CREATE SOURCE quotes (sym VARCHAR NOT NULL, px DOUBLE NOT NULL, ts BIGINT NOT NULL,
      WATERMARK FOR ts AS ts - INTERVAL '1' SECOND);
    CREATE SOURCE probes (id BIGINT NOT NULL, sym VARCHAR NOT NULL, ts BIGINT NOT NULL,
      WATERMARK FOR ts AS ts - INTERVAL '5' SECOND)";

fn quotes_batch(syms: &[&str], prices: &[f64], times: &[i64]) -> RecordBatch {
    RecordBatch::try_new(
        Arc::new(Schema::new(vec![
            Field::new("sym", DataType::Utf8, false),
            Field::new("px", DataType::Float64, false),
            Field::new("ts", DataType::Int64, false),
        ])),
        vec![
            Arc::new(StringArray::from(syms.to_vec())),
            Arc::new(datafusion::arrow::array::Float64Array::from(
                prices.to_vec(),
            )),
            Arc::new(Int64Array::from(times.to_vec())),
        ],
    )
    .unwrap()
}

fn probes_batch(ids: &[i64], syms: &[&str], times: &[i64]) -> RecordBatch {
    RecordBatch::try_new(
        Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("sym", DataType::Utf8, false),
            Field::new("ts", DataType::Int64, false),
        ])),
        vec![
            Arc::new(Int64Array::from(ids.to_vec())),
            Arc::new(StringArray::from(syms.to_vec())),
            Arc::new(Int64Array::from(times.to_vec())),
        ],
    )
    .unwrap()
}

/// A started database with the quotes and probes sources and `ddl`
/// (defining stream `j`): the probes' and quotes' handles and a collector
/// of `j`'s output.
async fn quotes_and_probes(
    shards: usize,
    ddl: &str,
) -> (
    LaminarDB,
    laminar_db::SourceHandle,
    laminar_db::SourceHandle,
    std::thread::JoinHandle<Vec<RecordBatch>>,
) {
    let db = LaminarDB::builder().shards(shards).build().unwrap();
    db.execute(QUOTES_AND_PROBES).await.unwrap();
    db.execute(ddl).await.unwrap();
    let sub = db.subscribe("j").unwrap();
    let (p, q) = (
        db.source_untyped("probes").unwrap(),
        db.source_untyped("quotes").unwrap(),
    );
    db.start().await.unwrap();
    (db, p, q, collect(sub))
}

/// Hand-computed ASOF cases: ties between versions (the later arrival
/// wins), equal timestamps, strictness, keys that never match, a nearest
/// tie (the earlier wins), probes that arrive before their versions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asof_join_edge_cases() {
    use datafusion::arrow::array::{Array, Float64Array};
    let quotes = quotes_batch(
        &["A", "A", "A", "B"],
        &[1.0, 2.0, 3.0, 4.0],
        &[1000, 2000, 2000, 1500],
    );
    let probes = probes_batch(
        &[1, 2, 3, 4, 5, 6, 7, 8],
        &["A", "A", "A", "C", "B", "B", "A", "A"],
        &[2000, 1999, 500, 3000, 1400, 1500, 1500, 1001],
    );
    let cases: [(&str, [Option<f64>; 8]); 4] = [
        (
            "ASOF LEFT JOIN quotes q ON p.sym = q.sym AND p.ts >= q.ts",
            [
                Some(3.0),
                Some(1.0),
                None,
                None,
                None,
                Some(4.0),
                Some(1.0),
                Some(1.0),
            ],
        ),
        (
            "ASOF LEFT JOIN quotes q ON p.sym = q.sym AND p.ts > q.ts",
            [
                Some(1.0),
                Some(1.0),
                None,
                None,
                None,
                None,
                Some(1.0),
                Some(1.0),
            ],
        ),
        (
            "ASOF LEFT JOIN quotes q ON p.sym = q.sym AND p.ts <= q.ts",
            [
                Some(3.0),
                Some(3.0),
                Some(1.0),
                None,
                Some(4.0),
                Some(4.0),
                Some(3.0),
                Some(3.0),
            ],
        ),
        (
            "ASOF LEFT JOIN quotes q MATCH_CONDITION(NEAREST(p.ts, q.ts)) ON p.sym = q.sym",
            [
                Some(3.0),
                Some(3.0),
                Some(1.0),
                None,
                Some(4.0),
                Some(4.0),
                Some(1.0),
                Some(1.0),
            ],
        ),
    ];
    for (join, want) in cases {
        for probes_first in [true, false] {
            let (db, p, q, collector) = quotes_and_probes(
                2,
                &format!("CREATE STREAM j AS SELECT p.id, q.px FROM probes p {join}"),
            )
            .await;
            if probes_first {
                p.push(probes.clone()).unwrap();
                q.push(quotes.clone()).unwrap();
            } else {
                q.push(quotes.clone()).unwrap();
                p.push(probes.clone()).unwrap();
            }
            q.watermark(i64::MAX).unwrap();
            p.watermark(i64::MAX).unwrap();
            db.shutdown().await.unwrap();
            let mut got: Vec<(i64, Option<f64>)> = Vec::new();
            for b in collector.join().unwrap() {
                let ids = b.column(0).as_any().downcast_ref::<Int64Array>().unwrap();
                let px = b.column(1).as_any().downcast_ref::<Float64Array>().unwrap();
                for i in 0..b.num_rows() {
                    got.push((ids.value(i), px.is_valid(i).then(|| px.value(i))));
                }
            }
            got.sort_by_key(|(id, _)| *id);
            let want: Vec<(i64, Option<f64>)> = want
                .iter()
                .enumerate()
                .map(|(i, w)| (i as i64 + 1, *w))
                .collect();
            assert_eq!(got, want, "{join} (probes first: {probes_first})");
        }
    }
}

const INSTRUMENTS: &str = "CREATE TABLE instruments (
    symbol VARCHAR NOT NULL, sector VARCHAR, lot BIGINT, PRIMARY KEY (symbol))";

/// Sectors and lots for S000..S014 (S015..S019 are missing); S003 twice,
/// the second row replacing the first.
const INSTRUMENT_ROWS: &str = "INSERT INTO instruments VALUES
    ('S000', 'tech', 10), ('S001', 'energy', 20), ('S002', 'tech', 30), ('S003', 'old', 1),
    ('S004', 'health', 50), ('S005', NULL, 60), ('S006', 'tech', 70), ('S007', 'energy', 80),
    ('S008', 'tech', 90), ('S009', 'retail', 100), ('S010', 'tech', 110), ('S011', 'energy', 120),
    ('S012', 'tech', 130), ('S013', 'retail', 140), ('S014', 'tech', 150);
    INSERT INTO instruments VALUES ('S003', 'health', 40)";

/// The table's final rows, for the batch oracle.
fn instrument_rows() -> RecordBatch {
    let sectors = [
        Some("tech"),
        Some("energy"),
        Some("tech"),
        Some("health"),
        Some("health"),
        None,
        Some("tech"),
        Some("energy"),
        Some("tech"),
        Some("retail"),
        Some("tech"),
        Some("energy"),
        Some("tech"),
        Some("retail"),
        Some("tech"),
    ];
    RecordBatch::try_new(
        Arc::new(Schema::new(vec![
            Field::new("symbol", DataType::Utf8, false),
            Field::new("sector", DataType::Utf8, true),
            Field::new("lot", DataType::Int64, true),
        ])),
        vec![
            Arc::new(StringArray::from_iter_values(
                (0..15).map(|i| format!("S{i:03}")),
            )),
            Arc::new(StringArray::from(sectors.to_vec())),
            Arc::new(Int64Array::from_iter_values((1..=15).map(|i| i * 10))),
        ],
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lookup_join_against_a_table() {
    let queries = [
        "SELECT t.symbol, t.price, i.sector, i.lot * t.volume AS lots
         FROM trades t JOIN instruments i ON t.symbol = i.symbol",
        "SELECT t.symbol, t.price, i.sector FROM trades t
         LEFT JOIN instruments i ON t.symbol = i.symbol AND i.lot > 50
         WHERE t.volume > 100",
        "SELECT t.symbol, i.lot FROM trades t
         JOIN (SELECT * FROM instruments WHERE sector = 'tech') i ON i.symbol = t.symbol",
    ];
    for query in queries {
        for (seed, max_batch, shards) in [(1u64, 1usize, 1usize), (2, 50, 2), (3, 4096, 2)] {
            let n = if max_batch == 1 { 200 } else { 3_000 };
            let rows = trades(seed, n, 20, 4_000);
            let db = LaminarDB::builder().shards(shards).build().unwrap();
            db.execute(&format!("{TRADES_DDL}; {INSTRUMENTS}; {INSTRUMENT_ROWS}"))
                .await
                .unwrap();
            db.execute(&format!("CREATE STREAM j AS {query}"))
                .await
                .unwrap();
            assert!(db.explain("j").unwrap().contains("LookupJoin"));
            let sub = db.subscribe("j").unwrap();
            let handle = db.source_untyped("trades").unwrap();
            db.start().await.unwrap();
            let collector = collect(sub);
            for b in random_batches(&rows, seed, max_batch) {
                handle.push(b).unwrap();
            }
            db.shutdown().await.unwrap();
            let got = collector.join().unwrap();
            assert!(db.errors().is_empty(), "{:?}", db.errors());
            let ctx = laminar_sql::new_session_context();
            let trades_table =
                MemTable::try_new(trades_schema(), vec![vec![trades_batch(&rows)]]).unwrap();
            ctx.register_table("trades", Arc::new(trades_table))
                .unwrap();
            let instruments = instrument_rows();
            let table = MemTable::try_new(instruments.schema(), vec![vec![instruments]]).unwrap();
            ctx.register_table("instruments", Arc::new(table)).unwrap();
            let want = ctx.sql(query).await.unwrap().collect().await.unwrap();
            assert!(row_count(&want) > 0);
            assert_same_rows(&got, &want);
        }
    }
}

/// Rows pushed after an INSERT into the table see the new row; rows
/// before it saw the old one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lookup_join_sees_upserts_while_running() {
    use datafusion::arrow::array::Array;
    let db = LaminarDB::builder().shards(2).build().unwrap();
    db.execute(&format!("{TRADES_DDL}; {INSTRUMENTS}; {INSTRUMENT_ROWS}"))
        .await
        .unwrap();
    db.execute(
        "CREATE STREAM j AS SELECT t.symbol, t.volume, i.sector FROM trades t
         LEFT JOIN instruments i ON t.symbol = i.symbol",
    )
    .await
    .unwrap();
    let mut sub = db.subscribe("j").unwrap();
    let handle = db.source_untyped("trades").unwrap();
    db.start().await.unwrap();
    let trade = |symbol: &str, volume: i64| Trade {
        symbol: symbol.to_string(),
        price: 1.0,
        volume,
        ts: 1_700_000_000_000 + volume,
    };
    let sector_of = |sub: &mut laminar_db::Subscription| {
        let b = sub.recv().unwrap();
        let sectors = b.column(2).as_any().downcast_ref::<StringArray>().unwrap();
        sectors.is_valid(0).then(|| sectors.value(0).to_string())
    };
    handle.push(trades_batch(&[trade("S001", 1)])).unwrap();
    assert_eq!(sector_of(&mut sub).as_deref(), Some("energy"));
    handle.push(trades_batch(&[trade("S099", 2)])).unwrap();
    assert_eq!(sector_of(&mut sub), None, "no such instrument yet");
    db.execute("INSERT INTO instruments VALUES ('S001', 'utilities', 1), ('S099', 'new', 2)")
        .await
        .unwrap();
    handle.push(trades_batch(&[trade("S001", 3)])).unwrap();
    assert_eq!(sector_of(&mut sub).as_deref(), Some("utilities"));
    handle.push(trades_batch(&[trade("S099", 4)])).unwrap();
    assert_eq!(sector_of(&mut sub).as_deref(), Some("new"));
    // Read-your-writes, again and again: a row pushed after an upsert
    // returned always sees it (the shard runs table rows sent before a
    // pushed batch first, though they travel on another channel).
    for k in 0..200 {
        db.execute(&format!(
            "INSERT INTO instruments VALUES ('S099', 'v{k}', 2)"
        ))
        .await
        .unwrap();
        handle.push(trades_batch(&[trade("S099", 5 + k)])).unwrap();
        assert_eq!(sector_of(&mut sub), Some(format!("v{k}")), "upsert {k}");
    }
    let error = db
        .execute("DROP TABLE instruments")
        .await
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("LDB-") && error.contains("read by j"),
        "{error}"
    );
    db.shutdown().await.unwrap();
    assert!(db.errors().is_empty(), "{:?}", db.errors());
}

#[tokio::test]
async fn lookup_join_errors() {
    let db = LaminarDB::open().unwrap();
    db.execute(&format!("{TRADES_DDL}; {INSTRUMENTS}"))
        .await
        .unwrap();
    db.execute("CREATE TABLE notes (symbol VARCHAR, note VARCHAR)")
        .await
        .unwrap();
    db.execute(
        "CREATE TABLE pairs (a VARCHAR NOT NULL, b VARCHAR NOT NULL, w DOUBLE, PRIMARY KEY (a, b))",
    )
    .await
    .unwrap();
    let cases = [
        (
            "SELECT * FROM trades t JOIN notes n ON t.symbol = n.symbol",
            "no PRIMARY KEY",
        ),
        (
            "SELECT * FROM trades t JOIN pairs p ON t.symbol = p.a",
            "whole primary key",
        ),
        (
            "SELECT * FROM instruments i JOIN trades t ON t.symbol = i.symbol",
            "table on the left",
        ),
        (
            "SELECT * FROM trades t FULL JOIN instruments i ON t.symbol = i.symbol",
            "INNER or LEFT",
        ),
        (
            "SELECT * FROM trades t JOIN instruments i ON t.volume = i.lot",
            "primary key",
        ),
    ];
    for (query, words) in cases {
        let error = db
            .execute(&format!("CREATE STREAM s AS {query}"))
            .await
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("LDB-") && error.contains(words),
            "{query}: {error}"
        );
    }
}

/// A three-way join as two streams (the second joins the first's output),
/// and a join of two windowed aggregates on their window (Nexmark q8's
/// shape): each equals the batch answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_way_joins_and_joins_of_windowed_aggregates() {
    // orders x trades x trades: each order, a trade around it and another
    // trade of the same symbol just after that one.
    let upstream = "CREATE STREAM first_leg AS
        SELECT o.order_id, o.symbol, o.ts, t.ts AS t1, t.price AS p1 FROM orders o JOIN trades t
        ON o.symbol = t.symbol AND t.ts BETWEEN o.ts - 200 AND o.ts + 200";
    let query = "SELECT f.order_id, f.p1, t.price AS p2 FROM first_leg f JOIN trades t
        ON f.symbol = t.symbol AND t.ts BETWEEN f.t1 + 1 AND f.t1 + 300";
    let batch = "SELECT o.order_id, t.price AS p1, t2.price AS p2
        FROM orders o JOIN trades t ON o.symbol = t.symbol AND t.ts BETWEEN o.ts - 200 AND o.ts + 200
        JOIN trades t2 ON o.symbol = t2.symbol AND t2.ts BETWEEN t.ts + 1 AND t.ts + 300";
    join_differential(upstream, query, batch, "j").await;

    // Per 2 s window: symbols with both orders and trades, their counts.
    let upstream = "CREATE STREAM order_counts AS
          SELECT symbol, tumble(ts, INTERVAL '2' SECOND) AS w, COUNT(*) AS orders
          FROM orders GROUP BY symbol, tumble(ts, INTERVAL '2' SECOND);
        CREATE STREAM trade_counts AS
          SELECT symbol, tumble(ts, INTERVAL '2' SECOND) AS w, COUNT(*) AS trades
          FROM trades GROUP BY symbol, tumble(ts, INTERVAL '2' SECOND)";
    let query = "SELECT o.symbol, o.w, o.orders, t.trades FROM order_counts o JOIN trade_counts t
        ON o.symbol = t.symbol AND o.w = t.w";
    let batch = "SELECT o.symbol, o.w, o.orders, t.trades FROM
          (SELECT symbol, tumble(ts, INTERVAL '2' SECOND) AS w, COUNT(*) AS orders
           FROM orders WHERE symbol IS NOT NULL GROUP BY symbol, tumble(ts, INTERVAL '2' SECOND)) o
        JOIN
          (SELECT symbol, tumble(ts, INTERVAL '2' SECOND) AS w, COUNT(*) AS trades
           FROM trades GROUP BY symbol, tumble(ts, INTERVAL '2' SECOND)) t
        ON o.symbol = t.symbol AND o.w = t.w";
    join_differential(upstream, query, batch, "j").await;
}

/// The same shapes written as one query: the planner splits each
/// stateful input of a stateful step into a stage stream of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_stateful_steps_in_one_query() {
    // A join of a join.
    let three_way = "SELECT o.order_id, t.price AS p1, t2.price AS p2
        FROM orders o JOIN trades t ON o.symbol = t.symbol AND t.ts BETWEEN o.ts - 200 AND o.ts + 200
        JOIN trades t2 ON o.symbol = t2.symbol AND t2.ts BETWEEN t.ts + 1 AND t.ts + 300";
    join_differential("", three_way, three_way, "j").await;
    // A join of two windowed aggregates.
    let of_aggregates = "SELECT o.symbol, o.w, o.orders, t.trades FROM
          (SELECT symbol, tumble(ts, INTERVAL '2' SECOND) AS w, COUNT(*) AS orders
           FROM orders GROUP BY symbol, tumble(ts, INTERVAL '2' SECOND)) o
        JOIN
          (SELECT symbol, tumble(ts, INTERVAL '2' SECOND) AS w, COUNT(*) AS trades
           FROM trades GROUP BY symbol, tumble(ts, INTERVAL '2' SECOND)) t
        ON o.symbol = t.symbol AND o.w = t.w";
    join_differential("", of_aggregates, of_aggregates, "j").await;
    // A windowed aggregate over a join (the join's event times pass on).
    let over_join = "SELECT o.symbol, COUNT(*) AS n, MAX(t.price) AS top
        FROM orders o JOIN trades t ON o.symbol = t.symbol AND o.ts BETWEEN t.ts - 800 AND t.ts + 800
        GROUP BY o.symbol, tumble(o.ts, INTERVAL '2' SECOND)";
    join_differential("", over_join, over_join, "j").await;

    // An aggregate over an aggregate without a window (a changelog stage),
    // as a changelog; and how the stages show.
    let nested = "SELECT symbol, SUM(n) AS n, MAX(n) AS most FROM
          (SELECT symbol, qty % 10 AS bucket, COUNT(*) AS n FROM orders GROUP BY symbol, qty % 10)
        GROUP BY symbol";
    let orders = orders(9, 2_000, 20);
    let trades = trades_batch(&trades(9, 10, 20, 0));
    let changes = format!("{nested} EMIT CHANGES");
    changelog_differential("", &changes, nested, 9, (&orders, &trades), 100).await;
    let db = planned(&format!("CREATE STREAM j AS {three_way}")).await;
    let stage = db.explain("j_stage1").unwrap();
    assert!(stage.starts_with("IntervalJoin[Inner"), "{stage}");
    let plan = db.explain("j").unwrap();
    assert!(plan.contains("stream j_stage1"), "{plan}");
    // The stages go with their stream.
    db.execute("DROP STREAM j").await.unwrap();
    assert!(db.explain("j_stage1").is_err());
    db.execute(&format!("CREATE STREAM j AS {three_way}"))
        .await
        .unwrap();
}

/// ASOF and temporal joins as one step of a larger query: an aggregate
/// over one, one reading an aggregate, one over another join, two in a
/// row. Each equals the batch answer (the ASOF pick written with
/// `ROW_NUMBER()`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asof_joins_inside_larger_queries() {
    // Per symbol and 2 s window of orders: how many found a trade before
    // them, their quantity and the highest price they met.
    let over_asof = "SELECT o.symbol, COUNT(*) AS n, SUM(o.qty) AS qty, MAX(t.price) AS top
        FROM orders o ASOF JOIN trades t ON o.symbol = t.symbol AND o.ts >= t.ts
        GROUP BY o.symbol, tumble(o.ts, INTERVAL '2' SECOND)";
    let picked = |condition: &str, order_by: &str| {
        format!(
            "SELECT o.order_id, o.symbol, o.qty, o.ts, t.price, t.ts AS trade_ts,
                    ROW_NUMBER() OVER (PARTITION BY o.order_id ORDER BY {order_by}) AS rn
             FROM orders o JOIN trades t ON o.symbol = t.symbol AND {condition}"
        )
    };
    let batch = format!(
        "SELECT symbol, COUNT(*) AS n, SUM(qty) AS qty, MAX(price) AS top
         FROM ({}) AS p WHERE rn = 1
         GROUP BY symbol, tumble(ts, INTERVAL '2' SECOND)",
        picked("o.ts >= t.ts", "t.ts DESC")
    );
    join_differential("", over_asof, &batch, "j").await;
    // The same through FOR SYSTEM_TIME AS OF.
    let over_temporal = "SELECT o.symbol, COUNT(*) AS n, SUM(o.qty) AS qty, MAX(t.price) AS top
        FROM orders o JOIN trades FOR SYSTEM_TIME AS OF o.ts AS t ON o.symbol = t.symbol
        GROUP BY o.symbol, tumble(o.ts, INTERVAL '2' SECOND)";
    join_differential("", over_temporal, &batch, "j").await;

    // Each order meets the last 1 s bar of its symbol closed before it.
    let bars = "SELECT symbol, tumble(ts, INTERVAL '1' SECOND) AS w, MAX(price) AS high
        FROM trades GROUP BY symbol, tumble(ts, INTERVAL '1' SECOND)";
    let of_aggregate = format!(
        "SELECT o.order_id, o.symbol, b.w, b.high FROM orders o
         ASOF JOIN ({bars}) b ON o.symbol = b.symbol AND o.ts >= b.w + 1000"
    );
    let batch = format!(
        "SELECT order_id, symbol, w, high FROM (
           SELECT o.order_id, o.symbol, b.w, b.high,
                  ROW_NUMBER() OVER (PARTITION BY o.order_id ORDER BY b.w DESC) AS rn
           FROM orders o JOIN ({bars}) b ON o.symbol = b.symbol AND o.ts >= b.w + 1000) AS p
         WHERE rn = 1"
    );
    join_differential("", &of_aggregate, &batch, "j").await;

    // A join of a join: each order, a trade around it, and the trade of
    // the same symbol just before that one.
    let of_join = "SELECT o.order_id, t.ts AS t1, t.price AS p1, q.price AS p0
        FROM orders o JOIN trades t ON o.symbol = t.symbol AND t.ts BETWEEN o.ts - 200 AND o.ts + 200
        ASOF JOIN trades q ON t.symbol = q.symbol AND t.ts >= q.ts + 1";
    let batch = "SELECT order_id, t1, p1, p0 FROM (
          SELECT o.order_id, t.ts AS t1, t.price AS p1, q.price AS p0,
                 ROW_NUMBER() OVER (PARTITION BY o.order_id, t.ts ORDER BY q.ts DESC) AS rn
          FROM orders o JOIN trades t ON o.symbol = t.symbol AND t.ts BETWEEN o.ts - 200 AND o.ts + 200
          JOIN trades q ON t.symbol = q.symbol AND t.ts >= q.ts + 1) AS p
        WHERE rn = 1";
    join_differential("", of_join, batch, "j").await;

    // Two ASOF joins in a row: the trade before each order and the one
    // after it.
    let two = "SELECT o.order_id, b.price AS before, a.price AS after FROM orders o
        ASOF JOIN trades b ON o.symbol = b.symbol AND o.ts >= b.ts
        ASOF JOIN trades a MATCH_CONDITION(o.ts <= a.ts) ON o.symbol = a.symbol";
    let batch = "SELECT b.order_id, b.price AS before, a.price AS after FROM
          (SELECT order_id, price FROM (SELECT o.order_id, t.price,
             ROW_NUMBER() OVER (PARTITION BY o.order_id ORDER BY t.ts DESC) AS rn
             FROM orders o JOIN trades t ON o.symbol = t.symbol AND o.ts >= t.ts) AS x WHERE rn = 1) b
        JOIN
          (SELECT order_id, price FROM (SELECT o.order_id, t.price,
             ROW_NUMBER() OVER (PARTITION BY o.order_id ORDER BY t.ts) AS rn
             FROM orders o JOIN trades t ON o.symbol = t.symbol AND o.ts <= t.ts) AS x WHERE rn = 1) a
        ON b.order_id = a.order_id";
    join_differential("", two, batch, "j").await;

    // How the stages show.
    let db = planned(&format!("CREATE STREAM j AS {over_asof}")).await;
    let stage = db.explain("j_stage1").unwrap();
    assert!(stage.starts_with("AsofJoin[Backward"), "{stage}");
    assert!(db.explain("j").unwrap().contains("stream j_stage1"));
}

/// Joins reading a changelog (an `EMIT CHANGES` aggregate): each pair
/// carries the product of its rows' weights, so the consolidated output
/// is the join of the final rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joins_over_changelogs() {
    let counts = "CREATE STREAM counts AS SELECT symbol, COUNT(*) AS n FROM trades
        GROUP BY symbol EMIT CHANGES;
        CREATE STREAM sizes AS SELECT symbol, MAX(qty) AS biggest FROM orders
        GROUP BY symbol EMIT CHANGES";
    let per_symbol = "(SELECT symbol, COUNT(*) AS n FROM trades GROUP BY symbol)";
    let biggest = "(SELECT symbol, MAX(qty) AS biggest FROM orders GROUP BY symbol)";
    let cases = [
        (
            "SELECT o.order_id, c.n FROM orders o JOIN counts c ON o.symbol = c.symbol".to_string(),
            format!("SELECT o.order_id, c.n FROM orders o JOIN {per_symbol} c ON o.symbol = c.symbol"),
        ),
        (
            "SELECT c.symbol, c.n, s.biggest FROM counts c JOIN sizes s ON c.symbol = s.symbol"
                .to_string(),
            format!(
                "SELECT c.symbol, c.n, s.biggest FROM {per_symbol} c JOIN {biggest} s ON c.symbol = s.symbol"
            ),
        ),
        // One query: the aggregate is a stage, the join reads its changelog.
        (
            format!("SELECT o.order_id, c.n FROM orders o JOIN {per_symbol} c ON o.symbol = c.symbol EMIT CHANGES"),
            format!("SELECT o.order_id, c.n FROM orders o JOIN {per_symbol} c ON o.symbol = c.symbol"),
        ),
        // A join of a join, each with a changelog: the weights multiply.
        (
            "SELECT o.order_id, c.n, s.biggest FROM orders o JOIN counts c ON o.symbol = c.symbol
             JOIN sizes s ON o.symbol = s.symbol".to_string(),
            format!(
                "SELECT o.order_id, c.n, s.biggest FROM orders o JOIN {per_symbol} c ON o.symbol = c.symbol
                 JOIN {biggest} s ON o.symbol = s.symbol"
            ),
        ),
        // An aggregate over a join with a changelog (the join is a stage).
        (
            "SELECT o.symbol, SUM(c.n) AS total, COUNT(*) AS pairs FROM orders o
             JOIN counts c ON o.symbol = c.symbol GROUP BY o.symbol EMIT CHANGES".to_string(),
            format!(
                "SELECT o.symbol, SUM(c.n) AS total, COUNT(*) AS pairs FROM orders o
                 JOIN {per_symbol} c ON o.symbol = c.symbol GROUP BY o.symbol"
            ),
        ),
    ];
    let orders = orders(10, 1_500, 20);
    let trades = trades_batch(&trades(10, 1_500, 20, 4_000));
    for (query, batch) in &cases {
        for max_batch in [7, 300] {
            changelog_differential(counts, query, batch, 10, (&orders, &trades), max_batch).await;
        }
    }
    let db = planned(counts).await;
    assert_refused(
        &db,
        "CREATE STREAM a AS SELECT c.symbol, COUNT(*) AS n FROM counts c
         JOIN sizes s ON c.symbol = s.symbol GROUP BY c.symbol EMIT CHANGES",
        "LDB-1004",
        "two changelogs",
    )
    .await;
    assert_refused(
        &db,
        "CREATE STREAM l AS SELECT o.order_id, c.n FROM orders o LEFT JOIN counts c ON o.symbol = c.symbol",
        "LDB-1004",
        "changelog",
    )
    .await;
}

/// ASOF and temporal joins reading a windowed `EMIT CHANGES` aggregate by
/// its window's end: a window's rows change only while it is open, so an
/// answer, given once the watermark passes its time, picks only final
/// rows; the consolidated changelog is the batch answer over the final
/// windows, however the changelog was batched. The bars' `HAVING`
/// withdraws a window's row without a replacement once its maximum
/// passes the limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asof_and_temporal_joins_over_windowed_changelogs() {
    let bars = "CREATE STREAM bars AS
          SELECT symbol, window_end AS e, MAX(price) AS high, COUNT(*) AS n
          FROM TABLE(TUMBLE(TABLE trades, DESCRIPTOR(ts), INTERVAL '1' SECOND))
          GROUP BY symbol, window_start, window_end HAVING MAX(price) < 900 EMIT CHANGES;
        CREATE STREAM order_counts AS
          SELECT symbol, window_start AS w, window_end AS e, COUNT(*) AS n, SUM(qty) AS qty
          FROM TABLE(TUMBLE(TABLE orders, DESCRIPTOR(ts), INTERVAL '1' SECOND))
          GROUP BY symbol, window_start, window_end EMIT CHANGES";
    let batch_bars = "(SELECT symbol, tumble(ts, INTERVAL '1' SECOND) + 1000 AS e,
          MAX(price) AS high, COUNT(*) AS n FROM trades
          GROUP BY symbol, tumble(ts, INTERVAL '1' SECOND) HAVING MAX(price) < 900)";
    let batch_counts = "(SELECT symbol, tumble(ts, INTERVAL '1' SECOND) + 1000 AS e,
          COUNT(*) AS n, SUM(qty) AS qty FROM orders WHERE symbol IS NOT NULL
          GROUP BY symbol, tumble(ts, INTERVAL '1' SECOND))";
    let cases = [
        // Each order meets the last bar of its symbol closed at its time.
        (
            "SELECT o.order_id, b.e, b.high, b.n
             FROM orders o JOIN bars FOR SYSTEM_TIME AS OF o.ts AS b ON o.symbol = b.symbol"
                .to_string(),
            format!(
                "SELECT order_id, e, high, n FROM (
                   SELECT o.order_id, b.e, b.high, b.n,
                          ROW_NUMBER() OVER (PARTITION BY o.order_id ORDER BY b.e DESC) AS rn
                   FROM orders o JOIN {batch_bars} b ON o.symbol = b.symbol AND o.ts >= b.e) AS p
                 WHERE rn = 1"
            ),
        ),
        // The same as ASOF LEFT JOIN, orders without a bar kept.
        (
            "SELECT o.order_id, b.e, b.high
             FROM orders o ASOF LEFT JOIN bars b ON o.symbol = b.symbol AND o.ts >= b.e"
                .to_string(),
            format!(
                "SELECT order_id, e, high FROM (
                   SELECT o.order_id, b.e, b.high,
                          ROW_NUMBER() OVER (PARTITION BY o.order_id ORDER BY b.e DESC NULLS LAST) AS rn
                   FROM orders o LEFT JOIN {batch_bars} b ON o.symbol = b.symbol AND o.ts >= b.e) AS p
                 WHERE rn = 1"
            ),
        ),
        // A changelog on the left: each window's order count meets the
        // last trade at its end; its retractions meet the same trade.
        (
            "SELECT c.symbol, c.e, c.n, c.qty, t.price
             FROM order_counts c ASOF JOIN trades t ON c.symbol = t.symbol AND c.e >= t.ts"
                .to_string(),
            format!(
                "SELECT symbol, e, n, qty, price FROM (
                   SELECT c.symbol, c.e, c.n, c.qty, t.price,
                          ROW_NUMBER() OVER (PARTITION BY c.symbol, c.e ORDER BY t.ts DESC) AS rn
                   FROM {batch_counts} c JOIN trades t ON c.symbol = t.symbol AND c.e >= t.ts) AS p
                 WHERE rn = 1"
            ),
        ),
        // Changelogs on both sides.
        (
            "SELECT c.symbol, c.e, c.n, b.high
             FROM order_counts c ASOF JOIN bars b ON c.symbol = b.symbol AND c.e >= b.e"
                .to_string(),
            format!(
                "SELECT symbol, e, n, high FROM (
                   SELECT c.symbol, c.e, c.n, b.high,
                          ROW_NUMBER() OVER (PARTITION BY c.symbol, c.e ORDER BY b.e DESC) AS rn
                   FROM {batch_counts} c JOIN {batch_bars} b ON c.symbol = b.symbol AND c.e >= b.e) AS p
                 WHERE rn = 1"
            ),
        ),
    ];
    for (seed, max_batch) in [(11u64, 5usize), (12, 300)] {
        let orders = orders(seed, 1_500, 10);
        let trades = trades_batch(&trades(seed, 1_500, 10, 4_000));
        for (query, batch) in &cases {
            changelog_differential(bars, query, batch, seed, (&orders, &trades), max_batch).await;
        }
    }
    // Several rows of one join key and time (the bars of each volume
    // parity, joined on the symbol only): the pick among them follows
    // their values, not the order of their last updates, so batching
    // does not change the answer.
    let parity = "CREATE STREAM parity_bars AS
          SELECT symbol, volume % 2 AS parity, window_end AS e, MAX(price) AS high
          FROM TABLE(TUMBLE(TABLE trades, DESCRIPTOR(ts), INTERVAL '1' SECOND))
          GROUP BY symbol, volume % 2, window_start, window_end EMIT CHANGES";
    let query = "CREATE STREAM j AS SELECT o.order_id, b.e, b.high FROM orders o
        JOIN parity_bars FOR SYSTEM_TIME AS OF o.ts AS b ON o.symbol = b.symbol";
    let orders_rows = orders(13, 1_500, 10);
    let trades_rows = trades_batch(&trades(13, 1_500, 10, 4_000));
    let mut answers = Vec::new();
    for (seed, max_batch) in [(13u64, 3usize), (14, 40), (15, 1_500)] {
        let ddl = format!("{ORDERS_DDL}; {TRADES_DDL}; {parity}; {query}");
        let (got, _) = run_join(&ddl, "j", &orders_rows, &trades_rows, seed, max_batch, 2).await;
        answers.push(consolidate(&got));
    }
    assert!(row_count(&answers[0]) > 100);
    for other in &answers[1..] {
        assert_same_rows(other, &answers[0]);
    }

    // Timed by the window's start, which a changelog retracts after the
    // watermark passes it: refused, with the way out.
    let db = planned(bars).await;
    assert_refused(
        &db,
        "CREATE STREAM s AS SELECT o.order_id, c.n FROM orders o
         ASOF JOIN order_counts c ON o.symbol = c.symbol AND o.ts >= c.w",
        "LDB-1004",
        "window's end",
    )
    .await;
    // A subquery that drops a changelog's weights would take its
    // retractions for rows.
    assert_refused(
        &db,
        "CREATE STREAM s AS SELECT c.symbol, c.n, t.price
         FROM (SELECT symbol, e, n FROM order_counts) c
         ASOF JOIN trades t ON c.symbol = t.symbol AND c.e >= t.ts",
        "LDB-1004",
        "_weight",
    )
    .await;
}

/// A version withdrawn without a replacement (the bar's `HAVING` fails
/// once a higher price arrives) leaves the one before it as the answer,
/// even when the probe side is far ahead: pruning keeps every version the
/// right watermark has not settled, and the one before them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn temporal_join_over_a_changelog_falls_back_when_a_version_is_withdrawn() {
    use datafusion::arrow::array::{Array, Float64Array};
    for shards in [1, 2] {
        let (db, p, q, collector) = quotes_and_probes(
            shards,
            "CREATE STREAM bars AS SELECT sym, window_end AS e, MAX(px) AS high
               FROM TABLE(TUMBLE(TABLE quotes, DESCRIPTOR(ts), INTERVAL '1' SECOND))
               GROUP BY sym, window_start, window_end HAVING MAX(px) < 100 EMIT CHANGES;
             CREATE STREAM j AS SELECT p.id, b.e, b.high
               FROM probes p JOIN bars FOR SYSTEM_TIME AS OF p.ts AS b ON p.sym = b.sym",
        )
        .await;
        // The probe waits, its side's watermark far ahead.
        p.push(probes_batch(&[1], &["A"], &[2500])).unwrap();
        p.watermark(10_000).unwrap();
        eventually(|| {
            db.metrics()
                .streams
                .iter()
                .any(|s| s.name == "j" && s.state_bytes > 0)
        });
        // Bars ending at 1000 (high 50) and 2000 (high 60), then the
        // second's withdrawal (its high passes 100).
        q.push(quotes_batch(&["A", "A"], &[50.0, 60.0], &[100, 1100]))
            .unwrap();
        q.push(quotes_batch(&["A"], &[150.0], &[1200])).unwrap();
        q.watermark(i64::MAX).unwrap();
        p.watermark(i64::MAX).unwrap();
        db.shutdown().await.unwrap();
        let got = consolidate(&collector.join().unwrap());
        let rows: Vec<(i64, i64, f64)> = got
            .iter()
            .flat_map(|b| {
                let id = b.column(0).as_any().downcast_ref::<Int64Array>().unwrap();
                let e = b.column(1).as_any().downcast_ref::<Int64Array>().unwrap();
                let high = b.column(2).as_any().downcast_ref::<Float64Array>().unwrap();
                (0..b.num_rows())
                    .map(|i| (id.value(i), e.value(i), high.value(i)))
                    .collect::<Vec<_>>()
            })
            .collect();
        assert_eq!(rows, vec![(1, 1000, 50.0)], "{shards} shard(s)");
    }
}

/// `EMIT CHANGES` on an outer interval join: unmatched rows show at once,
/// padded, and are retracted when a match arrives; the consolidated
/// changelog is the batch answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outer_interval_join_as_a_changelog() {
    let mut retractions = 0;
    for kind in ["LEFT", "FULL OUTER"] {
        let query = format!(
            "SELECT o.order_id, t.symbol, t.price FROM orders o {kind} JOIN trades t
             ON o.symbol = t.symbol AND t.ts BETWEEN o.ts - 150 AND o.ts + 150"
        );
        for (seed, max_batch) in [(5u64, 7usize), (6, 1000)] {
            let orders = orders(seed, 1_500, 20);
            let trades = trades_batch(&trades(seed, 1_500, 20, 4_000));
            let want = run_batch_join(&query, &orders, &trades).await;
            for shards in [1, 2] {
                let ddl =
                    format!("{ORDERS_DDL}; {TRADES_DDL}; CREATE STREAM j AS {query} EMIT CHANGES");
                let (got, _) = run_join(&ddl, "j", &orders, &trades, seed, max_batch, shards).await;
                retractions += got
                    .iter()
                    .map(|b| {
                        let w = b
                            .column(b.num_columns() - 1)
                            .as_any()
                            .downcast_ref::<Int64Array>()
                            .unwrap();
                        w.values().iter().filter(|&&w| w < 0).count()
                    })
                    .sum::<usize>();
                assert_same_rows(&consolidate(&got), &want);
            }
        }
    }
    // Orders pushed before their trades were shown padded, then retracted.
    assert!(retractions > 0);
}

/// A temporal join against a stream (its one event-time column times the
/// versions): each payment is converted at the rate valid at its time, as
/// the batch ASOF answer over the same rates says.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn temporal_join_against_a_stream() {
    use datafusion::arrow::array::Float64Array;
    let currencies = ["EUR", "GBP", "JPY"];
    let rates = RecordBatch::try_new(
        Arc::new(Schema::new(vec![
            Field::new("currency", DataType::Utf8, false),
            Field::new("rate", DataType::Float64, false),
            Field::new("ts", DataType::Int64, false),
        ])),
        vec![
            Arc::new(StringArray::from_iter_values(
                (0..300).map(|i| currencies[i % 3]),
            )),
            Arc::new(Float64Array::from_iter_values(
                (0..300).map(|i| 1.0 + i as f64 / 1000.0),
            )),
            Arc::new(Int64Array::from_iter_values(
                (0..300).map(|i| 1_000 + i as i64 * 33),
            )),
        ],
    )
    .unwrap();
    let payments = RecordBatch::try_new(
        Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("currency", DataType::Utf8, false),
            Field::new("amount", DataType::Float64, false),
            Field::new("ts", DataType::Int64, false),
        ])),
        vec![
            Arc::new(Int64Array::from_iter_values(0..400)),
            Arc::new(StringArray::from_iter_values(
                (0..400).map(|i| currencies[(i * 7) % 3]),
            )),
            Arc::new(Float64Array::from_iter_values((0..400).map(|i| i as f64))),
            Arc::new(Int64Array::from_iter_values(
                (0..400).map(|i| 900 + i as i64 * 25),
            )),
        ],
    )
    .unwrap();
    let ddl = "CREATE SOURCE rates (currency VARCHAR NOT NULL, rate DOUBLE NOT NULL, ts BIGINT NOT NULL,
                 WATERMARK FOR ts AS ts - INTERVAL '1' SECOND);
               CREATE SOURCE payments (id BIGINT NOT NULL, currency VARCHAR NOT NULL,
                 amount DOUBLE NOT NULL, ts BIGINT NOT NULL, WATERMARK FOR ts AS ts - INTERVAL '1' SECOND);
               CREATE STREAM quoted AS SELECT currency, rate * 1.01 AS rate, ts FROM rates
                 WHERE currency <> 'JPY';
               CREATE STREAM converted AS SELECT p.id, p.amount * r.rate AS usd
               FROM payments p LEFT JOIN quoted FOR SYSTEM_TIME AS OF p.ts AS r
               ON p.currency = r.currency";
    let ctx = laminar_sql::new_session_context();
    for (name, batch) in [("rates", &rates), ("payments", &payments)] {
        let table = MemTable::try_new(batch.schema(), vec![vec![batch.clone()]]).unwrap();
        ctx.register_table(name, Arc::new(table)).unwrap();
    }
    let want = ctx
        .sql(
            "SELECT id, usd FROM (SELECT p.id, p.amount * r.rate AS usd,
               ROW_NUMBER() OVER (PARTITION BY p.id ORDER BY r.ts DESC NULLS LAST) AS rn
             FROM payments p LEFT JOIN (SELECT currency, rate * 1.01 AS rate, ts FROM rates
               WHERE currency <> 'JPY') r ON p.currency = r.currency AND p.ts >= r.ts) AS x
             WHERE rn = 1",
        )
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    for (seed, max_batch, shards) in [(1u64, 5usize, 1usize), (2, 64, 2), (3, 400, 2)] {
        let (got, _) = run_two_sources(
            ddl,
            "converted",
            [("rates", &rates), ("payments", &payments)],
            seed,
            max_batch,
            shards,
        )
        .await;
        assert_eq!(row_count(&got), 400);
        assert_same_rows(&got, &want);
    }
}

/// Review cases: a WHERE on an ASOF join filters what was picked (it does
/// not move below the pick); a condition on the pairs next to the time
/// bounds; a window over an ASOF join's right time is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asof_where_filters_after_the_pick_and_pair_conditions() {
    use datafusion::arrow::array::Array;
    let db = LaminarDB::builder().shards(1).build().unwrap();
    db.execute(QUOTES_AND_PROBES).await.unwrap();
    db.execute(
        "CREATE STREAM cheap AS SELECT p.id, q.px, q.ts AS quote_ts FROM probes p
           ASOF JOIN quotes q ON p.sym = q.sym AND p.ts >= q.ts WHERE q.px < 10",
    )
    .await
    .unwrap();
    let error = db
        .execute(
            "CREATE STREAM per_quote_second AS SELECT COUNT(*) AS n FROM cheap
             GROUP BY tumble(quote_ts, INTERVAL '1' SECOND)",
        )
        .await
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("LDB-1006") && error.contains("event time"),
        "{error}"
    );
    let sub = db.subscribe("cheap").unwrap();
    let (q, p) = (
        db.source_untyped("quotes").unwrap(),
        db.source_untyped("probes").unwrap(),
    );
    db.start().await.unwrap();
    let collector = collect(sub);
    q.push(quotes_batch(&["A", "A"], &[5.0, 50.0], &[10, 20]))
        .unwrap();
    p.push(probes_batch(&[1, 2], &["A", "A"], &[15, 30]))
        .unwrap();
    q.watermark(i64::MAX).unwrap();
    p.watermark(i64::MAX).unwrap();
    db.shutdown().await.unwrap();
    let got = collector.join().unwrap();
    // Probe 1 picks the quote at 10 (5.0, kept); probe 2 picks the quote
    // at 20 (50.0), which the WHERE removes: no fallback to the one at 10.
    let ids: Vec<i64> = got
        .iter()
        .flat_map(|b| {
            let ids = b.column(0).as_any().downcast_ref::<Int64Array>().unwrap();
            (0..ids.len()).map(|i| ids.value(i)).collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(ids, vec![1]);

    // A condition on the pairs written before the time bounds.
    let query = "SELECT o.order_id, t.price FROM orders o JOIN trades t
                 ON o.symbol = t.symbol AND t.price > CAST(o.qty AS DOUBLE)
                 AND t.ts BETWEEN o.ts - 300 AND o.ts + 300";
    join_differential("", query, query, "j").await;
}

/// A started two-shard database with the orders and trades sources and
/// `ddl`, and their handles.
async fn orders_and_trades(
    ddl: &str,
) -> (
    LaminarDB,
    laminar_db::SourceHandle,
    laminar_db::SourceHandle,
) {
    let db = LaminarDB::builder().shards(2).build().unwrap();
    db.execute(&format!("{ORDERS_DDL}; {TRADES_DDL}; {ddl}"))
        .await
        .unwrap();
    let (o, t) = (
        db.source_untyped("orders").unwrap(),
        db.source_untyped("trades").unwrap(),
    );
    db.start().await.unwrap();
    (db, o, t)
}

/// ASOF in an ad-hoc query (the seed's example shape): the streaming
/// operator over the sources' retained rows, all time closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adhoc_asof_over_retained_rows() {
    use datafusion::arrow::array::{Array, Float64Array};
    let (db, o, t) = orders_and_trades("").await;
    let orders = orders(21, 300, 5);
    let trades_rows = trades_batch(&trades(21, 300, 5, 0));
    t.push(trades_rows.clone()).unwrap();
    o.push(orders.clone()).unwrap();
    // The retained rows are there once the pushes returned.
    let query = "SELECT o.order_id, t.price AS last_trade_price FROM orders o
                 ASOF JOIN trades t ON o.symbol = t.symbol AND o.ts >= t.ts";
    let got = db.sql(query).await.unwrap();
    let want = run_batch_join(
        "SELECT order_id, last_trade_price FROM (
           SELECT o.order_id, t.price AS last_trade_price,
             ROW_NUMBER() OVER (PARTITION BY o.order_id ORDER BY t.ts DESC) AS rn
           FROM orders o JOIN trades t ON o.symbol = t.symbol AND o.ts >= t.ts) AS x
         WHERE rn = 1",
        &orders,
        &trades_rows,
    )
    .await;
    assert!(row_count(&want) > 100);
    assert_same_rows(&got, &want);
    let prices = got[0]
        .column(1)
        .as_any()
        .downcast_ref::<Float64Array>()
        .unwrap();
    assert!(prices.null_count() == 0);
    db.shutdown().await.unwrap();
}

/// An ad-hoc ASOF join against a materialized view that is a windowed
/// changelog reads the view's current rows as versions (each weighing 1).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adhoc_asof_over_a_changelog_view() {
    let (db, o, t) = orders_and_trades(
        "CREATE MATERIALIZED VIEW bars AS
           SELECT symbol, window_end AS e, MAX(price) AS high
           FROM TABLE(TUMBLE(TABLE trades, DESCRIPTOR(ts), INTERVAL '1' SECOND))
           GROUP BY symbol, window_start, window_end EMIT CHANGES",
    )
    .await;
    let orders = orders(22, 300, 5);
    let trade_rows = trades(22, 300, 5, 0);
    t.push(trades_batch(&trade_rows)).unwrap();
    t.watermark(i64::MAX).unwrap();
    o.push(orders.clone()).unwrap();
    // The view is complete once it has a row per symbol and second.
    let bar_count = trade_rows
        .iter()
        .map(|r| (r.symbol.clone(), r.ts.div_euclid(1000)))
        .collect::<std::collections::HashSet<_>>()
        .len();
    wait_until("the view to fill", async || {
        row_count(&db.sql("SELECT * FROM bars").await.unwrap()) >= bar_count
    })
    .await;
    let bars = db.sql("SELECT symbol, e, high FROM bars").await.unwrap();
    let got = db
        .sql(
            "SELECT o.order_id, b.e, b.high FROM orders o
             ASOF JOIN bars b ON o.symbol = b.symbol AND o.ts >= b.e",
        )
        .await
        .unwrap();
    let got: Vec<RecordBatch> = got.iter().map(|b| b.project(&[0, 1, 2]).unwrap()).collect();
    let ctx = laminar_sql::new_session_context();
    let bars_table = MemTable::try_new(bars[0].schema(), vec![bars]).unwrap();
    ctx.register_table("bars", Arc::new(bars_table)).unwrap();
    let orders_table = MemTable::try_new(orders.schema(), vec![vec![orders]]).unwrap();
    ctx.register_table("orders", Arc::new(orders_table))
        .unwrap();
    let want = ctx
        .sql(
            "SELECT order_id, e, high FROM (
               SELECT o.order_id, b.e, b.high,
                 ROW_NUMBER() OVER (PARTITION BY o.order_id ORDER BY b.e DESC) AS rn
               FROM orders o JOIN bars b ON o.symbol = b.symbol AND o.ts >= b.e) AS x
             WHERE rn = 1",
        )
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    assert!(row_count(&want) > 100);
    assert_same_rows(&got, &want);
    db.shutdown().await.unwrap();
}
