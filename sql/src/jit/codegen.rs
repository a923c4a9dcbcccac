//! Cranelift code generation: one native loop per expression, reading
//! Arrow buffers and writing one value and one validity byte per row.
//!
//! The kernel's signature (C ABI):
//!
//! ```text
//! fn(inputs: *const InputDesc, rows: u64, out_values: *mut u8, out_valid: *mut u8) -> u8
//! ```
//!
//! Values are written in Arrow's layout (booleans bit-packed, in whole
//! 64-bit words); validity one byte per row.
//!
//! It returns 1 when some valid row divides by zero or overflows a
//! division: the caller then evaluates the batch interpreted, which
//! raises DataFusion's own error (or gives its own answer). Invalid rows
//! never trap: their divisor is replaced by 1 before dividing.

use cranelift_codegen::ir::condcodes::{FloatCC, IntCC};
use std::sync::Arc;

use cranelift_codegen::ir::{
    types, AbiParam, FuncRef, InstBuilder, InstructionData, MemFlagsData, Opcode, Type,
    UserFuncName, Value, ValueDef,
};
use cranelift_codegen::settings::{self, Configurable};
use cranelift_codegen::Context;
use cranelift_frontend::{FunctionBuilder, FunctionBuilderContext};
use cranelift_jit::{JITBuilder, JITModule};
use cranelift_module::{default_libcall_names, FuncId, Linkage, Module};

use super::ir::{Arith, Cmp, Node, Program, Ty};

/// One kernel input as the kernel reads it. `valid` points at a validity
/// bitmap, or at a single 0xFF byte with `valid_mask` 0 when the column
/// has no NULLs (so the row's byte index always masks to 0). For a string
/// column, `values` points at its offsets (row 0's first) and `data` at
/// its bytes.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub(crate) struct InputDesc {
    pub values: *const u8,
    pub valid: *const u8,
    /// Bit offset of row 0 in `values` (booleans only).
    pub values_bit_offset: u64,
    pub valid_bit_offset: u64,
    pub valid_mask: u64,
    pub data: *const u8,
}

const DESC_VALUES: i32 = 0;
const DESC_VALID: i32 = 8;
const DESC_VALUES_BIT_OFFSET: i32 = 16;
const DESC_VALID_BIT_OFFSET: i32 = 24;
const DESC_VALID_MASK: i32 = 32;
const DESC_DATA: i32 = 40;
const _: () = assert!(std::mem::size_of::<InputDesc>() == 48);

/// Called by kernels for `Node::StrEq`: whether bytes `start..end` of
/// `data` equal the `literal_len` bytes at `literal`.
extern "C" fn str_eq(
    data: *const u8,
    start: i64,
    end: i64,
    literal: *const u8,
    literal_len: i64,
) -> u8 {
    if end - start != literal_len {
        return 0;
    }
    // SAFETY: the kernel passes a string column's bytes and two of its
    // offsets (Arrow keeps offsets in bounds and ascending, NULL rows
    // included), and a literal the kernel keeps alive (`Kernel::literals`).
    let (value, literal) = unsafe {
        (
            std::slice::from_raw_parts(data.add(start as usize), literal_len as usize),
            std::slice::from_raw_parts(literal, literal_len as usize),
        )
    };
    u8::from(value == literal)
}

const STR_EQ_SYMBOL: &str = "laminar_jit_str_eq";

pub(crate) type KernelFn = unsafe extern "C" fn(*const InputDesc, u64, *mut u8, *mut u8) -> u8;

/// The executable memory of compiled code, freed on drop, and the string
/// literals the code points at.
pub(super) struct Code {
    module: Option<JITModule>,
    _literals: Vec<Arc<[u8]>>,
}

impl Code {
    pub(super) fn new(module: JITModule, literals: Vec<Arc<[u8]>>) -> Self {
        Self {
            module: Some(module),
            _literals: literals,
        }
    }
}

// SAFETY: after `finalize_definitions` the module's memory is only read
// (executed) until `Drop` frees it.
unsafe impl Send for Code {}
unsafe impl Sync for Code {}

impl Drop for Code {
    fn drop(&mut self) {
        if let Some(module) = self.module.take() {
            // SAFETY: the code is dropped only once nothing can call it
            // (it is owned by what calls it).
            unsafe { module.free_memory() };
        }
    }
}

/// A compiled kernel and the executable memory holding it.
pub(crate) struct Kernel {
    _code: Code,
    pub function: KernelFn,
}

impl std::fmt::Debug for Kernel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Kernel")
    }
}

