//! `/health` and `/ready`: what the node's state means to a supervisor or a load balancer.
//!
//! `/health` answers 200 while the process is up (the exporter thread answers it without
//! asking the node). `/ready` answers 200 only when every local partition is recovered, a
//! leader is known for each and none is damaged; otherwise 503 with one line per problem,
//! naming the partition and what is missing (at most [`READY_REASONS_MAX`] lines).
//!
//! The exporter listens before the node starts (`ringlog serve` binds it first), so during
//! recovery `/health` is 200 and `/ready` says the node is starting; [`NodeSlot`] carries
//! the node's handle to the exporter once `Node::start` returned.
//!
//! Invariant: [`readiness`] is a pure function of its [`NodeState`].

use std::collections::BTreeSet;
use std::sync::{Arc, OnceLock};

use crate::node::{NodeError, NodeHandle, NodeSnapshot, PartitionId};

/// Most reason lines a `/ready` answer lists; the rest are counted in a last line.
pub const READY_REASONS_MAX: usize = 16;

/// What the exporter knows of the node when a request arrives.
#[derive(Debug)]
pub enum NodeState {
    /// The node is opening (recovering) its partitions: no handle yet.
    Starting,
    /// The node runs; `partitions` is how many partitions it holds (all of `0..partitions`).
    Running { snapshot: NodeSnapshot, partitions: u32 },
    /// The node did not answer a snapshot (stopping, stopped, a full mailbox).
    Unavailable(NodeError),
}

impl NodeState {
    /// The state of a started node.
    pub fn of(node: &NodeHandle) -> NodeState {
        match node.snapshot() {
            Ok(snapshot) => NodeState::Running { snapshot, partitions: node.partitions() },
            Err(error) => NodeState::Unavailable(error),
        }
    }
}

/// Where the exporter finds the node once it has started (set once).
#[derive(Clone, Debug, Default)]
pub struct NodeSlot(Arc<OnceLock<NodeHandle>>);

impl NodeSlot {
    pub fn new() -> NodeSlot {
        NodeSlot::default()
    }

    /// Hands the started node to the exporter. Setting a slot twice is a bug.
    pub fn set(&self, node: NodeHandle) {
        let fresh = self.0.set(node).is_ok();
        assert!(fresh, "a node slot is set once");
    }

    /// [`NodeState::Starting`] until [`NodeSlot::set`], then the node's state.
    pub fn state(&self) -> NodeState {
        match self.0.get() {
            Some(node) => NodeState::of(node),
            None => NodeState::Starting,
        }
    }
}

/// `Ok` when the node is ready; otherwise the plain-text reason (one problem a line).
pub fn readiness(state: &NodeState) -> Result<(), String> {
    let (snapshot, partitions) = match state {
        NodeState::Starting => {
            return Err("not ready: the node is starting (recovering its partitions)\n".into())
        }
        NodeState::Unavailable(error) => return Err(format!("not ready: {error}\n")),
        NodeState::Running { snapshot, partitions } => (snapshot, *partitions),
    };
    let mut problems = Vec::new();
    let mut seen = BTreeSet::new();
    for partition in snapshot.shards.iter().flat_map(|shard| &shard.partitions) {
        seen.insert(partition.partition);
        let p = partition.partition.0;
        if partition.damaged {
            problems.push(format!("partition {p}: damaged (waiting for repair by a leader)"));
        }
        if partition.leader.is_none() {
            problems.push(format!("partition {p}: no leader known"));
        }
    }
    // Bounded by the configured partition count.
    for p in (0..partitions).filter(|p| !seen.contains(&PartitionId(*p))) {
        problems.push(format!("partition {p}: not recovered"));
    }
    if problems.is_empty() {
        return Ok(());
    }
    let mut text = String::new();
    for problem in problems.iter().take(READY_REASONS_MAX) {
        text.push_str("not ready: ");
        text.push_str(problem);
        text.push('\n');
    }
    if problems.len() > READY_REASONS_MAX {
        text.push_str(&format!(
            "not ready: and {} more problems\n",
            problems.len() - READY_REASONS_MAX
        ));
    }
    Err(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::{PartitionSnapshot, ShardSnapshot};
    use ringlog_raft::NodeId;

    fn partition(p: u32, leader: Option<u32>, damaged: bool) -> PartitionSnapshot {
        PartitionSnapshot {
            partition: PartitionId(p),
            leader: leader.map(NodeId),
            damaged,
            ..PartitionSnapshot::default()
        }
    }

    fn running(partitions: Vec<PartitionSnapshot>, expected: u32) -> NodeState {
        let shard = ShardSnapshot { partitions, ..ShardSnapshot::default() };
        let snapshot =
            NodeSnapshot { node: NodeId(1), shards: vec![shard], ..NodeSnapshot::default() };
        NodeState::Running { snapshot, partitions: expected }
    }

    #[test]
    fn a_starting_node_is_not_ready() {
        let reason = readiness(&NodeState::Starting).unwrap_err();
        assert_eq!(reason, "not ready: the node is starting (recovering its partitions)\n");
    }

    #[test]
    fn a_node_with_a_leader_for_every_undamaged_partition_is_ready() {
        let state = running(vec![partition(0, Some(1), false), partition(1, Some(2), false)], 2);
        assert_eq!(readiness(&state), Ok(()));
    }

    #[test]
    fn a_damaged_partition_is_named_even_with_a_leader() {
        let state = running(vec![partition(0, Some(1), false), partition(1, Some(2), true)], 2);
        let reason = readiness(&state).unwrap_err();
        assert_eq!(reason, "not ready: partition 1: damaged (waiting for repair by a leader)\n");
    }

    #[test]
    fn a_partition_without_a_leader_is_named() {
        let state = running(vec![partition(0, None, false), partition(1, Some(2), false)], 2);
        assert_eq!(readiness(&state).unwrap_err(), "not ready: partition 0: no leader known\n");
    }

    #[test]
    fn a_partition_missing_from_the_snapshot_is_not_recovered() {
        let state = running(vec![partition(0, Some(1), false)], 2);
        assert_eq!(readiness(&state).unwrap_err(), "not ready: partition 1: not recovered\n");
    }

    #[test]
    fn a_node_that_does_not_answer_is_not_ready_with_the_reason() {
        let reason = readiness(&NodeState::Unavailable(NodeError::ShuttingDown)).unwrap_err();
        assert_eq!(reason, "not ready: the node is shutting down\n");
    }

    #[test]
    fn the_reasons_are_bounded_and_the_rest_counted() {
        let partitions: Vec<_> = (0..40).map(|p| partition(p, None, true)).collect();
        let reason = readiness(&running(partitions, 40)).unwrap_err();
        let lines: Vec<&str> = reason.lines().collect();
        assert_eq!(lines.len(), READY_REASONS_MAX + 1, "{reason}");
        assert_eq!(lines[READY_REASONS_MAX], format!("not ready: and {} more problems", 80 - 16));
    }
}
