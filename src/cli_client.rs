//! The client subcommands of `ringlog`: `produce`, `consume`, `status`, `transfer-leader`,
//! `add-node` and `remove-node`. Each is a thin layer over `ringlog_net::client::Client`
//! (routing, retries and their idempotency rules are documented there).
//!
//! `transfer-leader`, `add-node` and `remove-node` need an admin identity on the nodes
//! (`[admin]`, docs/config.md): `--admin-token-file` (the token of the nodes'
//! `admin.token_file`, same file rules) or, with TLS, a `--tls-cert` naming an admin. Without
//! one the node refuses, and the command says so and exits 1.
//!
//! Output is line-oriented for scripts: `produce` prints one offset per record, `consume`
//! prints each record as `--format` says (src/cli_consume_format.rs: `text`, `raw` or
//! `json`), `status` prints a table or (`--json`) one JSON document. Any failure prints
//! `ringlog: <reason>` on stderr and exits 1.
//!
//! Every connection option can come from the environment (`RINGLOG_BOOTSTRAP`,
//! `RINGLOG_TLS_CA`, `RINGLOG_TLS_CERT`, `RINGLOG_TLS_KEY`); a flag on the command line wins.

#![forbid(unsafe_code)]

use std::io::{BufRead, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use clap::Args;
use ringlog_net::admin::AdminToken;
use ringlog_net::client::{
    decode_records, next_offset, parse_addresses, Client, ClientConfig, ClientError, ClientTls,
};
use ringlog_net::protocol::{Acks, Consistency, ErrorReply, GroupStatus};
use ringlog_net::tls::{client_config, read_certs, read_key};
use ringlog_net::{Offset, PartitionId};
use ringlog_raft::{MembershipChange, NodeId, Role};

use crate::cli_consume_format::{write_record, ConsumeFormat};

/// Records per produce request when reading `--stdin`.
pub const STDIN_BATCH_RECORDS_DEFAULT: usize = 100;
/// Bytes asked for per fetch by `consume`.
pub const CONSUME_FETCH_BYTES: u32 = 1 << 20;
/// Long-poll wait per fetch of `consume --follow`.
pub const FOLLOW_WAIT: Duration = Duration::from_millis(1000);
/// How long `transfer-leader`, `add-node` and `remove-node` wait for the change by default.
pub const CHANGE_WAIT_MS_DEFAULT: u64 = 30_000;
/// Pause between status polls while waiting for a change.
const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// Options every client subcommand takes.
#[derive(Debug, Clone, Args)]
pub struct ConnectArgs {
    /// Client addresses (shard 0) of one or more nodes: host:port,host:port,...
    #[arg(long, value_name = "ADDRS", env = "RINGLOG_BOOTSTRAP")]
    pub bootstrap: String,
    /// Per-request timeout in milliseconds (a produce waits at most this for its acks).
    #[arg(long, value_name = "MS", default_value_t = 10_000)]
    pub timeout_ms: u64,
    /// Connect with TLS, verifying the nodes' certificates against this CA (PEM) for the
    /// name `ringlog-node` (the node config's `tls.ca`). Without it the client speaks plaintext.
    #[arg(long, value_name = "PEM", env = "RINGLOG_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// Client certificate chain (PEM) to present: required by nodes with `tls.client_ca`.
    #[arg(long, value_name = "PEM", env = "RINGLOG_TLS_CERT", requires_all = ["tls_ca", "tls_key"])]
    pub tls_cert: Option<PathBuf>,
    /// Private key (PEM) of `--tls-cert`.
    #[arg(long, value_name = "PEM", env = "RINGLOG_TLS_KEY", requires_all = ["tls_ca", "tls_cert"])]
    pub tls_key: Option<PathBuf>,
}

/// The admin identity of `transfer-leader`, `add-node` and `remove-node`.
#[derive(Debug, Clone, Args)]
pub struct AdminArgs {
    /// File holding the admin token (the nodes' `admin.token_file`): sent before each
    /// leadership or membership request. Must not be readable by others (chmod 600). Not
    /// needed with a `--tls-cert` that names an admin (`admin.certificate_names`).
    #[arg(long, value_name = "PATH", env = "RINGLOG_ADMIN_TOKEN_FILE")]
    pub admin_token_file: Option<PathBuf>,
}

/// The client's TLS settings from `--tls-ca` / `--tls-cert` / `--tls-key` (None: plaintext).
fn client_tls(args: &ConnectArgs) -> anyhow::Result<Option<ClientTls>> {
    let Some(ca) = &args.tls_ca else { return Ok(None) };
    let roots = read_certs("--tls-ca (RINGLOG_TLS_CA)", ca)?;
    let identity = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some((
            read_certs("--tls-cert (RINGLOG_TLS_CERT)", cert)?,
            read_key("--tls-key (RINGLOG_TLS_KEY)", key)?,
        )),
        _ => None,
    };
    Ok(Some(ClientTls::new(client_config(roots, identity)?)))
}

