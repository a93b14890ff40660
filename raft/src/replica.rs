//! Replica: one member of a Raft group as a pure state machine (inputs in, actions out).
//!
//! Raft (Ongaro & Ousterhout 2014) with the thesis extensions: PreVote (§9.6), CheckQuorum and
//! the leader lease on votes (§4.2.3 / §6.2), leadership transfer (§3.10), ReadIndex (§6.4),
//! single-server membership changes (§4.1), the leader writing its own log in parallel with
//! replication (§10.2.1), and pipelined AppendEntries with flow control (etcd's Progress).
//! The local log is kept as term runs (`LogShape`): payloads only pass through actions.
//!
//! Durability rules: every outgoing message waits until the hard state current when it was
//! queued is reported durable (`handle_hard_state_durable`), so no vote or message of a term
//! leaves before that term and vote are on disk; a follower's ack carries
//! `min(durable, highest index known to match the current leader)`, and nothing new while a
//! log reset is not reported durable; a leader counts its own log toward the commit quorum
//! only through `durable`. A damaged replica takes no commit from heartbeats (their commit is
//! capped by a match it may have lost) and is repaired only holding, durably, the leader's
//! own commit index of the leader's term.
//!
//! Invariants, asserted after every input (`check_invariants`): `durable <= last_index`;
//! `log_start <= commit + 1`; `commit` never decreases; a leader's commit is at most the
//! quorum durable index (or what it inherited); the term never decreases and the vote changes
//! at most once per term; `match_index < next_index` per follower; held messages exist only
//! while the hard state is not durable.

use std::collections::{BTreeMap, VecDeque};

use bytes::Bytes;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::action::Action;
use crate::config::{Config, ConfigError, Recovered, ENTRY_SIZES_TRACKED_MAX};
use crate::errors::{MembershipError, ProposeError, ReadIndexError, TransferError};
use crate::log::LogShape;
use crate::message::{AppendResult, Entry, EntryKind, Membership, MembershipChange, Message};
use crate::progress::{Progress, ProgressState, ProgressView};
use crate::quorum::{
    quorum_index, quorum_size, term_query_answers_needed, vote_outcome, VoteOutcome,
};
use crate::types::{HardState, LogIndex, NodeId, ReadCtx, Role, Term};

/// A leadership transfer in progress (thesis §3.10).
#[derive(Clone, Copy, Debug)]
struct Transfer {
    to: NodeId,
    ticks: u32,
    timeout_sent: bool,
}

/// One ReadIndex confirmation round (thesis §6.4): a heartbeat broadcast with `id` as ctx.
#[derive(Clone, Debug)]
struct ReadRound {
    id: u64,
    index: LogIndex,
    ctxs: Vec<ReadCtx>,
    acks: Vec<NodeId>,
}

/// One member of a Raft group. See the crate docs for the input/output protocol.
#[derive(Debug)]
pub struct Replica {
    config: Config,
    id: NodeId,
    rng: SmallRng,

    role: Role,
    term: Term,
    vote: Option<NodeId>,
    durable_hard_state: HardState,
    leader: Option<NodeId>,

    log: LogShape,
    durable: LogIndex,
    commit: LogIndex,

    /// Membership as of before the first of `membership_entries`.
    membership_base: Membership,
    /// Membership entries in the log, ascending (the last one is in effect).
    membership_entries: Vec<(LogIndex, Membership)>,
    /// Every member except this replica, ascending (voters and learners).
    peers: Vec<NodeId>,

    damaged: bool,
    /// Damaged replica: the other voters that answered its `TermQuery` (ascending, no
    /// duplicates, only voters). Once `term_query_answers_needed` of them answered, its term
    /// is at least every term any leader was elected in before, and it may be repaired.
    term_answers: Vec<NodeId>,
    /// Ticks since the last round of `TermQuery` messages.
    term_query_elapsed: u32,

    election_elapsed: u32,
    election_timeout: u32,
    heartbeat_elapsed: u32,

    /// Candidate / pre-candidate: votes received (granted or not), self excluded.
    votes: BTreeMap<NodeId, bool>,

    // Follower side.
    /// Highest index known to match the current leader's log.
    match_bound: LogIndex,
    /// Highest ack value sent to the current leader.
    ack_sent: LogIndex,
    /// The start of a `ResetLog` not yet known durable: until it is (`handle_durable` of
    /// `start - 1` or of an entry appended after it), a crash may bring the old log back, so
    /// nothing of the new log may be acked and the replica may not be repaired.
    reset_pending: Option<LogIndex>,
    /// Highest commit index the current leader of this term has sent us (in an `Append` or
    /// `InstallLogStart`; a heartbeat's commit is capped by the leader's view of our match).
    leader_commit: LogIndex,

    // Leader side.
    progress: BTreeMap<NodeId, Progress>,
    /// Payload sizes of entries `sizes_start ..` (proposed by this leader).
    entry_sizes: VecDeque<u64>,
    sizes_start: LogIndex,
    uncommitted_bytes: u64,
    /// Commit index when this replica became leader (before its first quorum).
    commit_floor: LogIndex,
    /// Highest quorum durable index seen in this leadership (a follower that later reports
    /// itself damaged stops counting, but what it counted for stays committed).
    commit_basis: LogIndex,
    /// Reads registered before the leader committed an entry of its term.
    reads_waiting: Vec<ReadCtx>,
    read_rounds: VecDeque<ReadRound>,
    read_round_next: u64,
    reads_pending: usize,
    transfer: Option<Transfer>,

    actions: VecDeque<Action>,
    /// Messages waiting for the hard state they were queued under to be durable.
    held: VecDeque<(HardState, Action)>,
    scratch: Vec<LogIndex>,
    reported: (Role, Term, Option<NodeId>),
    /// For invariant checks: commit and hard state after the previous input.
    last_commit: LogIndex,
    last_hard_state: HardState,
}

fn hard_state_key(hs: HardState) -> (Term, bool) {
    (hs.term, hs.vote.is_some())
}

impl Replica {
    /// Starts a replica from its config and the durable state recovered from disk.
    pub fn new(config: Config, recovered: Recovered) -> Result<Replica, ConfigError> {
        config.validate()?;
        let log = recovered.log_shape()?;
        let commit = recovered.commit.max(log.start().prev());
        let rng = SmallRng::seed_from_u64(config.seed);
        let id = config.id;
        let hs = recovered.hard_state;
        let mut replica = Replica {
            id,
            rng,
            role: Role::Follower,
            term: hs.term,
            vote: hs.vote,
            durable_hard_state: hs,
            leader: None,
            durable: log.last(),
            commit,
            log,
            membership_base: recovered.membership,
            membership_entries: recovered.membership_entries,
            peers: Vec::new(),
            damaged: recovered.damaged,
            term_answers: Vec::new(),
            // The first tick asks at once.
            term_query_elapsed: config.heartbeat_ticks,
            election_elapsed: 0,
            election_timeout: config.election_ticks,
            heartbeat_elapsed: 0,
            votes: BTreeMap::new(),
            match_bound: commit,
            ack_sent: LogIndex(0),
            reset_pending: None,
            leader_commit: LogIndex(0),
            progress: BTreeMap::new(),
            entry_sizes: VecDeque::new(),
            sizes_start: LogIndex(1),
            uncommitted_bytes: 0,
            commit_floor: commit,
            commit_basis: LogIndex(0),
            reads_waiting: Vec::new(),
            read_rounds: VecDeque::new(),
            read_round_next: 1,
            reads_pending: 0,
            transfer: None,
            actions: VecDeque::new(),
            held: VecDeque::new(),
            scratch: Vec::new(),
            reported: (Role::Follower, hs.term, None),
            last_commit: commit,
            last_hard_state: hs,
            config,
        };
        replica.fold_membership_below_start();
        replica.refresh_peers();
        replica.role = replica.follower_role();
        replica.reported = (replica.role, replica.term, None);
        replica.reset_election_timer();
        replica.check_invariants();
        Ok(replica)
    }

    // ----- observers -----

