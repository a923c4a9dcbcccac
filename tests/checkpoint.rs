//! Checkpoints through the API, against real files: a database that took
//! checkpoints and was reopened on its storage directory ends exactly
//! where an uninterrupted run ends (stream outputs, a materialized view,
//! a source's retained rows), the WAL a checkpoint covers is deleted, and
//! what cannot be checkpointed fails with its code.

mod common;

use std::path::Path;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use common::*;
use laminar_db::arrow::array::{Int64Array, RecordBatch};
use laminar_db::{Durability, ErrorCode, ExecuteResult, LaminarDB, LaminarDbBuilder};

/// A window aggregate with ordered state (first/last value), a cascade
/// through an exchange (the per-minute totals are global, so every shard
/// sends to one), a filter, and an `EMIT CHANGES` view.
const DDL: &str = "
CREATE STREAM ohlc AS
SELECT symbol, CAST(tumble(ts, INTERVAL '1' MINUTE) AS BIGINT) AS minute,
       first_value(price ORDER BY ts) AS open, MAX(price) AS high, MIN(price) AS low,
       last_value(price ORDER BY ts) AS close, SUM(volume) AS volume, COUNT(*) AS trades
FROM trades GROUP BY symbol, tumble(ts, INTERVAL '1' MINUTE);
CREATE STREAM minute_totals AS
SELECT tumble(minute, INTERVAL '1' MINUTE) AS w, SUM(trades) AS trades, SUM(volume) AS volume
FROM ohlc GROUP BY tumble(minute, INTERVAL '1' MINUTE);
CREATE STREAM big AS SELECT symbol, price, volume, ts FROM trades WHERE volume > 900;
CREATE MATERIALIZED VIEW per_symbol AS
SELECT symbol, SUM(volume) AS volume, COUNT(*) AS trades FROM trades GROUP BY symbol
EMIT CHANGES";

const STREAMS: [&str; 3] = ["ohlc", "minute_totals", "big"];

/// A durable database on `dir` with small WAL segments (so checkpoints
/// release some).
fn durable(dir: &Path, shards: usize, durability: Durability) -> LaminarDbBuilder {
    LaminarDB::builder()
        .shards(shards)
        .storage_dir(dir)
        .durability(durability)
        .wal_segment_bytes(64 * 1024)
}

fn open(dir: &Path, shards: usize, durability: Durability) -> LaminarDB {
    durable(dir, shards, durability).build().unwrap()
}

/// One thread per part, each pushing its rows through its own handle in
/// random batches of up to `max_batch` rows (then, with `close`, ending its
/// input). A thread stops at the first error and returns it.
fn push_in_threads(
    db: &LaminarDB,
    parts: Vec<Vec<Trade>>,
    max_batch: usize,
    seed: u64,
    close: bool,
) -> Vec<std::thread::JoinHandle<laminar_db::Result<()>>> {
    parts
        .into_iter()
        .enumerate()
        .map(|(i, rows)| {
            let handle = db.source_untyped("trades").unwrap();
            std::thread::spawn(move || {
                for batch in random_batches(&rows, seed + i as u64, max_batch) {
                    handle.push(batch)?;
                }
                if close {
                    handle.watermark(i64::MAX)?;
                }
                Ok(())
            })
        })
        .collect()
}

/// A subscription read on its own thread into a shared list.
struct Collector {
    batches: Arc<(Mutex<Vec<RecordBatch>>, Condvar)>,
    thread: std::thread::JoinHandle<()>,
}

impl Collector {
    fn start(mut sub: laminar_db::Subscription) -> Self {
        let batches = Arc::new((Mutex::new(Vec::new()), Condvar::new()));
        let kept = Arc::clone(&batches);
        let thread = std::thread::spawn(move || {
            while let Some(b) = sub.recv() {
                kept.0.lock().unwrap().push(b);
                kept.1.notify_all();
            }
        });
        Self { batches, thread }
    }

    /// Waits until `rows` rows arrived and returns them.
    fn wait_for(&self, rows: u64) -> Vec<RecordBatch> {
        let (kept, arrived) = &*self.batches;
        let (got, timeout) = arrived
            .wait_timeout_while(kept.lock().unwrap(), Duration::from_secs(30), |got| {
                (row_count(got) as u64) < rows
            })
            .unwrap();
        assert!(!timeout.timed_out(), "outputs did not arrive");
        assert_eq!(row_count(&got) as u64, rows);
        got.clone()
    }

    fn finish(self) -> Vec<RecordBatch> {
        self.thread.join().unwrap();
        let (kept, _) = Arc::try_unwrap(self.batches).unwrap();
        kept.into_inner().unwrap()
    }
}

struct Run {
    db: LaminarDB,
    streams: Vec<&'static str>,
    collectors: Vec<Collector>,
    handle: laminar_db::SourceHandle,
}

