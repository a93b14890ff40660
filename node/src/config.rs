//! Node configuration: the TOML file `ringlog serve --config node.toml` reads.
//!
//! [`NodeConfig::load`] parses the file (unknown keys are errors; parse errors carry line and
//! column), resolves a relative `data_dir` against the file's directory, then validates every
//! value (config_check.rs) so that a node never starts on a configuration it would trip over
//! later. The conversions (`to_log_config`, `to_engine_config`, `to_raft_config`,
//! `to_peer_config`) are the only place where the file's keys meet the crates' config
//! structs. Every key, its type, default, bound and meaning is listed once, in
//! config_keys.rs, which generates docs/config.md (`ringlog config reference`).
//!
//! `[tls]` (issue #7): `mode = "tls"` turns on mutual TLS between nodes and TLS for clients,
//! from PEM files (`ca`, `cert`, `key`, optional `client_ca`; relative paths are resolved
//! against the file's directory like `data_dir`). Validation reads and parses them
//! ([`NodeConfig::tls_config`]), so a missing or bad file is a load error naming the key and
//! path. `tls.mode` is required: plaintext only when explicitly configured. A file without it
//! is refused with [`Problem::TlsModeMissing`], which says how to fix it; with
//! `mode = "plaintext"` the node runs unencrypted and says so: `config check` prints
//! [`ConfigWarning::Plaintext`] and the node logs [`PLAINTEXT_WARNING`] at start.
//!
//! Invariants: a `NodeConfig` returned by `load` or `from_toml_str` has passed `validate`: its
//! conversions produce configs the engine, the Raft core and the transport accept.

#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use ringlog_engine::limits::{
    BATCH_SIZE_MAX_DEFAULT, FLUSH_BYTES_MAX_DEFAULT, INDEX_INTERVAL_BYTES_DEFAULT,
    QUEUED_BYTES_MAX_DEFAULT, SEGMENT_SIZE_DEFAULT, TAIL_CACHE_BYTES_MAX_DEFAULT,
};
use ringlog_engine::runtime::Pinning;
use ringlog_engine::shard::{COMMAND_QUEUE_MAX_DEFAULT, IO_MEMORY_DEFAULT_BYTES};
use ringlog_engine::{EngineConfig, LogConfig, RecoveryMode};
use ringlog_net::limits as net_limits;
use ringlog_net::tls::{TlsConfig, TlsError, TlsFiles};
use ringlog_net::transport::PeerConfig;
use ringlog_net::{ClusterId, ShardId};
use ringlog_raft::config as raft_defaults;
use ringlog_raft::{Membership, NodeId};

pub use crate::config_check::{ConfigWarning, Problem};

/// Default number of partitions of a cluster.
pub const PARTITIONS_DEFAULT: u64 = 8;
/// Default Prometheus metrics address (loopback: expose it deliberately).
pub const METRICS_ADDRESS_DEFAULT: &str = "127.0.0.1:9464";
/// Default Raft tick: elections after 10–20 ticks (0.5–1 s), heartbeats every 2 (100 ms).
pub const TICK_INTERVAL_MS_DEFAULT: u64 = 50;
/// Default client connections one node serves at once.
pub const CLIENT_CONNECTIONS_MAX_DEFAULT: u64 = 4096;
/// Default log level (a `tracing` filter).
pub const LOG_LEVEL_DEFAULT: &str = "info";

/// One node's configuration file, as written (see docs/config.md).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// This node's id; must be one of `peers[].id`.
    pub node_id: u32,
    /// The cluster's id, exchanged in the peer handshake (same on every node).
    pub cluster_id: u64,
    /// Parent directory of every partition's log (relative: to the config file's directory).
    pub data_dir: PathBuf,
    /// Executor threads (shards); `None`: available CPUs - 1, at least 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shards: Option<u64>,
    /// Bytes of IO memory each executor registers with each of its 3 io_uring rings.
    #[serde(default = "default_io_memory")]
    pub io_memory: u64,
    /// Partitions (Raft groups) of the cluster; partition `p` lives on shard `p % shards`.
    #[serde(default = "default_partitions")]
    pub partitions: u64,
    /// Placement of executor threads on CPUs.
    #[serde(default)]
    pub pinning: PinningMode,
    /// Spin before parking (dedicated bare-metal cores only: design.md §11).
    #[serde(default)]
    pub spin: bool,
    /// Commands waiting in one shard's mailbox before calls fail with Backpressure.
    #[serde(default = "default_command_queue_max")]
    pub command_queue_max: u64,
    #[serde(default)]
    pub listen: ListenSection,
    /// Every voter of the cluster, this node included.
    pub peers: Vec<PeerEntry>,
    #[serde(default)]
    pub storage: StorageSection,
    #[serde(default)]
    pub raft: RaftSection,
    #[serde(default)]
    pub net: NetSection,
    #[serde(default)]
    pub log: LogSection,
    #[serde(default)]
    pub tls: TlsSection,
    #[serde(default)]
    pub balance: BalanceSection,
    #[serde(default)]
    pub admin: AdminSection,
}

/// `[admin]`: who may transfer leadership and change membership through the client ports
/// (crate::admin; docs/config.md). Nothing set: nobody may (secure by default).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminSection {
    /// The admin token's file (relative: to the config file's directory); read at start.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
    /// DNS subjectAltNames that make a verified client certificate an admin's.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub certificate_names: Vec<String>,
    /// Every client is an admin (explicit only; warned about at start).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub open: bool,
}

/// `[balance]`: the leader balancer (node/src/node/balance.rs; docs/config.md).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BalanceSection {
    /// The off switch: `false` leaves leadership wherever elections put it.
    pub enabled: bool,
    /// Balancing transfers this node starts in any 60 s window, at most.
    pub transfers_per_minute: u64,
    /// A leader hands over no sooner than this long after it was elected and after the
    /// preferred leader was last seen unhealthy.
    pub settle_ms: u64,
    /// Partition `p` prefers node `preferred_leaders[p % len]` while that node is a voter;
    /// empty: the voter at `p % voters` in id order. Must be the same on every node.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub preferred_leaders: Vec<u32>,
}

