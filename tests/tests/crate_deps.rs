//! Crates an embedder can take (issue #17): the dependency boundaries between the workspace's
//! crates, checked with `cargo tree` and `cargo package --list` on the workspace manifest.
//!
//! - `ringlog-node` (the node library) pulls in no CLI or bench crate;
//! - `ringlog-net` with only its `client` feature, and `ringlog-format`, pull in no io_uring
//!   runtime (so the client builds on any OS); nor does the simulator `ringlog-sim`, which
//!   takes net's codec only;
//! - the crates meant to be used alone package only their sources, manifest, README and the
//!   Apache-2.0 LICENSE (the root LICENSE, copied).
//!
//! Each check also asserts a crate that must be in the tree, so a `cargo tree` that printed
//! nothing (or something else) cannot pass. Runs offline: it needs what `cargo test` already
//! fetched. Takes a second or two (no build).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

/// What an embedder of the node must not compile: the CLI's and the bench's crates.
const NOT_IN_NODE: &[&str] = &[
    "clap",
    "clap_complete",
    "clap_mangen",
    "tracing-subscriber",
    "plotters",
    "indicatif",
    "ringlog-bench",
    "ringlog",
];

/// What the client (and the batch format) must not compile: the io_uring runtime and the
/// engine built on it.
const NOT_IN_CLIENT: &[&str] = &["glommio", "io-uring", "ringlog-engine", "ringlog-node"];

/// The crates meant to be used alone (README.md, "Embed it in Rust").
const STANDALONE_CRATES: &[(&str, &str)] = &[
    ("ringlog-format", "format"),
    ("ringlog-raft", "raft"),
    ("ringlog-net", "net"),
    ("ringlog-engine", "engine"),
    ("ringlog-node", "node"),
];

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ has a parent").to_path_buf()
}

