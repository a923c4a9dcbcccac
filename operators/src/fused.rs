//! Fused aggregation: a window or session aggregate whose filter,
//! argument expressions and accumulator updates run as one compiled loop
//! over the source batch, reading each row once.
//!
//! The planner builds a [`FusedAggregate`] when every aggregate of a
//! windowed `GROUP BY` is a plain `COUNT`/`SUM`/`MIN`/`MAX`/`AVG` over
//! `BIGINT` or `DOUBLE` that it can compile, the `GROUP BY` keys and the
//! window's time are source columns, and at most one `WHERE` lies
//! between the aggregate and the source. The compiled loop itself lives
//! in `laminar-sql` (it needs the JIT) behind the [`FusedUpdate`] trait.
//!
//! The state is [`FusedAccumulator`]s: plain vectors the compiled loop
//! writes, which are also ordinary DataFusion `GroupsAccumulator`s (the
//! interpreted path updates them while the kernel compiles, and they
//! snapshot and restore in DataFusion's partial-state layout, so a
//! checkpoint taken with the JIT on restores with it off and back).
//! Session windows keep one group per open session and merge two groups
//! when a row bridges their sessions ([`FusedAccumulator::merge_group`]),
//! with the JIT on or off ([`crate::session_aggregate`]).
//! Each function keeps DataFusion's own rules, bit for bit: `SUM` and
//! `AVG` add in row order with wrapping integer addition, `MIN`/`MAX`
//! start at the type's extreme and replace on `<`/`>` or an unordered
//! (NaN) comparison, as `partial_cmp` does there.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, BooleanArray, Float64Array, Int64Array, UInt64Array};
use arrow::buffer::{BooleanBuffer, NullBuffer};
use arrow::datatypes::{
    DataType, Float64Type, Int64Type, TimeUnit, TimestampMicrosecondType, TimestampMillisecondType,
    TimestampNanosecondType, TimestampSecondType, UInt64Type,
};
use datafusion::common::{DataFusionError, Result as DfResult};
use datafusion::logical_expr::{EmitTo, GroupsAccumulator};
use datafusion::physical_expr::PhysicalExpr;

use crate::groups::{BatchKeys, GroupTable, KeyEncoder};

/// An aggregate function the fused path computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FusedFunction {
    Count,
    Sum,
    Min,
    Max,
    Avg,
}

/// The type a fused aggregate accumulates (its argument's type; `COUNT`
/// counts any type and accumulates `BIGINT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FusedType {
    Int64,
    Float64,
}

/// One aggregate of a fused plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FusedAggregateKind {
    pub function: FusedFunction,
    pub ty: FusedType,
}

/// The compiled half of a fused aggregate, supplied by the JIT.
pub trait FusedUpdate: Send + Sync + std::fmt::Debug {
    /// Whether the compiled loop is ready; until then the operator runs
    /// its interpreted stages.
    fn is_ready(&self) -> bool;

    /// Adds the rows of `batch` that `selection` keeps (every row when
    /// `None`; a selection has no NULLs) to `accumulators`, row `i` to
    /// group `group_ids[i]`. Unselected rows carry group 0, and every
    /// group named exists in every accumulator
    /// ([`FusedAccumulator::ensure_groups`]); an implementation checks
    /// this before writing. Only called once [`FusedUpdate::is_ready`].
    fn update(
        &self,
        batch: &arrow::array::RecordBatch,
        selection: Option<&BooleanArray>,
        group_ids: &[usize],
        accumulators: &mut [FusedAccumulator],
    ) -> laminar_runtime::Result<()>;

    /// Whether the compiled loop evaluates the `WHERE` and looks up each
    /// row's group itself ([`FusedUpdate::update_looking_up`]); only a
    /// plan with one non-null `VARCHAR` or `BIGINT` key and a `WHERE`
    /// that compiles (or none) is built so. Asked once the kernel is ready.
    fn looks_up_groups(&self) -> bool;

    /// Adds each row of `batch` that `selection` keeps (every row when
    /// `None`) and the `WHERE` passes to its key's group in `groups`,
    /// inserting keys not seen before (and giving `accumulators` a state
    /// for them). Only called when [`FusedUpdate::looks_up_groups`].
    fn update_looking_up(
        &self,
        batch: &arrow::array::RecordBatch,
        selection: Option<&BooleanArray>,
        groups: GroupsOf<'_, '_>,
        accumulators: &mut [FusedAccumulator],
    ) -> laminar_runtime::Result<()>;

