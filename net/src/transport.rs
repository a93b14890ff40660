//! Transport: frames over glommio TCP. The only module of this crate that does IO.
//!
//! - [`FrameStream`]: one TCP connection (TCP_NODELAY) read and written as frames; used by the
//!   peer transport here and by the server and client.
//! - [`PeerListener`]: a shard's peer accept loop. Each connection must open with a
//!   [`Handshake`] of this cluster, protocol version and shard; the decoded [`PeerMessage`]s are
//!   delivered to a bounded inbox (a full inbox stops reading that connection: TCP
//!   backpressure, no unbounded buffering).
//! - [`PeerLink`]: the outgoing connection from this shard to the same shard of one remote node
//!   (a connection per (local shard, remote node) pair). `send` enqueues into a bounded queue
//!   and reports `QueueFull` instead of growing; a task writes the queue, coalescing pending
//!   heartbeats of many partitions into one frame, and reconnects with bounded exponential
//!   backoff and jitter.
//! - [`NetStream`]: plain TCP or a TLS session over it; everything above reads and writes it
//!   through `AsyncRead`/`AsyncWrite`, so plaintext and TLS share the code. With
//!   [`PeerConfig::tls`] set, peer traffic is mutual TLS (see [`crate::tls`]): the acceptor
//!   completes the TLS handshake (bounded by `handshake_timeout`) before reading the peer
//!   [`Handshake`], and a certificate it refuses is logged as `peer certificate rejected`
//!   with the reason (counted in `ListenerStats::refused`); a connector logs the same line
//!   when it refuses the acceptor's certificate or the acceptor refuses its own. Identity:
//!   the connector checks that the acceptor's certificate names the node it dialled, the
//!   acceptor that the connector's names the node its handshake claims
//!   ([`crate::tls::verify_node_identity`]; refused with `RefuseReason::WrongCertificate`).
//!
//! Invariants:
//! - A malformed frame, a body that does not decode or a batch that fails its check gets an
//!   error reply, a log line (`tracing::warn!`) with the reason, and closes *that* connection;
//!   no other connection, and no listener, is affected.
//! - Reading reserves at most `FRAME_HEADER_SIZE + frame_body_size_max` bytes per connection.
//! - A link's queue holds at most `queue_frames_max` frames and `queue_bytes_max` bytes, plus
//!   at most `HEARTBEATS_PER_FRAME_MAX` pending coalesced heartbeats (one per partition).
//! - Delivery is at most once: frames in a connection that breaks are lost (counted in
//!   `LinkStats::frames_dropped`); Raft retransmits. Frames queued while disconnected are sent
//!   after the next successful handshake, in order.
//! - Peer connections carry messages one way (connector → acceptor); the acceptor only ever
//!   writes the handshake reply and error replies.
//! - Liveness: an idle link writes a keepalive (an empty `PeerKeepalive` frame, not delivered) every
//!   `keepalive_interval`; an accepted connection silent for `idle_timeout` is closed, and a
//!   link write that does not finish within `write_timeout` breaks the connection, so a peer
//!   that vanished without a FIN or RST is noticed on both sides.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::io;
use std::net::{Shutdown, SocketAddr};
use std::pin::Pin;
use std::rc::{Rc, Weak};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::BytesMut;
use futures_lite::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use futures_rustls::{TlsAcceptor, TlsConnector};
use glommio::channels::local_channel::LocalSender;
use glommio::net::{TcpListener, TcpStream};
use glommio::{spawn_local, spawn_local_into, Task, TaskQueueHandle};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use ringlog_raft::NodeId;
use rustls::pki_types::CertificateDer;
use thiserror::Error;
use tracing::{debug, info, warn};

use crate::frame::{encode_frame, Frame, FrameBuf, FrameDecoder, FrameError, FrameKind};
use crate::ids::{ClusterId, RequestId, ShardId};
use crate::limits::{
    FRAME_BODY_SIZE_MAX, FRAME_HEADER_SIZE, HANDSHAKE_TIMEOUT, HEARTBEATS_PER_FRAME_MAX,
    LINK_KEEPALIVE_INTERVAL, LINK_QUEUE_BYTES_MAX, LINK_QUEUE_FRAMES_MAX, LINK_WRITE_TIMEOUT,
    PEER_CONNECTIONS_MAX, PEER_IDLE_TIMEOUT, READ_CHUNK_SIZE, RECONNECT_BACKOFF_INITIAL,
    RECONNECT_BACKOFF_MAX, REFUSALS_IN_FLIGHT_MAX, WRITE_GATHER_BYTES_MAX, ZERO_COPY_PAYLOAD_MIN,
};
use crate::peer::{
    BatchCheck, Handshake, HandshakeReply, PartitionHeartbeat, PartitionHeartbeatResponse,
    PeerMessage, RefuseReason, ShardLayout, PEER_PROTOCOL_VERSION,
};
use crate::protocol::ErrorReply;
use crate::tls::{is_certificate_error, tls_error, verify_node_identity, IdentityError, TlsConfig};
use crate::wire::ProtocolError;

/// Bytes read and discarded after an error reply before closing, so that the close does not
/// turn into a RST that could destroy the reply in flight ("lingering close").
const LINGER_BYTES_MAX: usize = 256 * 1024;
const LINGER_TIMEOUT: Duration = Duration::from_millis(200);

