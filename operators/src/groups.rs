//! Group tables: key values -> dense group ids, for the aggregates.
//!
//! A single non-nullable string or integer key is stored as itself
//! (hashing and comparing a short string is far cheaper than encoding it in
//! Arrow's row format); anything else as row-format bytes. The kind is
//! fixed when the operator is built, from the planned key types.

use arrow::array::{Array, ArrayRef, BooleanArray, Int64Array, StringArray};
use arrow::datatypes::{DataType, FieldRef};
use arrow::row::{RowConverter, Rows, SortField};
use laminar_runtime::{Error, ErrorCode, Result};
use std::sync::Arc;

/// How a stream's keys are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeyKind {
    /// No GROUP BY key: one group.
    Global,
    Utf8,
    Int64,
    Rows,
}

/// The fields of key expressions over `schema`, as a [`KeyEncoder`]
/// takes them (names do not matter to it).
pub(crate) fn key_fields(
    keys: &[Arc<dyn datafusion::physical_expr::PhysicalExpr>],
    schema: &arrow::datatypes::Schema,
) -> Result<Vec<FieldRef>> {
    keys.iter()
        .map(|key| -> Result<_> {
            Ok(Arc::new(arrow::datatypes::Field::new(
                "k",
                key.data_type(schema)?,
                key.nullable(schema)?,
            )))
        })
        .collect()
}

/// Turns key columns into something a [`GroupTable`] can look up, and
/// group tables back into key columns. One per operator.
pub struct KeyEncoder {
    kind: KeyKind,
    converter: RowConverter,
    /// Hash state of the group tables (process-local: any fast hasher).
    hasher: ahash::RandomState,
    /// [`short_key_seeds`], kept at hand.
    seeds: [u64; 2],
}

impl std::fmt::Debug for KeyEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyEncoder")
            .field("kind", &self.kind)
            .finish()
    }
}

/// One batch's keys, ready for lookup.
pub enum BatchKeys<'a> {
    /// No key: every row is in group 0.
    Global,
    /// A single non-null string key.
    Utf8(&'a StringArray),
    /// A single non-null BIGINT key.
    Int64(&'a [i64]),
    /// Anything else, in Arrow's row format.
    Rows(Rows),
}

impl BatchKeys<'_> {
    /// Whether every key is a `BIGINT` or a string of up to 8 bytes: a
    /// key a fused kernel finds in its own loop
    /// ([`crate::fused_lookup`]).
    pub fn all_short(&self) -> bool {
        match self {
            BatchKeys::Int64(_) => true,
            BatchKeys::Utf8(array) => {
                let offsets = array.value_offsets();
                let longest = offsets
                    .windows(2)
                    .map(|pair| pair[1] - pair[0])
                    .max()
                    .unwrap_or(0);
                longest <= 8
            }
            BatchKeys::Global | BatchKeys::Rows(_) => false,
        }
    }
}

impl KeyEncoder {
    /// An encoder for keys with these fields (possibly none: one global
    /// group).
    pub fn new(fields: &[FieldRef]) -> Result<Self> {
        let kind = match fields {
            [] => KeyKind::Global,
            [f] if !f.is_nullable() && f.data_type() == &DataType::Utf8 => KeyKind::Utf8,
            [f] if !f.is_nullable() && f.data_type() == &DataType::Int64 => KeyKind::Int64,
            _ => KeyKind::Rows,
        };
        // The converter is only used for the row-format kind (it rejects
        // an empty field list).
        let converter = RowConverter::new(if fields.is_empty() {
            vec![SortField::new(DataType::Null)]
        } else {
            fields
                .iter()
                .map(|f| SortField::new(f.data_type().clone()))
                .collect()
        })?;
        Ok(Self {
            kind,
            converter,
            hasher: ahash::RandomState::new(),
            seeds: short_key_seeds(),
        })
    }

    /// An empty group table for these keys.
    pub fn table(&self) -> GroupTable {
        GroupTable {
            keys: match self.kind {
                KeyKind::Global => KeyStore::Global,
                KeyKind::Utf8 => KeyStore::Utf8(KeyArena::default()),
                KeyKind::Int64 => KeyStore::Int64(Vec::new()),
                KeyKind::Rows => KeyStore::Rows(KeyArena::default()),
            },
            hashes: Vec::new(),
            table: SlotTable::default(),
            batch_hashes: Vec::new(),
        }
    }

