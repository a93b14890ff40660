//! Identities of the log: Raft term, Raft index, record offset, node id.
//!
//! Identities get types (style.md): never two adjacent bare `u64` parameters. These mirror the
//! Raft crate's `Term`/`LogIndex`/`NodeId` one to one (the engine does not depend on raft).

#![forbid(unsafe_code)]

use std::fmt;

/// A Raft term. `Term(0)` is the term before any election.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Term(pub u64);

/// The Raft index of a batch: every batch (data or control) takes exactly one index; the first
/// batch of a fresh log is `LogIndex(1)`; `LogIndex(0)` means "before the first batch".
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LogIndex(pub u64);

/// The offset of a record. Offsets are dense: a batch of `n` records takes `n` offsets; a
/// control batch (0 records) takes none. The first record of a fresh log has `Offset(0)`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Offset(pub u64);

/// A node of the cluster, as stored in the hard state's vote.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeId(pub u32);

impl LogIndex {
    /// The next index.
    pub fn next(self) -> LogIndex {
        LogIndex(self.0 + 1)
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

impl fmt::Display for Offset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "o{}", self.0)
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "n{}", self.0)
    }
}
