//! Fuzz bodies shared by the cargo-fuzz targets in `fuzz/` and the seeded randomized tests,
//! so that CI exercises on stable exactly what the fuzzer runs on nightly.
//!
//! Each function accepts any bytes, must never panic, and asserts the codec's properties on
//! whatever decodes: a decoded frame re-encodes to the same bytes, and a decoded message
//! re-encodes to the same body (the encodings are canonical).

use bytes::{Bytes, BytesMut};
use ringlog_raft::Entry;

use crate::frame::{decode_frame, encode_frame, Frame, FrameDecoder, FrameKind};
use crate::ids::RequestId;
use crate::limits::{FRAME_BODY_SIZE_CEILING, FRAME_HEADER_SIZE};
use crate::peer::{BatchCheck, Handshake, HandshakeReply, PeerMessage};
use crate::protocol::{Request, Response};

/// Body limit used by the fuzz bodies: small, so that the oversize path is reachable.
pub const FUZZ_BODY_SIZE_MAX: usize = 64 * 1024;

/// Rejects payloads whose first byte is 0xFF, so that fuzzing reaches the `BadBatch` path.
#[derive(Clone, Copy, Debug, Default)]
pub struct RejectFfBatches;

impl BatchCheck for RejectFfBatches {
    fn check(&self, entry: &Entry) -> Result<(), String> {
        match entry.payload.first() {
            Some(0xFF) => Err("payload starts with 0xFF".into()),
            _ => Ok(()),
        }
    }
}

/// Feeds `data` to the streaming decoder in pieces whose sizes come from `data` itself, checks
/// it against the one-shot decoder, and decodes every frame's body with every body decoder.
///
/// If the first byte is odd, the rest of `data` first gets valid checksums written into every
/// header it holds (see [`reseal_frames`]), so that a coverage-guided fuzzer, which cannot
/// solve a crc32, reaches the body decoders through the frame decoder too.
pub fn frame_decoder(data: &[u8]) {
    match data.split_first() {
        Some((selector, rest)) if selector & 1 == 1 => {
            let mut resealed = rest.to_vec();
            reseal_frames(&mut resealed);
            decode_stream(&resealed);
        }
        _ => decode_stream(data),
    }
}

/// Walks `bytes` as a sequence of frames and overwrites each frame's `body_crc` and
/// `header_crc` with the right values (a body cut short by the end is checksummed as cut).
pub fn reseal_frames(bytes: &mut [u8]) {
    let mut at = 0;
    while bytes.len() - at >= FRAME_HEADER_SIZE {
        let header = &mut bytes[at..];
        let body_len = u32::from_le_bytes([header[16], header[17], header[18], header[19]]);
        let body_end = (FRAME_HEADER_SIZE as u64 + u64::from(body_len)).min(header.len() as u64);
        let body_crc = crc32fast::hash(&header[FRAME_HEADER_SIZE..body_end as usize]);
        header[20..24].copy_from_slice(&body_crc.to_le_bytes());
        let header_crc = crc32fast::hash(&header[..28]);
        header[28..32].copy_from_slice(&header_crc.to_le_bytes());
        at += body_end as usize;
    }
}

fn decode_stream(data: &[u8]) {
    let whole = Bytes::copy_from_slice(data);
    let mut decoder = FrameDecoder::new(FUZZ_BODY_SIZE_MAX);
    let mut buf = BytesMut::new();
    let mut position = 0;
    let mut consumed = 0;
    let mut step = 1 + data.first().copied().unwrap_or(0) as usize;
    let mut streamed = Vec::new();
    let mut failed = false;
    while position < data.len() && !failed {
        let end = (position + step).min(data.len());
        buf.extend_from_slice(&data[position..end]);
        position = end;
        step = step * 7 % 97 + 1;
        loop {
            match decoder.decode(&mut buf) {
                Ok(Some(frame)) => {
                    consumed += FRAME_HEADER_SIZE + frame.body.len();
                    streamed.push(frame);
                }
                Ok(None) => break,
                Err(_) => {
                    failed = true;
                    break;
                }
            }
        }
    }
    if !failed {
        let at_end = decoder.finish(&buf);
        assert_eq!(at_end.is_ok(), consumed == data.len(), "finish disagrees with the input");
    }
    // The one-shot decoder finds the same frames.
    let mut rest = whole.clone();
    for frame in &streamed {
        let (again, used) = decode_frame(&rest, FUZZ_BODY_SIZE_MAX).expect("one-shot agrees");
        assert_eq!(&again, frame);
        let reencoded = encode_frame(frame.kind, frame.request_id, &frame.body).to_bytes();
        assert_eq!(&reencoded[..], &rest[..used], "frame encoding is not canonical");
        rest = rest.slice(used..);
        bodies(frame);
    }
}

