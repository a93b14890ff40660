//! Load models: how operations are offered to the system under test.
//!
//! Closed loop (this module's [`drive_closed_loop`]): `concurrency` operations are kept
//! outstanding; each completion immediately submits the next one, so the offered load is
//! whatever the system sustains (maximum throughput). One driver thread submits and collects
//! completions, leaving the other cores to the shards and the kernel's IO completion work
//! (design.md §11: busy cores starve fsync). Latency is measured from submission to completion.
//!
//! Open loop ([`OpenSchedule`], driven by `producers::drive_producers`): records *arrive* at a
//! constant rate whatever the system does, each with an intended time. With a `linger`, they
//! arrive one by one and a producer closes a batch when it holds `records_per_batch` records
//! or `linger` after its first record arrived; with no linger they arrive in whole batches of
//! `records_per_batch` (one request each, as the closed loop sends them). A record's latency
//! runs from its own arrival to its acknowledgement. A stall therefore
//! shows as the whole backlog it delays, not as one slow request (no coordinated omission).
//!
//! Invariants: never more than `concurrency` operations outstanding; the driver ends when the
//! duration passes, the stop flag rises, or an operation fails, and it always collects every
//! outstanding completion (bounded by `drain_timeout`) before returning. An open schedule's
//! arrivals are strictly increasing and a batch never holds more than `records_per_batch`.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use serde::Serialize;

use crate::measure::LatencyRecorder;
use crate::workdir::StopFlag;

/// Most operations a closed loop keeps outstanding.
pub const CONCURRENCY_MAX: usize = 65_536;

/// Closed-loop parameters.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct ClosedLoop {
    /// Operations kept outstanding.
    pub concurrency: usize,
    /// Measured time.
    #[serde(serialize_with = "serialize_secs")]
    pub duration: Duration,
    /// Time run before measuring (not counted).
    #[serde(serialize_with = "serialize_secs")]
    pub warmup: Duration,
    /// Longest wait for one completion before the run is declared stuck.
    #[serde(serialize_with = "serialize_secs")]
    pub drain_timeout: Duration,
}

/// What a closed-loop run counted during its measured window.
#[derive(Debug, Default)]
pub struct ClosedLoopOutcome {
    pub completed: u64,
    pub elapsed: Duration,
    pub latency: LatencyRecorder,
}

/// The operations a closed loop drives.
pub trait AsyncTarget {
    /// Starts one operation tagged `token`; its completion arrives through `next_completion`.
    fn submit(&mut self, token: u64) -> anyhow::Result<()>;
    /// Waits up to `timeout` for the next completion; `Ok(None)` on timeout.
    fn next_completion(&mut self, timeout: Duration) -> anyhow::Result<Option<u64>>;
}

/// When a closed loop's measured window opens and closes: either fixed in advance (after a
/// warm-up time) or opened while the load runs, once the system under test reached its steady
/// state. Shared between threads; opened at most once.
#[derive(Debug, Default)]
pub struct WindowGate {
    bounds: OnceLock<(Instant, Instant)>,
}

impl WindowGate {
    /// A window that opens at `opens` and lasts `duration`.
    pub fn fixed(opens: Instant, duration: Duration) -> WindowGate {
        let gate = WindowGate::default();
        let _ = gate.bounds.set((opens, opens + duration));
        gate
    }

    /// A window not open yet: [`open_now`](Self::open_now) opens it.
    pub fn pending() -> WindowGate {
        WindowGate::default()
    }

    /// Opens the window now for `duration` (no-op if already open); returns its bounds.
    pub fn open_now(&self, duration: Duration) -> (Instant, Instant) {
        *self.bounds.get_or_init(|| {
            let now = Instant::now();
            (now, now + duration)
        })
    }

    /// `(opens, closes)` once the window is decided.
    pub fn bounds(&self) -> Option<(Instant, Instant)> {
        self.bounds.get().copied()
    }

    /// True if an operation submitted at `submitted` and completed at `now` is measured.
    pub fn counts(&self, submitted: Instant, now: Instant) -> bool {
        self.bounds().is_some_and(|(opens, closes)| submitted >= opens && now <= closes)
    }

