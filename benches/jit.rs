//! Compiled (Cranelift) against interpreted (DataFusion) expressions.
//!
//! Run: `cargo bench --bench jit`. Three groups, each measuring both paths
//! in the same run:
//! - `jit_kernels`: one expression over 65,536 rows cut into batches of
//!   1, 64, 1,024 and 8,192 rows (filters, with and without string
//!   equality, a `CASE`, the VWAP argument, Nexmark q1's currency
//!   conversion and q2's modulo filter);
//! - `jit_compile`: the time to compile each kernel;
//! - `jit_pipeline`: a filtered VWAP through the whole engine (1 shard)
//!   with the JIT off and with every kernel ready from the first batch.
//! - `jit_fused`: the same query's window aggregate operator alone, fed
//!   the batches directly: its stages and DataFusion accumulators
//!   (interpreted) against the fused kernel (WHERE, arguments and
//!   accumulator updates in one loop); and `changes_vwap`, the same
//!   filtered sums per symbol without a window, `EMIT CHANGES` (a
//!   changelog aggregate: each batch retracts and re-emits the rows of
//!   the symbols it touched), interpreted against fused; and
//!   `filtered_vwap_in_cache`, the first over 64 K trades that stay in
//!   the cache between passes (the others stream 1 M from memory).

use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::compute::filter_record_batch;
use datafusion::common::DFSchema;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::prelude::SessionContext;
use laminar_db::{JitMode, LaminarDB};

mod common;

use common::{batches, schema};

const ROWS: usize = 65_536;

const EXPRESSIONS: [(&str, &str); 8] = [
    ("filter", "price > 105.0 AND volume < 250"),
    ("string_filter", "symbol = 'SYM0042'"),
    (
        "string_and_price_filter",
        "symbol = 'SYM0042' AND price > 105.0",
    ),
    (
        "case",
        "CASE WHEN price > 105.0 THEN price * 2.0 WHEN volume < 100 THEN price ELSE 0.0 END",
    ),
    ("vwap_argument", "price * CAST(volume AS DOUBLE)"),
    ("q1_currency", "0.908 * CAST(volume AS DOUBLE)"),
    ("q2_modulo", "volume % 123 = 0"),
    (
        "long_filter",
        "(price * CAST(volume AS DOUBLE) - 100.0) * 0.5 > 2000.0 AND volume + 3 < 400",
    ),
];

fn physical(sql: &str) -> Arc<dyn PhysicalExpr> {
    let df_schema = DFSchema::try_from(schema().as_ref().clone()).expect("schema");
    let ctx = SessionContext::new();
    let expr = ctx.parse_sql_expr(sql, &df_schema).expect("parse");
    ctx.create_physical_expr(expr, &df_schema).expect("plan")
}

/// `expr` compiled now (the benchmark measures a ready kernel).
fn compiled(expr: &Arc<dyn PhysicalExpr>) -> Arc<dyn PhysicalExpr> {
    laminar_db::set_jit_mode(JitMode::Eager);
    let mut kernels = Vec::new();
    let wrapped = laminar_sql::jit::compile_tree(Arc::clone(expr), &schema(), &mut kernels);
    assert!(
        kernels.iter().all(|k| k.is_compiled()) && !kernels.is_empty(),
        "not compiled: {expr}"
    );
    wrapped
}

/// Evaluates `expr` over every batch (and filters by it when boolean), as
/// a stateless stage does.
fn run(expr: &Arc<dyn PhysicalExpr>, input: &[RecordBatch], filter: bool) -> usize {
    let mut rows = 0;
    for batch in input {
        let array = expr
            .evaluate(batch)
            .and_then(|v| v.into_array(batch.num_rows()))
            .expect("evaluate");
        rows += if filter {
            let mask = array
                .as_any()
                .downcast_ref::<datafusion::arrow::array::BooleanArray>()
                .expect("boolean");
            filter_record_batch(batch, mask).expect("filter").num_rows()
        } else {
            array.len()
        };
    }
    rows
}

