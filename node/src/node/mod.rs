//! The replicated node: one glommio executor per shard, each running the shard's replication
//! core (`core.rs`: every partition's Raft replicator and the peer links) and its client
//! server (`server.rs`), and the [`NodeHandle`] any thread uses to reach them.
//! See ARCHITECTURE.md#node.
//!
//! [`Node::start`] validates the configuration and probes the host (the FAIL checks of
//! `ringlog doctor`, which include io_uring, RLIMIT_MEMLOCK for `shards × 3 × io_memory` and
//! O_DIRECT on the data dir) *before* any executor exists, so an unsupported host is an `Err`,
//! never a glommio panic or `exit`. It then starts one executor thread per shard
//! (`shard_main.rs`) and returns once every shard has opened (recovered) its partitions and
//! listens for clients and peers, or fails with the first shard's start error after stopping
//! the others.
//!
//! Foreign threads reach a shard through its bounded mailbox (`ringlog_engine::
//! runtime_mailbox`, `command_queue_max` commands; full → `Backpressure`, nothing queued).
//! Partition `p` is served by shard `p % shards`. Every blocking call waits in bounded steps:
//! it notices a shard thread that ended (`Stopped`/`ShuttingDown`) and gives up after a named
//! maximum (`Timeout`). A watchdog thread re-wakes a shard that holds commands but took none
//! (glommio 0.9.0 can lose a cross-thread wake-up; the engine's shard.rs does the same) and
//! stops the node when a shard reports a fatal storage error.
//!
//! Invariants: every command gets exactly one answer, or its reply channel is dropped when the
//! shard ends (an append callback that was never run is run with `ShuttingDown` when dropped);
//! after `shutdown` returns `Ok`, every shard thread has been joined; `shutdown` is idempotent
//! and a second caller waits for the first to finish.

#![forbid(unsafe_code)]

pub(crate) mod addresses;
pub mod api;
pub(crate) mod balance;
mod core;
pub mod latency;
pub(crate) mod peers;
pub(crate) mod replicator;
pub(crate) mod replicator_codec;
pub(crate) mod replicator_meta;
pub(crate) mod replicator_wait;
mod server;
mod shard_main;

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use crossbeam_channel::{Receiver, RecvTimeoutError};
use ringlog_engine::batch::{encode_batch, BatchStamp, BATCH_HEADER_SIZE};
use ringlog_engine::host::{check_host, HostCheckError, HostRequirements};
use ringlog_engine::placement::{place_shards, Placement};
use ringlog_engine::runtime::{
    self, reserve_host_memlock, ExecutorSpec, MemlockOutcome, MemlockReservation, Pinning,
};
use ringlog_engine::runtime_mailbox::{mailbox, MailboxSender, SendFailure, StallWatch};
use ringlog_engine::{FaultInjector, RecordsBuilder};
use ringlog_net::tls::TlsConfig;

pub use api::{
    AppendOutcome, FollowerSnapshot, HistogramSnapshot, NodeAddresses, NodeError, NodeExit,
    NodeSnapshot, NodeStartError, PartitionSnapshot, ReadOutcome, ShardSnapshot, ShutdownMode,
};
pub use ringlog_net::protocol::{Acks, Consistency, FollowerStatus, GroupStatus};
pub use ringlog_net::{Offset, PartitionId};
pub use ringlog_raft::{LogIndex, MembershipChange, NodeId, Role, Term};

use crate::config::{NodeConfig, PinningMode};
use shard_main::{Answer, Command, Done, ShardReady, ShardSetup};

/// Longest a caller waits for a shard's answer to one command (beyond a read's own `wait`).
pub const REPLY_WAIT_MAX: Duration = Duration::from_secs(120);
/// How often a waiting caller checks that the shard still runs and re-wakes it.
const REPLY_CHECK_INTERVAL: Duration = Duration::from_millis(100);
/// How often the watchdog checks every mailbox (and the fatal flag).
pub const WATCHDOG_INTERVAL: Duration = Duration::from_millis(20);
/// Longest `start` waits for a shard to open (recover) its partitions and listen.
pub const START_WAIT_MAX: Duration = Duration::from_secs(600);
/// Longest `shutdown` waits for the shards to stop (graceful leadership hand-off included).
pub const SHUTDOWN_WAIT_MAX: Duration = Duration::from_secs(120);
/// Longest a `Shutdown` command waits for room in a full mailbox.
const SHUTDOWN_ENQUEUE_MAX: Duration = Duration::from_secs(10);
/// A caller still waiting after this long nudges the shard every `REPLY_CHECK_INTERVAL`.
pub(crate) const NUDGE_AFTER: Duration = Duration::from_millis(500);
/// Largest long-poll wait of one read (a client's `wait_ms` is capped to it).
pub const READ_WAIT_MAX: Duration = Duration::from_secs(60);

