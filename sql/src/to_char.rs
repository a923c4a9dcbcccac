//! `to_char(t, 'format')` with a literal format of fixed-width numeric
//! fields, written without `chrono`'s per-row work.
//!
//! DataFusion formats each value through arrow's display code, which
//! hands `chrono` the format string for every row: `chrono` parses it
//! again and formats into a fresh `String` before the bytes reach the
//! output, so a `to_char` costs a parse and an allocation per row
//! (Nexmark q10 formats every bid twice, q16 once). A format made only of
//! the fields below and literal text has the same width on every row
//! while the year is within 0000-9999: [`ToChar`] copies that text once
//! per row and writes the fields' digits into it.
//!
//! | specifier | field | specifier | field |
//! |---|---|---|---|
//! | `%Y` | year, 4 digits | `%H` / `%k` | hour, 00-23 / space-padded |
//! | `%C` / `%y` | century / year in century | `%I` / `%l` | hour, 01-12 / space-padded |
//! | `%m` | month, 01-12 | `%p` / `%P` | `AM`/`PM`, `am`/`pm` |
//! | `%d` / `%e` | day, 01-31 / space-padded | `%M` | minute |
//! | `%j` | day of the year, 001-366 | `%S` | second |
//! | `%F` | `%Y-%m-%d` | `%T` / `%R` | `%H:%M:%S` / `%H:%M` |
//! | `%D` | `%m/%d/%y` | `%%`, `%n`, `%t` | `%`, newline, tab |
//! | `%b` / `%h` | `Jan` ... `Dec` | `%a` | `Sun` ... `Sat` |
//! | `%u` | weekday, 1 (Monday) ... 7 | `%w` | weekday, 0 (Sunday) ... 6 |
//!
//! Covered inputs: timestamps without a time zone (any unit) and dates
//! (`DATE`, at midnight, as DataFusion formats a date with time fields).
//! A batch holding a value outside years 0000-9999 (where `chrono` adds a
//! sign and more digits) runs DataFusion's call, as do other formats
//! (full names of months or days, week numbers, fractions of seconds,
//! padding modifiers, time zones), other input types and a format that is
//! not a literal.

use std::sync::Arc;

use arrow::array::{Array, AsArray, PrimitiveArray, RecordBatch, StringArray};
use arrow::buffer::{Buffer, OffsetBuffer};
use arrow::datatypes::{
    DataType, Date32Type, Schema, TimeUnit, TimestampMicrosecondType, TimestampMillisecondType,
    TimestampNanosecondType, TimestampSecondType,
};
use datafusion::common::{Result as DfResult, ScalarValue};
use datafusion::logical_expr::ColumnarValue;
use datafusion::physical_expr::expressions::Literal;
use datafusion::physical_expr::{PhysicalExpr, ScalarFunctionExpr};

const SECONDS_PER_DAY: i64 = 86_400;
/// Days from 1970-01-01 to 0000-01-01 and to 9999-12-31: the years
/// `chrono` writes as four digits.
const FIRST_DAY: i64 = -719_528;
const LAST_DAY: i64 = 2_932_896;

/// A field of the formatted text, at a fixed place in every row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    Year,
    Century,
    YearInCentury,
    Month,
    Day,
    DaySpaced,
    DayOfYear,
    Hour,
    HourSpaced,
    Hour12,
    Hour12Spaced,
    Meridiem {
        upper: bool,
    },
    Minute,
    Second,
    /// `Jan` ... `Dec`.
    MonthName,
    /// `Sun` ... `Sat`.
    WeekdayName,
    /// `1` (Monday) ... `7` (Sunday).
    WeekdayFromMonday,
    /// `0` (Sunday) ... `6` (Saturday).
    WeekdayFromSunday,
}

impl Field {
    fn width(self) -> usize {
        match self {
            Field::Year => 4,
            Field::DayOfYear | Field::MonthName | Field::WeekdayName => 3,
            Field::WeekdayFromMonday | Field::WeekdayFromSunday => 1,
            _ => 2,
        }
    }

