//! Plain data types of the node's public API: outcomes, errors and the metrics snapshot.
//!
//! Shared by the replication core, the client server, the C ABI and the metrics exporter;
//! nothing here does IO. Errors map one to one onto wire error replies
//! ([`NodeError::to_reply`]) so that an embedded caller and a network client see the same
//! failure for the same cause.

use std::net::SocketAddr;
use std::path::PathBuf;

use bytes::Bytes;
use ringlog_engine::host::FilesystemSpace;
use ringlog_engine::FixedHistogram;
use ringlog_net::protocol::ErrorReply;
use ringlog_net::{Offset, PartitionId};
use ringlog_raft::{LogIndex, NodeId, Role, Term};

use crate::metrics::ProcessSnapshot;

/// A produce that met its `acks`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AppendOutcome {
    pub partition: PartitionId,
    /// Offset of the batch's first record.
    pub base_offset: Offset,
    /// Offset of the batch's last record.
    pub last_offset: Offset,
    /// The group's commit point (first offset not yet committed) when the append completed.
    pub commit: Offset,
}

/// Committed batches read from a partition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadOutcome {
    pub partition: PartitionId,
    /// Whole record batches in the on-disk format, checksum verified, in offset order. Never
    /// control batches alone: when any are returned, the last batch holds records (see
    /// docs/format.md#fetch); empty when no record is committed at or after the offset.
    pub batches: Vec<Bytes>,
    /// The offset to read next (the first offset after the last returned batch, so past
    /// every returned record, or the requested offset when nothing was returned).
    pub next_offset: Offset,
    /// First offset not yet committed.
    pub commit: Offset,
    /// First offset still held by the log.
    pub log_start: Offset,
}

/// Where a node listens; carried by an add-node membership change.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct NodeAddresses {
    /// Peer address of the node's shard 0 (shard `s` listens on port + s).
    pub peer: SocketAddr,
    /// Client address of the node's shard 0 (shard `s` listens on port + s).
    pub client: SocketAddr,
}

/// How a node stops.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ShutdownMode {
    /// Stop accepting, finish or fail in-flight requests, hand off leadership, flush, close.
    Graceful,
    /// Close now (in-flight requests fail with `ShuttingDown`).
    Immediate,
}

/// Why `NodeHandle::wait` returned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NodeExit {
    /// `shutdown` was called and completed.
    Stopped,
    /// A shard hit a fatal error (a latched write/fdatasync failure) and the node stopped.
    Fatal(String),
}

