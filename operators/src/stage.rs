//! Stateless stages: filters and projections over whole batches.
//!
//! These run DataFusion physical expressions, the interpreted path. A
//! filter keeps rows whose predicate is `true` (NULL drops the row, as in
//! SQL `WHERE`). `UNNEST` of a list column repeats each row per element,
//! with DataFusion's NULL and empty-list rules.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, BooleanArray, RecordBatch};
use arrow::compute::filter_record_batch;
use arrow::datatypes::SchemaRef;
use datafusion::physical_expr::PhysicalExpr;
use laminar_runtime::{Error, ErrorCode, Result};

use crate::{BatchTime, Operator};

/// One step of a stateless pipeline.
#[derive(Debug, Clone)]
pub enum Stage {
    /// Keeps the rows where the predicate is true.
    Filter(Arc<dyn PhysicalExpr>),
    /// Computes a new batch with `schema` from the expressions.
    Project {
        /// One expression per output column.
        exprs: Vec<Arc<dyn PhysicalExpr>>,
        /// The output schema.
        schema: SchemaRef,
    },
    /// `UNNEST` of one list column: each row becomes one row per element,
    /// the other columns repeated.
    Unnest {
        /// The list column, in the input.
        column: usize,
        /// Keep a NULL list as one row with a NULL element.
        keep_null: bool,
        /// Also turn an empty list into one NULL row.
        keep_empty: bool,
        /// For each output column, the input column it comes from.
        sources: Vec<usize>,
        /// The output schema.
        schema: SchemaRef,
    },
}

/// Unnests one list column: the output rows and, for each, the input row
/// it came from.
fn unnest(
    batch: &RecordBatch,
    column: usize,
    keep_null: bool,
    keep_empty: bool,
    sources: &[usize],
    schema: &SchemaRef,
) -> Result<(RecordBatch, arrow::array::UInt32Array)> {
    use arrow::array::{UInt32Builder, UInt64Builder};
    let list = batch.column(column);
    let (values, offsets): (ArrayRef, Vec<i64>) = match list.data_type() {
        arrow::datatypes::DataType::List(_) => {
            let l = list.as_list::<i32>();
            (
                Arc::clone(l.values()),
                l.offsets().iter().map(|&o| i64::from(o)).collect(),
            )
        }
        arrow::datatypes::DataType::LargeList(_) => {
            let l = list.as_list::<i64>();
            (Arc::clone(l.values()), l.offsets().to_vec())
        }
        other => {
            return Err(Error::new(
                ErrorCode::Execution,
                format!("UNNEST of {other} is not supported in streams"),
            ))
        }
    };
    let mut rows = UInt32Builder::new();
    let mut elements = UInt64Builder::new();
    for row in 0..batch.num_rows() {
        let (start, end) = (offsets[row], offsets[row + 1]);
        let null = list.is_null(row);
        if (null && keep_null) || (!null && start == end && keep_empty) {
            rows.append_value(row as u32);
            elements.append_null();
            continue;
        }
        if null {
            continue;
        }
        for element in start..end {
            rows.append_value(row as u32);
            elements.append_value(element as u64);
        }
    }
    let rows = rows.finish();
    let elements = elements.finish();
    let flattened = arrow::compute::take(&values, &elements, None)?;
    let columns = sources
        .iter()
        .map(|&source| {
            if source == column {
                Ok(Arc::clone(&flattened))
            } else {
                Ok(arrow::compute::take(batch.column(source), &rows, None)?)
            }
        })
        .collect::<Result<Vec<_>>>()?;
    let options = arrow::array::RecordBatchOptions::new().with_row_count(Some(rows.len()));
    Ok((
        RecordBatch::try_new_with_options(Arc::clone(schema), columns, &options)?,
        rows,
    ))
}

impl Stage {
    /// Applies the stage to a batch.
    pub fn apply(&self, batch: &RecordBatch) -> Result<RecordBatch> {
        match self {
            Stage::Filter(predicate) => match filter_mask(predicate, batch)? {
                None => Ok(batch.clone()),
                Some(mask) => Ok(filter_record_batch(batch, &mask)?),
            },
            Stage::Project { exprs, schema } => {
                let columns = evaluate_all(exprs, batch)?;
                let options =
                    arrow::array::RecordBatchOptions::new().with_row_count(Some(batch.num_rows()));
                Ok(RecordBatch::try_new_with_options(
                    Arc::clone(schema),
                    columns,
                    &options,
                )?)
            }
            Stage::Unnest {
                column,
                keep_null,
                keep_empty,
                sources,
                schema,
            } => Ok(unnest(batch, *column, *keep_null, *keep_empty, sources, schema)?.0),
        }
    }
}

