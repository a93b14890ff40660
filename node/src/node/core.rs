//! ShardCore: the replication side of one shard — every partition's `PartitionReplicator`,
//! the shard's peer listener and links, and the tasks that drive them.
//!
//! Task queues (glommio, one executor per shard):
//! - `latency` (`Latency::Matters`, high shares): the Raft tick loop (ticks, heartbeats,
//!   elections), the inbound peer dispatch, every peer link and accepted connection, the
//!   durability watchers (acks), the hard-state writer, the log worker (appends,
//!   truncations) and the senders of fresh entries. None of them waits on anything but its
//!   own IO, so a stalled disk never delays a heartbeat.
//! - `catch_up` (`Latency::NotImportant`, the same shares as the latency queue and the client
//!   commands): catch-up streaming (entries already committed, to a follower behind or being
//!   repaired). Its shares are its guaranteed part of the shard under any load: with every
//!   queue busy it runs at least `CATCH_UP_SHARES` / (sum of the shares) of the time, and
//!   sending a committed entry costs the leader far less than taking a produce, so a follower
//!   catches up faster than writers append (`g_a_wiped_follower_is_repaired_within_the_bound_
//!   while_writers_keep_the_leader_busy` in tests/cluster/storage_faults.rs). It was on the
//!   bulk queue (100 shares): under writers it got ~5% of the shard and a wiped follower's
//!   repair never finished.
//! - `bulk` (`Latency::NotImportant`, low shares): commit-offset lookups, retention, scrub.
//! - The engine's flushers and preallocators run where `Log::open` put them (the default
//!   queue of the shard).
//!
//! Peers: shard `s` of this node connects to shard `s` of every other node at its peer
//! port + `s` (`PeerLink`, one per remote node, shared by the shard's partitions) and accepts
//! on its own peer port + `s`; the handshake carries cluster id, shard, the shard/partition
//! layout (refused if different) and whether the shard is pristine (no Raft history).
//!
//! Wiped-disk rule (matches ringlog-sim: bootstrap membership + damaged): a partition whose
//! data dir is empty at start is damaged and may neither vote nor count toward a quorum,
//! until either a leader repairs it (a wiped member: `Action::Repaired`) or every other
//! configured voter reported a pristine shard in a handshake (a brand-new cluster: nobody
//! has ever voted or stored an entry, so nothing can have been lost). A new cluster therefore
//! elects its first leaders once every configured node is up.
//!
//! Invariants: everything here runs on the shard's executor (`Rc`, no locks); the fatal
//! signal fires once per shard with the first latched storage error.

#![forbid(unsafe_code)]

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use glommio::{Latency, Shares, Task, TaskQueueHandle};
use ringlog_net::peer::{PeerMessage, ShardLayout};
use ringlog_net::transport::{Inbound, PeerListener};
use ringlog_net::{PartitionId, ShardId};
use ringlog_raft::NodeId;

use crate::config::NodeConfig;
use crate::node::addresses::{shard_addr, AddressBook};
use crate::node::api::{NodeError, NodeStartError, ShardSnapshot, ShutdownMode};
use crate::node::balance::{BalanceSettings, Decision, TransferLimit, BALANCE_INTERVAL};
use crate::node::peers::Peers;
use crate::node::replicator_codec::EngineBatchCheck;
use ringlog_engine::notify::Notify;

use crate::node::replicator_wait::within;

pub(crate) use crate::node::replicator::PartitionReplicator;

/// Inbound peer messages waiting for the dispatcher; a full inbox stops reading the
/// connections (TCP backpressure).
/// Shares of the latency queue (Raft ticks, peer IO, log worker, fresh sends).
const LATENCY_SHARES: usize = 1000;
/// Shares of the catch-up queue: the same as the latency queue and the client commands
/// (glommio's default, 1000), its guaranteed part of a busy shard (module docs).
const CATCH_UP_SHARES: usize = 1000;
/// Shares of the bulk queue (lookups, retention, scrub): what is left when the shard is busy.
const BULK_SHARES: usize = 100;
const INBOX_CAPACITY: usize = ringlog_net::limits::INBOX_CAPACITY;
/// How often retention runs when it is configured.
const RETENTION_INTERVAL: Duration = Duration::from_secs(5);
/// Pause between two scrub passes over a shard's partitions.
const SCRUB_PASS_PAUSE: Duration = Duration::from_secs(1);
/// Graceful shutdown: longest wait for led partitions to hand leadership over.
const TRANSFER_WAIT_MAX: Duration = Duration::from_secs(5);
/// Graceful shutdown: longest wait for links to write what they hold.
const LINK_DRAIN_WAIT_MAX: Duration = Duration::from_millis(500);

