//! Writer threads: each produces paced batches of unique values (`payload`) with
//! acks=quorum to its partition and records every acknowledgement (offset and value ids).
//! A failed produce (indeterminate, no leader, refused) is counted and its values are never
//! sent again: they may or may not be in the log, but at most once.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use ringlog_net::client::{Client, ClientConfig};
use ringlog_net::protocol::Acks;
use ringlog_net::PartitionId;

use super::options::Options;
use super::payload::{self, RecordId};

/// Records per produce: 1..=RECORDS_PER_PRODUCE_MAX.
const RECORDS_PER_PRODUCE_MAX: u64 = 8;
/// How far a writer that fell behind its pace may catch up in a burst.
const PACE_SLACK: Duration = Duration::from_secs(1);

/// One acknowledged produce: records `first_seq..first_seq + count` of the writer at offsets
/// `base_offset..base_offset + count`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ack {
    pub base_offset: u64,
    pub first_seq: u64,
    pub count: u32,
}

/// Everything one writer did.
#[derive(Debug, Default)]
pub struct WriterLog {
    pub writer: u32,
    pub partition: u32,
    /// Values `0..next_seq` were sent (acknowledged or not); no other value of this writer.
    pub next_seq: u64,
    pub acks: Vec<Ack>,
    pub failures: u64,
    /// Acknowledgements whose offsets did not match the batch (a protocol anomaly).
    pub bad_acks: Vec<String>,
}

/// Live counters, read by the availability monitor and the progress lines.
#[derive(Debug)]
pub struct Progress {
    pub start: Instant,
    pub acked_records: AtomicU64,
    pub failures: AtomicU64,
    /// Per partition: milliseconds since `start` of the newest acknowledgement.
    pub last_ack_ms: Vec<AtomicU64>,
}

impl Progress {
    pub fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }
}

/// The running writers.
#[derive(Debug)]
pub struct Writers {
    handles: Vec<JoinHandle<WriterLog>>,
    stop: Arc<AtomicBool>,
    pub progress: Arc<Progress>,
}

impl Writers {
    pub fn start(options: &Options, bootstrap: Vec<SocketAddr>) -> Writers {
        let stop = Arc::new(AtomicBool::new(false));
        let progress = Arc::new(Progress {
            start: Instant::now(),
            acked_records: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            last_ack_ms: (0..options.partitions).map(|_| AtomicU64::new(0)).collect(),
        });
        let rate = f64::from(options.rate_records_per_sec) / f64::from(options.writers);
        let handles = (0..options.writers)
            .map(|writer| {
                let log = WriterLog {
                    writer,
                    partition: writer % options.partitions,
                    ..WriterLog::default()
                };
                let client = Client::new(client_config(bootstrap.clone())).expect("client");
                let (seed, stop, progress) = (options.seed, stop.clone(), progress.clone());
                thread::Builder::new()
                    .name(format!("nemesis-writer-{writer}"))
                    .spawn(move || write_loop(log, seed, rate, &client, &stop, &progress))
                    .expect("spawn a writer thread")
            })
            .collect();
        Writers { handles, stop, progress }
    }

    /// Stops every writer (each finishes its produce in flight) and returns their logs.
    pub fn stop(self) -> Vec<WriterLog> {
        self.stop.store(true, Ordering::Relaxed);
        self.handles.into_iter().map(|h| h.join().expect("writer thread")).collect()
    }
}

/// Client settings for writers: a paused leader costs at most `request_timeout` before the
/// writer re-routes, so an unavailable window stays well below the 5 s the soak flags.
pub fn client_config(bootstrap: Vec<SocketAddr>) -> ClientConfig {
    ClientConfig {
        request_timeout: Duration::from_secs(2),
        metadata_timeout: Duration::from_millis(500),
        retry_time_max: Duration::from_secs(10),
        attempts_max: 200,
        backoff_initial: Duration::from_millis(10),
        backoff_max: Duration::from_millis(200),
        ..ClientConfig::new(bootstrap)
    }
}

fn write_loop(
    mut log: WriterLog,
    seed: u64,
    rate: f64,
    client: &Client,
    stop: &AtomicBool,
    progress: &Progress,
) -> WriterLog {
    let mut rng = SmallRng::seed_from_u64(seed ^ (u64::from(log.writer) << 40) ^ 0x5752_4954);
    let partition = PartitionId(log.partition);
    let mut due = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        if now < due {
            thread::sleep((due - now).min(Duration::from_millis(50)));
            continue;
        }
        let count = rng.gen_range(1..=RECORDS_PER_PRODUCE_MAX);
        due = due.max(now - PACE_SLACK.min(now - progress.start))
            + Duration::from_secs_f64(count as f64 / rate);
        let first_seq = log.next_seq;
        let values: Vec<Vec<u8>> = (first_seq..first_seq + count)
            .map(|seq| {
                payload::make(seed, RecordId { partition: log.partition, writer: log.writer, seq })
            })
            .collect();
        log.next_seq += count;
        let records: Vec<&[u8]> = values.iter().map(Vec::as_slice).collect();
        match client.produce(partition, Acks::Quorum, &records) {
            Ok(ack) => {
                if ack.last_offset.0.checked_sub(ack.base_offset.0) != Some(count - 1) {
                    log.bad_acks.push(format!("writer {} seq {first_seq}: {ack:?}", log.writer));
                }
                log.acks.push(Ack {
                    base_offset: ack.base_offset.0,
                    first_seq,
                    count: count as u32,
                });
                progress.acked_records.fetch_add(count, Ordering::Relaxed);
                progress.last_ack_ms[log.partition as usize]
                    .fetch_max(progress.now_ms(), Ordering::Relaxed);
            }
            Err(_) => {
                log.failures += 1;
                progress.failures.fetch_add(1, Ordering::Relaxed);
                thread::sleep(Duration::from_millis(20));
            }
        }
    }
    log
}
