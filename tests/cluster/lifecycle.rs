//! Issue #19 (8–10): a served node's lifecycle under load and abuse, with real processes.
//!
//! - A graceful stop (SIGTERM) of a leader under pipelined produce load ends well under the
//!   drain bound; every produce the node read is answered (its true outcome, or `NotLeader`
//!   once it cannot complete), none is cut by a reset, and a request it never answered is in
//!   no replica's log.
//! - Slow clients (a byte now and then, never a whole request) and peers that never handshake
//!   are closed within their bounds, so they cannot hold the connection limits.
//! - Memory after abuse: a flood of connections holding partial requests, then closed, leaves
//!   the node's RSS within a bound of where it started.

#[path = "harness.rs"]
mod harness;

use std::collections::{BTreeMap, HashMap};
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use harness::{Cluster, Spec, LIVENESS_TIMEOUT};
use ringlog_net::client::{build_batch, decode_records};
use ringlog_net::frame::FrameDecoder;
use ringlog_net::limits::FRAME_BODY_SIZE_MAX;
use ringlog_net::protocol::{Acks, ProduceRequest, Request, Response};
use ringlog_net::{Offset, PartitionId, RequestId};

const BUSY: PartitionId = PartitionId(0);
/// Pipelined produce connections to the leader, and requests in flight on each.
const PRODUCE_CONNECTIONS: usize = 4;
const PRODUCE_WINDOW: usize = 8;
/// The server's graceful drain bound (`server::GRACEFUL_DRAIN_MAX`).
const GRACEFUL_DRAIN_MAX: Duration = Duration::from_secs(5);
/// What "well under the drain bound" means on a noisy 2-core machine.
const GRACEFUL_STOP_MAX: Duration = Duration::from_millis(2500);

/// How one pipelined producer connection ended.
#[derive(Default)]
struct ProducerLog {
    /// Acknowledged values.
    acked: Vec<Vec<u8>>,
    /// The offset each acknowledged value was given.
    acked_at: Vec<u64>,
    /// Values answered with an error reply (the reply's name).
    refused: Vec<(Vec<u8>, String)>,
    /// Values sent and never answered before the connection ended.
    unanswered: Vec<Vec<u8>>,
    /// Whether the connection ended with a reset (ECONNRESET / EPIPE on read).
    reset: Option<String>,
}

impl std::fmt::Debug for ProducerLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let text = |v: &Vec<u8>| String::from_utf8_lossy(v).into_owned();
        f.debug_struct("ProducerLog")
            .field("acked", &self.acked.len())
            .field("last_acked", &self.acked.last().map(text))
            .field("refused", &self.refused.iter().map(|(v, r)| (text(v), r)).collect::<Vec<_>>())
            .field("unanswered", &self.unanswered.iter().map(text).collect::<Vec<_>>())
            .field("reset", &self.reset)
            .finish()
    }
}

fn produce_frame(value: &[u8], id: u64) -> Bytes {
    let batch = build_batch(&[value]).unwrap();
    Request::Produce(ProduceRequest { partition: BUSY, acks: Acks::Quorum, batch })
        .encode(RequestId(id))
        .to_bytes()
}

