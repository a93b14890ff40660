//! Validation of a parsed `NodeConfig`: every value against its bound, every relation between
//! keys, the peer list and the data dir.
//!
//! Ranges and 4 KiB multiples come from the key table (config_keys.rs), so the reference and
//! the checks cannot disagree; relations are checked here and stated in the table's
//! `relation` column. All problems are collected, not only the first, so that an operator
//! fixes a file in one pass. As a backstop the converted configs are run through the engine's
//! and the Raft core's own `validate`.
//!
//! Invariants: `validate` has no side effects (it only reads the filesystem metadata of
//! `data_dir` and its ancestors).

#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use ringlog_net::limits::{ENTRY_WIRE_OVERHEAD_MAX, FRAME_HEADER_SIZE, GROUP_MEMBERS_MAX};

use crate::config::{NodeConfig, TlsMode};
use crate::config_keys::{BLOCK, KEYS};

/// Levels a `log.level` directive may name.
const LOG_LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];
/// Room a frame body needs besides the entries of an `Append` (fixed fields).
const FRAME_FIXED_FIELDS_BYTES: u64 = 1024;
/// A batch must fit a segment after the header block, with padding (engine limits.rs).
pub const SEGMENT_OVERHEAD_BYTES: u64 = 3 * BLOCK;

/// One invalid value of a configuration.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Problem {
    /// A value outside its bound.
    #[error("{key} = {value}: must be {bound}")]
    Bound { key: String, value: String, bound: String },
    #[error("node_id = {node_id} is not among the [[peers]] ids {ids:?}")]
    NodeNotInPeers { node_id: u32, ids: Vec<u32> },
    #[error("peers: id {id} appears more than once")]
    DuplicatePeerId { id: u32 },
    #[error("{key} = {address} is also used by {other}")]
    DuplicateAddress { key: String, address: SocketAddr, other: String },
    #[error("data_dir = {path:?}: {reason}")]
    DataDir { path: PathBuf, reason: String },
    /// `tls.mode` is not written: plaintext only when explicitly configured.
    #[error("{TLS_MODE_MISSING}")]
    TlsModeMissing,
    /// A converted config was refused by the crate that owns it (a relation this module
    /// does not know yet).
    #[error("{component} refuses the configuration: {detail}")]
    Refused { component: &'static str, detail: String },
    /// `[admin]` gives no admin policy (crate::admin::AdminConfigError).
    #[error("{detail}")]
    Admin { detail: String },
}

/// What [`Problem::TlsModeMissing`] says: the fix, both ways.
pub const TLS_MODE_MISSING: &str = "tls.mode is not set: write [tls] mode = \"tls\" with tls.ca, \
     tls.cert and tls.key (mutual TLS between nodes, TLS for clients), or [tls] mode = \
     \"plaintext\" to run unencrypted on purpose";

/// A valid configuration that may not do what the operator wants.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConfigWarning {
    /// More shards than CPUs: executors share cores and IO completion starves (design §11).
    ShardsOverCpus { shards: usize, cpus: usize },
    /// `tls.mode = "plaintext"`: peer and client traffic is not encrypted (chosen explicitly).
    Plaintext,
    /// `admin.open = true`: every client may transfer leadership and change membership.
    AdminOpen,
    /// No admin identity configured: every leadership transfer and membership change sent to
    /// the client ports is refused.
    AdminNone,
    /// `balance.preferred_leaders` names a node that is not in `[[peers]]` (a node added
    /// later is fine; a typo makes its partitions fall back to the derived preferred leader).
    PreferredLeaderNotAPeer { id: u32 },
}

impl fmt::Display for ConfigWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigWarning::ShardsOverCpus { shards, cpus } => write!(
                f,
                "shards = {shards} exceeds the {cpus} CPU(s) this process may run on: \
                 executors will share cores (use at most {cpus}, ideally {})",
                cpus.saturating_sub(1).max(1)
            ),
            ConfigWarning::Plaintext => f.write_str(
                "tls.mode = \"plaintext\": peer and client traffic is not encrypted (write \
                 mode = \"tls\" with tls.ca, tls.cert and tls.key to encrypt it)",
            ),
            ConfigWarning::AdminOpen => f.write_str(
                "admin.open = true: every client may transfer leadership and change membership \
                 (set admin.token_file or admin.certificate_names instead)",
            ),
            ConfigWarning::AdminNone => f.write_str(
                "no admin identity configured: leadership transfers and membership changes \
                 sent to this node are refused (set admin.token_file or \
                 admin.certificate_names in [admin])",
            ),
            ConfigWarning::PreferredLeaderNotAPeer { id } => write!(
                f,
                "balance.preferred_leaders names node {id}, which is not in [[peers]]: while it \
                 is no voter, its partitions prefer the leader derived from the membership"
            ),
        }
    }
}

