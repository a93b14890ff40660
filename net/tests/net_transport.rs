//! Transport tests over 127.0.0.1 between glommio executors on separate threads: a round trip
//! of every peer message, reconnection after the peer restarts, a wrong cluster id refused,
//! and garbage / truncated / oversize / undecodable input closing only its own connection.
//!
//! Waits use generous deadlines; nothing asserts on timing.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream as StdTcpStream};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_lite::future;
use glommio::channels::local_channel;
use glommio::{LocalExecutorBuilder, Placement};
use ringlog_net::fuzzing::{samples, RejectFfBatches};
use ringlog_net::limits::{FRAME_BODY_SIZE_MAX, FRAME_HEADER_SIZE};
use ringlog_net::transport::{
    Inbound, LinkStats, LinkStatus, ListenerStats, PeerConfig, PeerLink, PeerListener, SendError,
};
use ringlog_net::{
    decode_frame, encode_frame, frame, ClusterId, ErrorReply, FrameKind, Handshake, HandshakeReply,
    PartitionHeartbeat, PartitionId, PeerMessage, RefuseReason, RequestId, Response, ShardId,
    PEER_PROTOCOL_VERSION,
};
use ringlog_raft::{LogIndex, NodeId, Term};

const DEADLINE: Duration = Duration::from_secs(30);
const CLUSTER: ClusterId = ClusterId(0xC1);
const SHARD: ShardId = ShardId(1);

fn config(cluster: ClusterId, node: u32) -> PeerConfig {
    PeerConfig::new(cluster, NodeId(node), SHARD)
}

fn loopback() -> SocketAddr {
    (Ipv4Addr::LOCALHOST, 0).into()
}

fn builder(name: &str) -> LocalExecutorBuilder {
    LocalExecutorBuilder::new(Placement::Unbound).name(name).io_memory(2 << 20)
}

/// A receiving node: binds a peer listener at `bind`, reports its address, and collects
/// inbound messages until `done(messages)` holds (or the deadline passes).
fn spawn_receiver(
    config: PeerConfig,
    bind: SocketAddr,
    done: impl Fn(&[Inbound]) -> bool + Send + 'static,
) -> (SocketAddr, glommio::ExecutorJoinHandle<(Vec<Inbound>, ListenerStats)>) {
    let (addr_tx, addr_rx) = mpsc::channel();
    let handle = builder("receiver")
        .spawn(move || async move {
            let (tx, rx) = local_channel::new_bounded(64);
            let listener = PeerListener::bind(bind, config, Rc::new(RejectFfBatches), tx)
                .expect("bind peer listener");
            addr_tx.send(listener.local_addr()).unwrap();
            let start = Instant::now();
            let mut messages = Vec::new();
            while !done(&messages) && start.elapsed() < DEADLINE {
                let next = future::or(async { rx.recv().await }, async {
                    glommio::timer::sleep(Duration::from_millis(10)).await;
                    None
                });
                if let Some(inbound) = next.await {
                    messages.push(inbound);
                }
            }
            (messages, listener.stats())
        })
        .unwrap();
    (addr_rx.recv().unwrap(), handle)
}

async fn wait_until(mut condition: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while !condition() {
        if start.elapsed() > DEADLINE {
            return false;
        }
        glommio::timer::sleep(Duration::from_millis(5)).await;
    }
    true
}

fn heartbeat(partition: u32, ctx: u64) -> PartitionHeartbeat {
    PartitionHeartbeat {
        partition: PartitionId(partition),
        term: Term(3),
        commit: LogIndex(9),
        ctx,
    }
}

