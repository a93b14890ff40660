//! Segment recycling (`LogConfig::recycle_segments`, docs/format.md#recycled-segments):
//! retention hands its victims to the preallocator, which reuses them as spares; the stale
//! batches they keep past the write position are never taken for data, for corruption, or
//! returned to a reader. Each test runs with 1 MiB segments and 2 MiB of retention so that
//! recycling starts after a few segments, then tears, corrupts or interrupts on purpose.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use common::{flip_bits, request, run, small_config, tempdir, write_at};
use ringlog_engine::segment::{
    parse_segment_name, SEGMENT_FLAG_RECYCLED, SEGMENT_FLAG_SPARE, SPARE_READY,
};
use ringlog_engine::{
    CorruptionKind, Log, LogConfig, LogIndex, OpenError, ReadBound, RecoveryMode,
};

const BLOCK: u64 = 4096;
/// Bound of every fill loop (a loop that needs more is a bug, not a slow machine).
const GROUPS_MAX: usize = 400;

fn recycle_config() -> LogConfig {
    LogConfig { recycle_segments: true, retention_bytes_max: Some(2 << 20), ..small_config() }
}

/// The batches a test appended, by index.
type Written = BTreeMap<u64, Bytes>;

/// Appends `count` batches (4 records of 1000 bytes, contents derived from the index) and
/// waits until the last is durable; `single_flush` awaits each one (one flush per batch).
async fn append(log: &Log, written: &mut Written, count: usize, single_flush: bool) {
    append_sized(log, written, count, single_flush, 1000).await;
}

/// `append` with records of `record_size` bytes.
async fn append_sized(
    log: &Log,
    written: &mut Written,
    count: usize,
    single_flush: bool,
    record_size: usize,
) {
    let mut last = None;
    for _ in 0..count {
        let fill = (log.last_index().0.wrapping_mul(7) % 251) as u8;
        let appended = log.append(request(1, 4, record_size, fill)).unwrap();
        written.insert(appended.index.0, appended.batch.clone());
        if single_flush {
            appended.durable.await.unwrap();
        } else {
            last = Some(appended.durable);
        }
    }
    if let Some(durable) = last {
        durable.await.unwrap();
    }
}

async fn retain(log: &Log) {
    let durable = log.durable_index();
    log.apply_retention(0, LogIndex(durable.0 + 1)).await.unwrap();
}

/// The active (last) segment file of the log in `dir`.
fn tail_path(dir: &Path) -> PathBuf {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| parse_segment_name(n).is_some())
        .collect();
    names.sort();
    dir.join(names.last().expect("a segment"))
}

fn header_flags(path: &Path) -> u16 {
    let bytes = std::fs::read(path).unwrap();
    u16::from_le_bytes([bytes[6], bytes[7]])
}

/// Appends in groups (retention after each) until the active segment is a recycled one.
async fn fill_until_recycled_tail(log: &Log, written: &mut Written) {
    for _ in 0..GROUPS_MAX {
        append(log, written, 8, false).await;
        retain(log).await;
        if header_flags(&tail_path(log.dir())) & SEGMENT_FLAG_RECYCLED != 0 {
            return;
        }
    }
    panic!("no recycled tail after {GROUPS_MAX} groups: {:?}", log.stats());
}

/// Every batch from the log start to its end, read through `read_entries` and through
/// `fetch`, equals what was appended (byte for byte), and nothing past the end is returned.
async fn assert_log_matches(log: &Log, written: &Written) {
    let start = log.start_index().0;
    let last = log.last_index().0;
    assert!(start <= last, "the log is not empty");
    let entries = log.read_entries(LogIndex(start), LogIndex(last), 1 << 30).await.unwrap();
    assert_eq!(entries.len() as u64, last - start + 1);
    for (at, got) in entries.iter().enumerate() {
        assert_eq!(got, &written[&(start + at as u64)], "batch {}", start + at as u64);
    }
    let fetched = log.fetch(log.start_offset(), 1 << 30, ReadBound::Durable).await.unwrap();
    assert_eq!(fetched, entries, "fetch returns the same batches");
    let beyond = log.fetch(log.next_offset(), 1 << 30, ReadBound::Durable).await.unwrap();
    assert!(beyond.is_empty(), "nothing is readable past the end");
}

