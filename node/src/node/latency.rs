//! Latency histograms recorded on the data path: their fixed bucket bounds, the client
//! server's per-shard request histograms, and the peer round-trip probe.
//!
//! Recording is shard-local (every recorder lives on one executor, behind a `RefCell` no
//! other thread touches): an observation is one `Instant` subtraction, a binary search over at
//! most 24 bounds (the engine's `HISTOGRAM_BUCKETS_MAX`) and two additions —
//! no lock, no allocation. A snapshot copies the buckets; the exporter sums the shards
//! (docs/metrics.md lists the bounds).
//!
//! Invariants: every histogram of one series has the same bounds on every shard (so shards
//! and nodes can be summed); a peer's round-trip probe is outstanding at most once.

#![forbid(unsafe_code)]

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use ringlog_engine::FixedHistogram;
use ringlog_net::protocol::{Acks, Consistency};
use ringlog_raft::{LogIndex, NodeId};

use super::api::HistogramSnapshot;

/// Upper bounds (µs) of the produce, fetch and commit latency histograms: 50 µs .. 30 s
/// (the longest a producer or a long-poll fetch waits), then +Inf.
pub const REQUEST_LATENCY_BOUNDS_US: [u64; 18] = [
    50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 2_500_000, 5_000_000, 10_000_000, 30_000_000,
];

/// Upper bounds (µs) of the peer round-trip histogram: 25 µs .. 2.5 s, then +Inf.
pub const PEER_RTT_BOUNDS_US: [u64; 16] = [
    25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 2_500_000,
];

/// A heartbeat unanswered for this long is taken as lost: the next heartbeat starts a new
/// probe instead of being timed from it.
pub const PEER_RTT_PROBE_STALE_AFTER: Duration = Duration::from_secs(5);

/// Proposals a leader times until they commit, per partition (the bound of producers waiting,
/// `PRODUCERS_PENDING_MAX`); past it a proposal is not timed.
pub const COMMIT_WATCH_MAX: usize = 8192;

/// The `acks` label values, indexed by `Acks as usize`.
pub const ACKS_LABELS: [&str; 3] = ["none", "leader", "quorum"];
/// The `consistency` label values, indexed by `Consistency as usize`.
pub const CONSISTENCY_LABELS: [&str; 2] = ["linearizable", "replica"];

const _: () = assert!(Acks::None as usize == 0 && Acks::Leader as usize == 1);
const _: () = assert!(Acks::Quorum as usize == 2);
const _: () = assert!(Consistency::LeaderLinearizable as usize == 0);
const _: () = assert!(Consistency::ReplicaCommitted as usize == 1);

/// Microseconds from `since` to now (0 if the clock did not move).
pub fn elapsed_us(since: Instant) -> u64 {
    u64::try_from(since.elapsed().as_micros()).unwrap_or(u64::MAX)
}

/// What a client request is, for its latency histogram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Timed {
    Produce(Acks),
    Fetch(Consistency),
    /// Metadata, status and admin requests: not timed.
    Untimed,
}

/// One shard's client request latencies, from a request decoded to its answer queued for
/// the connection's writer.
#[derive(Debug)]
pub(crate) struct RequestLatency {
    produce: [FixedHistogram; 3],
    fetch: [FixedHistogram; 2],
}

impl Default for RequestLatency {
    fn default() -> Self {
        let histogram = FixedHistogram::new(&REQUEST_LATENCY_BOUNDS_US);
        RequestLatency { produce: [histogram; 3], fetch: [histogram; 2] }
    }
}

impl RequestLatency {
    pub(crate) fn record(&mut self, timed: Timed, since: Instant) {
        match timed {
            Timed::Produce(acks) => self.produce[acks as usize].record(elapsed_us(since)),
            Timed::Fetch(consistency) => self.fetch[consistency as usize].record(elapsed_us(since)),
            Timed::Untimed => {}
        }
    }

    /// `(acks label, histogram)` for every acks level.
    pub(crate) fn produce(&self) -> Vec<(&'static str, HistogramSnapshot)> {
        ACKS_LABELS.iter().zip(&self.produce).map(|(l, h)| (*l, HistogramSnapshot::of(h))).collect()
    }

    /// `(consistency label, histogram)` for every consistency.
    pub(crate) fn fetch(&self) -> Vec<(&'static str, HistogramSnapshot)> {
        CONSISTENCY_LABELS
            .iter()
            .zip(&self.fetch)
            .map(|(l, h)| (*l, HistogramSnapshot::of(h)))
            .collect()
    }
}

