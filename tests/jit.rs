//! Streams whose expressions run as Cranelift kernels give the batch
//! answer (NULLs, zeros, signed zeros), `EXPLAIN` says what runs
//! compiled, and in adaptive mode a running stream switches to its
//! kernels without a pause.

mod common;

use std::sync::Arc;

use tokio::sync::Mutex;

use common::*;
use datafusion::arrow::array::{
    BooleanArray, Float64Array, Int32Array, Int64Array, RecordBatch, StringArray,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use laminar_db::{JitMode, LaminarDB};
use rand::{Rng, SeedableRng};

/// The JIT mode is process-wide: tests here take turns.
static MODE: Mutex<()> = Mutex::const_new(());

const DDL: &str = "CREATE SOURCE events (a BIGINT, b DOUBLE, c INT, flag BOOLEAN,
    ts BIGINT NOT NULL, sym VARCHAR NOT NULL, id BIGINT NOT NULL, WATERMARK FOR ts AS ts - INTERVAL '1' SECOND)";

const PROJECT: &str = "SELECT a * 3 + CAST(c AS BIGINT) AS x, b * 2.0 - 1.0 AS y,
    a IS NULL AS missing, (b > 0.5 OR flag) AND NOT (c = 3) AS keep
FROM events WHERE a % 5 <> 1 OR b IS NULL";

const CASES: &str = "SELECT CASE WHEN flag THEN a ELSE a * 2 END AS picked,
    CASE c WHEN 1 THEN b WHEN 2 THEN -b END AS by_c,
    CASE WHEN b > 0.0 THEN 1 WHEN b < 0.0 THEN -1 END AS sign
FROM events WHERE CASE WHEN flag THEN a > 0 ELSE c > 2 END";

const AGGREGATE: &str =
    "SELECT c, SUM(a * 2) AS doubled, COUNT(b) FILTER (WHERE b > 0.0) AS positive,
    MAX(CAST(c AS DOUBLE) * b) AS top
FROM events WHERE flag IS NOT NULL
GROUP BY c, tumble(ts, INTERVAL '10' SECOND)";

/// Fuses (every aggregate compiles into one loop with the WHERE): a
/// tumbling and a sliding window (rows in several windows, per-window
/// masks), every function the fused path computes.
const FUSED: &str = "SELECT c, COUNT(*) AS n, SUM(b) AS total, MIN(a) AS low, MAX(b) AS high,
    AVG(b * 2.0) AS mean, COUNT(a) FILTER (WHERE b > 0.0) AS positive
FROM events WHERE a > -500 OR flag
GROUP BY c, tumble(ts, INTERVAL '10' SECOND)";

const FUSED_SLIDING: &str = "SELECT c, SUM(a) AS total, MAX(b) AS high
FROM events WHERE b IS NOT NULL
GROUP BY c, hop(ts, INTERVAL '6' SECOND, INTERVAL '2' SECOND)";

/// Fused with the group lookup in the kernel's loop (one non-null string
/// or BIGINT key): symbols of every length around the 8 bytes a table
/// slot holds, and ids from thousands (hundreds of groups per window, so
/// tables grow while a kernel runs).
const FUSED_BY_SYMBOL: &str = "SELECT sym, COUNT(*) AS n, SUM(b) AS total, MIN(a) AS low,
    MAX(b) AS high, AVG(b * 2.0) AS mean, COUNT(a) FILTER (WHERE b > 0.0) AS positive
FROM events WHERE a > -500 OR flag
GROUP BY sym, tumble(ts, INTERVAL '10' SECOND)";

const FUSED_BY_ID: &str = "SELECT id, COUNT(*) AS n, SUM(a) AS total
FROM events WHERE b IS NOT NULL
GROUP BY id, tumble(ts, INTERVAL '10' SECOND)";

const FUSED_SLIDING_BY_SYMBOL: &str = "SELECT sym, SUM(a) AS total, MAX(b) AS high
FROM events
GROUP BY sym, hop(ts, INTERVAL '6' SECOND, INTERVAL '2' SECOND)";

/// Fuses into session slots: per `c`, sessions that end 40 ms after their
/// last row (rows come 7 ms apart, so keys meet often, and out of order
/// within a batch, so rows bridge and merge sessions).
const FUSED_SESSION: &str = "SELECT c, COUNT(*) AS n, SUM(b) AS total, MIN(a) AS low,
    MAX(b) AS high, AVG(b * 2.0) AS mean, COUNT(a) FILTER (WHERE b > 0.0) AS positive