fn clif(ty: Ty) -> Type {
    match ty {
        Ty::Bool | Ty::I8 | Ty::U8 => types::I8,
        Ty::I16 | Ty::U16 => types::I16,
        Ty::I32 | Ty::U32 => types::I32,
        Ty::I64 | Ty::U64 => types::I64,
        Ty::F32 => types::F32,
        Ty::F64 => types::F64,
    }
}

/// Both kernels of an expression: `general` reads validity bitmaps;
/// `dense` runs when no input has a NULL in the batch (the usual case),
/// reads no bitmaps and, when nothing in the expression can make a NULL
/// of valid inputs, writes no validity either.
#[derive(Debug)]
pub(crate) struct Kernels {
    pub general: Kernel,
    pub dense: Kernel,
    /// Whether `dense` writes validity bytes.
    pub dense_writes_validity: bool,
}

/// Compiles `program` into its two kernels.
pub(crate) fn compile(program: &Program) -> Result<Kernels, String> {
    let dense_writes_validity = program.root.may_make_null();
    Ok(Kernels {
        general: compile_one(program, false, true)?,
        dense: compile_one(program, true, dense_writes_validity)?,
        dense_writes_validity,
    })
}

/// One kernel: `dense` treats every input as valid; without
/// `writes_validity` the output validity is not stored.
fn compile_one(program: &Program, dense: bool, writes_validity: bool) -> Result<Kernel, String> {
    let error = |e: &dyn std::fmt::Display| e.to_string();
    let (mut module, str_eq_id) = new_module()?;
    let pointer = module.target_config().pointer_type();
    let (id, mut context) = declare(
        &mut module,
        "kernel",
        &[pointer, types::I64, pointer, pointer],
        Some(types::I8),
    )?;
    let mut builder_context = FunctionBuilderContext::new();
    {
        let mut b = FunctionBuilder::new(&mut context.func, &mut builder_context);
        let str_eq = module.declare_func_in_func(str_eq_id, b.func);
        let entry = b.create_block();
        let header = b.create_block();
        let body = b.create_block();
        let exit = b.create_block();
        b.append_block_params_for_function_params(entry);
        b.switch_to_block(entry);
        let params = b.block_params(entry).to_vec();
        let (descs, rows, out_values, out_valid) = (params[0], params[1], params[2], params[3]);
        let flags = MemFlagsData::trusted();
        let inputs = load_inputs(&mut b, descs, &program.inputs);
        let zero = b.ins().iconst(types::I64, 0);
        let no_bail = b.ins().iconst(types::I8, 0);
        // Loop state: row, bail flag, and (boolean outputs) the 64-bit word
        // of result bits being filled.
        b.ins()
            .jump(header, &[zero.into(), no_bail.into(), zero.into()]);

        b.append_block_param(header, types::I64);
        b.append_block_param(header, types::I8);
        b.append_block_param(header, types::I64);
        b.switch_to_block(header);
        let row = b.block_params(header)[0];
        let bail = b.block_params(header)[1];
        let word = b.block_params(header)[2];
        let more = b.ins().icmp(IntCC::UnsignedLessThan, row, rows);
        b.ins().brif(more, body, &[], exit, &[bail.into()]);

        b.switch_to_block(body);
        let mut gen = Gen::new(&mut b, &inputs, row, dense, str_eq);
        let (value, valid) = gen.node(&program.root);
        let row_bail = gen.bail;
        let out_ty = program.output_ty();
        let next_word = if out_ty == Ty::Bool {
            // Bit-packed as Arrow holds booleans: the word is stored every
            // row (the same cache line) and restarts after bit 63.
            let bit = b.ins().uextend(types::I64, value);
            let position = b.ins().band_imm_s(row, 63);
            let shifted = b.ins().ishl(bit, position);
            let filled = b.ins().bor(word, shifted);
            let word_index = b.ins().ushr_imm_s(row, 6);
            let offset = b.ins().ishl_imm_s(word_index, 3);
            let at = b.ins().iadd(out_values, offset);
            b.ins().store(flags, filled, at, 0);
            let last = b.ins().icmp_imm_s(IntCC::Equal, position, 63);
            b.ins().select(last, zero, filled)
        } else {
            let width = out_ty.bytes() as i64;
            let offset = if width == 1 {
                row
            } else {
                b.ins().imul_imm_s(row, width)
            };
            let value_at = b.ins().iadd(out_values, offset);
            b.ins().store(flags, value, value_at, 0);
            word
        };
        if writes_validity {
            let valid_at = b.ins().iadd(out_valid, row);
            b.ins().store(flags, valid, valid_at, 0);
        }
        let bail = match row_bail {
            Some(row_bail) => b.ins().bor(bail, row_bail),
            None => bail,
        };
        let next = b.ins().iadd_imm_s(row, 1);
        b.ins()
            .jump(header, &[next.into(), bail.into(), next_word.into()]);

        b.append_block_param(exit, types::I8);
        b.switch_to_block(exit);
        let result = b.block_params(exit)[0];
        b.ins().return_(&[result]);
        b.seal_all_blocks();
        b.finalize(module.target_config());
    }
    module
        .define_function(id, &mut context)
        .map_err(|e| format!("{e:?}"))?;
    module.clear_context(&mut context);
    module.finalize_definitions().map_err(|e| error(&e))?;
    let code = module.get_finalized_function(id);
    // SAFETY: the function was built with exactly this signature.
    let function = unsafe { std::mem::transmute::<*const u8, KernelFn>(code) };
    let mut literals = Vec::new();
    program.root.string_literals(&mut literals);
    Ok(Kernel {
        _code: Code::new(module, literals),
        function,
    })
}