    pub fn id(&self) -> NodeId {
        self.id
    }
    pub fn config(&self) -> &Config {
        &self.config
    }
    pub fn role(&self) -> Role {
        self.role
    }
    pub fn term(&self) -> Term {
        self.term
    }
    /// The leader this replica follows in its term (itself when leader), if known.
    pub fn leader(&self) -> Option<NodeId> {
        self.leader
    }
    pub fn commit(&self) -> LogIndex {
        self.commit
    }
    /// Highest local index reported durable (and not truncated since).
    pub fn durable(&self) -> LogIndex {
        self.durable
    }
    pub fn last_index(&self) -> LogIndex {
        self.log.last()
    }
    pub fn last_term(&self) -> Term {
        self.log.last_term()
    }
    pub fn log_start(&self) -> LogIndex {
        self.log.start()
    }
    /// The term of the local entry at `index`, if known (`log_start - 1 ..= last_index`).
    pub fn term_at(&self, index: LogIndex) -> Option<Term> {
        self.log.term_at(index)
    }
    /// The current (possibly uncommitted) hard state.
    pub fn hard_state(&self) -> HardState {
        HardState { term: self.term, vote: self.vote }
    }
    /// The last hard state reported durable.
    pub fn durable_hard_state(&self) -> HardState {
        self.durable_hard_state
    }
    /// The membership in effect (that of the latest membership entry in the log).
    pub fn membership(&self) -> &Membership {
        self.membership_entries.last().map_or(&self.membership_base, |(_, m)| m)
    }
    /// The membership in effect at `index`: that of the latest membership entry at or below
    /// it (the committed membership at `commit()`).
    pub fn membership_at(&self, index: LogIndex) -> &Membership {
        self.membership_entries
            .iter()
            .rev()
            .find(|(i, _)| *i <= index)
            .map_or(&self.membership_base, |(_, m)| m)
    }
    /// True while the replica is damaged (refuses votes, counts toward no quorum).
    pub fn is_damaged(&self) -> bool {
        self.damaged
    }
    /// Leader only: a follower's replication progress.
    pub fn progress(&self, peer: NodeId) -> Option<ProgressView> {
        self.progress.get(&peer).map(Progress::view)
    }
    /// True if a leadership transfer is in progress.
    pub fn transfer_target(&self) -> Option<NodeId> {
        self.transfer.map(|t| t.to)
    }

    /// The next action for the driver, in order. Drain after every input.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    // ----- inputs -----

    /// A message from a peer of this group.
    pub fn handle_message(&mut self, from: NodeId, message: Message) {
        if from != self.id {
            self.step(from, message);
        }
        self.finish_input();
    }

    /// One logical clock tick.
    pub fn handle_tick(&mut self) {
        match self.role {
            Role::Leader => self.tick_leader(),
            _ => self.tick_election(),
        }
        self.finish_input();
    }

    /// The local log is durable through `through`, whose entry has `term`. A report whose
    /// term does not match the entry now at `through` is stale (written before a truncation)
    /// and ignored. After `Action::ResetLog { start, prev_term, .. }`, `handle_durable(start -
    /// 1, prev_term)` reports the reset itself durable (so does a report of any entry appended
    /// after it, since the reset is durable first).
    pub fn handle_durable(&mut self, through: LogIndex, term: Term) {
        let current = self.log.term_at(through) == Some(term);
        let mut advanced = false;
        if current && self.reset_pending.is_some_and(|start| through >= start.prev()) {
            self.reset_pending = None;
            advanced = true;
        }
        if current && through > self.durable {
            self.durable = through;
            advanced = true;
        }
        if advanced {
            match self.role {
                Role::Leader => self.maybe_commit(),
                _ => self.maybe_ack(false),
            }
        }
        self.finish_input();
    }

    /// The hard state `state` (from an earlier `Action::PersistHardState`) is durable.
    pub fn handle_hard_state_durable(&mut self, state: HardState) {
        let current = self.hard_state();
        assert!(
            hard_state_key(state) <= hard_state_key(current),
            "hard state {state:?} reported durable was never asked for (current {current:?})"
        );
        if state.term == current.term && state.vote.is_some() {
            assert_eq!(state.vote, current.vote, "two votes in one term");
        }
        if hard_state_key(state) > hard_state_key(self.durable_hard_state) {
            self.durable_hard_state = state;
            let durable_key = hard_state_key(state);
            while self.held.front().is_some_and(|(hs, _)| hard_state_key(*hs) <= durable_key) {
                let (_, action) = self.held.pop_front().expect("front checked");
                self.actions.push_back(action);
            }
            if self.role == Role::Candidate {
                self.tally_votes();
            }
        }
        self.finish_input();
    }

    /// The transport lost its connection to `peer`: probe it again from its match point.
    pub fn handle_unreachable(&mut self, peer: NodeId) {
        if let Some(pr) = self.progress.get_mut(&peer) {
            if pr.state == ProgressState::Replicate {
                pr.become_probe();
            }
        }
        self.finish_input();
    }

    /// Retention moved the local log start to `start` (entries below it are gone). Only ever
    /// below the commit index: `start <= commit + 1`. The driver must also stay within what
    /// this replica reports durable (`start <= durable() + 1`), not what its disk holds: a
    /// truncation the core has decided may still be held (waiting for the hard state), and
    /// the disk's suffix above `durable()` may be entries that truncation removes.
    pub fn handle_log_start(&mut self, start: LogIndex) {
        assert!(start <= self.commit.next(), "retention past the commit index: {start}");
        if start > self.log.start() {
            self.log.advance_start(start);
            self.fold_membership_below_start();
            while self.sizes_start < start && !self.entry_sizes.is_empty() {
                self.entry_sizes.pop_front();
                self.sizes_start = self.sizes_start.next();
            }
            if self.sizes_start < start {
                self.sizes_start = start;
            }
        }
        self.finish_input();
    }

    /// Leader: appends a user batch. Returns its index; it commits when `CommitAdvanced`
    /// reaches it (unless leadership is lost first, in which case it may or may not commit).
    pub fn propose(&mut self, payload: Bytes) -> Result<LogIndex, ProposeError> {
        if self.role != Role::Leader {
            return Err(ProposeError::NotLeader { leader_hint: self.leader });
        }
        if self.transfer.is_some() {
            return Err(ProposeError::TransferInProgress);
        }
        let size = payload.len() as u64;
        if size > self.config.entry_bytes_max {
            return Err(ProposeError::TooLarge { size, max: self.config.entry_bytes_max });
        }
        if self.backpressured(size) {
            return Err(ProposeError::Backpressure);
        }
        let index = self.append_own(EntryKind::Normal, payload);
        self.finish_input();
        Ok(index)
    }

    /// Leader: proposes a single-server membership change (thesis §4.1). It takes effect on
    /// append; the next change is accepted once this one commits.
    pub fn propose_membership(
        &mut self,
        change: MembershipChange,
    ) -> Result<LogIndex, MembershipError> {
        if self.role != Role::Leader {
            return Err(MembershipError::NotLeader { leader_hint: self.leader });
        }
        if self.transfer.is_some() {
            return Err(MembershipError::TransferInProgress);
        }
        if self.membership_entries.last().is_some_and(|&(i, _)| i > self.commit) {
            return Err(MembershipError::ChangeInProgress);
        }
        // Thesis §4.1 (and Ongaro's 2015 single-server bug fix): a leader changes membership
        // only after it has committed an entry of its own term.
        if self.log.term_at(self.commit) != Some(self.term) {
            return Err(MembershipError::LeaderNotReady);
        }
        if self.backpressured(0) {
            return Err(MembershipError::Backpressure);
        }
        let mut next = self.membership().clone();
        match change {
            MembershipChange::AddLearner(node) => {
                if next.voters.contains(&node) || next.learners.contains(&node) {
                    return Err(MembershipError::AlreadyMember { node });
                }
                next.learners.push(node);
                next.learners.sort_unstable();
            }
            MembershipChange::Promote(node) => {
                let Some(pos) = next.learners.iter().position(|&n| n == node) else {
                    return Err(MembershipError::NotALearner { node });
                };
                next.learners.remove(pos);
                next.voters.push(node);
                next.voters.sort_unstable();
            }
            MembershipChange::Remove(node) => {
                if let Some(pos) = next.learners.iter().position(|&n| n == node) {
                    next.learners.remove(pos);
                } else if let Some(pos) = next.voters.iter().position(|&n| n == node) {
                    if next.voters.len() == 1 {
                        return Err(MembershipError::LastVoter);
                    }
                    next.voters.remove(pos);
                } else {
                    return Err(MembershipError::NotAMember { node });
                }
            }
        }
        let index = self.append_own(EntryKind::Membership(next), Bytes::new());
        self.finish_input();
        Ok(index)
    }

    /// Leader: registers a linearizable read. `Action::ReadReady { ctx, index }` follows once
    /// the leader has committed an entry of its term and a quorum acknowledged a heartbeat
    /// sent after this call (thesis §6.4); `Action::ReadFailed` if leadership is lost first.
    pub fn read_index(&mut self, ctx: ReadCtx) -> Result<(), ReadIndexError> {
        if self.role != Role::Leader {
            return Err(ReadIndexError::NotLeader { leader_hint: self.leader });
        }
        if self.reads_pending >= self.config.reads_pending_max {
            return Err(ReadIndexError::Backpressure);
        }
        self.reads_pending += 1;
        if self.log.term_at(self.commit) == Some(self.term) {
            self.start_read_round(vec![ctx]);
        } else {
            self.reads_waiting.push(ctx);
        }
        self.finish_input();
        Ok(())
    }

