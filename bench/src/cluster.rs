//! Local cluster: N `ringlog serve` child processes on 127.0.0.1, in a directory of the
//! work dir, for the cluster scenarios.
//!
//! Process interface (contract decision 5): a node is started as `ringlog serve --config
//! <file>` and is ready once it printed `ringlog: ready node=<id> client=<ip:port> ...` on
//! stdout; its log (stderr) goes to `node-<id>.log` beside its config. Ports: each node gets
//! `shards` consecutive free client ports and peer ports (shard `s` listens on port + s) and a
//! metrics port, found by binding 127.0.0.1:0 and releasing it.
//!
//! Invariants: every child is killed (SIGKILL) and reaped when the [`LocalCluster`] drops,
//! on every exit path of the bench; a child also dies with the bench thread that spawned it
//! (PR_SET_PDEATHSIG), so a bench killed outright leaves no node behind. Nodes never
//! busy-spin (`spin = false`) and are not pinned, so three of them share a 2-core machine
//! with the kernel's IO completion work (design.md §11).
//!
//! # Safety
//!
//! One `unsafe` block: `CommandExt::pre_exec`, whose closure runs in the forked child before
//! `exec`. It only calls `prctl(PR_SET_PDEATHSIG)`, a single async-signal-safe system call
//! that allocates nothing and touches no lock, as `pre_exec` requires.

#![allow(unsafe_code)]

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use rustix::process::{Pid, Signal};
use serde::Serialize;

use crate::measure::{pid_cpu_time, pid_write_bytes};

/// Longest wait for a node's ready line.
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// Largest cluster the bench starts.
pub const NODES_MAX: usize = 9;
/// Cluster id written into every node's config.
const CLUSTER_ID: u64 = 0x62656e6368; // "bench"
/// Lines of a node's log shown when it fails to start.
const LOG_TAIL_LINES: usize = 20;

/// How the local cluster is configured.
#[derive(Debug, Clone, Serialize)]
pub struct ClusterOptions {
    pub nodes: usize,
    /// Executors per node.
    pub shards: usize,
    pub partitions: u32,
    pub segment_size_bytes: u64,
    pub retention_bytes_max: Option<u64>,
    pub io_memory_bytes: u64,
    /// Passed to `serve` for hosts whose checks fail (never used by CI).
    pub skip_host_checks: bool,
    /// `[log] level` of the nodes.
    pub log_level: String,
}

/// One node process.
#[derive(Debug)]
pub struct NodeProcess {
    pub id: u32,
    /// Shard-0 client address.
    pub client: SocketAddr,
    /// Shard-0 peer address.
    pub peer: SocketAddr,
    pub metrics: SocketAddr,
    pub config_path: PathBuf,
    pub log_path: PathBuf,
    child: Option<Child>,
}

/// A running local cluster; stopped (children killed) on drop.
#[derive(Debug)]
pub struct LocalCluster {
    binary: PathBuf,
    options: ClusterOptions,
    nodes: Vec<NodeProcess>,
}

impl LocalCluster {
    /// Writes the configs under `dir`, starts every node and waits for their ready lines.
    ///
    /// A node that refuses its port because another socket listens there (found free a
    /// moment before; seen twice on the project's machine, cause not found — the node's error
    /// names the other listener's process) is not the cluster's fault: the start is retried
    /// on fresh ports and data dirs, up to `START_ATTEMPTS` times, saying so on stderr.
    pub fn start(binary: &Path, dir: &Path, options: &ClusterOptions) -> anyhow::Result<Self> {
        let mut attempt = 1;
        loop {
            match Self::start_once(binary, dir, options) {
                Ok(cluster) => return Ok(cluster),
                Err(error) if attempt < START_ATTEMPTS && is_port_conflict(&error) => {
                    eprintln!(
                        "  cluster start attempt {attempt} failed on a port conflict; retrying on                          other ports:\n{error:#}"
                    );
                    for index in 0..options.nodes {
                        let _ =
                            std::fs::remove_dir_all(dir.join(format!("node-{}-data", index + 1)));
                    }
                    attempt += 1;
                }
                Err(error) => return Err(error),
            }
        }
    }