/// Default `balance.transfers_per_minute`.
pub const BALANCE_TRANSFERS_PER_MINUTE_DEFAULT: u64 = 30;
/// Default `balance.settle_ms`: long enough that a rolling restart's next step (a stop and a
/// start, seconds apart) does not bounce leadership back and forth.
pub const BALANCE_SETTLE_MS_DEFAULT: u64 = 30_000;

/// `[tls]`: TLS for client and peer traffic (see the module docs and docs/config.md).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsSection {
    /// Required; `None` (not written) only before validation, which refuses it
    /// ([`Problem::TlsModeMissing`]): traffic is never plaintext by default.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<TlsMode>,
    /// PEM: the cluster CA every node certificate must chain to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca: Option<PathBuf>,
    /// PEM: this node's certificate chain (SANs `DNS:ringlog-node`, `DNS:node-<id>.ringlog`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cert: Option<PathBuf>,
    /// PEM: this node's private key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<PathBuf>,
    /// PEM: when set, clients must present a certificate chaining to this CA.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_ca: Option<PathBuf>,
}

impl TlsSection {
    /// `[tls] mode = "plaintext"`: unencrypted on purpose (tests, loopback benchmarks).
    pub fn plaintext() -> TlsSection {
        TlsSection { mode: Some(TlsMode::Plaintext), ..TlsSection::default() }
    }
}

/// `tls.mode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TlsMode {
    /// No encryption, chosen on purpose (a warning at `config check` and at start).
    Plaintext,
    /// Mutual TLS between nodes, TLS for clients.
    Tls,
}

/// The line a node logs at start when `tls.mode = "plaintext"`.
pub const PLAINTEXT_WARNING: &str =
    "plaintext: traffic is not encrypted (tls.mode = \"plaintext\"; \
     write mode = \"tls\" with tls.ca, tls.cert and tls.key to encrypt peer and client traffic)";

/// `pinning`: how shards are placed on CPUs (maps to `ringlog_engine::runtime::Pinning`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PinningMode {
    /// Give each shard an allowed CPU no other ringlog process of the host claimed, when one
    /// allowed CPU stays free besides (`ringlog_engine::placement`).
    #[default]
    Auto,
    /// Always pin shard `i` to the `i % n`-th of the `n` allowed CPUs.
    Always,
    /// Never pin.
    Never,
}

/// `[listen]`: the addresses this node binds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenSection {
    /// Client traffic; `None`: this node's `peers[].client`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<SocketAddr>,
    /// Peer (Raft) traffic; `None`: this node's `peers[].peer`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<SocketAddr>,
    /// Prometheus text metrics.
    #[serde(default = "default_metrics_address")]
    pub metrics: SocketAddr,
}

/// `[[peers]]`: one voter of the cluster and the addresses others reach it on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerEntry {
    pub id: u32,
    /// Address other nodes connect to for Raft traffic.
    pub peer: SocketAddr,
    /// Address clients connect to.
    pub client: SocketAddr,
}

/// `[storage]`: every partition's log (maps to `ringlog_engine::LogConfig`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageSection {
    pub segment_size: u64,
    pub flush_bytes_max: u64,
    pub queued_bytes_max: u64,
    pub batch_size_max: u64,
    pub tail_cache_bytes_max: u64,
    pub index_interval_bytes: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retention_bytes_max: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retention_age_max_secs: Option<u64>,
    pub recovery_mode: RecoveryModeName,
    /// Flushes (write + fdatasync) in flight at once per partition.
    pub flushes_in_flight_max: u64,
    /// Reuse segments deleted by retention instead of zero-filling new ones.
    pub recycle_segments: bool,
    /// Background scrub: committed bytes read (and checksummed) per second per partition, so
    /// that rot in sealed segments is found and repaired while the group is healthy; 0: off.
    pub scrub_bytes_per_sec: u64,
}

/// Default `storage.scrub_bytes_per_sec`: a full pass over 1 GiB of log every ~2 minutes,
/// a small share of any NVMe device's read bandwidth.
pub const SCRUB_BYTES_PER_SEC_DEFAULT: u64 = 8 << 20;

/// `storage.recovery_mode` (maps to `ringlog_engine::RecoveryMode`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecoveryModeName {
    /// Refuse to open a log with corruption in its middle.
    Strict,
    /// Truncate at the first corrupt batch; the replica is damaged (neither votes nor counts
    /// toward a quorum) until the leader has repaired the range. The node's default.
    #[default]
    TruncateAtCorruption,
}

/// `[raft]`: the Raft core's tunables (maps to `ringlog_raft::Config`) and the tick.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RaftSection {
    pub tick_interval_ms: u64,
    pub election_ticks: u64,
    pub heartbeat_ticks: u64,
    pub inflight_msgs_max: u64,
    pub inflight_bytes_max: u64,
    pub append_entries_max: u64,
    pub append_bytes_max: u64,
    pub uncommitted_entries_max: u64,
    pub uncommitted_bytes_max: u64,
    pub reads_pending_max: u64,
    pub entry_bytes_max: u64,
    pub pre_vote: bool,
    pub check_quorum: bool,
}

/// `[net]`: transport limits (maps to `ringlog_net::transport::PeerConfig`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NetSection {
    pub frame_body_size_max: u64,
    pub link_queue_frames_max: u64,
    pub link_queue_bytes_max: u64,
    pub peer_connections_max: u64,
    pub client_connections_max: u64,
    pub handshake_timeout_ms: u64,
    pub keepalive_interval_ms: u64,
    pub idle_timeout_ms: u64,
    pub write_timeout_ms: u64,
    pub request_timeout_ms: u64,
    pub reconnect_backoff_initial_ms: u64,
    pub reconnect_backoff_max_ms: u64,
}

/// `[log]`: structured logging.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogSection {
    /// A `tracing` filter: a level, or `level,target=level,...`.
    pub level: String,
    /// One JSON object per line instead of text.
    pub json: bool,
}