/// A JIT module for this CPU, with the string equality helper declared.
pub(super) fn new_module() -> Result<(JITModule, FuncId), String> {
    let error = |e: &dyn std::fmt::Display| e.to_string();
    let mut flags = settings::builder();
    flags.set("opt_level", "speed").map_err(|e| error(&e))?;
    flags
        .set("use_colocated_libcalls", "false")
        .map_err(|e| error(&e))?;
    flags.set("is_pic", "false").map_err(|e| error(&e))?;
    let isa = cranelift_native::builder()
        .map_err(|e| error(&e))?
        .finish(settings::Flags::new(flags))
        .map_err(|e| error(&e))?;
    let mut jit = JITBuilder::with_isa(isa, default_libcall_names());
    jit.symbol(STR_EQ_SYMBOL, str_eq as *const u8);
    let mut module = JITModule::new(jit);
    let pointer = module.target_config().pointer_type();
    let mut str_eq_signature = module.make_signature();
    for param in [pointer, types::I64, types::I64, pointer, types::I64] {
        str_eq_signature.params.push(AbiParam::new(param));
    }
    str_eq_signature.returns.push(AbiParam::new(types::I8));
    let str_eq_id = module
        .declare_function(STR_EQ_SYMBOL, Linkage::Import, &str_eq_signature)
        .map_err(|e| error(&e))?;
    Ok((module, str_eq_id))
}

/// Declares the kernel function `name` (C ABI) and a context to build it in.
pub(super) fn declare(
    module: &mut JITModule,
    name: &str,
    params: &[Type],
    returns: Option<Type>,
) -> Result<(FuncId, Context), String> {
    let mut signature = module.make_signature();
    signature
        .params
        .extend(params.iter().map(|&p| AbiParam::new(p)));
    signature.returns.extend(returns.map(AbiParam::new));
    let id = module
        .declare_function(name, Linkage::Local, &signature)
        .map_err(|e| e.to_string())?;
    let mut context: Context = module.make_context();
    context.func.signature = signature;
    context.func.name = UserFuncName::user(0, id.as_u32());
    Ok((id, context))
}

/// Flags of a load from a kernel's input descriptors or value buffers,
/// which nothing writes during a call and whose addresses are valid
/// wherever their operands are (a row's value at any row below `rows`).
/// Cranelift treats such a load as a pure value: one row's value read
/// twice (by two arguments, say) is read once, and a descriptor field no
/// code uses is not read at all. It places a pure value where it is
/// used, hoisting only what does not change in a loop. Bitmap reads keep
/// plain flags: the selection's is valid only behind its null check.
pub(super) fn input_flags() -> MemFlagsData {
    MemFlagsData::trusted().with_readonly().with_can_move()
}

/// Reads the loop-invariant fields of every input's descriptor, once.
pub(super) fn load_inputs(
    b: &mut FunctionBuilder,
    descs: Value,
    inputs: &[(usize, arrow::datatypes::DataType)],
) -> Vec<LoadedInput> {
    let flags = input_flags();
    inputs
        .iter()
        .enumerate()
        .map(|(slot, (_, data_type))| {
            let base = (slot * std::mem::size_of::<InputDesc>()) as i32;
            let load = |b: &mut FunctionBuilder, at: i32| {
                b.ins().load(types::I64, flags, descs, base + at)
            };
            LoadedInput {
                // `None`: a string column (`Node::StrEq` reads it).
                ty: Ty::of(data_type),
                large_offsets: *data_type == arrow::datatypes::DataType::LargeUtf8,
                values: load(b, DESC_VALUES),
                valid: load(b, DESC_VALID),
                values_bit_offset: load(b, DESC_VALUES_BIT_OFFSET),
                valid_bit_offset: load(b, DESC_VALID_BIT_OFFSET),
                valid_mask: load(b, DESC_VALID_MASK),
                data: load(b, DESC_DATA),
            }
        })
        .collect()
}

