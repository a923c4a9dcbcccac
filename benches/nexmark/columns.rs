//! Nexmark events made straight into Arrow columns: the `nexmark` crate's
//! generator (0.2, default configuration), step for step, with the same
//! random number generator and draws, so the rows are the crate's rows
//! (`tests/nexmark.rs` compares them field by field), but with no `String`
//! or `Event` per row: text is drawn into the columns' value buffers.
//! That, and drawing letters without a division each, makes an event
//! several times cheaper than the crate's path (the crate, then Arrow
//! builders), which matters once the events are made on the cores that
//! process them.
//!
//! Only what the default configuration uses is here: one event rate (so
//! event time is linear in the event number) and events in order
//! (`out_of_order_group_size` 1). [`Maker::new`] refuses anything else.

use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, Int64Array, RecordBatch, StringArray};
use datafusion::arrow::buffer::{Buffer, OffsetBuffer, ScalarBuffer};
use nexmark::config::NexmarkConfig;
use rand08::rngs::SmallRng;
use rand08::seq::SliceRandom;
use rand08::{Rng, RngCore, SeedableRng};

use super::data::{schema, Table};

const HOT_RATIO: usize = 100;
const CHANNELS: usize = 10_000;

/// The crate's derived configuration, for the default rate shape.
pub struct Maker {
    cfg: NexmarkConfig,
    proportion: usize,
    /// Microseconds between events (`us_per_unit / rate * generators`).
    inter_event_delay_us: f32,
    /// The crate's channel table, `(channel, url)` pairs, as `(start,
    /// channel length, url length)` into `channel_bytes`, where each
    /// channel is followed by its URL: a lookup reads one place, not a
    /// pair of strings scattered on the heap (a cache miss each).
    channel_index: Vec<(u32, u16, u16)>,
    channel_bytes: String,
}

impl Maker {
    pub fn new(cfg: NexmarkConfig) -> Self {
        assert_eq!(cfg.first_rate, cfg.next_rate, "one event rate");
        assert_eq!(cfg.out_of_order_group_size, 1, "events in order");
        let proportion = cfg.person_proportion + cfg.auction_proportion + cfg.bid_proportion;
        let inter_event_delay_us =
            cfg.us_per_unit as f32 / cfg.first_rate as f32 * cfg.num_event_generators as f32;
        let mut channel_index = Vec::with_capacity(CHANNELS);
        let mut channel_bytes = String::new();
        for (channel, url) in (0..CHANNELS).map(channel_url) {
            channel_index.push((
                channel_bytes.len() as u32,
                channel.len() as u16,
                url.len() as u16,
            ));
            channel_bytes.push_str(&channel);
            channel_bytes.push_str(&url);
        }
        Self {
            cfg,
            proportion,
            inter_event_delay_us,
            channel_index,
            channel_bytes,
        }
    }

    fn timestamp(&self, event_number: usize) -> u64 {
        self.cfg.base_time
            + ((event_number as f32 * self.inter_event_delay_us) / 1000.0).round() as u64
    }

    /// Which table event `event_number` belongs to.
    pub fn table(&self, event_number: usize) -> Table {
        let rem = event_number % self.proportion;
        if rem < self.cfg.person_proportion {
            0
        } else if rem < self.cfg.person_proportion + self.cfg.auction_proportion {
            1
        } else {
            2
        }
    }

    fn person_last_id(&self, event_id: usize) -> usize {
        let epoch = event_id / self.proportion;
        let offset = (event_id % self.proportion).min(self.cfg.person_proportion - 1);
        epoch * self.cfg.person_proportion + offset
    }

    fn person_next_id(&self, event_id: usize, rng: &mut Xoshiro) -> usize {
        let people = self.person_last_id(event_id) + 1;
        let active = people.min(self.cfg.active_people);
        people - active + rng.gen_range(0..active + self.cfg.person_id_lead)
    }

    fn auction_last_id(&self, event_id: usize) -> usize {
        let mut epoch = event_id / self.proportion;
        let mut offset = event_id % self.proportion;
        let cfg = &self.cfg;
        if offset < cfg.person_proportion {
            epoch -= 1;
            offset = cfg.auction_proportion - 1;
        } else if cfg.person_proportion + cfg.auction_proportion <= offset {
            offset = cfg.auction_proportion - 1;
        } else {
            offset -= cfg.person_proportion;
        }
        epoch * cfg.auction_proportion + offset
    }

