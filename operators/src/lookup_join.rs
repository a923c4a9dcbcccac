//! Lookup joins: each row of a stream is enriched with the row of a table
//! that has its key, as the table is when the row is processed.
//!
//! Every shard keeps its own replica of the table (tables are reference
//! data: small next to a stream), indexed by primary key, and the control
//! plane sends each shard the rows of every `INSERT` (upserts) as they are
//! written. A stream row therefore never waits and never crosses a shard:
//! the stream is spread over the shards like a stateless one.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, Int64Array, RecordBatch};
use arrow::datatypes::SchemaRef;
use datafusion::physical_expr::PhysicalExpr;
use laminar_runtime::Result;

use crate::groups::{GroupTable, KeyEncoder};
use crate::join::{filter_pairs, joined, nulls, passed, take_rows, StoredBatches};
use crate::stage::{apply_all, apply_all_carrying, evaluate_all, Stage};
use crate::{BatchTime, Operator};

/// Everything needed to build a lookup join on a shard.
#[derive(Debug, Clone)]
pub struct LookupJoinSpec {
    /// Filters/projections from the stream's batch to the join input.
    pub pre: Vec<Stage>,
    /// The stream's side of the key, over the join input, in the order of
    /// `table_key`.
    pub keys: Vec<Arc<dyn PhysicalExpr>>,
    /// Schema of the join input.
    pub left_schema: SchemaRef,
    /// The table's primary-key columns (in its full schema).
    pub table_key: Vec<usize>,
    /// Filters/projections from the table's rows to the join's right side.
    pub table_stages: Vec<Stage>,
    /// Schema of the right side.
    pub right_schema: SchemaRef,
    /// The join condition besides the equal keys, over the joined rows.
    pub filter: Option<Arc<dyn PhysicalExpr>>,
    /// Stream rows without a match are emitted with NULLs (LEFT JOIN).
    pub left_outer: bool,
    /// Schema of the joined rows.
    pub joined_schema: SchemaRef,
    /// Filters/projections after the join.
    pub post: Vec<Stage>,
}

/// A lookup join on one shard, with its replica of the table.
pub struct LookupJoin {
    spec: LookupJoinSpec,
    encoder: KeyEncoder,
    keys: GroupTable,
    /// Per key: its current row, if the table has one that passes the
    /// table-side filter.
    current: Vec<Option<(u64, u32)>>,
    rows: StoredBatches<()>,
    live_rows: usize,
}

impl std::fmt::Debug for LookupJoin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LookupJoin")
            .field("table_rows", &self.live_rows)
            .finish()
    }
}

impl LookupJoin {
    /// A join with an empty replica; the table's rows arrive through
    /// [`Operator::on_table_rows`].
    pub fn new(spec: LookupJoinSpec) -> Result<Self> {
        let fields = spec
            .keys
            .iter()
            .enumerate()
            .map(|(i, k)| {
                Ok(Arc::new(arrow::datatypes::Field::new(
                    format!("k{i}"),
                    k.data_type(&spec.left_schema)?,
                    false,
                )))
            })
            .collect::<Result<Vec<_>>>()?;
        let encoder = KeyEncoder::new(&fields)?;
        let keys = encoder.table();
        Ok(Self {
            spec,
            encoder,
            keys,
            current: Vec::new(),
            rows: StoredBatches::default(),
            live_rows: 0,
        })
    }

    /// Rows in the replica.
    pub fn table_rows(&self) -> usize {
        self.live_rows
    }
}