    /// Leader: hands leadership to voter `to` (thesis §3.10). Proposals are refused until
    /// `to` has been sent `TimeoutNow` and won, or an election timeout passes (abort).
    pub fn transfer_leadership(&mut self, to: NodeId) -> Result<(), TransferError> {
        if self.role != Role::Leader {
            return Err(TransferError::NotLeader { leader_hint: self.leader });
        }
        if to == self.id {
            return Err(TransferError::ToSelf);
        }
        if !self.membership().voters.contains(&to) {
            return Err(TransferError::NotAVoter { node: to });
        }
        if let Some(t) = self.transfer {
            return Err(TransferError::InProgress { to: t.to });
        }
        self.transfer = Some(Transfer { to, ticks: 0, timeout_sent: false });
        self.maybe_send_timeout_now();
        if self.transfer.is_some_and(|t| !t.timeout_sent) {
            // Catch the target up now: resend from its match point rather than wait for a
            // stalled pipeline to be noticed.
            if let Some(pr) = self.progress.get_mut(&to) {
                if pr.state == ProgressState::Replicate {
                    pr.become_probe();
                }
            }
            self.send_appends_to(to);
        }
        self.finish_input();
        Ok(())
    }

    // ----- message dispatch -----

    fn step(&mut self, from: NodeId, message: Message) {
        // Term queries are answered (and counted) whatever the terms: they change nobody's
        // state but the damaged asker's.
        match message {
            Message::TermQuery { .. } => return self.handle_term_query(from),
            Message::TermQueryResponse { term } => {
                return self.handle_term_query_response(from, term)
            }
            _ => {}
        }
        let msg_term = message.term();
        if msg_term > self.term {
            match &message {
                Message::PreVote { .. } => {}
                Message::PreVoteResponse { granted: true, .. } => {}
                Message::Vote { transfer: false, .. } if self.in_lease() => {
                    // Thesis §4.2.3: a server that hears a leader ignores vote requests
                    // (CheckQuorum's lease) so that removed or partitioned servers can't
                    // disrupt the group.
                    return;
                }
                Message::Append { .. }
                | Message::Heartbeat { .. }
                | Message::InstallLogStart { .. }
                | Message::TimeoutNow { .. } => self.become_follower(msg_term, Some(from)),
                _ => self.become_follower(msg_term, None),
            }
        } else if msg_term < self.term {
            match message {
                Message::Append { .. }
                | Message::Heartbeat { .. }
                | Message::InstallLogStart { .. } => {
                    // A stale leader: tell it the newer term so that it steps down.
                    let reply = Message::HeartbeatResponse { term: self.term, ctx: 0 };
                    self.send(from, reply);
                }
                Message::PreVote { .. } => {
                    let reply = Message::PreVoteResponse { term: self.term, granted: false };
                    self.send(from, reply);
                }
                _ => {}
            }
            return;
        }
        match message {
            Message::PreVote { term, last_index, last_term } => {
                self.handle_pre_vote(from, term, last_index, last_term)
            }
            Message::PreVoteResponse { term, granted } => {
                if self.role == Role::PreCandidate && term == Term(self.term.0 + 1) {
                    self.votes.insert(from, granted);
                    self.tally_votes();
                }
            }
            Message::Vote { last_index, last_term, .. } => {
                self.handle_vote(from, last_index, last_term)
            }
            Message::VoteResponse { granted, .. } => {
                if self.role == Role::Candidate {
                    self.votes.insert(from, granted);
                    self.tally_votes();
                }
            }
            Message::Append { prev_index, prev_term, commit, entries, .. } => {
                self.follow(from);
                self.handle_append(prev_index, prev_term, commit, entries);
            }
            Message::AppendResponse { result, .. } => self.handle_append_response(from, result),
            Message::Heartbeat { commit, ctx, .. } => {
                self.follow(from);
                self.handle_heartbeat(from, commit, ctx);
            }
            Message::HeartbeatResponse { ctx, .. } => self.handle_heartbeat_response(from, ctx),
            Message::TimeoutNow { .. } => {
                self.follow(from);
                // Thesis §3.10: start an election at once, skipping PreVote and the lease.
                if self.can_campaign() {
                    self.become_candidate(true);
                }
            }
            Message::InstallLogStart { start, prev_term, commit, membership, .. } => {
                self.follow(from);
                self.handle_install_log_start(start, prev_term, commit, membership);
            }
            Message::TermQuery { .. } | Message::TermQueryResponse { .. } => {
                unreachable!("handled above")
            }
        }
    }

    /// A message from the leader of our term arrived: make sure we follow it.
    fn follow(&mut self, leader: NodeId) {
        assert!(
            self.role != Role::Leader,
            "Raft §5.2 election safety: two leaders in {} ({} and {leader})",
            self.term,
            self.id
        );
        if let Some(known) = self.leader {
            assert_eq!(known, leader, "two leaders in one term {}", self.term);
        }
        if matches!(self.role, Role::Candidate | Role::PreCandidate) || self.leader.is_none() {
            self.become_follower(self.term, Some(leader));
        }
        self.election_elapsed = 0;
    }

    // ----- elections -----

    fn tick_election(&mut self) {
        if self.damaged && !self.term_learned() {
            self.term_query_elapsed = self.term_query_elapsed.saturating_add(1);
            if self.term_query_elapsed >= self.config.heartbeat_ticks {
                self.term_query_elapsed = 0;
                self.send_term_queries();
            }
        }
        self.election_elapsed = self.election_elapsed.saturating_add(1);
        if self.election_elapsed >= self.election_timeout && self.can_campaign() {
            if self.config.pre_vote {
                self.become_pre_candidate();
            } else {
                self.become_candidate(false);
            }
        }
    }

    fn can_campaign(&self) -> bool {
        !self.damaged && self.membership().voters.contains(&self.id)
    }

    fn in_lease(&self) -> bool {
        self.config.check_quorum
            && self.leader.is_some()
            && self.election_elapsed < self.config.election_ticks
    }

    fn reset_election_timer(&mut self) {
        self.election_elapsed = 0;
        let et = self.config.election_ticks;
        self.election_timeout = et + self.rng.gen_range(0..et);
    }

    fn become_follower(&mut self, term: Term, leader: Option<NodeId>) {
        if term > self.term {
            self.set_hard_state(term, None);
        }
        if self.role == Role::Leader {
            self.fail_reads();
            self.transfer = None;
            self.progress.clear();
        }
        self.role = self.follower_role();
        self.leader = leader;
        self.votes.clear();
        self.reset_election_timer();
        self.match_bound = self.commit;
        self.ack_sent = LogIndex(0);
        self.leader_commit = LogIndex(0);
        // Report the step-down before any action this input produces after it (a truncation
        // of the old leader's entries, a commit of the new leader's): a driver answers
        // producers on `CommitAdvanced` as the leader it last heard of.
        self.report_role();
    }

    fn become_pre_candidate(&mut self) {
        self.role = Role::PreCandidate;
        self.leader = None;
        self.votes.clear();
        self.reset_election_timer();
        let message = Message::PreVote {
            term: Term(self.term.0 + 1),
            last_index: self.log.last(),
            last_term: self.log.last_term(),
        };
        self.send_to_voters(&message);
        self.tally_votes();
    }

    fn become_candidate(&mut self, transfer: bool) {
        let term = Term(self.term.0 + 1);
        self.set_hard_state(term, Some(self.id));
        self.role = Role::Candidate;
        self.leader = None;
        self.votes.clear();
        self.reset_election_timer();
        let message = Message::Vote {
            term,
            last_index: self.log.last(),
            last_term: self.log.last_term(),
            transfer,
        };
        self.send_to_voters(&message);
        self.tally_votes();
    }

    fn send_to_voters(&mut self, message: &Message) {
        for i in 0..self.membership().voters.len() {
            let to = self.membership().voters[i];
            if to != self.id {
                self.send(to, message.clone());
            }
        }
    }

    fn tally_votes(&mut self) {
        let voters = &self.membership().voters;
        let mut granted = 0;
        let mut rejected = 0;
        for voter in voters {
            if *voter == self.id {
                // Our own vote counts once it is durable (a pre-vote needs no durability).
                let durable_vote =
                    self.durable_hard_state == HardState { term: self.term, vote: Some(self.id) };
                if self.role == Role::PreCandidate || durable_vote {
                    granted += 1;
                }
            } else {
                match self.votes.get(voter) {
                    Some(true) => granted += 1,
                    Some(false) => rejected += 1,
                    None => {}
                }
            }
        }
        match (vote_outcome(voters.len(), granted, rejected), self.role) {
            (VoteOutcome::Won, Role::PreCandidate) => self.become_candidate(false),
            (VoteOutcome::Won, Role::Candidate) => self.become_leader(),
            (VoteOutcome::Lost, _) => self.become_follower(self.term, None),
            _ => {}
        }
    }