/// Why a connection (or an attempt to make one) ended.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum TransportError {
    #[error("io: {0}")]
    Io(#[from] io::Error),
    #[error("malformed frame: {0}")]
    Frame(#[from] FrameError),
    #[error("malformed message: {0}")]
    Protocol(#[from] ProtocolError),
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    #[error("connection closed by the peer")]
    Closed,
    #[error("handshake refused: {reason} ({detail})")]
    Refused { reason: RefuseReason, detail: String },
    #[error("the peer replied with an error: {0:?}")]
    ErrorReply(ErrorReply),
    #[error("unexpected {kind:?} frame")]
    UnexpectedFrame { kind: FrameKind },
    /// A TLS handshake or session failed (a refused certificate, a TLS alert, not TLS).
    #[error("TLS: {0}")]
    Tls(io::Error),
    /// The acceptor's certificate (valid for the cluster CA) is not the dialled node's.
    #[error("TLS: {0}")]
    WrongNode(#[from] IdentityError),
}

impl TransportError {
    /// An IO error that carries a rustls error becomes `Tls`.
    fn classify(self) -> TransportError {
        match self {
            TransportError::Io(error) if tls_error(&error).is_some() => TransportError::Tls(error),
            other => other,
        }
    }

    /// Whether this is a certificate refused by either side.
    pub fn is_certificate_rejection(&self) -> bool {
        match self {
            TransportError::Tls(error) => tls_error(error).is_some_and(is_certificate_error),
            TransportError::WrongNode(_) => true,
            _ => false,
        }
    }
}

/// A connection: plain TCP, or TLS over TCP on the accepting or the connecting side.
#[derive(Debug)]
pub enum NetStream {
    Plain(TcpStream),
    TlsServer(Box<futures_rustls::server::TlsStream<TcpStream>>),
    TlsClient(Box<futures_rustls::client::TlsStream<TcpStream>>),
}

impl NetStream {
    /// The TCP stream under the session.
    pub fn tcp(&self) -> &TcpStream {
        match self {
            NetStream::Plain(stream) => stream,
            NetStream::TlsServer(tls) => tls.get_ref().0,
            NetStream::TlsClient(tls) => tls.get_ref().0,
        }
    }

    /// Completes a server-side TLS handshake on `stream` within `timeout` (`Tls` error when
    /// it fails: the reason is in the error).
    pub async fn accept_tls(
        stream: TcpStream,
        config: Arc<rustls::ServerConfig>,
        timeout: Duration,
    ) -> Result<NetStream, TransportError> {
        let accept = async {
            let tls = TlsAcceptor::from(config).accept(stream).await?;
            Ok(NetStream::TlsServer(Box::new(tls)))
        };
        with_timeout(timeout, accept).await.map_err(TransportError::classify)
    }

    /// The peer's certificate chain of a TLS stream (`None`: plain, or none presented).
    pub fn peer_certificates(&self) -> Option<&[CertificateDer<'static>]> {
        match self {
            NetStream::Plain(_) => None,
            NetStream::TlsServer(tls) => tls.get_ref().1.peer_certificates(),
            NetStream::TlsClient(tls) => tls.get_ref().1.peer_certificates(),
        }
    }

    /// Completes a client-side TLS handshake on `stream` within `timeout`.
    pub async fn connect_tls(
        stream: TcpStream,
        tls: &TlsConfig,
        timeout: Duration,
    ) -> Result<NetStream, TransportError> {
        let connector = TlsConnector::from(tls.peer_client.clone());
        let name = tls.server_name.clone();
        let connect = async {
            let tls = connector.connect(name, stream).await?;
            Ok(NetStream::TlsClient(Box::new(tls)))
        };
        with_timeout(timeout, connect).await.map_err(TransportError::classify)
    }

    /// Ends the write side: a TLS `close_notify`, then a TCP half-close.
    pub async fn shutdown_write(&mut self) -> io::Result<()> {
        match self {
            NetStream::Plain(_) => {}
            NetStream::TlsServer(tls) => {
                tls.get_mut().1.send_close_notify();
                tls.flush().await?;
            }
            NetStream::TlsClient(tls) => {
                tls.get_mut().1.send_close_notify();
                tls.flush().await?;
            }
        }
        self.tcp().shutdown(Shutdown::Write).await.map_err(io::Error::from)
    }
}

impl AsyncRead for NetStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            NetStream::Plain(stream) => Pin::new(stream).poll_read(cx, buf),
            NetStream::TlsServer(tls) => Pin::new(&mut **tls).poll_read(cx, buf),
            NetStream::TlsClient(tls) => Pin::new(&mut **tls).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for NetStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            NetStream::Plain(stream) => Pin::new(stream).poll_write(cx, buf),
            NetStream::TlsServer(tls) => Pin::new(&mut **tls).poll_write(cx, buf),
            NetStream::TlsClient(tls) => Pin::new(&mut **tls).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            NetStream::Plain(stream) => Pin::new(stream).poll_flush(cx),
            NetStream::TlsServer(tls) => Pin::new(&mut **tls).poll_flush(cx),
            NetStream::TlsClient(tls) => Pin::new(&mut **tls).poll_flush(cx),
        }
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            NetStream::Plain(stream) => Pin::new(stream).poll_close(cx),
            NetStream::TlsServer(tls) => Pin::new(&mut **tls).poll_close(cx),
            NetStream::TlsClient(tls) => Pin::new(&mut **tls).poll_close(cx),
        }
    }
}

impl From<glommio::GlommioError<()>> for TransportError {
    fn from(error: glommio::GlommioError<()>) -> Self {
        TransportError::Io(error.into())
    }
}

/// One TCP connection read and written as frames.
#[derive(Debug)]
pub struct FrameStream {
    stream: NetStream,
    peer: SocketAddr,
    decoder: FrameDecoder,
    read_buf: BytesMut,
    write_buf: Vec<u8>,
}

impl FrameStream {
    /// Wraps an accepted or connected stream; sets TCP_NODELAY.
    pub fn new(stream: TcpStream, frame_body_size_max: usize) -> Result<Self, TransportError> {
        stream.set_nodelay(true)?;
        FrameStream::from_stream(NetStream::Plain(stream), frame_body_size_max)
    }

    /// Wraps a plain or TLS stream (TCP_NODELAY must already be set on plain ones: see `new`).
    pub fn from_stream(
        stream: NetStream,
        frame_body_size_max: usize,
    ) -> Result<Self, TransportError> {
        stream.tcp().set_nodelay(true)?;
        let peer = stream.tcp().peer_addr()?;
        Ok(FrameStream {
            stream,
            peer,
            decoder: FrameDecoder::new(frame_body_size_max),
            read_buf: BytesMut::new(),
            write_buf: Vec::new(),
        })
    }

    /// Connects to `addr` within `timeout`.
    pub async fn connect(
        addr: SocketAddr,
        frame_body_size_max: usize,
        timeout: Duration,
    ) -> Result<Self, TransportError> {
        let stream = TcpStream::connect_timeout(addr, timeout).await.map_err(io::Error::from)?;
        FrameStream::new(stream, frame_body_size_max)
    }

    /// Connects to `addr` and completes a mutual-TLS handshake with `tls`'s peer
    /// configuration, each step within `timeout`.
    pub async fn connect_tls(
        addr: SocketAddr,
        tls: &TlsConfig,
        frame_body_size_max: usize,
        timeout: Duration,
    ) -> Result<Self, TransportError> {
        let stream = TcpStream::connect_timeout(addr, timeout).await.map_err(io::Error::from)?;
        stream.set_nodelay(true)?;
        let stream = NetStream::connect_tls(stream, tls, timeout).await?;
        FrameStream::from_stream(stream, frame_body_size_max)
    }

    pub fn peer_addr(&self) -> SocketAddr {
        self.peer
    }

    /// The peer's certificate chain (`None`: plaintext).
    pub fn peer_certificates(&self) -> Option<&[CertificateDer<'static>]> {
        self.stream.peer_certificates()
    }

    /// The next frame; `Ok(None)` when the peer closed cleanly between two frames. Not
    /// cancel-safe: if the future is dropped mid-read (e.g. by a timeout), close the stream.
    pub async fn read_frame(&mut self) -> Result<Option<Frame>, TransportError> {
        loop {
            if let Some(frame) = self.decoder.decode(&mut self.read_buf)? {
                return Ok(Some(frame));
            }
            // Bounded: bytes_needed <= FRAME_HEADER_SIZE + body_size_max.
            let needed = self.decoder.bytes_needed(&self.read_buf);
            self.read_buf.reserve(needed.max(READ_CHUNK_SIZE));
            let filled = self.read_buf.len();
            self.read_buf.resize(filled + READ_CHUNK_SIZE, 0);
            let read = self.stream.read(&mut self.read_buf[filled..]).await;
            let count = match read {
                Ok(count) => count,
                Err(error) => {
                    self.read_buf.truncate(filled);
                    return Err(error.into());
                }
            };
            self.read_buf.truncate(filled + count);
            if count == 0 {
                self.decoder.finish(&self.read_buf)?;
                return Ok(None);
            }
        }
    }