    fn start_once(binary: &Path, dir: &Path, options: &ClusterOptions) -> anyhow::Result<Self> {
        if options.nodes == 0 || options.nodes > NODES_MAX {
            bail!("nodes {} outside 1..={NODES_MAX}", options.nodes);
        }
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut nodes = Vec::with_capacity(options.nodes);
        let mut taken = Vec::new();
        for index in 0..options.nodes {
            let id = index as u32 + 1;
            let client = free_port_range(options.shards, &mut taken)?;
            let peer = free_port_range(options.shards, &mut taken)?;
            let metrics = free_port_range(1, &mut taken)?;
            nodes.push(NodeProcess {
                id,
                client,
                peer,
                metrics,
                config_path: dir.join(format!("node-{id}.toml")),
                log_path: dir.join(format!("node-{id}.log")),
                child: None,
            });
        }
        let peers: Vec<(u32, SocketAddr, SocketAddr)> =
            nodes.iter().map(|n| (n.id, n.peer, n.client)).collect();
        for node in &nodes {
            let data_dir = dir.join(format!("node-{}-data", node.id));
            std::fs::write(&node.config_path, node_toml(options, node, &data_dir, &peers))
                .with_context(|| format!("writing {}", node.config_path.display()))?;
        }
        let mut cluster =
            LocalCluster { binary: binary.to_path_buf(), options: options.clone(), nodes };
        let mut waiting = Vec::new();
        for index in 0..cluster.nodes.len() {
            waiting.push(cluster.spawn(index)?);
        }
        for (index, ready) in waiting.into_iter().enumerate() {
            cluster.wait_ready(index, ready)?;
        }
        Ok(cluster)
    }

    /// The options the cluster runs with.
    pub fn options(&self) -> &ClusterOptions {
        &self.options
    }

    /// Every node's shard-0 client address.
    pub fn bootstrap(&self) -> Vec<SocketAddr> {
        self.nodes.iter().map(|n| n.client).collect()
    }

    /// The nodes.
    pub fn nodes(&self) -> &[NodeProcess] {
        &self.nodes
    }

    /// The node whose shard-0 client address is `client`, or whose id is `id`.
    pub fn node(&self, id: u32) -> anyhow::Result<&NodeProcess> {
        self.nodes.iter().find(|n| n.id == id).with_context(|| format!("no node {id}"))
    }

    /// Process ids of the running nodes.
    pub fn pids(&self) -> Vec<u32> {
        self.nodes.iter().filter_map(|n| n.child.as_ref().map(Child::id)).collect()
    }

    /// Total CPU time of the running nodes so far.
    pub fn cpu_time(&self) -> Duration {
        self.pids().into_iter().filter_map(pid_cpu_time).sum()
    }

    /// Total bytes the running nodes caused to be written to storage so far.
    pub fn write_bytes(&self) -> u64 {
        self.pids().into_iter().filter_map(pid_write_bytes).sum()
    }

    /// Sends `signal` to node `id` (SIGSTOP / SIGCONT to pause it, SIGKILL to crash it).
    pub fn signal(&self, id: u32, signal: Signal) -> anyhow::Result<()> {
        let node = self.node(id)?;
        let child = node.child.as_ref().with_context(|| format!("node {id} is not running"))?;
        let pid = Pid::from_raw(child.id() as i32).context("invalid pid")?;
        rustix::process::kill_process(pid, signal)
            .with_context(|| format!("signalling node {id} (pid {pid:?})"))
    }

    /// Crashes node `id` with SIGKILL and reaps it.
    pub fn kill(&mut self, id: u32) -> anyhow::Result<()> {
        let node =
            self.nodes.iter_mut().find(|n| n.id == id).with_context(|| format!("no node {id}"))?;
        if let Some(mut child) = node.child.take() {
            let _ = child.kill();
            child.wait().with_context(|| format!("reaping node {id}"))?;
        }
        Ok(())
    }

