//! Lifecycles that leak nothing: engine start/shutdown and `Log` open/close cycles end with
//! the process's open files and RSS where they started (issue 19).
//!
//! Two causes were found and fixed at the root: glommio 0.9.0 never dropped a task's header,
//! so each executor leaked its eventfd (third_party/glommio/RINGLOG_PATCHES.md), and a glommio
//! file dropped without an explicit close only queues its close on the ring, which an executor
//! ending right then never submitted (`runtime::settle_dropped_files`, `Log::close`).
//!
//! Its own test binary, one test at a time (a lock), so that no other test's files count.

mod common;

use std::sync::Mutex;

use ringlog_engine::batch::RecordsBuilder;
use ringlog_engine::shard::{Durability, Engine, EngineConfig, PartitionId};
use ringlog_engine::{Log, LogConfig};

/// Engine start/shutdown cycles (each starts 2 shard executors over 2 partitions).
const ENGINE_CYCLES: usize = 200;
/// `Log` open/close cycles on one executor.
const LOG_CYCLES: usize = 2_000;
/// Cycles run before the baseline is taken (lazily built process-wide state: allocator
/// arenas, glommio's per-device caches).
const WARM_UP_CYCLES: usize = 50;
/// How much RSS may grow over the measured cycles: allocator noise (up to ~1 MiB seen), while
/// a leak of 4 KiB per `Log` cycle would exceed it.
const RSS_GROWTH_MAX_BYTES: u64 = 2 << 20;

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Every open file of this process, by what it points at.
fn open_files() -> Vec<String> {
    let mut files: Vec<String> = std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .flatten()
        .filter_map(|entry| std::fs::read_link(entry.path()).ok())
        .map(|target| target.display().to_string())
        .collect();
    files.sort();
    files
}

/// Resident set size of this process, after handing freed heap memory back to the kernel
/// (what is left is memory in use, not the allocator's free lists).
fn rss_bytes() -> u64 {
    // SAFETY: malloc_trim only releases free heap pages; it is safe to call at any time.
    unsafe { libc::malloc_trim(0) };
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kib = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.split_whitespace().next()?.parse::<u64>().ok())
        .unwrap();
    kib * 1024
}

/// Makes every thread allocate from the main heap arena, which `malloc_trim` fully trims:
/// with per-thread arenas, memory freed by ended threads lingers in theirs.
fn one_heap_arena() {
    // SAFETY: mallopt only changes allocator tuning; M_ARENA_MAX = 1 is a valid setting.
    unsafe { libc::mallopt(libc::M_ARENA_MAX, 1) };
}

/// The lowest RSS over the last `RSS_WINDOW` samples. RSS after a cycle bounces by several
/// MiB (freed thread stacks and allocator arenas come and go) but keeps returning to its
/// floor; a leak lifts the floor.
#[derive(Debug, Default)]
struct RssFloor {
    samples: std::collections::VecDeque<u64>,
}

/// Samples the floor is taken over.
const RSS_WINDOW: usize = 20;

impl RssFloor {
    fn sample(&mut self) {
        if self.samples.len() == RSS_WINDOW {
            self.samples.pop_front();
        }
        self.samples.push_back(rss_bytes());
    }

    fn take(&mut self) -> u64 {
        let floor = self.samples.iter().copied().min().unwrap_or_else(rss_bytes);
        self.samples.clear();
        floor
    }
}

/// Files open now that were not in `before` (the directory listing itself may show one).
fn new_files(before: &[String], after: &[String]) -> Vec<String> {
    let mut left = before.to_vec();
    after
        .iter()
        .filter(|file| match left.iter().position(|b| b == *file) {
            Some(at) => {
                left.swap_remove(at);
                false
            }
            None => true,
        })
        .cloned()
        .collect()
}

/// How long glommio's blocking-pool threads may take to end after their executor did: each
/// holds the executor's sleep notifier (its eventfd) until it sees its queue closed, and
/// nobody joins them.
const POOL_THREAD_END_WAIT_MAX: std::time::Duration = std::time::Duration::from_secs(5);

/// Threads of this process.
fn thread_count() -> usize {
    std::fs::read_dir("/proc/self/task").unwrap().count()
}

