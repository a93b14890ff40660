//! Pipeline: many produces in flight on one connection to a partition's leader, each with its
//! own completion (module docs of `client`, "Pipelining").
//!
//! One [`Pipeline`] is one partition, one acks level and at most one connection at a time (to
//! the partition's leader). [`Pipeline::send`] writes the produce at once and returns a
//! [`Completion`]; a driver thread per pipeline reads the replies, matches them to the
//! produces by request id, and completes them strictly in send order. The same thread
//! resolves refusals and broken connections (reconnecting, re-routing, resending what is
//! safe to resend).
//!
//! Locking: `wire` (the write half, and the order of writes) is taken before `state`, never
//! the other way round; nothing blocks on IO while holding `state`. An entry is pushed to
//! `state.entries` under `wire`, so the order of `entries` is the order on the wire.
//!
//! Invariants: `entries.len() <= window <= PIPELINE_REQUESTS_MAX`; entries in state `Unsent`
//! are a suffix of `entries`; an entry is `Sent` only on the connection of generation
//! `generation` that is installed in `wire` (when a connection breaks, each of its `Sent`
//! entries becomes `Done(Indeterminate)` before anything else happens); completions are
//! handed out from the front only, so in send order.

use std::collections::VecDeque;
use std::future::Future;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::pin::Pin;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use super::{build_batch, is_open, jitter, Client, ClientError, Conn, BACKPRESSURE_WAIT_MAX};
use crate::frame::FrameDecoder;
use crate::ids::{PartitionId, RequestId};
use crate::limits::{PIPELINE_REQUESTS_MAX, READ_CHUNK_SIZE};
use crate::protocol::{Acks, ErrorReply, ProduceRequest, ProduceResponse, Request, Response};

/// Default in-flight window of a pipeline: the node's per-connection limit.
pub const PIPELINE_WINDOW_DEFAULT: usize = PIPELINE_REQUESTS_MAX;
/// Longest the driver waits on a socket read before it checks deadlines and closing.
const READ_POLL_MAX: Duration = Duration::from_millis(200);
/// Longest the idle driver sleeps before it looks at its state again.
const IDLE_WAIT: Duration = Duration::from_secs(1);

type Outcome = Result<ProduceResponse, ClientError>;

/// A producer to one partition keeping up to `window` produces in flight on one connection.
/// `Send + Sync`: sends from several threads are ordered by the order they take the wire.
/// Dropping it waits for the replies of the produces already sent (each bounded by the
/// request timeout); produces not yet sent complete with [`ClientError::PipelineClosed`].
#[derive(Debug)]
pub struct Pipeline {
    shared: Arc<Shared>,
    driver: Option<JoinHandle<()>>,
}

/// The outcome of one pipelined produce: [`Completion::wait`] blocks for it; as a
/// [`Future`] it completes when the driver thread has it (any executor, or none).
#[derive(Debug)]
#[must_use = "a produce's outcome is only known through its completion"]
pub struct Completion {
    slot: Arc<Slot>,
}

#[derive(Debug)]
struct Shared {
    /// A routing client of this pipeline's own (routes copied from the parent at creation).
    client: Client,
    partition: PartitionId,
    acks: Acks,
    window: usize,
    wire: Mutex<Option<Writer>>,
    state: Mutex<State>,
    /// Signalled when an entry completes, an entry is queued unsent, or closing starts.
    changed: Condvar,
}

#[derive(Debug)]
struct State {
    /// In send order; at most `window`.
    entries: VecDeque<Entry>,
    /// Generation of the connection installed in `wire` (0: none yet).
    generation: u64,
    /// A refusal or a broken connection is being resolved: nothing is written until then.
    halted: bool,
    closing: bool,
    next_request_id: u64,
}

#[derive(Debug)]
struct Entry {
    batch: Bytes,
    progress: Progress,
    slot: Arc<Slot>,
}

