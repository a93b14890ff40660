//! Segment: one preallocated, zero-filled, append-only file of a partition's log.
//!
//! Layout (docs/format.md#segment): block 0 is the segment header; batches and padding
//! markers follow from byte 4096; the rest of the file is zeros. A segment is named
//! `{base_offset:020}-{base_index:020}.seg` (the index keeps names unique when control batches,
//! which take no offset, fill a segment).
//!
//! Invariants: `write_position` is block-aligned and every byte below it is durable and never
//! rewritten; `write_position <= capacity`; a sealed segment takes no more writes.

#![forbid(unsafe_code)]

use std::rc::Rc;

use zerocopy::little_endian::{I64, U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use crate::io::DirectFile;
use crate::limits::BLOCK_SIZE;
use crate::segment_index::SegmentIndex;
use crate::types::{LogIndex, Offset, Term};

/// Magic of a segment header: "RLGS".
pub const SEGMENT_MAGIC: u32 = u32::from_le_bytes(*b"RLGS");
/// Current segment format version.
pub const SEGMENT_VERSION: u16 = 1;
/// Bytes of `SegmentHeader` (the rest of block 0 is zero).
pub const SEGMENT_HEADER_SIZE: usize = 64;
/// File name suffix of a segment.
pub const SEGMENT_SUFFIX: &str = ".seg";
/// The preallocated, zero-filled spare segment ready to be renamed at the next roll.
pub const SPARE_READY: &str = "spare.seg.ready";
/// A spare being zero-filled (removed at open: it may be incomplete).
pub const SPARE_FILLING: &str = "spare.seg.filling";
/// A reset in progress: the new first segment, header written, not yet renamed.
pub const RESET_PENDING: &str = "reset.seg.pending";

/// The segment header, exactly as stored at byte 0 (all fields little-endian).
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct SegmentHeader {
    pub magic: U32,
    pub version: U16,
    pub flags: U16,
    /// crc32 of block 0 but this field (bytes 0..8 and 12..4096, which must be zero past 64).
    pub crc: U32,
    pub reserved: U32,
    pub base_offset: U64,
    pub base_index: U64,
    /// Term of the batch at `base_index - 1` (0 if none).
    pub prev_term: U64,
    pub segment_size: U64,
    /// `header_crc` of the batch at `base_index - 1` (0 at the start of a chain).
    pub prev_crc: U32,
    pub reserved2: U32,
    pub created_unix_ms: I64,
}

const _: () = assert!(std::mem::size_of::<SegmentHeader>() == SEGMENT_HEADER_SIZE);
const _: () = assert!(SEGMENT_HEADER_SIZE <= BLOCK_SIZE);

/// The decoded fields of a segment header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentMeta {
    pub base_offset: Offset,
    pub base_index: LogIndex,
    pub prev_term: Term,
    pub prev_crc: u32,
    pub segment_size: u64,
    pub created_unix_ms: i64,
}

/// What block 0 of a segment holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeaderState {
    /// All zeros: the first flush into the segment never landed.
    Zero,
    Valid(SegmentMeta),
    Invalid,
}

fn block_crc(block: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&block[0..8]);
    hasher.update(&block[12..BLOCK_SIZE]);
    hasher.finalize()
}

/// Encodes a header into `block` (exactly `BLOCK_SIZE` bytes).
pub fn encode_header(meta: &SegmentMeta, block: &mut [u8]) {
    assert_eq!(block.len(), BLOCK_SIZE);
    block.fill(0);
    let header = SegmentHeader {
        magic: SEGMENT_MAGIC.into(),
        version: SEGMENT_VERSION.into(),
        flags: 0.into(),
        crc: 0.into(),
        reserved: 0.into(),
        base_offset: meta.base_offset.0.into(),
        base_index: meta.base_index.0.into(),
        prev_term: meta.prev_term.0.into(),
        segment_size: meta.segment_size.into(),
        prev_crc: meta.prev_crc.into(),
        reserved2: 0.into(),
        created_unix_ms: meta.created_unix_ms.into(),
    };
    block[..SEGMENT_HEADER_SIZE].copy_from_slice(header.as_bytes());
    let crc = block_crc(block);
    block[8..12].copy_from_slice(&crc.to_le_bytes());
}

/// Decodes block 0 of a segment (any length; less than a block is `Invalid`).
pub fn decode_header(block: &[u8]) -> HeaderState {
    let Some(block) = block.get(..BLOCK_SIZE) else {
        return if block.iter().all(|b| *b == 0) {
            HeaderState::Zero
        } else {
            HeaderState::Invalid
        };
    };
    if block.iter().all(|b| *b == 0) {
        return HeaderState::Zero;
    }
    let Ok(header) = SegmentHeader::ref_from_bytes(&block[..SEGMENT_HEADER_SIZE]) else {
        return HeaderState::Invalid;
    };
    if header.magic.get() != SEGMENT_MAGIC
        || header.version.get() != SEGMENT_VERSION
        || header.crc.get() != block_crc(block)
    {
        return HeaderState::Invalid;
    }
    HeaderState::Valid(SegmentMeta {
        base_offset: Offset(header.base_offset.get()),
        base_index: LogIndex(header.base_index.get()),
        prev_term: Term(header.prev_term.get()),
        prev_crc: header.prev_crc.get(),
        segment_size: header.segment_size.get(),
        created_unix_ms: header.created_unix_ms.get(),
    })
}