    fn log_up_to_date(&self, last_index: LogIndex, last_term: Term) -> bool {
        // Raft §5.4.1: the candidate's log is at least as up-to-date as ours.
        (last_term, last_index) >= (self.log.last_term(), self.log.last())
    }

    fn handle_pre_vote(&mut self, from: NodeId, term: Term, last_index: LogIndex, last_term: Term) {
        // Thesis §9.6: grant without changing our own state if an election could be won; a
        // server that hears a leader (lease) or is damaged refuses.
        let can_vote = self.vote == Some(from)
            || (self.vote.is_none() && self.leader.is_none())
            || term > self.term;
        let grant = can_vote
            && !self.damaged
            && !self.in_lease()
            && self.log_up_to_date(last_index, last_term);
        if grant {
            self.send(from, Message::PreVoteResponse { term, granted: true });
        } else if !self.in_lease() {
            self.send(from, Message::PreVoteResponse { term: self.term, granted: false });
        }
    }

    fn handle_vote(&mut self, from: NodeId, last_index: LogIndex, last_term: Term) {
        // Raft §5.2: one vote per term, first come first served; §5.4.1: only for an
        // up-to-date log. A damaged replica (lost log or vote) never votes.
        let can_vote = self.vote == Some(from) || (self.vote.is_none() && self.leader.is_none());
        let grant = can_vote && !self.damaged && self.log_up_to_date(last_index, last_term);
        if grant {
            self.election_elapsed = 0;
            if self.vote.is_none() {
                self.set_hard_state(self.term, Some(from));
            }
        }
        self.send(from, Message::VoteResponse { term: self.term, granted: grant });
    }

    fn become_leader(&mut self) {
        self.role = Role::Leader;
        self.leader = Some(self.id);
        self.votes.clear();
        self.heartbeat_elapsed = 0;
        self.election_elapsed = 0;
        self.commit_floor = self.commit;
        self.commit_basis = LogIndex(0);
        self.transfer = None;
        self.entry_sizes.clear();
        self.sizes_start = self.log.last().next();
        self.uncommitted_bytes = 0;
        self.progress.clear();
        for i in 0..self.peers.len() {
            let mut pr = Progress::new(self.log.last().next());
            pr.recent_active = true;
            self.progress.insert(self.peers[i], pr);
        }
        // Raft §8 / §5.4.2: a new leader commits entries of earlier terms only by committing
        // one of its own; the Noop makes that happen at once.
        self.append_own(EntryKind::Noop, Bytes::new());
    }

    // ----- leader: log and replication -----

    fn backpressured(&self, size: u64) -> bool {
        let uncommitted = self.log.last().0 - self.commit.0;
        uncommitted >= self.config.uncommitted_entries_max
            || self.uncommitted_bytes + size > self.config.uncommitted_bytes_max
    }

    fn append_own(&mut self, kind: EntryKind, payload: Bytes) -> LogIndex {
        let index = self.log.last().next();
        let size = payload.len() as u64;
        self.log.append(index, self.term);
        if self.entry_sizes.len() >= ENTRY_SIZES_TRACKED_MAX {
            self.entry_sizes.pop_front();
            self.sizes_start = self.sizes_start.next();
        }
        if self.sizes_start.0 + self.entry_sizes.len() as u64 == index.0 {
            self.entry_sizes.push_back(size);
        }
        self.uncommitted_bytes += size;
        let membership = match &kind {
            EntryKind::Membership(m) => Some(m.clone()),
            _ => None,
        };
        let entry = Entry { term: self.term, index, kind, payload };
        self.send_action(Action::AppendEntries { entries: vec![entry] });
        if let Some(m) = membership {
            self.membership_entries.push((index, m));
            self.on_membership_changed();
        }
        for i in 0..self.peers.len() {
            let peer = self.peers[i];
            self.send_appends_to(peer);
        }
        // A single-voter group commits on its own durability: nothing else to wait for.
        self.maybe_commit();
        index
    }

    fn known_size(&self, index: LogIndex) -> Option<u64> {
        let offset = index.0.checked_sub(self.sizes_start.0)?;
        self.entry_sizes.get(offset as usize).copied()
    }

    /// The range `next..=through` of one Append, bounded by the per-message limits, and the
    /// bytes to account for it (the per-message budget when sizes are unknown).
    fn message_range(&self, next: LogIndex) -> (LogIndex, u64) {
        let max_through =
            LogIndex(self.log.last().0.min(next.0 + self.config.append_entries_max - 1));
        let mut bytes = 0u64;
        let mut through = next;
        let mut index = next;
        while index <= max_through {
            let Some(size) = self.known_size(index) else {
                return (max_through, self.config.append_bytes_max);
            };
            if index > next && bytes + size > self.config.append_bytes_max {
                break;
            }
            bytes += size;
            through = index;
            index = index.next();
        }
        (through, bytes)
    }

    /// Sends `to` as many Appends as its state and window allow.
    fn send_appends_to(&mut self, to: NodeId) {
        while self.send_append(to) {}
    }

    /// Sends one Append (or InstallLogStart) to `to`; true if another may follow at once.
    fn send_append(&mut self, to: NodeId) -> bool {
        let (msgs_max, bytes_max) = (self.config.inflight_msgs_max, self.config.inflight_bytes_max);
        let Some(pr) = self.progress.get(&to) else { return false };
        if pr.is_paused(msgs_max, bytes_max) {
            return false;
        }
        let next = pr.next_index;
        let state = pr.state;
        if next < self.log.start() {
            let message = Message::InstallLogStart {
                term: self.term,
                start: self.log.start(),
                prev_term: self.log.prev_term(),
                commit: self.commit,
                membership: self.membership_base.clone(),
            };
            let pr = self.progress.get_mut(&to).expect("checked");
            pr.state = ProgressState::InstallLogStart;
            pr.paused = true;
            pr.clear_inflight();
            self.send(to, message);
            return false;
        }
        let prev_index = next.prev();
        let prev_term = self.log.term_at(prev_index).expect("next - 1 is within the log");
        if next > self.log.last() {
            if state == ProgressState::Replicate {
                return false;
            }
            // Probe with no entries: is `prev_index` a match?
            self.progress.get_mut(&to).expect("checked").paused = true;
            let message = Message::Append {
                term: self.term,
                prev_index,
                prev_term,
                commit: self.commit_for(to),
                entries: Vec::new(),
            };
            self.send(to, message);
            return false;
        }
        let (through, bytes) = self.message_range(next);
        let pr = self.progress.get_mut(&to).expect("checked");
        let more = match state {
            ProgressState::Replicate => {
                pr.push_inflight(through, bytes);
                true
            }
            _ => {
                pr.paused = true;
                false
            }
        };
        let commit = self.commit_for(to);
        let action = Action::SendEntries {
            to,
            term: self.term,
            prev_index,
            prev_term,
            commit,
            from: next,
            through,
        };
        self.send_action(action);
        more
    }

    /// The commit index an Append to `to` carries: the leader's, or for a damaged follower
    /// its fixed repair target (`Progress::repair_target`). Both are committed indices.
    fn commit_for(&self, to: NodeId) -> LogIndex {
        match self.progress.get(&to) {
            Some(pr) if pr.damaged => pr.repair_target.unwrap_or(self.commit),
            _ => self.commit,
        }
    }