pub(super) struct LoadedInput {
    ty: Option<Ty>,
    /// A `LargeUtf8` column: 64-bit offsets.
    large_offsets: bool,
    values: Value,
    valid: Value,
    values_bit_offset: Value,
    valid_bit_offset: Value,
    valid_mask: Value,
    data: Value,
}

/// Generates one row's code.
pub(super) struct Gen<'a, 'b> {
    pub b: &'a mut FunctionBuilder<'b>,
    pub inputs: &'a [LoadedInput],
    pub row: Value,
    /// 1 when this row must hand the batch back (an I8), if any node can.
    pub bail: Option<Value>,
    /// Every input is valid (no bitmap is read).
    pub dense: bool,
    /// The string equality helper.
    pub str_eq: FuncRef,
}

/// Whether `value`, in the function `b` builds, is the constant 1: for a
/// validity, one known when the kernel is built (a dense kernel's inputs,
/// a literal). Cranelift folds `band(1, 1)` but not `bor(x, 1)` on a
/// boolean (it cannot know the other bits of `x` are 0), so three-valued
/// logic over known validities is skipped by asking this instead.
pub fn is_one(b: &FunctionBuilder, value: Value) -> bool {
    let dfg = &b.func.dfg;
    match dfg.value_def(value) {
        ValueDef::Result(inst, _) => matches!(
            dfg.insts[inst],
            InstructionData::UnaryImm { opcode: Opcode::Iconst, imm } if imm.bits() == 1
        ),
        _ => false,
    }
}

impl<'a, 'b> Gen<'a, 'b> {
    /// Code for row `row` over `inputs`, with no bail yet.
    pub fn new(
        b: &'a mut FunctionBuilder<'b>,
        inputs: &'a [LoadedInput],
        row: Value,
        dense: bool,
        str_eq: FuncRef,
    ) -> Self {
        Gen {
            b,
            inputs,
            row,
            bail: None,
            dense,
            str_eq,
        }
    }

    /// Bit `index` of the bitmap at `base` (index masked by `mask` first,
    /// as a byte index), as an I8 0/1.
    pub fn bit(&mut self, base: Value, bit_offset: Value, mask: Option<Value>) -> Value {
        let flags = MemFlagsData::trusted();
        let index = self.b.ins().iadd(bit_offset, self.row);
        let mut byte_index = self.b.ins().ushr_imm_s(index, 3);
        if let Some(mask) = mask {
            byte_index = self.b.ins().band(byte_index, mask);
        }
        let at = self.b.ins().iadd(base, byte_index);
        let byte = self.b.ins().load(types::I8, flags, at, 0);
        let shift = self.b.ins().band_imm_s(index, 7);
        let shift = self.b.ins().ireduce(types::I8, shift);
        let shifted = self.b.ins().ushr(byte, shift);
        self.b.ins().band_imm_s(shifted, 1)
    }