FROM events WHERE a > -500 OR flag
GROUP BY c, session(ts, INTERVAL '40' MILLISECOND)";

/// Changelog aggregates whose state folds (`EMIT CHANGES`), without a
/// window and per tumbling window: the same kernel updates the folded
/// accumulators, and each batch's changes are read from them.
const FUSED_CHANGES: &str = "SELECT c, COUNT(*) AS n, SUM(b) AS total, MIN(a) AS low,
    MAX(b) AS high, AVG(b * 2.0) AS mean, COUNT(a) FILTER (WHERE b > 0.0) AS positive
FROM events WHERE a > -500 OR flag
GROUP BY c";

const FUSED_WINDOW_CHANGES: &str = "SELECT c, SUM(a) AS total, COUNT(*) AS n
FROM events WHERE b IS NOT NULL
GROUP BY c, tumble(ts, INTERVAL '2' SECOND)";

fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("a", DataType::Int64, true),
        Field::new("b", DataType::Float64, true),
        Field::new("c", DataType::Int32, true),
        Field::new("flag", DataType::Boolean, true),
        Field::new("ts", DataType::Int64, false),
        Field::new("sym", DataType::Utf8, false),
        Field::new("id", DataType::Int64, false),
    ]))
}

/// Symbols up to 8 bytes long (a group table's slot holds them whole)
/// and longer, ASCII and not.
const SYMBOLS: [&str; 10] = [
    "",
    "x",
    "é",
    "SYM0042",
    "SYM00420",
    "SYM004200",
    "ünïcødé",
    "a",
    "a longer symbol",
    "12345678",
];

/// Rows with NULLs in every nullable column, zeros and -0.0, in batches
/// of random sizes.
fn events(seed: u64, n: usize) -> (Vec<RecordBatch>, RecordBatch) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut a = Vec::with_capacity(n);
    let mut b = Vec::with_capacity(n);
    let mut c = Vec::with_capacity(n);
    let mut flag = Vec::with_capacity(n);
    let mut sym = Vec::with_capacity(n);
    let mut id = Vec::with_capacity(n);
    for _ in 0..n {
        sym.push(SYMBOLS[rng.random_range(0..SYMBOLS.len())]);
        id.push(rng.random_range(-1_000i64..2_000));
        a.push((!rng.random_ratio(1, 8)).then(|| rng.random_range(-1_000i64..1_000)));
        b.push(match rng.random_range(0..10) {
            0 => None,
            1 => Some(-0.0),
            2 => Some(0.0),
            _ => Some(rng.random_range(-2.0..2.0)),
        });
        c.push((!rng.random_ratio(1, 8)).then(|| rng.random_range(0i32..6)));
        flag.push((!rng.random_ratio(1, 5)).then(|| rng.random_bool(0.5)));
    }
    let ts: Vec<i64> = (0..n as i64).map(|i| i * 7).collect();
    let all = RecordBatch::try_new(
        schema(),
        vec![
            Arc::new(Int64Array::from(a)),
            Arc::new(Float64Array::from(b)),
            Arc::new(Int32Array::from(c)),
            Arc::new(BooleanArray::from(flag)),
            Arc::new(Int64Array::from(ts)),
            Arc::new(StringArray::from(sym)),
            Arc::new(Int64Array::from(id)),
        ],
    )
    .unwrap();
    let mut batches = Vec::new();
    let mut at = 0;
    while at < n {
        let len = rng.random_range(1..=300).min(n - at);
        batches.push(all.slice(at, len));
        at += len;
    }
    (batches, all)
}

/// Each batch's rows reversed in blocks of 100 (700 ms of event time):
/// out of order, yet none late (a row is judged against the newest row
/// before it, at most 700 ms newer, and the watermark is 1 s behind).
fn reversed(batches: &[RecordBatch]) -> Vec<RecordBatch> {
    batches
        .iter()
        .map(|b| {
            let n = b.num_rows() as u32;
            let order = datafusion::arrow::array::UInt32Array::from_iter_values(
                (0..n)
                    .step_by(100)
                    .flat_map(|start| (start..(start + 100).min(n)).rev()),
            );
            datafusion::arrow::compute::take_record_batch(b, &order).unwrap()
        })
        .collect()
}

