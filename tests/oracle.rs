//! Differential tests: a stream, once every window has closed, must emit
//! exactly what the same SQL returns as a DataFusion batch query over the
//! same rows, whatever the batch sizes, the disorder (within the bound) and
//! the shard count.

mod common;

use std::sync::Arc;

use common::*;
use datafusion::arrow::array::{Int64Array, RecordBatch, TimestampMillisecondArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, TimeUnit};

const VWAP: &str = "SELECT symbol,
       SUM(price * CAST(volume AS DOUBLE)) / SUM(CAST(volume AS DOUBLE)) AS vwap,
       COUNT(*) AS trades
FROM trades
GROUP BY symbol, tumble(ts, INTERVAL '1' MINUTE)";

const OHLC: &str = "SELECT symbol,
       CAST(tumble(ts, INTERVAL '1' MINUTE) AS BIGINT) AS window_start,
       first_value(price) AS open,
       MAX(price) AS high,
       MIN(price) AS low,
       last_value(price) AS close,
       SUM(volume) AS volume
FROM trades
GROUP BY symbol, tumble(ts, INTERVAL '1' MINUTE)";

/// The batch form of 300 ms sessions per symbol over the `trades` rows
/// `filter` keeps: a row more than 300 ms after its key's previous row
/// starts a session (numbered with `LAG` and a running `SUM`); `select`
/// lists what each session gives, over `numbered`.
fn numbered_sessions(filter: &str, select: &str) -> String {
    format!(
        "WITH marked AS (
             SELECT *, CASE WHEN ts - LAG(ts) OVER (PARTITION BY symbol ORDER BY ts) < 300
                            THEN 0 ELSE 1 END AS new_session
             FROM trades {filter}),
         numbered AS (
             SELECT *, SUM(new_session) OVER (PARTITION BY symbol ORDER BY ts
                 ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS sid
             FROM marked)
         SELECT symbol, {select} FROM numbered GROUP BY symbol, sid"
    )
}

/// Runs `query` as a stream and as a batch query over the same rows, for
/// several seeds, batch sizes and 1 and 2 shards.
async fn differential(query: &str, emit: &str, n: usize, symbols: usize) {
    differential_against(query, emit, query, n, symbols).await
}

/// Like [`differential`], with a batch query that states the stream's
/// meaning in plain SQL (for windows batch SQL has no function for). An
/// `EMIT CHANGES` stream's changelog is consolidated first.
async fn differential_against(
    query: &str,
    emit: &str,
    batch_query: &str,
    n: usize,
    symbols: usize,
) {
    cascading_differential("", query, emit, batch_query, n, symbols).await
}

/// Like [`differential_against`], with `upstream` streams created between
/// the source and the stream under test.
async fn cascading_differential(
    upstream: &str,
    query: &str,
    emit: &str,
    batch_query: &str,
    n: usize,
    symbols: usize,
) {
    for (seed, max_batch) in [(1u64, 1usize), (2, 17), (3, 500), (4, 4096)] {
        // Batch size 1 is slow in debug builds: fewer rows for it.
        let n = if max_batch == 1 { n / 10 } else { n };
        let rows = trades(seed, n, symbols, 4_000);
        let want = run_batch(
            batch_query,
            "trades",
            vec![trades_batch(&rows)],
            trades_schema(),
        )
        .await;
        assert!(row_count(&want) > 0);
        for shards in [1, 2] {
            let ddl = format!("{TRADES_DDL}; {upstream}; CREATE STREAM s AS {query} {emit}");
            let batches = random_batches(&rows, seed * 31 + shards as u64, max_batch);
            let (got, metrics) = run_stream(&ddl, "trades", "s", batches, shards).await;
            assert_eq!(
                metrics.streams[0].late_rows, 0,
                "no row is late within the bound"
            );
            let got = if emit.contains("CHANGES") {
                consolidate(&got)
            } else {
                got
            };
            assert_same_rows(&got, &want);
        }
    }
}