/// Checks `config`; returns its warnings, or every problem found.
pub fn validate(config: &NodeConfig) -> Result<Vec<ConfigWarning>, Vec<Problem>> {
    let mut problems = Vec::new();
    check_table_bounds(config, &mut problems);
    check_storage_relations(config, &mut problems);
    check_raft_relations(config, &mut problems);
    check_net_relations(config, &mut problems);
    check_peers(config, &mut problems);
    check_log_level(&config.log.level, &mut problems);
    check_preferred_leaders(config, &mut problems);
    if config.tls.mode.is_none() {
        problems.push(Problem::TlsModeMissing);
    }
    if let Err(problem) = check_data_dir(&config.data_dir) {
        problems.push(problem);
    }
    if problems.is_empty() {
        check_converted(config, &mut problems);
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    let mut warnings = Vec::new();
    let cpus = ringlog_engine::runtime::available_cpus();
    if config.shard_count() > cpus {
        warnings.push(ConfigWarning::ShardsOverCpus { shards: config.shard_count(), cpus });
    }
    if config.tls.mode == Some(TlsMode::Plaintext) {
        warnings.push(ConfigWarning::Plaintext);
    }
    let admin = &config.admin;
    if admin.open {
        warnings.push(ConfigWarning::AdminOpen);
    } else if admin.token_file.is_none() && admin.certificate_names.is_empty() {
        warnings.push(ConfigWarning::AdminNone);
    }
    let mut strangers: Vec<u32> = config
        .balance
        .preferred_leaders
        .iter()
        .copied()
        .filter(|id| !config.peers.iter().any(|p| p.id == *id))
        .collect();
    strangers.sort_unstable();
    strangers.dedup();
    warnings.extend(strangers.into_iter().map(|id| ConfigWarning::PreferredLeaderNotAPeer { id }));
    Ok(warnings)
}

/// `balance.preferred_leaders`: node ids (never 0), at most one entry per partition.
fn check_preferred_leaders(config: &NodeConfig, problems: &mut Vec<Problem>) {
    let preferred = &config.balance.preferred_leaders;
    if preferred.len() as u64 > config.partitions {
        let text = format!("at most partitions = {} entries", config.partitions);
        let value = format!("{} entries", preferred.len());
        problems.push(bound("balance.preferred_leaders", value, text));
    }
    for (i, id) in preferred.iter().enumerate() {
        if *id == 0 {
            problems.push(bound(
                &format!("balance.preferred_leaders[{i}]"),
                0,
                "in 1..=4294967295",
            ));
        }
    }
}

fn bound(key: &str, value: impl fmt::Display, bound: impl Into<String>) -> Problem {
    Problem::Bound { key: key.to_string(), value: value.to_string(), bound: bound.into() }
}

fn check_table_bounds(config: &NodeConfig, problems: &mut Vec<Problem>) {
    for spec in KEYS {
        let (Some(get), Some((min, max))) = (spec.value, spec.range) else { continue };
        let Some(value) = get(config) else { continue };
        if !(min..=max).contains(&value) {
            problems.push(bound(spec.key, value, format!("in {min}..={max}")));
        } else if spec.block_multiple && value % BLOCK != 0 {
            problems.push(bound(spec.key, value, format!("a multiple of {BLOCK} (4 KiB)")));
        }
    }
    for (i, peer) in config.peers.iter().enumerate() {
        if peer.id == 0 {
            problems.push(bound(&format!("peers[{i}].id"), 0, "in 1..=4294967295"));
        }
    }
}

fn check_storage_relations(config: &NodeConfig, problems: &mut Vec<Problem>) {
    let s = &config.storage;
    if s.batch_size_max.saturating_add(SEGMENT_OVERHEAD_BYTES) > s.segment_size {
        let max = s.segment_size.saturating_sub(SEGMENT_OVERHEAD_BYTES);
        let text = format!("<= storage.segment_size - {SEGMENT_OVERHEAD_BYTES} = {max}");
        problems.push(bound("storage.batch_size_max", s.batch_size_max, text));
    }
    if s.flush_bytes_max < s.batch_size_max {
        let text = format!(">= storage.batch_size_max = {}", s.batch_size_max);
        problems.push(bound("storage.flush_bytes_max", s.flush_bytes_max, text));
    }
    if s.flush_bytes_max > s.segment_size / 2 {
        let text = format!("<= storage.segment_size / 2 = {}", s.segment_size / 2);
        problems.push(bound("storage.flush_bytes_max", s.flush_bytes_max, text));
    }
    if s.queued_bytes_max < s.flush_bytes_max {
        let text = format!(">= storage.flush_bytes_max = {}", s.flush_bytes_max);
        problems.push(bound("storage.queued_bytes_max", s.queued_bytes_max, text));
    }
    if s.index_interval_bytes > s.segment_size {
        let text = format!("<= storage.segment_size = {}", s.segment_size);
        problems.push(bound("storage.index_interval_bytes", s.index_interval_bytes, text));
    }
    if let Some(retention) = s.retention_bytes_max {
        if retention < s.segment_size {
            let text = format!(">= storage.segment_size = {}", s.segment_size);
            problems.push(bound("storage.retention_bytes_max", retention, text));
        }
    }
}

fn check_raft_relations(config: &NodeConfig, problems: &mut Vec<Problem>) {
    let r = &config.raft;
    if r.heartbeat_ticks >= r.election_ticks {
        let text = format!("< raft.election_ticks = {}", r.election_ticks);
        problems.push(bound("raft.heartbeat_ticks", r.heartbeat_ticks, text));
    }
    if r.inflight_bytes_max < r.append_bytes_max {
        let text = format!(">= raft.append_bytes_max = {}", r.append_bytes_max);
        problems.push(bound("raft.inflight_bytes_max", r.inflight_bytes_max, text));
    }
    if r.uncommitted_bytes_max < config.storage.batch_size_max {
        let text = format!(">= storage.batch_size_max = {}", config.storage.batch_size_max);
        problems.push(bound("raft.uncommitted_bytes_max", r.uncommitted_bytes_max, text));
    }
}

/// Smallest `net.frame_body_size_max` that carries a full `Append` and a full produce.
pub fn frame_body_size_min(config: &NodeConfig) -> u64 {
    let payload = config.raft.append_bytes_max.max(config.storage.batch_size_max);
    let entries = config.raft.append_entries_max.saturating_mul(ENTRY_WIRE_OVERHEAD_MAX as u64);
    payload.saturating_add(entries).saturating_add(FRAME_FIXED_FIELDS_BYTES)
}

fn check_net_relations(config: &NodeConfig, problems: &mut Vec<Problem>) {
    let n = &config.net;
    let frame_min = frame_body_size_min(config);
    if n.frame_body_size_max < frame_min {
        let text = format!(
            ">= max(raft.append_bytes_max, storage.batch_size_max) + raft.append_entries_max × \
             {ENTRY_WIRE_OVERHEAD_MAX} + {FRAME_FIXED_FIELDS_BYTES} = {frame_min}"
        );
        problems.push(bound("net.frame_body_size_max", n.frame_body_size_max, text));
    }
    let queue_min = n.frame_body_size_max.saturating_add(FRAME_HEADER_SIZE as u64);
    if n.link_queue_bytes_max < queue_min {
        let text = format!(">= net.frame_body_size_max + {FRAME_HEADER_SIZE} = {queue_min}");
        problems.push(bound("net.link_queue_bytes_max", n.link_queue_bytes_max, text));
    }
    let idle_min = n.keepalive_interval_ms.saturating_mul(3);
    if n.idle_timeout_ms < idle_min {
        let text = format!(">= 3 × net.keepalive_interval_ms = {idle_min}");
        problems.push(bound("net.idle_timeout_ms", n.idle_timeout_ms, text));
    }
    if n.reconnect_backoff_max_ms < n.reconnect_backoff_initial_ms {
        let text =
            format!(">= net.reconnect_backoff_initial_ms = {}", n.reconnect_backoff_initial_ms);
        problems.push(bound("net.reconnect_backoff_max_ms", n.reconnect_backoff_max_ms, text));
    }
}

fn check_peers(config: &NodeConfig, problems: &mut Vec<Problem>) {
    let peers = &config.peers;
    if peers.is_empty() || peers.len() > GROUP_MEMBERS_MAX {
        let text = format!("1..={GROUP_MEMBERS_MAX} entries");
        problems.push(bound("peers", format!("{} entries", peers.len()), text));
    }
    let mut ids: Vec<u32> = peers.iter().map(|p| p.id).collect();
    ids.sort_unstable();
    for pair in ids.windows(2) {
        if pair[0] == pair[1] && !problems.contains(&Problem::DuplicatePeerId { id: pair[0] }) {
            problems.push(Problem::DuplicatePeerId { id: pair[0] });
        }
    }
    if !peers.is_empty() && !ids.contains(&config.node_id) {
        ids.dedup();
        problems.push(Problem::NodeNotInPeers { node_id: config.node_id, ids });
    }
    let mut seen: HashMap<SocketAddr, String> = HashMap::new();
    for (i, peer) in peers.iter().enumerate() {
        for (field, address) in [("peer", peer.peer), ("client", peer.client)] {
            let key = format!("peers[{i}].{field}");
            if address.port() == 0 || address.ip().is_unspecified() {
                let text = "a reachable address: not port 0, not 0.0.0.0 or [::]";
                problems.push(bound(&key, address, text));
            }
            match seen.get(&address) {
                Some(other) => {
                    problems.push(Problem::DuplicateAddress { key, address, other: other.clone() })
                }
                None => {
                    seen.insert(address, key);
                }
            }
        }
    }
    check_listen(config, problems);
}

fn check_listen(config: &NodeConfig, problems: &mut Vec<Problem>) {
    let listen = [
        ("listen.client", config.client_listen()),
        ("listen.peer", config.peer_listen()),
        ("listen.metrics", Some(config.listen.metrics)),
    ];
    for (i, (key, address)) in listen.iter().enumerate() {
        let Some(address) = address else { continue };
        if address.port() == 0 {
            problems.push(bound(key, address, "a fixed port (not 0)"));
        }
        for (other, other_address) in &listen[..i] {
            if Some(*address) == *other_address {
                let problem = Problem::DuplicateAddress {
                    key: key.to_string(),
                    address: *address,
                    other: other.to_string(),
                };
                problems.push(problem);
            }
        }
    }
}

fn check_log_level(level: &str, problems: &mut Vec<Problem>) {
    let valid = !level.trim().is_empty()
        && level.split(',').all(|directive| {
            let level = directive.rsplit('=').next().unwrap_or("").trim();
            let target_ok = directive.split('=').count() <= 2
                && directive.split('=').next().is_some_and(|t| !t.trim().is_empty());
            target_ok && LOG_LEVELS.contains(&level.to_ascii_lowercase().as_str())
        });
    if !valid {
        let text = format!("a level ({}) or `level,target=level,...`", LOG_LEVELS.join(", "));
        problems.push(bound("log.level", format!("{level:?}"), text));
    }
}

/// The data dir must be a directory we can list, or not exist yet below a directory.
fn check_data_dir(path: &Path) -> Result<(), Problem> {
    let problem = |reason: String| Problem::DataDir { path: path.to_path_buf(), reason };
    match std::fs::metadata(path) {
        Ok(meta) if !meta.is_dir() => Err(problem("exists and is not a directory".to_string())),
        Ok(_) => std::fs::read_dir(path)
            .map(drop)
            .map_err(|e| problem(format!("is a directory but cannot be read: {e}"))),
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
            ) =>
        {
            let ancestor = path.ancestors().skip(1).find(|a| a.exists());
            match ancestor {
                Some(a) if a.is_dir() => Ok(()),
                Some(a) => Err(problem(format!(
                    "does not exist and cannot be created: {} is not a directory",
                    a.display()
                ))),
                None => Err(problem("does not exist and has no existing parent".to_string())),
            }
        }
        Err(e) => Err(problem(format!("cannot be reached: {e}"))),
    }
}

/// Runs the converted configs through their owners' own checks (the engine and the Raft core).
fn check_converted(config: &NodeConfig, problems: &mut Vec<Problem>) {
    if let Err(e) = config.to_log_config().validate() {
        problems.push(Problem::Refused { component: "engine log", detail: e.to_string() });
    }
    if let Err(e) = config.to_raft_config(0).validate() {
        problems.push(Problem::Refused { component: "raft", detail: e.to_string() });
    }
}
