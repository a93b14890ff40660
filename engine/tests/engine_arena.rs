//! Flushes written in place from the append arena (engine/src/append_arena.rs): most flushes
//! are not copied, what they write reads back byte for byte after a reopen, and the cases that
//! must copy (a segment's first flush, a run split by a segment end, a truncation of queued
//! batches, a follower's stamped batches) leave the log intact.

mod common;

use std::rc::Rc;

use bytes::Bytes;
use common::{request, run, small_config, tempdir, values};
use ringlog_engine::{Log, LogConfig};
use ringlog_engine::{LogIndex, Offset, ReadBound};

/// Every batch of the log, from the start, read back durable.
async fn all_batches(log: &Log) -> Vec<Bytes> {
    let mut out = Vec::new();
    let mut offset = Offset(0);
    loop {
        let batches = log.fetch(offset, 1 << 20, ReadBound::Durable).await.unwrap();
        let Some(last) = batches.last() else { return out };
        let header = *ringlog_engine::decode_batch(last, 1 << 20).unwrap().header();
        offset = header.next_offset();
        out.extend(batches);
        if offset >= log.durable_offset() {
            return out;
        }
    }
}

#[test]
fn concurrent_appends_are_flushed_in_place_and_read_back_identical() {
    let dir = tempdir();
    let path = dir.path().to_path_buf();
    run(move || async move {
        let (log, _) = Log::open(&path, small_config()).await.unwrap();
        let log = Rc::new(log);
        let mut tasks = Vec::new();
        for t in 0..48u32 {
            let log = log.clone();
            tasks.push(glommio::spawn_local(async move {
                let mut mine = Vec::new();
                for i in 0..40u32 {
                    // Sizes that never land on a block boundary.
                    let size = 100 + ((t * 37 + i * 11) % 900) as usize;
                    let appended = log.append(request(1, 2, size, (t + i) as u8)).unwrap();
                    mine.push((appended.index, appended.batch.clone()));
                    appended.durable.await.unwrap();
                }
                mine
            }));
        }
        let mut stamped = Vec::new();
        for task in tasks {
            stamped.extend(task.await);
        }
        stamped.sort_by_key(|(index, _)| *index);
        let stats = log.stats();
        let copied = stats.flushes - stats.flushes_in_place;
        println!(
            "{} flushes, {} in place, {} segments rolled",
            stats.flushes, stats.flushes_in_place, stats.segments_rolled
        );
        // A segment's first flush is copied (header block), and a run that a segment end
        // splits is copied in its two parts: nothing else.
        assert!(
            copied <= 3 * (stats.segments_rolled + 1),
            "{copied} of {} flushes copied with {} rolls",
            stats.flushes,
            stats.segments_rolled
        );
        assert!(stats.flushes_in_place > stats.flushes / 2, "{stats:?}");
        let expected: Vec<Bytes> = stamped.into_iter().map(|(_, batch)| batch).collect();
        Rc::try_unwrap(log).unwrap().close().await.unwrap();

        let (log, report) = Log::open(&path, small_config()).await.unwrap();
        assert_eq!(report.torn_bytes_dropped, 0);
        assert_eq!(all_batches(&log).await, expected, "every batch byte-identical on disk");
        log.close().await.unwrap();
    });
}

#[test]
fn truncating_queued_batches_mid_run_keeps_the_log_intact() {
    let dir = tempdir();
    let path = dir.path().to_path_buf();
    run(move || async move {
        let (log, _) = Log::open(&path, small_config()).await.unwrap();
        let mut expected = Vec::new();
        for round in 0..30u32 {
            // A run of queued batches, its tail truncated before the flusher takes it, then
            // more batches after the cut (a new run).
            let first = log.last_index().0 + 1;
            let queued: Vec<_> = (0..6u32)
                .map(|i| log.append(request(1, 1, 300 + i as usize, i as u8)).unwrap())
                .collect();
            let cut = LogIndex(first + 3 + u64::from(round % 3));
            let kept = (cut.0 - first) as usize;
            log.truncate_suffix(cut).await.unwrap();
            for (i, appended) in queued.into_iter().enumerate() {
                let result = appended.durable.await;
                if i < kept {
                    result.unwrap();
                    expected.push(appended.batch);
                } else {
                    assert!(result.is_err(), "batch {i} of round {round} was truncated");
                }
            }
            let after = log.append(request(1, 1, 777, 0xAB)).unwrap();
            after.durable.await.unwrap();
            expected.push(after.batch);
        }
        assert_eq!(all_batches(&log).await, expected);
        log.close().await.unwrap();

        let (log, _) = Log::open(&path, small_config()).await.unwrap();
        assert_eq!(all_batches(&log).await, expected, "byte-identical after reopen");
        log.close().await.unwrap();
    });
}

#[test]
fn stamped_batches_of_a_follower_are_flushed_in_place_and_read_back() {
    let leader_dir = tempdir();
    let follower_dir = tempdir();
    let (leader_path, follower_path) =
        (leader_dir.path().to_path_buf(), follower_dir.path().to_path_buf());
    run(move || async move {
        let config = LogConfig { segment_size_bytes: 4 << 20, ..small_config() };
        let (leader, _) = Log::open(&leader_path, config.clone()).await.unwrap();
        let (follower, _) = Log::open(&follower_path, config.clone()).await.unwrap();
        let mut batches = Vec::new();
        for i in 0..400u32 {
            let appended = leader.append(request(2, 3, 50 + (i % 200) as usize, i as u8)).unwrap();
            batches.push(appended.batch.clone());
        }
        leader.sync().await.unwrap();
        // The follower gets the batches in bursts, as replication delivers them.
        for chunk in batches.chunks(25) {
            let pending: Vec<_> =
                chunk.iter().map(|b| follower.append_stamped(b.clone()).unwrap()).collect();
            for appended in pending {
                appended.durable.await.unwrap();
            }
        }
        let stats = follower.stats();
        assert!(stats.flushes_in_place > 0, "{stats:?}");
        assert_eq!(all_batches(&follower).await, batches);
        let leader_values = values(&all_batches(&leader).await);
        leader.close().await.unwrap();
        follower.close().await.unwrap();

        let (follower, _) = Log::open(&follower_path, config).await.unwrap();
        assert_eq!(all_batches(&follower).await, batches, "identical to the leader's bytes");
        assert_eq!(values(&all_batches(&follower).await), leader_values);
        follower.close().await.unwrap();
    });
}
