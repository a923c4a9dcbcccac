//! Event time and fixed-length (tumbling and sliding) windows.
//!
//! Event time is carried internally as epoch milliseconds (`i64`). A source
//! column may be `BIGINT` (already ms) or `TIMESTAMP` of any unit; a
//! timestamp is floored to whole milliseconds. Window bounds are computed in
//! ms and converted back to the column's own type for output, so a
//! `TIMESTAMP` stream gets `TIMESTAMP` window starts.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, Int64Array, PrimitiveArray};
use arrow::buffer::ScalarBuffer;
use arrow::datatypes::{
    DataType, Int64Type, TimeUnit, TimestampMicrosecondType, TimestampMillisecondType,
    TimestampNanosecondType, TimestampSecondType,
};
use laminar_runtime::{Error, ErrorCode, Result};

/// How a column stores event time.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum EventTimeUnit {
    /// `BIGINT` epoch milliseconds.
    EpochMillis,
    /// `TIMESTAMP` with this unit and optional time zone.
    Timestamp(TimeUnit, Option<Arc<str>>),
}

impl EventTimeUnit {
    /// The unit for a column type, or an error naming the column.
    pub fn of(data_type: &DataType, column: &str) -> Result<Self> {
        match data_type {
            DataType::Int64 => Ok(EventTimeUnit::EpochMillis),
            DataType::Timestamp(unit, tz) => Ok(EventTimeUnit::Timestamp(*unit, tz.clone())),
            other => Err(Error::new(
                ErrorCode::InvalidEventTime,
                format!(
                    "event-time column '{column}' has type {other}; it must be BIGINT \
                     (epoch milliseconds) or TIMESTAMP"
                ),
            )),
        }
    }

    /// The Arrow type of this unit.
    pub fn data_type(&self) -> DataType {
        match self {
            EventTimeUnit::EpochMillis => DataType::Int64,
            EventTimeUnit::Timestamp(unit, tz) => DataType::Timestamp(*unit, tz.clone()),
        }
    }

    fn ticks_per_ms(&self) -> (i64, i64) {
        // (multiply, divide) to go from native ticks to ms.
        match self {
            EventTimeUnit::EpochMillis => (1, 1),
            EventTimeUnit::Timestamp(TimeUnit::Second, _) => (1000, 1),
            EventTimeUnit::Timestamp(TimeUnit::Millisecond, _) => (1, 1),
            EventTimeUnit::Timestamp(TimeUnit::Microsecond, _) => (1, 1000),
            EventTimeUnit::Timestamp(TimeUnit::Nanosecond, _) => (1, 1_000_000),
        }
    }

    /// Native ticks to epoch ms, flooring.
    #[inline]
    pub fn to_ms(&self, ticks: i64) -> i64 {
        let (mul, div) = self.ticks_per_ms();
        ticks.saturating_mul(mul).div_euclid(div)
    }

    /// Epoch ms to native ticks.
    #[inline]
    pub fn from_ms(&self, ms: i64) -> i64 {
        let (mul, div) = self.ticks_per_ms();
        ms.div_euclid(mul).saturating_mul(div)
    }

