//! The facade API as a user meets it: the quick start, subscriptions,
//! explicit watermarks, shutdown, backpressure and errors with codes.

mod common;

use std::time::Duration;

use common::*;
use futures::StreamExt;
use laminar_db::{Backpressure, ErrorCode, LaminarDB};

/// The quick-start source and VWAP query, verbatim: no WATERMARK clause, so
/// time moves only through explicit watermarks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quick_start_verbatim_with_explicit_watermark() {
    let db = LaminarDB::open().unwrap();
    db.execute(
        "CREATE SOURCE trades (
        symbol VARCHAR NOT NULL,
        price DOUBLE NOT NULL,
        volume BIGINT NOT NULL,
        ts BIGINT NOT NULL
    )",
    )
    .await
    .unwrap();
    db.execute(
        "CREATE STREAM vwap AS
        SELECT symbol,
               SUM(price * CAST(volume AS DOUBLE)) / SUM(CAST(volume AS DOUBLE)) AS vwap,
               COUNT(*) AS trades
        FROM trades
        GROUP BY symbol, tumble(ts, INTERVAL '1' MINUTE)
    ",
    )
    .await
    .unwrap();
    let source = db.source_untyped("trades").unwrap();
    let mut results = db.subscribe("vwap").unwrap();
    db.start().await.unwrap();
    let rows = vec![
        Trade {
            symbol: "A".into(),
            price: 10.0,
            volume: 1,
            ts: 1_000,
        },
        Trade {
            symbol: "A".into(),
            price: 20.0,
            volume: 3,
            ts: 2_000,
        },
        Trade {
            symbol: "B".into(),
            price: 5.0,
            volume: 2,
            ts: 59_999,
        },
        Trade {
            symbol: "A".into(),
            price: 99.0,
            volume: 1,
            ts: 60_000,
        },
    ];
    source.push(trades_batch(&rows)).unwrap();
    // Nothing closes without a watermark.
    assert!(results.recv_timeout(Duration::from_millis(100)).is_err());
    source.watermark(60_000).unwrap();
    let mut got = Vec::new();
    while row_count(&got) < 2 {
        got.push(results.next().await.unwrap());
    }
    let want = run_batch(
        "SELECT symbol, SUM(price * CAST(volume AS DOUBLE)) / SUM(CAST(volume AS DOUBLE)) AS vwap, COUNT(*) AS trades FROM trades WHERE ts < 60000 GROUP BY symbol, tumble(ts, INTERVAL '1' MINUTE)",
        "trades",
        vec![trades_batch(&rows)],
        trades_schema(),
    )
    .await;
    assert_same_rows(&got, &want);
    // A row for the closed window is late now.
    source
        .push(trades_batch(&[Trade {
            symbol: "A".into(),
            price: 1.0,
            volume: 1,
            ts: 59_000,
        }]))
        .unwrap();
    db.shutdown().await.unwrap();
    assert_eq!(db.metrics().streams[0].late_rows, 1);
    // The open window (ts 60000) was not emitted: shutdown does not close it.
    assert!(results.next().await.is_none());
    // Pushing after shutdown is an error, not a silent drop.
    let err = source.push(trades_batch(&rows)).unwrap_err();
    assert_eq!(err.code(), ErrorCode::NotRunning);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_has_stable_codes() {
    let db = LaminarDB::builder().shards(1).build().unwrap();
    fn code<T>(r: laminar_db::Result<T>) -> ErrorCode {
        match r {
            Ok(_) => panic!("expected an error"),
            Err(e) => e.code(),
        }
    }
    assert_eq!(
        code(db.execute("CREATE SOURCE (").await),
        ErrorCode::SqlSyntax
    );
    db.execute(TRADES_DDL).await.unwrap();
    assert_eq!(code(db.execute(TRADES_DDL).await), ErrorCode::AlreadyExists);
    assert_eq!(
        code(db.execute("CREATE STREAM s AS SELECT * FROM nowhere").await),
        ErrorCode::UnknownObject
    );
    assert_eq!(
        code(
            db.execute("CREATE STREAM s AS SELECT nope FROM trades")
                .await
        ),
        ErrorCode::UnknownObject
    );
    assert_eq!(
        code(
            db.execute("CREATE STREAM s AS SELECT symbol FROM trades ORDER BY price")
                .await
        ),
        ErrorCode::Unsupported
    );
    // A literal pattern is compiled when the stream is created.
    let bad_pattern = db
        .execute("CREATE STREAM s AS SELECT regexp_match(symbol, '([A-Z]') AS m FROM trades")
        .await
        .unwrap_err();
    assert_eq!(bad_pattern.code(), ErrorCode::Planning, "{bad_pattern}");
    assert!(bad_pattern.to_string().contains("([A-Z]"), "{bad_pattern}");
    assert_eq!(
        code(
            db.execute("CREATE STREAM s AS SELECT symbol, COUNT(*) FROM trades GROUP BY symbol")
                .await
        ),
        ErrorCode::Unsupported
    );
    assert_eq!(
        code(db.execute("CREATE STREAM s AS SELECT symbol, COUNT(*) FROM trades GROUP BY symbol, tumble(ts, INTERVAL '1' MONTH)").await),
        ErrorCode::InvalidWindow
    );
    assert_eq!(
        code(db.execute("CREATE STREAM s AS SELECT symbol, COUNT(*) FROM trades GROUP BY symbol, tumble(volume, INTERVAL '1' SECOND)").await),
        ErrorCode::InvalidWindow
    );
    assert_eq!(
        code(
            db.execute("CREATE STREAM s AS SELECT symbol FROM trades EMIT ON WINDOW CLOSE")
                .await
        ),
        ErrorCode::InvalidWindow
    );
    assert_eq!(
        code(db.execute("CREATE STREAM s AS SELECT symbol, COUNT(*) FROM trades GROUP BY symbol, slide(ts, INTERVAL '1' SECOND, INTERVAL '2' SECOND)").await),
        ErrorCode::InvalidWindow
    );
    assert_eq!(
        code(db.execute("CREATE STREAM s AS SELECT symbol, COUNT(*) FROM trades GROUP BY symbol, hop(ts, INTERVAL '1' SECOND)").await),
        ErrorCode::InvalidWindow
    );
    assert_eq!(
        code(db.execute("CREATE STREAM s AS SELECT symbol, COUNT(*) AS _weight FROM trades GROUP BY symbol EMIT CHANGES").await),
        ErrorCode::Planning
    );
    assert_eq!(
        code(
            db.execute("CREATE SOURCE t2 (a BIGINT, WATERMARK FOR b AS b)")
                .await
        ),
        ErrorCode::InvalidWatermark
    );
    assert_eq!(
        code(
            db.execute("CREATE SOURCE t3 (a VARCHAR, WATERMARK FOR a AS a)")
                .await
        ),
        ErrorCode::InvalidWatermark
    );
    db.execute(
        "CREATE STREAM changes AS SELECT symbol, MAX(price) AS hi FROM trades
         GROUP BY symbol EMIT CHANGES",
    )
    .await
    .unwrap();
    // first_value cannot take retractions; a changelog must keep its weights.
    assert_eq!(
        code(
            db.execute("CREATE STREAM s AS SELECT first_value(hi) FROM changes EMIT CHANGES")
                .await
        ),
        ErrorCode::Unsupported
    );
    assert_eq!(
        code(
            db.execute("CREATE STREAM s AS SELECT symbol, hi FROM changes")
                .await
        ),
        ErrorCode::Unsupported
    );
    db.execute("CREATE STREAM kept AS SELECT symbol, hi * 2 AS twice, _weight FROM changes")
        .await
        .unwrap();
    db.execute(
        "CREATE STREAM by_symbol AS SELECT symbol, COUNT(*) AS n FROM changes
         GROUP BY symbol EMIT CHANGES",
    )
    .await
    .unwrap();
    let plan = db.explain("by_symbol").unwrap();
    assert!(plan.contains("<- stream changes"), "{plan}");
    assert_eq!(
        code(
            db.execute(
                "CREATE STREAM s WITH (late_data = 'side_output') AS SELECT symbol FROM trades"
            )
            .await
        ),
        ErrorCode::InvalidWindow
    );
    assert_eq!(
        code(
            db.execute("CREATE STREAM s WITH (late_data = 'keep') AS SELECT symbol FROM trades")
                .await
        ),
        ErrorCode::SqlSyntax
    );
    assert_eq!(
        code(
            db.execute("CREATE STREAM s WITH (parallelism = '4') AS SELECT symbol FROM trades")
                .await
        ),
        ErrorCode::Unsupported
    );
    assert_eq!(
        code(
            db.execute("CREATE SOURCE t4 (a BIGINT) WITH (idle_timeout = 'soon')")
                .await
        ),
        ErrorCode::InvalidConfig
    );
    assert_eq!(
        code(
            db.execute("CREATE SOURCE t4 (a BIGINT) WITH (topic = 'x')")
                .await
        ),
        ErrorCode::Unsupported
    );
    db.execute(
        "CREATE STREAM highs AS SELECT symbol, ts, MAX(price) AS p FROM trades GROUP BY symbol, ts EMIT CHANGES",
    )
    .await
    .unwrap();
    let ranked = "SELECT * FROM (SELECT *, ROW_NUMBER() OVER (PARTITION BY symbol ORDER BY price) AS rn FROM trades)";
    assert_eq!(
        code(db.execute(&format!("CREATE STREAM s AS {ranked}")).await),
        ErrorCode::Unsupported
    );
    assert_eq!(
        code(
            db.execute(&format!(
                "CREATE STREAM s AS {ranked} WHERE rn <= 3 EMIT ON WINDOW CLOSE"
            ))
            .await
        ),
        ErrorCode::InvalidWindow
    );
    for unsupported in [
        "SELECT NTILE(4) OVER (PARTITION BY symbol ORDER BY ts) FROM trades",
        "SELECT ROW_NUMBER() OVER (PARTITION BY symbol ORDER BY ts DESC) FROM trades",
        "SELECT SUM(price) OVER (PARTITION BY symbol ORDER BY ts GROUPS BETWEEN 1 PRECEDING AND CURRENT ROW) FROM trades",
        "SELECT SUM(price) OVER (PARTITION BY symbol ORDER BY ts ROWS BETWEEN 3 PRECEDING AND 1 PRECEDING) FROM trades",
        "SELECT LAG(price, volume) OVER (PARTITION BY symbol ORDER BY ts) FROM trades",
        // Over a changelog: a retraction could come after the row's value
        // was emitted. (Grouped by the event time, as in Nexmark q6, the
        // groups close and the result is append-only: that one runs.)
        "SELECT Q.symbol, LAG(Q.p) OVER (PARTITION BY Q.symbol ORDER BY Q.ts) FROM (SELECT symbol, MAX(ts) AS ts, MAX(price) AS p FROM trades GROUP BY symbol, volume) Q",
        "SELECT symbol, ROW_NUMBER() OVER (PARTITION BY symbol ORDER BY ts) FROM highs",
    ] {
        assert_eq!(
            code(
                db.execute(&format!("CREATE STREAM s AS {unsupported}"))
                    .await
            ),
            ErrorCode::Unsupported,
            "{unsupported}"
        );
    }
    assert_eq!(
        code(db.execute("CREATE STREAM s AS SELECT LAG(price) OVER (PARTITION BY symbol ORDER BY ts) FROM trades EMIT CHANGES").await),
        ErrorCode::InvalidWindow
    );
    assert_eq!(
        code(db.execute("CREATE SOURCE t5 (a BIGINT) WITH (alignment_group = 'g', alignment_max_drift = '1 s')").await),
        ErrorCode::InvalidWatermark
    );
    assert_eq!(
        code(
            db.execute(
                "CREATE SOURCE t5 (ts BIGINT, WATERMARK FOR ts AS ts) WITH (alignment_group = 'g')"
            )
            .await
        ),
        ErrorCode::InvalidConfig
    );
    db.execute("CREATE SOURCE t5 (ts BIGINT, WATERMARK FOR ts AS ts) WITH (alignment_group = 'g', alignment_max_drift = '1 s')").await.unwrap();
    assert_eq!(
        code(db.execute("CREATE SOURCE t6 (ts BIGINT, WATERMARK FOR ts AS ts) WITH (alignment_group = 'g', alignment_max_drift = '2 s')").await),
        ErrorCode::InvalidConfig
    );
    // Errors point into the SQL text.
    let err = db
        .execute("CREATE STREAM s AS\n  SELECT symbol, nope FROM trades")
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::UnknownObject);
    assert_eq!(
        err.context(),
        Some("2 |   SELECT symbol, nope FROM trades\n                     ^"),
        "{err}"
    );
    let err = db
        .execute("CREATE SOURCE q (a BIGINT) garbage")
        .await
        .unwrap_err();
    assert!(err.context().is_some_and(|c| c.contains('^')), "{err}");
    assert_eq!(code(db.source_untyped("nope")), ErrorCode::UnknownObject);
    assert_eq!(code(db.subscribe("nope")), ErrorCode::UnknownObject);

    db.execute("CREATE STREAM ok AS SELECT symbol FROM trades")
        .await
        .unwrap();
    let source = db.source_untyped("trades").unwrap();
    // Before start.
    assert_eq!(
        code(source.push(trades_batch(&trades(1, 3, 2, 0)))),
        ErrorCode::NotRunning
    );
    db.start().await.unwrap();
    assert_eq!(
        code(
            db.execute("CREATE STREAM late AS SELECT symbol FROM trades")
                .await
        ),
        ErrorCode::AlreadyStarted
    );
    // Wrong schema.
    let wrong = datafusion::arrow::array::RecordBatch::try_from_iter(vec![(
        "symbol",
        std::sync::Arc::new(datafusion::arrow::array::Int64Array::from(vec![1])) as _,
    )])
    .unwrap();
    assert_eq!(code(source.push(wrong)), ErrorCode::SchemaMismatch);
    db.shutdown().await.unwrap();
}