    /// `compiled`, `compiling` or `interpreted (<why>)`, for `EXPLAIN`.
    fn state(&self) -> String;
}

/// A window's group table and one batch's keys, for a kernel that looks
/// groups up itself ([`crate::fused_lookup`]).
pub struct GroupsOf<'a, 'k> {
    pub encoder: &'a KeyEncoder,
    pub table: &'a mut GroupTable,
    pub keys: &'a BatchKeys<'k>,
}

/// A window, session or changelog aggregate's fused form: everything
/// over the *source* batch.
#[derive(Debug, Clone)]
pub struct FusedAggregate {
    /// The `WHERE` between source and aggregate, if any.
    pub predicate: Option<Arc<dyn PhysicalExpr>>,
    /// Source column of each `GROUP BY` key other than the window.
    pub key_columns: Vec<usize>,
    /// Source column of the window's event time; `None` for a changelog
    /// aggregate without a window (`GROUP BY` keys alone, `EMIT CHANGES`).
    pub time_column: Option<usize>,
    /// What each aggregate accumulates (in the aggregate's order).
    pub aggregates: Vec<FusedAggregateKind>,
    /// The compiled loop.
    pub update: Arc<dyn FusedUpdate>,
}

/// One aggregate's state for every group of a window, as two vectors of
/// 64-bit words the compiled loop updates in place:
///
/// | function | `primary[g]` | `secondary[g]` |
/// |---|---|---|
/// | `COUNT` | count (`i64`) | unused |
/// | `SUM` | sum (`i64`, or `f64` bits) | 1 once a non-NULL value was added |
/// | `MIN`/`MAX` | current value (starts at `i64::MAX`/`f64::MAX`, `MIN`s for `MAX`) | 1 once a value was seen |
/// | `AVG` | sum (`f64` bits) | count (`u64`) |
#[derive(Debug, Clone)]
pub struct FusedAccumulator {
    kind: FusedAggregateKind,
    primary: Vec<u64>,
    secondary: Vec<u64>,
    /// For `MIN`/`MAX` of a timestamp (folded sessions): the results'
    /// type. Its values are `i64`s and accumulate as a `BIGINT`'s.
    timestamp_type: Option<DataType>,
}

impl FusedAccumulator {
    /// Empty state for `kind` (`AVG` always accumulates `DOUBLE`).
    pub fn new(kind: FusedAggregateKind) -> Self {
        let kind = match kind.function {
            FusedFunction::Avg => FusedAggregateKind {
                function: FusedFunction::Avg,
                ty: FusedType::Float64,
            },
            _ => kind,
        };
        Self {
            kind,
            primary: Vec::new(),
            secondary: Vec::new(),
            timestamp_type: None,
        }
    }

    /// Empty state for `kind` whose results are of `output` type: a
    /// timestamp for `MIN`/`MAX` of a timestamp (accumulated as `BIGINT`),
    /// else the accumulated type itself.
    pub fn with_output(kind: FusedAggregateKind, output: &DataType) -> Self {
        let mut accumulator = Self::new(kind);
        let extreme = matches!(kind.function, FusedFunction::Min | FusedFunction::Max);
        if extreme && kind.ty == FusedType::Int64 && matches!(output, DataType::Timestamp(..)) {
            accumulator.timestamp_type = Some(output.clone());
        }
        accumulator
    }

    pub fn kind(&self) -> FusedAggregateKind {
        self.kind
    }

    /// The value a group starts from, as DataFusion's accumulators start.
    fn start(&self) -> u64 {
        match (self.kind.function, self.kind.ty) {
            (FusedFunction::Min, FusedType::Int64) => i64::MAX as u64,
            (FusedFunction::Max, FusedType::Int64) => i64::MIN as u64,
            (FusedFunction::Min, FusedType::Float64) => f64::MAX.to_bits(),
            (FusedFunction::Max, FusedType::Float64) => f64::MIN.to_bits(),
            // 0 and 0.0 have the same bits.
            _ => 0,
        }
    }