impl Operator for LookupJoin {
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
        let key_arrays = evaluate_all(&self.spec.keys, &input)?;
        // Rows with a NULL key match nothing; the others are looked up.
        let mut valid = vec![true; n];
        for array in &key_arrays {
            if let Some(nulls) = array.nulls() {
                for (i, v) in nulls.iter().enumerate() {
                    valid[i] &= v;
                }
            }
        }
        let mut probe: Vec<u32> = Vec::with_capacity(n);
        let mut found: Vec<(u64, u32)> = Vec::with_capacity(n);
        let mut matched = vec![false; n];
        if self.live_rows > 0 {
            let all_valid = valid.iter().all(|&v| v);
            // The encoder's fast paths want no NULLs: look up the valid
            // rows only.
            let (lookup_arrays, lookup_rows): (Vec<ArrayRef>, Vec<u32>) = if all_valid {
                (key_arrays, (0..n as u32).collect())
            } else {
                let mask = arrow::array::BooleanArray::from(valid.clone());
                let rows = (0..n as u32).filter(|&i| valid[i as usize]).collect();
                (
                    key_arrays
                        .iter()
                        .map(|a| Ok(arrow::compute::filter(a, &mask)?))
                        .collect::<Result<Vec<_>>>()?,
                    rows,
                )
            };
            let keys = self.encoder.encode(&lookup_arrays)?;
            for (i, &row) in lookup_rows.iter().enumerate() {
                if let Some(group) = self.encoder.find(&self.keys, &keys, i) {
                    if let Some(at) = self.current[group] {
                        probe.push(row);
                        found.push(at);
                    }
                }
            }
        }
        if !probe.is_empty() {
            let left = take_rows(&input, &probe)?;
            let right = self.rows.gather(&found, &self.spec.right_schema)?;
            let rows = joined(&self.spec.joined_schema, left, right)?;
            let (rows, mask) = filter_pairs(self.spec.filter.as_ref(), rows)?;
            for (i, &row) in probe.iter().enumerate() {
                if passed(mask.as_ref(), i) {
                    matched[row as usize] = true;
                }
            }
            if rows.num_rows() > 0 {
                let result = apply_all(&self.spec.post, &rows)?;
                if result.num_rows() > 0 {
                    out.push(result);
                }
            }
        }
        if self.spec.left_outer {
            let unmatched: Vec<u32> = (0..n as u32).filter(|&i| !matched[i as usize]).collect();
            if !unmatched.is_empty() {
                let left = take_rows(&input, &unmatched)?;
                let right = nulls(&self.spec.right_schema, unmatched.len());
                let result = apply_all(
                    &self.spec.post,
                    &joined(&self.spec.joined_schema, left, right)?,
                )?;
                if result.num_rows() > 0 {
                    out.push(result);
                }
            }
        }
        Ok(())
    }

    fn on_watermark(&mut self, _watermark_ms: i64, _out: &mut Vec<RecordBatch>) -> Result<()> {
        Ok(())
    }

    fn late_rows(&self) -> u64 {
        0
    }

    /// Upserts table rows (in the table's schema) into the replica, or
    /// replaces the replica with them.
    /// The replica is not part of a checkpoint: the table keeps its own
    /// log, and a restarted pipeline loads the table's rows into every
    /// lookup join before any input, as at a first start.
    fn checkpoints(&self) -> bool {
        true
    }

    fn snapshot(&mut self) -> Result<Vec<RecordBatch>> {
        Ok(Vec::new())
    }

    fn restore(&mut self, _state: &[RecordBatch]) -> Result<()> {
        Ok(())
    }

    fn on_table_rows(&mut self, rows: &RecordBatch, replace: bool) -> Result<()> {
        if replace {
            self.keys = self.encoder.table();
            self.current.clear();
            self.rows = StoredBatches::default();
            self.live_rows = 0;
        }
        let n = rows.num_rows();
        if n == 0 {
            return Ok(());
        }
        let key_arrays: Vec<ArrayRef> = self
            .spec
            .table_key
            .iter()
            .map(|&c| Arc::clone(rows.column(c)))
            .collect();
        let keys = self.encoder.encode(&key_arrays)?;
        // Which rows pass the table-side stages, and their output rows.
        let index: ArrayRef = Arc::new(Int64Array::from_iter_values(0..n as i64));
        let (right, survivors) = apply_all_carrying(&self.spec.table_stages, rows, Some(index))?;
        let survivors = survivors.expect("carried");
        let survivors = survivors
            .as_any()
            .downcast_ref::<Int64Array>()
            .expect("an Int64 carry");
        let mut output_row: Vec<Option<u32>> = vec![None; n];
        for (out_row, &input_row) in survivors.values().iter().enumerate() {
            output_row[input_row as usize] = Some(out_row as u32);
        }
        let seq = self.rows.next_seq();
        // Rows of this batch still current (a later row of the same key
        // replaces an earlier one).
        let mut referenced = 0;
        for (row, output) in output_row.iter().enumerate() {
            let group = self.encoder.group_id(&mut self.keys, &keys, row);
            if group == self.current.len() {
                self.current.push(None);
            }
            match self.current[group].take() {
                Some((old, _)) if old == seq => referenced -= 1,
                Some((old, _)) => {
                    self.rows.release(old);
                    self.live_rows -= 1;
                }
                None => {}
            }
            if let Some(output) = output {
                self.current[group] = Some((seq, *output));
                referenced += 1;
            }
        }
        self.live_rows += referenced;
        self.rows.push(right, referenced, ());
        Ok(())
    }

    fn state_bytes(&self) -> usize {
        self.rows.bytes + self.keys.bytes() + self.current.capacity() * 16
    }
}
