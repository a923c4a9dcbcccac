//! Keyed tumbling-window aggregation, emitted when the window closes.
//!
//! State per open window: a group table (key row bytes -> dense group id)
//! and one DataFusion `GroupsAccumulator` per aggregate, so the aggregate
//! functions behave exactly as DataFusion's batch `GROUP BY` does (types,
//! NULLs, overflow, float rules): the batch engine is our oracle, and this
//! makes agreement a matter of feeding it the same rows.
//!
//! Per batch: drop late rows, run the pre-aggregate stages, compute each
//! row's window, encode the keys once (Arrow row format), then for each
//! distinct window in the batch (usually one) resolve group ids and call
//! every accumulator once over the whole batch with a row mask. No per-row
//! allocation except for a key's first appearance in a window.
//!
//! A window `[start, end)` closes when the watermark reaches `end`; its
//! groups are emitted as one batch and its state is freed, so state is
//! bounded by the number of open windows times keys.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, BooleanArray, RecordBatch};
use arrow::compute::filter_record_batch;
use arrow::datatypes::SchemaRef;
use arrow::row::{RowConverter, SortField};
use datafusion::logical_expr::{EmitTo, GroupsAccumulator};
use datafusion::physical_expr::aggregate::AggregateFunctionExpr;
use datafusion::physical_expr::{GroupsAccumulatorAdapter, PhysicalExpr};
use hashbrown::HashTable;
use laminar_runtime::{Error, ErrorCode, Result};

use crate::stage::{apply_all, Stage};
use crate::time::{EventTimeUnit, TumbleSpec};
use crate::{BatchTime, Operator};

/// Everything needed to build a [`WindowAggregate`] on a shard. Cheap to
/// clone: expressions are shared, state is not.
#[derive(Debug, Clone)]
pub struct WindowAggregateSpec {
    /// Index of the event-time column in the source batch; lateness is
    /// decided on it before any filter runs.
    pub source_time_column: usize,
    /// How the source stores event time.
    pub source_time_unit: EventTimeUnit,
    /// Filters/projections from the source batch to the aggregate input.
    pub pre: Vec<Stage>,
    /// The window's event-time argument, over the aggregate input.
    pub event_time: Arc<dyn PhysicalExpr>,
    /// The window.
    pub window: TumbleSpec,
    /// Type of the window column in the output (the event-time type).
    pub window_unit: EventTimeUnit,
    /// Position of the window among the GROUP BY expressions.
    pub window_position: usize,
    /// The other GROUP BY expressions, over the aggregate input.
    pub keys: Vec<Arc<dyn PhysicalExpr>>,
    /// Aggregate functions.
    pub aggregates: Vec<Arc<AggregateFunctionExpr>>,
    /// `FILTER (WHERE ...)` of each aggregate, if any.
    pub aggregate_filters: Vec<Option<Arc<dyn PhysicalExpr>>>,
    /// Schema of the aggregate's output: GROUP BY columns, then aggregates.
    pub aggregate_schema: SchemaRef,
    /// Filters/projections after the aggregate (HAVING, SELECT list).
    pub post: Vec<Stage>,
}

/// Group keys of one window, by group id. A single non-nullable string or
/// integer key is stored as itself (hashing and comparing a short string is
/// far cheaper than encoding it in Arrow's row format); anything else as
/// row-format bytes.
enum KeyStore {
    Utf8(Vec<Box<str>>),
    Int64(Vec<i64>),
    Rows(Vec<Box<[u8]>>),
}

impl KeyStore {
    fn len(&self) -> usize {
        match self {
            KeyStore::Utf8(keys) => keys.len(),
            KeyStore::Int64(keys) => keys.len(),
            KeyStore::Rows(keys) => keys.len(),
        }
    }
}

/// How a stream's keys are stored; fixed at planning time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeyKind {
    Utf8,
    Int64,
    Rows,
}

/// One batch's keys, ready for lookup.
enum BatchKeys<'a> {
    Utf8(&'a arrow::array::StringArray),
    Int64(&'a [i64]),
    Rows(arrow::row::Rows),
}

/// One open window.
struct WindowState {
    /// Keys by group id.
    keys: KeyStore,
    /// Hash of each group's key bytes, so the table can grow without
    /// rehashing keys.
    hashes: Vec<u64>,
    table: HashTable<u32>,
    accumulators: Vec<Box<dyn GroupsAccumulator>>,
}

/// The operator. One instance per stream per shard.
pub struct WindowAggregate {
    spec: WindowAggregateSpec,
    converter: RowConverter,
    key_kind: KeyKind,
    /// Hash state of the group tables (process-local: any fast hasher).
    hasher: ahash::RandomState,
    windows: BTreeMap<i64, WindowState>,
    late_rows: u64,
    // Scratch buffers reused across batches.
    times_ms: Vec<i64>,
    window_starts: Vec<i64>,
    group_ids: Vec<usize>,
}

impl std::fmt::Debug for WindowAggregate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WindowAggregate")
            .field("window", &self.spec.window)
            .field("open_windows", &self.windows.len())
            .field("late_rows", &self.late_rows)
            .finish()
    }
}