#[test]
fn every_peer_message_crosses_a_connection_between_two_executors() {
    let sent = samples::peer_messages();
    let expected = sent.len() + 1; // plus one coalesced heartbeat frame
    let (addr, receiver) =
        spawn_receiver(config(CLUSTER, 2), loopback(), move |m| m.len() >= expected);
    let to_send = sent.clone();
    let sender = builder("sender")
        .spawn(move || async move {
            let link = PeerLink::connect(config(CLUSTER, 1), NodeId(2), addr);
            for message in &to_send {
                link.send(message).unwrap();
            }
            // Coalesced: five partitions, the second heartbeat of each replaces the first.
            for round in 0..2 {
                for partition in 0..5 {
                    link.send_heartbeat(heartbeat(partition, round)).unwrap();
                }
            }
            assert!(wait_until(|| link.is_idle()).await, "queue never drained");
            link.stats()
        })
        .unwrap();
    let (received, listener) = receiver.join().unwrap();
    let stats: LinkStats = sender.join().unwrap();

    assert!(received.iter().all(|m| m.from == NodeId(1) && m.shard == SHARD));
    let coalesced: Vec<_> = received
        .iter()
        .filter(|m| matches!(&m.message, PeerMessage::Heartbeats(list) if list.len() == 5))
        .collect();
    assert_eq!(coalesced.len(), 1, "the ten heartbeats travel as one frame");
    let PeerMessage::Heartbeats(list) = &coalesced[0].message else { unreachable!() };
    assert!(list.iter().all(|h| h.ctx == 1), "the newer heartbeat of each partition wins");
    let others: Vec<PeerMessage> = received
        .into_iter()
        .filter(|m| !matches!(&m.message, PeerMessage::Heartbeats(list) if list.len() == 5))
        .map(|m| m.message)
        .collect();
    assert_eq!(others, sent, "messages arrive intact and in order");
    assert_eq!(stats.connects, 1);
    assert_eq!(stats.frames_sent as usize, sent.len() + 1);
    assert_eq!(listener.malformed, 0);
}

#[test]
fn link_reconnects_after_the_peer_restarts_on_the_same_address() {
    let stop = Arc::new(AtomicBool::new(false));
    let (addr, first) = spawn_receiver(config(CLUSTER, 2), loopback(), |m| !m.is_empty());
    let stop_sender = stop.clone();
    let sender = builder("sender")
        .spawn(move || async move {
            let link = PeerLink::connect(config(CLUSTER, 1), NodeId(2), addr);
            let mut ctx = 0;
            while !stop_sender.load(Ordering::Relaxed) {
                ctx += 1;
                link.send_heartbeat(heartbeat(0, ctx)).unwrap();
                glommio::timer::sleep(Duration::from_millis(10)).await;
            }
            link.stats()
        })
        .unwrap();
    let (before, _) = first.join().unwrap();
    assert!(!before.is_empty(), "the first incarnation received nothing");

    let (again, second) = spawn_receiver(config(CLUSTER, 2), addr, |m| !m.is_empty());
    assert_eq!(again, addr);
    let (after, _) = second.join().unwrap();
    stop.store(true, Ordering::Relaxed);
    let stats = sender.join().unwrap();

    assert!(!after.is_empty(), "the restarted peer received nothing");
    assert!(stats.connects >= 2, "link did not reconnect: {stats:?}");
    assert!(stats.disconnects >= 1, "{stats:?}");
}

#[test]
fn a_peer_of_another_cluster_is_refused_with_a_reason_and_delivers_nothing() {
    let stop = Arc::new(AtomicBool::new(false));
    let stop_receiver = stop.clone();
    let (addr, receiver) = spawn_receiver(config(CLUSTER, 2), loopback(), move |_| {
        stop_receiver.load(Ordering::Relaxed)
    });
    let sender = builder("sender")
        .spawn(move || async move {
            let link = PeerLink::connect(config(ClusterId(0xBAD), 1), NodeId(2), addr);
            link.send_heartbeat(heartbeat(0, 1)).unwrap();
            let refused = wait_until(|| {
                matches!(
                    link.status(),
                    LinkStatus::Refused { reason: RefuseReason::WrongCluster, .. }
                )
            })
            .await;
            (refused, link.status(), link.stats())
        })
        .unwrap();
    let (refused, status, stats) = sender.join().unwrap();
    stop.store(true, Ordering::Relaxed);
    let (received, listener) = receiver.join().unwrap();

    assert!(refused, "link status: {status:?}");
    let LinkStatus::Refused { detail, .. } = status else { unreachable!() };
    assert!(detail.contains("cluster"), "{detail}");
    assert_eq!(stats.connects, 0);
    assert!(stats.refusals >= 1);
    assert!(received.is_empty(), "a refused peer delivered {received:?}");
    assert!(listener.refused >= 1);
}

