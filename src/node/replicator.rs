//! PartitionReplicator: one partition's Raft replica driven over its engine `Log`, its
//! `HardStateStore` and the shard's peer links. The only place where Raft actions meet IO.
//!
//! After every input (message, tick, durability report, proposal...) the replicator drains
//! `Replica::poll_action()` and carries the actions out **in order** (see `drain`):
//! - `PersistHardState` -> the hard-state writer task (store + fdatasync, then
//!   `handle_hard_state_durable`); only the newest wanted state is written (it covers older).
//! - `AppendEntries` -> `Log::append` (the leader's own entries: the log stamps them) or
//!   `Log::append_stamped` (a leader's batches, byte for byte), synchronously when no log
//!   operation is in flight, else queued behind it on the log worker. The leader hands its
//!   batch to its group commit here and to followers (`SendEntries`) in the same drain.
//! - `TruncateLog` / `ResetLog` -> the log worker (durable before anything queued after them
//!   is appended). A reset needs the leader's offset at `start`, which `InstallLogStart` does
//!   not carry: it is applied when the first entry at `start` arrives (its batch header has
//!   the offset); until then the old log stays, which is what a crash would bring back.
//! - `Send` -> the shard's links (heartbeats coalesced); `SendEntries` -> a sender task that
//!   reads the raw batches (`Log::read_entries`) and queues one `Append` frame; fresh entries
//!   on the latency queue, catch-up (entries already committed) on the bulk queue.
//! - `CommitAdvanced` -> producers with acks=quorum answered, long-poll readers woken.
//! - `ReadReady` / `ReadFailed` -> linearizable readers; `RoleChanged` -> counters;
//!   `MembershipChanged` -> links; `LearnerCaughtUp` -> promotion; `Repaired` -> the durable
//!   damaged mark removed.
//!
//! Durability is reported by a watcher task: `handle_durable(d, term_at(d))` whenever the
//! log's durable index moves (and `handle_durable(start - 1, prev_term)` after a reset).
//!
//! Invariants: the log's last index equals the core's last index once the log worker is idle
//! and no reset is pending (asserted on every append: the index the log stamps is the
//! entry's); nothing is reported durable before the log says so; a failed write or fdatasync
//! latches the partition (`failed`): every later call answers `StorageFailed`, nothing is
//! retried, and the shard's fatal signal fires. A full disk is not a failure: the leader
//! answers new appends `StorageFull` (before proposing, so the core and the log stay in
//! step); entries the core already holds (a follower's, a leader's no-op or membership
//! change) wait in the log worker for `Log::wait_space` and are appended, in order, once
//! space is back — a follower acks nothing it has not made durable, so the leader keeps
//! them and retransmits as Raft does; a truncation or reset refused for space, and a
//! `membership_base` write meeting ENOSPC, are retried the same way. Every queue has a named bound
//! (`PRODUCERS_PENDING_MAX`, `READS_WAITING_MAX`, the engine's `queued_bytes_max`, the
//! core's windows, the links' queues).
//!
//! Fault injection (tests only): `Node::start_with_faults` registers a `StorageFaults` for
//! the node's data dir in `STORAGE_FAULTS`; `open` gives a partition's log AND hard state
//! the partition's injector (one disk), so tests can fail a write or fdatasync of a running
//! node. A start without faults clears the data dir's entry; nothing else reads it.

#![forbid(unsafe_code)]

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::rc::{Rc, Weak};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use ringlog_engine::batch::peek_header;
use ringlog_engine::limits::{SPACE_RETRY_BACKOFF_INITIAL, SPACE_RETRY_BACKOFF_MAX};
use ringlog_engine::{
    AppendError, FaultInjector, FetchError, HardStateError, HardStateStore, Log, LogError,
    OpenError, ReadBound, RecoveryReport, ResetError, TruncateError,
};
use ringlog_net::protocol::{Acks, Consistency, FollowerStatus, GroupStatus};
use ringlog_net::{Offset, PartitionId};
use ringlog_raft::{
    Action, Entry, EntryKind, HardState, LogIndex, Membership, MembershipChange, MembershipError,
    Message, NodeId, ProposeError, ReadCtx, ReadIndexError, Recovered, Replica, Role, Term,
    TransferError,
};

use crate::node::addresses::{shard_addr, MembershipRecord};
use crate::node::api::{
    AppendOutcome, FollowerSnapshot, NodeAddresses, NodeError, NodeStartError, PartitionSnapshot,
    ReadOutcome, ShutdownMode,
};
use crate::node::core::ShardShared;
use crate::node::replicator_codec::{
    check_client_batch, entry_of_batch, entry_source, EntrySource,
};
use crate::node::replicator_meta as meta;
use ringlog_engine::notify::Notify;

use crate::node::replicator_wait::{within, Slot};
use crate::node::StorageFaults;

/// Producers waiting for their acks, per partition; more get `Backpressure`.
pub(crate) const PRODUCERS_PENDING_MAX: usize = 8192;
/// Readers waiting (long-poll or ReadIndex), per partition; more get `Backpressure`.
pub(crate) const READS_WAITING_MAX: usize = 1024;
/// Longest long-poll wait a read may ask for.
pub(crate) const READ_WAIT_MAX: Duration = Duration::from_secs(30);
/// A producer not answered by then gets `Timeout` (its batch may still commit).
pub(crate) const APPEND_ACK_TIMEOUT: Duration = Duration::from_secs(30);
/// A membership change not committed by then gets `Timeout`.
pub(crate) const MEMBERSHIP_COMMIT_TIMEOUT: Duration = Duration::from_secs(30);
/// Shutdown: longest wait for the replicator's tasks to let go of the log.
const CLOSE_WAIT_MAX: Duration = Duration::from_secs(2);
/// Hint given with `Backpressure`.
const RETRY_AFTER_MS: u32 = 50;

type AppendReply = Result<AppendOutcome, NodeError>;

/// Storage faults armed by tests, by node data dir (see the module docs). Empty in
/// production: only `Node::start_with_faults` inserts.
static STORAGE_FAULTS: Mutex<BTreeMap<PathBuf, StorageFaults>> = Mutex::new(BTreeMap::new());

/// Registers `faults` for the node whose data dir is `data_dir` (`None`: clears it).
pub(crate) fn install_storage_faults(data_dir: &Path, faults: Option<StorageFaults>) {
    let mut registry = STORAGE_FAULTS.lock().unwrap_or_else(PoisonError::into_inner);
    match faults {
        Some(faults) => {
            registry.insert(data_dir.to_path_buf(), faults);
        }
        None => {
            registry.remove(data_dir);
        }
    }
}

/// The injector registered for `partition` of the node whose data dir is `data_dir`.
fn storage_faults(data_dir: &Path, partition: PartitionId) -> Option<Arc<FaultInjector>> {
    let registry = STORAGE_FAULTS.lock().unwrap_or_else(PoisonError::into_inner);
    registry.get(data_dir).and_then(|faults| faults.injector(partition))
}

#[derive(Debug)]
struct Producer {
    term: Term,
    acks: Acks,
    record_count: u32,
    /// Base offset, once the log stamped the batch.
    base: Option<Offset>,
    slot: Slot<AppendReply>,
}

#[derive(Debug)]
enum LogOp {
    Append(Vec<Entry>),
    Truncate(LogIndex),
    Reset { start: LogIndex, prev_term: Term, membership: Membership },
}

