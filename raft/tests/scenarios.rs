//! Scripted Raft scenarios over a tiny deterministic driver (`scenarios/driver.rs`), each
//! citing the paper (Ongaro & Ousterhout, "In Search of an Understandable Consensus
//! Algorithm", 2014) or Ongaro's thesis (2014).

#[path = "scenarios/driver.rs"]
mod driver;

use driver::{config, entry, membership, n, Cluster};
use ringlog_raft::{
    Action, AppendResult, HardState, LogIndex, MembershipChange, Message, ProgressState,
    ProposeError, ReadCtx, Recovered, Replica, Role, Term, TransferError,
};

fn is_reject(m: &Message) -> bool {
    matches!(m, Message::AppendResponse { result: AppendResult::Rejected { .. }, .. })
}

#[test]
fn leader_is_elected_and_commits_its_noop_on_a_durable_majority() {
    let mut c = Cluster::new(3);
    c.elect(1);
    assert_eq!(c.leader(), Some(1));
    assert_eq!(c.replica(1).term(), Term(1));
    assert_eq!(c.node(1).commit, LogIndex(1), "the Noop commits on the leader");
    // Followers learn the commit index from the next heartbeat or Append.
    c.tick_all();
    c.tick_all();
    // Raft §8: the new leader's Noop at index 1 commits everywhere.
    for id in 1..=3 {
        assert_eq!(c.node(id).commit, LogIndex(1), "n{id}");
        assert_eq!(c.replica(id).leader(), Some(n(1)));
    }
    let index = c.propose(1, "a").unwrap();
    c.run();
    c.tick_all();
    c.tick_all();
    assert_eq!(c.node(2).commit, index);
    c.assert_committed_prefixes_agree();
}

#[test]
fn proposals_on_a_follower_are_refused_with_a_leader_hint() {
    let mut c = Cluster::new(3);
    c.elect(1);
    assert_eq!(c.propose(2, "x"), Err(ProposeError::NotLeader { leader_hint: Some(n(1)) }));
}

#[test]
fn vote_grants_leave_only_after_the_hard_state_is_durable() {
    // Raft §5.1 / Figure 2: votedFor is persisted before responding to RequestVote.
    let mut c = Cluster::new(3);
    c.node_mut(2).auto_sync = false;
    c.node_mut(3).auto_sync = false;
    for _ in 0..40 {
        c.tick(1);
        if c.replica(1).role() == Role::Candidate {
            break;
        }
        c.run();
    }
    // n1 may need its pre-vote round delivered first.
    while c.replica(1).role() != Role::Candidate {
        c.run();
    }
    c.run();
    assert_eq!(c.replica(1).role(), Role::Candidate, "no vote may arrive before durability");
    assert_eq!(c.count_delivered(2, 1, |m| matches!(m, Message::VoteResponse { .. })), 0);
    let asked = c.node(2).pending_hard_states.last().copied();
    assert_eq!(asked.and_then(|hs| hs.vote), Some(n(1)), "n2 asked to persist its vote");
    c.sync(n(2));
    c.run();
    assert_eq!(c.replica(1).role(), Role::Leader);
}

#[test]
fn follower_acks_wait_for_its_own_durability() {
    // Design §3.4: a follower replies with its durable index only once fdatasync completed.
    let mut c = Cluster::new(3);
    c.elect(1);
    c.node_mut(2).auto_sync = false;
    c.node_mut(3).auto_sync = false;
    let index = c.propose(1, "x").unwrap();
    c.run();
    assert_eq!(c.node(2).last_index(), index, "n2 wrote the entry");
    assert!(c.node(1).commit < index, "no follower reported it durable yet");
    c.sync(n(2));
    c.run();
    assert_eq!(c.node(1).commit, index);
}

#[test]
fn leader_counts_its_own_log_only_once_durable() {
    // Thesis §10.2.1: the leader writes in parallel, and counts itself only once durable.
    let mut c = Cluster::new(3);
    c.elect(1);
    c.node_mut(1).auto_sync = false;
    c.node_mut(3).auto_sync = false;
    let index = c.propose(1, "x").unwrap();
    c.run();
    assert_eq!(c.replica(1).progress(n(2)).unwrap().match_index, index);
    assert!(c.node(1).commit < index, "only n2 is durable: no majority");
    c.sync(n(1));
    c.run();
    assert_eq!(c.node(1).commit, index);
}

/// Figure 8 (c): S1 leads term 4 with [1:t1 2:t2]; S2, S3 hold index 2 of term 2; S5 holds
/// index 2 of term 3.
fn figure8_c() -> Cluster {
    let mut c =
        Cluster::with_logs(&[(3, &[1, 2]), (3, &[1, 2]), (3, &[1]), (3, &[1]), (3, &[1, 3])]);
    c.partition(1, 5);
    c.elect(1);
    assert_eq!(c.replica(1).term(), Term(4));
    c
}