/// Whether `path` holds, past `end`, a block-aligned batch header of an index below `base`
/// (a stale batch of the file's earlier life): proves a test exercises stale bytes.
fn holds_stale_batch_past(path: &Path, end: u64, base: u64) -> bool {
    let bytes = std::fs::read(path).unwrap();
    let mut at = end.div_ceil(BLOCK) * BLOCK;
    while at + 72 <= bytes.len() as u64 {
        let p = at as usize;
        let index = u64::from_le_bytes(bytes[p + 32..p + 40].try_into().unwrap());
        if &bytes[p..p + 4] == b"RLGB" && index > 0 && index < base {
            return true;
        }
        at += BLOCK;
    }
    false
}

/// Block-aligned file position of `batch` in `path` (every single-flush batch starts on a
/// block boundary).
fn position_in(path: &Path, batch: &[u8]) -> u64 {
    let bytes = std::fs::read(path).unwrap();
    (0..bytes.len() as u64 / BLOCK)
        .map(|block| block * BLOCK)
        .find(|at| bytes[*at as usize..].starts_with(batch))
        .expect("the batch is in the segment")
}

fn flip_bit(file: &Path, position: u64) {
    flip_bits(file, position, 0x10);
}

/// Batches appended one flush each into the recycled tail.
const TAIL_BATCHES: usize = 40;

/// A closed log whose tail segment is recycled, holds `TAIL_BATCHES` single-flush batches and
/// stale batches past them. Returns what was written.
async fn recycled_tail_fixture(path: &Path) -> Written {
    let (log, _) = Log::open(path, recycle_config()).await.unwrap();
    let mut written = Written::new();
    fill_until_recycled_tail(&log, &mut written).await;
    append(&log, &mut written, TAIL_BATCHES, true).await;
    assert!(log.stats().spares_recycled > 0, "{:?}", log.stats());
    log.close().await.unwrap();
    written
}

/// Reopens after damage in the recycled tail: the log ends at `last`, every batch before is
/// intact, nothing stale is returned, and appending then reopening keeps working.
/// `own_dropped`: the damage cut bytes of the segment's own index range (a torn or rotted
/// last batch: possibly acknowledged) rather than only stale bytes.
async fn expect_cut_at(path: &Path, last: u64, written: &mut Written, own_dropped: bool) {
    let (log, report) = Log::open(path, recycle_config()).await.unwrap();
    assert_eq!(log.last_index(), LogIndex(last), "{report:?}");
    assert_eq!(report.truncated_at, None);
    assert_eq!(report.tail_dropped, own_dropped, "{report:?}");
    assert_eq!(report.lost_possibly_acknowledged(), own_dropped, "{report:?}");
    assert_eq!(report.torn_bytes_dropped, 0, "a recycled tail reports zeroed bytes apart");
    assert!(report.recycled_bytes_zeroed > 0, "{report:?}");
    written.retain(|index, _| *index <= last);
    assert_log_matches(&log, written).await;
    append(&log, written, 3, true).await;
    log.close().await.unwrap();
    let (log, report) = Log::open(path, recycle_config()).await.unwrap();
    assert_eq!(log.last_index(), LogIndex(last + 3), "{report:?}");
    assert_eq!(report.truncated_at, None);
    assert_log_matches(&log, written).await;
    log.close().await.unwrap();
}

