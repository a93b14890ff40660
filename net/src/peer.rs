//! The peer protocol: the handshake between two nodes' shards, and Raft messages.
//!
//! A shard of one node connects to the same shard of another (partition `p` lives on shard
//! `p % shards` everywhere, design.md §5) and opens with [`Handshake`]; the acceptor answers
//! [`HandshakeReply`] and refuses a peer of another cluster, another protocol version or
//! another shard with a reason. After that the connection carries [`PeerMessage`]s one way:
//! Raft messages of one partition, or heartbeats of many partitions coalesced into one frame.
//! Byte layouts: docs/format.md#peer-protocol.
//!
//! Entries travel as the raw on-disk batch bytes: the decoded `Entry::payload` is a zero-copy
//! slice of the received frame, written by the follower as is. The frame checksum covers the
//! bytes in transit; the batch's own checksums are verified on receipt by a [`BatchCheck`]
//! supplied by the caller (the replicator plugs in the engine's batch verification), which
//! keeps this crate independent of `ringlog-engine`.
//!
//! Invariants: counts and lengths are bounded by `limits` and by the bytes present before any
//! allocation; the entries of a decoded `Append` have contiguous indexes starting at
//! `prev_index + 1`, terms that never decrease and never exceed the message term, and every
//! entry passed the `BatchCheck`.

use std::fmt;

use bytes::Bytes;
use ringlog_raft::{AppendResult, Entry, EntryKind, LogIndex, Membership, Message, NodeId, Term};

use crate::frame::{BodyWriter, Frame, FrameBuf, FrameKind};
use crate::ids::{ClusterId, PartitionId, RequestId, ShardId};
use crate::limits::{
    APPEND_PAYLOAD_BYTES_MAX, BATCH_SIZE_MAX, ENTRIES_PER_APPEND_MAX, GROUP_MEMBERS_MAX,
    HEARTBEATS_PER_FRAME_MAX,
};
use crate::wire::{BodyWriterExt, ProtocolError, Reader};

/// The peer protocol version this build speaks.
pub const PEER_PROTOCOL_VERSION: u16 = 1;

/// Verifies that an entry's payload is an intact record batch before it reaches the Raft core
/// and the disk — e.g. the engine's `decode_batch` (checksums, length) plus a comparison of the
/// batch header's term and index with the entry's. Called for every entry of every `Append`,
/// whatever its kind (the replicator stores no-op and membership entries as control batches).
pub trait BatchCheck {
    /// `Err(reason)` rejects the whole message and closes the connection.
    fn check(&self, entry: &Entry) -> Result<(), String>;
}

impl<F> BatchCheck for F
where
    F: Fn(&Entry) -> Result<(), String>,
{
    fn check(&self, entry: &Entry) -> Result<(), String> {
        self(entry)
    }
}

impl fmt::Debug for dyn BatchCheck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BatchCheck")
    }
}

/// A `BatchCheck` that accepts every payload: integrity in transit rests on the frame body
/// checksum alone. For tools and tests of the transport; a replicator must plug in the
/// engine's batch verification.
#[derive(Clone, Copy, Debug, Default)]
pub struct FrameChecksumOnly;

impl BatchCheck for FrameChecksumOnly {
    fn check(&self, _entry: &Entry) -> Result<(), String> {
        Ok(())
    }
}

/// The first frame on a peer connection, from the connecting side.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Handshake {
    pub cluster: ClusterId,
    pub node: NodeId,
    /// The connecting shard; the acceptor's shard must be the same.
    pub shard: ShardId,
    pub protocol_version: u16,
    /// Shards and partitions of the connecting node: every node of a cluster has the same
    /// (partition `p` lives on shard `p % shards` everywhere); the acceptor refuses otherwise.
    pub layout: ShardLayout,
    /// The connecting shard holds no Raft history: every partition it owns has hard state
    /// term 0 and an empty log (see [`ShardLayout`] and the node's wiped-disk detection).
    pub pristine: bool,
}

