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
    /// The crate's channel table, then its hot channels: one 128-byte
    /// slot each, two cache lines that a bid prefetches when it draws
    /// its channel (see [`Columns::bid`]).
    channels: Vec<ChannelSlot>,
}

/// A channel and its URL, padded so that each is copied with one
/// fixed-size move ([`Text::push_padded`]).
#[repr(C, align(64))]
struct ChannelSlot {
    name: [u8; 16],
    url: [u8; 104],
    name_len: u8,
    url_len: u8,
}

impl ChannelSlot {
    fn new(name: &str, url: &str) -> Self {
        let mut slot = Self {
            name: [0; 16],
            url: [0; 104],
            name_len: name.len() as u8,
            url_len: url.len() as u8,
        };
        slot.name[..name.len()].copy_from_slice(name.as_bytes());
        slot.url[..url.len()].copy_from_slice(url.as_bytes());
        slot
    }
}

impl Maker {
    pub fn new(cfg: NexmarkConfig) -> Self {
        assert_eq!(cfg.first_rate, cfg.next_rate, "one event rate");
        assert_eq!(cfg.out_of_order_group_size, 1, "events in order");
        let proportion = cfg.person_proportion + cfg.auction_proportion + cfg.bid_proportion;
        let inter_event_delay_us =
            cfg.us_per_unit as f32 / cfg.first_rate as f32 * cfg.num_event_generators as f32;
        let mut channels: Vec<ChannelSlot> = (0..CHANNELS)
            .map(channel_url)
            .map(|(name, url)| ChannelSlot::new(&name, &url))
            .collect();
        assert_eq!(cfg.hot_channels.len(), cfg.hot_urls.len());
        for (name, url) in cfg.hot_channels.iter().zip(&cfg.hot_urls) {
            assert!(
                name.len() <= 16 && url.len() <= 104,
                "a channel fits its slot"
            );
            channels.push(ChannelSlot::new(name, url));
        }
        Self {
            cfg,
            proportion,
            inter_event_delay_us,
            channels,
        }
    }

