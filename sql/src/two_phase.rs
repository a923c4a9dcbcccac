//! Two-phase window aggregates: a windowed `GROUP BY` whose groups cannot
//! be spread by a source column (a global aggregate per window, or keys
//! that are computed) would send every row to one shard, and one whose
//! keys are few would keep most shards idle. Instead each
//! shard aggregates the rows it holds into partial states (a stage
//! stream, `<name>_partial`, routed nowhere), and when a window closes
//! sends one row of states per group to the shard owning that window and
//! group, which merges them and emits the result when its watermark (the
//! slowest shard's) closes the window too.
//!
//! The first kind is split by default; any window aggregate is with
//! `WITH (two_phase = 'on')`, which pays off when keys are few and costs
//! when they are many (the states are then about as many as the rows, and
//! are aggregated twice). `two_phase = 'off'` keeps one phase.
//!
//! The rows cross no exchange; the states do, one row per window and
//! group per shard. Aggregates merge as DataFusion's own partial and final
//! aggregation does (`state` / `merge_batch`), so results are the batch
//! engine's; the last digits of a float sum may differ, as they do between
//! DataFusion's own partitioned runs.

use std::sync::Arc;

use arrow::datatypes::{Field, Schema};
use datafusion::physical_expr::expressions::Column;
use datafusion::physical_expr::PhysicalExpr;
use laminar_operators::{AggregatePhase, AggregateSpec, WindowBinding, WindowKind};
use laminar_runtime::Result;

use crate::dialect::TwoPhase;
use crate::planner::{unsupported, Routing, StreamInput, StreamOperator, StreamPlan};

/// `plan`, or its partial stage and its final form when it is a window
/// aggregate all of whose rows would otherwise meet on one shard (or any
/// window aggregate, with `two_phase = 'on'`).
pub(crate) fn split(plan: StreamPlan, mode: TwoPhase) -> Result<Vec<StreamPlan>> {
    let StreamOperator::WindowAggregate(spec) = &plan.operator else {
        return Ok(vec![plan]);
    };
    let wanted = match mode {
        TwoPhase::Off => false,
        TwoPhase::Auto => plan.routing == Routing::Single,
        TwoPhase::On => true,
    };
    if !wanted {
        return Ok(vec![plan]);
    }
    let window = match &spec.window {
        Some(
            w @ WindowBinding {
                kind: WindowKind::Fixed(_),
                ..
            },
        ) => w.clone(),
        _ => return Ok(vec![plan]),
    };
    // A late side output carries the source's rows as the stream saw
    // them: it stays with the one-phase form.
    if plan.late_side_output.is_some() {
        if mode == TwoPhase::On {
            return Err(unsupported(
                format!(
                    "stream {}: two_phase = 'on' with late_data = 'side_output' is not supported",
                    plan.name
                ),
                "drop one of the options",
            ));
        }
        return Ok(vec![plan]);
    }

    let key_fields = spec.key_fields();
    let mut fields = Vec::with_capacity(1 + key_fields.len() + spec.aggregates.len());
    fields.push(Field::new("window_start", window.unit.data_type(), false));
    for (i, key) in key_fields.iter().enumerate() {
        fields.push(Field::new(
            format!("key_{i}_{}", key.name()),
            key.data_type().clone(),
            key.is_nullable(),
        ));
    }
    for (j, aggregate) in spec.aggregates.iter().enumerate() {
        // An aggregate that cannot describe its state keeps one phase.
        let Ok(states) = aggregate.state_fields() else {
            return Ok(vec![plan]);
        };
        for state in states {
            fields.push(Field::new(
                format!("state_{j}_{}", state.name()),
                state.data_type().clone(),
                true,
            ));
        }
    }
    let partial_schema = Arc::new(Schema::new(fields));
    let partial_name = format!("{}_partial", plan.name);
    let partial = StreamPlan {
        name: partial_name.clone(),
        input: plan.input.clone(),
        output_schema: Arc::clone(&partial_schema),
        routing: Routing::Any,
        right_input: None,
        lookup_table: None,
        time_columns: Vec::new(),
        settled_time_columns: Vec::new(),
        operator: StreamOperator::WindowAggregate(AggregateSpec {
            post: Vec::new(),
            phase: AggregatePhase::Partial(Arc::clone(&partial_schema)),
            ..spec.clone()
        }),
        explain: format!("{} (partial, on every shard)", plan.explain),
        compiled: plan.compiled.clone(),
        late_side_output: None,
        sql: format!("-- partial aggregate of stream {}", plan.name),
        part_of: Some(plan.part_of.clone().unwrap_or_else(|| plan.name.clone())),
        versions_query: None,
    };

    let column = |i: usize| -> Arc<dyn PhysicalExpr> {
        Arc::new(Column::new(partial_schema.field(i).name(), i))
    };
    let keys = key_fields.len();
    let merged = AggregateSpec {
        pre: Vec::new(),
        window: Some(WindowBinding {
            source_time_column: 0,
            source_time_unit: window.unit.clone(),
            event_time: column(0),
            ..window
        }),
        keys: (1..=keys).map(column).collect(),
        aggregates: spec.aggregates.clone(),
        aggregate_filters: vec![None; spec.aggregates.len()],
        aggregate_schema: Arc::clone(&spec.aggregate_schema),
        post: spec.post.clone(),
        late_side_output: false,
        fused: None,
        foldable: None,
        phase: AggregatePhase::Final,
    };
    let final_plan = StreamPlan {
        input: StreamInput::Stream(partial_name.clone()),
        // By window and keys: windows spread over the shards even when
        // there is no key.
        routing: Routing::Keys((0..=keys).collect()),
        operator: StreamOperator::WindowAggregate(merged),
        explain: format!(
            "WindowAggregate(final)[merges {keys} key(s) and {} aggregate state(s) per window, routing=Keys] <- stream {partial_name}{}",
            spec.aggregates.len(),
            if spec.post.is_empty() {
                String::new()
            } else {
                format!(" -> {} stage(s)", spec.post.len())
            }
        ),
        compiled: Vec::new(),
        ..plan
    };
    Ok(vec![partial, final_plan])
}