/// Lifecycle of a node, as seen by callers.
const STATE_RUNNING: u8 = 0;
const STATE_SHUTTING_DOWN: u8 = 1;
const STATE_STOPPED: u8 = 2;

/// Namespace of [`Node::start`].
#[derive(Debug)]
pub struct Node;

/// How [`Node::start_with`] starts a node.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StartOptions {
    /// Skip the host probe (`ringlog serve --skip-host-checks`, for tests on odd hosts). The
    /// memlock rule is still applied: glommio cannot start without it.
    pub skip_host_checks: bool,
}

/// Storage faults to inject into a running node (tests only, through
/// [`Node::start_with_faults`]): a partition's log and hard state share its injector, as one
/// disk would, so arming it makes that partition's next writes or fdatasyncs fail with EIO.
/// Neither the configuration nor the CLI can reach this.
#[doc(hidden)]
#[derive(Clone, Debug, Default)]
pub struct StorageFaults {
    injectors: BTreeMap<PartitionId, Arc<FaultInjector>>,
}

impl StorageFaults {
    /// Gives `partition` a fresh (idle) injector and returns it, to be armed later.
    pub fn add(&mut self, partition: PartitionId) -> Arc<FaultInjector> {
        self.injectors.entry(partition).or_default().clone()
    }

    /// The injector of `partition`, if it has one.
    pub fn injector(&self, partition: PartitionId) -> Option<Arc<FaultInjector>> {
        self.injectors.get(&partition).cloned()
    }
}

/// A cheap, thread-safe handle to a running node; every method is callable from any thread.
#[derive(Clone)]
pub struct NodeHandle {
    inner: Arc<Inner>,
}

struct Inner {
    node: NodeId,
    config: Arc<NodeConfig>,
    shards: usize,
    mailboxes: Arc<Mailboxes>,
    ready: Vec<ShardReady>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    state: AtomicU8,
    /// Held for the whole of a shutdown; `true` once one completed.
    shutdown_done: Mutex<bool>,
    exit: Arc<ExitState>,
    /// The executors' locked memory (RLIMIT_MEMLOCK), released once every shard thread
    /// ended; kept when one was left behind (it still holds its rings).
    memlock_reserved: Mutex<Option<MemlockReservation>>,
    /// The shards' CPUs and this process's claims on them (`pinning = "auto"`), released
    /// with the memory.
    placement: Mutex<Option<Placement>>,
    /// The TLS configuration every shard shares (`None`: plaintext).
    tls: Option<Arc<TlsConfig>>,
}

/// Every shard's mailbox; shards hold it too, to forward requests to each other.
pub(crate) struct Mailboxes {
    pub senders: Vec<MailboxSender<Command>>,
}

/// How the node ended, published to `wait` and the watchdog.
#[derive(Default)]
pub(crate) struct ExitState {
    /// The first fatal error a shard reported.
    fatal: Mutex<Option<String>>,
    exit: Mutex<Option<NodeExit>>,
    changed: Condvar,
}

impl ExitState {
    /// A shard hit a fatal (latched storage) error: the watchdog stops the node.
    pub(crate) fn report_fatal(&self, shard: usize, error: &NodeError) {
        tracing::error!(shard, %error, "fatal storage error: the node stops");
        let mut fatal = lock(&self.fatal);
        fatal.get_or_insert_with(|| format!("shard {shard}: {error}"));
        self.changed.notify_all();
    }

    fn fatal(&self) -> Option<String> {
        lock(&self.fatal).clone()
    }

    fn set_exit(&self) {
        let fatal = self.fatal();
        let mut exit = lock(&self.exit);
        exit.get_or_insert(fatal.map_or(NodeExit::Stopped, NodeExit::Fatal));
        self.changed.notify_all();
    }
}

impl Node {
    /// Validates `config`, probes the host, starts every shard and waits until each one has
    /// opened its partitions and listens. Nothing is left running when this fails.
    pub fn start(config: NodeConfig) -> Result<NodeHandle, NodeStartError> {
        Node::start_with(config, StartOptions::default())
    }