/// Why a configuration file was not accepted.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}:{line}:{column}: {message}")]
    Parse { path: PathBuf, line: usize, column: usize, message: String },
    #[error("{path}: {} invalid value(s):\n{}", problems.len(), list(problems))]
    Invalid { path: PathBuf, problems: Vec<Problem> },
}

fn list(problems: &[Problem]) -> String {
    let lines: Vec<String> = problems.iter().map(|p| format!("  - {p}")).collect();
    lines.join("\n")
}

/// A configuration that passed validation, with what deserves a warning.
#[derive(Clone, Debug)]
pub struct Loaded {
    pub config: NodeConfig,
    pub warnings: Vec<ConfigWarning>,
}

impl NodeConfig {
    /// Reads, parses and validates the file at `path`.
    pub fn load(path: &Path) -> Result<Loaded, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
        // `Path::new("node.toml").parent()` is `Some("")`: a bare file name lives in ".".
        // An absolute base keeps the data dir stable if the process changes directory.
        let base = match path.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let base = std::path::absolute(&base).unwrap_or(base);
        NodeConfig::from_toml_str(&text, path, &base)
    }

    /// Parses and validates `text` (named `path` in errors); a relative `data_dir` is
    /// resolved against `base`.
    pub fn from_toml_str(text: &str, path: &Path, base: &Path) -> Result<Loaded, ConfigError> {
        let mut config = NodeConfig::parse(text, path)?;
        if config.data_dir.is_relative() {
            config.data_dir = base.join(&config.data_dir);
        }
        let tls = &mut config.tls;
        for file in
            [&mut tls.ca, &mut tls.cert, &mut tls.key, &mut tls.client_ca].into_iter().flatten()
        {
            if file.is_relative() {
                *file = base.join(&*file);
            }
        }
        if let Some(file) = config.admin.token_file.as_mut().filter(|f| f.is_relative()) {
            *file = base.join(&*file);
        }
        match config.validate() {
            Ok(warnings) => Ok(Loaded { config, warnings }),
            Err(problems) => Err(ConfigError::Invalid { path: path.to_path_buf(), problems }),
        }
    }

    /// Parses `text` without validating it (unknown keys and wrong types are still errors).
    pub fn parse(text: &str, path: &Path) -> Result<NodeConfig, ConfigError> {
        toml::from_str(text).map_err(|error: toml::de::Error| {
            let (line, column) = error.span().map_or((0, 0), |span| line_column(text, span.start));
            ConfigError::Parse {
                path: path.to_path_buf(),
                line,
                column,
                message: error.message().to_string(),
            }
        })
    }

    /// Checks every value and relation; see config_check.rs.
    pub fn validate(&self) -> Result<Vec<ConfigWarning>, Vec<Problem>> {
        let checked = match (crate::config_check::validate(self), self.admin_policy()) {
            (checked, Ok(_)) => checked,
            (Ok(_), Err(error)) => Err(vec![Problem::Admin { detail: error.to_string() }]),
            (Err(mut problems), Err(error)) => {
                problems.push(Problem::Admin { detail: error.to_string() });
                Err(problems)
            }
        };
        // A missing `tls.mode` is reported by config_check (`Problem::TlsModeMissing`).
        let problem = match self.tls_config() {
            Ok(_) | Err(TlsConfigError::ModeMissing) => return checked,
            Err(problem) => problem,
        };
        let problem = Problem::Refused { component: "tls", detail: problem.to_string() };
        match checked {
            Ok(_) => Err(vec![problem]),
            Err(mut problems) => {
                problems.push(problem);
                Err(problems)
            }
        }
    }

    /// The TLS configurations of `[tls]` (`None`: plaintext, explicitly configured), built
    /// from its files. A missing `tls.mode` is an error, never plaintext.
    pub fn tls_config(&self) -> Result<Option<Arc<TlsConfig>>, TlsConfigError> {
        let tls = &self.tls;
        if tls.mode.is_none() {
            return Err(TlsConfigError::ModeMissing);
        }
        if tls.mode != Some(TlsMode::Tls) {
            let given = [("tls.ca", &tls.ca), ("tls.cert", &tls.cert), ("tls.key", &tls.key)]
                .into_iter()
                .chain([("tls.client_ca", &tls.client_ca)])
                .find(|(_, path)| path.is_some());
            return match given {
                Some((key, _)) => Err(TlsConfigError::NotEnabled { key }),
                None => Ok(None),
            };
        }
        let need = |key: &'static str, path: &Option<PathBuf>| {
            path.clone().ok_or(TlsConfigError::Missing { key })
        };
        let files = TlsFiles {
            ca: need("tls.ca", &tls.ca)?,
            cert: need("tls.cert", &tls.cert)?,
            key: need("tls.key", &tls.key)?,
            client_ca: tls.client_ca.clone(),
        };
        Ok(Some(Arc::new(TlsConfig::from_files(&files)?)))
    }

    /// The admin policy of `[admin]` (reads `admin.token_file`; see crate::admin).
    pub fn admin_policy(
        &self,
    ) -> Result<crate::admin::AdminPolicy, crate::admin::AdminConfigError> {
        crate::admin::AdminPolicy::from_config(self)
    }

    /// [`PLAINTEXT_WARNING`] when `tls.mode = "plaintext"` (the node logs it at start).
    pub fn plaintext_warning(&self) -> Option<&'static str> {
        (self.tls.mode == Some(TlsMode::Plaintext)).then_some(PLAINTEXT_WARNING)
    }

    /// Shards this node runs (`shards`, or available CPUs - 1, at least 1).
    pub fn shard_count(&self) -> usize {
        match self.shards {
            Some(shards) => shards as usize,
            None => ringlog_engine::runtime::available_cpus().saturating_sub(1).max(1),
        }
    }

    /// This node's entry in `peers` (`None` only before validation).
    pub fn own_peer(&self) -> Option<&PeerEntry> {
        self.peers.iter().find(|p| p.id == self.node_id)
    }

    /// Address to bind for client traffic.
    pub fn client_listen(&self) -> Option<SocketAddr> {
        self.listen.client.or_else(|| self.own_peer().map(|p| p.client))
    }

    /// Address to bind for peer traffic.
    pub fn peer_listen(&self) -> Option<SocketAddr> {
        self.listen.peer.or_else(|| self.own_peer().map(|p| p.peer))
    }

    /// The Raft tick of every replica of this node.
    pub fn tick_interval(&self) -> Duration {
        Duration::from_millis(self.raft.tick_interval_ms)
    }

    /// `[balance]` as the leader balancer reads it.
    pub(crate) fn to_balance_settings(&self) -> crate::node::balance::BalanceSettings {
        let b = &self.balance;
        crate::node::balance::BalanceSettings {
            enabled: b.enabled,
            settle: Duration::from_millis(b.settle_ms),
            preferred_leaders: b.preferred_leaders.iter().map(|&id| NodeId(id)).collect(),
        }
    }

    /// Every partition's log configuration.
    pub fn to_log_config(&self) -> LogConfig {
        let s = &self.storage;
        LogConfig {
            segment_size_bytes: s.segment_size,
            flush_bytes_max: s.flush_bytes_max as usize,
            queued_bytes_max: s.queued_bytes_max as usize,
            batch_size_max: s.batch_size_max as usize,
            index_interval_bytes: s.index_interval_bytes as u32,
            tail_cache_bytes_max: s.tail_cache_bytes_max as usize,
            retention_bytes_max: s.retention_bytes_max,
            retention_age_max: s.retention_age_max_secs.map(Duration::from_secs),
            recovery_mode: match s.recovery_mode {
                RecoveryModeName::Strict => RecoveryMode::Strict,
                RecoveryModeName::TruncateAtCorruption => RecoveryMode::TruncateAtCorruption,
            },
            flushes_in_flight_max: s.flushes_in_flight_max as usize,
            recycle_segments: s.recycle_segments,
        }
    }

    /// The shard runtime's configuration.
    pub fn to_engine_config(&self) -> EngineConfig {
        EngineConfig {
            data_dir: self.data_dir.clone(),
            shards: self.shard_count(),
            partitions: self.partitions as u32,
            io_memory_bytes: self.io_memory as usize,
            log: self.to_log_config(),
            command_queue_max: self.command_queue_max as usize,
            spin: self.spin,
            pinning: match self.pinning {
                PinningMode::Auto => Pinning::Auto,
                PinningMode::Always => Pinning::Always,
                PinningMode::Never => Pinning::Never,
            },
            faults: None,
        }
    }

    /// The Raft core's configuration of one replica of this node; `seed` drives its election
    /// timeouts (give each partition its own).
    pub fn to_raft_config(&self, seed: u64) -> ringlog_raft::Config {
        let r = &self.raft;
        ringlog_raft::Config {
            id: NodeId(self.node_id),
            election_ticks: r.election_ticks as u32,
            heartbeat_ticks: r.heartbeat_ticks as u32,
            inflight_msgs_max: r.inflight_msgs_max as usize,
            inflight_bytes_max: r.inflight_bytes_max,
            append_entries_max: r.append_entries_max,
            append_bytes_max: r.append_bytes_max,
            uncommitted_entries_max: r.uncommitted_entries_max,
            uncommitted_bytes_max: r.uncommitted_bytes_max,
            reads_pending_max: r.reads_pending_max as usize,
            entry_bytes_max: r.entry_bytes_max,
            check_quorum: r.check_quorum,
            pre_vote: r.pre_vote,
            seed,
        }
    }

    /// The first membership of every partition's group: every peer a voter.
    pub fn bootstrap_membership(&self) -> Membership {
        let mut voters: Vec<NodeId> = self.peers.iter().map(|p| NodeId(p.id)).collect();
        voters.sort();
        Membership { voters, learners: Vec::new() }
    }

    /// The peer transport's configuration of shard `shard` of this node.
    pub fn to_peer_config(&self, shard: ShardId) -> PeerConfig {
        let n = &self.net;
        let ms = Duration::from_millis;
        PeerConfig {
            frame_body_size_max: n.frame_body_size_max as usize,
            queue_frames_max: n.link_queue_frames_max as usize,
            queue_bytes_max: n.link_queue_bytes_max as usize,
            backoff_initial: ms(n.reconnect_backoff_initial_ms),
            backoff_max: ms(n.reconnect_backoff_max_ms),
            handshake_timeout: ms(n.handshake_timeout_ms),
            connections_max: n.peer_connections_max as usize,
            keepalive_interval: ms(n.keepalive_interval_ms),
            idle_timeout: ms(n.idle_timeout_ms),
            write_timeout: ms(n.write_timeout_ms),
            ..PeerConfig::new(ClusterId(self.cluster_id), NodeId(self.node_id), shard)
        }
    }
}

