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
    /// Leave DataFusion out: its batch join compares every pair of a
    /// key, so a join of 500 K rows a side would take it many minutes.
    no_datafusion: bool,
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
        no_datafusion: false,
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
            "--no-datafusion" => options.no_datafusion = true,
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
    /// Each run's seconds, in the order run, and the rows of the result.
    Timed {
        seconds: Vec<f64>,
        rows: usize,
    },
    Unsupported(String),
    Failed(String),
}

impl Outcome {
    /// The median run's seconds.
    fn median_seconds(seconds: &[f64]) -> f64 {
        let mut sorted = seconds.to_vec();
        sorted.sort_by(f64::total_cmp);
        sorted[sorted.len() / 2]
    }
}

/// One run of `engine` on a case: its seconds and result rows, or why
/// there is no figure.
fn run_once(
    engine: &Engine,
    workload: Workload,
    events: usize,
    batch_rows: usize,
    expect: usize,
) -> Result<(f64, usize), Outcome> {
    let output = Command::new(&engine.command[0])
        .args(&engine.command[1..])
        .args([
            "run",
            workload.name(),
            &events.to_string(),
            &batch_rows.to_string(),
            &expect.to_string(),
        ])
        .output()
        .map_err(|e| Outcome::Failed(format!("cannot start {}: {e}", engine.command[0])))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let Some(line) = stdout.lines().rev().find(|l| l.starts_with('{')) else {
        return Err(Outcome::Failed(format!(
            "no result (exit {}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
                .lines()
                .last()
                .unwrap_or("")
        )));
    };
    let report: serde_json::Value = serde_json::from_str(line)
        .map_err(|e| Outcome::Failed(format!("bad report {line}: {e}")))?;
    if let Some(why) = report.get("unsupported").and_then(|v| v.as_str()) {
        return Err(Outcome::Unsupported(why.to_string()));
    }
    match (
        report.get("seconds").and_then(|v| v.as_f64()),
        report.get("rows_out").and_then(|v| v.as_u64()),
    ) {
        (Some(seconds), Some(rows)) => Ok((seconds, rows as usize)),
        _ => Err(Outcome::Failed(format!("bad report {line}"))),
    }
}

/// `runs` rounds of one case, each round one run of every engine in
/// turn, so that the machine's drift (these machines are shared) falls
/// on all of them alike and each round's ratio compares runs made side
/// by side. An engine that fails or refuses the case is not run again.
fn run_rounds(
    engines: &[(&Engine, usize, usize)],
    workload: Workload,
    batch_rows: usize,
    runs: usize,
) -> Vec<Outcome> {
    let mut outcomes: Vec<Outcome> = engines
        .iter()
        .map(|_| Outcome::Timed {
            seconds: Vec::new(),
            rows: 0,
        })
        .collect();
    for _ in 0..runs {
        for (&(engine, events, expect), outcome) in engines.iter().zip(&mut outcomes) {
            let Outcome::Timed { seconds, rows } = outcome else {
                continue;
            };
            match run_once(engine, workload, events, batch_rows, expect) {
                Ok((s, r)) => {
                    seconds.push(s);
                    *rows = r;
                }
                Err(failed) => *outcome = failed,
            }
        }
    }
    outcomes
}

pub fn main(args: &[String]) -> Result<(), String> {
    let options = options(args)?;
    let me = std::env::current_exe()
        .map_err(|e| e.to_string())?
        .to_string_lossy()
        .into_owned();
    let mut engines = vec![Engine {
        name: "LaminarDB",
        command: vec![me.clone(), "laminardb".into()],
        events: None,
    }];
    if !options.no_datafusion {
        engines.push(Engine {
            name: "DataFusion batch",
            command: vec![me, "datafusion".into()],
            events: None,
        });
    }
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
        "# peers: median of {} runs, one process per run, the engines' runs of a case alternated (ratios: the median of each round's), LaminarDB on {shards} shard(s){}",
        options.runs,
        if options.no_datafusion {
            ""
        } else {
            ", DataFusion on one partition"
        }
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
            // Each engine's events, expected rows and input rows per run
            // (the join reads two inputs).
            let cases: Vec<(usize, usize, f64)> = engines
                .iter()
                .map(|engine| {
                    let events = engine.events.map_or(events, |e| {
                        if workload == Workload::Join {
                            options.join_events.max(e / 10)
                        } else {
                            e
                        }
                    });
                    let input = if workload == Workload::Join {
                        2 * events
                    } else {
                        events
                    };
                    (
                        events,
                        workload::expected_rows(workload, events),
                        input as f64,
                    )
                })
                .collect();
            // The engines fed batches here alternate run by run; Flink
            // (its own event count, seconds to start a job) runs its rounds
            // on its own, once per workload.
            let alternated: Vec<(&Engine, usize, usize)> = engines
                .iter()
                .zip(&cases)
                .filter(|(engine, _)| engine.events.is_none())
                .map(|(engine, &(events, expect, _))| (engine, events, expect))
                .collect();
            let mut outcomes =
                run_rounds(&alternated, workload, batch_rows, options.runs).into_iter();
            let mut ours: Option<Vec<f64>> = None;
            for (engine, &(events, expect, input)) in engines.iter().zip(&cases) {
                let outcome = if engine.events.is_none() {
                    outcomes.next().expect("one outcome per alternated engine")
                } else {
                    let cached = flink_runs.get(workload.name()).cloned();
                    cached.unwrap_or_else(|| {
                        let outcome = run_rounds(
                            &[(engine, events, expect)],
                            workload,
                            batch_rows,
                            options.runs,
                        )
                        .remove(0);
                        flink_runs.insert(workload.name(), outcome.clone());
                        outcome
                    })
                };
                let rate = match &outcome {
                    Outcome::Timed { seconds, rows } if *rows == expect && !seconds.is_empty() => {
                        format!("{:.0}", input / Outcome::median_seconds(seconds))
                    }
                    _ => String::new(),
                };
                csv.push_str(&format!(
                    "{},{batch_rows},{},{rate}\n",
                    workload.name(),
                    engine.name
                ));
                let cell = match outcome {
                    Outcome::Timed { seconds, rows } if rows == expect && !seconds.is_empty() => {
                        let rate = input / Outcome::median_seconds(&seconds);
                        if engine.name == "LaminarDB" {
                            ours = Some(seconds);
                            format!(" {} |", human(rate))
                        } else {
                            let ratio = ours.as_ref().map_or("-".to_string(), |ours| {
                                let paired = engine.events.is_none();
                                format!(
                                    "{:.2}",
                                    ratio_of(ours, &seconds, paired, input / cases[0].2)
                                )
                            });
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

/// LaminarDB's rate over a peer's, from runs of both: the median of the
/// rounds' ratios where the runs were `paired` (made in the same rounds),
/// else the ratio of the medians. `input_scale` is the peer's input rows
/// per run over ours (Flink runs its own event count).
fn ratio_of(ours: &[f64], theirs: &[f64], paired: bool, input_scale: f64) -> f64 {
    if paired && ours.len() == theirs.len() {
        let ratios: Vec<f64> = ours.iter().zip(theirs).map(|(o, t)| t / o).collect();
        Outcome::median_seconds(&ratios)
    } else {
        Outcome::median_seconds(theirs) / Outcome::median_seconds(ours) / input_scale
    }
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