    pub fn node(&mut self, node: &Node) -> (Value, Value) {
        match node {
            Node::Input { slot, ty } => {
                let input = &self.inputs[*slot];
                let (values, valid, values_off, valid_off, mask) = (
                    input.values,
                    input.valid,
                    input.values_bit_offset,
                    input.valid_bit_offset,
                    input.valid_mask,
                );
                debug_assert_eq!(input.ty, Some(*ty));
                let value = if *ty == Ty::Bool {
                    self.bit(values, values_off, None)
                } else {
                    let width = ty.bytes() as i64;
                    let offset = if width == 1 {
                        self.row
                    } else {
                        self.b.ins().imul_imm_s(self.row, width)
                    };
                    let at = self.b.ins().iadd(values, offset);
                    self.b.ins().load(clif(*ty), input_flags(), at, 0)
                };
                let valid = if self.dense {
                    self.b.ins().iconst(types::I8, 1)
                } else {
                    self.bit(valid, valid_off, Some(mask))
                };
                (value, valid)
            }
            Node::Const { bits, ty } => {
                let raw = bits.unwrap_or(0);
                let value = match ty {
                    Ty::F32 => self.b.ins().f32const(f32::from_bits(raw as u32)),
                    Ty::F64 => self.b.ins().f64const(f64::from_bits(raw)),
                    _ => self.b.ins().iconst(clif(*ty), raw as i64),
                };
                let valid = self.b.ins().iconst(types::I8, i64::from(bits.is_some()));
                (value, valid)
            }
            Node::Arith {
                op,
                ty,
                left,
                right,
            } => {
                let (l, lv) = self.node(left);
                let (r, rv) = self.node(right);
                let valid = self.both_valid(lv, rv);
                (self.arith(*op, *ty, l, r, valid), valid)
            }
            Node::Cmp {
                op,
                ty,
                left,
                right,
            } => {
                let (l, lv) = self.node(left);
                let (r, rv) = self.node(right);
                let valid = self.both_valid(lv, rv);
                let value = match (is_number(left), is_number(right)) {
                    (_, true) => self.compare_with_number(*op, *ty, l, r),
                    (true, false) => self.compare_with_number(op.flipped(), *ty, r, l),
                    (false, false) => self.compare(*op, *ty, l, r),
                };
                (value, valid)
            }
            Node::Distinct {
                negated,
                ty,
                left,
                right,
            } => {
                let (l, lv) = self.node(left);
                let (r, rv) = self.node(right);
                // Distinct when exactly one is NULL, or both are valid and
                // differ.
                let differ = self.compare(Cmp::NotEq, *ty, l, r);
                let both = self.both_valid(lv, rv);
                let both_differ = self.b.ins().band(both, differ);
                let one_null = self.b.ins().bxor(lv, rv);
                let mut distinct = self.b.ins().bor(one_null, both_differ);
                if *negated {
                    distinct = self.b.ins().bxor_imm_s(distinct, 1);
                }
                (distinct, self.b.ins().iconst(types::I8, 1))
            }
            Node::And(left, right) => {
                let (l, lv) = self.node(left);
                let (r, rv) = self.node(right);
                let both = self.both_valid(lv, rv);
                if is_one(self.b, both) {
                    return (self.b.ins().band(l, r), both);
                }
                // Known false when either side is a valid false.
                let l_false = self.valid_false(l, lv);
                let r_false = self.valid_false(r, rv);
                let known_false = self.b.ins().bor(l_false, r_false);
                let valid = self.b.ins().bor(known_false, both);
                let values = self.b.ins().band(l, r);
                let value = self.b.ins().band(values, both);
                (value, valid)
            }
            Node::Or(left, right) => {
                let (l, lv) = self.node(left);
                let (r, rv) = self.node(right);
                let both = self.both_valid(lv, rv);
                if is_one(self.b, both) {
                    return (self.b.ins().bor(l, r), both);
                }
                let l_true = self.b.ins().band(l, lv);
                let r_true = self.b.ins().band(r, rv);
                let known_true = self.b.ins().bor(l_true, r_true);
                let valid = self.b.ins().bor(known_true, both);
                (known_true, valid)
            }
            Node::StrEq {
                slot,
                literal,
                negated,
            } => {
                let input = &self.inputs[*slot];
                let flags = MemFlagsData::trusted();
                let (width, offset_type) = if input.large_offsets {
                    (8, types::I64)
                } else {
                    (4, types::I32)
                };
                let at = self.b.ins().imul_imm_s(self.row, width);
                let at = self.b.ins().iadd(input.values, at);
                let mut start = self.b.ins().load(offset_type, flags, at, 0);
                let mut end = self.b.ins().load(offset_type, flags, at, width as i32);
                if !input.large_offsets {
                    start = self.b.ins().sextend(types::I64, start);
                    end = self.b.ins().sextend(types::I64, end);
                }
                let equal = self.string_equals(input.data, start, end, literal);
                let value = if *negated {
                    self.b.ins().bxor_imm_s(equal, 1)
                } else {
                    equal
                };
                let valid = if self.dense {
                    self.b.ins().iconst(types::I8, 1)
                } else {
                    let (valid, offset, mask) =
                        (input.valid, input.valid_bit_offset, input.valid_mask);
                    self.bit(valid, offset, Some(mask))
                };
                (value, valid)
            }
            Node::Not(arg) => {
                let (v, valid) = self.node(arg);
                (self.b.ins().bxor_imm_s(v, 1), valid)
            }
            Node::IsNull { negated, arg } => {
                let (_, valid) = self.node(arg);
                let value = if *negated {
                    valid
                } else {
                    self.b.ins().bxor_imm_s(valid, 1)
                };
                (value, self.b.ins().iconst(types::I8, 1))
            }
            Node::Neg { ty, arg } => {
                let (v, valid) = self.node(arg);
                let value = if ty.is_float() {
                    self.float_neg(*ty, v)
                } else {
                    self.b.ins().ineg(v)
                };
                (value, valid)
            }
            Node::Cast { from, to, arg } => {
                let (v, valid) = self.node(arg);
                let value = match (from.is_float(), to.is_float()) {
                    (false, false) if from.is_signed() => self.b.ins().sextend(clif(*to), v),
                    (false, false) => self.b.ins().uextend(clif(*to), v),
                    (false, true) if from.is_signed() => self.b.ins().fcvt_from_sint(clif(*to), v),
                    (false, true) => self.b.ins().fcvt_from_uint(clif(*to), v),
                    (true, true) => self.b.ins().fpromote(clif(*to), v),
                    (true, false) => unreachable!("narrowing casts are not lowered"),
                };
                (value, valid)
            }
            Node::Case {
                ty,
                whens,
                otherwise,
            } => {
                // From the last branch up: each true condition (valid and
                // set) takes its value over what follows.
                let (mut value, mut valid) = match otherwise {
                    Some(otherwise) => self.node(otherwise),
                    None => {
                        let zero = match ty {
                            Ty::F32 => self.b.ins().f32const(0.0),
                            Ty::F64 => self.b.ins().f64const(0.0),
                            _ => self.b.ins().iconst(clif(*ty), 0),
                        };
                        (zero, self.b.ins().iconst(types::I8, 0))
                    }
                };
                for (when, then) in whens.iter().rev() {
                    let (c, cv) = self.node(when);
                    let taken = self.b.ins().band(c, cv);
                    let (t, tv) = self.node(then);
                    value = self.b.ins().select(taken, t, value);
                    valid = self.b.ins().select(taken, tv, valid);
                }
                (value, valid)
            }
            Node::Scale { factor, arg } => {
                let (v, valid) = self.node(arg);
                let factor = self.b.ins().iconst(types::I64, *factor);
                let (value, overflow) = self.b.ins().smul_overflow(v, factor);
                let row_bail = self.b.ins().band(overflow, valid);
                self.add_bail(row_bail);
                (value, valid)
            }
        }
    }

