//! Hot-path discipline: no allocation per row. A counting global allocator
//! (this test binary's) counts every allocation in the process while the
//! same number of batches is pushed with 1 row and with 1,000 rows each;
//! if anything allocated per row, the large batches would allocate about
//! a thousand times more. Per-batch allocations (the batch itself, the
//! ring message, expression results) are expected and bounded.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering};

use common::*;
use laminar_db::LaminarDB;

struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const BATCHES: usize = 200;

/// Allocations while `BATCHES` batches of `rows` rows go through `stream`
/// (pushing, processing, emitting and receiving the results). The
/// batches are built before counting starts.
async fn allocations(ddl: &str, rows_per_batch: usize) -> u64 {
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
    // Let the shard finish the warm-up before counting.
    eventually(|| db.metrics().streams[0].rows_in as usize >= warm_up.len() * rows_per_batch);
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    for b in measured {
        handle.push(b.clone()).unwrap();
        if let Some(q) = &quotes {
            q.push(b.clone()).unwrap();
        }
    }
    let sides = if quotes.is_some() { 2 } else { 1 };
    eventually(|| {
        db.metrics().streams[0].rows_in as usize >= sides * (BATCHES + 20) * rows_per_batch
    });
    let counted = ALLOCATIONS.load(Ordering::Relaxed) - before;
    handle.watermark(i64::MAX).unwrap();
    db.shutdown().await.unwrap();
    collector.join().unwrap();
    assert!(db.errors().is_empty(), "{:?}", db.errors());
    counted
}

async fn assert_per_batch(name: &str, ddl: &str) {
    let small = allocations(ddl, 1).await;
    let large = allocations(ddl, 1_000).await;
    let per_batch_small = small as f64 / BATCHES as f64;
    let per_batch_large = large as f64 / BATCHES as f64;
    println!(
        "{name}: {per_batch_small:.1} allocations per 1-row batch, {per_batch_large:.1} per 1,000-row batch ({:.2} per 1,000 rows)",
        per_batch_large
    );
    // Per-row allocation would make the large batches ~1,000x costlier;
    // allow per-batch work to grow a little with size (buffers that
    // double, a few per distinct key).
    assert!(
        per_batch_large < 4.0 * per_batch_small + 64.0,
        "{name}: {per_batch_large:.1} allocations per 1,000-row batch vs {per_batch_small:.1} per 1-row batch"
    );
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
    )
    .await;
    assert_per_batch(
        "tumbling VWAP",
        &format!(
            "{TRADES_DDL}; CREATE STREAM s AS SELECT symbol, SUM(price * CAST(volume AS DOUBLE)) AS pv,
             COUNT(*) AS n FROM trades GROUP BY symbol, tumble(ts, INTERVAL '1' MINUTE)"
        ),
    )
    .await;
    assert_per_batch(
        "interval join",
        &format!(
            "{TRADES_DDL}; {QUOTES}; CREATE STREAM s AS SELECT t.symbol, q.price FROM trades t
             JOIN quotes q ON t.symbol = q.symbol AND q.ts BETWEEN t.ts - 20 AND t.ts + 20"
        ),
    )
    .await;
    assert_per_batch(
        "ASOF join",
        &format!(
            "{TRADES_DDL}; {QUOTES}; CREATE STREAM s AS SELECT t.symbol, q.price FROM trades t
             ASOF JOIN quotes q ON t.symbol = q.symbol AND t.ts >= q.ts"
        ),
    )
    .await;
}
