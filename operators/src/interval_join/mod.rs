//! Stream-stream interval joins: `a JOIN b ON a.k = b.k AND b.ts BETWEEN
//! a.ts - X AND a.ts + Y`, inner, left, right and full outer.
//!
//! A symmetric hash join over event-time buckets. Each side keeps its
//! on-time rows in buckets of `width` ms of event time; a bucket holds a
//! hash table from each key to a chain of its rows (in runs, one per
//! stored batch segment, newest first) and a copy of each key's bytes,
//! so a lookup reads the bucket's memory only,
//! not the stored batches'. Emptied buckets are reused, so storing a row
//! allocates nothing once they have grown. A batch from one side is
//! stored on its own side first (each row's key hashed once), which
//! groups its rows by bucket and key into runs; then each run probes the
//! other side's buckets that overlap its rows' time ranges, its key looked
//! up once per bucket. A probe reads the other side only, so every pair is
//! found exactly once, when its later row arrives.
//!
//! The right side's time minus the left side's lies in `[lower, upper]`.
//! When the left watermark passes `w`, no on-time left row is older than
//! `w`, so right rows older than `w + lower` can no longer match and their
//! buckets are dropped; likewise left rows older than the right watermark
//! minus `upper`. State is therefore bounded by the rows of `upper - lower`
//! (plus one bucket and the watermark delay) of event time. An outer side's
//! rows that never matched are emitted, padded with NULLs, when their
//! bucket is dropped: the output is append-only and, once all watermarks
//! have passed, exactly the batch join of the on-time rows.
//!
//! With `EMIT CHANGES` the output is a changelog instead: an outer row
//! without a match is emitted padded at once (`+1`), and retracted (`-1`)
//! when its first match arrives; consolidated, it is the same answer.
//!
//! Two variants share the machinery:
//! - A bound given by a column of one side's rows ([`RowBound`], `b.ts
//!   BETWEEN a.ts AND a.expires`): that side's rows are bucketed by the
//!   time they stop matching (their bound) instead of their event time,
//!   and dropped once the other side's watermark passes it. The other
//!   side's rows retire by the constant bound, as above.
//! - A regular join (no time bound at all, `lower = i64::MIN`, `upper =
//!   i64::MAX`, sides without event time): one bucket per side, never
//!   dropped before the end of input. State grows with every row kept.

use arrow::array::{Array, Int64Array, RecordBatch, UInt8Array};
use arrow::datatypes::SchemaRef;
use datafusion::physical_expr::PhysicalExpr;
use laminar_runtime::Result;
use std::sync::Arc;

use crate::groups::{KeyEncoder, OwnedKeys};
use crate::join::{
    filter_pairs, joined, nulls, passed, shared_encoder, take_columns, take_rows, JoinMode,
    JoinSide, SideBatch, StoredBatches,
};
use crate::stage::{apply_all, emit_weighted, Stage};
use crate::time_buckets::{Ranges, TimeBuckets};
use crate::{BatchTime, Operator};

mod bucket;
mod pairs;

use bucket::{Bucket, KeyRef, NONE};
use pairs::{PairsShape, PAIRS_PER_BATCH};

/// Everything needed to build an interval join on a shard.
#[derive(Debug, Clone)]
pub struct IntervalJoinSpec {
    /// Port 0.
    pub left: JoinSide,
    /// Port 1.
    pub right: JoinSide,
    /// Right time minus left time is at least this (ms). The probe checks
    /// `[lower_ms, upper_ms]` exactly on the stored times, so the planner
    /// may leave bounds it implies out of `filter`.
    pub lower_ms: i64,
    /// ... and at most this.
    pub upper_ms: i64,
    /// What the join condition asks of a pair besides the equal keys and
    /// the bounds checked above, over the joined rows (left columns, then
    /// right columns).
    pub filter: Option<Arc<dyn PhysicalExpr>>,
    /// Left rows without a match are emitted (LEFT and FULL joins).
    pub left_outer: bool,
    /// Right rows without a match are emitted (RIGHT and FULL joins).
    pub right_outer: bool,
    /// Schema of the joined rows.
    pub joined_schema: SchemaRef,
    /// Filters/projections after the join (WHERE, SELECT list).
    pub post: Vec<Stage>,
    /// `EMIT CHANGES`: the output schema, with its `_weight` column last.
    pub changes: Option<SchemaRef>,
    /// Pairs, or left rows only (semi and anti joins: the output is the
    /// left side's columns; `joined_schema` is still both sides', which
    /// the filter reads).
    pub mode: JoinMode,
    /// A bound by a column of one side's rows; the constant bound it
    /// replaces (`upper_ms` when the left side carries it, `lower_ms`
    /// when the right does) is then `i64::MAX` / `i64::MIN`.
    pub row_bound: Option<RowBound>,
}

/// The other side's event time is at most `column + offset_ms` of this
/// side's row (`b.ts <= a.expires`).
#[derive(Debug, Clone)]
pub struct RowBound {
    /// The side whose rows carry the bound: 0 (left) or 1 (right).
    pub port: usize,
    /// The column, in that side's join input (after its `pre` stages).
    pub column: usize,
    /// How the column stores time.
    pub unit: crate::EventTimeUnit,
    /// Added to the column's value (ms).
    pub offset_ms: i64,
}

/// What a probe row looks for: the other side's buckets with a start in
/// `[first, last]`, and in them the rows with a time in `[low, high]`.
type ProbeRange = (i64, i64, i64, i64);