/// Sends `bytes` on a fresh blocking connection, half-closes, and returns every frame the
/// listener answered before closing.
fn raw_exchange(addr: SocketAddr, bytes: &[u8]) -> Vec<ringlog_net::Frame> {
    let mut stream = StdTcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    stream.write_all(bytes).unwrap();
    stream.shutdown(std::net::Shutdown::Write).unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).expect("listener closes the connection");
    let mut rest = Bytes::from(answer);
    let mut frames = Vec::new();
    while !rest.is_empty() {
        let (frame, used) = decode_frame(&rest, FRAME_BODY_SIZE_MAX).expect("answer frames");
        frames.push(frame);
        rest = rest.slice(used..);
    }
    frames
}

fn handshake_bytes(cluster: ClusterId, node: u32) -> Vec<u8> {
    let handshake = Handshake {
        cluster,
        node: NodeId(node),
        shard: SHARD,
        protocol_version: PEER_PROTOCOL_VERSION,
        layout: Default::default(),
        pristine: false,
    };
    handshake.encode().to_bytes().to_vec()
}

fn error_reply(frame: &ringlog_net::Frame) -> ErrorReply {
    match Response::decode(frame) {
        Ok(Response::Error(reply)) => reply,
        other => panic!("expected an error reply, got {other:?}"),
    }
}

/// Accepted handshake, then the error reply to `tail`.
fn after_handshake(addr: SocketAddr, tail: &[u8]) -> ErrorReply {
    let mut bytes = handshake_bytes(CLUSTER, 7);
    bytes.extend_from_slice(tail);
    let frames = raw_exchange(addr, &bytes);
    assert_eq!(frames.len(), 2, "expected handshake reply and error reply: {frames:?}");
    assert!(matches!(HandshakeReply::decode(&frames[0]), Ok(HandshakeReply::Accepted { .. })));
    error_reply(&frames[1])
}

