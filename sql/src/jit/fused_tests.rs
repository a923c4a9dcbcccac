//! Fused aggregate kernels against DataFusion's own group accumulators:
//! random arguments, `FILTER`s, selections and group ids over random
//! batches with NULLs, NaNs, signed zeros, infinities and integer
//! extremes, compared bit for bit (results and partial states, and the
//! merges session windows make).

use std::sync::{Arc, OnceLock};

use arrow::array::{Array, ArrayRef, BooleanArray, RecordBatch};
use datafusion::logical_expr::{AggregateUDF, EmitTo, GroupsAccumulator};
use datafusion::physical_expr::aggregate::AggregateExprBuilder;
use datafusion::physical_expr::PhysicalExpr;
use laminar_operators::fused::{
    FusedAccumulator, FusedAggregateKind, FusedFunction, FusedType, FusedUpdate,
};
use proptest::prelude::*;

use super::fused::{lower_fused, CompiledFusedUpdate, FusedInput, FusedProgram, FusedSlot};
use super::tests::{column_strategy, numeric, physical, predicate, same, schema};

fn udaf(function: FusedFunction) -> Arc<AggregateUDF> {
    use datafusion::functions_aggregate::{average, count, min_max, sum};
    match function {
        FusedFunction::Count => count::count_udaf(),
        FusedFunction::Sum => sum::sum_udaf(),
        FusedFunction::Min => min_max::min_udaf(),
        FusedFunction::Max => min_max::max_udaf(),
        FusedFunction::Avg => average::avg_udaf(),
    }
}

/// DataFusion's group accumulator for `function(argument)`.
pub(super) fn datafusion_accumulator(
    function: FusedFunction,
    argument: &Arc<dyn PhysicalExpr>,
) -> Box<dyn GroupsAccumulator> {
    let aggregate = AggregateExprBuilder::new(udaf(function), vec![Arc::clone(argument)])
        .schema(schema())
        .alias("x")
        .build()
        .unwrap();
    assert!(aggregate.groups_accumulator_supported());
    aggregate.create_groups_accumulator().unwrap()
}

/// A compiled fused update of one aggregate, or `None` when the
/// argument or filter does not fuse.
fn compiled(input: FusedInput) -> Option<CompiledFusedUpdate> {
    Some(compile_now(lower_fused(&[input], &schema(), None)?))
}

/// `program` compiled now, as a ready update.
pub(super) fn compile_now(program: FusedProgram) -> CompiledFusedUpdate {
    let slot = Arc::new(FusedSlot {
        program,
        outcome: OnceLock::new(),
    });
    slot.compile();
    let update = CompiledFusedUpdate::new(slot);
    assert!(update.is_ready(), "{}", update.state());
    update
}

/// Both results and partial states, in that order.
fn outputs(
    accumulator: &mut dyn GroupsAccumulator,
    copy: &mut dyn GroupsAccumulator,
) -> Vec<ArrayRef> {
    let mut all = vec![accumulator.evaluate(EmitTo::All).unwrap()];
    all.extend(copy.state(EmitTo::All).unwrap());
    all
}

