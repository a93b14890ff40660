//! Record batch: the unit of the log on disk, on the wire and in Raft (docs/format.md#batch).
//!
//! A batch is a 72-byte little-endian header followed by its payload. A data batch's payload
//! is `record_count` records, each a `u32` length then the value bytes; a control batch
//! (`CONTROL_NOOP`, `CONTROL_MEMBERSHIP`) has `record_count == 0` and an opaque payload.
//! Between flushes, the rest of a 4 KiB block is filled by a padding marker.
//!
//! Invariants: `header_crc` covers every header byte but itself, `payload_crc` every payload
//! byte, and `prev_crc` is the `header_crc` of the previous batch (0 at the start of a chain),
//! so the header crc of the last batch commits to the whole log. Decoding never panics: every
//! length is checked against the buffer and `batch_size_max` before it is used.

#![forbid(unsafe_code)]

use bytes::{BufMut, Bytes, BytesMut};
use thiserror::Error;
use zerocopy::little_endian::{I64, U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use crate::ids::{LogIndex, Offset, Term};

/// Magic of a batch header: "RLGB".
pub const BATCH_MAGIC: u32 = u32::from_le_bytes(*b"RLGB");
/// Magic of a padding marker: "RLGP".
pub const PADDING_MAGIC: u32 = u32::from_le_bytes(*b"RLGP");
/// Current batch format version.
pub const BATCH_VERSION: u16 = 1;
/// Size of `BatchHeader`.
pub const BATCH_HEADER_SIZE: usize = 72;
/// Size of `PaddingHeader`.
pub const PADDING_HEADER_SIZE: usize = 16;
/// Size of a record's length prefix.
pub const RECORD_PREFIX_SIZE: usize = 4;
/// Most records one batch may carry.
pub const RECORD_COUNT_MAX: u32 = 1 << 24;

/// A Raft no-op control batch (a new leader's first entry). `record_count == 0`.
pub const CONTROL_NOOP: u16 = 1 << 0;
/// A Raft membership-change control batch; the payload is the configuration. `record_count == 0`.
pub const CONTROL_MEMBERSHIP: u16 = 1 << 1;
/// Every flag bit this version knows.
pub const FLAGS_KNOWN: u16 = CONTROL_NOOP | CONTROL_MEMBERSHIP;
const FLAGS_CONTROL: u16 = CONTROL_NOOP | CONTROL_MEMBERSHIP;

/// The batch header, exactly as stored (all fields little-endian).
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct BatchHeader {
    pub magic: U32,
    pub version: U16,
    pub flags: U16,
    /// crc32 of header bytes 0..8 and 12..72.
    pub header_crc: U32,
    /// crc32 of the payload (bytes 72..length).
    pub payload_crc: U32,
    /// Whole batch length, header included.
    pub length: U32,
    pub record_count: U32,
    pub term: U64,
    pub index: U64,
    pub base_offset: U64,
    pub first_timestamp_ms: I64,
    pub max_timestamp_ms: I64,
    /// `header_crc` of the previous batch of the log; 0 for the first batch of a chain.
    pub prev_crc: U32,
    /// Zero in version 1.
    pub reserved: U32,
}

const _: () = assert!(std::mem::size_of::<BatchHeader>() == BATCH_HEADER_SIZE);

/// The padding marker that fills a block after the last batch of a flush.
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct PaddingHeader {
    pub magic: U32,
    pub version: U16,
    pub reserved: U16,
    /// Whole padding length, this header included; the rest is zero bytes.
    pub length: U32,
    /// crc32 of header bytes 0..12 and of the zero bytes after the header.
    pub crc: U32,
}

const _: () = assert!(std::mem::size_of::<PaddingHeader>() == PADDING_HEADER_SIZE);

/// Why bytes are not a valid batch (or padding).
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum BatchError {
    #[error("buffer of {len} bytes is shorter than the {needed} bytes needed")]
    Truncated { len: usize, needed: usize },
    #[error("bad magic {found:#010x}")]
    BadMagic { found: u32 },
    #[error("unsupported batch version {found}")]
    UnsupportedVersion { found: u16 },
    #[error("header checksum mismatch (stored {stored:#010x}, computed {computed:#010x})")]
    HeaderChecksum { stored: u32, computed: u32 },
    #[error("payload checksum mismatch (stored {stored:#010x}, computed {computed:#010x})")]
    PayloadChecksum { stored: u32, computed: u32 },
    #[error("batch length {length} outside {min}..={max}")]
    BadLength { length: u64, min: u64, max: u64 },
    #[error("unknown flags {flags:#06x}")]
    UnknownFlags { flags: u16 },
    #[error("record count {record_count} invalid for flags {flags:#06x}")]
    BadRecordCount { record_count: u32, flags: u16 },
    #[error("records do not fill the payload exactly: {detail}")]
    BadRecords { detail: &'static str },
    #[error("reserved field is not zero")]
    ReservedNotZero,
    #[error("padding bytes are not zero or fail their checksum")]
    BadPadding,
}

/// What the log stamps into a header (everything but the checksums and length).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchStamp {
    pub term: Term,
    pub index: LogIndex,
    pub base_offset: Offset,
    pub record_count: u32,
    pub flags: u16,
    pub first_timestamp_ms: i64,
    pub max_timestamp_ms: i64,
    pub prev_crc: u32,
}

/// A validated batch borrowed from a buffer.
#[derive(Clone, Copy, Debug)]
pub struct BatchView<'a> {
    header: &'a BatchHeader,
    payload: &'a [u8],
}

