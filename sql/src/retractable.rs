//! `MIN` and `MAX` over a changelog: aggregates that take retractions.
//!
//! Over an `EMIT CHANGES` stream a row may be retracted (`_weight` -1)
//! after it was counted, so the minimum must know what else it has seen.
//! The changelog rewrite (`planner::weigh_changelog_aggregates`) turns
//! `MIN(x)` into `__laminar_min(x, _weight)`, whose state is the multiset
//! of values with their net weights; the answer is the least (greatest)
//! value whose net weight is positive, NULL when none is. State is one
//! entry per distinct live value of the group. The partial state (what
//! the changelog aggregate keeps between batches) is two lists: the
//! values and their net weights.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, Int64Array};
use arrow::datatypes::{DataType, Field, FieldRef, Int64Type};
use datafusion::common::{Result, ScalarValue};
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::{Accumulator, AggregateUDFImpl, Signature, Volatility};

/// Names of the retractable aggregates.
pub const RETRACTABLE_MIN: &str = "__laminar_min";
pub const RETRACTABLE_MAX: &str = "__laminar_max";

/// `__laminar_min(x, weight)` / `__laminar_max(x, weight)`.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct RetractableExtreme {
    max: bool,
    signature: Signature,
}

impl RetractableExtreme {
    pub fn new(max: bool) -> Self {
        Self {
            max,
            signature: Signature::any(2, Volatility::Immutable),
        }
    }
}

impl AggregateUDFImpl for RetractableExtreme {
    fn name(&self) -> &str {
        if self.max {
            RETRACTABLE_MAX
        } else {
            RETRACTABLE_MIN
        }
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        Ok(arg_types[0].clone())
    }

    fn accumulator(&self, args: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        Ok(Box::new(ExtremeAccumulator {
            max: self.max,
            data_type: args.return_field.data_type().clone(),
            weights: HashMap::new(),
        }))
    }

    fn state_fields(&self, args: StateFieldsArgs) -> Result<Vec<FieldRef>> {
        let value = Field::new_list_field(args.return_field.data_type().clone(), true);
        let weight = Field::new_list_field(DataType::Int64, true);
        Ok(vec![
            Arc::new(Field::new(
                format!("{}[values]", args.name),
                DataType::List(Arc::new(value)),
                true,
            )),
            Arc::new(Field::new(
                format!("{}[weights]", args.name),
                DataType::List(Arc::new(weight)),
                true,
            )),
        ])
    }
}

#[derive(Debug)]
struct ExtremeAccumulator {
    max: bool,
    data_type: DataType,
    /// Net weight of each value seen (entries at zero are removed).
    weights: HashMap<ScalarValue, i64>,
}

impl ExtremeAccumulator {
    fn add(&mut self, value: ScalarValue, weight: i64) {
        use std::collections::hash_map::Entry;
        match self.weights.entry(value) {
            Entry::Occupied(mut entry) => {
                *entry.get_mut() += weight;
                if *entry.get() == 0 {
                    entry.remove();
                }
            }
            Entry::Vacant(entry) => {
                if weight != 0 {
                    entry.insert(weight);
                }
            }
        }
    }

    fn add_arrays(&mut self, values: &ArrayRef, weights: &Int64Array) -> Result<()> {
        for row in 0..values.len() {
            if values.is_null(row) || weights.is_null(row) {
                continue;
            }
            self.add(
                ScalarValue::try_from_array(values, row)?,
                weights.value(row),
            );
        }
        Ok(())
    }
}

impl Accumulator for ExtremeAccumulator {
    fn update_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        let weights = arrow::compute::cast(&values[1], &DataType::Int64)?;
        self.add_arrays(&values[0], weights.as_primitive::<Int64Type>())
    }

    fn evaluate(&mut self) -> Result<ScalarValue> {
        let live = self.weights.iter().filter(|(_, &w)| w > 0).map(|(v, _)| v);
        let best = if self.max {
            live.max_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal))
        } else {
            live.min_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal))
        };
        match best {
            Some(value) => Ok(value.clone()),
            None => ScalarValue::try_from(&self.data_type),
        }
    }

    fn size(&self) -> usize {
        std::mem::size_of_val(self)
            + self
                .weights
                .keys()
                .map(|k| k.size() + std::mem::size_of::<i64>())
                .sum::<usize>()
    }

    fn state(&mut self) -> Result<Vec<ScalarValue>> {
        let (values, weights): (Vec<ScalarValue>, Vec<ScalarValue>) = self
            .weights
            .iter()
            .map(|(v, &w)| (v.clone(), ScalarValue::Int64(Some(w))))
            .unzip();
        Ok(vec![
            ScalarValue::List(ScalarValue::new_list_nullable(&values, &self.data_type)),
            ScalarValue::List(ScalarValue::new_list_nullable(&weights, &DataType::Int64)),
        ])
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> Result<()> {
        let (values, weights) = (states[0].as_list::<i32>(), states[1].as_list::<i32>());
        for row in 0..values.len() {
            if values.is_null(row) || weights.is_null(row) {
                continue;
            }
            let row_weights = weights.value(row);
            self.add_arrays(&values.value(row), row_weights.as_primitive::<Int64Type>())?;
        }
        Ok(())
    }
}
