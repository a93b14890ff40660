//! A failed write or fdatasync is fatal for the node (issue #4, design.md §2 "fsyncgate"),
//! proven with real nodes in this process whose disks fail on command
//! (`Node::start_with_faults`: the engine's `FaultInjector` under a partition's log and hard
//! state).
//!
//! What each test proves:
//! - the append whose write/fdatasync failed answers `StorageFailed` (never `Ok`), and so does
//!   everything the partition answers after it (or `Stopped`/`ShuttingDown` once the node
//!   stopped, which it does on its own): the failure is latched, never retried — only ONE
//!   failure is armed, so a retry would have succeeded and answered `Ok`;
//! - `NodeHandle::wait` returns `NodeExit::Fatal` naming the partition and the failure;
//! - after a restart on the same data dir with a healthy disk, every record acknowledged
//!   before the failure is read back byte-identical at its offset, nothing acknowledged is
//!   missing, and the only other record there may be is the one whose write failed (never
//!   acknowledged, so it may or may not have survived);
//! - in a 3-node cluster, when the LEADER's disk fails, the leader stops, one of the other
//!   two is elected, appends continue, and every acknowledged record is present exactly once
//!   on the new leader and (after a healthy restart) on the failed node too.

#[path = "node_common.rs"]
mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{cluster_configs, read_records, retry, wait_leader, WAIT_MAX};
use ringlog_engine::FaultInjector;
use ringlog_node::config::NodeConfig;
use ringlog_node::node::{
    Acks, Consistency, Node, NodeError, NodeExit, NodeHandle, Offset, PartitionId, ShutdownMode,
    StartOptions, StorageFaults,
};

/// Appends acknowledged before the disk fails (two records each).
const APPENDS_BEFORE: usize = 12;
/// Appends acknowledged by the new leader after the old one's disk failed.
const APPENDS_AFTER: usize = 8;
/// Calls made to a failed partition before the node has stopped (each must fail).
const CALLS_AFTER_FAILURE: usize = 5;

/// The one IO that fails.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    Write,
    Fdatasync,
}

impl Fault {
    /// Makes the next (single) write or fdatasync of the partition fail with EIO.
    fn arm(self, injector: &FaultInjector) {
        match self {
            Fault::Write => injector.fail_writes(1),
            Fault::Fdatasync => injector.fail_syncs(1),
        }
    }
}

fn temp() -> tempfile::TempDir {
    tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap()
}

/// Starts `config` with an (idle) injector under partition `p`.
fn start_with_injector(config: &NodeConfig, p: PartitionId) -> (NodeHandle, Arc<FaultInjector>) {
    let mut faults = StorageFaults::default();
    let injector = faults.add(p);
    let node = Node::start_with_faults(config.clone(), StartOptions::default(), faults)
        .expect("a node with an idle fault injector starts");
    (node, injector)
}

/// Appends `APPENDS_BEFORE` (or `count`) two-record batches tagged `tag` through whichever
/// of `nodes` leads `p`, alternating acks=leader and acks=quorum, and returns the
/// acknowledged records with the offsets the node gave them.
fn append_acknowledged(
    nodes: &[&NodeHandle],
    p: PartitionId,
    tag: &str,
    count: usize,
) -> Vec<(u64, Vec<u8>)> {
    let mut acked = Vec::new();
    for i in 0..count {
        let values = [format!("{tag}-{i}-a").into_bytes(), format!("{tag}-{i}-b").into_bytes()];
        let slices: Vec<&[u8]> = values.iter().map(Vec::as_slice).collect();
        let acks = if i % 2 == 0 { Acks::Leader } else { Acks::Quorum };
        let leader = nodes[wait_leader(nodes, p)];
        let outcome = retry(|| leader.append(p, acks, &slices));
        assert_eq!(outcome.partition, p);
        assert_eq!(outcome.last_offset.0, outcome.base_offset.0 + 1, "{outcome:?}");
        for (k, value) in values.into_iter().enumerate() {
            acked.push((outcome.base_offset.0 + k as u64, value));
        }
    }
    acked
}

/// Asserts that `error` is the partition's latched storage failure.
fn assert_storage_failed(result: Result<impl std::fmt::Debug, NodeError>, p: PartitionId) {
    match result {
        Err(NodeError::StorageFailed { partition, reason }) => {
            assert_eq!(partition, p);
            assert!(!reason.is_empty());
        }
        other => panic!("expected StorageFailed for {p}, got {other:?}"),
    }
}

