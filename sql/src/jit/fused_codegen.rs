//! Cranelift code generation for a fused aggregate: one loop that reads
//! each selected row of the source batch once, evaluates every
//! aggregate's argument and `FILTER`, and updates the group's state in
//! place.
//!
//! The kernel's signature (C ABI):
//!
//! ```text
//! fn(inputs: *const InputDesc, rows: u64, selection: *const u8,
//!    selection_bit_offset: u64, group_ids: *const u64, states: *const *mut u64)
//! ```
//!
//! `selection` is a bitmap of the rows to aggregate (null: every row);
//! `group_ids[row]` is the row's group (read only for selected rows);
//! `states` holds two pointers per aggregate, its `FusedAccumulator`'s
//! vectors (see `laminar_operators::fused` for what each holds). Updates
//! are branch-free: a row whose argument is NULL (or whose `FILTER` is
//! not true) adds 0, or keeps the current minimum, instead of skipping.
//! Adding `0.0` leaves every float sum unchanged (sums start at `+0.0`, so
//! none is ever `-0.0`), so the results are DataFusion's bit for bit.
//! Nothing in a fused kernel can fail: the planner does not fuse
//! expressions that may (integer division, timestamp scaling).

use cranelift_codegen::ir::condcodes::{FloatCC, IntCC};
use cranelift_codegen::ir::{types, FuncRef, InstBuilder, MemFlagsData, Value};
use cranelift_codegen::Context;
use cranelift_frontend::{FunctionBuilder, FunctionBuilderContext};
use cranelift_module::Module;
use laminar_operators::fused::{FusedFunction, FusedType};

use super::codegen::{declare, load_inputs, new_module, Code, Gen, InputDesc, LoadedInput};
use super::fused::FusedProgram;

pub(crate) type FusedKernelFn =
    unsafe extern "C" fn(*const InputDesc, u64, *const u8, u64, *const u64, *const *mut u64);

/// A compiled fused kernel and the executable memory holding it.
pub(crate) struct FusedKernel {
    _code: Code,
    pub function: FusedKernelFn,
}

impl std::fmt::Debug for FusedKernel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FusedKernel")
    }
}

/// Both kernels of a fused aggregate: `general` reads validity bitmaps,
/// `dense` runs when no input has a NULL in the batch.
#[derive(Debug)]
pub(crate) struct FusedKernels {
    pub general: FusedKernel,
    pub dense: FusedKernel,
}

pub(crate) fn compile_fused(program: &FusedProgram) -> Result<FusedKernels, String> {
    Ok(FusedKernels {
        general: compile_one(program, false)?,
        dense: compile_one(program, true)?,
    })
}

fn compile_one(program: &FusedProgram, dense: bool) -> Result<FusedKernel, String> {
    let (mut module, str_eq_id) = new_module()?;
    let pointer = module.target_config().pointer_type();
    let (id, mut context) = declare(
        &mut module,
        "fused",
        &[pointer, types::I64, pointer, types::I64, pointer, pointer],
        None,
    )?;
    let mut builder_context = FunctionBuilderContext::new();
    {
        let mut b = FunctionBuilder::new(&mut context.func, &mut builder_context);
        let str_eq = module.declare_func_in_func(str_eq_id, b.func);
        let entry = b.create_block();
        let header = b.create_block();
        let check = b.create_block();
        let read_selection = b.create_block();
        let body = b.create_block();
        let next = b.create_block();
        let exit = b.create_block();
        b.append_block_params_for_function_params(entry);
        b.switch_to_block(entry);
        let params = b.block_params(entry).to_vec();
        let (descs, rows, selection, selection_offset, group_ids, states) = (
            params[0], params[1], params[2], params[3], params[4], params[5],
        );
        let inputs = load_inputs(&mut b, descs, &program.inputs);
        let state = load_states(&mut b, states, program.aggregates.len());
        let has_selection = b.ins().icmp_imm_s(IntCC::NotEqual, selection, 0);
        let zero = b.ins().iconst(types::I64, 0);
        b.ins().jump(header, &[zero.into()]);

        b.append_block_param(header, types::I64);
        b.switch_to_block(header);
        let row = b.block_params(header)[0];
        let more = b.ins().icmp(IntCC::UnsignedLessThan, row, rows);
        b.ins().brif(more, check, &[], exit, &[]);

        b.switch_to_block(check);
        b.ins().brif(has_selection, read_selection, &[], body, &[]);

        b.switch_to_block(read_selection);
        let selected = {
            let mut gen = Gen {
                b: &mut b,
                inputs: &inputs,
                row,
                bail: None,
                dense,
                str_eq,
            };
            gen.bit(selection, selection_offset, None)
        };
        b.ins().brif(selected, body, &[], next, &[]);

        b.switch_to_block(body);
        let row_code = RowCode {
            inputs: &inputs,
            state: &state,
            row,
            group_ids,
            dense,
            str_eq,
        };
        row_code.emit(&mut b, program);
        b.ins().jump(next, &[]);

        b.switch_to_block(next);
        let following = b.ins().iadd_imm_s(row, 1);
        b.ins().jump(header, &[following.into()]);

        b.switch_to_block(exit);
        b.ins().return_(&[]);
        b.seal_all_blocks();
        b.finalize(module.target_config());
    }
    finish(module, context, id, program)
}

