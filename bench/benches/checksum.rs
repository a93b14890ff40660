//! Checksum micro-benchmark: crc32fast over 1 KiB .. 1 MiB.
//!
//! Resource stressed: one core's SIMD (PCLMULQDQ) crc pipeline and the L1/L2/L3 caches.
//! Expectation: design.md §11 measured 14–18 GiB/s per core here, so a 1 KiB record costs
//! ~60–70 ns and a 1 MiB flush ~60 µs — far below one fdatasync (~80–95 µs), i.e. the
//! checksum of every byte is not what limits durable-append throughput. Small inputs fall
//! below peak because of the fixed per-call setup.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

fn checksum(c: &mut Criterion) {
    let mut group = c.benchmark_group("crc32fast");
    for size_bytes in [1 << 10, 4 << 10, 64 << 10, 1 << 20] {
        let data: Vec<u8> = (0..size_bytes).map(|i| (i * 31 % 251) as u8).collect();
        group.throughput(Throughput::Bytes(size_bytes as u64));
        group.bench_with_input(BenchmarkId::from_parameter(size_bytes), &data, |b, data| {
            b.iter(|| crc32fast::hash(black_box(data)))
        });
    }
    group.finish();
}

criterion_group!(benches, checksum);
criterion_main!(benches);
