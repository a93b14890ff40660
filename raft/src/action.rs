//! What the core asks its driver (the replicator, or the simulator) to do.
//!
//! The driver drains `Replica::poll_action()` after every input and carries the actions out
//! **in order**. Durability is reported back: `handle_durable` after entries are fdatasynced,
//! `handle_hard_state_durable` after the hard state is. The core holds back every message that
//! depends on durable state (vote grants, follower acks) until that report arrives.

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
    ResetLog { start: LogIndex, prev_term: Term },
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
    /// The group's membership changed (on append of a membership entry, or on truncation of
    /// one).
    MembershipChanged(Membership),
}