#[derive(Clone, Copy, Debug)]
struct SendJob {
    to: NodeId,
    term: Term,
    prev_index: LogIndex,
    prev_term: Term,
    commit: LogIndex,
    from: LogIndex,
    through: LogIndex,
}

#[derive(Debug, Default)]
struct Counters {
    elections_started: u64,
    leader_changes: u64,
    appends: u64,
    append_bytes: u64,
    append_records: u64,
    fetches: u64,
    fetch_bytes: u64,
    errors: BTreeMap<String, u64>,
}

#[derive(Debug)]
struct State {
    replica: Replica,
    failed: Option<String>,
    closing: bool,
    /// Started from an empty data dir: damaged until every other configured voter reports
    /// a pristine shard (a new cluster), or repaired by a leader (a wiped disk).
    unproven: bool,
    log_ops: VecDeque<LogOp>,
    log_busy: bool,
    pending_reset: Option<(LogIndex, Term)>,
    hs_wanted: Option<HardState>,
    hs_busy: bool,
    fast_sends: VecDeque<SendJob>,
    fast_busy: bool,
    slow_sends: VecDeque<SendJob>,
    slow_busy: bool,
    producers: BTreeMap<LogIndex, Producer>,
    reads: BTreeMap<u64, Slot<Result<LogIndex, NodeError>>>,
    next_read: u64,
    readers_waiting: usize,
    /// `(index, offset after it)` of appended entries above the commit index.
    offsets: VecDeque<(LogIndex, Offset)>,
    commit_offset: Offset,
    promotions: Vec<NodeId>,
    unreachable: Vec<NodeId>,
    leader: Option<NodeId>,
    counters: Counters,
}

/// One partition's replication (see the module docs).
pub(crate) struct PartitionReplicator {
    partition: PartitionId,
    me: Weak<PartitionReplicator>,
    shard: Rc<ShardShared>,
    dir: PathBuf,
    log: Rc<Log>,
    hard_state: HardStateStore,
    batch_size_max: usize,
    queued_bytes_max: usize,
    seed: u64,
    st: RefCell<State>,
    /// Commit advanced (or the partition failed / closes): long-poll readers re-check.
    commit_notify: Notify,
    /// The log was truncated or reset: the durability watcher re-reads the durable index.
    log_notify: Notify,
    durability_started: Cell<bool>,
}

impl std::fmt::Debug for PartitionReplicator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PartitionReplicator").field("partition", &self.partition).finish()
    }
}

fn start_error(partition: PartitionId, reason: impl std::fmt::Display) -> NodeStartError {
    NodeStartError::Recovery { partition, reason: reason.to_string() }
}

impl PartitionReplicator {
    /// Opens the partition's log and hard state, recovers the core's state and builds the
    /// replica. Spawns nothing: `start` does.
    pub(crate) async fn open(
        shard: Rc<ShardShared>,
        partition: PartitionId,
    ) -> Result<Rc<PartitionReplicator>, NodeStartError> {
        let config = shard.config.clone();
        let dir = config.data_dir.join(partition.0.to_string());
        let fresh = std::fs::read_dir(&dir).map_or(true, |mut d| d.next().is_none());
        let log_config = config.to_log_config();
        let faults = storage_faults(&config.data_dir, partition).unwrap_or_default();
        let opened = Log::open_with_faults(&dir, log_config.clone(), faults.clone()).await;
        let (log, report) = opened.map_err(|e| match e {
            OpenError::Locked { ref path } | OpenError::DirectIoUnsupported { ref path, .. } => {
                NodeStartError::DataDir { path: path.clone(), reason: e.to_string() }
            }
            other => start_error(partition, other),
        })?;
        let (hard_state, loaded, hs_lost) = open_hard_state(&dir, partition, faults).await?;
        let mut damaged = report_damage(&report) || meta::is_damaged(&dir) || hs_lost || fresh;
        let mut hs = HardState { term: loaded.term, vote: loaded.vote };
        if hs.term < log.last_term() {
            // The hard state is older than the log: it was lost. Never vote again in a term
            // this replica may have voted in; repair from a leader.
            tracing::warn!(%partition, "hard state term below the log's last term: damaged");
            damaged = true;
            hs = HardState { term: log.last_term(), vote: None };
        }
        if damaged {
            meta::mark_damaged(&dir).map_err(|e| start_error(partition, e))?;
        }
        // A damaged replica that holds no history at all may be cleared by the pristine
        // proof (a new cluster; see core.rs), else only by a leader's repair.
        let unproven = damaged
            && hs.term == Term(0)
            && log.last_index() == LogIndex(0)
            && log.start_index() == LogIndex(1);
        let batch_size_max = log_config.batch_size_max;
        let recovered =
            recover(&shard, partition, &log, &dir, (hs, damaged), batch_size_max).await?;
        let seed = seed_for(shard.node, partition);
        let raft_config = config.to_raft_config(seed);
        let replica =
            Replica::new(raft_config, recovered).map_err(|e| start_error(partition, e))?;
        tracing::info!(
            %partition, damaged, unproven, term = %replica.term(), last = %replica.last_index(),
            start = %replica.log_start(), "partition recovered"
        );
        let commit_offset = Offset(log.start_offset().0);
        let state = State {
            replica,
            failed: None,
            closing: false,
            unproven,
            log_ops: VecDeque::new(),
            log_busy: false,
            pending_reset: None,
            hs_wanted: None,
            hs_busy: false,
            fast_sends: VecDeque::new(),
            fast_busy: false,
            slow_sends: VecDeque::new(),
            slow_busy: false,
            producers: BTreeMap::new(),
            reads: BTreeMap::new(),
            next_read: 1,
            readers_waiting: 0,
            offsets: VecDeque::new(),
            commit_offset,
            promotions: Vec::new(),
            unreachable: Vec::new(),
            leader: None,
            counters: Counters::default(),
        };
        Ok(Rc::new_cyclic(|me| PartitionReplicator {
            partition,
            me: me.clone(),
            shard,
            dir,
            log: Rc::new(log),
            hard_state,
            batch_size_max,
            queued_bytes_max: log_config.queued_bytes_max,
            seed,
            st: RefCell::new(state),
            commit_notify: Notify::default(),
            log_notify: Notify::default(),
            durability_started: Cell::new(false),
        }))
    }

    fn rc(&self) -> Rc<PartitionReplicator> {
        self.me.upgrade().expect("a replicator in use is alive")
    }

    pub(crate) fn partition_id(&self) -> PartitionId {
        self.partition
    }

    #[cfg(test)]
    pub(crate) fn log(&self) -> &Log {
        &self.log
    }

    /// Starts the durability watcher and carries out what the core asked at start.
    pub(crate) fn start(&self) {
        if !self.durability_started.replace(true) {
            let me = self.rc();
            self.shard.spawn_latency(async move { me.run_durability().await });
        }
        let members = self.members();
        self.shard.peers.ensure(members);
        self.drain();
    }

    fn members(&self) -> Vec<NodeId> {
        let st = self.st.borrow();
        let m = st.replica.membership();
        m.voters.iter().chain(&m.learners).copied().collect()
    }

    // ----- inputs ---------------------------------------------------------------------

    pub(crate) fn handle_message(&self, from: NodeId, message: Message) {
        if self.st.borrow().failed.is_some() {
            return;
        }
        self.st.borrow_mut().replica.handle_message(from, message);
        self.drain();
    }

