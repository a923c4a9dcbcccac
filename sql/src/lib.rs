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
//! - `two_phase`: splits a window aggregate whose rows would all meet on
//!   one shard into a partial stage on every shard and a final merge.
//! - [`jit`]: the Cranelift compiler that turns the plan's expressions
//!   into native kernels (interpreted until they are ready).

/// Display, equality and hashing for a physical expression that stands
/// in for a DataFusion call, kept as its `call` field: it shows and
/// compares as that call (plans and rewrites see the same expression).
macro_rules! like_its_call {
    ($t:ty) => {
        impl std::fmt::Display for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                self.call.fmt(f)
            }
        }

        impl PartialEq for $t {
            fn eq(&self, other: &Self) -> bool {
                self.call.eq(&other.call)
            }
        }

        impl Eq for $t {}

        impl std::hash::Hash for $t {
            fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
                self.call.hash(state);
            }
        }
    };
}

/// The `PhysicalExpr` methods such an expression answers as its `call`:
/// type, nullability, display as SQL, and the call as its one child (so
/// rewrites reach the call's columns).
macro_rules! call_methods {
    () => {
        fn data_type(
            &self,
            input_schema: &arrow::datatypes::Schema,
        ) -> datafusion::common::Result<arrow::datatypes::DataType> {
            self.call.data_type(input_schema)
        }

        fn nullable(
            &self,
            input_schema: &arrow::datatypes::Schema,
        ) -> datafusion::common::Result<bool> {
            self.call.nullable(input_schema)
        }

        fn children(&self) -> Vec<&std::sync::Arc<dyn datafusion::physical_expr::PhysicalExpr>> {
            vec![&self.call]
        }

        fn fmt_sql(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            self.call.fmt_sql(f)
        }
    };
}

mod asof;
mod captures;
mod case_lookup;

/// Helpers of the crate's unit tests.
#[cfg(test)]
pub(crate) mod test_util {
    use std::sync::Arc;

    use arrow::datatypes::Schema;
    use datafusion::common::DFSchema;
    use datafusion::physical_expr::PhysicalExpr;
    use datafusion::prelude::SessionContext;

    /// `sql` over `schema` as DataFusion plans it: a physical expression.
    pub fn physical(sql: &str, schema: &Schema) -> Arc<dyn PhysicalExpr> {
        let ctx = SessionContext::new();
        let df_schema = DFSchema::try_from(schema.clone()).unwrap();
        let logical = ctx.parse_sql_expr(sql, &df_schema).unwrap();
        ctx.create_physical_expr(logical, &df_schema).unwrap()
    }
}
pub mod dialect;
pub mod functions;
mod fused;
pub mod jit;
mod join;
mod join_bounds;
mod literal_capture;
mod pattern_calls;
mod patterns;
pub mod planner;
mod replace;
mod retractable;
mod sharing;
mod specialized;
mod split;
mod to_char;
mod two_phase;
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
