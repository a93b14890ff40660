//! A full disk is an operating condition, not a failure (issue #13 item 10): the log opens,
//! answers appends `StorageFull`, keeps serving reads, retries with a bounded backoff and
//! resumes by itself once space is back; nothing acknowledged is lost. Only a failed write or
//! fdatasync of segment data latches, whatever its errno.
//!
//! The first tests make the disk "full" with the `FaultInjector` (every write that allocates
//! space fails with ENOSPC); `a_real_full_disk_*` fills a real loop-mounted ext4 (root,
//! `mkfs.ext4` and loop devices needed; it skips with a message without them).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{request, run, small_config, tempdir, values};
use ringlog_engine::{
    AppendError, Appended, FaultInjector, HardStateError, HardStateStore, Log, LogConfig, LogError,
    LogIndex, NodeId, Offset, ReadBound, ResetError, Term, TruncateError,
};

/// Longest wait for the log to notice a full disk, or space coming back (the retry backoff
/// is at most `SPACE_RETRY_BACKOFF_MAX`, 2 s).
const NOTICE_WAIT_MAX: Duration = Duration::from_secs(20);

/// Waits until the log answers appends `StorageFull` (the preallocator or a roll met ENOSPC).
async fn wait_storage_full(log: &Log) {
    let deadline = Instant::now() + NOTICE_WAIT_MAX;
    while log.storage_full().is_none() {
        assert!(Instant::now() < deadline, "the log did not notice the full disk");
        glommio::timer::sleep(Duration::from_millis(5)).await;
    }
}

/// `Log::wait_space`, bounded.
async fn wait_space(log: &Log) {
    let waited = futures_lite::future::or(async { Some(log.wait_space().await) }, async {
        glommio::timer::sleep(NOTICE_WAIT_MAX).await;
        None
    })
    .await;
    match waited {
        Some(Ok(())) => {}
        Some(Err(e)) => panic!("waiting for space: {e}"),
        None => panic!("appends did not resume within {NOTICE_WAIT_MAX:?} of space coming back"),
    }
}

/// The value of the `i`-th record appended by these tests.
fn fill_of(i: u32) -> u8 {
    (i % 251) as u8
}

/// Every record value of the log, from its start.
async fn all_values(log: &Log) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut offset = log.start_offset();
    // Bound: each fetch returns at least one batch of the durable log.
    for _ in 0..100_000 {
        if offset >= log.durable_offset() {
            return out;
        }
        let batches = log.fetch(offset, 1 << 20, ReadBound::Durable).await.unwrap();
        assert!(!batches.is_empty());
        for b in &batches {
            let header = ringlog_engine::batch::peek_header(b, 1 << 20).unwrap();
            offset = header.next_offset();
        }
        out.extend(values(&batches));
    }
    panic!("the log did not end");
}

#[test]
fn a_full_disk_at_open_answers_storage_full_and_appends_resume_when_space_is_back() {
    let dir = tempdir();
    let path = dir.path().to_path_buf();
    run(move || async move {
        let faults = Arc::new(FaultInjector::default());
        faults.fill_disk();
        // The preallocator meets ENOSPC right at open: the log still opens.
        let (log, _) = Log::open_with_faults(&path, small_config(), faults.clone()).await.unwrap();
        wait_storage_full(&log).await;
        assert!(log.failure().is_none(), "a full disk latches nothing");
        match log.append(request(1, 1, 100, 1)) {
            Err(AppendError::StorageFull { reason }) => assert!(reason.contains("No space")),
            other => panic!("expected StorageFull, got {other:?}"),
        }
        assert!(log.stats().no_space_events >= 1);
        faults.free_disk();
        wait_space(&log).await;
        let mut durables = Vec::new();
        for i in 0..20u32 {
            let appended = log.append(request(1, 2, 500, fill_of(i))).expect("space is back");
            durables.push(appended.durable);
        }
        for durable in durables {
            durable.await.unwrap();
        }
        log.close().await.unwrap();

        let (log, _) = Log::open(&path, small_config()).await.unwrap();
        let expected: Vec<Vec<u8>> =
            (0..20u32).flat_map(|i| [vec![fill_of(i); 500], vec![fill_of(i); 500]]).collect();
        assert_eq!(all_values(&log).await, expected);
        log.close().await.unwrap();
    });
}

