//! Issue #7 acceptance (security): a 3-node cluster runs with mutual TLS between nodes and TLS
//! (with client certificates) for clients — produce with acks=quorum, fetch back — and a 4th
//! node holding a certificate from another CA is refused: its own log and the acceptors' logs
//! say `peer certificate rejected`, and the cluster goes on without it. A node presenting
//! another node's certificate (same CA) is refused too: node certificates name their node
//! (`DNS:node-<id>.ringlog`). A pipelined producer works over TLS as over plain TCP.
//!
//! Certificates are generated at test time with rcgen (see docs/config.md `[tls]` for the
//! openssl equivalent operators use).

#[path = "harness.rs"]
mod harness;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use harness::{tail, test_client_config, Cluster, Spec};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use ringlog_net::client::{decode_records, Client, ClientConfig, ClientTls};
use ringlog_net::protocol::{Acks, Consistency, ErrorReply};
use ringlog_net::tls::{client_config, read_certs, read_key, NODE_SERVER_NAME};
use ringlog_net::{Offset, PartitionId};
use ringlog_node::config::{AdminSection, TlsMode, TlsSection};
use ringlog_raft::{MembershipChange, NodeId};

const REJECTED: &str = "peer certificate rejected";

/// A CA that writes PEM files of itself and of the leaves it signs.
struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
    dir: PathBuf,
}

impl Ca {
    fn new(dir: &Path, name: &str) -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let cert = params.self_signed(&key).unwrap();
        let dir = dir.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("ca.pem"), cert.pem()).unwrap();
        Ca { cert, key, dir }
    }

    fn ca_path(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// Writes `<name>.pem` and `<name>.key` for a leaf valid for `ringlog-node` and
    /// `<name>.ringlog` (node N's identity when `name` is `node-N`, as README.md#tls makes).
    fn leaf(&self, name: &str) -> (PathBuf, PathBuf) {
        let key = KeyPair::generate().unwrap();
        let sans = vec![NODE_SERVER_NAME.to_string(), format!("{name}.ringlog")];
        let mut params = CertificateParams::new(sans).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
        let (cert_path, key_path) =
            (self.dir.join(format!("{name}.pem")), self.dir.join(format!("{name}.key")));
        std::fs::write(&cert_path, cert.pem()).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        (cert_path, key_path)
    }

    /// The `[tls]` section of a node holding a leaf of this CA, requiring client certificates
    /// of `client_ca`.
    fn node_section(&self, name: &str, client_ca: &Ca) -> TlsSection {
        let (cert, key) = self.leaf(name);
        TlsSection {
            mode: Some(TlsMode::Tls),
            ca: Some(self.ca_path()),
            cert: Some(cert),
            key: Some(key),
            client_ca: Some(client_ca.ca_path()),
        }
    }
}

/// A client trusting `trust` (the nodes' CA) and presenting a certificate of `identity`.
fn tls_client(cluster: &Cluster, trust: &Ca, identity: &Ca) -> Client {
    tls_client_named(cluster, trust, identity, "client-1")
}

/// [`tls_client`] whose certificate carries `DNS:<name>.ringlog`.
fn tls_client_named(cluster: &Cluster, trust: &Ca, identity: &Ca, name: &str) -> Client {
    let roots = read_certs("tls.ca", &trust.ca_path()).unwrap();
    let (cert, key) = identity.leaf(name);
    let identity = Some((read_certs("cert", &cert).unwrap(), read_key("key", &key).unwrap()));
    let tls = ClientTls::new(client_config(roots, identity).unwrap());
    let bootstrap = cluster.nodes.values().map(|n| n.client).collect();
    let config = ClientConfig { tls: Some(tls), ..test_client_config(bootstrap) };
    Client::new(config).unwrap()
}

/// Runs the `ringlog` binary with the concatenated argument lists (and none of the
/// `RINGLOG_*` client variables of this process).
fn ringlog_cli(parts: &[&[&str]]) -> std::process::Output {
    ringlog_cli_env(parts, &[])
}