    /// Prepares one batch's key columns for lookup.
    pub fn encode<'a>(&self, key_arrays: &'a [ArrayRef]) -> Result<BatchKeys<'a>> {
        if matches!(self.kind, KeyKind::Utf8 | KeyKind::Int64) && key_arrays[0].null_count() > 0 {
            return Err(Error::new(
                ErrorCode::Execution,
                "a GROUP BY key planned as NOT NULL produced NULL",
            ));
        }
        Ok(match self.kind {
            KeyKind::Utf8 => BatchKeys::Utf8(
                key_arrays[0]
                    .as_any()
                    .downcast_ref::<StringArray>()
                    .ok_or_else(|| key_type_error(&key_arrays[0]))?,
            ),
            KeyKind::Int64 => BatchKeys::Int64(
                key_arrays[0]
                    .as_any()
                    .downcast_ref::<Int64Array>()
                    .ok_or_else(|| key_type_error(&key_arrays[0]))?
                    .values(),
            ),
            KeyKind::Global => BatchKeys::Global,
            KeyKind::Rows => BatchKeys::Rows(self.converter.convert_columns(key_arrays)?),
        })
    }

    /// A key's hash in the group tables: keys of up to 8 bytes (which
    /// their slot holds whole: every BIGINT, most symbols and ids) in one
    /// folded multiply of the slot's words with the table's random seeds,
    /// longer ones through ahash.
    #[inline]
    fn short_hash(&self, key_len: usize, slot: &Slot) -> u64 {
        debug_assert!(key_len <= 8);
        fold_hash(slot.head, slot.len, self.seeds)
    }

    /// [`KeyEncoder::short_hash`], or ahash for a longer key.
    #[inline]
    fn bytes_hash(&self, key: &[u8], slot: &Slot) -> u64 {
        if key.len() > 8 {
            self.hasher.hash_one(key)
        } else {
            self.short_hash(key.len(), slot)
        }
    }

    /// Looks up or inserts row `row`'s key; returns its group id.
    #[inline]
    pub fn group_id(&self, table: &mut GroupTable, keys: &BatchKeys<'_>, row: usize) -> usize {
        let GroupTable {
            keys: store,
            hashes,
            table,
            ..
        } = table;
        match (keys, store) {
            (BatchKeys::Global, KeyStore::Global) => {
                if hashes.is_empty() {
                    hashes.push(0);
                }
                0
            }
            (BatchKeys::Utf8(array), KeyStore::Utf8(store)) => {
                let offsets = array.value_offsets();
                let (start, end) = (offsets[row] as usize, offsets[row + 1] as usize);
                let key = &array.value_data()[start..end];
                let slot = Slot {
                    id: 0,
                    len: (end - start) as u32,
                    head: head_at(array.value_data(), start, end - start),
                };
                let hash = self.bytes_hash(key, &slot);
                intern(
                    table,
                    hashes,
                    store,
                    (hash, slot),
                    |store, id| bytes_eq(store.get(id), key),
                    |store| store.push(key),
                )
            }
            (BatchKeys::Int64(values), KeyStore::Int64(store)) => {
                let key = values[row];
                let slot = Slot::of_int(key);
                intern(
                    table,
                    hashes,
                    store,
                    (self.short_hash(8, &slot), slot),
                    |_, _| true,
                    |store| store.push(key),
                )
            }
            (BatchKeys::Rows(rows), KeyStore::Rows(store)) => {
                let key = rows.row(row);
                let key = key.as_ref();
                // As `resolve` hashes them.
                let hash = self.hasher.hash_one(key);
                intern(
                    table,
                    hashes,
                    store,
                    (hash, Slot::of(key)),
                    |store, id| bytes_eq(store.get(id), key),
                    |store| store.push(key),
                )
            }
            _ => unreachable!("a group table's key store matches its encoder's kind"),
        }
    }

    /// Resolves the group of each row `mask` keeps (every row when
    /// `None`) into `group_ids`, inserting keys not seen before; rows it
    /// drops get group 0, which whoever reads `group_ids` must skip by the
    /// same mask. One loop per key kind, with a string key's values read
    /// in place.
    pub fn resolve(
        &self,
        table: &mut GroupTable,
        keys: &BatchKeys<'_>,
        mask: Option<&BooleanArray>,
        rows: usize,
        group_ids: &mut Vec<usize>,
    ) {
        match (keys, &mut *table) {
            (
                BatchKeys::Utf8(array),
                GroupTable {
                    keys: KeyStore::Utf8(store),
                    hashes,
                    table: slots,
                    ..
                },
            ) => {
                let offsets = array.value_offsets();
                let values = array.value_data();
                for_rows(mask, rows, group_ids, |row| {
                    let (start, end) = (offsets[row] as usize, offsets[row + 1] as usize);
                    let probe = Slot {
                        id: 0,
                        len: (end - start) as u32,
                        head: head_at(values, start, end - start),
                    };
                    if end - start <= 8 {
                        // The slot holds the whole key.
                        let hash = self.short_hash(end - start, &probe);
                        return match slots.find(hash, |s| s.matches(&probe, || true)) {
                            Some(slot) => slot.id as usize,
                            None => insert_new(slots, hashes, store, (hash, probe), |store| {
                                store.push(&values[start..end])
                            }),
                        };
                    }
                    let key = &values[start..end];
                    intern(
                        slots,
                        hashes,
                        store,
                        (self.bytes_hash(key, &probe), probe),
                        |store, id| bytes_eq(store.get(id), key),
                        |store| store.push(key),
                    )
                });
            }
            (
                BatchKeys::Int64(values),
                GroupTable {
                    keys: KeyStore::Int64(store),
                    hashes,
                    table: slots,
                    ..
                },
            ) => for_rows(mask, rows, group_ids, |row| {
                let key = values[row];
                let probe = Slot::of_int(key);
                let hash = self.short_hash(8, &probe);
                match slots.find(hash, |s| s.matches(&probe, || true)) {
                    Some(slot) => slot.id as usize,
                    None => {
                        insert_new(slots, hashes, store, (hash, probe), |store| store.push(key))
                    }
                }
            }),
            (
                BatchKeys::Rows(keys),
                GroupTable {
                    keys: KeyStore::Rows(store),
                    hashes,
                    table: slots,
                    batch_hashes,
                },
            ) => {
                // Every key hashed first, so that the slot a row probes
                // is fetched a few rows ahead: with a large table each
                // probe was a miss to memory, most of the lookup's time.
                batch_hashes.clear();
                batch_hashes
                    .extend((0..rows).map(|row| self.hasher.hash_one(keys.row(row).as_ref())));
                for_rows(mask, rows, group_ids, |row| {
                    if let Some(&ahead) = batch_hashes.get(row + PREFETCH_ROWS) {
                        slots.prefetch(ahead);
                    }
                    let key = keys.row(row);
                    let key = key.as_ref();
                    intern(
                        slots,
                        hashes,
                        store,
                        (batch_hashes[row], Slot::of(key)),
                        |store, id| bytes_eq(store.get(id), key),
                        |store| store.push(key),
                    )
                })
            }
            _ => for_rows(mask, rows, group_ids, |row| self.group_id(table, keys, row)),
        }
    }

    /// Prepares one batch's key columns to be kept with the batch (join
    /// state compares keys against stored rows instead of copying them).
    pub fn encode_owned(&self, key_arrays: &[ArrayRef]) -> Result<OwnedKeys> {
        Ok(match self.encode(key_arrays)? {
            BatchKeys::Global => OwnedKeys::Global,
            BatchKeys::Utf8(array) => OwnedKeys::Utf8(array.clone()),
            BatchKeys::Int64(_) => OwnedKeys::Int64(
                key_arrays[0]
                    .as_any()
                    .downcast_ref::<Int64Array>()
                    .ok_or_else(|| key_type_error(&key_arrays[0]))?
                    .clone(),
            ),
            BatchKeys::Rows(rows) => OwnedKeys::Rows(rows),
        })
    }

    /// Appends to `out`, for each of the first `rows` keys in order,
    /// `make(hash, head, bytes)`: its hash, its head ([`key_head`]) and
    /// its bytes (as [`OwnedKeys::key_bytes`]). The interval join's
    /// buckets use them. One loop per kind of key, so that nothing is
    /// matched or called per row, and each an `extend` of a known length,
    /// so that no row checks the vector's capacity. A key of up to 8
    /// bytes (a BIGINT, most symbols) is hashed from its head by
    /// [`fold_hash`], a multiply, not by a byte hasher's rounds.
    #[inline]
    pub fn hashes_into<T>(
        &self,
        keys: &OwnedKeys,
        rows: usize,
        out: &mut Vec<T>,
        make: impl Fn(u64, u64, &[u8]) -> T,
    ) {
        let seeds = self.seeds;
        match keys {
            OwnedKeys::Global => out.extend((0..rows).map(|_| make(0, 0, &[]))),
            OwnedKeys::Utf8(array) => {
                let (offsets, values) = (array.value_offsets(), array.value_data());
                let offsets = &offsets[..=rows];
                // The keys that start at least 8 bytes before the end of
                // the values (offsets only grow: a prefix of the rows)
                // read their head as one word, with no check per row
                // beyond the slice's own; the last few take `head_at`.
                let word_rows =
                    offsets[..rows].partition_point(|&start| start as usize + 8 <= values.len());
                // Closures that own what they read: the loops below keep the
                // seeds in registers instead of loading them through a
                // reference after every store to `out`.
                let hasher = &self.hasher;
                let make = &make;
                let hash_of = move |head: u64, key: &[u8]| {
                    if key.len() <= 8 {
                        fold_hash(head, key.len() as u32, seeds)
                    } else {
                        hasher.hash_one(key)
                    }
                };
                out.extend(offsets[..=word_rows].windows(2).map(move |bounds| {
                    let (start, end) = (bounds[0] as usize, bounds[1] as usize);
                    let word = values[start..start + 8]
                        .try_into()
                        .map_or(0, u64::from_le_bytes);
                    let key = &values[start..end];
                    let head = word & head_mask(key.len());
                    make(hash_of(head, key), head, key)
                }));
                out.extend(offsets[word_rows..].windows(2).map(move |bounds| {
                    let (start, end) = (bounds[0] as usize, bounds[1] as usize);
                    let key = &values[start..end];
                    let head = head_at(values, start, key.len());
                    make(hash_of(head, key), head, key)
                }));
            }
            OwnedKeys::Int64(array) => out.extend(array.values()[..rows].iter().map(|&key| {
                let head = key as u64;
                make(fold_hash(head, 8, seeds), head, &key.to_le_bytes())
            })),
            OwnedKeys::Rows(keys) => out.extend((0..rows).map(|row| {
                let key = keys.row(row);
                let bytes = key.data();
                make(self.hasher.hash_one(key.as_ref()), key_head(bytes), bytes)
            })),
        }
    }

    /// Looks up row `row`'s key without inserting it (joins probe the
    /// other side's table).
    #[inline]
    pub fn find(&self, table: &GroupTable, keys: &BatchKeys<'_>, row: usize) -> Option<usize> {
        let found = match (keys, &table.keys) {
            (BatchKeys::Global, KeyStore::Global) => (!table.hashes.is_empty()).then_some(0u32),
            (BatchKeys::Utf8(array), KeyStore::Utf8(store)) => {
                let key = array.value(row);
                let probe = Slot::of(key.as_bytes());
                table
                    .table
                    .find(self.bytes_hash(key.as_bytes(), &probe), |s| {
                        s.matches(&probe, || bytes_eq(store.get(s.id), key.as_bytes()))
                    })
                    .map(|s| s.id)
            }
            (BatchKeys::Int64(values), KeyStore::Int64(_)) => {
                let key = values[row];
                let probe = Slot::of_int(key);
                table
                    .table
                    .find(self.short_hash(8, &probe), |s| s.matches(&probe, || true))
                    .map(|s| s.id)
            }
            (BatchKeys::Rows(rows), KeyStore::Rows(store)) => {
                let key = rows.row(row);
                let key = key.as_ref();
                let probe = Slot::of(key);
                table
                    .table
                    .find(self.hasher.hash_one(key), |s| {
                        s.matches(&probe, || bytes_eq(store.get(s.id), key))
                    })
                    .map(|s| s.id)
            }
            _ => unreachable!("a group table's key store matches its encoder's kind"),
        };
        found.map(|id| id as usize)
    }

    /// The key columns of groups `ids` of `table`, in that order.
    pub fn key_columns(&self, table: &GroupTable, ids: &[u32]) -> Result<Vec<ArrayRef>> {
        Ok(match &table.keys {
            KeyStore::Global => Vec::new(),
            KeyStore::Utf8(keys) => {
                let mut column = arrow::array::StringBuilder::with_capacity(ids.len(), 0);
                for &i in ids {
                    // Stored from a string column's value, so UTF-8.
                    let key = std::str::from_utf8(keys.get(i)).map_err(|e| {
                        Error::new(ErrorCode::Execution, format!("a stored group key: {e}"))
                    })?;
                    column.append_value(key);
                }
                vec![Arc::new(column.finish())]
            }
            KeyStore::Int64(keys) => vec![Arc::new(Int64Array::from_iter_values(
                ids.iter().map(|&i| keys[i as usize]),
            ))],
            KeyStore::Rows(keys) => {
                let parser = self.converter.parser();
                self.converter
                    .convert_rows(ids.iter().map(|&i| parser.parse(keys.get(i))))?
            }
        })
    }
}

