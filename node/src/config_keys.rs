//! The table of every configuration key: type, bound, meaning — and the generated reference.
//!
//! [`KEYS`] is the single list of keys. Validation (config_check.rs) checks each numeric key's
//! range and 4 KiB multiple from it; [`reference_markdown`] renders it, with defaults read
//! from the code's `Default` impls, into docs/config.md. Tests keep the table, the structs and
//! the committed document in step.
//!
//! Invariants: every leaf key of `NodeConfig` appears exactly once in `KEYS` (tested).

#![forbid(unsafe_code)]

use std::fmt::Write as _;

use ringlog_engine::limits::{
    BLOCK_SIZE, FLUSHES_IN_FLIGHT_LIMIT, SEGMENT_SIZE_MAX, SEGMENT_SIZE_MIN,
};
use ringlog_engine::shard::{COMMAND_QUEUE_MAX_LIMIT, PARTITIONS_MAX, SHARDS_MAX};
use ringlog_net::limits as net;

use crate::config::NodeConfig;

/// Smallest `io_memory` glommio allocates (runtime.rs).
pub const IO_MEMORY_MIN: u64 = 64 << 10;
/// Largest `io_memory` accepted (locked memory is 3 × this per shard).
pub const IO_MEMORY_MAX: u64 = 1 << 30;
/// Largest byte limit of a queue or cache accepted (far above any sane value; catches typos).
pub const BYTES_LIMIT_MAX: u64 = 1 << 40;
/// Largest count limit accepted.
pub const COUNT_LIMIT_MAX: u64 = 1 << 24;
/// Largest duration in milliseconds accepted (10 minutes).
pub const MILLIS_MAX: u64 = 600_000;
/// Largest TOML integer.
pub const TOML_INT_MAX: u64 = i64::MAX as u64;
/// Largest `balance.transfers_per_minute` accepted (ten a second).
pub const BALANCE_TRANSFERS_PER_MINUTE_MAX: u64 = 600;
/// 4 KiB: the IO block every storage size is a multiple of.
pub const BLOCK: u64 = BLOCK_SIZE as u64;

// Numbers spelled out in the `KEYS` texts below (a static cannot format them in).
const _: () = assert!(net::ENTRY_WIRE_OVERHEAD_MAX == 281);
const _: () = assert!(net::GROUP_MEMBERS_MAX == 64);
const _: () = assert!(crate::config_check::SEGMENT_OVERHEAD_BYTES == 12288);

/// How a key's default is stated in the reference.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DefaultValue {
    /// The key must be given.
    Required,
    /// Read from `NodeConfig`'s `Default` impls (see [`default_text`]).
    FromCode,
    /// Computed at load time or absent; described in words.
    Note(&'static str),
}

/// Reads a numeric key from a config (`None`: the key is an unset option).
pub type Getter = fn(&NodeConfig) -> Option<u64>;

/// One key of the configuration file.
#[derive(Clone, Copy, Debug)]
pub struct KeySpec {
    /// Dotted path: `storage.segment_size`, `peers[].id`.
    pub key: &'static str,
    /// TOML type and unit.
    pub ty: &'static str,
    pub default: DefaultValue,
    /// Inclusive range of a numeric key.
    pub range: Option<(u64, u64)>,
    /// The value must be a multiple of 4 KiB.
    pub block_multiple: bool,
    /// Relations to other keys (checked by config_check.rs), or "".
    pub relation: &'static str,
    pub meaning: &'static str,
    /// Reads the value of a numeric key with a `range`.
    pub value: Option<Getter>,
}

const fn key(key: &'static str, ty: &'static str, meaning: &'static str) -> KeySpec {
    KeySpec {
        key,
        ty,
        default: DefaultValue::FromCode,
        range: None,
        block_multiple: false,
        relation: "",
        meaning,
        value: None,
    }
}