/// The batch meaning of `GROUP BY symbol, slide(ts, size, slide, offset)`:
/// each row copied into every window holding it. Window starts are the
/// slide-aligned `tumble(ts, slide, offset)` minus whole slides.
fn sliding_oracle(select: &str, size_ms: i64, slide_ms: i64, offset_ms: i64) -> String {
    let copies = (size_ms + slide_ms - 1) / slide_ms;
    let arms: Vec<String> = (0..copies)
        .map(|i| {
            format!(
                "SELECT *, tumble(ts, {slide_ms}, {offset_ms}) - {} AS w FROM trades",
                i * slide_ms
            )
        })
        .collect();
    format!(
        "SELECT {select} FROM ({}) AS copies WHERE w + {size_ms} > ts GROUP BY symbol, w",
        arms.join(" UNION ALL ")
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filter_and_projection() {
    differential(
        "SELECT symbol, price * 2 AS double_price, upper(symbol) AS s, volume % 7 AS bucket
         FROM trades WHERE volume > 500 AND price < 800.0",
        "",
        6_000,
        20,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vwap() {
    differential(VWAP, "", 20_000, 50).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ohlc_with_emit_on_window_close() {
    differential(OHLC, "EMIT ON WINDOW CLOSE", 20_000, 50).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tumble_with_offset_and_all_aggregates_and_having() {
    differential(
        "SELECT symbol, tumble(ts, INTERVAL '10' SECOND, INTERVAL '3' SECOND) AS w,
                COUNT(*) AS n, SUM(volume) AS v, MIN(price) AS lo, MAX(price) AS hi,
                AVG(price) AS mean, first_value(volume) AS first_v, last_value(volume) AS last_v
         FROM trades WHERE price > 50.0
         GROUP BY symbol, tumble(ts, INTERVAL '10' SECOND, INTERVAL '3' SECOND)
         HAVING COUNT(*) > 1",
        "EMIT FINAL",
        20_000,
        10,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn computed_group_key_runs_on_one_shard() {
    differential(
        "SELECT lower(symbol) AS k, COUNT(*) AS n, COUNT(DISTINCT volume % 10) AS buckets
         FROM trades GROUP BY lower(symbol), tumble(ts, INTERVAL '30' SECOND)",
        "",
        10_000,
        30,
    )
    .await;
}

/// A window aggregate with no key (or a computed one) runs in two phases:
/// each shard aggregates its own rows, and the states are merged per
/// window. Tumbling and sliding windows, every kind of state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn global_windows_merge_every_shards_partial_states() {
    let select = "COUNT(*) AS n, SUM(volume) AS v, MIN(price) AS lo, MAX(price) AS hi,
                  AVG(price) AS mean, COUNT(DISTINCT symbol) AS symbols,
                  COUNT(*) FILTER (WHERE volume > 500) AS big,
                  approx_distinct(volume) AS volumes, bool_and(volume > 2) AS all_above_2";
    differential(
        &format!(
            "SELECT CAST(tumble(ts, INTERVAL '1' SECOND) AS BIGINT) AS w, {select}
             FROM trades WHERE price > 20 GROUP BY tumble(ts, INTERVAL '1' SECOND)
             HAVING COUNT(*) > 3"
        ),
        "",
        10_000,
        30,
    )
    .await;
    differential_against(
        &format!(
            "SELECT slide(ts, INTERVAL '2' SECOND, INTERVAL '500' MILLISECOND) AS w, {select}
             FROM trades GROUP BY slide(ts, INTERVAL '2' SECOND, INTERVAL '500' MILLISECOND)"
        ),
        "",
        &format!(
            "SELECT w, {select} FROM ({}) AS copies WHERE w + 2000 > ts GROUP BY w",
            (0..4)
                .map(|i| format!(
                    "SELECT *, tumble(ts, 500, 0) - {} AS w FROM trades",
                    i * 500
                ))
                .collect::<Vec<_>>()
                .join(" UNION ALL ")
        ),
        6_000,
        30,
    )
    .await;
    // Plain COUNT/SUM/MIN/MAX/AVG: the partial stage keeps the fused
    // kernel's state, whose partial form the merge reads.
    differential(
        "SELECT COUNT(*) AS n, SUM(volume) AS v, MIN(price) AS lo, MAX(price) AS hi,
                AVG(price) AS mean
         FROM trades WHERE volume > 100 GROUP BY tumble(ts, INTERVAL '1' SECOND)",
        "",
        10_000,
        30,
    )
    .await;
    let db = laminar_db::LaminarDB::builder().shards(2).build().unwrap();
    db.execute(&format!(
        "{TRADES_DDL}; CREATE STREAM s AS SELECT COUNT(*) AS n FROM trades
         GROUP BY tumble(ts, INTERVAL '1' SECOND)"
    ))
    .await
    .unwrap();
    let plan = db.explain("s").unwrap();
    assert!(
        plan.contains("WindowAggregate(final)") && plan.contains("stream s_partial"),
        "{plan}"
    );
    // The suite also runs with the JIT off, when nothing is fused.
    if std::env::var("LAMINARDB_JIT").as_deref() != Ok("off") {
        let partial = db.explain("s_partial").unwrap();
        assert!(partial.to_lowercase().contains("fused"), "{partial}");
    }
}

/// `WITH (two_phase = 'on')`: keyed windows aggregate on every shard too,
/// and merge per window and key; `'off'` keeps a global window in one
/// phase.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyed_windows_in_two_phases_on_request() {
    let query = "SELECT symbol, COUNT(*) AS n, SUM(volume) AS v, MAX(price) AS hi,
                        COUNT(DISTINCT volume % 7) AS sevens
                 FROM trades WHERE price > 20 GROUP BY symbol, tumble(ts, INTERVAL '1' SECOND)
                 HAVING COUNT(*) > 1";
    for (seed, max_batch) in [(8u64, 1usize), (9, 57), (10, 4096)] {
        let n = if max_batch == 1 { 800 } else { 8_000 };
        let rows = trades(seed, n, 3, 4_000);
        let want = run_batch(query, "trades", vec![trades_batch(&rows)], trades_schema()).await;
        for shards in [1, 2] {
            let ddl = format!("{TRADES_DDL}; CREATE STREAM s WITH (two_phase = 'on') AS {query}");
            let batches = random_batches(&rows, seed * 47 + shards as u64, max_batch);
            let (got, metrics) = run_stream(&ddl, "trades", "s", batches, shards).await;
            assert_eq!(metrics.streams[0].late_rows, 0);
            assert_same_rows(&got, &want);
        }
    }
    let db = laminar_db::LaminarDB::builder().shards(2).build().unwrap();
    db.execute(TRADES_DDL).await.unwrap();
    db.execute(&format!(
        "CREATE STREAM s WITH (two_phase = 'on') AS {query};
         CREATE STREAM g WITH (two_phase = 'off') AS SELECT COUNT(*) AS n FROM trades
         GROUP BY tumble(ts, INTERVAL '1' SECOND)"
    ))
    .await
    .unwrap();
    assert!(db.explain("s").unwrap().contains("WindowAggregate(final)"));
    let plan = db.explain("g").unwrap();
    assert!(!plan.contains("final") && plan.contains("Single"), "{plan}");
    for (sql, says) in [
        (
            "CREATE STREAM x WITH (two_phase = 'on') AS SELECT symbol FROM trades",
            "LDB-1004",
        ),
        (
            "CREATE STREAM x WITH (two_phase = 'sometimes') AS SELECT symbol FROM trades",
            "two_phase = 'auto'",
        ),
        (
            "CREATE STREAM x WITH (two_phase = 'on', late_data = 'side_output') AS
             SELECT symbol, COUNT(*) AS n FROM trades GROUP BY symbol, tumble(ts, INTERVAL '1' SECOND)",
            "late_data",
        ),
    ] {
        let Err(error) = db.execute(sql).await else {
            panic!("{sql}: accepted");
        };
        assert!(error.to_string().contains(says), "{sql}: {error}");
    }
}

/// `COUNT(DISTINCT ...)` as the only aggregate of a window or a session
/// (a batch optimizer would move the window into a nested GROUP BY).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn count_distinct_alone_in_windows() {
    differential(
        "SELECT symbol, COUNT(DISTINCT volume % 10) AS buckets
         FROM trades GROUP BY symbol, tumble(ts, INTERVAL '30' SECOND)",
        "",
        10_000,
        30,
    )
    .await;
    differential_against(
        "SELECT symbol, session(ts, INTERVAL '300' MILLISECOND) AS session_start,
                COUNT(DISTINCT volume % 10) AS buckets
         FROM trades GROUP BY symbol, session(ts, INTERVAL '300' MILLISECOND)",
        "EMIT ON WINDOW CLOSE",
        &numbered_sessions(
            "",
            "MIN(ts) AS session_start, COUNT(DISTINCT volume % 10) AS buckets",
        ),
        4_000,
        20,
    )
    .await;
}

/// Rows whose window already closed are dropped and counted; the rest
/// match the batch query over exactly the rows that were on time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_rows_are_dropped_and_counted() {
    let bound_ms = 5_000;
    let size_ms = 60_000;
    let mut rows = trades(9, 30_000, 20, 2_000);
    // Every 50th row is sent 70 s into the past: its window has closed.
    for (i, row) in rows.iter_mut().enumerate() {
        if i % 50 == 49 {
            row.ts -= 70_000;
        }
    }
    // The engine's semantics, simulated row by row.
    let mut max_seen = i64::MIN;
    let mut on_time = Vec::new();
    let mut late = 0u64;
    for row in &rows {
        let watermark = max_seen.saturating_sub(bound_ms);
        let end = row.ts.div_euclid(size_ms) * size_ms + size_ms;
        if end <= watermark {
            late += 1;
        } else {
            on_time.push(row.clone());
        }
        max_seen = max_seen.max(row.ts);
    }
    assert!(late > 100);
    let want = run_batch(
        VWAP,
        "trades",
        vec![trades_batch(&on_time)],
        trades_schema(),
    )
    .await;
    for (shards, max_batch) in [(1, 1000), (2, 7), (2, 3000)] {
        let ddl = format!("{TRADES_DDL}; CREATE STREAM s AS {VWAP}");
        let (got, metrics) = run_stream(
            &ddl,
            "trades",
            "s",
            random_batches(&rows, 5, max_batch),
            shards,
        )
        .await;
        assert_eq!(
            metrics.streams[0].late_rows, late,
            "shards={shards} batch<={max_batch}"
        );
        assert_same_rows(&got, &want);
    }
}

/// Event time as TIMESTAMP: windows are TIMESTAMPs too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timestamp_event_time() {
    let schema = Arc::new(Schema::new(vec![
        Field::new("k", DataType::Int64, false),
        Field::new(
            "ts",
            DataType::Timestamp(TimeUnit::Millisecond, None),
            false,
        ),
    ]));
    let n = 5_000i64;
    let batch = RecordBatch::try_new(
        Arc::clone(&schema),
        vec![
            Arc::new(Int64Array::from_iter_values((0..n).map(|i| i % 13))),
            Arc::new(TimestampMillisecondArray::from_iter_values(
                (0..n).map(|i| 1_700_000_000_000 + i * 37 - (i % 5) * 20),
            )),
        ],
    )
    .unwrap();
    let query = "SELECT k, tumble(ts, INTERVAL '2' SECOND) AS w,
                        tumble_end(ts, INTERVAL '2' SECOND) AS e, COUNT(*) AS n, MAX(ts) AS last
                 FROM events GROUP BY k, tumble(ts, INTERVAL '2' SECOND)";
    let want = run_batch(query, "events", vec![batch.clone()], Arc::clone(&schema)).await;
    let ddl = format!(
        "CREATE SOURCE events (k BIGINT NOT NULL, ts TIMESTAMP NOT NULL,
            WATERMARK FOR ts AS ts - INTERVAL '100' MILLISECOND);
         CREATE STREAM s AS {query}"
    );
    let batches: Vec<RecordBatch> = (0..n as usize)
        .step_by(256)
        .map(|i| batch.slice(i, 256.min(n as usize - i)))
        .collect();
    let (got, metrics) = run_stream(&ddl, "events", "s", batches, 2).await;
    assert_eq!(metrics.streams[0].late_rows, 0);
    // The source is TIMESTAMP (nanoseconds); the pushed milliseconds were
    // converted, and windows come out in the source's type.
    assert_eq!(
        got[0].schema().field(1).data_type(),
        &DataType::Timestamp(TimeUnit::Nanosecond, None)
    );
    assert_eq!(
        got[0].schema().field(2).data_type(),
        got[0].schema().field(1).data_type()
    );
    assert_same_rows(&got, &want);
}

const SLIDING_SELECT: &str =
    "symbol, w, COUNT(*) AS n, SUM(volume) AS v, MIN(price) AS lo, MAX(price) AS hi";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sliding_windows() {
    differential_against(
        "SELECT symbol, slide(ts, INTERVAL '10' SECOND, INTERVAL '5' SECOND) AS w,
                COUNT(*) AS n, SUM(volume) AS v, MIN(price) AS lo, MAX(price) AS hi
         FROM trades GROUP BY symbol, slide(ts, INTERVAL '10' SECOND, INTERVAL '5' SECOND)",
        "EMIT ON WINDOW CLOSE",
        &sliding_oracle(SLIDING_SELECT, 10_000, 5_000, 0),
        10_000,
        20,
    )
    .await;
}

/// `hop` is `slide`; a size that is not a multiple of the slide, and an
/// offset.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hopping_windows_with_uneven_slide_and_offset() {
    differential_against(
        "SELECT symbol, hop(ts, INTERVAL '10' SECOND, INTERVAL '3' SECOND, INTERVAL '1' SECOND) AS w,
                COUNT(*) AS n, SUM(volume) AS v, MIN(price) AS lo, MAX(price) AS hi
         FROM trades
         GROUP BY symbol, hop(ts, INTERVAL '10' SECOND, INTERVAL '3' SECOND, INTERVAL '1' SECOND)",
        "",
        &sliding_oracle(SLIDING_SELECT, 10_000, 3_000, 1_000),
        10_000,
        20,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emit_changes_without_window_consolidates_to_the_batch_answer() {
    differential_against(
        "SELECT symbol, COUNT(*) AS n, SUM(volume) AS v, MAX(price) AS hi, AVG(price) AS mean
         FROM trades WHERE volume > 100 GROUP BY symbol HAVING COUNT(*) > 3",
        "EMIT CHANGES",
        "SELECT symbol, COUNT(*) AS n, SUM(volume) AS v, MAX(price) AS hi, AVG(price) AS mean
         FROM trades WHERE volume > 100 GROUP BY symbol HAVING COUNT(*) > 3",
        10_000,
        40,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emit_changes_with_windows_consolidates_to_the_batch_answer() {
    differential(OHLC, "EMIT CHANGES", 10_000, 30).await;
    differential_against(
        "SELECT symbol, slide(ts, INTERVAL '10' SECOND, INTERVAL '5' SECOND) AS w,
                COUNT(*) AS n, SUM(volume) AS v, MIN(price) AS lo, MAX(price) AS hi
         FROM trades GROUP BY symbol, slide(ts, INTERVAL '10' SECOND, INTERVAL '5' SECOND)",
        "EMIT CHANGES",
        &sliding_oracle(SLIDING_SELECT, 10_000, 5_000, 0),
        5_000,
        20,
    )
    .await;
}

/// A global aggregate (no key at all) runs on one shard.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emit_changes_global_aggregate() {
    differential(
        "SELECT COUNT(*) AS n, SUM(volume) AS v, COUNT(DISTINCT symbol) AS symbols FROM trades",
        "EMIT CHANGES",
        5_000,
        30,
    )
    .await;
}

/// Session windows against sessions numbered in batch SQL: a row more than
/// the gap after the previous row of its key starts a new session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_windows() {
    differential_against(
        "SELECT symbol, session(ts, INTERVAL '300' MILLISECOND) AS session_start,
                COUNT(*) AS n, SUM(volume) AS v, MAX(ts) AS last_ts, first_value(price) AS open
         FROM trades WHERE volume > 50
         GROUP BY symbol, session(ts, INTERVAL '300' MILLISECOND)",
        "EMIT ON WINDOW CLOSE",
        &numbered_sessions(
            "WHERE volume > 50",
            "MIN(ts) AS session_start, COUNT(*) AS n, SUM(volume) AS v, MAX(ts) AS last_ts, first_value(price ORDER BY ts) AS open",
        ),
        10_000,
        20,
    )
    .await;
}

/// Session windows whose aggregates fold into per-session accumulators as
/// rows arrive (merged when a row bridges two sessions); with the JIT on,
/// the `WHERE`, arguments and `FILTER` run as one fused kernel.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_windows_folded() {
    differential_against(
        "SELECT symbol, session(ts, INTERVAL '300' MILLISECOND) AS session_start,
                COUNT(*) AS n, SUM(volume) AS v, MIN(price) AS low, MAX(price) AS high,
                AVG(price) AS mean, SUM(price * 2.0) AS doubled,
                COUNT(*) FILTER (WHERE volume > 500) AS big
         FROM trades WHERE volume > 50
         GROUP BY symbol, session(ts, INTERVAL '300' MILLISECOND)",
        "EMIT ON WINDOW CLOSE",
        &numbered_sessions(
            "WHERE volume > 50",
            "MIN(ts) AS session_start, COUNT(*) AS n, SUM(volume) AS v, MIN(price) AS low, MAX(price) AS high, AVG(price) AS mean, SUM(price * 2.0) AS doubled, COUNT(*) FILTER (WHERE volume > 500) AS big",
        ),
        10_000,
        20,
    )
    .await;
}

/// Folded sessions as a changelog: a merge retracts the merged-away
/// session's row and re-emits the one it merged into.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_windows_folded_emit_changes() {
    differential_against(
        "SELECT symbol, session(ts, INTERVAL '300' MILLISECOND) AS session_start,
                COUNT(*) AS n, SUM(volume) AS v, MAX(price) AS high
         FROM trades GROUP BY symbol, session(ts, INTERVAL '300' MILLISECOND)",
        "EMIT CHANGES",
        &numbered_sessions(
            "",
            "MIN(ts) AS session_start, COUNT(*) AS n, SUM(volume) AS v, MAX(price) AS high",
        ),
        4_000,
        20,
    )
    .await;
}

/// Session windows with EMIT CHANGES: every batch re-emits the sessions it
/// changed (and retracts sessions merged away); consolidated, the
/// changelog equals the sessions of the batch query. (`first_value` keeps
/// the sessions' rows.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_windows_emit_changes() {
    differential_against(
        "SELECT symbol, session(ts, INTERVAL '300' MILLISECOND) AS session_start,
                COUNT(*) AS n, SUM(volume) AS v, MAX(ts) AS last_ts,
                first_value(price ORDER BY ts) AS open
         FROM trades GROUP BY symbol, session(ts, INTERVAL '300' MILLISECOND)",
        "EMIT CHANGES",
        &numbered_sessions(
            "",
            "MIN(ts) AS session_start, COUNT(*) AS n, SUM(volume) AS v, MAX(ts) AS last_ts, first_value(price ORDER BY ts) AS open",
        ),
        4_000,
        20,
    )
    .await;
}