    /// True once the window has closed (no more operations need submitting).
    pub fn closed(&self, now: Instant) -> bool {
        self.bounds().is_some_and(|(_, closes)| now >= closes)
    }

    /// Measured time: from the opening to `now` or the closing, whichever is first (zero if
    /// the window never opened).
    pub fn elapsed(&self, now: Instant) -> Duration {
        self.bounds().map_or(Duration::ZERO, |(opens, closes)| {
            now.min(closes).saturating_duration_since(opens)
        })
    }
}

/// Runs a closed loop against `target` and measures the window after the warm-up.
pub fn drive_closed_loop(
    load: &ClosedLoop,
    target: &mut dyn AsyncTarget,
    stop: &StopFlag,
) -> anyhow::Result<ClosedLoopOutcome> {
    let gate = WindowGate::fixed(Instant::now() + load.warmup, load.duration);
    drive_closed_loop_gated(load, &gate, target, stop)
}

/// Runs a closed loop against `target` and measures the window `gate` decides (`load.warmup`
/// and `load.duration` are not used: the gate holds the window). Submitting stops once the
/// window has closed or the stop flag rose.
pub fn drive_closed_loop_gated(
    load: &ClosedLoop,
    gate: &WindowGate,
    target: &mut dyn AsyncTarget,
    stop: &StopFlag,
) -> anyhow::Result<ClosedLoopOutcome> {
    if load.concurrency == 0 || load.concurrency > CONCURRENCY_MAX {
        bail!("concurrency {} outside 1..={CONCURRENCY_MAX}", load.concurrency);
    }
    let mut submitted_at: Vec<Instant> = Vec::with_capacity(load.concurrency);
    for token in 0..load.concurrency {
        submitted_at.push(Instant::now());
        target.submit(token as u64)?;
    }
    let mut outcome = ClosedLoopOutcome::default();
    let mut outstanding = load.concurrency;
    let mut submitting = true;
    let result = loop {
        if outstanding == 0 {
            break Ok(());
        }
        let token = match target.next_completion(load.drain_timeout) {
            Ok(Some(token)) => token as usize,
            Ok(None) => {
                break Err(anyhow::anyhow!(
                    "no completion within {:?} ({outstanding} outstanding)",
                    load.drain_timeout
                ))
            }
            Err(error) => break Err(error),
        };
        outstanding -= 1;
        let now = Instant::now();
        let slot = submitted_at
            .get_mut(token)
            .with_context(|| format!("unknown completion token {token}"))?;
        if gate.counts(*slot, now) {
            outcome.latency.record(now - *slot);
            outcome.completed += 1;
        }
        if submitting && (gate.closed(now) || stop.is_raised()) {
            submitting = false;
        }
        if submitting {
            *slot = Instant::now();
            if let Err(error) = target.submit(token as u64) {
                drain(target, outstanding, load.drain_timeout);
                break Err(error);
            }
            outstanding += 1;
        }
    };
    outcome.elapsed = gate.elapsed(Instant::now());
    result.map(|()| outcome)
}

/// Collects up to `outstanding` completions, giving up after one `timeout` without any.
fn drain(target: &mut dyn AsyncTarget, mut outstanding: usize, timeout: Duration) {
    while outstanding > 0 {
        match target.next_completion(timeout) {
            Ok(Some(_)) => outstanding -= 1,
            _ => return,
        }
    }
}

/// How a run offers load.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "model")]
pub enum LoadModel {
    /// Each producer sends its next batch as soon as the previous one is acknowledged.
    Closed,
    /// Records arrive at a constant total rate, spread evenly over the producers.
    Open { rate_records_per_sec: f64 },
}

/// Highest open-loop rate accepted (records/s).
pub const OPEN_RATE_MAX: f64 = 1e9;

/// One batch of an open-loop schedule: records `first..first + count` of the producer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PlannedBatch {
    /// Index of the batch's first record in the producer's arrival sequence.
    pub first: u64,
    pub count: usize,
    /// When the batch is closed and sent, from the schedule's origin.
    pub send_at: Duration,
}

