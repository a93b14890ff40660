//! The simulated cluster: N real `Replica`s, one driver per node, the network, the disks, the
//! client, the fault scheduler and the checker, advanced one step at a time.
//!
//! One step: faults strike (or stopped nodes restart); messages due are delivered; fsyncs due
//! complete (and are reported); every running replica ticks; the client proposes / reads.
//! After every input the node's actions are drained and carried out **in order**, exactly as
//! the real replicator does: hard state and entries go to the node's simulated disk and are
//! reported durable only when a sync requested after them completes; `SendEntries` reads the
//! entries from the node's own written log; everything else is checked and recorded.
//!
//! A run has a faulty phase of `steps` steps, then a quiet phase: the network heals, stopped
//! nodes restart and no fault is injected. Within `liveness_steps_max` of that, a proposal
//! made in the quiet phase must be acknowledged (liveness). The quiet phase also gives every
//! full disk its space back, so that check shows the group commits again once it is.
//!
//! A full disk (`Fault::DiskFull`, the node's rule: ARCHITECTURE.md "A full disk", node
//! `replicator.rs`): a leader answers proposals and membership changes "storage full" before
//! the core holds them and hands the leadership to its most up-to-date undamaged follower (at
//! most once per election timeout); the log writes the core already asked for that need space
//! (`SimDisk::needs_space`) wait in order in the node's log worker (`SimNode::held`, with
//! everything behind them) and are written once space is back, hard state going on meanwhile;
//! nothing held is reported durable, so a follower acks only what it holds; sends, commits and
//! reads wait for what is held (a send that would read held entries is not sent: Raft resends
//! it; commit advances only over the written log; reads return only what is settled).
//!
//! Invariants: all randomness comes from the run's seed (separate streams for network,
//! disks, faults, full disks, client and replica configs); nothing iterates a hash map.

use std::collections::VecDeque;

use bytes::Bytes;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::checker::{CheckResult, Checker, Violation};
use crate::client::{Pending, SimClient};
use crate::disk::{DiskOp, RecoveredImage, SimDisk, SyncOutcome, Tear};
use crate::faults::{Fault, FaultScheduler, FaultView};
use crate::network::{InFlight, NetworkWeather, SimNetwork};
use crate::trace::{describe_action, describe_message, Trace};
use crate::wire::{self, WireEncoder, WireError};
use crate::{Mutation, RunSummary, SimOptions};
use ringlog_raft::config::{Config, Recovered};
use ringlog_raft::errors::ProposeError;
use ringlog_raft::message::{EntryKind, Membership, MembershipChange, Message};
use ringlog_raft::quorum::quorum_size;
use ringlog_raft::replica::Replica;
use ringlog_raft::types::{LogIndex, NodeId, Role, Term};
use ringlog_raft::Action;

/// Entries a read returns (the last ones through the index it is served at).
const READ_ENTRIES_MAX: u64 = 8;
/// `Fault::StaleLeader`: how long the wipe of the next voter for the transfer's target stays
/// armed (a few election timeouts of the simulated config).
const STALE_LEADER_ARM_STEPS: u64 = 100;
/// Bound on log writes one node holds for space (the core's windows bound them far below).
const HELD_OPS_MAX: usize = 100_000;

/// Per-node driver state (what the replicator of that node knows).
#[derive(Debug)]
struct SimNode {
    id: NodeId,
    replica: Option<Replica>,
    disk: SimDisk,
    /// Bumped at every restart.
    incarnation: u64,
    role: Role,
    term: Term,
    commit: LogIndex,
    /// Started damaged and not yet repaired.
    damaged: bool,
    fail_next_fsync: bool,
    slow_fsyncs_until: u64,
    /// Durability reports owed right away (the `AckBeforeDurable` mutation).
    early_reports: Vec<(LogIndex, Term)>,
    /// The membership in effect at this replica, as last reported (kept while it is down).
    membership: Membership,
    /// Learners the leader reported caught up, to promote once the current drain ends.
    promotions: Vec<NodeId>,
    /// `TermQuery` answers the driver fabricates (the `RepairFromLowerTerm` mutation).
    fake_term_answers: Vec<(NodeId, Term)>,
    /// Highest index this node's retention removed after checking every removed entry
    /// against the committed log (retention may remove acknowledged records: see
    /// `check_acked_durable`).
    compacted_checked_through: LogIndex,
    /// Log writes a full disk refused, in order, with every log write behind them (the
    /// node's log worker waiting for `Log::wait_space`); lost at a crash (never written).
    held: VecDeque<DiskOp>,
    /// The core's commit as last reported; `commit` follows it over the written log only
    /// (it waits while writes are held).
    commit_reported: LogIndex,
    /// When this node, leading on a full disk, last handed the leadership off.
    space_handoff_at: Option<u64>,
    /// `Fault::DiskFull` with a supervisor restart: the step it happens.
    full_bounce_at: Option<u64>,
}

/// The simulation of one seed.
pub struct Simulation {
    opts: SimOptions,
    now: u64,
    nodes: Vec<SimNode>,
    bootstrap: Membership,
    net: SimNetwork,
    /// Every message sent goes through net's production peer codec (`crate::wire`).
    encoder: WireEncoder,
    checker: Checker,
    client: SimClient,
    faults: FaultScheduler,
    disk_rng: SmallRng,
    client_rng: SmallRng,
    config_rng: SmallRng,
    trace: Trace,
    quiet_since: Option<u64>,
    /// Nodes that granted a vote in this step (candidates for a crash right after voting).
    /// Nodes that granted a vote in this step, and to whom.
    voted: Vec<(usize, NodeId)>,
    /// `Fault::StaleLeader`: the next voter to grant this candidate its vote (until the step)
    /// crashes and comes back wiped; the stale leader is the second field.
    wipe_next_voter_for: Option<(NodeId, NodeId, u64)>,
    crashes: u64,
    restarts: u64,
    faults_injected: u64,
    held_for_space: u64,
    /// The replicas' election timeout in steps (the hand-off for space waits that long).
    election_steps: u64,
}

impl std::fmt::Debug for Simulation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Simulation").field("seed", &self.opts.seed).field("now", &self.now).finish()
    }
}

