//! Client: a blocking, std::net client of a ringlog cluster, usable from any thread, with a
//! pipelined producer whose completions are also futures ("Pipelining" below).
//!
//! [`Client::connect`] learns the cluster from a list of bootstrap addresses (any node's
//! shard-0 client address); a `Metadata` call maps partition → owning shard → the leader's
//! client address for that shard (design.md §3, contract decision 2). Each call is routed to
//! that address; on `NotLeader` the client retries at the hinted leader, or re-fetches the
//! metadata when there is no hint, with bounded attempts ([`ClientConfig::attempts_max`]),
//! a bounded total time ([`ClientConfig::retry_time_max`]) and doubling backoff. To talk to
//! one node without routing (tests comparing replicas, per-node status), use
//! [`Client::node`].
//!
//! A produce carries one batch in the on-disk format whose header stamp is zero (term 0,
//! index 0, base offset 0, prev crc 0; record count, timestamps and both checksums filled in):
//! the leader verifies it and stamps it when appending (contract decision 3). Fetched batches
//! are checksum-verified again by [`decode_records`] before records are handed out.
//!
//! # Idempotency: which retries are safe
//!
//! There are no producer ids yet, so the node cannot recognise a produce it already took.
//! The client retries a produce only when the node certainly did **not** accept it:
//! - the connection could not be established (nothing was sent);
//! - the node answered `NotLeader` (it refuses before accepting anything);
//! - the node answered `Backpressure` (refused, nothing queued), after the hinted delay.
//!
//! `StorageFull` (the leader's disk is full) is also a refusal before anything was accepted,
//! but it is returned at once as [`ClientError::Server`], not retried: space comes back on
//! the operator's (or retention's) time scale, not the client's; retrying the produce later
//! is safe.
//!
//! It never retries a produce after the request may have reached a leader: a lost or reset
//! connection after the write, a read timeout, or the replies `Timeout` ("outcome unknown": the
//! acks were not reached in time, or the leader lost its leadership while the produce was
//! pending — a leader that steps down answers so at once instead of holding the produce until
//! its fate is known), `ShuttingDown`, `StorageFailed` or
//! `Internal`. Those return [`ClientError::Indeterminate`] (or the server error): the batch
//! may have been appended, and may commit later. A caller that retries such a produce itself
//! may append the records twice; only acknowledged produces are known to be present, each
//! exactly once. `transfer_leader` and `change_membership` follow the same rule. Reads
//! (`fetch`, `metadata`, `status`) change nothing and are retried on any transport error.
//!
//! # Pipelining
//!
//! [`Client::produce`] keeps one request in flight per connection. [`Client::pipeline`]
//! returns a [`Pipeline`]: one partition, one acks level, one connection at a time (to the
//! partition's leader), with up to `window` produces in flight on it (default
//! [`PIPELINE_WINDOW_DEFAULT`]; at most [`crate::limits::PIPELINE_REQUESTS_MAX`], the
//! node's own per-connection limit). [`Pipeline::send`] writes the produce at once and
//! returns a [`Completion`]; it blocks only while the window is full ([`Pipeline::try_send`]
//! returns [`ClientError::WindowFull`] instead). A completion is waited for with
//! [`Completion::wait`] or awaited as a [`std::future::Future`] on any executor (no glommio,
//! no runtime: a driver thread per pipeline reads the replies and wakes the waker);
//! [`Pipeline::flush`] waits for everything in flight. The outcome is what
//! [`Client::produce`] would return in the same situation.
//!
//! The node answers a connection's requests as they complete, each reply carrying its
//! request id; the driver matches replies by id and hands the outcomes out strictly in send
//! order (a completion is ready only when every earlier one of its pipeline is). Ordering
//! and guarantees:
//! - The node appends a connection's produces in the order they arrive (each request's task
//!   proposes its batch before its first wait, and the tasks start in arrival order), so the
//!   acknowledged produces of one pipeline have increasing offsets in send order — also
//!   across reconnects, since nothing is sent on a new connection before every produce of the
//!   old one has an outcome.
//! - A connection that breaks, answers nothing within the request timeout, or answers
//!   nonsense completes each of its produces in flight [`ClientError::Indeterminate`]; none is
//!   resent. `Timeout`, `ShuttingDown`, `StorageFailed` and `Internal` replies are
//!   `Indeterminate` too, as for `produce`.
//! - `NotLeader` and `Backpressure` refusals (nothing was taken) halt the pipeline: nothing
//!   more is written until every produce on the wire has an outcome. Then the refused
//!   produces *after* the last produce with any other outcome are resent, in their order, to
//!   the hinted leader (or the leader the metadata names, or after the backpressure delay);
//!   such a resend cannot land before a later produce, because none after it was taken. A
//!   refused produce followed by one that was acknowledged or may have been appended is not
//!   resent: it completes with the refusal ([`ClientError::Server`]), and the caller knows it
//!   is not in the log (sending it again puts it after the later ones). The retries are
//!   bounded like `produce`'s ([`ClientConfig::attempts_max`],
//!   [`ClientConfig::retry_time_max`], counted from the first connect or refusal since the
//!   last acknowledgement or the last moment nothing was in flight).
//! - Produces queued while the pipeline is halted or reconnecting are unsent until then
//!   (certainly not appended); if connecting fails within the bounds they complete
//!   [`ClientError::NoLeader`] or [`ClientError::RetriesExhausted`].
//! - A pipeline goes on after a failed produce: a later produce may be acknowledged while an
//!   earlier one failed. A caller that needs "all or a prefix" stops at the first error.
//! - Dropping the pipeline waits for the replies of the produces already written; produces
//!   not yet written complete with [`ClientError::PipelineClosed`] (not appended).
//!
//! Bounds: `window` produces (their batches are kept for a resend until they complete), one
//! reply frame (`frame_body_size_max`) plus one read chunk of input, and no other queue.
//! An idle pipeline keeps its connection; before writing on one that has been idle, the
//! client checks that the node has not closed it (as the pool does).
//!
//! # Fetching: progress over control batches
//!
//! A partition's log also holds control batches (a Raft no-op at each new leader's term,
//! membership changes): they hold no records and take no offset of their own (a control batch
//! appended when the log ends at offset `n` has base offset `n` and zero records, so the
//! offset after it is `n` again). The node never answers a fetch with control batches alone:
//! a reply holds the first batch with records at or after the offset whatever `max_bytes` is
//! (whole, even when larger), control batches only before a batch with records, and its last
//! batch holds records (docs/format.md#fetch). So [`next_offset`] of a non-empty reply is
//! always past the fetch offset and past every record returned — a loop that fetches from it
//! (with any `max_bytes`, 1 included) reads each committed record exactly once and never
//! asks for the same offset forever — and an empty reply means no record is committed at
//! or after the offset yet (also when a leader change left only control batches there): a
//! consume loop stops or long-polls there. [`decode_records`] skips control batches and
//! records below the fetch offset (a batch holding the offset may start before it).
//!
//! # Limits
//!
//! Every response is read through the frame decoder with `frame_body_size_max`: a header
//! announcing a longer body fails the call before anything is allocated for it, and body
//! decoders bound every count by the bytes present. Idle pooled connections per address are
//! bounded by [`ClientConfig::idle_connections_per_address_max`].
//!
//! # TLS
//!
//! With [`ClientConfig::tls`] set, every connection is a rustls session over the std TCP stream
//! (`rustls::StreamOwned`): the node's certificate is verified against the configured CA for
//! the server name in [`ClientTls`] (by default [`crate::tls::NODE_SERVER_NAME`]), and a client
//! certificate is presented when the rustls configuration has one (nodes with `tls.client_ca`
//! require it). Build the rustls configuration with [`crate::tls::client_config`].
//!
//! # Admin requests
//!
//! `transfer_leader` and `change_membership` need an admin identity on the node
//! (docs/format.md#authenticate): a client certificate naming an admin (TLS, nothing to do
//! here beyond presenting it), or the admin token in [`ClientConfig::admin_token`]. With a
//! token, every admin request first sends `Authenticate` with it on the same connection (one
//! more round trip; admin requests are rare) — a refused token is returned at once as
//! [`ClientError::Server`] with `ErrorReply::Unauthorized`, never retried, and the admin request
//! is not sent. Without an identity the node answers the request itself `Unauthorized` (also
//! returned at once). Other requests never send the token.
//!
//! Invariants: a connection is returned to the pool only after a complete, matching
//! exchange; any error drops it. Requests on a pooled connection are strictly one at a time
//! (a pipeline's connection is its own, never pooled).

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use ringlog_format::batch::{decode_batch, encode_batch, BatchError, BatchStamp, RecordsBuilder};
use ringlog_raft::{LogIndex, MembershipChange, NodeId, Term};
use rustls::pki_types::ServerName;
use thiserror::Error;

