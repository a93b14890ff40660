//! The nemesis loop: a seeded schedule of faults. Each event injects one fault, holds it,
//! heals it, and then the loop waits (bounded) until every node is up and caught up before
//! the next one, so a majority is never impaired by more than the event itself, and disk
//! events hit one node while the other two are healthy.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use ringlog_net::PartitionId;

use super::disk;
use super::options::{EventKind, Options};
use super::rig::Rig;
use super::Report;

/// Bound on the recovery after one event (every node up, elected, caught up).
pub const HEAL_BOUND: Duration = Duration::from_secs(60);
/// Bound on a graceful stop (the node drains for up to 5 s and hands off leadership).
const GRACEFUL_STOP_MAX: Duration = Duration::from_secs(30);

/// Runs events until `options.duration` has passed or `interrupt` is set. Stops early if the
/// cluster does not heal (see `heal`).
pub fn run(rig: &mut Rig, options: &Options, interrupt: &AtomicBool, report: &mut Report) {
    let mut rng = SmallRng::seed_from_u64(options.seed ^ 0x4E45_4D45_5349_5321);
    let kinds: Vec<EventKind> = options.events.iter().copied().collect();
    let start = Instant::now();
    let mut number = 0u32;
    while start.elapsed() < options.duration && !interrupt.load(Ordering::Relaxed) {
        let quiet = Duration::from_millis(rng.gen_range(300..1500));
        rig.hold(quiet, report);
        let kind = kinds[rng.gen_range(0..kinds.len())];
        let partition = PartitionId(rng.gen_range(0..options.partitions));
        number += 1;
        rig.context = format!("event #{number} {} on {partition}", kind.name());
        let at = start.elapsed().as_secs_f64();
        match execute(rig, kind, partition, &mut rng, report) {
            Ok(what) => {
                *report.events.entry(kind).or_default() += 1;
                eprintln!("nemesis [{at:7.1}s] #{number} {}: {what}", kind.name());
            }
            Err(why) => {
                *report.skipped.entry(kind).or_default() += 1;
                eprintln!("nemesis [{at:7.1}s] #{number} {} skipped: {why}", kind.name());
            }
        }
        if !heal(rig, report) {
            eprintln!("nemesis: the cluster did not heal; ending the fault phase");
            return;
        }
    }
}

/// Waits for the cluster to heal. A node still behind after `HEAL_BOUND` is a `stuck`
/// anomaly; then the whole cluster is restarted once (kill -9 of all three, as an operator
/// might; restarting only the stuck follower does not unstick it today), and the fault phase
/// goes on only if that heals it.
fn heal(rig: &mut Rig, report: &mut Report) -> bool {
    let (last, behind) = match rig.wait_healthy(HEAL_BOUND, report) {
        Ok(took) => {
            eprintln!("nemesis           healthy again after {took:.1?}");
            return true;
        }
        Err(stuck) => stuck,
    };
    report.anomalies.stuck.push(format!(
        "after {}: nodes {behind:?} not healed within {HEAL_BOUND:?}: {last}",
        rig.context
    ));
    eprintln!("nemesis: nodes {behind:?} not healed within {HEAL_BOUND:?}; restarting all");
    rig.context = format!("{} (restart after it got stuck)", rig.context);
    restart_all(rig, report);
    match rig.wait_healthy(HEAL_BOUND, report) {
        Ok(took) => {
            eprintln!("nemesis           healthy again after the restart, {took:.1?}");
            true
        }
        Err((last, behind)) => {
            report.anomalies.stuck.push(format!(
                "after {}: nodes {behind:?} not healed within {HEAL_BOUND:?}: {last}",
                rig.context
            ));
            false
        }
    }
}

/// kill -9 every node, then start them all.
pub fn restart_all(rig: &mut Rig, report: &mut Report) {
    for id in rig.ids() {
        rig.kill(id);
    }
    for id in rig.ids() {
        rig.spawn(id);
    }
    for id in rig.ids() {
        rig.wait_started(id, report);
    }
}

fn millis(rng: &mut SmallRng, range: std::ops::Range<u64>) -> Duration {
    Duration::from_millis(rng.gen_range(range))
}