/// A request the node could not carry out. Every variant is a typed, documented outcome.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NodeError {
    #[error("node {node} does not lead partition {partition}; leader: {leader:?} at {address:?}")]
    NotLeader {
        node: NodeId,
        partition: PartitionId,
        leader: Option<NodeId>,
        address: Option<SocketAddr>,
    },
    #[error("partition {partition} does not exist (partitions: {partitions})")]
    UnknownPartition { partition: PartitionId, partitions: u32 },
    #[error("offset {requested} of partition {partition} is outside [{log_start}, {log_end}]")]
    OffsetOutOfRange {
        partition: PartitionId,
        requested: Offset,
        log_start: Offset,
        log_end: Offset,
    },
    #[error("queues are full; retry after {retry_after_ms} ms")]
    Backpressure { retry_after_ms: u32 },
    #[error("batch of {len} bytes is over the limit of {max} bytes")]
    Oversize { len: u64, max: u64 },
    #[error("invalid request: {0}")]
    Invalid(String),
    /// Outcome unknown: the acks were not reached in time, or the leader lost its leadership
    /// before they were (answered at once when it steps down). The batch may or may not commit.
    #[error("the requested acks were not reached in time or the leader lost its leadership; the batch may or may not commit")]
    Timeout,
    #[error("the node is shutting down")]
    ShuttingDown,
    #[error("the node has stopped")]
    Stopped,
    #[error("the log of partition {partition} failed (fatal, never retried): {reason}")]
    StorageFailed { partition: PartitionId, reason: String },
    /// The leader's disk is full: the append was not taken (nothing was proposed). Reads and
    /// Raft go on; appends resume by themselves once space is back (retention, the
    /// operator). Retry later, or at another leader.
    #[error("the disk of partition {partition}'s leader is full; appends resume once space is freed: {reason}")]
    StorageFull { partition: PartitionId, reason: String },
    #[error("rejected: {0}")]
    Rejected(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl NodeError {
    /// The wire reply for this error.
    pub fn to_reply(&self) -> ErrorReply {
        match self {
            NodeError::NotLeader { partition, leader, address, .. } => {
                ErrorReply::NotLeader { partition: *partition, leader: *leader, address: *address }
            }
            NodeError::UnknownPartition { partition, .. } => {
                ErrorReply::UnknownPartition { partition: *partition }
            }
            NodeError::OffsetOutOfRange { partition, requested, log_start, log_end } => {
                ErrorReply::OffsetOutOfRange {
                    partition: *partition,
                    requested: *requested,
                    log_start: *log_start,
                    log_end: *log_end,
                }
            }
            NodeError::Backpressure { retry_after_ms } => {
                ErrorReply::Backpressure { retry_after_ms: *retry_after_ms }
            }
            NodeError::Oversize { len, max } => ErrorReply::Oversize { len: *len, max: *max },
            NodeError::Invalid(reason) => ErrorReply::Malformed { reason: reason.clone() },
            NodeError::Timeout => ErrorReply::Timeout,
            NodeError::ShuttingDown | NodeError::Stopped => ErrorReply::ShuttingDown,
            NodeError::StorageFailed { reason, .. } => {
                ErrorReply::StorageFailed { reason: reason.clone() }
            }
            NodeError::StorageFull { partition, reason } => {
                ErrorReply::StorageFull { partition: *partition, reason: reason.clone() }
            }
            NodeError::Rejected(reason) => ErrorReply::Rejected { reason: reason.clone() },
            NodeError::Internal(reason) => ErrorReply::Internal { reason: reason.clone() },
        }
    }
}

/// Why a node did not start. Nothing was started when this is returned.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NodeStartError {
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("host check failed: {0}")]
    Host(String),
    #[error("cannot use data directory {path}: {reason}")]
    DataDir { path: PathBuf, reason: String },
    #[error("cannot listen on {addr}: {reason}")]
    Listen { addr: SocketAddr, reason: String },
    #[error("recovery of partition {partition} failed: {reason}")]
    Recovery { partition: PartitionId, reason: String },
    #[error("shard {shard} failed to start: {reason}")]
    Shard { shard: usize, reason: String },
}

/// Everything the metrics exporter reads, taken at one moment (each shard answers for its
/// own partitions; shards are read one after another).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NodeSnapshot {
    pub node: NodeId,
    pub shards: Vec<ShardSnapshot>,
    /// The process' CPU time, memory and descriptors (`None`: /proc could not be read).
    pub process: Option<ProcessSnapshot>,
    /// The data dir's filesystem (`None`: statvfs failed).
    pub data_dir_space: Option<FilesystemSpace>,
}

/// A histogram as the exporter reads it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HistogramSnapshot {
    /// Cumulative `(upper bound, observations <= bound)`, the last bound `u64::MAX` meaning
    /// +Inf; empty when nothing was ever recorded here.
    pub buckets: Vec<(u64, u64)>,
    /// Sum of the observed values.
    pub sum: u64,
}

impl HistogramSnapshot {
    pub fn of(histogram: &FixedHistogram) -> HistogramSnapshot {
        HistogramSnapshot { buckets: histogram.cumulative_buckets(), sum: histogram.sum() }
    }

    /// Number of observations.
    pub fn count(&self) -> u64 {
        self.buckets.last().map_or(0, |(_, count)| *count)
    }

    /// Adds `other`'s observations (shards and nodes of one series share their bounds; an
    /// empty side takes the other's).
    pub fn merge(&mut self, other: &HistogramSnapshot) {
        if other.buckets.is_empty() {
            return;
        }
        if self.buckets.is_empty() {
            self.buckets = other.buckets.clone();
        } else {
            assert_eq!(self.buckets.len(), other.buckets.len(), "merging different bounds");
            for (mine, theirs) in self.buckets.iter_mut().zip(&other.buckets) {
                assert_eq!(mine.0, theirs.0, "merging histograms with different bounds");
                mine.1 += theirs.1;
            }
        }
        self.sum = self.sum.saturating_add(other.sum);
    }
}