    /// Makes room for groups `0..groups`.
    pub fn ensure_groups(&mut self, groups: usize) {
        if self.primary.len() < groups {
            let start = self.start();
            self.primary.resize(groups, start);
            self.secondary.resize(groups, 0);
        }
    }

    /// Groups held.
    pub fn groups(&self) -> usize {
        self.primary.len()
    }

    /// The two state vectors, for the compiled loop.
    pub fn state_pointers(&mut self) -> [*mut u64; 2] {
        [self.primary.as_mut_ptr(), self.secondary.as_mut_ptr()]
    }

    /// Adds one valid value to group `g` (the interpreted update, the
    /// compiled loop's reference).
    #[inline]
    fn add(&mut self, g: usize, bits: u64) {
        let FusedAggregateKind { function, ty } = self.kind;
        self.add_as(function, ty, g, bits);
    }

    /// [`FusedAccumulator::add`] with the kind spelled out, so that a loop
    /// calling it with constants compiles to that kind's code alone.
    #[inline(always)]
    fn add_as(&mut self, function: FusedFunction, ty: FusedType, g: usize, bits: u64) {
        let current = self.primary[g];
        self.primary[g] = match (function, ty) {
            (FusedFunction::Count, _) => current.wrapping_add(1),
            (FusedFunction::Sum, FusedType::Int64) => current.wrapping_add(bits),
            (FusedFunction::Sum | FusedFunction::Avg, FusedType::Float64) => {
                (f64::from_bits(current) + f64::from_bits(bits)).to_bits()
            }
            (FusedFunction::Min, FusedType::Int64) => (current as i64).min(bits as i64) as u64,
            (FusedFunction::Max, FusedType::Int64) => (current as i64).max(bits as i64) as u64,
            (FusedFunction::Min, FusedType::Float64) => {
                float_replace(current, bits, std::cmp::Ordering::Less)
            }
            (FusedFunction::Max, FusedType::Float64) => {
                float_replace(current, bits, std::cmp::Ordering::Greater)
            }
            (FusedFunction::Avg, FusedType::Int64) => {
                unreachable!("AVG accumulates DOUBLE (`new` makes it so)")
            }
        };
        self.secondary[g] = match function {
            FusedFunction::Avg => self.secondary[g] + 1,
            _ => 1,
        };
    }

    /// Adds the kept rows (every row without a mask) of one batch, row
    /// `i` to group `groups[i]`, its value's bits in `bits` (none for
    /// `COUNT`).
    #[inline(always)]
    fn add_rows(
        &mut self,
        function: FusedFunction,
        ty: FusedType,
        (groups, bits, keep): (&[usize], &[u64], Option<&BooleanBuffer>),
    ) {
        let value = |row: usize| bits.get(row).copied().unwrap_or(0);
        match keep {
            None => {
                for (row, &g) in groups.iter().enumerate() {
                    self.add_as(function, ty, g, value(row));
                }
            }
            Some(keep) => {
                for row in keep.set_indices() {
                    self.add_as(function, ty, groups[row], value(row));
                }
            }
        }
    }

    /// Empties group `g` (a session slot taken anew).
    pub fn reset_group(&mut self, g: usize) {
        self.primary[g] = self.start();
        self.secondary[g] = 0;
    }

    /// Folds group `from`'s state into group `into` (two sessions that a
    /// row bridged), as DataFusion merges two partial states: counts and
    /// sums add, `MIN`/`MAX` compare. A group that saw no value adds
    /// nothing (its `MIN`/`MAX` is only the starting extreme).
    pub fn merge_group(&mut self, into: usize, from: usize) {
        let (value, seen) = (self.primary[from], self.secondary[from]);
        match self.kind.function {
            FusedFunction::Count => {
                self.primary[into] = self.primary[into].wrapping_add(value);
            }
            _ if seen == 0 => {}
            FusedFunction::Avg => {
                let sum = f64::from_bits(self.primary[into]) + f64::from_bits(value);
                self.primary[into] = sum.to_bits();
                self.secondary[into] += seen;
            }
            FusedFunction::Sum | FusedFunction::Min | FusedFunction::Max => self.add(into, value),
        }
    }

    /// The results of groups `groups`, in that order (sessions closing).
    pub fn evaluate_groups(&self, groups: &[usize]) -> ArrayRef {
        let (primary, secondary) = self.gather(groups);
        self.results(primary, secondary)
    }