/// Compiles the built function and keeps the literals its code points at.
fn finish(
    mut module: cranelift_jit::JITModule,
    mut context: Context,
    id: cranelift_module::FuncId,
    program: &FusedProgram,
) -> Result<FusedKernel, String> {
    module
        .define_function(id, &mut context)
        .map_err(|e| format!("{e:?}"))?;
    module.clear_context(&mut context);
    module.finalize_definitions().map_err(|e| e.to_string())?;
    let code = module.get_finalized_function(id);
    // SAFETY: the function was built with exactly this signature.
    let function = unsafe { std::mem::transmute::<*const u8, FusedKernelFn>(code) };
    let mut literals = Vec::new();
    for aggregate in &program.aggregates {
        aggregate.argument.string_literals(&mut literals);
        if let Some(filter) = &aggregate.filter {
            filter.string_literals(&mut literals);
        }
    }
    Ok(FusedKernel {
        _code: Code::new(module, literals),
        function,
    })
}

/// Each aggregate's two state vectors, read once before the loop.
fn load_states(b: &mut FunctionBuilder, states: Value, aggregates: usize) -> Vec<(Value, Value)> {
    let flags = MemFlagsData::trusted();
    (0..aggregates)
        .map(|j| {
            let at = (j * 16) as i32;
            (
                b.ins().load(types::I64, flags, states, at),
                b.ins().load(types::I64, flags, states, at + 8),
            )
        })
        .collect()
}

/// What a selected row's code needs: the loaded inputs, each aggregate's
/// state vectors, the row and the group ids.
struct RowCode<'a> {
    inputs: &'a [LoadedInput],
    state: &'a [(Value, Value)],
    row: Value,
    group_ids: Value,
    dense: bool,
    str_eq: FuncRef,
}

impl RowCode<'_> {
    /// Loads the row's group and, per aggregate, evaluates the argument
    /// and `FILTER` and updates the group's state.
    fn emit(&self, b: &mut FunctionBuilder, program: &FusedProgram) {
        let flags = MemFlagsData::trusted();
        let at = b.ins().ishl_imm_s(self.row, 3);
        let at = b.ins().iadd(self.group_ids, at);
        let group = b.ins().load(types::I64, flags, at, 0);
        let offset = b.ins().ishl_imm_s(group, 3);
        for (aggregate, &(primary, secondary)) in program.aggregates.iter().zip(self.state) {
            let mut gen = Gen {
                b: &mut *b,
                inputs: self.inputs,
                row: self.row,
                bail: None,
                dense: self.dense,
                str_eq: self.str_eq,
            };
            let (value, valid) = gen.node(&aggregate.argument);
            let mut counts = valid;
            if let Some(filter) = &aggregate.filter {
                let (keep, keep_valid) = gen.node(filter);
                let keep = gen.b.ins().band(keep, keep_valid);
                counts = gen.b.ins().band(counts, keep);
            }
            debug_assert!(gen.bail.is_none(), "fused expressions never bail");
            let primary_at = b.ins().iadd(primary, offset);
            let secondary_at = b.ins().iadd(secondary, offset);
            update(
                b,
                aggregate.kind.function,
                aggregate.kind.ty,
                value,
                counts,
                primary_at,
                secondary_at,
            );
        }
    }
}