/// Decodes `data[1..]` as the body of a peer frame whose kind `data[0]` chooses, skipping the
/// frame checksums so that the body decoders see arbitrary bodies.
pub fn peer_message(data: &[u8]) {
    let Some((&selector, body)) = data.split_first() else { return };
    const KINDS: [FrameKind; 6] = [
        FrameKind::PeerRaft,
        FrameKind::PeerHeartbeats,
        FrameKind::PeerHeartbeatResponses,
        FrameKind::PeerHandshake,
        FrameKind::PeerHandshakeAccepted,
        FrameKind::PeerHandshakeRefused,
    ];
    let kind = KINDS[selector as usize % KINDS.len()];
    let frame = Frame { kind, request_id: RequestId(0), body: Bytes::copy_from_slice(body) };
    bodies(&frame);
}

/// Decodes `data[1..]` as the body of a client frame whose kind `data[0]` chooses.
pub fn client_message(data: &[u8]) {
    let Some((&selector, body)) = data.split_first() else { return };
    let kind = FrameKind::ALL[selector as usize % FrameKind::ALL.len()];
    let frame = Frame { kind, request_id: RequestId(9), body: Bytes::copy_from_slice(body) };
    bodies(&frame);
}

/// Runs every body decoder on `frame`; whatever decodes must re-encode to the same body.
fn bodies(frame: &Frame) {
    if let Ok(message) = PeerMessage::decode(frame, &RejectFfBatches) {
        assert_reencodes(frame, &message.encode().to_bytes());
    }
    if let Ok(handshake) = Handshake::decode(frame) {
        assert_reencodes(frame, &handshake.encode().to_bytes());
    }
    if let Ok(reply) = HandshakeReply::decode(frame) {
        assert_reencodes(frame, &reply.encode().to_bytes());
    }
    if let Ok(request) = Request::decode(frame) {
        assert_reencodes(frame, &request.encode(frame.request_id).to_bytes());
    }
    if let Ok(response) = Response::decode(frame) {
        assert_reencodes(frame, &response.encode(frame.request_id).to_bytes());
    }
}

fn assert_reencodes(frame: &Frame, encoded: &[u8]) {
    let (again, _) = decode_frame(&Bytes::copy_from_slice(encoded), FRAME_BODY_SIZE_CEILING)
        .expect("an encoded frame decodes");
    assert_eq!(again.kind, frame.kind, "kind changed in re-encoding");
    assert_eq!(again.body, frame.body, "body encoding is not canonical");
}

/// One value of every request, response, handshake and peer message shape (every Raft
/// `Message` variant, every entry kind, every error reply), for round-trip tests and as seeds
/// for mutation.
pub mod samples {
    use std::net::{Ipv6Addr, SocketAddr};

    use bytes::Bytes;
    use ringlog_raft::{
        AppendResult, Entry, EntryKind, LogIndex, Membership, MembershipChange, Message, NodeId,
        Role, Term,
    };

    use crate::ids::{ClusterId, Offset, PartitionId, ShardId};
    use crate::peer::{
        Handshake, HandshakeReply, PartitionHeartbeat, PartitionHeartbeatResponse, PeerMessage,
        RefuseReason, PEER_PROTOCOL_VERSION,
    };
    use crate::protocol::{
        Acks, AdminCredential, Consistency, ErrorReply, FetchRequest, FetchResponse,
        FollowerStatus, GroupStatus, MetadataResponse, PartitionMetadata, ProduceRequest,
        ProduceResponse, Request, Response,
    };