    fn auction_next_id(&self, event_id: usize, rng: &mut Xoshiro) -> usize {
        let max_auction = self.auction_last_id(event_id);
        let min_auction = max_auction.saturating_sub(self.cfg.in_flight_auctions);
        min_auction + rng.gen_range(0..max_auction - min_auction + 1 + self.cfg.auction_id_lead)
    }
}

/// A text column under construction: offsets and bytes. Every value
/// is UTF-8 by construction (whole `str`s, ASCII letters and
/// punctuation), so [`Text::finish`] skips the check.
#[derive(Default)]
struct Text {
    offsets: Vec<i32>,
    bytes: Vec<u8>,
    /// Letters still to draw: the generator as it stood, where they go
    /// and how many (see [`Text::extra`]).
    deferred: Vec<(Xoshiro, usize, usize)>,
}

impl Text {
    fn push(&mut self, value: &str) {
        self.bytes.extend_from_slice(value.as_bytes());
        self.end();
    }

    fn end(&mut self) {
        if self.offsets.is_empty() {
            self.offsets.push(0);
        }
        self.offsets.push(self.bytes.len() as i32);
    }

    /// `length` letters, as the crate's `gen_exact_string`.
    fn letters(&mut self, rng: &mut Xoshiro, length: usize) {
        self.bytes.extend((0..length).map(|_| letter(rng)));
    }

    /// The crate's `gen_next_extra`: filler up to an average row size.
    /// It is an event's last draw, so its letters can wait: the space is
    /// reserved now and [`Text::finish`] draws the letters of eight events
    /// at a time, one generator per lane (see [`fill_letters`]).
    fn extra(&mut self, rng: &mut Xoshiro, current_size: usize, average_size: usize) {
        if current_size <= average_size {
            let desired = average_size - current_size;
            let delta = (desired + 2) / 5;
            let size = desired - delta
                + if delta == 0 {
                    0
                } else {
                    rng.gen_range(0..2 * delta)
                };
            let start = self.bytes.len();
            self.bytes.resize(start + size, 0);
            self.deferred.push((*rng, start, size));
        }
        self.end();
    }

    fn finish(&mut self) -> ArrayRef {
        if self.offsets.is_empty() {
            self.offsets.push(0);
        }
        fill_letters(&mut self.bytes, &self.deferred);
        self.deferred.clear();
        let offsets = OffsetBuffer::new(ScalarBuffer::from(refill(&mut self.offsets)));
        debug_assert!(std::str::from_utf8(&self.bytes).is_ok());
        let bytes = Buffer::from_vec(refill(&mut self.bytes));
        // SAFETY: the offsets rise from 0 to the bytes' length (`end`
        // pushes each value's end), and the values are UTF-8: `push` takes
        // `str`s, the rest is ASCII (letters, ' ', '@'). Checking them
        // again cost about 3% of making the events (1.04x without it,
        // 20 alternated runs).
        Arc::new(unsafe { StringArray::new_unchecked(offsets, bytes, None) })
    }
}

/// Takes a column's values, leaving room for as many in the next batch:
/// growing each batch's buffers from empty again copied them several
/// times over.
fn refill<T>(values: &mut Vec<T>) -> Vec<T> {
    std::mem::replace(values, Vec::with_capacity(values.len()))
}

fn ints(values: &mut Vec<i64>) -> ArrayRef {
    Arc::new(Int64Array::from(refill(values)))
}

fn times(values: &mut Vec<i64>) -> ArrayRef {
    Arc::new(datafusion::arrow::array::TimestampNanosecondArray::from(
        refill(values),
    ))
}

fn nanos(ms: u64) -> i64 {
    ms as i64 * 1_000_000
}

/// `rng.gen_range(b'a'..=b'z')`, as rand 0.8 draws it (a 32-bit draw
/// scaled by 26, rejected in the zone that would bias it), with the zone a
/// constant: rand computes it with a division on every call, which was
/// most of the crate's cost per event (about 70 letters per bid).
#[inline(always)]
pub fn letter(rng: &mut Xoshiro) -> u8 {
    const RANGE: u32 = 26;
    const ZONE: u32 = u32::MAX - (u32::MAX - RANGE + 1) % RANGE;
    loop {
        let wide = u64::from(rng.next_u32()) * u64::from(RANGE);
        if wide as u32 <= ZONE {
            return b'a' + (wide >> 32) as u8;
        }
    }
}

