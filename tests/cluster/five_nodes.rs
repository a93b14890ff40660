//! Issue #4 acceptance (e): a 5-node cluster keeps electing and committing with 2 nodes down
//! (the leader among them), and the two catch up after they restart.

#[path = "harness.rs"]
mod harness;

use harness::{Cluster, Ledger, Spec};
use ringlog_net::protocol::Acks;
use ringlog_net::PartitionId;
use std::time::Duration;

/// Produces a test tolerates failing (their outcome unknown) per phase and partition.
const FAILURES_MAX: u32 = 30;

#[test]
fn five_nodes_survive_two_nodes_down_including_the_leader() {
    let mut cluster = Cluster::start("five", Spec::new(5).partitions(2));
    let client = cluster.client();
    let mut ledgers = [Ledger::default(), Ledger::default()];
    // 30 acknowledged records per partition and phase. A produce whose outcome is unknown (a
    // connection reset on a busy machine, a timeout) is never resent: the next attempt sends
    // a new value, and the check allows an unacknowledged value at most once.
    let produce = |tag: &str, ledgers: &mut [Ledger; 2]| {
        for p in 0..2u32 {
            let ledger = &mut ledgers[p as usize];
            let (mut acked, mut failed, mut attempt) = (0u32, 0u32, 0u32);
            while acked < 30 {
                attempt += 1;
                let value = format!("{tag}-p{p}-{attempt:04}").into_bytes();
                ledger.sent.insert(value.clone());
                match client.produce(PartitionId(p), Acks::Quorum, &[&value]) {
                    Ok(ack) => {
                        ledger.acked.insert(value.clone(), ack.base_offset);
                        ledger.acked_order.entry(0).or_default().push(value);
                        acked += 1;
                    }
                    Err(e) => {
                        failed += 1;
                        ledger.failures += 1;
                        assert!(
                            failed <= FAILURES_MAX,
                            "produce {tag} p{p}: {failed} failures: {e}"
                        );
                        eprintln!("produce {tag} p{p}: {e} (outcome unknown; not resent)");
                        std::thread::sleep(Duration::from_millis(100));
                    }
                }
            }
        }
    };
    let (leader, term) = cluster.wait_leader(&client, PartitionId(0));
    produce("all-up", &mut ledgers);
    let other = *cluster.nodes.keys().find(|id| **id != leader).unwrap();
    eprintln!("killing leader {leader} (term {term}) and node {other}");

    cluster.kill(leader);
    cluster.kill(other);
    let (new_leader, new_term) =
        cluster.wait_leader_excluding(&client, PartitionId(0), Some(leader));
    assert!(new_term > term);
    eprintln!("node {new_leader} leads term {new_term} with 3 of 5 nodes up");
    produce("two-down", &mut ledgers);

    cluster.restart(leader);
    cluster.restart(other);
    produce("all-back", &mut ledgers);
    for (p, ledger) in ledgers.iter().enumerate() {
        let partition = PartitionId(p as u32);
        let records = cluster.assert_replicas_identical(&client, partition);
        ledger.check(&records, partition);
        assert_eq!(ledger.acked.len(), 90, "{partition}: 90 acknowledged records");
    }
}