#[test]
fn figure8_an_old_term_entry_on_a_majority_is_not_committed_by_counting() {
    // Raft §5.4.2 / Figure 8 (c)->(d): index 2 (term 2) reaches S1, S2, S3 but must not
    // commit, since S5 (last term 3) can still be elected and overwrite it.
    let mut c =
        Cluster::with_logs(&[(3, &[1, 2]), (3, &[1, 2]), (3, &[1]), (3, &[1]), (3, &[1, 3])]);
    c.partition(1, 5);
    c.partition(1, 4);
    for id in 2..=3 {
        c.node_mut(id).auto_sync = false;
    }
    assert!(
        c.campaign(1) || {
            // Votes wait for durability: release them.
            c.sync(n(2));
            c.sync(n(3));
            c.run();
            c.replica(1).role() == Role::Leader
        }
    );
    c.run();
    // S3 made index 2 durable, but not S1's Noop (index 3, term 4).
    c.sync_through(n(3), LogIndex(2));
    c.sync_through(n(2), LogIndex(2));
    c.run();
    assert_eq!(c.node(3).term_at(LogIndex(2)), Some(Term(2)));
    assert!(c.replica(1).progress(n(3)).unwrap().match_index >= LogIndex(2));
    assert_eq!(c.replica(1).commit(), LogIndex(0), "a term-2 entry must not commit by counting");
    // (d): S1 crashes (S2 and S3 with it, losing the unsynced term-4 Noop); S5 can win term
    // 5 with S2, S3, S4 and overwrite index 2 — which is why it was not committed.
    c.crash(1);
    for id in 2..=3 {
        c.crash(id);
        c.restart(id, false);
        c.node_mut(id).auto_sync = true;
    }
    c.heal();
    assert!(c.campaign(5), "S5 (last term 3) is more up-to-date than S2, S3, S4");
    c.tick_all();
    assert_eq!(c.node(2).term_at(LogIndex(2)), Some(Term(3)), "index 2 was overwritten");
    c.assert_committed_prefixes_agree();
}

#[test]
fn figure8_an_old_term_entry_commits_with_an_entry_of_the_current_term() {
    // Raft §5.4.2 / Figure 8 (e): once S1's term-4 entry is on a majority, index 2 commits
    // with it, and S5 can no longer be elected.
    let mut c = figure8_c();
    assert!(c.replica(1).commit() >= LogIndex(3), "Noop of term 4 committed, index 2 with it");
    c.crash(1);
    c.heal();
    for _ in 0..60 {
        c.tick_all();
    }
    let leader = c.leader().expect("a leader");
    assert_ne!(leader, 5, "S5 lacks a committed entry and must lose");
    assert_eq!(c.node(5).term_at(LogIndex(2)), Some(Term(2)), "S5's term-3 entry was replaced");
    c.assert_committed_prefixes_agree();
}

#[test]
fn a_partitioned_old_leader_commits_nothing_and_steps_down_on_rejoin() {
    // Raft §5.1-§5.3: a stale leader's entries never commit; it steps down on seeing a higher
    // term, and its uncommitted suffix is replaced by the new leader's log.
    let mut c = Cluster::new(3);
    c.elect(1);
    c.isolate(1);
    let stale = c.propose(1, "stale").unwrap();
    c.run();
    for _ in 0..40 {
        c.tick(2);
        c.tick(3);
        c.run();
        if c.replica(2).role() == Role::Leader || c.replica(3).role() == Role::Leader {
            break;
        }
    }
    let new_leader = if c.replica(2).role() == Role::Leader { 2 } else { 3 };
    let fresh = c.propose(new_leader, "fresh").unwrap();
    c.run();
    assert!(c.node(new_leader).commit >= fresh);
    assert!(c.node(1).commit < stale, "the stale entry never committed");
    c.heal();
    for _ in 0..10 {
        c.tick_all();
    }
    assert_eq!(c.replica(1).role(), Role::Follower);
    assert_eq!(c.node(1).terms(), c.node(new_leader).terms());
    assert_ne!(c.node(1).entry(stale).payload.as_ref(), b"stale", "stale entry replaced");
    c.assert_committed_prefixes_agree();
}

#[test]
fn check_quorum_makes_a_leader_without_a_majority_step_down() {
    // Thesis §6.2: a leader that hears from no majority for an election timeout steps down.
    let mut c = Cluster::new(3);
    c.elect(1);
    c.isolate(1);
    for _ in 0..25 {
        c.tick(1);
        c.run();
    }
    assert_eq!(c.replica(1).role(), Role::Follower);
    assert_eq!(c.replica(1).leader(), None);
}

#[test]
fn a_lagging_follower_is_probed_then_pipelined_back_to_the_leader() {
    // Raft §5.3: the leader finds the matching point, then replicates the rest (pipelined).
    let mut c = Cluster::new(3);
    c.elect(1);
    c.isolate(3);
    for i in 0..50 {
        c.propose(1, &format!("p{i}")).unwrap();
        c.run();
    }
    let last = c.replica(1).last_index();
    assert_eq!(c.node(1).commit, last);
    c.node_mut(1).replica.handle_unreachable(n(3));
    c.drain(n(1));
    assert_eq!(c.replica(1).progress(n(3)).unwrap().state, ProgressState::Probe);
    c.heal();
    for _ in 0..4 {
        c.tick_all();
    }
    let pr = c.replica(1).progress(n(3)).unwrap();
    assert_eq!(pr.state, ProgressState::Replicate);
    assert_eq!(pr.match_index, last);
    assert_eq!(c.node(3).terms(), c.node(1).terms());
    c.assert_committed_prefixes_agree();
}

#[test]
fn fast_back_off_skips_a_whole_conflicting_term_at_once() {
    // Raft §5.3 (the optimisation at the end): a rejection names the conflicting term so the
    // leader skips all of it instead of one index per round trip.
    let mut leader_log = vec![1u64; 10];
    leader_log.extend(vec![3u64; 10]);
    let mut divergent = vec![1u64; 10];
    divergent.extend(vec![2u64; 60]);
    let mut c = Cluster::with_logs(&[(3, &leader_log), (3, &divergent), (3, &leader_log)]);
    c.elect(1);
    for _ in 0..4 {
        c.tick_all();
    }
    let rejections = c.count_delivered(2, 1, is_reject);
    assert!(rejections <= 2, "{rejections} rejections: the back-off is not fast");
    assert_eq!(c.node(2).terms(), c.node(1).terms());
    c.assert_committed_prefixes_agree();
}

