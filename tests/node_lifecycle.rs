//! Node lifecycles that leak nothing (issue 19): start/stop cycles end with the process's
//! open files and RSS where they started, and a failed start releases everything it took.
//!
//! Its own test binary, one test at a time (a lock), so that no other test's files count.

#[path = "node_common.rs"]
mod common;

use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::{cluster_configs, retry, wait_leader};
use ringlog_node::node::{Acks, Node, NodeStartError, PartitionId, ShutdownMode};

/// Node start/stop cycles (1 shard, 2 partitions, one quorum append each).
const NODE_CYCLES: usize = 200;
/// Cycles run before the baseline is taken (lazily built process-wide state).
const WARM_UP_CYCLES: usize = 10;
/// How much the RSS floor may rise over the measured cycles (allocator noise).
const RSS_GROWTH_MAX_BYTES: u64 = 2 << 20;
/// Samples the RSS floor is taken over.
const RSS_WINDOW: usize = 10;
/// How long threads that outlive a stop by design (glommio's blocking-pool threads, the
/// watchdog) may take to end, and with them what they hold.
const THREAD_END_WAIT_MAX: Duration = Duration::from_secs(5);
/// Failed-start-then-retry rounds.
const RETRY_ROUNDS: usize = 5;

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn temp() -> tempfile::TempDir {
    tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap()
}

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

/// Files open now that were not in `before` (a multiset difference).
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

fn thread_count() -> usize {
    std::fs::read_dir("/proc/self/task").unwrap().count()
}

/// Waits (up to `THREAD_END_WAIT_MAX`) until at most `threads` threads run and no file is
/// open beyond `files`; returns the files still open beyond `files`.
fn settle(threads: usize, files: &[String]) -> Vec<String> {
    let deadline = Instant::now() + THREAD_END_WAIT_MAX;
    loop {
        let leaked = new_files(files, &open_files());
        if (leaked.is_empty() && thread_count() <= threads) || Instant::now() >= deadline {
            return leaked;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// RSS after handing freed heap memory back to the kernel.
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

/// Makes every thread allocate from the main heap arena, which `malloc_trim` fully trims.
fn one_heap_arena() {
    // SAFETY: mallopt only changes allocator tuning; M_ARENA_MAX = 1 is a valid setting.
    unsafe { libc::mallopt(libc::M_ARENA_MAX, 1) };
}

/// The lowest of the last `RSS_WINDOW` RSS samples: RSS after a cycle bounces (freed stacks
/// and heap come and go) but keeps returning to its floor; a leak lifts the floor.
fn floor(samples: &[u64]) -> u64 {
    let from = samples.len().saturating_sub(RSS_WINDOW);
    samples[from..].iter().copied().min().unwrap()
}

#[test]
fn node_start_stop_cycles_leave_open_files_and_rss_where_they_started() {
    one_heap_arena();
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let dir = temp();
    let config = cluster_configs(dir.path(), 1, 1, 2).remove(0);
    let threads = thread_count();
    let cycle = |mode: ShutdownMode| {
        let node = Node::start(config.clone()).unwrap();
        wait_leader(&[&node], PartitionId(1));
        retry(|| node.append(PartitionId(1), Acks::Quorum, &[b"cycle"]));
        node.shutdown(mode).unwrap();
    };
    let mut samples = Vec::new();
    for _ in 0..WARM_UP_CYCLES {
        cycle(ShutdownMode::Immediate);
        samples.push(rss_bytes());
    }
    let files_before = open_files();
    settle(threads, &files_before);
    let rss_before = floor(&samples);
    samples.clear();
    for round in 0..NODE_CYCLES {
        let mode = if round % 2 == 0 { ShutdownMode::Graceful } else { ShutdownMode::Immediate };
        cycle(mode);
        let leaked = settle(threads, &files_before);
        assert!(leaked.is_empty(), "cycle {round} ({mode:?}) left files open: {leaked:?}");
        samples.push(rss_bytes());
    }
    let rss_after = floor(&samples);
    assert!(
        rss_after <= rss_before + RSS_GROWTH_MAX_BYTES,
        "RSS floor rose from {rss_before} to {rss_after} bytes over {NODE_CYCLES} cycles"
    );
}

#[test]
fn a_start_refused_for_a_taken_client_port_releases_the_data_dir_for_a_retry() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let dir = temp();
    let holder_config = cluster_configs(dir.path(), 1, 1, 2).remove(0);
    for round in 0..RETRY_ROUNDS {
        let holder = Node::start(holder_config.clone()).unwrap();
        let mut config = holder_config.clone();
        config.data_dir = dir.path().join(format!("second-{round}"));
        match Node::start(config.clone()) {
            Err(NodeStartError::Listen { .. }) => {}
            Err(other) => panic!("round {round}: expected a listen error, got {other}"),
            Ok(_) => panic!("round {round}: two nodes listen on one client port"),
        }
        holder.shutdown(ShutdownMode::Immediate).unwrap();
        // The port is free now: the same start must succeed, not find its own dir locked.
        let node = match Node::start(config) {
            Ok(node) => node,
            Err(error) => panic!("round {round}: the retry after the port freed failed: {error}"),
        };
        node.shutdown(ShutdownMode::Immediate).unwrap();
    }
}

/// A start refused because the peer port is taken (by any socket) fails after the shard opened
/// its partitions: it must close them, so that the retry once the port is free does not find
/// its own data dir locked. (The logs were dropped, not closed, and the executor ended before
/// their tasks released the lock: every retry answered `Locked`.)
#[test]
fn a_start_refused_for_a_taken_peer_port_closes_its_logs_so_the_retry_starts() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let dir = temp();
    let config = cluster_configs(dir.path(), 1, 1, 2).remove(0);
    let peer = config.peer_listen().expect("a peer address");
    for round in 0..RETRY_ROUNDS {
        let holder = std::net::TcpListener::bind(peer).unwrap();
        match Node::start(config.clone()) {
            Err(NodeStartError::Listen { addr, .. }) => assert_eq!(addr, peer),
            Err(other) => panic!("round {round}: expected a listen error, got {other}"),
            Ok(_) => panic!("round {round}: started on a taken peer port"),
        }
        drop(holder);
        let node = match Node::start(config.clone()) {
            Ok(node) => node,
            Err(error) => panic!("round {round}: the retry after the port freed failed: {error}"),
        };
        node.shutdown(ShutdownMode::Immediate).unwrap();
    }
}

/// Issue 19 item 7: the memlock need is counted per process. A running node reserves what its
/// executors lock, a failed start reserves nothing, and a stop releases it (so the next start,
/// or a log opened beside it, is checked against what is really locked).
#[test]
fn a_node_reserves_its_locked_memory_while_it_runs_and_a_stop_or_failed_start_releases_it() {
    use ringlog_engine::runtime::{memlock_held_bytes, memlock_required_bytes};
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let dir = temp();
    let config = cluster_configs(dir.path(), 1, 1, 2).remove(0);
    let need = memlock_required_bytes(config.shard_count(), config.io_memory as usize);
    let before = memlock_held_bytes();
    let node = Node::start(config.clone()).unwrap();
    assert_eq!(memlock_held_bytes(), before + need, "a running node holds its reservation");
    let mut second = config.clone();
    second.data_dir = dir.path().join("second");
    assert!(Node::start(second).is_err(), "the same ports: the second start fails");
    assert_eq!(memlock_held_bytes(), before + need, "a failed start reserves nothing");
    node.shutdown(ShutdownMode::Graceful).unwrap();
    assert_eq!(memlock_held_bytes(), before, "a stopped node released its reservation");
}