/// rand 0.8's `SmallRng` as `SmallRng::seed_from_u64` makes it (xoshiro256++
/// seeded through rand_core's PCG32 fill, since `SmallRng` keeps the
/// default `seed_from_u64`), with its state in the open so that an event's
/// last draws can be made later, eight events at a time. `rand`'s
/// distributions (`gen_range`, `gen`, `choose`) run on it unchanged.
#[derive(Clone, Copy)]
pub struct Xoshiro(pub [u64; 4]);

impl Xoshiro {
    pub fn seed_from_u64(mut state: u64) -> Self {
        const MUL: u64 = 6364136223846793005;
        const INC: u64 = 11634580027462260723;
        let mut pcg32 = || {
            state = state.wrapping_mul(MUL).wrapping_add(INC);
            let xorshifted = (((state >> 18) ^ state) >> 27) as u32;
            u64::from(xorshifted.rotate_right((state >> 59) as u32))
        };
        let words: [u64; 4] = std::array::from_fn(|_| pcg32() | (pcg32() << 32));
        if words == [0; 4] {
            // xoshiro's own answer to an all-zero seed.
            return Self(splitmix_seed(0));
        }
        Self(words)
    }
}

/// Xoshiro256PlusPlus::seed_from_u64 (SplitMix64), for an all-zero seed.
fn splitmix_seed(mut state: u64) -> [u64; 4] {
    const PHI: u64 = 0x9e3779b97f4a7c15;
    std::array::from_fn(|_| {
        state = state.wrapping_add(PHI);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58476d1ce4e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d049bb133111eb);
        z ^ (z >> 31)
    })
}

impl RngCore for Xoshiro {
    #[inline(always)]
    fn next_u32(&mut self) -> u32 {
        (self.next_u64() >> 32) as u32
    }

    #[inline(always)]
    fn next_u64(&mut self) -> u64 {
        let s = &mut self.0;
        let result = s[0].wrapping_add(s[3]).rotate_left(23).wrapping_add(s[0]);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }

    /// rand_core's `fill_bytes_via_next` (no draw made here uses it).
    fn fill_bytes(&mut self, dest: &mut [u8]) {
        let mut chunks = dest.chunks_exact_mut(8);
        for chunk in &mut chunks {
            chunk.copy_from_slice(&self.next_u64().to_le_bytes());
        }
        let rest = chunks.into_remainder();
        if rest.len() > 4 {
            rest.copy_from_slice(&self.next_u64().to_le_bytes()[..rest.len()]);
        } else if !rest.is_empty() {
            rest.copy_from_slice(&self.next_u32().to_le_bytes()[..rest.len()]);
        }
    }

    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand08::Error> {
        self.fill_bytes(dest);
        Ok(())
    }
}

/// Letters `[start, start + length)` of `bytes` for each deferred job,
/// drawn as [`letter`] draws them from the job's generator: eight jobs at
/// a time with AVX-512 where the CPU has it, one by one otherwise.
pub fn fill_letters(bytes: &mut [u8], jobs: &[(Xoshiro, usize, usize)]) {
    let mut rest = jobs;
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        let mut groups = jobs.chunks_exact(LANES);
        for group in &mut groups {
            let group: &[(Xoshiro, usize, usize); LANES] = group.try_into().expect("LANES jobs");
            // SAFETY: the CPU has AVX-512F, checked above.
            unsafe { fill_lanes_avx512(bytes, group) };
        }
        rest = groups.remainder();
    }
    for (rng, start, length) in rest {
        let mut rng = *rng;
        for byte in &mut bytes[*start..start + length] {
            *byte = letter(&mut rng);
        }
    }
}

pub const LANES: usize = 8;