#[test]
fn leadership_transfer_catches_the_target_up_and_hands_over() {
    // Thesis §3.10: the leader brings the target up to date, sends TimeoutNow, and refuses
    // proposals meanwhile.
    let mut c = Cluster::new(3);
    c.elect(1);
    c.isolate(3);
    for i in 0..5 {
        c.propose(1, &format!("p{i}")).unwrap();
    }
    c.run();
    c.heal();
    let term = c.replica(1).term();
    c.node_mut(1).replica.transfer_leadership(n(3)).unwrap();
    c.drain(n(1));
    assert_eq!(c.propose(1, "during"), Err(ProposeError::TransferInProgress));
    for _ in 0..6 {
        c.tick_all();
    }
    assert_eq!(c.leader(), Some(3));
    assert!(c.replica(3).term() > term);
    assert_eq!(c.replica(1).role(), Role::Follower);
    c.assert_committed_prefixes_agree();
}

#[test]
fn leadership_transfer_to_an_unreachable_node_aborts_after_an_election_timeout() {
    // Thesis §3.10: abort when the transfer does not complete within an election timeout.
    let mut c = Cluster::new(3);
    c.elect(1);
    c.isolate(3);
    c.propose(1, "x").unwrap();
    c.run();
    c.node_mut(1).replica.transfer_leadership(n(3)).unwrap();
    c.drain(n(1));
    assert_eq!(
        c.node_mut(1).replica.transfer_leadership(n(2)),
        Err(TransferError::InProgress { to: n(3) })
    );
    for _ in 0..10 {
        c.tick(1);
        c.run();
    }
    assert_eq!(c.replica(1).role(), Role::Leader);
    assert_eq!(c.replica(1).transfer_target(), None);
    assert!(c.propose(1, "after").is_ok());
}

#[test]
fn a_learner_catches_up_is_promoted_and_then_counts() {
    // Thesis §4.2.1: a new server joins as a non-voting learner until caught up; §4.1: one
    // membership change at a time.
    let mut c = Cluster::new(3);
    c.elect(1);
    for i in 0..20 {
        c.propose(1, &format!("p{i}")).unwrap();
    }
    c.run();
    c.add_node(config(4), Recovered::joining(), Vec::new());
    let add = c.node_mut(1).replica.propose_membership(MembershipChange::AddLearner(n(4)));
    let add = add.unwrap();
    c.drain(n(1));
    assert_eq!(
        c.node_mut(1).replica.propose_membership(MembershipChange::Promote(n(4))),
        Err(ringlog_raft::MembershipError::ChangeInProgress)
    );
    for _ in 0..4 {
        c.tick_all();
    }
    assert!(c.node(1).commit >= add);
    assert_eq!(c.replica(4).role(), Role::Learner);
    let caught_up = c
        .node(1)
        .events
        .iter()
        .any(|e| matches!(e, Action::LearnerCaughtUp { learner, .. } if *learner == n(4)));
    assert!(caught_up, "the leader reports the caught-up learner");
    c.node_mut(1).replica.propose_membership(MembershipChange::Promote(n(4))).unwrap();
    c.drain(n(1));
    for _ in 0..4 {
        c.tick_all();
    }
    assert_eq!(c.replica(4).role(), Role::Follower);
    assert_eq!(c.replica(1).membership(), &membership(&[1, 2, 3, 4]));
    // Four voters: a commit now needs three, so n4 counts.
    c.isolate(2);
    c.isolate(3);
    c.partition(2, 3);
    c.cut.remove(&(n(1), n(4)));
    c.cut.remove(&(n(4), n(1)));
    let index = c.propose(1, "with n4").unwrap();
    c.run();
    assert!(c.node(1).commit < index, "1 + n4 is no quorum of 4");
    c.heal();
    for _ in 0..20 {
        c.tick_all();
        if c.node(1).commit >= index {
            break;
        }
    }
    assert!(c.node(1).commit >= index);
}

#[test]
fn a_removed_leader_steps_down_once_its_removal_commits() {
    // Thesis §4.2.2: the leader manages the change that removes it, then steps down.
    let mut c = Cluster::new(3);
    c.elect(1);
    let index = c.node_mut(1).replica.propose_membership(MembershipChange::Remove(n(1))).unwrap();
    c.drain(n(1));
    c.run();
    c.tick_all();
    assert!(c.node(2).commit >= index || c.node(1).commit >= index);
    assert_ne!(c.replica(1).role(), Role::Leader);
    assert_eq!(c.replica(1).role(), Role::Learner, "a non-member never campaigns");
    for _ in 0..40 {
        c.tick_all();
    }
    let leader = c.leader().expect("the remaining voters elect a leader");
    assert!(leader == 2 || leader == 3);
    let idx = c.propose(leader, "after removal").unwrap();
    c.run();
    c.tick_all();
    assert!(c.node(leader).commit >= idx);
}

#[test]
fn pre_vote_keeps_a_rejoining_partitioned_node_from_disrupting_the_leader() {
    // Thesis §9.6: a partitioned node keeps failing its pre-vote, so its term stays put and
    // it cannot force the leader to step down when it returns.
    let mut c = Cluster::new(3);
    c.elect(1);
    let term = c.replica(1).term();
    c.isolate(3);
    for _ in 0..100 {
        c.tick_all();
    }
    assert_eq!(c.replica(3).term(), term, "pre-vote never raised the term");
    c.heal();
    for _ in 0..20 {
        c.tick_all();
    }
    assert_eq!(c.leader(), Some(1));
    assert_eq!(c.replica(1).term(), term);
    assert_eq!(c.replica(3).leader(), Some(n(1)));
}

