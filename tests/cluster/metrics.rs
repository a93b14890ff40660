//! Issue 18, metrics depth, on real processes: a 3-node cluster takes produces at every acks
//! level and fetches at both consistencies over the wire; each node's `/metrics` must then
//! show the latency histograms (produce by acks, fetch by consistency, commit, peer round
//! trip) with observations, the log's end offset and size, the data disk's free space, and
//! the process' CPU, memory and descriptors — with plausible values (seconds, not
//! microseconds; counts that match the buckets).
//!
//! Everything that becomes true only eventually (commits of acks=none batches, followers'
//! log ends, heartbeats answered) is polled with a generous deadline.

#[path = "harness.rs"]
mod harness;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use harness::{Cluster, Spec, LIVENESS_TIMEOUT};
use ringlog_net::protocol::{Acks, Consistency};
use ringlog_net::{Offset, PartitionId};

/// Batches produced at each acks level, and records per batch.
const BATCHES_PER_ACKS: u64 = 20;
const RECORDS_PER_BATCH: u64 = 2;
const RECORD_BYTES: usize = 200;
/// Longest the test waits for what is eventually true (a loaded 2-core machine).
const EVENTUALLY: Duration = Duration::from_secs(60);
/// A mean latency above this is not a latency in seconds (µs exposed unscaled would be
/// thousands).
const MEAN_SECONDS_MAX: f64 = 30.0;

/// `GET /metrics`: the body of a 200 answer.
fn scrape(addr: SocketAddr) -> String {
    let mut stream = TcpStream::connect(addr).expect("connect to /metrics");
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: test\r\n\r\n").unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).expect("read /metrics");
    let (head, body) = answer.split_once("\r\n\r\n").expect("HTTP head");
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}\n{body}");
    body.to_string()
}

/// Sample lines as `series{labels}` → value.
fn parse(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .map(|line| {
            let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("{line}"));
            (series.to_string(), value.parse().unwrap_or_else(|_| panic!("bad value: {line}")))
        })
        .collect()
}

/// One scrape per node, by node id.
fn scrape_all(cluster: &Cluster) -> BTreeMap<u32, BTreeMap<String, f64>> {
    cluster.nodes.iter().map(|(id, node)| (*id, parse(&scrape(node.metrics)))).collect()
}

fn value(samples: &BTreeMap<String, f64>, series: &str) -> Option<f64> {
    samples.get(series).copied()
}

/// A histogram's count, checked against its buckets: the `+Inf` bucket equals the count,
/// buckets never decrease, and a non-empty histogram has a positive mean below
/// [`MEAN_SECONDS_MAX`]. 0 when the series is absent.
fn checked_count(samples: &BTreeMap<String, f64>, name: &str, labels: &str) -> f64 {
    let Some(count) = value(samples, &format!("{name}_count{{{labels}}}")) else { return 0.0 };
    let sum = value(samples, &format!("{name}_sum{{{labels}}}")).expect("a _sum beside _count");
    let prefix = format!("{name}_bucket{{{labels},le=\"");
    let mut buckets: Vec<(f64, f64)> = samples
        .iter()
        .filter_map(|(series, v)| {
            let le = series.strip_prefix(&prefix)?.strip_suffix("\"}")?;
            let le = if le == "+Inf" { f64::INFINITY } else { le.parse().expect("numeric le") };
            Some((le, *v))
        })
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    assert!(buckets.len() > 2, "{name}{{{labels}}}: buckets {buckets:?}");
    assert_eq!(buckets.last().map(|b| b.0), Some(f64::INFINITY), "{name}: no +Inf bucket");
    assert_eq!(buckets.last().unwrap().1, count, "{name}{{{labels}}}: +Inf bucket != count");
    assert!(buckets.windows(2).all(|w| w[0].1 <= w[1].1), "{name}: decreasing {buckets:?}");
    if count > 0.0 {
        let mean = sum / count;
        assert!(mean > 0.0 && mean < MEAN_SECONDS_MAX, "{name}{{{labels}}}: mean {mean} s");
    }
    count
}

/// Sum over the nodes of a histogram's count.
fn cluster_count(scrapes: &BTreeMap<u32, BTreeMap<String, f64>>, name: &str, labels: &str) -> f64 {
    scrapes
        .iter()
        .map(|(id, samples)| checked_count(samples, name, &format!("node=\"{id}\",{labels}")))
        .sum()
}