/// The bounds a probe of one side looks with ([`IntervalJoin::reach`]).
#[derive(Clone, Copy)]
struct Reach {
    port: usize,
    lower_ms: i64,
    upper_ms: i64,
    width_ms: i64,
    /// Whether the other side is bucketed by its rows' bounds.
    by_bound: bool,
}

impl Reach {
    /// For a row at `t_ms` (and its bound, on the side carrying a row
    /// bound): the other side's buckets to look in and the times its rows
    /// must have. `None` when no time can match.
    #[inline]
    fn of(self, t_ms: i64, bound_ms: Option<i64>) -> Option<ProbeRange> {
        let (lower, upper) = (self.lower_ms, self.upper_ms);
        let times = if self.port == 0 {
            (t_ms.checked_add(lower), t_ms.checked_add(upper))
        } else {
            (t_ms.checked_sub(upper), t_ms.checked_sub(lower))
        };
        let (low, mut high) = match times {
            (Some(low), Some(high)) => (low, high),
            _ => self.times_at_the_ends(t_ms)?,
        };
        if let Some(bound) = bound_ms {
            high = high.min(bound);
        }
        if low > high {
            return None;
        }
        // A bucket holds `[start, start + width)`: those with a start in
        // `(from - width, to]` hold times in `[from, to]`.
        let after = |from: i64| from.saturating_sub(self.width_ms - 1);
        Some(if self.by_bound {
            // Bucketed by bound: those whose rows reach this row's time.
            (after(t_ms), i64::MAX, low, high)
        } else {
            (after(low), high, low, high)
        })
    }

    /// The other side's times a row at `t_ms` matches, where the bounds
    /// reach past an end of i64 (a bound of `i64::MIN`/`i64::MAX` stands
    /// for none): exact there too (the planner relies on this check being
    /// the bounds). A range wholly past an end matches nothing, one
    /// reaching past it is cut there.
    #[cold]
    fn times_at_the_ends(self, t_ms: i64) -> Option<(i64, i64)> {
        let (t, lower, upper) = (
            i128::from(t_ms),
            i128::from(self.lower_ms),
            i128::from(self.upper_ms),
        );
        let (low, high) = if self.port == 0 {
            (t + lower, t + upper)
        } else {
            (t - upper, t - lower)
        };
        if low > i128::from(i64::MAX) || high < i128::from(i64::MIN) {
            return None;
        }
        let clamp = |v: i128| v.clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64;
        Some((clamp(low), clamp(high)))
    }
}

/// How many runs ahead a probe fetches the table slot of a run's key.
const PREFETCH_RUNS: usize = 2;

/// Bucket width of a join with constant bounds, in spans of the bounds
/// (`upper - lower`). Wider buckets hold more of each key's rows: a
/// bucket's table takes each key once and a run holds more of its rows,
/// so a store inserts fewer keys and a probe makes fewer lookups (each
/// mostly a cache miss) and starts fewer runs, but walks more of a key's
/// rows that turn out to be out of range (reads of the run's own times).
/// Rows outlive their last match by up to a bucket. On the peers join
/// (batches of 8,192, a key's rows 100 ms apart), with the run-by-run
/// probe, 8 spans ran 1.16x as fast as 4 (1.20x for 16; neutral at
/// batch 1,024); with the row-by-row probe before it, 4 had been the
/// best.
const BUCKET_SPANS: i64 = 8;

/// Bucket width, in spans, of a join with a side whose rows' states are
/// tracked (outer, semi and anti joins): such a side's oldest bucket
/// holds the output watermark back, and outer and anti joins emit their
/// unmatched rows when it goes, so the width is also how far the output
/// watermark lags and how long those rows can wait past their last
/// possible match.
const TRACKED_BUCKET_SPANS: i64 = 4;

/// Bucket width, in ms, of a join with a row bound: the constant bounds
/// do not say how far apart matching rows are.
const ROW_BOUND_BUCKET_MS: i64 = 1_000;

/// A stored outer row's state (the per-row byte of an outer side).
const UNMATCHED: u8 = 0;
const MATCHED: u8 = 1;
/// Unmatched and already emitted padded (`EMIT CHANGES`).
const PADDED: u8 = 2;

/// What is kept with each stored batch.
struct BatchExtra {
    /// Each row's state (outer sides only).
    states: Vec<u8>,
}

/// Emptied buckets kept for reuse, per side, at least (up to the most
/// ever in use at once).
const SPARE_BUCKETS: usize = 64;

/// One side's state.
struct Side {
    buckets: TimeBuckets<Bucket>,
    batches: StoredBatches<BatchExtra>,
    spare: Vec<Bucket>,
    /// The most buckets in use at once.
    peak_buckets: usize,
    rows: usize,
    watermark_ms: i64,
    outer: bool,
}

impl Side {
    fn new(outer: bool) -> Self {
        Self {
            buckets: TimeBuckets::default(),
            batches: StoredBatches::default(),
            spare: Vec::new(),
            peak_buckets: 0,
            rows: 0,
            watermark_ms: i64::MIN,
            outer,
        }
    }
}

/// An interval join on one shard.
pub struct IntervalJoin {
    spec: IntervalJoinSpec,
    encoder: KeyEncoder,
    width_ms: i64,
    sides: [Side; 2],
    late: u64,
    /// Reused per batch: each row's key as the buckets compare it.
    key_refs: Vec<KeyRef>,
    /// Reused per probe: (probe row, stored batch, stored row).
    pairs: Vec<(u32, u64, u32)>,
    /// Reused per store: each row's run in its bucket.
    run_of_row: Vec<u32>,
    /// Reused per batch: where the store put its rows, as the start of
    /// each bucket a segment went to and the runs it made there.
    segments: Vec<(i64, std::ops::Range<u32>)>,
    /// Reused per probe: a run's rows that can match, with their probe
    /// ranges.
    run_rows: Vec<(u32, ProbeRange)>,
    /// The joined rows of a probe's pairs, as gathered.
    pairs_shape: PairsShape,
}