#[test]
fn without_pre_vote_a_rejoining_node_disrupts_the_leader() {
    // The contrast to the test above (thesis §9.6): plain Raft lets the rejoining node's
    // inflated term depose a healthy leader.
    let mut c = Cluster::with(3, |id| {
        let mut cfg = config(id);
        cfg.pre_vote = false;
        cfg.check_quorum = false;
        cfg
    });
    c.elect(1);
    let term = c.replica(1).term();
    c.isolate(3);
    for _ in 0..100 {
        c.tick_all();
    }
    assert!(c.replica(3).term() > term);
    c.heal();
    for _ in 0..3 {
        c.tick_all();
    }
    assert!(c.replica(1).term() > term, "the leader was deposed by the higher term");
}

#[test]
fn read_index_is_ready_only_after_a_heartbeat_quorum() {
    // Thesis §6.4: record the commit index, confirm leadership with a heartbeat round, then
    // serve.
    let mut c = Cluster::new(3);
    c.elect(1);
    c.node_mut(1).replica.read_index(ReadCtx(7)).unwrap();
    c.drain(n(1));
    let ready = |c: &Cluster| {
        c.node(1).events.iter().any(|e| matches!(e, Action::ReadReady { ctx: ReadCtx(7), .. }))
    };
    assert!(!ready(&c), "not before a quorum answered");
    c.deliver_one();
    c.deliver_one();
    c.run();
    assert!(ready(&c));
    let commit = c.node(1).commit;
    assert!(c.node(1).events.contains(&Action::ReadReady { ctx: ReadCtx(7), index: commit }));
}

#[test]
fn read_index_on_a_partitioned_leader_fails_when_it_steps_down() {
    // Thesis §6.4: a deposed leader must not serve a linearizable read.
    let mut c = Cluster::new(3);
    c.elect(1);
    c.isolate(1);
    c.node_mut(1).replica.read_index(ReadCtx(9)).unwrap();
    c.drain(n(1));
    for _ in 0..25 {
        c.tick(1);
        c.run();
    }
    let events = &c.node(1).events;
    assert!(!events.iter().any(|e| matches!(e, Action::ReadReady { ctx: ReadCtx(9), .. })));
    assert!(events.contains(&Action::ReadFailed { ctx: ReadCtx(9) }));
}

#[test]
fn a_damaged_replica_refuses_to_vote_until_repaired() {
    // Design §4: a replica that lost its log or vote neither votes nor counts until it has
    // caught up from a leader with a durable hard state of that leader's term.
    let mut c = Cluster::new(3);
    c.elect(1);
    for i in 0..5 {
        c.propose(1, &format!("p{i}")).unwrap();
    }
    c.run();
    c.tick_all();
    c.crash(3);
    c.wipe_and_restart(3, membership(&[1, 2, 3]));
    assert!(c.replica(3).is_damaged());
    c.crash(1);
    for _ in 0..60 {
        c.tick_all();
    }
    assert_eq!(c.leader(), None, "n2 cannot win without n3's vote, and n3 must not give it");
    assert!(
        c.count_delivered(3, 2, |m| {
            matches!(
                m,
                Message::VoteResponse { granted: true, .. }
                    | Message::PreVoteResponse { granted: true, .. }
            )
        }) == 0
    );
    c.restart(1, false);
    for _ in 0..60 {
        c.tick_all();
        if c.leader().is_some() && !c.replica(3).is_damaged() {
            break;
        }
    }
    assert!(c.leader().is_some());
    assert!(!c.replica(3).is_damaged(), "n3 repaired from the leader");
    assert!(c.node(3).events.contains(&Action::Repaired));
    assert_eq!(c.node(3).terms(), c.node(c.leader().unwrap()).terms());
}

#[test]
fn a_follower_behind_the_leaders_log_start_restarts_its_log_there() {
    // Design §4 (retention): the log's install-snapshot is "restart at the leader's start".
    let mut c = Cluster::new(3);
    c.elect(1);
    c.isolate(3);
    for i in 0..30 {
        c.propose(1, &format!("p{i}")).unwrap();
        c.run();
    }
    let start = LogIndex(20);
    for id in 1..=2 {
        let node = c.node_mut(id);
        node.replica.handle_log_start(start);
        let drop = (start.0 - node.log_start.0) as usize;
        node.prev_term = node.log[drop - 1].term;
        node.log.drain(..drop);
        node.log_start = start;
        c.drain(n(id));
    }
    c.heal();
    // The pipeline to n3 lost its messages: after an election timeout without progress the
    // leader probes again, finds n3 behind its log start, and sends InstallLogStart.
    for _ in 0..25 {
        c.tick_all();
    }
    assert_eq!(c.replica(3).log_start(), start);
    assert_eq!(c.node(3).log_start, start);
    assert_eq!(c.replica(3).last_index(), c.replica(1).last_index());
    assert_eq!(c.replica(1).progress(n(3)).unwrap().state, ProgressState::Replicate);
    c.assert_committed_prefixes_agree();
}

