//! Config and Recovered: what a `Replica` is started from.
//!
//! `Config` holds the tunables and limits (every window and queue of the core has a named
//! bound here); `Recovered` the durable state the driver found on disk.
//!
//! Invariants (checked by `Config::validate`): `heartbeat_ticks < election_ticks`; every limit
//! is at least 1.

use crate::log::{LogShape, LogShapeError};
use crate::message::Membership;
use crate::types::{HardState, LogIndex, NodeId, Term};

/// Default election timeout in ticks (randomized in `[election_ticks, 2 * election_ticks)`).
pub const ELECTION_TICKS_DEFAULT: u32 = 10;
/// Default heartbeat interval in ticks.
pub const HEARTBEAT_TICKS_DEFAULT: u32 = 2;
/// Default per-follower window: Append messages in flight.
pub const INFLIGHT_MSGS_MAX_DEFAULT: usize = 64;
/// Default per-follower window: payload bytes in flight.
pub const INFLIGHT_BYTES_MAX_DEFAULT: u64 = 32 << 20;
/// Default entries per Append message.
pub const APPEND_ENTRIES_MAX_DEFAULT: u64 = 64;
/// Default payload bytes per Append message (at least one entry is always sent).
pub const APPEND_BYTES_MAX_DEFAULT: u64 = 1 << 20;
/// Default bound on the leader's uncommitted entries (proposals beyond it get Backpressure).
pub const UNCOMMITTED_ENTRIES_MAX_DEFAULT: u64 = 4096;
/// Default bound on the leader's uncommitted payload bytes.
pub const UNCOMMITTED_BYTES_MAX_DEFAULT: u64 = 64 << 20;
/// Default bound on ReadIndex requests waiting for confirmation.
pub const READS_PENDING_MAX_DEFAULT: usize = 4096;
/// Default bound on one entry's payload.
pub const ENTRY_BYTES_MAX_DEFAULT: u64 = 8 << 20;
/// Entry sizes the leader remembers for byte accounting of in-flight ranges; older ranges are
/// accounted at `append_bytes_max` per message.
pub const ENTRY_SIZES_TRACKED_MAX: usize = 1 << 16;

/// Tunables and limits of one replica.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// This replica's node.
    pub id: NodeId,
    /// Election timeout in ticks: a follower that hears no leader for a random duration in
    /// `[election_ticks, 2 * election_ticks)` campaigns; a CheckQuorum leader checks its
    /// quorum every `election_ticks`; a leadership transfer aborts after it.
    pub election_ticks: u32,
    /// A leader sends heartbeats every `heartbeat_ticks`.
    pub heartbeat_ticks: u32,
    /// Per-follower window: Append messages in flight (pipelining).
    pub inflight_msgs_max: usize,
    /// Per-follower window: payload bytes in flight.
    pub inflight_bytes_max: u64,
    /// Entries per Append message.
    pub append_entries_max: u64,
    /// Payload bytes per Append message (one entry is always allowed).
    pub append_bytes_max: u64,
    /// Leader: uncommitted entries beyond which `propose` answers Backpressure.
    pub uncommitted_entries_max: u64,
    /// Leader: uncommitted payload bytes beyond which `propose` answers Backpressure.
    pub uncommitted_bytes_max: u64,
    /// Leader: ReadIndex requests waiting for confirmation.
    pub reads_pending_max: usize,
    /// Largest payload `propose` accepts.
    pub entry_bytes_max: u64,
    /// CheckQuorum: a leader that heard from no quorum within an election timeout steps down;
    /// followers that hear a leader ignore vote requests meanwhile (leader lease).
    pub check_quorum: bool,
    /// PreVote (thesis §9.6): ask whether an election could be won before raising the term.
    pub pre_vote: bool,
    /// Seed of this replica's own RNG (election timeouts). No global randomness is used.
    pub seed: u64,
}

