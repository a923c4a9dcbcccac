//! Compiled kernels against the interpreter: hand-picked edge cases and
//! random expressions over random batches with NULLs, compared bit for bit.

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, BooleanArray, Float32Array, Float64Array, Int32Array, Int64Array, Int8Array,
    LargeStringArray, RecordBatch, StringArray, TimestampMillisecondArray, UInt32Array,
};
use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use datafusion::common::DFSchema;
use datafusion::logical_expr::simplify::SimplifyContext;
use datafusion::optimizer::simplify_expressions::ExprSimplifier;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::prelude::SessionContext;
use proptest::prelude::*;

use super::{wrap, CompiledExpr, JitMode};

pub(super) fn schema() -> Arc<Schema> {
    Arc::new(Schema::new(vec![
        Field::new("a", DataType::Int64, true),
        Field::new("b", DataType::Float64, true),
        Field::new("c", DataType::Int32, true),
        Field::new("d", DataType::Boolean, true),
        Field::new("e", DataType::UInt32, true),
        Field::new("f", DataType::Float32, true),
        Field::new("g", DataType::Int8, true),
        Field::new("ts", DataType::Timestamp(TimeUnit::Millisecond, None), true),
        Field::new("s", DataType::Utf8, true),
        Field::new("ls", DataType::LargeUtf8, true),
    ]))
}

/// The string columns `s` and `ls` (the same values, 32- and 64-bit
/// offsets).
fn strings(values: &[Option<&str>]) -> [ArrayRef; 2] {
    [
        Arc::new(StringArray::from(values.to_vec())),
        Arc::new(LargeStringArray::from(values.to_vec())),
    ]
}

/// Plans `sql` over the test schema (coerced and simplified, as
/// DataFusion plans it).
pub(super) fn physical(sql: &str) -> Option<Arc<dyn PhysicalExpr>> {
    let df_schema = DFSchema::try_from(schema().as_ref().clone()).ok()?;
    let ctx = SessionContext::new();
    let expr = ctx.parse_sql_expr(sql, &df_schema).ok()?;
    let simplifier = ExprSimplifier::new(
        SimplifyContext::builder()
            .with_schema(Arc::new(df_schema.clone()))
            .build(),
    );
    let expr = simplifier.coerce(expr, &df_schema).ok()?;
    let expr = simplifier.simplify(expr).ok()?;
    ctx.create_physical_expr(expr, &df_schema).ok()
}

/// The compiled form of `expr` (compiled now), if the compiler takes it.
fn compiled(expr: &Arc<dyn PhysicalExpr>) -> (Arc<dyn PhysicalExpr>, Vec<Arc<CompiledExpr>>) {
    let mut kernels = Vec::new();
    let wrapped = wrap(Arc::clone(expr), &schema(), JitMode::Eager, &mut kernels);
    (wrapped, kernels)
}

pub(super) fn same(interpreted: &ArrayRef, compiled: &ArrayRef, what: &str) {
    assert_eq!(
        interpreted.data_type(),
        compiled.data_type(),
        "{what}: type"
    );
    assert_eq!(interpreted.len(), compiled.len(), "{what}: length");
    for row in 0..interpreted.len() {
        assert_eq!(
            interpreted.is_valid(row),
            compiled.is_valid(row),
            "{what}: validity of row {row}"
        );
        if !interpreted.is_valid(row) {
            continue;
        }
        let (i, c) = (interpreted.slice(row, 1), compiled.slice(row, 1));
        let equal = match interpreted.data_type() {
            DataType::Float64 => {
                let bits = |a: &ArrayRef| {
                    a.as_any()
                        .downcast_ref::<Float64Array>()
                        .unwrap()
                        .value(0)
                        .to_bits()
                };
                bits(&i) == bits(&c)
            }
            DataType::Float32 => {
                let bits = |a: &ArrayRef| {
                    a.as_any()
                        .downcast_ref::<Float32Array>()
                        .unwrap()
                        .value(0)
                        .to_bits()
                };
                bits(&i) == bits(&c)
            }
            _ => i.to_data() == c.to_data(),
        };
        assert!(
            equal,
            "{what}: row {row}: interpreted {i:?}, compiled {c:?}"
        );
    }
}

