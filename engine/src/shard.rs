//! Shards: a thread-per-core engine of partition logs and the handle any thread uses to reach it.
//!
//! [`Engine::start`] checks RLIMIT_MEMLOCK, then starts one OS thread per shard, each running a
//! glommio `LocalExecutor` with an explicit `io_memory` (runtime.rs). Partition `p` lives on
//! shard `p % shards` and its log in `data_dir/<p>/`; the shard opens (recovers) its partitions
//! before the engine reports started. An [`EngineHandle`] — `Clone + Send + Sync` — sends
//! commands over one bounded mailbox per shard (runtime_mailbox.rs); the shard's command task
//! runs in a `Latency::Matters` task queue, so a command from a parked executor's foreign
//! thread wakes it through glommio's eventfd at once, without polling.
//!
//! Backpressure: a full shard mailbox (`command_queue_max` commands) never blocks the caller;
//! the call fails with [`EngineError::Backpressure`] and nothing is enqueued. A log whose
//! un-synced bytes reach `LogConfig::queued_bytes_max` answers the same way through
//! [`EngineError::Append`]. Blocking calls (`append`, `fetch`, ...) block only while the shard
//! works on them, never on a full queue.
//!
//! No call blocks forever: a caller waiting for an answer checks every `REPLY_CHECK_INTERVAL`
//! that the shard's thread still runs ([`EngineError::ShardStopped`] if not, even when a
//! panicking shard leaked the command) and gives up after [`REPLY_WAIT_MAX`] with
//! [`EngineError::NoReply`]. A mailbox watchdog thread re-wakes a shard that holds commands
//! but stopped taking them (glommio can lose a cross-thread wake-up; see `start_watchdog`).
//!
//! Invariants: a partition's log is touched only by its shard's thread; every command gets
//! exactly one reply (or its reply channel is dropped when the shard ends, which the caller
//! sees as [`EngineError::ShardStopped`]); after [`EngineHandle::shutdown`] returns, every
//! log is closed (flushed) and every executor thread has been joined.

use std::fmt;
use std::future::Future;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use crate::batch::Records;
use crate::error::{AppendError, FetchError, LogError, OpenError};
use crate::io::FaultInjector;
use crate::limits::{ConfigError, LogConfig};
use crate::log::Log;
use crate::placement::{self, Placement};
use crate::runtime::{
    self, reserve_host_memlock, ExecutorSpec, ExecutorStart, MemlockError, MemlockOutcome,
    MemlockReservation, Pinning,
};
use crate::runtime_mailbox::{mailbox, MailboxSender, SendFailure, StallWatch};
pub use crate::shard_partition::{Fetched, PartitionStats};
use crate::shard_worker::{shard_main, Command, Completion, ShardSetup};
use crate::types::{LogIndex, Offset};

/// Most shards an engine runs.
pub const SHARDS_MAX: usize = 256;
/// Most partitions an engine owns.
pub const PARTITIONS_MAX: u32 = 1 << 16;
/// Default commands waiting in one shard's mailbox before calls fail with `Backpressure`.
pub const COMMAND_QUEUE_MAX_DEFAULT: usize = 4096;
/// Largest mailbox accepted.
pub const COMMAND_QUEUE_MAX_LIMIT: usize = 1 << 20;
/// Default IO memory per executor: 2 shards fit a common 8 MiB RLIMIT_MEMLOCK (2 × 3 × 1 MiB).
pub const IO_MEMORY_DEFAULT_BYTES: usize = 1 << 20;
/// Largest fetch answered in one call.
pub const FETCH_BYTES_MAX: usize = 64 << 20;

/// A partition of the engine: one log, owned by shard `id % shards` (defined in
/// `ringlog-format`, shared with the wire protocol).
pub use ringlog_format::ids::PartitionId;

/// When an append is answered.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Durability {
    /// As soon as the shard accepted and stamped it (acks=none style).
    None,
    /// After the fdatasync that covers it completed (acks=leader on a single node).
    #[default]
    Durable,
}