impl WindowAggregate {
    /// Builds the operator's empty state.
    pub fn new(spec: WindowAggregateSpec) -> Result<Self> {
        let fields = spec.aggregate_schema.fields();
        let group_count = spec.keys.len() + 1;
        let sort_fields = (0..group_count)
            .filter(|&i| i != spec.window_position)
            .map(|i| SortField::new(fields[i].data_type().clone()))
            .collect();
        let converter = RowConverter::new(sort_fields)?;
        let key_fields: Vec<_> = (0..group_count)
            .filter(|&i| i != spec.window_position)
            .map(|i| &fields[i])
            .collect();
        let key_kind = match key_fields.as_slice() {
            [f] if !f.is_nullable() && f.data_type() == &arrow::datatypes::DataType::Utf8 => {
                KeyKind::Utf8
            }
            [f] if !f.is_nullable() && f.data_type() == &arrow::datatypes::DataType::Int64 => {
                KeyKind::Int64
            }
            _ => KeyKind::Rows,
        };
        Ok(Self {
            spec,
            converter,
            key_kind,
            hasher: ahash::RandomState::new(),
            windows: BTreeMap::new(),
            late_rows: 0,
            times_ms: Vec::new(),
            window_starts: Vec::new(),
            group_ids: Vec::new(),
        })
    }

    /// Number of windows holding state.
    pub fn open_windows(&self) -> usize {
        self.windows.len()
    }

