//! Crash test of the real engine (design.md §10): a child process appends batches of random
//! sizes from several concurrent tasks and prints every acknowledged (durable) batch; the
//! parent SIGKILLs it at a random moment, reopens the log and checks that every acknowledged
//! batch is present, byte-identical (same crc) at its index and offset, and that every batch in
//! the log passes its checksums. Repeated `ROUNDS` times on the same log (1 MiB segments, so
//! rolls, spare preallocation and torn flushes all get killed in the middle). Each child runs
//! with a random `flushes_in_flight_max` in 1..=4 (printed per round), so kills land with
//! several flushes in flight and completing out of order.
//!
//! The seed is printed; replay with `RINGLOG_CRASH_SEED=<seed> cargo test -p ringlog-tests
//! --test engine_crash`.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use glommio::{LocalExecutorBuilder, Placement};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use ringlog_engine::{decode_batch, AppendRequest, Log, LogConfig, LogIndex, RecordsBuilder, Term};

const ROUNDS: u32 = 60;
const CHILD_DIR_ENV: &str = "RINGLOG_CRASH_CHILD_DIR";
const CHILD_SEED_ENV: &str = "RINGLOG_CRASH_CHILD_SEED";
/// Bytes one child appends before it idles waiting to be killed (bounds the test's disk use).
const CHILD_BYTES_MAX: u64 = 4 << 20;
const APPENDERS: u32 = 8;

/// The child's `flushes_in_flight_max` (random per round; the parent reopens with the same).
const CHILD_FLUSHES_ENV: &str = "RINGLOG_CRASH_CHILD_FLUSHES_IN_FLIGHT";

fn config(flushes_in_flight_max: usize) -> LogConfig {
    LogConfig {
        flushes_in_flight_max,
        segment_size_bytes: 1 << 20,
        batch_size_max: 64 << 10,
        flush_bytes_max: 128 << 10,
        queued_bytes_max: 2 << 20,
        index_interval_bytes: 4096,
        tail_cache_bytes_max: 256 << 10,
        ..LogConfig::default()
    }
}

/// Children with an even seed run with retention and segment recycling, applying retention
/// every few milliseconds, so that kills also land in retention, candidate preparation and
/// rolls into recycled segments (whose stale batches recovery must never take for data).
fn child_config(seed: u64, flushes_in_flight_max: usize) -> LogConfig {
    let recycle = seed % 2 == 0;
    LogConfig {
        recycle_segments: recycle,
        retention_bytes_max: recycle.then_some(2 << 20),
        ..config(flushes_in_flight_max)
    }
}

/// An acknowledged batch as the child reported it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Ack {
    offset: u64,
    record_count: u32,
    crc: u32,
}

fn run_on_executor<T: Send + 'static, F: std::future::Future<Output = T> + 'static>(
    make: impl FnOnce() -> F + Send + 'static,
) -> T {
    LocalExecutorBuilder::new(Placement::Unbound)
        .io_memory(1 << 20)
        .spawn(make)
        .expect("executor")
        .join()
        .expect("executor thread")
}

/// Child mode: entered only when the parent re-executes this binary with the env vars set.
#[test]
fn engine_crash_child() {
    let (Ok(dir), Ok(seed)) = (std::env::var(CHILD_DIR_ENV), std::env::var(CHILD_SEED_ENV)) else {
        return;
    };
    let seed: u64 = seed.parse().expect("seed");
    let flushes = std::env::var(CHILD_FLUSHES_ENV).expect("flushes").parse().expect("flushes");
    run_on_executor(move || child(PathBuf::from(dir), seed, flushes));
}

