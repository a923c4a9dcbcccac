//! PNG charts for docs/BENCHMARKS.md, drawn from what `cargo bench --bench
//! vwap` leaves in criterion's directory:
//!
//! - `vwap_throughput.png`: events/s against batch size, one line per
//!   engine and shard count (criterion's mean time per run of the
//!   `vwap_throughput` group, and the events each run pushes);
//! - `vwap_latency.png`: the distribution of single-row push-to-subscriber
//!   latencies (every sample the `vwap` bench's latency run wrote to
//!   `vwap_latency_samples_ns.csv`), with its percentiles;
//! - `peers.png`, when `benches/peers`' `compare` has written its rates
//!   (`--peers FILE`, default `$CARGO_TARGET_DIR/peers/compare.csv`):
//!   each engine's events/s on every workload and batch size, on a log
//!   scale.
//!
//! Run: `cargo run --release --manifest-path benches/plots/Cargo.toml --
//! [--criterion DIR] [--peers FILE] [--out DIR] [--font FILE]`. Defaults:
//! `$CARGO_TARGET_DIR/criterion` (or `target/criterion`), `docs/plots`,
//! and DejaVu Sans from Debian's `fonts-dejavu-core`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use plotters::prelude::*;
use plotters::style::FontStyle;

const SIZE: (u32, u32) = (960, 600);

struct Args {
    criterion: PathBuf,
    peers: PathBuf,
    out: PathBuf,
    font: PathBuf,
}

fn args() -> Result<Args, String> {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("target"));
    let mut args = Args {
        criterion: target.join("criterion"),
        peers: target.join("peers").join("compare.csv"),
        out: PathBuf::from("docs/plots"),
        font: PathBuf::from("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"),
    };
    let mut given = std::env::args().skip(1);
    while let Some(flag) = given.next() {
        let value = given
            .next()
            .ok_or_else(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--criterion" => args.criterion = value.into(),
            "--peers" => args.peers = value.into(),
            "--out" => args.out = value.into(),
            "--font" => args.font = value.into(),
            _ => {
                return Err(format!(
                    "unknown option {flag} (--criterion, --peers, --out, --font)"
                ))
            }
        }
    }
    Ok(args)
}

