//! Sparse per-segment index: offset and Raft index -> file position, plus the term-change
//! points and control batches of the segment (docs/format.md#index).
//!
//! Built in memory as batches are flushed (or scanned at recovery) and persisted as
//! `{segment}.idx` when the segment is sealed, so that recovery trusts it instead of
//! rescanning the segment.
//!
//! Invariants: entries are sorted by position, offset and index; the first entry is the first
//! batch of the segment; two entries are at least `index_interval_bytes` apart; term points are
//! sorted with strictly increasing terms.

#![forbid(unsafe_code)]

use zerocopy::little_endian::{I64, U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use crate::batch::BatchHeader;
use crate::limits::{block_ceil, INDEX_ENTRIES_MAX, INDEX_POINTS_MAX};
use crate::types::{LogIndex, Offset, Term};

/// Magic of an index file: "RLGI".
pub const INDEX_MAGIC: u32 = u32::from_le_bytes(*b"RLGI");
/// Current index file version.
pub const INDEX_VERSION: u16 = 1;
/// Size of `IndexFileHeader`.
pub const INDEX_HEADER_SIZE: usize = 112;
const ENTRY_SIZE: usize = 24;
const TERM_POINT_SIZE: usize = 16;
const CONTROL_SIZE: usize = 16;

/// One sparse index entry: the batch starting at `position` has this base offset and index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IndexEntry {
    pub offset: Offset,
    pub index: LogIndex,
    pub position: u32,
}

/// A control batch of the segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ControlPoint {
    pub index: LogIndex,
    pub flags: u16,
    pub position: u32,
}

/// The in-memory sparse index of one segment.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SegmentIndex {
    pub entries: Vec<IndexEntry>,
    /// `(first index, term)` of every term that starts in this segment.
    pub terms: Vec<(LogIndex, Term)>,
    pub controls: Vec<ControlPoint>,
    /// Newest `max_timestamp_ms` of the segment's batches (`i64::MIN` if none).
    pub max_timestamp_ms: i64,
}

/// Everything an index file records about a sealed segment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SealedIndex {
    pub base_offset: Offset,
    pub base_index: LogIndex,
    pub next_offset: Offset,
    pub next_index: LogIndex,
    pub data_end: u64,
    pub write_position: u64,
    pub prev_term: Term,
    pub last_term: Term,
    pub prev_crc: u32,
    pub last_crc: u32,
    pub index: SegmentIndex,
    /// The segment was cut (truncation or recovery): bytes past `data_end` may hold batches
    /// with indices >= `next_index`, so the file is never recycled (`INDEX_FLAG_CUT`).
    pub cut: bool,
}

/// Index header flag: the segment was cut; never recycle its file.
pub const INDEX_FLAG_CUT: u16 = 1 << 0;

#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
struct IndexFileHeader {
    magic: U32,
    version: U16,
    /// `INDEX_FLAG_CUT` or 0.
    flags: U16,
    /// crc32 of bytes 0..8 and 12..length.
    crc: U32,
    length: U32,
    base_offset: U64,
    base_index: U64,
    next_offset: U64,
    next_index: U64,
    data_end: U64,
    write_position: U64,
    prev_term: U64,
    last_term: U64,
    prev_crc: U32,
    last_crc: U32,
    max_timestamp_ms: I64,
    entry_count: U32,
    term_count: U32,
    control_count: U32,
    reserved2: U32,
}

const _: () = assert!(std::mem::size_of::<IndexFileHeader>() == INDEX_HEADER_SIZE);

#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
struct EntryRecord {
    offset: U64,
    index: U64,
    position: U32,
    reserved: U32,
}

#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
struct TermRecord {
    index: U64,
    term: U64,
}

#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
struct ControlRecord {
    index: U64,
    flags: U16,
    reserved: U16,
    position: U32,
}

const _: () = assert!(std::mem::size_of::<EntryRecord>() == ENTRY_SIZE);
const _: () = assert!(std::mem::size_of::<TermRecord>() == TERM_POINT_SIZE);
const _: () = assert!(std::mem::size_of::<ControlRecord>() == CONTROL_SIZE);

impl SegmentIndex {
    pub fn new() -> Self {
        SegmentIndex { max_timestamp_ms: i64::MIN, ..Default::default() }
    }

    /// Records a batch at `position`; `term_before` is the term of the batch before it.
    pub fn note_batch(
        &mut self,
        header: &BatchHeader,
        position: u64,
        interval_bytes: u32,
        term_before: Term,
    ) {
        let position = position as u32;
        let due = match self.entries.last() {
            None => true,
            Some(last) => position - last.position >= interval_bytes,
        };
        if due {
            self.entries.push(IndexEntry {
                offset: header.base_offset(),
                index: header.index(),
                position,
            });
        }
        if header.term() != term_before {
            self.terms.push((header.index(), header.term()));
        }
        if header.is_control() {
            self.controls.push(ControlPoint {
                index: header.index(),
                flags: header.flags.get(),
                position,
            });
        }
        self.max_timestamp_ms = self.max_timestamp_ms.max(header.max_timestamp_ms.get());
    }

