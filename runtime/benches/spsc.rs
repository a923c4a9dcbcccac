//! The SPSC ring between threads (source handles to shards, shards to
//! shards and subscribers), beside the standard library's bounded channel
//! doing the same transfers in the same run.
//!
//! Run: `cargo bench -p laminar-runtime --bench spsc`. Two groups:
//! - `spsc_throughput`: 1 M messages (a `u64` each, as small as a message
//!   gets; the engine's are batches) from one thread to another through a
//!   ring of 64 and of 1,024 slots, both ends spinning (`try_push` /
//!   `try_pop`, as shards poll their rings); the channel blocks instead.
//! - `spsc_round_trip`: one message there and back through two rings,
//!   10,000 times per iteration: the per-hop latency floor of the
//!   push-to-subscriber path.

use std::hint::spin_loop;
use std::sync::mpsc::sync_channel;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use laminar_runtime::spsc::ring;

const MESSAGES: u64 = 1_000_000;
const ROUND_TRIPS: u64 = 10_000;

fn ring_transfer(capacity: usize) -> Duration {
    let (mut producer, mut consumer) = ring::<u64>(capacity);
    let started = Instant::now();
    let receiver = std::thread::spawn(move || {
        let mut sum = 0u64;
        let mut received = 0;
        while received < MESSAGES {
            match consumer.try_pop() {
                Some(value) => {
                    sum = sum.wrapping_add(value);
                    received += 1;
                }
                None => spin_loop(),
            }
        }
        sum
    });
    for value in 0..MESSAGES {
        let mut message = value;
        loop {
            match producer.try_push(message) {
                Ok(()) => break,
                Err(laminar_runtime::spsc::PushError::Full(back)) => {
                    message = back;
                    spin_loop();
                }
                Err(laminar_runtime::spsc::PushError::Closed(_)) => panic!("consumer gone"),
            }
        }
    }
    let sum = receiver.join().expect("receiver");
    assert_eq!(sum, MESSAGES * (MESSAGES - 1) / 2);
    started.elapsed()
}

fn channel_transfer(capacity: usize) -> Duration {
    let (sender, receiver) = sync_channel::<u64>(capacity);
    let started = Instant::now();
    let consumer = std::thread::spawn(move || receiver.iter().fold(0u64, u64::wrapping_add));
    for value in 0..MESSAGES {
        sender.send(value).expect("receiver alive");
    }
    drop(sender);
    assert_eq!(
        consumer.join().expect("consumer"),
        MESSAGES * (MESSAGES - 1) / 2
    );
    started.elapsed()
}

fn throughput(c: &mut Criterion) {
    let mut group = c.benchmark_group("spsc_throughput");
    group
        .sample_size(10)
        .throughput(Throughput::Elements(MESSAGES));
    for capacity in [64usize, 1024] {
        group.bench_with_input(BenchmarkId::new("ring", capacity), &capacity, |b, &cap| {
            b.iter_custom(|iters| (0..iters).map(|_| ring_transfer(cap)).sum())
        });
        group.bench_with_input(
            BenchmarkId::new("std_sync_channel", capacity),
            &capacity,
            |b, &cap| b.iter_custom(|iters| (0..iters).map(|_| channel_transfer(cap)).sum()),
        );
    }
    group.finish();
}

fn ring_round_trips() -> Duration {
    let (mut there, mut arrive) = ring::<u64>(64);
    let (mut back, mut returned) = ring::<u64>(64);
    let echo = std::thread::spawn(move || {
        let mut echoed = 0;
        while echoed < ROUND_TRIPS {
            if let Some(value) = arrive.try_pop() {
                while back.try_push(value).is_err() {
                    spin_loop();
                }
                echoed += 1;
            } else {
                spin_loop();
            }
        }
    });
    let started = Instant::now();
    for value in 0..ROUND_TRIPS {
        while there.try_push(value).is_err() {
            spin_loop();
        }
        loop {
            if let Some(answer) = returned.try_pop() {
                assert_eq!(answer, value);
                break;
            }
            spin_loop();
        }
    }
    let elapsed = started.elapsed();
    echo.join().expect("echo");
    elapsed
}

fn channel_round_trips() -> Duration {
    let (there, arrive) = sync_channel::<u64>(64);
    let (back, returned) = sync_channel::<u64>(64);
    let echo = std::thread::spawn(move || {
        for value in arrive.iter() {
            if back.send(value).is_err() {
                break;
            }
        }
    });
    let started = Instant::now();
    for value in 0..ROUND_TRIPS {
        there.send(value).expect("echo alive");
        assert_eq!(returned.recv().expect("echo alive"), value);
    }
    let elapsed = started.elapsed();
    drop(there);
    echo.join().expect("echo");
    elapsed
}

fn round_trip(c: &mut Criterion) {
    let mut group = c.benchmark_group("spsc_round_trip");
    group
        .sample_size(10)
        .throughput(Throughput::Elements(ROUND_TRIPS));
    group.bench_function("ring", |b| {
        b.iter_custom(|iters| (0..iters).map(|_| ring_round_trips()).sum())
    });
    group.bench_function("std_sync_channel", |b| {
        b.iter_custom(|iters| (0..iters).map(|_| channel_round_trips()).sum())
    });
    group.finish();
}

criterion_group!(benches, throughput, round_trip);
criterion_main!(benches);
