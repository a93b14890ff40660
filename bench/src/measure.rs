//! Measures: latency histograms, throughput and fdatasync counters of one scenario run.
//!
//! Latency is recorded in nanoseconds in an HdrHistogram (3 significant digits, up to
//! `LATENCY_MAX`) and reported in microseconds. Histograms from several load threads merge.

use std::time::Duration;

use hdrhistogram::serialization::{Deserializer, Serializer as _, V2Serializer};
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
    /// Records per second offered by an open loop (`None`: closed loop, offered = achieved).
    pub offered_records_per_sec: Option<f64>,
    /// Failed attempts that were retried (not leader, connection lost, backpressure, ...).
    pub errors: u64,
    /// CPU time of the cluster's node processes during the run (local clusters only).
    #[serde(serialize_with = "serialize_opt_secs")]
    pub node_cpu: Option<Duration>,
    /// Throughput and p99 per interval of the measured window (cluster scenarios).
    pub timeline: Vec<TimelinePoint>,
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

    /// Largest sample recorded (nanoseconds; 0 when empty).
    pub fn max_nanos(&self) -> u64 {
        self.histogram.max()
    }

    /// The histogram in HdrHistogram's V2 serialization (values in nanoseconds), readable by
    /// every HdrHistogram implementation (Java, C, Go, Python, Rust).
    pub fn to_v2_bytes(&self) -> anyhow::Result<Vec<u8>> {
        let mut bytes = Vec::new();
        V2Serializer::new()
            .serialize(&self.histogram, &mut bytes)
            .map_err(|e| anyhow::anyhow!("serializing a latency histogram: {e:?}"))?;
        Ok(bytes)
    }

    /// A recorder holding a V2-serialized histogram (as [`Self::to_v2_bytes`] writes, or any
    /// HdrHistogram V2 or V2+DEFLATE with values in nanoseconds up to `LATENCY_MAX`).
    pub fn from_v2_bytes(bytes: &[u8]) -> anyhow::Result<LatencyRecorder> {
        let histogram: Histogram<u64> = Deserializer::new()
            .deserialize(&mut std::io::Cursor::new(bytes))
            .map_err(|e| anyhow::anyhow!("not an HdrHistogram V2 serialization: {e:?}"))?;
        let mut recorder = LatencyRecorder::new();
        recorder.histogram.add(&histogram).map_err(|e| {
            anyhow::anyhow!("histogram values beyond {LATENCY_MAX:?} in nanoseconds: {e:?}")
        })?;
        Ok(recorder)
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
        self.errors += other.errors;
        self.node_cpu = match (self.node_cpu, other.node_cpu) {
            (Some(a), Some(b)) => Some(a + b),
            (a, b) => a.or(b),
        };
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

    /// CPU seconds of the node processes per million records.
    pub fn node_cpu_secs_per_million_records(&self) -> Option<f64> {
        let cpu = self.node_cpu?;
        (self.records > 0).then(|| cpu.as_secs_f64() * 1e6 / self.records as f64)
    }

    /// CPU seconds of this (the load-generating) process per million records.
    pub fn client_cpu_secs_per_million_records(&self) -> Option<f64> {
        (self.records > 0).then(|| self.cpu.as_secs_f64() * 1e6 / self.records as f64)
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

pub fn serialize_secs<S: serde::Serializer>(
    value: &Duration,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.serialize_f64(value.as_secs_f64())
}

fn serialize_opt_secs<S: serde::Serializer>(
    value: &Option<Duration>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match value {
        Some(value) => serializer.serialize_some(&value.as_secs_f64()),
        None => serializer.serialize_none(),
    }
}

/// CPU time (user + system) this process has used so far, from `/proc/self/stat` (the same
/// figure `getrusage(RUSAGE_SELF)` gives, at clock-tick resolution).
pub fn process_cpu_time() -> Duration {
    std::fs::read_to_string("/proc/self/stat")
        .map_or(Duration::ZERO, |stat| cpu_time_of_stat(&stat))
}

/// Linux reports /proc times in USER_HZ ticks, an ABI constant of 100 on every architecture
/// we build for (it is not the kernel's CONFIG_HZ).
fn clock_ticks_per_sec() -> f64 {
    100.0
}

/// Throughput and latency over time: one bucket per `interval` of completion time, counted
/// from the start of the measured window. Buckets hold microsecond histograms at 2
/// significant digits (about 20 KB each), enough for a per-interval p99.
#[derive(Debug, Clone)]
pub struct Timeline {
    interval: Duration,
    buckets: Vec<TimelineBucket>,
}

#[derive(Debug, Clone)]
struct TimelineBucket {
    records: u64,
    bytes: u64,
    histogram: Histogram<u64>,
}

/// One point of a [`Timeline`], as reported.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct TimelinePoint {
    /// Start of the interval, seconds from the start of the measured window.
    pub at_secs: f64,
    pub records_per_sec: f64,
    pub mb_per_sec: f64,
    /// p99 latency of what completed in the interval (0 when nothing completed).
    pub p99_us: f64,
    pub max_us: f64,
}

/// Most buckets a timeline keeps; later completions go to the last one.
pub const TIMELINE_BUCKETS_MAX: usize = 3600;
/// Largest latency a timeline bucket tracks, in microseconds.
const TIMELINE_LATENCY_MAX_US: u64 = 60_000_000;

impl Timeline {
    /// An empty timeline with buckets of `interval` (at least 1 ms).
    pub fn new(interval: Duration) -> Timeline {
        Timeline { interval: interval.max(Duration::from_millis(1)), buckets: Vec::new() }
    }

    /// The bucket width.
    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// Counts `records` records of `bytes` bytes completed `at` after the window opened, with
    /// `latency` each.
    pub fn record(&mut self, at: Duration, records: u64, bytes: u64, latency: Duration) {
        let index =
            ((at.as_nanos() / self.interval.as_nanos()) as usize).min(TIMELINE_BUCKETS_MAX - 1);
        while self.buckets.len() <= index {
            self.buckets.push(TimelineBucket::new());
        }
        let bucket = &mut self.buckets[index];
        bucket.records += records;
        bucket.bytes += bytes;
        let micros = (latency.as_micros() as u64).clamp(1, TIMELINE_LATENCY_MAX_US);
        let _ = bucket.histogram.record_n(micros, records.max(1));
    }

    /// Adds another timeline of the same interval.
    pub fn merge(&mut self, other: &Timeline) {
        while self.buckets.len() < other.buckets.len() {
            self.buckets.push(TimelineBucket::new());
        }
        for (mine, theirs) in self.buckets.iter_mut().zip(&other.buckets) {
            mine.records += theirs.records;
            mine.bytes += theirs.bytes;
            mine.histogram.add(&theirs.histogram).expect("timeline histograms share bounds");
        }
    }

    /// The points, one per interval, up to `window` (later buckets are cut: they hold the
    /// drain after the window closed).
    pub fn points(&self, window: Duration) -> Vec<TimelinePoint> {
        let secs = self.interval.as_secs_f64();
        let count = (window.as_nanos().div_ceil(self.interval.as_nanos()) as usize).max(1);
        (0..count.min(TIMELINE_BUCKETS_MAX))
            .map(|i| {
                let Some(bucket) = self.buckets.get(i) else {
                    return TimelinePoint { at_secs: i as f64 * secs, ..TimelinePoint::default() };
                };
                // The last interval may be partial.
                let width = (window.as_secs_f64() - i as f64 * secs).clamp(f64::MIN_POSITIVE, secs);
                let empty = bucket.histogram.is_empty();
                TimelinePoint {
                    at_secs: i as f64 * secs,
                    records_per_sec: bucket.records as f64 / width,
                    mb_per_sec: bucket.bytes as f64 / width / 1e6,
                    p99_us: if empty {
                        0.0
                    } else {
                        bucket.histogram.value_at_quantile(0.99) as f64
                    },
                    max_us: if empty { 0.0 } else { bucket.histogram.max() as f64 },
                }
            })
            .collect()
    }
}

impl TimelineBucket {
    fn new() -> TimelineBucket {
        TimelineBucket {
            records: 0,
            bytes: 0,
            histogram: Histogram::new_with_bounds(1, TIMELINE_LATENCY_MAX_US, 2)
                .expect("static histogram bounds are valid"),
        }
    }
}

impl LatencyRecorder {
    /// Records `count` samples of the same latency (clamped to `LATENCY_MAX`).
    pub fn record_n(&mut self, latency: Duration, count: u64) {
        let nanos = (latency.as_nanos() as u64).clamp(1, LATENCY_MAX.as_nanos() as u64);
        let _ = self.histogram.record_n(nanos, count);
    }

    /// Samples at or above `threshold`.
    pub fn count_at_or_above(&self, threshold: Duration) -> u64 {
        let nanos = threshold.as_nanos() as u64;
        self.histogram.count_between(nanos, LATENCY_MAX.as_nanos() as u64)
    }

    /// The latency at quantile `q` (0..=1).
    pub fn value_at_quantile(&self, q: f64) -> Duration {
        Duration::from_nanos(self.histogram.value_at_quantile(q))
    }

    /// The percentile curve for plots and reports: (percentile, latency µs) at the usual
    /// HdrHistogram ticks (0%, 50%, 75%, 87.5%, ... up to the max), at most `points_max`.
    pub fn percentile_curve(&self, points_max: usize) -> Vec<(f64, f64)> {
        if self.histogram.is_empty() {
            return Vec::new();
        }
        let mut curve: Vec<(f64, f64)> = self
            .histogram
            .iter_quantiles(4)
            .map(|v| (v.quantile_iterated_to() * 100.0, v.value_iterated_to() as f64 / 1000.0))
            .filter(|(p, _)| *p < 100.0)
            .take(points_max.saturating_sub(1))
            .collect();
        curve.push((100.0, self.histogram.max() as f64 / 1000.0));
        curve
    }
}

/// CPU time (user + system) of another process, from `/proc/<pid>/stat`; `None` once it is
/// gone.
pub fn pid_cpu_time(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    Some(cpu_time_of_stat(&stat))
}

/// Bytes a process caused to be written to storage (`write_bytes` of `/proc/<pid>/io`).
pub fn pid_write_bytes(pid: u32) -> Option<u64> {
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).ok()?;
    io.lines()
        .find_map(|line| line.strip_prefix("write_bytes:"))
        .and_then(|v| v.trim().parse().ok())
}