/// Round trips to each peer, timed on the replication link: a heartbeat frame sent to the
/// peer (heartbeats of every partition of the shard are coalesced into one frame) to the
/// next heartbeat-response frame from it. Only a shard leading some partition sends
/// heartbeats, so only it measures.
#[derive(Debug, Default)]
pub(crate) struct PeerRtt {
    /// Per peer: when the outstanding probe's heartbeat was queued, and the histogram. At
    /// most one entry per link (bounded by the peers of the shard's groups).
    peers: BTreeMap<NodeId, (Option<Instant>, FixedHistogram)>,
}

impl PeerRtt {
    /// A heartbeat was queued for `peer`: starts a probe unless one is outstanding and fresh.
    pub(crate) fn heartbeat_sent(&mut self, peer: NodeId, now: Instant) {
        let entry = self
            .peers
            .entry(peer)
            .or_insert_with(|| (None, FixedHistogram::new(&PEER_RTT_BOUNDS_US)));
        let fresh = entry
            .0
            .is_some_and(|sent| now.saturating_duration_since(sent) < PEER_RTT_PROBE_STALE_AFTER);
        if !fresh {
            entry.0 = Some(now);
        }
    }

    /// Heartbeat responses arrived from `peer`: ends the outstanding probe, if any.
    pub(crate) fn responses_received(&mut self, peer: NodeId, now: Instant) {
        if let Some((outstanding, histogram)) = self.peers.get_mut(&peer) {
            if let Some(sent) = outstanding.take() {
                let rtt = now.saturating_duration_since(sent).as_micros();
                histogram.record(u64::try_from(rtt).unwrap_or(u64::MAX));
            }
        }
    }

    /// The connection to `peer` broke: what was outstanding will not be answered.
    pub(crate) fn forget_probe(&mut self, peer: NodeId) {
        if let Some((outstanding, _)) = self.peers.get_mut(&peer) {
            *outstanding = None;
        }
    }

    pub(crate) fn snapshot(&self) -> Vec<(NodeId, HistogramSnapshot)> {
        self.peers.iter().map(|(peer, (_, h))| (*peer, HistogramSnapshot::of(h))).collect()
    }
}

/// A leader's own proposals, from reaching the replicator until the commit index passes
/// them (`ringlog_commit_duration_seconds`). Forgotten when truncated and when the
/// leadership ends (whatever commits them then is another leader's doing).
#[derive(Debug)]
pub(crate) struct CommitWatch {
    /// Ascending by index, at most [`COMMIT_WATCH_MAX`].
    pending: VecDeque<(LogIndex, Instant)>,
    histogram: FixedHistogram,
}

impl Default for CommitWatch {
    fn default() -> Self {
        CommitWatch {
            pending: VecDeque::new(),
            histogram: FixedHistogram::new(&REQUEST_LATENCY_BOUNDS_US),
        }
    }
}

impl CommitWatch {
    /// The proposal at `index` arrived at `at`. Proposals at or above `index` still watched
    /// were replaced (a truncation this watch was not told of): they are forgotten, which
    /// keeps the watch ascending.
    pub(crate) fn proposed(&mut self, index: LogIndex, at: Instant) {
        self.forget_from(index);
        if self.pending.len() < COMMIT_WATCH_MAX {
            self.pending.push_back((index, at));
        }
    }

    /// The commit index reached `through` at `now`.
    pub(crate) fn committed(&mut self, through: LogIndex, now: Instant) {
        while let Some(&(index, at)) = self.pending.front() {
            if index > through {
                break;
            }
            self.pending.pop_front();
            let waited = now.saturating_duration_since(at).as_micros();
            self.histogram.record(u64::try_from(waited).unwrap_or(u64::MAX));
        }
    }

    /// Entries from `from` on were truncated.
    pub(crate) fn forget_from(&mut self, from: LogIndex) {
        while self.pending.back().is_some_and(|(index, _)| *index >= from) {
            self.pending.pop_back();
        }
    }

    pub(crate) fn forget_all(&mut self) {
        self.pending.clear();
    }