use crate::admin::AdminToken;
use crate::frame::{FrameDecoder, FrameError, FrameKind};
use crate::ids::{Offset, PartitionId, RequestId};
use crate::limits::{BATCH_SIZE_MAX, FETCH_BYTES_MAX, FRAME_BODY_SIZE_MAX, READ_CHUNK_SIZE};
use crate::protocol::{
    Acks, AdminCredential, Consistency, ErrorReply, FetchRequest, FetchResponse, GroupStatus,
    MetadataResponse, PartitionMetadata, ProduceRequest, ProduceResponse, Request, Response,
};
use crate::wire::ProtocolError;

mod pipeline;

pub use pipeline::{Completion, Pipeline, PIPELINE_WINDOW_DEFAULT};

/// Default bound on connecting to one address.
pub const CONNECT_TIMEOUT_DEFAULT: Duration = Duration::from_secs(2);
/// Default bound on one request's write and on waiting for its reply (a fetch adds its wait).
pub const REQUEST_TIMEOUT_DEFAULT: Duration = Duration::from_secs(10);
/// Default bound on waiting for a metadata reply.
pub const METADATA_TIMEOUT_DEFAULT: Duration = Duration::from_secs(2);
/// Default number of attempts of one routed call (first try included).
pub const ATTEMPTS_MAX_DEFAULT: u32 = 40;
/// Default bound on the total time one routed call spends retrying.
pub const RETRY_TIME_MAX_DEFAULT: Duration = Duration::from_secs(15);
/// First delay between attempts; it doubles up to `BACKOFF_MAX_DEFAULT`.
pub const BACKOFF_INITIAL_DEFAULT: Duration = Duration::from_millis(10);
/// Largest delay between attempts.
pub const BACKOFF_MAX_DEFAULT: Duration = Duration::from_millis(500);
/// Idle connections kept per address.
pub const IDLE_CONNECTIONS_PER_ADDRESS_MAX_DEFAULT: usize = 8;
/// Largest `retry_after_ms` of a `Backpressure` reply the client honours as is.
pub const BACKPRESSURE_WAIT_MAX: Duration = Duration::from_secs(1);
/// Largest long-poll wait a fetch may ask for (the wire carries milliseconds in a u32).
pub const FETCH_WAIT_MAX: Duration = Duration::from_secs(60);

/// How a [`Client`] connects, times out and retries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientConfig {
    /// Shard-0 client addresses of some nodes of the cluster (one is enough).
    pub bootstrap: Vec<SocketAddr>,
    pub connect_timeout: Duration,
    /// Bound on writing a request and on waiting for its reply (a fetch adds its wait).
    pub request_timeout: Duration,
    /// Bound on waiting for a metadata reply (short: a paused node must not stall routing).
    pub metadata_timeout: Duration,
    pub attempts_max: u32,
    pub retry_time_max: Duration,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    pub idle_connections_per_address_max: usize,
    /// Largest response body accepted (bounds the one allocation per reply).
    pub frame_body_size_max: usize,
    /// TLS to the nodes' client ports (`None`: plaintext).
    pub tls: Option<ClientTls>,
    /// The admin token sent before each admin request (module docs, "Admin requests").
    pub admin_token: Option<AdminToken>,
}