    fn new_window(&self) -> Result<WindowState> {
        let accumulators = self
            .spec
            .aggregates
            .iter()
            .map(|agg| -> Result<Box<dyn GroupsAccumulator>> {
                if agg.groups_accumulator_supported() {
                    Ok(agg.create_groups_accumulator()?)
                } else {
                    let agg = Arc::clone(agg);
                    Ok(Box::new(GroupsAccumulatorAdapter::new(move || {
                        agg.create_accumulator()
                    })))
                }
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(WindowState {
            keys: match self.key_kind {
                KeyKind::Utf8 => KeyStore::Utf8(Vec::new()),
                KeyKind::Int64 => KeyStore::Int64(Vec::new()),
                KeyKind::Rows => KeyStore::Rows(Vec::new()),
            },
            hashes: Vec::new(),
            table: HashTable::new(),
            accumulators,
        })
    }

    /// Removes rows whose window closed already; returns the rest.
    fn drop_late(&mut self, batch: &RecordBatch, time: BatchTime<'_>) -> Result<RecordBatch> {
        self.spec.source_time_unit.array_to_ms(
            batch.column(self.spec.source_time_column).as_ref(),
            &mut self.times_ms,
        )?;
        let window = self.spec.window;
        if time.row_watermarks_ms.is_none() {
            // Window ends grow with event time: if the earliest row is on
            // time, every row is, and no per-row work is needed.
            let earliest = self.times_ms.iter().copied().min().unwrap_or(i64::MAX);
            if window.end_of(window.start_of(earliest)) > time.watermark_ms {
                return Ok(batch.clone());
            }
        }
        let is_late = |i: usize, t: i64| {
            let end = window.end_of(window.start_of(t));
            end <= time.watermark_ms
                || time
                    .row_watermarks_ms
                    .is_some_and(|row_watermarks| end <= row_watermarks[i])
        };
        let late = self
            .times_ms
            .iter()
            .enumerate()
            .filter(|&(i, &t)| is_late(i, t))
            .count();
        if late == 0 {
            return Ok(batch.clone());
        }
        self.late_rows += late as u64;
        let keep: BooleanArray = self
            .times_ms
            .iter()
            .enumerate()
            .map(|(i, &t)| Some(!is_late(i, t)))
            .collect();
        Ok(filter_record_batch(batch, &keep)?)
    }

    fn emit(&mut self, start_ms: i64, mut state: WindowState) -> Result<RecordBatch> {
        let groups = state.keys.len();
        let key_columns: Vec<ArrayRef> = match &state.keys {
            KeyStore::Utf8(keys) => vec![Arc::new(arrow::array::StringArray::from_iter_values(
                keys.iter(),
            ))],
            KeyStore::Int64(keys) => vec![Arc::new(arrow::array::Int64Array::from(keys.clone()))],
            KeyStore::Rows(keys) => {
                let parser = self.converter.parser();
                self.converter
                    .convert_rows(keys.iter().map(|k| parser.parse(k)))?
            }
        };
        let window_column = self.spec.window_unit.constant_array(start_ms, groups);
        let mut columns: Vec<ArrayRef> =
            Vec::with_capacity(self.spec.aggregate_schema.fields().len());
        let mut keys = key_columns.into_iter();
        for position in 0..=self.spec.keys.len() {
            if position == self.spec.window_position {
                columns.push(Arc::clone(&window_column));
            } else {
                columns.push(keys.next().expect("one key column per key"));
            }
        }
        for accumulator in &mut state.accumulators {
            columns.push(accumulator.evaluate(EmitTo::All)?);
        }
        let aggregated = RecordBatch::try_new(Arc::clone(&self.spec.aggregate_schema), columns)
            .map_err(|e| {
                Error::new(
                    ErrorCode::Execution,
                    format!("window aggregate produced a batch that does not fit its schema: {e}"),
                )
            })?;
        apply_all(&self.spec.post, &aggregated)
    }
}

/// Looks up or inserts row `row`'s key; returns its group id.
#[inline]
fn group_id(
    state: &mut WindowState,
    hasher: &ahash::RandomState,
    keys: &BatchKeys<'_>,
    row: usize,
) -> usize {
    match (keys, &mut state.keys) {
        (BatchKeys::Utf8(array), KeyStore::Utf8(store)) => {
            let key = array.value(row);
            let hash = hasher.hash_one(key);
            intern(
                &mut state.table,
                &mut state.hashes,
                store,
                hash,
                |k| &**k == key,
                || key.into(),
            )
        }
        (BatchKeys::Int64(values), KeyStore::Int64(store)) => {
            let key = values[row];
            let hash = hasher.hash_one(key);
            intern(
                &mut state.table,
                &mut state.hashes,
                store,
                hash,
                |k| *k == key,
                || key,
            )
        }
        (BatchKeys::Rows(rows), KeyStore::Rows(store)) => {
            let key = rows.row(row);
            let key = key.as_ref();
            let hash = hasher.hash_one(key);
            intern(
                &mut state.table,
                &mut state.hashes,
                store,
                hash,
                |k| &**k == key,
                || key.into(),
            )
        }
        _ => unreachable!("a window's key store matches its stream's key kind"),
    }
}

/// Finds the group whose key satisfies `equal`, or appends `make()`.
#[inline]
fn intern<K>(
    table: &mut HashTable<u32>,
    hashes: &mut Vec<u64>,
    store: &mut Vec<K>,
    hash: u64,
    equal: impl Fn(&K) -> bool,
    make: impl FnOnce() -> K,
) -> usize {
    if let Some(&id) = table.find(hash, |&id| equal(&store[id as usize])) {
        return id as usize;
    }
    let id = store.len() as u32;
    store.push(make());
    hashes.push(hash);
    table.insert_unique(hash, id, |&other| hashes[other as usize]);
    id as usize
}

impl Operator for WindowAggregate {
    fn on_batch(
        &mut self,
        batch: &RecordBatch,
        time: BatchTime<'_>,
        _out: &mut Vec<RecordBatch>,
    ) -> Result<()> {
        // Output only ever leaves when a window closes (on_watermark).
        let on_time = self.drop_late(batch, time)?;
        let input = apply_all(&self.spec.pre, &on_time)?;
        let rows = input.num_rows();
        if rows == 0 {
            return Ok(());
        }
        let times = self.spec.event_time.evaluate(&input)?.into_array(rows)?;
        self.spec
            .window_unit
            .array_to_ms(times.as_ref(), &mut self.times_ms)?;
        let window = self.spec.window;
        let earliest = self.times_ms.iter().copied().min().unwrap_or_default();
        let latest = self.times_ms.iter().copied().max().unwrap_or_default();
        // Most batches fall in one window: then no per-row window math.
        let single_window = window.start_of(earliest) == window.start_of(latest);
        self.window_starts.clear();
        if !single_window {
            self.window_starts
                .extend(self.times_ms.iter().map(|&t| window.start_of(t)));
        }

        let key_arrays = self
            .spec
            .keys
            .iter()
            .map(|k| k.evaluate(&input)?.into_array(rows))
            .collect::<datafusion::common::Result<Vec<_>>>()?;
        if self.key_kind != KeyKind::Rows && key_arrays[0].null_count() > 0 {
            return Err(Error::new(
                ErrorCode::Execution,
                "a GROUP BY key planned as NOT NULL produced NULL",
            ));
        }
        let keys = match self.key_kind {
            KeyKind::Utf8 => BatchKeys::Utf8(
                key_arrays[0]
                    .as_any()
                    .downcast_ref::<arrow::array::StringArray>()
                    .ok_or_else(|| key_type_error(&key_arrays[0]))?,
            ),
            KeyKind::Int64 => BatchKeys::Int64(
                key_arrays[0]
                    .as_any()
                    .downcast_ref::<arrow::array::Int64Array>()
                    .ok_or_else(|| key_type_error(&key_arrays[0]))?
                    .values(),
            ),
            KeyKind::Rows => BatchKeys::Rows(self.converter.convert_columns(&key_arrays)?),
        };

        // Arguments (plus ORDER BY columns) of each aggregate, and its
        // FILTER mask, computed once per batch for all windows.
        let mut arguments = Vec::with_capacity(self.spec.aggregates.len());
        for agg in &self.spec.aggregates {
            let mut exprs = agg.expressions();
            exprs.extend(agg.order_bys().iter().map(|s| Arc::clone(&s.expr)));
            arguments.push(
                exprs
                    .iter()
                    .map(|e| e.evaluate(&input)?.into_array(rows))
                    .collect::<datafusion::common::Result<Vec<_>>>()?,
            );
        }
        let mut filters = Vec::with_capacity(self.spec.aggregates.len());
        for filter in &self.spec.aggregate_filters {
            filters.push(match filter {
                Some(f) => Some(as_mask(f.evaluate(&input)?.into_array(rows)?)?),
                None => None,
            });
        }

        let mut starts: Vec<i64> = Vec::new();
        if single_window {
            starts.push(window.start_of(earliest));
        } else {
            for &s in &self.window_starts {
                if !starts.contains(&s) {
                    starts.push(s);
                }
            }
        }
        for start in starts {
            if !self.windows.contains_key(&start) {
                let state = self.new_window()?;
                self.windows.insert(start, state);
            }
            let state = self.windows.get_mut(&start).expect("inserted above");
            self.group_ids.clear();
            for row in 0..rows {
                let in_window = single_window || self.window_starts[row] == start;
                self.group_ids.push(if in_window {
                    group_id(state, &self.hasher, &keys, row)
                } else {
                    // Masked out below; any valid id will do.
                    0
                });
            }
            let window_mask: Option<BooleanArray> = (!single_window).then(|| {
                self.window_starts
                    .iter()
                    .map(|&s| Some(s == start))
                    .collect()
            });
            let groups = state.keys.len();
            for (j, accumulator) in state.accumulators.iter_mut().enumerate() {
                let mask = combine_masks(window_mask.as_ref(), filters[j].as_ref())?;
                accumulator.update_batch(&arguments[j], &self.group_ids, mask.as_ref(), groups)?;
            }
        }
        Ok(())
    }

    fn on_watermark(&mut self, watermark_ms: i64, out: &mut Vec<RecordBatch>) -> Result<()> {
        while let Some(entry) = self.windows.first_entry() {
            if self.spec.window.end_of(*entry.key()) > watermark_ms {
                break;
            }
            let (start, state) = entry.remove_entry();
            let batch = self.emit(start, state)?;
            if batch.num_rows() > 0 {
                out.push(batch);
            }
        }
        Ok(())
    }

    fn late_rows(&self) -> u64 {
        self.late_rows
    }
}

fn key_type_error(array: &ArrayRef) -> Error {
    Error::new(
        ErrorCode::Execution,
        format!(
            "GROUP BY key produced {}, not the planned type",
            array.data_type()
        ),
    )
}

fn as_mask(array: ArrayRef) -> Result<BooleanArray> {
    array
        .as_any()
        .downcast_ref::<BooleanArray>()
        .cloned()
        .ok_or_else(|| {
            Error::new(
                ErrorCode::Execution,
                format!("FILTER clause produced {}, not BOOLEAN", array.data_type()),
            )
        })
}

fn combine_masks(
    a: Option<&BooleanArray>,
    b: Option<&BooleanArray>,
) -> Result<Option<BooleanArray>> {
    Ok(match (a, b) {
        (None, None) => None,
        (Some(m), None) | (None, Some(m)) => Some(m.clone()),
        (Some(a), Some(b)) => Some(arrow::compute::and(a, b)?),
    })
}
