//! Deterministic simulator: whole clusters of the real [`Replica`](ringlog_raft::replica::Replica)
//! over a simulated network and simulated disks, all from one `u64` seed.
//!
//! - [`wire`]: net's production peer codec on the simulated wire (frames encoded at send,
//!   decoded at arrival, with a round-trip check);
//! - [`network`]: carries the frames: drop, delay, duplication, reordering, corruption (a
//!   flipped byte, caught by the frame checksums: the frame is lost), symmetric and one-way
//!   partitions;
//! - [`disk`]: written and durable images, slow and failed fsyncs, lost and torn unsynced
//!   writes, bit flips at rest, wiped disks, full disks, and the recovery that rebuilds
//!   `Recovered`;
//! - [`faults`]: which fault strikes when;
//! - [`client`]: proposals and what was acknowledged, ReadIndex reads;
//! - [`checker`]: the safety properties, checked as every fact appears;
//! - [`recovery_table`]: docs/format.md's "Recovery outcomes" table, parsed for the tests that
//!   hold the simulator's disk and the engine to it;
//! - [`world`]: the per-node drivers (carrying out actions exactly as the replicator does)
//!   and the step loop, with a quiet phase at the end that checks liveness.
//!
//! A failing seed replays exactly: [`replay_command`] prints the command that reruns it with a
//! readable trace. No IO, no clock, no global randomness: the same seed gives the same run.
//!
//! Invariants: a run is a pure function of its [`SimOptions`]; a violation is returned (or the
//! core panics on a broken internal assertion, which [`run_seed_catching`] turns into a
//! failure) — nothing is ever retried or ignored.

pub mod checker;
pub mod client;
pub mod disk;
pub mod faults;
pub mod network;
pub mod recovery_table;
pub mod trace;
pub mod wire;
pub mod world;

use std::cell::{Cell, RefCell};
use std::ops::Range;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, Once};

pub use checker::{CheckerStats, Violation};
pub use client::ClientStats;
pub use faults::FaultConfig;
pub use network::NetworkStats;
pub use trace::Trace;
pub use world::Simulation;

/// Default steps of the faulty phase.
pub const STEPS_DEFAULT: u64 = 5_000;
/// Default bound on the quiet phase: a proposal must be acknowledged within it.
pub const LIVENESS_STEPS_MAX_DEFAULT: u64 = 2_000;

/// A deliberately broken driver, to show that the checker catches real bugs (mutation check).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Mutation {
    /// The driver as the replicator must be.
    #[default]
    None,
    /// Entries are reported durable as soon as they are written, and fsyncs run lazily
    /// (20–60 steps later): a driver that acks on write completion.
    AckBeforeDurable,
    /// The vote in the hard state is forgotten at every restart, and the replica is not told
    /// it is damaged.
    ForgetVoteOnRestart,
    /// A damaged replica is repaired by a leader of a lower term than one it voted in: the
    /// driver answers the replica's `TermQuery` itself with the replica's own term, so that it
    /// learns nothing (issue #13 item 5).
    RepairFromLowerTerm,
    /// Recovery takes a bad last record for a torn, never acknowledged write: dropped, no
    /// damage (issue #13 item 3).
    TornTailTakenAsClean,
    /// Recovery with one bad hard-state slot loads the other one, undamaged (issue #13 item 2).
    SingleSlotRollback,
    /// An append a full disk refused (held by the log worker until space is back) is
    /// reported durable at once: the replica acks entries it holds only in memory, which a
    /// restart on the full disk loses (issue #13 item 10).
    FullDiskRefusalAsDurable,
}

