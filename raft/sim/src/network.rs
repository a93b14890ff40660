//! Simulated network: every message between replicas passes through here, as the bytes of
//! one frame of net's production peer codec (see [`crate::wire`]).
//!
//! A frame sent at step `s` is delivered at `s + delay` (delay drawn per frame, so frames
//! overtake each other: reordering), unless it is dropped, and it may be duplicated (the copy
//! gets its own delay). A frame (each copy on its own) may be corrupted on the wire: one byte
//! flipped, which the receiver's frame checksums must catch, so that the frame is lost. Links
//! can be cut one way or both ways (partitions); a link that is cut when a frame is sent or
//! when it is due loses the frame. Nothing here reads a clock: time is the simulator's step
//! counter.
//!
//! Invariants: delivery order is a pure function of the seed (ties broken by send sequence);
//! at most `IN_FLIGHT_MAX` frames are in flight (the oldest-due are kept, excess sends are
//! dropped, which the fault model allows anyway); corruption draws from its own random
//! stream, so a run without corruption draws exactly what it drew before corruption existed.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use bytes::{Bytes, BytesMut};
use rand::rngs::SmallRng;
use rand::Rng;

use ringlog_raft::message::Message;
use ringlog_raft::types::NodeId;

/// Bound on messages in flight in the whole simulated network.
pub const IN_FLIGHT_MAX: usize = 100_000;

/// How the network behaves right now (the fault scheduler changes it over a run).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct NetworkWeather {
    /// Probability that a message is lost.
    pub drop_probability: f64,
    /// Probability that a message is delivered twice.
    pub duplicate_probability: f64,
    /// Probability that a frame (each copy of a duplicated one on its own) has one byte
    /// flipped on the wire.
    pub corrupt_probability: f64,
    /// Delivery delay in steps, drawn uniformly from this inclusive range.
    pub delay_min_steps: u64,
    pub delay_max_steps: u64,
}

impl NetworkWeather {
    /// A healthy network: no loss, no duplicates, short delays (still reordering).
    pub const CALM: NetworkWeather = NetworkWeather {
        drop_probability: 0.0,
        duplicate_probability: 0.0,
        corrupt_probability: 0.0,
        delay_min_steps: 1,
        delay_max_steps: 3,
    };
}

/// A frame on its way.
#[derive(Clone, Debug)]
pub struct InFlight {
    pub from: NodeId,
    pub to: NodeId,
    /// The frame's bytes as they arrive (one byte flipped if `corrupted`).
    pub frame: Bytes,
    /// The message the sender encoded: never delivered, only compared with what the receiver
    /// decodes from `frame` (the codec round-trip check, `crate::wire`).
    pub sent: Message,
    /// The network flipped a byte of `frame`.
    pub corrupted: bool,
}

/// The simulated network between `node_count` nodes (ids 1..=node_count).
#[derive(Debug)]
pub struct SimNetwork {
    node_count: usize,
    weather: NetworkWeather,
    /// `cut[from][to]`: messages from `from` to `to` are lost (indices are node ids - 1).
    cut: Vec<Vec<bool>>,
    /// Min-heap on (due step, send sequence).
    queue: BinaryHeap<Reverse<(u64, u64)>>,
    /// Messages in flight by send sequence (looked up, never iterated: determinism).
    slots: std::collections::HashMap<u64, InFlight>,
    seq_next: u64,
    rng: SmallRng,
    /// Draws corruption only (see the module invariants).
    corrupt_rng: SmallRng,
    /// Counters for the run summary.
    pub stats: NetworkStats,
}

/// What happened to messages over a run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetworkStats {
    pub sent: u64,
    /// Frames handed to their receiver, corrupted ones included (its frame checks lose them).
    pub delivered: u64,
    pub dropped: u64,
    pub duplicated: u64,
    pub cut_off: u64,
    /// Frames with a byte flipped on the wire (the receiver's frame check loses them).
    pub corrupted: u64,
}

impl SimNetwork {
    /// `corrupt_rng` draws only which frames are corrupted and how.
    pub fn new(node_count: usize, rng: SmallRng, corrupt_rng: SmallRng) -> SimNetwork {
        SimNetwork {
            node_count,
            weather: NetworkWeather::CALM,
            cut: vec![vec![false; node_count]; node_count],
            queue: BinaryHeap::new(),
            slots: std::collections::HashMap::new(),
            seq_next: 0,
            rng,
            corrupt_rng,
            stats: NetworkStats::default(),
        }
    }

    pub fn weather(&self) -> NetworkWeather {
        self.weather
    }

    pub fn set_weather(&mut self, weather: NetworkWeather) {
        assert!(weather.delay_min_steps <= weather.delay_max_steps);
        assert!((0.0..=1.0).contains(&weather.corrupt_probability));
        self.weather = weather;
    }

    /// Cuts (or restores) the one-way link `from -> to`.
    pub fn set_cut(&mut self, from: NodeId, to: NodeId, cut: bool) {
        let (f, t) = (self.slot_of(from), self.slot_of(to));
        self.cut[f][t] = cut;
    }

    /// Whether messages from `from` to `to` are currently lost.
    pub fn is_cut(&self, from: NodeId, to: NodeId) -> bool {
        self.cut[self.slot_of(from)][self.slot_of(to)]
    }

    /// Restores every link.
    pub fn heal(&mut self) {
        for row in &mut self.cut {
            row.iter_mut().for_each(|c| *c = false);
        }
    }