/// The columns of a batch that `stages`' output depends on: what their
/// projections compute from, their filters' predicates, and the columns a
/// filter passes on; `None` when it may be every column (no stages, a last
/// stage that passes its input through, an `UNNEST`).
pub fn columns_read(stages: &[Stage]) -> Option<std::collections::HashSet<usize>> {
    use datafusion::physical_expr::utils::collect_columns;
    let reads = |expr: &Arc<dyn PhysicalExpr>| {
        collect_columns(expr)
            .into_iter()
            .map(|c| c.index())
            .collect::<Vec<_>>()
    };
    // What the stage after the current one reads of its output.
    let mut needed: Option<std::collections::HashSet<usize>> = None;
    for stage in stages.iter().rev() {
        needed = match stage {
            Stage::Project { exprs, .. } => Some(
                exprs
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| needed.as_ref().is_none_or(|n| n.contains(i)))
                    .flat_map(|(_, e)| reads(e))
                    .collect(),
            ),
            Stage::Filter(predicate) => needed.map(|mut n| {
                n.extend(reads(predicate));
                n
            }),
            Stage::Unnest { .. } => None,
        };
    }
    needed
}

/// Evaluates each expression over `batch` into an array of its rows.
pub fn evaluate_all(exprs: &[Arc<dyn PhysicalExpr>], batch: &RecordBatch) -> Result<Vec<ArrayRef>> {
    Ok(exprs
        .iter()
        .map(|e| e.evaluate(batch)?.into_array(batch.num_rows()))
        .collect::<datafusion::common::Result<Vec<_>>>()?)
}

/// The rows a predicate keeps; `None` when it keeps all of them.
pub(crate) fn filter_mask(
    predicate: &Arc<dyn PhysicalExpr>,
    batch: &RecordBatch,
) -> Result<Option<BooleanArray>> {
    let mask = predicate.evaluate(batch)?.into_array(batch.num_rows())?;
    let mask = mask.as_boolean_opt().ok_or_else(|| {
        Error::new(
            ErrorCode::Execution,
            format!(
                "filter predicate produced {}, not BOOLEAN",
                mask.data_type()
            ),
        )
    })?;
    if mask.null_count() == 0 && mask.true_count() == batch.num_rows() {
        return Ok(None);
    }
    Ok(Some(mask.clone()))
}

/// Runs a chain of stages over a batch, carrying `carry` (one value per
/// input row) along: filters drop its values with their rows, projections
/// leave it alone. Used for per-row facts the stages must not see, such as
/// the watermark each row arrived under.
pub fn apply_all_carrying(
    stages: &[Stage],
    batch: &RecordBatch,
    carry: Option<ArrayRef>,
) -> Result<(RecordBatch, Option<ArrayRef>)> {
    let Some(mut carry) = carry else {
        return Ok((apply_all(stages, batch)?, None));
    };
    debug_assert_eq!(carry.len(), batch.num_rows());
    let mut current = batch.clone();
    for stage in stages {
        if current.num_rows() == 0 {
            break;
        }
        match stage {
            Stage::Filter(predicate) => {
                if let Some(mask) = filter_mask(predicate, &current)? {
                    current = filter_record_batch(&current, &mask)?;
                    carry = arrow::compute::filter(&carry, &mask)?;
                }
            }
            Stage::Project { .. } => current = stage.apply(&current)?,
            Stage::Unnest {
                column,
                keep_null,
                keep_empty,
                sources,
                schema,
            } => {
                let (rows, from) =
                    unnest(&current, *column, *keep_null, *keep_empty, sources, schema)?;
                current = rows;
                carry = arrow::compute::take(&carry, &from, None)?;
            }
        }
    }
    Ok((current, Some(carry)))
}

/// Runs the stages after an operator over rows that all carry `weight`
/// (+1 insert, -1 retract) and appends the result, with its `_weight`
/// column last, in `output_schema`: how every changelog operator emits.
pub fn emit_weighted(
    post: &[Stage],
    rows: RecordBatch,
    weight: i64,
    output_schema: &SchemaRef,
    out: &mut Vec<RecordBatch>,
) -> Result<()> {
    if rows.num_rows() == 0 {
        return Ok(());
    }
    let weights = arrow::array::Int64Array::from_value(weight, rows.num_rows());
    emit_with_weights(post, rows, Arc::new(weights), output_schema, out)
}

/// [`emit_weighted`] for a batch's changes in one emission: the first
/// `retracted` rows retract (-1), the rest insert (+1). One batch of
/// arrays through the stages instead of two; a consumer reads the rows
/// in order, as it would read the two batches.
pub fn emit_changes(
    post: &[Stage],
    rows: RecordBatch,
    retracted: usize,
    output_schema: &SchemaRef,
    out: &mut Vec<RecordBatch>,
) -> Result<()> {
    let n = rows.num_rows();
    debug_assert!(retracted <= n);
    if n == 0 {
        return Ok(());
    }
    let weights = arrow::array::Int64Array::from_iter_values((0..n).map(|row| {
        if row < retracted {
            -1
        } else {
            1
        }
    }));
    emit_with_weights(post, rows, Arc::new(weights), output_schema, out)
}