impl Mutation {
    /// Every planted bug, with its command-line name.
    pub const ALL: [(Mutation, &'static str); 6] = [
        (Mutation::AckBeforeDurable, "ack-before-durable"),
        (Mutation::ForgetVoteOnRestart, "forget-vote-on-restart"),
        (Mutation::RepairFromLowerTerm, "repair-from-lower-term"),
        (Mutation::TornTailTakenAsClean, "torn-tail-as-clean"),
        (Mutation::SingleSlotRollback, "single-slot-rollback"),
        (Mutation::FullDiskRefusalAsDurable, "full-disk-refusal-as-durable"),
    ];

    /// The mutation called `name` on the command line.
    pub fn from_name(name: &str) -> Option<Mutation> {
        Mutation::ALL.iter().find(|(_, n)| *n == name).map(|(m, _)| *m)
    }

    /// The command-line name (`None` for no mutation).
    pub fn name(self) -> Option<&'static str> {
        Mutation::ALL.iter().find(|(m, _)| *m == self).map(|(_, n)| *n)
    }
}

/// Everything a run depends on.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SimOptions {
    pub seed: u64,
    /// Cluster size (3 and 5 are the supported deployments).
    pub nodes: usize,
    /// Steps of the faulty phase.
    pub steps: u64,
    pub faults: FaultConfig,
    /// Replicas tick every this many steps (network delays and fsyncs are in steps).
    pub steps_per_tick: u64,
    /// Probability per step that the client proposes.
    pub propose_probability: f64,
    /// Probability per step that the client issues a ReadIndex read.
    pub read_probability: f64,
    /// Bound on the quiet phase (liveness).
    pub liveness_steps_max: u64,
    pub mutation: Mutation,
    /// The replicas run CheckQuorum and PreVote (`Config::check_quorum`, `Config::pre_vote`).
    /// Without them a partitioned leader keeps its term for as long as it is cut off, so
    /// schedules with a stale leader (and a replica that forgot a newer term) are reached.
    pub check_quorum: bool,
}

impl SimOptions {
    /// The CI configuration: every fault kind on.
    pub fn new(seed: u64, nodes: usize) -> SimOptions {
        SimOptions {
            seed,
            nodes,
            steps: STEPS_DEFAULT,
            faults: FaultConfig::all(),
            steps_per_tick: 1,
            propose_probability: 0.2,
            read_probability: 0.02,
            liveness_steps_max: LIVENESS_STEPS_MAX_DEFAULT,
            mutation: Mutation::None,
            // One seed in four runs without CheckQuorum and PreVote (both are tunables).
            check_quorum: seed % 4 != 3,
        }
    }
}

/// What a passing run did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RunSummary {
    pub seed: u64,
    /// Steps run, quiet phase included.
    pub steps: u64,
    /// Steps the quiet phase needed to acknowledge a new proposal.
    pub liveness_steps: u64,
    pub checker: CheckerStats,
    pub client: ClientStats,
    pub network: NetworkStats,
    pub crashes: u64,
    pub restarts: u64,
    pub faults: u64,
    /// Full-disk spans begun (`Fault::DiskFull`; also counted in `faults`).
    pub disk_full_events: u64,
    /// Log writes a full disk refused and the driver held until space was back.
    pub held_for_space: u64,
}

/// Why a seed failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SeedFailure {
    /// A checked property broke.
    Violation(Violation),
    /// The core (or the simulator) panicked on a broken assertion.
    Panic(String),
}

impl std::fmt::Display for SeedFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SeedFailure::Violation(v) => write!(f, "violation at {v}"),
            SeedFailure::Panic(p) => write!(f, "panic: {p}"),
        }
    }
}

/// Runs one seed.
pub fn run_seed(opts: SimOptions, trace: Trace) -> Result<RunSummary, Violation> {
    Simulation::new(opts, trace).run()
}

thread_local! {
    /// Where the last panic on this thread happened (recorded by the quiet panic hook).
    static PANIC_LOCATION: RefCell<Option<String>> = const { RefCell::new(None) };
    /// This thread is inside [`run_seed_catching`]: its panics are a seed's failure.
    static IN_SEED: Cell<bool> = const { Cell::new(false) };
}

/// Replaces the process's panic hook by one that, for a panic inside [`run_seed_catching`],
/// prints nothing and only records where the panic happened, so that bulk runs report each
/// failing seed in one line (with the location) instead of a backtrace per seed. Any other
/// panic (a test's failed assertion listing the failing seeds and their replay commands)
/// goes to the hook that was installed before, so its message is printed. For binaries and
/// test processes that run seeds in bulk; installs once per process.
pub fn install_quiet_panic_hook() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !IN_SEED.with(Cell::get) {
                return previous(info);
            }
            let location = info.location().map(|l| format!("{}:{}", l.file(), l.line()));
            PANIC_LOCATION.with(|p| *p.borrow_mut() = location);
        }));
    });
}