async fn start(dir: &Path, shards: usize, durability: Durability) -> Run {
    start_with(dir, shards, durability, DDL, &STREAMS).await
}

async fn start_with(
    dir: &Path,
    shards: usize,
    durability: Durability,
    ddl: &str,
    streams: &[&'static str],
) -> Run {
    let db = open(dir, shards, durability);
    db.execute(TRADES_DDL).await.unwrap();
    db.execute(ddl).await.unwrap();
    let collectors = streams
        .iter()
        .map(|s| Collector::start(db.subscribe(s).unwrap()))
        .collect();
    let handle = db.source_untyped("trades").unwrap();
    db.start().await.unwrap();
    Run {
        db,
        streams: streams.to_vec(),
        collectors,
        handle,
    }
}

impl Run {
    fn push(&self, rows: &[Trade], seed: u64) {
        for batch in random_batches(rows, seed, 250) {
            self.handle.push(batch).unwrap();
        }
    }

    /// Takes a checkpoint with no push in flight, and returns each
    /// stream's outputs up to it: everything emitted before the cut, which
    /// a restart does not emit again.
    async fn checkpoint(&self) -> (laminar_db::CheckpointInfo, Vec<Vec<RecordBatch>>) {
        let info = self.db.checkpoint().await.unwrap();
        let metrics = self.db.metrics();
        let outputs = self
            .streams
            .iter()
            .zip(&self.collectors)
            .map(|(name, collector)| {
                let emitted = metrics
                    .streams
                    .iter()
                    .find(|s| s.name == *name)
                    .unwrap()
                    .rows_out;
                collector.wait_for(emitted)
            })
            .collect();
        (info, outputs)
    }

    /// Shuts down (views then hold everything their streams emitted).
    async fn stop(self) -> (LaminarDB, Vec<Vec<RecordBatch>>) {
        self.db.shutdown().await.unwrap();
        assert!(self.db.errors().is_empty(), "{:?}", self.db.errors());
        let outputs = self.collectors.into_iter().map(Collector::finish).collect();
        (self.db, outputs)
    }
}

async fn query(db: &LaminarDB, sql: &str) -> Vec<RecordBatch> {
    match db.execute(sql).await.unwrap().pop() {
        Some(ExecuteResult::Rows(batches)) => batches,
        other => panic!("{other:?}"),
    }
}

fn wal_segments(dir: &Path, shards: usize) -> usize {
    (0..shards)
        .map(|s| {
            std::fs::read_dir(dir.join("wal").join(format!("shard-{s:03}")))
                .unwrap()
                .count()
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarts_from_checkpoints_end_like_the_uninterrupted_run() {
    let rows = trades(11, 6_000, 20, 3_000);
    // The uninterrupted run.
    let dir = tempfile::tempdir().unwrap();
    let whole = start(dir.path(), 2, Durability::Sync).await;
    whole.push(&rows, 99);
    whole.handle.watermark(i64::MAX).unwrap();
    let (db, want) = whole.stop().await;
    let view_want = query(&db, "SELECT symbol, volume, trades FROM per_symbol").await;
    assert!(row_count(&want[0]) > 0 && row_count(&want[1]) > 0 && row_count(&want[2]) > 0);

    for (shards, durability) in [
        (1, Durability::Sync),
        (2, Durability::Sync),
        (2, Durability::Async),
    ] {
        let case = format!("{shards} shard(s), {durability:?}");
        let dir = tempfile::tempdir().unwrap();
        let parts: Vec<&[Trade]> = rows.chunks(1_200).collect();
        let mut kept: Vec<Vec<RecordBatch>> = vec![Vec::new(); STREAMS.len()];

        // Run 1: a checkpoint, then more input it does not cover.
        let run = start(dir.path(), shards, durability).await;
        run.push(parts[0], 1);
        let (first, before) = run.checkpoint().await;
        assert_eq!(first.epoch, 1, "{case}");
        kept.iter_mut().zip(before).for_each(|(k, b)| k.extend(b));
        run.push(parts[1], 2);
        let _ = run.stop().await;
        let after_first = wal_segments(dir.path(), shards);

        // Run 2: the checkpoint is loaded and the rest of the WAL replayed;
        // a second checkpoint releases the WAL before it.
        let run = start(dir.path(), shards, durability).await;
        assert_eq!(run.db.recovered_rows("trades").unwrap(), 2_400, "{case}");
        run.push(parts[2], 3);
        let (second, before) = run.checkpoint().await;
        assert_eq!(second.epoch, 2, "{case}");
        assert!(second.bytes > 0, "{case}");
        kept.iter_mut().zip(before).for_each(|(k, b)| k.extend(b));
        run.push(parts[3], 4);
        let _ = run.stop().await;
        assert!(
            second.wal_segments_released > 0,
            "{case}: {after_first} segments after run 1, none released"
        );

        // Run 3: the input ends; its outputs complete what the checkpoints
        // kept.
        let run = start(dir.path(), shards, durability).await;
        assert_eq!(run.db.recovered_rows("trades").unwrap(), 4_800, "{case}");
        run.push(parts[4], 5);
        run.handle.watermark(i64::MAX).unwrap();
        let (db, last) = run.stop().await;
        let view = query(&db, "SELECT symbol, volume, trades FROM per_symbol").await;
        let retained = query(&db, "SELECT COUNT(*) AS n FROM trades").await;
        for (s, name) in STREAMS.iter().enumerate() {
            let mut got = kept[s].clone();
            got.extend(last[s].iter().cloned());
            eprintln!("{case}: {name}");
            assert_same_rows(&got, &want[s]);
        }
        assert_same_rows(&view, &view_want);
        let n = retained[0]
            .column(0)
            .as_any()
            .downcast_ref::<Int64Array>()
            .unwrap()
            .value(0);
        assert_eq!(n, 6_000, "{case}: the source's retained rows");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn periodic_checkpoints_run_while_input_flows() {
    let rows = trades(12, 8_000, 20, 3_000);
    let want = run_batch(
        "SELECT symbol, SUM(volume) AS volume, COUNT(*) AS trades FROM trades GROUP BY symbol",
        "trades",
        vec![trades_batch(&rows)],
        trades_schema(),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    for (run, part) in rows.chunks(4_000).enumerate() {
        let db = durable(dir.path(), 2, Durability::Sync)
            .checkpoint_interval(Duration::from_millis(5))
            .build()
            .unwrap();
        db.execute(TRADES_DDL).await.unwrap();
        db.execute(DDL).await.unwrap();
        let handle = db.source_untyped("trades").unwrap();
        db.start().await.unwrap();
        for batch in random_batches(part, run as u64, 40) {
            handle.push(batch).unwrap();
        }
        // Let at least one checkpoint land after the last push.
        let taken = db.metrics().checkpoints.completed;
        wait_until("a periodic checkpoint", async || {
            db.metrics().checkpoints.completed >= taken + 2
        })
        .await;
        let metrics = db.metrics().checkpoints;
        assert_eq!(metrics.failed, 0);
        assert!(metrics.last_epoch > 0);
        db.shutdown().await.unwrap();
        assert!(db.errors().is_empty(), "{:?}", db.errors());
        if run == 1 {
            let view = query(&db, "SELECT symbol, volume, trades FROM per_symbol").await;
            assert_same_rows(&view, &want);
        }
    }
}

/// The checkpoint directories present, by epoch.
fn checkpoint_epochs(dir: &Path) -> Vec<u64> {
    let mut epochs: Vec<u64> = std::fs::read_dir(dir.join("checkpoints"))
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    epochs.sort_unstable();
    epochs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn later_checkpoints_patch_the_state_and_restore_it_exactly() {
    const VIEW: &str = "CREATE MATERIALIZED VIEW per_symbol AS
        SELECT symbol, SUM(volume) AS volume, COUNT(*) AS trades FROM trades GROUP BY symbol
        EMIT CHANGES";
    // Thousands of groups, then a few of them updated: the second
    // checkpoint's shard files are patches over the first's.
    let shifted = |rows: Vec<Trade>, by: i64| -> Vec<Trade> {
        rows.into_iter()
            .map(|t| Trade { ts: t.ts + by, ..t })
            .collect()
    };
    let first = trades(21, 20_000, 5_000, 0);
    let few = shifted(trades(22, 300, 10, 0), 1_000_000);
    let last = shifted(trades(23, 5_000, 5_000, 0), 2_000_000);
    let all: Vec<Trade> = first.iter().chain(&few).chain(&last).cloned().collect();
    let want = run_batch(
        "SELECT symbol, SUM(volume) AS volume, COUNT(*) AS trades FROM trades GROUP BY symbol",
        "trades",
        vec![trades_batch(&all)],
        trades_schema(),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let start = |dir: &Path| {
        let dir = dir.to_path_buf();
        async move {
            let db = open(&dir, 2, Durability::Sync);
            db.execute(TRADES_DDL).await.unwrap();
            db.execute(VIEW).await.unwrap();
            let handle = db.source_untyped("trades").unwrap();
            db.start().await.unwrap();
            (db, handle)
        }
    };
    let (db, handle) = start(dir.path()).await;
    for batch in random_batches(&first, 1, 500) {
        handle.push(batch).unwrap();
    }
    let whole = db.checkpoint().await.unwrap();
    assert_eq!(whole.patched_shards, 0, "the first checkpoint is whole");
    assert_eq!(whole.patched_files, 0);
    for batch in random_batches(&few, 2, 50) {
        handle.push(batch).unwrap();
    }
    let patch = db.checkpoint().await.unwrap();
    // Both shards' state, the view's rows and the source's last 10,000
    // rows (shifted by 300) are patches.
    assert_eq!(
        (patch.patched_shards, patch.patched_files),
        (2, 2),
        "{patch:?}"
    );
    assert!(patch.bytes * 4 < whole.bytes, "{patch:?} after {whole:?}");
    let metrics = db.metrics().checkpoints;
    assert_eq!((metrics.last_patched_files, metrics.last_files), (4, 4));
    // The base stays on disk for as long as the manifest names it.
    assert_eq!(
        checkpoint_epochs(dir.path()),
        vec![whole.epoch, patch.epoch]
    );
    db.shutdown().await.unwrap();
    drop((db, handle));

    // The restored aggregate state (base plus patch) continues exactly:
    // after more input, the view equals the batch answer over all rows.
    let (db, handle) = start(dir.path()).await;
    db.wait_recovered().await.unwrap();
    for batch in random_batches(&last, 3, 500) {
        handle.push(batch).unwrap();
    }
    let after = db.checkpoint().await.unwrap();
    assert_eq!(
        (after.patched_shards, after.patched_files),
        (0, 0),
        "bases are not kept across opens"
    );
    assert_eq!(checkpoint_epochs(dir.path()), vec![after.epoch]);
    db.shutdown().await.unwrap();
    assert!(db.errors().is_empty(), "{:?}", db.errors());
    let view = query(&db, "SELECT symbol, volume, trades FROM per_symbol").await;
    assert_same_rows(&view, &want);
    // The source's retained rows came back from base plus patch too: the
    // last 10,000 pushed (one handle, so in order).
    let sql = "SELECT COUNT(*) AS n, SUM(volume) AS volume, MIN(ts) AS first FROM trades";
    let last_rows = trades_batch(&all[all.len() - 10_000..]);
    let want = run_batch(sql, "trades", vec![last_rows], trades_schema()).await;
    assert_same_rows(&query(&db, sql).await, &want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoints_need_a_storage_directory() {
    // No storage directory.
    let error = LaminarDB::builder()
        .checkpoint_interval(Duration::from_secs(1))
        .build()
        .unwrap_err();
    assert_eq!(error.code(), ErrorCode::InvalidConfig);
    let db = LaminarDB::builder().shards(1).build().unwrap();
    db.execute(TRADES_DDL).await.unwrap();
    db.start().await.unwrap();
    assert_eq!(
        db.checkpoint().await.unwrap_err().code(),
        ErrorCode::InvalidConfig
    );
    db.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_checkpoint_is_reported_not_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let run = start(dir.path(), 2, Durability::Sync).await;
    run.push(&trades(3, 500, 5, 1_000), 1);
    let (info, _) = run.checkpoint().await;
    let _ = run.stop().await;
    let file = dir
        .path()
        .join("checkpoints")
        .join(format!("{:020}", info.epoch))
        .join("shard-001.ckpt");
    let mut bytes = std::fs::read(&file).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x40;
    std::fs::write(&file, bytes).unwrap();
    let db = open(dir.path(), 2, Durability::Sync);
    db.execute(TRADES_DDL).await.unwrap();
    db.execute(DDL).await.unwrap();
    let error = db.start().await.unwrap_err();
    assert_eq!(error.code(), ErrorCode::StorageCorrupt, "{error}");
    assert!(error.to_string().contains("shard-001.ckpt"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_handles_checkpointed_while_pushing_lose_and_repeat_nothing() {
    // Three pushing threads, each with its own handle (its own lane on
    // every shard), checkpoints every few milliseconds, two restarts
    // midway. Materialized views hold every result exactly once: what
    // the checkpoint kept, plus what the replay after it re-emitted.
    let views = "
CREATE MATERIALIZED VIEW minutes AS
SELECT symbol, CAST(tumble(ts, INTERVAL '1' MINUTE) AS BIGINT) AS minute,
       SUM(volume) AS volume, COUNT(*) AS trades, MAX(price) AS high
FROM trades GROUP BY symbol, tumble(ts, INTERVAL '1' MINUTE);
CREATE MATERIALIZED VIEW totals AS
SELECT symbol, SUM(volume) AS volume, COUNT(*) AS trades FROM trades GROUP BY symbol
EMIT CHANGES";
    let threads = 3;
    let all = trades(21, 9_000, 12, 2_000);
    // Thread t gets every row of its symbols, in order.
    let per_thread: Vec<Vec<Trade>> = (0..threads)
        .map(|t| {
            all.iter()
                .filter(|r| r.symbol[1..].parse::<usize>().unwrap() % threads == t)
                .cloned()
                .collect()
        })
        .collect();
    let want_minutes = run_batch(
        "SELECT symbol, CAST(tumble(ts, INTERVAL '1' MINUTE) AS BIGINT) AS minute,
                SUM(volume) AS volume, COUNT(*) AS trades, MAX(price) AS high
         FROM trades GROUP BY symbol, tumble(ts, INTERVAL '1' MINUTE)",
        "trades",
        vec![trades_batch(&all)],
        trades_schema(),
    )
    .await;
    let want_totals = run_batch(
        "SELECT symbol, SUM(volume) AS volume, COUNT(*) AS trades FROM trades GROUP BY symbol",
        "trades",
        vec![trades_batch(&all)],
        trades_schema(),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let runs = 3;
    for run in 0..runs {
        let db = durable(dir.path(), 2, Durability::Sync)
            .checkpoint_interval(Duration::from_millis(3))
            .build()
            .unwrap();
        db.execute(TRADES_DDL).await.unwrap();
        db.execute(views).await.unwrap();
        db.start().await.unwrap();
        let last = run + 1 == runs;
        let parts = per_thread
            .iter()
            .map(|rows| {
                let part = rows.len() / runs;
                let end = if last { rows.len() } else { (run + 1) * part };
                rows[run * part..end].to_vec()
            })
            .collect();
        for p in push_in_threads(&db, parts, 60, run as u64 * 10, last) {
            p.join().unwrap().unwrap();
        }
        let checkpoints = db.metrics().checkpoints;
        db.shutdown().await.unwrap();
        assert!(db.errors().is_empty(), "{:?}", db.errors());
        assert_eq!(checkpoints.failed, 0, "run {run}");
        assert!(
            checkpoints.completed > 0,
            "run {run}: no checkpoint while pushing"
        );
        if run + 1 == runs {
            let minutes = query(&db, "SELECT * FROM minutes").await;
            let totals = query(&db, "SELECT * FROM totals").await;
            assert_same_rows(&minutes, &want_minutes);
            assert_same_rows(&totals, &want_totals);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_never_waits_on_a_checkpoint_it_interrupts() {
    // A checkpoint every millisecond and pushes from two handles right up
    // to shutdown: whichever moment the stop lands in (a handle's marker
    // already on its lanes, a barrier not yet sent, shards aligning),
    // shutdown finishes and nothing acknowledged is lost.
    let rows = trades(31, 2_000, 8, 1_000);
    for round in 0..30u64 {
        let dir = tempfile::tempdir().unwrap();
        let durability = if round % 2 == 0 {
            Durability::Sync
        } else {
            Durability::Async
        };
        let db = durable(dir.path(), 2, durability)
            .checkpoint_interval(Duration::from_millis(1))
            .build()
            .unwrap();
        db.execute(TRADES_DDL).await.unwrap();
        db.execute(DDL).await.unwrap();
        db.start().await.unwrap();
        let parts = rows.chunks(1_000).map(<[Trade]>::to_vec).collect();
        let pushers = push_in_threads(&db, parts, 20, round * 2, false);
        // The stop lands after 0 to 3 checkpoints, while pushes go on.
        let after = round % 4;
        wait_until("checkpoints before the stop", async || {
            db.metrics().checkpoints.completed >= after
        })
        .await;
        tokio::time::timeout(Duration::from_secs(30), db.shutdown())
            .await
            .expect("shutdown hung behind a checkpoint")
            .unwrap();
        for p in pushers {
            // A push cut short by the stop fails; that is expected here.
            let _ = p.join().unwrap();
        }
    }
}

/// Every other operator keeps its state in checkpoints too: an interval
/// LEFT JOIN (rows waiting for a match, unmatched rows emitted later), a
/// regular one and one bounded by a column of its rows, an
/// ASOF join (versions and rows waiting for the right watermark), a
/// temporal join reading a windowed changelog (versions matched to their
/// retractions by digests, recomputed at restore), a Top-N
/// changelog, session windows (closing and as a changelog, folded and
/// keeping rows), and window
/// functions over event time (numbering, LAG/LEAD with rows held back,
/// running aggregates), restarted from a checkpoint midway, end like the
/// uninterrupted run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_operator_restarts_from_checkpoints() {
    let ddl = "
CREATE STREAM pairs AS SELECT a.symbol, a.ts, a.price, b.price AS earlier
FROM trades a LEFT JOIN trades b ON a.symbol = b.symbol
 AND b.ts BETWEEN a.ts - 400 AND a.ts - 1 AND b.volume > 500;
CREATE STREAM previous AS SELECT a.symbol, a.ts, a.volume, b.volume AS before
FROM trades a ASOF JOIN trades b ON a.symbol = b.symbol AND a.ts > b.ts;
CREATE STREAM top3 AS SELECT symbol, price, volume FROM (SELECT *, ROW_NUMBER() OVER
 (PARTITION BY symbol ORDER BY price DESC) AS rn FROM trades) WHERE rn <= 3 EMIT CHANGES;
CREATE STREAM visits AS SELECT symbol, session(ts, INTERVAL '100' MILLISECOND) AS started,
 COUNT(*) AS n, SUM(volume) AS volume FROM trades
 GROUP BY symbol, session(ts, INTERVAL '100' MILLISECOND);
CREATE STREAM visit_changes AS SELECT symbol, session(ts, INTERVAL '100' MILLISECOND) AS started,
 COUNT(*) AS n, MAX(price) AS high FROM trades
 GROUP BY symbol, session(ts, INTERVAL '100' MILLISECOND) EMIT CHANGES;
CREATE STREAM visit_opens AS SELECT symbol, session(ts, INTERVAL '100' MILLISECOND) AS started,
 first_value(price ORDER BY ts) AS open, COUNT(*) AS n FROM trades
 GROUP BY symbol, session(ts, INTERVAL '100' MILLISECOND);
CREATE STREAM moves AS SELECT symbol, ts, price,
 ROW_NUMBER() OVER (PARTITION BY symbol ORDER BY ts) AS n,
 RANK() OVER (PARTITION BY symbol ORDER BY ts) AS r,
 LAG(price) OVER (PARTITION BY symbol ORDER BY ts) AS prev,
 LAG(price, 2, 0.0) OVER (PARTITION BY symbol ORDER BY ts) AS prev2,
 LEAD(volume, 2) OVER (PARTITION BY symbol ORDER BY ts) AS next2 FROM trades;
CREATE STREAM so_far AS SELECT symbol, ts,
 SUM(volume) OVER (PARTITION BY symbol ORDER BY ts) AS volume,
 COUNT(*) OVER (PARTITION BY symbol ORDER BY ts) AS trades,
 MIN(price) OVER (PARTITION BY symbol ORDER BY ts) AS low,
 AVG(price) OVER (PARTITION BY symbol ORDER BY ts) AS mean,
 AVG(price) OVER (PARTITION BY symbol ORDER BY ts ROWS BETWEEN 3 PRECEDING AND CURRENT ROW) AS mean4,
 MAX(volume) OVER (PARTITION BY symbol ORDER BY ts ROWS BETWEEN 2 PRECEDING AND CURRENT ROW) AS high3,
 SUM(volume) OVER (PARTITION BY symbol ORDER BY ts RANGE BETWEEN 300 PRECEDING AND CURRENT ROW) AS recent
 FROM trades;
CREATE STREAM same_volume AS SELECT a.symbol, a.ts, b.ts AS other FROM trades a
 LEFT JOIN trades b ON a.symbol = b.symbol AND a.volume = b.volume AND b.price > a.price;
CREATE STREAM spans AS SELECT symbol, ts, ts + volume AS ends FROM trades;
CREATE STREAM within AS SELECT s.symbol, s.ts, t.price FROM spans s
 LEFT JOIN trades t ON s.symbol = t.symbol AND t.ts BETWEEN s.ts + 1 AND s.ends;
CREATE STREAM bars AS SELECT symbol, window_end AS e, MAX(price) AS high
 FROM TABLE(TUMBLE(TABLE trades, DESCRIPTOR(ts), INTERVAL '100' MILLISECOND))
 GROUP BY symbol, window_start, window_end HAVING MAX(price) < 700 EMIT CHANGES;
CREATE STREAM last_bar AS SELECT a.symbol, a.ts, b.e, b.high
 FROM trades a JOIN bars FOR SYSTEM_TIME AS OF a.ts AS b ON a.symbol = b.symbol;
CREATE STREAM seen AS SELECT symbol FROM trades GROUP BY symbol EMIT CHANGES;
CREATE STREAM instants AS SELECT symbol, ts, AVG(high) OVER (PARTITION BY symbol ORDER BY ts, n
 ROWS BETWEEN 2 PRECEDING AND CURRENT ROW) AS avg3 FROM (SELECT symbol, ts, COUNT(*) AS n,
 MAX(price) AS high FROM trades GROUP BY symbol, ts) AS g;
CREATE STREAM per_second AS SELECT COUNT(*) AS n, COUNT(DISTINCT symbol) AS symbols,
 AVG(price) AS mean FROM trades GROUP BY tumble(ts, INTERVAL '1' SECOND)";
    let streams = [
        "same_volume",
        "within",
        "pairs",
        "previous",
        "top3",
        "visits",
        "visit_changes",
        "visit_opens",
        "moves",
        "so_far",
        "last_bar",
        "seen",
        "instants",
        "per_second",
    ];
    let rows = trades(41, 4_000, 10, 2_000);
    let dir = tempfile::tempdir().unwrap();
    let whole = start_with(dir.path(), 2, Durability::Sync, ddl, &streams).await;
    whole.push(&rows, 7);
    whole.handle.watermark(i64::MAX).unwrap();
    let (_, want) = whole.stop().await;
    assert!(want.iter().all(|w| row_count(w) > 0));
    for shards in [1, 2] {
        let dir = tempfile::tempdir().unwrap();
        let (first, rest) = rows.split_at(1_700);
        let (second, third) = rest.split_at(1_000);
        let run = start_with(dir.path(), shards, Durability::Sync, ddl, &streams).await;
        run.push(first, 1);
        let (_, mut kept) = run.checkpoint().await;
        run.push(second, 2);
        let _ = run.stop().await;
        let run = start_with(dir.path(), shards, Durability::Sync, ddl, &streams).await;
        run.push(third, 3);
        run.handle.watermark(i64::MAX).unwrap();
        let (_, last) = run.stop().await;
        for (s, name) in streams.iter().enumerate() {
            kept[s].extend(last[s].iter().cloned());
            eprintln!("{shards} shard(s): {name}");
            if ["top3", "visit_changes", "last_bar", "seen"].contains(name) {
                assert_same_rows(&consolidate(&kept[s]), &consolidate(&want[s]));
            } else {
                assert_same_rows(&kept[s], &want[s]);
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn views_never_hold_up_a_checkpoint_behind_full_rings() {
    // Tiny rings, a view fed by both shards, a view behind an exchange,
    // and checkpoints every few milliseconds while two handles push: a
    // view waiting for one shard's marker must not stop another shard
    // (whose ring to the view fills) from reaching its own cut.
    let views = "
CREATE MATERIALIZED VIEW totals AS
SELECT symbol, SUM(volume) AS volume, COUNT(*) AS trades FROM trades GROUP BY symbol
EMIT CHANGES;
CREATE STREAM per_minute AS SELECT symbol, CAST(tumble(ts, INTERVAL '1' MINUTE) AS BIGINT) AS minute,
 COUNT(*) AS trades FROM trades GROUP BY symbol, tumble(ts, INTERVAL '1' MINUTE);
CREATE MATERIALIZED VIEW minute_totals AS SELECT minute, SUM(trades) AS trades FROM per_minute
GROUP BY minute EMIT CHANGES;
CREATE STREAM bucketed AS SELECT symbol, volume % 7 AS bucket, volume FROM trades;
CREATE MATERIALIZED VIEW by_bucket AS SELECT bucket, SUM(volume) AS volume FROM bucketed
GROUP BY bucket EMIT CHANGES";
    let rows = trades(51, 6_000, 16, 2_000);
    let want = run_batch(
        "SELECT symbol, SUM(volume) AS volume, COUNT(*) AS trades FROM trades GROUP BY symbol",
        "trades",
        vec![trades_batch(&rows)],
        trades_schema(),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let db = durable(dir.path(), 2, Durability::Async)
        .ring_capacity(2)
        .checkpoint_interval(Duration::from_millis(2))
        .build()
        .unwrap();
    db.execute(TRADES_DDL).await.unwrap();
    db.execute(views).await.unwrap();
    db.start().await.unwrap();
    let parts = rows.chunks(3_000).map(<[Trade]>::to_vec).collect();
    let pushers = push_in_threads(&db, parts, 5, 70, true);
    let joined = tokio::task::spawn_blocking(move || {
        for p in pushers {
            p.join().unwrap().unwrap();
        }
    });
    tokio::time::timeout(Duration::from_secs(60), joined)
        .await
        .expect("pushes stalled behind a checkpoint")
        .unwrap();
    let taken = db.metrics().checkpoints.completed;
    tokio::time::timeout(Duration::from_secs(30), db.shutdown())
        .await
        .expect("shutdown stalled")
        .unwrap();
    assert!(db.errors().is_empty(), "{:?}", db.errors());
    assert!(taken > 0);
    let totals = query(&db, "SELECT * FROM totals").await;
    assert_same_rows(&totals, &want);
    let buckets = query(&db, "SELECT * FROM by_bucket").await;
    let want_buckets = run_batch(
        "SELECT volume % 7 AS bucket, SUM(volume) AS volume FROM trades GROUP BY volume % 7",
        "trades",
        vec![trades_batch(&rows)],
        trades_schema(),
    )
    .await;
    assert_same_rows(&buckets, &want_buckets);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handles_that_come_and_go_are_counted_once() {
    // Every `INSERT INTO source` pushes through a handle of its own, which
    // is gone afterwards; checkpoints retire such handles, and what they
    // pushed must stay counted (recovered rows, retained rows, views).
    let dir = tempfile::tempdir().unwrap();
    let run = start(dir.path(), 2, Durability::Sync).await;
    for i in 0..30i64 {
        let sql = format!(
            "INSERT INTO trades VALUES ('S{:03}', 10.5, {}, {})",
            i % 4,
            i + 1,
            1_700_000_000_000i64 + i * 100
        );
        run.db.execute(&sql).await.unwrap();
        if i % 5 == 4 {
            run.db.checkpoint().await.unwrap();
        }
    }
    let _ = run.stop().await;
    let run = start(dir.path(), 2, Durability::Sync).await;
    assert_eq!(run.db.recovered_rows("trades").unwrap(), 30);
    run.db.checkpoint().await.unwrap();
    let (db, _) = run.stop().await;
    let retained = query(&db, "SELECT COUNT(*) AS n, SUM(volume) AS v FROM trades").await;
    let column = |i: usize| {
        retained[0]
            .column(i)
            .as_any()
            .downcast_ref::<Int64Array>()
            .unwrap()
            .value(0)
    };
    assert_eq!((column(0), column(1)), (30, (1..=30).sum::<i64>()));
    let view = query(
        &db,
        "SELECT SUM(volume) AS v, SUM(trades) AS n FROM per_symbol",
    )
    .await;
    let totals = |i: usize| {
        view[0]
            .column(i)
            .as_any()
            .downcast_ref::<Int64Array>()
            .unwrap()
            .value(0)
    };
    assert_eq!((totals(0), totals(1)), ((1..=30).sum::<i64>(), 30));
}

/// Sessions checkpointed by a build that kept their rows (before plain
/// aggregates were folded into per-session state) restore into folded
/// sessions: the kept rows are folded into their sessions' slots, and the
/// run ends as if it had never stopped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_kept_as_rows_restore_folded() {
    use laminar_db::arrow::array::UInt32Array;
    use laminar_operators::{AggregateSpec, BatchTime, Operator, SessionAggregate};
    use laminar_sql::dialect::{parse_script, Statement};
    use laminar_sql::planner::{
        new_session_context, plan_stream, register_table, resolve_source, StreamOperator,
    };

    let ctx = new_session_context();
    let mut sources = std::collections::HashMap::new();
    let mut spec: Option<AggregateSpec> = None;
    let script = format!(
        "{TRADES_DDL}; CREATE STREAM s AS SELECT symbol,
             session(ts, INTERVAL '100' MILLISECOND) AS started, COUNT(*) AS n,
             SUM(volume) AS volume, MAX(price) AS high, AVG(price) AS mean
         FROM trades WHERE volume > 100
         GROUP BY symbol, session(ts, INTERVAL '100' MILLISECOND)"
    );
    for statement in parse_script(&script).unwrap() {
        match statement {
            Statement::CreateSource(syntax) => {
                let source = resolve_source(&ctx, syntax).await.unwrap();
                register_table(&ctx, &source.name, Arc::clone(&source.schema)).unwrap();
                sources.insert(source.name.clone(), source);
            }
            Statement::CreateStream(def) => {
                let known = Default::default();
                let tables = Default::default();
                let mut plans = plan_stream(&ctx, &def, &sources, &known, &tables)
                    .await
                    .unwrap();
                let plan = plans.pop().unwrap();
                let StreamOperator::SessionAggregate { spec: planned, .. } = plan.operator else {
                    panic!("not a session aggregate");
                };
                spec = Some(planned);
            }
            _ => unreachable!("only DDL"),
        }
    }
    let folded = spec.unwrap();
    assert!(folded.foldable.is_some());
    let kept_rows = AggregateSpec {
        foldable: None,
        fused: None,
        ..folded.clone()
    };

    let rows = trades(43, 3_000, 10, 2_000);
    let batches: Vec<RecordBatch> = rows.chunks(97).map(trades_batch).collect();
    let (first, rest) = batches.split_at(batches.len() / 2);
    let time = BatchTime {
        watermark_ms: i64::MIN,
        row_watermarks_ms: None,
    };
    let run = |operator: &mut dyn Operator, batches: &[RecordBatch], out: &mut Vec<RecordBatch>| {
        for batch in batches {
            operator.on_batch(batch, time, out).unwrap();
        }
    };
    let mut want = Vec::new();
    let mut whole = SessionAggregate::new(folded.clone(), None).unwrap();
    run(&mut whole, &batches, &mut want);
    whole.on_watermark(i64::MAX, &mut want).unwrap();

    let mut got = Vec::new();
    let mut before = SessionAggregate::new(kept_rows, None).unwrap();
    run(&mut before, first, &mut got);
    let state = before.snapshot().unwrap();
    // The old form: the sessions, then their rows.
    assert_eq!(state.len(), 2);
    assert!(state[1]
        .column_by_name("__session")
        .is_some_and(|c| c.as_any().downcast_ref::<UInt32Array>().is_some()));
    let mut after = SessionAggregate::new(folded, None).unwrap();
    after.restore(&state).unwrap();
    run(&mut after, rest, &mut got);
    // Folded, the state is one batch: the sessions with their partial
    // aggregate states.
    let state = after.snapshot().unwrap();
    assert_eq!(state.len(), 1);
    assert!(state[0].column_by_name("state_0_0").is_some());
    after.on_watermark(i64::MAX, &mut got).unwrap();
    assert!(row_count(&want) > 0);
    assert_same_rows(&got, &want);
}
