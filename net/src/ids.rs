//! Identities carried on the wire that the Raft core does not define.
//!
//! Identities get types (style.md): a partition is never a bare `u32`, an offset never a bare
//! `u64`. `NodeId`, `Term` and `LogIndex` come from `ringlog-raft`; `PartitionId` and
//! `Offset` from `ringlog-format` (one definition, shared with the engine and the client).

use std::fmt;

pub use ringlog_format::ids::{Offset, PartitionId};

/// A core (glommio executor) of a node. Replication is shard-to-shard.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ShardId(pub u16);

/// The identity of a cluster, exchanged in the peer handshake so that nodes of two clusters
/// never talk to each other.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ClusterId(pub u64);

/// Chosen by the sender of a request and echoed in its response, so that a client can have
/// several requests in flight on one connection. `RequestId(0)` is used by one-way frames.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RequestId(pub u64);

impl fmt::Display for ShardId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "s{}", self.0)
    }
}

impl fmt::Display for ClusterId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}
