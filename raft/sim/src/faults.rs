//! Fault scheduler: decides, from the run's seed, which fault strikes at each step.
//!
//! At most one fault per step (with probability `fault_probability`), picked uniformly among
//! the kinds that are enabled and possible right now; stopped nodes also come back on their
//! own (`restart_probability` per step). The scheduler keeps the run inside the fault model of
//! design.md §2: disk damage (bit flips, wipes and torn writes, each of which leaves a replica
//! `damaged` until repaired under the recovery rule, docs/format.md "Recovery outcomes") is
//! only injected while fewer than a minority of replicas are impaired, since the simultaneous
//! loss of a majority's disks is not covered; past that budget a crash loses whole unsynced
//! writes. Besides the faults drawn per step, `crash_after_vote` may crash a node right after
//! its vote left (the world asks it for every granted vote). A full disk (ENOSPC for a span of
//! steps, on any node) is drawn from a stream of its own (`DISK_FULL_PROBABILITY` per step),
//! so that the other faults' schedules stay what they were before it existed; it is not
//! damage (nothing is lost, the node votes and serves) and takes no part in the damage budget.
//!
//! Invariants: every choice comes from the scheduler's own RNG (seeded from the run's seed).

use rand::rngs::SmallRng;
use rand::Rng;

use crate::network::NetworkWeather;
use ringlog_raft::types::NodeId;

/// Probability per step that one node's disk fills (`FaultConfig::disk_full`).
pub const DISK_FULL_PROBABILITY: f64 = 0.0015;
/// Steps a disk stays full: uniform in this range (1 to 15 election timeouts).
pub const DISK_FULL_STEPS: std::ops::RangeInclusive<u64> = 20..=300;

/// Which fault kinds a run injects, and how often.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FaultConfig {
    /// Probability that a fault strikes in a step.
    pub fault_probability: f64,
    /// Probability per step that a stopped node restarts.
    pub restart_probability: f64,
    /// Crash (kill -9 / power loss) of a running node: unsynced writes may be lost.
    pub crashes: bool,
    /// A crash may tear the last write that reached the disk.
    pub torn_writes: bool,
    /// A node's next fdatasync fails (fatal: the node stops).
    pub fsync_failures: bool,
    /// A node's fsyncs become slow for a while.
    pub slow_fsyncs: bool,
    /// Bit flips at rest in a stopped node's durable records or hard state.
    pub bit_flips: bool,
    /// A stopped node's disk is wiped.
    pub wipes: bool,
    /// Symmetric partitions (a node isolated, or the cluster split in two).
    pub partitions: bool,
    /// One-way link cuts.
    pub one_way_partitions: bool,
    /// Message loss.
    pub drops: bool,
    /// Message duplication.
    pub duplicates: bool,
    /// Frames corrupted on the wire (one byte flipped; the receiver's frame checksums must
    /// catch it and the frame is lost). Strikes in stormy weather with drops: a third of
    /// the drop probability.
    pub corruption: bool,
    /// Long and uneven delays (reordering); short delays and reordering are always on.
    pub delays: bool,
    /// The client asks the leader to transfer leadership.
    pub leadership_transfers: bool,
    /// Retention deletes the oldest committed entries of a node's log (followers behind it
    /// are then restarted at the leader's log start).
    pub retention: bool,
    /// The transport reports a peer unreachable (a hint; sometimes spurious).
    pub unreachable_reports: bool,
    /// The operator removes a voter, adds it back as a learner, and the driver promotes it
    /// once the leader reports it caught up (single-server changes).
    pub membership_changes: bool,
    /// A node's disk is full for a span of steps (ENOSPC: appends held or refused, never
    /// fatal), sometimes restarted by its supervisor meanwhile; then space is back.
    pub disk_full: bool,
}

impl FaultConfig {
    /// Every fault kind on.
    pub fn all() -> FaultConfig {
        FaultConfig {
            fault_probability: 0.02,
            restart_probability: 0.01,
            crashes: true,
            torn_writes: true,
            fsync_failures: true,
            slow_fsyncs: true,
            bit_flips: true,
            wipes: true,
            partitions: true,
            one_way_partitions: true,
            drops: true,
            duplicates: true,
            corruption: true,
            delays: true,
            leadership_transfers: true,
            retention: true,
            unreachable_reports: true,
            membership_changes: true,
            disk_full: true,
        }
    }

