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
//! Steady state: like raw-disk's recycled file, the log is measured at its retention bound.
//! A task on the shard applies retention (`Log::apply_retention(now, durable_index + 1)`) after
//! every segment roll, and the measured window opens only once the warm-up time has passed
//! *and* retention has deleted a segment and the log rolled `STEADY_ROLLS` more times since
//! (so spares come from deleted segments when `LogConfig::recycle_segments` is on), bounded by
//! `warmup_timeout` (the row's note says when it was hit). `retention_bytes == 0` measures an
//! unbounded, growing log instead (every spare zero-filled, the window opens after `warmup`).
//!
//! Expectation (back of envelope): once per-append CPU is well under the device time per
//! flush, both models approach the raw-disk rate at the same write size times the record
//! share of each batch (1024 of 1096 bytes at 1 KiB records, about 93%).

use std::cell::{Cell, RefCell};
use std::path::Path;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
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

use crate::load::{drive_closed_loop_gated, AsyncTarget, ClosedLoop, WindowGate};
use crate::measure::{process_cpu_time, serialize_secs, LatencyRecorder, RunMeasure};
use crate::raw_disk::fill_pattern;
use crate::workdir::StopFlag;

/// Longest wait for one append's completion before the run is declared stuck.
const APPEND_TIMEOUT: Duration = Duration::from_secs(30);
/// Default appends outstanding: 256 × 16 records × ~1 KiB ≈ 4.3 MB waiting, about four 1 MiB
/// flushes, so the default two flushes in flight both stay busy (design: saturate the log)
/// without reaching the default 16 MiB `queued_bytes_max`. With `--records-per-append 1`, raise
/// it (`--appenders 2048`: ~2.2 MB waiting).
pub const APPENDERS_DEFAULT: usize = 256;

/// Default records per append: 16, the batch a producer sends — the same as the cluster
/// scenarios' `--records-per-batch` default, so every row measures the same workload. One
/// record per append measures the engine's per-append CPU instead (bench/README.md).
pub const RECORDS_PER_APPEND_DEFAULT: usize = 16;

/// How often the retention task on the shard looks for a new segment roll.
const RETENTION_TICK: Duration = Duration::from_millis(5);

/// Segment rolls after retention's first deletion before the log counts as in steady state:
/// the spare being prepared when retention first deleted was still a new one; the next is a
/// deleted segment (with recycling on).
const STEADY_ROLLS: u64 = 2;

/// Default retention bound in segments (`retention_bytes = this × segment_size_bytes`).
pub const RETENTION_SEGMENTS_DEFAULT: u64 = 2;

/// Default longest warm-up while waiting for the steady state.
pub const WARMUP_TIMEOUT_DEFAULT: Duration = Duration::from_secs(60);

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
    /// `LogConfig::retention_bytes_max`, applied while appending; 0 = unlimited (no retention,
    /// the log grows and every spare is zero-filled).
    pub retention_bytes: u64,
    /// Longest warm-up while waiting for the steady state (retention deleting segments).
    #[serde(serialize_with = "serialize_secs")]
    pub warmup_timeout: Duration,
}

