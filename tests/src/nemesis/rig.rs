//! The soak's cluster: the harness's 3 `ringlog serve` processes (data dirs on loop-mounted
//! ext4 when the disk can be filled), which of them should be running, which are impaired,
//! and non-panicking node operations. A node that exits on its own is reported and restarted
//! (as a supervisor's `Restart=on-failure` would). Dropping the rig kills every node before
//! unmounting the disks.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ringlog::config::PeerEntry;
use ringlog_net::client::{Client, ClientConfig};
use ringlog_net::protocol::GroupStatus;
use ringlog_net::PartitionId;
use ringlog_raft::Role;

use crate::harness::{Cluster, Spec};
use crate::netcut::{PrivateNetwork, GID_BASE};

use super::disk::{self, LoopDisk};
use super::options::{EventKind, Options};
use super::Report;

/// Shortest pause between two restarts of a node that keeps exiting.
const RESTART_BACKOFF: Duration = Duration::from_secs(1);

#[derive(Debug)]
pub struct Rig {
    pub cluster: Cluster,
    /// Per node: its loop-mounted disk (only when `fill-disk` is on and loop mounts work).
    pub disks: BTreeMap<u32, LoopDisk>,
    /// Node ids the nemesis has damaged, stopped or paused and that have not caught up since.
    pub impaired: Arc<Mutex<BTreeSet<u32>>>,
    /// Short-timeout client for status queries.
    pub client: Client,
    partitions: u32,
    /// Nodes that should be running (the rest were stopped on purpose).
    desired: BTreeSet<u32>,
    next_restart: BTreeMap<u32, Instant>,
    /// What the nemesis is doing (for unexpected-exit reports).
    pub context: String,
    /// The run's own network namespace, where `partition` cuts links (only with that event).
    network: Option<PrivateNetwork>,
}

impl Rig {
    /// Configures 3 nodes, mounts their disks if `fill-disk` is on (else drops the event with
    /// a note), and starts them.
    pub fn start(options: &mut Options, report: &mut Report) -> Rig {
        // Before anything binds or connects: the nodes, writers and checks all live in it.
        let network = if options.events.iter().any(|k| k.is_net_event()) {
            let network = PrivateNetwork::enter("nemesis network events");
            if network.is_none() {
                report.notes.push("partition, cut-link skipped: links cannot be cut".to_string());
                options.events.retain(|k| !k.is_net_event());
            }
            network
        } else {
            None
        };
        let mut spec = Spec::new(3).shards(1).partitions(options.partitions);
        spec.segment_size = options.segment_size;
        let mut cluster = Cluster::configure("nemesis", spec);
        if let Some(network) = &network {
            cluster.node_gid_base = Some(GID_BASE);
            network.mark_peer_links(&cluster).expect("mark the nodes' links");
        }
        let client = Client::new(status_client_config(&cluster)).expect("status client");
        let mut rig = Rig {
            cluster,
            disks: BTreeMap::new(),
            impaired: Arc::new(Mutex::new(BTreeSet::new())),
            client,
            partitions: options.partitions,
            desired: BTreeSet::new(),
            next_restart: BTreeMap::new(),
            context: "start".to_string(),
            network,
        };
        if options.events.contains(&EventKind::FillDisk) {
            if let Err(why) = rig.mount_disks(options.disk_size_mib()) {
                let note = format!("fill-disk skipped: loop-mounted ext4 not available: {why}");
                eprintln!("nemesis: {note}");
                report.notes.push(note);
                options.events.remove(&EventKind::FillDisk);
            }
        }
        // Not `Cluster::launch`: a node that fails to start is reported and restarted.
        for id in rig.ids() {
            rig.spawn(id);
        }
        for id in rig.ids() {
            rig.wait_started(id, report);
        }
        rig
    }

    fn mount_disks(&mut self, size_mib: u64) -> Result<(), String> {
        disk::loop_mounts_supported()?;
        let peers: Vec<PeerEntry> = self
            .cluster
            .nodes
            .values()
            .map(|n| PeerEntry { id: n.id, peer: n.peer, client: n.client })
            .collect();
        for id in self.ids() {
            let image = self.cluster.dir.join(format!("node-{id}.img"));
            let mount = self.cluster.dir.join(format!("node-{id}-disk"));
            let disk = LoopDisk::create(&image, &mount, size_mib)?;
            let data_dir = mount.join("data");
            std::fs::create_dir_all(&data_dir).map_err(|e| format!("mkdir data: {e}"))?;
            self.disks.insert(id, disk);
            let node = self.cluster.nodes.get_mut(&id).unwrap();
            let _ = std::fs::remove_dir(&node.data_dir); // the harness's, empty and unused
            node.data_dir = data_dir;
            self.cluster.write_config(id, &peers);
        }
        eprintln!("nemesis: data dirs on loop-mounted ext4 of {size_mib} MiB each");
        Ok(())
    }