impl BatchHeader {
    fn computed_crc(bytes: &[u8]) -> u32 {
        let mut hasher = crc32fast::Hasher::new();
        hasher.update(&bytes[0..8]);
        hasher.update(&bytes[12..BATCH_HEADER_SIZE]);
        hasher.finalize()
    }

    pub fn term(&self) -> Term {
        Term(self.term.get())
    }
    pub fn index(&self) -> LogIndex {
        LogIndex(self.index.get())
    }
    pub fn base_offset(&self) -> Offset {
        Offset(self.base_offset.get())
    }
    pub fn length(&self) -> usize {
        self.length.get() as usize
    }
    pub fn record_count(&self) -> u32 {
        self.record_count.get()
    }
    /// The offset after this batch's last record.
    pub fn next_offset(&self) -> Offset {
        Offset(self.base_offset.get() + u64::from(self.record_count.get()))
    }
    pub fn is_control(&self) -> bool {
        self.flags.get() & FLAGS_CONTROL != 0
    }
}

impl<'a> BatchView<'a> {
    pub fn header(&self) -> &'a BatchHeader {
        self.header
    }
    /// The payload: records for a data batch, opaque bytes for a control batch.
    pub fn payload(&self) -> &'a [u8] {
        self.payload
    }
    /// The records of a data batch (none for a control batch).
    pub fn records(&self) -> RecordIter<'a> {
        let remaining = if self.header.is_control() { 0 } else { self.header.record_count() };
        RecordIter { rest: self.payload, remaining }
    }
}

/// Iterator over the records of a validated batch.
#[derive(Clone, Debug)]
pub struct RecordIter<'a> {
    rest: &'a [u8],
    remaining: u32,
}

impl<'a> Iterator for RecordIter<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        if self.remaining == 0 {
            return None;
        }
        let (value, rest) = split_record(self.rest).ok()?;
        self.rest = rest;
        self.remaining -= 1;
        Some(value)
    }
}

fn split_record(bytes: &[u8]) -> Result<(&[u8], &[u8]), BatchError> {
    let prefix: [u8; RECORD_PREFIX_SIZE] = bytes
        .get(..RECORD_PREFIX_SIZE)
        .and_then(|p| p.try_into().ok())
        .ok_or(BatchError::BadRecords { detail: "record length prefix past the payload end" })?;
    let len = u32::from_le_bytes(prefix) as usize;
    let rest = &bytes[RECORD_PREFIX_SIZE..];
    if len > rest.len() {
        return Err(BatchError::BadRecords { detail: "record value past the payload end" });
    }
    Ok(rest.split_at(len))
}

