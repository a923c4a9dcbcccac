//! Streaming Top-N and deduplication: `ROW_NUMBER() OVER (PARTITION BY k
//! ORDER BY x) <= N`, emitted as a changelog.
//!
//! Each partition keeps its current best N rows, ordered by the `ORDER BY`
//! key (Arrow's row format, which compares as bytes and honours ASC/DESC
//! and NULLS FIRST/LAST), then by arrival. A batch may push rows into a
//! partition's top N and others out, and shift the rank of those below a
//! newcomer: for every partition the batch touched, the rows whose
//! (row, rank) pair changed are retracted (`_weight = -1`) and the new ones
//! inserted (`+1`). Consolidating the changelog gives the current top N of
//! every partition. Deduplication is the case N = 1 (keep the first row
//! per key with `ORDER BY ts`, the latest with `ORDER BY ts DESC`).
//!
//! State is N rows per partition (row-format bytes), whatever the input's
//! size; a row that does not make its partition's top N costs one
//! comparison with the partition's worst row.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{ArrayRef, BinaryArray, Int64Array, RecordBatch, UInt64Array};
use arrow::datatypes::{DataType, SchemaRef};
use arrow::row::{RowConverter, SortField};
use datafusion::physical_expr::{PhysicalExpr, PhysicalSortExpr};
use laminar_runtime::Result;

use crate::groups::{GroupTable, KeyEncoder};
use crate::stage::{apply_all, emit_weighted, evaluate_all, Stage};
use crate::{BatchTime, Operator};

/// Everything needed to build a [`TopN`] on a shard.
#[derive(Debug, Clone)]
pub struct TopNSpec {
    /// Filters/projections from the source batch to the window input.
    pub pre: Vec<Stage>,
    /// `PARTITION BY` expressions over the window input.
    pub partition_by: Vec<Arc<dyn PhysicalExpr>>,
    /// `ORDER BY` of the window function.
    pub order_by: Vec<PhysicalSortExpr>,
    /// N: rows kept per partition.
    pub limit: usize,
    /// The window input's schema plus the rank column.
    pub ranked_schema: SchemaRef,
    /// Stages above the window function (the rank filter, SELECT list).
    pub post: Vec<Stage>,
}

/// A partition's top rows: (order key, arrival) -> row.
type Ranked = BTreeMap<(Box<[u8]>, u64), Box<[u8]>>;

/// A partition's rows with their ranks, as they were before a batch.
type RankedList = Vec<(Box<[u8]>, u64)>;

/// The operator. One instance per stream per shard.
pub struct TopN {
    spec: TopNSpec,
    encoder: KeyEncoder,
    partitions: GroupTable,
    tops: Vec<Ranked>,
    order: RowConverter,
    rows: RowConverter,
    output_schema: SchemaRef,
    arrivals: u64,
    /// Bytes of kept rows and keys.
    bytes: usize,
}

impl std::fmt::Debug for TopN {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TopN")
            .field("limit", &self.spec.limit)
            .field("partitions", &self.tops.len())
            .finish()
    }
}

impl TopN {
    /// Builds the operator. `output_schema` is the stream's: the query's
    /// columns followed by `_weight`.
    pub fn new(spec: TopNSpec, output_schema: SchemaRef) -> Result<Self> {
        let fields = spec.ranked_schema.fields();
        let input_fields = &fields[..fields.len() - 1];
        let partition_fields = crate::groups::key_fields(&spec.partition_by, &spec.ranked_schema)?;
        let order = RowConverter::new(
            spec.order_by
                .iter()
                .map(|s| -> Result<SortField> {
                    Ok(SortField::new_with_options(
                        s.expr.data_type(&spec.ranked_schema)?,
                        s.options,
                    ))
                })
                .collect::<Result<Vec<_>>>()?,
        )?;
        let rows = RowConverter::new(
            input_fields
                .iter()
                .map(|f| SortField::new(f.data_type().clone()))
                .collect(),
        )?;
        let encoder = KeyEncoder::new(&partition_fields)?;
        Ok(Self {
            partitions: encoder.table(),
            encoder,
            tops: Vec::new(),
            order,
            rows,
            output_schema,
            arrivals: 0,
            bytes: 0,
            spec,
        })
    }

    /// Rows of the ranked schema from stored rows and their ranks.
    fn ranked_rows(&self, entries: &[(&[u8], u64)]) -> Result<RecordBatch> {
        let parser = self.rows.parser();
        let mut columns: Vec<ArrayRef> = self
            .rows
            .convert_rows(entries.iter().map(|(row, _)| parser.parse(row)))?;
        let ranks = entries.iter().map(|&(_, rank)| rank);
        let rank_type = self
            .spec
            .ranked_schema
            .fields()
            .last()
            .map(|f| f.data_type().clone());
        columns.push(match rank_type {
            Some(DataType::UInt64) => Arc::new(UInt64Array::from_iter_values(ranks)),
            _ => Arc::new(Int64Array::from_iter_values(ranks.map(|r| r as i64))),
        });
        Ok(RecordBatch::try_new(
            Arc::clone(&self.spec.ranked_schema),
            columns,
        )?)
    }

    fn emit(&self, rows: RecordBatch, weight: i64, out: &mut Vec<RecordBatch>) -> Result<()> {
        emit_weighted(&self.spec.post, rows, weight, &self.output_schema, out)
    }
}