    /// 1 when bytes `start..end` of `data` are `literal`. The bytes are
    /// read only when the length matches (so never past the column's
    /// end); a literal of up to 16 bytes is compared inline, 8, 4, 2 and
    /// 1 bytes at a time against constants, a longer one by `str_eq`.
    fn string_equals(&mut self, data: Value, start: Value, end: Value, literal: &[u8]) -> Value {
        let length = self.b.ins().isub(end, start);
        let same_length = self
            .b
            .ins()
            .icmp_imm_s(IntCC::Equal, length, literal.len() as i64);
        let compare = self.b.create_block();
        let merge = self.b.create_block();
        self.b.append_block_param(merge, types::I8);
        let no = self.b.ins().iconst(types::I8, 0);
        self.b
            .ins()
            .brif(same_length, compare, &[], merge, &[no.into()]);
        self.b.switch_to_block(compare);
        let equal = if literal.len() <= 16 {
            let at = self.b.ins().iadd(data, start);
            let mut equal = self.b.ins().iconst(types::I8, 1);
            let mut offset = 0;
            for width in [8usize, 4, 2, 1] {
                while literal.len() - offset >= width {
                    let mut b = [0u8; 8];
                    b[..width].copy_from_slice(&literal[offset..offset + width]);
                    // The load below is in native byte order: so is the
                    // constant.
                    let (ty, constant) = match width {
                        8 => (types::I64, u64::from_ne_bytes(b) as i64),
                        4 => (
                            types::I32,
                            i64::from(u32::from_ne_bytes([b[0], b[1], b[2], b[3]])),
                        ),
                        2 => (types::I16, i64::from(u16::from_ne_bytes([b[0], b[1]]))),
                        _ => (types::I8, i64::from(b[0])),
                    };
                    // Strings have no alignment: a plain (unaligned) load.
                    let value =
                        self.b
                            .ins()
                            .load(ty, MemFlagsData::new().with_notrap(), at, offset as i32);
                    let same = self.b.ins().icmp_imm_s(IntCC::Equal, value, constant);
                    equal = self.b.ins().band(equal, same);
                    offset += width;
                }
            }
            equal
        } else {
            let literal_at = self.b.ins().iconst(types::I64, literal.as_ptr() as i64);
            let literal_len = self.b.ins().iconst(types::I64, literal.len() as i64);
            let call = self
                .b
                .ins()
                .call(self.str_eq, &[data, start, end, literal_at, literal_len]);
            self.b.inst_results(call)[0]
        };
        self.b.ins().jump(merge, &[equal.into()]);
        self.b.switch_to_block(merge);
        self.b.block_params(merge)[0]
    }

