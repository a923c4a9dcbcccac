//! Materialized views: a stream's results kept on the control plane so
//! that ad-hoc `SELECT`s can read them.
//!
//! Each view has a thread that reads the stream like any subscriber and
//! folds every batch into the view's contents: an append-only stream's
//! batches are kept as they come; a changelog (`EMIT CHANGES`, with a
//! `_weight` column) is consolidated, summing the weights of identical
//! rows, so the view holds the stream's current result. An ad-hoc query
//! takes a snapshot of each view under its lock and runs DataFusion over
//! the snapshots. None of this touches the shards.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use arrow::array::{Array, Int64Array, RecordBatch};
use arrow::datatypes::{Schema, SchemaRef};
use arrow::row::{RowConverter, SortField};
use laminar_operators::WEIGHT_COLUMN;
use laminar_runtime::{Error, ErrorCode, Result};

use crate::subscription::{Marked, Subscription};

enum Contents {
    /// Every batch of an append-only stream.
    Append(Vec<RecordBatch>),
    /// A changelog's rows (row format) with their summed weights.
    Changelog {
        converter: RowConverter,
        weights: HashMap<Box<[u8]>, i64>,
    },
}

/// What a view holds right now.
pub(crate) struct ViewState {
    /// Visible schema: the stream's, without `_weight`.
    schema: SchemaRef,
    contents: Contents,
}

impl ViewState {
    fn new(stream_schema: &SchemaRef) -> Result<Self> {
        let changelog = stream_schema
            .fields()
            .last()
            .is_some_and(|f| f.name() == WEIGHT_COLUMN);
        if !changelog {
            return Ok(Self {
                schema: Arc::clone(stream_schema),
                contents: Contents::Append(Vec::new()),
            });
        }
        let fields = &stream_schema.fields()[..stream_schema.fields().len() - 1];
        let converter = RowConverter::new(
            fields
                .iter()
                .map(|f| SortField::new(f.data_type().clone()))
                .collect(),
        )?;
        Ok(Self {
            schema: Arc::new(Schema::new(fields.to_vec())),
            contents: Contents::Changelog {
                converter,
                weights: HashMap::new(),
            },
        })
    }

    fn apply(&mut self, batch: &RecordBatch) -> Result<()> {
        match &mut self.contents {
            Contents::Append(batches) => batches.push(batch.clone()),
            Contents::Changelog { converter, weights } => {
                let last = batch.num_columns() - 1;
                let rows = converter.convert_columns(&batch.columns()[..last])?;
                let batch_weights = batch
                    .column(last)
                    .as_any()
                    .downcast_ref::<Int64Array>()
                    .ok_or_else(|| {
                        Error::new(ErrorCode::Execution, "changelog weights are not BIGINT")
                    })?;
                for (i, row) in rows.iter().enumerate() {
                    let weight = batch_weights.value(i);
                    let entry = weights.entry(row.as_ref().into()).or_insert(0);
                    *entry += weight;
                    if *entry == 0 {
                        weights.remove(row.as_ref());
                    }
                }
            }
        }
        Ok(())
    }

    /// Loads rows a checkpoint kept (what [`ViewState::snapshot`] gave).
    fn load(&mut self, batches: Vec<RecordBatch>) -> Result<()> {
        match &mut self.contents {
            Contents::Append(kept) => kept.extend(batches),
            Contents::Changelog { .. } => {
                for batch in batches {
                    self.apply(&weighted(&batch)?)?;
                }
            }
        }
        Ok(())
    }

    /// The view's rows right now, as its stream's rows (a changelog's
    /// with `_weight` 1): what an operator reading the stream takes.
    pub fn snapshot_as_stream(&self) -> Result<Vec<RecordBatch>> {
        let rows = self.snapshot()?;
        match &self.contents {
            Contents::Append(_) => Ok(rows),
            Contents::Changelog { .. } => rows.iter().map(weighted).collect(),
        }
    }