#[test]
fn the_leader_never_exceeds_a_followers_inflight_window() {
    // Design §3.4: many Appends in flight per follower, bounded in messages.
    let mut c = Cluster::with(3, |id| {
        let mut cfg = config(id);
        cfg.inflight_msgs_max = 4;
        cfg
    });
    c.elect(1);
    c.node_mut(2).auto_sync = false;
    c.node_mut(3).auto_sync = false;
    for i in 0..20 {
        c.propose(1, &format!("p{i}")).unwrap();
    }
    let pr = c.replica(1).progress(n(2)).unwrap();
    assert_eq!(pr.state, ProgressState::Replicate);
    assert_eq!(pr.inflight_msgs, 4);
    let appends = c.net.iter().filter(|(f, t, m)| {
        f.0 == 1 && t.0 == 2 && matches!(m, Message::Append { entries, .. } if !entries.is_empty())
    });
    assert_eq!(appends.count(), 4);
    for _ in 0..3 {
        c.run();
        c.sync(n(2));
    }
    c.run();
    assert_eq!(c.replica(1).progress(n(2)).unwrap().match_index, c.replica(1).last_index());
}

#[test]
fn the_leader_bounds_a_followers_inflight_bytes() {
    // Design §3.4: the per-follower window is bounded in bytes as well as messages.
    let mut c = Cluster::with(3, |id| {
        let mut cfg = config(id);
        cfg.inflight_bytes_max = 1000;
        cfg
    });
    c.elect(1);
    c.node_mut(2).auto_sync = false;
    let payload = "x".repeat(300);
    for _ in 0..10 {
        c.propose(1, &payload).unwrap();
    }
    let pr = c.replica(1).progress(n(2)).unwrap();
    // 300-byte entries: the fourth message crosses 1000 bytes and closes the window.
    assert_eq!(pr.inflight_msgs, 4);
    assert_eq!(pr.inflight_bytes, 1200);
    let in_flight: usize = c
        .net
        .iter()
        .filter(|(f, t, _)| f.0 == 1 && t.0 == 2)
        .map(|(_, _, m)| m.payload_bytes())
        .sum();
    assert_eq!(in_flight, 1200);
}

// ----- one replica scripted message by message (soak-run regressions) -----

/// A follower `n<id>` of voters 1..=3 recovered with a log of `terms` (index 1 first) and a
/// durable hard state of `term`.
fn lone_follower(id: u32, terms: &[u64], term: u64, damaged: bool) -> Replica {
    let mut runs: Vec<(LogIndex, Term)> = Vec::new();
    for (i, &t) in terms.iter().enumerate() {
        if runs.last().map(|r| r.1) != Some(Term(t)) {
            runs.push((LogIndex(i as u64 + 1), Term(t)));
        }
    }
    let recovered = Recovered {
        hard_state: HardState { term: Term(term), vote: None },
        last_index: LogIndex(terms.len() as u64),
        term_runs: runs,
        damaged,
        ..Recovered::bootstrap(membership(&[1, 2, 3]))
    };
    Replica::new(config(id), recovered).expect("valid recovered state")
}

/// Feeds `message` from `from`, reports every hard state it asks for durable, and returns
/// every action (hard-state reports included).
fn feed(r: &mut Replica, from: u32, message: Message) -> Vec<Action> {
    r.handle_message(n(from), message);
    settle(r)
}

fn settle(r: &mut Replica) -> Vec<Action> {
    let mut all = Vec::new();
    while let Some(action) = r.poll_action() {
        if let Action::PersistHardState(hs) = action {
            r.handle_hard_state_durable(hs);
        }
        all.push(action);
    }
    all
}

/// A damaged replica asks the other voters for their term (on its first tick) and gets
/// `answers` as (voter, its term).
fn learn_term(r: &mut Replica, answers: &[(u32, u64)]) {
    r.handle_tick();
    settle(r);
    for &(from, term) in answers {
        feed(r, from, Message::TermQueryResponse { term: Term(term) });
    }
}

fn term_queries(actions: &[Action]) -> Vec<(u32, Term)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Send { to, message: Message::TermQuery { term } } => Some((to.0, *term)),
            _ => None,
        })
        .collect()
}

fn acks(actions: &[Action]) -> Vec<LogIndex> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Send {
                message:
                    Message::AppendResponse { result: AppendResult::Accepted { durable, .. }, .. },
                ..
            } => Some(*durable),
            _ => None,
        })
        .collect()
}

fn appends(term: u64, prev: (u64, u64), commit: u64, entries: &[(u64, u64)]) -> Message {
    Message::Append {
        term: Term(term),
        prev_index: LogIndex(prev.0),
        prev_term: Term(prev.1),
        commit: LogIndex(commit),
        entries: entries.iter().map(|&(i, t)| entry(i, t)).collect(),
    }
}

fn install_log_start(term: u64, start: u64, prev_term: u64, commit: u64) -> Message {
    Message::InstallLogStart {
        term: Term(term),
        start: LogIndex(start),
        prev_term: Term(prev_term),
        commit: LogIndex(commit),
        membership: membership(&[1, 2, 3]),
    }
}

#[test]
fn a_follower_acks_its_log_reset_only_once_the_reset_is_reported_durable() {
    // Raft §5.3 / Figure 2 and §7 (InstallSnapshot): a follower answers only from durable
    // state. An ack of `start - 1` before the reset is durable lets a crash bring the old,
    // conflicting log back under a leader that believes it matches (soak seeds 5959, 12839,
    // 13432, 23720: a heartbeat then committed the stale entries).
    let mut r = lone_follower(2, &[1, 1, 1], 1, false);
    let actions = feed(&mut r, 1, install_log_start(2, 6, 2, 5));
    assert!(actions.iter().any(|a| matches!(a, Action::ResetLog { .. })));
    assert!(
        acks(&actions).iter().all(|&d| d < LogIndex(5)),
        "acked the reset before it was durable: {actions:?}"
    );
    // A retransmitted InstallLogStart does not make it durable either.
    let actions = feed(&mut r, 1, install_log_start(2, 6, 2, 5));
    assert!(acks(&actions).iter().all(|&d| d < LogIndex(5)));
    // The driver reports the reset durable: handle_durable(start - 1, prev_term).
    r.handle_durable(LogIndex(5), Term(2));
    assert_eq!(acks(&settle(&mut r)), vec![LogIndex(5)]);
}

