//! Tables: rows kept on the control plane, written with `INSERT` and read
//! by ad-hoc queries. A table with a primary key keeps one row per key
//! (an `INSERT` of an existing key replaces the row: upsert); without one,
//! rows append.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use arrow::array::{new_null_array, ArrayRef, RecordBatch};
use arrow::datatypes::SchemaRef;
use arrow::row::{RowConverter, SortField};
use laminar_runtime::{Error, ErrorCode, Result};
use laminar_sql::TableDef;

use crate::pipeline::Pipeline;

enum Rows {
    Keyed {
        key: RowConverter,
        row: RowConverter,
        by_key: HashMap<Box<[u8]>, Box<[u8]>>,
    },
    Append(Vec<RecordBatch>),
}

/// A table's rows before a replacement, restored if it fails.
enum Previous {
    Append(Vec<RecordBatch>),
    Keyed(HashMap<Box<[u8]>, Box<[u8]>>),
}

/// A running lookup join that reads a table: it gets every upsert.
struct Feed {
    pipeline: Weak<Pipeline>,
    stream: usize,
}

/// A table and its rows.
pub(crate) struct Table {
    pub def: TableDef,
    rows: Mutex<Rows>,
    /// Lookup joins reading the table; written under the `rows` lock, so
    /// each sees the snapshot it started from and every later upsert,
    /// in order.
    feeds: Mutex<Vec<Feed>>,
    /// Its log, in a durable database: inserts are logged before they
    /// apply.
    pub log: Option<crate::table_log::TableLog>,
    /// A lookup table's loader (its rows come from an external database,
    /// not from INSERT); dropping it stops the loader.
    pub loader: Option<crate::lookup::Loader>,
}

fn converter(schema: &SchemaRef, columns: &[usize]) -> Result<RowConverter> {
    Ok(RowConverter::new(
        columns
            .iter()
            .map(|&i| SortField::new(schema.field(i).data_type().clone()))
            .collect(),
    )?)
}

impl Table {
    pub fn new(def: TableDef) -> Result<Self> {
        let rows = if def.primary_key.is_empty() {
            Rows::Append(Vec::new())
        } else {
            let all: Vec<usize> = (0..def.schema.fields().len()).collect();
            Rows::Keyed {
                key: converter(&def.schema, &def.primary_key)?,
                row: converter(&def.schema, &all)?,
                by_key: HashMap::new(),
            }
        };
        Ok(Self {
            def,
            rows: Mutex::new(rows),
            feeds: Mutex::new(Vec::new()),
            log: None,
            loader: None,
        })
    }

    /// `INSERT`: logs the rows (durable databases), then upserts them.
    pub fn insert(&self, batch: &RecordBatch) -> Result<usize> {
        if self.loader.is_some() {
            return Err(Error::new(
                ErrorCode::Unsupported,
                format!(
                    "'{}' is a lookup table: its rows come from its database and are replaced at each refresh",
                    self.def.name
                ),
            )
            .with_hint("write the rows to the database the table loads from"));
        }
        if let Some(log) = &self.log {
            if batch.num_rows() > 0 {
                log.append(batch)?;
            }
        }
        self.upsert(batch)
    }

    /// Inserts (or, by primary key, replaces) rows already in the table's
    /// schema. Returns the number of rows written.
    pub fn upsert(&self, batch: &RecordBatch) -> Result<usize> {
        let mut rows = self.rows.lock().map_err(|_| poisoned())?;
        // Applied first: lookup joins only ever see rows the table took.
        let written = self.apply(&mut rows, batch)?;
        self.feed(batch, false)?;
        Ok(written)
    }

    /// Replaces every row (a lookup table's refresh), for lookup joins
    /// too. Rows that do not convert leave the table as it was.
    pub fn replace_all(&self, batch: &RecordBatch) -> Result<()> {
        let mut rows = self.rows.lock().map_err(|_| poisoned())?;
        let previous = match &mut *rows {
            Rows::Append(batches) => Previous::Append(std::mem::take(batches)),
            Rows::Keyed { by_key, .. } => Previous::Keyed(std::mem::take(by_key)),
        };
        if let Err(e) = self.apply(&mut rows, batch) {
            match (&mut *rows, previous) {
                (Rows::Append(batches), Previous::Append(old)) => *batches = old,
                (Rows::Keyed { by_key, .. }, Previous::Keyed(old)) => *by_key = old,
                _ => unreachable!("a table keeps its kind"),
            }
            return Err(e);
        }
        self.feed(batch, true)
    }

    /// Sends written rows to the lookup joins reading the table; called
    /// under the rows lock, so they see the writes in order.
    fn feed(&self, batch: &RecordBatch, replace: bool) -> Result<()> {
        let mut feeds = self.feeds.lock().map_err(|_| poisoned())?;
        feeds.retain(|feed| match feed.pipeline.upgrade() {
            Some(pipeline) => pipeline
                .send_table_rows(feed.stream, batch, replace)
                .is_ok(),
            None => false,
        });
        Ok(())
    }

