//! The compiler's input: a typed expression tree lowered from a DataFusion
//! `PhysicalExpr`, or `None` where the compiler does not (yet) support a
//! node. Only expressions whose compiled result can be bit-identical to
//! DataFusion's are accepted: arithmetic wraps like DataFusion's default
//! (`add_wrapping`, ...), integer division and remainder hand any row that
//! could fail back to the interpreter, floats compare in IEEE total order
//! after -0.0 becomes 0.0 (as DataFusion compares), casts are widening
//! only (timestamps to finer units hand overflowing rows back).

use std::sync::Arc;

use arrow::datatypes::{DataType, Schema, TimeUnit};
use datafusion::common::ScalarValue;
use datafusion::logical_expr::Operator;
use datafusion::physical_expr::expressions::{
    BinaryExpr, CaseExpr, CastExpr, Column, IsNotNullExpr, IsNullExpr, Literal, NegativeExpr,
    NotExpr,
};
use datafusion::physical_expr::PhysicalExpr;

/// How a value is held in a register and in its Arrow buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Ty {
    /// One bit in Arrow, one byte (0 or 1) in a register.
    Bool,
    I8,
    I16,
    I32,
    I64,
    U8,
    U16,
    U32,
    U64,
    F32,
    F64,
}

impl Ty {
    /// The storage class of an Arrow type (temporal types are integers).
    pub fn of(data_type: &DataType) -> Option<Ty> {
        Some(match data_type {
            DataType::Boolean => Ty::Bool,
            DataType::Int8 => Ty::I8,
            DataType::Int16 => Ty::I16,
            DataType::Int32 | DataType::Date32 | DataType::Time32(_) => Ty::I32,
            DataType::Int64
            | DataType::Date64
            | DataType::Time64(_)
            | DataType::Timestamp(..)
            | DataType::Duration(_) => Ty::I64,
            DataType::UInt8 => Ty::U8,
            DataType::UInt16 => Ty::U16,
            DataType::UInt32 => Ty::U32,
            DataType::UInt64 => Ty::U64,
            DataType::Float32 => Ty::F32,
            DataType::Float64 => Ty::F64,
            _ => return None,
        })
    }

    /// Bytes per value in an Arrow buffer (booleans are bit-packed).
    pub fn bytes(self) -> usize {
        match self {
            Ty::Bool | Ty::I8 | Ty::U8 => 1,
            Ty::I16 | Ty::U16 => 2,
            Ty::I32 | Ty::U32 | Ty::F32 => 4,
            Ty::I64 | Ty::U64 | Ty::F64 => 8,
        }
    }

    pub fn is_float(self) -> bool {
        matches!(self, Ty::F32 | Ty::F64)
    }

    pub fn is_signed(self) -> bool {
        matches!(self, Ty::I8 | Ty::I16 | Ty::I32 | Ty::I64)
    }

    pub fn is_unsigned(self) -> bool {
        matches!(self, Ty::U8 | Ty::U16 | Ty::U32 | Ty::U64)
    }
}