    /// No faults at all (a calm network still reorders through its short random delays).
    pub fn none() -> FaultConfig {
        FaultConfig {
            fault_probability: 0.0,
            restart_probability: 0.0,
            crashes: false,
            torn_writes: false,
            fsync_failures: false,
            slow_fsyncs: false,
            bit_flips: false,
            wipes: false,
            partitions: false,
            one_way_partitions: false,
            drops: false,
            duplicates: false,
            corruption: false,
            delays: false,
            leadership_transfers: false,
            retention: false,
            unreachable_reports: false,
            membership_changes: false,
            disk_full: false,
        }
    }
}

/// One fault, as the world applies it.
#[derive(Clone, Debug, PartialEq)]
pub enum Fault {
    /// Kill -9 or power loss. `tear`: the last write that landed may be torn; `rot`: the
    /// disk also comes back with a flipped bit at rest (log or hard state); `bounce`: a
    /// supervisor restarts the node in the same step. Torn writes and rot are disk damage:
    /// the world applies them only within the damage budget.
    Crash {
        node: NodeId,
        tear: bool,
        rot: bool,
        /// The disk is wiped (a replaced drive), within the damage budget.
        wipe: bool,
        bounce: bool,
    },
    /// Two nodes lose power at once (a rack): each crash as `Crash` (tears within the damage
    /// budget); with `rot`, the first of them comes back with a flipped bit at rest.
    PowerLoss {
        nodes: [NodeId; 2],
        tears: [bool; 2],
        rot: bool,
    },
    Restart {
        node: NodeId,
    },
    FailNextFsync {
        node: NodeId,
    },
    SlowFsyncs {
        node: NodeId,
        steps: u64,
    },
    FlipBitAtRest {
        node: NodeId,
    },
    Wipe {
        node: NodeId,
    },
    Isolate {
        node: NodeId,
    },
    Split {
        side: Vec<NodeId>,
    },
    CutOneWay {
        from: NodeId,
        to: NodeId,
    },
    Heal,
    Weather(NetworkWeather),
    TransferLeadership {
        to: NodeId,
    },
    /// A stale leader meets a wiped voter (Alagappan et al., FAST 2018): the leader hands the
    /// leadership to `to` while every link into it is cut, so it never hears the new term
    /// and, once the hand-off times out, leads on in its old term; the next voter that grants
    /// `to` its vote crashes and comes back wiped (within the damage budget), having forgotten
    /// the term it voted in, with its link to the stale leader restored and `to`'s link to it
    /// cut. The stale leader is the first leader it meets; the rule that it learns the highest
    /// term from a majority of the other voters before any repair keeps the stale leader from
    /// counting it.
    StaleLeader {
        to: NodeId,
    },
    Retention {
        node: NodeId,
    },
    Unreachable {
        node: NodeId,
        peer: NodeId,
    },
    /// `node`'s disk is full for `steps` steps (running or stopped); with `bounce_after`, the
    /// node (if running) is killed and restarted by its supervisor that many steps in, while
    /// the disk is still full (a restart on a full disk: what it held for space is lost).
    DiskFull {
        node: NodeId,
        steps: u64,
        bounce_after: Option<u64>,
    },
    /// Remove a random voter if all nodes are voters (and the damage budget allows), else add
    /// the missing node back as a learner.
    ChangeMembership {
        victim: NodeId,
    },
}

/// What the scheduler may look at.
#[derive(Clone, Debug)]
pub struct FaultView {
    /// `up[i]`: node `i + 1` is running.
    pub up: Vec<bool>,
    /// More disk damage stays within the fault model.
    pub damage_allowed: bool,
    pub any_link_cut: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Crash,
    PowerLoss,
    FsyncFailure,
    SlowFsyncs,
    BitFlip,
    Wipe,
    Partition,
    OneWay,
    Heal,
    Weather,
    Transfer,
    Retention,
    Unreachable,
    Membership,
    StaleLeader,
}

