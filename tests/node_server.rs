//! The client server of a real node, over raw `std::net::TcpStream`s: good requests (routing
//! between shards, pipelining, metadata) and bad input (random bytes, bad headers, oversize
//! lengths, unknown kinds, wrong versions, undecodable bodies, too many connections), each
//! answered with an error reply and a closed connection while the node keeps serving others.

#[path = "node_common.rs"]
mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use bytes::Bytes;
use common::{cluster_configs, wait_leader, BATCH_SIZE_MAX, WAIT_MAX};
use rand::{Rng, SeedableRng};
use ringlog_net::frame::{decode_frame, encode_frame, FrameKind};
use ringlog_net::limits::{ADMIN_TOKEN_BYTES_MAX, FRAME_BODY_SIZE_MAX, FRAME_HEADER_SIZE};
use ringlog_net::protocol::{
    AdminCredential, ErrorReply, FetchRequest, ProduceRequest, Request, Response,
};
use ringlog_net::{Consistency, Offset, RequestId};
use ringlog_node::node::{Acks, Node, NodeHandle, PartitionId, ShutdownMode};
use ringlog_raft::{MembershipChange, NodeId};

fn temp() -> tempfile::TempDir {
    tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap()
}

/// A single node with 2 shards and 4 partitions, every partition led.
fn start(dir: &std::path::Path, connections_max: u64) -> NodeHandle {
    let mut config = cluster_configs(dir, 1, 2, 4).remove(0);
    config.net.client_connections_max = connections_max;
    let node = Node::start(config).expect("node starts");
    for p in 0..4 {
        wait_leader(&[&node], PartitionId(p));
    }
    node
}

fn connect(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(WAIT_MAX)).unwrap();
    stream
}

/// Reads one frame; `None` at a clean end of stream.
fn read_response(stream: &mut TcpStream) -> Option<(RequestId, Response)> {
    let mut header = [0u8; FRAME_HEADER_SIZE];
    match stream.read_exact(&mut header) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return None,
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return None,
        Err(e) => panic!("reading a response: {e}"),
    }
    let body_len = u32::from_le_bytes(header[16..20].try_into().unwrap()) as usize;
    let mut frame = header.to_vec();
    frame.resize(FRAME_HEADER_SIZE + body_len, 0);
    stream.read_exact(&mut frame[FRAME_HEADER_SIZE..]).unwrap();
    let (frame, _) = decode_frame(&Bytes::from(frame), FRAME_BODY_SIZE_MAX).unwrap();
    Some((frame.request_id, Response::decode(&frame).unwrap()))
}

fn request(stream: &mut TcpStream, id: u64, request: &Request) -> Response {
    stream.write_all(&request.encode(RequestId(id)).to_bytes()).unwrap();
    let (got, response) = read_response(stream).expect("a response");
    assert_eq!(got, RequestId(id));
    response
}

fn produce(partition: u32, value: &[u8]) -> Request {
    let mut builder = ringlog_engine::RecordsBuilder::new(BATCH_SIZE_MAX as usize);
    builder.push(value).unwrap();
    let records = builder.finish();
    let stamp = ringlog_engine::batch::BatchStamp {
        term: ringlog_engine::Term(0),
        index: ringlog_engine::LogIndex(0),
        base_offset: ringlog_engine::Offset(0),
        record_count: records.count,
        flags: 0,
        first_timestamp_ms: 1,
        max_timestamp_ms: 1,
        prev_crc: 0,
    };
    let batch = ringlog_engine::batch::encode_batch(&stamp, &records.bytes);
    Request::Produce(ProduceRequest {
        partition: PartitionId(partition),
        acks: Acks::Quorum,
        batch,
    })
}

/// A good client still gets answers from `addr`.
fn assert_serving(addr: SocketAddr) {
    let mut stream = connect(addr);
    match request(&mut stream, 9, &Request::Metadata { partitions: vec![] }) {
        Response::Metadata(metadata) => assert_eq!(metadata.partitions.len(), 4),
        other => panic!("expected metadata, got {other:?}"),
    }
}

/// Sends `bytes`, expects one error reply (`check` decides if it is the right one), then the
/// end of the stream.
fn assert_rejected(addr: SocketAddr, bytes: &[u8], check: impl Fn(&ErrorReply) -> bool) {
    let mut stream = connect(addr);
    stream.write_all(bytes).unwrap();
    let (_, response) = read_response(&mut stream).expect("an error reply before the close");
    match &response {
        Response::Error(reply) => assert!(check(reply), "unexpected reply {reply:?}"),
        other => panic!("expected an error reply, got {other:?}"),
    }
    assert!(read_response(&mut stream).is_none(), "the connection stays open");
}

