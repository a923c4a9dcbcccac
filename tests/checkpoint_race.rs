//! A source handle that connects while a checkpoint is being requested:
//! its pushes are either inside the checkpoint and counted by its
//! manifest, or after it and replayed from the WAL, never both nor
//! neither. The checkpoint is held just after it is requested
//! (`LAMINARDB_FAILPOINT=checkpoint-requested`, this binary only) until
//! the test releases it, and the handle connects and pushes meanwhile.

mod common;

use std::time::{Duration, Instant};

use common::*;
use laminar_db::arrow::array::Int64Array;
use laminar_db::{Durability, LaminarDB};

const VIEW: &str =
    "CREATE MATERIALIZED VIEW counted AS SELECT COUNT(*) AS n FROM trades EMIT CHANGES";

async fn open(dir: &std::path::Path) -> LaminarDB {
    let db = LaminarDB::builder()
        .shards(2)
        .storage_dir(dir)
        .durability(Durability::Sync)
        .build()
        .unwrap();
    db.execute(TRADES_DDL).await.unwrap();
    db.execute(VIEW).await.unwrap();
    db.start().await.unwrap();
    db
}

async fn counted(db: &LaminarDB) -> i64 {
    let batches = db.sql("SELECT n FROM counted").await.unwrap();
    batches
        .iter()
        .flat_map(|b| {
            b.column(0)
                .as_any()
                .downcast_ref::<Int64Array>()
                .unwrap()
                .values()
                .to_vec()
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handle_connecting_during_a_checkpoint_is_counted_once() {
    let dir = tempfile::tempdir().unwrap();
    let failpoints = tempfile::tempdir().unwrap();
    // Set before any thread of this test binary reads them (the binary
    // has this one test).
    std::env::set_var("LAMINARDB_FAILPOINT", "checkpoint-requested");
    std::env::set_var("LAMINARDB_FAILPOINT_DIR", failpoints.path());
    let held = failpoints.path().join("checkpoint-requested.held");
    let release = failpoints.path().join("checkpoint-requested.release");
    let rows = trades(7, 2_000, 10, 0);
    let db = open(dir.path()).await;
    let pusher = async {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !held.exists() {
            assert!(
                Instant::now() < deadline,
                "the checkpoint never got requested"
            );
            tokio::task::yield_now().await;
        }
        // A new handle pushes while the checkpoint is held: either its
        // pushes all run (they did before the fix), or a shard holds its
        // lane at the checkpoint's marker. Then the checkpoint goes on.
        let handle = db.source_untyped("trades").unwrap();
        let batches = random_batches(&rows, 7, 100);
        let pushes = std::thread::spawn(move || {
            for batch in batches {
                handle.push(batch).unwrap();
            }
        });
        while !pushes.is_finished() && db.metrics().checkpoints.marker_waits == 0 {
            assert!(
                Instant::now() < deadline,
                "the pushes neither ran nor waited"
            );
            tokio::task::yield_now().await;
        }
        std::fs::write(&release, b"").unwrap();
        while !pushes.is_finished() {
            assert!(Instant::now() < deadline, "the pushes never finished");
            tokio::task::yield_now().await;
        }
        pushes.join().unwrap();
    };
    let (info, ()) = tokio::join!(db.checkpoint(), pusher);
    info.unwrap();
    db.shutdown().await.unwrap();
    assert!(db.errors().is_empty(), "{:?}", db.errors());
    drop(db);

    // Reopened, the view holds exactly the rows recovery says were
    // accepted: those the checkpoint covers plus those replayed.
    let db = open(dir.path()).await;
    let recovered = db.recovered_rows("trades").unwrap();
    assert_eq!(recovered, rows.len() as u64, "every push was durable");
    assert_eq!(counted(&db).await, recovered as i64);
    // A handle connecting now enters the restored checkpoint's epoch,
    // which the shards have already taken: its pushes flow at once.
    let handle = db.source_untyped("trades").unwrap();
    let more = trades_batch(&trades(8, 10, 10, 0));
    // A thread of its own: a push stuck behind a marker must fail the
    // test, not hang it.
    let (done, pushed) = std::sync::mpsc::channel();
    std::thread::spawn(move || done.send(handle.push(more)));
    pushed
        .recv_timeout(Duration::from_secs(30))
        .expect("a push after recovery waits for no checkpoint")
        .unwrap();
    assert_eq!(counted(&db).await, recovered as i64 + 10);
    db.shutdown().await.unwrap();
}
