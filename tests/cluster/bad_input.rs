//! Issue #4 acceptance (g): bad input against a live node. Random bytes, truncated frames,
//! oversize lengths, unknown frame kinds, peer frames on the client port, a peer handshake
//! with a wrong cluster id, produces to a non-leader and to an unknown partition: each gets
//! an error reply or a closed connection, the node keeps serving other clients meanwhile,
//! and nothing acknowledged is lost.
//!
//! Seed (random garbage): `RINGLOG_BAD_INPUT_SEED`.

#[path = "harness.rs"]
mod harness;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use harness::{Cluster, Ledger, Spec};
use ringlog_net::client::{build_batch, ClientError};
use ringlog_net::frame::{encode_frame, FrameDecoder, FrameKind};
use ringlog_net::limits::FRAME_BODY_SIZE_MAX;
use ringlog_net::peer::{Handshake, HandshakeReply, RefuseReason, ShardLayout};
use ringlog_net::protocol::{Acks, ErrorReply, ProduceRequest, Request, Response};
use ringlog_net::{ClusterId, Offset, PartitionId, RequestId, ShardId, PEER_PROTOCOL_VERSION};
use ringlog_raft::NodeId;

/// How long a node may take to answer or close a connection fed bad input.
const VERDICT_TIMEOUT: Duration = Duration::from_secs(10);

/// What a node did with bad input on a connection.
#[derive(Debug)]
enum Verdict {
    /// It answered this error reply (and may have closed afterwards).
    Error(ErrorReply),
    /// It answered a non-error frame of this kind.
    Other(FrameKind, Bytes),
    /// It closed the connection without a (complete) frame.
    Closed,
}

/// Sends `bytes` (then half-closes when `finish`) and reads the node's verdict.
fn feed(addr: SocketAddr, bytes: &[u8], finish: bool) -> Verdict {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(VERDICT_TIMEOUT)).unwrap();
    // The node may close before taking every byte: a failed write is part of the verdict.
    let _ = stream.write_all(bytes);
    if finish {
        let _ = stream.shutdown(Shutdown::Write);
    }
    read_verdict(&mut stream)
}

fn read_verdict(stream: &mut TcpStream) -> Verdict {
    let started = Instant::now();
    let mut decoder = FrameDecoder::new(FRAME_BODY_SIZE_MAX);
    let mut buf = BytesMut::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Ok(Some(frame)) = decoder.decode(&mut buf) {
            if frame.kind == FrameKind::ErrorReply {
                match Response::decode(&frame) {
                    Ok(Response::Error(reply)) => return Verdict::Error(reply),
                    other => panic!("undecodable error reply: {other:?}"),
                }
            }
            return Verdict::Other(frame.kind, frame.body);
        }
        match stream.read(&mut chunk) {
            Ok(0) => return Verdict::Closed,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return Verdict::Closed,
            Err(e) => {
                panic!("node neither answered nor closed within {:?}: {e}", started.elapsed())
            }
        }
    }
}

/// After an error reply the node must close the connection (the stream cannot resync).
fn assert_closed_after(stream: &mut TcpStream) {
    let mut rest = Vec::new();
    stream.set_read_timeout(Some(VERDICT_TIMEOUT)).unwrap();
    match stream.read_to_end(&mut rest) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        Err(e) => panic!("connection not closed after a malformed frame: {e}"),
    }
}

/// Recomputes a frame header's checksum after a field was changed.
fn reseal(header: &mut [u8]) {
    let crc = crc32fast::hash(&header[..28]);
    header[28..32].copy_from_slice(&crc.to_le_bytes());
}

