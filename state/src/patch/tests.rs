use std::sync::Arc;

use arrow::array::{ArrayRef, Float64Array, StringArray};
use proptest::prelude::*;

use super::*;

/// A state batch: window, key, a nullable string, a float.
fn state(window: Option<i64>, rows: &[(i64, Option<String>, f64)]) -> RecordBatch {
    let mut columns: Vec<(&str, ArrayRef)> = Vec::new();
    if let Some(window) = window {
        columns.push((
            "window_start",
            Arc::new(Int64Array::from_value(window, rows.len())),
        ));
    }
    columns.push((
        "key_0",
        Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.0))),
    ));
    columns.push((
        "state_0_0",
        Arc::new(StringArray::from_iter(rows.iter().map(|r| r.1.clone()))),
    ));
    columns.push((
        "state_1_0",
        Arc::new(Float64Array::from_iter_values(rows.iter().map(|r| r.2))),
    ));
    RecordBatch::try_from_iter(columns).unwrap()
}

fn row(i: i64) -> (i64, Option<String>, f64) {
    (i, (i % 3 != 0).then(|| format!("s{i}")), i as f64 * 0.5)
}

/// Through the byte format and back, as recovery reads it.
fn round_trip(parts: Vec<Part>) -> Vec<Part> {
    parts
        .into_iter()
        .map(|part| match part {
            Part::Patch(patch) => {
                let mut bytes = Vec::new();
                patch.encode(&mut bytes).unwrap();
                Part::Patch(Patch::decode(&bytes).unwrap())
            }
            whole => whole,
        })
        .collect()
}

fn check(base: &[RecordBatch], current: &[RecordBatch]) -> Diff {
    let diff = Base::new(base).unwrap().diff(current).unwrap();
    let rebuilt = apply(base, round_trip(diff.parts.clone())).unwrap();
    assert_eq!(rebuilt, current);
    diff
}

#[test]
fn updates_in_place_write_only_the_changed_rows() {
    let rows: Vec<_> = (0..1_000).map(row).collect();
    let base = vec![state(None, &rows)];
    let mut changed = rows.clone();
    for i in [3, 4, 500, 999] {
        changed[i].2 += 1.0;
    }
    changed.extend((1_000..1_010).map(row));
    let diff = check(&base, &[state(None, &changed)]);
    assert_eq!((diff.rows, diff.written_rows), (1_010, 14));
    assert!(diff.worth_patching());
    let Part::Patch(patch) = &diff.parts[0] else {
        panic!("expected a patch");
    };
    // 0..3 | new 3,4 | 5..500 | new | 501..999 | new 999 and the appended
    assert_eq!(patch.runs.len(), 6, "{:?}", patch.runs);
}

#[test]
fn a_buffer_evicted_from_its_front_is_one_run() {
    let rows: Vec<_> = (0..1_000).map(row).collect();
    let base = vec![state(None, &rows)];
    let later: Vec<_> = (200..1_100).map(row).collect();
    let diff = check(&base, &[state(None, &later)]);
    let Part::Patch(patch) = &diff.parts[0] else {
        panic!("expected a patch");
    };
    assert_eq!(
        patch.runs,
        vec![
            Run {
                start: 200,
                len: 800
            },
            Run {
                start: NEW,
                len: 100
            }
        ]
    );
}

#[test]
fn windows_match_by_window_not_by_position() {
    let window = |w: i64, n: i64| state(Some(w), &(0..n).map(row).collect::<Vec<_>>());
    let base = vec![window(0, 100), window(60_000, 100), window(120_000, 100)];
    // The first window closed, a new one opened, the middle one changed.
    let mut middle: Vec<_> = (0..100).map(row).collect();
    middle[50].2 = -1.0;
    let current = vec![
        state(Some(60_000), &middle),
        window(120_000, 100),
        window(180_000, 100),
    ];
    let diff = check(&base, &current);
    assert!(matches!(&diff.parts[0], Part::Patch(p) if p.base == 1 && p.rows.num_rows() == 1));
    assert!(matches!(&diff.parts[1], Part::Patch(p) if p.base == 2 && p.rows.num_rows() == 0));
    assert!(matches!(&diff.parts[2], Part::Whole(_)));
    assert_eq!(diff.written_rows, 101);
}

#[test]
fn mostly_new_rows_are_written_whole() {
    let base = vec![state(None, &(0..100).map(row).collect::<Vec<_>>())];
    let current = vec![state(None, &(60..200).map(row).collect::<Vec<_>>())];
    let diff = check(&base, &current);
    assert!(matches!(diff.parts[0], Part::Whole(_)));
    assert!(!diff.worth_patching());
}

#[test]
fn damaged_patches_are_errors() {
    let rows: Vec<_> = (0..10).map(row).collect();
    let base = vec![state(None, &rows)];
    let patch = |runs: Vec<Run>, new: &[(i64, Option<String>, f64)]| {
        Part::Patch(Patch {
            base: 0,
            runs,
            rows: state(None, new),
        })
    };
    let cases = [
        patch(vec![Run { start: 5, len: 6 }], &[]),
        patch(vec![Run { start: NEW, len: 2 }], &[row(1)]),
        patch(vec![Run { start: 0, len: 1 }], &[row(1)]),
        Part::Patch(Patch {
            base: 3,
            runs: vec![],
            rows: state(None, &[]),
        }),
    ];
    for case in cases {
        let error = apply(&base, vec![case]).unwrap_err();
        assert_eq!(error.code(), ErrorCode::StorageCorrupt, "{error}");
    }
    let mut bytes = Vec::new();
    let Part::Patch(good) = patch(vec![Run { start: 0, len: 10 }], &[]) else {
        unreachable!()
    };
    good.encode(&mut bytes).unwrap();
    for cut in [0, 3, 7, 12, bytes.len() - 1] {
        assert!(Patch::decode(&bytes[..cut]).is_err(), "cut at {cut}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// Whatever happened to the state (updates, inserts, deletes, moves,
    /// windows opening and closing), base plus patch is the state.
    #[test]
    fn base_plus_diff_is_the_snapshot(
        windows in proptest::collection::vec((0i64..6, 0usize..80), 1..5),
        edits in proptest::collection::vec((0u8..5, 0usize..100, -5i64..5), 0..40),
    ) {
        let base: Vec<RecordBatch> = windows
            .iter()
            .enumerate()
            .map(|(w, &(_, n))| {
                let rows: Vec<_> = (0..n as i64).map(|i| row(i + w as i64 * 1_000)).collect();
                state((w % 2 == 0).then_some(w as i64), &rows)
            })
            .collect();
        let mut current: Vec<Vec<(i64, Option<String>, f64)>> = windows
            .iter()
            .enumerate()
            .map(|(w, &(_, n))| (0..n as i64).map(|i| row(i + w as i64 * 1_000)).collect())
            .collect();
        for &(kind, at, value) in &edits {
            let rows = &mut current[at % windows.len()];
            let i = if rows.is_empty() { 0 } else { at % rows.len() };
            match kind {
                0 if !rows.is_empty() => rows[i].2 += value as f64,
                1 => rows.insert(i.min(rows.len()), row(10_000 + value)),
                2 if !rows.is_empty() => { rows.remove(i); }
                3 if !rows.is_empty() => { let r = rows.remove(i); rows.push(r); }
                4 if !rows.is_empty() => rows[i].1 = None,
                _ => {}
            }
        }
        let current: Vec<RecordBatch> = current
            .iter()
            .enumerate()
            .map(|(w, rows)| state((w % 2 == 0).then_some(w as i64 + windows[w].0), rows))
            .collect();
        check(&base, &current);
    }
}