/// Evaluates both ways and compares; returns whether anything compiled.
fn check(sql: &str, batch: &RecordBatch) -> bool {
    let Some(expr) = physical(sql) else {
        return false;
    };
    let (wrapped, kernels) = compiled(&expr);
    let interpreted = expr
        .evaluate(batch)
        .and_then(|v| v.into_array(batch.num_rows()));
    let jitted = wrapped
        .evaluate(batch)
        .and_then(|v| v.into_array(batch.num_rows()));
    match (interpreted, jitted) {
        (Ok(i), Ok(c)) => same(&i, &c, sql),
        (Err(i), Err(c)) => assert_eq!(i.to_string(), c.to_string(), "{sql}: errors"),
        (i, c) => panic!("{sql}: interpreted {i:?}, compiled {c:?}"),
    }
    kernels.iter().any(|k| k.is_compiled())
}

fn edge_batch() -> RecordBatch {
    let a: ArrayRef = Arc::new(Int64Array::from(vec![
        Some(1),
        None,
        Some(i64::MIN),
        Some(i64::MAX),
        Some(0),
        Some(-7),
        Some(10),
    ]));
    let b: ArrayRef = Arc::new(Float64Array::from(vec![
        Some(1.5),
        Some(f64::NAN),
        Some(-0.0),
        Some(0.0),
        None,
        Some(f64::INFINITY),
        Some(-f64::NAN),
    ]));
    let c: ArrayRef = Arc::new(Int32Array::from(vec![
        Some(2),
        Some(0),
        Some(-1),
        None,
        Some(i32::MIN),
        Some(3),
        Some(-1),
    ]));
    let d: ArrayRef = Arc::new(BooleanArray::from(vec![
        Some(true),
        None,
        Some(false),
        Some(true),
        None,
        Some(false),
        Some(true),
    ]));
    let e: ArrayRef = Arc::new(UInt32Array::from(vec![
        Some(u32::MAX),
        Some(0),
        Some(1),
        Some(2),
        None,
        Some(5),
        Some(9),
    ]));
    let f: ArrayRef = Arc::new(Float32Array::from(vec![
        Some(0.1),
        Some(-0.0),
        None,
        Some(f32::NAN),
        Some(1e30),
        Some(2.5),
        Some(-3.0),
    ]));
    let g: ArrayRef = Arc::new(Int8Array::from(vec![
        Some(127),
        Some(-128),
        Some(1),
        None,
        Some(0),
        Some(-1),
        Some(5),
    ]));
    let ts: ArrayRef = Arc::new(TimestampMillisecondArray::from(vec![
        Some(1_000),
        Some(2_000),
        None,
        Some(0),
        Some(-5),
        Some(99),
        Some(1_000),
    ]));
    let [s, ls] = strings(&[
        Some("AAPL"),
        None,
        Some(""),
        Some("AAPL "),
        Some("aapl"),
        Some("MSFT"),
        Some("AAPL"),
    ]);
    RecordBatch::try_new(schema(), vec![a, b, c, d, e, f, g, ts, s, ls]).unwrap()
}

