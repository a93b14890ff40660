//! Cluster test harness: real `ringlog serve` processes on 127.0.0.1 (contract decision 6).
//!
//! [`Cluster::start`] picks free port ranges (shard `s` of a node listens on its client and
//! peer ports + `s`, so each node reserves `shards` consecutive ports of each), writes one
//! node TOML per node (built from `ringlog_node::config::NodeConfig` and validated with the same
//! code `serve` uses), spawns `ringlog serve --config <file>` from [`ringlog_bin`] (cargo's
//! `CARGO_BIN_EXE_ringlog` in tests), and waits for each node's ready line on stdout. Logs
//! (stderr) go to `<dir>/node-<id>.log`. Every child is SIGKILLed and reaped on drop; when the
//! test panicked, the tail of every node's log is printed and the directory is kept.
//! `RINGLOG_TEST_KEEP_DIRS=1` keeps every directory (and prints the log tails) also on success.
//!
//! Storage-fault helpers (end of file, issue #13) find batches and hard-state slots in a
//! stopped node's files by their documented layout (docs/format.md) and damage them: flip a
//! bit, zero a range; `leaders_by_term` and `panics` read the node logs.
//!
//! Test configs: small segments, 20 ms Raft ticks (elections after 200–400 ms), 1 MiB of IO
//! memory per ring, `pinning = "never"` (the machine is shared). The data dirs live under
//! [`target_tmpdir`] (`CARGO_TARGET_TMPDIR` in tests; on disk: the engine refuses tmpfs).
//! Also included by the nemesis soak (`tests/src/nemesis/`, `ringlog-nemesis`).

#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ringlog_net::admin::AdminToken;
use ringlog_net::client::{decode_records, next_offset, Client, ClientConfig, FetchedRecord};
use ringlog_net::protocol::{Consistency, GroupStatus};
use ringlog_net::{Offset, PartitionId};
use ringlog_node::config::{
    AdminSection, BalanceSection, ListenSection, LogSection, NetSection, NodeConfig, PeerEntry,
    PinningMode, RaftSection, StorageSection, TlsSection,
};
use ringlog_raft::{NodeId, Role};

/// How long a node has to print its ready line.
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// Generous bound for liveness waits (elections, catch-up): the machine is shared and noisy.
pub const LIVENESS_TIMEOUT: Duration = Duration::from_secs(30);
/// Bytes per fetch when reading a whole log.
pub const FETCH_BYTES: u32 = 1 << 20;
/// Raft tick of the test configs.
pub const TICK_MS: u64 = 20;

/// Shape of a test cluster.
#[derive(Clone, Debug)]
pub struct Spec {
    pub nodes: u32,
    pub shards: u16,
    pub partitions: u32,
    pub segment_size: u64,
    /// `storage.batch_size_max` of every node (`flush_bytes_max` follows it above 512 KiB).
    pub batch_size_max: u64,
    /// `[tls]` per node id (absent: `mode = "plaintext"`, written explicitly).
    pub tls: BTreeMap<u32, TlsSection>,
    /// `[net]` of every node (the harness's reconnect backoffs unless a test sets its own).
    pub net: NetSection,
    /// `[admin]` per node id (absent: `token_file` = the cluster's admin token file, see
    /// [`Cluster::admin_token_path`]).
    pub admin: BTreeMap<u32, AdminSection>,
    /// `[balance]` of every node: the leader balancer is off unless a test turns it on
    /// (tests place leaders themselves and must keep them where they put them).
    pub balance: BalanceSection,
    /// `pinning` of every node: `never` unless a test sets it (the machine is shared).
    pub pinning: PinningMode,
}

impl Spec {
    pub fn new(nodes: u32) -> Spec {
        Spec {
            nodes,
            shards: 1,
            partitions: 2,
            segment_size: 2 * 1024 * 1024,
            batch_size_max: 256 * 1024,
            tls: BTreeMap::new(),
            admin: BTreeMap::new(),
            net: NetSection {
                reconnect_backoff_initial_ms: 10,
                reconnect_backoff_max_ms: 200,
                ..NetSection::default()
            },
            balance: BalanceSection { enabled: false, ..BalanceSection::default() },
            pinning: PinningMode::Never,
        }
    }

    /// Adjusts every node's `[net]` section.
    pub fn net(mut self, adjust: impl FnOnce(&mut NetSection)) -> Spec {
        adjust(&mut self.net);
        self
    }

    pub fn shards(mut self, shards: u16) -> Spec {
        self.shards = shards;
        self
    }

    pub fn partitions(mut self, partitions: u32) -> Spec {
        self.partitions = partitions;
        self
    }

    /// Larger batches (segments grow to hold four flushes of them).
    pub fn batch_size_max(mut self, bytes: u64) -> Spec {
        self.batch_size_max = bytes;
        self.segment_size = self.segment_size.max(4 * bytes);
        self
    }

    pub fn pinning(mut self, pinning: PinningMode) -> Spec {
        self.pinning = pinning;
        self
    }
}

/// One node of the cluster: its addresses, files and (when running) its process.
#[derive(Debug)]
pub struct NodeProc {
    pub id: u32,
    /// Shard 0's client address.
    pub client: SocketAddr,
    /// Shard 0's peer address.
    pub peer: SocketAddr,
    pub metrics: SocketAddr,
    pub data_dir: PathBuf,
    pub config_path: PathBuf,
    pub log_path: PathBuf,
    /// Written as the node's `[tls]` section.
    pub tls: TlsSection,
    child: Option<Child>,
    /// Whether the process is SIGSTOPped (so drop must SIGCONT... SIGKILL works regardless).
    stopped: bool,
}

impl NodeProc {
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the process is SIGSTOPped.
    pub fn is_paused(&self) -> bool {
        self.stopped
    }
}

