//! Crash test: `laminardb run` with a storage directory, killed with
//! SIGKILL at random moments and started again on the same directory until
//! it completes, must write exactly what an uninterrupted run writes: no
//! row lost, none duplicated.
//!
//! `LAMINARDB_CRASH_ITERATIONS` sets how many kills per durability mode
//! (default 6; docs/OPERATIONS.md shows a longer run).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const SQL: &str = "
CREATE SOURCE trades (symbol VARCHAR NOT NULL, price DOUBLE NOT NULL, volume BIGINT NOT NULL,
    ts BIGINT NOT NULL, WATERMARK FOR ts AS ts - INTERVAL '5' SECOND);
CREATE STREAM vwap AS
SELECT symbol, SUM(price * CAST(volume AS DOUBLE)) / SUM(CAST(volume AS DOUBLE)) AS vwap,
       COUNT(*) AS trades
FROM trades GROUP BY symbol, tumble(ts, INTERVAL '1' MINUTE);
CREATE STREAM ohlc_1m AS
SELECT symbol, CAST(tumble(ts, INTERVAL '1' MINUTE) AS BIGINT) AS window_start,
       first_value(price) AS open, MAX(price) AS high, MIN(price) AS low,
       last_value(price) AS close, SUM(volume) AS volume
FROM trades GROUP BY symbol, tumble(ts, INTERVAL '1' MINUTE)
EMIT ON WINDOW CLOSE;
CREATE STREAM big AS SELECT symbol, price, volume, ts FROM trades WHERE volume > 900;
CREATE STREAM ohlc_5m AS
SELECT symbol, tumble(window_start, INTERVAL '5' MINUTE) AS w5, MAX(high) AS high
FROM ohlc_1m GROUP BY symbol, tumble(window_start, INTERVAL '5' MINUTE);
CREATE MATERIALIZED VIEW per_symbol AS
SELECT symbol, SUM(volume) AS volume, COUNT(*) AS trades FROM trades GROUP BY symbol
EMIT CHANGES;
SELECT symbol, volume, trades FROM per_symbol;
";

/// Outputs compared row by row (sorted); `vwap` by row count only, since
/// float sums in another order may differ in the last digit.
const OUTPUTS: [&str; 5] = ["vwap", "ohlc_1m", "big", "ohlc_5m", "query_1"];

struct Fixture {
    dir: tempfile::TempDir,
    sql: PathBuf,
    inputs: Vec<String>,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let sql = dir.path().join("q.sql");
    std::fs::write(&sql, SQL).unwrap();
    let rows = trades(21, 12_000, 40, 3_000);
    let (a, b): (Vec<Trade>, Vec<Trade>) = rows.iter().cloned().partition(|r| r.volume % 3 == 0);
    let mut inputs = Vec::new();
    for (name, rows) in [("a.csv", a), ("b.csv", b)] {
        let mut text = String::from("symbol,price,volume,ts\n");
        for r in rows {
            text.push_str(&format!("{},{},{},{}\n", r.symbol, r.price, r.volume, r.ts));
        }
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        inputs.push(format!("trades={}", path.display()));
    }
    Fixture { dir, sql, inputs }
}

/// A durable run's set-up: durability and, optionally, a checkpoint
/// interval in ms.
#[derive(Clone, Copy)]
struct Mode {
    durability: &'static str,
    checkpoint_ms: Option<u64>,
    /// `--wal-segment-bytes`: small segments make checkpoints release and
    /// the log recycle them while kills land.
    wal_segment_bytes: Option<u64>,
}

impl Mode {
    fn name(&self) -> String {
        match self.checkpoint_ms {
            Some(ms) => format!("{}-checkpoint-{ms}ms", self.durability),
            None => self.durability.to_string(),
        }
    }
}

fn command(f: &Fixture, out: &Path, storage: Option<(&Path, Mode)>) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_laminardb"));
    c.args(["run", "--sql"]).arg(&f.sql);
    for input in &f.inputs {
        c.arg("--input").arg(input);
    }
    c.arg("--output")
        .arg(out)
        .args(["--batch-rows", "64", "--shards", "2"]);
    if let Some((dir, mode)) = storage {
        c.arg("--storage-dir")
            .arg(dir)
            .args(["--durability", mode.durability]);
        if let Some(ms) = mode.checkpoint_ms {
            c.arg("--checkpoint-interval-ms").arg(ms.to_string());
        }
        if let Some(bytes) = mode.wal_segment_bytes {
            c.arg("--wal-segment-bytes").arg(bytes.to_string());
        }
    }
    c.stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    c
}