    /// `-v` for a float, as a flip of the sign bit. Not `fneg`: Cranelift
    /// rewrites `fneg(a) * fneg(b)` to `a * b`, which gives a NaN the other
    /// sign than DataFusion's `-a * -b`, and NaN signs order differently
    /// in comparisons.
    fn float_neg(&mut self, ty: Ty, v: Value) -> Value {
        let (int, sign) = if ty == Ty::F32 {
            (types::I32, i64::from(i32::MIN))
        } else {
            (types::I64, i64::MIN)
        };
        let bits = self.b.ins().bitcast(int, MemFlagsData::new(), v);
        let flipped = self.b.ins().bxor_imm_s(bits, sign);
        self.b.ins().bitcast(clif(ty), MemFlagsData::new(), flipped)
    }

    /// Makes the row hand the batch back when `row_bail` is 1.
    fn add_bail(&mut self, row_bail: Value) {
        self.bail = Some(match self.bail {
            Some(previous) => self.b.ins().bor(previous, row_bail),
            None => row_bail,
        });
    }

    /// Both validities: `lv & rv`, or one of them when the other is
    /// known true.
    fn both_valid(&mut self, lv: Value, rv: Value) -> Value {
        if is_one(self.b, lv) {
            rv
        } else if is_one(self.b, rv) {
            lv
        } else {
            self.b.ins().band(lv, rv)
        }
    }

    /// `value` where `valid`, false elsewhere.
    pub fn when_valid(&mut self, value: Value, valid: Value) -> Value {
        if is_one(self.b, valid) {
            value
        } else {
            self.b.ins().band(value, valid)
        }
    }

    /// 1 when `value` is a valid false.
    fn valid_false(&mut self, value: Value, valid: Value) -> Value {
        let not = self.b.ins().bxor_imm_s(value, 1);
        self.b.ins().band(not, valid)
    }

    fn arith(&mut self, op: Arith, ty: Ty, l: Value, r: Value, valid: Value) -> Value {
        if ty.is_float() {
            return match op {
                Arith::Add => self.b.ins().fadd(l, r),
                Arith::Sub => self.b.ins().fsub(l, r),
                Arith::Mul => self.b.ins().fmul(l, r),
                Arith::Div => self.b.ins().fdiv(l, r),
                Arith::Rem => unreachable!("float remainder is not lowered"),
            };
        }
        match op {
            Arith::Add => self.b.ins().iadd(l, r),
            Arith::Sub => self.b.ins().isub(l, r),
            Arith::Mul => self.b.ins().imul(l, r),
            Arith::Div | Arith::Rem => {
                let t = clif(ty);
                let mut bad = self.b.ins().icmp_imm_s(IntCC::Equal, r, 0);
                if ty.is_signed() {
                    let min = match ty {
                        Ty::I8 => i64::from(i8::MIN),
                        Ty::I16 => i64::from(i16::MIN),
                        Ty::I32 => i64::from(i32::MIN),
                        _ => i64::MIN,
                    };
                    let l_min = self.b.ins().icmp_imm_s(IntCC::Equal, l, min);
                    let r_minus_one = self.b.ins().icmp_imm_s(IntCC::Equal, r, -1);
                    let overflow = self.b.ins().band(l_min, r_minus_one);
                    bad = self.b.ins().bor(bad, overflow);
                }
                let one = self.b.ins().iconst(t, 1);
                let divisor = self.b.ins().select(bad, one, r);
                let row_bail = self.b.ins().band(bad, valid);
                self.add_bail(row_bail);
                match (op, ty.is_signed()) {
                    (Arith::Div, true) => self.b.ins().sdiv(l, divisor),
                    (Arith::Div, false) => self.b.ins().udiv(l, divisor),
                    (_, true) => self.b.ins().srem(l, divisor),
                    (_, false) => self.b.ins().urem(l, divisor),
                }
            }
        }
    }