/// The client's TLS settings: a rustls configuration (see [`crate::tls::client_config`]) and
/// the name the nodes' certificates are verified for.
#[derive(Clone, Debug)]
pub struct ClientTls {
    pub config: Arc<rustls::ClientConfig>,
    pub server_name: ServerName<'static>,
}

impl ClientTls {
    /// `config`, verifying nodes for [`crate::tls::NODE_SERVER_NAME`].
    pub fn new(config: Arc<rustls::ClientConfig>) -> ClientTls {
        ClientTls { config, server_name: crate::tls::node_server_name() }
    }
}

impl PartialEq for ClientTls {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.config, &other.config) && self.server_name == other.server_name
    }
}

impl Eq for ClientTls {}

impl ClientConfig {
    /// The defaults above, with `bootstrap` addresses.
    pub fn new(bootstrap: Vec<SocketAddr>) -> Self {
        ClientConfig {
            bootstrap,
            connect_timeout: CONNECT_TIMEOUT_DEFAULT,
            request_timeout: REQUEST_TIMEOUT_DEFAULT,
            metadata_timeout: METADATA_TIMEOUT_DEFAULT,
            attempts_max: ATTEMPTS_MAX_DEFAULT,
            retry_time_max: RETRY_TIME_MAX_DEFAULT,
            backoff_initial: BACKOFF_INITIAL_DEFAULT,
            backoff_max: BACKOFF_MAX_DEFAULT,
            idle_connections_per_address_max: IDLE_CONNECTIONS_PER_ADDRESS_MAX_DEFAULT,
            frame_body_size_max: FRAME_BODY_SIZE_MAX,
            tls: None,
            admin_token: None,
        }
    }
}

/// Why a client call failed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ClientError {
    #[error("no bootstrap address given")]
    NoBootstrap,
    #[error("cannot resolve {input}: {reason}")]
    Resolve { input: String, reason: String },
    #[error("cannot connect to {addr}: {source}")]
    Connect { addr: SocketAddr, source: io::Error },
    /// A read or idempotent request failed on the wire (it changed nothing).
    #[error("connection to {addr} failed: {source}")]
    Io { addr: SocketAddr, source: io::Error },
    /// The request may have reached the node and been carried out (see the module doc on
    /// idempotency): the batch may be appended, and may commit later.
    #[error("outcome unknown at {addr} (the request may have been applied): {reason}")]
    Indeterminate { addr: SocketAddr, reason: String },
    #[error("malformed frame from {addr}: {source}")]
    Frame { addr: SocketAddr, source: FrameError },
    #[error("malformed response from {addr}: {source}")]
    Protocol { addr: SocketAddr, source: ProtocolError },
    #[error("{addr} answered {found:?} to a {expected} request")]
    UnexpectedResponse { addr: SocketAddr, expected: &'static str, found: FrameKind },
    #[error("{addr} answered request id {found}, expected {expected}")]
    RequestIdMismatch { addr: SocketAddr, expected: u64, found: u64 },
    /// The node answered with an error reply that retrying does not fix.
    #[error("{addr} refused: {reply:?}")]
    Server { addr: SocketAddr, reply: ErrorReply },
    #[error("partition {partition} has no known leader after {attempts} attempts in {elapsed:?}: {last}")]
    NoLeader { partition: PartitionId, attempts: u32, elapsed: Duration, last: String },
    #[error("gave up after {attempts} attempts in {elapsed:?}: {last}")]
    RetriesExhausted { attempts: u32, elapsed: Duration, last: String },
    #[error("partition {partition} is not in the cluster's metadata ({partitions} partitions)")]
    UnknownPartition { partition: PartitionId, partitions: usize },
    #[error("a produce needs at least one record")]
    EmptyBatch,
    #[error("records do not fit in one batch: {0}")]
    Batch(BatchError),
    #[error("corrupt batch in a fetch response from {addr}: {source}")]
    CorruptBatch { addr: SocketAddr, source: BatchError },
    #[error("a pipeline window of {window} is outside 1..={max}")]
    PipelineWindow { window: usize, max: usize },
    /// [`Pipeline::try_send`] with `window` produces already in flight (nothing was sent).
    #[error("the pipeline's window of {window} produces is full")]
    WindowFull { window: usize },
    /// The [`Pipeline`] closed before this produce was sent: it was not appended.
    #[error("the pipeline closed before the produce was sent (it was not appended)")]
    PipelineClosed,
}

impl ClientError {
    /// The server's error reply, if the call ended on one.
    pub fn reply(&self) -> Option<&ErrorReply> {
        match self {
            ClientError::Server { reply, .. } => Some(reply),
            _ => None,
        }
    }
}

/// A record read back from a partition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FetchedRecord {
    pub offset: Offset,
    pub value: Bytes,
    /// The batch's `first_timestamp_ms` (docs/format.md#batch): the producer's clock, in ms
    /// since the Unix epoch, when it built the batch; every record of a batch shares it.
    pub timestamp_ms: i64,
}

/// What a routed call does after a reply that is not its answer.
enum Step {
    /// Retry: at `address` if given, else after re-reading the metadata.
    Redirect(Option<SocketAddr>),
    /// Retry the same route after `delay`.
    Wait(Duration),
}

/// Whether a failure after sending may have been applied (module doc, idempotency).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Safety {
    /// Reads: any transport failure is retried.
    Idempotent,
    /// Produce, transfer, membership: retried only when surely not applied.
    Mutating,
}

#[derive(Debug, Default, Clone)]
struct Routes {
    /// The last metadata read.
    metadata: Option<MetadataResponse>,
    /// Believed leader client address (owning shard) per partition.
    leaders: HashMap<PartitionId, SocketAddr>,
    /// Round-robin start among the bootstrap addresses.
    next_bootstrap: usize,
}

/// A blocking client of a ringlog cluster. `Send + Sync`: share it between threads by
/// reference or `Arc`; each call takes its own connection from a small per-address pool.
#[derive(Debug)]
pub struct Client {
    config: ClientConfig,
    routes: Mutex<Routes>,
    pool: Mutex<HashMap<SocketAddr, Vec<Conn>>>,
    next_request_id: AtomicU64,
}

