//! The HTTP endpoint on `listen.metrics`: `/metrics`, `/health` and `/ready` on one thread.
//!
//! Prometheus scrapes a node every few seconds with one `GET /metrics`; this thread answers
//! it with a fresh snapshot rendered by [`super::render`] and closes the connection. `/health`
//! is 200 while the process is up; `/ready` is 200 only when the node is ready (health.rs).
//! The thread never touches a shard directly: the node's state comes through
//! `NodeHandle::snapshot()` (or any closure given to [`spawn_exporter_with`]), like any
//! foreign thread's request.
//!
//! HTTP is hyper's HTTP/1 server (`hyper::server::conn::http1`) on a current-thread tokio
//! runtime owned by the exporter's thread. Not `tiny_http`: its 0.12 reads a request line or
//! header of any length, runs every connection on a thread of an unbounded pool, has no read
//! or write deadline, and its `Drop` does not join its accept thread (the port may still be
//! held after it returns) — each of these would lose a protection this endpoint has.
//!
//! Protections kept: connections are served one at a time (a scrape takes milliseconds); a
//! client that is slow to send its request or to read the answer is cut off at
//! [`CONNECTION_DEADLINE`] (a tokio timeout around the whole connection); a request head over
//! [`REQUEST_BYTES_MAX`] is refused with 431 by hyper (`max_buf_size`) without reading
//! further; a malformed request line gets 400 from hyper. Keep-alive is off: one request per
//! connection, so no client holds the endpoint between scrapes.
//!
//! Invariants: at most one connection is open at a time; at most `REQUEST_BYTES_MAX` bytes of
//! a request are buffered; dropping the [`MetricsServer`] stops the thread and joins it (the
//! listener is closed when it returns, so the port is free).

use std::cell::RefCell;
use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::Bytes;
use futures_lite::future;
use http_body_util::Full;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

use super::health::{readiness, NodeSlot, NodeState};
use crate::node::NodeHandle;

/// Largest request head (request line and headers) buffered; a longer one gets 431. hyper
/// accepts no smaller bound than its initial read buffer (8 KiB).
pub const REQUEST_BYTES_MAX: usize = 8 * 1024;
/// Longest a connection may take, from accept to the last byte of the answer.
pub const CONNECTION_DEADLINE: Duration = Duration::from_secs(5);
/// Pause after accept() ran out of file descriptors.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// Linux errno values for "too many open files" (process, system).
const EMFILE: i32 = 24;
const ENFILE: i32 = 23;
/// The paths the endpoint answers on.
const METRICS_PATH: &str = "/metrics";
const HEALTH_PATH: &str = "/health";
const READY_PATH: &str = "/ready";
const PLAIN_TEXT: &str = "text/plain; charset=utf-8";

/// A running endpoint. Dropping it stops the thread and waits for it to exit.
#[derive(Debug)]
pub struct MetricsServer {
    local_addr: SocketAddr,
    stop: Arc<Notify>,
    thread: Option<JoinHandle<()>>,
}

