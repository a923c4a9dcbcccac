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
    /// Per side, aligned with `read`: the other side's column holding the
    /// same value in every pair, where there is one (see [`twins`]).
    pub twin: [Vec<Option<usize>>; 2],
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
        let read: [Vec<usize>; 2] = [
            (0..left_width).filter(|&j| is_read(j)).collect(),
            (left_width..width)
                .filter(|&j| is_read(j))
                .map(|j| j - left_width)
                .collect(),
        ];
        let twin = [0, 1].map(|side| {
            let pairs = twins(spec, side);
            read[side]
                .iter()
                .map(|c| {
                    pairs
                        .iter()
                        .find(|(own, _)| own == c)
                        .map(|&(_, other)| other)
                })
                .collect()
        });
        Self {
            read,
            twin,
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

    /// A stored side's read columns from the probe's rows: those with a
    /// twin taken at the probe rows (`twins`, in order of `read`), the
    /// others gathered from stored rows (`gathered`, likewise).
    pub fn stored_columns(
        &self,
        stored: usize,
        gathered: Vec<ArrayRef>,
        twins: Vec<ArrayRef>,
    ) -> Vec<ArrayRef> {
        let (mut gathered, mut twins) = (gathered.into_iter(), twins.into_iter());
        self.twin[stored]
            .iter()
            .map(|twin| {
                match twin {
                    Some(_) => twins.next(),
                    None => gathered.next(),
                }
                .expect("one array per read column")
            })
            .collect()
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

/// The columns of `side` whose value in every joined pair is that of a
/// column of the other side: `(own column, other side's column)`. Both
/// are the same key of the join, as plain columns of one type: a pair's
/// keys are equal in the key encoder's bytes, which tell values of a type
/// apart exactly, so either side's value is the pair's. A probe then takes
/// such a column from its own rows (one batch) instead of gathering it
/// from the stored rows (many batches), which costs less for strings.
fn twins(spec: &IntervalJoinSpec, side: usize) -> Vec<(usize, usize)> {
    use datafusion::physical_expr::expressions::Column;
    use datafusion::physical_expr::PhysicalExpr;
    let sides = [&spec.left, &spec.right];
    let (own, other) = (sides[side], sides[1 - side]);
    let column =
        |key: &Arc<dyn PhysicalExpr>| key.as_ref().downcast_ref::<Column>().map(Column::index);
    own.keys
        .iter()
        .zip(&other.keys)
        .filter_map(|(a, b)| {
            let (a, b) = (column(a)?, column(b)?);
            let same_type = own.schema.fields().get(a)?.data_type()
                == other.schema.fields().get(b)?.data_type();
            same_type.then_some((a, b))
        })
        .collect()
}