const _: () = {
    const fn send_sync<T: Send + Sync>() {}
    send_sync::<Client>();
};

impl Client {
    /// A client of the cluster reachable at `bootstrap`; nothing is contacted until the first
    /// call (so a cluster that is still starting is fine).
    pub fn new(config: ClientConfig) -> Result<Client, ClientError> {
        if config.bootstrap.is_empty() {
            return Err(ClientError::NoBootstrap);
        }
        Ok(Client {
            config,
            routes: Mutex::new(Routes::default()),
            pool: Mutex::new(HashMap::new()),
            next_request_id: AtomicU64::new(1),
        })
    }

    /// A client with default settings; `bootstrap` is `host:port,host:port,...`.
    pub fn connect(bootstrap: &str) -> Result<Client, ClientError> {
        Client::new(ClientConfig::new(parse_addresses(bootstrap)?))
    }

    pub fn config(&self) -> &ClientConfig {
        &self.config
    }

    /// Appends `records` as one batch to `partition`; returns once `acks` is met.
    pub fn produce(
        &self,
        partition: PartitionId,
        acks: Acks,
        records: &[&[u8]],
    ) -> Result<ProduceResponse, ClientError> {
        self.produce_batch(partition, acks, build_batch(records)?)
    }

    /// Appends a batch built by [`build_batch`] (zero stamp) to `partition`.
    pub fn produce_batch(
        &self,
        partition: PartitionId,
        acks: Acks,
        batch: Bytes,
    ) -> Result<ProduceResponse, ClientError> {
        let request = Request::Produce(ProduceRequest { partition, acks, batch });
        self.routed(partition, &request, Safety::Mutating, |response| match response {
            Response::Produce(r) => Ok(r),
            other => Err(other),
        })
    }

    /// Committed batches of `partition` from `offset`, from its leader (long poll up to
    /// `wait` when nothing is committed there yet). Decode with [`decode_records`].
    pub fn fetch(
        &self,
        partition: PartitionId,
        offset: Offset,
        max_bytes: u32,
        wait: Duration,
        consistency: Consistency,
    ) -> Result<FetchResponse, ClientError> {
        let request = fetch_request(partition, offset, max_bytes, wait, consistency);
        self.routed(partition, &request, Safety::Idempotent, |response| match response {
            Response::Fetch(r) => Ok(r),
            other => Err(other),
        })
    }

    /// Fresh metadata of every partition (from the first bootstrap node that answers); also
    /// refreshes the routes.
    pub fn metadata(&self) -> Result<MetadataResponse, ClientError> {
        self.refresh_metadata()
    }

    /// The status of `partition` as its leader sees it (followers' durable index and lag are
    /// filled in by a leader only). Use [`Client::node`] for one node's view.
    pub fn status(&self, partition: PartitionId) -> Result<GroupStatus, ClientError> {
        let request = Request::GroupStatus { partition };
        self.routed(partition, &request, Safety::Idempotent, |response| match response {
            Response::GroupStatus(s) => Ok(s),
            other => Err(other),
        })
    }

    /// Asks the leader of `partition` to hand leadership to `to`; returns once the transfer
    /// has started (watch `status` for its outcome).
    pub fn transfer_leader(&self, partition: PartitionId, to: NodeId) -> Result<(), ClientError> {
        let request = Request::TransferLeader { partition, to };
        self.routed(partition, &request, Safety::Mutating, |response| match response {
            Response::TransferLeader { .. } => Ok(()),
            other => Err(other),
        })
    }

    /// Changes the members of `partition`'s group. `addresses` (peer, client: the node's
    /// shard-0 addresses) are required for `AddLearner`. Returns the change's Raft index.
    pub fn change_membership(
        &self,
        partition: PartitionId,
        change: MembershipChange,
        addresses: Option<(SocketAddr, SocketAddr)>,
    ) -> Result<LogIndex, ClientError> {
        let request = Request::ChangeMembership {
            partition,
            change,
            peer: addresses.map(|a| a.0),
            client: addresses.map(|a| a.1),
        };
        self.routed(partition, &request, Safety::Mutating, |response| match response {
            Response::ChangeMembership { index, .. } => Ok(index),
            other => Err(other),
        })
    }

    /// Shards per node, from the cached metadata (read once if needed).
    pub fn shards(&self) -> Result<u16, ClientError> {
        if let Some(metadata) = &self.routes.lock().expect("routes lock").metadata {
            return Ok(metadata.shards);
        }
        Ok(self.refresh_metadata()?.shards)
    }

