//! Issue #4 acceptance (b): failover under load, repeated. Producer threads keep a partition
//! busy while its leader is SIGKILLed; a new leader must be elected within a generous bound,
//! produces must resume, and the killed node restarts and catches up. At the end every
//! acknowledged record is present exactly once at its acknowledged offset, in each
//! producer's order, nothing appears that was never sent, and every replica's committed log
//! is byte-identical.
//!
//! Seed: `RINGLOG_FAILOVER_SEED` (it picks batch sizes and pauses); rounds:
//! `RINGLOG_FAILOVER_ROUNDS` (default 10).

#[path = "harness.rs"]
mod harness;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use harness::{Cluster, Ledger, Spec, LIVENESS_TIMEOUT};
use ringlog_net::client::{Client, ClientError};
use ringlog_net::protocol::Acks;
use ringlog_net::PartitionId;

const PRODUCERS: u32 = 3;
const BUSY: PartitionId = PartitionId(0);

fn producer(
    id: u32,
    seed: u64,
    client: Arc<Client>,
    ledger: Arc<Mutex<Ledger>>,
    acked: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
) {
    let mut rng = seed ^ (u64::from(id) + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let mut seq = 0u64;
    while !stop.load(Ordering::Relaxed) {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let count = 1 + (rng % 8) as usize;
        let values: Vec<Vec<u8>> = (0..count)
            .map(|_| {
                seq += 1;
                format!("producer{id}-{seq:08}").into_bytes()
            })
            .collect();
        ledger.lock().unwrap().sent.extend(values.iter().cloned());
        let records: Vec<&[u8]> = values.iter().map(Vec::as_slice).collect();
        match client.produce(BUSY, Acks::Quorum, &records) {
            Ok(ack) => {
                assert_eq!(ack.last_offset.0 - ack.base_offset.0 + 1, count as u64, "{ack:?}");
                let mut ledger = ledger.lock().unwrap();
                for (i, value) in values.into_iter().enumerate() {
                    let offset = ringlog_net::Offset(ack.base_offset.0 + i as u64);
                    assert!(ledger.acked.insert(value.clone(), offset).is_none());
                    ledger.acked_order.entry(id).or_default().push(value);
                }
                acked.fetch_add(count as u64, Ordering::Relaxed);
            }
            // The batch may or may not be appended: never resent (new values next time).
            Err(error) => {
                if !matches!(
                    error,
                    ClientError::Indeterminate { .. } | ClientError::NoLeader { .. }
                ) {
                    eprintln!("producer {id}: {error}");
                }
                ledger.lock().unwrap().failures += 1;
                thread::sleep(Duration::from_millis(5));
            }
        }
    }
}

#[test]
fn killing_the_leader_under_load_loses_no_acknowledged_record() {
    let seed = harness::seed("RINGLOG_FAILOVER_SEED");
    let rounds: u32 =
        std::env::var("RINGLOG_FAILOVER_ROUNDS").ok().and_then(|r| r.parse().ok()).unwrap_or(10);
    let mut cluster = Cluster::start("failover", Spec::new(3).shards(1).partitions(2));
    let client = Arc::new(cluster.client());
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let acked = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    cluster.wait_leader(&client, BUSY);

    let producers: Vec<_> = (0..PRODUCERS)
        .map(|id| {
            let (client, ledger, acked, stop) =
                (client.clone(), ledger.clone(), acked.clone(), stop.clone());
            thread::spawn(move || producer(id, seed, client, ledger, acked, stop))
        })
        .collect();

    for round in 1..=rounds {
        // Let the load build up, then kill the leader.
        wait_acked_past(&acked, acked.load(Ordering::Relaxed) + 50, "before the kill");
        let (leader, term) = cluster.wait_leader(&client, BUSY);
        let killed_at = Instant::now();
        cluster.kill(leader);
        let (new_leader, new_term) = cluster.wait_leader_excluding(&client, BUSY, Some(leader));
        let elected_in = killed_at.elapsed();
        assert!(new_term > term, "a new term after the failover");
        // Produces resume under the new leader.
        let before = acked.load(Ordering::Relaxed);
        wait_acked_past(&acked, before + 20, "after the failover");
        let resumed_in = killed_at.elapsed();
        cluster.restart(leader);
        // The restarted node catches up: its commit reaches the leader's commit of now.
        let target = cluster.status_of(&client, new_leader, BUSY).map(|s| s.commit);
        let deadline = Instant::now() + LIVENESS_TIMEOUT;
        loop {
            let status = cluster.status_of(&client, leader, BUSY);
            if let (Some(s), Some(target)) = (&status, target) {
                if s.commit >= target {
                    break;
                }
            }
            assert!(
                Instant::now() < deadline,
                "round {round}: restarted node {leader} did not catch up to {target:?}: {status:?}"
            );
            thread::sleep(Duration::from_millis(20));
        }
        eprintln!(
            "round {round}: killed leader {leader} (term {term}); node {new_leader} leads term \
             {new_term} after {elected_in:?}; produces resumed after {resumed_in:?}; node \
             {leader} caught up after {:?}",
            killed_at.elapsed()
        );
    }

    stop.store(true, Ordering::Relaxed);
    for p in producers {
        p.join().expect("producer thread");
    }
    let records = cluster.assert_replicas_identical(&client, BUSY);
    ledger.lock().unwrap().check(&records, BUSY);
    // The idle partition also agrees everywhere after all these restarts.
    cluster.assert_replicas_identical(&client, PartitionId(1));
}

fn wait_acked_past(acked: &AtomicU64, target: u64, what: &str) {
    let deadline = Instant::now() + LIVENESS_TIMEOUT;
    while acked.load(Ordering::Relaxed) < target {
        assert!(
            Instant::now() < deadline,
            "produces stalled {what}: {} acked, waiting for {target}",
            acked.load(Ordering::Relaxed)
        );
        thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn sigterm_on_the_leader_exits_zero_and_another_node_takes_over_losing_nothing() {
    let mut cluster = Cluster::start("sigterm", Spec::new(3).shards(1).partitions(2));
    let client = cluster.client();
    let mut ledger = Ledger::default();
    let produce = |tag: &str, ledger: &mut Ledger| {
        for i in 0..20u32 {
            let value = format!("{tag}-{i:03}").into_bytes();
            ledger.sent.insert(value.clone());
            let ack = client.produce(BUSY, Acks::Quorum, &[&value]).expect("produce");
            ledger.acked.insert(value.clone(), ack.base_offset);
            ledger.acked_order.entry(0).or_default().push(value);
        }
    };
    produce("before", &mut ledger);
    let (leader, term) = cluster.wait_leader(&client, BUSY);

    cluster.signal(leader, "TERM");
    let code = cluster.wait_exit(leader, Duration::from_secs(30));
    assert_eq!(code, Some(0), "a graceful stop exits 0");
    let (new_leader, new_term) = cluster.wait_leader_excluding(&client, BUSY, Some(leader));
    eprintln!("SIGTERM of leader {leader} (term {term}): node {new_leader} leads term {new_term}");
    produce("after", &mut ledger);
    cluster.restart(leader);

    let records = cluster.assert_replicas_identical(&client, BUSY);
    ledger.check(&records, BUSY);
    assert_eq!(records.len(), 40);
}
