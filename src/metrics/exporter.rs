//! The `/metrics` HTTP endpoint: a minimal HTTP/1.1 server on one std thread.
//!
//! Prometheus scrapes a node every few seconds with one `GET /metrics`; this thread answers
//! it with a fresh snapshot rendered by [`super::render`] and closes the connection. It never
//! touches a shard directly: the snapshot comes through `NodeHandle::snapshot()` (or any
//! closure given to [`spawn_exporter_with`]), like any foreign thread's request.
//!
//! Connections are served one at a time (a scrape takes milliseconds); a client that is slow
//! to send its request or to read the answer is cut off at [`CONNECTION_DEADLINE`], and a
//! request head over [`REQUEST_BYTES_MAX`] is refused with 431 without reading further, so
//! no client can hold the exporter or make it allocate without bound.
//!
//! Invariants: at most one connection is open at a time; at most `REQUEST_BYTES_MAX` bytes of
//! a request are read; dropping the [`MetricsServer`] stops the thread and joins it (it is
//! woken by a connection to its own address).

use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::node::{NodeError, NodeHandle, NodeSnapshot};

/// Largest request head (request line and headers) read; a longer one gets 431.
pub const REQUEST_BYTES_MAX: usize = 8 * 1024;
/// Longest a connection may take, from accept to the last byte of the answer.
pub const CONNECTION_DEADLINE: Duration = Duration::from_secs(5);
/// How long the stopping thread waits to connect to the exporter to wake it.
const WAKE_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Pause after accept() ran out of file descriptors.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// Linux errno values for "too many open files" (process, system).
const EMFILE: i32 = 24;
const ENFILE: i32 = 23;
/// The path the exporter answers on.
const METRICS_PATH: &str = "/metrics";

/// A running exporter. Dropping it stops the thread and waits for it to exit.
#[derive(Debug)]
pub struct MetricsServer {
    local_addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl MetricsServer {
    /// The address the exporter is bound to (the real port when `addr` had port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let Some(thread) = self.thread.take() else { return };
        // The thread sits in accept(): a connection to ourselves wakes it, it sees `stop`.
        match TcpStream::connect_timeout(&wake_address(self.local_addr), WAKE_CONNECT_TIMEOUT) {
            Ok(_) => {
                let _ = thread.join();
            }
            Err(error) => {
                // Joining would block forever; the thread exits at its next connection.
                eprintln!(
                    "ringlog: metrics exporter on {} not woken ({error}); left to exit later",
                    self.local_addr
                );
            }
        }
    }
}

/// Serves `handle`'s snapshots as Prometheus text on `GET /metrics` at `addr` (normally
/// `listen.metrics`, loopback by default). Fails only if `addr` cannot be bound or the
/// thread cannot be spawned; scrapes that find the node stopping are answered 503.
pub fn spawn_exporter(addr: SocketAddr, handle: NodeHandle) -> io::Result<MetricsServer> {
    spawn_exporter_with(addr, move || handle.snapshot())
}

/// [`spawn_exporter`] over any source of snapshots (called once per scrape, on the
/// exporter's thread).
pub fn spawn_exporter_with<F>(addr: SocketAddr, snapshot: F) -> io::Result<MetricsServer>
where
    F: FnMut() -> Result<NodeSnapshot, NodeError> + Send + 'static,
{
    let listener = TcpListener::bind(addr)?;
    let local_addr = listener.local_addr()?;
    let stop = Arc::new(AtomicBool::new(false));
    let thread_stop = Arc::clone(&stop);
    let thread = std::thread::Builder::new()
        .name("ringlog-metrics".to_string())
        .spawn(move || accept_loop(&listener, &thread_stop, snapshot))?;
    Ok(MetricsServer { local_addr, stop, thread: Some(thread) })
}

/// Where to connect to reach a listener bound to `bound` (an unspecified IP is reached on
/// the loopback address of its family).
fn wake_address(bound: SocketAddr) -> SocketAddr {
    let ip = match bound.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, bound.port())
}