    pub(crate) fn snapshot(&self) -> HistogramSnapshot {
        HistogramSnapshot::of(&self.histogram)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_probe_is_timed_from_its_first_heartbeat_to_the_next_response() {
        let mut rtt = PeerRtt::default();
        let start = Instant::now();
        rtt.heartbeat_sent(NodeId(2), start);
        // A second heartbeat while the first is outstanding does not restart the probe.
        rtt.heartbeat_sent(NodeId(2), start + Duration::from_micros(200));
        rtt.responses_received(NodeId(2), start + Duration::from_micros(300));
        // A response with no probe outstanding records nothing.
        rtt.responses_received(NodeId(2), start + Duration::from_micros(400));
        let snapshot = rtt.snapshot();
        assert_eq!(snapshot.len(), 1);
        let (peer, histogram) = &snapshot[0];
        assert_eq!(*peer, NodeId(2));
        assert_eq!(histogram.count(), 1);
        assert_eq!(histogram.sum, 300);
        assert!(histogram.buckets.contains(&(250, 0)) && histogram.buckets.contains(&(500, 1)));
    }

    #[test]
    fn a_stale_or_forgotten_probe_is_not_timed() {
        let mut rtt = PeerRtt::default();
        let start = Instant::now();
        rtt.heartbeat_sent(NodeId(3), start);
        // Lost: a heartbeat after the stale bound starts a new probe.
        let later = start + PEER_RTT_PROBE_STALE_AFTER + Duration::from_millis(1);
        rtt.heartbeat_sent(NodeId(3), later);
        rtt.responses_received(NodeId(3), later + Duration::from_micros(80));
        rtt.heartbeat_sent(NodeId(3), later + Duration::from_millis(1));
        rtt.forget_probe(NodeId(3));
        rtt.responses_received(NodeId(3), later + Duration::from_millis(2));
        let (_, histogram) = &rtt.snapshot()[0];
        assert_eq!((histogram.count(), histogram.sum), (1, 80));
    }

    #[test]
    fn commit_latency_times_each_proposal_until_the_commit_passes_it() {
        let mut watch = CommitWatch::default();
        let start = Instant::now();
        watch.proposed(LogIndex(5), start);
        watch.proposed(LogIndex(6), start + Duration::from_micros(100));
        watch.proposed(LogIndex(7), start + Duration::from_micros(200));
        watch.proposed(LogIndex(8), start + Duration::from_micros(300));
        watch.committed(LogIndex(6), start + Duration::from_micros(1_000));
        assert_eq!((watch.snapshot().count(), watch.snapshot().sum), (2, 1_000 + 900));
        // 8 truncated; 7 commits; a later commit finds nothing left to time.
        watch.forget_from(LogIndex(8));
        watch.committed(LogIndex(9), start + Duration::from_micros(2_200));
        assert_eq!((watch.snapshot().count(), watch.snapshot().sum), (3, 1_900 + 2_000));
        watch.proposed(LogIndex(10), start);
        watch.forget_all();
        watch.committed(LogIndex(10), start + Duration::from_secs(1));
        assert_eq!(watch.snapshot().count(), 3);
    }

    #[test]
    fn commit_watch_holds_at_most_its_bound() {
        let mut watch = CommitWatch::default();
        let start = Instant::now();
        for index in 1..=(COMMIT_WATCH_MAX as u64 + 10) {
            watch.proposed(LogIndex(index), start);
        }
        assert_eq!(watch.pending.len(), COMMIT_WATCH_MAX);
        watch.committed(LogIndex(u64::MAX), start);
        assert_eq!(watch.snapshot().count(), COMMIT_WATCH_MAX as u64);
    }

    #[test]
    fn request_latency_is_kept_per_acks_level_and_consistency() {
        let mut latency = RequestLatency::default();
        let before = Instant::now() - Duration::from_millis(3);
        latency.record(Timed::Produce(Acks::Leader), before);
        latency.record(Timed::Produce(Acks::Leader), before);
        latency.record(Timed::Fetch(Consistency::ReplicaCommitted), before);
        latency.record(Timed::Untimed, before);
        let counts: Vec<(&str, u64)> =
            latency.produce().iter().map(|(l, h)| (*l, h.count())).collect();
        assert_eq!(counts, [("none", 0), ("leader", 2), ("quorum", 0)]);
        let counts: Vec<(&str, u64)> =
            latency.fetch().iter().map(|(l, h)| (*l, h.count())).collect();
        assert_eq!(counts, [("linearizable", 0), ("replica", 1)]);
        let (_, leader) = &latency.produce()[1];
        assert!(leader.sum >= 2 * 3_000, "sum {} µs", leader.sum);
    }
}
