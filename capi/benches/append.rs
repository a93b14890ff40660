//! Append cost through the C ABI versus the same loop on `EngineHandle` directly.
//!
//! `cargo bench -p ringlog-capi --bench append` (env `RINGLOG_BENCH_APPENDS`, default 4000
//! per round; `RINGLOG_BENCH_DIR`, default the temp dir, must be a disk filesystem).
//!
//! Both paths run the same workload on a fresh log each round: `THREADS` threads, each
//! appending one `RECORD_BYTES` record per call, blocking until durable (fdatasync), through
//! (a) `EngineHandle::append` with a `RecordsBuilder` batch, and (b) `ringlog_log_append`
//! called through its `extern "C"` symbol with a `ringlog_record` array — handle lookup,
//! `catch_unwind`, size checks and the copy into the batch included. Rounds alternate
//! A B B A ... to spread machine noise over both; the figure is the median round of each.
//! Prints appends/s per path and the ratio C/Rust (1.00 = same cost). No assertion: the
//! machine is shared and noisy.

use std::ffi::CString;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ringlog::{
    ringlog_log, ringlog_log_append, ringlog_log_close, ringlog_log_open, ringlog_log_options,
    ringlog_log_options_init, ringlog_record, ringlog_status,
};
use ringlog_engine::shard::{Durability, Engine, EngineConfig, PartitionId};
use ringlog_engine::{LogConfig, RecordsBuilder};

const THREADS: usize = 4;
const RECORD_BYTES: usize = 100;
const ROUNDS: usize = 6;
const SEGMENT_BYTES: u64 = 64 << 20;

fn main() {
    let appends: usize =
        std::env::var("RINGLOG_BENCH_APPENDS").ok().and_then(|v| v.parse().ok()).unwrap_or(4000);
    let base = std::env::var_os("RINGLOG_BENCH_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let mut rust = Vec::new();
    let mut c = Vec::new();
    for round in 0..ROUNDS {
        let dir = tempfile::Builder::new().prefix("ringlog-capi-bench-").tempdir_in(&base).unwrap();
        let rust_first = round % 4 == 0 || round % 4 == 3;
        for path in if rust_first { ["rust", "c"] } else { ["c", "rust"] } {
            let sub = dir.path().join(path);
            let rate = match path {
                "rust" => run_rust(&sub, appends),
                _ => run_c(&sub, appends),
            };
            println!("round {round} {path:>4}: {rate:>9.0} appends/s");
            if path == "rust" {
                rust.push(rate)
            } else {
                c.push(rate)
            }
        }
    }
    let (rust, c) = (median(rust), median(c));
    println!(
        "append, {THREADS} threads, {RECORD_BYTES} B records, durable, {appends} appends/round: \
         Rust EngineHandle {rust:.0}/s, C ABI {c:.0}/s, C/Rust throughput ratio {:.3} \
         (C cost {:+.1}%)",
        c / rust,
        (rust / c - 1.0) * 100.0
    );
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn log_config() -> LogConfig {
    LogConfig { segment_size_bytes: SEGMENT_BYTES, ..LogConfig::default() }
}

/// Appends/s through `EngineHandle::append`.
fn run_rust(dir: &std::path::Path, appends: usize) -> f64 {
    let mut config = EngineConfig::new(dir);
    config.log = log_config();
    let engine = Engine::start(config).expect("engine starts");
    let per_thread = appends / THREADS;
    let started = Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..THREADS {
            let engine = engine.clone();
            scope.spawn(move || {
                let value = [7u8; RECORD_BYTES];
                for _ in 0..per_thread {
                    let mut builder = RecordsBuilder::new(engine.config().log.batch_size_max);
                    builder.push(&value).unwrap();
                    engine.append(PartitionId(0), builder.finish(), Durability::Durable).unwrap();
                }
            });
        }
    });
    let elapsed = started.elapsed();
    engine.shutdown().unwrap();
    rate(per_thread * THREADS, elapsed)
}

/// A handle value that may cross threads (it is an id; the C API allows any thread).
#[derive(Clone, Copy)]
struct Handle(*mut ringlog_log);
// SAFETY: the handle is an opaque id the C API documents as usable from any thread.
unsafe impl Send for Handle {}

/// Appends/s through `ringlog_log_append`.
fn run_c(dir: &std::path::Path, appends: usize) -> f64 {
    let path = CString::new(dir.to_str().unwrap()).unwrap();
    // SAFETY: an all-zero options struct is valid memory for init to fill.
    let mut options: ringlog_log_options = unsafe { std::mem::zeroed() };
    // SAFETY: `options` is a writable struct of exactly the size passed.
    let status =
        unsafe { ringlog_log_options_init(&mut options, size_of::<ringlog_log_options>()) };
    assert_eq!(status, ringlog_status::RINGLOG_OK);
    options.segment_size_bytes = SEGMENT_BYTES;
    let mut log = std::ptr::null_mut();
    // SAFETY: valid C string, options and out pointer.
    let status = unsafe { ringlog_log_open(path.as_ptr(), &options, &mut log) };
    assert_eq!(status, ringlog_status::RINGLOG_OK);
    let handle = Handle(log);
    let per_thread = appends / THREADS;
    let started = Instant::now();
    let done = Arc::new(());
    std::thread::scope(|scope| {
        for _ in 0..THREADS {
            let _done = done.clone();
            scope.spawn(move || {
                let handle = handle;
                let value = [7u8; RECORD_BYTES];
                let record = ringlog_record { data: value.as_ptr(), len: value.len() };
                let mut first = 0u64;
                for _ in 0..per_thread {
                    // SAFETY: one valid record; `first` is writable.
                    let status = unsafe { ringlog_log_append(handle.0, 0, &record, 1, &mut first) };
                    assert_eq!(status, ringlog_status::RINGLOG_OK);
                }
            });
        }
    });
    let elapsed = started.elapsed();
    // SAFETY: the handle from open, closed once.
    assert_eq!(unsafe { ringlog_log_close(log) }, ringlog_status::RINGLOG_OK);
    rate(per_thread * THREADS, elapsed)
}

fn rate(count: usize, elapsed: Duration) -> f64 {
    count as f64 / elapsed.as_secs_f64()
}