impl Simulation {
    pub fn new(opts: SimOptions, trace: Trace) -> Simulation {
        assert!(opts.nodes >= 1, "a cluster has at least one node");
        let mut master = SmallRng::seed_from_u64(opts.seed);
        let mut fork = || SmallRng::seed_from_u64(master.gen());
        let net_rng = fork();
        let faults_rng = fork();
        let (disk_rng, client_rng, config_rng) = (fork(), fork(), fork());
        // Forked last, so that the streams above are what they were before corruption.
        let net = SimNetwork::new(opts.nodes, net_rng, fork());
        // Forked after it: the full-disk draws leave every older stream as it was.
        let faults = FaultScheduler::new(opts.faults, faults_rng, fork());
        let ids: Vec<NodeId> = (1..=opts.nodes as u32).map(NodeId).collect();
        let bootstrap = Membership { voters: ids.clone(), learners: Vec::new() };
        let nodes = ids
            .iter()
            .map(|&id| SimNode {
                id,
                replica: None,
                disk: SimDisk::new(),
                incarnation: 0,
                role: Role::Follower,
                term: Term(0),
                commit: LogIndex(0),
                damaged: false,
                fail_next_fsync: false,
                slow_fsyncs_until: 0,
                early_reports: Vec::new(),
                membership: bootstrap.clone(),
                promotions: Vec::new(),
                fake_term_answers: Vec::new(),
                compacted_checked_through: LogIndex(0),
                held: VecDeque::new(),
                commit_reported: LogIndex(0),
                space_handoff_at: None,
                full_bounce_at: None,
            })
            .collect();
        Simulation {
            client: SimClient::new(opts.seed),
            opts,
            now: 0,
            nodes,
            bootstrap,
            net,
            encoder: WireEncoder::new(),
            checker: Checker::new(),
            faults,
            disk_rng,
            client_rng,
            config_rng,
            trace,
            quiet_since: None,
            voted: Vec::new(),
            wipe_next_voter_for: None,
            crashes: 0,
            restarts: 0,
            faults_injected: 0,
            held_for_space: 0,
            election_steps: u64::from(Config::new(NodeId(1), 0).election_ticks)
                * opts.steps_per_tick,
        }
    }

    /// Runs the whole seed: faulty phase, quiet phase, final checks.
    pub fn run(mut self) -> Result<RunSummary, Violation> {
        for i in 0..self.nodes.len() {
            self.start_node(i)?;
        }
        while self.now < self.opts.steps {
            self.step()?;
        }
        self.begin_quiet()?;
        let deadline = self.now + self.opts.liveness_steps_max;
        let quiet_since = self.now;
        while !self.client.acked_since(quiet_since) {
            if self.now >= deadline {
                return Err(Violation {
                    step: self.now,
                    what: format!(
                        "liveness: no proposal made after the faults stopped (step {quiet_since}) \
                         was acknowledged within {} steps; roles: {}",
                        self.opts.liveness_steps_max,
                        self.roles()
                    ),
                });
            }
            self.step()?;
        }
        let acked: Vec<(LogIndex, Bytes)> =
            self.client.acked().iter().map(|a| (a.index, a.payload.clone())).collect();
        self.checker.check_acked(self.now, &acked)?;
        self.check_acked_durable(&acked)?;
        Ok(RunSummary {
            seed: self.opts.seed,
            steps: self.now,
            liveness_steps: self.now - quiet_since,
            checker: self.checker.stats,
            client: self.client.stats,
            network: self.net.stats,
            crashes: self.crashes,
            restarts: self.restarts,
            faults: self.faults_injected,
            disk_full_events: self.nodes.iter().map(|n| n.disk.stats.full_events).sum(),
            held_for_space: self.held_for_space,
        })
    }

    fn roles(&self) -> String {
        let mut out = String::new();
        for n in &self.nodes {
            let state =
                if n.replica.is_none() { "down".to_string() } else { format!("{:?}", n.role) };
            out +=
                &format!("{}={state}@{} commit={} damaged={} ", n.id, n.term, n.commit, n.damaged);
        }
        out
    }

    fn step(&mut self) -> CheckResult {
        self.now += 1;
        if self.quiet_since.is_none() {
            self.inject_faults()?;
            self.bounce_full_nodes()?;
        } else {
            // A node can still stop in the quiet phase (an fsync failure injected before it
            // completes): it comes back at once.
            for i in 0..self.nodes.len() {
                self.start_node(i)?;
            }
        }
        for i in 0..self.nodes.len() {
            self.release_held(i)?;
        }
        while let Some(flight) = self.net.next_due(self.now) {
            let i = self.slot(flight.to);
            if self.nodes[i].replica.is_none() {
                continue;
            }
            let Some(message) = self.receive(&flight)? else {
                continue;
            };
            self.trace.line(self.now, flight.to, || {
                format!("<- {} {}", flight.from, describe_message(&message))
            });
            let replica = self.nodes[i].replica.as_mut().expect("checked above");
            replica.handle_message(flight.from, message);
            self.drain(i)?;
        }
        for i in 0..self.nodes.len() {
            self.complete_syncs(i)?;
        }
        self.crash_voters()?;
        if self.now % self.opts.steps_per_tick == 0 {
            for i in 0..self.nodes.len() {
                if let Some(replica) = self.nodes[i].replica.as_mut() {
                    replica.handle_tick();
                    self.drain(i)?;
                }
            }
        }
        self.client_step()
    }

    // ---- the wire ----------------------------------------------------------------------

    /// Sends `message` as the bytes of its production frame.
    fn send(&mut self, from: NodeId, to: NodeId, message: Message) {
        let (frame, sent) = self.encoder.encode(message);
        self.net.send(self.now, from, to, frame, sent);
    }

    /// Decodes a frame that arrived. `Ok(None)`: a frame corrupted on the wire that the frame
    /// checks refused, lost as the transport loses it (it closes the connection). A frame
    /// that does not decode, or decodes into anything but what was sent, is a violation.
    fn receive(&mut self, flight: &InFlight) -> Result<Option<Message>, Violation> {
        let decoded = wire::decode(flight.frame.clone());
        let what = match decoded {
            Err(WireError::Frame(e)) if flight.corrupted => {
                self.trace.line(self.now, flight.to, || {
                    format!("<- {} lost: frame corrupted on the wire ({e})", flight.from)
                });
                return Ok(None);
            }
            Ok(message) if flight.corrupted => format!(
                "a frame from {} with a byte flipped on the wire passed the frame checks \
                 (decoded {message:?}, sent {:?})",
                flight.from, flight.sent
            ),
            Err(e) if flight.corrupted => format!(
                "a frame from {} with a byte flipped on the wire passed the frame checks \
                 and then failed: {e} (sent {:?})",
                flight.from, flight.sent
            ),
            Err(e) => format!(
                "peer codec: a frame from {} does not decode: {e} (sent {:?})",
                flight.from, flight.sent
            ),
            Ok(message) if message != flight.sent => format!(
                "peer codec round trip: {} sent {:?}, {} decoded {message:?}",
                flight.from, flight.sent, flight.to
            ),
            Ok(message) => return Ok(Some(message)),
        };
        Err(Violation { step: self.now, what })
    }