    /// An event-time array's epoch-ms values: the array's own values when
    /// it already holds ms (no copy), else converted into `scratch`. NULLs
    /// are an error, as in [`EventTimeUnit::array_to_ms`].
    pub fn ms_values<'a>(
        &self,
        array: &'a dyn Array,
        scratch: &'a mut Vec<i64>,
    ) -> Result<&'a [i64]> {
        let own = match self {
            EventTimeUnit::EpochMillis => array.as_primitive_opt::<Int64Type>().map(|a| a.values()),
            EventTimeUnit::Timestamp(TimeUnit::Millisecond, _) => array
                .as_primitive_opt::<TimestampMillisecondType>()
                .map(|a| a.values()),
            EventTimeUnit::Timestamp(..) => None,
        };
        match own {
            Some(values) if array.null_count() == 0 => Ok(values),
            _ => {
                self.array_to_ms(array, scratch)?;
                Ok(scratch)
            }
        }
    }

    /// Converts an event-time array to epoch ms. NULLs are an error: a row
    /// without an event time cannot be placed in time.
    pub fn array_to_ms(&self, array: &dyn Array, out: &mut Vec<i64>) -> Result<()> {
        let values = self.ticks(array)?;
        out.clear();
        match self.ticks_per_ms() {
            (1, 1) => out.extend_from_slice(values),
            (mul, div) => out.extend(
                values
                    .iter()
                    .map(|&t| t.saturating_mul(mul).div_euclid(div)),
            ),
        }
        Ok(())
    }

    /// [`EventTimeUnit::array_to_ms`] as a buffer: the array's own values,
    /// shared rather than copied, where they are in ms already.
    pub fn array_ms_buffer(&self, array: &dyn Array) -> Result<ScalarBuffer<i64>> {
        let values = self.ticks(array)?;
        Ok(match self {
            EventTimeUnit::EpochMillis => primitive_buffer::<Int64Type>(array)?,
            EventTimeUnit::Timestamp(TimeUnit::Millisecond, _) => {
                primitive_buffer::<TimestampMillisecondType>(array)?
            }
            _ => values.iter().map(|&t| self.to_ms(t)).collect(),
        })
    }

    /// An event-time array's values in its own unit (ticks), which order
    /// rows exactly where epoch ms would tie them. NULLs are an error, as
    /// in [`EventTimeUnit::array_to_ms`].
    pub fn ticks<'a>(&self, array: &'a dyn Array) -> Result<&'a [i64]> {
        if array.null_count() > 0 {
            return Err(Error::new(
                ErrorCode::InvalidEventTime,
                "event-time column contains NULL; every row needs an event time",
            ));
        }
        Ok(match self {
            EventTimeUnit::EpochMillis => primitive::<Int64Type>(array)?,
            EventTimeUnit::Timestamp(TimeUnit::Second, _) => {
                primitive::<TimestampSecondType>(array)?
            }
            EventTimeUnit::Timestamp(TimeUnit::Millisecond, _) => {
                primitive::<TimestampMillisecondType>(array)?
            }
            EventTimeUnit::Timestamp(TimeUnit::Microsecond, _) => {
                primitive::<TimestampMicrosecondType>(array)?
            }
            EventTimeUnit::Timestamp(TimeUnit::Nanosecond, _) => {
                primitive::<TimestampNanosecondType>(array)?
            }
        })
    }

    /// The epoch ms of a value in this unit (floored).
    #[inline]
    pub fn tick_to_ms(&self, tick: i64) -> i64 {
        let (mul, div) = self.ticks_per_ms();
        tick.saturating_mul(mul).div_euclid(div)
    }

    /// An array of epoch-ms values, in this unit's type.
    pub fn array_from_ms(&self, ms: impl IntoIterator<Item = i64>) -> ArrayRef {
        let values = Int64Array::from_iter_values(ms.into_iter().map(|m| self.from_ms(m)));
        self.retype(values)
    }

    fn retype(&self, values: Int64Array) -> ArrayRef {
        match self {
            EventTimeUnit::EpochMillis => Arc::new(values),
            EventTimeUnit::Timestamp(_, _) => {
                let data = values
                    .into_data()
                    .into_builder()
                    .data_type(self.data_type())
                    .build()
                    .expect("same layout as Int64");
                arrow::array::make_array(data)
            }
        }
    }

    /// An array of `len` copies of `ms`, in this unit's type.
    pub fn constant_array(&self, ms: i64, len: usize) -> ArrayRef {
        self.retype(Int64Array::from_value(self.from_ms(ms), len))
    }
}

/// [`primitive`]'s values as their shared buffer.
fn primitive_buffer<T: arrow::datatypes::ArrowPrimitiveType<Native = i64>>(
    array: &dyn Array,
) -> Result<ScalarBuffer<i64>> {
    primitive::<T>(array)?;
    Ok(array.as_primitive::<T>().values().clone())
}

fn primitive<T: arrow::datatypes::ArrowPrimitiveType<Native = i64>>(
    array: &dyn Array,
) -> Result<&[i64]> {
    array
        .as_any()
        .downcast_ref::<PrimitiveArray<T>>()
        .map(|a| a.values().as_ref())
        .ok_or_else(|| {
            Error::new(
                ErrorCode::InvalidEventTime,
                format!("event-time column has type {}", array.data_type()),
            )
        })
}