    /// [`Node::start`] with options.
    pub fn start_with(
        config: NodeConfig,
        options: StartOptions,
    ) -> Result<NodeHandle, NodeStartError> {
        Node::start_inner(config, options, None)
    }

    /// [`Node::start_with`] whose partitions' storage fails on command (tests of the
    /// "a failed write or fdatasync is fatal" path; see [`StorageFaults`]). A later start on
    /// the same data dir without faults uses the real disk only.
    #[doc(hidden)]
    pub fn start_with_faults(
        config: NodeConfig,
        options: StartOptions,
        faults: StorageFaults,
    ) -> Result<NodeHandle, NodeStartError> {
        Node::start_inner(config, options, Some(faults))
    }

    fn start_inner(
        config: NodeConfig,
        options: StartOptions,
        faults: Option<StorageFaults>,
    ) -> Result<NodeHandle, NodeStartError> {
        check_config(&config)?;
        let shards = config.shard_count();
        std::fs::create_dir_all(&config.data_dir).map_err(|error| NodeStartError::DataDir {
            path: config.data_dir.clone(),
            reason: error.to_string(),
        })?;
        // `[tls]` once for every shard (validated at load; read again here, so a file that
        // vanished since is a start error, never plaintext).
        let tls = config.tls_config().map_err(|error| NodeStartError::Config(error.to_string()))?;
        // `[admin]` likewise: the token file is read now, once; a file made unusable since the
        // load is a start error, never an open node.
        let admin = config.admin_policy().map_err(|e| NodeStartError::Config(e.to_string()))?;
        let admin = Arc::new(admin);
        let memlock_reserved = probe_host(&config, shards, options)?;
        replicator::install_storage_faults(&config.data_dir, faults);
        let config = Arc::new(config);
        let mut senders = Vec::with_capacity(shards);
        let mut receivers = Vec::with_capacity(shards);
        for _ in 0..shards {
            let (sender, receiver) = mailbox(config.command_queue_max as usize);
            senders.push(sender);
            receivers.push(receiver);
        }
        let mailboxes = Arc::new(Mailboxes { senders });
        let exit = Arc::new(ExitState::default());
        let pinning = match config.pinning {
            PinningMode::Auto => Pinning::Auto,
            PinningMode::Always => Pinning::Always,
            PinningMode::Never => Pinning::Never,
        };
        let placement = place_shards(pinning, shards);
        tracing::info!(placement = placement.summary(), "shards placed");
        let mut threads = Vec::with_capacity(shards);
        let mut readies = Vec::with_capacity(shards);
        // One bound on leader-balancing transfers for the whole node (every shard).
        let balance_limit =
            Arc::new(balance::TransferLimit::new(config.balance.transfers_per_minute as u32));
        for (shard, receiver) in receivers.into_iter().enumerate() {
            let (ready_tx, ready_rx) = crossbeam_channel::bounded(1);
            let setup = ShardSetup {
                shard,
                shards,
                partitions: (0..config.partitions as u32)
                    .filter(|p| *p as usize % shards == shard)
                    .map(PartitionId)
                    .collect(),
                config: config.clone(),
                receiver,
                mailboxes: mailboxes.clone(),
                ready: ready_tx,
                exit: exit.clone(),
                tls: tls.clone(),
                admin: admin.clone(),
                balance_limit: balance_limit.clone(),
            };
            let spec = ExecutorSpec {
                name: format!("ringlog-node{}-shard{shard}", config.node_id),
                cpu: placement.cpu(shard),
                io_memory_bytes: config.io_memory as usize,
                spin: config.spin,
            };
            match runtime::spawn_executor(spec, move || shard_main::shard_main(setup)) {
                Ok(thread) => {
                    threads.push(thread);
                    readies.push(ready_rx);
                }
                Err(error) => {
                    stop_threads(&mailboxes, threads);
                    return Err(NodeStartError::Shard { shard, reason: error.to_string() });
                }
            }
        }
        let (ready, failure) = wait_ready(&readies);
        if let Some(error) = failure {
            stop_threads(&mailboxes, threads);
            return Err(error);
        }
        let inner = Arc::new(Inner {
            node: NodeId(config.node_id),
            config,
            shards,
            mailboxes,
            ready,
            threads: Mutex::new(threads),
            state: AtomicU8::new(STATE_RUNNING),
            shutdown_done: Mutex::new(false),
            exit,
            memlock_reserved: Mutex::new(Some(memlock_reserved)),
            placement: Mutex::new(Some(placement)),
            tls,
        });
        start_watchdog(&inner);
        Ok(NodeHandle { inner })
    }
}

