//! Fused aggregates: a window aggregate's arguments, `FILTER`s and
//! accumulator updates lowered into one program over the source batch,
//! compiled like any expression (in the background in adaptive mode) and
//! run by the operator through [`FusedUpdate`].

use std::cell::RefCell;
use std::sync::{Arc, OnceLock};

use arrow::array::{BooleanArray, RecordBatch};
use arrow::datatypes::{DataType, Schema};
use datafusion::physical_expr::PhysicalExpr;
use laminar_operators::fused::{
    FusedAccumulator, FusedAggregateKind, FusedFunction, FusedType, FusedUpdate, GroupsOf,
};
use laminar_operators::fused_lookup::{LookupKey, LookupRun};
use laminar_runtime::{Error, ErrorCode, Result};

use super::codegen::InputDesc;
use super::expr::describe;
use super::fused_codegen::{compile_fused, FusedKernels};
use super::ir::{lower_into, Node};
use super::JitMode;

/// One aggregate of a fused program.
#[derive(Debug, Clone)]
pub(crate) struct FusedNode {
    pub kind: FusedAggregateKind,
    /// The argument (for `COUNT`, only its validity is read).
    pub argument: Node,
    /// `FILTER (WHERE ...)`: the row counts only where it is true.
    pub filter: Option<Node>,
}

/// Everything a fused kernel computes.
#[derive(Debug, Clone)]
pub(crate) struct FusedProgram {
    /// `[slot]` -> (source column, its Arrow type), shared by every tree.
    pub inputs: Vec<(usize, DataType)>,
    pub aggregates: Vec<FusedNode>,
    /// When the kernel looks groups up itself: the key's kind and the
    /// `WHERE` it evaluates (if any). Otherwise it reads group ids.
    pub lookup: Option<LookupNode>,
}

/// A kernel's own group lookup ([`laminar_operators::fused_lookup`]).
#[derive(Debug, Clone)]
pub(crate) struct LookupNode {
    pub key: LookupKey,
    /// The `WHERE`: a row counts only where it is true.
    pub predicate: Option<Node>,
}

/// A kernel that looks groups up itself, as the planner asks for it: the
/// key's kind, and the `WHERE` over the source batch.
pub struct FusedLookup {
    pub key: LookupKey,
    pub predicate: Option<Arc<dyn PhysicalExpr>>,
}

/// One aggregate as the planner hands it over: its kind, its argument and
/// its `FILTER`, both over the source batch.
pub struct FusedInput {
    pub kind: FusedAggregateKind,
    pub argument: Arc<dyn PhysicalExpr>,
    pub filter: Option<Arc<dyn PhysicalExpr>>,
}

/// Lowers the aggregates into one program; `None` when some argument or
/// filter cannot be compiled, or could fail on a row (then the aggregate
/// runs interpreted, as before). With `lookup`, the kernel looks groups
/// up itself and evaluates the `WHERE`, unless the `WHERE` cannot be
/// compiled (then it reads group ids).
pub(crate) fn lower_fused(
    aggregates: &[FusedInput],
    schema: &Schema,
    lookup: Option<&FusedLookup>,
) -> Option<FusedProgram> {
    let mut inputs = Vec::new();
    let mut nodes = Vec::with_capacity(aggregates.len());
    for aggregate in aggregates {
        let (argument, argument_type) = lower_into(&aggregate.argument, schema, &mut inputs)?;
        let fits = match aggregate.kind.function {
            // Only validity is read: any compilable type.
            FusedFunction::Count => true,
            // DataFusion's AVG groups accumulator takes DOUBLE only.
            FusedFunction::Avg if aggregate.kind.ty != FusedType::Float64 => false,
            _ => match aggregate.kind.ty {
                FusedType::Int64 => argument_type == DataType::Int64,
                FusedType::Float64 => argument_type == DataType::Float64,
            },
        };
        if !fits || argument.may_bail() {
            return None;
        }
        let filter = match &aggregate.filter {
            Some(filter) => Some(lower_condition(filter, schema, &mut inputs)?),
            None => None,
        };
        nodes.push(FusedNode {
            kind: aggregate.kind,
            argument,
            filter,
        });
    }
    let lookup = lookup.and_then(|lookup| {
        let predicate = match &lookup.predicate {
            Some(predicate) => Some(lower_condition(predicate, schema, &mut inputs)?),
            None => None,
        };
        Some(LookupNode {
            key: lookup.key,
            predicate,
        })
    });
    Some(FusedProgram {
        inputs,
        aggregates: nodes,
        lookup,
    })
}

