//! Recovery outcomes per kind of damage (docs/format.md#recovery-outcomes).
//!
//! Each test writes a log whose batches each took their own flush (so batch `k`, counted from
//! 0, starts at byte `4096 * (k + 1)` of the first segment), damages the file the way a crash
//! or the disk could, and checks the documented outcome.

mod common;

use std::path::{Path, PathBuf};

use bytes::Bytes;
use common::{flip_bits, request, run, small_config, tempdir, write_at};
use ringlog_engine::{
    CorruptionKind, FetchError, Log, LogConfig, LogIndex, Offset, OpenError, ReadBound,
    RecoveryMode,
};

const BATCHES: u64 = 100;

/// Writes `BATCHES` batches, one flush each; returns the segment path and the batches.
async fn prepare(path: &Path) -> (PathBuf, Vec<Bytes>) {
    let (log, _) = Log::open(path, small_config()).await.unwrap();
    let mut batches = Vec::new();
    for i in 0..BATCHES {
        let appended = log.append(request(1, 2, 400, i as u8)).unwrap();
        batches.push(appended.batch.clone());
        appended.durable.await.unwrap();
    }
    log.close().await.unwrap();
    let segment = path.join("00000000000000000000-00000000000000000001.seg");
    assert!(segment.exists());
    (segment, batches)
}

fn position_of(k: u64) -> u64 {
    4096 * (k + 1)
}

fn flip_bit(file: &Path, position: u64) {
    flip_bits(file, position, 0x04);
}

/// Reopens after a torn tail: the log ends at `last`, the dropped bytes are reported, a second
/// reopen is clean, and appending continues the chain.
async fn expect_torn(path: &Path, last: u64, dropped: u64, batches: &[Bytes]) {
    let (log, report) = Log::open(path, small_config()).await.unwrap();
    assert_eq!(log.last_index(), LogIndex(last), "{report:?}");
    assert_eq!(report.torn_bytes_dropped, dropped, "{report:?}");
    assert_eq!(report.truncated_at, None);
    // A torn tail and rot in acknowledged batches look alike: reported as a possible loss.
    assert_eq!(report.tail_dropped, dropped > 0, "{report:?}");
    assert_eq!(report.lost_possibly_acknowledged(), dropped > 0, "{report:?}");
    let all = log.read_entries(LogIndex(1), LogIndex(last), 1 << 30).await.unwrap();
    assert_eq!(all.len() as u64, last);
    for (got, want) in all.iter().zip(batches) {
        assert_eq!(got, want, "surviving batches are byte-identical");
    }
    let appended = log.append(request(1, 1, 10, 0xab)).unwrap();
    assert_eq!(appended.index, LogIndex(last + 1));
    appended.durable.await.unwrap();
    log.close().await.unwrap();
    let (log, report) = Log::open(path, small_config()).await.unwrap();
    assert_eq!(report.torn_bytes_dropped, 0, "the repair is durable: {report:?}");
    assert!(!report.lost_possibly_acknowledged(), "a clean reopen loses nothing: {report:?}");
    assert_eq!(log.last_index(), LogIndex(last + 1));
    log.close().await.unwrap();
}

#[test]
fn recovery_drops_garbage_after_the_last_flush() {
    let dir = tempdir();
    let path = dir.path().to_path_buf();
    run(move || async move {
        let (segment, batches) = prepare(&path).await;
        let garbage: Vec<u8> = (0..3000u32).map(|i| (i * 7 + 3) as u8 | 1).collect();
        write_at(&segment, position_of(BATCHES), &garbage);
        expect_torn(&path, BATCHES, 3000, &batches).await;
    });
}

#[test]
fn recovery_drops_a_last_batch_whose_end_reads_as_zeros() {
    let dir = tempdir();
    let path = dir.path().to_path_buf();
    run(move || async move {
        let (segment, batches) = prepare(&path).await;
        let last = position_of(BATCHES - 1);
        let len = batches.last().unwrap().len() as u64;
        // The second half of the last flush never reached the disk: zeros (padding included).
        write_at(&segment, last + len / 2, &vec![0u8; (4096 - len / 2) as usize]);
        expect_torn(&path, BATCHES - 1, len / 2, &batches).await;
    });
}