/// Eight jobs side by side, one xoshiro256++ per 64-bit lane: a step of
/// all eight generators is a dozen vector instructions, where one step of
/// one costs about as many scalar ones (and the steps of one generator
/// cannot overlap). A draw that [`letter`] would reject (22 values in
/// 2^32) is redrawn on its own lane, as [`letter`] does.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn fill_lanes_avx512(bytes: &mut [u8], jobs: &[(Xoshiro, usize, usize); LANES]) {
    use std::arch::x86_64::*;
    const RANGE: i64 = 26;
    const ZONE: i64 = (u32::MAX - (u32::MAX - 26 + 1) % 26) as i64;
    let load = |k: usize| -> __m512i {
        let words: [u64; LANES] = std::array::from_fn(|l| jobs[l].0 .0[k]);
        // SAFETY: reads 64 bytes from a 64-byte array.
        unsafe { _mm512_loadu_si512(words.as_ptr().cast()) }
    };
    let (mut s0, mut s1, mut s2, mut s3) = (load(0), load(1), load(2), load(3));
    let range = _mm512_set1_epi64(RANGE);
    let low_half = _mm512_set1_epi64(0xffff_ffff);
    let zone = _mm512_set1_epi64(ZONE);
    let longest = jobs.iter().map(|j| j.2).max().unwrap_or(0);
    let letter_a = _mm512_set1_epi64(i64::from(b'a'));
    // Eight letters per lane gather in a word (letter `j` of the word in
    // byte `j`), written with one store per lane.
    let mut word = _mm512_setzero_si512();
    let mut words = [0u64; LANES];
    for i in 0..longest {
        let result = _mm512_add_epi64(_mm512_rol_epi64::<23>(_mm512_add_epi64(s0, s3)), s0);
        let t = _mm512_slli_epi64::<17>(s1);
        s2 = _mm512_xor_si512(s2, s0);
        s3 = _mm512_xor_si512(s3, s1);
        s1 = _mm512_xor_si512(s1, s2);
        s0 = _mm512_xor_si512(s0, s3);
        s2 = _mm512_xor_si512(s2, t);
        s3 = _mm512_rol_epi64::<45>(s3);
        let product = _mm512_mul_epu32(_mm512_srli_epi64::<32>(result), range);
        let rejected = _mm512_cmpgt_epu64_mask(_mm512_and_si512(product, low_half), zone);
        let letters = _mm512_add_epi64(_mm512_srli_epi64::<32>(product), letter_a);
        let shift = _mm512_set1_epi64(8 * (i % 8) as i64);
        word = _mm512_or_si512(word, _mm512_sllv_epi64(letters, shift));
        if rejected != 0 {
            let mut state = [[0u64; LANES]; 4];
            for (k, v) in [s0, s1, s2, s3].into_iter().enumerate() {
                // SAFETY: writes 64 bytes to a 64-byte array.
                unsafe { _mm512_storeu_si512(state[k].as_mut_ptr().cast(), v) };
            }
            // SAFETY: writes 64 bytes to a 64-byte array.
            unsafe { _mm512_storeu_si512(words.as_mut_ptr().cast(), word) };
            for l in (0..LANES).filter(|l| rejected & (1 << l) != 0) {
                let mut rng = Xoshiro(std::array::from_fn(|k| state[k][l]));
                let redrawn = letter(&mut rng);
                let byte = 8 * (i % 8);
                words[l] = (words[l] & !(0xff << byte)) | (u64::from(redrawn) << byte);
                for (lanes, word) in state.iter_mut().zip(rng.0) {
                    lanes[l] = word;
                }
            }
            [s0, s1, s2, s3] = state.map(|lane_words| {
                // SAFETY: reads 64 bytes from a 64-byte array.
                unsafe { _mm512_loadu_si512(lane_words.as_ptr().cast()) }
            });
            // SAFETY: reads 64 bytes from a 64-byte array.
            word = unsafe { _mm512_loadu_si512(words.as_ptr().cast()) };
        }
        if i % 8 == 7 || i + 1 == longest {
            // SAFETY: writes 64 bytes to a 64-byte array.
            unsafe { _mm512_storeu_si512(words.as_mut_ptr().cast(), word) };
            word = _mm512_setzero_si512();
            let first = i - i % 8;
            for (l, &(_, start, length)) in jobs.iter().enumerate() {
                let count = length.saturating_sub(first).min(8);
                let at = start + first;
                // A whole word is one 8-byte store; a copy of a variable
                // length would be a `memcpy` call per lane.
                if count == 8 {
                    bytes[at..at + 8].copy_from_slice(&words[l].to_le_bytes());
                } else if count > 0 {
                    bytes[at..at + count].copy_from_slice(&words[l].to_le_bytes()[..count]);
                }
            }
        }
    }
}

/// The crate's price: 10^(6u) dollars' cents, u uniform in [0, 1).
fn price(rng: &mut Xoshiro) -> usize {
    (10.0_f32.powf(rng.gen::<f32>() * 6.0) * 100.0).round() as usize
}