/// Configuration of an engine.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// Parent of every partition's directory (`data_dir/<partition>/`).
    pub data_dir: PathBuf,
    /// Executor threads (shards), 1..=`SHARDS_MAX`.
    pub shards: usize,
    /// Partitions, 1..=`PARTITIONS_MAX`; partition `p` lives on shard `p % shards`.
    pub partitions: u32,
    /// Bytes of IO memory each executor registers with io_uring (× 3 rings, see runtime.rs).
    pub io_memory_bytes: usize,
    /// Configuration of every partition's log.
    pub log: LogConfig,
    /// Commands waiting in one shard's mailbox before calls fail with `Backpressure`.
    pub command_queue_max: usize,
    /// Spin before parking (only for dedicated bare-metal cores: design.md §11).
    pub spin: bool,
    /// Placement of the executor threads.
    pub pinning: Pinning,
    /// Tests only: a fault injector shared by every partition's log (`None` in production).
    pub faults: Option<Arc<FaultInjector>>,
}

impl EngineConfig {
    /// A configuration with defaults: one shard, one partition.
    pub fn new(data_dir: impl Into<PathBuf>) -> EngineConfig {
        EngineConfig {
            data_dir: data_dir.into(),
            shards: 1,
            partitions: 1,
            io_memory_bytes: IO_MEMORY_DEFAULT_BYTES,
            log: LogConfig::default(),
            command_queue_max: COMMAND_QUEUE_MAX_DEFAULT,
            spin: false,
            pinning: Pinning::Auto,
            faults: None,
        }
    }

    /// The shard that owns `partition`.
    pub fn shard_of(&self, partition: PartitionId) -> usize {
        partition.0 as usize % self.shards
    }

    /// The directory of `partition`'s log.
    pub fn partition_dir(&self, partition: PartitionId) -> PathBuf {
        self.data_dir.join(partition.0.to_string())
    }

    fn validate(&self) -> Result<(), StartError> {
        let invalid = |detail: String| Err(StartError::Config { detail });
        if !(1..=SHARDS_MAX).contains(&self.shards) {
            return invalid(format!("shards {} outside 1..={SHARDS_MAX}", self.shards));
        }
        if !(1..=PARTITIONS_MAX).contains(&self.partitions) {
            return invalid(format!("partitions {} outside 1..={PARTITIONS_MAX}", self.partitions));
        }
        if !(1..=COMMAND_QUEUE_MAX_LIMIT).contains(&self.command_queue_max) {
            return invalid(format!(
                "command_queue_max {} outside 1..={COMMAND_QUEUE_MAX_LIMIT}",
                self.command_queue_max
            ));
        }
        self.log.validate().map_err(StartError::LogConfig)
    }
}

/// Why the engine did not start. Nothing is left running when this is returned.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    #[error("invalid engine configuration: {detail}")]
    Config { detail: String },
    #[error("invalid log configuration: {0}")]
    LogConfig(ConfigError),
    #[error("memlock check failed: {0}")]
    Memlock(#[from] MemlockError),
    #[error("cannot create data dir {path:?}: {source}")]
    DataDir { path: PathBuf, source: std::io::Error },
    #[error("shard {shard} cannot start: {source}")]
    Executor { shard: usize, source: ExecutorStart },
    #[error("partition {partition} cannot open: {source}")]
    Open { partition: u32, source: OpenError },
    #[error("shard {shard} stopped while opening its partitions: {reason}")]
    ShardFailed { shard: usize, reason: String },
}

