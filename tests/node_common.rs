//! Support for the in-process node tests (`node_api.rs`, `node_server.rs`): node configs with
//! free ports and small limits, leader lookup, record decoding.
//!
//! Memory: every executor locks 3 × `IO_MEMORY` (192 KiB, glommio's floor). A test binary runs
//! its tests in parallel, all in one process: node_api's 9 tests start at most ~20 executors at
//! once (3.75 MiB), within the 8 MiB RLIMIT_MEMLOCK of an unprivileged user here. As root the
//! limit is not enforced at all (CAP_IPC_LOCK), so only a run as a normal user proves the fit;
//! past the limit glommio would only warn and fall back to unregistered buffers.

#![allow(dead_code)]

use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ringlog_node::config::NodeConfig;
use ringlog_node::node::{NodeError, NodeHandle, PartitionId, ReadOutcome, Role};

/// IO memory per ring and executor in tests (glommio's floor is 64 KiB).
pub const IO_MEMORY: u64 = 64 * 1024;
/// Largest batch in tests.
pub const BATCH_SIZE_MAX: u64 = 128 * 1024;
/// Generous bound for anything a test waits for (elections on a loaded 2-core machine).
pub const WAIT_MAX: Duration = Duration::from_secs(60);

/// Where the next port search of this process starts (every test of a binary runs in the
/// same process: two tests must never probe the same range, since glommio binds with
/// SO_REUSEPORT and two nodes on one port would silently split its connections).
static NEXT_PORT: AtomicU32 = AtomicU32::new(0);
const PORTS_FIRST: u32 = 20_000;
const PORTS_SPAN: u32 = 30_000;

/// Free ports `base..base + count` on 127.0.0.1 (checked by binding each; released again).
/// The start is random per process (pid and clock), so concurrent test processes rarely meet.
pub fn free_port_range(count: u16) -> u16 {
    let count = u32::from(count);
    if NEXT_PORT.load(Ordering::SeqCst) == 0 {
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
        let start = (std::process::id().wrapping_mul(7919) ^ nanos) % PORTS_SPAN;
        let _ = NEXT_PORT.compare_exchange(0, start + 1, Ordering::SeqCst, Ordering::SeqCst);
    }
    loop {
        let offset = NEXT_PORT.fetch_add(count + 1, Ordering::SeqCst) % PORTS_SPAN;
        let base = PORTS_FIRST + offset;
        if offset + count >= PORTS_SPAN {
            continue;
        }
        let bound = (0..count)
            .map_while(|i| TcpListener::bind(("127.0.0.1", (base + i) as u16)).ok())
            .count();
        if bound == count as usize {
            return base as u16;
        }
    }
}

/// Configs of a cluster of `nodes` nodes with `shards` shards and `partitions` partitions,
/// data under `root/<id>`; ports are free (client/peer of node i shard s: base + ...).
pub fn cluster_configs(root: &Path, nodes: u32, shards: u16, partitions: u32) -> Vec<NodeConfig> {
    let per_node = 2 * shards + 1;
    let base = free_port_range(per_node * nodes as u16);
    let addr = |node: u32, offset: u16| -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], base + node as u16 * per_node + offset))
    };
    let mut peers = String::new();
    for id in 1..=nodes {
        let i = id - 1;
        peers.push_str(&format!(
            "[[peers]]\nid = {id}\npeer = \"{}\"\nclient = \"{}\"\n\n",
            addr(i, 0),
            addr(i, shards)
        ));
    }
    (1..=nodes)
        .map(|id| {
            let dir = root.join(id.to_string());
            let text = format!(
                "node_id = {id}\ncluster_id = 77\ndata_dir = \"{}\"\nshards = {shards}\n\
                 io_memory = {IO_MEMORY}\npartitions = {partitions}\npinning = \"never\"\n\n\
                 [listen]\nmetrics = \"{}\"\n\n{peers}\
                 [storage]\nsegment_size = 4194304\nflush_bytes_max = 524288\n\
                 queued_bytes_max = 2097152\nbatch_size_max = {BATCH_SIZE_MAX}\n\
                 tail_cache_bytes_max = 1048576\n\n[tls]\nmode = \"plaintext\"\n",
                dir.display(),
                addr(id - 1, 2 * shards),
            );
            NodeConfig::from_toml_str(&text, Path::new("test.toml"), root)
                .unwrap_or_else(|e| panic!("test config does not validate: {e}\n{text}"))
                .config
        })
        .collect()
}

/// The index in `nodes` of the leader of `p` (as its own status says), waiting for one.
pub fn wait_leader(nodes: &[&NodeHandle], p: PartitionId) -> usize {
    let deadline = Instant::now() + WAIT_MAX;
    loop {
        for (i, node) in nodes.iter().enumerate() {
            if let Ok(status) = node.status(p) {
                if status.role == Role::Leader {
                    return i;
                }
            }
        }
        assert!(Instant::now() < deadline, "no leader for {p} within {WAIT_MAX:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Retries `op` while it fails with a transient error (no leader yet, backpressure, or a
/// leader that stepped down with the produce pending: `Timeout`, outcome unknown — a retry
/// may append the record twice, which these tests allow).
pub fn retry<T>(mut op: impl FnMut() -> Result<T, NodeError>) -> T {
    let deadline = Instant::now() + WAIT_MAX;
    loop {
        match op() {
            Ok(value) => return value,
            Err(
                error @ (NodeError::NotLeader { .. }
                | NodeError::Backpressure { .. }
                | NodeError::Timeout),
            ) => {
                assert!(Instant::now() < deadline, "still failing after {WAIT_MAX:?}: {error}");
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(error) => panic!("unexpected error: {error}"),
        }
    }
}

/// Every record of the batches of a read, in order, with its offset.
pub fn records(read: &ReadOutcome) -> Vec<(u64, Vec<u8>)> {
    let mut out = Vec::new();
    for batch in &read.batches {
        let view = ringlog_engine::decode_batch(batch, usize::MAX).expect("a read batch decodes");
        let base = view.header().base_offset().0;
        for (i, record) in view.records().enumerate() {
            out.push((base + i as u64, record.to_vec()));
        }
    }
    out
}

/// Reads `p` on `node` from `from` until `count` records were seen (or panics after
/// `WAIT_MAX`), following `next_offset`.
pub fn read_records(
    node: &NodeHandle,
    p: PartitionId,
    from: u64,
    count: usize,
    consistency: ringlog_node::node::Consistency,
) -> Vec<(u64, Vec<u8>)> {
    let deadline = Instant::now() + WAIT_MAX;
    let mut seen = Vec::new();
    let mut offset = ringlog_node::node::Offset(from);
    while seen.len() < count {
        assert!(Instant::now() < deadline, "only {} of {count} records of {p}", seen.len());
        let read = match node.read(p, offset, 1 << 20, consistency, Duration::from_millis(200)) {
            Ok(read) => read,
            Err(NodeError::NotLeader { .. } | NodeError::Backpressure { .. }) => {
                std::thread::sleep(Duration::from_millis(20));
                continue;
            }
            Err(error) => panic!("read of {p} at {offset:?} failed: {error}"),
        };
        seen.extend(records(&read));
        offset = read.next_offset;
    }
    seen
}