    /// DataFusion's partial state of groups `groups`, in that order.
    pub fn state_groups(&self, groups: &[usize]) -> Vec<ArrayRef> {
        let (primary, secondary) = self.gather(groups);
        self.partial_state(primary, secondary)
    }

    fn gather(&self, groups: &[usize]) -> (Vec<u64>, Vec<u64>) {
        (
            groups.iter().map(|&g| self.primary[g]).collect(),
            groups.iter().map(|&g| self.secondary[g]).collect(),
        )
    }

    /// Takes the groups `emit_to` names off the front.
    fn take(&mut self, emit_to: EmitTo) -> (Vec<u64>, Vec<u64>) {
        match emit_to {
            EmitTo::All => (
                std::mem::take(&mut self.primary),
                std::mem::take(&mut self.secondary),
            ),
            EmitTo::First(n) => {
                let rest_primary = self.primary.split_off(n);
                let rest_secondary = self.secondary.split_off(n);
                (
                    std::mem::replace(&mut self.primary, rest_primary),
                    std::mem::replace(&mut self.secondary, rest_secondary),
                )
            }
        }
    }

    /// The aggregate's results from the two state vectors.
    fn results(&self, primary: Vec<u64>, secondary: Vec<u64>) -> ArrayRef {
        match self.kind.function {
            FusedFunction::Count => Arc::new(Int64Array::from_iter_values(
                primary.into_iter().map(|c| c as i64),
            )),
            FusedFunction::Avg => {
                let nulls = nulls_where_zero(&secondary);
                let averages = primary
                    .iter()
                    .zip(&secondary)
                    .map(|(&sum, &count)| f64::from_bits(sum) / count as f64)
                    .collect();
                Arc::new(Float64Array::new(averages, nulls))
            }
            _ => self.values_array(primary, &secondary),
        }
    }

    /// DataFusion's partial state from the two state vectors.
    fn partial_state(&self, primary: Vec<u64>, secondary: Vec<u64>) -> Vec<ArrayRef> {
        match self.kind.function {
            FusedFunction::Count => vec![Arc::new(Int64Array::from_iter_values(
                primary.into_iter().map(|c| c as i64),
            ))],
            FusedFunction::Avg => {
                let nulls = nulls_where_zero(&secondary);
                // NULL where nothing was added, in both fields, as
                // DataFusion writes it.
                vec![
                    Arc::new(UInt64Array::new(secondary.into(), nulls.clone())),
                    Arc::new(Float64Array::new(
                        primary.into_iter().map(f64::from_bits).collect(),
                        nulls,
                    )),
                ]
            }
            _ => vec![self.values_array(primary, &secondary)],
        }
    }

    /// Values as an array of the accumulated type, NULL where `seen` is 0.
    fn values_array(&self, values: Vec<u64>, seen: &[u64]) -> ArrayRef {
        let nulls = nulls_where_zero(seen);
        match self.kind.ty {
            FusedType::Int64 => {
                let values = Int64Array::new(values.into_iter().map(|v| v as i64).collect(), nulls);
                match &self.timestamp_type {
                    Some(DataType::Timestamp(unit, zone)) => as_timestamps(values, *unit, zone),
                    _ => Arc::new(values),
                }
            }
            FusedType::Float64 => Arc::new(Float64Array::new(
                values.into_iter().map(f64::from_bits).collect(),
                nulls,
            )),
        }
    }
}

/// DataFusion's float `MIN`/`MAX` step: the new value replaces the current
/// one when it compares `wanted`, or when either is NaN.
#[inline]
fn float_replace(current: u64, new: u64, wanted: std::cmp::Ordering) -> u64 {
    match f64::from_bits(new).partial_cmp(&f64::from_bits(current)) {
        Some(order) if order != wanted => current,
        _ => new,
    }
}

/// `i64` values as a timestamp array of `unit` and time zone `zone`.
fn as_timestamps(values: Int64Array, unit: TimeUnit, zone: &Option<Arc<str>>) -> ArrayRef {
    let zone = zone.clone();
    match unit {
        TimeUnit::Second => Arc::new(
            values
                .reinterpret_cast::<TimestampSecondType>()
                .with_timezone_opt(zone),
        ),
        TimeUnit::Millisecond => Arc::new(
            values
                .reinterpret_cast::<TimestampMillisecondType>()
                .with_timezone_opt(zone),
        ),
        TimeUnit::Microsecond => Arc::new(
            values
                .reinterpret_cast::<TimestampMicrosecondType>()
                .with_timezone_opt(zone),
        ),
        TimeUnit::Nanosecond => Arc::new(
            values
                .reinterpret_cast::<TimestampNanosecondType>()
                .with_timezone_opt(zone),
        ),
    }
}