    /// Position to start scanning from to find the first batch that ends after `offset`
    /// (or a control batch at `offset`): the last entry with a smaller base offset.
    pub fn position_for_offset(&self, offset: Offset) -> Option<u32> {
        let at = self.entries.partition_point(|e| e.offset < offset);
        self.entries.get(at.saturating_sub(1)).map(|e| e.position)
    }

    /// Position to start scanning from to find the batch with Raft index `index`.
    pub fn position_for_index(&self, index: LogIndex) -> Option<u32> {
        let at = self.entries.partition_point(|e| e.index <= index);
        self.entries.get(at.saturating_sub(1)).map(|e| e.position)
    }

    /// Forgets every batch at or above `index`.
    pub fn truncate_from(&mut self, index: LogIndex) {
        self.entries.retain(|e| e.index < index);
        self.terms.retain(|t| t.0 < index);
        self.controls.retain(|c| c.index < index);
    }
}

/// Encodes an index file, zero-padded to a block multiple.
pub fn encode_index(sealed: &SealedIndex) -> Vec<u8> {
    let index = &sealed.index;
    let length = INDEX_HEADER_SIZE
        + index.entries.len() * ENTRY_SIZE
        + index.terms.len() * TERM_POINT_SIZE
        + index.controls.len() * CONTROL_SIZE;
    let mut out = Vec::with_capacity(block_ceil(length as u64) as usize);
    let header = IndexFileHeader {
        magic: INDEX_MAGIC.into(),
        version: INDEX_VERSION.into(),
        flags: if sealed.cut { INDEX_FLAG_CUT } else { 0 }.into(),
        crc: 0.into(),
        length: (length as u32).into(),
        base_offset: sealed.base_offset.0.into(),
        base_index: sealed.base_index.0.into(),
        next_offset: sealed.next_offset.0.into(),
        next_index: sealed.next_index.0.into(),
        data_end: sealed.data_end.into(),
        write_position: sealed.write_position.into(),
        prev_term: sealed.prev_term.0.into(),
        last_term: sealed.last_term.0.into(),
        prev_crc: sealed.prev_crc.into(),
        last_crc: sealed.last_crc.into(),
        max_timestamp_ms: index.max_timestamp_ms.into(),
        entry_count: (index.entries.len() as u32).into(),
        term_count: (index.terms.len() as u32).into(),
        control_count: (index.controls.len() as u32).into(),
        reserved2: 0.into(),
    };
    out.extend_from_slice(header.as_bytes());
    for e in &index.entries {
        let record = EntryRecord {
            offset: e.offset.0.into(),
            index: e.index.0.into(),
            position: e.position.into(),
            reserved: 0.into(),
        };
        out.extend_from_slice(record.as_bytes());
    }
    for (i, t) in &index.terms {
        out.extend_from_slice(TermRecord { index: i.0.into(), term: t.0.into() }.as_bytes());
    }
    for c in &index.controls {
        let record = ControlRecord {
            index: c.index.0.into(),
            flags: c.flags.into(),
            reserved: 0.into(),
            position: c.position.into(),
        };
        out.extend_from_slice(record.as_bytes());
    }
    let crc = body_crc(&out);
    out[8..12].copy_from_slice(&crc.to_le_bytes());
    out.resize(block_ceil(length as u64) as usize, 0);
    out
}

fn body_crc(bytes: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&bytes[0..8]);
    hasher.update(&bytes[12..]);
    hasher.finalize()
}

/// Decodes an index file; `None` if it is damaged in any way (the caller rescans).
pub fn decode_index(bytes: &[u8]) -> Option<SealedIndex> {
    let header = IndexFileHeader::read_from_bytes(bytes.get(..INDEX_HEADER_SIZE)?).ok()?;
    if header.magic.get() != INDEX_MAGIC
        || header.version.get() != INDEX_VERSION
        || header.flags.get() & !INDEX_FLAG_CUT != 0
    {
        return None;
    }
    let (entries, terms, controls) = (
        header.entry_count.get() as usize,
        header.term_count.get() as usize,
        header.control_count.get() as usize,
    );
    if entries > INDEX_ENTRIES_MAX || terms > INDEX_POINTS_MAX || controls > INDEX_POINTS_MAX {
        return None;
    }
    let length = header.length.get() as usize;
    let expected = INDEX_HEADER_SIZE
        + entries * ENTRY_SIZE
        + terms * TERM_POINT_SIZE
        + controls * CONTROL_SIZE;
    if length != expected {
        return None;
    }
    let body = bytes.get(..length)?;
    if body_crc(body) != header.crc.get() || bytes[length..].iter().any(|b| *b != 0) {
        return None;
    }
    let mut rest = &body[INDEX_HEADER_SIZE..];
    let mut index =
        SegmentIndex { max_timestamp_ms: header.max_timestamp_ms.get(), ..Default::default() };
    for _ in 0..entries {
        let (record, tail) = EntryRecord::read_from_prefix(rest).ok()?;
        rest = tail;
        index.entries.push(IndexEntry {
            offset: Offset(record.offset.get()),
            index: LogIndex(record.index.get()),
            position: record.position.get(),
        });
    }
    for _ in 0..terms {
        let (record, tail) = TermRecord::read_from_prefix(rest).ok()?;
        rest = tail;
        index.terms.push((LogIndex(record.index.get()), Term(record.term.get())));
    }
    for _ in 0..controls {
        let (record, tail) = ControlRecord::read_from_prefix(rest).ok()?;
        rest = tail;
        index.controls.push(ControlPoint {
            index: LogIndex(record.index.get()),
            flags: record.flags.get(),
            position: record.position.get(),
        });
    }
    let sealed = SealedIndex {
        base_offset: Offset(header.base_offset.get()),
        base_index: LogIndex(header.base_index.get()),
        next_offset: Offset(header.next_offset.get()),
        next_index: LogIndex(header.next_index.get()),
        data_end: header.data_end.get(),
        write_position: header.write_position.get(),
        prev_term: Term(header.prev_term.get()),
        last_term: Term(header.last_term.get()),
        prev_crc: header.prev_crc.get(),
        last_crc: header.last_crc.get(),
        index,
        cut: header.flags.get() & INDEX_FLAG_CUT != 0,
    };
    sane(&sealed).then_some(sealed)
}