#[test]
fn a_durable_entry_appended_after_a_log_reset_makes_the_reset_durable_too() {
    // action.rs: a reset is durable before any entry appended after it is reported durable,
    // so that report stands for both (the simulator's driver reports only appends).
    let mut r = lone_follower(2, &[1, 1, 1], 1, false);
    feed(&mut r, 1, install_log_start(2, 6, 2, 5));
    let actions = feed(&mut r, 1, appends(2, (5, 2), 5, &[(6, 2), (7, 2)]));
    assert!(acks(&actions).iter().all(|&d| d < LogIndex(5)));
    r.handle_durable(LogIndex(7), Term(2));
    assert_eq!(acks(&settle(&mut r)), vec![LogIndex(7)]);
}

#[test]
fn a_damaged_follower_takes_no_commit_from_a_heartbeat() {
    // A heartbeat's commit is min(leader commit, the leader's match for us); a damaged
    // replica's match may be one it acked before losing state. Taking it let a damaged replica
    // report Repaired while behind the leader's commit, then vote for a leader missing
    // committed entries (soak seeds 11506, 15070, 11357; Raft §5.4 leader completeness).
    // n3 held 1..=6 (term 2 from index 3), acked 6, and lost 4..=6 to damage.
    let mut r = lone_follower(3, &[1, 1, 2], 2, true);
    learn_term(&mut r, &[(1, 2), (2, 2)]);
    let actions =
        feed(&mut r, 1, Message::Heartbeat { term: Term(2), commit: LogIndex(6), ctx: 0 });
    assert!(r.is_damaged());
    assert!(!actions.contains(&Action::Repaired));
    assert_eq!(r.commit(), LogIndex(0));
    // The Append's prev check proves the match; once 4..=6 are durable it is repaired.
    feed(&mut r, 1, appends(2, (3, 2), 6, &[(4, 2), (5, 2), (6, 2)]));
    assert!(r.is_damaged(), "4..=6 are not durable yet");
    r.handle_durable(LogIndex(6), Term(2));
    let actions = settle(&mut r);
    assert!(actions.contains(&Action::Repaired));
    assert!(!r.is_damaged());
    assert_eq!(acks(&actions).last(), Some(&LogIndex(6)));
}

#[test]
fn a_damaged_follower_is_repaired_only_through_the_leaders_own_commit_index() {
    // Entries the leader committed counting this replica's acks from before its damage must
    // be held again before it votes: repair needs the log through the leader's commit index
    // (not the part of it that one Append happened to carry), whose entry is of the
    // leader's term (Raft §5.4).
    let mut r = lone_follower(3, &[1, 1, 2], 2, true);
    learn_term(&mut r, &[(1, 2), (2, 2)]);
    feed(&mut r, 1, appends(2, (3, 2), 6, &[(4, 2)]));
    r.handle_durable(LogIndex(4), Term(2));
    let actions = settle(&mut r);
    assert_eq!(r.commit(), LogIndex(4));
    assert!(r.is_damaged(), "holds 4 of the leader's commit 6");
    assert!(!actions.contains(&Action::Repaired));
    // Still damaged: it refuses a vote for a candidate whose log ends at 4.
    let vote = Message::Vote {
        term: Term(3),
        last_index: LogIndex(4),
        last_term: Term(2),
        transfer: true,
    };
    let actions = feed(&mut r, 2, vote);
    assert!(actions.iter().all(|a| !matches!(
        a,
        Action::Send { message: Message::VoteResponse { granted: true, .. }, .. }
    )));
}

#[test]
fn a_damaged_follower_that_always_lags_the_commit_under_load_is_repaired_at_a_fixed_target() {
    // Issue #13 (repair under load). The leader commits with its faster follower, so every
    // Append a damaged follower catching up receives carries a commit past what it holds
    // durably: a repair target that moved with each Append was never reached, and a wiped
    // follower under steady writers stayed damaged for good (seen with real processes). The
    // leader fixes the target (its commit of its own term) when it learns of the damage.
    let mut c = Cluster::new(3);
    c.elect(1);
    for i in 0..3 {
        c.propose(1, &format!("a{i}")).unwrap();
    }
    c.run();
    c.tick_all();
    c.crash(3);
    c.wipe_and_restart(3, membership(&[1, 2, 3]));
    c.node_mut(3).auto_sync = false;
    assert!(c.replica(3).is_damaged());
    // Each round the leader appends and commits with n2; n3 makes durable all it holds but
    // its last two entries, so it always lags the commit its newest Append carried.
    let mut repaired_in = None;
    for round in 0..30 {
        c.propose(1, &format!("b{round}")).unwrap();
        c.tick_all();
        let lagging = LogIndex(c.node(3).last_index().0.saturating_sub(2));
        c.sync_through(ringlog_raft::NodeId(3), lagging);
        c.run();
        if !c.replica(3).is_damaged() {
            repaired_in = Some(round);
            break;
        }
        assert!(
            c.node(3).durable_through < c.replica(1).commit(),
            "the schedule keeps n3 behind the leader's commit"
        );
    }
    assert!(repaired_in.is_some(), "n3 is never repaired while it lags the moving commit");
    assert!(c.node(3).events.contains(&Action::Repaired));
    c.node_mut(3).auto_sync = true;
    c.run();
    c.tick_all();
    c.assert_committed_prefixes_agree();
}

