//! Durability through the API, against real files: a database reopened on
//! its storage directory replays its WAL and ends where an uninterrupted
//! run would; bad set-ups and a full disk fail with their codes.

mod common;

use std::path::Path;

use common::*;
use laminar_db::arrow::array::RecordBatch;
use laminar_db::{Durability, ErrorCode, LaminarDB};

const DDL: &str = "
CREATE STREAM per_minute AS
SELECT symbol, COUNT(*) AS trades, SUM(volume) AS volume, MAX(price) AS high
FROM trades GROUP BY symbol, tumble(ts, INTERVAL '1' MINUTE);
CREATE STREAM per_symbol AS
SELECT symbol, SUM(volume) AS volume FROM trades GROUP BY symbol EMIT CHANGES";
const QUERY: &str = "SELECT symbol, COUNT(*) AS trades, SUM(volume) AS volume, MAX(price) AS high
FROM trades GROUP BY symbol, tumble(ts, INTERVAL '1' MINUTE)";

fn open(dir: &Path, shards: usize, durability: Durability) -> LaminarDB {
    LaminarDB::builder()
        .shards(shards)
        .storage_dir(dir)
        .durability(durability)
        .build()
        .unwrap()
}

/// Opens the database on `dir`, pushes `batches` and, with `close`, ends
/// the input; returns what the two streams emitted (replayed results
/// included) and the rows recovered at start.
async fn session(
    dir: &Path,
    shards: usize,
    durability: Durability,
    batches: Vec<RecordBatch>,
    close: bool,
) -> (Vec<RecordBatch>, Vec<RecordBatch>, u64) {
    let db = open(dir, shards, durability);
    db.execute(TRADES_DDL).await.unwrap();
    db.execute(DDL).await.unwrap();
    let windows = collect(db.subscribe("per_minute").unwrap());
    let changes = collect(db.subscribe("per_symbol").unwrap());
    let handle = db.source_untyped("trades").unwrap();
    db.start().await.unwrap();
    let recovered = db.recovered_rows("trades").unwrap();
    for b in batches {
        handle.push(b).unwrap();
    }
    if close {
        handle.watermark(i64::MAX).unwrap();
    }
    db.shutdown().await.unwrap();
    assert!(db.errors().is_empty(), "{:?}", db.errors());
    (windows.join().unwrap(), changes.join().unwrap(), recovered)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reopening_replays_the_wal_and_matches_the_oracle() {
    let rows = trades(5, 6_000, 30, 3_000);
    let want = run_batch(QUERY, "trades", vec![trades_batch(&rows)], trades_schema()).await;
    let want_totals = run_batch(
        "SELECT symbol, SUM(volume) AS volume FROM trades GROUP BY symbol",
        "trades",
        vec![trades_batch(&rows)],
        trades_schema(),
    )
    .await;
    for (shards, durability) in [
        (1, Durability::Sync),
        (2, Durability::Sync),
        (2, Durability::Async),
    ] {
        let dir = tempfile::tempdir().unwrap();
        // Three runs on one directory; the first two stop with windows
        // open, the last one ends the input.
        let mut last = None;
        for (run, part) in rows.chunks(2_000).enumerate() {
            let (windows, changes, recovered) = session(
                dir.path(),
                shards,
                durability,
                random_batches(part, run as u64 + 1, 300),
                run == 2,
            )
            .await;
            assert_eq!(
                recovered,
                run as u64 * 2_000,
                "{shards} shards, {durability:?}"
            );
            last = Some((windows, changes));
        }
        let (windows, changes) = last.unwrap();
        // The last run's subscribers saw everything: the replayed input's
        // results and the new input's.
        assert_same_rows(&windows, &want);
        assert_same_rows(&consolidate(&changes), &want_totals);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_belongs_to_one_pipeline() {
    let dir = tempfile::tempdir().unwrap();
    let rows = trades(6, 100, 5, 0);
    session(
        dir.path(),
        1,
        Durability::Sync,
        vec![trades_batch(&rows)],
        false,
    )
    .await;

    // Another shard count.
    let db = open(dir.path(), 2, Durability::Sync);
    db.execute(TRADES_DDL).await.unwrap();
    db.execute(DDL).await.unwrap();
    let err = db.start().await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::StorageMismatch, "{err}");
    assert!(err.to_string().contains("shards 1"), "{err}");
    drop(db);

    // Other SQL.
    let db = open(dir.path(), 1, Durability::Sync);
    db.execute(TRADES_DDL).await.unwrap();
    db.execute("CREATE STREAM other AS SELECT symbol FROM trades")
        .await
        .unwrap();
    let err = db.start().await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::StorageMismatch, "{err}");
    assert_eq!(err.code().to_string(), "LDB-6002");

    // Open twice at once.
    let err = LaminarDB::builder()
        .shards(1)
        .storage_dir(dir.path())
        .build()
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::StorageLocked, "{err}");
    drop(db);
    // Released with the first database.
    open(dir.path(), 1, Durability::Sync);

    // The same SQL, planned into other operators (as by another version):
    // its checkpoints would be read as the wrong state.
    let path = dir.path().join("PIPELINE");
    let recorded = std::fs::read_to_string(&path).unwrap();
    let (sql, operators) = recorded.split_once("operators\n").unwrap();
    assert!(operators.contains("WindowAggregate"), "{recorded}");
    std::fs::write(
        &path,
        format!(
            "{sql}operators\n{}",
            operators.replace("WindowAggregate", "ChangelogAggregate")
        ),
    )
    .unwrap();
    let db = open(dir.path(), 1, Durability::Sync);
    db.execute(TRADES_DDL).await.unwrap();
    db.execute(DDL).await.unwrap();
    let err = db.start().await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::StorageMismatch, "{err}");
    assert!(
        err.to_string().contains("plans it into other operators"),
        "{err}"
    );
}