/// Accumulates `function(CAST(argument AS ty))` (the planner's coercion
/// gives arguments such types) both ways and compares.
fn check(
    function: FusedFunction,
    ty: FusedType,
    argument_sql: &str,
    filter_sql: Option<&str>,
    batch: &RecordBatch,
    selected: &[bool],
    group_ids: &[usize],
) -> bool {
    let ty = match function {
        FusedFunction::Avg => FusedType::Float64,
        _ => ty,
    };
    let cast = match ty {
        FusedType::Int64 => "BIGINT",
        FusedType::Float64 => "DOUBLE",
    };
    let Some(argument) = physical(&format!("CAST(({argument_sql}) AS {cast})")) else {
        return false;
    };
    let filter = match filter_sql {
        Some(sql) => match physical(sql) {
            Some(filter) => Some(filter),
            None => return false,
        },
        None => None,
    };
    let kind = FusedAggregateKind {
        function,
        ty: if function == FusedFunction::Count {
            FusedType::Int64
        } else {
            ty
        },
    };
    let Some(update) = compiled(FusedInput {
        kind,
        argument: Arc::clone(&argument),
        filter: filter.clone(),
    }) else {
        return false;
    };
    let rows = batch.num_rows();
    let groups = group_ids.iter().max().map_or(0, |g| g + 1);
    // Sliced by one row, as a selection computed over a larger array can
    // be: the kernel must read it from its bit offset.
    let mut padded = vec![false];
    padded.extend_from_slice(selected);
    let selection = BooleanArray::from(padded).slice(1, selected.len());
    // DataFusion's view: the selection and the FILTER (NULL is not true).
    let Ok(values) = argument.evaluate(batch).and_then(|v| v.into_array(rows)) else {
        return false;
    };
    let mask = match &filter {
        Some(filter) => {
            let Ok(keep) = filter.evaluate(batch).and_then(|v| v.into_array(rows)) else {
                return false;
            };
            let keep = keep
                .as_any()
                .downcast_ref::<BooleanArray>()
                .unwrap()
                .clone();
            arrow::compute::and(&selection, &keep).unwrap()
        }
        None => selection.clone(),
    };
    let mut theirs = datafusion_accumulator(function, &argument);
    let mut theirs_copy = datafusion_accumulator(function, &argument);
    let mut fused = FusedAccumulator::new(kind);
    let mut interpreted = FusedAccumulator::new(kind);
    // Twice: the second pass starts from non-empty state.
    for _ in 0..2 {
        for df in [&mut theirs, &mut theirs_copy] {
            df.update_batch(
                std::slice::from_ref(&values),
                group_ids,
                Some(&mask),
                groups,
            )
            .unwrap();
        }
        fused.ensure_groups(groups);
        update
            .update(
                batch,
                Some(&selection),
                group_ids,
                std::slice::from_mut(&mut fused),
            )
            .unwrap();
        interpreted
            .update_batch(
                std::slice::from_ref(&values),
                group_ids,
                Some(&mask),
                groups,
            )
            .unwrap();
    }
    let want = outputs(theirs.as_mut(), theirs_copy.as_mut());
    let what = format!("{function:?}({argument}) FILTER {filter:?}");
    for (name, ours) in [("compiled", &fused), ("interpreted", &interpreted)] {
        let got = outputs(&mut ours.clone(), &mut ours.clone());
        assert_eq!(got.len(), want.len(), "{name} {what}: state fields");
        for (g, w) in got.iter().zip(&want) {
            same(w, g, &format!("{name} {what}"));
        }
    }
    // DataFusion's partial state restores into fused state as into
    // DataFusion's own accumulator. (Not always to the one-pass result:
    // a float MAX that ends at -inf after a NaN restores as f64::MIN,
    // the starting value, in both.)
    let mut restored = FusedAccumulator::new(kind);
    let ids: Vec<usize> = (0..groups).collect();
    let state =
        datafusion_accumulator_state(function, &argument, &values, group_ids, &mask, groups);
    restored.merge_batch(&state, &ids, groups).unwrap();
    let mut theirs_restored = datafusion_accumulator(function, &argument);
    theirs_restored.merge_batch(&state, &ids, groups).unwrap();
    same(
        &theirs_restored.evaluate(EmitTo::All).unwrap(),
        &restored.evaluate(EmitTo::All).unwrap(),
        &format!("restored {what}"),
    );
    // Session slots merge: folding every group into group 0 gives what
    // DataFusion's merge of all their partial states into one group gives,
    // and a slot emptied for a new session reads as a group that saw
    // nothing.
    if groups > 0 {
        let mut merged = interpreted.clone();
        for g in 1..groups {
            merged.merge_group(0, g);
        }
        let mut theirs_merged = datafusion_accumulator(function, &argument);
        theirs_merged
            .merge_batch(&state, &vec![0; groups], 1)
            .unwrap();
        same(
            &theirs_merged.evaluate(EmitTo::All).unwrap(),
            &merged.evaluate_groups(&[0]),
            &format!("merged {what}"),
        );
        merged.reset_group(0);
        // The reference is a group whose one row the filter drops: an
        // `update_batch` of no rows marks every group it creates as seen
        // (DataFusion's null tracking assumes all seen when it is given
        // neither NULLs nor a filter), which no real group is.
        let mut empty = datafusion_accumulator(function, &argument);
        empty
            .update_batch(
                &[values.slice(0, 1)],
                &[0],
                Some(&BooleanArray::from(vec![false])),
                1,
            )
            .unwrap();
        same(
            &empty.evaluate(EmitTo::All).unwrap(),
            &merged.evaluate_groups(&[0]),
            &format!("reset {what}"),
        );
    }
    true
}

