//! Issue 7: every file the engine creates is 0600 and every directory 0700, whatever the
//! umask (segments, spares, index files, hard state, the lock file, data and partition dirs).
//!
//! Its own test binary: the umask is process-wide.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use ringlog_engine::io::{DATA_DIR_MODE, DATA_FILE_MODE};
use ringlog_engine::{HardStateStore, Log, NodeId, Term};
use rustix::fs::Mode;

/// Every entry under `root` (not `root` itself), depth first.
fn walk(root: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(root).expect("read_dir") {
        let path = entry.expect("entry").path();
        out.push(path.clone());
        if path.is_dir() {
            walk(&path, out);
        }
    }
}

fn mode_of(path: &Path) -> u32 {
    std::fs::metadata(path).expect("metadata").permissions().mode() & 0o7777
}

/// Fills a log past one segment (so a segment is sealed with an index file and a spare is
/// prepared) and writes hard state.
fn populate(data_dir: PathBuf) {
    common::run(move || async move {
        let dir = data_dir.join("0");
        let (log, _) = Log::open(&dir, common::small_config()).await.expect("open");
        for i in 0..40u32 {
            let appended = log.append(common::request(1, 1, 60 << 10, i as u8)).expect("append");
            appended.durable.await.expect("durable");
        }
        assert!(log.segment_count() >= 2, "a segment was sealed");
        let store = HardStateStore::open(&dir).await.expect("hard state");
        store.store(Term(3), Some(NodeId(1))).await.expect("store");
        log.close().await.expect("close");
    });
}

#[test]
fn engine_files_are_0600_and_directories_0700_whatever_the_umask() {
    for umask in [0o000, 0o022, 0o077] {
        let previous = rustix::process::umask(Mode::from_raw_mode(umask));
        let root = common::tempdir();
        // Missing parents are created by the engine too.
        let data_dir = root.path().join("parent").join("data");
        populate(data_dir.clone());
        rustix::process::umask(previous);

        let mut entries = Vec::new();
        walk(&root.path().join("parent"), &mut entries);
        let names: Vec<String> =
            entries.iter().map(|p| p.file_name().unwrap().to_string_lossy().into_owned()).collect();
        for expected in ["data", "0", "LOCK", "hard_state"] {
            assert!(names.iter().any(|n| n == expected), "{expected} missing in {names:?}");
        }
        assert!(names.iter().any(|n| n.ends_with(".seg")), "no segment in {names:?}");
        assert!(names.iter().any(|n| n.ends_with(".idx")), "no index file in {names:?}");
        assert!(names.iter().any(|n| n.starts_with("spare.seg")), "no spare in {names:?}");
        for path in &entries {
            let expected = if path.is_dir() { DATA_DIR_MODE } else { DATA_FILE_MODE };
            assert_eq!(
                mode_of(path),
                expected,
                "{} has mode {:o} under umask {umask:03o}",
                path.display(),
                mode_of(path)
            );
        }
    }
}
