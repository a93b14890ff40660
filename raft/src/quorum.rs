//! Quorum arithmetic for single-server membership (majority of the voters).
//!
//! Invariants: a quorum of `n` voters is `n / 2 + 1`; the quorum index of a set of per-voter
//! indexes is the largest index at least a quorum of them have reached.

use crate::types::LogIndex;

/// Votes (or acks) needed out of `voters`.
pub fn quorum_size(voters: usize) -> usize {
    voters / 2 + 1
}

/// Answers a damaged replica needs from the *other* voters (of `voters`, itself included if
/// it is one) before it knows the highest term in which any leader was elected: a leader of a
/// term was voted in by `quorum_size(voters)` voters, so at least `quorum_size - 1` of the
/// others know that term; asking `voters - quorum_size + 1` of them meets at least one
/// (N = 3: both others; N = 5: 3 of the 4 others; in general floor((N - 1) / 2) + 1).
pub fn term_query_answers_needed(voters: usize) -> usize {
    voters - quorum_size(voters) + 1
}

/// The largest index reached by a quorum of `indexes` (one per voter); sorts `indexes` in
/// place. `LogIndex(0)` for no voters.
pub fn quorum_index(indexes: &mut [LogIndex]) -> LogIndex {
    if indexes.is_empty() {
        return LogIndex(0);
    }
    indexes.sort_unstable_by(|a, b| b.cmp(a));
    indexes[quorum_size(indexes.len()) - 1]
}

/// The outcome of a vote count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VoteOutcome {
    Won,
    Lost,
    Pending,
}

/// Counts `granted` and `rejected` votes out of `voters`.
pub fn vote_outcome(voters: usize, granted: usize, rejected: usize) -> VoteOutcome {
    let q = quorum_size(voters);
    if granted >= q {
        VoteOutcome::Won
    } else if voters - rejected.min(voters) < q {
        VoteOutcome::Lost
    } else {
        VoteOutcome::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quorum_index_is_the_majority_th_largest() {
        let mut v = [LogIndex(5), LogIndex(9), LogIndex(7)];
        assert_eq!(quorum_index(&mut v), LogIndex(7));
        let mut v = [LogIndex(5), LogIndex(9), LogIndex(7), LogIndex(1)];
        assert_eq!(quorum_index(&mut v), LogIndex(5));
        let mut v = [LogIndex(3)];
        assert_eq!(quorum_index(&mut v), LogIndex(3));
    }

    #[test]
    fn vote_outcome_needs_a_majority_either_way() {
        assert_eq!(vote_outcome(3, 2, 0), VoteOutcome::Won);
        assert_eq!(vote_outcome(3, 1, 1), VoteOutcome::Pending);
        assert_eq!(vote_outcome(3, 1, 2), VoteOutcome::Lost);
        assert_eq!(vote_outcome(4, 2, 2), VoteOutcome::Lost);
        assert_eq!(vote_outcome(1, 1, 0), VoteOutcome::Won);
    }

    #[test]
    fn a_damaged_replica_asks_enough_others_to_meet_every_electing_quorum() {
        assert_eq!(term_query_answers_needed(3), 2);
        assert_eq!(term_query_answers_needed(5), 3);
        assert_eq!(term_query_answers_needed(4), 2);
        for n in 1..=9 {
            assert_eq!(term_query_answers_needed(n), (n - 1) / 2 + 1);
            // The others that voted in any electing quorum, plus those asked, exceed the others.
            assert!(quorum_size(n) - 1 + term_query_answers_needed(n) > n - 1);
        }
    }
}
