//! A panic in any thread of `ringlog serve` ends the process (issue 13: a Raft assertion that
//! killed only its shard thread left a node that answered nothing but held its ports, so
//! `Restart=on-failure` never fired).
//!
//! The panic is injected in shard 0 through `RINGLOG_FAULT_PANIC_SHARD_AFTER_MS` (read by the
//! node at start, unset in production). Runs on the real disk under CARGO_TARGET_TMPDIR.

use std::io::{BufRead, BufReader, Read};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Longest wait for the ready line, and then for the process to end after the panic.
const WAIT_MAX: Duration = Duration::from_secs(30);
/// How long after shard 0 is ready the injected panic fires.
const PANIC_AFTER_MS: &str = "5000";
/// `serve`'s exit status after a panic (src/serve.rs `EXIT_PANIC`).
const EXIT_PANIC: i32 = 3;

/// A port `p` such that `p` and `p + 1` were both free (shard `i` listens on the configured
/// port + `i`; with two shards a lone free port is not enough: its neighbour may be an
/// ephemeral port in use, and the node then fails to start).
fn free_port_pair(taken: &[u16]) -> u16 {
    for _ in 0..1000 {
        let first = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = first.local_addr().unwrap().port();
        if port == u16::MAX || taken.iter().any(|&t| t.abs_diff(port) <= 1) {
            continue;
        }
        if TcpListener::bind(("127.0.0.1", port + 1)).is_ok() {
            return port;
        }
    }
    panic!("no two consecutive free ports on 127.0.0.1");
}

fn write_config(dir: &Path) -> (std::path::PathBuf, u16) {
    let client = free_port_pair(&[]);
    let peer = free_port_pair(&[client]);
    let metrics = free_port_pair(&[client, peer]);
    let text = format!(
        "node_id = 1\ncluster_id = 42\ndata_dir = \"{}\"\nshards = 2\nio_memory = 1048576\n\
         partitions = 2\n[listen]\nmetrics = \"127.0.0.1:{metrics}\"\n\
         [[peers]]\nid = 1\npeer = \"127.0.0.1:{peer}\"\nclient = \"127.0.0.1:{client}\"\n\
         [storage]\nsegment_size = 1048576\nflush_bytes_max = 262144\nbatch_size_max = 65536\n\
         [log]\nlevel = \"warn\"\n[tls]\nmode = \"plaintext\"\n",
        dir.join("data").display()
    );
    let path = dir.join("node.toml");
    std::fs::write(&path, text).unwrap();
    (path, client)
}

#[test]
fn a_panic_in_a_shard_thread_ends_the_serve_process_and_frees_its_ports() {
    let tmp = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let (config, client_port) = write_config(tmp.path());
    let mut child = Command::new(env!("CARGO_BIN_EXE_ringlog"))
        .args(["serve", "--config"])
        .arg(&config)
        // Late enough that the node printed its ready line first even on a loaded machine
        // (at 500 ms a start under a CPU hog panicked before it was ready).
        .env("RINGLOG_FAULT_PANIC_SHARD_AFTER_MS", PANIC_AFTER_MS)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start ringlog serve");
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut ready = String::new();
    stdout.read_line(&mut ready).unwrap();
    if !ready.starts_with("ringlog: ready") {
        let _ = child.kill();
        let status = child.wait();
        let mut stderr = String::new();
        let _ = child.stderr.take().unwrap().read_to_string(&mut stderr);
        panic!("no ready line: {ready:?}; the node ended with {status:?}; stderr:\n{stderr}");
    }
    let deadline = Instant::now() + WAIT_MAX;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the node was still running {WAIT_MAX:?} after its shard 0 panicked");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    assert_eq!(status.code(), Some(EXIT_PANIC), "exit status {status:?}; stderr:\n{stderr}");
    assert!(stderr.contains("injected panic"), "the panic was not printed; stderr:\n{stderr}");
    // The client listener died with the process. A bind proves nothing listens there any
    // more (a connect could self-connect on an ephemeral port); retried briefly, as the
    // kernel may release the socket a moment after the exit is reaped.
    let deadline = Instant::now() + Duration::from_secs(5);
    while TcpListener::bind(("127.0.0.1", client_port)).is_err() {
        assert!(Instant::now() < deadline, "port {client_port} is still held after the panic");
        std::thread::sleep(Duration::from_millis(50));
    }
}
