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
//!   on the latency queue, catch-up (entries already committed) on the catch-up queue.
//! - `CommitAdvanced` -> producers with acks=quorum answered, long-poll readers woken.
//! - `ReadReady` / `ReadFailed` -> linearizable readers; `RoleChanged` -> counters, and on
//!   losing leadership every pending producer answered `Timeout` at once (outcome unknown);
//!   `MembershipChanged` -> links; `LearnerCaughtUp` -> promotion; `Repaired` -> the durable
//!   damaged mark removed.
//!
//! Durability is reported by a watcher task: `handle_durable(d, term_at(d))` whenever the
//! log's durable index moves (and `handle_durable(start - 1, prev_term)` after a reset).
//!
//! Engine state the core has moved past: the core truncates, appends and commits in one
//! input, but the engine's truncation (and a reset) runs later on the log worker, so for a
//! while the engine still holds batches the core has dropped. An index is *pending* while a
//! truncation at or below it is queued or running (`log_ops`, `log_running`), and every
//! index is pending while a reset is queued, running or deferred (`pending_reset`); see
//! `State::engine_pending_from`. Rules:
//! - "commit" here is the commit this driver has carried out (`State::commit_acted`, moved
//!   by `CommitAdvanced`), never the core's `commit()`: the core holds every action of an
//!   input until that input's new term or vote is durable, while its commit and log move at
//!   once — a reader woken during that hard-state write saw the new commit with the
//!   overriding truncation not queued yet, and read never-committed batches;
//! - a read (`read_loop`) returns only batches through `min(commit, first pending - 1)` and
//!   otherwise waits (a long poll) until the log worker has applied the pending state (it
//!   wakes readers when it has); a linearizable read waits until its ReadIndex is settled;
//! - the commit offset is read from the engine (`lookup_commit_offset`) only where nothing
//!   is pending and the batch's term is the core's; entries still queued settle it when they
//!   land (`append_now`), so a commit that arrived while they waited is never lost;
//! - a sender (`read_for_send`) waits until its first index is settled, reads no further
//!   than the first pending index, drops a job of a leadership that ended, and never sends
//!   a batch whose term differs from the core's at that index (`LogShape::term_at`);
//! - a replica with a pending reset never becomes leader (`refuses_leadership`: granted
//!   (pre-)vote responses and `TimeoutNow` are dropped, a lost message to the core): its own
//!   entry at the reset's start would need the offset there, which only the leader's batch
//!   at `start` carries. A voter that could elect it holds the committed entry `start - 1`
//!   and can lead instead.
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
    Message, NodeId, ProgressState, ProposeError, ReadCtx, ReadIndexError, Recovered, Replica,
    Role, Term, TransferError,
};

use crate::node::addresses::{shard_addr, MembershipRecord};
use crate::node::api::{
    AppendOutcome, FollowerSnapshot, NodeAddresses, NodeError, NodeStartError, PartitionSnapshot,
    ReadOutcome, ShutdownMode,
};
use crate::node::balance::{
    decide, preferred_leader, BalanceSettings, BalanceWatch, Decision, LeaderView, Stay,
    TargetSeen, ACTIVE_WITHIN_ELECTIONS,
};
use crate::node::core::ShardShared;
use crate::node::latency::CommitWatch;
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
/// Bytes one scrub read asks for (the pass paces itself between reads).
const SCRUB_READ_BYTES: usize = 1 << 20;
/// Hint given with `Backpressure`.
const RETRY_AFTER_MS: u32 = 50;
/// Most send jobs queued per sender (fresh, catch-up) of a partition. Past it the oldest is
/// dropped, which the core sees as a lost message (it probes again after an election
/// timeout). In steady state a queue holds at most `inflight_msgs_max` jobs per follower.
const SEND_JOBS_MAX: usize = 1024;
/// A follower that is behind and whose acknowledged index has not moved for this many
/// election timeouts is shown `stuck` (status, metrics).
pub(crate) const FOLLOWER_STUCK_AFTER_ELECTIONS: u32 = 10;

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

/// Tests only: an IO stall of the log worker. Armed for a partition dir, it holds the worker
/// before it applies a truncation or a reset (the op taken, its engine state pending) until
/// released, as a slow disk would.
#[cfg(test)]
pub(crate) mod stall {
    use std::collections::BTreeMap;
    use std::path::{Path, PathBuf};
    use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
    use std::sync::{Arc, Mutex, PoisonError};
    use std::time::Duration;

    #[derive(Debug, Default)]
    pub(crate) struct Stall {
        armed: AtomicBool,
        held: AtomicU32,
    }

    impl Stall {
        pub(crate) fn release(&self) {
            self.armed.store(false, Ordering::SeqCst);
        }
        /// Truncations and resets held so far.
        pub(crate) fn held(&self) -> u32 {
            self.held.load(Ordering::SeqCst)
        }
    }

    static STALLS: Mutex<BTreeMap<PathBuf, Arc<Stall>>> = Mutex::new(BTreeMap::new());

    /// Appended to a partition dir, the key of the stall that holds hard-state writes (the
    /// dir alone holds the log worker's truncations and resets).
    pub(crate) const HARD_STATE: &str = "hard-state-stall";

    /// Arms a stall for the partition dir `dir` (held until `release`).
    pub(crate) fn arm(dir: &Path) -> Arc<Stall> {
        let stall = Arc::new(Stall { armed: AtomicBool::new(true), held: AtomicU32::new(0) });
        let mut stalls = STALLS.lock().unwrap_or_else(PoisonError::into_inner);
        stalls.insert(dir.to_path_buf(), stall.clone());
        stall
    }