const fn num(
    key: &'static str,
    ty: &'static str,
    range: (u64, u64),
    value: Getter,
    meaning: &'static str,
) -> KeySpec {
    KeySpec {
        key,
        ty,
        default: DefaultValue::FromCode,
        range: Some(range),
        block_multiple: false,
        relation: "",
        meaning,
        value: Some(value),
    }
}

impl KeySpec {
    const fn blocks(mut self) -> Self {
        self.block_multiple = true;
        self
    }
    const fn relation(mut self, relation: &'static str) -> Self {
        self.relation = relation;
        self
    }
    const fn required(mut self) -> Self {
        self.default = DefaultValue::Required;
        self
    }
    const fn note(mut self, note: &'static str) -> Self {
        self.default = DefaultValue::Note(note);
        self
    }
}

const BYTES: &str = "integer (bytes)";
const COUNT: &str = "integer";
const MILLIS: &str = "integer (ms)";
const BOOL: &str = "boolean";
const ADDRESS: &str = "string (IP:port)";

/// Every key of the configuration file, in file order.
pub static KEYS: &[KeySpec] = &[
    num(
        "node_id",
        COUNT,
        (1, u32::MAX as u64),
        |c| Some(c.node_id as u64),
        "This node's id; must be one of `peers[].id`.",
    )
    .required(),
    num(
        "cluster_id",
        COUNT,
        (1, TOML_INT_MAX),
        |c| Some(c.cluster_id),
        "The cluster's id, the same on every node; nodes refuse peers of another cluster.",
    )
    .required(),
    key(
        "data_dir",
        "string (path)",
        "Parent of every partition's log (`data_dir/<partition>/`). A relative path is \
         relative to the config file's directory. Must be a directory, or not exist yet under \
         an existing directory (it is created).",
    )
    .required(),
    num(
        "shards",
        COUNT,
        (1, SHARDS_MAX as u64),
        |c| c.shards,
        "Executor threads, one per core; partition `p` lives on shard `p % shards`. More \
         shards than CPUs is a warning.",
    )
    .note("available CPUs - 1, at least 1"),
    num(
        "io_memory",
        BYTES,
        (IO_MEMORY_MIN, IO_MEMORY_MAX),
        |c| Some(c.io_memory),
        "IO memory each executor registers with each of its 3 io_uring rings: the process \
         needs `shards × 3 × io_memory` of RLIMIT_MEMLOCK (`ringlog doctor` checks it).",
    )
    .blocks(),
    num(
        "partitions",
        COUNT,
        (1, PARTITIONS_MAX as u64),
        |c| Some(c.partitions),
        "Partitions of the cluster, each its own Raft group; the same on every node.",
    ),
    key(
        "pinning",
        "string: `auto`, `always`, `never`",
        "CPU placement of the shards: `auto` gives each shard an allowed CPU that no other \
         ringlog process of the host has claimed, only when one allowed CPU stays free \
         besides (else unpinned; claims: tuning.md), `always` pins shard `i` to the \
         `i % n`-th allowed CPU, `never` leaves placement to the kernel.",
    ),
    key(
        "spin",
        BOOL,
        "Executors spin briefly before parking. Only for dedicated bare-metal cores: a \
         spinning executor starves IO completion on a shared host.",
    ),
    num(
        "command_queue_max",
        COUNT,
        (1, COMMAND_QUEUE_MAX_LIMIT as u64),
        |c| Some(c.command_queue_max),
        "Commands queued in one shard's mailbox before callers get Backpressure.",
    ),
    key("listen.client", ADDRESS, "Address this node binds for client traffic.")
        .note("this node's `peers[].client`"),
    key("listen.peer", ADDRESS, "Address this node binds for Raft traffic from other nodes.")
        .note("this node's `peers[].peer`"),
    key(
        "listen.metrics",
        ADDRESS,
        "Address of the HTTP endpoint: Prometheus text on `/metrics`, `/health` and `/ready` \
         (loopback by default: expose it deliberately).",
    ),
    key(
        "peers",
        "array of tables",
        "Every voter of the cluster, this node included, 1..=64 entries (the same list on \
         every node); ids and addresses must be unique.",
    )
    .required(),
    num("peers[].id", COUNT, (1, u32::MAX as u64), |_| None, "The node's id.").required(),
    key(
        "peers[].peer",
        ADDRESS,
        "Address other nodes reach this node on for Raft traffic (port not 0).",
    )
    .required(),
    key("peers[].client", ADDRESS, "Address clients reach this node on (port not 0).").required(),
    num(
        "storage.segment_size",
        BYTES,
        (SEGMENT_SIZE_MIN, SEGMENT_SIZE_MAX),
        |c| Some(c.storage.segment_size),
        "Size of every segment file (preallocated and zero-filled ahead of need).",
    )
    .blocks(),
    num(
        "storage.flush_bytes_max",
        BYTES,
        (BLOCK, SEGMENT_SIZE_MAX / 2),
        |c| Some(c.storage.flush_bytes_max),
        "Most bytes of batches coalesced into one write + fdatasync (group commit).",
    )
    .blocks()
    .relation(">= storage.batch_size_max; <= storage.segment_size / 2"),
    num(
        "storage.queued_bytes_max",
        BYTES,
        (BLOCK, BYTES_LIMIT_MAX),
        |c| Some(c.storage.queued_bytes_max),
        "Bytes appended but not yet durable per partition; past it appends get Backpressure.",
    )
    .blocks()
    .relation(">= storage.flush_bytes_max"),
    num(
        "storage.batch_size_max",
        BYTES,
        (BLOCK, net::BATCH_SIZE_MAX as u64),
        |c| Some(c.storage.batch_size_max),
        "Largest record batch, header included (also the largest produce on the wire).",
    )
    .blocks()
    .relation("<= storage.segment_size - 12288"),
    num(
        "storage.tail_cache_bytes_max",
        BYTES,
        (0, BYTES_LIMIT_MAX),
        |c| Some(c.storage.tail_cache_bytes_max),
        "Bytes of recent batches per partition kept in memory for readers at the head.",
    )
    .blocks(),
    num(
        "storage.index_interval_bytes",
        BYTES,
        (BLOCK, SEGMENT_SIZE_MAX),
        |c| Some(c.storage.index_interval_bytes),
        "Bytes between two entries of a segment's sparse offset index.",
    )
    .blocks()
    .relation("<= storage.segment_size"),
    num(
        "storage.retention_bytes_max",
        BYTES,
        (1, TOML_INT_MAX),
        |c| c.storage.retention_bytes_max,
        "Retention: keep at most this many bytes of sealed segments per partition (whole \
         segments are deleted).",
    )
    .relation(">= storage.segment_size")
    .note("unset: unlimited"),
    num(
        "storage.retention_age_max_secs",
        "integer (s)",
        (1, TOML_INT_MAX),
        |c| c.storage.retention_age_max_secs,
        "Retention: delete sealed segments whose newest record is older than this.",
    )
    .note("unset: unlimited"),
    key(
        "storage.recovery_mode",
        "string: `strict`, `truncate_at_corruption`",
        "Corruption in the middle of a log at start: `truncate_at_corruption` cuts the log \
         there; the replica is then damaged (it neither votes nor counts toward a quorum) until \
         the leader has repaired the range. `strict` refuses to start instead (naming segment \
         and position), for an operator who wants to look first. A torn or rotted tail always \
         makes the replica damaged (docs/format.md#recovery-outcomes).",
    ),
    num(
        "storage.flushes_in_flight_max",
        COUNT,
        (1, FLUSHES_IN_FLIGHT_LIMIT as u64),
        |c| Some(c.storage.flushes_in_flight_max),
        "Flushes (write + fdatasync of up to `storage.flush_bytes_max`) in flight at once per \
         partition; they complete in order. More overlap the device's sync latency; recovery \
         treats this many flushes past the last valid batch as a torn tail.",
    ),
    key(
        "storage.recycle_segments",
        BOOL,
        "Reuse segments that retention deletes as spares for the next segments instead of \
         preallocating and zero-filling new files (fewer device bytes once a log is at its \
         retention limit).",
    ),
    num(
        "storage.scrub_bytes_per_sec",
        BYTES,
        (0, BYTES_LIMIT_MAX),
        |c| Some(c.storage.scrub_bytes_per_sec),
        "Background scrub rate per partition: committed batches are read back and their \
         checksums verified at this many bytes per second, one pass after another, so that rot \
         in sealed segments (which recovery trusts through their index) is found and repaired \
         from the leader while the rest of the group is healthy. 0 turns it off.",
    ),
    num(
        "raft.tick_interval_ms",
        MILLIS,
        (1, 10_000),
        |c| Some(c.raft.tick_interval_ms),
        "Duration of one Raft tick; election and heartbeat intervals count ticks.",
    ),
    num(
        "raft.election_ticks",
        COUNT,
        (2, 10_000),
        |c| Some(c.raft.election_ticks),
        "Election timeout in ticks (randomized in [election_ticks, 2 × election_ticks)); \
         also the CheckQuorum period.",
    )
    .relation("> raft.heartbeat_ticks"),
    num(
        "raft.heartbeat_ticks",
        COUNT,
        (1, 10_000),
        |c| Some(c.raft.heartbeat_ticks),
        "A leader sends heartbeats every this many ticks.",
    )
    .relation("< raft.election_ticks"),
    num(
        "raft.inflight_msgs_max",
        COUNT,
        (1, COUNT_LIMIT_MAX),
        |c| Some(c.raft.inflight_msgs_max),
        "Per-follower pipeline window: AppendEntries messages in flight.",
    ),
    num(
        "raft.inflight_bytes_max",
        BYTES,
        (1, BYTES_LIMIT_MAX),
        |c| Some(c.raft.inflight_bytes_max),
        "Per-follower pipeline window: payload bytes in flight.",
    )
    .relation(">= raft.append_bytes_max"),
    num(
        "raft.append_entries_max",
        COUNT,
        (1, net::ENTRIES_PER_APPEND_MAX as u64),
        |c| Some(c.raft.append_entries_max),
        "Entries per AppendEntries message.",
    ),
    num(
        "raft.append_bytes_max",
        BYTES,
        (1, net::APPEND_PAYLOAD_BYTES_MAX as u64),
        |c| Some(c.raft.append_bytes_max),
        "Payload bytes per AppendEntries message (one entry is always sent).",
    ),
    num(
        "raft.uncommitted_entries_max",
        COUNT,
        (1, COUNT_LIMIT_MAX),
        |c| Some(c.raft.uncommitted_entries_max),
        "Leader: uncommitted entries beyond which produces get Backpressure.",
    ),
    num(
        "raft.uncommitted_bytes_max",
        BYTES,
        (1, BYTES_LIMIT_MAX),
        |c| Some(c.raft.uncommitted_bytes_max),
        "Leader: uncommitted payload bytes beyond which produces get Backpressure.",
    )
    .relation(">= storage.batch_size_max"),
    num(
        "raft.reads_pending_max",
        COUNT,
        (1, COUNT_LIMIT_MAX),
        |c| Some(c.raft.reads_pending_max),
        "Leader: linearizable (ReadIndex) reads waiting for confirmation.",
    ),
    num(
        "raft.entry_bytes_max",
        BYTES,
        (1, net::BATCH_SIZE_MAX as u64),
        |c| Some(c.raft.entry_bytes_max),
        "Largest entry payload the Raft core accepts.",
    ),
    key(
        "raft.pre_vote",
        BOOL,
        "PreVote: ask whether an election could be won before raising the term.",
    ),
    key(
        "raft.check_quorum",
        BOOL,
        "CheckQuorum: a leader that hears no quorum for an election timeout steps down.",
    ),
    num(
        "net.frame_body_size_max",
        BYTES,
        (64 << 10, net::FRAME_BODY_SIZE_CEILING as u64),
        |c| Some(c.net.frame_body_size_max),
        "Largest frame body a decoder accepts (checked before any allocation).",
    )
    .relation(
        ">= max(raft.append_bytes_max, storage.batch_size_max) + \
                   raft.append_entries_max × 281 + 1024",
    ),
    num(
        "net.link_queue_frames_max",
        COUNT,
        (1, COUNT_LIMIT_MAX),
        |c| Some(c.net.link_queue_frames_max),
        "Frames queued on one peer link before sends report QueueFull.",
    ),
    num(
        "net.link_queue_bytes_max",
        BYTES,
        (1, BYTES_LIMIT_MAX),
        |c| Some(c.net.link_queue_bytes_max),
        "Bytes queued on one peer link before sends report QueueFull.",
    )
    .relation(">= net.frame_body_size_max + 32"),
    num(
        "net.peer_connections_max",
        COUNT,
        (1, 1 << 20),
        |c| Some(c.net.peer_connections_max),
        "Peer connections one shard's listener serves at once; more are closed on accept.",
    ),
    num(
        "net.client_connections_max",
        COUNT,
        (1, 1 << 20),
        |c| Some(c.net.client_connections_max),
        "Client connections one node serves at once; more are closed on accept.",
    ),
    num(
        "net.handshake_timeout_ms",
        MILLIS,
        (1, MILLIS_MAX),
        |c| Some(c.net.handshake_timeout_ms),
        "Time a new connection has to complete its handshake.",
    ),
    num(
        "net.keepalive_interval_ms",
        MILLIS,
        (1, MILLIS_MAX),
        |c| Some(c.net.keepalive_interval_ms),
        "An idle peer link sends a keepalive frame this often.",
    ),
    num(
        "net.idle_timeout_ms",
        MILLIS,
        (1, MILLIS_MAX),
        |c| Some(c.net.idle_timeout_ms),
        "An accepted peer connection silent this long is closed.",
    )
    .relation(">= 3 × net.keepalive_interval_ms"),
    num(
        "net.write_timeout_ms",
        MILLIS,
        (1, MILLIS_MAX),
        |c| Some(c.net.write_timeout_ms),
        "A write to a peer that takes longer breaks the connection (it reconnects).",
    ),
    num(
        "net.request_timeout_ms",
        MILLIS,
        (1, MILLIS_MAX),
        |c| Some(c.net.request_timeout_ms),
        "Time a client has to send a whole request once its first byte arrived; a slower \
         request gets a Timeout reply and its connection is closed.",
    ),
    num(
        "net.reconnect_backoff_initial_ms",
        MILLIS,
        (1, MILLIS_MAX),
        |c| Some(c.net.reconnect_backoff_initial_ms),
        "First reconnect delay of a peer link.",
    ),
    num(
        "net.reconnect_backoff_max_ms",
        MILLIS,
        (1, MILLIS_MAX),
        |c| Some(c.net.reconnect_backoff_max_ms),
        "Largest reconnect delay of a peer link.",
    )
    .relation(">= net.reconnect_backoff_initial_ms"),
    key(
        "log.level",
        "string (tracing filter)",
        "Log filter: a level (`error`, `warn`, `info`, `debug`, `trace`) or directives \
         `level,target=level,...`.",
    ),
    key("log.json", BOOL, "Write logs as one JSON object per line instead of text."),
    key(
        "tls.mode",
        "string: `plaintext`, `tls`",
        "`tls`: mutual TLS between nodes (every node certificate must chain to `tls.ca`; a \
         node presenting another CA's certificate is refused and the refusal is logged as \
         `peer certificate rejected`) and TLS for clients. `plaintext`: no encryption, on \
         purpose: `config check` warns and the node logs `plaintext: traffic is not \
         encrypted` at start. There is no default: a file without `tls.mode` is refused.",
    )
    .required(),
    key(
        "tls.ca",
        "string (PEM file path)",
        "The cluster CA: peers' certificates are verified against it (both directions) and \
         clients verify the node against it. Relative paths: against the config file's \
         directory.",
    )
    .note("none")
    .relation("required when tls.mode = \"tls\"; an error otherwise"),
    key(
        "tls.cert",
        "string (PEM file path)",
        "This node's certificate chain, leaf first. The leaf must carry \
         `subjectAltName = DNS:ringlog-node` (the name every connector verifies) and \
         `DNS:node-<node_id>.ringlog` (its identity: peers refuse a node whose certificate \
         names another node).",
    )
    .note("none")
    .relation("required when tls.mode = \"tls\"; must match tls.key"),
    key("tls.key", "string (PEM file path)", "This node's private key (PKCS#8, PKCS#1 or SEC1).")
        .note("none")
        .relation("required when tls.mode = \"tls\""),
    key(
        "tls.client_ca",
        "string (PEM file path)",
        "When set, clients must present a certificate chaining to this CA; unset, any client \
         may connect (over TLS).",
    )
    .note("none: client certificates are not required")
    .relation("only with tls.mode = \"tls\""),
    key(
        "admin.token_file",
        "string (file path)",
        "The admin token: a client that presents it (CLI: `--admin-token-file`) may transfer \
         leadership and change membership. Read at start; the node refuses to start if the \
         file is readable or writable by others (mode `o-rwx`), or its token (content with \
         surrounding whitespace trimmed) is not 16..=512 bytes of visible ASCII. Compared in \
         constant time. Relative paths: against the config file's directory.",
    )
    .note("none")
    .relation("not with admin.open"),
    key(
        "admin.certificate_names",
        "array of strings (DNS names)",
        "A verified client certificate whose leaf carries one of these names as \
         `subjectAltName = DNS:<name>` (the subject CN is not consulted) is an admin's. At \
         most 64 names; wildcards are not accepted here.",
    )
    .note("`[]`")
    .relation("needs tls.mode = \"tls\" and tls.client_ca; not with admin.open"),
    key(
        "admin.open",
        BOOL,
        "Every client may transfer leadership and change membership, without an identity \
         (warned about at start). With no admin key set at all, every such request is \
         refused: there is no insecure default.",
    )
    .note("`false`")
    .relation("not with admin.token_file or admin.certificate_names"),
    key(
        "balance.enabled",
        BOOL,
        "The leader balancer: a node that leads a partition whose preferred leader is another \
         healthy voter, caught up (within 64 entries), hands the leadership over through the \
         normal Raft leadership transfer, once both have settled (`balance.settle_ms`) and \
         never during a membership change. `false` is the off switch: leadership stays where \
         elections put it.",
    ),
    num(
        "balance.transfers_per_minute",
        COUNT,
        (1, BALANCE_TRANSFERS_PER_MINUTE_MAX),
        |c| Some(c.balance.transfers_per_minute),
        "Balancing transfers this node starts in any 60 s window, at most (over all its \
         shards). Each transfer pauses the partition's writes until the new leader is elected \
         (at most an election timeout).",
    ),
    num(
        "balance.settle_ms",
        MILLIS,
        (0, MILLIS_MAX),
        |c| Some(c.balance.settle_ms),
        "A leader hands over no sooner than this long after its election, and only to a \
         preferred leader that has been continuously healthy for as long (so a rolling \
         restart's next step does not bounce leadership back and forth).",
    ),
    key(
        "balance.preferred_leaders",
        "array of node ids",
        "Overrides the preferred leaders: partition `p` prefers node \
         `preferred_leaders[p % len]` while that node is a voter (otherwise the derived \
         choice). Unset: the voter at index `p % voters` of the partition's voters in id \
         order, which spreads partitions evenly. Must be the same on every node (nodes that \
         disagree would move leaders back and forth, at most `transfers_per_minute` times).",
    )
    .note("empty: derived from the membership")
    .relation(
        "ids in 1..=4294967295; at most `partitions` entries; an id not in [[peers]] is a warning",
    ),
];

