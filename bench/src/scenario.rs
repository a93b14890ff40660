//! Scenarios: the named runs of the suite, their options, and the suite runner.
//!
//! A scenario turns [`SuiteOptions`] into one [`ScenarioResult`]. The runner interleaves them
//! in rounds so that `raw-disk` runs right after the scenario it is compared with, at that
//! scenario's measured average write size (bytes per fdatasync) — the same bytes at the same
//! write size and cadence, in the same process run and under the same machine load
//! (design.md §9). Issue 5 adds the cluster scenarios
//! (`replicated`, `fetch`, `failover`, `retention`, `many-producers`) to [`ScenarioName`].
//!
//! Invariants: every scenario writes only inside its own sub-directory of the [`WorkDir`];
//! a raised stop flag ends the current scenario early and skips the rest.

use std::time::Duration;

use clap::ValueEnum;
use serde::Serialize;

use crate::engine_append::{self, EngineAppendOptions};
use crate::machine::Machine;
use crate::measure::RunMeasure;
use crate::raw_disk::{RawDiskRun, RawDiskSession};
use crate::workdir::{StopFlag, WorkDir};

/// The acceptance bar of issue 2: engine record bytes/s ÷ raw-disk bytes/s at 1 KiB records.
pub const ENGINE_TO_RAW_RATIO_MIN: f64 = 0.85;

/// A scenario of the suite.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ScenarioName {
    /// Single-node log through the shard runtime, no network: durable appends.
    Engine,
    /// io_uring O_DIRECT writes + fdatasync at the engine's write size, without ringlog.
    RawDisk,
}

impl ScenarioName {
    /// Every scenario, in run order.
    pub const ALL: [ScenarioName; 2] = [ScenarioName::Engine, ScenarioName::RawDisk];

    /// The name used on the command line and in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            ScenarioName::Engine => "engine",
            ScenarioName::RawDisk => "raw-disk",
        }
    }
}

/// Options shared by the scenarios of one run.
#[derive(Debug, Clone, Serialize)]
pub struct SuiteOptions {
    /// Scenarios to run (run order is fixed by [`ScenarioName::ALL`]).
    pub scenarios: Vec<ScenarioName>,
    /// Tiny durations and files: checks that every scenario still works.
    pub quick: bool,
    #[serde(serialize_with = "serialize_secs")]
    pub duration: Duration,
    #[serde(serialize_with = "serialize_secs")]
    pub warmup: Duration,
    /// Rounds the duration and warm-up are split into, alternating the scenarios.
    pub rounds: u32,
    /// The engine scenario's options.
    pub engine: EngineAppendOptions,
    /// raw-disk write size when no engine scenario ran in the same run.
    pub raw_write_size_bytes: usize,
    /// Size of the raw-disk scratch file (writes wrap around inside it).
    pub raw_file_size_bytes: u64,
}

/// What one scenario measured, with its parameters.
#[derive(Debug, Clone, Serialize)]
pub struct ScenarioResult {
    pub name: ScenarioName,
    pub description: String,
    pub parameters: serde_json::Value,
    pub measure: RunMeasure,
    pub records_per_sec: f64,
    pub mb_per_sec: f64,
    pub fdatasyncs_per_sec: f64,
    pub disk_bytes_per_fdatasync: f64,
    pub cpu_us_per_record: f64,
    pub notes: Vec<String>,
}

/// A scenario compared with the raw-disk baseline of the same run.
#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    pub scenario: ScenarioName,
    /// Scenario user (record value) bytes/s ÷ raw-disk bytes/s.
    pub record_bytes_ratio: f64,
    /// Scenario device bytes/s (headers and padding included) ÷ raw-disk bytes/s.
    pub disk_bytes_ratio: f64,
    /// Like `disk_bytes_ratio` but counting the scenario's background writes too (the log's
    /// zero-filling of spare segments): how busy it kept the device compared with raw-disk.
    pub device_busy_ratio: f64,
    /// The raw-disk write size used (the scenario's average bytes per fdatasync).
    pub write_size_bytes: usize,
    /// `record_bytes_ratio` of each round alone (engine round ÷ the raw-disk round after it).
    pub record_bytes_ratio_per_round: Vec<f64>,
    /// Median of the per-round ratios: less sensitive than the total to load drifting
    /// between rounds on a shared machine.
    pub record_bytes_ratio_median: f64,
    /// The bar this comparison is held to, if any (checked against the total ratio).
    pub ratio_min: Option<f64>,
    pub passed: Option<bool>,
}