    // ---- faults ------------------------------------------------------------------------

    /// The nemesis of election bugs: sometimes a node crashes right after its vote left
    /// (and, within the damage budget, comes back with rot), often restarting at once, while
    /// the election it voted in is still running.
    fn crash_voters(&mut self) -> CheckResult {
        for (i, candidate) in std::mem::take(&mut self.voted) {
            if self.quiet_since.is_some() || self.nodes[i].replica.is_none() {
                continue;
            }
            let down = self.nodes.iter().filter(|n| n.replica.is_none()).count();
            if down + 1 > self.nodes.len() / 2 {
                continue;
            }
            let armed = self
                .wipe_next_voter_for
                .filter(|&(armed, _, until)| armed == candidate && self.now <= until);
            let fault = if let Some((_, stale, _)) = armed {
                self.wipe_next_voter_for = None;
                let node = self.nodes[i].id;
                // The wiped voter comes back heard by the stale leader and deaf to the
                // candidate it voted for, so the stale leader is the first leader it meets.
                self.net.set_cut(node, stale, false);
                self.net.set_cut(candidate, node, true);
                Some(Fault::Crash { node, tear: false, rot: false, wipe: true, bounce: true })
            } else {
                self.faults.crash_after_vote(self.nodes[i].id)
            };
            let Some(Fault::Crash { node, tear, rot, wipe, bounce }) = fault else {
                continue;
            };
            self.faults_injected += 1;
            self.trace.line(self.now, node, || {
                format!("FAULT crash after voting (rot {rot}, wipe {wipe}, bounce {bounce})")
            });
            self.crash_with_damage(i, tear, rot);
            self.wipe_within_budget(i, wipe);
            if bounce {
                self.start_node(i)?;
            }
        }
        Ok(())
    }

    /// Whether node `j` is impaired: damaged (or would recover damaged), or not a voter as far
    /// as any replica knows — in its latest membership, or in its committed one, which an
    /// uncommitted change (a node being added back) may still fall back to when the entry is
    /// lost or truncated; a stopped node, in the membership it would restart with. Disk damage and membership removals share one budget, so that a
    /// majority of the nodes always stays undamaged voters (design.md §2: the loss of a
    /// majority's disks is not covered). Without the committed membership, a node added back
    /// counted as a voter while the change could still revert: seed 12906 (3 nodes) damaged
    /// one of the two voters the group fell back to, and no leader could be elected again.
    fn impaired(&self, j: usize) -> bool {
        let n = &self.nodes[j];
        // A running node stays impaired until its repair is durable: a crash before that
        // brings it back damaged.
        let damaged = match n.replica {
            Some(_) => n.damaged || n.disk.damaged_mark_durable(),
            None => n.disk.damaged_on_recovery(),
        };
        let excluded = |m: &Membership| !m.voters.contains(&n.id);
        damaged
            || self.nodes.iter().any(|m| {
                excluded(&m.membership)
                    || match &m.replica {
                        Some(r) => excluded(r.membership_at(r.commit())),
                        // A stopped node restarts with its durable membership.
                        None => excluded(m.disk.durable_membership().unwrap_or(&self.bootstrap)),
                    }
            })
    }

    /// Impaired nodes, `except` one.
    fn impaired_count(&self, except: Option<usize>) -> usize {
        (0..self.nodes.len()).filter(|&j| Some(j) != except && self.impaired(j)).count()
    }

    /// Damage beyond a minority of replicas is outside the fault model (design.md §2).
    fn damage_budget(&self) -> usize {
        (self.nodes.len() - 1) / 2
    }

    fn inject_faults(&mut self) -> CheckResult {
        let view = FaultView {
            up: self.nodes.iter().map(|n| n.replica.is_some()).collect(),
            damage_allowed: self.impaired_count(None) < self.damage_budget(),
            any_link_cut: self.net.cut_link_count() > 0,
        };
        for fault in self.faults.faults(&view) {
            self.faults_injected += 1;
            self.apply_fault(fault)?;
        }
        Ok(())
    }

    fn apply_fault(&mut self, fault: Fault) -> CheckResult {
        let now = self.now;
        self.trace.line(now, NodeId(0), || format!("FAULT {fault:?}"));
        match fault {
            Fault::Crash { node, tear, rot, wipe, bounce } => {
                let i = self.slot(node);
                self.crash_with_damage(i, tear, rot);
                self.wipe_within_budget(i, wipe);
                if bounce {
                    self.start_node(i)?;
                }
            }
            Fault::PowerLoss { nodes, tears, rot } => {
                self.crash_with_damage(self.slot(nodes[0]), tears[0], rot);
                self.crash_with_damage(self.slot(nodes[1]), tears[1], false);
            }
            Fault::Restart { node } => self.start_node(self.slot(node))?,
            Fault::FailNextFsync { node } => {
                let i = self.slot(node);
                self.nodes[i].fail_next_fsync = true;
            }
            Fault::SlowFsyncs { node, steps } => {
                let i = self.slot(node);
                self.nodes[i].slow_fsyncs_until = now + steps;
            }
            Fault::FlipBitAtRest { node } => {
                let i = self.slot(node);
                assert!(self.nodes[i].replica.is_none(), "bit flips at rest hit stopped nodes");
                let hit = self.nodes[i].disk.flip_bit_at_rest(&mut self.disk_rng);
                self.trace.line(now, node, || format!("bit flip at rest: {hit:?}"));
            }
            Fault::Wipe { node } => {
                let i = self.slot(node);
                assert!(self.nodes[i].replica.is_none(), "wipes hit stopped nodes");
                self.nodes[i].disk.wipe();
            }
            Fault::Isolate { node } => {
                for other in 1..=self.nodes.len() as u32 {
                    if other != node.0 {
                        self.net.set_cut(node, NodeId(other), true);
                        self.net.set_cut(NodeId(other), node, true);
                    }
                }
            }
            Fault::Split { side } => {
                for a in 1..=self.nodes.len() as u32 {
                    for b in 1..=self.nodes.len() as u32 {
                        if side.contains(&NodeId(a)) != side.contains(&NodeId(b)) {
                            self.net.set_cut(NodeId(a), NodeId(b), true);
                        }
                    }
                }
            }
            Fault::CutOneWay { from, to } => self.net.set_cut(from, to, true),
            Fault::Heal => self.net.heal(),
            Fault::Weather(weather) => self.net.set_weather(weather),
            Fault::Retention { node } => self.retention(self.slot(node))?,
            Fault::DiskFull { node, steps, bounce_after } => {
                let i = self.slot(node);
                self.nodes[i].disk.fill_until(now + steps, now);
                self.nodes[i].full_bounce_at = bounce_after.map(|after| now + after);
            }
            Fault::ChangeMembership { victim } => self.change_membership(victim)?,
            Fault::Unreachable { node, peer } => {
                let i = self.slot(node);
                if let Some(replica) = self.nodes[i].replica.as_mut() {
                    replica.handle_unreachable(peer);
                    self.drain(i)?;
                }
            }
            Fault::StaleLeader { to } => {
                if let Some(i) = self.leader_slot().filter(|&i| self.nodes[i].id != to) {
                    let leader = self.nodes[i].id;
                    // Nothing tells the leader of the new term: neither the target nor (until
                    // its wipe) a voter.
                    for j in 0..self.nodes.len() {
                        let from = self.nodes[j].id;
                        if from != leader {
                            self.net.set_cut(from, leader, true);
                        }
                    }
                    self.wipe_next_voter_for = Some((to, leader, now + STALE_LEADER_ARM_STEPS));
                    let result =
                        self.nodes[i].replica.as_mut().expect("up").transfer_leadership(to);
                    self.trace.line(now, leader, || {
                        format!("stale-leader transfer to {to} ({to} -> {leader} cut): {result:?}")
                    });
                    self.drain(i)?;
                }
            }
            Fault::TransferLeadership { to } => {
                if let Some(i) = self.leader_slot() {
                    let result =
                        self.nodes[i].replica.as_mut().expect("up").transfer_leadership(to);
                    self.trace
                        .line(now, self.nodes[i].id, || format!("transfer to {to}: {result:?}"));
                    self.drain(i)?;
                }
            }
        }
        Ok(())
    }

