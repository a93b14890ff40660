//! Prometheus metrics: the node's [`NodeSnapshot`] rendered as Prometheus text at scrape time.
//!
//! Metrics are pulled (contract decision 4): the counters live where the work happens
//! (replicator, server, the engine's flush statistics) and are copied into a plain
//! [`NodeSnapshot`] by `NodeHandle::snapshot()`; [`render`] turns one snapshot into the
//! Prometheus text exposition format (version 0.0.4) with `prometheus-client`, and
//! [`spawn_exporter`] serves it over HTTP on `listen.metrics` (exporter.rs, beside `/health` and
//! `/ready`: health.rs). Nothing here
//! counts anything itself, so a scrape never slows the data path beyond taking the snapshot.
//!
//! Every series is declared once in [`SERIES`] (name, type, labels, help); docs/metrics.md
//! documents each one and a test keeps the two in step.
//!
//! Invariants: [`render`] is a pure function of its snapshot; every sample it writes belongs
//! to a series of [`SERIES`] and carries exactly that series' labels; histogram buckets are
//! written cumulative and non-decreasing even if a snapshot's are not (a decrease is clamped,
//! never exposed as a negative count).

#![forbid(unsafe_code)]

mod exporter;
mod health;
pub mod process;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use std::collections::BTreeMap;

use crate::node::api::HistogramSnapshot;
use crate::node::{FollowerSnapshot, NodeSnapshot, PartitionSnapshot, ShardSnapshot};
use ringlog_engine::host::FilesystemSpace;
use ringlog_raft::Role;

pub use exporter::{
    spawn_exporter, spawn_exporter_for, spawn_exporter_with, MetricsServer, CONNECTION_DEADLINE,
    REQUEST_BYTES_MAX,
};
pub use health::{readiness, NodeSlot, NodeState, READY_REASONS_MAX};
pub use process::ProcessSnapshot;

/// The `Content-Type` of a `/metrics` answer (Prometheus text format 0.0.4).
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// What kind of Prometheus series a [`Series`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SeriesKind {
    /// Only grows (resets when the node restarts); exposed with a `_total` suffix.
    Counter,
    /// A value that goes up and down.
    Gauge,
    /// Cumulative `_bucket{le=..}` series plus `_sum` and `_count`.
    Histogram,
}

/// One metric family the node exposes.
#[derive(Clone, Copy, Debug)]
pub struct Series {
    /// Name without the `_total` suffix a counter gets on the wire.
    pub name: &'static str,
    /// Label names, in the order they are written.
    pub labels: &'static [&'static str],
    pub help: &'static str,
    source: Source,
}

/// Cumulative `(upper bound, count)` histogram buckets; `u64::MAX` is +Inf.
type Buckets<'a> = &'a [(u64, u64)];

