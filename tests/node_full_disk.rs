//! A full disk is not fatal for a node (issue #13 item 10): it keeps serving reads and Raft,
//! answers appends `StorageFull` when it leads, never acks what it could not make durable,
//! and catches up by itself once space is back. Real nodes in this process whose disks fill
//! on command (`Node::start_with_faults`; `FaultInjector::fill_disk`: every write that
//! allocates space fails with ENOSPC, as on a real full disk).
//!
//! Before the fix the preallocator's (or the roll's) ENOSPC latched the log and the node
//! stopped with `NodeExit::Fatal` — the crash loop of the issue.

#[path = "node_common.rs"]
mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{cluster_configs, read_records, retry, wait_leader, WAIT_MAX};
use ringlog_engine::FaultInjector;
use ringlog_node::node::{
    Acks, Consistency, Node, NodeError, NodeHandle, PartitionId, Role, ShutdownMode, StartOptions,
    StorageFaults,
};

/// Bytes of one record: with two per batch, ~34 batches fill a 4 MiB test segment, so a
/// roll comes quickly.
const RECORD_BYTES: usize = 60 * 1024;

fn temp() -> tempfile::TempDir {
    tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap()
}

/// A 3-node cluster, one shard, one partition, an injector under every node's partition.
fn start_cluster(root: &std::path::Path) -> (Vec<NodeHandle>, Vec<Arc<FaultInjector>>) {
    let p = PartitionId(0);
    let configs = cluster_configs(root, 3, 1, 1);
    let mut nodes = Vec::new();
    let mut injectors = Vec::new();
    for config in configs {
        let mut faults = StorageFaults::default();
        injectors.push(faults.add(p));
        nodes.push(Node::start_with_faults(config, StartOptions::default(), faults).unwrap());
    }
    (nodes, injectors)
}

fn record(tag: &str, i: usize, k: usize) -> Vec<u8> {
    let mut value = format!("{tag}-{i}-{k}-").into_bytes();
    value.resize(RECORD_BYTES, (i % 251) as u8);
    value
}

/// Appends `count` two-record batches with acks=quorum through the leader (retrying while
/// there is none); returns the acknowledged records with their offsets.
fn append_quorum(nodes: &[&NodeHandle], tag: &str, count: usize) -> Vec<(u64, Vec<u8>)> {
    let p = PartitionId(0);
    let mut acked = Vec::new();
    for i in 0..count {
        let values = [record(tag, i, 0), record(tag, i, 1)];
        let slices: Vec<&[u8]> = values.iter().map(Vec::as_slice).collect();
        let outcome = retry(|| nodes[wait_leader(nodes, p)].append(p, Acks::Quorum, &slices));
        for (k, value) in values.into_iter().enumerate() {
            acked.push((outcome.base_offset.0 + k as u64, value));
        }
    }
    acked
}