/// Shards and partitions of a node, compared in the handshake. `partitions == 0` means "not
/// checked" (tools and tests of the transport alone).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ShardLayout {
    pub shards: u16,
    pub partitions: u32,
}

/// Why an acceptor refused a handshake.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
#[non_exhaustive]
pub enum RefuseReason {
    WrongCluster = 1,
    UnsupportedVersion = 2,
    WrongShard = 3,
    /// The connecting node is this node.
    SelfConnection = 4,
    /// The listener serves its connection limit.
    TooManyConnections = 5,
    /// The two nodes have different shard or partition counts.
    WrongLayout = 6,
    /// The connector's certificate does not name the node its handshake claims.
    WrongCertificate = 7,
}

impl fmt::Display for RefuseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = match self {
            RefuseReason::WrongCluster => "wrong cluster id",
            RefuseReason::UnsupportedVersion => "unsupported protocol version",
            RefuseReason::WrongShard => "wrong shard",
            RefuseReason::SelfConnection => "connection to self",
            RefuseReason::TooManyConnections => "too many connections",
            RefuseReason::WrongLayout => "different shard or partition count",
            RefuseReason::WrongCertificate => "certificate of another node",
        };
        f.write_str(text)
    }
}

/// The acceptor's answer to a [`Handshake`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HandshakeReply {
    /// `pristine`: the acceptor's shard holds no Raft history (see [`Handshake::pristine`]).
    Accepted {
        cluster: ClusterId,
        node: NodeId,
        shard: ShardId,
        pristine: bool,
    },
    Refused {
        reason: RefuseReason,
        detail: String,
    },
}

/// One partition's heartbeat inside a coalesced heartbeat frame (`Message::Heartbeat`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PartitionHeartbeat {
    pub partition: PartitionId,
    pub term: Term,
    pub commit: LogIndex,
    pub ctx: u64,
}

/// One partition's heartbeat response (`Message::HeartbeatResponse`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PartitionHeartbeatResponse {
    pub partition: PartitionId,
    pub term: Term,
    pub ctx: u64,
}

/// A message on an established peer connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PeerMessage {
    /// Any Raft message of one partition's group.
    Raft {
        partition: PartitionId,
        message: Message,
    },
    /// Heartbeats of many partitions between the same two shards, in one frame.
    Heartbeats(Vec<PartitionHeartbeat>),
    HeartbeatResponses(Vec<PartitionHeartbeatResponse>),
}

impl PartitionHeartbeat {
    pub fn into_message(self) -> (PartitionId, Message) {
        let message = Message::Heartbeat { term: self.term, commit: self.commit, ctx: self.ctx };
        (self.partition, message)
    }
}

impl PartitionHeartbeatResponse {
    pub fn into_message(self) -> (PartitionId, Message) {
        (self.partition, Message::HeartbeatResponse { term: self.term, ctx: self.ctx })
    }
}

impl PeerMessage {
    /// The per-partition Raft messages this carries (a coalesced frame expands to many).
    pub fn into_raft_messages(self) -> Vec<(PartitionId, Message)> {
        match self {
            PeerMessage::Raft { partition, message } => vec![(partition, message)],
            PeerMessage::Heartbeats(list) => list.into_iter().map(|h| h.into_message()).collect(),
            PeerMessage::HeartbeatResponses(list) => {
                list.into_iter().map(|h| h.into_message()).collect()
            }
        }
    }
}

impl Handshake {
    pub fn encode(&self) -> FrameBuf {
        let mut w = BodyWriter::new();
        w.put_u64(self.cluster.0);
        w.put_u32(self.node.0);
        w.put_u16(self.shard.0);
        w.put_u16(self.protocol_version);
        w.put_u16(self.layout.shards);
        w.put_u32(self.layout.partitions);
        w.put_bool(self.pristine);
        w.finish(FrameKind::PeerHandshake, RequestId(0))
    }