fn accept_loop<F>(listener: &TcpListener, stop: &AtomicBool, mut snapshot: F)
where
    F: FnMut() -> Result<NodeSnapshot, NodeError>,
{
    loop {
        let accepted = listener.accept();
        if stop.load(Ordering::SeqCst) {
            return;
        }
        match accepted {
            Ok((stream, _)) => {
                // A failed connection (reset, timeout) concerns only that scraper.
                let _ = serve_connection(stream, &mut snapshot);
            }
            Err(error) if is_transient_accept_error(&error) => {}
            Err(error) if is_descriptor_exhaustion(&error) => std::thread::sleep(ACCEPT_BACKOFF),
            Err(error) => {
                eprintln!("ringlog: metrics exporter stops: accept failed: {error}");
                return;
            }
        }
    }
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

/// What the exporter answers to one request head.
#[derive(Debug, PartialEq, Eq)]
enum Route {
    Metrics { head_only: bool },
    NotFound,
    MethodNotAllowed,
    BadRequest(&'static str),
}

/// Reads one request head, answers it, closes the connection.
fn serve_connection<F>(mut stream: TcpStream, snapshot: &mut F) -> io::Result<()>
where
    F: FnMut() -> Result<NodeSnapshot, NodeError>,
{
    let deadline = Instant::now() + CONNECTION_DEADLINE;
    let route = match read_head(&mut stream, deadline)? {
        Some(head) => route(&head),
        None => {
            return respond(
                &mut stream,
                deadline,
                "431 Request Header Fields Too Large",
                "request head too large\n",
                false,
            );
        }
    };
    match route {
        Route::Metrics { head_only } => match snapshot() {
            Ok(snapshot) => {
                let text = super::render_owned(snapshot);
                respond_with(&mut stream, deadline, "200 OK", super::CONTENT_TYPE, &text, head_only)
            }
            Err(error) => {
                let body = format!("node snapshot unavailable: {error}\n");
                respond(&mut stream, deadline, "503 Service Unavailable", &body, head_only)
            }
        },
        Route::NotFound => {
            respond(&mut stream, deadline, "404 Not Found", "try GET /metrics\n", false)
        }
        Route::MethodNotAllowed => {
            respond(&mut stream, deadline, "405 Method Not Allowed", "only GET and HEAD\n", false)
        }
        Route::BadRequest(why) => respond(&mut stream, deadline, "400 Bad Request", why, false),
    }
}

/// Reads until the blank line ending the request head. `Ok(None)` when the head is longer
/// than [`REQUEST_BYTES_MAX`]; an error when the deadline passes or the peer closes first.
fn read_head(stream: &mut TcpStream, deadline: Instant) -> io::Result<Option<Vec<u8>>> {
    let mut head = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    // Bounded: each pass reads at least one byte or returns; the head is capped below.
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "request not received in time"));
        }
        stream.set_read_timeout(Some(remaining))?;
        let read = stream.read(&mut chunk)?;
        if read == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "closed before the request"));
        }
        let searched_from = head.len().saturating_sub(3);
        head.extend_from_slice(&chunk[..read]);
        if head[searched_from..].windows(4).any(|w| w == b"\r\n\r\n") {
            return Ok(Some(head));
        }
        if head.len() >= REQUEST_BYTES_MAX {
            return Ok(None);
        }
    }
}

/// Decides the answer from the request line.
fn route(head: &[u8]) -> Route {
    let line_end = head.iter().position(|&b| b == b'\r').unwrap_or(head.len());
    let Ok(line) = std::str::from_utf8(&head[..line_end]) else {
        return Route::BadRequest("request line is not UTF-8\n");
    };
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Route::BadRequest("malformed request line\n");
    };
    if !version.starts_with("HTTP/1.") {
        return Route::BadRequest("only HTTP/1.x\n");
    }
    let path = target.split('?').next().unwrap_or(target);
    if path != METRICS_PATH {
        return Route::NotFound;
    }
    match method {
        "GET" => Route::Metrics { head_only: false },
        "HEAD" => Route::Metrics { head_only: true },
        _ => Route::MethodNotAllowed,
    }
}