/// Keeps `PRODUCE_WINDOW` produces in flight on one connection until `stop`, or until the
/// node refuses one (a real client then goes elsewhere); then reads every answer up to the
/// end of the stream.
fn pipelined_producer(addr: SocketAddr, tag: usize, stop: Arc<AtomicBool>) -> ProducerLog {
    let mut stream = TcpStream::connect(addr).expect("connect to the leader");
    stream.set_nodelay(true).unwrap();
    stream.set_read_timeout(Some(LIVENESS_TIMEOUT)).unwrap();
    let mut log = ProducerLog::default();
    let mut inflight: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
    let mut decoder = FrameDecoder::new(FRAME_BODY_SIZE_MAX);
    let mut buffer = BytesMut::new();
    let mut chunk = vec![0u8; 64 * 1024];
    let mut next_id = 1u64;
    let mut sending = true;
    loop {
        while sending && inflight.len() < PRODUCE_WINDOW && !stop.load(Ordering::Relaxed) {
            let value = format!("c{tag}-{next_id:08}").into_bytes();
            if stream.write_all(&produce_frame(&value, next_id)).is_err() {
                // The node closed: what it read is answered below.
                sending = false;
                inflight.insert(next_id, value);
                break;
            }
            inflight.insert(next_id, value);
            next_id += 1;
        }
        if inflight.is_empty() {
            break;
        }
        let frame = loop {
            if let Some(frame) = decoder.decode(&mut buffer).expect("a well-formed response") {
                break Some(frame);
            }
            match stream.read(&mut chunk) {
                Ok(0) => break None,
                Ok(n) => buffer.extend_from_slice(&chunk[..n]),
                Err(e)
                    if matches!(e.kind(), ErrorKind::ConnectionReset | ErrorKind::BrokenPipe) =>
                {
                    log.reset = Some(e.to_string());
                    break None;
                }
                Err(e) => panic!("producer {tag}: no answer within {LIVENESS_TIMEOUT:?}: {e}"),
            }
        };
        let Some(frame) = frame else {
            log.unanswered.extend(inflight.into_values());
            return log;
        };
        let value = inflight
            .remove(&frame.request_id.0)
            .unwrap_or_else(|| panic!("producer {tag}: answer to unknown {:?}", frame.request_id));
        match Response::decode(&frame).expect("a decodable response") {
            Response::Produce(ack) => {
                log.acked.push(value);
                log.acked_at.push(ack.base_offset.0);
            }
            Response::Error(reply) => {
                log.refused.push((value, format!("{reply:?}")));
                sending = false;
            }
            other => panic!("producer {tag}: unexpected response {other:?}"),
        }
    }
    let _ = stream.shutdown(std::net::Shutdown::Write);
    log
}

/// Every record in `partition`'s committed log at node `id`: value → offset.
fn committed_values(cluster: &Cluster, id: u32, partition: PartitionId) -> HashMap<Vec<u8>, u64> {
    let client = cluster.client();
    let addr = cluster.nodes[&id].client;
    let batches = cluster.read_all_batches(&client, id, partition);
    let records = decode_records(addr, &batches, Offset(0)).expect("committed batches decode");
    records.into_iter().map(|record| (record.value.to_vec(), record.offset.0)).collect()
}

/// Lines of node `id`'s log containing `needle`.
fn log_lines(cluster: &Cluster, id: u32, needle: &str) -> usize {
    let text = std::fs::read_to_string(&cluster.nodes[&id].log_path).unwrap_or_default();
    text.lines().filter(|line| line.contains(needle)).count()
}