/// A valid header for `kind` with `body_len`, version `version`, checksums filled in.
fn header(kind: u8, version: u8, body: &[u8], body_len: u32) -> Vec<u8> {
    let mut out = encode_frame(FrameKind::MetadataRequest, RequestId(5), body).to_bytes().to_vec();
    out[4] = version;
    out[5] = kind;
    out[16..20].copy_from_slice(&body_len.to_le_bytes());
    let crc = crc32fast::hash(&out[..28]);
    out[28..32].copy_from_slice(&crc.to_le_bytes());
    out
}

#[test]
fn requests_are_answered_with_their_ids_across_shards_and_pipelined() {
    let dir = temp();
    let node = start(dir.path(), 64);
    let shard0 = node.client_addr(0).unwrap();
    let mut stream = connect(shard0);
    match request(&mut stream, 1, &Request::Metadata { partitions: vec![] }) {
        Response::Metadata(metadata) => {
            assert_eq!(metadata.shards, 2);
            for m in &metadata.partitions {
                let shard = m.partition.0 as usize % 2;
                assert_eq!(m.shard.0 as usize, shard);
                assert_eq!(m.leader, Some(node.node_id()));
                assert_eq!(m.address, node.client_addr(shard), "{m:?}");
            }
        }
        other => panic!("expected metadata, got {other:?}"),
    }
    // Partition 1 lives on shard 1: shard 0 forwards.
    match request(&mut stream, 2, &Request::GroupStatus { partition: PartitionId(1) }) {
        Response::GroupStatus(status) => assert_eq!(status.partition, PartitionId(1)),
        other => panic!("expected a status, got {other:?}"),
    }
    // Pipelining: 20 produces in one write, to partitions of both shards.
    let mut bytes = Vec::new();
    for id in 100..120u64 {
        let partition = (id % 2) as u32;
        bytes.extend_from_slice(
            &produce(partition, format!("v{id}").as_bytes()).encode(RequestId(id)).to_bytes(),
        );
    }
    stream.write_all(&bytes).unwrap();
    let mut answered: Vec<u64> = Vec::new();
    for _ in 100..120 {
        let (id, response) = read_response(&mut stream).unwrap();
        match response {
            Response::Produce(r) => assert_eq!(r.partition.0 as u64, id.0 % 2),
            other => panic!("request {id:?}: {other:?}"),
        }
        answered.push(id.0);
    }
    answered.sort_unstable();
    assert_eq!(answered, (100..120).collect::<Vec<_>>());
    // Read back from the other shard's port (forwarded back to shard 0 for partition 0).
    let fetch = Request::Fetch(FetchRequest {
        partition: PartitionId(0),
        offset: Offset(0),
        max_bytes: 1 << 20,
        wait_ms: 1000,
        consistency: Consistency::ReplicaCommitted,
    });
    let mut other = connect(node.client_addr(1).unwrap());
    match request(&mut other, 3, &fetch) {
        Response::Fetch(f) => {
            assert_eq!(f.partition, PartitionId(0));
            assert!(!f.batches.is_empty());
        }
        other => panic!("expected a fetch response, got {other:?}"),
    }
    match request(&mut other, 4, &Request::GroupStatus { partition: PartitionId(9) }) {
        Response::Error(ErrorReply::UnknownPartition { partition }) => {
            assert_eq!(partition, PartitionId(9))
        }
        other => panic!("expected UnknownPartition, got {other:?}"),
    }
    node.shutdown(ShutdownMode::Graceful).unwrap();
}

