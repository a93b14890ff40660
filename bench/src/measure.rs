//! Measures: latency histograms, throughput and fdatasync counters of one scenario run.
//!
//! Latency is recorded in nanoseconds in an HdrHistogram (3 significant digits, up to
//! `LATENCY_MAX`) and reported in microseconds. Histograms from several load threads merge.

use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Largest latency the histograms track; larger values are clamped to it (and show as max).
pub const LATENCY_MAX: Duration = Duration::from_secs(60);
/// Significant decimal digits of the histograms.
const SIGNIFICANT_DIGITS: u8 = 3;

/// An HdrHistogram of operation latencies.
#[derive(Debug, Clone)]
pub struct LatencyRecorder {
    histogram: Histogram<u64>,
}

/// Percentiles of a latency distribution, in microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct LatencySummary {
    pub count: u64,
    pub mean_us: f64,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
}

/// Everything one scenario run measured.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RunMeasure {
    /// Completed operations (durable appends, or raw write+fdatasync rounds).
    pub operations: u64,
    /// Records appended (equal to operations for the raw baseline, which has none).
    pub records: u64,
    /// User bytes made durable (record values for the engine, write bytes for raw-disk).
    pub bytes: u64,
    /// Bytes written to the device (padding and headers included).
    pub disk_bytes: u64,
    /// fdatasync calls completed.
    pub fdatasyncs: u64,
    /// Bytes the system under test wrote in the background (the log's zero-filling of spare
    /// segments), not counted in `disk_bytes`.
    pub background_bytes: u64,
    /// Measured wall-clock time.
    #[serde(serialize_with = "serialize_secs")]
    pub elapsed: Duration,
    /// Per-operation latency.
    pub latency: LatencySummary,
    /// CPU time of the whole process during the run (user + system).
    #[serde(serialize_with = "serialize_secs")]
    pub cpu: Duration,
    /// The histogram behind `latency`, kept so runs can be merged.
    #[serde(skip)]
    pub recorder: LatencyRecorder,
}

impl LatencyRecorder {
    /// An empty recorder.
    pub fn new() -> LatencyRecorder {
        let histogram =
            Histogram::new_with_bounds(1, LATENCY_MAX.as_nanos() as u64, SIGNIFICANT_DIGITS)
                .expect("static histogram bounds are valid");
        LatencyRecorder { histogram }
    }

    /// Records one latency (clamped to `LATENCY_MAX`).
    pub fn record(&mut self, latency: Duration) {
        let nanos = (latency.as_nanos() as u64).clamp(1, LATENCY_MAX.as_nanos() as u64);
        self.histogram.saturating_record(nanos);
    }

    /// Adds another recorder's samples.
    pub fn merge(&mut self, other: &LatencyRecorder) {
        self.histogram.add(&other.histogram).expect("histograms share bounds");
    }

    /// Samples recorded.
    pub fn len(&self) -> u64 {
        self.histogram.len()
    }

    /// Whether nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.histogram.is_empty()
    }

    /// Percentiles in microseconds.
    pub fn summary(&self) -> LatencySummary {
        if self.histogram.is_empty() {
            return LatencySummary::default();
        }
        let us = |nanos: u64| nanos as f64 / 1000.0;
        LatencySummary {
            count: self.histogram.len(),
            mean_us: self.histogram.mean() / 1000.0,
            p50_us: us(self.histogram.value_at_quantile(0.50)),
            p90_us: us(self.histogram.value_at_quantile(0.90)),
            p99_us: us(self.histogram.value_at_quantile(0.99)),
            p999_us: us(self.histogram.value_at_quantile(0.999)),
            max_us: us(self.histogram.max()),
        }
    }
}

impl Default for LatencyRecorder {
    fn default() -> Self {
        LatencyRecorder::new()
    }
}

impl RunMeasure {
    /// Sets the latency histogram and its summary.
    pub fn set_latency(&mut self, recorder: LatencyRecorder) {
        self.latency = recorder.summary();
        self.recorder = recorder;
    }

    /// Adds another run of the same scenario (counts, times and histograms summed).
    pub fn merge(&mut self, other: &RunMeasure) {
        self.operations += other.operations;
        self.records += other.records;
        self.bytes += other.bytes;
        self.disk_bytes += other.disk_bytes;
        self.fdatasyncs += other.fdatasyncs;
        self.background_bytes += other.background_bytes;
        self.elapsed += other.elapsed;
        self.cpu += other.cpu;
        self.recorder.merge(&other.recorder);
        self.latency = self.recorder.summary();
    }

    /// Operations per second.
    pub fn operations_per_sec(&self) -> f64 {
        per_second(self.operations as f64, self.elapsed)
    }

