//! Issue #13: network partitions between real `ringlog serve` processes, with links cut by
//! iptables inside a network namespace the test makes (tests/cluster/netcut.rs).
//!
//! - A deposed leader's long-poll readers (issue #13 item 1, the multi-process replay of
//!   "20 of 20 runs returned all 32 never-committed records"): leader L is cut from both
//!   followers with readers long-polling on it at its log's end; L appends records it can
//!   never commit (acks=leader); the other two elect a new leader that commits other records
//!   at those offsets; the cut heals, L truncates its uncommitted tail and takes the new
//!   leader's entries. Every record any reader got from L must be the committed one at its
//!   offset: none of L's never-committed records may ever be served. Produces with
//!   acks=quorum sent to L during the cut must never be acknowledged, and none of their
//!   records may be in the final log.

#[path = "harness.rs"]
mod harness;
#[path = "netcut.rs"]
mod netcut;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use harness::{Cluster, Spec, FETCH_BYTES, LIVENESS_TIMEOUT};
use netcut::{PrivateNetwork, GID_BASE};
use ringlog_net::client::{decode_records, next_offset, Client, ClientConfig, ClientError};
use ringlog_net::protocol::{Acks, Consistency, ErrorReply};
use ringlog_net::{Offset, PartitionId};
use ringlog_raft::Role;

const P: PartitionId = PartitionId(0);
/// Long-poll readers on the leader that gets cut off.
const READERS: usize = 4;
/// Records the cut-off leader appends but can never commit.
const STALE: usize = 32;
/// Records the new leader commits (more than `STALE`: they cover every stale offset).
const FRESH: usize = 48;
/// Long-poll wait of one fetch.
const POLL: Duration = Duration::from_millis(500);

/// A 3-node, 1-partition cluster in a private network whose peer links can be cut, with
/// `before` records committed on every node.
struct Setup {
    network: PrivateNetwork,
    cluster: Cluster,
    client: Client,
    leader: u32,
    /// The nodes other than the leader.
    others: Vec<u32>,
    /// The end of the committed log once every node holds it.
    converged: Offset,
}

/// Builds a [`Setup`] for `test` (`None`: no private network here, the test is skipped).
fn set_up(test: &str, name: &str, before: usize) -> Option<Setup> {
    let network = PrivateNetwork::enter(test)?;
    let mut cluster = Cluster::configure(name, Spec::new(3).partitions(1));
    cluster.node_gid_base = Some(GID_BASE);
    network.mark_peer_links(&cluster).expect("mark the peer links");
    cluster.launch();
    let client = cluster.client();
    let (leader, _) = cluster.wait_leader(&client, P);
    let others: Vec<u32> = cluster.nodes.keys().copied().filter(|&id| id != leader).collect();
    for i in 0..before {
        let value = format!("before-{i}");
        client.produce(P, Acks::Quorum, &[value.as_bytes()]).expect("produce before the cut");
    }
    let converged = cluster.wait_converged(&client, P);
    Some(Setup { network, cluster, client, leader, others, converged })
}

/// What the readers got: (offset, value) in the order each reader saw them.
type Seen = Arc<Mutex<Vec<(u64, Vec<u8>)>>>;

