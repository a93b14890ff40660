//! Shard engine: appends, fetches and errors through `EngineHandle` from foreign threads.

use std::collections::BTreeMap;
use std::time::Duration;

use ringlog_engine::batch::{decode_batch, Records, RecordsBuilder};
use ringlog_engine::limits::LogConfig;
use ringlog_engine::shard::{
    AppendAck, AppendCompletion, Durability, Engine, EngineConfig, EngineError, EngineHandle,
    PartitionId,
};
use ringlog_engine::types::Offset;

const SHARDS: usize = 2;
const PARTITIONS: u32 = 4;
const THREADS: u64 = 4;
const APPENDS_PER_THREAD: u64 = 60;
/// Generous bound for anything a test waits for (the machine is shared and may be slow).
const WAIT_MAX: Duration = Duration::from_secs(60);

fn small_log_config() -> LogConfig {
    LogConfig {
        segment_size_bytes: 1 << 20,
        batch_size_max: 64 << 10,
        flush_bytes_max: 256 << 10,
        queued_bytes_max: 1 << 20,
        index_interval_bytes: 4096,
        ..LogConfig::default()
    }
}

fn start(dir: &std::path::Path) -> EngineHandle {
    let mut config = EngineConfig::new(dir.join("data"));
    config.shards = SHARDS;
    config.partitions = PARTITIONS;
    config.io_memory_bytes = 256 << 10;
    config.log = small_log_config();
    Engine::start(config).expect("engine starts")
}

fn temp_dir() -> tempfile::TempDir {
    tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap()
}

/// The value of record `k` of append `seq` from `thread`: identifies it when read back.
fn value(thread: u64, seq: u64, k: u64) -> Vec<u8> {
    let mut value = format!("t{thread}-s{seq}-r{k}-").into_bytes();
    value.resize(64 + (seq as usize % 7) * 100, b'a' + (k % 26) as u8);
    value
}

fn records(thread: u64, seq: u64) -> (Records, Vec<Vec<u8>>) {
    let count = 1 + seq % 3;
    let mut builder = RecordsBuilder::new(64 << 10);
    let values: Vec<Vec<u8>> = (0..count).map(|k| value(thread, seq, k)).collect();
    for v in &values {
        builder.push(v).unwrap();
    }
    (builder.finish(), values)
}

/// Reads every durable record of `partition` by offset.
fn read_all(engine: &EngineHandle, partition: PartitionId) -> BTreeMap<u64, Vec<u8>> {
    let mut found = BTreeMap::new();
    let end = engine.durable_offset(partition).unwrap();
    let mut offset = Offset(0);
    while offset < end {
        let fetched = engine.fetch(partition, offset, 64 << 10).unwrap();
        assert!(!fetched.batches.is_empty(), "fetch at {offset} returned nothing");
        for batch in &fetched.batches {
            let view = decode_batch(batch, 64 << 10).unwrap();
            let base = view.header().base_offset().0;
            for (i, record) in view.records().enumerate() {
                found.insert(base + i as u64, record.to_vec());
            }
        }
        assert!(fetched.next_offset > offset);
        offset = fetched.next_offset;
    }
    found
}