/// What a shard main passes to `ShardCore::open`.
pub(crate) struct ShardContext {
    pub shard: usize,
    pub shards: usize,
    pub config: Arc<NodeConfig>,
    /// The partitions this shard owns.
    pub partitions: Vec<PartitionId>,
    /// `[tls]`, built once per node: every shard shares it, so a reloaded certificate
    /// (`NodeHandle::tls`, SIGHUP) reaches every listener and link. `None`: plaintext.
    pub tls: Option<Arc<ringlog_net::tls::TlsConfig>>,
    /// The node-wide bound on leader-balancing transfers (`balance.transfers_per_minute`),
    /// shared by every shard of the node.
    pub balance_limit: Arc<TransferLimit>,
}

/// What every replicator of the shard shares.
pub(crate) struct ShardShared {
    pub node: NodeId,
    pub shard: usize,
    pub config: Arc<NodeConfig>,
    pub peers: Peers,
    latency: TaskQueueHandle,
    catch_up: TaskQueueHandle,
    bulk: TaskQueueHandle,
    fatal: RefCell<Option<NodeError>>,
    fatal_notify: Notify,
}

impl ShardShared {
    pub(crate) fn spawn_latency(&self, future: impl std::future::Future<Output = ()> + 'static) {
        glommio::spawn_local_into(future, self.latency).expect("latency queue exists").detach();
    }

    pub(crate) fn spawn_catch_up(&self, future: impl std::future::Future<Output = ()> + 'static) {
        glommio::spawn_local_into(future, self.catch_up).expect("catch-up queue exists").detach();
    }

    pub(crate) fn spawn_bulk(&self, future: impl std::future::Future<Output = ()> + 'static) {
        glommio::spawn_local_into(future, self.bulk).expect("bulk queue exists").detach();
    }

    pub(crate) fn set_fatal(&self, error: NodeError) {
        let mut fatal = self.fatal.borrow_mut();
        if fatal.is_none() {
            *fatal = Some(error);
            drop(fatal);
            self.fatal_notify.notify_all();
        }
    }
}

/// One shard's replication core (see the module docs).
pub(crate) struct ShardCore {
    shared: Rc<ShardShared>,
    /// Emptied by `shutdown` (the logs are closed then).
    partitions: RefCell<Vec<Rc<PartitionReplicator>>>,
    peer_addr: SocketAddr,
    pristine: Arc<std::sync::atomic::AtomicBool>,
    listener: RefCell<Option<PeerListener>>,
    tasks: RefCell<Vec<Task<()>>>,
    /// A stop began (`hand_off` or `shutdown`); `shutdown` runs once.
    stopping: Cell<bool>,
    /// An immediate stop cut a graceful hand-off short.
    cut_short: Cell<bool>,
    /// The logs are being closed: the tick, inbound, scrub and retention tasks end. Set only
    /// after a graceful hand-off, so the replicas keep hearing their peers (acknowledgements,
    /// the new leader's term) while they hand leadership over.
    closed: Cell<bool>,
    /// `[tls]`, built once at open: the peer transport's and the client server's.
    tls: Option<Arc<ringlog_net::tls::TlsConfig>>,
    /// A graceful hand-off began: the leader balancer moves nothing any more.
    handing_off: Cell<bool>,
}

impl std::fmt::Debug for ShardCore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardCore").field("shard", &self.shared.shard).finish()
    }
}

/// A failed open closes the partitions it opened (their logs release their data dir locks)
/// before reporting `error`. Dropping them instead left each log's background tasks to
/// release it later, which an executor ending at once never let them do: the retried start
/// found its own data dir `Locked`, for good.
async fn close_opened(
    partitions: Vec<Rc<PartitionReplicator>>,
    error: NodeStartError,
) -> NodeStartError {
    for opened in partitions {
        let partition = opened.partition_id();
        if let Err(close) = PartitionReplicator::close_log(opened, ShutdownMode::Immediate).await {
            tracing::warn!(%partition, %close, "closing a log after a failed start");
        }
    }
    error
}

