//! The log's behaviour through its public API on a real disk (O_DIRECT, fdatasync).

mod common;

use std::rc::Rc;

use bytes::Bytes;
use common::{request, run, small_config, tempdir, values};
use ringlog_engine::batch::BATCH_HEADER_SIZE;
use ringlog_engine::limits::FETCH_CONTROL_PREFIX_BYTES_MAX;
use ringlog_engine::{
    decode_batch, AppendError, AppendRequest, FetchError, HardState, HardStateStore, Log,
    LogConfig, LogError, LogIndex, NodeId, Offset, OpenError, ReadBound, Term, TruncateError,
    CONTROL_MEMBERSHIP, CONTROL_NOOP,
};

#[test]
fn appended_batches_are_durable_and_read_back_after_reopen() {
    let dir = tempdir();
    let path = dir.path().to_path_buf();
    run(move || async move {
        let (log, report) = Log::open(&path, small_config()).await.unwrap();
        assert_eq!(report.segments, 0);
        let mut expected = Vec::new();
        for i in 0..50u32 {
            let appended = log.append(request(1, 3, 100 + i as usize, i as u8)).unwrap();
            assert_eq!(appended.index, LogIndex(u64::from(i) + 1));
            assert_eq!(appended.base_offset, Offset(u64::from(i) * 3));
            appended.durable.await.unwrap();
            for _ in 0..3 {
                expected.push(vec![i as u8; 100 + i as usize]);
            }
        }
        assert_eq!(log.durable_index(), LogIndex(50));
        assert_eq!(log.durable_offset(), Offset(150));
        let fetched = log.fetch(Offset(0), 1 << 20, ReadBound::Durable).await.unwrap();
        assert_eq!(values(&fetched), expected);
        log.close().await.unwrap();

        let (log, report) = Log::open(&path, small_config()).await.unwrap();
        assert_eq!(report.torn_bytes_dropped, 0);
        assert_eq!(log.last_index(), LogIndex(50));
        assert_eq!(log.next_offset(), Offset(150));
        let fetched = log.fetch(Offset(0), 1 << 20, ReadBound::Durable).await.unwrap();
        assert_eq!(values(&fetched), expected);
        let from_middle = log.fetch(Offset(100), 1, ReadBound::Durable).await.unwrap();
        assert_eq!(from_middle.len(), 1, "max_bytes smaller than a batch still returns one");
        let header = *decode_batch(&from_middle[0], 1 << 20).unwrap().header();
        assert_eq!(header.base_offset(), Offset(99), "the batch holding offset 100");
        log.close().await.unwrap();
    });
}

#[test]
fn concurrent_appenders_share_fdatasyncs() {
    let dir = tempdir();
    let path = dir.path().to_path_buf();
    run(move || async move {
        let (log, _) = Log::open(&path, small_config()).await.unwrap();
        let log = Rc::new(log);
        let appenders = 64;
        let per_appender = 20;
        let mut tasks = Vec::new();
        for t in 0..appenders {
            let log = log.clone();
            tasks.push(glommio::spawn_local(async move {
                for _ in 0..per_appender {
                    let appended = log.append(request(1, 1, 200, t as u8)).unwrap();
                    appended.durable.await.unwrap();
                }
            }));
        }
        for task in tasks {
            task.await;
        }
        let stats = log.stats();
        let appends = (appenders * per_appender) as u64;
        assert_eq!(stats.batches_flushed, appends);
        println!("{appends} appends, {} fdatasyncs, {} flushes", stats.fdatasyncs, stats.flushes);
        assert!(
            stats.fdatasyncs * 4 <= appends,
            "group commit: {} fdatasyncs for {appends} appends",
            stats.fdatasyncs
        );
        Rc::try_unwrap(log).unwrap().close().await.unwrap();
    });
}

#[test]
fn flush_stats_histograms_count_every_fdatasync_and_appended_batch() {
    let dir = tempdir();
    let path = dir.path().to_path_buf();
    run(move || async move {
        let (log, _) = Log::open(&path, small_config()).await.unwrap();
        let mut sizes = 0u64;
        for (count, size) in [(1u32, 10usize), (1, 200), (3, 1000), (2, 30_000)] {
            let appended = log.append(request(1, count, size, 7)).unwrap();
            sizes += appended.batch.len() as u64;
            appended.durable.await.unwrap();
        }
        let stats = log.stats();
        let latency = stats.fdatasync_latency_us;
        assert_eq!(latency.count(), stats.fdatasyncs, "one observation per flush fdatasync");
        assert!(latency.sum() > 0, "an fdatasync takes some time");
        let buckets = latency.cumulative_buckets();
        assert_eq!(buckets.last(), Some(&(u64::MAX, stats.fdatasyncs)));
        assert!(buckets.windows(2).all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1));
        let batch_sizes = stats.batch_size_bytes;
        assert_eq!(batch_sizes.count(), 4);
        assert_eq!(batch_sizes.sum(), sizes);
        // 10 B + header <= 128; 200 B + 4 B length + header <= 512; 3 KiB <= 4 KiB; 60 KiB <= 64 KiB.
        let at =
            |bound: u64| batch_sizes.cumulative_buckets().iter().find(|b| b.0 == bound).unwrap().1;
        assert_eq!((at(128), at(512), at(4 << 10), at(64 << 10)), (1, 2, 3, 4));
        log.close().await.unwrap();
    });
}