impl MetricsServer {
    /// The address the endpoint is bound to (the real port when `addr` had port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        // A stored permit: the loop sees it at its next await, or at once if waiting.
        self.stop.notify_one();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Serves a started node: `handle`'s snapshots as Prometheus text on `GET /metrics`, its
/// readiness on `/ready` and `/health`, at `addr` (normally `listen.metrics`, loopback by
/// default). Fails only if `addr` cannot be bound or the thread cannot be spawned; requests
/// that find the node stopping are answered 503.
pub fn spawn_exporter(addr: SocketAddr, handle: NodeHandle) -> io::Result<MetricsServer> {
    spawn_exporter_with(addr, move || NodeState::of(&handle))
}

/// [`spawn_exporter`] for a node that is still starting: `/ready` says so (and `/metrics`
/// answers 503) until the node is put in `slot`. `ringlog serve` binds it before starting
/// the node, so a supervisor sees the process up during recovery.
pub fn spawn_exporter_for(addr: SocketAddr, slot: NodeSlot) -> io::Result<MetricsServer> {
    spawn_exporter_with(addr, move || slot.state())
}

/// [`spawn_exporter`] over any source of node states (called at most once per request, on
/// the endpoint's thread; `/health` does not call it).
pub fn spawn_exporter_with<F>(addr: SocketAddr, state: F) -> io::Result<MetricsServer>
where
    F: FnMut() -> NodeState + Send + 'static,
{
    let runtime =
        tokio::runtime::Builder::new_current_thread().enable_io().enable_time().build()?;
    let listener = std::net::TcpListener::bind(addr)?;
    let local_addr = listener.local_addr()?;
    listener.set_nonblocking(true)?;
    let listener = {
        let _context = runtime.enter();
        TcpListener::from_std(listener)?
    };
    let stop = Arc::new(Notify::new());
    let thread_stop = Arc::clone(&stop);
    let thread = std::thread::Builder::new()
        .name("ringlog-metrics".to_string())
        .spawn(move || runtime.block_on(accept_loop(listener, &thread_stop, state)))?;
    Ok(MetricsServer { local_addr, stop, thread: Some(thread) })
}

async fn accept_loop<F>(listener: TcpListener, stop: &Notify, state: F)
where
    F: FnMut() -> NodeState,
{
    let state = RefCell::new(state);
    loop {
        let accepted =
            future::or(async { Some(listener.accept().await) }, stopped(stop, None)).await;
        let Some(accepted) = accepted else { return };
        match accepted {
            Ok((stream, _)) => {
                let served = async {
                    serve_connection(stream, &state).await;
                    true
                };
                if !future::or(served, stopped(stop, false)).await {
                    return;
                }
            }
            Err(error) if is_transient_accept_error(&error) => {}
            Err(error) if is_descriptor_exhaustion(&error) => {
                tokio::time::sleep(ACCEPT_BACKOFF).await;
            }
            Err(error) => {
                eprintln!("ringlog: metrics endpoint stops: accept failed: {error}");
                return;
            }
        }
    }
}

/// Resolves to `value` once the server is being dropped.
async fn stopped<T>(stop: &Notify, value: T) -> T {
    stop.notified().await;
    value
}

/// Serves one request on `stream` within [`CONNECTION_DEADLINE`], then closes it.
async fn serve_connection<F>(stream: TcpStream, state: &RefCell<F>)
where
    F: FnMut() -> NodeState,
{
    let service = service_fn(|request: Request<hyper::body::Incoming>| {
        let response = answer(request.method(), request.uri().path(), || (state.borrow_mut())());
        async move { Ok::<_, Infallible>(response) }
    });
    let connection = http1::Builder::new()
        .keep_alive(false)
        .title_case_headers(true)
        .max_buf_size(REQUEST_BYTES_MAX)
        .header_read_timeout(None)
        .serve_connection(TokioIo::new(stream), service);
    // A failed or timed-out connection concerns only that client; dropping it closes it.
    let _ = tokio::time::timeout(CONNECTION_DEADLINE, connection).await;
}

/// Errors after which accept() can simply be called again (a connection aborted before we
/// took it, a signal).
fn is_transient_accept_error(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
    )
}

/// EMFILE / ENFILE (Linux numbers): out of descriptors for a moment; back off, retry.
fn is_descriptor_exhaustion(error: &io::Error) -> bool {
    matches!(error.raw_os_error(), Some(EMFILE) | Some(ENFILE))
}

/// What a path names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Route {
    Metrics,
    Health,
    Ready,
    NotFound,
    MethodNotAllowed,
}

/// Decides the answer from the method and path (the query is not part of `path`).
fn route(method: &Method, path: &str) -> Route {
    let route = match path {
        METRICS_PATH => Route::Metrics,
        HEALTH_PATH => Route::Health,
        READY_PATH => Route::Ready,
        _ => return Route::NotFound,
    };
    if method == Method::GET || method == Method::HEAD {
        route
    } else {
        Route::MethodNotAllowed
    }
}

