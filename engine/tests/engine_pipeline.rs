//! Several flushes in flight per log (`LogConfig::flushes_in_flight_max`): they commit strictly
//! in order, a failure fails the failing flush and every later one, exclusive operations wait
//! for them, and recovery treats a torn flush followed by complete ones as a torn tail.

mod common;

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::Duration;

use common::{request, run, small_config, tempdir, values};
use ringlog_engine::batch::BATCH_HEADER_SIZE;
use ringlog_engine::{
    AppendError, Durable, Log, LogConfig, LogError, LogIndex, OpenError, ReadBound, TruncateError,
};

const K: usize = 4;
/// Bytes one read may return (a whole test log).
const READ_BYTES_MAX: usize = 64 << 20;

fn pipelined_config() -> LogConfig {
    LogConfig { flushes_in_flight_max: K, ..small_config() }
}

/// Waits until the preallocator has refilled its spare, so an armed fault hits a flush (the
/// directory sync of a spare counts as an fdatasync for the fault injector).
async fn wait_for_spare(log: &Log) {
    for _ in 0..2_000 {
        if log.stats().spares_filled >= 2 {
            return;
        }
        glommio::timer::sleep(Duration::from_millis(5)).await;
    }
    panic!("the preallocator did not refill the spare in 10 s");
}

/// Waits (bounded) until the log has had `count` flushes in flight at once.
async fn wait_for_flushes_in_flight(log: &Log, count: u64) {
    for _ in 0..10_000 {
        if log.stats().flushes_in_flight_peak >= count {
            return;
        }
        glommio::timer::sleep(Duration::from_millis(1)).await;
    }
    panic!("never {count} flushes in flight in 10 s: {:?}", log.stats());
}

/// Appends `count` batches of one ~8 KiB record each, synchronously (they queue together:
/// with 128 KiB flushes, 64 of them make five flushes, four of which go in flight at once).
fn append_burst(log: &Log, count: u32, fill: u8) -> Vec<(LogIndex, Durable)> {
    (0..count)
        .map(|_| {
            let appended = log.append(request(1, 1, 8 << 10, fill)).expect("append");
            (appended.index, appended.durable)
        })
        .collect()
}

/// Awaits every durable future, in order: their results.
async fn outcomes(durables: Vec<(LogIndex, Durable)>) -> Vec<(LogIndex, Result<(), LogError>)> {
    let mut out = Vec::new();
    for (index, durable) in durables {
        out.push((index, durable.await));
    }
    out
}

#[test]
fn concurrent_appenders_are_acknowledged_in_log_order_with_several_flushes_in_flight() {
    let dir = tempdir();
    let path = dir.path().to_path_buf();
    run(move || async move {
        let (log, _) = Log::open(&path, pipelined_config()).await.unwrap();
        let log = Rc::new(log);
        let done = Rc::new(Cell::new(false));
        // Watches durable_index: it never goes backwards.
        let watcher = {
            let (log, done) = (log.clone(), done.clone());
            glommio::spawn_local(async move {
                let mut seen = log.durable_index();
                let mut samples = 0u64;
                while !done.get() {
                    let now = log.durable_index();
                    assert!(now >= seen, "durable_index went back from {seen} to {now}");
                    seen = now;
                    samples += 1;
                    glommio::yield_if_needed().await;
                    glommio::timer::sleep(Duration::from_micros(50)).await;
                }
                samples
            })
        };
        let acknowledged = Rc::new(RefCell::new(Vec::new()));
        let mut tasks = Vec::new();
        for appender in 0..32u8 {
            let (log, acknowledged) = (log.clone(), acknowledged.clone());
            tasks.push(glommio::spawn_local(async move {
                for round in 0..12u32 {
                    // Three batches outstanding per appender: the queue holds several flushes.
                    let mut pending = Vec::new();
                    for _ in 0..3 {
                        let size = 2_000 + (appender as usize * 97 + round as usize * 31) % 6_000;
                        let appended = log.append(request(1, 1, size, appender)).expect("append");
                        pending.push(appended);
                    }
                    for appended in pending {
                        appended.durable.await.expect("durable");
                        // Resolved only once every earlier batch is durable too.
                        let durable = log.durable_index();
                        assert!(durable >= appended.index, "{} acked at {durable}", appended.index);
                        acknowledged.borrow_mut().push(appended.index);
                    }
                }
            }));
        }
        for task in tasks {
            task.await;
        }
        done.set(true);
        assert!(watcher.await > 0);
        let stats = log.stats();
        println!("{stats:?}");
        assert!(stats.flushes_in_flight_peak >= 2, "several flushes were in flight: {stats:?}");
        assert!(stats.flushes_in_flight_peak <= K as u64);
        assert_eq!(stats.flushes, stats.fdatasyncs, "one fdatasync per flush");
        assert_eq!(stats.flushes_failed, 0);
        let acknowledged = acknowledged.take();
        assert_eq!(acknowledged.len(), 32 * 12 * 3);
        assert_eq!(stats.batches_flushed, acknowledged.len() as u64);
        let last = log.last_index();
        assert_eq!(log.durable_index(), last);
        Rc::try_unwrap(log).expect("tasks done").close().await.unwrap();
        let (log, report) = Log::open(&path, pipelined_config()).await.unwrap();
        assert_eq!(report.torn_bytes_dropped, 0);
        assert_eq!(log.last_index(), last, "every acknowledged batch survives reopen");
        let batches = log.read_entries(LogIndex(1), last, READ_BYTES_MAX).await.unwrap();
        assert_eq!(batches.len() as u64, last.0);
        log.close().await.unwrap();
    });
}

