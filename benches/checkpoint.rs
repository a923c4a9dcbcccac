//! What checkpoints cost and what they buy, as functions of state size: a
//! keyed `EMIT CHANGES` aggregate holding K groups (K = 10 k, 100 k, 1 M;
//! one shard), fed 10 events per key (so the WAL holds 10 K events), then
//!
//! - `take_changed_1pct/K` and `take_changed_all/K`: one `db.checkpoint()`
//!   after 1% of the keys (or all of them) got an event since the last
//!   one (copy on the shard, digest and diff against the base, Arrow IPC
//!   encode, write and fsync of the files and the manifest). The first is
//!   written as a patch, the second whole: the ratio is what incremental
//!   checkpoints save;
//! - `recover_checkpoint/K`: reopen, load the checkpoint (written whole),
//!   nothing to replay, until recovery is done;
//! - `recover_patch/K`: the same from a checkpoint that is a patch (1% of
//!   the keys changed) over a whole one: two files per shard;
//! - `recover_replay/K`: the baseline in the same run, reopening the same
//!   state with no checkpoint, so the 10 K logged events are replayed.
//!
//! - `file_direct/B` against `file_buffered/B`: writing a checkpoint file
//!   of B bytes and making it durable, with O_DIRECT (what checkpoints do)
//!   and through the page cache, in the same run.
//!
//! Run: `cargo bench --bench checkpoint`. Storage directories go under the
//! target directory (a real disk).

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use datafusion::arrow::array::{Int64Array, RecordBatch};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use laminar_db::{Durability, LaminarDB};

mod common;

use common::storage_root;

const DDL: &str = "CREATE SOURCE events (account BIGINT NOT NULL, amount BIGINT NOT NULL,
    ts BIGINT NOT NULL, WATERMARK FOR ts AS ts - INTERVAL '1' SECOND);
CREATE STREAM per_account AS SELECT account, SUM(amount) AS total, COUNT(*) AS n
FROM events GROUP BY account EMIT CHANGES";

/// Events an account gets.
const UPDATES: usize = 10;

/// `UPDATES` events per key, keys round robin, in batches of 8192.
fn input(keys: usize) -> Vec<RecordBatch> {
    let schema = Arc::new(Schema::new(vec![
        Field::new("account", DataType::Int64, false),
        Field::new("amount", DataType::Int64, false),
        Field::new("ts", DataType::Int64, false),
    ]));
    let events = keys * UPDATES;
    let keys = keys as i64;
    (0..events)
        .step_by(8192)
        .map(|start| {
            let end = (start + 8192).min(events) as i64;
            let start = start as i64;
            RecordBatch::try_new(
                Arc::clone(&schema),
                vec![
                    Arc::new(Int64Array::from_iter_values((start..end).map(|i| i % keys))),
                    Arc::new(Int64Array::from_iter_values((start..end).map(|i| i % 97))),
                    Arc::new(Int64Array::from_iter_values(start..end)),
                ],
            )
            .expect("batch")
        })
        .collect()
}

async fn open(dir: &std::path::Path) -> LaminarDB {
    let db = LaminarDB::builder()
        .shards(1)
        .storage_dir(dir)
        .durability(Durability::Async)
        .build()
        .expect("db");
    db.execute(DDL).await.expect("ddl");
    db
}

/// One event for every `stride`-th key, stamped from `ts`.
fn updates(keys: usize, stride: usize, ts: i64) -> Vec<RecordBatch> {
    let schema = input(1)[0].schema();
    let accounts: Vec<i64> = (0..keys).step_by(stride).map(|k| k as i64).collect();
    accounts
        .chunks(8192)
        .map(|chunk| {
            RecordBatch::try_new(
                Arc::clone(&schema),
                vec![
                    Arc::new(Int64Array::from(chunk.to_vec())),
                    Arc::new(Int64Array::from_value(3, chunk.len())),
                    Arc::new(Int64Array::from_value(ts, chunk.len())),
                ],
            )
            .expect("batch")
        })
        .collect()
}

/// How a prepared directory ends.
#[derive(Clone, Copy, PartialEq)]
enum Ending {
    /// Nothing but the WAL.
    Log,
    /// A checkpoint written whole.
    Whole,
    /// A patch (1% of the keys changed) over a whole checkpoint.
    Patch,
}

