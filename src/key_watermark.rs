//! Per-key watermarks (`CREATE SOURCE ... WITH (watermark_key = 'col')`).
//!
//! Without the option a source handle is one partition with one watermark:
//! its largest event time minus the bound. Keys whose clocks differ (one
//! device reporting minutes behind the others, one symbol trading late)
//! then lose their rows as late as soon as a faster key moves the
//! watermark. With the option, the handle tracks a watermark per value of
//! the key column, each key's largest event time minus the bound, and the
//! handle's watermark is the slowest *active* key's: a row is late only if
//! it is behind every active key. Windows close once every active key has
//! passed them, so a lagging key costs latency, never rows.
//!
//! A key is active while its watermark is within `watermark_key_skew` of
//! the fastest key's (always, without a skew): a key that falls further
//! behind, or stops sending, no longer holds the watermark back, and when
//! it sends again it rejoins at the watermark then in force (what it sends
//! behind that is late), as an idle partition does.
//!
//! Cost per row: one hash lookup of the key; the heap (one entry per
//! active key, lower than or equal to its watermark) is touched only when
//! its lowest entry turns out stale, i.e. when the slowest key moved. No
//! allocation except for a key's first row. Memory: one entry per
//! distinct key the handle has seen. Rows are judged one after another exactly as if pushed one at
//! a time, so results do not depend on batch sizes.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use arrow::array::{Array, ArrayRef, AsArray, Int64Array};
use arrow::datatypes::{DataType, Int64Type};
use hashbrown::HashMap;
use laminar_runtime::{Error, ErrorCode, Result};

/// Which column keys the watermark, and how far a key may lag.
#[derive(Debug, Clone, Copy)]
pub(crate) struct KeySpec {
    pub column: usize,
    /// A key further than this behind the fastest stops holding the
    /// watermark back; `None`: never.
    pub skew_ms: Option<i64>,
}

/// One handle's per-key watermarks.
pub(crate) struct KeyWatermarks {
    spec: KeySpec,
    bound_ms: i64,
    integer_ids: HashMap<i64, u32>,
    text_ids: HashMap<String, u32>,
    null_id: Option<u32>,
    /// `[key id]` -> its watermark.
    marks: Vec<i64>,
    /// `[key id]` -> whether the key has its entry in the heap (it has not
    /// while dormant).
    in_heap: Vec<bool>,
    /// One entry per active key, lowest first, at or below the key's
    /// watermark: an entry below it is stale and re-pushed when it reaches
    /// the top.
    heap: BinaryHeap<Reverse<(i64, u32)>>,
    /// The fastest key's watermark.
    fastest_ms: i64,
    /// Per-row watermarks of the last batch (reused).
    in_force: Vec<i64>,
}

/// What one batch did to a handle's watermark.
pub(crate) struct Advanced {
    /// Each row's watermark in force, when some row was behind it.
    pub row_watermarks: Option<Int64Array>,
    /// The handle's watermark after the batch.
    pub watermark_ms: i64,
}

impl KeyWatermarks {
    pub fn new(spec: KeySpec, bound_ms: i64) -> Self {
        Self {
            spec,
            bound_ms,
            integer_ids: HashMap::new(),
            text_ids: HashMap::new(),
            null_id: None,
            marks: Vec::new(),
            in_heap: Vec::new(),
            heap: BinaryHeap::new(),
            fastest_ms: i64::MIN,
            in_force: Vec::new(),
        }
    }

