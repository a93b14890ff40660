//! Identities of the log: Raft term, Raft index, record offset, node id.
//!
//! Identities get types (style.md): never two adjacent bare `u64` parameters. `Term`,
//! `LogIndex` and `NodeId` are the Raft core's own types (the pure `ringlog-raft` crate), so a
//! batch's term and index are the very values the core reasons about; `Offset` is the engine's.

#![forbid(unsafe_code)]

use std::fmt;

pub use ringlog_raft::types::{LogIndex, NodeId, Term};

/// The offset of a record. Offsets are dense: a batch of `n` records takes `n` offsets; a
/// control batch (0 records) takes none. The first record of a fresh log has `Offset(0)`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Offset(pub u64);

impl fmt::Display for Offset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "o{}", self.0)
    }
}