/// A tumbling or sliding (hopping) window of fixed length.
///
/// Windows are `[start, start + size)` with starts at every multiple of
/// `slide` shifted by `offset`: `start = k * slide + offset`. A tumbling
/// window has `slide == size`, so each instant is in exactly one window; a
/// sliding window with `slide < size` puts each instant in
/// `ceil(size / slide)` windows (fewer when `size` is not a multiple).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct WindowSpec {
    /// Window length in ms (> 0).
    pub size_ms: i64,
    /// Distance between consecutive window starts in ms (`0 < slide <= size`).
    pub slide_ms: i64,
    /// Shift of window starts from the epoch, in ms.
    pub offset_ms: i64,
}

impl WindowSpec {
    /// A tumbling window.
    pub fn tumble(size_ms: i64, offset_ms: i64) -> Result<Self> {
        Self::slide(size_ms, size_ms, offset_ms)
    }

    /// A sliding window; `slide` must not exceed `size` (no gaps between
    /// windows, so every row belongs to at least one).
    pub fn slide(size_ms: i64, slide_ms: i64, offset_ms: i64) -> Result<Self> {
        if size_ms <= 0 || slide_ms <= 0 {
            return Err(Error::new(
                ErrorCode::InvalidWindow,
                format!(
                    "window size and slide must be positive, got size {size_ms} ms, slide {slide_ms} ms"
                ),
            ));
        }
        if slide_ms > size_ms {
            return Err(Error::new(
                ErrorCode::InvalidWindow,
                format!(
                    "window slide ({slide_ms} ms) is longer than its size ({size_ms} ms): \
                     rows between windows would belong to none"
                ),
            ));
        }
        Ok(Self {
            size_ms,
            slide_ms,
            offset_ms,
        })
    }

    /// Whether each instant is in exactly one window.
    #[inline]
    pub fn is_tumbling(&self) -> bool {
        self.slide_ms == self.size_ms
    }

    /// Start of the latest window holding `t_ms` (the only one when
    /// tumbling).
    #[inline]
    pub fn start_of(&self, t_ms: i64) -> i64 {
        (t_ms - self.offset_ms).div_euclid(self.slide_ms) * self.slide_ms + self.offset_ms
    }

    /// Start of the earliest window holding `t_ms`.
    #[inline]
    pub fn first_start_of(&self, t_ms: i64) -> i64 {
        if self.is_tumbling() {
            return self.start_of(t_ms);
        }
        // The smallest aligned start greater than t - size.
        self.start_of(t_ms.saturating_sub(self.size_ms)) + self.slide_ms
    }

    /// End (exclusive) of the window starting at `start_ms`.
    #[inline]
    pub fn end_of(&self, start_ms: i64) -> i64 {
        start_ms.saturating_add(self.size_ms)
    }
}

/// The smallest of `values` (`None` when empty): every window operator
/// scans a batch's event times for it, to learn whether any row can be
/// late. The crates are built for baseline x86-64, whose SSE2 has no
/// 64-bit compare, so the plain loop compiles to a seven-instruction
/// emulation per pair; on a CPU with AVX-512 or AVX2 the same loop runs
/// compiled for it (`vpminsq`, or `vpcmpgtq` and a blend), chosen at run
/// time (the check is one cached load).
#[inline]
pub fn min_i64(values: &[i64]) -> Option<i64> {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512F, checked above.
            return unsafe { min_i64_avx512(values) };
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2, checked above.
            return unsafe { min_i64_avx2(values) };
        }
    }
    values.iter().copied().min()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn min_i64_avx512(values: &[i64]) -> Option<i64> {
    values.iter().copied().min()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn min_i64_avx2(values: &[i64]) -> Option<i64> {
    values.iter().copied().min()
}

/// The smallest and the largest of `values` in one pass (`None` when
/// empty), compiled for the CPU's vector extensions as [`min_i64`] is.
#[inline]
pub fn min_max_i64(values: &[i64]) -> Option<(i64, i64)> {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512F, checked above.
            return unsafe { min_max_i64_avx512(values) };
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2, checked above.
            return unsafe { min_max_i64_avx2(values) };
        }
    }
    min_max_plain(values)
}