#[test]
fn a_full_disk_at_a_roll_answers_storage_full_serves_reads_and_loses_nothing() {
    let dir = tempdir();
    let path = dir.path().to_path_buf();
    run(move || async move {
        let faults = Arc::new(FaultInjector::default());
        let (log, _) = Log::open_with_faults(&path, small_config(), faults.clone()).await.unwrap();
        // The first segment's flush, so a spare is ready before the disk fills.
        log.append(request(1, 1, 1000, fill_of(0))).unwrap().durable.await.unwrap();
        wait_spare_filled(&log, 1).await;
        faults.fill_disk();
        // 1 MiB segments of 30 KB batches: a roll comes after ~34 of them. The roll seals the
        // old segment (its index file meets ENOSPC) or, after it, no new spare can be made.
        let mut accepted: Vec<Appended> = Vec::new();
        let mut appended = 1u32;
        let refused = loop {
            match log.append(request(1, 1, 30_000, fill_of(appended))) {
                Ok(a) => {
                    accepted.push(a);
                    appended += 1;
                }
                Err(e) => break e,
            }
            assert!(appended < 2_000, "the full disk was never noticed");
            // Let the flusher run (appends are synchronous).
            glommio::yield_if_needed().await;
            if appended % 8 == 0 {
                glommio::timer::sleep(Duration::from_millis(1)).await;
            }
        };
        match refused {
            AppendError::StorageFull { .. } => {}
            // The queue filled while the roll waited for space: StorageFull comes next.
            AppendError::Backpressure { .. } => {
                wait_storage_full(&log).await;
                assert!(matches!(
                    log.append(request(1, 1, 100, 0)),
                    Err(AppendError::StorageFull { .. })
                ));
            }
            other => panic!("expected StorageFull, got {other:?}"),
        }
        assert!(log.failure().is_none(), "a full disk latches nothing");
        // Reads keep working: everything durable is there.
        let durable_before = log.durable_index();
        let durable_values = all_values(&log).await;
        assert_eq!(durable_values.len() as u64, durable_before.0);
        // A truncation of the whole log is a reset: it needs a spare, so it is refused whole.
        if log.storage_full().is_some() && log.stats().spares_filled == log.stats().segments_rolled
        {
            match log.truncate_suffix(LogIndex(1)).await {
                Err(TruncateError::StorageFull { .. }) => {
                    assert_eq!(log.durable_index(), durable_before, "nothing was truncated");
                }
                other => panic!("expected StorageFull, got {other:?}"),
            }
        }
        faults.free_disk();
        wait_space(&log).await;
        for a in accepted {
            a.durable.await.expect("every accepted batch becomes durable once space is back");
        }
        for i in appended..appended + 40 {
            log.append(request(1, 1, 30_000, fill_of(i))).unwrap().durable.await.unwrap();
        }
        let total = appended + 40;
        log.close().await.unwrap();

        let (log, _) = Log::open(&path, small_config()).await.unwrap();
        let mut expected = vec![vec![fill_of(0); 1000]];
        expected.extend((1..total).map(|i| vec![fill_of(i); 30_000]));
        let found = all_values(&log).await;
        assert_eq!(found.len(), expected.len());
        assert!(found == expected, "the log after the full disk differs");
        assert!(log.segment_count() >= 2, "the log rolled once space was back");
        log.close().await.unwrap();
    });
}