/// A running test cluster; dropping it kills every node.
#[derive(Debug)]
pub struct Cluster {
    pub spec: Spec,
    pub cluster_id: u64,
    pub dir: PathBuf,
    pub nodes: BTreeMap<u32, NodeProc>,
    /// Every node entry ever configured (the `[[peers]]` of nodes started later).
    peers: Vec<PeerEntry>,
    keep_dir: bool,
    /// When set, node `id` runs with group id `base + id` (its uid stays): network-cut
    /// tests tell nodes' connections apart by their owner (tests/cluster/netcut.rs).
    pub node_gid_base: Option<u32>,
}

impl Cluster {
    /// Starts `spec.nodes` nodes (ids 1..=n) and waits until each printed its ready line.
    pub fn start(name: &str, spec: Spec) -> Cluster {
        let mut cluster = Cluster::configure(name, spec);
        cluster.launch();
        cluster
    }

    /// Picks ports, creates the directory and writes every node's config; starts nothing.
    pub fn configure(name: &str, spec: Spec) -> Cluster {
        let cluster_id = seed_from_time();
        let base = target_tmpdir().join("cluster");
        std::fs::create_dir_all(&base).expect("create the cluster tests' directory");
        let dir = tempfile::Builder::new()
            .prefix(&format!("{name}-"))
            .tempdir_in(&base)
            .expect("create a cluster directory")
            .keep();
        let mut cluster = Cluster {
            spec: spec.clone(),
            cluster_id,
            dir,
            nodes: BTreeMap::new(),
            peers: Vec::new(),
            keep_dir: false,
            node_gid_base: None,
        };
        for id in 1..=spec.nodes {
            cluster.configure_node(id);
        }
        let peers = cluster.peers.clone();
        for id in 1..=spec.nodes {
            cluster.write_config(id, &peers);
        }
        eprintln!(
            "cluster {name}: id {cluster_id}, {} nodes, dir {}, nodes: {}",
            spec.nodes,
            cluster.dir.display(),
            cluster.describe()
        );
        cluster
    }

    /// Spawns every configured node and waits until each printed its ready line.
    pub fn launch(&mut self) {
        let ids: Vec<u32> = self.nodes.keys().copied().collect();
        for id in &ids {
            self.spawn(*id);
        }
        for id in &ids {
            self.wait_ready(*id);
        }
    }

    /// Keeps the cluster directory when the cluster is dropped (for a failure's evidence).
    pub fn keep_dir(&mut self) {
        self.keep_dir = true;
    }

    /// "id client=.. peer=.." for every node, for replay and logs.
    pub fn describe(&self) -> String {
        let parts: Vec<String> = self
            .nodes
            .values()
            .map(|n| format!("{} client={} peer={}", n.id, n.client, n.peer))
            .collect();
        parts.join("; ")
    }

    /// Picks ports for node `id` and records its entry (no config written yet).
    pub fn configure_node(&mut self, id: u32) -> PeerEntry {
        let shards = self.spec.shards;
        let taken: HashSet<u16> = self
            .nodes
            .values()
            .flat_map(|n| (0..shards).flat_map(move |s| [n.client.port() + s, n.peer.port() + s]))
            .chain(self.nodes.values().map(|n| n.metrics.port()))
            .collect();
        let client = free_port_range(shards, &taken);
        let mut taken2 = taken.clone();
        taken2.extend((0..shards).map(|s| client.port() + s));
        let peer = free_port_range(shards, &taken2);
        taken2.extend((0..shards).map(|s| peer.port() + s));
        let metrics = free_port_range(1, &taken2);
        let entry = PeerEntry { id, peer, client };
        let node = NodeProc {
            id,
            client,
            peer,
            metrics,
            data_dir: self.dir.join(format!("node-{id}-data")),
            config_path: self.dir.join(format!("node-{id}.toml")),
            log_path: self.dir.join(format!("node-{id}.log")),
            tls: self.spec.tls.get(&id).cloned().unwrap_or_else(TlsSection::plaintext),
            child: None,
            stopped: false,
        };
        std::fs::create_dir_all(&node.data_dir).expect("create a data dir");
        self.write_admin_token();
        self.nodes.insert(id, node);
        self.peers.push(entry.clone());
        entry
    }

    /// Writes node `id`'s config file with `peers` as its `[[peers]]`.
    pub fn write_config(&self, id: u32, peers: &[PeerEntry]) {
        let node = &self.nodes[&id];
        let config = NodeConfig {
            node_id: id,
            cluster_id: self.cluster_id,
            data_dir: node.data_dir.clone(),
            shards: Some(u64::from(self.spec.shards)),
            io_memory: 1024 * 1024,
            partitions: u64::from(self.spec.partitions),
            pinning: self.spec.pinning,
            spin: false,
            command_queue_max: 1024,
            listen: ListenSection { client: None, peer: None, metrics: node.metrics },
            peers: peers.to_vec(),
            storage: StorageSection {
                segment_size: self.spec.segment_size,
                flush_bytes_max: self.spec.batch_size_max.max(512 * 1024),
                queued_bytes_max: 8 * 1024 * 1024,
                batch_size_max: self.spec.batch_size_max,
                tail_cache_bytes_max: 2 * 1024 * 1024,
                index_interval_bytes: 64 * 1024,
                ..StorageSection::default()
            },
            raft: RaftSection {
                tick_interval_ms: TICK_MS,
                election_ticks: 10,
                heartbeat_ticks: 2,
                ..RaftSection::default()
            },
            net: self.spec.net.clone(),
            // `RINGLOG_TEST_LOG`: the nodes' log filter (`log.level`), e.g.
            // `info,ringlog_node::node::replicator=debug` to see why a catch-up stalls.
            log: LogSection {
                level: std::env::var("RINGLOG_TEST_LOG").unwrap_or_else(|_| "info".to_string()),
                json: false,
            },
            tls: node.tls.clone(),
            admin: self.spec.admin.get(&id).cloned().unwrap_or_else(|| AdminSection {
                token_file: Some(self.admin_token_path()),
                ..AdminSection::default()
            }),
            balance: self.spec.balance.clone(),
        };
        if let Err(problems) = config.validate() {
            panic!("test config of node {id} is invalid: {problems:#?}");
        }
        let text = toml::to_string(&config).expect("serialize a node config");
        std::fs::write(&node.config_path, text).expect("write a node config");
    }