/// Why a call on a running engine failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    #[error("partition {partition} does not exist (the engine has {partitions})")]
    UnknownPartition { partition: u32, partitions: u32 },
    #[error("shard {shard}'s command queue is full ({limit} commands); retry later")]
    Backpressure { shard: usize, limit: usize },
    #[error("the engine is shut down")]
    Closed,
    #[error("shard {shard} stopped before answering")]
    ShardStopped { shard: usize },
    /// The shard runs but gave no answer within `REPLY_WAIT_MAX`: the command's outcome is
    /// unknown (an append may still become durable).
    #[error("shard {shard} gave no answer within {waited_ms} ms; the outcome is unknown")]
    NoReply { shard: usize, waited_ms: u64 },
    #[error("fetch of {requested} bytes exceeds {limit}")]
    FetchTooLarge { requested: usize, limit: usize },
    #[error("append refused: {0}")]
    Append(#[from] AppendError),
    #[error("append not made durable: {0}")]
    Durability(#[from] LogError),
    #[error("fetch failed: {0}")]
    Fetch(#[from] FetchError),
    #[error("shard {shard} could not run the command: {reason}")]
    Internal { shard: usize, reason: String },
}

/// The answer to an append.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AppendAck {
    pub partition: PartitionId,
    /// Raft index the batch took in its log.
    pub index: LogIndex,
    /// Offset of the batch's first record; its records take `base_offset..base_offset+count`.
    pub base_offset: Offset,
    pub record_count: u32,
    /// Whether an fdatasync covering the batch completed before this answer.
    pub durable: bool,
}

/// An append completion delivered on the caller's channel by [`EngineHandle::append_async`].
#[derive(Debug)]
pub struct AppendCompletion {
    /// The caller's tag for the append.
    pub token: u64,
    pub result: Result<AppendAck, EngineError>,
}

/// Counters of one shard's partitions.
#[derive(Clone, Debug, Default)]
pub struct ShardStats {
    pub shard: usize,
    pub partitions: Vec<(PartitionId, PartitionStats)>,
    /// Commands waiting in the mailbox when the stats were taken.
    pub queued_commands: usize,
}

/// Counters of the whole engine.
#[derive(Clone, Debug, Default)]
pub struct EngineStats {
    pub shards: Vec<ShardStats>,
}

impl EngineStats {
    /// Sum of every partition's counters.
    pub fn total(&self) -> PartitionStats {
        let mut total = PartitionStats::default();
        for (_, stats) in self.shards.iter().flat_map(|s| s.partitions.iter()) {
            total.add(stats);
        }
        total
    }
}

/// Namespace of [`Engine::start`].
#[derive(Debug)]
pub struct Engine;

/// A cheap, thread-safe handle to a running engine.
#[derive(Clone)]
pub struct EngineHandle {
    inner: Arc<Inner>,
}

struct Inner {
    config: EngineConfig,
    senders: Vec<MailboxSender<Command>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    closed: AtomicBool,
    /// The memlock check's outcome (a warning when only CAP_IPC_LOCK made it pass).
    memlock: MemlockOutcome,
    /// The executors' locked memory, released once shutdown joined them.
    memlock_reserved: Mutex<Option<MemlockReservation>>,
    /// The shards' CPUs and this process's claims on them, released with the memory.
    placement: Mutex<Option<Placement>>,
}

impl Engine {
    /// Checks the host, starts the shards and opens (recovers) every partition.
    pub fn start(config: EngineConfig) -> Result<EngineHandle, StartError> {
        config.validate()?;
        let (memlock, memlock_reserved) =
            reserve_host_memlock(config.shards, config.io_memory_bytes)?;
        if let MemlockOutcome::ExceededButPrivileged { required_bytes, limit_bytes } = memlock {
            tracing::warn!(
                required_bytes,
                limit_bytes,
                "RLIMIT_MEMLOCK is below what the executors lock; allowed only because this \
                 process holds CAP_IPC_LOCK (an unprivileged user would be refused)"
            );
        }
        crate::io::create_dir_all_durable(&config.data_dir)
            .map_err(|source| StartError::DataDir { path: config.data_dir.clone(), source })?;
        let placement = placement::place_shards(config.pinning, config.shards);
        tracing::info!(placement = placement.summary(), "engine shards placed");
        let mut senders = Vec::with_capacity(config.shards);
        let mut threads = Vec::with_capacity(config.shards);
        let mut readies = Vec::with_capacity(config.shards);
        for shard in 0..config.shards {
            let (sender, receiver) = mailbox(config.command_queue_max);
            let (ready_tx, ready_rx) = crossbeam_channel::bounded(1);
            let setup = ShardSetup {
                shard,
                partitions: (0..config.partitions)
                    .map(PartitionId)
                    .filter(|p| config.shard_of(*p) == shard)
                    .collect(),
                config: config.clone(),
                receiver,
                ready: ready_tx,
            };
            let spec = ExecutorSpec {
                name: format!("ringlog-shard-{shard}"),
                cpu: placement.cpu(shard),
                io_memory_bytes: config.io_memory_bytes,
                spin: config.spin,
            };
            match runtime::spawn_executor(spec, move || shard_main(setup)) {
                Ok(thread) => {
                    senders.push(sender);
                    threads.push(thread);
                    readies.push(ready_rx);
                }
                Err(source) => {
                    stop_threads(&senders, threads);
                    return Err(StartError::Executor { shard, source });
                }
            }
        }
        let mut failure = None;
        for (shard, ready) in readies.iter().enumerate() {
            let outcome = ready.recv().unwrap_or_else(|_| {
                Err(StartError::ShardFailed {
                    shard,
                    reason: "the shard thread ended before reporting".to_string(),
                })
            });
            if let Err(error) = outcome {
                failure.get_or_insert(error);
            }
        }
        if let Some(error) = failure {
            stop_threads(&senders, threads);
            return Err(error);
        }
        let inner = Arc::new(Inner {
            config,
            senders,
            threads: Mutex::new(threads),
            closed: AtomicBool::new(false),
            memlock,
            memlock_reserved: Mutex::new(Some(memlock_reserved)),
            placement: Mutex::new(Some(placement)),
        });
        start_watchdog(&inner);
        Ok(EngineHandle { inner })
    }
}

/// How often the watchdog checks that every shard drains its mailbox.
pub const WATCHDOG_INTERVAL: Duration = Duration::from_millis(20);

/// Starts the mailbox watchdog: a plain thread that, every `WATCHDOG_INTERVAL`, wakes again
/// any shard whose mailbox holds commands while its receiver took none since the last check.
///
/// Why it exists: glommio 0.9.0 loses a cross-thread wake-up now and then under load (seen
/// here: commands queued, the executor parked in `Reactor::wait` → `link_rings_and_sleep`,
/// and one more `Waker::wake` from a foreign thread brings it back). A foreign thread has no
/// other way into a glommio executor than that wake, so the watchdog bounds a lost wake-up
/// to about two intervals. It never wakes an idle executor (empty mailbox) nor a busy one
/// (it is taking commands), so parked executors stay parked.
///
/// It holds only a `Weak` to the engine and ends once the engine is closed or dropped.
fn start_watchdog(inner: &Arc<Inner>) {
    let weak = Arc::downgrade(inner);
    let spawned = std::thread::Builder::new().name("ringlog-watchdog".into()).spawn(move || {
        let mut watch = StallWatch::default();
        loop {
            std::thread::sleep(WATCHDOG_INTERVAL);
            let Some(inner) = weak.upgrade() else { return };
            if inner.closed.load(Ordering::Acquire) {
                return;
            }
            watch.check(&inner.senders, WATCHDOG_INTERVAL);
        }
    });
    if let Err(error) = spawned {
        tracing::warn!(%error, "cannot start the mailbox watchdog; callers re-wake shards");
    }
}

/// Asks every started shard to stop and joins its thread (start-up failure path). Until a
/// thread ends its mailbox is kicked again every `WATCHDOG_INTERVAL` (no watchdog runs yet),
/// so a lost wake-up cannot leave this join blocked; a shard then only closes its logs.
fn stop_threads(senders: &[MailboxSender<Command>], threads: Vec<JoinHandle<()>>) {
    for sender in senders {
        let (reply, _ignored) = crossbeam_channel::bounded(1);
        let _ = sender.try_send(Command::Shutdown { reply });
    }
    for (shard, thread) in threads.into_iter().enumerate() {
        while !thread.is_finished() {
            if let Some(sender) = senders.get(shard) {
                sender.kick();
            }
            std::thread::sleep(WATCHDOG_INTERVAL);
        }
        let _ = thread.join();
    }
}

impl EngineHandle {
    /// The configuration the engine runs with.
    pub fn config(&self) -> &EngineConfig {
        &self.inner.config
    }

    /// The memlock check's outcome at start.
    pub fn memlock(&self) -> MemlockOutcome {
        self.inner.memlock
    }

    /// Appends `records` to `partition` as one batch and blocks until it is answered per
    /// `durability`.
    pub fn append(
        &self,
        partition: PartitionId,
        records: Records,
        durability: Durability,
    ) -> Result<AppendAck, EngineError> {
        let (reply, answer) = crossbeam_channel::bounded(1);
        let shard = self.send(
            partition,
            Command::Append {
                partition,
                records,
                durability,
                completion: Completion::Blocking(reply),
            },
        )?;
        self.wait_reply(shard, &answer)?
    }

    /// Starts an append; its [`AppendCompletion`] tagged `token` arrives on `reply`. Errors
    /// found before the append was queued (unknown partition, backpressure, closed engine)
    /// are returned here and nothing is sent on `reply`. `reply` must have room for every
    /// append outstanding on it (unbounded, or bounded to at least that many): the shard
    /// blocks on a full reply channel.
    pub fn append_async(
        &self,
        partition: PartitionId,
        records: Records,
        durability: Durability,
        token: u64,
        reply: &Sender<AppendCompletion>,
    ) -> Result<(), EngineError> {
        self.send(
            partition,
            Command::Append {
                partition,
                records,
                durability,
                completion: Completion::Channel { token, reply: reply.clone() },
            },
        )
        .map(|_| ())
    }

    /// Starts an append; `callback` runs on the shard's thread with the answer (keep it short
    /// and non-blocking). Errors found before the append was queued are returned here and the
    /// callback is dropped without running.
    pub fn append_with_callback(
        &self,
        partition: PartitionId,
        records: Records,
        durability: Durability,
        callback: impl FnOnce(Result<AppendAck, EngineError>) + Send + 'static,
    ) -> Result<(), EngineError> {
        self.send(
            partition,
            Command::Append {
                partition,
                records,
                durability,
                completion: Completion::Callback(Box::new(callback)),
            },
        )
        .map(|_| ())
    }

    /// Runs a task on the shard that owns `partition`, with that partition's [`Log`]: the
    /// embedded use of the log — producers as tasks on the shard's own executor, with no
    /// cross-thread hop per append (how the replicated node calls `Log::append`).
    ///
    /// `make` is sent to the shard (hence `Send`) and called there; the future it returns
    /// runs in the shard's command task queue. Appends made on the log directly are not
    /// counted in [`PartitionStats::appends`]/`records` (the log's own counters see them).
    /// The future must end (release the log) before [`shutdown`](Self::shutdown), which
    /// otherwise waits for it up to 30 s and then fails. Returns once the task is spawned.
    pub fn run_with_log<F, Fut>(&self, partition: PartitionId, make: F) -> Result<(), EngineError>
    where
        F: FnOnce(Rc<Log>) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + 'static,
    {
        let (reply, answer) = crossbeam_channel::bounded(1);
        let task: crate::shard_worker::LogTask = Box::new(move |log| Box::pin(make(log)));
        let shard = self.send(partition, Command::RunWithLog { partition, task, reply })?;
        self.wait_reply(shard, &answer)?
    }

    /// Reads whole durable batches of `partition` starting with the one holding `offset`, up
    /// to about `max_bytes` (at least one batch when any is available).
    pub fn fetch(
        &self,
        partition: PartitionId,
        offset: Offset,
        max_bytes: usize,
    ) -> Result<Fetched, EngineError> {
        if max_bytes > FETCH_BYTES_MAX {
            return Err(EngineError::FetchTooLarge {
                requested: max_bytes,
                limit: FETCH_BYTES_MAX,
            });
        }
        let (reply, answer) = crossbeam_channel::bounded(1);
        let shard = self.send(partition, Command::Fetch { partition, offset, max_bytes, reply })?;
        self.wait_reply(shard, &answer)?
    }

    /// The offset below which every record of `partition` is durable.
    pub fn durable_offset(&self, partition: PartitionId) -> Result<Offset, EngineError> {
        let (reply, answer) = crossbeam_channel::bounded(1);
        let shard = self.send(partition, Command::DurableOffset { partition, reply })?;
        self.wait_reply(shard, &answer)?
    }

    /// Counters of every shard and partition.
    pub fn stats(&self) -> Result<EngineStats, EngineError> {
        let mut stats = EngineStats::default();
        for (shard, sender) in self.inner.senders.iter().enumerate() {
            let (reply, answer) = crossbeam_channel::bounded(1);
            self.send_to(shard, sender, Command::Stats { reply })?;
            let mut shard_stats = self.wait_reply(shard, &answer)?;
            shard_stats.queued_commands = sender.len();
            stats.shards.push(shard_stats);
        }
        Ok(stats)
    }

    /// Flushes and closes every log, stops every shard and joins its thread. Later calls on
    /// any clone answer [`EngineError::Closed`]; a second `shutdown` is a no-op.
    pub fn shutdown(&self) -> Result<(), EngineError> {
        self.inner.shutdown()
    }

    /// Waits for `shard`'s answer on `answer`; see [`Inner::wait_reply`].
    fn wait_reply<T>(&self, shard: usize, answer: &Receiver<T>) -> Result<T, EngineError> {
        self.inner.wait_reply(shard, answer)
    }

    fn send(&self, partition: PartitionId, command: Command) -> Result<usize, EngineError> {
        let partitions = self.inner.config.partitions;
        if partition.0 >= partitions {
            return Err(EngineError::UnknownPartition { partition: partition.0, partitions });
        }
        let shard = self.inner.config.shard_of(partition);
        self.send_to(shard, &self.inner.senders[shard], command)?;
        Ok(shard)
    }

    fn send_to(
        &self,
        shard: usize,
        sender: &MailboxSender<Command>,
        command: Command,
    ) -> Result<(), EngineError> {
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(EngineError::Closed);
        }
        match sender.try_send(command) {
            Ok(()) => Ok(()),
            Err(SendFailure::Full(_)) => {
                Err(EngineError::Backpressure { shard, limit: self.inner.config.command_queue_max })
            }
            Err(SendFailure::Closed(_)) => Err(EngineError::Closed),
        }
    }
}