impl std::fmt::Debug for IntervalJoin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IntervalJoin")
            .field("lower_ms", &self.spec.lower_ms)
            .field("upper_ms", &self.spec.upper_ms)
            .field("left_rows", &self.sides[0].rows)
            .field("right_rows", &self.sides[1].rows)
            .finish()
    }
}

impl IntervalJoin {
    /// A join with empty state.
    pub fn new(spec: IntervalJoinSpec) -> Result<Self> {
        let encoder = shared_encoder(&spec.left, &spec.right)?;
        if let Some(bound) = &spec.row_bound {
            assert!(bound.port < 2, "a join has two sides");
        }
        // Semi and anti joins track which left rows matched, as an outer
        // side does.
        let left_tracked = spec.left_outer || spec.mode != JoinMode::Pairs;
        // A tracked side's oldest bucket holds the output watermark back,
        // and an outer or anti join's unmatched rows come out with it.
        let tracked = left_tracked || spec.right_outer;
        // A probe looks at one or two buckets; rows outlive their last
        // possible match by at most one bucket.
        let width_ms = match spec.row_bound {
            Some(_) => ROW_BOUND_BUCKET_MS,
            None => spec
                .upper_ms
                .saturating_sub(spec.lower_ms)
                .max(1)
                .saturating_mul(if tracked {
                    TRACKED_BUCKET_SPANS
                } else {
                    BUCKET_SPANS
                }),
        };
        let sides = [Side::new(left_tracked), Side::new(spec.right_outer)];
        let pairs_shape = PairsShape::new(&spec);
        Ok(Self {
            spec,
            encoder,
            width_ms,
            sides,
            late: 0,
            key_refs: Vec::new(),
            pairs: Vec::new(),
            run_of_row: Vec::new(),
            segments: Vec::new(),
            run_rows: Vec::new(),
            pairs_shape,
        })
    }

    /// Rows stored on each side (for tests and metrics).
    pub fn stored_rows(&self) -> (usize, usize) {
        (self.sides[0].rows, self.sides[1].rows)
    }

    /// Each of the first `rows` keys as the buckets compare it, into `out`
    /// (hashed once per batch, for the probe and the store). In one loop:
    /// a call per row returned each `KeyRef` through memory, and reading
    /// it back stalled on store forwarding.
    fn key_refs_into(&self, keys: &OwnedKeys, rows: usize, out: &mut Vec<KeyRef>) {
        out.clear();
        self.encoder
            .hashes_into(keys, rows, out, |hash, head, bytes| {
                KeyRef::with_head(hash, head, bytes)
            });
    }

    /// Whether `port`'s rows carry a row bound (and are bucketed by it).
    fn bounds_rows(&self, port: usize) -> bool {
        self.spec.row_bound.as_ref().is_some_and(|b| b.port == port)
    }

    /// Each row's bound (ms), on the side carrying a row bound: the last
    /// time of the other side it can match. A NULL bound matches nothing.
    fn row_bounds(&self, port: usize, rows: &RecordBatch) -> Result<Option<Vec<i64>>> {
        let Some(bound) = self.spec.row_bound.as_ref().filter(|b| b.port == port) else {
            return Ok(None);
        };
        let array = rows.column(bound.column);
        // The unit conversion refuses NULLs; their slots are set after.
        let values = arrow::array::make_array(array.to_data().into_builder().nulls(None).build()?);
        let mut out = Vec::with_capacity(rows.num_rows());
        bound.unit.array_to_ms(values.as_ref(), &mut out)?;
        for (i, t) in out.iter_mut().enumerate() {
            *t = if array.is_null(i) {
                i64::MIN
            } else {
                t.saturating_add(bound.offset_ms)
            };
        }
        Ok(Some(out))
    }

    /// For a row of `port` at `t_ms` (and its bound, on the side carrying
    /// a row bound): the other side's buckets to look in and the times its
    /// rows must have. `None` when no time can match.
    #[cfg(test)]
    fn probe_range(&self, port: usize, t_ms: i64, bound_ms: Option<i64>) -> Option<ProbeRange> {
        self.reach(port).of(t_ms, bound_ms)
    }

    /// What a probe of `port` reaches for, read out of the spec once per
    /// probe: inside the probe's loop, each row's range read the spec
    /// anew after every store to the scratch (the compiler cannot tell
    /// the two apart).
    fn reach(&self, port: usize) -> Reach {
        Reach {
            port,
            lower_ms: self.spec.lower_ms,
            upper_ms: self.spec.upper_ms,
            width_ms: self.width_ms,
            by_bound: self.bounds_rows(1 - port),
        }
    }

    fn side_schema(&self, port: usize) -> &SchemaRef {
        if port == 0 {
            &self.spec.left.schema
        } else {
            &self.spec.right.schema
        }
    }

