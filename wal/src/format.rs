//! The on-disk format: segment and record headers (see `FORMAT.md`).
//!
//! Every multi-byte integer is little-endian. Headers are plain structs of
//! fixed-endian integers (`zerocopy`), so reading one is a bounds-checked
//! copy and writing one is `as_bytes()`.

use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// Version of the format this crate writes and reads.
pub const FORMAT_VERSION: u32 = 1;
/// First bytes of every segment file.
pub const SEGMENT_MAGIC: [u8; 8] = *b"LDBWALSG";
/// First bytes of every record header ("LWRC" read as little-endian).
pub const RECORD_MAGIC: u32 = u32::from_le_bytes(*b"LWRC");
/// Size of the segment header; the first record starts here.
pub const SEGMENT_HEADER_BYTES: usize = 64;
/// Size of a record header.
pub const RECORD_HEADER_BYTES: usize = 32;
/// Records start at multiples of this within a segment.
pub const RECORD_ALIGN: usize = 8;
/// The unit of every write (O_DIRECT).
pub const BLOCK_BYTES: usize = 4096;

/// The header at offset 0 of every segment file.
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct SegmentHeader {
    pub magic: [u8; 8],
    pub version: U32,
    pub shard: U32,
    pub index: U64,
    pub first_lsn: U64,
    pub segment_bytes: U64,
    pub generation: U32,
    pub reserved: [u8; 16],
    /// CRC32C of bytes 0..60.
    pub crc: U32,
}

/// The header in front of every record's payload.
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct RecordHeader {
    pub magic: U32,
    pub version: U16,
    pub kind: U16,
    pub payload_bytes: U32,
    pub generation: U32,
    pub lsn: U64,
    pub reserved: U32,
    /// CRC32C of header bytes 0..28 followed by the payload.
    pub crc: U32,
}

const _: () = assert!(std::mem::size_of::<SegmentHeader>() == SEGMENT_HEADER_BYTES);
const _: () = assert!(std::mem::size_of::<RecordHeader>() == RECORD_HEADER_BYTES);

impl SegmentHeader {
    pub fn new(
        shard: u32,
        index: u64,
        first_lsn: u64,
        segment_bytes: u64,
        generation: u32,
    ) -> Self {
        let mut header = Self {
            magic: SEGMENT_MAGIC,
            version: FORMAT_VERSION.into(),
            shard: shard.into(),
            index: index.into(),
            first_lsn: first_lsn.into(),
            segment_bytes: segment_bytes.into(),
            generation: generation.into(),
            reserved: [0; 16],
            crc: 0.into(),
        };
        header.crc = crc32c::crc32c(&header.as_bytes()[..60]).into();
        header
    }

    /// Reads and checks a segment header; `None` if it is not one.
    pub fn parse(bytes: &[u8]) -> Option<Self> {
        let (header, _) = Self::read_from_prefix(bytes).ok()?;
        let valid = header.magic == SEGMENT_MAGIC
            && header.crc.get() == crc32c::crc32c(&header.as_bytes()[..60]);
        valid.then_some(header)
    }
}

impl RecordHeader {
    /// A header for `payload`, checksum included.
    pub fn new(kind: u16, generation: u32, lsn: u64, payload: &[u8]) -> Self {
        let mut header = Self {
            magic: RECORD_MAGIC.into(),
            version: (FORMAT_VERSION as u16).into(),
            kind: kind.into(),
            payload_bytes: (payload.len() as u32).into(),
            generation: generation.into(),
            lsn: lsn.into(),
            reserved: 0.into(),
            crc: 0.into(),
        };
        header.crc = checksum(&header, payload).into();
        header
    }
}

/// CRC32C over the header (without its checksum field) and the payload.
pub fn checksum(header: &RecordHeader, payload: &[u8]) -> u32 {
    let crc = crc32c::crc32c(&header.as_bytes()[..28]);
    crc32c::crc32c_append(crc, payload)
}

/// Bytes a record with `payload_bytes` of payload occupies, padding included.
pub const fn record_span(payload_bytes: usize) -> usize {
    (RECORD_HEADER_BYTES + payload_bytes).next_multiple_of(RECORD_ALIGN)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_round_trip_and_detect_damage() {
        let segment = SegmentHeader::new(3, 7, 1000, 1 << 20, 2);
        let parsed = SegmentHeader::parse(segment.as_bytes()).expect("valid");
        assert_eq!(parsed.first_lsn.get(), 1000);
        let mut damaged = segment.as_bytes().to_vec();
        damaged[20] ^= 1;
        assert!(SegmentHeader::parse(&damaged).is_none());

        let payload = b"hello";
        let record = RecordHeader::new(1, 2, 1000, payload);
        assert_eq!(record.crc.get(), checksum(&record, payload));
        assert_ne!(record.crc.get(), checksum(&record, b"hellO"));
        assert_eq!(record_span(5), 40);
        assert_eq!(record_span(0), 32);
    }
}