fn kernels(c: &mut Criterion) {
    let mut group = c.benchmark_group("jit_kernels");
    group
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2))
        .throughput(Throughput::Elements(ROWS as u64));
    for batch_rows in [1usize, 64, 1024, 8192] {
        let input = batches(ROWS, batch_rows);
        for (name, sql) in EXPRESSIONS {
            let interpreted = physical(sql);
            let jitted = compiled(&interpreted);
            let filter = name.contains("filter") || name.contains("modulo");
            assert_eq!(
                run(&interpreted, &input, filter),
                run(&jitted, &input, filter),
                "{name}: same rows both ways"
            );
            group.bench_with_input(
                BenchmarkId::new(format!("{name}/interpreted"), batch_rows),
                &input,
                |b, input| b.iter(|| run(&interpreted, input, filter)),
            );
            group.bench_with_input(
                BenchmarkId::new(format!("{name}/compiled"), batch_rows),
                &input,
                |b, input| b.iter(|| run(&jitted, input, filter)),
            );
        }
    }
    group.finish();
}

fn compile_time(c: &mut Criterion) {
    let mut group = c.benchmark_group("jit_compile");
    group.sample_size(20);
    for (name, sql) in EXPRESSIONS {
        let interpreted = physical(sql);
        group.bench_function(name, |b| b.iter(|| compiled(&interpreted)));
    }
    group.finish();
}

use common::TRADES_DDL as DDL;

const FILTERED_VWAP: &str = "SELECT symbol,
       SUM(price * CAST(volume AS DOUBLE)) / SUM(CAST(volume AS DOUBLE)) AS vwap,
       COUNT(*) AS trades
FROM trades
WHERE price > 101.0 AND volume < 450
GROUP BY symbol, tumble(ts, INTERVAL '1' MINUTE)";

/// The same filtered sums as a running changelog per symbol.
const CHANGES_VWAP: &str = "SELECT symbol,
       SUM(price * CAST(volume AS DOUBLE)) / SUM(CAST(volume AS DOUBLE)) AS vwap,
       COUNT(*) AS trades
FROM trades
WHERE price > 101.0 AND volume < 450
GROUP BY symbol
EMIT CHANGES";

fn pipeline(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("rt");
    let events = 1_000_000;
    let mut group = c.benchmark_group("jit_pipeline");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(8))
        .throughput(Throughput::Elements(events as u64));
    for batch_rows in [64usize, 1024, 8192] {
        let input = batches(events, batch_rows);
        // Every window of every symbol has rows passing the filter.
        let want = events.div_ceil(60_000) * common::SYMBOLS;
        for (label, mode) in [("interpreted", JitMode::Off), ("compiled", JitMode::Eager)] {
            group.bench_with_input(
                BenchmarkId::new(format!("filtered_vwap/{label}"), batch_rows),
                &input,
                |b, input| {
                    b.iter_custom(|iterations| {
                        let mut total = Duration::ZERO;
                        for _ in 0..iterations {
                            total += rt.block_on(async {
                                laminar_db::set_jit_mode(mode);
                                let db = LaminarDB::builder().shards(1).build().expect("db");
                                db.execute(&format!(
                                    "{DDL}; CREATE STREAM vwap AS {FILTERED_VWAP}"
                                ))
                                .await
                                .expect("ddl");
                                common::time_run(db, "vwap", input, want).await
                            });
                        }
                        total
                    })
                },
            );
        }
    }
    group.finish();
}

