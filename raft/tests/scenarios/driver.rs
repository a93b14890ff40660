//! A tiny deterministic driver for scripted scenarios: replicas over an in-memory FIFO network
//! and in-memory logs. Messages are delivered only when a test says so (`run`, `deliver_one`),
//! durability is reported automatically (`auto_sync`) or by hand (`sync`, `sync_through`), and
//! links can be cut. The fault-injecting simulator is the crate `ringlog-sim`; this driver exists
//! so that each scenario states exactly which messages move and when.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use bytes::Bytes;
use ringlog_raft::{
    Action, Config, Entry, EntryKind, HardState, LogIndex, Membership, Message, NodeId,
    ProposeError, Recovered, Replica, Role, Term,
};

/// Bound on deliveries in one `run` (a scenario that needs more is a livelock).
pub const RUN_DELIVERIES_MAX: usize = 200_000;
/// Election rounds `Cluster::campaign` tries.
pub const CAMPAIGN_ROUNDS_MAX: usize = 3;

pub fn n(id: u32) -> NodeId {
    NodeId(id)
}

pub fn config(id: u32) -> Config {
    let mut c = Config::new(NodeId(id), 0x5eed_0000 + u64::from(id));
    c.election_ticks = 10;
    c.heartbeat_ticks = 2;
    c
}

pub fn membership(voters: &[u32]) -> Membership {
    Membership { voters: voters.iter().map(|&v| NodeId(v)).collect(), learners: Vec::new() }
}

/// One simulated node: the replica, its "disk" (log and hard state) and what it reported.
#[derive(Debug)]
pub struct Node {
    pub replica: Replica,
    pub config: Config,
    /// Entries `log_start ..`.
    pub log: Vec<Entry>,
    pub log_start: LogIndex,
    pub prev_term: Term,
    pub membership_base: Membership,
    /// Hard state on disk (durable).
    pub hard_state: HardState,
    pub pending_hard_states: Vec<HardState>,
    pub durable_through: LogIndex,
    pub auto_sync: bool,
    pub commit: LogIndex,
    pub damaged: bool,
    pub up: bool,
    /// Every non-IO action, in order.
    pub events: Vec<Action>,
    /// Every AppendEntries action carried out (for allocation-free length checks).
    pub appended: u64,
}

impl Node {
    pub fn last_index(&self) -> LogIndex {
        LogIndex(self.log_start.0 + self.log.len() as u64 - 1)
    }

    pub fn term_at(&self, index: LogIndex) -> Option<Term> {
        if index.0 + 1 == self.log_start.0 {
            return Some(self.prev_term);
        }
        if index < self.log_start {
            return None;
        }
        self.log.get((index.0 - self.log_start.0) as usize).map(|e| e.term)
    }

    pub fn entry(&self, index: LogIndex) -> &Entry {
        &self.log[(index.0 - self.log_start.0) as usize]
    }

    /// Terms of the held entries, in order.
    pub fn terms(&self) -> Vec<u64> {
        self.log.iter().map(|e| e.term.0).collect()
    }

    fn recovered(&self) -> Recovered {
        let mut runs: Vec<(LogIndex, Term)> = Vec::new();
        let mut membership_entries = Vec::new();
        for e in &self.log {
            if runs.last().map(|r| r.1) != Some(e.term) {
                runs.push((e.index, e.term));
            }
            if let EntryKind::Membership(m) = &e.kind {
                membership_entries.push((e.index, m.clone()));
            }
        }
        Recovered {
            hard_state: self.hard_state,
            log_start: self.log_start,
            prev_term: self.prev_term,
            last_index: self.last_index(),
            term_runs: runs,
            membership: self.membership_base.clone(),
            membership_entries,
            commit: LogIndex(0),
            damaged: self.damaged,
        }
    }
}

/// Builds the entry a test puts in a recovered log.
pub fn entry(index: u64, term: u64) -> Entry {
    Entry {
        term: Term(term),
        index: LogIndex(index),
        kind: EntryKind::Normal,
        payload: Bytes::from(format!("e{index}t{term}")),
    }
}