/// Reads and checks a batch header at the start of `bytes` (magic, version, header crc,
/// reserved, flags, length within `HEADER..=batch_size_max`). The payload is not checked.
pub fn peek_header(bytes: &[u8], batch_size_max: usize) -> Result<&BatchHeader, BatchError> {
    let head = bytes
        .get(..BATCH_HEADER_SIZE)
        .ok_or(BatchError::Truncated { len: bytes.len(), needed: BATCH_HEADER_SIZE })?;
    let header = BatchHeader::ref_from_bytes(head)
        .map_err(|_| BatchError::Truncated { len: bytes.len(), needed: BATCH_HEADER_SIZE })?;
    if header.magic.get() != BATCH_MAGIC {
        return Err(BatchError::BadMagic { found: header.magic.get() });
    }
    let computed = BatchHeader::computed_crc(head);
    if computed != header.header_crc.get() {
        return Err(BatchError::HeaderChecksum { stored: header.header_crc.get(), computed });
    }
    if header.version.get() != BATCH_VERSION {
        return Err(BatchError::UnsupportedVersion { found: header.version.get() });
    }
    if header.reserved.get() != 0 {
        return Err(BatchError::ReservedNotZero);
    }
    let flags = header.flags.get();
    if flags & !FLAGS_KNOWN != 0 {
        return Err(BatchError::UnknownFlags { flags });
    }
    let count = header.record_count();
    let count_ok = if flags & FLAGS_CONTROL != 0 {
        count == 0
    } else {
        (1..=RECORD_COUNT_MAX).contains(&count)
    };
    if !count_ok {
        return Err(BatchError::BadRecordCount { record_count: count, flags });
    }
    let length = header.length.get() as u64;
    if length < BATCH_HEADER_SIZE as u64 || length > batch_size_max as u64 {
        return Err(BatchError::BadLength {
            length,
            min: BATCH_HEADER_SIZE as u64,
            max: batch_size_max as u64,
        });
    }
    Ok(header)
}

/// The header of a batch already validated (e.g. one this log stamped or accepted).
///
/// # Panics
/// If `batch` is shorter than a header (a caller bug).
pub fn header_of(batch: &[u8]) -> &BatchHeader {
    BatchHeader::ref_from_bytes(&batch[..BATCH_HEADER_SIZE]).expect("header-sized, unaligned type")
}

/// Fully validates the batch at the start of `bytes` (header, payload checksum, record
/// structure) and returns it. Bytes after the batch's length are ignored.
pub fn decode_batch(bytes: &[u8], batch_size_max: usize) -> Result<BatchView<'_>, BatchError> {
    let header = peek_header(bytes, batch_size_max)?;
    let length = header.length();
    let whole =
        bytes.get(..length).ok_or(BatchError::Truncated { len: bytes.len(), needed: length })?;
    let payload = &whole[BATCH_HEADER_SIZE..];
    let computed = crc32fast::hash(payload);
    if computed != header.payload_crc.get() {
        return Err(BatchError::PayloadChecksum { stored: header.payload_crc.get(), computed });
    }
    if !header.is_control() {
        check_records(payload, header.record_count())?;
    }
    Ok(BatchView { header, payload })
}

/// Checks that `payload` is exactly `count` records.
pub fn check_records(payload: &[u8], count: u32) -> Result<(), BatchError> {
    let mut rest = payload;
    for _ in 0..count {
        rest = split_record(rest)?.1;
    }
    if !rest.is_empty() {
        return Err(BatchError::BadRecords { detail: "bytes left after the last record" });
    }
    Ok(())
}

/// Encodes a batch: the stamped header then `payload`, checksums computed.
pub fn encode_batch(stamp: &BatchStamp, payload: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(BATCH_HEADER_SIZE + payload.len());
    out.put_bytes(0, BATCH_HEADER_SIZE);
    out.extend_from_slice(payload);
    stamp_header(&mut out, stamp);
    out.freeze()
}