#[test]
fn recovery_drops_a_half_written_batch() {
    let dir = tempdir();
    let path = dir.path().to_path_buf();
    run(move || async move {
        let (segment, batches) = prepare(&path).await;
        // A new batch whose first half landed after the last flush.
        let half = &batches[5][..batches[5].len() / 2];
        write_at(&segment, position_of(BATCHES), half);
        expect_torn(&path, BATCHES, half.len() as u64, &batches).await;
    });
}

#[test]
fn recovery_drops_a_last_batch_with_a_flipped_bit() {
    let dir = tempdir();
    let path = dir.path().to_path_buf();
    run(move || async move {
        let (segment, batches) = prepare(&path).await;
        flip_bit(&segment, position_of(BATCHES - 1) + 300);
        // Dropped: the whole last batch and its padding marker (the non-zero bytes after the
        // cut; the padding's zeros were zeros already).
        let dropped = batches.last().unwrap().len() as u64 + 16;
        expect_torn(&path, BATCHES - 1, dropped, &batches).await;
    });
}

#[test]
fn recovery_reports_a_flipped_bit_half_a_flush_before_the_tail_as_a_possible_loss() {
    // Issue 13: a flip in an acknowledged batch within the torn reach of the tail was taken
    // for a torn write and zeroed silently; the replica then came back undamaged and short.
    let dir = tempdir();
    let path = dir.path().to_path_buf();
    run(move || async move {
        let (segment, batches) = prepare(&path).await;
        let config = small_config();
        let flipped = BATCHES - 3;
        assert!(4096 * 3 < config.torn_reach_bytes(), "the flip is within the torn reach");
        flip_bit(&segment, position_of(flipped) + 200);
        let (log, report) = Log::open(&path, config).await.unwrap();
        assert_eq!(log.last_index(), LogIndex(flipped), "cut before the flipped batch");
        assert!(report.tail_dropped && report.lost_possibly_acknowledged(), "{report:?}");
        let kept = log.read_entries(LogIndex(1), LogIndex(flipped), 1 << 30).await.unwrap();
        assert_eq!(kept[..], batches[..flipped as usize]);
        log.close().await.unwrap();
    });
}

#[test]
fn recovery_fdatasyncs_the_tail_it_accepts_even_when_nothing_was_repaired() {
    // Issue 13 item 7: a batch written but never fdatasynced (killed in between, or a failed
    // fdatasync that ended the process) is readable after a restart; the log reports it
    // durable only after recovery's own fdatasync.
    let dir = tempdir();
    let path = dir.path().to_path_buf();
    run(move || async move {
        let _ = prepare(&path).await;
        let faults = std::sync::Arc::new(ringlog_engine::FaultInjector::default());
        let (log, report) =
            Log::open_with_faults(&path, small_config(), faults.clone()).await.unwrap();
        assert_eq!(report.torn_bytes_dropped, 0, "{report:?}");
        // Checked before the first await after the open: the preallocator has not run yet,
        // so every sync counted is recovery's.
        assert!(faults.file_syncs() >= 1, "the clean tail was not fdatasynced at open");
        log.close().await.unwrap();
    });
}

#[test]
fn recovery_refuses_a_flipped_bit_in_the_middle_of_the_log() {
    let dir = tempdir();
    let path = dir.path().to_path_buf();
    run(move || async move {
        let (segment, _) = prepare(&path).await;
        let damaged = position_of(10) + 200;
        flip_bit(&segment, damaged);
        match Log::open(&path, small_config()).await {
            Err(OpenError::Corruption(corruption)) => {
                assert_eq!(corruption.segment, segment);
                assert_eq!(corruption.position, position_of(10), "names the damaged batch");
                assert!(matches!(corruption.kind, CorruptionKind::InvalidBatch(_)));
            }
            other => panic!("expected Corruption, got {other:?}"),
        }
        // Nothing was changed: the same error again.
        assert!(matches!(Log::open(&path, small_config()).await, Err(OpenError::Corruption(_))));
    });
}

