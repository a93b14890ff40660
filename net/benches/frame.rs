//! Frame codec throughput for a produce request carrying a 64 KiB batch.
//!
//! Resource: CPU (crc32 of the body dominates; the batch itself is carried by reference on
//! encode and sliced without a copy on decode). Back-of-envelope: crc32fast runs at 14–18
//! GiB/s per core here (design.md §11), so encode and one-shot decode should each take ~4 µs
//! per 64 KiB frame, i.e. >10 GiB/s; anything near memcpy speed (~2 GiB/s for misaligned
//! copies) would mean an accidental copy. `decode_streaming` adds the copy into a receive
//! buffer that a socket read makes anyway.

use std::hint::black_box;

use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use ringlog_net::limits::FRAME_BODY_SIZE_MAX;
use ringlog_net::{
    decode_frame, Acks, FrameDecoder, PartitionId, ProduceRequest, Request, RequestId,
};

const BATCH_SIZE: usize = 64 * 1024;

fn produce() -> Request {
    let batch: Bytes = (0..BATCH_SIZE).map(|i| (i * 31) as u8).collect::<Vec<u8>>().into();
    Request::Produce(ProduceRequest { partition: PartitionId(3), acks: Acks::Quorum, batch })
}

fn encode(c: &mut Criterion) {
    let request = produce();
    let mut group = c.benchmark_group("produce_frame_64k");
    group.throughput(Throughput::Bytes(BATCH_SIZE as u64));
    group.bench_function("encode", |b| b.iter(|| black_box(request.encode(RequestId(1)))));

    let wire = request.encode(RequestId(1)).to_bytes();
    // One-shot decode: header checks, body crc, request decode; the batch stays a slice.
    group.bench_function("decode", |b| {
        b.iter(|| {
            let (frame, _) = decode_frame(&wire, FRAME_BODY_SIZE_MAX).unwrap();
            black_box(Request::decode(&frame).unwrap())
        })
    });
    // As a connection does it: bytes copied into a receive buffer (the socket read), then the
    // streaming decoder.
    group.bench_function("decode_streaming", |b| {
        b.iter(|| {
            let mut decoder = FrameDecoder::new(FRAME_BODY_SIZE_MAX);
            let mut buf = BytesMut::from(&wire[..]);
            let frame = decoder.decode(&mut buf).unwrap().unwrap();
            black_box(Request::decode(&frame).unwrap())
        })
    });
    group.finish();
}

criterion_group!(benches, encode);
criterion_main!(benches);