async fn child(dir: PathBuf, seed: u64, flushes_in_flight_max: usize) {
    let config = child_config(seed, flushes_in_flight_max);
    let (log, _) = Log::open(&dir, config.clone()).await.expect("child open");
    let log = std::rc::Rc::new(log);
    let _retention = config.recycle_segments.then(|| {
        let log = log.clone();
        glommio::spawn_local(async move {
            loop {
                let below = LogIndex(log.durable_index().0 + 1);
                log.apply_retention(0, below).await.expect("retention");
                glommio::timer::sleep(Duration::from_millis(2)).await;
            }
        })
    });
    println!("ready");
    let mut tasks = Vec::new();
    for t in 0..APPENDERS {
        let log = log.clone();
        let mut rng = SmallRng::seed_from_u64(seed ^ (u64::from(t) << 32));
        tasks.push(glommio::spawn_local(async move {
            let mut appended_bytes = 0u64;
            while appended_bytes < CHILD_BYTES_MAX / u64::from(APPENDERS) {
                let count = rng.gen_range(1..=16u32);
                let mut builder = RecordsBuilder::new(64 << 10);
                for _ in 0..count {
                    let len = rng.gen_range(0..3000usize);
                    let fill: u8 = rng.gen();
                    let _ = builder.push(&vec![fill; len]);
                }
                let records = builder.finish();
                let request = AppendRequest::data(Term(1), records, 0);
                let appended = match log.append(request) {
                    Ok(a) => a,
                    Err(_) => {
                        glommio::timer::sleep(Duration::from_millis(1)).await;
                        continue;
                    }
                };
                appended_bytes += appended.batch.len() as u64;
                let crc = crc32fast::hash(&appended.batch);
                appended.durable.await.expect("durable");
                println!(
                    "ack {} {} {} {}",
                    appended.index.0, appended.base_offset.0, appended.record_count, crc
                );
            }
        }));
    }
    for task in tasks {
        task.await;
    }
    println!("idle");
    glommio::timer::sleep(Duration::from_secs(60)).await;
}

/// Reads the whole log, checking every batch; returns index -> (offset, count, crc).
async fn read_log(dir: PathBuf, flushes: usize) -> Result<(BTreeMap<u64, Ack>, u64, u64), String> {
    let (log, report) =
        Log::open(&dir, config(flushes)).await.map_err(|e| format!("reopen: {e}"))?;
    let mut out = BTreeMap::new();
    let mut next = log.start_index();
    let last = log.last_index();
    let mut expected_offset = log.start_offset();
    while next <= last {
        let batches = log
            .read_entries(next, last, 4 << 20)
            .await
            .map_err(|e| format!("read from {next}: {e}"))?;
        if batches.is_empty() {
            return Err(format!("no batch at {next} (last {last})"));
        }
        for batch in batches {
            let view = decode_batch(&batch, 64 << 10).map_err(|e| format!("{next}: {e}"))?;
            let header = view.header();
            if header.index() != next || header.base_offset() != expected_offset {
                return Err(format!("batch {} / {} out of sequence", header.index(), next));
            }
            out.insert(
                next.0,
                Ack {
                    offset: header.base_offset().0,
                    record_count: header.record_count(),
                    crc: crc32fast::hash(&batch),
                },
            );
            expected_offset = header.next_offset();
            next = LogIndex(next.0 + 1);
        }
    }
    if log.next_offset() != expected_offset {
        return Err(format!("next_offset {:?} != {expected_offset:?}", log.next_offset()));
    }
    if log.durable_offset() != expected_offset {
        return Err(format!("durable_offset {:?} != {expected_offset:?}", log.durable_offset()));
    }
    let start = log.start_index().0;
    log.close().await.map_err(|e| format!("close: {e}"))?;
    Ok((out, report.torn_bytes_dropped, start))
}

/// Whether a segment of the log in `dir` is a recycled one (header flag bit 0).
fn holds_recycled_segment(dir: &Path) -> bool {
    std::fs::read_dir(dir).unwrap().any(|entry| {
        let path = entry.unwrap().path();
        path.extension().is_some_and(|e| e == "seg")
            && std::fs::read(&path).is_ok_and(|bytes| bytes.len() > 8 && bytes[6] & 1 != 0)
    })
}

