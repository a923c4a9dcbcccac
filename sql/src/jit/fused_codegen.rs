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
//! vectors (see `laminar_operators::fused` for what each holds).
//!
//! A kernel that looks groups up itself (the program has a `lookup`)
//! has another signature:
//!
//! ```text
//! fn(inputs, rows, selection, selection_bit_offset,
//!    frame: *mut GroupLookup, start_row: u64) -> u64
//! ```
//!
//! It reads the group table and the state vectors from the frame
//! (`laminar_operators::fused_lookup`). Per selected row it evaluates the
//! `WHERE`, then hashes the key and probes the table inline; at a row it
//! cannot resolve (a key not in the table yet, an empty string, a string
//! ending in its buffer's first 8 bytes) it returns that row. The caller
//! resolves it and calls again from there, with the row's group in the
//! frame, which the kernel updates before going on. It returns `rows`
//! once through.
//!
//! Updates are branch-free: a row whose argument is NULL (or whose `FILTER` is
//! not true) adds 0, or keeps the current minimum, instead of skipping.
//! Adding `0.0` leaves every float sum unchanged (sums start at `+0.0`, so
//! none is ever `-0.0`), so the results are DataFusion's bit for bit.
//! Nothing in a fused kernel can fail: the planner does not fuse
//! expressions that may (integer division, timestamp scaling).

use std::mem::offset_of;

use cranelift_codegen::ir::condcodes::{FloatCC, IntCC};
use cranelift_codegen::ir::{types, Block, FuncRef, InstBuilder, MemFlagsData, Value};
use cranelift_codegen::Context;
use cranelift_frontend::{FunctionBuilder, FunctionBuilderContext};
use cranelift_module::Module;
use laminar_operators::fused::{FusedFunction, FusedType};
use laminar_operators::fused_lookup::{GroupLookup, LookupKey, NO_GROUP};
use laminar_operators::groups::short_key_seeds;

use super::codegen::{declare, is_one, load_inputs, new_module, Code, Gen, InputDesc, LoadedInput};
use super::fused::{FusedProgram, LookupNode};

pub(crate) type FusedKernelFn =
    unsafe extern "C" fn(*const InputDesc, u64, *const u8, u64, *const u64, *const *mut u64);

/// A kernel that looks groups up itself: `(inputs, rows, selection,
/// selection_bit_offset, frame, start_row) -> stopped_row` (`rows` when
/// it went through).
pub(crate) type LookupKernelFn =
    unsafe extern "C" fn(*const InputDesc, u64, *const u8, u64, *mut GroupLookup, u64) -> u64;

/// A compiled kernel and the executable memory holding it.
pub(crate) struct Compiled<F> {
    _code: Code,
    pub function: F,
}

impl<F> std::fmt::Debug for Compiled<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FusedKernel")
    }
}

pub(crate) type FusedKernel = Compiled<FusedKernelFn>;
pub(crate) type LookupKernel = Compiled<LookupKernelFn>;

/// A fused aggregate's kernels: `general` reads validity bitmaps,
/// `dense` runs when no input has a NULL in the batch; with a lookup,
/// both again as kernels that look groups up themselves (the others
/// serve batches with a key too long for that).
#[derive(Debug)]
pub(crate) struct FusedKernels {
    pub general: FusedKernel,
    pub dense: FusedKernel,
    pub lookup: Option<LookupKernels>,
}

#[derive(Debug)]
pub(crate) struct LookupKernels {
    pub general: LookupKernel,
    pub dense: LookupKernel,
}

pub(crate) fn compile_fused(program: &FusedProgram) -> Result<FusedKernels, String> {
    let lookup = match &program.lookup {
        Some(lookup) => Some(LookupKernels {
            general: compile_one(program, false, Some(lookup))?,
            dense: compile_one(program, true, Some(lookup))?,
        }),
        None => None,
    };
    Ok(FusedKernels {
        general: compile_one(program, false, None)?,
        dense: compile_one(program, true, None)?,
        lookup,
    })
}