    /// Runs one batch: `times_ms` are its rows' event times, `watermark_ms`
    /// the handle's watermark before it (never lowered).
    pub fn advance(
        &mut self,
        keys: &ArrayRef,
        times_ms: &[i64],
        watermark_ms: i64,
    ) -> Result<Advanced> {
        let keys = Keys::of(keys)?;
        self.in_force.clear();
        let mut watermark = watermark_ms;
        let mut behind = false;
        for (row, &time_ms) in times_ms.iter().enumerate() {
            self.in_force.push(watermark);
            behind |= time_ms < watermark;
            let id = self.id_of(&keys, row) as usize;
            // A key that fell behind rejoins at the watermark in force.
            let mark = self.marks[id]
                .max(watermark)
                .max(time_ms.saturating_sub(self.bound_ms));
            self.marks[id] = mark;
            self.fastest_ms = self.fastest_ms.max(mark);
            if !self.in_heap[id] {
                self.in_heap[id] = true;
                self.heap.push(Reverse((mark, id as u32)));
            }
            if let Some(slowest) = self.slowest_active() {
                watermark = watermark.max(slowest);
            }
        }
        Ok(Advanced {
            row_watermarks: behind.then(|| Int64Array::from(self.in_force.clone())),
            watermark_ms: watermark,
        })
    }

    /// Number of keys seen.
    #[cfg(test)]
    fn keys(&self) -> usize {
        self.marks.len()
    }

    fn id_of(&mut self, keys: &Keys<'_>, row: usize) -> u32 {
        let next = self.marks.len() as u32;
        let id = match keys {
            _ if keys.is_null(row) => *self.null_id.get_or_insert(next),
            Keys::Integer(a) => *self.integer_ids.entry(a.value(row)).or_insert(next),
            Keys::Text(a) => {
                let text = a.value(row);
                match self.text_ids.get(text) {
                    Some(&id) => id,
                    None => {
                        self.text_ids.insert(text.to_string(), next);
                        next
                    }
                }
            }
        };
        if id == next {
            self.marks.push(i64::MIN);
            self.in_heap.push(false);
        }
        id
    }

    /// The lowest watermark among active keys: stale entries at the top
    /// are re-pushed at their key's watermark, keys more than the skew
    /// behind the fastest leave the heap (dormant until they send again).
    fn slowest_active(&mut self) -> Option<i64> {
        while let Some(&Reverse((entry, id))) = self.heap.peek() {
            let mark = self.marks[id as usize];
            let dormant = self
                .spec
                .skew_ms
                .is_some_and(|skew| mark < self.fastest_ms.saturating_sub(skew));
            if dormant {
                self.heap.pop();
                self.in_heap[id as usize] = false;
            } else if entry < mark {
                self.heap.pop();
                self.heap.push(Reverse((mark, id)));
            } else {
                return Some(mark);
            }
        }
        None
    }
}

/// The key column, as the types it may have.
enum Keys<'a> {
    Integer(Int64Array),
    Text(&'a arrow::array::StringArray),
}

impl<'a> Keys<'a> {
    fn of(array: &'a ArrayRef) -> Result<Self> {
        match array.data_type() {
            DataType::Utf8 => Ok(Keys::Text(array.as_string::<i32>())),
            t if t.is_integer() => {
                let cast = arrow::compute::cast(array, &DataType::Int64)
                    .map_err(|e| Error::new(ErrorCode::Execution, format!("watermark key: {e}")))?;
                Ok(Keys::Integer(cast.as_primitive::<Int64Type>().clone()))
            }
            other => Err(Error::new(
                ErrorCode::Execution,
                format!("watermark key of type {other}: only integer and string keys"),
            )),
        }
    }