impl ShardCore {
    /// Opens logs + hard state (recovery), builds replicas, binds the shard's peer listener,
    /// spawns the tick / peer / durability tasks in their task queues. Returns once ready.
    pub async fn open(ctx: ShardContext) -> Result<Rc<ShardCore>, NodeStartError> {
        let config = ctx.config.clone();
        let node = NodeId(config.node_id);
        let executor = glommio::executor();
        let latency = executor.create_task_queue(
            Shares::Static(LATENCY_SHARES),
            Latency::Matters(Duration::from_millis(1)),
            "ringlog-raft",
        );
        let catch_up = executor.create_task_queue(
            Shares::Static(CATCH_UP_SHARES),
            Latency::NotImportant,
            "ringlog-catch-up",
        );
        let bulk = executor.create_task_queue(
            Shares::Static(BULK_SHARES),
            Latency::NotImportant,
            "ringlog-bulk",
        );
        let mut peer_config = config.to_peer_config(ShardId(ctx.shard as u16));
        peer_config.layout =
            ShardLayout { shards: ctx.shards as u16, partitions: config.partitions as u32 };
        peer_config.task_queue = Some(latency);
        // `[tls]`: mutual TLS on peer links and the peer listener (validated at load; read
        // again by `Node::start`, so a file that vanished since is a start error, never
        // plaintext).
        let tls = ctx.tls.clone();
        peer_config.tls = tls.clone();
        if let (0, Some(warning)) = (ctx.shard, config.plaintext_warning()) {
            tracing::warn!(node = %node, "{warning}");
        }
        let pristine = peer_config.pristine.clone();
        let book = AddressBook::from_config(&config);
        let peers = Peers::new(node, ctx.shard, peer_config.clone(), book);
        let shared = Rc::new(ShardShared {
            node,
            shard: ctx.shard,
            config: config.clone(),
            peers,
            latency,
            catch_up,
            bulk,
            fatal: RefCell::new(None),
            fatal_notify: Notify::default(),
        });
        let mut partitions = Vec::with_capacity(ctx.partitions.len());
        for &partition in &ctx.partitions {
            match PartitionReplicator::open(shared.clone(), partition).await {
                Ok(opened) => partitions.push(opened),
                Err(error) => return Err(close_opened(partitions, error).await),
            }
        }
        partitions.sort_by_key(|r| r.partition_id());
        pristine.store(partitions.iter().all(|r| r.pristine()), Ordering::Relaxed);
        let Some(listen) = config.peer_listen() else {
            let error = NodeStartError::Config("no peer address for this node".into());
            return Err(close_opened(partitions, error).await);
        };
        let listen = shard_addr(listen, ctx.shard);
        let (inbox_tx, inbox_rx) = glommio::channels::local_channel::new_bounded(INBOX_CAPACITY);
        let check =
            Rc::new(EngineBatchCheck { batch_size_max: config.storage.batch_size_max as usize });
        let listener = match PeerListener::bind(listen, peer_config, check, inbox_tx) {
            Ok(listener) => listener,
            Err(e) => {
                let error = NodeStartError::Listen { addr: listen, reason: e.to_string() };
                return Err(close_opened(partitions, error).await);
            }
        };
        let peer_addr = listener.local_addr();
        let mut peers_wanted: Vec<NodeId> = config.peers.iter().map(|p| NodeId(p.id)).collect();
        peers_wanted.retain(|&n| n != node);
        shared.peers.ensure(peers_wanted);
        let core = Rc::new(ShardCore {
            shared: shared.clone(),
            partitions: RefCell::new(partitions),
            peer_addr,
            pristine,
            listener: RefCell::new(Some(listener)),
            tasks: RefCell::new(Vec::new()),
            stopping: Cell::new(false),
            cut_short: Cell::new(false),
            closed: Cell::new(false),
            tls: tls.clone(),
            handing_off: Cell::new(false),
        });
        for r in core.list() {
            r.start();
        }
        let mut tasks = Vec::new();
        let me = core.clone();
        tasks.push(
            glommio::spawn_local_into(async move { me.run_ticks().await }, latency).expect("queue"),
        );
        let me = core.clone();
        tasks.push(
            glommio::spawn_local_into(async move { me.run_inbound(inbox_rx).await }, latency)
                .expect("queue"),
        );
        if config.storage.retention_bytes_max.is_some()
            || config.storage.retention_age_max_secs.is_some()
        {
            let me = core.clone();
            tasks.push(
                glommio::spawn_local_into(async move { me.run_retention().await }, bulk)
                    .expect("queue"),
            );
        }
        let scrub_rate = config.storage.scrub_bytes_per_sec;
        if scrub_rate > 0 {
            let me = core.clone();
            tasks.push(
                glommio::spawn_local_into(async move { me.run_scrub(scrub_rate).await }, bulk)
                    .expect("queue"),
            );
        }
        let balance = config.to_balance_settings();
        if balance.enabled {
            let me = core.clone();
            let limit = ctx.balance_limit.clone();
            tasks.push(
                glommio::spawn_local_into(
                    async move { me.run_balance(balance, limit).await },
                    bulk,
                )
                .expect("queue"),
            );
        }
        *core.tasks.borrow_mut() = tasks;
        tracing::info!(%node, shard = ctx.shard, %peer_addr, partitions = core.list().len(), "shard core ready");
        Ok(core)
    }

