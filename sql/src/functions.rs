//! SQL functions LaminarDB adds to DataFusion.
//!
//! `tumble(ts, size [, offset])` returns the start of the tumbling window
//! holding `ts`, in `ts`'s own type (BIGINT epoch ms or TIMESTAMP). In a
//! stream's `GROUP BY` it defines the window; anywhere else (and in batch
//! queries) it is this plain scalar function, computed by the same code as
//! the streaming window assignment.
//!
//! `slide(ts, size, slide [, offset])` and its alias `hop` define sliding
//! windows in a stream's `GROUP BY`, `session(ts, gap)` session windows. A
//! row belongs to several sliding windows, and its session depends on
//! other rows, so they have no meaning as scalar functions: evaluating one
//! outside a stream's `GROUP BY` is an error that says so.

use arrow::array::{Array, ArrayRef};
use arrow::datatypes::DataType;
use datafusion::common::{exec_err, plan_err, Result, ScalarValue};
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, TypeSignature,
    Volatility,
};
use laminar_operators::{EventTimeUnit, WindowSpec};

/// The `tumble` scalar function.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct Tumble {
    signature: Signature,
}

impl Default for Tumble {
    fn default() -> Self {
        Self {
            signature: Signature::one_of(
                vec![TypeSignature::Any(2), TypeSignature::Any(3)],
                Volatility::Immutable,
            ),
        }
    }
}

/// The name the tumbling window function is registered under.
pub const TUMBLE: &str = "tumble";
/// The sliding window function.
pub const SLIDE: &str = "slide";
/// Alias of `slide`, same argument order.
pub const HOP: &str = "hop";
/// The session window function.
pub const SESSION: &str = "session";

/// `tumble` as a UDF ready to register.
pub fn tumble_udf() -> ScalarUDF {
    ScalarUDF::new_from_impl(Tumble::default())
}

/// `slide(ts, size, slide [, offset])` (or `hop`), and `session(ts, gap)`:
/// window markers for a stream's GROUP BY, typed like `ts`.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct Slide {
    name: &'static str,
    signature: Signature,
}

impl Slide {
    fn new(name: &'static str) -> Self {
        Self {
            name,
            // Any arity: the planner checks the arguments and says what
            // is wrong with them (LDB-1006) better than a signature can.
            signature: Signature::variadic_any(Volatility::Immutable),
        }
    }
}

impl ScalarUDFImpl for Slide {
    fn name(&self) -> &str {
        self.name
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        match arg_types.first() {
            Some(first) => event_time_type(self.name, first),
            None => plan_err!("{}() takes (event_time, size, slide [, offset])", self.name),
        }
    }

    fn invoke_with_args(&self, _args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        exec_err!(
            "{}(): the window of a row depends on other rows (or it has several), so the \
             function only has a meaning in a stream's GROUP BY (LDB-1006)",
            self.name
        )
    }
}

fn event_time_type(function: &str, data_type: &DataType) -> Result<DataType> {
    match data_type {
        DataType::Int64 => Ok(DataType::Int64),
        DataType::Timestamp(unit, tz) => Ok(DataType::Timestamp(*unit, tz.clone())),
        other => plan_err!(
            "{function}(): the event-time argument must be BIGINT (epoch ms) or TIMESTAMP, got {other}"
        ),
    }
}

/// Converts an interval literal (or a BIGINT number of ms) to ms.
pub fn interval_ms(value: &ScalarValue) -> Option<i64> {
    match value {
        ScalarValue::IntervalMonthDayNano(Some(v)) if v.months == 0 => {
            if v.nanoseconds % 1_000_000 != 0 {
                return None;
            }
            Some(i64::from(v.days) * 86_400_000 + v.nanoseconds / 1_000_000)
        }
        ScalarValue::IntervalDayTime(Some(v)) => {
            Some(i64::from(v.days) * 86_400_000 + i64::from(v.milliseconds))
        }
        ScalarValue::IntervalYearMonth(Some(0)) => Some(0),
        ScalarValue::Int64(Some(v)) => Some(*v),
        ScalarValue::Int32(Some(v)) => Some(i64::from(*v)),
        _ => None,
    }
}

fn interval_argument(arg: &ColumnarValue, what: &str) -> Result<i64> {
    match arg {
        ColumnarValue::Scalar(value) => match interval_ms(value) {
            Some(ms) => Ok(ms),
            None => exec_err!(
                "tumble(): the {what} must be a fixed INTERVAL (days, hours, minutes, seconds, \
                 milliseconds) or a number of milliseconds, got {value}"
            ),
        },
        ColumnarValue::Array(_) => exec_err!("tumble(): the {what} must be a constant"),
    }
}

