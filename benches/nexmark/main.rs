//! Nexmark q0–q22 on LaminarDB, beside Flink's published per-core figures.
//!
//! Run: `cargo bench --bench nexmark` (options after `--`: `--events N`,
//! default 2,000,000; `--shards S`, default 1; `--batch-rows B`, default
//! 1,024; `--check-events M`, default 20,000; `--query qN` for one).
//!
//! Each query runs in a process of its own (so its peak memory is its
//! own): first a correctness check, the streaming result over M events
//! against DataFusion's batch answer over the same rows; then the timed
//! run over N events: every event generated and cut into batches before
//! the clock starts, then pushed from one thread in generation order,
//! every window closed, every result received. Events/s counts all three
//! event kinds, as Nexmark does; per core divides by the shard count.
//! Queries the engine refuses are listed with their error. With
//! `--features allocation-tracking` the table also gives what the shard
//! threads allocated per 1,000 events in the timed run.

mod data;
mod harness;

use std::process::Command;

/// Flink 1.13's per-core throughput from the Nexmark repository's README
/// (events/s), for the queries it lists.
const FLINK_PER_CORE: [(&str, u64); 22] = [
    ("q0", 155_000),
    ("q1", 158_000),
    ("q2", 175_000),
    ("q3", 152_000),
    ("q4", 34_000),
    ("q5", 22_000),
    ("q7", 12_000),
    ("q8", 146_000),
    ("q9", 14_000),
    ("q10", 58_000),
    ("q11", 40_000),
    ("q12", 76_000),
    ("q13", 131_000),
    ("q14", 161_000),
    ("q15", 72_000),
    ("q16", 19_000),
    ("q17", 117_000),
    ("q18", 54_000),
    ("q19", 44_000),
    ("q20", 19_000),
    ("q21", 98_000),
    ("q22", 130_000),
];

struct Options {
    events: usize,
    shards: usize,
    batch_rows: usize,
    check_events: usize,
    query: Option<String>,
    child: bool,
}

fn options() -> Options {
    let mut options = Options {
        events: 2_000_000,
        shards: 1,
        batch_rows: 1024,
        check_events: 20_000,
        query: None,
        child: false,
    };
    let args: Vec<String> = std::env::args().collect();
    let mut i = 1;
    while i < args.len() {
        let value = args.get(i + 1).cloned().unwrap_or_default();
        let number = || value.replace('_', "").parse::<usize>().ok();
        match args[i].as_str() {
            "--events" => options.events = number().unwrap_or(options.events),
            "--shards" => options.shards = number().unwrap_or(options.shards),
            "--batch-rows" => options.batch_rows = number().unwrap_or(options.batch_rows),
            "--check-events" => options.check_events = number().unwrap_or(options.check_events),
            "--query" => options.query = Some(value),
            "--child" => {
                options.child = true;
                i -= 1;
            }
            // `cargo bench` passes `--bench`; anything else is ignored.
            _ => i -= 1,
        }
        i += 2;
    }
    options
}

/// A `/proc/self/status` figure (`VmHWM:`, `VmRSS:`) in MiB.
fn status_mib(key: &str) -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map_or(0.0, |kib| kib / 1024.0)
}

/// One query, in this process: prints one `RESULT` line.
fn child(options: &Options) {
    let name = options.query.clone().expect("--query");
    let query = harness::queries()
        .into_iter()
        .find(|q| q.name == name)
        .expect("a query of that name");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let small = data::generate(options.check_events, options.batch_rows);
    let checked = rt.block_on(async {
        let streamed = harness::streaming(&query, &small, options.shards).await?;
        let batch = harness::batch(&query, &small)
            .await
            .map_err(|e| format!("batch: {e}"))?;
        harness::compare(&streamed.rows, &batch)
    });
    let checked = match checked {
        Ok(rows) => format!("yes ({rows} rows)"),
        Err(e) if e.starts_with("LDB-") => {
            println!("RESULT {name} refused {}", e.lines().next().unwrap_or(""));
            return;
        }
        Err(e) => format!("MISMATCH: {e}"),
    };
    drop(small);
    let events = data::generate(options.events, options.batch_rows);
    let before_mib = status_mib("VmRSS:");
    match rt.block_on(harness::streaming(&query, &events, options.shards)) {
        Ok(streamed) => {
            let rows: usize = streamed.rows.iter().map(|b| b.num_rows()).sum();
            let allocations = streamed.shard_allocations.map_or("-".to_string(), |a| {
                format!("{:.1}", a as f64 * 1000.0 / options.events as f64)
            });
            println!(
                "RESULT {name} ok {} {} {:.0}/{:.0} {allocations} {checked}",
                streamed.elapsed.as_micros(),
                rows,
                status_mib("VmHWM:"),
                before_mib,
            );
        }
        Err(e) => println!("RESULT {name} failed {e}"),
    }
}