/// One shard's counters and its partitions.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ShardSnapshot {
    pub shard: usize,
    /// Commands waiting in the shard's mailbox from foreign threads.
    pub mailbox_depth: u64,
    /// Open client connections.
    pub client_connections: u64,
    /// Frames and bytes queued towards peers, over every link of the shard.
    pub peer_queue_frames: u64,
    pub peer_queue_bytes: u64,
    /// Malformed frames, refused handshakes and other rejected inputs, by kind.
    pub rejected_inputs: Vec<(String, u64)>,
    /// Produce requests the shard's client server answered, by acks label (`none`,
    /// `leader`, `quorum`): µs from the request decoded to its answer queued.
    pub produce_latency_us: Vec<(&'static str, HistogramSnapshot)>,
    /// Fetch requests answered, by consistency label (`linearizable`, `replica`), the same way.
    pub fetch_latency_us: Vec<(&'static str, HistogramSnapshot)>,
    /// Heartbeat round trips to each peer on the shard's links, µs.
    pub peer_rtt_us: Vec<(NodeId, HistogramSnapshot)>,
    pub partitions: Vec<PartitionSnapshot>,
}

/// One partition (one Raft group) on this node.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PartitionSnapshot {
    pub partition: PartitionId,
    pub role: Option<Role>,
    pub term: Term,
    pub leader: Option<NodeId>,
    pub commit: LogIndex,
    pub durable: LogIndex,
    pub last_index: LogIndex,
    /// This replica is damaged: it lost (or may have lost) entries it had acknowledged and
    /// neither votes nor counts toward a quorum until a leader repairs it.
    pub damaged: bool,
    /// First offset not yet committed.
    pub commit_offset: Offset,
    pub log_start_offset: Offset,
    /// The offset the next record appended here gets (the end of the log).
    pub log_end_offset: Offset,
    /// Bytes written into the log's segments, headers and padding included (what
    /// `retention_bytes_max` limits).
    pub log_size_bytes: u64,
    /// Leader: µs from a produce reaching the replicator to the commit index passing its
    /// entry (every acks level).
    pub commit_latency_us: HistogramSnapshot,
    pub elections_started: u64,
    pub leader_changes: u64,
    pub appends: u64,
    pub append_bytes: u64,
    pub append_records: u64,
    pub fetches: u64,
    pub fetch_bytes: u64,
    /// Leadership transfers the leader balancer started from this replica.
    pub balancer_transfers: u64,
    /// Errors answered to appends and fetches, by `ErrorCode` name.
    pub errors: Vec<(String, u64)>,
    /// Producers waiting for their acks.
    pub pending_appends: u64,
    /// Unsynced bytes queued in the log's group commit.
    pub log_queued_bytes: u64,
    pub flushes: u64,
    pub fdatasyncs: u64,
    pub bytes_written: u64,
    /// fdatasync latency: cumulative counts per upper bound in microseconds (Prometheus
    /// histogram buckets, the last bound `u64::MAX` meaning +Inf), and the sum in µs.
    pub fdatasync_latency_buckets_us: Vec<(u64, u64)>,
    pub fdatasync_latency_sum_us: u64,
    /// Batch sizes appended, same bucket layout, in bytes.
    pub batch_size_buckets: Vec<(u64, u64)>,
    pub batch_size_sum: u64,
    /// Filled in on a leader only.
    pub followers: Vec<FollowerSnapshot>,
}

/// What a leader knows of one follower.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FollowerSnapshot {
    pub node: NodeId,
    /// Highest index the follower acknowledged durable and matching (the leader's progress
    /// after its acks: what the follower holds now).
    pub durable: LogIndex,
    /// Entries behind the leader's last index (from `durable`).
    pub lag: u64,
    pub learner: bool,
    /// The follower reported itself damaged (it counts toward no quorum until repaired).
    pub damaged: bool,
    /// Behind, and its acknowledged index has not moved for `FOLLOWER_STUCK_AFTER_ELECTIONS`
    /// election timeouts.
    pub stuck: bool,
    /// Messages and bytes in flight to it (pipelining window use).
    pub inflight_msgs: u64,
    pub inflight_bytes: u64,
}
