//! Identities of the log: Raft term, Raft index, record offset, node id.
//!
//! Identities get types (style.md): never two adjacent bare `u64` parameters. `Term`,
//! `LogIndex` and `NodeId` are the Raft core's own types (the pure `ringlog-raft` crate), so a
//! batch's term and index are the very values the core reasons about; `Offset` (and
//! `PartitionId`) are defined once, in the `ringlog-format` leaf crate, and shared with the
//! wire protocol and the client.

#![forbid(unsafe_code)]

pub use ringlog_format::ids::{LogIndex, NodeId, Offset, Term};