#[test]
fn edge_cases_match_the_interpreter() {
    let batch = edge_batch();
    let cases = [
        "a + 1",
        "a * 3 - 2",
        "a + a",
        "-a",
        "b * 2.0 + 1.0",
        "b > 0.0",
        "b = b",
        "b < 1.0",
        "b >= -0.0",
        "f > 0.5",
        "f = f",
        "a > 5 AND b < 2.0",
        "a > 5 OR d",
        "NOT d",
        "d AND a IS NULL",
        "d OR NULL",
        "a IS NOT NULL",
        "b IS NULL",
        "a IS DISTINCT FROM 1",
        "c IS NOT DISTINCT FROM NULL",
        "CAST(c AS BIGINT) * a",
        "CAST(a AS DOUBLE) * b",
        "CAST(e AS BIGINT) + 1",
        "CAST(f AS DOUBLE) + b",
        "e > 3",
        "e * 2",
        "g + 1",
        "g * g",
        "ts > TIMESTAMP '1970-01-01 00:00:01'",
        "a + CAST(c AS BIGINT) > 0 AND NOT (b > 1.0)",
        "b / 0.0",
        "f * 2.0",
        "CAST(ts AS TIMESTAMP) > TIMESTAMP '1970-01-01 00:00:00.000000001'",
        // NaN signs survive negation as in DataFusion (they order
        // differently in comparisons).
        "(-b) * (-b)",
        "c < (-b) * (-b)",
        "(-f) * (-f) > 0.0",
        "CASE WHEN a > 2 THEN b ELSE -b END",
        "CASE WHEN a > 2 THEN a WHEN d THEN 0 END",
        "CASE WHEN b > 1.0 THEN 1 WHEN b IS NULL THEN 2 ELSE 3 END * a",
        "CASE a WHEN 1 THEN 10 WHEN 2 THEN 20 ELSE a END",
        "CASE WHEN d THEN a > 1 ELSE NULL END",
        "CASE WHEN c > 0 THEN a ELSE CAST(NULL AS BIGINT) END",
        "s = 'AAPL'",
        "s <> 'AAPL'",
        "'' = s",
        "s = ''",
        "ls = 'AAPL'",
        "ls <> 'MSFT'",
        "s = 'AAPL' AND a > 0",
        "s = 'MSFT' OR d",
        "NOT (s = 'aapl')",
        "CASE WHEN s = 'MSFT' THEN a ELSE 0 END",
        "s = 'AAPL' IS NULL",
        // DataFusion writes an IN list of up to 3 as ORs of equalities.
        "s IN ('MSFT', 'aapl')",
        "a NOT IN (1, 0)",
        "ts IN (TIMESTAMP '1970-01-01 00:00:01', TIMESTAMP '1970-01-01 00:00:00')",
    ];
    let interpreted: Vec<&str> = cases
        .into_iter()
        .filter(|sql| !check(sql, &batch))
        .collect();
    assert!(interpreted.is_empty(), "not compiled: {interpreted:?}");
}

#[test]
fn division_by_zero_and_overflow_raise_the_interpreters_error() {
    let batch = edge_batch();
    // c has a 0 in a valid row: DataFusion raises "Divide by zero".
    for sql in [
        "a / CAST(c AS BIGINT)",
        "a % CAST(c AS BIGINT)",
        "c / c",
        "a / -1",
        // Not where a CASE keeps the row out of the division: the kernel
        // hands the batch back and the interpreter answers.
        "CASE WHEN c <> 0 THEN a / CAST(c AS BIGINT) ELSE 0 END",
    ] {
        check(sql, &batch);
    }
    // Only NULL rows divide by zero: no error, the kernel's answer.
    let safe = batch.slice(0, 1);
    assert!(check("a / CAST(c AS BIGINT)", &safe));
    assert!(check("a % 3", &batch));
}

#[test]
fn unsupported_nodes_stay_interpreted_around_compiled_children() {
    let batch = edge_batch();
    let expr = physical("abs(a * 2) + 1").unwrap();
    let (wrapped, kernels) = compiled(&expr);
    assert!(!kernels.is_empty(), "a * 2 inside abs() compiles");
    let i = expr.evaluate(&batch).unwrap().into_array(7).unwrap();
    let c = wrapped.evaluate(&batch).unwrap().into_array(7).unwrap();
    same(&i, &c, "abs(a * 2) + 1");
    // Longer IN lists stay interpreted: DataFusion probes a hash set of
    // the literals, faster than a compiled OR of equalities
    // (docs/BENCHMARKS.md).
    for sql in [
        "a IN (1, 10, -7, 3, 4)",
        "s NOT IN ('AAPL', '', 'x', 'yy')",
        "b IN (0.0, 1.5, 2.5, 3.5)",
    ] {
        assert!(!check(sql, &batch), "{sql} compiled");
    }
    // Other string expressions are not compiled: the whole expression
    // stays as it was.
    let (_, none) = compiled(&physical("upper(CAST(a AS VARCHAR)) = '1'").unwrap());
    assert!(none.is_empty());
}

