//! Client server: one per shard, on glommio TCP (TCP_NODELAY), listening on
//! `client.port + shard`. Byte layouts: docs/format.md#frame and #protocol.
//!
//! A connection is read by one loop and written by another (the socket is split): the reader
//! decodes frames (`ringlog_net::FrameDecoder`, bounded by `net.frame_body_size_max`) and
//! requests (`Request::decode`), and runs each request as its own task, so up to
//! [`PIPELINE_REQUESTS_MAX`] requests are in flight per connection (pipelining; at the limit
//! the reader stops reading, which pushes back on the client through TCP). Each response
//! carries its request's id and goes through a bounded queue to the writer, in completion
//! order.
//!
//! Dispatch: a request for a partition this shard owns goes to its `PartitionReplicator`; one
//! for a partition another shard of this node owns is forwarded through that shard's mailbox
//! (never dropped: a full mailbox answers `Backpressure`); `Metadata` gathers every shard's
//! leaders (the leader's client address of the owning shard, from `leader_hint`).
//!
//! Bad input — random bytes, a bad header or checksum, an oversize length, an unknown kind, a
//! wrong version, a body that does not decode — gets an `ErrorReply`, a rate-limited
//! `tracing::warn!` with the reason, a count in `ShardSnapshot::rejected_inputs`, and the close
//! of that connection only (write side shut after the reply, then a bounded drain so the close
//! does not destroy the reply with a RST). Connections over `net.client_connections_max` are
//! refused the same way, at most `REFUSALS_IN_FLIGHT_MAX` at once (each within
//! `net.handshake_timeout_ms`); more are closed on accept without a reply, so the server holds
//! at most the limit plus that many sockets. Time bounds: a request must arrive whole within
//! `net.request_timeout_ms` of its first byte (else a `Timeout` reply, a count of kind
//! `client_slow_request`, and the close: a client trickling bytes cannot hold a slot); a
//! connection with no request in flight that sends nothing for `net.idle_timeout_ms` is
//! closed; a write that takes longer than `net.write_timeout_ms` breaks the connection. A
//! closed connection's buffers are counted for the allocator trim (`crate::memory`).
//!
//! Stopping: graceful — stop accepting; requests already running go on while the shard hands
//! its leaderships over (`ShardCore::hand_off`), so a produce gets its true outcome (committed
//! under the new leader, or `NotLeader` if truncated); a request read from then on is
//! answered at once, never started (`NotLeader`, naming the new leader once it is known);
//! a connection closes (FIN, then a bounded linger) as soon as nothing is in flight, so the
//! drain lasts as long as the slowest running request (at most [`GRACEFUL_DRAIN_MAX`]);
//! immediate — drop every connection now.
//!
//! TLS (`[tls] mode = "tls"`): every accepted connection first completes a TLS handshake
//! (bounded by `net.handshake_timeout_ms`; client certificates are required iff
//! `tls.client_ca` is set) and is then served exactly as a plain one, over
//! `ringlog_net::transport::NetStream`. A failed handshake is a rejected input of kind
//! `client_tls` (counted and logged with the reason); nothing is answered in plaintext.
//!
//! Admin requests (`[admin]`, crate::admin): a connection is an admin's when its verified
//! client certificate carries an admin name (checked once, after the TLS handshake), in open
//! mode, or once it sent an `Authenticate` whose token matched — handled in the reader, in
//! order, before the next request is read, so a pipelined admin request right behind it sees
//! the identity. A refused token is answered `Unauthorized` and closes the connection (kind
//! `client_auth`); an admin request (`TransferLeader`, `ChangeMembership`) on a connection
//! without an identity is answered `Unauthorized` without being started, and counted (kind
//! `client_unauthorized`); the connection goes on. Forwarded requests were checked by the
//! shard that read them.
//!
//! Invariants: a connection buffers at most one frame plus one read chunk of input and
//! [`PIPELINE_REQUESTS_MAX`] responses of output; every decoded request gets exactly one
//! response unless its connection broke first; nothing a connection sends affects another.

#![forbid(unsafe_code)]

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use futures_lite::io::{ReadHalf, WriteHalf};
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::channels::local_channel::{self, LocalReceiver, LocalSender};
use glommio::net::{TcpListener, TcpStream};
use glommio::sync::Semaphore;
use glommio::{Task, TaskQueueHandle};
use ringlog_engine::runtime_mailbox::{mailbox, SendFailure};
use ringlog_net::frame::FrameDecoder;
use ringlog_net::limits::{
    READ_CHUNK_SIZE, REFUSALS_IN_FLIGHT_MAX, WRITE_GATHER_BYTES_MAX, ZERO_COPY_PAYLOAD_MIN,
};
use ringlog_net::protocol::{
    ErrorReply, FetchResponse, MetadataResponse, PartitionMetadata, ProduceResponse, Request,
    Response,
};
use ringlog_net::tls::TlsConfig;
use ringlog_net::transport::NetStream;
use ringlog_net::{ClusterId, FrameBuf, PartitionId, RequestId, ShardId};
use ringlog_raft::NodeId;

use super::api::{NodeAddresses, NodeError, ShardSnapshot, ShutdownMode};
use super::core::{PartitionReplicator, ShardCore};
use super::latency::{RequestLatency, Timed};
use super::shard_main::{spawn, Command, BACKPRESSURE_RETRY_MS};
use super::{Mailboxes, NUDGE_AFTER, READ_WAIT_MAX, REPLY_WAIT_MAX, WATCHDOG_INTERVAL};
use crate::admin::{AdminIdentity, AdminPolicy};
use crate::config::NodeConfig;
use crate::memory::{MemoryTrim, TRIM_INTERVAL};