    /// One Raft tick; `down`: peers whose link broke (probe them again).
    pub(crate) fn tick(&self, down: &[NodeId]) {
        {
            let mut st = self.st.borrow_mut();
            if st.failed.is_some() || st.closing {
                return;
            }
            for &peer in down {
                if st.replica.progress(peer).is_some() {
                    st.replica.handle_unreachable(peer);
                }
            }
            st.replica.handle_tick();
            promote_caught_up_learners(&mut st.replica);
        }
        self.drain();
    }

    /// Whether this replica holds no Raft history (term 0, empty log from index 1).
    pub(crate) fn pristine(&self) -> bool {
        let st = self.st.borrow();
        st.replica.term() == Term(0)
            && st.replica.last_index() == LogIndex(0)
            && self.log.last_index() == LogIndex(0)
    }

    pub(crate) fn is_unproven(&self) -> bool {
        self.st.borrow().unproven
    }

    /// Every other configured voter reported a pristine shard: the cluster is new, this
    /// replica (started from an empty dir) lost nothing and may vote. Restarts the core
    /// undamaged if nothing happened to it meanwhile; otherwise history exists and the
    /// replica stays damaged until a leader repairs it.
    pub(crate) fn prove_pristine(&self) {
        let pristine = self.pristine();
        {
            let mut st = self.st.borrow_mut();
            if !st.unproven {
                return;
            }
            st.unproven = false;
            if !pristine || st.hs_busy || st.log_busy {
                tracing::info!(partition = %self.partition, "history exists: staying damaged until repaired");
                return;
            }
            let config = self.shard.config.to_raft_config(self.seed ^ 0x5eed);
            let bootstrap = Recovered::bootstrap(self.shard.config.bootstrap_membership());
            match Replica::new(config, bootstrap) {
                Ok(replica) => st.replica = replica,
                Err(e) => {
                    tracing::error!(%e, "cannot restart the replica undamaged");
                    return;
                }
            }
        }
        if let Err(e) = meta::clear_damaged(&self.dir) {
            self.fail(format!("clear damaged mark: {e}"));
            return;
        }
        tracing::info!(partition = %self.partition, "new cluster confirmed by every peer: replica votes");
        self.drain();
    }

    // ----- the action pump --------------------------------------------------------------

    /// Carries out every queued action in order, then the inputs owed back (promotions,
    /// unreachable followers), until nothing is left.
    fn drain(&self) {
        loop {
            loop {
                let action = {
                    let mut st = self.st.borrow_mut();
                    if st.failed.is_some() {
                        return;
                    }
                    st.replica.poll_action()
                };
                let Some(action) = action else { break };
                self.execute(action);
            }
            let (promotions, unreachable) = {
                let mut st = self.st.borrow_mut();
                (std::mem::take(&mut st.promotions), std::mem::take(&mut st.unreachable))
            };
            if promotions.is_empty() && unreachable.is_empty() {
                return;
            }
            let mut st = self.st.borrow_mut();
            for learner in promotions {
                let result = st.replica.propose_membership(MembershipChange::Promote(learner));
                tracing::info!(partition = %self.partition, %learner, ?result, "promoting caught-up learner");
            }
            for peer in unreachable {
                st.replica.handle_unreachable(peer);
            }
        }
    }

    fn execute(&self, action: Action) {
        match action {
            Action::PersistHardState(state) => {
                let mut st = self.st.borrow_mut();
                st.hs_wanted = Some(state);
                if !st.hs_busy {
                    st.hs_busy = true;
                    let me = self.rc();
                    self.shard.spawn_latency(async move { me.run_hard_state().await });
                }
            }
            Action::TruncateLog { from } => {
                self.fail_producers_from(from);
                let mut st = self.st.borrow_mut();
                while st.offsets.back().is_some_and(|(i, _)| *i >= from) {
                    st.offsets.pop_back();
                }
                self.queue_log_op(&mut st, LogOp::Truncate(from));
            }
            Action::AppendEntries { entries } => {
                let idle = {
                    let st = self.st.borrow();
                    !st.log_busy && st.log_ops.is_empty() && st.pending_reset.is_none()
                };
                if idle {
                    if let Err(rest) = self.append_now(entries) {
                        let mut st = self.st.borrow_mut();
                        self.queue_log_op(&mut st, LogOp::Append(rest));
                    }
                } else {
                    let mut st = self.st.borrow_mut();
                    self.queue_log_op(&mut st, LogOp::Append(entries));
                }
            }
            Action::ResetLog { start, prev_term, membership } => {
                self.fail_producers_from(LogIndex(0));
                let mut st = self.st.borrow_mut();
                st.offsets.clear();
                self.queue_log_op(&mut st, LogOp::Reset { start, prev_term, membership });
            }
            Action::Send { to, message } => {
                if self.shard.peers.send(to, self.partition, message).is_err() {
                    self.st.borrow_mut().unreachable.push(to);
                }
            }
            Action::SendEntries { to, term, prev_index, prev_term, commit, from, through } => {
                let job = SendJob { to, term, prev_index, prev_term, commit, from, through };
                self.queue_send(job);
            }
            Action::CommitAdvanced { through } => self.on_commit(through),
            Action::ReadReady { ctx, index } => {
                if let Some(slot) = self.st.borrow_mut().reads.remove(&ctx.0) {
                    slot.fill(Ok(index));
                }
            }
            Action::ReadFailed { ctx } => {
                let error = self.not_leader();
                if let Some(slot) = self.st.borrow_mut().reads.remove(&ctx.0) {
                    slot.fill(Err(error));
                }
            }
            Action::RoleChanged { role, term, leader } => {
                let mut st = self.st.borrow_mut();
                if role == Role::Candidate {
                    st.counters.elections_started += 1;
                }
                if leader.is_some() && leader != st.leader {
                    st.counters.leader_changes += 1;
                }
                st.leader = leader;
                tracing::info!(partition = %self.partition, ?role, %term, ?leader, "role changed");
            }
            Action::Repaired => {
                self.st.borrow_mut().unproven = false;
                if let Err(e) = meta::clear_damaged(&self.dir) {
                    self.fail(format!("clear damaged mark: {e}"));
                }
                tracing::info!(partition = %self.partition, "replica repaired");
            }
            Action::LearnerCaughtUp { learner, .. } => {
                self.st.borrow_mut().promotions.push(learner);
            }
            Action::MembershipChanged(membership) => {
                tracing::info!(partition = %self.partition, ?membership, "membership changed");
                let members = membership.voters.iter().chain(&membership.learners).copied();
                self.shard.peers.ensure(members);
            }
        }
    }

    fn queue_log_op(&self, st: &mut State, op: LogOp) {
        st.log_ops.push_back(op);
        if !st.log_busy {
            st.log_busy = true;
            let me = self.rc();
            self.shard.spawn_latency(async move { me.run_log_worker().await });
        }
    }

    fn queue_send(&self, job: SendJob) {
        let mut guard = self.st.borrow_mut();
        let st = &mut *guard;
        let slow = job.from <= st.replica.commit();
        let (queue, busy) = match slow {
            false => (&mut st.fast_sends, &mut st.fast_busy),
            true => (&mut st.slow_sends, &mut st.slow_busy),
        };
        queue.push_back(job);
        if !*busy {
            *busy = true;
            let me = self.rc();
            let task = async move { me.run_sender(slow).await };
            match slow {
                false => self.shard.spawn_latency(task),
                true => self.shard.spawn_bulk(task),
            }
        }
    }

