//! The deterministic simulator in CI: 2,000 seeds of 5,000 steps with every fault kind on,
//! half on 3-node clusters and half on 5-node clusters, each checked after every step for
//! election safety, log matching, committed-prefix agreement and stability, acknowledged
//! proposals committed exactly once, linearizable ReadIndex, reads returning the committed
//! bytes, and liveness once faults stop (every full disk then has its space back); at the end,
//! every acknowledged (index, payload) on the durable logs of a majority of the final voters.
//! One seed in four runs without CheckQuorum and PreVote.
//!
//! A failing seed is printed with the one-line command that replays it with a trace.

use ringlog_sim::{
    install_quiet_panic_hook, replay_command, run_seed, run_seeds, FaultConfig, RangeReport,
    SimOptions, Trace,
};

/// Seeds per cluster size (CI budget: 2 × 1,000 seeds).
const SEEDS_PER_SIZE: u64 = 1_000;
/// Steps of the faulty phase of each seed.
const STEPS: u64 = 5_000;
/// Failing seeds listed before a run gives up.
const FAILURES_MAX: usize = 10;

fn threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get()).min(2)
}

fn run_size(nodes: usize) -> RangeReport {
    install_quiet_panic_hook();
    let options = move |seed| SimOptions { steps: STEPS, ..SimOptions::new(seed, nodes) };
    let report = run_seeds(0..SEEDS_PER_SIZE, threads(), FAILURES_MAX, &options, &|_| {});
    eprintln!(
        "{nodes} nodes: {} seeds, {} steps, {} acked, {} committed, {} crashes, {} faults, \
         {} corrupted frames, {} full disks ({} log writes held for space), slowest liveness \
         {} steps",
        report.seeds_run,
        report.steps_run,
        report.acked,
        report.committed,
        report.crashes,
        report.faults,
        report.corrupted_frames,
        report.disk_full_events,
        report.held_for_space,
        report.liveness_steps_max
    );
    let mut failures = String::new();
    for (seed, failure) in &report.failures {
        failures +=
            &format!("seed {seed}: {failure}\n  replay: {}\n", replay_command(&options(*seed)));
    }
    assert!(report.failures.is_empty(), "{} seeds failed:\n{failures}", report.failures.len());
    report
}

#[test]
fn three_node_clusters_stay_safe_and_live_under_every_fault_for_1000_seeds() {
    let report = run_size(3);
    assert_eq!(report.seeds_run, SEEDS_PER_SIZE);
    assert!(report.acked > SEEDS_PER_SIZE * 10, "the client got too few acks to mean anything");
    assert!(report.crashes > SEEDS_PER_SIZE, "too few crashes to mean anything");
    assert!(report.corrupted_frames > SEEDS_PER_SIZE, "too few corrupted frames");
    assert!(report.disk_full_events > SEEDS_PER_SIZE, "too few full disks");
    assert!(report.held_for_space > SEEDS_PER_SIZE, "too few log writes held for space");
}

#[test]
fn five_node_clusters_stay_safe_and_live_under_every_fault_for_1000_seeds() {
    let report = run_size(5);
    assert_eq!(report.seeds_run, SEEDS_PER_SIZE);
    assert!(report.acked > SEEDS_PER_SIZE * 10, "the client got too few acks to mean anything");
    assert!(report.crashes > SEEDS_PER_SIZE, "too few crashes to mean anything");
    assert!(report.corrupted_frames > SEEDS_PER_SIZE, "too few corrupted frames");
    assert!(report.disk_full_events > SEEDS_PER_SIZE, "too few full disks");
    assert!(report.held_for_space > SEEDS_PER_SIZE, "too few log writes held for space");
}

#[test]
fn same_seed_replays_the_same_run_and_trace() {
    use std::sync::{Arc, Mutex};
    let record = || {
        let lines = Arc::new(Mutex::new(Vec::<String>::new()));
        let sink = Arc::clone(&lines);
        let trace = Trace::to(Box::new(move |line| sink.lock().unwrap().push(line.to_string())));
        let summary = run_seed(SimOptions { steps: 1_500, ..SimOptions::new(42, 5) }, trace)
            .expect("seed 42 passes");
        let lines = lines.lock().unwrap().clone();
        (summary, lines)
    };
    let (a, trace_a) = record();
    let (b, trace_b) = record();
    assert_eq!(a, b);
    assert!(trace_a.len() > 1_000, "the trace shows the run");
    assert_eq!(trace_a, trace_b);
}

#[test]
fn calm_cluster_acknowledges_most_proposals_and_elects_one_leader() {
    for nodes in [3, 5] {
        let opts =
            SimOptions { steps: 2_000, faults: FaultConfig::none(), ..SimOptions::new(7, nodes) };
        let summary = run_seed(opts, Trace::off()).expect("a calm run passes");
        assert_eq!(summary.crashes, 0);
        assert_eq!(summary.checker.leaders_elected, 1, "no fault, so no second election");
        assert!(summary.checker.acked * 10 >= summary.client.accepted * 9, "{summary:?}");
    }
}

#[test]
fn replay_command_names_the_seed_size_and_steps() {
    let cmd = replay_command(&SimOptions::new(1234, 5));
    assert_eq!(cmd, "cargo run -p ringlog-sim -- --seed 1234 --nodes 5 --steps 5000 --trace");
}

/// Regression seeds: the soak run (`--seeds 0..100000 --nodes both`) found them failing on an
/// earlier core, with their cluster size. Two core bugs, since fixed: (A) a follower acked
/// `start - 1` as durable right after `ResetLog`, before the reset was durable, so a crash that
/// lost the reset left the leader with a stale match index and a heartbeat committed the
/// follower's stale entries (5959, 12839, 13432); (B) a damaged replica reported `Repaired` on
/// first contact (a heartbeat's match-capped commit) although its log was behind the leader's
/// commit, then voted, and a leader without committed entries was elected (11506, 15070,
/// 11357). 19322, 19024 and 23720 failed on the same core and were not triaged further.
const SOAK_FAILURES: [(u64, usize); 11] = [
    (5959, 5),
    (11357, 5),
    (11506, 3),
    (12839, 5),
    (12906, 3),
    (13432, 3),
    (15070, 3),
    (19024, 3),
    (19322, 3),
    (23720, 3),
    (41430, 3),
];

#[test]
fn seeds_the_soak_run_found_failing_pass() {
    install_quiet_panic_hook();
    let mut failures = String::new();
    for (seed, nodes) in SOAK_FAILURES {
        let opts = SimOptions { steps: STEPS, ..SimOptions::new(seed, nodes) };
        if let Err(failure) = ringlog_sim::run_seed_catching(opts, Trace::off()) {
            failures += &format!("seed {seed}: {failure}\n  replay: {}\n", replay_command(&opts));
        }
    }
    assert!(failures.is_empty(), "{failures}");
}