/// Whether arithmetic on `data_type` is plain machine arithmetic (not
/// dates, timestamps or durations, whose operators mean other things).
fn is_numeric(data_type: &DataType) -> bool {
    data_type.is_integer() || matches!(data_type, DataType::Float32 | DataType::Float64)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Arith {
    Add,
    Sub,
    Mul,
    Div,
    Rem,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cmp {
    Eq,
    NotEq,
    Lt,
    LtEq,
    Gt,
    GtEq,
}

impl Cmp {
    /// The comparison with its operands swapped: `a op b` is
    /// `b op.flipped() a`.
    pub fn flipped(self) -> Cmp {
        match self {
            Cmp::Lt => Cmp::Gt,
            Cmp::LtEq => Cmp::GtEq,
            Cmp::Gt => Cmp::Lt,
            Cmp::GtEq => Cmp::LtEq,
            same => same,
        }
    }
}

/// A node of a compiled expression. Every node yields a value and a
/// validity flag per row.
#[derive(Debug, Clone)]
pub(crate) enum Node {
    /// Kernel input `slot` (a batch column).
    Input {
        slot: usize,
        ty: Ty,
    },
    /// A literal: its bits (floats as their IEEE bits), `None` for NULL.
    Const {
        bits: Option<u64>,
        ty: Ty,
    },
    Arith {
        op: Arith,
        ty: Ty,
        left: Box<Node>,
        right: Box<Node>,
    },
    /// A comparison of two operands of type `ty`; yields a boolean.
    Cmp {
        op: Cmp,
        ty: Ty,
        left: Box<Node>,
        right: Box<Node>,
    },
    /// `IS [NOT] DISTINCT FROM`: never NULL.
    Distinct {
        negated: bool,
        ty: Ty,
        left: Box<Node>,
        right: Box<Node>,
    },
    /// Kleene AND / OR.
    And(Box<Node>, Box<Node>),
    Or(Box<Node>, Box<Node>),
    Not(Box<Node>),
    /// `IS NULL` (`negated`: `IS NOT NULL`); never NULL.
    IsNull {
        negated: bool,
        arg: Box<Node>,
    },
    Neg {
        ty: Ty,
        arg: Box<Node>,
    },
    /// A widening cast.
    Cast {
        from: Ty,
        to: Ty,
        arg: Box<Node>,
    },
    /// A timestamp to a finer unit: times `factor`; a row that overflows
    /// hands the batch back (Arrow's cast raises an error there).
    Scale {
        factor: i64,
        arg: Box<Node>,
    },
    /// `column = 'literal'` (`negated`: `<>`) over a `Utf8` or `LargeUtf8`
    /// input: byte equality, as Arrow's comparison kernels; NULL where the
    /// column is NULL.
    StrEq {
        slot: usize,
        literal: Arc<[u8]>,
        negated: bool,
    },
    /// `CASE WHEN c THEN v ... [ELSE e] END`: the value of the first
    /// branch whose condition is true (a NULL condition is not), else
    /// `otherwise` (NULL without one). Every branch is computed for every
    /// row, so a branch that would fail on a row (an integer division by
    /// zero) hands the batch back even where its condition is false: the
    /// interpreter, which evaluates branches lazily, then answers.
    Case {
        ty: Ty,
        whens: Vec<(Node, Node)>,
        otherwise: Option<Box<Node>>,
    },
}

impl Node {
    /// Every string literal in the tree (compiled code points at them).
    pub fn string_literals(&self, into: &mut Vec<Arc<[u8]>>) {
        match self {
            Node::StrEq { literal, .. } => into.push(Arc::clone(literal)),
            Node::Input { .. } | Node::Const { .. } => {}
            Node::Arith { left, right, .. }
            | Node::Cmp { left, right, .. }
            | Node::Distinct { left, right, .. }
            | Node::And(left, right)
            | Node::Or(left, right) => {
                left.string_literals(into);
                right.string_literals(into);
            }
            Node::Not(arg)
            | Node::IsNull { arg, .. }
            | Node::Neg { arg, .. }
            | Node::Cast { arg, .. }
            | Node::Scale { arg, .. } => arg.string_literals(into),
            Node::Case {
                whens, otherwise, ..
            } => {
                for (when, then) in whens {
                    when.string_literals(into);
                    then.string_literals(into);
                }
                if let Some(otherwise) = otherwise {
                    otherwise.string_literals(into);
                }
            }
        }
    }

    /// Whether some row can make the kernel hand its batch back (an
    /// integer division or remainder, a timestamp scaling that may
    /// overflow).
    pub fn may_bail(&self) -> bool {
        match self {
            Node::Arith { op, ty, .. }
                if !ty.is_float() && matches!(op, Arith::Div | Arith::Rem) =>
            {
                true
            }
            Node::Scale { .. } => true,
            Node::Input { .. } | Node::Const { .. } | Node::StrEq { .. } => false,
            Node::Arith { left, right, .. }
            | Node::Cmp { left, right, .. }
            | Node::Distinct { left, right, .. }
            | Node::And(left, right)
            | Node::Or(left, right) => left.may_bail() || right.may_bail(),
            Node::Not(arg)
            | Node::IsNull { arg, .. }
            | Node::Neg { arg, .. }
            | Node::Cast { arg, .. } => arg.may_bail(),
            Node::Case {
                whens, otherwise, ..
            } => {
                otherwise.as_ref().is_some_and(|e| e.may_bail())
                    || whens
                        .iter()
                        .any(|(when, then)| when.may_bail() || then.may_bail())
            }
        }
    }

    /// Whether the node can be NULL when every input is valid (only a
    /// NULL literal makes one).
    pub fn may_make_null(&self) -> bool {
        match self {
            Node::Input { .. } | Node::StrEq { .. } => false,
            Node::Const { bits, .. } => bits.is_none(),
            Node::Distinct { .. } | Node::IsNull { .. } => false,
            Node::Arith { left, right, .. }
            | Node::Cmp { left, right, .. }
            | Node::And(left, right)
            | Node::Or(left, right) => left.may_make_null() || right.may_make_null(),
            Node::Not(arg)
            | Node::Neg { arg, .. }
            | Node::Cast { arg, .. }
            | Node::Scale { arg, .. } => arg.may_make_null(),
            Node::Case {
                whens, otherwise, ..
            } => {
                otherwise.as_ref().is_none_or(|e| e.may_make_null())
                    || whens.iter().any(|(_, then)| then.may_make_null())
            }
        }
    }
}

/// A whole expression ready to compile.
#[derive(Debug, Clone)]
pub(crate) struct Program {
    pub root: Node,
    /// `[slot]` -> (batch column, its Arrow type).
    pub inputs: Vec<(usize, DataType)>,
    /// The result's Arrow type.
    pub output: DataType,
}

impl Program {
    pub fn output_ty(&self) -> Ty {
        Ty::of(&self.output).expect("checked when lowered")
    }

    /// Whether the kernel beats Arrow's vectorised kernels on large
    /// batches too: measured for integer division and remainder (Arrow
    /// checks every row in scalar code), string equality (Arrow compares
    /// row by row; the kernel inline) and `CASE` (DataFusion evaluates
    /// each branch on the rows that take it, gathering and scattering:
    /// 4.5x at 1,024 rows, docs/BENCHMARKS.md), expected for long expressions
    /// (each interpreted operator writes and rereads an array). A short
    /// expression of SIMD-friendly operators is faster interpreted there
    /// (docs/BENCHMARKS.md).
    pub fn wins_on_large_batches(&self) -> bool {
        fn walk(node: &Node, operators: &mut usize, slow_interpreted: &mut bool) {
            match node {
                Node::Input { .. } | Node::Const { .. } => return,
                Node::Arith { op, ty, .. }
                    if !ty.is_float() && matches!(op, Arith::Div | Arith::Rem) =>
                {
                    *slow_interpreted = true;
                }
                // Arrow compares strings row by row too (measured: 1.3x
                // at 1,024 rows, docs/BENCHMARKS.md).
                Node::Case { .. } | Node::StrEq { .. } => *slow_interpreted = true,
                _ => {}
            }
            *operators += 1;
            match node {
                Node::Arith { left, right, .. }
                | Node::Cmp { left, right, .. }
                | Node::Distinct { left, right, .. }
                | Node::And(left, right)
                | Node::Or(left, right) => {
                    walk(left, operators, slow_interpreted);
                    walk(right, operators, slow_interpreted);
                }
                Node::Not(arg)
                | Node::IsNull { arg, .. }
                | Node::Neg { arg, .. }
                | Node::Cast { arg, .. }
                | Node::Scale { arg, .. } => walk(arg, operators, slow_interpreted),
                Node::Case {
                    whens, otherwise, ..
                } => {
                    for (when, then) in whens {
                        walk(when, operators, slow_interpreted);
                        walk(then, operators, slow_interpreted);
                    }
                    if let Some(otherwise) = otherwise {
                        walk(otherwise, operators, slow_interpreted);
                    }
                }
                Node::Input { .. } | Node::Const { .. } | Node::StrEq { .. } => {}
            }
        }
        let (mut operators, mut slow_interpreted) = (0, false);
        walk(&self.root, &mut operators, &mut slow_interpreted);
        slow_interpreted || operators >= LONG_EXPRESSION_OPERATORS
    }
}

/// Operators from which an expression counts as long.
const LONG_EXPRESSION_OPERATORS: usize = 5;

/// Rows from which a batch counts as large.
pub(crate) const LARGE_BATCH_ROWS: usize = 4096;

/// Lowers `expr` over `schema` into a tree that shares `inputs` (the
/// kernel's input slots) with other trees of the same kernel.
pub(crate) fn lower_into(
    expr: &Arc<dyn PhysicalExpr>,
    schema: &Schema,
    inputs: &mut Vec<(usize, DataType)>,
) -> Option<(Node, DataType)> {
    node(expr, schema, inputs)
}

/// Lowers `expr` over `schema`; `None` when any node is unsupported.
pub(crate) fn lower(expr: &Arc<dyn PhysicalExpr>, schema: &Schema) -> Option<Program> {
    let mut inputs = Vec::new();
    let (root, output) = node(expr, schema, &mut inputs)?;
    Ty::of(&output)?;
    Some(Program {
        root,
        inputs,
        output,
    })
}

fn node(
    expr: &Arc<dyn PhysicalExpr>,
    schema: &Schema,
    inputs: &mut Vec<(usize, DataType)>,
) -> Option<(Node, DataType)> {
    let any = expr.as_ref();
    if let Some(column) = any.downcast_ref::<Column>() {
        let data_type = schema.fields().get(column.index())?.data_type().clone();
        let ty = Ty::of(&data_type)?;
        let slot = match inputs.iter().position(|(c, _)| *c == column.index()) {
            Some(slot) => slot,
            None => {
                inputs.push((column.index(), data_type.clone()));
                inputs.len() - 1
            }
        };
        return Some((Node::Input { slot, ty }, data_type));
    }
    if let Some(literal) = any.downcast_ref::<Literal>() {
        return constant(literal.value());
    }
    if let Some(binary) = any.downcast_ref::<BinaryExpr>() {
        return binary_node(binary, schema, inputs);
    }
    if let Some(not) = any.downcast_ref::<NotExpr>() {
        let (arg, data_type) = node(not.arg(), schema, inputs)?;
        return (data_type == DataType::Boolean).then(|| (Node::Not(Box::new(arg)), data_type));
    }
    if let Some(is_null) = any.downcast_ref::<IsNullExpr>() {
        let (arg, _) = node(is_null.arg(), schema, inputs)?;
        let negated = false;
        return Some((
            Node::IsNull {
                negated,
                arg: Box::new(arg),
            },
            DataType::Boolean,
        ));
    }
    if let Some(is_not_null) = any.downcast_ref::<IsNotNullExpr>() {
        let (arg, _) = node(is_not_null.arg(), schema, inputs)?;
        let negated = true;
        return Some((
            Node::IsNull {
                negated,
                arg: Box::new(arg),
            },
            DataType::Boolean,
        ));
    }
    if let Some(negative) = any.downcast_ref::<NegativeExpr>() {
        let (arg, data_type) = node(negative.arg(), schema, inputs)?;
        let ty = Ty::of(&data_type)?;
        let ok = is_numeric(&data_type) && !ty.is_unsigned();
        return ok.then(|| {
            (
                Node::Neg {
                    ty,
                    arg: Box::new(arg),
                },
                data_type,
            )
        });
    }
    if let Some(case) = any.downcast_ref::<CaseExpr>() {
        return case_node(case, schema, inputs);
    }
    if let Some(cast) = any.downcast_ref::<CastExpr>() {
        let to_type = cast.cast_type().clone();
        let null = cast
            .expr()
            .downcast_ref::<Literal>()
            .is_some_and(|l| l.value().is_null());
        if null {
            // A typed NULL, as the planner writes `NULL` next to a column.
            let ty = Ty::of(&to_type)?;
            return Some((Node::Const { bits: None, ty }, to_type));
        }
        let (arg, from_type) = node(cast.expr(), schema, inputs)?;
        if from_type == to_type {
            return Some((arg, to_type));
        }
        if let (DataType::Timestamp(from_unit, from_tz), DataType::Timestamp(to_unit, to_tz)) =
            (&from_type, &to_type)
        {
            let per_second = |unit: &TimeUnit| match unit {
                TimeUnit::Second => 1i64,
                TimeUnit::Millisecond => 1_000,
                TimeUnit::Microsecond => 1_000_000,
                TimeUnit::Nanosecond => 1_000_000_000,
            };
            let (from, to) = (per_second(from_unit), per_second(to_unit));
            let finer = from_tz == to_tz && to > from;
            let factor = to / from;
            return finer.then(|| {
                (
                    Node::Scale {
                        factor,
                        arg: Box::new(arg),
                    },
                    to_type,
                )
            });
        }
        let (from, to) = (Ty::of(&from_type)?, Ty::of(&to_type)?);
        let widening = is_numeric(&from_type)
            && is_numeric(&to_type)
            && match (from.is_float(), to.is_float()) {
                (false, false) => {
                    to.bytes() > from.bytes()
                        && (from.is_signed() == to.is_signed() || from.is_unsigned())
                }
                (false, true) => true,
                (true, true) => from == Ty::F32 && to == Ty::F64,
                (true, false) => false,
            };
        return widening.then(|| {
            (
                Node::Cast {
                    from,
                    to,
                    arg: Box::new(arg),
                },
                to_type,
            )
        });
    }
    None
}

/// `CASE [base] WHEN ... THEN ... [ELSE ...] END` whose results all have
/// one type (DataFusion's coercion sees to that, with casts the lowering
/// reads) and whose conditions are booleans (or, with a base, values of
/// its type: `base = when`).
fn case_node(
    case: &CaseExpr,
    schema: &Schema,
    inputs: &mut Vec<(usize, DataType)>,
) -> Option<(Node, DataType)> {
    let base = match case.expr() {
        Some(e) => Some(node(e, schema, inputs)?),
        None => None,
    };
    let mut output: Option<DataType> = None;
    let mut same_type = |data_type: DataType| match &output {
        Some(t) => *t == data_type,
        None => {
            output = Some(data_type);
            true
        }
    };
    let mut whens = Vec::new();
    for (when, then) in case.when_then_expr() {
        let (when, when_type) = node(when, schema, inputs)?;
        let condition = match &base {
            Some((base, base_type)) => {
                if *base_type != when_type {
                    return None;
                }
                Node::Cmp {
                    op: Cmp::Eq,
                    ty: Ty::of(base_type)?,
                    left: Box::new(base.clone()),
                    right: Box::new(when),
                }
            }
            None if when_type == DataType::Boolean => when,
            None => return None,
        };
        let (then, then_type) = node(then, schema, inputs)?;
        if !same_type(then_type) {
            return None;
        }
        whens.push((condition, then));
    }
    let otherwise = match case.else_expr() {
        Some(e) => {
            let (e, else_type) = node(e, schema, inputs)?;
            if !same_type(else_type) {
                return None;
            }
            Some(Box::new(e))
        }
        None => None,
    };
    let output = output?;
    let ty = Ty::of(&output)?;
    Some((
        Node::Case {
            ty,
            whens,
            otherwise,
        },
        output,
    ))
}

fn binary_node(
    binary: &BinaryExpr,
    schema: &Schema,
    inputs: &mut Vec<(usize, DataType)>,
) -> Option<(Node, DataType)> {
    // `fail_on_overflow` has no getter: an expression equal to the
    // default-built one wraps on overflow, as compiled code does.
    let plain = BinaryExpr::new(
        Arc::clone(binary.left()),
        *binary.op(),
        Arc::clone(binary.right()),
    );
    if plain != *binary {
        return None;
    }
    if let Some(eq) = string_equality(binary, schema, inputs) {
        return Some(eq);
    }
    let (left, left_type) = node(binary.left(), schema, inputs)?;
    let (right, right_type) = node(binary.right(), schema, inputs)?;
    if left_type != right_type {
        return None;
    }
    let ty = Ty::of(&left_type)?;
    let (left, right) = (Box::new(left), Box::new(right));
    let arith = |op: Arith| {
        let ok = is_numeric(&left_type) && !(op == Arith::Rem && ty.is_float());
        ok.then(|| {
            (
                Node::Arith {
                    op,
                    ty,
                    left: left.clone(),
                    right: right.clone(),
                },
                left_type.clone(),
            )
        })
    };
    let compare = |op: Cmp| {
        Some((
            Node::Cmp {
                op,
                ty,
                left: left.clone(),
                right: right.clone(),
            },
            DataType::Boolean,
        ))
    };
    match binary.op() {
        Operator::Plus => arith(Arith::Add),
        Operator::Minus => arith(Arith::Sub),
        Operator::Multiply => arith(Arith::Mul),
        Operator::Divide => arith(Arith::Div),
        Operator::Modulo => arith(Arith::Rem),
        Operator::Eq => compare(Cmp::Eq),
        Operator::NotEq => compare(Cmp::NotEq),
        Operator::Lt => compare(Cmp::Lt),
        Operator::LtEq => compare(Cmp::LtEq),
        Operator::Gt => compare(Cmp::Gt),
        Operator::GtEq => compare(Cmp::GtEq),
        Operator::IsDistinctFrom | Operator::IsNotDistinctFrom => Some((
            Node::Distinct {
                negated: *binary.op() == Operator::IsNotDistinctFrom,
                ty,
                left,
                right,
            },
            DataType::Boolean,
        )),
        Operator::And if ty == Ty::Bool => Some((Node::And(left, right), DataType::Boolean)),
        Operator::Or if ty == Ty::Bool => Some((Node::Or(left, right), DataType::Boolean)),
        _ => None,
    }
}

/// `column = 'text'` or `column <> 'text'` (either way round) over a
/// string column.
fn string_equality(
    binary: &BinaryExpr,
    schema: &Schema,
    inputs: &mut Vec<(usize, DataType)>,
) -> Option<(Node, DataType)> {
    let negated = match binary.op() {
        Operator::Eq => false,
        Operator::NotEq => true,
        _ => return None,
    };
    let (column, literal) = match (
        binary.left().downcast_ref::<Column>(),
        binary.right().downcast_ref::<Literal>(),
    ) {
        (Some(column), Some(literal)) => (column, literal),
        _ => (
            binary.right().downcast_ref::<Column>()?,
            binary.left().downcast_ref::<Literal>()?,
        ),
    };
    let data_type = schema.fields().get(column.index())?.data_type().clone();
    let literal: Arc<[u8]> = match (&data_type, literal.value()) {
        (DataType::Utf8, ScalarValue::Utf8(Some(text)))
        | (DataType::LargeUtf8, ScalarValue::LargeUtf8(Some(text))) => text.as_bytes().into(),
        _ => return None,
    };
    let slot = match inputs.iter().position(|(c, _)| *c == column.index()) {
        Some(slot) => slot,
        None => {
            inputs.push((column.index(), data_type));
            inputs.len() - 1
        }
    };
    Some((
        Node::StrEq {
            slot,
            literal,
            negated,
        },
        DataType::Boolean,
    ))
}

/// A literal's node and type.
fn constant(value: &ScalarValue) -> Option<(Node, DataType)> {
    let data_type = value.data_type();
    let ty = Ty::of(&data_type)?;
    let bits = match value {
        ScalarValue::Boolean(v) => v.map(u64::from),
        ScalarValue::Int8(v) => v.map(|v| v as u64),
        ScalarValue::Int16(v) => v.map(|v| v as u64),
        ScalarValue::Int32(v)
        | ScalarValue::Date32(v)
        | ScalarValue::Time32Second(v)
        | ScalarValue::Time32Millisecond(v) => v.map(|v| v as u64),
        ScalarValue::Int64(v)
        | ScalarValue::Date64(v)
        | ScalarValue::Time64Microsecond(v)
        | ScalarValue::Time64Nanosecond(v)
        | ScalarValue::TimestampSecond(v, _)
        | ScalarValue::TimestampMillisecond(v, _)
        | ScalarValue::TimestampMicrosecond(v, _)
        | ScalarValue::TimestampNanosecond(v, _)
        | ScalarValue::DurationSecond(v)
        | ScalarValue::DurationMillisecond(v)
        | ScalarValue::DurationMicrosecond(v)
        | ScalarValue::DurationNanosecond(v) => v.map(|v| v as u64),
        ScalarValue::UInt8(v) => v.map(u64::from),
        ScalarValue::UInt16(v) => v.map(u64::from),
        ScalarValue::UInt32(v) => v.map(u64::from),
        ScalarValue::UInt64(v) => *v,
        ScalarValue::Float32(v) => v.map(|v| u64::from(v.to_bits())),
        ScalarValue::Float64(v) => v.map(f64::to_bits),
        _ => return None,
    };
    Some((Node::Const { bits, ty }, data_type))
}