/// [`ringlog_cli`] with these environment variables set.
fn ringlog_cli_env(parts: &[&[&str]], env: &[(&str, &Path)]) -> std::process::Output {
    let args: Vec<&str> = parts.iter().flat_map(|p| p.iter().copied()).collect();
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_ringlog"));
    for variable in ["RINGLOG_BOOTSTRAP", "RINGLOG_TLS_CA", "RINGLOG_TLS_CERT", "RINGLOG_TLS_KEY"] {
        command.env_remove(variable);
    }
    command.args(&args).envs(env.iter().copied()).output().expect("run")
}

fn stderr_of(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("a UTF-8 temp path")
}

/// A 3-node cluster with mutual TLS: node certificates of `cluster_ca` naming their node,
/// client certificates of `client_ca` required, and a client holding one.
struct TlsCluster {
    /// Holds the PEM files for the cluster's life.
    certs: tempfile::TempDir,
    cluster_ca: Ca,
    client_ca: Ca,
    cluster: Cluster,
    client: Client,
}

impl TlsCluster {
    fn start(name: &str, partitions: u32) -> TlsCluster {
        let certs = tempfile::Builder::new()
            .prefix("tls-certs-")
            .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
            .unwrap();
        let cluster_ca = Ca::new(certs.path(), "cluster-ca");
        let client_ca = Ca::new(certs.path(), "client-ca");
        let mut spec = Spec::new(3).partitions(partitions);
        for id in 1..=3 {
            spec.tls.insert(id, cluster_ca.node_section(&format!("node-{id}"), &client_ca));
        }
        let cluster = Cluster::start(name, spec);
        // The client trusts the nodes' CA and presents a certificate of the client CA.
        let client = tls_client(&cluster, &cluster_ca, &client_ca);
        TlsCluster { certs, cluster_ca, client_ca, cluster, client }
    }
}

fn log_of(cluster: &Cluster, id: u32) -> String {
    std::fs::read_to_string(&cluster.nodes[&id].log_path).unwrap_or_default()
}

#[test]
fn a_pipeline_over_tls_keeps_many_produces_in_flight_and_they_read_back_in_send_order() {
    let TlsCluster { certs: _certs, cluster, client, .. } = TlsCluster::start("tls_pipeline", 1);
    let partition = PartitionId(0);
    cluster.wait_leader(&client, partition);
    let pipeline = client.pipeline(partition, Acks::Quorum).expect("a pipeline over TLS");
    // Records from a few bytes to 40 KiB: produces span several TLS records each.
    let values: Vec<Vec<u8>> = (0..200usize)
        .map(|i| {
            let mut value = format!("tls-pipelined-{i:04}-").into_bytes();
            value.resize(value.len() + (i * 997) % (40 * 1024), b'a' + (i % 26) as u8);
            value
        })
        .collect();
    let mut completions = Vec::new();
    let mut in_flight_max = 0;
    for value in &values {
        completions.push(pipeline.send(&[value]).expect("send over TLS"));
        in_flight_max = in_flight_max.max(pipeline.in_flight());
    }
    assert!(in_flight_max > 1, "never more than one produce in flight over TLS");
    let offsets: Vec<Offset> =
        completions.into_iter().map(|c| c.wait().expect("acknowledged").base_offset).collect();
    for pair in offsets.windows(2) {
        assert_eq!(pair[1].0, pair[0].0 + 1, "one record per produce, in send order");
    }
    let records = cluster.assert_replicas_identical(&client, partition);
    let first = offsets[0].0 as usize;
    let read: Vec<&[u8]> = records[first..].iter().map(|r| &r.value[..]).collect();
    let sent: Vec<&[u8]> = values.iter().map(Vec::as_slice).collect();
    assert!(read == sent, "the records read back byte-identical, in send order");
}