    /// Probes the other side with `input`'s rows, already stored on their
    /// own side (the store's segments say where); appends the joined rows
    /// that pass the filter and returns which probe rows matched.
    ///
    /// The store grouped a segment's rows by key into runs, so the probe
    /// goes run by run: a run's key is looked up once in each of the other
    /// side's buckets that any of its rows can reach (a lookup per row
    /// before: the probe's costliest step, a hash table slot mostly out
    /// of the cache), then each row walks the key's rows in the buckets
    /// of its own range.
    fn probe(
        &mut self,
        port: usize,
        input: &SideBatch,
        (keys, key_refs): (&OwnedKeys, &[KeyRef]),
        bounds: Option<&[i64]>,
        out: &mut Vec<RecordBatch>,
    ) -> Result<Vec<u8>> {
        let n = input.rows.num_rows();
        let mut matched = vec![UNMATCHED; n];
        let mut pairs = std::mem::take(&mut self.pairs);
        let mut run_rows = std::mem::take(&mut self.run_rows);
        pairs.clear();
        self.sides[1 - port].buckets.make_contiguous();
        let buckets = self.sides[1 - port].buckets.as_slice();
        if !buckets.is_empty() {
            let mut ranges = Ranges::new(buckets);
            let reach = self.reach(port);
            for (start, runs) in &self.segments {
                let own = self.sides[port]
                    .buckets
                    .get(*start)
                    .expect("a segment's bucket was just stored to");
                let runs = &own.runs[runs.start as usize..runs.end as usize];
                for (i, run) in runs.iter().enumerate() {
                    let span = run.span();
                    let rows = &own.rows[span.clone()];
                    run_rows.clear();
                    let (mut first, mut last) = (i64::MAX, i64::MIN);
                    for (&row, &t) in rows.iter().zip(&own.times_ms[span]) {
                        let bound = bounds.map(|b| b[row as usize]);
                        if let Some(range) = reach.of(t, bound) {
                            first = first.min(range.0);
                            last = last.max(range.1);
                            run_rows.push((row, range));
                        }
                    }
                    let Some(&(key_row, _)) = run_rows.first() else {
                        continue;
                    };
                    let in_range = ranges.of(first, last);
                    // The slots of a run's key a few runs ahead, in this
                    // run's buckets (usually its buckets too), are
                    // fetched while this run is probed.
                    if let Some(ahead) = runs.get(i + PREFETCH_RUNS) {
                        let ahead = &key_refs[own.rows[ahead.start as usize] as usize];
                        for (_, bucket) in in_range {
                            bucket.prefetch(ahead);
                        }
                    }
                    // Every row of a run has the run's key.
                    let key = &key_refs[key_row as usize];
                    let bytes = || keys.key_bytes(key_row as usize);
                    for (start, bucket) in in_range {
                        let Some(newest) = bucket.newest_run(key, bytes) else {
                            continue;
                        };
                        for &(row, (first, last, low, high)) in &run_rows {
                            if !(first..=last).contains(start) {
                                continue;
                            }
                            let mut r = newest;
                            while r != NONE {
                                let run = &bucket.runs[r as usize];
                                let span = run.span();
                                for (&time_ms, &stored_row) in
                                    bucket.times_ms[span.clone()].iter().zip(&bucket.rows[span])
                                {
                                    if (low..=high).contains(&time_ms) {
                                        pairs.push((row, run.batch, stored_row));
                                    }
                                }
                                r = run.next;
                            }
                        }
                    }
                }
            }
        }
        self.run_rows = run_rows;
        // Joined rows go out in batches of a bounded size, whatever the
        // number of pairs (a wide bound over a hot key finds millions).
        let emitted = pairs
            .chunks(PAIRS_PER_BATCH)
            .try_for_each(|chunk| self.emit_pairs(port, input, chunk, &mut matched, out));
        // Keep the scratch of ordinary probes, not of a rare huge one.
        pairs.clear();
        pairs.shrink_to(4 * PAIRS_PER_BATCH);
        self.pairs = pairs;
        emitted.map(|()| matched)
    }

    fn emit_pairs(
        &mut self,
        port: usize,
        input: &SideBatch,
        pairs: &[(u32, u64, u32)],
        matched: &mut [u8],
        out: &mut Vec<RecordBatch>,
    ) -> Result<()> {
        let shape = &mut self.pairs_shape;
        let stored = 1 - port;
        // The stored side's columns with a twin on this side are taken
        // from the probe rows, the others gathered from the stored rows.
        let gathered_columns = || {
            shape.read[stored]
                .iter()
                .zip(&shape.twin[stored])
                .filter(|(_, twin)| twin.is_none())
                .map(|(&c, _)| c)
        };
        // A side none of whose columns is read (a semi join without a
        // condition on it) needs no indices either.
        let gathered = if gathered_columns().next().is_none() {
            Vec::new()
        } else {
            let rows: Vec<(u64, u32)> = pairs.iter().map(|&(_, b, r)| (b, r)).collect();
            self.sides[stored]
                .batches
                .gather_columns(&rows, gathered_columns())?
        };
        let twins = shape.twin[stored].iter().flatten().copied();
        let no_twins = shape.twin[stored].iter().all(Option::is_none);
        let mut probe_columns = if shape.read[port].is_empty() && no_twins {
            Vec::new()
        } else {
            let probe_indices: Vec<u32> = pairs.iter().map(|&(row, _, _)| row).collect();
            take_columns(
                &input.rows,
                &probe_indices,
                shape.read[port].iter().copied().chain(twins),
            )?
        };
        let twin_columns = probe_columns.split_off(shape.read[port].len());
        let stored_columns = shape.stored_columns(stored, gathered, twin_columns);
        let rows = if port == 0 {
            shape.batch(probe_columns, stored_columns, pairs.len())?
        } else {
            shape.batch(stored_columns, probe_columns, pairs.len())?
        };
        let (rows, mask) = filter_pairs(self.spec.filter.as_ref(), rows)?;
        if self.spec.mode != JoinMode::Pairs {
            return self.settle_left_rows(port, input, pairs, mask.as_ref(), matched, out);
        }
        let passed_at = |i: usize| passed(mask.as_ref(), i);
        let track_probe = self.sides[port].outer;
        let track_stored = self.sides[1 - port].outer;
        // Stored rows emitted padded earlier, matched now: retracted.
        let mut retract: Vec<(u64, u32)> = Vec::new();
        if track_probe || track_stored {
            for (i, &(row, batch, stored_row)) in pairs.iter().enumerate() {
                if passed_at(i) {
                    matched[row as usize] = MATCHED;
                    if track_stored {
                        let state = &mut self.sides[1 - port].batches.get_mut(batch).extra.states
                            [stored_row as usize];
                        if *state == PADDED {
                            retract.push((batch, stored_row));
                        }
                        *state = MATCHED;
                    }
                }
            }
        }
        if !retract.is_empty() {
            self.emit_stored_padded(1 - port, &retract, -1, out)?;
        }
        self.push_out(rows, 1, out)
    }