/// Builds one kernel: reading group ids, or with `lookup` looking groups
/// up itself. `F` is its function type.
fn compile_one<F: Copy>(
    program: &FusedProgram,
    dense: bool,
    lookup: Option<&LookupNode>,
) -> Result<Compiled<F>, String> {
    let (mut module, str_eq_id) = new_module()?;
    let pointer = module.target_config().pointer_type();
    let (id, mut context) = match lookup {
        None => declare(
            &mut module,
            "fused",
            &[pointer, types::I64, pointer, types::I64, pointer, pointer],
            None,
        )?,
        Some(_) => declare(
            &mut module,
            "fused_lookup",
            &[
                pointer,
                types::I64,
                pointer,
                types::I64,
                pointer,
                types::I64,
            ],
            Some(types::I64),
        )?,
    };
    let mut builder_context = FunctionBuilderContext::new();
    {
        let mut b = FunctionBuilder::new(&mut context.func, &mut builder_context);
        let str_eq = module.declare_func_in_func(str_eq_id, b.func);
        let entry = b.create_block();
        let header = b.create_block();
        let check = b.create_block();
        let read_selection = b.create_block();
        let row_start = b.create_block();
        let body = b.create_block();
        let next = b.create_block();
        let exit = b.create_block();
        b.append_block_params_for_function_params(entry);
        b.append_block_param(header, types::I64);
        b.append_block_param(body, types::I64);
        b.append_block_param(body, types::I64);
        b.append_block_param(next, types::I64);
        b.append_block_param(exit, types::I64);
        b.switch_to_block(entry);
        let params = b.block_params(entry).to_vec();
        let (descs, rows, selection, selection_offset) =
            (params[0], params[1], params[2], params[3]);
        let inputs = load_inputs(&mut b, descs, &program.inputs);
        let has_selection = b.ins().icmp_imm_s(IntCC::NotEqual, selection, 0);
        let (groups, state) = match lookup {
            None => {
                let state =
                    States::Loaded(load_states(&mut b, params[5], program.aggregates.len()));
                let zero = b.ins().iconst(types::I64, 0);
                b.ins().jump(header, &[zero.into()]);
                (Groups::Ids(params[4]), state)
            }
            Some(lookup) => {
                let (frame, start_row) = (params[4], params[5]);
                let found = Lookup::load(&mut b, frame, lookup.key);
                let flags = MemFlagsData::trusted();
                let states = b.ins().load(
                    types::I64,
                    flags,
                    frame,
                    offset_of!(GroupLookup, states) as i32,
                );
                // Read where they are used: a lookup kernel has more loop
                // values than registers, and a pointer loaded at its use is
                // one load, where a spilled one is a load plus the stores
                // and moves the allocator adds around it.
                let state = States::AtUse(states);
                // A row the last call stopped at comes back resolved: it
                // is updated first.
                let pending = b.ins().load(
                    types::I64,
                    flags,
                    frame,
                    offset_of!(GroupLookup, pending_group) as i32,
                );
                let resolved = b
                    .ins()
                    .icmp_imm_s(IntCC::NotEqual, pending, NO_GROUP as i64);
                b.ins().brif(
                    resolved,
                    body,
                    &[start_row.into(), pending.into()],
                    header,
                    &[start_row.into()],
                );
                (Groups::Lookup(found), state)
            }
        };

        b.switch_to_block(header);
        let row = b.block_params(header)[0];
        let more = b.ins().icmp(IntCC::UnsignedLessThan, row, rows);
        b.ins().brif(more, check, &[], exit, &[rows.into()]);

        b.switch_to_block(check);
        b.ins()
            .brif(has_selection, read_selection, &[], row_start, &[]);

        let mut gen = Gen::new(&mut b, &inputs, row, dense, str_eq);
        gen.b.switch_to_block(read_selection);
        let selected = gen.bit(selection, selection_offset, None);
        gen.b
            .ins()
            .brif(selected, row_start, &[], next, &[row.into()]);

        gen.b.switch_to_block(row_start);
        match &groups {
            Groups::Ids(group_ids) => {
                let at = gen.b.ins().ishl_imm_s(row, 3);
                let at = gen.b.ins().iadd(*group_ids, at);
                let group = gen.b.ins().load(types::I64, MemFlagsData::trusted(), at, 0);
                gen.b.ins().jump(body, &[row.into(), group.into()]);
            }
            Groups::Lookup(found) => {
                if let Some(predicate) = lookup.and_then(|l| l.predicate.as_ref()) {
                    let (keep, keep_valid) = gen.node(predicate);
                    debug_assert!(gen.bail.is_none(), "fused expressions never bail");
                    let keep = gen.when_valid(keep, keep_valid);
                    let probe = gen.b.create_block();
                    gen.b.ins().brif(keep, probe, &[], next, &[row.into()]);
                    gen.b.switch_to_block(probe);
                }
                found.emit(gen.b, row, body, exit);
            }
        }

        b.switch_to_block(body);
        let (row, group) = (b.block_params(body)[0], b.block_params(body)[1]);
        let row_code = RowCode {
            inputs: &inputs,
            state: &state,
            row,
            group,
            dense,
            str_eq,
        };
        row_code.emit(&mut b, program);
        b.ins().jump(next, &[row.into()]);

        b.switch_to_block(next);
        let done = b.block_params(next)[0];
        let following = b.ins().iadd_imm_s(done, 1);
        b.ins().jump(header, &[following.into()]);

        b.switch_to_block(exit);
        let stopped = b.block_params(exit)[0];
        match lookup {
            None => b.ins().return_(&[]),
            Some(_) => b.ins().return_(&[stopped]),
        };
        b.seal_all_blocks();
        b.finalize(module.target_config());
    }
    finish(module, context, id, program)
}