    fn needs_date(self) -> bool {
        matches!(
            self,
            Field::Year
                | Field::Century
                | Field::YearInCentury
                | Field::Month
                | Field::Day
                | Field::DaySpaced
                | Field::DayOfYear
                | Field::MonthName
        )
    }
}

/// A format as the text of one row with its fields' places left blank.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Template {
    text: Vec<u8>,
    fields: Vec<(usize, Field)>,
    needs_date: bool,
}

impl Template {
    /// The template of `format`, or `None` when it uses anything outside
    /// the table in the module's documentation.
    fn parse(format: &str) -> Option<Template> {
        let mut text = Vec::with_capacity(format.len() + 8);
        let mut fields = Vec::new();
        let mut place = |text: &mut Vec<u8>, field: Field| {
            fields.push((text.len(), field));
            text.resize(text.len() + field.width(), b' ');
        };
        let mut bytes = format.bytes();
        while let Some(b) = bytes.next() {
            if b != b'%' {
                text.push(b);
                continue;
            }
            let specifier = bytes.next()?;
            let composite: &[Field] = match specifier {
                b'Y' => &[Field::Year],
                b'C' => &[Field::Century],
                b'y' => &[Field::YearInCentury],
                b'm' => &[Field::Month],
                b'd' => &[Field::Day],
                b'e' => &[Field::DaySpaced],
                b'j' => &[Field::DayOfYear],
                b'H' => &[Field::Hour],
                b'k' => &[Field::HourSpaced],
                b'I' => &[Field::Hour12],
                b'l' => &[Field::Hour12Spaced],
                b'p' => &[Field::Meridiem { upper: true }],
                b'P' => &[Field::Meridiem { upper: false }],
                b'M' => &[Field::Minute],
                b'S' => &[Field::Second],
                b'b' | b'h' => &[Field::MonthName],
                b'a' => &[Field::WeekdayName],
                b'u' => &[Field::WeekdayFromMonday],
                b'w' => &[Field::WeekdayFromSunday],
                b'F' | b'T' | b'R' | b'D' => {
                    let (first, separator, rest): (Field, u8, &[Field]) = match specifier {
                        b'F' => (Field::Year, b'-', &[Field::Month, Field::Day]),
                        b'T' => (Field::Hour, b':', &[Field::Minute, Field::Second]),
                        b'R' => (Field::Hour, b':', &[Field::Minute]),
                        _ => (Field::Month, b'/', &[Field::Day, Field::YearInCentury]),
                    };
                    place(&mut text, first);
                    for &field in rest {
                        text.push(separator);
                        place(&mut text, field);
                    }
                    continue;
                }
                b'%' => {
                    text.push(b'%');
                    continue;
                }
                b'n' => {
                    text.push(b'\n');
                    continue;
                }
                b't' => {
                    text.push(b'\t');
                    continue;
                }
                _ => return None,
            };
            for &field in composite {
                place(&mut text, field);
            }
        }
        let needs_date = fields.iter().any(|(_, f)| f.needs_date());
        Some(Template {
            text,
            fields,
            needs_date,
        })
    }