/// Hand-computed: a row that lands between two sessions of its key merges
/// them; a row whose own session would already have closed is late.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_merge_and_late_rows() {
    let trade = |symbol: &str, ts: i64, volume: i64| Trade {
        symbol: symbol.into(),
        price: 1.0,
        volume,
        ts,
    };
    let ddl = format!(
        "{TRADES_DDL}; CREATE STREAM s AS
         SELECT symbol, session(ts, INTERVAL '600' MILLISECOND) AS start,
                COUNT(*) AS n, SUM(volume) AS v
         FROM trades GROUP BY symbol, session(ts, INTERVAL '600' MILLISECOND)"
    );
    let batches = vec![
        // A: two sessions [0, 600) and [1000, 1600); B: one.
        trades_batch(&[trade("A", 0, 1), trade("A", 1000, 2), trade("B", 50, 4)]),
        // 500 is within 600 of both A sessions: they merge.
        trades_batch(&[trade("A", 500, 8)]),
        // Pushes the watermark to 20000 - 5000: A and B close.
        trades_batch(&[trade("C", 20_000, 16)]),
        // Its session [100, 700) closed long ago: late.
        trades_batch(&[trade("A", 100, 32)]),
    ];
    for shards in [1, 2] {
        let (got, metrics) = run_stream(&ddl, "trades", "s", batches.clone(), shards).await;
        assert_eq!(metrics.streams[0].late_rows, 1);
        let want = run_batch(
            "SELECT * FROM (VALUES ('A', 0, 3, 11), ('B', 50, 1, 4), ('C', 20000, 1, 16))
               AS t(symbol, start, n, v)",
            "unused",
            vec![trades_batch(&[])],
            trades_schema(),
        )
        .await;
        assert_same_rows(&got, &want);
    }
}

/// The seed's cascading bars: 1-minute OHLC computed from 10-second OHLC
/// equals 1-minute OHLC computed from the trades. The downstream groups by
/// a column of the upstream's output, so it runs behind an exchange.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cascading_ohlc_from_finer_bars() {
    cascading_differential(
        "CREATE STREAM ohlc_10s AS
         SELECT symbol, tumble(ts, INTERVAL '10' SECOND) AS w,
                first_value(price) AS open, MAX(price) AS high, MIN(price) AS low,
                last_value(price) AS close, SUM(volume) AS volume
         FROM trades GROUP BY symbol, tumble(ts, INTERVAL '10' SECOND)",
        "SELECT symbol, CAST(tumble(w, INTERVAL '1' MINUTE) AS BIGINT) AS window_start,
                first_value(open) AS open, MAX(high) AS high, MIN(low) AS low,
                last_value(close) AS close, SUM(volume) AS volume
         FROM ohlc_10s GROUP BY symbol, tumble(w, INTERVAL '1' MINUTE)",
        "EMIT ON WINDOW CLOSE",
        OHLC,
        20_000,
        30,
    )
    .await;
}

/// A filter stream feeding a windowed aggregate keyed by a column.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cascading_aggregate_over_a_filter_stream() {
    cascading_differential(
        "CREATE STREAM big AS SELECT symbol, price, volume, ts FROM trades WHERE volume > 300",
        "SELECT symbol, COUNT(*) AS n, SUM(price) AS total FROM big
         GROUP BY symbol, tumble(ts, INTERVAL '30' SECOND)",
        "",
        "SELECT symbol, COUNT(*) AS n, SUM(price) AS total FROM trades WHERE volume > 300
         GROUP BY symbol, tumble(ts, INTERVAL '30' SECOND)",
        10_000,
        30,
    )
    .await;
}

/// Aggregates over an EMIT CHANGES stream take its retractions: the
/// consolidated totals equal the batch aggregate of the aggregate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cascading_sum_over_a_changelog() {
    let upstream = "CREATE STREAM per_symbol AS
         SELECT symbol, COUNT(*) AS n, SUM(volume) AS v FROM trades
         GROUP BY symbol EMIT CHANGES";
    cascading_differential(
        upstream,
        "SELECT COUNT(*) AS symbols, SUM(n) AS n, SUM(v) AS v, AVG(v) AS mean,
                AVG(n) FILTER (WHERE n > 100) AS busy_mean
         FROM per_symbol",
        "EMIT CHANGES",
        "SELECT COUNT(*) AS symbols, SUM(n) AS n, SUM(v) AS v, AVG(v) AS mean,
                AVG(n) FILTER (WHERE n > 100) AS busy_mean
         FROM (SELECT symbol, COUNT(*) AS n, SUM(volume) AS v FROM trades GROUP BY symbol)",
        5_000,
        30,
    )
    .await;
    // Re-keyed by a computed column of the changelog, with HAVING.
    cascading_differential(
        upstream,
        "SELECT n % 4 AS bucket, COUNT(*) AS symbols, SUM(v) AS v FROM per_symbol
         GROUP BY n % 4 HAVING COUNT(*) > 1",
        "EMIT CHANGES",
        "SELECT n % 4 AS bucket, COUNT(*) AS symbols, SUM(v) AS v FROM
           (SELECT symbol, COUNT(*) AS n, SUM(volume) AS v FROM trades GROUP BY symbol)
         GROUP BY n % 4 HAVING COUNT(*) > 1",
        5_000,
        30,
    )
    .await;
}

