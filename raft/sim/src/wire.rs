//! The simulated wire speaks net's production peer codec: every message a simulated node sends
//! is encoded with `PeerMessage::encode` into the bytes of one frame, the simulated network
//! carries those bytes, and the receiver decodes them with net's frame decoder (`decode_frame`)
//! and `PeerMessage::decode`. A codec bug is therefore a simulator failure.
//!
//! Mapping onto `PeerMessage`, as the node's peer links do (node/src/node/peers.rs): a
//! `Heartbeat` travels as a coalesced `PeerMessage::Heartbeats` frame of one partition, a
//! `HeartbeatResponse` as `PeerMessage::HeartbeatResponses` of one, every other message as
//! `PeerMessage::Raft`. The simulated cluster is one Raft group: partition [`SIM_PARTITION`].
//!
//! What the receiver checks (all of it net's production code): the frame header (magic,
//! version, header checksum, flags, kind, body length within `FRAME_BODY_SIZE_MAX`), the
//! body checksum, and everything `PeerMessage::decode` checks (bounded counts and lengths,
//! entries with contiguous indexes from `prev_index + 1`, terms that never decrease and never
//! exceed the message term, the payload total bound). What it does not check: the batch
//! check. The simulator's entry payloads are short client tags (`s<run>-p<n>`) and empty
//! no-op and membership payloads, not record batches, so decoding uses
//! [`FrameChecksumOnly`]; the engine's batch verification (`decode_batch` plus the comparison
//! of the batch header with the entry) is not run here.
//!
//! On top of the production checks, the simulator requires that the frame carry exactly one
//! message of [`SIM_PARTITION`] and that it equal the message the sender encoded (the
//! round-trip check: a codec that loses or changes a field fails even where Raft would
//! tolerate it).
//!
//! Invariants: encoding never fails for a message the core emits; decoding never panics on
//! any bytes (net's decoders are fuzzed for that) and returns a [`WireError`] instead.

use std::fmt;

use bytes::{Bytes, BytesMut};
use ringlog_net::frame::{decode_frame, FrameError};
use ringlog_net::limits::FRAME_BODY_SIZE_MAX;
use ringlog_net::{
    FrameChecksumOnly, PartitionHeartbeat, PartitionHeartbeatResponse, PartitionId, PeerMessage,
    ProtocolError,
};
use ringlog_raft::message::Message;

/// The partition id of the simulated cluster's one Raft group on the wire.
pub const SIM_PARTITION: PartitionId = PartitionId(0);

/// Bytes the encoder's arena grows by when it runs out: frames are cut from it, so most sends
/// allocate nothing (a frame of the simulator is well under 1 KiB).
const ARENA_CHUNK_BYTES: usize = 64 * 1024;

/// Encodes messages into frame bytes, reusing one buffer for the copies it makes.
#[derive(Debug, Default)]
pub struct WireEncoder {
    arena: BytesMut,
}

impl WireEncoder {
    pub fn new() -> WireEncoder {
        WireEncoder { arena: BytesMut::with_capacity(ARENA_CHUNK_BYTES) }
    }

    /// The frame `message` travels in, as one contiguous buffer; returns the message back
    /// (it is kept as the round-trip reference).
    pub fn encode(&mut self, message: Message) -> (Bytes, Message) {
        let (frame, message) = match message {
            Message::Heartbeat { term, commit, ctx } => {
                let beat = PartitionHeartbeat { partition: SIM_PARTITION, term, commit, ctx };
                (PeerMessage::Heartbeats(vec![beat]).encode(), message)
            }
            Message::HeartbeatResponse { term, ctx } => {
                let beat = PartitionHeartbeatResponse { partition: SIM_PARTITION, term, ctx };
                (PeerMessage::HeartbeatResponses(vec![beat]).encode(), message)
            }
            message => {
                let peer = PeerMessage::Raft { partition: SIM_PARTITION, message };
                let frame = peer.encode();
                let PeerMessage::Raft { message, .. } = peer else { unreachable!("built above") };
                (frame, message)
            }
        };
        if self.arena.capacity() < frame.len() {
            self.arena.reserve(frame.len().max(ARENA_CHUNK_BYTES));
        }
        for chunk in frame.chunks() {
            self.arena.extend_from_slice(chunk);
        }
        (self.arena.split().freeze(), message)
    }
}