fn emit_with_weights(
    post: &[Stage],
    rows: RecordBatch,
    weights: ArrayRef,
    output_schema: &SchemaRef,
    out: &mut Vec<RecordBatch>,
) -> Result<()> {
    let (result, weights) = apply_all_carrying(post, &rows, Some(weights))?;
    if result.num_rows() == 0 {
        return Ok(());
    }
    let mut columns = result.columns().to_vec();
    columns.push(weights.expect("carried"));
    out.push(
        RecordBatch::try_new(Arc::clone(output_schema), columns).map_err(|e| {
            Error::new(
                ErrorCode::Execution,
                format!("a changelog batch does not fit the stream's schema: {e}"),
            )
        })?,
    );
    Ok(())
}

/// Runs a chain of stages over a batch.
pub fn apply_all(stages: &[Stage], batch: &RecordBatch) -> Result<RecordBatch> {
    let mut current = batch.clone();
    for stage in stages {
        if current.num_rows() == 0 {
            break;
        }
        current = stage.apply(&current)?;
    }
    Ok(current)
}

/// A stream that is only filters and projections: every input batch
/// becomes (at most) one output batch at once. Time does not matter to it.
#[derive(Debug)]
pub struct Stateless {
    stages: Vec<Stage>,
    output_schema: SchemaRef,
}

impl Stateless {
    /// A stateless operator producing `output_schema`.
    pub fn new(stages: Vec<Stage>, output_schema: SchemaRef) -> Self {
        Self {
            stages,
            output_schema,
        }
    }
}

impl Operator for Stateless {
    fn on_batch(
        &mut self,
        batch: &RecordBatch,
        _time: BatchTime<'_>,
        out: &mut Vec<RecordBatch>,
    ) -> Result<()> {
        let result = apply_all(&self.stages, batch)?;
        if result.num_rows() > 0 {
            debug_assert_eq!(result.schema().fields(), self.output_schema.fields());
            out.push(result.with_schema(Arc::clone(&self.output_schema))?);
        }
        Ok(())
    }

    fn on_watermark(&mut self, _watermark_ms: i64, _out: &mut Vec<RecordBatch>) -> Result<()> {
        Ok(())
    }

    fn late_rows(&self) -> u64 {
        0
    }

    fn checkpoints(&self) -> bool {
        true
    }

    fn snapshot(&mut self) -> Result<Vec<RecordBatch>> {
        Ok(Vec::new())
    }

    fn restore(&mut self, _state: &[RecordBatch]) -> Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::datatypes::{DataType, Field, Schema};
    use datafusion::logical_expr::Operator as BinaryOp;
    use datafusion::physical_expr::expressions::{col, BinaryExpr};

    fn schema() -> Schema {
        Schema::new(
            ["a", "b", "c", "d"]
                .map(|name| Field::new(name, DataType::Int64, true))
                .to_vec(),
        )
    }

    fn column(name: &str) -> Arc<dyn PhysicalExpr> {
        col(name, &schema()).unwrap()
    }

    fn sum(left: &str, right: &str) -> Arc<dyn PhysicalExpr> {
        Arc::new(BinaryExpr::new(column(left), BinaryOp::Plus, column(right)))
    }

    fn project(exprs: Vec<Arc<dyn PhysicalExpr>>) -> Stage {
        let fields: Vec<Field> = (0..exprs.len())
            .map(|i| Field::new(format!("o{i}"), DataType::Int64, true))
            .collect();
        Stage::Project {
            exprs,
            schema: Arc::new(Schema::new(fields)),
        }
    }

    fn read(stages: &[Stage]) -> Option<Vec<usize>> {
        columns_read(stages).map(|set| {
            let mut columns: Vec<usize> = set.into_iter().collect();
            columns.sort_unstable();
            columns
        })
    }

    #[test]
    fn columns_read_follow_the_stages_backwards() {
        // Nothing, or a filter last: the rows go out as they are.
        assert_eq!(read(&[]), None);
        assert_eq!(read(&[Stage::Filter(column("b"))]), None);
        // A projection reads what its expressions read.
        assert_eq!(
            read(&[project(vec![column("a"), sum("c", "b")])]),
            Some(vec![0, 1, 2])
        );
        // A filter before it adds its predicate's columns.
        assert_eq!(
            read(&[Stage::Filter(column("d")), project(vec![column("a")])]),
            Some(vec![0, 3])
        );
        // A projection after another reads only some of its outputs: the
        // first projection's unread outputs cost nothing.
        assert_eq!(
            read(&[
                project(vec![column("a"), column("b"), sum("c", "d")]),
                project(vec![column("c")])
            ]),
            Some(vec![2, 3])
        );
    }
}