#[derive(Debug)]
enum Progress {
    /// Not written to any connection (certainly not appended).
    Unsent,
    Sent {
        id: RequestId,
        at: Instant,
        generation: u64,
    },
    /// The node refused it without taking anything (`NotLeader`, `Backpressure`).
    Refused {
        addr: SocketAddr,
        reply: ErrorReply,
    },
    Done(Outcome),
}

#[derive(Debug, Default)]
struct Slot {
    state: Mutex<SlotState>,
    done: Condvar,
}

#[derive(Debug, Default)]
struct SlotState {
    outcome: Option<Outcome>,
    waker: Option<Waker>,
    taken: bool,
}

/// The write half of the pipeline's connection.
#[derive(Debug)]
struct Writer {
    generation: u64,
    sock: TcpStream,
    tls: Option<Arc<Mutex<rustls::ClientConnection>>>,
}

/// The read half, owned by the driver thread.
struct Link {
    generation: u64,
    addr: SocketAddr,
    sock: TcpStream,
    tls: Option<TlsReader>,
    decoder: FrameDecoder,
    buf: BytesMut,
}

struct TlsReader {
    session: Arc<Mutex<rustls::ClientConnection>>,
    /// Ciphertext read from the socket and not yet handed to the session.
    pending: BytesMut,
}

/// The driver's retry budget for one stretch of refusals and reconnects; a success ends it.
struct Retry {
    started: Instant,
    attempts: u32,
    backoff: Duration,
    last: String,
    leaderless: bool,
}

impl Client {
    /// A pipeline of produces to `partition` with [`PIPELINE_WINDOW_DEFAULT`] in flight.
    pub fn pipeline(&self, partition: PartitionId, acks: Acks) -> Result<Pipeline, ClientError> {
        self.pipeline_with_window(partition, acks, PIPELINE_WINDOW_DEFAULT)
    }

    /// A pipeline of produces to `partition` with at most `window` (1..=
    /// [`PIPELINE_REQUESTS_MAX`]) in flight. It routes on its own (starting from this
    /// client's routes) and connects on the first send.
    pub fn pipeline_with_window(
        &self,
        partition: PartitionId,
        acks: Acks,
        window: usize,
    ) -> Result<Pipeline, ClientError> {
        if window == 0 || window > PIPELINE_REQUESTS_MAX {
            return Err(ClientError::PipelineWindow { window, max: PIPELINE_REQUESTS_MAX });
        }
        let client = Client::new(self.config.clone())?;
        *client.routes.lock().expect("routes lock") =
            self.routes.lock().expect("routes lock").clone();
        let shared = Arc::new(Shared {
            client,
            partition,
            acks,
            window,
            wire: Mutex::new(None),
            state: Mutex::new(State {
                entries: VecDeque::with_capacity(window),
                generation: 0,
                halted: false,
                closing: false,
                next_request_id: 1,
            }),
            changed: Condvar::new(),
        });
        let driver_shared = shared.clone();
        let driver = std::thread::Builder::new()
            .name(format!("ringlog-pipeline-{}", partition.0))
            .spawn(move || Driver::new(driver_shared).run())
            .map_err(|source| ClientError::Io { addr: self.config.bootstrap[0], source })?;
        Ok(Pipeline { shared, driver: Some(driver) })
    }
}

impl Pipeline {
    /// Sends `records` as one batch; blocks while `window` produces are in flight.
    pub fn send(&self, records: &[&[u8]]) -> Result<Completion, ClientError> {
        self.send_batch(build_batch(records)?)
    }

    /// Sends a batch built by [`build_batch`]; blocks while the window is full.
    pub fn send_batch(&self, batch: Bytes) -> Result<Completion, ClientError> {
        self.enqueue(batch, true)
    }

    /// Like [`Pipeline::send`], but returns [`ClientError::WindowFull`] instead of blocking
    /// (for async callers: await an earlier completion, then send again).
    pub fn try_send(&self, records: &[&[u8]]) -> Result<Completion, ClientError> {
        self.try_send_batch(build_batch(records)?)
    }