#[test]
fn durability_settings_are_checked() {
    let err = LaminarDB::builder()
        .durability(Durability::Sync)
        .build()
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::InvalidConfig);
    assert!(err.to_string().contains("storage directory"), "{err}");
    let dir = tempfile::tempdir().unwrap();
    let err = LaminarDB::builder()
        .storage_dir(dir.path())
        .durability(Durability::Memory)
        .build()
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::InvalidConfig);
    let err = LaminarDB::builder()
        .storage_dir(dir.path())
        .wal_segment_bytes(1000)
        .build()
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::InvalidConfig);
    assert!(err.to_string().contains("multiple of 4096"), "{err}");
}

/// A database on `dir` with the smallest WAL segments and the test DDL.
async fn small_segments(dir: &Path) -> LaminarDB {
    let db = LaminarDB::builder()
        .shards(1)
        .storage_dir(dir)
        .wal_segment_bytes(64 * 1024)
        .build()
        .unwrap();
    db.execute(TRADES_DDL).await.unwrap();
    db.execute(DDL).await.unwrap();
    db
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_batch_is_refused_with_its_code() {
    let dir = tempfile::tempdir().unwrap();
    let db = small_segments(dir.path()).await;
    let handle = db.source_untyped("trades").unwrap();
    db.start().await.unwrap();
    let big = trades_batch(&trades(7, 20_000, 5, 0));
    let err = handle.push(big).unwrap_err();
    assert_eq!(err.code().to_string(), "LDB-6003", "{err}");
    assert!(err.to_string().contains("smaller batches"), "{err}");
    // Refused before anything was sent: the database goes on.
    handle.push(trades_batch(&trades(8, 10, 5, 0))).unwrap();
    db.shutdown().await.unwrap();
    drop(handle);
    drop(db);
    let db = small_segments(dir.path()).await;
    db.start().await.unwrap();
    assert_eq!(db.recovered_rows("trades").unwrap(), 10);
    db.shutdown().await.unwrap();
}

/// Several handles pushing out-of-order rows, on two shards: replaying the
/// log must give back exactly what the first run emitted (late rows
/// included), because it runs each shard's messages in the order the
/// shard ran them, with each handle's lane opened and closed where it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_reproduces_what_several_handles_did() {
    const WINDOWS: &str = "
CREATE STREAM counts AS
SELECT symbol, COUNT(*) AS trades, SUM(volume) AS volume FROM trades
GROUP BY symbol, tumble(ts, INTERVAL '2' SECOND)";
    let dir = tempfile::tempdir().unwrap();
    let rows = trades(12, 6_000, 8, 20_000);
    let first_run = {
        let db = open(dir.path(), 2, Durability::Sync);
        db.execute(TRADES_DDL).await.unwrap();
        db.execute(WINDOWS).await.unwrap();
        let out = collect(db.subscribe("counts").unwrap());
        let source = db.source_untyped("trades").unwrap();
        db.start().await.unwrap();
        let mut handles = vec![source.clone(), source.clone()];
        for (i, chunk) in rows.chunks(97).enumerate() {
            match i % 7 {
                // A handle goes away mid-run; another one joins.
                3 if handles.len() > 1 => {
                    handles.remove(0);
                }
                5 => handles.push(source.clone()),
                _ => {}
            }
            handles[i % handles.len()]
                .push(trades_batch(chunk))
                .unwrap();
        }
        drop(handles);
        db.shutdown().await.unwrap();
        let late = db.metrics().streams[0].late_rows;
        assert!(late > 0, "the input should have late rows");
        out.join().unwrap()
    };
    assert!(row_count(&first_run) > 0);
    let db = open(dir.path(), 2, Durability::Sync);
    db.execute(TRADES_DDL).await.unwrap();
    db.execute(WINDOWS).await.unwrap();
    let out = collect(db.subscribe("counts").unwrap());
    db.start().await.unwrap();
    db.shutdown().await.unwrap();
    assert_same_rows(&out.join().unwrap(), &first_run);
}