/// How long shutdown waits for a shard to take its Shutdown command when its queue is full.
const SHUTDOWN_ENQUEUE_TIMEOUT: Duration = Duration::from_secs(30);
/// How often a caller waiting for a shard's answer checks that the shard still runs and
/// wakes it again if its mailbox still holds commands.
const REPLY_CHECK_INTERVAL: Duration = Duration::from_millis(250);
/// Longest a caller waits for one answer from a running shard before it gives up with
/// [`EngineError::NoReply`] (far above any sane fdatasync stall).
pub const REPLY_WAIT_MAX: Duration = Duration::from_secs(300);

impl Inner {
    /// Waits for `shard`'s answer on `answer`, never forever:
    /// - the answer's sender dropped (the shard ended with the command) → `ShardStopped`;
    /// - the shard's thread ended (it panicked, maybe leaking the command) → `ShardStopped`;
    /// - commands still wait in its mailbox → the shard is woken again (a repeated wake-up
    ///   is harmless; see runtime_mailbox.rs), then the wait goes on;
    /// - no answer after `REPLY_WAIT_MAX` → `NoReply` (the command's outcome is unknown).
    fn wait_reply<T>(&self, shard: usize, answer: &Receiver<T>) -> Result<T, EngineError> {
        let started = Instant::now();
        loop {
            match answer.recv_timeout(REPLY_CHECK_INTERVAL) {
                Ok(value) => return Ok(value),
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(EngineError::ShardStopped { shard })
                }
                Err(RecvTimeoutError::Timeout) => {}
            }
            if self.shard_thread_ended(shard) {
                return Err(EngineError::ShardStopped { shard });
            }
            let waited = started.elapsed();
            if waited >= REPLY_WAIT_MAX {
                return Err(EngineError::NoReply { shard, waited_ms: waited.as_millis() as u64 });
            }
            // The watchdog re-wakes a shard that stopped draining its mailbox; doing it here
            // too covers a watchdog that could not be started.
            let sender = &self.senders[shard];
            let queued = sender.len();
            if sender.kick() {
                tracing::warn!(shard, queued, ?waited, "no answer yet; woke the shard again");
            } else {
                // Nothing queued, yet no answer: the executor may be parked having missed an
                // IO or blocking-pool wake-up (seen after a segment roll). Wake it anyway.
                sender.nudge();
            }
        }
    }

    /// Whether `shard`'s thread has ended (false once `shutdown` took the threads to join).
    fn shard_thread_ended(&self, shard: usize) -> bool {
        let threads = match self.threads.lock() {
            Ok(threads) => threads,
            Err(poisoned) => poisoned.into_inner(),
        };
        threads.get(shard).is_some_and(JoinHandle::is_finished)
    }

    fn shutdown(&self) -> Result<(), EngineError> {
        let own_shard = match self.threads.lock() {
            Ok(threads) => {
                threads.iter().position(|t| t.thread().id() == std::thread::current().id())
            }
            Err(_) => None,
        };
        if let Some(shard) = own_shard {
            // Joining our own thread would deadlock: the shards stop on their own once the
            // last handle is gone (their mailboxes close), so only refuse here.
            return Err(EngineError::Internal {
                shard,
                reason: "shutdown called on a shard thread (from an append callback?)".into(),
            });
        }
        if self.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        let mut first_error = None;
        let mut answers = Vec::with_capacity(self.senders.len());
        for (shard, sender) in self.senders.iter().enumerate() {
            let (reply, answer) = crossbeam_channel::bounded(1);
            let mut command = Command::Shutdown { reply };
            let deadline = std::time::Instant::now() + SHUTDOWN_ENQUEUE_TIMEOUT;
            loop {
                match sender.try_send(command) {
                    Ok(()) => {
                        answers.push((shard, answer));
                        break;
                    }
                    Err(SendFailure::Closed(_)) => break,
                    Err(SendFailure::Full(back)) if std::time::Instant::now() < deadline => {
                        // The queue drains as the shard works; new commands are refused now.
                        command = back;
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    Err(SendFailure::Full(_)) => {
                        first_error.get_or_insert(EngineError::Internal {
                            shard,
                            reason: "command queue stayed full during shutdown".to_string(),
                        });
                        break;
                    }
                }
            }
        }
        for (shard, answer) in answers {
            match self.wait_reply(shard, &answer) {
                Ok(Ok(())) => {}
                Ok(Err(error)) | Err(error) => {
                    first_error.get_or_insert(error);
                }
            }
        }
        let threads = match self.threads.lock() {
            Ok(mut threads) => std::mem::take(&mut *threads),
            Err(poisoned) => std::mem::take(&mut *poisoned.into_inner()),
        };
        for (shard, thread) in threads.into_iter().enumerate() {
            if let Err(panic) = thread.join() {
                first_error.get_or_insert(EngineError::Internal {
                    shard,
                    reason: runtime::panic_message(&panic),
                });
            }
        }
        // The executors ended: their rings and registered memory are gone.
        match self.memlock_reserved.lock() {
            Ok(mut reserved) => drop(reserved.take()),
            Err(poisoned) => drop(poisoned.into_inner().take()),
        }
        match self.placement.lock() {
            Ok(mut placement) => drop(placement.take()),
            Err(poisoned) => drop(poisoned.into_inner().take()),
        }
        first_error.map_or(Ok(()), Err)
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Err(error) = self.shutdown() {
            tracing::error!(%error, "engine shutdown on drop failed");
        }
    }
}

impl fmt::Debug for EngineHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EngineHandle")
            .field("data_dir", &self.inner.config.data_dir)
            .field("shards", &self.inner.config.shards)
            .field("partitions", &self.inner.config.partitions)
            .field("closed", &self.inner.closed.load(Ordering::Relaxed))
            .finish()
    }
}
