//! `ringlog inspect` end to end: a segment written by a real engine `Log` (glommio, O_DIRECT,
//! on disk under CARGO_TARGET_TMPDIR) is decoded by the real binary; after a byte of one batch
//! is flipped, the binary exits 1 naming that batch's position.
//!
//! The binary is the one cargo builds for this package's tests (`CARGO_BIN_EXE_ringlog`).

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use ringlog_engine::segment::parse_segment_name;
use ringlog_engine::{AppendRequest, Log, LogConfig, RecordsBuilder, Term};

fn ringlog_binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_ringlog"))
}

/// Appends `batches` data batches of 4 records each to a fresh log in `dir` and returns its
/// only segment file.
fn write_segment(dir: &Path, batches: usize) -> PathBuf {
    let config = LogConfig {
        segment_size_bytes: ringlog_engine::limits::SEGMENT_SIZE_MIN,
        batch_size_max: 64 << 10,
        flush_bytes_max: 256 << 10,
        queued_bytes_max: 1 << 20,
        index_interval_bytes: 4096,
        ..LogConfig::default()
    };
    let log_dir = dir.to_path_buf();
    glommio::LocalExecutorBuilder::default()
        .io_memory(512 << 10)
        .make()
        .expect("glommio executor")
        .run(async move {
            let (log, _) = Log::open(&log_dir, config).await.unwrap();
            for batch in 0..batches {
                let mut records = RecordsBuilder::new(64 << 10);
                for record in 0..4 {
                    records.push(format!("value {batch}.{record}").as_bytes()).unwrap();
                }
                let request = AppendRequest::data(Term(3), records.finish(), 1_700_000_000_000);
                log.append(request).unwrap().durable.await.unwrap();
            }
            log.close().await.unwrap();
        });
    let mut segments: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|p| parse_segment_name(p.file_name().unwrap().to_str().unwrap()).is_some())
        .collect();
    assert_eq!(segments.len(), 1, "{segments:?}");
    segments.pop().unwrap()
}

fn inspect(segment: &Path, extra: &[&str]) -> Output {
    Command::new(ringlog_binary())
        .arg("inspect")
        .arg(segment)
        .args(extra)
        .output()
        .expect("run ringlog inspect")
}

#[test]
fn inspect_decodes_a_real_segment_and_exits_1_naming_a_corrupt_batch() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let segment = write_segment(dir.path(), 3);

    let clean = inspect(&segment, &["--json"]);
    let stdout = String::from_utf8_lossy(&clean.stdout).into_owned();
    assert!(clean.status.success(), "{stdout}");
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["summary"]["batches"], 3);
    assert_eq!(report["summary"]["records"], 12);
    assert_eq!(report["summary"]["last_offset"], 11);
    assert_eq!(report["summary"]["chain_ok"], true);
    assert!(report["corruption"].is_null());
    let positions: Vec<u64> = report["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|item| item["type"] == "batch")
        .map(|item| item["position"].as_u64().unwrap())
        .collect();
    assert_eq!(positions.len(), 3);

    let target = positions[1];
    let file = std::fs::OpenOptions::new().read(true).write(true).open(&segment).unwrap();
    let mut byte = [0u8];
    file.read_exact_at(&mut byte, target + 80).unwrap();
    file.write_all_at(&[byte[0] ^ 0x01], target + 80).unwrap();
    drop(file);

    let corrupt = inspect(&segment, &[]);
    let stdout = String::from_utf8_lossy(&corrupt.stdout).into_owned();
    assert_eq!(corrupt.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("checksum FAILED"), "{stdout}");
    assert!(
        stdout.contains(&format!("CORRUPT at position {target}: batch 2: payload checksum")),
        "{stdout}"
    );
}
