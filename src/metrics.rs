//! Counters and latency histograms.
//!
//! Shard counters are written by exactly one shard (relaxed atomics on the
//! shard's own cache line) and summed by readers: no lock, no contention.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use crossbeam_utils::CachePadded;

/// Per-shard, per-stream counters. Only the owning shard writes them.
#[derive(Debug, Default)]
pub(crate) struct StreamCounters {
    pub rows_in: AtomicU64,
    pub rows_out: AtomicU64,
    pub late_rows: AtomicU64,
    /// Operator calls (batches and watermarks).
    pub calls: AtomicU64,
    /// Time spent in the operator, ns.
    pub busy_ns: AtomicU64,
    /// The operator's state size after its last call (a gauge).
    pub state_bytes: AtomicU64,
    /// Timed operator calls by duration: bucket `b` counts calls of less
    /// than `2^b` ns (the last one, the rest).
    pub call_buckets: [AtomicU64; CALL_BUCKETS],
}

/// Buckets of [`StreamCounters::call_buckets`]: up to 2^31 ns (2.1 s).
pub const CALL_BUCKETS: usize = 32;

impl StreamCounters {
    /// Counts one timed call in the latency histogram.
    pub fn record_call(&self, elapsed_ns: u64) {
        let bucket = (64 - elapsed_ns.leading_zeros() as usize).min(CALL_BUCKETS - 1);
        ShardCounters::add(&self.call_buckets[bucket], 1);
    }

    /// The call latency (µs, a bucket's upper bound) at quantile `q`
    /// (0..=1) of the timed calls; 0 with none.
    pub fn call_quantile_us(&self, q: f64) -> f64 {
        let counts: Vec<u64> = self
            .call_buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return 0.0;
        }
        let rank = ((total as f64 * q).ceil() as u64).max(1);
        let mut seen = 0;
        for (bucket, count) in counts.iter().enumerate() {
            seen += count;
            if seen >= rank {
                return (1u64 << bucket) as f64 / 1_000.0;
            }
        }
        (1u64 << (CALL_BUCKETS - 1)) as f64 / 1_000.0
    }
}

/// Upper bounds (µs) of the WAL sync latency buckets; one more counts the
/// rest.
pub const WAL_SYNC_BUCKETS_US: [u64; 11] = [
    50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000,
];

/// A shard's durable commits: how many, their total time, and a
/// histogram.
#[derive(Debug, Default)]
pub(crate) struct WalCounters {
    pub syncs: AtomicU64,
    pub sync_ns: AtomicU64,
    pub buckets: [AtomicU64; WAL_SYNC_BUCKETS_US.len() + 1],
}

impl WalCounters {
    pub fn record(&self, elapsed: Duration) {
        let us = elapsed.as_micros() as u64;
        let bucket = WAL_SYNC_BUCKETS_US
            .iter()
            .position(|&bound| us <= bound)
            .unwrap_or(WAL_SYNC_BUCKETS_US.len());
        ShardCounters::add(&self.syncs, 1);
        ShardCounters::add(&self.sync_ns, elapsed.as_nanos() as u64);
        ShardCounters::add(&self.buckets[bucket], 1);
    }
}

/// Counters of one shard.
#[derive(Debug)]
pub(crate) struct ShardCounters {
    pub batches: CachePadded<AtomicU64>,
    pub streams: Vec<CachePadded<StreamCounters>>,
    pub wal: CachePadded<WalCounters>,
    /// `[source]` -> this shard's watermark for it (`i64::MIN`: none yet).
    pub watermarks: Vec<AtomicI64>,
    /// `[source]` -> rows of it this shard took in (pushed in this run).
    pub source_rows: Vec<AtomicU64>,
    /// Messages waiting in the shard's input rings after its last turn (a
    /// gauge).
    pub queue_depth: CachePadded<AtomicU64>,
    /// Lanes that reached a checkpoint's marker before the shard heard of
    /// that checkpoint, and so waited for it.
    pub marker_waits: CachePadded<AtomicU64>,
}