/// One batch's keys, owned (kept with a stored batch).
pub enum OwnedKeys {
    /// No key.
    Global,
    /// A single non-null string key.
    Utf8(StringArray),
    /// A single non-null BIGINT key.
    Int64(Int64Array),
    /// Anything else, in Arrow's row format.
    Rows(Rows),
}

impl OwnedKeys {
    /// Row `row`'s key as bytes: equal bytes, equal keys (among keys of
    /// one encoder), so a table may keep a copy of the bytes instead of the
    /// batch they came from.
    #[inline]
    pub fn key_bytes(&self, row: usize) -> &[u8] {
        match self {
            OwnedKeys::Global => &[],
            OwnedKeys::Utf8(array) => array.value(row).as_bytes(),
            OwnedKeys::Int64(array) => {
                let width = std::mem::size_of::<i64>();
                &array.values().inner().as_slice()[row * width..(row + 1) * width]
            }
            OwnedKeys::Rows(rows) => rows.row(row).data(),
        }
    }

    /// Approximate bytes held beyond the batch's own columns.
    pub fn bytes(&self) -> usize {
        match self {
            OwnedKeys::Rows(rows) => rows.size(),
            _ => 0,
        }
    }
}

/// Group keys by group id.
enum KeyStore {
    Global,
    /// A string key's UTF-8 bytes.
    Utf8(KeyArena),
    Int64(Vec<i64>),
    /// Row-format bytes.
    Rows(KeyArena),
}