    /// Appends entries to the log now. `Err(rest)`: the log pushed back (its queue is full,
    /// or the disk is: `Log::storage_full`); the caller retries `rest` once a flush completed
    /// or space is back (`wait_to_append`).
    fn append_now(&self, entries: Vec<Entry>) -> Result<(), Vec<Entry>> {
        let mut entries = VecDeque::from(entries);
        while let Some(entry) = entries.pop_front() {
            let source = entry_source(&entry, self.batch_size_max, || self.record_for(&entry));
            let source = match source {
                Ok(source) => source,
                Err(reason) => return self.fail_append(reason),
            };
            let appended = match source {
                EntrySource::Own(request) => self.log.append(request),
                EntrySource::Stamped(batch) => {
                    if let EntryKind::Membership(_) = entry.kind {
                        self.learn_addresses(&batch);
                    }
                    self.log.append_stamped(batch)
                }
            };
            let appended = match appended {
                Ok(appended) => appended,
                Err(AppendError::Backpressure { .. } | AppendError::StorageFull { .. }) => {
                    entries.push_front(entry);
                    return Err(entries.into());
                }
                Err(e) => return self.fail_append(format!("append of {}: {e}", entry.index)),
            };
            assert_eq!(appended.index, entry.index, "the log and the Raft core disagree");
            let next = Offset(appended.base_offset.0 + u64::from(appended.record_count));
            let mut st = self.st.borrow_mut();
            st.offsets.push_back((entry.index, next));
            let base = Offset(appended.base_offset.0);
            if let Some(p) = st.producers.get_mut(&entry.index) {
                if p.term == entry.term {
                    p.base = Some(base);
                }
            }
            if st.producers.get(&entry.index).is_some_and(|p| p.acks == Acks::None) {
                let p = st.producers.remove(&entry.index).expect("checked");
                let outcome = self.outcome(&st, &p, base);
                p.slot.fill(Ok(outcome));
            }
            drop(st);
            self.log_notify.notify_all();
        }
        Ok(())
    }

    fn fail_append(&self, reason: String) -> Result<(), Vec<Entry>> {
        self.fail(reason);
        Ok(())
    }

    fn record_for(&self, entry: &Entry) -> MembershipRecord {
        let EntryKind::Membership(membership) = &entry.kind else {
            return MembershipRecord::default();
        };
        let addresses = self.shard.peers.book().entries_for(membership);
        MembershipRecord { membership: membership.clone(), addresses }
    }

    fn learn_addresses(&self, batch: &Bytes) {
        let Ok(entry) = entry_of_batch(batch.clone(), self.batch_size_max) else { return };
        let header_len = ringlog_engine::batch::BATCH_HEADER_SIZE;
        if let Ok(record) = MembershipRecord::decode(&entry.payload[header_len..]) {
            for (node, addresses) in record.addresses {
                self.shard.peers.learn(node, addresses);
            }
        }
    }

    /// Answers the producers waiting with `acks` whose batch index is at or below `through`
    /// (committed for `Quorum`, durable here for `Leader`): their offsets if the entry is
    /// still the one they appended (same term), else `NotLeader`.
    fn answer_producers(&self, st: &mut State, through: LogIndex, acks: Acks) {
        let ready: Vec<LogIndex> = st
            .producers
            .range(..=through)
            .filter(|(_, p)| p.acks == acks && p.base.is_some())
            .map(|(i, _)| *i)
            .collect();
        for index in ready {
            let p = st.producers.remove(&index).expect("listed");
            let reply = match (self.log.term_at(index) == Some(p.term), p.base) {
                (true, Some(base)) => Ok(self.outcome(st, &p, base)),
                _ => Err(self.not_leader_in(st)),
            };
            p.slot.fill(reply);
        }
    }

    fn outcome(&self, st: &State, p: &Producer, base: Offset) -> AppendOutcome {
        AppendOutcome {
            partition: self.partition,
            base_offset: base,
            last_offset: Offset(base.0 + u64::from(p.record_count).saturating_sub(1)),
            commit: st.commit_offset,
        }
    }

    fn on_commit(&self, through: LogIndex) {
        let mut st = self.st.borrow_mut();
        let mut found = None;
        while st.offsets.front().is_some_and(|(i, _)| *i <= through) {
            found = st.offsets.pop_front();
        }
        match found {
            Some((index, next)) if index == through => st.commit_offset = next,
            _ => {
                let me = self.rc();
                self.shard.spawn_bulk(async move { me.lookup_commit_offset(through).await });
            }
        }
        self.answer_producers(&mut st, through, Acks::Quorum);
        drop(st);
        self.commit_notify.notify_all();
    }

    /// The offset after the committed entry `through`, read from the log (entries recovered
    /// from disk are not in `offsets`).
    async fn lookup_commit_offset(self: Rc<Self>, through: LogIndex) {
        if through < self.log.start_index() {
            return;
        }
        let Ok(batches) = self.log.read_entries(through, through, 1).await else { return };
        let Some(header) = batches.first().and_then(|b| peek_header(b, self.batch_size_max).ok())
        else {
            return;
        };
        if header.index() != through {
            return;
        }
        let next = Offset(header.next_offset().0);
        let mut st = self.st.borrow_mut();
        if next > st.commit_offset {
            st.commit_offset = next;
        }
        drop(st);
        self.commit_notify.notify_all();
    }

    fn fail_producers_from(&self, from: LogIndex) {
        let mut st = self.st.borrow_mut();
        let error = self.not_leader_in(&st);
        let gone = st.producers.split_off(&from);
        for (_, p) in gone {
            p.slot.fill(Err(error.clone()));
        }
    }

    // ----- background tasks -------------------------------------------------------------

    async fn run_hard_state(self: Rc<Self>) {
        loop {
            let wanted = {
                let mut st = self.st.borrow_mut();
                match st.hs_wanted.take() {
                    Some(state) if st.failed.is_none() => state,
                    _ => {
                        st.hs_busy = false;
                        return;
                    }
                }
            };
            if let Err(e) = self.hard_state.store(wanted.term, wanted.vote).await {
                self.st.borrow_mut().hs_busy = false;
                return self.fail(format!("hard state: {e}"));
            }
            self.st.borrow_mut().replica.handle_hard_state_durable(wanted);
            self.drain();
        }
    }

    async fn run_log_worker(self: Rc<Self>) {
        loop {
            let op = {
                let mut st = self.st.borrow_mut();
                match st.log_ops.pop_front() {
                    Some(op) if st.failed.is_none() => op,
                    _ => {
                        st.log_busy = false;
                        return;
                    }
                }
            };
            match op {
                LogOp::Truncate(from) => {
                    if self.st.borrow().pending_reset.is_some() {
                        continue;
                    }
                    // Bound: each refusal for space waits until the log has space again.
                    loop {
                        match self.log.truncate_suffix(from).await {
                            Ok(()) => break,
                            Err(TruncateError::StorageFull { .. }) => {
                                if !self.wait_space().await {
                                    return;
                                }
                            }
                            Err(e) => return self.fail(format!("truncate from {from}: {e}")),
                        }
                    }
                    self.log_notify.notify_all();
                }
                LogOp::Reset { start, prev_term, membership } => {
                    let addresses = self.shard.peers.book().entries_for(&membership);
                    let record = MembershipRecord { membership, addresses };
                    let mut backoff = SPACE_RETRY_BACKOFF_INITIAL;
                    loop {
                        match meta::store_membership_base(&self.dir, &record) {
                            Ok(()) => break,
                            Err(e) if ringlog_engine::io::is_no_space(&e) => {
                                tracing::warn!(partition = %self.partition, error = %e, "disk full: membership base not written, retrying");
                                glommio::timer::sleep(backoff).await;
                                backoff = (backoff * 2).min(SPACE_RETRY_BACKOFF_MAX);
                                if self.st.borrow().failed.is_some() || self.st.borrow().closing {
                                    return self.stop_log_worker();
                                }
                            }
                            Err(e) => return self.fail(format!("membership base: {e}")),
                        }
                    }
                    self.st.borrow_mut().pending_reset = Some((start, prev_term));
                }
                LogOp::Append(entries) => {
                    if !self.apply_pending_reset(&entries).await {
                        return;
                    }
                    let mut entries = entries;
                    while let Err(rest) = self.append_now(entries) {
                        if !self.wait_to_append().await {
                            return;
                        }
                        entries = rest;
                    }
                }
            }
        }
    }