    /// Semi and anti joins: marks the left rows of the passing pairs
    /// matched; a semi join emits each left row on its first match.
    fn settle_left_rows(
        &mut self,
        port: usize,
        input: &SideBatch,
        pairs: &[(u32, u64, u32)],
        mask: Option<&arrow::array::BooleanArray>,
        matched: &mut [u8],
        out: &mut Vec<RecordBatch>,
    ) -> Result<()> {
        let semi = self.spec.mode == JoinMode::LeftSemi;
        let columns = if port == 0 {
            let mut first: Vec<u32> = Vec::new();
            for (i, &(row, _, _)) in pairs.iter().enumerate() {
                if passed(mask, i) && matched[row as usize] == UNMATCHED {
                    matched[row as usize] = MATCHED;
                    first.push(row);
                }
            }
            if !semi || first.is_empty() {
                return Ok(());
            }
            take_rows(&input.rows, &first)?
        } else {
            let mut first: Vec<(u64, u32)> = Vec::new();
            let left = &mut self.sides[0].batches;
            for (i, &(_, batch, row)) in pairs.iter().enumerate() {
                let state = &mut left.get_mut(batch).extra.states[row as usize];
                if passed(mask, i) && *state == UNMATCHED {
                    *state = MATCHED;
                    first.push((batch, row));
                }
            }
            if !semi || first.is_empty() {
                return Ok(());
            }
            self.sides[0].batches.gather(&first, self.side_schema(0))?
        };
        self.push_left_rows(columns, out)
    }

    /// Left rows as the output of a semi or anti join.
    fn push_left_rows(
        &self,
        columns: Vec<arrow::array::ArrayRef>,
        out: &mut Vec<RecordBatch>,
    ) -> Result<()> {
        let rows = RecordBatch::try_new(Arc::clone(self.side_schema(0)), columns)?;
        self.push_out(rows, 1, out)
    }

    /// Whether rows of `port` that never matched are emitted: an outer
    /// side's (padded), an anti join's left rows (as they are).
    fn emits_unmatched(&self, port: usize) -> bool {
        match self.spec.mode {
            JoinMode::Pairs => self.sides[port].outer,
            JoinMode::LeftAnti => port == 0,
            JoinMode::LeftSemi => false,
        }
    }

    /// Runs the post stages over joined rows and appends them (with their
    /// weight, for a changelog).
    fn push_out(&self, rows: RecordBatch, weight: i64, out: &mut Vec<RecordBatch>) -> Result<()> {
        if rows.num_rows() == 0 {
            return Ok(());
        }
        match &self.spec.changes {
            Some(schema) => emit_weighted(&self.spec.post, rows, weight, schema, out),
            None => {
                let result = apply_all(&self.spec.post, &rows)?;
                if result.num_rows() > 0 {
                    out.push(result);
                }
                Ok(())
            }
        }
    }

    /// Stores a batch's rows on their own side, by event time, or by
    /// `bounds` on the side carrying a row bound, with each row's state
    /// (`states`, kept on an outer side only), and leaves where they went
    /// in `self.segments`. Returns the stored batch's sequence number.
    fn store(
        &mut self,
        port: usize,
        rows: RecordBatch,
        times: &[i64],
        (keys, key_refs): (&OwnedKeys, &[KeyRef]),
        bounds: Option<&[i64]>,
        states: Vec<u8>,
    ) -> u64 {
        let width = self.width_ms;
        let mut run_of_row = std::mem::take(&mut self.run_of_row);
        self.segments.clear();
        let side = &mut self.sides[port];
        let live = times.len();
        let states = if side.outer { states } else { Vec::new() };
        let seq = side.batches.push(rows, live, BatchExtra { states });
        let Side { buckets, spare, .. } = side;
        let at = |row: usize| bounds.map_or(times[row], |b| b[row]);
        // Segments of consecutive rows in one bucket (rows mostly come
        // in time order), each stored at once.
        let mut row = 0;
        while row < live {
            // The start is clamped at i64::MIN; the end is the next
            // bucket's start, so a clamped bucket holds no more.
            let q = at(row).div_euclid(width);
            let (start, end) = (
                q.saturating_mul(width),
                q.saturating_add(1).saturating_mul(width),
            );
            let mut stop = row + 1;
            while stop < live && (start..end).contains(&at(stop)) {
                stop += 1;
            }
            let bucket = buckets.get_or_insert_with(start, || spare.pop().unwrap_or_default());
            let runs = bucket.append(
                seq,
                row..stop,
                times,
                key_refs,
                |r| keys.key_bytes(r),
                &mut run_of_row,
            );
            self.segments.push((start, runs));
            row = stop;
        }
        self.run_of_row = run_of_row;
        side.rows += live;
        side.peak_buckets = side.peak_buckets.max(side.buckets.len());
        seq
    }

