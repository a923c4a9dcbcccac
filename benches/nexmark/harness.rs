//! Runs a Nexmark query on LaminarDB (streaming, all windows closed at the
//! end) and on DataFusion (batch, the same rows), and compares the two.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use datafusion::arrow::array::{
    Array, ArrayRef, Float64Array, Int64Array, RecordBatch, StringArray,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::arrow::util::display::array_value_to_string;
use datafusion::datasource::MemTable;
use laminar_db::LaminarDB;

use super::data::{schema, Events, Partition, DDL, TABLES};

/// One query of `benches/nexmark/queries/`.
pub struct Query {
    /// `q0` ... `q22`.
    pub name: String,
    /// Streams the query reads, created before it: `(name, SELECT)`, from
    /// the file's `CREATE STREAM name AS ...;` statements before the last.
    pub setup: Vec<(String, String)>,
    /// The query's `SELECT` (the file's last statement).
    pub sql: String,
    /// A batch formulation from `qN.batch.sql` (whole: its setup streams
    /// too), for a query whose SQL has no batch meaning (session and
    /// sliding windows).
    pub batch_sql: Option<String>,
    /// Options for the query's `CREATE STREAM` (`WITH (...)`), if any.
    pub with: String,
}

/// The queries, in number order.
pub fn queries() -> Vec<Query> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("benches/nexmark/queries");
    let read = |path: &std::path::Path| {
        std::fs::read_to_string(path).ok().map(|text| {
            text.lines()
                .filter(|l| !l.trim_start().starts_with("--"))
                .collect::<Vec<_>>()
                .join("\n")
        })
    };
    let mut found: Vec<(u32, Query)> = std::fs::read_dir(&dir)
        .expect("benches/nexmark/queries")
        .filter_map(|entry| {
            let path = entry.ok()?.path();
            let name = path.file_stem()?.to_str()?.to_string();
            let number = name.strip_prefix('q')?.parse().ok()?;
            let text = read(&path)?;
            let mut statements: Vec<String> = text
                .split(';')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect();
            let sql = statements.pop()?;
            let setup = statements
                .into_iter()
                .map(|s| {
                    let rest = s
                        .strip_prefix("CREATE STREAM ")
                        .expect("CREATE STREAM name AS ...");
                    let (stream, select) =
                        rest.split_once(" AS").expect("CREATE STREAM name AS ...");
                    (stream.trim().to_string(), select.trim().to_string())
                })
                .collect();
            let batch_sql = read(&dir.join(format!("{name}.batch.sql")));
            Some((
                number,
                Query {
                    name,
                    setup,
                    sql,
                    batch_sql,
                    with: String::new(),
                },
            ))
        })
        .collect();
    found.sort_by_key(|(number, _)| *number);
    found.into_iter().map(|(_, q)| q).collect()
}

/// Rows of the side table q13 joins: `key` 0..10,000 and a text value.
const SIDE_ROWS: i64 = 10_000;

fn side_input() -> RecordBatch {
    RecordBatch::try_new(
        Arc::new(Schema::new(vec![
            Field::new("key", DataType::Int64, false),
            Field::new("value", DataType::Utf8, false),
        ])),
        vec![
            Arc::new(Int64Array::from_iter_values(0..SIDE_ROWS)),
            Arc::new(StringArray::from_iter_values(
                (0..SIDE_ROWS).map(|k| format!("side-{k}")),
            )),
        ],
    )
    .expect("side input")
}

/// What a streaming run gave: the rows and how long pushing everything and
/// receiving every result took.
pub struct Streamed {
    /// The output, when kept.
    pub rows: Vec<RecordBatch>,
    /// Output rows (with their weights, for a changelog: rows emitted).
    pub row_count: usize,
    pub elapsed: Duration,
    /// What the shard threads allocated from the first push to shutdown
    /// (feature `allocation-tracking`; `None` without it).
    pub shard_allocations: Option<u64>,
}