/// The arrivals of one open-loop producer: record `k` arrives at `phase + k / rate`, or, with
/// no linger, in groups of `records_per_batch` at the time of the group's first record.
#[derive(Debug, Clone)]
pub struct OpenSchedule {
    interval_secs: f64,
    /// Records arriving together (`records_per_batch` without linger, else 1).
    group: u64,
    phase_secs: f64,
    records_per_batch: usize,
    linger: Duration,
    next: u64,
}

impl OpenSchedule {
    /// The schedule of producer `index` of `producers` sharing `total_rate` records/s: each
    /// gets `total_rate / producers`, phases staggered by `1 / total_rate`.
    pub fn new(
        total_rate: f64,
        index: usize,
        producers: usize,
        records_per_batch: usize,
        linger: Duration,
    ) -> anyhow::Result<OpenSchedule> {
        if !(total_rate > 0.0 && total_rate <= OPEN_RATE_MAX) {
            bail!("open-loop rate {total_rate} outside (0, {OPEN_RATE_MAX}] records/s");
        }
        if producers == 0 || records_per_batch == 0 {
            bail!("an open loop needs at least one producer and one record per batch");
        }
        let per_producer = total_rate / producers as f64;
        Ok(OpenSchedule {
            interval_secs: 1.0 / per_producer,
            group: if linger.is_zero() { records_per_batch as u64 } else { 1 },
            phase_secs: index as f64 / total_rate,
            records_per_batch,
            linger,
            next: 0,
        })
    }

    /// When record `k` arrives, from the schedule's origin.
    pub fn arrival(&self, k: u64) -> Duration {
        let first_of_group = k / self.group * self.group;
        Duration::from_secs_f64(self.phase_secs + first_of_group as f64 * self.interval_secs)
    }

