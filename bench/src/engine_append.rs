//! The `engine` and `engine-handle` scenarios: durable appends of fixed-size records to one
//! partition of a single-shard engine (single-node log, no network), closed loop.
//!
//! Each append carries `records_per_append` records of `record_size_bytes` (one batch) and is
//! answered after the fdatasync that covers it; `appenders` appends stay outstanding so that
//! group commit has enough to coalesce. Two appender models:
//!
//! - `engine` ([`measure`]): the appenders are `appenders` tasks on the shard's own executor
//!   calling `Log::append` and awaiting `Durable` — the embedded use of the log, and how the
//!   replicated node appends (no cross-thread hop per append).
//! - `engine-handle` ([`measure_handle`]): one driver thread keeps `appenders` appends
//!   outstanding through the same `EngineHandle` the CLI and the C ABI use: two cross-thread
//!   hops per append (command into the shard's mailbox, completion back on a channel).
//!
//! Device bytes and fdatasyncs come from the log's own counters, read before and after the
//! measured window, so the raw-disk baseline can replay the same average write size. Each
//! call starts a fresh engine on the same directory (the log recovers what the previous
//! round left there) and shuts it down at the end.
//!
//! Expectation (back of envelope): once per-append CPU is well under the device time per
//! flush, both models approach the raw-disk rate at the same write size times the record
//! share of each batch (1024 of 1096 bytes at 1 KiB records, about 93%).

use std::cell::{Cell, RefCell};
use std::path::Path;
use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use crossbeam_channel::{Receiver, Sender};
use serde::Serialize;

use ringlog_engine::batch::{Records, RecordsBuilder};
use ringlog_engine::limits::LogConfig;
use ringlog_engine::runtime::Pinning;
use ringlog_engine::shard::{
    AppendCompletion, Durability, Engine, EngineConfig, EngineHandle, PartitionId,
};
use ringlog_engine::{AppendRequest, Log};

use crate::load::{drive_closed_loop, AsyncTarget, ClosedLoop};
use crate::measure::{process_cpu_time, LatencyRecorder, RunMeasure};
use crate::raw_disk::fill_pattern;
use crate::workdir::StopFlag;

/// Longest wait for one append's completion before the run is declared stuck.
const APPEND_TIMEOUT: Duration = Duration::from_secs(30);

/// Options of the engine scenario.
#[derive(Debug, Clone, Serialize)]
pub struct EngineAppendOptions {
    pub appenders: usize,
    pub record_size_bytes: usize,
    pub records_per_append: usize,
    pub segment_size_bytes: u64,
    pub flush_bytes_max: usize,
    pub queued_bytes_max: usize,
    pub flushes_in_flight_max: usize,
    pub io_memory_bytes: usize,
    pub spin: bool,
}

impl Default for EngineAppendOptions {
    fn default() -> Self {
        let log = LogConfig::default();
        EngineAppendOptions {
            appenders: 256,
            record_size_bytes: 1024,
            records_per_append: 1,
            segment_size_bytes: log.segment_size_bytes,
            flush_bytes_max: log.flush_bytes_max,
            queued_bytes_max: log.queued_bytes_max,
            flushes_in_flight_max: log.flushes_in_flight_max,
            io_memory_bytes: ringlog_engine::shard::IO_MEMORY_DEFAULT_BYTES,
            spin: false,
        }
    }
}

/// Appends through the engine, completions on one channel.
struct EngineTarget {
    engine: EngineHandle,
    records: Records,
    replies: Sender<AppendCompletion>,
    completions: Receiver<AppendCompletion>,
}

impl AsyncTarget for EngineTarget {
    fn submit(&mut self, token: u64) -> anyhow::Result<()> {
        self.engine
            .append_async(
                PartitionId(0),
                self.records.clone(),
                Durability::Durable,
                token,
                &self.replies,
            )
            .context("append")
    }