/// The `i64` values of a `BIGINT` or timestamp array, as 64-bit words.
fn i64_values(array: &ArrayRef) -> Option<&[u64]> {
    let values: &arrow::buffer::ScalarBuffer<i64> = match array.data_type() {
        DataType::Int64 => array.as_primitive::<Int64Type>().values(),
        DataType::Timestamp(TimeUnit::Second, _) => {
            array.as_primitive::<TimestampSecondType>().values()
        }
        DataType::Timestamp(TimeUnit::Millisecond, _) => {
            array.as_primitive::<TimestampMillisecondType>().values()
        }
        DataType::Timestamp(TimeUnit::Microsecond, _) => {
            array.as_primitive::<TimestampMicrosecondType>().values()
        }
        DataType::Timestamp(TimeUnit::Nanosecond, _) => {
            array.as_primitive::<TimestampNanosecondType>().values()
        }
        _ => return None,
    };
    Some(values.inner().typed_data::<u64>())
}

/// What an update reads of its argument: the value bits of a `BIGINT`
/// (or timestamp) or `DOUBLE` array, or nothing (`COUNT` reads only
/// validity, and its argument may be of any type).
enum Values<'a> {
    Validity,
    /// An `i64`'s bits.
    Int64(&'a [u64]),
    Float64(&'a Float64Array),
}

impl<'a> Values<'a> {
    fn of(values: &'a ArrayRef, kind: FusedAggregateKind) -> DfResult<Self> {
        let wrong = || {
            DataFusionError::Internal(format!(
                "fused aggregate over {:?} got {}",
                kind.ty,
                values.data_type()
            ))
        };
        Ok(match (kind.function, kind.ty) {
            (FusedFunction::Count, _) => Values::Validity,
            (_, FusedType::Int64) => Values::Int64(i64_values(values).ok_or_else(wrong)?),
            (_, FusedType::Float64) => {
                Values::Float64(values.as_primitive_opt::<Float64Type>().ok_or_else(wrong)?)
            }
        })
    }

    /// The values' 64-bit words (an `i64`'s or an `f64`'s bits; none for
    /// `COUNT`, which reads only validity).
    fn words(&self) -> &'a [u64] {
        match self {
            Values::Validity => &[],
            Values::Int64(words) => words,
            Values::Float64(a) => a.values().inner().typed_data::<u64>(),
        }
    }
}

/// NULL where `seen` (a flag or a count) is 0; `None` when nothing is.
fn nulls_where_zero(seen: &[u64]) -> Option<NullBuffer> {
    let nulls = NullBuffer::from_iter(seen.iter().map(|&s| s != 0));
    (nulls.null_count() > 0).then_some(nulls)
}

impl GroupsAccumulator for FusedAccumulator {
    /// One pass per batch: the rows to add (valid, and kept by the filter)
    /// as one mask, and a loop compiled for this aggregate's kind.
    fn update_batch(
        &mut self,
        values: &[ArrayRef],
        group_indices: &[usize],
        opt_filter: Option<&BooleanArray>,
        total_num_groups: usize,
    ) -> DfResult<()> {
        self.ensure_groups(total_num_groups);
        let array = &values[0];
        let bits = Values::of(array, self.kind)?.words();
        let filter = opt_filter.map(|f| match f.nulls() {
            Some(nulls) => f.values() & nulls.inner(),
            None => f.values().clone(),
        });
        let keep = match (array.logical_nulls(), filter) {
            (None, None) => None,
            (Some(valid), None) => Some(valid.into_inner()),
            (None, Some(filter)) => Some(filter),
            (Some(valid), Some(filter)) => Some(valid.inner() & &filter),
        };
        use FusedFunction as F;
        use FusedType as T;
        let rows = (group_indices, bits, keep.as_ref());
        match (self.kind.function, self.kind.ty) {
            (F::Count, T::Int64) => self.add_rows(F::Count, T::Int64, rows),
            (F::Count, T::Float64) => self.add_rows(F::Count, T::Float64, rows),
            (F::Sum, T::Int64) => self.add_rows(F::Sum, T::Int64, rows),
            (F::Sum, T::Float64) => self.add_rows(F::Sum, T::Float64, rows),
            (F::Min, T::Int64) => self.add_rows(F::Min, T::Int64, rows),
            (F::Min, T::Float64) => self.add_rows(F::Min, T::Float64, rows),
            (F::Max, T::Int64) => self.add_rows(F::Max, T::Int64, rows),
            (F::Max, T::Float64) => self.add_rows(F::Max, T::Float64, rows),
            (F::Avg, ty) => self.add_rows(F::Avg, ty, rows),
        }
        Ok(())
    }