    /// The operator's membership change, proposed to the current leader: add back a node
    /// that is not a member (as a learner), promote a learner, or remove `victim` if every
    /// node is a voter and the budget allows one more impaired replica.
    fn change_membership(&mut self, victim: NodeId) -> CheckResult {
        let Some(i) = self.leader_slot() else {
            return Ok(());
        };
        if self.nodes[i].disk.full_at(self.now) {
            // The node answers a membership change "storage full" before proposing it.
            let id = self.nodes[i].id;
            self.trace.line(self.now, id, || "membership change refused: disk full".into());
            return Ok(());
        }
        let membership = self.nodes[i].membership.clone();
        let missing = self
            .nodes
            .iter()
            .map(|n| n.id)
            .find(|id| !membership.voters.contains(id) && !membership.learners.contains(id));
        let change = match missing {
            Some(node) => MembershipChange::AddLearner(node),
            // A learner whose promotion was refused (the leader reports it caught up only
            // once per leadership): the operator retries.
            None if !membership.learners.is_empty() => {
                MembershipChange::Promote(membership.learners[0])
            }
            None if self.impaired_count(None) < self.damage_budget() => {
                MembershipChange::Remove(victim)
            }
            None => return Ok(()),
        };
        let result =
            self.nodes[i].replica.as_mut().expect("leader is up").propose_membership(change);
        let id = self.nodes[i].id;
        self.trace.line(self.now, id, || format!("propose_membership {change:?}: {result:?}"));
        self.drain(i)
    }

    /// Retention on node `i`: deletes a random prefix of its committed, durable entries.
    fn retention(&mut self, i: usize) -> CheckResult {
        let node = &self.nodes[i];
        let Some(replica) = node.replica.as_ref() else {
            return Ok(());
        };
        let lowest = node.disk.written_log_start().next();
        // As the node's `apply_retention`: within what the core counts durable too, which a
        // truncation queued behind the core's commit lowers before the disk holds the new
        // entries (seed 41430: the written log still held the old term's entries under a
        // commit the core had already advanced past them).
        let highest = replica
            .commit()
            .min(replica.durable())
            .min(node.disk.written_last().0)
            .min(node.disk.durable_last().0)
            .next();
        if lowest > highest {
            return Ok(());
        }
        let start = LogIndex(self.disk_rng.gen_range(lowest.0..=highest.0));
        self.trace.line(self.now, node.id, || format!("retention: log start moves to {start}"));
        let mut index = node.disk.written_log_start();
        while index < start {
            let entry = node.disk.written_entry(index).expect("below the written last index");
            self.checker.on_read(self.now, node.id, index, entry)?;
            index = index.next();
        }
        let node = &mut self.nodes[i];
        node.compacted_checked_through = node.compacted_checked_through.max(start.prev());
        self.write(i, DiskOp::AdvanceStart { start })?;
        self.request_sync(i, false);
        self.nodes[i].replica.as_mut().expect("up").handle_log_start(start);
        self.drain(i)
    }

    /// Whether node `i` may be damaged now (it may already be impaired itself).
    fn damage_allowed_for(&self, i: usize) -> bool {
        self.impaired_count(Some(i)) < self.damage_budget()
    }

    /// Crashes node `i`; a torn write and rot at rest are disk damage (the recovery rule),
    /// applied only within the damage budget.
    fn crash_with_damage(&mut self, i: usize, tear: bool, rot: bool) {
        let tear = if tear && self.damage_allowed_for(i) { Tear::Any } else { Tear::None };
        self.crash(i, tear);
        if rot && self.nodes[i].replica.is_none() && self.damage_allowed_for(i) {
            let hit = self.nodes[i].disk.flip_bit_at_rest(&mut self.disk_rng);
            let id = self.nodes[i].id;
            self.trace.line(self.now, id, || format!("bit flip at rest: {hit:?}"));
        }
    }

    /// Wipes stopped node `i`'s disk if `wipe` and the damage budget allows.
    fn wipe_within_budget(&mut self, i: usize, wipe: bool) {
        if wipe && self.nodes[i].replica.is_none() && self.damage_allowed_for(i) {
            self.nodes[i].disk.wipe();
            let id = self.nodes[i].id;
            self.trace.line(self.now, id, || "disk wiped".to_string());
        }
    }

    fn crash(&mut self, i: usize, tear: Tear) {
        let node = &mut self.nodes[i];
        if node.replica.take().is_none() {
            return;
        }
        self.crashes += 1;
        node.disk.crash(&mut self.disk_rng, tear);
        node.role = Role::Follower;
        node.fail_next_fsync = false;
        node.slow_fsyncs_until = 0;
        node.early_reports.clear();
        // What the log worker held for space was never written: gone with the process.
        node.disk.stats.lost_unsynced_ops += node.held.len() as u64;
        node.held.clear();
        node.space_handoff_at = None;
        let id = node.id;
        self.trace.line(self.now, id, || format!("CRASH (tear: {tear:?})"));
    }