fn main() {
    if let Err(e) = run() {
        eprintln!("plots: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), String> {
    let args = args()?;
    let font = std::fs::read(&args.font).map_err(|e| {
        format!(
            "cannot read the font {}: {e} (apt-get install fonts-dejavu-core, or pass --font)",
            args.font.display()
        )
    })?;
    // plotters keeps registered fonts for the life of the process.
    let font: &'static [u8] = Box::leak(font.into_boxed_slice());
    plotters::style::register_font("sans-serif", FontStyle::Normal, font)
        .map_err(|_| format!("{} is not a font plotters can read", args.font.display()))?;
    std::fs::create_dir_all(&args.out)
        .map_err(|e| format!("cannot create {}: {e}", args.out.display()))?;
    let throughput = read_throughput(&args.criterion.join("vwap_throughput"))?;
    let path = args.out.join("vwap_throughput.png");
    throughput_chart(&throughput, &path)?;
    println!("wrote {}", path.display());
    let samples = read_samples(&args.criterion.join("vwap_latency_samples_ns.csv"))?;
    let path = args.out.join("vwap_latency.png");
    latency_chart(samples, &path)?;
    println!("wrote {}", path.display());
    if args.peers.exists() {
        let rates = read_peers(&args.peers)?;
        let path = args.out.join("peers.png");
        peers_chart(&rates, &path)?;
        println!("wrote {}", path.display());
    } else {
        println!(
            "no {} (run benches/peers' compare first): peers.png not drawn",
            args.peers.display()
        );
    }
    Ok(())
}

/// One case of the peers' comparison: (workload, batch rows) and each
/// engine's events/s (`None` where it has no figure), in file order.
type PeerRates = Vec<((String, u64), Vec<(String, Option<f64>)>)>;

fn read_peers(path: &Path) -> Result<PeerRates, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut cases: PeerRates = Vec::new();
    for (number, line) in text.lines().enumerate().skip(1) {
        let fields: Vec<&str> = line.split(',').collect();
        let [workload, batch_rows, engine, rate] = fields[..] else {
            return Err(format!("{}:{}: not 4 fields", path.display(), number + 1));
        };
        let batch_rows: u64 = batch_rows
            .parse()
            .map_err(|_| format!("{}:{}: bad batch size", path.display(), number + 1))?;
        let rate = if rate.is_empty() {
            None
        } else {
            Some(
                rate.parse::<f64>()
                    .map_err(|_| format!("{}:{}: bad rate", path.display(), number + 1))?,
            )
        };
        let key = (workload.to_string(), batch_rows);
        match cases.iter_mut().find(|(k, _)| *k == key) {
            Some((_, engines)) => engines.push((engine.to_string(), rate)),
            None => cases.push((key, vec![(engine.to_string(), rate)])),
        }
    }
    if cases.is_empty() {
        return Err(format!("{} has no rates", path.display()));
    }
    Ok(cases)
}

/// Horizontal bars, one group per case, one bar per engine (missing where
/// the engine refused the workload), events/s on a log scale.
fn peers_chart(cases: &PeerRates, path: &Path) -> Result<(), String> {
    let mut engines: Vec<String> = Vec::new();
    for (_, rates) in cases {
        for (engine, _) in rates {
            if !engines.contains(engine) {
                engines.push(engine.clone());
            }
        }
    }
    let rates = || {
        cases
            .iter()
            .flat_map(|(_, r)| r.iter().filter_map(|(_, v)| *v))
    };
    let max_rate = rates().fold(1.0f64, f64::max);
    let min_rate = rates().fold(f64::MAX, f64::min).min(max_rate);
    let slots = engines.len() as f64 + 1.0;
    let height = (cases.len() as f64 * slots).max(1.0);
    let size = (SIZE.0, 160 + (height * 14.0) as u32);
    let root = BitMapBackend::new(path, size).into_drawing_area();
    root.fill(&WHITE).map_err(draw_error)?;
    let low = min_rate / 3.0 / 1e6;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "Side by side (benches/peers): input events/s, one shard or core each",
            ("sans-serif", 22),
        )
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(16)
        .build_cartesian_2d((low..max_rate * 3.0 / 1e6).log_scale(), height..0.0f64)
        .map_err(draw_error)?;
    chart
        .configure_mesh()
        .x_desc("million events/s (log scale)")
        .x_label_formatter(&|v| format!("{v}"))
        .y_labels(0)
        .disable_y_mesh()
        .label_style(("sans-serif", 14))
        .draw()
        .map_err(draw_error)?;
    // Each group's name in the free slot below its bars.
    let names = cases.iter().enumerate().map(|(c, ((workload, rows), _))| {
        let y = c as f64 * slots + slots - 1.0;
        Text::new(
            format!("{workload}, batch {rows}"),
            (low * 1.1, y),
            ("sans-serif", 13),
        )
    });
    chart.draw_series(names).map_err(draw_error)?;
    for (e, engine) in engines.iter().enumerate() {
        let color = Palette99::pick(e).to_rgba();
        let bars: Vec<Rectangle<(f64, f64)>> = cases
            .iter()
            .enumerate()
            .filter_map(|(c, (_, rates))| {
                let rate = rates.iter().find(|(name, _)| name == engine)?.1?;
                let top = c as f64 * slots + e as f64 + 0.1;
                Some(Rectangle::new(
                    [(low, top), (rate / 1e6, top + 0.8)],
                    color.filled(),
                ))
            })
            .collect();
        chart
            .draw_series(bars)
            .map_err(draw_error)?
            .label(engine.clone())
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 16, y + 5)], color.filled()));
    }
    legend(&mut chart)?;
    root.present().map_err(draw_error)
}

/// `series name -> [(batch rows, events/s)]`, batch rows ascending.
type Series = BTreeMap<String, Vec<(f64, f64)>>;