fn check_config(config: &NodeConfig) -> Result<(), NodeStartError> {
    let problems = config.validate().err().unwrap_or_default();
    if !problems.is_empty() {
        let text: Vec<String> = problems.iter().map(ToString::to_string).collect();
        return Err(NodeStartError::Config(text.join("; ")));
    }
    let shards = config.shard_count();
    let base = |addr: Option<SocketAddr>, what: &str| {
        let addr = addr.ok_or_else(|| NodeStartError::Config(format!("no {what} address")))?;
        if usize::from(addr.port()) + shards > usize::from(u16::MAX) + 1 {
            return Err(NodeStartError::Config(format!(
                "{what} port {} + {shards} shards runs past 65535",
                addr.port()
            )));
        }
        Ok(addr)
    };
    base(config.client_listen(), "client")?;
    base(config.peer_listen(), "peer")?;
    Ok(())
}

/// The memlock rule glommio needs (always), then every FAIL check of `ringlog doctor`
/// (io_uring, kernel, O_DIRECT on the data dir, ...) unless skipped.
fn probe_host(
    config: &NodeConfig,
    shards: usize,
    options: StartOptions,
) -> Result<MemlockReservation, NodeStartError> {
    let io_memory = config.io_memory as usize;
    let reserved = match reserve_host_memlock(shards, io_memory) {
        Ok((MemlockOutcome::ExceededButPrivileged { required_bytes, limit_bytes }, reserved)) => {
            tracing::warn!(
                required_bytes,
                limit_bytes,
                held_bytes = runtime::memlock_held_bytes(),
                "RLIMIT_MEMLOCK is below what the executors lock; allowed only because this \
                 process holds CAP_IPC_LOCK (an unprivileged user would be refused)"
            );
            reserved
        }
        Ok((MemlockOutcome::WithinLimit { .. }, reserved)) => reserved,
        Err(error) => return Err(NodeStartError::Host(error.to_string())),
    };
    if options.skip_host_checks {
        tracing::warn!("host checks skipped (--skip-host-checks)");
        return Ok(reserved);
    }
    let requirements = HostRequirements {
        data_dir: config.data_dir.clone(),
        shards,
        io_memory_bytes: io_memory,
        retention_bytes: config.storage.retention_bytes_max,
    };
    match check_host(&requirements) {
        Ok(_report) => Ok(reserved),
        Err(HostCheckError::Failed { failures }) => {
            // The FAIL lines exactly as `ringlog doctor` prints them.
            let lines: Vec<String> = failures.iter().map(ToString::to_string).collect();
            Err(NodeStartError::Host(format!(
                "{} FAIL (run `ringlog doctor --data-dir {}` for the full report):\n{}",
                failures.len(),
                config.data_dir.display(),
                lines.join("\n")
            )))
        }
        Err(error) => Err(NodeStartError::Host(error.to_string())),
    }
}

/// Waits (bounded) for every shard's start outcome; returns what each reported and the first
/// failure.
fn wait_ready(
    readies: &[Receiver<Result<ShardReady, NodeStartError>>],
) -> (Vec<ShardReady>, Option<NodeStartError>) {
    let deadline = Instant::now() + START_WAIT_MAX;
    let mut ready = Vec::with_capacity(readies.len());
    let mut failure = None;
    for (shard, receiver) in readies.iter().enumerate() {
        let left = deadline.saturating_duration_since(Instant::now());
        let outcome = receiver.recv_timeout(left).unwrap_or_else(|error| {
            let reason = match error {
                RecvTimeoutError::Timeout => format!("not ready within {START_WAIT_MAX:?}"),
                RecvTimeoutError::Disconnected => "the shard thread ended before reporting".into(),
            };
            Err(NodeStartError::Shard { shard, reason })
        });
        match outcome {
            Ok(shard_ready) => ready.push(shard_ready),
            Err(error) => {
                failure.get_or_insert(error);
            }
        }
    }
    (ready, failure)
}

