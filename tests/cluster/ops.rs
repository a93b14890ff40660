//! Issue 18 (Operable), first bullet, end to end with real `ringlog serve` processes:
//! `/health` and `/ready` beside `/metrics` (damaged and leaderless at a fresh node's first
//! start, ready once the cluster formed, leaderless again once it lost its quorum), systemd
//! notification through a fake `NOTIFY_SOCKET` (`READY=1` after the ready line, `STOPPING=1`
//! when the stop begins), and SIGHUP reloading `log.level` and the TLS certificate (a bad
//! certificate is refused and the node keeps serving with the one it had).
//!
//! The starting state (`/ready` 503 before the node opened its partitions) is too short to
//! catch in a process; the exporter's unit tests hold it (`NodeSlot`).

#[path = "harness.rs"]
mod harness;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use harness::{Cluster, Spec, LIVENESS_TIMEOUT};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use ringlog_net::tls::{client_config, node_server_name, read_certs, NODE_SERVER_NAME};
use ringlog_node::config::{PinningMode, TlsMode, TlsSection};
use rustls::pki_types::CertificateDer;

/// Generous bound for what a node does after a signal (the machine is shared, tests run at
/// the lowest priority).
const SIGNAL_EFFECT_WAIT: Duration = Duration::from_secs(60);

/// `GET path` over a plain socket: the status code and the body.
fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).expect("connect to the HTTP endpoint");
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).expect("read the answer");
    let (head, body) = answer.split_once("\r\n\r\n").expect("a head and a body");
    let status = head.split(' ').nth(1).and_then(|code| code.parse().ok()).expect("a status");
    (status, body.to_string())
}