#[test]
fn bad_input_gets_an_error_reply_and_a_close_and_the_node_keeps_serving() {
    let dir = temp();
    let node = start(dir.path(), 64);
    let addr = node.client_addr(0).unwrap();
    let seed: u64 = std::env::var("RINGLOG_SERVER_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    println!("seed {seed} (replay with RINGLOG_SERVER_SEED={seed})");
    let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
    let mut rejected = 0;
    // Random bytes (never starting with the magic).
    for _ in 0..3 {
        let mut garbage = vec![0u8; rng.gen_range(32..4096)];
        rng.fill(&mut garbage[..]);
        garbage[0] = b'X';
        assert_rejected(addr, &garbage, |r| matches!(r, ErrorReply::Malformed { .. }));
        rejected += 1;
    }
    // A header announcing a body over the limit.
    let oversize = header(FrameKind::ProduceRequest as u8, 1, &[], u32::MAX);
    assert_rejected(
        addr,
        &oversize[..FRAME_HEADER_SIZE],
        |r| matches!(r, ErrorReply::Oversize { len, .. } if *len == u32::MAX as u64),
    );
    // An unknown kind, and a wrong version.
    assert_rejected(addr, &header(0x55, 1, &[0; 4], 4), |r| {
        matches!(r, ErrorReply::Malformed { .. })
    });
    assert_rejected(addr, &header(FrameKind::MetadataRequest as u8, 9, &[0; 4], 4), |r| {
        matches!(r, ErrorReply::UnsupportedVersion { version: 9 })
    });
    // A peer frame kind on the client port, and a client body that does not decode.
    let peer = encode_frame(FrameKind::PeerRaft, RequestId(6), &[1, 2, 3]).to_bytes();
    assert_rejected(addr, &peer, |r| matches!(r, ErrorReply::Malformed { .. }));
    let truncated = encode_frame(FrameKind::ProduceRequest, RequestId(7), &[0, 0]).to_bytes();
    assert_rejected(addr, &truncated, |r| matches!(r, ErrorReply::Malformed { .. }));
    // A header whose checksum is wrong.
    let mut bad_crc = header(FrameKind::MetadataRequest as u8, 1, &[0; 4], 4);
    bad_crc[28] ^= 0xFF;
    assert_rejected(addr, &bad_crc, |r| matches!(r, ErrorReply::Malformed { .. }));
    rejected += 6;
    assert_serving(addr);
    assert_serving(node.client_addr(1).unwrap());
    let snapshot = node.snapshot().unwrap();
    let counted: u64 = snapshot.shards[0]
        .rejected_inputs
        .iter()
        .filter(|(kind, _)| kind.starts_with("client_"))
        .map(|(_, count)| count)
        .sum();
    assert_eq!(counted, rejected, "{:?}", snapshot.shards[0].rejected_inputs);
    node.shutdown(ShutdownMode::Graceful).unwrap();
}

#[test]
fn connections_over_the_limit_are_refused_and_the_others_keep_working() {
    let dir = temp();
    let node = start(dir.path(), 2);
    let addr = node.client_addr(0).unwrap();
    let mut first = connect(addr);
    let mut second = connect(addr);
    // Make sure both are accepted (and counted) before the third arrives.
    for (id, stream) in [(1, &mut first), (2, &mut second)] {
        assert!(matches!(
            request(stream, id, &Request::GroupStatus { partition: PartitionId(0) }),
            Response::GroupStatus(_)
        ));
    }
    assert_rejected(addr, &[], |r| matches!(r, ErrorReply::Rejected { .. }));
    assert!(matches!(
        request(&mut first, 3, &Request::GroupStatus { partition: PartitionId(0) }),
        Response::GroupStatus(_)
    ));
    drop(second);
    // The freed slot is usable again (the server notices the close asynchronously).
    let deadline = std::time::Instant::now() + WAIT_MAX;
    loop {
        let mut stream = connect(addr);
        stream
            .write_all(&Request::Metadata { partitions: vec![] }.encode(RequestId(8)).to_bytes())
            .unwrap();
        match read_response(&mut stream) {
            Some((_, Response::Metadata(_))) => break,
            Some((_, Response::Error(ErrorReply::Rejected { .. }))) | None => {
                assert!(std::time::Instant::now() < deadline, "the slot never came back");
                std::thread::sleep(Duration::from_millis(20));
            }
            Some(other) => panic!("unexpected {other:?}"),
        }
    }
    node.shutdown(ShutdownMode::Graceful).unwrap();
}

/// A node started like [`start`] with its `[admin]` section set to `admin`.
fn start_with_admin(
    dir: &std::path::Path,
    admin: ringlog_node::config::AdminSection,
) -> NodeHandle {
    let mut config = cluster_configs(dir, 1, 2, 4).remove(0);
    config.admin = admin;
    let node = Node::start(config).expect("node starts");
    for p in 0..4 {
        wait_leader(&[&node], PartitionId(p));
    }
    node
}

fn authenticate(token: &[u8]) -> Request {
    let credential = AdminCredential { token: Bytes::copy_from_slice(token) };
    Request::Authenticate { credential }
}

fn remove_node(partition: u32, node: u32) -> Request {
    Request::ChangeMembership {
        partition: PartitionId(partition),
        change: MembershipChange::Remove(NodeId(node)),
        peer: None,
        client: None,
    }
}

fn is_unauthorized(response: &Response) -> bool {
    matches!(response, Response::Error(ErrorReply::Unauthorized { .. }))
}

/// Issue 18 (authorization), secure by default: a node without `[admin]` refuses every admin
/// request with `Unauthorized` (saying how to configure one) and goes on serving the
/// connection; any `Authenticate` is refused and closes its connection; an oversize token is
/// a malformed body. Transfers to and removals of this very node are what is asked: had they
/// run, the answers would not be `Unauthorized`.
#[test]
fn a_node_without_an_admin_identity_refuses_admin_requests_and_keeps_serving() {
    let dir = temp();
    let node = start(dir.path(), 64);
    let addr = node.client_addr(0).unwrap();
    let mut stream = connect(addr);
    let transfer = Request::TransferLeader { partition: PartitionId(1), to: NodeId(1) };
    let response = request(&mut stream, 1, &transfer);
    match &response {
        Response::Error(ErrorReply::Unauthorized { reason }) => {
            assert!(reason.contains("none configured"), "{reason}");
            assert!(reason.contains("admin.token_file"), "{reason}");
        }
        other => panic!("expected Unauthorized, got {other:?}"),
    }
    assert!(is_unauthorized(&request(&mut stream, 2, &remove_node(0, 1))));
    // The same connection still serves other requests.
    match request(&mut stream, 3, &Request::GroupStatus { partition: PartitionId(0) }) {
        Response::GroupStatus(status) => assert_eq!(status.followers.len(), 0),
        other => panic!("expected a status, got {other:?}"),
    }
    // Any token is refused, and the connection closed.
    let token = b"some-token-of-enough-length";
    assert_rejected(
        addr,
        &authenticate(token).encode(RequestId(4)).to_bytes(),
        |reply| matches!(reply, ErrorReply::Unauthorized { reason } if reason.contains("no admin token")),
    );
    // An oversize token does not decode.
    let oversize = authenticate(&[b'x'; ADMIN_TOKEN_BYTES_MAX + 1]).encode(RequestId(5));
    assert_rejected(
        addr,
        &oversize.to_bytes(),
        |reply| matches!(reply, ErrorReply::Malformed { reason } if reason.contains("admin token")),
    );
    assert_serving(addr);
    node.shutdown(ShutdownMode::Immediate).unwrap();
}

/// With `admin.token_file`, an `Authenticate` carrying the token makes the rest of the
/// connection an admin's — an admin request pipelined right behind it (here forwarded to the
/// other shard) is carried out — while other connections stay refused; a wrong token is
/// refused and closes its connection. `admin.open = true` lets every connection through.
#[test]
fn the_admin_token_authorizes_its_connection_and_open_mode_authorizes_every_one() {
    use std::os::unix::fs::PermissionsExt;
    let dir = temp();
    let token = b"node-server-admin-token-0123456789";
    let token_file = dir.path().join("admin.token");
    std::fs::write(&token_file, token).unwrap();
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let admin =
        ringlog_node::config::AdminSection { token_file: Some(token_file), ..Default::default() };
    let node = start_with_admin(&dir.path().join("token"), admin);
    let addr = node.client_addr(0).unwrap();
    let mut anonymous = connect(addr);
    assert!(is_unauthorized(&request(&mut anonymous, 1, &remove_node(1, 1))));

    let mut admin = connect(addr);
    let mut both = authenticate(token).encode(RequestId(2)).to_bytes().to_vec();
    // Removing the only voter is refused by the group, not by the admin policy.
    both.extend_from_slice(&remove_node(1, 1).encode(RequestId(3)).to_bytes());
    admin.write_all(&both).unwrap();
    let mut answers = [read_response(&mut admin).unwrap(), read_response(&mut admin).unwrap()];
    answers.sort_by_key(|(id, _)| id.0);
    assert_eq!(answers[0], (RequestId(2), Response::Authenticated));
    assert!(!is_unauthorized(&answers[1].1), "authorized: {:?}", answers[1]);
    let transfer = Request::TransferLeader { partition: PartitionId(2), to: NodeId(1) };
    assert!(!is_unauthorized(&request(&mut admin, 4, &transfer)));
    // Other connections are not authorized by it.
    assert!(is_unauthorized(&request(&mut anonymous, 5, &transfer)));
    let wrong = authenticate(b"node-server-admin-token-0123456780").encode(RequestId(6));
    assert_rejected(
        addr,
        &wrong.to_bytes(),
        |reply| matches!(reply, ErrorReply::Unauthorized { reason } if reason.contains("refused")),
    );
    node.shutdown(ShutdownMode::Immediate).unwrap();

    let open = ringlog_node::config::AdminSection { open: true, ..Default::default() };
    let node = start_with_admin(&dir.path().join("open"), open);
    let mut stream = connect(node.client_addr(0).unwrap());
    assert!(!is_unauthorized(&request(&mut stream, 1, &remove_node(1, 1))));
    assert!(!is_unauthorized(&request(&mut stream, 2, &transfer)));
    node.shutdown(ShutdownMode::Immediate).unwrap();
}
