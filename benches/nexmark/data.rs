//! Nexmark events (the `nexmark` crate's, RisingWave's generator) as
//! Arrow batches for three sources, `person`, `auction` and `bid`, in the
//! order the generator produces them; [`Partition`] is also the
//! generator a shard runs (`LaminarDB::generate`).
//!
//! Shared by the Nexmark bench (`benches/nexmark/main.rs`) and its
//! correctness test (`tests/nexmark.rs`).

#![allow(dead_code)]

use std::sync::Arc;

use datafusion::arrow::array::{
    ArrayRef, Int64Builder, RecordBatch, StringBuilder, TimestampNanosecondBuilder,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use nexmark::config::NexmarkConfig;
use nexmark::event::Event;
use nexmark::EventGenerator;

use super::columns::{Columns, Maker};

/// The three sources, with the 4-second out-of-orderness bound the
/// RisingWave and Flink Nexmark setups use.
pub const DDL: &str = "
CREATE SOURCE person (id BIGINT NOT NULL, name VARCHAR NOT NULL, email_address VARCHAR NOT NULL,
    credit_card VARCHAR NOT NULL, city VARCHAR NOT NULL, state VARCHAR NOT NULL,
    date_time TIMESTAMP NOT NULL, extra VARCHAR NOT NULL,
    WATERMARK FOR date_time AS date_time - INTERVAL '4' SECOND);
CREATE SOURCE auction (id BIGINT NOT NULL, item_name VARCHAR NOT NULL, description VARCHAR NOT NULL,
    initial_bid BIGINT NOT NULL, reserve BIGINT NOT NULL, date_time TIMESTAMP NOT NULL,
    expires TIMESTAMP NOT NULL, seller BIGINT NOT NULL, category BIGINT NOT NULL,
    extra VARCHAR NOT NULL,
    WATERMARK FOR date_time AS date_time - INTERVAL '4' SECOND);
CREATE SOURCE bid (auction BIGINT NOT NULL, bidder BIGINT NOT NULL, price BIGINT NOT NULL,
    channel VARCHAR NOT NULL, url VARCHAR NOT NULL, date_time TIMESTAMP NOT NULL,
    extra VARCHAR NOT NULL,
    WATERMARK FOR date_time AS date_time - INTERVAL '4' SECOND);
";

/// Source names, in [`Table`] order.
pub const TABLES: [&str; 3] = ["person", "auction", "bid"];

/// Which source a batch goes to (an index into [`TABLES`]).
pub type Table = usize;

/// The generator's first event time: fixed, so runs are repeatable.
pub const BASE_TIME_MS: u64 = 1_700_000_000_000;

pub fn schema(table: Table) -> SchemaRef {
    // Built once: a batch per call would otherwise build its schema anew.
    static SCHEMAS: std::sync::OnceLock<[SchemaRef; 3]> = std::sync::OnceLock::new();
    Arc::clone(&SCHEMAS.get_or_init(|| [0, 1, 2].map(build_schema))[table])
}

fn build_schema(table: Table) -> SchemaRef {
    let text = |name: &str| Field::new(name, DataType::Utf8, false);
    let int = |name: &str| Field::new(name, DataType::Int64, false);
    let time =
        |name: &str| Field::new(name, DataType::Timestamp(TimeUnit::Nanosecond, None), false);
    Arc::new(Schema::new(match table {
        0 => vec![
            int("id"),
            text("name"),
            text("email_address"),
            text("credit_card"),
            text("city"),
            text("state"),
            time("date_time"),
            text("extra"),
        ],
        1 => vec![
            int("id"),
            text("item_name"),
            text("description"),
            int("initial_bid"),
            int("reserve"),
            time("date_time"),
            time("expires"),
            int("seller"),
            int("category"),
            text("extra"),
        ],
        _ => vec![
            int("auction"),
            int("bidder"),
            int("price"),
            text("channel"),
            text("url"),
            time("date_time"),
            text("extra"),
        ],
    }))
}

/// Generated events: the batches in push order, and every table's rows.
pub struct Events {
    /// `(table, batch)` in the order the generator made their last rows.
    pub pushes: Vec<(Table, RecordBatch)>,
    /// Events per table.
    pub counts: [usize; 3],
}

impl Events {
    /// All batches of one table, for a batch query.
    pub fn table(&self, table: Table) -> Vec<RecordBatch> {
        self.pushes
            .iter()
            .filter(|(t, _)| *t == table)
            .map(|(_, b)| b.clone())
            .collect()
    }

    pub fn total(&self) -> usize {
        self.counts.iter().sum()
    }
}

/// Column builders of one table. Three live while events are generated,
/// so their sizes do not matter.
#[allow(clippy::large_enum_variant)]
enum Builders {
    Person {
        id: Int64Builder,
        text: [StringBuilder; 5],
        date_time: TimestampNanosecondBuilder,
        extra: StringBuilder,
    },
    Auction {
        ints: [Int64Builder; 3],
        text: [StringBuilder; 2],
        times: [TimestampNanosecondBuilder; 2],
        tail: [Int64Builder; 2],
        extra: StringBuilder,
    },
    Bid {
        ints: [Int64Builder; 3],
        text: [StringBuilder; 2],
        date_time: TimestampNanosecondBuilder,
        extra: StringBuilder,
    },
}

fn nanos(ms: u64) -> i64 {
    ms as i64 * 1_000_000
}

impl Builders {
    fn new(table: Table) -> Self {
        match table {
            0 => Builders::Person {
                id: Int64Builder::new(),
                text: Default::default(),
                date_time: TimestampNanosecondBuilder::new(),
                extra: StringBuilder::new(),
            },
            1 => Builders::Auction {
                ints: Default::default(),
                text: Default::default(),
                times: Default::default(),
                tail: Default::default(),
                extra: StringBuilder::new(),
            },
            _ => Builders::Bid {
                ints: Default::default(),
                text: Default::default(),
                date_time: TimestampNanosecondBuilder::new(),
                extra: StringBuilder::new(),
            },
        }
    }

    fn append(&mut self, event: &Event) {
        match (self, event) {
            (
                Builders::Person {
                    id,
                    text,
                    date_time,
                    extra,
                },
                Event::Person(p),
            ) => {
                id.append_value(p.id as i64);
                for (builder, value) in text.iter_mut().zip([
                    &p.name,
                    &p.email_address,
                    &p.credit_card,
                    &p.city,
                    &p.state,
                ]) {
                    builder.append_value(value);
                }
                date_time.append_value(nanos(p.date_time));
                extra.append_value(&p.extra);
            }
            (
                Builders::Auction {
                    ints,
                    text,
                    times,
                    tail,
                    extra,
                },
                Event::Auction(a),
            ) => {
                ints[0].append_value(a.id as i64);
                text[0].append_value(&a.item_name);
                text[1].append_value(&a.description);
                ints[1].append_value(a.initial_bid as i64);
                ints[2].append_value(a.reserve as i64);
                times[0].append_value(nanos(a.date_time));
                times[1].append_value(nanos(a.expires));
                tail[0].append_value(a.seller as i64);
                tail[1].append_value(a.category as i64);
                extra.append_value(&a.extra);
            }
            (
                Builders::Bid {
                    ints,
                    text,
                    date_time,
                    extra,
                },
                Event::Bid(b),
            ) => {
                for (builder, value) in ints.iter_mut().zip([b.auction, b.bidder, b.price]) {
                    builder.append_value(value as i64);
                }
                text[0].append_value(&b.channel);
                text[1].append_value(&b.url);
                date_time.append_value(nanos(b.date_time));
                extra.append_value(&b.extra);
            }
            _ => unreachable!("events go to their table's builders"),
        }
    }

    fn finish(&mut self, table: Table) -> RecordBatch {
        let columns: Vec<ArrayRef> = match self {
            Builders::Person {
                id,
                text,
                date_time,
                extra,
            } => {
                let mut columns: Vec<ArrayRef> = vec![Arc::new(id.finish())];
                columns.extend(text.iter_mut().map(|b| Arc::new(b.finish()) as ArrayRef));
                columns.push(Arc::new(date_time.finish()));
                columns.push(Arc::new(extra.finish()));
                columns
            }
            Builders::Auction {
                ints,
                text,
                times,
                tail,
                extra,
            } => vec![
                Arc::new(ints[0].finish()),
                Arc::new(text[0].finish()),
                Arc::new(text[1].finish()),
                Arc::new(ints[1].finish()),
                Arc::new(ints[2].finish()),
                Arc::new(times[0].finish()),
                Arc::new(times[1].finish()),
                Arc::new(tail[0].finish()),
                Arc::new(tail[1].finish()),
                Arc::new(extra.finish()),
            ],
            Builders::Bid {
                ints,
                text,
                date_time,
                extra,
            } => {
                let mut columns: Vec<ArrayRef> = ints
                    .iter_mut()
                    .map(|b| Arc::new(b.finish()) as ArrayRef)
                    .collect();
                columns.push(Arc::new(text[0].finish()));
                columns.push(Arc::new(text[1].finish()));
                columns.push(Arc::new(date_time.finish()));
                columns.push(Arc::new(extra.finish()));
                columns
            }
        };
        RecordBatch::try_new(schema(table), columns).expect("columns match the schema")
    }
}

/// The generator's configuration: the default one with a fixed base time.
fn config() -> NexmarkConfig {
    NexmarkConfig {
        base_time: BASE_TIME_MS,
        ..NexmarkConfig::default()
    }
}

/// Partition `k` of `n` of the first `events` Nexmark events: the events
/// whose number is `k` modulo `n`, in generation order, each table cut
/// into batches of up to `batch_rows` rows. A batch is handed out when it
/// is full (and the rest at the end), so batches come in the order their
/// last rows were made. Made straight into columns (`columns.rs`).
pub struct Partition {
    maker: Maker,
    columns: Columns,
    first_event_number: usize,
    /// The next event's offset among all events.
    next: usize,
    step: usize,
    end: usize,
    batch_rows: usize,
    /// Tables whose last rows were handed out at the end.
    flushed: usize,
}

impl Partition {
    pub fn new(events: usize, batch_rows: usize, k: usize, n: usize) -> Self {
        let config = config();
        Self {
            first_event_number: config.first_event_number,
            maker: Maker::new(config),
            columns: Columns::default(),
            next: k,
            step: n,
            end: events,
            batch_rows,
            flushed: 0,
        }
    }
}

impl laminar_db::Generator for Partition {
    fn next_batch(&mut self) -> Option<(Table, RecordBatch)> {
        while self.next < self.end {
            let event_number = self.first_event_number + self.next;
            self.next += self.step;
            let table = self.columns.append(&self.maker, event_number);
            if self.columns.rows(table) == self.batch_rows {
                return Some((table, self.columns.finish(&self.maker, table)));
            }
        }
        while self.flushed < 3 {
            let table = self.flushed;
            self.flushed += 1;
            if self.columns.rows(table) > 0 {
                return Some((table, self.columns.finish(&self.maker, table)));
            }
        }
        None
    }
}

/// The first `events` Nexmark events (default configuration, fixed base
/// time), each table cut into batches of up to `batch_rows` rows.
pub fn generate(events: usize, batch_rows: usize) -> Events {
    generate_partition(events, batch_rows, 0, 1)
}

/// What [`Partition`] `k` of `n` hands out, all at once.
pub fn generate_partition(events: usize, batch_rows: usize, k: usize, n: usize) -> Events {
    use laminar_db::Generator;
    let mut partition = Partition::new(events, batch_rows, k, n);
    let mut counts = [0usize; 3];
    let mut pushes = Vec::new();
    while let Some((table, batch)) = partition.next_batch() {
        counts[table] += batch.num_rows();
        pushes.push((table, batch));
    }
    Events { pushes, counts }
}

/// Partition `k` of `n` of the first `events` events as the `nexmark`
/// crate makes them (its `Event`s, then Arrow builders), cut as
/// [`Partition`] cuts them: what `columns.rs` must reproduce.
pub fn crate_events(events: usize, batch_rows: usize, k: usize, n: usize) -> Events {
    let mut counts = [0usize; 3];
    let mut pushes = Vec::new();
    crate_batches(events, batch_rows, k, n, |table, batch| {
        counts[table] += batch.num_rows();
        pushes.push((table, batch));
    });
    Events { pushes, counts }
}

/// [`crate_events`], each batch handed to `each` as it is made.
pub fn crate_batches(
    events: usize,
    batch_rows: usize,
    k: usize,
    n: usize,
    mut each: impl FnMut(Table, RecordBatch),
) {
    let mut builders = [Builders::new(0), Builders::new(1), Builders::new(2)];
    let mut pending = [0usize; 3];
    let generator = EventGenerator::new(config())
        .with_offset(k as u64)
        .with_step(n as u64);
    for event in generator.take(events.saturating_sub(k).div_ceil(n)) {
        let table = match event {
            Event::Person(_) => 0,
            Event::Auction(_) => 1,
            Event::Bid(_) => 2,
        };
        builders[table].append(&event);
        pending[table] += 1;
        if pending[table] == batch_rows {
            each(table, builders[table].finish(table));
            pending[table] = 0;
        }
    }
    for table in 0..3 {
        if pending[table] > 0 {
            each(table, builders[table].finish(table));
        }
    }
}
