//! Helpers shared by the engine's integration tests.
#![allow(dead_code)]

use std::future::Future;

use bytes::Bytes;
use glommio::{LocalExecutorBuilder, Placement};
use ringlog_engine::{AppendRequest, LogConfig, RecordsBuilder, Term};

/// Runs `make()` on a fresh glommio executor (small io_memory: tests run in parallel).
pub fn run<F, T>(make: impl FnOnce() -> F + Send + 'static) -> T
where
    F: Future<Output = T> + 'static,
    T: Send + 'static,
{
    LocalExecutorBuilder::new(Placement::Unbound)
        .io_memory(1 << 20)
        .spawn(make)
        .expect("spawn executor")
        .join()
        .expect("executor thread")
}

/// 1 MiB segments and small flushes so that rolls and torn flushes are cheap to reach.
pub fn small_config() -> LogConfig {
    LogConfig {
        segment_size_bytes: 1 << 20,
        batch_size_max: 64 << 10,
        flush_bytes_max: 128 << 10,
        queued_bytes_max: 4 << 20,
        index_interval_bytes: 4096,
        tail_cache_bytes_max: 64 << 10,
        ..LogConfig::default()
    }
}

/// A data batch of `count` records, each `size` bytes of `fill`.
pub fn request(term: u64, count: u32, size: usize, fill: u8) -> AppendRequest {
    let mut builder = RecordsBuilder::new(1 << 20);
    for _ in 0..count {
        builder.push(&vec![fill; size]).expect("fits");
    }
    AppendRequest::data(Term(term), builder.finish(), 1_700_000_000_000)
}

pub fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new().prefix("ringlog-engine-test").tempdir_in("/tmp").expect("tempdir")
}

/// Concatenated record values of a list of raw batches.
pub fn values(batches: &[Bytes]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for b in batches {
        let view = ringlog_engine::decode_batch(b, 1 << 20).expect("valid batch");
        out.extend(view.records().map(<[u8]>::to_vec));
    }
    out
}

/// Overwrites `bytes` at `position` of `file` (in place, synced): how tests tear and corrupt.
pub fn write_at(file: &std::path::Path, position: u64, bytes: &[u8]) {
    use std::io::{Seek, SeekFrom, Write};
    let mut f = std::fs::OpenOptions::new().write(true).open(file).unwrap();
    f.seek(SeekFrom::Start(position)).unwrap();
    f.write_all(bytes).unwrap();
    f.sync_all().unwrap();
}

/// Flips the bits of `mask` in the byte at `position` of `file`.
pub fn flip_bits(file: &std::path::Path, position: u64, mask: u8) {
    let byte = std::fs::read(file).unwrap()[position as usize];
    write_at(file, position, &[byte ^ mask]);
}