/// One attempt of the failure scenario; returns `flushes_failed`.
async fn failed_fdatasync_attempt(attempt: u32) -> u64 {
    let dir = tempdir();
    let path = dir.path().to_path_buf();
    let (log, _) = Log::open(&path, pipelined_config()).await.unwrap();
    log.append(request(1, 1, 100, 0)).unwrap().durable.await.unwrap();
    wait_for_spare(&log).await;
    log.fault_injector().fail_syncs(1);
    let burst = append_burst(&log, 64, 1 + attempt as u8);
    let results = outcomes(burst).await;
    let stats = log.stats();
    // Acknowledged batches form a prefix; from the first failed one on, every batch failed.
    let first_failed = results.iter().position(|(_, r)| r.is_err()).expect("a flush failed");
    for (index, result) in &results[first_failed..] {
        assert!(matches!(result, Err(LogError::Failed { .. })), "{index}: {result:?}");
    }
    assert!(results[..first_failed].iter().all(|(_, r)| r.is_ok()));
    assert!(stats.flushes_in_flight_peak >= 2, "several flushes were in flight: {stats:?}");
    assert!(stats.flushes_failed >= 1, "{stats:?}");
    // The log is latched with a typed error, and the failed fdatasync was not retried.
    assert!(log.failure().is_some());
    assert!(matches!(log.append(request(1, 1, 10, 9)), Err(AppendError::Failed { .. })));
    assert!(matches!(log.sync().await, Err(LogError::Failed { .. })));
    assert!(matches!(log.truncate_suffix(LogIndex(1)).await, Err(TruncateError::Failed { .. })));
    let acknowledged_last = LogIndex(1 + first_failed as u64);
    assert_eq!(stats.batches_flushed, acknowledged_last.0, "{stats:?}");
    assert!(matches!(log.close().await, Err(LogError::Failed { .. })));
    // Reopen: every acknowledged batch is there, byte for byte.
    let (log, _) = Log::open(&path, pipelined_config()).await.unwrap();
    assert!(log.last_index() >= acknowledged_last);
    let batches =
        log.read_entries(LogIndex(2), acknowledged_last, READ_BYTES_MAX).await.expect("read back");
    assert_eq!(batches.len(), first_failed);
    for value in values(&batches) {
        assert_eq!(value, vec![1 + attempt as u8; 8 << 10]);
    }
    log.close().await.unwrap();
    stats.flushes_failed
}

#[test]
fn a_failed_fdatasync_fails_its_flush_and_every_later_flush_in_flight() {
    run(|| async {
        // Which flush's fdatasync is issued first depends on which write completes first; the
        // scenario asked for is one where later flushes were still in flight when it failed
        // (flushes_failed >= 2). Every attempt is checked in full.
        for attempt in 0..5 {
            let failed = failed_fdatasync_attempt(attempt).await;
            println!("attempt {attempt}: {failed} flushes failed");
            if failed >= 2 {
                return;
            }
        }
        panic!("in 5 attempts the failed fdatasync was always the last flush in flight");
    });
}