    /// Appends the row for `seconds` since the epoch, whose day
    /// (`seconds` floored to days) is within [`FIRST_DAY`, `LAST_DAY`].
    #[inline]
    fn write(&self, seconds: i64, out: &mut Vec<u8>) {
        let days = seconds.div_euclid(SECONDS_PER_DAY);
        let second_of_day = seconds.rem_euclid(SECONDS_PER_DAY) as u32;
        let (year, month, day) = if self.needs_date {
            civil_from_days(days)
        } else {
            (0, 0, 0)
        };
        let hour = second_of_day / 3600;
        let start = out.len();
        out.extend_from_slice(&self.text);
        let row = &mut out[start..];
        for &(at, field) in &self.fields {
            let two = |row: &mut [u8], at: usize, value: u32, pad: u8| {
                row[at] = if value < 10 {
                    pad
                } else {
                    b'0' + (value / 10) as u8
                };
                row[at + 1] = b'0' + (value % 10) as u8;
            };
            match field {
                Field::Year => {
                    let year = year as u32;
                    row[at] = b'0' + (year / 1000) as u8;
                    row[at + 1] = b'0' + (year / 100 % 10) as u8;
                    two(row, at + 2, year % 100, b'0');
                }
                Field::Century => two(row, at, year as u32 / 100, b'0'),
                Field::YearInCentury => two(row, at, year as u32 % 100, b'0'),
                Field::Month => two(row, at, month, b'0'),
                Field::Day => two(row, at, day, b'0'),
                Field::DaySpaced => two(row, at, day, b' '),
                Field::DayOfYear => {
                    let ordinal = (days - days_from_civil(year, 1, 1) + 1) as u32;
                    row[at] = b'0' + (ordinal / 100) as u8;
                    row[at + 1] = b'0' + (ordinal / 10 % 10) as u8;
                    row[at + 2] = b'0' + (ordinal % 10) as u8;
                }
                Field::Hour => two(row, at, hour, b'0'),
                Field::HourSpaced => two(row, at, hour, b' '),
                Field::Hour12 => two(row, at, (hour + 11) % 12 + 1, b'0'),
                Field::Hour12Spaced => two(row, at, (hour + 11) % 12 + 1, b' '),
                Field::Meridiem { upper } => {
                    let text = match (hour < 12, upper) {
                        (true, true) => b"AM",
                        (false, true) => b"PM",
                        (true, false) => b"am",
                        (false, false) => b"pm",
                    };
                    row[at..at + 2].copy_from_slice(text);
                }
                Field::Minute => two(row, at, second_of_day / 60 % 60, b'0'),
                Field::Second => two(row, at, second_of_day % 60, b'0'),
                Field::MonthName => {
                    let name = &MONTHS[3 * (month as usize - 1)..][..3];
                    row[at..at + 3].copy_from_slice(name);
                }
                Field::WeekdayName => {
                    let name = &WEEKDAYS[3 * weekday_from_sunday(days) as usize..][..3];
                    row[at..at + 3].copy_from_slice(name);
                }
                Field::WeekdayFromMonday => {
                    row[at] = b'0' + ((weekday_from_sunday(days) + 6) % 7 + 1) as u8;
                }
                Field::WeekdayFromSunday => row[at] = b'0' + weekday_from_sunday(days) as u8,
            }
        }
    }
}

/// chrono's English abbreviations, three bytes each.
const MONTHS: &[u8; 36] = b"JanFebMarAprMayJunJulAugSepOctNovDec";
const WEEKDAYS: &[u8; 21] = b"SunMonTueWedThuFriSat";

/// The day of the week of `days` since 1970-01-01 (a Thursday), 0 for
/// Sunday.
fn weekday_from_sunday(days: i64) -> u32 {
    (days + 4).rem_euclid(7) as u32
}

/// Year, month and day of `days` since 1970-01-01 in the proleptic
/// Gregorian calendar (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let shifted_month = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * shifted_month + 2) / 5 + 1) as u32;
    let month = if shifted_month < 10 {
        shifted_month + 3
    } else {
        shifted_month - 9
    } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Days since 1970-01-01 of a date (the inverse of [`civil_from_days`]).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let shifted_month = i64::from((month + 9) % 12);
    let day_of_year = (153 * shifted_month + 2) / 5 + i64::from(day) - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// The input types covered, as the unit of one second in their values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Input {
    Timestamp(TimeUnit),
    Date,
}

/// A `to_char` call whose format is a [`Template`].
#[derive(Debug)]
pub struct ToChar {
    /// The call as planned: type, display, and the path for what this
    /// does not cover.
    call: Arc<dyn PhysicalExpr>,
    values: Arc<dyn PhysicalExpr>,
    input: Input,
    template: Template,
}