    pub fn peer_addr(&self) -> SocketAddr {
        self.peer_addr
    }

    /// `[tls]` as built at open (`None`: plaintext); the client server uses it too.
    pub(crate) fn tls(&self) -> Option<Arc<ringlog_net::tls::TlsConfig>> {
        self.tls.clone()
    }

    pub fn partition(&self, p: PartitionId) -> Option<Rc<PartitionReplicator>> {
        let partitions = self.partitions.borrow();
        let at = partitions.binary_search_by_key(&p, |r| r.partition_id()).ok()?;
        Some(partitions[at].clone())
    }

    fn list(&self) -> Vec<Rc<PartitionReplicator>> {
        self.partitions.borrow().clone()
    }

    pub fn snapshot(&self) -> ShardSnapshot {
        let (frames, bytes) = self.shared.peers.queued();
        let listener = self.listener.borrow().as_ref().map(|l| l.stats()).unwrap_or_default();
        ShardSnapshot {
            shard: self.shared.shard,
            peer_queue_frames: frames,
            peer_queue_bytes: bytes,
            rejected_inputs: vec![
                ("peer_handshake_refused".into(), listener.refused),
                ("peer_malformed".into(), listener.malformed),
                ("peer_queue_full_dropped".into(), self.shared.peers.dropped()),
            ],
            peer_rtt_us: self.shared.peers.rtt(),
            partitions: self.list().iter().map(|r| r.snapshot()).collect(),
            ..ShardSnapshot::default()
        }
    }

    /// Peer connections this shard accepted that have closed since it started.
    pub fn peer_connections_closed(&self) -> u64 {
        let listener = self.listener.borrow().as_ref().map(|l| l.stats()).unwrap_or_default();
        listener.accepted.saturating_sub(listener.open)
    }