/// Which partitions a membership change applies to: one, or `all`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PartitionSelection {
    One(PartitionId),
    All,
}

fn parse_selection(value: &str) -> Result<PartitionSelection, String> {
    if value == "all" {
        return Ok(PartitionSelection::All);
    }
    value
        .parse::<u32>()
        .map(|p| PartitionSelection::One(PartitionId(p)))
        .map_err(|_| format!("expected a partition number or `all`, got `{value}`"))
}

fn parse_acks(value: &str) -> Result<Acks, String> {
    match value {
        "quorum" => Ok(Acks::Quorum),
        "leader" => Ok(Acks::Leader),
        "none" => Ok(Acks::None),
        other => Err(format!("expected quorum, leader or none, got `{other}`")),
    }
}

fn parse_partition(value: &str) -> Result<PartitionId, String> {
    value.parse::<u32>().map(PartitionId).map_err(|_| format!("not a partition number: `{value}`"))
}

fn parse_node(value: &str) -> Result<NodeId, String> {
    value.parse::<u32>().map(NodeId).map_err(|_| format!("not a node id: `{value}`"))
}

/// `ringlog produce`: append records, print their offsets.
#[derive(Debug, Clone, Args)]
pub struct ProduceArgs {
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// The partition (a number; partition p lives on shard p % shards of every node).
    #[arg(long, value_parser = parse_partition)]
    pub partition: PartitionId,
    /// quorum (a majority fdatasynced it), leader (the leader did) or none (in memory).
    #[arg(long, value_parser = parse_acks, default_value = "quorum")]
    pub acks: Acks,
    /// A record value; repeat for several records (sent as one batch).
    #[arg(long = "value", value_name = "V", conflicts_with = "stdin")]
    pub values: Vec<String>,
    /// Read one record per line from standard input.
    #[arg(long)]
    pub stdin: bool,
    /// Records per batch with --stdin.
    #[arg(long, value_name = "N", default_value_t = STDIN_BATCH_RECORDS_DEFAULT)]
    pub batch: usize,
}

/// `ringlog consume`: print committed records.
#[derive(Debug, Clone, Args)]
pub struct ConsumeArgs {
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// The partition (a number; partition p lives on shard p % shards of every node).
    #[arg(long, value_parser = parse_partition)]
    pub partition: PartitionId,
    /// First offset to print.
    #[arg(long = "from", value_name = "OFFSET", default_value_t = 0)]
    pub from: u64,
    /// Stop after this many records.
    #[arg(long, value_name = "N")]
    pub count: Option<u64>,
    /// Keep waiting for new records instead of stopping at the commit point.
    #[arg(long)]
    pub follow: bool,
    /// Linearizable reads: the leader confirms it still leads before answering.
    #[arg(long)]
    pub linearizable: bool,
    /// text: `offset<TAB>value`, UTF-8 as UTF-8, control characters and non-UTF-8 bytes
    /// escaped; raw: the value bytes exactly, then a newline; json: one object per line
    /// (`partition`, `offset`, `timestamp_ms`, `value`, `value_encoding` = utf8 or base64).
    #[arg(long, value_enum, default_value_t = ConsumeFormat::Text)]
    pub format: ConsumeFormat,
}

/// `ringlog status`: per partition and node: role, term, leader, commit, durable, lags.
#[derive(Debug, Clone, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// Only this partition (default: every partition).
    #[arg(long, value_parser = parse_partition)]
    pub partition: Option<PartitionId>,
    /// One JSON document instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// `ringlog transfer-leader`: hand a partition's leadership to a node.
#[derive(Debug, Clone, Args)]
pub struct TransferLeaderArgs {
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// The partition (a number; partition p lives on shard p % shards of every node).
    #[arg(long, value_parser = parse_partition)]
    pub partition: PartitionId,
    /// The node that should lead.
    #[arg(long, value_parser = parse_node)]
    pub to: NodeId,
    #[command(flatten)]
    pub admin: AdminArgs,
    /// How long to wait for the new leader, in milliseconds (0: do not wait).
    #[arg(long, value_name = "MS", default_value_t = CHANGE_WAIT_MS_DEFAULT)]
    pub wait_ms: u64,
}