#[test]
fn sliced_inputs_read_from_their_offset() {
    let batch = edge_batch().slice(3, 4);
    for sql in [
        "a + 1",
        "d OR a > 0",
        "NOT d",
        "b > 0.0 AND d",
        "s = 'AAPL'",
        "ls <> 'aapl'",
    ] {
        assert!(check(sql, &batch), "{sql}");
    }
}

pub(super) fn column_strategy() -> impl Strategy<Value = RecordBatch> {
    let rows = 1usize..70;
    rows.prop_flat_map(|n| {
        let ints = prop::collection::vec(
            prop_oneof![
                3 => any::<i64>().prop_map(Some),
                3 => (-20i64..20).prop_map(Some),
                1 => Just(Some(i64::MIN)),
                1 => Just(Some(0)),
                1 => Just(None),
            ],
            n,
        );
        let floats = prop::collection::vec(
            prop_oneof![
                4 => (-100.0f64..100.0).prop_map(Some),
                1 => Just(Some(f64::NAN)),
                1 => Just(Some(-0.0)),
                1 => Just(Some(f64::NEG_INFINITY)),
                1 => Just(None),
            ],
            n,
        );
        let small = prop::collection::vec(prop_oneof![4 => (-5i32..5).prop_map(Some), 1 => Just(None)], n);
        let bools = prop::collection::vec(prop_oneof![2 => any::<bool>().prop_map(Some), 1 => Just(None)], n);
        let uints = prop::collection::vec(prop_oneof![4 => any::<u32>().prop_map(Some), 1 => Just(None)], n);
        let f32s = prop::collection::vec(prop_oneof![4 => (-10.0f32..10.0).prop_map(Some), 1 => Just(Some(f32::NAN)), 1 => Just(None)], n);
        let i8s = prop::collection::vec(prop_oneof![4 => any::<i8>().prop_map(Some), 1 => Just(None)], n);
        let texts = prop::collection::vec(
            prop_oneof![4 => prop::sample::select(STRINGS).prop_map(Some), 1 => Just(None)],
            n,
        );
        (ints, floats, small, bools, uints, f32s, i8s, texts).prop_map(|(a, b, c, d, e, f, g, s)| {
            let ts: Vec<Option<i64>> = a.iter().map(|v| v.map(|v| v.wrapping_rem(100_000))).collect();
            let [s, ls] = strings(&s);
            RecordBatch::try_new(
                schema(),
                vec![
                    Arc::new(Int64Array::from(a)),
                    Arc::new(Float64Array::from(b)),
                    Arc::new(Int32Array::from(c)),
                    Arc::new(BooleanArray::from(d)),
                    Arc::new(UInt32Array::from(e)),
                    Arc::new(Float32Array::from(f)),
                    Arc::new(Int8Array::from(g)),
                    Arc::new(TimestampMillisecondArray::from(ts)),
                    s,
                    ls,
                ],
            )
            .unwrap()
        })
    })
}

/// Random numeric expressions (SQL text), typed loosely: DataFusion's
/// coercion makes them well-typed or planning rejects them.
pub(super) fn numeric() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        Just("a".to_string()),
        Just("b".to_string()),
        Just("c".to_string()),
        Just("e".to_string()),
        Just("f".to_string()),
        Just("g".to_string()),
        (-3i64..10).prop_map(|v| v.to_string()),
        (-3.0f64..3.0).prop_map(|v| format!("{v:.2}")),
        Just("CAST(NULL AS BIGINT)".to_string()),
    ];
    leaf.prop_recursive(4, 24, 2, |inner| {
        prop_oneof![
            (
                inner.clone(),
                prop_oneof![Just("+"), Just("-"), Just("*"), Just("/"), Just("%")],
                inner.clone()
            )
                .prop_map(|(l, op, r)| format!("({l} {op} {r})")),
            inner.clone().prop_map(|x| format!("(-{x})")),
            (inner.clone(), inner.clone(), inner.clone())
                .prop_map(|(c, x, y)| format!("(CASE WHEN {c} > 0 THEN {x} ELSE {y} END)")),
            (inner.clone(), inner.clone(), inner.clone())
                .prop_map(|(c, x, y)| format!("(CASE {c} WHEN 1 THEN {x} WHEN 2 THEN {y} END)")),
            (
                inner.clone(),
                prop_oneof![Just("BIGINT"), Just("DOUBLE"), Just("INT")]
            )
                .prop_map(|(x, t)| format!("CAST({x} AS {t})")),
        ]
    })
}

