//! Mutation check of the simulator: a driver deliberately broken in one safety rule must make
//! the checker report a violation within the CI seed budget (the seeds `tests/sim.rs` runs).
//! The mutations live in the simulated driver and disk (`sim::Mutation`), never in the core.

use ringlog_sim::{
    install_quiet_panic_hook, replay_command, run_seeds, Mutation, SeedFailure, SimOptions,
};

/// The CI budget: seeds 0..1,000 on 3 nodes and on 5 nodes, interleaved.
const SEEDS_PER_SIZE: u64 = 1_000;

/// Seeds run between two looks for a safety violation.
const CHUNK: u64 = 100;

/// Runs the CI seeds (3- and 5-node alternately, in chunks) under `mutation` until a checker
/// violation that `is_safety` accepts is found (or, with `panics`, a core panic on a safety
/// assertion it accepts), and returns it. A broken driver may also break liveness first: that
/// is a failure but not the safety violation this check is about.
fn first_violation(mutation: Mutation, is_safety: fn(&str) -> bool) -> Option<String> {
    first_failure(mutation, is_safety, false)
}

fn first_failure(mutation: Mutation, is_safety: fn(&str) -> bool, panics: bool) -> Option<String> {
    install_quiet_panic_hook();
    let options = move |i: u64| SimOptions {
        mutation,
        ..SimOptions::new(i / 2, if i % 2 == 0 { 3 } else { 5 })
    };
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(2);
    for chunk in (0..2 * SEEDS_PER_SIZE).step_by(CHUNK as usize) {
        let seeds = chunk..chunk + CHUNK;
        let report = run_seeds(seeds, threads, CHUNK as usize, &options, &|_| {});
        for (i, failure) in &report.failures {
            eprintln!("{mutation:?}: {failure}\n  replay: {}", replay_command(&options(*i)));
            match failure {
                SeedFailure::Violation(v) if is_safety(&v.what) => return Some(v.what.clone()),
                SeedFailure::Panic(p) if panics && is_safety(p) => return Some(p.clone()),
                _ => {}
            }
        }
    }
    None
}

#[test]
fn mutation_ack_before_durable_is_caught_by_the_checker_within_the_ci_seed_budget() {
    let what = first_violation(Mutation::AckBeforeDurable, |what| {
        what.contains("committed entry changed") || what.contains("acked")
    });
    assert!(what.is_some(), "acking entries before they are durable must lose a committed entry");
}

#[test]
fn mutation_forgotten_vote_is_caught_by_the_checker_within_the_ci_seed_budget() {
    let what = first_violation(Mutation::ForgetVoteOnRestart, |what| {
        what.contains("election safety")
            || what.contains("committed entry changed")
            || what.contains("log matching")
    });
    assert!(what.is_some(), "forgetting the vote at restart must let two leaders win one term");
}

/// A replica that lost acknowledged entries and votes as if it held them loses committed
/// entries: the checker sees a committed entry change (or an ack not durable on a majority),
/// or the old leader's core asserts that a committed entry would be truncated (Raft §5.4).
fn loses_committed_entries(what: &str) -> bool {
    what.contains("committed entry changed")
        || what.contains("acked")
        || what.contains("log matching")
        || what.contains("leader completeness")
}

#[test]
fn mutation_torn_tail_taken_as_clean_is_caught_within_the_ci_seed_budget() {
    // Issue #13 item 3: a flip in the last, acknowledged flush taken for a torn write.
    let what = first_failure(Mutation::TornTailTakenAsClean, loses_committed_entries, true);
    assert!(what.is_some(), "dropping a bad last record without damage must lose an acked entry");
}

/// The schedule needs a stale leader and a wiped voter that meets it first: the fault
/// scheduler's `StaleLeader` program builds it (sim/faults.rs); the scripted scenario
/// `a_replica_that_voted_then_lost_its_state_is_not_repaired_by_a_stale_leader` replays one.
#[test]
fn mutation_repair_from_a_lower_term_is_caught_within_the_ci_seed_budget() {
    let what = first_failure(Mutation::RepairFromLowerTerm, loses_committed_entries, true);
    assert!(what.is_some(), "repair by a stale leader must let it commit over a newer term");
}

#[test]
fn mutation_single_hard_state_slot_rollback_is_caught_within_the_ci_seed_budget() {
    let what = first_failure(
        Mutation::SingleSlotRollback,
        |what| what.contains("election safety") || loses_committed_entries(what),
        true,
    );
    assert!(what.is_some(), "a rolled-back vote must let two leaders win one term");
}

/// Issue #13 item 10: a full disk is not fatal, but a refusal for space is not a write. A
/// replica that reports an append its full disk refused as durable acks entries it holds only
/// in memory; a restart on the full disk (or a crash before space is back) loses them.
#[test]
fn mutation_full_disk_refusal_taken_as_durable_is_caught_within_the_ci_seed_budget() {
    let what = first_failure(Mutation::FullDiskRefusalAsDurable, loses_committed_entries, true);
    assert!(what.is_some(), "acking an append the full disk refused must lose an acked entry");
}
