//! Progress: the leader's view of one follower's replication (Raft §5.3, etcd's Progress).
//!
//! Probe: one Append at a time (paused until answered or the next heartbeat) while the
//! matching point is searched. Replicate: Appends are pipelined ahead of acks, bounded by a
//! window of `inflight_msgs_max` messages and `inflight_bytes_max` bytes. InstallLogStart: the
//! follower needs entries older than the leader's log start and was told to restart its log.
//!
//! Invariants: `match_index < next_index`; `inflight` ranges ascend and end below
//! `next_index`; `inflight_bytes` is the sum of the in-flight byte accounts.

use std::collections::VecDeque;

use crate::types::LogIndex;

/// How the leader sends to a follower.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ProgressState {
    /// Searching the matching point: one Append at a time.
    Probe,
    /// Pipelining Appends within the window.
    Replicate,
    /// An `InstallLogStart` was sent; waiting for its answer.
    InstallLogStart,
}

/// A read-only snapshot of a follower's progress, for observers and metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ProgressView {
    pub state: ProgressState,
    /// Highest index acknowledged durable and matching on the follower.
    pub match_index: LogIndex,
    /// Next index to send.
    pub next_index: LogIndex,
    pub inflight_msgs: usize,
    pub inflight_bytes: u64,
    /// The follower reported itself damaged (it counts toward no quorum).
    pub damaged: bool,
    /// The follower answered within the current CheckQuorum period.
    pub recent_active: bool,
}

#[derive(Clone, Debug)]
pub(crate) struct Progress {
    pub state: ProgressState,
    pub match_index: LogIndex,
    pub next_index: LogIndex,
    /// Probe / InstallLogStart: a message is outstanding; send nothing until answered or the
    /// next heartbeat.
    pub paused: bool,
    /// `(last index of the message, bytes accounted)` per Append in flight.
    pub inflight: VecDeque<(LogIndex, u64)>,
    pub inflight_bytes: u64,
    pub recent_active: bool,
    pub damaged: bool,
    /// While `damaged`: the commit index the leader tells this follower (in Appends) instead
    /// of its moving commit, fixed at the leader's commit (of its own term) when it learned of
    /// the damage. The follower is repaired once it holds through it; a target that moved
    /// with every Append could never be reached by a follower catching up under load (the
    /// faster follower drives the commit). Every entry committed with an ack the follower
    /// gave before it lost state was counted before its first damaged ack reached the leader,
    /// so it is at or below this index.
    pub repair_target: Option<LogIndex>,
    /// Ticks since `match_index` last advanced while messages were in flight.
    pub stalled_ticks: u32,
    /// `Action::LearnerCaughtUp` was emitted for this learner in this leadership.
    pub caught_up_reported: bool,
}

impl Progress {
    pub fn new(next_index: LogIndex) -> Progress {
        Progress {
            state: ProgressState::Probe,
            match_index: LogIndex(0),
            next_index,
            paused: false,
            inflight: VecDeque::new(),
            inflight_bytes: 0,
            recent_active: false,
            damaged: false,
            repair_target: None,
            stalled_ticks: 0,
            caught_up_reported: false,
        }
    }

    pub fn view(&self) -> ProgressView {
        ProgressView {
            state: self.state,
            match_index: self.match_index,
            next_index: self.next_index,
            inflight_msgs: self.inflight.len(),
            inflight_bytes: self.inflight_bytes,
            damaged: self.damaged,
            recent_active: self.recent_active,
        }
    }

    /// Can another Append go out now?
    pub fn is_paused(&self, inflight_msgs_max: usize, inflight_bytes_max: u64) -> bool {
        match self.state {
            ProgressState::Probe | ProgressState::InstallLogStart => self.paused,
            ProgressState::Replicate => {
                self.inflight.len() >= inflight_msgs_max
                    || self.inflight_bytes >= inflight_bytes_max
            }
        }
    }

    /// Back to probing from just after the match point.
    pub fn become_probe(&mut self) {
        self.state = ProgressState::Probe;
        self.next_index = self.match_index.next();
        self.paused = false;
        self.clear_inflight();
    }

    pub fn become_replicate(&mut self) {
        self.state = ProgressState::Replicate;
        self.next_index = self.match_index.next();
        self.paused = false;
        self.clear_inflight();
    }

    pub fn clear_inflight(&mut self) {
        self.inflight.clear();
        self.inflight_bytes = 0;
        self.stalled_ticks = 0;
    }

    /// Records an Append of `through` accounted at `bytes` (Replicate only).
    pub fn push_inflight(&mut self, through: LogIndex, bytes: u64) {
        self.inflight.push_back((through, bytes));
        self.inflight_bytes += bytes;
        self.next_index = through.next();
    }

    /// Frees every in-flight message wholly acknowledged by `durable`.
    pub fn free_inflight_through(&mut self, durable: LogIndex) {
        while let Some(&(through, bytes)) = self.inflight.front() {
            if through > durable {
                break;
            }
            self.inflight.pop_front();
            self.inflight_bytes -= bytes;
        }
    }

    /// Raises the match point; true if it moved.
    pub fn advance_match(&mut self, durable: LogIndex) -> bool {
        if durable <= self.match_index {
            return false;
        }
        self.match_index = durable;
        if self.next_index <= durable {
            self.next_index = durable.next();
        }
        self.stalled_ticks = 0;
        true
    }
}