/// Where a streaming run's events come from.
#[derive(Clone, Copy)]
pub enum Input<'a> {
    /// Generated beforehand, pushed in generation order from one thread
    /// (one handle per source): the engine's time alone.
    Pushed(&'a Events),
    /// Generated inside the shards while the query runs (shard `k` of `n`
    /// makes the events whose number is `k` modulo `n`): the time of
    /// making the events and processing them, on the same cores.
    Generated { events: usize, batch_rows: usize },
}

/// Runs `query` on `shards` shards over `input`, closes every window, and
/// waits for the last result, which it keeps if `keep_rows` (a timed run
/// counts them only, so the output does not count as the query's memory).
/// Errors are the engine's, as text (`LDB-NNNN: ...`).
pub async fn streaming(
    query: &Query,
    input: Input<'_>,
    shards: usize,
    keep_rows: bool,
) -> Result<Streamed, String> {
    let db = LaminarDB::builder()
        .shards(shards)
        .build()
        .map_err(|e| e.to_string())?;
    db.execute(DDL).await.map_err(|e| e.to_string())?;
    if query.sql.contains("side_input") {
        db.execute(
            "CREATE TABLE side_input (\"key\" BIGINT NOT NULL, value VARCHAR NOT NULL, PRIMARY KEY (\"key\"))",
        )
        .await
        .map_err(|e| e.to_string())?;
    }
    for (stream, select) in &query.setup {
        db.execute(&format!("CREATE STREAM {stream} AS {select}"))
            .await
            .map_err(|e| e.to_string())?;
    }
    db.execute(&format!(
        "CREATE STREAM {} {} AS {}",
        query.name, query.with, query.sql
    ))
    .await
    .map_err(|e| e.to_string())?;
    let mut subscription = db.subscribe(&query.name).map_err(|e| e.to_string())?;
    let handles = TABLES
        .iter()
        .map(|t| db.source_untyped(t))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    db.start().await.map_err(|e| e.to_string())?;
    if query.sql.contains("side_input") {
        db.execute(&format!(
            "INSERT INTO side_input SELECT value AS key, concat('side-', CAST(value AS VARCHAR)) AS value \
             FROM generate_series(0, {})",
            SIDE_ROWS - 1
        ))
        .await
        .map_err(|e| e.to_string())?;
    }
    let collector = std::thread::spawn(move || {
        let mut rows = Vec::new();
        let mut row_count = 0;
        while let Some(batch) = subscription.recv() {
            row_count += batch.num_rows();
            if keep_rows {
                rows.push(batch);
            }
        }
        (rows, row_count)
    });
    let allocations_before = laminar_db::shard_allocations_total();
    let started = Instant::now();
    match input {
        Input::Pushed(events) => {
            for (table, batch) in &events.pushes {
                handles[*table]
                    .push(batch.clone())
                    .map_err(|e| e.to_string())?;
            }
            for handle in &handles {
                handle.watermark(i64::MAX).map_err(|e| e.to_string())?;
            }
        }
        Input::Generated { events, batch_rows } => {
            let generation = db
                .generate(&TABLES, |k, n| Partition::new(events, batch_rows, k, n))
                .map_err(|e| e.to_string())?;
            let generated = generation.finished().await.map_err(|e| e.to_string())?;
            if generated != events as u64 {
                return Err(format!("generated {generated} events of {events}"));
            }
        }
    }
    drop(handles);
    db.shutdown().await.map_err(|e| e.to_string())?;
    let (rows, row_count) = collector.join().map_err(|_| "the collector panicked")?;
    let elapsed = started.elapsed();
    if let Some(error) = db.errors().first() {
        return Err(error.to_string());
    }
    let shard_allocations = laminar_db::shard_allocations_total()
        .zip(allocations_before)
        .map(|(after, before)| after - before);
    Ok(Streamed {
        rows,
        row_count,
        elapsed,
        shard_allocations,
    })
}