/// With `late_data = 'side_output'` the late rows come out, as pushed, on
/// the stream `<name>_late`; the stream itself is unchanged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_rows_go_to_the_side_output() {
    let mut rows = trades(19, 10_000, 10, 1_000);
    for (i, row) in rows.iter_mut().enumerate() {
        if i % 40 == 39 {
            row.ts -= 70_000;
        }
    }
    let (mut max_seen, mut on_time, mut late) = (i64::MIN, Vec::new(), Vec::new());
    for row in &rows {
        let end = row.ts.div_euclid(60_000) * 60_000 + 60_000;
        if end <= max_seen.saturating_sub(5_000) {
            late.push(row.clone());
        } else {
            on_time.push(row.clone());
        }
        max_seen = max_seen.max(row.ts);
    }
    assert!(late.len() > 50);
    for shards in [1, 2] {
        let db = laminar_db::LaminarDB::builder()
            .shards(shards)
            .build()
            .unwrap();
        db.execute(&format!(
            "{TRADES_DDL}; CREATE STREAM s WITH (late_data = 'side_output') AS {VWAP}"
        ))
        .await
        .unwrap();
        assert_eq!(db.streams(), ["s", "s_late"]);
        let collect = |mut sub: laminar_db::Subscription| {
            std::thread::spawn(move || {
                let mut got = Vec::new();
                while let Some(b) = sub.recv() {
                    got.push(b);
                }
                got
            })
        };
        let results = collect(db.subscribe("s").unwrap());
        let side = collect(db.subscribe("s_late").unwrap());
        let source = db.source_untyped("trades").unwrap();
        db.start().await.unwrap();
        for batch in random_batches(&rows, 7, 300) {
            source.push(batch).unwrap();
        }
        source.watermark(i64::MAX).unwrap();
        db.shutdown().await.unwrap();
        let want = run_batch(
            VWAP,
            "trades",
            vec![trades_batch(&on_time)],
            trades_schema(),
        )
        .await;
        assert_same_rows(&results.join().unwrap(), &want);
        assert_same_rows(&side.join().unwrap(), &[trades_batch(&late)]);
        assert_eq!(db.metrics().streams[0].late_rows, late.len() as u64);
    }
}

/// Flink's and RisingWave's window table functions, with `window_start`
/// and `window_end` columns, against the plain-SQL meaning.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn window_table_functions() {
    let tumbling_batch = "SELECT symbol, tumble(ts, INTERVAL '10' SECOND) AS window_start,
                tumble(ts, INTERVAL '10' SECOND) + 10000 AS window_end,
                COUNT(*) AS n, SUM(volume) AS v
         FROM trades GROUP BY symbol, tumble(ts, INTERVAL '10' SECOND)";
    differential_against(
        "SELECT symbol, window_start, window_end, COUNT(*) AS n, SUM(volume) AS v
         FROM TABLE(TUMBLE(TABLE trades, DESCRIPTOR(ts), INTERVAL '10' SECOND))
         GROUP BY symbol, window_start, window_end",
        "",
        tumbling_batch,
        5_000,
        20,
    )
    .await;
    differential_against(
        "SELECT t.symbol, t.window_start, t.window_end, COUNT(*) AS n, SUM(t.volume) AS v
         FROM TUMBLE(trades, ts, INTERVAL '10' SECOND) AS t
         GROUP BY t.symbol, t.window_start, t.window_end",
        "",
        tumbling_batch,
        5_000,
        20,
    )
    .await;
    // Flink's HOP takes the slide before the size.
    differential_against(
        "SELECT symbol, window_start AS w, window_end AS e, COUNT(*) AS n, SUM(volume) AS v,
                MIN(price) AS lo, MAX(price) AS hi
         FROM TABLE(HOP(TABLE trades, DESCRIPTOR(ts), INTERVAL '5' SECOND, INTERVAL '10' SECOND))
         GROUP BY symbol, window_start, window_end",
        "",
        &sliding_oracle(
            "symbol, w, w + 10000 AS e, COUNT(*) AS n, SUM(volume) AS v, MIN(price) AS lo, MAX(price) AS hi",
            10_000,
            5_000,
            0,
        ),
        5_000,
        20,
    )
    .await;
    differential_against(
        "SELECT symbol, window_start, window_end, COUNT(*) AS n
         FROM TABLE(SESSION(TABLE trades PARTITION BY symbol, DESCRIPTOR(ts), INTERVAL '300' MILLISECOND))
         GROUP BY symbol, window_start, window_end",
        "",
        &numbered_sessions(
            "",
            "MIN(ts) AS window_start, MAX(ts) + 300 AS window_end, COUNT(*) AS n",
        ),
        5_000,
        20,
    )
    .await;
    // Window bounds next to the GROUP BY form.
    differential_against(
        "SELECT symbol, tumble_start(ts, INTERVAL '10' SECOND) AS window_start,
                tumble_end(ts, INTERVAL '10' SECOND) AS window_end, COUNT(*) AS n, SUM(volume) AS v
         FROM trades GROUP BY symbol, tumble(ts, INTERVAL '10' SECOND)",
        "",
        tumbling_batch,
        5_000,
        20,
    )
    .await;
}

/// Streaming Top-N and deduplication: the consolidated changelog equals
/// the batch query's current top N per partition.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn top_n_and_deduplication() {
    for query in [
        // Top 3 prices per symbol (ts breaks ties, so the batch answer is unique).
        "SELECT symbol, price, volume, ts, rn FROM (
             SELECT *, ROW_NUMBER() OVER (PARTITION BY symbol ORDER BY price DESC, ts) AS rn
             FROM trades WHERE volume > 10)
         WHERE rn <= 3",
        // Latest trade per symbol (Nexmark q18's shape).
        "SELECT symbol, price, ts FROM (
             SELECT symbol, price, ts,
                    ROW_NUMBER() OVER (PARTITION BY symbol ORDER BY ts DESC) AS rn
             FROM trades)
         WHERE rn = 1",
        // First trade per symbol.
        "SELECT * FROM (
             SELECT *, ROW_NUMBER() OVER (PARTITION BY symbol ORDER BY ts) AS rn FROM trades)
         WHERE rn < 2",
        // Global top 5 by volume (one partition, on one shard).
        "SELECT symbol, volume, ts, rn FROM (
             SELECT *, ROW_NUMBER() OVER (ORDER BY volume DESC, ts DESC) AS rn FROM trades)
         WHERE rn <= 5",
    ] {
        differential(query, "EMIT CHANGES", 4_000, 20).await;
    }
}

/// ROW_NUMBER, RANK, DENSE_RANK and LAG over event time, emitted as rows
/// become final, against DataFusion's batch window functions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn window_functions_over_event_time() {
    differential(
        "SELECT symbol, ts, price,
                ROW_NUMBER() OVER (PARTITION BY symbol ORDER BY ts) AS rn,
                RANK() OVER (PARTITION BY symbol ORDER BY ts) AS rk,
                DENSE_RANK() OVER (PARTITION BY symbol ORDER BY ts) AS drk,
                LAG(price) OVER (PARTITION BY symbol ORDER BY ts) AS prev,
                price - LAG(price, 2, 0.0) OVER (PARTITION BY symbol ORDER BY ts) AS delta2,
                LEAD(volume) OVER (PARTITION BY symbol ORDER BY ts) AS next_volume,
                LEAD(ts, 3, -1) OVER (PARTITION BY symbol ORDER BY ts) AS third_next_ts
         FROM trades WHERE volume > 100",
        "",
        6_000,
        20,
    )
    .await;
    // One partition (on one shard), and a filter on the result.
    differential(
        "SELECT * FROM (
             SELECT symbol, ts, ROW_NUMBER() OVER (ORDER BY ts) AS n,
                    LAG(symbol, 3) OVER (ORDER BY ts) AS three_back,
                    LEAD(symbol, 2) OVER (ORDER BY ts) AS two_ahead
             FROM trades)
         WHERE n % 10 = 0",
        "",
        3_000,
        20,
    )
    .await;
}

/// Equal event times share a RANK / DENSE_RANK.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ranks_with_ties() {
    let schema = trades_schema();
    let mut rows = trades(5, 3_000, 5, 2_000);
    for row in &mut rows {
        row.ts -= row.ts % 100;
    }
    let query = "SELECT symbol, ts, RANK() OVER (PARTITION BY symbol ORDER BY ts) AS rk,
                        DENSE_RANK() OVER (PARTITION BY symbol ORDER BY ts) AS drk
                 FROM trades";
    let want = run_batch(query, "trades", vec![trades_batch(&rows)], schema).await;
    for shards in [1, 2] {
        let (got, _) = run_stream(
            &format!("{TRADES_DDL}; CREATE STREAM s AS {query}"),
            "trades",
            "s",
            random_batches(&rows, 3, 200),
            shards,
        )
        .await;
        assert_same_rows(&got, &want);
    }
}

