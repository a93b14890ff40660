//! ringlog-raft: a Raft core with no IO, no clock, no threads and no global randomness.
//!
//! One [`Replica`] per Raft group. It is driven by inputs and answers with actions
//! (quinn-proto style):
//!
//! ```text
//! Replica::new(config, recovered)                 // start from recovered durable state
//! handle_message(from, message)                    // a message from a peer
//! handle_tick()                                    // one logical clock tick
//! handle_durable(through, term)                    // local fdatasync of entries (or of a
//!                                                  // ResetLog: start - 1, prev_term) finished
//! handle_hard_state_durable(state)                 // local fdatasync of the hard state finished
//! propose(payload) -> Result<LogIndex, _>          // leader: append a user batch
//! propose_membership(change) -> Result<LogIndex, _>
//! read_index(ctx) -> Result<(), _>                 // linearizable read (ReadIndex)
//! transfer_leadership(to) -> Result<(), _>
//! handle_unreachable(peer)                         // transport lost the peer: probe it again
//! handle_log_start(start)                          // retention moved the local log start
//! poll_action() -> Option<Action>                  // what to do now; drain after every input
//! ```
//!
//! Observers: `role`, `term`, `leader`, `commit`, `durable`, `last_index`, `log_start`,
//! `membership`, `hard_state`, `is_damaged`, `progress(peer)`, `transfer_target`.
//!
//! Modules: [`replica`] (the state machine), [`log`] (the local log as term runs),
//! [`progress`] (per-follower replication state), [`quorum`], [`config`] (`Config`, limits,
//! `Recovered`) and [`errors`]. The deterministic simulator that drives whole clusters of
//! replicas is the crate `ringlog-sim` (raft/sim/).
//!
//! Architecture invariant: this crate depends on neither `ringlog-engine` nor `ringlog-net`.

#![forbid(unsafe_code)]

pub mod action;
pub mod config;
pub mod errors;
pub mod log;
pub mod message;
pub mod progress;
pub mod quorum;
pub mod replica;
pub mod types;

pub use action::Action;
pub use config::{Config, ConfigError, Recovered};
pub use errors::{MembershipError, ProposeError, ReadIndexError, TransferError};
pub use log::{LogShape, LogShapeError};
pub use message::{AppendResult, Entry, EntryKind, Membership, MembershipChange, Message};
pub use progress::{ProgressState, ProgressView};
pub use replica::Replica;
pub use types::{HardState, LogIndex, NodeId, ReadCtx, Role, Term};