/// What the interpreter gives for `query` over `batches` (one shard):
/// the reference for queries with no batch form to compare with.
async fn interpreted(query: &str, batches: &[RecordBatch]) -> Vec<RecordBatch> {
    laminar_db::set_jit_mode(JitMode::Off);
    let ddl = format!("{DDL}; CREATE STREAM s AS {query}");
    let (want, _) = run_stream(&ddl, "events", "s", batches.to_vec(), 1).await;
    assert!(!want.is_empty());
    want
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compiled_streams_give_the_batch_answer() {
    let _turn = MODE.lock().await;
    laminar_db::set_jit_mode(JitMode::Eager);
    for (seed, query) in [
        (1, PROJECT),
        (2, AGGREGATE),
        (3, CASES),
        (4, FUSED),
        (8, FUSED_BY_SYMBOL),
        (9, FUSED_BY_ID),
    ] {
        let (batches, all) = events(seed, 5_000);
        let want = run_batch(query, "events", vec![all], schema()).await;
        for shards in [1, 2] {
            let ddl = format!("{DDL}; CREATE STREAM s AS {query}");
            let (got, _) = run_stream(&ddl, "events", "s", batches.clone(), shards).await;
            assert_same_rows(&got, &want);
        }
    }
    laminar_db::set_jit_mode(JitMode::Adaptive);
}

/// Sliding windows have no batch form to compare with: the fused stream
/// must give what the interpreted one (checked against the batch answer
/// in tests/oracle.rs) gives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fused_sliding_windows_match_the_interpreted_stream() {
    let _turn = MODE.lock().await;
    let (batches, _) = events(5, 5_000);
    for query in [FUSED_SLIDING, FUSED_SLIDING_BY_SYMBOL] {
        let ddl = format!("{DDL}; CREATE STREAM s AS {query}");
        laminar_db::set_jit_mode(JitMode::Off);
        let (want, _) = run_stream(&ddl, "events", "s", batches.clone(), 1).await;
        assert!(!want.is_empty());
        laminar_db::set_jit_mode(JitMode::Eager);
        for shards in [1, 2] {
            let (got, _) = run_stream(&ddl, "events", "s", batches.clone(), shards).await;
            assert_same_rows(&got, &want);
        }
    }
    laminar_db::set_jit_mode(JitMode::Adaptive);
}

/// Session windows have no batch form here either (tests/oracle.rs
/// checks the interpreted sessions against numbered batch sessions): the
/// kernel folding selected rows into session slots, merging as rows
/// bridge sessions, must give what the interpreter gives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fused_sessions_match_the_interpreted_stream() {
    let _turn = MODE.lock().await;
    let (batches, _) = events(7, 5_000);
    let batches = reversed(&batches);
    let want = interpreted(FUSED_SESSION, &batches).await;
    laminar_db::set_jit_mode(JitMode::Eager);
    let ddl = format!("{DDL}; CREATE STREAM s AS {FUSED_SESSION}");
    for shards in [1, 2] {
        let (got, metrics) = run_stream(&ddl, "events", "s", batches.clone(), shards).await;
        assert_eq!(metrics.streams[0].late_rows, 0);
        assert_same_rows(&got, &want);
    }
    laminar_db::set_jit_mode(JitMode::Adaptive);
}

/// A changelog aggregate run by the kernel emits, batch by batch, the
/// very rows the interpreter emits (one shard, same batches), and at two
/// shards consolidates to the batch answer; `EXPLAIN` says it is fused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fused_changelogs_match_the_interpreted_stream() {
    let _turn = MODE.lock().await;
    let (batches, all) = events(8, 5_000);
    let batches = reversed(&batches);
    for query in [FUSED_CHANGES, FUSED_WINDOW_CHANGES] {
        let changes = format!("{query} EMIT CHANGES");
        let want = interpreted(&changes, &batches).await;
        let answer = run_batch(query, "events", vec![all.clone()], schema()).await;
        assert_same_rows(&consolidate(&want), &answer);
        laminar_db::set_jit_mode(JitMode::Eager);
        let db = LaminarDB::builder().build().unwrap();
        db.execute(&format!("{DDL}; CREATE STREAM s AS {changes}"))
            .await
            .unwrap();
        let plan = explain(&db);
        assert!(
            plan.contains("ChangelogAggregate(folded)")
                && plan.contains("JIT fused aggregate (WHERE, arguments and accumulator updates in one loop per batch): compiled"),
            "{plan}"
        );
        let ddl = format!("{DDL}; CREATE STREAM s AS {changes}");
        let (got, _) = run_stream(&ddl, "events", "s", batches.clone(), 1).await;
        assert_same_rows(&got, &want);
        let (got, _) = run_stream(&ddl, "events", "s", batches.clone(), 2).await;
        assert_same_rows(&consolidate(&got), &answer);
    }
    laminar_db::set_jit_mode(JitMode::Adaptive);
}

