//! `laminardb demo`: synthetic market data through the VWAP and OHLC
//! streams, printed live.
//!
//! Event time runs 60x faster than the wall clock (one market minute per
//! second), so one-minute windows close about once a second whatever the
//! throughput. Rows arrive up to 2 market seconds out of order, inside the
//! source's watermark bound.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use laminar_db::arrow::array::{Array, Float64Array, Int64Array, RecordBatch, StringArray};
use laminar_db::arrow::datatypes::SchemaRef;
use laminar_db::{Error, ErrorCode, LaminarDB, LatencyHistogram, Result};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

pub const DEMO_SQL: &str = "
CREATE SOURCE trades (
    symbol VARCHAR NOT NULL,
    price  DOUBLE  NOT NULL,
    volume BIGINT  NOT NULL,
    ts     BIGINT  NOT NULL,
    WATERMARK FOR ts AS ts - INTERVAL '2' SECOND
);

CREATE STREAM vwap AS
SELECT symbol,
       SUM(price * CAST(volume AS DOUBLE)) / SUM(CAST(volume AS DOUBLE)) AS vwap,
       COUNT(*) AS trades
FROM trades
GROUP BY symbol, tumble(ts, INTERVAL '1' MINUTE);

CREATE STREAM ohlc_1m AS
SELECT symbol,
       CAST(tumble(ts, INTERVAL '1' MINUTE) AS BIGINT) AS window_start,
       first_value(price) AS open,
       MAX(price) AS high,
       MIN(price) AS low,
       last_value(price) AS close,
       SUM(volume) AS volume
FROM trades
GROUP BY symbol, tumble(ts, INTERVAL '1' MINUTE)
EMIT ON WINDOW CLOSE;
";

/// Market milliseconds per wall-clock millisecond.
const SPEEDUP: i64 = 60;
/// Largest lateness of a generated row, in market ms (inside the 2 s bound).
const DISORDER_MS: i64 = 1_500;
/// Batches generated up front and recycled with fresh timestamps, so the
/// generator costs little next to the engine.
const POOL_BATCHES: usize = 64;

struct Pool {
    batches: Vec<RecordBatch>,
    jitter_ms: Vec<Vec<i64>>,
}

/// Builds the recycled batches with the source's own schema.
fn make_pool(schema: SchemaRef, symbols: usize, batch_rows: usize, seed: u64) -> Pool {
    let mut rng = StdRng::seed_from_u64(seed);
    let names: Vec<String> = (0..symbols).map(|i| format!("SYM{i:04}")).collect();
    let mut prices: Vec<f64> = (0..symbols)
        .map(|_| rng.random_range(10.0..500.0))
        .collect();
    let mut batches = Vec::with_capacity(POOL_BATCHES);
    let mut jitter_ms = Vec::with_capacity(POOL_BATCHES);
    for _ in 0..POOL_BATCHES {
        let mut symbol = Vec::with_capacity(batch_rows);
        let mut price = Vec::with_capacity(batch_rows);
        let mut volume = Vec::with_capacity(batch_rows);
        let mut jitter = Vec::with_capacity(batch_rows);
        for _ in 0..batch_rows {
            // Zipf-ish popularity: low indices trade more.
            let s = ((rng.random::<f64>().powi(3)) * symbols as f64) as usize % symbols;
            prices[s] = (prices[s] * (1.0 + rng.random_range(-0.001..0.001))).max(0.01);
            symbol.push(names[s].as_str());
            price.push((prices[s] * 100.0).round() / 100.0);
            volume.push(rng.random_range(1..500i64));
            jitter.push(rng.random_range(0..DISORDER_MS));
        }
        batches.push(
            RecordBatch::try_new(
                Arc::clone(&schema),
                vec![
                    Arc::new(StringArray::from(symbol)),
                    Arc::new(Float64Array::from(price)),
                    Arc::new(Int64Array::from(volume)),
                    Arc::new(Int64Array::from(vec![0i64; batch_rows])),
                ],
            )
            .expect("pool batch"),
        );
        jitter_ms.push(jitter);
    }
    Pool { batches, jitter_ms }
}

impl Pool {
    /// Pool batch `i` (recycled), stamped `now_ms` less each row's jitter.
    fn batch(&self, i: usize, now_ms: i64) -> Result<RecordBatch> {
        let k = i % POOL_BATCHES;
        let ts: Int64Array = self.jitter_ms[k].iter().map(|j| now_ms - j).collect();
        let template = &self.batches[k];
        let mut columns = template.columns().to_vec();
        columns[3] = Arc::new(ts);
        Ok(RecordBatch::try_new(template.schema(), columns)?)
    }
}