    /// Like [`Pipeline::send_batch`], without blocking on a full window.
    pub fn try_send_batch(&self, batch: Bytes) -> Result<Completion, ClientError> {
        self.enqueue(batch, false)
    }

    /// Waits until every produce sent so far has completed.
    pub fn flush(&self) {
        let mut st = self.shared.lock_state();
        while !st.entries.is_empty() {
            st = self.shared.changed.wait(st).expect("pipeline state lock");
        }
    }

    /// Produces sent and not yet completed.
    pub fn in_flight(&self) -> usize {
        self.shared.lock_state().entries.len()
    }

    /// The most produces in flight at once.
    pub fn window(&self) -> usize {
        self.shared.window
    }

    pub fn partition(&self) -> PartitionId {
        self.shared.partition
    }

    fn enqueue(&self, batch: Bytes, block: bool) -> Result<Completion, ClientError> {
        let shared = &self.shared;
        if !block && shared.lock_state().entries.len() >= shared.window {
            return Err(ClientError::WindowFull { window: shared.window });
        }
        loop {
            {
                let mut st = shared.lock_state();
                while st.entries.len() >= shared.window && !st.closing {
                    if !block {
                        return Err(ClientError::WindowFull { window: shared.window });
                    }
                    st = shared.changed.wait(st).expect("pipeline state lock");
                }
            }
            let mut wire = shared.wire.lock().expect("pipeline wire lock");
            let mut st = shared.lock_state();
            if st.closing {
                return Err(ClientError::PipelineClosed);
            }
            if st.entries.len() >= shared.window {
                continue; // another sender took the slot: wait again
            }
            let slot = Arc::new(Slot::default());
            let completion = Completion { slot: slot.clone() };
            // An idle connection may have been closed by the node (idle timeout): writing
            // on it would make a certainly-not-sent produce indeterminate.
            if st.entries.is_empty() && wire.as_ref().is_some_and(|w| !is_open(&w.sock)) {
                if let Some(dead) = wire.take() {
                    let _ = dead.sock.shutdown(Shutdown::Both);
                }
            }
            let direct = !st.halted
                && wire.is_some()
                && st.entries.back().is_none_or(|e| !matches!(e.progress, Progress::Unsent));
            if !direct {
                st.entries.push_back(Entry { batch, progress: Progress::Unsent, slot });
                drop(st);
                shared.changed.notify_all();
                return Ok(completion);
            }
            let writer = wire.as_mut().expect("checked above");
            let id = RequestId(st.next_request_id);
            st.next_request_id += 1;
            let progress = Progress::Sent { id, at: Instant::now(), generation: writer.generation };
            let frame = shared.produce_request(batch.clone()).encode(id);
            st.entries.push_back(Entry { batch, progress, slot });
            drop(st);
            if writer.write_frame(frame.chunks()).is_err() {
                // The driver's read fails too and completes it `Indeterminate`.
                let _ = writer.sock.shutdown(Shutdown::Both);
            }
            return Ok(completion);
        }
    }
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        {
            let wire = self.shared.wire.lock().expect("pipeline wire lock");
            let mut st = self.shared.lock_state();
            st.closing = true;
            let sent = st.entries.iter().any(|e| matches!(e.progress, Progress::Sent { .. }));
            if !sent {
                if let Some(writer) = wire.as_ref() {
                    let _ = writer.sock.shutdown(Shutdown::Both);
                }
            }
        }
        self.shared.changed.notify_all();
        if let Some(driver) = self.driver.take() {
            let _ = driver.join();
        }
    }
}

impl Completion {
    /// Blocks until the produce completes: its acknowledgement, or the error the blocking
    /// [`Client::produce`] would return in the same situation.
    pub fn wait(self) -> Outcome {
        let mut st = self.slot.state.lock().expect("completion lock");
        loop {
            if let Some(outcome) = st.outcome.take() {
                st.taken = true;
                return outcome;
            }
            st = self.slot.done.wait(st).expect("completion lock");
        }
    }

    /// Whether the outcome is known (`wait` will not block).
    pub fn is_done(&self) -> bool {
        self.slot.state.lock().expect("completion lock").outcome.is_some()
    }
}

