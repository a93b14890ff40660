//! Producers: N load threads, each with its own blocking connection, driven closed- or
//! open-loop, their latency histograms and timelines merged at the end.
//!
//! Why threads with blocking clients: the cluster's Rust client is blocking (one request at a
//! time per connection, or a pipeline of them with `--pipeline`), a blocked thread sleeps in the kernel (no busy-spin on a 2-core
//! machine that also runs three nodes), and a few hundred threads of 256 KiB stacks cost
//! little. Driving frames from a glommio executor instead would duplicate the client's
//! routing and retry logic for no measurable gain at these rates.
//!
//! Closed loop: a producer sends its next batch as soon as the previous one is acknowledged;
//! a record's latency runs from the send. Open loop: records arrive on an [`OpenSchedule`]; a
//! record's latency runs from its intended arrival, so a producer that falls behind (because
//! the system stalled) records the full delay of every record it could not send on time.
//!
//! Invariants: every thread starts measuring at the same instant (after a common warm-up);
//! only completions inside the measured window count toward throughput, but an open loop
//! also records the latency of every record that arrived inside the window and completed
//! after it (bounded by `drain_max`; records still unsent then are recorded with the delay
//! they had reached and counted as `unsent`). Threads are joined before returning.

use std::collections::VecDeque;
use std::sync::{Barrier, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde::Serialize;

use crate::load::{LoadModel, OpenSchedule};
use crate::measure::{LatencyRecorder, Timeline};
use crate::workdir::StopFlag;

/// Most producer threads one run starts.
pub const PRODUCERS_MAX: usize = 4096;
/// Stack of a producer thread (they only format records and wait on a socket).
const PRODUCER_STACK_BYTES: usize = 256 * 1024;
/// Most completion instants kept per producer for the failover analysis.
pub const COMPLETIONS_KEPT_MAX: usize = 1 << 20;

/// One producer: sends batches and blocks until each is acknowledged.
pub trait Producer: Send {
    /// Sends one batch of `records` records (retrying transient failures itself); returns
    /// how many failed attempts it retried before the acknowledgement.
    fn send(&mut self, records: usize) -> anyhow::Result<u64>;

    /// A pipelined producer (`ProducerRun::pipeline_depth` > 1): sends one batch of
    /// `records` records without waiting for its acknowledgement.
    fn start(&mut self, records: usize) -> anyhow::Result<()> {
        let _ = records;
        anyhow::bail!("this producer keeps one batch in flight only")
    }

    /// Waits for the oldest started batch to be acknowledged (retrying transient failures
    /// itself); returns how many failed attempts it retried.
    fn finish_oldest(&mut self) -> anyhow::Result<u64> {
        anyhow::bail!("this producer keeps one batch in flight only")
    }
}

/// Builds producer `index` (connecting it) on its own thread.
pub type ProducerFactory<'a> = dyn Fn(usize) -> anyhow::Result<Box<dyn Producer>> + Sync + 'a;

/// A task run beside the producers with the measured window's start and end (a fault
/// injection: kill or pause a node mid-run).
pub type SideTask<'a> = dyn Fn(Instant, Instant) -> anyhow::Result<()> + Sync + 'a;

/// Parameters of one producer run.
#[derive(Debug, Clone, Serialize)]
pub struct ProducerRun {
    pub model: LoadModel,
    pub producers: usize,
    pub records_per_batch: usize,
    /// Open loop: longest a batch waits for more records after its first one arrived.
    #[serde(serialize_with = "serialize_secs")]
    pub linger: Duration,
    pub record_size_bytes: usize,
    #[serde(serialize_with = "serialize_secs")]
    pub duration: Duration,
    #[serde(serialize_with = "serialize_secs")]
    pub warmup: Duration,
    /// Width of a timeline interval.
    #[serde(serialize_with = "serialize_secs")]
    pub timeline_interval: Duration,
    /// Open loop: how long after the window the backlog may still be sent.
    #[serde(serialize_with = "serialize_secs")]
    pub drain_max: Duration,
    /// Keep every completion instant per producer (failover analysis).
    #[serde(skip)]
    pub keep_completions: bool,
    /// Closed loop: batches each producer keeps in flight (1: send, wait, send again; more:
    /// [`Producer::start`] until that many are in flight, then [`Producer::finish_oldest`]).
    pub pipeline_depth: usize,
}

/// What a producer run measured.
#[derive(Debug)]
pub struct ProducerOutcome {
    /// Records acknowledged inside the measured window.
    pub records: u64,
    pub batches: u64,
    pub bytes: u64,
    /// Failed attempts retried by the producers.
    pub errors: u64,
    /// Open loop: records that arrived in the window but were never sent (drain exceeded).
    pub unsent: u64,
    pub elapsed: Duration,
    /// Per-record latency (see the module doc for where it starts).
    pub latency: LatencyRecorder,
    pub timeline: Timeline,
    /// Per producer: completion instants relative to the window start (when kept).
    pub completions: Vec<Vec<Duration>>,
    /// The first error that ended a producer, if any.
    pub failure: Option<String>,
}

/// What one thread measured.
struct ThreadOutcome {
    records: u64,
    batches: u64,
    errors: u64,
    unsent: u64,
    latency: LatencyRecorder,
    timeline: Timeline,
    completions: Vec<Duration>,
    failure: Option<String>,
}

/// The measured window, shared by every thread.
#[derive(Clone, Copy)]
struct Window {
    origin: Instant,
    from: Instant,
    until: Instant,
}

/// Runs `run.producers` threads built by `make`, plus `side` (if any) on its own thread,
/// and merges what they measured.
pub fn drive_producers(
    run: &ProducerRun,
    make: &ProducerFactory<'_>,
    side: Option<&SideTask<'_>>,
    stop: &StopFlag,
) -> anyhow::Result<ProducerOutcome> {
    if run.producers == 0 || run.producers > PRODUCERS_MAX {
        anyhow::bail!("producers {} outside 1..={PRODUCERS_MAX}", run.producers);
    }
    let depth_max = ringlog_net::limits::PIPELINE_REQUESTS_MAX;
    if run.pipeline_depth == 0 || run.pipeline_depth > depth_max {
        anyhow::bail!("pipeline depth {} outside 1..={depth_max}", run.pipeline_depth);
    }
    if run.pipeline_depth > 1 && run.model != LoadModel::Closed {
        anyhow::bail!("a pipeline depth applies to the closed loop only");
    }
    if run.records_per_batch == 0 {
        anyhow::bail!("a batch needs at least one record");
    }
    let barrier = Barrier::new(run.producers + 1);
    let window: Mutex<Option<Window>> = Mutex::new(None);
    let side_result: Mutex<anyhow::Result<()>> = Mutex::new(Ok(()));
    let outcomes = std::thread::scope(|scope| -> anyhow::Result<Vec<ThreadOutcome>> {
        let mut handles = Vec::with_capacity(run.producers);
        for index in 0..run.producers {
            let (barrier, window) = (&barrier, &window);
            let handle = std::thread::Builder::new()
                .name(format!("producer-{index}"))
                .stack_size(PRODUCER_STACK_BYTES)
                .spawn_scoped(scope, move || {
                    let producer = make(index);
                    barrier.wait();
                    let window = window.lock().expect("window lock").expect("window set");
                    match producer {
                        Ok(producer) => run_thread(run, index, producer, window, stop),
                        Err(error) => ThreadOutcome::failed(run, format!("{error:#}")),
                    }
                })
                .context("spawning a producer thread")?;
            handles.push(handle);
        }
        // Every producer is connected: the window starts for all at once.
        {
            let origin = Instant::now() + Duration::from_millis(5);
            let from = origin + run.warmup;
            *window.lock().expect("window lock") =
                Some(Window { origin, from, until: from + run.duration });
        }
        barrier.wait();
        let w = window.lock().expect("window lock").expect("window set");
        let side_handle = side.map(|side| {
            let side_result = &side_result;
            scope.spawn(move || {
                let result = side(w.from, w.until);
                *side_result.lock().expect("side lock") = result;
            })
        });
        let mut outcomes = Vec::with_capacity(handles.len());
        for handle in handles {
            outcomes.push(handle.join().map_err(|_| anyhow::anyhow!("a producer panicked"))?);
        }
        if let Some(handle) = side_handle {
            handle.join().map_err(|_| anyhow::anyhow!("the side task panicked"))?;
        }
        Ok(outcomes)
    })?;
    std::mem::replace(&mut *side_result.lock().expect("side lock"), Ok(()))
        .context("fault injection during the run")?;
    Ok(merge(run, outcomes, stop))
}

fn merge(run: &ProducerRun, outcomes: Vec<ThreadOutcome>, stop: &StopFlag) -> ProducerOutcome {
    let mut merged = ProducerOutcome {
        records: 0,
        batches: 0,
        bytes: 0,
        errors: 0,
        unsent: 0,
        elapsed: run.duration,
        latency: LatencyRecorder::new(),
        timeline: Timeline::new(run.timeline_interval),
        completions: Vec::new(),
        failure: None,
    };
    for outcome in outcomes {
        merged.records += outcome.records;
        merged.batches += outcome.batches;
        merged.errors += outcome.errors;
        merged.unsent += outcome.unsent;
        merged.latency.merge(&outcome.latency);
        merged.timeline.merge(&outcome.timeline);
        merged.completions.push(outcome.completions);
        if merged.failure.is_none() {
            merged.failure = outcome.failure;
        }
    }
    merged.bytes = merged.records * run.record_size_bytes as u64;
    if stop.is_raised() {
        // Interrupted: the window ended early; the timeline tells how far it got.
        let filled =
            merged.timeline.points(run.duration).iter().rposition(|p| p.records_per_sec > 0.0);
        merged.elapsed = filled.map_or(Duration::ZERO, |last| {
            (run.timeline_interval * (last as u32 + 1)).min(run.duration)
        });
    }
    merged
}

impl ThreadOutcome {
    fn new(run: &ProducerRun) -> ThreadOutcome {
        ThreadOutcome {
            records: 0,
            batches: 0,
            errors: 0,
            unsent: 0,
            latency: LatencyRecorder::new(),
            timeline: Timeline::new(run.timeline_interval),
            completions: Vec::new(),
            failure: None,
        }
    }

    fn failed(run: &ProducerRun, reason: String) -> ThreadOutcome {
        ThreadOutcome { failure: Some(reason), ..ThreadOutcome::new(run) }
    }

    /// Counts `count` records completed at `done`, each with `latency`.
    fn complete(
        &mut self,
        run: &ProducerRun,
        window: Window,
        count: usize,
        done: Instant,
        latency: Duration,
    ) {
        self.latency.record_n(latency, count as u64);
        if done >= window.from {
            let at = done - window.from;
            self.timeline.record(at, count as u64, (count * run.record_size_bytes) as u64, latency);
            if done <= window.until {
                self.records += count as u64;
                self.batches += 1;
            }
            if run.keep_completions && self.completions.len() < COMPLETIONS_KEPT_MAX {
                self.completions.push(at);
            }
        }
    }
}

fn run_thread(
    run: &ProducerRun,
    index: usize,
    mut producer: Box<dyn Producer>,
    window: Window,
    stop: &StopFlag,
) -> ThreadOutcome {
    let mut outcome = ThreadOutcome::new(run);
    sleep_until(window.origin, stop);
    let result = match run.model {
        LoadModel::Closed if run.pipeline_depth > 1 => {
            closed_loop_pipelined(run, producer.as_mut(), window, stop, &mut outcome)
        }
        LoadModel::Closed => closed_loop(run, producer.as_mut(), window, stop, &mut outcome),
        LoadModel::Open { rate_records_per_sec } => OpenSchedule::new(
            rate_records_per_sec,
            index,
            run.producers,
            run.records_per_batch,
            run.linger,
        )
        .and_then(|schedule| {
            open_loop(run, schedule, producer.as_mut(), window, stop, &mut outcome)
        }),
    };
    if let Err(error) = result {
        outcome.failure = Some(format!("{error:#}"));
    }
    outcome
}

fn closed_loop(
    run: &ProducerRun,
    producer: &mut dyn Producer,
    window: Window,
    stop: &StopFlag,
    outcome: &mut ThreadOutcome,
) -> anyhow::Result<()> {
    while !stop.is_raised() {
        let sent = Instant::now();
        if sent >= window.until {
            break;
        }
        outcome.errors += producer.send(run.records_per_batch)?;
        let done = Instant::now();
        if sent >= window.from {
            outcome.complete(run, window, run.records_per_batch, done, done - sent);
        }
    }
    Ok(())
}

/// The closed loop with `run.pipeline_depth` batches in flight: start batches until the
/// depth is reached, then wait for the oldest; a batch's latency runs from its start to its
/// acknowledgement.
fn closed_loop_pipelined(
    run: &ProducerRun,
    producer: &mut dyn Producer,
    window: Window,
    stop: &StopFlag,
    outcome: &mut ThreadOutcome,
) -> anyhow::Result<()> {
    let mut in_flight: VecDeque<Instant> = VecDeque::with_capacity(run.pipeline_depth);
    loop {
        while in_flight.len() < run.pipeline_depth && !stop.is_raised() {
            let sent = Instant::now();
            if sent >= window.until {
                break;
            }
            producer.start(run.records_per_batch)?;
            in_flight.push_back(sent);
        }
        let Some(sent) = in_flight.pop_front() else { return Ok(()) };
        outcome.errors += producer.finish_oldest()?;
        let done = Instant::now();
        if sent >= window.from {
            outcome.complete(run, window, run.records_per_batch, done, done - sent);
        }
    }
}

fn open_loop(
    run: &ProducerRun,
    mut schedule: OpenSchedule,
    producer: &mut dyn Producer,
    window: Window,
    stop: &StopFlag,
    outcome: &mut ThreadOutcome,
) -> anyhow::Result<()> {
    let end = window.until - window.origin;
    let warmup_end = window.from - window.origin;
    let give_up = window.until + run.drain_max;
    while let Some(batch) = schedule.next_batch(end) {
        if stop.is_raised() {
            break;
        }
        let now = Instant::now();
        if now > give_up {
            // The backlog can no longer be sent: record how late each record already is.
            for k in batch.first..batch.first + batch.count as u64 {
                let arrival = schedule.arrival(k);
                if arrival >= warmup_end {
                    outcome.latency.record(now - (window.origin + arrival));
                    outcome.unsent += 1;
                }
            }
            continue;
        }
        sleep_until(window.origin + batch.send_at, stop);
        outcome.errors += producer.send(batch.count)?;
        let done = Instant::now();
        let first_arrival = schedule.arrival(batch.first);
        if first_arrival < warmup_end {
            continue;
        }
        for k in batch.first..batch.first + batch.count as u64 {
            let intended = window.origin + schedule.arrival(k);
            outcome.complete(run, window, 1, done, done.saturating_duration_since(intended));
        }
    }
    Ok(())
}

/// Sleeps until `deadline` (in slices, so a raised stop flag ends the wait).
pub fn sleep_until(deadline: Instant, stop: &StopFlag) {
    const SLICE: Duration = Duration::from_millis(50);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || stop.is_raised() {
            return;
        }
        std::thread::sleep(left.min(SLICE));
    }
}