/// Waits until `node`'s durable index reaches `index`.
fn wait_durable(node: &NodeHandle, index: u64) {
    let deadline = Instant::now() + WAIT_MAX;
    loop {
        let status = node.status(PartitionId(0)).expect("the node serves status");
        if status.durable.0 >= index {
            return;
        }
        assert!(Instant::now() < deadline, "durable {:?} never reached {index}", status.durable);
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn assert_all_present(node: &NodeHandle, acked: &[(u64, Vec<u8>)]) {
    let read = read_records(node, PartitionId(0), 0, acked.len(), Consistency::ReplicaCommitted);
    assert_eq!(&read[..acked.len()], acked, "acknowledged records differ");
}

#[test]
fn a_follower_whose_disk_fills_keeps_serving_acks_nothing_undurable_and_catches_up() {
    let dir = temp();
    let (nodes, injectors) = start_cluster(dir.path());
    let all: Vec<&NodeHandle> = nodes.iter().collect();
    let p = PartitionId(0);
    let mut acked = append_quorum(&all, "before", 4);
    let leader = wait_leader(&all, p);
    let follower = (leader + 1) % 3;
    injectors[follower].fill_disk();
    // Enough to roll the follower's segment (4 MiB) several times: it meets the full disk.
    acked.extend(append_quorum(&all, "while-full", 60));
    let leader_status = nodes[leader].status(p).unwrap();
    let status = nodes[follower].status(p).expect("the full follower is up and answers");
    assert_eq!(status.role, Role::Follower);
    assert!(
        status.durable < leader_status.last_index,
        "the follower made everything durable on a full disk: {status:?}"
    );
    // It still serves reads of what it holds.
    let read = nodes[follower]
        .read(
            p,
            ringlog_node::node::Offset(0),
            1 << 20,
            Consistency::ReplicaCommitted,
            Duration::ZERO,
        )
        .expect("reads on a full disk");
    assert!(!read.batches.is_empty());
    // Space comes back: the follower catches up by itself.
    injectors[follower].free_disk();
    wait_durable(&nodes[follower], leader_status.last_index.0);
    acked.extend(append_quorum(&all, "after", 4));
    for node in &nodes {
        assert_all_present(node, &acked);
    }
    for node in &nodes {
        node.shutdown(ShutdownMode::Graceful).unwrap();
    }
}

#[test]
fn a_leader_whose_disk_fills_answers_storage_full_and_resumes_when_space_is_back() {
    let dir = temp();
    let (nodes, injectors) = start_cluster(dir.path());
    let all: Vec<&NodeHandle> = nodes.iter().collect();
    let p = PartitionId(0);
    let mut acked = append_quorum(&all, "before", 4);
    let leader = wait_leader(&all, p);
    injectors[leader].fill_disk();
    // Appends go on until the leader's log needs a segment the disk cannot hold.
    let deadline = Instant::now() + WAIT_MAX;
    let mut i = 0;
    let refusal = loop {
        assert!(Instant::now() < deadline, "the leader never answered StorageFull");
        let values = [record("filling", i, 0), record("filling", i, 1)];
        let slices: Vec<&[u8]> = values.iter().map(Vec::as_slice).collect();
        match nodes[leader].append(p, Acks::Quorum, &slices) {
            Ok(outcome) => {
                for (k, value) in values.into_iter().enumerate() {
                    acked.push((outcome.base_offset.0 + k as u64, value));
                }
                i += 1;
            }
            Err(NodeError::Backpressure { .. }) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => break e,
        }
    };
    match refusal {
        NodeError::StorageFull { partition, reason } => {
            assert_eq!(partition, p);
            assert!(reason.contains("No space"), "{reason}");
        }
        other => panic!("expected StorageFull, got {other:?}"),
    }
    // Still up and serving reads; it hands the leadership to a follower, so the partition
    // takes appends again while its disk is still full.
    assert_all_present(&nodes[leader], &acked);
    let deadline = Instant::now() + WAIT_MAX;
    let other = loop {
        assert!(Instant::now() < deadline, "the full leader kept the leadership");
        let now = wait_leader(&all, p);
        if now != leader {
            break now;
        }
        // Each refused append may prompt the hand-off (at most once per election timeout).
        let _ = nodes[leader].append(p, Acks::Quorum, &[b"prompt".as_slice()]);
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_ne!(nodes[leader].status(p).unwrap().role, Role::Leader);
    let while_full = record("while-full", 0, 0);
    let outcome = retry(|| nodes[other].append(p, Acks::Quorum, &[&while_full]));
    acked.push((outcome.base_offset.0, while_full));
    assert_all_present(&nodes[other], &acked);
    injectors[leader].free_disk();
    // Appends are taken again once the leader's log notices (backoff at most 2 s).
    let deadline = Instant::now() + WAIT_MAX;
    let resumed = loop {
        assert!(Instant::now() < deadline, "appends did not resume");
        let value = record("after", 0, 0);
        match all[wait_leader(&all, p)].append(p, Acks::Quorum, &[&value]) {
            Ok(outcome) => break (outcome.base_offset.0, value),
            Err(NodeError::StorageFull { .. } | NodeError::Backpressure { .. }) => {
                std::thread::sleep(Duration::from_millis(50))
            }
            Err(NodeError::NotLeader { .. }) => std::thread::sleep(Duration::from_millis(50)),
            Err(e) => panic!("after space came back: {e}"),
        }
    };
    acked.push(resumed);
    acked.extend(append_quorum(&all, "after-more", 3));
    for node in &nodes {
        assert_all_present(node, &acked);
    }
    for node in &nodes {
        node.shutdown(ShutdownMode::Graceful).unwrap();
    }
}
