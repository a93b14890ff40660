//! The node's Rust API (`ringlog_node::node::NodeHandle`) with real nodes in this process: one
//! node, and three nodes replicating to each other over loopback.

#[path = "node_common.rs"]
mod common;

use std::sync::mpsc;
use std::time::Duration;

use common::{cluster_configs, read_records, retry, wait_leader, BATCH_SIZE_MAX, WAIT_MAX};
use ringlog_node::node::{
    Acks, Consistency, Node, NodeError, NodeExit, NodeHandle, NodeStartError, Offset, PartitionId,
    Role, ShutdownMode,
};

fn start_single(dir: &std::path::Path, shards: u16, partitions: u32) -> NodeHandle {
    let config = cluster_configs(dir, 1, shards, partitions).remove(0);
    Node::start(config).expect("a single node starts")
}

fn temp() -> tempfile::TempDir {
    tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap()
}

#[test]
fn single_node_appends_with_each_acks_and_reads_the_records_back() {
    let dir = temp();
    let node = start_single(dir.path(), 2, 4);
    assert_eq!((node.shards(), node.partitions()), (2, 4));
    assert_eq!(
        node.client_addr(1).unwrap().port(),
        node.client_addr(0).unwrap().port() + 1,
        "shard s listens on client.port + s"
    );
    for p in [PartitionId(1), PartitionId(2)] {
        wait_leader(&[&node], p);
        let mut expected = Vec::new();
        for (round, acks) in [Acks::None, Acks::Leader, Acks::Quorum].into_iter().enumerate() {
            let values: Vec<Vec<u8>> =
                (0..3).map(|i| format!("{p}-{round}-{i}").into_bytes()).collect();
            let slices: Vec<&[u8]> = values.iter().map(Vec::as_slice).collect();
            let outcome = retry(|| node.append(p, acks, &slices));
            assert_eq!(outcome.partition, p);
            assert_eq!(outcome.base_offset, Offset(expected.len() as u64));
            assert_eq!(outcome.last_offset, Offset(expected.len() as u64 + 2));
            if acks == Acks::Quorum {
                assert!(outcome.commit.0 > outcome.last_offset.0, "{outcome:?}");
            }
            for value in values {
                expected.push((expected.len() as u64, value));
            }
        }
        for consistency in [Consistency::ReplicaCommitted, Consistency::LeaderLinearizable] {
            let read = read_records(&node, p, 0, expected.len(), consistency);
            assert_eq!(read, expected, "{p} read back with {consistency:?}");
        }
        let status = node.status(p).unwrap();
        assert_eq!((status.partition, status.role), (p, Role::Leader));
        assert_eq!(status.commit_offset, Offset(expected.len() as u64));
    }
    let snapshot = node.snapshot().unwrap();
    assert_eq!(snapshot.shards.len(), 2);
    let partitions: Vec<u32> =
        snapshot.shards.iter().flat_map(|s| s.partitions.iter().map(|p| p.partition.0)).collect();
    assert_eq!(partitions.len(), 4, "{partitions:?}");
    node.shutdown(ShutdownMode::Graceful).unwrap();
}

#[test]
fn append_with_callback_reports_the_outcome_once() {
    let dir = temp();
    let node = start_single(dir.path(), 1, 1);
    let p = PartitionId(0);
    wait_leader(&[&node], p);
    retry(|| node.append(p, Acks::Quorum, &[b"first"]));
    let (tx, rx) = mpsc::channel();
    node.append_with_callback(
        p,
        Acks::Quorum,
        &[b"second"],
        Box::new(move |r| tx.send(r).unwrap()),
    )
    .unwrap();
    let outcome = rx.recv_timeout(WAIT_MAX).unwrap().unwrap();
    assert_eq!(outcome.base_offset, Offset(1));
    assert!(rx.recv_timeout(Duration::from_millis(200)).is_err(), "the callback ran twice");
    node.shutdown(ShutdownMode::Immediate).unwrap();
}