/// DataFusion's scalar functions work in streams as in batch queries:
/// date/time, strings, regular expressions, arrays, structs, maths.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn datafusion_scalar_functions() {
    differential(
        "SELECT symbol,
                date_trunc('minute', to_timestamp_millis(ts)) AS minute,
                date_bin(INTERVAL '15 seconds', to_timestamp_millis(ts)) AS bin,
                concat_ws('-', symbol, CAST(volume AS VARCHAR)) AS label,
                regexp_replace(symbol, '[0-9]+', '#') AS masked,
                regexp_replace(symbol, '([A-Z])0*([0-9])', '\\2\\1', 'g') AS swapped,
                regexp_count(symbol, '0') AS zeros,
                replace(symbol, '0', '') AS no_zeros,
                CASE WHEN symbol = 'S001' THEN 'one' WHEN symbol = 'S002' THEN 'two'
                     ELSE lower(symbol) END AS named,
                make_array(price, price * 2) AS pair,
                array_length(make_array(volume, volume, volume)) AS three,
                named_struct('p', price, 'v', volume)['v'] AS v_from_struct,
                round(ln(price), 3) AS log_price,
                CASE WHEN volume > 500 THEN 'big' ELSE 'small' END AS size,
                md5(symbol) AS digest
         FROM trades WHERE starts_with(symbol, 'S0')",
        "",
        4_000,
        20,
    )
    .await;
}

/// A costly expression in both the `WHERE` and the `SELECT` is evaluated
/// once, ahead of the filter (through a `CASE` branch, a function's
/// argument and DataFusion's own common-subexpression projection), with
/// the same answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expressions_shared_by_where_and_select() {
    differential(
        "SELECT symbol, volume,
                CASE WHEN volume > 500 THEN 'big'
                     ELSE regexp_match(symbol, 'S0*([1-9][0-9]*)')[1] END AS num,
                upper(concat(lower(symbol), '-x')) AS shout,
                concat(lower(symbol), '-x') AS quiet,
                lower(symbol) = 's007' AS seven
         FROM trades
         WHERE length(concat(lower(symbol), '-x')) + length(regexp_match(symbol, 'S0*([1-9][0-9]*)')[1]) > 6
            OR price < 20.0",
        "",
        4_000,
        20,
    )
    .await;
}

/// Statistical aggregates in windows; approximate percentiles agree with
/// the exact median within their error (t-digest's result depends on how
/// rows were batched, so it is not compared exactly).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approximate_and_statistical_aggregates() {
    differential(
        "SELECT symbol, tumble(ts, INTERVAL '20' SECOND) AS w,
                approx_distinct(volume) AS distinct_volumes,
                stddev(price) AS sd, var_pop(price) AS var,
                bool_and(volume > 0) AS all_positive,
                array_agg(volume ORDER BY ts) AS volumes
         FROM trades GROUP BY symbol, tumble(ts, INTERVAL '20' SECOND)",
        "",
        6_000,
        10,
    )
    .await;

    use datafusion::arrow::array::{Float64Array, Int64Array, StringArray};
    use std::collections::HashMap;
    let rows = trades(8, 20_000, 5, 2_000);
    let by_key = |batches: &[RecordBatch]| -> HashMap<(String, i64), f64> {
        let mut map = HashMap::new();
        for b in batches {
            let s = b.column(0).as_any().downcast_ref::<StringArray>().unwrap();
            let w = b.column(1).as_any().downcast_ref::<Int64Array>().unwrap();
            let m = b.column(2).as_any().downcast_ref::<Float64Array>().unwrap();
            for i in 0..b.num_rows() {
                map.insert((s.value(i).to_string(), w.value(i)), m.value(i));
            }
        }
        map
    };
    let exact = by_key(
        &run_batch(
            "SELECT symbol, tumble(ts, INTERVAL '30' SECOND) AS w, median(price) AS m
             FROM trades GROUP BY symbol, tumble(ts, INTERVAL '30' SECOND)",
            "trades",
            vec![trades_batch(&rows)],
            trades_schema(),
        )
        .await,
    );
    let (got, _) = run_stream(
        &format!(
            "{TRADES_DDL}; CREATE STREAM s AS
             SELECT symbol, tumble(ts, INTERVAL '30' SECOND) AS w,
                    approx_percentile_cont(price, 0.5) AS m
             FROM trades GROUP BY symbol, tumble(ts, INTERVAL '30' SECOND)"
        ),
        "trades",
        "s",
        random_batches(&rows, 8, 500),
        2,
    )
    .await;
    let approximate = by_key(&got);
    assert_eq!(approximate.len(), exact.len());
    for (key, m) in &exact {
        let a = approximate[key];
        assert!(
            (a - m).abs() <= 0.05 * m,
            "{key:?}: approx {a} vs median {m}"
        );
    }
}