#[derive(Debug, Default)]
pub struct Cluster {
    pub nodes: BTreeMap<NodeId, Node>,
    pub net: VecDeque<(NodeId, NodeId, Message)>,
    /// Directed links that drop everything.
    pub cut: BTreeSet<(NodeId, NodeId)>,
    /// Every message delivered, in order.
    pub delivered: Vec<(NodeId, NodeId, Message)>,
}

impl Cluster {
    /// A fresh group of voters `1..=count`.
    pub fn new(count: u32) -> Cluster {
        Cluster::with(count, config)
    }

    pub fn with(count: u32, make: impl Fn(u32) -> Config) -> Cluster {
        let voters: Vec<u32> = (1..=count).collect();
        let mut c = Cluster::default();
        for id in 1..=count {
            c.add_node(make(id), Recovered::bootstrap(membership(&voters)), Vec::new());
        }
        c
    }

    /// Voters `1..=logs.len()`, node `i + 1` starting with `logs[i]` = (hard state term,
    /// entry terms from index 1).
    pub fn with_logs(logs: &[(u64, &[u64])]) -> Cluster {
        let voters: Vec<u32> = (1..=logs.len() as u32).collect();
        let mut c = Cluster::default();
        for (i, (hs_term, terms)) in logs.iter().enumerate() {
            let id = i as u32 + 1;
            let entries: Vec<Entry> =
                terms.iter().enumerate().map(|(j, &t)| entry(j as u64 + 1, t)).collect();
            let mut runs: Vec<(LogIndex, Term)> = Vec::new();
            for e in &entries {
                if runs.last().map(|r| r.1) != Some(e.term) {
                    runs.push((e.index, e.term));
                }
            }
            let recovered = Recovered {
                hard_state: HardState { term: Term(*hs_term), vote: None },
                last_index: LogIndex(entries.len() as u64),
                term_runs: runs,
                ..Recovered::bootstrap(membership(&voters))
            };
            c.add_node(config(id), recovered, entries);
        }
        c
    }

    pub fn add_node(&mut self, config: Config, recovered: Recovered, log: Vec<Entry>) {
        let id = config.id;
        let replica = Replica::new(config.clone(), recovered.clone()).expect("valid start");
        let node = Node {
            replica,
            config,
            durable_through: LogIndex(log.len() as u64 + recovered.log_start.0 - 1),
            log,
            log_start: recovered.log_start,
            prev_term: recovered.prev_term,
            membership_base: recovered.membership.clone(),
            hard_state: recovered.hard_state,
            pending_hard_states: Vec::new(),
            auto_sync: true,
            commit: LogIndex(0),
            damaged: recovered.damaged,
            up: true,
            events: Vec::new(),
            appended: 0,
        };
        self.nodes.insert(id, node);
        self.drain(id);
    }

    pub fn node(&self, id: u32) -> &Node {
        &self.nodes[&NodeId(id)]
    }

    pub fn node_mut(&mut self, id: u32) -> &mut Node {
        self.nodes.get_mut(&NodeId(id)).expect("node exists")
    }

    pub fn replica(&self, id: u32) -> &Replica {
        &self.node(id).replica
    }