    /// Like `read_frame`, but an end of stream is `TransportError::Closed`.
    pub async fn expect_frame(&mut self) -> Result<Frame, TransportError> {
        self.read_frame().await?.ok_or(TransportError::Closed)
    }

    pub async fn write_frame(&mut self, frame: &FrameBuf) -> Result<(), TransportError> {
        self.write_frames(std::slice::from_ref(frame)).await
    }

    /// Writes frames in order: small chunks are gathered into one write of at most
    /// `WRITE_GATHER_BYTES_MAX` bytes, large payloads are written from their own buffers.
    pub async fn write_frames(&mut self, frames: &[FrameBuf]) -> Result<(), TransportError> {
        self.write_buf.clear();
        for frame in frames {
            for chunk in frame.chunks() {
                if chunk.len() >= ZERO_COPY_PAYLOAD_MIN {
                    self.flush_gathered().await?;
                    self.stream.write_all(chunk).await?;
                    continue;
                }
                if self.write_buf.len() + chunk.len() > WRITE_GATHER_BYTES_MAX {
                    self.flush_gathered().await?;
                }
                self.write_buf.extend_from_slice(chunk);
            }
        }
        self.flush_gathered().await?;
        self.stream.flush().await?;
        Ok(())
    }

    async fn flush_gathered(&mut self) -> Result<(), TransportError> {
        if !self.write_buf.is_empty() {
            self.stream.write_all(&self.write_buf).await?;
            self.write_buf.clear();
        }
        Ok(())
    }

    /// Best effort: sends `reply`, half-closes, drains (bounded in bytes and time) what the
    /// peer still sends so that the reply is not destroyed by a RST, then closes.
    pub async fn close_with_error(mut self, request_id: RequestId, reply: &ErrorReply) {
        let _ = self.write_frame(&reply.encode(request_id)).await;
        self.close_lingering().await;
    }

    /// Half-closes, drains briefly (see `close_with_error`), and closes.
    pub async fn close_lingering(mut self) {
        let _ = self.stream.shutdown_write().await;
        let mut stream = self.stream;
        let drain = async {
            let mut scratch = vec![0u8; 16 * 1024];
            let mut drained = 0usize;
            while drained < LINGER_BYTES_MAX {
                match stream.read(&mut scratch).await {
                    Ok(0) | Err(_) => break,
                    Ok(count) => drained += count,
                }
            }
        };
        futures_lite::future::or(drain, glommio::timer::sleep(LINGER_TIMEOUT)).await;
    }
}

/// Runs `future` for at most `timeout`.
pub async fn with_timeout<T>(
    timeout: Duration,
    future: impl Future<Output = Result<T, TransportError>>,
) -> Result<T, TransportError> {
    let expire = async {
        glommio::timer::sleep(timeout).await;
        Err(TransportError::Timeout(timeout))
    };
    futures_lite::future::or(future, expire).await
}

/// Configuration of one shard's peer transport. Defaults come from `limits`.
#[derive(Clone, Debug)]
pub struct PeerConfig {
    pub cluster: ClusterId,
    pub node: NodeId,
    pub shard: ShardId,
    pub frame_body_size_max: usize,
    pub queue_frames_max: usize,
    pub queue_bytes_max: usize,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    pub handshake_timeout: Duration,
    pub connections_max: usize,
    /// An idle link sends a keepalive frame this often.
    pub keepalive_interval: Duration,
    /// An accepted connection silent for this long is closed (>= 3 keepalive intervals).
    pub idle_timeout: Duration,
    /// A link write that takes longer breaks the connection.
    pub write_timeout: Duration,
    /// This node's shards and partitions, sent in the handshake; an acceptor refuses a peer
    /// whose layout differs (`partitions == 0` on either side: not checked).
    pub layout: ShardLayout,
    /// Whether this shard holds no Raft history now (sent in handshakes and replies; the
    /// replicator keeps it current, links and the listener read it at each handshake).
    pub pristine: Arc<AtomicBool>,
    /// The glommio task queue the listener's and links' tasks run in (`None`: the queue of
    /// the task that creates them). The replicator passes its latency queue so that a disk
    /// stall never delays heartbeats.
    pub task_queue: Option<TaskQueueHandle>,
    /// Mutual TLS for peer traffic (`None`: plaintext).
    pub tls: Option<Arc<TlsConfig>>,
}

impl PeerConfig {
    pub fn new(cluster: ClusterId, node: NodeId, shard: ShardId) -> Self {
        PeerConfig {
            cluster,
            node,
            shard,
            frame_body_size_max: FRAME_BODY_SIZE_MAX,
            queue_frames_max: LINK_QUEUE_FRAMES_MAX,
            queue_bytes_max: LINK_QUEUE_BYTES_MAX,
            backoff_initial: RECONNECT_BACKOFF_INITIAL,
            backoff_max: RECONNECT_BACKOFF_MAX,
            handshake_timeout: HANDSHAKE_TIMEOUT,
            connections_max: PEER_CONNECTIONS_MAX,
            keepalive_interval: LINK_KEEPALIVE_INTERVAL,
            idle_timeout: PEER_IDLE_TIMEOUT,
            write_timeout: LINK_WRITE_TIMEOUT,
            layout: ShardLayout::default(),
            pristine: Arc::new(AtomicBool::new(false)),
            task_queue: None,
            tls: None,
        }
    }

    /// Spawns `future` into `task_queue` (or the current queue).
    fn spawn<T: 'static>(&self, future: impl Future<Output = T> + 'static) -> Task<T> {
        match self.task_queue {
            Some(queue) => spawn_local_into(future, queue).expect("the task queue exists"),
            None => spawn_local(future),
        }
    }

    fn pristine_now(&self) -> bool {
        self.pristine.load(Ordering::Relaxed)
    }
}

/// A peer message as delivered to the replicator.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Inbound {
    pub from: NodeId,
    pub shard: ShardId,
    pub message: PeerMessage,
}

/// Counters of a listener since it was bound.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ListenerStats {
    pub accepted: u64,
    /// Handshakes refused (wrong cluster, version, shard, ...).
    pub refused: u64,
    /// Connections closed because of malformed input (bad frame, body or batch).
    pub malformed: u64,
    pub messages: u64,
    pub open: u64,
}

#[derive(Debug)]
struct ListenerShared {
    config: PeerConfig,
    check: Rc<dyn BatchCheck>,
    inbox: LocalSender<Inbound>,
    stats: Cell<ListenerStats>,
}

impl ListenerShared {
    fn count(&self, update: impl FnOnce(&mut ListenerStats)) {
        let mut stats = self.stats.get();
        update(&mut stats);
        self.stats.set(stats);
    }
}