/// UNNEST of a list column in a stream, alone and under a window
/// aggregate; a NULL list keeps one NULL row, as in DataFusion.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unnest_in_streams() {
    differential(
        "SELECT symbol, ts,
                unnest(CASE WHEN volume > 900 THEN NULL
                            ELSE make_array(price, price * 2, CAST(volume AS DOUBLE)) END) AS x
         FROM trades WHERE volume > 500",
        "",
        3_000,
        20,
    )
    .await;
    differential(
        "SELECT symbol, COUNT(*) AS n, SUM(x) AS total FROM (
             SELECT symbol, ts, unnest(make_array(volume, volume * 2)) AS x FROM trades)
         GROUP BY symbol, tumble(ts, INTERVAL '10' SECOND)",
        "",
        5_000,
        20,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_aggregates_over_event_time() {
    // The default frame (RANGE UNBOUNDED PRECEDING to CURRENT ROW):
    // rows of equal event time share the value.
    let query = "SELECT symbol, ts, price,
            SUM(volume) OVER (PARTITION BY symbol ORDER BY ts) AS volume_so_far,
            COUNT(*) OVER (PARTITION BY symbol ORDER BY ts) AS trades_so_far,
            MIN(price) OVER (PARTITION BY symbol ORDER BY ts) AS low,
            MAX(price) OVER (PARTITION BY symbol ORDER BY ts) AS high,
            AVG(price) OVER (PARTITION BY symbol ORDER BY ts) AS mean,
            price - AVG(price) OVER (PARTITION BY symbol ORDER BY ts) AS above_mean
         FROM trades WHERE volume > 100";
    differential(query, "", 6_000, 20).await;

    // Many ties: peers share one value.
    let schema = trades_schema();
    let mut rows = trades(6, 3_000, 5, 2_000);
    for row in &mut rows {
        row.ts -= row.ts % 100;
    }
    let ties = "SELECT symbol, ts, SUM(volume) OVER (PARTITION BY symbol ORDER BY ts) AS v,
                       COUNT(volume) OVER (PARTITION BY symbol ORDER BY ts) AS n
                FROM trades";
    let want = run_batch(
        ties,
        "trades",
        vec![trades_batch(&rows)],
        Arc::clone(&schema),
    )
    .await;
    for shards in [1, 2] {
        let (got, _) = run_stream(
            &format!("{TRADES_DDL}; CREATE STREAM s AS {ties}"),
            "trades",
            "s",
            random_batches(&rows, 4, 200),
            shards,
        )
        .await;
        assert_same_rows(&got, &want);
    }

    // ROWS frames: each row its own value (distinct event times here, so
    // the answer does not depend on how ties are ordered).
    let mut rows = trades(7, 2_000, 5, 0);
    for (i, row) in rows.iter_mut().enumerate() {
        row.ts = 1_000 + i as i64 * 3;
    }
    let framed = "SELECT symbol, ts,
            SUM(price) OVER (PARTITION BY symbol ORDER BY ts
                             ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS notional,
            MAX(volume) OVER (PARTITION BY symbol ORDER BY ts
                              ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS biggest
         FROM trades";
    let want = run_batch(framed, "trades", vec![trades_batch(&rows)], schema).await;
    for shards in [1, 2] {
        let (got, _) = run_stream(
            &format!("{TRADES_DDL}; CREATE STREAM s AS {framed}"),
            "trades",
            "s",
            random_batches(&rows, 5, 300),
            shards,
        )
        .await;
        assert_same_rows(&got, &want);
    }

    // Frames over the last rows (moving aggregates), NULL arguments
    // counted as rows; distinct event times again.
    let moving = "SELECT symbol, ts,
            AVG(price) OVER (PARTITION BY symbol ORDER BY ts
                             ROWS BETWEEN 4 PRECEDING AND CURRENT ROW) AS mean5,
            SUM(CASE WHEN volume > 300 THEN volume END) OVER (PARTITION BY symbol ORDER BY ts
                             ROWS BETWEEN 2 PRECEDING AND CURRENT ROW) AS big3,
            COUNT(CASE WHEN volume > 300 THEN price END) OVER (PARTITION BY symbol ORDER BY ts
                             ROWS BETWEEN 9 PRECEDING AND CURRENT ROW) AS big_of_10,
            MIN(price) OVER (PARTITION BY symbol ORDER BY ts
                             ROWS BETWEEN 3 PRECEDING AND CURRENT ROW) AS low4,
            MAX(CASE WHEN volume > 700 THEN volume END) OVER (PARTITION BY symbol ORDER BY ts
                             ROWS BETWEEN 5 PRECEDING AND CURRENT ROW) AS high6,
            SUM(price) OVER (PARTITION BY symbol ORDER BY ts
                             ROWS BETWEEN CURRENT ROW AND CURRENT ROW) AS itself
         FROM trades WHERE volume > 50";
    let want = run_batch(moving, "trades", vec![trades_batch(&rows)], trades_schema()).await;
    for shards in [1, 2] {
        let (got, _) = run_stream(
            &format!("{TRADES_DDL}; CREATE STREAM s AS {moving}"),
            "trades",
            "s",
            random_batches(&rows, 6, 300),
            shards,
        )
        .await;
        assert_same_rows(&got, &want);
    }

    // Frames over the last stretch of event time (BIGINT ms here), with
    // ties: peers share a value, as in the default frame.
    let mut rows = trades(8, 3_000, 5, 1_000);
    for row in &mut rows {
        row.ts -= row.ts % 20;
    }
    let stretch = "SELECT symbol, ts,
            SUM(volume) OVER (PARTITION BY symbol ORDER BY ts
                              RANGE BETWEEN 500 PRECEDING AND CURRENT ROW) AS volume_500ms,
            AVG(price) OVER (PARTITION BY symbol ORDER BY ts
                             RANGE BETWEEN 200 PRECEDING AND CURRENT ROW) AS mean_200ms,
            COUNT(*) OVER (PARTITION BY symbol ORDER BY ts
                           RANGE BETWEEN 1000 PRECEDING AND CURRENT ROW) AS trades_1s,
            MIN(price) OVER (PARTITION BY symbol ORDER BY ts
                             RANGE BETWEEN 300 PRECEDING AND CURRENT ROW) AS low_300ms,
            MAX(CASE WHEN volume > 500 THEN volume END) OVER (PARTITION BY symbol ORDER BY ts
                             RANGE BETWEEN 100 PRECEDING AND CURRENT ROW) AS high_100ms,
            SUM(volume) OVER (PARTITION BY symbol ORDER BY ts
                              RANGE BETWEEN CURRENT ROW AND CURRENT ROW) AS same_ms
         FROM trades";
    let want = run_batch(
        stretch,
        "trades",
        vec![trades_batch(&rows)],
        trades_schema(),
    )
    .await;
    for shards in [1, 2] {
        let (got, _) = run_stream(
            &format!("{TRADES_DDL}; CREATE STREAM s AS {stretch}"),
            "trades",
            "s",
            random_batches(&rows, 7, 250),
            shards,
        )
        .await;
        assert_same_rows(&got, &want);
    }

    // Frames that would need rows after the current one cannot stream.
    let db = laminar_db::LaminarDB::open().unwrap();
    db.execute(TRADES_DDL).await.unwrap();
    let error = db
        .execute(
            "CREATE STREAM s AS SELECT SUM(volume) OVER (PARTITION BY symbol ORDER BY ts
               ROWS BETWEEN UNBOUNDED PRECEDING AND 1 FOLLOWING) AS v FROM trades",
        )
        .await
        .unwrap_err();
    assert_eq!(error.code(), laminar_db::ErrorCode::Unsupported, "{error}");
}

/// Event times finer than a millisecond order the rows of window
/// functions as the batch engine orders them: several rows per ms, in
/// disorder, with exact ties only where the answer does not depend on
/// how ties are ordered (`RANK`, peers of a `RANGE` frame).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn window_functions_order_rows_within_a_millisecond() {
    use datafusion::arrow::array::{StringArray, TimestampNanosecondArray};
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    let ddl = "CREATE SOURCE ticks (k VARCHAR NOT NULL, v BIGINT NOT NULL, ts TIMESTAMP NOT NULL,
               WATERMARK FOR ts AS ts - INTERVAL '50' MILLISECOND)";
    let schema = Arc::new(Schema::new(vec![
        Field::new("k", DataType::Utf8, false),
        Field::new("v", DataType::Int64, false),
        Field::new("ts", DataType::Timestamp(TimeUnit::Nanosecond, None), false),
    ]));
    // 3,000 rows over about 300 ms: ten per ms, shuffled in blocks of 20 ms.
    let rows = |ties: bool| -> Vec<(String, i64, i64)> {
        let mut rng = StdRng::seed_from_u64(if ties { 12 } else { 11 });
        let mut rows: Vec<(String, i64, i64)> = (0..3_000i64)
            .map(|i| {
                let ns = if ties { (i / 4) * 250_000 } else { i * 97_003 };
                let k = format!("k{}", rng.random_range(0..4));
                (k, rng.random_range(-50..50), 1_700_000_000_000_000_000 + ns)
            })
            .collect();
        for block in rows.chunks_mut(200) {
            for i in (1..block.len()).rev() {
                block.swap(i, rng.random_range(0..=i));
            }
        }
        rows
    };
    let batches = |rows: &[(String, i64, i64)], max: usize| -> Vec<RecordBatch> {
        let mut rng = StdRng::seed_from_u64(max as u64);
        let mut out = Vec::new();
        let mut at = 0;
        while at < rows.len() {
            let n = rng.random_range(1..=max).min(rows.len() - at);
            let part = &rows[at..at + n];
            out.push(
                RecordBatch::try_new(
                    Arc::clone(&schema),
                    vec![
                        Arc::new(StringArray::from_iter_values(
                            part.iter().map(|r| r.0.as_str()),
                        )),
                        Arc::new(Int64Array::from_iter_values(part.iter().map(|r| r.1))),
                        Arc::new(TimestampNanosecondArray::from_iter_values(
                            part.iter().map(|r| r.2),
                        )),
                    ],
                )
                .unwrap(),
            );
            at += n;
        }
        out
    };
    let ordered = "SELECT k, ts, v,
            ROW_NUMBER() OVER (PARTITION BY k ORDER BY ts) AS rn,
            LAG(v) OVER (PARTITION BY k ORDER BY ts) AS prev,
            SUM(v) OVER (PARTITION BY k ORDER BY ts ROWS BETWEEN 3 PRECEDING AND CURRENT ROW) AS last4,
            COUNT(v) OVER (PARTITION BY k ORDER BY ts
                           RANGE BETWEEN INTERVAL '333' MICROSECOND PRECEDING AND CURRENT ROW) AS recent,
            AVG(v) OVER (PARTITION BY k ORDER BY ts) AS mean
         FROM ticks";
    let tied = "SELECT k, ts, v,
            RANK() OVER (PARTITION BY k ORDER BY ts) AS rk,
            DENSE_RANK() OVER (PARTITION BY k ORDER BY ts) AS drk,
            SUM(v) OVER (PARTITION BY k ORDER BY ts) AS so_far,
            SUM(v) OVER (PARTITION BY k ORDER BY ts
                         RANGE BETWEEN INTERVAL '2' MILLISECOND PRECEDING AND CURRENT ROW) AS last_2ms,
            MAX(v) OVER (PARTITION BY k ORDER BY ts
                         RANGE BETWEEN INTERVAL '1500' MICROSECOND PRECEDING AND CURRENT ROW) AS high
         FROM ticks";
    for (query, ties) in [(ordered, false), (tied, true)] {
        let rows = rows(ties);
        let want = run_batch(query, "ticks", batches(&rows, 10_000), Arc::clone(&schema)).await;
        for shards in [1, 2] {
            let (got, _) = run_stream(
                &format!("{ddl}; CREATE STREAM s AS {query}"),
                "ticks",
                "s",
                batches(&rows, 150),
                shards,
            )
            .await;
            assert_same_rows(&got, &want);
        }
    }
}

/// A `RANGE` frame's length that is not a whole number of the column's
/// ticks reaches back as the batch engine's does (it subtracts the length
/// and floors to the column's unit): 1.5 ms over a `TIMESTAMP(3)` takes
/// rows 2 ms back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn range_frames_round_like_the_batch_engine() {
    use datafusion::arrow::array::StringArray;

    let ddl =
        "CREATE SOURCE marks (k VARCHAR NOT NULL, v BIGINT NOT NULL, ts TIMESTAMP(3) NOT NULL,
               WATERMARK FOR ts AS ts - INTERVAL '5' MILLISECOND)";
    let schema = Arc::new(Schema::new(vec![
        Field::new("k", DataType::Utf8, false),
        Field::new("v", DataType::Int64, false),
        Field::new(
            "ts",
            DataType::Timestamp(TimeUnit::Millisecond, None),
            false,
        ),
    ]));
    let n = 200i64;
    let batch = RecordBatch::try_new(
        Arc::clone(&schema),
        vec![
            Arc::new(StringArray::from_iter_values(
                (0..n).map(|i| format!("k{}", i % 2)),
            )),
            Arc::new(Int64Array::from_iter_values((0..n).map(|i| i * i % 17))),
            Arc::new(TimestampMillisecondArray::from_iter_values(
                (0..n).map(|i| 1_700_000_000_000 + i / 2),
            )),
        ],
    )
    .unwrap();
    let query = "SELECT k, ts, v,
            SUM(v) OVER (PARTITION BY k ORDER BY ts
                         RANGE BETWEEN INTERVAL '1500' MICROSECOND PRECEDING AND CURRENT ROW) AS s,
            COUNT(v) OVER (PARTITION BY k ORDER BY ts
                           RANGE BETWEEN INTERVAL '100' MICROSECOND PRECEDING AND CURRENT ROW) AS c
         FROM marks";
    let want = run_batch(query, "marks", vec![batch.clone()], Arc::clone(&schema)).await;
    let batches: Vec<RecordBatch> = (0..n as usize)
        .step_by(30)
        .map(|at| batch.slice(at, 30.min(n as usize - at)))
        .collect();
    let (got, _) = run_stream(
        &format!("{ddl}; CREATE STREAM s AS {query}"),
        "marks",
        "s",
        batches,
        1,
    )
    .await;
    assert_same_rows(&got, &want);
}