    /// The view's rows right now.
    pub fn snapshot(&self) -> Result<Vec<RecordBatch>> {
        match &self.contents {
            Contents::Append(batches) => Ok(batches.clone()),
            Contents::Changelog { converter, weights } => {
                let parser = converter.parser();
                let rows = weights
                    .iter()
                    .filter(|(_, &w)| w > 0)
                    .flat_map(|(row, &w)| std::iter::repeat_n(row, w as usize))
                    .map(|row| parser.parse(row));
                let columns = converter.convert_rows(rows)?;
                if columns.first().is_some_and(|c| c.is_empty()) {
                    return Ok(Vec::new());
                }
                Ok(vec![RecordBatch::try_new(
                    Arc::clone(&self.schema),
                    columns,
                )?])
            }
        }
    }

    /// The schema ad-hoc queries see.
    pub fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }
}

/// A materialized view and the thread that keeps it.
pub(crate) struct View {
    pub name: String,
    pub state: Arc<Mutex<ViewState>>,
    /// A stream's retained output (`LaminarDB::retain_output`): every
    /// batch as emitted, not a queryable view.
    pub output: bool,
    thread: Option<JoinHandle<()>>,
}

impl View {
    /// Starts keeping `subscription`'s stream as a view; a batch the view
    /// cannot take is reported in `errors` (what `LaminarDB::errors`
    /// returns) as well as logged.
    /// `index` is the view's number in checkpoints; `restored` what the
    /// last checkpoint kept of it.
    pub fn start(
        name: String,
        mut subscription: Subscription,
        errors: Arc<Mutex<Vec<Error>>>,
        index: usize,
        restored: Option<Vec<RecordBatch>>,
        output: bool,
    ) -> Result<Self> {
        let mut initial = if output {
            ViewState {
                schema: subscription.schema(),
                contents: Contents::Append(Vec::new()),
            }
        } else {
            ViewState::new(&subscription.schema())?
        };
        if let Some(batches) = restored {
            initial.load(batches)?;
        }
        let state = Arc::new(Mutex::new(initial));
        let kept = Arc::clone(&state);
        let view_name = name.clone();
        let thread = std::thread::Builder::new()
            .name(format!("laminar-view-{name}"))
            .spawn(move || {
                while let Some(item) = subscription.recv_marked() {
                    let batch = match item {
                        Marked::Batch(batch) => batch,
                        Marked::Checkpoint(barrier) => {
                            let contents = kept
                                .lock()
                                .map_err(|_| {
                                    Error::new(ErrorCode::Checkpoint, "view state poisoned")
                                })
                                .and_then(|view| view.snapshot());
                            barrier.report_view(index, contents);
                            continue;
                        }
                    };
                    let applied = kept.lock().map(|mut view| view.apply(&batch));
                    if let Ok(Err(e)) = applied {
                        log::error!("materialized view {view_name}: {e}");
                        if let Ok(mut errors) = errors.lock() {
                            if errors.len() < 16 {
                                errors.push(Error::new(
                                    e.code(),
                                    format!("materialized view {view_name}: {}", e.message()),
                                ));
                            }
                        }
                    }
                }
            })
            .map_err(|e| {
                Error::new(
                    ErrorCode::RuntimeStart,
                    format!("cannot spawn a view thread: {e}"),
                )
            })?;
        Ok(Self {
            name,
            state,
            output,
            thread: Some(thread),
        })
    }

    /// Waits until the view has read its stream to the end.
    pub fn join(&mut self) {
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// `batch` with a `_weight` column of 1s: the changelog rows that insert
/// its rows.
fn weighted(batch: &RecordBatch) -> Result<RecordBatch> {
    let mut columns = batch.columns().to_vec();
    columns.push(Arc::new(Int64Array::from_value(1, batch.num_rows())));
    let mut fields = batch.schema().fields().to_vec();
    fields.push(Arc::new(arrow::datatypes::Field::new(
        WEIGHT_COLUMN,
        arrow::datatypes::DataType::Int64,
        false,
    )));
    Ok(RecordBatch::try_new(
        Arc::new(Schema::new(fields)),
        columns,
    )?)
}