    /// Restarts node `id` (after [`LocalCluster::kill`]) on the same config and data.
    pub fn restart(&mut self, id: u32) -> anyhow::Result<()> {
        let index =
            self.nodes.iter().position(|n| n.id == id).with_context(|| format!("no node {id}"))?;
        if self.nodes[index].child.is_some() {
            bail!("node {id} is still running");
        }
        let ready = self.spawn(index)?;
        self.wait_ready(index, ready)
    }

    /// Stops every node: SIGKILL and reap (the data dir is thrown away with the work dir, so
    /// a graceful stop would only cost time).
    pub fn stop(&mut self) {
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }

    fn spawn(&mut self, index: usize) -> anyhow::Result<std::sync::mpsc::Receiver<String>> {
        let node = &mut self.nodes[index];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log_path)
            .with_context(|| format!("creating {}", node.log_path.display()))?;
        let mut command = Command::new(&self.binary);
        command.arg("serve").arg("--config").arg(&node.config_path);
        if self.options.skip_host_checks {
            command.arg("--skip-host-checks");
        }
        command.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::from(log));
        // SAFETY: the closure runs in the forked child before exec and only makes the
        // prctl(PR_SET_PDEATHSIG) system call: async-signal-safe, no allocation, no lock
        // (module doc, # Safety).
        unsafe {
            use std::os::unix::process::CommandExt as _;
            command.pre_exec(|| {
                rustix::process::set_parent_process_death_signal(Some(Signal::KILL))
                    .map_err(std::io::Error::from)
            });
        }
        let mut child =
            command.spawn().with_context(|| format!("starting {} serve", self.binary.display()))?;
        let stdout = child.stdout.take().context("child stdout")?;
        node.child = Some(child);
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name(format!("node-{}-stdout", node.id))
            .spawn(move || {
                // Forward the ready line, then keep draining stdout until the node exits.
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    if line.starts_with("ringlog: ready") {
                        let _ = ready_tx.send(line);
                    }
                }
            })
            .context("spawning a stdout reader")?;
        Ok(ready_rx)
    }

    fn wait_ready(
        &mut self,
        index: usize,
        ready: std::sync::mpsc::Receiver<String>,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        let node = &mut self.nodes[index];
        loop {
            match ready.recv_timeout(Duration::from_millis(100)) {
                Ok(line) => {
                    check_ready_line(&line, node.id)?;
                    return Ok(());
                }
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {}
            }
            let child = node.child.as_mut().context("node not running")?;
            if let Some(status) = child.try_wait().context("polling a node")? {
                node.child = None;
                bail!(
                    "node {} exited ({status}) before it was ready; its log ({}) ends with:\n{}",
                    node.id,
                    node.log_path.display(),
                    log_tail(&node.log_path)
                );
            }
            if Instant::now() >= deadline {
                bail!(
                    "node {} printed no ready line within {READY_TIMEOUT:?}; its log ({}) ends \
                     with:\n{}",
                    node.id,
                    node.log_path.display(),
                    log_tail(&node.log_path)
                );
            }
        }
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Cluster starts tried before giving up on port conflicts (`LocalCluster::start`).
const START_ATTEMPTS: u32 = 3;

/// Whether a cluster start failed because a node found its port taken: another listener
/// on it (the node's own check), or the bind itself refused with EADDRINUSE (a socket
/// without SO_REUSEPORT holds it; seen on a loaded machine for a peer port found free a
/// moment before).
fn is_port_conflict(error: &anyhow::Error) -> bool {
    let text = format!("{error:#}");
    text.contains("another socket already listens on port")
        || (text.contains("cannot listen on") && text.contains("Address already in use"))
}

/// Checks a ready line names the node we started: `ringlog: ready node=<id> client=...`.
fn check_ready_line(line: &str, id: u32) -> anyhow::Result<()> {
    let node = line
        .split_whitespace()
        .find_map(|field| field.strip_prefix("node="))
        .with_context(|| format!("malformed ready line {line:?}"))?;
    if node != id.to_string() {
        bail!("node {id} announced itself as node {node}: {line:?}");
    }
    Ok(())
}

/// A 127.0.0.1 address whose port and the `count - 1` ports after it were free a moment ago
/// and are not in `taken`; the ports are added to `taken`.
///
/// Ports are chosen *below* the kernel's ephemeral range (`ip_local_port_range`): a port
/// handed out by `bind(:0)` is an ephemeral one, and once a killed node released it, an
/// outgoing client connection could take it as its local port and the restarted node could
/// not listen again.
fn free_port_range(count: usize, taken: &mut Vec<u16>) -> anyhow::Result<SocketAddr> {
    const PORT_LOW: u32 = 10_000;
    const ATTEMPTS_MAX: u32 = 2_000;
    let ephemeral_low = ephemeral_port_low().clamp(PORT_LOW + 1_000, 65_535);
    let span = ephemeral_low - PORT_LOW - count as u32;
    // A start that differs between concurrent benches (and test processes).
    let seed = std::process::id().wrapping_mul(2_654_435_761)
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
    for attempt in 0..ATTEMPTS_MAX {
        let base = PORT_LOW + (seed.wrapping_add(attempt.wrapping_mul(7_919)) % span);
        let ports: Vec<u16> = (0..count as u32).map(|s| (base + s) as u16).collect();
        if ports.iter().any(|p| taken.contains(p)) {
            continue;
        }
        if ports.iter().all(|port| TcpListener::bind(("127.0.0.1", *port)).is_ok()) {
            taken.extend(&ports);
            return Ok(SocketAddr::from(([127, 0, 0, 1], ports[0])));
        }
    }
    bail!("no range of {count} free ports found on 127.0.0.1 below {ephemeral_low}")
}

/// The first port of the ephemeral range (`/proc/sys/net/ipv4/ip_local_port_range`).
fn ephemeral_port_low() -> u32 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|text| text.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(32_768)
}