#[test]
fn a_deposed_leaders_long_poll_readers_never_get_its_uncommitted_records_after_the_cut_heals() {
    let test = "a_deposed_leaders_long_poll_readers_never_get_its_uncommitted_records";
    let Some(Setup { network, cluster, client, leader, others, converged: start }) =
        set_up(test, "partition-readers", 16)
    else {
        return;
    };
    eprintln!("leader {leader}, committed log ends at {start:?}");

    // Readers long-poll on the leader at the end of its committed log.
    let leader_addr = cluster.nodes[&leader].client;
    let stop = Arc::new(AtomicBool::new(false));
    let seen: Seen = Arc::new(Mutex::new(Vec::new()));
    let readers: Vec<_> = (0..READERS)
        .map(|_| {
            let (client, stop, seen) = (cluster.client(), stop.clone(), seen.clone());
            std::thread::spawn(move || {
                read_until_stopped(&client, leader_addr, start, &stop, &seen)
            })
        })
        .collect();
    std::thread::sleep(POLL);

    for &other in &others {
        network.cut(leader, other).expect("cut the leader off");
    }
    // acks=quorum produces to the cut-off leader, in flight while it appends the rest: L can
    // never have them on a majority, so none may be acknowledged.
    let quorum_producers: Vec<_> = (0..4)
        .map(|i| {
            let client = cluster.client();
            std::thread::spawn(move || {
                let value = format!("quorum-during-cut-{i}");
                let outcome =
                    client.node(leader_addr).produce(P, Acks::Quorum, &[value.as_bytes()]);
                (value, outcome)
            })
        })
        .collect();
    let view = client.node(leader_addr);
    let mut stale = BTreeMap::new();
    for i in 0..STALE {
        let value = format!("never-committed-{i}");
        match view.produce(P, Acks::Leader, &[value.as_bytes()]) {
            Ok(reply) => {
                stale.insert(reply.base_offset.0, value);
            }
            // Stepped down (CheckQuorum): nothing more to append there.
            Err(e) => {
                eprintln!("produce {i} to the cut-off leader: {e}");
                break;
            }
        }
    }
    assert!(!stale.is_empty(), "the cut-off leader appended no record before stepping down");
    eprintln!("the cut-off leader appended {} records it cannot commit: {stale:?}", stale.len());

    // Produced to the majority's leader. Under load that leader may lose its leadership
    // with a produce pending (answered `Timeout`: outcome unknown) or hand it on
    // (`NotLeader`): the record is then sent again under a new value, so that no value is
    // in the log twice; only acknowledged ones are recorded.
    let mut fresh = BTreeMap::new();
    let deadline = Instant::now() + LIVENESS_TIMEOUT;
    for i in 0..FRESH {
        for attempt in 0.. {
            let (new_leader, _) = cluster.wait_leader_excluding(&client, P, Some(leader));
            let value = format!("committed-{i}-{attempt}");
            let new_view = client.node(cluster.nodes[&new_leader].client);
            match new_view.produce(P, Acks::Quorum, &[value.as_bytes()]) {
                Ok(reply) => {
                    fresh.insert(reply.base_offset.0, value);
                    break;
                }
                Err(e) if Instant::now() < deadline => {
                    eprintln!("produce {value} to the new leader {new_leader}: {e}; again");
                }
                Err(e) => panic!("produce {value} to the new leader {new_leader}: {e}"),
            }
        }
    }
    // Acknowledged with acks=quorum: every offset below `end` is committed.
    let end = *fresh.keys().last().expect("fresh records") + 1;
    assert!(
        stale.keys().all(|&offset| offset < end),
        "the new leader's committed records cover every offset the old one appended: \
         {stale:?} {fresh:?}"
    );
    let dropped = network.dropped_packets().expect("read the cut rules' counters");
    assert!(dropped > 0, "the cut dropped no packet");

    for &other in &others {
        network.heal(leader, other).expect("heal the cut");
    }
    cluster.wait_converged(&client, P);
    // Joined after the heal (each was answered when L stepped down: outcome unknown).
    let quorum_outcomes: Vec<_> = quorum_producers
        .into_iter()
        .map(|producer| producer.join().expect("quorum producer thread"))
        .collect();
    eprintln!("acks=quorum produces to the cut-off leader: {quorum_outcomes:?}");
    for (value, outcome) in &quorum_outcomes {
        assert!(
            outcome.is_err(),
            "node {leader}, cut off from every other node, acknowledged {value} with \
             acks=quorum: {outcome:?}"
        );
    }
    // Every reader reads on to the end of the new leader's records, then stops.
    let deadline = Instant::now() + LIVENESS_TIMEOUT;
    loop {
        let got: Vec<u64> = seen.lock().unwrap().iter().map(|(offset, _)| *offset).collect();
        let done = got.iter().filter(|&&offset| offset + 1 == end).count();
        if done >= READERS {
            break;
        }
        assert!(Instant::now() < deadline, "the readers did not reach {end} on node {leader}");
        std::thread::sleep(Duration::from_millis(50));
    }
    stop.store(true, Ordering::SeqCst);
    for reader in readers {
        reader.join().expect("reader thread");
    }

    let committed: BTreeMap<u64, Vec<u8>> = cluster
        .assert_replicas_identical(&client, P)
        .into_iter()
        .map(|record| (record.offset.0, record.value.to_vec()))
        .collect();
    for (offset, value) in &fresh {
        assert_eq!(committed.get(offset), Some(&value.clone().into_bytes()), "offset {offset}");
    }
    for (value, _) in &quorum_outcomes {
        assert!(
            !committed.values().any(|v| v == value.as_bytes()),
            "{value}, sent to the cut-off leader only, is in the committed log"
        );
    }
    let seen = seen.lock().unwrap();
    let mut served_stale = Vec::new();
    for (offset, value) in seen.iter() {
        if committed.get(offset) != Some(value) {
            served_stale.push((offset, String::from_utf8_lossy(value).into_owned()));
        }
    }
    assert!(
        served_stale.is_empty(),
        "node {leader}'s readers got {} records that are not the committed ones at their \
         offsets, first: {:?}",
        served_stale.len(),
        &served_stale[..served_stale.len().min(8)]
    );
    eprintln!("{} records read from node {leader}, every one committed", seen.len());
}