/// Polls `GET path` until `accept` holds (printing how long it took); panics with the last
/// answer after twice [`LIVENESS_TIMEOUT`].
fn wait_for(addr: SocketAddr, path: &str, what: &str, accept: impl Fn(u16, &str) -> bool) {
    let started = Instant::now();
    let deadline = started + LIVENESS_TIMEOUT * 2;
    loop {
        let (status, body) = get(addr, path);
        if accept(status, &body) {
            eprintln!("{path} {what} after {:?}", started.elapsed());
            return;
        }
        assert!(Instant::now() < deadline, "{path} never {what}; last: {status} {body}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn log_of(cluster: &Cluster, id: u32) -> String {
    std::fs::read_to_string(&cluster.nodes[&id].log_path).unwrap_or_default()
}

/// Waits until node `id`'s log holds `needle` at least `count` times; fails at once if the
/// node exited (a SIGHUP that killed it).
fn wait_log(cluster: &mut Cluster, id: u32, needle: &str, count: usize) {
    let deadline = Instant::now() + SIGNAL_EFFECT_WAIT;
    while log_of(cluster, id).matches(needle).count() < count {
        if let Some(status) = cluster.poll_exit(id) {
            panic!("node {id} exited ({status}) before it logged {needle:?}");
        }
        assert!(
            Instant::now() < deadline,
            "node {id} never logged {needle:?} {count} times; log:\n{}",
            harness::tail(&cluster.nodes[&id].log_path, 30)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn ready_is_503_naming_damaged_leaderless_partitions_then_200_and_503_again_without_quorum() {
    let mut cluster = Cluster::configure("ops-ready", Spec::new(3).partitions(2));
    let metrics = cluster.nodes[&1].metrics;
    // Node 1 alone, at its first start: up, but every partition is damaged (a new data
    // directory) and has no leader (no quorum).
    cluster.spawn(1);
    cluster.wait_ready(1);
    assert_eq!(get(metrics, "/health"), (200, "ok\n".to_string()));
    let (status, body) = get(metrics, "/ready");
    assert_eq!(status, 503, "{body}");
    for p in 0..2 {
        assert!(body.contains(&format!("partition {p}: damaged")), "{body}");
        assert!(body.contains(&format!("partition {p}: no leader known")), "{body}");
    }
    // The cluster forms: a leader for each partition, the damage cleared.
    for id in [2, 3] {
        cluster.spawn(id);
    }
    for id in [2, 3] {
        cluster.wait_ready(id);
    }
    wait_for(metrics, "/ready", "became ready", |status, body| status == 200 && body == "ready\n");
    assert_eq!(get(metrics, "/health").0, 200);
    // Without its quorum, node 1 loses its leaders (CheckQuorum, PreVote) and says so.
    cluster.kill(2);
    cluster.kill(3);
    wait_for(metrics, "/ready", "lost its leaders", |status, body| {
        status == 503
            && body.contains("partition 0: no leader known")
            && body.contains("partition 1: no leader known")
    });
    assert_eq!(get(metrics, "/health").0, 200);
}

#[test]
fn serve_notifies_systemd_ready_after_the_ready_line_and_stopping_when_a_stop_begins() {
    let mut cluster = Cluster::configure("ops-notify", Spec::new(1).partitions(1));
    let socket_path = cluster.dir.join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).expect("bind a fake NOTIFY_SOCKET");
    socket.set_read_timeout(Some(SIGNAL_EFFECT_WAIT)).unwrap();
    cluster.spawn_with_env(1, &[("NOTIFY_SOCKET", socket_path.as_os_str())]);
    let mut buffer = [0u8; 4096];
    cluster.wait_ready(1);
    let received = socket.recv(&mut buffer).expect("READY=1 within the wait");
    assert_eq!(std::str::from_utf8(&buffer[..received]).unwrap().trim_end(), "READY=1");
    // Nothing else until a stop begins.
    socket.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
    assert!(socket.recv(&mut buffer).is_err(), "a message before any stop");
    socket.set_read_timeout(Some(SIGNAL_EFFECT_WAIT)).unwrap();
    cluster.signal(1, "TERM");
    let received = socket.recv(&mut buffer).expect("STOPPING=1 within the wait");
    assert_eq!(std::str::from_utf8(&buffer[..received]).unwrap().trim_end(), "STOPPING=1");
    assert_eq!(cluster.wait_exit(1, SIGNAL_EFFECT_WAIT), Some(0));
}

#[test]
fn sighup_reloads_the_log_level_and_a_bad_level_keeps_the_running_one() {
    let mut cluster = Cluster::start("ops-level", Spec::new(1).partitions(1));
    let node = &cluster.nodes[&1];
    let (config_path, peer) = (node.config_path.clone(), node.peer);
    // A peer connection closed during its handshake is logged at debug only.
    const DEBUG_LINE: &str = "peer connection lost";
    drop(TcpStream::connect(peer).unwrap());
    cluster.signal(1, "HUP");
    wait_log(&mut cluster, 1, "log.level unchanged", 1);
    assert!(!log_of(&cluster, 1).contains(DEBUG_LINE), "debug logged at info");

    set_level(&config_path, "info,ringlog_net=debug");
    cluster.signal(1, "HUP");
    wait_log(&mut cluster, 1, "log.level reloaded", 1);
    drop(TcpStream::connect(peer).unwrap());
    wait_log(&mut cluster, 1, DEBUG_LINE, 1);

    // A level that does not parse: refused, the node keeps running at the debug level.
    set_level(&config_path, "info,ringlog_net=notalevel");
    cluster.signal(1, "HUP");
    wait_log(&mut cluster, 1, "reload refused", 1);
    drop(TcpStream::connect(peer).unwrap());
    wait_log(&mut cluster, 1, DEBUG_LINE, 2);
    assert!(cluster.poll_exit(1).is_none(), "the node exited after SIGHUP");
}

/// Rewrites `log.level` in a node's config file.
fn set_level(config_path: &Path, level: &str) {
    let text = std::fs::read_to_string(config_path).unwrap();
    let mut config: toml::Table = text.parse().unwrap();
    config["log"]["level"] = toml::Value::String(level.to_string());
    std::fs::write(config_path, toml::to_string(&config).unwrap()).unwrap();
}

/// A CA that signs node certificates into PEM files.
struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let cert = params.self_signed(&key).unwrap();
        Ca { cert, key }
    }

    /// Writes a leaf of node 1 to `cert` and its key to `key`; returns the leaf's DER.
    fn write_leaf(&self, cert: &Path, key: &Path) -> CertificateDer<'static> {
        let leaf_key = KeyPair::generate().unwrap();
        let sans = vec![NODE_SERVER_NAME.to_string(), "node-1.ringlog".to_string()];
        let mut params = CertificateParams::new(sans).unwrap();
        params.distinguished_name.push(DnType::CommonName, "node-1");
        let leaf = params.signed_by(&leaf_key, &self.cert, &self.key).unwrap();
        std::fs::write(cert, leaf.pem()).unwrap();
        std::fs::write(key, leaf_key.serialize_pem()).unwrap();
        leaf.der().clone()
    }
}

/// A fresh TLS handshake with the node's client port: the leaf it presents.
fn presented_leaf(addr: SocketAddr, ca: &Path) -> CertificateDer<'static> {
    let config = client_config(read_certs("tls.ca", ca).unwrap(), None).unwrap();
    let mut tls = rustls::ClientConnection::new(Arc::clone(&config), node_server_name()).unwrap();
    let mut tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    while tls.is_handshaking() {
        tls.complete_io(&mut tcp).expect("TLS handshake with the node");
    }
    tls.peer_certificates().expect("the node's certificate")[0].clone().into_owned()
}