/// Arms `fault` under the leader `node`, appends one record and checks the whole fatal
/// path on that node: `StorageFailed` for the append and for every later call until the
/// node stopped on its own (never `Ok`), then `wait() == Fatal` naming the partition.
/// Returns the value of the append that failed.
fn fail_the_disk(
    node: &NodeHandle,
    injector: &FaultInjector,
    p: PartitionId,
    fault: Fault,
) -> Vec<u8> {
    let doomed = format!("written-when-the-{fault:?}-failed").into_bytes();
    fault.arm(injector);
    assert_storage_failed(node.append(p, Acks::Leader, &[&doomed]), p);
    // The partition is latched; the node stops on its own shortly after (the watchdog).
    // Until then every call answers StorageFailed; after, Stopped/ShuttingDown. Never Ok:
    // only one failure was armed, so a retried write/fdatasync would have succeeded.
    let mut latched = 0;
    for i in 0..CALLS_AFTER_FAILURE {
        let value = format!("after-the-failure-{i}").into_bytes();
        let append = node.append(p, Acks::Leader, &[&value]);
        let read = node.read(p, Offset(0), 1 << 20, Consistency::ReplicaCommitted, Duration::ZERO);
        for outcome in [append.map(|_| ()), read.map(|_| ())] {
            match outcome {
                Err(NodeError::StorageFailed { partition, .. }) if partition == p => latched += 1,
                Err(NodeError::Stopped | NodeError::ShuttingDown) => {}
                other => panic!("a call to the failed {p} answered {other:?}"),
            }
        }
    }
    eprintln!("{fault:?}: {latched} later calls answered StorageFailed before the node stopped");
    let waited = Instant::now();
    match node.wait() {
        NodeExit::Fatal(reason) => {
            assert!(reason.contains(&format!("partition {p}")), "{reason}");
            assert!(reason.contains("fatal"), "{reason}");
        }
        NodeExit::Stopped => panic!("the node stopped without reporting the fatal error"),
    }
    assert!(waited.elapsed() < WAIT_MAX, "the node took {:?} to stop", waited.elapsed());
    assert!(matches!(node.append(p, Acks::Leader, &[b"late"]), Err(NodeError::Stopped)));
    // Idempotent: waits for the watchdog's shutdown (threads joined, data dir released).
    node.shutdown(ShutdownMode::Immediate).unwrap();
    doomed
}

/// Asserts that `read` holds exactly `acked` (byte-identical, at the same offsets) followed
/// by, at most, the never-acknowledged `doomed` record.
fn assert_acknowledged_prefix(read: &[(u64, Vec<u8>)], acked: &[(u64, Vec<u8>)], doomed: &[u8]) {
    assert!(read.len() >= acked.len(), "records missing: read {} of {}", read.len(), acked.len());
    assert_eq!(&read[..acked.len()], acked, "acknowledged records differ after the restart");
    match &read[acked.len()..] {
        [] => {}
        [(offset, value)] => {
            assert_eq!(*offset, acked.len() as u64);
            assert_eq!(value.as_slice(), doomed, "an unexpected record at {offset}");
        }
        extra => panic!("records nobody appended after the acknowledged ones: {extra:?}"),
    }
}

/// Reads every record of `p` on `node` up to the end of its committed log (at least
/// `at_least` records), following `next_offset` (control batches hold no records) until a
/// read at the end comes back empty.
fn read_all(node: &NodeHandle, p: PartitionId, at_least: usize) -> Vec<(u64, Vec<u8>)> {
    let mut all = read_records(node, p, 0, at_least, Consistency::LeaderLinearizable);
    let mut next = Offset(all.last().map_or(0, |(offset, _)| offset + 1));
    let deadline = Instant::now() + WAIT_MAX;
    loop {
        assert!(Instant::now() < deadline, "{p} did not reach its end within {WAIT_MAX:?}");
        let read =
            retry(|| node.read(p, next, 1 << 20, Consistency::LeaderLinearizable, Duration::ZERO));
        // A read returns whole batches: skip records below the offset asked for.
        let fresh: Vec<_> =
            common::records(&read).into_iter().filter(|(offset, _)| *offset >= next.0).collect();
        // At the end a read may still return the trailing control batch (a leader's no-op
        // holds no record and no offset) with `next_offset` unchanged: that is the end too.
        if fresh.is_empty() && read.next_offset <= next {
            return all;
        }
        all.extend(fresh);
        next = read.next_offset;
    }
}