    pub fn decode(frame: &Frame) -> Result<Handshake, ProtocolError> {
        if frame.kind != FrameKind::PeerHandshake {
            return Err(ProtocolError::WrongKind { expected: "peer handshake", kind: frame.kind });
        }
        let mut r = Reader::new(frame.body.clone());
        let handshake = Handshake {
            cluster: ClusterId(r.u64("handshake cluster")?),
            node: r.node("handshake node")?,
            shard: ShardId(r.u16("handshake shard")?),
            protocol_version: r.u16("handshake version")?,
            layout: ShardLayout {
                shards: r.u16("handshake shards")?,
                partitions: r.u32("handshake partitions")?,
            },
            pristine: r.bool("handshake pristine")?,
        };
        r.finish()?;
        Ok(handshake)
    }
}

impl HandshakeReply {
    pub fn encode(&self) -> FrameBuf {
        let mut w = BodyWriter::new();
        match self {
            HandshakeReply::Accepted { cluster, node, shard, pristine } => {
                w.put_u64(cluster.0);
                w.put_u32(node.0);
                w.put_u16(shard.0);
                w.put_bool(*pristine);
                w.finish(FrameKind::PeerHandshakeAccepted, RequestId(0))
            }
            HandshakeReply::Refused { reason, detail } => {
                w.put_u8(*reason as u8);
                w.put_string(detail);
                w.finish(FrameKind::PeerHandshakeRefused, RequestId(0))
            }
        }
    }

    pub fn decode(frame: &Frame) -> Result<HandshakeReply, ProtocolError> {
        let mut r = Reader::new(frame.body.clone());
        let reply = match frame.kind {
            FrameKind::PeerHandshakeAccepted => HandshakeReply::Accepted {
                cluster: ClusterId(r.u64("handshake cluster")?),
                node: r.node("handshake node")?,
                shard: ShardId(r.u16("handshake shard")?),
                pristine: r.bool("handshake pristine")?,
            },
            FrameKind::PeerHandshakeRefused => {
                let reason = match r.u8("refuse reason")? {
                    1 => RefuseReason::WrongCluster,
                    2 => RefuseReason::UnsupportedVersion,
                    3 => RefuseReason::WrongShard,
                    4 => RefuseReason::SelfConnection,
                    5 => RefuseReason::TooManyConnections,
                    6 => RefuseReason::WrongLayout,
                    7 => RefuseReason::WrongCertificate,
                    value => {
                        let value = value.into();
                        return Err(ProtocolError::BadValue { what: "refuse reason", value });
                    }
                };
                HandshakeReply::Refused { reason, detail: r.string("refuse detail")? }
            }
            kind => return Err(ProtocolError::WrongKind { expected: "handshake reply", kind }),
        };
        r.finish()?;
        Ok(reply)
    }
}

// Raft message tags (docs/format.md#peer-protocol).
const TAG_PRE_VOTE: u8 = 1;
const TAG_PRE_VOTE_RESPONSE: u8 = 2;
const TAG_VOTE: u8 = 3;
const TAG_VOTE_RESPONSE: u8 = 4;
const TAG_APPEND: u8 = 5;
const TAG_APPEND_RESPONSE: u8 = 6;
const TAG_HEARTBEAT: u8 = 7;
const TAG_HEARTBEAT_RESPONSE: u8 = 8;
const TAG_TIMEOUT_NOW: u8 = 9;
const TAG_INSTALL_LOG_START: u8 = 10;
const TAG_TERM_QUERY: u8 = 11;
const TAG_TERM_QUERY_RESPONSE: u8 = 12;

const ENTRY_NORMAL: u8 = 0;
const ENTRY_NOOP: u8 = 1;
const ENTRY_MEMBERSHIP: u8 = 2;

/// Smallest encoded entry: term 8 + index 8 + kind 1 + payload length 4.
const ENTRY_WIRE_SIZE_MIN: usize = 21;

impl PeerMessage {
    pub fn kind(&self) -> FrameKind {
        match self {
            PeerMessage::Raft { .. } => FrameKind::PeerRaft,
            PeerMessage::Heartbeats(_) => FrameKind::PeerHeartbeats,
            PeerMessage::HeartbeatResponses(_) => FrameKind::PeerHeartbeatResponses,
        }
    }