    fn begin_quiet(&mut self) -> CheckResult {
        self.quiet_since = Some(self.now);
        self.trace.line(self.now, NodeId(0), || "QUIET: faults stop, network heals".to_string());
        self.net.heal();
        self.net.set_weather(NetworkWeather::CALM);
        for i in 0..self.nodes.len() {
            self.nodes[i].fail_next_fsync = false;
            self.nodes[i].slow_fsyncs_until = 0;
            // Space is back (what was held is written at the next step).
            self.nodes[i].disk.fill_until(0, self.now);
            self.nodes[i].full_bounce_at = None;
            if self.nodes[i].replica.is_none() {
                self.start_node(i)?;
            }
        }
        Ok(())
    }

    // ---- node lifecycle ------------------------------------------------------------------

    fn start_node(&mut self, i: usize) -> CheckResult {
        let now = self.now;
        let seed: u64 = self.config_rng.gen();
        let node = &mut self.nodes[i];
        if node.replica.is_some() {
            return Ok(());
        }
        if node.disk.full_at(now) && !node.disk.opens_when_full() {
            // A wiped disk needs new files, which a full disk refuses: the start fails, and
            // the supervisor tries again (the restart draws of the faulty phase, or the quiet
            // phase once space is back).
            let id = node.id;
            self.trace.line(now, id, || "start refused: a new log on a full disk".into());
            return Ok(());
        }
        let image = node.disk.recover(self.opts.mutation);
        let recovered = self.recovered_from(i, &image)?;
        let node = &mut self.nodes[i];
        let id = node.id;
        node.incarnation += 1;
        node.damaged = recovered.damaged;
        node.term = recovered.hard_state.term;
        node.role = Role::Follower;
        node.commit = LogIndex(image.log_start.0 - 1).max(recovered.commit);
        node.commit_reported = node.commit;
        self.restarts += u64::from(node.incarnation > 1);
        let membership = recovered
            .membership_entries
            .last()
            .map_or_else(|| recovered.membership.clone(), |(_, m)| m.clone());
        self.trace.line(now, id, || {
            format!(
                "START #{} hard state {:?}, log {}..={}, damaged {}, voters {:?}",
                self.nodes[i].incarnation,
                recovered.hard_state,
                recovered.log_start,
                recovered.last_index,
                recovered.damaged,
                membership.voters
            )
        });
        let mut config = Config::new(id, seed);
        config.check_quorum = self.opts.check_quorum;
        config.pre_vote = self.opts.check_quorum;
        let replica = Replica::new(config, recovered).map_err(|e| Violation {
            step: now,
            what: format!("{id}: Replica::new refused the recovered state: {e}"),
        })?;
        self.nodes[i].replica = Some(replica);
        self.nodes[i].membership = membership;
        self.client.on_node_restarted(id);
        let (incarnation, term) = (self.nodes[i].incarnation, self.nodes[i].term);
        self.client.on_node_changed(id, incarnation, term);
        self.drain(i)
    }

    /// Builds the core's `Recovered` from what disk recovery found.
    fn recovered_from(&self, i: usize, image: &RecoveredImage) -> Result<Recovered, Violation> {
        let mut term_runs: Vec<(LogIndex, Term)> = Vec::new();
        let mut membership_entries = Vec::new();
        for e in &image.entries {
            if term_runs.last().map(|&(_, t)| t) != Some(e.term) {
                term_runs.push((e.index, e.term));
            }
            if let EntryKind::Membership(m) = &e.kind {
                membership_entries.push((e.index, m.clone()));
            }
        }
        let last_index = image.entries.last().map_or(LogIndex(image.log_start.0 - 1), |e| e.index);
        let last_term = image.entries.last().map_or(image.start_prev_term, |e| e.term);
        let mut hard_state = image.hard_state;
        let damaged = image.damaged;
        if self.opts.mutation == Mutation::ForgetVoteOnRestart {
            // MUTATION: the vote is lost at every restart and nobody is told: the replica may
            // vote twice in one term.
            hard_state.vote = None;
        }
        if hard_state.term < last_term {
            return Err(Violation {
                    step: self.now,
                    what: format!(
                        "n{}: durable entries of term {last_term} but a durable hard state of term {} on an \
                     undamaged disk: the core appended before persisting its term",
                        i + 1,
                        hard_state.term
                ),
            });
        }
        Ok(Recovered {
            hard_state,
            log_start: image.log_start,
            prev_term: image.start_prev_term,
            last_index,
            term_runs,
            membership: image.base_membership.clone().unwrap_or_else(|| self.bootstrap.clone()),
            membership_entries,
            commit: LogIndex(0),
            damaged,
        })
    }

    // ---- the driver ----------------------------------------------------------------------

    /// Carries out every action the replica has queued, in order; then the inputs the driver
    /// owes the replica in reply (promotions, and the mutation's early durability reports),
    /// until nothing is left.
    fn drain(&mut self, i: usize) -> CheckResult {
        loop {
            while let Some(action) = self.nodes[i].replica.as_mut().and_then(Replica::poll_action) {
                self.execute(i, action)?;
            }
            let promotions = std::mem::take(&mut self.nodes[i].promotions);
            let reports = std::mem::take(&mut self.nodes[i].early_reports);
            let answers = std::mem::take(&mut self.nodes[i].fake_term_answers);
            if promotions.is_empty() && reports.is_empty() && answers.is_empty() {
                return Ok(());
            }
            let id = self.nodes[i].id;
            let full = self.nodes[i].disk.full_at(self.now);
            let Some(replica) = self.nodes[i].replica.as_mut() else {
                return Ok(());
            };
            for learner in promotions {
                let change = MembershipChange::Promote(learner);
                if full {
                    // The node answers "storage full" before proposing (the operator retries).
                    self.trace.line(self.now, id, || format!("{change:?} refused: disk full"));
                    continue;
                }
                let result = replica.propose_membership(change);
                self.trace
                    .line(self.now, id, || format!("propose_membership {change:?}: {result:?}"));
            }
            for (through, term) in reports {
                replica.handle_durable(through, term);
            }
            for (from, term) in answers {
                replica.handle_message(from, Message::TermQueryResponse { term });
            }
        }
    }

    /// Requests an fsync of everything node `i` wrote so far (`for_entries`: after an append).
    fn request_sync(&mut self, i: usize, for_entries: bool) {
        let now = self.now;
        let node = &mut self.nodes[i];
        let delay = if self.opts.mutation == Mutation::AckBeforeDurable && for_entries {
            // MUTATION: the broken driver acks on write and fsyncs lazily, in the background.
            self.disk_rng.gen_range(20..=60)
        } else if node.slow_fsyncs_until > now {
            self.disk_rng.gen_range(5..=40)
        } else {
            self.disk_rng.gen_range(0..=2)
        };
        let fails = std::mem::take(&mut node.fail_next_fsync);
        node.disk.request_sync(now + delay, fails);
    }