/// Columns pushed in another layout of the same values are converted at
/// the push: dictionary-encoded, view and large strings, dictionary-encoded
/// numbers and timestamps in another unit. Other types are `LDB-2001`,
/// and so is a NULL reaching a NOT NULL column through a dictionary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushed_columns_in_other_layouts_are_converted() {
    use datafusion::arrow::array::{
        Array, ArrayRef, DictionaryArray, Float64Array, Int64Array, LargeStringArray, StringArray,
        StringViewArray, TimestampMicrosecondArray, TimestampMillisecondArray,
        TimestampSecondArray,
    };
    use datafusion::arrow::datatypes::{Int32Type, Int8Type};
    use std::sync::Arc;

    let db = LaminarDB::open().unwrap();
    db.execute(
        "CREATE SOURCE quotes (symbol VARCHAR NOT NULL, venue VARCHAR, price DOUBLE NOT NULL, ts TIMESTAMP NOT NULL)",
    )
    .await
    .unwrap();
    db.execute(
        "CREATE STREAM b_quotes AS SELECT symbol, venue, price, ts FROM quotes WHERE symbol = 'B'",
    )
    .await
    .unwrap();
    let source = db.source_untyped("quotes").unwrap();
    let results = collect(db.subscribe("b_quotes").unwrap());
    db.start().await.unwrap();
    let batch = |columns: Vec<(&str, ArrayRef)>| {
        datafusion::arrow::array::RecordBatch::try_from_iter(columns).unwrap()
    };
    // Keys point at values out of order and more than once.
    let symbols: DictionaryArray<Int32Type> = vec!["B", "A", "B", "C", "B"].into_iter().collect();
    let venues: DictionaryArray<Int8Type> = vec![Some("x"), None, Some("y"), Some("x"), None]
        .into_iter()
        .collect();
    let prices: DictionaryArray<Int8Type> = DictionaryArray::new(
        vec![1i8, 0, 1, 0, 2].into(),
        Arc::new(Float64Array::from(vec![1.5, 2.5, 3.5])),
    );
    source
        .push(batch(vec![
            ("symbol", Arc::new(symbols)),
            ("venue", Arc::new(venues)),
            ("price", Arc::new(prices)),
            (
                "ts",
                Arc::new(TimestampMicrosecondArray::from(vec![
                    1_000_000, 2_000_000, 3_000_000, 4_000_000, 5_000_000,
                ])),
            ),
        ]))
        .unwrap();
    source
        .push(batch(vec![
            ("symbol", Arc::new(StringViewArray::from(vec!["B", "A"]))),
            (
                "venue",
                Arc::new(LargeStringArray::from(vec![Some("z"), None])),
            ),
            ("price", Arc::new(Float64Array::from(vec![9.0, 9.5]))),
            ("ts", Arc::new(TimestampSecondArray::from(vec![6, 7]))),
        ]))
        .unwrap();
    // A dictionary of numbers is not a string; a NULL symbol breaks NOT NULL.
    let numbers: DictionaryArray<Int32Type> =
        DictionaryArray::new(vec![0i32].into(), Arc::new(Int64Array::from(vec![7])));
    let with_null: DictionaryArray<Int32Type> = vec![None::<&str>].into_iter().collect();
    for symbol in [Arc::new(numbers) as ArrayRef, Arc::new(with_null)] {
        let error = source
            .push(batch(vec![
                ("symbol", symbol),
                ("venue", Arc::new(StringArray::from(vec![Some("x")]))),
                ("price", Arc::new(Float64Array::from(vec![1.0]))),
                ("ts", Arc::new(TimestampMillisecondArray::from(vec![8_000]))),
            ]))
            .unwrap_err();
        assert_eq!(error.code(), ErrorCode::SchemaMismatch, "{error}");
    }
    db.shutdown().await.unwrap();
    let got = results.join().unwrap();
    let mut rows: Vec<(String, Option<String>, f64, i64)> = Vec::new();
    for b in &got {
        let symbol = b.column(0).as_any().downcast_ref::<StringArray>().unwrap();
        let venue = b.column(1).as_any().downcast_ref::<StringArray>().unwrap();
        let price = b.column(2).as_any().downcast_ref::<Float64Array>().unwrap();
        let ms = datafusion::arrow::datatypes::DataType::Timestamp(
            datafusion::arrow::datatypes::TimeUnit::Millisecond,
            None,
        );
        let ts = datafusion::arrow::compute::cast(b.column(3), &ms).unwrap();
        let ts = ts
            .as_any()
            .downcast_ref::<TimestampMillisecondArray>()
            .unwrap();
        for i in 0..b.num_rows() {
            let venue = (!venue.is_null(i)).then(|| venue.value(i).to_owned());
            rows.push((
                symbol.value(i).to_owned(),
                venue,
                price.value(i),
                ts.value(i),
            ));
        }
    }
    rows.sort_by_key(|r| r.3);
    let b = |venue: Option<&str>, price, ts| ("B".to_owned(), venue.map(str::to_owned), price, ts);
    assert_eq!(
        rows,
        vec![
            b(Some("x"), 2.5, 1_000),
            b(Some("y"), 2.5, 3_000),
            b(None, 3.5, 5_000),
            b(Some("z"), 9.0, 6_000),
        ]
    );
}

