//! Issue #4 acceptance (c) and (d): a follower whose data dir is wiped rejoins and is
//! repaired from the leader; a follower paused with SIGSTOP catches up after SIGCONT. In
//! both, produces continue meanwhile on the remaining majority, and at the end every
//! acknowledged record is present once and every replica's committed log is byte-identical.

#[path = "harness.rs"]
mod harness;

use std::time::{Duration, Instant};

use harness::{Cluster, Ledger, Spec, LIVENESS_TIMEOUT};
use ringlog_net::client::Client;
use ringlog_net::protocol::Acks;
use ringlog_net::{Offset, PartitionId};

const PARTITION: PartitionId = PartitionId(0);

fn produce_some(client: &Client, ledger: &mut Ledger, tag: &str, batches: u32) {
    for b in 0..batches {
        let values: Vec<Vec<u8>> =
            (0..4).map(|r| format!("{tag}-{b:05}-{r}").into_bytes()).collect();
        ledger.sent.extend(values.iter().cloned());
        let records: Vec<&[u8]> = values.iter().map(Vec::as_slice).collect();
        let ack = client.produce(PARTITION, Acks::Quorum, &records).expect("produce");
        for (i, value) in values.into_iter().enumerate() {
            ledger.acked.insert(value.clone(), Offset(ack.base_offset.0 + i as u64));
            ledger.acked_order.entry(0).or_default().push(value);
        }
    }
}

fn follower_of(cluster: &Cluster, leader: u32) -> u32 {
    *cluster.nodes.keys().find(|id| **id != leader).expect("a follower")
}

#[test]
fn a_follower_with_a_wiped_data_dir_rejoins_and_is_repaired() {
    let mut cluster = Cluster::start("wipe", Spec::new(3).partitions(2));
    let client = cluster.client();
    let mut ledger = Ledger::default();
    let (leader, _) = cluster.wait_leader(&client, PARTITION);
    // Enough to roll several 2 MiB segments.
    let big = vec![b'x'; 16 * 1024];
    for i in 0..300u32 {
        let mut value = format!("big-{i:05}-").into_bytes();
        value.extend_from_slice(&big);
        ledger.sent.insert(value.clone());
        let ack = client.produce(PARTITION, Acks::Quorum, &[&value]).expect("produce");
        ledger.acked.insert(value.clone(), ack.base_offset);
        ledger.acked_order.entry(0).or_default().push(value);
    }
    produce_some(&client, &mut ledger, "before", 50);
    let victim = follower_of(&cluster, leader);
    eprintln!("wiping follower {victim} (leader {leader})");

    cluster.wipe(victim);
    produce_some(&client, &mut ledger, "while-down", 50);
    cluster.restart(victim);
    produce_some(&client, &mut ledger, "after", 50);

    let records = cluster.assert_replicas_identical(&client, PARTITION);
    ledger.check(&records, PARTITION);
    let repaired = cluster.status_of(&client, victim, PARTITION).expect("victim answers");
    let leader_status = cluster.status_of(&client, leader, PARTITION);
    eprintln!("repaired node: {repaired:?}\nleader: {leader_status:?}");
    // The repaired node counts again: with the other follower down, commits still happen.
    let other = *cluster.nodes.keys().find(|id| **id != leader && **id != victim).unwrap();
    cluster.kill(other);
    produce_some(&client, &mut ledger, "needs-repaired-node", 5);
    cluster.restart(other);
    let records = cluster.assert_replicas_identical(&client, PARTITION);
    ledger.check(&records, PARTITION);
}

#[test]
fn a_paused_follower_catches_up_after_sigcont() {
    let mut cluster = Cluster::start("sigstop", Spec::new(3).partitions(2));
    let client = cluster.client();
    let mut ledger = Ledger::default();
    let (leader, _) = cluster.wait_leader(&client, PARTITION);
    produce_some(&client, &mut ledger, "before", 20);
    let victim = follower_of(&cluster, leader);
    eprintln!("pausing follower {victim} (leader {leader})");

    cluster.signal(victim, "STOP");
    let paused = Instant::now();
    // Produces keep committing on the two others for a few seconds.
    let mut round = 0;
    while paused.elapsed() < Duration::from_secs(3) {
        round += 1;
        produce_some(&client, &mut ledger, &format!("paused{round}"), 5);
    }
    cluster.signal(victim, "CONT");
    produce_some(&client, &mut ledger, "resumed", 20);

    let records = cluster.assert_replicas_identical(&client, PARTITION);
    ledger.check(&records, PARTITION);
    let status = cluster.status_of(&client, victim, PARTITION).expect("victim answers");
    assert!(status.commit_offset.0 >= records.len() as u64, "{status:?}");
    let _ = LIVENESS_TIMEOUT;
}
