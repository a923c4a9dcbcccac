//! What incremental checkpoints cost on the checkpoint thread, per state
//! row: digesting a snapshot, and diffing one against a base when 1% of
//! its rows changed in place and when all did. One batch of 1 M rows of
//! six `BIGINT` columns, the shape of a keyed aggregate's state.
//!
//! Run: `cargo bench -p laminar-state --bench digest`.

use std::sync::Arc;

use arrow::array::{ArrayRef, Int64Array, RecordBatch};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use laminar_state::{row_digests, Base};

const ROWS: usize = 1_000_000;

fn state(changed_every: usize) -> RecordBatch {
    let column = |f: &dyn Fn(usize) -> i64| -> ArrayRef {
        Arc::new(Int64Array::from_iter_values((0..ROWS).map(f)))
    };
    let changed = |i: usize| i64::from(changed_every > 0 && i.is_multiple_of(changed_every));
    RecordBatch::try_from_iter(vec![
        ("window_start", column(&|_| i64::MIN)),
        ("key_0", column(&|i| i as i64)),
        ("state_0_0", column(&|i| (i % 97) as i64 * 10 + changed(i))),
        ("state_1_0", column(&|_| 10)),
        ("value_0", column(&|i| (i % 97) as i64 * 10)),
        ("value_1", column(&|_| 10)),
    ])
    .expect("batch")
}

fn digests(c: &mut Criterion) {
    let mut group = c.benchmark_group("state_digest");
    group
        .sample_size(10)
        .throughput(Throughput::Elements(ROWS as u64));
    let base_batch = state(0);
    group.bench_function("row_digests", |b| {
        b.iter(|| row_digests(&base_batch).expect("digests"))
    });
    let base = Base::new(std::slice::from_ref(&base_batch)).expect("base");
    for (name, every) in [("diff_changed_1pct", 100), ("diff_changed_all", 1)] {
        let current = [state(every)];
        group.bench_function(name, |b| b.iter(|| base.diff(&current).expect("diff")));
    }
    group.finish();
}

criterion_group!(benches, digests);
criterion_main!(benches);