/// Waits until the preallocator of `partition` has filled a spare segment after the one its
/// first roll consumed (its counter reaches 2), so no background fdatasync is in flight.
fn wait_for_spare(engine: &EngineHandle, partition: PartitionId) {
    let deadline = std::time::Instant::now() + WAIT_MAX;
    loop {
        let stats = engine.stats().unwrap();
        let filled = stats
            .shards
            .iter()
            .flat_map(|shard| shard.partitions.iter())
            .find(|(id, _)| *id == partition)
            .map(|(_, stats)| stats.spares_filled)
            .expect("the partition has stats");
        if filled >= 2 {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "{partition}: spare not refilled");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn appends_from_several_threads_get_dense_offsets_per_partition_and_read_back() {
    let dir = temp_dir();
    let engine = start(dir.path());
    let threads: Vec<_> = (0..THREADS)
        .map(|thread| {
            let engine = engine.clone();
            std::thread::spawn(move || {
                let mut acked = Vec::new();
                let (reply, completions) = crossbeam_channel::unbounded::<AppendCompletion>();
                for seq in 0..APPENDS_PER_THREAD {
                    let partition = PartitionId(((thread + seq) % u64::from(PARTITIONS)) as u32);
                    let (records, values) = records(thread, seq);
                    // Alternate the blocking and the async form of append.
                    if seq % 2 == 0 {
                        let ack = engine.append(partition, records, Durability::Durable).unwrap();
                        acked.push((ack, values));
                    } else {
                        engine
                            .append_async(partition, records, Durability::Durable, seq, &reply)
                            .unwrap();
                        let completion = completions.recv_timeout(WAIT_MAX).unwrap();
                        assert_eq!(completion.token, seq);
                        acked.push((completion.result.unwrap(), values));
                    }
                }
                acked
            })
        })
        .collect();
    let acked: Vec<(AppendAck, Vec<Vec<u8>>)> =
        threads.into_iter().flat_map(|t| t.join().unwrap()).collect();
    assert_eq!(acked.len() as u64, THREADS * APPENDS_PER_THREAD);

    for p in 0..PARTITIONS {
        let partition = PartitionId(p);
        let mut ranges: Vec<(u64, u64)> = acked
            .iter()
            .filter(|(ack, _)| ack.partition == partition)
            .map(|(ack, _)| {
                assert!(ack.durable);
                (ack.base_offset.0, ack.base_offset.0 + u64::from(ack.record_count))
            })
            .collect();
        ranges.sort_unstable();
        let mut next = 0;
        for (start, end) in &ranges {
            assert_eq!(*start, next, "offsets of {partition} are not dense: {ranges:?}");
            next = *end;
        }
        assert_eq!(engine.durable_offset(partition).unwrap(), Offset(next));

        let stored = read_all(&engine, partition);
        assert_eq!(stored.len() as u64, next);
        for (ack, values) in acked.iter().filter(|(ack, _)| ack.partition == partition) {
            for (k, value) in values.iter().enumerate() {
                let offset = ack.base_offset.0 + k as u64;
                assert_eq!(stored.get(&offset), Some(value), "record at {offset} of {partition}");
            }
        }
    }

    let stats = engine.stats().unwrap();
    assert_eq!(stats.shards.len(), SHARDS);
    let total = stats.total();
    assert_eq!(total.appends, THREADS * APPENDS_PER_THREAD);
    assert!(total.fdatasyncs > 0);
    engine.shutdown().unwrap();
}

#[test]
fn partitions_live_on_shard_p_mod_shards_in_their_own_directory() {
    let dir = temp_dir();
    let engine = start(dir.path());
    for p in 0..PARTITIONS {
        let (records, _) = records(0, 0);
        engine.append(PartitionId(p), records, Durability::Durable).unwrap();
    }
    let stats = engine.stats().unwrap();
    for shard in &stats.shards {
        let owned: Vec<u32> = shard.partitions.iter().map(|(p, _)| p.0).collect();
        let expected: Vec<u32> =
            (0..PARTITIONS).filter(|p| *p as usize % SHARDS == shard.shard).collect();
        assert_eq!(owned, expected);
    }
    for p in 0..PARTITIONS {
        assert!(dir.path().join("data").join(p.to_string()).is_dir());
    }
    engine.shutdown().unwrap();
}

#[test]
fn a_non_durable_append_answers_before_its_fdatasync_and_becomes_durable() {
    let dir = temp_dir();
    let engine = start(dir.path());
    let (records, _) = records(1, 1);
    let ack = engine.append(PartitionId(1), records, Durability::None).unwrap();
    assert!(!ack.durable);
    let end = Offset(ack.base_offset.0 + u64::from(ack.record_count));
    let deadline = std::time::Instant::now() + WAIT_MAX;
    while engine.durable_offset(PartitionId(1)).unwrap() < end {
        assert!(std::time::Instant::now() < deadline, "never became durable");
        std::thread::sleep(Duration::from_millis(5));
    }
    engine.shutdown().unwrap();
}

#[test]
fn the_callback_form_delivers_the_answer() {
    let dir = temp_dir();
    let engine = start(dir.path());
    let (tx, rx) = crossbeam_channel::bounded(1);
    let (records, _) = records(2, 2);
    engine
        .append_with_callback(PartitionId(3), records, Durability::Durable, move |result| {
            let _ = tx.send(result.map(|ack| ack.base_offset));
        })
        .unwrap();
    assert_eq!(rx.recv_timeout(WAIT_MAX).unwrap().unwrap(), Offset(0));
    engine.shutdown().unwrap();
}

#[test]
fn an_unknown_partition_is_a_typed_error() {
    let dir = temp_dir();
    let engine = start(dir.path());
    let (records, _) = records(0, 0);
    let error = engine.append(PartitionId(PARTITIONS), records, Durability::Durable).unwrap_err();
    assert!(matches!(
        error,
        EngineError::UnknownPartition { partition: PARTITIONS, partitions: PARTITIONS }
    ));
    assert!(matches!(
        engine.fetch(PartitionId(99), Offset(0), 4096),
        Err(EngineError::UnknownPartition { .. })
    ));
    engine.shutdown().unwrap();
}

#[test]
fn a_fetch_past_the_end_or_too_large_is_a_typed_error() {
    let dir = temp_dir();
    let engine = start(dir.path());
    assert!(matches!(engine.fetch(PartitionId(0), Offset(1000), 4096), Err(EngineError::Fetch(_))));
    assert!(matches!(
        engine.fetch(PartitionId(0), Offset(0), usize::MAX),
        Err(EngineError::FetchTooLarge { .. })
    ));
    engine.shutdown().unwrap();
}

#[test]
fn calls_after_shutdown_answer_closed_and_a_second_shutdown_is_a_no_op() {
    let dir = temp_dir();
    let engine = start(dir.path());
    let clone = engine.clone();
    engine.shutdown().unwrap();
    let (records, _) = records(0, 0);
    assert!(matches!(
        clone.append(PartitionId(0), records, Durability::Durable),
        Err(EngineError::Closed)
    ));
    assert!(matches!(clone.stats(), Err(EngineError::Closed)));
    clone.shutdown().unwrap();
}

#[test]
fn records_survive_a_restart_of_the_engine() {
    let dir = temp_dir();
    let engine = start(dir.path());
    let (records, values) = records(5, 4);
    let ack = engine.append(PartitionId(2), records, Durability::Durable).unwrap();
    engine.shutdown().unwrap();
    drop(engine);

    let engine = start(dir.path());
    let stored = read_all(&engine, PartitionId(2));
    for (k, value) in values.iter().enumerate() {
        assert_eq!(stored.get(&(ack.base_offset.0 + k as u64)), Some(value));
    }
    engine.shutdown().unwrap();
}

#[test]
fn an_invalid_configuration_is_refused_before_any_thread_starts() {
    let dir = temp_dir();
    let mut config = EngineConfig::new(dir.path().join("data"));
    config.shards = 0;
    assert!(matches!(
        Engine::start(config.clone()),
        Err(ringlog_engine::shard::StartError::Config { .. })
    ));
    config.shards = 1;
    config.partitions = 0;
    assert!(Engine::start(config).is_err());
}

#[test]
fn a_failed_fdatasync_fails_the_waiting_append_and_latches_the_partition() {
    let dir = temp_dir();
    let faults = std::sync::Arc::new(ringlog_engine::io::FaultInjector::default());
    let mut config = EngineConfig::new(dir.path().join("data"));
    config.io_memory_bytes = 256 << 10;
    config.log = small_log_config();
    config.faults = Some(faults.clone());
    let engine = Engine::start(config).unwrap();
    let (records_ok, _) = records(0, 0);
    engine.append(PartitionId(0), records_ok, Durability::Durable).unwrap();
    // The first append consumed the spare segment: arm the fault only once the preallocator
    // has zero-filled the next one, so the armed fdatasync is the append's, not the filler's.
    wait_for_spare(&engine, PartitionId(0));

    faults.fail_syncs(1);
    let (records_lost, _) = records(0, 1);
    let error = engine.append(PartitionId(0), records_lost, Durability::Durable).unwrap_err();
    assert!(
        matches!(error, EngineError::Durability(ringlog_engine::LogError::Failed { .. })),
        "{error:?}"
    );
    // fsyncgate: the log stays failed, later appends are refused, never retried.
    let (records_after, _) = records(0, 2);
    let error = engine.append(PartitionId(0), records_after, Durability::Durable).unwrap_err();
    assert!(
        matches!(error, EngineError::Append(ringlog_engine::AppendError::Failed { .. })),
        "{error:?}"
    );
    // Shutdown reports the latched failure instead of hiding it.
    assert!(engine.shutdown().is_err());
}

#[test]
fn tasks_run_with_a_partitions_log_on_its_shard_and_their_appends_are_read_back() {
    let dir = temp_dir();
    let engine = start(dir.path());
    let partition = PartitionId(3);
    let (done_tx, done_rx) = crossbeam_channel::bounded(1);
    engine
        .run_with_log(partition, move |log| async move {
            // Embedded use: several producer tasks on the shard's own executor.
            let producers: Vec<_> = (0..4u64)
                .map(|producer| {
                    let log = log.clone();
                    glommio::spawn_local(async move {
                        for seq in 0..10 {
                            let (records, _) = records(producer, seq);
                            let request = ringlog_engine::AppendRequest::data(
                                log.last_term(),
                                records,
                                1_700_000_000_000,
                            );
                            let appended = log.append(request).expect("append");
                            appended.durable.await.expect("durable");
                        }
                    })
                })
                .collect();
            for producer in producers {
                producer.await;
            }
            let _ = done_tx.send(log.durable_offset());
        })
        .expect("the task is spawned on the owning shard");
    let durable = done_rx.recv_timeout(WAIT_MAX).expect("the producers finish");
    assert_eq!(engine.durable_offset(partition).unwrap(), durable);
    let mut seen = 0u64;
    let mut offset = Offset(0);
    while offset < durable {
        let fetched = engine.fetch(partition, offset, 1 << 20).unwrap();
        for batch in &fetched.batches {
            seen += u64::from(decode_batch(batch, 64 << 10).unwrap().header().record_count());
        }
        offset = fetched.next_offset;
    }
    let expected: u64 = (0..4u64).flat_map(|_| 0..10u64).map(|seq| 1 + seq % 3).sum();
    assert_eq!((seen, durable.0), (expected, expected));
    let error = engine.run_with_log(PartitionId(PARTITIONS), |_log| async {}).unwrap_err();
    assert!(matches!(error, EngineError::UnknownPartition { .. }), "{error}");
    engine.shutdown().unwrap();
}
