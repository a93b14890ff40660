//! LogShape: the core's picture of the local log as compact term runs, never entries.
//!
//! The driver stores the entries; the core only needs each index's term (for log matching,
//! elections and conflict hints). A run `(first, term)` says every index from `first` up to the
//! next run's first (or `last`) has `term`. Payloads are never kept here.
//!
//! Invariants: `start >= 1`; `start - 1 <= last`; runs are empty iff `last < start`; the first
//! run begins at `start`; runs strictly increase in both first index and term; every run's
//! term is `>= prev_term`.

use crate::types::{LogIndex, Term};

/// The shape of a log: which indexes it holds and each one's term.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogShape {
    /// First index held (`last + 1` when the log holds nothing).
    start: LogIndex,
    /// Term of the entry at `start - 1` (`Term(0)` when `start == 1`).
    prev_term: Term,
    /// Last index held (`start - 1` when empty).
    last: LogIndex,
    /// `(first index, term)` per term run, ascending.
    runs: Vec<(LogIndex, Term)>,
}

/// Why a recovered log shape was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LogShapeError {
    #[error("log start {start} must be at least 1 and at most last index + 1 ({last})")]
    StartOutOfRange { start: LogIndex, last: LogIndex },
    #[error("term runs must start at the log start, ascend strictly and stay within the log")]
    RunsMalformed,
    #[error("a non-empty log needs term runs, an empty one none")]
    RunsMissing,
}

impl LogShape {
    /// An empty log whose next entry is `start`, the entry before having `prev_term`.
    pub fn empty(start: LogIndex, prev_term: Term) -> LogShape {
        assert!(start.0 >= 1, "log start must be >= 1");
        LogShape { start, prev_term, last: start.prev(), runs: Vec::new() }
    }

    /// A log shape from recovered parts, validated.
    pub fn from_parts(
        start: LogIndex,
        prev_term: Term,
        last: LogIndex,
        runs: Vec<(LogIndex, Term)>,
    ) -> Result<LogShape, LogShapeError> {
        if start.0 == 0 || start.0 > last.0 + 1 {
            return Err(LogShapeError::StartOutOfRange { start, last });
        }
        let empty = last.0 + 1 == start.0;
        if empty != runs.is_empty() {
            return Err(LogShapeError::RunsMissing);
        }
        if let Some(&(first, _)) = runs.first() {
            if first != start {
                return Err(LogShapeError::RunsMalformed);
            }
        }
        let mut prev: Option<(LogIndex, Term)> = None;
        for &(first, term) in &runs {
            let ascending = match prev {
                Some((pf, pt)) => first > pf && term > pt,
                None => term >= prev_term,
            };
            if !ascending || first > last {
                return Err(LogShapeError::RunsMalformed);
            }
            prev = Some((first, term));
        }
        Ok(LogShape { start, prev_term, last, runs })
    }

    pub fn start(&self) -> LogIndex {
        self.start
    }

    pub fn prev_term(&self) -> Term {
        self.prev_term
    }

    pub fn last(&self) -> LogIndex {
        self.last
    }

    /// Term of the last entry (or of `start - 1` when empty).
    pub fn last_term(&self) -> Term {
        self.runs.last().map_or(self.prev_term, |&(_, t)| t)
    }

    /// Number of term runs held (bounded by the number of terms in the retained log).
    pub fn run_count(&self) -> usize {
        self.runs.len()
    }

    /// The term runs `(first index, term)`, ascending.
    pub fn runs(&self) -> &[(LogIndex, Term)] {
        &self.runs
    }

    /// The term at `index`, if known: `start - 1 ..= last`.
    pub fn term_at(&self, index: LogIndex) -> Option<Term> {
        if index.0 + 1 == self.start.0 {
            return Some(self.prev_term);
        }
        if index < self.start || index > self.last {
            return None;
        }
        let pos = self.runs.partition_point(|&(first, _)| first <= index);
        Some(self.runs[pos - 1].1)
    }

    /// True if the entry at `index` is known to have `term`.
    pub fn matches(&self, index: LogIndex, term: Term) -> bool {
        self.term_at(index) == Some(term)
    }

    /// The largest index `<= index` (clamped to `last`) whose term is `<= term`, or `start - 1`
    /// if none is known (etcd's `findConflictByTerm`, used for fast back-off on both sides).
    pub fn find_conflict_by_term(&self, index: LogIndex, term: Term) -> LogIndex {
        let index = index.min(self.last);
        if index < self.start {
            return LogIndex(index.0.min(self.start.0 - 1));
        }
        let mut pos = self.runs.partition_point(|&(first, _)| first <= index);
        let mut upper = index;
        while pos > 0 {
            let (first, run_term) = self.runs[pos - 1];
            if run_term <= term {
                return upper;
            }
            upper = first.prev();
            pos -= 1;
        }
        upper
    }

    /// The first index of the term run holding `index` (`index` must be held).
    pub fn run_first(&self, index: LogIndex) -> LogIndex {
        assert!(index >= self.start && index <= self.last, "run_first outside the log");
        let pos = self.runs.partition_point(|&(first, _)| first <= index);
        self.runs[pos - 1].0
    }

