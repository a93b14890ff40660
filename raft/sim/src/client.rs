//! Simulated client: proposes unique payloads to whoever it believes leads, and records which
//! proposals were acknowledged.
//!
//! A proposal accepted by node `n` at `index` in `term` is acknowledged when that same
//! replica, in the same incarnation (no restart in between) and still in `term`, reports
//! `CommitAdvanced` covering `index` — exactly when a producer with acks=quorum would be
//! answered. A proposal whose leader lost its term or restarted first is abandoned: it may or
//! may not commit, and the checks do not depend on it. Payloads are never re-proposed, so each
//! is unique and "exactly once" is checkable.
//!
//! Linearizable reads: a `read_index` request records the highest acknowledged index at the
//! time it was issued; the index its `ReadReady` carries must not be below it.
//!
//! Invariants: at most `PENDING_MAX` proposals and `READS_MAX` reads are tracked.

use std::collections::BTreeMap;

use bytes::Bytes;

use ringlog_raft::types::{LogIndex, NodeId, ReadCtx, Term};

/// Bound on proposals awaiting their ack.
pub const PENDING_MAX: usize = 10_000;
/// Bound on reads awaiting `ReadReady` / `ReadFailed`.
pub const READS_MAX: usize = 1_000;

/// A proposal a leader accepted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pending {
    pub node: NodeId,
    pub incarnation: u64,
    pub term: Term,
    pub index: LogIndex,
    pub payload: Bytes,
    pub step: u64,
}

/// An acknowledged proposal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Acked {
    pub index: LogIndex,
    pub payload: Bytes,
    pub proposed_step: u64,
    pub acked_step: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct PendingRead {
    node: NodeId,
    acked_index_at_issue: LogIndex,
}

/// Counters for the run summary.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClientStats {
    pub proposed: u64,
    pub accepted: u64,
    pub refused: u64,
    pub abandoned: u64,
    pub reads_ready: u64,
    pub reads_failed: u64,
}

/// The simulated client of one run.
#[derive(Debug, Default)]
pub struct SimClient {
    run_tag: u64,
    next_id: u64,
    next_ctx: u64,
    /// Who the client believes leads.
    pub leader_hint: Option<NodeId>,
    pending: Vec<Pending>,
    acked: Vec<Acked>,
    highest_acked: LogIndex,
    reads: BTreeMap<u64, PendingRead>,
    pub stats: ClientStats,
}

impl SimClient {
    /// `run_tag` goes into every payload (so payloads of different seeds differ too).
    pub fn new(run_tag: u64) -> SimClient {
        SimClient { run_tag, ..SimClient::default() }
    }

    /// A fresh, unique payload.
    pub fn next_payload(&mut self) -> Bytes {
        self.next_id += 1;
        self.stats.proposed += 1;
        Bytes::from(format!("s{}-p{}", self.run_tag, self.next_id))
    }

    /// Whether another proposal may be tracked.
    pub fn can_propose(&self) -> bool {
        self.pending.len() < PENDING_MAX
    }

    pub fn on_accepted(&mut self, pending: Pending) {
        self.stats.accepted += 1;
        self.pending.push(pending);
    }

    pub fn on_refused(&mut self, leader_hint: Option<NodeId>) {
        self.stats.refused += 1;
        self.leader_hint = leader_hint;
    }

    /// `node` (in `incarnation`, at `term`) committed through `through`: returns the proposals
    /// acknowledged now, and drops those that can no longer be acknowledged.
    pub fn on_commit(
        &mut self,
        step: u64,
        node: NodeId,
        incarnation: u64,
        term: Term,
        through: LogIndex,
    ) -> Vec<Acked> {
        let mut now_acked = Vec::new();
        let mut abandoned = 0;
        self.pending.retain(|p| {
            if p.node != node {
                return true;
            }
            if p.incarnation != incarnation || p.term != term {
                abandoned += 1;
                return false;
            }
            if p.index <= through {
                now_acked.push(Acked {
                    index: p.index,
                    payload: p.payload.clone(),
                    proposed_step: p.step,
                    acked_step: step,
                });
                return false;
            }
            true
        });
        self.stats.abandoned += abandoned;
        for a in &now_acked {
            self.highest_acked = self.highest_acked.max(a.index);
        }
        self.acked.extend(now_acked.iter().cloned());
        now_acked
    }

    /// `node` is now in `incarnation` at `term`: proposals it accepted earlier can no longer
    /// be acknowledged by it.
    pub fn on_node_changed(&mut self, node: NodeId, incarnation: u64, term: Term) {
        let before = self.pending.len();
        self.pending.retain(|p| p.node != node || (p.incarnation == incarnation && p.term == term));
        self.stats.abandoned += (before - self.pending.len()) as u64;
    }

    /// Every acknowledged proposal so far.
    pub fn acked(&self) -> &[Acked] {
        &self.acked
    }

    /// Whether a proposal made at or after `step` has been acknowledged.
    pub fn acked_since(&self, step: u64) -> bool {
        self.acked.iter().rev().any(|a| a.proposed_step >= step)
    }

    /// A new read context for `node`, or `None` if too many reads are outstanding.
    pub fn begin_read(&mut self, node: NodeId) -> Option<ReadCtx> {
        if self.reads.len() >= READS_MAX {
            return None;
        }
        self.next_ctx += 1;
        let read = PendingRead { node, acked_index_at_issue: self.highest_acked };
        self.reads.insert(self.next_ctx, read);
        Some(ReadCtx(self.next_ctx))
    }

    /// The read was refused at once.
    pub fn cancel_read(&mut self, ctx: ReadCtx) {
        self.reads.remove(&ctx.0);
    }

    /// `node` says read `ctx` may be served at `index`: returns the lowest index a
    /// linearizable read issued then may be served at, if `index` is below it.
    pub fn on_read_ready(
        &mut self,
        node: NodeId,
        ctx: ReadCtx,
        index: LogIndex,
    ) -> Result<(), String> {
        self.stats.reads_ready += 1;
        match self.reads.remove(&ctx.0) {
            None => Err(format!("{node} reports read {ctx:?} ready, which is unknown or done")),
            Some(r) if r.node != node => {
                Err(format!("{node} reports read {ctx:?} ready, which was issued to {}", r.node))
            }
            Some(r) if index < r.acked_index_at_issue => Err(format!(
                "stale read: {node} serves read {ctx:?} at {index}, but {} was acknowledged \
                 before the read was issued",
                r.acked_index_at_issue
            )),
            Some(_) => Ok(()),
        }
    }

    pub fn on_read_failed(&mut self, ctx: ReadCtx) {
        self.stats.reads_failed += 1;
        self.reads.remove(&ctx.0);
    }

    /// Reads issued to `node` die with it (a restarted replica forgets them).
    pub fn on_node_restarted(&mut self, node: NodeId) {
        self.reads.retain(|_, r| r.node != node);
    }
}