/// With Backpressure::Error a full ring is an error and nothing of the
/// batch is taken; with Block the pusher waits for the subscriber.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backpressure_policies() {
    let db = LaminarDB::builder()
        .shards(2)
        .ring_capacity(2)
        .backpressure(Backpressure::Error)
        .build()
        .unwrap();
    db.execute(&format!(
        "{TRADES_DDL}; CREATE STREAM s AS SELECT symbol, price FROM trades"
    ))
    .await
    .unwrap();
    // A subscriber that never reads: output rings fill, shards stall, then
    // the ingest rings fill.
    let mut sub = db.subscribe("s").unwrap();
    let source = db.source_untyped("trades").unwrap();
    db.start().await.unwrap();
    let batch = trades_batch(&trades(3, 10, 4, 0));
    let mut accepted = 0;
    let err = loop {
        match source.push(batch.clone()) {
            Ok(()) => accepted += 1,
            Err(e) => break e,
        }
        assert!(accepted < 1_000, "ring never filled");
    };
    assert_eq!(err.code(), ErrorCode::Backpressure);
    // Everything accepted is delivered once the subscriber reads.
    let reader = std::thread::spawn(move || {
        let mut rows = 0;
        while let Some(b) = sub.recv() {
            rows += b.num_rows();
        }
        rows
    });
    db.shutdown().await.unwrap();
    assert_eq!(reader.join().unwrap(), accepted * 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_pushers_and_late_subscriber() {
    let db = LaminarDB::builder().shards(2).build().unwrap();
    db.execute(&format!(
        "{TRADES_DDL}; CREATE STREAM c AS SELECT symbol, COUNT(*) AS n FROM trades GROUP BY symbol, tumble(ts, INTERVAL '1' HOUR)"
    ))
    .await
    .unwrap();
    let source = db.source_untyped("trades").unwrap();
    db.start().await.unwrap();
    let mut sub = db.subscribe("c").unwrap();
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let handle = source.clone();
            std::thread::spawn(move || {
                for i in 0..50 {
                    handle
                        .push(trades_batch(&trades(t * 100 + i, 100, 5, 0)))
                        .unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    source.watermark(i64::MAX).unwrap();
    let mut total = 0i64;
    loop {
        let b = match tokio::time::timeout(Duration::from_secs(5), sub.next()).await {
            Ok(Some(b)) => b,
            Ok(None) => break,
            Err(_) => panic!(
                "timed out at total {total}: {:?} finished={}",
                db.metrics(),
                sub.is_finished()
            ),
        };
        let n = b
            .column(1)
            .as_any()
            .downcast_ref::<datafusion::arrow::array::Int64Array>()
            .unwrap();
        total += n.values().iter().sum::<i64>();
        if total == 4 * 50 * 100 {
            break;
        }
    }
    assert_eq!(total, 20_000);
    db.shutdown().await.unwrap();
    assert!(sub.next().await.is_none());
    assert!(db.explain("c").unwrap().contains("Keys([0])"));
}

/// An expression that fails on a shard is reported with LDB-3001; the
/// stream skips that batch and keeps running for later batches.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shard_errors_are_reported_not_swallowed() {
    let db = LaminarDB::builder().shards(1).build().unwrap();
    db.execute(&format!(
        "{TRADES_DDL}; CREATE STREAM s AS SELECT symbol, 100 / (volume - 7) AS x FROM trades"
    ))
    .await
    .unwrap();
    let mut sub = db.subscribe("s").unwrap();
    let source = db.source_untyped("trades").unwrap();
    db.start().await.unwrap();
    let row = |volume| Trade {
        symbol: "A".into(),
        price: 1.0,
        volume,
        ts: 1,
    };
    source.push(trades_batch(&[row(7)])).unwrap(); // divides by zero
    source.push(trades_batch(&[row(8)])).unwrap();
    db.shutdown().await.unwrap();
    let mut rows = 0;
    while let Some(b) = sub.recv() {
        rows += b.num_rows();
    }
    assert_eq!(rows, 1);
    let errors = db.errors();
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].code(), ErrorCode::Execution);
    assert!(
        errors[0].message().contains("Divide by zero"),
        "{}",
        errors[0]
    );
}

/// EMIT CHANGES, hand-computed: a new group emits +1, a changed group
/// emits -1 of exactly its previous row and +1 of the new one, an
/// unchanged group emits nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emit_changes_retracts_exactly_what_changed() {
    use datafusion::arrow::array::{Float64Array, Int64Array, StringArray};
    let db = LaminarDB::builder().shards(1).build().unwrap();
    db.execute(TRADES_DDL).await.unwrap();
    db.execute(
        "CREATE STREAM hi AS SELECT symbol, MAX(price) AS hi FROM trades
         GROUP BY symbol EMIT CHANGES",
    )
    .await
    .unwrap();
    let schema = db.stream_schema("hi").unwrap();
    assert_eq!(schema.field(2).name(), "_weight");
    let mut sub = db.subscribe("hi").unwrap();
    let source = db.source_untyped("trades").unwrap();
    db.start().await.unwrap();
    let trade = |symbol: &str, price: f64| Trade {
        symbol: symbol.into(),
        price,
        volume: 1,
        ts: 0,
    };
    let mut next = || {
        let b = sub
            .recv_timeout(Duration::from_secs(10))
            .expect("in time")
            .expect("a batch");
        let symbols = b.column(0).as_any().downcast_ref::<StringArray>().unwrap();
        let prices = b.column(1).as_any().downcast_ref::<Float64Array>().unwrap();
        let weights = b.column(2).as_any().downcast_ref::<Int64Array>().unwrap();
        (0..b.num_rows())
            .map(|i| {
                (
                    symbols.value(i).to_string(),
                    prices.value(i),
                    weights.value(i),
                )
            })
            .collect::<Vec<_>>()
    };
    source.push(trades_batch(&[trade("A", 10.0)])).unwrap();
    assert_eq!(next(), vec![("A".into(), 10.0, 1)]);
    // MAX stays 10: nothing.
    source.push(trades_batch(&[trade("A", 5.0)])).unwrap();
    source
        .push(trades_batch(&[
            trade("A", 20.0),
            trade("B", 1.0),
            trade("A", 15.0),
        ]))
        .unwrap();
    // The retraction first, then the new rows (one batch or several).
    let mut changes = next();
    while changes.len() < 3 {
        changes.extend(next());
    }
    assert_eq!(
        changes,
        vec![
            ("A".into(), 10.0, -1),
            ("A".into(), 20.0, 1),
            ("B".into(), 1.0, 1)
        ]
    );
    db.shutdown().await.unwrap();
    assert!(sub.recv().is_none());
}