/// A database on `dir` running `query`, planned in `mode`.
async fn fused_on(
    dir: &std::path::Path,
    query: &str,
    mode: JitMode,
) -> (LaminarDB, std::thread::JoinHandle<Vec<RecordBatch>>) {
    laminar_db::set_jit_mode(mode);
    let db = LaminarDB::builder()
        .shards(1)
        .storage_dir(dir)
        .durability(laminar_db::Durability::Sync)
        .build()
        .unwrap();
    db.execute(&format!("{DDL}; CREATE STREAM s AS {query}"))
        .await
        .unwrap();
    let collector = collect(db.subscribe("s").unwrap());
    db.start().await.unwrap();
    (db, collector)
}

/// Fused state is checkpointed in DataFusion's partial-state layout: a
/// checkpoint taken fused restores on the interpreter, and the other way
/// round, with open windows (and open sessions) carried across.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fused_checkpoints_restore_in_either_mode() {
    let _turn = MODE.lock().await;
    let (batches, all) = events(6, 4_000);
    let batches = reversed(&batches);
    // A changelog's folded accumulators too (compared consolidated).
    let changes = format!("{FUSED_CHANGES} EMIT CHANGES");
    for query in [FUSED, FUSED_BY_SYMBOL, FUSED_SESSION, &changes] {
        let want = if query == FUSED_SESSION {
            interpreted(query, &batches).await
        } else {
            let batch_form = query.trim_end_matches(" EMIT CHANGES");
            run_batch(batch_form, "events", vec![all.clone()], schema()).await
        };
        let (first, rest) = batches.split_at(batches.len() / 2);
        for (before, after) in [
            (JitMode::Eager, JitMode::Off),
            (JitMode::Off, JitMode::Eager),
        ] {
            let dir = tempfile::tempdir().unwrap();
            let (db, collector) = fused_on(dir.path(), query, before).await;
            let source = db.source_untyped("events").unwrap();
            for batch in first {
                source.push(batch.clone()).unwrap();
            }
            db.checkpoint().await.unwrap();
            db.shutdown().await.unwrap();
            drop((db, source));
            let mut got = collector.join().unwrap();

            let (db, collector) = fused_on(dir.path(), query, after).await;
            let source = db.source_untyped("events").unwrap();
            for batch in rest {
                source.push(batch.clone()).unwrap();
            }
            source.watermark(i64::MAX).unwrap();
            db.shutdown().await.unwrap();
            assert!(db.errors().is_empty(), "{:?}", db.errors());
            got.extend(collector.join().unwrap());
            if query == changes {
                got = consolidate(&got);
            }
            assert_same_rows(&got, &want);
        }
    }
    laminar_db::set_jit_mode(JitMode::Adaptive);
}

fn explain(db: &LaminarDB) -> String {
    db.explain("s").unwrap()
}