/// DataFusion's partial state after the two passes `check` makes.
fn datafusion_accumulator_state(
    function: FusedFunction,
    argument: &Arc<dyn PhysicalExpr>,
    values: &ArrayRef,
    group_ids: &[usize],
    mask: &BooleanArray,
    groups: usize,
) -> Vec<ArrayRef> {
    let mut accumulator = datafusion_accumulator(function, argument);
    for _ in 0..2 {
        accumulator
            .update_batch(std::slice::from_ref(values), group_ids, Some(mask), groups)
            .unwrap();
    }
    accumulator.state(EmitTo::All).unwrap()
}

pub(super) fn functions() -> impl Strategy<Value = FusedFunction> {
    prop::sample::select(vec![
        FusedFunction::Count,
        FusedFunction::Sum,
        FusedFunction::Min,
        FusedFunction::Max,
        FusedFunction::Avg,
    ])
}

/// A batch (sliced from a larger one by up to 2 rows, so inputs are read
/// from an offset) with a selection and group ids (of up to 4 groups) per
/// row.
fn batches() -> impl Strategy<Value = (RecordBatch, Vec<bool>, Vec<usize>)> {
    (column_strategy(), 0usize..3).prop_flat_map(|(batch, cut)| {
        let cut = cut.min(batch.num_rows() - 1);
        let batch = batch.slice(cut, batch.num_rows() - cut);
        let rows = batch.num_rows();
        (
            Just(batch),
            prop::collection::vec(prop_oneof![3 => Just(true), 1 => Just(false)], rows),
            prop::collection::vec(0usize..4, rows),
        )
    })
}

/// Random integer expressions, so that `BIGINT` aggregates get arguments
/// that compile (a float cast to `BIGINT` narrows, which stays
/// interpreted).
fn integer() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        Just("a".to_string()),
        Just("c".to_string()),
        Just("e".to_string()),
        Just("g".to_string()),
        (-3i64..10).prop_map(|v| v.to_string()),
        Just("CAST(NULL AS BIGINT)".to_string()),
    ];
    leaf.prop_recursive(3, 12, 2, |inner| {
        prop_oneof![
            (
                inner.clone(),
                prop_oneof![Just("+"), Just("-"), Just("*")],
                inner.clone()
            )
                .prop_map(|(l, op, r)| format!("({l} {op} {r})")),
            inner.clone().prop_map(|x| format!("(-{x})")),
            (predicate(), inner.clone(), inner.clone())
                .prop_map(|(c, x, y)| format!("(CASE WHEN {c} THEN {x} ELSE {y} END)")),
        ]
    })
}

#[test]
fn edge_values_match_datafusion() {
    use arrow::array::{Float64Array, Int64Array};
    let mut columns: Vec<ArrayRef> = schema()
        .fields()
        .iter()
        .map(|f| arrow::array::new_null_array(f.data_type(), 8))
        .collect();
    columns[0] = Arc::new(Int64Array::from(vec![
        Some(i64::MAX),
        Some(1),
        None,
        Some(i64::MIN),
        Some(-1),
        Some(0),
        Some(i64::MAX),
        Some(7),
    ]));
    columns[1] = Arc::new(Float64Array::from(vec![
        Some(f64::NAN),
        Some(-0.0),
        Some(0.0),
        None,
        Some(f64::INFINITY),
        Some(f64::NEG_INFINITY),
        Some(-f64::NAN),
        Some(1.5),
    ]));
    let batch = RecordBatch::try_new(schema(), columns).unwrap();
    let selected = [true, true, true, true, false, true, true, true];
    for groups in [
        vec![0, 0, 0, 0, 0, 0, 0, 0],
        vec![0, 1, 2, 3, 0, 1, 2, 3],
        vec![3, 2, 1, 0, 3, 2, 1, 0],
    ] {
        for function in [
            FusedFunction::Count,
            FusedFunction::Sum,
            FusedFunction::Min,
            FusedFunction::Max,
            FusedFunction::Avg,
        ] {
            for (ty, arguments) in [
                (FusedType::Int64, ["a", "a + 1", "a * a", "-a"]),
                (FusedType::Float64, ["b", "b * 2.0", "-b", "a"]),
            ] {
                for argument in arguments {
                    for filter in [None, Some("b > 0.0"), Some("a IS NULL")] {
                        assert!(
                            check(function, ty, argument, filter, &batch, &selected, &groups),
                            "{function:?}({argument}) did not fuse"
                        );
                    }
                }
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 500, ..ProptestConfig::default() })]

    #[test]
    fn random_fused_aggregates_match_datafusion(
        function in functions(),
        ty in prop::sample::select(vec![FusedType::Int64, FusedType::Float64]),
        argument in numeric(),
        integer_argument in integer(),
        filter in prop::option::of(predicate()),
        (batch, selected, group_ids) in batches(),
    ) {
        let argument = match ty {
            FusedType::Int64 => integer_argument,
            FusedType::Float64 => argument,
        };
        check(function, ty, &argument, filter.as_deref(), &batch, &selected, &group_ids);
    }
}