#[test]
fn bad_input_closes_only_its_own_connection_after_an_error_reply() {
    let phase = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    // The receiver stops once it got a heartbeat sent after all the bad input.
    let (addr, receiver) = spawn_receiver(config(CLUSTER, 2), loopback(), |m| {
        m.iter().any(|i| match &i.message {
            PeerMessage::Heartbeats(list) => list.iter().any(|h| h.ctx >> 32 == 1),
            _ => false,
        })
    });
    let (phase_sender, stop_sender) = (phase.clone(), stop.clone());
    let sender = builder("sender")
        .spawn(move || async move {
            let link = PeerLink::connect(config(CLUSTER, 1), NodeId(2), addr);
            let mut n = 0;
            while !stop_sender.load(Ordering::Relaxed) {
                n += 1;
                let ctx = phase_sender.load(Ordering::Relaxed) << 32 | n;
                link.send_heartbeat(heartbeat(0, ctx)).unwrap();
                glommio::timer::sleep(Duration::from_millis(10)).await;
            }
            link.stats()
        })
        .unwrap();

    // Garbage instead of a handshake.
    let frames = raw_exchange(addr, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(frames.len(), 1);
    let ErrorReply::Malformed { reason } = error_reply(&frames[0]) else { panic!() };
    assert!(reason.contains("magic"), "{reason}");

    // A frame cut short by the end of the stream.
    let valid = PeerMessage::Heartbeats(vec![heartbeat(1, 1)]).encode().to_bytes();
    let ErrorReply::Malformed { reason } = after_handshake(addr, &valid[..valid.len() - 3]) else {
        panic!()
    };
    assert!(reason.contains("ended inside a frame"), "{reason}");

    // A header announcing a 1 GiB body: refused from the header, nothing allocated for it.
    let header = frame::encode_header(FrameKind::PeerRaft, RequestId(0), 1 << 30, 0);
    let reply = after_handshake(addr, zerocopy::IntoBytes::as_bytes(&header));
    assert_eq!(reply, ErrorReply::Oversize { len: 1 << 30, max: FRAME_BODY_SIZE_MAX as u64 });

    // An unknown frame kind with valid checksums.
    let mut unknown = encode_frame(FrameKind::PeerRaft, RequestId(0), b"").to_bytes().to_vec();
    unknown[5] = 0x66;
    let crc = crc32fast::hash(&unknown[..28]);
    unknown[28..FRAME_HEADER_SIZE].copy_from_slice(&crc.to_le_bytes());
    let ErrorReply::Malformed { reason } = after_handshake(addr, &unknown) else { panic!() };
    assert!(reason.contains("unknown frame kind"), "{reason}");

    // A valid frame whose body does not decode (a Raft message with an unknown tag).
    let body = [0u8, 0, 0, 0, 0xEE, 1, 0, 0, 0, 0, 0, 0, 0];
    let undecodable = encode_frame(FrameKind::PeerRaft, RequestId(5), &body).to_bytes();
    let ErrorReply::Malformed { reason } = after_handshake(addr, &undecodable) else { panic!() };
    assert!(reason.contains("raft message tag"), "{reason}");

    // A well-formed Append whose batch fails the receiver's batch check.
    let corrupt = PeerMessage::Raft {
        partition: PartitionId(0),
        message: ringlog_raft::Message::Append {
            term: Term(2),
            prev_index: LogIndex(0),
            prev_term: Term(0),
            commit: LogIndex(0),
            entries: vec![ringlog_raft::Entry {
                term: Term(2),
                index: LogIndex(1),
                kind: ringlog_raft::EntryKind::Normal,
                payload: Bytes::from_static(b"\xFFnot a batch"),
            }],
        },
    };
    let ErrorReply::Malformed { reason } = after_handshake(addr, &corrupt.encode().to_bytes())
    else {
        panic!()
    };
    assert!(reason.contains("failed its batch check"), "{reason}");

    // A handshake of another cluster.
    let frames = raw_exchange(addr, &handshake_bytes(ClusterId(0xBAD), 7));
    assert_eq!(frames.len(), 1);
    assert!(matches!(
        HandshakeReply::decode(&frames[0]),
        Ok(HandshakeReply::Refused { reason: RefuseReason::WrongCluster, .. })
    ));

    // The well-behaved peer kept its connection and is still heard.
    phase.store(1, Ordering::Relaxed);
    let (received, listener) = receiver.join().unwrap();
    stop.store(true, Ordering::Relaxed);
    let stats = sender.join().unwrap();
    assert!(
        received.iter().any(|i| matches!(&i.message,
            PeerMessage::Heartbeats(list) if list.iter().any(|h| h.ctx >> 32 == 1))),
        "no heartbeat arrived after the bad input"
    );
    assert_eq!(stats.connects, 1, "the good link was disturbed: {stats:?}");
    assert_eq!(stats.disconnects, 0, "the good link was disturbed: {stats:?}");
    assert_eq!(listener.malformed, 6, "{listener:?}");
    assert_eq!(listener.refused, 1, "{listener:?}");
}

#[test]
fn a_full_link_queue_is_reported_instead_of_growing() {
    let executor = builder("sender")
        .spawn(|| async {
            // Nobody listens on this port: the link keeps retrying and its queue fills.
            let unused = std::net::TcpListener::bind(loopback()).unwrap();
            let addr = unused.local_addr().unwrap();
            drop(unused);
            let mut config = config(CLUSTER, 1);
            config.queue_frames_max = 3;
            config.queue_bytes_max = 1 << 20;
            let link = PeerLink::connect(config, NodeId(2), addr);
            let message = PeerMessage::Heartbeats(vec![heartbeat(0, 0)]);
            let results: Vec<_> = (0..4).map(|_| link.send(&message)).collect();
            let big = samples::batch(2 << 20, 0);
            let raft = PeerMessage::Raft {
                partition: PartitionId(0),
                message: ringlog_raft::Message::Append {
                    term: Term(1),
                    prev_index: LogIndex(0),
                    prev_term: Term(0),
                    commit: LogIndex(0),
                    entries: vec![ringlog_raft::Entry {
                        term: Term(1),
                        index: LogIndex(1),
                        kind: ringlog_raft::EntryKind::Normal,
                        payload: big,
                    }],
                },
            };
            (results, link.send(&raft), link.queued())
        })
        .unwrap();
    let (results, big, queued) = executor.join().unwrap();
    assert!(results[..3].iter().all(Result::is_ok), "{results:?}");
    assert!(matches!(results[3], Err(SendError::QueueFull { frames: 3, .. })), "{results:?}");
    assert!(matches!(big, Err(SendError::QueueFull { .. })), "{big:?}");
    assert_eq!(queued.0, 3);
}

#[test]
fn pipelined_client_requests_are_answered_in_order_over_a_frame_stream() {
    use ringlog_net::transport::FrameStream;
    use ringlog_net::{Offset, ProduceResponse, Request};

    let (addr_tx, addr_rx) = mpsc::channel();
    let server = builder("server")
        .spawn(move || async move {
            let listener = glommio::net::TcpListener::bind(loopback()).unwrap();
            addr_tx.send(listener.local_addr().unwrap()).unwrap();
            let stream = listener.accept().await.unwrap();
            let mut conn = FrameStream::new(stream, FRAME_BODY_SIZE_MAX).unwrap();
            let mut served = 0;
            while let Some(frame) = conn.read_frame().await.unwrap() {
                let response = match Request::decode(&frame).unwrap() {
                    Request::Produce(produce) => Response::Produce(ProduceResponse {
                        partition: produce.partition,
                        base_offset: Offset(produce.batch.len() as u64),
                        last_offset: Offset(produce.batch.len() as u64 + 1),
                        commit: Offset(0),
                    }),
                    other => Response::Error(ErrorReply::UnknownPartition {
                        partition: other.partition().unwrap_or_default(),
                    }),
                };
                conn.write_frame(&response.encode(frame.request_id)).await.unwrap();
                served += 1;
            }
            served
        })
        .unwrap();
    let addr = addr_rx.recv().unwrap();
    let client = builder("client")
        .spawn(move || async move {
            let mut conn = FrameStream::connect(addr, FRAME_BODY_SIZE_MAX, DEADLINE).await.unwrap();
            let requests = samples::requests();
            let frames: Vec<_> =
                requests.iter().enumerate().map(|(n, r)| r.encode(RequestId(n as u64))).collect();
            conn.write_frames(&frames).await.unwrap();
            let mut answers = Vec::new();
            for _ in 0..requests.len() {
                let frame = conn.expect_frame().await.unwrap();
                answers.push((frame.request_id, Response::decode(&frame).unwrap()));
            }
            (requests, answers)
        })
        .unwrap();
    let (requests, answers) = client.join().unwrap();
    assert_eq!(server.join().unwrap(), requests.len());
    for (n, (request, (id, answer))) in requests.iter().zip(answers).enumerate() {
        assert_eq!(id, RequestId(n as u64));
        match (request, answer) {
            (Request::Produce(p), Response::Produce(r)) => {
                assert_eq!(r.base_offset, Offset(p.batch.len() as u64));
            }
            (other, Response::Error(ErrorReply::UnknownPartition { partition })) => {
                assert_eq!(Some(partition), other.partition().or(Some(PartitionId(0))));
            }
            (request, answer) => panic!("{request:?} answered with {answer:?}"),
        }
    }
}

#[test]
fn an_idle_link_stays_connected_by_keepalives_and_a_silent_connection_is_closed() {
    let mut receiver_config = config(CLUSTER, 2);
    receiver_config.idle_timeout = Duration::from_millis(300);
    let stop = Arc::new(AtomicBool::new(false));
    let stop_receiver = stop.clone();
    let (addr, receiver) =
        spawn_receiver(receiver_config, loopback(), move |_| stop_receiver.load(Ordering::Relaxed));

    // A raw peer that completes the handshake and then says nothing is closed.
    let mut stream = StdTcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    stream.write_all(&handshake_bytes(CLUSTER, 7)).unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).expect("the silent connection is closed");
    let (reply, used) = decode_frame(&Bytes::from(answer.clone()), FRAME_BODY_SIZE_MAX).unwrap();
    assert!(matches!(HandshakeReply::decode(&reply), Ok(HandshakeReply::Accepted { .. })));
    assert_eq!(used, answer.len(), "nothing but the handshake reply before the close");

    // A link with nothing to send keeps its connection for many idle timeouts.
    let sender = builder("sender")
        .spawn(move || async move {
            let mut config = config(CLUSTER, 1);
            config.keepalive_interval = Duration::from_millis(50);
            let link = PeerLink::connect(config, NodeId(2), addr);
            assert!(wait_until(|| link.status() == LinkStatus::Connected).await);
            glommio::timer::sleep(Duration::from_millis(1500)).await;
            link.stats()
        })
        .unwrap();
    let stats = sender.join().unwrap();
    stop.store(true, Ordering::Relaxed);
    let (received, listener) = receiver.join().unwrap();
    assert_eq!(stats.connects, 1, "{stats:?}");
    assert_eq!(stats.disconnects, 0, "{stats:?}");
    assert!(stats.keepalives_sent >= 3, "{stats:?}");
    assert!(received.is_empty(), "keepalives are not delivered: {received:?}");
    assert_eq!(listener.messages, 0);
}
