//! Messages exchanged between replicas of one Raft group, and the entries they carry.
//!
//! The core never looks inside an entry's payload: it is the record batch exactly as stored
//! on disk and sent on the wire (design.md §3.4). Wire encoding lives in `ringlog-net`.

use bytes::Bytes;

use crate::types::{LogIndex, NodeId, Term};

/// What an entry means to the Raft core. Everything a user appends is `Normal`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum EntryKind {
    /// A user batch; the core treats the payload as opaque bytes.
    Normal,
    /// The empty entry a new leader appends at the start of its term (Raft §8), so that
    /// entries of earlier terms can commit.
    Noop,
    /// A membership change; takes effect as soon as it is appended (Raft thesis §4.1).
    Membership(Membership),
}

/// One entry of the replicated log.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Entry {
    pub term: Term,
    pub index: LogIndex,
    pub kind: EntryKind,
    /// The batch bytes (for `Noop` and `Membership` whatever the glue stores for them).
    pub payload: Bytes,
}

/// The members of a group. Voters decide elections and commits; learners only receive entries.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Membership {
    pub voters: Vec<NodeId>,
    pub learners: Vec<NodeId>,
}

/// A requested membership change (one at a time: single-server changes, Raft thesis §4.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MembershipChange {
    /// Add a new node as a learner: it receives entries but neither votes nor counts.
    AddLearner(NodeId),
    /// Make a caught-up learner a voter.
    Promote(NodeId),
    /// Remove a voter or a learner.
    Remove(NodeId),
}

/// A message between two replicas of the same group. Every message carries the sender's term.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    /// Raft thesis §9.6: asks whether a vote *would* be granted for `term`, without anyone
    /// changing their term.
    PreVote {
        term: Term,
        last_index: LogIndex,
        last_term: Term,
    },
    PreVoteResponse {
        term: Term,
        granted: bool,
    },
    /// Raft §5.2 RequestVote. `transfer` is set when the election follows a `TimeoutNow`, so
    /// that followers that still hear a leader grant it anyway (thesis §3.10).
    Vote {
        term: Term,
        last_index: LogIndex,
        last_term: Term,
        transfer: bool,
    },
    VoteResponse {
        term: Term,
        granted: bool,
    },
    /// Raft §5.3 AppendEntries. An empty `entries` is a probe. `commit` is the leader's commit
    /// index.
    Append {
        term: Term,
        prev_index: LogIndex,
        prev_term: Term,
        commit: LogIndex,
        entries: Vec<Entry>,
    },
    /// The follower's answer to `Append`. On success `durable` is the highest index that is
    /// both fdatasynced on the follower and known to match the leader's log; on rejection the
    /// hints let the leader skip a whole conflicting term at once (fast back-off).
    AppendResponse {
        term: Term,
        result: AppendResult,
    },
    /// Leader liveness and commit propagation; `ctx` identifies a ReadIndex round (0 = none).
    Heartbeat {
        term: Term,
        commit: LogIndex,
        ctx: u64,
    },
    HeartbeatResponse {
        term: Term,
        ctx: u64,
    },
    /// Leadership transfer: start an election now (thesis §3.10).
    TimeoutNow {
        term: Term,
    },
    /// The leader's log no longer holds the entries this follower needs (retention moved the
    /// log start past them): the follower restarts its log so that its next entry is
    /// `start`, the entry before it having term `prev_term` (the log's install-snapshot).
    /// `membership` is the leader's membership as of `start - 1`, so that the follower knows
    /// the voters even when every membership entry is older than `start`.
    InstallLogStart {
        term: Term,
        start: LogIndex,
        prev_term: Term,
        commit: LogIndex,
        membership: Membership,
    },
    /// Protocol-aware recovery: a damaged replica (its log or hard state was lost or cut, so
    /// it may have forgotten a term in which it voted or acked) asks the other voters for
    /// their current term before it may be repaired. `term` is the sender's term; the
    /// receiver's state does not change.
    TermQuery {
        term: Term,
    },
    /// The answer to `TermQuery`: `term` is the responder's current term. A replica that is
    /// itself damaged and has not yet learned its own term does not answer.
    TermQueryResponse {
        term: Term,
    },
}

/// The outcome of an `Append`, carried by `Message::AppendResponse`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AppendResult {
    Accepted {
        /// Highest index durable on the follower and matching the leader's log.
        durable: LogIndex,
        /// The follower knows its log or hard state was lost or corrupted and has not yet been
        /// repaired from a leader: the leader paces replication by `durable` but counts the
        /// follower toward no quorum (commit, ReadIndex, CheckQuorum) meanwhile.
        damaged: bool,
    },
    Rejected {
        /// The `prev_index` of the rejected `Append`.
        rejected: LogIndex,
        /// Fast back-off hint: the largest index `<= min(rejected, follower's last index)`
        /// whose term on the follower is `<=` the rejected `prev_term` (etcd's
        /// `findConflictByTerm`): the leader may skip every index above it.
        hint_index: LogIndex,
        /// The term of the follower's entry at `hint_index` (Term(0) if none).
        hint_term: Term,
    },
}

impl Message {
    /// The sender's term.
    pub fn term(&self) -> Term {
        match self {
            Message::PreVote { term, .. }
            | Message::PreVoteResponse { term, .. }
            | Message::Vote { term, .. }
            | Message::VoteResponse { term, .. }
            | Message::Append { term, .. }
            | Message::AppendResponse { term, .. }
            | Message::Heartbeat { term, .. }
            | Message::HeartbeatResponse { term, .. }
            | Message::TimeoutNow { term }
            | Message::InstallLogStart { term, .. }
            | Message::TermQuery { term }
            | Message::TermQueryResponse { term } => *term,
        }
    }

    /// Payload bytes this message carries (for flow-control accounting).
    pub fn payload_bytes(&self) -> usize {
        match self {
            Message::Append { entries, .. } => entries.iter().map(|e| e.payload.len()).sum(),
            _ => 0,
        }
    }
}