fn run_child(dir: &Path, seed: u64, flushes: usize, kill_after: Duration) -> Vec<(u64, Ack)> {
    let mut child = Command::new(std::env::current_exe().expect("current exe"))
        .args(["--exact", "engine_crash_child", "--nocapture", "--test-threads=1"])
        .env(CHILD_DIR_ENV, dir)
        .env(CHILD_SEED_ENV, seed.to_string())
        .env(CHILD_FLUSHES_ENV, flushes.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn child");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut lines = Vec::new();
    // Wait until the child has opened the log, then let it run for `kill_after`.
    let started = Instant::now();
    loop {
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(line) => {
                let ready = line.ends_with("ready");
                lines.push(line);
                if ready {
                    break;
                }
            }
            Err(_) => panic!("child did not become ready in 30 s: {lines:?}"),
        }
        assert!(started.elapsed() < Duration::from_secs(30));
    }
    std::thread::sleep(kill_after);
    child.kill().expect("SIGKILL"); // std sends SIGKILL on Unix
    child.wait().expect("wait");
    reader.join().expect("reader");
    lines.extend(rx.try_iter());
    lines
        .iter()
        .filter_map(|line| {
            let mut parts = line.strip_prefix("ack ")?.split(' ');
            let mut next = || parts.next().and_then(|p| p.parse::<u64>().ok());
            let index = next()?;
            let ack = Ack { offset: next()?, record_count: next()? as u32, crc: next()? as u32 };
            Some((index, ack))
        })
        .collect()
}

#[test]
fn engine_crash_recovery_keeps_every_acknowledged_batch() {
    if std::env::var(CHILD_DIR_ENV).is_ok() {
        return;
    }
    let seed: u64 = std::env::var("RINGLOG_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    println!("engine_crash seed {seed} (replay: RINGLOG_CRASH_SEED={seed})");
    let mut rng = SmallRng::seed_from_u64(seed);
    let dir = tempfile::Builder::new().prefix("ringlog-crash").tempdir_in("/tmp").unwrap();
    let mut acknowledged: BTreeMap<u64, Ack> = BTreeMap::new();
    let started = Instant::now();
    let mut torn_rounds = 0;
    let mut recycled_rounds = 0;
    for round in 0..ROUNDS {
        let kill_after = Duration::from_micros(rng.gen_range(0..120_000));
        let flushes = rng.gen_range(1..=4usize);
        let acks = run_child(dir.path(), rng.gen(), flushes, kill_after);
        for (index, ack) in &acks {
            // A later round may legitimately reuse an index only if the batch was never
            // acknowledged before; an acknowledged index never changes.
            if let Some(previous) = acknowledged.insert(*index, *ack) {
                assert_eq!(previous, *ack, "seed {seed} round {round}: index {index} changed");
            }
        }
        let path = dir.path().to_path_buf();
        let log = run_on_executor(move || read_log(path, flushes));
        let (log, torn, start) = log.unwrap_or_else(|e| panic!("seed {seed} round {round}: {e}"));
        torn_rounds += u32::from(torn > 0);
        recycled_rounds += u32::from(holds_recycled_segment(dir.path()));
        // Retention (recycling children) deletes whole segments below the log start.
        for (index, ack) in acknowledged.range(start..) {
            assert_eq!(
                log.get(index),
                Some(ack),
                "seed {seed} round {round}: acknowledged batch {index} lost or changed"
            );
        }
        println!(
            "round {round}: {flushes} flushes in flight max, killed after {kill_after:?}, {} acks this round, {} in the log, \
             {torn} torn bytes dropped",
            acks.len(),
            log.len()
        );
    }
    assert!(acknowledged.len() > 100, "the children acknowledged too little to test anything");
    assert!(recycled_rounds > 0, "seed {seed}: no round reopened a recycled segment");
    println!("{ROUNDS} kills in {:?}, {torn_rounds} recoveries cut a torn tail", started.elapsed());
}