fn run_to_end(mut c: Command) {
    let out = c.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn sorted_rows(path: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    lines.sort();
    lines
}

fn assert_same_outputs(reference: &Path, got: &Path, what: &str) {
    for stream in OUTPUTS {
        let want = sorted_rows(&reference.join(format!("{stream}.csv")));
        let have = sorted_rows(&got.join(format!("{stream}.csv")));
        assert!(want.len() > 1, "{stream} is empty");
        if stream == "vwap" {
            assert_eq!(have.len(), want.len(), "{stream} rows, {what}");
        } else {
            assert_eq!(have, want, "{stream}, {what}");
        }
    }
}

/// `LAMINARDB_CRASH_SEED`, for the kill times (default 42).
fn seed() -> u64 {
    std::env::var("LAMINARDB_CRASH_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(42)
}

fn iterations() -> usize {
    std::env::var("LAMINARDB_CRASH_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(6)
}

/// Kills runs at random moments until one completes, then compares.
fn crash_until_done(f: &Fixture, reference: &Path, mode: Mode, kills: usize, seed: u64) {
    let name = mode.name();
    let storage = f.dir.path().join(format!("storage-{name}"));
    let out = f.dir.path().join(format!("out-{name}"));
    // How long a whole durable run takes here, to spread the kills over.
    let probe = f.dir.path().join(format!("probe-{name}"));
    let started = Instant::now();
    run_to_end(command(f, &out, Some((&probe, mode))));
    let full = started.elapsed();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut killed = 0;
    let mut attempts = 0;
    while killed < kills {
        attempts += 1;
        assert!(attempts < kills * 4, "runs keep finishing before the kill");
        let delay = full.mul_f64(rng.random_range(0.05..1.1));
        let mut child = command(f, &out, Some((&storage, mode))).spawn().unwrap();
        let deadline = Instant::now() + delay;
        while Instant::now() < deadline {
            if child.try_wait().unwrap().is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        match child.try_wait().unwrap() {
            Some(status) => {
                let mut stderr = String::new();
                std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
                assert!(status.success(), "run failed: {stderr}");
                // It finished: start over on a fresh directory so every
                // iteration exercises recovery.
                std::fs::remove_dir_all(&storage).unwrap();
            }
            None => {
                child.kill().unwrap();
                child.wait().unwrap();
                killed += 1;
            }
        }
    }
    run_to_end(command(f, &out, Some((&storage, mode))));
    assert_same_outputs(
        reference,
        &out,
        &format!("{name} after {killed} kills (seed {seed})"),
    );
    if mode.checkpoint_ms.is_some() {
        assert!(
            storage.join("checkpoints").join("MANIFEST").exists(),
            "{name}: no checkpoint was taken"
        );
    }
}

#[test]
fn killed_runs_resume_to_the_uninterrupted_result() {
    let f = fixture();
    let reference = f.dir.path().join("reference");
    run_to_end(command(&f, &reference, None));
    let kills = iterations();
    let seed = seed();
    let sync = Mode {
        durability: "sync",
        checkpoint_ms: None,
        wal_segment_bytes: None,
    };
    let asynchronous = Mode {
        durability: "async",
        checkpoint_ms: None,
        wal_segment_bytes: None,
    };
    crash_until_done(&f, &reference, sync, kills, seed);
    crash_until_done(&f, &reference, asynchronous, kills.div_ceil(2), seed + 1);
}

/// The same with frequent checkpoints: kills land before, during and after
/// them (a checkpoint takes about as long as its interval here), and each
/// restart loads the last complete one and replays the WAL after it.
#[test]
fn killed_runs_with_checkpoints_resume_to_the_uninterrupted_result() {
    let f = fixture();
    let reference = f.dir.path().join("reference");
    run_to_end(command(&f, &reference, None));
    let kills = iterations();
    let seed = seed();
    for (i, durability) in ["sync", "async"].into_iter().enumerate() {
        let mode = Mode {
            durability,
            checkpoint_ms: Some(10),
            wal_segment_bytes: Some(64 * 1024),
        };
        crash_until_done(&f, &reference, mode, kills, seed + 10 + i as u64);
    }
}

/// A run that dies at each step of writing a checkpoint (after its state
/// files, after its manifest's temporary file, after the manifest but
/// before the old checkpoint and WAL are deleted) resumes to the
/// uninterrupted result.
#[test]
fn a_crash_inside_a_checkpoint_loses_and_repeats_nothing() {
    let f = fixture();
    let reference = f.dir.path().join("reference");
    run_to_end(command(&f, &reference, None));
    // Small segments: the shards start at once (no 16 MiB zero-fill), so
    // the first checkpoint races the handle's connection (a handle that
    // connected while a checkpoint was requested once had its first
    // pushes both in that checkpoint and pushed again after a restart;
    // tests/checkpoint_race.rs holds that race open deterministically).
    let mode = Mode {
        durability: "sync",
        checkpoint_ms: Some(5),
        wal_segment_bytes: Some(64 * 1024),
    };
    for point in [
        "checkpoint-before-manifest",
        "checkpoint-manifest-written",
        "checkpoint-before-cleanup",
    ] {
        let storage = f.dir.path().join(format!("storage-{point}"));
        let out = f.dir.path().join(format!("out-{point}"));
        // The first run dies at its first checkpoint; the second at its
        // first too, with the first run's state to recover; the third
        // finishes.
        for _ in 0..2 {
            let died = command(&f, &out, Some((&storage, mode)))
                .env("LAMINARDB_FAILPOINT", point)
                .output()
                .unwrap();
            assert!(
                !died.status.success(),
                "{point}: the run did not stop there"
            );
            assert!(
                String::from_utf8_lossy(&died.stderr).contains(point),
                "{point}: {}",
                String::from_utf8_lossy(&died.stderr)
            );
        }
        run_to_end(command(&f, &out, Some((&storage, mode))));
        assert_same_outputs(&reference, &out, point);
    }
}
