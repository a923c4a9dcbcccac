//! Fused kernels that evaluate the `WHERE` and look groups up themselves,
//! against the interpreted way: the `WHERE` evaluated by DataFusion, the
//! groups resolved by the group table's own lookup, and DataFusion's
//! accumulators. Random keys (strings of every length around the 8 bytes
//! a slot holds, multi-byte UTF-8, integer extremes), enough of them that
//! tables grow in the middle of a kernel call, over several batches into
//! one table, with random selections, `WHERE`s and aggregates.

use std::sync::Arc;

use arrow::array::{ArrayRef, AsArray, BooleanArray, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field};
use datafusion::logical_expr::{EmitTo, GroupsAccumulator};
use datafusion::physical_expr::PhysicalExpr;
use laminar_operators::fused::{
    FusedAccumulator, FusedAggregateKind, FusedFunction, FusedType, FusedUpdate, GroupsOf,
};
use laminar_operators::fused_lookup::LookupKey;
use laminar_operators::groups::KeyEncoder;
use proptest::prelude::*;

use super::fused::{lower_fused, CompiledFusedUpdate, FusedInput, FusedLookup};
use super::fused_tests::{compile_now, datafusion_accumulator, functions};
use super::tests::{column_strategy, numeric, physical, predicate, same};

/// One batch's rows: the batch, each row's key (an index into the key
/// pool), and which rows the selection keeps.
type Chunk = (RecordBatch, Vec<usize>, Vec<bool>);

/// String keys around the 8 bytes a slot holds whole, and past them.
fn string_pool() -> Vec<String> {
    let mut pool: Vec<String> = vec![
        String::new(),
        "a".into(),
        "é".into(),
        "SYM0042".into(),
        "12345678".into(),
        "123456789".into(),
        "a key longer than sixteen bytes".into(),
        "ünïcødé".into(),
    ];
    pool.extend((0..300).map(|i| "k".repeat(i % 12) + &i.to_string()));
    pool
}

fn integer_pool() -> Vec<i64> {
    let mut pool = vec![0, -1, 1, i64::MIN, i64::MAX, 8];
    pool.extend((0..300).map(|i| i * 7919 - 1000));
    pool
}

/// The key column of a chunk, read from one row in (its offsets do not
/// start at 0).
fn key_array(key: LookupKey, picks: &[usize]) -> ArrayRef {
    match key {
        LookupKey::Utf8 => {
            let pool = string_pool();
            let mut values = vec!["x".to_string()];
            values.extend(picks.iter().map(|&i| pool[i % pool.len()].clone()));
            Arc::new(StringArray::from(values).slice(1, picks.len()))
        }
        LookupKey::Int64 => {
            let pool = integer_pool();
            let mut values = vec![5];
            values.extend(picks.iter().map(|&i| pool[i % pool.len()]));
            Arc::new(Int64Array::from(values).slice(1, picks.len()))
        }
    }
}

fn compiled_looking_up(
    inputs: Vec<FusedInput>,
    lookup: FusedLookup,
) -> Option<CompiledFusedUpdate> {
    let program = lower_fused(&inputs, &super::tests::schema(), Some(&lookup))?;
    program.lookup.as_ref()?;
    let update = compile_now(program);
    assert!(update.looks_up_groups());
    Some(update)
}

/// `(function, argument)` of each aggregate, as the planner coerces them.
fn aggregate(function: FusedFunction, ty: FusedType, sql: &str) -> Option<FusedInput> {
    let ty = match function {
        FusedFunction::Avg => FusedType::Float64,
        FusedFunction::Count => FusedType::Int64,
        _ => ty,
    };
    let cast = match ty {
        FusedType::Int64 => "BIGINT",
        FusedType::Float64 => "DOUBLE",
    };
    Some(FusedInput {
        kind: FusedAggregateKind { function, ty },
        argument: physical(&format!("CAST(({sql}) AS {cast})"))?,
        filter: None,
    })
}

/// `predicate` as `WHERE` reads it (NULL is false), and `selection`.
fn kept_rows(
    predicate: Option<&Arc<dyn PhysicalExpr>>,
    batch: &RecordBatch,
    selection: &BooleanArray,
) -> Option<BooleanArray> {
    let Some(predicate) = predicate else {
        return Some(selection.clone());
    };
    let keep = predicate
        .evaluate(batch)
        .and_then(|v| v.into_array(batch.num_rows()))
        .ok()?;
    let keep = laminar_operators::fused::selection_of(keep.as_boolean_opt()?.clone());
    Some(arrow::compute::and(selection, &keep).unwrap())
}

