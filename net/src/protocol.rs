//! The client protocol: requests a client sends to a node's shard, and their responses.
//!
//! Each request is one frame whose kind names it; its response carries the same request id
//! and either the matching response kind or `ErrorReply`. Byte layouts: docs/format.md#protocol.
//!
//! Invariants: decoding checks every count and length against `limits` before allocating; a
//! produced batch and fetched batches are zero-copy slices of the frame body; `decode` of
//! `encode` is the identity for every value whose strings fit `MESSAGE_LEN_MAX`.

use std::net::SocketAddr;

use bytes::Bytes;
use ringlog_raft::{LogIndex, MembershipChange, NodeId, Role, Term};

use crate::frame::{BodyWriter, Frame, FrameBuf, FrameKind};
use crate::ids::{ClusterId, Offset, PartitionId, RequestId, ShardId};
use crate::limits::{
    ADMIN_TOKEN_BYTES_MAX, BATCH_SIZE_MAX, FETCH_BATCHES_MAX, FETCH_BYTES_MAX,
    METADATA_PARTITIONS_MAX, STATUS_FOLLOWERS_MAX,
};
use crate::wire::{BodyWriterExt, ProtocolError, Reader};

/// When a produce is acknowledged (design.md §2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Acks {
    /// Once the leader accepted the batch in memory.
    None = 0,
    /// Once the leader's own fdatasync completed.
    Leader = 1,
    /// Once a majority has the batch durable: the commit point (the default).
    Quorum = 2,
}

/// What a fetch may return.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Consistency {
    /// The leader confirms it still leads (ReadIndex) before answering.
    LeaderLinearizable = 0,
    /// Any replica answers with what it knows to be committed.
    ReplicaCommitted = 1,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProduceRequest {
    pub partition: PartitionId,
    pub acks: Acks,
    /// One record batch in the on-disk format, at most `BATCH_SIZE_MAX` bytes.
    pub batch: Bytes,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FetchRequest {
    pub partition: PartitionId,
    pub offset: Offset,
    /// Stop adding batches once this many bytes are gathered; the first batch holding records
    /// at or after `offset` is returned whatever this is, and a reply never ends in a control
    /// batch (docs/format.md#fetch). Capped by `FETCH_BYTES_MAX` on decode.
    pub max_bytes: u32,
    /// Long poll: if nothing is committed at `offset`, wait up to this long for it.
    pub wait_ms: u32,
    pub consistency: Consistency,
}

/// The secret an `Authenticate` request carries: at most `ADMIN_TOKEN_BYTES_MAX` bytes on the
/// wire (longer is a decode error). `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct AdminCredential {
    pub token: Bytes,
}

impl std::fmt::Debug for AdminCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AdminCredential(<redacted, {} bytes>)", self.token.len())
    }
}