    fn write(&mut self, i: usize, op: DiskOp) -> CheckResult {
        let id = self.nodes[i].id;
        self.nodes[i].disk.write(op).map_err(|e| Violation {
            step: self.now,
            what: format!("{id}: the core asked for an impossible log write: {}", e.0),
        })
    }

    fn execute(&mut self, i: usize, action: Action) -> CheckResult {
        let now = self.now;
        let id = self.nodes[i].id;
        self.trace.line(now, id, || describe_action(&action));
        match action {
            Action::PersistHardState(state) => {
                self.write(i, DiskOp::HardState(state))?;
                self.request_sync(i, false);
            }
            Action::TruncateLog { from } => self.log_op(i, DiskOp::Truncate { from })?,
            Action::AppendEntries { entries } => {
                if !entries.is_empty() {
                    self.log_op(i, DiskOp::Append(entries))?;
                }
            }
            Action::ResetLog { start, prev_term, membership } => {
                self.log_op(i, DiskOp::Reset { start, prev_term, membership })?;
            }
            Action::Send { to, message: Message::TermQuery { term } }
                if self.opts.mutation == Mutation::RepairFromLowerTerm =>
            {
                // MUTATION: the damaged replica's question never leaves; every voter "answers"
                // with the replica's own term, so it learns nothing it did not know.
                self.nodes[i].fake_term_answers.push((to, term));
            }
            Action::Send { to, message } => {
                if matches!(message, Message::VoteResponse { granted: true, .. }) {
                    self.voted.push((i, to));
                }
                self.send(id, to, message);
            }
            Action::SendEntries { to, from, through, .. }
                if from <= through && through > self.settled_through(i) =>
            {
                // The node's sender waits until the entries are settled in the log (they are
                // held for space, or behind a held truncation or reset); the wait outlasts
                // this step, so the send is dropped here and Raft sends again.
                self.trace.line(now, id, || {
                    format!("send {from}..={through} to {to} waits: log writes held for space")
                });
            }
            Action::SendEntries { to, term, prev_index, prev_term, commit, from, through } => {
                let entries = if from > through {
                    Vec::new()
                } else {
                    self.nodes[i].disk.read_written(from, through).ok_or_else(|| Violation {
                        step: now,
                        what: format!(
                            "{id}: SendEntries {from}..={through} to {to}, but the local log \
                             holds {}..={}",
                            self.nodes[i].disk.written_log_start(),
                            self.nodes[i].disk.written_last().0
                        ),
                    })?
                };
                let message = Message::Append { term, prev_index, prev_term, commit, entries };
                self.send(id, to, message);
            }
            Action::CommitAdvanced { through } => self.on_commit(i, through)?,
            Action::ReadReady { ctx, index } => {
                self.client
                    .on_read_ready(id, ctx, index)
                    .map_err(|what| Violation { step: now, what })?;
                // Serve it: the bytes returned must be the committed ones. While log writes
                // are held for space, only what is settled (the commit over the written log).
                let through = if self.nodes[i].held.is_empty() {
                    index
                } else {
                    index.min(self.nodes[i].commit)
                };
                self.serve_read(i, through)?;
            }
            Action::ReadFailed { ctx } => self.client.on_read_failed(ctx),
            Action::RoleChanged { role, term, leader } => {
                let node = &mut self.nodes[i];
                node.role = role;
                node.term = term;
                if role == Role::Leader {
                    self.checker.on_leader(now, id, term)?;
                }
                if leader.is_some() {
                    self.client.leader_hint = leader;
                }
                let incarnation = self.nodes[i].incarnation;
                self.client.on_node_changed(id, incarnation, term);
            }
            Action::Repaired => {
                self.nodes[i].damaged = false;
                self.write(i, DiskOp::ClearDamaged)?;
                self.request_sync(i, false);
            }
            Action::LearnerCaughtUp { learner, .. } => {
                // The driver promotes a caught-up learner (as the replicator's operator API
                // would), after the current input's actions are carried out.
                self.nodes[i].promotions.push(learner);
            }
            Action::MembershipChanged(membership) => self.nodes[i].membership = membership,
        }
        Ok(())
    }

    /// A log write the core asked for: carried out now, or held for space (with everything
    /// behind it) while the disk is full, as the node's log worker waits for
    /// `Log::wait_space`.
    fn log_op(&mut self, i: usize, op: DiskOp) -> CheckResult {
        let now = self.now;
        let node = &mut self.nodes[i];
        if node.held.is_empty() && !(node.disk.full_at(now) && node.disk.needs_space(&op)) {
            return self.write_log_op(i, op);
        }
        let id = node.id;
        if node.held.len() >= HELD_OPS_MAX {
            return Err(Violation {
                step: now,
                what: format!("{id}: more than {HELD_OPS_MAX} log writes held for space"),
            });
        }
        if let DiskOp::Append(entries) = &op {
            if self.opts.mutation == Mutation::FullDiskRefusalAsDurable {
                // MUTATION: the refusal is taken for a completed append and reported durable.
                let last = entries.last().expect("not empty");
                node.early_reports.push((last.index, last.term));
            }
        }
        self.trace.line(now, id, || "log write held: disk full".into());
        node.held.push_back(op);
        self.held_for_space += 1;
        Ok(())
    }

    /// Writes a log write of the core to node `i`'s disk (checked as it lands).
    fn write_log_op(&mut self, i: usize, op: DiskOp) -> CheckResult {
        let now = self.now;
        let id = self.nodes[i].id;
        match op {
            DiskOp::Truncate { from } => {
                self.checker.on_truncate(now, id, from, self.nodes[i].commit)?;
                self.write(i, DiskOp::Truncate { from })?;
            }
            DiskOp::Append(entries) => {
                let last = entries.last().map(|e| (e.index, e.term)).expect("not empty");
                let (_, mut prev_term) = self.nodes[i].disk.written_last();
                for entry in &entries {
                    self.checker.on_append(now, id, entry, prev_term)?;
                    prev_term = entry.term;
                }
                self.write(i, DiskOp::Append(entries))?;
                self.request_sync(i, true);
                if self.opts.mutation == Mutation::AckBeforeDurable {
                    // MUTATION: report durability before the fsync even started.
                    self.nodes[i].early_reports.push(last);
                }
            }
            DiskOp::Reset { start, prev_term, membership } => {
                self.checker.on_reset(now, id, start, prev_term)?;
                self.write(i, DiskOp::Reset { start, prev_term, membership })?;
                self.request_sync(i, false);
            }
            op @ (DiskOp::HardState(_) | DiskOp::AdvanceStart { .. } | DiskOp::ClearDamaged) => {
                self.write(i, op)?;
            }
        }
        Ok(())
    }