/// The first market millisecond of a run.
const EPOCH_MS: i64 = 1_700_000_000_000;

/// One shard's share of the trades when they are made inside the shards
/// (`--producers 0`): the same recycled batches, stamped from the same
/// clock, until `stop`.
struct InShard {
    pool: Pool,
    started: Instant,
    next: usize,
    stop: Arc<AtomicBool>,
}

impl laminar_db::Generator for InShard {
    fn next_batch(&mut self) -> Option<(usize, RecordBatch)> {
        if self.stop.load(Ordering::Relaxed) {
            return None;
        }
        let now_ms = EPOCH_MS + self.started.elapsed().as_millis() as i64 * SPEEDUP;
        self.next += 1;
        // Pool batches match the source's schema by construction.
        self.pool.batch(self.next, now_ms).ok().map(|b| (0, b))
    }
}

/// Prints one window from the pieces the shards emitted for it.
fn print_window(parts: &[RecordBatch], total_symbols: usize) -> Result<()> {
    let batch = &laminar_db::arrow::compute::concat_batches(&parts[0].schema(), parts)?;
    let col = |name: &str| {
        batch
            .column(batch.schema().index_of(name).expect("ohlc column"))
            .clone()
    };
    let symbol = col("symbol");
    let symbol = symbol.as_any().downcast_ref::<StringArray>().expect("utf8");
    let start = col("window_start");
    let start = start.as_any().downcast_ref::<Int64Array>().expect("i64");
    let [open, high, low, close] = ["open", "high", "low", "close"].map(|n| {
        col(n)
            .as_any()
            .downcast_ref::<Float64Array>()
            .expect("f64")
            .clone()
    });
    let volume = col("volume");
    let volume = volume.as_any().downcast_ref::<Int64Array>().expect("i64");
    let mut order: Vec<usize> = (0..batch.num_rows()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(volume.value(i)));
    println!(
        "window {} ({} of {} symbols traded); top by volume:",
        start.value(0),
        batch.num_rows(),
        total_symbols
    );
    for &i in order.iter().take(3) {
        println!(
            "  {:8} open {:>9.2} high {:>9.2} low {:>9.2} close {:>9.2} volume {:>10}",
            symbol.value(i),
            open.value(i),
            high.value(i),
            low.value(i),
            close.value(i),
            volume.value(i)
        );
    }
    Ok(())
}