/// Writes the header of a batch whose payload already sits at `batch[BATCH_HEADER_SIZE..]`.
/// Returns the new `header_crc` (the chain value of this batch).
///
/// # Panics
/// If `batch` is shorter than a header or longer than `u32::MAX` (a caller bug: lengths are
/// validated against `batch_size_max` first).
pub fn stamp_header(batch: &mut [u8], stamp: &BatchStamp) -> u32 {
    assert!(batch.len() >= BATCH_HEADER_SIZE);
    let payload_crc = crc32fast::hash(&batch[BATCH_HEADER_SIZE..]);
    stamp_header_with_payload_crc(batch, stamp, payload_crc)
}

/// [`stamp_header`] with the payload's crc32 already computed by the caller (`Log::append`
/// hashes the payload where it is still warm in cache, before copying it behind the header).
/// `payload_crc` must be `crc32fast::hash(&batch[BATCH_HEADER_SIZE..])`.
///
/// # Panics
/// As [`stamp_header`].
pub fn stamp_header_with_payload_crc(
    batch: &mut [u8],
    stamp: &BatchStamp,
    payload_crc: u32,
) -> u32 {
    assert!(batch.len() >= BATCH_HEADER_SIZE && batch.len() <= u32::MAX as usize);
    debug_assert_eq!(payload_crc, crc32fast::hash(&batch[BATCH_HEADER_SIZE..]));
    let header = BatchHeader {
        magic: BATCH_MAGIC.into(),
        version: BATCH_VERSION.into(),
        flags: stamp.flags.into(),
        header_crc: 0.into(),
        payload_crc: payload_crc.into(),
        length: (batch.len() as u32).into(),
        record_count: stamp.record_count.into(),
        term: stamp.term.0.into(),
        index: stamp.index.0.into(),
        base_offset: stamp.base_offset.0.into(),
        first_timestamp_ms: stamp.first_timestamp_ms.into(),
        max_timestamp_ms: stamp.max_timestamp_ms.into(),
        prev_crc: stamp.prev_crc.into(),
        reserved: 0.into(),
    };
    let head = &mut batch[..BATCH_HEADER_SIZE];
    head.copy_from_slice(header.as_bytes());
    let crc = BatchHeader::computed_crc(head);
    head[8..12].copy_from_slice(&crc.to_le_bytes());
    crc
}

/// Bytes of padding that end a flush whose batches end at `position`: 0 if it is
/// block-aligned, else the rest of the block, plus one more block if the rest is too small
/// for a padding header.
pub fn padding_len(position: u64, block_size: usize) -> usize {
    let rest = (block_size - (position % block_size as u64) as usize) % block_size;
    if rest == 0 || rest >= PADDING_HEADER_SIZE {
        rest
    } else {
        rest + block_size
    }
}

/// Writes a padding marker filling `out` entirely (`out.len() >= PADDING_HEADER_SIZE`).
pub fn write_padding(out: &mut [u8]) {
    assert!(out.len() >= PADDING_HEADER_SIZE && out.len() <= u32::MAX as usize);
    out.fill(0);
    out[0..4].copy_from_slice(&PADDING_MAGIC.to_le_bytes());
    out[4..6].copy_from_slice(&BATCH_VERSION.to_le_bytes());
    let len = out.len() as u32;
    out[8..12].copy_from_slice(&len.to_le_bytes());
    let crc = padding_crc(out);
    out[12..16].copy_from_slice(&crc.to_le_bytes());
}

fn padding_crc(bytes: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&bytes[0..12]);
    hasher.update(&bytes[PADDING_HEADER_SIZE..]);
    hasher.finalize()
}

