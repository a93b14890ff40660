//! Mutation check of the simulator: a driver deliberately broken in one safety rule must make
//! the checker report a violation within the CI seed budget (the seeds `tests/sim.rs` runs).
//! The mutations live in the simulated driver (`sim::Mutation`), never in the core.

use ringlog_raft::sim::{
    install_quiet_panic_hook, replay_command, run_seeds, Mutation, SeedFailure, SimOptions,
};

/// The CI budget: seeds 0..1,000 on 3 nodes and on 5 nodes, interleaved.
const SEEDS_PER_SIZE: u64 = 1_000;

/// Seeds run between two looks for a safety violation.
const CHUNK: u64 = 100;

/// Runs the CI seeds (3- and 5-node alternately, in chunks) under `mutation` until a checker
/// violation (not a core panic) that `is_safety` accepts is found, and returns it. A broken
/// driver may also break liveness first: that is a failure but not the safety violation this
/// check is about.
fn first_violation(mutation: Mutation, is_safety: fn(&str) -> bool) -> Option<String> {
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
            if let SeedFailure::Violation(v) = failure {
                if is_safety(&v.what) {
                    return Some(v.what.clone());
                }
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