    /// Cuts the links between nodes `a` and `b` (the `partition` event).
    pub fn cut(&self, a: u32, b: u32) -> Result<(), String> {
        self.network.as_ref().ok_or("no network namespace of the run's own")?.cut(a, b)
    }

    /// Heals a cut made by [`Rig::cut`].
    pub fn heal(&self, a: u32, b: u32) -> Result<(), String> {
        self.network.as_ref().ok_or("no network namespace of the run's own")?.heal(a, b)
    }

    pub fn ids(&self) -> Vec<u32> {
        self.cluster.nodes.keys().copied().collect()
    }

    pub fn partitions(&self) -> Vec<PartitionId> {
        (0..self.partitions).map(PartitionId).collect()
    }

    pub fn bootstrap(&self) -> Vec<SocketAddr> {
        self.cluster.nodes.values().map(|n| n.client).collect()
    }

    pub fn impair(&self, id: u32) {
        self.impaired.lock().unwrap().insert(id);
    }

    /// kill -9 (and reap) node `id`; it stays down until `start`.
    pub fn kill(&mut self, id: u32) {
        self.impair(id);
        self.desired.remove(&id);
        self.cluster.kill(id);
    }

    /// Marks node `id` as being stopped on purpose (its exit is not reported).
    pub fn mark_stopping(&mut self, id: u32) {
        self.desired.remove(&id);
    }

    /// Spawns node `id` without waiting for it.
    pub fn spawn(&mut self, id: u32) {
        self.desired.insert(id);
        self.cluster.spawn(id);
    }

    /// Starts node `id` and waits for its ready line; a failed start is reported and left to
    /// `supervise` to retry.
    pub fn start_node(&mut self, id: u32, report: &mut Report) {
        self.spawn(id);
        self.wait_started(id, report);
    }

    pub fn wait_started(&mut self, id: u32, report: &mut Report) {
        if let Err(problem) = self.cluster.try_wait_ready(id) {
            report.unexpected_exit(format!(
                "during {}: {}",
                self.context,
                first_lines(&problem, 12)
            ));
            self.next_restart.insert(id, Instant::now() + RESTART_BACKOFF);
        }
    }

    pub fn signal(&mut self, id: u32, signal: &str) {
        if self.cluster.nodes[&id].is_running() {
            self.cluster.signal(id, signal);
        }
    }

    pub fn is_up(&self, id: u32) -> bool {
        let node = &self.cluster.nodes[&id];
        node.is_running() && !node.is_paused()
    }

    /// Reports and restarts nodes that should run but exited (each at most once per
    /// `RESTART_BACKOFF`).
    pub fn supervise(&mut self, report: &mut Report) {
        for id in self.ids() {
            if !self.desired.contains(&id) {
                continue;
            }
            if let Some(status) = self.cluster.poll_exit(id) {
                let log = &self.cluster.nodes[&id].log_path;
                report.unexpected_exit(format!(
                    "node {id} exited with {status} during {} (log {})",
                    self.context,
                    log.display()
                ));
                self.impair(id);
            }
            let due = self.next_restart.get(&id).is_none_or(|t| Instant::now() >= *t);
            if !self.cluster.nodes[&id].is_running() && due {
                self.next_restart.insert(id, Instant::now() + RESTART_BACKOFF);
                self.cluster.spawn(id);
                self.wait_started(id, report);
            }
        }
    }

    /// Sleeps `duration` while supervising.
    pub fn hold(&mut self, duration: Duration, report: &mut Report) {
        let until = Instant::now() + duration;
        while Instant::now() < until {
            self.supervise(report);
            std::thread::sleep((until - Instant::now().min(until)).min(Duration::from_millis(50)));
        }
    }

    /// Statuses of `partition` from every node that is up.
    pub fn statuses(&self, partition: PartitionId) -> Vec<GroupStatus> {
        self.ids()
            .into_iter()
            .filter(|id| self.is_up(*id))
            .filter_map(|id| self.cluster.status_of(&self.client, id, partition))
            .collect()
    }

    /// The leader of `partition` (the up node reporting itself leader at the highest term).
    pub fn leader_of(&self, partition: PartitionId) -> Option<u32> {
        self.statuses(partition)
            .into_iter()
            .filter(|s| s.role == Role::Leader)
            .max_by_key(|s| s.term)
            .map(|s| s.node.0)
    }