#[test]
fn segments_roll_and_reads_cross_segment_boundaries() {
    let dir = tempdir();
    let path = dir.path().to_path_buf();
    run(move || async move {
        let (log, _) = Log::open(&path, small_config()).await.unwrap();
        let mut last = None;
        for i in 0..800u32 {
            last = Some(log.append(request(1 + u64::from(i / 200), 4, 1000, i as u8)).unwrap());
            if i % 100 == 99 {
                log.sync().await.unwrap();
            }
        }
        last.unwrap().durable.await.unwrap();
        assert!(log.segment_count() >= 3, "3.2 MB over 1 MiB segments rolls");
        assert!(log.stats().segments_rolled >= 3);
        let mut offset = Offset(0);
        let mut seen = 0;
        while offset < log.next_offset() {
            let batches = log.fetch(offset, 50_000, ReadBound::Durable).await.unwrap();
            assert!(!batches.is_empty());
            for b in &batches {
                let header = *decode_batch(b, 1 << 20).unwrap().header();
                assert_eq!(header.base_offset(), offset);
                assert_eq!(header.index(), LogIndex(seen + 1));
                offset = header.next_offset();
                seen += 1;
            }
        }
        assert_eq!(seen, 800);
        assert_eq!(log.term_at(LogIndex(0)), Some(Term(0)));
        assert_eq!(log.term_at(LogIndex(200)), Some(Term(1)));
        assert_eq!(log.term_at(LogIndex(201)), Some(Term(2)));
        assert_eq!(log.term_at(LogIndex(800)), Some(Term(4)));
        assert_eq!(log.term_at(LogIndex(801)), None);
        let entries = log.read_entries(LogIndex(150), LogIndex(160), 1 << 20).await.unwrap();
        assert_eq!(entries.len(), 11);
        log.close().await.unwrap();

        // Reopen: sealed segments come from their index files, terms survive.
        let (log, report) = Log::open(&path, small_config()).await.unwrap();
        assert!(report.sealed_trusted >= 3, "{report:?}");
        assert_eq!(report.sealed_rescanned, 0);
        assert_eq!(log.term_at(LogIndex(201)), Some(Term(2)));
        assert_eq!(log.term_at(LogIndex(601)), Some(Term(4)));
        assert_eq!(log.last_term(), Term(4));
        let entries = log.read_entries(LogIndex(1), LogIndex(800), 1 << 30).await.unwrap();
        assert_eq!(entries.len(), 800);
        log.close().await.unwrap();
    });
}

#[test]
fn a_missing_index_file_is_rebuilt_by_a_scan() {
    let dir = tempdir();
    let path = dir.path().to_path_buf();
    run(move || async move {
        let (log, _) = Log::open(&path, small_config()).await.unwrap();
        for i in 0..300u32 {
            let _ = log.append(request(1, 4, 1000, i as u8)).unwrap();
        }
        log.close().await.unwrap();
        let index = std::fs::read_dir(&path)
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.extension().is_some_and(|e| e == "idx"))
            .expect("a sealed segment has an index");
        std::fs::remove_file(&index).unwrap();
        let (log, report) = Log::open(&path, small_config()).await.unwrap();
        assert_eq!(report.sealed_rescanned, 1, "{report:?}");
        assert!(index.exists(), "the rebuilt index is persisted again");
        assert_eq!(log.last_index(), LogIndex(300));
        assert_eq!(log.read_entries(LogIndex(1), LogIndex(300), 1 << 30).await.unwrap().len(), 300);
        log.close().await.unwrap();
    });
}

#[test]
fn a_second_open_of_the_same_dir_is_refused() {
    let dir = tempdir();
    let path = dir.path().to_path_buf();
    run(move || async move {
        let (log, _) = Log::open(&path, small_config()).await.unwrap();
        match Log::open(&path, small_config()).await {
            Err(OpenError::Locked { path: locked }) => assert_eq!(locked, path),
            other => panic!("expected Locked, got {other:?}"),
        }
        log.close().await.unwrap();
        let (log, _) = Log::open(&path, small_config()).await.expect("released by close");
        log.close().await.unwrap();
    });
}

/// A `flock` belongs to the open file description, which a forked child shares until it
/// execs or exits: a log closed while another thread of the process is between `fork` and
/// `exec` (`Command` in another test: CI saw `Locked` on a reopen right after `close`) is still
/// locked for that moment. `Log::open` waits such a holder out (up to
/// `LOCK_CONTENDED_WAIT_MAX`) instead of refusing at once.
#[test]
fn a_reopen_right_after_close_waits_out_a_forked_child_that_still_shares_the_lock() {
    let dir = tempdir();
    let path = dir.path().to_path_buf();
    run(move || async move {
        let (log, _) = Log::open(&path, small_config()).await.unwrap();
        // SAFETY: the child calls only async-signal-safe functions (nanosleep, _exit).
        let child = unsafe { libc::fork() };
        if child == 0 {
            let pause = libc::timespec { tv_sec: 0, tv_nsec: 300_000_000 };
            // SAFETY: in the forked child: nanosleep and _exit are async-signal-safe.
            unsafe {
                libc::nanosleep(&pause, std::ptr::null_mut());
                libc::_exit(0);
            }
        }
        assert!(child > 0, "fork failed");
        log.close().await.unwrap();
        let reopened = Log::open(&path, small_config()).await;
        let mut status = 0;
        // SAFETY: waits for the child forked above.
        unsafe { libc::waitpid(child, &mut status, 0) };
        let (log, _) = reopened.expect("reopened once the forked child let go of the lock");
        log.close().await.unwrap();
    });
}