/// Connection tasks of a listener; dropping it cancels them.
#[derive(Debug, Default)]
struct Connections {
    tasks: HashMap<u64, Task<()>>,
    finished: Vec<u64>,
    next_id: u64,
    /// Tasks refusing a connection over the limit (at most `REFUSALS_IN_FLIGHT_MAX`).
    refusing: usize,
}

/// A shard's peer accept loop (see the module docs). Dropping it stops accepting and closes
/// every connection it accepted; [`PeerListener::stop_accepting`] closes only the listening
/// socket (a stopping node keeps the connections it serves until it closes).
#[derive(Debug)]
pub struct PeerListener {
    local_addr: SocketAddr,
    shared: Rc<ListenerShared>,
    accept: RefCell<Option<Task<()>>>,
    /// Held here (not only by the accept loop), so `stop_accepting` keeps the connections;
    /// declared after `accept`, so the accept loop is gone before its connections.
    _connections: Rc<RefCell<Connections>>,
}

impl PeerListener {
    /// Binds `addr` (port 0 picks a free port: glommio sets SO_REUSEPORT, so a fixed port can
    /// be shared silently) and starts accepting. Must run inside a glommio executor.
    pub fn bind(
        addr: SocketAddr,
        config: PeerConfig,
        check: Rc<dyn BatchCheck>,
        inbox: LocalSender<Inbound>,
    ) -> Result<PeerListener, TransportError> {
        let listener = TcpListener::bind(addr).map_err(io::Error::from)?;
        let local_addr = listener.local_addr().map_err(io::Error::from)?;
        let shared = Rc::new(ListenerShared {
            config,
            check,
            inbox,
            stats: Cell::new(ListenerStats::default()),
        });
        let connections = Rc::new(RefCell::new(Connections::default()));
        let accept =
            shared.config.spawn(accept_loop(listener, shared.clone(), connections.clone()));
        info!(%local_addr, node = %shared.config.node, shard = %shared.config.shard, "peer listener bound");
        let accept = RefCell::new(Some(accept));
        Ok(PeerListener { local_addr, shared, accept, _connections: connections })
    }

    /// Closes the listening socket: a new connection is refused by the kernel instead of
    /// being accepted and dropped; the connections already served stay. Idempotent.
    pub fn stop_accepting(&self) {
        drop(self.accept.borrow_mut().take());
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn stats(&self) -> ListenerStats {
        self.shared.stats.get()
    }
}

async fn accept_loop(
    listener: TcpListener,
    shared: Rc<ListenerShared>,
    connections: Rc<RefCell<Connections>>,
) {
    loop {
        let stream = match listener.accept().await {
            Ok(stream) => stream,
            Err(error) => {
                warn!(%error, "peer accept failed");
                glommio::timer::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let mut conns = connections.borrow_mut();
        for id in std::mem::take(&mut conns.finished) {
            conns.tasks.remove(&id);
        }
        let over_limit = conns.tasks.len() >= shared.config.connections_max;
        if over_limit && conns.refusing >= REFUSALS_IN_FLIGHT_MAX {
            // Closed now, without a reason: refusals hold sockets too, so a flood of
            // connections that never handshake cannot grow past the limit.
            drop(stream);
            shared.count(|s| s.refused += 1);
            continue;
        }
        conns.refusing += usize::from(over_limit);
        let id = conns.next_id;
        conns.next_id += 1;
        let task = shared.config.spawn(serve_connection(
            stream,
            shared.clone(),
            over_limit,
            Rc::downgrade(&connections),
            id,
        ));
        conns.tasks.insert(id, task);
        shared.count(|s| {
            s.accepted += 1;
            s.open = conns.tasks.len() as u64;
        });
    }
}

async fn serve_connection(
    stream: TcpStream,
    shared: Rc<ListenerShared>,
    over_limit: bool,
    connections: Weak<RefCell<Connections>>,
    id: u64,
) {
    let peer = stream.peer_addr().ok();
    match accept_stream(stream, &shared).await {
        Ok(conn) => serve_peer(conn, &shared, over_limit).await,
        Err(error) if error.is_certificate_rejection() => {
            shared.count(|s| s.refused += 1);
            warn!(?peer, "peer certificate rejected: {error}");
        }
        Err(error @ TransportError::Tls(_)) => warn!(?peer, %error, "peer TLS handshake failed"),
        Err(error) => debug!(?peer, %error, "peer connection failed before its first frame"),
    }
    if let Some(connections) = connections.upgrade() {
        let mut conns = connections.borrow_mut();
        conns.refusing -= usize::from(over_limit);
        conns.finished.push(id);
        let open = conns.tasks.len().saturating_sub(conns.finished.len());
        shared.count(|s| s.open = open as u64);
    }
}

/// Plain, or TLS completed within the handshake timeout.
async fn accept_stream(
    stream: TcpStream,
    shared: &ListenerShared,
) -> Result<FrameStream, TransportError> {
    let config = &shared.config;
    let stream = match &config.tls {
        None => {
            stream.set_nodelay(true)?;
            NetStream::Plain(stream)
        }
        Some(tls) => {
            let server = tls.peer_server.clone();
            NetStream::accept_tls(stream, server, config.handshake_timeout).await?
        }
    };
    FrameStream::from_stream(stream, config.frame_body_size_max)
}

async fn serve_peer(mut conn: FrameStream, shared: &ListenerShared, over_limit: bool) {
    let peer = conn.peer_addr();
    let config = &shared.config;
    let first = with_timeout(config.handshake_timeout, conn.expect_frame()).await;
    let handshake = match first.and_then(|frame| Ok(Handshake::decode(&frame)?)) {
        Ok(handshake) => handshake,
        Err(error) => return reject_malformed(conn, shared, RequestId(0), &error).await,
    };
    if let Some((reason, detail)) = refusal(config, &handshake, over_limit) {
        warn!(%peer, node = %handshake.node, %reason, %detail, "peer handshake refused");
        shared.count(|s| s.refused += 1);
        let _ = conn.write_frame(&HandshakeReply::Refused { reason, detail }.encode()).await;
        return conn.close_lingering().await;
    }
    // Under TLS the certificate must name the node the handshake claims.
    let identity = match config.tls {
        Some(_) => verify_node_identity(conn.peer_certificates(), handshake.node),
        None => Ok(()),
    };
    if let Err(error) = identity {
        warn!(%peer, node = %handshake.node, "peer certificate rejected: {error}");
        let (reason, detail) = (RefuseReason::WrongCertificate, error.to_string());
        shared.count(|s| s.refused += 1);
        let _ = conn.write_frame(&HandshakeReply::Refused { reason, detail }.encode()).await;
        return conn.close_lingering().await;
    }
    let accepted = HandshakeReply::Accepted {
        cluster: config.cluster,
        node: config.node,
        shard: config.shard,
        pristine: config.pristine_now(),
    };
    if let Err(error) = conn.write_frame(&accepted.encode()).await {
        return debug!(%peer, %error, "peer connection lost during handshake");
    }
    info!(%peer, node = %handshake.node, shard = %handshake.shard, "peer connected");
    loop {
        let frame = match with_timeout(config.idle_timeout, conn.read_frame()).await {
            Ok(Some(frame)) => frame,
            Ok(None) => return debug!(%peer, node = %handshake.node, "peer closed"),
            Err(TransportError::Io(error)) => {
                return debug!(%peer, %error, "peer connection lost");
            }
            Err(TransportError::Timeout(idle)) => {
                warn!(%peer, node = %handshake.node, ?idle, "closing silent peer connection");
                return conn.close_lingering().await;
            }
            Err(error) => return reject_malformed(conn, shared, RequestId(0), &error).await,
        };
        if frame.kind == FrameKind::PeerKeepalive && frame.body.is_empty() {
            continue;
        }
        let message = match PeerMessage::decode(&frame, &*shared.check) {
            Ok(message) => message,
            Err(error) => {
                return reject_malformed(conn, shared, frame.request_id, &error.into()).await
            }
        };
        shared.count(|s| s.messages += 1);
        let inbound = Inbound { from: handshake.node, shard: handshake.shard, message };
        if shared.inbox.send(inbound).await.is_err() {
            return debug!(%peer, "peer inbox closed; dropping connection");
        }
    }
}

fn refusal(
    config: &PeerConfig,
    handshake: &Handshake,
    over_limit: bool,
) -> Option<(RefuseReason, String)> {
    if handshake.cluster != config.cluster {
        let detail =
            format!("this is cluster {}, peer is in {}", config.cluster, handshake.cluster);
        return Some((RefuseReason::WrongCluster, detail));
    }
    if handshake.protocol_version != PEER_PROTOCOL_VERSION {
        let detail = format!(
            "this node speaks {}, peer speaks {}",
            PEER_PROTOCOL_VERSION, handshake.protocol_version
        );
        return Some((RefuseReason::UnsupportedVersion, detail));
    }
    if handshake.shard != config.shard {
        let detail = format!("this is shard {}, peer is shard {}", config.shard, handshake.shard);
        return Some((RefuseReason::WrongShard, detail));
    }
    let (ours, theirs) = (config.layout, handshake.layout);
    if ours.partitions != 0 && theirs.partitions != 0 && ours != theirs {
        let detail = format!(
            "this node has {} shards and {} partitions, peer has {} and {}",
            ours.shards, ours.partitions, theirs.shards, theirs.partitions
        );
        return Some((RefuseReason::WrongLayout, detail));
    }
    if handshake.node == config.node {
        return Some((RefuseReason::SelfConnection, format!("both are {}", config.node)));
    }
    if over_limit {
        let detail = format!("limit is {}", config.connections_max);
        return Some((RefuseReason::TooManyConnections, detail));
    }
    None
}

async fn reject_malformed(
    conn: FrameStream,
    shared: &ListenerShared,
    request_id: RequestId,
    error: &TransportError,
) {
    let peer = conn.peer_addr();
    let reply = match error {
        TransportError::Io(_) | TransportError::Closed => {
            return debug!(%peer, %error, "peer connection lost");
        }
        TransportError::Frame(frame_error) => ErrorReply::for_frame_error(frame_error),
        other => ErrorReply::Malformed { reason: other.to_string() },
    };
    warn!(%peer, reason = %error, "closing peer connection after malformed input");
    shared.count(|s| s.malformed += 1);
    conn.close_with_error(request_id, &reply).await;
}

/// What a link is doing now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LinkStatus {
    Connecting,
    Connected,
    /// The last handshake was refused; the link keeps retrying at backoff pace.
    Refused {
        reason: RefuseReason,
        detail: String,
    },
    /// The last connection or attempt failed; the link retries after a backoff delay.
    Disconnected {
        error: String,
    },
}

/// Counters of a link since it was created.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LinkStats {
    /// Successful handshakes.
    pub connects: u64,
    /// Established connections that broke.
    pub disconnects: u64,
    pub refusals: u64,
    /// Frames written, keepalives not included.
    pub frames_sent: u64,
    pub bytes_sent: u64,
    pub keepalives_sent: u64,
    /// Frames lost with a broken connection.
    pub frames_dropped: u64,
}

/// Why `PeerLink::send` did not enqueue.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum SendError {
    #[error("link queue full ({frames} frames, {bytes} bytes queued)")]
    QueueFull { frames: usize, bytes: usize },
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge { len: usize, max: usize },
}

