//! Sparse index lookup micro-benchmark: offset → file position in one segment's index.
//!
//! Resource stressed: a binary search over a sorted `Vec` of 24-byte entries (cache misses as
//! the index grows). Expectation: a 256 MiB segment indexed every 64 KiB has 4096 entries
//! (~96 KiB, L2-resident): 12 comparisons, ~20–50 ns per lookup; the largest index
//! (`INDEX_ENTRIES_MAX`, 1 Mi entries, 24 MiB) adds DRAM misses, ~200–500 ns — both
//! negligible beside the read that follows.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use ringlog_engine::batch::{encode_batch, peek_header, BatchStamp, RecordsBuilder};
use ringlog_engine::segment_index::SegmentIndex;
use ringlog_engine::types::{LogIndex, Offset, Term};

/// Distance between two batches, and between two index entries (every batch indexed).
const BATCH_BYTES: u64 = 64 << 10;
const RECORDS_PER_BATCH: u64 = 60;

fn build_index(entries: u64) -> SegmentIndex {
    let mut builder = RecordsBuilder::new(1 << 20);
    builder.push(b"x").unwrap();
    let payload = builder.finish();
    let mut index = SegmentIndex::new();
    for i in 0..entries {
        let stamp = BatchStamp {
            term: Term(1),
            index: LogIndex(i + 1),
            base_offset: Offset(i * RECORDS_PER_BATCH),
            record_count: 1,
            flags: 0,
            first_timestamp_ms: 0,
            max_timestamp_ms: 0,
            prev_crc: 0,
        };
        let batch = encode_batch(&stamp, &payload.bytes);
        let header = peek_header(&batch, 1 << 20).unwrap();
        index.note_batch(header, i * BATCH_BYTES, BATCH_BYTES as u32, Term(1));
    }
    index
}

fn lookup(c: &mut Criterion) {
    let mut group = c.benchmark_group("index_lookup");
    for entries in [4096u64, 32_768] {
        let index = build_index(entries);
        assert_eq!(index.entries.len() as u64, entries);
        let last = entries * RECORDS_PER_BATCH;
        group.bench_with_input(
            BenchmarkId::new("position_for_offset", entries),
            &index,
            |b, index| {
                let mut probe = 0x9E37_79B9_7F4A_7C15u64;
                b.iter(|| {
                    probe =
                        probe.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    index.position_for_offset(black_box(Offset(probe % last)))
                })
            },
        );
    }
    group.finish();
}

criterion_group!(benches, lookup);
criterion_main!(benches);