fn read_json(path: &Path) -> Result<serde_json::Value, String> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        format!(
            "cannot read {}: {e} (run `cargo bench --bench vwap` first)",
            path.display()
        )
    })?;
    serde_json::from_str(&text).map_err(|e| format!("{} is not JSON: {e}", path.display()))
}

/// Criterion's layout: `group/function/parameter/new/{benchmark,estimates}.json`.
fn read_throughput(group: &Path) -> Result<Series, String> {
    let mut series = Series::new();
    let functions = std::fs::read_dir(group).map_err(|e| {
        format!(
            "cannot read {}: {e} (run `cargo bench --bench vwap` first)",
            group.display()
        )
    })?;
    for function in functions.flatten() {
        let Ok(parameters) = std::fs::read_dir(function.path()) else {
            continue;
        };
        for parameter in parameters.flatten() {
            let new = parameter.path().join("new");
            if !new.join("benchmark.json").exists() {
                continue; // criterion's `report` folder
            }
            let benchmark = read_json(&new.join("benchmark.json"))?;
            let estimates = read_json(&new.join("estimates.json"))?;
            let name = benchmark["function_id"].as_str().unwrap_or("?").to_string();
            let batch_rows: f64 = benchmark["value_str"]
                .as_str()
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| format!("{}: no batch size", new.display()))?;
            let events = benchmark["throughput"]["Elements"]
                .as_f64()
                .ok_or_else(|| format!("{}: no element throughput", new.display()))?;
            let mean_ns = estimates["mean"]["point_estimate"]
                .as_f64()
                .ok_or_else(|| format!("{}: no mean", new.display()))?;
            series
                .entry(name)
                .or_default()
                .push((batch_rows, events / (mean_ns / 1e9)));
        }
    }
    if series.is_empty() {
        return Err(format!(
            "no results under {} (run `cargo bench --bench vwap` first)",
            group.display()
        ));
    }
    for points in series.values_mut() {
        points.sort_by(|a, b| a.0.total_cmp(&b.0));
    }
    Ok(series)
}

fn label(name: &str) -> String {
    if let Some(shards) = name
        .strip_prefix("laminardb_")
        .and_then(|s| s.strip_suffix("_shards"))
    {
        format!("LaminarDB, {shards} shard(s)")
    } else if let Some(partitions) = name
        .strip_prefix("datafusion_batch_")
        .and_then(|s| s.strip_suffix("_partitions"))
    {
        format!("DataFusion batch, {partitions} partition(s)")
    } else {
        name.to_string()
    }
}

fn draw_error<E: std::fmt::Debug>(e: E) -> String {
    format!("drawing failed: {e:?}")
}

/// The series' legend, in the lower right corner, as every chart has it.
fn legend<'a, DB, CT>(chart: &mut ChartContext<'a, DB, CT>) -> Result<(), String>
where
    DB: DrawingBackend + 'a,
    CT: CoordTranslate,
{
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .label_font(("sans-serif", 15))
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .draw()
        .map_err(draw_error)
}

fn throughput_chart(series: &Series, path: &Path) -> Result<(), String> {
    let (max_rows, max_rate) = series
        .values()
        .flatten()
        .fold((1.0f64, 1.0f64), |acc, p| (acc.0.max(p.0), acc.1.max(p.1)));
    let min_rate = series
        .values()
        .flatten()
        .map(|p| p.1)
        .fold(f64::MAX, f64::min);
    let root = BitMapBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(draw_error)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "VWAP (tumbling 1-minute windows): throughput against batch size",
            ("sans-serif", 22),
        )
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(80)
        .build_cartesian_2d(
            (0.8f64..max_rows * 1.25).log_scale(),
            (min_rate / 2.0 / 1e6..max_rate * 1.5 / 1e6).log_scale(),
        )
        .map_err(draw_error)?;
    chart
        .configure_mesh()
        .x_desc("rows per pushed batch")
        .y_desc("million events/s")
        .x_label_formatter(&|v| format!("{v:.0}"))
        .y_label_formatter(&|v| format!("{v:.1}"))
        .label_style(("sans-serif", 15))
        .draw()
        .map_err(draw_error)?;
    for (i, (name, points)) in series.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        let scaled: Vec<(f64, f64)> = points.iter().map(|&(x, y)| (x, y / 1e6)).collect();
        chart
            .draw_series(LineSeries::new(scaled.clone(), color.stroke_width(2)))
            .map_err(draw_error)?
            .label(label(name))
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        chart
            .draw_series(scaled.iter().map(|&p| Circle::new(p, 4, color.filled())))
            .map_err(draw_error)?;
    }
    legend(&mut chart)?;
    root.present().map_err(draw_error)
}

