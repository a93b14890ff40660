//! Safety checks of a simulated run, fed by the node drivers as actions are carried out.
//!
//! Everything is checked incrementally, at the moment the fact appears, so a violation is
//! reported at the step that caused it:
//! - **election safety**: at most one node becomes leader in a term (every `RoleChanged`);
//! - **log matching**: every entry any replica ever appends is recorded by `(index, term)`
//!   with its kind, payload and the term of the entry before it; a second entry with the same
//!   `(index, term)` must agree on all three. By induction this makes equal `(index, term)`
//!   imply equal prefixes, across all replicas and all times;
//! - **committed entries never change and agree everywhere**: the committed log is recorded
//!   as first observed (from the log of the first replica that commits each index); every
//!   later commit on any replica must find the same entry in its log, a replica never
//!   truncates at or below its own commit, and its commit never goes backwards;
//! - **acknowledged proposals are committed exactly once**: when the client gets an ack, the
//!   committed log must hold the proposal at the acked index; a user payload (unique per
//!   proposal) may appear in the committed log only once.
//!
//! Invariants: the recorded committed log only grows; facts are never forgotten.

use std::collections::HashMap;

use bytes::Bytes;

use ringlog_raft::message::{Entry, EntryKind};
use ringlog_raft::types::{LogIndex, NodeId, Term};

/// A broken safety or liveness property, with the step where it was seen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    pub step: u64,
    pub what: String,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "step {}: {}", self.step, self.what)
    }
}

/// One entry as first seen, for log matching.
#[derive(Clone, Debug)]
struct SeenEntry {
    kind: EntryKind,
    payload: Bytes,
    prev_term: Term,
    first_node: NodeId,
}

/// Counters for the run summary.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CheckerStats {
    pub leaders_elected: u64,
    pub highest_term: u64,
    pub committed_len: u64,
    pub acked: u64,
    /// Entries returned by reads (and removed by retention) compared with the committed log.
    pub read_entries_checked: u64,
}

/// The safety checker of one run.
#[derive(Debug, Default)]
pub struct Checker {
    leaders: HashMap<Term, NodeId>,
    seen: HashMap<(LogIndex, Term), SeenEntry>,
    /// `committed[i - 1]` is the entry committed at index `i`, as first observed.
    committed: Vec<Entry>,
    /// Where each committed user payload sits (unique payloads: exactly-once).
    committed_payloads: HashMap<Bytes, LogIndex>,
    pub stats: CheckerStats,
}

pub type CheckResult = Result<(), Violation>;

fn violation(step: u64, what: String) -> CheckResult {
    Err(Violation { step, what })
}

impl Checker {
    pub fn new() -> Checker {
        Checker::default()
    }

    /// The committed log as first observed.
    pub fn committed(&self) -> &[Entry] {
        &self.committed
    }

    /// `node` announced itself leader of `term`.
    pub fn on_leader(&mut self, step: u64, node: NodeId, term: Term) -> CheckResult {
        self.stats.highest_term = self.stats.highest_term.max(term.0);
        match self.leaders.get(&term) {
            Some(other) if *other != node => violation(
                step,
                format!("election safety: {node} and {other} are both leader of term {term}"),
            ),
            Some(_) => Ok(()),
            None => {
                self.leaders.insert(term, node);
                self.stats.leaders_elected += 1;
                Ok(())
            }
        }
    }

    /// `node` appends `entry`, the entry before it in its log having `prev_term`.
    pub fn on_append(
        &mut self,
        step: u64,
        node: NodeId,
        entry: &Entry,
        prev_term: Term,
    ) -> CheckResult {
        if entry.term < prev_term {
            return violation(
                step,
                format!(
                    "{node} appends {} of term {} after term {prev_term}",
                    entry.index, entry.term
                ),
            );
        }
        let key = (entry.index, entry.term);
        match self.seen.get(&key) {
            None => {
                self.seen.insert(
                    key,
                    SeenEntry {
                        kind: entry.kind.clone(),
                        payload: entry.payload.clone(),
                        prev_term,
                        first_node: node,
                    },
                );
                Ok(())
            }
            Some(seen) => {
                if seen.kind != entry.kind || seen.payload != entry.payload {
                    violation(
                        step,
                        format!(
                            "log matching: {node} holds a different entry at {}/{} than {} \
                             ({:?} {:?} vs {:?} {:?})",
                            entry.index,
                            entry.term,
                            seen.first_node,
                            entry.kind,
                            entry.payload,
                            seen.kind,
                            seen.payload
                        ),
                    )
                } else if seen.prev_term != prev_term {
                    violation(
                        step,
                        format!(
                            "log matching: {node} holds {}/{} after an entry of term {prev_term}, \
                             {} after one of term {}",
                            entry.index, entry.term, seen.first_node, seen.prev_term
                        ),
                    )
                } else {
                    Ok(())
                }
            }
        }
    }

