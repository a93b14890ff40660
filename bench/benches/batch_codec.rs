//! Batch codec micro-benchmark: build the records, stamp (encode) a batch, decode + verify it.
//!
//! Resource stressed: one core's memory bandwidth and crc32 pipeline. Encoding copies the
//! payload once and checksums it once; decoding checksums header and payload and walks the
//! record prefixes. Expectation: both are dominated by crc32fast (14–18 GiB/s here, design.md
//! §11) plus one memcpy (a few GiB/s to tens of GiB/s), so a 1 KiB single-record batch costs
//! well under 1 µs and a 1 MiB batch of 1 KiB records ~100–200 µs — an order of magnitude
//! below the fdatasync it waits for.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ringlog_engine::batch::{decode_batch, encode_batch, BatchStamp, RecordsBuilder};
use ringlog_engine::types::{LogIndex, Offset, Term};

const BATCH_SIZE_MAX: usize = 2 << 20;
const RECORD_SIZE: usize = 1024;

fn stamp(record_count: u32) -> BatchStamp {
    BatchStamp {
        term: Term(3),
        index: LogIndex(42),
        base_offset: Offset(1_000_000),
        record_count,
        flags: 0,
        first_timestamp_ms: 1_700_000_000_000,
        max_timestamp_ms: 1_700_000_000_000,
        prev_crc: 0xDEAD_BEEF,
    }
}

fn codec(c: &mut Criterion) {
    let value = vec![0x5Au8; RECORD_SIZE];
    let mut group = c.benchmark_group("batch");
    for records in [1u32, 16, 256, 1000] {
        let mut builder = RecordsBuilder::new(BATCH_SIZE_MAX);
        for _ in 0..records {
            builder.push(&value).unwrap();
        }
        let payload = builder.finish();
        let batch = encode_batch(&stamp(records), &payload.bytes);
        group.throughput(Throughput::Bytes(batch.len() as u64));
        group.bench_with_input(BenchmarkId::new("build_records", records), &records, |b, &n| {
            b.iter(|| {
                let mut builder = RecordsBuilder::new(BATCH_SIZE_MAX);
                for _ in 0..n {
                    builder.push(black_box(&value)).unwrap();
                }
                builder.finish()
            })
        });
        group.bench_with_input(BenchmarkId::new("encode", records), &payload, |b, payload| {
            b.iter(|| encode_batch(black_box(&stamp(records)), black_box(&payload.bytes)))
        });
        group.bench_with_input(BenchmarkId::new("decode", records), &batch, |b, batch| {
            b.iter(|| {
                let view = decode_batch(black_box(batch), BATCH_SIZE_MAX).unwrap();
                view.records().map(|r| r.len()).sum::<usize>()
            })
        });
    }
    group.finish();
}

criterion_group!(benches, codec);
criterion_main!(benches);