impl ShardCounters {
    pub fn new(streams: usize, sources: usize) -> Self {
        Self {
            batches: CachePadded::new(AtomicU64::new(0)),
            streams: (0..streams)
                .map(|_| CachePadded::new(StreamCounters::default()))
                .collect(),
            wal: CachePadded::new(WalCounters::default()),
            watermarks: (0..sources).map(|_| AtomicI64::new(i64::MIN)).collect(),
            source_rows: (0..sources).map(|_| AtomicU64::new(0)).collect(),
            queue_depth: CachePadded::new(AtomicU64::new(0)),
            marker_waits: CachePadded::new(AtomicU64::new(0)),
        }
    }

    pub fn add(counter: &AtomicU64, n: u64) {
        // Single writer: a load and a store, no read-modify-write needed.
        counter.store(counter.load(Ordering::Relaxed) + n, Ordering::Relaxed);
    }
}

/// A snapshot of a stream's counters, summed over shards.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StreamMetrics {
    /// Stream name.
    pub name: String,
    /// Source rows handed to the stream's operators.
    pub rows_in: u64,
    /// Rows the stream emitted.
    pub rows_out: u64,
    /// Rows dropped because their window had already closed.
    pub late_rows: u64,
    /// Approximate bytes of operator state, summed over shards.
    pub state_bytes: u64,
}

/// A snapshot of the database's counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Metrics {
    /// Batches processed by shards (after routing, so one push may count
    /// once per shard it reached).
    pub shard_batches: u64,
    /// Per-stream counters.
    pub streams: Vec<StreamMetrics>,
    /// Per-source watermarks.
    pub sources: Vec<SourceMetrics>,
    /// Durable WAL commits, summed over shards (zero without storage).
    pub wal: WalMetrics,
    /// `[shard]` -> messages (batches, watermarks) waiting in its input
    /// rings after its last turn: how far behind its input the shard is.
    pub shard_queue_depth: Vec<u64>,
    /// Lookup tables loaded from an external database.
    pub lookup_tables: Vec<LookupTableMetrics>,
    /// Checkpoints taken by this run.
    pub checkpoints: CheckpointMetrics,
}

/// Checkpoints since the database started.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CheckpointMetrics {
    /// Checkpoints completed (manifest durable).
    pub completed: u64,
    /// Checkpoints that failed (the previous one still stands).
    pub failed: u64,
    /// The last completed checkpoint's epoch (0: none yet).
    pub last_epoch: u64,
    /// How long it took, from the request to the durable manifest.
    pub last_duration_us: u64,
    /// Bytes of state it wrote.
    pub last_bytes: u64,
    /// How many of its files (shard state, views' and sources' retained
    /// rows) were patches over an earlier checkpoint's, and how many it
    /// wrote in all.
    pub last_patched_files: u64,
    pub last_files: u64,
    /// Times a source lane reached a checkpoint's marker before its shard
    /// heard of the checkpoint, and held its later rows until the shard
    /// did (a handle that moved on to a checkpoint early, or connected
    /// while one was requested).
    pub marker_waits: u64,
}

/// A lookup table's refreshes from its database.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LookupTableMetrics {
    /// Table name.
    pub name: String,
    /// Refreshes that replaced the table's rows.
    pub refreshes: u64,
    /// Refreshes that failed; the table kept its previous rows.
    pub refresh_failures: u64,
}

/// A source's event-time progress.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SourceMetrics {
    /// Source name.
    pub name: String,
    /// The lowest of the shards' watermarks for the source (epoch ms), once
    /// every shard has one.
    pub watermark_ms: Option<i64>,
    /// Rows pushed to the source since the pipeline started (counted as
    /// shards take them in; rows recovered from the WAL not included).
    pub rows: u64,
}