#[test]
fn appends_across_many_recycled_segments_survive_a_reopen_byte_for_byte() {
    let dir = tempdir();
    let path = dir.path().to_path_buf();
    run(move || async move {
        let (log, _) = Log::open(&path, recycle_config()).await.unwrap();
        let mut written = Written::new();
        for group in 0..GROUPS_MAX {
            // Batch sizes from 12 to 60 KiB: each life of a file ends at another position,
            // so stale batches follow the data of sealed recycled segments.
            let record_size = 3000 * (group % 5 + 1);
            append_sized(&log, &mut written, 4, false, record_size).await;
            retain(&log).await;
            if log.stats().spares_recycled >= 6 {
                break;
            }
        }
        let stats = log.stats();
        assert!(stats.spares_recycled >= 6, "{stats:?}");
        assert_log_matches(&log, &written).await;
        let (start, last) = (log.start_index(), log.last_index());
        assert!(start > LogIndex(1), "retention moved the start");
        log.close().await.unwrap();
        let (log, report) = Log::open(&path, recycle_config()).await.unwrap();
        assert_eq!((log.start_index(), log.last_index()), (start, last), "{report:?}");
        assert_eq!(report.torn_bytes_dropped, 0);
        assert_log_matches(&log, &written).await;
        log.close().await.unwrap();
        // Without their index files, the sealed (recycled) segments are rescanned: each scan
        // stops at the next segment's base although stale batches follow.
        for entry in std::fs::read_dir(&path).unwrap() {
            let entry = entry.unwrap().path();
            if entry.extension().is_some_and(|e| e == "idx") {
                std::fs::remove_file(entry).unwrap();
            }
        }
        let (log, report) = Log::open(&path, recycle_config()).await.unwrap();
        assert!(report.sealed_rescanned > 0, "{report:?}");
        assert_eq!((log.start_index(), log.last_index()), (start, last), "{report:?}");
        assert_log_matches(&log, &written).await;
        log.close().await.unwrap();
    });
}

#[test]
fn a_sealed_recycled_segment_rescanned_without_its_index_stops_before_its_stale_batches() {
    let dir = tempdir();
    let path = dir.path().to_path_buf();
    run(move || async move {
        let mut written = recycled_tail_fixture(&path).await;
        let sealed = tail_path(&path);
        let name = sealed.file_name().unwrap().to_str().unwrap().to_string();
        let base = parse_segment_name(&name).unwrap().1;
        let (log, _) = Log::open(&path, recycle_config()).await.unwrap();
        let segments = log.segment_count();
        for _ in 0..GROUPS_MAX {
            // 60 KiB batches: the recycled tail is sealed well before the end of its old life.
            append_sized(&log, &mut written, 1, true, 15_000).await;
            if log.segment_count() > segments {
                break;
            }
        }
        log.close().await.unwrap();
        let next_base =
            parse_segment_name(tail_path(&path).file_name().unwrap().to_str().unwrap()).unwrap().1;
        assert!(next_base > base, "the recycled tail was sealed by a roll");
        let last = &written[&(next_base.0 - 1)];
        let end = position_in(&sealed, last) + last.len() as u64;
        // Past the padding after its last batch, the old life's bytes follow: a rescan that
        // did not stop at the next segment's base would take them for damage.
        let after = match end % BLOCK {
            0 => end,
            rest if BLOCK - rest < 16 => end.div_ceil(BLOCK) * BLOCK + BLOCK,
            _ => end.div_ceil(BLOCK) * BLOCK,
        };
        let bytes = std::fs::read(&sealed).unwrap();
        let stale = &bytes[after as usize..(after as usize + 72).min(bytes.len())];
        assert!(stale.iter().any(|b| *b != 0), "stale bytes follow its data at {after}");
        std::fs::remove_file(path.join(name.replace(".seg", ".idx"))).unwrap();
        let (log, report) = Log::open(&path, recycle_config()).await.unwrap();
        assert_eq!(report.sealed_rescanned, 1, "{report:?}");
        assert_eq!(report.truncated_at, None);
        assert_log_matches(&log, &written).await;
        log.close().await.unwrap();
    });
}

/// The stale bound of every recycled file in `dir`: candidates (name), the ready spare and
/// the segments (header).
fn stale_bounds(dir: &Path) -> Vec<u64> {
    let mut bounds = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_string();
        if let Some(digits) = name.strip_prefix("spare.recycled-") {
            bounds.push(digits.parse().unwrap());
        } else if (name == SPARE_READY || parse_segment_name(&name).is_some())
            && header_flags(&path) & SEGMENT_FLAG_RECYCLED != 0
        {
            bounds.push(spare_bound(&path));
        }
    }
    bounds
}

