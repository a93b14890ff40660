//! The bench's side of the cluster: producers and readers over the Rust client
//! (`ringlog_net::client::Client`; with `--pipeline N`, a producer keeps N batches in flight
//! on a `ringlog_net::client::Pipeline`), leader lookup, and the nodes' counters.
//!
//! A record's value starts with the wall-clock time it was sent (unix nanoseconds, little
//! endian) so that a reader computes produce-to-consume latency from the value alone; the
//! rest is a fixed pattern.
//!
//! Invariants: a producer retries a failed produce (counting the failure) until it is
//! acknowledged or `RETRY_TIME_MAX` passed since its first attempt; an *indeterminate*
//! failure (the node may have appended the batch) is retried too, so records may be
//! duplicated in a benchmark log — the bench never checks exactly-once, the cluster tests do.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context as _};
use ringlog_net::client::{
    build_batch, Client, ClientConfig, ClientError, ClientTls, Completion, Pipeline,
};
use ringlog_net::protocol::{Acks, Consistency, ErrorReply};
use ringlog_net::{Offset, PartitionId};

use crate::producers::Producer;
use crate::raw_disk::fill_pattern;
use crate::workdir::StopFlag;

/// Longest a producer keeps retrying one batch before the scenario fails.
pub const RETRY_TIME_MAX: Duration = Duration::from_secs(30);
/// Pause between two attempts of a failed produce.
const RETRY_PAUSE: Duration = Duration::from_millis(5);
/// Bytes of the send-time stamp at the start of every record.
pub const STAMP_BYTES: usize = 8;
/// Longest a reader's fetch waits for new data (long poll).
pub const FETCH_WAIT: Duration = Duration::from_millis(100);
/// Most bytes one fetch asks for.
pub const FETCH_BYTES: u32 = 1 << 20;

/// Where the benchmark's clients connect: shard-0 client addresses, and the TLS settings
/// (`None`: plaintext) of `--tls-ca` / `--tls-cert` / `--tls-key`.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub addrs: Vec<SocketAddr>,
    pub tls: Option<ClientTls>,
}

/// Client settings for benchmark connections: short metadata timeouts so that a dead leader
/// is routed around quickly, long request timeouts so that a slow disk is measured, not
/// failed.
pub fn client_config(bootstrap: &Endpoint) -> ClientConfig {
    let mut config = ClientConfig::new(bootstrap.addrs.clone());
    config.tls = bootstrap.tls.clone();
    config.connect_timeout = Duration::from_millis(500);
    config.metadata_timeout = Duration::from_millis(500);
    config.request_timeout = Duration::from_secs(10);
    config.retry_time_max = RETRY_TIME_MAX;
    config.backoff_initial = Duration::from_millis(5);
    config.backoff_max = Duration::from_millis(100);
    config
}

/// A producer with its own connection, sending to one partition.
#[derive(Debug)]
pub struct ClusterProducer {
    client: Client,
    partition: PartitionId,
    acks: Acks,
    /// `records_per_batch_max` record values, each `record_size` bytes, stamped per send.
    values: Vec<Vec<u8>>,
    /// Ends retries when the run is interrupted (the nodes may be gone).
    stop: StopFlag,
    /// With `--pipeline`: the pipelined connection and its batches in flight (record count,
    /// completion), oldest first; at most the pipeline's window.
    pipeline: Option<(Pipeline, VecDeque<(usize, Completion)>)>,
}

impl ClusterProducer {
    /// A producer of `record_size`-byte records (at least [`STAMP_BYTES`]).
    pub fn connect(
        bootstrap: &Endpoint,
        partition: PartitionId,
        acks: Acks,
        record_size: usize,
        records_per_batch_max: usize,
        stop: &StopFlag,
    ) -> anyhow::Result<ClusterProducer> {
        let client = Client::new(client_config(bootstrap)).context("creating a client")?;
        // Learn the routes now, so the first measured send does not pay for it.
        client.metadata().context("reading the cluster's metadata")?;
        let mut value = vec![0u8; record_size.max(STAMP_BYTES)];
        fill_pattern(&mut value);
        Ok(ClusterProducer {
            client,
            partition,
            acks,
            values: vec![value; records_per_batch_max],
            stop: stop.clone(),
            pipeline: None,
        })
    }

