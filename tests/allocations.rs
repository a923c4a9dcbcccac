//! Hot-path discipline, measured on the shard thread and on the pushing
//! thread (feature `allocation-tracking`: the engine's counting allocator
//! tags each shard thread, and this test tags the thread it pushes from;
//! the subscriber is not counted).
//!
//! The same number of batches goes through a stream with 1, 100 and 1,000
//! rows each. Anything allocated per row would add 900 allocations per
//! batch between the last two; stateless streams may add a few (Arrow
//! buffers doubling as they fill), windows and joins a little more (a new
//! window's state, buckets), within a stated bound.

mod common;

use common::*;
use laminar_db::allocations::{shard_allocations, track_current_thread, MAX_TRACKED_SHARDS};
use laminar_db::LaminarDB;

const BATCHES: usize = 200;

/// The counter slot of the thread that pushes the measured batches (no
/// shard uses it).
const PUSHER: usize = MAX_TRACKED_SHARDS - 1;

/// Allocations while `BATCHES` batches of `rows_per_batch` rows go through
/// `stream`.
struct Counted {
    /// On the shard thread (routing's hand-off, processing, emitting).
    shard: u64,
    /// On the pushing thread (checks, routing, the ring push).
    pusher: u64,
}

/// Only one database runs at a time in this binary, so shard 0's count is
/// this database's.
async fn allocations(ddl: &str, rows_per_batch: usize) -> Counted {
    let db = LaminarDB::builder().shards(1).build().unwrap();
    db.execute(ddl).await.unwrap();
    let sub = db.subscribe("s").unwrap();
    let handle = db.source_untyped("trades").unwrap();
    let quotes = db.source_untyped("quotes").ok();
    db.start().await.unwrap();
    let collector = collect(sub);
    // Few keys, so that keyed state is created in the warm-up batches.
    let all = trades(7, (BATCHES + 20) * rows_per_batch, 4, 0);
    let batches: Vec<_> = all.chunks(rows_per_batch).map(trades_batch).collect();
    let (warm_up, measured) = batches.split_at(20);
    for b in warm_up {
        handle.push(b.clone()).unwrap();
        if let Some(q) = &quotes {
            q.push(b.clone()).unwrap();
        }
    }
    let sides = if quotes.is_some() { 2 } else { 1 };
    let processed = |batches: usize| {
        // `rows_in` counts a batch as its processing starts: the last
        // batch may still be running when this returns, which moves at
        // most one batch's allocations in 200 across the line.
        let db = &db;
        move || db.metrics().streams[0].rows_in as usize >= sides * batches * rows_per_batch
    };
    eventually(processed(warm_up.len()));
    let before = shard_allocations(1)[0].allocations;
    // The measured pushes come from a thread of their own, counted too.
    let measured = measured.to_vec();
    let (handle, pusher) = std::thread::spawn(move || {
        track_current_thread(PUSHER);
        let before = shard_allocations(PUSHER + 1)[PUSHER].allocations;
        for b in &measured {
            handle.push(b.clone()).unwrap();
            if let Some(q) = &quotes {
                q.push(b.clone()).unwrap();
            }
        }
        let pushed = shard_allocations(PUSHER + 1)[PUSHER].allocations - before;
        (handle, pushed)
    })
    .join()
    .unwrap();
    eventually(processed(BATCHES + 20));
    let shard = shard_allocations(1)[0].allocations - before;
    handle.watermark(i64::MAX).unwrap();
    db.shutdown().await.unwrap();
    collector.join().unwrap();
    assert!(db.errors().is_empty(), "{:?}", db.errors());
    Counted { shard, pusher }
}

/// How many allocations a 1,000-row batch may make, given a 100-row
/// batch's. (The 1-row figure is printed, not bounded: one row takes
/// shortcuts, such as a filter that keeps or drops the whole batch.)
#[derive(Clone, Copy)]
enum Bound {
    /// Nothing per row: at most 10 more per batch than at 100 rows (Arrow
    /// buffers that double as they fill; one per row would be 900 more).
    Stateless,
    /// At most `factor` times the 100-row figure plus `plus`: per-batch
    /// work that grows a little with size (a new window's state, buffers
    /// that double). Anything per row would be 900 more.
    Bounded { factor: f64, plus: f64 },
}