#[test]
fn a_segment_cut_by_a_truncation_is_deleted_by_retention_never_recycled() {
    let dir = tempdir();
    let path = dir.path().to_path_buf();
    run(move || async move {
        let (log, _) = Log::open(&path, recycle_config()).await.unwrap();
        let mut written = Written::new();
        append(&log, &mut written, 60, true).await;
        // Cut the active segment in its middle: the cut batches stay in its file.
        let from = log.last_index().0 - 30;
        log.truncate_suffix(LogIndex(from)).await.unwrap();
        written.retain(|index, _| *index < from);
        let cut_segment = tail_path(&path);
        for _ in 0..GROUPS_MAX {
            append(&log, &mut written, 16, false).await;
            retain(&log).await;
            assert!(!stale_bounds(&path).contains(&from), "the cut segment was recycled");
            if !cut_segment.exists() && log.stats().spares_recycled >= 2 {
                break;
            }
        }
        assert!(!cut_segment.exists(), "retention removed the cut segment");
        assert!(log.stats().spares_recycled >= 2, "{:?}", log.stats());
        assert_log_matches(&log, &written).await;
        log.close().await.unwrap();
        let (log, _) = Log::open(&path, recycle_config()).await.unwrap();
        assert_log_matches(&log, &written).await;
        log.close().await.unwrap();
    });
}

#[test]
fn a_recycled_tail_with_stale_batches_reopens_at_its_last_batch() {
    let dir = tempdir();
    let path = dir.path().to_path_buf();
    run(move || async move {
        let mut written = recycled_tail_fixture(&path).await;
        let tail = tail_path(&path);
        let base = parse_segment_name(tail.file_name().unwrap().to_str().unwrap()).unwrap().1;
        let last = *written.keys().last().unwrap();
        let end = position_in(&tail, &written[&last]) + written[&last].len() as u64;
        assert!(holds_stale_batch_past(&tail, end, base.0), "the fixture keeps stale batches");
        let (log, report) = Log::open(&path, recycle_config()).await.unwrap();
        assert_eq!(log.last_index(), LogIndex(last), "{report:?}");
        assert_eq!(report.torn_bytes_dropped, 0);
        assert_eq!(report.truncated_at, None);
        assert!(!report.lost_possibly_acknowledged(), "stale bytes are no loss: {report:?}");
        assert_log_matches(&log, &written).await;
        append(&log, &mut written, 3, true).await;
        log.close().await.unwrap();
        let (log, _) = Log::open(&path, recycle_config()).await.unwrap();
        assert_log_matches(&log, &written).await;
        log.close().await.unwrap();
    });
}

/// Builds the fixture once, then runs `damage` + the expected outcome on a copy per case.
fn torn_case(own_dropped: bool, damage: fn(&Path, &Written) -> u64) {
    let dir = tempdir();
    let path = dir.path().to_path_buf();
    run(move || async move {
        let mut written = recycled_tail_fixture(&path).await;
        let last = damage(&tail_path(&path), &written);
        expect_cut_at(&path, last, &mut written, own_dropped).await;
    });
}

#[test]
fn garbage_after_the_last_flush_of_a_recycled_tail_is_a_torn_tail() {
    // Garbage with no header of this segment cannot be told from stale bytes: not a loss.
    torn_case(false, |tail, written| {
        let last = *written.keys().last().unwrap();
        let end = position_in(tail, &written[&last]) + written[&last].len() as u64;
        let garbage: Vec<u8> = (0..3000u32).map(|i| (i * 31 % 253) as u8 | 1).collect();
        write_at(tail, end.div_ceil(BLOCK) * BLOCK, &garbage);
        last
    });
}

#[test]
fn a_last_batch_ending_in_zeros_in_a_recycled_tail_is_dropped() {
    torn_case(true, |tail, written| {
        let last = *written.keys().last().unwrap();
        let batch = &written[&last];
        let end = position_in(tail, batch) + batch.len() as u64;
        write_at(tail, end - 100, &[0u8; 100]);
        last - 1
    });
}

#[test]
fn a_half_written_last_batch_in_a_recycled_tail_is_dropped() {
    torn_case(true, |tail, written| {
        let last = *written.keys().last().unwrap();
        let batch = &written[&last];
        let at = position_in(tail, batch) + batch.len() as u64 / 2;
        let garbage = vec![0x5au8; batch.len() / 2];
        write_at(tail, at, &garbage);
        last - 1
    });
}

#[test]
fn a_flipped_bit_in_the_last_batch_of_a_recycled_tail_drops_that_batch() {
    // Issue 13: rot in an acknowledged last batch is reported as a possible loss.
    torn_case(true, |tail, written| {
        let last = *written.keys().last().unwrap();
        flip_bit(tail, position_in(tail, &written[&last]) + 500);
        last - 1
    });
}