/// Reads a partition's histogram: its buckets and the sum of the observed values.
type HistogramOf = fn(&PartitionSnapshot) -> (Buckets<'_>, u64);

/// Reads a shard's histograms of one node-wide series, by the value of its one label.
type ShardHistogramsOf = fn(&ShardSnapshot) -> &[(&'static str, HistogramSnapshot)];

/// Where a series' samples come from in a [`NodeSnapshot`].
#[derive(Clone, Copy, Debug)]
enum Source {
    BuildInfo,
    ShardCount,
    ShardGauge(fn(&ShardSnapshot) -> u64),
    ShardRejected,
    PartitionRole,
    PartitionGauge(fn(&PartitionSnapshot) -> u64),
    PartitionCounter(fn(&PartitionSnapshot) -> u64),
    PartitionErrors,
    /// Cumulative buckets and sum, and the factor bounds and sum are divided by.
    PartitionHistogram(HistogramOf, f64),
    FollowerGauge(fn(&FollowerSnapshot) -> u64),
    /// Histograms kept per shard by one label's value, summed over the shards; and the
    /// factor bounds and sum are divided by.
    NodeHistogram(ShardHistogramsOf, f64),
    /// Round trips to each peer, summed over the shards (labels node, peer).
    PeerRtt,
    /// A counter of the process, in seconds (`process_cpu_seconds_total`).
    ProcessSeconds(fn(&ProcessSnapshot) -> f64),
    ProcessGauge(fn(&ProcessSnapshot) -> u64),
    DataDirGauge(fn(&FilesystemSpace) -> u64),
}

impl Series {
    pub fn kind(&self) -> SeriesKind {
        match self.source {
            Source::ShardRejected
            | Source::PartitionCounter(_)
            | Source::PartitionErrors
            | Source::ProcessSeconds(_) => SeriesKind::Counter,
            Source::PartitionHistogram(..) | Source::NodeHistogram(..) | Source::PeerRtt => {
                SeriesKind::Histogram
            }
            Source::BuildInfo
            | Source::ShardCount
            | Source::ShardGauge(_)
            | Source::PartitionRole
            | Source::PartitionGauge(_)
            | Source::FollowerGauge(_)
            | Source::ProcessGauge(_)
            | Source::DataDirGauge(_) => SeriesKind::Gauge,
        }
    }

    /// The name as it appears in the exposition (counters end in `_total`).
    pub fn exposed_name(&self) -> String {
        match self.kind() {
            SeriesKind::Counter => format!("{}_total", self.name),
            SeriesKind::Gauge | SeriesKind::Histogram => self.name.to_string(),
        }
    }

    fn metric_type(&self) -> MetricType {
        match self.kind() {
            SeriesKind::Counter => MetricType::Counter,
            SeriesKind::Gauge => MetricType::Gauge,
            SeriesKind::Histogram => MetricType::Histogram,
        }
    }
}

const NODE: &[&str] = &["node"];
const NODE_VERSION: &[&str] = &["node", "version"];
const SHARD: &[&str] = &["node", "shard"];
const SHARD_KIND: &[&str] = &["node", "shard", "kind"];
const PARTITION: &[&str] = &["node", "partition"];
const PARTITION_ROLE: &[&str] = &["node", "partition", "role"];
const PARTITION_KIND: &[&str] = &["node", "partition", "kind"];
const FOLLOWER: &[&str] = &["node", "partition", "follower"];
const NODE_ACKS: &[&str] = &["node", "acks"];
const NODE_CONSISTENCY: &[&str] = &["node", "consistency"];
const NODE_PEER: &[&str] = &["node", "peer"];

/// Microseconds per second: the fdatasync histogram is kept in µs, exposed in seconds.
const MICROS_PER_SECOND: f64 = 1_000_000.0;

const fn series(
    name: &'static str,
    labels: &'static [&'static str],
    help: &'static str,
    source: Source,
) -> Series {
    Series { name, labels, help, source }
}

fn fdatasync_latency(p: &PartitionSnapshot) -> (Buckets<'_>, u64) {
    (&p.fdatasync_latency_buckets_us, p.fdatasync_latency_sum_us)
}

fn batch_sizes(p: &PartitionSnapshot) -> (Buckets<'_>, u64) {
    (&p.batch_size_buckets, p.batch_size_sum)
}

fn commit_latency(p: &PartitionSnapshot) -> (Buckets<'_>, u64) {
    (&p.commit_latency_us.buckets, p.commit_latency_us.sum)
}

use Source::{FollowerGauge, PartitionCounter, PartitionGauge, ProcessGauge, ShardGauge};

// `ringlog_follower_stuck`'s help and docs/metrics.md name the bound.
const _: () = assert!(crate::node::replicator::FOLLOWER_STUCK_AFTER_ELECTIONS == 10);

/// Every series the node exposes, in the order they are written (docs/metrics.md lists them).
pub const SERIES: &[Series] = &[
    series(
        "ringlog_build_info",
        NODE_VERSION,
        "Always 1; the labels carry the node id and the ringlog version.",
        Source::BuildInfo,
    ),
    series(
        "ringlog_shards",
        NODE,
        "Shards (executors, one per core) this node runs.",
        Source::ShardCount,
    ),
    series(
        "ringlog_shard_mailbox_commands",
        SHARD,
        "Commands from foreign threads waiting in the shard's mailbox.",
        ShardGauge(|s| s.mailbox_depth),
    ),
    series(
        "ringlog_shard_client_connections",
        SHARD,
        "Open client connections on the shard.",
        ShardGauge(|s| s.client_connections),
    ),
    series(
        "ringlog_shard_peer_queue_frames",
        SHARD,
        "Frames queued towards peers, over every link of the shard.",
        ShardGauge(|s| s.peer_queue_frames),
    ),
    series(
        "ringlog_shard_peer_queue_bytes",
        SHARD,
        "Bytes queued towards peers, over every link of the shard.",
        ShardGauge(|s| s.peer_queue_bytes),
    ),
    series(
        "ringlog_rejected_inputs",
        SHARD_KIND,
        "Malformed frames, refused handshakes and other rejected inputs, by kind.",
        Source::ShardRejected,
    ),
    series(
        "ringlog_data_dir_available_bytes",
        NODE,
        "Bytes the node may still write on the data directory's filesystem (statvfs f_bavail).",
        Source::DataDirGauge(|s| s.available_bytes),
    ),
    series(
        "ringlog_data_dir_size_bytes",
        NODE,
        "Size of the data directory's filesystem, in bytes.",
        Source::DataDirGauge(|s| s.total_bytes),
    ),
    series(
        "ringlog_partition_role",
        PARTITION_ROLE,
        "1 for the partition's current Raft role on this node, 0 for the other roles.",
        Source::PartitionRole,
    ),
    series(
        "ringlog_partition_damaged",
        PARTITION,
        "1 while this replica is damaged: it neither votes nor counts toward a quorum until a \
         leader repairs it.",
        PartitionGauge(|p| u64::from(p.damaged)),
    ),
    series(
        "ringlog_partition_term",
        PARTITION,
        "Current Raft term of the partition's group on this node.",
        PartitionGauge(|p| p.term.0),
    ),
    series(
        "ringlog_partition_leader_node",
        PARTITION,
        "Node id of the leader this node knows of; 0 when it knows none.",
        PartitionGauge(|p| p.leader.map_or(0, |id| u64::from(id.0))),
    ),
    series(
        "ringlog_partition_commit_index",
        PARTITION,
        "Highest Raft index known to be committed.",
        PartitionGauge(|p| p.commit.0),
    ),
    series(
        "ringlog_partition_durable_index",
        PARTITION,
        "Highest Raft index fdatasynced on this node.",
        PartitionGauge(|p| p.durable.0),
    ),
    series(
        "ringlog_partition_last_index",
        PARTITION,
        "Highest Raft index appended on this node, durable or not.",
        PartitionGauge(|p| p.last_index.0),
    ),
    series(
        "ringlog_partition_commit_offset",
        PARTITION,
        "First record offset not yet committed.",
        PartitionGauge(|p| p.commit_offset.0),
    ),
    series(
        "ringlog_partition_log_start_offset",
        PARTITION,
        "First record offset still held by the log (moves with retention).",
        PartitionGauge(|p| p.log_start_offset.0),
    ),
    series(
        "ringlog_partition_log_end_offset",
        PARTITION,
        "Offset the next record appended to the log here gets (the end of the log).",
        PartitionGauge(|p| p.log_end_offset.0),
    ),
    series(
        "ringlog_partition_log_size_bytes",
        PARTITION,
        "Bytes written into the partition's log segments, headers and padding included (what \
         retention_bytes_max limits).",
        PartitionGauge(|p| p.log_size_bytes),
    ),
    series(
        "ringlog_partition_elections",
        PARTITION,
        "Elections this node started for the partition.",
        PartitionCounter(|p| p.elections_started),
    ),
    series(
        "ringlog_partition_leader_changes",
        PARTITION,
        "Leader changes this node saw for the partition.",
        PartitionCounter(|p| p.leader_changes),
    ),
    series(
        "ringlog_partition_balancer_transfers",
        PARTITION,
        "Leadership transfers the leader balancer started from this node's replica (it led \
         the partition and handed it to the preferred leader).",
        PartitionCounter(|p| p.balancer_transfers),
    ),
    series(
        "ringlog_appends",
        PARTITION,
        "Produce batches appended (counted by the leader).",
        PartitionCounter(|p| p.appends),
    ),
    series(
        "ringlog_append_bytes",
        PARTITION,
        "Bytes of produce batches appended (counted by the leader).",
        PartitionCounter(|p| p.append_bytes),
    ),
    series(
        "ringlog_append_records",
        PARTITION,
        "Records in produce batches appended (counted by the leader).",
        PartitionCounter(|p| p.append_records),
    ),
    series(
        "ringlog_fetches",
        PARTITION,
        "Fetch requests answered.",
        PartitionCounter(|p| p.fetches),
    ),
    series(
        "ringlog_fetch_bytes",
        PARTITION,
        "Batch bytes returned by fetches.",
        PartitionCounter(|p| p.fetch_bytes),
    ),
    series(
        "ringlog_errors",
        PARTITION_KIND,
        "Errors answered to appends and fetches, by error code.",
        Source::PartitionErrors,
    ),
    series(
        "ringlog_pending_appends",
        PARTITION,
        "Producers waiting for their acks.",
        PartitionGauge(|p| p.pending_appends),
    ),
    series(
        "ringlog_log_queued_bytes",
        PARTITION,
        "Unsynced bytes queued in the log's group commit.",
        PartitionGauge(|p| p.log_queued_bytes),
    ),
    series(
        "ringlog_log_flushes",
        PARTITION,
        "Group-commit flushes (one O_DIRECT write each).",
        PartitionCounter(|p| p.flushes),
    ),
    series(
        "ringlog_log_fdatasyncs",
        PARTITION,
        "fdatasyncs of segment data completed by the log (one per flush).",
        PartitionCounter(|p| p.fdatasyncs),
    ),
    series(
        "ringlog_log_written_bytes",
        PARTITION,
        "Bytes written to segments (segment headers and padding included).",
        PartitionCounter(|p| p.bytes_written),
    ),
    series(
        "ringlog_log_fdatasync_duration_seconds",
        PARTITION,
        "Latency of the log's fdatasync calls.",
        Source::PartitionHistogram(fdatasync_latency, MICROS_PER_SECOND),
    ),
    series(
        "ringlog_batch_size_bytes",
        PARTITION,
        "Sizes of the batches appended.",
        Source::PartitionHistogram(batch_sizes, 1.0),
    ),
    series(
        "ringlog_produce_duration_seconds",
        NODE_ACKS,
        "Latency of produce requests, by acks level: from the request read off its \
         connection to its answer queued for writing (every answer, errors included).",
        Source::NodeHistogram(|s| &s.produce_latency_us, MICROS_PER_SECOND),
    ),
    series(
        "ringlog_fetch_duration_seconds",
        NODE_CONSISTENCY,
        "Latency of fetch requests, by consistency, measured like produce latency (a long \
         poll's wait included).",
        Source::NodeHistogram(|s| &s.fetch_latency_us, MICROS_PER_SECOND),
    ),
    series(
        "ringlog_commit_duration_seconds",
        PARTITION,
        "Latency from a produce reaching the leader's replicator to the commit index passing \
         its entry, every acks level (leader only).",
        Source::PartitionHistogram(commit_latency, MICROS_PER_SECOND),
    ),
    series(
        "ringlog_peer_rtt_seconds",
        NODE_PEER,
        "Round trip to a peer on the replication link: a heartbeat frame sent to the next \
         heartbeat-response frame from it (measured while leading a partition).",
        Source::PeerRtt,
    ),
    series(
        "ringlog_follower_durable_index",
        FOLLOWER,
        "Highest Raft index the follower reported durable (leader only).",
        FollowerGauge(|f| f.durable.0),
    ),
    series(
        "ringlog_follower_lag_entries",
        FOLLOWER,
        "Entries the follower is behind the leader's last index (leader only).",
        FollowerGauge(|f| f.lag),
    ),
    series(
        "ringlog_follower_learner",
        FOLLOWER,
        "1 when the follower is a non-voting learner (leader only).",
        FollowerGauge(|f| u64::from(f.learner)),
    ),
    series(
        "ringlog_follower_inflight_messages",
        FOLLOWER,
        "AppendEntries in flight to the follower: use of the pipelining window (leader only).",
        FollowerGauge(|f| f.inflight_msgs),
    ),
    series(
        "ringlog_follower_inflight_bytes",
        FOLLOWER,
        "Bytes in flight to the follower: use of the pipelining window (leader only).",
        FollowerGauge(|f| f.inflight_bytes),
    ),
    series(
        "ringlog_follower_damaged",
        FOLLOWER,
        "1 when the follower reported itself damaged: it counts toward no quorum until \
         repaired (leader only).",
        FollowerGauge(|f| u64::from(f.damaged)),
    ),
    series(
        "ringlog_follower_stuck",
        FOLLOWER,
        "1 when the follower is behind and its durable index has not moved for 10 election \
         timeouts (leader only).",
        FollowerGauge(|f| u64::from(f.stuck)),
    ),
    series(
        "process_cpu_seconds",
        NODE,
        "User and system CPU time spent by the process, in seconds.",
        Source::ProcessSeconds(|p| p.cpu_seconds),
    ),
    series(
        "process_resident_memory_bytes",
        NODE,
        "Resident memory size of the process, in bytes.",
        ProcessGauge(|p| p.resident_memory_bytes),
    ),
    series(
        "process_virtual_memory_bytes",
        NODE,
        "Virtual memory size of the process, in bytes.",
        ProcessGauge(|p| p.virtual_memory_bytes),
    ),
    series(
        "process_open_fds",
        NODE,
        "Open file descriptors of the process.",
        ProcessGauge(|p| p.open_fds),
    ),
    series(
        "process_max_fds",
        NODE,
        "The process' limit of open file descriptors (soft RLIMIT_NOFILE).",
        ProcessGauge(|p| p.max_fds),
    ),
];

/// Every role, in the order `ringlog_partition_role` lists them, with its label value.
const ROLES: [(Role, &str); 5] = [
    (Role::Follower, "follower"),
    (Role::PreCandidate, "precandidate"),
    (Role::Candidate, "candidate"),
    (Role::Leader, "leader"),
    (Role::Learner, "learner"),
];

/// Renders one snapshot in the Prometheus text exposition format (version 0.0.4).
pub fn render(snapshot: &NodeSnapshot) -> String {
    render_owned(snapshot.clone())
}

/// [`render`] without the copy (the collector must own what it encodes).
pub(crate) fn render_owned(snapshot: NodeSnapshot) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(SnapshotCollector { snapshot }));
    let mut text = String::new();
    prometheus_client::encoding::prometheus_text::encode(&mut text, &registry)
        .expect("encoding into a String cannot fail");
    text
}

