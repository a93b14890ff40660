//! Issue #18 (CLI conventions) against a real node: the client commands take `--bootstrap`
//! from `RINGLOG_BOOTSTRAP` when the flag is absent (the flag wins), and `consume --format
//! text|raw|json` prints a UTF-8, a binary and an empty record as README.md documents.
//! (The TLS variables are tested against a TLS cluster in tests/cluster/tls.rs.)

#[path = "harness.rs"]
mod harness;

use std::net::{SocketAddr, TcpListener};
use std::process::{Command, Output};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use harness::{Cluster, Spec, LIVENESS_TIMEOUT};
use ringlog_net::protocol::Acks;
use ringlog_net::PartitionId;

/// The variables the client commands read (each test sets only what it means to).
const CLIENT_VARIABLES: [&str; 4] =
    ["RINGLOG_BOOTSTRAP", "RINGLOG_TLS_CA", "RINGLOG_TLS_CERT", "RINGLOG_TLS_KEY"];

/// Runs `ringlog args` with `env` and none of the client variables of this process.
fn ringlog(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_ringlog"));
    for variable in CLIENT_VARIABLES {
        command.env_remove(variable);
    }
    let output = command.args(args).envs(env.iter().copied()).output().expect("run ringlog");
    eprintln!(
        "$ {} ringlog {}\n{}{}-> {}",
        env.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(" "),
        args.join(" "),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
        output.status
    );
    output
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// A loopback address nothing listens on (bound, then released).
fn dead_address() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as i64
}

#[test]
fn client_commands_take_bootstrap_from_ringlog_bootstrap_and_the_flag_wins() {
    let cluster = Cluster::start("cli-env", Spec::new(1).partitions(1));
    let client = cluster.client();
    cluster.wait_leader(&client, PartitionId(0));
    let live = cluster.nodes[&1].client.to_string();
    let dead = dead_address().to_string();

    // No flag: the variable is the bootstrap of produce, consume and status.
    let produce = ["produce", "--partition", "0", "--value", "from-env"];
    let out = ringlog(&produce, &[("RINGLOG_BOOTSTRAP", &live)]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "0\n");
    let out = ringlog(&["consume", "--partition", "0"], &[("RINGLOG_BOOTSTRAP", &live)]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "0\tfrom-env\n");
    let out = ringlog(&["status", "--json"], &[("RINGLOG_BOOTSTRAP", &live)]);
    assert!(out.status.success(), "{}", stderr(&out));
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["statuses"][0]["address"], live.as_str());

    // The flag wins over the variable, both ways: a dead variable does not matter beside a
    // live flag, and a dead flag fails even though the variable is live, naming the flag's
    // address.
    let out = ringlog(
        &["produce", "--bootstrap", &live, "--partition", "0", "--value", "flag"],
        &[("RINGLOG_BOOTSTRAP", &dead)],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "1\n");
    let out = ringlog(
        &["status", "--bootstrap", &dead, "--timeout-ms", "500"],
        &[("RINGLOG_BOOTSTRAP", &live)],
    );
    assert!(!out.status.success(), "a dead --bootstrap must fail although the variable is live");
    assert!(stderr(&out).contains(&dead), "the error names the flag's address: {}", stderr(&out));

    // Neither: a usage error naming the flag.
    let out = ringlog(&["consume", "--partition", "0"], &[]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("--bootstrap <ADDRS>"), "{}", stderr(&out));
}

#[test]
fn consume_prints_utf8_binary_and_empty_records_as_text_raw_and_json() {
    let cluster = Cluster::start("cli-format", Spec::new(1).partitions(1));
    let client = cluster.client();
    cluster.wait_leader(&client, PartitionId(0));
    let bootstrap = cluster.nodes[&1].client.to_string();

    let utf8 = "héllo wörld ✓ 日本\tend".as_bytes();
    let binary: &[u8] = b"\x00\xff\xfe\nbin";
    let empty: &[u8] = b"";
    let before_ms = now_ms();
    let ack = client.produce(PartitionId(0), Acks::Quorum, &[utf8, binary, empty]).unwrap();
    let after_ms = now_ms();
    assert_eq!((ack.base_offset.0, ack.last_offset.0), (0, 2));

    let consume = |format: Option<&str>| -> Vec<u8> {
        let mut args = vec!["consume", "--bootstrap", &bootstrap, "--partition", "0"];
        if let Some(format) = format {
            args.extend(["--format", format]);
        }
        // acks=quorum on one node: committed once acknowledged; wait anyway for all three.
        let deadline = Instant::now() + LIVENESS_TIMEOUT;
        loop {
            let out = ringlog(&args, &[]);
            assert!(out.status.success(), "{}", stderr(&out));
            let lines = out.stdout.iter().filter(|&&b| b == b'\n').count();
            if lines >= 3 || Instant::now() > deadline {
                return out.stdout;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    };

    // text: UTF-8 as UTF-8 (the tab escaped), the binary record's bytes escaped, one line each.
    let text = consume(Some("text"));
    assert_eq!(
        String::from_utf8(text.clone()).expect("text output is UTF-8"),
        "0\théllo wörld ✓ 日本\\tend\n1\t\\x00\\xff\\xfe\\nbin\n2\t\n"
    );
    // text is the default.
    assert_eq!(consume(None), text);

    // raw: the bytes exactly, each followed by a newline.
    let mut raw = Vec::new();
    for value in [utf8, binary, empty] {
        raw.extend_from_slice(value);
        raw.push(b'\n');
    }
    assert_eq!(consume(Some("raw")), raw);

    // json: one object per line; UTF-8 as a string, binary as base64 ("AP/+CmJpbg==" is
    // 00 ff fe 0a 62 69 6e), the producer's timestamp.
    let json = String::from_utf8(consume(Some("json"))).expect("json output is UTF-8");
    let objects: Vec<serde_json::Value> =
        json.lines().map(|line| serde_json::from_str(line).expect(line)).collect();
    assert_eq!(objects.len(), 3, "{json}");
    let expected = [("héllo wörld ✓ 日本\tend", "utf8"), ("AP/+CmJpbg==", "base64"), ("", "utf8")];
    for (offset, (object, (value, encoding))) in objects.iter().zip(expected).enumerate() {
        assert_eq!(object["partition"], 0, "{object}");
        assert_eq!(object["offset"], offset, "{object}");
        assert_eq!(object["value"], value, "{object}");
        assert_eq!(object["value_encoding"], encoding, "{object}");
        let timestamp = object["timestamp_ms"].as_i64().expect("a timestamp");
        assert!((before_ms..=after_ms).contains(&timestamp), "{timestamp} not in the produce");
    }

    // A format that does not exist is a usage error naming the ones that do.
    let out = ringlog(
        &["consume", "--bootstrap", &bootstrap, "--partition", "0", "--format", "xml"],
        &[],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("[possible values: text, raw, json]"), "{}", stderr(&out));
}
