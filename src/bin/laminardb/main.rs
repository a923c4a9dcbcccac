//! `laminardb`: run streaming SQL over files, or watch the engine on
//! synthetic market data.

mod config;
mod demo;
mod pg;
mod pg_cursor;
mod pg_extended;
mod pipelines;
mod run;
mod serve;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "laminardb", version, about = "Embedded streaming SQL database")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Runs a SQL file's sources and streams over CSV, JSON-lines or
    /// Parquet inputs and writes each stream's output to DIR/<stream>.csv.
    Run {
        /// SQL file with CREATE SOURCE / CREATE STREAM statements.
        #[arg(long)]
        sql: PathBuf,
        /// SOURCE=PATH: a file to feed into a source, by extension
        /// `.jsonl`/`.ndjson`/`.json` (JSON lines), `.parquet`/`.pq`, or CSV
        /// (with a header row). Repeatable; inputs are merged by event time.
        #[arg(long = "input", value_name = "SOURCE=PATH")]
        inputs: Vec<String>,
        /// Directory for the outputs (created if missing).
        #[arg(long)]
        output: PathBuf,
        /// Rows per pushed batch.
        #[arg(long, default_value_t = 1024)]
        batch_rows: usize,
        /// Number of shards (default: one per core).
        #[arg(long)]
        shards: Option<usize>,
        /// Keep the run in this directory (write-ahead log): a run that is
        /// killed resumes where it stopped when started again with the same
        /// arguments.
        #[arg(long, value_name = "DIR")]
        storage_dir: Option<PathBuf>,
        /// With --storage-dir: `sync` (each batch durable before the next
        /// is read) or `async` (synced every 10 ms).
        #[arg(long, value_enum, default_value_t = DurabilityArg::Sync)]
        durability: DurabilityArg,
        /// With --storage-dir: take a checkpoint every this many
        /// milliseconds, so a restart replays only the WAL after the last
        /// one (default: no checkpoints; a restart replays everything).
        #[arg(long, value_name = "MS")]
        checkpoint_interval_ms: Option<u64>,
        /// With --storage-dir: size of each WAL segment file (default 16
        /// MiB; a multiple of 4096, at least 64 KiB).
        #[arg(long, value_name = "BYTES")]
        wal_segment_bytes: Option<u64>,
    },
    /// Runs the pipelines of a config file as a daemon with an HTTP API
    /// (ingest, queries, health, metrics) until SIGTERM or SIGINT.
    Serve {
        /// The config file (TOML; see docs/OPERATIONS.md).
        #[arg(long, default_value = "laminardb.toml")]
        config: PathBuf,
    },
    /// Checks a config file and its pipelines' SQL without starting
    /// anything.
    CheckConfig {
        /// The config file.
        #[arg(long, default_value = "laminardb.toml")]
        config: PathBuf,
    },
    /// Streams synthetic trades through the VWAP and OHLC queries and
    /// prints results and throughput live.
    Demo {
        /// Seconds to run; 0 runs until Ctrl-C.
        #[arg(long, default_value_t = 10)]
        duration: u64,
        /// Number of shards (default: one per core).
        #[arg(long)]
        shards: Option<usize>,
        /// Number of distinct symbols.
        #[arg(long, default_value_t = 500)]
        symbols: usize,
        /// Rows per pushed batch.
        #[arg(long, default_value_t = 1024)]
        batch_rows: usize,
        /// Threads pushing trades, each through its own source handle; 0
        /// makes the trades inside the shards instead (each shard its own
        /// share, between its batches of work: `LaminarDB::generate`).
        #[arg(long, default_value_t = 1)]
        producers: usize,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum DurabilityArg {
    Sync,
    Async,
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: LDB-5001: cannot start the control-plane runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Run {
                sql,
                inputs,
                output,
                batch_rows,
                shards,
                storage_dir,
                durability,
                checkpoint_interval_ms,
                wal_segment_bytes,
            } => {
                run::run(run::RunArgs {
                    sql,
                    inputs,
                    output,
                    batch_rows,
                    shards,
                    storage: storage_dir.map(|dir| {
                        let durability = match durability {
                            DurabilityArg::Sync => laminar_db::Durability::Sync,
                            DurabilityArg::Async => laminar_db::Durability::Async,
                        };
                        (dir, durability)
                    }),
                    checkpoint_interval: checkpoint_interval_ms
                        .map(std::time::Duration::from_millis),
                    wal_segment_bytes,
                })
                .await
            }
            Command::Serve { config } => serve::serve(&config).await,
            Command::CheckConfig { config } => serve::check(&config).await,
            Command::Demo {
                duration,
                shards,
                symbols,
                batch_rows,
                producers,
            } => demo::demo(duration, shards, symbols, batch_rows, producers).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