/// MIN and MAX over a changelog: a value retracted upstream stops
/// counting, so the extreme moves back when the row that held it goes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn min_and_max_over_a_changelog() {
    let upstream = "CREATE STREAM per_symbol AS
         SELECT symbol, COUNT(*) AS n, SUM(volume) AS v, MAX(price) AS high FROM trades
         GROUP BY symbol EMIT CHANGES";
    let per_symbol = "(SELECT symbol, COUNT(*) AS n, SUM(volume) AS v, MAX(price) AS high
                       FROM trades GROUP BY symbol)";
    cascading_differential(
        upstream,
        "SELECT MIN(v) AS least, MAX(v) AS most, MIN(high) AS lowest_high,
                MAX(n) FILTER (WHERE v > 1000) AS busiest
         FROM per_symbol",
        "EMIT CHANGES",
        &format!(
            "SELECT MIN(v) AS least, MAX(v) AS most, MIN(high) AS lowest_high,
                    MAX(n) FILTER (WHERE v > 1000) AS busiest
             FROM {per_symbol}"
        ),
        5_000,
        30,
    )
    .await;
    // Grouped, re-keyed through an exchange.
    cascading_differential(
        upstream,
        "SELECT n % 3 AS bucket, MIN(symbol) AS first_symbol, MAX(high) AS high
         FROM per_symbol GROUP BY n % 3",
        "EMIT CHANGES",
        &format!(
            "SELECT n % 3 AS bucket, MIN(symbol) AS first_symbol, MAX(high) AS high
             FROM {per_symbol} GROUP BY n % 3"
        ),
        5_000,
        30,
    )
    .await;
}

/// JSON in a VARCHAR column: `json_get_*`, `json_contains`, `->>`, in
/// filters, projections and group keys, against the batch answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_functions_in_streams() {
    use datafusion::arrow::array::StringArray;
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("payload", DataType::Utf8, true),
        Field::new("ts", DataType::Int64, false),
    ]));
    let n = 2_000i64;
    let payloads: Vec<Option<String>> = (0..n)
        .map(|i| match i % 7 {
            0 => None,
            1 => Some("not json".to_string()),
            2 => Some(format!(r#"{{"side":"sell","qty":{i}}}"#)),
            _ => Some(format!(
                r#"{{"side":"buy","qty":{},"px":{}.5,"tags":["a","b"],"desk":{{"name":"d{}"}}}}"#,
                i % 50,
                i % 13,
                i % 3
            )),
        })
        .collect();
    let rows = RecordBatch::try_new(
        Arc::clone(&schema),
        vec![
            Arc::new(Int64Array::from_iter_values(0..n)),
            Arc::new(StringArray::from(payloads)),
            Arc::new(Int64Array::from_iter_values((0..n).map(|i| i * 10))),
        ],
    )
    .unwrap();
    let ddl = "CREATE SOURCE events (id BIGINT NOT NULL, payload VARCHAR, ts BIGINT NOT NULL,
                 WATERMARK FOR ts AS ts - INTERVAL '1' SECOND)";
    for query in [
        "SELECT id, json_get_str(payload, 'side') AS side, json_get_int(payload, 'qty') AS qty,
                json_get_float(payload, 'px') AS px, payload->>'side' AS side_text,
                json_get_str(payload, 'desk', 'name') AS desk, json_length(payload, 'tags') AS tags
         FROM events WHERE json_contains(payload, 'qty')",
        "SELECT json_get_str(payload, 'side') AS side, COUNT(*) AS n,
                SUM(json_get_int(payload, 'qty')) AS qty
         FROM events WHERE payload IS NOT NULL
         GROUP BY json_get_str(payload, 'side'), tumble(ts, INTERVAL '5' SECOND)",
    ] {
        let want = run_batch(query, "events", vec![rows.clone()], Arc::clone(&schema)).await;
        assert!(row_count(&want) > 0);
        for shards in [1, 2] {
            let batches = (0..n as usize)
                .step_by(97)
                .map(|at| rows.slice(at, 97.min(n as usize - at)))
                .collect();
            let (got, _) = run_stream(
                &format!("{ddl}; CREATE STREAM s AS {query}"),
                "events",
                "s",
                batches,
                shards,
            )
            .await;
            assert_same_rows(&got, &want);
        }
    }
}

/// `GROUP BY symbol, ts` without a window: each (symbol, instant) group
/// is emitted once the watermark passes its time, and a window function
/// may read the result (it is append-only), as Nexmark q6 does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grouping_by_event_time_closes_each_instant() {
    let per_instant = "SELECT symbol, ts, COUNT(*) AS n, SUM(volume) AS v, MAX(price) AS hi,
                              first_value(price) AS first_price
                       FROM trades WHERE volume > 50 GROUP BY symbol, ts";
    // Over the groups: each symbol's average high of its last 4 instants.
    let moving = format!(
        "SELECT symbol, ts, n, AVG(hi) OVER (PARTITION BY symbol ORDER BY ts
                                             ROWS BETWEEN 3 PRECEDING AND CURRENT ROW) AS avg_hi
         FROM ({per_instant}) AS g"
    );
    for (seed, max_batch) in [(1u64, 1usize), (2, 17), (3, 500), (4, 4096)] {
        let n = if max_batch == 1 { 600 } else { 6_000 };
        // About ten trades share each 70 ms instant, within the 5 s bound.
        let mut rows = trades(seed, n, 8, 4_000);
        for row in &mut rows {
            row.ts -= row.ts % 70;
        }
        // first_value takes the first row to arrive: only one per group.
        let firsts = "SELECT symbol, ts, COUNT(*) AS n, SUM(volume) AS v, MAX(price) AS hi,
                             MIN(price) AS first_price
                      FROM trades WHERE volume > 50 GROUP BY symbol, ts HAVING COUNT(*) = 1";
        let want_groups = run_batch(
            per_instant,
            "trades",
            vec![trades_batch(&rows)],
            trades_schema(),
        )
        .await;
        assert!(row_count(&want_groups) > n / 20);
        let want_moving = run_batch(
            &moving,
            "trades",
            vec![trades_batch(&rows)],
            trades_schema(),
        )
        .await;
        let want_firsts =
            run_batch(firsts, "trades", vec![trades_batch(&rows)], trades_schema()).await;
        // DISTINCT over the event time is such a GROUP BY, without aggregates.
        let distinct = "SELECT DISTINCT symbol, ts FROM trades WHERE volume > 500";
        let want_distinct = run_batch(
            distinct,
            "trades",
            vec![trades_batch(&rows)],
            trades_schema(),
        )
        .await;
        for shards in [1, 2] {
            for emit in ["", "EMIT ON WINDOW CLOSE"] {
                let ddl = format!("{TRADES_DDL}; CREATE STREAM s AS {per_instant} {emit}");
                let batches = random_batches(&rows, seed * 31 + shards as u64, max_batch);
                let (got, metrics) = run_stream(&ddl, "trades", "s", batches, shards).await;
                assert_eq!(metrics.streams[0].late_rows, 0);
                // first_value depends on arrival order unless a group has one row.
                assert_same_rows(
                    &drop_column(&got, "first_price"),
                    &drop_column(&want_groups, "first_price"),
                );
                let single = filter_rows(&got, |batch, i| {
                    let n = batch.column_by_name("n").unwrap();
                    n.as_any().downcast_ref::<Int64Array>().unwrap().value(i) == 1
                });
                assert_same_rows(&single, &want_firsts);
            }
            let ddl = format!("{TRADES_DDL}; CREATE STREAM s AS {moving}");
            let batches = random_batches(&rows, seed * 37 + shards as u64, max_batch);
            let (got, _) = run_stream(&ddl, "trades", "s", batches, shards).await;
            assert_same_rows(&got, &want_moving);
            let ddl = format!("{TRADES_DDL}; CREATE STREAM s AS {distinct}");
            let batches = random_batches(&rows, seed * 43 + shards as u64, max_batch);
            let (got, _) = run_stream(&ddl, "trades", "s", batches, shards).await;
            assert_same_rows(&got, &want_distinct);
        }
    }
}