    /// A comparison as an I8 0/1. Floats compare as DataFusion does: in
    /// IEEE total order (NaN equals NaN and sorts last) with -0.0 = 0.0.
    fn compare(&mut self, op: Cmp, ty: Ty, l: Value, r: Value) -> Value {
        let (l, r, signed) = if ty.is_float() {
            (
                self.total_order_key(ty, l),
                self.total_order_key(ty, r),
                true,
            )
        } else {
            (l, r, ty.is_signed())
        };
        let cc = match (op, signed) {
            (Cmp::Eq, _) => IntCC::Equal,
            (Cmp::NotEq, _) => IntCC::NotEqual,
            (Cmp::Lt, true) => IntCC::SignedLessThan,
            (Cmp::LtEq, true) => IntCC::SignedLessThanOrEqual,
            (Cmp::Gt, true) => IntCC::SignedGreaterThan,
            (Cmp::GtEq, true) => IntCC::SignedGreaterThanOrEqual,
            (Cmp::Lt, false) => IntCC::UnsignedLessThan,
            (Cmp::LtEq, false) => IntCC::UnsignedLessThanOrEqual,
            (Cmp::Gt, false) => IntCC::UnsignedGreaterThan,
            (Cmp::GtEq, false) => IntCC::UnsignedGreaterThanOrEqual,
        };
        self.b.ins().icmp(cc, l, r)
    }

    /// `x op c` for a float `c` that is not NaN, as [`Gen::compare`]
    /// computes it in fewer steps: against a number, the total order is
    /// IEEE's (which has -0.0 = 0.0 too) except that a NaN `x` sorts
    /// above every number, or below with its sign bit set. The
    /// comparison of a column with a literal (`price > 101.0`) is the
    /// usual `WHERE`.
    fn compare_with_number(&mut self, op: Cmp, ty: Ty, x: Value, c: Value) -> Value {
        let ieee = |b: &mut FunctionBuilder, cc: FloatCC| b.ins().fcmp(cc, x, c);
        let nan_below = |b: &mut FunctionBuilder, below: bool| {
            let nan = b.ins().fcmp(FloatCC::Unordered, x, x);
            let int = if ty == Ty::F32 {
                types::I32
            } else {
                types::I64
            };
            let raw = b.ins().bitcast(int, MemFlagsData::new(), x);
            let cc = if below {
                IntCC::SignedLessThan
            } else {
                IntCC::SignedGreaterThanOrEqual
            };
            let side = b.ins().icmp_imm_s(cc, raw, 0);
            b.ins().band(nan, side)
        };
        let (cc, nan_sorts_below) = match op {
            Cmp::Eq => return ieee(&mut *self.b, FloatCC::Equal),
            // Unordered or unequal: a NaN differs from every number.
            Cmp::NotEq => return ieee(&mut *self.b, FloatCC::NotEqual),
            Cmp::Lt => (FloatCC::LessThan, true),
            Cmp::LtEq => (FloatCC::LessThanOrEqual, true),
            Cmp::Gt => (FloatCC::GreaterThan, false),
            Cmp::GtEq => (FloatCC::GreaterThanOrEqual, false),
        };
        let ordered = ieee(&mut *self.b, cc);
        let nan = nan_below(&mut *self.b, nan_sorts_below);
        self.b.ins().bor(ordered, nan)
    }

    /// The signed integer whose order is the float's total order (as
    /// `f64::total_cmp` computes it), after -0.0 became 0.0: DataFusion
    /// normalizes zeros before Arrow's total-order comparison, so that
    /// `-0.0 = 0.0` while NaN still equals NaN.
    fn total_order_key(&mut self, ty: Ty, v: Value) -> Value {
        let (int, bits) = if ty == Ty::F32 {
            (types::I32, 31)
        } else {
            (types::I64, 63)
        };
        let zero = if ty == Ty::F32 {
            self.b.ins().f32const(0.0)
        } else {
            self.b.ins().f64const(0.0)
        };
        let is_zero = self.b.ins().fcmp(FloatCC::Equal, v, zero);
        let v = self.b.ins().select(is_zero, zero, v);
        let raw = self.b.ins().bitcast(int, MemFlagsData::new(), v);
        let sign = self.b.ins().sshr_imm_s(raw, bits);
        let mask = self.b.ins().ushr_imm_s(sign, 1);
        self.b.ins().bxor(raw, mask)
    }
}

/// A float literal that is a number (not NULL, not NaN):
/// [`Gen::compare_with_number`] applies.
fn is_number(node: &Node) -> bool {
    match node {
        Node::Const {
            bits: Some(bits),
            ty: Ty::F64,
        } => !f64::from_bits(*bits).is_nan(),
        Node::Const {
            bits: Some(bits),
            ty: Ty::F32,
        } => !f32::from_bits(*bits as u32).is_nan(),
        _ => false,
    }
}