/// `query`'s operator, planned in `mode`.
fn vwap_operator(query: &str, mode: JitMode) -> Box<dyn laminar_operators::Operator> {
    use laminar_sql::dialect::{parse_script, Statement};
    use laminar_sql::planner::{new_session_context, plan_stream, register_table, resolve_source};
    laminar_db::set_jit_mode(mode);
    futures::executor::block_on(async {
        let ctx = new_session_context();
        let mut sources = std::collections::HashMap::new();
        let mut operator = None;
        let script = format!("{DDL}; CREATE STREAM vwap AS {query}");
        for statement in parse_script(&script).expect("parse") {
            match statement {
                Statement::CreateSource(syntax) => {
                    let source = resolve_source(&ctx, syntax).await.expect("source");
                    register_table(&ctx, &source.name, Arc::clone(&source.schema))
                        .expect("register");
                    sources.insert(source.name.clone(), source);
                }
                Statement::CreateStream(def) => {
                    let known = Default::default();
                    let tables = Default::default();
                    let mut plans = plan_stream(&ctx, &def, &sources, &known, &tables)
                        .await
                        .expect("plan");
                    let plan = plans.pop().expect("a plan");
                    let fused = plan.explain_jit().contains("fused aggregate");
                    assert_eq!(fused, mode == JitMode::Eager, "{}", plan.explain_jit());
                    operator = Some(
                        plan.operator
                            .instantiate(&plan.output_schema)
                            .expect("operator"),
                    );
                }
                _ => unreachable!("only DDL"),
            }
        }
        operator.expect("the stream")
    })
}

/// Feeds every batch to a fresh operator of `query` and closes every
/// window; returns the result rows.
fn run_operator(query: &str, mode: JitMode, input: &[RecordBatch]) -> usize {
    let mut operator = vwap_operator(query, mode);
    let mut out = Vec::new();
    let time = laminar_operators::BatchTime {
        watermark_ms: i64::MIN,
        row_watermarks_ms: None,
    };
    for batch in input {
        operator.on_batch(batch, time, &mut out).expect("batch");
    }
    operator.on_watermark(i64::MAX, &mut out).expect("close");
    out.iter().map(|b| b.num_rows()).sum()
}

fn fused(c: &mut Criterion) {
    let events = 1_000_000;
    let mut group = c.benchmark_group("jit_fused");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(5))
        .throughput(Throughput::Elements(events as u64));
    for batch_rows in [1usize, 64, 1024, 8192] {
        // A million single-row batches would take minutes per sample.
        let events = if batch_rows == 1 { 100_000 } else { events };
        // 1 M trades (about 40 MB) stream from memory on every pass;
        // 64 K (about 2.6 MB) stay in the cache between passes, as a batch
        // just pushed is when its shard reads it.
        let from_memory = batches(events, batch_rows);
        let in_cache = batches(ROWS, batch_rows);
        for (name, query, input) in [
            ("filtered_vwap", FILTERED_VWAP, &from_memory),
            ("changes_vwap", CHANGES_VWAP, &from_memory),
            ("filtered_vwap_in_cache", FILTERED_VWAP, &in_cache),
        ] {
            let rows: usize = input.iter().map(RecordBatch::num_rows).sum();
            group.throughput(Throughput::Elements(rows as u64));
            let input = input.as_slice();
            let want = run_operator(query, JitMode::Off, input);
            if query == FILTERED_VWAP {
                assert_eq!(want, rows.div_ceil(60_000) * common::SYMBOLS);
            }
            assert_eq!(run_operator(query, JitMode::Eager, input), want);
            for (label, mode) in [("interpreted", JitMode::Off), ("compiled", JitMode::Eager)] {
                group.bench_with_input(
                    BenchmarkId::new(format!("{name}/{label}"), batch_rows),
                    input,
                    |b, input| {
                        b.iter_custom(|iterations| {
                            let mut total = Duration::ZERO;
                            for _ in 0..iterations {
                                let mut operator = vwap_operator(query, mode);
                                let mut out = Vec::new();
                                let time = laminar_operators::BatchTime {
                                    watermark_ms: i64::MIN,
                                    row_watermarks_ms: None,
                                };
                                let started = std::time::Instant::now();
                                for batch in input {
                                    operator.on_batch(batch, time, &mut out).expect("batch");
                                }
                                operator.on_watermark(i64::MAX, &mut out).expect("close");
                                total += started.elapsed();
                            }
                            total
                        })
                    },
                );
            }
        }
    }
    group.finish();
}

criterion_group!(benches, kernels, compile_time, pipeline, fused);
criterion_main!(benches);
