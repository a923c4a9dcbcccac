//! `CompiledExpr`: a `PhysicalExpr` that runs its compiled kernel once it
//! is ready and the interpreted expression until then (or whenever the
//! kernel hands a batch back). Operators see an ordinary expression, so
//! the swap to compiled code happens at a batch boundary, per shard,
//! without pausing anything.

use std::cell::RefCell;
use std::fmt;
use std::hash::Hash;
use std::sync::{Arc, OnceLock};

use arrow::array::{
    downcast_primitive_array, make_array, Array, ArrayData, ArrayRef, AsArray, RecordBatch,
};
use arrow::buffer::{BooleanBuffer, Buffer, MutableBuffer, NullBuffer};
use arrow::datatypes::{DataType, Schema};
use datafusion::common::Result as DfResult;
use datafusion::logical_expr::ColumnarValue;
use datafusion::physical_expr::PhysicalExpr;

use super::codegen::{InputDesc, Kernels};
use super::ir::{Program, Ty, LARGE_BATCH_ROWS};

/// What became of an expression's compilation.
#[derive(Debug)]
pub(crate) enum Outcome {
    Ready(Box<Kernels>),
    Failed(String),
}

/// The compiled form of one expression, shared by every shard's copy.
#[derive(Debug)]
pub struct CompiledSlot {
    pub(crate) program: Program,
    pub(crate) outcome: OnceLock<Outcome>,
    /// Run the kernel on large batches too (see
    /// `Program::wins_on_large_batches`).
    pub(crate) large_batches: bool,
}

/// An expression that runs compiled once its kernel is ready.
#[derive(Debug, Clone)]
pub struct CompiledExpr {
    inner: Arc<dyn PhysicalExpr>,
    slot: Arc<CompiledSlot>,
}

impl CompiledExpr {
    pub(crate) fn new(inner: Arc<dyn PhysicalExpr>, slot: Arc<CompiledSlot>) -> Self {
        Self { inner, slot }
    }

    /// The interpreted expression it stands for.
    pub fn inner(&self) -> &Arc<dyn PhysicalExpr> {
        &self.inner
    }

    /// `compiled`, `compiling` or `interpreted (<why>)`.
    pub fn state(&self) -> String {
        match self.slot.outcome.get() {
            Some(Outcome::Ready(_)) => "compiled".to_string(),
            Some(Outcome::Failed(why)) => format!("interpreted ({why})"),
            None => "compiling".to_string(),
        }
    }

    /// Whether the kernel is in use.
    pub fn is_compiled(&self) -> bool {
        matches!(self.slot.outcome.get(), Some(Outcome::Ready(_)))
    }

    /// Runs a kernel; `None` when the batch must be interpreted.
    fn run(&self, kernels: &Kernels, batch: &RecordBatch) -> Option<ArrayRef> {
        let program = &self.slot.program;
        let rows = batch.num_rows();
        DESCS.with(|descs| {
            let mut inputs = descs.borrow_mut();
            inputs.clear();
            let mut dense = true;
            for (column, data_type) in &program.inputs {
                let array = batch.columns().get(*column)?;
                if array.data_type() != data_type || array.len() != rows {
                    return None;
                }
                let desc = describe(array.as_ref())?;
                dense &= desc.valid_mask == 0;
                inputs.push(desc);
            }
            let out_ty = program.output_ty();
            let (kernel, writes_validity) = if dense {
                (&kernels.dense, kernels.dense_writes_validity)
            } else {
                (&kernels.general, true)
            };
            let value_bytes = if out_ty == Ty::Bool {
                rows.div_ceil(64) * 8
            } else {
                rows * out_ty.bytes()
            };
            let mut values = MutableBuffer::new(value_bytes);
            SCRATCH.with(|scratch| {
                let mut valid = scratch.borrow_mut();
                valid.clear();
                valid.resize(rows, 1);
                // SAFETY: every input's buffers cover `rows` rows (checked
                // lengths and types above), the outputs have room for
                // `rows` values and validity bytes, and the kernel was
                // compiled for exactly these input types.
                let bail = unsafe {
                    (kernel.function)(
                        inputs.as_ptr(),
                        rows as u64,
                        values.as_mut_ptr(),
                        valid.as_mut_ptr(),
                    )
                };
                if bail != 0 {
                    return None;
                }
                // SAFETY: the kernel wrote all `rows` values.
                unsafe { values.set_len(value_bytes) };
                let nulls = if writes_validity && valid.contains(&0) {
                    Some(NullBuffer::new(BooleanBuffer::collect_bool(rows, |i| {
                        valid[i] != 0
                    })))
                } else {
                    None
                };
                let values: Buffer = values.into();
                let data = ArrayData::builder(program.output.clone())
                    .len(rows)
                    .add_buffer(values)
                    .nulls(nulls)
                    .build()
                    .ok()?;
                Some(make_array(data))
            })
        })
    }
}