impl Future for Completion {
    type Output = Outcome;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Outcome> {
        let mut st = self.slot.state.lock().expect("completion lock");
        if let Some(outcome) = st.outcome.take() {
            st.taken = true;
            return Poll::Ready(outcome);
        }
        assert!(!st.taken, "a completion polled after it completed");
        match &st.waker {
            Some(waker) if waker.will_wake(cx.waker()) => {}
            _ => st.waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }
}

impl Slot {
    fn complete(&self, outcome: Outcome) {
        let waker = {
            let mut st = self.state.lock().expect("completion lock");
            st.outcome = Some(outcome);
            st.waker.take()
        };
        self.done.notify_all();
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

impl Shared {
    fn lock_state(&self) -> MutexGuard<'_, State> {
        self.state.lock().expect("pipeline state lock")
    }

    fn produce_request(&self, batch: Bytes) -> Request {
        Request::Produce(ProduceRequest { partition: self.partition, acks: self.acks, batch })
    }
}

impl State {
    fn sent_count(&self) -> usize {
        self.entries.iter().filter(|e| matches!(e.progress, Progress::Sent { .. })).count()
    }

    fn has_unsent(&self) -> bool {
        self.entries.back().is_some_and(|e| matches!(e.progress, Progress::Unsent))
    }

    /// Hands out the outcomes at the front, in send order. True if any was.
    fn release_done(&mut self) -> bool {
        let mut released = false;
        while matches!(self.entries.front().map(|e| &e.progress), Some(Progress::Done(_))) {
            let entry = self.entries.pop_front().expect("front checked");
            let Progress::Done(outcome) = entry.progress else { unreachable!("front checked") };
            entry.slot.complete(outcome);
            released = true;
        }
        released
    }

    /// Completes every unsent entry with `error()` (they were never written anywhere).
    fn fail_unsent(&mut self, error: impl Fn() -> ClientError) {
        for entry in &mut self.entries {
            if matches!(entry.progress, Progress::Unsent) {
                entry.progress = Progress::Done(Err(error()));
            }
        }
    }
}

/// What the driver does next.
enum Step {
    Exit,
    Read,
    Resolve,
    Connect,
    Flush,
    Idle,
}

struct Driver {
    shared: Arc<Shared>,
    link: Option<Link>,
    retry: Option<Retry>,
    /// Where the next connection goes (a `NotLeader` hint), else the routes' leader.
    target: Option<SocketAddr>,
    chunk: Vec<u8>,
}

impl Driver {
    fn new(shared: Arc<Shared>) -> Driver {
        Driver { shared, link: None, retry: None, target: None, chunk: vec![0; READ_CHUNK_SIZE] }
    }

    fn run(mut self) {
        loop {
            match self.next_step() {
                Step::Exit => break,
                Step::Read => self.read(),
                Step::Resolve => self.resolve(),
                Step::Connect => self.connect(),
                Step::Flush => self.flush_unsent(),
                Step::Idle => {
                    let st = self.shared.lock_state();
                    if !st.closing && !st.has_unsent() {
                        let _ = self.shared.changed.wait_timeout(st, IDLE_WAIT);
                    }
                }
            }
        }
        self.drop_link("the pipeline closed");
        let mut st = self.shared.lock_state();
        st.fail_unsent(|| ClientError::PipelineClosed);
        for entry in &mut st.entries {
            if let Progress::Refused { addr, reply } = &entry.progress {
                let error = ClientError::Server { addr: *addr, reply: reply.clone() };
                entry.progress = Progress::Done(Err(error));
            }
        }
        st.release_done();
        drop(st);
        self.shared.changed.notify_all();
    }

    fn next_step(&mut self) -> Step {
        let st = self.shared.lock_state();
        if st.entries.is_empty() {
            self.retry = None; // every outcome is known: the next trouble starts afresh
        }
        let sent = st.sent_count();
        if st.closing && sent == 0 {
            return Step::Exit;
        }
        if st.halted && sent == 0 {
            return Step::Resolve;
        }
        match &self.link {
            Some(_) if !st.halted && st.has_unsent() => Step::Flush,
            Some(_) => Step::Read,
            None if !st.halted && st.has_unsent() => Step::Connect,
            None => Step::Idle,
        }
    }