/// Why frame bytes did not decode into one message of the simulated group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WireError {
    /// net's frame decoder refused the bytes (a checksum, the header, the length).
    Frame(FrameError),
    /// The bytes end inside the frame.
    Truncated { len: usize },
    /// Bytes follow the frame.
    Trailing { extra: usize },
    /// `PeerMessage::decode` refused the frame's body.
    Peer(ProtocolError),
    /// The frame decoded but does not carry exactly one message of [`SIM_PARTITION`].
    Shape(String),
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WireError::Frame(e) => write!(f, "frame decoder: {e}"),
            WireError::Truncated { len } => write!(f, "frame truncated: {len} bytes"),
            WireError::Trailing { extra } => write!(f, "{extra} bytes after the frame"),
            WireError::Peer(e) => write!(f, "PeerMessage::decode: {e}"),
            WireError::Shape(what) => f.write_str(what),
        }
    }
}

/// Decodes the frame bytes a simulated node received into the one message they carry.
///
/// The frame goes through net's `decode_frame` (the same header validation and body checksum
/// as the transport's streaming `FrameDecoder`, without its receive buffer: the simulated
/// network delivers whole frames, so the body stays a zero-copy slice of the bytes sent).
pub fn decode(frame: Bytes) -> Result<Message, WireError> {
    let len = frame.len();
    let (frame, used) = decode_frame(&frame, FRAME_BODY_SIZE_MAX).map_err(|e| match e {
        FrameError::Truncated { buffered, .. } => WireError::Truncated { len: buffered },
        e => WireError::Frame(e),
    })?;
    if used != len {
        return Err(WireError::Trailing { extra: len - used });
    }
    let peer = PeerMessage::decode(&frame, &FrameChecksumOnly).map_err(WireError::Peer)?;
    let (partition, message) = match peer {
        PeerMessage::Raft { partition, message } => (partition, message),
        PeerMessage::Heartbeats(list) if list.len() == 1 => list[0].into_message(),
        PeerMessage::HeartbeatResponses(list) if list.len() == 1 => list[0].into_message(),
        PeerMessage::Heartbeats(list) => {
            return Err(WireError::Shape(format!("{} heartbeats in one frame", list.len())))
        }
        PeerMessage::HeartbeatResponses(list) => {
            let what = format!("{} heartbeat responses in one frame", list.len());
            return Err(WireError::Shape(what));
        }
    };
    if partition != SIM_PARTITION {
        return Err(WireError::Shape(format!("message of partition {partition:?}")));
    }
    Ok(message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::network::{NetworkWeather, SimNetwork};
    use rand::rngs::SmallRng;
    use rand::{Rng, SeedableRng};
    use ringlog_raft::message::{AppendResult, Entry, EntryKind, Membership};
    use ringlog_raft::types::{LogIndex, NodeId, Term};

    /// One message of every kind the core sends, Appends with every entry kind.
    fn every_message() -> Vec<Message> {
        let membership =
            Membership { voters: vec![NodeId(1), NodeId(2), NodeId(3)], learners: vec![NodeId(4)] };
        let entries = vec![
            Entry {
                term: Term(6),
                index: LogIndex(11),
                kind: EntryKind::Noop,
                payload: Bytes::new(),
            },
            Entry {
                term: Term(7),
                index: LogIndex(12),
                kind: EntryKind::Normal,
                payload: Bytes::from_static(b"s1-p1"),
            },
            Entry {
                term: Term(7),
                index: LogIndex(13),
                kind: EntryKind::Membership(membership.clone()),
                payload: Bytes::new(),
            },
        ];
        let (t, i) = (Term(7), LogIndex(13));
        vec![
            Message::PreVote { term: t, last_index: i, last_term: Term(6) },
            Message::PreVoteResponse { term: t, granted: true },
            Message::Vote { term: t, last_index: i, last_term: Term(6), transfer: true },
            Message::VoteResponse { term: t, granted: false },
            Message::Append {
                term: t,
                prev_index: LogIndex(10),
                prev_term: Term(5),
                commit: LogIndex(9),
                entries,
            },
            Message::Append {
                term: t,
                prev_index: i,
                prev_term: t,
                commit: i,
                entries: Vec::new(),
            },
            Message::AppendResponse {
                term: t,
                result: AppendResult::Accepted { durable: i, damaged: true },
            },
            Message::AppendResponse {
                term: t,
                result: AppendResult::Rejected {
                    rejected: i,
                    hint_index: LogIndex(3),
                    hint_term: Term(2),
                },
            },
            Message::Heartbeat { term: t, commit: i, ctx: 99 },
            Message::HeartbeatResponse { term: t, ctx: 99 },
            Message::TimeoutNow { term: t },
            Message::InstallLogStart {
                term: t,
                start: LogIndex(100),
                prev_term: Term(6),
                commit: LogIndex(120),
                membership,
            },
            Message::TermQuery { term: t },
            Message::TermQueryResponse { term: t },
        ]
    }

    #[test]
    fn every_message_kind_round_trips_through_the_production_codec() {
        let mut encoder = WireEncoder::new();
        for message in every_message() {
            let (frame, kept) = encoder.encode(message.clone());
            assert_eq!(kept, message);
            assert_eq!(decode(frame).as_ref(), Ok(&message));
        }
    }

    #[test]
    fn heartbeats_travel_as_coalesced_heartbeat_frames() {
        let mut encoder = WireEncoder::new();
        let beat = Message::Heartbeat { term: Term(3), commit: LogIndex(2), ctx: 5 };
        let (frame, _) = encoder.encode(beat);
        // Byte 5 of the header is the frame kind (net/src/frame.rs).
        assert_eq!(frame[5], ringlog_net::FrameKind::PeerHeartbeats as u8);
    }

    #[test]
    fn truncated_and_trailing_bytes_are_errors_not_panics() {
        let mut encoder = WireEncoder::new();
        let (frame, _) = encoder.encode(Message::TimeoutNow { term: Term(1) });
        for cut in 0..frame.len() {
            assert!(decode(frame.slice(..cut)).is_err(), "{cut} bytes decoded");
        }
        let mut longer = BytesMut::from(&frame[..]);
        longer.extend_from_slice(b"x");
        assert_eq!(decode(longer.freeze()), Err(WireError::Trailing { extra: 1 }));
    }

    /// The corruption fault: every frame has one byte flipped on the simulated wire, and net's
    /// frame checksums (header or body) must refuse every one of them. With the checksum
    /// checks bypassed, flips in a body decode into other messages (or fail
    /// `PeerMessage::decode`) and this fails.
    #[test]
    fn every_frame_corrupted_on_the_wire_is_refused_by_the_frame_checksums() {
        let mut rng = SmallRng::seed_from_u64(7);
        let mut net = SimNetwork::new(2, SmallRng::seed_from_u64(8), SmallRng::seed_from_u64(9));
        net.set_weather(NetworkWeather { corrupt_probability: 1.0, ..NetworkWeather::CALM });
        let mut encoder = WireEncoder::new();
        let messages = every_message();
        for _ in 0..2_000 {
            let message = messages[rng.gen_range(0..messages.len())].clone();
            let (frame, sent) = encoder.encode(message);
            assert!(net.send(0, NodeId(1), NodeId(2), frame, sent));
        }
        let mut refused = 0;
        while let Some(flight) = net.next_due(10) {
            assert!(flight.corrupted);
            match decode(flight.frame) {
                Err(WireError::Frame(
                    FrameError::BadHeaderChecksum { .. }
                    | FrameError::BadBodyChecksum { .. }
                    | FrameError::BadMagic { .. }
                    | FrameError::UnsupportedVersion { .. },
                )) => refused += 1,
                other => panic!("a corrupted frame got past the frame checks: {other:?}"),
            }
        }
        assert_eq!(refused, 2_000);
        assert_eq!(net.stats.corrupted, 2_000);
    }
}
