//! In-process cluster tests of the replication core: three `ShardCore`s ("nodes", one shard
//! each, own data dirs and loopback ports) on three glommio executors in this process.
//!
//! Each node's executor runs a small command loop: the test thread sends closures over a
//! crossbeam channel that the executor polls every millisecond (no cross-thread wake-ups,
//! design.md §11). Waits use generous deadlines; nothing asserts on timing.

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use crossbeam_channel::{Receiver, Sender};
use ringlog_engine::batch::{encode_batch, BatchStamp};
use ringlog_engine::runtime::{spawn_executor, ExecutorSpec};
use ringlog_engine::Log;
use ringlog_engine::RecordsBuilder;
use ringlog_net::protocol::{Acks, Consistency};
use ringlog_net::{Offset, PartitionId};
use ringlog_raft::{Entry, LogIndex, Message, NodeId, Role, Term};

use super::{ShardContext, ShardCore};
use crate::config::NodeConfig;
use crate::node::api::{NodeError, ShutdownMode};
use crate::node::balance::TransferLimit;
use crate::node::replicator::stall::{self, Stall};
use crate::node::replicator_codec::entry_of_batch;

/// Deadline of every wait for the cluster to reach a state.
const WAIT_MAX: Duration = Duration::from_secs(60);
const P0: PartitionId = PartitionId(0);
const P1: PartitionId = PartitionId(1);

type Job = Box<dyn FnOnce(Rc<ShardCore>) -> Pin<Box<dyn Future<Output = ()>>> + Send>;

enum Command {
    Run(Job),
    Stop(ShutdownMode),
}

/// One node: an executor thread running a `ShardCore`.
struct TestNode {
    commands: Sender<Command>,
    thread: Option<JoinHandle<()>>,
}

struct Ports {
    peer: Vec<u16>,
    client: Vec<u16>,
    /// Unique to this cluster (process id and a counter): a node of another test (of this
    /// binary or of another test process on the machine) that dials a port reused from here
    /// is refused at the handshake instead of joining the wrong cluster.
    cluster_id: u64,
}

/// A loopback port free now and not handed out before by this process (a port released by
/// one test's probe is not given to a second cluster of the same run).
fn free_port() -> u16 {
    static HANDED_OUT: std::sync::Mutex<Option<std::collections::HashSet<u16>>> =
        std::sync::Mutex::new(None);
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let handed_out = handed_out.get_or_insert_with(Default::default);
    loop {
        let socket = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = socket.local_addr().expect("addr").port();
        if handed_out.insert(port) {
            return port;
        }
    }
}

fn ports(nodes: usize) -> Ports {
    static CLUSTERS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    let serial = CLUSTERS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    Ports {
        peer: (0..nodes).map(|_| free_port()).collect(),
        client: (0..nodes).map(|_| free_port()).collect(),
        cluster_id: (u64::from(std::process::id()) << 24) | serial,
    }
}

/// The config of node `id`; `[[peers]]` lists the first `peers` nodes of `ports`.
fn node_config(
    id: u32,
    ports: &Ports,
    peers: usize,
    data_dir: &std::path::Path,
    partitions: u32,
    storage_extra: &str,
) -> NodeConfig {
    let mut text = format!(
        "node_id = {id}\ncluster_id = {}\ndata_dir = \"{}\"\nshards = 1\npartitions = {partitions}\n\
         io_memory = 524288\n",
        ports.cluster_id,
        data_dir.display()
    );
    for (i, (peer, client)) in ports.peer.iter().zip(&ports.client).enumerate().take(peers) {
        text += &format!(
            "[[peers]]\nid = {}\npeer = \"127.0.0.1:{peer}\"\nclient = \"127.0.0.1:{client}\"\n",
            i + 1
        );
    }
    text += &format!(
        "[storage]\nsegment_size = 1048576\nflush_bytes_max = 262144\n\
             queued_bytes_max = 4194304\nbatch_size_max = 131072\ntail_cache_bytes_max = 1048576\n\
             index_interval_bytes = 16384\n{storage_extra}\
             [raft]\ntick_interval_ms = 20\nelection_ticks = 10\nheartbeat_ticks = 2\n\
             append_bytes_max = 131072\nentry_bytes_max = 131072\n\
             [tls]\nmode = \"plaintext\"\n"
    );
    let config = NodeConfig::parse(&text, std::path::Path::new("test.toml")).expect("parse");
    if let Err(problems) = config.validate() {
        panic!("test config invalid: {problems:?}\n{text}");
    }
    config
}

impl TestNode {
    fn start(config: NodeConfig, partitions: Vec<PartitionId>) -> TestNode {
        init_test_log();
        let id = config.node_id;
        let (tx, rx) = crossbeam_channel::unbounded::<Command>();
        let (ready_tx, ready_rx) = crossbeam_channel::bounded(1);
        let spec = ExecutorSpec {
            name: format!("test-node{id}"),
            cpu: None,
            io_memory_bytes: 512 * 1024,
            spin: false,
        };
        let config = Arc::new(config);
        let thread = spawn_executor(spec, move || async move {
            let balance_limit =
                Arc::new(TransferLimit::new(config.balance.transfers_per_minute as u32));
            let ctx =
                ShardContext { shard: 0, shards: 1, config, partitions, tls: None, balance_limit };
            let core = match ShardCore::open(ctx).await {
                Ok(core) => core,
                Err(e) => {
                    let _ = ready_tx.send(Err(e.to_string()));
                    return;
                }
            };
            let _ = ready_tx.send(Ok(()));
            command_loop(core, rx).await;
        })
        .expect("executor");
        ready_rx
            .recv_timeout(WAIT_MAX * 2)
            .expect("node ready in time")
            .expect("shard core opened");
        TestNode { commands: tx, thread: Some(thread) }
    }

    /// Runs `f` on the node's executor and returns its result.
    fn call<T, F, Fut>(&self, f: F) -> T
    where
        T: Send + 'static,
        F: FnOnce(Rc<ShardCore>) -> Fut + Send + 'static,
        Fut: Future<Output = T> + 'static,
    {
        let (tx, rx) = crossbeam_channel::bounded(1);
        let job: Job = Box::new(move |core| {
            Box::pin(async move {
                let _ = tx.send(f(core).await);
            })
        });
        self.commands.send(Command::Run(job)).expect("node running");
        rx.recv_timeout(WAIT_MAX * 2).expect("node answered")
    }

    fn stop(mut self, mode: ShutdownMode) {
        let _ = self.commands.send(Command::Stop(mode));
        if let Some(thread) = self.thread.take() {
            assert!(join_within(thread, "stop"), "the node's executor did not end in time");
        }
    }

    fn role(&self, p: PartitionId) -> Role {
        self.call(move |core| async move { core.partition(p).expect("partition").status().role })
    }

    fn append(
        &self,
        p: PartitionId,
        acks: Acks,
        records: Vec<Vec<u8>>,
    ) -> Result<crate::node::api::AppendOutcome, NodeError> {
        self.call(move |core| async move {
            let batch = client_batch(&records);
            core.partition(p).expect("partition").append(acks, batch).await
        })
    }

    fn read_all(
        &self,
        p: PartitionId,
        consistency: Consistency,
    ) -> Result<Vec<Vec<u8>>, NodeError> {
        self.call(move |core| async move {
            let r = core.partition(p).expect("partition");
            let mut offset = Offset(0);
            let mut out = Vec::new();
            loop {
                let got = r.read(offset, 1 << 20, consistency, Duration::ZERO).await?;
                if got.batches.is_empty() {
                    return Ok(out);
                }
                for batch in &got.batches {
                    let view = ringlog_engine::decode_batch(batch, 1 << 20).expect("valid batch");
                    out.extend(view.records().map(|r| r.to_vec()));
                }
                // Control batches take no offset: a fetch that does not move the offset
                // returned only the control batches that end the committed log (a new
                // leader's no-op). Reading again would get them again, forever, and this
                // loop runs on the node's executor: it would never yield to it.
                if got.next_offset <= offset {
                    return Ok(out);
                }
                offset = got.next_offset;
            }
        })
    }

    /// (commit index, last index, last crc) of the partition's log.
    fn log_state(&self, p: PartitionId) -> (LogIndex, LogIndex, u32) {
        self.call(move |core| async move {
            let r = core.partition(p).expect("partition");
            (r.commit(), r.log().last_index(), r.log().last_crc())
        })
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        if let Some(thread) = self.thread.take() {
            let _ = self.commands.send(Command::Stop(ShutdownMode::Immediate));
            join_within(thread, "drop");
        }
    }
}

/// `RINGLOG_TEST_LOG` (a `log.level` filter such as `debug`) turns on the nodes' logs, each
/// line named by its node's executor thread (`test-node<id>`); off when unset.
fn init_test_log() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let Ok(level) = std::env::var("RINGLOG_TEST_LOG") else { return };
        let filter = tracing_subscriber::EnvFilter::try_new(&level).expect("RINGLOG_TEST_LOG");
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_thread_names(true)
            .with_test_writer()
            .try_init();
    });
}