    // ---- replies ----

    /// Reads from the connection until at least one frame is handled, the connection
    /// breaks, or the read poll interval passes.
    fn read(&mut self) {
        let link = self.link.as_mut().expect("read without a connection");
        let timeout = self.shared.client.config.request_timeout;
        match link.read_frames(&mut self.chunk) {
            Ok(frames) if frames.is_empty() => {
                let st = self.shared.lock_state();
                let oldest = st.entries.iter().find_map(|e| match e.progress {
                    Progress::Sent { at, .. } => Some(at),
                    _ => None,
                });
                drop(st);
                if oldest.is_some_and(|at| at.elapsed() > timeout) {
                    self.break_link(format!("no reply within {timeout:?}"));
                }
            }
            Ok(frames) => {
                for frame in frames {
                    if let Err(reason) = self.on_frame(frame) {
                        self.break_link(reason);
                        return;
                    }
                }
            }
            Err(reason) => self.break_link(reason),
        }
    }

    fn on_frame(&mut self, frame: crate::frame::Frame) -> Result<(), String> {
        let addr = self.link.as_ref().expect("a frame without a connection").addr;
        let response = Response::decode(&frame)
            .map_err(|error| format!("malformed response from {addr}: {error}"))?;
        let progress = match response {
            Response::Produce(ack) => Progress::Done(Ok(ack)),
            Response::Error(reply @ ErrorReply::NotLeader { .. })
            | Response::Error(reply @ ErrorReply::Backpressure { .. }) => {
                Progress::Refused { addr, reply }
            }
            Response::Error(
                reply @ (ErrorReply::Timeout
                | ErrorReply::ShuttingDown
                | ErrorReply::StorageFailed { .. }
                | ErrorReply::Internal { .. }),
            ) => {
                let reason = format!("{reply:?}");
                Progress::Done(Err(ClientError::Indeterminate { addr, reason }))
            }
            Response::Error(reply) => Progress::Done(Err(ClientError::Server { addr, reply })),
            other => Progress::Done(Err(ClientError::UnexpectedResponse {
                addr,
                expected: "produce",
                found: other.kind(),
            })),
        };
        match progress {
            Progress::Done(Ok(_)) => self.retry = None,
            Progress::Refused { .. } => self.shared.lock_state().halted = true,
            _ => {}
        }
        let mut st = self.shared.lock_state();
        let id = frame.request_id;
        let Some(entry) = st
            .entries
            .iter_mut()
            .find(|e| matches!(e.progress, Progress::Sent { id: sent, .. } if sent == id))
        else {
            return Err(format!("{addr} answered request id {}, which is not in flight", id.0));
        };
        entry.progress = progress;
        if st.release_done() {
            drop(st);
            self.shared.changed.notify_all();
        }
        Ok(())
    }

    // ---- connections ----

    /// The connection broke (or answered nonsense): each produce on it completes
    /// `Indeterminate`; the pipeline halts until that is resolved.
    fn break_link(&mut self, reason: String) {
        let Some(addr) = self.link.as_ref().map(|l| l.addr) else { return };
        tracing::debug!(%addr, partition = %self.shared.partition, %reason, "pipeline connection broke");
        self.shared.client.forget_leader(self.shared.partition, addr);
        self.drop_link(&reason);
        self.shared.lock_state().halted = true;
    }