    /// Encodes the message as one frame; entry payloads are carried by reference.
    pub fn encode(&self) -> FrameBuf {
        let mut w = BodyWriter::new();
        match self {
            PeerMessage::Raft { partition, message } => {
                w.put_u32(partition.0);
                encode_raft(&mut w, message);
            }
            PeerMessage::Heartbeats(list) => {
                w.put_count(list.len());
                for h in list {
                    w.put_u32(h.partition.0);
                    w.put_u64(h.term.0);
                    w.put_u64(h.commit.0);
                    w.put_u64(h.ctx);
                }
            }
            PeerMessage::HeartbeatResponses(list) => {
                w.put_count(list.len());
                for h in list {
                    w.put_u32(h.partition.0);
                    w.put_u64(h.term.0);
                    w.put_u64(h.ctx);
                }
            }
        }
        w.finish(self.kind(), RequestId(0))
    }

    /// Decodes a peer message and runs `check` on every entry it carries.
    pub fn decode(frame: &Frame, check: &dyn BatchCheck) -> Result<PeerMessage, ProtocolError> {
        let mut r = Reader::new(frame.body.clone());
        let message = match frame.kind {
            FrameKind::PeerRaft => {
                let partition = PartitionId(r.u32("raft partition")?);
                PeerMessage::Raft { partition, message: decode_raft(&mut r, check)? }
            }
            FrameKind::PeerHeartbeats => {
                let count = r.count("heartbeats", HEARTBEATS_PER_FRAME_MAX, 28)?;
                let mut list = Vec::with_capacity(count);
                for _ in 0..count {
                    list.push(PartitionHeartbeat {
                        partition: PartitionId(r.u32("heartbeat partition")?),
                        term: r.term("heartbeat term")?,
                        commit: r.index("heartbeat commit")?,
                        ctx: r.u64("heartbeat ctx")?,
                    });
                }
                PeerMessage::Heartbeats(list)
            }
            FrameKind::PeerHeartbeatResponses => {
                let count = r.count("heartbeat responses", HEARTBEATS_PER_FRAME_MAX, 20)?;
                let mut list = Vec::with_capacity(count);
                for _ in 0..count {
                    list.push(PartitionHeartbeatResponse {
                        partition: PartitionId(r.u32("heartbeat partition")?),
                        term: r.term("heartbeat term")?,
                        ctx: r.u64("heartbeat ctx")?,
                    });
                }
                PeerMessage::HeartbeatResponses(list)
            }
            kind => return Err(ProtocolError::WrongKind { expected: "peer message", kind }),
        };
        r.finish()?;
        Ok(message)
    }
}