#[test]
fn graceful_stop_of_a_leader_under_produce_load_answers_in_flight_produces_at_once() {
    let mut cluster = Cluster::start("graceful-leader", Spec::new(3).shards(1).partitions(2));
    let client = cluster.client();
    let (leader, term) = cluster.wait_leader(&client, BUSY);
    let leader_addr = cluster.nodes[&leader].client;
    let stop = Arc::new(AtomicBool::new(false));
    let producers: Vec<_> = (0..PRODUCE_CONNECTIONS)
        .map(|tag| {
            let stop = stop.clone();
            thread::spawn(move || pipelined_producer(leader_addr, tag, stop))
        })
        .collect();
    // Let the load build up.
    thread::sleep(Duration::from_millis(1500));
    let followers: Vec<u32> = cluster.nodes.keys().copied().filter(|id| *id != leader).collect();
    let warnings_before: Vec<usize> =
        followers.iter().map(|id| log_lines(&cluster, *id, "WARN")).collect();

    let signalled = Instant::now();
    cluster.signal(leader, "TERM");
    let code = cluster.wait_exit(leader, Duration::from_secs(30));
    let stopped_in = signalled.elapsed();
    stop.store(true, Ordering::Relaxed);
    let logs: Vec<ProducerLog> =
        producers.into_iter().map(|p| p.join().expect("producer thread")).collect();
    assert_eq!(code, Some(0), "a graceful stop exits 0");
    let (new_leader, new_term) = cluster.wait_leader_excluding(&client, BUSY, Some(leader));
    assert!(new_term > term);
    let warnings_after: Vec<usize> =
        followers.iter().map(|id| log_lines(&cluster, *id, "WARN")).collect();

    // The new leader commits the old term's entries with its first entry: wait for that.
    cluster.wait_converged(&client, BUSY);
    let committed = committed_values(&cluster, new_leader, BUSY);
    let mut refusals: BTreeMap<String, usize> = BTreeMap::new();
    for (tag, log) in logs.iter().enumerate() {
        assert!(!log.acked.is_empty(), "producer {tag} got no acknowledgement: {log:?}");
        assert!(
            log.reset.is_none(),
            "producer {tag}: the connection was reset after {stopped_in:?}: {log:?}"
        );
        for (value, offset) in log.acked.iter().zip(&log.acked_at) {
            let at = committed.get(value);
            if at != Some(offset) {
                let holder = committed.iter().find(|(_, o)| *o == offset);
                let others: Vec<_> = cluster
                    .nodes
                    .keys()
                    .filter(|id| **id != leader)
                    .map(|id| (*id, committed_values(&cluster, *id, BUSY).get(value).copied()))
                    .collect();
                cluster.keep_dir();
                panic!(
                    "producer {tag}: acknowledged {:?} at offset {offset} is committed at {at:?}; \
                     the new leader holds there {:?}; on the running nodes: {others:?}",
                    String::from_utf8_lossy(value),
                    holder.map(|(v, o)| (String::from_utf8_lossy(v), o))
                );
            }
        }
        for value in &log.unanswered {
            assert!(
                !committed.contains_key(value),
                "producer {tag}: {:?} was appended but never answered",
                String::from_utf8_lossy(value)
            );
        }
        for (_, reply) in &log.refused {
            let name = reply.split([' ', '{']).next().unwrap_or_default().to_string();
            *refusals.entry(name).or_default() += 1;
        }
    }
    eprintln!(
        "leader {leader} (term {term}) stopped in {stopped_in:?}; node {new_leader} leads term \
         {new_term}; acked {:?}, refused {refusals:?}, unanswered {:?}; follower warnings \
         during the stop: {:?} -> {:?}",
        logs.iter().map(|l| l.acked.len()).collect::<Vec<_>>(),
        logs.iter().map(|l| l.unanswered.len()).collect::<Vec<_>>(),
        warnings_before,
        warnings_after
    );
    // Both say "not appended": `NotLeader` for a request read after the stop began (never
    // started), `Backpressure` for one proposed while the hand-off was under way.
    for name in refusals.keys() {
        assert!(
            name == "NotLeader" || name == "Backpressure",
            "a produce refused during a graceful stop answers NotLeader or Backpressure: \
             {refusals:?}"
        );
    }
    assert!(
        stopped_in < GRACEFUL_STOP_MAX,
        "a graceful stop of a leader under load took {stopped_in:?} (drain bound \
         {GRACEFUL_DRAIN_MAX:?})"
    );
    for (i, id) in followers.iter().enumerate() {
        let new_warnings = warnings_after[i] - warnings_before[i];
        assert!(
            new_warnings <= 20,
            "follower {id} logged {new_warnings} warnings while the leader stopped:\n{}",
            harness::tail(&cluster.nodes[id].log_path, 40)
        );
    }
}

/// A connection the node closed (EOF or reset; an error reply before it is read and
/// dropped) rather than one still open.
fn is_closed_by_node(stream: &TcpStream) -> bool {
    stream.set_nonblocking(true).unwrap();
    let mut chunk = [0u8; 4096];
    let mut reader = stream;
    let closed = loop {
        match reader.read(&mut chunk) {
            Ok(0) => break true,
            Ok(_) => continue,
            Err(e) if e.kind() == ErrorKind::WouldBlock => break false,
            Err(_) => break true,
        }
    };
    stream.set_nonblocking(false).unwrap();
    closed
}