/// Runs `chunks` through the kernel and the interpreted way into one
/// table each, and compares groups (keys in id order) and results. False
/// when something does not compile.
fn check(
    key: LookupKey,
    aggregates: &[(FusedFunction, FusedType, String)],
    where_sql: Option<&str>,
    chunks: &[Chunk],
) -> bool {
    let Some(inputs) = aggregates
        .iter()
        .map(|(f, ty, sql)| aggregate(*f, *ty, sql))
        .collect::<Option<Vec<_>>>()
    else {
        return false;
    };
    // A WHERE that does not plan is no case to check.
    let predicate = where_sql.map(physical);
    if predicate.as_ref().is_some_and(Option::is_none) {
        return false;
    }
    let predicate = predicate.flatten();
    let arguments: Vec<_> = inputs.iter().map(|i| Arc::clone(&i.argument)).collect();
    let kinds: Vec<_> = inputs.iter().map(|i| i.kind).collect();
    let Some(update) = compiled_looking_up(
        inputs,
        FusedLookup {
            key,
            predicate: predicate.clone(),
        },
    ) else {
        return false;
    };
    let key_type = match key {
        LookupKey::Utf8 => DataType::Utf8,
        LookupKey::Int64 => DataType::Int64,
    };
    let encoder = KeyEncoder::new(&[Arc::new(Field::new("k", key_type, false))]).unwrap();
    let mut ours_table = encoder.table();
    let mut ours: Vec<_> = kinds.iter().map(|&k| FusedAccumulator::new(k)).collect();
    let mut theirs_table = encoder.table();
    let mut theirs: Vec<Box<dyn GroupsAccumulator>> = aggregates
        .iter()
        .zip(&arguments)
        .map(|((function, _, _), argument)| datafusion_accumulator(*function, argument))
        .collect();
    let mut group_ids = Vec::new();
    for (batch, picks, selected) in chunks {
        let rows = batch.num_rows();
        let keys_array = key_array(key, picks);
        let key_arrays = [keys_array];
        let keys = encoder.encode(&key_arrays).unwrap();
        let selection = BooleanArray::from(selected.clone());
        let Some(kept) = kept_rows(predicate.as_ref(), batch, &selection) else {
            return false;
        };
        let mut values = Vec::new();
        for argument in &arguments {
            match argument.evaluate(batch).and_then(|v| v.into_array(rows)) {
                Ok(v) => values.push(v),
                Err(_) => return false,
            }
        }
        // Every other chunk without a selection (every row).
        let selection = (!selected.iter().all(|&s| s)).then_some(&selection);
        update
            .update_looking_up(
                batch,
                selection,
                GroupsOf {
                    encoder: &encoder,
                    table: &mut ours_table,
                    keys: &keys,
                },
                &mut ours,
            )
            .unwrap();
        encoder.resolve(&mut theirs_table, &keys, Some(&kept), rows, &mut group_ids);
        for (accumulator, values) in theirs.iter_mut().zip(&values) {
            accumulator
                .update_batch(
                    std::slice::from_ref(values),
                    &group_ids,
                    Some(&kept),
                    theirs_table.len(),
                )
                .unwrap();
        }
    }
    assert_eq!(ours_table.len(), theirs_table.len(), "groups");
    let ids = ours_table.all_ids();
    let ours_keys = encoder.key_columns(&ours_table, &ids).unwrap();
    let theirs_keys = encoder.key_columns(&theirs_table, &ids).unwrap();
    assert_eq!(
        ours_keys[0].as_ref(),
        theirs_keys[0].as_ref(),
        "keys in id order"
    );
    let what = format!("{aggregates:?} WHERE {where_sql:?} by {key:?}");
    for (ours, theirs) in ours.iter_mut().zip(&mut theirs) {
        same(
            &theirs.evaluate(EmitTo::All).unwrap(),
            &ours.evaluate(EmitTo::All).unwrap(),
            &what,
        );
    }
    true
}

/// One to three batches, each with a key per row (from a pool of a few,
/// or of hundreds) and a selection.
fn chunks() -> impl Strategy<Value = Vec<Chunk>> {
    let chunk =
        (column_strategy(), 0usize..3, prop::bool::ANY).prop_flat_map(|(batch, cut, few_keys)| {
            let cut = cut.min(batch.num_rows() - 1);
            let batch = batch.slice(cut, batch.num_rows() - cut);
            let rows = batch.num_rows();
            let keys = if few_keys { 0usize..6 } else { 0usize..400 };
            (
                Just(batch),
                prop::collection::vec(keys, rows),
                prop::collection::vec(prop_oneof![3 => Just(true), 1 => Just(false)], rows),
            )
        });
    prop::collection::vec(chunk, 1..4)
}