    /// Calls to one node (its shard-0 client address `node`), without routing or retries.
    pub fn node(&self, node: SocketAddr) -> NodeClient<'_> {
        NodeClient { client: self, node }
    }

    /// One request to `addr` and its reply, error replies included; no retry.
    pub fn request_at(&self, addr: SocketAddr, request: &Request) -> Result<Response, ClientError> {
        let timeout = self.config.request_timeout + request_wait(request);
        let mutating = matches!(
            request,
            Request::Produce(_) | Request::TransferLeader { .. } | Request::ChangeMembership { .. }
        );
        self.exchange(addr, request, timeout).map_err(|failure| failure.into_error(addr, mutating))
    }

    // ---- routing ----

    fn routed<T>(
        &self,
        partition: PartitionId,
        request: &Request,
        safety: Safety,
        accept: impl Fn(Response) -> Result<T, Response>,
    ) -> Result<T, ClientError> {
        let started = Instant::now();
        let mut backoff = self.config.backoff_initial;
        let mut target: Option<SocketAddr> = None;
        let mut last = String::from("no attempt made");
        let mut leaderless = false;
        let mut attempts = 0;
        let timeout = self.config.request_timeout + request_wait(request);
        while attempts < self.config.attempts_max
            && (attempts == 0 || started.elapsed() < self.config.retry_time_max)
        {
            attempts += 1;
            let addr = match target.take() {
                Some(addr) => addr,
                None => match self.leader_address(partition) {
                    Ok(Some(addr)) => addr,
                    Ok(None) => {
                        last = format!("the metadata names no leader for {partition}");
                        leaderless = true;
                        self.sleep_backoff(&mut backoff);
                        continue;
                    }
                    Err(error @ ClientError::UnknownPartition { .. }) => return Err(error),
                    Err(error) => {
                        last = format!("no metadata: {error}");
                        leaderless = true;
                        self.sleep_backoff(&mut backoff);
                        continue;
                    }
                },
            };
            let step = match self.exchange(addr, request, timeout) {
                Ok(response) => match accept(response) {
                    Ok(value) => return Ok(value),
                    Err(response) => {
                        last = format!("{addr} answered {response:?}");
                        self.on_reply(partition, addr, response, safety)?
                    }
                },
                Err(failure) => {
                    self.forget_leader(partition, addr);
                    if failure.sent && safety == Safety::Mutating {
                        return Err(failure.into_error(addr, true));
                    }
                    last = failure.into_error(addr, false).to_string();
                    Step::Redirect(None)
                }
            };
            leaderless = !matches!(step, Step::Wait(_));
            match step {
                Step::Redirect(Some(hint)) => {
                    self.set_leader(partition, hint);
                    target = Some(hint);
                    // A hint may name a node still taking over: pause when bouncing again.
                    if attempts > 1 {
                        self.sleep_backoff(&mut backoff);
                    }
                }
                Step::Redirect(None) => self.sleep_backoff(&mut backoff),
                Step::Wait(delay) => {
                    target = Some(addr);
                    std::thread::sleep(delay);
                }
            }
        }
        let elapsed = started.elapsed();
        if leaderless {
            return Err(ClientError::NoLeader { partition, attempts, elapsed, last });
        }
        Err(ClientError::RetriesExhausted { attempts, elapsed, last })
    }

    /// Turns a non-success reply into the next step or a final error.
    fn on_reply(
        &self,
        partition: PartitionId,
        addr: SocketAddr,
        response: Response,
        safety: Safety,
    ) -> Result<Step, ClientError> {
        let reply = match response {
            Response::Error(reply) => reply,
            other => {
                let expected = "routed";
                return Err(ClientError::UnexpectedResponse {
                    addr,
                    expected,
                    found: other.kind(),
                });
            }
        };
        match reply {
            ErrorReply::NotLeader { address, .. } => {
                self.forget_leader(partition, addr);
                Ok(Step::Redirect(address.filter(|hint| *hint != addr)))
            }
            ErrorReply::Backpressure { retry_after_ms } => {
                let delay = Duration::from_millis(retry_after_ms.into()).min(BACKPRESSURE_WAIT_MAX);
                Ok(Step::Wait(delay.max(self.config.backoff_initial)))
            }
            ErrorReply::ShuttingDown if safety == Safety::Idempotent => {
                self.forget_leader(partition, addr);
                Ok(Step::Redirect(None))
            }
            ErrorReply::Timeout
            | ErrorReply::ShuttingDown
            | ErrorReply::StorageFailed { .. }
            | ErrorReply::Internal { .. }
                if safety == Safety::Mutating =>
            {
                self.forget_leader(partition, addr);
                Err(ClientError::Indeterminate { addr, reason: format!("{reply:?}") })
            }
            reply => Err(ClientError::Server { addr, reply }),
        }
    }

    /// The believed leader's address for `partition`, reading the metadata if unknown.
    fn leader_address(&self, partition: PartitionId) -> Result<Option<SocketAddr>, ClientError> {
        if let Some(addr) = self.routes.lock().expect("routes lock").leaders.get(&partition) {
            return Ok(Some(*addr));
        }
        let metadata = self.refresh_metadata_for(Some(partition))?;
        let entry = find_partition(&metadata, partition)?;
        Ok(entry.address)
    }

    fn set_leader(&self, partition: PartitionId, addr: SocketAddr) {
        self.routes.lock().expect("routes lock").leaders.insert(partition, addr);
    }

    fn forget_leader(&self, partition: PartitionId, addr: SocketAddr) {
        let mut routes = self.routes.lock().expect("routes lock");
        if routes.leaders.get(&partition) == Some(&addr) {
            routes.leaders.remove(&partition);
        }
    }

    /// Asks the bootstrap nodes in turn (starting with the last one that answered) for the
    /// metadata of every partition; the first answer replaces the routes. With `wanted`, an
    /// answer that names no leader of that partition is passed over for the next node's: a
    /// node cut off from the others knows no leader (or still names itself until it steps
    /// down) while the majority has elected one, and a client that kept asking only it would
    /// find no leader for as long as the cut lasts. When no node names one, the first answer
    /// is used and the next refresh starts with the node after it.
    fn refresh_metadata_for(
        &self,
        wanted: Option<PartitionId>,
    ) -> Result<MetadataResponse, ClientError> {
        let count = self.config.bootstrap.len();
        let start = self.routes.lock().expect("routes lock").next_bootstrap;
        let request = Request::Metadata { partitions: Vec::new() };
        let mut last = None;
        let mut leaderless: Option<(usize, MetadataResponse)> = None;
        for i in 0..count {
            let at = (start + i) % count;
            let addr = self.config.bootstrap[at];
            match self.exchange(addr, &request, self.config.metadata_timeout) {
                Ok(Response::Metadata(metadata)) => {
                    let names_leader = wanted.is_none_or(|partition| {
                        metadata
                            .partitions
                            .iter()
                            .any(|p| p.partition == partition && p.address.is_some())
                    });
                    if names_leader {
                        self.install_routes(at, &metadata);
                        return Ok(metadata);
                    }
                    leaderless.get_or_insert((at, metadata));
                }
                Ok(Response::Error(reply)) => last = Some(ClientError::Server { addr, reply }),
                Ok(other) => {
                    let expected = "metadata";
                    last = Some(ClientError::UnexpectedResponse {
                        addr,
                        expected,
                        found: other.kind(),
                    });
                }
                Err(failure) => last = Some(failure.into_error(addr, false)),
            }
        }
        if let Some((at, metadata)) = leaderless {
            self.install_routes(at, &metadata);
            self.routes.lock().expect("routes lock").next_bootstrap = (at + 1) % count;
            return Ok(metadata);
        }
        // Next time, start with the node after the one that failed first.
        self.routes.lock().expect("routes lock").next_bootstrap = (start + 1) % count;
        Err(last.unwrap_or(ClientError::NoBootstrap))
    }

    /// The metadata of every partition from the first bootstrap node that answers.
    fn refresh_metadata(&self) -> Result<MetadataResponse, ClientError> {
        self.refresh_metadata_for(None)
    }

    fn install_routes(&self, bootstrap_index: usize, metadata: &MetadataResponse) {
        let mut routes = self.routes.lock().expect("routes lock");
        routes.next_bootstrap = bootstrap_index;
        routes.leaders = metadata
            .partitions
            .iter()
            .filter_map(|p| p.address.map(|a| (p.partition, a)))
            .collect();
        routes.metadata = Some(metadata.clone());
    }

    fn sleep_backoff(&self, backoff: &mut Duration) {
        std::thread::sleep(jitter(*backoff));
        *backoff = (*backoff * 2).min(self.config.backoff_max);
    }

    // ---- one exchange on one connection ----

    /// Sends `request` to `addr` and reads its reply within `timeout` (the write within the
    /// request timeout).
    fn exchange(
        &self,
        addr: SocketAddr,
        request: &Request,
        timeout: Duration,
    ) -> Result<Response, Failure> {
        let mut stream = self.checkout(addr)?;
        if let Some(token) = self.config.admin_token.as_ref().filter(|_| request.is_admin()) {
            self.authenticate(&mut stream, addr, token)?;
        }
        let id = RequestId(self.next_request_id.fetch_add(1, Ordering::Relaxed));
        let frame = request.encode(id);
        let write_timeout = self.config.request_timeout;
        stream.tcp().set_write_timeout(Some(write_timeout)).map_err(Failure::not_sent)?;
        stream.tcp().set_read_timeout(Some(timeout)).map_err(Failure::not_sent)?;
        write_frame(&mut stream, frame.chunks()).map_err(Failure::sent)?;
        let response = self.read_response(&mut stream, addr, id)?;
        self.checkin(addr, stream);
        Ok(response)
    }

    /// Presents `token` on `stream` before an admin request. A transport failure here is a
    /// failure before the admin request was sent (safe to retry); a refusal is final.
    fn authenticate(
        &self,
        stream: &mut Conn,
        addr: SocketAddr,
        token: &AdminToken,
    ) -> Result<(), Failure> {
        let id = RequestId(self.next_request_id.fetch_add(1, Ordering::Relaxed));
        let token = Bytes::copy_from_slice(token.as_bytes());
        let frame = Request::Authenticate { credential: AdminCredential { token } }.encode(id);
        let timeout = self.config.request_timeout;
        stream.tcp().set_write_timeout(Some(timeout)).map_err(Failure::not_sent)?;
        stream.tcp().set_read_timeout(Some(timeout)).map_err(Failure::not_sent)?;
        write_frame(stream, frame.chunks()).map_err(Failure::not_sent)?;
        match self.read_response(stream, addr, id) {
            Ok(Response::Authenticated) => Ok(()),
            Ok(Response::Error(reply)) => {
                Err(Failure::answered(ClientError::Server { addr, reply }))
            }
            Ok(other) => Err(Failure::answered(ClientError::UnexpectedResponse {
                addr,
                expected: "authenticate",
                found: other.kind(),
            })),
            // The admin request itself was not sent.
            Err(Failure { error: FailureKind::Io(source), .. }) => Err(Failure::not_sent(source)),
            Err(failure) => Err(failure),
        }
    }

    fn read_response(
        &self,
        stream: &mut Conn,
        addr: SocketAddr,
        id: RequestId,
    ) -> Result<Response, Failure> {
        let mut decoder = FrameDecoder::new(self.config.frame_body_size_max);
        let mut buf = BytesMut::new();
        let frame = loop {
            match decoder.decode(&mut buf) {
                Ok(Some(frame)) => break frame,
                Ok(None) => {}
                Err(source) => return Err(Failure::answered(ClientError::Frame { addr, source })),
            }
            // Bounded by the decoder: at most the header, then at most one announced body.
            let want = decoder.bytes_needed(&buf).min(READ_CHUNK_SIZE.max(buf.len()));
            let start = buf.len();
            buf.resize(start + want, 0);
            let read = stream.read(&mut buf[start..]);
            match read {
                Ok(0) => {
                    buf.truncate(start);
                    let source = io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("connection closed before the reply ({start} bytes of it read)"),
                    );
                    return Err(Failure::sent(source));
                }
                Ok(n) => buf.truncate(start + n),
                Err(error) if error.kind() == io::ErrorKind::Interrupted => buf.truncate(start),
                Err(error) => return Err(Failure::sent(error)),
            }
        };
        if !buf.is_empty() {
            let source = ProtocolError::TrailingBytes { count: buf.len() };
            return Err(Failure::answered(ClientError::Protocol { addr, source }));
        }
        if frame.request_id != id {
            let (expected, found) = (id.0, frame.request_id.0);
            return Err(Failure::answered(ClientError::RequestIdMismatch {
                addr,
                expected,
                found,
            }));
        }
        Response::decode(&frame)
            .map_err(|source| Failure::answered(ClientError::Protocol { addr, source }))
    }

    /// An idle pooled connection to `addr` that is still open, or a new one.
    fn checkout(&self, addr: SocketAddr) -> Result<Conn, Failure> {
        loop {
            let pooled = self.pool.lock().expect("pool lock").get_mut(&addr).and_then(Vec::pop);
            match pooled {
                Some(stream) if is_open(stream.tcp()) => return Ok(stream),
                Some(_) => continue,
                None => break,
            }
        }
        let stream = TcpStream::connect_timeout(&addr, self.config.connect_timeout)
            .map_err(|source| Failure::connect(addr, source))?;
        stream.set_nodelay(true).map_err(|source| Failure::connect(addr, source))?;
        let Some(tls) = &self.config.tls else {
            return Ok(Conn::Plain(stream));
        };
        self.tls_handshake(addr, stream, tls).map_err(|source| Failure::connect(addr, source))
    }

    /// Completes a TLS handshake on a fresh connection (bounded by `connect_timeout`), so
    /// that a refused certificate is a connect failure: nothing was sent.
    fn tls_handshake(
        &self,
        addr: SocketAddr,
        stream: TcpStream,
        tls: &ClientTls,
    ) -> io::Result<Conn> {
        let session = rustls::ClientConnection::new(tls.config.clone(), tls.server_name.clone())
            .map_err(io::Error::other)?;
        let mut conn = rustls::StreamOwned::new(session, stream);
        conn.sock.set_read_timeout(Some(self.config.connect_timeout))?;
        conn.sock.set_write_timeout(Some(self.config.connect_timeout))?;
        while conn.conn.is_handshaking() {
            conn.conn.complete_io(&mut conn.sock).map_err(|error| {
                tracing::warn!(%addr, %error, "TLS handshake with the node failed");
                error
            })?;
        }
        Ok(Conn::Tls(Box::new(conn)))
    }

    fn checkin(&self, addr: SocketAddr, stream: Conn) {
        let mut pool = self.pool.lock().expect("pool lock");
        let idle = pool.entry(addr).or_default();
        if idle.len() < self.config.idle_connections_per_address_max {
            idle.push(stream);
        }
    }
}