#[test]
fn unknown_partition_empty_and_oversize_appends_are_refused_with_typed_errors() {
    let dir = temp();
    let node = start_single(dir.path(), 1, 2);
    let missing = PartitionId(2);
    let unknown = |e: NodeError| matches!(e, NodeError::UnknownPartition { partition, partitions: 2 } if partition == missing);
    assert!(unknown(node.append(missing, Acks::Quorum, &[b"x"]).unwrap_err()));
    assert!(unknown(node.status(missing).unwrap_err()));
    assert!(unknown(
        node.read(missing, Offset(0), 1024, Consistency::ReplicaCommitted, Duration::ZERO)
            .unwrap_err()
    ));
    let p = PartitionId(0);
    assert!(matches!(node.append(p, Acks::Quorum, &[]), Err(NodeError::Invalid(_))));
    let big = vec![7u8; BATCH_SIZE_MAX as usize];
    match node.append(p, Acks::Quorum, &[&big]) {
        Err(NodeError::Oversize { len, max }) => {
            assert_eq!(max, BATCH_SIZE_MAX);
            assert!(len > max);
        }
        other => panic!("expected Oversize, got {other:?}"),
    }
    // An empty record is a record.
    wait_leader(&[&node], p);
    let outcome = retry(|| node.append(p, Acks::Quorum, &[b""]));
    assert_eq!((outcome.base_offset, outcome.last_offset), (Offset(0), Offset(0)));
    let read = read_records(&node, p, 0, 1, Consistency::ReplicaCommitted);
    assert_eq!(read, vec![(0, Vec::new())]);
    node.shutdown(ShutdownMode::Graceful).unwrap();
}

#[test]
fn a_read_at_the_end_waits_and_returns_nothing_and_a_read_past_it_is_out_of_range() {
    let dir = temp();
    let node = start_single(dir.path(), 1, 1);
    let p = PartitionId(0);
    wait_leader(&[&node], p);
    retry(|| node.append(p, Acks::Quorum, &[b"a", b"b"]));
    let at_end = node
        .read(p, Offset(2), 1024, Consistency::ReplicaCommitted, Duration::from_millis(100))
        .unwrap();
    assert!(at_end.batches.is_empty(), "{at_end:?}");
    assert_eq!((at_end.next_offset, at_end.commit), (Offset(2), Offset(2)));
    match node.read(p, Offset(1000), 1024, Consistency::ReplicaCommitted, Duration::ZERO) {
        Err(NodeError::OffsetOutOfRange { requested, log_end, .. }) => {
            assert_eq!(requested, Offset(1000));
            assert!(log_end.0 <= 2, "{log_end:?}");
        }
        other => panic!("expected OffsetOutOfRange, got {other:?}"),
    }
    node.shutdown(ShutdownMode::Graceful).unwrap();
}

#[test]
fn shutdown_is_idempotent_and_later_calls_answer_stopped() {
    let dir = temp();
    let node = start_single(dir.path(), 2, 2);
    let clone = node.clone();
    let waiter = std::thread::spawn(move || clone.wait());
    node.shutdown(ShutdownMode::Graceful).unwrap();
    node.shutdown(ShutdownMode::Graceful).unwrap();
    node.shutdown(ShutdownMode::Immediate).unwrap();
    assert_eq!(waiter.join().unwrap(), NodeExit::Stopped);
    assert_eq!(node.wait(), NodeExit::Stopped);
    let p = PartitionId(1);
    assert!(matches!(node.append(p, Acks::Quorum, &[b"x"]), Err(NodeError::Stopped)));
    assert!(matches!(node.status(p), Err(NodeError::Stopped)));
    assert!(matches!(node.snapshot(), Err(NodeError::Stopped)));
    let done = Box::new(|_| panic!("a refused append's callback must not run"));
    assert!(matches!(
        node.append_with_callback(p, Acks::Quorum, &[b"x"], done),
        Err(NodeError::Stopped)
    ));
}

#[test]
fn a_restarted_node_serves_what_it_acknowledged_before() {
    let dir = temp();
    let config = cluster_configs(dir.path(), 1, 1, 1).remove(0);
    let p = PartitionId(0);
    let node = Node::start(config.clone()).unwrap();
    wait_leader(&[&node], p);
    retry(|| node.append(p, Acks::Quorum, &[b"kept"]));
    node.shutdown(ShutdownMode::Graceful).unwrap();
    drop(node);
    let node = Node::start(config).unwrap();
    let read = read_records(&node, p, 0, 1, Consistency::LeaderLinearizable);
    assert_eq!(read, vec![(0, b"kept".to_vec())]);
    node.shutdown(ShutdownMode::Immediate).unwrap();
}