/// Exchanges with one-slot rings on two shards, two exchange levels deep:
/// shards pushing to each other through full rings must neither deadlock
/// nor lose rows, and shutdown must drain every level in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exchanges_with_tiny_rings_drain_in_order() {
    let db = LaminarDB::builder()
        .shards(2)
        .ring_capacity(1)
        .build()
        .unwrap();
    db.execute(&format!(
        "{TRADES_DDL};
         CREATE STREAM kept AS SELECT * FROM trades WHERE volume > 10;
         CREATE STREAM per_symbol AS
            SELECT symbol, tumble(ts, INTERVAL '1' SECOND) AS w, COUNT(*) AS n
            FROM kept GROUP BY symbol, tumble(ts, INTERVAL '1' SECOND);
         CREATE STREAM totals AS
            SELECT tumble(w, INTERVAL '1' SECOND) AS w, SUM(n) AS n
            FROM per_symbol GROUP BY tumble(w, INTERVAL '1' SECOND)"
    ))
    .await
    .unwrap();
    let mut totals = db.subscribe("totals").unwrap();
    let source = db.source_untyped("trades").unwrap();
    db.start().await.unwrap();
    let rows = trades(3, 20_000, 50, 0);
    let expected = rows.iter().filter(|r| r.volume > 10).count() as i64;
    let reader = std::thread::spawn(move || {
        let mut sum = 0i64;
        while let Some(batch) = totals.recv() {
            let n = batch
                .column(1)
                .as_any()
                .downcast_ref::<datafusion::arrow::array::Int64Array>()
                .unwrap();
            sum += n.values().iter().sum::<i64>();
        }
        sum
    });
    for batch in random_batches(&rows, 3, 64) {
        source.push(batch).unwrap();
    }
    source.watermark(i64::MAX).unwrap();
    db.shutdown().await.unwrap();
    assert_eq!(reader.join().unwrap(), expected);
    assert!(db.errors().is_empty(), "{:?}", db.errors());
}