    pub(super) async fn hold(dir: &Path) {
        let stall = STALLS.lock().unwrap_or_else(PoisonError::into_inner).get(dir).cloned();
        let Some(stall) = stall.filter(|s| s.armed.load(Ordering::SeqCst)) else { return };
        stall.held.fetch_add(1, Ordering::SeqCst);
        while stall.armed.load(Ordering::SeqCst) {
            glommio::timer::sleep(Duration::from_millis(1)).await;
        }
    }
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
    /// Leadership transfers the leader balancer started from this replica.
    balancer_transfers: u64,
    errors: BTreeMap<String, u64>,
}

#[derive(Debug)]
struct State {
    replica: Replica,
    /// The commit index of the last `CommitAdvanced` this driver carried out. The core's own
    /// `commit()` runs ahead of it while the actions of an input wait for that input's hard
    /// state (`Replica::send_action` holds every action — the truncation of entries the new
    /// leader overrides included — until the new term is durable): reading the engine up to
    /// the core's commit then returned the overridden, never-committed batches, because the
    /// truncation was not queued yet. Everything that reads the engine "up to the commit"
    /// uses this index; it only ever passes entries whose truncations and appends are queued.
    commit_acted: LogIndex,
    failed: Option<String>,
    closing: bool,
    /// A checksum failure was found at run time: the replica is being restarted damaged with
    /// its log cut from this index (`restart_damaged`); inputs wait until it is done.
    corrupt_cut: Option<LogIndex>,
    /// Started from an empty data dir: damaged until every other configured voter reports
    /// a pristine shard (a new cluster), or repaired by a leader (a wiped disk).
    unproven: bool,
    log_ops: VecDeque<LogOp>,
    log_busy: bool,
    /// The truncation (`Some(from)`) or reset (`Some(LogIndex(0))`) the log worker took from
    /// `log_ops` and has not finished: its engine state is pending too.
    log_running: Option<LogIndex>,
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
    /// Leader: its proposals until they commit (commit latency).
    commit_watch: CommitWatch,
    /// Leader: per follower, its acknowledged index and since when it has not moved (for
    /// `stuck`); the term of the leadership it was observed in.
    follower_watch: (Term, BTreeMap<NodeId, (LogIndex, Instant)>),
    /// The leadership term in which this replica last sent `TimeoutNow` (a leadership
    /// transfer it hands off), and its last index then: the core takes no proposal during a
    /// transfer and sends it only once the target holds its whole log, so every produce of
    /// that term up to that index is on the target.
    handed_off: Option<(Term, LogIndex)>,
}

impl State {
    /// Whether a log reset is queued, running, or deferred until its first entry arrives.
    fn reset_pending(&self) -> bool {
        self.pending_reset.is_some()
            || self.log_running == Some(LogIndex(0))
            || self.log_ops.iter().any(|op| matches!(op, LogOp::Reset { .. }))
    }

    /// The lowest index whose engine state is pending (module docs, "Engine state the core
    /// has moved past"): `LogIndex(0)` while a reset is pending (the whole engine log is to
    /// be replaced), else the lowest queued or running truncation. Below it the engine log
    /// holds the core's entries exactly (or fewer: appends may still be queued).
    fn engine_pending_from(&self) -> Option<LogIndex> {
        if self.reset_pending() {
            return Some(LogIndex(0));
        }
        let queued = self.log_ops.iter().filter_map(|op| match op {
            LogOp::Truncate(from) => Some(*from),
            _ => None,
        });
        queued.chain(self.log_running).min()
    }

    /// The highest index through which the engine may be read now, at most `through`;
    /// `None`: nothing may be read (a reset is pending).
    fn engine_settled_through(&self, through: LogIndex) -> Option<LogIndex> {
        match self.engine_pending_from() {
            None => Some(through),
            Some(LogIndex(0)) => None,
            Some(from) => Some(through.min(from.prev())),
        }
    }

    /// Moves the commit offset to the offset after the highest appended entry at or below
    /// the commit index (entries appended after their commit arrived settle it here).
    fn settle_commit_offset(&mut self) {
        let commit = self.commit_acted;
        let mut found = None;
        while self.offsets.front().is_some_and(|(i, _)| *i <= commit) {
            found = self.offsets.pop_front();
        }
        if let Some((_, next)) = found {
            self.commit_offset = self.commit_offset.max(next);
        }
    }
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
    /// When this replica, leading on a full disk, last asked a follower to take over.
    space_handoff_at: Cell<Option<Instant>>,
    /// The leader balancer's memory of this partition between passes (balance.rs).
    balance: RefCell<BalanceWatch>,
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
        mark_damaged_if_empty(&dir).map_err(|e| start_error(partition, e))?;
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
        let mut damaged = report_damage(partition, &report) || meta::is_damaged(&dir) || hs_lost;
        let mut hs = HardState { term: loaded.term, vote: loaded.vote };
        if hard_state.slot_damaged_at_open() {
            // The newest slot may have held a vote this replica already sent (a flipped bit
            // and a torn store look alike): never vote again in a term it may have voted in.
            tracing::warn!(%partition, ?hs, "a hard-state slot is damaged: replica damaged");
            damaged = true;
            hs.vote = None;
        }
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
        let commit_offset = log.start_offset();
        let state = State {
            commit_acted: replica.commit(),
            replica,
            failed: None,
            closing: false,
            corrupt_cut: None,
            unproven,
            log_ops: VecDeque::new(),
            log_busy: false,
            log_running: None,
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
            commit_watch: CommitWatch::default(),
            follower_watch: (Term(0), BTreeMap::new()),
            handed_off: None,
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
            space_handoff_at: Cell::new(None),
            balance: RefCell::new(BalanceWatch::default()),
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
        if self.st.borrow().failed.is_some() || self.st.borrow().corrupt_cut.is_some() {
            return;
        }
        if self.refuses_leadership(&message) {
            tracing::debug!(partition = %self.partition, %from, ?message, "log reset pending: not taking leadership");
            return;
        }
        self.st.borrow_mut().replica.handle_message(from, message);
        self.drain();
    }