/// Calls to one node, without routing or retries (see [`Client::node`]). A partition's
/// request goes to the node's owning shard: port + `partition % shards`.
#[derive(Debug, Clone, Copy)]
pub struct NodeClient<'a> {
    client: &'a Client,
    node: SocketAddr,
}

impl NodeClient<'_> {
    /// The client address of this node's shard owning `partition`.
    pub fn shard_address(&self, partition: PartitionId) -> Result<SocketAddr, ClientError> {
        let shards = match self.client.shards() {
            Ok(shards) => shards,
            // The cluster's bootstrap nodes may be down: ask this node itself.
            Err(_) => self.metadata()?.shards,
        };
        Ok(shard_address(self.node, partition, shards))
    }

    /// This node's view of every partition's leader.
    pub fn metadata(&self) -> Result<MetadataResponse, ClientError> {
        let request = Request::Metadata { partitions: Vec::new() };
        match self.client.request_at(self.node, &request)? {
            Response::Metadata(m) => Ok(m),
            other => Err(unexpected(self.node, "metadata", other)),
        }
    }

    /// This node's status of `partition`.
    pub fn status(&self, partition: PartitionId) -> Result<GroupStatus, ClientError> {
        let addr = self.shard_address(partition)?;
        match self.client.request_at(addr, &Request::GroupStatus { partition })? {
            Response::GroupStatus(s) => Ok(s),
            other => Err(unexpected(addr, "status", other)),
        }
    }

    /// Fetch from this node only (`ReplicaCommitted` reads what this replica knows committed).
    pub fn fetch(
        &self,
        partition: PartitionId,
        offset: Offset,
        max_bytes: u32,
        wait: Duration,
        consistency: Consistency,
    ) -> Result<FetchResponse, ClientError> {
        let addr = self.shard_address(partition)?;
        let request = fetch_request(partition, offset, max_bytes, wait, consistency);
        match self.client.request_at(addr, &request)? {
            Response::Fetch(r) => Ok(r),
            other => Err(unexpected(addr, "fetch", other)),
        }
    }

    /// Produce to this node only (a non-leader answers `NotLeader`, returned as an error).
    pub fn produce(
        &self,
        partition: PartitionId,
        acks: Acks,
        records: &[&[u8]],
    ) -> Result<ProduceResponse, ClientError> {
        let addr = self.shard_address(partition)?;
        let batch = build_batch(records)?;
        let request = Request::Produce(ProduceRequest { partition, acks, batch });
        match self.client.request_at(addr, &request)? {
            Response::Produce(r) => Ok(r),
            other => Err(unexpected(addr, "produce", other)),
        }
    }
}