/// Encodes one snapshot's series at scrape time.
#[derive(Debug)]
struct SnapshotCollector {
    snapshot: NodeSnapshot,
}

/// The samples of one family: label values (matching the series' label names) and a value.
type Rows<'a> = Vec<(Vec<String>, SampleValue<'a>)>;

/// One sample's value, borrowing histogram buckets from the snapshot (or owning them when
/// they were summed over shards).
#[derive(Clone, Debug)]
enum SampleValue<'a> {
    Count(u64),
    /// A counter of seconds (`process_cpu_seconds_total`).
    Seconds(f64),
    Level(u64),
    /// Cumulative `(upper bound, count)` buckets (`u64::MAX` = +Inf), their sum, and the
    /// factor bounds and sum are divided by.
    Histogram {
        buckets: &'a [(u64, u64)],
        sum: u64,
        scale: f64,
    },
    /// A histogram summed over shards, and the factor its bounds and sum are divided by.
    Merged(HistogramSnapshot, f64),
}

impl Collector for SnapshotCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        for series in SERIES {
            let rows = rows(&self.snapshot, series);
            encode_family(&mut encoder, series, &rows)?;
        }
        Ok(())
    }
}

/// Writes one family: its HELP and TYPE lines, then each row.
fn encode_family(
    encoder: &mut DescriptorEncoder<'_>,
    series: &Series,
    rows: &Rows<'_>,
) -> Result<(), std::fmt::Error> {
    let mut metric =
        encoder.encode_descriptor(series.name, series.help, None, series.metric_type())?;
    for (values, value) in rows {
        assert_eq!(values.len(), series.labels.len(), "labels of {}", series.name);
        let labels: Vec<(&str, &str)> =
            series.labels.iter().copied().zip(values.iter().map(String::as_str)).collect();
        let mut sample = metric.encode_family(&labels)?;
        let (buckets, sum, scale) = match value {
            SampleValue::Count(count) => {
                sample.encode_counter::<NoLabelSet, u64, u64>(count, None)?;
                continue;
            }
            SampleValue::Seconds(seconds) => {
                sample.encode_counter::<NoLabelSet, f64, u64>(seconds, None)?;
                continue;
            }
            SampleValue::Level(level) => {
                sample.encode_gauge(level)?;
                continue;
            }
            SampleValue::Histogram { buckets, sum, scale } => (*buckets, *sum, *scale),
            SampleValue::Merged(histogram, scale) => {
                (histogram.buckets.as_slice(), histogram.sum, *scale)
            }
        };
        let (buckets, count) = histogram_buckets(buckets, scale);
        sample.encode_histogram::<NoLabelSet>(sum as f64 / scale, count, &buckets, None)?;
    }
    Ok(())
}