/// Scrapes every node until `done` holds for the scrapes, within [`EVENTUALLY`].
fn eventually(
    cluster: &Cluster,
    what: &str,
    done: impl Fn(&BTreeMap<u32, BTreeMap<String, f64>>) -> bool,
) -> BTreeMap<u32, BTreeMap<String, f64>> {
    let deadline = Instant::now() + EVENTUALLY;
    loop {
        let scrapes = scrape_all(cluster);
        if done(&scrapes) {
            return scrapes;
        }
        assert!(Instant::now() < deadline, "never true within {EVENTUALLY:?}: {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_loaded_cluster_exposes_latency_histograms_log_offsets_and_process_usage() {
    let cluster = Cluster::start("metrics", Spec::new(3).partitions(2));
    let client = cluster.client();
    let partition = PartitionId(0);
    cluster.wait_leader(&client, partition);
    cluster.wait_leader(&client, PartitionId(1));
    let before = scrape_all(&cluster);
    for acks in ["none", "leader", "quorum"] {
        let labels = format!("acks=\"{acks}\"");
        assert_eq!(
            cluster_count(&before, "ringlog_produce_duration_seconds", &labels),
            0.0,
            "a produce at acks={acks} was counted before any was sent"
        );
    }

    let record = vec![b'm'; RECORD_BYTES];
    let records = vec![record.as_slice(); RECORDS_PER_BATCH as usize];
    for acks in [Acks::None, Acks::Leader, Acks::Quorum] {
        for _ in 0..BATCHES_PER_ACKS {
            client.produce(partition, acks, &records).expect("produce");
        }
    }
    let produced_records = 3 * BATCHES_PER_ACKS * RECORDS_PER_BATCH;
    for consistency in [Consistency::LeaderLinearizable, Consistency::ReplicaCommitted] {
        let deadline = Instant::now() + LIVENESS_TIMEOUT;
        loop {
            match client.fetch(partition, Offset(0), 1 << 20, Duration::ZERO, consistency) {
                Ok(fetched) if !fetched.batches.is_empty() => break,
                Ok(_) | Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50))
                }
                other => panic!("fetch at {consistency:?}: {other:?}"),
            }
        }
    }

    // Produce and fetch latency: every request answered was timed at the node it reached.
    let scrapes = scrape_all(&cluster);
    for acks in ["none", "leader", "quorum"] {
        let count = cluster_count(
            &scrapes,
            "ringlog_produce_duration_seconds",
            &format!("acks=\"{acks}\""),
        );
        assert!(count >= BATCHES_PER_ACKS as f64, "acks={acks}: {count} produces timed");
    }
    for consistency in ["linearizable", "replica"] {
        let labels = format!("consistency=\"{consistency}\"");
        let count = cluster_count(&scrapes, "ringlog_fetch_duration_seconds", &labels);
        assert!(count >= 1.0, "{consistency}: {count} fetches timed");
    }

    // Commit latency: every acks=quorum produce was answered at its commit, so it was timed
    // by the leader that answered it; the acks=none and acks=leader batches commit too, and
    // are timed unless the leadership moved meanwhile (a leader forgets its proposals when it
    // steps down).
    let labels = "partition=\"0\"";
    let leader_changes = |s: &BTreeMap<u32, BTreeMap<String, f64>>| -> f64 {
        s.iter()
            .filter_map(|(id, samples)| {
                let name = "ringlog_partition_leader_changes_total";
                value(samples, &format!("{name}{{node=\"{id}\",{labels}}}"))
            })
            .sum()
    };
    let scrapes = eventually(&cluster, "every produced batch timed to its commit", |s| {
        let stable = leader_changes(s) == leader_changes(&before);
        let batches = if stable { 3 * BATCHES_PER_ACKS } else { BATCHES_PER_ACKS };
        cluster_count(s, "ringlog_commit_duration_seconds", labels) >= batches as f64
    });
    let commits = cluster_count(&scrapes, "ringlog_commit_duration_seconds", labels);
    eprintln!("commit latency observations of partition 0: {commits}");

    // Log end offset: the leader's covers every produced record, and every replica reaches
    // the same end; the log's size covers the payload.
    let end_of = |s: &BTreeMap<u32, BTreeMap<String, f64>>, id: u32| {
        value(&s[&id], &format!("ringlog_partition_log_end_offset{{node=\"{id}\",{labels}}}"))
    };
    let scrapes = eventually(&cluster, "every replica's log end at the produced records", |s| {
        let ends: Vec<Option<f64>> = s.keys().map(|id| end_of(s, *id)).collect();
        ends.iter().all(|end| *end == ends[0]) && ends[0] >= Some(produced_records as f64)
    });
    for (id, samples) in &scrapes {
        let node_labels = format!("node=\"{id}\",{labels}");
        let start = value(samples, &format!("ringlog_partition_log_start_offset{{{node_labels}}}"))
            .expect("log start offset");
        let end = end_of(&scrapes, *id).expect("log end offset");
        assert!(start < end, "node {id}: log start {start} end {end}");
        let size = value(samples, &format!("ringlog_partition_log_size_bytes{{{node_labels}}}"))
            .expect("log size");
        let payload = (produced_records as usize * RECORD_BYTES) as f64;
        assert!(size >= payload, "node {id}: log size {size} below the payload {payload}");
    }

    // Peer round trips: a leader heartbeats both other nodes, which answer.
    let scrapes = eventually(&cluster, "a node timed round trips to both others", |s| {
        s.iter().any(|(id, samples)| {
            (1..=3u32).filter(|peer| peer != id).all(|peer| {
                let labels = format!("node=\"{id}\",peer=\"{peer}\"");
                checked_count(samples, "ringlog_peer_rtt_seconds", &labels) > 0.0
            })
        })
    });
    for (id, samples) in &scrapes {
        for peer in (1..=3u32).filter(|peer| peer != id) {
            let labels = format!("node=\"{id}\",peer=\"{peer}\"");
            let count = checked_count(samples, "ringlog_peer_rtt_seconds", &labels);
            eprintln!("node {id} → {peer}: {count} round trips");
        }
    }

    // The process: CPU time spent, memory resident, descriptors open under their limit.
    for (id, samples) in &scrapes {
        let node = format!("{{node=\"{id}\"}}");
        let get = |name: &str| {
            value(samples, &format!("{name}{node}")).unwrap_or_else(|| panic!("node {id}: {name}"))
        };
        assert!(get("process_cpu_seconds_total") > 0.0, "node {id}: no CPU time");
        assert!(get("process_resident_memory_bytes") > 1e6, "node {id}: RSS below 1 MB");
        assert!(get("process_virtual_memory_bytes") >= get("process_resident_memory_bytes"));
        let (open, max) = (get("process_open_fds"), get("process_max_fds"));
        assert!(open > 3.0 && open <= max, "node {id}: {open} fds open, limit {max}");
        let (free, size) =
            (get("ringlog_data_dir_available_bytes"), get("ringlog_data_dir_size_bytes"));
        assert!(free > 0.0 && free <= size, "node {id}: data disk {free} of {size} bytes free");
    }
}
