//! The joined rows of a probe's pairs: which columns are gathered, and the
//! stand-ins for the others.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, RecordBatch};
use arrow::datatypes::SchemaRef;
use laminar_runtime::Result;

use super::IntervalJoinSpec;
use crate::join::JoinMode;

/// The most joined rows gathered into one batch.
pub(super) const PAIRS_PER_BATCH: usize = 8192;

/// Which columns of the joined rows a probe gathers: those the pair filter
/// or the post stages read. The others are stood in for by slices of one
/// all-NULL array each (kept, grown as needed), which cost no copy.
pub(super) struct PairsShape {
    /// Per side, the side's columns read, in order.
    pub read: [Vec<usize>; 2],
    /// Per joined column, its stand-in when it is not read.
    unread: Vec<Option<ArrayRef>>,
    /// The left side's columns in the joined rows.
    left_width: usize,
    /// The joined schema, columns not read made nullable.
    schema: SchemaRef,
}

impl PairsShape {
    pub fn new(spec: &IntervalJoinSpec) -> Self {
        let left_width = spec.left.schema.fields().len();
        let width = spec.joined_schema.fields().len();
        let mut read = match spec.mode {
            JoinMode::Pairs => crate::stage::columns_read(&spec.post),
            // The output is the left rows as they are; pairs only decide.
            JoinMode::LeftSemi | JoinMode::LeftAnti => Some(Default::default()),
        };
        if let (Some(read), Some(filter)) = (read.as_mut(), &spec.filter) {
            read.extend(
                datafusion::physical_expr::utils::collect_columns(filter)
                    .iter()
                    .map(|c| c.index()),
            );
        }
        let is_read = |j: usize| read.as_ref().is_none_or(|r| r.contains(&j));
        let fields: Vec<arrow::datatypes::FieldRef> = spec
            .joined_schema
            .fields()
            .iter()
            .enumerate()
            .map(|(j, f)| {
                if is_read(j) {
                    Arc::clone(f)
                } else {
                    Arc::new(f.as_ref().clone().with_nullable(true))
                }
            })
            .collect();
        Self {
            read: [
                (0..left_width).filter(|&j| is_read(j)).collect(),
                (left_width..width)
                    .filter(|&j| is_read(j))
                    .map(|j| j - left_width)
                    .collect(),
            ],
            unread: (0..width)
                .map(|j| {
                    (!is_read(j)).then(|| arrow::array::new_null_array(fields[j].data_type(), 0))
                })
                .collect(),
            left_width,
            schema: Arc::new(arrow::datatypes::Schema::new_with_metadata(
                fields,
                spec.joined_schema.metadata().clone(),
            )),
        }
    }

    /// The joined rows of `rows` pairs from the read columns of each side.
    pub fn batch(
        &mut self,
        left: Vec<ArrayRef>,
        right: Vec<ArrayRef>,
        rows: usize,
    ) -> Result<RecordBatch> {
        let (mut left, mut right) = (left.into_iter(), right.into_iter());
        let left_width = self.left_width;
        let columns = self
            .unread
            .iter_mut()
            .enumerate()
            .map(|(j, stand_in)| match stand_in {
                None => (if j < left_width {
                    left.next()
                } else {
                    right.next()
                })
                .expect("one array per read column"),
                Some(nulls) => {
                    if nulls.len() < rows {
                        *nulls = arrow::array::new_null_array(
                            nulls.data_type(),
                            rows.max(2 * nulls.len()).min(PAIRS_PER_BATCH.max(rows)),
                        );
                    }
                    nulls.slice(0, rows)
                }
            })
            .collect();
        Ok(RecordBatch::try_new(Arc::clone(&self.schema), columns)?)
    }

    pub fn bytes(&self) -> usize {
        self.unread
            .iter()
            .flatten()
            .map(|a| a.get_array_memory_size())
            .sum()
    }
}