    /// Carries out every pending action of `id`, in order.
    pub fn drain(&mut self, id: NodeId) {
        let node = self.nodes.get_mut(&id).expect("node exists");
        while let Some(action) = node.replica.poll_action() {
            match action {
                Action::PersistHardState(hs) => node.pending_hard_states.push(hs),
                Action::TruncateLog { from } => {
                    node.log.truncate((from.0 - node.log_start.0) as usize);
                    node.durable_through = node.durable_through.min(from.prev());
                }
                Action::AppendEntries { entries } => {
                    for e in entries {
                        assert_eq!(e.index, node.last_index().next(), "appends are contiguous");
                        node.log.push(e);
                    }
                    node.appended += 1;
                }
                Action::ResetLog { start, prev_term, membership } => {
                    node.log.clear();
                    node.log_start = start;
                    node.prev_term = prev_term;
                    node.membership_base = membership;
                    node.durable_through = start.prev();
                }
                Action::Send { to, message } => self.net.push_back((id, to, message)),
                Action::SendEntries { to, term, prev_index, prev_term, commit, from, through } => {
                    let entries: Vec<Entry> =
                        (from.0..=through.0).map(|i| node.entry(LogIndex(i)).clone()).collect();
                    assert_eq!(node.term_at(prev_index), Some(prev_term));
                    let message = Message::Append { term, prev_index, prev_term, commit, entries };
                    self.net.push_back((id, to, message));
                }
                other => {
                    if let Action::CommitAdvanced { through } = other {
                        node.commit = through;
                    }
                    if let Action::Repaired = other {
                        node.damaged = false;
                    }
                    node.events.push(other);
                }
            }
        }
    }

    /// Reports the pending hard states and every written entry of `id` durable.
    /// True if anything was reported.
    pub fn sync(&mut self, id: NodeId) -> bool {
        let last = self.nodes[&id].last_index();
        self.sync_through(id, last)
    }

    /// Reports hard states, and entries through `through`, durable.
    pub fn sync_through(&mut self, id: NodeId, through: LogIndex) -> bool {
        let mut any = false;
        loop {
            let node = self.nodes.get_mut(&id).expect("node exists");
            if !node.pending_hard_states.is_empty() {
                for hs in std::mem::take(&mut node.pending_hard_states) {
                    node.hard_state = hs;
                    node.replica.handle_hard_state_durable(hs);
                }
                any = true;
            } else if through > node.durable_through && through <= node.last_index() {
                node.durable_through = through;
                let term = node.term_at(through).expect("held");
                node.replica.handle_durable(through, term);
                any = true;
            } else {
                return any;
            }
            self.drain(id);
        }
    }

    fn deliverable(&self, from: NodeId, to: NodeId) -> bool {
        self.nodes.get(&to).is_some_and(|n| n.up)
            && self.nodes.get(&from).is_some_and(|n| n.up)
            && !self.cut.contains(&(from, to))
    }

    /// Delivers the oldest message (dropping it if its link is cut). False if none.
    pub fn deliver_one(&mut self) -> bool {
        let Some((from, to, message)) = self.net.pop_front() else { return false };
        if self.deliverable(from, to) {
            self.delivered.push((from, to, message.clone()));
            self.nodes.get_mut(&to).expect("up").replica.handle_message(from, message);
            self.drain(to);
        }
        true
    }

    /// Delivers messages and reports durability of auto-sync nodes until nothing moves.
    pub fn run(&mut self) {
        let mut deliveries = 0;
        loop {
            let mut moved = false;
            while self.deliver_one() {
                moved = true;
                deliveries += 1;
                assert!(deliveries < RUN_DELIVERIES_MAX, "scenario livelocked");
            }
            let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
            for id in ids {
                if self.nodes[&id].up && self.nodes[&id].auto_sync {
                    moved |= self.sync(id);
                }
            }
            if !moved {
                return;
            }
        }
    }

    pub fn tick(&mut self, id: u32) {
        let id = NodeId(id);
        self.nodes.get_mut(&id).expect("node").replica.handle_tick();
        self.drain(id);
    }

    /// Ticks every up node once, then runs the network.
    pub fn tick_all(&mut self) {
        let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
        for id in ids {
            if self.nodes[&id].up {
                self.tick(id.0);
            }
        }
        self.run();
    }

