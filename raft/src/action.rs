//! What the core asks its driver (the replicator, or the simulator) to do.
//!
//! The driver drains `Replica::poll_action()` after every input and carries the actions out
//! **in order**. Log actions (`AppendEntries`, `TruncateLog`, `ResetLog`) and messages are
//! emitted only once the hard state they were produced under is durable (they wait inside the
//! core until `handle_hard_state_durable`), so entries of a term never reach the disk before
//! that term does. Durability is reported back: `handle_durable` after entries are fdatasynced,
//! `handle_hard_state_durable` after the hard state is, `handle_durable(start - 1, prev_term)`
//! after a `ResetLog` is. The core holds back every message that depends on durable state
//! (vote grants, follower acks) until that report arrives.

use crate::message::{Entry, Membership, Message};
use crate::types::{HardState, LogIndex, NodeId, ReadCtx, Role, Term};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Write the hard state and fdatasync it, then call `handle_hard_state_durable(state)`.
    PersistHardState(HardState),
    /// Remove every entry at or above `from` (an uncommitted suffix that conflicts with the
    /// leader). The removal must be durable before any entry appended after it is reported
    /// durable through `handle_durable`.
    TruncateLog { from: LogIndex },
    /// Append these entries (contiguous, starting at the current last index + 1) to the local
    /// log and fdatasync them; report with `handle_durable(through, term_of_through)`.
    /// A leader's own entries arrive here too: the leader writes its disk in parallel with
    /// replication and counts itself toward the quorum only once durable (thesis §10.2.1).
    AppendEntries { entries: Vec<Entry> },
    /// Throw the local log away and restart it empty so that the next entry is `start`, the
    /// entry before it having `prev_term` (after `Message::InstallLogStart`). Durable before
    /// entries appended after it are reported durable.
    /// `membership` is the membership as of `start - 1`: store it with the new log start so
    /// that recovery can pass it back as `Recovered::membership`.
    ///
    /// Durability report: once the reset is fdatasynced, call `handle_durable(start - 1,
    /// prev_term)`. A `handle_durable` of an entry appended after the reset counts as that
    /// report too (the reset was durable first), so a driver that reports only appends (the
    /// simulator's) is correct as well. Until one of these arrives the follower acks nothing
    /// of its new log (a crash may bring the old log back) and a damaged replica is not
    /// repaired; the leader probes it at its log start so that entries reach it.
    ResetLog { start: LogIndex, prev_term: Term, membership: Membership },
    /// Send this message to `to` as it is.
    Send { to: NodeId, message: Message },
    /// Send `to` a `Message::Append` carrying the entries `from..=through`, read from the local
    /// log (which holds them: written, though maybe not yet durable). The core has already
    /// bounded the range by its per-message limits and accounted it in the follower's window.
    SendEntries {
        to: NodeId,
        term: Term,
        prev_index: LogIndex,
        prev_term: Term,
        commit: LogIndex,
        from: LogIndex,
        through: LogIndex,
    },
    /// Entries up to `through` are committed (durable on a quorum): answer the producers
    /// waiting on them, let readers see them.
    CommitAdvanced { through: LogIndex },
    /// A linearizable read registered with `read_index(ctx)` may be served once the local
    /// commit has reached `index` (ReadIndex, thesis §6.4).
    ReadReady { ctx: ReadCtx, index: LogIndex },
    /// A registered read can no longer be confirmed (leadership lost): fail it or retry it.
    ReadFailed { ctx: ReadCtx },
    /// The replica's role, term or known leader changed.
    RoleChanged { role: Role, term: Term, leader: Option<NodeId> },
    /// This replica was started `damaged` (log or hard state lost or corrupt) and is now
    /// repaired: it holds, durably, the log through a commit index whose entry is of the
    /// current leader's term (hence every entry committed before), and its hard state of that
    /// term is durable. The driver clears its persistent "damaged" mark; from now
    /// on the replica votes and counts toward quorums again.
    Repaired,
    /// Leader only: the learner's durable, matching log reached the leader's commit index. The
    /// driver may now `propose_membership(MembershipChange::Promote(learner))`. Emitted once
    /// per learner per leadership.
    LearnerCaughtUp { learner: NodeId, durable: LogIndex },
    /// The group's membership changed (on append of a membership entry, or on truncation of
    /// one).
    MembershipChanged(Membership),
}