/// Waits (up to `POOL_THREAD_END_WAIT_MAX`) until no more threads run than `threads` and
/// no file is open that is not in `files`; returns the files still open beyond `files`.
fn settle(threads: usize, files: &[String]) -> Vec<String> {
    let deadline = std::time::Instant::now() + POOL_THREAD_END_WAIT_MAX;
    loop {
        let leaked = new_files(files, &open_files());
        let settled = leaked.is_empty() && thread_count() <= threads;
        if settled || std::time::Instant::now() >= deadline {
            return leaked;
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

fn engine_cycle(data: &std::path::Path) {
    let mut config = EngineConfig::new(data);
    config.shards = 2;
    config.partitions = 2;
    config.io_memory_bytes = 256 << 10;
    config.log.segment_size_bytes = 4 << 20;
    let engine = Engine::start(config).unwrap();
    for partition in 0..2 {
        let mut builder = RecordsBuilder::new(1 << 20);
        builder.push(b"cycle").unwrap();
        engine.append(PartitionId(partition), builder.finish(), Durability::Durable).unwrap();
    }
    engine.shutdown().unwrap();
}

#[test]
fn engine_start_shutdown_cycles_leave_open_files_and_rss_where_they_started() {
    one_heap_arena();
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let data = dir.path().join("data");
    let threads = thread_count();
    let mut rss = RssFloor::default();
    for _ in 0..WARM_UP_CYCLES {
        engine_cycle(&data);
        rss.sample();
    }
    let files_before = open_files();
    settle(threads, &files_before);
    let rss_before = rss.take();
    for cycle in 0..ENGINE_CYCLES {
        engine_cycle(&data);
        let leaked = settle(threads, &files_before);
        assert!(leaked.is_empty(), "cycle {cycle} left files open: {leaked:?}");
        rss.sample();
    }
    let rss_after = rss.take();
    assert!(
        rss_after <= rss_before + RSS_GROWTH_MAX_BYTES,
        "RSS grew from {rss_before} to {rss_after} bytes over {ENGINE_CYCLES} cycles"
    );
}

fn log_config() -> LogConfig {
    LogConfig { segment_size_bytes: 1 << 20, ..common::small_config() }
}

#[test]
fn log_close_releases_every_file_when_it_returns_on_a_running_executor() {
    one_heap_arena();
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let path = dir.path().join("log");
    let rss = common::run(move || async move {
        let cycle = |path: std::path::PathBuf| async move {
            let (log, _report) = Log::open(&path, log_config()).await.unwrap();
            let ack = log.append(common::request(1, 4, 100, b'x')).unwrap();
            log.wait_durable(ack.index).await.unwrap();
            log.close().await.unwrap();
        };
        let mut rss = RssFloor::default();
        for _ in 0..WARM_UP_CYCLES {
            cycle(path.clone()).await;
            rss.sample();
        }
        let files_before = open_files();
        let rss_before = rss.take();
        for round in 0..LOG_CYCLES {
            cycle(path.clone()).await;
            // No reactor cycle in between: close itself must have released the files.
            let leaked = new_files(&files_before, &open_files());
            assert!(leaked.is_empty(), "close {round} left files open: {leaked:?}");
            rss.sample();
        }
        (rss_before, rss.take())
    });
    let (rss_before, rss_after) = rss;
    assert!(
        rss_after <= rss_before + RSS_GROWTH_MAX_BYTES,
        "RSS grew from {rss_before} to {rss_after} bytes over {LOG_CYCLES} cycles"
    );
}

/// Appends in flight when shutdown starts: shutdown flushes them, so each is answered with its
/// true outcome — `Ok` with its offsets — and every one answered `Ok` is there after a
/// restart. (Each once got "the engine is shut down" although it was durable: a caller that
/// retried duplicated it.)
#[test]
fn appends_in_flight_at_shutdown_are_answered_ok_once_the_shutdown_flush_made_them_durable() {
    one_heap_arena();
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    const APPENDS: u64 = 200;
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let config = || {
        let mut config = EngineConfig::new(dir.path().join("data"));
        config.io_memory_bytes = 256 << 10;
        config.log.segment_size_bytes = 4 << 20;
        config
    };
    let engine = Engine::start(config()).unwrap();
    let (tx, rx) = crossbeam_channel::unbounded();
    for i in 0..APPENDS {
        let mut builder = RecordsBuilder::new(1 << 20);
        builder.push(format!("record {i}").as_bytes()).unwrap();
        let tx = tx.clone();
        engine
            .append_with_callback(PartitionId(0), builder.finish(), Durability::Durable, move |r| {
                let _ = tx.send(r);
            })
            .unwrap();
    }
    engine.shutdown().unwrap();
    drop(tx);
    let outcomes: Vec<_> = rx.iter().collect();
    assert_eq!(outcomes.len() as u64, APPENDS, "every accepted append is answered once");
    let mut offsets: Vec<u64> = outcomes
        .iter()
        .map(|outcome| match outcome {
            Ok(ack) => ack.base_offset.0,
            Err(error) => panic!("an append flushed by shutdown was answered {error}"),
        })
        .collect();
    offsets.sort_unstable();
    assert_eq!(offsets, (0..APPENDS).collect::<Vec<_>>());
    let engine = Engine::start(config()).unwrap();
    assert_eq!(engine.durable_offset(PartitionId(0)).unwrap().0, APPENDS);
    engine.shutdown().unwrap();
}

/// Executor cycles in `executors_whose_idle_tasks_were_cancelled_close_their_eventfd`.
const CANCEL_CYCLES: usize = 20;

/// glommio 0.9.0 gave a task cancelled while it waited (its handle dropped while it slept on
/// a timer or waited on a socket) one reference too many: the task was never destroyed, and
/// its header's `Arc` of the sleep notifier kept the executor's eventfd open after the
/// executor ended (third_party/glommio/RINGLOG_PATCHES.md, patch 3). A node stop cancels its
/// waiting accept loops and tickers that way, so every node start/stop leaked one eventfd.
#[test]
fn executors_whose_waiting_tasks_were_cancelled_close_their_eventfd() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let threads = thread_count();
    let before = open_files();
    for cycle in 0..CANCEL_CYCLES {
        std::thread::spawn(|| {
            let executor =
                glommio::LocalExecutorBuilder::default().io_memory(64 << 10).make().unwrap();
            executor.run(async {
                let waiting = glommio::spawn_local(async {
                    glommio::timer::sleep(std::time::Duration::from_secs(3600)).await;
                });
                // Let it park on its timer, then cancel it (dropping the handle does).
                glommio::timer::sleep(std::time::Duration::from_millis(2)).await;
                drop(waiting);
                // The cancelled task runs once more and drops its future.
                glommio::timer::sleep(std::time::Duration::from_millis(2)).await;
            });
        })
        .join()
        .unwrap();
        let leaked = settle(threads, &before);
        assert!(leaked.is_empty(), "cycle {cycle} left files open: {leaked:?}");
    }
}