/// Runs one seed, turning a panic into a failure.
pub fn run_seed_catching(opts: SimOptions, trace: Trace) -> Result<RunSummary, SeedFailure> {
    PANIC_LOCATION.with(|p| p.borrow_mut().take());
    IN_SEED.with(|s| s.set(true));
    let outcome = catch_unwind(AssertUnwindSafe(|| run_seed(opts, trace)));
    IN_SEED.with(|s| s.set(false));
    match outcome {
        Ok(Ok(summary)) => Ok(summary),
        Ok(Err(v)) => Err(SeedFailure::Violation(v)),
        Err(payload) => {
            let text = payload
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "non-string panic".to_string());
            match PANIC_LOCATION.with(|p| p.borrow_mut().take()) {
                Some(at) => Err(SeedFailure::Panic(format!("{text} (at {at})"))),
                None => Err(SeedFailure::Panic(text)),
            }
        }
    }
}

/// The one-line command that replays `opts` with a readable trace.
pub fn replay_command(opts: &SimOptions) -> String {
    let mut cmd = format!(
        "cargo run -p ringlog-sim -- --seed {} --nodes {} --steps {} --trace",
        opts.seed, opts.nodes, opts.steps
    );
    if let Some(name) = opts.mutation.name() {
        cmd += &format!(" --mutation {name}");
    }
    cmd
}

/// Totals over a range of seeds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RangeReport {
    pub seeds_run: u64,
    pub steps_run: u64,
    pub acked: u64,
    pub committed: u64,
    pub crashes: u64,
    pub faults: u64,
    /// Frames corrupted on the simulated wire (and lost to the frame checksums).
    pub corrupted_frames: u64,
    /// Full-disk spans begun.
    pub disk_full_events: u64,
    /// Log writes held for space.
    pub held_for_space: u64,
    pub liveness_steps_max: u64,
    /// Failing seeds with their failure, ascending by seed.
    pub failures: Vec<(u64, SeedFailure)>,
}

/// Runs every seed of `seeds` on `threads` threads, `options(seed)` giving each run's options.
/// `progress(report_so_far)` is called after each seed (from the worker threads, serialized).
/// Stops early once `failures_max` seeds failed.
pub fn run_seeds(
    seeds: Range<u64>,
    threads: usize,
    failures_max: usize,
    options: &(dyn Fn(u64) -> SimOptions + Sync),
    progress: &(dyn Fn(&RangeReport) + Sync),
) -> RangeReport {
    let next = AtomicU64::new(seeds.start);
    let report = Mutex::new(RangeReport::default());
    std::thread::scope(|scope| {
        for _ in 0..threads.max(1) {
            scope.spawn(|| loop {
                let seed = next.fetch_add(1, Ordering::Relaxed);
                if seed >= seeds.end {
                    return;
                }
                if report.lock().expect("no panic while locked").failures.len() >= failures_max {
                    return;
                }
                let result = run_seed_catching(options(seed), Trace::off());
                let mut r = report.lock().expect("no panic while locked");
                r.seeds_run += 1;
                match result {
                    Ok(s) => {
                        r.steps_run += s.steps;
                        r.acked += s.checker.acked;
                        r.committed += s.checker.committed_len;
                        r.crashes += s.crashes;
                        r.faults += s.faults;
                        r.corrupted_frames += s.network.corrupted;
                        r.disk_full_events += s.disk_full_events;
                        r.held_for_space += s.held_for_space;
                        r.liveness_steps_max = r.liveness_steps_max.max(s.liveness_steps);
                    }
                    Err(f) => r.failures.push((seed, f)),
                }
                progress(&r);
            });
        }
    });
    let mut report = report.into_inner().expect("no panic while locked");
    report.failures.sort_by_key(|(seed, _)| *seed);
    report
}