/// Everything one suite run produced.
#[derive(Debug, Clone, Serialize)]
pub struct SuiteReport {
    pub started_unix_secs: u64,
    pub machine: Machine,
    pub options: SuiteOptions,
    pub scenarios: Vec<ScenarioResult>,
    pub comparisons: Vec<Comparison>,
    /// Set when Ctrl-C ended the run early.
    pub interrupted: bool,
}

/// Runs the selected scenarios inside `work`, interleaved in `options.rounds` rounds.
///
/// The machine is shared, so its disk and CPU capacity drift during a run; running each
/// scenario in several short rounds, alternating with raw-disk, exposes both to the same
/// conditions. raw-disk replays, in each round, the average write size the engine produced in
/// that round.
pub fn run_suite(
    options: &SuiteOptions,
    work: &WorkDir,
    stop: &StopFlag,
    progress: &mut dyn FnMut(&str),
) -> anyhow::Result<SuiteReport> {
    let started_unix_secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let rounds = options.rounds.max(1);
    let round_duration = options.duration / rounds;
    let round_warmup = options.warmup / rounds;
    let run_engine = options.scenarios.contains(&ScenarioName::Engine);
    let run_raw = options.scenarios.contains(&ScenarioName::RawDisk);
    let engine_dir = work.scenario_dir(ScenarioName::Engine.as_str())?;
    let mut raw_session = if run_raw {
        progress("zero-filling the raw-disk scratch file");
        let dir = work.scenario_dir(ScenarioName::RawDisk.as_str())?;
        Some(RawDiskSession::create(&dir, options.raw_file_size_bytes)?)
    } else {
        None
    };
    let mut engine_total: Option<RunMeasure> = None;
    let mut raw_total: Option<RunMeasure> = None;
    let mut raw_write_sizes = Vec::new();
    let mut round_ratios = Vec::new();
    for round in 0..rounds {
        if stop.is_raised() {
            break;
        }
        let mut engine_write = None;
        let mut engine_round_bytes_per_sec = None;
        if run_engine {
            progress(&format!(
                "round {}/{rounds}: engine for {:.1} s (+{:.1} s warm-up)",
                round + 1,
                round_duration.as_secs_f64(),
                round_warmup.as_secs_f64()
            ));
            let measure = engine_append::measure(
                &options.engine,
                &engine_dir,
                round_duration,
                round_warmup,
                stop,
            )?;
            engine_write = Some(measure.disk_bytes_per_fdatasync().round() as usize)
                .filter(|bytes| *bytes > 0);
            engine_round_bytes_per_sec = Some(measure.bytes_per_sec());
            merge_into(&mut engine_total, measure);
        }
        if let Some(session) = raw_session.as_mut() {
            if stop.is_raised() {
                break;
            }
            let write_size_bytes = engine_write.unwrap_or(options.raw_write_size_bytes);
            progress(&format!(
                "round {}/{rounds}: raw-disk at {write_size_bytes} B per write for {:.1} s",
                round + 1,
                round_duration.as_secs_f64()
            ));
            let run = RawDiskRun {
                write_size_bytes,
                duration: round_duration,
                warmup_rounds: if options.quick { 2 } else { 20 },
            };
            let measure = session.measure(&run, &|| stop.is_raised())?;
            if let (Some(engine_bytes), true) =
                (engine_round_bytes_per_sec, measure.bytes_per_sec() > 0.0)
            {
                round_ratios.push(engine_bytes / measure.bytes_per_sec());
            }
            raw_write_sizes.push(write_size_bytes);
            merge_into(&mut raw_total, measure);
        }
    }
    let single_issuer = raw_session.as_ref().is_some_and(|s| s.single_issuer());
    drop(raw_session);

    let mut scenarios = Vec::new();
    if let Some(measure) = engine_total {
        let (description, parameters, notes) = engine_append::describe(&options.engine)?;
        scenarios.push(ScenarioResult::new(
            ScenarioName::Engine,
            description,
            parameters,
            measure,
            notes,
        ));
    }
    if let Some(measure) = raw_total {
        scenarios.push(raw_result(options, measure, &raw_write_sizes, run_engine, single_issuer));
    }
    let mut report = SuiteReport {
        started_unix_secs,
        machine: Machine::describe(&work.mount),
        options: options.clone(),
        comparisons: compare_with_raw(&scenarios, &round_ratios),
        scenarios,
        interrupted: stop.is_raised(),
    };
    report.options.rounds = rounds;
    Ok(report)
}