fn main() {
    let options = options();
    if options.child {
        child(&options);
        return;
    }
    let exe = std::env::current_exe().expect("this binary");
    let started = std::time::Instant::now();
    let sample = data::generate(options.events.min(500_000), options.batch_rows);
    let generation = sample.total() as f64 / started.elapsed().as_secs_f64();
    drop(sample);
    println!(
        "Nexmark, {} events ({} shard(s), batches of {} rows); correctness over {} events",
        options.events, options.shards, options.batch_rows, options.check_events
    );
    println!(
        "Generating the events (nexmark crate, then Arrow batches) runs at {generation:.0} events/s \
         on this machine and is not timed: events are generated before the clock starts."
    );
    println!();
    println!("| query | LaminarDB events/s per core | Flink 1.13 per core | ratio | output rows | peak RSS / RSS with the input generated (MiB) | shard allocations per 1,000 events | checked against DataFusion |");
    println!("|---|---:|---:|---:|---:|---:|---:|---|");
    for query in harness::queries() {
        if options.query.as_ref().is_some_and(|q| q != &query.name) {
            continue;
        }
        let output = Command::new(&exe)
            .args(["--child", "--query", &query.name])
            .args(["--events", &options.events.to_string()])
            .args(["--shards", &options.shards.to_string()])
            .args(["--batch-rows", &options.batch_rows.to_string()])
            .args(["--check-events", &options.check_events.to_string()])
            .output()
            .expect("run a query");
        let text = String::from_utf8_lossy(&output.stdout);
        let line = text
            .lines()
            .find_map(|l| l.strip_prefix("RESULT "))
            .map(str::to_string)
            .unwrap_or_else(|| {
                format!(
                    "{} crashed {}",
                    query.name,
                    String::from_utf8_lossy(&output.stderr)
                        .lines()
                        .last()
                        .unwrap_or("")
                )
            });
        let flink = FLINK_PER_CORE
            .iter()
            .find(|(q, _)| *q == query.name)
            .map(|(_, f)| *f);
        let flink_text = flink.map_or("-".to_string(), |f| format!("{}", f));
        let mut parts = line.splitn(3, ' ');
        let (_, status, rest) = (
            parts.next().unwrap_or(""),
            parts.next().unwrap_or(""),
            parts.next().unwrap_or(""),
        );
        if status == "ok" {
            let fields: Vec<&str> = rest.splitn(5, ' ').collect();
            let micros: f64 = fields[0].parse().unwrap_or(f64::NAN);
            let per_core = options.events as f64 / (micros / 1e6) / options.shards as f64;
            let ratio = flink.map_or("-".to_string(), |f| format!("{:.0}x", per_core / f as f64));
            println!(
                "| {} | {:.0} | {flink_text} | {ratio} | {} | {} | {} | {} |",
                query.name,
                per_core,
                fields.get(1).unwrap_or(&""),
                fields.get(2).unwrap_or(&""),
                fields.get(3).unwrap_or(&""),
                fields.get(4).unwrap_or(&"")
            );
        } else {
            println!(
                "| {} | {status}: {} | {flink_text} | - | - | - | - | - |",
                query.name,
                rest.replace('|', "\\|")
            );
        }
    }
}