/// Stops every started shard (start-up failure path) and joins its thread, kicking its
/// mailbox until it ends (no watchdog runs yet); a thread still running after
/// `SHUTDOWN_WAIT_MAX` is left behind with an error log rather than hanging `start`.
fn stop_threads(mailboxes: &Mailboxes, threads: Vec<JoinHandle<()>>) {
    for sender in &mailboxes.senders {
        let (reply, _ignored) = crossbeam_channel::bounded(1);
        let _ = sender.try_send(Command::Shutdown { mode: ShutdownMode::Immediate, reply });
    }
    let deadline = Instant::now() + SHUTDOWN_WAIT_MAX;
    for (shard, thread) in threads.into_iter().enumerate() {
        while !thread.is_finished() && Instant::now() < deadline {
            mailboxes.senders[shard].kick();
            std::thread::sleep(WATCHDOG_INTERVAL);
        }
        if thread.is_finished() {
            let _ = thread.join();
        } else {
            tracing::error!(shard, "shard thread did not stop after a failed start; left behind");
        }
    }
}

/// The mailbox watchdog (see the module docs and engine/src/shard.rs `start_watchdog`): every
/// `WATCHDOG_INTERVAL` it re-wakes a shard whose mailbox holds commands while it took none
/// since the last check, and stops the node (immediately) once a shard reported a fatal
/// error. It never wakes an idle shard and ends once the node stopped or was dropped.
fn start_watchdog(inner: &Arc<Inner>) {
    let weak = Arc::downgrade(inner);
    let name = format!("ringlog-node{}-watchdog", inner.node.0);
    let spawned = std::thread::Builder::new().name(name).spawn(move || {
        let mut watch = StallWatch::default();
        loop {
            std::thread::sleep(WATCHDOG_INTERVAL);
            let Some(inner) = weak.upgrade() else { return };
            if inner.state.load(Ordering::Acquire) == STATE_STOPPED {
                return;
            }
            if inner.exit.fatal().is_some() && inner.state.load(Ordering::Acquire) == STATE_RUNNING
            {
                if let Err(error) = inner.shutdown(ShutdownMode::Immediate) {
                    tracing::error!(%error, "stopping the node after a fatal error");
                }
                return;
            }
            watch.check(&inner.mailboxes.senders, WATCHDOG_INTERVAL);
        }
    });
    if let Err(error) = spawned {
        tracing::warn!(%error, "cannot start the node watchdog; waiting callers re-wake shards");
    }
}

impl NodeHandle {
    pub fn node_id(&self) -> NodeId {
        self.inner.node
    }

    pub fn shards(&self) -> usize {
        self.inner.shards
    }

    pub fn partitions(&self) -> u32 {
        self.inner.config.partitions as u32
    }

    /// The configuration the node runs with.
    pub fn config(&self) -> &NodeConfig {
        &self.inner.config
    }

    /// The TLS configuration every listener and link of the node uses (`None`: plaintext).
    /// Its certificate can be swapped at run time (`TlsConfig::reload_certificate`, which
    /// `ringlog serve` calls on SIGHUP): new handshakes present the new one.
    pub fn tls(&self) -> Option<Arc<TlsConfig>> {
        self.inner.tls.clone()
    }

    /// The bound client address of `shard` (`client.port + shard`).
    pub fn client_addr(&self, shard: usize) -> Option<SocketAddr> {
        self.inner.ready.get(shard).map(|ready| ready.client)
    }

    /// The bound peer address of `shard` (`peer.port + shard`).
    pub fn peer_addr(&self, shard: usize) -> Option<SocketAddr> {
        self.inner.ready.get(shard).map(|ready| ready.peer)
    }

    /// Appends one batch of `records` to `p` and blocks until `acks` is met. Zero records →
    /// `Invalid`; a batch over `storage.batch_size_max` → `Oversize`.
    pub fn append(
        &self,
        p: PartitionId,
        acks: Acks,
        records: &[&[u8]],
    ) -> Result<AppendOutcome, NodeError> {
        let batch = self.client_batch(records)?;
        let (reply, answer) = crossbeam_channel::bounded(1);
        let done = Done::Blocking(reply);
        let shard = self.send(p, Command::Append { partition: p, acks, batch, done })?;
        self.inner.wait_reply(shard, &answer, REPLY_WAIT_MAX)
    }