/// Column buffers of the three tables.
#[derive(Default)]
pub struct Columns {
    rows: [usize; 3],
    person_id: Vec<i64>,
    person_text: [Text; 5],
    person_time: Vec<i64>,
    person_extra: Text,
    auction_ints: [Vec<i64>; 3],
    auction_text: [Text; 2],
    auction_times: [Vec<i64>; 2],
    auction_tail: [Vec<i64>; 2],
    auction_extra: Text,
    bid_ints: [Vec<i64>; 3],
    bid_text: [Text; 2],
    bid_time: Vec<i64>,
    bid_extra: Text,
}

impl Columns {
    /// Rows pending in `table`.
    pub fn rows(&self, table: Table) -> usize {
        self.rows[table]
    }

    /// Appends event `event_number` (with the crate's default first event
    /// id and number, 0) to its table's columns; returns the table.
    pub fn append(&mut self, maker: &Maker, event_number: usize) -> Table {
        let id = maker.cfg.first_event_id + event_number;
        let time = maker.timestamp(event_number);
        let rng = &mut Xoshiro::seed_from_u64(id as u64);
        let table = maker.table(event_number);
        self.rows[table] += 1;
        match table {
            0 => self.person(maker, id, time, rng),
            1 => self.auction(maker, event_number, id, time, rng),
            _ => self.bid(maker, id, time, rng),
        }
        table
    }

    /// The crate's `Person::new`.
    fn person(&mut self, maker: &Maker, id: usize, time: u64, rng: &mut Xoshiro) {
        let cfg = &maker.cfg;
        self.person_id
            .push((maker.person_last_id(id) + cfg.first_person_id) as i64);
        let [name, email, card, city, state] = &mut self.person_text;
        name.bytes
            .extend_from_slice(cfg.first_names.choose(rng).expect("names").as_bytes());
        name.bytes.push(b' ');
        name.push(cfg.last_names.choose(rng).expect("names"));
        email.letters(rng, 7);
        email.bytes.push(b'@');
        email.letters(rng, 5);
        email.push(".com");
        // The crate's `format!("{:04} {:04} {:04} {:04}", ...)`, without
        // a `String` per person.
        for group in 0..4 {
            let digits: i32 = rng.gen_range(0..10000);
            if group > 0 {
                card.bytes.push(b' ');
            }
            card.bytes
                .extend([1000, 100, 10, 1].map(|unit| b'0' + (digits / unit % 10) as u8));
        }
        card.end();
        city.push(cfg.us_cities.choose(rng).expect("cities"));
        state.push(cfg.us_states.choose(rng).expect("states"));
        let texts = [&*name, &*email, &*card, &*city, &*state];
        let size = 8 + texts.iter().map(|t| last_len(t)).sum::<usize>();
        self.person_time.push(nanos(time));
        self.person_extra.extra(rng, size, cfg.avg_person_byte_size);
    }

    /// The crate's `Auction::new`.
    fn auction(
        &mut self,
        maker: &Maker,
        event_number: usize,
        id: usize,
        time: u64,
        rng: &mut Xoshiro,
    ) {
        let cfg = &maker.cfg;
        let [auction_id, initial_bid, reserve] = &mut self.auction_ints;
        auction_id.push((maker.auction_last_id(id) + cfg.first_auction_id) as i64);
        let [item_name, description] = &mut self.auction_text;
        item_name.letters(rng, 20);
        item_name.end();
        description.letters(rng, 100);
        description.end();
        let bid = price(rng);
        initial_bid.push(bid as i64);
        reserve.push((bid + price(rng)) as i64);
        // The crate's `next_length`: up to twice the time until the
        // auction that follows the ones in flight.
        let events_for_auctions =
            (cfg.in_flight_auctions * maker.proportion) / cfg.auction_proportion;
        let horizon = maker.timestamp(event_number + events_for_auctions) - time;
        let expires = time + 1 + rng.gen_range(0..(horizon * 2).max(1));
        let seller = if rng.gen_range(0..cfg.hot_seller_ratio) > 0 {
            (maker.person_last_id(id) / HOT_RATIO) * HOT_RATIO
        } else {
            maker.person_next_id(id, rng)
        };
        let category = cfg.first_category_id + rng.gen_range(0..cfg.num_categories);
        let [date_time, expires_at] = &mut self.auction_times;
        date_time.push(nanos(time));
        expires_at.push(nanos(expires));
        let [seller_id, category_id] = &mut self.auction_tail;
        seller_id.push((seller + cfg.first_person_id) as i64);
        category_id.push(category as i64);
        self.auction_extra
            .extra(rng, 8 + 20 + 100 + 40, cfg.avg_auction_byte_size);
    }

