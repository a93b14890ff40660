//! `/metrics` end to end: a single-node cluster started in-process with `Node::start`, its
//! exporter bound with `spawn_exporter`, a producer thread appending while the test scrapes
//! over plain HTTP; the scraped text must parse as Prometheus text and carry the named
//! series with values that agree with what the producer did.
//!
//! Runs on the real disk under CARGO_TARGET_TMPDIR (O_DIRECT needs ext4/XFS, not tmpfs).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ringlog_node::config::NodeConfig;
use ringlog_node::metrics::{spawn_exporter, SERIES};
use ringlog_node::node::{
    Acks, Consistency, Node, NodeError, NodeHandle, Offset, PartitionId, ShutdownMode,
};

/// Longest the test waits for the single node to elect itself for every partition.
const LEADERSHIP_WAIT_MAX: Duration = Duration::from_secs(30);
/// Records per appended batch, and the bytes of each record.
const RECORDS_PER_BATCH: usize = 4;
const RECORD_BYTES: usize = 100;
/// Batches the producer appends at most (bounded, so the test stops by itself; each append
/// waits for its fdatasync, so this takes seconds, well past the scrapes).
const BATCHES_MAX: u64 = 20_000;
const PARTITIONS: u32 = 2;

/// A free 127.0.0.1 port (bound then released).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn node_config(dir: &Path, metrics: SocketAddr) -> NodeConfig {
    let (client, peer) = (free_port(), free_port());
    let text = format!(
        r#"node_id = 1
cluster_id = 42
data_dir = "{data}"
shards = 1
io_memory = 1048576
partitions = {PARTITIONS}

[listen]
metrics = "{metrics}"

[[peers]]
id = 1
peer = "127.0.0.1:{peer}"
client = "127.0.0.1:{client}"

[storage]
segment_size = 1048576
flush_bytes_max = 262144
batch_size_max = 65536

[log]
level = "warn"

[tls]
mode = "plaintext"
"#,
        data = dir.join("data").display()
    );
    let path = dir.join("node.toml");
    NodeConfig::from_toml_str(&text, &path, dir).expect("valid test config").config
}

/// `GET /metrics` over a plain socket; returns the body of a 200 answer.
fn scrape(addr: SocketAddr) -> String {
    let mut stream = TcpStream::connect(addr).expect("connect to /metrics");
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: test\r\n\r\n").unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).expect("read /metrics");
    let (head, body) = answer.split_once("\r\n\r\n").expect("HTTP head");
    assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}\n{body}");
    assert!(head.contains("text/plain; version=0.0.4"), "{head}");
    body.to_string()
}

/// Parses Prometheus text: `series{labels}` → value. Checks the shape of every line: a
/// comment is `# HELP name text` or `# TYPE name type`, a sample's name was declared by a
/// TYPE line before it, its labels are `key="value"` pairs, its value a number.
fn parse(text: &str) -> BTreeMap<String, f64> {
    let mut declared: Vec<String> = Vec::new();
    let mut samples = BTreeMap::new();
    for line in text.lines() {
        if let Some(comment) = line.strip_prefix("# ") {
            let mut parts = comment.splitn(3, ' ');
            let (keyword, name) = (parts.next().unwrap(), parts.next().expect("metric name"));
            match keyword {
                "HELP" => {}
                "TYPE" => {
                    let kind = parts.next().expect("type");
                    assert!(["counter", "gauge", "histogram"].contains(&kind), "{line}");
                    declared.push(name.to_string());
                }
                other => panic!("unexpected comment {other}: {line}"),
            }
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("no value: {line}"));
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("bad value: {line}"));
        let name = series.split('{').next().unwrap();
        assert!(
            declared.iter().any(|d| name == d
                || [format!("{d}_bucket"), format!("{d}_sum"), format!("{d}_count")]
                    .contains(&name.to_string())),
            "sample of an undeclared family: {line}"
        );
        if let Some(labels) = series.strip_prefix(name) {
            if !labels.is_empty() {
                let inner = labels.strip_prefix('{').and_then(|l| l.strip_suffix('}'));
                for pair in inner.unwrap_or_else(|| panic!("labels: {line}")).split("\",") {
                    let (key, value) = pair.split_once("=\"").unwrap_or_else(|| panic!("{line}"));
                    assert!(key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'), "{line}");
                    assert!(!value.contains('\n'), "{line}");
                }
            }
        }
        assert!(samples.insert(series.to_string(), value).is_none(), "duplicate sample: {line}");
    }
    samples
}

