//! The `ringlog` library: node configuration, the replicated node and its server.
//!
//! The `ringlog` binary (`src/main.rs`) wires these into subcommands; the C ABI (`capi/`)
//! and the cluster tests use them directly.

pub mod admin;
pub mod config;
pub mod config_check;
pub mod config_keys;
pub mod memory;
pub mod metrics;
pub mod node;