    fn timestamp(&self, event_number: usize) -> u64 {
        self.cfg.base_time
            + round_half_away((event_number as f32 * self.inter_event_delay_us) / 1000.0)
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

    /// Appends `padded[..length]`, moving all `N` bytes: a copy of a
    /// constant size is a few vector moves, where a copy of the value's
    /// own length is a call to `memcpy`.
    fn push_padded<const N: usize>(&mut self, padded: &[u8; N], length: usize) {
        assert!(length <= N);
        self.bytes.reserve(N);
        let at = self.bytes.len();
        for (spare, &byte) in self.bytes.spare_capacity_mut()[..N].iter_mut().zip(padded) {
            spare.write(byte);
        }
        // SAFETY: the `N` bytes after `at` were just written, and
        // `length <= N`; the rest stays spare capacity.
        unsafe { self.bytes.set_len(at + length) };
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
    pub fn seed_from_u64(state: u64) -> Self {
        // rand_core fills the seed with eight PCG32 outputs. Step `k` of
        // PCG32's state is an affine function of the start, so the eight
        // states are computed side by side instead of as a chain of eight
        // dependent multiplications (an event's seed is its number).
        let output = |k: usize| {
            let (mul, add) = PCG32_STEPS[k];
            let state = state.wrapping_mul(mul).wrapping_add(add);
            let xorshifted = (((state >> 18) ^ state) >> 27) as u32;
            u64::from(xorshifted.rotate_right((state >> 59) as u32))
        };
        let words: [u64; 4] = std::array::from_fn(|i| output(2 * i) | (output(2 * i + 1) << 32));
        if words == [0; 4] {
            // xoshiro's own answer to an all-zero seed.
            return Self(splitmix_seed(0));
        }
        Self(words)
    }
}

/// PCG32's state after `k + 1` steps from `s` is `s * mul + add` with
/// `(mul, add)` = `PCG32_STEPS[k]` (rand_core's multiplier and increment).
const PCG32_STEPS: [(u64, u64); 8] = {
    const MUL: u64 = 6364136223846793005;
    const INC: u64 = 11634580027462260723;
    let mut steps = [(0, 0); 8];
    let (mut mul, mut add) = (MUL, INC);
    let mut k = 0;
    while k < 8 {
        steps[k] = (mul, add);
        mul = mul.wrapping_mul(MUL);
        add = add.wrapping_mul(MUL).wrapping_add(INC);
        k += 1;
    }
    steps
};

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
/// cannot overlap).
///
/// Each lane gathers eight letters in a word, which a masked scatter
/// stores for every lane with eight letters still to go; a lane's last,
/// partial word is set aside and copied at the end. Storing the words
/// lane by lane instead (a branch and a bounds check each) took half the
/// time on an Intel host. A draw that [`letter`] would reject (22 values
/// in 2^32) is rare enough (one group in about 300,000) that the loop
/// only tracks the highest low half drawn; if that one is in the rejected
/// zone the whole group is drawn again letter by letter, as [`letter`]
/// draws it.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn fill_lanes_avx512(bytes: &mut [u8], jobs: &[(Xoshiro, usize, usize); LANES]) {
    use std::arch::x86_64::*;
    const ZONE: i64 = (u32::MAX - (u32::MAX - 26 + 1) % 26) as i64;
    // The scatter below is unchecked: every job must lie inside `bytes`.
    assert!(jobs.iter().all(|&(_, start, length)| start
        .checked_add(length)
        .is_some_and(|end| end <= bytes.len())));
    let lanes = |words: [u64; LANES]| -> __m512i {
        // SAFETY: reads 64 bytes from a 64-byte array.
        unsafe { _mm512_loadu_si512(words.as_ptr().cast()) }
    };
    let [mut s0, mut s1, mut s2, mut s3] = [0, 1, 2, 3].map(|k| lanes(jobs.map(|job| job.0 .0[k])));
    let mut at = lanes(jobs.map(|job| job.1 as u64));
    let mut remaining = lanes(jobs.map(|job| job.2 as u64));
    let range = _mm512_set1_epi64(26);
    let top_byte = _mm512_set1_epi64(0xff00_0000_0000_0000_u64 as i64);
    // 'a' in every byte: letters are 0-25 until the word is whole.
    let letters_a = _mm512_set1_epi64(0x6161_6161_6161_6161);
    let eight = _mm512_set1_epi64(8);
    let mut tails = _mm512_setzero_si512();
    // Lane-wise maximum of each product's low 32 bits (and, unused, of
    // its high ones).
    let mut highest = _mm512_setzero_si512();
    let longest = jobs.iter().map(|job| job.2).max().unwrap_or(0);
    for _ in 0..longest.div_ceil(8) {
        let mut word = _mm512_setzero_si512();
        for _ in 0..8 {
            let result = _mm512_add_epi64(_mm512_rol_epi64::<23>(_mm512_add_epi64(s0, s3)), s0);
            let t = _mm512_slli_epi64::<17>(s1);
            s2 = _mm512_xor_si512(s2, s0);
            s3 = _mm512_xor_si512(s3, s1);
            s1 = _mm512_xor_si512(s1, s2);
            s0 = _mm512_xor_si512(s0, s3);
            s2 = _mm512_xor_si512(s2, t);
            s3 = _mm512_rol_epi64::<45>(s3);
            // The draw's high 32 bits (`next_u32`) moved to the low ones
            // by a shuffle, which runs on a port the shifts leave free.
            let product = _mm512_mul_epu32(_mm512_shuffle_epi32::<0xF5>(result), range);
            highest = _mm512_max_epu32(highest, product);
            // The word moves down a byte; the letter (the product's high
            // half) goes in at the top, so letter `j` ends in byte `j`.
            word = _mm512_ternarylogic_epi64::<0xF8>(
                _mm512_srli_epi64::<8>(word),
                _mm512_slli_epi64::<24>(product),
                top_byte,
            );
        }
        let word = _mm512_add_epi64(word, letters_a);
        let whole = _mm512_cmpge_epu64_mask(remaining, eight);
        // SAFETY: a lane stores only while eight of its letters remain,
        // at `start + 8 i`: inside its job, inside `bytes` (asserted).
        unsafe { _mm512_mask_i64scatter_epi64::<1>(bytes.as_mut_ptr().cast(), whole, at, word) };
        let partial = _mm512_mask_cmplt_epu64_mask(
            _mm512_test_epi64_mask(remaining, remaining),
            remaining,
            eight,
        );
        tails = _mm512_mask_mov_epi64(tails, partial, word);
        at = _mm512_add_epi64(at, eight);
        remaining = _mm512_maskz_sub_epi64(whole, remaining, eight);
    }
    let mut words = [0u64; LANES];
    // SAFETY: writes 64 bytes to a 64-byte array.
    unsafe { _mm512_storeu_si512(words.as_mut_ptr().cast(), tails) };
    for (&(_, start, length), word) in jobs.iter().zip(words) {
        let count = length % 8;
        let end = start + length;
        bytes[end - count..end].copy_from_slice(&word.to_le_bytes()[..count]);
    }
    let low_half = _mm512_set1_epi64(0xffff_ffff);
    let zone = _mm512_set1_epi64(ZONE);
    if _mm512_cmpgt_epu64_mask(_mm512_and_si512(highest, low_half), zone) != 0 {
        for (rng, start, length) in jobs {
            let mut rng = *rng;
            for byte in &mut bytes[*start..start + length] {
                *byte = letter(&mut rng);
            }
        }
    }
}

/// The crate's price: 10^(6u) dollars' cents, u uniform in [0, 1).
fn price(rng: &mut Xoshiro) -> usize {
    round_half_away(10.0_f32.powf(rng.gen::<f32>() * 6.0) * 100.0) as usize
}

/// `x.round() as u64` for `x` in [0, 2^63), inline: `f32::round` is a
/// call into libm's `roundf`, made twice per bid. `x - trunc(x)` is
/// exact: below 1 it is `x`, from 1 to 2^24 the two are within a factor
/// of two (Sterbenz), and from 2^23 on `x` is a whole number.
#[inline(always)]
pub fn round_half_away(x: f32) -> u64 {
    debug_assert!((0.0..9.2e18).contains(&x));
    // Signed conversions are single instructions; unsigned ones branch.
    let whole = x as i64;
    whole as u64 + u64::from(x - whole as f32 >= 0.5)
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
    /// Each pending bid's slot in [`Maker::channels`]: the channel and
    /// URL columns are filled when the batch is finished.
    bid_channels: Vec<u32>,
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
        let slot = if rng.gen_range(0..cfg.hot_channel_ratio) > 0 {
            CHANNELS + rng.gen_range(0..cfg.hot_channels.len())
        } else {
            // The crate's `choose` over the table: rand 0.8 draws the
            // index of a slice shorter than 2^32 as a `u32`.
            rng.gen_range(0..CHANNELS as u32) as usize
        };
        // One bid in ten reads a channel drawn from 10,000 (1.2 MiB of
        // slots), which waited on memory when copied here; it is copied
        // when the batch is finished, by which time this has brought it in.
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T1};
            let at: *const ChannelSlot = &maker.channels[slot];
            // SAFETY: prefetching has no effect on memory; both addresses
            // are inside the slot.
            unsafe {
                _mm_prefetch::<_MM_HINT_T1>(at.cast());
                _mm_prefetch::<_MM_HINT_T1>(at.cast::<u8>().add(64).cast());
            }
        }
        self.bid_channels.push(slot as u32);
        let [auction_id, bidder_id, price_cents] = &mut self.bid_ints;
        auction_id.push((auction + cfg.first_auction_id) as i64);
        bidder_id.push((bidder + cfg.first_person_id) as i64);
        price_cents.push(bid_price as i64);
        self.bid_time.push(nanos(time));
        self.bid_extra.extra(rng, 32, cfg.avg_bid_byte_size);
    }

    /// The pending rows of `table` as a batch.
    pub fn finish(&mut self, maker: &Maker, table: Table) -> RecordBatch {
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
                for &slot in &self.bid_channels {
                    let slot = &maker.channels[slot as usize];
                    channel.push_padded(&slot.name, usize::from(slot.name_len));
                    url.push_padded(&slot.url, usize::from(slot.url_len));
                }
                self.bid_channels.clear();
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