    /// This producer with a pipelined connection keeping up to `depth` batches in flight
    /// ([`Producer::start`] / [`Producer::finish_oldest`]); `send` stays one at a time.
    pub fn pipelined(mut self, depth: usize) -> anyhow::Result<ClusterProducer> {
        let pipeline = self
            .client
            .pipeline_with_window(self.partition, self.acks, depth)
            .context("opening a pipelined connection")?;
        self.pipeline = Some((pipeline, VecDeque::with_capacity(depth)));
        Ok(self)
    }
}

/// `values`, each stamped with the current time.
fn stamped(values: &mut [Vec<u8>]) -> Vec<&[u8]> {
    let stamp = unix_nanos().to_le_bytes();
    for value in values.iter_mut() {
        value[..STAMP_BYTES].copy_from_slice(&stamp);
    }
    values.iter().map(Vec::as_slice).collect()
}

impl Producer for ClusterProducer {
    fn start(&mut self, records: usize) -> anyhow::Result<()> {
        self.start_pipelined(records)
    }

    fn finish_oldest(&mut self) -> anyhow::Result<u64> {
        self.finish_pipelined()
    }

    fn send(&mut self, records: usize) -> anyhow::Result<u64> {
        let count = records.min(self.values.len());
        let started = Instant::now();
        let mut failures = 0;
        loop {
            let refs = stamped(&mut self.values[..count]);
            match self.client.produce(self.partition, self.acks, &refs) {
                Ok(_) => return Ok(failures),
                Err(error)
                    if retryable(&error)
                        && started.elapsed() < RETRY_TIME_MAX
                        && !self.stop.is_raised() =>
                {
                    failures += 1;
                    std::thread::sleep(RETRY_PAUSE);
                }
                Err(error) => {
                    return Err(error).with_context(|| {
                        format!(
                            "produce to partition {} (after {failures} retries)",
                            self.partition.0
                        )
                    })
                }
            }
        }
    }
}

impl ClusterProducer {
    fn start_pipelined(&mut self, records: usize) -> anyhow::Result<()> {
        let count = records.min(self.values.len());
        let batch = build_batch(&stamped(&mut self.values[..count])).context("building a batch")?;
        let (pipeline, in_flight) = self.pipeline.as_mut().context("not pipelined")?;
        let completion = pipeline.send_batch(batch).context("pipelined produce")?;
        in_flight.push_back((count, completion));
        Ok(())
    }

    /// A failed pipelined batch is sent again through the blocking client (with its
    /// retries), as a fresh batch: like `send`, the bench may duplicate records.
    fn finish_pipelined(&mut self) -> anyhow::Result<u64> {
        let (_, in_flight) = self.pipeline.as_mut().context("not pipelined")?;
        let (count, completion) = in_flight.pop_front().context("no batch in flight")?;
        match completion.wait() {
            Ok(_) => Ok(0),
            Err(error) if retryable(&error) && !self.stop.is_raised() => Ok(1 + self.send(count)?),
            Err(error) => Err(error)
                .with_context(|| format!("pipelined produce to partition {}", self.partition.0)),
        }
    }
}

/// Whether a failed produce is worth retrying in a benchmark (the cluster may be electing a
/// leader, a connection may have died with a killed node, queues may be full).
fn retryable(error: &ClientError) -> bool {
    match error {
        ClientError::Server { reply, .. } => matches!(
            reply,
            ErrorReply::NotLeader { .. }
                | ErrorReply::Backpressure { .. }
                | ErrorReply::Timeout
                | ErrorReply::ShuttingDown
        ),
        ClientError::Connect { .. }
        | ClientError::Io { .. }
        | ClientError::Indeterminate { .. }
        | ClientError::NoLeader { .. }
        | ClientError::RetriesExhausted { .. } => true,
        _ => false,
    }
}

/// Wall-clock nanoseconds since the Unix epoch.
pub fn unix_nanos() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

/// What one pass of a reader got.
#[derive(Debug, Default, Clone, Copy)]
pub struct ReadProgress {
    pub records: u64,
    pub bytes: u64,
    pub fetches: u64,
    pub next: Offset,
}

