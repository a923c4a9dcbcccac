//! `peers compare`: every engine on every workload, each run in a process
//! of its own (so no engine inherits another's heap, threads or caches),
//! `--runs` times; the median of each is printed beside LaminarDB's with
//! the ratio, and each result's row count is checked against the count
//! computed from the generator. The rates also go to a CSV file
//! (`--csv`, default `$CARGO_TARGET_DIR/peers/compare.csv`) that
//! `benches/plots` draws as `docs/plots/peers.png`.

use std::process::Command;

use crate::workload::{self, Workload};

struct Options {
    events: usize,
    join_events: usize,
    /// Events for Flink, whose fixed cost per job (submission, task
    /// deployment) takes seconds: a larger input, the same rows per event.
    flink_events: usize,
    batch_rows: Vec<usize>,
    runs: usize,
    workloads: Vec<Workload>,
    /// The published `laminar-db` peer's binary (`published/`).
    published: Option<String>,
    /// A command that runs the Flink peer (`flink/peer.sh`).
    flink: Option<String>,
    /// Where the rates are written as CSV.
    csv: std::path::PathBuf,
}

fn options(args: &[String]) -> Result<Options, String> {
    let mut options = Options {
        events: 1_000_000,
        join_events: 200_000,
        flink_events: 10_000_000,
        batch_rows: vec![1024, 8192],
        runs: 5,
        workloads: Workload::ALL.to_vec(),
        published: std::env::var("PEERS_PUBLISHED").ok(),
        flink: std::env::var("PEERS_FLINK").ok(),
        csv: std::env::var_os("CARGO_TARGET_DIR")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| "target".into())
            .join("peers")
            .join("compare.csv"),
    };
    let mut args = args.iter();
    while let Some(flag) = args.next() {
        let mut value = || {
            args.next()
                .cloned()
                .ok_or_else(|| format!("{flag} needs a value"))
        };
        let number = |v: String| {
            v.parse::<usize>()
                .map_err(|_| format!("{flag}: not a number: {v}"))
        };
        match flag.as_str() {
            "--events" => options.events = number(value()?)?,
            "--join-events" => options.join_events = number(value()?)?,
            "--flink-events" => options.flink_events = number(value()?)?,
            "--runs" => options.runs = number(value()?)?.max(1),
            "--batch-rows" => {
                options.batch_rows = value()?
                    .split(',')
                    .map(|v| number(v.to_string()))
                    .collect::<Result<_, _>>()?
            }
            "--workloads" => {
                options.workloads = value()?
                    .split(',')
                    .map(|w| Workload::parse(w).ok_or_else(|| format!("unknown workload {w}")))
                    .collect::<Result<_, _>>()?
            }
            "--published" => options.published = Some(value()?),
            "--flink" => options.flink = Some(value()?),
            "--csv" => options.csv = value()?.into(),
            other => return Err(format!("unknown option {other}")),
        }
    }
    Ok(options)
}

/// One engine as the comparison starts it: a name and the command before
/// `run <workload> <events> <batch_rows> <expect_rows>`.
struct Engine {
    name: &'static str,
    command: Vec<String>,
    /// Events it runs instead of the case's (Flink), with the same
    /// generator: its rate is compared per event.
    events: Option<usize>,
}

/// What the runs of one engine on one case gave.
#[derive(Clone)]
enum Outcome {
    /// Median seconds over the runs, and the rows of the result.
    Timed {
        seconds: f64,
        rows: usize,
    },
    Unsupported(String),
    Failed(String),
}

fn run(
    engine: &Engine,
    workload: Workload,
    events: usize,
    batch_rows: usize,
    expect: usize,
    runs: usize,
) -> Outcome {
    let mut seconds = Vec::new();
    let mut rows = 0;
    for _ in 0..runs {
        let output = Command::new(&engine.command[0])
            .args(&engine.command[1..])
            .args([
                "run",
                workload.name(),
                &events.to_string(),
                &batch_rows.to_string(),
                &expect.to_string(),
            ])
            .output();
        let output = match output {
            Ok(output) => output,
            Err(e) => return Outcome::Failed(format!("cannot start {}: {e}", engine.command[0])),
        };
        let stdout = String::from_utf8_lossy(&output.stdout);
        let Some(line) = stdout.lines().rev().find(|l| l.starts_with('{')) else {
            return Outcome::Failed(format!(
                "no result (exit {}): {}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
                    .lines()
                    .last()
                    .unwrap_or("")
            ));
        };
        let report: serde_json::Value = match serde_json::from_str(line) {
            Ok(v) => v,
            Err(e) => return Outcome::Failed(format!("bad report {line}: {e}")),
        };
        if let Some(why) = report.get("unsupported").and_then(|v| v.as_str()) {
            return Outcome::Unsupported(why.to_string());
        }
        let (Some(s), Some(r)) = (
            report.get("seconds").and_then(|v| v.as_f64()),
            report.get("rows_out").and_then(|v| v.as_u64()),
        ) else {
            return Outcome::Failed(format!("bad report {line}"));
        };
        seconds.push(s);
        rows = r as usize;
    }
    seconds.sort_by(f64::total_cmp);
    Outcome::Timed {
        seconds: seconds[seconds.len() / 2],
        rows,
    }
}

