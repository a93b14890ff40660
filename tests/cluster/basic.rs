//! Issue #4 acceptance (a): a 3-node cluster elects a leader per partition, takes produces
//! with acks=quorum, and serves fetches from every node; consumers see exactly the committed
//! records, in offset order, byte-identical on every replica.

#[path = "harness.rs"]
mod harness;

use std::time::{Duration, Instant};

use harness::{Cluster, Ledger, Spec};
use ringlog_net::client::decode_records;
use ringlog_net::protocol::{Acks, Consistency};
use ringlog_net::{Offset, PartitionId};

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