/// Reads `partition` from `next`, calling `on_record(stamp_nanos)` per record, until
/// `until` returns true after a fetch; retries transient failures (counted in `errors`).
pub fn read_partition(
    client: &Client,
    partition: PartitionId,
    mut next: Offset,
    errors: &mut u64,
    on_record: &mut dyn FnMut(u64),
    until: &mut dyn FnMut(&ReadProgress) -> bool,
) -> anyhow::Result<ReadProgress> {
    let mut progress = ReadProgress { next, ..ReadProgress::default() };
    let started = Instant::now();
    loop {
        let response = match client.fetch(
            partition,
            next,
            FETCH_BYTES,
            FETCH_WAIT,
            Consistency::ReplicaCommitted,
        ) {
            Ok(response) => response,
            Err(error)
                if started.elapsed() < RETRY_TIME_MAX
                    && !matches!(error, ClientError::CorruptBatch { .. }) =>
            {
                *errors += 1;
                if let Some(ErrorReply::OffsetOutOfRange { log_start, .. }) = error.reply() {
                    // Retention removed what we wanted: continue from the log start.
                    next = next.max(*log_start);
                }
                std::thread::sleep(RETRY_PAUSE);
                if until(&progress) {
                    return Ok(progress);
                }
                continue;
            }
            Err(error) => return Err(error).context("fetch"),
        };
        progress.fetches += 1;
        if next < response.log_start {
            next = response.log_start;
        }
        let records = ringlog_net::client::decode_records(
            client.config().bootstrap[0],
            &response.batches,
            next,
        )
        .context("decoding fetched batches")?;
        for record in &records {
            if record.value.len() >= STAMP_BYTES {
                let mut stamp = [0u8; STAMP_BYTES];
                stamp.copy_from_slice(&record.value[..STAMP_BYTES]);
                on_record(u64::from_le_bytes(stamp));
            }
            progress.records += 1;
            progress.bytes += record.value.len() as u64;
            next = Offset(record.offset.0 + 1);
        }
        // Control batches carry no records but still move the offset forward.
        if let Some(last) = response.batches.last() {
            if let Ok(header) = ringlog_engine::batch::peek_header(last, usize::MAX) {
                next = next.max(header.next_offset());
            }
        }
        progress.next = next;
        if until(&progress) {
            return Ok(progress);
        }
    }
}