/// Converts cumulative `(bound, count)` buckets into the per-bucket counts prometheus-client
/// cumulates itself, bounds divided by `scale`; returns them and the total count. A count
/// below its predecessor (a torn snapshot) is clamped to it.
fn histogram_buckets(cumulative: &[(u64, u64)], scale: f64) -> (Vec<(f64, u64)>, u64) {
    let mut buckets = Vec::with_capacity(cumulative.len());
    let mut previous = 0u64;
    for &(bound, count) in cumulative {
        let le = if bound == u64::MAX { f64::INFINITY } else { bound as f64 / scale };
        let count = count.max(previous);
        buckets.push((le, count - previous));
        previous = count;
    }
    (buckets, previous)
}

/// Every partition of every shard, in partition order.
fn partitions(snapshot: &NodeSnapshot) -> Vec<&PartitionSnapshot> {
    let mut partitions: Vec<&PartitionSnapshot> =
        snapshot.shards.iter().flat_map(|shard| shard.partitions.iter()).collect();
    partitions.sort_by_key(|p| p.partition);
    partitions
}

/// The rows of `series` in `snapshot`.
fn rows<'a>(snapshot: &'a NodeSnapshot, series: &Series) -> Rows<'a> {
    let node = snapshot.node.0.to_string();
    let mut rows = Vec::new();
    match series.source {
        Source::BuildInfo => {
            let labels = vec![node, env!("CARGO_PKG_VERSION").to_string()];
            rows.push((labels, SampleValue::Level(1)));
        }
        Source::ShardCount => {
            rows.push((vec![node], SampleValue::Level(snapshot.shards.len() as u64)));
        }
        Source::ShardGauge(value) => {
            for shard in &snapshot.shards {
                let labels = vec![node.clone(), shard.shard.to_string()];
                rows.push((labels, SampleValue::Level(value(shard))));
            }
        }
        Source::ShardRejected => {
            for shard in &snapshot.shards {
                for (kind, count) in &shard.rejected_inputs {
                    let labels = vec![node.clone(), shard.shard.to_string(), kind.clone()];
                    rows.push((labels, SampleValue::Count(*count)));
                }
            }
        }
        Source::PartitionRole => {
            for p in partitions(snapshot) {
                for (role, role_name) in ROLES {
                    let labels =
                        vec![node.clone(), p.partition.0.to_string(), role_name.to_string()];
                    rows.push((labels, SampleValue::Level(u64::from(p.role == Some(role)))));
                }
            }
        }
        Source::PartitionGauge(value) | Source::PartitionCounter(value) => {
            let counter = matches!(series.source, Source::PartitionCounter(_));
            for p in partitions(snapshot) {
                let labels = vec![node.clone(), p.partition.0.to_string()];
                let value = if counter {
                    SampleValue::Count(value(p))
                } else {
                    SampleValue::Level(value(p))
                };
                rows.push((labels, value));
            }
        }
        Source::PartitionErrors => {
            for p in partitions(snapshot) {
                for (kind, count) in &p.errors {
                    let labels = vec![node.clone(), p.partition.0.to_string(), kind.clone()];
                    rows.push((labels, SampleValue::Count(*count)));
                }
            }
        }
        Source::PartitionHistogram(value, scale) => {
            for p in partitions(snapshot) {
                let labels = vec![node.clone(), p.partition.0.to_string()];
                let (buckets, sum) = value(p);
                rows.push((labels, SampleValue::Histogram { buckets, sum, scale }));
            }
        }
        Source::FollowerGauge(value) => {
            for p in partitions(snapshot) {
                for f in &p.followers {
                    let labels =
                        vec![node.clone(), p.partition.0.to_string(), f.node.0.to_string()];
                    rows.push((labels, SampleValue::Level(value(f))));
                }
            }
        }
        Source::NodeHistogram(value, scale) => {
            // By label value, in the order the first shard lists them.
            let mut merged: Vec<(&str, HistogramSnapshot)> = Vec::new();
            for shard in &snapshot.shards {
                for (label, histogram) in value(shard) {
                    match merged.iter_mut().find(|(l, _)| l == label) {
                        Some((_, sum)) => sum.merge(histogram),
                        None => merged.push((label, histogram.clone())),
                    }
                }
            }
            rows.extend(merged.into_iter().map(|(label, h)| {
                (vec![node.clone(), label.to_string()], SampleValue::Merged(h, scale))
            }));
        }
        Source::PeerRtt => {
            let mut merged: BTreeMap<u32, HistogramSnapshot> = BTreeMap::new();
            for shard in &snapshot.shards {
                for (peer, histogram) in &shard.peer_rtt_us {
                    merged.entry(peer.0).or_default().merge(histogram);
                }
            }
            rows.extend(merged.into_iter().map(|(peer, h)| {
                (vec![node.clone(), peer.to_string()], SampleValue::Merged(h, MICROS_PER_SECOND))
            }));
        }
        Source::ProcessSeconds(value) => {
            if let Some(process) = &snapshot.process {
                rows.push((vec![node], SampleValue::Seconds(value(process))));
            }
        }
        Source::ProcessGauge(value) => {
            if let Some(process) = &snapshot.process {
                rows.push((vec![node], SampleValue::Level(value(process))));
            }
        }
        Source::DataDirGauge(value) => {
            if let Some(space) = &snapshot.data_dir_space {
                rows.push((vec![node], SampleValue::Level(value(space))));
            }
        }
    }
    rows
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::FollowerSnapshot;
    use ringlog_net::{Offset, PartitionId};
    use ringlog_raft::{LogIndex, NodeId, Term};

    fn leader_partition(partition: u32) -> PartitionSnapshot {
        PartitionSnapshot {
            partition: PartitionId(partition),
            role: Some(Role::Leader),
            term: Term(7),
            leader: Some(NodeId(1)),
            commit: LogIndex(40),
            durable: LogIndex(41),
            last_index: LogIndex(42),
            damaged: false,
            commit_offset: Offset(400),
            log_start_offset: Offset(0),
            log_end_offset: Offset(420),
            log_size_bytes: 135_168,
            commit_latency_us: HistogramSnapshot {
                buckets: vec![(1_000, 3), (10_000, 38), (u64::MAX, 39)],
                sum: 195_000,
            },
            elections_started: 2,
            leader_changes: 3,
            appends: 39,
            append_bytes: 39_000,
            append_records: 390,
            fetches: 5,
            fetch_bytes: 5_000,
            balancer_transfers: 2,
            errors: vec![("not_leader".to_string(), 4)],
            pending_appends: 1,
            log_queued_bytes: 4096,
            flushes: 30,
            fdatasyncs: 31,
            bytes_written: 131_072,
            fdatasync_latency_buckets_us: vec![(100, 2), (1_000, 5), (u64::MAX, 6)],
            fdatasync_latency_sum_us: 2_500,
            batch_size_buckets: vec![(1_024, 30), (4_096, 39), (u64::MAX, 39)],
            batch_size_sum: 39_000,
            followers: vec![
                FollowerSnapshot {
                    node: NodeId(2),
                    durable: LogIndex(41),
                    lag: 1,
                    learner: false,
                    damaged: false,
                    stuck: false,
                    inflight_msgs: 2,
                    inflight_bytes: 2048,
                },
                FollowerSnapshot {
                    node: NodeId(3),
                    lag: 42,
                    learner: true,
                    stuck: true,
                    ..Default::default()
                },
            ],
        }
    }

    fn follower_partition(partition: u32) -> PartitionSnapshot {
        PartitionSnapshot {
            partition: PartitionId(partition),
            role: Some(Role::Follower),
            term: Term(7),
            leader: Some(NodeId(2)),
            damaged: true,
            ..Default::default()
        }
    }

    /// A latency histogram over bounds 1 ms, 10 ms, +Inf (µs).
    fn latency(below_1ms: u64, below_10ms: u64, above: u64, sum: u64) -> HistogramSnapshot {
        let buckets = vec![
            (1_000, below_1ms),
            (10_000, below_1ms + below_10ms),
            (u64::MAX, below_1ms + below_10ms + above),
        ];
        HistogramSnapshot { buckets, sum }
    }

    fn snapshot() -> NodeSnapshot {
        NodeSnapshot {
            node: NodeId(1),
            shards: vec![
                ShardSnapshot {
                    shard: 0,
                    mailbox_depth: 3,
                    client_connections: 2,
                    peer_queue_frames: 5,
                    peer_queue_bytes: 600,
                    rejected_inputs: vec![("bad \"frame\"\n".to_string(), 1)],
                    produce_latency_us: vec![
                        ("none", latency(0, 0, 0, 0)),
                        ("leader", latency(1, 0, 0, 500)),
                        ("quorum", latency(2, 3, 1, 40_000)),
                    ],
                    fetch_latency_us: vec![
                        ("linearizable", latency(0, 1, 0, 2_000)),
                        ("replica", latency(4, 0, 0, 1_000)),
                    ],
                    peer_rtt_us: vec![(NodeId(2), latency(5, 0, 0, 1_500))],
                    partitions: vec![leader_partition(0), follower_partition(2)],
                },
                ShardSnapshot {
                    shard: 1,
                    produce_latency_us: vec![
                        ("none", latency(0, 0, 0, 0)),
                        ("leader", latency(0, 0, 0, 0)),
                        ("quorum", latency(1, 1, 0, 6_000)),
                    ],
                    fetch_latency_us: vec![
                        ("linearizable", latency(0, 0, 0, 0)),
                        ("replica", latency(0, 0, 0, 0)),
                    ],
                    peer_rtt_us: vec![
                        (NodeId(2), latency(1, 1, 0, 3_000)),
                        (NodeId(3), latency(0, 0, 2, 60_000)),
                    ],
                    partitions: vec![follower_partition(1)],
                    ..Default::default()
                },
            ],
            process: Some(ProcessSnapshot {
                cpu_seconds: 12.5,
                resident_memory_bytes: 50 << 20,
                virtual_memory_bytes: 900 << 20,
                open_fds: 42,
                max_fds: 20_000,
            }),
            data_dir_space: Some(FilesystemSpace {
                total_bytes: 1 << 40,
                available_bytes: 1 << 30,
            }),
        }
    }

    /// The sample lines of `text` (no comments), as `name{labels}` → value.
    fn samples(text: &str) -> Vec<(String, String)> {
        text.lines()
            .filter(|line| !line.starts_with('#'))
            .map(|line| {
                let (series, value) = line.rsplit_once(' ').expect("sample has a value");
                (series.to_string(), value.to_string())
            })
            .collect()
    }

    fn value_of(text: &str, series: &str) -> String {
        samples(text)
            .into_iter()
            .find(|(s, _)| s == series)
            .unwrap_or_else(|| panic!("no sample {series} in:\n{text}"))
            .1
    }

    #[test]
    fn render_declares_every_series_once_with_its_type() {
        let text = render(&snapshot());
        for series in SERIES {
            let kind = match series.kind() {
                SeriesKind::Counter => "counter",
                SeriesKind::Gauge => "gauge",
                SeriesKind::Histogram => "histogram",
            };
            let type_line = format!("# TYPE {} {kind}\n", series.exposed_name());
            assert_eq!(text.matches(&type_line).count(), 1, "{type_line} in:\n{text}");
            assert!(text.contains(&format!("# HELP {} ", series.exposed_name())));
        }
    }

    #[test]
    fn every_series_name_is_unique_prefixed_and_carries_the_node_label() {
        let mut names: Vec<&str> = SERIES.iter().map(|s| s.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), SERIES.len());
        for series in SERIES {
            assert!(
                series.name.starts_with("ringlog_") || series.name.starts_with("process_"),
                "{}",
                series.name
            );
            assert!(!series.name.ends_with("_total"), "{}: the encoder adds _total", series.name);
            assert_eq!(series.labels.first(), Some(&"node"), "{}", series.name);
        }
    }

    #[test]
    fn every_sample_belongs_to_a_declared_series_with_its_labels() {
        let text = render(&snapshot());
        for (sample, _) in samples(&text) {
            let name = sample.split('{').next().unwrap();
            let series = SERIES
                .iter()
                .find(|s| {
                    let exposed = s.exposed_name();
                    name == exposed
                        || (s.kind() == SeriesKind::Histogram
                            && [
                                format!("{exposed}_bucket"),
                                format!("{exposed}_sum"),
                                format!("{exposed}_count"),
                            ]
                            .contains(&name.to_string()))
                })
                .unwrap_or_else(|| panic!("{sample} belongs to no declared series"));
            for label in series.labels {
                assert!(sample.contains(&format!("{label}=\"")), "{sample} lacks {label}");
            }
        }
    }

    #[test]
    fn partition_gauges_and_counters_carry_the_snapshot_values() {
        let text = render(&snapshot());
        let p0 = "{node=\"1\",partition=\"0\"}";
        assert_eq!(value_of(&text, &format!("ringlog_partition_term{p0}")), "7");
        assert_eq!(value_of(&text, &format!("ringlog_partition_leader_node{p0}")), "1");
        assert_eq!(value_of(&text, &format!("ringlog_partition_commit_index{p0}")), "40");
        assert_eq!(value_of(&text, &format!("ringlog_partition_durable_index{p0}")), "41");
        assert_eq!(value_of(&text, &format!("ringlog_partition_last_index{p0}")), "42");
        assert_eq!(value_of(&text, &format!("ringlog_partition_commit_offset{p0}")), "400");
        assert_eq!(value_of(&text, &format!("ringlog_partition_log_end_offset{p0}")), "420");
        assert_eq!(value_of(&text, &format!("ringlog_partition_log_size_bytes{p0}")), "135168");
        assert_eq!(value_of(&text, &format!("ringlog_partition_elections_total{p0}")), "2");
        assert_eq!(value_of(&text, &format!("ringlog_partition_leader_changes_total{p0}")), "3");
        assert_eq!(
            value_of(&text, &format!("ringlog_partition_balancer_transfers_total{p0}")),
            "2"
        );
        assert_eq!(value_of(&text, &format!("ringlog_appends_total{p0}")), "39");
        assert_eq!(value_of(&text, &format!("ringlog_append_bytes_total{p0}")), "39000");
        assert_eq!(value_of(&text, &format!("ringlog_append_records_total{p0}")), "390");
        assert_eq!(value_of(&text, &format!("ringlog_fetch_bytes_total{p0}")), "5000");
        assert_eq!(value_of(&text, &format!("ringlog_log_fdatasyncs_total{p0}")), "31");
        assert_eq!(value_of(&text, &format!("ringlog_log_queued_bytes{p0}")), "4096");
        assert_eq!(
            value_of(&text, "ringlog_errors_total{node=\"1\",partition=\"0\",kind=\"not_leader\"}"),
            "4"
        );
        assert_eq!(value_of(&text, "ringlog_shards{node=\"1\"}"), "2");
        let available = value_of(&text, "ringlog_data_dir_available_bytes{node=\"1\"}");
        assert_eq!(available, (1u64 << 30).to_string());
        let size = value_of(&text, "ringlog_data_dir_size_bytes{node=\"1\"}");
        assert_eq!(size, (1u64 << 40).to_string());
        assert_eq!(value_of(&text, "ringlog_shard_mailbox_commands{node=\"1\",shard=\"0\"}"), "3");
        let version = env!("CARGO_PKG_VERSION");
        assert_eq!(
            value_of(&text, &format!("ringlog_build_info{{node=\"1\",version=\"{version}\"}}")),
            "1"
        );
    }

    #[test]
    fn partitions_are_listed_in_partition_order_across_shards() {
        let text = render(&snapshot());
        let order: Vec<String> = samples(&text)
            .into_iter()
            .filter(|(s, _)| s.starts_with("ringlog_partition_term{"))
            .map(|(s, _)| s)
            .collect();
        assert_eq!(
            order,
            ["0", "1", "2"]
                .map(|p| format!("ringlog_partition_term{{node=\"1\",partition=\"{p}\"}}"))
        );
    }

    #[test]
    fn role_is_one_for_the_current_role_and_zero_for_the_others() {
        let text = render(&snapshot());
        for (partition, current) in [("0", "leader"), ("1", "follower")] {
            for (_, role) in ROLES {
                let series = format!(
                    "ringlog_partition_role{{node=\"1\",partition=\"{partition}\",role=\"{role}\"}}"
                );
                let expected = if role == current { "1" } else { "0" };
                assert_eq!(value_of(&text, &series), expected, "{series}");
            }
        }
    }

    #[test]
    fn a_partition_with_no_role_yet_has_every_role_at_zero() {
        let mut snapshot = snapshot();
        snapshot.shards[1].partitions[0].role = None;
        let text = render(&snapshot);
        let ones = samples(&text)
            .into_iter()
            .filter(|(s, v)| {
                s.contains("ringlog_partition_role{node=\"1\",partition=\"1\"") && v == "1"
            })
            .count();
        assert_eq!(ones, 0);
    }

    #[test]
    fn fdatasync_histogram_is_exposed_in_seconds_with_cumulative_buckets() {
        let text = render(&snapshot());
        let base = "ringlog_log_fdatasync_duration_seconds";
        let labels = "node=\"1\",partition=\"0\"";
        assert_eq!(value_of(&text, &format!("{base}_bucket{{{labels},le=\"0.0001\"}}")), "2");
        assert_eq!(value_of(&text, &format!("{base}_bucket{{{labels},le=\"0.001\"}}")), "5");
        assert_eq!(value_of(&text, &format!("{base}_bucket{{{labels},le=\"+Inf\"}}")), "6");
        assert_eq!(value_of(&text, &format!("{base}_sum{{{labels}}}")), "0.0025");
        assert_eq!(value_of(&text, &format!("{base}_count{{{labels}}}")), "6");
        let sizes = "ringlog_batch_size_bytes";
        assert_eq!(value_of(&text, &format!("{sizes}_bucket{{{labels},le=\"1024\"}}")), "30");
        assert_eq!(value_of(&text, &format!("{sizes}_bucket{{{labels},le=\"4096\"}}")), "39");
        assert_eq!(value_of(&text, &format!("{sizes}_count{{{labels}}}")), "39");
    }

    #[test]
    fn histogram_without_an_infinite_bound_gets_one_and_a_decrease_is_clamped() {
        let (buckets, count) = histogram_buckets(&[(10, 4), (20, 3), (30, 9)], 1.0);
        assert_eq!(buckets, vec![(10.0, 4), (20.0, 0), (30.0, 5)]);
        assert_eq!(count, 9);
        let mut snapshot = snapshot();
        snapshot.shards[0].partitions[0].batch_size_buckets = vec![(10, 4), (20, 3), (30, 9)];
        let text = render(&snapshot);
        let labels = "node=\"1\",partition=\"0\"";
        assert_eq!(
            value_of(&text, &format!("ringlog_batch_size_bytes_bucket{{{labels},le=\"20\"}}")),
            "4"
        );
        assert_eq!(
            value_of(&text, &format!("ringlog_batch_size_bytes_bucket{{{labels},le=\"+Inf\"}}")),
            "9"
        );
    }

    #[test]
    fn follower_series_list_each_follower_of_a_leader_partition_only() {
        let text = render(&snapshot());
        let f2 = "{node=\"1\",partition=\"0\",follower=\"2\"}";
        let f3 = "{node=\"1\",partition=\"0\",follower=\"3\"}";
        assert_eq!(value_of(&text, &format!("ringlog_follower_lag_entries{f2}")), "1");
        assert_eq!(value_of(&text, &format!("ringlog_follower_durable_index{f2}")), "41");
        assert_eq!(value_of(&text, &format!("ringlog_follower_inflight_messages{f2}")), "2");
        assert_eq!(value_of(&text, &format!("ringlog_follower_inflight_bytes{f2}")), "2048");
        assert_eq!(value_of(&text, &format!("ringlog_follower_lag_entries{f3}")), "42");
        assert_eq!(value_of(&text, &format!("ringlog_follower_learner{f3}")), "1");
        assert_eq!(value_of(&text, &format!("ringlog_follower_stuck{f2}")), "0");
        assert_eq!(value_of(&text, &format!("ringlog_follower_stuck{f3}")), "1");
        assert_eq!(value_of(&text, &format!("ringlog_follower_damaged{f3}")), "0");
        let p0 = "{node=\"1\",partition=\"0\"}";
        let p2 = "{node=\"1\",partition=\"2\"}";
        assert_eq!(value_of(&text, &format!("ringlog_partition_damaged{p0}")), "0");
        assert_eq!(value_of(&text, &format!("ringlog_partition_damaged{p2}")), "1");
        let follower_samples =
            samples(&text).into_iter().filter(|(s, _)| s.starts_with("ringlog_follower_")).count();
        let follower_series =
            SERIES.iter().filter(|s| s.name.starts_with("ringlog_follower_")).count();
        assert_eq!(follower_samples, follower_series * 2);
    }

    #[test]
    fn label_values_from_the_node_are_escaped() {
        let text = render(&snapshot());
        assert!(
            text.contains("ringlog_rejected_inputs_total{node=\"1\",shard=\"0\",kind=\"bad \\\"frame\\\"\\n\"} 1\n"),
            "{text}"
        );
    }

    #[test]
    fn an_empty_snapshot_renders_declarations_and_node_series_only() {
        let text = render(&NodeSnapshot::default());
        let names: Vec<String> = samples(&text)
            .into_iter()
            .map(|(s, _)| s.split('{').next().unwrap().to_string())
            .collect();
        assert_eq!(names, ["ringlog_build_info", "ringlog_shards"]);
    }

    #[test]
    fn produce_fetch_and_peer_histograms_are_summed_over_shards_by_label() {
        let text = render(&snapshot());
        let produce = "ringlog_produce_duration_seconds";
        let quorum = "node=\"1\",acks=\"quorum\"";
        assert_eq!(value_of(&text, &format!("{produce}_bucket{{{quorum},le=\"0.001\"}}")), "3");
        assert_eq!(value_of(&text, &format!("{produce}_bucket{{{quorum},le=\"0.01\"}}")), "7");
        assert_eq!(value_of(&text, &format!("{produce}_bucket{{{quorum},le=\"+Inf\"}}")), "8");
        assert_eq!(value_of(&text, &format!("{produce}_count{{{quorum}}}")), "8");
        assert_eq!(value_of(&text, &format!("{produce}_sum{{{quorum}}}")), "0.046");
        assert_eq!(value_of(&text, &format!("{produce}_count{{node=\"1\",acks=\"leader\"}}")), "1");
        assert_eq!(value_of(&text, &format!("{produce}_count{{node=\"1\",acks=\"none\"}}")), "0");
        let fetch = "ringlog_fetch_duration_seconds";
        let replica = "node=\"1\",consistency=\"replica\"";
        assert_eq!(value_of(&text, &format!("{fetch}_count{{{replica}}}")), "4");
        assert_eq!(value_of(&text, &format!("{fetch}_sum{{{replica}}}")), "0.001");
        let rtt = "ringlog_peer_rtt_seconds";
        assert_eq!(value_of(&text, &format!("{rtt}_count{{node=\"1\",peer=\"2\"}}")), "7");
        assert_eq!(value_of(&text, &format!("{rtt}_sum{{node=\"1\",peer=\"2\"}}")), "0.0045");
        assert_eq!(
            value_of(&text, &format!("{rtt}_bucket{{node=\"1\",peer=\"2\",le=\"0.001\"}}")),
            "6"
        );
        assert_eq!(value_of(&text, &format!("{rtt}_count{{node=\"1\",peer=\"3\"}}")), "2");
        let peers = samples(&text)
            .into_iter()
            .filter(|(s, _)| s.starts_with(&format!("{rtt}_count")))
            .count();
        assert_eq!(peers, 2, "one row per peer, not per shard");
    }

    #[test]
    fn commit_latency_is_a_partition_histogram_in_seconds() {
        let text = render(&snapshot());
        let base = "ringlog_commit_duration_seconds";
        let p0 = "node=\"1\",partition=\"0\"";
        assert_eq!(value_of(&text, &format!("{base}_bucket{{{p0},le=\"0.001\"}}")), "3");
        assert_eq!(value_of(&text, &format!("{base}_bucket{{{p0},le=\"0.01\"}}")), "38");
        assert_eq!(value_of(&text, &format!("{base}_count{{{p0}}}")), "39");
        assert_eq!(value_of(&text, &format!("{base}_sum{{{p0}}}")), "0.195");
    }

    #[test]
    fn process_series_carry_the_standard_names_and_are_left_out_without_proc() {
        let text = render(&snapshot());
        let node = "{node=\"1\"}";
        assert_eq!(value_of(&text, &format!("process_cpu_seconds_total{node}")), "12.5");
        assert!(text.contains("# TYPE process_cpu_seconds_total counter\n"), "{text}");
        assert_eq!(
            value_of(&text, &format!("process_resident_memory_bytes{node}")),
            (50u64 << 20).to_string()
        );
        assert_eq!(
            value_of(&text, &format!("process_virtual_memory_bytes{node}")),
            (900u64 << 20).to_string()
        );
        assert_eq!(value_of(&text, &format!("process_open_fds{node}")), "42");
        assert_eq!(value_of(&text, &format!("process_max_fds{node}")), "20000");
        let mut without = snapshot();
        without.process = None;
        let text = render(&without);
        assert!(samples(&text).iter().all(|(s, _)| !s.starts_with("process_")), "{text}");
    }

    #[test]
    fn docs_metrics_md_documents_exactly_the_declared_series() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/metrics.md");
        let docs = std::fs::read_to_string(path).expect("docs/metrics.md");
        for series in SERIES {
            assert!(
                docs.contains(&format!("| `{}` |", series.exposed_name())),
                "docs/metrics.md lacks a table row for `{}`",
                series.exposed_name()
            );
        }
        let documented = docs
            .lines()
            .filter(|line| line.starts_with("| `ringlog_") || line.starts_with("| `process_"))
            .count();
        assert_eq!(documented, SERIES.len(), "docs/metrics.md lists series that do not exist");
    }
}