/// The fault scheduler of one run.
#[derive(Debug)]
pub struct FaultScheduler {
    config: FaultConfig,
    rng: SmallRng,
    /// The full-disk draws (a stream of their own: module doc).
    space_rng: SmallRng,
}

impl FaultScheduler {
    pub fn new(config: FaultConfig, rng: SmallRng, space_rng: SmallRng) -> FaultScheduler {
        FaultScheduler { config, rng, space_rng }
    }

    /// The faults of this step (restarts first).
    pub fn faults(&mut self, view: &FaultView) -> Vec<Fault> {
        let mut out = Vec::new();
        let mut view = view.clone();
        for i in 0..view.up.len() {
            if !view.up[i] && self.rng.gen_bool(self.config.restart_probability) {
                out.push(Fault::Restart { node: NodeId(i as u32 + 1) });
                // The fault below is picked knowing this node runs again.
                view.up[i] = true;
            }
        }
        if self.config.fault_probability > 0.0 && self.rng.gen_bool(self.config.fault_probability) {
            if let Some(fault) = self.pick(&view) {
                out.push(fault);
            }
        }
        let n = view.up.len();
        if self.config.disk_full && n > 0 && self.space_rng.gen_bool(DISK_FULL_PROBABILITY) {
            let node = NodeId(self.space_rng.gen_range(1..=n as u32));
            let steps = self.space_rng.gen_range(DISK_FULL_STEPS);
            let bounce_after =
                self.space_rng.gen_bool(0.25).then(|| self.space_rng.gen_range(1..steps));
            out.push(Fault::DiskFull { node, steps, bounce_after });
        }
        out
    }

    /// Whether `node`, which just granted a vote, crashes now (one time in four, if crashes
    /// are on), and how: rot at rest one time in two, a wiped disk one time in four, an
    /// immediate restart one time in two.
    pub fn crash_after_vote(&mut self, node: NodeId) -> Option<Fault> {
        let c = self.config;
        if !c.crashes || !self.rng.gen_bool(0.25) {
            return None;
        }
        let damage = self.rng.gen_range(0..4);
        Some(Fault::Crash {
            node,
            tear: false,
            rot: c.bit_flips && damage < 2,
            wipe: c.wipes && damage == 2,
            bounce: self.rng.gen_bool(0.5),
        })
    }