/// `MIN`/`MAX` of a timestamp fold as `i64`s (session windows) and give
/// DataFusion's results and partial states, time zone included, through
/// merges and a checkpoint's partial state.
#[test]
fn timestamp_extremes_fold_as_datafusion_computes_them() {
    use arrow::array::TimestampMillisecondArray;
    use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
    use datafusion::physical_expr::expressions::Column;

    let data_type = DataType::Timestamp(TimeUnit::Millisecond, Some("+02:00".into()));
    let schema = Arc::new(Schema::new(vec![Field::new("t", data_type.clone(), true)]));
    let values: ArrayRef = Arc::new(
        TimestampMillisecondArray::from(vec![Some(5), None, Some(-3), Some(i64::MAX), Some(7)])
            .with_timezone("+02:00"),
    );
    let groups = [0, 0, 1, 1, 2];
    let argument: Arc<dyn PhysicalExpr> = Arc::new(Column::new("t", 0));
    for function in [FusedFunction::Min, FusedFunction::Max] {
        let theirs = || {
            AggregateExprBuilder::new(udaf(function), vec![Arc::clone(&argument)])
                .schema(Arc::clone(&schema))
                .alias("x")
                .build()
                .unwrap()
                .create_groups_accumulator()
                .unwrap()
        };
        let kind = FusedAggregateKind {
            function,
            ty: FusedType::Int64,
        };
        let mut ours = FusedAccumulator::with_output(kind, &data_type);
        let mut want = theirs();
        for accumulator in [&mut ours as &mut dyn GroupsAccumulator, want.as_mut()] {
            accumulator
                .update_batch(std::slice::from_ref(&values), &groups, None, 4)
                .unwrap();
        }
        let what = format!("{function:?}");
        // Group 3 saw nothing: NULL.
        same(
            &want.evaluate(EmitTo::All).unwrap(),
            &ours.evaluate_groups(&[0, 1, 2, 3]),
            &what,
        );
        let mut want = theirs();
        want.update_batch(std::slice::from_ref(&values), &groups, None, 4)
            .unwrap();
        let state = want.state(EmitTo::All).unwrap();
        let our_state = ours.state_groups(&[0, 1, 2, 3]);
        same(&state[0], &our_state[0], &format!("{what} state"));
        // Merged as sessions merge, and restored from a partial state.
        ours.merge_group(0, 1);
        let mut merged = theirs();
        merged.merge_batch(&state[..1], &[0, 0, 1, 2], 3).unwrap();
        let mut restored = FusedAccumulator::with_output(kind, &data_type);
        restored.merge_batch(&state[..1], &[0, 0, 1, 2], 3).unwrap();
        let merged = merged.evaluate(EmitTo::All).unwrap();
        same(
            &merged,
            &restored.evaluate(EmitTo::All).unwrap(),
            &format!("{what} restored"),
        );
        same(
            &merged.slice(0, 1),
            &ours.evaluate_groups(&[0]),
            &format!("{what} merged"),
        );
    }
}