/// Reads the padding header at the start of `bytes` and returns the padding length
/// (bounded by `length_max`). The zero bytes are checked by `check_padding`.
pub fn peek_padding(bytes: &[u8], length_max: usize) -> Result<usize, BatchError> {
    let head = bytes
        .get(..PADDING_HEADER_SIZE)
        .ok_or(BatchError::Truncated { len: bytes.len(), needed: PADDING_HEADER_SIZE })?;
    let header = PaddingHeader::ref_from_bytes(head).map_err(|_| BatchError::BadPadding)?;
    if header.magic.get() != PADDING_MAGIC {
        return Err(BatchError::BadMagic { found: header.magic.get() });
    }
    if header.version.get() != BATCH_VERSION || header.reserved.get() != 0 {
        return Err(BatchError::BadPadding);
    }
    let length = header.length.get() as usize;
    if length < PADDING_HEADER_SIZE || length > length_max {
        return Err(BatchError::BadLength {
            length: length as u64,
            min: PADDING_HEADER_SIZE as u64,
            max: length_max as u64,
        });
    }
    Ok(length)
}

/// Checks a whole padding region (header then zeros, crc matching).
pub fn check_padding(bytes: &[u8]) -> Result<(), BatchError> {
    if bytes.len() < PADDING_HEADER_SIZE {
        return Err(BatchError::BadPadding);
    }
    let stored = u32::from_le_bytes([bytes[12], bytes[13], bytes[14], bytes[15]]);
    if padding_crc(bytes) != stored || bytes[PADDING_HEADER_SIZE..].iter().any(|b| *b != 0) {
        return Err(BatchError::BadPadding);
    }
    Ok(())
}

/// Builds the payload of a data batch: records as `u32` length + value bytes.
#[derive(Debug)]
pub struct RecordsBuilder {
    buf: BytesMut,
    count: u32,
    batch_size_max: usize,
}

/// The records of a data batch, ready for `AppendRequest`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Records {
    pub bytes: Bytes,
    pub count: u32,
}

impl RecordsBuilder {
    /// A builder whose batch (header included) stays within `batch_size_max`.
    pub fn new(batch_size_max: usize) -> Self {
        RecordsBuilder { buf: BytesMut::new(), count: 0, batch_size_max }
    }

    /// Adds a record. Fails (leaving the builder unchanged) if the batch would exceed
    /// `batch_size_max` or `RECORD_COUNT_MAX`.
    pub fn push(&mut self, value: &[u8]) -> Result<(), BatchError> {
        let needed = BATCH_HEADER_SIZE + self.buf.len() + RECORD_PREFIX_SIZE + value.len();
        if needed > self.batch_size_max || self.count >= RECORD_COUNT_MAX {
            return Err(BatchError::BadLength {
                length: needed as u64,
                min: BATCH_HEADER_SIZE as u64,
                max: self.batch_size_max as u64,
            });
        }
        self.buf.put_u32_le(value.len() as u32);
        self.buf.extend_from_slice(value);
        self.count += 1;
        Ok(())
    }

    pub fn count(&self) -> u32 {
        self.count
    }

    /// Size of the batch these records would make, header included.
    pub fn batch_len(&self) -> usize {
        BATCH_HEADER_SIZE + self.buf.len()
    }