fn execute(
    rig: &mut Rig,
    kind: EventKind,
    partition: PartitionId,
    rng: &mut SmallRng,
    report: &mut Report,
) -> Result<String, String> {
    let ids = rig.ids();
    match kind {
        EventKind::KillLeader => {
            let leader = rig.leader_of(partition).ok_or("no leader found")?;
            crash_and_restart(rig, leader, millis(rng, 200..2000), report);
            Ok(format!("kill -9 node {leader} (leader of {partition})"))
        }
        EventKind::KillFollower => {
            let follower = follower_of(rig, partition, rng)?;
            crash_and_restart(rig, follower, millis(rng, 200..2000), report);
            Ok(format!("kill -9 node {follower} (follower of {partition})"))
        }
        EventKind::Pause => {
            let id = ids[rng.gen_range(0..ids.len())];
            let hold = millis(rng, 1000..6000);
            rig.impair(id);
            rig.signal(id, "STOP");
            rig.hold(hold, report);
            rig.signal(id, "CONT");
            Ok(format!("SIGSTOP node {id} for {hold:?}"))
        }
        EventKind::KillTwo => {
            let first = ids[rng.gen_range(0..ids.len())];
            let others: Vec<u32> = ids.iter().copied().filter(|i| *i != first).collect();
            let second = others[rng.gen_range(0..others.len())];
            let hold = millis(rng, 200..2000);
            rig.kill(first);
            rig.kill(second);
            rig.hold(hold, report);
            rig.spawn(first);
            rig.spawn(second);
            rig.wait_started(first, report);
            rig.wait_started(second, report);
            Ok(format!("kill -9 nodes {first} and {second} for {hold:?}"))
        }
        EventKind::GracefulRestart => {
            let id = ids[rng.gen_range(0..ids.len())];
            let exit = graceful_stop(rig, id, report);
            rig.hold(millis(rng, 200..1000), report);
            rig.start_node(id, report);
            Ok(format!("SIGTERM node {id}: {exit}"))
        }
        EventKind::Wipe | EventKind::WipeCrash => {
            let follower = follower_of(rig, partition, rng)?;
            rig.kill(follower);
            disk::wipe(&rig.cluster.nodes[&follower].data_dir)?;
            let mut what =
                format!("wiped the data dir of node {follower} (follower of {partition})");
            if kind == EventKind::WipeCrash {
                let after = millis(rng, 20..150);
                rig.spawn(follower);
                std::thread::sleep(after);
                rig.kill(follower);
                what.push_str(&format!(", kill -9 {after:?} into its first start"));
            }
            rig.hold(millis(rng, 200..1500), report);
            rig.start_node(follower, report);
            Ok(what)
        }
        EventKind::FlipTail | EventKind::FlipSealed | EventKind::FlipHardState => {
            flip_event(rig, kind, partition, rng, report)
        }
        EventKind::Partition => {
            let (id, role) = if rng.gen_bool(0.5) {
                (rig.leader_of(partition).ok_or("no leader found")?, "leader")
            } else {
                (follower_of(rig, partition, rng)?, "follower")
            };
            let others: Vec<u32> = ids.iter().copied().filter(|i| *i != id).collect();
            let hold = millis(rng, 1000..4000);
            rig.impair(id);
            let cut = others.iter().try_for_each(|&other| rig.cut(id, other));
            if cut.is_ok() {
                rig.hold(hold, report);
            }
            let healed = others.iter().try_for_each(|&other| rig.heal(id, other));
            cut.and(healed)?;
            Ok(format!("cut node {id} ({role} of {partition}) off the others for {hold:?}"))
        }
        EventKind::CutLink => {
            let a = ids[rng.gen_range(0..ids.len())];
            let others: Vec<u32> = ids.iter().copied().filter(|i| *i != a).collect();
            let b = others[rng.gen_range(0..others.len())];
            let hold = millis(rng, 1000..4000);
            rig.impair(a);
            rig.impair(b);
            let cut = rig.cut(a, b);
            if cut.is_ok() {
                rig.hold(hold, report);
            }
            let healed = rig.heal(a, b);
            cut.and(healed)?;
            Ok(format!("cut the link between nodes {a} and {b} for {hold:?}"))
        }
        EventKind::FillDisk => {
            let follower = follower_of(rig, partition, rng)?;
            let disk = rig.disks.get(&follower).ok_or("no loop disk")?;
            rig.impair(follower);
            let taken = disk.fill()?;
            let hold = millis(rng, 3000..8000);
            rig.hold(hold, report);
            rig.disks[&follower].unfill()?;
            Ok(format!(
                "filled the disk of node {follower} (follower of {partition}; {} MiB) for {hold:?}",
                taken >> 20
            ))
        }
    }
}

/// Bound on the flipped node finding a bit flipped in one of its sealed segments (its scrub
/// reads the committed log at 8 MiB/s per partition from its restart; a 30-minute run's
/// partitions hold some 100 MiB): until then no other disk event may strike, since latent rot
/// on one replica plus a wiped other is two damaged disks, outside the fault model.
const SCRUB_FIND_BOUND: Duration = Duration::from_secs(120);
/// What a node logs when a read, a send or its scrub meets a corrupt batch.
const CORRUPTION_FOUND: &str = "corrupt batch found at run time";