fn get(samples: &BTreeMap<String, f64>, series: &str) -> f64 {
    *samples.get(series).unwrap_or_else(|| panic!("no sample {series}"))
}

fn partition_labels(p: u32) -> String {
    format!("node=\"1\",partition=\"{p}\"")
}

/// Appends until every partition has a leader (the single node elects itself).
fn wait_for_leadership(handle: &NodeHandle) {
    let deadline = Instant::now() + LEADERSHIP_WAIT_MAX;
    for p in 0..PARTITIONS {
        loop {
            match handle.append(PartitionId(p), Acks::Quorum, &[b"warm-up"]) {
                Ok(_) => break,
                Err(NodeError::NotLeader { .. }) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(error) => panic!("partition {p} has no leader: {error}"),
            }
        }
    }
}

/// What the producer did, partition 0 only.
struct Produced {
    batches: AtomicU64,
    records: AtomicU64,
}

#[test]
fn metrics_scraped_during_load_show_the_named_series_with_plausible_values() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let metrics_addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let handle = Node::start(node_config(dir.path(), metrics_addr)).expect("start the node");
    let exporter = spawn_exporter(metrics_addr, handle.clone()).expect("bind /metrics");
    assert_eq!(exporter.local_addr(), metrics_addr);
    wait_for_leadership(&handle);
    let before = parse(&scrape(metrics_addr));

    let produced = Arc::new(Produced { batches: AtomicU64::new(0), records: AtomicU64::new(0) });
    let stop = Arc::new(AtomicBool::new(false));
    let producer = {
        let (handle, produced, stop) = (handle.clone(), Arc::clone(&produced), Arc::clone(&stop));
        std::thread::spawn(move || {
            let record = [7u8; RECORD_BYTES];
            let records = [&record[..]; RECORDS_PER_BATCH];
            for _ in 0..BATCHES_MAX {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                handle.append(PartitionId(0), Acks::Quorum, &records).expect("append");
                produced.batches.fetch_add(1, Ordering::SeqCst);
                produced.records.fetch_add(RECORDS_PER_BATCH as u64, Ordering::SeqCst);
            }
        })
    };

    // Scrape while the producer runs: the append counter grows between scrapes.
    let deadline = Instant::now() + LEADERSHIP_WAIT_MAX;
    while produced.batches.load(Ordering::SeqCst) < 10 {
        assert!(Instant::now() < deadline && !producer.is_finished(), "the producer is stuck");
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut during = Vec::new();
    for _ in 0..3 {
        during.push(parse(&scrape(metrics_addr)));
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(!producer.is_finished(), "the load ended before the scrapes (raise BATCHES_MAX)");
    let p0 = partition_labels(0);
    let appends = format!("ringlog_appends_total{{{p0}}}");
    for pair in during.windows(2) {
        assert!(get(&pair[1], &appends) >= get(&pair[0], &appends), "appends went backwards");
    }
    assert!(get(&during[2], &appends) > get(&during[0], &appends), "no growth under load");
    stop.store(true, Ordering::SeqCst);
    producer.join().expect("producer");
    let batches = produced.batches.load(Ordering::SeqCst);
    let records = produced.records.load(Ordering::SeqCst);
    assert!(batches > 0, "the producer appended nothing");

    let read = handle
        .read(PartitionId(0), Offset(0), 1 << 20, Consistency::LeaderLinearizable, Duration::ZERO)
        .expect("fetch");
    assert!(!read.batches.is_empty());
    let after = parse(&scrape(metrics_addr));

    // Every declared family is present.
    let text = scrape(metrics_addr);
    for series in SERIES {
        assert!(text.contains(&format!("# TYPE {} ", series.exposed_name())), "{}", series.name);
    }

    // Counters grew by what the producer did (the warm-up append is the +1).
    let grown = |series: &str| get(&after, series) - get(&before, series);
    assert_eq!(grown(&appends), batches as f64);
    assert_eq!(get(&after, &appends), (batches + 1) as f64);
    assert_eq!(grown(&format!("ringlog_append_records_total{{{p0}}}")), records as f64);
    let payload = (records as usize * RECORD_BYTES) as f64;
    assert!(grown(&format!("ringlog_append_bytes_total{{{p0}}}")) >= payload);
    assert!(grown(&format!("ringlog_log_written_bytes_total{{{p0}}}")) >= payload);
    assert!(grown(&format!("ringlog_log_flushes_total{{{p0}}}")) >= 1.0);
    assert!(grown(&format!("ringlog_log_fdatasyncs_total{{{p0}}}")) >= 1.0);
    assert!(get(&after, &format!("ringlog_fetches_total{{{p0}}}")) >= 1.0);
    assert!(get(&after, &format!("ringlog_fetch_bytes_total{{{p0}}}")) > 0.0);

    // Histograms: observations with a positive sum, +Inf bucket equal to the count.
    for (name, p) in
        [("ringlog_log_fdatasync_duration_seconds", &p0), ("ringlog_batch_size_bytes", &p0)]
    {
        let count = get(&after, &format!("{name}_count{{{p}}}"));
        assert!(count >= 1.0, "{name} has no observations");
        assert!(get(&after, &format!("{name}_sum{{{p}}}")) > 0.0, "{name}");
        assert_eq!(get(&after, &format!("{name}_bucket{{{p},le=\"+Inf\"}}")), count, "{name}");
    }
    let fsync_seconds = get(&after, &format!("ringlog_log_fdatasync_duration_seconds_sum{{{p0}}}"))
        / get(&after, &format!("ringlog_log_fdatasync_duration_seconds_count{{{p0}}}"));
    assert!(fsync_seconds < 10.0, "mean fdatasync of {fsync_seconds} s: not in seconds?");

    // Raft state: this node leads every partition, term ≥ 1, commit covers every append.
    for p in 0..PARTITIONS {
        let labels = partition_labels(p);
        assert_eq!(
            get(&after, &format!("ringlog_partition_role{{{labels},role=\"leader\"}}")),
            1.0
        );
        assert_eq!(
            get(&after, &format!("ringlog_partition_role{{{labels},role=\"follower\"}}")),
            0.0
        );
        assert!(get(&after, &format!("ringlog_partition_term{{{labels}}}")) >= 1.0);
        assert_eq!(get(&after, &format!("ringlog_partition_leader_node{{{labels}}}")), 1.0);
        let commit = get(&after, &format!("ringlog_partition_commit_index{{{labels}}}"));
        let durable = get(&after, &format!("ringlog_partition_durable_index{{{labels}}}"));
        let last = get(&after, &format!("ringlog_partition_last_index{{{labels}}}"));
        assert!(
            commit <= durable && durable <= last,
            "commit {commit} durable {durable} last {last}"
        );
    }
    let commit_index = get(&after, &format!("ringlog_partition_commit_index{{{p0}}}"));
    assert!(commit_index >= (batches + 1) as f64, "commit index {commit_index} below the appends");
    // Offsets are dense from 0: the warm-up record plus every produced record are committed.
    assert_eq!(
        get(&after, &format!("ringlog_partition_commit_offset{{{p0}}}")),
        (records + 1) as f64
    );
    assert_eq!(get(&after, "ringlog_shards{node=\"1\"}"), 1.0);
    assert!(
        !after.keys().any(|k| k.starts_with("ringlog_follower_")),
        "a single node has no followers"
    );

    drop(exporter);
    assert!(TcpStream::connect(metrics_addr).is_err(), "/metrics still answers after drop");
    handle.shutdown(ShutdownMode::Graceful).expect("shutdown");
}