/// Where a row's group comes from.
enum Groups {
    /// `group_ids[row]`.
    Ids(Value),
    /// The kernel's own probe of the group table.
    Lookup(Lookup),
}

/// A group lookup in the kernel's loop, over a
/// [`laminar_operators::fused_lookup::GroupLookup`] frame, whose fields
/// stay put during a call.
struct Lookup {
    key: LookupKey,
    seeds: [Value; 2],
    keys: Value,
    key_bytes: Value,
    slots: Value,
    slot_mask: Value,
}

impl Lookup {
    /// Reads the frame's fields, once.
    fn load(b: &mut FunctionBuilder, frame: Value, key: LookupKey) -> Self {
        let flags = MemFlagsData::trusted();
        let field = |b: &mut FunctionBuilder, offset: usize| {
            b.ins().load(types::I64, flags, frame, offset as i32)
        };
        // Constants, not loop values: the seeds are the process's, the
        // same for every table.
        let seeds = short_key_seeds().map(|seed| b.ins().iconst(types::I64, seed as i64));
        Lookup {
            key,
            seeds,
            keys: field(b, offset_of!(GroupLookup, keys)),
            key_bytes: field(b, offset_of!(GroupLookup, key_bytes)),
            slots: field(b, offset_of!(GroupLookup, slots)),
            slot_mask: field(b, offset_of!(GroupLookup, slot_mask)),
        }
    }

    /// Finds row `row`'s group and jumps to `found` with the row and it:
    /// a short key (a `BIGINT`, or a string of 1 to 8 bytes ending at
    /// least 8 bytes into its buffer) hashed and probed as
    /// `laminar_operators::groups` does. Any other row, and every key not
    /// in the table yet, jumps to `stop` with the row: the caller
    /// resolves it and calls again.
    fn emit(&self, b: &mut FunctionBuilder, row: Value, found: Block, stop: Block) {
        let flags = MemFlagsData::trusted();
        let (head, length) = match self.key {
            LookupKey::Int64 => {
                let at = b.ins().ishl_imm_s(row, 3);
                let at = b.ins().iadd(self.keys, at);
                let head = b.ins().load(types::I64, flags, at, 0);
                (head, b.ins().iconst(types::I64, 8))
            }
            LookupKey::Utf8 => {
                let at = b.ins().ishl_imm_s(row, 2);
                let at = b.ins().iadd(self.keys, at);
                // Offsets are never negative.
                let start = b.ins().uload32(flags, at, 0);
                let end = b.ins().uload32(flags, at, 4);
                let length = b.ins().isub(end, start);
                // 1 to 8 bytes (an empty key would shift by 64 below).
                let less = b.ins().iadd_imm_s(length, -1);
                let short = b.ins().icmp_imm_u(IntCC::UnsignedLessThan, less, 8);
                // The word ending at the key's end starts in the buffer.
                let there = b
                    .ins()
                    .icmp_imm_u(IntCC::UnsignedGreaterThanOrEqual, end, 8);
                let inline = b.ins().band(short, there);
                let read = b.create_block();
                b.ins().brif(inline, read, &[], stop, &[row.into()]);
                b.switch_to_block(read);
                let at = b.ins().iadd(self.key_bytes, end);
                // Strings have no alignment: a plain (unaligned) load.
                let word = b
                    .ins()
                    .load(types::I64, MemFlagsData::new().with_notrap(), at, -8);
                // The key is the word's high `length` bytes (little-endian):
                // shift them down by 64 - 8 * length, which is the
                // negated bit count modulo 64 (shifts take their amount
                // modulo the width), zero-filling the rest as a slot's
                // head is.
                let bits = b.ins().ishl_imm_s(length, 3);
                let shift = b.ins().ineg(bits);
                (b.ins().ushr(word, shift), length)
            }
        };
        // fold(head ^ seeds[0], (length ^ seeds[1]) | 1)
        let x = b.ins().bxor(head, self.seeds[0]);
        let y = b.ins().bxor(length, self.seeds[1]);
        let y = b.ins().bor_imm_s(y, 1);
        let low = b.ins().imul(x, y);
        let high = b.ins().umulhi(x, y);
        let hash = b.ins().bxor(low, high);
        let first = b.ins().band(hash, self.slot_mask);
        let probe = b.create_block();
        b.append_block_param(probe, types::I64);
        b.ins().jump(probe, &[first.into()]);

        b.switch_to_block(probe);
        let at = b.block_params(probe)[0];
        let offset = b.ins().ishl_imm_s(at, 4);
        let slot = b.ins().iadd(self.slots, offset);
        // id in the low half, length in the high (little-endian).
        let id_and_length = b.ins().load(types::I64, flags, slot, 0);
        let slot_head = b.ins().load(types::I64, flags, slot, 8);
        let slot_length = b.ins().ushr_imm_s(id_and_length, 32);
        let same_head = b.ins().icmp(IntCC::Equal, slot_head, head);
        let same_length = b.ins().icmp(IntCC::Equal, slot_length, length);
        let same = b.ins().band(same_head, same_length);
        let id = b.ins().band_imm_s(id_and_length, i64::from(u32::MAX));
        let other = b.create_block();
        b.ins()
            .brif(same, found, &[row.into(), id.into()], other, &[]);

        b.switch_to_block(other);
        let empty = b.ins().icmp_imm_u(IntCC::Equal, id, i64::from(u32::MAX));
        let following = b.ins().iadd_imm_s(at, 1);
        let following = b.ins().band(following, self.slot_mask);
        b.ins()
            .brif(empty, stop, &[row.into()], probe, &[following.into()]);
    }
}