fn xorshift(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

fn produce_frame(partition: PartitionId, id: u64) -> Bytes {
    let batch = build_batch(&[b"abuse"]).unwrap();
    Request::Produce(ProduceRequest { partition, acks: Acks::Quorum, batch })
        .encode(RequestId(id))
        .to_bytes()
}

#[test]
fn malformed_input_gets_an_error_or_a_close_and_nothing_else_is_affected() {
    let seed = harness::seed("RINGLOG_BAD_INPUT_SEED");
    let cluster = Cluster::start("bad-input", Spec::new(3).partitions(2));
    let client = cluster.client();
    let partition = PartitionId(0);
    let (leader, _) = cluster.wait_leader(&client, partition);
    let leader_addr = cluster.nodes[&leader].client;
    let follower = *cluster.nodes.keys().find(|id| **id != leader).unwrap();
    let follower_addr = cluster.nodes[&follower].client;
    let mut ledger = Ledger::default();
    let produce = |tag: &str, ledger: &mut Ledger| {
        let value = tag.as_bytes().to_vec();
        ledger.sent.insert(value.clone());
        let ack = client.produce(partition, Acks::Quorum, &[&value]).expect("produce");
        ledger.acked.insert(value.clone(), ack.base_offset);
        ledger.acked_order.entry(0).or_default().push(value);
    };
    produce("before", &mut ledger);

    // A well-behaved connection held open across all the abuse keeps working.
    let mut good = TcpStream::connect(leader_addr).unwrap();
    good.set_read_timeout(Some(VERDICT_TIMEOUT)).unwrap();
    let mut good_request_id = 1_000_000u64;
    let mut check_good = |good: &mut TcpStream, what: &str| {
        good_request_id += 1;
        let frame =
            Request::GroupStatus { partition }.encode(RequestId(good_request_id)).to_bytes();
        good.write_all(&frame)
            .unwrap_or_else(|e| panic!("good connection broken after {what}: {e}"));
        match read_verdict(good) {
            Verdict::Other(FrameKind::GroupStatusResponse, _) => {}
            other => panic!("good connection after {what}: {other:?}"),
        }
    };
    check_good(&mut good, "nothing");

    // 1. Random bytes (a frame cannot start with them): closed, or an error reply.
    let mut rng = seed | 1;
    for round in 0..20 {
        let len = 1 + (xorshift(&mut rng) % 4096) as usize;
        let mut bytes: Vec<u8> = (0..len).map(|_| xorshift(&mut rng) as u8).collect();
        if bytes.starts_with(b"RLNF") {
            bytes[0] = b'X';
        }
        let verdict = feed(leader_addr, &bytes, round % 2 == 0);
        assert!(
            matches!(verdict, Verdict::Closed | Verdict::Error(ErrorReply::Malformed { .. })),
            "random bytes (round {round}): {verdict:?}"
        );
    }
    check_good(&mut good, "random bytes");

    // 2. Truncated frames: the stream ends inside the header or the body.
    let whole = produce_frame(partition, 7);
    for cut in [1, 10, 31, 32, 40, whole.len() - 1] {
        let verdict = feed(leader_addr, &whole[..cut], true);
        assert!(
            matches!(verdict, Verdict::Closed | Verdict::Error(ErrorReply::Malformed { .. })),
            "truncated at {cut}: {verdict:?}"
        );
    }
    check_good(&mut good, "truncated frames");

    // 3. An oversize length in a valid header: refused from the header alone.
    for len in [FRAME_BODY_SIZE_MAX as u32 + 1, u32::MAX] {
        let mut header =
            encode_frame(FrameKind::ProduceRequest, RequestId(3), &[]).to_bytes()[..32].to_vec();
        header[16..20].copy_from_slice(&len.to_le_bytes());
        reseal(&mut header);
        let mut stream = TcpStream::connect(leader_addr).unwrap();
        stream.set_read_timeout(Some(VERDICT_TIMEOUT)).unwrap();
        stream.write_all(&header).unwrap();
        let verdict = read_verdict(&mut stream);
        match verdict {
            Verdict::Error(ErrorReply::Oversize { .. }) => assert_closed_after(&mut stream),
            Verdict::Closed => {}
            other => panic!("oversize length {len}: {other:?}"),
        }
    }
    // A body checksum mismatch.
    let mut bad_crc = whole.to_vec();
    let last = bad_crc.len() - 1;
    bad_crc[last] ^= 0x55;
    let verdict = feed(leader_addr, &bad_crc, false);
    assert!(
        matches!(verdict, Verdict::Closed | Verdict::Error(ErrorReply::Malformed { .. })),
        "bad body checksum: {verdict:?}"
    );
    check_good(&mut good, "oversize lengths");

    // 4. Unknown frame kinds, a peer frame and a response kind on the client port, and a
    // known kind with a garbage body.
    let mut unknown =
        encode_frame(FrameKind::MetadataRequest, RequestId(4), &[]).to_bytes().to_vec();
    unknown[5] = 0x60;
    reseal(&mut unknown);
    let peer_kind = encode_frame(FrameKind::PeerRaft, RequestId(5), b"hello").to_bytes();
    let response_kind = encode_frame(FrameKind::ProduceResponse, RequestId(6), &[0; 28]).to_bytes();
    let garbage_body =
        encode_frame(FrameKind::ProduceRequest, RequestId(8), b"\x00\x00").to_bytes();
    for (what, bytes) in [
        ("unknown kind 0x60", &unknown[..]),
        ("peer frame", &peer_kind[..]),
        ("response frame", &response_kind[..]),
        ("garbage produce body", &garbage_body[..]),
    ] {
        let verdict = feed(leader_addr, bytes, false);
        assert!(
            matches!(verdict, Verdict::Closed | Verdict::Error(ErrorReply::Malformed { .. })),
            "{what}: {verdict:?}"
        );
    }
    check_good(&mut good, "unknown kinds");

    // 5. A peer handshake with a wrong cluster id is refused (or closed).
    let peer_addr = cluster.nodes[&leader].peer;
    let handshake = Handshake {
        cluster: ClusterId(cluster.cluster_id ^ 0xDEAD_BEEF),
        node: NodeId(follower),
        shard: ShardId(0),
        protocol_version: PEER_PROTOCOL_VERSION,
        layout: ShardLayout { shards: cluster.spec.shards, partitions: cluster.spec.partitions },
        pristine: false,
    };
    match feed(peer_addr, &handshake.encode().to_bytes(), false) {
        Verdict::Other(FrameKind::PeerHandshakeRefused, body) => {
            let frame = ringlog_net::Frame {
                kind: FrameKind::PeerHandshakeRefused,
                request_id: RequestId(0),
                body,
            };
            let reply = HandshakeReply::decode(&frame).expect("refusal decodes");
            assert!(
                matches!(reply, HandshakeReply::Refused { reason: RefuseReason::WrongCluster, .. }),
                "{reply:?}"
            );
        }
        Verdict::Closed => {}
        other => panic!("wrong-cluster handshake: {other:?}"),
    }
    // Random bytes on the peer port too.
    let verdict = feed(peer_addr, b"GET / HTTP/1.1\r\n\r\n", true);
    assert!(
        matches!(
            verdict,
            Verdict::Closed
                | Verdict::Error(_)
                | Verdict::Other(FrameKind::PeerHandshakeRefused, _)
        ),
        "{verdict:?}"
    );
    check_good(&mut good, "peer abuse");

    // 6. Produce to a non-leader: NotLeader naming the leader. Produce to an unknown
    // partition: UnknownPartition. Both keep the connection usable.
    let error = client.node(follower_addr).produce(partition, Acks::Quorum, &[b"misrouted"]);
    match error {
        Err(ClientError::Server {
            reply: ErrorReply::NotLeader { leader: hint, address, .. },
            ..
        }) => {
            assert_eq!(hint, Some(NodeId(leader)));
            assert_eq!(address, Some(leader_addr));
        }
        other => panic!("produce to a follower: {other:?}"),
    }
    let unknown = PartitionId(cluster.spec.partitions + 5);
    let mut stream = TcpStream::connect(leader_addr).unwrap();
    stream.set_read_timeout(Some(VERDICT_TIMEOUT)).unwrap();
    stream.write_all(&produce_frame(unknown, 11)).unwrap();
    match read_verdict(&mut stream) {
        Verdict::Error(ErrorReply::UnknownPartition { partition }) => {
            assert_eq!(partition, unknown)
        }
        other => panic!("produce to an unknown partition: {other:?}"),
    }
    stream.write_all(&Request::GroupStatus { partition }.encode(RequestId(12)).to_bytes()).unwrap();
    assert!(
        matches!(read_verdict(&mut stream), Verdict::Other(FrameKind::GroupStatusResponse, _)),
        "a typed refusal keeps the connection usable"
    );
    check_good(&mut good, "misrouted produces");

    // Nothing lost, nothing extra; the cluster still commits.
    produce("after", &mut ledger);
    let records = cluster.assert_replicas_identical(&client, partition);
    ledger.check(&records, partition);
    assert_eq!(records.last().map(|r| r.offset), Some(Offset(1)));
}
