//! Issue #4 acceptance (f): the client subcommands of the `ringlog` binary against a live
//! cluster: produce / consume / status, transfer-leader, add-node (a 4th node started like
//! the others, [[peers]] = the existing nodes + itself and an empty data dir: it stays
//! damaged until the leader's AddLearner reaches it, then is repaired and promoted) and
//! remove-node.

#[path = "harness.rs"]
mod harness;

use std::io::Write;
use std::process::{Command, Output, Stdio};

use harness::{Cluster, Spec};
use ringlog_net::PartitionId;
use ringlog_raft::Role;

fn ringlog(args: &[&str]) -> Output {
    let output = Command::new(env!("CARGO_BIN_EXE_ringlog")).args(args).output().expect("run");
    eprintln!(
        "$ ringlog {}\n{}{}-> {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
        output.status
    );
    output
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn produce_consume_status_transfer_add_and_remove_work_from_the_cli() {
    let mut cluster = Cluster::start("cli", Spec::new(3).shards(2).partitions(2));
    let bootstrap: Vec<String> = cluster.nodes.values().map(|n| n.client.to_string()).collect();
    let bootstrap = bootstrap.join(",");
    let client = cluster.client();
    cluster.wait_leader(&client, PartitionId(0));
    cluster.wait_leader(&client, PartitionId(1));

    // produce --value ... prints one offset per record.
    let out = ringlog(&[
        "produce",
        "--bootstrap",
        &bootstrap,
        "--partition",
        "1",
        "--value",
        "a",
        "--value",
        "b",
    ]);
    assert!(out.status.success());
    assert_eq!(stdout(&out), "0\n1\n");
    // produce --stdin, one record per line.
    let mut child = Command::new(env!("CARGO_BIN_EXE_ringlog"))
        .args([
            "produce",
            "--bootstrap",
            &bootstrap,
            "--partition",
            "1",
            "--stdin",
            "--acks",
            "leader",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"c\nd\ne\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    assert_eq!(stdout(&out), "2\n3\n4\n");

    // consume prints committed records (acks=leader ones commit shortly after).
    let mut records = String::new();
    for _ in 0..100 {
        let out =
            ringlog(&["consume", "--bootstrap", &bootstrap, "--partition", "1", "--linearizable"]);
        assert!(out.status.success());
        records = stdout(&out);
        if records.lines().count() == 5 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(records, "0\ta\n1\tb\n2\tc\n3\td\n4\te\n");
    let out = ringlog(&[
        "consume",
        "--bootstrap",
        &bootstrap,
        "--partition",
        "1",
        "--from",
        "3",
        "--count",
        "1",
    ]);
    assert_eq!(stdout(&out), "3\td\n");
    // --follow with --count stops once it has the records.
    let out = ringlog(&[
        "consume",
        "--bootstrap",
        &bootstrap,
        "--partition",
        "1",
        "--follow",
        "--count",
        "5",
    ]);
    assert!(out.status.success());
    assert_eq!(stdout(&out).lines().count(), 5);

    // status: a table, and JSON with one leader per partition.
    let out = ringlog(&["status", "--bootstrap", &bootstrap]);
    assert!(out.status.success());
    assert!(stdout(&out).contains("leader"));
    let out = ringlog(&["status", "--bootstrap", &bootstrap, "--partition", "1", "--json"]);
    assert!(out.status.success());
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status --json");
    let statuses = json["statuses"].as_array().unwrap();
    assert_eq!(statuses.len(), 3, "one row per node: {json}");
    assert_eq!(statuses.iter().filter(|s| s["role"] == "leader").count(), 1, "{json}");

    // Errors: a clear message and a non-zero exit.
    let out = ringlog(&["produce", "--bootstrap", &bootstrap, "--partition", "99", "--value", "x"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("partition 99"));
    let out = ringlog(&[
        "produce",
        "--bootstrap",
        "127.0.0.1:1",
        "--partition",
        "0",
        "--value",
        "x",
        "--timeout-ms",
        "500",
    ]);
    assert!(!out.status.success());

    // transfer-leader to a follower (admin commands present the cluster's admin token).
    let token_path = cluster.admin_token_path();
    let token = token_path.to_str().expect("a UTF-8 temp path");
    let (leader, _) = cluster.wait_leader(&client, PartitionId(0));
    let target = *cluster.nodes.keys().find(|id| **id != leader).unwrap();
    let out = ringlog(&[
        "transfer-leader",
        "--bootstrap",
        &bootstrap,
        "--partition",
        "0",
        "--to",
        &target.to_string(),
        "--admin-token-file",
        token,
    ]);
    assert!(out.status.success(), "transfer-leader failed");
    let (now, _) = cluster.wait_leader(&client, PartitionId(0));
    assert_eq!(now, target);

    // add-node: a 4th node that joins, then becomes a voter of both partitions.
    let entry = cluster.configure_node(4);
    let mut peers: Vec<_> = cluster
        .nodes
        .values()
        .map(|n| ringlog_node::config::PeerEntry { id: n.id, peer: n.peer, client: n.client })
        .collect();
    peers.sort_by_key(|p| p.id);
    cluster.write_config(4, &peers);
    cluster.spawn(4);
    cluster.wait_ready(4);
    let out = ringlog(&[
        "add-node",
        "--bootstrap",
        &bootstrap,
        "--node",
        "4",
        "--peer",
        &entry.peer.to_string(),
        "--client",
        &entry.client.to_string(),
        "--admin-token-file",
        token,
    ]);
    assert!(out.status.success(), "add-node failed");
    for p in 0..2 {
        let partition = PartitionId(p);
        let status = client.status(partition).unwrap();
        let f = status.followers.iter().find(|f| f.node.0 == 4);
        assert!(matches!(f, Some(f) if !f.learner), "{partition}: node 4 a voter: {status:?}");
        let four = cluster.status_of(&client, 4, partition).expect("node 4 answers");
        assert!(matches!(four.role, Role::Follower | Role::Leader), "{four:?}");
    }
    client.produce(PartitionId(1), ringlog_net::Acks::Quorum, &[b"with-four"]).unwrap();
    let records = cluster.assert_replicas_identical(&client, PartitionId(1));
    assert_eq!(records.len(), 6);

    // remove-node: node 4 leaves both partitions.
    let out = ringlog(&[
        "remove-node",
        "--bootstrap",
        &bootstrap,
        "--node",
        "4",
        "--admin-token-file",
        token,
    ]);
    assert!(out.status.success(), "remove-node failed");
    for p in 0..2 {
        let status = client.status(PartitionId(p)).unwrap();
        assert!(status.followers.iter().all(|f| f.node.0 != 4), "{status:?}");
        assert_ne!(status.node.0, 4);
    }
    cluster.kill(4);
    client.produce(PartitionId(1), ringlog_net::Acks::Quorum, &[b"without-four"]).unwrap();
}
