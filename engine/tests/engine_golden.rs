//! Golden files: structures encoded by format version 1, checked in under `tests/golden/`.
//! They must keep decoding to the same values, and today's encoder must still produce the
//! same bytes (a change means a new format version: docs/format.md#version-history).
//! Regenerate only for a deliberate format change: `RINGLOG_BLESS=1 cargo test --test engine_golden`.

use std::path::PathBuf;

use ringlog_engine::batch::{encode_batch, BatchStamp, RecordsBuilder, CONTROL_MEMBERSHIP};
use ringlog_engine::hard_state::{decode_slot, encode_slot, HardState};
use ringlog_engine::limits::BLOCK_SIZE;
use ringlog_engine::segment::{
    decode_header, encode_header, encode_spare_header, HeaderState, RecycledSpare, SegmentMeta,
};
use ringlog_engine::segment_index::{
    decode_index, encode_index, ControlPoint, IndexEntry, SealedIndex, SegmentIndex,
};
use ringlog_engine::{decode_batch, LogIndex, NodeId, Offset, Term};

fn golden(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden").join(name)
}

fn check(name: &str, encoded: &[u8]) -> Vec<u8> {
    let path = golden(name);
    if std::env::var("RINGLOG_BLESS").is_ok() {
        std::fs::write(&path, encoded).unwrap();
    }
    let stored = std::fs::read(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    assert_eq!(stored, encoded, "{name}: today's encoder no longer produces the v1 bytes");
    stored
}

fn batch_stamp() -> BatchStamp {
    BatchStamp {
        term: Term(5),
        index: LogIndex(42),
        base_offset: Offset(1000),
        record_count: 3,
        flags: 0,
        first_timestamp_ms: 1_700_000_000_000,
        max_timestamp_ms: 1_700_000_000_250,
        prev_crc: 0x1234_5678,
    }
}

#[test]
fn golden_batch_v1_keeps_decoding() {
    let mut builder = RecordsBuilder::new(1 << 20);
    for value in [&b"alpha"[..], b"", b"the third record"] {
        builder.push(value).unwrap();
    }
    let records = builder.finish();
    let stored = check("batch_v1.bin", &encode_batch(&batch_stamp(), &records.bytes));
    let view = decode_batch(&stored, 1 << 20).unwrap();
    let header = view.header();
    assert_eq!(header.term(), Term(5));
    assert_eq!(header.index(), LogIndex(42));
    assert_eq!(header.base_offset(), Offset(1000));
    assert_eq!(header.record_count(), 3);
    assert_eq!(header.prev_crc.get(), 0x1234_5678);
    assert_eq!(header.max_timestamp_ms.get(), 1_700_000_000_250);
    let values: Vec<&[u8]> = view.records().collect();
    assert_eq!(values, vec![&b"alpha"[..], b"", b"the third record"]);
}

#[test]
fn golden_control_batch_v1_keeps_decoding() {
    let stamp = BatchStamp { flags: CONTROL_MEMBERSHIP, record_count: 0, ..batch_stamp() };
    let stored = check("control_batch_v1.bin", &encode_batch(&stamp, b"voters=1,2,3"));
    let view = decode_batch(&stored, 1 << 20).unwrap();
    assert!(view.header().is_control());
    assert_eq!(view.payload(), b"voters=1,2,3");
}

#[test]
fn golden_segment_header_v1_keeps_decoding() {
    let meta = SegmentMeta {
        base_offset: Offset(1000),
        base_index: LogIndex(42),
        prev_term: Term(4),
        prev_crc: 0x1234_5678,
        segment_size: 256 << 20,
        created_unix_ms: 1_700_000_000_000,
        recycled: None,
    };
    let mut block = vec![0u8; BLOCK_SIZE];
    encode_header(&meta, &mut block);
    let stored = check("segment_header_v1.bin", &block);
    assert_eq!(decode_header(&stored), HeaderState::Valid(meta));
}

#[test]
fn golden_index_file_v1_keeps_decoding() {
    let mut index = SegmentIndex::new();
    index.entries = vec![
        IndexEntry { offset: Offset(1000), index: LogIndex(42), position: 4096 },
        IndexEntry { offset: Offset(1100), index: LogIndex(60), position: 70_000 },
    ];
    index.terms = vec![(LogIndex(50), Term(6))];
    index.controls = vec![ControlPoint { index: LogIndex(50), flags: 1, position: 40_000 }];
    index.max_timestamp_ms = 1_700_000_000_999;
    let sealed = SealedIndex {
        base_offset: Offset(1000),
        base_index: LogIndex(42),
        next_offset: Offset(1200),
        next_index: LogIndex(70),
        data_end: 100_000,
        write_position: 102_400,
        prev_term: Term(4),
        last_term: Term(6),
        prev_crc: 0x1234_5678,
        last_crc: 0x9abc_def0,
        index,
        cut: false,
    };
    let stored = check("index_v1.bin", &encode_index(&sealed));
    assert_eq!(decode_index(&stored), Some(sealed.clone()));
    let cut = SealedIndex { cut: true, ..sealed };
    let stored = check("index_cut_v1.bin", &encode_index(&cut));
    assert_eq!(decode_index(&stored), Some(cut));
}

#[test]
fn golden_recycled_segment_headers_v1_keep_decoding() {
    let meta = SegmentMeta {
        base_offset: Offset(1000),
        base_index: LogIndex(42),
        prev_term: Term(4),
        prev_crc: 0x1234_5678,
        segment_size: 256 << 20,
        created_unix_ms: 1_700_000_000_000,
        recycled: Some(LogIndex(30)),
    };
    let mut block = vec![0u8; BLOCK_SIZE];
    encode_header(&meta, &mut block);
    let stored = check("segment_header_recycled_v1.bin", &block);
    assert_eq!(decode_header(&stored), HeaderState::Valid(meta));
    // A prepared recycled spare: its created_unix_ms is the encoder's clock, so the golden
    // file is checked by decoding only.
    let spare = RecycledSpare { stale_index_end: LogIndex(30), segment_size: 256 << 20 };
    let path = golden("segment_header_recycled_spare_v1.bin");
    if std::env::var("RINGLOG_BLESS").is_ok() {
        let mut block = vec![0u8; BLOCK_SIZE];
        encode_spare_header(&spare, &mut block);
        std::fs::write(&path, &block).unwrap();
    }
    let stored = std::fs::read(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    assert_eq!(decode_header(&stored), HeaderState::RecycledSpare(spare));
}

#[test]
fn golden_hard_state_slot_v1_keeps_decoding() {
    let state = HardState { term: Term(9), vote: Some(NodeId(2)) };
    let mut block = vec![0u8; BLOCK_SIZE];
    encode_slot(&state, 17, &mut block);
    let stored = check("hard_state_slot_v1.bin", &block);
    assert_eq!(decode_slot(&stored), Ok(Some((17, state))));
}