    fn handle_append_response(&mut self, from: NodeId, result: AppendResult) {
        if self.role != Role::Leader {
            return;
        }
        let last = self.log.last();
        let start = self.log.start();
        let own_commit = (self.log.term_at(self.commit) == Some(self.term)).then_some(self.commit);
        let Some(pr) = self.progress.get_mut(&from) else { return };
        match result {
            AppendResult::Accepted { durable, damaged } => {
                if durable > last {
                    return; // Not an answer about this leader's log.
                }
                let reached = pr.repair_target.is_some_and(|target| durable >= target);
                if !damaged || !pr.damaged || reached {
                    // Repaired, a new damage, or a target reached without a repair (the
                    // follower had not learned its term yet, its log starts above the target,
                    // its hard state was not durable...): a target is fixed again below, so
                    // it moves only once reached and a follower catching up still reaches it.
                    pr.repair_target = None;
                }
                if damaged && pr.repair_target.is_none() {
                    // Fixed once the commit is of this term (`maybe_repair` needs that of the
                    // follower's target); until then the follower is told the commit as is.
                    pr.repair_target = own_commit;
                }
                if damaged {
                    // The follower lost state (wiped disk, corrupt log): what it acked before
                    // means nothing now. Restart from what it holds today; it counts toward
                    // no quorum until it reports itself repaired.
                    if durable > pr.match_index {
                        // Its repair advances: the pipeline is not stalled (without this, a
                        // damaged follower catching up was probed again every election
                        // timeout, and the re-sends piled up behind the first ones).
                        pr.stalled_ticks = 0;
                    }
                    pr.match_index = durable;
                    if pr.next_index <= durable {
                        pr.next_index = durable.next();
                    }
                }
                pr.damaged = damaged;
                if !damaged {
                    pr.recent_active = true;
                }
                let moved = pr.advance_match(durable);
                pr.free_inflight_through(durable);
                match pr.state {
                    ProgressState::Probe => pr.become_replicate(),
                    ProgressState::InstallLogStart => {
                        if pr.match_index.next() >= start {
                            pr.become_replicate();
                        } else {
                            // The follower answered but acks nothing new: its log reset is
                            // not durable yet, so it can ack only entries appended after it.
                            // Probe at our log start; the Append's prev check decides.
                            pr.become_probe();
                            pr.next_index = start;
                        }
                    }
                    ProgressState::Replicate => {}
                }
                if moved {
                    self.maybe_commit();
                    self.maybe_report_learner(from);
                    self.maybe_send_timeout_now();
                }
            }
            AppendResult::Rejected { rejected, hint_index, hint_term } => {
                if !pr.damaged {
                    pr.recent_active = true;
                }
                // In Replicate every Append sent has `prev >= match`: a rejection below the
                // match is a stale answer; one *at* the match says the follower lost entries
                // (below).
                let stale = match pr.state {
                    ProgressState::Replicate => rejected < pr.match_index,
                    ProgressState::Probe => rejected != pr.next_index.prev(),
                    ProgressState::InstallLogStart => true,
                };
                if stale {
                    return;
                }
                // Fast back-off (Raft §5.3 optimisation, etcd): skip every index of the
                // follower's conflicting term at once.
                let probe = self.log.find_conflict_by_term(hint_index.min(last), hint_term);
                let pr = self.progress.get_mut(&from).expect("checked");
                if rejected <= pr.match_index {
                    // A rejection of `prev == match` (in Probe, `rejected == next - 1 ==
                    // match`): the follower no longer holds a matching entry at its recorded
                    // match, so it lost entries it acked (a restart that dropped them).
                    // What it acked before means nothing now: its match restarts from
                    // nothing (it counts toward no quorum for entries it does not hold, and
                    // its lag is what it holds now) and is rebuilt from its next ack.
                    // Keeping the old match would probe `match` forever.
                    pr.match_index = LogIndex(0);
                }
                pr.become_probe();
                let next = rejected.min(probe.next()).max(pr.match_index.next());
                pr.next_index = next;
            }
        }
        self.send_appends_to(from);
    }

    fn maybe_commit(&mut self) {
        if self.role != Role::Leader {
            return;
        }
        let quorum = self.quorum_durable();
        self.commit_basis = self.commit_basis.max(quorum);
        // Raft §5.4.2: only an entry of the current term commits by counting replicas.
        if quorum > self.commit && self.log.term_at(quorum) == Some(self.term) {
            self.advance_commit(quorum);
        }
    }

    /// The highest index durable on a quorum of voters (damaged followers count as nothing).
    fn quorum_durable(&mut self) -> LogIndex {
        let mut scratch = std::mem::take(&mut self.scratch);
        scratch.clear();
        for voter in &self.membership().voters {
            let index = if *voter == self.id {
                // Thesis §10.2.1: the leader counts itself only once its own write is durable.
                self.durable
            } else {
                match self.progress.get(voter) {
                    Some(pr) if !pr.damaged => pr.match_index,
                    _ => LogIndex(0),
                }
            };
            scratch.push(index);
        }
        let quorum = quorum_index(&mut scratch);
        self.scratch = scratch;
        quorum
    }

    fn advance_commit(&mut self, to: LogIndex) {
        let from = self.commit;
        assert!(to > from && to <= self.log.last(), "commit must advance within the log");
        self.commit = to;
        if self.role == Role::Leader {
            let mut index = from.next();
            while index <= to {
                if let Some(size) = self.known_size(index) {
                    self.uncommitted_bytes -= size;
                }
                index = index.next();
            }
            self.trim_entry_sizes();
        }
        self.send_action(Action::CommitAdvanced { through: to });
        if self.role == Role::Leader {
            if self.log.term_at(to) == Some(self.term) && !self.reads_waiting.is_empty() {
                let ctxs = std::mem::take(&mut self.reads_waiting);
                self.start_read_round(ctxs);
            }
            // Thesis §4.2.2: a leader removed from the voters steps down once the change
            // commits.
            let removal_committed = !self.membership().voters.contains(&self.id)
                && self.membership_entries.last().is_none_or(|&(i, _)| i <= to);
            if removal_committed {
                self.become_follower(self.term, None);
            }
        }
    }

    fn trim_entry_sizes(&mut self) {
        let min_match = self.progress.values().map(|p| p.match_index).min().unwrap_or(self.commit);
        let keep_from = self.commit.min(min_match);
        while self.sizes_start <= keep_from && !self.entry_sizes.is_empty() {
            self.entry_sizes.pop_front();
            self.sizes_start = self.sizes_start.next();
        }
    }

    fn maybe_report_learner(&mut self, peer: NodeId) {
        if !self.membership().learners.contains(&peer) {
            return;
        }
        let commit = self.commit;
        let pr = self.progress.get_mut(&peer).expect("learner has progress");
        if !pr.caught_up_reported && !pr.damaged && pr.match_index >= commit {
            pr.caught_up_reported = true;
            let durable = pr.match_index;
            self.send_action(Action::LearnerCaughtUp { learner: peer, durable });
        }
    }

    fn maybe_send_timeout_now(&mut self) {
        let Some(transfer) = self.transfer else { return };
        if transfer.timeout_sent {
            return;
        }
        let caught_up =
            self.progress.get(&transfer.to).is_some_and(|p| p.match_index == self.log.last());
        if caught_up {
            self.transfer = Some(Transfer { timeout_sent: true, ..transfer });
            self.send(transfer.to, Message::TimeoutNow { term: self.term });
        }
    }

    fn tick_leader(&mut self) {
        self.heartbeat_elapsed += 1;
        self.election_elapsed += 1;
        if let Some(t) = &mut self.transfer {
            t.ticks += 1;
            if t.ticks >= self.config.election_ticks {
                // Thesis §3.10: abort a transfer that did not finish within an election
                // timeout, and accept proposals again.
                self.transfer = None;
            }
        }
        if self.election_elapsed >= self.config.election_ticks {
            self.election_elapsed = 0;
            if self.config.check_quorum && !self.quorum_active() {
                // CheckQuorum (thesis §6.2): a leader that heard from no quorum steps down.
                self.become_follower(self.term, None);
                return;
            }
            for pr in self.progress.values_mut() {
                pr.recent_active = false;
            }
        }
        if self.heartbeat_elapsed >= self.config.heartbeat_ticks {
            self.heartbeat_elapsed = 0;
            self.broadcast_heartbeat(0);
            self.resume_stalled();
        }
    }

    fn quorum_active(&self) -> bool {
        let voters = &self.membership().voters;
        let active = voters
            .iter()
            .filter(|v| {
                **v == self.id
                    || self.progress.get(v).is_some_and(|p| p.recent_active && !p.damaged)
            })
            .count();
        active >= quorum_size(voters.len())
    }

    /// Heartbeat time: resend probes, and give up on a pipeline that has not advanced for an
    /// election timeout (a lost message) by probing from the match point.
    fn resume_stalled(&mut self) {
        let (heartbeat, election) = (self.config.heartbeat_ticks, self.config.election_ticks);
        for i in 0..self.peers.len() {
            let peer = self.peers[i];
            let Some(pr) = self.progress.get_mut(&peer) else { continue };
            match pr.state {
                ProgressState::Probe | ProgressState::InstallLogStart => pr.paused = false,
                ProgressState::Replicate => {
                    if pr.inflight.is_empty() {
                        pr.stalled_ticks = 0;
                    } else {
                        pr.stalled_ticks += heartbeat;
                        if pr.stalled_ticks >= election {
                            pr.become_probe();
                        }
                    }
                }
            }
            self.send_appends_to(peer);
        }
    }

    fn broadcast_heartbeat(&mut self, ctx: u64) {
        for i in 0..self.peers.len() {
            let peer = self.peers[i];
            let Some(pr) = self.progress.get(&peer) else { continue };
            let idle = pr.state == ProgressState::Replicate && pr.inflight.is_empty();
            if pr.damaged && idle && pr.next_index >= self.log.start() {
                // A damaged follower ignores heartbeats (their commit is capped by a match it
                // may no longer hold). Tell it the commit in an empty Append, whose prev check
                // proves the match, so that it can be repaired with no new entry to send.
                let prev_index = pr.next_index.prev();
                let prev_term = self.log.term_at(prev_index).expect("next - 1 is within the log");
                let message = Message::Append {
                    term: self.term,
                    prev_index,
                    prev_term,
                    commit: pr.repair_target.unwrap_or(self.commit),
                    entries: Vec::new(),
                };
                self.send(peer, message);
                continue;
            }
            let commit = self.commit.min(pr.match_index);
            self.send(peer, Message::Heartbeat { term: self.term, commit, ctx });
        }
    }