#[test]
fn a_data_dir_on_tmpfs_is_refused_with_a_clear_error() {
    if !std::path::Path::new("/dev/shm").exists() {
        return;
    }
    let dir = tempfile::tempdir_in("/dev/shm").unwrap();
    let path = dir.path().to_path_buf();
    run(move || async move {
        match Log::open(&path, small_config()).await {
            Err(e @ OpenError::DirectIoUnsupported { .. }) => {
                let text = e.to_string();
                assert!(text.contains(path.to_str().unwrap()), "{text}");
                assert!(text.contains("O_DIRECT"), "{text}");
            }
            other => panic!("expected DirectIoUnsupported, got {other:?}"),
        }
    });
}

#[test]
fn bad_requests_are_typed_errors_not_panics() {
    let dir = tempdir();
    let path = dir.path().to_path_buf();
    run(move || async move {
        let (log, _) = Log::open(&path, small_config()).await.unwrap();
        let too_big =
            AppendRequest { records: Bytes::from(vec![0u8; 70_000]), ..request(1, 1, 1, 0) };
        assert!(matches!(log.append(too_big), Err(AppendError::BatchTooLarge { .. })));
        let lying = AppendRequest { record_count: 2, ..request(1, 1, 10, 0) };
        assert!(matches!(log.append(lying), Err(AppendError::Malformed(_))));
        let _ = log.append(request(5, 1, 10, 0)).unwrap();
        assert!(matches!(
            log.append(request(4, 1, 10, 0)),
            Err(AppendError::TermRegression { .. })
        ));
        assert!(matches!(
            log.fetch(Offset(999), 100, ReadBound::Durable).await,
            Err(FetchError::OffsetOutOfRange { .. })
        ));
        assert!(matches!(
            log.read_entries(LogIndex(0), LogIndex(3), 100).await,
            Err(FetchError::IndexOutOfRange { .. })
        ));
        assert!(matches!(
            log.append_stamped(Bytes::from_static(b"garbage that is not a batch at all.....")),
            Err(AppendError::Malformed(_))
        ));
        log.sync().await.unwrap();
        log.close().await.unwrap();
        // Reopened, the batch is read from disk (empty tail cache): the largest `max_bytes`
        // is a valid request, not an overflow.
        let (log, _) = Log::open(&path, small_config()).await.unwrap();
        let fetched = log.fetch(Offset(0), usize::MAX, ReadBound::Durable).await.unwrap();
        assert_eq!(fetched.len(), 1);
        let entries = log.read_entries(LogIndex(1), LogIndex(2), usize::MAX).await.unwrap();
        assert_eq!(entries.len(), 1);
        log.close().await.unwrap();
    });
}

#[test]
fn appends_past_queued_bytes_max_get_backpressure() {
    let dir = tempdir();
    let path = dir.path().to_path_buf();
    run(move || async move {
        let config = LogConfig { queued_bytes_max: 256 << 10, ..small_config() };
        let (log, _) = Log::open(&path, config).await.unwrap();
        let mut accepted = Vec::new();
        let refused = loop {
            match log.append(request(1, 1, 30_000, 1)) {
                Ok(a) => accepted.push(a),
                Err(e) => break e,
            }
            assert!(accepted.len() < 100, "queue must be bounded");
        };
        assert!(matches!(refused, AppendError::Backpressure { .. }), "{refused:?}");
        assert!(log.queued_bytes() <= 256 << 10);
        for a in accepted {
            a.durable.await.unwrap();
        }
        log.append(request(1, 1, 30_000, 1)).expect("room again once durable");
        log.close().await.unwrap();
    });
}

/// Waits until the preallocator has refilled its spare, so an armed fault hits the flush.
async fn wait_for_spare(log: &Log) {
    for _ in 0..2_000 {
        if log.stats().spares_filled >= 2 {
            return;
        }
        glommio::timer::sleep(std::time::Duration::from_millis(5)).await;
    }
    panic!("the preallocator did not refill the spare in 10 s");
}

#[test]
fn a_failed_fdatasync_latches_the_log() {
    let dir = tempdir();
    let path = dir.path().to_path_buf();
    run(move || async move {
        let (log, _) = Log::open(&path, small_config()).await.unwrap();
        log.append(request(1, 1, 100, 1)).unwrap().durable.await.unwrap();
        wait_for_spare(&log).await;
        log.fault_injector().fail_syncs(1);
        let appended = log.append(request(1, 1, 100, 2)).unwrap();
        assert!(matches!(appended.durable.await, Err(LogError::Failed { .. })));
        assert!(matches!(log.append(request(1, 1, 100, 3)), Err(AppendError::Failed { .. })));
        assert!(matches!(
            log.fetch(Offset(0), 100, ReadBound::Durable).await,
            Err(FetchError::Failed { .. })
        ));
        assert!(matches!(log.sync().await, Err(LogError::Failed { .. })));
        assert!(matches!(
            log.truncate_suffix(LogIndex(1)).await,
            Err(TruncateError::Failed { .. })
        ));
        assert!(log.failure().is_some());
        let stats = log.stats();
        assert_eq!(stats.fdatasyncs, 1, "the failed fdatasync is never retried");
        drop(log);
    });
}