async fn assert_per_batch(name: &str, ddl: &str, bound: Bound) {
    let per_batch = |total: u64| total as f64 / BATCHES as f64;
    let [single, small, large] = [
        allocations(ddl, 1).await,
        allocations(ddl, 100).await,
        allocations(ddl, 1_000).await,
    ];
    // Each step pushes one batch per source: for a join, a batch of each
    // side.
    for (thread, count, bound) in [
        (
            "shard",
            (|c: &Counted| c.shard) as fn(&Counted) -> u64,
            bound,
        ),
        ("pushing thread", |c: &Counted| c.pusher, Bound::Stateless),
    ] {
        let (single, small, large) = (
            per_batch(count(&single)),
            per_batch(count(&small)),
            per_batch(count(&large)),
        );
        println!(
            "{name}: {thread} allocations per batch of 1 row {single:.1}, of 100 rows {small:.1}, of 1,000 rows {large:.1}"
        );
        let limit = match bound {
            Bound::Stateless => small + 10.0,
            Bound::Bounded { factor, plus } => factor * small + plus,
        };
        assert!(
            large <= limit,
            "{name}: {large:.1} {thread} allocations per 1,000-row batch vs {small:.1} per 100-row batch (limit {limit:.1})"
        );
    }
}

const QUOTES: &str = "CREATE SOURCE quotes (symbol VARCHAR NOT NULL, price DOUBLE NOT NULL,
    volume BIGINT NOT NULL, ts BIGINT NOT NULL, WATERMARK FOR ts AS ts - INTERVAL '5' SECOND)";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_allocation_per_row() {
    assert_per_batch(
        "filter+projection",
        &format!(
            "{TRADES_DDL}; CREATE STREAM s AS SELECT symbol, price * 2 AS p FROM trades WHERE volume > 10"
        ),
        Bound::Stateless,
    )
    .await;
    assert_per_batch(
        "tumbling VWAP",
        &format!(
            "{TRADES_DDL}; CREATE STREAM s AS SELECT symbol, SUM(price * CAST(volume AS DOUBLE)) AS pv,
             COUNT(*) AS n FROM trades GROUP BY symbol, tumble(ts, INTERVAL '1' MINUTE)"
        ),
        Bound::Bounded { factor: 1.5, plus: 16.0 },
    )
    .await;
    assert_per_batch(
        "latest trade per symbol (Top-N, N = 1: every row enters)",
        &format!(
            "{TRADES_DDL}; CREATE STREAM s AS SELECT symbol, price, ts FROM (
             SELECT symbol, price, ts, ROW_NUMBER() OVER (PARTITION BY symbol ORDER BY ts DESC) AS rn
             FROM trades) WHERE rn = 1 EMIT CHANGES"
        ),
        Bound::Bounded { factor: 1.5, plus: 16.0 },
    )
    .await;
    assert_per_batch(
        "interval join",
        &format!(
            "{TRADES_DDL}; {QUOTES}; CREATE STREAM s AS SELECT t.symbol, q.price FROM trades t
             JOIN quotes q ON t.symbol = q.symbol AND q.ts BETWEEN t.ts - 20 AND t.ts + 20"
        ),
        Bound::Bounded {
            factor: 1.5,
            plus: 16.0,
        },
    )
    .await;
    assert_per_batch(
        "ASOF join",
        &format!(
            "{TRADES_DDL}; {QUOTES}; CREATE STREAM s AS SELECT t.symbol, q.price FROM trades t
             ASOF JOIN quotes q ON t.symbol = q.symbol AND t.ts >= q.ts"
        ),
        Bound::Bounded {
            factor: 1.5,
            plus: 16.0,
        },
    )
    .await;
}