    /// Starts an append; `done` runs on the owning shard's executor thread with the outcome
    /// (it must not block: it delays every partition of that shard). Errors found before the
    /// append was queued are returned here and `done` is dropped without running. Once
    /// queued, `done` runs exactly once — with `ShuttingDown` if the node stops first.
    pub fn append_with_callback(
        &self,
        p: PartitionId,
        acks: Acks,
        records: &[&[u8]],
        done: Box<dyn FnOnce(Result<AppendOutcome, NodeError>) + Send>,
    ) -> Result<(), NodeError> {
        let batch = self.client_batch(records)?;
        let done = Done::callback(done);
        let command = Command::Append { partition: p, acks, batch, done };
        self.send(p, command).map(drop)
    }

    /// Committed batches of `p` from `offset` (whole batches, raw on-disk bytes, checksum
    /// verified), up to about `max_bytes` (capped at the wire's fetch limit); waits up to
    /// `wait` (capped at `READ_WAIT_MAX`) when nothing is committed at `offset` yet.
    pub fn read(
        &self,
        p: PartitionId,
        offset: Offset,
        max_bytes: u32,
        consistency: Consistency,
        wait: Duration,
    ) -> Result<ReadOutcome, NodeError> {
        let wait = wait.min(READ_WAIT_MAX);
        let max_bytes = max_bytes.min(ringlog_net::limits::FETCH_BYTES_MAX as u32);
        let (reply, answer) = crossbeam_channel::bounded(1);
        let command = Command::Read { partition: p, offset, max_bytes, consistency, wait, reply };
        let shard = self.send(p, command)?;
        self.inner.wait_reply(shard, &answer, REPLY_WAIT_MAX + wait)
    }

    pub fn status(&self, p: PartitionId) -> Result<GroupStatus, NodeError> {
        let (reply, answer) = crossbeam_channel::bounded(1);
        let shard = self.send(p, Command::Status { partition: p, reply })?;
        self.inner.wait_reply(shard, &answer, REPLY_WAIT_MAX)
    }

    pub fn transfer_leadership(&self, p: PartitionId, to: NodeId) -> Result<(), NodeError> {
        let (reply, answer) = crossbeam_channel::bounded(1);
        let shard = self.send(p, Command::Transfer { partition: p, to, reply })?;
        self.inner.wait_reply(shard, &answer, REPLY_WAIT_MAX)
    }

    pub fn change_membership(
        &self,
        p: PartitionId,
        change: MembershipChange,
        addresses: Option<NodeAddresses>,
    ) -> Result<LogIndex, NodeError> {
        let (reply, answer) = crossbeam_channel::bounded(1);
        let command = Command::Membership { partition: p, change, addresses, reply };
        let shard = self.send(p, command)?;
        self.inner.wait_reply(shard, &answer, REPLY_WAIT_MAX)
    }

    /// Every shard's counters and partitions (shards are asked one after another).
    pub fn snapshot(&self) -> Result<NodeSnapshot, NodeError> {
        let process = crate::metrics::process::read();
        let data_dir_space =
            ringlog_engine::host::filesystem_space(&self.inner.config.data_dir).ok();
        let mut snapshot =
            NodeSnapshot { node: self.inner.node, shards: Vec::new(), process, data_dir_space };
        for shard in 0..self.inner.shards {
            let (reply, answer) = crossbeam_channel::bounded(1);
            self.inner.send_to(shard, Command::Snapshot { reply })?;
            let mut shard_snapshot = self.inner.wait_reply(shard, &answer, REPLY_WAIT_MAX)?;
            shard_snapshot.mailbox_depth = self.inner.mailboxes.senders[shard].len() as u64;
            snapshot.shards.push(shard_snapshot);
        }
        Ok(snapshot)
    }

    /// Stops the node (graceful: stop accepting, answer or fail in-flight requests, hand
    /// leadership off, flush, close; immediate: close now). Idempotent; returns when every
    /// shard thread has exited. An immediate call during a graceful shutdown cuts it short.
    pub fn shutdown(&self, mode: ShutdownMode) -> Result<(), NodeError> {
        self.inner.shutdown(mode)
    }

    /// Blocks until the node stops (shutdown, or a fatal error that stopped it).
    pub fn wait(&self) -> NodeExit {
        let exit = &self.inner.exit;
        let mut current = lock(&exit.exit);
        loop {
            if let Some(done) = current.as_ref() {
                return done.clone();
            }
            current = match exit.changed.wait(current) {
                Ok(guard) => guard,
                Err(poisoned) => poisoned.into_inner(),
            };
        }
    }