#[test]
fn a_flipped_bit_in_the_middle_of_a_recycled_tail_is_corruption_naming_segment_and_position() {
    let dir = tempdir();
    let path = dir.path().to_path_buf();
    run(move || async move {
        let written = recycled_tail_fixture(&path).await;
        let tail = tail_path(&path);
        // A batch followed by more than one flush's reach of valid batches.
        let victim = *written.keys().last().unwrap() - TAIL_BATCHES as u64 + 2;
        let position = position_in(&tail, &written[&victim]);
        flip_bit(&tail, position + 300);
        let error = Log::open(&path, recycle_config()).await.unwrap_err();
        let OpenError::Corruption(corruption) = error else { panic!("{error:?}") };
        assert_eq!(corruption.segment, tail);
        assert_eq!(corruption.position, position);
        assert!(matches!(corruption.kind, CorruptionKind::InvalidBatch(_)), "{corruption:?}");
        // Nothing was changed: asked to, recovery cuts there and keeps everything before.
        let config =
            LogConfig { recovery_mode: RecoveryMode::TruncateAtCorruption, ..recycle_config() };
        let (log, report) = Log::open(&path, config).await.unwrap();
        assert_eq!(log.last_index(), LogIndex(victim - 1), "{report:?}");
        assert!(report.truncated_at.is_some());
        let mut kept = written.clone();
        kept.retain(|index, _| *index < victim);
        assert_log_matches(&log, &kept).await;
        log.close().await.unwrap();
    });
}

/// A closed log with a ready recycled spare; returns what was written and the spare's flags.
async fn log_with_recycled_spare(path: &Path) -> Written {
    let (log, _) = Log::open(path, recycle_config()).await.unwrap();
    let mut written = Written::new();
    for _ in 0..GROUPS_MAX {
        append(&log, &mut written, 8, false).await;
        retain(&log).await;
        let spare = path.join(SPARE_READY);
        let ready = spare.exists() && header_flags(&spare) & SEGMENT_FLAG_SPARE != 0;
        if ready && log.stats().spares_recycled >= 2 {
            break;
        }
    }
    assert!(header_flags(&path.join(SPARE_READY)) & SEGMENT_FLAG_SPARE != 0);
    log.close().await.unwrap();
    written
}

/// Reopens, appends across several rolls (so the damaged or half-done spare gets used),
/// reopens again and checks every batch.
async fn reopen_and_roll(path: &Path, mut written: Written) {
    let (log, report) = Log::open(path, recycle_config()).await.unwrap();
    assert_eq!(report.truncated_at, None);
    assert_log_matches(&log, &written).await;
    let rolled = log.stats().segments_rolled;
    for _ in 0..GROUPS_MAX {
        append(&log, &mut written, 16, false).await;
        retain(&log).await;
        if log.stats().segments_rolled >= rolled + 3 && log.stats().spares_recycled >= 1 {
            break;
        }
    }
    assert!(log.stats().spares_recycled >= 1, "{:?}", log.stats());
    log.close().await.unwrap();
    let (log, _) = Log::open(path, recycle_config()).await.unwrap();
    assert_log_matches(&log, &written).await;
    log.close().await.unwrap();
}

fn spare_bound(spare: &Path) -> u64 {
    let bytes = std::fs::read(spare).unwrap();
    u64::from_le_bytes(bytes[64..72].try_into().unwrap())
}

#[test]
fn a_crash_after_a_candidate_was_renamed_but_before_it_was_prepared_reopens_cleanly() {
    let dir = tempdir();
    let path = dir.path().to_path_buf();
    run(move || async move {
        let written = log_with_recycled_spare(&path).await;
        // Undo the preparation: a candidate whose block 0 is torn garbage.
        let spare = path.join(SPARE_READY);
        let candidate = path.join(format!("spare.recycled-{:020}", spare_bound(&spare)));
        std::fs::rename(&spare, &candidate).unwrap();
        write_at(&candidate, 0, &[0xa5; 4096]);
        reopen_and_roll(&path, written).await;
        assert!(!candidate.exists(), "the candidate was recycled");
    });
}