    /// The crate's `Bid::new`.
    fn bid(&mut self, maker: &Maker, id: usize, time: u64, rng: &mut Xoshiro) {
        let cfg = &maker.cfg;
        let auction = if 0 < rng.gen_range(0..cfg.hot_auction_ratio) {
            (maker.auction_last_id(id) / HOT_RATIO) * HOT_RATIO
        } else {
            maker.auction_next_id(id, rng)
        };
        let bidder = if 0 < rng.gen_range(0..cfg.hot_bidder_ratio) {
            (maker.person_last_id(id) / HOT_RATIO) * HOT_RATIO + 1
        } else {
            maker.person_next_id(id, rng)
        };
        let bid_price = price(rng);
        let [channel, url] = &mut self.bid_text;
        if rng.gen_range(0..cfg.hot_channel_ratio) > 0 {
            let index = rng.gen_range(0..cfg.hot_channels.len());
            channel.push(&cfg.hot_channels[index]);
            url.push(&cfg.hot_urls[index]);
        } else {
            let &(start, name, link) = maker.channel_index.choose(rng).expect("channels");
            let (start, name, link) = (start as usize, name as usize, link as usize);
            let entry = &maker.channel_bytes[start..start + name + link];
            channel.push(&entry[..name]);
            url.push(&entry[name..]);
        }
        let [auction_id, bidder_id, price_cents] = &mut self.bid_ints;
        auction_id.push((auction + cfg.first_auction_id) as i64);
        bidder_id.push((bidder + cfg.first_person_id) as i64);
        price_cents.push(bid_price as i64);
        self.bid_time.push(nanos(time));
        self.bid_extra.extra(rng, 32, cfg.avg_bid_byte_size);
    }

    /// The pending rows of `table` as a batch.
    pub fn finish(&mut self, table: Table) -> RecordBatch {
        self.rows[table] = 0;
        let columns: Vec<ArrayRef> = match table {
            0 => {
                let mut columns = vec![ints(&mut self.person_id)];
                columns.extend(self.person_text.iter_mut().map(Text::finish));
                columns.push(times(&mut self.person_time));
                columns.push(self.person_extra.finish());
                columns
            }
            1 => {
                let [id, initial_bid, reserve] = &mut self.auction_ints;
                let [item_name, description] = &mut self.auction_text;
                let [date_time, expires] = &mut self.auction_times;
                let [seller, category] = &mut self.auction_tail;
                vec![
                    ints(id),
                    item_name.finish(),
                    description.finish(),
                    ints(initial_bid),
                    ints(reserve),
                    times(date_time),
                    times(expires),
                    ints(seller),
                    ints(category),
                    self.auction_extra.finish(),
                ]
            }
            _ => {
                let mut columns: Vec<ArrayRef> = self.bid_ints.iter_mut().map(ints).collect();
                let [channel, url] = &mut self.bid_text;
                columns.push(channel.finish());
                columns.push(url.finish());
                columns.push(times(&mut self.bid_time));
                columns.push(self.bid_extra.finish());
                columns
            }
        };
        RecordBatch::try_new(schema(table), columns).expect("columns match the schema")
    }
}

/// Length of the value a [`Text`] ended last.
fn last_len(text: &Text) -> usize {
    let n = text.offsets.len();
    (text.offsets[n - 1] - text.offsets[n - 2]) as usize
}

/// The crate's channel table entry `i`: `channel-i` and a URL drawn from
/// seed `i`, with a `channel_id` for nine in ten.
fn channel_url(i: usize) -> (String, String) {
    let mut rng = SmallRng::seed_from_u64(i as u64);
    let mut part = || -> String {
        let len = rng.gen_range(3..5usize);
        (0..len)
            .map(|_| {
                if rng.gen_range(0..13) == 0 {
                    '_'
                } else {
                    rng.gen_range(b'a'..=b'z') as char
                }
            })
            .collect()
    };
    let (a, b, c) = (part(), part(), part());
    let mut url = format!("https://www.nexmark.com/{a}/{b}/{c}/item.htm?query=1");
    let mut rng = SmallRng::seed_from_u64(i as u64);
    if rng.gen_range(0..10) > 0 {
        url.push_str("&channel_id=");
        url.push_str(&i64::abs((i as i32).reverse_bits() as i64).to_string());
    }
    (format!("channel-{i}"), url)
}