/// Long-polls `node` (ReplicaCommitted) from `from` until `stop`, recording every record.
/// Errors (the node busy stepping down, a connection cut short) are retried: a fetch is safe
/// to repeat.
fn read_until_stopped(
    client: &Client,
    node: std::net::SocketAddr,
    from: Offset,
    stop: &AtomicBool,
    seen: &Seen,
) {
    let view = client.node(node);
    let mut offset = from;
    while !stop.load(Ordering::SeqCst) {
        let response = match view.fetch(P, offset, FETCH_BYTES, POLL, Consistency::ReplicaCommitted)
        {
            Ok(response) => response,
            Err(_) => {
                std::thread::sleep(Duration::from_millis(20));
                continue;
            }
        };
        let records =
            decode_records(node, &response.batches, offset).expect("fetched batches decode");
        let mut seen = seen.lock().unwrap();
        for record in records {
            seen.push((record.offset.0, record.value.to_vec()));
        }
        drop(seen);
        if let Some(next) = next_offset(&response.batches) {
            offset = offset.max(next);
        }
    }
}

/// acks=quorum produces sent to the leader right after it is cut off.
const PENDING_PRODUCES: usize = 4;
/// Election timeout of the test cluster (`election_ticks` = 10 of `TICK_MS`, randomized up to
/// twice that).
const ELECTION_TIMEOUT_MS: u64 = 2 * 10 * harness::TICK_MS;
/// How long after the cut-off leader steps down its pending produces may wait for their
/// answer (ten election timeouts): generous for a loaded machine, and far below
/// `PRODUCE_REQUEST_TIMEOUT` and the cut's length (a produce held until the heal, or until
/// its request timed out, fails).
const STEP_DOWN_ANSWER_BOUND: Duration = Duration::from_millis(10 * ELECTION_TIMEOUT_MS);
/// The producers' request timeout: long, so a transport timeout cannot pass for the answer.
const PRODUCE_REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

