//! The WAL against a raw io_uring writer doing the same I/O, in one run.
//!
//! Run: `cargo bench -p laminar-wal --bench wal`. Three pairs:
//!
//! - `append`: 16 MiB of 64 KiB records, committed in 1 MiB groups, one
//!   `fdatasync` at the end; the raw writer writes 1 MiB O_DIRECT blocks at
//!   the same offsets and syncs once. Both files are preallocated and
//!   zero-filled before timing (the WAL's segment creation is untimed).
//! - `sync`: one 200-byte record appended and committed with `fdatasync`;
//!   the raw writer writes one 4 KiB block and syncs. p50/p99 are printed.
//! - `scan`: recovery's read of 64 MiB of log vs reading the same files.
//!
//! The WAL runs on a Glommio executor, as on a shard; the raw writer
//! drives its own io_uring from a plain thread.

use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::AsRawFd;
use std::path::Path;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use io_uring::{opcode, types, IoUring};
use laminar_wal::{scan, WalConfig, WalWriter};

const RECORD_BYTES: usize = 64 * 1024;
const GROUP_RECORDS: usize = 16;
const TOTAL_BYTES: usize = 16 << 20;
const SEGMENT_BYTES: u64 = 32 << 20;

/// Times `TOTAL_BYTES` of WAL appends in a fresh log, `iters` times.
fn wal_append(iters: u64) -> Duration {
    let mut total = Duration::ZERO;
    for _ in 0..iters {
        let dir = tempfile::tempdir_in(bench_dir()).unwrap();
        let path = dir.path().to_path_buf();
        total += glommio::LocalExecutorBuilder::default()
            .spawn(move || async move {
                let config = WalConfig {
                    segment_bytes: SEGMENT_BYTES,
                };
                let mut writer = WalWriter::open(&path, 0, 1, None, config).await.unwrap();
                let payload = vec![7u8; RECORD_BYTES - 32];
                let started = Instant::now();
                for i in 0..TOTAL_BYTES / RECORD_BYTES {
                    writer.append(1, &payload).await.unwrap();
                    if (i + 1) % GROUP_RECORDS == 0 {
                        writer.commit(false).await.unwrap();
                    }
                }
                writer.commit(true).await.unwrap();
                started.elapsed()
            })
            .unwrap()
            .join()
            .unwrap();
    }
    total
}

/// A 4 KiB-aligned buffer.
struct Aligned {
    ptr: *mut u8,
    len: usize,
}

impl Aligned {
    fn new(len: usize, byte: u8) -> Self {
        let layout = std::alloc::Layout::from_size_align(len, 4096).unwrap();
        // SAFETY: non-zero size, valid alignment; freed in Drop with the
        // same layout.
        let ptr = unsafe { std::alloc::alloc(layout) };
        assert!(!ptr.is_null());
        // SAFETY: `ptr` points to `len` writable bytes.
        unsafe { std::ptr::write_bytes(ptr, byte, len) };
        Self { ptr, len }
    }
}

impl Drop for Aligned {
    fn drop(&mut self) {
        let layout = std::alloc::Layout::from_size_align(self.len, 4096).unwrap();
        // SAFETY: allocated in `new` with this layout.
        unsafe { std::alloc::dealloc(self.ptr, layout) };
    }
}

/// A raw O_DIRECT file driven through its own io_uring.
struct Raw {
    ring: IoUring,
    file: std::fs::File,
}

impl Raw {
    /// A preallocated, zero-filled file, as the WAL's segments are.
    fn create(path: &Path, bytes: u64) -> Self {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .custom_flags(libc::O_DIRECT)
            .open(path)
            .unwrap();
        let mut raw = Self {
            ring: IoUring::<io_uring::squeue::Entry, io_uring::cqueue::Entry>::builder()
                .build(8)
                .unwrap(),
            file,
        };
        let zeros = Aligned::new(1 << 20, 0);
        for offset in (0..bytes).step_by(1 << 20) {
            raw.write(&zeros, offset);
        }
        raw.sync();
        raw
    }

    fn submit(&mut self, entry: io_uring::squeue::Entry) -> i32 {
        // SAFETY: the buffers an entry points to outlive the wait below.
        unsafe { self.ring.submission().push(&entry).unwrap() };
        self.ring.submit_and_wait(1).unwrap();
        let result = self.ring.completion().next().unwrap().result();
        assert!(result >= 0, "io_uring error {result}");
        result
    }

    fn write(&mut self, buffer: &Aligned, offset: u64) {
        let fd = types::Fd(self.file.as_raw_fd());
        let entry = opcode::Write::new(fd, buffer.ptr, buffer.len as u32)
            .offset(offset)
            .build();
        assert_eq!(self.submit(entry) as usize, buffer.len);
    }

    fn sync(&mut self) {
        let fd = types::Fd(self.file.as_raw_fd());
        let entry = opcode::Fsync::new(fd)
            .flags(types::FsyncFlags::DATASYNC)
            .build();
        self.submit(entry);
    }
}

fn raw_append(iters: u64) -> Duration {
    let mut total = Duration::ZERO;
    for _ in 0..iters {
        let dir = tempfile::tempdir_in(bench_dir()).unwrap();
        let mut raw = Raw::create(&dir.path().join("raw"), SEGMENT_BYTES);
        let group = Aligned::new(GROUP_RECORDS * RECORD_BYTES, 7);
        let started = Instant::now();
        for offset in (0..TOTAL_BYTES as u64).step_by(group.len) {
            raw.write(&group, offset);
        }
        raw.sync();
        total += started.elapsed();
    }
    total
}