    /// The client batch (zero stamp, contract decision 3) holding `records`.
    fn client_batch(&self, records: &[&[u8]]) -> Result<Bytes, NodeError> {
        if records.is_empty() {
            return Err(NodeError::Invalid("an append needs at least one record".into()));
        }
        let batch_size_max = self.inner.config.storage.batch_size_max as usize;
        let mut builder = RecordsBuilder::new(batch_size_max);
        for record in records {
            if builder.push(record).is_err() {
                let len = BATCH_HEADER_SIZE as u64
                    + records.iter().map(|r| 4 + r.len() as u64).sum::<u64>();
                return Err(NodeError::Oversize { len, max: batch_size_max as u64 });
            }
        }
        let built = builder.finish();
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.as_millis() as i64);
        let stamp = BatchStamp {
            term: Term(0),
            index: LogIndex(0),
            base_offset: ringlog_engine::Offset(0),
            record_count: built.count,
            flags: 0,
            first_timestamp_ms: now_ms,
            max_timestamp_ms: now_ms,
            prev_crc: 0,
        };
        Ok(encode_batch(&stamp, &built.bytes))
    }

    fn send(&self, p: PartitionId, command: Command) -> Result<usize, NodeError> {
        let partitions = self.partitions();
        if p.0 >= partitions {
            return Err(NodeError::UnknownPartition { partition: p, partitions });
        }
        let shard = p.0 as usize % self.inner.shards;
        self.inner.send_to(shard, command)?;
        Ok(shard)
    }
}

impl Inner {
    fn check_running(&self) -> Result<(), NodeError> {
        match self.state.load(Ordering::Acquire) {
            STATE_RUNNING => Ok(()),
            STATE_SHUTTING_DOWN => Err(NodeError::ShuttingDown),
            _ => Err(NodeError::Stopped),
        }
    }

    fn send_to(&self, shard: usize, command: Command) -> Result<(), NodeError> {
        self.check_running()?;
        match self.mailboxes.senders[shard].try_send(command) {
            Ok(()) => Ok(()),
            Err(SendFailure::Full(_)) => {
                Err(NodeError::Backpressure { retry_after_ms: shard_main::BACKPRESSURE_RETRY_MS })
            }
            Err(SendFailure::Closed(_)) => Err(NodeError::Stopped),
        }
    }

    /// The error for a shard that ended without answering.
    fn gone(&self) -> NodeError {
        match self.state.load(Ordering::Acquire) {
            STATE_STOPPED => NodeError::Stopped,
            _ => NodeError::ShuttingDown,
        }
    }

    /// Waits for `shard`'s answer, never forever: a dropped reply or an ended thread is
    /// `ShuttingDown`/`Stopped`; no answer within `max` is `Timeout` (the outcome is unknown).
    fn wait_reply<T>(
        &self,
        shard: usize,
        answer: &Receiver<Result<T, NodeError>>,
        max: Duration,
    ) -> Result<T, NodeError> {
        let started = Instant::now();
        loop {
            match answer.recv_timeout(REPLY_CHECK_INTERVAL) {
                Ok(result) => return result,
                Err(RecvTimeoutError::Disconnected) => return Err(self.gone()),
                Err(RecvTimeoutError::Timeout) => {}
            }
            if self.shard_thread_ended(shard) {
                return Err(self.gone());
            }
            if started.elapsed() >= max {
                return Err(NodeError::Timeout);
            }
            // Covers a watchdog that could not be started; a repeated wake-up is harmless.
            let sender = &self.mailboxes.senders[shard];
            sender.kick();
            if started.elapsed() >= NUDGE_AFTER {
                // The answer may be stuck behind a lost wake-up of a parked executor with an
                // empty mailbox (nothing to kick): give it something to wake up for.
                let _ = sender.try_send(Command::Nudge);
            }
        }
    }

    fn shard_thread_ended(&self, shard: usize) -> bool {
        lock(&self.threads).get(shard).is_some_and(JoinHandle::is_finished)
    }

    fn on_shard_thread(&self) -> bool {
        let me = std::thread::current().id();
        lock(&self.threads).iter().any(|t| t.thread().id() == me)
    }