#[test]
fn every_key_length_and_table_growth_match_the_interpreted_lookup() {
    let schema = super::tests::schema();
    let rows = 64;
    let columns: Vec<ArrayRef> = schema
        .fields()
        .iter()
        .map(|f| match f.name().as_str() {
            "a" => Arc::new(Int64Array::from_iter_values(0..rows as i64)) as ArrayRef,
            "b" => Arc::new(arrow::array::Float64Array::from_iter_values(
                (0..rows).map(|i| i as f64 / 2.0),
            )),
            _ => arrow::array::new_null_array(f.data_type(), rows),
        })
        .collect();
    let batch = RecordBatch::try_new(schema, columns).unwrap();
    // Every key new in the first batch (the table grows mid-call, more
    // than once), then the same keys found, then a mix.
    let chunks: Vec<Chunk> = vec![
        (batch.clone(), (0..rows).collect(), vec![true; rows]),
        (batch.clone(), (0..rows).rev().collect(), vec![true; rows]),
        (
            batch.clone(),
            (0..rows).map(|i| i * 5 % 97).collect(),
            (0..rows).map(|i| i % 3 != 0).collect(),
        ),
    ];
    let aggregates = [
        (FusedFunction::Count, FusedType::Int64, "a".to_string()),
        (
            FusedFunction::Sum,
            FusedType::Float64,
            "b * 2.0".to_string(),
        ),
        (FusedFunction::Max, FusedType::Int64, "a".to_string()),
    ];
    for key in [LookupKey::Utf8, LookupKey::Int64] {
        for where_sql in [None, Some("a > 20 AND b < 25.0"), Some("b > 10.0")] {
            assert!(
                check(key, &aggregates, where_sql, &chunks),
                "{key:?} WHERE {where_sql:?} did not compile"
            );
        }
    }
}

/// A short key already in the table is found in the kernel's own loop:
/// the kernel stops once per new key, and at a string key only where the
/// 8-byte word ending at its end would start before the column's buffer
/// (the first key here, 7 bytes at offset 0).
#[test]
fn short_keys_in_the_table_are_found_without_stopping() {
    use laminar_operators::fused_lookup::lookup_stops;
    let schema = super::tests::schema();
    let rows = 200;
    let columns: Vec<ArrayRef> = schema
        .fields()
        .iter()
        .map(|f| match f.name().as_str() {
            "a" => Arc::new(Int64Array::from_iter_values(0..rows as i64)) as ArrayRef,
            _ => arrow::array::new_null_array(f.data_type(), rows),
        })
        .collect();
    let batch = RecordBatch::try_new(schema, columns).unwrap();
    let keys: [(LookupKey, DataType, ArrayRef); 2] = [
        (
            LookupKey::Utf8,
            DataType::Utf8,
            Arc::new(StringArray::from_iter_values(
                (0..rows).map(|i| format!("SYM{:04}", i % 50)),
            )),
        ),
        (
            LookupKey::Int64,
            DataType::Int64,
            Arc::new(Int64Array::from_iter_values(
                (0..rows as i64).map(|i| (i % 50) * 1_000_003 - 7),
            )),
        ),
    ];
    for (key, data_type, array) in keys {
        let inputs = vec![aggregate(FusedFunction::Sum, FusedType::Int64, "a").unwrap()];
        let kind = inputs[0].kind;
        let update = compiled_looking_up(
            inputs,
            FusedLookup {
                key,
                predicate: None,
            },
        )
        .unwrap();
        let encoder = KeyEncoder::new(&[Arc::new(Field::new("k", data_type, false))]).unwrap();
        let mut table = encoder.table();
        let mut state = [FusedAccumulator::new(kind)];
        let key_arrays = [array];
        let keys = encoder.encode(&key_arrays).unwrap();
        let mut stops = Vec::new();
        for _ in 0..2 {
            let before = lookup_stops();
            let groups = GroupsOf {
                encoder: &encoder,
                table: &mut table,
                keys: &keys,
            };
            update
                .update_looking_up(&batch, None, groups, &mut state)
                .unwrap();
            stops.push(lookup_stops() - before);
        }
        let first_key = u64::from(key == LookupKey::Utf8);
        // The first pass inserts 50 keys (the first among them); the
        // second finds every key but the first row's.
        assert_eq!(stops, [50, first_key], "{key:?}");
        assert_eq!(table.len(), 50);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn random_lookups_match_the_interpreted_lookup(
        key in prop::sample::select(vec![LookupKey::Utf8, LookupKey::Int64]),
        functions in prop::collection::vec(
            (functions(), prop::sample::select(vec![FusedType::Int64, FusedType::Float64])),
            1..4,
        ),
        argument in numeric(),
        where_sql in prop::option::of(predicate()),
        chunks in chunks(),
    ) {
        let aggregates: Vec<_> = functions
            .into_iter()
            .map(|(f, ty)| {
                let sql = match ty {
                    // A float narrowed to BIGINT stays interpreted.
                    FusedType::Int64 => "a".to_string(),
                    FusedType::Float64 => argument.clone(),
                };
                (f, ty, sql)
            })
            .collect();
        check(key, &aggregates, where_sql.as_deref(), &chunks);
    }
}
