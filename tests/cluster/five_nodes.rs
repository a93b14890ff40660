//! Issue #4 acceptance (e): a 5-node cluster keeps electing and committing with 2 nodes down
//! (the leader among them), and the two catch up after they restart.

#[path = "harness.rs"]
mod harness;

use harness::{Cluster, Ledger, Spec};
use ringlog_net::protocol::Acks;
use ringlog_net::{Offset, PartitionId};

#[test]
fn five_nodes_survive_two_nodes_down_including_the_leader() {
    let mut cluster = Cluster::start("five", Spec::new(5).partitions(2));
    let client = cluster.client();
    let mut ledger = Ledger::default();
    let produce = |tag: &str, ledger: &mut Ledger| {
        for b in 0..30u32 {
            for p in 0..2u32 {
                let value = format!("{tag}-p{p}-{b:04}").into_bytes();
                ledger.sent.insert(value.clone());
                let ack = client
                    .produce(PartitionId(p), Acks::Quorum, &[&value])
                    .unwrap_or_else(|e| panic!("produce {tag}: {e}"));
                if p == 0 {
                    ledger.acked.insert(value.clone(), ack.base_offset);
                    ledger.acked_order.entry(0).or_default().push(value);
                }
            }
        }
    };
    let (leader, term) = cluster.wait_leader(&client, PartitionId(0));
    produce("all-up", &mut ledger);
    let other = *cluster.nodes.keys().find(|id| **id != leader).unwrap();
    eprintln!("killing leader {leader} (term {term}) and node {other}");

    cluster.kill(leader);
    cluster.kill(other);
    let (new_leader, new_term) =
        cluster.wait_leader_excluding(&client, PartitionId(0), Some(leader));
    assert!(new_term > term);
    eprintln!("node {new_leader} leads term {new_term} with 3 of 5 nodes up");
    produce("two-down", &mut ledger);

    cluster.restart(leader);
    cluster.restart(other);
    produce("all-back", &mut ledger);
    let records = cluster.assert_replicas_identical(&client, PartitionId(0));
    ledger.check(&records, PartitionId(0));
    let p1 = cluster.assert_replicas_identical(&client, PartitionId(1));
    assert_eq!(p1.len(), 90);
    assert_eq!(p1.last().map(|r| r.offset), Some(Offset(89)));
}