#[test]
fn a_crash_after_a_spare_was_prepared_but_before_it_was_renamed_reopens_cleanly() {
    let dir = tempdir();
    let path = dir.path().to_path_buf();
    run(move || async move {
        let written = log_with_recycled_spare(&path).await;
        let spare = path.join(SPARE_READY);
        let candidate = path.join(format!("spare.recycled-{:020}", spare_bound(&spare)));
        std::fs::rename(&spare, &candidate).unwrap();
        reopen_and_roll(&path, written).await;
    });
}

#[test]
fn a_crash_after_a_recycled_spare_became_a_segment_before_its_first_flush_reopens_cleanly() {
    let dir = tempdir();
    let path = dir.path().to_path_buf();
    run(move || async move {
        let written = log_with_recycled_spare(&path).await;
        let (next_index, next_offset) = {
            let (log, _) = Log::open(&path, recycle_config()).await.unwrap();
            let end = (log.last_index().0 + 1, log.next_offset().0);
            log.close().await.unwrap();
            end
        };
        let name = format!("{next_offset:020}-{next_index:020}.seg");
        std::fs::rename(path.join(SPARE_READY), path.join(&name)).unwrap();
        let (log, report) = Log::open(&path, recycle_config()).await.unwrap();
        assert_eq!(log.last_index(), LogIndex(next_index - 1), "{report:?}");
        assert_eq!(report.truncated_at, None);
        assert_eq!(log.segment_count(), report.segments);
        log.close().await.unwrap();
        let segment = path.join(&name);
        let flags = header_flags(&segment);
        assert_eq!(flags, SEGMENT_FLAG_RECYCLED, "the empty recycled segment got its header");
        reopen_and_roll(&path, written).await;
    });
}

#[test]
fn a_reset_below_the_stale_bound_of_a_recycled_spare_never_reuses_it() {
    let dir = tempdir();
    let path = dir.path().to_path_buf();
    run(move || async move {
        let _ = log_with_recycled_spare(&path).await;
        let bound = spare_bound(&path.join(SPARE_READY));
        let (log, _) = Log::open(&path, recycle_config()).await.unwrap();
        // Restart the log far below every stale index: the recycled spare and the candidates
        // must not become its segments.
        log.reset(LogIndex(2), ringlog_engine::Offset(10), ringlog_engine::Term(1)).await.unwrap();
        let segment = tail_path(&path);
        assert_eq!(
            header_flags(&segment),
            0,
            "a zero-filled spare was used, not one above {bound}"
        );
        let mut written = Written::new();
        append(&log, &mut written, 40, false).await;
        assert_log_matches(&log, &written).await;
        log.close().await.unwrap();
        let (log, report) = Log::open(&path, recycle_config()).await.unwrap();
        assert_eq!(report.truncated_at, None);
        assert_log_matches(&log, &written).await;
        log.close().await.unwrap();
    });
}

#[test]
fn a_log_reopened_with_recycling_off_deletes_its_candidates_and_zero_fills() {
    let dir = tempdir();
    let path = dir.path().to_path_buf();
    run(move || async move {
        let mut written = log_with_recycled_spare(&path).await;
        let config = LogConfig { recycle_segments: false, ..recycle_config() };
        let (log, _) = Log::open(&path, config.clone()).await.unwrap();
        let rolled = log.stats().segments_rolled;
        for _ in 0..GROUPS_MAX {
            append(&log, &mut written, 16, false).await;
            retain(&log).await;
            if log.stats().segments_rolled >= rolled + 3 {
                break;
            }
        }
        let stats = log.stats();
        assert_eq!(stats.spares_recycled, 0, "{stats:?}");
        assert!(stats.spares_filled >= 2, "{stats:?}");
        let candidates = std::fs::read_dir(&path)
            .unwrap()
            .filter(|e| {
                e.as_ref().unwrap().file_name().to_str().unwrap().starts_with("spare.recycled-")
            })
            .count();
        assert_eq!(candidates, 0, "the candidates were deleted");
        assert_log_matches(&log, &written).await;
        log.close().await.unwrap();
        let (log, _) = Log::open(&path, config).await.unwrap();
        assert_log_matches(&log, &written).await;
        log.close().await.unwrap();
    });
}