/// `ringlog add-node`: add a node as a learner, wait for it to catch up, make it a voter.
#[derive(Debug, Clone, Args)]
pub struct AddNodeArgs {
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// The node's id.
    #[arg(long, value_parser = parse_node)]
    pub node: NodeId,
    /// The node's peer address (shard 0).
    #[arg(long, value_name = "ADDR")]
    pub peer: SocketAddr,
    /// The node's client address (shard 0).
    #[arg(long, value_name = "ADDR")]
    pub client: SocketAddr,
    /// A partition number or `all`.
    #[arg(long, value_parser = parse_selection, default_value = "all")]
    pub partition: PartitionSelection,
    #[command(flatten)]
    pub admin: AdminArgs,
    /// How long to wait per partition for the node to become a voter, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = CHANGE_WAIT_MS_DEFAULT)]
    pub wait_ms: u64,
}

/// `ringlog remove-node`: remove a node from partitions' groups.
#[derive(Debug, Clone, Args)]
pub struct RemoveNodeArgs {
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// The node's id.
    #[arg(long, value_parser = parse_node)]
    pub node: NodeId,
    /// A partition number or `all`.
    #[arg(long, value_parser = parse_selection, default_value = "all")]
    pub partition: PartitionSelection,
    #[command(flatten)]
    pub admin: AdminArgs,
    /// How long to wait per partition for the leader to drop the node, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = CHANGE_WAIT_MS_DEFAULT)]
    pub wait_ms: u64,
}

fn client(args: &ConnectArgs) -> anyhow::Result<Client> {
    client_with(args, None)
}

/// A client that presents the admin token of `admin`, if any.
fn admin_client(args: &ConnectArgs, admin: &AdminArgs) -> anyhow::Result<Client> {
    let token = match &admin.admin_token_file {
        Some(path) => Some(AdminToken::from_file(path).context("--admin-token-file")?),
        None => None,
    };
    client_with(args, token)
}

fn client_with(args: &ConnectArgs, admin_token: Option<AdminToken>) -> anyhow::Result<Client> {
    let bootstrap = parse_addresses(&args.bootstrap)
        .with_context(|| format!("bad --bootstrap (RINGLOG_BOOTSTRAP) `{}`", args.bootstrap))?;
    let timeout = Duration::from_millis(args.timeout_ms);
    Ok(Client::new(ClientConfig {
        tls: client_tls(args)?,
        admin_token,
        request_timeout: timeout,
        retry_time_max: timeout.max(Duration::from_secs(5)),
        ..ClientConfig::new(bootstrap)
    })?)
}

