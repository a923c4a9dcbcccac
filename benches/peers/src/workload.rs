//! The workloads every engine of the comparison runs, and the data they
//! run on: the same rows, generated before timing, for every engine.
//!
//! This file is compiled into each engine's binary (`#[path]`), each with
//! its own `arrow` (the published `laminar-db` pins an older one), so it
//! uses nothing but `arrow` and `std`.

use std::sync::Arc;

use arrow::array::{Float64Array, Int64Array, RecordBatch, StringArray, TimestampMillisecondArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};

/// Distinct symbols (group keys).
pub const SYMBOLS: usize = 100;

/// Event time of the first row (2026-01-01T00:00:00Z), so that windows
/// start on whole minutes.
pub const EPOCH_MS: i64 = 1_767_225_600_000;

/// What each workload computes. Every engine runs the same meaning; the
/// SQL text is each engine's own (dialects differ).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workload {
    /// `WHERE price > 105` (about half the rows pass), all columns.
    Filter,
    /// Per symbol and 1-minute tumbling window: `SUM(price * volume) /
    /// SUM(volume)`, `COUNT(*)`.
    Vwap,
    /// Per symbol and 1-minute tumbling window: open, high, low, close,
    /// volume.
    Ohlc,
    /// Per symbol, session windows with a 500 ms gap: `COUNT(*)`,
    /// `SUM(volume)`.
    Session,
    /// `orders` joined with `trades` of the same symbol within 50 ms
    /// either side (interval join, inner).
    Join,
}

impl Workload {
    pub const ALL: [Workload; 5] = [
        Workload::Filter,
        Workload::Vwap,
        Workload::Ohlc,
        Workload::Session,
        Workload::Join,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Workload::Filter => "filter",
            Workload::Vwap => "vwap",
            Workload::Ohlc => "ohlc",
            Workload::Session => "session",
            Workload::Join => "join",
        }
    }

    pub fn parse(name: &str) -> Option<Workload> {
        Workload::ALL.into_iter().find(|w| w.name() == name)
    }

    /// Whether the rows come in bursts with silences between them (so
    /// that sessions close).
    fn bursty(self) -> bool {
        self == Workload::Session
    }
}

/// The `trades` (and, for the join, `orders`) schema: `symbol VARCHAR,
/// price DOUBLE, volume BIGINT, ts TIMESTAMP(3)`. Event time is a
/// millisecond timestamp because every engine compared takes one.
pub fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("symbol", DataType::Utf8, false),
        Field::new("price", DataType::Float64, false),
        Field::new("volume", DataType::Int64, false),
        Field::new(
            "ts",
            DataType::Timestamp(TimeUnit::Millisecond, None),
            false,
        ),
    ]))
}

/// Event time of row `i`: one row per ms; bursty workloads run 1,000 ms
/// of rows, then 1,000 ms of silence.
fn ts_ms(workload: Workload, i: usize) -> i64 {
    let i = i as i64;
    let offset = if workload.bursty() {
        i + (i / 1000) * 1000
    } else {
        i
    };
    EPOCH_MS + offset
}

/// Row `i`'s symbol (an index into the names), price and volume; `seed`
/// shifts them (the join's orders use another seed than its trades).
fn symbol_of(i: usize, seed: usize) -> usize {
    (i * 7919 + seed * 13) % SYMBOLS
}

fn price_of(i: usize, seed: usize) -> f64 {
    100.0 + ((i * 31 + seed * 7) % 1000) as f64 / 100.0
}

fn volume_of(i: usize, seed: usize) -> i64 {
    1 + ((i + seed) % 500) as i64
}

/// `events` rows in batches of `batch_rows`.
pub fn batches(
    workload: Workload,
    events: usize,
    batch_rows: usize,
    seed: usize,
) -> Vec<RecordBatch> {
    let names: Vec<String> = (0..SYMBOLS).map(|i| format!("SYM{i:04}")).collect();
    (0..events)
        .step_by(batch_rows.max(1))
        .map(|start| {
            let rows = start..start + batch_rows.max(1).min(events - start);
            RecordBatch::try_new(
                schema(),
                vec![
                    Arc::new(StringArray::from_iter_values(
                        rows.clone().map(|i| names[symbol_of(i, seed)].as_str()),
                    )),
                    Arc::new(Float64Array::from_iter_values(
                        rows.clone().map(|i| price_of(i, seed)),
                    )),
                    Arc::new(Int64Array::from_iter_values(
                        rows.clone().map(|i| volume_of(i, seed)),
                    )),
                    Arc::new(TimestampMillisecondArray::from_iter_values(
                        rows.map(|i| ts_ms(workload, i)),
                    )),
                ],
            )
            .expect("a batch of the fixed schema")
        })
        .collect()
}