    fn next_completion(&mut self, timeout: Duration) -> anyhow::Result<Option<u64>> {
        match self.completions.recv_timeout(timeout) {
            Ok(AppendCompletion { token, result }) => {
                result.with_context(|| format!("append {token}"))?;
                Ok(Some(token))
            }
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => Ok(None),
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => {
                bail!("completion channel closed")
            }
        }
    }
}

/// `engine-handle`: starts an engine on `dir` (re-opening the log a previous round left
/// there), runs the closed loop from this thread through `EngineHandle` for `warmup` +
/// `duration`, shuts the engine down and returns the measured window.
pub fn measure_handle(
    options: &EngineAppendOptions,
    dir: &Path,
    duration: Duration,
    warmup: Duration,
    stop: &StopFlag,
) -> anyhow::Result<RunMeasure> {
    let config = engine_config(options, dir);
    let engine = Engine::start(config.clone()).context("starting the engine")?;
    let records = build_records(options, &config.log)?;
    let (replies, completions) = crossbeam_channel::bounded(options.appenders);
    let mut target = EngineTarget { engine: engine.clone(), records, replies, completions };
    let load = ClosedLoop {
        concurrency: options.appenders,
        duration,
        warmup,
        drain_timeout: APPEND_TIMEOUT,
    };

    // Counters are sampled when the measured window opens (after the warm-up) and closes.
    let window = MeasuredWindow::new(&engine, warmup, duration, stop);
    let outcome = drive_closed_loop(&load, &mut target, stop);
    let window = window.finish();
    drop(target);
    let shutdown = engine.shutdown().context("shutting the engine down");
    let outcome = outcome?;
    let counters = window?;
    shutdown?;

    Ok(run_measure(options, outcome.completed, outcome.elapsed, outcome.latency, counters))
}

/// `engine`: starts an engine on `dir`, runs `appenders` producer tasks on the shard's own
/// executor (each: append, await durability, repeat) for `warmup` + `duration`, shuts the
/// engine down and returns the measured window.
pub fn measure(
    options: &EngineAppendOptions,
    dir: &Path,
    duration: Duration,
    warmup: Duration,
    stop: &StopFlag,
) -> anyhow::Result<RunMeasure> {
    if options.appenders == 0 || options.appenders > crate::load::CONCURRENCY_MAX {
        bail!("appenders {} outside 1..={}", options.appenders, crate::load::CONCURRENCY_MAX);
    }
    let config = engine_config(options, dir);
    let engine = Engine::start(config.clone()).context("starting the engine")?;
    let records = build_records(options, &config.log)?;
    let started = Instant::now();
    let plan = ProducerPlan {
        appenders: options.appenders,
        measure_from: started + warmup,
        measure_until: started + warmup + duration,
        stop: stop.clone(),
    };
    let (done, outcome) = crossbeam_channel::bounded(1);
    let window = MeasuredWindow::new(&engine, warmup, duration, stop);
    let spawned = engine.run_with_log(PartitionId(0), move |log| async move {
        let _ = done.send(run_producers(log, records, plan).await);
    });
    let outcome = spawned.context("starting the producers on the shard").and_then(|()| {
        outcome
            .recv_timeout(warmup + duration + APPEND_TIMEOUT)
            .context("the producers on the shard did not finish")
    });
    let window = window.finish();
    let shutdown = engine.shutdown().context("shutting the engine down");
    let outcome = outcome?;
    let counters = window?;
    shutdown?;
    if let Some(error) = outcome.error {
        bail!("append failed: {error}");
    }
    Ok(run_measure(options, outcome.completed, outcome.elapsed, outcome.latency, counters))
}

fn run_measure(
    options: &EngineAppendOptions,
    completed: u64,
    elapsed: Duration,
    latency: LatencyRecorder,
    counters: Counters,
) -> RunMeasure {
    let records_total = completed * options.records_per_append as u64;
    let mut measure = RunMeasure {
        operations: completed,
        records: records_total,
        bytes: records_total * options.record_size_bytes as u64,
        disk_bytes: counters.bytes_written,
        fdatasyncs: counters.fdatasyncs,
        background_bytes: counters.spares_filled * options.segment_size_bytes,
        elapsed,
        cpu: counters.cpu,
        ..RunMeasure::default()
    };
    measure.set_latency(latency);
    measure
}

