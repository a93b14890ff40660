//! Identities of a record's place: the partition it belongs to and its offset in it.
//!
//! Identities get types (style.md): a partition is never a bare `u32`, an offset never a bare
//! `u64`. These are the only definitions: the engine, the wire protocol, the node and the
//! client all use them. `Term`, `LogIndex` and `NodeId` are the Raft core's (`ringlog-raft`),
//! re-exported here so a batch's term and index are the very values the core reasons about.

#![forbid(unsafe_code)]

use std::fmt;

pub use ringlog_raft::types::{LogIndex, NodeId, Term};

/// A partition: one log, its own Raft group, owned by shard `id % shards` of every node
/// (design.md §5).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PartitionId(pub u32);

/// The offset of a record in its partition. Offsets are dense: a batch of `n` records takes
/// `n` offsets; a control batch (0 records) takes none. The first record of a fresh log has
/// `Offset(0)`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Offset(pub u64);

impl fmt::Display for PartitionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "p{}", self.0)
    }
}

impl fmt::Display for Offset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "o{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_display_with_their_kind_prefix() {
        assert_eq!(PartitionId(7).to_string(), "p7");
        assert_eq!(Offset(42).to_string(), "o42");
    }
}