#[test]
fn recovery_truncates_at_mid_log_corruption_when_asked() {
    let dir = tempdir();
    let path = dir.path().to_path_buf();
    run(move || async move {
        let (segment, batches) = prepare(&path).await;
        flip_bit(&segment, position_of(10) + 200);
        let config =
            LogConfig { recovery_mode: RecoveryMode::TruncateAtCorruption, ..small_config() };
        let (log, report) = Log::open(&path, config.clone()).await.unwrap();
        let cut = report.truncated_at.clone().expect("reports where it cut");
        assert_eq!(cut.position, position_of(10));
        assert!(report.corruption_bytes_dropped >= (BATCHES - 10) * 400);
        assert_eq!(log.last_index(), LogIndex(10));
        let kept = log.read_entries(LogIndex(1), LogIndex(10), 1 << 30).await.unwrap();
        assert_eq!(kept, batches[..10].to_vec());
        log.close().await.unwrap();
        let (log, report) = Log::open(&path, small_config()).await.unwrap();
        assert_eq!(report.truncated_at, None, "strict open after the cut is clean");
        assert_eq!(log.last_index(), LogIndex(10));
        log.close().await.unwrap();
    });
}

#[test]
fn a_flipped_bit_in_a_sealed_segment_is_never_returned_to_a_reader() {
    let dir = tempdir();
    let path = dir.path().to_path_buf();
    run(move || async move {
        let (log, _) = Log::open(&path, small_config()).await.unwrap();
        for i in 0..600u32 {
            let _ = log.append(request(1, 2, 2000, i as u8)).unwrap();
        }
        log.close().await.unwrap();
        let first = path.join("00000000000000000000-00000000000000000001.seg");
        flip_bit(&first, 4096 + 5000);
        // Sealed segments are trusted through their index: open does not read them...
        let (log, report) = Log::open(&path, small_config()).await.unwrap();
        assert!(report.sealed_trusted >= 1);
        // ...but every read verifies checksums.
        match log.fetch(Offset(0), 1 << 20, ReadBound::Durable).await {
            Err(FetchError::Corruption(c)) => assert_eq!(c.segment, first),
            other => panic!("expected Corruption, got {other:?}"),
        }
        log.close().await.unwrap();
    });
}

#[test]
fn recovery_of_a_torn_first_flush_into_a_new_segment_keeps_the_previous_segment() {
    let dir = tempdir();
    let path = dir.path().to_path_buf();
    run(move || async move {
        let (log, _) = Log::open(&path, small_config()).await.unwrap();
        let mut i = 0u32;
        while log.segment_count() < 2 {
            log.append(request(1, 2, 2000, i as u8)).unwrap().durable.await.unwrap();
            i += 1;
        }
        let last = log.last_index();
        log.close().await.unwrap();
        let mut names: Vec<_> = std::fs::read_dir(&path)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.ends_with(".seg"))
            .collect();
        names.sort();
        let tail = path.join(names.last().unwrap());
        // Tear the new segment's first flush: header block garbage, first batch half there.
        write_at(&tail, 0, &[0x77; 100]);
        let (log, report) = Log::open(&path, small_config()).await.unwrap();
        assert!(report.torn_bytes_dropped > 0, "{report:?}");
        assert!(report.lost_possibly_acknowledged(), "{report:?}");
        assert_eq!(log.last_index(), LogIndex(last.0 - 1), "the torn flush's batch is gone");
        log.append(request(1, 1, 10, 1)).unwrap().durable.await.unwrap();
        log.close().await.unwrap();
        let (log, report) = Log::open(&path, small_config()).await.unwrap();
        assert_eq!(report.torn_bytes_dropped, 0);
        assert_eq!(log.last_index(), last);
        log.close().await.unwrap();
    });
}