/// Rows pushed to a source no stream reads are kept (for ad-hoc queries)
/// and so are logged and recovered too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_of_a_source_without_streams_are_recovered() {
    let dir = tempfile::tempdir().unwrap();
    for round in 0..2 {
        let db = open(dir.path(), 2, Durability::Sync);
        db.execute(TRADES_DDL).await.unwrap();
        let handle = db.source_untyped("trades").unwrap();
        db.start().await.unwrap();
        if round == 0 {
            handle.push(trades_batch(&trades(13, 250, 5, 0))).unwrap();
        } else {
            assert_eq!(db.recovered_rows("trades").unwrap(), 250);
            let rows = db.sql("SELECT COUNT(*) AS n FROM trades").await.unwrap();
            assert!(laminar_db::pretty(&rows).unwrap().contains("250"));
        }
        db.shutdown().await.unwrap();
    }
}

/// A real full disk: a 1 MiB tmpfs (O_DIRECT works on tmpfs). Pushes
/// that were acknowledged before the disk filled are all recovered, and
/// nothing else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_fails_the_push_and_loses_nothing_acknowledged() {
    let mount = tempfile::tempdir().unwrap();
    let status = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
        .arg(mount.path())
        .status()
        .expect("mount");
    assert!(status.success(), "mounting a tmpfs needs root");
    let unmount = Unmount(mount.path().to_path_buf());
    let dir = mount.path().join("db");
    let db = LaminarDB::builder()
        .shards(1)
        .storage_dir(&dir)
        .wal_segment_bytes(128 * 1024)
        .build()
        .unwrap();
    db.execute(TRADES_DDL).await.unwrap();
    db.execute(DDL).await.unwrap();
    let handle = db.source_untyped("trades").unwrap();
    db.start().await.unwrap();
    let rows = trades(9, 40_000, 20, 0);
    let mut acknowledged = 0u64;
    let mut failure = None;
    for chunk in rows.chunks(500) {
        match handle.push(trades_batch(chunk)) {
            Ok(()) => acknowledged += chunk.len() as u64,
            Err(e) => {
                failure = Some(e);
                break;
            }
        }
    }
    let failure = failure.expect("a 1 MiB disk fills up");
    assert_eq!(failure.code(), ErrorCode::WalWrite, "{failure}");
    assert!(failure.to_string().contains("full"), "{failure}");
    let again = handle.push(trades_batch(&rows[..1])).unwrap_err();
    assert_eq!(again.code(), ErrorCode::WalWrite);
    db.shutdown().await.unwrap();
    drop(handle);
    drop(db);

    // Move the directory to a disk with room and reopen it there.
    let roomy = tempfile::tempdir().unwrap();
    let copy = std::process::Command::new("cp")
        .args(["-a"])
        .arg(&dir)
        .arg(roomy.path())
        .status()
        .unwrap();
    assert!(copy.success());
    drop(unmount);
    let db = LaminarDB::builder()
        .shards(1)
        .storage_dir(roomy.path().join("db"))
        .build()
        .unwrap();
    db.execute(TRADES_DDL).await.unwrap();
    db.execute(DDL).await.unwrap();
    db.start().await.unwrap();
    assert_eq!(db.recovered_rows("trades").unwrap(), acknowledged);
    db.shutdown().await.unwrap();
}

