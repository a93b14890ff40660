//! Durable-append throughput of the engine alone (ignored by default: it measures, it does not
//! assert timing). Resource stressed: the disk's write+fdatasync path through group commit.
//! Back of the envelope (design §11): ~750 MiB/s for large O_DIRECT writes, ~8,000
//! write+fdatasync/s at 4 KiB, so with enough appenders throughput is bounded by flush size.
//!
//! `cargo test -p ringlog-engine --release --test engine_throughput -- --ignored --nocapture`

mod common;

use std::rc::Rc;
use std::time::{Duration, Instant};

use common::{request, run, tempdir};
use ringlog_engine::{Log, LogConfig};

#[test]
#[ignore = "measurement, run explicitly"]
fn durable_append_throughput_with_1_kib_records() {
    let dir = tempdir();
    let path = dir.path().to_path_buf();
    run(move || async move {
        let config = LogConfig { segment_size_bytes: 64 << 20, ..LogConfig::default() };
        let (log, _) = Log::open(&path, config).await.unwrap();
        let log = Rc::new(log);
        // Warm up: the first roll waits for the first zero-filled spare.
        log.append(request(1, 1, 1024, 0)).unwrap().durable.await.unwrap();
        for appenders in [1usize, 16, 64, 256] {
            let before = log.stats();
            let started = Instant::now();
            let run_for = Duration::from_secs(2);
            let mut tasks = Vec::new();
            for _ in 0..appenders {
                let log = log.clone();
                tasks.push(glommio::spawn_local(async move {
                    let mut n = 0u64;
                    while started.elapsed() < run_for {
                        match log.append(request(1, 1, 1024, 7)) {
                            Ok(a) => {
                                a.durable.await.unwrap();
                                n += 1;
                            }
                            Err(_) => glommio::yield_if_needed().await,
                        }
                    }
                    n
                }));
            }
            let mut records = 0;
            for t in tasks {
                records += t.await;
            }
            let secs = started.elapsed().as_secs_f64();
            let stats = log.stats();
            let flushes = stats.flushes - before.flushes;
            let bytes = stats.bytes_written - before.bytes_written;
            println!(
                "{appenders:>4} appenders: {:>8.0} records/s, {:>7.1} MiB/s written, {:>6.0} fdatasyncs/s, {:>7.0} B/flush",
                records as f64 / secs,
                bytes as f64 / secs / (1 << 20) as f64,
                flushes as f64 / secs,
                bytes as f64 / flushes.max(1) as f64
            );
        }
        Rc::try_unwrap(log).unwrap().close().await.unwrap();
    });
}