/// Sends one produce on a fresh connection and returns the node's answer.
fn produce_once(addr: SocketAddr, value: &[u8]) -> Response {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(LIVENESS_TIMEOUT)).unwrap();
    stream.write_all(&produce_frame(value, 1)).expect("send a produce");
    let mut decoder = FrameDecoder::new(FRAME_BODY_SIZE_MAX);
    let mut buffer = BytesMut::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(frame) = decoder.decode(&mut buffer).expect("a well-formed answer") {
            return Response::decode(&frame).expect("a decodable answer");
        }
        match stream.read(&mut chunk) {
            Ok(0) => panic!("the node closed the connection without an answer"),
            Ok(n) => buffer.extend_from_slice(&chunk[..n]),
            Err(e) => panic!("no answer to a produce: {e}"),
        }
    }
}

/// Slowloris: as many connections as `client_connections_max`, each sending a byte of a
/// request every 300 ms (never idle, never a whole request). Each is closed once its request
/// is `request_timeout_ms` old, so a new client is served while they keep trickling; today
/// they held every slot for as long as they lasted.
#[test]
fn slow_clients_trickling_a_request_are_closed_and_free_their_slots() {
    const SLOTS: u64 = 32;
    let spec = Spec::new(1).partitions(1).net(|net| {
        net.client_connections_max = SLOTS;
        net.request_timeout_ms = 1000;
        net.idle_timeout_ms = 3000;
    });
    let cluster = Cluster::start("slow-clients", spec);
    let client = cluster.client();
    cluster.wait_leader(&client, BUSY);
    let addr = cluster.nodes[&1].client;
    // The harness's own connections (status, metadata) are closed by now or idle: wait for
    // the node to count none before filling every slot.
    thread::sleep(Duration::from_millis(200));
    let frame = produce_frame(b"slow", 7);
    let mut slow: Vec<TcpStream> = (0..SLOTS).map(|_| TcpStream::connect(addr).unwrap()).collect();
    let started = Instant::now();
    let mut sent = 0usize;
    let mut served_at = None;
    while started.elapsed() < Duration::from_secs(6) {
        for stream in &mut slow {
            // A write to a connection the node closed fails: that is the point.
            let _ = stream.write_all(&frame[sent % frame.len()..sent % frame.len() + 1]);
        }
        sent += 1;
        thread::sleep(Duration::from_millis(300));
        if served_at.is_none() && started.elapsed() >= Duration::from_millis(2500) {
            match produce_once(addr, b"fresh") {
                Response::Produce(_) => served_at = Some(started.elapsed()),
                other => panic!(
                    "a new client is refused while {SLOTS} slow ones trickle bytes ({:?} in): \
                     {other:?}",
                    started.elapsed()
                ),
            }
        }
    }
    let closed = slow.iter().filter(|s| is_closed_by_node(s)).count();
    eprintln!("new client served after {served_at:?}; {closed} of {SLOTS} slow clients closed");
    assert!(served_at.is_some());
    assert_eq!(closed as u64, SLOTS, "every slow client is closed");
}

/// Peer connections that never send their handshake: beyond `peer_connections_max` they are
/// refused at once (at most `REFUSALS_IN_FLIGHT_MAX` wait to be told why), so the listener
/// never holds more than the limit plus those; today every one stayed open until the
/// handshake timeout.
#[test]
fn peer_connections_that_never_handshake_cannot_pass_the_limit() {
    const LIMIT: u64 = 16;
    const OPENED: usize = 150;
    let spec = Spec::new(1).partitions(1).net(|net| {
        net.peer_connections_max = LIMIT;
        net.handshake_timeout_ms = 3000;
    });
    let cluster = Cluster::start("silent-peers", spec);
    let peer = cluster.nodes[&1].peer;
    let silent: Vec<TcpStream> =
        (0..OPENED).map(|_| TcpStream::connect(peer).expect("connect")).collect();
    thread::sleep(Duration::from_millis(1000));
    let open = silent.iter().filter(|s| !is_closed_by_node(s)).count();
    let bound = LIMIT as usize + ringlog_net::limits::REFUSALS_IN_FLIGHT_MAX;
    eprintln!("{open} of {OPENED} silent peer connections open after 1 s (bound {bound})");
    assert!(open <= bound, "{open} silent peer connections open, over {bound}");
    // The handshake timeout closes the rest.
    thread::sleep(Duration::from_millis(3000));
    let open = silent.iter().filter(|s| !is_closed_by_node(s)).count();
    assert_eq!(open, 0, "silent peer connections outlive the handshake timeout");
}