    /// `node` commits `index`, holding `entry` there (`None`: the index is below the node's
    /// log start, so it cannot be compared).
    pub fn on_commit(
        &mut self,
        step: u64,
        node: NodeId,
        index: LogIndex,
        entry: Option<&Entry>,
    ) -> CheckResult {
        let Some(entry) = entry else {
            return Ok(());
        };
        let pos = (index.0 - 1) as usize;
        if let Some(committed) = self.committed.get(pos) {
            if committed.term != entry.term
                || committed.kind != entry.kind
                || committed.payload != entry.payload
            {
                return violation(
                    step,
                    format!(
                        "committed entry changed: {node} commits {index} of term {} ({:?}) but \
                         {index} of term {} ({:?}) was committed before",
                        entry.term, entry.payload, committed.term, committed.payload
                    ),
                );
            }
            return Ok(());
        }
        if pos != self.committed.len() {
            // The node commits past the recorded log's end but the gap is below its log start
            // (it reset its log): the gap is recorded from another replica later. Keep the
            // record dense: compare-only until the gap is filled.
            return Ok(());
        }
        if entry.kind == EntryKind::Normal {
            if let Some(other) = self.committed_payloads.insert(entry.payload.clone(), index) {
                return violation(
                    step,
                    format!(
                        "exactly once: payload {:?} committed at {other} and {index}",
                        entry.payload
                    ),
                );
            }
        }
        self.committed.push(entry.clone());
        self.stats.committed_len = self.committed.len() as u64;
        Ok(())
    }

    /// `node` removes its entries from `from` on, its commit being `commit`.
    pub fn on_truncate(
        &mut self,
        step: u64,
        node: NodeId,
        from: LogIndex,
        commit: LogIndex,
    ) -> CheckResult {
        if from <= commit {
            return violation(
                step,
                format!("{node} truncates its log from {from}, at or below its commit {commit}"),
            );
        }
        Ok(())
    }

    /// `node` restarts its log at `start` after an entry of `prev_term`.
    pub fn on_reset(
        &mut self,
        step: u64,
        node: NodeId,
        start: LogIndex,
        prev_term: Term,
    ) -> CheckResult {
        let before = start.0.saturating_sub(1);
        if before == 0 {
            return Ok(());
        }
        match self.committed.get((before - 1) as usize) {
            Some(e) if e.term != prev_term => violation(
                step,
                format!(
                    "{node} resets its log to start at {start} after term {prev_term}, but \
                     i{before} was committed in term {}",
                    e.term
                ),
            ),
            _ => Ok(()),
        }
    }

    /// `node` returned `entry` to a reader as committed at `index` (or removed it by
    /// retention as committed): it must be the committed entry there, byte for byte. An index
    /// the record has not reached yet (a replica that reset its log past a gap) is not
    /// compared.
    pub fn on_read(
        &mut self,
        step: u64,
        node: NodeId,
        index: LogIndex,
        entry: &Entry,
    ) -> CheckResult {
        let Some(committed) = self.committed.get((index.0 - 1) as usize) else {
            return Ok(());
        };
        self.stats.read_entries_checked += 1;
        if committed != entry {
            return violation(
                step,
                format!(
                    "{node} returns {index} of term {} ({:?} {:?}) as committed, but {index} of \
                     term {} ({:?} {:?}) is",
                    entry.term,
                    entry.kind,
                    entry.payload,
                    committed.term,
                    committed.kind,
                    committed.payload
                ),
            );
        }
        Ok(())
    }

    /// The client was told that `payload` is committed at `index`.
    pub fn on_ack(&mut self, step: u64, index: LogIndex, payload: &Bytes) -> CheckResult {
        self.stats.acked += 1;
        match self.committed.get((index.0 - 1) as usize) {
            Some(e) if e.payload == *payload && e.kind == EntryKind::Normal => Ok(()),
            Some(e) => violation(
                step,
                format!(
                    "acked proposal {payload:?} at {index}, but {:?} is committed there",
                    e.payload
                ),
            ),
            None => violation(
                step,
                format!("acked proposal {payload:?} at {index}, beyond the committed log"),
            ),
        }
    }