/// Requests in flight on one connection; past it the reader waits (TCP backpressure). The
/// client's pipeline window is bounded by the same constant.
pub const PIPELINE_REQUESTS_MAX: usize = ringlog_net::limits::PIPELINE_REQUESTS_MAX;
/// Longest a graceful stop waits for in-flight requests before closing connections.
pub const GRACEFUL_DRAIN_MAX: Duration = Duration::from_secs(5);
/// After an error reply: bytes read and discarded, and for how long, before closing.
const LINGER_BYTES_MAX: usize = 256 * 1024;
const LINGER_TIMEOUT: Duration = Duration::from_millis(200);
/// Rejected-input log lines per `REJECT_LOG_WINDOW`; more are counted, not logged.
const REJECT_LOGS_PER_WINDOW: u32 = 10;
const REJECT_LOG_WINDOW: Duration = Duration::from_secs(1);
/// A stopping connection with nothing in flight still answers (`NotLeader`, never started)
/// the requests that arrive this long before it closes, so those the client sent while the
/// last answers were on their way are answered rather than cut by the close.
const STOP_LAST_READ: Duration = Duration::from_millis(20);
/// How often a stopping server checks whether its connections are gone.
const DRAIN_CHECK_INTERVAL: Duration = Duration::from_millis(10);

/// Kinds counted in `ShardSnapshot::rejected_inputs`.
pub const REJECT_CLIENT_FRAME: &str = "client_frame";
pub const REJECT_CLIENT_BODY: &str = "client_body";
pub const REJECT_CLIENT_CONNECTION_LIMIT: &str = "client_connection_limit";
/// A request that did not arrive whole within `net.request_timeout_ms` of its first byte.
pub const REJECT_CLIENT_SLOW_REQUEST: &str = "client_slow_request";
/// A client connection whose TLS handshake failed.
pub const REJECT_CLIENT_TLS: &str = "client_tls";
/// An `Authenticate` whose token was refused (the connection is closed).
pub const REJECT_CLIENT_AUTH: &str = "client_auth";
/// An admin request on a connection without an admin identity (refused; the connection goes
/// on).
pub const REJECT_CLIENT_UNAUTHORIZED: &str = "client_unauthorized";

/// Whether a request for another shard's partition may be forwarded there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Forwarding {
    /// Received from a client: forward to the owning shard.
    Allowed,
    /// Already forwarded: this shard must own it.
    Never,
}

/// A one-way latch: `wait` resolves once `fire` was called (built on a closed semaphore).
pub(crate) struct Event {
    semaphore: Semaphore,
    fired: Cell<bool>,
}

impl Default for Event {
    fn default() -> Self {
        Event { semaphore: Semaphore::new(0), fired: Cell::new(false) }
    }
}

impl Event {
    pub(crate) fn fire(&self) {
        self.fired.set(true);
        self.semaphore.close();
    }

    pub(crate) fn is_fired(&self) -> bool {
        self.fired.get()
    }

    pub(crate) async fn wait(&self) {
        // No permit is ever signalled: this only returns (with an error) once closed.
        let _ = self.semaphore.acquire(1).await;
    }
}

/// Limits of the client server, from the config.
#[derive(Clone, Copy, Debug)]
struct ServerLimits {
    connections_max: u64,
    frame_body_size_max: usize,
    batch_size_max: usize,
    idle_timeout: Duration,
    write_timeout: Duration,
    handshake_timeout: Duration,
    /// `net.request_timeout_ms`: a request must arrive whole this long after its first byte.
    request_timeout: Duration,
}

/// What the server and the shard's command loop share on one shard.
pub(crate) struct ServerShared {
    pub shard: usize,
    pub shards: usize,
    pub partitions: u32,
    pub core: Rc<ShardCore>,
    node: NodeId,
    cluster: ClusterId,
    client: SocketAddr,
    mailboxes: Arc<Mailboxes>,
    limits: ServerLimits,
    connections: Cell<u64>,
    /// Buffer bytes released by closed connections, for the memory trim.
    memory: MemoryTrim,
    /// Connections over the limit being refused with a reason (at most
    /// `REFUSALS_IN_FLIGHT_MAX`, each for at most `net.handshake_timeout_ms`).
    refusing: Cell<usize>,
    rejected: RefCell<BTreeMap<&'static str, u64>>,
    reject_log: RejectLog,
    /// Produce and fetch latencies of the requests this shard's connections read.
    latency: RefCell<RequestLatency>,
    /// `[tls]`: the client TLS configuration (`None`: plaintext).
    tls: Option<Arc<TlsConfig>>,
    /// `[admin]`: who may send admin requests.
    admin: Arc<AdminPolicy>,
}

/// Rate limit of rejected-input log lines.
#[derive(Debug)]
struct RejectLog {
    window_start: Cell<Instant>,
    logged: Cell<u32>,
    suppressed: Cell<u64>,
}

impl ServerShared {
    pub(crate) fn new(
        shard: usize,
        shards: usize,
        config: &NodeConfig,
        client: SocketAddr,
        core: Rc<ShardCore>,
        mailboxes: Arc<Mailboxes>,
        admin: Arc<AdminPolicy>,
    ) -> ServerShared {
        ServerShared {
            shard,
            shards,
            partitions: config.partitions as u32,
            node: NodeId(config.node_id),
            cluster: ClusterId(config.cluster_id),
            client,
            mailboxes,
            limits: ServerLimits {
                connections_max: config.net.client_connections_max,
                frame_body_size_max: config.net.frame_body_size_max as usize,
                batch_size_max: config.storage.batch_size_max as usize,
                idle_timeout: Duration::from_millis(config.net.idle_timeout_ms),
                write_timeout: Duration::from_millis(config.net.write_timeout_ms),
                handshake_timeout: Duration::from_millis(config.net.handshake_timeout_ms),
                request_timeout: Duration::from_millis(config.net.request_timeout_ms),
            },
            tls: core.tls(),
            admin,
            core,
            connections: Cell::new(0),
            memory: MemoryTrim::default(),
            refusing: Cell::new(0),
            rejected: RefCell::new(BTreeMap::new()),
            latency: RefCell::new(RequestLatency::default()),
            reject_log: RejectLog {
                window_start: Cell::new(Instant::now()),
                logged: Cell::new(0),
                suppressed: Cell::new(0),
            },
        }
    }