/// The default of a `FromCode` key as it would be written in TOML.
pub fn default_text(key: &str) -> Option<String> {
    let sections = toml::Value::try_from(defaults_document()).ok()?;
    let mut value = &sections;
    for part in key.split('.') {
        value = value.get(part)?;
    }
    Some(value.to_string())
}

/// Every section's and top-level key's default as one TOML table (required keys omitted).
fn defaults_document() -> toml::Table {
    let mut table = toml::Table::new();
    let mut put = |name: &str, value: Result<toml::Value, toml::ser::Error>| {
        table.insert(name.to_string(), value.expect("defaults serialize"));
    };
    put("io_memory", toml::Value::try_from(crate::config::default_io_memory()));
    put("partitions", toml::Value::try_from(crate::config::default_partitions()));
    put("pinning", toml::Value::try_from(crate::config::PinningMode::default()));
    put("spin", toml::Value::try_from(false));
    put("command_queue_max", toml::Value::try_from(crate::config::default_command_queue_max()));
    put("listen", toml::Value::try_from(crate::config::ListenSection::default()));
    put("storage", toml::Value::try_from(crate::config::StorageSection::default()));
    put("raft", toml::Value::try_from(crate::config::RaftSection::default()));
    put("net", toml::Value::try_from(crate::config::NetSection::default()));
    put("log", toml::Value::try_from(crate::config::LogSection::default()));
    put("balance", toml::Value::try_from(crate::config::BalanceSection::default()));
    table
}