/// The same query as a DataFusion batch query over the same rows.
pub async fn batch(query: &Query, events: &Events) -> Result<Vec<RecordBatch>, String> {
    let ctx = laminar_sql::new_session_context();
    for (table, name) in TABLES.iter().enumerate() {
        let memtable = MemTable::try_new(schema(table), vec![events.table(table)])
            .map_err(|e| e.to_string())?;
        ctx.register_table(*name, Arc::new(memtable))
            .map_err(|e| e.to_string())?;
    }
    let side = side_input();
    let side = MemTable::try_new(side.schema(), vec![vec![side]]).map_err(|e| e.to_string())?;
    ctx.register_table("side_input", Arc::new(side))
        .map_err(|e| e.to_string())?;
    let run = |sql: String| {
        let ctx = ctx.clone();
        // A changelog's batch answer is its final rows.
        let sql = sql.replace("EMIT CHANGES", "");
        async move {
            let plan = laminar_sql::plan_for_batch(&ctx, &sql)
                .await
                .map_err(|e| e.to_string())?;
            ctx.execute_logical_plan(plan)
                .await
                .map_err(|e| e.to_string())?
                .collect()
                .await
                .map_err(|e| e.to_string())
        }
    };
    if let Some(sql) = &query.batch_sql {
        return run(sql.clone()).await;
    }
    // A stream the query reads is, in batch, the table of its answer.
    for (stream, select) in &query.setup {
        let rows: Vec<RecordBatch> = run(select.clone()).await?;
        let Some(schema) = rows.first().map(|b| b.schema()) else {
            return Err(format!("{stream} has no rows"));
        };
        let table = MemTable::try_new(schema, vec![rows]).map_err(|e| e.to_string())?;
        ctx.register_table(stream.as_str(), Arc::new(table))
            .map_err(|e| e.to_string())?;
    }
    run(query.batch_sql.clone().unwrap_or_else(|| query.sql.clone())).await
}

/// A row as text, floats to 9 significant digits (sums in another order
/// round differently).
fn row_text(columns: &[ArrayRef], row: usize) -> String {
    columns
        .iter()
        .map(|c| {
            if c.is_null(row) {
                "NULL".to_string()
            } else if let Some(f) = c.as_any().downcast_ref::<Float64Array>() {
                format!("{:.8e}", f.value(row))
            } else {
                array_value_to_string(c, row).unwrap_or_default()
            }
        })
        .collect::<Vec<_>>()
        .join("|")
}

/// Rows as a multiset; a changelog (a trailing `_weight` column) is
/// consolidated first. A row left with a negative weight is an error.
fn multiset(batches: &[RecordBatch]) -> Result<BTreeMap<String, i64>, String> {
    let mut rows = BTreeMap::new();
    for batch in batches {
        let weights = batch
            .schema()
            .index_of("_weight")
            .ok()
            .map(|i| batch.column(i).clone());
        let columns: Vec<ArrayRef> = batch
            .schema()
            .fields()
            .iter()
            .zip(batch.columns())
            .filter(|(f, _)| f.name() != "_weight")
            .map(|(_, c)| Arc::clone(c))
            .collect();
        for row in 0..batch.num_rows() {
            let weight = match &weights {
                Some(w) => array_value_to_string(w, row)
                    .map_err(|e| e.to_string())?
                    .parse::<i64>()
                    .map_err(|e| e.to_string())?,
                None => 1,
            };
            *rows.entry(row_text(&columns, row)).or_insert(0) += weight;
        }
    }
    if let Some((row, weight)) = rows.iter().find(|(_, w)| **w < 0) {
        return Err(format!("row {row} consolidates to weight {weight}"));
    }
    rows.retain(|_, w| *w != 0);
    Ok(rows)
}

/// Whether the streaming result equals the batch one, as multisets of rows.
pub fn compare(streamed: &[RecordBatch], batch: &[RecordBatch]) -> Result<usize, String> {
    let got = multiset(streamed)?;
    let want = multiset(batch)?;
    if got == want {
        return Ok(want.values().sum::<i64>() as usize);
    }
    let missing: Vec<_> = want
        .keys()
        .filter(|r| !got.contains_key(*r))
        .take(3)
        .collect();
    let extra: Vec<_> = got
        .keys()
        .filter(|r| !want.contains_key(*r))
        .take(3)
        .collect();
    Err(format!(
        "{} rows streamed, {} in batch; missing e.g. {missing:?}; extra e.g. {extra:?}",
        got.values().sum::<i64>(),
        want.values().sum::<i64>()
    ))
}
