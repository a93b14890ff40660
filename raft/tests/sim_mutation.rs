//! Mutation check of the simulator: a driver deliberately broken in one safety rule must make
//! the checker report a violation within the CI seed budget (the seeds `tests/sim.rs` runs).
//! The mutations live in the simulated driver (`sim::Mutation`), never in the core.

use ringlog_raft::sim::{
    install_quiet_panic_hook, replay_command, run_seeds, Mutation, SeedFailure, SimOptions,
};

/// The CI budget: seeds 0..1,000 on 3 nodes and on 5 nodes, interleaved.
const SEEDS_PER_SIZE: u64 = 1_000;

/// Failing seeds collected per mutation before looking for a safety violation among them.
const FAILURES_MAX: usize = 10;

/// Runs the CI seeds (3- and 5-node alternately) under `mutation` until `FAILURES_MAX` seeds
/// failed; returns the first checker violation (not a core panic) that `is_safety` accepts.
/// A broken driver may also break liveness first: that counts as a failure but not as the
/// safety violation this check is about.
fn first_violation(mutation: Mutation, is_safety: fn(&str) -> bool) -> Option<String> {
    install_quiet_panic_hook();
    let options = move |i: u64| SimOptions {
        mutation,
        ..SimOptions::new(i / 2, if i % 2 == 0 { 3 } else { 5 })
    };
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(2);
    let report = run_seeds(0..2 * SEEDS_PER_SIZE, threads, FAILURES_MAX, &options, &|_| {});
    for (i, failure) in &report.failures {
        eprintln!("{mutation:?}: {failure}\n  replay: {}", replay_command(&options(*i)));
    }
    report.failures.iter().find_map(|(_, failure)| match failure {
        SeedFailure::Violation(v) if is_safety(&v.what) => Some(v.what.clone()),
        _ => None,
    })
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
