//! Helpers for operators' checkpoint state ([`crate::Operator::snapshot`]).
//!
//! Aggregate state is written in DataFusion's *partial state* form: the
//! arrays `GroupsAccumulator::state` returns and `merge_batch` takes
//! back, the same hand-over a partial aggregate makes to a final one, so
//! every aggregate function DataFusion has (including first_value with
//! its ordering, COUNT(DISTINCT), approximate percentiles) restores
//! without code of ours per function. A snapshot batch has, per group:
//! `window_start` (BIGINT, `i64::MIN` for an unwindowed aggregate), the
//! key columns `key_<i>`, then each aggregate's state fields
//! `state_<aggregate>_<field>`, and for `EMIT CHANGES` the result last
//! emitted, `value_<aggregate>`.

use arrow::array::{Array, ArrayRef, Int64Array, RecordBatch};
use datafusion::logical_expr::{EmitTo, GroupsAccumulator};
use laminar_runtime::{Error, ErrorCode, Result};

use crate::groups::{GroupTable, KeyEncoder};

/// The columns of `batch` whose names start with `prefix`, in order.
pub(crate) fn columns_with_prefix(batch: &RecordBatch, prefix: &str) -> Vec<ArrayRef> {
    batch
        .schema()
        .fields()
        .iter()
        .zip(batch.columns())
        .filter(|(f, _)| f.name().starts_with(prefix))
        .map(|(_, c)| c.clone())
        .collect()
}

/// The window start a snapshot batch is for.
pub(crate) fn window_start(batch: &RecordBatch) -> Result<i64> {
    batch
        .column_by_name("window_start")
        .and_then(|c| c.as_any().downcast_ref::<Int64Array>())
        .filter(|c| !c.is_empty())
        .map(|c| c.value(0))
        .ok_or_else(|| corrupt("a snapshot batch without window_start"))
}

pub(crate) fn corrupt(detail: &str) -> Error {
    Error::new(
        ErrorCode::StorageCorrupt,
        format!("checkpoint: operator state does not fit this operator: {detail}"),
    )
}

/// One window's groups as a snapshot batch. `accumulators` are consumed
/// (DataFusion reads state only by taking it); callers rebuild them.
pub(crate) fn groups_batch<'a>(
    encoder: &KeyEncoder,
    start_ms: i64,
    groups: &GroupTable,
    accumulators: impl IntoIterator<Item = &'a mut dyn GroupsAccumulator>,
) -> Result<RecordBatch> {
    let ids = groups.all_ids();
    let mut names = vec!["window_start".to_string()];
    let mut columns: Vec<ArrayRef> = vec![std::sync::Arc::new(Int64Array::from_value(
        start_ms,
        ids.len(),
    ))];
    push_keys(encoder, groups, &ids, &mut names, &mut columns)?;
    for (j, accumulator) in accumulators.into_iter().enumerate() {
        for (f, state) in accumulator.state(EmitTo::All)?.into_iter().enumerate() {
            names.push(format!("state_{j}_{f}"));
            columns.push(state);
        }
    }
    crate::snapshot_batch(names, columns)
}

/// Interns a snapshot batch's keys into a new group table: group `i` is
/// row `i`, as it was.
pub(crate) fn restore_groups(encoder: &KeyEncoder, batch: &RecordBatch) -> Result<GroupTable> {
    let keys = columns_with_prefix(batch, "key_");
    let mut table = encoder.table();
    let encoded = encoder.encode(&keys)?;
    for row in 0..batch.num_rows() {
        if encoder.group_id(&mut table, &encoded, row) != row {
            return Err(corrupt("duplicate group keys"));
        }
    }
    Ok(table)
}

/// Loads aggregate `j`'s states of a snapshot batch into `accumulator`.
pub(crate) fn merge_states(
    accumulator: &mut dyn GroupsAccumulator,
    batch: &RecordBatch,
    j: usize,
) -> Result<()> {
    let states = columns_with_prefix(batch, &format!("state_{j}_"));
    if states.is_empty() && batch.num_rows() > 0 {
        return Err(corrupt("missing aggregate state"));
    }
    let ids: Vec<usize> = (0..batch.num_rows()).collect();
    accumulator.merge_batch(&states, &ids, batch.num_rows())?;
    Ok(())
}

/// Column `name` of a snapshot batch, as array type `T`.
pub(crate) fn column<T: Array + Clone + 'static>(batch: &RecordBatch, name: &str) -> Result<T> {
    batch
        .column_by_name(name)
        .and_then(|c| c.as_any().downcast_ref::<T>())
        .cloned()
        .ok_or_else(|| corrupt(name))
}

/// Appends the key columns of groups `ids` of `table`, named `key_<i>`.
pub(crate) fn push_keys(
    encoder: &KeyEncoder,
    table: &GroupTable,
    ids: &[u32],
    names: &mut Vec<String>,
    columns: &mut Vec<ArrayRef>,
) -> Result<()> {
    for (i, key) in encoder.key_columns(table, ids)?.into_iter().enumerate() {
        names.push(format!("key_{i}"));
        columns.push(key);
    }
    Ok(())
}