/// Runs `cargo <args>` on the workspace manifest (offline) and returns its stdout.
fn cargo(args: &[&str]) -> String {
    let manifest = workspace_root().join("Cargo.toml");
    let output = Command::new(env!("CARGO"))
        .args(args)
        .arg("--offline")
        .arg("--manifest-path")
        .arg(&manifest)
        .output()
        .expect("run cargo");
    assert!(
        output.status.success(),
        "cargo {} failed ({}):\n{}",
        args.join(" "),
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("cargo prints UTF-8")
}

/// The names of every crate in the normal (non-dev, non-build) dependency tree of `package`
/// with `features` (extra `cargo tree` arguments), the package itself included.
fn normal_dependencies(package: &str, features: &[&str]) -> BTreeSet<String> {
    let mut args =
        vec!["tree", "-e", "normal", "--prefix", "none", "--format", "{p}", "-p", package];
    args.extend_from_slice(features);
    let tree = cargo(&args);
    tree.lines().filter_map(|line| line.split_whitespace().next()).map(str::to_owned).collect()
}

fn assert_absent(package: &str, tree: &BTreeSet<String>, forbidden: &[&str]) {
    let found: Vec<&str> = forbidden.iter().copied().filter(|name| tree.contains(*name)).collect();
    assert!(
        found.is_empty(),
        "{package} depends on {found:?}, which it must not (see `cargo tree -e normal -i <crate>` \
         for the path); its tree: {tree:?}"
    );
}

fn assert_present(package: &str, tree: &BTreeSet<String>, expected: &[&str]) {
    for name in expected {
        assert!(tree.contains(*name), "{package}'s tree lacks {name}: {tree:?}");
    }
}

#[test]
fn the_node_library_depends_on_no_cli_or_bench_crate() {
    let tree = normal_dependencies("ringlog-node", &[]);
    assert_present("ringlog-node", &tree, &["ringlog-node", "ringlog-engine", "ringlog-net"]);
    assert_absent("ringlog-node", &tree, NOT_IN_NODE);
}

#[test]
fn the_client_builds_without_glommio_or_io_uring() {
    let args = ["--no-default-features", "--features", "client"];
    let tree = normal_dependencies("ringlog-net", &args);
    assert_present("ringlog-net (client)", &tree, &["ringlog-net", "ringlog-format", "rustls"]);
    assert_absent("ringlog-net (client)", &tree, NOT_IN_CLIENT);
}

/// The simulator (issue 14) runs net's production peer codec, never its transport: it takes
/// `ringlog-net` without default features, so no glommio or io_uring and no engine or node.
#[test]
fn the_simulator_takes_the_peer_codec_without_glommio_or_io_uring() {
    let tree = normal_dependencies("ringlog-sim", &[]);
    assert_present("ringlog-sim", &tree, &["ringlog-sim", "ringlog-raft", "ringlog-net"]);
    assert_absent("ringlog-sim", &tree, NOT_IN_CLIENT);
}

#[test]
fn the_batch_format_crate_is_a_leaf_without_io() {
    let tree = normal_dependencies("ringlog-format", &[]);
    assert_present("ringlog-format", &tree, &["ringlog-format", "crc32fast"]);
    let mut forbidden = NOT_IN_CLIENT.to_vec();
    forbidden.extend(["ringlog-net", "tokio", "nix"]);
    assert_absent("ringlog-format", &tree, &forbidden);
}

/// The files `cargo package` would put in `package`'s `.crate`.
fn package_list(package: &str) -> Vec<String> {
    let list = cargo(&["package", "--list", "--allow-dirty", "-p", package]);
    list.lines().map(str::to_owned).collect()
}

/// Files every package carries besides its sources (`.cargo_vcs_info.json` only when packaged
/// from a git checkout).
const PACKAGE_METADATA_FILES: &[&str] = &[
    ".cargo_vcs_info.json",
    "Cargo.lock",
    "Cargo.toml",
    "Cargo.toml.orig",
    "LICENSE",
    "README.md",
];

#[test]
fn the_format_crate_packages_only_its_sources_manifest_readme_and_license() {
    let files = package_list("ringlog-format");
    for required in ["Cargo.toml", "LICENSE", "README.md", "src/lib.rs", "src/batch.rs"] {
        assert!(
            files.iter().any(|f| f == required),
            "ringlog-format's package lacks {required}: {files:?}"
        );
    }
    let unexpected: Vec<&String> = files
        .iter()
        .filter(|f| {
            let source = f.starts_with("src/") && f.ends_with(".rs");
            !source && !PACKAGE_METADATA_FILES.contains(&f.as_str())
        })
        .collect();
    assert!(unexpected.is_empty(), "ringlog-format would package {unexpected:?}");
}

#[test]
fn the_standalone_crates_package_no_build_output_and_the_root_license() {
    let root_license = std::fs::read(workspace_root().join("LICENSE")).expect("root LICENSE");
    assert!(
        String::from_utf8_lossy(&root_license).contains("Apache License\n                           Version 2.0"),
        "the root LICENSE must be the Apache License 2.0 text (Cargo.toml: license = \"Apache-2.0\")"
    );
    for (package, dir) in STANDALONE_CRATES {
        let files = package_list(package);
        assert!(
            files.iter().any(|f| f == "LICENSE"),
            "{package}'s package lacks LICENSE: {files:?}"
        );
        let copy = std::fs::read(workspace_root().join(dir).join("LICENSE")).expect("LICENSE copy");
        assert!(copy == root_license, "{dir}/LICENSE differs from the root LICENSE; copy it again");
        let stray: Vec<&String> = files
            .iter()
            .filter(|f| {
                let allowed_dir =
                    ["src/", "tests/", "benches/", "examples/"].iter().any(|d| f.starts_with(d));
                !PACKAGE_METADATA_FILES.contains(&f.as_str()) && !allowed_dir
            })
            .collect();
        assert!(stray.is_empty(), "{package} would package files outside its sources: {stray:?}");
        let junk: Vec<&String> = files
            .iter()
            .filter(|f| f.split('/').any(|part| part == "target" || part.starts_with(".tmp")))
            .collect();
        assert!(junk.is_empty(), "{package} would package build output or scratch files: {junk:?}");
    }
}
