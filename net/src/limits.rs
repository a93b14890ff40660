//! Every bound the wire protocol enforces, in one place (style.md "Limits").
//!
//! Decoders check a length or a count against these bounds — and against the bytes actually
//! present — *before* allocating anything, so a hostile peer can make us allocate at most one
//! frame body of `FRAME_BODY_SIZE_MAX` bytes per connection.
//!
//! Relations between bounds are checked at compile time below.

use std::time::Duration;

/// Shortest admin token accepted (a short token is guessable): bytes after trimming.
pub const ADMIN_TOKEN_BYTES_MIN: usize = 16;

/// Longest admin token accepted, in a token file (after trimming) and on the wire.
pub const ADMIN_TOKEN_BYTES_MAX: usize = 512;

/// Largest admin token file read (the token plus surrounding whitespace); a longer file is
/// refused before it is read.
pub const ADMIN_TOKEN_FILE_BYTES_MAX: u64 = 4096;

/// Size of the fixed frame header (docs/format.md#frame).
pub const FRAME_HEADER_SIZE: usize = 32;

/// Largest batch (the raw on-disk record batch) a produce request or an entry may carry.
pub const BATCH_SIZE_MAX: usize = 8 * 1024 * 1024;

/// Largest number of bytes of batches one fetch response may carry.
pub const FETCH_BYTES_MAX: usize = 8 * 1024 * 1024;

/// Largest number of batches in one fetch response.
pub const FETCH_BATCHES_MAX: usize = 64 * 1024;

/// Largest number of entries in one `Append` message.
pub const ENTRIES_PER_APPEND_MAX: usize = 4096;

/// Largest total payload of one `Append` (the replicator's per-message byte window must not
/// exceed it).
pub const APPEND_PAYLOAD_BYTES_MAX: usize = 8 * 1024 * 1024;

/// Largest number of partitions' heartbeats coalesced into one heartbeat frame.
pub const HEARTBEATS_PER_FRAME_MAX: usize = 16 * 1024;

/// Largest number of partitions a metadata request may name or a response may describe.
pub const METADATA_PARTITIONS_MAX: usize = 64 * 1024;

/// Largest number of members (voters + learners) of one Raft group.
pub const GROUP_MEMBERS_MAX: usize = 64;

/// Largest number of followers described in a group status response.
pub const STATUS_FOLLOWERS_MAX: usize = GROUP_MEMBERS_MAX;

/// Largest human-readable message (error detail, refusal reason), in bytes of UTF-8.
pub const MESSAGE_LEN_MAX: usize = 1024;

/// Default largest frame body a decoder accepts: a full batch or `Append` plus the fixed
/// fields and per-entry headers around it.
pub const FRAME_BODY_SIZE_MAX: usize = BATCH_SIZE_MAX + 2 * 1024 * 1024;

/// Largest wire overhead of one entry of an `Append` besides its payload: term, index, kind,
/// payload length, and for a membership entry two member counts and the members.
pub const ENTRY_WIRE_OVERHEAD_MAX: usize = 8 + 8 + 1 + 4 + 2 * 2 + GROUP_MEMBERS_MAX * 4;

/// No decoder may be configured above this, whatever the config says.
pub const FRAME_BODY_SIZE_CEILING: usize = 256 * 1024 * 1024;

/// Frames a peer link queues before `send` reports `QueueFull`.
pub const LINK_QUEUE_FRAMES_MAX: usize = 4096;

/// Bytes a peer link queues before `send` reports `QueueFull`.
pub const LINK_QUEUE_BYTES_MAX: usize = 64 * 1024 * 1024;

/// Bytes one write call of a link gathers from its queue (small frames are coalesced into
/// one write; a large payload is written from its own buffer without a copy).
pub const WRITE_GATHER_BYTES_MAX: usize = 1024 * 1024;

/// Payloads at least this large are carried by reference into the frame, not copied.
pub const ZERO_COPY_PAYLOAD_MIN: usize = 4 * 1024;