/// Where the kernel reads a column: its values (already offset for
/// primitive arrays, a bit offset for booleans; a string column's offsets,
/// already offset, and its bytes) and validity bitmap.
pub(super) fn describe(array: &dyn Array) -> Option<InputDesc> {
    let mut data = std::ptr::null();
    let (values, values_bit_offset) = match array.data_type() {
        DataType::Boolean => {
            let bits = array.as_boolean_opt()?.values();
            (bits.inner().as_ptr(), bits.offset() as u64)
        }
        DataType::Utf8 => {
            let strings = array.as_string_opt::<i32>()?;
            data = strings.values().as_ptr();
            (strings.offsets().inner().inner().as_ptr(), 0)
        }
        DataType::LargeUtf8 => {
            let strings = array.as_string_opt::<i64>()?;
            data = strings.values().as_ptr();
            (strings.offsets().inner().inner().as_ptr(), 0)
        }
        _ => downcast_primitive_array!(
            array => (array.values().as_ptr().cast::<u8>(), 0),
            _ => return None
        ),
    };
    let (valid, valid_bit_offset, valid_mask) = match array.nulls() {
        Some(nulls) if nulls.null_count() > 0 => {
            (nulls.buffer().as_ptr(), nulls.offset() as u64, u64::MAX)
        }
        _ => (ALL_VALID.as_ptr(), 0, 0),
    };
    Some(InputDesc {
        values,
        valid,
        values_bit_offset,
        valid_bit_offset,
        valid_mask,
        data,
    })
}

/// The validity "bitmap" of a column without NULLs.
static ALL_VALID: [u8; 1] = [0xFF];

thread_local! {
    /// Validity bytes, reused across batches on each thread.
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    /// Input descriptors, reused across batches on each thread.
    static DESCS: RefCell<Vec<InputDesc>> = const { RefCell::new(Vec::new()) };
}

impl fmt::Display for CompiledExpr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.inner.fmt(f)
    }
}

impl PartialEq for CompiledExpr {
    fn eq(&self, other: &Self) -> bool {
        self.inner.eq(&other.inner)
    }
}

impl Eq for CompiledExpr {}

impl Hash for CompiledExpr {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.inner.hash(state);
    }
}

impl PhysicalExpr for CompiledExpr {
    fn data_type(&self, input_schema: &Schema) -> DfResult<DataType> {
        self.inner.data_type(input_schema)
    }

    fn nullable(&self, input_schema: &Schema) -> DfResult<bool> {
        self.inner.nullable(input_schema)
    }

    fn evaluate(&self, batch: &RecordBatch) -> DfResult<ColumnarValue> {
        if let Some(Outcome::Ready(kernel)) = self.slot.outcome.get() {
            let rows = batch.num_rows();
            if rows > 0 && (rows < LARGE_BATCH_ROWS || self.slot.large_batches) {
                if let Some(array) = self.run(kernel, batch) {
                    return Ok(ColumnarValue::Array(array));
                }
            }
        }
        self.inner.evaluate(batch)
    }

    fn children(&self) -> Vec<&Arc<dyn PhysicalExpr>> {
        vec![&self.inner]
    }

    fn with_new_children(
        self: Arc<Self>,
        mut children: Vec<Arc<dyn PhysicalExpr>>,
    ) -> DfResult<Arc<dyn PhysicalExpr>> {
        // A rewritten expression is no longer the compiled one.
        Ok(children.pop().unwrap_or_else(|| Arc::clone(&self.inner)))
    }

    fn fmt_sql(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.inner.fmt_sql(f)
    }
}