/// A source partition that goes silent holds the watermark back (windows
/// stay open) unless the source has an idle timeout; then it stops
/// counting until it pushes again, and what it pushes behind the
/// watermark is late.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_partitions_stop_holding_the_watermark_back() {
    for idle_timeout in [None, Some("200 ms")] {
        let db = LaminarDB::builder().shards(2).build().unwrap();
        let with = idle_timeout.map_or(String::new(), |t| format!(" WITH (idle_timeout = '{t}')"));
        db.execute(&format!(
            "{TRADES_DDL}{with};
             CREATE STREAM counts AS SELECT symbol, COUNT(*) AS n FROM trades
             GROUP BY symbol, tumble(ts, INTERVAL '1' MINUTE)"
        ))
        .await
        .unwrap();
        let mut counts = db.subscribe("counts").unwrap();
        let busy = db.source_untyped("trades").unwrap();
        let silent = db.source_untyped("trades").unwrap();
        db.start().await.unwrap();
        let trade = |ts: i64| Trade {
            symbol: "A".into(),
            price: 1.0,
            volume: 1,
            ts,
        };
        silent.push(trades_batch(&[trade(1_000)])).unwrap();
        busy.push(trades_batch(&[trade(2_000), trade(100_000)]))
            .unwrap();
        let first = counts.recv_timeout(Duration::from_secs(1));
        match idle_timeout {
            None => assert!(first.is_err(), "the silent partition holds minute 0 open"),
            Some(_) => {
                let batch = first.expect("closed once idle").expect("a batch");
                assert_eq!(batch.num_rows(), 1);
                // Back from silence, behind the watermark: late.
                silent.push(trades_batch(&[trade(3_000)])).unwrap();
            }
        }
        drop((busy, silent));
        db.shutdown().await.unwrap();
        let late = db.metrics().streams[0].late_rows;
        assert_eq!(late, u64::from(idle_timeout.is_some()));
    }
}

/// Sources in one alignment group: the one running ahead by more than the
/// drift waits (Block) or is refused (Error) until the other catches up; a
/// silent source stops holding the group back after its idle timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alignment_groups_hold_back_the_source_that_runs_ahead() {
    let ddl = |idle: &str| {
        format!(
            "CREATE SOURCE fast (k BIGINT NOT NULL, ts BIGINT NOT NULL,
                 WATERMARK FOR ts AS ts) WITH (alignment_group = 'g', alignment_max_drift = '10 s'{idle});
             CREATE SOURCE slow (k BIGINT NOT NULL, ts BIGINT NOT NULL,
                 WATERMARK FOR ts AS ts) WITH (alignment_group = 'g', alignment_max_drift = '10 s'{idle});
             CREATE STREAM counts AS SELECT k, COUNT(*) AS n FROM fast GROUP BY k, tumble(ts, INTERVAL '1' SECOND)"
        )
    };
    let rows = |ts: i64| {
        datafusion::arrow::array::RecordBatch::try_from_iter(vec![
            (
                "k",
                std::sync::Arc::new(datafusion::arrow::array::Int64Array::from(vec![1])) as _,
            ),
            (
                "ts",
                std::sync::Arc::new(datafusion::arrow::array::Int64Array::from(vec![ts])) as _,
            ),
        ])
        .unwrap()
    };
    // Error policy: refused while too far ahead, accepted once within the drift.
    let db = LaminarDB::builder()
        .shards(1)
        .backpressure(Backpressure::Error)
        .build()
        .unwrap();
    db.execute(&ddl("")).await.unwrap();
    let (fast, slow) = (
        db.source_untyped("fast").unwrap(),
        db.source_untyped("slow").unwrap(),
    );
    db.start().await.unwrap();
    fast.push(rows(0)).unwrap(); // first batch: establishes the position
    slow.push(rows(0)).unwrap();
    fast.push(rows(9_000)).unwrap();
    let err = fast.push(rows(30_000)).unwrap_err();
    assert_eq!(err.code(), ErrorCode::Backpressure, "{err}");
    slow.push(rows(19_000)).unwrap();
    fast.push(rows(29_000)).unwrap();
    db.shutdown().await.unwrap();

    // Block policy: the pusher waits until the slow source moves.
    let db = LaminarDB::builder().shards(1).build().unwrap();
    db.execute(&ddl("")).await.unwrap();
    let (fast, slow) = (
        db.source_untyped("fast").unwrap(),
        db.source_untyped("slow").unwrap(),
    );
    db.start().await.unwrap();
    fast.push(rows(0)).unwrap();
    slow.push(rows(0)).unwrap();
    let (pushed, done) = std::sync::mpsc::channel();
    let pusher = std::thread::spawn(move || {
        fast.push(rows(60_000)).unwrap();
        pushed.send(()).unwrap();
    });
    assert!(
        done.recv_timeout(Duration::from_millis(300)).is_err(),
        "60 s ahead of the slow source: the push waits"
    );
    // Also far ahead of where the fast source is, but not of where it is
    // going: no deadlock.
    slow.push(rows(55_000)).unwrap();
    done.recv_timeout(Duration::from_secs(10))
        .expect("released once the slow source caught up");
    pusher.join().unwrap();
    db.shutdown().await.unwrap();

    // A silent source stops holding the group back after its idle timeout.
    let db = LaminarDB::builder().shards(1).build().unwrap();
    db.execute(&ddl(", idle_timeout = '100 ms'")).await.unwrap();
    let fast = db.source_untyped("fast").unwrap();
    db.start().await.unwrap();
    fast.push(rows(0)).unwrap();
    fast.push(rows(60_000)).unwrap();
    db.shutdown().await.unwrap();
}