    /// The next batch whose first record arrives before `end`; `None` when there is none.
    /// The batch takes every following record that arrives within `linger` of the first (up
    /// to `records_per_batch`, and before `end`); it is sent when it is full or when the
    /// linger expires.
    pub fn next_batch(&mut self, end: Duration) -> Option<PlannedBatch> {
        let first = self.next;
        let first_at = self.arrival(first);
        if first_at >= end {
            return None;
        }
        let closes_at = first_at + self.linger;
        let mut count = 1;
        while count < self.records_per_batch {
            let at = self.arrival(first + count as u64);
            if at > closes_at || at >= end {
                break;
            }
            count += 1;
        }
        self.next = first + count as u64;
        let send_at = if count == self.records_per_batch {
            self.arrival(first + count as u64 - 1)
        } else {
            closes_at.min(end)
        };
        Some(PlannedBatch { first, count, send_at })
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
    use std::collections::VecDeque;

    /// Completes every operation after a fixed service time, in submission order.
    struct Delayed {
        queue: VecDeque<(u64, Instant)>,
        service: Duration,
        peak_outstanding: usize,
    }

    impl AsyncTarget for Delayed {
        fn submit(&mut self, token: u64) -> anyhow::Result<()> {
            self.queue.push_back((token, Instant::now() + self.service));
            self.peak_outstanding = self.peak_outstanding.max(self.queue.len());
            Ok(())
        }

        fn next_completion(&mut self, _timeout: Duration) -> anyhow::Result<Option<u64>> {
            let Some((token, due)) = self.queue.pop_front() else {
                return Ok(None);
            };
            std::thread::sleep(due.saturating_duration_since(Instant::now()));
            Ok(Some(token))
        }
    }

    #[test]
    fn a_closed_loop_keeps_concurrency_outstanding_and_measures_the_window() {
        let load = ClosedLoop {
            concurrency: 4,
            duration: Duration::from_millis(200),
            warmup: Duration::from_millis(20),
            drain_timeout: Duration::from_secs(5),
        };
        let mut target = Delayed {
            queue: VecDeque::new(),
            service: Duration::from_millis(1),
            peak_outstanding: 0,
        };
        let outcome = drive_closed_loop(&load, &mut target, &StopFlag::new()).unwrap();
        assert_eq!(target.peak_outstanding, 4);
        assert!(target.queue.is_empty(), "every operation was collected");
        assert!(outcome.completed > 0);
        assert_eq!(outcome.latency.len(), outcome.completed);
        assert!(outcome.latency.summary().p50_us >= 1000.0);
    }

    #[test]
    fn a_pending_window_gate_counts_only_operations_submitted_after_it_opens() {
        let gate = WindowGate::pending();
        let before = Instant::now();
        assert!(!gate.counts(before, before), "nothing counts before the window is decided");
        assert!(!gate.closed(before));
        assert_eq!(gate.elapsed(before), Duration::ZERO);
        let (opens, closes) = gate.open_now(Duration::from_secs(10));
        assert_eq!(gate.open_now(Duration::ZERO), (opens, closes), "opened once");
        assert!(!gate.counts(before, opens), "submitted during the warm-up");
        assert!(gate.counts(opens, opens + Duration::from_secs(1)));
        assert!(!gate.counts(opens, closes + Duration::from_millis(1)), "completed after it");
        assert!(gate.closed(closes));
        assert_eq!(gate.elapsed(closes + Duration::from_secs(5)), Duration::from_secs(10));
    }

    #[test]
    fn an_open_schedule_spreads_the_rate_over_producers_and_batches_by_linger() {
        // 1000 records/s over 2 producers: each gets one record every 2 ms, phases 1 ms apart.
        let a = OpenSchedule::new(1000.0, 0, 2, 4, Duration::from_millis(5)).unwrap();
        let b = OpenSchedule::new(1000.0, 1, 2, 4, Duration::from_millis(5)).unwrap();
        assert_eq!(a.arrival(0), Duration::ZERO);
        assert_eq!(b.arrival(0), Duration::from_millis(1));
        assert_eq!(a.arrival(3), Duration::from_millis(6));

        // Linger 5 ms holds records arriving at 0, 2 and 4 ms; the one at 6 ms starts the next.
        let mut a = a;
        let end = Duration::from_millis(20);
        let batch = a.next_batch(end).unwrap();
        assert_eq!((batch.first, batch.count), (0, 3));
        assert_eq!(batch.send_at, Duration::from_millis(5));
        // A full batch is sent when its last record arrives.
        let mut full = OpenSchedule::new(1000.0, 0, 1, 2, Duration::from_secs(1)).unwrap();
        let batch = full.next_batch(end).unwrap();
        assert_eq!((batch.first, batch.count, batch.send_at), (0, 2, Duration::from_millis(1)));
        // Nothing arrives at or after the end.
        let mut total = 0;
        while let Some(batch) = full.next_batch(end) {
            assert!(full.arrival(batch.first) < end);
            total += batch.count;
        }
        assert_eq!(total + 2, 20);
    }

    #[test]
    fn without_linger_records_arrive_in_whole_batches() {
        // 100 records/s, batches of 4: a batch every 40 ms, sent when it arrives.
        let mut schedule = OpenSchedule::new(100.0, 0, 1, 4, Duration::ZERO).unwrap();
        let end = Duration::from_millis(100);
        let batches: Vec<PlannedBatch> = std::iter::from_fn(|| schedule.next_batch(end)).collect();
        let sends: Vec<(u64, usize, Duration)> =
            batches.iter().map(|b| (b.first, b.count, b.send_at)).collect();
        assert_eq!(
            sends,
            [
                (0, 4, Duration::ZERO),
                (4, 4, Duration::from_millis(40)),
                (8, 4, Duration::from_millis(80))
            ]
        );
    }

    #[test]
    fn an_open_schedule_refuses_a_zero_rate() {
        assert!(OpenSchedule::new(0.0, 0, 1, 1, Duration::ZERO).is_err());
        assert!(OpenSchedule::new(f64::NAN, 0, 1, 1, Duration::ZERO).is_err());
        assert!(OpenSchedule::new(10.0, 0, 0, 1, Duration::ZERO).is_err());
    }

    #[test]
    fn a_raised_stop_flag_ends_the_loop_early() {
        let load = ClosedLoop {
            concurrency: 2,
            duration: Duration::from_secs(3600),
            warmup: Duration::ZERO,
            drain_timeout: Duration::from_secs(5),
        };
        let mut target = Delayed {
            queue: VecDeque::new(),
            service: Duration::from_millis(1),
            peak_outstanding: 0,
        };
        let stop = StopFlag::new();
        stop.raise();
        let started = Instant::now();
        drive_closed_loop(&load, &mut target, &stop).unwrap();
        assert!(started.elapsed() < Duration::from_secs(60));
    }
}