fn encode_raft(w: &mut BodyWriter, message: &Message) {
    match message {
        Message::PreVote { term, last_index, last_term } => {
            w.put_u8(TAG_PRE_VOTE);
            w.put_u64(term.0);
            w.put_u64(last_index.0);
            w.put_u64(last_term.0);
        }
        Message::PreVoteResponse { term, granted } => {
            w.put_u8(TAG_PRE_VOTE_RESPONSE);
            w.put_u64(term.0);
            w.put_bool(*granted);
        }
        Message::Vote { term, last_index, last_term, transfer } => {
            w.put_u8(TAG_VOTE);
            w.put_u64(term.0);
            w.put_u64(last_index.0);
            w.put_u64(last_term.0);
            w.put_bool(*transfer);
        }
        Message::VoteResponse { term, granted } => {
            w.put_u8(TAG_VOTE_RESPONSE);
            w.put_u64(term.0);
            w.put_bool(*granted);
        }
        Message::Append { term, prev_index, prev_term, commit, entries } => {
            w.put_u8(TAG_APPEND);
            w.put_u64(term.0);
            w.put_u64(prev_index.0);
            w.put_u64(prev_term.0);
            w.put_u64(commit.0);
            w.put_count(entries.len());
            for entry in entries {
                encode_entry(w, entry);
            }
        }
        Message::AppendResponse { term, result } => {
            w.put_u8(TAG_APPEND_RESPONSE);
            w.put_u64(term.0);
            match result {
                AppendResult::Accepted { durable, damaged } => {
                    w.put_u8(0);
                    w.put_u64(durable.0);
                    w.put_bool(*damaged);
                }
                AppendResult::Rejected { rejected, hint_index, hint_term } => {
                    w.put_u8(1);
                    w.put_u64(rejected.0);
                    w.put_u64(hint_index.0);
                    w.put_u64(hint_term.0);
                }
            }
        }
        Message::Heartbeat { term, commit, ctx } => {
            w.put_u8(TAG_HEARTBEAT);
            w.put_u64(term.0);
            w.put_u64(commit.0);
            w.put_u64(*ctx);
        }
        Message::HeartbeatResponse { term, ctx } => {
            w.put_u8(TAG_HEARTBEAT_RESPONSE);
            w.put_u64(term.0);
            w.put_u64(*ctx);
        }
        Message::TimeoutNow { term } => {
            w.put_u8(TAG_TIMEOUT_NOW);
            w.put_u64(term.0);
        }
        Message::InstallLogStart { term, start, prev_term, commit, membership } => {
            w.put_u8(TAG_INSTALL_LOG_START);
            w.put_u64(term.0);
            w.put_u64(start.0);
            w.put_u64(prev_term.0);
            w.put_u64(commit.0);
            encode_membership(w, membership);
        }
        Message::TermQuery { term } => {
            w.put_u8(TAG_TERM_QUERY);
            w.put_u64(term.0);
        }
        Message::TermQueryResponse { term } => {
            w.put_u8(TAG_TERM_QUERY_RESPONSE);
            w.put_u64(term.0);
        }
    }
}

fn encode_entry(w: &mut BodyWriter, entry: &Entry) {
    w.put_u64(entry.term.0);
    w.put_u64(entry.index.0);
    match &entry.kind {
        EntryKind::Normal => w.put_u8(ENTRY_NORMAL),
        EntryKind::Noop => w.put_u8(ENTRY_NOOP),
        EntryKind::Membership(membership) => {
            w.put_u8(ENTRY_MEMBERSHIP);
            encode_membership(w, membership);
        }
    }
    w.put_bytes(&entry.payload);
}

fn encode_membership(w: &mut BodyWriter, membership: &Membership) {
    for list in [&membership.voters, &membership.learners] {
        w.put_u16(u16::try_from(list.len()).expect("group of over 65535 members"));
        for node in list {
            w.put_u32(node.0);
        }
    }
}

fn decode_membership(r: &mut Reader) -> Result<Membership, ProtocolError> {
    let voters = decode_members(r, "membership voters")?;
    let learners = decode_members(r, "membership learners")?;
    Ok(Membership { voters, learners })
}