#[test]
fn a_failed_write_fails_every_flush_in_flight_and_nothing_is_written_after_it() {
    let dir = tempdir();
    let path = dir.path().to_path_buf();
    run(move || async move {
        let (log, _) = Log::open(&path, pipelined_config()).await.unwrap();
        log.append(request(1, 1, 100, 0)).unwrap().durable.await.unwrap();
        wait_for_spare(&log).await;
        log.fault_injector().fail_writes(1);
        let results = outcomes(append_burst(&log, 64, 7)).await;
        // The first flush's write is issued first and fails: nothing after it commits, and
        // flushes submitted with it never issue their IO.
        for (index, result) in &results {
            assert!(matches!(result, Err(LogError::Failed { .. })), "{index}: {result:?}");
        }
        let stats = log.stats();
        assert!((1..=K as u64).contains(&stats.flushes_failed), "{stats:?}");
        assert_eq!((stats.flushes, stats.fdatasyncs), (1, 1), "{stats:?}");
        assert!(log.failure().is_some());
        assert!(matches!(log.close().await, Err(LogError::Failed { .. })));
        let (log, report) = Log::open(&path, pipelined_config()).await.unwrap();
        // The failed flush was never written, the later ones were not issued after it failed.
        assert_eq!(log.last_index(), LogIndex(1), "{report:?}");
        log.close().await.unwrap();
    });
}

#[test]
fn truncation_waits_for_flushes_in_flight_and_cuts_durably() {
    let dir = tempdir();
    let path = dir.path().to_path_buf();
    run(move || async move {
        let (log, _) = Log::open(&path, pipelined_config()).await.unwrap();
        let burst = append_burst(&log, 64, 3);
        // Let the flusher put several flushes in flight, then truncate into them.
        wait_for_flushes_in_flight(&log, 2).await;
        let truncated = log.truncate_suffix(LogIndex(20)).await;
        truncated.expect("truncate");
        let stats = log.stats();
        assert!(stats.flushes_in_flight_peak >= 2, "{stats:?}");
        assert_eq!(log.last_index(), LogIndex(19));
        for (index, result) in outcomes(burst).await {
            // A batch acknowledged before the truncation was durable then; the others were
            // dropped while queued.
            match result {
                Ok(()) => {}
                Err(LogError::Truncated { .. }) => assert!(index >= LogIndex(20)),
                Err(other) => panic!("{index}: {other}"),
            }
        }
        let appended = log.append(request(2, 1, 100, 4)).unwrap();
        assert_eq!(appended.index, LogIndex(20));
        appended.durable.await.unwrap();
        log.close().await.unwrap();
        let (log, _) = Log::open(&path, pipelined_config()).await.unwrap();
        assert_eq!(log.last_index(), LogIndex(20));
        let last = log.read_entries(LogIndex(20), LogIndex(20), READ_BYTES_MAX).await.unwrap();
        assert_eq!(values(&last), vec![vec![4u8; 100]]);
        log.close().await.unwrap();
    });
}

#[test]
fn retention_and_close_racing_with_flushes_in_flight_keep_every_acknowledged_batch() {
    let dir = tempdir();
    let path = dir.path().to_path_buf();
    let config = LogConfig { retention_bytes_max: Some(2 << 20), ..pipelined_config() };
    let reopen = config.clone();
    run(move || async move {
        let (log, _) = Log::open(&path, config).await.unwrap();
        let log = Rc::new(log);
        let stop = Rc::new(Cell::new(false));
        let retention = {
            let (log, stop) = (log.clone(), stop.clone());
            glommio::spawn_local(async move {
                let mut deleted = 0;
                while !stop.get() {
                    let report = log.apply_retention(0, LogIndex(u64::MAX)).await.unwrap();
                    deleted += report.segments_deleted;
                    glommio::timer::sleep(Duration::from_millis(2)).await;
                }
                deleted
            })
        };
        let mut last = LogIndex(0);
        for round in 0..12u8 {
            let burst = append_burst(&log, 64, round);
            last = burst.last().unwrap().0;
            for (index, result) in outcomes(burst).await {
                result.unwrap_or_else(|e| panic!("{index}: {e}"));
            }
        }
        stop.set(true);
        let deleted = retention.await;
        assert!(deleted > 0, "retention deleted segments while flushes ran");
        let stats = log.stats();
        assert!(stats.flushes_in_flight_peak >= 2, "{stats:?}");
        // Close with flushes in flight: everything appended is durable when close returns.
        let tail = append_burst(&log, 64, 99);
        let tail_last = tail.last().unwrap().0;
        Rc::try_unwrap(log).expect("tasks done").close().await.unwrap();
        for (index, result) in outcomes(tail).await {
            result.unwrap_or_else(|e| panic!("{index}: {e}"));
        }
        assert!(tail_last > last);
        let (log, report) = Log::open(&path, reopen).await.unwrap();
        assert_eq!(report.torn_bytes_dropped, 0);
        assert_eq!(log.last_index(), tail_last);
        let start = log.start_index();
        assert!(start > LogIndex(1), "retention moved the start");
        let read = log.read_entries(start, tail_last, READ_BYTES_MAX).await.unwrap();
        assert_eq!(read.len() as u64, tail_last.0 - start.0 + 1, "contiguous after the start");
        let newest = log.read_entries(tail_last, tail_last, READ_BYTES_MAX).await.unwrap();
        assert_eq!(values(&newest), vec![vec![99u8; 8 << 10]]);
        log.close().await.unwrap();
    });
}

