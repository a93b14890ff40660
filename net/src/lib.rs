//! ringlog-net: the wire protocol and transport of ringlog (design.md §7).
//!
//! - [`frame`]: the length-prefixed frame codec shared by client and peer traffic (no IO).
//! - [`protocol`]: client requests and responses (produce, fetch, metadata, status, ...).
//! - [`peer`]: the peer handshake and Raft messages carrying batches as raw on-disk bytes.
//! - `transport` (feature `transport`, on by default): glommio TCP — framed streams, the peer accept loop and peer links with
//!   reconnect, backoff and bounded queues.
//! - `client` (feature `client`, on by default): the blocking std::net [`client::Client`] with
//!   partition → shard → leader routing and bounded, idempotency-aware retries.
//! - [`tls`]: rustls configurations for mutual TLS between nodes and TLS to clients.
//! - [`admin`]: the admin identity (token, certificate names) that membership changes and
//!   leadership transfers need.
//! - [`limits`]: every bound the decoders and queues enforce.
//!
//! Fuzzing the frame decoder briefly (nightly toolchain; see fuzz/README.md):
//! `fuzz/run.sh frame_decoder 60` (also `peer_message`, `client_message`). On stable the same
//! fuzz bodies run as seeded tests: `cargo test -p ringlog-net --test net_codec`.
//!
//! Architecture invariants: the codec depends on `ringlog-raft` and `ringlog-format` (both
//! pure) and never on `ringlog-engine` (batch checksums are verified through
//! [`peer::BatchCheck`]); the `client` module builds and verifies batches with
//! `ringlog-format`'s codec (contract decision 3), so with `--no-default-features --features
//! client` nothing here needs glommio or io_uring; only
//! `transport` and `client` perform socket IO (`tls` and `admin` read their PEM and token files); no decoder allocates before bounding what it allocates, and none
//! panics on any input (fuzzed: see `fuzz/` and [`fuzzing`]).

#![forbid(unsafe_code)]

pub mod admin;
#[cfg(feature = "client")]
pub mod client;
pub mod frame;
pub mod fuzzing;
pub mod ids;
pub mod limits;
pub mod peer;
pub mod protocol;
pub mod tls;
#[cfg(feature = "transport")]
pub mod transport;
pub mod wire;

pub use frame::{
    decode_frame, encode_frame, BodyWriter, Frame, FrameBuf, FrameDecoder, FrameError, FrameKind,
};
pub use ids::{ClusterId, Offset, PartitionId, RequestId, ShardId};
pub use peer::{
    BatchCheck, FrameChecksumOnly, Handshake, HandshakeReply, PartitionHeartbeat,
    PartitionHeartbeatResponse, PeerMessage, RefuseReason, PEER_PROTOCOL_VERSION,
};
pub use protocol::{
    Acks, Consistency, ErrorCode, ErrorReply, FetchRequest, FetchResponse, GroupStatus,
    MetadataResponse, ProduceRequest, ProduceResponse, Request, Response,
};
pub use wire::ProtocolError;