/// Durable WAL commits (`fdatasync`s): in `Sync` durability one per group
/// of pushes, timed from the write's submission; in `Async` the periodic
/// syncs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WalMetrics {
    /// Commits made durable.
    pub syncs: u64,
    /// Their total time, ns.
    pub sync_ns: u64,
    /// `(upper bound in µs, commits at most that long)`, cumulative, as in
    /// [`WAL_SYNC_BUCKETS_US`]; the total is `syncs`.
    pub sync_buckets: Vec<(u64, u64)>,
}

/// A log-linear latency histogram: 8 sub-buckets per power of two of
/// nanoseconds, so any reported percentile is within 12.5% of the truth.
/// Fixed size (no allocation after creation); owned by one thread.
#[derive(Debug, Clone)]
pub struct LatencyHistogram {
    counts: Vec<u64>,
    total: u64,
}

const SUB_BUCKETS: u32 = 8;

impl Default for LatencyHistogram {
    fn default() -> Self {
        Self {
            counts: vec![0; (64 * SUB_BUCKETS) as usize],
            total: 0,
        }
    }
}

impl LatencyHistogram {
    fn bucket(nanos: u64) -> usize {
        if nanos < u64::from(SUB_BUCKETS) {
            return nanos as usize;
        }
        let power = 63 - nanos.leading_zeros();
        let sub = (nanos >> (power - 3)) & u64::from(SUB_BUCKETS - 1);
        (power * SUB_BUCKETS) as usize + sub as usize
    }

    fn bucket_upper_nanos(bucket: usize) -> u64 {
        let power = bucket as u32 / SUB_BUCKETS;
        let sub = bucket as u64 % u64::from(SUB_BUCKETS);
        if power < 3 {
            return bucket as u64;
        }
        ((u64::from(SUB_BUCKETS) + sub + 1) << (power - 3)) - 1
    }

    /// Records one sample.
    pub fn record(&mut self, latency: Duration) {
        let nanos = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX);
        self.counts[Self::bucket(nanos)] += 1;
        self.total += 1;
    }

    /// Number of samples.
    pub fn count(&self) -> u64 {
        self.total
    }

    /// The latency at quantile `q` in `[0, 1]` (upper bound of its bucket),
    /// or `None` without samples.
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        if self.total == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (bucket, &count) in self.counts.iter().enumerate() {
            seen += count;
            if seen >= rank {
                return Some(Duration::from_nanos(Self::bucket_upper_nanos(bucket)));
            }
        }
        None
    }

    /// Adds another histogram's samples.
    pub fn merge(&mut self, other: &LatencyHistogram) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.total += other.total;
    }

    /// Forgets all samples.
    pub fn clear(&mut self) {
        self.counts.iter_mut().for_each(|c| *c = 0);
        self.total = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_within_a_bucket() {
        let mut h = LatencyHistogram::default();
        for us in 1..=1000u64 {
            h.record(Duration::from_micros(us));
        }
        let p50 = h.quantile(0.5).unwrap().as_micros() as f64;
        let p99 = h.quantile(0.99).unwrap().as_micros() as f64;
        assert!((500.0..=500.0 * 1.13).contains(&p50), "{p50}");
        assert!((990.0..=990.0 * 1.13).contains(&p99), "{p99}");
        assert_eq!(LatencyHistogram::default().quantile(0.5), None);
        h.record(Duration::from_nanos(3));
        assert_eq!(h.count(), 1001);
    }

    #[test]
    fn call_latency_in_power_of_two_buckets() {
        let counters = StreamCounters::default();
        assert_eq!(counters.call_quantile_us(0.5), 0.0);
        // 99 calls of 3 µs (bucket < 4.096 µs), one of 1 ms (< 1.048576 ms).
        for _ in 0..99 {
            counters.record_call(3_000);
        }
        counters.record_call(1_000_000);
        assert_eq!(counters.call_quantile_us(0.5), 4.096);
        assert_eq!(counters.call_quantile_us(0.99), 4.096);
        assert_eq!(counters.call_quantile_us(1.0), 1048.576);
        counters.record_call(u64::MAX);
        assert_eq!(
            counters.call_quantile_us(1.0),
            (1u64 << 31) as f64 / 1_000.0
        );
    }
}