    /// Waits until the log may take an append it refused: space back after a full disk
    /// (`Log::wait_space`), else a flush completed (its queue was full). False if the
    /// partition failed or the log closed (the worker then stops).
    async fn wait_to_append(&self) -> bool {
        if self.log.storage_full().is_some() {
            return self.wait_space().await;
        }
        let last = self.log.last_index();
        match self.log.wait_durable(last).await {
            Err(LogError::Failed { reason }) => {
                self.fail(reason);
                false
            }
            _ => true,
        }
    }

    /// `Log::wait_space` for the log worker: false if the partition failed or the log closed
    /// meanwhile (the worker is then stopped).
    async fn wait_space(&self) -> bool {
        match self.log.wait_space().await {
            Ok(()) => true,
            Err(LogError::Failed { reason }) => {
                self.fail(reason);
                false
            }
            Err(_) => {
                self.stop_log_worker();
                false
            }
        }
    }

    /// Marks the log worker stopped (the log closed under it).
    fn stop_log_worker(&self) {
        self.st.borrow_mut().log_busy = false;
    }

    /// Applies a pending reset before the first entry at its start (see the module docs).
    /// Returns false if the partition failed.
    async fn apply_pending_reset(&self, entries: &[Entry]) -> bool {
        let Some((start, prev_term)) = self.st.borrow().pending_reset else { return true };
        let Some(first) = entries.first() else { return true };
        assert_eq!(first.index, start, "the first entry after a log reset is at its start");
        let offset = match peek_header(&first.payload, self.batch_size_max) {
            Ok(header) => header.base_offset(),
            Err(e) => {
                self.fail(format!("entry at the reset start: {e}"));
                return false;
            }
        };
        // Bound: each refusal for space waits until the log has space again.
        loop {
            match self.log.reset(start, offset, prev_term).await {
                Ok(()) => break,
                Err(ResetError::StorageFull { .. }) => {
                    if !self.wait_space().await {
                        return false;
                    }
                }
                Err(e) => {
                    self.fail(format!("log reset to {start}: {e}"));
                    return false;
                }
            }
        }
        {
            let mut st = self.st.borrow_mut();
            st.pending_reset = None;
            st.commit_offset = st.commit_offset.max(Offset(offset.0));
            st.replica.handle_durable(start.prev(), prev_term);
        }
        self.log_notify.notify_all();
        self.drain();
        true
    }

    async fn run_sender(self: Rc<Self>, slow: bool) {
        loop {
            let job = {
                let mut guard = self.st.borrow_mut();
                let st = &mut *guard;
                let (queue, busy) = match slow {
                    false => (&mut st.fast_sends, &mut st.fast_busy),
                    true => (&mut st.slow_sends, &mut st.slow_busy),
                };
                match queue.pop_front() {
                    Some(job) => job,
                    None => {
                        *busy = false;
                        return;
                    }
                }
            };
            if self.st.borrow().failed.is_some() {
                continue;
            }
            let entries = match self.read_for_send(&job).await {
                Ok(entries) => entries,
                Err(reason) => {
                    tracing::debug!(partition = %self.partition, to = %job.to, %reason, "cannot build append");
                    self.st.borrow_mut().unreachable.push(job.to);
                    self.drain();
                    continue;
                }
            };
            let message = Message::Append {
                term: job.term,
                prev_index: job.prev_index,
                prev_term: job.prev_term,
                commit: job.commit,
                entries,
            };
            if self.shard.peers.send(job.to, self.partition, message).is_err() {
                self.st.borrow_mut().unreachable.push(job.to);
                self.drain();
            }
        }
    }

    async fn read_for_send(&self, job: &SendJob) -> Result<Vec<Entry>, String> {
        if job.from > job.through {
            return Ok(Vec::new());
        }
        let max_bytes = self.shard.config.raft.append_bytes_max as usize + self.batch_size_max;
        let batches = self
            .log
            .read_entries(job.from, job.through, max_bytes)
            .await
            .map_err(|e| e.to_string())?;
        let mut entries = Vec::with_capacity(batches.len());
        let mut expected = job.from;
        for batch in batches {
            let entry = entry_of_batch(batch, self.batch_size_max)?;
            if entry.index != expected {
                return Err(format!("read {} where {expected} was expected", entry.index));
            }
            expected = expected.next();
            entries.push(entry);
        }
        if entries.is_empty() {
            return Err(format!("entries {}..={} not in the log", job.from, job.through));
        }
        Ok(entries)
    }

    /// Reports the log's durable index to the core whenever it moves.
    async fn run_durability(self: Rc<Self>) {
        let mut reported: Option<LogIndex> = None;
        loop {
            if self.st.borrow().closing || self.st.borrow().failed.is_some() {
                return;
            }
            let epoch = self.log_notify.epoch();
            let durable = self.log.durable_index();
            if reported != Some(durable) {
                reported = Some(durable);
                self.report_durable(durable);
            }
            // `wait_durable` answers at once for an index not appended yet: wait for an
            // append (or truncation / reset) then, never spin.
            let changed = self.log_notify.wait(epoch);
            let result = if durable >= self.log.last_index() {
                changed.await;
                Ok(())
            } else {
                let wait = self.log.wait_durable(durable.next());
                futures_lite::future::or(wait, async {
                    changed.await;
                    Ok(())
                })
                .await
            };
            match result {
                Ok(()) | Err(LogError::Truncated { .. }) => {}
                Err(LogError::Failed { reason }) => return self.fail(reason),
                Err(_) => return,
            }
        }
    }

    fn report_durable(&self, durable: LogIndex) {
        let Some(term) = self.log.term_at(durable) else { return };
        {
            let mut st = self.st.borrow_mut();
            if st.pending_reset.is_some() {
                return;
            }
            st.replica.handle_durable(durable, term);
            self.answer_producers(&mut st, durable, Acks::Leader);
        }
        self.drain();
    }

    /// Applies retention within what is committed and durable here, keeping the newest
    /// committed membership batch (it carries the membership and the address book).
    pub(crate) async fn apply_retention(&self) {
        let bound = {
            let st = self.st.borrow();
            if st.failed.is_some() || st.closing || st.pending_reset.is_some() {
                return;
            }
            let r = &st.replica;
            let mut bound = r.commit().min(r.durable()).min(self.log.durable_index()).next();
            let commit = r.commit();
            if let Some(m) =
                self.log.membership_indices().into_iter().filter(|i| *i <= commit).max()
            {
                bound = bound.min(m);
            }
            bound
        };
        let now = crate::node::replicator_codec::now_unix_ms();
        match self.log.apply_retention(now, bound).await {
            Ok(report) if report.segments_deleted > 0 => {
                let mut st = self.st.borrow_mut();
                let start = report.start_index.min(st.replica.commit().next());
                if start > st.replica.log_start() {
                    st.replica.handle_log_start(start);
                }
                drop(st);
                self.drain();
            }
            Ok(_) => {}
            Err(e) => self.fail(format!("retention: {e}")),
        }
    }