/// A storage directory holding `keys` groups.
fn prepare(rt: &tokio::runtime::Runtime, keys: usize, ending: Ending) -> tempfile::TempDir {
    let dir = tempfile::tempdir_in(storage_root("checkpoint-bench")).expect("dir");
    rt.block_on(async {
        let db = open(dir.path()).await;
        let source = db.source_untyped("events").expect("source");
        db.start().await.expect("start");
        for batch in input(keys) {
            source.push(batch).expect("push");
        }
        if ending != Ending::Log {
            db.checkpoint().await.expect("checkpoint");
        }
        if ending == Ending::Patch {
            for batch in updates(keys, 100, (keys * UPDATES) as i64) {
                source.push(batch).expect("push");
            }
            let info = db.checkpoint().await.expect("checkpoint");
            assert_eq!(info.patched_shards, 1, "a patch");
        }
        db.shutdown().await.expect("shutdown");
    });
    dir
}

fn reopen(rt: &tokio::runtime::Runtime, dir: &std::path::Path) -> Duration {
    rt.block_on(async {
        let started = Instant::now();
        let db = open(dir).await;
        db.start().await.expect("start");
        db.wait_recovered().await.expect("recovered");
        let elapsed = started.elapsed();
        db.shutdown().await.expect("shutdown");
        elapsed
    })
}

fn checkpoints(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("rt");
    let mut group = c.benchmark_group("checkpoint");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(5));
    for keys in [10_000usize, 100_000, 1_000_000] {
        group.throughput(Throughput::Elements(keys as u64));
        // A running database holding the state; each iteration takes one
        // more checkpoint of it.
        let dir = tempfile::tempdir_in(storage_root("checkpoint-bench")).expect("dir");
        let (db, source) = rt.block_on(async {
            let db = open(dir.path()).await;
            let source = db.source_untyped("events").expect("source");
            db.start().await.expect("start");
            for batch in input(keys) {
                source.push(batch).expect("push");
            }
            let info = db.checkpoint().await.expect("checkpoint");
            println!("first checkpoint of {keys} keys: {} bytes", info.bytes);
            (db, source)
        });
        let mut ts = (keys * UPDATES) as i64;
        for (name, stride) in [("take_changed_1pct", 100), ("take_changed_all", 1)] {
            let mut bytes = 0;
            let mut patched = 0;
            group.bench_function(BenchmarkId::new(name, keys), |b| {
                b.iter_custom(|iters| {
                    (0..iters)
                        .map(|_| {
                            ts += 1;
                            for batch in updates(keys, stride, ts) {
                                source.push(batch).expect("push");
                            }
                            let info = rt.block_on(db.checkpoint()).expect("checkpoint");
                            bytes = info.bytes;
                            patched = info.patched_shards;
                            info.duration
                        })
                        .sum()
                })
            });
            println!("{name}/{keys}: {bytes} bytes, {patched} shard(s) patched");
        }
        rt.block_on(db.shutdown()).expect("shutdown");
        let with = prepare(&rt, keys, Ending::Whole);
        let patched = prepare(&rt, keys, Ending::Patch);
        let without = prepare(&rt, keys, Ending::Log);
        group.bench_function(BenchmarkId::new("recover_checkpoint", keys), |b| {
            b.iter_custom(|iters| (0..iters).map(|_| reopen(&rt, with.path())).sum())
        });
        group.bench_function(BenchmarkId::new("recover_patch", keys), |b| {
            b.iter_custom(|iters| (0..iters).map(|_| reopen(&rt, patched.path())).sum())
        });
        group.bench_function(BenchmarkId::new("recover_replay", keys), |b| {
            b.iter_custom(|iters| (0..iters).map(|_| reopen(&rt, without.path())).sum())
        });
    }
    group.finish();
}

fn files(c: &mut Criterion) {
    let mut group = c.benchmark_group("checkpoint_file");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(5));
    let dir = tempfile::tempdir_in(storage_root("checkpoint-bench")).expect("dir");
    let path = dir.path().join("file");
    for bytes in [4usize << 20, 48 << 20] {
        let data: Vec<u8> = (0..bytes).map(|i| (i * 31 % 251) as u8).collect();
        group.throughput(Throughput::Bytes(bytes as u64));
        group.bench_function(BenchmarkId::new("file_direct", bytes), |b| {
            b.iter(|| laminar_state::file::write_durable(&path, &data).expect("write"))
        });
        group.bench_function(BenchmarkId::new("file_buffered", bytes), |b| {
            b.iter(|| {
                let mut file = std::fs::File::create(&path).expect("create");
                std::io::Write::write_all(&mut file, &data).expect("write");
                file.sync_all().expect("sync");
            })
        });
    }
    group.finish();
}

criterion_group!(benches, checkpoints, files);
criterion_main!(benches);