/// Per-key watermarks (`watermark_key`): symbol B reports 90 s behind
/// symbol A. With one watermark per handle, A moves it and B's rows are
/// late; with one per symbol none is, and the result equals the batch
/// answer (1 and 2 shards, random batch sizes). Past
/// `watermark_key_skew`, B stops holding the watermark back and its rows
/// are late again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_key_watermarks_keep_a_lagging_key_on_time() {
    let trade = |symbol: &str, ts: i64| Trade {
        symbol: symbol.into(),
        price: 1.0,
        volume: ts / 1000,
        ts,
    };
    // B is known from the first row: a key first seen behind the
    // watermark is late like any row behind it.
    let mut rows = Vec::new();
    for second in 100..400i64 {
        rows.push(trade("B", (second - 90) * 1000));
        rows.push(trade("A", second * 1000));
    }
    let query = "SELECT symbol, CAST(tumble(ts, INTERVAL '1' MINUTE) AS BIGINT) AS minute, \
                 COUNT(*) AS n, SUM(volume) AS volume \
                 FROM trades GROUP BY symbol, tumble(ts, INTERVAL '1' MINUTE)";
    let want = run_batch(query, "trades", vec![trades_batch(&rows)], trades_schema()).await;
    let options = [
        ("", true),
        (" WITH (watermark_key = 'symbol')", false),
        (
            " WITH (watermark_key = 'symbol', watermark_key_skew = '30 seconds')",
            true,
        ),
    ];
    for (with, lagging_rows_late) in options {
        for (shards, seed) in [(1, 1), (2, 2), (2, 3)] {
            let ddl = format!("{TRADES_DDL}{with}; CREATE STREAM counts AS {query}");
            let batches = random_batches(&rows, seed, 64);
            let (got, metrics) = run_stream(&ddl, "trades", "counts", batches, shards).await;
            let late = metrics.streams[0].late_rows;
            if lagging_rows_late {
                assert!(late > 250, "{with}: only {late} late rows");
            } else {
                assert_eq!(late, 0, "{with}, {shards} shards");
                assert_same_rows(&got, &want);
            }
        }
    }
}

/// `watermark_key` errors: no WATERMARK, unknown column, a type that
/// cannot key, a skew without a key, and together with alignment.
#[tokio::test]
async fn per_key_watermark_options_are_checked() {
    let cases = [
        (
            "CREATE SOURCE s (k BIGINT, ts BIGINT) WITH (watermark_key = 'k')",
            "LDB-1005",
            "no WATERMARK",
        ),
        (
            "CREATE SOURCE s (k BIGINT, ts BIGINT, WATERMARK FOR ts AS ts) WITH (watermark_key = 'nope')",
            "LDB-1005",
            "'nope'",
        ),
        (
            "CREATE SOURCE s (k DOUBLE, ts BIGINT, WATERMARK FOR ts AS ts) WITH (watermark_key = 'k')",
            "LDB-1005",
            "only integer and string",
        ),
        (
            "CREATE SOURCE s (k BIGINT, ts BIGINT, WATERMARK FOR ts AS ts) WITH (watermark_key_skew = '1 s')",
            "LDB-5002",
            "needs watermark_key",
        ),
        (
            "CREATE SOURCE s (k BIGINT, ts BIGINT, WATERMARK FOR ts AS ts) \
             WITH (watermark_key = 'k', alignment_group = 'g', alignment_max_drift = '1 s')",
            "LDB-1004",
            "alignment group",
        ),
    ];
    for (sql, code, says) in cases {
        let db = LaminarDB::builder().shards(1).build().unwrap();
        let error = db.execute(sql).await.unwrap_err().to_string();
        assert!(
            error.contains(code) && error.contains(says),
            "{sql}: {error}"
        );
    }
}

/// Rows of `batches` whose index is `k` modulo `n`: one generator
/// partition's share.
struct Share {
    batches: Vec<datafusion::arrow::array::RecordBatch>,
    next: usize,
    step: usize,
}

impl laminar_db::Generator for Share {
    fn next_batch(&mut self) -> Option<(usize, datafusion::arrow::array::RecordBatch)> {
        let batch = self.batches.get(self.next)?.clone();
        self.next += self.step;
        Some((0, batch))
    }
}

/// Input generated inside the shards gives the batch answer, at 1 and 2
/// shards, with rings so small that the generators wait on backpressure
/// (theirs and the exchange's).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generators_inside_the_shards_give_the_batch_answer() {
    let query = "SELECT symbol, SUM(price * CAST(volume AS DOUBLE)) AS notional, COUNT(*) AS trades
        FROM trades GROUP BY symbol, tumble(ts, INTERVAL '1' SECOND)";
    let rows = trades(41, 20_000, 13, 2_000);
    let batches = random_batches(&rows, 42, 300);
    let expected = run_batch(query, "trades", batches.clone(), trades_schema()).await;
    for shards in [1, 2] {
        let db = LaminarDB::builder()
            .shards(shards)
            .ring_capacity(2)
            .build()
            .unwrap();
        db.execute(TRADES_DDL).await.unwrap();
        db.execute(&format!("CREATE STREAM notional AS {query}"))
            .await
            .unwrap();
        let collector = collect(db.subscribe("notional").unwrap());
        db.start().await.unwrap();
        let generation = db
            .generate(&["trades"], |k, n| Share {
                batches: batches.clone(),
                next: k,
                step: n,
            })
            .unwrap();
        assert_eq!(generation.finished().await.unwrap(), 20_000);
        assert_eq!(generation.rows(), 20_000);
        db.shutdown().await.unwrap();
        let got = collector.join().unwrap();
        assert!(db.errors().is_empty(), "shard errors: {:?}", db.errors());
        assert!(row_count(&got) > 100, "{shards} shards");
        assert_same_rows(&got, &expected);
    }
}