/// `ringlog produce`.
pub fn run_produce(args: &ProduceArgs) -> anyhow::Result<ExitCode> {
    let client = client(&args.connect)?;
    let mut out = std::io::stdout().lock();
    if args.stdin {
        if args.batch == 0 {
            bail!("--batch must be at least 1");
        }
        let mut pending: Vec<Vec<u8>> = Vec::new();
        for line in std::io::stdin().lock().split(b'\n') {
            let mut line = line.context("reading standard input")?;
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            pending.push(line);
            if pending.len() >= args.batch {
                produce_and_print(&client, args, &pending, &mut out)?;
                pending.clear();
            }
        }
        if !pending.is_empty() {
            produce_and_print(&client, args, &pending, &mut out)?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    if args.values.is_empty() {
        bail!("nothing to produce: give --value V (repeatable) or --stdin");
    }
    let values: Vec<Vec<u8>> = args.values.iter().map(|v| v.as_bytes().to_vec()).collect();
    produce_and_print(&client, args, &values, &mut out)?;
    Ok(ExitCode::SUCCESS)
}

fn produce_and_print(
    client: &Client,
    args: &ProduceArgs,
    values: &[Vec<u8>],
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let records: Vec<&[u8]> = values.iter().map(Vec::as_slice).collect();
    let response = client
        .produce(args.partition, args.acks, &records)
        .map_err(|e| explain(e, args.partition))?;
    for offset in response.base_offset.0..=response.last_offset.0 {
        writeln!(out, "{offset}")?;
    }
    out.flush()?;
    Ok(())
}

/// `ringlog consume`.
pub fn run_consume(args: &ConsumeArgs) -> anyhow::Result<ExitCode> {
    let client = client(&args.connect)?;
    let consistency = if args.linearizable {
        Consistency::LeaderLinearizable
    } else {
        Consistency::ReplicaCommitted
    };
    let mut out = std::io::stdout().lock();
    let mut offset = Offset(args.from);
    let mut printed = 0u64;
    loop {
        if args.count.is_some_and(|count| printed >= count) {
            break;
        }
        let wait = if args.follow { FOLLOW_WAIT } else { Duration::ZERO };
        let response = client
            .fetch(args.partition, offset, CONSUME_FETCH_BYTES, wait, consistency)
            .map_err(|e| explain(e, args.partition))?;
        let addr = client.config().bootstrap[0];
        let records = decode_records(addr, &response.batches, offset)?;
        for record in &records {
            if args.count.is_some_and(|count| printed >= count) {
                break;
            }
            write_record(&mut out, args.format, args.partition, record)?;
            printed += 1;
        }
        out.flush()?;
        let next = next_offset(&response.batches).map_or(offset, |n| n.max(offset));
        let progressed = next > offset || !records.is_empty();
        offset = next;
        if !args.follow && (offset >= response.commit || !progressed) {
            break;
        }
        if args.follow && !progressed {
            // Nothing new (the long poll ended without records; a reply is never control
            // batches alone, so a non-empty one always moves the offset).
            std::thread::sleep(POLL_INTERVAL);
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// One row of `status`: a node's view of a partition, or why it could not be read.
#[derive(Debug)]
struct StatusRow {
    partition: PartitionId,
    address: SocketAddr,
    status: Result<GroupStatus, String>,
}

/// `ringlog status`.
pub fn run_status(args: &StatusArgs) -> anyhow::Result<ExitCode> {
    let client = client(&args.connect)?;
    let metadata = client.metadata().context("reading the cluster's metadata")?;
    let partitions: Vec<PartitionId> = match args.partition {
        Some(p) => {
            if !metadata.partitions.iter().any(|m| m.partition == p) {
                bail!(
                    "partition {} does not exist ({} partitions)",
                    p.0,
                    metadata.partitions.len()
                );
            }
            vec![p]
        }
        None => metadata.partitions.iter().map(|m| m.partition).collect(),
    };
    let mut rows = Vec::new();
    for &partition in &partitions {
        let mut seen_leader = false;
        for &node in &client.config().bootstrap {
            let view = client.node(node);
            let address = view.shard_address(partition).unwrap_or(node);
            let status = view.status(partition).map_err(|e| e.to_string());
            seen_leader |= status.as_ref().is_ok_and(|s| s.role == Role::Leader);
            rows.push(StatusRow { partition, address, status });
        }
        let leader = metadata.partitions.iter().find(|m| m.partition == partition);
        if let (false, Some(address)) = (seen_leader, leader.and_then(|m| m.address)) {
            let status = client.status(partition).map_err(|e| e.to_string());
            rows.push(StatusRow { partition, address, status });
        }
    }
    let mut out = std::io::stdout().lock();
    if args.json {
        writeln!(out, "{}", status_json(metadata.cluster.0, metadata.shards, &rows))?;
    } else {
        write!(out, "{}", status_table(&rows))?;
    }
    Ok(ExitCode::SUCCESS)
}

fn role_name(role: Role) -> &'static str {
    match role {
        Role::Follower => "follower",
        Role::PreCandidate => "pre-candidate",
        Role::Candidate => "candidate",
        Role::Leader => "leader",
        Role::Learner => "learner",
    }
}

fn status_table(rows: &[StatusRow]) -> String {
    let mut lines = vec![format!(
        "{:<9} {:<21} {:>4} {:<13} {:>6} {:>6} {:>10} {:>10} {:>10} {:>13}  {}",
        "PARTITION",
        "ADDRESS",
        "NODE",
        "ROLE",
        "TERM",
        "LEADER",
        "COMMIT",
        "DURABLE",
        "LAST",
        "COMMIT_OFFSET",
        "FOLLOWERS (node:durable/lag [learner] [damaged] [stuck])"
    )];
    for row in rows {
        let line = match &row.status {
            Ok(s) => {
                let followers: Vec<String> = s
                    .followers
                    .iter()
                    .map(|f| {
                        let learner = if f.learner { " learner" } else { "" };
                        let damaged = if f.damaged { " damaged" } else { "" };
                        let stuck = if f.stuck { " stuck" } else { "" };
                        format!("{}:{}/{}{learner}{damaged}{stuck}", f.node.0, f.durable.0, f.lag)
                    })
                    .collect();
                format!(
                    "{:<9} {:<21} {:>4} {:<13} {:>6} {:>6} {:>10} {:>10} {:>10} {:>13}  {}",
                    row.partition.0,
                    row.address,
                    s.node.0,
                    role_label(s),
                    s.term.0,
                    s.leader.map_or("-".to_string(), |l| l.0.to_string()),
                    s.commit.0,
                    s.durable.0,
                    s.last_index.0,
                    s.commit_offset.0,
                    if followers.is_empty() { "-".to_string() } else { followers.join(" ") },
                )
            }
            Err(error) => {
                format!("{:<9} {:<21} unreachable: {error}", row.partition.0, row.address)
            }
        };
        lines.push(line);
    }
    lines.join("\n") + "\n"
}

/// The role, marked when the replica is damaged (it neither votes nor counts toward a quorum).
fn role_label(s: &GroupStatus) -> String {
    match s.damaged {
        true => format!("{}*damaged", role_name(s.role)),
        false => role_name(s.role).to_string(),
    }
}

fn status_json(cluster: u64, shards: u16, rows: &[StatusRow]) -> serde_json::Value {
    let rows: Vec<serde_json::Value> = rows
        .iter()
        .map(|row| match &row.status {
            Ok(s) => serde_json::json!({
                "partition": row.partition.0,
                "address": row.address.to_string(),
                "node": s.node.0,
                "role": role_name(s.role),
                "term": s.term.0,
                "leader": s.leader.map(|l| l.0),
                "commit": s.commit.0,
                "durable": s.durable.0,
                "last_index": s.last_index.0,
                "commit_offset": s.commit_offset.0,
                "damaged": s.damaged,
                "followers": s.followers.iter().map(|f| serde_json::json!({
                    "node": f.node.0,
                    "durable": f.durable.0,
                    "lag": f.lag,
                    "learner": f.learner,
                    "damaged": f.damaged,
                    "stuck": f.stuck,
                })).collect::<Vec<_>>(),
            }),
            Err(error) => serde_json::json!({
                "partition": row.partition.0,
                "address": row.address.to_string(),
                "error": error,
            }),
        })
        .collect();
    serde_json::json!({ "cluster": cluster, "shards": shards, "statuses": rows })
}

/// `ringlog transfer-leader`.
pub fn run_transfer_leader(args: &TransferLeaderArgs) -> anyhow::Result<ExitCode> {
    let client = admin_client(&args.connect, &args.admin)?;
    client.transfer_leader(args.partition, args.to).map_err(|e| explain(e, args.partition))?;
    if args.wait_ms == 0 {
        println!("partition {}: transfer to node {} started", args.partition.0, args.to.0);
        return Ok(ExitCode::SUCCESS);
    }
    let deadline = Instant::now() + Duration::from_millis(args.wait_ms);
    let mut last = String::from("no status read");
    while Instant::now() < deadline {
        match client.metadata() {
            Ok(metadata) => {
                let entry = metadata.partitions.iter().find(|m| m.partition == args.partition);
                if let Some(m) = entry {
                    if m.leader == Some(args.to) {
                        println!(
                            "partition {}: node {} leads (term {})",
                            args.partition.0, args.to.0, m.term.0
                        );
                        return Ok(ExitCode::SUCCESS);
                    }
                    last = format!("leader is {:?} in term {}", m.leader.map(|l| l.0), m.term.0);
                }
            }
            Err(error) => last = error.to_string(),
        }
        std::thread::sleep(POLL_INTERVAL);
    }
    bail!(
        "partition {}: node {} did not take over within {} ms ({last})",
        args.partition.0,
        args.to.0,
        args.wait_ms
    )
}

fn selected(client: &Client, selection: PartitionSelection) -> anyhow::Result<Vec<PartitionId>> {
    match selection {
        PartitionSelection::One(p) => Ok(vec![p]),
        PartitionSelection::All => {
            let metadata = client.metadata().context("reading the cluster's metadata")?;
            Ok(metadata.partitions.iter().map(|m| m.partition).collect())
        }
    }
}

/// `ringlog add-node`.
pub fn run_add_node(args: &AddNodeArgs) -> anyhow::Result<ExitCode> {
    let client = admin_client(&args.connect, &args.admin)?;
    let wait = Duration::from_millis(args.wait_ms);
    for partition in selected(&client, args.partition)? {
        let index = client
            .change_membership(
                partition,
                MembershipChange::AddLearner(args.node),
                Some((args.peer, args.client)),
            )
            .map(Some)
            .or_else(|e| already_done(e, "already"))
            .map_err(|e| explain(e, partition))?;
        wait_voter(&client, partition, args.node, wait)?;
        println!(
            "partition {}: node {} added (change at index {})",
            partition.0,
            args.node.0,
            index.map_or("-".to_string(), |i| i.0.to_string())
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Waits until the leader of `partition` lists `node` as a caught-up voter; promotes it
/// once it is a caught-up learner (a replicator that promotes by itself makes that a no-op:
/// a refused promotion is retried by polling, not an error).
fn wait_voter(
    client: &Client,
    partition: PartitionId,
    node: NodeId,
    wait: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + wait;
    let mut last = String::from("no status read");
    while Instant::now() < deadline {
        match client.status(partition) {
            Ok(status) => match status.followers.iter().find(|f| f.node == node) {
                Some(f) if !f.learner => return Ok(()),
                Some(f) if f.lag == 0 => {
                    let promoted =
                        client.change_membership(partition, MembershipChange::Promote(node), None);
                    last = match promoted {
                        Ok(index) => format!("promotion proposed at index {}", index.0),
                        Err(error) => format!("promotion refused: {error}"),
                    };
                }
                Some(f) => last = format!("learner, {} entries behind", f.lag),
                None if status.node == node && status.role == Role::Leader => return Ok(()),
                None => last = format!("node {} not yet listed by the leader", node.0),
            },
            Err(error) => last = error.to_string(),
        }
        std::thread::sleep(POLL_INTERVAL);
    }
    bail!(
        "partition {}: node {} did not become a voter within {} ms ({last})",
        partition.0,
        node.0,
        wait.as_millis()
    )
}

/// `ringlog remove-node`.
pub fn run_remove_node(args: &RemoveNodeArgs) -> anyhow::Result<ExitCode> {
    let client = admin_client(&args.connect, &args.admin)?;
    let wait = Duration::from_millis(args.wait_ms);
    for partition in selected(&client, args.partition)? {
        let index = client
            .change_membership(partition, MembershipChange::Remove(args.node), None)
            .map(Some)
            .or_else(|e| already_done(e, "not a member"))
            .map_err(|e| explain(e, partition))?;
        let deadline = Instant::now() + wait;
        let mut last = String::from("no status read");
        let gone = loop {
            if Instant::now() >= deadline {
                break false;
            }
            match client.status(partition) {
                Ok(s)
                    if s.node != args.node && !s.followers.iter().any(|f| f.node == args.node) =>
                {
                    break true
                }
                Ok(s) => last = format!("node {} still listed (term {})", args.node.0, s.term.0),
                Err(error) => last = error.to_string(),
            }
            std::thread::sleep(POLL_INTERVAL);
        };
        if !gone {
            bail!(
                "partition {}: node {} still a member after {} ms ({last})",
                partition.0,
                args.node.0,
                args.wait_ms
            );
        }
        println!(
            "partition {}: node {} removed (change at index {})",
            partition.0,
            args.node.0,
            index.map_or("-".to_string(), |i| i.0.to_string())
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// A `Rejected` reply whose reason says the change is already in place counts as done.
fn already_done<T>(error: ClientError, marker: &str) -> Result<Option<T>, ClientError> {
    match error.reply() {
        Some(ErrorReply::Rejected { reason }) if reason.contains(marker) => Ok(None),
        _ => Err(error),
    }
}

/// A client error with what it means for this command.
fn explain(error: ClientError, partition: PartitionId) -> anyhow::Error {
    match &error {
        ClientError::Indeterminate { .. } => anyhow!(
            "partition {}: {error}; the records may or may not have been appended — check \
             with `ringlog consume` before producing them again",
            partition.0
        ),
        ClientError::Server { reply: ErrorReply::UnknownPartition { .. }, .. }
        | ClientError::UnknownPartition { .. } => {
            anyhow!("partition {} does not exist: {error}", partition.0)
        }
        ClientError::Server { addr, reply: ErrorReply::Unauthorized { reason } } => anyhow!(
            "partition {}: not authorized: {addr} refused the request: {reason} (pass \
             --admin-token-file, or --tls-cert/--tls-key of a certificate naming an admin)",
            partition.0
        ),
        _ => anyhow!("partition {}: {error}", partition.0),
    }
}
