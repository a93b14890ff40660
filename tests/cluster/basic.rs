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
        for batch in 0..20u32 {
            let values: Vec<Vec<u8>> =
                (0..5u32).map(|r| format!("p{p}-b{batch}-r{r}").into_bytes()).collect();
            let records: Vec<&[u8]> = values.iter().map(Vec::as_slice).collect();
            ledger.sent.extend(values.iter().cloned());
            let ack = client.produce(partition, Acks::Quorum, &records).expect("produce");
            assert_eq!(ack.partition, partition);
            assert_eq!(ack.last_offset.0 - ack.base_offset.0, 4, "5 records, 5 offsets");
            assert!(ack.commit > ack.last_offset, "acks=quorum answers at commit: {ack:?}");
            if let Some(next) = expected_next {
                assert_eq!(ack.base_offset, next, "offsets are dense");
            }
            expected_next = Some(Offset(ack.last_offset.0 + 1));
            for (i, value) in values.iter().enumerate() {
                ledger.acked.insert(value.clone(), Offset(ack.base_offset.0 + i as u64));
                ledger.acked_order.entry(0).or_default().push(value.clone());
            }
        }
    }

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
        assert_eq!(leader_records.len(), 100, "{partition}: linearizable read sees all 100");
        // Every node serves the same committed records, byte for byte.
        let records = cluster.assert_replicas_identical(&client, partition);
        assert_eq!(records.len(), 100);
        ledgers[p as usize].check(&records, partition);
    }

    // A long poll at the end of the log returns when a new record commits.
    let partition = PartitionId(1);
    let end = Offset(100);
    let waiter = {
        let bootstrap = cluster.nodes.values().map(|n| n.client).collect();
        std::thread::spawn(move || {
            let client =
                ringlog_net::client::Client::new(harness::test_client_config(bootstrap)).unwrap();
            client.fetch(
                partition,
                end,
                1 << 20,
                Duration::from_secs(10),
                Consistency::ReplicaCommitted,
            )
        })
    };
    std::thread::sleep(Duration::from_millis(200));
    client.produce(partition, Acks::Quorum, &[b"late"]).expect("produce");
    let response = waiter.join().unwrap().expect("long poll");
    let late = decode_records(cluster.nodes[&1].client, &response.batches, end).unwrap();
    assert_eq!(late.len(), 1, "the long poll returns the new record");
    assert_eq!(&late[0].value[..], b"late");
}