    /// Drops the buckets of `port` that the other side's watermark has
    /// passed, emitting their unmatched rows on an outer side.
    fn evict(&mut self, port: usize, out: &mut Vec<RecordBatch>) -> Result<()> {
        let other_watermark = self.sides[1 - port].watermark_ms;
        if other_watermark == i64::MIN {
            return Ok(());
        }
        // Rows on `port` older than this (or with a bound before it) match
        // no on-time row of the other side any more.
        let dead_before = if self.bounds_rows(port) {
            other_watermark
        } else if port == 0 {
            other_watermark.saturating_sub(self.spec.upper_ms)
        } else {
            other_watermark.saturating_add(self.spec.lower_ms)
        };
        let width = self.width_ms;
        let mut unmatched: Vec<(u64, u32)> = Vec::new();
        while let Some(start) = self.sides[port].buckets.first_start() {
            if other_watermark != i64::MAX && start.saturating_add(width) > dead_before {
                break;
            }
            let (_, bucket) = self.sides[port].buckets.pop_first().expect("not empty");
            let side = &mut self.sides[port];
            side.rows -= bucket.len();
            if self.emits_unmatched(port) {
                let side = &self.sides[port];
                for run in &bucket.runs {
                    let states = &side.batches.get(run.batch).extra.states;
                    for &row in &bucket.rows[run.span()] {
                        if states[row as usize] == UNMATCHED {
                            unmatched.push((run.batch, row));
                        }
                    }
                }
            }
            if !unmatched.is_empty() {
                self.emit_stored_padded(port, &unmatched, 1, out)?;
                unmatched.clear();
            }
            let side = &mut self.sides[port];
            // Runs come in batches' order: release each batch's at once.
            for runs in bucket.runs.chunk_by(|a, b| a.batch == b.batch) {
                let rows = runs.iter().map(|r| r.len as usize).sum();
                side.batches.release_rows(runs[0].batch, rows);
            }
            // Keep as many as were ever in use at once (at least a few):
            // the next buckets reuse their memory.
            if side.spare.len() < SPARE_BUCKETS.max(side.peak_buckets) {
                let mut bucket = bucket;
                bucket.clear();
                side.spare.push(bucket);
            }
        }
        Ok(())
    }

    /// Emits stored rows of an outer side with NULLs for the other side.
    fn emit_stored_padded(
        &self,
        port: usize,
        rows: &[(u64, u32)],
        weight: i64,
        out: &mut Vec<RecordBatch>,
    ) -> Result<()> {
        let own = self.sides[port]
            .batches
            .gather(rows, self.side_schema(port))?;
        self.emit_padded(port, own, weight, out)
    }

    /// Emits rows of side `port` (its columns `own`) with NULLs for the
    /// other side.
    fn emit_padded(
        &self,
        port: usize,
        own: Vec<arrow::array::ArrayRef>,
        weight: i64,
        out: &mut Vec<RecordBatch>,
    ) -> Result<()> {
        if self.spec.mode == JoinMode::LeftAnti {
            return self.push_left_rows(own, out);
        }
        let n = own.first().map_or(0, |c| c.len());
        let padding = nulls(self.side_schema(1 - port), n);
        let rows = if port == 0 {
            joined(&self.spec.joined_schema, own, padding)?
        } else {
            joined(&self.spec.joined_schema, padding, own)?
        };
        self.push_out(rows, weight, out)
    }

    /// After a probe: a changelog's padded outer rows, then the rows'
    /// states kept with their stored batch `seq` (on an outer side).
    fn settle(
        &mut self,
        port: usize,
        input: &SideBatch,
        seq: u64,
        mut matched: Vec<u8>,
        out: &mut Vec<RecordBatch>,
    ) -> Result<()> {
        if !self.sides[port].outer {
            return Ok(());
        }
        if self.spec.changes.is_some() {
            // A changelog shows an outer row at once, padded; a match
            // retracts it.
            let unmatched: Vec<u32> = (0..matched.len() as u32)
                .filter(|&i| matched[i as usize] == UNMATCHED)
                .collect();
            if !unmatched.is_empty() {
                self.emit_padded(port, take_rows(&input.rows, &unmatched)?, 1, out)?;
                for i in unmatched {
                    matched[i as usize] = PADDED;
                }
            }
        }
        if !matched.is_empty() {
            self.sides[port].batches.get_mut(seq).extra.states = matched;
        }
        Ok(())
    }
}

impl Operator for IntervalJoin {
    fn on_batch(
        &mut self,
        batch: &RecordBatch,
        time: BatchTime<'_>,
        out: &mut Vec<RecordBatch>,
    ) -> Result<()> {
        self.on_input_batch(0, batch, time, out)
    }

    fn on_watermark(&mut self, watermark_ms: i64, out: &mut Vec<RecordBatch>) -> Result<()> {
        self.on_input_watermark(0, watermark_ms, out)
    }