    /// Waits (bounded) until every desired node runs and, for every partition, one leader is
    /// agreed by all three nodes and each node holds and knows committed what the leader had
    /// committed when the wait began (sampled per partition). Then nothing is impaired.
    /// `Err`: the last state seen, and the nodes that were behind in it.
    pub fn wait_healthy(
        &mut self,
        bound: Duration,
        report: &mut Report,
    ) -> Result<Duration, (String, BTreeSet<u32>)> {
        let start = Instant::now();
        let mut targets: BTreeMap<PartitionId, u64> = BTreeMap::new();
        let mut last = String::new();
        let mut behind = BTreeSet::new();
        while start.elapsed() < bound {
            self.supervise(report);
            behind.clear();
            let all_up = self.ids().iter().all(|id| self.is_up(*id));
            let mut healthy = all_up;
            for partition in self.partitions() {
                healthy &= self.healthy(partition, &mut targets, &mut last, &mut behind);
            }
            if healthy {
                self.impaired.lock().unwrap().clear();
                return Ok(start.elapsed());
            }
            if !all_up {
                last = "not every node is up".to_string();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err((last, behind))
    }

    fn healthy(
        &self,
        partition: PartitionId,
        targets: &mut BTreeMap<PartitionId, u64>,
        last: &mut String,
        behind: &mut BTreeSet<u32>,
    ) -> bool {
        let statuses = self.statuses(partition);
        let leaders: Vec<&GroupStatus> =
            statuses.iter().filter(|s| s.role == Role::Leader).collect();
        let (&[leader], 3) = (&leaders[..], statuses.len()) else {
            *last = format!(
                "{partition}: {} answers, {} leaders: {statuses:?}",
                statuses.len(),
                leaders.len()
            );
            return false;
        };
        let target = *targets.entry(partition).or_insert(leader.commit.0);
        let lagging: Vec<u32> = statuses
            .iter()
            .filter(|s| {
                // A damaged replica (repair not done yet) is impaired too: the next disk
                // event must wait for it, or two replicas of three would be impaired at once.
                s.leader != Some(leader.node)
                    || s.durable.0 < target
                    || s.commit.0 < target
                    || s.damaged
            })
            .map(|s| s.node.0)
            .collect();
        if lagging.is_empty() {
            return true;
        }
        *last = format!("{partition}: not caught up to commit {target}: {statuses:?}");
        behind.extend(lagging);
        false
    }

    /// Final convergence: every partition has one agreed leader and every node reports the
    /// same commit, commit offset and last index (= commit). Partitions that do not converge
    /// within `bound` are returned with their last statuses.
    pub fn wait_converged(&mut self, bound: Duration, report: &mut Report) -> Vec<String> {
        let start = Instant::now();
        let mut pending: BTreeMap<PartitionId, String> =
            self.partitions().into_iter().map(|p| (p, String::new())).collect();
        while !pending.is_empty() && start.elapsed() < bound {
            self.supervise(report);
            let partitions: Vec<PartitionId> = pending.keys().copied().collect();
            for partition in partitions {
                let statuses = self.statuses(partition);
                let leaders = statuses.iter().filter(|s| s.role == Role::Leader).count();
                let first = statuses.first().cloned();
                let same = first.is_some_and(|f| {
                    statuses.iter().all(|s| {
                        s.commit == f.commit
                            && s.commit_offset == f.commit_offset
                            && s.last_index == f.commit
                    })
                });
                if statuses.len() == 3 && leaders == 1 && same {
                    pending.remove(&partition);
                } else {
                    pending.insert(partition, format!("{statuses:?}"));
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        pending
            .into_iter()
            .map(|(p, s)| format!("{p} not converged after {bound:?}: {s}"))
            .collect()
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        for id in self.ids() {
            self.cluster.kill(id);
        }
        // Unmount before the cluster (dropped after this) removes its directory.
        self.disks.clear();
    }
}

fn status_client_config(cluster: &Cluster) -> ClientConfig {
    let bootstrap: Vec<SocketAddr> = cluster.nodes.values().map(|n| n.client).collect();
    ClientConfig {
        connect_timeout: Duration::from_millis(500),
        request_timeout: Duration::from_secs(1),
        metadata_timeout: Duration::from_millis(500),
        retry_time_max: Duration::from_secs(2),
        attempts_max: 4,
        ..ClientConfig::new(bootstrap)
    }
}

fn first_lines(text: &str, lines: usize) -> String {
    text.lines().take(lines).collect::<Vec<_>>().join("\n")
}