/// One aggregate's update of its group: `counts` (an I8 0/1) says
/// whether `value` is added.
fn update(
    b: &mut FunctionBuilder,
    function: FusedFunction,
    ty: FusedType,
    value: Value,
    counts: Value,
    primary_at: Value,
    secondary_at: Value,
) {
    let flags = MemFlagsData::trusted();
    let one_if_counted = b.ins().uextend(types::I64, counts);
    let add_one = |b: &mut FunctionBuilder, at: Value| {
        let current = b.ins().load(types::I64, flags, at, 0);
        let added = b.ins().iadd(current, one_if_counted);
        b.ins().store(flags, added, at, 0);
    };
    let mark_seen = |b: &mut FunctionBuilder| {
        let seen = b.ins().load(types::I64, flags, secondary_at, 0);
        let seen = b.ins().bor(seen, one_if_counted);
        b.ins().store(flags, seen, secondary_at, 0);
    };
    match (function, ty) {
        (FusedFunction::Count, _) => add_one(b, primary_at),
        (FusedFunction::Sum, FusedType::Int64) => {
            let current = b.ins().load(types::I64, flags, primary_at, 0);
            let zero = b.ins().iconst(types::I64, 0);
            let added = b.ins().select(counts, value, zero);
            let sum = b.ins().iadd(current, added);
            b.ins().store(flags, sum, primary_at, 0);
            mark_seen(b);
        }
        (FusedFunction::Sum | FusedFunction::Avg, FusedType::Float64) => {
            let current = b.ins().load(types::F64, flags, primary_at, 0);
            let zero = b.ins().f64const(0.0);
            let added = b.ins().select(counts, value, zero);
            let sum = b.ins().fadd(current, added);
            // Adding two NaNs gives the first on x86, and the compiler may
            // swap an addition's operands: a NaN sum is kept as it is, as
            // DataFusion's `sum + value` keeps it.
            let is_nan = b.ins().fcmp(FloatCC::Unordered, current, current);
            let sum = b.ins().select(is_nan, current, sum);
            b.ins().store(flags, sum, primary_at, 0);
            if function == FusedFunction::Avg {
                add_one(b, secondary_at);
            } else {
                mark_seen(b);
            }
        }
        (FusedFunction::Min | FusedFunction::Max, FusedType::Int64) => {
            let current = b.ins().load(types::I64, flags, primary_at, 0);
            let cc = if function == FusedFunction::Min {
                IntCC::SignedLessThan
            } else {
                IntCC::SignedGreaterThan
            };
            let better = b.ins().icmp(cc, value, current);
            let take = b.ins().band(better, counts);
            let kept = b.ins().select(take, value, current);
            b.ins().store(flags, kept, primary_at, 0);
            mark_seen(b);
        }
        (FusedFunction::Min | FusedFunction::Max, FusedType::Float64) => {
            let current = b.ins().load(types::F64, flags, primary_at, 0);
            // `partial_cmp` is Less (Greater) or None (a NaN on either side).
            let cc = if function == FusedFunction::Min {
                FloatCC::UnorderedOrLessThan
            } else {
                FloatCC::UnorderedOrGreaterThan
            };
            let better = b.ins().fcmp(cc, value, current);
            let take = b.ins().band(better, counts);
            let kept = b.ins().select(take, value, current);
            b.ins().store(flags, kept, primary_at, 0);
            mark_seen(b);
        }
        (FusedFunction::Avg, FusedType::Int64) => {
            unreachable!("AVG accumulates DOUBLE (the planner checks)")
        }
    }
}