/// The [`ToChar`] for `node`, when it is a call this covers.
pub(crate) fn to_char_of(node: &Arc<dyn PhysicalExpr>, schema: &Schema) -> Option<ToChar> {
    let call = node.as_ref().downcast_ref::<ScalarFunctionExpr>()?;
    if call.name() != "to_char" {
        return None;
    }
    let [values, format] = call.args() else {
        return None;
    };
    let format = match format.as_ref().downcast_ref::<Literal>()?.value() {
        ScalarValue::Utf8(Some(format)) | ScalarValue::Utf8View(Some(format)) => format,
        _ => return None,
    };
    let input = match values.data_type(schema).ok()? {
        DataType::Timestamp(unit, None) => Input::Timestamp(unit),
        DataType::Date32 => Input::Date,
        _ => return None,
    };
    Some(ToChar {
        call: Arc::clone(node),
        values: Arc::clone(values),
        input,
        template: Template::parse(format)?,
    })
}

impl ToChar {
    /// The formatted values, or `None` when one lies outside the years
    /// the template covers.
    fn format<T, F>(&self, values: &PrimitiveArray<T>, seconds_of: F) -> Option<StringArray>
    where
        T: arrow::datatypes::ArrowPrimitiveType<Native = i64>,
        F: Fn(i64) -> i64,
    {
        let rows = values.len();
        let mut bytes = Vec::with_capacity(rows * self.template.text.len());
        let mut offsets = Vec::with_capacity(rows + 1);
        offsets.push(0i32);
        let first_second = FIRST_DAY * SECONDS_PER_DAY;
        let last_second = (LAST_DAY + 1) * SECONDS_PER_DAY - 1;
        for (row, &value) in values.values().iter().enumerate() {
            if values.is_valid(row) {
                let seconds = seconds_of(value);
                if !(first_second..=last_second).contains(&seconds) {
                    return None;
                }
                self.template.write(seconds, &mut bytes);
            }
            offsets.push(i32::try_from(bytes.len()).ok()?);
        }
        StringArray::try_new(
            OffsetBuffer::new(offsets.into()),
            Buffer::from_vec(bytes),
            values.nulls().cloned(),
        )
        .ok()
    }

    fn evaluate_array(&self, values: &dyn Array) -> Option<StringArray> {
        match self.input {
            Input::Timestamp(unit) => {
                let per_second = match unit {
                    TimeUnit::Second => 1,
                    TimeUnit::Millisecond => 1_000,
                    TimeUnit::Microsecond => 1_000_000,
                    TimeUnit::Nanosecond => 1_000_000_000,
                };
                let seconds = |v: i64| v.div_euclid(per_second);
                match unit {
                    TimeUnit::Second => {
                        self.format(values.as_primitive_opt::<TimestampSecondType>()?, seconds)
                    }
                    TimeUnit::Millisecond => self.format(
                        values.as_primitive_opt::<TimestampMillisecondType>()?,
                        seconds,
                    ),
                    TimeUnit::Microsecond => self.format(
                        values.as_primitive_opt::<TimestampMicrosecondType>()?,
                        seconds,
                    ),
                    TimeUnit::Nanosecond => self.format(
                        values.as_primitive_opt::<TimestampNanosecondType>()?,
                        seconds,
                    ),
                }
            }
            Input::Date => {
                let days = values.as_primitive_opt::<Date32Type>()?;
                // Date32 is i32: widen once per batch, into days' seconds.
                let widened: PrimitiveArray<TimestampSecondType> =
                    days.unary(|d| i64::from(d) * SECONDS_PER_DAY);
                self.format(&widened, |s| s)
            }
        }
    }
}

like_its_call!(ToChar);

impl PhysicalExpr for ToChar {
    call_methods!();