#[derive(Debug, Default)]
struct Outbox {
    frames: VecDeque<FrameBuf>,
    bytes: usize,
    heartbeats: Vec<PartitionHeartbeat>,
    heartbeat_responses: Vec<PartitionHeartbeatResponse>,
    /// Frames taken by the writer whose write has not completed yet.
    in_flight: usize,
    waker: Option<Waker>,
}

impl Outbox {
    fn is_empty(&self) -> bool {
        self.frames.is_empty() && self.heartbeats.is_empty() && self.heartbeat_responses.is_empty()
    }

    fn wake(&mut self) {
        if let Some(waker) = self.waker.take() {
            waker.wake();
        }
    }

    /// Pending coalesced heartbeats first (latency-sensitive), then queued frames up to the
    /// gather limit (at least one).
    fn take_batch(&mut self) -> Vec<FrameBuf> {
        let mut batch = Vec::new();
        if !self.heartbeats.is_empty() {
            batch.push(PeerMessage::Heartbeats(std::mem::take(&mut self.heartbeats)).encode());
        }
        if !self.heartbeat_responses.is_empty() {
            let list = std::mem::take(&mut self.heartbeat_responses);
            batch.push(PeerMessage::HeartbeatResponses(list).encode());
        }
        let mut gathered = 0;
        while let Some(frame) = self.frames.front() {
            if gathered > 0 && gathered + frame.len() > WRITE_GATHER_BYTES_MAX {
                break;
            }
            gathered += frame.len();
            self.bytes -= frame.len();
            batch.push(self.frames.pop_front().expect("front exists"));
        }
        batch
    }
}

#[derive(Debug)]
struct LinkShared {
    config: PeerConfig,
    remote: NodeId,
    addr: Cell<SocketAddr>,
    outbox: RefCell<Outbox>,
    status: RefCell<LinkStatus>,
    stats: Cell<LinkStats>,
    /// The remote shard's `pristine` flag from the last accepted handshake, if any.
    remote_pristine: Cell<Option<bool>>,
}

impl LinkShared {
    fn count(&self, update: impl FnOnce(&mut LinkStats)) {
        let mut stats = self.stats.get();
        update(&mut stats);
        self.stats.set(stats);
    }

    fn set_status(&self, status: LinkStatus) {
        *self.status.borrow_mut() = status;
    }
}

/// The outgoing connection from this shard to the same shard of `remote` (see the module
/// docs). Dropping it closes the connection and discards its queue.
#[derive(Debug)]
pub struct PeerLink {
    shared: Rc<LinkShared>,
    _task: Task<()>,
}