/// Compiles the built function and keeps the literals its code points at.
fn finish<F: Copy>(
    mut module: cranelift_jit::JITModule,
    mut context: Context,
    id: cranelift_module::FuncId,
    program: &FusedProgram,
) -> Result<Compiled<F>, String> {
    module
        .define_function(id, &mut context)
        .map_err(|e| format!("{e:?}"))?;
    module.clear_context(&mut context);
    module.finalize_definitions().map_err(|e| e.to_string())?;
    let code = module.get_finalized_function(id);
    assert_eq!(std::mem::size_of::<F>(), std::mem::size_of::<*const u8>());
    // SAFETY: the function was built with the signature `F` spells (the
    // callers pair each build with its type), and `F` is a function
    // pointer (of a pointer's size, checked above).
    let function = unsafe { std::mem::transmute_copy::<*const u8, F>(&code) };
    let mut literals = Vec::new();
    for aggregate in &program.aggregates {
        aggregate.argument.string_literals(&mut literals);
        if let Some(filter) = &aggregate.filter {
            filter.string_literals(&mut literals);
        }
    }
    if let Some(predicate) = program.lookup.as_ref().and_then(|l| l.predicate.as_ref()) {
        predicate.string_literals(&mut literals);
    }
    Ok(Compiled {
        _code: Code::new(module, literals),
        function,
    })
}

/// Where the kernel finds each aggregate's two state vectors.
enum States {
    /// Read once before the loop.
    Loaded(Vec<(Value, Value)>),
    /// Read from the pointer list at each use.
    AtUse(Value),
}

impl States {
    /// Aggregate `j`'s primary vector, and its secondary when `secondary`.
    fn pointers(&self, b: &mut FunctionBuilder, j: usize, secondary: bool) -> (Value, Value) {
        match self {
            States::Loaded(loaded) => loaded[j],
            &States::AtUse(states) => {
                let flags = MemFlagsData::trusted();
                let at = (j * 16) as i32;
                let primary = b.ins().load(types::I64, flags, states, at);
                let secondary = if secondary {
                    b.ins().load(types::I64, flags, states, at + 8)
                } else {
                    primary
                };
                (primary, secondary)
            }
        }
    }
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
/// state vectors, the row and its group.
struct RowCode<'a> {
    inputs: &'a [LoadedInput],
    state: &'a States,
    row: Value,
    group: Value,
    dense: bool,
    str_eq: FuncRef,
}

impl RowCode<'_> {
    /// Per aggregate, evaluates the argument and `FILTER` and updates the
    /// row's group's state.
    fn emit(&self, b: &mut FunctionBuilder, program: &FusedProgram) {
        let offset = b.ins().ishl_imm_s(self.group, 3);
        for (j, aggregate) in program.aggregates.iter().enumerate() {
            let mut gen = Gen::new(&mut *b, self.inputs, self.row, self.dense, self.str_eq);
            let (value, valid) = gen.node(&aggregate.argument);
            let mut counts = valid;
            if let Some(filter) = &aggregate.filter {
                let (keep, keep_valid) = gen.node(filter);
                let keep = gen.when_valid(keep, keep_valid);
                counts = gen.b.ins().band(counts, keep);
            }
            debug_assert!(gen.bail.is_none(), "fused expressions never bail");
            let function = aggregate.kind.function;
            let (primary, secondary) = self.state.pointers(b, j, function != FusedFunction::Count);
            let primary_at = b.ins().iadd(primary, offset);
            let secondary_at = b.ins().iadd(secondary, offset);
            update(
                b,
                function,
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
    let counted = is_one(b, counts);
    let mark_seen = |b: &mut FunctionBuilder| {
        // A row known to count marks its group with a plain store.
        let seen = if counted {
            one_if_counted
        } else {
            let seen = b.ins().load(types::I64, flags, secondary_at, 0);
            b.ins().bor(seen, one_if_counted)
        };
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