    /// Appends one entry of `term` at `last + 1`.
    pub fn append(&mut self, index: LogIndex, term: Term) {
        assert_eq!(index, self.last.next(), "append must be contiguous");
        assert!(term >= self.last_term(), "terms in a log never decrease");
        if self.runs.last().map(|&(_, t)| t) != Some(term) {
            self.runs.push((index, term));
        }
        self.last = index;
    }

    /// Removes every entry at or above `from` (`from >= start`).
    pub fn truncate_from(&mut self, from: LogIndex) {
        assert!(from >= self.start, "cannot truncate below the log start");
        if from > self.last {
            return;
        }
        while self.runs.last().is_some_and(|&(first, _)| first >= from) {
            self.runs.pop();
        }
        self.last = from.prev();
    }

    /// Throws everything away: the log restarts empty with `start` next.
    pub fn reset(&mut self, start: LogIndex, prev_term: Term) {
        *self = LogShape::empty(start, prev_term);
    }

    /// Retention: the first held index becomes `start` (`self.start < start <= last + 1`).
    pub fn advance_start(&mut self, start: LogIndex) {
        assert!(start > self.start && start.0 <= self.last.0 + 1, "bad new log start");
        let prev_term = self.term_at(start.prev()).expect("start - 1 is held");
        let keep_from = self.runs.partition_point(|&(first, _)| first <= start);
        // The run holding `start` (if any) is `keep_from - 1`; drop everything before it.
        if start <= self.last {
            self.runs.drain(..keep_from - 1);
            self.runs[0].0 = start;
        } else {
            self.runs.clear();
        }
        self.start = start;
        self.prev_term = prev_term;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(terms: &[u64]) -> LogShape {
        let mut log = LogShape::empty(LogIndex(1), Term(0));
        for (i, &t) in terms.iter().enumerate() {
            log.append(LogIndex(i as u64 + 1), Term(t));
        }
        log
    }

    #[test]
    fn term_at_answers_from_runs_and_boundaries() {
        let log = shape(&[1, 1, 2, 2, 2, 5]);
        assert_eq!(log.term_at(LogIndex(0)), Some(Term(0)));
        assert_eq!(log.term_at(LogIndex(2)), Some(Term(1)));
        assert_eq!(log.term_at(LogIndex(3)), Some(Term(2)));
        assert_eq!(log.term_at(LogIndex(6)), Some(Term(5)));
        assert_eq!(log.term_at(LogIndex(7)), None);
        assert_eq!(log.run_count(), 3);
    }

    #[test]
    fn find_conflict_by_term_skips_whole_terms() {
        let log = shape(&[1, 1, 2, 2, 2, 5, 5]);
        assert_eq!(log.find_conflict_by_term(LogIndex(7), Term(4)), LogIndex(5));
        assert_eq!(log.find_conflict_by_term(LogIndex(7), Term(1)), LogIndex(2));
        assert_eq!(log.find_conflict_by_term(LogIndex(9), Term(9)), LogIndex(7));
        assert_eq!(log.find_conflict_by_term(LogIndex(7), Term(0)), LogIndex(0));
    }

    #[test]
    fn truncate_and_advance_start_keep_runs_consistent() {
        let mut log = shape(&[1, 1, 2, 2, 3]);
        log.truncate_from(LogIndex(4));
        assert_eq!(log.last(), LogIndex(3));
        assert_eq!(log.last_term(), Term(2));
        log.advance_start(LogIndex(3));
        assert_eq!(log.start(), LogIndex(3));
        assert_eq!(log.prev_term(), Term(1));
        assert_eq!(log.term_at(LogIndex(3)), Some(Term(2)));
        assert_eq!(log.term_at(LogIndex(1)), None);
        log.advance_start(LogIndex(4));
        assert_eq!(log.runs(), &[]);
        assert_eq!(log.last_term(), Term(2));
        log.append(LogIndex(4), Term(3));
        assert_eq!(log.term_at(LogIndex(4)), Some(Term(3)));
    }

    #[test]
    fn from_parts_refuses_malformed_runs() {
        let bad =
            LogShape::from_parts(LogIndex(1), Term(0), LogIndex(3), vec![(LogIndex(2), Term(1))]);
        assert_eq!(bad, Err(LogShapeError::RunsMalformed));
        let bad = LogShape::from_parts(LogIndex(5), Term(0), LogIndex(3), vec![]);
        assert!(matches!(bad, Err(LogShapeError::StartOutOfRange { .. })));
        let ok = LogShape::from_parts(
            LogIndex(3),
            Term(1),
            LogIndex(6),
            vec![(LogIndex(3), Term(1)), (LogIndex(5), Term(4))],
        )
        .unwrap();
        assert_eq!(ok.term_at(LogIndex(4)), Some(Term(1)));
        assert_eq!(ok.term_at(LogIndex(6)), Some(Term(4)));
    }
}