#[test]
fn a_failed_write_latches_the_log() {
    let dir = tempdir();
    let path = dir.path().to_path_buf();
    run(move || async move {
        let (log, _) = Log::open(&path, small_config()).await.unwrap();
        log.append(request(1, 1, 100, 1)).unwrap().durable.await.unwrap();
        wait_for_spare(&log).await;
        log.fault_injector().fail_writes(1);
        let appended = log.append(request(1, 1, 100, 2)).unwrap();
        assert!(matches!(appended.durable.await, Err(LogError::Failed { .. })));
        assert!(matches!(log.append(request(1, 1, 100, 3)), Err(AppendError::Failed { .. })));
        drop(log);
    });
}

#[test]
fn truncating_a_durable_suffix_survives_reopen() {
    let dir = tempdir();
    let path = dir.path().to_path_buf();
    run(move || async move {
        let (log, _) = Log::open(&path, small_config()).await.unwrap();
        for i in 0..300u32 {
            let _ = log.append(request(1 + u64::from(i / 150), 2, 2000, i as u8)).unwrap();
        }
        log.sync().await.unwrap();
        let segments_before = log.segment_count();
        assert!(segments_before >= 2);
        let cut = log.read_entries(LogIndex(120), LogIndex(120), 1).await.unwrap();
        let cut_header = *decode_batch(&cut[0], 1 << 20).unwrap().header();
        log.truncate_suffix(LogIndex(120)).await.unwrap();
        assert_eq!(log.last_index(), LogIndex(119));
        assert_eq!(log.next_offset(), cut_header.base_offset());
        assert_eq!(log.durable_index(), LogIndex(119));
        assert_eq!(log.last_term(), Term(1));
        // New entries of a new term continue from the cut.
        let appended = log.append(request(3, 1, 10, 0xee)).unwrap();
        assert_eq!(appended.index, LogIndex(120));
        appended.durable.await.unwrap();
        let crc = log.last_crc();
        log.close().await.unwrap();

        let (log, _) = Log::open(&path, small_config()).await.unwrap();
        assert_eq!(log.last_index(), LogIndex(120));
        assert_eq!(log.term_at(LogIndex(120)), Some(Term(3)));
        assert_eq!(log.term_at(LogIndex(119)), Some(Term(1)));
        assert_eq!(log.last_crc(), crc);
        let all = log.read_entries(LogIndex(1), LogIndex(120), 1 << 30).await.unwrap();
        assert_eq!(all.len(), 120);
        assert_eq!(values(&all[119..]), vec![vec![0xee; 10]]);
        log.close().await.unwrap();
    });
}

#[test]
fn truncating_queued_batches_resolves_them_truncated() {
    let dir = tempdir();
    let path = dir.path().to_path_buf();
    run(move || async move {
        let (log, _) = Log::open(&path, small_config()).await.unwrap();
        log.append(request(1, 1, 10, 1)).unwrap().durable.await.unwrap();
        // Appends made synchronously are queued; truncating before the flusher runs drops them.
        let a = log.append(request(1, 1, 10, 2)).unwrap();
        let b = log.append(request(1, 1, 10, 3)).unwrap();
        let truncated = log.truncate_suffix(LogIndex(3));
        let (t, ra, rb) = futures_join(truncated, a.durable, b.durable).await;
        t.unwrap();
        ra.unwrap();
        assert!(matches!(rb, Err(LogError::Truncated { .. }) | Ok(())));
        assert_eq!(log.last_index(), LogIndex(2));
        log.close().await.unwrap();
    });
}

async fn futures_join<A, B, C>(a: A, b: B, c: C) -> (A::Output, B::Output, C::Output)
where
    A: std::future::Future,
    B: std::future::Future,
    C: std::future::Future,
{
    let a = a.await;
    let b = b.await;
    let c = c.await;
    (a, b, c)
}