fn cpu_time_of_stat(stat: &str) -> Duration {
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let Some(rest) = stat.rfind(')').map(|end| &stat[end + 1..]) else {
        return Duration::ZERO;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |index: usize| fields.get(index).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0);
    let total_ticks = ticks(11) + ticks(12);
    Duration::from_secs_f64(total_ticks as f64 / clock_ticks_per_sec())
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
    fn saved_histograms_deserialize_and_merge_into_the_sum_of_their_counts() {
        let mut a = LatencyRecorder::new();
        let mut b = LatencyRecorder::new();
        for micros in 1..=1000u64 {
            a.record(Duration::from_micros(micros));
        }
        for millis in 1..=10u64 {
            b.record(Duration::from_millis(millis * 7));
        }
        let a_bytes = a.to_v2_bytes().unwrap();
        let b_bytes = b.to_v2_bytes().unwrap();
        let mut merged = LatencyRecorder::from_v2_bytes(&a_bytes).unwrap();
        assert_eq!(merged.len(), 1000);
        assert_eq!(merged.max_nanos(), a.max_nanos());
        merged.merge(&LatencyRecorder::from_v2_bytes(&b_bytes).unwrap());
        assert_eq!(merged.len(), a.len() + b.len());
        assert_eq!(merged.max_nanos(), a.max_nanos().max(b.max_nanos()));
        assert!(merged.max_nanos() >= 69_000_000, "{}", merged.max_nanos());
        let error = LatencyRecorder::from_v2_bytes(b"not a histogram").unwrap_err();
        assert!(error.to_string().contains("HdrHistogram"), "{error}");
    }

    #[test]
    fn a_timeline_reports_rate_and_p99_per_interval() {
        let mut timeline = Timeline::new(Duration::from_millis(500));
        for i in 0..100u64 {
            timeline.record(Duration::from_millis(i * 10), 2, 2000, Duration::from_micros(100));
        }
        timeline.record(Duration::from_millis(990), 1, 1000, Duration::from_millis(50));
        let mut other = Timeline::new(Duration::from_millis(500));
        other.record(Duration::from_millis(100), 1, 1000, Duration::from_micros(100));
        timeline.merge(&other);
        let points = timeline.points(Duration::from_secs(1));
        assert_eq!(points.len(), 2);
        // Bucket 0: 50 × 2 records + 1 merged; bucket 1: 50 × 2 + 1 slow one; 0.5 s each.
        assert_eq!(points[0].records_per_sec, 202.0);
        assert_eq!(points[1].records_per_sec, 202.0);
        assert!(points[1].max_us >= 49_000.0, "{points:?}");
        assert!(points[0].p99_us < 200.0, "{points:?}");
    }

    #[test]
    fn the_percentile_curve_ends_at_the_max() {
        let mut recorder = LatencyRecorder::new();
        for micros in 1..=10_000u64 {
            recorder.record(Duration::from_micros(micros));
        }
        let curve = recorder.percentile_curve(100);
        assert!(curve.len() > 10 && curve.len() <= 100, "{}", curve.len());
        assert_eq!(curve.last().unwrap().0, 100.0);
        assert!((curve.last().unwrap().1 - 10_000.0).abs() < 10.0);
        assert!(curve.windows(2).all(|w| w[0].0 <= w[1].0 && w[0].1 <= w[1].1));
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