    /// Closes the connection; its `Sent` entries complete `Indeterminate` with `reason`.
    fn drop_link(&mut self, reason: &str) {
        let Some(link) = self.link.take() else { return };
        let _ = link.sock.shutdown(Shutdown::Both);
        let mut wire = self.shared.wire.lock().expect("pipeline wire lock");
        if wire.as_ref().is_some_and(|w| w.generation == link.generation) {
            *wire = None;
        }
        let mut st = self.shared.lock_state();
        drop(wire);
        for entry in &mut st.entries {
            if matches!(entry.progress, Progress::Sent { generation, .. } if generation == link.generation)
            {
                let reason = reason.to_string();
                let error = ClientError::Indeterminate { addr: link.addr, reason };
                entry.progress = Progress::Done(Err(error));
            }
        }
        if st.release_done() {
            drop(st);
            self.shared.changed.notify_all();
        }
    }

    /// Connects to the leader for the unsent produces (they were never written: a failure
    /// here is retried within the client's attempt and time bounds).
    fn connect(&mut self) {
        if !self.spend_attempt() {
            return;
        }
        let shared = self.shared.clone();
        let (client, partition) = (&shared.client, shared.partition);
        let addr = match self.target.take() {
            Some(addr) => addr,
            None => match client.leader_address(partition) {
                Ok(Some(addr)) => addr,
                Ok(None) => {
                    self.note_failure(
                        format!("the metadata names no leader for {partition}"),
                        true,
                    );
                    return self.sleep_backoff();
                }
                Err(ClientError::UnknownPartition { partition, partitions }) => {
                    self.shared
                        .lock_state()
                        .fail_unsent(|| ClientError::UnknownPartition { partition, partitions });
                    return self.release();
                }
                Err(error) => {
                    self.note_failure(format!("no metadata: {error}"), true);
                    return self.sleep_backoff();
                }
            },
        };
        let conn = match client.checkout(addr) {
            Ok(conn) => conn,
            Err(failure) => {
                client.forget_leader(partition, addr);
                self.note_failure(failure.into_error(addr, false).to_string(), false);
                return self.sleep_backoff();
            }
        };
        match self.install(addr, conn) {
            Ok(()) => self.flush_unsent(),
            Err(error) => {
                self.note_failure(format!("{addr}: {error}"), false);
                self.sleep_backoff();
            }
        }
    }

    /// Splits `conn` into the driver's read half and the senders' write half.
    fn install(&mut self, addr: SocketAddr, conn: Conn) -> io::Result<()> {
        let (sock, session) = match conn {
            Conn::Plain(sock) => (sock, None),
            Conn::Tls(tls) => {
                let rustls::StreamOwned { conn, sock } = *tls;
                (sock, Some(Arc::new(Mutex::new(conn))))
            }
        };
        let config = &self.shared.client.config;
        sock.set_write_timeout(Some(config.request_timeout))?;
        let poll = (config.request_timeout / 4).clamp(Duration::from_millis(10), READ_POLL_MAX);
        sock.set_read_timeout(Some(poll))?;
        let read_sock = sock.try_clone()?;
        let mut wire = self.shared.wire.lock().expect("pipeline wire lock");
        let mut st = self.shared.lock_state();
        st.generation += 1;
        let generation = st.generation;
        *wire = Some(Writer { generation, sock, tls: session.clone() });
        self.link = Some(Link {
            generation,
            addr,
            sock: read_sock,
            tls: session.map(|session| TlsReader { session, pending: BytesMut::new() }),
            decoder: FrameDecoder::new(config.frame_body_size_max),
            buf: BytesMut::new(),
        });
        Ok(())
    }

    /// Writes the unsent produces, in order, on the current connection.
    fn flush_unsent(&mut self) {
        let mut wire = self.shared.wire.lock().expect("pipeline wire lock");
        let generation = self.link.as_ref().map(|l| l.generation);
        if wire.as_ref().map(|w| w.generation) != generation {
            // A sender found the idle connection closed by the node and dropped it.
            drop(wire);
            return self.break_link("the connection was closed while idle".to_string());
        }
        loop {
            let Some(writer) = wire.as_mut() else { return };
            let mut st = self.shared.lock_state();
            if st.halted || st.closing {
                return;
            }
            let id = RequestId(st.next_request_id);
            let generation = writer.generation;
            let Some(entry) =
                st.entries.iter_mut().find(|e| matches!(e.progress, Progress::Unsent))
            else {
                return;
            };
            entry.progress = Progress::Sent { id, at: Instant::now(), generation };
            let frame = self.shared.produce_request(entry.batch.clone()).encode(id);
            st.next_request_id += 1;
            drop(st);
            if writer.write_frame(frame.chunks()).is_err() {
                let _ = writer.sock.shutdown(Shutdown::Both);
                return; // the read fails next and completes it `Indeterminate`
            }
        }
    }