#[test]
fn reset_restarts_the_log_at_the_given_index_and_offset() {
    let dir = tempdir();
    let path = dir.path().to_path_buf();
    run(move || async move {
        let (log, _) = Log::open(&path, small_config()).await.unwrap();
        for i in 0..10u32 {
            let _ = log.append(request(1, 1, 10, i as u8)).unwrap();
        }
        log.sync().await.unwrap();
        log.reset(LogIndex(1000), Offset(5000), Term(7)).await.unwrap();
        assert_eq!(log.start_index(), LogIndex(1000));
        assert_eq!(log.last_index(), LogIndex(999));
        assert_eq!(log.last_term(), Term(7));
        assert_eq!(log.term_at(LogIndex(999)), Some(Term(7)));
        assert_eq!(log.next_offset(), Offset(5000));
        log.close().await.unwrap();

        let (log, _) = Log::open(&path, small_config()).await.unwrap();
        assert_eq!(log.start_index(), LogIndex(1000));
        assert_eq!(log.start_offset(), Offset(5000));
        assert_eq!(log.term_at(LogIndex(999)), Some(Term(7)));
        // A follower's first batch after the reset starts the chain with the leader's crc.
        let leader_dir = tempdir();
        let leader_path = leader_dir.path().to_path_buf();
        let (leader, _) = Log::open(&leader_path, small_config()).await.unwrap();
        leader.reset(LogIndex(1000), Offset(5000), Term(7)).await.unwrap();
        let _ = leader.append(request(7, 1, 10, 1)).unwrap();
        let a = leader.append(request(8, 2, 10, 2)).unwrap();
        let first = leader.read_entries(LogIndex(1000), LogIndex(1000), 1).await.unwrap();
        let _ = log.append_stamped(first[0].clone()).unwrap();
        let appended = log.append_stamped(a.batch.clone()).unwrap();
        assert_eq!(appended.batch, a.batch, "the follower stores the leader's bytes unchanged");
        appended.durable.await.unwrap();
        assert_eq!(log.last_crc(), leader.last_crc());
        // A batch that skips an index is refused.
        let c = leader.append(request(8, 1, 10, 3)).unwrap();
        let _ = leader.append(request(8, 1, 10, 4)).unwrap();
        let d = leader.read_entries(LogIndex(1003), LogIndex(1003), 1).await.unwrap();
        assert!(matches!(log.append_stamped(d[0].clone()), Err(AppendError::NotContiguous { .. })));
        log.append_stamped(c.batch).unwrap();
        leader.close().await.unwrap();
        log.close().await.unwrap();
    });
}

#[test]
fn retention_deletes_old_sealed_segments_below_the_bound() {
    let dir = tempdir();
    let path = dir.path().to_path_buf();
    run(move || async move {
        let config = LogConfig { retention_bytes_max: Some(2 << 20), ..small_config() };
        let (log, _) = Log::open(&path, config.clone()).await.unwrap();
        for i in 0..1000u32 {
            let _ = log.append(request(1, 2, 2000, i as u8)).unwrap();
        }
        log.sync().await.unwrap();
        let segments = log.segment_count();
        assert!(segments >= 4);
        let none = log.apply_retention(0, LogIndex(1)).await.unwrap();
        assert_eq!(none.segments_deleted, 0, "nothing below the bound");
        let report = log.apply_retention(0, LogIndex(1001)).await.unwrap();
        assert!(report.segments_deleted >= 1);
        assert_eq!(log.segment_count(), segments - report.segments_deleted);
        assert!(log.segment_count() >= 2, "keeps up to the byte bound and the active segment");
        assert_eq!(log.start_offset(), report.start_offset);
        assert!(log.start_offset() > Offset(0));
        assert!(matches!(
            log.fetch(Offset(0), 100, ReadBound::Durable).await,
            Err(FetchError::OffsetOutOfRange { .. })
        ));
        let first = log.fetch(log.start_offset(), 100, ReadBound::Durable).await.unwrap();
        let header = *decode_batch(&first[0], 1 << 20).unwrap().header();
        assert_eq!(header.base_offset(), report.start_offset);
        assert_eq!(log.term_at(LogIndex(report.start_index.0 - 1)), Some(Term(1)));
        log.close().await.unwrap();
        let (log, _) = Log::open(&path, config).await.unwrap();
        assert_eq!(log.start_offset(), report.start_offset);
        assert_eq!(log.last_index(), LogIndex(1000));
        log.close().await.unwrap();
    });
}

#[test]
fn retention_by_age_deletes_segments_older_than_the_limit() {
    let dir = tempdir();
    let path = dir.path().to_path_buf();
    run(move || async move {
        let config = LogConfig {
            retention_age_max: Some(std::time::Duration::from_secs(60)),
            ..small_config()
        };
        let (log, _) = Log::open(&path, config).await.unwrap();
        for i in 0..600u32 {
            let _ = log.append(request(1, 2, 2000, i as u8)).unwrap();
        }
        log.sync().await.unwrap();
        let segments = log.segment_count();
        // The batches carry timestamp 1_700_000_000_000: 30 s later nothing is old enough.
        let young = log.apply_retention(1_700_000_030_000, LogIndex(u64::MAX)).await.unwrap();
        assert_eq!(young.segments_deleted, 0);
        let old = log.apply_retention(1_700_000_100_000, LogIndex(u64::MAX)).await.unwrap();
        assert_eq!(old.segments_deleted, segments - 1, "all but the active segment");
        log.close().await.unwrap();
    });
}

#[test]
fn control_batches_take_an_index_but_no_offset() {
    let dir = tempdir();
    let path = dir.path().to_path_buf();
    run(move || async move {
        let (log, _) = Log::open(&path, small_config()).await.unwrap();
        let _ = log.append(request(1, 2, 10, 1)).unwrap();
        let membership = AppendRequest::control(
            Term(1),
            CONTROL_MEMBERSHIP,
            Bytes::from_static(b"nodes=1,2,3"),
            0,
        );
        let control = log.append(membership).unwrap();
        assert_eq!(control.index, LogIndex(2));
        assert_eq!(control.base_offset, Offset(2));
        let _ = log.append(request(1, 2, 10, 2)).unwrap();
        log.sync().await.unwrap();
        assert_eq!(log.next_offset(), Offset(4));
        assert_eq!(log.membership_indices(), vec![LogIndex(2)]);
        let at_two = log.fetch(Offset(2), 1 << 20, ReadBound::Durable).await.unwrap();
        assert_eq!(at_two.len(), 2, "the control batch at offset 2, then the data batch");
        log.close().await.unwrap();
        let (log, _) = Log::open(&path, small_config()).await.unwrap();
        assert_eq!(log.membership_indices(), vec![LogIndex(2)]);
        log.close().await.unwrap();
    });
}