    pub fn finish(self) -> Records {
        Records { bytes: self.buf.freeze(), count: self.count }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: usize = 1 << 20;

    fn stamp(count: u32) -> BatchStamp {
        BatchStamp {
            term: Term(3),
            index: LogIndex(7),
            base_offset: Offset(100),
            record_count: count,
            flags: 0,
            first_timestamp_ms: 1_000,
            max_timestamp_ms: 2_000,
            prev_crc: 0xdead_beef,
        }
    }

    fn sample() -> Bytes {
        let mut builder = RecordsBuilder::new(MAX);
        builder.push(b"hello").unwrap();
        builder.push(b"").unwrap();
        builder.push(b"world!").unwrap();
        let records = builder.finish();
        encode_batch(&stamp(records.count), &records.bytes)
    }

    #[test]
    fn encoded_batch_decodes_with_the_same_fields_and_records() {
        let bytes = sample();
        let view = decode_batch(&bytes, MAX).unwrap();
        let header = view.header();
        assert_eq!(header.term(), Term(3));
        assert_eq!(header.index(), LogIndex(7));
        assert_eq!(header.base_offset(), Offset(100));
        assert_eq!(header.next_offset(), Offset(103));
        assert_eq!(header.prev_crc.get(), 0xdead_beef);
        let records: Vec<&[u8]> = view.records().collect();
        assert_eq!(records, vec![&b"hello"[..], b"", b"world!"]);
    }

    #[test]
    fn every_single_bit_flip_is_detected() {
        let bytes = sample();
        for bit in 0..bytes.len() * 8 {
            let mut damaged = bytes.to_vec();
            damaged[bit / 8] ^= 1 << (bit % 8);
            assert!(decode_batch(&damaged, MAX).is_err(), "bit {bit} flip went unnoticed");
        }
    }

    #[test]
    fn decoding_any_prefix_fails_without_panicking() {
        let bytes = sample();
        for len in 0..bytes.len() {
            assert!(decode_batch(&bytes[..len], MAX).is_err());
        }
    }

    #[test]
    fn decoding_random_garbage_never_panics() {
        use rand::{Rng, SeedableRng};
        let seed: u64 = rand::random();
        println!("seed {seed}");
        let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
        for _ in 0..2_000 {
            let len = rng.gen_range(0..300);
            let mut garbage: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
            if len >= 4 && rng.gen_bool(0.5) {
                garbage[0..4].copy_from_slice(&BATCH_MAGIC.to_le_bytes());
            }
            let _ = decode_batch(&garbage, MAX);
            let _ = peek_padding(&garbage, MAX);
        }
    }

    #[test]
    fn a_batch_over_batch_size_max_is_rejected() {
        let bytes = sample();
        assert!(matches!(
            decode_batch(&bytes, BATCH_HEADER_SIZE + 4),
            Err(BatchError::BadLength { .. })
        ));
    }

    #[test]
    fn a_control_batch_must_have_no_records() {
        let control = BatchStamp { flags: CONTROL_MEMBERSHIP, record_count: 0, ..stamp(0) };
        let bytes = encode_batch(&control, b"opaque configuration");
        let view = decode_batch(&bytes, MAX).unwrap();
        assert!(view.header().is_control());
        assert_eq!(view.records().count(), 0);
        let bad = BatchStamp { flags: CONTROL_NOOP, record_count: 1, ..stamp(0) };
        let bytes = encode_batch(&bad, b"");
        assert!(matches!(decode_batch(&bytes, MAX), Err(BatchError::BadRecordCount { .. })));
    }

    #[test]
    fn records_that_do_not_fill_the_payload_are_rejected() {
        let bytes = encode_batch(&stamp(1), &[1, 0, 0, 0, 9, 9]);
        assert!(matches!(decode_batch(&bytes, MAX), Err(BatchError::BadRecords { .. })));
        let bytes = encode_batch(&stamp(2), &[1, 0, 0, 0, 9]);
        assert!(matches!(decode_batch(&bytes, MAX), Err(BatchError::BadRecords { .. })));
    }

    #[test]
    fn padding_always_ends_on_a_block_boundary_with_room_for_its_header() {
        for position in 0..10_000u64 {
            let len = padding_len(position, 4096);
            assert_eq!((position + len as u64) % 4096, 0);
            assert!(len == 0 || len >= PADDING_HEADER_SIZE);
        }
    }

    #[test]
    fn padding_round_trips_and_detects_a_flipped_bit() {
        let mut region = vec![0u8; 100];
        write_padding(&mut region);
        assert_eq!(peek_padding(&region, 4096 * 2).unwrap(), 100);
        check_padding(&region).unwrap();
        region[50] = 1;
        assert!(check_padding(&region).is_err());
    }

    #[test]
    fn records_builder_refuses_a_record_that_overflows_the_batch() {
        let mut builder = RecordsBuilder::new(BATCH_HEADER_SIZE + 10);
        builder.push(b"abcdef").unwrap();
        assert!(builder.push(b"x").is_err());
        assert_eq!(builder.count(), 1);
    }
}