pub async fn demo(
    duration_s: u64,
    shards: Option<usize>,
    symbols: usize,
    batch_rows: usize,
    producers: usize,
) -> Result<()> {
    if symbols == 0 || batch_rows == 0 {
        return Err(Error::new(
            ErrorCode::InvalidConfig,
            "--symbols and --batch-rows must be at least 1",
        ));
    }
    let mut builder = LaminarDB::builder();
    if let Some(n) = shards {
        builder = builder.shards(n);
    }
    let db = builder.build()?;
    println!("LaminarDB demo: {} shard(s)", db.placement().len());
    for p in db.placement() {
        println!(
            "  shard {} on cpu {} (numa node {})",
            p.shard, p.cpu, p.numa_node
        );
    }
    db.execute(DEMO_SQL).await?;
    let mut ohlc = db.subscribe("ohlc_1m")?;
    let mut vwap = db.subscribe("vwap")?;
    let handles = (0..producers)
        .map(|_| db.source_untyped("trades"))
        .collect::<Result<Vec<_>>>()?;
    let schema = db.source_untyped("trades")?.schema();
    db.start().await?;

    let stop = Arc::new(AtomicBool::new(false));
    let pushed = Arc::new(AtomicU64::new(0));
    let run_started = Instant::now();
    // With no producer thread, each shard makes its own share of the
    // trades between its batches of work.
    let generation = if producers == 0 {
        println!("  trades made inside the shards");
        Some(db.generate(&["trades"], |k, _| InShard {
            pool: make_pool(Arc::clone(&schema), symbols, batch_rows, 42 + k as u64),
            started: run_started,
            next: 0,
            stop: Arc::clone(&stop),
        })?)
    } else {
        None
    };
    // Each producer thread pushes through its own handle (its own rings to
    // every shard), as an application with several ingest threads would.
    let mut generators = Vec::with_capacity(producers);
    for (p, trades) in handles.into_iter().enumerate() {
        let stop = Arc::clone(&stop);
        let pushed = Arc::clone(&pushed);
        let generator = std::thread::Builder::new()
            .name(format!("demo-producer-{p}"))
            .spawn(move || -> Result<()> {
                let pool = make_pool(trades.schema(), symbols, batch_rows, 42 + p as u64);
                let mut i = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    let now_ms = EPOCH_MS + run_started.elapsed().as_millis() as i64 * SPEEDUP;
                    trades.push(pool.batch(i, now_ms)?)?;
                    pushed.fetch_add(batch_rows as u64, Ordering::Relaxed);
                    i += 1;
                }
                Ok(())
            })
            .map_err(|e| {
                Error::new(
                    ErrorCode::RuntimeStart,
                    format!("cannot spawn the generator: {e}"),
                )
            })?;
        generators.push(generator);
    }
    let accepted = || match &generation {
        Some(generation) => generation.rows(),
        None => pushed.load(Ordering::Relaxed),
    };

    let deadline = (duration_s > 0).then(|| Instant::now() + Duration::from_secs(duration_s));
    let started = Instant::now();
    let mut last_report = Instant::now();
    let mut last_pushed = 0u64;
    let mut windows = 0u64;
    let mut latency = LatencyHistogram::default();
    let mut by_window: std::collections::BTreeMap<i64, Vec<RecordBatch>> = Default::default();
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    // Wake for results as they arrive, and at least every 100 ms to report
    // and to check the deadline.
    let mut ticker = tokio::time::interval(Duration::from_millis(100));
    loop {
        let mut pending: Vec<RecordBatch> = Vec::new();
        tokio::select! {
            _ = &mut ctrl_c => break,
            Some(batch) = ohlc.next() => pending.push(batch),
            Some(_) = vwap.next() => {}
            _ = ticker.tick() => {}
        }
        // Drain whatever else both streams produced meanwhile.
        while let Some(batch) = ohlc.poll() {
            pending.push(batch);
        }
        while vwap.poll().is_some() {}
        // Each shard emits its own keys of a window: gather them by start
        // and print a window once a later one has appeared (every shard
        // has moved past it by then, give or take a lagging shard).
        for batch in pending.into_iter().filter(|b| b.num_rows() > 0) {
            let start = batch
                .column(
                    batch
                        .schema()
                        .index_of("window_start")
                        .expect("ohlc column"),
                )
                .as_any()
                .downcast_ref::<Int64Array>()
                .expect("i64")
                .value(0);
            by_window.entry(start).or_default().push(batch);
        }
        while by_window.len() > 1 {
            let (_, parts) = by_window.pop_first().expect("non-empty");
            print_window(&parts, symbols)?;
            windows += 1;
        }
        if last_report.elapsed() >= Duration::from_secs(1) {
            let now = accepted();
            let rate = (now - last_pushed) as f64 / last_report.elapsed().as_secs_f64();
            latency.merge(ohlc.latency());
            ohlc.reset_latency();
            let late: u64 = db.metrics().streams.iter().map(|s| s.late_rows).sum();
            println!(
                "[{:>5.1}s] {:>12.0} events/s ({:.0}/s per shard) | windows closed {} | push-to-result p50 {} p99 {} | late rows {}",
                started.elapsed().as_secs_f64(),
                rate,
                rate / db.placement().len() as f64,
                windows,
                fmt_latency(latency.quantile(0.5)),
                fmt_latency(latency.quantile(0.99)),
                late
            );
            last_pushed = now;
            last_report = Instant::now();
        }
        if deadline.is_some_and(|d| Instant::now() >= d)
            || generators.iter().any(|g| g.is_finished())
        {
            break;
        }
    }
    for parts in std::mem::take(&mut by_window).into_values() {
        print_window(&parts, symbols)?;
        windows += 1;
    }
    stop.store(true, Ordering::Relaxed);
    let mut generated = generators
        .into_iter()
        .map(|g| {
            g.join()
                .map_err(|_| Error::new(ErrorCode::Execution, "generator panicked"))?
        })
        .collect::<Result<Vec<()>>>()
        .map(|_| ());
    if let Some(generation) = &generation {
        generated = generated.and(generation.finished().await.map(|_| ()));
    }
    let total = accepted();
    db.shutdown().await?;
    generated?;
    println!(
        "done: {} events in {:.1}s ({:.0} events/s), {} windows",
        total,
        started.elapsed().as_secs_f64(),
        total as f64 / started.elapsed().as_secs_f64(),
        windows
    );
    if let Some(e) = db.errors().into_iter().next() {
        return Err(e);
    }
    Ok(())
}

fn fmt_latency(d: Option<Duration>) -> String {
    match d {
        None => "-".into(),
        Some(d) if d < Duration::from_millis(1) => format!("{}µs", d.as_micros()),
        Some(d) => format!("{:.1}ms", d.as_secs_f64() * 1000.0),
    }
}