/// Builds a produce batch of `records` with a zero stamp (contract decision 3): term, index,
/// base offset and prev crc 0; record count, timestamps (now) and checksums filled in.
pub fn build_batch(records: &[&[u8]]) -> Result<Bytes, ClientError> {
    if records.is_empty() {
        return Err(ClientError::EmptyBatch);
    }
    let mut builder = RecordsBuilder::new(BATCH_SIZE_MAX);
    for record in records {
        builder.push(record).map_err(ClientError::Batch)?;
    }
    let records = builder.finish();
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
    let stamp = BatchStamp {
        term: Term(0),
        index: LogIndex(0),
        base_offset: Offset(0),
        record_count: records.count,
        flags: 0,
        first_timestamp_ms: now_ms,
        max_timestamp_ms: now_ms,
        prev_crc: 0,
    };
    Ok(encode_batch(&stamp, &records.bytes))
}

/// The records of fetched batches, each batch checksum-verified first; control batches
/// (Raft no-ops, membership) carry no records and are skipped. `from` drops records below
/// it (a fetch returns whole batches).
pub fn decode_records(
    addr: SocketAddr,
    batches: &[Bytes],
    from: Offset,
) -> Result<Vec<FetchedRecord>, ClientError> {
    let mut out = Vec::new();
    for batch in batches {
        let view = decode_batch(batch, BATCH_SIZE_MAX)
            .map_err(|source| ClientError::CorruptBatch { addr, source })?;
        if view.header().is_control() {
            continue;
        }
        let base = view.header().base_offset().0;
        let timestamp_ms = view.header().first_timestamp_ms.get();
        for (i, value) in view.records().enumerate() {
            let offset = Offset(base + i as u64);
            if offset >= from {
                let value = batch.slice_ref(value);
                out.push(FetchedRecord { offset, value, timestamp_ms });
            }
        }
    }
    Ok(out)
}

/// The offset after the last of `batches` (the next offset to fetch), or `None` if there are
/// none or the last one is not a valid batch.
pub fn next_offset(batches: &[Bytes]) -> Option<Offset> {
    let last = batches.last()?;
    let header = ringlog_format::batch::peek_header(last, BATCH_SIZE_MAX).ok()?;
    Some(header.next_offset())
}