    fn pick(&mut self, view: &FaultView) -> Option<Fault> {
        let c = self.config;
        let n = view.up.len();
        let up: Vec<NodeId> = ids(view, true);
        let down: Vec<NodeId> = ids(view, false);
        let majority = n / 2 + 1;
        let mut kinds = Vec::new();
        if c.crashes && down.len() < majority && !up.is_empty() {
            kinds.push(Kind::Crash);
        }
        if c.crashes && down.len() + 2 <= majority && up.len() >= 2 {
            kinds.push(Kind::PowerLoss);
        }
        if c.fsync_failures && !up.is_empty() {
            kinds.push(Kind::FsyncFailure);
        }
        if c.slow_fsyncs && !up.is_empty() {
            kinds.push(Kind::SlowFsyncs);
        }
        if c.bit_flips && view.damage_allowed && !down.is_empty() {
            kinds.push(Kind::BitFlip);
        }
        if c.wipes && view.damage_allowed && !down.is_empty() {
            kinds.push(Kind::Wipe);
        }
        if c.partitions {
            kinds.push(Kind::Partition);
        }
        if c.one_way_partitions {
            kinds.push(Kind::OneWay);
        }
        if view.any_link_cut {
            kinds.push(Kind::Heal);
        }
        if c.drops || c.duplicates || c.delays {
            kinds.push(Kind::Weather);
        }
        if c.leadership_transfers {
            kinds.push(Kind::Transfer);
        }
        if c.leadership_transfers
            && c.one_way_partitions
            && c.wipes
            && c.crashes
            && view.damage_allowed
            && down.is_empty()
        {
            kinds.push(Kind::StaleLeader);
        }
        if c.retention && !up.is_empty() {
            kinds.push(Kind::Retention);
        }
        if c.unreachable_reports && !up.is_empty() && n > 1 {
            kinds.push(Kind::Unreachable);
        }
        if c.membership_changes && n > 1 {
            kinds.push(Kind::Membership);
        }
        if kinds.is_empty() {
            return None;
        }
        let kind = kinds[self.rng.gen_range(0..kinds.len())];
        let any = |rng: &mut SmallRng| NodeId(rng.gen_range(1..=n as u32));
        Some(match kind {
            Kind::Crash => {
                let node = up[self.rng.gen_range(0..up.len())];
                Fault::Crash {
                    node,
                    tear: c.torn_writes && self.rng.gen_bool(0.25),
                    rot: c.bit_flips && self.rng.gen_bool(0.5),
                    wipe: false,
                    bounce: self.rng.gen_bool(0.5),
                }
            }
            Kind::PowerLoss => {
                let first = self.rng.gen_range(0..up.len());
                let second = (first + self.rng.gen_range(1..up.len())) % up.len();
                Fault::PowerLoss {
                    nodes: [up[first], up[second]],
                    tears: [
                        c.torn_writes && self.rng.gen_bool(0.25),
                        c.torn_writes && self.rng.gen_bool(0.25),
                    ],
                    rot: c.bit_flips && self.rng.gen_bool(0.5),
                }
            }
            Kind::FsyncFailure => {
                Fault::FailNextFsync { node: up[self.rng.gen_range(0..up.len())] }
            }
            Kind::SlowFsyncs => Fault::SlowFsyncs {
                node: up[self.rng.gen_range(0..up.len())],
                steps: self.rng.gen_range(20..=300),
            },
            Kind::BitFlip => Fault::FlipBitAtRest { node: down[self.rng.gen_range(0..down.len())] },
            Kind::Wipe => Fault::Wipe { node: down[self.rng.gen_range(0..down.len())] },
            Kind::Partition => {
                if self.rng.gen_bool(0.5) {
                    Fault::Isolate { node: any(&mut self.rng) }
                } else {
                    let side: Vec<NodeId> =
                        (1..=n as u32).map(NodeId).filter(|_| self.rng.gen_bool(0.5)).collect();
                    Fault::Split { side }
                }
            }
            Kind::OneWay => {
                let from = any(&mut self.rng);
                let mut to = any(&mut self.rng);
                if to == from {
                    to = NodeId(to.0 % n as u32 + 1);
                }
                Fault::CutOneWay { from, to }
            }
            Kind::Heal => Fault::Heal,
            Kind::Weather => Fault::Weather(self.weather()),
            Kind::Transfer => Fault::TransferLeadership { to: any(&mut self.rng) },
            Kind::StaleLeader => Fault::StaleLeader { to: any(&mut self.rng) },
            Kind::Retention => Fault::Retention { node: up[self.rng.gen_range(0..up.len())] },
            Kind::Membership => Fault::ChangeMembership { victim: any(&mut self.rng) },
            Kind::Unreachable => {
                let node = up[self.rng.gen_range(0..up.len())];
                let peer = NodeId((node.0 + self.rng.gen_range(0..n as u32 - 1)) % n as u32 + 1);
                Fault::Unreachable { node, peer }
            }
        })
    }

    fn weather(&mut self) -> NetworkWeather {
        let c = self.config;
        let mut w = NetworkWeather::CALM;
        if self.rng.gen_bool(0.3) {
            return w;
        }
        if c.drops && self.rng.gen_bool(0.6) {
            w.drop_probability = self.rng.gen_range(0.01..0.3);
            // No draw of its own: the fault schedules stay what they were before corruption.
            if c.corruption {
                w.corrupt_probability = w.drop_probability / 3.0;
            }
        }
        if c.duplicates && self.rng.gen_bool(0.5) {
            w.duplicate_probability = self.rng.gen_range(0.01..0.2);
        }
        if c.delays && self.rng.gen_bool(0.5) {
            w.delay_min_steps = self.rng.gen_range(1..=3);
            w.delay_max_steps = w.delay_min_steps + self.rng.gen_range(2..=25);
        }
        w
    }
}

fn ids(view: &FaultView, up: bool) -> Vec<NodeId> {
    view.up
        .iter()
        .enumerate()
        .filter(|(_, u)| **u == up)
        .map(|(i, _)| NodeId(i as u32 + 1))
        .collect()
}
