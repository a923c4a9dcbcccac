//! Shutdown waits for a checkpoint that is writing its files: once it
//! returns, nothing writes to the storage directory (the daemon deletes
//! a dropped pipeline's directory right after). The checkpoint is held
//! after the shards have reported and before its files are written
//! (`LAMINARDB_FAILPOINT=checkpoint-gathered`, this binary only), and is
//! released only once every shard thread has exited, which is when a
//! shutdown that did not wait would return.

mod common;

use std::time::{Duration, Instant};

use common::*;
use laminar_db::{Durability, LaminarDB};

const VIEW: &str =
    "CREATE MATERIALIZED VIEW counted AS SELECT COUNT(*) AS n FROM trades EMIT CHANGES";

/// Threads of this process whose name starts with `prefix`.
fn threads_named(prefix: &str) -> usize {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .filter(|name| name.starts_with(prefix))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_waits_for_a_checkpoint_writing_its_files() {
    let dir = tempfile::tempdir().unwrap();
    let storage = dir.path().join("pipeline");
    let failpoints = tempfile::tempdir().unwrap();
    // Set before any thread of this test binary reads them (the binary
    // has this one test).
    std::env::set_var("LAMINARDB_FAILPOINT", "checkpoint-gathered");
    std::env::set_var("LAMINARDB_FAILPOINT_DIR", failpoints.path());
    let held = failpoints.path().join("checkpoint-gathered.held");
    let release = failpoints.path().join("checkpoint-gathered.release");
    let db = LaminarDB::builder()
        .shards(2)
        .storage_dir(&storage)
        .durability(Durability::Sync)
        .build()
        .unwrap();
    db.execute(TRADES_DDL).await.unwrap();
    db.execute(VIEW).await.unwrap();
    let handle = db.source_untyped("trades").unwrap();
    db.start().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    // A new thread takes its name once it runs.
    while threads_named("laminar-shard") < 2 {
        assert!(Instant::now() < deadline, "shard threads are named");
        tokio::task::yield_now().await;
    }
    for batch in random_batches(&trades(3, 500, 10, 0), 3, 50) {
        handle.push(batch).unwrap();
    }
    let stopper = async {
        while !held.exists() {
            assert!(Instant::now() < deadline, "the checkpoint never gathered");
            tokio::task::yield_now().await;
        }
        let releaser = async {
            while threads_named("laminar-shard") > 0 {
                assert!(Instant::now() < deadline, "the shards never exited");
                tokio::task::yield_now().await;
            }
            std::fs::write(&release, b"").unwrap();
        };
        let shutdown = async {
            db.shutdown().await.unwrap();
            // Returned only after the checkpoint let go of the directory.
            assert!(release.exists(), "shutdown returned during a checkpoint");
            std::fs::remove_dir_all(&storage).unwrap();
        };
        tokio::join!(releaser, shutdown);
    };
    let (checkpoint, ()) = tokio::join!(db.checkpoint(), stopper);
    // Its state was whole before the stop, so the checkpoint stands.
    checkpoint.unwrap();
    assert!(!storage.exists(), "a file was written after shutdown");
}
