//! ringlog-node: a replicated ringlog node as a library — its configuration, the node and its
//! client and peer servers, and its metrics.
//!
//! The `ringlog` binary (the root package: `src/main.rs`) wires these into subcommands; the
//! C ABI (`capi/`) and the cluster tests use them directly; an embedder takes this crate (and
//! `ringlog-net`'s client, or `ringlog-engine` for a single-node log).
//!
//! ```no_run
//! use ringlog_node::config::NodeConfig;
//! use ringlog_node::node::{Acks, Node, PartitionId};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let loaded = NodeConfig::load("node.toml".as_ref())?;
//! let node = Node::start(loaded.config)?; // a NodeHandle, usable from any thread
//! node.append(PartitionId(0), Acks::Quorum, &[b"world".as_slice()])?;
//! # Ok(())
//! # }
//! ```
//!
//! Architecture invariant: no CLI or bench dependencies (clap, tracing-subscriber,
//! ringlog-bench and its plotters and indicatif); `tests/tests/crate_deps.rs` checks it.

pub mod admin;
pub mod config;
pub mod config_check;
pub mod config_keys;
pub mod memory;
pub mod metrics;
pub mod node;