/// All of the input in the last partition, which starts only once the
/// others have ended (their generators are dropped after their partitions'
/// end-of-input watermarks went out).
struct Late {
    batches: Vec<datafusion::arrow::array::RecordBatch>,
    /// Set when an early partition's generator is dropped.
    ended: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// The last partition waits for this before its first batch.
    waits: bool,
}

impl laminar_db::Generator for Late {
    fn next_batch(&mut self) -> Option<(usize, datafusion::arrow::array::RecordBatch)> {
        if std::mem::take(&mut self.waits) {
            // Blocking its shard, on purpose: the others end first.
            eventually(|| self.ended.load(std::sync::atomic::Ordering::Acquire));
        }
        (!self.batches.is_empty()).then(|| (0, self.batches.remove(0)))
    }
}

impl Drop for Late {
    fn drop(&mut self) {
        if self.batches.is_empty() && !self.waits {
            self.ended.store(true, std::sync::atomic::Ordering::Release);
        }
    }
}

/// A partition that ends before another starts does not close the windows
/// ahead of the other's rows: every partition holds the watermark back
/// from the start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_generator_partition_that_starts_late_loses_no_rows() {
    let query = "SELECT symbol, COUNT(*) AS trades FROM trades
        GROUP BY symbol, tumble(ts, INTERVAL '1' SECOND)";
    let rows = trades(43, 5_000, 7, 0);
    let batches = random_batches(&rows, 44, 500);
    let expected = run_batch(query, "trades", batches.clone(), trades_schema()).await;
    let db = LaminarDB::builder().shards(2).build().unwrap();
    db.execute(TRADES_DDL).await.unwrap();
    db.execute(&format!("CREATE STREAM counts AS {query}"))
        .await
        .unwrap();
    let collector = collect(db.subscribe("counts").unwrap());
    db.start().await.unwrap();
    let ended = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let generation = db
        .generate(&["trades"], |k, n| Late {
            batches: if k + 1 == n {
                batches.clone()
            } else {
                Vec::new()
            },
            ended: std::sync::Arc::clone(&ended),
            waits: k + 1 == n,
        })
        .unwrap();
    assert_eq!(generation.finished().await.unwrap(), 5_000);
    db.shutdown().await.unwrap();
    let got = collector.join().unwrap();
    let late: u64 = db.metrics().streams.iter().map(|s| s.late_rows).sum();
    assert_eq!(late, 0);
    assert_same_rows(&got, &expected);
}

/// A generator that never ends.
struct Forever(datafusion::arrow::array::RecordBatch);

impl laminar_db::Generator for Forever {
    fn next_batch(&mut self) -> Option<(usize, datafusion::arrow::array::RecordBatch)> {
        Some((0, self.0.clone()))
    }
}

/// What a generator gets wrong is an error with a code, from `finished`
/// and in `errors()`; a shutdown stops a generator that never ends, even
/// with its partitions waiting on each other's full rings (one-slot rings
/// and `Backpressure::Error`, which generators wait through).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generator_errors_have_codes() {
    let rows = trades(7, 100, 3, 0);
    let good = trades_batch(&rows);
    let code = |r: laminar_db::Result<laminar_db::Generation>| r.unwrap_err().code();

    let db = LaminarDB::builder()
        .shards(2)
        .ring_capacity(1)
        .backpressure(Backpressure::Error)
        .build()
        .unwrap();
    db.execute(TRADES_DDL).await.unwrap();
    db.execute("CREATE STREAM big AS SELECT * FROM trades WHERE volume > 10")
        .await
        .unwrap();
    let before = db.generate(&["trades"], |_, _| Forever(good.clone()));
    assert_eq!(code(before), ErrorCode::NotRunning);
    let results = collect(db.subscribe("big").unwrap());
    db.start().await.unwrap();
    assert_eq!(
        code(db.generate(&["nope"], |_, _| Forever(good.clone()))),
        ErrorCode::UnknownObject
    );
    assert_eq!(
        code(db.generate(&[], |_, _| Forever(good.clone()))),
        ErrorCode::InvalidConfig
    );

    // A batch of another shape: LDB-2001, nothing of it accepted.
    let wrong = datafusion::arrow::array::RecordBatch::try_from_iter(vec![(
        "symbol",
        std::sync::Arc::new(datafusion::arrow::array::StringArray::from(vec!["A"])) as _,
    )])
    .unwrap();
    let generation = db
        .generate(&["trades"], |_, _| Share {
            batches: vec![wrong.clone()],
            next: 0,
            step: 1,
        })
        .unwrap();
    let error = generation.finished().await.unwrap_err();
    assert_eq!(error.code(), ErrorCode::SchemaMismatch, "{error}");
    assert_eq!(generation.rows(), 0);

    // A source index past the list: LDB-4002.
    struct Stray;
    impl laminar_db::Generator for Stray {
        fn next_batch(&mut self) -> Option<(usize, datafusion::arrow::array::RecordBatch)> {
            Some((3, trades_batch(&[])))
        }
    }
    let stray = db.generate(&["trades"], |_, _| Stray).unwrap();
    assert_eq!(
        stray.finished().await.unwrap_err().code(),
        ErrorCode::InvalidInput
    );
    let codes: Vec<ErrorCode> = db.errors().iter().map(|e| e.code()).collect();
    assert!(codes.contains(&ErrorCode::SchemaMismatch), "{codes:?}");
    assert!(codes.contains(&ErrorCode::InvalidInput), "{codes:?}");

    // One that never ends: a shutdown stops it (LDB-2003) and returns.
    let forever = db
        .generate(&["trades"], |_, _| Forever(good.clone()))
        .unwrap();
    wait_until("the generator to run", async || forever.rows() > 10_000).await;
    tokio::time::timeout(Duration::from_secs(60), db.shutdown())
        .await
        .expect("shutdown returns while a generator runs")
        .unwrap();
    // Two tasks waiting on the same generation both hear its end.
    let (stopped, again) = tokio::time::timeout(
        Duration::from_secs(60),
        futures::future::join(forever.finished(), forever.finished()),
    )
    .await
    .expect("every partition ends once the shards stop");
    assert_eq!(again.unwrap_err().code(), ErrorCode::NotRunning);
    let stopped = stopped.unwrap_err();
    assert_eq!(stopped.code(), ErrorCode::NotRunning, "{stopped}");
    // Every row the shards accepted reaches the subscriber: the shutdown
    // drains what the generator had handed over.
    let accepted = forever.rows();
    assert_eq!(accepted % good.num_rows() as u64, 0, "whole batches only");
    let per_batch = rows.iter().filter(|t| t.volume > 10).count() as u64;
    assert_eq!(
        row_count(&results.join().unwrap()) as u64,
        accepted / good.num_rows() as u64 * per_batch
    );

    // Durable databases refuse generators: a restart would generate the
    // rows again.
    let dir = tempfile::tempdir().unwrap();
    let durable = LaminarDB::builder()
        .shards(1)
        .storage_dir(dir.path())
        .durability(laminar_db::Durability::Async)
        .build()
        .unwrap();
    durable.execute(TRADES_DDL).await.unwrap();
    durable
        .execute("CREATE STREAM big AS SELECT * FROM trades WHERE volume > 10")
        .await
        .unwrap();
    durable.start().await.unwrap();
    assert_eq!(
        code(durable.generate(&["trades"], |_, _| Forever(good.clone()))),
        ErrorCode::Unsupported
    );
    durable.shutdown().await.unwrap();
}