    fn evaluate(&self, batch: &RecordBatch) -> DfResult<ColumnarValue> {
        let ColumnarValue::Array(values) = self.values.evaluate(batch)? else {
            return self.call.evaluate(batch);
        };
        match self.evaluate_array(values.as_ref()) {
            Some(formatted) => Ok(ColumnarValue::Array(Arc::new(formatted))),
            None => self.call.evaluate(batch),
        }
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn PhysicalExpr>>,
    ) -> DfResult<Arc<dyn PhysicalExpr>> {
        let rebuilt = crate::specialized::rebuilt(&self.call, children, |call, values| {
            Arc::new(ToChar {
                call,
                values,
                input: self.input,
                template: self.template.clone(),
            })
        });
        Ok(rebuilt.unwrap_or(self))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::physical;
    use arrow::array::{ArrayRef, Date32Array, Int64Array};
    use arrow::datatypes::Field as ArrowField;

    /// Every covered specifier, alone and combined, against DataFusion's
    /// answer, over values around the edges of days, months, leap years,
    /// the epoch and the covered years.
    #[test]
    fn formats_give_datafusions_answers() {
        let formats = [
            "%Y-%m-%d",
            "%H:%M",
            "%Y",
            "%C",
            "%y",
            "%m",
            "%d",
            "%e",
            "%j",
            "%H",
            "%k",
            "%I",
            "%l",
            "%p",
            "%P",
            "%M",
            "%S",
            "%F",
            "%T",
            "%R",
            "%D",
            "%%",
            "%n",
            "%t",
            "%b",
            "%h",
            "%a",
            "%u",
            "%w",
            "%a %d %b %Y",
            "day %j of %Y, %I:%M:%S %p (%e/%m) ok%%",
            "日付 %F — %T",
            "",
            "plain text",
        ];
        let seconds: Vec<i64> = vec![
            0,
            -1,
            59,
            3_599,
            43_199,
            43_200,
            86_399,
            86_400,
            951_782_400,     // 2000-02-29
            951_868_799,     // 2000-02-29 23:59:59
            1_709_251_199,   // 2024-02-29 23:59:59
            4_107_542_400,   // 2100-03-01
            -2_208_988_800,  // 1900-01-01
            -62_167_219_200, // 0000-01-01
            253_402_300_799, // 9999-12-31 23:59:59
            1_700_000_123,
        ];
        let schema = |t: DataType| Schema::new(vec![ArrowField::new("t", t, true)]);
        let mut cases: Vec<(Schema, ArrayRef)> = Vec::new();
        let with_null = |v: &[i64], scale: i64| -> Vec<Option<i64>> {
            v.iter()
                .map(|s| s.checked_mul(scale))
                .map(|s| Some(s.unwrap_or(0)))
                .chain([None])
                .collect()
        };
        for (unit, scale) in [
            (TimeUnit::Second, 1),
            (TimeUnit::Millisecond, 1_000),
            (TimeUnit::Microsecond, 1_000_000),
        ] {
            let values = Int64Array::from(with_null(&seconds, scale));
            let array = arrow::compute::cast(&values, &DataType::Timestamp(unit, None)).unwrap();
            cases.push((schema(DataType::Timestamp(unit, None)), array));
        }
        // Nanoseconds cover 1677-2262, and a value off the second.
        let in_range: Vec<i64> = seconds
            .iter()
            .copied()
            .filter(|s| s.abs() < 9_000_000_000)
            .collect();
        let mut nanos = with_null(&in_range, 1_000_000_000);
        nanos.push(Some(-1));
        nanos.push(Some(1_700_000_123_999_999_999));
        let nanos = Int64Array::from(nanos);
        let nanosecond = DataType::Timestamp(TimeUnit::Nanosecond, None);
        cases.push((
            schema(nanosecond.clone()),
            arrow::compute::cast(&nanos, &nanosecond).unwrap(),
        ));
        let days: Vec<Option<i32>> = seconds
            .iter()
            .map(|s| Some(s.div_euclid(SECONDS_PER_DAY) as i32))
            .chain([None])
            .collect();
        cases.push((schema(DataType::Date32), Arc::new(Date32Array::from(days))));

        for (schema, array) in cases {
            let batch = RecordBatch::try_new(Arc::new(schema.clone()), vec![array]).unwrap();
            for format in formats {
                let sql = format!("to_char(t, '{format}')");
                let plain = physical(&sql, &schema);
                let fast = to_char_of(&plain, &schema)
                    .unwrap_or_else(|| panic!("{sql} over {schema:?} is covered"));
                let want = plain.evaluate(&batch).unwrap().into_array(1).unwrap();
                let got = fast.evaluate(&batch).unwrap().into_array(1).unwrap();
                assert_eq!(
                    got.as_ref(),
                    want.as_ref(),
                    "{sql} over {:?}",
                    schema.field(0)
                );
                assert!(
                    fast.evaluate_array(batch.column(0)).is_some(),
                    "{sql} ran here"
                );
            }
        }
    }

    #[test]
    fn years_past_four_digits_run_datafusions_call() {
        let schema = Schema::new(vec![ArrowField::new(
            "t",
            DataType::Timestamp(TimeUnit::Second, None),
            true,
        )]);
        for outside in [-62_167_219_201, 253_402_300_800] {
            let values = Int64Array::from(vec![0, outside]);
            let array = arrow::compute::cast(&values, &DataType::Timestamp(TimeUnit::Second, None))
                .unwrap();
            let batch = RecordBatch::try_new(Arc::new(schema.clone()), vec![array]).unwrap();
            let plain = physical("to_char(t, '%Y-%m-%d')", &schema);
            let fast = to_char_of(&plain, &schema).unwrap();
            assert!(fast.evaluate_array(batch.column(0)).is_none());
            let want = plain.evaluate(&batch).unwrap().into_array(2).unwrap();
            let got = fast.evaluate(&batch).unwrap().into_array(2).unwrap();
            assert_eq!(got.as_ref(), want.as_ref());
        }
    }

    #[test]
    fn other_formats_and_types_stay_datafusions() {
        let schema = Schema::new(vec![
            ArrowField::new("t", DataType::Timestamp(TimeUnit::Millisecond, None), true),
            ArrowField::new(
                "z",
                DataType::Timestamp(TimeUnit::Millisecond, Some("+02:00".into())),
                true,
            ),
            ArrowField::new("f", DataType::Utf8, true),
        ]);
        for sql in [
            "to_char(t, '%B %d')",
            "to_char(t, '%A')",
            "to_char(t, '%U')",
            "to_char(t, '%-d')",
            "to_char(t, '%.3f')",
            "to_char(t, '%Z')",
            "to_char(t, '100%')",
            "to_char(t, f)",
            "to_char(z, '%Y')",
        ] {
            assert!(
                to_char_of(&physical(sql, &schema), &schema).is_none(),
                "{sql}"
            );
        }
        let alias = physical("date_format(t, '%F')", &schema);
        assert!(to_char_of(&alias, &schema).is_some(), "to_char's alias");
    }

    /// Dates across the covered years, against DataFusion's `%F %j`.
    #[test]
    fn calendar_conversions_match_datafusion() {
        let days: Vec<i32> = (FIRST_DAY..=LAST_DAY)
            .step_by(97)
            .chain([FIRST_DAY, LAST_DAY, 0, -1])
            .map(|d| d as i32)
            .collect();
        for &d in &days {
            let (year, month, day) = civil_from_days(i64::from(d));
            assert_eq!(days_from_civil(year, month, day), i64::from(d));
        }
        let schema = Schema::new(vec![ArrowField::new("t", DataType::Date32, true)]);
        let array: ArrayRef = Arc::new(Date32Array::from(days));
        let batch = RecordBatch::try_new(Arc::new(schema.clone()), vec![array]).unwrap();
        let plain = physical("to_char(t, '%F %j %a %b %u %w')", &schema);
        let fast = to_char_of(&plain, &schema).unwrap();
        let rows = batch.num_rows();
        let want = plain.evaluate(&batch).unwrap().into_array(rows).unwrap();
        let got = fast.evaluate(&batch).unwrap().into_array(rows).unwrap();
        assert_eq!(got.as_ref(), want.as_ref());
    }
}