#[test]
fn recovery_of_a_rolled_segment_that_never_got_its_first_write_keeps_working() {
    let dir = tempdir();
    let path = dir.path().to_path_buf();
    run(move || async move {
        let (log, _) = Log::open(&path, small_config()).await.unwrap();
        let mut i = 0u32;
        while log.segment_count() < 2 {
            log.append(request(1, 2, 2000, i as u8)).unwrap().durable.await.unwrap();
            i += 1;
        }
        let first_in_tail = log.last_index();
        log.close().await.unwrap();
        let mut names: Vec<_> = std::fs::read_dir(&path)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.ends_with(".seg"))
            .collect();
        names.sort();
        // Killed after the spare was renamed into place, before its first write landed: the
        // segment is all zeros (a regression: the header must be written by recovery).
        write_at(&path.join(names.last().unwrap()), 0, &vec![0u8; 1 << 20]);
        let (log, report) = Log::open(&path, small_config()).await.unwrap();
        assert_eq!(log.last_index(), LogIndex(first_in_tail.0 - 1), "{report:?}");
        assert!(!report.lost_possibly_acknowledged(), "only zeros were there: {report:?}");
        while log.segment_count() < 3 {
            log.append(request(1, 2, 2000, 9)).unwrap().durable.await.unwrap();
        }
        let last = log.last_index();
        log.close().await.unwrap();
        let (log, report) = Log::open(&path, small_config()).await.unwrap();
        assert_eq!(log.last_index(), last, "{report:?}");
        assert_eq!(report.sealed_trusted, 2);
        let all = log.read_entries(LogIndex(1), last, 1 << 30).await.unwrap();
        assert_eq!(all.len() as u64, last.0);
        log.close().await.unwrap();
    });
}

