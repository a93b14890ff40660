//! `ringlog config` end to end: the real binary checks the committed example config, refuses
//! a broken one naming every problem, and prints the reference that docs/config.md holds.
//!
//! The binary is the one cargo builds for this package's tests (`CARGO_BIN_EXE_ringlog`).

use std::path::Path;
use std::process::{Command, Output};

fn ringlog_binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_ringlog"))
}

fn workspace() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn ringlog(args: &[&str]) -> Output {
    Command::new(ringlog_binary()).args(args).output().expect("run ringlog")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn config_check_accepts_the_example_config_in_deploy() {
    let example = workspace().join("deploy/node.example.toml");
    let output = ringlog(&["config", "check", "--config", example.to_str().unwrap()]);
    let stdout = text(&output.stdout);
    assert!(output.status.success(), "stdout: {stdout}\nstderr: {}", text(&output.stderr));
    assert!(stdout.contains("node 1 of cluster 7305, voters [1, 2, 3]"), "{stdout}");
    assert!(stdout.contains("is valid"), "{stdout}");
    // The example is plaintext on purpose, and check says what that means.
    assert!(
        stdout.contains("WARN: tls.mode = \"plaintext\": peer and client traffic is not encrypted"),
        "{stdout}"
    );
}

/// The example config without its `[tls]` section.
fn example_without_tls() -> String {
    let example = std::fs::read_to_string(workspace().join("deploy/node.example.toml")).unwrap();
    let (before, _) = example.split_once("\n[tls]\n").expect("the example has a [tls] section");
    assert!(!before.lines().any(|l| l.starts_with("mode")), "one mode line, in [tls]");
    before.to_string()
}

#[test]
fn config_check_and_serve_refuse_a_file_without_tls_mode_saying_how_to_fix_it() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let path = dir.path().join("node.toml");
    std::fs::write(&path, example_without_tls()).unwrap();
    let path = path.to_str().unwrap();
    let fix = "tls.mode is not set: write [tls] mode = \"tls\" with tls.ca, tls.cert and tls.key \
               (mutual TLS between nodes, TLS for clients), or [tls] mode = \"plaintext\" to \
               run unencrypted on purpose";
    let check = ringlog(&["config", "check", "--config", path]);
    let stderr = text(&check.stderr);
    assert_eq!(check.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(fix), "{stderr}");
    // serve loads the file the same way and refuses to start before touching anything.
    let serve = ringlog(&["serve", "--config", path, "--skip-host-checks"]);
    let stderr = text(&serve.stderr);
    assert_eq!(serve.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(fix), "{stderr}");
    assert!(text(&serve.stdout).is_empty(), "no ready line");
}

#[test]
fn config_check_refuses_a_broken_file_naming_every_problem() {
    let example = std::fs::read_to_string(workspace().join("deploy/node.example.toml")).unwrap();
    let broken = example
        .replace("node_id = 1", "node_id = 4")
        .replace("segment_size = 268435456", "segment_size = 268435000");
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let path = dir.path().join("node.toml");
    std::fs::write(&path, broken).unwrap();
    let output = ringlog(&["config", "check", "--config", path.to_str().unwrap()]);
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("storage.segment_size = 268435000: must be a multiple of 4096"));
    assert!(stderr.contains("node_id = 4 is not among the [[peers]] ids [1, 2, 3]"), "{stderr}");
}

#[test]
fn config_check_names_line_and_column_of_an_unknown_key() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let path = dir.path().join("node.toml");
    std::fs::write(&path, "node_id = 1\n  colour = \"blue\"\n").unwrap();
    let output = ringlog(&["config", "check", "--config", path.to_str().unwrap()]);
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("node.toml:2:3: unknown field `colour`"), "{stderr}");
}

#[test]
fn config_reference_prints_exactly_docs_config_md() {
    let output = ringlog(&["config", "reference"]);
    assert!(output.status.success());
    let committed = std::fs::read_to_string(workspace().join("docs/config.md")).unwrap();
    assert!(
        text(&output.stdout) == committed,
        "docs/config.md is stale: regenerate it with `ringlog config reference > docs/config.md`"
    );
}