    fn handle_heartbeat_response(&mut self, from: NodeId, ctx: u64) {
        if self.role != Role::Leader {
            return;
        }
        let last = self.log.last();
        let Some(pr) = self.progress.get_mut(&from) else { return };
        pr.recent_active = true;
        let behind = pr.match_index < last;
        if behind && pr.state == ProgressState::Replicate && pr.inflight.is_empty() {
            self.send_appends_to(from);
        }
        if ctx != 0 && self.membership().voters.contains(&from) {
            for round in self.read_rounds.iter_mut() {
                if round.id > ctx {
                    break;
                }
                if !round.acks.contains(&from) {
                    round.acks.push(from);
                }
            }
            self.release_reads();
        }
    }

    // ----- leader: ReadIndex -----

    fn start_read_round(&mut self, ctxs: Vec<ReadCtx>) {
        let id = self.read_round_next;
        self.read_round_next += 1;
        self.read_rounds.push_back(ReadRound { id, index: self.commit, ctxs, acks: Vec::new() });
        self.broadcast_heartbeat(id);
        self.release_reads();
    }

    fn release_reads(&mut self) {
        let voters = self.membership().voters.len();
        let self_ack = usize::from(self.membership().voters.contains(&self.id));
        while let Some(round) = self.read_rounds.front() {
            if round.acks.len() + self_ack < quorum_size(voters) {
                break;
            }
            let round = self.read_rounds.pop_front().expect("front checked");
            for ctx in round.ctxs {
                self.reads_pending -= 1;
                self.send_action(Action::ReadReady { ctx, index: round.index });
            }
        }
    }

    fn fail_reads(&mut self) {
        for ctx in std::mem::take(&mut self.reads_waiting) {
            self.send_action(Action::ReadFailed { ctx });
        }
        for round in std::mem::take(&mut self.read_rounds) {
            for ctx in round.ctxs {
                self.send_action(Action::ReadFailed { ctx });
            }
        }
        self.reads_pending = 0;
    }

    // ----- follower -----

    fn handle_append(
        &mut self,
        prev_index: LogIndex,
        prev_term: Term,
        commit: LogIndex,
        mut entries: Vec<Entry>,
    ) {
        // Bad input from a peer (indexes near overflow, non-contiguous entries, terms out of
        // order) is dropped.
        if prev_index.0 >= u64::MAX / 2 || entries.len() as u64 >= u64::MAX / 2 {
            return;
        }
        let well_formed = entries.iter().enumerate().all(|(i, e)| {
            e.index.0 == prev_index.0 + 1 + i as u64
                && e.term <= self.term
                && e.term >= prev_term
                && (i == 0 || entries[i - 1].term <= e.term)
        });
        if !well_formed {
            return;
        }
        self.leader_commit = self.leader_commit.max(commit);
        let msg_last = LogIndex(prev_index.0 + entries.len() as u64);
        let start_prev = self.log.start().prev();
        let (prev_index, prev_term, skip) = if prev_index < start_prev {
            // Entries below our log start are committed, hence match; skip them.
            let skip = (start_prev.0 - prev_index.0) as usize;
            if skip >= entries.len() {
                self.maybe_ack(true);
                return;
            }
            if entries[skip - 1].term != self.log.prev_term() {
                return;
            }
            (start_prev, self.log.prev_term(), skip)
        } else {
            (prev_index, prev_term, 0)
        };
        if !self.log.matches(prev_index, prev_term) {
            // Raft §5.3: reject; the hint lets the leader skip the whole conflicting term.
            let hint_index =
                self.log.find_conflict_by_term(prev_index.min(self.log.last()), prev_term);
            let hint_term = self.log.term_at(hint_index).unwrap_or(Term(0));
            let result = AppendResult::Rejected { rejected: prev_index, hint_index, hint_term };
            self.send_to_leader(Message::AppendResponse { term: self.term, result });
            if self.damaged {
                // Tell the leader what a damaged replica really holds, so that it stops
                // trusting its old match point (the rejection alone may look stale to it).
                self.maybe_ack(true);
            }
            return;
        }
        let mut first_new = skip;
        while first_new < entries.len() {
            let entry = &entries[first_new];
            match self.log.term_at(entry.index) {
                Some(term) if term == entry.term => first_new += 1,
                Some(_) => {
                    // Raft §5.3: a conflicting entry and everything after it goes.
                    self.truncate_log(entry.index);
                    break;
                }
                None => break,
            }
        }
        if first_new < entries.len() {
            let new_entries = if first_new == 0 { entries } else { entries.split_off(first_new) };
            self.append_from_leader(new_entries);
        }
        self.match_bound = self.match_bound.max(msg_last);
        let new_commit = commit.min(msg_last);
        if new_commit > self.commit {
            self.advance_commit(new_commit);
        }
        self.maybe_ack(self.durable >= msg_last || self.damaged);
    }

    fn truncate_log(&mut self, from: LogIndex) {
        assert!(
            from > self.commit,
            "Raft §5.4 leader completeness: committed entry {from} would be truncated (commit {})",
            self.commit
        );
        self.log.truncate_from(from);
        self.durable = self.durable.min(from.prev());
        self.send_action(Action::TruncateLog { from });
        let before = self.membership_entries.len();
        self.membership_entries.retain(|&(i, _)| i < from);
        if self.membership_entries.len() != before {
            self.on_membership_changed();
        }
    }

    fn append_from_leader(&mut self, entries: Vec<Entry>) {
        let mut membership_changed = false;
        for entry in &entries {
            self.log.append(entry.index, entry.term);
            if let EntryKind::Membership(m) = &entry.kind {
                self.membership_entries.push((entry.index, m.clone()));
                membership_changed = true;
            }
        }
        self.send_action(Action::AppendEntries { entries });
        if membership_changed {
            self.on_membership_changed();
        }
    }

    fn handle_heartbeat(&mut self, from: NodeId, commit: LogIndex, ctx: u64) {
        if self.damaged {
            // The leader's match for a damaged replica is what it acked before it lost state
            // (a cut log, a forgotten term under which a stale leader's entries were taken):
            // `min(commit, match)` says nothing about what it holds now. Commit only through
            // Appends, whose prev check proves the match. And its word counts for no quorum:
            // no heartbeat (ReadIndex, CheckQuorum) acks until repaired. It answers with a
            // damaged ack instead, so that the leader restarts it from what it really holds
            // and sends it the commit in an Append (see `broadcast_heartbeat`).
            self.maybe_ack(true);
            return;
        }
        // The leader sends min(commit, our match): those entries are ours and match.
        let new_commit = commit.min(self.log.last());
        if new_commit > self.commit {
            self.advance_commit(new_commit);
        }
        self.match_bound = self.match_bound.max(self.commit);
        self.send(from, Message::HeartbeatResponse { term: self.term, ctx });
    }

    fn handle_install_log_start(
        &mut self,
        start: LogIndex,
        prev_term: Term,
        commit: LogIndex,
        membership: Membership,
    ) {
        if start.0 == 0 || start.prev() > commit || prev_term > self.term {
            // Malformed: the leader's log start is at most commit + 1, its terms at most ours.
            return;
        }
        self.leader_commit = self.leader_commit.max(commit);
        let matches = start <= self.log.start() || self.log.matches(start.prev(), prev_term);
        if matches {
            let known = start.prev().min(self.log.last());
            self.match_bound = self.match_bound.max(known);
        } else {
            assert!(self.commit < start, "committed entries always match the leader's");
            // The log's install-snapshot: restart the log at the leader's start.
            self.log.reset(start, prev_term);
            // `durable` counts only once the reset is: see `reset_pending`.
            self.durable = start.prev();
            self.reset_pending = Some(start);
            self.match_bound = start.prev();
            self.membership_base = membership.clone();
            self.membership_entries.clear();
            self.send_action(Action::ResetLog { start, prev_term, membership });
            self.on_membership_changed();
            if start.prev() > self.commit {
                self.advance_commit(start.prev());
            }
        }
        self.maybe_ack(true);
    }

    /// Sends the leader our ack, `min(durable, match_bound)`, if it moved (or `force`). While a
    /// log reset is not durable, a crash may bring back the old log: the ack repeats the last
    /// value sent to this leader (true of the old log and of the new one alike).
    fn maybe_ack(&mut self, force: bool) {
        if matches!(self.role, Role::Leader | Role::Candidate | Role::PreCandidate) {
            return;
        }
        if self.leader.is_none() {
            return;
        }
        let value = if self.reset_pending.is_some() {
            self.ack_sent
        } else {
            self.durable.min(self.match_bound)
        };
        if value > self.ack_sent || force {
            self.ack_sent = self.ack_sent.max(value);
            let result = AppendResult::Accepted { durable: value, damaged: self.damaged };
            self.send_to_leader(Message::AppendResponse { term: self.term, result });
        }
    }