    // ----- failure and shutdown -----------------------------------------------------------

    /// Latches the partition failed (fatal, never retried) and fires the shard's signal.
    pub(crate) fn fail(&self, reason: String) {
        let error = NodeError::StorageFailed { partition: self.partition, reason: reason.clone() };
        {
            let mut st = self.st.borrow_mut();
            if st.failed.is_some() {
                return;
            }
            tracing::error!(partition = %self.partition, %reason, "partition failed (fatal)");
            st.failed = Some(reason);
            for (_, p) in std::mem::take(&mut st.producers) {
                p.slot.fill(Err(error.clone()));
            }
            for (_, slot) in std::mem::take(&mut st.reads) {
                slot.fill(Err(error.clone()));
            }
        }
        self.commit_notify.notify_all();
        self.shard.set_fatal(error);
    }

    /// Fails every waiter with `ShuttingDown`; later calls answer it too.
    pub(crate) fn close(&self) {
        {
            let mut st = self.st.borrow_mut();
            st.closing = true;
            for (_, p) in std::mem::take(&mut st.producers) {
                p.slot.fill(Err(NodeError::ShuttingDown));
            }
            for (_, slot) in std::mem::take(&mut st.reads) {
                slot.fill(Err(NodeError::ShuttingDown));
            }
        }
        self.commit_notify.notify_all();
        self.log_notify.notify_all();
    }

    /// Closes the log once every task of this replicator has let go of it (bounded wait). Callers still holding the replicator keep the log open until they
    /// drop it (its `Drop` stops the tasks then).
    pub(crate) async fn close_log(me: Rc<Self>, _mode: ShutdownMode) -> Result<(), LogError> {
        let deadline = Instant::now() + CLOSE_WAIT_MAX;
        while Rc::strong_count(&me) > 1 && Instant::now() < deadline {
            glommio::timer::sleep(Duration::from_millis(2)).await;
        }
        let Ok(replicator) = Rc::try_unwrap(me) else {
            return Ok(());
        };
        let PartitionReplicator { log, .. } = replicator;
        let Ok(log) = Rc::try_unwrap(log) else { return Ok(()) };
        // Both modes flush what the log already queued (one group commit at most) and wait
        // for its tasks, so that the data dir is released before this returns.
        log.close().await
    }

    pub(crate) fn is_leader(&self) -> bool {
        self.st.borrow().replica.role() == Role::Leader
    }

    /// The voter with the highest match index, to hand leadership to.
    pub(crate) fn best_follower(&self) -> Option<NodeId> {
        let st = self.st.borrow();
        let r = &st.replica;
        r.membership()
            .voters
            .iter()
            .filter(|&&n| n != r.id())
            .filter_map(|&n| r.progress(n).map(|p| (p.match_index, n)))
            .filter(|(_, _)| true)
            .max()
            .map(|(_, n)| n)
    }

    fn usable(&self) -> Result<(), NodeError> {
        let st = self.st.borrow();
        if let Some(reason) = &st.failed {
            return Err(NodeError::StorageFailed {
                partition: self.partition,
                reason: reason.clone(),
            });
        }
        if st.closing {
            return Err(NodeError::ShuttingDown);
        }
        Ok(())
    }

    fn not_leader(&self) -> NodeError {
        self.not_leader_in(&self.st.borrow())
    }

    fn not_leader_in(&self, st: &State) -> NodeError {
        let leader = st.replica.leader().filter(|&l| l != st.replica.id());
        NodeError::NotLeader {
            node: self.shard.node,
            partition: self.partition,
            leader,
            address: leader.and_then(|l| self.client_addr_of(l)),
        }
    }

    fn client_addr_of(&self, node: NodeId) -> Option<SocketAddr> {
        self.shard.peers.addresses(node).map(|a| shard_addr(a.client, self.shard.shard))
    }

    fn count_error(&self, error: &NodeError) {
        let name = format!("{:?}", error.to_reply().code());
        *self.st.borrow_mut().counters.errors.entry(name).or_default() += 1;
    }

    // ----- the serving side's API -------------------------------------------------------

    /// Appends one client batch (zero stamp) and waits for `acks`.
    pub async fn append(&self, acks: Acks, batch: Bytes) -> Result<AppendOutcome, NodeError> {
        let result = self.append_inner(acks, batch).await;
        if let Err(e) = &result {
            self.count_error(e);
        }
        result
    }

    async fn append_inner(&self, acks: Acks, batch: Bytes) -> Result<AppendOutcome, NodeError> {
        self.usable()?;
        let record_count =
            check_client_batch(&batch, self.batch_size_max).map_err(NodeError::Invalid)?;
        let size = batch.len();
        let slot = Slot::new();
        let index = {
            let mut st = self.st.borrow_mut();
            if st.producers.len() >= PRODUCERS_PENDING_MAX
                || self.log.queued_bytes() + size > self.queued_bytes_max
            {
                return Err(NodeError::Backpressure { retry_after_ms: RETRY_AFTER_MS });
            }
            // A full disk: refused before the core holds the entry (a follower answers
            // NotLeader as usual, below).
            if st.replica.role() == Role::Leader {
                if let Some(reason) = self.log.storage_full() {
                    return Err(NodeError::StorageFull { partition: self.partition, reason });
                }
            }
            let index = st.replica.propose(batch).map_err(|e| match e {
                ProposeError::NotLeader { .. } => self.not_leader_in(&st),
                ProposeError::TooLarge { size, max } => NodeError::Oversize { len: size, max },
                _ => NodeError::Backpressure { retry_after_ms: RETRY_AFTER_MS },
            })?;
            let term = st.replica.term();
            let producer = Producer { term, acks, record_count, base: None, slot: slot.clone() };
            st.producers.insert(index, producer);
            let c = &mut st.counters;
            c.appends += 1;
            c.append_bytes += size as u64;
            c.append_records += u64::from(record_count);
            index
        };
        self.drain();
        match within(APPEND_ACK_TIMEOUT, slot.wait()).await {
            Some(reply) => reply,
            None => {
                self.st.borrow_mut().producers.remove(&index);
                Err(NodeError::Timeout)
            }
        }
    }

    /// Committed batches from `offset` (see the contract).
    pub async fn read(
        &self,
        offset: Offset,
        max_bytes: u32,
        consistency: Consistency,
        wait: Duration,
    ) -> Result<ReadOutcome, NodeError> {
        let result = self.read_inner(offset, max_bytes, consistency, wait).await;
        match &result {
            Ok(out) => {
                let mut st = self.st.borrow_mut();
                st.counters.fetches += 1;
                st.counters.fetch_bytes += out.batches.iter().map(|b| b.len() as u64).sum::<u64>();
            }
            Err(e) => self.count_error(e),
        }
        result
    }

