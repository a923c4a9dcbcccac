//! Nexmark events (from the `nexmark` crate, RisingWave's generator) as
//! Arrow batches for three sources, `person`, `auction` and `bid`, in the
//! order the generator produced them.
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

/// The first `events` Nexmark events (default configuration, fixed base
/// time), each table cut into batches of up to `batch_rows` rows.
pub fn generate(events: usize, batch_rows: usize) -> Events {
    let config = NexmarkConfig {
        base_time: BASE_TIME_MS,
        ..NexmarkConfig::default()
    };
    let mut builders = [Builders::new(0), Builders::new(1), Builders::new(2)];
    let mut pending = [0usize; 3];
    let mut counts = [0usize; 3];
    let mut pushes = Vec::new();
    for event in EventGenerator::new(config).take(events) {
        let table = match event {
            Event::Person(_) => 0,
            Event::Auction(_) => 1,
            Event::Bid(_) => 2,
        };
        builders[table].append(&event);
        pending[table] += 1;
        counts[table] += 1;
        if pending[table] == batch_rows {
            pushes.push((table, builders[table].finish(table)));
            pending[table] = 0;
        }
    }
    for table in 0..3 {
        if pending[table] > 0 {
            pushes.push((table, builders[table].finish(table)));
        }
    }
    Events { pushes, counts }
}