fn single_node_disk_failure_is_fatal_and_loses_nothing_acknowledged(fault: Fault) {
    let dir = temp();
    let config = cluster_configs(dir.path(), 1, 1, 1).remove(0);
    let p = PartitionId(0);
    let (node, injector) = start_with_injector(&config, p);
    let acked = append_acknowledged(&[&node], p, "before", APPENDS_BEFORE);
    assert_eq!(acked.len(), 2 * APPENDS_BEFORE);
    assert!(acked.iter().enumerate().all(|(i, (offset, _))| *offset == i as u64), "{acked:?}");
    let doomed = fail_the_disk(&node, &injector, p, fault);
    drop(node);

    // Same data dir, healthy disk.
    let node = Node::start(config).expect("the node restarts on its data dir");
    let read = read_all(&node, p, acked.len());
    assert_acknowledged_prefix(&read, &acked, &doomed);
    let after = retry(|| node.append(p, Acks::Quorum, &[b"after-the-restart"]));
    assert_eq!(after.base_offset, Offset(read.len() as u64));
    node.shutdown(ShutdownMode::Graceful).unwrap();
}

#[test]
fn a_failed_fdatasync_answers_storage_failed_stops_the_node_and_loses_nothing_acknowledged() {
    single_node_disk_failure_is_fatal_and_loses_nothing_acknowledged(Fault::Fdatasync);
}

#[test]
fn a_failed_write_answers_storage_failed_stops_the_node_and_loses_nothing_acknowledged() {
    single_node_disk_failure_is_fatal_and_loses_nothing_acknowledged(Fault::Write);
}

/// Every acknowledged record appears exactly once in `read`, at its offset; any other record
/// is the never-acknowledged `doomed` one, at most once.
fn assert_each_acknowledged_once(read: &[(u64, Vec<u8>)], acked: &[(u64, Vec<u8>)], doomed: &[u8]) {
    let mut seen: HashMap<&[u8], Vec<u64>> = HashMap::new();
    for (offset, value) in read {
        seen.entry(value.as_slice()).or_default().push(*offset);
    }
    for (offset, value) in acked {
        let offsets = seen.remove(value.as_slice()).unwrap_or_default();
        assert_eq!(
            offsets,
            vec![*offset],
            "acknowledged {:?} must be present once, at {offset}",
            String::from_utf8_lossy(value)
        );
    }
    match seen.remove(doomed) {
        None => {}
        Some(offsets) => assert_eq!(offsets.len(), 1, "the failed append is there twice"),
    }
    assert!(seen.is_empty(), "records nobody appended: {:?}", seen.keys().collect::<Vec<_>>());
    let offsets: Vec<u64> = read.iter().map(|(offset, _)| *offset).collect();
    assert_eq!(offsets, (0..read.len() as u64).collect::<Vec<_>>(), "offsets are dense");
}

fn leader_disk_failure_elects_another_leader_and_loses_nothing_acknowledged(fault: Fault) {
    let dir = temp();
    let configs = cluster_configs(dir.path(), 3, 1, 1);
    let p = PartitionId(0);
    let started: Vec<(NodeHandle, Arc<FaultInjector>)> =
        configs.iter().map(|config| start_with_injector(config, p)).collect();
    let all: Vec<&NodeHandle> = started.iter().map(|(node, _)| node).collect();
    let mut acked = append_acknowledged(&all, p, "before", APPENDS_BEFORE);

    let failed = wait_leader(&all, p);
    let (leader, injector) = &started[failed];
    let doomed = fail_the_disk(leader, injector, p, fault);

    let survivors: Vec<&NodeHandle> =
        started.iter().enumerate().filter(|(i, _)| *i != failed).map(|(_, (n, _))| n).collect();
    let new_leader = survivors[wait_leader(&survivors, p)];
    assert_ne!(new_leader.node_id(), leader.node_id());
    acked.extend(append_acknowledged(&survivors, p, "after", APPENDS_AFTER));
    let read = read_all(new_leader, p, acked.len());
    assert_each_acknowledged_once(&read, &acked, &doomed);

    // The failed node, restarted on its data dir with a healthy disk, converges on the same
    // log (byte-identical): whatever it held beyond what was committed is replaced.
    let restarted = Node::start(configs[failed].clone()).expect("the failed node restarts");
    let replica = read_records(&restarted, p, 0, read.len(), Consistency::ReplicaCommitted);
    assert_eq!(replica, read, "the restarted node's log differs from the new leader's");

    restarted.shutdown(ShutdownMode::Immediate).unwrap();
    for node in survivors {
        node.shutdown(ShutdownMode::Immediate).unwrap();
    }
}

#[test]
fn a_leader_whose_fdatasync_fails_stops_and_another_leader_keeps_every_acknowledged_record() {
    leader_disk_failure_elects_another_leader_and_loses_nothing_acknowledged(Fault::Fdatasync);
}

#[test]
fn a_leader_whose_write_fails_stops_and_another_leader_keeps_every_acknowledged_record() {
    leader_disk_failure_elects_another_leader_and_loses_nothing_acknowledged(Fault::Write);
}