/// What the in-shard producers are told.
struct ProducerPlan {
    appenders: usize,
    measure_from: Instant,
    measure_until: Instant,
    stop: StopFlag,
}

/// What the in-shard producers measured (sent back to the bench thread).
struct ProducerOutcome {
    completed: u64,
    elapsed: Duration,
    latency: LatencyRecorder,
    error: Option<String>,
}

/// Shared by the producer tasks of one run (all on the shard's thread).
struct ProducerShared {
    log: Rc<Log>,
    records: Records,
    plan: ProducerPlan,
    completed: Cell<u64>,
    latency: RefCell<LatencyRecorder>,
    error: RefCell<Option<String>>,
}

/// Runs `plan.appenders` producer tasks on the current (shard) executor until the measured
/// window closes, then waits for each one's last append and reports.
async fn run_producers(log: Rc<Log>, records: Records, plan: ProducerPlan) -> ProducerOutcome {
    let measure_from = plan.measure_from;
    let measure_until = plan.measure_until;
    let shared = Rc::new(ProducerShared {
        log,
        records,
        plan,
        completed: Cell::new(0),
        latency: RefCell::new(LatencyRecorder::new()),
        error: RefCell::new(None),
    });
    let tasks: Vec<_> =
        (0..shared.plan.appenders).map(|_| glommio::spawn_local(produce(shared.clone()))).collect();
    for task in tasks {
        task.await;
    }
    let measured_end = Instant::now().min(measure_until);
    let error = shared.error.borrow_mut().take();
    ProducerOutcome {
        completed: shared.completed.get(),
        elapsed: measured_end.saturating_duration_since(measure_from),
        latency: shared.latency.replace(LatencyRecorder::new()),
        error,
    }
}

/// One producer: append, await durability, record, repeat until the window closes.
async fn produce(shared: Rc<ProducerShared>) {
    let plan = &shared.plan;
    loop {
        let submitted = Instant::now();
        if submitted >= plan.measure_until
            || plan.stop.is_raised()
            || shared.error.borrow().is_some()
        {
            return;
        }
        let log = &shared.log;
        let request = AppendRequest::data(log.last_term(), shared.records.clone(), now_unix_ms());
        let durable = match log.append(request) {
            Ok(appended) => appended.durable.await,
            Err(error) => {
                shared.error.borrow_mut().get_or_insert_with(|| {
                    format!("{error} (raise --queued-bytes-max if this is backpressure)")
                });
                return;
            }
        };
        if let Err(error) = durable {
            shared.error.borrow_mut().get_or_insert_with(|| error.to_string());
            return;
        }
        let now = Instant::now();
        if submitted >= plan.measure_from && now <= plan.measure_until {
            shared.latency.borrow_mut().record(now - submitted);
            shared.completed.set(shared.completed.get() + 1);
        }
    }
}

fn now_unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// The `engine` scenario's description, parameters and notes for the report.
pub fn describe(
    options: &EngineAppendOptions,
) -> anyhow::Result<(String, serde_json::Value, Vec<String>)> {
    let notes = vec![format!(
        "closed loop, {} producer tasks on the shard's executor, each keeping one append of \
         {} × {} B records outstanding (Log::append, then await Durable); {}",
        options.appenders,
        options.records_per_append,
        options.record_size_bytes,
        common_note(options)
    )];
    Ok((
        "durable appends by tasks on the shard (embedded Log, single node, no network)".to_string(),
        serde_json::to_value(options)?,
        notes,
    ))
}

/// The `engine-handle` scenario's description, parameters and notes for the report.
pub fn describe_handle(
    options: &EngineAppendOptions,
) -> anyhow::Result<(String, serde_json::Value, Vec<String>)> {
    let notes = vec![format!(
        "closed loop, {} appends of {} × {} B records outstanding from one driver thread \
         through EngineHandle (mailbox in, completion channel out); {}",
        options.appenders,
        options.records_per_append,
        options.record_size_bytes,
        common_note(options)
    )];
    Ok((
        "durable appends through EngineHandle from another thread (single node, no network)"
            .to_string(),
        serde_json::to_value(options)?,
        notes,
    ))
}