    fn is_null(&self, row: usize) -> bool {
        match self {
            Keys::Integer(a) => a.is_null(row),
            Keys::Text(a) => a.is_null(row),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::StringArray;

    use super::*;

    fn run(tracker: &mut KeyWatermarks, keys: &[&str], times: &[i64], before: i64) -> Advanced {
        let keys: ArrayRef = Arc::new(StringArray::from(keys.to_vec()));
        tracker.advance(&keys, times, before).unwrap()
    }

    #[test]
    fn the_slowest_key_holds_the_watermark() {
        let mut tracker = KeyWatermarks::new(
            KeySpec {
                column: 0,
                skew_ms: None,
            },
            10,
        );
        // a runs ahead of b by ~200 ms, more than the 10 ms bound: with one
        // watermark for the handle, b's 1010 and 1020 would be late.
        let done = run(
            &mut tracker,
            &["a", "b", "a", "b", "a", "b"],
            &[1000, 995, 1100, 1010, 1200, 1020],
            i64::MIN,
        );
        assert_eq!(done.watermark_ms, 1010);
        assert!(done.row_watermarks.is_none(), "no row was behind");
        // b behind its own watermark: late.
        let done = run(&mut tracker, &["b"], &[900], done.watermark_ms);
        assert_eq!(done.watermark_ms, 1010);
        assert_eq!(done.row_watermarks.unwrap().values().to_vec(), vec![1010]);
        // A key first seen behind the watermark joins at it (a watermark
        // never goes back): its row is late.
        let done = run(&mut tracker, &["c", "b"], &[500, 1100], 1010);
        assert_eq!(
            done.row_watermarks.unwrap().values().to_vec(),
            vec![1010, 1010]
        );
        assert_eq!(done.watermark_ms, 1010, "c holds it at 1010");
        assert_eq!(tracker.keys(), 3);
    }

    #[test]
    fn a_key_too_far_behind_stops_holding_and_rejoins_at_the_watermark() {
        let mut tracker = KeyWatermarks::new(
            KeySpec {
                column: 0,
                skew_ms: Some(1000),
            },
            0,
        );
        let done = run(&mut tracker, &["b", "a"], &[4500, 5000], i64::MIN);
        assert_eq!(done.watermark_ms, 4500);
        // a moves on; b goes silent: once a is 1 s past b, b stops holding.
        let done = run(&mut tracker, &["a", "a"], &[5400, 6000], done.watermark_ms);
        assert_eq!(done.watermark_ms, 6000);
        // b comes back at 5800: behind the watermark (late), and it rejoins
        // at 6000, so it does not pull the watermark back.
        let done = run(&mut tracker, &["b", "b"], &[5800, 6100], done.watermark_ms);
        assert_eq!(
            done.row_watermarks.unwrap().values().to_vec(),
            vec![6000, 6000]
        );
        assert_eq!(done.watermark_ms, 6000, "a is at 6000, b at 6100");
    }

    #[test]
    fn batches_and_single_rows_agree() {
        let keys = ["x", "y", "z", "x", "y", "z", "x", "y"];
        let times = [100, 50, 70, 180, 40, 200, 300, 260];
        let spec = KeySpec {
            column: 0,
            skew_ms: Some(150),
        };
        let mut whole = KeyWatermarks::new(spec, 5);
        let all = run(&mut whole, &keys, &times, i64::MIN);
        let mut single = KeyWatermarks::new(spec, 5);
        let mut watermark = i64::MIN;
        let mut per_row = Vec::new();
        for (key, time) in keys.iter().zip(times) {
            per_row.push(watermark);
            watermark = run(&mut single, &[key], &[time], watermark).watermark_ms;
        }
        assert_eq!(all.watermark_ms, watermark);
        assert_eq!(all.row_watermarks.unwrap().values().to_vec(), per_row);
    }

    #[test]
    fn integer_and_null_keys() {
        let mut tracker = KeyWatermarks::new(
            KeySpec {
                column: 0,
                skew_ms: None,
            },
            0,
        );
        let keys: ArrayRef = Arc::new(arrow::array::Int32Array::from(vec![Some(1), None, Some(1)]));
        let done = tracker.advance(&keys, &[100, 50, 200], i64::MIN).unwrap();
        assert_eq!(
            done.watermark_ms, 100,
            "the NULL key is a key of its own, and holds it"
        );
        assert_eq!(tracker.keys(), 2);
    }

    #[test]
    fn the_heap_stays_bounded() {
        let mut tracker = KeyWatermarks::new(
            KeySpec {
                column: 0,
                skew_ms: None,
            },
            0,
        );
        let keys: Vec<&str> = (0..10_000).map(|i| ["a", "b", "c"][i % 3]).collect();
        let times: Vec<i64> = (0..10_000).collect();
        run(&mut tracker, &keys, &times, i64::MIN);
        assert_eq!(tracker.heap.len(), 3, "one entry per key");
    }
}
