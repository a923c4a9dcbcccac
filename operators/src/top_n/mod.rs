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
//!
//! Nothing is allocated per row: kept rows' bytes live in blocks of one
//! heap that rows pushed out hand on to new ones ([`kept`]), each
//! partition's rows are a sorted chain of slots in one slot vector, and
//! the per-batch bookkeeping lives in scratch vectors that keep their
//! memory. A batch's partitions are looked up first, all together, so
//! that each row's records can be fetched a few rows ahead of their use.

use std::sync::Arc;

use arrow::array::{ArrayRef, BinaryArray, Int64Array, RecordBatch, UInt64Array};
use arrow::datatypes::{DataType, SchemaRef};
use arrow::row::{RowConverter, SortField};
use datafusion::physical_expr::{PhysicalExpr, PhysicalSortExpr};
use laminar_runtime::Result;

use crate::groups::{GroupTable, KeyEncoder};
use crate::stage::{apply_all, emit_changes, evaluate_all, Stage};
use crate::{BatchTime, Operator};

mod kept;
use kept::Kept;

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

/// How many rows ahead of its use a partition's record is fetched.
const PREFETCH_ROWS: usize = 8;

/// The operator. One instance per stream per shard.
pub struct TopN {
    spec: TopNSpec,
    encoder: KeyEncoder,
    partitions: GroupTable,
    kept: Kept,
    order: RowConverter,
    rows: RowConverter,
    output_schema: SchemaRef,
    arrivals: u64,
    // Per-batch scratch, kept for its memory.
    /// `[row]` -> its partition.
    partition_ids: Vec<usize>,
    /// Touched partitions and, in `before`, each one's slots before the
    /// batch: `(partition, start, end)` into `before`.
    touched: Vec<(usize, usize, usize)>,
    before: Vec<u32>,
    /// Slots pushed out during the batch.
    unlinked: Vec<u32>,
}

impl std::fmt::Debug for TopN {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TopN")
            .field("limit", &self.spec.limit)
            .field("partitions", &self.kept.partition_count())
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
            kept: Kept::default(),
            order,
            rows,
            output_schema,
            arrivals: 0,
            partition_ids: Vec::new(),
            touched: Vec::new(),
            before: Vec::new(),
            unlinked: Vec::new(),
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
        let limit = self.spec.limit;
        self.encoder.resolve(
            &mut self.partitions,
            &keys,
            None,
            n,
            &mut self.partition_ids,
        );
        if let Some(&last) = self.partition_ids.iter().max() {
            self.kept.ensure_partition(last);
        }
        self.kept.begin_batch();
        self.touched.clear();
        self.before.clear();
        self.unlinked.clear();
        for row in 0..n {
            if let Some(&ahead) = self.partition_ids.get(row + PREFETCH_ROWS) {
                self.kept.prefetch(ahead);
            }
            let partition = self.partition_ids[row];
            let key = order_keys.row(row);
            let arrival = self.arrivals;
            self.arrivals += 1;
            if !self.kept.enters(partition, key.as_ref(), limit) {
                continue;
            }
            if self.kept.first_change(partition) {
                // First change to this partition in the batch: note its
                // rows as they were.
                let start = self.before.len();
                self.before.extend(self.kept.chain(partition));
                self.touched.push((partition, start, self.before.len()));
            }
            let pushed_out = self.kept.insert(
                partition,
                key.as_ref(),
                row_bytes.row(row).as_ref(),
                arrival,
                limit,
            );
            self.unlinked.extend(pushed_out);
        }
        // Ranks are positions, so a row kept at the same rank is the
        // entry at that position in both lists.
        let kept = &self.kept;
        let row_at = |slot: u32| kept.row(slot);
        let mut retract: Vec<(&[u8], u64)> = Vec::new();
        let mut insert: Vec<(&[u8], u64)> = Vec::new();
        for &(partition, start, end) in &self.touched {
            let old = &self.before[start..end];
            let mut new = kept.chain(partition);
            let mut position = 0;
            loop {
                let (old_slot, new_slot) = (old.get(position).copied(), new.next());
                if old_slot.is_none() && new_slot.is_none() {
                    break;
                }
                let rank = position as u64 + 1;
                let old_row = old_slot.map(row_at);
                let new_row = new_slot.map(row_at);
                if old_row != new_row {
                    retract.extend(old_row.map(|r| (r, rank)));
                    insert.extend(new_row.map(|r| (r, rank)));
                }
                position += 1;
            }
        }
        // Retractions, then insertions, in one batch.
        let retracted = retract.len();
        retract.append(&mut insert);
        let emitted = self.ranked_rows(&retract).and_then(|rows| {
            emit_changes(&self.spec.post, rows, retracted, &self.output_schema, out)
        });
        // Even on an error: the pushed-out rows are no longer kept.
        self.kept.release(&self.unlinked);
        emitted
    }

    fn on_watermark(&mut self, _watermark_ms: i64, _out: &mut Vec<RecordBatch>) -> Result<()> {
        Ok(())
    }

    fn late_rows(&self) -> u64 {
        0
    }

    fn state_bytes(&self) -> usize {
        self.kept.bytes() + self.partitions.bytes()
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
        let kept = &self.kept;
        for partition in 0..kept.partition_count() {
            for slot in kept.chain(partition) {
                ids.push(partition as u32);
                orders.push(kept.order(slot));
                arrivals.push(kept.arrival(slot));
                rows.push(kept.row(slot));
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
            self.kept.ensure_partition(partition);
            // A snapshot holds at most `limit` rows per partition, so
            // nothing is pushed out.
            self.kept.insert(
                partition,
                orders.value(i),
                rows.value(i),
                arrivals.value(i),
                usize::MAX,
            );
        }
        Ok(())
    }
}
