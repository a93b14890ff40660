//! Support for the in-process node tests (`node_api.rs`, `node_server.rs`): node configs with
//! free ports and small limits, leader lookup, record decoding.
//!
//! Memory: every executor locks 3 × `IO_MEMORY` (768 KiB); three nodes × two shards fit the
//! 8 MiB RLIMIT_MEMLOCK of an unprivileged user on this machine (root ignores the limit).

#![allow(dead_code)]

use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::time::{Duration, Instant};

use ringlog::config::NodeConfig;
use ringlog::node::{NodeError, NodeHandle, PartitionId, ReadOutcome, Role};

/// IO memory per ring and executor in tests (glommio's floor is 64 KiB).
pub const IO_MEMORY: u64 = 256 * 1024;
/// Largest batch in tests.
pub const BATCH_SIZE_MAX: u64 = 128 * 1024;
/// Generous bound for anything a test waits for (elections on a loaded 2-core machine).
pub const WAIT_MAX: Duration = Duration::from_secs(60);

/// Free ports `base..base + count` on 127.0.0.1 (checked by binding each; released again).
pub fn free_port_range(count: u16) -> u16 {
    let seed = std::process::id() as u64 ^ Instant::now().elapsed().as_nanos() as u64;
    let mut candidate = 20_000 + (seed.wrapping_mul(7919) % 20_000) as u16;
    loop {
        let listeners: Vec<_> = (0..count)
            .map_while(|i| TcpListener::bind(("127.0.0.1", candidate + i)).ok())
            .collect();
        if listeners.len() == count as usize {
            return candidate;
        }
        candidate = 20_000 + (candidate - 20_000 + count + 37) % 40_000;
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
                 tail_cache_bytes_max = 1048576\n",
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

/// Retries `op` while it fails with a transient error (no leader yet, backpressure).
pub fn retry<T>(mut op: impl FnMut() -> Result<T, NodeError>) -> T {
    let deadline = Instant::now() + WAIT_MAX;
    loop {
        match op() {
            Ok(value) => return value,
            Err(error @ (NodeError::NotLeader { .. } | NodeError::Backpressure { .. })) => {
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
    consistency: ringlog::node::Consistency,
) -> Vec<(u64, Vec<u8>)> {
    let deadline = Instant::now() + WAIT_MAX;
    let mut seen = Vec::new();
    let mut offset = ringlog::node::Offset(from);
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