    /// Space is back on node `i`'s disk: the held log writes go out in order; once none is
    /// left, the commit catches up with what the core reported.
    fn release_held(&mut self, i: usize) -> CheckResult {
        if self.nodes[i].held.is_empty() || self.nodes[i].replica.is_none() {
            return Ok(());
        }
        while let Some(op) = self.nodes[i].held.front() {
            if self.nodes[i].disk.full_at(self.now) && self.nodes[i].disk.needs_space(op) {
                return Ok(());
            }
            let op = self.nodes[i].held.pop_front().expect("front exists");
            self.write_log_op(i, op)?;
        }
        let id = self.nodes[i].id;
        self.trace.line(self.now, id, || "space back: held log writes written".into());
        let reported = self.nodes[i].commit_reported;
        if reported > self.nodes[i].commit {
            self.on_commit(i, reported)?;
        }
        self.drain(i)
    }

    /// Last index node `i` can send from its log: everything written, up to the first held
    /// write (entries a held append brings, or a held truncation or reset removes, are not
    /// settled).
    fn settled_through(&self, i: usize) -> LogIndex {
        let node = &self.nodes[i];
        let mut settled = node.disk.written_last().0;
        for op in &node.held {
            let first_unsettled = match op {
                DiskOp::Append(entries) => entries.first().map_or(settled.next(), |e| e.index),
                DiskOp::Truncate { from } => *from,
                DiskOp::Reset { .. } => LogIndex(0),
                DiskOp::HardState(_) | DiskOp::AdvanceStart { .. } | DiskOp::ClearDamaged => {
                    continue
                }
            };
            settled = settled.min(LogIndex(first_unsettled.0.saturating_sub(1)));
        }
        settled
    }

    /// Node `i` leads on a full disk: it hands the leadership to its most up-to-date
    /// undamaged follower, at most once per election timeout (`hand_off_for_space`).
    fn hand_off_for_space(&mut self, i: usize) -> CheckResult {
        let now = self.now;
        let node = &mut self.nodes[i];
        if node.space_handoff_at.is_some_and(|at| now - at < self.election_steps) {
            return Ok(());
        }
        node.space_handoff_at = Some(now);
        let replica = node.replica.as_mut().expect("a leader runs");
        let me = replica.id();
        let target = replica
            .membership()
            .voters
            .iter()
            .filter(|&&n| n != me)
            .filter_map(|&n| replica.progress(n).map(|p| (p, n)))
            .filter(|(p, _)| !p.damaged)
            .map(|(p, n)| (p.match_index, n))
            .max()
            .map(|(_, n)| n);
        let Some(to) = target else {
            return Ok(());
        };
        let result = replica.transfer_leadership(to);
        self.trace.line(now, me, || format!("disk full: hand-off to {to}: {result:?}"));
        self.drain(i)
    }

    /// `Fault::DiskFull` with a supervisor restart: the node is killed and restarted on its
    /// full disk (it opens: its files exist; what it held for space is lost).
    fn bounce_full_nodes(&mut self) -> CheckResult {
        for i in 0..self.nodes.len() {
            if self.nodes[i].full_bounce_at != Some(self.now) {
                continue;
            }
            self.nodes[i].full_bounce_at = None;
            if self.nodes[i].replica.is_some() {
                let id = self.nodes[i].id;
                self.trace.line(self.now, id, || "restart on a full disk".into());
                self.crash(i, Tear::None);
                self.start_node(i)?;
            }
        }
        Ok(())
    }

    fn on_commit(&mut self, i: usize, through: LogIndex) -> CheckResult {
        let now = self.now;
        let node = &mut self.nodes[i];
        let id = node.id;
        if through < node.commit || through < node.commit_reported {
            return Err(Violation {
                step: now,
                what: format!(
                    "{id}: commit went back from {} to {through}",
                    node.commit.max(node.commit_reported)
                ),
            });
        }
        node.commit_reported = through;
        if !node.held.is_empty() {
            // The commit waits for the held writes (the node computes commit offsets from
            // the log): it is applied once they are written.
            return Ok(());
        }
        let node = &self.nodes[i];
        let (last, _) = node.disk.written_last();
        if through > last {
            return Err(Violation {
                step: now,
                what: format!("{id}: commits {through} but its log ends at {last}"),
            });
        }
        let start = node.disk.written_log_start();
        for index in node.commit.0 + 1..=through.0 {
            let index = LogIndex(index);
            let entry = if index < start { None } else { node.disk.written_entry(index) };
            self.checker.on_commit(now, id, index, entry)?;
        }
        let (incarnation, term, role) = (node.incarnation, node.term, node.role);
        self.nodes[i].commit = through;
        if role == Role::Leader {
            for acked in self.client.on_commit(now, id, incarnation, term, through) {
                self.trace.line(now, id, || format!("ACK {:?} at {}", acked.payload, acked.index));
                let held = self.nodes[i].disk.written_entry(acked.index).map(|e| e.payload.clone());
                if held.as_ref() != Some(&acked.payload) {
                    return Err(Violation {
                        step: now,
                        what: format!(
                            "{id} acked {:?} at {} but holds {held:?} there",
                            acked.payload, acked.index
                        ),
                    });
                }
                self.checker.on_ack(now, acked.index, &acked.payload)?;
            }
        }
        Ok(())
    }

    fn complete_syncs(&mut self, i: usize) -> CheckResult {
        while self.nodes[i].replica.is_some() {
            let Some(outcome) = self.nodes[i].disk.poll_sync(self.now) else {
                return Ok(());
            };
            let ops = match outcome {
                SyncOutcome::Failed => {
                    // fsyncgate: fatal for the log, never retried. The node stops; its last
                    // writes may be torn (within the damage budget).
                    let tear = self.disk_rng.gen_bool(0.25) && self.damage_allowed_for(i);
                    let tear = if tear { Tear::Any } else { Tear::None };
                    self.trace.line(self.now, self.nodes[i].id, || "FSYNC FAILED".to_string());
                    self.crash(i, tear);
                    return Ok(());
                }
                SyncOutcome::Completed(ops) => ops,
            };
            let mut hard_state = None;
            let mut durable = None;
            for op in ops {
                match op {
                    DiskOp::HardState(state) => hard_state = Some(state),
                    DiskOp::Append(entries) => {
                        durable = entries.last().map(|e| (e.index, e.term));
                    }
                    DiskOp::Truncate { .. } => durable = None,
                    // The reset itself is reported durable (a later append covers it too).
                    DiskOp::Reset { start, prev_term, .. } => {
                        durable = Some((LogIndex(start.0 - 1), prev_term));
                    }
                    DiskOp::AdvanceStart { .. } | DiskOp::ClearDamaged => {}
                }
            }
            let id = self.nodes[i].id;
            let replica = self.nodes[i].replica.as_mut().expect("checked above");
            if let Some(state) = hard_state {
                self.trace.line(self.now, id, || format!("durable hard state {state:?}"));
                replica.handle_hard_state_durable(state);
            }
            if let Some((through, term)) = durable {
                if self.opts.mutation != Mutation::AckBeforeDurable {
                    self.trace.line(self.now, id, || format!("durable through {through}/{term}"));
                    replica.handle_durable(through, term);
                }
            }
            self.drain(i)?;
        }
        Ok(())
    }