/// Variable-length keys back to back in chunks of [`ARENA_CHUNK_BYTES`]:
/// no allocation per group (a table of a million keys made a million
/// boxes), and no chunk ever moves, where one growing buffer would copy
/// every key at each doubling, a pause that grows with the state.
#[derive(Default)]
struct KeyArena {
    chunks: Vec<Vec<u8>>,
    /// The chunks' capacity, kept as they are added: state sizes are
    /// sampled from the shard loop, which should not walk the chunks.
    chunk_bytes: usize,
    /// `[group id]` -> where its key is.
    spans: Vec<Span>,
}

#[derive(Debug, Clone, Copy)]
struct Span {
    chunk: u32,
    start: u32,
    len: u32,
}

/// Bytes per arena chunk (a longer key gets a chunk of its own).
const ARENA_CHUNK_BYTES: usize = 64 * 1024;

impl KeyArena {
    fn push(&mut self, key: &[u8]) {
        let room = self.chunks.last().map_or(0, |c| c.capacity() - c.len());
        if room < key.len() || self.chunks.is_empty() {
            let chunk = Vec::with_capacity(key.len().max(ARENA_CHUNK_BYTES));
            self.chunk_bytes += chunk.capacity();
            self.chunks.push(chunk);
        }
        let chunk = self.chunks.len() - 1;
        let bytes = &mut self.chunks[chunk];
        let start = bytes.len();
        bytes.extend_from_slice(key);
        // Keys are one row's bytes (Arrow's offsets are 32-bit) and a
        // chunk is no longer than its longest key.
        let narrow = |v: usize| u32::try_from(v).expect("a group key under 4 GiB");
        self.spans.push(Span {
            chunk: narrow(chunk),
            start: narrow(start),
            len: narrow(key.len()),
        });
    }

    #[inline]
    fn get(&self, id: u32) -> &[u8] {
        let span = self.spans[id as usize];
        let start = span.start as usize;
        &self.chunks[span.chunk as usize][start..start + span.len as usize]
    }

    fn bytes(&self) -> usize {
        self.chunk_bytes
            + self.chunks.capacity() * std::mem::size_of::<Vec<u8>>()
            + self.spans.capacity() * std::mem::size_of::<Span>()
    }
}

/// Distinct keys seen, each with a dense id in order of first appearance.
pub struct GroupTable {
    keys: KeyStore,
    /// Hash of each group's key, so the table can grow without rehashing
    /// keys.
    hashes: Vec<u64>,
    table: SlotTable,
    /// The hashes of a batch's keys ([`KeyEncoder::resolve`]), kept for
    /// its memory.
    batch_hashes: Vec<u64>,
}

/// How many rows ahead of its probe a row's slot is fetched.
const PREFETCH_ROWS: usize = 8;