/// The random batches' strings and the literals they are compared with.
/// Pairs differ only in their last byte, so a comparison that skips a
/// byte shows (literals of up to 16 bytes are compared inline, longer
/// ones by a call).
const STRINGS: &[&str] = &[
    "",
    "A",
    "AAPL",
    "AAPL ",
    "AAPLX",
    "aapl",
    "MSFT",
    "MSFU",
    "0123456789abcdef",
    "0123456789abcdeF",
    "0123456789abcdefg",
    "0123456789abcdefh",
    // Bytes with the high bit set: the inline comparison's constants
    // must not be sign-extended wrongly.
    "café",
    "cafè",
    "ÿÿÿÿ",
    "ÿÿÿþ",
    "日本語のテキスト",
    "日本語のテキスタ",
];

pub(super) fn predicate() -> impl Strategy<Value = String> {
    let comparison = (
        numeric(),
        prop_oneof![
            Just("="),
            Just("<>"),
            Just("<"),
            Just("<="),
            Just(">"),
            Just(">=")
        ],
        numeric(),
    )
        .prop_map(|(l, op, r)| format!("({l} {op} {r})"));
    let leaf = prop_oneof![
        4 => comparison,
        1 => Just("d".to_string()),
        1 => numeric().prop_map(|x| format!("({x} IS NULL)")),
        1 => (numeric(), numeric()).prop_map(|(l, r)| format!("({l} IS DISTINCT FROM {r})")),
        1 => Just("(ts >= TIMESTAMP '1970-01-01 00:00:10')".to_string()),
        2 => (
            prop_oneof![Just("s"), Just("ls")],
            prop_oneof![Just("="), Just("<>")],
            prop::sample::select(STRINGS),
            any::<bool>()
        )
            .prop_map(|(column, op, text, flipped)| if flipped {
                format!("('{text}' {op} {column})")
            } else {
                format!("({column} {op} '{text}')")
            }),
        1 => (
            numeric(),
            prop_oneof![Just("IN"), Just("NOT IN")],
            prop::collection::vec(-3i64..4, 1..7)
        )
            .prop_map(|(x, op, values)| {
                let values: Vec<String> = values.iter().map(|v| v.to_string()).collect();
                format!("({x} {op} ({}))", values.join(", "))
            }),
        1 => (
            prop_oneof![Just("s"), Just("ls")],
            prop_oneof![Just("IN"), Just("NOT IN")],
            prop::collection::vec(prop::sample::select(STRINGS), 1..7)
        )
            .prop_map(|(column, op, values)| {
                let values: Vec<String> = values.iter().map(|v| format!("'{v}'")).collect();
                format!("({column} {op} ({}))", values.join(", "))
            }),
    ];
    leaf.prop_recursive(3, 12, 2, |inner| {
        prop_oneof![
            (inner.clone(), inner.clone()).prop_map(|(l, r)| format!("({l} AND {r})")),
            (inner.clone(), inner.clone()).prop_map(|(l, r)| format!("({l} OR {r})")),
            inner.prop_map(|x| format!("(NOT {x})")),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

    #[test]
    fn random_numeric_expressions_match(sql in numeric(), batch in column_strategy()) {
        check(&sql, &batch);
    }

    #[test]
    fn random_predicates_match(sql in predicate(), batch in column_strategy()) {
        check(&sql, &batch);
    }
}
