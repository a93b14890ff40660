//! Shard shutdown: no thread is left behind (its own test binary, so no other test's threads
//! are counted).

use std::time::{Duration, Instant};

use ringlog_engine::batch::RecordsBuilder;
use ringlog_engine::shard::{Durability, Engine, EngineConfig, PartitionId};

/// Generous bound for threads to disappear from /proc after being joined.
const WAIT_MAX: Duration = Duration::from_secs(60);

fn thread_names() -> Vec<String> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        if let Ok(name) = std::fs::read_to_string(entry.path().join("comm")) {
            names.push(name.trim().to_string());
        }
    }
    names.sort();
    names
}

#[test]
fn shutdown_flushes_and_joins_every_shard_thread() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let before = thread_names();
    let mut config = EngineConfig::new(dir.path().join("data"));
    config.shards = 2;
    config.partitions = 2;
    config.io_memory_bytes = 256 << 10;
    config.log.segment_size_bytes = 4 << 20;
    let engine = Engine::start(config).unwrap();
    let running = thread_names();
    // Each executor thread, plus glommio's blocking-pool thread that inherits its name.
    assert!(running.iter().filter(|n| n.starts_with("ringlog-shard")).count() >= 2, "{running:?}");
    let mut builder = RecordsBuilder::new(1 << 20);
    builder.push(b"last words").unwrap();
    let records = builder.finish();
    // Not waited for: shutdown must still flush it.
    let ack = engine.append(PartitionId(1), records, Durability::None).unwrap();
    let clone = engine.clone();
    engine.shutdown().unwrap();
    drop(clone);
    drop(engine);

    let deadline = Instant::now() + WAIT_MAX;
    loop {
        let after = thread_names();
        if after == before {
            break;
        }
        assert!(Instant::now() < deadline, "threads left: {after:?}, before: {before:?}");
        std::thread::sleep(Duration::from_millis(10));
    }

    // The non-durable append was flushed by shutdown: it is there after a restart.
    let mut config = EngineConfig::new(dir.path().join("data"));
    config.shards = 2;
    config.partitions = 2;
    config.io_memory_bytes = 256 << 10;
    config.log.segment_size_bytes = 4 << 20;
    let engine = Engine::start(config).unwrap();
    assert!(engine.durable_offset(PartitionId(1)).unwrap().0 > ack.base_offset.0);
    engine.shutdown().unwrap();
}