/// Latencies of `n` single-record durable commits (WAL) and 4 KiB
/// write + fdatasync (raw), each sorted.
fn sync_latencies(n: usize) -> (Vec<Duration>, Vec<Duration>) {
    let dir = tempfile::tempdir_in(bench_dir()).unwrap();
    let path = dir.path().join("wal");
    std::fs::create_dir_all(&path).unwrap();
    let mut wal = on_executor_async(move || async move {
        let config = WalConfig {
            segment_bytes: SEGMENT_BYTES,
        };
        let mut writer = WalWriter::open(&path, 0, 1, None, config).await.unwrap();
        let payload = vec![3u8; 200];
        let mut times = Vec::with_capacity(n);
        for _ in 0..n {
            let started = Instant::now();
            writer.append(1, &payload).await.unwrap();
            writer.commit(true).await.unwrap();
            times.push(started.elapsed());
        }
        times
    });
    let mut raw = Raw::create(&dir.path().join("raw"), 64 << 20);
    let block = Aligned::new(4096, 3);
    let mut raw_times = Vec::with_capacity(n);
    for i in 0..n {
        let started = Instant::now();
        raw.write(&block, (i as u64 * 4096) % (64 << 20));
        raw.sync();
        raw_times.push(started.elapsed());
    }
    wal.sort();
    raw_times.sort();
    (wal, raw_times)
}

/// Like the raw side of [`sync_latencies`], but rewriting the block that
/// holds the end of a log of 232-byte records, as the WAL does.
fn raw_rewrite_latencies(n: usize) -> Vec<Duration> {
    let dir = tempfile::tempdir_in(bench_dir()).unwrap();
    let mut raw = Raw::create(&dir.path().join("raw"), 64 << 20);
    let block = Aligned::new(4096, 3);
    let mut times = Vec::with_capacity(n);
    for i in 0..n {
        let started = Instant::now();
        raw.write(&block, (i as u64 * 232) / 4096 * 4096);
        raw.sync();
        times.push(started.elapsed());
    }
    times.sort();
    times
}

fn on_executor_async<T, F>(f: impl FnOnce() -> F + Send + 'static) -> T
where
    T: Send + 'static,
    F: std::future::Future<Output = T> + 'static,
{
    glommio::LocalExecutorBuilder::default()
        .spawn(f)
        .unwrap()
        .join()
        .unwrap()
}

/// Writes a log of `bytes` in 64 KiB records; returns its directory.
fn write_log(bytes: usize) -> tempfile::TempDir {
    let dir = tempfile::tempdir_in(bench_dir()).unwrap();
    let path = dir.path().to_path_buf();
    on_executor_async(move || async move {
        let config = WalConfig {
            segment_bytes: SEGMENT_BYTES,
        };
        let mut writer = WalWriter::open(&path, 0, 1, None, config).await.unwrap();
        let payload = vec![5u8; RECORD_BYTES - 32];
        for _ in 0..bytes / RECORD_BYTES {
            writer.append(1, &payload).await.unwrap();
        }
        writer.commit(true).await.unwrap();
    });
    dir
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Where benchmark files go: the target directory's disk, not a tmpfs.
fn bench_dir() -> std::path::PathBuf {
    let dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::PathBuf::from("target"))
        .join("wal-bench");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("append");
    group.throughput(Throughput::Bytes(TOTAL_BYTES as u64));
    group.sample_size(10);
    group.bench_function("wal", |b| b.iter_custom(wal_append));
    group.bench_function("raw_io_uring", |b| b.iter_custom(raw_append));
    group.finish();

    // Alternating rounds, so both see the same disk weather.
    let (mut wal, mut raw, mut rewrite) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..4 {
        let (w, r) = sync_latencies(250);
        wal.extend(w);
        raw.extend(r);
        rewrite.extend(raw_rewrite_latencies(250));
    }
    wal.sort();
    raw.sort();
    rewrite.sort();
    for (name, times) in [
        ("wal", &wal),
        ("raw_io_uring", &raw),
        ("raw_io_uring_rewriting_the_tail_block", &rewrite),
    ] {
        println!(
            "sync/{name}: one record made durable: p50 {:?} p99 {:?} ({} samples)",
            percentile(times, 0.5),
            percentile(times, 0.99),
            times.len()
        );
    }
    println!(
        "sync: WAL/raw ratio p50 {:.2} p99 {:.2}",
        percentile(&wal, 0.5).as_secs_f64() / percentile(&raw, 0.5).as_secs_f64(),
        percentile(&wal, 0.99).as_secs_f64() / percentile(&raw, 0.99).as_secs_f64()
    );

    let log = write_log(64 << 20);
    let mut group = c.benchmark_group("scan");
    group.throughput(Throughput::Bytes(64 << 20));
    group.sample_size(10);
    group.bench_function("wal_recovery_scan", |b| {
        b.iter(|| {
            let mut records = 0u64;
            scan(log.path(), 0, |_| {
                records += 1;
                Ok(())
            })
            .unwrap();
            records
        })
    });
    group.bench_function("raw_read", |b| {
        b.iter(|| {
            let mut bytes = 0usize;
            for entry in std::fs::read_dir(log.path()).unwrap() {
                bytes += std::fs::read(entry.unwrap().path()).unwrap().len();
            }
            bytes
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