fn merge_into(total: &mut Option<RunMeasure>, measure: RunMeasure) {
    match total {
        Some(total) => total.merge(&measure),
        None => *total = Some(measure),
    }
}

fn raw_result(
    options: &SuiteOptions,
    measure: RunMeasure,
    write_sizes: &[usize],
    from_engine: bool,
    single_issuer: bool,
) -> ScenarioResult {
    let mut notes = vec![format!(
        "write sizes per round {write_sizes:?} B ({}), issued 4 KiB-aligned; sequential \
         write→fdatasync at queue depth 1, linked in one io_uring submission{}",
        if from_engine {
            "the engine's average bytes per fdatasync in the same round"
        } else {
            "--raw-write-size"
        },
        if single_issuer { " (SINGLE_ISSUER + DEFER_TASKRUN)" } else { "" }
    )];
    if measure.operations == 0 {
        notes.push("no write completed (interrupted?)".to_string());
    }
    ScenarioResult::new(
        ScenarioName::RawDisk,
        "io_uring O_DIRECT write + fdatasync into a preallocated zero-filled file".to_string(),
        serde_json::json!({
            "write_size_bytes_per_round": write_sizes,
            "file_size_bytes": options.raw_file_size_bytes,
            "queue_depth": 1,
        }),
        measure,
        notes,
    )
}

/// Ratios of each scenario to the raw-disk result of the same run.
pub fn compare_with_raw(results: &[ScenarioResult], round_ratios: &[f64]) -> Vec<Comparison> {
    let Some(raw) = results.iter().find(|r| r.name == ScenarioName::RawDisk) else {
        return Vec::new();
    };
    let raw_bytes_per_sec = raw.measure.bytes_per_sec();
    if raw_bytes_per_sec <= 0.0 {
        return Vec::new();
    }
    results
        .iter()
        .filter(|r| r.name != ScenarioName::RawDisk)
        .map(|r| {
            let ratio_min = (r.name == ScenarioName::Engine).then_some(ENGINE_TO_RAW_RATIO_MIN);
            let record_bytes_ratio = r.measure.bytes_per_sec() / raw_bytes_per_sec;
            let secs = r.measure.elapsed.as_secs_f64().max(f64::MIN_POSITIVE);
            let disk_bytes_per_sec = r.measure.disk_bytes as f64 / secs;
            let busy_bytes_per_sec =
                (r.measure.disk_bytes + r.measure.background_bytes) as f64 / secs;
            Comparison {
                scenario: r.name,
                record_bytes_ratio,
                disk_bytes_ratio: disk_bytes_per_sec / raw_bytes_per_sec,
                device_busy_ratio: busy_bytes_per_sec / raw_bytes_per_sec,
                write_size_bytes: raw.disk_bytes_per_fdatasync.round() as usize,
                record_bytes_ratio_per_round: round_ratios.to_vec(),
                record_bytes_ratio_median: median(round_ratios).unwrap_or(record_bytes_ratio),
                ratio_min,
                passed: ratio_min.map(|min| record_bytes_ratio >= min),
            }
        })
        .collect()
}

/// The median of `values` (mean of the middle two for an even count).
pub fn median(values: &[f64]) -> Option<f64> {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(sorted[n / 2]),
        _ => Some((sorted[n / 2 - 1] + sorted[n / 2]) / 2.0),
    }
}

impl ScenarioResult {
    /// A result with its derived rates computed from `measure`.
    pub fn new(
        name: ScenarioName,
        description: String,
        parameters: serde_json::Value,
        measure: RunMeasure,
        notes: Vec<String>,
    ) -> ScenarioResult {
        ScenarioResult {
            name,
            description,
            parameters,
            records_per_sec: measure.records_per_sec(),
            mb_per_sec: measure.mb_per_sec(),
            fdatasyncs_per_sec: measure.fdatasyncs_per_sec(),
            disk_bytes_per_fdatasync: measure.disk_bytes_per_fdatasync(),
            cpu_us_per_record: measure.cpu_us_per_record(),
            measure,
            notes,
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

    #[test]
    fn the_median_takes_the_middle_value() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
    }
}