impl ScalarUDFImpl for Tumble {
    fn name(&self) -> &str {
        TUMBLE
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        event_time_type(TUMBLE, &arg_types[0])
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let size = interval_argument(&args.args[1], "window size")?;
        let offset = match args.args.get(2) {
            Some(arg) => interval_argument(arg, "window offset")?,
            None => 0,
        };
        let spec = WindowSpec::tumble(size, offset)
            .map_err(|e| datafusion::error::DataFusionError::Execution(e.to_string()))?;
        let times: ArrayRef = args.args[0].to_array(args.number_rows)?;
        let unit = EventTimeUnit::of(times.data_type(), "tumble")
            .map_err(|e| datafusion::error::DataFusionError::Execution(e.to_string()))?;
        // Timestamps cast to Int64 keep their ticks; NULLs stay NULL.
        let ticks = arrow::compute::cast(&times, &DataType::Int64)?;
        let ticks = ticks
            .as_any()
            .downcast_ref::<arrow::array::Int64Array>()
            .expect("cast to Int64");
        let starts: arrow::array::Int64Array =
            ticks.unary(|t| unit.from_ms(spec.start_of(unit.to_ms(t))));
        let data = starts
            .into_data()
            .into_builder()
            .data_type(unit.data_type())
            .build()?;
        Ok(ColumnarValue::Array(arrow::array::make_array(data)))
    }
}

/// `__window_end(start, size)`: a window's end from its start (or a
/// session's last event time) and its size (or gap), in the start's type.
/// Written by the window table function rewrite, not by users.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct WindowEnd {
    signature: Signature,
}

impl Default for WindowEnd {
    fn default() -> Self {
        Self {
            signature: Signature::any(2, Volatility::Immutable),
        }
    }
}

impl ScalarUDFImpl for WindowEnd {
    fn name(&self) -> &str {
        crate::window_tvf::WINDOW_END
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        event_time_type("window_end", &arg_types[0])
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let size = interval_argument(&args.args[1], "window size")?;
        let starts: ArrayRef = args.args[0].to_array(args.number_rows)?;
        let unit = EventTimeUnit::of(starts.data_type(), "window_end")
            .map_err(|e| datafusion::error::DataFusionError::Execution(e.to_string()))?;
        let ticks = arrow::compute::cast(&starts, &DataType::Int64)?;
        let ticks = ticks
            .as_any()
            .downcast_ref::<arrow::array::Int64Array>()
            .expect("cast to Int64");
        let ends: arrow::array::Int64Array =
            ticks.unary(|t| unit.from_ms(unit.to_ms(t).saturating_add(size)));
        let data = ends
            .into_data()
            .into_builder()
            .data_type(unit.data_type())
            .build()?;
        Ok(ColumnarValue::Array(arrow::array::make_array(data)))
    }
}

/// Registers LaminarDB's functions in a DataFusion context.
pub fn register_functions(ctx: &datafusion::prelude::SessionContext) {
    ctx.register_udf(tumble_udf());
    ctx.register_udf(ScalarUDF::new_from_impl(Slide::new(SLIDE)));
    ctx.register_udf(ScalarUDF::new_from_impl(Slide::new(HOP)));
    ctx.register_udf(ScalarUDF::new_from_impl(Slide::new(SESSION)));
    ctx.register_udf(ScalarUDF::new_from_impl(WindowEnd::default()));
    ctx.register_udf(ScalarUDF::new_from_impl(AsofNearest::default()));
    ctx.register_udf(ScalarUDF::new_from_impl(AsofJoinMarker::default()));
}

/// Name of the internal function that opens an ASOF or temporal join's
/// `ON` clause, marking that join among the query's joins.
pub const ASOF_JOIN: &str = "__asof_join";

/// `__asof_join()`: true as a value; the lowering reads it from the plan.
/// Volatile, so that no optimiser rule folds it away.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct AsofJoinMarker {
    signature: Signature,
}

impl Default for AsofJoinMarker {
    fn default() -> Self {
        Self {
            signature: Signature::nullary(Volatility::Volatile),
        }
    }
}

impl ScalarUDFImpl for AsofJoinMarker {
    fn name(&self) -> &str {
        ASOF_JOIN
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Boolean)
    }

    fn invoke_with_args(&self, _args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        exec_err!("ASOF and temporal joins run only in streams and on kept rows")
    }
}

/// Name of the internal function standing for `NEAREST(a.ts, b.ts)` in an
/// ASOF join's match condition.
pub const ASOF_NEAREST: &str = "__asof_nearest";

/// `NEAREST(a.ts, b.ts)` inside `MATCH_CONDITION(...)`: a marker the ASOF
/// join reads from the plan; it has no meaning as a value.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct AsofNearest {
    signature: Signature,
}

impl Default for AsofNearest {
    fn default() -> Self {
        Self {
            signature: Signature::any(2, Volatility::Immutable),
        }
    }
}

impl ScalarUDFImpl for AsofNearest {
    fn name(&self) -> &str {
        ASOF_NEAREST
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Boolean)
    }

    fn invoke_with_args(&self, _args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        exec_err!(
            "NEAREST(a, b) means something only as an ASOF JOIN's MATCH_CONDITION in a stream"
        )
    }
}