#[test]
fn a_mutual_tls_cluster_serves_tls_clients_and_refuses_a_node_of_another_ca() {
    let TlsCluster { certs, cluster_ca, client_ca, mut cluster, client } =
        TlsCluster::start("tls", 2);
    let other_ca = Ca::new(certs.path(), "other-ca");

    for p in 0..2u32 {
        let partition = PartitionId(p);
        let (leader, term) = cluster.wait_leader(&client, partition);
        eprintln!("{partition}: leader node {leader} in term {term}");
        let values: Vec<Vec<u8>> = (0..10u32).map(|r| format!("p{p}-r{r}").into_bytes()).collect();
        let records: Vec<&[u8]> = values.iter().map(Vec::as_slice).collect();
        let ack = client.produce(partition, Acks::Quorum, &records).expect("produce over TLS");
        assert_eq!(ack.base_offset, Offset(0));
        assert_eq!(ack.last_offset, Offset(9));
        let response = client
            .fetch(partition, Offset(0), 1 << 20, Duration::ZERO, Consistency::LeaderLinearizable)
            .expect("fetch over TLS");
        let fetched =
            decode_records(cluster.nodes[&1].client, &response.batches, Offset(0)).expect("decode");
        let got: Vec<Vec<u8>> = fetched.iter().map(|r| r.value.to_vec()).collect();
        assert_eq!(got, values, "{partition}: the records come back intact");
    }
    // The CLI speaks TLS with --tls-ca/--tls-cert/--tls-key, and without them is refused.
    let bootstrap = cluster.nodes[&1].client.to_string();
    let (cert, key) = client_ca.leaf("client-cli");
    let ca = cluster_ca.ca_path();
    let tls_args = ["--tls-ca", path_str(&ca), "--tls-cert", path_str(&cert), "--tls-key"];
    let produced = ringlog_cli(&[
        &["produce", "--bootstrap", &bootstrap, "--partition", "0", "--value", "over-tls"],
        &tls_args[..],
        &[path_str(&key)],
    ]);
    assert!(produced.status.success(), "produce over TLS: {}", stderr_of(&produced));
    let consumed = ringlog_cli(&[
        &["consume", "--bootstrap", &bootstrap, "--partition", "0", "--from", "10", "--count"],
        &["1"],
        &tls_args[..],
        &[path_str(&key)],
    ]);
    assert!(consumed.status.success(), "consume over TLS: {}", stderr_of(&consumed));
    assert!(
        String::from_utf8_lossy(&consumed.stdout).contains("over-tls"),
        "consume prints the record: {}",
        String::from_utf8_lossy(&consumed.stdout)
    );
    let plaintext = ringlog_cli(&[&[
        "produce",
        "--bootstrap",
        &bootstrap,
        "--partition",
        "0",
        "--value",
        "plain",
        "--timeout-ms",
        "2000",
    ]]);
    assert!(!plaintext.status.success(), "a plaintext CLI must not produce to a TLS node");
    let no_client_cert = ringlog_cli(&[&[
        "produce",
        "--bootstrap",
        &bootstrap,
        "--partition",
        "0",
        "--value",
        "anonymous",
        "--timeout-ms",
        "2000",
        "--tls-ca",
        path_str(&ca),
    ]]);
    assert!(
        !no_client_cert.status.success(),
        "a node with tls.client_ca refuses a client without a certificate"
    );

    for id in 1..=3 {
        assert!(!log_of(&cluster, id).contains(REJECTED), "node {id}:\n{}", log_of(&cluster, id));
    }

    // Node 4: same cluster id and peers, but a certificate (and trust) of another CA.
    let entry = cluster.configure_node(4);
    cluster.nodes.get_mut(&4).unwrap().tls = other_ca.node_section("node-4", &client_ca);
    let mut peers: Vec<_> = (1..=3).map(|id| harness_entry(&cluster, id)).collect();
    peers.push(entry);
    cluster.write_config(4, &peers);
    cluster.spawn(4);
    cluster.wait_ready(4);

    let deadline = Instant::now() + Duration::from_secs(30);
    let refused_by_acceptor = || (1..=3).any(|id| log_of(&cluster, id).contains(REJECTED));
    while !(log_of(&cluster, 4).contains(REJECTED) && refused_by_acceptor()) {
        assert!(
            Instant::now() < deadline,
            "no refusal logged; node 4:\n{}\nnode 1:\n{}",
            tail(&cluster.nodes[&4].log_path, 20),
            tail(&cluster.nodes[&1].log_path, 20)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let node4 = log_of(&cluster, 4);
    let line = node4.lines().find(|l| l.contains(REJECTED)).unwrap();
    eprintln!("node 4 says: {line}");
    assert!(line.contains("UnknownIssuer") || line.contains("alert"), "{line}");

    // The cluster goes on without node 4, and node 4 learned nothing.
    let ack = client.produce(PartitionId(0), Acks::Quorum, &[b"after"]).expect("produce");
    assert_eq!(ack.base_offset, Offset(11), "after the 10 records and the CLI's one");
    for p in 0..2u32 {
        let status = cluster.status_of(&client, 1, PartitionId(p)).expect("node 1 status");
        assert!(status.followers.iter().all(|f| f.node.0 != 4), "{status:?}");
    }
    let plain_client = cluster.client();
    let status = plain_client.node(cluster.nodes[&4].client).status(PartitionId(0));
    assert!(status.is_err(), "a plaintext client gets nothing from a TLS node: {status:?}");
}

#[test]
fn a_node_presenting_another_nodes_certificate_is_refused_and_says_so() {
    // A new cluster elects once every node is up: start it honest, then swap node 3's cert.
    let TlsCluster { certs: _certs, cluster_ca, client_ca: _, mut cluster, client } =
        TlsCluster::start("tls-identity", 1);
    cluster.wait_leader(&client, PartitionId(0));
    let ack = client.produce(PartitionId(0), Acks::Quorum, &[b"one"]).expect("produce");
    assert_eq!(ack.base_offset, Offset(0));
    for id in 1..=3 {
        assert!(!log_of(&cluster, id).contains(REJECTED), "node {id}:\n{}", log_of(&cluster, id));
    }

    // Node 3 restarts with a valid certificate of the cluster CA, but it is node 2's.
    cluster.kill(3);
    let tls = &mut cluster.nodes.get_mut(&3).unwrap().tls;
    tls.cert = Some(cluster_ca.dir.join("node-2.pem"));
    tls.key = Some(cluster_ca.dir.join("node-2.key"));
    let peers: Vec<_> = (1..=3).map(|id| harness_entry(&cluster, id)).collect();
    cluster.write_config(3, &peers);
    cluster.restart(3);

    // Node 3 says it was refused for its certificate; nodes 1 and 2 say why they refused it.
    let refused_line = |id| {
        log_of(&cluster, id)
            .lines()
            .find(|l| {
                l.contains("peer refused handshake") && l.contains("certificate of another node")
            })
            .map(str::to_string)
    };
    let refused_by_others = || {
        (1..=2).any(|id| {
            log_of(&cluster, id)
                .lines()
                .any(|l| l.contains(REJECTED) && l.contains("does not name node 3"))
        })
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !(refused_line(3).is_some() && refused_by_others()) {
        assert!(
            Instant::now() < deadline,
            "no refusal logged; node 3:\n{}\nnode 1:\n{}",
            tail(&cluster.nodes[&3].log_path, 20),
            tail(&cluster.nodes[&1].log_path, 20)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!("node 3 says: {}", refused_line(3).unwrap());

    // Nodes 1 and 2 are a quorum and go on without node 3.
    cluster.wait_leader_excluding(&client, PartitionId(0), Some(3));
    let ack = client.produce(PartitionId(0), Acks::Quorum, &[b"two"]).expect("produce");
    assert_eq!(ack.base_offset, Offset(1));
}

// Issue #18 (CLI conventions): the TLS client flags come from RINGLOG_TLS_CA, RINGLOG_TLS_CERT
// and RINGLOG_TLS_KEY when absent, and a flag wins over its variable.
#[test]
fn the_cli_takes_its_tls_files_from_the_environment_and_a_flag_wins() {
    let TlsCluster { certs, cluster_ca, client_ca, cluster, client } =
        TlsCluster::start("tls-env", 1);
    cluster.wait_leader(&client, PartitionId(0));
    let bootstrap = cluster.nodes[&1].client.to_string();
    let (cert, key) = client_ca.leaf("client-env");
    let ca = cluster_ca.ca_path();
    let tls_env =
        [("RINGLOG_TLS_CA", ca.as_path()), ("RINGLOG_TLS_CERT", &cert), ("RINGLOG_TLS_KEY", &key)];
    let produce: &[&str] = &["produce", "--bootstrap", &bootstrap, "--partition", "0"];

    // Only the variables: the CLI speaks mutual TLS.
    let out = ringlog_cli_env(&[produce, &["--value", "env-tls"]], &tls_env);
    assert!(out.status.success(), "produce with TLS from the environment: {}", stderr_of(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "0\n");
    // The same command without them is plaintext, and the TLS node refuses it.
    let out = ringlog_cli(&[produce, &["--value", "plain", "--timeout-ms", "2000"]]);
    assert!(!out.status.success(), "without the variables the CLI must speak plaintext");

    // A flag wins over its variable: a CA variable naming a missing file does not matter
    // beside --tls-ca, and a --tls-key naming a missing file fails although the variable is
    // good, naming the flag's file.
    let missing = certs.path().join("missing.pem");
    let wrong_ca = [
        ("RINGLOG_TLS_CA", missing.as_path()),
        ("RINGLOG_TLS_CERT", &cert),
        ("RINGLOG_TLS_KEY", &key),
    ];
    let out =
        ringlog_cli_env(&[produce, &["--value", "flag-ca", "--tls-ca", path_str(&ca)]], &wrong_ca);
    assert!(out.status.success(), "--tls-ca must win over RINGLOG_TLS_CA: {}", stderr_of(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "1\n");
    let out = ringlog_cli_env(
        &[produce, &["--value", "flag-key", "--tls-key", path_str(&missing)]],
        &tls_env,
    );
    assert!(
        !out.status.success(),
        "a missing --tls-key must fail although RINGLOG_TLS_KEY is good"
    );
    assert!(
        stderr_of(&out).contains(path_str(&missing)),
        "names the flag's file: {}",
        stderr_of(&out)
    );

    // The records came back over TLS configured from the environment.
    let out = ringlog_cli_env(
        &[&["consume", "--bootstrap", &bootstrap, "--partition", "0", "--linearizable"]],
        &tls_env,
    );
    assert!(out.status.success(), "consume with TLS from the environment: {}", stderr_of(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "0\tenv-tls\n1\tflag-ca\n");
}

fn harness_entry(cluster: &Cluster, id: u32) -> ringlog_node::config::PeerEntry {
    let node = &cluster.nodes[&id];
    ringlog_node::config::PeerEntry { id, peer: node.peer, client: node.client }
}

/// Issue 18 (authorization) over mutual TLS: with `admin.certificate_names` (and no token), a
/// client certificate of the client CA that does not carry an admin name may produce but is
/// refused leadership transfers and membership changes (`Unauthorized`, naming the accepted
/// names; nothing changes); a certificate carrying `DNS:ops-admin.ringlog` may make them, from
/// the Rust client and from the CLI (`--tls-cert`).
#[test]
fn admin_requests_over_tls_need_a_client_certificate_naming_an_admin() {
    let certs = tempfile::Builder::new()
        .prefix("tls-admin-certs-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .unwrap();
    let cluster_ca = Ca::new(certs.path(), "cluster-ca");
    let client_ca = Ca::new(certs.path(), "client-ca");
    let mut spec = Spec::new(3).partitions(1);
    for id in 1..=3 {
        spec.tls.insert(id, cluster_ca.node_section(&format!("node-{id}"), &client_ca));
        let names = vec!["ops-admin.ringlog".to_string()];
        spec.admin.insert(id, AdminSection { certificate_names: names, ..Default::default() });
    }
    let cluster = Cluster::start("tls-admin", spec);
    let producer = tls_client_named(&cluster, &cluster_ca, &client_ca, "producer");
    let ops = tls_client_named(&cluster, &cluster_ca, &client_ca, "ops-admin");
    let partition = PartitionId(0);
    let (leader, term) = cluster.wait_leader(&ops, partition);
    let target = *cluster.nodes.keys().find(|id| **id != leader).expect("a follower");

    producer.produce(partition, Acks::Quorum, &[b"a producer may produce"]).expect("produce");
    let refused = producer.transfer_leader(partition, NodeId(target)).expect_err("refused");
    match refused.reply() {
        Some(ErrorReply::Unauthorized { reason }) => {
            assert!(reason.contains("ops-admin.ringlog"), "names what is accepted: {reason}")
        }
        _ => panic!("expected Unauthorized, got {refused}"),
    }
    let refused = producer
        .change_membership(partition, MembershipChange::Remove(NodeId(target)), None)
        .expect_err("refused");
    assert!(matches!(refused.reply(), Some(ErrorReply::Unauthorized { .. })), "{refused}");
    std::thread::sleep(Duration::from_secs(1));
    let status = producer.status(partition).expect("status");
    assert_eq!((status.node.0, status.term.0), (leader, term), "leadership unchanged");
    assert_eq!(status.followers.len(), 2, "members unchanged: {status:?}");

    // The CLI with the producer's certificate is refused, and says so.
    let bootstrap = cluster.nodes[&leader].client.to_string();
    let ca = cluster_ca.ca_path();
    let (cert, key) = client_ca.leaf("producer-cli");
    let to = target.to_string();
    let transfer = ["transfer-leader", "--bootstrap", &bootstrap, "--partition", "0", "--to", &to];
    let tls_args = ["--tls-ca", path_str(&ca), "--tls-cert", path_str(&cert), "--tls-key"];
    let out = ringlog_cli(&[&transfer[..], &tls_args[..], &[path_str(&key)]]);
    assert!(!out.status.success(), "a producer certificate cannot transfer leadership");
    assert!(stderr_of(&out).contains("not authorized"), "{}", stderr_of(&out));

    // The admin certificate succeeds: from the CLI, then from the Rust client.
    let (cert, key) = client_ca.leaf("ops-admin");
    let tls_args = ["--tls-ca", path_str(&ca), "--tls-cert", path_str(&cert), "--tls-key"];
    let out = ringlog_cli(&[&transfer[..], &tls_args[..], &[path_str(&key)]]);
    assert!(out.status.success(), "the admin certificate transfers: {}", stderr_of(&out));
    let (now, _) = cluster.wait_leader(&ops, partition);
    assert_eq!(now, target);
    ops.transfer_leader(partition, NodeId(leader)).expect("transfer back with the admin cert");
    let deadline = Instant::now() + Duration::from_secs(30);
    while cluster.wait_leader(&ops, partition).0 != leader {
        assert!(Instant::now() < deadline, "node {leader} did not take over again");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Issue 17: `ringlog bench --bootstrap` drives an existing TLS cluster with the client TLS
/// options of the other client commands (`--tls-ca`, `--tls-cert`, `--tls-key`).
#[test]
fn the_bench_produces_to_a_mutual_tls_cluster_given_with_bootstrap() {
    let TlsCluster { certs: _certs, cluster_ca, client_ca, cluster, client } =
        TlsCluster::start("tls-bench", 1);
    cluster.wait_leader(&client, PartitionId(0));
    let work = tempfile::Builder::new()
        .prefix("tls-bench-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .unwrap();
    let bootstrap: Vec<String> = cluster.nodes.values().map(|n| n.client.to_string()).collect();
    let bootstrap = bootstrap.join(",");
    let (cert, key) = client_ca.leaf("client-bench");
    let ca = cluster_ca.ca_path();
    let results = work.path().join("results");
    let output = ringlog_cli(&[
        &["bench", "replicated", "--quick", "--acks", "quorum", "--partitions", "1"],
        &["--producers", "2", "--cluster-duration-secs", "0.5", "--cluster-warmup-secs", "0.2"],
        &["--bootstrap", &bootstrap, "--dir", path_str(work.path())],
        &["--results", path_str(&results)],
        &["--tls-ca", path_str(&ca), "--tls-cert", path_str(&cert), "--tls-key", path_str(&key)],
    ]);
    assert!(output.status.success(), "bench over TLS: {}", stderr_of(&output));
    let json: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(results.join("latest").join("results.json")).unwrap(),
    )
    .unwrap();
    let row = json["scenarios"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["label"] == "replicated acks=quorum")
        .unwrap_or_else(|| panic!("no replicated row: {json:#}"));
    assert!(row["measure"]["records"].as_u64().unwrap() > 0, "{row:#}");
    assert_eq!(json["options"]["cluster_setup"]["tls_ca"].as_str(), Some(path_str(&ca)));
}
