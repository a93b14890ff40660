//! Identities and small value types shared by every part of the Raft core.
//!
//! Identities get types (style.md): never two adjacent bare `u64` parameters.

use std::fmt;

/// A Raft term. Terms only grow; `Term(0)` is the term before any election.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Term(pub u64);

/// The position of an entry in the replicated log. The first entry ever is `LogIndex(1)`;
/// `LogIndex(0)` means "before the first entry".
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LogIndex(pub u64);

/// A node of the cluster (a replica of every partition's group).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeId(pub u32);

/// Opaque token a caller passes to `Replica::read_index` and gets back in `Action::ReadReady`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ReadCtx(pub u64);

impl LogIndex {
    pub const ZERO: LogIndex = LogIndex(0);

    /// The next index.
    pub fn next(self) -> LogIndex {
        LogIndex(self.0 + 1)
    }

    /// The previous index; `LogIndex(0).prev()` is a bug.
    pub fn prev(self) -> LogIndex {
        assert!(self.0 > 0, "LogIndex(0) has no predecessor");
        LogIndex(self.0 - 1)
    }
}

impl fmt::Display for Term {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "t{}", self.0)
    }
}

impl fmt::Display for LogIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "i{}", self.0)
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "n{}", self.0)
    }
}

/// The durable part of a replica's state: written (and fdatasynced) before any message that
/// depends on it leaves (Raft §5.1, Figure 2 "persistent state").
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct HardState {
    pub term: Term,
    pub vote: Option<NodeId>,
}

/// The role a replica plays in its current term.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    Follower,
    PreCandidate,
    Candidate,
    Leader,
    /// A non-voting member that receives entries (catching up before it is promoted).
    Learner,
}