impl Operator for TopN {
    fn on_batch(
        &mut self,
        batch: &RecordBatch,
        _time: BatchTime<'_>,
        out: &mut Vec<RecordBatch>,
    ) -> Result<()> {
        let input = apply_all(&self.spec.pre, batch)?;
        let n = input.num_rows();
        if n == 0 {
            return Ok(());
        }
        let partition_arrays = evaluate_all(&self.spec.partition_by, &input)?;
        let order_arrays = self
            .spec
            .order_by
            .iter()
            .map(|s| s.expr.evaluate(&input)?.into_array(n))
            .collect::<datafusion::common::Result<Vec<_>>>()?;
        let order_keys = self.order.convert_columns(&order_arrays)?;
        let row_bytes = self.rows.convert_columns(input.columns())?;
        let keys = self.encoder.encode(&partition_arrays)?;
        // Each touched partition's list before the batch.
        let mut before: BTreeMap<usize, RankedList> = BTreeMap::new();
        let limit = self.spec.limit;
        for row in 0..n {
            let partition = self.encoder.group_id(&mut self.partitions, &keys, row);
            if partition >= self.tops.len() {
                self.tops.resize_with(partition + 1, BTreeMap::new);
            }
            let top = &mut self.tops[partition];
            let key = order_keys.row(row);
            let arrival = self.arrivals;
            self.arrivals += 1;
            let enters = top.len() < limit
                || top
                    .last_key_value()
                    .is_some_and(|((worst, _), _)| key.as_ref() < &worst[..]);
            if !enters {
                continue;
            }
            before.entry(partition).or_insert_with(|| {
                top.values()
                    .enumerate()
                    .map(|(i, r)| (r.clone(), i as u64 + 1))
                    .collect()
            });
            top.insert(
                (key.as_ref().into(), arrival),
                row_bytes.row(row).as_ref().into(),
            );
            if top.len() > limit {
                top.pop_last();
            }
        }
        let mut retract: Vec<(&[u8], u64)> = Vec::new();
        let mut insert: Vec<(&[u8], u64)> = Vec::new();
        for (partition, old) in &before {
            let new: Vec<(&[u8], u64)> = self.tops[*partition]
                .values()
                .enumerate()
                .map(|(i, r)| (&r[..], i as u64 + 1))
                .collect();
            for (row, rank) in old {
                if !new.iter().any(|(r, k)| *r == &row[..] && k == rank) {
                    retract.push((&row[..], *rank));
                }
            }
            for &(row, rank) in &new {
                if !old.iter().any(|(r, k)| &r[..] == row && *k == rank) {
                    insert.push((row, rank));
                }
            }
        }
        let retracted = self.ranked_rows(&retract)?;
        let inserted = self.ranked_rows(&insert)?;
        self.emit(retracted, -1, out)?;
        self.emit(inserted, 1, out)?;
        Ok(())
    }

    fn on_watermark(&mut self, _watermark_ms: i64, _out: &mut Vec<RecordBatch>) -> Result<()> {
        Ok(())
    }

    fn late_rows(&self) -> u64 {
        0
    }

    fn state_bytes(&self) -> usize {
        self.bytes + self.partitions.bytes()
    }

    fn checkpoints(&self) -> bool {
        true
    }

    /// One batch: each kept row's partition key (`key_<i>`), its order key
    /// and row in Arrow's row format (`order`, `row`), its arrival number,
    /// and the operator's arrival counter (`arrivals`).
    fn snapshot(&mut self) -> Result<Vec<RecordBatch>> {
        let mut ids = Vec::new();
        let mut orders = Vec::new();
        let mut arrivals = Vec::new();
        let mut rows = Vec::new();
        for (partition, top) in self.tops.iter().enumerate() {
            for ((order, arrival), row) in top {
                ids.push(partition as u32);
                orders.push(&order[..]);
                arrivals.push(*arrival);
                rows.push(&row[..]);
            }
        }
        let mut names = Vec::new();
        let mut columns: Vec<ArrayRef> = Vec::new();
        crate::snapshot::push_keys(
            &self.encoder,
            &self.partitions,
            &ids,
            &mut names,
            &mut columns,
        )?;
        names.extend([
            "order".into(),
            "arrival".into(),
            "row".into(),
            "arrivals".into(),
        ]);
        columns.push(Arc::new(BinaryArray::from_iter_values(orders)));
        columns.push(Arc::new(UInt64Array::from(arrivals)));
        columns.push(Arc::new(BinaryArray::from_iter_values(rows)));
        columns.push(Arc::new(UInt64Array::from_value(self.arrivals, ids.len())));
        if ids.is_empty() {
            // Keep the counter even without rows.
            return Ok(vec![crate::snapshot_batch(
                ["arrivals".to_string()],
                vec![Arc::new(UInt64Array::from(vec![self.arrivals]))],
            )?]);
        }
        Ok(vec![crate::snapshot_batch(names, columns)?])
    }

    fn restore(&mut self, state: &[RecordBatch]) -> Result<()> {
        let Some(batch) = state.first() else {
            return Ok(());
        };
        use crate::snapshot::column;
        let counter: UInt64Array = column(batch, "arrivals")?;
        if batch.num_rows() == 1 && batch.num_columns() == 1 {
            self.arrivals = counter.value(0);
            return Ok(());
        }
        if let Some(&arrivals) = counter.values().first() {
            self.arrivals = arrivals;
        }
        let keys = crate::snapshot::columns_with_prefix(batch, "key_");
        let encoded = self.encoder.encode(&keys)?;
        let orders: BinaryArray = column(batch, "order")?;
        let arrivals: UInt64Array = column(batch, "arrival")?;
        let rows: BinaryArray = column(batch, "row")?;
        for i in 0..batch.num_rows() {
            let partition = self.encoder.group_id(&mut self.partitions, &encoded, i);
            if partition >= self.tops.len() {
                self.tops.resize_with(partition + 1, BTreeMap::new);
            }
            self.tops[partition].insert(
                (orders.value(i).into(), arrivals.value(i)),
                rows.value(i).into(),
            );
        }
        Ok(())
    }
}
