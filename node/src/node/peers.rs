//! The shard's peer links: one outgoing `PeerLink` per remote node (to the same shard index
//! of that node, at its peer port + shard), shared by every partition of the shard, plus the
//! address book they are built from.
//!
//! Heartbeats and heartbeat responses go through the link's coalescing slots (one frame per
//! node pair and shard carries every partition's); every other Raft message is its own frame.
//! A full link queue drops the message (Raft retransmits) and is reported so that the
//! replicator can make the core probe that follower again (`handle_unreachable`).
//!
//! Invariants: links exist only for nodes that are members of some group of this shard (or
//! configured peers) and have a known address; no link to this node itself. Link tasks run in
//! the shard's latency task queue (through `PeerConfig::task_queue`).

#![forbid(unsafe_code)]

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::time::Instant;

use ringlog_net::peer::{PartitionHeartbeat, PartitionHeartbeatResponse, PeerMessage};
use ringlog_net::transport::{LinkStatus, PeerConfig, PeerLink};
use ringlog_net::PartitionId;
use ringlog_raft::{Message, NodeId};

use crate::node::addresses::{shard_addr, AddressBook};
use crate::node::api::{HistogramSnapshot, NodeAddresses};
use crate::node::latency::PeerRtt;

/// Why a message was not queued.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PeerSendError {
    /// No link: the node's address is unknown.
    NoRoute,
    /// The link's queue is full (or the frame too large): dropped.
    Dropped,
}

#[derive(Debug)]
struct Link {
    link: PeerLink,
    /// `LinkStats::disconnects` last seen (a change means the connection broke).
    disconnects_seen: u64,
}

/// The shard's links and address book.
#[derive(Debug)]
pub(crate) struct Peers {
    node: NodeId,
    shard: usize,
    config: PeerConfig,
    book: RefCell<AddressBook>,
    links: RefCell<BTreeMap<NodeId, Link>>,
    dropped: Cell<u64>,
    /// Heartbeat round trips per peer (`ringlog_peer_rtt_seconds`).
    rtt: RefCell<PeerRtt>,
}

impl Peers {
    pub(crate) fn new(node: NodeId, shard: usize, config: PeerConfig, book: AddressBook) -> Peers {
        Peers {
            node,
            shard,
            config,
            book: RefCell::new(book),
            links: RefCell::new(BTreeMap::new()),
            dropped: Cell::new(0),
            rtt: RefCell::new(PeerRtt::default()),
        }
    }

    pub(crate) fn addresses(&self, node: NodeId) -> Option<NodeAddresses> {
        self.book.borrow().get(node)
    }

    pub(crate) fn book(&self) -> AddressBook {
        self.book.borrow().clone()
    }

    /// Records addresses learned from a membership change or record; repoints the link.
    pub(crate) fn learn(&self, node: NodeId, addresses: NodeAddresses) {
        if node == self.node || !self.book.borrow_mut().insert(node, addresses) {
            return;
        }
        if let Some(link) = self.links.borrow().get(&node) {
            link.link.set_addr(shard_addr(addresses.peer, self.shard));
        }
    }

    /// Makes sure a link to every node of `nodes` with a known address exists.
    pub(crate) fn ensure(&self, nodes: impl IntoIterator<Item = NodeId>) {
        for node in nodes {
            if node == self.node || self.links.borrow().contains_key(&node) {
                continue;
            }
            let Some(addresses) = self.addresses(node) else {
                tracing::warn!(%node, "no address known for group member; cannot reach it");
                continue;
            };
            let addr = shard_addr(addresses.peer, self.shard);
            let link = PeerLink::connect(self.config.clone(), node, addr);
            self.links.borrow_mut().insert(node, Link { link, disconnects_seen: 0 });
        }
    }

    /// Queues `message` of `partition` for `to`.
    pub(crate) fn send(
        &self,
        to: NodeId,
        partition: PartitionId,
        message: Message,
    ) -> Result<(), PeerSendError> {
        let links = self.links.borrow();
        let Some(link) = links.get(&to) else {
            return Err(PeerSendError::NoRoute);
        };
        let result = match message {
            Message::Heartbeat { term, commit, ctx } => {
                let sent =
                    link.link.send_heartbeat(PartitionHeartbeat { partition, term, commit, ctx });
                if sent.is_ok() {
                    self.rtt.borrow_mut().heartbeat_sent(to, Instant::now());
                }
                sent
            }
            Message::HeartbeatResponse { term, ctx } => link
                .link
                .send_heartbeat_response(PartitionHeartbeatResponse { partition, term, ctx }),
            message => link.link.send(&PeerMessage::Raft { partition, message }),
        };
        result.map_err(|_| {
            self.dropped.set(self.dropped.get() + 1);
            PeerSendError::Dropped
        })
    }

    /// Nodes whose connection broke since the last call (the core should probe them again).
    pub(crate) fn take_disconnected(&self) -> Vec<NodeId> {
        let mut out = Vec::new();
        for (node, link) in self.links.borrow_mut().iter_mut() {
            let disconnects = link.link.stats().disconnects;
            let down = !matches!(link.link.status(), LinkStatus::Connected);
            if disconnects != link.disconnects_seen || down {
                link.disconnects_seen = disconnects;
                self.rtt.borrow_mut().forget_probe(*node);
                out.push(*node);
            }
        }
        out
    }

    /// The remote node's `pristine` flag from its last handshake reply.
    pub(crate) fn remote_pristine(&self, node: NodeId) -> Option<bool> {
        self.links.borrow().get(&node).and_then(|l| l.link.remote_pristine())
    }

    /// Frames and bytes queued over every link.
    pub(crate) fn queued(&self) -> (u64, u64) {
        self.links.borrow().values().fold((0, 0), |(f, b), l| {
            let (frames, bytes) = l.link.queued();
            (f + frames as u64, b + bytes as u64)
        })
    }

    /// A frame of heartbeat responses arrived from `from`: ends its round-trip probe.
    pub(crate) fn heartbeat_responses_received(&self, from: NodeId) {
        self.rtt.borrow_mut().responses_received(from, Instant::now());
    }

    /// Heartbeat round trips per peer, µs.
    pub(crate) fn rtt(&self) -> Vec<(NodeId, HistogramSnapshot)> {
        self.rtt.borrow().snapshot()
    }

    /// Messages dropped because a link's queue was full.
    pub(crate) fn dropped(&self) -> u64 {
        self.dropped.get()
    }

    /// Whether every link has nothing left to write (graceful shutdown waits for it).
    pub(crate) fn idle(&self) -> bool {
        self.links.borrow().values().all(|l| l.link.is_idle())
    }

    pub(crate) fn close(&self) {
        self.links.borrow_mut().clear();
    }
}