#[test]
fn a_roll_blocked_by_a_full_disk_whose_batches_are_truncated_does_not_stay_full() {
    // The roll's index file met ENOSPC (a spare is ready); then a truncation dropped the
    // batches the roll was for. Once space is back the log must take appends again although
    // no batch is left to retry the roll with.
    let dir = tempdir();
    let path = dir.path().to_path_buf();
    run(move || async move {
        let faults = Arc::new(FaultInjector::default());
        let (log, _) = Log::open_with_faults(&path, small_config(), faults.clone()).await.unwrap();
        let first = log.append(request(1, 1, 1000, fill_of(0))).unwrap();
        first.durable.await.unwrap();
        // The first flush rolled into the spare made at open; the next spare is ready too.
        wait_spare_filled(&log, 2).await;
        let rolled = log.stats().segments_rolled;
        faults.fill_disk();
        let mut accepted = Vec::new();
        while log.storage_full().is_none() {
            match log.append(request(1, 1, 30_000, 1)) {
                Ok(a) => accepted.push(a),
                Err(AppendError::Backpressure { .. }) => wait_storage_full(&log).await,
                Err(e) => panic!("{e}"),
            }
            glommio::timer::sleep(Duration::from_millis(1)).await;
        }
        assert_eq!(log.stats().segments_rolled, rolled, "the roll is what the full disk blocks");
        let durable = log.durable_index();
        log.truncate_suffix(durable.next()).await.unwrap();
        assert_eq!(log.last_index(), durable, "the undurable batches are gone");
        faults.free_disk();
        wait_space(&log).await;
        let a = log.append(request(1, 1, 100, 9)).unwrap();
        a.durable.await.unwrap();
        log.close().await.unwrap();
    });
}

#[test]
fn a_data_write_failing_with_enospc_latches_the_log() {
    // Segments are preallocated: an O_DIRECT write into one should never meet ENOSPC. If it
    // does, it is a failed write of data (fsyncgate: never retried), not a full disk.
    let dir = tempdir();
    let path = dir.path().to_path_buf();
    run(move || async move {
        let (log, _) = Log::open(&path, small_config()).await.unwrap();
        log.append(request(1, 1, 100, 1)).unwrap().durable.await.unwrap();
        wait_spare_filled(&log, 2).await;
        log.fault_injector().fail_writes_no_space(1);
        let appended = log.append(request(1, 1, 100, 2)).unwrap();
        assert!(matches!(appended.durable.await, Err(LogError::Failed { .. })));
        assert!(matches!(log.append(request(1, 1, 100, 3)), Err(AppendError::Failed { .. })));
        assert!(log.storage_full().is_none());
        drop(log);
    });
}

#[test]
fn a_reset_on_a_full_disk_changes_nothing_and_succeeds_once_space_is_back() {
    let dir = tempdir();
    let path = dir.path().to_path_buf();
    run(move || async move {
        let (log, _) = Log::open(&path, small_config()).await.unwrap();
        for i in 0..40u32 {
            log.append(request(1, 1, 30_000, fill_of(i))).unwrap().durable.await.unwrap();
        }
        log.close().await.unwrap();
        // As if a roll had just taken the spare when the disk filled: none is left.
        let _ = std::fs::remove_file(path.join("spare.seg.ready"));
        let faults = Arc::new(FaultInjector::default());
        faults.fill_disk();
        let (log, _) = Log::open_with_faults(&path, small_config(), faults.clone()).await.unwrap();
        wait_storage_full(&log).await;
        let before = (log.last_index(), log.durable_index(), log.start_index());
        let values_before = all_values(&log).await;
        assert_eq!(values_before.len(), 40);
        // The reset's new first segment is a spare: refused whole, nothing changed.
        match log.reset(LogIndex(1000), Offset(5000), Term(3)).await {
            Err(ResetError::StorageFull { .. }) => {}
            other => panic!("expected StorageFull, got {other:?}"),
        }
        match log.truncate_suffix(LogIndex(1)).await {
            Err(TruncateError::StorageFull { .. }) => {}
            other => panic!("expected StorageFull, got {other:?}"),
        }
        assert_eq!((log.last_index(), log.durable_index(), log.start_index()), before);
        assert_eq!(all_values(&log).await, values_before);
        assert!(log.failure().is_none());
        faults.free_disk();
        wait_space(&log).await;
        log.reset(LogIndex(1000), Offset(5000), Term(3)).await.unwrap();
        let a = log.append(request(3, 1, 100, 7)).unwrap();
        assert_eq!((a.index, a.base_offset), (LogIndex(1000), Offset(5000)));
        a.durable.await.unwrap();
        log.close().await.unwrap();
        let (log, _) = Log::open(&path, small_config()).await.unwrap();
        assert_eq!(log.start_index(), LogIndex(1000));
        assert_eq!(all_values(&log).await, vec![vec![7u8; 100]]);
        log.close().await.unwrap();
    });
}