    fn send_to_leader(&mut self, message: Message) {
        if let Some(leader) = self.leader {
            self.send(leader, message);
        }
    }

    /// A damaged replica is repaired once the current leader has told it a commit index (in
    /// an `Append` or `InstallLogStart`, not a heartbeat's match-capped one; for a damaged
    /// follower the leader's Appends carry a fixed target, `Progress::repair_target`, so that
    /// a follower catching up under load reaches it) whose entry is of the leader's term (so every entry committed in earlier terms is at or below it: leader
    /// completeness, Raft §5.4), it holds the log through that index durably and matching
    /// (no log reset pending), and its hard state of that term is durable. Entries the leader
    /// commits later are counted without this replica until it reports itself repaired.
    ///
    /// And first of all it has learned its term (`term_learned`): it may have voted or acked
    /// in a term it no longer remembers, so a leader of a lower term (a stale one, which the
    /// replica's forgotten vote may already have deposed) must not repair it and then count
    /// it. Its term is at least every term a majority of the other voters reported, so the
    /// leader it follows is at or above every term in which a leader was elected before.
    fn maybe_repair(&mut self) {
        let target = self.leader_commit;
        let repaired = self.damaged
            && self.term_learned()
            && self.leader.is_some()
            && self.role != Role::Leader
            && self.reset_pending.is_none()
            && self.log.term_at(target) == Some(self.term)
            && self.durable.min(self.match_bound) >= target
            && self.durable_hard_state.term == self.term;
        if repaired {
            self.damaged = false;
            self.send_action(Action::Repaired);
            self.maybe_ack(true);
        }
    }

    // ----- damaged: learning the term -----

    /// Whether enough other voters answered this replica's `TermQuery` (see
    /// `term_query_answers_needed`).
    fn term_learned(&self) -> bool {
        let voters = &self.membership().voters;
        let answered = self.term_answers.iter().filter(|n| voters.contains(n)).count();
        answered >= term_query_answers_needed(voters.len())
    }

    /// Asks every other voter that has not answered yet for its term (at most one message per
    /// voter per heartbeat interval).
    fn send_term_queries(&mut self) {
        for i in 0..self.membership().voters.len() {
            let to = self.membership().voters[i];
            if to != self.id && self.term_answers.binary_search(&to).is_err() {
                self.send(to, Message::TermQuery { term: self.term });
            }
        }
    }

    fn handle_term_query(&mut self, from: NodeId) {
        // A damaged replica that has not learned its term may report one below a term it
        // voted in and forgot: it does not answer.
        if self.damaged && !self.term_learned() {
            return;
        }
        self.send(from, Message::TermQueryResponse { term: self.term });
    }

    fn handle_term_query_response(&mut self, from: NodeId, term: Term) {
        if !self.damaged || from == self.id {
            return;
        }
        if term > self.term {
            // Adopt it: from now on only a leader at or above it is followed (and may repair).
            self.become_follower(term, None);
        }
        if self.membership().voters.contains(&from) {
            if let Err(pos) = self.term_answers.binary_search(&from) {
                self.term_answers.insert(pos, from);
            }
        }
    }

    // ----- membership -----

    fn follower_role(&self) -> Role {
        if self.membership().voters.contains(&self.id) {
            Role::Follower
        } else {
            Role::Learner
        }
    }

    fn refresh_peers(&mut self) {
        let m = self.membership();
        let mut peers: Vec<NodeId> =
            m.voters.iter().chain(m.learners.iter()).copied().filter(|&n| n != self.id).collect();
        peers.sort_unstable();
        peers.dedup();
        self.peers = peers;
    }

    fn on_membership_changed(&mut self) {
        self.send_action(Action::MembershipChanged(self.membership().clone()));
        self.refresh_peers();
        match self.role {
            Role::Leader => {
                let next = self.log.last().next();
                for i in 0..self.peers.len() {
                    let peer = self.peers[i];
                    self.progress.entry(peer).or_insert_with(|| {
                        let mut pr = Progress::new(next);
                        pr.recent_active = true;
                        pr
                    });
                }
                let peers = std::mem::take(&mut self.peers);
                self.progress.retain(|p, _| peers.contains(p));
                self.peers = peers;
                if self.transfer.is_some_and(|t| !self.membership().voters.contains(&t.to)) {
                    self.transfer = None;
                }
            }
            Role::Candidate | Role::PreCandidate => {
                if !self.membership().voters.contains(&self.id) {
                    self.become_follower(self.term, None);
                }
            }
            Role::Follower | Role::Learner => self.role = self.follower_role(),
        }
    }

    fn fold_membership_below_start(&mut self) {
        let start = self.log.start();
        let below = self.membership_entries.partition_point(|&(i, _)| i < start);
        if below > 0 {
            let mut folded: Vec<_> = self.membership_entries.drain(..below).collect();
            self.membership_base = folded.pop().expect("below > 0").1;
        }
    }

    // ----- output -----

    fn set_hard_state(&mut self, term: Term, vote: Option<NodeId>) {
        self.term = term;
        self.vote = vote;
        self.actions.push_back(Action::PersistHardState(HardState { term, vote }));
    }

    fn send(&mut self, to: NodeId, message: Message) {
        self.send_action(Action::Send { to, message });
    }

    /// Queues an action (everything but `PersistHardState`), or holds it, keeping the order,
    /// until the hard state current now is durable: nothing produced under a term or vote
    /// reaches the network or the log before that term and vote are on disk.
    fn send_action(&mut self, action: Action) {
        let current = self.hard_state();
        if hard_state_key(self.durable_hard_state) >= hard_state_key(current) {
            self.actions.push_back(action);
        } else {
            self.held.push_back((current, action));
        }
    }

    fn finish_input(&mut self) {
        if self.damaged {
            self.maybe_repair();
        }
        self.report_role();
        self.check_invariants();
    }

    /// Emits `RoleChanged` if the role, term or known leader changed since the last one.
    fn report_role(&mut self) {
        let now = (self.role, self.term, self.leader);
        if now != self.reported {
            self.reported = now;
            self.send_action(Action::RoleChanged {
                role: self.role,
                term: self.term,
                leader: self.leader,
            });
        }
    }