pub fn main(args: &[String]) -> Result<(), String> {
    let options = options(args)?;
    let me = std::env::current_exe()
        .map_err(|e| e.to_string())?
        .to_string_lossy()
        .into_owned();
    let mut engines = vec![
        Engine {
            name: "LaminarDB",
            command: vec![me.clone(), "laminardb".into()],
            events: None,
        },
        Engine {
            name: "DataFusion batch",
            command: vec![me, "datafusion".into()],
            events: None,
        },
    ];
    if let Some(path) = &options.published {
        engines.push(Engine {
            name: "laminar-db 0.33",
            command: vec![path.clone()],
            events: None,
        });
    }
    if let Some(command) = &options.flink {
        engines.push(Engine {
            name: "Flink SQL",
            command: command.split_whitespace().map(String::from).collect(),
            events: Some(options.flink_events),
        });
    }
    let shards = std::env::var("PEERS_SHARDS").unwrap_or_else(|_| "1".into());
    println!(
        "# peers: median of {} runs, one process per run, LaminarDB on {shards} shard(s), DataFusion on one partition",
        options.runs
    );
    print!("| workload | events | batch rows |");
    for engine in &engines {
        print!(" {} (events/s) |", engine.name);
        if engine.name != "LaminarDB" {
            print!(" LaminarDB / {} |", engine.name);
        }
    }
    println!();
    print!("|---|---:|---:|");
    for engine in &engines {
        print!("---:|");
        if engine.name != "LaminarDB" {
            print!("---:|");
        }
    }
    println!();
    // Flink's runs do not depend on the batch size (its datagen source
    // makes the rows): one set per workload.
    let mut flink_runs: std::collections::HashMap<&str, Outcome> = Default::default();
    // workload, batch rows, engine, input events/s (empty without a figure).
    let mut csv = String::from("workload,batch_rows,engine,events_per_second\n");
    for &workload in &options.workloads {
        let events = if workload == Workload::Join {
            options.join_events
        } else {
            options.events
        };
        for &batch_rows in &options.batch_rows {
            print!("| {} | {events} | {batch_rows} |", workload.name());
            let mut ours: Option<f64> = None;
            for engine in &engines {
                let events = engine.events.map_or(events, |e| {
                    if workload == Workload::Join {
                        options.join_events.max(e / 10)
                    } else {
                        e
                    }
                });
                let expect = workload::expected_rows(workload, events);
                // Input rows per run: the join reads two inputs.
                let input = if workload == Workload::Join {
                    2 * events
                } else {
                    events
                } as f64;
                let outcome = match (engine.events, flink_runs.get(workload.name())) {
                    (Some(_), Some(outcome)) => outcome.clone(),
                    _ => run(engine, workload, events, batch_rows, expect, options.runs),
                };
                if engine.events.is_some() {
                    flink_runs.insert(workload.name(), outcome.clone());
                }
                let rate = match outcome {
                    Outcome::Timed { seconds, rows } if rows == expect => {
                        format!("{:.0}", input / seconds)
                    }
                    _ => String::new(),
                };
                csv.push_str(&format!(
                    "{},{batch_rows},{},{rate}\n",
                    workload.name(),
                    engine.name
                ));
                let cell = match outcome {
                    Outcome::Timed { seconds, rows } if rows == expect => {
                        let rate = input / seconds;
                        if engine.name == "LaminarDB" {
                            ours = Some(rate);
                            format!(" {} |", human(rate))
                        } else {
                            let ratio =
                                ours.map_or("-".to_string(), |o| format!("{:.2}", o / rate));
                            format!(" {} | {ratio} |", human(rate))
                        }
                    }
                    Outcome::Timed { rows, .. } => {
                        let text = format!("wrong result: {rows} rows, not {expect}");
                        cell_text(engine, &text)
                    }
                    Outcome::Unsupported(why) => cell_text(engine, &format!("unsupported: {why}")),
                    Outcome::Failed(why) => cell_text(engine, &format!("failed: {why}")),
                };
                print!("{cell}");
            }
            println!();
        }
    }
    if let Some(dir) = options.csv.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    std::fs::write(&options.csv, csv)
        .map_err(|e| format!("cannot write {}: {e}", options.csv.display()))?;
    eprintln!("# rates written to {}", options.csv.display());
    Ok(())
}

/// A table cell (and its ratio cell) for an engine without a figure.
fn cell_text(engine: &Engine, text: &str) -> String {
    let text: String = text.replace('|', "/").chars().take(120).collect();
    if engine.name == "LaminarDB" {
        format!(" {text} |")
    } else {
        format!(" {text} | - |")
    }
}

fn human(rate: f64) -> String {
    if rate >= 1e6 {
        format!("{:.2} M", rate / 1e6)
    } else {
        format!("{:.0} K", rate / 1e3)
    }
}