/// A client request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    Produce(ProduceRequest),
    Fetch(FetchRequest),
    /// Where each partition's leader is; an empty list asks for every partition.
    Metadata {
        partitions: Vec<PartitionId>,
    },
    GroupStatus {
        partition: PartitionId,
    },
    /// Ask the leader of `partition` to hand leadership to `to`.
    TransferLeader {
        partition: PartitionId,
        to: NodeId,
    },
    /// Change the members of `partition`'s group. An added node (`AddLearner`) comes with
    /// both of its addresses, each its shard 0's (shard `s` listens on port + s): `peer` for
    /// Raft traffic, `client` for clients (leader hints, metadata). Other changes carry none.
    ChangeMembership {
        partition: PartitionId,
        change: MembershipChange,
        peer: Option<SocketAddr>,
        client: Option<SocketAddr>,
    },
    /// Presents an admin token for the rest of the connection (docs/format.md#authenticate):
    /// once accepted, the connection may send admin requests (`TransferLeader`,
    /// `ChangeMembership`). A refused token is answered `Unauthorized` and the connection is
    /// closed.
    Authenticate {
        credential: AdminCredential,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProduceResponse {
    pub partition: PartitionId,
    /// Offset of the batch's first record.
    pub base_offset: Offset,
    /// Offset of the batch's last record.
    pub last_offset: Offset,
    /// The group's commit point (first offset not yet committed) when the reply was sent.
    pub commit: Offset,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FetchResponse {
    pub partition: PartitionId,
    /// First offset still held by the log (retention moves it).
    pub log_start: Offset,
    /// First offset not yet committed.
    pub commit: Offset,
    /// Whole record batches in the on-disk format, in log order; zero-copy slices. Empty, or
    /// ending in a batch that holds records: [`crate::client::next_offset`] of a non-empty
    /// reply is past the fetch offset (docs/format.md#fetch).
    pub batches: Vec<Bytes>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PartitionMetadata {
    pub partition: PartitionId,
    pub shard: ShardId,
    pub leader: Option<NodeId>,
    pub term: Term,
    /// The client address of the leader's shard that owns the partition.
    pub address: Option<SocketAddr>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MetadataResponse {
    pub cluster: ClusterId,
    /// Shards per node (partition p lives on shard p % shards).
    pub shards: u16,
    pub partitions: Vec<PartitionMetadata>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FollowerStatus {
    pub node: NodeId,
    /// Highest index known durable on that follower.
    pub durable: LogIndex,
    /// Entries the follower is behind the leader's last index.
    pub lag: u64,
    pub learner: bool,
    /// The follower reported itself damaged (it counts toward no quorum until repaired).
    pub damaged: bool,
    /// Behind, and its durable index has not moved for a long time (the node's bound).
    pub stuck: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupStatus {
    pub partition: PartitionId,
    /// The node answering.
    pub node: NodeId,
    pub role: Role,
    pub term: Term,
    pub leader: Option<NodeId>,
    pub commit: LogIndex,
    pub durable: LogIndex,
    pub last_index: LogIndex,
    /// First offset not yet committed.
    pub commit_offset: Offset,
    /// The answering replica is damaged (neither votes nor counts toward a quorum until a
    /// leader repairs it).
    pub damaged: bool,
    /// Filled in by a leader only.
    pub followers: Vec<FollowerStatus>,
}

/// Error codes on the wire (docs/format.md#error-reply).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u16)]
#[non_exhaustive]
pub enum ErrorCode {
    NotLeader = 1,
    UnknownPartition = 2,
    OffsetOutOfRange = 3,
    Backpressure = 4,
    Oversize = 5,
    Malformed = 6,
    WrongCluster = 7,
    UnsupportedVersion = 8,
    Timeout = 9,
    ShuttingDown = 10,
    StorageFailed = 11,
    Rejected = 12,
    Internal = 13,
    StorageFull = 14,
    Unauthorized = 15,
}

/// A typed error reply to a request (or to a malformed frame, just before the connection is
/// closed).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorReply {
    /// This node does not lead the partition; retry at the hinted leader if any.
    NotLeader {
        partition: PartitionId,
        leader: Option<NodeId>,
        address: Option<SocketAddr>,
    },
    UnknownPartition {
        partition: PartitionId,
    },
    OffsetOutOfRange {
        partition: PartitionId,
        requested: Offset,
        log_start: Offset,
        log_end: Offset,
    },
    /// Queues are full; retry after the hinted delay.
    Backpressure {
        retry_after_ms: u32,
    },
    Oversize {
        len: u64,
        max: u64,
    },
    Malformed {
        reason: String,
    },
    WrongCluster {
        expected: ClusterId,
        found: ClusterId,
    },
    UnsupportedVersion {
        version: u8,
    },
    /// Outcome unknown: the requested acks were not reached in time, or the leader lost its
    /// leadership (stepped down, or learnt of a newer term) before they were. The batch may
    /// or may not commit; never retried by the client (`ClientError::Indeterminate`).
    Timeout,
    ShuttingDown,
    /// The partition's log latched an IO failure (fatal for that log).
    StorageFailed {
        reason: String,
    },
    /// A valid request that cannot be carried out now (e.g. a membership change in progress).
    Rejected {
        reason: String,
    },
    Internal {
        reason: String,
    },
    /// The partition leader's disk is full: the append was not taken. Not fatal: reads go
    /// on and appends resume once space is freed; retry later.
    StorageFull {
        partition: PartitionId,
        reason: String,
    },
    /// An admin request (leadership transfer, membership change) on a connection without an
    /// admin identity, or an `Authenticate` whose token was refused (that connection is then
    /// closed). Nothing was changed; the reason says which identity the node accepts.
    Unauthorized {
        reason: String,
    },
}

/// A response to a client request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Response {
    Produce(ProduceResponse),
    Fetch(FetchResponse),
    Metadata(MetadataResponse),
    GroupStatus(GroupStatus),
    /// The connection is now an admin's (its token was accepted).
    Authenticated,
    /// The transfer has started (the target was told to campaign).
    TransferLeader {
        partition: PartitionId,
        to: NodeId,
    },
    /// The change was appended at `index`; it takes effect as soon as it is appended.
    ChangeMembership {
        partition: PartitionId,
        index: LogIndex,
    },
    Error(ErrorReply),
}

impl Request {
    pub fn kind(&self) -> FrameKind {
        match self {
            Request::Produce(_) => FrameKind::ProduceRequest,
            Request::Fetch(_) => FrameKind::FetchRequest,
            Request::Metadata { .. } => FrameKind::MetadataRequest,
            Request::GroupStatus { .. } => FrameKind::GroupStatusRequest,
            Request::TransferLeader { .. } => FrameKind::TransferLeaderRequest,
            Request::ChangeMembership { .. } => FrameKind::MembershipRequest,
            Request::Authenticate { .. } => FrameKind::AuthenticateRequest,
        }
    }

    /// Whether the request needs an admin identity: it changes who leads or who is a member.
    pub fn is_admin(&self) -> bool {
        matches!(self, Request::TransferLeader { .. } | Request::ChangeMembership { .. })
    }

    /// The partition the request is about, if it is about one.
    pub fn partition(&self) -> Option<PartitionId> {
        match self {
            Request::Produce(r) => Some(r.partition),
            Request::Fetch(r) => Some(r.partition),
            Request::Metadata { .. } | Request::Authenticate { .. } => None,
            Request::GroupStatus { partition }
            | Request::TransferLeader { partition, .. }
            | Request::ChangeMembership { partition, .. } => Some(*partition),
        }
    }

    pub fn encode(&self, request_id: RequestId) -> FrameBuf {
        let mut w = BodyWriter::new();
        match self {
            Request::Produce(r) => {
                w.put_u32(r.partition.0);
                w.put_u8(r.acks as u8);
                w.put_bytes(&r.batch);
            }
            Request::Fetch(r) => {
                w.put_u32(r.partition.0);
                w.put_u64(r.offset.0);
                w.put_u32(r.max_bytes);
                w.put_u32(r.wait_ms);
                w.put_u8(r.consistency as u8);
            }
            Request::Metadata { partitions } => {
                w.put_count(partitions.len());
                for partition in partitions {
                    w.put_u32(partition.0);
                }
            }
            Request::GroupStatus { partition } => w.put_u32(partition.0),
            Request::TransferLeader { partition, to } => {
                w.put_u32(partition.0);
                w.put_u32(to.0);
            }
            Request::ChangeMembership { partition, change, peer, client } => {
                w.put_u32(partition.0);
                let (tag, node) = match change {
                    MembershipChange::AddLearner(node) => (0, node),
                    MembershipChange::Promote(node) => (1, node),
                    MembershipChange::Remove(node) => (2, node),
                };
                w.put_u8(tag);
                w.put_u32(node.0);
                w.put_opt_addr(*peer);
                w.put_opt_addr(*client);
            }
            Request::Authenticate { credential } => w.put_bytes(&credential.token),
        }
        w.finish(self.kind(), request_id)
    }

    pub fn decode(frame: &Frame) -> Result<Request, ProtocolError> {
        let mut r = Reader::new(frame.body.clone());
        let request = match frame.kind {
            FrameKind::ProduceRequest => Request::Produce(ProduceRequest {
                partition: PartitionId(r.u32("produce partition")?),
                acks: decode_acks(r.u8("produce acks")?)?,
                batch: r.bytes("produce batch", BATCH_SIZE_MAX)?,
            }),
            FrameKind::FetchRequest => {
                let partition = PartitionId(r.u32("fetch partition")?);
                let offset = Offset(r.u64("fetch offset")?);
                let max_bytes = r.u32("fetch max bytes")?;
                if max_bytes as usize > FETCH_BYTES_MAX {
                    let (len, max) = (max_bytes.into(), FETCH_BYTES_MAX as u64);
                    return Err(ProtocolError::TooLong { what: "fetch max bytes", len, max });
                }
                let wait_ms = r.u32("fetch wait")?;
                let consistency = decode_consistency(r.u8("fetch consistency")?)?;
                Request::Fetch(FetchRequest { partition, offset, max_bytes, wait_ms, consistency })
            }
            FrameKind::MetadataRequest => {
                let count = r.count("metadata partitions", METADATA_PARTITIONS_MAX, 4)?;
                let mut partitions = Vec::with_capacity(count);
                for _ in 0..count {
                    partitions.push(PartitionId(r.u32("metadata partition")?));
                }
                Request::Metadata { partitions }
            }
            FrameKind::GroupStatusRequest => {
                Request::GroupStatus { partition: PartitionId(r.u32("status partition")?) }
            }
            FrameKind::TransferLeaderRequest => Request::TransferLeader {
                partition: PartitionId(r.u32("transfer partition")?),
                to: r.node("transfer target")?,
            },
            FrameKind::MembershipRequest => {
                let partition = PartitionId(r.u32("membership partition")?);
                let tag = r.u8("membership change")?;
                let node = r.node("membership node")?;
                let change = match tag {
                    0 => MembershipChange::AddLearner(node),
                    1 => MembershipChange::Promote(node),
                    2 => MembershipChange::Remove(node),
                    value => {
                        let value = value.into();
                        return Err(ProtocolError::BadValue { what: "membership change", value });
                    }
                };
                let peer = r.opt_addr("membership peer address")?;
                let client = r.opt_addr("membership client address")?;
                Request::ChangeMembership { partition, change, peer, client }
            }
            FrameKind::AuthenticateRequest => Request::Authenticate {
                credential: AdminCredential {
                    token: r.bytes("admin token", ADMIN_TOKEN_BYTES_MAX)?,
                },
            },
            kind => return Err(ProtocolError::WrongKind { expected: "client request", kind }),
        };
        r.finish()?;
        Ok(request)
    }
}

impl Response {
    pub fn kind(&self) -> FrameKind {
        match self {
            Response::Produce(_) => FrameKind::ProduceResponse,
            Response::Fetch(_) => FrameKind::FetchResponse,
            Response::Metadata(_) => FrameKind::MetadataResponse,
            Response::GroupStatus(_) => FrameKind::GroupStatusResponse,
            Response::Authenticated => FrameKind::AuthenticateResponse,
            Response::TransferLeader { .. } => FrameKind::TransferLeaderResponse,
            Response::ChangeMembership { .. } => FrameKind::MembershipResponse,
            Response::Error(_) => FrameKind::ErrorReply,
        }
    }

    pub fn encode(&self, request_id: RequestId) -> FrameBuf {
        let mut w = BodyWriter::new();
        match self {
            Response::Produce(r) => {
                w.put_u32(r.partition.0);
                w.put_u64(r.base_offset.0);
                w.put_u64(r.last_offset.0);
                w.put_u64(r.commit.0);
            }
            Response::Fetch(r) => {
                w.put_u32(r.partition.0);
                w.put_u64(r.log_start.0);
                w.put_u64(r.commit.0);
                w.put_count(r.batches.len());
                for batch in &r.batches {
                    w.put_bytes(batch);
                }
            }
            Response::Metadata(r) => encode_metadata(&mut w, r),
            Response::GroupStatus(r) => encode_status(&mut w, r),
            Response::Authenticated => {}
            Response::TransferLeader { partition, to } => {
                w.put_u32(partition.0);
                w.put_u32(to.0);
            }
            Response::ChangeMembership { partition, index } => {
                w.put_u32(partition.0);
                w.put_u64(index.0);
            }
            Response::Error(error) => error.encode_body(&mut w),
        }
        w.finish(self.kind(), request_id)
    }

    pub fn decode(frame: &Frame) -> Result<Response, ProtocolError> {
        let mut r = Reader::new(frame.body.clone());
        let response = match frame.kind {
            FrameKind::ProduceResponse => Response::Produce(ProduceResponse {
                partition: PartitionId(r.u32("produce partition")?),
                base_offset: Offset(r.u64("produce base offset")?),
                last_offset: Offset(r.u64("produce last offset")?),
                commit: Offset(r.u64("produce commit")?),
            }),
            FrameKind::FetchResponse => Response::Fetch(decode_fetch(&mut r)?),
            FrameKind::MetadataResponse => Response::Metadata(decode_metadata(&mut r)?),
            FrameKind::GroupStatusResponse => Response::GroupStatus(decode_status(&mut r)?),
            FrameKind::AuthenticateResponse => Response::Authenticated,
            FrameKind::TransferLeaderResponse => Response::TransferLeader {
                partition: PartitionId(r.u32("transfer partition")?),
                to: r.node("transfer target")?,
            },
            FrameKind::MembershipResponse => Response::ChangeMembership {
                partition: PartitionId(r.u32("membership partition")?),
                index: r.index("membership index")?,
            },
            FrameKind::ErrorReply => Response::Error(ErrorReply::decode_body(&mut r)?),
            kind => return Err(ProtocolError::WrongKind { expected: "client response", kind }),
        };
        r.finish()?;
        Ok(response)
    }
}

impl ErrorReply {
    pub fn code(&self) -> ErrorCode {
        match self {
            ErrorReply::NotLeader { .. } => ErrorCode::NotLeader,
            ErrorReply::UnknownPartition { .. } => ErrorCode::UnknownPartition,
            ErrorReply::OffsetOutOfRange { .. } => ErrorCode::OffsetOutOfRange,
            ErrorReply::Backpressure { .. } => ErrorCode::Backpressure,
            ErrorReply::Oversize { .. } => ErrorCode::Oversize,
            ErrorReply::Malformed { .. } => ErrorCode::Malformed,
            ErrorReply::WrongCluster { .. } => ErrorCode::WrongCluster,
            ErrorReply::UnsupportedVersion { .. } => ErrorCode::UnsupportedVersion,
            ErrorReply::Timeout => ErrorCode::Timeout,
            ErrorReply::ShuttingDown => ErrorCode::ShuttingDown,
            ErrorReply::StorageFailed { .. } => ErrorCode::StorageFailed,
            ErrorReply::Rejected { .. } => ErrorCode::Rejected,
            ErrorReply::Internal { .. } => ErrorCode::Internal,
            ErrorReply::StorageFull { .. } => ErrorCode::StorageFull,
            ErrorReply::Unauthorized { .. } => ErrorCode::Unauthorized,
        }
    }

    /// The reply sent before closing a connection whose input failed to decode.
    pub fn for_frame_error(error: &crate::frame::FrameError) -> ErrorReply {
        use crate::frame::FrameError;
        match *error {
            FrameError::Oversize { len, max } => ErrorReply::Oversize { len, max },
            FrameError::UnsupportedVersion { version } => {
                ErrorReply::UnsupportedVersion { version }
            }
            _ => ErrorReply::Malformed { reason: error.to_string() },
        }
    }

    /// Encodes the reply as a whole frame.
    pub fn encode(&self, request_id: RequestId) -> FrameBuf {
        let mut w = BodyWriter::new();
        self.encode_body(&mut w);
        w.finish(FrameKind::ErrorReply, request_id)
    }

    fn encode_body(&self, w: &mut BodyWriter) {
        w.put_u16(self.code() as u16);
        match self {
            ErrorReply::NotLeader { partition, leader, address } => {
                w.put_u32(partition.0);
                w.put_opt_node(*leader);
                w.put_opt_addr(*address);
            }
            ErrorReply::UnknownPartition { partition } => w.put_u32(partition.0),
            ErrorReply::OffsetOutOfRange { partition, requested, log_start, log_end } => {
                w.put_u32(partition.0);
                w.put_u64(requested.0);
                w.put_u64(log_start.0);
                w.put_u64(log_end.0);
            }
            ErrorReply::Backpressure { retry_after_ms } => w.put_u32(*retry_after_ms),
            ErrorReply::Oversize { len, max } => {
                w.put_u64(*len);
                w.put_u64(*max);
            }
            ErrorReply::WrongCluster { expected, found } => {
                w.put_u64(expected.0);
                w.put_u64(found.0);
            }
            ErrorReply::UnsupportedVersion { version } => w.put_u8(*version),
            ErrorReply::Timeout | ErrorReply::ShuttingDown => {}
            ErrorReply::Malformed { reason }
            | ErrorReply::StorageFailed { reason }
            | ErrorReply::Rejected { reason }
            | ErrorReply::Internal { reason }
            | ErrorReply::Unauthorized { reason } => w.put_string(reason),
            ErrorReply::StorageFull { partition, reason } => {
                w.put_u32(partition.0);
                w.put_string(reason);
            }
        }
    }

    fn decode_body(r: &mut Reader) -> Result<ErrorReply, ProtocolError> {
        let code = r.u16("error code")?;
        Ok(match code {
            1 => ErrorReply::NotLeader {
                partition: PartitionId(r.u32("error partition")?),
                leader: r.opt_node("error leader hint")?,
                address: r.opt_addr("error leader address")?,
            },
            2 => ErrorReply::UnknownPartition { partition: PartitionId(r.u32("error partition")?) },
            3 => ErrorReply::OffsetOutOfRange {
                partition: PartitionId(r.u32("error partition")?),
                requested: Offset(r.u64("error requested offset")?),
                log_start: Offset(r.u64("error log start")?),
                log_end: Offset(r.u64("error log end")?),
            },
            4 => ErrorReply::Backpressure { retry_after_ms: r.u32("error retry after")? },
            5 => ErrorReply::Oversize { len: r.u64("error len")?, max: r.u64("error max")? },
            6 => ErrorReply::Malformed { reason: r.string("error reason")? },
            7 => ErrorReply::WrongCluster {
                expected: ClusterId(r.u64("error expected cluster")?),
                found: ClusterId(r.u64("error found cluster")?),
            },
            8 => ErrorReply::UnsupportedVersion { version: r.u8("error version")? },
            9 => ErrorReply::Timeout,
            10 => ErrorReply::ShuttingDown,
            11 => ErrorReply::StorageFailed { reason: r.string("error reason")? },
            12 => ErrorReply::Rejected { reason: r.string("error reason")? },
            13 => ErrorReply::Internal { reason: r.string("error reason")? },
            14 => ErrorReply::StorageFull {
                partition: PartitionId(r.u32("error partition")?),
                reason: r.string("error reason")?,
            },
            15 => ErrorReply::Unauthorized { reason: r.string("error reason")? },
            value => {
                return Err(ProtocolError::BadValue { what: "error code", value: value.into() })
            }
        })
    }
}

fn decode_acks(value: u8) -> Result<Acks, ProtocolError> {
    match value {
        0 => Ok(Acks::None),
        1 => Ok(Acks::Leader),
        2 => Ok(Acks::Quorum),
        value => Err(ProtocolError::BadValue { what: "acks", value: value.into() }),
    }
}

fn decode_consistency(value: u8) -> Result<Consistency, ProtocolError> {
    match value {
        0 => Ok(Consistency::LeaderLinearizable),
        1 => Ok(Consistency::ReplicaCommitted),
        value => Err(ProtocolError::BadValue { what: "consistency", value: value.into() }),
    }
}

fn decode_fetch(r: &mut Reader) -> Result<FetchResponse, ProtocolError> {
    let partition = PartitionId(r.u32("fetch partition")?);
    let log_start = Offset(r.u64("fetch log start")?);
    let commit = Offset(r.u64("fetch commit")?);
    let count = r.count("fetch batches", FETCH_BATCHES_MAX, 4)?;
    let mut batches = Vec::with_capacity(count);
    let mut total = 0usize;
    for _ in 0..count {
        let batch = r.bytes("fetch batch", BATCH_SIZE_MAX)?;
        total += batch.len();
        if total > FETCH_BYTES_MAX + BATCH_SIZE_MAX {
            let (len, max) = (total as u64, (FETCH_BYTES_MAX + BATCH_SIZE_MAX) as u64);
            return Err(ProtocolError::TooLong { what: "fetch batches", len, max });
        }
        batches.push(batch);
    }
    Ok(FetchResponse { partition, log_start, commit, batches })
}

fn encode_metadata(w: &mut BodyWriter, r: &MetadataResponse) {
    w.put_u64(r.cluster.0);
    w.put_u16(r.shards);
    w.put_count(r.partitions.len());
    for p in &r.partitions {
        w.put_u32(p.partition.0);
        w.put_u16(p.shard.0);
        w.put_opt_node(p.leader);
        w.put_u64(p.term.0);
        w.put_opt_addr(p.address);
    }
}

fn decode_metadata(r: &mut Reader) -> Result<MetadataResponse, ProtocolError> {
    let cluster = ClusterId(r.u64("metadata cluster")?);
    let shards = r.u16("metadata shards")?;
    // Smallest entry: partition 4 + shard 2 + no leader 1 + term 8 + no address 1.
    let count = r.count("metadata partitions", METADATA_PARTITIONS_MAX, 16)?;
    let mut partitions = Vec::with_capacity(count);
    for _ in 0..count {
        partitions.push(PartitionMetadata {
            partition: PartitionId(r.u32("metadata partition")?),
            shard: ShardId(r.u16("metadata shard")?),
            leader: r.opt_node("metadata leader")?,
            term: r.term("metadata term")?,
            address: r.opt_addr("metadata address")?,
        });
    }
    Ok(MetadataResponse { cluster, shards, partitions })
}

fn encode_role(role: Role) -> u8 {
    match role {
        Role::Follower => 0,
        Role::PreCandidate => 1,
        Role::Candidate => 2,
        Role::Leader => 3,
        Role::Learner => 4,
    }
}

fn decode_role(value: u8) -> Result<Role, ProtocolError> {
    Ok(match value {
        0 => Role::Follower,
        1 => Role::PreCandidate,
        2 => Role::Candidate,
        3 => Role::Leader,
        4 => Role::Learner,
        value => return Err(ProtocolError::BadValue { what: "role", value: value.into() }),
    })
}

fn encode_status(w: &mut BodyWriter, s: &GroupStatus) {
    w.put_u32(s.partition.0);
    w.put_u32(s.node.0);
    w.put_u8(encode_role(s.role));
    w.put_u64(s.term.0);
    w.put_opt_node(s.leader);
    w.put_u64(s.commit.0);
    w.put_u64(s.durable.0);
    w.put_u64(s.last_index.0);
    w.put_u64(s.commit_offset.0);
    w.put_bool(s.damaged);
    w.put_count(s.followers.len());
    for f in &s.followers {
        w.put_u32(f.node.0);
        w.put_u64(f.durable.0);
        w.put_u64(f.lag);
        w.put_bool(f.learner);
        w.put_bool(f.damaged);
        w.put_bool(f.stuck);
    }
}

fn decode_status(r: &mut Reader) -> Result<GroupStatus, ProtocolError> {
    let partition = PartitionId(r.u32("status partition")?);
    let node = r.node("status node")?;
    let role = decode_role(r.u8("status role")?)?;
    let term = r.term("status term")?;
    let leader = r.opt_node("status leader")?;
    let commit = r.index("status commit")?;
    let durable = r.index("status durable")?;
    let last_index = r.index("status last index")?;
    let commit_offset = Offset(r.u64("status commit offset")?);
    let damaged = r.bool("status damaged")?;
    let count = r.count("status followers", STATUS_FOLLOWERS_MAX, 23)?;
    let mut followers = Vec::with_capacity(count);
    for _ in 0..count {
        followers.push(FollowerStatus {
            node: r.node("follower node")?,
            durable: r.index("follower durable")?,
            lag: r.u64("follower lag")?,
            learner: r.bool("follower learner")?,
            damaged: r.bool("follower damaged")?,
            stuck: r.bool("follower stuck")?,
        });
    }
    Ok(GroupStatus {
        partition,
        node,
        role,
        term,
        leader,
        commit,
        durable,
        last_index,
        commit_offset,
        damaged,
        followers,
    })
}