    // ---- refusals ----

    /// Runs when nothing is on the wire and a refusal or a break halted the pipeline.
    /// A refused produce is resent only if no produce sent after it was appended or may have
    /// been: those refused produces after the last produce with any other outcome are resent
    /// in their order; refused produces before it complete with their refusal.
    fn resolve(&mut self) {
        let mut st = self.shared.lock_state();
        let last_final = st.entries.iter().rposition(|e| matches!(e.progress, Progress::Done(_)));
        let mut first_resend: Option<(SocketAddr, ErrorReply)> = None;
        for (i, entry) in st.entries.iter_mut().enumerate() {
            let Progress::Refused { addr, reply } = &entry.progress else { continue };
            if last_final.is_some_and(|last| i < last) || self.retry_exhausted() {
                let error = ClientError::Server { addr: *addr, reply: reply.clone() };
                entry.progress = Progress::Done(Err(error));
            } else {
                first_resend.get_or_insert((*addr, reply.clone()));
                entry.progress = Progress::Unsent;
            }
        }
        st.release_done();
        drop(st);
        self.shared.changed.notify_all();
        if let Some((addr, reply)) = first_resend {
            self.route_after(addr, reply);
        }
        self.shared.lock_state().halted = false;
        self.shared.changed.notify_all();
    }

    /// Where (and when) the resent produces go after `addr` refused with `reply`.
    fn route_after(&mut self, addr: SocketAddr, reply: ErrorReply) {
        let shared = self.shared.clone();
        let (client, partition) = (&shared.client, shared.partition);
        if !self.spend_attempt() {
            return;
        }
        match reply {
            ErrorReply::NotLeader { address: Some(hint), .. } if hint != addr => {
                self.note_failure(format!("{addr} is not the leader; {hint} is"), false);
                client.set_leader(partition, hint);
                self.target = Some(hint);
                self.drop_link("re-routed to the leader");
                if self.retry.as_ref().is_some_and(|r| r.attempts > 1) {
                    self.sleep_backoff();
                }
            }
            ErrorReply::NotLeader { .. } => {
                self.note_failure(format!("{addr} is not the leader and names none"), true);
                client.forget_leader(partition, addr);
                self.drop_link("re-routed to the leader");
                self.sleep_backoff();
            }
            ErrorReply::Backpressure { retry_after_ms } => {
                self.note_failure(format!("{addr} answered Backpressure"), false);
                let delay = Duration::from_millis(retry_after_ms.into()).min(BACKPRESSURE_WAIT_MAX);
                std::thread::sleep(delay.max(client.config.backoff_initial));
            }
            other => unreachable!("only NotLeader and Backpressure are resent, not {other:?}"),
        }
    }

    /// Counts one attempt; false (and every unsent produce failed) once the client's
    /// attempt or time bound is spent.
    fn spend_attempt(&mut self) -> bool {
        let initial = self.shared.client.config.backoff_initial;
        let retry = self.retry.get_or_insert_with(|| Retry {
            started: Instant::now(),
            attempts: 0,
            backoff: initial,
            last: String::from("no attempt made"),
            leaderless: false,
        });
        retry.attempts += 1;
        if !self.retry_exhausted() {
            return true;
        }
        let retry = self.retry.take().expect("set above");
        let (attempts, elapsed, partition) =
            (retry.attempts - 1, retry.started.elapsed(), self.shared.partition);
        self.shared.lock_state().fail_unsent(|| {
            let last = retry.last.clone();
            if retry.leaderless {
                ClientError::NoLeader { partition, attempts, elapsed, last }
            } else {
                ClientError::RetriesExhausted { attempts, elapsed, last }
            }
        });
        self.release();
        false
    }