/// Why a `Config` or `Recovered` was refused by `Replica::new`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    #[error(
        "heartbeat_ticks ({heartbeat}) must be at least 1 and below election_ticks ({election})"
    )]
    Ticks { heartbeat: u32, election: u32 },
    #[error("limit {name} must be at least 1")]
    LimitZero { name: &'static str },
    #[error("recovered log shape: {0}")]
    Log(#[from] LogShapeError),
    #[error("recovered membership entries must ascend and lie within the log")]
    MembershipEntries,
    #[error("recovered commit {commit} lies outside log start - 1 ..= last index")]
    Commit { commit: LogIndex },
    #[error("recovered hard state term {term} is below the last entry's term {last_term}")]
    HardStateTerm { term: Term, last_term: Term },
}

impl Config {
    /// A config with the default limits for node `id`.
    pub fn new(id: NodeId, seed: u64) -> Config {
        Config {
            id,
            election_ticks: ELECTION_TICKS_DEFAULT,
            heartbeat_ticks: HEARTBEAT_TICKS_DEFAULT,
            inflight_msgs_max: INFLIGHT_MSGS_MAX_DEFAULT,
            inflight_bytes_max: INFLIGHT_BYTES_MAX_DEFAULT,
            append_entries_max: APPEND_ENTRIES_MAX_DEFAULT,
            append_bytes_max: APPEND_BYTES_MAX_DEFAULT,
            uncommitted_entries_max: UNCOMMITTED_ENTRIES_MAX_DEFAULT,
            uncommitted_bytes_max: UNCOMMITTED_BYTES_MAX_DEFAULT,
            reads_pending_max: READS_PENDING_MAX_DEFAULT,
            entry_bytes_max: ENTRY_BYTES_MAX_DEFAULT,
            check_quorum: true,
            pre_vote: true,
            seed,
        }
    }

    /// Checks the relations between the tunables.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.heartbeat_ticks == 0 || self.heartbeat_ticks >= self.election_ticks {
            return Err(ConfigError::Ticks {
                heartbeat: self.heartbeat_ticks,
                election: self.election_ticks,
            });
        }
        let limits: [(&'static str, u64); 8] = [
            ("inflight_msgs_max", self.inflight_msgs_max as u64),
            ("inflight_bytes_max", self.inflight_bytes_max),
            ("append_entries_max", self.append_entries_max),
            ("append_bytes_max", self.append_bytes_max),
            ("uncommitted_entries_max", self.uncommitted_entries_max),
            ("uncommitted_bytes_max", self.uncommitted_bytes_max),
            ("reads_pending_max", self.reads_pending_max as u64),
            ("entry_bytes_max", self.entry_bytes_max),
        ];
        for (name, value) in limits {
            if value == 0 {
                return Err(ConfigError::LimitZero { name });
            }
        }
        Ok(())
    }
}

/// The durable state the driver recovered from disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Recovered {
    /// The last hard state reported durable.
    pub hard_state: HardState,
    /// First index held by the local log (`last_index + 1` if it holds nothing).
    pub log_start: LogIndex,
    /// Term of the entry at `log_start - 1` (`Term(0)` if `log_start == 1`).
    pub prev_term: Term,
    /// Last index in the local log (all of it durable: recovery drops an unsynced tail).
    pub last_index: LogIndex,
    /// Term-change points: `(first index, term)` of each term run in `log_start..=last_index`,
    /// ascending, the first at `log_start`. Empty iff the log holds no entry.
    pub term_runs: Vec<(LogIndex, Term)>,
    /// Membership in effect before the first of `membership_entries` (the bootstrap
    /// membership, or the last one known committed).
    pub membership: Membership,
    /// Every membership entry of the log that may not be committed yet, ascending by index
    /// (the latest is the membership in effect: changes apply on append, thesis §4.1).
    pub membership_entries: Vec<(LogIndex, Membership)>,
    /// Highest index the driver knows committed (at least `log_start - 1`; entries below the
    /// log start are committed by construction). `LogIndex(0)` means "only what the log start
    /// implies".
    pub commit: LogIndex,
    /// The log or the hard state is known lost or corrupt (wiped disk, corruption in the middle
    /// of the log): the replica refuses to vote and counts toward no quorum until repaired.
    pub damaged: bool,
}

impl Recovered {
    /// A brand-new replica of a group whose first membership is `membership`.
    pub fn bootstrap(membership: Membership) -> Recovered {
        Recovered {
            hard_state: HardState::default(),
            log_start: LogIndex(1),
            prev_term: Term(0),
            last_index: LogIndex(0),
            term_runs: Vec::new(),
            membership,
            membership_entries: Vec::new(),
            commit: LogIndex(0),
            damaged: false,
        }
    }

    /// A node joining an existing group (it learns the membership from the leader's log, or
    /// is added as a learner); also what a wiped disk recovers as, with `damaged` set.
    pub fn joining() -> Recovered {
        Recovered::bootstrap(Membership::default())
    }

    pub(crate) fn log_shape(&self) -> Result<LogShape, ConfigError> {
        let shape = LogShape::from_parts(
            self.log_start,
            self.prev_term,
            self.last_index,
            self.term_runs.clone(),
        )?;
        if self.hard_state.term < shape.last_term() {
            return Err(ConfigError::HardStateTerm {
                term: self.hard_state.term,
                last_term: shape.last_term(),
            });
        }
        let mut prev = LogIndex(0);
        for &(index, _) in &self.membership_entries {
            if index <= prev || index < shape.start() || index > shape.last() {
                return Err(ConfigError::MembershipEntries);
            }
            prev = index;
        }
        if self.commit > shape.last() {
            return Err(ConfigError::Commit { commit: self.commit });
        }
        Ok(shape)
    }
}
