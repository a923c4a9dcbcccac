//! State lookup and update: the group table every keyed operator uses
//! (key -> dense group id, inserting on a miss), beside a plain
//! `hashbrown::HashMap` from the owned key to an id doing the same lookups
//! in the same run.
//!
//! Run: `cargo bench --bench state`. 1 M rows in
//! batches of 1,024, keys drawn from 100, 10,000 or 1,000,000 distinct
//! values (a string key like `SYM0042`, or a BIGINT), one table per
//! iteration, so the first sight of each key inserts it. The
//! `group_table_batch_*` rows resolve a whole batch at once, as the
//! aggregates do, with 7-byte string keys (`K004242`, held whole in the
//! table's slot) and BIGINTs.

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use datafusion::arrow::array::{Array, ArrayRef, Int64Array, StringArray};
use datafusion::arrow::datatypes::{DataType, Field};
use laminar_operators::groups::KeyEncoder;

const ROWS: usize = 1_000_000;
const BATCH_ROWS: usize = 1024;

/// Row `i`'s key number: a scrambled walk over `keys` values.
fn key_of(i: usize, keys: usize) -> usize {
    (i.wrapping_mul(2_654_435_761)) % keys
}

/// String keys over `keys` values, each written by `name`.
fn string_batches(keys: usize, name: fn(usize) -> String) -> Vec<ArrayRef> {
    (0..ROWS)
        .step_by(BATCH_ROWS)
        .map(|start| {
            Arc::new(StringArray::from_iter_values(
                (start..start + BATCH_ROWS).map(|i| name(key_of(i, keys))),
            )) as ArrayRef
        })
        .collect()
}

fn integer_batches(keys: usize) -> Vec<ArrayRef> {
    (0..ROWS)
        .step_by(BATCH_ROWS)
        .map(|start| {
            Arc::new(Int64Array::from_iter_values(
                (start..start + BATCH_ROWS).map(|i| key_of(i, keys) as i64),
            )) as ArrayRef
        })
        .collect()
}

fn group_table_run(data_type: &DataType, batches: &[ArrayRef]) -> Duration {
    let encoder =
        KeyEncoder::new(&[Arc::new(Field::new("k", data_type.clone(), false))]).expect("encoder");
    let mut table = encoder.table();
    let started = Instant::now();
    let mut checksum = 0usize;
    for batch in batches {
        let columns = [Arc::clone(batch)];
        let keys = encoder.encode(&columns).expect("keys");
        for row in 0..batch.len() {
            checksum = checksum.wrapping_add(encoder.group_id(&mut table, &keys, row));
        }
    }
    std::hint::black_box(checksum);
    started.elapsed()
}

fn group_table_batch_run(data_type: &DataType, batches: &[ArrayRef]) -> Duration {
    let encoder =
        KeyEncoder::new(&[Arc::new(Field::new("k", data_type.clone(), false))]).expect("encoder");
    let mut table = encoder.table();
    let mut group_ids = Vec::with_capacity(BATCH_ROWS);
    let started = Instant::now();
    let mut checksum = 0usize;
    for batch in batches {
        let columns = [Arc::clone(batch)];
        let keys = encoder.encode(&columns).expect("keys");
        encoder.resolve(&mut table, &keys, None, batch.len(), &mut group_ids);
        checksum = checksum.wrapping_add(group_ids[batch.len() - 1]);
    }
    std::hint::black_box(checksum);
    started.elapsed()
}

fn hash_map_strings(batches: &[ArrayRef]) -> Duration {
    let mut map: hashbrown::HashMap<String, u32> = hashbrown::HashMap::new();
    let started = Instant::now();
    let mut checksum = 0usize;
    for batch in batches {
        let strings = batch
            .as_any()
            .downcast_ref::<StringArray>()
            .expect("strings");
        for row in 0..strings.len() {
            let key = strings.value(row);
            let next = map.len() as u32;
            let id = match map.get(key) {
                Some(&id) => id,
                None => {
                    map.insert(key.to_string(), next);
                    next
                }
            };
            checksum = checksum.wrapping_add(id as usize);
        }
    }
    std::hint::black_box(checksum);
    started.elapsed()
}

fn hash_map_integers(batches: &[ArrayRef]) -> Duration {
    let mut map: hashbrown::HashMap<i64, u32> = hashbrown::HashMap::new();
    let started = Instant::now();
    let mut checksum = 0usize;
    for batch in batches {
        let integers = batch
            .as_any()
            .downcast_ref::<Int64Array>()
            .expect("integers");
        for &key in integers.values() {
            let next = map.len() as u32;
            checksum = checksum.wrapping_add(*map.entry(key).or_insert(next) as usize);
        }
    }
    std::hint::black_box(checksum);
    started.elapsed()
}

fn state(c: &mut Criterion) {
    let mut group = c.benchmark_group("state_lookup");
    group
        .sample_size(10)
        .throughput(Throughput::Elements(ROWS as u64));
    for keys in [100usize, 10_000, 1_000_000] {
        let strings = string_batches(keys, |k| format!("SYM{k:07}"));
        let integers = integer_batches(keys);
        // 7-byte keys, held whole in a slot.
        let short_strings = string_batches(keys, |k| format!("K{k:06}"));
        for (name, data_type, input) in [
            ("group_table_batch_utf8", DataType::Utf8, &short_strings),
            ("group_table_batch_int64", DataType::Int64, &integers),
        ] {
            group.bench_with_input(BenchmarkId::new(name, keys), input, |b, s| {
                b.iter_custom(|iters| {
                    (0..iters)
                        .map(|_| group_table_batch_run(&data_type, s))
                        .sum()
                })
            });
        }
        group.bench_with_input(
            BenchmarkId::new("group_table_utf8", keys),
            &strings,
            |b, s| {
                b.iter_custom(|iters| {
                    (0..iters)
                        .map(|_| group_table_run(&DataType::Utf8, s))
                        .sum()
                })
            },
        );
        group.bench_with_input(
            BenchmarkId::new("hash_map_string", keys),
            &strings,
            |b, s| b.iter_custom(|iters| (0..iters).map(|_| hash_map_strings(s)).sum()),
        );
        group.bench_with_input(
            BenchmarkId::new("group_table_int64", keys),
            &integers,
            |b, s| {
                b.iter_custom(|iters| {
                    (0..iters)
                        .map(|_| group_table_run(&DataType::Int64, s))
                        .sum()
                })
            },
        );
        group.bench_with_input(BenchmarkId::new("hash_map_i64", keys), &integers, |b, s| {
            b.iter_custom(|iters| (0..iters).map(|_| hash_map_integers(s)).sum())
        });
    }
    group.finish();
}

criterion_group!(benches, state);
criterion_main!(benches);
