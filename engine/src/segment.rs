//! Segment: one preallocated, append-only file of a partition's log.
//!
//! Layout (docs/format.md#segment): block 0 is the segment header; batches and padding
//! markers follow from byte 4096; the rest of the file is zeros, or, in a *recycled* segment
//! (header flag `SEGMENT_FLAG_RECYCLED`), zeros and stale bytes of the file's earlier lives,
//! whose batches all have indices below the header's `stale_index_end`. A segment is named
//! `{base_offset:020}-{base_index:020}.seg` (the index keeps names unique when control batches,
//! which take no offset, fill a segment).
//!
//! Invariants: `write_position` is block-aligned and every byte below it is durable and never
//! rewritten; `write_position <= capacity`; a sealed segment takes no more writes; a recycled
//! segment's `stale_index_end <= base_index` (every stale batch in it has an index below the
//! segment's own batches, so a stale batch can never continue the segment or pass as its
//! data).

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
pub const SEGMENT_HEADER_SIZE: usize = 72;
/// Header flag: the file held earlier segments; bytes past the write position may be stale
/// batches, all with indices below `stale_index_end`.
pub const SEGMENT_FLAG_RECYCLED: u16 = 1 << 0;
/// Header flag (with `SEGMENT_FLAG_RECYCLED`): block 0 of a prepared recycled spare, not yet a
/// segment (`base_*`, `prev_*` are zero). A segment whose block 0 still says so received no
/// flush: it is empty.
pub const SEGMENT_FLAG_SPARE: u16 = 1 << 1;
/// Every header flag this version knows.
pub const SEGMENT_FLAGS_KNOWN: u16 = SEGMENT_FLAG_RECYCLED | SEGMENT_FLAG_SPARE;
/// Prefix of a segment kept by retention for recycling, named
/// `spare.recycled-{stale_index_end:020}`: its old bytes, index file deleted.
pub const RECYCLE_CANDIDATE_PREFIX: &str = "spare.recycled-";
/// File name suffix of a segment.
pub const SEGMENT_SUFFIX: &str = ".seg";
/// The preallocated spare segment ready to be renamed at the next roll: zero-filled, or a
/// recycled segment whose block 0 holds a recycled-spare header.
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
    /// With `SEGMENT_FLAG_RECYCLED`: every stale batch in the file has an index below this
    /// (0 without the flag).
    pub stale_index_end: U64,
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
    /// `Some(bound)` for a recycled segment: every stale batch in the file has an index below
    /// `bound` (<= `base_index`).
    pub recycled: Option<LogIndex>,
}

/// What block 0 of a segment holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeaderState {
    /// All zeros: the first flush into the segment never landed.
    Zero,
    Valid(SegmentMeta),
    /// A prepared recycled spare's header: no flush landed in the file since it was recycled.
    RecycledSpare(RecycledSpare),
    Invalid,
}

/// Block 0 of a prepared recycled spare.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecycledSpare {
    /// Every stale batch in the file has an index below this.
    pub stale_index_end: LogIndex,
    pub segment_size: u64,
}

fn block_crc(block: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&block[0..8]);
    hasher.update(&block[12..BLOCK_SIZE]);
    hasher.finalize()
}

/// Encodes a header into `block` (exactly `BLOCK_SIZE` bytes).
pub fn encode_header(meta: &SegmentMeta, block: &mut [u8]) {
    let flags = if meta.recycled.is_some() { SEGMENT_FLAG_RECYCLED } else { 0 };
    encode_block(meta, flags, block);
}

/// Encodes block 0 of a prepared recycled spare into `block` (exactly `BLOCK_SIZE` bytes).
pub fn encode_spare_header(spare: &RecycledSpare, block: &mut [u8]) {
    let meta = SegmentMeta {
        base_offset: Offset(0),
        base_index: LogIndex(0),
        prev_term: Term(0),
        prev_crc: 0,
        segment_size: spare.segment_size,
        created_unix_ms: now_unix_ms(),
        recycled: Some(spare.stale_index_end),
    };
    encode_block(&meta, SEGMENT_FLAG_RECYCLED | SEGMENT_FLAG_SPARE, block);
}

