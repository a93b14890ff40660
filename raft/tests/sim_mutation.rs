//! Mutation check of the simulator: a driver deliberately broken in one safety rule must make
//! the checker report a violation within the CI seed budget (the seeds `tests/sim.rs` runs).
//! The mutations live in the simulated driver (`sim::Mutation`), never in the core.

use ringlog_raft::sim::{
    install_quiet_panic_hook, replay_command, run_seeds, Mutation, SeedFailure, SimOptions,
};

/// The CI budget: seeds 0..1,000 on 3 nodes and on 5 nodes, interleaved.
const SEEDS_PER_SIZE: u64 = 1_000;

/// Runs the CI seeds (3- and 5-node alternately) under `mutation` until a checker violation is
/// found; returns the first such seed and its violation.
fn first_violation(mutation: Mutation) -> Option<(u64, String)> {
    install_quiet_panic_hook();
    let options = move |i: u64| SimOptions {
        mutation,
        ..SimOptions::new(i / 2, if i % 2 == 0 { 3 } else { 5 })
    };
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(2);
    let report = run_seeds(0..2 * SEEDS_PER_SIZE, threads, 3, &options, &|_| {});
    report.failures.iter().find_map(|(i, failure)| match failure {
        SeedFailure::Violation(v) => {
            eprintln!("{mutation:?} caught: {v}\n  replay: {}", replay_command(&options(*i)));
            Some((*i, v.what.clone()))
        }
        SeedFailure::Panic(_) => None,
    })
}

#[test]
fn mutation_ack_before_durable_is_caught_by_the_checker_within_the_ci_seed_budget() {
    let (_, what) = first_violation(Mutation::AckBeforeDurable)
        .expect("acking entries before they are durable must lose a committed entry");
    assert!(
        what.contains("committed entry changed") || what.contains("acked"),
        "the violation is a lost committed entry: {what}"
    );
}

#[test]
fn mutation_forgotten_vote_is_caught_by_the_checker_within_the_ci_seed_budget() {
    let (_, what) = first_violation(Mutation::ForgetVoteOnRestart)
        .expect("forgetting the vote at restart must let two leaders win one term");
    assert!(
        what.contains("election safety")
            || what.contains("committed entry changed")
            || what.contains("log matching"),
        "the violation is a safety violation: {what}"
    );
}