    /// Records per second.
    pub fn records_per_sec(&self) -> f64 {
        per_second(self.records as f64, self.elapsed)
    }

    /// User bytes per second.
    pub fn bytes_per_sec(&self) -> f64 {
        per_second(self.bytes as f64, self.elapsed)
    }

    /// User megabytes (10^6) per second.
    pub fn mb_per_sec(&self) -> f64 {
        self.bytes_per_sec() / 1e6
    }

    /// fdatasyncs per second.
    pub fn fdatasyncs_per_sec(&self) -> f64 {
        per_second(self.fdatasyncs as f64, self.elapsed)
    }

    /// Average device bytes written per fdatasync.
    pub fn disk_bytes_per_fdatasync(&self) -> f64 {
        if self.fdatasyncs == 0 {
            0.0
        } else {
            self.disk_bytes as f64 / self.fdatasyncs as f64
        }
    }

    /// CPU microseconds per record (or per operation when there are no records).
    pub fn cpu_us_per_record(&self) -> f64 {
        let count = if self.records > 0 { self.records } else { self.operations };
        if count == 0 {
            0.0
        } else {
            self.cpu.as_secs_f64() * 1e6 / count as f64
        }
    }
}

fn per_second(count: f64, elapsed: Duration) -> f64 {
    let secs = elapsed.as_secs_f64();
    if secs > 0.0 {
        count / secs
    } else {
        0.0
    }
}

fn serialize_secs<S: serde::Serializer>(
    value: &Duration,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.serialize_f64(value.as_secs_f64())
}

/// CPU time (user + system) this process has used so far, from `/proc/self/stat`.
pub fn process_cpu_time() -> Duration {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return Duration::ZERO;
    };
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let Some(rest) = stat.rfind(')').map(|end| &stat[end + 1..]) else {
        return Duration::ZERO;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |index: usize| fields.get(index).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0);
    let total_ticks = ticks(11) + ticks(12);
    Duration::from_secs_f64(total_ticks as f64 / clock_ticks_per_sec())
}

/// Linux reports /proc times in USER_HZ ticks, an ABI constant of 100 on every architecture
/// we build for (it is not the kernel's CONFIG_HZ).
fn clock_ticks_per_sec() -> f64 {
    100.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_come_from_the_recorded_samples() {
        let mut recorder = LatencyRecorder::new();
        for micros in 1..=1000u64 {
            recorder.record(Duration::from_micros(micros));
        }
        let summary = recorder.summary();
        assert_eq!(summary.count, 1000);
        assert!((summary.p50_us - 500.0).abs() < 1.0, "{summary:?}");
        assert!((summary.p99_us - 990.0).abs() < 2.0, "{summary:?}");
        assert!((summary.max_us - 1000.0).abs() < 1.0, "{summary:?}");
    }

    #[test]
    fn merged_recorders_count_every_sample() {
        let mut a = LatencyRecorder::new();
        let mut b = LatencyRecorder::new();
        a.record(Duration::from_micros(10));
        b.record(Duration::from_micros(20));
        b.record(Duration::from_secs(3600));
        a.merge(&b);
        assert_eq!(a.len(), 3);
        assert!(a.summary().max_us >= 59_000_000.0);
    }

    #[test]
    fn merged_runs_sum_counts_and_histograms() {
        let mut a = RunMeasure {
            operations: 2,
            bytes: 10,
            elapsed: Duration::from_secs(1),
            ..RunMeasure::default()
        };
        let mut recorder = LatencyRecorder::new();
        recorder.record(Duration::from_micros(100));
        a.set_latency(recorder);
        let mut b = RunMeasure {
            operations: 3,
            bytes: 20,
            elapsed: Duration::from_secs(2),
            ..RunMeasure::default()
        };
        let mut recorder = LatencyRecorder::new();
        recorder.record(Duration::from_micros(300));
        recorder.record(Duration::from_micros(300));
        b.set_latency(recorder);
        a.merge(&b);
        assert_eq!(a.operations, 5);
        assert_eq!(a.bytes, 30);
        assert_eq!(a.elapsed, Duration::from_secs(3));
        assert_eq!(a.latency.count, 3);
        assert!(a.latency.max_us >= 299.0);
    }

    #[test]
    fn throughput_divides_by_elapsed_time() {
        let measure = RunMeasure {
            operations: 10,
            records: 10,
            bytes: 10_000_000,
            disk_bytes: 12_000_000,
            fdatasyncs: 4,
            elapsed: Duration::from_secs(2),
            ..RunMeasure::default()
        };
        assert_eq!(measure.mb_per_sec(), 5.0);
        assert_eq!(measure.disk_bytes_per_fdatasync(), 3_000_000.0);
    }
}