/// In the adaptive mode, `CREATE STREAM` returns before its kernels are
/// compiled; `start` waits for them, so the first batch runs compiled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_waits_for_the_streams_kernels() {
    let _turn = MODE.lock().await;
    laminar_db::set_jit_mode(JitMode::Adaptive);
    let db = LaminarDB::builder().shards(1).build().unwrap();
    db.execute(&format!(
        "{DDL}; CREATE STREAM s AS {PROJECT}; CREATE STREAM fused AS {FUSED}"
    ))
    .await
    .unwrap();
    db.start().await.unwrap();
    let plans = [explain(&db), db.explain("fused").unwrap()];
    for plan in &plans {
        assert!(plan.contains("JIT"), "{plan}");
        assert!(!plan.contains("compiling"), "{plan}");
    }
    assert!(plans[0].contains("compiled: a@0 * 3 + CAST(c@2 AS Int64)"));
    assert!(plans[1].contains(
        "JIT fused aggregate (WHERE, arguments and accumulator updates in one loop per batch): compiled"
    ));
    db.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_shows_what_runs_compiled() {
    let _turn = MODE.lock().await;
    laminar_db::set_jit_mode(JitMode::Eager);
    let db = LaminarDB::builder().shards(1).build().unwrap();
    db.execute(&format!("{DDL}; CREATE STREAM s AS {PROJECT}"))
        .await
        .unwrap();
    let plan = explain(&db);
    assert!(plan.contains("JIT:"), "{plan}");
    assert!(
        plan.contains("compiled: a@0 * 3 + CAST(c@2 AS Int64)"),
        "{plan}"
    );
    assert!(!plan.contains("compiling"), "{plan}");
    db.execute(&format!("CREATE STREAM cases AS {CASES}"))
        .await
        .unwrap();
    let plan = db.explain("cases").unwrap();
    assert!(
        plan.contains("compiled: CASE WHEN flag@3 THEN a@0"),
        "{plan}"
    );
    for (name, query) in [
        ("fused", FUSED),
        ("sliding", FUSED_SLIDING),
        ("aggregate", AGGREGATE),
        ("session", FUSED_SESSION),
    ] {
        db.execute(&format!("CREATE STREAM {name} AS {query}"))
            .await
            .unwrap();
        let plan = db.explain(name).unwrap();
        assert!(
            plan.contains("JIT fused aggregate (WHERE, arguments and accumulator updates in one loop per batch): compiled"),
            "{plan}"
        );
        // A nullable INT key: the lookup stays outside the loop.
        assert!(!plan.contains("group lookup in the loop"), "{plan}");
    }
    for (name, query) in [
        ("by_symbol", FUSED_BY_SYMBOL),
        ("by_id", FUSED_BY_ID),
        ("sliding_by_symbol", FUSED_SLIDING_BY_SYMBOL),
    ] {
        db.execute(&format!("CREATE STREAM {name} AS {query}"))
            .await
            .unwrap();
        let plan = db.explain(name).unwrap();
        assert!(
            plan.contains("one loop per batch): compiled, group lookup in the loop"),
            "{plan}"
        );
    }
    // Not fused: an argument that can fail on a row (the kernel would
    // read rows the WHERE removes), a computed key, a volatile value the
    // WHERE reads twice (substituted, it would be drawn twice).
    for (name, query) in [
        ("volatile", "SELECT c, COUNT(*) AS n FROM (SELECT c, ts, random() AS r FROM events) WHERE r > 0.2 AND r < 0.4 GROUP BY c, tumble(ts, INTERVAL '10' SECOND)"),
        ("divides", "SELECT c, SUM(a / 2) AS half FROM events WHERE a <> 0 GROUP BY c, tumble(ts, INTERVAL '10' SECOND)"),
        ("computed_key", "SELECT c + 1 AS k, SUM(a) AS total FROM events GROUP BY c + 1, tumble(ts, INTERVAL '10' SECOND)"),
    ] {
        db.execute(&format!("CREATE STREAM {name} AS {query}"))
            .await
            .unwrap();
        let plan = db.explain(name).unwrap();
        assert!(!plan.contains("fused aggregate"), "{plan}");
    }
    // Sessions fold plain aggregates into per-session state (fused when
    // the kernel applies); any other aggregate keeps the rows.
    assert!(db.explain("session").unwrap().contains("state=folded"));
    db.execute(
        "CREATE STREAM ordered_session AS SELECT c, first_value(b ORDER BY ts) AS opening
         FROM events GROUP BY c, session(ts, INTERVAL '40' MILLISECOND)",
    )
    .await
    .unwrap();
    let plan = db.explain("ordered_session").unwrap();
    assert!(
        plan.contains("state=rows") && !plan.contains("fused aggregate"),
        "{plan}"
    );
    // A session's `window_end` is `MAX` of a timestamp: folded, but not
    // fused (the kernels take BIGINT and DOUBLE arguments).
    db.execute(
        "CREATE SOURCE clicks (user_id BIGINT NOT NULL, at TIMESTAMP(3) NOT NULL,
             WATERMARK FOR at AS at - INTERVAL '1' SECOND);
         CREATE STREAM visits AS SELECT user_id, window_start, window_end, COUNT(*) AS n
         FROM TABLE(SESSION(TABLE clicks PARTITION BY user_id, DESCRIPTOR(at), INTERVAL '10' SECOND))
         GROUP BY user_id, window_start, window_end",
    )
    .await
    .unwrap();
    let plan = db.explain("visits").unwrap();
    assert!(
        plan.contains("state=folded") && !plan.contains("fused aggregate"),
        "{plan}"
    );

    laminar_db::set_jit_mode(JitMode::Off);
    let db = LaminarDB::builder().shards(1).build().unwrap();
    db.execute(&format!("{DDL}; CREATE STREAM s AS {PROJECT}"))
        .await
        .unwrap();
    assert!(
        explain(&db).contains("JIT: nothing compiled"),
        "{}",
        explain(&db)
    );
    laminar_db::set_jit_mode(JitMode::Adaptive);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adaptive_streams_switch_to_kernels_while_running() {
    let _turn = MODE.lock().await;
    laminar_db::set_jit_mode(JitMode::Adaptive);
    // The fused aggregate's windows and sessions hold state across the
    // switch.
    // So do a changelog's folded accumulators.
    let changes = format!("{FUSED_CHANGES} EMIT CHANGES");
    for query in [PROJECT, FUSED, FUSED_BY_SYMBOL, FUSED_SESSION, &changes] {
        adaptive_run(query).await;
    }
}

