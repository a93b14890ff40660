//! Load models: how operations are offered to the system under test.
//!
//! Closed loop (this module's [`drive_closed_loop`]): `concurrency` operations are kept
//! outstanding; each completion immediately submits the next one, so the offered load is
//! whatever the system sustains (maximum throughput). One driver thread submits and collects
//! completions, leaving the other cores to the shards and the kernel's IO completion work
//! (design.md §11: busy cores starve fsync). Latency is measured from submission to completion.
//! The open-loop model (constant rate, latency from the intended send time) comes with the
//! full suite (issue 5) and plugs in beside this one.
//!
//! Invariants: never more than `concurrency` operations outstanding; the driver ends when the
//! duration passes, the stop flag rises, or an operation fails, and it always collects every
//! outstanding completion (bounded by `drain_timeout`) before returning.

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

/// Runs a closed loop against `target` and measures the window after the warm-up.
pub fn drive_closed_loop(
    load: &ClosedLoop,
    target: &mut dyn AsyncTarget,
    stop: &StopFlag,
) -> anyhow::Result<ClosedLoopOutcome> {
    if load.concurrency == 0 || load.concurrency > CONCURRENCY_MAX {
        bail!("concurrency {} outside 1..={CONCURRENCY_MAX}", load.concurrency);
    }
    let mut submitted_at: Vec<Instant> = Vec::with_capacity(load.concurrency);
    let started = Instant::now();
    for token in 0..load.concurrency {
        submitted_at.push(Instant::now());
        target.submit(token as u64)?;
    }
    let measure_from = started + load.warmup;
    let measure_until = measure_from + load.duration;
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
        if *slot >= measure_from && now <= measure_until {
            outcome.latency.record(now - *slot);
            outcome.completed += 1;
        }
        if submitting && (now >= measure_until || stop.is_raised()) {
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
    let measured_end = Instant::now().min(measure_until);
    outcome.elapsed = measured_end.saturating_duration_since(measure_from);
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