/// Joins a node's executor thread within `WAIT_MAX`; false (the thread left running, its
/// name printed) when it does not end in time. A test that fails while an executor is stuck
/// (a task that never yields, a shutdown that never ends) then reports its failure instead
/// of hanging the whole test binary in an unbounded join.
fn join_within(thread: JoinHandle<()>, what: &str) -> bool {
    let deadline = Instant::now() + WAIT_MAX;
    while !thread.is_finished() {
        if Instant::now() >= deadline {
            eprintln!(
                "test node executor {:?} did not end within {WAIT_MAX:?} ({what}); left running",
                thread.thread().name()
            );
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    thread.join().is_ok()
}

async fn command_loop(core: Rc<ShardCore>, rx: Receiver<Command>) {
    loop {
        match rx.try_recv() {
            Ok(Command::Run(job)) => {
                glommio::spawn_local(job(core.clone())).detach();
            }
            Ok(Command::Stop(mode)) => {
                core.hand_off(mode).await;
                core.shutdown(mode).await;
                return;
            }
            Err(crossbeam_channel::TryRecvError::Empty) => {
                glommio::timer::sleep(Duration::from_millis(1)).await;
            }
            Err(crossbeam_channel::TryRecvError::Disconnected) => {
                core.shutdown(ShutdownMode::Immediate).await;
                return;
            }
        }
    }
}

fn client_batch(records: &[Vec<u8>]) -> Bytes {
    stamped_batch(Term(0), LogIndex(0), records)
}

/// A batch of `records` stamped with `term` and `index` (base offset = index).
fn stamped_batch(term: Term, index: LogIndex, records: &[Vec<u8>]) -> Bytes {
    let mut builder = RecordsBuilder::new(1 << 20);
    for r in records {
        builder.push(r).expect("record fits");
    }
    let built = builder.finish();
    let stamp = BatchStamp {
        term,
        index,
        base_offset: ringlog_engine::Offset(index.0),
        record_count: built.count,
        flags: 0,
        first_timestamp_ms: 1,
        max_timestamp_ms: 1,
        prev_crc: 0,
    };
    encode_batch(&stamp, &built.bytes)
}

fn wait_until(what: &str, done: impl FnMut() -> bool) {
    wait_within(what, WAIT_MAX, done);
}

fn wait_within(what: &str, max: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + max;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The index (into `nodes`) of the leader of `p`, once exactly one running node leads.
fn leader_of(nodes: &[Option<TestNode>], p: PartitionId) -> usize {
    let mut found = None;
    wait_until("a leader", || {
        let leaders: Vec<usize> = nodes
            .iter()
            .enumerate()
            .filter(|(_, n)| n.as_ref().is_some_and(|n| n.role(p) == Role::Leader))
            .map(|(i, _)| i)
            .collect();
        found = (leaders.len() == 1).then(|| leaders[0]);
        found.is_some()
    });
    found.expect("leader found")
}

struct Cluster {
    dirs: Vec<PathBuf>,
    _root: tempfile::TempDir,
    ports: Ports,
    /// Nodes listed in the original members' `[[peers]]`.
    members: usize,
    partitions: u32,
    /// Extra `[storage]` lines of every node's config.
    storage_extra: String,
    nodes: Vec<Option<TestNode>>,
}

impl Cluster {
    fn start(size: usize, partitions: u32) -> Cluster {
        Cluster::start_with_spares(size, 0, partitions)
    }

    /// `size` members started, plus `spares` nodes with reserved ports and dirs, not started
    /// and unknown to the members' configs (to be added by a membership change).
    fn start_with_spares(size: usize, spares: usize, partitions: u32) -> Cluster {
        Cluster::start_with(size, spares, partitions, "")
    }

    fn start_with(size: usize, spares: usize, partitions: u32, storage_extra: &str) -> Cluster {
        let root = tempfile::tempdir().expect("tempdir");
        let total = size + spares;
        let dirs: Vec<PathBuf> = (1..=total).map(|i| root.path().join(format!("n{i}"))).collect();
        let ports = ports(total);
        let mut cluster = Cluster {
            dirs,
            _root: root,
            ports,
            members: size,
            partitions,
            storage_extra: storage_extra.to_string(),
            nodes: Vec::new(),
        };
        for i in 0..size {
            let node = cluster.start_node(i);
            cluster.nodes.push(Some(node));
        }
        cluster.nodes.extend((0..spares).map(|_| None));
        cluster
    }

    fn start_node(&self, i: usize) -> TestNode {
        let peers = self.members.max(i + 1);
        let config = node_config(
            i as u32 + 1,
            &self.ports,
            peers,
            &self.dirs[i],
            self.partitions,
            &self.storage_extra,
        );
        TestNode::start(config, (0..self.partitions).map(PartitionId).collect())
    }

    fn node(&self, i: usize) -> &TestNode {
        self.nodes[i].as_ref().expect("node running")
    }

    fn kill(&mut self, i: usize) {
        if let Some(node) = self.nodes[i].take() {
            node.stop(ShutdownMode::Immediate);
        }
    }

    fn restart(&mut self, i: usize) {
        assert!(self.nodes[i].is_none());
        self.nodes[i] = Some(self.start_node(i));
    }

    /// Appends `count` single-record batches through the leader (retrying NotLeader and
    /// backpressure); returns the values acknowledged.
    fn append_acked(&self, p: PartitionId, tag: &str, count: usize) -> Vec<Vec<u8>> {
        let mut acked = Vec::new();
        for k in 0..count {
            let value = format!("{tag}-{k}").into_bytes();
            let deadline = Instant::now() + WAIT_MAX;
            loop {
                let leader = leader_of(&self.nodes, p);
                match self.node(leader).append(p, Acks::Quorum, vec![value.clone()]) {
                    Ok(outcome) => {
                        assert!(outcome.commit > outcome.last_offset, "{outcome:?}");
                        acked.push(value);
                        break;
                    }
                    // Timeout: the leader stepped down with it pending (outcome unknown);
                    // a retry may append it twice, which these tests allow.
                    Err(
                        NodeError::NotLeader { .. }
                        | NodeError::Backpressure { .. }
                        | NodeError::Timeout,
                    ) => {
                        assert!(Instant::now() < deadline, "append {k} never accepted");
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    Err(e) => panic!("append {k} failed: {e}"),
                }
            }
        }
        acked
    }

    /// Waits until every running node holds the same log (same last index and chain crc)
    /// and has committed all of it.
    fn wait_identical(&self, p: PartitionId) {
        wait_until("identical, fully committed logs", || {
            let states: Vec<_> = self.nodes.iter().flatten().map(|n| n.log_state(p)).collect();
            states.windows(2).all(|w| w[0].1 == w[1].1 && w[0].2 == w[1].2)
                && states.iter().all(|(commit, last, _)| commit == last)
        });
    }
}

#[test]
fn three_nodes_elect_commit_on_quorum_serve_every_replica_and_transfer_leadership() {
    let cluster = Cluster::start(3, 2);
    let acked = cluster.append_acked(P0, "a", 50);
    let acked1 = cluster.append_acked(P1, "b", 5);
    cluster.wait_identical(P0);
    cluster.wait_identical(P1);
    for i in 0..3 {
        let read = cluster.node(i).read_all(P0, Consistency::ReplicaCommitted).expect("read");
        assert_eq!(read, acked, "node {} serves exactly the committed records", i + 1);
        let read = cluster.node(i).read_all(P1, Consistency::ReplicaCommitted).expect("read");
        assert_eq!(read, acked1);
    }
    let leader = leader_of(&cluster.nodes, P0);
    let read = cluster.node(leader).read_all(P0, Consistency::LeaderLinearizable).expect("read");
    assert_eq!(read, acked, "a linearizable read sees every acknowledged record");
    let follower = (leader + 1) % 3;
    let err = cluster.node(follower).read_all(P0, Consistency::LeaderLinearizable);
    assert!(matches!(err, Err(NodeError::NotLeader { .. })), "{err:?}");
    let err = cluster.node(follower).append(P0, Acks::Quorum, vec![b"x".to_vec()]);
    match err {
        Err(NodeError::NotLeader { leader: Some(l), address: Some(_), .. }) => {
            assert_eq!(l, NodeId(leader as u32 + 1), "the hint names the leader");
        }
        other => panic!("a follower refuses appends with a leader hint: {other:?}"),
    }
    // Transfer leadership to a follower.
    let to = NodeId(follower as u32 + 1);
    cluster
        .node(leader)
        .call(move |core| async move { core.partition(P0).expect("p0").transfer_leadership(to) })
        .expect("transfer accepted");
    wait_until("the transfer target leads", || cluster.node(follower).role(P0) == Role::Leader);
    let more = cluster.append_acked(P0, "c", 10);
    cluster.wait_identical(P0);
    let read = cluster.node(leader).read_all(P0, Consistency::ReplicaCommitted).expect("read");
    assert_eq!(read, [acked, more].concat());
    // acks=none and acks=leader answer with offsets too.
    let l = leader_of(&cluster.nodes, P0);
    let none = cluster.node(l).append(P0, Acks::None, vec![b"n".to_vec()]).expect("acks none");
    let lead = cluster.node(l).append(P0, Acks::Leader, vec![b"l".to_vec()]).expect("acks leader");
    assert_eq!(lead.base_offset.0, none.last_offset.0 + 1);
}

#[test]
fn a_killed_leader_is_replaced_and_catches_up_after_restart() {
    let mut cluster = Cluster::start(3, 1);
    let first = cluster.append_acked(P0, "before", 20);
    let old = leader_of(&cluster.nodes, P0);
    cluster.kill(old);
    let second = cluster.append_acked(P0, "after", 20);
    let new = leader_of(&cluster.nodes, P0);
    assert_ne!(new, old);
    cluster.restart(old);
    cluster.wait_identical(P0);
    let read = cluster.node(old).read_all(P0, Consistency::ReplicaCommitted).expect("read");
    assert_eq!(read, [first, second].concat(), "the restarted node holds every acked record once");
}

#[test]
fn a_wiped_follower_restarts_damaged_and_is_repaired_from_the_leader() {
    let mut cluster = Cluster::start(3, 1);
    let first = cluster.append_acked(P0, "w", 30);
    cluster.wait_identical(P0);
    let leader = leader_of(&cluster.nodes, P0);
    let victim = (leader + 1) % 3;
    cluster.kill(victim);
    std::fs::remove_dir_all(&cluster.dirs[victim]).expect("wipe");
    cluster.restart(victim);
    let damaged = cluster
        .node(victim)
        .call(|core| async move { core.partition(P0).expect("p0").is_damaged() });
    assert!(damaged, "a wiped member restarts damaged");
    let second = cluster.append_acked(P0, "x", 10);
    wait_until("the wiped follower is repaired", || {
        !cluster
            .node(victim)
            .call(|core| async move { core.partition(P0).expect("p0").is_damaged() })
    });
    cluster.wait_identical(P0);
    let read = cluster.node(victim).read_all(P0, Consistency::ReplicaCommitted).expect("read");
    assert_eq!(read, [first, second].concat());
}

#[test]
fn a_node_added_with_its_addresses_catches_up_as_a_learner_and_is_promoted() {
    let mut cluster = Cluster::start_with_spares(3, 1, 1);
    let first = cluster.append_acked(P0, "m", 20);
    cluster.restart(3);
    let leader = leader_of(&cluster.nodes, P0);
    let addresses = crate::node::api::NodeAddresses {
        peer: format!("127.0.0.1:{}", cluster.ports.peer[3]).parse().expect("addr"),
        client: format!("127.0.0.1:{}", cluster.ports.client[3]).parse().expect("addr"),
    };
    let change = ringlog_raft::MembershipChange::AddLearner(NodeId(4));
    let added = cluster.node(leader).call(move |core| async move {
        core.partition(P0).expect("p0").change_membership(change, Some(addresses)).await
    });
    assert!(added.is_ok(), "add learner: {added:?}");
    wait_until("node 4 is promoted to voter", || {
        let leader = leader_of(&cluster.nodes, P0);
        cluster.node(leader).call(|core| async move {
            let status = core.partition(P0).expect("p0").status();
            status.followers.iter().any(|f| f.node == NodeId(4) && !f.learner)
        })
    });
    let second = cluster.append_acked(P0, "n", 10);
    cluster.wait_identical(P0);
    let read = cluster.node(3).read_all(P0, Consistency::ReplicaCommitted).expect("read");
    assert_eq!(read, [first.clone(), second.clone()].concat());
    // A member restarted from its own config (which does not list node 4) finds node 4's
    // addresses in its log and reaches it again.
    let follower = (0..3).find(|&i| i != leader_of(&cluster.nodes, P0)).expect("a follower");
    cluster.kill(follower);
    cluster.restart(follower);
    let third = cluster.append_acked(P0, "o", 5);
    cluster.wait_identical(P0);
    let read = cluster.node(follower).read_all(P0, Consistency::ReplicaCommitted).expect("read");
    assert_eq!(read, [first, second, third].concat());
}

/// Throughput probe (not a CI test: `cargo test -p ringlog --lib -- --ignored
/// replicated_append_throughput --nocapture`): 64 producer tasks on the leader's executor
/// append 1 KiB single-record batches with acks=quorum for 3 s through the 3-node in-process
/// cluster (1 MiB segments: frequent rolls). Prints batches/s and mean latency; asserts
/// nothing about speed (shared, noisy machine).
#[test]
#[ignore]
fn replicated_append_throughput() {
    let cluster = Cluster::start(3, 1);
    cluster.append_acked(P0, "warm", 5);
    let leader = leader_of(&cluster.nodes, P0);
    let (count, latency_us) = cluster.node(leader).call(|core| async move {
        let r = core.partition(P0).expect("p0");
        let stop = Instant::now() + Duration::from_secs(3);
        let mut tasks = Vec::new();
        for _ in 0..64 {
            let r = r.clone();
            tasks.push(glommio::spawn_local(async move {
                let batch = client_batch(&[vec![7u8; 1024]]);
                let (mut n, mut total_us) = (0u64, 0u128);
                while Instant::now() < stop {
                    let started = Instant::now();
                    if r.append(Acks::Quorum, batch.clone()).await.is_ok() {
                        n += 1;
                        total_us += started.elapsed().as_micros();
                    }
                }
                (n, total_us)
            }));
        }
        let mut sum = (0u64, 0u128);
        for t in tasks {
            let (n, us) = t.await;
            sum = (sum.0 + n, sum.1 + us);
        }
        sum
    });
    println!(
        "acks=quorum, 3 nodes in one process, 1 KiB batches, 64 producers: {:.0} batches/s, \
         mean latency {:.0} us",
        count as f64 / 3.0,
        latency_us as f64 / count.max(1) as f64
    );
    assert!(count > 0);
}

#[test]
fn a_follower_behind_the_leaders_retention_restarts_its_log_at_the_leaders_start() {
    let mut cluster = Cluster::start_with(3, 0, 1, "retention_bytes_max = 1048576\n");
    cluster.append_acked(P0, "r", 3);
    let leader = leader_of(&cluster.nodes, P0);
    let behind = (leader + 1) % 3;
    cluster.kill(behind);
    // ~4 MiB of 32 KiB batches: several 1 MiB segments, most of them past retention.
    let leader = leader_of(&cluster.nodes, P0);
    for k in 0..128 {
        let value = vec![k as u8; 32 * 1024];
        let outcome = cluster.node(leader).append(P0, Acks::Quorum, vec![value]);
        assert!(outcome.is_ok(), "append {k}: {outcome:?}");
    }
    wait_until("retention moved the leader's log start", || {
        cluster.node(leader).call(|core| async move {
            core.partition(P0).expect("p0").snapshot().log_start_offset > Offset(3)
        })
    });
    cluster.restart(behind);
    cluster.wait_identical(P0);
    let start = cluster
        .node(behind)
        .call(|core| async move { core.partition(P0).expect("p0").snapshot().log_start_offset });
    assert!(start > Offset(3), "the follower's log restarted past its old end: {start:?}");
    let more = cluster.append_acked(P0, "s", 5);
    cluster.wait_identical(P0);
    let tail = cluster.node(behind).call(move |core| async move {
        let r = core.partition(P0).expect("p0");
        let got = r.read(start, 1 << 20, Consistency::ReplicaCommitted, Duration::ZERO).await;
        got.map(|o| o.batches.len())
    });
    assert!(tail.is_ok_and(|n| n > 0), "the restarted log serves reads from its start");
    assert_eq!(more.len(), 5);
}

// ----- scripted peers: engine state the core has moved past (issue #13, items 1, 6, 9) -----

/// Node 1 of a 3-voter group, started alone; nodes 2 and 3 are scripted. The test delivers
/// their Raft messages to node 1's replicator (what node 1's peer listener does after the
/// same batch checks) and stamps their batches with real engine logs of their own. An
/// armed `stall` holds node 1's log worker before a truncation or reset (a slow disk).
struct Scripted {
    root: tempfile::TempDir,
    ports: Ports,
    /// Node 1's partition dir (the stall's key).
    partition_dir: PathBuf,
    log_config: ringlog_engine::LogConfig,
    batch_size_max: usize,
    node: TestNode,
}

/// One record `value` as a data batch of `term`, for a scripted leader's log to stamp.
fn data_request(term: Term, value: &str) -> ringlog_engine::AppendRequest {
    let mut records = RecordsBuilder::new(1 << 20);
    records.push(value.as_bytes()).expect("record fits");
    ringlog_engine::AppendRequest::data(term, records.finish(), 1)
}

fn strings(values: &[&str]) -> Vec<String> {
    values.iter().map(|v| v.to_string()).collect()
}

fn append_message(term: u64, prev: (u64, u64), commit: u64, entries: &[Entry]) -> Message {
    Message::Append {
        term: Term(term),
        prev_index: LogIndex(prev.0),
        prev_term: Term(prev.1),
        commit: LogIndex(commit),
        entries: entries.to_vec(),
    }
}

impl Scripted {
    fn start() -> Scripted {
        let root = tempfile::tempdir().expect("tempdir");
        let ports = ports(3);
        let dir = root.path().join("n1");
        let config = node_config(1, &ports, 3, &dir, 1, "");
        let log_config = config.to_log_config();
        let batch_size_max = log_config.batch_size_max;
        let node = TestNode::start(config, vec![P0]);
        // Started from an empty dir: what the peers' pristine handshakes would prove.
        node.call(|core| async move { core.partition(P0).expect("p0").prove_pristine() });
        Scripted { partition_dir: dir.join("0"), root, ports, log_config, batch_size_max, node }
    }

    fn deliver(&self, from: u32, message: Message) {
        self.node.call(move |core| async move {
            core.partition(P0).expect("p0").handle_message(NodeId(from), message)
        });
    }

    fn status(&self) -> ringlog_net::protocol::GroupStatus {
        self.node.call(|core| async move { core.partition(P0).expect("p0").status() })
    }

    /// Committed reads the read path's term check refused (`stale_batch_refused`).
    fn stale_refusals(&self) -> u64 {
        self.node.call(|core| async move {
            let snapshot = core.partition(P0).expect("p0").snapshot();
            let refused = snapshot.errors.iter().find(|(kind, _)| kind == "stale_batch_refused");
            refused.map_or(0, |(_, count)| *count)
        })
    }

    fn failure(&self) -> Option<String> {
        self.node.call(|core| async move { core.partition(P0).expect("p0").failure() })
    }

    /// Zero-wait read of node 1 from `offset`: the records returned.
    fn read_from(&self, offset: u64) -> Result<Vec<Vec<u8>>, NodeError> {
        self.node.call(move |core| async move {
            let r = core.partition(P0).expect("p0");
            let got =
                r.read(Offset(offset), 1 << 20, Consistency::ReplicaCommitted, Duration::ZERO);
            got.await.map(|out| records_of(&out.batches))
        })
    }

    /// Starts a long-poll read of node 1 from `offset` (up to `wait`); its records arrive
    /// on the returned channel.
    fn long_poll(&self, offset: u64, wait: Duration) -> Receiver<Result<Vec<Vec<u8>>, NodeError>> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        self.node.call(move |core| async move {
            let r = core.partition(P0).expect("p0");
            glommio::spawn_local(async move {
                let got = r.read(Offset(offset), 1 << 20, Consistency::ReplicaCommitted, wait);
                let _ = tx.send(got.await.map(|out| records_of(&out.batches)));
            })
            .detach();
        });
        rx
    }

    /// Stamps two leaders' logs with real engine logs: both hold `shared` (term 1, stamped
    /// by leader 2); leader 2 then appends `old` (term 1), leader 3 `new` (term 2).
    /// Returns (leader 2's entries, leader 3's entries).
    fn two_branches(
        &self,
        shared: &[&str],
        old: &[&str],
        new: &[&str],
    ) -> (Vec<Entry>, Vec<Entry>) {
        let (shared, old, new) = (strings(shared), strings(old), strings(new));
        let dir = self.root.path().join("scripted");
        let (config, max) = (self.log_config.clone(), self.batch_size_max);
        self.node.call(move |_| async move {
            let (two, _) = Log::open(dir.join("leader2"), config.clone()).await.expect("open");
            let mut branch2 = Vec::new();
            for value in shared.iter().chain(&old) {
                let appended = two.append(data_request(Term(1), value)).expect("append");
                branch2.push(entry_of_batch(appended.batch, max).expect("entry"));
            }
            let (three, _) = Log::open(dir.join("leader3"), config).await.expect("open");
            let mut branch3 = Vec::new();
            for entry in &branch2[..shared.len()] {
                three.append_stamped(entry.payload.clone()).expect("append stamped");
                branch3.push(entry.clone());
            }
            for value in &new {
                let appended = three.append(data_request(Term(2), value)).expect("append");
                branch3.push(entry_of_batch(appended.batch, max).expect("entry"));
            }
            two.close().await.expect("close");
            three.close().await.expect("close");
            (branch2, branch3)
        })
    }

    /// Leader 3's log after its retention: it starts at 10 (offset 9: entries 1..=9 held one
    /// record each), entry 9 being of `prev_term`; then `values`, one entry each, of term 2.
    fn log_from_10(&self, prev_term: Term, values: &[&str]) -> Vec<Entry> {
        let dir = self.root.path().join("scripted").join("leader3-from-10");
        let (config, max, values) = (self.log_config.clone(), self.batch_size_max, strings(values));
        self.node.call(move |_| async move {
            let (three, _) = Log::open(dir, config).await.expect("open");
            three.reset(LogIndex(10), ringlog_engine::Offset(9), prev_term).await.expect("reset");
            let mut entries = Vec::new();
            for value in &values {
                let appended = three.append(data_request(Term(2), value)).expect("append");
                entries.push(entry_of_batch(appended.batch, max).expect("entry"));
            }
            three.close().await.expect("close");
            entries
        })
    }

    /// Leader 2 (term 1) replicates `branch2` with commit `commit`; waits until node 1
    /// holds all of it and committed `commit`.
    fn follow_leader_2(&self, branch2: &[Entry], commit: u64) {
        let last = branch2.last().expect("entries").index;
        self.deliver(2, append_message(1, (0, 0), commit, branch2));
        wait_until("node 1 holds leader 2's entries", || {
            let st = self.status();
            st.last_index == last && st.commit == LogIndex(commit) && st.durable == last
        });
    }

    /// Arms the stall, then leader 3 (term 2) sends `entries` after `prev` (of term 1) with
    /// commit `commit`: node 1's core truncates, appends and commits in that one input,
    /// while its log worker is held before the engine's truncation.
    fn leader_3_overrides(&self, prev: u64, entries: &[Entry], commit: u64) -> Arc<Stall> {
        let stall = stall::arm(&self.partition_dir);
        self.deliver(3, append_message(2, (prev, 1), commit, entries));
        wait_until("the log worker holds the truncation", || stall.held() == 1);
        assert_eq!(self.status().commit, LogIndex(commit), "the core committed at once");
        stall
    }
}

fn records_of(batches: &[Bytes]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for batch in batches {
        let view = ringlog_engine::decode_batch(batch, 1 << 20).expect("valid batch");
        out.extend(view.records().map(|r| r.to_vec()));
    }
    out
}

fn values_of(values: &[&str]) -> Vec<Vec<u8>> {
    values.iter().map(|v| v.as_bytes().to_vec()).collect()
}

/// Issue #13 item 1: a deposed leader's long-poll reader, woken by a commit that arrives in
/// the same input as the truncation of its never-committed entries, must not read them
/// from the engine while the log worker has not yet applied the truncation.
#[test]
fn a_long_poll_reader_waits_for_a_held_truncation_when_the_commit_passes_it() {
    let s = Scripted::start();
    let shared = ["a1", "a2"];
    let new = ["new3", "new4", "new5"];
    let (branch2, branch3) = s.two_branches(&shared, &["old3", "old4"], &new);
    s.follow_leader_2(&branch2, 2);
    // A reader waits at the end of what is committed (offset 2: one record per entry).
    let reader = s.long_poll(2, Duration::from_secs(20));
    let stall = s.leader_3_overrides(2, &branch3[2..], 5);
    // The engine still holds old3 and old4 at offsets 2 and 3.
    let now = s.read_from(2).expect("zero-wait read");
    assert!(values_of(&new).starts_with(&now), "a read during the held truncation: {now:?}");
    let early = reader.recv_timeout(Duration::from_millis(300));
    assert!(early.is_err(), "the long-poll reader returned before the truncation: {early:?}");
    stall.release();
    let got = reader.recv_timeout(WAIT_MAX).expect("reader answered").expect("read");
    assert!(!got.is_empty() && values_of(&new).starts_with(&got), "read {got:?}");
    wait_until("node 1 serves the committed log", || {
        s.read_from(0).is_ok_and(|all| all == values_of(&["a1", "a2", "new3", "new4", "new5"]))
    });
}

/// Issue #13 item 1, the cause of the stale reads `cluster_partition` met under load (4 in
/// ~300 runs, each refused by the read path's term check): the core holds every action of an
/// input — the truncation of the entries the new leader overrides, its appends, its commit —
/// until that input's new term is durable, but its own commit index and log move at once. A
/// reader woken while the hard state was being written read the engine up to the core's
/// commit, found no truncation queued, and got the overridden, never-committed batches. Reads
/// go only as far as the commits the driver has carried out (`commit_acted`).
#[test]
fn a_read_while_the_new_terms_hard_state_is_written_does_not_pass_the_held_truncation() {
    let s = Scripted::start();
    let new = ["new3", "new4", "new5"];
    let (branch2, branch3) = s.two_branches(&["a1", "a2"], &["old3", "old4"], &new);
    s.follow_leader_2(&branch2, 2);
    let stall = stall::arm(&s.partition_dir.join(stall::HARD_STATE));
    s.deliver(3, append_message(2, (2, 1), 5, &branch3[2..]));
    wait_until("the new term's hard state write is held", || stall.held() == 1);
    // The core already committed leader 3's entries; their truncation and appends wait.
    assert_eq!(s.status().commit, LogIndex(5), "the core committed at once");
    let now = s.read_from(2).expect("zero-wait read");
    assert!(now.is_empty(), "a read while the hard state is written: {now:?}");
    assert_eq!(
        s.stale_refusals(),
        0,
        "the read reached the engine's overridden batches (the term check refused them)"
    );
    stall.release();
    let all = values_of(&["a1", "a2", "new3", "new4", "new5"]);
    wait_until("node 1 serves leader 3's log", || s.read_from(0).is_ok_and(|got| got == all));
    assert_eq!(s.stale_refusals(), 0, "a stale batch was refused after the release");
}

/// Issue #13 item 1, the multi-process schedule replayed on one node (cluster_partition's
/// `a_deposed_leaders_long_poll_readers_never_get_its_uncommitted_records_after_the_cut_heals`):
/// node 1 leads term 1, its readers long-poll at the end of its committed log, it appends
/// entries of its own that no follower acknowledges (acks=leader, durable here only), then
/// leader 3 of term 2 overrides them with its own entries and a commit past them, in one
/// input. No reader may ever get one of node 1's own never-committed records: every read
/// returns a prefix of leader 3's records. Unlike the follower-era test above, the entries
/// cut are the leader's own (stamped by its engine from its producers' batches) and no
/// stall holds the truncation: the log worker runs it at its own pace.
#[test]
fn a_deposed_leaders_own_uncommitted_entries_are_never_served_once_the_next_leader_overrides_them()
{
    let s = Scripted::start();
    let term = grant_election(&s, 2);
    wait_until("node 1 leads", || s.status().role == Role::Leader);
    let keep_leading = || s.deliver(2, Message::HeartbeatResponse { term, ctx: 0 });
    for value in ["a1", "a2"] {
        keep_leading();
        let records = vec![value.as_bytes().to_vec()];
        s.node.append(P0, Acks::Leader, records).expect("append a shared record");
    }
    // Node 2 holds node 1's noop and both records: they commit.
    let shared_last = s.status().last_index;
    let accepted = ringlog_raft::AppendResult::Accepted { durable: shared_last, damaged: false };
    s.deliver(2, Message::AppendResponse { term, result: accepted });
    wait_until("the shared entries commit", || s.status().commit == shared_last);
    // Readers wait at the end of the committed log (offset 2: a1 and a2).
    let readers: Vec<_> = (0..4).map(|_| s.long_poll(2, Duration::from_secs(20))).collect();
    let old: Vec<String> = (0..16).map(|i| format!("never-committed-{i}")).collect();
    for value in &old {
        keep_leading();
        let records = vec![value.as_bytes().to_vec()];
        s.node.append(P0, Acks::Leader, records).expect("append an uncommitted record");
    }
    // Leader 3's log: node 1's committed entries (their bytes as node 1 stamped them), then
    // records of the next term, more of them than node 1's uncommitted ones.
    let new: Vec<String> = (0..24).map(|i| format!("committed-{i}")).collect();
    let (dir, config, max) =
        (s.root.path().join("leader3"), s.log_config.clone(), s.batch_size_max);
    let new_values = new.clone();
    let next_term = Term(term.0 + 1);
    let branch3 = s.node.call(move |core| async move {
        let node1 = core.partition(P0).expect("p0");
        let shared = node1.log().read_entries(LogIndex(1), shared_last, 1 << 20).await;
        let shared = shared.expect("read node 1's committed entries");
        let (three, _) = Log::open(dir, config).await.expect("open");
        let mut entries = Vec::new();
        for batch in shared {
            three.append_stamped(batch.clone()).expect("append stamped");
            entries.push(entry_of_batch(batch, max).expect("entry"));
        }
        for value in &new_values {
            let appended = three.append(data_request(next_term, value)).expect("append");
            entries.push(entry_of_batch(appended.batch, max).expect("entry"));
        }
        three.close().await.expect("close");
        entries
    });
    let last = branch3.last().expect("entries").index;
    let after = &branch3[shared_last.0 as usize..];
    s.deliver(3, append_message(next_term.0, (shared_last.0, term.0), last.0, after));
    let committed: Vec<Vec<u8>> = ["a1", "a2"]
        .iter()
        .map(|v| v.as_bytes().to_vec())
        .chain(new.iter().map(|v| v.as_bytes().to_vec()))
        .collect();
    for reader in readers {
        let got = reader.recv_timeout(WAIT_MAX).expect("reader answered").expect("read");
        let text: Vec<_> = got.iter().map(|r| String::from_utf8_lossy(r)).collect();
        assert!(
            !got.is_empty() && committed[2..].starts_with(&got),
            "a deposed leader's reader got {text:?}"
        );
    }
    wait_until("node 1 serves leader 3's log", || s.read_from(0).is_ok_and(|all| all == committed));
}

/// Issue #13 (commit offset): a commit that arrives while the appends it covers wait
/// behind a truncation is settled when they land, not left at the old offset.
#[test]
fn the_commit_offset_catches_up_when_appends_held_behind_a_truncation_land() {
    let s = Scripted::start();
    let new = ["new3", "new4", "new5"];
    let (branch2, branch3) = s.two_branches(&["a1", "a2"], &["old3"], &new);
    s.follow_leader_2(&branch2, 2);
    let stall = s.leader_3_overrides(2, &branch3[2..], 5);
    stall.release();
    wait_until("node 1 appended leader 3's entries", || {
        s.node.log_state(P0).1 == LogIndex(5) && s.status().durable == LogIndex(5)
    });
    // Every entry holds one record: the offset after entry 5 is 5.
    let expected = Offset(branch3.len() as u64);
    let settled = Duration::from_secs(10);
    wait_within("the commit offset reaches the commit index", settled, || {
        s.status().commit_offset == expected
    });
}

/// A real peer listener bound to node 2's peer address in its own executor: it accepts node
/// 1's link (handshake, frame and batch checks as a node would) and hands every Raft message
/// of P0 to the test. It answers nothing.
struct Capture {
    messages: Receiver<Message>,
    stop: Sender<()>,
    thread: Option<JoinHandle<()>>,
}

impl Capture {
    fn start(s: &Scripted) -> Capture {
        let config = node_config(2, &s.ports, 3, &s.root.path().join("n2"), 1, "");
        let (tx, messages) = crossbeam_channel::unbounded();
        let (stop, stopped) = crossbeam_channel::bounded::<()>(1);
        let (ready_tx, ready_rx) = crossbeam_channel::bounded(1);
        let spec = ExecutorSpec {
            name: "test-capture2".into(),
            cpu: None,
            io_memory_bytes: 512 * 1024,
            spin: false,
        };
        let thread = spawn_executor(spec, move || async move {
            let mut peer = config.to_peer_config(ringlog_net::ShardId(0));
            peer.layout = ringlog_net::peer::ShardLayout { shards: 1, partitions: 1 };
            let addr = config.peer_listen().expect("peer address");
            let (inbox, inbound) = glommio::channels::local_channel::new_bounded(1024);
            let max = config.storage.batch_size_max as usize;
            let check =
                Rc::new(crate::node::replicator_codec::EngineBatchCheck { batch_size_max: max });
            let listener = ringlog_net::transport::PeerListener::bind(addr, peer, check, inbox);
            let _listener = listener.expect("bind node 2's peer address");
            let _ = ready_tx.send(());
            while stopped.try_recv().is_err() {
                let next = glommio::timer::timeout(Duration::from_millis(5), async {
                    Ok(inbound.recv().await)
                });
                if let Ok(Some(inbound)) = next.await {
                    for (partition, message) in inbound.message.into_raft_messages() {
                        if partition == P0 {
                            let _ = tx.send(message);
                        }
                    }
                }
            }
        })
        .expect("executor");
        ready_rx.recv_timeout(WAIT_MAX).expect("capture listener bound");
        Capture { messages, stop, thread: Some(thread) }
    }

    /// Every `Append` entry received so far, as (index, term).
    fn appended(&self, seen: &mut Vec<(LogIndex, Term)>) {
        while let Ok(message) = self.messages.try_recv() {
            if let Message::Append { entries, .. } = message {
                seen.extend(entries.iter().map(|e| (e.index, e.term)));
            }
        }
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        let _ = self.stop.send(());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Makes node 1 leader of the next term: waits for it to pre-campaign, then delivers
/// node `voter`'s granted pre-vote and vote. Returns the term it campaigned for.
fn grant_election(s: &Scripted, voter: u32) -> Term {
    wait_until("node 1 pre-campaigns", || s.status().role == Role::PreCandidate);
    let term = Term(s.status().term.0 + 1);
    s.deliver(voter, Message::PreVoteResponse { term, granted: true });
    let deadline = Instant::now() + Duration::from_secs(2);
    while s.status().role != Role::Candidate && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    s.deliver(voter, Message::VoteResponse { term, granted: true });
    term
}

/// Issue #13 item 6: a new leader whose engine still holds a follower-era truncation's
/// victims (the log worker held) must not send them: every entry it sends has the term its
/// core holds at that index.
#[test]
fn a_new_leader_does_not_send_batches_its_held_truncation_will_remove() {
    let s = Scripted::start();
    let capture = Capture::start(&s);
    let (branch2, branch3) = s.two_branches(&["a1", "a2"], &["old3", "old4"], &["new3"]);
    s.follow_leader_2(&branch2, 2);
    let stall = s.leader_3_overrides(2, &branch3[2..], 2);
    let term = grant_election(&s, 3);
    wait_until("node 1 leads", || s.status().role == Role::Leader);
    // Node 1's core: 1, 2 of term 1 (leader 2), 3 of term 2 (leader 3), its noop 4.
    let core_term = |index: LogIndex| match index.0 {
        1 | 2 => Term(1),
        3 => Term(2),
        _ => term,
    };
    // Node 2 refuses the first probe (it lacks entry 3 of term 2): node 1 backs off to send
    // from 3, where its engine still holds old3 and old4 (term 1), which pass the wire
    // checks (terms do not regress). Node 3 answers heartbeats, so that node 1 keeps
    // leading (CheckQuorum).
    let refused = ringlog_raft::AppendResult::Rejected {
        rejected: LogIndex(3),
        hint_index: LogIndex(2),
        hint_term: Term(1),
    };
    s.deliver(2, Message::AppendResponse { term, result: refused });
    let heard = Message::HeartbeatResponse { term, ctx: 0 };
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_millis(800);
    while Instant::now() < deadline {
        capture.appended(&mut seen);
        s.deliver(3, heard.clone());
        std::thread::sleep(Duration::from_millis(20));
    }
    stall.release();
    wait_until("node 1 sends entries 3 and 4", || {
        capture.appended(&mut seen);
        s.deliver(3, heard.clone());
        [3, 4].iter().all(|&i| seen.iter().any(|&(index, _)| index == LogIndex(i)))
    });
    assert_eq!(s.status().role, Role::Leader, "node 1 led throughout");
    for &(index, entry_term) in &seen {
        assert_eq!(entry_term, core_term(index), "node 1 sent entry {index}: {seen:?}");
    }
}

/// Issue #13 item 9: a follower whose log reset is deferred (waiting for the leader's entry
/// at the new start, which carries the offset) is offered an election it could win; it must
/// not lead (its own noop has no offset) and must not exit; the next leader's entries then
/// apply the reset and it serves them.
#[test]
fn a_follower_with_a_deferred_reset_does_not_take_leadership_and_resets_from_the_next_leader() {
    let s = Scripted::start();
    let (branch2, _) = s.two_branches(&["a1", "a2", "a3"], &[], &[]);
    s.follow_leader_2(&branch2, 2);
    // Leader 2's retention moved its log start to 10: node 1 restarts its log there.
    let membership = ringlog_raft::Membership {
        voters: vec![NodeId(1), NodeId(2), NodeId(3)],
        learners: Vec::new(),
    };
    s.deliver(
        2,
        Message::InstallLogStart {
            term: Term(1),
            start: LogIndex(10),
            prev_term: Term(1),
            commit: LogIndex(9),
            membership,
        },
    );
    wait_until("node 1 took the new log start", || s.status().commit == LogIndex(9));
    grant_election(&s, 2);
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline {
        assert_eq!(s.failure(), None, "node 1 failed");
        assert_ne!(s.status().role, Role::Leader, "node 1 leads with a pending reset");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Leader 3 (term 2) holds the log from 10 on (entries 1..=9 held one record each).
    let entries = s.log_from_10(Term(1), &["b10", "b11"]);
    s.deliver(3, append_message(2, (9, 1), 11, &entries));
    wait_until("node 1 serves leader 3's entries", || {
        s.read_from(9).is_ok_and(|got| got == values_of(&["b10", "b11"]))
    });
    assert_eq!(s.failure(), None);
}

/// Issue #13 item 11: the leader's status and metrics show a follower that reported itself
/// damaged, and one that stays behind without its acknowledged index moving, as such; the
/// `stuck` mark clears once the follower acks again.
#[test]
fn status_shows_a_damaged_follower_and_a_stuck_one_as_the_leader_sees_them() {
    let s = Scripted::start();
    let (branch2, _) = s.two_branches(&["a1", "a2"], &[], &[]);
    s.follow_leader_2(&branch2, 2);
    let term = grant_election(&s, 3);
    wait_until("node 1 leads", || s.status().role == Role::Leader);
    let last = s.status().last_index;
    let accepted = |durable: LogIndex, damaged: bool| Message::AppendResponse {
        term,
        result: ringlog_raft::AppendResult::Accepted { durable, damaged },
    };
    // Node 2 acks everything, then (restarted after losing its disk) acks damaged.
    s.deliver(2, accepted(last, false));
    s.deliver(2, accepted(LogIndex(1), true));
    let follower = |node: u32| {
        let status = s.status();
        let found = status.followers.iter().find(|f| f.node == NodeId(node)).copied();
        found.expect("the leader lists its follower")
    };
    assert!(follower(2).damaged, "node 2 reported itself damaged: {:?}", s.status());
    let snapshot = s.node.call(|core| async move { core.partition(P0).expect("p0").snapshot() });
    let f2 = snapshot.followers.iter().find(|f| f.node == NodeId(2)).expect("node 2");
    assert!(f2.damaged && !snapshot.damaged, "{snapshot:?}");
    // Node 3 answers heartbeats (node 1 keeps leading) but never acks an entry.
    let heard = Message::HeartbeatResponse { term, ctx: 0 };
    assert!(!follower(3).stuck, "not stuck at once");
    let started = Instant::now();
    wait_within("node 3 shown stuck", Duration::from_secs(30), || {
        s.deliver(3, heard.clone());
        follower(3).stuck
    });
    let election_timeout = Duration::from_millis(20 * 2 * 10);
    let stuck_after = election_timeout * crate::node::replicator::FOLLOWER_STUCK_AFTER_ELECTIONS;
    assert!(started.elapsed() >= stuck_after / 2, "stuck too early: {:?}", started.elapsed());
    assert!(follower(3).lag > 0);
    s.deliver(3, accepted(last, false));
    let f3 = follower(3);
    assert!(!f3.stuck && f3.lag == 0 && f3.durable == last, "node 3 caught up: {f3:?}");
}

/// Issue #13 item 1, the reset window: leader 3 (term 2) tells node 1, which holds two
/// never-committed entries of term 1, to restart its log at 10; the core commits through 9
/// at once while the log worker is held before the reset. No read may return the old log.
#[test]
fn a_read_during_a_held_log_reset_returns_nothing_of_the_old_log() {
    let s = Scripted::start();
    let (branch2, _) = s.two_branches(&["a1", "a2"], &["old3", "old4"], &[]);
    s.follow_leader_2(&branch2, 2);
    let stall = stall::arm(&s.partition_dir);
    let membership = ringlog_raft::Membership {
        voters: vec![NodeId(1), NodeId(2), NodeId(3)],
        learners: Vec::new(),
    };
    let install = Message::InstallLogStart {
        term: Term(2),
        start: LogIndex(10),
        prev_term: Term(2),
        commit: LogIndex(9),
        membership,
    };
    s.deliver(3, install);
    wait_until("the log worker holds the reset", || stall.held() == 1);
    assert_eq!(s.status().commit, LogIndex(9), "the core committed through the new start");
    for offset in [0, 2] {
        let got = s.read_from(offset);
        assert!(
            !got.as_ref().is_ok_and(|records| !records.is_empty()),
            "a read from {offset} during the held reset: {got:?}"
        );
    }
    stall.release();
    let entries = s.log_from_10(Term(2), &["b10", "b11"]);
    s.deliver(3, append_message(2, (9, 2), 11, &entries));
    wait_until("node 1 serves leader 3's entries", || {
        s.read_from(9).is_ok_and(|got| got == values_of(&["b10", "b11"]))
    });
    let old = s.read_from(2);
    assert!(old.is_err(), "the old log is gone: {old:?}");
}

// ----- protocol-aware recovery (issue 13): what a restart dropped makes the replica damaged -----

impl TestNode {
    /// `start` that returns the start error instead of panicking.
    fn try_start(config: NodeConfig, partitions: Vec<PartitionId>) -> Result<TestNode, String> {
        let id = config.node_id;
        let (tx, rx) = crossbeam_channel::unbounded::<Command>();
        let (ready_tx, ready_rx) = crossbeam_channel::bounded(1);
        let spec = ExecutorSpec {
            name: format!("test-node{id}"),
            cpu: None,
            io_memory_bytes: 512 * 1024,
            spin: false,
        };
        let config = Arc::new(config);
        let thread = spawn_executor(spec, move || async move {
            let balance_limit =
                Arc::new(TransferLimit::new(config.balance.transfers_per_minute as u32));
            let ctx =
                ShardContext { shard: 0, shards: 1, config, partitions, tls: None, balance_limit };
            match ShardCore::open(ctx).await {
                Ok(core) => {
                    let _ = ready_tx.send(Ok(()));
                    command_loop(core, rx).await;
                }
                Err(e) => drop(ready_tx.send(Err(e.to_string()))),
            }
        })
        .expect("executor");
        match ready_rx.recv_timeout(WAIT_MAX * 2).expect("node ready in time") {
            Ok(()) => Ok(TestNode { commands: tx, thread: Some(thread) }),
            Err(e) => {
                join_within(thread, "failed start");
                Err(e)
            }
        }
    }

    fn is_damaged(&self, p: PartitionId) -> bool {
        self.call(move |core| async move { core.partition(p).expect("partition").is_damaged() })
    }
}

/// `(position, length)` of every batch of a segment file, in order (walks batch headers and
/// padding markers from block 1 until neither is found).
fn batch_positions(segment: &std::path::Path) -> Vec<(u64, u64)> {
    let bytes = std::fs::read(segment).expect("read segment");
    let mut at = 4096usize;
    let mut found = Vec::new();
    while at < bytes.len() {
        if let Ok(header) = ringlog_engine::batch::peek_header(&bytes[at..], 1 << 20) {
            let len = header.length.get() as usize;
            found.push((at as u64, len as u64));
            at += len;
        } else if let Ok(len) = ringlog_engine::batch::peek_padding(&bytes[at..], 1 << 20) {
            at += len;
        } else {
            break;
        }
    }
    found
}

/// The last segment file of partition 0 in a node's data dir.
fn tail_segment(data_dir: &std::path::Path) -> PathBuf {
    let dir = data_dir.join("0");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .expect("partition dir")
        .map(|e| e.expect("entry").file_name().into_string().expect("utf-8"))
        .filter(|n| n.ends_with(".seg") && !n.starts_with("spare") && !n.starts_with("reset"))
        .collect();
    names.sort();
    dir.join(names.last().expect("a segment"))
}

fn flip_byte(path: &std::path::Path, position: u64) {
    use std::os::unix::fs::FileExt;
    let file = std::fs::OpenOptions::new().read(true).write(true).open(path).expect("open");
    let mut byte = [0u8; 1];
    file.read_exact_at(&mut byte, position).expect("read byte");
    byte[0] ^= 0x10;
    file.write_all_at(&byte, position).expect("write byte");
    file.sync_all().expect("sync");
}

#[test]
fn a_follower_whose_acknowledged_tail_batch_rotted_restarts_damaged_and_loses_nothing() {
    // Issue 13 item 3: a flip in an acknowledged batch near a follower's tail was taken for a
    // torn write; the follower came back undamaged and short, and with the old leader down
    // its vote could elect a leader without those records.
    let mut cluster = Cluster::start(3, 1);
    let first = cluster.append_acked(P0, "rot", 40);
    cluster.wait_identical(P0);
    let leader = leader_of(&cluster.nodes, P0);
    let victim = (leader + 1) % 3;
    cluster.kill(victim);
    cluster.kill(leader);
    let segment = tail_segment(&cluster.dirs[victim]);
    let batches = batch_positions(&segment);
    assert!(batches.len() >= 5, "the tail holds batches: {batches:?}");
    let (at, len) = batches[batches.len() - 3];
    flip_byte(&segment, at + len - 2);
    cluster.restart(victim);
    assert!(cluster.node(victim).is_damaged(P0), "a rotted acknowledged tail is damage");
    cluster.restart(leader);
    let second = cluster.append_acked(P0, "after", 10);
    wait_until("the rotted follower is repaired", || !cluster.node(victim).is_damaged(P0));
    cluster.wait_identical(P0);
    for i in 0..3 {
        let read = cluster.node(i).read_all(P0, Consistency::ReplicaCommitted).expect("read");
        assert_eq!(read, [first.clone(), second.clone()].concat(), "node {}", i + 1);
    }
}

#[test]
fn a_flipped_newest_hard_state_slot_makes_the_replica_damaged_until_repaired() {
    // Issue 13 item 2: a replica that voted in a term newer than its log (for a candidate
    // that did not win) has that vote only in its newest hard-state slot. With that slot
    // flipped, the older (term, vote) was loaded undamaged — at the log's last term, so no
    // other check noticed — and the replica could vote twice in that newer term.
    use ringlog_engine::hard_state::{decode_slot, encode_slot};
    let mut cluster = Cluster::start(3, 1);
    let first = cluster.append_acked(P0, "hs", 10);
    cluster.wait_identical(P0);
    let leader = leader_of(&cluster.nodes, P0);
    let victim = (leader + 2) % 3;
    cluster.kill(victim);
    let path = cluster.dirs[victim].join("0").join("hard_state");
    let mut bytes = std::fs::read(&path).expect("hard state");
    let slots: Vec<_> = (0..2).map(|i| decode_slot(&bytes[i * 4096..(i + 1) * 4096])).collect();
    let (newest, (generation, state)) = slots
        .iter()
        .enumerate()
        .filter_map(|(i, s)| s.ok().flatten().map(|v| (i, v)))
        .max_by_key(|(_, (g, _))| *g)
        .expect("a valid slot");
    // The vote this replica cast in term + 1, stored durably in the other slot...
    let voted = ringlog_engine::HardState {
        term: ringlog_engine::Term(state.term.0 + 1),
        vote: Some(ringlog_engine::NodeId(leader as u32 + 1)),
    };
    let other = 1 - newest;
    encode_slot(&voted, generation + 1, &mut bytes[other * 4096..(other + 1) * 4096]);
    std::fs::write(&path, &bytes).expect("write hard state");
    // ... then one bit of it rots.
    flip_byte(&path, other as u64 * 4096 + 24);
    cluster.restart(victim);
    assert!(cluster.node(victim).is_damaged(P0), "a damaged hard-state slot is damage");
    let second = cluster.append_acked(P0, "hs2", 10);
    wait_until("the follower is repaired", || !cluster.node(victim).is_damaged(P0));
    cluster.wait_identical(P0);
    let read = cluster.node(victim).read_all(P0, Consistency::ReplicaCommitted).expect("read");
    assert_eq!(read, [first, second].concat());
}

#[test]
fn a_wiped_follower_whose_first_start_failed_midway_comes_back_damaged() {
    // Issue 13 item 4: `fresh` was decided from an empty directory and `DAMAGED` written only
    // after the log and hard state existed; a first start that died in between (crash, EMFILE,
    // ENOSPC: here a failed fdatasync) left an undamaged, empty replica at term 0.
    let mut cluster = Cluster::start(3, 1);
    let first = cluster.append_acked(P0, "wipe", 20);
    cluster.wait_identical(P0);
    let leader = leader_of(&cluster.nodes, P0);
    let victim = (leader + 1) % 3;
    cluster.kill(victim);
    // Wipe the partition's files (the directory itself stays, as after `rm -rf dir/*`).
    let partition_dir = cluster.dirs[victim].join("0");
    std::fs::remove_dir_all(&partition_dir).expect("wipe");
    std::fs::create_dir(&partition_dir).expect("empty partition dir");
    let mut faults = crate::node::StorageFaults::default();
    faults.add(P0).fail_syncs(1);
    crate::node::replicator::install_storage_faults(&cluster.dirs[victim], Some(faults));
    let config = node_config(
        victim as u32 + 1,
        &cluster.ports,
        cluster.members,
        &cluster.dirs[victim],
        cluster.partitions,
        &cluster.storage_extra,
    );
    let failed = TestNode::try_start(config, vec![P0]);
    crate::node::replicator::install_storage_faults(&cluster.dirs[victim], None);
    assert!(failed.is_err(), "the first start must fail on the injected fdatasync");
    assert!(
        std::fs::read_dir(&partition_dir).expect("dir").next().is_some(),
        "the failed start left files behind"
    );
    cluster.restart(victim);
    assert!(cluster.node(victim).is_damaged(P0), "a half-created partition dir is damage");
    let second = cluster.append_acked(P0, "wipe2", 10);
    wait_until("the follower is repaired", || !cluster.node(victim).is_damaged(P0));
    cluster.wait_identical(P0);
    let read = cluster.node(victim).read_all(P0, Consistency::ReplicaCommitted).expect("read");
    assert_eq!(read, [first, second].concat());
}

impl Cluster {
    /// `append_acked` with values of `size` bytes (the tag, then filler).
    fn append_acked_sized(
        &self,
        p: PartitionId,
        tag: &str,
        count: usize,
        size: usize,
    ) -> Vec<Vec<u8>> {
        let mut acked = Vec::new();
        for k in 0..count {
            let mut value = format!("{tag}-{k}-").into_bytes();
            value.resize(size, b'a' + (k % 26) as u8);
            let deadline = Instant::now() + WAIT_MAX;
            loop {
                let leader = leader_of(&self.nodes, p);
                match self.node(leader).append(p, Acks::Quorum, vec![value.clone()]) {
                    Ok(_) => break acked.push(value),
                    // Timeout: the leader stepped down with it pending (outcome unknown);
                    // a retry may append it twice, which these tests allow.
                    Err(
                        NodeError::NotLeader { .. }
                        | NodeError::Backpressure { .. }
                        | NodeError::Timeout,
                    ) => {
                        assert!(Instant::now() < deadline, "append {k} never accepted");
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    Err(e) => panic!("append {k} failed: {e}"),
                }
            }
        }
        acked
    }
}

/// The first (sealed, once the log rolled) segment file of partition 0 in a node's data dir.
fn first_segment(data_dir: &std::path::Path) -> PathBuf {
    let dir = data_dir.join("0");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .expect("partition dir")
        .map(|e| e.expect("entry").file_name().into_string().expect("utf-8"))
        .filter(|n| ringlog_engine::segment::parse_segment_name(n).is_some())
        .collect();
    names.sort();
    assert!(names.len() >= 2, "the log rolled: {names:?}");
    dir.join(&names[0])
}

/// Reads partition 0 on node `i` until every acked value comes back (a read that meets the
/// corrupt batch fails; the replica then repairs itself and a later read succeeds).
fn wait_reads_all(cluster: &Cluster, i: usize, acked: &[Vec<u8>]) {
    let mut last = None;
    wait_until("a full, correct read after the repair", || {
        match cluster.node(i).read_all(P0, Consistency::ReplicaCommitted) {
            Ok(read) if read == acked => true,
            other => {
                last = Some(other.map(|r| r.len()));
                false
            }
        }
    });
    let _ = last;
}

fn rot_sealed_segment(cluster: &mut Cluster, victim: usize) {
    cluster.kill(victim);
    let segment = first_segment(&cluster.dirs[victim]);
    let batches = batch_positions(&segment);
    let (at, len) = batches[batches.len() / 2];
    flip_byte(&segment, at + len / 2);
    cluster.restart(victim);
}

#[test]
fn a_follower_reading_a_rotted_sealed_segment_restarts_damaged_and_is_repaired() {
    // Issue 13 item 8: a checksum failure found at run time (recovery trusts sealed segments
    // through their index) was an internal error forever: the replica kept voting and
    // counting and never repaired the range. (Scrub off: the read finds it.)
    let mut cluster = Cluster::start_with(3, 0, 1, SCRUB_OFF);
    let acked = cluster.append_acked_sized(P0, "seal", 200, 8 << 10);
    cluster.wait_identical(P0);
    let leader = leader_of(&cluster.nodes, P0);
    let victim = (leader + 1) % 3;
    rot_sealed_segment(&mut cluster, victim);
    assert!(!cluster.node(victim).is_damaged(P0), "recovery trusts the sealed segment's index");
    let (_, last, _) = cluster.node(leader).log_state(P0);
    wait_until("the restarted follower learns the commit", || {
        cluster.node(victim).log_state(P0).0 >= last
    });
    let err = cluster.node(victim).read_all(P0, Consistency::ReplicaCommitted);
    assert!(
        err.is_err(),
        "the corrupt batch is refused, never returned: {:?}",
        err.map(|r| r.len())
    );
    let more = cluster.append_acked(P0, "after", 5);
    let all = [acked, more].concat();
    wait_reads_all(&cluster, victim, &all);
    wait_until("the follower is repaired", || !cluster.node(victim).is_damaged(P0));
    cluster.wait_identical(P0);
}

#[test]
fn a_leader_reading_a_rotted_sealed_segment_steps_down_and_is_repaired_by_the_next_leader() {
    let mut cluster = Cluster::start_with(3, 0, 1, SCRUB_OFF);
    let acked = cluster.append_acked_sized(P0, "seal", 200, 8 << 10);
    cluster.wait_identical(P0);
    let leader = leader_of(&cluster.nodes, P0);
    let (_, last, _) = cluster.node(leader).log_state(P0);
    rot_sealed_segment(&mut cluster, leader);
    // Whoever leads now: a read of the whole log on the node whose copy rotted, once it knows
    // the commit again.
    wait_until("the restarted node learns the commit", || {
        cluster.node(leader).log_state(P0).0 >= last
    });
    let err = cluster.node(leader).read_all(P0, Consistency::ReplicaCommitted);
    assert!(err.is_err(), "the corrupt batch is refused: {:?}", err.map(|r| r.len()));
    let more = cluster.append_acked(P0, "after", 5);
    let all = [acked, more].concat();
    for i in 0..3 {
        wait_reads_all(&cluster, i, &all);
    }
    wait_until("the rotted replica is repaired", || !cluster.node(leader).is_damaged(P0));
    cluster.wait_identical(P0);
}

const SCRUB_OFF: &str = "scrub_bytes_per_sec = 0\n";

#[test]
fn the_scrub_finds_rot_in_a_sealed_segment_nobody_reads_and_the_leader_repairs_it() {
    // Rot in a sealed segment that no reader or sender touches stayed latent until a second
    // fault needed the range (a wiped follower to catch up from this replica): two impaired
    // replicas of three, and the group stuck. The scrub finds it while the group is healthy.
    let mut cluster = Cluster::start_with(3, 0, 1, "scrub_bytes_per_sec = 104857600\n");
    let acked = cluster.append_acked_sized(P0, "scrub", 200, 8 << 10);
    cluster.wait_identical(P0);
    let leader = leader_of(&cluster.nodes, P0);
    let victim = (leader + 1) % 3;
    rot_sealed_segment(&mut cluster, victim);
    wait_until("the scrub finds the rot", || cluster.node(victim).is_damaged(P0));
    let more = cluster.append_acked(P0, "after", 5);
    wait_until("the follower is repaired", || !cluster.node(victim).is_damaged(P0));
    cluster.wait_identical(P0);
    wait_reads_all(&cluster, victim, &[acked, more].concat());
}

/// The read path's term check (`core_held_prefix`): a committed read never serves a batch
/// whose term is not the core's at its index (a stale entry an earlier leader wrote).
#[test]
fn a_committed_read_is_cut_before_a_batch_the_core_does_not_hold() {
    use crate::node::replicator::core_held_prefix;
    let batch = |index: u64, term: u64| {
        stamped_batch(Term(term), LogIndex(index), &[format!("r{index}").into_bytes()])
    };
    // The core's log: indices 5..=9, term 1 through 6, term 2 from 7 on.
    let term_at = |index: LogIndex| match index.0 {
        5..=6 => Some(Term(1)),
        7..=9 => Some(Term(2)),
        _ => None,
    };
    let max = 1 << 20;
    let start = LogIndex(5);
    let good = [batch(5, 1), batch(6, 1), batch(7, 2), batch(8, 2)];
    assert_eq!(core_held_prefix(&good, max, start, term_at), 4);
    // Index 7 holds term 1 on the engine (the deposed leader's entry), term 2 in the core.
    let stale = [batch(5, 1), batch(6, 1), batch(7, 1), batch(8, 1)];
    assert_eq!(core_held_prefix(&stale, max, start, term_at), 2);
    // A batch past the core's last index is not served either.
    assert_eq!(core_held_prefix(&[batch(9, 2), batch(10, 2)], max, start, term_at), 1);
    // Below the core's log start: committed, kept.
    assert_eq!(core_held_prefix(&[batch(3, 1), batch(4, 1), batch(5, 1)], max, start, term_at), 3);
    // Bytes that do not decode are not served.
    assert_eq!(
        core_held_prefix(&[batch(5, 1), Bytes::from_static(b"junk")], max, start, term_at),
        1
    );
}

// ----- docs/format.md "Recovery outcomes": the engine and the node's damage rule, real files -----
//
// The simulator's test of the same rows is raft/sim/tests/recovery_table.rs; both parse the
// table with `ringlog_sim::recovery_table` and key their cases on the rows' first cells.

use ringlog_sim::recovery_table::{self, LogFacts};

const ROW_CLEAN_END: &str = "a clean end";
const ROW_BYTES_AFTER_TAIL: &str = "non-zero bytes after the last valid batch of the tail";
const ROW_INVALID_THEN_VALID: &str = "an invalid batch followed by valid data";
const ROW_BAD_SLOT: &str = "a hard-state file with any bad slot, even if the other is valid";
const ROW_EMPTY_DIR: &str = "an empty or half-created partition directory";
const ROW_DAMAGED_MARK: &str = "the persistent damaged mark";
const ROW_CASES: [&str; 6] = [
    ROW_CLEAN_END,
    ROW_BYTES_AFTER_TAIL,
    ROW_INVALID_THEN_VALID,
    ROW_BAD_SLOT,
    ROW_EMPTY_DIR,
    ROW_DAMAGED_MARK,
];

impl TestNode {
    /// (damaged, log's last index, log's last term, core's (term, vote)) of partition `p`.
    fn recovered(&self, p: PartitionId) -> (bool, u64, u64, (u64, Option<u32>)) {
        self.call(move |core| async move {
            let r = core.partition(p).expect("partition");
            let hs = r.raft_hard_state();
            (
                r.is_damaged(),
                r.log().last_index().0,
                r.log().last_term().0,
                (hs.term.0, hs.vote.map(|v| v.0)),
            )
        })
    }
}

/// The newest valid slot of a hard-state file as (term, vote) (`None`: none is valid).
fn newest_valid_slot(path: &std::path::Path) -> Option<(u64, Option<u32>)> {
    use ringlog_engine::hard_state::decode_slot;
    let bytes = std::fs::read(path).ok()?;
    (0..2)
        .filter_map(|i| decode_slot(bytes.get(i * 4096..(i + 1) * 4096)?).ok().flatten())
        .max_by_key(|(generation, _)| *generation)
        .map(|(_, s)| (s.term.0, s.vote.map(|v| v.0)))
}

/// Index of the slot (0 or 1) with the highest generation, and whether the other is valid.
fn newest_slot_position(path: &std::path::Path) -> (usize, bool) {
    use ringlog_engine::hard_state::decode_slot;
    let bytes = std::fs::read(path).expect("hard state");
    let slots: Vec<_> = (0..2).map(|i| decode_slot(&bytes[i * 4096..(i + 1) * 4096])).collect();
    let generation = |i: usize| slots[i].as_ref().ok().and_then(|s| s.map(|(g, _)| g));
    let newest = if generation(1) > generation(0) { 1 } else { 0 };
    (newest, generation(1 - newest).is_some())
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).expect("create dir");
    for entry in std::fs::read_dir(from).expect("read dir") {
        let entry = entry.expect("entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy");
        }
    }
}

/// One case of a row: a name, the fault made in the partition dir of a copy of the stopped
/// replica's data dir, and what the case knows of the log it damaged.
struct RowCase {
    name: &'static str,
    fault: Box<dyn Fn(&std::path::Path)>,
    /// The first entry the fault makes invalid (`None`: none).
    first_bad: Option<u64>,
    /// The log is gone (written last = nothing).
    wiped: bool,
    /// The first start after the fault fails midway (an injected fdatasync failure), as a
    /// crash during it would.
    first_start_fails: bool,
}

/// (position, length, index) of every batch of the tail segment.
fn tail_batches(data_dir: &std::path::Path) -> Vec<(u64, u64, u64)> {
    let segment = tail_segment(data_dir);
    let bytes = std::fs::read(&segment).expect("segment");
    batch_positions(&segment)
        .into_iter()
        .map(|(at, len)| {
            let header = ringlog_engine::batch::peek_header(&bytes[at as usize..], 1 << 20)
                .expect("a batch header");
            (at, len, header.index.get())
        })
        .collect()
}

fn row_cases(key: &str, data_dir: &std::path::Path, last: u64) -> Vec<RowCase> {
    let batches = tail_batches(data_dir);
    let case = |name, fault: Box<dyn Fn(&std::path::Path)>, first_bad| RowCase {
        name,
        fault,
        first_bad,
        wiped: false,
        first_start_fails: false,
    };
    let wipe = |dir: &std::path::Path| {
        std::fs::remove_dir_all(dir).expect("wipe");
        std::fs::create_dir(dir).expect("empty partition dir");
    };
    match key {
        ROW_CLEAN_END => {
            vec![case("kill -9, nothing after the last flush", Box::new(|_| {}), None)]
        }
        ROW_BYTES_AFTER_TAIL => {
            let &(at, len, _) = batches.last().expect("a batch");
            // Garbage from the block after the last flush (a torn write of the next one).
            let garbage_at = (at + len).div_ceil(4096) * 4096;
            let garbage = Box::new(move |dir: &std::path::Path| {
                use std::os::unix::fs::FileExt;
                let segment = tail_segment(dir.parent().expect("data dir"));
                let file = std::fs::OpenOptions::new().write(true).open(segment).expect("open");
                file.write_all_at(&[0xa5; 64], garbage_at).expect("write garbage");
                file.sync_all().expect("sync");
            });
            let &(flip_at, flip_len, flip_index) = batches.last().expect("a batch");
            let flip = Box::new(move |dir: &std::path::Path| {
                flip_byte(&tail_segment(dir.parent().expect("data dir")), flip_at + flip_len - 2)
            });
            vec![
                case("non-zero bytes after the last batch", garbage, Some(last + 1)),
                case("a flip in the last batch", flip, Some(flip_index)),
            ]
        }
        ROW_INVALID_THEN_VALID => {
            let &(at, len, index) = &batches[batches.len() / 2];
            assert!(index < last, "valid batches follow the flipped one");
            let flip = Box::new(move |dir: &std::path::Path| {
                flip_byte(&tail_segment(dir.parent().expect("data dir")), at + len - 2)
            });
            vec![case("a flip in a middle batch", flip, Some(index))]
        }
        ROW_BAD_SLOT => {
            let flip_slot = |newest: bool| -> Box<dyn Fn(&std::path::Path)> {
                Box::new(move |dir: &std::path::Path| {
                    let path = dir.join("hard_state");
                    let (position, _) = newest_slot_position(&path);
                    let slot = if newest { position } else { 1 - position };
                    flip_byte(&path, slot as u64 * 4096 + 24);
                })
            };
            vec![
                case("a flip in the newest slot", flip_slot(true), None),
                case("a flip in the older slot", flip_slot(false), None),
            ]
        }
        ROW_EMPTY_DIR => {
            let wiped = |name, first_start_fails| RowCase {
                name,
                fault: Box::new(wipe),
                first_bad: None,
                wiped: true,
                first_start_fails,
            };
            let only_mark = Box::new(move |dir: &std::path::Path| {
                wipe(dir);
                crate::node::replicator_meta::mark_damaged(dir).expect("mark");
            });
            vec![
                wiped("a wiped partition dir", false),
                RowCase { wiped: true, ..case("a crash right after the mark", only_mark, None) },
                wiped("a first start after a wipe that failed midway", true),
            ]
        }
        ROW_DAMAGED_MARK => vec![case(
            "the mark left by an earlier recovery",
            Box::new(|dir| crate::node::replicator_meta::mark_damaged(dir).expect("mark")),
            None,
        )],
        other => panic!("no case for `{other}`"),
    }
}

#[test]
fn every_recovery_outcome_row_holds_for_real_files() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/format.md");
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {path}: {e}"));
    let rows = recovery_table::parse(&text).unwrap_or_else(|e| panic!("{path}: {e}"));
    recovery_table::check_cases(&rows, &ROW_CASES).unwrap_or_else(|e| panic!("{e}"));

    // A replica's log and hard state, made by a real cluster; then every node stops.
    let mut cluster = Cluster::start(3, 1);
    cluster.append_acked(P0, "row", 24);
    cluster.wait_identical(P0);
    let leader = leader_of(&cluster.nodes, P0);
    let victim = (leader + 1) % 3;
    let (_, last, _) = cluster.node(victim).log_state(P0);
    for i in 0..3 {
        cluster.kill(i);
    }
    let source = cluster.dirs[victim].clone();
    let root = tempfile::tempdir().expect("tempdir");
    let mut failures = Vec::new();
    let mut checked = 0;
    for row in &rows {
        for case in row_cases(&row.key, &source, last.0) {
            // A copy of the stopped replica's files, the row's fault made in it, then the
            // replica restarts alone (its peers are down: nothing repairs it meanwhile).
            checked += 1;
            let data_dir = root.path().join(format!("case{checked}"));
            copy_dir(&source, &data_dir);
            let partition_dir = data_dir.join("0");
            (case.fault)(&partition_dir);
            let newest_valid = newest_valid_slot(&partition_dir.join("hard_state"));
            let config = || {
                node_config(
                    victim as u32 + 1,
                    &cluster.ports,
                    cluster.members,
                    &data_dir,
                    cluster.partitions,
                    &cluster.storage_extra,
                )
            };
            if case.first_start_fails {
                let mut faults = crate::node::StorageFaults::default();
                faults.add(P0).fail_syncs(1);
                crate::node::replicator::install_storage_faults(&data_dir, Some(faults));
                let failed = TestNode::try_start(config(), vec![P0]);
                crate::node::replicator::install_storage_faults(&data_dir, None);
                assert!(failed.is_err(), "{}: the first start must fail", case.name);
                assert!(
                    std::fs::read_dir(&partition_dir).expect("dir").next().is_some(),
                    "{}: the failed start left files behind",
                    case.name
                );
            }
            let node = TestNode::start(config(), vec![P0]);
            let (damaged, got_last, last_term, hard_state) = node.recovered(P0);
            node.stop(ShutdownMode::Immediate);
            let facts = LogFacts {
                written_last: if case.wiped { 0 } else { last.0 },
                first_bad: case.first_bad,
                start_prev: 0,
            };
            let expected_last = row
                .log
                .expected_last(facts)
                .unwrap_or_else(|e| panic!("row `{}`, case {}: {e}", row.key, case.name));
            let expected_hs =
                row.hard_state.expected(if case.wiped { None } else { newest_valid }, last_term);
            if got_last != expected_last || damaged != row.damaged || hard_state != expected_hs {
                failures.push(format!(
                    "row `{}`, case {}: log last {got_last} (row: {:?} -> {expected_last}), \
                     damaged {damaged} (row: {}), hard state {hard_state:?} (row: {:?} -> \
                     {expected_hs:?})",
                    row.key, case.name, row.log, row.damaged, row.hard_state
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "the engine and node disagree with the table:\n{}",
        failures.join("\n")
    );
    assert!(checked > rows.len());
}