/// Reads the whole log from offset 0 with `max_bytes`, fetch after fetch from the end of the
/// last one, in a bounded loop: every reply must move the offset (its last batch holds
/// records) and the log's end reads as empty. Returns the values and the replies' sizes.
async fn consume_all(log: &Log, max_bytes: usize) -> (Vec<Vec<u8>>, Vec<usize>) {
    let (mut offset, mut got, mut replies) = (Offset(0), Vec::new(), Vec::new());
    for _ in 0..64 {
        let batches = log.fetch(offset, max_bytes, ReadBound::Durable).await.unwrap();
        let Some(last) = batches.last() else { return (got, replies) };
        let last = decode_batch(last, 1 << 20).unwrap();
        assert!(
            last.header().record_count() > 0,
            "a fetch at {offset:?} with max_bytes {max_bytes} ends in a control batch"
        );
        let next = last.header().next_offset();
        assert!(next > offset, "a fetch at {offset:?} with max_bytes {max_bytes} made no progress");
        for batch in &batches {
            let view = decode_batch(batch, 1 << 20).unwrap();
            let base = view.header().base_offset().0;
            for (i, value) in view.records().enumerate() {
                if base + i as u64 >= offset.0 {
                    got.push(value.to_vec());
                }
            }
        }
        replies.push(batches.len());
        offset = next;
    }
    panic!("reading the log with max_bytes {max_bytes} did not end in 64 fetches");
}

#[test]
fn fetches_with_any_max_bytes_step_over_control_batches_and_end_empty_at_trailing_ones() {
    let dir = tempdir();
    let path = dir.path().to_path_buf();
    run(move || async move {
        let noop = || AppendRequest::control(Term(1), CONTROL_NOOP, Bytes::new(), 0);
        let membership =
            AppendRequest::control(Term(1), CONTROL_MEMBERSHIP, Bytes::from_static(b"1,2,3"), 0);
        let (log, _) = Log::open(&path, small_config()).await.unwrap();
        for (i, request) in [
            noop(),
            request(1, 2, 10, 1),
            noop(),
            noop(),
            request(1, 2, 10, 2),
            membership,
            request(1, 1, 10, 3),
            noop(),
            noop(),
        ]
        .into_iter()
        .enumerate()
        {
            log.append(request).unwrap_or_else(|e| panic!("append {i}: {e}"));
        }
        log.sync().await.unwrap();
        // From the tail cache, then (reopened: the cache starts empty) from the segment.
        check_fetches_over_control_batches(&log, false).await;
        log.close().await.unwrap();
        let (log, _) = Log::open(&path, small_config()).await.unwrap();
        check_fetches_over_control_batches(&log, true).await;
        log.close().await.unwrap();
    });
}

#[test]
fn control_batches_in_front_of_a_data_batch_are_returned_up_to_their_limit() {
    let dir = tempdir();
    let path = dir.path().to_path_buf();
    run(move || async move {
        let (log, _) = Log::open(&path, small_config()).await.unwrap();
        let noops = 2 * FETCH_CONTROL_PREFIX_BYTES_MAX / BATCH_HEADER_SIZE;
        for _ in 0..noops {
            log.append(AppendRequest::control(Term(1), CONTROL_NOOP, Bytes::new(), 0)).unwrap();
        }
        log.append(request(1, 1, 10, 7)).unwrap();
        log.sync().await.unwrap();
        let batches = log.fetch(Offset(0), 1, ReadBound::Durable).await.unwrap();
        let bytes: usize = batches[..batches.len() - 1].iter().map(Bytes::len).sum();
        assert!(batches.len() > 1, "no-ops come with the data batch");
        assert!(bytes <= FETCH_CONTROL_PREFIX_BYTES_MAX, "{bytes} bytes of control batches");
        assert_eq!(values(&batches), vec![vec![7u8; 10]], "the data batch last");
        log.close().await.unwrap();
    });
}

/// The log of `fetches_with_any_max_bytes_step_over_control_batches_...`: offsets 0-1 (after a
/// no-op), two no-ops, offsets 2-3, a membership batch, offset 4, two no-ops.
async fn check_fetches_over_control_batches(log: &Log, reopened: bool) {
    let expected: Vec<Vec<u8>> = [1u8, 1, 2, 2, 3].iter().map(|&f| vec![f; 10]).collect();
    for max_bytes in [0, 1, 64, 100, 1 << 20] {
        let (got, replies) = consume_all(log, max_bytes).await;
        assert_eq!(got, expected, "max_bytes {max_bytes}, reopened {reopened}");
        eprintln!("max_bytes {max_bytes}, reopened {reopened}: replies {replies:?}");
    }
    // Control batches that fit come with the data batch after them.
    let all = log.fetch(Offset(0), 1 << 20, ReadBound::Durable).await.unwrap();
    assert_eq!(all.len(), 7, "every batch but the trailing no-ops, reopened {reopened}");
    let one = log.fetch(Offset(2), 1, ReadBound::Durable).await.unwrap();
    assert_eq!(one.len(), 3, "the two no-ops in front of offset 2's data batch, then it");
    assert_eq!(values(&one), vec![vec![2u8; 10]; 2]);
    assert!(log.fetch(Offset(5), 1 << 20, ReadBound::Durable).await.unwrap().is_empty());
}