impl PeerLink {
    /// Starts connecting to `remote` at `addr`. Must run inside a glommio executor.
    pub fn connect(config: PeerConfig, remote: NodeId, addr: SocketAddr) -> PeerLink {
        let shared = Rc::new(LinkShared {
            config,
            remote,
            addr: Cell::new(addr),
            outbox: RefCell::new(Outbox::default()),
            status: RefCell::new(LinkStatus::Connecting),
            stats: Cell::new(LinkStats::default()),
            remote_pristine: Cell::new(None),
        });
        let task = shared.config.spawn(run_link(shared.clone()));
        PeerLink { shared, _task: task }
    }

    pub fn remote(&self) -> NodeId {
        self.shared.remote
    }

    /// Where the next connection attempt goes (e.g. after a membership change).
    pub fn set_addr(&self, addr: SocketAddr) {
        self.shared.addr.set(addr);
    }

    pub fn status(&self) -> LinkStatus {
        self.shared.status.borrow().clone()
    }

    pub fn stats(&self) -> LinkStats {
        self.shared.stats.get()
    }

    /// The remote shard's `pristine` flag from the last accepted handshake (`None` before
    /// the first one).
    pub fn remote_pristine(&self) -> Option<bool> {
        self.shared.remote_pristine.get()
    }

    /// Frames and bytes waiting in the queue (pending heartbeats not included).
    pub fn queued(&self) -> (usize, usize) {
        let outbox = self.shared.outbox.borrow();
        (outbox.frames.len(), outbox.bytes)
    }

    /// True when nothing waits to be written and no write is in progress (the frames sent so
    /// far are in the kernel's socket buffer, not necessarily received).
    pub fn is_idle(&self) -> bool {
        let outbox = self.shared.outbox.borrow();
        outbox.is_empty() && outbox.in_flight == 0
    }

    /// Encodes and enqueues `message`.
    pub fn send(&self, message: &PeerMessage) -> Result<(), SendError> {
        self.send_frame(message.encode())
    }

    /// Enqueues an encoded frame.
    pub fn send_frame(&self, frame: FrameBuf) -> Result<(), SendError> {
        let config = &self.shared.config;
        let max = FRAME_HEADER_SIZE + config.frame_body_size_max;
        if frame.len() > max {
            return Err(SendError::TooLarge { len: frame.len(), max });
        }
        let mut outbox = self.shared.outbox.borrow_mut();
        if outbox.frames.len() >= config.queue_frames_max
            || outbox.bytes + frame.len() > config.queue_bytes_max
        {
            return Err(SendError::QueueFull { frames: outbox.frames.len(), bytes: outbox.bytes });
        }
        outbox.bytes += frame.len();
        outbox.frames.push_back(frame);
        outbox.wake();
        Ok(())
    }

    /// Enqueues a heartbeat to be coalesced with those of other partitions into one frame. A
    /// newer heartbeat of the same partition replaces a pending one.
    pub fn send_heartbeat(&self, heartbeat: PartitionHeartbeat) -> Result<(), SendError> {
        let mut outbox = self.shared.outbox.borrow_mut();
        let pending = &mut outbox.heartbeats;
        if let Some(slot) = pending.iter_mut().find(|h| h.partition == heartbeat.partition) {
            *slot = heartbeat;
        } else if pending.len() >= HEARTBEATS_PER_FRAME_MAX {
            return Err(SendError::QueueFull { frames: outbox.frames.len(), bytes: outbox.bytes });
        } else {
            pending.push(heartbeat);
        }
        outbox.wake();
        Ok(())
    }

    /// Like `send_heartbeat`, for heartbeat responses.
    pub fn send_heartbeat_response(
        &self,
        response: PartitionHeartbeatResponse,
    ) -> Result<(), SendError> {
        let mut outbox = self.shared.outbox.borrow_mut();
        let pending = &mut outbox.heartbeat_responses;
        if let Some(slot) = pending.iter_mut().find(|h| h.partition == response.partition) {
            *slot = response;
        } else if pending.len() >= HEARTBEATS_PER_FRAME_MAX {
            return Err(SendError::QueueFull { frames: outbox.frames.len(), bytes: outbox.bytes });
        } else {
            pending.push(response);
        }
        outbox.wake();
        Ok(())
    }
}

async fn run_link(shared: Rc<LinkShared>) {
    let config = &shared.config;
    let seed = u64::from(config.node.0) << 32
        ^ u64::from(shared.remote.0)
        ^ SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
    let mut backoff = Backoff::new(config.backoff_initial, config.backoff_max, seed);
    loop {
        shared.set_status(LinkStatus::Connecting);
        let addr = shared.addr.get();
        match connect_and_handshake(config, shared.remote, addr).await {
            Ok((conn, pristine)) => {
                shared.remote_pristine.set(Some(pristine));
                backoff.reset();
                shared.count(|s| s.connects += 1);
                shared.set_status(LinkStatus::Connected);
                info!(remote = %shared.remote, %addr, "peer link connected");
                let error = pump(&shared, conn).await;
                shared.count(|s| s.disconnects += 1);
                warn!(remote = %shared.remote, %addr, %error, "peer link lost");
                shared.set_status(LinkStatus::Disconnected { error: error.to_string() });
            }
            Err(error) if error.is_certificate_rejection() => {
                warn!(remote = %shared.remote, %addr, "peer certificate rejected: {error}");
                shared.count(|s| s.refusals += 1);
                shared.set_status(LinkStatus::Disconnected { error: error.to_string() });
            }
            Err(error @ TransportError::Tls(_)) => {
                warn!(remote = %shared.remote, %addr, %error, "peer TLS handshake failed");
                shared.set_status(LinkStatus::Disconnected { error: error.to_string() });
            }
            Err(TransportError::Refused { reason, detail }) => {
                warn!(remote = %shared.remote, %addr, %reason, %detail, "peer refused handshake");
                shared.count(|s| s.refusals += 1);
                shared.set_status(LinkStatus::Refused { reason, detail });
            }
            Err(error) => {
                debug!(remote = %shared.remote, %addr, %error, "peer link connect failed");
                shared.set_status(LinkStatus::Disconnected { error: error.to_string() });
            }
        }
        glommio::timer::sleep(backoff.next_delay()).await;
    }
}