#[test]
fn a_cut_off_leader_answers_its_pending_quorum_produces_indeterminate_when_it_steps_down() {
    let test = "a_cut_off_leader_answers_its_pending_quorum_produces_indeterminate";
    let Some(Setup { network, cluster, client, leader, others, .. }) =
        set_up(test, "partition-pending", 8)
    else {
        return;
    };
    let leader_addr = cluster.nodes[&leader].client;

    // Producers wait at a barrier so that their produces leave right after the cut, while
    // the leader still leads (CheckQuorum needs at least an election timeout to notice).
    let start = Arc::new(std::sync::Barrier::new(PENDING_PRODUCES + 1));
    let (answers_tx, answers) = std::sync::mpsc::channel();
    for i in 0..PENDING_PRODUCES {
        let bootstrap = cluster.nodes.values().map(|n| n.client).collect();
        let config = ClientConfig {
            request_timeout: PRODUCE_REQUEST_TIMEOUT,
            ..harness::test_client_config(bootstrap)
        };
        let producer = Client::new(config).expect("producer client");
        let (start, answers_tx) = (start.clone(), answers_tx.clone());
        std::thread::spawn(move || {
            let value = format!("pending-on-the-cut-off-leader-{i}");
            start.wait();
            let outcome = producer.node(leader_addr).produce(P, Acks::Quorum, &[value.as_bytes()]);
            let _ = answers_tx.send((value, outcome, Instant::now()));
        });
    }
    drop(answers_tx);
    for &other in &others {
        network.cut(leader, other).expect("cut the leader off");
    }
    let cut_at = Instant::now();
    start.wait();

    // The cut-off leader steps down (CheckQuorum).
    let view = client.node(leader_addr);
    let stepped_down_at = loop {
        match view.status(P) {
            Ok(status) if status.role != Role::Leader => break Instant::now(),
            Ok(_) | Err(_) => {}
        }
        assert!(
            cut_at.elapsed() < LIVENESS_TIMEOUT,
            "node {leader}, cut off from every other node, still leads after {LIVENESS_TIMEOUT:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    eprintln!("node {leader} stepped down {:?} after the cut", stepped_down_at - cut_at);

    // Every pending produce is answered soon after, while the cut still holds.
    let deadline = stepped_down_at + STEP_DOWN_ANSWER_BOUND;
    let mut outcomes = Vec::new();
    while outcomes.len() < PENDING_PRODUCES {
        let left = deadline.saturating_duration_since(Instant::now());
        match answers.recv_timeout(left) {
            Ok(answer) => outcomes.push(answer),
            Err(_) => panic!(
                "{} of {PENDING_PRODUCES} acks=quorum produces pending on node {leader} were not \
                 answered within {STEP_DOWN_ANSWER_BOUND:?} of its stepping down (answered: \
                 {outcomes:?}); a deposed leader must answer them at once, outcome unknown",
                PENDING_PRODUCES - outcomes.len()
            ),
        }
    }
    for (value, outcome, at) in &outcomes {
        eprintln!("{value}: {outcome:?}, {:?} after the cut", *at - cut_at);
    }
    let mut indeterminate = 0;
    for (value, outcome, at) in &outcomes {
        match outcome {
            // The leader's own answer "outcome unknown" (not a transport timeout): a produce
            // to one node returns the reply as is (a routed one maps it to `Indeterminate`).
            Err(ClientError::Server { reply: ErrorReply::Timeout, .. }) => indeterminate += 1,
            // Arrived after the step-down: refused before anything was taken (true).
            Err(ClientError::Server { reply: ErrorReply::NotLeader { .. }, .. }) => {}
            other => panic!(
                "{value}, pending on node {leader} cut off from every other node, got {other:?} \
                 {:?} after the cut: only \"outcome unknown\" (or a refusal) is true",
                *at - cut_at
            ),
        }
    }
    assert!(
        indeterminate > 0,
        "no produce was pending on node {leader} when it stepped down (all refused): the test \
         did not exercise the pending case"
    );

    for &other in &others {
        network.heal(leader, other).expect("heal the cut");
    }
    let committed = cluster.assert_replicas_identical(&client, P);
    for (value, _, _) in &outcomes {
        let copies = committed.iter().filter(|r| r.value.as_ref() == value.as_bytes()).count();
        assert!(copies <= 1, "{value} is in the committed log {copies} times");
        eprintln!(
            "{value}: {copies} cop{} in the committed log",
            if copies == 1 { "y" } else { "ies" }
        );
    }
}