fn decode_raft(r: &mut Reader, check: &dyn BatchCheck) -> Result<Message, ProtocolError> {
    let tag = r.u8("raft message tag")?;
    let term = r.term("raft term")?;
    Ok(match tag {
        TAG_PRE_VOTE => Message::PreVote {
            term,
            last_index: r.index("pre-vote last index")?,
            last_term: r.term("pre-vote last term")?,
        },
        TAG_PRE_VOTE_RESPONSE => {
            Message::PreVoteResponse { term, granted: r.bool("pre-vote granted")? }
        }
        TAG_VOTE => Message::Vote {
            term,
            last_index: r.index("vote last index")?,
            last_term: r.term("vote last term")?,
            transfer: r.bool("vote transfer")?,
        },
        TAG_VOTE_RESPONSE => Message::VoteResponse { term, granted: r.bool("vote granted")? },
        TAG_APPEND => decode_append(r, term, check)?,
        TAG_APPEND_RESPONSE => {
            let result = match r.u8("append result")? {
                0 => AppendResult::Accepted {
                    durable: r.index("append durable")?,
                    damaged: r.bool("append damaged")?,
                },
                1 => AppendResult::Rejected {
                    rejected: r.index("append rejected")?,
                    hint_index: r.index("append hint index")?,
                    hint_term: r.term("append hint term")?,
                },
                value => {
                    return Err(ProtocolError::BadValue {
                        what: "append result",
                        value: value.into(),
                    })
                }
            };
            Message::AppendResponse { term, result }
        }
        TAG_HEARTBEAT => Message::Heartbeat {
            term,
            commit: r.index("heartbeat commit")?,
            ctx: r.u64("heartbeat ctx")?,
        },
        TAG_HEARTBEAT_RESPONSE => Message::HeartbeatResponse { term, ctx: r.u64("heartbeat ctx")? },
        TAG_TIMEOUT_NOW => Message::TimeoutNow { term },
        TAG_INSTALL_LOG_START => Message::InstallLogStart {
            term,
            start: r.index("log start")?,
            prev_term: r.term("log start prev term")?,
            commit: r.index("log start commit")?,
            membership: decode_membership(r)?,
        },
        TAG_TERM_QUERY => Message::TermQuery { term },
        TAG_TERM_QUERY_RESPONSE => Message::TermQueryResponse { term },
        value => {
            return Err(ProtocolError::BadValue { what: "raft message tag", value: value.into() })
        }
    })
}

fn decode_append(
    r: &mut Reader,
    term: Term,
    check: &dyn BatchCheck,
) -> Result<Message, ProtocolError> {
    let prev_index = r.index("append prev index")?;
    let prev_term = r.term("append prev term")?;
    let commit = r.index("append commit")?;
    let count = r.count("append entries", ENTRIES_PER_APPEND_MAX, ENTRY_WIRE_SIZE_MIN)?;
    let mut entries = Vec::with_capacity(count);
    let mut payload_total = 0usize;
    let mut previous_term = prev_term;
    for position in 0..count as u64 {
        let entry = decode_entry(r)?;
        let expected = prev_index.0.checked_add(position + 1);
        if Some(entry.index.0) != expected {
            return Err(ProtocolError::BadValue { what: "entry index", value: entry.index.0 });
        }
        if entry.term < previous_term || entry.term > term {
            return Err(ProtocolError::BadValue { what: "entry term", value: entry.term.0 });
        }
        previous_term = entry.term;
        payload_total += entry.payload.len();
        if payload_total > APPEND_PAYLOAD_BYTES_MAX {
            let (len, max) = (payload_total as u64, APPEND_PAYLOAD_BYTES_MAX as u64);
            return Err(ProtocolError::TooLong { what: "append payload", len, max });
        }
        check.check(&entry).map_err(|reason| ProtocolError::BadBatch {
            term: entry.term,
            index: entry.index,
            reason,
        })?;
        entries.push(entry);
    }
    Ok(Message::Append { term, prev_index, prev_term, commit, entries })
}

fn decode_entry(r: &mut Reader) -> Result<Entry, ProtocolError> {
    let term = r.term("entry term")?;
    let index = r.index("entry index")?;
    let kind = match r.u8("entry kind")? {
        ENTRY_NORMAL => EntryKind::Normal,
        ENTRY_NOOP => EntryKind::Noop,
        ENTRY_MEMBERSHIP => EntryKind::Membership(decode_membership(r)?),
        value => return Err(ProtocolError::BadValue { what: "entry kind", value: value.into() }),
    };
    let payload: Bytes = r.bytes("entry payload", BATCH_SIZE_MAX)?;
    Ok(Entry { term, index, kind, payload })
}

fn decode_members(r: &mut Reader, what: &'static str) -> Result<Vec<NodeId>, ProtocolError> {
    let count = r.u16(what)? as usize;
    if count > GROUP_MEMBERS_MAX {
        let (count, max) = (count as u64, GROUP_MEMBERS_MAX as u64);
        return Err(ProtocolError::TooMany { what, count, max });
    }
    if count * 4 > r.remaining() {
        return Err(ProtocolError::Truncated { what });
    }
    (0..count).map(|_| r.node(what)).collect()
}