struct Unmount(std::path::PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

/// Out-of-order input past the bound: rows carry their own watermarks
/// through the WAL, late rows are dropped (and side-output) exactly as in
/// an uninterrupted run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_rows_replay_like_the_uninterrupted_run() {
    const LATE_DDL: &str = "
CREATE STREAM counts WITH (late_data = 'side_output') AS
SELECT symbol, COUNT(*) AS trades FROM trades
GROUP BY symbol, tumble(ts, INTERVAL '10' SECOND)";
    let rows = trades(11, 4_000, 10, 30_000);
    let batches = random_batches(&rows, 4, 200);
    let (want, _) = run_stream(
        &format!("{TRADES_DDL}; {LATE_DDL}"),
        "trades",
        "counts",
        batches.clone(),
        2,
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let (first, second) = batches.split_at(batches.len() / 2);
    let mut late_total = 0;
    for (part, close) in [(first.to_vec(), false), (second.to_vec(), true)] {
        let db = open(dir.path(), 2, Durability::Sync);
        db.execute(TRADES_DDL).await.unwrap();
        db.execute(LATE_DDL).await.unwrap();
        let collector = collect(db.subscribe("counts").unwrap());
        let late_collector = collect(db.subscribe("counts_late").unwrap());
        let handle = db.source_untyped("trades").unwrap();
        db.start().await.unwrap();
        for b in part {
            handle.push(b).unwrap();
        }
        if close {
            handle.watermark(i64::MAX).unwrap();
        }
        db.shutdown().await.unwrap();
        let got = collector.join().unwrap();
        late_total = row_count(&late_collector.join().unwrap());
        if close {
            assert_same_rows(&got, &want);
        }
    }
    assert!(late_total > 0, "the input has late rows");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tables_keep_their_rows_across_reopens() {
    let dir = tempfile::tempdir().unwrap();
    const TABLE: &str =
        "CREATE TABLE symbols (symbol VARCHAR NOT NULL PRIMARY KEY, sector VARCHAR, lot BIGINT)";
    let query = |db: LaminarDB| async move {
        let rows = db
            .sql("SELECT symbol, sector, lot FROM symbols ORDER BY symbol")
            .await
            .unwrap();
        laminar_db::pretty(&rows).unwrap()
    };
    let want = {
        let db = open(dir.path(), 1, Durability::Sync);
        db.execute(TABLE).await.unwrap();
        db.execute("INSERT INTO symbols VALUES ('AAPL', 'tech', 100), ('XOM', 'energy', 10)")
            .await
            .unwrap();
        // An upsert replaces AAPL's row.
        db.execute("INSERT INTO symbols VALUES ('AAPL', 'hardware', 50)")
            .await
            .unwrap();
        query(db).await
    };
    assert!(
        want.contains("hardware") && !want.contains("tech"),
        "{want}"
    );
    // A torn last insert (a crash mid-write) is cut; the rest is kept.
    let log = dir.path().join("tables").join("symbols.log");
    let mut bytes = std::fs::read(&log).unwrap();
    bytes.extend_from_slice(b"LTBL\x40\x00\x00\x00garbage");
    std::fs::write(&log, &bytes).unwrap();
    let db = open(dir.path(), 1, Durability::Sync);
    db.execute(TABLE).await.unwrap();
    assert_eq!(query(db.clone()).await, want);
    db.execute("INSERT INTO symbols VALUES ('MSFT', 'tech', 20)")
        .await
        .unwrap();
    drop(db);
    let db = open(dir.path(), 1, Durability::Sync);
    let err = db
        .execute("CREATE TABLE symbols (symbol VARCHAR NOT NULL PRIMARY KEY)")
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::StorageMismatch, "{err}");
    db.execute(TABLE).await.unwrap();
    let now = query(db.clone()).await;
    assert!(now.contains("MSFT") && now.contains("hardware"), "{now}");
    // DROP TABLE forgets the rows on disk too.
    db.execute("DROP TABLE symbols").await.unwrap();
    db.execute("CREATE TABLE symbols (symbol VARCHAR NOT NULL PRIMARY KEY)")
        .await
        .unwrap();
    let rows = db.sql("SELECT * FROM symbols").await.unwrap();
    assert_eq!(row_count(&rows), 0);
}