fn sane(s: &SealedIndex) -> bool {
    let sorted = s.index.entries.windows(2).all(|w| {
        w[0].position < w[1].position && w[0].offset <= w[1].offset && w[0].index < w[1].index
    });
    s.next_index >= s.base_index
        && s.next_offset >= s.base_offset
        && s.data_end <= s.write_position
        && sorted
        && s.index
            .entries
            .iter()
            .all(|e| e.index < s.next_index && (e.position as u64) < s.data_end)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> SealedIndex {
        let mut index = SegmentIndex::new();
        index.entries = vec![
            IndexEntry { offset: Offset(10), index: LogIndex(5), position: 4096 },
            IndexEntry { offset: Offset(30), index: LogIndex(9), position: 70_000 },
            IndexEntry { offset: Offset(55), index: LogIndex(14), position: 140_000 },
        ];
        index.terms = vec![(LogIndex(5), Term(2)), (LogIndex(12), Term(3))];
        index.controls = vec![ControlPoint { index: LogIndex(12), flags: 1, position: 120_000 }];
        index.max_timestamp_ms = 99;
        SealedIndex {
            base_offset: Offset(10),
            base_index: LogIndex(5),
            next_offset: Offset(60),
            next_index: LogIndex(16),
            data_end: 150_000,
            write_position: 151_552,
            prev_term: Term(1),
            last_term: Term(3),
            prev_crc: 1,
            last_crc: 2,
            index,
            cut: false,
        }
    }

    #[test]
    fn the_cut_flag_round_trips_and_unknown_flags_are_refused() {
        let cut = SealedIndex { cut: true, ..sample() };
        let mut bytes = encode_index(&cut);
        assert_eq!(decode_index(&bytes), Some(cut));
        bytes[6] = 0x02;
        let crc = body_crc(
            &bytes[..INDEX_HEADER_SIZE + 3 * ENTRY_SIZE + 2 * TERM_POINT_SIZE + CONTROL_SIZE],
        );
        bytes[8..12].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(decode_index(&bytes), None);
    }

    #[test]
    fn index_file_round_trips() {
        let bytes = encode_index(&sample());
        assert_eq!(bytes.len() % 4096, 0);
        assert_eq!(decode_index(&bytes), Some(sample()));
    }

    #[test]
    fn a_damaged_index_file_is_refused() {
        let bytes = encode_index(&sample());
        for at in [0, 9, 20, 120, 200, 4000] {
            let mut damaged = bytes.clone();
            damaged[at] ^= 0x10;
            assert_eq!(decode_index(&damaged), None, "byte {at}");
        }
        assert_eq!(decode_index(&bytes[..100]), None);
    }

    #[test]
    fn lookups_start_at_or_before_the_wanted_batch() {
        let index = sample().index;
        assert_eq!(index.position_for_offset(Offset(10)), Some(4096));
        assert_eq!(index.position_for_offset(Offset(30)), Some(4096));
        assert_eq!(index.position_for_offset(Offset(31)), Some(70_000));
        assert_eq!(index.position_for_offset(Offset(1000)), Some(140_000));
        assert_eq!(index.position_for_index(LogIndex(5)), Some(4096));
        assert_eq!(index.position_for_index(LogIndex(9)), Some(70_000));
        assert_eq!(index.position_for_index(LogIndex(13)), Some(70_000));
    }

    #[test]
    fn truncating_drops_entries_terms_and_controls_at_and_above() {
        let mut index = sample().index;
        index.truncate_from(LogIndex(12));
        assert_eq!(index.entries.len(), 2);
        assert_eq!(index.terms, vec![(LogIndex(5), Term(2))]);
        assert!(index.controls.is_empty());
    }
}