#[inline(always)]
fn min_max_plain(values: &[i64]) -> Option<(i64, i64)> {
    if values.is_empty() {
        return None;
    }
    Some(values.iter().fold((i64::MAX, i64::MIN), |(low, high), &t| {
        (low.min(t), high.max(t))
    }))
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn min_max_i64_avx512(values: &[i64]) -> Option<(i64, i64)> {
    min_max_plain(values)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn min_max_i64_avx2(values: &[i64]) -> Option<(i64, i64)> {
    min_max_plain(values)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn min_i64_is_the_plain_minimum_on_every_path() {
        assert_eq!(min_i64(&[]), None);
        let mut values: Vec<i64> = (0..1_000i64).map(|i| (i * 7_919) % 1_009 - 500).collect();
        values.extend([i64::MAX, i64::MIN + 1, 0, -1]);
        for len in [1, 2, 3, 7, 8, 9, 31, 64, 65, values.len()] {
            for start in [0, 1, 5] {
                let slice = &values[start.min(len)..len];
                assert_eq!(
                    min_i64(slice),
                    slice.iter().copied().min(),
                    "{start}..{len}"
                );
            }
        }
        for len in [1, 2, 9, 64, 65, values.len()] {
            let slice = &values[..len];
            let want = (
                slice.iter().copied().min().unwrap(),
                slice.iter().copied().max().unwrap(),
            );
            assert_eq!(min_max_i64(slice), Some(want), "..{len}");
        }
        assert_eq!(min_max_i64(&[]), None);
        values.push(i64::MIN);
        assert_eq!(min_i64(&values), Some(i64::MIN));
        assert_eq!(min_max_i64(&values), Some((i64::MIN, i64::MAX)));
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx2") {
                // SAFETY: checked just above.
                assert_eq!(unsafe { min_i64_avx2(&values) }, Some(i64::MIN));
            }
        }
    }

    #[test]
    fn tumble_floors_negative_times_and_offsets() {
        let w = WindowSpec::tumble(60_000, 0).unwrap();
        assert_eq!(w.start_of(59_999), 0);
        assert_eq!(w.start_of(60_000), 60_000);
        assert_eq!(w.start_of(-1), -60_000);
        assert_eq!(w.first_start_of(-1), -60_000);
        let w = WindowSpec::tumble(3_600_000, 8 * 3_600_000).unwrap();
        assert_eq!(w.start_of(0), 0);
        assert_eq!(w.start_of(3_599_999), 0);
        assert!(WindowSpec::tumble(0, 0).is_err());
    }

    #[test]
    fn slide_covers_every_window_holding_an_instant() {
        let w = WindowSpec::slide(10_000, 4_000, 1_000).unwrap();
        for t in -30_000..30_000i64 {
            let holding: Vec<i64> = (-20..20)
                .map(|k| k * 4_000 + 1_000)
                .filter(|&s| s <= t && t < s + 10_000)
                .collect();
            assert_eq!(w.first_start_of(t), holding[0], "t={t}");
            assert_eq!(w.start_of(t), *holding.last().unwrap(), "t={t}");
        }
        assert!(WindowSpec::slide(10, 11, 0).is_err());
    }

    #[test]
    fn timestamp_units_round_trip_through_ms() {
        let ns = EventTimeUnit::Timestamp(TimeUnit::Nanosecond, None);
        assert_eq!(ns.to_ms(1_999_999), 1);
        assert_eq!(ns.to_ms(-1), -1);
        assert_eq!(ns.from_ms(2), 2_000_000);
        let s = EventTimeUnit::Timestamp(TimeUnit::Second, None);
        assert_eq!(s.to_ms(3), 3000);
        assert_eq!(s.from_ms(3999), 3);
        let a = ns.constant_array(5, 2);
        assert_eq!(a.data_type(), &ns.data_type());
        assert_eq!(a.len(), 2);
    }
}