    /// Number of links currently cut (one-way links counted once each).
    pub fn cut_link_count(&self) -> usize {
        self.cut.iter().map(|row| row.iter().filter(|c| **c).count()).sum()
    }

    /// Sends `frame`, the encoding of `sent`, at step `now`. Returns false if it was lost at
    /// once.
    pub fn send(
        &mut self,
        now: u64,
        from: NodeId,
        to: NodeId,
        frame: Bytes,
        sent: Message,
    ) -> bool {
        self.stats.sent += 1;
        if self.is_cut(from, to) {
            self.stats.cut_off += 1;
            return false;
        }
        if self.rng.gen_bool(self.weather.drop_probability) {
            self.stats.dropped += 1;
            return false;
        }
        if self.rng.gen_bool(self.weather.duplicate_probability) {
            self.stats.duplicated += 1;
            let copy = self.on_the_wire(InFlight {
                from,
                to,
                frame: frame.clone(),
                sent: sent.clone(),
                corrupted: false,
            });
            self.enqueue(now, copy);
        }
        let flight = self.on_the_wire(InFlight { from, to, frame, sent, corrupted: false });
        self.enqueue(now, flight);
        true
    }

    /// What the wire does to a frame: sometimes flips one byte (never a no-op flip).
    fn on_the_wire(&mut self, mut flight: InFlight) -> InFlight {
        let p = self.weather.corrupt_probability;
        if p <= 0.0 || flight.frame.is_empty() || !self.corrupt_rng.gen_bool(p) {
            return flight;
        }
        let mut bytes = BytesMut::from(&flight.frame[..]);
        let at = self.corrupt_rng.gen_range(0..bytes.len());
        bytes[at] ^= self.corrupt_rng.gen_range(1..=u8::MAX);
        flight.frame = bytes.freeze();
        flight.corrupted = true;
        self.stats.corrupted += 1;
        flight
    }

    /// Removes and returns the next frame due at or before `now`, if any. Frames whose link
    /// was cut while they were in flight are lost here.
    pub fn next_due(&mut self, now: u64) -> Option<InFlight> {
        while let Some(Reverse((due, seq))) = self.queue.peek().copied() {
            if due > now {
                return None;
            }
            self.queue.pop();
            let flight = self.slots.remove(&seq).expect("queued message has a slot");
            if self.is_cut(flight.from, flight.to) {
                self.stats.cut_off += 1;
                continue;
            }
            self.stats.delivered += 1;
            return Some(flight);
        }
        None
    }

    /// Messages in flight.
    pub fn in_flight_count(&self) -> usize {
        self.queue.len()
    }

    fn enqueue(&mut self, now: u64, flight: InFlight) {
        if self.queue.len() >= IN_FLIGHT_MAX {
            self.stats.dropped += 1;
            return;
        }
        let delay = self.rng.gen_range(self.weather.delay_min_steps..=self.weather.delay_max_steps);
        let seq = self.seq_next;
        self.seq_next += 1;
        self.queue.push(Reverse((now + delay, seq)));
        self.slots.insert(seq, flight);
    }

    fn slot_of(&self, node: NodeId) -> usize {
        let slot = node.0 as usize;
        assert!(slot >= 1 && slot <= self.node_count, "unknown node {node}");
        slot - 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use ringlog_raft::types::Term;

    fn net(seed: u64) -> SimNetwork {
        SimNetwork::new(3, SmallRng::seed_from_u64(seed), SmallRng::seed_from_u64(seed + 100))
    }

    fn heartbeat() -> (Bytes, Message) {
        let message =
            Message::Heartbeat { term: Term(1), commit: ringlog_raft::types::LogIndex(0), ctx: 0 };
        crate::wire::WireEncoder::new().encode(message)
    }

    fn send(net: &mut SimNetwork, now: u64, from: u32, to: u32) -> bool {
        let (frame, sent) = heartbeat();
        net.send(now, NodeId(from), NodeId(to), frame, sent)
    }

    #[test]
    fn calm_network_delivers_every_message_within_its_delay() {
        let mut net = net(1);
        for _ in 0..100 {
            assert!(send(&mut net, 0, 1, 2));
        }
        assert!(net.next_due(0).is_none());
        let mut delivered = 0;
        while net.next_due(3).is_some() {
            delivered += 1;
        }
        assert_eq!(delivered, 100);
    }

    #[test]
    fn one_way_cut_loses_only_that_direction_including_messages_in_flight() {
        let mut net = net(2);
        send(&mut net, 0, 1, 2);
        send(&mut net, 0, 2, 1);
        net.set_cut(NodeId(1), NodeId(2), true);
        assert!(!send(&mut net, 0, 1, 2));
        let delivered: Vec<_> = std::iter::from_fn(|| net.next_due(10)).collect();
        assert_eq!(delivered.len(), 1);
        assert_eq!(delivered[0].from, NodeId(2));
        net.heal();
        assert!(send(&mut net, 10, 1, 2));
    }

    #[test]
    fn a_corrupted_frame_differs_from_the_sent_one_in_exactly_one_byte() {
        let mut net = net(3);
        net.set_weather(NetworkWeather { corrupt_probability: 1.0, ..NetworkWeather::CALM });
        let (frame, _) = heartbeat();
        assert!(send(&mut net, 0, 1, 2));
        let flight = net.next_due(10).expect("delivered");
        assert!(flight.corrupted);
        assert_eq!(flight.frame.len(), frame.len());
        let differing = frame.iter().zip(flight.frame.iter()).filter(|(a, b)| a != b).count();
        assert_eq!(differing, 1);
        assert_eq!(net.stats.corrupted, 1);
    }
}
