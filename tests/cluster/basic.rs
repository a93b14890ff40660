//! Issue #4 acceptance (a): a 3-node cluster elects a leader per partition, takes produces
//! with acks=quorum, and serves fetches from every node; consumers see exactly the committed
//! records, in offset order, byte-identical on every replica.

#[path = "harness.rs"]
mod harness;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use harness::{Cluster, Ledger, Spec};
use ringlog_engine::batch::peek_header;
use ringlog_net::client::{build_batch, decode_records, next_offset, Client, FetchedRecord};
use ringlog_net::limits::BATCH_SIZE_MAX;
use ringlog_net::protocol::{Acks, Consistency};
use ringlog_net::{Offset, PartitionId};
use ringlog_raft::NodeId;

/// Bound on a linearizable read being answered (asked again after each failure).
const LINEARIZABLE_READ_BOUND: Duration = Duration::from_secs(60);

/// How long the long poll waits for a new record (the client's maximum).
const LONG_POLL_WAIT: Duration = Duration::from_secs(60);

/// Produces a partition may see fail (their outcome unknown) before the test gives up.
const FAILURES_MAX: u64 = 10;

#[test]
fn three_nodes_elect_a_leader_commit_quorum_produces_and_serve_reads_from_every_node() {
    let cluster = Cluster::start("basic", Spec::new(3).shards(2).partitions(4));
    let client = cluster.client();
    let mut ledgers: Vec<Ledger> = (0..4).map(|_| Ledger::default()).collect();

    for p in 0..4u32 {
        let partition = PartitionId(p);
        let (leader, term) = cluster.wait_leader(&client, partition);
        eprintln!("{partition}: leader node {leader} in term {term}");
        let ledger = &mut ledgers[p as usize];
        let mut expected_next = None;
        // 20 acknowledged batches of 5 records. A produce whose outcome is unknown (a timeout
        // or a reset on a busy machine) is never sent again: the next batch has new values,
        // and the ledger allows the unknown ones at most once.
        let (mut acked, mut batch) = (0u32, 0u32);
        while acked < 20 {
            batch += 1;
            let values: Vec<Vec<u8>> =
                (0..5u32).map(|r| format!("p{p}-b{batch}-r{r}").into_bytes()).collect();
            let records: Vec<&[u8]> = values.iter().map(Vec::as_slice).collect();
            ledger.sent.extend(values.iter().cloned());
            let ack = match client.produce(partition, Acks::Quorum, &records) {
                Ok(ack) => ack,
                Err(e) => {
                    ledger.failures += 1;
                    assert!(ledger.failures <= FAILURES_MAX, "{partition}: produce: {e}");
                    eprintln!("{partition}: produce: {e} (outcome unknown; not resent)");
                    // It may still commit, anywhere after the last acknowledged batch.
                    expected_next = None;
                    continue;
                }
            };
            acked += 1;
            assert_eq!(ack.partition, partition);
            assert_eq!(ack.last_offset.0 - ack.base_offset.0, 4, "5 records, 5 offsets");
            assert!(ack.commit > ack.last_offset, "acks=quorum answers at commit: {ack:?}");
            if let Some(next) = expected_next {
                assert_eq!(ack.base_offset, next, "offsets are dense");
            }
            // After an unknown outcome, density is checked on the committed log instead.
            if ledger.failures == 0 {
                expected_next = Some(Offset(ack.last_offset.0 + 1));
            }
            for (i, value) in values.iter().enumerate() {
                ledger.acked.insert(value.clone(), Offset(ack.base_offset.0 + i as u64));
                ledger.acked_order.entry(0).or_default().push(value.clone());
            }
        }
    }

    let mut ends = [0usize; 4];
    for p in 0..4u32 {
        let partition = PartitionId(p);
        // A linearizable read through the leader sees every acknowledged record. A read is
        // safe to retry: on a busy machine its ReadIndex round may time out (`Timeout`), so
        // it is asked again until it answers, within a generous bound.
        let deadline = Instant::now() + LINEARIZABLE_READ_BOUND;
        let response = loop {
            let fetched = client.fetch(
                partition,
                Offset(0),
                1 << 20,
                Duration::ZERO,
                Consistency::LeaderLinearizable,
            );
            match fetched {
                Ok(response) => break response,
                Err(e) if Instant::now() < deadline => {
                    eprintln!("{partition}: linearizable fetch: {e}; asking again");
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(e) => panic!(
                    "{partition}: no linearizable read within {LINEARIZABLE_READ_BOUND:?}: {e}"
                ),
            }
        };
        let leader_records =
            decode_records(cluster.nodes[&1].client, &response.batches, Offset(0)).expect("decode");
        // Every node serves the same committed records, byte for byte.
        let records = cluster.assert_replicas_identical(&client, partition);
        let ledger = &ledgers[p as usize];
        ledger.check(&records, partition);
        ends[p as usize] = records.len();
        // 100 acknowledged records, and 5 more for each batch whose outcome was unknown
        // that committed after all.
        assert_eq!(ledger.acked.len(), 100);
        let unknown_committed = records.len() - 100;
        assert!(
            unknown_committed % 5 == 0 && unknown_committed as u64 <= 5 * ledger.failures,
            "{partition}: {} committed records, {} failed produces",
            records.len(),
            ledger.failures
        );
        // The linearizable read (earlier) saw a prefix of that log, with every acknowledged
        // record in it.
        ledger.check(&leader_records, partition);
        assert!(
            records.starts_with(&leader_records),
            "{partition}: the linearizable read is a prefix of the committed log"
        );
    }

    // A long poll at the end of the log returns when a new record commits (its wait is
    // long, so a produce slowed down by a busy machine still lands inside it).
    let partition = PartitionId(1);
    let end = Offset(ends[1] as u64);
    let waiter = {
        let bootstrap = cluster.nodes.values().map(|n| n.client).collect();
        std::thread::spawn(move || {
            let client =
                ringlog_net::client::Client::new(harness::test_client_config(bootstrap)).unwrap();
            client.fetch(partition, end, 1 << 20, LONG_POLL_WAIT, Consistency::ReplicaCommitted)
        })
    };
    std::thread::sleep(Duration::from_millis(200));
    // New values after an unknown outcome, never the same one again.
    let mut late_sent = Vec::new();
    for attempt in 1.. {
        let value = format!("late-{attempt}").into_bytes();
        late_sent.push(value.clone());
        match client.produce(partition, Acks::Quorum, &[&value]) {
            Ok(_) => break,
            Err(e) => {
                assert!(attempt <= FAILURES_MAX, "{partition}: late produce: {e}");
                eprintln!("{partition}: late produce: {e} (outcome unknown; not resent)");
            }
        }
    }
    let response = waiter.join().unwrap().expect("long poll");
    let late = decode_records(cluster.nodes[&1].client, &response.batches, end).unwrap();
    assert!(!late.is_empty(), "the long poll returns the new record");
    for record in &late {
        assert!(late_sent.contains(&record.value.to_vec()), "{record:?} was not sent late");
    }
}

/// Records per data batch of the control-batch fetch test (all of one size, so every data
/// batch has the same length).
const RECORDS_PER_BATCH: usize = 4;
/// `storage.batch_size_max` of the control-batch fetch test: room for a batch larger than the
/// CLI's fetch size (`CONSUME_FETCH_BYTES`, 1 MiB).
const BIG_BATCH_SIZE_MAX: u64 = 2 << 20;
/// Bound on the fetches of one consume loop (far above what the log needs).
const CONSUME_FETCHES_MAX: usize = 2_000;

/// Moves leadership of `partition` away from `from` (a transfer to the next node) and waits
/// until the cluster agrees on the new leader: a new term, whose leader appends a no-op.
fn move_leadership(cluster: &Cluster, client: &Client, partition: PartitionId, from: u32) -> u32 {
    let ids: Vec<u32> = cluster.nodes.keys().copied().collect();
    let target = ids[(ids.iter().position(|&id| id == from).expect("a node") + 1) % ids.len()];
    let deadline = Instant::now() + harness::LIVENESS_TIMEOUT;
    loop {
        if let Err(e) = client.transfer_leader(partition, NodeId(target)) {
            eprintln!("{partition}: transfer to {target}: {e}; asking again");
        }
        let asked = Instant::now();
        while asked.elapsed() < Duration::from_secs(2) {
            let (leader, _) = cluster.wait_leader(client, partition);
            if leader != from {
                return leader;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(Instant::now() < deadline, "{partition}: leadership did not leave node {from}");
    }
}

/// Reads `partition` from offset 0 with `max_bytes`, fetch after fetch from the end of the
/// previous reply (as `ringlog consume` does), in a bounded loop that ends at the first empty
/// reply. Every non-empty reply must move the offset; the end of the log (control batches
/// only after the last data batch) must read as empty, also through a long poll.
fn consume_partition(
    client: &Client,
    partition: PartitionId,
    max_bytes: u32,
) -> Vec<FetchedRecord> {
    let mut offset = Offset(0);
    let mut records = Vec::new();
    for _ in 0..CONSUME_FETCHES_MAX {
        let response = client
            .fetch(partition, offset, max_bytes, Duration::ZERO, Consistency::ReplicaCommitted)
            .unwrap_or_else(|e| panic!("{partition}: fetch at {offset:?}: {e}"));
        if response.batches.is_empty() {
            // The end: a long poll there waits for records and answers empty, never with the
            // control batches that end the log.
            let poll = client
                .fetch(partition, offset, max_bytes, END_POLL_WAIT, Consistency::ReplicaCommitted)
                .unwrap_or_else(|e| panic!("{partition}: long poll at the end {offset:?}: {e}"));
            assert!(
                poll.batches.is_empty(),
                "{partition}: a long poll at the end of the log ({offset:?}) answered {} batches",
                poll.batches.len()
            );
            return records;
        }
        let addr = client.config().bootstrap[0];
        records.extend(decode_records(addr, &response.batches, offset).expect("decode"));
        let next = next_offset(&response.batches).expect("valid batches");
        assert!(
            next > offset,
            "{partition}: a fetch at {offset:?} with max_bytes {max_bytes} made no progress: it \
             answered {} batch(es) ending at {next:?} (control batches only?), so a consumer \
             asks for {offset:?} forever",
            response.batches.len()
        );
        offset = next;
    }
    panic!(
        "{partition}: consuming with max_bytes {max_bytes} did not end within \
         {CONSUME_FETCHES_MAX} fetches (at {offset:?})"
    );
}

/// Long-poll wait of the fetch at the end of the log in `consume_partition`.
const END_POLL_WAIT: Duration = Duration::from_millis(300);

#[test]
fn consumers_with_any_max_bytes_step_over_leader_change_no_ops_and_stop_at_the_end() {
    let cluster = Cluster::start(
        "fetch-control",
        Spec::new(3).shards(1).partitions(1).batch_size_max(BIG_BATCH_SIZE_MAX),
    );
    let client = cluster.client();
    let partition = PartitionId(0);
    let (mut leader, _) = cluster.wait_leader(&client, partition);
    let mut ledger = Ledger::default();
    let mut batch_len = 0;
    // Data batches with leader changes between them (one or two in a row: one or two no-ops
    // between data batches), and a last data batch over `CONSUME_FETCH_BYTES` right after one
    // (the CLI's fetch size), then leader changes after the last data batch: the committed
    // log ends in no-ops.
    for round in 0..6u32 {
        for b in 0..3u32 {
            let values: Vec<Vec<u8>> = (0..RECORDS_PER_BATCH)
                .map(|r| format!("round{round:02}-batch{b}-record{r}-{:>24}", "").into_bytes())
                .collect();
            produce_acked(&client, partition, &values, &mut ledger);
            let records: Vec<&[u8]> = values.iter().map(Vec::as_slice).collect();
            batch_len = build_batch(&records).expect("a batch").len() as u32;
        }
        for _ in 0..1 + round % 2 {
            leader = move_leadership(&cluster, &client, partition, leader);
        }
    }
    let big: Vec<Vec<u8>> = (0..2u8).map(|i| vec![b'A' + i; 700 << 10]).collect();
    produce_acked(&client, partition, &big, &mut ledger);
    for _ in 0..2 {
        leader = move_leadership(&cluster, &client, partition, leader);
    }
    let commit = cluster.wait_converged(&client, partition);
    eprintln!("{partition}: committed log ends at {commit:?}, leader {leader}");

    // Every acknowledged record exactly once, in order, whatever `max_bytes` (1, 64, just
    // under one data batch), and the loop ends.
    let expected = consume_partition(&client, partition, 1);
    ledger.check(&expected, partition);
    for max_bytes in [64, batch_len - 1] {
        let records = consume_partition(&client, partition, max_bytes);
        ledger.check(&records, partition);
        assert_eq!(records, expected, "{partition}: consumed with max_bytes {max_bytes}");
    }
    eprintln!("{partition}: {} records, each once with every max_bytes", expected.len());
    assert_eq!(cluster.assert_replicas_identical(&client, partition), expected);

    // The scenario holds: control batches between data batches and after the last one.
    let batches = cluster.read_all_batches(&client, leader, partition);
    let headers: Vec<_> =
        batches.iter().map(|b| peek_header(b, BATCH_SIZE_MAX).expect("valid batch")).collect();
    let controls = headers.iter().filter(|h| h.record_count() == 0).count();
    assert!(controls >= 9, "{partition}: only {controls} control batches in the log");
    assert!(
        headers
            .iter()
            .any(|h| h.record_count() == RECORDS_PER_BATCH as u32
                && h.length() == batch_len as usize),
        "{partition}: no data batch of {batch_len} bytes"
    );
    let last_data = headers.iter().rev().find(|h| h.record_count() > 0).expect("data");
    let status = client.status(partition).expect("status");
    assert!(
        status.commit.0 > last_data.index().0,
        "{partition}: no committed control batch after the last data batch: {status:?}"
    );

    // The CLI's consume loop (1 MiB fetches) reads it all too, and stops at the end.
    let bootstrap: Vec<String> = cluster.nodes.values().map(|n| n.client.to_string()).collect();
    let mut consume = Command::new(env!("CARGO_BIN_EXE_ringlog"))
        .args(["consume", "--bootstrap", &bootstrap.join(","), "--partition", "0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run ringlog consume");
    let mut stdout = consume.stdout.take().expect("piped stdout");
    let reader = std::thread::spawn(move || {
        let mut out = Vec::new();
        std::io::Read::read_to_end(&mut stdout, &mut out).map(|_| out)
    });
    let started = Instant::now();
    while consume.try_wait().expect("wait for ringlog consume").is_none() {
        if started.elapsed() > harness::LIVENESS_TIMEOUT {
            let _ = consume.kill();
            panic!("ringlog consume did not end within {:?}", harness::LIVENESS_TIMEOUT);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let output = consume.wait_with_output().expect("ringlog consume output");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let stdout = reader.join().expect("stdout reader").expect("read ringlog consume's stdout");
    let lines: Vec<&[u8]> = stdout.split(|&b| b == b'\n').filter(|l| !l.is_empty()).collect();
    assert_eq!(lines.len(), expected.len(), "ringlog consume printed every record once");
    for (line, record) in lines.iter().zip(&expected) {
        let want = [format!("{}\t", record.offset.0).as_bytes(), &record.value[..]].concat();
        assert!(line[..] == want[..], "ringlog consume at offset {}", record.offset.0);
    }
}

/// Produces `values` as one batch with acks=quorum until it is acknowledged (a produce whose
/// outcome is unknown is never resent: the ledger allows it at most once, and the test
/// asks for the same values under new names).
fn produce_acked(client: &Client, partition: PartitionId, values: &[Vec<u8>], ledger: &mut Ledger) {
    for attempt in 0u8.. {
        let values: Vec<Vec<u8>> =
            values
                .iter()
                .map(|v| {
                    if attempt == 0 {
                        v.clone()
                    } else {
                        [v.as_slice(), &[b'~', attempt]].concat()
                    }
                })
                .collect();
        ledger.sent.extend(values.iter().cloned());
        let records: Vec<&[u8]> = values.iter().map(Vec::as_slice).collect();
        match client.produce(partition, Acks::Quorum, &records) {
            Ok(ack) => {
                for (i, value) in values.iter().enumerate() {
                    ledger.acked.insert(value.clone(), Offset(ack.base_offset.0 + i as u64));
                    ledger.acked_order.entry(0).or_default().push(value.clone());
                }
                return;
            }
            Err(e) => {
                ledger.failures += 1;
                assert!(ledger.failures <= FAILURES_MAX, "{partition}: produce: {e}");
                eprintln!("{partition}: produce: {e} (outcome unknown; not resent)");
            }
        }
    }
}