    /// Ticks `id` alone until it starts campaigning, then runs the network; returns whether
    /// it became leader.
    /// Retries a few rounds (a round can be lost to a newer term it learns about).
    pub fn campaign(&mut self, id: u32) -> bool {
        for _ in 0..CAMPAIGN_ROUNDS_MAX {
            for _ in 0..1000 {
                self.tick(id);
                if matches!(self.replica(id).role(), Role::PreCandidate | Role::Candidate) {
                    break;
                }
            }
            self.run();
            if self.replica(id).role() == Role::Leader {
                return true;
            }
        }
        false
    }

    /// Elects `id` (which must win) and lets its Noop commit.
    pub fn elect(&mut self, id: u32) {
        assert!(self.campaign(id), "n{id} should have won the election");
        self.run();
    }

    pub fn propose(&mut self, id: u32, payload: &str) -> Result<LogIndex, ProposeError> {
        let r = self.node_mut(id).replica.propose(Bytes::copy_from_slice(payload.as_bytes()));
        self.drain(NodeId(id));
        r
    }

    /// Cuts both directions between `a` and `b`.
    pub fn partition(&mut self, a: u32, b: u32) {
        self.cut.insert((NodeId(a), NodeId(b)));
        self.cut.insert((NodeId(b), NodeId(a)));
    }

    /// Cuts `id` from every other node.
    pub fn isolate(&mut self, id: u32) {
        let ids: Vec<u32> = self.nodes.keys().map(|n| n.0).filter(|&o| o != id).collect();
        for o in ids {
            self.partition(id, o);
        }
    }

    pub fn heal(&mut self) {
        self.cut.clear();
    }

    /// Crash: unsynced writes and hard states are lost; in-flight messages to it are lost.
    pub fn crash(&mut self, id: u32) {
        let node = self.node_mut(id);
        node.up = false;
        node.pending_hard_states.clear();
        let keep = (node.durable_through.0 + 1 - node.log_start.0) as usize;
        node.log.truncate(keep);
        let nid = NodeId(id);
        self.net.retain(|(from, to, _)| *to != nid && *from != nid);
    }

    /// Restarts a crashed node from its durable state; `damaged` marks it as having lost
    /// state.
    pub fn restart(&mut self, id: u32, damaged: bool) {
        let node = self.node_mut(id);
        node.damaged |= damaged;
        let recovered = node.recovered();
        node.replica = Replica::new(node.config.clone(), recovered).expect("valid restart");
        node.up = true;
        node.commit = LogIndex(0);
        self.drain(NodeId(id));
    }

    /// Wipes a crashed node's disk: empty log and hard state, and restarts it damaged with
    /// the group's membership from its configuration.
    pub fn wipe_and_restart(&mut self, id: u32, members: Membership) {
        let node = self.node_mut(id);
        node.log.clear();
        node.log_start = LogIndex(1);
        node.prev_term = Term(0);
        node.durable_through = LogIndex(0);
        node.hard_state = HardState::default();
        node.membership_base = members;
        node.damaged = true;
        self.restart(id, true);
    }

    /// The unique leader among up nodes with the highest term, if any.
    pub fn leader(&self) -> Option<u32> {
        self.nodes
            .values()
            .filter(|n| n.up && n.replica.role() == Role::Leader)
            .max_by_key(|n| n.replica.term())
            .map(|n| n.replica.id().0)
    }

    /// Messages delivered from `from` to `to` matching `pred`.
    pub fn count_delivered(&self, from: u32, to: u32, pred: impl Fn(&Message) -> bool) -> usize {
        self.delivered.iter().filter(|(f, t, m)| f.0 == from && t.0 == to && pred(m)).count()
    }

    /// Asserts that the committed prefixes of all up nodes agree (log matching, §5.3).
    pub fn assert_committed_prefixes_agree(&self) {
        let up: Vec<&Node> = self.nodes.values().filter(|n| n.up).collect();
        for a in &up {
            for b in &up {
                let through = a.commit.min(b.commit);
                let from = a.log_start.max(b.log_start);
                let mut i = from;
                while i <= through {
                    assert_eq!(a.entry(i), b.entry(i), "committed entry {i} differs");
                    i = i.next();
                }
            }
        }
    }
}