/// Seeded: random damage anywhere in a log never makes open or reads panic, never yields a
/// batch that fails its checksum, and damage confined to the bytes after the last flush never
/// loses an acknowledged batch. Replay with `RINGLOG_RECOVERY_SEED`.
#[test]
fn random_damage_never_panics_and_never_returns_a_corrupt_batch() {
    use rand::{Rng, SeedableRng};
    let seed: u64 = std::env::var("RINGLOG_RECOVERY_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    println!("seed {seed} (replay: RINGLOG_RECOVERY_SEED={seed})");
    let dir = tempdir();
    let root = dir.path().to_path_buf();
    run(move || async move {
        let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
        for round in 0..12 {
            let path = root.join(format!("round-{round}"));
            let (segment, batches) = prepare(&path).await;
            let end = position_of(BATCHES);
            let tail_only = rng.gen_bool(0.5);
            for _ in 0..rng.gen_range(1..4) {
                let at = if tail_only {
                    end + rng.gen_range(0..64 << 10)
                } else {
                    rng.gen_range(0..end + 8192)
                };
                let len = rng.gen_range(1..600);
                let bytes: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
                write_at(&segment, at, &bytes);
            }
            match Log::open(&path, small_config()).await {
                Ok((log, report)) => {
                    let last = log.last_index();
                    if tail_only {
                        assert_eq!(
                            last,
                            LogIndex(BATCHES),
                            "seed {seed} round {round}: {report:?}"
                        );
                    }
                    if last.0 > 0 {
                        // One segment, scanned and verified by recovery: reads succeed.
                        let all = log.read_entries(LogIndex(1), last, 1 << 30).await.unwrap();
                        assert_eq!(all.len() as u64, last.0);
                        for (got, want) in all.iter().zip(&batches) {
                            assert_eq!(got, want, "seed {seed} round {round}");
                        }
                    }
                    log.close().await.unwrap();
                }
                Err(OpenError::Corruption(_)) => {
                    assert!(!tail_only, "seed {seed} round {round}: tail damage is a torn tail");
                }
                Err(other) => panic!("seed {seed} round {round}: {other}"),
            }
        }
    });
}

/// Waits (10 s at most) until the preallocator has published `count` spares.
async fn wait_for_spares(log: &Log, count: u64) {
    for _ in 0..2_000 {
        if log.stats().spares_filled >= count {
            return;
        }
        glommio::timer::sleep(std::time::Duration::from_millis(5)).await;
    }
    panic!("the preallocator did not publish spare {count} in 10 s");
}

/// Asserts that the ready spare is exactly one segment of zeros.
fn assert_ready_spare_is_zeros(dir: &Path, segment_size: u64) {
    let spare = std::fs::read(dir.join(ringlog_engine::segment::SPARE_READY)).unwrap();
    assert_eq!(spare.len() as u64, segment_size);
    assert!(spare.iter().all(|b| *b == 0), "the ready spare holds only zeros");
    assert!(!dir.join(ringlog_engine::segment::SPARE_FILLING).exists());
}

/// Appends enough to roll into the spare, reopens and reads everything back.
async fn append_across_a_roll_and_reopen(path: &Path) {
    let (log, _) = Log::open(path, small_config()).await.unwrap();
    let mut batches = Vec::new();
    // 3 × 1 MiB segments' worth of 40 KiB batches: at least two rolls.
    for i in 0..75u8 {
        let appended = log.append(request(1, 1, 40 << 10, i)).unwrap();
        batches.push(appended.batch.clone());
        appended.durable.await.unwrap();
    }
    assert!(log.stats().segments_rolled >= 2);
    log.close().await.unwrap();
    let (log, report) = Log::open(path, small_config()).await.unwrap();
    assert_eq!(report.torn_bytes_dropped, 0);
    let fetched = log.fetch(Offset(0), 8 << 20, ReadBound::Durable).await.unwrap();
    assert_eq!(fetched, batches);
    log.close().await.unwrap();
}

#[test]
fn an_interrupted_spare_fill_is_resumed_and_the_spare_ends_all_zeros() {
    let dir = tempdir();
    let path = dir.path().to_path_buf();
    std::fs::create_dir_all(&path).unwrap();
    // What a close or crash in the middle of a fill leaves: a prefix of zeros, its size not
    // necessarily a whole block.
    std::fs::write(path.join(ringlog_engine::segment::SPARE_FILLING), vec![0u8; (64 << 10) + 100])
        .unwrap();
    run(move || async move {
        let (log, _) = Log::open(&path, small_config()).await.unwrap();
        wait_for_spares(&log, 1).await;
        log.close().await.unwrap();
        assert_ready_spare_is_zeros(&path, small_config().segment_size_bytes);
        append_across_a_roll_and_reopen(&path).await;
    });
}

#[test]
fn a_partly_filled_spare_larger_than_a_segment_is_refilled_from_scratch() {
    let dir = tempdir();
    let path = dir.path().to_path_buf();
    std::fs::create_dir_all(&path).unwrap();
    // Left by a run with larger segments: never resumed, never taken as zeros.
    let oversized = small_config().segment_size_bytes as usize + (8 << 10);
    std::fs::write(path.join(ringlog_engine::segment::SPARE_FILLING), vec![0xab; oversized])
        .unwrap();
    run(move || async move {
        let (log, _) = Log::open(&path, small_config()).await.unwrap();
        wait_for_spares(&log, 1).await;
        log.close().await.unwrap();
        assert_ready_spare_is_zeros(&path, small_config().segment_size_bytes);
        append_across_a_roll_and_reopen(&path).await;
    });
}

#[test]
fn a_truncation_survives_the_loss_of_the_cut_segments_index_file() {
    // Issue 13 item 12: a truncation inside a segment was recorded only in its index file;
    // with that file lost or damaged, the rescan took the cut batches (which continue the
    // chain) back as the log's own.
    let dir = tempdir();
    let path = dir.path().to_path_buf();
    run(move || async move {
        let (segment, batches) = prepare(&path).await;
        let (log, _) = Log::open(&path, small_config()).await.unwrap();
        log.truncate_suffix(LogIndex(30)).await.unwrap();
        assert_eq!(log.last_index(), LogIndex(29));
        log.close().await.unwrap();
        let index = segment.with_extension("idx");
        assert!(index.exists(), "the cut segment's index records the cut");
        std::fs::remove_file(&index).unwrap();
        let (log, report) = Log::open(&path, small_config()).await.unwrap();
        assert_eq!(log.last_index(), LogIndex(29), "cut batches came back: {report:?}");
        let kept = log.read_entries(LogIndex(1), LogIndex(29), 1 << 30).await.unwrap();
        assert_eq!(kept[..], batches[..29]);
        let appended = log.append(request(1, 1, 10, 0xee)).unwrap();
        assert_eq!(appended.index, LogIndex(30));
        appended.durable.await.unwrap();
        log.close().await.unwrap();
    });
}
