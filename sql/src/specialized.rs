//! Calls replaced at planning by expressions that do the same work with
//! less per row: DataFusion's function stays inside each one, as its
//! `call`, for its type, its display and whatever shape or value the
//! replacement does not cover.
//!
//! - [`patterns`](crate::patterns): `regexp_match`, `regexp_like` and
//!   `regexp_match(...)[k]` with their pattern compiled once per query.
//! - [`pattern_calls`](crate::pattern_calls): `regexp_replace` and
//!   `regexp_count` with their pattern compiled once per query.
//! - [`split`](crate::split): `split_part` with a one-byte delimiter as
//!   one scan of each value.
//! - [`replace`](crate::replace): `replace` with literal arguments as one
//!   scan of the batch's bytes.
//! - [`case_lookup`](crate::case_lookup): a `CASE` whose `WHEN`s compare
//!   one expression with literals, as one evaluation and a lookup.
//! - [`to_char`](crate::to_char): `to_char` with a format of fixed-width
//!   numeric fields, written from a template.

use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch};
use arrow::datatypes::{DataType, Schema};
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::{Result as DfResult, ScalarValue};
use datafusion::logical_expr::{ColumnarValue, Volatility};
use datafusion::physical_expr::expressions::Literal;
use datafusion::physical_expr::{PhysicalExpr, ScalarFunctionExpr};
use laminar_runtime::{Error, ErrorCode, Result};

use crate::pattern_calls::PatternCall;
use crate::patterns::PrecompiledRegex;
use crate::replace::Replace;
use crate::split::SplitPart;
use crate::to_char::ToChar;

/// `expr` with every call covered here replaced, in one pass. A pattern
/// that does not compile is a planning error (`LDB-1007`).
pub(crate) fn specialize(
    expr: Arc<dyn PhysicalExpr>,
    schema: &Schema,
) -> Result<Arc<dyn PhysicalExpr>> {
    let mut failure = None;
    let rewritten = expr
        .transform_up(|node| {
            if let Some(split) = crate::split::split_part_of(&node, schema) {
                return Ok(Transformed::yes(Arc::new(split) as Arc<dyn PhysicalExpr>));
            }
            if let Some(replace) = crate::replace::replace_of(&node, schema) {
                return Ok(Transformed::yes(Arc::new(replace) as Arc<dyn PhysicalExpr>));
            }
            if let Some(lookup) = crate::case_lookup::case_lookup_of(&node) {
                return Ok(Transformed::yes(Arc::new(lookup) as Arc<dyn PhysicalExpr>));
            }
            if let Some(format) = crate::to_char::to_char_of(&node, schema) {
                return Ok(Transformed::yes(Arc::new(format) as Arc<dyn PhysicalExpr>));
            }
            match crate::pattern_calls::pattern_call_of(&node, schema) {
                Ok(Some(call)) => {
                    return Ok(Transformed::yes(Arc::new(call) as Arc<dyn PhysicalExpr>))
                }
                Ok(None) => {}
                Err(e) => failure = Some(e),
            }
            match crate::patterns::precompiled(&node, schema) {
                Ok(Some(replacement)) => return Ok(Transformed::yes(replacement)),
                Ok(None) => {}
                Err(e) => failure = Some(e),
            }
            Ok(Transformed::no(node))
        })
        .map_err(|e| Error::new(ErrorCode::Planning, e.to_string()))?
        .data;
    match failure {
        Some(e) => Err(e),
        None => Ok(rewritten),
    }
}

/// Whether `expr` is one of the replacements made here.
pub(crate) fn is_specialized(expr: &Arc<dyn PhysicalExpr>) -> bool {
    let expr = expr.as_ref();
    expr.is::<PrecompiledRegex>()
        || expr.is::<PatternCall>()
        || expr.is::<SplitPart>()
        || expr.is::<Replace>()
        || expr.is::<ToChar>()
}

/// The literals in `expr`, in order.
pub(crate) fn literals(expr: &Arc<dyn PhysicalExpr>) -> Vec<ScalarValue> {
    let mut found = Vec::new();
    let _ = expr.apply(|e| {
        if let Some(literal) = e.as_ref().downcast_ref::<Literal>() {
            found.push(literal.value().clone());
        }
        Ok(TreeNodeRecursion::Continue)
    });
    found
}

/// A replacement's `with_new_children`: the call a rewrite rebuilt (its
/// one child) with what was prepared from the old call's literals kept,
/// through `rebuild(call, values)`, when the new call has the same
/// literals ([`renumbered_values`]); otherwise the new call itself.
/// `None` when there is no child (the replacement stays as it is).
pub(crate) fn rebuilt(
    old: &Arc<dyn PhysicalExpr>,
    mut children: Vec<Arc<dyn PhysicalExpr>>,
    rebuild: impl FnOnce(Arc<dyn PhysicalExpr>, Arc<dyn PhysicalExpr>) -> Arc<dyn PhysicalExpr>,
) -> Option<Arc<dyn PhysicalExpr>> {
    let call = children.pop()?;
    Some(match renumbered_values(old, &call) {
        Some(values) => rebuild(call, values),
        None => call,
    })
}

/// `values` over `batch` when they come out as a `Utf8` array: what the
/// string replacements cover (a scalar, or another string type, goes to
/// DataFusion's call).
pub(crate) fn utf8_values(
    values: &Arc<dyn PhysicalExpr>,
    batch: &RecordBatch,
) -> DfResult<Option<ArrayRef>> {
    Ok(match values.evaluate(batch)? {
        ColumnarValue::Array(array) if array.data_type() == &DataType::Utf8 => Some(array),
        _ => None,
    })
}

/// Whether a volatile function (`random()`) is called anywhere in
/// `expr`: such an expression must be evaluated where, and as often as,
/// it was written.
pub(crate) fn volatile(expr: &Arc<dyn PhysicalExpr>) -> bool {
    expr.exists(|e| {
        Ok(e.as_ref()
            .downcast_ref::<ScalarFunctionExpr>()
            .is_some_and(|f| f.fun().signature().volatility == Volatility::Volatile))
    })
    .unwrap_or(true)
}

/// The first argument of `new`, when `new` is the same function as `old`
/// with the same literals: `old` rebuilt around renumbered columns (a
/// `CASE` projects its batch to the columns it reads, a filter's stage to
/// what it keeps), so what was prepared from its literals still holds.
pub(crate) fn renumbered_values(
    old: &Arc<dyn PhysicalExpr>,
    new: &Arc<dyn PhysicalExpr>,
) -> Option<Arc<dyn PhysicalExpr>> {
    let name = |e: &Arc<dyn PhysicalExpr>| {
        e.as_ref()
            .downcast_ref::<ScalarFunctionExpr>()
            .map(|c| c.name().to_owned())
    };
    if name(old)? != name(new)? || literals(old) != literals(new) {
        return None;
    }
    let call = new.as_ref().downcast_ref::<ScalarFunctionExpr>()?;
    call.args().first().cloned()
}