    fn on_input_batch(
        &mut self,
        port: usize,
        batch: &RecordBatch,
        time: BatchTime<'_>,
        out: &mut Vec<RecordBatch>,
    ) -> Result<()> {
        let side = if port == 0 {
            &self.spec.left
        } else {
            &self.spec.right
        };
        let Some(input) = side.prepare(batch, time, &mut self.late)? else {
            return Ok(());
        };
        // A NULL key matches nothing: such rows are final at once.
        let input = match input.split_null_keys()? {
            (input, Some(null_rows)) => {
                if self.emits_unmatched(port) {
                    self.emit_padded(port, null_rows.columns().to_vec(), 1, out)?;
                }
                match input {
                    Some(input) => input,
                    None => return Ok(()),
                }
            }
            (Some(input), None) => input,
            (None, None) => return Ok(()),
        };
        let keys = self.encoder.encode_owned(&input.key_arrays)?;
        let mut key_refs = std::mem::take(&mut self.key_refs);
        self.key_refs_into(&keys, input.rows.num_rows(), &mut key_refs);
        let bounds = self.row_bounds(port, &input.rows)?;
        // Stored first: the store groups the rows by key, which the probe
        // then goes by. A probe looks at the other side only, so every
        // pair is still found once, when its later row arrives.
        let seq = self.store(
            port,
            input.rows.clone(),
            &input.times_ms,
            (&keys, &key_refs),
            bounds.as_deref(),
            Vec::new(),
        );
        let matched = self.probe(port, &input, (&keys, &key_refs), bounds.as_deref(), out);
        let settled = matched.and_then(|matched| self.settle(port, &input, seq, matched, out));
        self.key_refs = key_refs;
        settled?;
        // Rows of this batch may already be past every possible match.
        self.evict(port, out)
    }

    fn on_input_watermark(
        &mut self,
        port: usize,
        watermark_ms: i64,
        out: &mut Vec<RecordBatch>,
    ) -> Result<()> {
        let side = &mut self.sides[port];
        side.watermark_ms = side.watermark_ms.max(watermark_ms);
        // This side's watermark decides what the other side keeps.
        self.evict(1 - port, out)
    }

    fn output_watermark(&self, _input_watermark_ms: i64) -> i64 {
        let (left, right) = (self.sides[0].watermark_ms, self.sides[1].watermark_ms);
        if left == i64::MAX && right == i64::MAX {
            return i64::MAX;
        }
        // Future output pairs a new row of one side (time >= its side's
        // watermark) with a stored row of the other. A stored right row
        // is at least a new left row's time + lower, a stored left row at
        // least a new right row's time - upper. A bound by a column of the
        // rows (`b.ts <= a.expires`) leaves one of them unbounded, and
        // with it the age of that side's stored rows: the watermark then
        // covers the other side's times only, which is all the planner
        // takes for event time from such a join.
        if self.spec.lower_ms == i64::MIN && self.spec.upper_ms == i64::MAX {
            // A regular join pairs rows of any age.
            return i64::MIN;
        }
        let mut watermark = i64::MAX;
        if self.spec.lower_ms != i64::MIN {
            watermark = watermark
                .min(right)
                .min(left.saturating_add(self.spec.lower_ms));
        }
        if self.spec.upper_ms != i64::MAX {
            watermark = watermark
                .min(left)
                .min(right.saturating_sub(self.spec.upper_ms));
        }
        // An outer side's stored rows are emitted padded when they expire.
        for side in &self.sides {
            if side.outer {
                if let Some(start) = side.buckets.first_start() {
                    watermark = watermark.min(start);
                }
            }
        }
        watermark
    }

    fn late_rows(&self) -> u64 {
        self.late
    }

    fn checkpoints(&self) -> bool {
        true
    }

    /// A first batch with both sides' watermarks, then per side one batch
    /// of its stored rows (the side's columns, then `time_ms`, `state`,
    /// `port`), bucket by bucket in insertion order, so that restoring
    /// them rebuilds the same buckets and key chains.
    fn snapshot(&mut self) -> Result<Vec<RecordBatch>> {
        let watermarks: Vec<arrow::array::ArrayRef> = self
            .sides
            .iter()
            .map(|s| Arc::new(Int64Array::from(vec![s.watermark_ms])) as _)
            .collect();
        let mut batches = vec![crate::snapshot_batch(
            ["left_watermark".to_string(), "right_watermark".to_string()],
            watermarks,
        )?];
        for port in 0..2 {
            let side = &self.sides[port];
            // (stored batch, row, time), bucket by bucket, run by run.
            let entries: Vec<(u64, u32, i64)> = side
                .buckets
                .values()
                .flat_map(|b| {
                    b.runs.iter().flat_map(move |run| {
                        let span = run.span();
                        b.rows[span.clone()]
                            .iter()
                            .zip(&b.times_ms[span])
                            .map(move |(&row, &t)| (run.batch, row, t))
                    })
                })
                .collect();
            if entries.is_empty() {
                continue;
            }
            let rows: Vec<(u64, u32)> = entries.iter().map(|&(b, r, _)| (b, r)).collect();
            let mut columns = side.batches.gather(&rows, self.side_schema(port))?;
            let mut names: Vec<String> = (0..columns.len()).map(|i| format!("c{i}")).collect();
            columns.push(Arc::new(Int64Array::from_iter_values(
                entries.iter().map(|&(_, _, t)| t),
            )));
            columns.push(Arc::new(UInt8Array::from_iter_values(entries.iter().map(
                |&(batch, row, _)| {
                    let states = &side.batches.get(batch).extra.states;
                    states.get(row as usize).copied().unwrap_or(UNMATCHED)
                },
            ))));
            columns.push(Arc::new(Int64Array::from_value(port as i64, entries.len())));
            names.extend(["time_ms".into(), "state".into(), "port".into()]);
            batches.push(crate::snapshot_batch(names, columns)?);
        }
        Ok(batches)
    }