#[test]
fn reads_stop_at_the_bound_unless_asked_for_more() {
    let dir = tempdir();
    let path = dir.path().to_path_buf();
    run(move || async move {
        let (log, _) = Log::open(&path, small_config()).await.unwrap();
        for i in 0..5u32 {
            let _ = log.append(request(1, 1, 10, i as u8)).unwrap();
        }
        // Synchronously after append nothing is durable yet.
        let durable = log.fetch(Offset(0), 1 << 20, ReadBound::Durable).await.unwrap();
        assert!(durable.len() as u64 <= log.durable_index().0);
        let appended = log.fetch(Offset(0), 1 << 20, ReadBound::Appended).await.unwrap();
        assert_eq!(appended.len(), 5);
        let through = log.fetch(Offset(0), 1 << 20, ReadBound::Through(LogIndex(3))).await.unwrap();
        assert_eq!(through.len(), 3);
        log.close().await.unwrap();
    });
}

#[test]
fn hard_state_survives_reopen_and_a_torn_slot() {
    let dir = tempdir();
    let path = dir.path().to_path_buf();
    run(move || async move {
        let store = HardStateStore::open(&path).await.unwrap();
        assert_eq!(store.load().await.unwrap(), HardState::default());
        store.store(Term(3), Some(NodeId(2))).await.unwrap();
        store.store(Term(4), None).await.unwrap();
        drop(store);
        let store = HardStateStore::open(&path).await.unwrap();
        assert_eq!(store.load().await.unwrap(), HardState { term: Term(4), vote: None });
        drop(store);
        // Tear the newest slot (generation 2 lives in slot 0): the previous state survives.
        let file = path.join("hard_state");
        let mut bytes = std::fs::read(&file).unwrap();
        bytes[100] ^= 0xff;
        std::fs::write(&file, &bytes).unwrap();
        let store = HardStateStore::open(&path).await.unwrap();
        assert_eq!(store.load().await.unwrap(), HardState { term: Term(3), vote: Some(NodeId(2)) });
        // A torn newest slot and a flipped bit in it look alike: the caller is told.
        assert!(store.slot_damaged_at_open(), "a damaged slot must be reported");
        store.store(Term(5), Some(NodeId(1))).await.unwrap();
        assert_eq!(store.load().await.unwrap().term, Term(5));
        drop(store);
        // The store rewrote the damaged slot: both slots valid again.
        let store = HardStateStore::open(&path).await.unwrap();
        assert!(!store.slot_damaged_at_open());
        assert_eq!(store.load().await.unwrap(), HardState { term: Term(5), vote: Some(NodeId(1)) });
    });
}

#[test]
fn hard_state_open_fdatasyncs_what_it_loads() {
    // Issue 13 item 7: a store whose fdatasync failed or never ran is readable after a
    // restart; it must be durable before the replica acts on it.
    let dir = tempdir();
    let path = dir.path().to_path_buf();
    run(move || async move {
        let store = HardStateStore::open(&path).await.unwrap();
        store.store(Term(3), Some(NodeId(2))).await.unwrap();
        drop(store);
        let faults = std::sync::Arc::new(ringlog_engine::FaultInjector::default());
        let store = HardStateStore::open_with_faults(&path, faults.clone()).await.unwrap();
        assert_eq!(faults.file_syncs(), 1, "the loaded hard state was not fdatasynced");
        assert_eq!(store.load().await.unwrap(), HardState { term: Term(3), vote: Some(NodeId(2)) });
    });
}

#[test]
fn a_flush_never_exceeds_flush_bytes_max() {
    let dir = tempdir();
    let path = dir.path().to_path_buf();
    run(move || async move {
        let config = LogConfig { flush_bytes_max: 64 << 10, ..small_config() };
        let (log, _) = Log::open(&path, config).await.unwrap();
        let mut last = None;
        let mut bytes = 0u64;
        for i in 0..200u32 {
            let appended = log.append(request(1, 1, 8000, i as u8)).unwrap();
            bytes += appended.batch.len() as u64;
            last = Some(appended);
        }
        last.unwrap().durable.await.unwrap();
        let stats = log.stats();
        // 200 batches of ~8 KiB queued at once: at most 7 fit in one 64 KiB flush.
        assert!(stats.flushes >= bytes.div_ceil(64 << 10), "{stats:?}");
        assert_eq!(stats.fdatasyncs, stats.flushes, "one fdatasync per flush");
        assert!(stats.flushes < 200, "batches were coalesced: {stats:?}");
        log.close().await.unwrap();
    });
}

