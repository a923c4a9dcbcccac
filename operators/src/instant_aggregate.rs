//! Aggregation grouped by an event-time column, with no window
//! (`GROUP BY auction, bid_time`): every group holds the rows of one
//! instant, so a group is final once the watermark passes that instant,
//! and it is emitted then, once, like a window that closes.
//!
//! The rows of a group all arrive before the watermark passes their time
//! (a row behind the watermark is late: dropped, or sent to the late side
//! output), so nothing is aggregated until then: the operator keeps the
//! aggregate's input rows, after its filters and projections, as they
//! came, and when the watermark advances it takes the rows it passed and
//! aggregates them in one go, with a group table and accumulators that
//! live for that one call. Its state is therefore the rows of the last
//! watermark bound of event time, and each row is read once by the
//! aggregate. Groups are usually small (most of q6's are single bids), so
//! keeping open groups' accumulators between batches would cost more: a
//! group table entry and accumulator slots per row, and an emit that has
//! to pick the closing groups out of the open ones.
//!
//! Rows are kept in arrival order, so order-sensitive aggregates
//! (`first_value` among rows of equal time) see them as a window
//! aggregate would.

use std::collections::VecDeque;

use arrow::array::{BooleanArray, RecordBatch};
use arrow::compute::{filter_record_batch, not};
use datafusion::logical_expr::EmitTo;
use laminar_runtime::Result;

use crate::aggregate::{AggregateSpec, LateRows, WindowBinding};
use crate::groups::KeyEncoder;
use crate::stage::apply_all;
use crate::{BatchTime, Operator};

/// Rows of the aggregate's input that are not final yet.
struct Waiting {
    rows: RecordBatch,
    /// Earliest and latest event time of the rows, in ms.
    first_ms: i64,
    last_ms: i64,
}

/// The operator. One instance per stream per shard.
pub struct InstantAggregate {
    /// The aggregate; its keys include the event-time column.
    spec: AggregateSpec,
    /// The event-time key as a window of one ms: a row is late, and a
    /// group final, once the watermark is past the row's ms.
    time: WindowBinding,
    encoder: KeyEncoder,
    waiting: VecDeque<Waiting>,
    waiting_bytes: usize,
    late: LateRows,
    // Scratch buffers reused across batches.
    times_ms: Vec<i64>,
    group_ids: Vec<usize>,
}

impl std::fmt::Debug for InstantAggregate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InstantAggregate")
            .field("waiting_batches", &self.waiting.len())
            .field("late_rows", &self.late.count)
            .finish()
    }
}

impl InstantAggregate {
    /// Builds the operator's empty state. `time` binds the event-time key
    /// (its `kind` must be a tumbling window of 1 ms).
    pub fn new(spec: AggregateSpec, time: WindowBinding) -> Result<Self> {
        let window = time.kind.fixed("an aggregate grouped by event time")?;
        debug_assert!(window.is_tumbling() && window.size_ms == 1);
        let encoder = KeyEncoder::new(&spec.key_fields())?;
        let late = LateRows::new(spec.late_side_output);
        Ok(Self {
            spec,
            time,
            encoder,
            waiting: VecDeque::new(),
            waiting_bytes: 0,
            late,
            times_ms: Vec::new(),
            group_ids: Vec::new(),
        })
    }

    /// Calls `f` with the event times of aggregate input rows, in ms.
    fn with_times<T>(&mut self, rows: &RecordBatch, f: impl FnOnce(&[i64]) -> T) -> Result<T> {
        let times = self
            .time
            .event_time
            .evaluate(rows)?
            .into_array(rows.num_rows())?;
        let times_ms = self
            .time
            .unit
            .ms_values(times.as_ref(), &mut self.times_ms)?;
        Ok(f(times_ms))
    }

    /// Rows that are not final yet, with their span of event time,
    /// counted in the state's size.
    fn waiting_entry(&mut self, rows: RecordBatch) -> Result<Waiting> {
        let (first_ms, last_ms) = self.with_times(&rows, |times| {
            crate::time::min_max_i64(times).unwrap_or((i64::MAX, i64::MIN))
        })?;
        self.waiting_bytes += rows.get_array_memory_size();
        Ok(Waiting {
            rows,
            first_ms,
            last_ms,
        })
    }

    /// Queues rows that are not final yet.
    fn wait(&mut self, rows: RecordBatch) -> Result<()> {
        let waiting = self.waiting_entry(rows)?;
        self.waiting.push_back(waiting);
        Ok(())
    }