    fn retry_exhausted(&self) -> bool {
        let config = &self.shared.client.config;
        self.retry.as_ref().is_some_and(|r| {
            r.attempts > config.attempts_max
                || (r.attempts > 1 && r.started.elapsed() >= config.retry_time_max)
        })
    }

    fn note_failure(&mut self, last: String, leaderless: bool) {
        if let Some(retry) = self.retry.as_mut() {
            retry.last = last;
            retry.leaderless = leaderless;
        }
    }

    fn sleep_backoff(&mut self) {
        let config = &self.shared.client.config;
        let Some(retry) = self.retry.as_mut() else { return };
        std::thread::sleep(jitter(retry.backoff));
        retry.backoff = (retry.backoff * 2).min(config.backoff_max);
    }

    fn release(&self) {
        if self.shared.lock_state().release_done() {
            self.shared.changed.notify_all();
        }
    }
}

impl Writer {
    /// Writes one frame's chunks (small frames gathered into one write).
    fn write_frame(&mut self, chunks: &[Bytes]) -> io::Result<()> {
        let Some(session) = &self.tls else {
            return super::write_frame(&mut self.sock, chunks);
        };
        // Encrypt under the session lock, write outside it (the reader needs the session).
        let mut out = Vec::new();
        {
            let mut session = session.lock().expect("TLS session lock");
            for chunk in chunks {
                let mut rest = &chunk[..];
                while !rest.is_empty() {
                    let n = session.writer().write(rest)?;
                    while session.wants_write() {
                        session.write_tls(&mut out)?;
                    }
                    if n == 0 {
                        return Err(io::Error::new(io::ErrorKind::WriteZero, "TLS session full"));
                    }
                    rest = &rest[n..];
                }
            }
        }
        self.sock.write_all(&out)
    }
}

impl Link {
    /// Reads once (bounded by the read poll timeout) and decodes every whole frame buffered.
    /// Empty on a read timeout; `Err` when the connection ended or failed.
    fn read_frames(&mut self, chunk: &mut [u8]) -> Result<Vec<crate::frame::Frame>, String> {
        let mut frames = self.decode()?;
        if !frames.is_empty() {
            return Ok(frames);
        }
        let read = match &mut self.tls {
            None => self.sock.read(chunk),
            Some(tls) => tls.read(&mut self.sock, chunk),
        };
        match read {
            Ok(0) => return Err(format!("{} closed the connection", self.addr)),
            Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("reading from {}: {e}", self.addr)),
        }
        frames = self.decode()?;
        Ok(frames)
    }

    /// Every whole frame in the buffer (the decoder bounds each by `frame_body_size_max`).
    fn decode(&mut self) -> Result<Vec<crate::frame::Frame>, String> {
        let mut frames = Vec::new();
        loop {
            match self.decoder.decode(&mut self.buf) {
                Ok(Some(frame)) => frames.push(frame),
                Ok(None) => return Ok(frames),
                Err(error) => return Err(format!("malformed frame from {}: {error}", self.addr)),
            }
        }
    }
}

impl TlsReader {
    /// Plaintext from the session, reading ciphertext from `sock` when it has none.
    fn read(&mut self, sock: &mut TcpStream, out: &mut [u8]) -> io::Result<usize> {
        loop {
            {
                let mut session = self.session.lock().expect("TLS session lock");
                match session.reader().read(out) {
                    Ok(n) => return Ok(n),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(e),
                }
                if !self.pending.is_empty() {
                    let mut input: &[u8] = &self.pending;
                    let before = input.len();
                    session.read_tls(&mut input)?;
                    let used = before - input.len();
                    let _ = self.pending.split_to(used);
                    session
                        .process_new_packets()
                        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
                    continue;
                }
            }
            let n = sock.read(out)?;
            if n == 0 {
                return Ok(0);
            }
            self.pending.extend_from_slice(&out[..n]);
        }
    }
}