    async fn read_inner(
        &self,
        offset: Offset,
        max_bytes: u32,
        consistency: Consistency,
        wait: Duration,
    ) -> Result<ReadOutcome, NodeError> {
        self.usable()?;
        let deadline = Instant::now() + wait.min(READ_WAIT_MAX);
        let floor = match consistency {
            Consistency::ReplicaCommitted => LogIndex(0),
            Consistency::LeaderLinearizable => self.read_index(deadline).await?,
        };
        {
            let mut st = self.st.borrow_mut();
            if st.readers_waiting >= READS_WAITING_MAX {
                return Err(NodeError::Backpressure { retry_after_ms: RETRY_AFTER_MS });
            }
            st.readers_waiting += 1;
        }
        let result = self.read_loop(offset, max_bytes, floor, deadline).await;
        self.st.borrow_mut().readers_waiting -= 1;
        result
    }

    /// ReadIndex: the index a linearizable read must see (the leader confirmed it leads).
    async fn read_index(&self, deadline: Instant) -> Result<LogIndex, NodeError> {
        let slot = Slot::new();
        let ctx = {
            let mut st = self.st.borrow_mut();
            if st.reads.len() >= READS_WAITING_MAX {
                return Err(NodeError::Backpressure { retry_after_ms: RETRY_AFTER_MS });
            }
            let ctx = st.next_read;
            st.next_read += 1;
            st.replica.read_index(ReadCtx(ctx)).map_err(|e| match e {
                ReadIndexError::NotLeader { .. } => self.not_leader_in(&st),
                _ => NodeError::Backpressure { retry_after_ms: RETRY_AFTER_MS },
            })?;
            st.reads.insert(ctx, slot.clone());
            ctx
        };
        self.drain();
        let timeout =
            deadline.saturating_duration_since(Instant::now()).max(self.election_timeout());
        match within(timeout, slot.wait()).await {
            Some(reply) => reply,
            None => {
                self.st.borrow_mut().reads.remove(&ctx);
                Err(NodeError::Timeout)
            }
        }
    }

    fn election_timeout(&self) -> Duration {
        let c = &self.shard.config;
        c.tick_interval() * (2 * c.raft.election_ticks as u32)
    }