    /// The core's snapshot with the server's own counters.
    pub(crate) fn snapshot(&self) -> ShardSnapshot {
        let mut snapshot = self.core.snapshot();
        snapshot.shard = self.shard;
        snapshot.client_connections = self.connections.get();
        for (kind, count) in self.rejected.borrow().iter() {
            snapshot.rejected_inputs.push((kind.to_string(), *count));
        }
        let latency = self.latency.borrow();
        snapshot.produce_latency_us = latency.produce();
        snapshot.fetch_latency_us = latency.fetch();
        snapshot
    }

    /// Counts a rejected input and logs why (rate limited); the connection is closed.
    fn reject(&self, kind: &'static str, peer: Option<SocketAddr>, reason: &str) {
        self.count_rejected(kind, peer, "closing client connection", reason);
    }

    /// Counts a refused request and logs why (rate limited); the connection goes on.
    fn refuse(&self, kind: &'static str, peer: Option<SocketAddr>, reason: &str) {
        self.count_rejected(kind, peer, "refused a client request", reason);
    }

    fn count_rejected(
        &self,
        kind: &'static str,
        peer: Option<SocketAddr>,
        action: &str,
        reason: &str,
    ) {
        *self.rejected.borrow_mut().entry(kind).or_insert(0) += 1;
        let log = &self.reject_log;
        if log.window_start.get().elapsed() >= REJECT_LOG_WINDOW {
            log.window_start.set(Instant::now());
            log.logged.set(0);
        }
        if log.logged.get() >= REJECT_LOGS_PER_WINDOW {
            log.suppressed.set(log.suppressed.get() + 1);
            return;
        }
        log.logged.set(log.logged.get() + 1);
        let suppressed = log.suppressed.replace(0);
        tracing::warn!(
            shard = self.shard,
            peer = ?peer,
            kind,
            suppressed,
            "{action}: {reason}"
        );
    }
}

/// One shard's client server (see the module docs).
pub(crate) struct ClientServer {
    shared: Rc<ServerShared>,
    accept: RefCell<Option<Task<()>>>,
    /// Gives memory back after bursts of closed connections (`crate::memory`).
    _trim: Option<Task<()>>,
    /// Graceful stop: connections stop reading new requests.
    stop_reading: Rc<Event>,
    /// Immediate stop: connections end now.
    kill: Rc<Event>,
}

impl ClientServer {
    /// Starts accepting on `listener` (already bound).
    pub(crate) fn start(
        listener: TcpListener,
        shared: Rc<ServerShared>,
        queue: TaskQueueHandle,
    ) -> Rc<ClientServer> {
        let stop_reading = Rc::new(Event::default());
        let kill = Rc::new(Event::default());
        let accept =
            accept_loop(listener, shared.clone(), stop_reading.clone(), kill.clone(), queue);
        let accept = match glommio::spawn_local_into(accept, queue) {
            Ok(task) => Some(task),
            Err(error) => {
                tracing::error!(shard = shared.shard, %error, "cannot spawn the accept loop");
                None
            }
        };
        let memory = shared.clone();
        let trim = async move {
            let mut peer_closed = memory.core.peer_connections_closed();
            loop {
                glommio::timer::sleep(TRIM_INTERVAL).await;
                let now = memory.core.peer_connections_closed();
                memory.memory.closed(now.saturating_sub(peer_closed));
                peer_closed = now;
                memory.memory.trim_if_worth_it();
            }
        };
        let trim = glommio::spawn_local_into(trim, queue).ok();
        Rc::new(ClientServer {
            shared,
            accept: RefCell::new(accept),
            _trim: trim,
            stop_reading,
            kill,
        })
    }

    /// Stops the server; see the module docs. Idempotent; an immediate stop cuts a graceful
    /// one short.
    pub(crate) async fn stop(&self, mode: ShutdownMode) {
        drop(self.accept.borrow_mut().take());
        if mode == ShutdownMode::Graceful && !self.kill.is_fired() {
            self.stop_reading.fire();
            let deadline = Instant::now() + GRACEFUL_DRAIN_MAX;
            while self.shared.connections.get() > 0
                && Instant::now() < deadline
                && !self.kill.is_fired()
            {
                glommio::timer::sleep(DRAIN_CHECK_INTERVAL).await;
            }
        }
        self.kill.fire();
    }
}