/// Further ORDER BY keys order rows of equal event time, as the batch
/// engine does (rows equal in every key are equal in every column here,
/// so their order does not show).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn window_functions_break_ties_by_further_keys() {
    let offsets = "SELECT symbol, ts, volume, price,
                          ROW_NUMBER() OVER w AS rn,
                          LAG(price) OVER w AS prev,
                          LEAD(volume, 2) OVER w AS next2
                   FROM trades
                   WINDOW w AS (PARTITION BY symbol ORDER BY ts, volume DESC, price)";
    let sums = "SELECT symbol, ts, volume, price,
                       SUM(volume) OVER (PARTITION BY symbol ORDER BY ts, volume DESC, price
                                         ROWS BETWEEN 2 PRECEDING AND CURRENT ROW) AS last3,
                       AVG(price) OVER (PARTITION BY symbol ORDER BY ts, volume DESC, price
                                        ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS mean
                FROM trades";
    for (seed, max_batch) in [(5u64, 1usize), (6, 33), (7, 4096)] {
        let n = if max_batch == 1 { 500 } else { 5_000 };
        let mut rows = trades(seed, n, 4, 4_000);
        for row in &mut rows {
            row.ts -= row.ts % 70;
            row.volume %= 7;
        }
        for query in [offsets, sums] {
            let want = run_batch(query, "trades", vec![trades_batch(&rows)], trades_schema()).await;
            for shards in [1, 2] {
                let ddl = format!("{TRADES_DDL}; CREATE STREAM s AS {query}");
                let batches = random_batches(&rows, seed * 41 + shards as u64, max_batch);
                let (got, metrics) = run_stream(&ddl, "trades", "s", batches, shards).await;
                assert_eq!(metrics.streams[0].late_rows, 0);
                assert_same_rows(&got, &want);
            }
        }
    }
}

/// What grouping by event time and tie-breaking keys do not take.
#[tokio::test]
async fn event_time_groups_and_tie_breaks_refuse_what_they_cannot_do() {
    let cases = [
        // No window and no event-time key: it never closes.
        ("SELECT symbol, COUNT(*) AS n FROM trades GROUP BY symbol", "never closes"),
        ("SELECT volume, COUNT(*) AS n FROM trades GROUP BY volume", "never closes"),
        // Peers are rows equal in every ORDER BY key.
        (
            "SELECT symbol, RANK() OVER (PARTITION BY symbol ORDER BY ts, price) AS r FROM trades",
            "RANK, DENSE_RANK and RANGE frames",
        ),
        (
            "SELECT symbol, SUM(volume) OVER (PARTITION BY symbol ORDER BY ts, price) AS v FROM trades",
            "RANK, DENSE_RANK and RANGE frames",
        ),
    ];
    for (query, says) in cases {
        let db = laminar_db::LaminarDB::builder().shards(1).build().unwrap();
        db.execute(TRADES_DDL).await.unwrap();
        let Err(error) = db.execute(&format!("CREATE STREAM s AS {query}")).await else {
            panic!("{query}: accepted");
        };
        let error = error.to_string();
        assert!(
            error.contains("LDB-1004") && error.contains(says),
            "{query}: {error}"
        );
    }
    // A changelog's rows for a time change after the watermark passed it
    // (a window's start, while the window is open): grouping by it does
    // not close, nor does grouping by a computed time.
    let db = laminar_db::LaminarDB::builder().shards(1).build().unwrap();
    db.execute(&format!(
        "{TRADES_DDL}; CREATE STREAM bars AS SELECT symbol, window_start, MAX(price) AS high
         FROM TABLE(TUMBLE(TABLE trades, DESCRIPTOR(ts), INTERVAL '1' SECOND))
         GROUP BY symbol, window_start, window_end EMIT CHANGES"
    ))
    .await
    .unwrap();
    for query in [
        "SELECT window_start, SUM(high) AS highs FROM bars GROUP BY window_start",
        "SELECT symbol, CAST(ts AS BIGINT) + 1 AS t, COUNT(*) AS n FROM trades GROUP BY symbol, CAST(ts AS BIGINT) + 1",
    ] {
        let Err(error) = db.execute(&format!("CREATE STREAM s AS {query}")).await else {
            panic!("{query}: accepted");
        };
        assert!(error.to_string().contains("never closes"), "{query}: {error}");
    }
    // With EMIT CHANGES, a GROUP BY on the event time stays a changelog.
    let db = laminar_db::LaminarDB::builder().shards(1).build().unwrap();
    db.execute(&format!(
        "{TRADES_DDL}; CREATE STREAM s AS SELECT symbol, ts, COUNT(*) AS n FROM trades \
         GROUP BY symbol, ts EMIT CHANGES"
    ))
    .await
    .unwrap();
    let plan = db.explain("s").unwrap();
    assert!(plan.contains("ChangelogAggregate"), "{plan}");
}

/// A join bounded by a column of one side's rows (`t.ts <= s.ends`) keeps
/// that side's rows to any age, but the other side's time is bounded below
/// by it (`t.ts >= s.ts + 1`) and still carries the watermark: it can be
/// windowed downstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn windows_over_the_bounded_side_of_a_row_bounded_join() {
    let join = |spans: &str| {
        format!(
            "SELECT t.symbol, tumble(t.ts, INTERVAL '500' MILLISECOND) AS w,
                    COUNT(*) AS n, SUM(t.volume) AS v
             FROM {spans} s JOIN trades t
               ON s.symbol = t.symbol AND t.ts BETWEEN s.ts + 1 AND s.ends
             GROUP BY t.symbol, tumble(t.ts, INTERVAL '500' MILLISECOND)"
        )
    };
    cascading_differential(
        "CREATE STREAM spans AS SELECT symbol, ts, ts + volume AS ends FROM trades",
        &join("spans"),
        "",
        &join("(SELECT symbol, ts, ts + volume AS ends FROM trades)"),
        3_000,
        20,
    )
    .await;
    // The side carrying the bound keeps rows of any age: its time is not
    // covered.
    let db = laminar_db::LaminarDB::builder().shards(1).build().unwrap();
    db.execute(&format!(
        "{TRADES_DDL}; CREATE STREAM spans AS SELECT symbol, ts, ts + volume AS ends FROM trades"
    ))
    .await
    .unwrap();
    let Err(error) = db
        .execute(
            "CREATE STREAM s AS SELECT COUNT(*) AS n
             FROM spans s JOIN trades t ON s.symbol = t.symbol AND t.ts BETWEEN s.ts + 1 AND s.ends
             GROUP BY tumble(s.ts, INTERVAL '500' MILLISECOND)",
        )
        .await
    else {
        panic!("a window over the bound-carrying side was accepted");
    };
    assert!(error.to_string().contains("LDB-1006"), "{error}");
}

/// A group at the watermark's own instant is still open: a row at that
/// time is on time and joins it; a row behind it is late (counted, or
/// kept for the side output).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instant_at_the_watermark_is_still_open() {
    let trade = |symbol: &str, ts: i64| Trade {
        symbol: symbol.to_string(),
        price: 1.0,
        volume: 1,
        ts,
    };
    // The second batch moves the watermark to 1000 (5 s bound).
    let batches = vec![
        trades_batch(&[trade("A", 1_000)]),
        trades_batch(&[trade("B", 6_000)]),
        trades_batch(&[trade("A", 1_000), trade("A", 999)]),
    ];
    let ddl = format!(
        "{TRADES_DDL}; CREATE STREAM s AS
         SELECT symbol, ts, COUNT(*) AS n FROM trades GROUP BY symbol, ts"
    );
    let (got, metrics) = run_stream(&ddl, "trades", "s", batches.clone(), 1).await;
    assert_eq!(
        metrics.streams[0].late_rows, 1,
        "999 is behind the watermark"
    );
    // The late row, kept for the side output.
    let db = laminar_db::LaminarDB::builder().shards(1).build().unwrap();
    db.execute(&format!(
        "{TRADES_DDL}; CREATE STREAM k WITH (late_data = 'side_output') AS
         SELECT symbol, ts, COUNT(*) AS n FROM trades GROUP BY symbol, ts"
    ))
    .await
    .unwrap();
    let side = collect(db.subscribe("k_late").unwrap());
    let source = db.source_untyped("trades").unwrap();
    db.start().await.unwrap();
    for batch in batches {
        source.push(batch).unwrap();
    }
    source.watermark(i64::MAX).unwrap();
    db.shutdown().await.unwrap();
    assert_same_rows(&side.join().unwrap(), &[trades_batch(&[trade("A", 999)])]);
    let want = run_batch(
        "SELECT symbol, ts, COUNT(*) AS n FROM trades GROUP BY symbol, ts",
        "trades",
        vec![trades_batch(&[
            trade("A", 1_000),
            trade("B", 6_000),
            trade("A", 1_000),
        ])],
        trades_schema(),
    )
    .await;
    assert_same_rows(&got, &want);
}

fn drop_column(batches: &[RecordBatch], name: &str) -> Vec<RecordBatch> {
    batches
        .iter()
        .map(|b| {
            let keep: Vec<usize> = (0..b.num_columns())
                .filter(|&i| b.schema().field(i).name() != name)
                .collect();
            b.project(&keep).unwrap()
        })
        .collect()
}

fn filter_rows(
    batches: &[RecordBatch],
    keep: impl Fn(&RecordBatch, usize) -> bool,
) -> Vec<RecordBatch> {
    batches
        .iter()
        .map(|b| {
            let mask: datafusion::arrow::array::BooleanArray =
                (0..b.num_rows()).map(|i| Some(keep(b, i))).collect();
            datafusion::arrow::compute::filter_record_batch(b, &mask).unwrap()
        })
        .collect()
}