/// Connects to node `remote` and handshakes; returns the stream and the acceptor's
/// `pristine` flag. Under TLS the acceptor's certificate must name `remote`.
async fn connect_and_handshake(
    config: &PeerConfig,
    remote: NodeId,
    addr: SocketAddr,
) -> Result<(FrameStream, bool), TransportError> {
    let timeout = config.handshake_timeout;
    let mut conn = match &config.tls {
        None => FrameStream::connect(addr, config.frame_body_size_max, timeout).await?,
        Some(tls) => {
            let conn =
                FrameStream::connect_tls(addr, tls, config.frame_body_size_max, timeout).await?;
            verify_node_identity(conn.peer_certificates(), remote)?;
            conn
        }
    };
    let handshake = Handshake {
        cluster: config.cluster,
        node: config.node,
        shard: config.shard,
        protocol_version: PEER_PROTOCOL_VERSION,
        layout: config.layout,
        pristine: config.pristine_now(),
    };
    conn.write_frame(&handshake.encode()).await.map_err(TransportError::classify)?;
    // With TLS 1.3 an acceptor that refuses our certificate says so here, in an alert.
    let frame =
        with_timeout(timeout, conn.expect_frame()).await.map_err(TransportError::classify)?;
    if frame.kind == FrameKind::ErrorReply {
        let reply = crate::protocol::Response::decode(&frame)?;
        if let crate::protocol::Response::Error(error) = reply {
            return Err(TransportError::ErrorReply(error));
        }
    }
    match HandshakeReply::decode(&frame)? {
        HandshakeReply::Accepted { pristine, .. } => Ok((conn, pristine)),
        HandshakeReply::Refused { reason, detail } => {
            Err(TransportError::Refused { reason, detail })
        }
    }
}

/// Writes the queue until the connection breaks; returns why it broke. With nothing to send
/// for `keepalive_interval` it writes a keepalive (an empty `PeerKeepalive` frame).
async fn pump(shared: &LinkShared, mut conn: FrameStream) -> TransportError {
    let config = &shared.config;
    loop {
        let ready = futures_lite::future::or(
            async {
                next_batch_ready(shared).await;
                true
            },
            async {
                glommio::timer::sleep(config.keepalive_interval).await;
                false
            },
        )
        .await;
        let batch = match ready {
            true => shared.outbox.borrow_mut().take_batch(),
            false => vec![encode_frame(FrameKind::PeerKeepalive, RequestId(0), &[])],
        };
        shared.outbox.borrow_mut().in_flight = batch.len();
        let bytes: usize = batch.iter().map(FrameBuf::len).sum();
        let written = with_timeout(config.write_timeout, conn.write_frames(&batch)).await;
        shared.outbox.borrow_mut().in_flight = 0;
        if let Err(error) = written {
            shared.count(|s| s.frames_dropped += batch.len() as u64);
            return error;
        }
        shared.count(|s| match ready {
            true => {
                s.frames_sent += batch.len() as u64;
                s.bytes_sent += bytes as u64;
            }
            false => s.keepalives_sent += 1,
        });
    }
}

/// Resolves when the outbox has something to write.
async fn next_batch_ready(shared: &LinkShared) {
    std::future::poll_fn(|cx| {
        let mut outbox = shared.outbox.borrow_mut();
        if outbox.is_empty() {
            outbox.waker = Some(cx.waker().clone());
            return Poll::Pending;
        }
        Poll::Ready(())
    })
    .await
}