    fn check_invariants(&mut self) {
        assert!(
            self.durable <= self.log.last(),
            "durable {} > last {}",
            self.durable,
            self.log.last()
        );
        assert!(self.log.start() <= self.commit.next(), "log start above commit + 1");
        assert!(
            self.commit <= self.log.last() || self.commit < self.log.start(),
            "commit beyond log"
        );
        assert!(self.commit >= self.last_commit, "commit decreased");
        self.last_commit = self.commit;
        let hs = self.hard_state();
        let before = self.last_hard_state;
        assert!(hs.term >= before.term, "term decreased");
        if hs.term == before.term && before.vote.is_some() {
            assert_eq!(hs.vote, before.vote, "two votes in {}", hs.term);
        }
        self.last_hard_state = hs;
        assert!(
            hard_state_key(self.durable_hard_state) <= hard_state_key(hs),
            "durable hard state ahead of the hard state"
        );
        if hard_state_key(self.durable_hard_state) == hard_state_key(hs) {
            assert!(self.held.is_empty(), "messages held though the hard state is durable");
        }
        assert!(self.log.last_term() <= self.term, "an entry from the future");
        match self.role {
            Role::Leader => {
                assert_eq!(self.leader, Some(self.id));
                assert!(
                    self.commit <= self.commit_floor.max(self.commit_basis),
                    "commit {} above the quorum durable index",
                    self.commit
                );
                for pr in self.progress.values() {
                    assert!(pr.match_index < pr.next_index, "match >= next");
                    assert!(pr.match_index <= self.log.last(), "match beyond the log");
                    assert!(pr.next_index <= self.log.last().next(), "next beyond the log");
                }
            }
            _ => assert!(self.progress.is_empty(), "a non-leader tracks progress"),
        }
        if self.damaged {
            assert!(self.role != Role::Leader && self.role != Role::Candidate, "damaged leads");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(voters: &[u32]) -> Membership {
        Membership { voters: voters.iter().map(|&v| NodeId(v)).collect(), learners: Vec::new() }
    }

    fn follower(id: u32) -> Replica {
        Replica::new(Config::new(NodeId(id), 7), Recovered::bootstrap(members(&[1, 2, 3]))).unwrap()
    }

    fn drain(r: &mut Replica) -> Vec<Action> {
        std::iter::from_fn(|| r.poll_action()).collect()
    }

    fn entry(index: u64, term: u64) -> Entry {
        Entry {
            term: Term(term),
            index: LogIndex(index),
            kind: EntryKind::Normal,
            payload: Bytes::new(),
        }
    }

    fn append(term: u64, prev: (u64, u64), commit: u64, entries: Vec<Entry>) -> Message {
        Message::Append {
            term: Term(term),
            prev_index: LogIndex(prev.0),
            prev_term: Term(prev.1),
            commit: LogIndex(commit),
            entries,
        }
    }

    /// Reports every PersistHardState among `actions` durable.
    fn persist_all(r: &mut Replica, actions: &[Action]) -> Vec<Action> {
        let mut out = Vec::new();
        for a in actions {
            if let Action::PersistHardState(hs) = a {
                r.handle_hard_state_durable(*hs);
                out.extend(drain(r));
            }
        }
        out
    }

    fn sends(actions: &[Action]) -> Vec<&Message> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Send { message, .. } => Some(message),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn stale_durable_report_after_truncation_is_ignored() {
        let mut r = follower(2);
        r.handle_message(NodeId(1), append(1, (0, 0), 0, vec![entry(1, 1), entry(2, 1)]));
        let actions = drain(&mut r);
        persist_all(&mut r, &actions);
        // A new leader of term 2 replaces index 2 (Raft §5.3) before the fsync of the old
        // entry is reported.
        r.handle_message(NodeId(3), append(2, (1, 1), 0, vec![entry(2, 2)]));
        let actions = drain(&mut r);
        persist_all(&mut r, &actions);
        r.handle_durable(LogIndex(2), Term(1));
        assert_eq!(r.durable(), LogIndex(0), "a report for the truncated entry must not count");
        r.handle_durable(LogIndex(2), Term(2));
        assert_eq!(r.durable(), LogIndex(2));
    }

    #[test]
    fn truncation_lowers_the_durable_index() {
        let mut r = follower(2);
        r.handle_message(NodeId(1), append(1, (0, 0), 0, vec![entry(1, 1), entry(2, 1)]));
        let actions = drain(&mut r);
        persist_all(&mut r, &actions);
        r.handle_durable(LogIndex(2), Term(1));
        assert_eq!(r.durable(), LogIndex(2));
        r.handle_message(NodeId(3), append(2, (1, 1), 0, vec![entry(2, 2)]));
        assert_eq!(r.durable(), LogIndex(1));
        let actions = drain(&mut r);
        let actions = [actions.clone(), persist_all(&mut r, &actions)].concat();
        let truncate = actions.iter().position(|a| *a == Action::TruncateLog { from: LogIndex(2) });
        let append = actions.iter().position(|a| matches!(a, Action::AppendEntries { .. }));
        assert!(truncate.unwrap() < append.unwrap(), "truncate before the new entry");
    }

    #[test]
    fn follower_ack_leaves_only_once_durable_and_carries_the_durable_index() {
        // Design §3.4 / §6: acks depend on durable state.
        let mut r = follower(2);
        r.handle_message(NodeId(1), append(1, (0, 0), 0, vec![entry(1, 1), entry(2, 1)]));
        let actions = drain(&mut r);
        let released = persist_all(&mut r, &actions);
        assert!(sends(&released).is_empty(), "nothing durable yet: no ack");
        r.handle_durable(LogIndex(1), Term(1));
        let acked = drain(&mut r);
        let expected = Message::AppendResponse {
            term: Term(1),
            result: AppendResult::Accepted { durable: LogIndex(1), damaged: false },
        };
        assert_eq!(sends(&acked), vec![&expected]);
    }

    #[test]
    fn candidate_sends_vote_requests_only_after_its_term_and_vote_are_durable() {
        // Raft Figure 2: currentTerm and votedFor are persisted before answering (and asking).
        let mut config = Config::new(NodeId(1), 3);
        config.pre_vote = false;
        let mut r = Replica::new(config, Recovered::bootstrap(members(&[1, 2, 3]))).unwrap();
        let mut actions = Vec::new();
        while r.role() != Role::Candidate {
            r.handle_tick();
            actions.extend(drain(&mut r));
        }
        assert!(sends(&actions).is_empty(), "vote requests held");
        let released = persist_all(&mut r, &actions);
        assert_eq!(sends(&released).len(), 2);
    }

    #[test]
    fn one_vote_per_term_first_come_first_served() {
        // Raft §5.2: at most one vote per term.
        let mut config = Config::new(NodeId(3), 3);
        config.check_quorum = false;
        let mut r = Replica::new(config, Recovered::bootstrap(members(&[1, 2, 3]))).unwrap();
        let vote = |term| Message::Vote {
            term: Term(term),
            last_index: LogIndex(0),
            last_term: Term(0),
            transfer: false,
        };
        r.handle_message(NodeId(1), vote(1));
        let first = drain(&mut r);
        let first = persist_all(&mut r, &first);
        r.handle_message(NodeId(2), vote(1));
        let second = drain(&mut r);
        let granted = |acts: &[Action]| {
            sends(acts).iter().any(|m| matches!(m, Message::VoteResponse { granted: true, .. }))
        };
        assert!(granted(&first));
        assert!(!granted(&second));
        assert_eq!(r.hard_state().vote, Some(NodeId(1)));
    }

    #[test]
    fn a_damaged_replica_neither_campaigns_nor_votes() {
        let recovered = Recovered { damaged: true, ..Recovered::bootstrap(members(&[1, 2, 3])) };
        let mut r = Replica::new(Config::new(NodeId(2), 1), recovered).unwrap();
        for _ in 0..100 {
            r.handle_tick();
        }
        let ticked = drain(&mut r);
        assert!(sends(&ticked).iter().all(|m| matches!(m, Message::TermQuery { .. })));
        assert_eq!(r.role(), Role::Follower);
        assert_eq!(r.term(), Term(0));
        r.handle_message(
            NodeId(1),
            Message::Vote {
                term: Term(1),
                last_index: LogIndex(0),
                last_term: Term(0),
                transfer: true,
            },
        );
        let actions = drain(&mut r);
        let actions = [actions.clone(), persist_all(&mut r, &actions)].concat();
        assert!(sends(&actions)
            .iter()
            .all(|m| matches!(m, Message::VoteResponse { granted: false, .. })));
        assert_eq!(r.hard_state().vote, None);
    }

    #[test]
    fn a_damaged_follower_is_repaired_only_by_a_commit_of_the_leaders_term() {
        let recovered = Recovered { damaged: true, ..Recovered::bootstrap(members(&[1, 2, 3])) };
        let mut r = Replica::new(Config::new(NodeId(2), 1), recovered).unwrap();
        // It learns the term from both other voters first.
        for from in [1, 3] {
            r.handle_message(NodeId(from), Message::TermQueryResponse { term: Term(2) });
        }
        let learned = drain(&mut r);
        persist_all(&mut r, &learned);
        assert_eq!(r.term(), Term(2));
        // A leader of term 2 that does not yet know its commit (0) must not repair us.
        r.handle_message(NodeId(1), append(2, (0, 0), 0, vec![entry(1, 1), entry(2, 2)]));
        let actions = drain(&mut r);
        persist_all(&mut r, &actions);
        r.handle_durable(LogIndex(2), Term(2));
        drain(&mut r);
        assert!(r.is_damaged());
        r.handle_message(NodeId(1), append(2, (2, 2), 2, Vec::new()));
        let actions = drain(&mut r);
        assert!(!r.is_damaged());
        assert!(actions.contains(&Action::Repaired));
    }

    #[test]
    fn propose_refuses_beyond_the_uncommitted_limit() {
        let mut config = Config::new(NodeId(1), 1);
        config.uncommitted_entries_max = 3;
        config.pre_vote = false;
        let mut r = Replica::new(config, Recovered::bootstrap(members(&[1]))).unwrap();
        while r.role() != Role::Leader {
            r.handle_tick();
            let actions = drain(&mut r);
            persist_all(&mut r, &actions);
        }
        // The Noop is uncommitted: two more fit.
        assert!(r.propose(Bytes::from_static(b"a")).is_ok());
        assert!(r.propose(Bytes::from_static(b"b")).is_ok());
        assert_eq!(r.propose(Bytes::from_static(b"c")), Err(ProposeError::Backpressure));
        r.handle_durable(LogIndex(3), r.term());
        assert_eq!(r.commit(), LogIndex(3), "a single voter commits on its own durability");
        assert!(r.propose(Bytes::from_static(b"c")).is_ok());
    }

    #[test]
    fn recovered_state_with_a_term_below_its_log_is_refused() {
        let recovered = Recovered {
            hard_state: HardState { term: Term(1), vote: None },
            last_index: LogIndex(1),
            term_runs: vec![(LogIndex(1), Term(2))],
            ..Recovered::bootstrap(members(&[1]))
        };
        let err = Replica::new(Config::new(NodeId(1), 1), recovered).unwrap_err();
        assert!(matches!(err, ConfigError::HardStateTerm { .. }));
    }

    #[test]
    #[should_panic(expected = "retention past the commit index")]
    fn retention_past_the_commit_index_is_a_bug() {
        let mut r = follower(2);
        r.handle_log_start(LogIndex(5));
    }
}