fn encode_block(meta: &SegmentMeta, flags: u16, block: &mut [u8]) {
    assert_eq!(block.len(), BLOCK_SIZE);
    block.fill(0);
    let header = SegmentHeader {
        magic: SEGMENT_MAGIC.into(),
        version: SEGMENT_VERSION.into(),
        flags: flags.into(),
        crc: 0.into(),
        reserved: 0.into(),
        base_offset: meta.base_offset.0.into(),
        base_index: meta.base_index.0.into(),
        prev_term: meta.prev_term.0.into(),
        segment_size: meta.segment_size.into(),
        prev_crc: meta.prev_crc.into(),
        reserved2: 0.into(),
        created_unix_ms: meta.created_unix_ms.into(),
        stale_index_end: meta.recycled.map_or(0, |bound| bound.0).into(),
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
    let flags = header.flags.get();
    let stale_index_end = header.stale_index_end.get();
    let recycled = flags & SEGMENT_FLAG_RECYCLED != 0;
    if flags & !SEGMENT_FLAGS_KNOWN != 0
        || recycled != (stale_index_end != 0)
        || (flags & SEGMENT_FLAG_SPARE != 0 && !recycled)
    {
        return HeaderState::Invalid;
    }
    if flags & SEGMENT_FLAG_SPARE != 0 {
        return HeaderState::RecycledSpare(RecycledSpare {
            stale_index_end: LogIndex(stale_index_end),
            segment_size: header.segment_size.get(),
        });
    }
    HeaderState::Valid(SegmentMeta {
        base_offset: Offset(header.base_offset.get()),
        base_index: LogIndex(header.base_index.get()),
        prev_term: Term(header.prev_term.get()),
        prev_crc: header.prev_crc.get(),
        segment_size: header.segment_size.get(),
        created_unix_ms: header.created_unix_ms.get(),
        recycled: recycled.then_some(LogIndex(stale_index_end)),
    })
}

/// The name of a retention victim kept for recycling (see `RECYCLE_CANDIDATE_PREFIX`).
pub fn recycle_candidate_name(stale_index_end: LogIndex) -> String {
    format!("{RECYCLE_CANDIDATE_PREFIX}{:020}", stale_index_end.0)
}

/// Parses a recycling candidate's name into its stale bound.
pub fn parse_recycle_candidate_name(name: &str) -> Option<LogIndex> {
    let digits = name.strip_prefix(RECYCLE_CANDIDATE_PREFIX)?;
    if digits.len() != 20 {
        return None;
    }
    digits.parse().ok().map(LogIndex)
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
    /// `Some(bound)`: the file is recycled; stale batches past the write position have
    /// indices below `bound` (<= `base_index`).
    pub recycled: Option<LogIndex>,
    /// The file may hold batches past `data_end` with indices >= `next_index` (cut by a
    /// truncation, or rebuilt by a rescan): never recycled, deleted by retention.
    pub cut: bool,
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
            recycled: self.recycled,
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
            recycled: None,
        }
    }

    #[test]
    fn a_recycled_segment_header_round_trips_with_its_stale_bound() {
        let recycled = SegmentMeta { recycled: Some(LogIndex(50)), ..meta() };
        let mut block = vec![0u8; BLOCK_SIZE];
        encode_header(&recycled, &mut block);
        assert_eq!(u16::from_le_bytes([block[6], block[7]]), SEGMENT_FLAG_RECYCLED);
        assert_eq!(decode_header(&block), HeaderState::Valid(recycled));
    }

    #[test]
    fn a_recycled_spare_header_is_told_apart_from_a_segment_header() {
        let spare = RecycledSpare { stale_index_end: LogIndex(99), segment_size: 1 << 20 };
        let mut block = vec![0u8; BLOCK_SIZE];
        encode_spare_header(&spare, &mut block);
        assert_eq!(decode_header(&block), HeaderState::RecycledSpare(spare));
    }

    #[test]
    fn unknown_header_flags_or_a_stale_bound_without_the_flag_are_invalid() {
        let mut block = vec![0u8; BLOCK_SIZE];
        encode_header(&meta(), &mut block);
        let mut flagged = block.clone();
        flagged[6] = 0x04;
        let crc = block_crc(&flagged);
        flagged[8..12].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(decode_header(&flagged), HeaderState::Invalid);
        let mut bound = block.clone();
        bound[64] = 7;
        let crc = block_crc(&bound);
        bound[8..12].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(decode_header(&bound), HeaderState::Invalid);
    }

    #[test]
    fn recycle_candidate_names_carry_their_stale_bound() {
        let name = recycle_candidate_name(LogIndex(1234));
        assert_eq!(name, "spare.recycled-00000000000000001234");
        assert_eq!(parse_recycle_candidate_name(&name), Some(LogIndex(1234)));
        assert_eq!(parse_recycle_candidate_name("spare.recycled-12"), None);
        assert_eq!(parse_segment_name(&name), None);
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