    /// While a log reset is pending this replica must not lead: a leader's own entry at the
    /// reset's start would need the offset there, which only the leader's entry at `start`
    /// carries. Granted (pre-)vote responses and `TimeoutNow` are dropped then (a lost
    /// message to the core). Any voter that could elect this replica holds the entry at
    /// `start - 1` and can lead instead.
    fn refuses_leadership(&self, message: &Message) -> bool {
        let leadership = matches!(
            message,
            Message::PreVoteResponse { granted: true, .. }
                | Message::VoteResponse { granted: true, .. }
                | Message::TimeoutNow { .. }
        );
        leadership && self.st.borrow().reset_pending()
    }

    /// One Raft tick; `down`: peers whose link broke (probe them again).
    pub(crate) fn tick(&self, down: &[NodeId]) {
        {
            let mut st = self.st.borrow_mut();
            if st.failed.is_some() || st.closing || st.corrupt_cut.is_some() {
                return;
            }
            for &peer in down {
                if st.replica.progress(peer).is_some() {
                    st.replica.handle_unreachable(peer);
                }
            }
            st.replica.handle_tick();
            promote_caught_up_learners(&mut st.replica);
            watch_followers(&mut st, Instant::now());
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
                Ok(replica) => {
                    st.commit_acted = replica.commit();
                    st.replica = replica;
                }
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
                    // A replica being restarted after corruption acts no more (its
                    // replacement starts from what the log holds).
                    if st.failed.is_some() || st.corrupt_cut.is_some() {
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
                tracing::debug!(partition = %self.partition, %from, "truncation queued");
                self.fail_producers_from(from);
                let mut st = self.st.borrow_mut();
                while st.offsets.back().is_some_and(|(i, _)| *i >= from) {
                    st.offsets.pop_back();
                }
                st.commit_watch.forget_from(from);
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
                st.commit_watch.forget_all();
                self.queue_log_op(&mut st, LogOp::Reset { start, prev_term, membership });
            }
            Action::Send { to, message } => {
                if let Message::TimeoutNow { term } = message {
                    let mut st = self.st.borrow_mut();
                    st.handed_off = Some((term, st.replica.last_index()));
                }
                if self.shard.peers.send(to, self.partition, message).is_err() {
                    self.st.borrow_mut().unreachable.push(to);
                }
            }
            Action::SendEntries { to, term, prev_index, prev_term, commit, from, through } => {
                let job = SendJob { to, term, prev_index, prev_term, commit, from, through };
                self.queue_send(job);
            }
            Action::CommitAdvanced { through } => {
                tracing::debug!(partition = %self.partition, %through, "commit advanced");
                self.on_commit(through)
            }
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
                if role != Role::Leader {
                    st.commit_watch.forget_all();
                    self.answer_deposed_producers(&mut st, term);
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
        // A job to `to` starting at or below a queued job's start supersedes it: the core
        // restarted its pipeline to `to` there (a probe after a stall or a rejection, a new
        // term), and what the queued job holds follows from the new start anyway. Sending both
        // doubled the catch-up work with each stall, until a follower being repaired under
        // load never caught up (`g_a_wiped_follower_is_repaired_within_the_bound_...`).
        let superseded = |queued: &SendJob| queued.to == job.to && queued.from >= job.from;
        st.fast_sends.retain(|queued| !superseded(queued));
        st.slow_sends.retain(|queued| !superseded(queued));
        let slow = job.from <= st.replica.commit();
        let (queue, busy) = match slow {
            false => (&mut st.fast_sends, &mut st.fast_busy),
            true => (&mut st.slow_sends, &mut st.slow_busy),
        };
        if queue.len() >= SEND_JOBS_MAX {
            queue.pop_front();
        }
        queue.push_back(job);
        if !*busy {
            *busy = true;
            let me = self.rc();
            let task = async move { me.run_sender(slow).await };
            match slow {
                false => self.shard.spawn_latency(task),
                true => self.shard.spawn_catch_up(task),
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
            st.settle_commit_offset();
            let base = appended.base_offset;
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
        st.commit_acted = st.commit_acted.max(through);
        let mut found = None;
        while st.offsets.front().is_some_and(|(i, _)| *i <= through) {
            found = st.offsets.pop_front();
        }
        if let Some((_, next)) = found {
            st.commit_offset = st.commit_offset.max(next);
        }
        // Not among the entries appended since start: an entry recovered from disk is read
        // back; one still to be appended (queued behind a truncation, a reset or a busy
        // log) settles the offset when it lands (`append_now`). The engine is never read
        // where its state is pending: it may still hold batches the core truncated.
        let exact = found.is_some_and(|(index, _)| index == through);
        let readable =
            st.engine_settled_through(through) == Some(through) && through <= self.log.last_index();
        if !exact && readable {
            let me = self.rc();
            self.shard.spawn_bulk(async move { me.lookup_commit_offset(through).await });
        }
        self.answer_producers(&mut st, through, Acks::Quorum);
        st.commit_watch.committed(through, Instant::now());
        drop(st);
        self.commit_notify.notify_all();
    }

    /// The offset after the committed entry `through`, read from the log (entries recovered
    /// from disk are not in `offsets`). Skipped when the engine's state at `through` became
    /// pending meanwhile, or the batch read is not the core's entry (its term differs):
    /// the append that replaces it settles the offset.
    async fn lookup_commit_offset(self: Rc<Self>, through: LogIndex) {
        if through < self.log.start_index() {
            return;
        }
        if self.st.borrow().engine_settled_through(through) != Some(through) {
            return;
        }
        let batches = match self.log.read_entries(through, through, 1).await {
            Ok(batches) => batches,
            Err(FetchError::Corruption(corruption)) => return self.on_corruption(&corruption),
            Err(_) => return,
        };
        let Some(header) = batches.first().and_then(|b| peek_header(b, self.batch_size_max).ok())
        else {
            return;
        };
        if header.index() != through {
            return;
        }
        let next = header.next_offset();
        let mut st = self.st.borrow_mut();
        let current = st.engine_settled_through(through) == Some(through)
            && st.replica.term_at(through) == Some(header.term());
        if !current {
            return;
        }
        if next > st.commit_offset {
            st.commit_offset = next;
        }
        drop(st);
        self.commit_notify.notify_all();
    }

    /// On losing leadership (now in `term`): every produce still pending was proposed while
    /// this replica led (a leader never truncates, so all are still in its log). Its batch
    /// may be on a follower that becomes leader and commits it, or be dropped, and a leader
    /// cut off from the others (CheckQuorum) learns which only once the partition heals: the
    /// outcome is unknown, so it is answered `Timeout` at once — never `NotLeader`, which
    /// promises it will not commit (a client would retry it and append it twice), and never
    /// held until its fate is known. Except after a hand-off (`handed_off`): the target holds
    /// those entries and is taking over, so they wait for their true outcome (committed under
    /// it, within a round trip) as a graceful stop promises.
    fn answer_deposed_producers(&self, st: &mut State, term: Term) {
        let handed_off = st.handed_off.take();
        let on_target = |index: &LogIndex, p: &Producer| {
            handed_off.is_some_and(|(t, last)| p.term == t && *index <= last)
        };
        let pending = std::mem::take(&mut st.producers);
        let (kept, unknown): (BTreeMap<_, _>, BTreeMap<_, _>) =
            pending.into_iter().partition(|(index, p)| on_target(index, p));
        st.producers = kept;
        if !unknown.is_empty() {
            tracing::info!(partition = %self.partition, pending = unknown.len(), %term, "leadership lost: pending produces answered Timeout (outcome unknown)");
        }
        for (_, p) in unknown {
            p.slot.fill(Err(NodeError::Timeout));
        }
    }

    /// Answers the producers at or above `from` (their entries are being cut from this log).
    /// Only a follower truncates, and a leader that steps down answers its producers then, so
    /// none is expected here; any that is gets `Timeout`: its batch may live on in another
    /// replica's log and still commit there, so `NotLeader` (it will not commit) could be false.
    fn fail_producers_from(&self, from: LogIndex) {
        let mut st = self.st.borrow_mut();
        let gone = st.producers.split_off(&from);
        for (_, p) in gone {
            p.slot.fill(Err(NodeError::Timeout));
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
            #[cfg(test)]
            stall::hold(&self.dir.join(stall::HARD_STATE)).await;
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
                    self.st.borrow_mut().log_running = Some(from);
                    #[cfg(test)]
                    stall::hold(&self.dir).await;
                    // Every truncation is on record: it removes entries this replica held
                    // (never committed ones, by the Raft rules), and an operator tracing a
                    // loss needs to see which and when.
                    let (last, durable) = (self.log.last_index(), self.log.durable_index());
                    if from <= last {
                        tracing::warn!(
                            partition = %self.partition,
                            %from,
                            %last,
                            %durable,
                            "truncating the log: entries from `from` through `last` are removed"
                        );
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
                    self.st.borrow_mut().log_running = None;
                    self.engine_settled();
                }
                LogOp::Reset { start, prev_term, membership } => {
                    tracing::warn!(
                        partition = %self.partition,
                        %start,
                        last = %self.log.last_index(),
                        "resetting the log: every entry is removed, the log restarts at `start`"
                    );
                    self.st.borrow_mut().log_running = Some(LogIndex(0));
                    #[cfg(test)]
                    stall::hold(&self.dir).await;
                    let addresses = self.shard.peers.book().entries_for(&membership);
                    let record = MembershipRecord { membership, addresses };
                    let mut backoff = SPACE_RETRY_BACKOFF_INITIAL;
                    loop {
                        match meta::store_membership_base(&self.dir, start.0, &record) {
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
                    let mut st = self.st.borrow_mut();
                    st.pending_reset = Some((start, prev_term));
                    st.log_running = None;
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
        // A leader's own entry has no header to take the offset from; `handle_message`
        // keeps a replica with a pending reset from being elected (module docs).
        assert!(!first.payload.is_empty(), "a leader's own entry {start} met a pending log reset");
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
        if let Err(e) = meta::prune_membership_bases(&self.dir, start.0) {
            // Harmless: recovery picks the base of the log's start among any leftovers.
            tracing::warn!(partition = %self.partition, error = %e, "old membership bases not removed");
        }
        {
            let mut st = self.st.borrow_mut();
            st.pending_reset = None;
            st.commit_offset = st.commit_offset.max(offset);
            st.replica.handle_durable(start.prev(), prev_term);
        }
        self.engine_settled();
        self.drain();
        true
    }

    /// A truncation or reset reached the engine: the durability watcher re-reads the durable
    /// index, and readers and senders waiting for the engine state re-check.
    fn engine_settled(&self) {
        self.log_notify.notify_all();
        self.commit_notify.notify_all();
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
                Ok(Some(entries)) => entries,
                Ok(None) => continue,
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

    /// The entries of `job`, read from the engine only where its state is settled (waits for
    /// a pending truncation or reset at or below `job.from`; stops below one above it) and
    /// checked against the core's log: a batch whose term is not the core's at its index is
    /// never sent. `Ok(None)`: the job is stale (no longer the leader of its term).
    async fn read_for_send(&self, job: &SendJob) -> Result<Option<Vec<Entry>>, String> {
        if job.from > job.through {
            return Ok(Some(Vec::new()));
        }
        let Some(through) = self.settled_for_send(job).await else { return Ok(None) };
        let max_bytes = self.shard.config.raft.append_bytes_max as usize + self.batch_size_max;
        let batches = match self.log.read_entries(job.from, through, max_bytes).await {
            Ok(batches) => batches,
            Err(FetchError::Corruption(corruption)) => {
                self.on_corruption(&corruption);
                return Err(format!("corrupt batch refused: {corruption}"));
            }
            Err(e) => return Err(e.to_string()),
        };
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
        let st = self.st.borrow();
        if !leads_in(&st.replica, job.term) {
            return Ok(None);
        }
        for entry in &entries {
            let core = st.replica.term_at(entry.index);
            if core != Some(entry.term) {
                return Err(format!(
                    "the log holds entry {} of term {} where the core has {core:?}",
                    entry.index, entry.term
                ));
            }
        }
        Ok(Some(entries))
    }

    /// Waits until the engine's state is settled at `job.from`; returns the highest index of
    /// the job that may be read then (`None`: the job is stale, or the partition stops).
    async fn settled_for_send(&self, job: &SendJob) -> Option<LogIndex> {
        loop {
            let epoch = self.commit_notify.epoch();
            {
                let st = self.st.borrow();
                if st.failed.is_some() || st.closing || !leads_in(&st.replica, job.term) {
                    return None;
                }
                match st.engine_settled_through(job.through) {
                    Some(through) if through >= job.from => return Some(through),
                    _ => {}
                }
            }
            self.commit_notify.wait(epoch).await;
        }
    }

    /// Reports the log's durable index to the core whenever it moves.
    async fn run_durability(self: Rc<Self>) {
        // (index, term): a truncation followed by appends can bring the durable index back
        // to the same number with another entry (of a newer term) there, which must be
        // reported again.
        let mut reported: Option<(LogIndex, Option<Term>)> = None;
        loop {
            if self.st.borrow().closing || self.st.borrow().failed.is_some() {
                return;
            }
            let epoch = self.log_notify.epoch();
            let durable = self.log.durable_index();
            let now = (durable, self.log.term_at(durable));
            if reported != Some(now) {
                reported = Some(now);
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
            if st.pending_reset.is_some() || st.corrupt_cut.is_some() {
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

    // ----- scrub ------------------------------------------------------------------------------

    /// One scrub pass: reads the committed log from its start (`Log::read_entries` verifies
    /// every checksum) at most `bytes_per_sec`, so that rot in a sealed segment — which
    /// recovery trusts through its index and nothing else may read for a long time — is
    /// found and repaired (`on_corruption`) while the rest of the group is healthy, not when a
    /// second fault (a wiped follower that needs the range) meets it. Reads only what the
    /// engine holds settled (never a pending truncation or reset); ends at the commit index,
    /// or early when the partition fails, closes or restarts.
    pub(crate) async fn scrub_pass(&self, bytes_per_sec: u64) {
        let mut at = self.log.start_index();
        loop {
            let through = {
                let st = self.st.borrow();
                if st.failed.is_some() || st.closing || st.corrupt_cut.is_some() {
                    return;
                }
                match st.engine_settled_through(st.commit_acted) {
                    Some(through) => through,
                    None => return,
                }
            };
            at = at.max(self.log.start_index());
            if at > through {
                return;
            }
            let started = Instant::now();
            match self.log.read_entries(at, through, SCRUB_READ_BYTES).await {
                Ok(batches) if batches.is_empty() => return,
                Ok(batches) => {
                    let bytes: usize = batches.iter().map(Bytes::len).sum();
                    at = LogIndex(at.0 + batches.len() as u64);
                    let due = Duration::from_secs_f64(bytes as f64 / bytes_per_sec.max(1) as f64);
                    if let Some(rest) = due.checked_sub(started.elapsed()) {
                        glommio::timer::sleep(rest).await;
                    }
                }
                Err(FetchError::Corruption(corruption)) => return self.on_corruption(&corruption),
                Err(_) => return,
            }
        }
    }

    // ----- run-time corruption ------------------------------------------------------------

    /// A read found a batch whose checksum fails (rot in a sealed segment, which recovery
    /// trusts through its index). The replica may have acknowledged that batch and can no
    /// longer serve or send it: it restarts itself *damaged* with its log cut at the start of
    /// the segment holding the bad batch — neither voting nor counting toward a quorum, as a
    /// leader stepping down — and the leader repairs the range (docs/format.md#recovery-outcomes).
    fn on_corruption(&self, corruption: &ringlog_engine::Corruption) {
        let name = corruption.segment.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let segment_base = ringlog_engine::segment::parse_segment_name(name).map(|(_, i)| i);
        let cut =
            segment_base.unwrap_or_else(|| self.log.start_index()).max(self.log.start_index());
        let first = {
            let mut st = self.st.borrow_mut();
            if st.failed.is_some() || st.closing {
                return;
            }
            let first = st.corrupt_cut.is_none();
            st.corrupt_cut = Some(st.corrupt_cut.map_or(cut, |c| c.min(cut)));
            first
        };
        tracing::error!(
            partition = %self.partition, %corruption, %cut,
            "corrupt batch found at run time: the replica restarts damaged, its log cut at {cut}, \
             and is repaired from the leader"
        );
        if first {
            let me = self.rc();
            self.shard.spawn_latency(async move { me.restart_damaged().await });
        }
    }

    /// Restarts the replica damaged after `on_corruption`: answers every waiter, lets the
    /// replicator's tasks finish, marks the partition damaged durably, cuts the log durably,
    /// and rebuilds the Raft core from what is left (as recovery at start would).
    async fn restart_damaged(self: Rc<Self>) {
        {
            let mut st = self.st.borrow_mut();
            // A producer's batch may already be on other replicas and commit there: its
            // outcome is unknown (`Timeout` says so), never `NotLeader` (which promises it
            // will not commit, so a client would retry and append it twice).
            for (_, p) in std::mem::take(&mut st.producers) {
                p.slot.fill(Err(NodeError::Timeout));
            }
            let error = self.not_leader_in(&st);
            for (_, slot) in std::mem::take(&mut st.reads) {
                slot.fill(Err(error.clone()));
            }
            st.log_ops.clear();
            st.fast_sends.clear();
            st.slow_sends.clear();
        }
        self.commit_notify.notify_all();
        let deadline = Instant::now() + CLOSE_WAIT_MAX;
        loop {
            let busy = {
                let st = self.st.borrow();
                st.log_busy || st.hs_busy || st.fast_busy || st.slow_busy
            };
            if !busy {
                break;
            }
            if Instant::now() > deadline {
                return self
                    .fail("run-time corruption: the replicator's tasks did not stop".into());
            }
            glommio::timer::sleep(Duration::from_millis(1)).await;
        }
        if let Err(e) = meta::mark_damaged(&self.dir) {
            return self.fail(format!("damaged mark: {e}"));
        }
        let cut = self.st.borrow().corrupt_cut.expect("set by on_corruption");
        if cut <= self.log.last_index() {
            if let Err(e) = self.log.truncate_suffix(cut).await {
                return self.fail(format!("cut at {cut} after corruption: {e}"));
            }
        }
        let loaded = match self.hard_state.load().await {
            Ok(loaded) => loaded,
            Err(e) => return self.fail(format!("hard state after corruption: {e}")),
        };
        let hs = HardState { term: loaded.term.max(self.log.last_term()), vote: loaded.vote };
        let recovered = recover(
            &self.shard,
            self.partition,
            &self.log,
            &self.dir,
            (hs, true),
            self.batch_size_max,
        )
        .await;
        let replica = recovered.map_err(|e| e.to_string()).and_then(|recovered| {
            let config = self.shard.config.to_raft_config(self.seed ^ 0xc0_22_u64);
            Replica::new(config, recovered).map_err(|e| e.to_string())
        });
        let replica = match replica {
            Ok(replica) => replica,
            Err(e) => return self.fail(format!("rebuilding the replica after corruption: {e}")),
        };
        {
            let mut st = self.st.borrow_mut();
            st.commit_acted = replica.commit();
            st.replica = replica;
            st.offsets.clear();
            st.pending_reset = None;
            st.log_running = None;
            st.follower_watch = (Term(0), BTreeMap::new());
            st.leader = None;
            st.corrupt_cut = None;
        }
        tracing::warn!(
            partition = %self.partition, %cut, last = %self.log.last_index(),
            "replica restarted damaged after run-time corruption"
        );
        self.log_notify.notify_all();
        self.commit_notify.notify_all();
        self.drain();
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
    /// A leader whose disk is full cannot append (not even its own no-op after a new
    /// election): it hands the leadership to the most up-to-date undamaged follower, at most
    /// once per election timeout, so that the partition stays writable while this node waits
    /// for space. A target that is full too hands it on in turn; with every replica full the
    /// partition answers `StorageFull` until space is back.
    fn hand_off_for_space(&self) {
        let now = Instant::now();
        if self.space_handoff_at.get().is_some_and(|at| now - at < self.election_timeout()) {
            return;
        }
        self.space_handoff_at.set(Some(now));
        let target = self.most_up_to_date_follower(true);
        let Some(to) = target else { return };
        match self.transfer_leadership(to) {
            Ok(()) => tracing::warn!(
                partition = %self.partition, %to,
                "disk full: handing the leadership to an up-to-date follower"
            ),
            Err(e) => {
                tracing::debug!(partition = %self.partition, %to, %e, "disk full: no hand-off")
            }
        }
    }

    /// One look of the leader balancer at this partition (balance.rs): what the core knows
    /// now, recorded in the partition's [`BalanceWatch`], and the decision.
    pub(crate) fn balance_decision(&self, settings: &BalanceSettings, now: Instant) -> Decision {
        let st = self.st.borrow();
        if st.failed.is_some() || st.closing || st.corrupt_cut.is_some() {
            return Decision::Stay(Stay::Unusable);
        }
        let r = &st.replica;
        let leading = r.role() == Role::Leader;
        let m = r.membership();
        let preferred = preferred_leader(self.partition, &m.voters, &settings.preferred_leaders);
        let seen = preferred.filter(|&n| leading && n != r.id()).and_then(|node| {
            let p = r.progress(node)?;
            Some(TargetSeen {
                node,
                damaged: p.damaged,
                lag: r.last_index().0.saturating_sub(p.match_index.0),
                streaming: p.state == ProgressState::Replicate,
                active: p.recent_active,
            })
        });
        let active_within = self.election_timeout() * ACTIVE_WITHIN_ELECTIONS;
        let leading_term = leading.then(|| r.term());
        let (led_for, target) =
            self.balance.borrow_mut().observe(now, leading_term, seen, active_within);
        let view = LeaderView {
            me: r.id(),
            leading,
            preferred,
            ready: r.term_at(r.commit()) == Some(r.term()),
            // An uncommitted membership entry, or a learner still catching up to be promoted.
            membership_settled: m.learners.is_empty() && r.membership_at(r.commit()) == m,
            transfer_in_progress: r.transfer_target().is_some(),
            led_for,
            target,
        };
        decide(settings, &view)
    }

    /// Starts a balancing leadership transfer to `to` through the normal Raft transfer.
    pub(crate) fn balance_transfer(&self, to: NodeId) -> Result<(), NodeError> {
        let result = self.transfer_leadership(to);
        if result.is_ok() {
            self.st.borrow_mut().counters.balancer_transfers += 1;
        }
        tracing::info!(
            partition = %self.partition, %to, ?result,
            "leader balancer: handing the leadership to the preferred leader"
        );
        result
    }

    pub(crate) fn best_follower(&self) -> Option<NodeId> {
        self.most_up_to_date_follower(false)
    }

    /// The voter (not this replica) with the highest match index, damaged ones skipped when
    /// `undamaged_only`.
    fn most_up_to_date_follower(&self, undamaged_only: bool) -> Option<NodeId> {
        let st = self.st.borrow();
        let r = &st.replica;
        r.membership()
            .voters
            .iter()
            .filter(|&&n| n != r.id())
            .filter_map(|&n| r.progress(n).map(|p| (p, n)))
            .filter(|(p, _)| !undamaged_only || !p.damaged)
            .map(|(p, n)| (p.match_index, n))
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
        if st.corrupt_cut.is_some() {
            return Err(self.not_leader_in(&st));
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
        let arrived = Instant::now();
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
                    drop(st);
                    self.hand_off_for_space();
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
            st.commit_watch.proposed(index, arrived);
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
            // Committed, and not where the engine's state is pending (a truncation or reset
            // the core already made): the engine may still hold the old batches there.
            let readable = {
                let st = self.st.borrow();
                st.engine_settled_through(st.commit_acted)
            };
            if let Some(through) = readable.filter(|&through| through >= floor) {
                tracing::debug!(partition = %self.partition, %offset, %through, "committed read");
                let out = self.fetch_committed(offset, max_bytes, through).await?;
                // Records, or nothing: the log never answers control batches alone
                // (`Log::fetch`), so a reader at the end of the log right after a leader
                // change waits for data instead of getting the new leader's no-op back at
                // once, again and again.
                if !out.batches.is_empty() || Instant::now() >= deadline {
                    return Ok(out);
                }
            } else if Instant::now() >= deadline {
                return Err(NodeError::Timeout);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            within(left, self.commit_notify.wait(epoch)).await;
        }
    }

    /// The read path's second line of defence: `batches` (a committed read, in index order)
    /// cut before the first batch that is not the core's entry at its index. Raft's log
    /// matching makes (index, term) name one entry, so a batch whose term is not the core's
    /// there is an entry an earlier leader wrote that this replica's log no longer holds;
    /// serving it would hand a reader a record that was never committed. The settled check
    /// (`engine_settled_through`) keeps pending engine state out of reads; should the engine
    /// still return such a batch, it is logged and counted (`ringlog_errors_total`, kind
    /// `stale_batch_refused`), never served, and the reader gets the entries before it.
    fn core_entries_only(&self, mut batches: Vec<Bytes>, through: LogIndex) -> Vec<Bytes> {
        let held = {
            let st = self.st.borrow();
            let replica = &st.replica;
            core_held_prefix(&batches, self.batch_size_max, replica.log_start(), |index| {
                replica.term_at(index)
            })
        };
        if held < batches.len() {
            let header = peek_header(&batches[held], self.batch_size_max).ok();
            let st = self.st.borrow();
            tracing::error!(
                partition = %self.partition,
                index = ?header.map(|h| h.index()),
                term = ?header.map(|h| h.term()),
                core_term = ?header.and_then(|h| st.replica.term_at(h.index())),
                %through,
                commit = %st.replica.commit(),
                commit_acted = %st.commit_acted,
                pending_from = ?st.engine_pending_from(),
                log_ops = st.log_ops.len(),
                role = ?st.replica.role(),
                term_now = %st.replica.term(),
                "a committed read found a batch the core does not hold at its index; refused"
            );
            drop(st);
            *self
                .st
                .borrow_mut()
                .counters
                .errors
                .entry("stale_batch_refused".into())
                .or_default() += 1;
            batches.truncate(held);
        }
        batches
    }

    async fn fetch_committed(
        &self,
        offset: Offset,
        max_bytes: u32,
        commit: LogIndex,
    ) -> Result<ReadOutcome, NodeError> {
        let bound = ReadBound::Through(commit);
        let fetched = self.log.fetch(offset, max_bytes as usize, bound).await;
        let batches = match fetched {
            Ok(batches) => batches,
            Err(FetchError::OffsetOutOfRange { start, next, .. }) => {
                return Err(NodeError::OffsetOutOfRange {
                    partition: self.partition,
                    requested: offset,
                    log_start: start,
                    log_end: next,
                })
            }
            Err(FetchError::Corruption(corruption)) => {
                self.on_corruption(&corruption);
                return Err(NodeError::Internal(format!(
                    "fetch refused a corrupt batch ({corruption}); the replica is restarting \
                     damaged to repair it from the leader"
                )));
            }
            Err(e) => {
                if let Some(reason) = self.log.failure() {
                    self.fail(reason);
                }
                return Err(NodeError::Internal(format!("fetch: {e}")));
            }
        };
        let batches = self.core_entries_only(batches, commit);
        let next_offset = batches
            .last()
            .and_then(|b| peek_header(b, self.batch_size_max).ok())
            .map_or(offset, |h| h.next_offset());
        let st = self.st.borrow();
        Ok(ReadOutcome {
            partition: self.partition,
            batches,
            next_offset,
            commit: st.commit_offset,
            log_start: self.log.start_offset(),
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
            damaged: r.is_damaged(),
            followers: self
                .followers(&st)
                .into_iter()
                .map(|f| FollowerStatus {
                    node: f.node,
                    durable: f.durable,
                    lag: f.lag,
                    learner: f.learner,
                    damaged: f.damaged,
                    stuck: f.stuck,
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
        let now = Instant::now();
        let stuck_after = self.election_timeout() * FOLLOWER_STUCK_AFTER_ELECTIONS;
        let (watch_term, watch) = &st.follower_watch;
        m.voters
            .iter()
            .chain(&m.learners)
            .filter(|&&n| n != r.id())
            .filter_map(|&n| {
                let p = r.progress(n)?;
                let lag = r.last_index().0.saturating_sub(p.match_index.0);
                let unmoved = watch
                    .get(&n)
                    .filter(|(seen, _)| *watch_term == r.term() && *seen == p.match_index)
                    .is_some_and(|(_, since)| now.saturating_duration_since(*since) >= stuck_after);
                Some(FollowerSnapshot {
                    node: n,
                    durable: p.match_index,
                    lag,
                    learner: m.learners.contains(&n),
                    damaged: p.damaged,
                    stuck: lag > 0 && unmoved,
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
            damaged: r.is_damaged(),
            commit_offset: st.commit_offset,
            log_start_offset: self.log.start_offset(),
            log_end_offset: self.log.next_offset(),
            log_size_bytes: self.log.size_bytes(),
            commit_latency_us: st.commit_watch.snapshot(),
            elections_started: c.elections_started,
            leader_changes: c.leader_changes,
            appends: c.appends,
            append_bytes: c.append_bytes,
            append_records: c.append_records,
            fetches: c.fetches,
            fetch_bytes: c.fetch_bytes,
            balancer_transfers: c.balancer_transfers,
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

    /// The core's (term, vote) now.
    #[cfg(test)]
    pub(crate) fn raft_hard_state(&self) -> HardState {
        self.st.borrow().replica.hard_state()
    }

    #[cfg(test)]
    pub(crate) fn commit(&self) -> LogIndex {
        self.st.borrow().replica.commit()
    }

    pub(crate) fn failure(&self) -> Option<String> {
        self.st.borrow().failed.clone()
    }
}

/// Leader: notes when each follower's acknowledged index last moved (or it caught up), for
/// `stuck` in status and metrics; forgets everything outside a leadership.
fn watch_followers(st: &mut State, now: Instant) {
    let r = &st.replica;
    if r.role() != Role::Leader {
        st.follower_watch.1.clear();
        return;
    }
    let (term, last) = (r.term(), r.last_index());
    let previous = std::mem::take(&mut st.follower_watch.1);
    let same_term = st.follower_watch.0 == term;
    let mut watch = BTreeMap::new();
    for (&node, &(seen, since)) in previous.iter().filter(|_| same_term) {
        if let Some(p) = r.progress(node) {
            let since = if p.match_index == seen && seen < last { since } else { now };
            watch.insert(node, (p.match_index, since));
        }
    }
    let m = r.membership();
    for &node in m.voters.iter().chain(&m.learners).filter(|&&n| n != r.id()) {
        if let Some(p) = r.progress(node) {
            watch.entry(node).or_insert((p.match_index, now));
        }
    }
    st.follower_watch = (term, watch);
}

/// Whether `replica` is the leader of `term` (a send job of an older leadership is stale).
fn leads_in(replica: &Replica, term: Term) -> bool {
    replica.role() == Role::Leader && replica.term() == term
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

/// Whether recovery dropped anything this replica may have acknowledged (a torn or rotted
/// tail, a corruption cut): the replica is then damaged (docs/format.md#recovery-outcomes).
fn report_damage(partition: PartitionId, report: &RecoveryReport) -> bool {
    if let Some(cut) = &report.truncated_at {
        tracing::warn!(%partition, ?cut, "log corruption cut at recovery: replica damaged");
    }
    if report.tail_dropped {
        tracing::warn!(
            %partition, bytes = report.torn_bytes_dropped,
            "recovery cut the log's tail (a torn write or rot in the last flushes: it may have \
             been acknowledged): replica damaged"
        );
    }
    report.lost_possibly_acknowledged()
}

/// A partition directory that is missing or empty is a wiped disk or a first start: it gets
/// the durable damaged mark before anything else is created in it, so that a crash, EMFILE or
/// ENOSPC later in this start cannot leave an undamaged, empty replica at term 0 behind. Only
/// the new-cluster proof (core.rs) or a leader's repair clears it.
fn mark_damaged_if_empty(dir: &Path) -> std::io::Result<()> {
    let empty = match std::fs::read_dir(dir) {
        Ok(mut entries) => entries.next().is_none(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => true,
        Err(e) => return Err(e),
    };
    if empty {
        ringlog_engine::io::create_dir_all_durable(dir)?;
        meta::mark_damaged(dir)?;
    }
    Ok(())
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
    let base_record =
        if start > LogIndex(1) { meta::load_membership_base(dir, start.0) } else { None };
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

/// How many of `batches` (raw batches in index order) are the core's entries: the length of
/// the prefix before the first batch that does not decode, or whose index is at or above
/// `log_start` with a term other than `term_at(index)`. Batches below the core's log start
/// are committed (the start only moves past committed entries) and are kept.
pub(crate) fn core_held_prefix(
    batches: &[Bytes],
    batch_size_max: usize,
    log_start: LogIndex,
    term_at: impl Fn(LogIndex) -> Option<Term>,
) -> usize {
    batches
        .iter()
        .position(|batch| match peek_header(batch, batch_size_max) {
            Ok(header) => {
                header.index() >= log_start && term_at(header.index()) != Some(header.term())
            }
            Err(_) => true,
        })
        .unwrap_or(batches.len())
}