/// A `BOOLEAN` expression that compiles and cannot fail, lowered.
fn lower_condition(
    condition: &Arc<dyn PhysicalExpr>,
    schema: &Schema,
    inputs: &mut Vec<(usize, DataType)>,
) -> Option<Node> {
    let (node, data_type) = lower_into(condition, schema, inputs)?;
    (data_type == DataType::Boolean && !node.may_bail()).then_some(node)
}

/// The compiled form of one fused aggregate, shared by every shard.
#[derive(Debug)]
pub struct FusedSlot {
    pub(crate) program: FusedProgram,
    pub(crate) outcome: OnceLock<std::result::Result<FusedKernels, String>>,
}

impl FusedSlot {
    pub(crate) fn compile(&self) {
        let started = std::time::Instant::now();
        let outcome = compile_fused(&self.program);
        match &outcome {
            Ok(_) => log::debug!("JIT: compiled a fused aggregate in {:?}", started.elapsed()),
            Err(e) => {
                log::warn!("JIT: cannot compile a fused aggregate ({e}); it stays interpreted")
            }
        }
        let _ = self.outcome.set(outcome);
    }
}

/// [`FusedUpdate`] over a [`FusedSlot`].
#[derive(Debug)]
pub struct CompiledFusedUpdate {
    slot: Arc<FusedSlot>,
}

impl CompiledFusedUpdate {
    pub(crate) fn new(slot: Arc<FusedSlot>) -> Self {
        Self { slot }
    }
}

/// The fused update of `aggregates` (over `schema`, the source batch's),
/// compiling now in [`JitMode::Eager`] and in the background otherwise;
/// `None` in [`JitMode::Off`] or when they cannot be fused. With
/// `lookup`, its kernel looks groups up itself where it can
/// ([`FusedUpdate::looks_up_groups`]).
pub fn fused_update(
    aggregates: &[FusedInput],
    schema: &Schema,
    lookup: Option<&FusedLookup>,
) -> Option<Arc<dyn FusedUpdate>> {
    let mode = super::mode();
    if mode == JitMode::Off {
        return None;
    }
    let program = lower_fused(aggregates, schema, lookup)?;
    let slot = Arc::new(FusedSlot {
        program,
        outcome: OnceLock::new(),
    });
    match mode {
        JitMode::Eager => slot.compile(),
        _ => super::submit(super::Job::Fused(Arc::clone(&slot))),
    }
    Some(Arc::new(CompiledFusedUpdate::new(slot)))
}

// The kernel reads group ids as 64-bit words.
const _: () = assert!(usize::BITS == 64);

thread_local! {
    /// Input descriptors and state pointers, reused across batches.
    static SCRATCH: RefCell<(Vec<InputDesc>, Vec<*mut u64>)> =
        const { RefCell::new((Vec::new(), Vec::new())) };
}

impl CompiledFusedUpdate {
    fn kernels(&self) -> Result<&FusedKernels> {
        match self.slot.outcome.get() {
            Some(Ok(kernels)) => Ok(kernels),
            _ => Err(internal("the fused kernel ran before it was compiled")),
        }
    }

    /// Checks what a kernel call is handed against the program.
    fn check(
        &self,
        batch: &RecordBatch,
        selection: Option<&BooleanArray>,
        accumulators: &[FusedAccumulator],
    ) -> Result<()> {
        let program = &self.slot.program;
        let rows = batch.num_rows();
        if accumulators.len() != program.aggregates.len()
            || selection.is_some_and(|s| s.len() != rows || arrow::array::Array::null_count(s) > 0)
        {
            return Err(internal("fused aggregate called with mismatched inputs"));
        }
        if accumulators
            .iter()
            .zip(&program.aggregates)
            .any(|(accumulator, node)| accumulator.kind() != node.kind)
        {
            return Err(internal("fused state of another aggregate"));
        }
        Ok(())
    }

    /// Describes the batch's input columns into `descs`; whether none
    /// has a NULL (then the dense kernel runs).
    fn describe_inputs(&self, batch: &RecordBatch, descs: &mut Vec<InputDesc>) -> Result<bool> {
        let rows = batch.num_rows();
        descs.clear();
        let mut dense = true;
        for (column, data_type) in &self.slot.program.inputs {
            let array = batch
                .columns()
                .get(*column)
                .filter(|a| a.data_type() == data_type && a.len() == rows)
                .ok_or_else(|| internal("a source column changed type under a fused aggregate"))?;
            let desc = describe(array.as_ref())
                .ok_or_else(|| internal("a fused aggregate input cannot be read"))?;
            dense &= desc.valid_mask == 0;
            descs.push(desc);
        }
        Ok(dense)
    }
}