#[test]
fn creating_hard_state_on_a_full_disk_is_storage_full_not_a_failure() {
    let dir = tempdir();
    let path = dir.path().to_path_buf();
    run(move || async move {
        let faults = Arc::new(FaultInjector::default());
        faults.fill_disk();
        match HardStateStore::open_with_faults(&path, faults.clone()).await {
            Err(HardStateError::StorageFull { .. }) => {}
            other => panic!("expected StorageFull, got {:?}", other.map(|_| ())),
        }
        faults.free_disk();
        let store = HardStateStore::open_with_faults(&path, faults.clone()).await.unwrap();
        store.store(Term(2), Some(NodeId(1))).await.unwrap();
        // An existing file is written in place: a full disk does not stop votes.
        faults.fill_disk();
        let store = HardStateStore::open_with_faults(&path, faults.clone()).await.unwrap();
        store.store(Term(3), None).await.unwrap();
        assert_eq!(store.load().await.unwrap().term, Term(3));
    });
}

/// Waits until the preallocator made `count` zero-filled spares.
/// The nemesis soak (issue #13) filled a follower's disk just as a segment rolled: the
/// spare's rename into place met ENOSPC (a rename may need a directory block), the log
/// latched and the node exited 2 at every restart. The roll must be retried like any full
/// disk, with nothing lost.
#[test]
fn a_rename_into_place_refused_for_space_at_a_roll_is_retried_and_loses_nothing() {
    let dir = tempdir();
    let path = dir.path().to_path_buf();
    run(move || async move {
        let faults = Arc::new(FaultInjector::default());
        let (log, _) = Log::open_with_faults(&path, small_config(), faults.clone()).await.unwrap();
        log.append(request(1, 1, 1000, fill_of(0))).unwrap().durable.await.unwrap();
        wait_spare_filled(&log, 1).await;
        faults.fail_renames_no_space(1);
        // 1 MiB segments of 30 KB batches: a roll after ~34 of them, its rename refused once.
        let mut accepted: Vec<Appended> = Vec::new();
        let mut appended = 1u32;
        while log.stats().segments_rolled < 1 || appended < 60 {
            match log.append(request(1, 1, 30_000, fill_of(appended))) {
                Ok(a) => {
                    accepted.push(a);
                    appended += 1;
                }
                Err(AppendError::StorageFull { .. }) | Err(AppendError::Backpressure { .. }) => {
                    wait_space(&log).await;
                }
                Err(e) => panic!("append {appended}: {e}"),
            }
            assert!(appended < 2_000, "no roll happened");
            glommio::timer::sleep(Duration::from_millis(1)).await;
        }
        assert!(log.failure().is_none(), "a rename refused for space latches nothing");
        assert!(log.stats().no_space_events >= 1, "the refused rename was a full disk");
        for a in accepted {
            a.durable.await.expect("every accepted append becomes durable");
        }
        log.close().await.unwrap();
        let (log, _) = Log::open(&path, small_config()).await.unwrap();
        let expected: Vec<Vec<u8>> =
            (0..appended).map(|i| vec![fill_of(i); if i == 0 { 1000 } else { 30_000 }]).collect();
        assert_eq!(all_values(&log).await, expected);
        log.close().await.unwrap();
    });
}

async fn wait_spare_filled(log: &Log, count: u64) {
    let deadline = Instant::now() + NOTICE_WAIT_MAX;
    while log.stats().spares_filled < count {
        assert!(Instant::now() < deadline, "the preallocator made no spare");
        glommio::timer::sleep(Duration::from_millis(2)).await;
    }
}

// ----- a real full disk: a loop-mounted ext4 -------------------------------------------------