/// A group in the hash table: its id, and its key's length and first
/// bytes inline, so that a probe compares short keys (every BIGINT, most
/// symbols and ids: up to 8 bytes) without leaving the slot, and longer
/// ones only when those match. Following the id to the stored key on
/// every probe was a dependent load per row, a third of the group
/// lookup's time.
///
/// Compiled kernels probe the slots themselves ([`crate::fused_lookup`]),
/// so the layout is fixed: id, then length (one little-endian word), then
/// head.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct Slot {
    id: u32,
    len: u32,
    head: u64,
}

const _: () = assert!(std::mem::size_of::<Slot>() == 16);
const _: () = assert!(std::mem::offset_of!(Slot, len) == 4);
const _: () = assert!(std::mem::offset_of!(Slot, head) == 8);

/// The slots of a table that has none yet, as a kernel probes them: one
/// empty slot, so every probe misses.
static NO_SLOTS: [Slot; 1] = [EMPTY];

/// An unused slot: no key is `u32::MAX` bytes long (Arrow's offsets stop
/// at 2 GiB), so no probe matches it.
const EMPTY: Slot = Slot {
    id: u32::MAX,
    len: u32::MAX,
    head: 0,
};

impl Slot {
    /// The slot of a key with these bytes (its id set on insertion).
    #[inline]
    fn of(key: &[u8]) -> Self {
        Self {
            id: 0,
            len: u32::try_from(key.len()).unwrap_or(u32::MAX - 1),
            head: key_head(key),
        }
    }

    /// The slot of a BIGINT key: the value is the whole key.
    #[inline]
    fn of_int(key: i64) -> Self {
        Self {
            id: 0,
            len: 8,
            head: key as u64,
        }
    }

    /// Whether this slot holds `probe`'s key; `rest` compares the whole
    /// keys, asked only for keys longer than 8 bytes whose heads match.
    #[inline]
    fn matches(&self, probe: &Slot, rest: impl FnOnce() -> bool) -> bool {
        self.head == probe.head && self.len == probe.len && (probe.len <= 8 || rest())
    }
}

/// Open addressing with linear probing over [`Slot`]s, at most three
/// quarters full. A hit on a short key reads one slot (a quarter of a
/// cache line) and compares two words; hashbrown's control bytes cost a
/// second load and a SIMD match per probe, about a third of the lookup's
/// instructions when the table is in cache. Groups are never removed, so
/// no tombstones.
#[derive(Default)]
struct SlotTable {
    /// A power of two of slots, or none before the first insertion.
    slots: Vec<Slot>,
    used: usize,
}

/// Fewest slots a table allocates.
const MIN_SLOTS: usize = 16;

impl SlotTable {
    #[inline]
    fn find(&self, hash: u64, mut eq: impl FnMut(&Slot) -> bool) -> Option<&Slot> {
        let mask = self.slots.len().wrapping_sub(1);
        let mut at = hash as usize & mask;
        loop {
            let slot = self.slots.get(at)?;
            if eq(slot) {
                return Some(slot);
            }
            if slot.id == EMPTY.id {
                return None;
            }
            at = (at + 1) & mask;
        }
    }

    /// Inserts a slot whose key is not in the table; `hash_of` gives any
    /// stored slot's hash (to move it when the table grows).
    fn insert_unique(&mut self, hash: u64, slot: Slot, hash_of: impl Fn(&Slot) -> u64) {
        if (self.used + 1) * 4 > self.slots.len() * 3 {
            let slots = (self.slots.len() * 2).max(MIN_SLOTS);
            let old = std::mem::replace(&mut self.slots, vec![EMPTY; slots]);
            for stored in old.into_iter().filter(|s| s.id != EMPTY.id) {
                self.place(hash_of(&stored), stored);
            }
        }
        self.place(hash, slot);
        self.used += 1;
    }

    fn place(&mut self, hash: u64, slot: Slot) {
        let mask = self.slots.len() - 1;
        let mut at = hash as usize & mask;
        while self.slots[at].id != EMPTY.id {
            at = (at + 1) & mask;
        }
        self.slots[at] = slot;
    }

    fn capacity(&self) -> usize {
        self.slots.capacity()
    }

    /// Asks the CPU to fetch the slot a probe for `hash` reads first.
    #[inline]
    fn prefetch(&self, hash: u64) {
        if let Some(slot) = self
            .slots
            .get(hash as usize & self.slots.len().wrapping_sub(1))
        {
            crate::prefetch(slot);
        }
    }
}

/// The seeds of every group table's short-key hash ([`fold_hash`]):
/// random, drawn once per process. One pair for all tables lets a fused
/// kernel, compiled before any table exists, carry them as constants
/// ([`crate::fused_lookup`]) instead of two more loop values; a key's
/// hash is still unknown outside the process.
pub fn short_key_seeds() -> [u64; 2] {
    static SEEDS: std::sync::OnceLock<[u64; 2]> = std::sync::OnceLock::new();
    *SEEDS.get_or_init(|| {
        let hasher = ahash::RandomState::new();
        [hasher.hash_one(0x5eed_u64), hasher.hash_one(0xf00d_u64)]
    })
}

/// The group tables' hash of a key of up to 8 bytes: a folded multiply of
/// its head and length with the [`short_key_seeds`]. The multiplier is odd, so
/// the product's low word keeps every bit of the head's. Fused kernels
/// compute the same hash in their own loop ([`crate::fused_lookup`]):
/// change both together (a kernel whose hash differs still finds every
/// key, by stopping at each row; the lookup tests count the stops).
#[inline]
fn fold_hash(head: u64, len: u32, seeds: [u64; 2]) -> u64 {
    let product = u128::from(head ^ seeds[0]) * u128::from((u64::from(len) ^ seeds[1]) | 1);
    (product as u64) ^ ((product >> 64) as u64)
}