/// A selection bitmap as a kernel takes it: its bytes and bit offset, or
/// null for every row.
fn selection_bits(selection: Option<&BooleanArray>) -> (*const u8, u64) {
    match selection {
        Some(s) => (s.values().inner().as_ptr(), s.values().offset() as u64),
        None => (std::ptr::null(), 0),
    }
}

impl FusedUpdate for CompiledFusedUpdate {
    fn is_ready(&self) -> bool {
        matches!(self.slot.outcome.get(), Some(Ok(_)))
    }

    fn update(
        &self,
        batch: &RecordBatch,
        selection: Option<&BooleanArray>,
        group_ids: &[usize],
        accumulators: &mut [FusedAccumulator],
    ) -> Result<()> {
        let kernels = self.kernels()?;
        self.check(batch, selection, accumulators)?;
        let rows = batch.num_rows();
        if group_ids.len() != rows {
            return Err(internal("fused aggregate called with mismatched inputs"));
        }
        // Unselected rows carry group 0, below any selected row's.
        let groups_needed = group_ids.iter().max().map_or(0, |&g| g + 1);
        if accumulators.iter().any(|a| a.groups() < groups_needed) {
            return Err(internal("a fused aggregate group has no state"));
        }
        SCRATCH.with(|scratch| {
            let (descs, states) = &mut *scratch.borrow_mut();
            let dense = self.describe_inputs(batch, descs)?;
            states.clear();
            for accumulator in accumulators.iter_mut() {
                states.extend(accumulator.state_pointers());
            }
            let (selection_at, selection_offset) = selection_bits(selection);
            let kernel = if dense {
                &kernels.dense
            } else {
                &kernels.general
            };
            // SAFETY: every input's buffers cover `rows` rows of the type
            // the kernel was compiled for (checked above); `group_ids` has
            // `rows` entries and every selected row's group is below each
            // state vector's length (checked above); the selection bitmap
            // covers `rows` bits from its offset; the state pointers stay
            // valid (nothing resizes the vectors during the call).
            unsafe {
                (kernel.function)(
                    descs.as_ptr(),
                    rows as u64,
                    selection_at,
                    selection_offset,
                    group_ids.as_ptr().cast::<u64>(),
                    states.as_ptr(),
                )
            };
            Ok(())
        })
    }

    fn looks_up_groups(&self) -> bool {
        self.slot.program.lookup.is_some()
    }

    fn update_looking_up(
        &self,
        batch: &RecordBatch,
        selection: Option<&BooleanArray>,
        groups: GroupsOf<'_, '_>,
        accumulators: &mut [FusedAccumulator],
    ) -> Result<()> {
        let kernels = self.kernels()?;
        let Some(lookup) = &self.slot.program.lookup else {
            return Err(internal(
                "a fused kernel that reads group ids was asked to look them up",
            ));
        };
        self.check(batch, selection, accumulators)?;
        let rows = batch.num_rows();
        SCRATCH.with(|scratch| {
            let (descs, _) = &mut *scratch.borrow_mut();
            let dense = self.describe_inputs(batch, descs)?;
            let (selection_at, selection_offset) = selection_bits(selection);
            let Some(kernels) = &kernels.lookup else {
                return Err(internal(
                    "a fused kernel that looks groups up was not built",
                ));
            };
            let kernel = if dense {
                &kernels.dense
            } else {
                &kernels.general
            };
            let mut run = LookupRun::new(groups, accumulators)
                .ok_or_else(|| internal("group keys of a kind a kernel does not look up"))?;
            if run.key() != lookup.key || run.key_rows() != rows {
                return Err(internal("group keys that do not fit the fused kernel"));
            }
            let mut row = 0;
            loop {
                // SAFETY: every input's buffers cover `rows` rows of the
                // type the kernel was compiled for, and so does the key
                // column (checked above); the selection bitmap covers
                // `rows` bits from its offset; the frame's table and state
                // pointers are valid for every group in the table, and a
                // pending group has a state (`LookupRun::resolve`).
                let stopped = unsafe {
                    (kernel.function)(
                        descs.as_ptr(),
                        rows as u64,
                        selection_at,
                        selection_offset,
                        run.frame(),
                        row,
                    )
                };
                if stopped >= rows as u64 {
                    return Ok(());
                }
                run.resolve(stopped as usize);
                row = stopped;
            }
        })
    }

    fn state(&self) -> String {
        match self.slot.outcome.get() {
            Some(Ok(_)) => "compiled".to_string(),
            Some(Err(why)) => format!("interpreted ({why})"),
            None => "compiling".to_string(),
        }
    }
}

fn internal(what: &str) -> Error {
    Error::new(ErrorCode::Execution, format!("internal: {what}"))
}