/// The bound column of `spec`.
fn bound_text(spec: &KeySpec) -> String {
    let mut parts = Vec::new();
    if let Some((min, max)) = spec.range {
        parts.push(format!("{min}..={max}"));
    }
    if spec.block_multiple {
        parts.push("multiple of 4096".to_string());
    }
    if !spec.relation.is_empty() {
        parts.push(spec.relation.to_string());
    }
    if parts.is_empty() {
        "—".to_string()
    } else {
        parts.join("; ")
    }
}

fn default_column(spec: &KeySpec) -> String {
    match spec.default {
        DefaultValue::Required => "required".to_string(),
        DefaultValue::Note(note) => note.to_string(),
        DefaultValue::FromCode => match default_text(spec.key) {
            Some(text) => format!("`{text}`"),
            None => panic!("config key {} has no default in the code", spec.key),
        },
    }
}

fn section_of(key: &str) -> &str {
    match key.split_once('.') {
        Some((section, _)) => section.trim_end_matches("[]"),
        None if key == "peers" => "peers",
        None => "",
    }
}

/// docs/config.md, generated from [`KEYS`] and the code's defaults.
pub fn reference_markdown() -> String {
    let mut out = String::from(
        "# ringlog node configuration reference\n\n\
         <!-- Generated by `ringlog config reference > docs/config.md` from \
         node/src/config_keys.rs; do not edit by hand: a test fails when this file and the code \
         differ. -->\n\n\
         One TOML file per node, passed as `ringlog serve --config node.toml`; check one with \
         `ringlog config check --config node.toml`. A commented example for node 1 of a \
         3-node cluster is `deploy/node.example.toml`.\n\n\
         Rules: unknown keys are errors; a parse error names the line and column; every value \
         is checked against the bound below and an error names the key, the value and the \
         bound. Sizes are integers in bytes (storage sizes and `io_memory` must be multiples \
         of 4096), durations integers in milliseconds unless the key says otherwise. \
         Top-level keys come before the first `[section]`.\n",
    );
    let mut rest = KEYS;
    while let Some(first) = rest.first() {
        let section = section_of(first.key);
        let count = rest.iter().take_while(|k| section_of(k.key) == section).count();
        let title = match section {
            "" => "Top level".to_string(),
            "peers" => "`[[peers]]`".to_string(),
            s => format!("`[{s}]`"),
        };
        let _ = write!(
            out,
            "\n## {title}\n\n| key | type | default | bound | meaning |\n|---|---|---|---|---|\n"
        );
        for spec in &rest[..count] {
            let _ = writeln!(
                out,
                "| `{}` | {} | {} | {} | {} |",
                spec.key,
                spec.ty,
                default_column(spec),
                bound_text(spec),
                spec.meaning
            );
        }
        rest = &rest[count..];
    }
    out
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    /// A config with every option set, so that every key is serialized.
    fn full_config() -> NodeConfig {
        let text = r#"
node_id = 1
cluster_id = 1
data_dir = "."
shards = 1
[listen]
client = "127.0.0.1:1"
peer = "127.0.0.1:2"
[[peers]]
id = 1
peer = "127.0.0.1:2"
client = "127.0.0.1:1"
[storage]
retention_bytes_max = 1
retention_age_max_secs = 1
[tls]
mode = "tls"
ca = "ca.pem"
cert = "node.pem"
key = "node.key"
client_ca = "clients.pem"
[admin]
token_file = "admin.token"
certificate_names = ["ops-admin"]
open = true
[balance]
preferred_leaders = [1]
"#;
        toml::from_str(text).unwrap()
    }

    fn leaf_keys(prefix: &str, value: &toml::Value, out: &mut BTreeSet<String>) {
        match value {
            toml::Value::Table(table) => {
                for (name, value) in table {
                    let key =
                        if prefix.is_empty() { name.clone() } else { format!("{prefix}.{name}") };
                    leaf_keys(&key, value, out);
                }
            }
            toml::Value::Array(items) if items.iter().all(toml::Value::is_table) => {
                out.insert(prefix.to_string());
                for item in items {
                    leaf_keys(&format!("{prefix}[]"), item, out);
                }
            }
            _ => {
                out.insert(prefix.to_string());
            }
        }
    }

    #[test]
    fn every_config_key_is_in_the_table_exactly_once() {
        let mut in_code = BTreeSet::new();
        leaf_keys("", &toml::Value::try_from(full_config()).unwrap(), &mut in_code);
        let in_table: BTreeSet<String> = KEYS.iter().map(|k| k.key.to_string()).collect();
        assert_eq!(in_table.len(), KEYS.len(), "a key is listed twice");
        assert_eq!(in_code, in_table);
    }

    #[test]
    fn every_key_with_a_default_in_code_has_one() {
        for spec in KEYS.iter().filter(|k| k.default == DefaultValue::FromCode) {
            assert!(default_text(spec.key).is_some(), "{} has no default", spec.key);
        }
        assert_eq!(default_text("storage.segment_size").as_deref(), Some("268435456"));
        assert_eq!(default_text("pinning").as_deref(), Some("\"auto\""));
    }

    #[test]
    fn every_numeric_default_lies_within_its_bound() {
        let mut config = full_config();
        config.storage = crate::config::StorageSection::default();
        config.raft = crate::config::RaftSection::default();
        config.net = crate::config::NetSection::default();
        config.balance = crate::config::BalanceSection::default();
        for spec in KEYS {
            let (Some(get), Some((min, max))) = (spec.value, spec.range) else { continue };
            if let Some(value) = get(&config) {
                assert!((min..=max).contains(&value), "{} = {value} outside its range", spec.key);
                assert!(!spec.block_multiple || value % BLOCK == 0, "{} = {value}", spec.key);
            }
        }
    }

    #[test]
    fn docs_config_md_matches_the_generated_reference() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/config.md");
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            committed == reference_markdown(),
            "docs/config.md differs from the reference generated from node/src/config_keys.rs; \
             regenerate it with `cargo run -p ringlog -- config reference > docs/config.md`"
        );
    }
}