#[test]
fn appends_made_while_a_truncation_runs_are_truncated_too() {
    let dir = tempdir();
    let path = dir.path().to_path_buf();
    run(move || async move {
        let (log, _) = Log::open(&path, small_config()).await.unwrap();
        for i in 0..20u32 {
            let _ = log.append(request(1, 1, 100, i as u8)).unwrap();
        }
        log.sync().await.unwrap();
        let log = Rc::new(log);
        let racer = {
            let log = log.clone();
            glommio::spawn_local(async move {
                // Runs while truncate_suffix awaits its IO.
                log.append(request(1, 1, 100, 0xcc)).map(|a| (a.index, a.durable))
            })
        };
        let truncated = log.truncate_suffix(LogIndex(10));
        let (result, raced) = (truncated.await, racer.await);
        result.unwrap();
        assert_eq!(log.last_index(), LogIndex(9));
        if let Ok((index, durable)) = raced {
            // Appended before the truncation finished, it continued the old log.
            assert!(index > LogIndex(9));
            assert!(matches!(durable.await, Err(LogError::Truncated { .. }) | Ok(())));
        }
        let next = log.append(request(2, 1, 100, 0xdd)).unwrap();
        assert_eq!(next.index, LogIndex(10));
        next.durable.await.unwrap();
        let all = log.read_entries(LogIndex(1), LogIndex(10), 1 << 30).await.unwrap();
        assert_eq!(values(&all[9..]), vec![vec![0xdd; 100]]);
        Rc::try_unwrap(log).unwrap().close().await.unwrap();
        let (log, _) = Log::open(&path, small_config()).await.unwrap();
        assert_eq!(log.last_index(), LogIndex(10));
        assert_eq!(log.term_at(LogIndex(10)), Some(Term(2)));
        log.close().await.unwrap();
    });
}

#[test]
fn a_failed_hard_state_fdatasync_latches_the_store_and_keeps_the_previous_state() {
    let dir = tempdir();
    let path = dir.path().to_path_buf();
    run(move || async move {
        let faults = std::sync::Arc::new(ringlog_engine::FaultInjector::default());
        let store = HardStateStore::open_with_faults(&path, faults.clone()).await.unwrap();
        store.store(Term(2), Some(NodeId(1))).await.unwrap();
        faults.fail_syncs(1);
        assert!(matches!(
            store.store(Term(3), None).await,
            Err(ringlog_engine::HardStateError::Failed { .. })
        ));
        assert!(matches!(
            store.store(Term(4), None).await,
            Err(ringlog_engine::HardStateError::Failed { .. })
        ));
        drop(store);
        let store = HardStateStore::open(&path).await.unwrap();
        let loaded = store.load().await.unwrap();
        // The failed store's write may or may not have landed; never a torn mix, never term 4.
        assert!(
            loaded == HardState { term: Term(2), vote: Some(NodeId(1)) }
                || loaded == HardState { term: Term(3), vote: None },
            "{loaded:?}"
        );
    });
}

#[test]
fn segments_keep_their_size_when_the_configured_size_changes() {
    let dir = tempdir();
    let path = dir.path().to_path_buf();
    run(move || async move {
        let (log, _) = Log::open(&path, small_config()).await.unwrap();
        for i in 0..300u32 {
            let _ = log.append(request(1, 2, 2000, i as u8)).unwrap();
        }
        log.close().await.unwrap();
        let bigger = LogConfig { segment_size_bytes: 2 << 20, ..small_config() };
        let (log, report) = Log::open(&path, bigger.clone()).await.unwrap();
        assert_eq!(report.torn_bytes_dropped, 0, "{report:?}");
        assert_eq!(log.last_index(), LogIndex(300));
        for i in 0..300u32 {
            let _ = log.append(request(1, 2, 2000, i as u8)).unwrap();
        }
        log.close().await.unwrap();
        let (log, report) = Log::open(&path, small_config()).await.unwrap();
        assert_eq!(report.torn_bytes_dropped, 0, "{report:?}");
        assert_eq!(log.last_index(), LogIndex(600));
        let all = log.read_entries(LogIndex(1), LogIndex(600), 1 << 30).await.unwrap();
        assert_eq!(all.len(), 600);
        log.close().await.unwrap();
    });
}

/// Issue 13 item 12: every directory a log's open creates has its name made durable, its
/// parent synced — the outermost new directory's parent first, not only the log's own parent
/// (a crash could otherwise take back an outer directory and everything written below it).
/// The first sync of the open is made to fail: it must be the outermost parent's.
#[test]
fn a_log_opened_below_new_directories_syncs_the_parent_of_each_outermost_first() {
    let dir = tempdir();
    let root = dir.path().to_path_buf();
    let log_dir = root.join("a").join("b").join("log");
    let failed_on = run(move || async move {
        let faults = std::sync::Arc::new(ringlog_engine::FaultInjector::default());
        faults.fail_syncs(1);
        match ringlog_engine::Log::open_with_faults(&log_dir, small_config(), faults).await {
            Err(ringlog_engine::OpenError::Io { path, source }) => {
                assert_eq!(source.raw_os_error(), Some(libc::EIO), "{source}");
                path
            }
            other => panic!("expected the injected sync failure, got {:?}", other.map(|_| ())),
        }
    });
    assert_eq!(failed_on, root, "the first directory synced is the outermost new one's parent");
    // Without the fault, the same open succeeds and creates the whole chain.
    let log_dir = dir.path().join("a").join("b").join("log");
    run(move || async move {
        let (log, _) = ringlog_engine::Log::open(&log_dir, small_config()).await.unwrap();
        log.close().await.unwrap();
    });
}