/// A small ext4 image mounted on a loop device; unmounted (and its loop device released)
/// when dropped, even when the test fails.
struct LoopDisk {
    mount: PathBuf,
    _root: tempfile::TempDir,
}

impl LoopDisk {
    /// Mounts a fresh ext4 of `size_mib` MiB, or says why it cannot.
    fn mount(size_mib: u64) -> Result<LoopDisk, String> {
        if !rustix::process::geteuid().is_root() {
            return Err("not root (mount needs it)".into());
        }
        if Command::new("mkfs.ext4").arg("-V").output().is_err() {
            return Err("mkfs.ext4 not found (install e2fsprogs)".into());
        }
        let root = tempdir();
        let image = root.path().join("disk.img");
        let mount = root.path().join("mnt");
        std::fs::create_dir(&mount).map_err(|e| e.to_string())?;
        let file = std::fs::File::create(&image).map_err(|e| e.to_string())?;
        file.set_len(size_mib << 20).map_err(|e| e.to_string())?;
        drop(file);
        run_command("mkfs.ext4", &["-q", "-F", path_str(&image)])?;
        run_command("mount", &["-o", "loop", path_str(&image), path_str(&mount)])?;
        Ok(LoopDisk { mount, _root: root })
    }

    fn free_bytes(&self) -> u64 {
        let fs = rustix::fs::statvfs(&self.mount).expect("statvfs");
        fs.f_bavail * fs.f_frsize
    }
}

impl Drop for LoopDisk {
    fn drop(&mut self) {
        // `mount -o loop` sets autoclear: the loop device goes with the last unmount.
        if run_command("umount", &[path_str(&self.mount)]).is_err() {
            let _ = run_command("umount", &["-l", path_str(&self.mount)]);
        }
    }
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("utf-8 temp path")
}