    async fn read_loop(
        &self,
        offset: Offset,
        max_bytes: u32,
        floor: LogIndex,
        deadline: Instant,
    ) -> Result<ReadOutcome, NodeError> {
        loop {
            self.usable()?;
            let epoch = self.commit_notify.epoch();
            let (commit, reset_pending) = {
                let st = self.st.borrow();
                (st.replica.commit(), st.pending_reset.is_some())
            };
            if commit >= floor && !reset_pending {
                let out = self.fetch_committed(offset, max_bytes, commit).await?;
                if self.has_news(&out, commit) || Instant::now() >= deadline {
                    return Ok(out);
                }
            } else if Instant::now() >= deadline {
                return Err(NodeError::Timeout);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            within(left, self.commit_notify.wait(epoch)).await;
        }
    }

    /// Whether a fetch found something for a long-polling reader: records, or control
    /// batches followed by more committed entries. Control batches take an index but no
    /// offset, so a reader at the end of the log right after a leader change would otherwise
    /// get the new leader's no-op back at once, again and again, with `next_offset`
    /// unchanged: that is no news, and the read waits for a commit instead.
    fn has_news(&self, out: &ReadOutcome, commit: LogIndex) -> bool {
        let Some(last) = out.batches.last() else { return false };
        let only_control = out
            .batches
            .iter()
            .all(|b| peek_header(b, self.batch_size_max).is_ok_and(|h| h.record_count() == 0));
        if !only_control {
            return true;
        }
        peek_header(last, self.batch_size_max).map_or(true, |h| h.index() < commit)
    }

    async fn fetch_committed(
        &self,
        offset: Offset,
        max_bytes: u32,
        commit: LogIndex,
    ) -> Result<ReadOutcome, NodeError> {
        let engine_offset = ringlog_engine::Offset(offset.0);
        let bound = ReadBound::Through(commit);
        let fetched = self.log.fetch(engine_offset, max_bytes as usize, bound).await;
        let batches = match fetched {
            Ok(batches) => batches,
            Err(FetchError::OffsetOutOfRange { start, next, .. }) => {
                return Err(NodeError::OffsetOutOfRange {
                    partition: self.partition,
                    requested: offset,
                    log_start: Offset(start.0),
                    log_end: Offset(next.0),
                })
            }
            Err(e) => {
                if let Some(reason) = self.log.failure() {
                    self.fail(reason);
                }
                return Err(NodeError::Internal(format!("fetch: {e}")));
            }
        };
        let next_offset = batches
            .last()
            .and_then(|b| peek_header(b, self.batch_size_max).ok())
            .map_or(offset, |h| Offset(h.next_offset().0));
        let st = self.st.borrow();
        Ok(ReadOutcome {
            partition: self.partition,
            batches,
            next_offset,
            commit: st.commit_offset,
            log_start: Offset(self.log.start_offset().0),
        })
    }

    pub fn status(&self) -> GroupStatus {
        let st = self.st.borrow();
        let r = &st.replica;
        GroupStatus {
            partition: self.partition,
            node: self.shard.node,
            role: r.role(),
            term: r.term(),
            leader: r.leader(),
            commit: r.commit(),
            durable: r.durable(),
            last_index: r.last_index(),
            commit_offset: st.commit_offset,
            followers: self
                .followers(&st)
                .into_iter()
                .map(|f| FollowerStatus {
                    node: f.node,
                    durable: f.durable,
                    lag: f.lag,
                    learner: f.learner,
                })
                .collect(),
        }
    }

    fn followers(&self, st: &State) -> Vec<FollowerSnapshot> {
        let r = &st.replica;
        if r.role() != Role::Leader {
            return Vec::new();
        }
        let m = r.membership();
        m.voters
            .iter()
            .chain(&m.learners)
            .filter(|&&n| n != r.id())
            .filter_map(|&n| {
                let p = r.progress(n)?;
                Some(FollowerSnapshot {
                    node: n,
                    durable: p.match_index,
                    lag: r.last_index().0.saturating_sub(p.match_index.0),
                    learner: m.learners.contains(&n),
                    inflight_msgs: p.inflight_msgs as u64,
                    inflight_bytes: p.inflight_bytes,
                })
            })
            .collect()
    }

    pub fn transfer_leadership(&self, to: NodeId) -> Result<(), NodeError> {
        self.usable()?;
        let result = {
            let mut st = self.st.borrow_mut();
            st.replica.transfer_leadership(to).map_err(|e| match e {
                TransferError::NotLeader { .. } => self.not_leader_in(&st),
                other => NodeError::Rejected(other.to_string()),
            })
        };
        self.drain();
        result
    }

    pub async fn change_membership(
        &self,
        change: MembershipChange,
        addresses: Option<NodeAddresses>,
    ) -> Result<LogIndex, NodeError> {
        self.usable()?;
        if let MembershipChange::AddLearner(node) = change {
            match addresses {
                Some(addresses) => self.shard.peers.learn(node, addresses),
                None if self.shard.peers.addresses(node).is_some() => {}
                None => {
                    return Err(NodeError::Invalid(format!(
                        "adding {node} needs its addresses (it is not in [[peers]])"
                    )))
                }
            }
            self.shard.peers.ensure([node]);
        }
        let (index, term) = {
            let mut st = self.st.borrow_mut();
            if st.replica.role() == Role::Leader {
                if let Some(reason) = self.log.storage_full() {
                    return Err(NodeError::StorageFull { partition: self.partition, reason });
                }
            }
            let index = st.replica.propose_membership(change).map_err(|e| match e {
                MembershipError::NotLeader { .. } => self.not_leader_in(&st),
                MembershipError::Backpressure => {
                    NodeError::Backpressure { retry_after_ms: RETRY_AFTER_MS }
                }
                other => NodeError::Rejected(other.to_string()),
            })?;
            (index, st.replica.term())
        };
        self.drain();
        let deadline = Instant::now() + MEMBERSHIP_COMMIT_TIMEOUT;
        loop {
            self.usable()?;
            let epoch = self.commit_notify.epoch();
            let commit = self.st.borrow().replica.commit();
            if self.log.term_at(index).is_some_and(|t| t != term) {
                return Err(NodeError::Rejected("the change was lost with the leadership".into()));
            }
            if commit >= index {
                return Ok(index);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(NodeError::Timeout);
            }
            within(left, self.commit_notify.wait(epoch)).await;
        }
    }

    pub fn leader_hint(&self) -> (Option<NodeId>, Option<SocketAddr>) {
        let leader = self.st.borrow().replica.leader();
        (leader, leader.and_then(|l| self.client_addr_of(l)))
    }

    pub(crate) fn snapshot(&self) -> PartitionSnapshot {
        let st = self.st.borrow();
        let r = &st.replica;
        let stats = self.log.stats();
        let c = &st.counters;
        PartitionSnapshot {
            partition: self.partition,
            role: Some(r.role()),
            term: r.term(),
            leader: r.leader(),
            commit: r.commit(),
            durable: r.durable(),
            last_index: r.last_index(),
            commit_offset: st.commit_offset,
            log_start_offset: Offset(self.log.start_offset().0),
            elections_started: c.elections_started,
            leader_changes: c.leader_changes,
            appends: c.appends,
            append_bytes: c.append_bytes,
            append_records: c.append_records,
            fetches: c.fetches,
            fetch_bytes: c.fetch_bytes,
            errors: c.errors.iter().map(|(k, v)| (k.clone(), *v)).collect(),
            pending_appends: st.producers.len() as u64,
            log_queued_bytes: self.log.queued_bytes() as u64,
            flushes: stats.flushes,
            fdatasyncs: stats.fdatasyncs,
            bytes_written: stats.bytes_written,
            fdatasync_latency_buckets_us: stats.fdatasync_latency_us.cumulative_buckets(),
            fdatasync_latency_sum_us: stats.fdatasync_latency_us.sum(),
            batch_size_buckets: stats.batch_size_bytes.cumulative_buckets(),
            batch_size_sum: stats.batch_size_bytes.sum(),
            followers: self.followers(&st),
        }
    }

    #[cfg(test)]
    pub(crate) fn is_damaged(&self) -> bool {
        self.st.borrow().replica.is_damaged()
    }

    #[cfg(test)]
    pub(crate) fn commit(&self) -> LogIndex {
        self.st.borrow().replica.commit()
    }

    pub(crate) fn failure(&self) -> Option<String> {
        self.st.borrow().failed.clone()
    }
}

/// Leader: proposes the promotion of a learner whose durable, matching log reached the
/// commit index. `LearnerCaughtUp` is reported once per leadership and its promotion can be
/// refused (another change still uncommitted), so the tick retries (the core refuses
/// duplicates: one change at a time).
fn promote_caught_up_learners(replica: &mut Replica) {
    if replica.role() != Role::Leader {
        return;
    }
    let commit = replica.commit();
    let learners = replica.membership().learners.clone();
    for learner in learners {
        if replica.progress(learner).is_some_and(|p| p.match_index >= commit && !p.damaged) {
            if let Ok(index) = replica.propose_membership(MembershipChange::Promote(learner)) {
                tracing::info!(%learner, %index, "promoting caught-up learner");
            }
        }
    }
}

fn report_damage(report: &RecoveryReport) -> bool {
    if let Some(cut) = &report.truncated_at {
        tracing::warn!(?cut, "log corruption cut at recovery: replica damaged");
        return true;
    }
    false
}

/// Opens the hard state; a corrupt file (both slots bad) is replaced and reported lost.
async fn open_hard_state(
    dir: &std::path::Path,
    partition: PartitionId,
    faults: Arc<FaultInjector>,
) -> Result<(HardStateStore, ringlog_engine::HardState, bool), NodeStartError> {
    match HardStateStore::open_with_faults(dir, faults.clone()).await {
        Ok(store) => match store.load().await {
            Ok(state) => return Ok((store, state, false)),
            Err(HardStateError::Corrupt { .. }) => {}
            Err(e) => return Err(start_error(partition, e)),
        },
        Err(HardStateError::Corrupt { .. }) => {}
        Err(e) => return Err(start_error(partition, e)),
    }
    tracing::warn!(%partition, "hard state corrupt: replica damaged, hard state reset");
    std::fs::remove_file(dir.join("hard_state")).map_err(|e| start_error(partition, e))?;
    let store = HardStateStore::open_with_faults(dir, faults)
        .await
        .map_err(|e| start_error(partition, e))?;
    Ok((store, ringlog_engine::HardState::default(), true))
}

/// Builds the core's `Recovered` from the log (term runs, membership batches) and the
/// metadata files.
async fn recover(
    shard: &ShardShared,
    partition: PartitionId,
    log: &Log,
    dir: &std::path::Path,
    (hard_state, damaged): (HardState, bool),
    batch_size_max: usize,
) -> Result<Recovered, NodeStartError> {
    let start = log.start_index();
    let last = log.last_index();
    let mut term_runs = Vec::new();
    let mut at = start;
    while at <= last {
        let term = log.term_at(at).expect("inside the log");
        term_runs.push((at, term));
        // Terms never decrease: binary search the last index of this run.
        let (mut lo, mut hi) = (at.0, last.0);
        while lo < hi {
            let mid = lo + (hi - lo).div_ceil(2);
            if log.term_at(LogIndex(mid)) == Some(term) {
                lo = mid;
            } else {
                hi = mid - 1;
            }
        }
        at = LogIndex(lo + 1);
    }
    let base_record = if start > LogIndex(1) { meta::load_membership_base(dir) } else { None };
    let mut membership = shard.config.bootstrap_membership();
    if let Some(record) = base_record {
        for (node, addresses) in &record.addresses {
            shard.peers.learn(*node, *addresses);
        }
        membership = record.membership;
    }
    let mut membership_entries = Vec::new();
    for index in log.membership_indices() {
        let batches = log
            .read_entries(index, index, batch_size_max)
            .await
            .map_err(|e| start_error(partition, e))?;
        let Some(batch) = batches.into_iter().next() else { continue };
        let header_len = ringlog_engine::batch::BATCH_HEADER_SIZE;
        let record = MembershipRecord::decode(&batch[header_len..])
            .map_err(|e| start_error(partition, e))?;
        for (node, addresses) in &record.addresses {
            shard.peers.learn(*node, *addresses);
        }
        membership_entries.push((index, record.membership));
    }
    Ok(Recovered {
        hard_state,
        log_start: start,
        prev_term: log.term_at(start.prev()).unwrap_or(Term(0)),
        last_index: last,
        term_runs,
        membership,
        membership_entries,
        commit: LogIndex(0),
        damaged,
    })
}

fn seed_for(node: NodeId, partition: PartitionId) -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    (u64::from(node.0) << 40) ^ (u64::from(partition.0) << 20) ^ nanos
}