    /// End of run: every acknowledged payload is in the committed log, exactly once, where it
    /// was acknowledged.
    pub fn check_acked(&self, step: u64, acked: &[(LogIndex, Bytes)]) -> CheckResult {
        for (index, payload) in acked {
            match self.committed_payloads.get(payload) {
                Some(at) if at == index => {}
                Some(at) => {
                    return violation(
                        step,
                        format!("acked {payload:?} at {index} committed at {at}"),
                    )
                }
                None => {
                    return violation(
                        step,
                        format!("acked {payload:?} at {index} is not committed"),
                    )
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(index: u64, term: u64, payload: &'static str) -> Entry {
        Entry {
            term: Term(term),
            index: LogIndex(index),
            kind: EntryKind::Normal,
            payload: Bytes::from_static(payload.as_bytes()),
        }
    }

    #[test]
    fn two_leaders_in_one_term_is_a_violation() {
        let mut c = Checker::new();
        c.on_leader(1, NodeId(1), Term(2)).unwrap();
        c.on_leader(2, NodeId(1), Term(2)).unwrap();
        assert!(c.on_leader(3, NodeId(2), Term(2)).is_err());
    }

    #[test]
    fn same_index_and_term_with_different_payload_or_prefix_is_a_violation() {
        let mut c = Checker::new();
        c.on_append(1, NodeId(1), &entry(1, 1, "a"), Term(0)).unwrap();
        c.on_append(1, NodeId(2), &entry(1, 1, "a"), Term(0)).unwrap();
        assert!(c.on_append(1, NodeId(3), &entry(1, 1, "b"), Term(0)).is_err());
        c.on_append(1, NodeId(1), &entry(2, 2, "c"), Term(1)).unwrap();
        assert!(c.on_append(1, NodeId(2), &entry(2, 2, "c"), Term(0)).is_err());
    }

    #[test]
    fn committed_entry_that_changes_is_a_violation() {
        let mut c = Checker::new();
        c.on_commit(1, NodeId(1), LogIndex(1), Some(&entry(1, 1, "a"))).unwrap();
        c.on_commit(2, NodeId(2), LogIndex(1), Some(&entry(1, 1, "a"))).unwrap();
        assert!(c.on_commit(3, NodeId(3), LogIndex(1), Some(&entry(1, 2, "x"))).is_err());
    }

    #[test]
    fn payload_committed_twice_is_a_violation() {
        let mut c = Checker::new();
        c.on_commit(1, NodeId(1), LogIndex(1), Some(&entry(1, 1, "a"))).unwrap();
        assert!(c.on_commit(1, NodeId(1), LogIndex(2), Some(&entry(2, 1, "a"))).is_err());
    }

    #[test]
    fn ack_of_an_entry_not_committed_at_its_index_is_a_violation() {
        let mut c = Checker::new();
        c.on_commit(1, NodeId(1), LogIndex(1), Some(&entry(1, 1, "a"))).unwrap();
        c.on_ack(1, LogIndex(1), &Bytes::from_static(b"a")).unwrap();
        assert!(c.on_ack(1, LogIndex(1), &Bytes::from_static(b"b")).is_err());
        assert!(c.on_ack(1, LogIndex(2), &Bytes::from_static(b"a")).is_err());
    }

    #[test]
    fn a_read_returning_other_bytes_than_the_committed_ones_is_a_violation() {
        let mut c = Checker::new();
        c.on_commit(1, NodeId(1), LogIndex(1), Some(&entry(1, 1, "a"))).unwrap();
        c.on_read(2, NodeId(2), LogIndex(1), &entry(1, 1, "a")).unwrap();
        assert!(c.on_read(2, NodeId(2), LogIndex(1), &entry(1, 1, "b")).is_err());
        assert!(c.on_read(2, NodeId(2), LogIndex(1), &entry(1, 2, "a")).is_err());
        assert_eq!(c.stats.read_entries_checked, 3);
    }

    #[test]
    fn truncating_at_or_below_commit_is_a_violation() {
        let mut c = Checker::new();
        assert!(c.on_truncate(1, NodeId(1), LogIndex(3), LogIndex(3)).is_err());
        c.on_truncate(1, NodeId(1), LogIndex(4), LogIndex(3)).unwrap();
    }
}