/// The file name of the segment starting at `base_offset` / `base_index`.
pub fn segment_name(base_offset: Offset, base_index: LogIndex) -> String {
    format!("{:020}-{:020}{SEGMENT_SUFFIX}", base_offset.0, base_index.0)
}

/// The index file name beside a segment.
pub fn index_name(segment_name: &str) -> String {
    format!("{}.idx", segment_name.trim_end_matches(SEGMENT_SUFFIX))
}

/// Parses a segment file name into its base offset and index.
pub fn parse_segment_name(name: &str) -> Option<(Offset, LogIndex)> {
    let stem = name.strip_suffix(SEGMENT_SUFFIX)?;
    let (offset, index) = stem.split_once('-')?;
    if offset.len() != 20 || index.len() != 20 {
        return None;
    }
    Some((Offset(offset.parse().ok()?), LogIndex(index.parse().ok()?)))
}

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub fn now_unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// One segment of an open log (in memory).
#[derive(Debug)]
pub(crate) struct Segment {
    pub name: String,
    pub file: Rc<DirectFile>,
    /// Size of this segment's file (segments keep the size they were created with, so a
    /// changed `segment_size_bytes` applies to new segments only).
    pub capacity: u64,
    pub base_offset: Offset,
    pub base_index: LogIndex,
    /// Term of the batch before `base_index`.
    pub prev_term: Term,
    /// Chain value of the batch before `base_index`.
    pub prev_crc: u32,
    /// Whether block 0 holds the header (else the next write starts with it).
    pub header_written: bool,
    /// Next write position: block-aligned; bytes below are durable.
    pub write_position: u64,
    /// End of the last batch (`<= write_position`).
    pub data_end: u64,
    pub next_index: LogIndex,
    pub next_offset: Offset,
    /// Chain value (header crc) of the last batch, or `prev_crc` if empty.
    pub last_crc: u32,
    /// Term of the last batch, or `prev_term` if empty.
    pub last_term: Term,
    pub index: SegmentIndex,
    /// Sealed: its index file is persisted and it takes no more writes.
    pub sealed: bool,
}

impl Segment {
    pub fn meta(&self) -> SegmentMeta {
        SegmentMeta {
            base_offset: self.base_offset,
            base_index: self.base_index,
            prev_term: self.prev_term,
            prev_crc: self.prev_crc,
            segment_size: self.capacity,
            created_unix_ms: now_unix_ms(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.next_index == self.base_index
    }

    /// Bytes of the segment in use (for retention by bytes).
    pub fn used_bytes(&self) -> u64 {
        self.write_position
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> SegmentMeta {
        SegmentMeta {
            base_offset: Offset(1234),
            base_index: LogIndex(56),
            prev_term: Term(7),
            prev_crc: 0xabcd_ef01,
            segment_size: 1 << 20,
            created_unix_ms: 1_700_000_000_000,
        }
    }

    #[test]
    fn segment_header_round_trips() {
        let mut block = vec![0u8; BLOCK_SIZE];
        encode_header(&meta(), &mut block);
        assert_eq!(decode_header(&block), HeaderState::Valid(meta()));
    }

    #[test]
    fn segment_header_detects_any_flipped_bit_in_the_block() {
        let mut block = vec![0u8; BLOCK_SIZE];
        encode_header(&meta(), &mut block);
        for bit in (0..BLOCK_SIZE * 8).step_by(7) {
            let mut damaged = block.clone();
            damaged[bit / 8] ^= 1 << (bit % 8);
            assert_eq!(decode_header(&damaged), HeaderState::Invalid, "bit {bit}");
        }
    }

    #[test]
    fn a_zero_block_is_an_unwritten_header() {
        assert_eq!(decode_header(&[0u8; BLOCK_SIZE]), HeaderState::Zero);
        assert_eq!(decode_header(&[1u8; 10]), HeaderState::Invalid);
    }

    #[test]
    fn segment_names_sort_by_offset_and_parse_back() {
        let name = segment_name(Offset(42), LogIndex(7));
        assert_eq!(name, "00000000000000000042-00000000000000000007.seg");
        assert_eq!(parse_segment_name(&name), Some((Offset(42), LogIndex(7))));
        assert_eq!(index_name(&name), "00000000000000000042-00000000000000000007.idx");
        assert_eq!(parse_segment_name("spare.seg.ready"), None);
        assert_eq!(parse_segment_name("x-y.seg"), None);
    }
}