    /// Takes the waiting rows the watermark has passed, in arrival order.
    fn take_final(&mut self, watermark_ms: i64) -> Result<Vec<RecordBatch>> {
        let mut taken = Vec::new();
        if watermark_ms == i64::MAX {
            // The end of input: every row, `i64::MAX` itself included.
            self.waiting_bytes = 0;
            taken.extend(self.waiting.drain(..).map(|w| w.rows));
            return Ok(taken);
        }
        if self.waiting.iter().all(|w| w.first_ms >= watermark_ms) {
            return Ok(taken);
        }
        let mut kept = VecDeque::with_capacity(self.waiting.len());
        while let Some(entry) = self.waiting.pop_front() {
            if entry.first_ms >= watermark_ms {
                kept.push_back(entry);
                continue;
            }
            self.waiting_bytes -= entry.rows.get_array_memory_size();
            if entry.last_ms < watermark_ms {
                taken.push(entry.rows);
                continue;
            }
            // Some rows are final: split them off, keep the rest in place.
            let is_final: BooleanArray = self.with_times(&entry.rows, |times| {
                times.iter().map(|&t| Some(t < watermark_ms)).collect()
            })?;
            taken.push(filter_record_batch(&entry.rows, &is_final)?);
            let rest = filter_record_batch(&entry.rows, &not(&is_final)?)?;
            kept.push_back(self.waiting_entry(rest)?);
        }
        self.waiting = kept;
        Ok(taken)
    }

    /// Aggregates final rows (every row of each of their groups) into
    /// the stream's output.
    fn aggregate(&mut self, batches: &[RecordBatch]) -> Result<Option<RecordBatch>> {
        let mut groups = self.encoder.table();
        let mut accumulators = self.spec.accumulators()?;
        let mut group_ids = std::mem::take(&mut self.group_ids);
        for rows in batches {
            let inputs = self.spec.inputs(rows)?;
            let keys = self.encoder.encode(&inputs.key_arrays)?;
            self.encoder
                .resolve(&mut groups, &keys, None, rows.num_rows(), &mut group_ids);
            let count = groups.len();
            for (j, accumulator) in accumulators.iter_mut().enumerate() {
                accumulator.update_batch(
                    &inputs.arguments[j],
                    &group_ids,
                    inputs.filters[j].as_ref(),
                    count,
                )?;
            }
        }
        self.group_ids = group_ids;
        if groups.is_empty() {
            return Ok(None);
        }
        let ids = groups.all_ids();
        let key_columns = self.encoder.key_columns(&groups, &ids)?;
        let values = accumulators
            .iter_mut()
            .map(|a| a.evaluate(EmitTo::All))
            .collect::<datafusion::common::Result<Vec<_>>>()?;
        let aggregated = self.spec.assemble(None, key_columns, values)?;
        let out = apply_all(&self.spec.post, &aggregated)?;
        Ok((out.num_rows() > 0).then_some(out))
    }
}

impl Operator for InstantAggregate {
    fn on_batch(
        &mut self,
        batch: &RecordBatch,
        time: BatchTime<'_>,
        _out: &mut Vec<RecordBatch>,
    ) -> Result<()> {
        // One-ms windows: a row is either late for its only window or on
        // time, so no per-row watermark comes back.
        let (on_time, _) = self
            .late
            .drop_from(&self.time, batch, time, &mut self.times_ms)?;
        if on_time.num_rows() == 0 {
            return Ok(());
        }
        let rows = apply_all(&self.spec.pre, &on_time)?;
        if rows.num_rows() > 0 {
            self.wait(rows)?;
        }
        Ok(())
    }

    fn on_watermark(&mut self, watermark_ms: i64, out: &mut Vec<RecordBatch>) -> Result<()> {
        let taken = self.take_final(watermark_ms)?;
        if taken.is_empty() {
            return Ok(());
        }
        if let Some(batch) = self.aggregate(&taken)? {
            out.push(batch);
        }
        Ok(())
    }

    // Rows still waiting are at or after the watermark, and rows emitted
    // now were on time when they came (at or after the watermark then):
    // the input's watermark covers the output's event-time key as it is.

    fn late_rows(&self) -> u64 {
        self.late.count
    }

    fn state_bytes(&self) -> usize {
        self.waiting_bytes
    }

    fn drain_late(&mut self, out: &mut Vec<RecordBatch>) {
        out.append(&mut self.late.batches);
    }

    fn checkpoints(&self) -> bool {
        true
    }

    /// The waiting rows, as they are (the aggregate's input after its
    /// filters and projections).
    fn snapshot(&mut self) -> Result<Vec<RecordBatch>> {
        Ok(self.waiting.iter().map(|w| w.rows.clone()).collect())
    }

    fn restore(&mut self, state: &[RecordBatch]) -> Result<()> {
        self.waiting.clear();
        self.waiting_bytes = 0;
        for rows in state {
            if rows.num_rows() > 0 {
                self.wait(rows.clone())?;
            }
        }
        Ok(())
    }
}