/// Parses `host:port,host:port,...` (names are resolved; each may give several addresses).
pub fn parse_addresses(input: &str) -> Result<Vec<SocketAddr>, ClientError> {
    let mut out = Vec::new();
    for part in input.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let resolved = part.to_socket_addrs().map_err(|error| ClientError::Resolve {
            input: part.to_string(),
            reason: error.to_string(),
        })?;
        out.extend(resolved);
    }
    if out.is_empty() {
        return Err(ClientError::NoBootstrap);
    }
    Ok(out)
}

/// The client address of shard `partition % shards` of the node whose shard 0 is `node`.
pub fn shard_address(node: SocketAddr, partition: PartitionId, shards: u16) -> SocketAddr {
    let shard = partition.0 % u32::from(shards.max(1));
    let mut addr = node;
    addr.set_port(node.port().wrapping_add(shard as u16));
    addr
}

fn find_partition(
    metadata: &MetadataResponse,
    partition: PartitionId,
) -> Result<&PartitionMetadata, ClientError> {
    metadata
        .partitions
        .iter()
        .find(|p| p.partition == partition)
        .ok_or(ClientError::UnknownPartition { partition, partitions: metadata.partitions.len() })
}

fn fetch_request(
    partition: PartitionId,
    offset: Offset,
    max_bytes: u32,
    wait: Duration,
    consistency: Consistency,
) -> Request {
    let max_bytes = max_bytes.min(FETCH_BYTES_MAX as u32);
    let wait_ms = wait.min(FETCH_WAIT_MAX).as_millis() as u32;
    Request::Fetch(FetchRequest { partition, offset, max_bytes, wait_ms, consistency })
}

/// How much longer than the request timeout the reply may take.
fn request_wait(request: &Request) -> Duration {
    match request {
        Request::Fetch(f) => Duration::from_millis(f.wait_ms.into()),
        _ => Duration::ZERO,
    }
}

fn unexpected(addr: SocketAddr, expected: &'static str, response: Response) -> ClientError {
    match response {
        Response::Error(reply) => ClientError::Server { addr, reply },
        other => ClientError::UnexpectedResponse { addr, expected, found: other.kind() },
    }
}

/// Writes a frame's chunks; small frames are gathered into one write (TCP_NODELAY is on).
fn write_frame(stream: &mut impl Write, chunks: &[Bytes]) -> io::Result<()> {
    const GATHER_MAX: usize = 64 * 1024;
    let total: usize = chunks.iter().map(Bytes::len).sum();
    if total <= GATHER_MAX {
        let mut buf = Vec::with_capacity(total);
        for chunk in chunks {
            buf.extend_from_slice(chunk);
        }
        stream.write_all(&buf)?;
        return stream.flush();
    }
    for chunk in chunks {
        stream.write_all(chunk)?;
    }
    // TLS: push the last records out (a no-op on plain TCP).
    stream.flush()
}

/// One connection to a node: plain TCP or a TLS session over it.
#[derive(Debug)]
enum Conn {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
}

impl Conn {
    fn tcp(&self) -> &TcpStream {
        match self {
            Conn::Plain(stream) => stream,
            Conn::Tls(tls) => &tls.sock,
        }
    }
}

impl Read for Conn {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Conn::Plain(stream) => stream.read(buf),
            Conn::Tls(tls) => tls.read(buf),
        }
    }
}

impl Write for Conn {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Conn::Plain(stream) => stream.write(buf),
            Conn::Tls(tls) => tls.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Conn::Plain(stream) => stream.flush(),
            Conn::Tls(tls) => tls.flush(),
        }
    }
}

/// Whether a pooled connection is still usable: no EOF, no error and no unsolicited bytes
/// waiting (a node closes connections it drops; a reused dead one would turn a safe retry
/// into an indeterminate one).
fn is_open(stream: &TcpStream) -> bool {
    if stream.set_nonblocking(true).is_err() {
        return false;
    }
    let mut byte = [0u8; 1];
    let open = matches!(stream.peek(&mut byte), Err(e) if e.kind() == io::ErrorKind::WouldBlock);
    open && stream.set_nonblocking(false).is_ok()
}

/// `delay` shortened by up to a half, from a cheap per-call pseudo-random source.
fn jitter(delay: Duration) -> Duration {
    static STATE: AtomicU64 = AtomicU64::new(0x9E37_79B9_7F4A_7C15);
    let mut x = STATE.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed);
    x ^= x >> 33;
    x = x.wrapping_mul(0xFF51_AFD7_ED55_8CCD);
    x ^= x >> 33;
    let nanos = delay.as_nanos() as u64;
    Duration::from_nanos(nanos / 2 + x % (nanos / 2 + 1))
}

/// A failed exchange, and whether the request may have reached the node.
struct Failure {
    sent: bool,
    error: FailureKind,
}

enum FailureKind {
    Connect(SocketAddr, io::Error),
    Io(io::Error),
    /// The node answered, but with something unusable.
    Answered(ClientError),
}

impl Failure {
    fn connect(addr: SocketAddr, source: io::Error) -> Failure {
        Failure { sent: false, error: FailureKind::Connect(addr, source) }
    }

    fn not_sent(source: io::Error) -> Failure {
        Failure { sent: false, error: FailureKind::Io(source) }
    }

    fn sent(source: io::Error) -> Failure {
        Failure { sent: true, error: FailureKind::Io(source) }
    }

    fn answered(error: ClientError) -> Failure {
        Failure { sent: true, error: FailureKind::Answered(error) }
    }

    /// The error a caller sees: an IO failure after sending a `mutating` request is
    /// indeterminate (it may have been applied).
    fn into_error(self, addr: SocketAddr, mutating: bool) -> ClientError {
        match self.error {
            FailureKind::Connect(addr, source) => ClientError::Connect { addr, source },
            FailureKind::Io(source) if self.sent && mutating => {
                ClientError::Indeterminate { addr, reason: source.to_string() }
            }
            FailureKind::Io(source) => ClientError::Io { addr, source },
            FailureKind::Answered(error) => error,
        }
    }
}