/// A row one past the end of the data, one window later: pushing it
/// closes every window for engines whose watermark can only be moved by
/// rows (the published `laminar-db`).
#[allow(dead_code)] // not every engine's binary needs it
pub fn closing_row(workload: Workload, events: usize) -> RecordBatch {
    let mut batch = batches(workload, 1, 1, 0).remove(0);
    let ts = ts_ms(workload, events) + 3_600_000;
    let mut columns = batch.columns().to_vec();
    columns[3] = Arc::new(TimestampMillisecondArray::from_iter_values([ts]));
    batch = RecordBatch::try_new(schema(), columns).expect("closing row");
    batch
}

/// What one run of one engine reports, as one line of JSON on stdout.
pub struct Report<'a> {
    pub engine: &'a str,
    pub workload: Workload,
    pub events: usize,
    pub batch_rows: usize,
    /// `Ok((seconds, rows out))`, or why the engine cannot run it.
    pub outcome: Result<(f64, usize), String>,
}

impl Report<'_> {
    pub fn print(&self) {
        let head = format!(
            "{{\"engine\":\"{}\",\"workload\":\"{}\",\"events\":{},\"batch_rows\":{}",
            self.engine,
            self.workload.name(),
            self.events,
            self.batch_rows
        );
        match &self.outcome {
            Ok((seconds, rows)) => println!(
                "{head},\"seconds\":{seconds:.6},\"rows_out\":{rows},\"events_per_s\":{:.0}}}",
                self.events as f64 * self.input_sides() / seconds
            ),
            Err(why) => println!(
                "{head},\"unsupported\":\"{}\"}}",
                why.replace('\\', "\\\\").replace('"', "'")
            ),
        }
    }

    /// Input rows per event count: the join reads two inputs of `events`.
    fn input_sides(&self) -> f64 {
        if self.workload == Workload::Join {
            2.0
        } else {
            1.0
        }
    }
}

/// Command-line arguments shared by every engine's binary:
/// `run <workload> <events> <batch_rows> [expect_rows]`.
pub struct Args {
    pub workload: Workload,
    pub events: usize,
    pub batch_rows: usize,
    /// Rows the result has (from the batch engine); streaming engines wait
    /// for that many. `None`: count what comes until the engine stops.
    pub expect_rows: Option<usize>,
}

impl Args {
    pub fn parse(args: &[String]) -> Result<Args, String> {
        let usage =
            "usage: run <filter|vwap|ohlc|session|join> <events> <batch_rows> [expect_rows]";
        match args {
            [run, workload, events, batch_rows, rest @ ..] if run == "run" && rest.len() <= 1 => {
                Ok(Args {
                    workload: Workload::parse(workload).ok_or(usage)?,
                    events: events.parse().map_err(|_| usage)?,
                    batch_rows: batch_rows.parse().map_err(|_| usage)?,
                    expect_rows: match rest {
                        [n] => Some(n.parse().map_err(|_| usage)?),
                        _ => None,
                    },
                })
            }
            _ => Err(usage.to_string()),
        }
    }
}

/// The number of rows the workload's answer has over `events` rows,
/// computed here from the generator's formulas (not by any engine), so
/// every engine's output is checked against the same count.
pub fn expected_rows(workload: Workload, events: usize) -> usize {
    // Each symbol's event times, in order (rows are generated in time
    // order).
    let times_by_symbol = |seed: usize| {
        let mut times = vec![Vec::new(); SYMBOLS];
        for i in 0..events {
            times[symbol_of(i, seed)].push(ts_ms(workload, i));
        }
        times
    };
    match workload {
        Workload::Filter => (0..events).filter(|&i| price_of(i, 0) > 105.0).count(),
        Workload::Vwap | Workload::Ohlc => (0..events)
            .map(|i| (symbol_of(i, 0), ts_ms(workload, i).div_euclid(60_000)))
            .collect::<std::collections::HashSet<_>>()
            .len(),
        Workload::Session => times_by_symbol(0)
            .iter()
            .filter(|times| !times.is_empty())
            .map(|times| 1 + times.windows(2).filter(|w| w[1] - w[0] >= 500).count())
            .sum(),
        Workload::Join => {
            let trades = times_by_symbol(0);
            (0..events)
                .map(|i| {
                    let (times, ts) = (&trades[symbol_of(i, 1)], ts_ms(workload, i));
                    let low = times.partition_point(|&t| t < ts - 50);
                    let high = times.partition_point(|&t| t <= ts + 50);
                    high - low
                })
                .sum()
        }
    }
}