impl GroupTable {
    /// Number of groups.
    pub fn len(&self) -> usize {
        self.hashes.len()
    }

    /// Whether there are no groups.
    pub fn is_empty(&self) -> bool {
        self.hashes.is_empty()
    }

    /// Approximate bytes held (keys, hashes, table).
    pub fn bytes(&self) -> usize {
        let keys = match &self.keys {
            KeyStore::Global => 0,
            KeyStore::Utf8(keys) | KeyStore::Rows(keys) => keys.bytes(),
            KeyStore::Int64(keys) => keys.capacity() * 8,
        };
        keys + (self.hashes.capacity() + self.batch_hashes.capacity()) * 8
            + self.table.capacity() * std::mem::size_of::<Slot>()
    }

    /// The slot array and its length minus one, for a kernel that probes
    /// it ([`crate::fused_lookup`]); an empty table gives one empty slot.
    pub(crate) fn raw_slots(&self) -> (*const u8, u64) {
        match self.table.slots.len() {
            0 => (NO_SLOTS.as_ptr().cast(), 0),
            n => (self.table.slots.as_ptr().cast(), n as u64 - 1),
        }
    }

    /// All group ids, in order.
    pub fn all_ids(&self) -> Vec<u32> {
        (0..self.len() as u32).collect()
    }
}

/// A key's head: its first 8 bytes as a little-endian word, zero-padded
/// when shorter (with the length, the whole key: hash tables keep it in
/// their slots to compare short keys without leaving them). Overlapping
/// loads, no copy into a zeroed word, which would stall on store
/// forwarding on every row.
#[inline]
pub(crate) fn key_head(key: &[u8]) -> u64 {
    let n = key.len();
    let half = |at: usize| key[at..at + 4].try_into().map_or(0, u32::from_le_bytes);
    match n {
        0 => 0,
        // Bytes the two halves share land on the same bits.
        1..=3 => {
            u64::from(key[0])
                | u64::from(key[n / 2]) << (8 * (n / 2))
                | u64::from(key[n - 1]) << (8 * (n - 1))
        }
        4..=7 => u64::from(half(0)) | u64::from(half(n - 4)) << (8 * (n - 4)),
        _ => key[..8].try_into().map_or(0, u64::from_le_bytes),
    }
}

/// The head of the `len`-byte key at `start` of `values` ([`key_head`]),
/// read as one word where 8 bytes are there to read: copying a short key
/// into a zeroed word stalls on store forwarding, row after row.
#[inline]
fn head_at(values: &[u8], start: usize, len: usize) -> u64 {
    match values.get(start..start + 8) {
        Some(word) => u64::from_le_bytes(word.try_into().unwrap_or([0; 8])) & head_mask(len),
        None => key_head(&values[start..start + len]),
    }
}

/// The bits of a word read at a key's start that are the key's own
/// bytes (all 8 when it is longer).
#[inline]
fn head_mask(len: usize) -> u64 {
    if len >= 8 {
        u64::MAX
    } else {
        (1u64 << (8 * len)) - 1
    }
}

/// Byte equality that compares short keys (up to 16 bytes, the usual
/// symbol or id) in two overlapping word loads instead of a `memcmp` call,
/// which cost more than the hash probe itself on every row.
#[inline]
pub(crate) fn bytes_eq(a: &[u8], b: &[u8]) -> bool {
    let n = a.len();
    if n != b.len() {
        return false;
    }
    let word = |s: &[u8], at: usize| u64::from_ne_bytes(s[at..at + 8].try_into().unwrap_or([0; 8]));
    let half = |s: &[u8], at: usize| u32::from_ne_bytes(s[at..at + 4].try_into().unwrap_or([0; 4]));
    match n {
        0 => true,
        1..=3 => a.iter().zip(b).all(|(x, y)| x == y),
        4..=8 => half(a, 0) == half(b, 0) && half(a, n - 4) == half(b, n - 4),
        9..=16 => word(a, 0) == word(b, 0) && word(a, n - 8) == word(b, n - 8),
        _ => a == b,
    }
}

/// `group_ids[row] = id_of(row)` for each row `mask` keeps (every row
/// when `None`), 0 for the others.
#[inline(always)]
fn for_rows(
    mask: Option<&BooleanArray>,
    rows: usize,
    group_ids: &mut Vec<usize>,
    mut id_of: impl FnMut(usize) -> usize,
) {
    group_ids.clear();
    match mask {
        None => group_ids.extend((0..rows).map(id_of)),
        Some(mask) => {
            group_ids.resize(rows, 0);
            for row in mask.values().set_indices() {
                group_ids[row] = id_of(row);
            }
        }
    }
}

/// Finds the group whose key is `probe`'s (`equal` compares whole keys
/// longer than 8 bytes with a stored one, by id), or stores it (`push`)
/// as the next id.
#[inline]
fn intern<S>(
    table: &mut SlotTable,
    hashes: &mut Vec<u64>,
    store: &mut S,
    (hash, probe): (u64, Slot),
    equal: impl Fn(&S, u32) -> bool,
    push: impl FnOnce(&mut S),
) -> usize {
    match table.find(hash, |s| s.matches(&probe, || equal(store, s.id))) {
        Some(slot) => slot.id as usize,
        None => insert_new(table, hashes, store, (hash, probe), push),
    }
}