/// Exponential reconnect backoff with jitter: each delay is drawn from [d/2, d] where d
/// doubles from `initial` up to `max` and resets after a successful connection.
#[derive(Debug)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    current: Duration,
    rng: SmallRng,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration, seed: u64) -> Self {
        assert!(!initial.is_zero() && initial <= max, "backoff bounds must be 0 < initial <= max");
        Backoff { initial, max, current: initial, rng: SmallRng::seed_from_u64(seed) }
    }

    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self.current;
        self.current = (self.current * 2).min(self.max);
        let half = ceiling / 2;
        half + self.rng.gen_range(Duration::ZERO..=ceiling - half)
    }

    pub fn reset(&mut self) {
        self.current = self.initial;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fuzzing::{samples, RejectFfBatches};
    use crate::tls::test_certs::TestCa;
    use glommio::channels::local_channel;
    use glommio::{LocalExecutorBuilder, Placement};
    use std::sync::mpsc;
    use std::time::Instant;

    const DEADLINE: Duration = Duration::from_secs(30);

    fn tls_of(ca: &TestCa, name: &str) -> Arc<TlsConfig> {
        let (chain, key) = ca.node(name);
        Arc::new(TlsConfig::new(vec![ca.der()], chain, key, None).unwrap())
    }

    fn tls_peer(node: u32, tls: Arc<TlsConfig>) -> PeerConfig {
        let mut config = PeerConfig::new(ClusterId(9), NodeId(node), ShardId(0));
        config.tls = Some(tls);
        config.backoff_initial = Duration::from_millis(10);
        config.backoff_max = Duration::from_millis(100);
        config
    }

    fn executor(name: &str) -> LocalExecutorBuilder {
        LocalExecutorBuilder::new(Placement::Unbound).name(name).io_memory(2 << 20)
    }

    /// Node 1 links to node 2's listener, sends `messages`, and waits for `wanted` inbound
    /// messages (or, with none wanted, for `link_done`). Returns what node 2 received, its
    /// listener stats and node 1's link stats and status.
    fn exchange(
        receiver_tls: Arc<TlsConfig>,
        sender_tls: Arc<TlsConfig>,
        messages: Vec<PeerMessage>,
        link_done: fn(&LinkStats) -> bool,
    ) -> (Vec<Inbound>, ListenerStats, LinkStats, LinkStatus) {
        let wanted = messages.len();
        let (addr_tx, addr_rx) = mpsc::channel();
        let (stop_tx, stop_rx) = mpsc::channel::<()>();
        let receiver = executor("tls-receiver")
            .spawn(move || async move {
                let (tx, rx) = local_channel::new_bounded(64);
                let bind: SocketAddr = (std::net::Ipv4Addr::LOCALHOST, 0).into();
                let listener = PeerListener::bind(
                    bind,
                    tls_peer(2, receiver_tls),
                    Rc::new(RejectFfBatches),
                    tx,
                )
                .unwrap();
                addr_tx.send(listener.local_addr()).unwrap();
                let mut received = Vec::new();
                // Serve until the sender is done (its link dropped; the sender has its own
                // deadline), then until the listener has seen every accepted connection close:
                // on a busy machine the close of a refused connection reaches it a while after
                // the sender gave up. Closing has its own deadline, counted from the stop, so
                // a sender slowed down by the load does not use it up.
                let serve_until = Instant::now() + 2 * DEADLINE;
                let mut close_until = None;
                loop {
                    if close_until.is_none() && stop_rx.try_recv().is_ok() {
                        close_until = Some(Instant::now() + DEADLINE);
                    }
                    let deadline = close_until.unwrap_or(serve_until);
                    if (close_until.is_some() && listener.stats().open == 0)
                        || Instant::now() >= deadline
                    {
                        break;
                    }
                    let next = futures_lite::future::or(async { rx.recv().await }, async {
                        glommio::timer::sleep(Duration::from_millis(10)).await;
                        None
                    });
                    received.extend(next.await);
                }
                (received, listener.stats())
            })
            .unwrap();
        let addr = addr_rx.recv().unwrap();
        let sender = executor("tls-sender")
            .spawn(move || async move {
                let link = PeerLink::connect(tls_peer(1, sender_tls), NodeId(2), addr);
                for message in &messages {
                    link.send(message).unwrap();
                }
                let start = Instant::now();
                while start.elapsed() < DEADLINE {
                    let stats = link.stats();
                    if (wanted > 0 && link.is_idle() && stats.frames_sent as usize >= wanted)
                        || (wanted == 0 && link_done(&stats))
                    {
                        break;
                    }
                    glommio::timer::sleep(Duration::from_millis(10)).await;
                }
                (link.stats(), link.status())
            })
            .unwrap();
        let (link_stats, status) = sender.join().unwrap();
        // The receiver may have given up already (then its stats show it): no unwrap here.
        let _ = stop_tx.send(());
        let (received, listener_stats) = receiver.join().unwrap();
        (received, listener_stats, link_stats, status)
    }

    #[test]
    fn peer_messages_cross_a_mutual_tls_connection_intact() {
        let ca = TestCa::new("cluster");
        let sent = samples::peer_messages();
        let (received, listener, link, _) =
            exchange(tls_of(&ca, "node-2"), tls_of(&ca, "node-1"), sent.clone(), |_| true);
        let received: Vec<PeerMessage> = received.into_iter().map(|m| m.message).collect();
        assert_eq!(received, sent, "messages arrive intact and in order over TLS");
        assert_eq!(link.connects, 1);
        assert_eq!(listener.refused, 0);
    }

    #[test]
    fn a_peer_with_a_certificate_from_another_ca_is_refused() {
        let ours = TestCa::new("cluster");
        let theirs = TestCa::new("another cluster");
        // The connector trusts only its own CA and presents a certificate of it.
        let (received, listener, link, status) =
            exchange(tls_of(&ours, "node-2"), tls_of(&theirs, "node-1"), Vec::new(), |stats| {
                stats.refusals >= 2
            });
        assert!(received.is_empty(), "nothing crosses: {received:?}");
        assert_eq!(link.connects, 0, "no connection was ever established");
        assert!(link.refusals >= 2, "{link:?}");
        // Here the connector refuses the acceptor's certificate; whether the acceptor sees
        // that as a TLS alert (counted `refused`) or as a plain close depends on which reaches
        // it first, so only what is certain is asserted: nothing got through and no accepted
        // connection stayed open. The acceptor's own refusal of a foreign certificate is
        // `an_acceptor_refuses_a_connector_whose_certificate_it_cannot_chain`.
        assert_eq!(listener.messages, 0, "{listener:?}");
        // `open` counts accepted connections whose task has not ended yet: a refused one is
        // open from its accept until the acceptor reads the alert or the close (at most the
        // handshake timeout), which on a busy machine can come after the connector gave up.
        // So the guarantee is that it drops to 0, which `exchange` waits for (bounded).
        assert_eq!(listener.open, 0, "every accepted connection closed: {listener:?}");
        let LinkStatus::Disconnected { error } = status else { panic!("{status:?}") };
        assert!(error.contains("certificate") || error.contains("UnknownIssuer"), "{error}");
    }

    #[test]
    fn an_acceptor_refuses_a_connector_whose_certificate_it_cannot_chain() {
        let ours = TestCa::new("cluster");
        let theirs = TestCa::new("another cluster");
        // The connector trusts the acceptor's CA, but presents a certificate of another CA:
        // only the acceptor can tell, and the connector learns it from the TLS alert.
        let (chain, key) = theirs.node("node-1");
        let sender = Arc::new(TlsConfig::new(vec![ours.der()], chain, key, None).unwrap());
        let (received, listener, link, status) =
            exchange(tls_of(&ours, "node-2"), sender, Vec::new(), |stats| stats.refusals >= 2);
        assert!(received.is_empty(), "nothing crosses: {received:?}");
        assert!(listener.refused >= 2, "{listener:?}");
        assert!(link.refusals >= 2, "the connector sees the alert as a refusal: {link:?}");
        let LinkStatus::Disconnected { error } = status else { panic!("{status:?}") };
        assert!(error.contains("alert"), "{error}");
    }

    #[test]
    fn an_acceptor_refuses_a_connector_holding_another_nodes_certificate() {
        let ca = TestCa::new("cluster");
        // Node 1 connects with node 3's certificate (same CA): its handshake claims node 1.
        let (received, listener, link, status) =
            exchange(tls_of(&ca, "node-2"), tls_of(&ca, "node-3"), Vec::new(), |stats| {
                stats.refusals >= 2
            });
        assert!(received.is_empty(), "nothing crosses: {received:?}");
        assert!(listener.refused >= 2, "{listener:?}");
        assert!(link.refusals >= 2, "{link:?}");
        let LinkStatus::Refused { reason, detail } = status else { panic!("{status:?}") };
        assert_eq!(reason, RefuseReason::WrongCertificate);
        assert!(detail.contains("does not name node 1"), "{detail}");
    }

    #[test]
    fn a_connector_refuses_an_acceptor_holding_another_nodes_certificate() {
        let ca = TestCa::new("cluster");
        // Node 1 dials node 2, but the listener there presents node 3's certificate.
        let (received, listener, link, status) =
            exchange(tls_of(&ca, "node-3"), tls_of(&ca, "node-1"), Vec::new(), |stats| {
                stats.refusals >= 2
            });
        assert!(received.is_empty(), "nothing crosses: {received:?}");
        assert_eq!(link.connects, 0, "{link:?}");
        assert_eq!(listener.messages, 0, "{listener:?}");
        let LinkStatus::Disconnected { error } = status else { panic!("{status:?}") };
        assert!(error.contains("does not name node 2"), "{error}");
    }

    #[test]
    fn backoff_doubles_with_jitter_and_stays_bounded() {
        let (initial, max) = (Duration::from_millis(10), Duration::from_millis(300));
        let mut backoff = Backoff::new(initial, max, 7);
        let mut ceiling = initial;
        for _ in 0..20 {
            let delay = backoff.next_delay();
            assert!(delay >= ceiling / 2 && delay <= ceiling, "{delay:?} outside {ceiling:?}");
            ceiling = (ceiling * 2).min(max);
        }
        backoff.reset();
        assert!(backoff.next_delay() <= initial);
    }

    #[test]
    fn a_peer_with_another_shard_or_partition_count_is_refused() {
        let node = |id| NodeId(id);
        let mut config = PeerConfig::new(ClusterId(1), node(1), ShardId(0));
        config.layout = ShardLayout { shards: 2, partitions: 8 };
        let mut handshake = Handshake {
            cluster: ClusterId(1),
            node: node(2),
            shard: ShardId(0),
            protocol_version: PEER_PROTOCOL_VERSION,
            layout: ShardLayout { shards: 2, partitions: 8 },
            pristine: false,
        };
        assert_eq!(refusal(&config, &handshake, false), None);
        handshake.layout.partitions = 16;
        let refused = refusal(&config, &handshake, false).map(|(reason, _)| reason);
        assert_eq!(refused, Some(RefuseReason::WrongLayout));
        // A side that does not say (partitions 0, e.g. a tool) is not checked.
        handshake.layout = ShardLayout::default();
        assert_eq!(refusal(&config, &handshake, false), None);
    }
}
