//! Nexmark q0–q22 on LaminarDB, beside Flink's published per-core figures.
//!
//! Run: `cargo bench --bench nexmark` (options after `--`: `--events N`,
//! default 2,000,000; `--shards S`, default 1; `--batch-rows B`, default
//! 1,024; `--check-events M`, default 20,000; `--query qN` for one;
//! `--generated-only` skips the pushed run, whose one pushing thread
//! rather than the shards limits it once there are many shards;
//! `--two-phase` creates the query `WITH (two_phase = 'on')`).
//!
//! Each query runs in a process of its own (so its peak memory is its
//! own): first a correctness check, the streaming result over M events
//! generated inside the shards against DataFusion's batch answer over the
//! same rows; then two timed runs over N events, each until every window
//! closed and every result was received. In the first, the events are
//! generated inside the shards while the query runs (shard k of n makes
//! the events whose number is k modulo n: `LaminarDB::generate`), so the
//! figure counts making the events on the same cores, as Flink's
//! `datagen` figures do; the ratio to Flink uses it. In the second, every
//! event is generated and cut into batches before the clock starts, then
//! pushed from one thread in generation order: the engine alone. Events/s
//! counts all three event kinds, as Nexmark does; per core divides by the
//! shard count.
//! Queries the engine refuses are listed with their error. With
//! `--features allocation-tracking` the table also gives what the shard
//! threads allocated per 1,000 events in the timed run.

mod columns;
mod data;
mod harness;

use std::process::Command;

use datafusion::arrow::array::RecordBatch;
use laminar_db::Generator;

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
    generated_only: bool,
    two_phase: bool,
}

fn options() -> Options {
    let mut options = Options {
        events: 2_000_000,
        shards: 1,
        batch_rows: 1024,
        check_events: 20_000,
        query: None,
        child: false,
        generated_only: false,
        two_phase: false,
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
            "--generated-only" => {
                options.generated_only = true;
                i -= 1;
            }
            "--two-phase" => {
                options.two_phase = true;
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
    let mut query = harness::queries()
        .into_iter()
        .find(|q| q.name == name)
        .expect("a query of that name");
    if options.two_phase {
        query.with = "WITH (two_phase = 'on')".to_string();
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let small = data::generate(options.check_events, options.batch_rows);
    // Checked as timed: the events generated inside the shards.
    let generated = |events| harness::Input::Generated {
        events,
        batch_rows: options.batch_rows,
    };
    let checked = rt.block_on(async {
        let streamed = harness::streaming(
            &query,
            generated(options.check_events),
            options.shards,
            true,
        )
        .await?;
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
    // First with the events made inside the shards (before any are held
    // in memory, so the peak RSS is the query's own), then generated
    // beforehand and pushed: the engine alone.
    let before_mib = status_mib("VmRSS:");
    let in_shards = rt.block_on(harness::streaming(
        &query,
        generated(options.events),
        options.shards,
        false,
    ));
    let peak_mib = status_mib("VmHWM:");
    let pushed = if options.generated_only {
        Ok(None)
    } else {
        let events = data::generate(options.events, options.batch_rows);
        rt.block_on(harness::streaming(
            &query,
            harness::Input::Pushed(&events),
            options.shards,
            false,
        ))
        .map(Some)
    };
    match (in_shards, pushed) {
        (Ok(in_shards), Ok(pushed)) => {
            let rows = in_shards.row_count;
            let allocations = pushed
                .as_ref()
                .and_then(|p| p.shard_allocations)
                .map_or("-".to_string(), |a| {
                    format!("{:.1}", a as f64 * 1000.0 / options.events as f64)
                });
            let pushed_micros =
                pushed.map_or("-".to_string(), |p| p.elapsed.as_micros().to_string());
            println!(
                "RESULT {name} ok {} {pushed_micros} {} {:.0} {allocations} {checked}",
                in_shards.elapsed.as_micros(),
                rows,
                peak_mib - before_mib,
            );
        }
        (Err(e), _) | (_, Err(e)) => println!("RESULT {name} failed {e}"),
    }
}

fn main() {
    let options = options();
    if options.child {
        child(&options);
        return;
    }
    let exe = std::env::current_exe().expect("this binary");
    let sample_events = options.events.min(500_000);
    // Each batch dropped when made, as the shards drop it once processed.
    type Make<'a> = &'a dyn Fn(&mut dyn FnMut(RecordBatch));
    let rate = |make: Make| {
        let started = std::time::Instant::now();
        let mut rows = 0;
        make(&mut |batch| rows += batch.num_rows());
        rows as f64 / started.elapsed().as_secs_f64()
    };
    let columns = rate(&|each| {
        let mut partition = data::Partition::new(sample_events, options.batch_rows, 0, 1);
        while let Some((_, batch)) = partition.next_batch() {
            each(batch);
        }
    });
    let through_crate =
        rate(&|each| data::crate_batches(sample_events, options.batch_rows, 0, 1, |_, b| each(b)));
    println!(
        "Nexmark, {} events ({} shard(s), batches of {} rows); correctness over {} events",
        options.events, options.shards, options.batch_rows, options.check_events
    );
    println!(
        "Making the events alone, on one core: {columns:.0} events/s straight into columns \
         (what the shards run), {through_crate:.0} events/s through the nexmark crate's events \
         and Arrow builders ({:.2}x).",
        columns / through_crate
    );
    println!();
    println!("| query | events/s per core, generated in the shards | Flink 1.13 per core | ratio | engine alone: events generated beforehand, pushed | output rows | peak RSS above the start, generated in the shards (MiB) | shard allocations per 1,000 events, pushed | checked against DataFusion |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---|");
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
            .args(options.generated_only.then_some("--generated-only"))
            .args(options.two_phase.then_some("--two-phase"))
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
            let fields: Vec<&str> = rest.splitn(6, ' ').collect();
            let per_core = |micros: &str| {
                let micros: f64 = micros.parse().ok()?;
                Some(options.events as f64 / (micros / 1e6) / options.shards as f64)
            };
            let in_shards = per_core(fields[0]).unwrap_or(f64::NAN);
            let ratio = flink.map_or("-".to_string(), |f| format!("{:.0}x", in_shards / f as f64));
            let pushed = per_core(fields.get(1).unwrap_or(&""))
                .map_or("-".to_string(), |p| format!("{p:.0}"));
            println!(
                "| {} | {:.0} | {flink_text} | {ratio} | {pushed} | {} | {} | {} | {} |",
                query.name,
                in_shards,
                fields.get(2).unwrap_or(&""),
                fields.get(3).unwrap_or(&""),
                fields.get(4).unwrap_or(&""),
                fields.get(5).unwrap_or(&"")
            );
        } else {
            println!(
                "| {} | {status}: {} | {flink_text} | - | - | - | - | - | - |",
                query.name,
                rest.replace('|', "\\|")
            );
        }
    }
}