/// A push racing a shutdown is taken or refused (`LDB-2003`), never
/// accepted and then dropped: every row of every push that returned `Ok`
/// reaches the subscriber. Two shards, round-robin, tiny rings, the
/// shutdown at a different moment each round.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_racing_a_shutdown_are_taken_or_refused() {
    for round in 0..20u64 {
        let db = LaminarDB::builder()
            .shards(2)
            .ring_capacity(2)
            .build()
            .unwrap();
        db.execute(TRADES_DDL).await.unwrap();
        db.execute("CREATE STREAM big AS SELECT * FROM trades WHERE volume > 10")
            .await
            .unwrap();
        let results = collect(db.subscribe("big").unwrap());
        let source = db.source_untyped("trades").unwrap();
        db.start().await.unwrap();
        let rows = trades(round, 100, 3, 0);
        let per_batch = rows.iter().filter(|t| t.volume > 10).count();
        let batch = trades_batch(&rows);
        let progress = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let pushed = std::sync::Arc::clone(&progress);
        let pusher = std::thread::spawn(move || {
            let mut accepted = 0usize;
            loop {
                match source.push(batch.clone()) {
                    Ok(()) => {
                        accepted += 1;
                        pushed.store(accepted, std::sync::atomic::Ordering::Relaxed);
                    }
                    Err(e) => {
                        assert_eq!(e.code(), ErrorCode::NotRunning, "{e}");
                        return accepted;
                    }
                }
            }
        });
        // A different moment each round: after 1, 9, 17, ... accepted
        // pushes.
        let pushes = 1 + 8 * round as usize;
        wait_until("the pusher to get going", async || {
            progress.load(std::sync::atomic::Ordering::Relaxed) >= pushes
        })
        .await;
        db.shutdown().await.unwrap();
        let accepted = pusher.join().unwrap();
        assert_eq!(
            row_count(&results.join().unwrap()),
            accepted * per_batch,
            "round {round}"
        );
    }
}

/// Blocks its shard until told to go on, then ends: holds the shard busy
/// while rows queue in its lanes.
struct Hold {
    holding: std::sync::mpsc::Sender<()>,
    release: Option<std::sync::mpsc::Receiver<()>>,
}

impl laminar_db::Generator for Hold {
    fn next_batch(&mut self) -> Option<(usize, datafusion::arrow::array::RecordBatch)> {
        if let Some(release) = self.release.take() {
            let _ = self.holding.send(());
            let _ = release.recv();
        }
        None
    }
}

/// Rows a shard finds waiting in its lanes run as one batch: ten one-row
/// pushes queued while the shard was busy reach an EMIT CHANGES count as
/// one update, where one by one they made ten (nine of them retracted).
/// (Ten messages fit in one pass over a lane, and a source without a
/// watermark sends no watermark messages between them.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_waiting_in_the_lanes_run_as_one_batch() {
    let db = LaminarDB::builder().shards(1).build().unwrap();
    db.execute(
        "CREATE SOURCE s (k VARCHAR NOT NULL, v BIGINT NOT NULL);
         CREATE STREAM c AS SELECT k, COUNT(*) AS n, SUM(v) AS total FROM s
             GROUP BY k EMIT CHANGES",
    )
    .await
    .unwrap();
    let collector = collect(db.subscribe("c").unwrap());
    let handle = db.source_untyped("s").unwrap();
    db.start().await.unwrap();
    let (holding, held) = std::sync::mpsc::channel();
    let (release, released) = std::sync::mpsc::channel();
    let mut released = Some(released);
    let generation = db
        .generate(&["s"], |_, _| Hold {
            holding: holding.clone(),
            release: released.take(),
        })
        .unwrap();
    held.recv().unwrap();
    for v in 1..=10i64 {
        let batch = datafusion::arrow::array::RecordBatch::try_from_iter(vec![
            (
                "k",
                std::sync::Arc::new(datafusion::arrow::array::StringArray::from(vec!["a"])) as _,
            ),
            (
                "v",
                std::sync::Arc::new(datafusion::arrow::array::Int64Array::from(vec![v])) as _,
            ),
        ])
        .unwrap();
        handle.push(batch).unwrap();
    }
    release.send(()).unwrap();
    generation.finished().await.unwrap();
    db.shutdown().await.unwrap();
    let got = collector.join().unwrap();
    let rows: usize = got.iter().map(|b| b.num_rows()).sum();
    assert_eq!(rows, 1, "{got:?}");
    let batch = &got.iter().find(|b| b.num_rows() == 1).unwrap();
    let n = batch.column_by_name("n").unwrap();
    let total = batch.column_by_name("total").unwrap();
    let int = |a: &datafusion::arrow::array::ArrayRef| {
        datafusion::arrow::compute::cast(a, &datafusion::arrow::datatypes::DataType::Int64)
            .unwrap()
            .as_any()
            .downcast_ref::<datafusion::arrow::array::Int64Array>()
            .unwrap()
            .value(0)
    };
    assert_eq!((int(n), int(total)), (10, 55));
}