fn read_samples(path: &Path) -> Result<Vec<u64>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        format!(
            "cannot read {}: {e} (run `cargo bench --bench vwap` first)",
            path.display()
        )
    })?;
    let samples: Vec<u64> = text
        .lines()
        .skip(1)
        .map(|l| {
            l.trim()
                .parse()
                .map_err(|_| format!("{}: not a number: {l:?}", path.display()))
        })
        .collect::<Result<_, _>>()?;
    if samples.is_empty() {
        return Err(format!("{} holds no samples", path.display()));
    }
    Ok(samples)
}

fn latency_chart(mut samples_ns: Vec<u64>, path: &Path) -> Result<(), String> {
    samples_ns.sort_unstable();
    let at = |q: f64| {
        let index = ((samples_ns.len() - 1) as f64 * q).round() as usize;
        samples_ns[index] as f64 / 1e3
    };
    let (p50, p99, p999) = (at(0.5), at(0.99), at(0.999));
    let max_us = at(1.0);
    // Bins of 0.1 µs up to the 99.9th percentile; the rest is one bar.
    let bin_us = 0.1;
    let top_us = (p999 / bin_us).ceil() * bin_us + bin_us;
    let bins = (top_us / bin_us) as usize;
    let mut counts = vec![0u64; bins + 1];
    for &ns in &samples_ns {
        let bin = ((ns as f64 / 1e3) / bin_us) as usize;
        counts[bin.min(bins)] += 1;
    }
    let tallest = counts.iter().copied().max().unwrap_or(1) as f64;
    let root = BitMapBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(draw_error)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!(
                "Single-row push to subscriber, 1 shard ({} samples): p50 {p50:.2} µs, p99 {p99:.2} µs, p99.9 {p999:.2} µs",
                samples_ns.len()
            ),
            ("sans-serif", 18),
        )
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(80)
        .build_cartesian_2d(
            0f64..top_us + bin_us,
            (0.8f64..tallest * 2.0).log_scale(),
        )
        .map_err(draw_error)?;
    chart
        .configure_mesh()
        .x_desc(format!(
            "latency, µs (bins of {bin_us} µs; the last bar holds the {} samples above {top_us:.1} µs, the slowest {max_us:.1} µs)",
            counts[bins]
        ))
        .y_desc("samples")
        .x_label_formatter(&|v| format!("{v:.1}"))
        .y_label_formatter(&|v| format!("{v:.0}"))
        .label_style(("sans-serif", 15))
        .draw()
        .map_err(draw_error)?;
    let color = Palette99::pick(0).to_rgba();
    chart
        .draw_series(
            counts
                .iter()
                .enumerate()
                .filter(|(_, &c)| c > 0)
                .map(|(i, &c)| {
                    let x0 = i as f64 * bin_us;
                    Rectangle::new([(x0, 0.8), (x0 + bin_us * 0.9, c as f64)], color.filled())
                }),
        )
        .map_err(draw_error)?;
    for (q, value) in [("p50", p50), ("p99", p99), ("p99.9", p999)] {
        chart
            .draw_series(std::iter::once(PathElement::new(
                vec![(value, 0.8), (value, tallest * 2.0)],
                BLACK.stroke_width(1),
            )))
            .map_err(draw_error)?;
        chart
            .draw_series(std::iter::once(Text::new(
                q.to_string(),
                (value, tallest * 1.3),
                ("sans-serif", 14),
            )))
            .map_err(draw_error)?;
    }
    root.present().map_err(draw_error)
}