fn run_command(program: &str, args: &[&str]) -> Result<(), String> {
    let out = Command::new(program).args(args).output().map_err(|e| format!("{program}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{program} {args:?}: {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(())
}

/// Writes `bytes` of real data into `path` (synced), so that the space is really allocated.
fn write_ballast(path: &Path, bytes: usize) {
    use std::io::Write;
    let mut f = std::fs::File::create(path).unwrap();
    f.write_all(&vec![0xa5; bytes]).unwrap();
    f.sync_all().unwrap();
}

/// Writes 4 KiB blocks into `path` until the disk refuses one (ENOSPC); returns the bytes
/// written.
fn top_up(path: &Path) -> u64 {
    use std::io::Write;
    let mut f = std::fs::File::create(path).unwrap();
    let block = [0x5au8; 4096];
    let mut written = 0u64;
    // Bound: the disk is 64 MiB.
    for _ in 0..(64 << 20) / 4096 {
        match f.write_all(&block).and_then(|()| f.sync_data()) {
            Ok(()) => written += 4096,
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => return written,
            Err(e) => panic!("topping up the disk: {e}"),
        }
    }
    panic!("a 64 MiB disk took more than 64 MiB");
}

#[test]
fn a_real_full_disk_answers_storage_full_serves_reads_reopens_and_recovers_when_space_is_freed() {
    let disk = match LoopDisk::mount(64) {
        Ok(disk) => disk,
        Err(why) => {
            eprintln!("SKIPPED a_real_full_disk_...: cannot mount a loop ext4 here: {why}");
            return;
        }
    };
    let ballast = disk.mount.join("ballast");
    write_ballast(&ballast, 8 << 20);
    let path = disk.mount.join("log");
    let config = LogConfig { recycle_segments: false, ..small_config() };
    let free_at_start = disk.free_bytes();
    let mount = disk.mount.clone();
    let report = run(move || async move {
        let (log, _) = Log::open(&path, config.clone()).await.unwrap();
        let hard_state = HardStateStore::open(&path).await.unwrap();
        hard_state.store(Term(1), Some(NodeId(1))).await.unwrap();
        // Fill the disk: 30 KB batches, durability awaited every 16, until StorageFull.
        let mut accepted: Vec<Appended> = Vec::new();
        let mut n = 0u32;
        let refused = loop {
            match log.append(request(1, 1, 30_000, fill_of(n))) {
                Ok(a) => {
                    accepted.push(a);
                    n += 1;
                }
                Err(AppendError::Backpressure { .. }) => {
                    glommio::timer::sleep(Duration::from_millis(5)).await;
                    continue;
                }
                Err(e) => break e,
            }
            assert!(n < 10_000, "a 64 MiB disk holds fewer than 10,000 batches of 30 KB");
            if n % 16 == 0 {
                let last = accepted.len() - 1;
                let _ = futures_lite::future::or(
                    async {
                        let _ = log.wait_durable(accepted[last].index).await;
                    },
                    glommio::timer::sleep(Duration::from_millis(200)),
                )
                .await;
            }
        };
        assert!(matches!(refused, AppendError::StorageFull { .. }), "{refused:?}");
        assert!(log.failure().is_none(), "ENOSPC latched the log");
        let full_at = n;
        // Reads keep working on the full disk.
        let durable = log.durable_index();
        let read = all_values(&log).await;
        assert_eq!(read.len() as u64, durable.0);
        for (i, value) in read.iter().enumerate() {
            assert_eq!(value, &vec![fill_of(i as u32); 30_000], "record {i}");
        }
        // Votes keep working: the hard state is written in place.
        hard_state.store(Term(2), None).await.unwrap();
        // Close while full: batches waiting for a roll were never durable, so never acked.
        match log.close().await {
            Ok(()) | Err(LogError::StorageFull { .. }) => {}
            Err(e) => panic!("close of a full log: {e}"),
        }
        let mut acked = 0u32;
        for a in accepted {
            match a.durable.await {
                Ok(()) => {
                    assert_eq!(a.index.0, u64::from(acked) + 1, "acks come in order");
                    acked += 1;
                }
                Err(LogError::StorageFull { .. }) => {}
                Err(e) => panic!("an accepted batch failed: {e}"),
            }
        }
        drop(hard_state);
        // Take the last free blocks too (a spare's 1 MiB write may leave some): not one
        // block is left for the open's O_DIRECT probe file.
        let topped = top_up(&mount.join("top-up"));

        // The log reopens on the full disk (its files exist) and serves reads.
        let (log, report) = Log::open(&path, config.clone()).await.expect("open on a full disk");
        let hard_state = HardStateStore::open(&path).await.expect("hard state on a full disk");
        assert_eq!(hard_state.load().await.unwrap().term, Term(2));
        let reopened = all_values(&log).await;
        assert!(reopened.len() as u32 >= acked, "an acknowledged record was lost");
        for (i, value) in reopened.iter().enumerate() {
            assert_eq!(value, &vec![fill_of(i as u32); 30_000], "record {i} after reopen");
        }
        let mut next = reopened.len() as u32;
        wait_storage_full(&log).await;
        assert!(matches!(
            log.append(request(1, 1, 30_000, fill_of(next))),
            Err(AppendError::StorageFull { .. })
        ));
        // Space comes back (the operator removed a file): the log resumes by itself.
        std::fs::remove_file(mount.join("ballast")).unwrap();
        std::fs::remove_file(mount.join("top-up")).unwrap();
        wait_space(&log).await;
        for _ in 0..40 {
            log.append(request(1, 1, 30_000, fill_of(next))).unwrap().durable.await.unwrap();
            next += 1;
        }
        log.close().await.unwrap();
        let (log, _) = Log::open(&path, config).await.unwrap();
        let last = all_values(&log).await;
        assert_eq!(last.len() as u32, next);
        for (i, value) in last.iter().enumerate() {
            assert_eq!(value, &vec![fill_of(i as u32); 30_000], "record {i} at the end");
        }
        log.close().await.unwrap();
        format!(
            "full after {full_at} batches ({acked} acked), {topped} bytes topped up, reopened \
             with {} records (recovery: {report:?}), {next} records at the end",
            reopened.len()
        )
    });
    eprintln!("{report}; free at start {free_at_start} bytes, at the end {}", disk.free_bytes());
}