#[test]
fn a_damaged_follower_is_repaired_with_no_new_entry_to_send() {
    // Liveness of repair: once the leader knows what a damaged follower holds, its heartbeat
    // to it is an empty Append carrying the full commit index.
    let mut c = Cluster::new(3);
    c.elect(1);
    for i in 0..3 {
        c.propose(1, &format!("p{i}")).unwrap();
    }
    c.run();
    c.tick_all();
    c.crash(3);
    c.restart(3, true);
    assert!(c.replica(3).is_damaged());
    for _ in 0..10 {
        c.tick_all();
    }
    assert!(!c.replica(3).is_damaged());
    assert!(c.node(3).events.contains(&Action::Repaired));
    c.assert_committed_prefixes_agree();
}

#[test]
fn a_replica_that_voted_then_lost_its_state_is_not_repaired_by_a_stale_leader() {
    // Issue #13 item 5 (protocol-aware recovery, Alagappan et al. FAST 2018). Schedule: n3
    // votes for n2 in term 2; its hard state is lost (damaged, term back to 1); n1, a leader
    // of term 1 that never heard of term 2, tries to repair it. Repaired, n3's acks would
    // count for n1's term-1 entries although its forgotten vote elected n2 in term 2, whose
    // log lacks them (Raft §5.4 leader completeness breaks: two different committed entries
    // at one index). n3 must first learn the highest term from both other voters.
    let mut r = lone_follower(3, &[1, 1], 1, false);
    let vote = Message::Vote {
        term: Term(2),
        last_index: LogIndex(2),
        last_term: Term(1),
        transfer: true,
    };
    let actions = feed(&mut r, 2, vote);
    assert!(actions.iter().any(|a| matches!(
        a,
        Action::Send { message: Message::VoteResponse { granted: true, .. }, .. }
    )));
    assert_eq!(r.hard_state(), HardState { term: Term(2), vote: Some(n(2)) });
    // The vote's slot rots: the replica restarts damaged at its log's last term, 1.
    let mut r = lone_follower(3, &[1, 1], 1, true);
    r.handle_tick();
    let asked = term_queries(&settle(&mut r));
    assert_eq!(asked, vec![(1, Term(1)), (2, Term(1))], "it asks both other voters");
    // The stale leader of term 1 (commit 2, of its own term) sends entry 3.
    let actions = feed(&mut r, 1, appends(1, (2, 1), 2, &[(3, 1)]));
    r.handle_durable(LogIndex(3), Term(1));
    let actions = [actions, settle(&mut r)].concat();
    assert!(!actions.contains(&Action::Repaired), "repaired by a stale leader: {actions:?}");
    assert!(r.is_damaged());
    // n1 answers (term 1): one answer of the two needed, still not repaired.
    let actions = feed(&mut r, 1, Message::TermQueryResponse { term: Term(1) });
    let actions = [actions, feed(&mut r, 1, appends(1, (3, 1), 2, &[]))].concat();
    assert!(!actions.contains(&Action::Repaired));
    assert!(r.is_damaged());
    // n2 answers term 2: n3 adopts it and the stale leader's messages are refused.
    feed(&mut r, 2, Message::TermQueryResponse { term: Term(2) });
    assert_eq!(r.term(), Term(2));
    let actions = feed(&mut r, 1, appends(1, (3, 1), 2, &[]));
    assert!(!actions.contains(&Action::Repaired));
    assert!(r.is_damaged());
    assert!(
        actions
            .iter()
            .all(|a| !matches!(a, Action::Send { message, .. } if message.term() < Term(2))),
        "n1 is told term 2: {actions:?}"
    );
    // The leader of term 2 (n2: its noop at 3, commit 3) repairs it.
    feed(&mut r, 2, appends(2, (2, 1), 3, &[(3, 2)]));
    r.handle_durable(LogIndex(3), Term(2));
    let actions = settle(&mut r);
    assert!(actions.contains(&Action::Repaired));
    assert!(!r.is_damaged());
    assert_eq!(r.term_at(LogIndex(3)), Some(Term(2)));
}

#[test]
fn a_damaged_replica_of_five_voters_needs_the_term_of_three_of_the_four_others() {
    // N = 5: any electing quorum holds 3 voters, so 2 of the 4 others know its term; 3
    // answers meet at least one of them.
    let recovered = Recovered {
        hard_state: HardState { term: Term(1), vote: None },
        last_index: LogIndex(1),
        term_runs: vec![(LogIndex(1), Term(1))],
        damaged: true,
        ..Recovered::bootstrap(membership(&[1, 2, 3, 4, 5]))
    };
    let mut r = Replica::new(config(5), recovered).unwrap();
    r.handle_tick();
    assert_eq!(term_queries(&settle(&mut r)).len(), 4);
    for from in [1, 2] {
        feed(&mut r, from, Message::TermQueryResponse { term: Term(1) });
    }
    feed(&mut r, 1, appends(1, (1, 1), 2, &[(2, 1)]));
    r.handle_durable(LogIndex(2), Term(1));
    assert!(!settle(&mut r).contains(&Action::Repaired), "two answers are not enough");
    // The same answer twice counts once.
    feed(&mut r, 2, Message::TermQueryResponse { term: Term(1) });
    assert!(r.is_damaged());
    // Unanswered voters are asked again on a later heartbeat interval; answered ones not.
    for _ in 0..config(5).heartbeat_ticks {
        r.handle_tick();
    }
    let again: Vec<u32> = term_queries(&settle(&mut r)).iter().map(|q| q.0).collect();
    assert_eq!(again, vec![3, 4]);
    let actions = feed(&mut r, 3, Message::TermQueryResponse { term: Term(1) });
    let actions = [actions, feed(&mut r, 1, appends(1, (2, 1), 2, &[]))].concat();
    assert!(actions.contains(&Action::Repaired), "{actions:?}");
}