/// Resident memory of process `pid` (VmRSS), in bytes.
fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read status");
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).expect("a VmRSS line");
    let kib: u64 = line.split_whitespace().nth(1).and_then(|v| v.parse().ok()).expect("VmRSS");
    kib * 1024
}

/// A produce frame's header announcing `body_len` bytes, followed by `sent` of them.
fn partial_produce(body_len: usize, sent: usize) -> Vec<u8> {
    let batch = build_batch(&[&vec![0x5a; body_len]]).unwrap();
    let frame = Request::Produce(ProduceRequest { partition: BUSY, acks: Acks::Quorum, batch })
        .encode(RequestId(1))
        .to_bytes();
    frame[..sent.min(frame.len())].to_vec()
}

/// Memory after abuse: floods of connections (client and peer ports) that each hold part of
/// a large frame, and of bad input, then every connection closed: the node's RSS comes back
/// near where it started (it stayed 135 MiB higher before).
#[test]
fn memory_held_by_a_connection_flood_is_returned_once_the_connections_close() {
    const CONNECTIONS: usize = 400;
    const ROUNDS: usize = 3;
    let spec = Spec::new(1).partitions(1).net(|net| {
        net.request_timeout_ms = 60_000;
        net.idle_timeout_ms = 60_000;
    });
    let cluster = Cluster::start("memory-flood", spec);
    let client = cluster.client();
    cluster.wait_leader(&client, BUSY);
    let addr = cluster.nodes[&1].client;
    let pid = cluster.nodes[&1].pid().expect("running");
    for i in 0..50u32 {
        assert!(matches!(produce_once(addr, format!("warm-{i}").as_bytes()), Response::Produce(_)));
    }
    thread::sleep(Duration::from_millis(500));
    let before = rss_bytes(pid);
    let mut peak = before;
    // Each connection holds ~200 KiB of a 1 MiB produce body (under `batch_size_max`).
    let partial = partial_produce(200 * 1024, 200 * 1024);
    let peer = cluster.nodes[&1].peer;
    for round in 0..ROUNDS {
        // On the client port, and on the peer port in place of a handshake.
        let held: Vec<TcpStream> = (0..CONNECTIONS)
            .map(|i| {
                let target = if i % 4 == 3 { peer } else { addr };
                let mut stream = TcpStream::connect(target).expect("connect");
                stream.write_all(&partial).expect("send part of a request");
                stream
            })
            .collect();
        thread::sleep(Duration::from_millis(700));
        peak = peak.max(rss_bytes(pid));
        // Bad input on top: random bytes and oversize lengths, each answered and closed.
        for i in 0..200u32 {
            let mut stream = TcpStream::connect(addr).expect("connect");
            let garbage: Vec<u8> = (0..4096u32).map(|b| (b.wrapping_mul(31) ^ i) as u8).collect();
            let _ = stream.write_all(&garbage);
        }
        drop(held);
        eprintln!("round {round}: peak RSS {} MiB", peak >> 20);
    }
    // The node notices every close; then it must give the memory back.
    let deadline = Instant::now() + Duration::from_secs(10);
    let bound = before + 48 * 1024 * 1024;
    let mut after = rss_bytes(pid);
    while after > bound && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(250));
        after = rss_bytes(pid);
    }
    eprintln!(
        "RSS before {} MiB, peak {} MiB, after {} MiB (bound {} MiB)",
        before >> 20,
        peak >> 20,
        after >> 20,
        bound >> 20
    );
    assert!(peak > before + 64 * 1024 * 1024, "the flood did not take memory: no test");
    assert!(matches!(produce_once(addr, b"after"), Response::Produce(_)));
    assert!(
        after <= bound,
        "RSS stayed at {} MiB after the flood (before: {} MiB)",
        after >> 20,
        before >> 20
    );
}