    /// Spawns node `id` (not waiting for it).
    pub fn spawn(&mut self, id: u32) {
        self.spawn_with_env(id, &[]);
    }

    /// Spawns node `id` with extra environment variables (e.g. `NOTIFY_SOCKET`).
    pub fn spawn_with_env(&mut self, id: u32, env: &[(&str, &std::ffi::OsStr)]) {
        let gid = self.node_gid_base.map(|base| base + id);
        let node = self.nodes.get_mut(&id).expect("known node");
        assert!(node.child.is_none(), "node {id} is already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log_path)
            .expect("open a node log");
        let mut command = Command::new(ringlog_bin());
        command
            .arg("serve")
            .arg("--config")
            .arg(&node.config_path)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .envs(env.iter().copied());
        if let Some(gid) = gid {
            std::os::unix::process::CommandExt::gid(&mut command, gid);
        }
        let child = command.spawn().expect("spawn ringlog serve");
        node.child = Some(child);
        node.stopped = false;
    }

    /// Waits for node `id`'s ready line; panics (with its log) if it exits or times out.
    pub fn wait_ready(&mut self, id: u32) {
        if let Err(problem) = self.try_wait_ready(id) {
            self.keep_dir = true;
            panic!("{problem}");
        }
    }

    /// Waits for node `id`'s ready line; an exit (reaped) or a timeout is an `Err` that
    /// describes it, with the tail of the node's log.
    pub fn try_wait_ready(&mut self, id: u32) -> Result<(), String> {
        let node = self.nodes.get_mut(&id).expect("known node");
        let child = node.child.as_mut().expect("node was spawned");
        let stdout = child.stdout.take().expect("stdout is piped");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            for line in lines.by_ref() {
                let Ok(line) = line else { break };
                if line.starts_with("ringlog: ready") {
                    let _ = tx.send(line);
                    break;
                }
            }
            // Keep draining so the node never blocks on a full pipe.
            for _ in lines {}
        });
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            match rx.recv_timeout(Duration::from_millis(100)) {
                Ok(line) => {
                    let expected = format!("node={id} ");
                    assert!(line.contains(&expected), "node {id} ready line: {line}");
                    return Ok(());
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {}
            }
            let node = self.nodes.get_mut(&id).unwrap();
            if let Some(status) = node.child.as_mut().unwrap().try_wait().expect("try_wait") {
                node.child = None;
                return Err(format!(
                    "node {id} exited with {status} before it was ready; log {}:\n{}",
                    node.log_path.display(),
                    tail(&node.log_path, 40)
                ));
            }
            if Instant::now() > deadline {
                let stacks = self.dump_stacks(id);
                return Err(format!(
                    "node {id} not ready after {READY_TIMEOUT:?} ({stacks}); log:\n{}",
                    tail(&self.nodes[&id].log_path, 40)
                ));
            }
        }
    }

    /// Writes every thread's stack of running node `id` (gdb, at most 60 s) beside its log,
    /// for a node that hangs; says where, or why not.
    pub fn dump_stacks(&self, id: u32) -> String {
        let Some(pid) = self.nodes[&id].pid() else { return "not running".to_string() };
        let path = self.dir.join(format!("node-{id}-stacks-{}.txt", seed_from_time()));
        let output = Command::new("timeout")
            .args(["60", "gdb", "-p", &pid.to_string(), "-batch", "-ex", "thread apply all bt"])
            .stdin(Stdio::null())
            .output();
        match output {
            Ok(out) => match std::fs::write(&path, [out.stdout, out.stderr].concat()) {
                Ok(()) => format!("thread stacks in {}", path.display()),
                Err(e) => format!("stacks not written: {e}"),
            },
            Err(e) => format!("no stacks (gdb: {e})"),
        }
    }

    /// If node `id` was running and has exited, reaps it and returns how it ended.
    pub fn poll_exit(&mut self, id: u32) -> Option<std::process::ExitStatus> {
        let node = self.nodes.get_mut(&id).expect("known node");
        let status = node.child.as_mut()?.try_wait().expect("try_wait")?;
        node.child = None;
        node.stopped = false;
        Some(status)
    }

    /// SIGKILLs node `id` and reaps it.
    pub fn kill(&mut self, id: u32) {
        let node = self.nodes.get_mut(&id).expect("known node");
        if let Some(mut child) = node.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        node.stopped = false;
    }

    /// Restarts a killed node `id` on the same ports and data dir, and waits until ready.
    pub fn restart(&mut self, id: u32) {
        self.spawn(id);
        self.wait_ready(id);
    }

    /// Kills node `id` and deletes everything in its data dir.
    pub fn wipe(&mut self, id: u32) {
        self.kill(id);
        let dir = &self.nodes[&id].data_dir;
        std::fs::remove_dir_all(dir).expect("wipe a data dir");
        std::fs::create_dir_all(dir).expect("recreate a data dir");
    }

    /// Sends `signal` (a `kill -<signal>` name) to node `id`.
    pub fn signal(&mut self, id: u32, signal: &str) {
        let node = self.nodes.get_mut(&id).expect("known node");
        let pid = node.pid().expect("node is running");
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(pid.to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{signal} {pid} failed");
        match signal {
            "STOP" => node.stopped = true,
            "CONT" => node.stopped = false,
            _ => {}
        }
    }

    /// Waits for node `id` to exit (after a signal); returns its exit code.
    pub fn wait_exit(&mut self, id: u32, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        let node = self.nodes.get_mut(&id).expect("known node");
        loop {
            let child = node.child.as_mut().expect("node is running");
            if let Some(status) = child.try_wait().expect("try_wait") {
                node.child = None;
                return status.code();
            }
            assert!(Instant::now() < deadline, "node {id} did not exit within {timeout:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Client addresses (shard 0) of the running nodes.
    pub fn running_addresses(&self) -> Vec<SocketAddr> {
        self.nodes.values().filter(|n| n.is_running() && !n.stopped).map(|n| n.client).collect()
    }

    /// A client bootstrapped from every node (running or not), holding the cluster's admin
    /// token (so it may transfer leadership and change membership).
    pub fn client(&self) -> Client {
        let bootstrap: Vec<SocketAddr> = self.nodes.values().map(|n| n.client).collect();
        let admin_token = Some(self.admin_token());
        Client::new(ClientConfig { admin_token, ..test_client_config(bootstrap) }).expect("client")
    }

    /// A client bootstrapped from every node without any admin identity.
    pub fn client_without_admin(&self) -> Client {
        let bootstrap: Vec<SocketAddr> = self.nodes.values().map(|n| n.client).collect();
        Client::new(test_client_config(bootstrap)).expect("client")
    }

    /// The file holding the cluster's admin token (mode 0600): every node's
    /// `admin.token_file` unless the spec says otherwise; the CLI's `--admin-token-file`.
    pub fn admin_token_path(&self) -> PathBuf {
        self.dir.join("admin.token")
    }

    /// The cluster's admin token.
    pub fn admin_token(&self) -> AdminToken {
        AdminToken::from_file(&self.admin_token_path()).expect("read the cluster's admin token")
    }

    /// Writes the cluster's admin token file once: a token unique to this cluster.
    fn write_admin_token(&self) {
        use std::os::unix::fs::OpenOptionsExt;
        let path = self.admin_token_path();
        if path.exists() {
            return;
        }
        let token = format!("ringlog-test-admin-{:016x}\n", self.cluster_id);
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .expect("create the admin token file");
        std::io::Write::write_all(&mut file, token.as_bytes()).expect("write the admin token");
    }

    /// Node `id`'s own status of `partition`.
    pub fn status_of(
        &self,
        client: &Client,
        id: u32,
        partition: PartitionId,
    ) -> Option<GroupStatus> {
        client.node(self.nodes[&id].client).status(partition).ok()
    }

    /// Waits until some running node reports itself leader of `partition` and the others
    /// (running, not stopped) agree on it; returns (leader, its term).
    pub fn wait_leader(&self, client: &Client, partition: PartitionId) -> (u32, u64) {
        self.wait_leader_excluding(client, partition, None)
    }

    /// Like `wait_leader`, but the leader must not be `excluded`.
    pub fn wait_leader_excluding(
        &self,
        client: &Client,
        partition: PartitionId,
        excluded: Option<u32>,
    ) -> (u32, u64) {
        let deadline = Instant::now() + LIVENESS_TIMEOUT;
        let mut last = String::new();
        while Instant::now() < deadline {
            let statuses: Vec<GroupStatus> = self
                .nodes
                .values()
                .filter(|n| n.is_running() && !n.stopped)
                .filter_map(|n| self.status_of(client, n.id, partition))
                .collect();
            let leaders: Vec<&GroupStatus> =
                statuses.iter().filter(|s| s.role == Role::Leader).collect();
            if let [leader] = leaders[..] {
                let id = leader.node.0;
                let agreed = statuses.iter().filter(|s| s.leader == Some(leader.node)).count();
                if Some(id) != excluded && agreed * 2 > self.voters() {
                    return (id, leader.term.0);
                }
            }
            last = format!("{statuses:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("no agreed leader of {partition} within {LIVENESS_TIMEOUT:?}: {last}");
    }

    fn voters(&self) -> usize {
        self.spec.nodes as usize
    }

    /// Waits until every running node's committed log of `partition` is at least
    /// `commit_offset` and all of them report the same commit offset.
    pub fn wait_converged(&self, client: &Client, partition: PartitionId) -> Offset {
        let deadline = Instant::now() + LIVENESS_TIMEOUT;
        let mut last = String::new();
        while Instant::now() < deadline {
            let ids: Vec<u32> = self
                .nodes
                .values()
                .filter(|n| n.is_running() && !n.stopped)
                .map(|n| n.id)
                .collect();
            let statuses: Vec<Option<GroupStatus>> =
                ids.iter().map(|id| self.status_of(client, *id, partition)).collect();
            if statuses.iter().all(Option::is_some) {
                let statuses: Vec<GroupStatus> = statuses.into_iter().flatten().collect();
                let first = &statuses[0];
                let same = statuses.iter().all(|s| {
                    s.commit == first.commit
                        && s.commit_offset == first.commit_offset
                        && s.last_index == first.commit
                });
                if same {
                    return first.commit_offset;
                }
                last = format!("{statuses:?}");
            } else {
                last = format!("some node did not answer: {statuses:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("{partition} did not converge within {LIVENESS_TIMEOUT:?}: {last}");
    }

    /// Every committed batch of `partition` that node `id` returns (ReplicaCommitted), from
    /// offset 0 up to its commit point, as raw bytes.
    pub fn read_all_batches(&self, client: &Client, id: u32, partition: PartitionId) -> Vec<Bytes> {
        read_all_batches_at(client, self.nodes[&id].client, partition)
    }

    /// Reads `partition` from every running node and asserts that their committed logs are
    /// byte-identical; returns the records.
    pub fn assert_replicas_identical(
        &self,
        client: &Client,
        partition: PartitionId,
    ) -> Vec<FetchedRecord> {
        let commit = self.wait_converged(client, partition);
        let ids: Vec<u32> =
            self.nodes.values().filter(|n| n.is_running() && !n.stopped).map(|n| n.id).collect();
        let mut reference: Option<(u32, Vec<Bytes>, u32)> = None;
        for id in ids {
            let batches = self.read_all_batches(client, id, partition);
            let crc = chain_crc(&batches);
            let end = next_offset(&batches).unwrap_or(Offset(0));
            assert!(end >= commit, "node {id} returned {partition} up to {end:?} < {commit:?}");
            match &reference {
                None => reference = Some((id, batches, crc)),
                Some((rid, rbatches, rcrc)) => {
                    assert_eq!(
                        rbatches.len(),
                        batches.len(),
                        "{partition}: node {rid} has {} committed batches, node {id} {}",
                        rbatches.len(),
                        batches.len()
                    );
                    for (i, (a, b)) in rbatches.iter().zip(&batches).enumerate() {
                        assert!(
                            a == b,
                            "{partition}: batch {i} differs between node {rid} and {id}"
                        );
                    }
                    assert_eq!(*rcrc, crc);
                }
            }
        }
        let (id, batches, crc) = reference.expect("at least one running node");
        eprintln!(
            "{partition}: {} batches identical on every running node (crc {crc:08x})",
            batches.len()
        );
        decode_records(self.nodes[&id].client, &batches, Offset(0))
            .expect("committed batches decode")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let panicking = std::thread::panicking();
        for node in self.nodes.values_mut() {
            if let Some(mut child) = node.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        // `RINGLOG_TEST_KEEP_DIRS=1`: keep every cluster's directory and node logs (to grep a
        // loop of passing runs for a warning).
        let keep_all = std::env::var_os("RINGLOG_TEST_KEEP_DIRS").is_some_and(|v| v == "1");
        if panicking || self.keep_dir || keep_all {
            for node in self.nodes.values() {
                eprintln!(
                    "---- node {} log ({}), last lines:\n{}",
                    node.id,
                    node.log_path.display(),
                    tail(&node.log_path, 30)
                );
            }
            eprintln!("cluster directory kept: {}", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// The `ringlog` binary: cargo's for the tests of the `ringlog` package; elsewhere (the
/// `ringlog-nemesis` binary) `RINGLOG_BIN`, else `ringlog` beside the running executable.
pub fn ringlog_bin() -> PathBuf {
    if let Some(path) = option_env!("CARGO_BIN_EXE_ringlog") {
        return PathBuf::from(path);
    }
    if let Some(path) = std::env::var_os("RINGLOG_BIN") {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("the running executable's path");
    exe.with_file_name("ringlog")
}

/// Where test clusters live: cargo's per-package temp dir for tests, else `target/tmp` beside
/// the running executable's profile directory (on disk: the engine refuses tmpfs).
pub fn target_tmpdir() -> PathBuf {
    if let Some(path) = option_env!("CARGO_TARGET_TMPDIR") {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("the running executable's path");
    let profile_dir = exe.parent().expect("the executable's directory");
    profile_dir.parent().unwrap_or(profile_dir).join("tmp")
}

/// Client settings for tests: generous total retry time (an election may be in progress).
pub fn test_client_config(bootstrap: Vec<SocketAddr>) -> ClientConfig {
    ClientConfig {
        request_timeout: Duration::from_secs(10),
        metadata_timeout: Duration::from_secs(1),
        retry_time_max: Duration::from_secs(20),
        attempts_max: 400,
        backoff_initial: Duration::from_millis(10),
        backoff_max: Duration::from_millis(200),
        ..ClientConfig::new(bootstrap)
    }
}

/// How long one read of a replica is asked again after failures before a test fails.
pub const REPLICA_READ_BOUND: Duration = Duration::from_secs(60);

/// Every committed batch of `partition` at `node` (ReplicaCommitted), up to its commit point.
pub fn read_all_batches_at(
    client: &Client,
    node: SocketAddr,
    partition: PartitionId,
) -> Vec<Bytes> {
    let view = client.node(node);
    let mut offset = Offset(0);
    let mut out = Vec::new();
    let mut rounds = 0u32;
    loop {
        rounds += 1;
        assert!(rounds < 100_000, "reading {partition} from {node} does not end");
        // A read is safe to ask again: on a busy machine one may time out or meet a reset.
        let deadline = Instant::now() + REPLICA_READ_BOUND;
        let response = loop {
            let consistency = Consistency::ReplicaCommitted;
            match view.fetch(partition, offset, FETCH_BYTES, Duration::ZERO, consistency) {
                Ok(response) => break response,
                Err(e) if Instant::now() < deadline => {
                    eprintln!("fetch {partition}@{offset:?} from {node}: {e}; asking again");
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(e) => panic!(
                    "fetch {partition}@{offset:?} from {node}: {e} (failing for {REPLICA_READ_BOUND:?})"
                ),
            }
        };
        if response.batches.is_empty() {
            break;
        }
        let next = next_offset(&response.batches).expect("valid batches");
        // Control batches carry no records: a batch list that does not move the offset ends
        // the committed log (only a control batch remains at its end).
        let progressed = next > offset;
        for batch in response.batches {
            if out.last() != Some(&batch) {
                out.push(batch);
            }
        }
        if !progressed || next >= response.commit {
            break;
        }
        offset = next;
    }
    dedup_batches(out)
}

/// Drops batches fetched twice (a fetch from an offset whose batch starts below it returns
/// that batch again), keeping the first copy; identity is the batch's Raft index (unique in
/// a log; the 32-bit header crc is not: two of ~36,000 batches collided often enough that a
/// batch was dropped from a read).
fn dedup_batches(batches: Vec<Bytes>) -> Vec<Bytes> {
    let mut seen = HashSet::new();
    batches.into_iter().filter(|b| seen.insert(batch_index(b))).collect()
}

fn batch_index(batch: &[u8]) -> u64 {
    u64::from_le_bytes(batch[32..40].try_into().expect("a batch header is 72 bytes"))
}

fn header_crc(batch: &[u8]) -> u32 {
    u32::from_le_bytes([batch[8], batch[9], batch[10], batch[11]])
}

/// The header crc of the last batch: by the prev-crc chain it commits to the whole log.
pub fn chain_crc(batches: &[Bytes]) -> u32 {
    batches.last().map_or(0, |b| header_crc(b))
}

/// Every port this test process has handed out: clusters started concurrently by tests of
/// one binary must never get the same port (the probe below releases a port before a node
/// binds it, and nodes bind with SO_REUSEPORT, so two nodes on one port would both bind and
/// the second would refuse to start, seeing another listener).
static HANDED_OUT: std::sync::Mutex<Option<HashSet<u16>>> = std::sync::Mutex::new(None);

/// `count` consecutive free TCP ports on 127.0.0.1 (none in `taken`, none handed out before
/// in this process); returns the first.
pub fn free_port_range(count: u16, taken: &HashSet<u16>) -> SocketAddr {
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let handed_out = handed_out.get_or_insert_with(HashSet::new);
    for _ in 0..1000 {
        let probe = TcpListener::bind("127.0.0.1:0").expect("bind a probe port");
        let base = probe.local_addr().unwrap().port();
        drop(probe);
        if base.checked_add(count).is_none() {
            continue;
        }
        let all_free = (0..count).all(|s| {
            let port = base + s;
            !taken.contains(&port)
                && !handed_out.contains(&port)
                && TcpListener::bind(("127.0.0.1", port)).is_ok()
        });
        if all_free {
            handed_out.extend(base..base + count);
            return SocketAddr::from(([127, 0, 0, 1], base));
        }
    }
    panic!("no {count} consecutive free ports");
}

/// The last `lines` lines of a file (for failure reports).
pub fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| format!("<unreadable: {e}>"));
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// A seed from the clock (printed by the tests; replay with the env var they name).
pub fn seed_from_time() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    nanos ^ (u64::from(std::process::id()) << 32)
}

/// The seed from `var` if set, else from the clock; printed either way.
pub fn seed(var: &str) -> u64 {
    let seed = match std::env::var(var) {
        Ok(text) => text.parse().unwrap_or_else(|_| panic!("{var} is not a u64: {text}")),
        Err(_) => seed_from_time(),
    };
    eprintln!("seed {seed} (replay with {var}={seed})");
    seed
}

/// Values produced and acknowledged by producer threads.
#[derive(Debug, Default)]
pub struct Ledger {
    /// Every value ever sent (acked or not).
    pub sent: HashSet<Vec<u8>>,
    /// Acknowledged values with the offset the ack gave them.
    pub acked: HashMap<Vec<u8>, Offset>,
    /// Acknowledged values in acknowledgement order, per producer.
    pub acked_order: HashMap<u32, Vec<Vec<u8>>>,
    /// Produce calls that failed (indeterminate or refused).
    pub failures: u64,
}

impl Ledger {
    /// Checks `records` (a partition's committed log) against the ledger: every acked value
    /// present exactly once at its acked offset; nothing that was never sent; no value twice
    /// (producers never resend a value, so even an indeterminate one may appear at most
    /// once); each producer's acked values in its order.
    pub fn check(&self, records: &[FetchedRecord], partition: PartitionId) {
        let mut where_: HashMap<&[u8], Vec<Offset>> = HashMap::new();
        for (i, record) in records.iter().enumerate() {
            if i > 0 {
                assert_eq!(
                    record.offset.0,
                    records[i - 1].offset.0 + 1,
                    "{partition}: offsets not dense at {i}"
                );
            }
            where_.entry(&record.value[..]).or_default().push(record.offset);
        }
        for (value, offsets) in &where_ {
            assert!(
                self.sent.contains(*value),
                "{partition}: value {:?} at {offsets:?} was never sent",
                String::from_utf8_lossy(value)
            );
            assert_eq!(
                offsets.len(),
                1,
                "{partition}: value {:?} appears {} times at {offsets:?}",
                String::from_utf8_lossy(value),
                offsets.len()
            );
        }
        for (value, offset) in &self.acked {
            let found = where_.get(&value[..]);
            assert_eq!(
                found,
                Some(&vec![*offset]),
                "{partition}: acknowledged value {:?} (acked at {offset:?}) found at {found:?}",
                String::from_utf8_lossy(value)
            );
        }
        for (producer, values) in &self.acked_order {
            let offsets: Vec<Offset> = values.iter().map(|v| self.acked[v]).collect();
            assert!(
                offsets.windows(2).all(|w| w[0] < w[1]),
                "{partition}: producer {producer}'s acknowledged records are out of order"
            );
        }
        eprintln!(
            "{partition}: {} records committed, {} acknowledged, {} sent, {} failed produces",
            records.len(),
            self.acked.len(),
            self.sent.len(),
            self.failures
        );
    }
}

/// Node id helpers.
pub fn node(id: u32) -> NodeId {
    NodeId(id)
}

// ---------------------------------------------------------------------------------------
// Storage fault helpers (issue #13): locate batches and hard-state slots in a stopped node's
// files and damage them the way a disk does (a flipped bit, zeroed bytes, a wiped dir).
// Layouts: docs/format.md#segment, #batch, #padding, #hard-state. The decoding here is
// deliberately independent of the engine's code: the tests must not trust what they test.
// ---------------------------------------------------------------------------------------

/// Size of a segment's header block (batches start after it).
pub const SEGMENT_HEADER_BYTES: u64 = 4096;
/// Size of a batch header.
pub const BATCH_HEADER_BYTES: u64 = 72;
const BATCH_MAGIC: &[u8; 4] = b"RLGB";
const PADDING_MAGIC: &[u8; 4] = b"RLGP";
/// One hard-state slot.
pub const HARD_STATE_SLOT_BYTES: u64 = 4096;

/// A batch found in a segment file (header fields as written; checksums not verified).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BatchLocation {
    pub segment: PathBuf,
    /// File position of the batch header.
    pub position: u64,
    pub length: u64,
    pub flags: u16,
    pub record_count: u32,
    pub term: u64,
    pub index: u64,
    pub base_offset: u64,
}

impl BatchLocation {
    pub fn is_data(&self) -> bool {
        self.flags == 0 && self.record_count > 0
    }

    pub fn end(&self) -> u64 {
        self.position + self.length
    }
}

/// The batches of one segment file, in file order, up to the first item that is neither a
/// batch nor a padding marker (zeros: the end of the data).
#[derive(Clone, Debug)]
pub struct SegmentScan {
    pub path: PathBuf,
    pub batches: Vec<BatchLocation>,
    /// Position after the last batch or padding marker.
    pub data_end: u64,
}

impl SegmentScan {
    pub fn last_batch(&self) -> Option<&BatchLocation> {
        self.batches.last()
    }
}

fn le_u16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes(b[at..at + 2].try_into().unwrap())
}

fn le_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

fn le_u64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

/// Reads `path` (a `.seg` file) and lists its batches. A scan of a running node's file may
/// end early at a write in progress; scan stopped nodes for exact answers.
pub fn scan_segment(path: &Path) -> SegmentScan {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let mut batches = Vec::new();
    let mut position = SEGMENT_HEADER_BYTES as usize;
    // Bound: every item is at least 16 bytes long.
    while position + 16 <= bytes.len() {
        let head = &bytes[position..];
        if &head[0..4] == BATCH_MAGIC && head.len() >= BATCH_HEADER_BYTES as usize {
            let length = u64::from(le_u32(head, 16));
            if length < BATCH_HEADER_BYTES || position as u64 + length > bytes.len() as u64 {
                break;
            }
            batches.push(BatchLocation {
                segment: path.to_path_buf(),
                position: position as u64,
                length,
                flags: le_u16(head, 6),
                record_count: le_u32(head, 20),
                term: le_u64(head, 24),
                index: le_u64(head, 32),
                base_offset: le_u64(head, 40),
            });
            position += length as usize;
        } else if &head[0..4] == PADDING_MAGIC {
            let length = le_u32(head, 8) as usize;
            if length < 16 {
                break;
            }
            position += length;
        } else {
            break;
        }
    }
    SegmentScan { path: path.to_path_buf(), batches, data_end: position as u64 }
}

/// The `.seg` files of a partition directory, oldest first (names sort by base offset).
pub fn segment_files(partition_dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(partition_dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "seg"))
                .filter(|p| {
                    p.file_name().is_some_and(|n| n.to_string_lossy().starts_with(char::is_numeric))
                })
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

/// Whether segment `path` is sealed (its index file exists).
pub fn is_sealed(path: &Path) -> bool {
    path.with_extension("idx").exists()
}

/// Every batch of a partition directory, oldest first.
pub fn scan_partition(partition_dir: &Path) -> Vec<SegmentScan> {
    segment_files(partition_dir).iter().map(|p| scan_segment(p)).collect()
}

/// The last batch of a partition directory (the newest segment with any batch).
pub fn last_batch(partition_dir: &Path) -> Option<BatchLocation> {
    scan_partition(partition_dir).iter().rev().find_map(|s| s.last_batch().cloned())
}

/// Flips bit `bit` (0..8) of the byte at `position` of `path`, durably.
pub fn flip_bit(path: &Path, position: u64, bit: u8) {
    use std::os::unix::fs::FileExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    let mut byte = [0u8; 1];
    file.read_exact_at(&mut byte, position).expect("read the byte to flip");
    let before = byte[0];
    byte[0] ^= 1 << (bit % 8);
    file.write_all_at(&byte, position).expect("write the flipped byte");
    file.sync_all().expect("sync the flipped byte");
    eprintln!(
        "flipped bit {} of byte {position} of {}: {before:#04x} -> {:#04x}",
        bit % 8,
        path.display(),
        byte[0]
    );
}

/// Overwrites `length` bytes of `path` from `position` with zeros, durably.
pub fn zero_range(path: &Path, position: u64, length: u64) {
    use std::os::unix::fs::FileExt;
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    file.write_all_at(&vec![0u8; length as usize], position).expect("zero a range");
    file.sync_all().expect("sync the zeroed range");
    eprintln!("zeroed bytes {position}..{} of {}", position + length, path.display());
}

/// Reads `length` bytes of `path` at `position`.
pub fn read_range(path: &Path, position: u64, length: u64) -> Vec<u8> {
    use std::os::unix::fs::FileExt;
    let file = std::fs::File::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    let mut out = vec![0u8; length as usize];
    file.read_exact_at(&mut out, position).expect("read a range");
    out
}

/// One decoded hard-state slot (docs/format.md#hard-state).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HardStateSlot {
    /// 0 or 1: which 4 KiB half of the file.
    pub slot: u64,
    pub generation: u64,
    pub term: u64,
    pub vote: Option<u32>,
}

/// The valid slots of a `hard_state` file (magic and CRC checked). A file being written
/// may show a slot as invalid for a moment.
pub fn read_hard_state(path: &Path) -> Vec<HardStateSlot> {
    let Ok(bytes) = std::fs::read(path) else { return Vec::new() };
    let mut out = Vec::new();
    for slot in 0..2u64 {
        let start = (slot * HARD_STATE_SLOT_BYTES) as usize;
        let Some(b) = bytes.get(start..start + HARD_STATE_SLOT_BYTES as usize) else { continue };
        if &b[0..4] != b"RLGH" {
            continue;
        }
        let mut hasher = crc32fast::Hasher::new();
        hasher.update(&b[0..8]);
        hasher.update(&b[12..]);
        if hasher.finalize() != le_u32(b, 8) {
            continue;
        }
        let vote = (le_u32(b, 36) == 1).then(|| le_u32(b, 32));
        out.push(HardStateSlot { slot, generation: le_u64(b, 16), term: le_u64(b, 24), vote });
    }
    out
}

/// The valid slot with the highest generation.
pub fn newest_hard_state(path: &Path) -> Option<HardStateSlot> {
    read_hard_state(path).into_iter().max_by_key(|s| s.generation)
}

/// Every `(term, node)` of `partition` a node's log says became leader ("role changed
/// partition=pN role=Leader term=tT"), from the node logs of every node (all lives: the logs are appended across restarts).
pub fn leaders_by_term(
    cluster: &Cluster,
    partition: PartitionId,
) -> BTreeMap<u64, std::collections::BTreeSet<u32>> {
    let mut out: BTreeMap<u64, std::collections::BTreeSet<u32>> = BTreeMap::new();
    let of_partition = format!("partition=p{} ", partition.0);
    for node in cluster.nodes.values() {
        let text = std::fs::read_to_string(&node.log_path).unwrap_or_default();
        for line in text.lines() {
            let line = strip_ansi(line);
            if !(line.contains("role changed")
                && line.contains("role=Leader")
                && line.contains(&of_partition))
            {
                continue;
            }
            let Some(at) = line.find("term=t") else { continue };
            let digits: String = line[at + 6..].chars().take_while(char::is_ascii_digit).collect();
            if let Ok(term) = digits.parse::<u64>() {
                out.entry(term).or_default().insert(node.id);
            }
        }
    }
    out
}

/// Removes ANSI colour sequences (`ESC [ ... m`).
pub fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Panic lines ("panicked at") of every node log, as "node N: <line and the next one>".
pub fn panics(cluster: &Cluster) -> Vec<String> {
    let mut out = Vec::new();
    for node in cluster.nodes.values() {
        let text = std::fs::read_to_string(&node.log_path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            if line.contains("panicked at") {
                let next = lines.get(i + 1).copied().unwrap_or("");
                out.push(format!("node {}: {} {}", node.id, strip_ansi(line), strip_ansi(next)));
            }
        }
    }
    out
}

impl Cluster {
    /// Node `id`'s directory of `partition` (the engine names it by the partition number).
    pub fn partition_dir(&self, id: u32, partition: PartitionId) -> PathBuf {
        self.nodes[&id].data_dir.join(partition.0.to_string())
    }

    /// Node `id`'s hard-state file of `partition`.
    pub fn hard_state_path(&self, id: u32, partition: PartitionId) -> PathBuf {
        self.partition_dir(id, partition).join("hard_state")
    }

    /// Sends `signal` to node `id` at once (no `kill` process in between: for races).
    pub fn signal_now(&mut self, id: u32, signal: rustix::process::Signal) {
        let node = self.nodes.get_mut(&id).expect("known node");
        let pid = node.pid().expect("node is running");
        let pid = rustix::process::Pid::from_raw(pid as i32).expect("a valid pid");
        rustix::process::kill_process(pid, signal).expect("signal a node");
        if signal == rustix::process::Signal::STOP {
            node.stopped = true;
        } else if signal == rustix::process::Signal::CONT {
            node.stopped = false;
        }
    }

    /// A pid handle for node `id` usable from another thread (for timed kills).
    pub fn pid_of(&self, id: u32) -> rustix::process::Pid {
        let pid = self.nodes[&id].pid().expect("node is running");
        rustix::process::Pid::from_raw(pid as i32).expect("a valid pid")
    }

    /// Node `id`'s exit status if its process has exited (then it is reaped and marked not
    /// running); `None` while it runs or when it was never started or already reaped.
    pub fn exited(&mut self, id: u32) -> Option<std::process::ExitStatus> {
        let node = self.nodes.get_mut(&id).expect("known node");
        let child = node.child.as_mut()?;
        let status = child.try_wait().expect("try_wait")?;
        node.child = None;
        Some(status)
    }

    /// Keeps the cluster directory after the test (for a post-mortem of an expected failure).
    pub fn keep(&mut self) {
        self.keep_dir = true;
    }
}

/// What a ledger check found, counted (instead of stopping at the first problem).
#[derive(Debug, Default)]
pub struct Audit {
    pub committed: usize,
    pub acked: usize,
    /// Acked values not found anywhere in the log.
    pub lost: usize,
    /// Acked values found, but at another offset (or more than once).
    pub moved: usize,
    /// Acked offsets that now hold another value.
    pub overwritten: usize,
    pub never_sent: usize,
    pub duplicated: usize,
    /// A few examples, for the failure message.
    pub examples: Vec<String>,
}

impl Audit {
    pub fn is_clean(&self) -> bool {
        self.lost == 0
            && self.moved == 0
            && self.overwritten == 0
            && self.never_sent == 0
            && self.duplicated == 0
    }
}

impl std::fmt::Display for Audit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} committed, {} acked: {} acked lost, {} acked at another offset, {} acked offsets \
             overwritten, {} never sent, {} duplicated; e.g. {:?}",
            self.committed,
            self.acked,
            self.lost,
            self.moved,
            self.overwritten,
            self.never_sent,
            self.duplicated,
            self.examples
        )
    }
}

impl Ledger {
    /// Counts every way `records` (a committed log) disagrees with the ledger.
    pub fn audit(&self, records: &[FetchedRecord]) -> Audit {
        let mut audit =
            Audit { committed: records.len(), acked: self.acked.len(), ..Audit::default() };
        let mut where_: HashMap<&[u8], Vec<Offset>> = HashMap::new();
        let mut at: HashMap<Offset, &[u8]> = HashMap::new();
        for record in records {
            where_.entry(&record.value[..]).or_default().push(record.offset);
            at.insert(record.offset, &record.value[..]);
        }
        for (value, offsets) in &where_ {
            if !self.sent.contains(*value) {
                audit.never_sent += 1;
            }
            if offsets.len() > 1 {
                audit.duplicated += 1;
            }
        }
        let mut acked: Vec<(&Vec<u8>, &Offset)> = self.acked.iter().collect();
        acked.sort_by_key(|(_, o)| **o);
        for (value, offset) in acked {
            match where_.get(&value[..]) {
                None => {
                    audit.lost += 1;
                    if audit.examples.len() < 3 {
                        let shown = &value[..value.len().min(24)];
                        audit.examples.push(format!(
                            "{}.. acked at {offset:?} is missing",
                            String::from_utf8_lossy(shown)
                        ));
                    }
                }
                Some(offsets) if offsets != &vec![*offset] => audit.moved += 1,
                Some(_) => {}
            }
            if let Some(now) = at.get(offset) {
                if *now != &value[..] {
                    audit.overwritten += 1;
                }
            }
        }
        audit
    }
}