/// The answer to one request; `state` is asked only by `/metrics` and `/ready`. hyper
/// leaves the body out of an answer to HEAD.
fn answer(method: &Method, path: &str, state: impl FnOnce() -> NodeState) -> Response<Full<Bytes>> {
    match route(method, path) {
        Route::Health => text(StatusCode::OK, "ok\n".into()),
        Route::Ready => match readiness(&state()) {
            Ok(()) => text(StatusCode::OK, "ready\n".into()),
            Err(reason) => text(StatusCode::SERVICE_UNAVAILABLE, reason),
        },
        Route::Metrics => match state() {
            NodeState::Running { snapshot, .. } => {
                respond(StatusCode::OK, super::CONTENT_TYPE, super::render_owned(snapshot))
            }
            NodeState::Starting => text(
                StatusCode::SERVICE_UNAVAILABLE,
                "node snapshot unavailable: the node is starting\n".into(),
            ),
            NodeState::Unavailable(error) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("node snapshot unavailable: {error}\n"),
            ),
        },
        Route::NotFound => {
            text(StatusCode::NOT_FOUND, "try GET /metrics, /health or /ready\n".into())
        }
        Route::MethodNotAllowed => {
            text(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD\n".into())
        }
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    respond(status, PLAIN_TEXT, body)
}

fn respond(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::{NodeError, NodeSnapshot, PartitionId, PartitionSnapshot, ShardSnapshot};
    use ringlog_raft::NodeId;
    use std::io::{Read, Write};
    use std::time::Instant;

    /// Sends `request` raw and returns the whole answer as text.
    fn exchange(addr: SocketAddr, request: &[u8]) -> String {
        let mut stream = std::net::TcpStream::connect(addr).expect("connect to the exporter");
        stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        stream.write_all(request).unwrap();
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).expect("read the answer");
        String::from_utf8(answer).expect("UTF-8 answer")
    }

    fn node_snapshot() -> NodeSnapshot {
        NodeSnapshot { node: NodeId(4), ..NodeSnapshot::default() }
    }

    fn running() -> NodeState {
        NodeState::Running { snapshot: node_snapshot(), partitions: 0 }
    }

    fn exporter() -> MetricsServer {
        spawn_exporter_with("127.0.0.1:0".parse().unwrap(), running).unwrap()
    }

    #[test]
    fn scrape_answers_the_rendered_snapshot_with_the_prometheus_content_type() {
        let server = exporter();
        let answer = exchange(server.local_addr(), b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
        let (head, body) = answer.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
        assert!(head.contains("Content-Type: text/plain; version=0.0.4; charset=utf-8"), "{head}");
        assert!(head.contains(&format!("Content-Length: {}", body.len())), "{head}");
        assert_eq!(body, super::super::render(&node_snapshot()));
    }

    #[test]
    fn head_request_gets_the_headers_without_a_body() {
        let server = exporter();
        let answer = exchange(server.local_addr(), b"HEAD /metrics HTTP/1.1\r\n\r\n");
        let (head, body) = answer.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
        assert_eq!(body, "");
    }

    #[test]
    fn an_unknown_path_is_404_a_post_is_405_and_garbage_is_400() {
        let server = exporter();
        let addr = server.local_addr();
        assert!(exchange(addr, b"GET /other HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 404 "));
        assert!(exchange(addr, b"POST /metrics HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 405 "));
        assert!(exchange(addr, b"POST /ready HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 405 "));
        for garbage in [
            &b"hello\r\n\r\n"[..],
            b"GET /metrics\r\n\r\n",
            b"GET /metrics SPDY/3\r\n\r\n",
            b"\xff\xfe /metrics HTTP/1.1\r\n\r\n",
        ] {
            let answer = exchange(addr, garbage);
            assert!(answer.starts_with("HTTP/1.1 400 "), "{garbage:?}: {answer}");
        }
    }

    #[test]
    fn a_request_head_over_the_limit_is_refused_with_431() {
        let server = exporter();
        let mut request = b"GET /metrics HTTP/1.1\r\nX-Padding: ".to_vec();
        request.resize(REQUEST_BYTES_MAX + 100, b'a');
        let answer = exchange(server.local_addr(), &request);
        assert!(answer.starts_with("HTTP/1.1 431 "), "{answer}");
        // The exporter still serves the next scrape.
        let answer = exchange(server.local_addr(), b"GET /metrics HTTP/1.1\r\n\r\n");
        assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
    }

    #[test]
    fn a_failing_snapshot_is_answered_503_with_the_reason() {
        let server = spawn_exporter_with("127.0.0.1:0".parse().unwrap(), || {
            NodeState::Unavailable(NodeError::Stopped)
        })
        .unwrap();
        let answer = exchange(server.local_addr(), b"GET /metrics HTTP/1.1\r\n\r\n");
        assert!(answer.starts_with("HTTP/1.1 503 "), "{answer}");
        assert!(answer.ends_with("node snapshot unavailable: the node has stopped\n"), "{answer}");
    }

    #[test]
    fn a_silent_client_is_cut_off_at_the_deadline_and_the_next_scrape_is_served() {
        let server = exporter();
        let started = Instant::now();
        let mut silent = std::net::TcpStream::connect(server.local_addr()).unwrap();
        // Give the exporter time to take the silent connection first.
        std::thread::sleep(Duration::from_millis(200));
        let answer = exchange(server.local_addr(), b"GET /metrics HTTP/1.1\r\n\r\n");
        assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
        assert!(started.elapsed() >= CONNECTION_DEADLINE, "served before the silent one was cut");
        silent.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut rest = Vec::new();
        assert_eq!(silent.read_to_end(&mut rest).map(|_| rest.len()).unwrap_or(0), 0);
    }

    #[test]
    fn dropping_the_server_stops_its_thread_and_frees_the_port() {
        let server = exporter();
        let addr = server.local_addr();
        drop(server);
        assert!(std::net::TcpStream::connect(addr).is_err(), "still accepting after drop");
        let again = spawn_exporter_with(addr, running).expect("port free again");
        assert_eq!(again.local_addr(), addr);
    }

    #[test]
    fn health_is_200_while_starting_and_ready_is_503_until_the_node_is_ready() {
        let slot = NodeSlot::new();
        let server = spawn_exporter_for("127.0.0.1:0".parse().unwrap(), slot).unwrap();
        let addr = server.local_addr();
        let health = exchange(addr, b"GET /health HTTP/1.1\r\n\r\n");
        assert!(
            health.starts_with("HTTP/1.1 200 ") && health.ends_with("\r\n\r\nok\n"),
            "{health}"
        );
        let ready = exchange(addr, b"GET /ready HTTP/1.1\r\n\r\n");
        assert!(ready.starts_with("HTTP/1.1 503 "), "{ready}");
        assert!(ready.ends_with("not ready: the node is starting (recovering its partitions)\n"));
        let metrics = exchange(addr, b"GET /metrics HTTP/1.1\r\n\r\n");
        assert!(metrics.starts_with("HTTP/1.1 503 "), "{metrics}");
    }

    #[test]
    fn ready_follows_the_node_state_damaged_no_leader_then_ready() {
        let states = std::sync::Mutex::new(vec![
            (Some(1), false), // last: ready
            (None, false),    // no leader
            (Some(1), true),  // damaged
        ]);
        let server = spawn_exporter_with("127.0.0.1:0".parse().unwrap(), move || {
            let (leader, damaged) = states.lock().unwrap().pop().expect("one state per request");
            let partition = PartitionSnapshot {
                partition: PartitionId(0),
                leader: leader.map(NodeId),
                damaged,
                ..PartitionSnapshot::default()
            };
            let shard = ShardSnapshot { partitions: vec![partition], ..ShardSnapshot::default() };
            let snapshot =
                NodeSnapshot { node: NodeId(1), shards: vec![shard], ..NodeSnapshot::default() };
            NodeState::Running { snapshot, partitions: 1 }
        })
        .unwrap();
        let addr = server.local_addr();
        let damaged = exchange(addr, b"GET /ready HTTP/1.1\r\n\r\n");
        assert!(damaged.starts_with("HTTP/1.1 503 "), "{damaged}");
        assert!(damaged.ends_with(
            "\r\n\r\nnot ready: partition 0: damaged (waiting for repair by a leader)\n"
        ));
        let no_leader = exchange(addr, b"HEAD /ready HTTP/1.1\r\n\r\n");
        assert!(no_leader.starts_with("HTTP/1.1 503 ") && no_leader.ends_with("\r\n\r\n"));
        let ready = exchange(addr, b"GET /ready HTTP/1.1\r\n\r\n");
        assert!(
            ready.starts_with("HTTP/1.1 200 ") && ready.ends_with("\r\n\r\nready\n"),
            "{ready}"
        );
    }

    #[test]
    fn route_answers_get_and_head_on_the_three_paths_only() {
        assert_eq!(route(&Method::GET, "/metrics"), Route::Metrics);
        assert_eq!(route(&Method::HEAD, "/metrics"), Route::Metrics);
        assert_eq!(route(&Method::GET, "/health"), Route::Health);
        assert_eq!(route(&Method::HEAD, "/ready"), Route::Ready);
        assert_eq!(route(&Method::POST, "/metrics"), Route::MethodNotAllowed);
        assert_eq!(route(&Method::DELETE, "/ready"), Route::MethodNotAllowed);
        assert_eq!(route(&Method::GET, "/"), Route::NotFound);
        assert_eq!(route(&Method::POST, "/other"), Route::NotFound);
    }

    #[test]
    fn a_query_string_does_not_change_the_route() {
        let server = exporter();
        let answer = exchange(server.local_addr(), b"GET /metrics?x=1 HTTP/1.0\r\n\r\n");
        assert!(answer.starts_with("HTTP/1.") && answer[8..].starts_with(" 200 "), "{answer}");
    }
}