fn serialize_secs<S: serde::Serializer>(
    value: &Duration,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.serialize_f64(value.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    /// Answers every batch after `service`; while `stalled` is set it waits until it clears
    /// (a node frozen by SIGSTOP, in miniature).
    struct Stallable {
        service: Duration,
        stalled: Arc<AtomicBool>,
    }

    impl Producer for Stallable {
        fn send(&mut self, _records: usize) -> anyhow::Result<u64> {
            while self.stalled.load(Ordering::Acquire) {
                std::thread::sleep(Duration::from_millis(1));
            }
            std::thread::sleep(self.service);
            Ok(0)
        }
    }

    fn run(model: LoadModel, producers: usize) -> ProducerRun {
        ProducerRun {
            model,
            producers,
            records_per_batch: 1,
            linger: Duration::ZERO,
            record_size_bytes: 100,
            duration: Duration::from_millis(1500),
            warmup: Duration::from_millis(100),
            timeline_interval: Duration::from_millis(250),
            drain_max: Duration::from_secs(5),
            keep_completions: true,
            pipeline_depth: 1,
        }
    }

    /// Runs `run` against producers that stall for `stall` 500 ms into the window.
    fn with_stall(run: &ProducerRun, stall: Duration) -> ProducerOutcome {
        let stalled = Arc::new(AtomicBool::new(false));
        let make = |_index: usize| -> anyhow::Result<Box<dyn Producer>> {
            Ok(Box::new(Stallable { service: Duration::from_millis(1), stalled: stalled.clone() }))
        };
        let side = |from: Instant, _until: Instant| -> anyhow::Result<()> {
            sleep_until(from + Duration::from_millis(500), &StopFlag::new());
            stalled.store(true, Ordering::Release);
            std::thread::sleep(stall);
            stalled.store(false, Ordering::Release);
            Ok(())
        };
        drive_producers(run, &make, Some(&side), &StopFlag::new()).unwrap()
    }

    #[test]
    fn the_open_loop_counts_an_injected_stall_against_every_record_it_delayed() {
        let stall = Duration::from_millis(300);
        // 400 records/s from 2 producers: ~120 records arrive during the stall.
        let open = with_stall(&run(LoadModel::Open { rate_records_per_sec: 400.0 }, 2), stall);
        assert!(open.failure.is_none(), "{:?}", open.failure);
        let summary = open.latency.summary();
        println!("open loop: {summary:?}, {} records", open.records);
        // p99.9 reflects the stall (minus slack for the 1 ms service and scheduling).
        assert!(summary.p999_us >= 250_000.0, "{summary:?}");
        // Every record that arrived during the stall waited: dozens of slow samples, not one
        // per producer.
        let slow = open.latency.count_at_or_above(Duration::from_millis(100));
        assert!(slow >= 40, "only {slow} records at >= 100 ms");
        assert_eq!(open.unsent, 0);

        // The closed loop measures from the send: the stall shows once per producer only.
        let closed = with_stall(&run(LoadModel::Closed, 2), stall);
        let slow = closed.latency.count_at_or_above(Duration::from_millis(100));
        assert!(slow <= 2, "closed loop: {slow} slow samples");
    }

    #[test]
    fn throughput_counts_only_the_measured_window_and_timelines_cover_it() {
        let outcome =
            with_stall(&run(LoadModel::Open { rate_records_per_sec: 200.0 }, 1), Duration::ZERO);
        // 200 records/s for 1.5 s: about 300 records (arrivals are exact, completions 1 ms later).
        assert!((290..=301).contains(&outcome.records), "{}", outcome.records);
        let points = outcome.timeline.points(Duration::from_millis(1500));
        assert_eq!(points.len(), 6);
        assert!(points.iter().all(|p| p.records_per_sec > 100.0), "{points:?}");
        assert_eq!(outcome.completions.len(), 1);
    }

    /// A pipelined producer whose batches complete `service` after their start, in order;
    /// it records the most batches it had in flight.
    struct Pipelined {
        service: Duration,
        started: std::collections::VecDeque<Instant>,
        in_flight_max: Arc<std::sync::atomic::AtomicUsize>,
    }

    impl Producer for Pipelined {
        fn send(&mut self, _records: usize) -> anyhow::Result<u64> {
            anyhow::bail!("a pipelined run calls start and finish_oldest only")
        }

        fn start(&mut self, _records: usize) -> anyhow::Result<()> {
            self.started.push_back(Instant::now());
            self.in_flight_max.fetch_max(self.started.len(), Ordering::Relaxed);
            Ok(())
        }

        fn finish_oldest(&mut self) -> anyhow::Result<u64> {
            let started = self.started.pop_front().expect("a batch in flight");
            std::thread::sleep((started + self.service).saturating_duration_since(Instant::now()));
            Ok(0)
        }
    }

    #[test]
    fn a_pipelined_closed_loop_keeps_its_depth_in_flight_and_measures_from_each_start() {
        let in_flight_max = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let make = |_index: usize| -> anyhow::Result<Box<dyn Producer>> {
            Ok(Box::new(Pipelined {
                service: Duration::from_millis(20),
                started: std::collections::VecDeque::new(),
                in_flight_max: in_flight_max.clone(),
            }))
        };
        let mut r = run(LoadModel::Closed, 1);
        r.pipeline_depth = 8;
        r.duration = Duration::from_millis(500);
        let outcome = drive_producers(&r, &make, None, &StopFlag::new()).unwrap();
        assert!(outcome.failure.is_none(), "{:?}", outcome.failure);
        assert_eq!(in_flight_max.load(Ordering::Relaxed), 8);
        // 8 batches per 20 ms service time: far more than one at a time (25 in 500 ms) would
        // give, however slow the machine (each batch waits at least its service time).
        assert!(outcome.records > 25, "{} records", outcome.records);
        let summary = outcome.latency.summary();
        assert!(summary.p50_us >= 19_000.0, "latency runs from each start: {summary:?}");

        r.model = LoadModel::Open { rate_records_per_sec: 100.0 };
        let refused = drive_producers(&r, &make, None, &StopFlag::new());
        assert!(refused.is_err(), "a pipeline depth applies to the closed loop only");
    }

    #[test]
    fn a_producer_that_cannot_connect_is_reported_not_hidden() {
        let make = |index: usize| -> anyhow::Result<Box<dyn Producer>> {
            if index == 1 {
                anyhow::bail!("connection refused");
            }
            Ok(Box::new(Stallable {
                service: Duration::from_millis(1),
                stalled: Arc::new(AtomicBool::new(false)),
            }))
        };
        let mut r = run(LoadModel::Closed, 2);
        r.duration = Duration::from_millis(100);
        let outcome = drive_producers(&r, &make, None, &StopFlag::new()).unwrap();
        assert_eq!(outcome.failure.as_deref(), Some("connection refused"));
    }
}