    fn restore(&mut self, state: &[RecordBatch]) -> Result<()> {
        let Some((meta, sides)) = state.split_first() else {
            return Ok(());
        };
        let int64 = crate::snapshot::column::<Int64Array>;
        self.sides[0].watermark_ms = int64(meta, "left_watermark")?.value(0);
        self.sides[1].watermark_ms = int64(meta, "right_watermark")?.value(0);
        for batch in sides {
            let port = int64(batch, "port")?.value(0) as usize;
            let schema = Arc::clone(self.side_schema(port.min(1)));
            let n = schema.fields().len();
            if port > 1 || batch.num_columns() != n + 3 {
                return Err(crate::snapshot::corrupt("join rows"));
            }
            let rows = RecordBatch::try_new(schema, batch.columns()[..n].to_vec())?;
            let times_ms = int64(batch, "time_ms")?.values().clone();
            let states = batch
                .column(n + 1)
                .as_any()
                .downcast_ref::<UInt8Array>()
                .ok_or_else(|| crate::snapshot::corrupt("join row states"))?
                .values()
                .to_vec();
            let side = if port == 0 {
                &self.spec.left
            } else {
                &self.spec.right
            };
            let key_arrays = crate::stage::evaluate_all(&side.keys, &rows)?;
            let keys = self.encoder.encode_owned(&key_arrays)?;
            let mut key_refs = Vec::new();
            self.key_refs_into(&keys, rows.num_rows(), &mut key_refs);
            let bounds = self.row_bounds(port, &rows)?;
            self.store(
                port,
                rows,
                &times_ms,
                (&keys, &key_refs),
                bounds.as_deref(),
                states,
            );
        }
        Ok(())
    }

    fn state_bytes(&self) -> usize {
        self.sides
            .iter()
            .map(|side| {
                side.batches.bytes + side.buckets.values().map(Bucket::bytes).sum::<usize>()
            })
            .sum::<usize>()
            + self.pairs_shape.bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::datatypes::{DataType, Field, Schema};
    use datafusion::physical_expr::expressions::col;

    /// An inner join on `k` with `right - left` in `[lower, upper]`.
    fn join(lower_ms: i64, upper_ms: i64) -> IntervalJoin {
        let schema = Arc::new(Schema::new(vec![
            Field::new("k", DataType::Int64, false),
            Field::new("ts", DataType::Int64, false),
        ]));
        let side = JoinSide {
            pre: Vec::new(),
            event_time: Some((1, crate::EventTimeUnit::EpochMillis)),
            keys: vec![col("k", &schema).unwrap()],
            schema: Arc::clone(&schema),
        };
        let joined = Arc::new(Schema::new(
            [schema.fields().to_vec(), schema.fields().to_vec()].concat(),
        ));
        IntervalJoin::new(IntervalJoinSpec {
            left: side.clone(),
            right: side,
            lower_ms,
            upper_ms,
            filter: None,
            left_outer: false,
            right_outer: false,
            joined_schema: joined,
            post: Vec::new(),
            changes: None,
            mode: JoinMode::Pairs,
            row_bound: None,
        })
        .unwrap()
    }

    /// A key that is a plain column on both sides is read from the
    /// probing side's rows for either side; a computed key is not.
    #[test]
    fn plain_key_columns_are_twins_computed_keys_are_not() {
        let j = join(0, 10);
        // Every column is read (no post stages); `k` (0) is the key.
        assert_eq!(j.pairs_shape.read, [vec![0, 1], vec![0, 1]]);
        assert_eq!(
            j.pairs_shape.twin,
            [vec![Some(0), None], vec![Some(0), None]]
        );

        let mut spec = j.spec.clone();
        let schema = Arc::clone(&spec.left.schema);
        let plus_one = datafusion::physical_expr::expressions::binary(
            col("k", &schema).unwrap(),
            datafusion::logical_expr::Operator::Plus,
            datafusion::physical_expr::expressions::lit(1i64),
            &schema,
        )
        .unwrap();
        spec.right.keys = vec![plus_one];
        let shape = PairsShape::new(&spec);
        assert_eq!(shape.twin, [vec![None, None], vec![None, None]]);
    }

    /// The times a probe accepts are exactly those within the bounds, at
    /// the ends of i64 too (the planner drops the bounds from the pair
    /// filter on that promise).
    #[test]
    fn probe_ranges_are_exact_at_the_ends_of_time() {
        let (max, min) = (i64::MAX, i64::MIN);
        let j = join(5, 10);
        // Every right time would be past i64::MAX: nothing matches.
        assert_eq!(j.probe_range(0, max - 2, None), None);
        // Right rows probing: left times in [t - 10, t - 5].
        assert_eq!(j.probe_range(1, min + 2, None), None);
        let range = |port, t| {
            j.probe_range(port, t, None)
                .map(|(_, _, low, high)| (low, high))
        };
        assert_eq!(range(0, max - 7), Some((max - 2, max)));
        assert_eq!(range(1, min + 7), Some((min, min + 2)));
        assert_eq!(range(0, 100), Some((105, 110)));
        let j = join(-10, 10);
        assert_eq!(
            j.probe_range(0, max - 1, None).map(|(_, _, l, h)| (l, h)),
            Some((max - 11, max))
        );
        // A bucket starting at i64::MIN (clamped) is still looked in.
        let (first, _, _, _) = j.probe_range(0, min + 5, None).unwrap();
        assert_eq!(first, min);
    }
}
