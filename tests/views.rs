//! Materialized views, ad-hoc queries over them, SHOW and EXPLAIN.

mod common;

use std::time::{Duration, Instant};

use common::*;
use datafusion::arrow::array::{Array, RecordBatch, StringArray};
use laminar_db::{ErrorCode, ExecuteResult, LaminarDB};

async fn rows(db: &LaminarDB, sql: &str) -> Vec<RecordBatch> {
    match db.execute(sql).await.unwrap().pop() {
        Some(ExecuteResult::Rows(batches)) => batches,
        other => panic!("expected rows, got {other:?}"),
    }
}

const PER_SYMBOL: &str = "SELECT symbol, COUNT(*) AS n, SUM(volume) AS v, MAX(price) AS hi
                          FROM trades GROUP BY symbol";

/// A view over an EMIT CHANGES stream holds the current result: queried
/// while rows flow it catches up, and after the input ends it equals the
/// batch answer. A view over an EMIT ON WINDOW CLOSE stream holds every
/// closed window; a view can read another view.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn views_hold_current_results_and_answer_ad_hoc_queries() {
    let data = trades(21, 8_000, 25, 3_000);
    let db = LaminarDB::builder().shards(2).build().unwrap();
    let created = db
        .execute(&format!(
            "{TRADES_DDL};
             CREATE MATERIALIZED VIEW per_symbol AS {PER_SYMBOL} EMIT CHANGES;
             CREATE MATERIALIZED VIEW bars AS
                SELECT symbol, tumble(ts, INTERVAL '10' SECOND) AS w,
                       first_value(price) AS open, last_value(price) AS close, SUM(volume) AS v
                FROM trades GROUP BY symbol, tumble(ts, INTERVAL '10' SECOND);
             CREATE MATERIALIZED VIEW bars_1m AS
                SELECT symbol, tumble(w, INTERVAL '1' MINUTE) AS w, SUM(v) AS v
                FROM bars GROUP BY symbol, tumble(w, INTERVAL '1' MINUTE)"
        ))
        .await
        .unwrap();
    assert_eq!(created[1], ExecuteResult::ViewCreated("per_symbol".into()));
    // Before start, views are empty but queryable.
    assert_eq!(row_count(&rows(&db, "SELECT * FROM per_symbol").await), 0);
    let source = db.source_untyped("trades").unwrap();
    db.start().await.unwrap();
    for batch in random_batches(&data, 4, 300) {
        source.push(batch).unwrap();
    }
    // While running: the view converges on the full count.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let total = rows(
            &db,
            "SELECT CAST(SUM(n) AS BIGINT) AS total FROM per_symbol",
        )
        .await;
        let seen = total
            .first()
            .and_then(|b| {
                b.column(0)
                    .as_any()
                    .downcast_ref::<datafusion::arrow::array::Int64Array>()
                    .filter(|a| !a.is_null(0))
                    .map(|a| a.value(0))
            })
            .unwrap_or(0);
        if seen == data.len() as i64 {
            break;
        }
        assert!(Instant::now() < deadline, "view stuck at {seen} rows");
        tokio::task::yield_now().await;
    }
    source.watermark(i64::MAX).unwrap();
    db.shutdown().await.unwrap();

    let all = vec![trades_batch(&data)];
    let want = run_batch(PER_SYMBOL, "trades", all.clone(), trades_schema()).await;
    assert_same_rows(&rows(&db, "SELECT * FROM per_symbol").await, &want);
    let want = run_batch(
        "SELECT symbol, tumble(ts, INTERVAL '10' SECOND) AS w, first_value(price) AS open,
                last_value(price) AS close, SUM(volume) AS v
         FROM trades GROUP BY symbol, tumble(ts, INTERVAL '10' SECOND)",
        "trades",
        all.clone(),
        trades_schema(),
    )
    .await;
    assert_same_rows(&rows(&db, "SELECT * FROM bars").await, &want);
    let want = run_batch(
        "SELECT symbol, tumble(ts, INTERVAL '1' MINUTE) AS w, SUM(volume) AS v
         FROM trades GROUP BY symbol, tumble(ts, INTERVAL '1' MINUTE)",
        "trades",
        all,
        trades_schema(),
    )
    .await;
    assert_same_rows(&rows(&db, "SELECT * FROM bars_1m").await, &want);
    // Joins and aggregates across views are plain DataFusion.
    let joined = rows(
        &db,
        "SELECT p.symbol, p.v, SUM(b.v) AS v2 FROM per_symbol p JOIN bars_1m b
         ON p.symbol = b.symbol GROUP BY p.symbol, p.v HAVING p.v <> SUM(b.v)",
    )
    .await;
    assert_eq!(
        row_count(&joined),
        0,
        "both views count every trade's volume"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn show_explain_and_query_errors() {
    let db = LaminarDB::builder().shards(1).build().unwrap();
    db.execute(&format!(
        "{TRADES_DDL};
         CREATE SOURCE quiet (a BIGINT) WITH (retention_rows = 0);
         CREATE STREAM s AS SELECT symbol FROM trades WHERE price > 1;
         CREATE MATERIALIZED VIEW v AS {PER_SYMBOL} EMIT CHANGES;
         CREATE STREAM shouted AS SELECT upper(symbol) AS loud, price FROM trades
             WHERE upper(symbol) <> 'S001'"
    ))
    .await
    .unwrap();
    let names = |batches: &[RecordBatch]| -> Vec<String> {
        batches
            .iter()
            .flat_map(|b| {
                let a = b.column(0).as_any().downcast_ref::<StringArray>().unwrap();
                (0..a.len())
                    .map(|i| a.value(i).to_string())
                    .collect::<Vec<_>>()
            })
            .collect()
    };
    assert_eq!(names(&rows(&db, "SHOW SOURCES").await), ["trades", "quiet"]);
    assert_eq!(
        names(&rows(&db, "SHOW STREAMS").await),
        ["s", "v", "shouted"]
    );
    assert_eq!(names(&rows(&db, "SHOW MATERIALIZED VIEWS").await), ["v"]);
    let plan = names(&rows(&db, "EXPLAIN v").await);
    // COUNT, SUM and MAX fold into live accumulators.
    assert!(
        plan[0].starts_with("ChangelogAggregate(folded)"),
        "{plan:?}"
    );

    assert!(
        plan[0].contains("on 1 shard(s): shard 0 on cpu"),
        "{plan:?}"
    );
    let plan = names(&rows(&db, "EXPLAIN shouted").await);
    assert!(
        plan[0].contains("WHERE and SELECT share 1 expression(s)"),
        "{plan:?}"
    );
    assert_eq!(
        names(&rows(&db, "DESCRIBE v").await),
        ["symbol", "n", "v", "hi", "_weight"]
    );
    let create = rows(&db, "SHOW CREATE STREAM s").await;
    let sql = create[0]
        .column(1)
        .as_any()
        .downcast_ref::<StringArray>()
        .unwrap();
    assert!(
        sql.value(0).starts_with("CREATE STREAM s AS SELECT symbol"),
        "{}",
        sql.value(0)
    );
    assert_eq!(row_count(&rows(&db, "SHOW SINKS").await), 0);

    let code = |r: laminar_db::Result<Vec<ExecuteResult>>| r.unwrap_err().code();
    assert_eq!(
        code(db.execute("SELECT * FROM s").await),
        ErrorCode::Unsupported
    );
    // DROP checks dependencies and names.
    assert_eq!(
        code(db.execute("DROP SOURCE trades").await),
        ErrorCode::InUse
    );
    assert_eq!(
        code(db.execute("DROP STREAM v").await),
        ErrorCode::UnknownObject
    );
    assert_eq!(
        db.execute("DROP STREAM IF EXISTS nope").await.unwrap(),
        [ExecuteResult::NothingToDrop("nope".into())]
    );
    db.execute("CREATE STREAM extra AS SELECT symbol FROM trades")
        .await
        .unwrap();
    let mut sub = db.subscribe("v").unwrap();
    assert_eq!(
        db.execute("DROP STREAM extra; DROP STREAM s; DROP STREAM shouted")
            .await
            .unwrap(),
        [
            ExecuteResult::Dropped("extra".into()),
            ExecuteResult::Dropped("s".into()),
            ExecuteResult::Dropped("shouted".into())
        ]
    );
    assert_eq!(names(&rows(&db, "SHOW STREAMS").await), ["v"]);
    // EXPLAIN ANALYZE: per-shard counters once running; the subscription
    // taken before the drops still reads v.
    let source = db.source_untyped("trades").unwrap();
    db.start().await.unwrap();
    source.push(trades_batch(&trades(1, 500, 5, 0))).unwrap();
    assert!(sub.recv_timeout(Duration::from_secs(10)).unwrap().is_some());
    let analyzed = rows(&db, "EXPLAIN ANALYZE v").await;
    let rows_in = analyzed[0]
        .column_by_name("rows_in")
        .unwrap()
        .as_any()
        .downcast_ref::<datafusion::arrow::array::UInt64Array>()
        .unwrap()
        .value(0);
    assert!(rows_in > 0);
    // Call latency from the timed calls (the first batch call is one).
    let latency = |name: &str| {
        analyzed[0]
            .column_by_name(name)
            .unwrap()
            .as_any()
            .downcast_ref::<datafusion::arrow::array::Float64Array>()
            .unwrap()
            .value(0)
    };
    let (p50, p99, max) = (
        latency("call_p50_us"),
        latency("call_p99_us"),
        latency("call_max_us"),
    );
    assert!(0.0 < p50 && p50 <= p99 && p99 <= max, "{p50} {p99} {max}");
    assert_eq!(
        code(db.execute("DROP MATERIALIZED VIEW v").await),
        ErrorCode::AlreadyStarted
    );
    db.shutdown().await.unwrap();
    assert!(db.metrics().streams[0].state_bytes > 0);
    // Sources keep their last rows (the 500 pushed above); with
    // retention_rows = 0 they keep none and cannot be queried.
    assert_eq!(row_count(&rows(&db, "SELECT * FROM trades").await), 500);
    assert_eq!(
        code(db.execute("SELECT * FROM quiet").await),
        ErrorCode::Unsupported
    );
    // s was dropped above; `extra2` is a plain stream.
    assert_eq!(
        code(db.execute("SELECT * FROM extra2").await),
        ErrorCode::UnknownObject
    );
    assert_eq!(
        code(db.execute("SELECT * FROM nowhere").await),
        ErrorCode::UnknownObject
    );
    assert_eq!(
        code(db.execute("SELECT * FROM v WHERE").await),
        ErrorCode::SqlSyntax
    );
    assert_eq!(
        code(db.execute("SHOW FUNCTIONS").await),
        ErrorCode::Unsupported
    );
    assert_eq!(
        code(db.execute("EXPLAIN nowhere").await),
        ErrorCode::UnknownObject
    );
}

/// Tables (upserted by primary key), INSERT into tables and sources, and
/// ad-hoc queries joining tables with views.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tables_and_inserts() {
    use datafusion::arrow::array::Int64Array;
    let db = LaminarDB::builder().shards(2).build().unwrap();
    db.execute(&format!(
        "{TRADES_DDL};
         CREATE MATERIALIZED VIEW per_symbol AS
            SELECT symbol, COUNT(*) AS n, SUM(volume) AS v FROM trades GROUP BY symbol EMIT CHANGES;
         CREATE TABLE symbols (symbol VARCHAR, name VARCHAR, lot BIGINT, PRIMARY KEY (symbol))"
    ))
    .await
    .unwrap();
    let code = |r: laminar_db::Result<Vec<ExecuteResult>>| r.unwrap_err().code();
    // A source takes rows only once running.
    assert_eq!(
        code(
            db.execute("INSERT INTO trades VALUES ('A', 1.0, 1, 0)")
                .await
        ),
        ErrorCode::NotRunning
    );
    assert_eq!(
        db.execute("INSERT INTO symbols VALUES ('A', 'Alpha', 100), ('B', 'Beta', 10)")
            .await
            .unwrap(),
        [ExecuteResult::Inserted {
            target: "symbols".into(),
            rows: 2
        }]
    );
    // Same key: replaced; a missing nullable column is NULL.
    db.execute("INSERT INTO symbols (symbol, name) VALUES ('A', 'Alpha 2')")
        .await
        .unwrap();
    let table = db
        .sql("SELECT symbol, name, lot FROM symbols ORDER BY symbol")
        .await
        .unwrap();
    let printed = laminar_db::pretty(&table).unwrap();
    assert!(printed.contains("| A      | Alpha 2 |     |"), "{printed}");
    assert!(printed.contains("| B      | Beta    | 10  |"), "{printed}");
    // Quotes doubled inside literals stay part of the value.
    db.execute("INSERT INTO symbols VALUES ('O''Neil', 'it''s', NULL)")
        .await
        .unwrap();
    let quoted = db
        .sql("SELECT name FROM symbols WHERE symbol = 'O''Neil'")
        .await
        .unwrap();
    assert!(
        laminar_db::pretty(&quoted).unwrap().contains("| it's |"),
        "{}",
        laminar_db::pretty(&quoted).unwrap()
    );

    for (bad, expected) in [
        ("INSERT INTO nowhere VALUES (1)", ErrorCode::UnknownObject),
        (
            "INSERT INTO symbols VALUES ('C')",
            ErrorCode::SchemaMismatch,
        ),
        (
            "INSERT INTO symbols (name) VALUES ('no key')",
            ErrorCode::SchemaMismatch,
        ),
        (
            "INSERT INTO symbols VALUES ('C', 'x', 'not a number')",
            ErrorCode::SchemaMismatch,
        ),
        (
            "INSERT INTO symbols (symbol, colour) VALUES ('C', 'red')",
            ErrorCode::UnknownObject,
        ),
    ] {
        assert_eq!(code(db.execute(bad).await), expected, "{bad}");
    }

    let mut changes = db.subscribe("per_symbol").unwrap();
    db.start().await.unwrap();
    db.execute(
        "INSERT INTO trades VALUES ('A', 10.0, 5, 1000), ('A', 11.0, 7, 1001), ('B', 3.0, 1, 1002)",
    )
    .await
    .unwrap();
    // The view takes the rows in (its changelog reaches subscribers too).
    let mut seen = 0;
    while seen < 2 {
        let batch = changes
            .recv_timeout(Duration::from_secs(10))
            .unwrap()
            .unwrap();
        seen += batch.num_rows();
    }
    db.execute(
        "INSERT INTO trades SELECT symbol, 1.0, lot, 2000 FROM symbols WHERE lot IS NOT NULL",
    )
    .await
    .unwrap();
    db.execute("INSERT INTO trades VALUES ('A', 1.0, 1, 1000000)")
        .await
        .unwrap();
    db.shutdown().await.unwrap();
    // The source kept what was pushed to it: 3 + 1 + 1 rows.
    let kept = db.sql("SELECT COUNT(*) AS n FROM trades").await.unwrap();
    assert_eq!(
        kept[0]
            .column(0)
            .as_any()
            .downcast_ref::<Int64Array>()
            .unwrap()
            .value(0),
        5
    );
    let joined = db
        .sql(
            "SELECT p.symbol, s.name, p.n, p.v FROM per_symbol p JOIN symbols s ON p.symbol = s.symbol
             ORDER BY p.symbol",
        )
        .await
        .unwrap();
    let n = joined[0]
        .column(2)
        .as_any()
        .downcast_ref::<Int64Array>()
        .unwrap();
    assert_eq!(
        (n.value(0), n.value(1)),
        (3, 2),
        "{}",
        laminar_db::pretty(&joined).unwrap()
    );
    assert_eq!(rows(&db, "SHOW TABLES").await[0].num_rows(), 1);
    assert_eq!(row_count(&rows(&db, "DESCRIBE symbols").await), 3);
    db.execute("DROP TABLE symbols").await.unwrap();
    assert_eq!(
        code(db.execute("SELECT * FROM symbols").await),
        ErrorCode::UnknownObject
    );
}