fn respond(
    stream: &mut TcpStream,
    deadline: Instant,
    status: &str,
    body: &str,
    head_only: bool,
) -> io::Result<()> {
    respond_with(stream, deadline, status, "text/plain; charset=utf-8", body, head_only)
}

/// Writes a complete answer and closes the connection.
fn respond_with(
    stream: &mut TcpStream,
    deadline: Instant,
    status: &str,
    content_type: &str,
    body: &str,
    head_only: bool,
) -> io::Result<()> {
    let remaining = deadline.saturating_duration_since(Instant::now());
    stream.set_write_timeout(Some(remaining.max(Duration::from_millis(1))))?;
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    if !head_only {
        stream.write_all(body.as_bytes())?;
    }
    stream.flush()?;
    stream.shutdown(Shutdown::Both)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringlog_raft::NodeId;

    /// Sends `request` raw and returns the whole answer as text.
    fn exchange(addr: SocketAddr, request: &[u8]) -> String {
        let mut stream = TcpStream::connect(addr).expect("connect to the exporter");
        stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        stream.write_all(request).unwrap();
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).expect("read the answer");
        String::from_utf8(answer).expect("UTF-8 answer")
    }

    fn node_snapshot() -> NodeSnapshot {
        NodeSnapshot { node: NodeId(4), shards: Vec::new() }
    }

    fn exporter() -> MetricsServer {
        spawn_exporter_with("127.0.0.1:0".parse().unwrap(), || Ok(node_snapshot())).unwrap()
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
        assert!(exchange(addr, b"hello\r\n\r\n").starts_with("HTTP/1.1 400 "));
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
        let server =
            spawn_exporter_with("127.0.0.1:0".parse().unwrap(), || Err(NodeError::Stopped))
                .unwrap();
        let answer = exchange(server.local_addr(), b"GET /metrics HTTP/1.1\r\n\r\n");
        assert!(answer.starts_with("HTTP/1.1 503 "), "{answer}");
        assert!(answer.ends_with("node snapshot unavailable: the node has stopped\n"), "{answer}");
    }

    #[test]
    fn a_silent_client_is_cut_off_at_the_deadline_and_the_next_scrape_is_served() {
        let server = exporter();
        let started = Instant::now();
        let mut silent = TcpStream::connect(server.local_addr()).unwrap();
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
        assert!(TcpStream::connect(addr).is_err(), "still accepting after drop");
        let again = spawn_exporter_with(addr, || Ok(node_snapshot())).expect("port free again");
        assert_eq!(again.local_addr(), addr);
    }

    #[test]
    fn route_answers_get_and_head_on_metrics_only() {
        assert_eq!(route(b"GET /metrics HTTP/1.1\r\n\r\n"), Route::Metrics { head_only: false });
        assert_eq!(
            route(b"GET /metrics?x=1 HTTP/1.0\r\n\r\n"),
            Route::Metrics { head_only: false }
        );
        assert_eq!(route(b"HEAD /metrics HTTP/1.1\r\n\r\n"), Route::Metrics { head_only: true });
        assert_eq!(route(b"POST /metrics HTTP/1.1\r\n\r\n"), Route::MethodNotAllowed);
        assert_eq!(route(b"GET / HTTP/1.1\r\n\r\n"), Route::NotFound);
        assert!(matches!(route(b"GET /metrics\r\n\r\n"), Route::BadRequest(_)));
        assert!(matches!(route(b"GET /metrics SPDY/3\r\n\r\n"), Route::BadRequest(_)));
        assert!(matches!(route(b"\xff\xfe /metrics HTTP/1.1\r\n\r\n"), Route::BadRequest(_)));
    }

    #[test]
    fn wake_address_of_an_unspecified_bind_is_loopback() {
        let any: SocketAddr = "0.0.0.0:9464".parse().unwrap();
        assert_eq!(wake_address(any), "127.0.0.1:9464".parse().unwrap());
        let any6: SocketAddr = "[::]:9464".parse().unwrap();
        assert_eq!(wake_address(any6), "[::1]:9464".parse().unwrap());
        let own: SocketAddr = "127.0.0.2:1".parse().unwrap();
        assert_eq!(wake_address(own), own);
    }
}