fn common_note(options: &EngineAppendOptions) -> String {
    format!(
        "1 shard ({} pinning), executor {}; durable = fdatasync completed before the answer; \
         a fresh engine per round (the log reopens and recovers the previous round's files)",
        Pinning::Auto,
        if options.spin { "spins before parking" } else { "parks when idle" }
    )
}

fn engine_config(options: &EngineAppendOptions, dir: &Path) -> EngineConfig {
    let mut config = EngineConfig::new(dir.join("data"));
    config.io_memory_bytes = options.io_memory_bytes;
    config.spin = options.spin;
    config.command_queue_max = options.appenders.max(1) * 2;
    config.log.segment_size_bytes = options.segment_size_bytes;
    config.log.flush_bytes_max = options.flush_bytes_max;
    config.log.queued_bytes_max = options.queued_bytes_max;
    config.log.flushes_in_flight_max = options.flushes_in_flight_max;
    config
}

fn build_records(options: &EngineAppendOptions, log: &LogConfig) -> anyhow::Result<Records> {
    let mut value = vec![0u8; options.record_size_bytes];
    fill_pattern(&mut value);
    let mut builder = RecordsBuilder::new(log.batch_size_max);
    for _ in 0..options.records_per_append {
        builder.push(&value).map_err(|error| anyhow::anyhow!("building the batch: {error}"))?;
    }
    Ok(builder.finish())
}

/// Engine counters and process CPU time at one moment (or their change over a window).
#[derive(Debug, Clone, Copy, Default)]
struct Counters {
    bytes_written: u64,
    fdatasyncs: u64,
    spares_filled: u64,
    cpu: Duration,
}

impl Counters {
    fn since(self, start: Counters) -> Counters {
        Counters {
            bytes_written: self.bytes_written.saturating_sub(start.bytes_written),
            fdatasyncs: self.fdatasyncs.saturating_sub(start.fdatasyncs),
            spares_filled: self.spares_filled.saturating_sub(start.spares_filled),
            cpu: self.cpu.saturating_sub(start.cpu),
        }
    }
}

/// Samples the engine's device counters and the process CPU time when the measured window
/// opens (end of warm-up) and when it closes, from a helper thread, so the drain of the last
/// outstanding appends is not counted.
struct MeasuredWindow {
    sampler: std::thread::JoinHandle<anyhow::Result<Counters>>,
}

/// How often the sampler checks the stop flag while the window is open.
const SAMPLER_TICK: Duration = Duration::from_millis(20);

impl MeasuredWindow {
    fn new(
        engine: &EngineHandle,
        warmup: Duration,
        duration: Duration,
        stop: &StopFlag,
    ) -> MeasuredWindow {
        let engine = engine.clone();
        let stop = stop.clone();
        let opens_at = Instant::now() + warmup;
        let closes_at = opens_at + duration;
        let sampler = std::thread::spawn(move || {
            sleep_until(opens_at, &stop);
            let start = sample(&engine)?;
            sleep_until(closes_at, &stop);
            Ok(sample(&engine)?.since(start))
        });
        MeasuredWindow { sampler }
    }

    fn finish(self) -> anyhow::Result<Counters> {
        self.sampler.join().map_err(|_| anyhow::anyhow!("counter sampler panicked"))?
    }
}

fn sleep_until(deadline: Instant, stop: &StopFlag) {
    while !stop.is_raised() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        std::thread::sleep(left.min(SAMPLER_TICK));
    }
}

fn sample(engine: &EngineHandle) -> anyhow::Result<Counters> {
    let total = engine.stats().context("engine stats")?.total();
    Ok(Counters {
        bytes_written: total.bytes_written,
        fdatasyncs: total.fdatasyncs,
        spares_filled: total.spares_filled,
        cpu: process_cpu_time(),
    })
}