/// 16 block-sized batches per 64 KiB flush: every batch header is block-aligned, so recovery's
/// probe for valid data beyond the damage sees each one.
fn block_batch_config(flushes_in_flight_max: usize) -> LogConfig {
    LogConfig {
        batch_size_max: 16 << 10,
        flush_bytes_max: 64 << 10,
        queued_bytes_max: 1 << 20,
        flushes_in_flight_max,
        ..small_config()
    }
}

#[test]
fn a_torn_flush_followed_by_a_complete_one_is_a_torn_tail_within_the_pipeline_reach() {
    const BLOCK: u64 = 4096;
    const PER_FLUSH: u64 = 16;
    let dir = tempdir();
    let path = dir.path().to_path_buf();
    let segment = run(move || async move {
        let (log, _) = Log::open(&path, block_batch_config(2)).await.unwrap();
        // One record whose batch is exactly one block (4-byte record length prefix).
        let value_len = BLOCK as usize - BATCH_HEADER_SIZE - 4;
        for flush in 0..3u8 {
            let mut last = None;
            for _ in 0..PER_FLUSH {
                let appended = log.append(request(1, 1, value_len, flush + 1)).unwrap();
                assert_eq!(appended.batch.len() as u64, BLOCK);
                last = Some(appended);
            }
            last.unwrap().durable.await.unwrap();
        }
        let stats = log.stats();
        assert_eq!(stats.flushes, 3, "one flush per burst: {stats:?}");
        let segment = std::fs::read_dir(&path)
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.extension().is_some_and(|e| e == "seg"))
            .expect("segment file");
        log.close().await.unwrap();
        segment
    });
    // Flush 1 = header block + batches 1..=16, flush 2 = batches 17..=32, flush 3 = 33..=48.
    // Tear flush 2 (its first batch), as a crash with flushes 2 and 3 in flight can leave it.
    let flush2 = BLOCK + PER_FLUSH * BLOCK;
    let mut bytes = std::fs::read(&segment).unwrap();
    bytes[(flush2 + 100) as usize] ^= 0xff;
    std::fs::write(&segment, &bytes).unwrap();
    let path = dir.path().to_path_buf();
    run(move || async move {
        // With one flush in flight, valid batches more than a flush past the damage cannot
        // come from a crash: corruption.
        match Log::open(&path, block_batch_config(1)).await {
            Err(OpenError::Corruption(_)) => {}
            other => panic!("with one flush in flight this is corruption: {other:?}"),
        }
        // With two, flush 3 was in flight with flush 2: a torn tail, cut at flush 2.
        let (log, report) = Log::open(&path, block_batch_config(2)).await.unwrap();
        assert!(report.torn_bytes_dropped > 0, "{report:?}");
        assert!(report.truncated_at.is_none(), "{report:?}");
        assert_eq!(log.last_index(), LogIndex(PER_FLUSH));
        assert_eq!(log.durable_index(), LogIndex(PER_FLUSH));
        let read = log.fetch(ringlog_engine::Offset(0), READ_BYTES_MAX, ReadBound::Durable).await;
        assert_eq!(read.unwrap().len() as u64, PER_FLUSH);
        let appended = log.append(request(1, 1, 10, 5)).unwrap();
        assert_eq!(appended.index, LogIndex(PER_FLUSH + 1));
        appended.durable.await.unwrap();
        log.close().await.unwrap();
    });
}