impl Default for EngineAppendOptions {
    fn default() -> Self {
        let log = LogConfig::default();
        EngineAppendOptions {
            appenders: APPENDERS_DEFAULT,
            record_size_bytes: 1024,
            records_per_append: RECORDS_PER_APPEND_DEFAULT,
            segment_size_bytes: log.segment_size_bytes,
            flush_bytes_max: log.flush_bytes_max,
            queued_bytes_max: log.queued_bytes_max,
            flushes_in_flight_max: log.flushes_in_flight_max,
            io_memory_bytes: ringlog_engine::shard::IO_MEMORY_DEFAULT_BYTES,
            spin: false,
            retention_bytes: RETENTION_SEGMENTS_DEFAULT * log.segment_size_bytes,
            warmup_timeout: WARMUP_TIMEOUT_DEFAULT,
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

/// One measured round of an engine scenario.
#[derive(Debug)]
pub struct EngineRound {
    pub measure: RunMeasure,
    pub window: WindowReport,
}

/// How the measured window of one round was reached, and what the log did inside it.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct WindowReport {
    /// Time from the engine's start to the window's opening.
    #[serde(serialize_with = "serialize_secs")]
    pub warmup: Duration,
    /// False if `warmup_timeout` opened the window before retention reached its steady state.
    pub steady: bool,
    /// Segments rolled inside the window (spares taken).
    pub segments_rolled: u64,
    /// Spares zero-filled inside the window.
    pub spares_filled: u64,
    /// Spares prepared by recycling a segment retention deleted, inside the window.
    pub spares_recycled: u64,
}

/// `engine-handle`: starts an engine on `dir` (re-opening the log a previous round left
/// there), runs the closed loop from this thread through `EngineHandle` (retention applied on
/// the shard through `run_with_log`) until the window after the warm-up closes, shuts the
/// engine down and returns the measured window.
pub fn measure_handle(
    options: &EngineAppendOptions,
    dir: &Path,
    duration: Duration,
    warmup: Duration,
    stop: &StopFlag,
) -> anyhow::Result<EngineRound> {
    let config = engine_config(options, dir);
    let engine = Engine::start(config.clone()).context("starting the engine")?;
    let records = build_records(options, &config.log)?;
    let progress = Arc::new(RetentionProgress::new(options.retention_bytes == 0));
    let retention = start_retention_on_shard(&engine, options, &progress);
    let (replies, completions) = crossbeam_channel::bounded(options.appenders);
    let mut target = EngineTarget { engine: engine.clone(), records, replies, completions };
    let load = ClosedLoop {
        concurrency: options.appenders,
        duration,
        warmup,
        drain_timeout: APPEND_TIMEOUT,
    };

    // Counters are sampled when the measured window opens (after the warm-up) and closes.
    let gate = Arc::new(WindowGate::pending());
    let window = MeasuredWindow::new(&engine, &gate, &progress, options, warmup, duration, stop);
    let outcome = match &retention {
        Ok(_) => drive_closed_loop_gated(&load, &gate, &mut target, stop),
        Err(_) => Ok(Default::default()),
    };
    progress.finish();
    let window = window.finish();
    let retained = retention.and_then(|done| {
        done.recv_timeout(APPEND_TIMEOUT).context("the retention task did not finish")?
    });
    drop(target);
    let shutdown = engine.shutdown().context("shutting the engine down");
    let outcome = outcome?;
    let (counters, report) = window?;
    retained?;
    shutdown?;

    let measure =
        run_measure(options, outcome.completed, outcome.elapsed, outcome.latency, counters);
    Ok(EngineRound { measure, window: report })
}

/// Spawns the retention task on the shard for `engine-handle`; its result arrives on the
/// returned channel once `progress.finish()` was called.
fn start_retention_on_shard(
    engine: &EngineHandle,
    options: &EngineAppendOptions,
    progress: &Arc<RetentionProgress>,
) -> anyhow::Result<Receiver<anyhow::Result<()>>> {
    let (done, result) = crossbeam_channel::bounded(1);
    if options.retention_bytes == 0 {
        let _ = done.send(Ok(()));
        return Ok(result);
    }
    let progress = progress.clone();
    engine
        .run_with_log(PartitionId(0), move |log| async move {
            let _ = done.send(apply_retention_while_appending(log, progress).await);
        })
        .context("starting the retention task on the shard")?;
    Ok(result)
}

/// `engine`: starts an engine on `dir`, runs `appenders` producer tasks on the shard's own
/// executor (each: append, await durability, repeat) and the retention task beside them until
/// the window after the warm-up closes, shuts the engine down and returns the measured window.
pub fn measure(
    options: &EngineAppendOptions,
    dir: &Path,
    duration: Duration,
    warmup: Duration,
    stop: &StopFlag,
) -> anyhow::Result<EngineRound> {
    if options.appenders == 0 || options.appenders > crate::load::CONCURRENCY_MAX {
        bail!("appenders {} outside 1..={}", options.appenders, crate::load::CONCURRENCY_MAX);
    }
    let config = engine_config(options, dir);
    let engine = Engine::start(config.clone()).context("starting the engine")?;
    let records = build_records(options, &config.log)?;
    let gate = Arc::new(WindowGate::pending());
    let progress = Arc::new(RetentionProgress::new(options.retention_bytes == 0));
    let plan = ProducerPlan {
        appenders: options.appenders,
        gate: gate.clone(),
        retention: (options.retention_bytes > 0).then(|| progress.clone()),
        stop: stop.clone(),
    };
    let (done, outcome) = crossbeam_channel::bounded(1);
    let window = MeasuredWindow::new(&engine, &gate, &progress, options, warmup, duration, stop);
    let spawned = engine.run_with_log(PartitionId(0), move |log| async move {
        let _ = done.send(run_producers(log, records, plan).await);
    });
    let outcome = spawned.context("starting the producers on the shard").and_then(|()| {
        outcome
            .recv_timeout(options.warmup_timeout.max(warmup) + duration + APPEND_TIMEOUT)
            .context("the producers on the shard did not finish")
    });
    progress.finish();
    let window = window.finish();
    let shutdown = engine.shutdown().context("shutting the engine down");
    let outcome = outcome?;
    let (counters, report) = window?;
    shutdown?;
    if let Some(error) = outcome.error {
        bail!("append failed: {error}");
    }
    let measure =
        run_measure(options, outcome.completed, outcome.elapsed, outcome.latency, counters);
    Ok(EngineRound { measure, window: report })
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

/// Where the retention task and the window sampler meet (the task on the shard, the sampler
/// on its own thread).
#[derive(Debug)]
struct RetentionProgress {
    /// Retention has deleted a segment and the log rolled `STEADY_ROLLS` times since (or
    /// there is no retention bound: the steady state is the growing log).
    steady: AtomicBool,
    /// The load is over: the retention task ends.
    finished: AtomicBool,
}

impl RetentionProgress {
    fn new(steady: bool) -> RetentionProgress {
        RetentionProgress { steady: AtomicBool::new(steady), finished: AtomicBool::new(false) }
    }

    fn is_steady(&self) -> bool {
        self.steady.load(Ordering::Acquire)
    }

    fn finish(&self) {
        self.finished.store(true, Ordering::Release);
    }

    fn is_finished(&self) -> bool {
        self.finished.load(Ordering::Acquire)
    }
}

/// Applies retention after every segment roll (checked every `RETENTION_TICK`) until
/// `progress.finish()`, and marks the steady state once retention deleted a segment and the
/// log rolled `STEADY_ROLLS` more times.
async fn apply_retention_while_appending(
    log: Rc<Log>,
    progress: Arc<RetentionProgress>,
) -> anyhow::Result<()> {
    let mut rolls_seen = None;
    let mut rolls_at_first_deletion = None;
    while !progress.is_finished() {
        let rolled = log.stats().segments_rolled;
        if rolls_seen != Some(rolled) {
            rolls_seen = Some(rolled);
            let deletable_below = log.durable_index().next();
            let report = log
                .apply_retention(now_unix_ms(), deletable_below)
                .await
                .context("applying retention")?;
            if report.segments_deleted > 0 && rolls_at_first_deletion.is_none() {
                rolls_at_first_deletion = Some(rolled);
            }
        }
        if rolls_at_first_deletion.is_some_and(|first| rolled >= first + STEADY_ROLLS) {
            progress.steady.store(true, Ordering::Release);
        }
        glommio::timer::sleep(RETENTION_TICK).await;
    }
    Ok(())
}

/// What the in-shard producers are told.
struct ProducerPlan {
    appenders: usize,
    gate: Arc<WindowGate>,
    /// The retention task runs beside the producers (`None`: unlimited retention).
    retention: Option<Arc<RetentionProgress>>,
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

/// Runs `plan.appenders` producer tasks (and the retention task) on the current (shard)
/// executor until the measured window closes, then waits for each one's last append and
/// reports.
async fn run_producers(log: Rc<Log>, records: Records, plan: ProducerPlan) -> ProducerOutcome {
    let retention = plan.retention.clone().map(|progress| {
        glommio::spawn_local(apply_retention_while_appending(log.clone(), progress))
    });
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
    // The window may never have opened (stop flag, failure): end the retention task anyway.
    if let Some(progress) = &shared.plan.retention {
        progress.finish();
    }
    if let Some(task) = retention {
        if let Err(error) = task.await {
            shared.error.borrow_mut().get_or_insert_with(|| format!("{error:#}"));
        }
    }
    let elapsed = shared.plan.gate.elapsed(Instant::now());
    let error = shared.error.borrow_mut().take();
    ProducerOutcome {
        completed: shared.completed.get(),
        elapsed,
        latency: shared.latency.replace(LatencyRecorder::new()),
        error,
    }
}

/// One producer: append, await durability, record, repeat until the window closes.
///
/// One clock read per append: the completion time of one append is the submission time of
/// the next (nothing runs in between), and the record timestamp is derived from it.
async fn produce(shared: Rc<ProducerShared>) {
    let plan = &shared.plan;
    let clock = UnixClock::new();
    let mut submitted = Instant::now();
    loop {
        if plan.gate.closed(submitted) || plan.stop.is_raised() || shared.error.borrow().is_some() {
            return;
        }
        let log = &shared.log;
        let timestamp_ms = clock.unix_ms_at(submitted);
        let request = AppendRequest::data(log.last_term(), shared.records.clone(), timestamp_ms);
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
        if plan.gate.counts(submitted, now) {
            shared.latency.borrow_mut().record(now - submitted);
            shared.completed.set(shared.completed.get() + 1);
        }
        submitted = now;
    }
}

/// Unix time in ms derived from `Instant`s (no wall-clock read per append).
struct UnixClock {
    origin: Instant,
    origin_unix_ms: i64,
}

impl UnixClock {
    fn new() -> UnixClock {
        UnixClock { origin: Instant::now(), origin_unix_ms: now_unix_ms() }
    }

    fn unix_ms_at(&self, at: Instant) -> i64 {
        let since = at.saturating_duration_since(self.origin).as_millis();
        self.origin_unix_ms.saturating_add(i64::try_from(since).unwrap_or(i64::MAX))
    }
}

fn now_unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// The `engine` scenario's description, parameters and notes for the report (`windows`: one
/// per measured round).
pub fn describe(
    options: &EngineAppendOptions,
    windows: &[WindowReport],
) -> anyhow::Result<(String, serde_json::Value, Vec<String>)> {
    let mut notes = vec![format!(
        "closed loop, {} producer tasks on the shard's executor, each keeping one append of \
         {} × {} B records outstanding (Log::append, then await Durable); {}",
        options.appenders,
        options.records_per_append,
        options.record_size_bytes,
        common_note(options)
    )];
    notes.extend(window_notes(options, windows));
    Ok((
        "durable appends by tasks on the shard (embedded Log, single node, no network)".to_string(),
        serde_json::to_value(options)?,
        notes,
    ))
}

/// The `engine-handle` scenario's description, parameters and notes for the report.
pub fn describe_handle(
    options: &EngineAppendOptions,
    windows: &[WindowReport],
) -> anyhow::Result<(String, serde_json::Value, Vec<String>)> {
    let mut notes = vec![format!(
        "closed loop, {} appends of {} × {} B records outstanding from one driver thread \
         through EngineHandle (mailbox in, completion channel out); {}",
        options.appenders,
        options.records_per_append,
        options.record_size_bytes,
        common_note(options)
    )];
    notes.extend(window_notes(options, windows));
    Ok((
        "durable appends through EngineHandle from another thread (single node, no network)"
            .to_string(),
        serde_json::to_value(options)?,
        notes,
    ))
}

fn common_note(options: &EngineAppendOptions) -> String {
    let config = engine_config(options, Path::new("."));
    let retention = if options.retention_bytes == 0 {
        "no retention (the log grows: every spare is zero-filled)".to_string()
    } else {
        format!(
            "retention_bytes_max {} MiB applied on the shard after every segment roll \
             (recycle_segments = {})",
            options.retention_bytes >> 20,
            config.log.recycle_segments
        )
    };
    format!(
        "1 shard ({} pinning), executor {}; durable = fdatasync completed before the answer; \
         flushes_in_flight_max {}; {retention}; a fresh engine per round (the log reopens and \
         recovers the previous round's files)",
        Pinning::Auto,
        if options.spin { "spins before parking" } else { "parks when idle" },
        options.flushes_in_flight_max,
    )
}

/// Per round: the warm-up it took to reach the steady state, and the spares taken inside the
/// window (zero-filled inside it, or taken without a zero-fill inside it: recycled from a
/// deleted segment, or prepared before the window opened).
fn window_notes(options: &EngineAppendOptions, windows: &[WindowReport]) -> Vec<String> {
    if windows.is_empty() {
        return Vec::new();
    }
    let warmups: Vec<String> = windows
        .iter()
        .map(|w| {
            format!("{:.1} s{}", w.warmup.as_secs_f64(), if w.steady { "" } else { " (timeout)" })
        })
        .collect();
    let rolled: u64 = windows.iter().map(|w| w.segments_rolled).sum();
    let filled: u64 = windows.iter().map(|w| w.spares_filled).sum();
    let recycled: u64 = windows.iter().map(|w| w.spares_recycled).sum();
    let mut notes = vec![format!(
        "warm-up per round until {}: [{}]",
        if options.retention_bytes == 0 {
            "the warm-up time passed".to_string()
        } else {
            format!(
                "retention deleted a segment and the log rolled {STEADY_ROLLS} more times \
                 (timeout {:.0} s)",
                options.warmup_timeout.as_secs_f64()
            )
        },
        warmups.join(", ")
    )];
    notes.push(format!(
        "inside the measured windows: {rolled} segments rolled, {filled} spares zero-filled, \
         {recycled} spares recycled (one 4 KiB header write each instead of a zero-fill)"
    ));
    if windows.iter().any(|w| !w.steady) {
        notes.push(
            "NOT steady state in every round: raise --engine-warmup-timeout-secs".to_string(),
        );
    }
    notes
}

fn engine_config(options: &EngineAppendOptions, dir: &Path) -> EngineConfig {
    let mut config = EngineConfig::new(dir.join("data"));
    config.io_memory_bytes = options.io_memory_bytes;
    config.spin = options.spin;
    config.command_queue_max = options.appenders.max(1) * 2;
    config.log.segment_size_bytes = options.segment_size_bytes;
    config.log.flush_bytes_max = options.flush_bytes_max;
    config.log.queued_bytes_max = options.queued_bytes_max;
    config.log.retention_bytes_max =
        (options.retention_bytes > 0).then_some(options.retention_bytes);
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
    segments_rolled: u64,
    spares_filled: u64,
    spares_recycled: u64,
    cpu: Duration,
}

impl Counters {
    fn since(self, start: Counters) -> Counters {
        Counters {
            bytes_written: self.bytes_written.saturating_sub(start.bytes_written),
            fdatasyncs: self.fdatasyncs.saturating_sub(start.fdatasyncs),
            segments_rolled: self.segments_rolled.saturating_sub(start.segments_rolled),
            spares_filled: self.spares_filled.saturating_sub(start.spares_filled),
            spares_recycled: self.spares_recycled.saturating_sub(start.spares_recycled),
            cpu: self.cpu.saturating_sub(start.cpu),
        }
    }
}

/// Decides when the measured window opens (after `warmup`, once retention reached its steady
/// state or `warmup_timeout` passed), opens the gate, and samples the engine's device
/// counters and the process CPU time at the opening and at the closing, from a helper thread,
/// so the drain of the last outstanding appends is not counted.
struct MeasuredWindow {
    sampler: std::thread::JoinHandle<anyhow::Result<(Counters, WindowReport)>>,
}

/// How often the sampler checks the stop flag and the steady state.
const SAMPLER_TICK: Duration = Duration::from_millis(20);

impl MeasuredWindow {
    fn new(
        engine: &EngineHandle,
        gate: &Arc<WindowGate>,
        progress: &Arc<RetentionProgress>,
        options: &EngineAppendOptions,
        warmup: Duration,
        duration: Duration,
        stop: &StopFlag,
    ) -> MeasuredWindow {
        let engine = engine.clone();
        let gate = gate.clone();
        let progress = progress.clone();
        let stop = stop.clone();
        let started = Instant::now();
        let warmup_until = started + warmup;
        let give_up_at = started + options.warmup_timeout.max(warmup);
        let sampler = std::thread::spawn(move || {
            let sampled = (|| {
                // `finished` before the window opened: the load ended early (an error).
                let ended = || progress.is_finished();
                sleep_until(warmup_until, &stop, ended);
                sleep_until(give_up_at, &stop, || progress.is_steady() || ended());
                let steady = progress.is_steady();
                let start = sample(&engine)?;
                let (opens, closes) = gate.open_now(duration);
                sleep_until(closes, &stop, ended);
                let counters = sample(&engine)?.since(start);
                let report = WindowReport {
                    warmup: opens.saturating_duration_since(started),
                    steady,
                    segments_rolled: counters.segments_rolled,
                    spares_filled: counters.spares_filled,
                    spares_recycled: counters.spares_recycled,
                };
                Ok((counters, report))
            })();
            // Whatever happened, the window is decided so that the appenders stop.
            gate.open_now(Duration::ZERO);
            sampled
        });
        MeasuredWindow { sampler }
    }

    fn finish(self) -> anyhow::Result<(Counters, WindowReport)> {
        self.sampler.join().map_err(|_| anyhow::anyhow!("counter sampler panicked"))?
    }
}

/// Sleeps until `deadline`, the stop flag, or `done()`.
fn sleep_until(deadline: Instant, stop: &StopFlag, done: impl Fn() -> bool) {
    while !stop.is_raised() && !done() {
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
        segments_rolled: total.segments_rolled,
        spares_filled: total.spares_filled,
        spares_recycled: total.spares_recycled,
        cpu: process_cpu_time(),
    })
}