async fn accept_loop(
    listener: TcpListener,
    shared: Rc<ServerShared>,
    stop_reading: Rc<Event>,
    kill: Rc<Event>,
    queue: TaskQueueHandle,
) {
    loop {
        let stream = match listener.accept().await {
            Ok(stream) => stream,
            Err(error) => {
                // EMFILE and friends: back off briefly instead of spinning.
                tracing::warn!(shard = shared.shard, %error, "accept failed");
                glommio::timer::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let peer = stream.peer_addr().ok();
        if shared.connections.get() >= shared.limits.connections_max {
            let reason = format!(
                "too many client connections (net.client_connections_max = {})",
                shared.limits.connections_max
            );
            shared.reject(REJECT_CLIENT_CONNECTION_LIMIT, peer, &reason);
            if shared.refusing.get() >= REFUSALS_IN_FLIGHT_MAX {
                // Closed now, without a reason: refusals hold sockets too.
                drop(stream);
                continue;
            }
            shared.refusing.set(shared.refusing.get() + 1);
            let reply = ErrorReply::Rejected { reason };
            let (refused, bound) = (shared.clone(), shared.limits.handshake_timeout);
            spawn(queue, async move {
                let refuse = refuse_connection(stream, refused.clone(), reply);
                futures_lite::future::or(refuse, glommio::timer::sleep(bound)).await;
                refused.refusing.set(refused.refusing.get() - 1);
            });
            continue;
        }
        shared.connections.set(shared.connections.get() + 1);
        let connection = Connection {
            shared: shared.clone(),
            peer,
            identity: RefCell::new(None),
            stop_reading: stop_reading.clone(),
            abort: Rc::new(Event::default()),
            inflight: Rc::new(Semaphore::new(PIPELINE_REQUESTS_MAX as u64)),
            queue,
        };
        let kill = kill.clone();
        let counted = shared.clone();
        spawn(queue, async move {
            futures_lite::future::or(connection.run(stream), kill.wait()).await;
            counted.connections.set(counted.connections.get() - 1);
        });
    }
}

/// The connection as plain TCP, or after a TLS handshake; a failed handshake is counted and
/// logged (`None`).
async fn secure(stream: TcpStream, shared: &ServerShared) -> Option<NetStream> {
    let peer = stream.peer_addr().ok();
    if let Err(error) = stream.set_nodelay(true) {
        tracing::debug!(%error, "cannot set TCP_NODELAY on a client connection");
    }
    let Some(tls) = &shared.tls else { return Some(NetStream::Plain(stream)) };
    let config = tls.client_server.clone();
    match NetStream::accept_tls(stream, config, shared.limits.handshake_timeout).await {
        Ok(stream) => Some(stream),
        Err(error) => {
            shared.reject(REJECT_CLIENT_TLS, peer, &format!("TLS handshake failed: {error}"));
            None
        }
    }
}

/// Sends `reply` to a connection refused at accept, then closes it.
async fn refuse_connection(stream: TcpStream, shared: Rc<ServerShared>, reply: ErrorReply) {
    let write_timeout = shared.limits.write_timeout;
    let Some(stream) = secure(stream, &shared).await else { return };
    let (mut reader, mut writer) = futures_lite::io::split(stream);
    let frame = reply.encode(RequestId(0));
    if write_frame(&mut writer, &frame, write_timeout).await.is_ok() {
        let _ = writer.close().await;
        linger(&mut reader).await;
    }
}

/// What the reader hands the writer.
enum Outgoing {
    Frame(FrameBuf),
    /// Write everything before this, shut the write side, end.
    Close,
}

/// One client connection.
struct Connection {
    shared: Rc<ServerShared>,
    peer: Option<SocketAddr>,
    /// How this connection proved it is an admin's (`None`: it did not).
    identity: RefCell<Option<AdminIdentity>>,
    stop_reading: Rc<Event>,
    /// The writer failed: the reader stops too.
    abort: Rc<Event>,
    inflight: Rc<Semaphore>,
    queue: TaskQueueHandle,
}

/// Why the reader stopped.
enum ReadEnd {
    /// Clean end (EOF, idle, stop): answer what is in flight, then close.
    Drain,
    /// Bad input: the error reply is queued; close now.
    Reject,
    /// The writer failed or the socket broke: nothing more to say.
    Broken,
}

impl Connection {
    async fn run(self, stream: TcpStream) {
        let Some(stream) = secure(stream, &self.shared).await else { return };
        let identity = self.shared.admin.connection_identity(stream.peer_certificates());
        if let Some(identity) = &identity {
            tracing::debug!(shard = self.shared.shard, peer = ?self.peer, %identity, "admin client");
        }
        *self.identity.borrow_mut() = identity;
        let (mut reader, writer) = futures_lite::io::split(stream);
        // Room for every in-flight response plus an error reply and the close marker.
        let (out_tx, out_rx) = local_channel::new_bounded(PIPELINE_REQUESTS_MAX + 2);
        let out_tx = Rc::new(out_tx);
        let write =
            write_loop(writer, out_rx, self.shared.limits.write_timeout, self.abort.clone());
        let mut input = Input {
            decoder: FrameDecoder::new(self.shared.limits.frame_body_size_max),
            buffer: BytesMut::new(),
            chunk: vec![0u8; READ_CHUNK_SIZE],
        };
        let read = async {
            let end = self.read_loop(&mut reader, &mut input, &out_tx).await;
            // Given back to the allocator now; counted so that a burst is trimmed.
            let held = input.buffer.capacity() + input.chunk.capacity();
            self.shared.memory.released(held as u64);
            self.shared.memory.closed(1);
            input.buffer = BytesMut::new();
            input.chunk = Vec::new();
            match end {
                ReadEnd::Drain => {
                    self.wait_inflight().await;
                    let _ = out_tx.send(Outgoing::Close).await;
                    // What the client sent after the last request read is never started;
                    // read and dropped (bounded) so the close is a FIN, not a RST that
                    // could destroy the answers just written.
                    linger(&mut reader).await;
                }
                ReadEnd::Reject => {
                    let _ = out_tx.send(Outgoing::Close).await;
                    linger(&mut reader).await;
                }
                ReadEnd::Broken => self.abort.fire(),
            }
        };
        futures_lite::future::zip(read, write).await;
    }

    /// Reads and dispatches requests until the stream ends, goes idle, the writer fails, or
    /// the input is bad; after a graceful stop began, see [`Connection::read_while_stopping`].
    async fn read_loop(
        &self,
        reader: &mut ReadHalf<NetStream>,
        input: &mut Input,
        out: &Rc<LocalSender<Outgoing>>,
    ) -> ReadEnd {
        // When the request being received must be whole (`net.request_timeout_ms` after its
        // first byte); `None` between requests.
        let mut request_deadline: Option<Instant> = None;
        loop {
            // Bounded: the decoder holds at most one frame's body plus one chunk.
            loop {
                match self.next_request(input, out).await {
                    Ok(Some((request_id, request))) => {
                        request_deadline = None;
                        let request = match self.authorize(request_id, request, out).await {
                            Authorized::Run(request) => request,
                            Authorized::Answered => continue,
                            Authorized::End(end) => return end,
                        };
                        if !self.dispatch(request_id, request, out).await {
                            return ReadEnd::Broken;
                        }
                    }
                    Ok(None) => break,
                    Err(end) => return end,
                }
            }
            if !input.decoder.is_mid_frame(&input.buffer) {
                request_deadline = None;
            } else if request_deadline.is_none() {
                request_deadline = Some(Instant::now() + self.shared.limits.request_timeout);
            }
            match self.read_some(reader, &mut input.chunk, request_deadline).await {
                ReadEvent::Data(count) => input.buffer.extend_from_slice(&input.chunk[..count]),
                ReadEvent::Slow => {
                    let timeout = self.shared.limits.request_timeout;
                    let reason = format!(
                        "request not received whole within {timeout:?} of its first byte \
                         (net.request_timeout_ms)"
                    );
                    let (kind, reply) = (REJECT_CLIENT_SLOW_REQUEST, ErrorReply::Timeout);
                    return self.reject(kind, RequestId(0), reply, &reason, out).await;
                }
                ReadEvent::Eof => {
                    self.check_finished(input);
                    return ReadEnd::Drain;
                }
                ReadEvent::Idle => return ReadEnd::Drain,
                ReadEvent::Stop => return self.read_while_stopping(reader, input, out).await,
                ReadEvent::Broken => return ReadEnd::Broken,
            }
        }
    }

    /// A graceful stop: requests already running go on (the leadership hand-off runs
    /// meanwhile, so a produce gets its true outcome); a request read from now on is answered
    /// at once and never started (`NotLeader` naming the new leader once the leadership
    /// moved, else `ShuttingDown`). The reader ends as soon as nothing is in flight, so the
    /// drain takes as long as the slowest running request, not `GRACEFUL_DRAIN_MAX`.
    async fn read_while_stopping(
        &self,
        reader: &mut ReadHalf<NetStream>,
        input: &mut Input,
        out: &Rc<LocalSender<Outgoing>>,
    ) -> ReadEnd {
        let all = PIPELINE_REQUESTS_MAX as u64;
        // Set once nothing is in flight: until then, requests still arriving are answered.
        let mut last_read_until: Option<Instant> = None;
        loop {
            loop {
                match self.next_request(input, out).await {
                    Ok(Some((request_id, request))) => {
                        let reply = stopping_reply(&self.shared, &request);
                        let frame = Response::Error(reply).encode(request_id);
                        if out.send(Outgoing::Frame(frame)).await.is_err() {
                            return ReadEnd::Broken;
                        }
                    }
                    Ok(None) => break,
                    Err(end) => return end,
                }
            }
            // Nothing in flight is checked first, and then only `STOP_LAST_READ` more is
            // read: a client that keeps sending cannot hold the connection open.
            let reading = async {
                match reader.read(&mut input.chunk).await {
                    Ok(0) => ReadEvent::Eof,
                    Ok(count) => ReadEvent::Data(count),
                    Err(_) => ReadEvent::Broken,
                }
            };
            let aborted = async {
                self.abort.wait().await;
                ReadEvent::Broken
            };
            let done = async {
                match last_read_until {
                    // A permit (released when dropped), not `acquire`, which keeps the units.
                    None => drop(self.inflight.acquire_permit(all).await),
                    Some(until) => {
                        glommio::timer::sleep(until.saturating_duration_since(Instant::now())).await
                    }
                }
                ReadEvent::Idle
            };
            let event =
                futures_lite::future::or(done, futures_lite::future::or(reading, aborted)).await;
            match event {
                ReadEvent::Data(count) => input.buffer.extend_from_slice(&input.chunk[..count]),
                ReadEvent::Eof => {
                    self.check_finished(input);
                    return ReadEnd::Drain;
                }
                ReadEvent::Idle if last_read_until.is_none() => {
                    last_read_until = Some(Instant::now() + STOP_LAST_READ);
                }
                ReadEvent::Idle | ReadEvent::Stop | ReadEvent::Slow => return ReadEnd::Drain,
                ReadEvent::Broken => return ReadEnd::Broken,
            }
        }
    }

    /// The next whole request in `input`, `None` when more bytes are needed, or how the
    /// connection ends after bad input (the error reply is queued).
    async fn next_request(
        &self,
        input: &mut Input,
        out: &Rc<LocalSender<Outgoing>>,
    ) -> Result<Option<(RequestId, Request)>, ReadEnd> {
        let frame = match input.decoder.decode(&mut input.buffer) {
            Ok(Some(frame)) => frame,
            Ok(None) => return Ok(None),
            Err(error) => {
                let reason = format!("bad frame: {error}");
                let reply = ErrorReply::for_frame_error(&error);
                return Err(self
                    .reject(REJECT_CLIENT_FRAME, RequestId(0), reply, &reason, out)
                    .await);
            }
        };
        let request_id = frame.request_id;
        match Request::decode(&frame) {
            Ok(request) => Ok(Some((request_id, request))),
            Err(error) => {
                let reason = format!("bad {:?} request: {error}", frame.kind);
                let reply = ErrorReply::Malformed { reason: reason.clone() };
                Err(self.reject(REJECT_CLIENT_BODY, request_id, reply, &reason, out).await)
            }
        }
    }

    /// Applies the admin policy (module docs) before a request runs: answers `Authenticate`
    /// here, in order, and refuses an admin request from a connection without an identity.
    async fn authorize(
        &self,
        request_id: RequestId,
        request: Request,
        out: &Rc<LocalSender<Outgoing>>,
    ) -> Authorized {
        let reply = match request {
            Request::Authenticate { credential } => {
                match self.shared.admin.authenticate(&credential.token) {
                    Ok(identity) => {
                        tracing::info!(
                            shard = self.shared.shard,
                            peer = ?self.peer,
                            %identity,
                            "client connection authenticated as admin"
                        );
                        *self.identity.borrow_mut() = Some(identity);
                        Response::Authenticated
                    }
                    Err(reason) => {
                        let reply = ErrorReply::Unauthorized { reason: reason.clone() };
                        let kind = REJECT_CLIENT_AUTH;
                        return Authorized::End(
                            self.reject(kind, request_id, reply, &reason, out).await,
                        );
                    }
                }
            }
            request if request.is_admin() && self.identity.borrow().is_none() => {
                let reason = self.shared.admin.refusal();
                let what = format!("{:?} without an admin identity: {reason}", request.kind());
                self.shared.refuse(REJECT_CLIENT_UNAUTHORIZED, self.peer, &what);
                Response::Error(ErrorReply::Unauthorized { reason })
            }
            request => return Authorized::Run(request),
        };
        match out.send(Outgoing::Frame(reply.encode(request_id))).await {
            Ok(()) => Authorized::Answered,
            Err(_) => Authorized::End(ReadEnd::Broken),
        }
    }

    /// At the end of the stream: a partial frame left over is a rejected input.
    fn check_finished(&self, input: &Input) {
        if let Err(error) = input.decoder.finish(&input.buffer) {
            let reason = format!("stream ended inside a frame: {error}");
            self.shared.reject(REJECT_CLIENT_FRAME, self.peer, &reason);
        }
    }

    /// Runs one request as its own task once a pipeline slot is free. False if the
    /// connection is being torn down.
    ///
    /// Order: replies go out as requests complete (matched by request id), but a
    /// connection's requests start in arrival order (this reader dispatches them one by one
    /// and glommio runs a queue's spawned tasks first in, first out), and a produce on the
    /// shard that owns its partition proposes its batch before its first wait
    /// (`handle_owned` → `PartitionReplicator::append`: nothing awaited before `propose`).
    /// So the produces of one connection to the owning shard are appended in the order they
    /// arrived — what the pipelined client (`ringlog_net::client::Pipeline`) relies on and
    /// `cluster_pipeline` checks. Keep `append` free of waits before its proposal. (A request
    /// forwarded from another shard crosses a mailbox first; the client sends to the owning
    /// shard's address, so its produces are not forwarded.)
    async fn dispatch(
        &self,
        request_id: RequestId,
        request: Request,
        out: &Rc<LocalSender<Outgoing>>,
    ) -> bool {
        let (arrived, timed) = (Instant::now(), timed(&request));
        let permit = futures_lite::future::or(
            async { self.inflight.clone().acquire_static_permit(1).await.ok() },
            async {
                self.abort.wait().await;
                None
            },
        )
        .await;
        let Some(permit) = permit else { return false };
        let (shared, out) = (self.shared.clone(), out.clone());
        spawn(self.queue, async move {
            let response = handle(&shared, request, Forwarding::Allowed).await;
            // A closed queue means the connection is gone: the response has nowhere to go.
            let _ = out.send(Outgoing::Frame(response.encode(request_id))).await;
            shared.latency.borrow_mut().record(timed, arrived);
            drop(permit);
        });
        true
    }

    async fn reject(
        &self,
        kind: &'static str,
        request_id: RequestId,
        reply: ErrorReply,
        reason: &str,
        out: &Rc<LocalSender<Outgoing>>,
    ) -> ReadEnd {
        self.shared.reject(kind, self.peer, reason);
        match out.send(Outgoing::Frame(reply.encode(request_id))).await {
            Ok(()) => ReadEnd::Reject,
            Err(_) => ReadEnd::Broken,
        }
    }

    /// Reads once; `request_deadline` (a request partly received) ends the wait with
    /// `Slow`, busy or not.
    async fn read_some(
        &self,
        reader: &mut ReadHalf<NetStream>,
        chunk: &mut [u8],
        request_deadline: Option<Instant>,
    ) -> ReadEvent {
        let idle_timeout = self.shared.limits.idle_timeout;
        let slow = async {
            match request_deadline {
                Some(deadline) => {
                    glommio::timer::sleep(deadline.saturating_duration_since(Instant::now())).await
                }
                None => std::future::pending::<()>().await,
            }
        };
        futures_lite::pin!(slow);
        loop {
            let event = futures_lite::future::or(
                async {
                    match reader.read(chunk).await {
                        Ok(0) => ReadEvent::Eof,
                        Ok(count) => ReadEvent::Data(count),
                        Err(error) => {
                            tracing::debug!(%error, peer = ?self.peer, "client read failed");
                            ReadEvent::Broken
                        }
                    }
                },
                futures_lite::future::or(
                    async {
                        glommio::timer::sleep(idle_timeout).await;
                        ReadEvent::Idle
                    },
                    futures_lite::future::or(
                        async {
                            self.stop_reading.wait().await;
                            ReadEvent::Stop
                        },
                        futures_lite::future::or(
                            async {
                                self.abort.wait().await;
                                ReadEvent::Broken
                            },
                            async {
                                (&mut slow).await;
                                ReadEvent::Slow
                            },
                        ),
                    ),
                ),
            )
            .await;
            // Idle only counts while no request is in flight (a long-poll fetch is not idle).
            let busy = self.inflight.available() < PIPELINE_REQUESTS_MAX as u64;
            match event {
                ReadEvent::Idle if busy => continue,
                event => return event,
            }
        }
    }

    /// Waits (bounded by `GRACEFUL_DRAIN_MAX` beyond the longest request) until every
    /// in-flight request has queued its response.
    async fn wait_inflight(&self) {
        let all = PIPELINE_REQUESTS_MAX as u64;
        let limit = REPLY_WAIT_MAX + READ_WAIT_MAX + GRACEFUL_DRAIN_MAX;
        futures_lite::future::or(
            async {
                let _ = self.inflight.acquire(all).await;
            },
            futures_lite::future::or(
                async {
                    glommio::timer::sleep(limit).await;
                },
                self.abort.wait(),
            ),
        )
        .await;
    }
}

/// What the admin policy makes of a request read.
enum Authorized {
    /// Start it.
    Run(Request),
    /// Already answered (an `Authenticate`, or a refused admin request).
    Answered,
    /// The connection ends (a refused token: the reply is queued).
    End(ReadEnd),
}

/// A connection's input: the frame decoder, the bytes not decoded yet, the read buffer.
struct Input {
    decoder: FrameDecoder,
    buffer: BytesMut,
    chunk: Vec<u8>,
}

/// The answer to a request read after a graceful stop began: never started, so it is
/// definitely not carried out and the client may send it elsewhere. A request for a
/// partition answers `NotLeader` naming the new leader once the leadership moved (no leader
/// while the hand-off is under way: this node takes nothing new); any other `ShuttingDown`.
fn stopping_reply(shared: &ServerShared, request: &Request) -> ErrorReply {
    let Some(partition) = request.partition() else { return ErrorReply::ShuttingDown };
    let owned =
        partition.0 < shared.partitions && partition.0 as usize % shared.shards == shared.shard;
    let (leader, address) = match shared.core.partition(partition).filter(|_| owned) {
        Some(replica) => replica.leader_hint(),
        None => (None, None),
    };
    match leader {
        Some(leader) if leader != shared.node => {
            ErrorReply::NotLeader { partition, leader: Some(leader), address }
        }
        _ => ErrorReply::NotLeader { partition, leader: None, address: None },
    }
}

/// Which latency histogram a request's answer is timed in.
fn timed(request: &Request) -> Timed {
    match request {
        Request::Produce(produce) => Timed::Produce(produce.acks),
        Request::Fetch(fetch) => Timed::Fetch(fetch.consistency),
        _ => Timed::Untimed,
    }
}

/// One read's outcome.
enum ReadEvent {
    Data(usize),
    Eof,
    Idle,
    Stop,
    Broken,
    /// A request partly received for longer than `net.request_timeout_ms`.
    Slow,
}

/// Writes queued frames in order until `Close` (then shuts the write side) or a failure
/// (then fires `abort` so the reader stops too).
async fn write_loop(
    mut writer: WriteHalf<NetStream>,
    queue: LocalReceiver<Outgoing>,
    write_timeout: Duration,
    abort: Rc<Event>,
) {
    loop {
        let next = futures_lite::future::or(queue.recv(), async {
            abort.wait().await;
            None
        });
        let Some(item) = next.await else { return };
        match item {
            Outgoing::Frame(frame) => {
                if let Err(error) = write_frame(&mut writer, &frame, write_timeout).await {
                    tracing::debug!(%error, "client write failed; closing the connection");
                    abort.fire();
                    return;
                }
            }
            Outgoing::Close => {
                let _ = writer.close().await;
                return;
            }
        }
    }
}

/// Writes one frame within `write_timeout`: small chunks gathered into one write, large
/// payloads written from their own buffers.
async fn write_frame(
    writer: &mut WriteHalf<NetStream>,
    frame: &FrameBuf,
    write_timeout: Duration,
) -> io::Result<()> {
    let write = async {
        let mut gathered: Vec<u8> = Vec::with_capacity(frame.len().min(WRITE_GATHER_BYTES_MAX));
        for chunk in frame.chunks() {
            if chunk.len() >= ZERO_COPY_PAYLOAD_MIN
                || gathered.len() + chunk.len() > WRITE_GATHER_BYTES_MAX
            {
                if !gathered.is_empty() {
                    writer.write_all(&gathered).await?;
                    gathered.clear();
                }
                if chunk.len() >= ZERO_COPY_PAYLOAD_MIN {
                    writer.write_all(chunk).await?;
                    continue;
                }
            }
            gathered.extend_from_slice(chunk);
        }
        if !gathered.is_empty() {
            writer.write_all(&gathered).await?;
        }
        writer.flush().await
    };
    let expire = async {
        glommio::timer::sleep(write_timeout).await;
        Err(io::Error::new(io::ErrorKind::TimedOut, format!("write took over {write_timeout:?}")))
    };
    futures_lite::future::or(write, expire).await
}

/// Reads and discards what the peer still sends (bounded in bytes and time), so that closing
/// does not turn into a RST that could destroy a reply in flight.
async fn linger(reader: &mut ReadHalf<NetStream>) {
    let drain = async {
        let mut scratch = vec![0u8; 16 * 1024];
        let mut drained = 0usize;
        while drained < LINGER_BYTES_MAX {
            match reader.read(&mut scratch).await {
                Ok(0) | Err(_) => break,
                Ok(count) => drained += count,
            }
        }
    };
    futures_lite::future::or(drain, glommio::timer::sleep(LINGER_TIMEOUT)).await;
}

/// Answers one request on the shard that received it (or, forwarded, on the owning shard).
pub(crate) async fn handle(
    shared: &Rc<ServerShared>,
    request: Request,
    forwarding: Forwarding,
) -> Response {
    let partition = match &request {
        Request::Metadata { partitions } => {
            return metadata(shared, partitions.clone(), forwarding).await;
        }
        other => match other.partition() {
            Some(partition) => partition,
            None => return internal("request without a partition"),
        },
    };
    if partition.0 >= shared.partitions {
        return unknown_partition(shared, partition);
    }
    let owner = partition.0 as usize % shared.shards;
    if owner != shared.shard {
        return match forwarding {
            Forwarding::Allowed => forward(shared, owner, request).await,
            Forwarding::Never => internal("request forwarded to a shard that does not own it"),
        };
    }
    match shared.core.partition(partition) {
        Some(replica) => handle_owned(shared, &replica, partition, request).await,
        None => unknown_partition(shared, partition),
    }
}

async fn handle_owned(
    shared: &ServerShared,
    replica: &PartitionReplicator,
    partition: PartitionId,
    request: Request,
) -> Response {
    let result = match request {
        Request::Produce(produce) => {
            let max = shared.limits.batch_size_max;
            if produce.batch.len() > max {
                let (len, max) = (produce.batch.len() as u64, max as u64);
                return Response::Error(ErrorReply::Oversize { len, max });
            }
            replica.append(produce.acks, produce.batch).await.map(|outcome| {
                Response::Produce(ProduceResponse {
                    partition,
                    base_offset: outcome.base_offset,
                    last_offset: outcome.last_offset,
                    commit: outcome.commit,
                })
            })
        }
        Request::Fetch(fetch) => {
            let wait = Duration::from_millis(fetch.wait_ms.into()).min(READ_WAIT_MAX);
            replica.read(fetch.offset, fetch.max_bytes, fetch.consistency, wait).await.map(
                |outcome| {
                    Response::Fetch(FetchResponse {
                        partition,
                        log_start: outcome.log_start,
                        commit: outcome.commit,
                        batches: outcome.batches,
                    })
                },
            )
        }
        Request::GroupStatus { .. } => Ok(Response::GroupStatus(replica.status())),
        Request::TransferLeader { to, .. } => {
            replica.transfer_leadership(to).map(|()| Response::TransferLeader { partition, to })
        }
        Request::ChangeMembership { change, peer, client, .. } => {
            let addresses = match (peer, client) {
                (Some(peer), Some(client)) => Some(NodeAddresses { peer, client }),
                (None, None) => None,
                _ => {
                    let reason = "add needs both peer and client addresses".to_string();
                    return Response::Error(ErrorReply::Malformed { reason });
                }
            };
            replica
                .change_membership(change, addresses)
                .await
                .map(|index| Response::ChangeMembership { partition, index })
        }
        Request::Metadata { .. } => return internal("metadata reached a partition handler"),
        Request::Authenticate { .. } => {
            return internal("authenticate reached a partition handler")
        }
    };
    result.unwrap_or_else(|error| Response::Error(error.to_reply()))
}

/// Where each requested partition's leader is (every partition when none is named).
async fn metadata(
    shared: &Rc<ServerShared>,
    partitions: Vec<PartitionId>,
    forwarding: Forwarding,
) -> Response {
    let wanted: Vec<PartitionId> = if partitions.is_empty() {
        (0..shared.partitions).map(PartitionId).collect()
    } else {
        partitions
    };
    if let Some(unknown) = wanted.iter().find(|p| p.0 >= shared.partitions) {
        return unknown_partition(shared, *unknown);
    }
    let mut answers: BTreeMap<PartitionId, PartitionMetadata> = BTreeMap::new();
    let mut others: BTreeMap<usize, Vec<PartitionId>> = BTreeMap::new();
    for &partition in &wanted {
        let owner = partition.0 as usize % shared.shards;
        if owner == shared.shard {
            match local_metadata(shared, partition) {
                Some(answer) => answers.insert(partition, answer),
                None => return unknown_partition(shared, partition),
            };
        } else if forwarding == Forwarding::Allowed {
            others.entry(owner).or_default().push(partition);
        } else {
            return internal("metadata forwarded to a shard that does not own it");
        }
    }
    for (owner, partitions) in others {
        match forward(shared, owner, Request::Metadata { partitions }).await {
            Response::Metadata(response) => {
                answers.extend(response.partitions.into_iter().map(|m| (m.partition, m)));
            }
            error => return error,
        }
    }
    let mut listed = Vec::with_capacity(wanted.len());
    for partition in wanted {
        match answers.get(&partition) {
            Some(answer) => listed.push(*answer),
            None => return internal("a shard left a partition out of its metadata"),
        }
    }
    Response::Metadata(MetadataResponse {
        cluster: shared.cluster,
        shards: shared.shards as u16,
        partitions: listed,
    })
}

fn local_metadata(shared: &ServerShared, partition: PartitionId) -> Option<PartitionMetadata> {
    let replica = shared.core.partition(partition)?;
    let status = replica.status();
    let (leader, address) = replica.leader_hint();
    Some(PartitionMetadata {
        partition,
        shard: ShardId(shared.shard as u16),
        leader,
        term: status.term,
        address,
    })
}

/// Runs `request` on shard `owner` of this node and waits (bounded) for its response. The
/// wait re-polls every `WATCHDOG_INTERVAL`, so a lost cross-thread wake-up costs at most that.
async fn forward(shared: &ServerShared, owner: usize, request: Request) -> Response {
    let Some(sender) = shared.mailboxes.senders.get(owner) else {
        return internal("forward to a shard that does not exist");
    };
    let wait_max = REPLY_WAIT_MAX + READ_WAIT_MAX;
    let (reply, answer) = mailbox::<Response>(1);
    match sender.try_send(Command::Serve { request, reply }) {
        Ok(()) => {}
        Err(SendFailure::Full(_)) => {
            let retry_after_ms = BACKPRESSURE_RETRY_MS;
            return Response::Error(ErrorReply::Backpressure { retry_after_ms });
        }
        Err(SendFailure::Closed(_)) => return Response::Error(ErrorReply::ShuttingDown),
    }
    let started = Instant::now();
    let mut nudged = started;
    loop {
        let received = futures_lite::future::or(async { Some(answer.recv().await) }, async {
            glommio::timer::sleep(WATCHDOG_INTERVAL).await;
            None
        })
        .await;
        match received {
            Some(Some(response)) => return response,
            // The owner dropped the reply unanswered: it is stopping.
            Some(None) => return Response::Error(ErrorReply::ShuttingDown),
            None if started.elapsed() >= wait_max => return Response::Error(ErrorReply::Timeout),
            None => {
                sender.kick();
                // A parked owner with an empty mailbox may have lost a wake-up (see
                // `Command::Nudge`); nudge it, at most every `NUDGE_AFTER`.
                if nudged.elapsed() >= NUDGE_AFTER {
                    nudged = Instant::now();
                    let _ = sender.try_send(Command::Nudge);
                }
            }
        }
    }
}

fn unknown_partition(shared: &ServerShared, partition: PartitionId) -> Response {
    let error = NodeError::UnknownPartition { partition, partitions: shared.partitions };
    Response::Error(error.to_reply())
}

fn internal(reason: &str) -> Response {
    Response::Error(ErrorReply::Internal { reason: reason.to_string() })
}

impl std::fmt::Debug for ServerShared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerShared")
            .field("node", &self.node)
            .field("shard", &self.shard)
            .field("client", &self.client)
            .finish()
    }
}
