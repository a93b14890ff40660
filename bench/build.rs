//! Build script: records the git commit (with `-dirty` when tracked files differ from it) and
//! the build profile, so a built `ringlog` binary run on another host still says what it is.
//!
//! Outside a git checkout (a source tarball, `cargo package`) the commit is "unknown".

use std::path::Path;
use std::process::Command;

fn main() {
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    let root = Path::new(&manifest_dir).parent().unwrap_or(Path::new(&manifest_dir));
    let commit = git(root, &["rev-parse", "HEAD"]);
    let dirty = commit.is_some()
        && git(root, &["status", "--porcelain", "--untracked-files=no"])
            .is_some_and(|status| !status.is_empty());
    let commit = match commit {
        Some(commit) if dirty => format!("{commit}-dirty"),
        Some(commit) => commit,
        None => "unknown".to_string(),
    };
    println!("cargo:rustc-env=RINGLOG_GIT_COMMIT={commit}");
    let profile = std::env::var("PROFILE").unwrap_or_else(|_| "unknown".to_string());
    println!("cargo:rustc-env=RINGLOG_BUILD_PROFILE={profile}");
    let opt_level = std::env::var("OPT_LEVEL").unwrap_or_else(|_| "unknown".to_string());
    println!("cargo:rustc-env=RINGLOG_BUILD_OPT_LEVEL={opt_level}");

    // Rerun when the commit moves or tracked sources change (for the `-dirty` mark). Only
    // paths that exist: cargo reruns on every build for a missing one.
    let mut watched: Vec<String> = Vec::new();
    for what in ["HEAD", "index", "packed-refs"] {
        if let Some(path) = git(root, &["rev-parse", "--git-path", what]) {
            watched.push(path);
        }
    }
    if let Some(head_ref) = git(root, &["symbolic-ref", "-q", "HEAD"]) {
        if let Some(path) = git(root, &["rev-parse", "--git-path", &head_ref]) {
            watched.push(path);
        }
    }
    for dir in [
        "Cargo.toml",
        "Cargo.lock",
        "src",
        "bench/src",
        "engine/src",
        "net/src",
        "raft/src",
        "node/src",
        "capi/src",
    ] {
        watched.push(root.join(dir).display().to_string());
    }
    for path in watched {
        let path = if Path::new(&path).is_absolute() {
            path
        } else {
            root.join(path).display().to_string()
        };
        if Path::new(&path).exists() {
            println!("cargo:rerun-if-changed={path}");
        }
    }
}

/// `git args` run in `dir`: its trimmed stdout, or `None` when git is missing or fails.
fn git(dir: &Path, args: &[&str]) -> Option<String> {
    let output = Command::new("git").args(args).current_dir(dir).output().ok()?;
    output.status.success().then(|| String::from_utf8_lossy(&output.stdout).trim().to_string())
}