    fn evaluate(&mut self, emit_to: EmitTo) -> DfResult<ArrayRef> {
        let (primary, secondary) = self.take(emit_to);
        Ok(self.results(primary, secondary))
    }

    /// DataFusion's partial state: `COUNT` [count], `SUM`/`MIN`/`MAX`
    /// [value], `AVG` [count: UInt64, sum: Float64].
    fn state(&mut self, emit_to: EmitTo) -> DfResult<Vec<ArrayRef>> {
        let (primary, secondary) = self.take(emit_to);
        Ok(self.partial_state(primary, secondary))
    }

    fn merge_batch(
        &mut self,
        values: &[ArrayRef],
        group_indices: &[usize],
        total_num_groups: usize,
    ) -> DfResult<()> {
        self.ensure_groups(total_num_groups);
        match self.kind.function {
            FusedFunction::Count => {
                let counts = values[0].as_primitive_opt::<Int64Type>().ok_or_else(|| {
                    DataFusionError::Internal("COUNT state is not BIGINT".to_string())
                })?;
                for (row, &g) in group_indices.iter().enumerate() {
                    if counts.is_valid(row) {
                        self.primary[g] = self.primary[g].wrapping_add(counts.value(row) as u64);
                    }
                }
            }
            FusedFunction::Avg => {
                let (Some(counts), Some(sums)) = (
                    values[0].as_primitive_opt::<UInt64Type>(),
                    values
                        .get(1)
                        .and_then(|s| s.as_primitive_opt::<Float64Type>()),
                ) else {
                    return Err(DataFusionError::Internal(
                        "AVG state is not [UInt64, Float64]".to_string(),
                    ));
                };
                for (row, &g) in group_indices.iter().enumerate() {
                    if counts.is_valid(row) {
                        self.secondary[g] += counts.value(row);
                    }
                    if sums.is_valid(row) {
                        let sum = f64::from_bits(self.primary[g]) + sums.value(row);
                        self.primary[g] = sum.to_bits();
                    }
                }
            }
            // A partial SUM/MIN/MAX merges as one more value.
            _ => self.update_batch(values, group_indices, None, total_num_groups)?,
        }
        Ok(())
    }

    /// Each row as a group of its own, in the partial-state layout.
    fn convert_to_state(
        &self,
        values: &[ArrayRef],
        opt_filter: Option<&BooleanArray>,
    ) -> DfResult<Vec<ArrayRef>> {
        let rows = values[0].len();
        let mut each = FusedAccumulator::new(self.kind);
        let ids: Vec<usize> = (0..rows).collect();
        each.update_batch(values, &ids, opt_filter, rows)?;
        each.state(EmitTo::All)
    }

    fn size(&self) -> usize {
        (self.primary.capacity() + self.secondary.capacity()) * std::mem::size_of::<u64>()
    }
}

/// `mask` with NULL read as false, as `WHERE` reads it.
pub fn selection_of(mask: BooleanArray) -> BooleanArray {
    match mask.nulls() {
        Some(nulls) if nulls.null_count() > 0 => {
            BooleanArray::new(mask.values() & nulls.inner(), None)
        }
        _ => BooleanArray::new(mask.values().clone(), None),
    }
}

/// Whether `data_type` is one a fused aggregate accumulates.
pub fn fused_type(data_type: &DataType) -> Option<FusedType> {
    match data_type {
        DataType::Int64 => Some(FusedType::Int64),
        DataType::Float64 => Some(FusedType::Float64),
        _ => None,
    }
}
