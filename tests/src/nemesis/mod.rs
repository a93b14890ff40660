//! Nemesis soak (issue #13): 3 real `ringlog serve` nodes on 127.0.0.1 (1 MiB segments, a
//! few partitions), writers producing unique values with acks=quorum and recording every
//! acknowledgement, and a seeded nemesis that kills leaders and followers (kill -9), pauses
//! nodes (SIGSTOP), kills two nodes at once, restarts gracefully (SIGTERM), wipes a stopped
//! follower's data dir, flips bits in a stopped follower's segments (near the tail, in sealed
//! segments) and hard state, and fills a follower's disk (a loop-mounted ext4). Disk events
//! hit one node at a time, only while the other two are healthy. At the end everything is
//! healed, every node restarted (kill -9 of all three, then start), and every partition read
//! back from every replica and checked (`check`). The run stops by itself and cleans up
//! (processes, mounts) on every path, a panic included.
//!
//! Used by `tests/cluster/soak.rs` (the CI run) and `ringlog-nemesis` (long runs); both
//! include this directory and `tests/cluster/harness.rs` by path. Documented in
//! tests/README.md.

#![allow(dead_code)]

mod availability;
mod check;
mod disk;
mod events;
mod options;
mod payload;
mod rig;
mod writers;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

#[allow(unused_imports)] // used by `ringlog-nemesis`, not by the test
pub use options::{EventKind, Options, USAGE};

use rig::Rig;
use writers::Writers;

/// Bound on the final convergence after all nodes restarted.
const FINAL_CONVERGE_BOUND: Duration = Duration::from_secs(120);
/// Example lines kept per run (the counts are exact).
const DETAILS_MAX: usize = 40;

/// Counts of what must never happen (all zero in a clean run).
#[derive(Debug, Default)]
pub struct Anomalies {
    /// Acknowledged records at their acknowledged offset, byte-identical, on none of the
    /// replicas read (at least two: a majority; each counted once).
    pub lost: u64,
    /// Acknowledged records not on the one replica that could be read (the others were not).
    pub unverified: u64,
    /// Acknowledged records there on some readable replicas but not on all.
    pub missing: u64,
    /// Values present twice in a partition's committed log.
    pub duplicated: u64,
    /// Offsets holding a value no writer sent (or corrupt bytes).
    pub never_sent: u64,
    /// Partitions whose replicas' committed logs differ.
    pub divergent: u64,
    /// Fetches that returned a batch failing its checksums.
    pub corrupt_returned: u64,
    /// Replica reads that failed.
    pub unreadable: u64,
    /// Partitions that did not converge after the final restart.
    pub unconverged: u64,
    /// Stretches > 5 s without acknowledgements while a majority was healthy.
    pub unavailable_windows: Vec<availability::Window>,
    /// Node exits the nemesis did not cause (panics, fatal storage errors, failed starts, a
    /// graceful stop that did not exit 0).
    pub unexpected_exits: Vec<String>,
    /// Recoveries that did not finish within the bound (the cluster is restarted once; the
    /// fault phase ends if that does not heal it).
    pub stuck: Vec<String>,
    /// Acknowledgements whose offsets did not match their batch.
    pub bad_acks: u64,
}

impl Anomalies {
    pub fn total(&self) -> u64 {
        self.lost
            + self.unverified
            + self.missing
            + self.duplicated
            + self.never_sent
            + self.divergent
            + self.corrupt_returned
            + self.unreadable
            + self.unconverged
            + self.unavailable_windows.len() as u64
            + self.unexpected_exits.len() as u64
            + self.stuck.len() as u64
            + self.bad_acks
    }
}

/// What a run did and found.
#[derive(Debug, Default)]
pub struct Report {
    pub seed: u64,
    pub replay_args: String,
    pub events: BTreeMap<EventKind, u64>,
    pub skipped: BTreeMap<EventKind, u64>,
    pub records_acked: u64,
    pub produce_failures: u64,
    pub anomalies: Anomalies,
    /// Examples of the anomalies (at most `DETAILS_MAX`).
    pub details: Vec<String>,
    /// Remarks (an event kind dropped, and why).
    pub notes: Vec<String>,
    pub elapsed: Duration,
}

impl Report {
    pub fn is_clean(&self) -> bool {
        self.anomalies.total() == 0
    }

    fn anomaly_detail(&mut self, line: String) {
        if self.details.len() < DETAILS_MAX {
            self.details.push(line);
        }
    }

    fn unexpected_exit(&mut self, what: String) {
        eprintln!("nemesis: unexpected exit: {what}");
        self.anomalies.unexpected_exits.push(what);
    }