fn node_toml(
    options: &ClusterOptions,
    node: &NodeProcess,
    data_dir: &Path,
    peers: &[(u32, SocketAddr, SocketAddr)],
) -> String {
    let mut toml = format!(
        "# Written by `ringlog bench` for a local benchmark cluster.\n\
         node_id = {id}\n\
         cluster_id = {CLUSTER_ID}\n\
         data_dir = {data_dir:?}\n\
         shards = {shards}\n\
         io_memory = {io_memory}\n\
         partitions = {partitions}\n\
         pinning = \"never\"\n\
         spin = false\n\n\
         [listen]\n\
         client = \"{client}\"\n\
         peer = \"{peer}\"\n\
         metrics = \"{metrics}\"\n\n",
        id = node.id,
        data_dir = data_dir.display().to_string(),
        shards = options.shards,
        io_memory = options.io_memory_bytes,
        partitions = options.partitions,
        client = node.client,
        peer = node.peer,
        metrics = node.metrics,
    );
    for (id, peer, client) in peers {
        toml.push_str(&format!(
            "[[peers]]\nid = {id}\npeer = \"{peer}\"\nclient = \"{client}\"\n\n"
        ));
    }
    toml.push_str(&format!("[storage]\nsegment_size = {}\n", options.segment_size_bytes));
    let flush_bytes_max = (options.segment_size_bytes / 2).min(1 << 20);
    toml.push_str(&format!("flush_bytes_max = {flush_bytes_max}\n"));
    let batch_size_max = flush_bytes_max.min(options.segment_size_bytes - 12288) / 4096 * 4096;
    toml.push_str(&format!("batch_size_max = {batch_size_max}\n"));
    if let Some(bytes) = options.retention_bytes_max {
        toml.push_str(&format!("retention_bytes_max = {bytes}\n"));
    }
    toml.push_str(&format!("\n[log]\nlevel = {:?}\njson = false\n", options.log_level));
    // A benchmark cluster on loopback: unencrypted on purpose (tls.mode is required).
    toml.push_str("\n[tls]\nmode = \"plaintext\"\n");
    // Leadership stays where the elections put it: a balancer hand-off in the middle of a
    // measured window (`balance.settle_ms` after a failover scenario's restart, say) would be
    // measured as a failover of its own.
    toml.push_str("\n[balance]\nenabled = false\n");
    toml
}

fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_port_conflict_is_retried() {
        let conflict = anyhow::anyhow!(
            "node 3 exited (exit status: 1) before it was ready; its log ends with:\nringlog: \
             cannot listen on 127.0.0.1:20670: another socket already listens on port 20670"
        );
        assert!(is_port_conflict(&conflict));
        assert!(is_port_conflict(&conflict.context("starting the local cluster")));
        assert!(!is_port_conflict(&anyhow::anyhow!("node 2 printed no ready line within 30s")));
        let refused = anyhow::anyhow!(
            "node 1 exited (exit status: 1) before it was ready; its log ends with:\nringlog: \
             cannot listen on 127.0.0.1:25306: io: Address already in use (os error 98)"
        );
        assert!(is_port_conflict(&refused));
        assert!(!is_port_conflict(&anyhow::anyhow!("cannot open the data dir: Permission denied")));
    }

    fn options() -> ClusterOptions {
        ClusterOptions {
            nodes: 3,
            shards: 2,
            partitions: 3,
            segment_size_bytes: 8 << 20,
            retention_bytes_max: Some(16 << 20),
            io_memory_bytes: 1 << 20,
            skip_host_checks: false,
            log_level: "warn".to_string(),
        }
    }

    #[test]
    fn port_ranges_do_not_overlap() {
        let mut taken = Vec::new();
        let a = free_port_range(4, &mut taken).unwrap();
        let b = free_port_range(4, &mut taken).unwrap();
        assert_eq!(taken.len(), 8);
        assert!(u32::from(a.port()) < ephemeral_port_low(), "{a} is an ephemeral port");
        let overlap = (a.port()..a.port() + 4).any(|p| (b.port()..b.port() + 4).contains(&p));
        assert!(!overlap, "{a} {b}");
    }

    #[test]
    fn a_node_config_lists_every_peer_and_the_storage_limits() {
        let node = NodeProcess {
            id: 2,
            client: "127.0.0.1:7100".parse().unwrap(),
            peer: "127.0.0.1:7200".parse().unwrap(),
            metrics: "127.0.0.1:9000".parse().unwrap(),
            config_path: PathBuf::from("/x/node-2.toml"),
            log_path: PathBuf::from("/x/node-2.log"),
            child: None,
        };
        let peers = [
            (1, "127.0.0.1:7201".parse().unwrap(), "127.0.0.1:7101".parse().unwrap()),
            (2, node.peer, node.client),
        ];
        let toml = node_toml(&options(), &node, Path::new("/x/data"), &peers);
        assert!(toml.contains("node_id = 2\n"), "{toml}");
        assert!(toml.contains("data_dir = \"/x/data\"\n"), "{toml}");
        assert_eq!(toml.matches("[[peers]]").count(), 2);
        assert!(toml.contains("retention_bytes_max = 16777216\n"), "{toml}");
        assert!(toml.contains("spin = false\n"));
        assert!(toml.contains("[tls]\nmode = \"plaintext\"\n"), "{toml}");
    }

    #[test]
    fn a_ready_line_must_name_the_node() {
        assert!(
            check_ready_line("ringlog: ready node=2 client=127.0.0.1:1 peer=x shards=1", 2).is_ok()
        );
        assert!(check_ready_line("ringlog: ready node=3 client=x", 2).is_err());
        assert!(check_ready_line("ringlog: ready", 2).is_err());
    }

    #[test]
    fn a_binary_that_exits_early_is_reported_with_its_log() {
        let dir = tempfile::tempdir().unwrap();
        let mut opts = options();
        opts.nodes = 1;
        // `false` exits 1 at once without a ready line.
        let error = LocalCluster::start(Path::new("/bin/false"), dir.path(), &opts).unwrap_err();
        assert!(format!("{error:#}").contains("exited"), "{error:#}");
    }
}