    fn apply(&self, rows: &mut Rows, batch: &RecordBatch) -> Result<usize> {
        match rows {
            Rows::Append(batches) => batches.push(batch.clone()),
            Rows::Keyed { key, row, by_key } => {
                let key_columns: Vec<ArrayRef> = self
                    .def
                    .primary_key
                    .iter()
                    .map(|&i| Arc::clone(batch.column(i)))
                    .collect();
                let keys = key.convert_columns(&key_columns)?;
                let values = row.convert_columns(batch.columns())?;
                for i in 0..batch.num_rows() {
                    by_key.insert(keys.row(i).as_ref().into(), values.row(i).as_ref().into());
                }
            }
        }
        Ok(batch.num_rows())
    }

    /// The table's rows now.
    pub fn snapshot(&self) -> Result<Vec<RecordBatch>> {
        let rows = self.rows.lock().map_err(|_| poisoned())?;
        self.snapshot_of(&rows)
    }

    /// Feeds a running lookup join (`stream`) the table's rows now, and
    /// every upsert from now on.
    pub fn attach(&self, pipeline: &Arc<Pipeline>, stream: usize) -> Result<()> {
        let rows = self.rows.lock().map_err(|_| poisoned())?;
        for batch in self.snapshot_of(&rows)? {
            pipeline.send_table_rows(stream, &batch, false)?;
        }
        self.feeds.lock().map_err(|_| poisoned())?.push(Feed {
            pipeline: Arc::downgrade(pipeline),
            stream,
        });
        Ok(())
    }

    fn snapshot_of(&self, rows: &Rows) -> Result<Vec<RecordBatch>> {
        match rows {
            Rows::Append(batches) => Ok(batches.clone()),
            Rows::Keyed { row, by_key, .. } => {
                if by_key.is_empty() {
                    return Ok(Vec::new());
                }
                let parser = row.parser();
                let columns = row.convert_rows(by_key.values().map(|r| parser.parse(r)))?;
                Ok(vec![RecordBatch::try_new(
                    Arc::clone(&self.def.schema),
                    columns,
                )?])
            }
        }
    }
}

fn poisoned() -> Error {
    Error::new(
        ErrorCode::Execution,
        "table lock poisoned by an earlier panic",
    )
}

/// Fits the rows of an `INSERT` to the target's columns: by the statement's
/// column list (missing nullable columns become NULL) or by position,
/// casting each value to the column's type.
pub(crate) fn align(
    batches: &[RecordBatch],
    schema: &SchemaRef,
    columns: Option<&[String]>,
    target: &str,
) -> Result<RecordBatch> {
    let mismatch = |message: String| Error::new(ErrorCode::SchemaMismatch, message);
    let Some(first) = batches.first() else {
        return Ok(RecordBatch::new_empty(Arc::clone(schema)));
    };
    let input = arrow::compute::concat_batches(&first.schema(), batches)?;
    let width = columns.map_or(schema.fields().len(), <[String]>::len);
    if input.num_columns() != width {
        return Err(mismatch(format!(
            "INSERT INTO {target} gives {} values per row for {width} columns",
            input.num_columns()
        )));
    }
    let mut out = Vec::with_capacity(schema.fields().len());
    for (i, field) in schema.fields().iter().enumerate() {
        let position = match columns {
            None => Some(i),
            Some(names) => names
                .iter()
                .position(|n| n.eq_ignore_ascii_case(field.name())),
        };
        let column = match position {
            Some(p) => arrow::compute::cast_with_options(
                input.column(p),
                field.data_type(),
                // A value that does not convert is an error, not a NULL.
                &arrow::compute::CastOptions {
                    safe: false,
                    ..Default::default()
                },
            )
            .map_err(|e| {
                mismatch(format!(
                    "INSERT INTO {target}: column '{}' takes {}: {e}",
                    field.name(),
                    field.data_type()
                ))
            })?,
            None if field.is_nullable() => new_null_array(field.data_type(), input.num_rows()),
            None => {
                return Err(mismatch(format!(
                    "INSERT INTO {target}: column '{}' is NOT NULL and has no value",
                    field.name()
                )))
            }
        };
        out.push(column);
    }
    if let Some(names) = columns {
        if let Some(unknown) = names.iter().find(|n| {
            !schema
                .fields()
                .iter()
                .any(|f| f.name().eq_ignore_ascii_case(n))
        }) {
            return Err(Error::new(
                ErrorCode::UnknownObject,
                format!("'{target}' has no column '{unknown}'"),
            ));
        }
    }
    RecordBatch::try_new(Arc::clone(schema), out).map_err(|e| {
        mismatch(format!(
            "INSERT INTO {target}: the rows do not fit its columns: {e}"
        ))
    })
}