/// Stores a key not in the table as the next id. Out of line: the
/// lookup loops stay small for the hits that are nearly every row.
#[inline(never)]
fn insert_new<S>(
    table: &mut SlotTable,
    hashes: &mut Vec<u64>,
    store: &mut S,
    (hash, probe): (u64, Slot),
    push: impl FnOnce(&mut S),
) -> usize {
    let id = hashes.len() as u32;
    push(store);
    hashes.push(hash);
    table.insert_unique(hash, Slot { id, ..probe }, |s| hashes[s.id as usize]);
    id as usize
}

fn key_type_error(array: &ArrayRef) -> Error {
    Error::new(
        ErrorCode::Execution,
        format!(
            "GROUP BY key produced {}, not the planned type",
            array.data_type()
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// String keys of every length around the 8-byte line get one group
    /// each, found again by lookup, and short keys' hashes spread.
    #[test]
    fn string_keys_of_every_length_get_their_own_groups() {
        let field = Arc::new(arrow::datatypes::Field::new("k", DataType::Utf8, false));
        let encoder = KeyEncoder::new(&[field]).unwrap();
        let keys: Vec<String> = (0..20_000)
            .map(|i: usize| format!("{i:x}{}", "y".repeat(i % 13)))
            .collect();
        let array: ArrayRef = Arc::new(StringArray::from(keys.clone()));
        let arrays = [array];
        let batch = encoder.encode(&arrays).unwrap();
        let mut table = encoder.table();
        for pass in 0..2 {
            for row in 0..keys.len() {
                assert_eq!(
                    encoder.group_id(&mut table, &batch, row),
                    row,
                    "pass {pass}"
                );
                assert_eq!(encoder.find(&table, &batch, row), Some(row));
            }
        }
        assert_eq!(table.len(), keys.len());
        // The table places by the low bits.
        let hashes: Vec<u64> = keys
            .iter()
            .filter(|k| k.len() <= 8)
            .map(|k| encoder.bytes_hash(k.as_bytes(), &Slot::of(k.as_bytes())))
            .collect();
        let distinct = |bits: fn(u64) -> u64| {
            hashes
                .iter()
                .map(|&h| bits(h))
                .collect::<std::collections::HashSet<_>>()
                .len()
        };
        assert!(hashes.len() > 5_000);
        assert_eq!(distinct(|h| h & 255), 256, "every low byte");
        assert!(distinct(|h| h & 0x3fff) > 4_000, "low bits spread");
    }

    /// A string key hashes and reads its head alike wherever it sits in
    /// the values: mid-buffer (a word read) or among the last 8 bytes
    /// (read byte-wise), at every length around 8, and over a sliced
    /// array.
    #[test]
    fn batch_hashes_do_not_depend_on_where_a_key_sits() {
        let field = Arc::new(arrow::datatypes::Field::new("k", DataType::Utf8, false));
        let encoder = KeyEncoder::new(&[field]).unwrap();
        let hashes = |array: &StringArray| {
            let arrays: [ArrayRef; 1] = [Arc::new(array.clone())];
            let keys = encoder.encode_owned(&arrays).unwrap();
            let mut out = Vec::new();
            encoder.hashes_into(&keys, array.len(), &mut out, |hash, head, bytes| {
                (hash, head, bytes.to_vec())
            });
            out
        };
        let words: Vec<String> = (0..14).map(|n| "abcdefghijklmn"[..n].to_string()).collect();
        // Each word alone is hashed at the very end of its values.
        let alone: Vec<_> = words
            .iter()
            .map(|w| hashes(&StringArray::from(vec![w.as_str()]))[0].clone())
            .collect();
        for word in &alone {
            assert_eq!(word.1, key_head(&word.2));
        }
        // Then every word at every position among the others, forwards and
        // backwards, so that each lands both mid-buffer and at the end.
        let mut order: Vec<&str> = words.iter().map(String::as_str).collect();
        for _ in 0..2 {
            let array = StringArray::from(order.clone());
            for slice in [array.clone(), array.slice(3, array.len() - 5)] {
                for (got, word) in hashes(&slice).iter().zip(slice.iter()) {
                    let want = &alone[word.unwrap().len()];
                    assert_eq!(got, want, "{word:?}");
                }
            }
            order.reverse();
        }
    }

    /// The batch lookup finds the groups the row-at-a-time one does, for
    /// string keys of every length (the last ones read from the end of
    /// the values buffer, where no whole word is left) and BIGINTs, with
    /// and without a mask.
    #[test]
    fn batch_lookup_agrees_with_row_lookup() {
        let strings: Vec<String> = (0..5_000)
            .map(|i: usize| {
                let text = format!("{}", i % 700).repeat(4);
                text.chars().take(i % 11).collect()
            })
            .collect();
        let numbers: Vec<i64> = (0..5_000).map(|i: i64| (i % 900) * -7_919).collect();
        let utf8: ArrayRef = Arc::new(StringArray::from(strings));
        let int64: ArrayRef = Arc::new(Int64Array::from(numbers));
        for (data_type, array) in [(DataType::Utf8, utf8), (DataType::Int64, int64)] {
            let field = Arc::new(arrow::datatypes::Field::new("k", data_type, false));
            let encoder = KeyEncoder::new(&[field]).unwrap();
            let arrays = [array.clone()];
            let keys = encoder.encode(&arrays).unwrap();
            let mut by_row = encoder.table();
            let want: Vec<usize> = (0..array.len())
                .map(|row| encoder.group_id(&mut by_row, &keys, row))
                .collect();
            // Half the keys first, so the batch lookup both finds and
            // inserts; then a masked pass over a fresh table.
            let mut table = encoder.table();
            let mut ids = Vec::new();
            let half = array.slice(0, array.len() / 2);
            let half_arrays = [half];
            let half_keys = encoder.encode(&half_arrays).unwrap();
            encoder.resolve(&mut table, &half_keys, None, array.len() / 2, &mut ids);
            assert_eq!(ids, want[..array.len() / 2]);
            encoder.resolve(&mut table, &keys, None, array.len(), &mut ids);
            assert_eq!(ids, want);
            let mask = BooleanArray::from((0..array.len()).map(|i| i % 3 != 1).collect::<Vec<_>>());
            let mut masked = encoder.table();
            encoder.resolve(&mut masked, &keys, Some(&mask), array.len(), &mut ids);
            let mut by_row = encoder.table();
            for (row, &id) in ids.iter().enumerate() {
                let want = match mask.value(row) {
                    true => encoder.group_id(&mut by_row, &keys, row),
                    false => 0,
                };
                assert_eq!(id, want, "row {row}");
            }
        }
    }

    /// Keys stored back to back in the arena come back whole, in both key
    /// kinds: across chunk ends, and keys longer than a chunk.
    #[test]
    fn stored_keys_come_back_whole_across_arena_chunks() {
        let keys: Vec<String> = (0..3_000)
            .map(|i: usize| {
                let len = if i % 1_000 == 7 {
                    ARENA_CHUNK_BYTES + 3 * i
                } else {
                    i % 90
                };
                format!("{i}:{}", "z".repeat(len))
            })
            .collect();
        let strings: ArrayRef = Arc::new(StringArray::from(keys.clone()));
        let numbers: ArrayRef = Arc::new(Int64Array::from_iter_values(0..keys.len() as i64));
        let utf8 = arrow::datatypes::Field::new("k", DataType::Utf8, false);
        for fields in [
            vec![utf8.clone()],
            vec![utf8.with_nullable(true), {
                arrow::datatypes::Field::new("n", DataType::Int64, false)
            }],
        ] {
            let arrays: Vec<ArrayRef> = [strings.clone(), numbers.clone()]
                .into_iter()
                .take(fields.len())
                .collect();
            let fields: Vec<FieldRef> = fields.into_iter().map(Arc::new).collect();
            let encoder = KeyEncoder::new(&fields).unwrap();
            let batch = encoder.encode(&arrays).unwrap();
            let mut table = encoder.table();
            for row in 0..keys.len() {
                assert_eq!(encoder.group_id(&mut table, &batch, row), row);
            }
            for row in 0..keys.len() {
                assert_eq!(encoder.find(&table, &batch, row), Some(row));
            }
            let ids: Vec<u32> = (0..keys.len() as u32).rev().collect();
            let columns = encoder.key_columns(&table, &ids).unwrap();
            let back = columns[0].as_any().downcast_ref::<StringArray>().unwrap();
            for (i, &id) in ids.iter().enumerate() {
                assert_eq!(back.value(i), keys[id as usize]);
            }
            let stored: usize = keys.iter().map(String::len).sum();
            assert!(table.bytes() >= stored);
        }
    }

    /// Up to 8 bytes, a slot's head and length stand for the key: a probe
    /// never asks for the stored key, so they must tell every key apart.
    #[test]
    fn short_keys_differ_in_their_slots() {
        for n in 0..=8usize {
            let a: Vec<u8> = (0..n as u8).map(|i| i.wrapping_mul(37) | 0x80).collect();
            let slot = Slot::of(&a);
            assert!(slot.matches(&Slot::of(&a.clone()), || unreachable!()));
            for at in 0..n {
                let mut b = a.clone();
                b[at] ^= 1;
                assert!(
                    !slot.matches(&Slot::of(&b), || unreachable!()),
                    "length {n}, byte {at}"
                );
            }
            let mut longer = a.clone();
            longer.push(a.last().copied().unwrap_or(0));
            assert!(
                !slot.matches(&Slot::of(&longer), || true),
                "length {n} vs {}",
                n + 1
            );
        }
        assert!(!Slot::of_int(-1).matches(&Slot::of_int(1), || unreachable!()));
    }

    /// Every way of reading a head gives the key's first 8 bytes,
    /// zero-padded: the slots hold heads read one way and probes another.
    #[test]
    fn heads_are_the_zero_padded_first_word() {
        let values: Vec<u8> = (0..40u8).map(|i| i.wrapping_mul(59) | 1).collect();
        for start in 0..values.len() {
            for len in 0..=(values.len() - start).min(12) {
                let key = &values[start..start + len];
                let mut word = [0u8; 8];
                let n = len.min(8);
                word[..n].copy_from_slice(&key[..n]);
                let want = u64::from_le_bytes(word);
                assert_eq!(key_head(key), want, "length {len}");
                assert_eq!(
                    head_at(&values, start, len),
                    want,
                    "at {start}, length {len}"
                );
            }
        }
    }

    #[test]
    fn short_key_equality_sees_every_byte() {
        for n in 0..40usize {
            let a: Vec<u8> = (0..n as u8).map(|i| i.wrapping_mul(37) | 0x80).collect();
            assert!(bytes_eq(&a, &a.clone()), "length {n}");
            for at in 0..n {
                let mut b = a.clone();
                b[at] ^= 1;
                assert!(!bytes_eq(&a, &b), "length {n}, byte {at}");
            }
            let mut longer = a.clone();
            longer.push(0);
            assert!(!bytes_eq(&a, &longer), "length {n} vs {}", n + 1);
        }
    }
}