#[test]
fn a_second_node_on_the_same_data_dir_is_refused_at_start() {
    let dir = temp();
    let config = cluster_configs(dir.path(), 1, 1, 1).remove(0);
    let node = Node::start(config.clone()).unwrap();
    let mut second = config.clone();
    // Other ports, same data dir: the log's lock refuses it.
    let other = cluster_configs(dir.path(), 1, 1, 1).remove(0);
    second.peers = other.peers;
    second.listen = other.listen;
    match Node::start(second) {
        Err(NodeStartError::Recovery { .. } | NodeStartError::DataDir { .. }) => {}
        Err(other) => panic!("expected a recovery/data dir error, got {other}"),
        Ok(_) => panic!("two nodes opened the same data dir"),
    }
    node.shutdown(ShutdownMode::Immediate).unwrap();
}

#[test]
fn three_nodes_replicate_quorum_appends_and_every_node_serves_committed_reads() {
    let dir = temp();
    let nodes: Vec<NodeHandle> = cluster_configs(dir.path(), 3, 1, 2)
        .into_iter()
        .map(|config| Node::start(config).expect("node starts"))
        .collect();
    let all: Vec<&NodeHandle> = nodes.iter().collect();
    for p in [PartitionId(0), PartitionId(1)] {
        let leader = wait_leader(&all, p);
        let follower = (leader + 1) % 3;
        match nodes[follower].append(p, Acks::Quorum, &[b"misrouted"]) {
            Err(NodeError::NotLeader { partition, .. }) => assert_eq!(partition, p),
            Ok(outcome) => panic!("a follower accepted an append: {outcome:?}"),
            Err(other) => panic!("expected NotLeader, got {other}"),
        }
        let mut expected = Vec::new();
        for i in 0..5u64 {
            let value = format!("{p}-{i}").into_bytes();
            let outcome = retry(|| nodes[leader].append(p, Acks::Quorum, &[&value]));
            assert_eq!(outcome.base_offset, Offset(i));
            expected.push((i, value));
        }
        for node in &nodes {
            let read = read_records(node, p, 0, expected.len(), Consistency::ReplicaCommitted);
            assert_eq!(read, expected, "{p} on node {}", node.node_id().0);
        }
        let status = nodes[leader].status(p).unwrap();
        assert_eq!(status.followers.len(), 2, "{status:?}");
    }
    for node in &nodes {
        node.shutdown(ShutdownMode::Graceful).unwrap();
    }
}

#[test]
fn graceful_shutdown_of_a_leader_leaves_a_leader_that_accepts_appends() {
    let dir = temp();
    let nodes: Vec<NodeHandle> = cluster_configs(dir.path(), 3, 1, 1)
        .into_iter()
        .map(|config| Node::start(config).expect("node starts"))
        .collect();
    let p = PartitionId(0);
    let all: Vec<&NodeHandle> = nodes.iter().collect();
    let leader = wait_leader(&all, p);
    let old_term = nodes[leader].status(p).unwrap().term;
    retry(|| nodes[leader].append(p, Acks::Quorum, &[b"before"]));
    nodes[leader].shutdown(ShutdownMode::Graceful).unwrap();
    let rest: Vec<&NodeHandle> =
        nodes.iter().enumerate().filter(|(i, _)| *i != leader).map(|(_, n)| n).collect();
    let new_leader = rest[wait_leader(&rest, p)];
    let status = new_leader.status(p).unwrap();
    assert!(status.term > old_term, "{status:?} after term {old_term:?}");
    let outcome = retry(|| new_leader.append(p, Acks::Quorum, &[b"after"]));
    assert_eq!(outcome.base_offset, Offset(1));
    for node in &rest {
        let read = read_records(node, p, 0, 2, Consistency::ReplicaCommitted);
        assert_eq!(read, vec![(0, b"before".to_vec()), (1, b"after".to_vec())]);
    }
    for node in &nodes {
        node.shutdown(ShutdownMode::Graceful).unwrap();
    }
}

#[test]
fn a_node_whose_client_port_is_taken_is_refused_at_start() {
    let dir = temp();
    let config = cluster_configs(dir.path(), 1, 1, 1).remove(0);
    let node = Node::start(config.clone()).unwrap();
    let mut second = config;
    second.data_dir = dir.path().join("second");
    match Node::start(second) {
        Err(NodeStartError::Listen { addr, .. }) => assert_eq!(Some(addr), node.client_addr(0)),
        Err(other) => panic!("expected a listen error, got {other}"),
        Ok(_) => panic!("two nodes listen on one client port"),
    }
    node.shutdown(ShutdownMode::Immediate).unwrap();
}