    /// The one-line summary.
    pub fn summary(&self) -> String {
        let events: Vec<String> =
            self.events.iter().map(|(k, n)| format!("{}={n}", k.name())).collect();
        let skipped: Vec<String> =
            self.skipped.iter().map(|(k, n)| format!("{}={n}", k.name())).collect();
        let a = &self.anomalies;
        format!(
            "nemesis summary: seed={} elapsed={:.0?} events: {} (skipped: {}) | records acked={} \
             produce failures={} | anomalies={}: lost={} unverified={} missing-on-a-replica={} \
             duplicated={} \
             never-sent={} \
             divergent={} corrupt-returned={} unreadable={} unconverged={} \
             unavailable-windows>5s={} unexpected-exits={} stuck={} bad-acks={}",
            self.seed,
            self.elapsed,
            events.join(" "),
            if skipped.is_empty() { "none".to_string() } else { skipped.join(" ") },
            self.records_acked,
            self.produce_failures,
            a.total(),
            a.lost,
            a.unverified,
            a.missing,
            a.duplicated,
            a.never_sent,
            a.divergent,
            a.corrupt_returned,
            a.unreadable,
            a.unconverged,
            a.unavailable_windows.len(),
            a.unexpected_exits.len(),
            a.stuck.len(),
            a.bad_acks,
        )
    }

    /// Summary, replay command, notes and anomaly examples.
    pub fn full(&self) -> String {
        let mut out = self.summary();
        let _ = write!(
            out,
            "\nnemesis replay: cargo build --bin ringlog --bin ringlog-nemesis && \
             target/debug/ringlog-nemesis {}",
            self.replay_args
        );
        for note in &self.notes {
            let _ = write!(out, "\nnemesis note: {note}");
        }
        for w in &self.anomalies.unavailable_windows {
            let _ = write!(
                out,
                "\nnemesis anomaly: partition {} had no acknowledgement for {:.1?} from {:.1}s \
                 while a majority was healthy",
                w.partition,
                w.length,
                w.start_ms as f64 / 1000.0
            );
        }
        for line in self.anomalies.unexpected_exits.iter().chain(&self.anomalies.stuck) {
            let _ = write!(out, "\nnemesis anomaly: {line}");
        }
        for line in &self.details {
            let _ = write!(out, "\nnemesis anomaly: {line}");
        }
        out
    }
}

/// Runs a soak; never panics on an anomaly (they are in the report). `interrupt` (set from
/// a signal handler) ends the fault phase early; the final check still runs.
pub fn run(options: &Options, interrupt: &AtomicBool) -> Report {
    let started = Instant::now();
    let mut options = options.clone();
    let mut report = Report { seed: options.seed, ..Report::default() };
    let mut rig = Rig::start(&mut options, &mut report);
    report.replay_args = options.to_args();
    eprintln!(
        "nemesis: seed {} ({}), cluster {}; replay: ringlog-nemesis {}",
        options.seed,
        options.events.iter().map(|k| k.name()).collect::<Vec<_>>().join(","),
        rig.cluster.dir.display(),
        report.replay_args
    );
    if let Err((last, _)) = rig.wait_healthy(events::HEAL_BOUND, &mut report) {
        report.anomalies.stuck.push(format!("the new cluster did not elect leaders: {last}"));
    }
    let writers = Writers::start(&options, rig.bootstrap());
    let monitor = availability::Monitor::start(writers.progress.clone(), rig.impaired.clone());
    if report.anomalies.stuck.is_empty() {
        events::run(&mut rig, &options, interrupt, &mut report);
    }
    rig.context = "the final stop of the writers".to_string();
    report.anomalies.unavailable_windows = monitor.stop();
    let logs = writers.stop();
    for log in &logs {
        report.records_acked += log.acks.iter().map(|a| u64::from(a.count)).sum::<u64>();
        report.produce_failures += log.failures;
        report.anomalies.bad_acks += log.bad_acks.len() as u64;
        for line in &log.bad_acks {
            report.anomaly_detail(format!("bad ack: {line}"));
        }
    }
    heal_and_restart(&mut rig, &mut report);
    let unconverged = rig.wait_converged(FINAL_CONVERGE_BOUND, &mut report);
    report.anomalies.unconverged = unconverged.len() as u64;
    for line in unconverged {
        report.anomaly_detail(line);
    }
    check::check(&rig, options.seed, &logs, &mut report);
    report.elapsed = started.elapsed();
    if !report.is_clean() || options.keep_dir {
        rig.cluster.keep_dir();
    }
    drop(rig);
    eprintln!("{}", report.full());
    report
}

/// Heals every fault (SIGCONT, disks emptied), then kills all three nodes at once and starts
/// them again: the check reads what recovery brings back.
fn heal_and_restart(rig: &mut Rig, report: &mut Report) {
    rig.context = "the final heal and restart".to_string();
    for id in rig.ids() {
        if rig.cluster.nodes[&id].is_paused() {
            rig.signal(id, "CONT");
        }
    }
    let disks: Vec<u32> = rig.disks.keys().copied().collect();
    for id in disks {
        if let Err(why) = rig.disks[&id].unfill() {
            report.notes.push(format!("emptying node {id}'s disk: {why}"));
        }
    }
    events::restart_all(rig, report);
}
