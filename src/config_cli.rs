//! `ringlog config check --config FILE` and `ringlog config reference`.
//!
//! `check` loads a node's configuration exactly as `serve` will (parse, resolve, validate),
//! prints what the node would run with and any warnings; exit 1 with every problem listed
//! when the file is not valid. `reference` prints docs/config.md (generated from
//! config_keys.rs), so that `ringlog config reference > docs/config.md` regenerates it.

#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};

use ringlog_node::config::NodeConfig;
use ringlog_node::config_keys::reference_markdown;

/// Arguments of `ringlog config`.
#[derive(Debug, Clone, Args)]
pub struct ConfigArgs {
    #[command(subcommand)]
    pub command: ConfigCommand,
}

#[derive(Debug, Clone, Subcommand)]
pub enum ConfigCommand {
    /// Parse and validate a node configuration file; exit 1 listing every problem.
    Check {
        /// The node's TOML configuration file.
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Print the configuration reference (Markdown): `ringlog config reference >
    /// docs/config.md`.
    Reference,
}

/// Runs `ringlog config ...` and returns the exit status.
pub fn run(args: &ConfigArgs) -> ExitCode {
    match &args.command {
        ConfigCommand::Reference => {
            print!("{}", reference_markdown());
            ExitCode::SUCCESS
        }
        ConfigCommand::Check { config } => match NodeConfig::load(config) {
            Ok(loaded) => {
                print!("{}", check_summary(&loaded.config));
                for warning in &loaded.warnings {
                    println!("WARN: {warning}");
                }
                println!("OK: {} is valid", config.display());
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("ringlog: invalid configuration: {error}");
                ExitCode::FAILURE
            }
        },
    }
}

/// What a node started from `config` would run with (through the same conversions `serve`
/// uses).
pub fn check_summary(config: &NodeConfig) -> String {
    let engine = config.to_engine_config();
    let raft = config.to_raft_config(0);
    let peer = config.to_peer_config(ringlog_net::ShardId(0));
    let tick_ms = config.tick_interval().as_millis() as u64;
    let voters: Vec<u32> = config.bootstrap_membership().voters.iter().map(|v| v.0).collect();
    let memlock =
        ringlog_engine::runtime::memlock_required_bytes(engine.shards, engine.io_memory_bytes);
    let address = |a: Option<std::net::SocketAddr>| a.map_or("-".to_string(), |a| a.to_string());
    format!(
        "node {} of cluster {}, voters {voters:?}, data_dir {}\n\
         shards {}, partitions {}, io_memory {} bytes: RLIMIT_MEMLOCK needed {memlock} bytes\n\
         listen client {}, peer {}, metrics {}\n\
         segment_size {} bytes, election timeout {}..{} ms, heartbeat every {} ms\n\
         peer links: frame body <= {} bytes, queue <= {} frames / {} bytes, keepalive every \
         {:?}, reconnect backoff {:?}..{:?}\n",
        config.node_id,
        config.cluster_id,
        engine.data_dir.display(),
        engine.shards,
        engine.partitions,
        engine.io_memory_bytes,
        address(config.client_listen()),
        address(config.peer_listen()),
        config.listen.metrics,
        engine.log.segment_size_bytes,
        tick_ms * u64::from(raft.election_ticks),
        2 * tick_ms * u64::from(raft.election_ticks),
        tick_ms * u64::from(raft.heartbeat_ticks),
        peer.frame_body_size_max,
        peer.queue_frames_max,
        peer.queue_bytes_max,
        peer.keepalive_interval,
        peer.backoff_initial,
        peer.backoff_max,
    )
}
