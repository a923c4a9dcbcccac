//! # laminar-sql
//!
//! From SQL text to operator graphs.
//!
//! - [`dialect`]: splits scripts into statements and parses LaminarDB's
//!   DDL (`CREATE SOURCE ... WATERMARK FOR`, `CREATE STREAM ... EMIT`) on
//!   top of sqlparser's tokenizer; the `SELECT` inside a stream is plain
//!   DataFusion SQL.
//! - [`functions`]: the `tumble` window function as a DataFusion UDF, so a
//!   windowed query also runs as an ordinary batch query (the oracle).
//! - [`planner`]: plans the `SELECT` with DataFusion, applies the streaming
//!   rewrites, and lowers the logical plan to a [`planner::StreamPlan`]:
//!   stages, window aggregate, routing key. Anything the streaming path
//!   cannot run is an `LDB-1004` error, never a silent wrong answer.
//! - [`jit`]: the Cranelift compiler that turns the plan's expressions
//!   into native kernels (interpreted until they are ready).

mod asof;
pub mod dialect;
pub mod functions;
mod fused;
pub mod jit;
mod join;
mod join_bounds;
mod patterns;
pub mod planner;
mod retractable;
mod sharing;
mod split;
pub mod window_tvf;

pub use dialect::{
    parse_script, AlignmentDef, DropKind, EmitMode, ShowWhat, SourceDef, Statement, StreamDef,
    WatermarkDef, WatermarkKeyDef,
};
/// Whether a query has an ASOF or temporal join (which DataFusion cannot
/// run: ad-hoc queries run them on the streaming operator).
pub fn has_asof(query: &str) -> laminar_runtime::Result<bool> {
    Ok(asof::rewrite(query, |_| Some(asof::Versioned::any()))?
        .1
        .is_some())
}

pub use planner::{
    new_session_context, plan_for_batch, plan_stream, resolve_table, KnownStreams, Routing,
    StreamInput, StreamOperator, StreamPlan, TableDef,
};