async fn adaptive_run(query: &str) {
    let (batches, all) = events(3, 4_000);
    let batches = reversed(&batches);
    let want = if query == FUSED_SESSION {
        let want = interpreted(query, &batches).await;
        laminar_db::set_jit_mode(JitMode::Adaptive);
        want
    } else {
        let batch_form = query.trim_end_matches(" EMIT CHANGES");
        run_batch(batch_form, "events", vec![all], schema()).await
    };
    let db = LaminarDB::builder().shards(2).build().unwrap();
    db.execute(&format!("{DDL}; CREATE STREAM s AS {query}"))
        .await
        .unwrap();
    let sub = db.subscribe("s").unwrap();
    let source = db.source_untyped("events").unwrap();
    db.start().await.unwrap();
    let collector = collect(sub);
    let (first, rest) = batches.split_at(batches.len() / 2);
    for batch in first {
        source.push(batch.clone()).unwrap();
    }
    // The background compiler finishes while rows keep flowing.
    eventually(|| {
        let plan = explain(&db);
        plan.contains("compiled:") && !plan.contains("compiling")
    });
    for batch in rest {
        source.push(batch.clone()).unwrap();
    }
    source.watermark(i64::MAX).unwrap();
    db.shutdown().await.unwrap();
    let mut got = collector.join().unwrap();
    assert!(db.errors().is_empty(), "{:?}", db.errors());
    if query.ends_with("EMIT CHANGES") {
        got = consolidate(&got);
    }
    assert_same_rows(&got, &want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_division_by_zero_fails_the_batch_as_when_interpreted() {
    let _turn = MODE.lock().await;
    let mut messages = Vec::new();
    for mode in [JitMode::Off, JitMode::Eager] {
        laminar_db::set_jit_mode(mode);
        let db = LaminarDB::builder().shards(1).build().unwrap();
        db.execute(&format!(
            "{DDL}; CREATE STREAM s AS SELECT a / CAST(c AS BIGINT) AS q FROM events"
        ))
        .await
        .unwrap();
        let sub = db.subscribe("s").unwrap();
        let source = db.source_untyped("events").unwrap();
        db.start().await.unwrap();
        let collector = collect(sub);
        let batch = RecordBatch::try_new(
            schema(),
            vec![
                Arc::new(Int64Array::from(vec![Some(6), Some(1), None])),
                Arc::new(Float64Array::from(vec![None, None, None])),
                // A NULL divisor is no error; a 0 is.
                Arc::new(Int32Array::from(vec![Some(3), Some(0), None])),
                Arc::new(BooleanArray::from(vec![None, None, None])),
                Arc::new(Int64Array::from(vec![1, 2, 3])),
                Arc::new(StringArray::from(vec!["x", "y", "z"])),
                Arc::new(Int64Array::from(vec![1, 2, 3])),
            ],
        )
        .unwrap();
        source.push(batch.slice(0, 1)).unwrap();
        source.push(batch.slice(2, 1)).unwrap();
        source.push(batch.clone()).unwrap();
        source.watermark(i64::MAX).unwrap();
        db.shutdown().await.unwrap();
        let got = collector.join().unwrap();
        assert_eq!(row_count(&got), 2, "the two batches without a zero divisor");
        let errors = db.errors();
        assert_eq!(errors.len(), 1, "{errors:?}");
        messages.push(errors[0].to_string());
    }
    assert_eq!(messages[0], messages[1]);
    assert!(messages[0].contains("Divide by zero"), "{}", messages[0]);
    laminar_db::set_jit_mode(JitMode::Adaptive);
}
