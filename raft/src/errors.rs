//! Typed errors of the core's operations: one enum per operation (style.md).
//!
//! These are operating conditions (not leader, window full, ...), never bugs: a broken
//! invariant is an `assert!`.

use crate::types::NodeId;

/// Why `Replica::propose` refused a batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProposeError {
    #[error("not the leader (leader hint: {leader_hint:?})")]
    NotLeader { leader_hint: Option<NodeId> },
    #[error("too many uncommitted entries or bytes: retry once commits catch up")]
    Backpressure,
    #[error("a leadership transfer is in progress")]
    TransferInProgress,
    #[error("payload of {size} bytes exceeds entry_bytes_max {max}")]
    TooLarge { size: u64, max: u64 },
}

/// Why `Replica::propose_membership` refused a change.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MembershipError {
    #[error("not the leader (leader hint: {leader_hint:?})")]
    NotLeader { leader_hint: Option<NodeId> },
    #[error("a membership change is still uncommitted (one change at a time)")]
    ChangeInProgress,
    #[error("the leader has not yet committed an entry of its term")]
    LeaderNotReady,
    #[error("a leadership transfer is in progress")]
    TransferInProgress,
    #[error("{node} is already a member")]
    AlreadyMember { node: NodeId },
    #[error("{node} is not a learner")]
    NotALearner { node: NodeId },
    #[error("{node} is not a member")]
    NotAMember { node: NodeId },
    #[error("removing the last voter would leave the group without quorum")]
    LastVoter,
    #[error("too many uncommitted entries or bytes: retry once commits catch up")]
    Backpressure,
}

/// Why `Replica::read_index` refused a read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReadIndexError {
    #[error("not the leader (leader hint: {leader_hint:?})")]
    NotLeader { leader_hint: Option<NodeId> },
    #[error("too many reads waiting for confirmation")]
    Backpressure,
}

/// Why `Replica::transfer_leadership` refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TransferError {
    #[error("not the leader (leader hint: {leader_hint:?})")]
    NotLeader { leader_hint: Option<NodeId> },
    #[error("{node} is not a voter")]
    NotAVoter { node: NodeId },
    #[error("already the leader")]
    ToSelf,
    #[error("a transfer to {to} is already in progress")]
    InProgress { to: NodeId },
}
