//! The replicated node: shards running Raft replicators over the engine's logs, serving
//! clients and peers. See ARCHITECTURE.md#node.

pub mod api;

pub use api::{
    AppendOutcome, FollowerSnapshot, NodeAddresses, NodeError, NodeExit, NodeSnapshot,
    NodeStartError, PartitionSnapshot, ReadOutcome, ShardSnapshot, ShutdownMode,
};