    /// `len` bytes of a recognisable pattern.
    pub fn batch(len: usize, seed: u8) -> Bytes {
        (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect::<Vec<u8>>().into()
    }

    fn membership() -> Membership {
        Membership { voters: vec![NodeId(1), NodeId(2), NodeId(3)], learners: vec![NodeId(9)] }
    }

    pub fn raft_messages() -> Vec<Message> {
        let (t, i) = (Term(7), LogIndex(100));
        let entries = vec![
            Entry {
                term: Term(6),
                index: LogIndex(101),
                kind: EntryKind::Noop,
                payload: Bytes::new(),
            },
            Entry {
                term: t,
                index: LogIndex(102),
                kind: EntryKind::Normal,
                payload: batch(64 * 1024, 1),
            },
            Entry {
                term: t,
                index: LogIndex(103),
                kind: EntryKind::Normal,
                payload: batch(100, 2),
            },
            Entry {
                term: t,
                index: LogIndex(104),
                kind: EntryKind::Membership(membership()),
                payload: batch(12, 3),
            },
        ];
        vec![
            Message::PreVote { term: t, last_index: i, last_term: Term(6) },
            Message::PreVoteResponse { term: t, granted: true },
            Message::Vote { term: t, last_index: i, last_term: Term(6), transfer: true },
            Message::VoteResponse { term: t, granted: false },
            Message::Append {
                term: t,
                prev_index: i,
                prev_term: Term(6),
                commit: LogIndex(99),
                entries,
            },
            Message::Append {
                term: t,
                prev_index: i,
                prev_term: Term(6),
                commit: LogIndex(99),
                entries: vec![],
            },
            Message::AppendResponse {
                term: t,
                result: AppendResult::Accepted { durable: i, damaged: true },
            },
            Message::AppendResponse {
                term: t,
                result: AppendResult::Rejected {
                    rejected: i,
                    hint_index: LogIndex(90),
                    hint_term: Term(5),
                },
            },
            Message::Heartbeat { term: t, commit: i, ctx: 5 },
            Message::HeartbeatResponse { term: t, ctx: 5 },
            Message::TimeoutNow { term: t },
            Message::InstallLogStart {
                term: t,
                start: LogIndex(50),
                prev_term: Term(3),
                commit: i,
                membership: membership(),
            },
            Message::TermQuery { term: Term(3) },
            Message::TermQueryResponse { term: t },
        ]
    }

    pub fn peer_messages() -> Vec<PeerMessage> {
        let mut messages: Vec<PeerMessage> = raft_messages()
            .into_iter()
            .enumerate()
            .map(|(n, message)| PeerMessage::Raft { partition: PartitionId(n as u32), message })
            .collect();
        messages.push(PeerMessage::Heartbeats(
            (0..300)
                .map(|p| PartitionHeartbeat {
                    partition: PartitionId(p),
                    term: Term(u64::from(p) + 1),
                    commit: LogIndex(u64::from(p) * 10),
                    ctx: u64::from(p) ^ 0xABCD,
                })
                .collect(),
        ));
        messages.push(PeerMessage::HeartbeatResponses(vec![
            PartitionHeartbeatResponse { partition: PartitionId(1), term: Term(2), ctx: 3 },
            PartitionHeartbeatResponse { partition: PartitionId(4), term: Term(5), ctx: 0 },
        ]));
        messages.push(PeerMessage::Heartbeats(vec![]));
        messages
    }

    pub fn handshakes() -> Vec<Handshake> {
        vec![Handshake {
            cluster: ClusterId(0xC1),
            node: NodeId(2),
            shard: ShardId(1),
            protocol_version: PEER_PROTOCOL_VERSION,
            layout: crate::peer::ShardLayout { shards: 2, partitions: 8 },
            pristine: true,
        }]
    }

    pub fn handshake_replies() -> Vec<HandshakeReply> {
        vec![
            HandshakeReply::Accepted {
                cluster: ClusterId(0xC1),
                node: NodeId(3),
                shard: ShardId(1),
                pristine: false,
            },
            HandshakeReply::Refused {
                reason: RefuseReason::WrongCluster,
                detail: "this is cluster 00000000000000c1, peer is in 00000000000000c2".into(),
            },
        ]
    }

    pub fn requests() -> Vec<Request> {
        let v6: SocketAddr = (Ipv6Addr::LOCALHOST, 9000).into();
        vec![
            Request::Produce(ProduceRequest {
                partition: PartitionId(3),
                acks: Acks::Quorum,
                batch: batch(64 * 1024, 4),
            }),
            Request::Produce(ProduceRequest {
                partition: PartitionId(3),
                acks: Acks::None,
                batch: batch(10, 5),
            }),
            Request::Produce(ProduceRequest {
                partition: PartitionId(0),
                acks: Acks::Leader,
                batch: Bytes::new(),
            }),
            Request::Fetch(FetchRequest {
                partition: PartitionId(2),
                offset: Offset(12345),
                max_bytes: 1 << 20,
                wait_ms: 500,
                consistency: Consistency::LeaderLinearizable,
            }),
            Request::Fetch(FetchRequest {
                partition: PartitionId(2),
                offset: Offset(0),
                max_bytes: 0,
                wait_ms: 0,
                consistency: Consistency::ReplicaCommitted,
            }),
            Request::Metadata { partitions: vec![] },
            Request::Metadata { partitions: vec![PartitionId(1), PartitionId(7)] },
            Request::GroupStatus { partition: PartitionId(4) },
            Request::TransferLeader { partition: PartitionId(4), to: NodeId(2) },
            Request::ChangeMembership {
                partition: PartitionId(4),
                change: MembershipChange::AddLearner(NodeId(4)),
                peer: Some("127.0.0.1:7204".parse().unwrap()),
                client: Some("127.0.0.1:7104".parse().unwrap()),
            },
            Request::ChangeMembership {
                partition: PartitionId(4),
                change: MembershipChange::Promote(NodeId(4)),
                peer: Some(v6),
                client: None,
            },
            Request::ChangeMembership {
                partition: PartitionId(4),
                change: MembershipChange::Remove(NodeId(1)),
                peer: None,
                client: Some(v6),
            },
            Request::Authenticate {
                credential: AdminCredential { token: Bytes::from_static(b"0123456789abcdef") },
            },
            Request::Authenticate { credential: AdminCredential { token: Bytes::new() } },
        ]
    }

    pub fn error_replies() -> Vec<ErrorReply> {
        let p = PartitionId(6);
        vec![
            ErrorReply::NotLeader {
                partition: p,
                leader: Some(NodeId(2)),
                address: Some("127.0.0.1:7002".parse().unwrap()),
            },
            ErrorReply::NotLeader { partition: p, leader: None, address: None },
            ErrorReply::UnknownPartition { partition: p },
            ErrorReply::OffsetOutOfRange {
                partition: p,
                requested: Offset(5),
                log_start: Offset(10),
                log_end: Offset(20),
            },
            ErrorReply::Backpressure { retry_after_ms: 50 },
            ErrorReply::Oversize { len: 1 << 30, max: 1 << 23 },
            ErrorReply::Malformed { reason: "bad frame magic".into() },
            ErrorReply::WrongCluster { expected: ClusterId(1), found: ClusterId(2) },
            ErrorReply::UnsupportedVersion { version: 9 },
            ErrorReply::Timeout,
            ErrorReply::ShuttingDown,
            ErrorReply::StorageFailed { reason: "fdatasync failed: EIO".into() },
            ErrorReply::StorageFull { partition: p, reason: "No space left on device".into() },
            ErrorReply::Rejected { reason: "a membership change is in progress ✓".into() },
            ErrorReply::Internal { reason: String::new() },
            ErrorReply::Unauthorized { reason: "no admin identity on this connection".into() },
        ]
    }

    pub fn responses() -> Vec<Response> {
        let mut responses = vec![
            Response::Produce(ProduceResponse {
                partition: PartitionId(3),
                base_offset: Offset(100),
                last_offset: Offset(163),
                commit: Offset(164),
            }),
            Response::Fetch(FetchResponse {
                partition: PartitionId(3),
                log_start: Offset(0),
                commit: Offset(500),
                batches: vec![batch(64 * 1024, 6), batch(3, 7), Bytes::new()],
            }),
            Response::Metadata(MetadataResponse {
                cluster: ClusterId(0xC1),
                shards: 2,
                partitions: vec![
                    PartitionMetadata {
                        partition: PartitionId(0),
                        shard: ShardId(0),
                        leader: Some(NodeId(1)),
                        term: Term(4),
                        address: Some("127.0.0.1:7000".parse().unwrap()),
                    },
                    PartitionMetadata {
                        partition: PartitionId(1),
                        shard: ShardId(1),
                        leader: None,
                        term: Term(0),
                        address: None,
                    },
                ],
            }),
            Response::GroupStatus(GroupStatus {
                partition: PartitionId(1),
                node: NodeId(1),
                role: Role::Leader,
                term: Term(4),
                leader: Some(NodeId(1)),
                commit: LogIndex(40),
                durable: LogIndex(41),
                last_index: LogIndex(42),
                commit_offset: Offset(4000),
                damaged: false,
                followers: vec![
                    FollowerStatus {
                        node: NodeId(2),
                        durable: LogIndex(40),
                        lag: 2,
                        learner: false,
                        damaged: false,
                        stuck: false,
                    },
                    FollowerStatus {
                        node: NodeId(4),
                        durable: LogIndex(3),
                        lag: 39,
                        learner: true,
                        damaged: true,
                        stuck: true,
                    },
                ],
            }),
            Response::GroupStatus(GroupStatus {
                partition: PartitionId(1),
                node: NodeId(2),
                role: Role::PreCandidate,
                term: Term(4),
                leader: None,
                commit: LogIndex(40),
                durable: LogIndex(41),
                last_index: LogIndex(42),
                commit_offset: Offset(4000),
                damaged: true,
                followers: vec![],
            }),
            Response::TransferLeader { partition: PartitionId(1), to: NodeId(3) },
            Response::ChangeMembership { partition: PartitionId(1), index: LogIndex(77) },
            Response::Authenticated,
        ];
        responses.extend(error_replies().into_iter().map(Response::Error));
        responses
    }
}