#[test]
fn sighup_reloads_the_tls_certificate_for_new_connections_and_refuses_a_bad_one() {
    let certs = tempfile::Builder::new()
        .prefix("ops-certs-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .unwrap();
    let ca = Ca::new("ops cluster CA");
    let ca_path = certs.path().join("ca.pem");
    std::fs::write(&ca_path, ca.cert.pem()).unwrap();
    let (cert, key): (PathBuf, PathBuf) =
        (certs.path().join("node-1.pem"), certs.path().join("node-1.key"));
    let first = ca.write_leaf(&cert, &key);
    let mut spec = Spec::new(1).partitions(1);
    spec.tls.insert(
        1,
        TlsSection {
            mode: Some(TlsMode::Tls),
            ca: Some(ca_path.clone()),
            cert: Some(cert.clone()),
            key: Some(key.clone()),
            client_ca: None,
        },
    );
    let mut cluster = Cluster::start("ops-tls", spec);
    let client = cluster.nodes[&1].client;
    assert_eq!(presented_leaf(client, &ca_path), first);

    // A new certificate of the cluster CA: new connections get it.
    let second = ca.write_leaf(&cert, &key);
    cluster.signal(1, "HUP");
    wait_log(&mut cluster, 1, "TLS certificate reloaded", 1);
    assert_eq!(presented_leaf(client, &ca_path), second);

    // A broken file: the config does not load, nothing changes.
    std::fs::write(&cert, "-----BEGIN CERTIFICATE-----\nnot base64\n").unwrap();
    cluster.signal(1, "HUP");
    wait_log(&mut cluster, 1, "reload refused", 1);
    assert_eq!(presented_leaf(client, &ca_path), second, "still serving the second");

    // A valid certificate of another CA: the other nodes would refuse it; refused here.
    Ca::new("another CA").write_leaf(&cert, &key);
    cluster.signal(1, "HUP");
    wait_log(&mut cluster, 1, "TLS certificate reload refused", 1);
    assert!(log_of(&cluster, 1).contains("not a certificate the cluster CA (tls.ca) accepts"));
    assert_eq!(presented_leaf(client, &ca_path), second, "still serving the second");
    assert!(cluster.poll_exit(1).is_none(), "the node exited after SIGHUP");
    assert_eq!(get(cluster.nodes[&1].metrics, "/health").0, 200);
}

// --------------------------------------------------------------------------------------
// `pinning = "auto"`: local nodes never share a CPU (issue 15, "Pinning").
// --------------------------------------------------------------------------------------

/// The CPUs each running thread of process `pid` whose name starts with `prefix` is bound to,
/// as (thread name, `Cpus_allowed_list`).
fn thread_affinities(pid: u32, prefix: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("list the node's threads");
    for task in tasks.filter_map(Result::ok) {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        let comm = comm.trim().to_string();
        if !comm.starts_with(prefix) {
            continue;
        }
        let status = std::fs::read_to_string(task.path().join("status")).unwrap_or_default();
        if let Some(list) = status.lines().find_map(|l| l.strip_prefix("Cpus_allowed_list:")) {
            out.push((comm, list.trim().to_string()));
        }
    }
    out
}

/// The CPUs this test process may run on (its own `Cpus_allowed_list`, expanded).
fn own_allowed_cpus() -> Vec<usize> {
    let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    let list = status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .expect("Cpus_allowed_list")
        .trim()
        .to_string();
    let mut cpus = Vec::new();
    for part in list.split(',') {
        match part.split_once('-') {
            Some((a, b)) => cpus.extend(a.parse::<usize>().unwrap()..=b.parse::<usize>().unwrap()),
            None => cpus.push(part.parse().unwrap()),
        }
    }
    cpus
}

/// Node `id`'s shard CPU: `Some(cpu)` when its shard thread is bound to one CPU, `None`
/// when it runs unpinned (bound to every allowed CPU). Threads the executor starts (glommio's
/// blocking pool) inherit its name and may inherit its binding: every thread of that name
/// bound to one CPU must be bound to the same one.
fn shard_cpu_of(cluster: &Cluster, id: u32, allowed: &[usize]) -> Option<usize> {
    let pid = cluster.nodes[&id].pid().expect("node running");
    // Thread names are cut to 15 bytes: "ringlog-node1-s(hard0)".
    let prefix = format!("ringlog-node{id}-s");
    let threads = thread_affinities(pid, &prefix);
    assert!(!threads.is_empty(), "node {id} has a shard thread");
    let mut pinned: Vec<usize> = threads
        .iter()
        .filter_map(|(_, list)| list.parse::<usize>().ok())
        .filter(|_| allowed.len() > 1)
        .collect();
    pinned.sort_unstable();
    pinned.dedup();
    assert!(pinned.len() <= 1, "node {id}'s shard threads are bound to several CPUs: {threads:?}");
    pinned.first().copied()
}

/// Three local nodes with `pinning = "auto"` (one shard each), started one after another:
/// each claims a CPU of its own while one allowed CPU stays free, the rest run unpinned —
/// no CPU is ever pinned by two nodes (before, all three pinned shard 0 to CPU 0). A node
/// killed with -9 gives its CPU back: restarted, it claims it again.
#[test]
fn auto_pinning_never_puts_two_local_nodes_on_one_cpu() {
    let allowed = own_allowed_cpus();
    let mut cluster = Cluster::configure("pinning", Spec::new(3).pinning(PinningMode::Auto));
    let claims = cluster.dir.join("cpu-claims");
    let env = [("RINGLOG_CPU_CLAIMS_DIR", claims.as_os_str())];
    let ids: Vec<u32> = cluster.nodes.keys().copied().collect();
    for &id in &ids {
        cluster.spawn_with_env(id, &env);
        cluster.wait_ready(id);
    }
    let placed: BTreeMap<u32, Option<usize>> =
        ids.iter().map(|&id| (id, shard_cpu_of(&cluster, id, &allowed))).collect();
    eprintln!("allowed CPUs {allowed:?}; node -> pinned CPU: {placed:?}");
    let mut seen: BTreeMap<usize, u32> = BTreeMap::new();
    for (&id, cpu) in &placed {
        if let Some(cpu) = cpu {
            assert!(allowed.contains(cpu), "node {id} pinned to CPU {cpu} outside {allowed:?}");
            if let Some(other) = seen.insert(*cpu, id) {
                panic!("nodes {other} and {id} are both pinned to CPU {cpu}: {placed:?}");
            }
        }
    }
    // Started one at a time in a claims directory of their own: the first min(3, n - 1)
    // nodes each pinned, from the highest CPU down, and one allowed CPU free of all.
    let pinnable = allowed.len().saturating_sub(1).min(ids.len());
    let expected: BTreeMap<u32, Option<usize>> = ids
        .iter()
        .enumerate()
        .map(|(i, &id)| (id, (i < pinnable).then(|| allowed[allowed.len() - 1 - i])))
        .collect();
    assert_eq!(placed, expected, "allowed CPUs {allowed:?}");
    let log = std::fs::read_to_string(&cluster.nodes[&ids[0]].log_path).unwrap_or_default();
    assert!(log.contains("shards placed"), "node {} logs its placement", ids[0]);

    // kill -9 releases the claim with the process.
    let first = ids[0];
    cluster.kill(first);
    cluster.spawn_with_env(first, &env);
    cluster.wait_ready(first);
    assert_eq!(
        shard_cpu_of(&cluster, first, &allowed),
        expected[&first],
        "node {first} claims its CPU again after kill -9"
    );
}