    /// The first step of a stop: no new peer connection is accepted (those served stay).
    /// Graceful: hand the leadership of led partitions to an up-to-date follower and wait
    /// (bounded by `TRANSFER_WAIT_MAX`) until this node stepped down, then (bounded by
    /// `LINK_DRAIN_WAIT_MAX`) until the links wrote what they hold. The replicas keep running
    /// meanwhile, so producers waiting here get their true outcome (committed under the new
    /// leader, or `NotLeader` when truncated). Immediate: cuts a hand-off in progress short.
    pub async fn hand_off(&self, mode: ShutdownMode) {
        if let Some(listener) = self.listener.borrow().as_ref() {
            listener.stop_accepting();
        }
        self.handing_off.set(true);
        if mode == ShutdownMode::Immediate {
            self.cut_short.set(true);
            return;
        }
        if self.stopping.get() {
            return;
        }
        let mut handing_over = Vec::new();
        for r in self.list() {
            if let (true, Some(to)) = (r.is_leader(), r.best_follower()) {
                let result = r.transfer_leadership(to);
                tracing::info!(partition = %r.partition_id(), %to, ?result, "handing leadership over");
                if result.is_ok() {
                    handing_over.push(r);
                }
            }
        }
        let deadline = Instant::now() + TRANSFER_WAIT_MAX;
        while handing_over.iter().any(|r| r.is_leader() && r.failure().is_none())
            && Instant::now() < deadline
            && !self.cut_short.get()
        {
            glommio::timer::sleep(Duration::from_millis(5)).await;
        }
        let deadline = Instant::now() + LINK_DRAIN_WAIT_MAX;
        while !self.shared.peers.idle() && Instant::now() < deadline && !self.cut_short.get() {
            glommio::timer::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Closes the shard: waiters answered `ShuttingDown`, tasks stopped, the peer listener
    /// and links closed, the logs flushed and closed. Runs after `hand_off` (graceful) or
    /// at once (immediate). Idempotent.
    pub async fn shutdown(&self, mode: ShutdownMode) {
        if self.stopping.replace(true) {
            if mode == ShutdownMode::Immediate {
                self.cut_short.set(true);
            }
            return;
        }
        self.closed.set(true);
        // Whoever waits for a fatal error (`fatal`) ends now.
        self.shared.fatal_notify.notify_all();
        for r in self.list() {
            r.close();
        }
        self.tasks.borrow_mut().clear();
        self.listener.borrow_mut().take();
        self.shared.peers.close();
        let partitions = std::mem::take(&mut *self.partitions.borrow_mut());
        for r in partitions {
            let partition = r.partition_id();
            if let Err(e) = PartitionReplicator::close_log(r, mode).await {
                tracing::warn!(%partition, %e, "closing the log failed");
            }
        }
    }

    /// Resolves with the fatal storage error (latched) once the shard hit one, or with `None`
    /// once the core is shut down without one (so that a task waiting here ends with the
    /// shard instead of outliving its executor).
    pub async fn fatal(&self) -> Option<NodeError> {
        loop {
            let epoch = self.shared.fatal_notify.epoch();
            if let Some(error) = self.shared.fatal.borrow().clone() {
                return Some(error);
            }
            if self.closed.get() {
                return None;
            }
            self.shared.fatal_notify.wait(epoch).await;
        }
    }

    async fn run_ticks(self: Rc<Self>) {
        let tick = self.shared.config.tick_interval();
        let mut next = Instant::now() + tick;
        loop {
            let now = Instant::now();
            if next > now {
                glommio::timer::sleep(next - now).await;
            }
            next += tick;
            if Instant::now() > next + tick * 4 {
                next = Instant::now() + tick; // fell far behind (stall): do not burst ticks
            }
            if self.closed.get() {
                return;
            }
            let down = self.shared.peers.take_disconnected();
            for r in self.list() {
                r.tick(&down);
            }
            self.pristine.store(self.list().iter().all(|r| r.pristine()), Ordering::Relaxed);
            if self.list().iter().any(|r| r.is_unproven()) && self.others_pristine() {
                for r in self.list() {
                    r.prove_pristine();
                }
            }
        }
    }

    /// Every other configured voter answered our handshake as pristine.
    fn others_pristine(&self) -> bool {
        let config = &self.shared.config;
        config
            .peers
            .iter()
            .map(|p| NodeId(p.id))
            .filter(|&n| n != self.shared.node)
            .all(|n| self.shared.peers.remote_pristine(n) == Some(true))
    }

    async fn run_inbound(
        self: Rc<Self>,
        inbox: glommio::channels::local_channel::LocalReceiver<Inbound>,
    ) {
        while let Some(inbound) = inbox.recv().await {
            if self.closed.get() {
                return;
            }
            if matches!(inbound.message, PeerMessage::HeartbeatResponses(_)) {
                self.shared.peers.heartbeat_responses_received(inbound.from);
            }
            for (partition, message) in inbound.message.into_raft_messages() {
                match self.partition(partition) {
                    Some(r) => r.handle_message(inbound.from, message),
                    None => {
                        tracing::debug!(%partition, from = %inbound.from, "message for a partition this shard does not own")
                    }
                }
            }
        }
    }

    /// Scrub passes over every partition of the shard, one after another, at `bytes_per_sec`
    /// each (`PartitionReplicator::scrub_pass`).
    async fn run_scrub(self: Rc<Self>, bytes_per_sec: u64) {
        loop {
            within(SCRUB_PASS_PAUSE, std::future::pending::<()>()).await;
            if self.closed.get() {
                return;
            }
            for r in self.list() {
                r.scrub_pass(bytes_per_sec).await;
            }
        }
    }

    /// The leader balancer (balance.rs): every `BALANCE_INTERVAL`, each led partition whose
    /// preferred leader is ready gets a normal Raft leadership transfer, within the node's
    /// `TransferLimit`. Nothing moves once a stop began.
    async fn run_balance(self: Rc<Self>, settings: BalanceSettings, limit: Arc<TransferLimit>) {
        loop {
            within(BALANCE_INTERVAL, std::future::pending::<()>()).await;
            if self.closed.get() {
                return;
            }
            if self.handing_off.get() {
                continue;
            }
            let now = Instant::now();
            for r in self.list() {
                let Decision::Transfer(to) = r.balance_decision(&settings, now) else { continue };
                if !limit.try_take(now) {
                    tracing::debug!(partition = %r.partition_id(), %to, "leader balancer: transfers_per_minute reached");
                    continue;
                }
                // Refusals (the leadership just moved, a transfer began) are logged there.
                let _ = r.balance_transfer(to);
            }
        }
    }

    async fn run_retention(self: Rc<Self>) {
        loop {
            within(RETENTION_INTERVAL, std::future::pending::<()>()).await;
            if self.closed.get() {
                return;
            }
            for r in self.list() {
                r.apply_retention().await;
            }
        }
    }
}

#[cfg(test)]
#[path = "replicator_tests.rs"]
mod cluster_tests;