/// Lines of node `id`'s log that report run-time corruption in `partition`.
fn corruption_reports(rig: &Rig, id: u32, partition: PartitionId) -> usize {
    let Ok(bytes) = std::fs::read(&rig.cluster.nodes[&id].log_path) else { return 0 };
    let text = String::from_utf8_lossy(&bytes);
    let field = format!("partition={partition}");
    text.lines()
        .map(strip_ansi)
        .filter(|l| l.contains(CORRUPTION_FOUND) && l.contains(&field))
        .count()
}

/// The line without its terminal colour sequences (ESC `[` ... `m`).
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// kill -9 a follower, flip a bit in its files of `partition`, restart it; then, half of the
/// time, kill -9 the partition's leader while the flipped node may still be short (a crash of
/// a second node is in the fault model, a second damaged disk is not).
fn flip_event(
    rig: &mut Rig,
    kind: EventKind,
    partition: PartitionId,
    rng: &mut SmallRng,
    report: &mut Report,
) -> Result<String, String> {
    let follower = follower_of(rig, partition, rng)?;
    let reported = corruption_reports(rig, follower, partition);
    rig.kill(follower);
    let dir = rig.cluster.nodes[&follower].data_dir.join(partition.0.to_string());
    let flipped = match kind {
        EventKind::FlipTail => disk::flip_tail(&dir, rng),
        EventKind::FlipSealed => disk::flip_sealed(&dir, rng),
        _ => disk::flip_hard_state(&dir, rng),
    };
    rig.start_node(follower, report);
    if kind == EventKind::FlipSealed && flipped.is_ok() {
        // Rot in a sealed segment stays latent until a read, a send or the scrub meets it;
        // wait until the node has found it before anything else may impair another replica.
        let started = Instant::now();
        while corruption_reports(rig, follower, partition) <= reported {
            if started.elapsed() > SCRUB_FIND_BOUND {
                report.anomalies.stuck.push(format!(
                    "node {follower} did not find the bit flipped in a sealed segment of \
                     {partition} within {SCRUB_FIND_BOUND:?} (scrub)"
                ));
                break;
            }
            rig.hold(Duration::from_millis(200), report);
        }
        eprintln!(
            "nemesis           node {follower} found the flip after {:.1?}",
            started.elapsed()
        );
    }
    let mut what = format!("node {follower} (follower of {partition}): {}", flipped?);
    if rng.gen_bool(0.5) {
        rig.hold(millis(rng, 300..1500), report);
        if let Some(leader) = rig.leader_of(partition).filter(|l| *l != follower) {
            let hold = millis(rng, 1000..3000);
            crash_and_restart(rig, leader, hold, report);
            what.push_str(&format!("; then kill -9 leader {leader} for {hold:?}"));
        }
    }
    Ok(what)
}

fn crash_and_restart(rig: &mut Rig, id: u32, hold: Duration, report: &mut Report) {
    rig.kill(id);
    rig.hold(hold, report);
    rig.start_node(id, report);
}

/// A follower of `partition` (a random non-leader if the leader is known, else any node).
fn follower_of(rig: &Rig, partition: PartitionId, rng: &mut SmallRng) -> Result<u32, String> {
    let leader = rig.leader_of(partition).ok_or("no leader found")?;
    let followers: Vec<u32> = rig.ids().into_iter().filter(|id| *id != leader).collect();
    Ok(followers[rng.gen_range(0..followers.len())])
}

/// SIGTERM and wait for the exit; anything but exit 0 within the bound is reported.
fn graceful_stop(rig: &mut Rig, id: u32, report: &mut Report) -> String {
    rig.impair(id);
    rig.mark_stopping(id);
    if !rig.cluster.nodes[&id].is_running() {
        return "was not running".to_string();
    }
    rig.signal(id, "TERM");
    let start = Instant::now();
    while start.elapsed() < GRACEFUL_STOP_MAX {
        if let Some(status) = rig.cluster.poll_exit(id) {
            if status.code() != Some(0) {
                report.unexpected_exit(format!("graceful stop of node {id}: exited with {status}"));
            }
            return format!("exited with {status} after {:.1?}", start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    report.unexpected_exit(format!(
        "graceful stop of node {id}: still running after {GRACEFUL_STOP_MAX:?}"
    ));
    rig.kill(id);
    format!("did not exit within {GRACEFUL_STOP_MAX:?} (killed)")
}