/// The node id leading `partition`, as the cluster's metadata says (waiting up to `wait` for
/// one to be elected).
pub fn leader_of(client: &Client, partition: PartitionId, wait: Duration) -> anyhow::Result<u32> {
    let deadline = Instant::now() + wait;
    loop {
        if let Ok(metadata) = client.metadata() {
            if let Some(leader) =
                metadata.partitions.iter().find(|p| p.partition == partition).and_then(|p| p.leader)
            {
                return Ok(leader.0);
            }
        }
        if Instant::now() >= deadline {
            bail!("partition {} has no leader after {wait:?}", partition.0);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits until every partition of the cluster has a leader that answers a produce.
pub fn wait_writable(bootstrap: &Endpoint, partitions: u32, wait: Duration) -> anyhow::Result<()> {
    let client = Client::new(client_config(bootstrap)).context("creating a client")?;
    let deadline = Instant::now() + wait;
    for partition in 0..partitions {
        loop {
            match client.produce(
                PartitionId(partition),
                Acks::Quorum,
                &[b"bench: warm-up".as_slice()],
            ) {
                Ok(_) => break,
                Err(error) if Instant::now() < deadline => {
                    let _ = error;
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(error) => {
                    return Err(error).with_context(|| {
                        format!("partition {partition} is not writable after {wait:?}")
                    })
                }
            }
        }
    }
    Ok(())
}

/// Waits until every partition's leader has committed its whole log and no follower lags
/// (the backlog of an acks=none or acks=leader run drained), up to `wait`; returns how long
/// it took, or `None` when it did not drain in time.
pub fn wait_drained(
    bootstrap: &Endpoint,
    partitions: u32,
    wait: Duration,
    stop: &StopFlag,
) -> anyhow::Result<Option<Duration>> {
    let client = Client::new(client_config(bootstrap)).context("creating a client")?;
    let started = Instant::now();
    for partition in 0..partitions {
        loop {
            if stop.is_raised() {
                return Ok(None);
            }
            if let Ok(status) = client.status(PartitionId(partition)) {
                let drained = status.commit >= status.last_index
                    && status.followers.iter().all(|f| f.lag == 0);
                if drained {
                    break;
                }
            }
            if started.elapsed() >= wait {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    Ok(Some(started.elapsed()))
}

/// Counters a node exports on its Prometheus endpoint that the bench reports.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct NodeCounters {
    pub fdatasyncs: u64,
    pub bytes_written: u64,
}

impl NodeCounters {
    /// The change since `start`.
    pub fn since(self, start: NodeCounters) -> NodeCounters {
        NodeCounters {
            fdatasyncs: self.fdatasyncs.saturating_sub(start.fdatasyncs),
            bytes_written: self.bytes_written.saturating_sub(start.bytes_written),
        }
    }
}

/// Most bytes read from a metrics endpoint.
const METRICS_BYTES_MAX: u64 = 16 << 20;

/// Scrapes `http://<addr>/metrics` and sums the fdatasync and bytes-written counters over
/// every partition; `None` when the endpoint does not answer or exports neither.
pub fn scrape_counters(addr: SocketAddr) -> Option<NodeCounters> {
    use std::io::{Read as _, Write as _};
    let mut stream =
        std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    let request = format!("GET /metrics HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).ok()?;
    let mut body = String::new();
    stream.take(METRICS_BYTES_MAX).read_to_string(&mut body).ok()?;
    parse_counters(&body)
}

/// Prometheus series (docs/metrics.md) summed into [`NodeCounters`].
pub const METRIC_FDATASYNCS: &str = "ringlog_log_fdatasyncs_total";
pub const METRIC_WRITTEN_BYTES: &str = "ringlog_log_written_bytes_total";

/// Sums the samples of [`METRIC_FDATASYNCS`] and [`METRIC_WRITTEN_BYTES`] over every label
/// set (every partition of the node).
pub fn parse_counters(text: &str) -> Option<NodeCounters> {
    let mut counters = NodeCounters::default();
    let mut seen = false;
    for line in text.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let name_end = line.find(['{', ' ']).unwrap_or(line.len());
        let name = &line[..name_end];
        let Some(value) = line.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) else {
            continue;
        };
        if name == METRIC_FDATASYNCS {
            counters.fdatasyncs += value as u64;
            seen = true;
        } else if name == METRIC_WRITTEN_BYTES {
            counters.bytes_written += value as u64;
            seen = true;
        }
    }
    seen.then_some(counters)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_summed_over_partitions() {
        let text = "\
# HELP ringlog_log_fdatasyncs Completed fdatasyncs.
# TYPE ringlog_log_fdatasyncs counter
ringlog_log_fdatasyncs_total{partition=\"0\"} 10
ringlog_log_fdatasyncs_total{partition=\"1\"} 5
ringlog_log_written_bytes_total{node=\"1\",partition=\"0\"} 4096
ringlog_log_fdatasync_duration_seconds_count{partition=\"0\"} 15
";
        let counters = parse_counters(text).unwrap();
        assert_eq!(counters, NodeCounters { fdatasyncs: 15, bytes_written: 4096 });
        assert_eq!(parse_counters("other_metric 3\n"), None);
    }

    #[test]
    fn transient_failures_are_retried_and_refusals_are_not() {
        let addr: SocketAddr = "127.0.0.1:1".parse().unwrap();
        assert!(retryable(&ClientError::Server {
            addr,
            reply: ErrorReply::NotLeader { partition: PartitionId(0), leader: None, address: None }
        }));
        assert!(retryable(&ClientError::Indeterminate { addr, reason: "reset".into() }));
        assert!(!retryable(&ClientError::Server {
            addr,
            reply: ErrorReply::Oversize { len: 10, max: 1 }
        }));
        assert!(!retryable(&ClientError::EmptyBatch));
    }
}