    fn shutdown(&self, mode: ShutdownMode) -> Result<(), NodeError> {
        if self.on_shard_thread() {
            // Joining our own thread would deadlock (a callback calling shutdown).
            return Err(NodeError::Internal(
                "shutdown called on a shard thread (from an append callback?)".into(),
            ));
        }
        if mode == ShutdownMode::Immediate
            && self.state.load(Ordering::Acquire) == STATE_SHUTTING_DOWN
        {
            // Cut a graceful shutdown in progress short; its caller joins the threads.
            self.send_shutdown(ShutdownMode::Immediate, None);
        }
        let mut done = lock(&self.shutdown_done);
        if *done {
            return Ok(());
        }
        self.state.store(STATE_SHUTTING_DOWN, Ordering::Release);
        let result = self.stop_shards(mode);
        self.state.store(STATE_STOPPED, Ordering::Release);
        *done = true;
        drop(done);
        self.exit.set_exit();
        result
    }

    /// Sends `Shutdown { mode }` to every shard; with `answers`, collects the reply channels.
    fn send_shutdown(
        &self,
        mode: ShutdownMode,
        mut answers: Option<&mut Vec<(usize, Answer<()>)>>,
    ) -> Option<NodeError> {
        let mut first_error = None;
        for (shard, sender) in self.mailboxes.senders.iter().enumerate() {
            let (reply, answer) = crossbeam_channel::bounded(1);
            let mut command = Command::Shutdown { mode, reply };
            let deadline = Instant::now() + SHUTDOWN_ENQUEUE_MAX;
            loop {
                match sender.try_send(command) {
                    Ok(()) => {
                        if let Some(answers) = answers.as_mut() {
                            answers.push((shard, answer));
                        }
                        break;
                    }
                    Err(SendFailure::Closed(_)) => break,
                    Err(SendFailure::Full(back)) if Instant::now() < deadline => {
                        command = back;
                        sender.kick();
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    Err(SendFailure::Full(_)) => {
                        first_error.get_or_insert(NodeError::Internal(format!(
                            "shard {shard}'s mailbox stayed full during shutdown"
                        )));
                        break;
                    }
                }
            }
        }
        first_error
    }

    fn stop_shards(&self, mode: ShutdownMode) -> Result<(), NodeError> {
        let mut answers = Vec::with_capacity(self.shards);
        let mut first_error = self.send_shutdown(mode, Some(&mut answers));
        let deadline = Instant::now() + SHUTDOWN_WAIT_MAX;
        for (shard, answer) in answers {
            let left = deadline.saturating_duration_since(Instant::now());
            if let Err(NodeError::Timeout) = self.wait_reply(shard, &answer, left) {
                first_error.get_or_insert(NodeError::Internal(format!(
                    "shard {shard} did not stop within {SHUTDOWN_WAIT_MAX:?}"
                )));
            }
        }
        let threads = std::mem::take(&mut *lock(&self.threads));
        let mut left_behind = false;
        for (shard, thread) in threads.into_iter().enumerate() {
            while !thread.is_finished() && Instant::now() < deadline {
                self.mailboxes.senders[shard].kick();
                std::thread::sleep(WATCHDOG_INTERVAL);
            }
            if !thread.is_finished() {
                left_behind = true;
                tracing::error!(shard, "shard thread did not end; left behind");
                first_error.get_or_insert(NodeError::Internal(format!(
                    "shard {shard}'s thread did not end"
                )));
                continue;
            }
            if let Err(panic) = thread.join() {
                first_error.get_or_insert(NodeError::Internal(format!(
                    "shard {shard} panicked: {}",
                    runtime::panic_message(&panic)
                )));
            }
        }
        if !left_behind {
            drop(lock(&self.memlock_reserved).take());
            drop(lock(&self.placement).take());
        }
        first_error.map_or(Ok(()), Err)
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        if self.on_shard_thread() {
            // The last handle died inside a callback: ask the shards to stop; they end on
            // their own (nobody can join them from here).
            self.send_shutdown(ShutdownMode::Immediate, None);
            return;
        }
        if let Err(error) = self.shutdown(ShutdownMode::Immediate) {
            tracing::error!(%error, "node shutdown on drop failed");
        }
    }
}

impl fmt::Debug for NodeHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeHandle")
            .field("node", &self.inner.node)
            .field("shards", &self.inner.shards)
            .field("partitions", &self.inner.config.partitions)
            .field("state", &self.inner.state.load(Ordering::Relaxed))
            .finish()
    }
}

/// Locks `mutex`, recovering from a poisoned lock (a panicking holder leaves valid data here).
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    match mutex.lock() {
        Ok(guard) => guard,
        Err(poisoned) => poisoned.into_inner(),
    }
}