/// Inbound peer messages buffered per listener before readers wait (backpressure on TCP).
pub const INBOX_CAPACITY: usize = 1024;

/// Peer connections one listener serves at once; more are closed on accept.
pub const PEER_CONNECTIONS_MAX: usize = 1024;

/// How long a new connection has to complete its handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// Connections over a limit (`peer_connections_max`, `client_connections_max`) being refused
/// with a reason at once; more are closed on accept without one. So a listener holds at most
/// its limit plus this many sockets, each refusal bounded by the handshake timeout.
pub const REFUSALS_IN_FLIGHT_MAX: usize = 16;

/// How long a client has to send a whole request once its first byte arrived; a slower
/// request closes the connection (a slowloris client cannot hold a connection slot).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// A peer link with nothing to send writes a keepalive frame after this long, so that
/// the acceptor can tell an idle link from a dead one.
pub const LINK_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(1);

/// An accepted peer connection that delivers no frame for this long is closed (its peer is
/// gone without a FIN or RST, e.g. a crashed host or a cut network).
pub const PEER_IDLE_TIMEOUT: Duration = Duration::from_secs(10);

/// A write to a peer that does not complete within this long breaks the connection (the peer
/// stopped reading and the socket buffer is full); the link reconnects.
pub const LINK_WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// First reconnect delay of a peer link.
pub const RECONNECT_BACKOFF_INITIAL: Duration = Duration::from_millis(10);

/// Largest reconnect delay of a peer link (before jitter, which only shortens it).
pub const RECONNECT_BACKOFF_MAX: Duration = Duration::from_secs(2);

/// Client requests in flight on one connection: the node reads no further request past it
/// (TCP pushes back), and a client pipeline's window is at most this.
pub const PIPELINE_REQUESTS_MAX: usize = 64;

/// Bytes read from a socket at once when the decoder does not ask for more.
pub const READ_CHUNK_SIZE: usize = 64 * 1024;

const _: () = assert!(FRAME_HEADER_SIZE % 8 == 0);
const _: () = assert!(ADMIN_TOKEN_BYTES_MIN <= ADMIN_TOKEN_BYTES_MAX);
const _: () = assert!(ADMIN_TOKEN_BYTES_MAX as u64 <= ADMIN_TOKEN_FILE_BYTES_MAX);
const _: () = assert!(ADMIN_TOKEN_BYTES_MAX + 4 <= FRAME_BODY_SIZE_MAX);
const _: () = assert!(FRAME_BODY_SIZE_MAX <= FRAME_BODY_SIZE_CEILING);
const _: () = assert!(FRAME_BODY_SIZE_CEILING <= u32::MAX as usize);
// A produce request (a batch plus fixed fields) and a full fetch response fit in a frame.
const _: () = assert!(BATCH_SIZE_MAX + 1024 <= FRAME_BODY_SIZE_MAX);
const _: () = assert!(FETCH_BYTES_MAX + FETCH_BATCHES_MAX * 4 + 1024 <= FRAME_BODY_SIZE_MAX);
// An `Append` of the largest payload fits in a frame with its per-entry headers.
const _: () = assert!(
    APPEND_PAYLOAD_BYTES_MAX + ENTRIES_PER_APPEND_MAX * ENTRY_WIRE_OVERHEAD_MAX + 1024
        <= FRAME_BODY_SIZE_MAX
);
const _: () = assert!(LINK_QUEUE_BYTES_MAX >= FRAME_BODY_SIZE_MAX + FRAME_HEADER_SIZE);
const _: () = assert!(WRITE_GATHER_BYTES_MAX <= LINK_QUEUE_BYTES_MAX);
const _: () = assert!(ZERO_COPY_PAYLOAD_MIN < WRITE_GATHER_BYTES_MAX);
// A live but idle link is never mistaken for a dead one.
const _: () = assert!(LINK_KEEPALIVE_INTERVAL.as_millis() * 3 <= PEER_IDLE_TIMEOUT.as_millis());