/// Why `[tls]` does not give a TLS configuration.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsConfigError {
    #[error("{}", crate::config_check::TLS_MODE_MISSING)]
    ModeMissing,
    #[error("{key} is required when tls.mode = \"tls\"")]
    Missing { key: &'static str },
    #[error("{key} is set but tls.mode is not \"tls\" (traffic would be plaintext)")]
    NotEnabled { key: &'static str },
    #[error(transparent)]
    Files(#[from] TlsError),
}

/// 1-based line and column of byte `offset` in `text`.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

pub(crate) fn default_io_memory() -> u64 {
    IO_MEMORY_DEFAULT_BYTES as u64
}

pub(crate) fn default_partitions() -> u64 {
    PARTITIONS_DEFAULT
}

pub(crate) fn default_command_queue_max() -> u64 {
    COMMAND_QUEUE_MAX_DEFAULT as u64
}

fn default_metrics_address() -> SocketAddr {
    METRICS_ADDRESS_DEFAULT.parse().expect("constant address parses")
}

impl Default for ListenSection {
    fn default() -> Self {
        ListenSection { client: None, peer: None, metrics: default_metrics_address() }
    }
}

impl Default for StorageSection {
    fn default() -> Self {
        // The engine owns these defaults (engine/src/limits.rs).
        let engine = LogConfig::default();
        StorageSection {
            segment_size: SEGMENT_SIZE_DEFAULT,
            flush_bytes_max: FLUSH_BYTES_MAX_DEFAULT as u64,
            queued_bytes_max: QUEUED_BYTES_MAX_DEFAULT as u64,
            batch_size_max: BATCH_SIZE_MAX_DEFAULT as u64,
            tail_cache_bytes_max: TAIL_CACHE_BYTES_MAX_DEFAULT as u64,
            index_interval_bytes: INDEX_INTERVAL_BYTES_DEFAULT as u64,
            retention_bytes_max: None,
            retention_age_max_secs: None,
            recovery_mode: RecoveryModeName::TruncateAtCorruption,
            flushes_in_flight_max: engine.flushes_in_flight_max as u64,
            recycle_segments: engine.recycle_segments,
            scrub_bytes_per_sec: SCRUB_BYTES_PER_SEC_DEFAULT,
        }
    }
}

impl Default for RaftSection {
    fn default() -> Self {
        RaftSection {
            tick_interval_ms: TICK_INTERVAL_MS_DEFAULT,
            election_ticks: raft_defaults::ELECTION_TICKS_DEFAULT as u64,
            heartbeat_ticks: raft_defaults::HEARTBEAT_TICKS_DEFAULT as u64,
            inflight_msgs_max: raft_defaults::INFLIGHT_MSGS_MAX_DEFAULT as u64,
            inflight_bytes_max: raft_defaults::INFLIGHT_BYTES_MAX_DEFAULT,
            append_entries_max: raft_defaults::APPEND_ENTRIES_MAX_DEFAULT,
            append_bytes_max: raft_defaults::APPEND_BYTES_MAX_DEFAULT,
            uncommitted_entries_max: raft_defaults::UNCOMMITTED_ENTRIES_MAX_DEFAULT,
            uncommitted_bytes_max: raft_defaults::UNCOMMITTED_BYTES_MAX_DEFAULT,
            reads_pending_max: raft_defaults::READS_PENDING_MAX_DEFAULT as u64,
            entry_bytes_max: raft_defaults::ENTRY_BYTES_MAX_DEFAULT,
            pre_vote: true,
            check_quorum: true,
        }
    }
}

impl Default for NetSection {
    fn default() -> Self {
        let ms = |d: Duration| d.as_millis() as u64;
        NetSection {
            frame_body_size_max: net_limits::FRAME_BODY_SIZE_MAX as u64,
            link_queue_frames_max: net_limits::LINK_QUEUE_FRAMES_MAX as u64,
            link_queue_bytes_max: net_limits::LINK_QUEUE_BYTES_MAX as u64,
            peer_connections_max: net_limits::PEER_CONNECTIONS_MAX as u64,
            client_connections_max: CLIENT_CONNECTIONS_MAX_DEFAULT,
            handshake_timeout_ms: ms(net_limits::HANDSHAKE_TIMEOUT),
            keepalive_interval_ms: ms(net_limits::LINK_KEEPALIVE_INTERVAL),
            idle_timeout_ms: ms(net_limits::PEER_IDLE_TIMEOUT),
            write_timeout_ms: ms(net_limits::LINK_WRITE_TIMEOUT),
            request_timeout_ms: ms(net_limits::REQUEST_TIMEOUT),
            reconnect_backoff_initial_ms: ms(net_limits::RECONNECT_BACKOFF_INITIAL),
            reconnect_backoff_max_ms: ms(net_limits::RECONNECT_BACKOFF_MAX),
        }
    }
}

impl Default for BalanceSection {
    fn default() -> Self {
        BalanceSection {
            enabled: true,
            transfers_per_minute: BALANCE_TRANSFERS_PER_MINUTE_DEFAULT,
            settle_ms: BALANCE_SETTLE_MS_DEFAULT,
            preferred_leaders: Vec::new(),
        }
    }
}

impl Default for LogSection {
    fn default() -> Self {
        LogSection { level: LOG_LEVEL_DEFAULT.to_string(), json: false }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
node_id = 2
cluster_id = 99
data_dir = "."

[[peers]]
id = 1
peer = "127.0.0.1:7201"
client = "127.0.0.1:7101"

[[peers]]
id = 2
peer = "127.0.0.1:7202"
client = "127.0.0.1:7102"

[[peers]]
id = 3
peer = "127.0.0.1:7203"
client = "127.0.0.1:7103"

[tls]
mode = "plaintext"
"#;

    /// The repository root (this crate lives in `node/`).
    fn base() -> PathBuf {
        PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
    }

    /// A scratch directory on the repository's disk (`target/`, created if a custom
    /// CARGO_TARGET_DIR left it missing).
    fn scratch() -> PathBuf {
        let dir = base().join("target");
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn load(text: &str) -> Result<Loaded, ConfigError> {
        NodeConfig::from_toml_str(text, Path::new("node.toml"), &base())
    }

    /// The problems of an invalid config, as their messages.
    fn problems(text: &str) -> Vec<String> {
        match load(text) {
            Err(ConfigError::Invalid { problems, .. }) => {
                problems.iter().map(ToString::to_string).collect()
            }
            other => panic!("expected validation problems, got {other:?}"),
        }
    }

    fn with(section_lines: &str) -> String {
        format!("{MINIMAL}\n{section_lines}\n")
    }

    #[test]
    fn example_config_in_deploy_parses_and_validates() {
        let path = base().join("deploy/node.example.toml");
        let loaded = NodeConfig::load(&path).unwrap();
        let config = loaded.config;
        assert_eq!(config.node_id, 1);
        assert_eq!(config.peers.len(), 3);
        assert_eq!(config.bootstrap_membership().voters, vec![NodeId(1), NodeId(2), NodeId(3)]);
        assert_eq!(config.storage.retention_bytes_max, Some(64 << 30));
        assert!(config.log.json);
    }

    #[test]
    fn minimal_config_maps_onto_every_crate_default() {
        let config = load(MINIMAL).unwrap().config;
        // One deliberate difference: a replicated node cuts a corrupt log and is repaired by
        // its leader, where the engine alone refuses to open it.
        let node_default =
            LogConfig { recovery_mode: RecoveryMode::TruncateAtCorruption, ..LogConfig::default() };
        assert_eq!(format!("{:?}", config.to_log_config()), format!("{node_default:?}"));
        assert_eq!(config.to_raft_config(7), ringlog_raft::Config::new(NodeId(2), 7));
        let peer = config.to_peer_config(ShardId(3));
        let default = PeerConfig::new(ClusterId(99), NodeId(2), ShardId(3));
        assert_eq!(format!("{peer:?}"), format!("{default:?}"));
        let engine = config.to_engine_config();
        let engine_default = EngineConfig::new(base());
        assert_eq!(engine.data_dir, base().join("."));
        assert_eq!(engine.io_memory_bytes, engine_default.io_memory_bytes);
        assert_eq!(engine.command_queue_max, engine_default.command_queue_max);
        assert_eq!(engine.pinning, engine_default.pinning);
        assert_eq!(engine.partitions, PARTITIONS_DEFAULT as u32);
        assert!(engine.shards >= 1);
        assert_eq!(config.client_listen(), Some("127.0.0.1:7102".parse().unwrap()));
        assert_eq!(config.peer_listen(), Some("127.0.0.1:7202".parse().unwrap()));
        assert_eq!(config.listen.metrics, METRICS_ADDRESS_DEFAULT.parse().unwrap());
    }

    #[test]
    fn every_key_maps_to_its_field_in_the_crate_configs() {
        let text = format!(
            "{}\n{}",
            MINIMAL.replace("data_dir = \".\"", "data_dir = \".\"\nshards = 1\nio_memory = 524288\npartitions = 3\npinning = \"never\"\nspin = true\ncommand_queue_max = 17"),
            r#"
[storage]
segment_size = 8388608
flush_bytes_max = 524288
queued_bytes_max = 2097152
batch_size_max = 131072
tail_cache_bytes_max = 65536
index_interval_bytes = 8192
retention_bytes_max = 16777216
retention_age_max_secs = 60
recovery_mode = "truncate_at_corruption"
flushes_in_flight_max = 3
recycle_segments = true

[raft]
tick_interval_ms = 20
election_ticks = 7
heartbeat_ticks = 3
inflight_msgs_max = 5
inflight_bytes_max = 9000000
append_entries_max = 11
append_bytes_max = 500000
uncommitted_entries_max = 13
uncommitted_bytes_max = 7000000
reads_pending_max = 19
entry_bytes_max = 300000
pre_vote = false
check_quorum = false

[net]
frame_body_size_max = 4194304
link_queue_frames_max = 23
link_queue_bytes_max = 5000000
peer_connections_max = 29
client_connections_max = 31
handshake_timeout_ms = 1500
keepalive_interval_ms = 300
idle_timeout_ms = 2000
write_timeout_ms = 2500
request_timeout_ms = 3500
reconnect_backoff_initial_ms = 5
reconnect_backoff_max_ms = 700

[log]
level = "warn,ringlog_net=debug"
json = true
"#
        );
        let config = load(&text).unwrap().config;
        let log = config.to_log_config();
        assert_eq!(log.segment_size_bytes, 8 << 20);
        assert_eq!(log.flush_bytes_max, 512 << 10);
        assert_eq!(log.queued_bytes_max, 2 << 20);
        assert_eq!(log.batch_size_max, 128 << 10);
        assert_eq!(log.tail_cache_bytes_max, 64 << 10);
        assert_eq!(log.index_interval_bytes, 8192);
        assert_eq!(log.retention_bytes_max, Some(16 << 20));
        assert_eq!(log.retention_age_max, Some(Duration::from_secs(60)));
        assert_eq!(log.recovery_mode, RecoveryMode::TruncateAtCorruption);
        assert_eq!(log.flushes_in_flight_max, 3);
        assert!(log.recycle_segments);
        let engine = config.to_engine_config();
        assert_eq!(engine.shards, 1);
        assert_eq!(engine.io_memory_bytes, 512 << 10);
        assert_eq!(engine.partitions, 3);
        assert_eq!(engine.pinning, Pinning::Never);
        assert!(engine.spin);
        assert_eq!(engine.command_queue_max, 17);
        let raft = config.to_raft_config(1);
        let expected = ringlog_raft::Config {
            id: NodeId(2),
            election_ticks: 7,
            heartbeat_ticks: 3,
            inflight_msgs_max: 5,
            inflight_bytes_max: 9_000_000,
            append_entries_max: 11,
            append_bytes_max: 500_000,
            uncommitted_entries_max: 13,
            uncommitted_bytes_max: 7_000_000,
            reads_pending_max: 19,
            entry_bytes_max: 300_000,
            check_quorum: false,
            pre_vote: false,
            seed: 1,
        };
        assert_eq!(raft, expected);
        assert_eq!(config.tick_interval(), Duration::from_millis(20));
        let peer = config.to_peer_config(ShardId(0));
        assert_eq!(peer.cluster, ClusterId(99));
        assert_eq!(peer.node, NodeId(2));
        assert_eq!(peer.frame_body_size_max, 4 << 20);
        assert_eq!(peer.queue_frames_max, 23);
        assert_eq!(peer.queue_bytes_max, 5_000_000);
        assert_eq!(peer.connections_max, 29);
        assert_eq!(peer.handshake_timeout, Duration::from_millis(1500));
        assert_eq!(peer.keepalive_interval, Duration::from_millis(300));
        assert_eq!(peer.idle_timeout, Duration::from_millis(2000));
        assert_eq!(peer.write_timeout, Duration::from_millis(2500));
        assert_eq!(peer.backoff_initial, Duration::from_millis(5));
        assert_eq!(peer.backoff_max, Duration::from_millis(700));
        assert_eq!(config.net.client_connections_max, 31);
        assert_eq!(config.net.request_timeout_ms, 3500);
        assert_eq!(config.log, LogSection { level: "warn,ringlog_net=debug".into(), json: true });
    }

    #[test]
    fn unknown_key_is_rejected_with_its_line_and_column() {
        let text = with("[storage]\nsegment_size = 268435456\nsegment_sise = 1\n");
        let error = load(&text).unwrap_err();
        let ConfigError::Parse { line, column, message, .. } = &error else {
            panic!("expected a parse error, got {error:?}");
        };
        let expected_line = text.lines().position(|l| l.starts_with("segment_sise")).unwrap() + 1;
        assert_eq!((*line, *column), (expected_line, 1));
        assert!(message.contains("unknown field `segment_sise`"), "{message}");
        assert!(error.to_string().starts_with(&format!("node.toml:{expected_line}:1: ")));
    }

    #[test]
    fn unknown_section_and_unknown_peer_field_are_rejected() {
        let section = with("[storag]\nsegment_size = 268435456\n");
        let error = load(&section).unwrap_err().to_string();
        assert!(error.contains("unknown field `storag`"), "{error}");
        let peer = MINIMAL.replace("id = 3\n", "id = 3\nweight = 2\n");
        let error = load(&peer).unwrap_err().to_string();
        assert!(error.contains("unknown field `weight`"), "{error}");
    }

    #[test]
    fn an_address_that_does_not_parse_is_rejected_with_its_position() {
        let text = MINIMAL.replace("\"127.0.0.1:7203\"", "\"127.0.0.1\"");
        let error = load(&text).unwrap_err();
        let ConfigError::Parse { line, message, .. } = &error else {
            panic!("expected a parse error, got {error:?}");
        };
        let expected = text.lines().position(|l| l.contains("\"127.0.0.1\"")).unwrap() + 1;
        assert_eq!(*line, expected);
        assert!(message.contains("socket address"), "{message}");
    }

    #[test]
    fn a_negative_size_is_a_parse_error_naming_the_line() {
        let text = with("[storage]\nbatch_size_max = -4096\n");
        let error = load(&text).unwrap_err();
        let expected = text.lines().position(|l| l.starts_with("batch_size_max")).unwrap() + 1;
        assert!(matches!(error, ConfigError::Parse { line, .. } if line == expected), "{error}");
    }

    #[test]
    fn node_id_not_among_peers_is_rejected() {
        let text = MINIMAL.replace("node_id = 2", "node_id = 4");
        assert_eq!(
            problems(&text),
            vec!["node_id = 4 is not among the [[peers]] ids [1, 2, 3]".to_string()]
        );
    }

    #[test]
    fn duplicate_peer_ids_and_addresses_are_rejected() {
        let text = MINIMAL.replace("id = 3", "id = 1").replace("7203", "7201");
        let found = problems(&text);
        assert!(found.contains(&"peers: id 1 appears more than once".to_string()), "{found:?}");
        assert!(
            found.contains(
                &"peers[2].peer = 127.0.0.1:7201 is also used by peers[0].peer".to_string()
            ),
            "{found:?}"
        );
    }

    #[test]
    fn zero_shards_is_rejected_and_more_shards_than_cpus_is_a_warning() {
        let zero = MINIMAL.replace("data_dir = \".\"", "data_dir = \".\"\nshards = 0");
        assert_eq!(problems(&zero), vec!["shards = 0: must be in 1..=256".to_string()]);
        let many = MINIMAL.replace("data_dir = \".\"", "data_dir = \".\"\nshards = 256");
        let cpus = ringlog_engine::runtime::available_cpus();
        let warnings = load(&many).unwrap().warnings;
        if cpus < 256 {
            let expected = vec![
                ConfigWarning::ShardsOverCpus { shards: 256, cpus },
                ConfigWarning::Plaintext,
                ConfigWarning::AdminNone,
            ];
            assert_eq!(warnings, expected);
        }
    }

    #[test]
    fn a_config_without_tls_mode_is_refused_with_the_fix_both_ways() {
        let text = MINIMAL.replace("[tls]\nmode = \"plaintext\"\n", "");
        assert!(!text.contains("[tls]"));
        let found = problems(&text);
        assert_eq!(found, vec![crate::config_check::TLS_MODE_MISSING.to_string()]);
        for fix in ["mode = \"tls\"", "tls.ca", "tls.cert", "tls.key", "mode = \"plaintext\""] {
            assert!(found[0].contains(fix), "the error names `{fix}`: {}", found[0]);
        }
        // An empty [tls] section is no choice either, and TLS files without a mode are named.
        let empty = format!("{text}\n[tls]\n");
        assert_eq!(problems(&empty), found);
        let files = format!("{text}\n[tls]\nca = \"ca.pem\"\n");
        assert_eq!(problems(&files), found);
        let config = NodeConfig::parse(&text, Path::new("node.toml")).unwrap();
        assert!(matches!(config.tls_config(), Err(TlsConfigError::ModeMissing)));
        assert_eq!(config.plaintext_warning(), None);
    }

    #[test]
    fn explicit_plaintext_is_accepted_with_a_warning_for_config_check_and_the_node() {
        let loaded = load(MINIMAL).unwrap();
        assert_eq!(loaded.warnings, vec![ConfigWarning::Plaintext, ConfigWarning::AdminNone]);
        assert!(loaded.config.tls_config().unwrap().is_none());
        assert_eq!(loaded.config.plaintext_warning(), Some(PLAINTEXT_WARNING));
        let warning = ConfigWarning::Plaintext.to_string();
        assert!(
            warning.contains("not encrypted") && warning.contains("mode = \"tls\""),
            "{warning}"
        );
    }

    #[test]
    fn flushes_in_flight_max_outside_its_bound_is_rejected_naming_the_bound() {
        let limit = ringlog_engine::limits::FLUSHES_IN_FLIGHT_LIMIT;
        for value in [0, limit + 1] {
            let text = with(&format!("[storage]\nflushes_in_flight_max = {value}\n"));
            assert_eq!(
                problems(&text),
                vec![format!("storage.flushes_in_flight_max = {value}: must be in 1..={limit}")]
            );
        }
        let text = with(&format!("[storage]\nflushes_in_flight_max = {limit}\n"));
        assert_eq!(load(&text).unwrap().config.to_log_config().flushes_in_flight_max, limit);
    }

    #[test]
    fn sizes_that_are_not_multiples_of_4_kib_are_rejected_naming_key_value_and_bound() {
        let text = with("[storage]\nsegment_size = 268435457\ntail_cache_bytes_max = 1000\n");
        assert_eq!(
            problems(&text),
            vec![
                "storage.segment_size = 268435457: must be a multiple of 4096 (4 KiB)".to_string(),
                "storage.tail_cache_bytes_max = 1000: must be a multiple of 4096 (4 KiB)"
                    .to_string(),
            ]
        );
    }

    #[test]
    fn relations_between_keys_are_checked_and_all_problems_reported_at_once() {
        let text = with(
            "[storage]\nflush_bytes_max = 4096\n[raft]\nheartbeat_ticks = 10\n\
             [net]\nidle_timeout_ms = 1000\n[log]\nlevel = \"loud\"\n",
        );
        assert_eq!(
            problems(&text),
            vec![
                "storage.flush_bytes_max = 4096: must be >= storage.batch_size_max = 1048576"
                    .to_string(),
                "raft.heartbeat_ticks = 10: must be < raft.election_ticks = 10".to_string(),
                "net.idle_timeout_ms = 1000: must be >= 3 × net.keepalive_interval_ms = 3000"
                    .to_string(),
                "log.level = \"loud\": must be a level (off, error, warn, info, debug, trace) \
                 or `level,target=level,...`"
                    .to_string(),
            ]
        );
    }

    #[test]
    fn data_dir_that_is_a_file_or_below_a_file_is_rejected() {
        let file = tempfile::NamedTempFile::new_in(scratch()).unwrap();
        let path = file.path().display().to_string();
        let text = MINIMAL.replace("data_dir = \".\"", &format!("data_dir = \"{path}\""));
        assert_eq!(
            problems(&text),
            vec![format!("data_dir = {path:?}: exists and is not a directory")]
        );
        let below = MINIMAL.replace("data_dir = \".\"", &format!("data_dir = \"{path}/data\""));
        let found = problems(&below);
        assert_eq!(found.len(), 1);
        assert!(found[0].contains("does not exist and cannot be created"), "{found:?}");
    }

    #[test]
    fn missing_data_dir_under_an_existing_directory_is_accepted() {
        let dir = tempfile::tempdir_in(scratch()).unwrap();
        let path = dir.path().join("not/yet").display().to_string();
        let text = MINIMAL.replace("data_dir = \".\"", &format!("data_dir = \"{path}\""));
        assert_eq!(load(&text).unwrap().config.data_dir, PathBuf::from(path));
    }

    #[test]
    fn a_config_file_named_without_a_directory_resolves_its_data_dir_against_the_cwd() {
        let cwd = std::env::current_dir().unwrap();
        let name = format!("ringlog-config-test-{}.toml", std::process::id());
        let file = cwd.join(&name);
        std::fs::write(&file, MINIMAL.replace("data_dir = \".\"", "data_dir = \"data\"")).unwrap();
        let loaded = NodeConfig::load(Path::new(&name));
        std::fs::remove_file(&file).unwrap();
        let loaded = loaded.expect("a bare file name loads");
        assert_eq!(loaded.config.data_dir, cwd.join("data"));
    }

    #[test]
    fn relative_data_dir_is_resolved_against_the_config_file_directory() {
        let text = MINIMAL.replace("data_dir = \".\"", "data_dir = \"target\"");
        let loaded = NodeConfig::from_toml_str(&text, Path::new("x/node.toml"), &base()).unwrap();
        assert_eq!(loaded.config.data_dir, base().join("target"));
    }

    #[test]
    fn listen_addresses_must_differ_and_peer_addresses_must_be_reachable() {
        let text = with("[listen]\nmetrics = \"127.0.0.1:7102\"\n")
            .replace("\"127.0.0.1:7103\"", "\"0.0.0.0:7103\"");
        assert_eq!(
            problems(&text),
            vec![
                "peers[2].client = 0.0.0.0:7103: must be a reachable address: not port 0, not \
                 0.0.0.0 or [::]"
                    .to_string(),
                "listen.metrics = 127.0.0.1:7102 is also used by listen.client".to_string(),
            ]
        );
    }

    #[test]
    fn balance_section_is_validated_with_clear_errors_and_maps_onto_the_settings() {
        let config = load(MINIMAL).unwrap().config;
        let settings = config.to_balance_settings();
        assert!(settings.enabled, "the balancer is on by default");
        assert_eq!(settings.settle, Duration::from_millis(BALANCE_SETTLE_MS_DEFAULT));
        assert!(settings.preferred_leaders.is_empty());

        let off = load(&with("[balance]\nenabled = false\nsettle_ms = 0\n")).unwrap().config;
        assert!(!off.to_balance_settings().enabled);
        assert_eq!(off.to_balance_settings().settle, Duration::ZERO);

        let bad = with(
            "[balance]\ntransfers_per_minute = 0\nsettle_ms = 600001\n\
             preferred_leaders = [1, 0]\n",
        );
        assert_eq!(
            problems(&bad),
            vec![
                "balance.transfers_per_minute = 0: must be in 1..=600".to_string(),
                "balance.settle_ms = 600001: must be in 0..=600000".to_string(),
                "balance.preferred_leaders[1] = 0: must be in 1..=4294967295".to_string(),
            ]
        );
        let too_many = with("partitions_placeholder").replace(
            "partitions_placeholder",
            "[balance]\npreferred_leaders = [1, 2, 3, 1, 2, 3, 1, 2, 3]\n",
        );
        assert_eq!(
            problems(&too_many),
            vec!["balance.preferred_leaders = 9 entries: must be at most partitions = 8 entries"
                .to_string()]
        );
        let unknown = load(&with("[balance]\nturbo = true\n")).unwrap_err().to_string();
        assert!(unknown.contains("turbo"), "{unknown}");

        let stranger = load(&with("[balance]\npreferred_leaders = [3, 7]\n")).unwrap();
        assert_eq!(
            stranger.warnings,
            vec![
                ConfigWarning::Plaintext,
                ConfigWarning::AdminNone,
                ConfigWarning::PreferredLeaderNotAPeer { id: 7 }
            ]
        );
        assert_eq!(
            stranger.config.to_balance_settings().preferred_leaders,
            vec![NodeId(3), NodeId(7)]
        );
    }
}