#[test]
fn a_damaged_replica_that_has_not_learned_its_term_answers_no_term_query() {
    let mut r = lone_follower(3, &[1, 1, 2], 2, true);
    let actions = feed(&mut r, 1, Message::TermQuery { term: Term(1) });
    assert!(actions.iter().all(|a| !matches!(a, Action::Send { .. })));
    let mut healthy = lone_follower(2, &[1, 1, 2], 2, false);
    let actions = feed(&mut healthy, 3, Message::TermQuery { term: Term(5) });
    let answer = Action::Send { to: n(3), message: Message::TermQueryResponse { term: Term(2) } };
    assert_eq!(actions, vec![answer], "answered with its own term, its own term unchanged");
    assert_eq!(healthy.term(), Term(2));
}

#[test]
fn the_leader_follows_a_follower_whose_restart_lost_entries_it_had_acked() {
    // Issue #13 item 3 / 11: a follower comes back undamaged but shorter than the match the
    // leader recorded (a flip taken for a torn tail). The leader must not probe its old match
    // forever: the rejection of that probe restarts the follower's progress from what it
    // holds now (its lag shows it), and it catches up.
    let mut c = Cluster::new(3);
    c.elect(1);
    for i in 0..5 {
        c.propose(1, &format!("p{i}")).unwrap();
    }
    c.run();
    c.tick_all();
    let last = c.replica(1).last_index();
    assert_eq!(c.replica(1).progress(n(3)).unwrap().match_index, last);
    c.crash(3);
    let node = c.node_mut(3);
    node.log.truncate(3);
    node.durable_through = LogIndex(3);
    c.restart(3, false);
    assert_eq!(c.replica(3).last_index(), LogIndex(3));
    let index = c.propose(1, "after").unwrap();
    c.run();
    let mut caught_up = false;
    for _ in 0..30 {
        c.tick_all();
        if c.replica(3).last_index() == index && c.node(3).durable_through == index {
            caught_up = true;
            break;
        }
    }
    assert!(caught_up, "n3 holds {} of {index}", c.replica(3).last_index());
    assert_eq!(c.replica(1).progress(n(3)).unwrap().match_index, index);
    c.assert_committed_prefixes_agree();
}

#[test]
fn a_probe_rejected_at_the_recorded_match_counts_the_follower_for_nothing_it_lost() {
    // The same schedule with n2 cut off: until n3 acks again, the leader's match for n3 is
    // not the one it recorded before n3 lost entries, so nothing new commits on its word.
    let mut c = Cluster::new(3);
    c.elect(1);
    for i in 0..5 {
        c.propose(1, &format!("p{i}")).unwrap();
    }
    c.run();
    c.tick_all();
    c.crash(3);
    let node = c.node_mut(3);
    node.log.truncate(3);
    node.durable_through = LogIndex(3);
    c.restart(3, false);
    c.node_mut(3).auto_sync = false;
    c.partition(1, 2);
    let index = c.propose(1, "after").unwrap();
    for _ in 0..30 {
        c.tick_all();
        let m = c.replica(1).progress(n(3)).unwrap().match_index;
        assert!(m <= c.node(3).durable_through, "match {m} beyond what n3 holds durably");
    }
    assert!(c.node(1).commit < index, "nothing n3 has not made durable commits");
    c.sync(n(3));
    c.tick_all();
    c.tick_all();
    assert_eq!(c.node(1).commit, index);
}

#[test]
fn a_deposed_leader_reports_its_step_down_before_committing_the_new_leaders_entries() {
    // Raft §5.3: a leader that learns a newer term steps down, truncates its uncommitted
    // entries and takes the new leader's. A driver answers producers on `CommitAdvanced` as
    // the leader it last heard of, so the step-down must come first in the actions, else it
    // acknowledges a proposal that was just truncated (simulator seed 195, 5 nodes, without
    // CheckQuorum).
    let mut c = Cluster::new(3);
    c.elect(1);
    c.isolate(1);
    let index = c.propose(1, "doomed").unwrap();
    c.run();
    assert!(c.node(1).commit < index);
    let before = c.node(1).events.len();
    let prev_term = c.node(1).term_at(index.prev()).unwrap();
    let append = Message::Append {
        term: Term(2),
        prev_index: index.prev(),
        prev_term,
        commit: index,
        entries: vec![entry(index.0, 2)],
    };
    c.node_mut(1).replica.handle_message(n(2), append);
    c.drain(n(1));
    c.sync(n(1));
    let events = &c.node(1).events[before..];
    let stepped_down = events
        .iter()
        .position(|e| matches!(e, Action::RoleChanged { role: Role::Follower, term: Term(2), .. }));
    let committed = events
        .iter()
        .position(|e| matches!(e, Action::CommitAdvanced { through } if *through >= index));
    assert!(stepped_down.is_some() && committed.is_some(), "{events:?}");
    assert!(stepped_down < committed, "step-down reported after the commit: {events:?}");
    assert_eq!(c.node(1).entry(index).term, Term(2));
}