    // ---- the client ----------------------------------------------------------------------

    fn client_step(&mut self) -> CheckResult {
        if self.client_rng.gen_bool(self.opts.propose_probability) && self.client.can_propose() {
            self.propose()?;
        }
        if self.client_rng.gen_bool(self.opts.read_probability) {
            self.read()?;
        }
        if self.client_rng.gen_bool(self.opts.read_probability) {
            self.local_read()?;
        }
        Ok(())
    }

    /// The node the client talks to: its leader hint if running, else a random running node.
    fn client_target(&mut self) -> Option<usize> {
        if let Some(hint) = self.client.leader_hint {
            let i = self.slot(hint);
            if self.nodes[i].replica.is_some() && self.client_rng.gen_bool(0.9) {
                return Some(i);
            }
        }
        let up: Vec<usize> =
            (0..self.nodes.len()).filter(|&i| self.nodes[i].replica.is_some()).collect();
        (!up.is_empty()).then(|| up[self.client_rng.gen_range(0..up.len())])
    }

    fn propose(&mut self) -> CheckResult {
        let Some(i) = self.client_target() else {
            return Ok(());
        };
        let payload = self.client.next_payload();
        let node = &mut self.nodes[i];
        let id = node.id;
        if node.role == Role::Leader && node.disk.full_at(self.now) {
            // The node answers `StorageFull` before the core holds the entry, and hands the
            // leadership to an up-to-date follower.
            self.trace.line(self.now, id, || format!("propose {payload:?}: storage full"));
            self.client.on_refused(Some(id));
            return self.hand_off_for_space(i);
        }
        let result = node.replica.as_mut().expect("up").propose(payload.clone());
        self.trace.line(self.now, id, || format!("propose {payload:?}: {result:?}"));
        match result {
            Ok(index) => {
                let pending = Pending {
                    node: id,
                    incarnation: node.incarnation,
                    term: node.term,
                    index,
                    payload,
                    step: self.now,
                };
                self.client.on_accepted(pending);
            }
            Err(ProposeError::NotLeader { leader_hint }) => self.client.on_refused(leader_hint),
            Err(_) => self.client.on_refused(Some(id)),
        }
        self.drain(i)
    }

    /// A read served by node `i` of what it knows committed through `through`: it returns
    /// the bytes of its log's last `READ_ENTRIES_MAX` entries through `through` (those it
    /// still holds), each of which must be the committed entry at that index.
    fn serve_read(&mut self, i: usize, through: LogIndex) -> CheckResult {
        let node = &self.nodes[i];
        let first = node
            .disk
            .written_log_start()
            .max(LogIndex(through.0.saturating_sub(READ_ENTRIES_MAX - 1).max(1)));
        let mut index = first;
        while index <= through {
            let Some(entry) = node.disk.written_entry(index) else {
                return Err(Violation {
                    step: self.now,
                    what: format!(
                        "{}: serves a read through {through} but its log holds {}..={}",
                        node.id,
                        node.disk.written_log_start(),
                        node.disk.written_last().0
                    ),
                });
            };
            self.checker.on_read(self.now, node.id, index, entry)?;
            index = index.next();
        }
        Ok(())
    }

    /// A read from any running replica of what it knows committed (no leader round trip).
    fn local_read(&mut self) -> CheckResult {
        let up: Vec<usize> =
            (0..self.nodes.len()).filter(|&i| self.nodes[i].replica.is_some()).collect();
        if up.is_empty() {
            return Ok(());
        }
        let i = up[self.client_rng.gen_range(0..up.len())];
        let commit = self.nodes[i].commit;
        self.serve_read(i, commit)
    }

    /// End of run: every acknowledged (index, payload) is in the *durable* log of a majority
    /// of the final voters: design.md §2, an acknowledged record survives (until retention
    /// removes it). A voter whose durable log starts above the index counts only if retention
    /// removed that index somewhere after checking it committed: a log start moves only by
    /// retention or by a reset to a leader's log start, itself moved by retention.
    fn check_acked_durable(&self, acked: &[(LogIndex, Bytes)]) -> CheckResult {
        let voters = match self.leader_slot() {
            Some(l) => self.nodes[l].membership.voters.clone(),
            None => self.bootstrap.voters.clone(),
        };
        let needed = quorum_size(voters.len());
        let compacted =
            self.nodes.iter().map(|n| n.compacted_checked_through).max().unwrap_or_default();
        for (index, payload) in acked {
            let holders = voters
                .iter()
                .filter(|v| {
                    let node = &self.nodes[self.slot(**v)];
                    if *index < node.disk.durable_log_start() {
                        return *index <= compacted;
                    }
                    node.disk
                        .durable_entry(*index)
                        .is_some_and(|e| e.kind == EntryKind::Normal && e.payload == *payload)
                })
                .count();
            if holders < needed {
                return Err(Violation {
                    step: self.now,
                    what: format!(
                        "acked {payload:?} at {index} is durable on only {holders} of the final                          voters {voters:?} (a majority is {needed})"
                    ),
                });
            }
        }
        Ok(())
    }

    fn read(&mut self) -> CheckResult {
        let Some(i) = self.client_target() else {
            return Ok(());
        };
        let id = self.nodes[i].id;
        let Some(ctx) = self.client.begin_read(id) else {
            return Ok(());
        };
        let result = self.nodes[i].replica.as_mut().expect("up").read_index(ctx);
        self.trace.line(self.now, id, || format!("read_index {ctx:?}: {result:?}"));
        if result.is_err() {
            self.client.cancel_read(ctx);
        }
        self.drain(i)
    }

    // ---- helpers -------------------------------------------------------------------------

    fn slot(&self, node: NodeId) -> usize {
        let i = node.0 as usize;
        assert!(i >= 1 && i <= self.nodes.len(), "unknown node {node}");
        i - 1
    }

    fn leader_slot(&self) -> Option<usize> {
        self.nodes
            .iter()
            .enumerate()
            .filter(|(_, n)| n.replica.is_some() && n.role == Role::Leader)
            .max_by_key(|(_, n)| n.term)
            .map(|(i, _)| i)
    }
}
