//! Scenarios: the named runs of the suite, their options, and the suite runner.
//!
//! A scenario turns [`SuiteOptions`] into one [`ScenarioResult`]. The runner orders them so
//! that `raw-disk` runs after the scenarios it is compared with and uses their measured
//! average write size (bytes per fdatasync) — the same bytes at the same write size and
//! cadence, in the same process run (design.md §9). Issue 5 adds the cluster scenarios
//! (`replicated`, `fetch`, `failover`, `retention`, `many-producers`) to [`ScenarioName`].
//!
//! Invariants: every scenario writes only inside its own sub-directory of the [`WorkDir`];
//! a raised stop flag ends the current scenario early and skips the rest.

use std::time::Duration;

use clap::ValueEnum;
use serde::Serialize;

use crate::engine_append::{self, EngineAppendOptions};
use crate::machine::Machine;
use crate::measure::{process_cpu_time, RunMeasure};
use crate::raw_disk::{self, RawDiskConfig};
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
    /// The raw-disk write size used (the scenario's average bytes per fdatasync).
    pub write_size_bytes: usize,
    /// The bar this comparison is held to, if any.
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

/// Runs the selected scenarios in order inside `work`.
pub fn run_suite(
    options: &SuiteOptions,
    work: &WorkDir,
    stop: &StopFlag,
    progress: &mut dyn FnMut(&str),
) -> anyhow::Result<SuiteReport> {
    let started_unix_secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut report = SuiteReport {
        started_unix_secs,
        machine: Machine::describe(&work.mount),
        options: options.clone(),
        scenarios: Vec::new(),
        comparisons: Vec::new(),
        interrupted: false,
    };
    for name in ScenarioName::ALL {
        if !options.scenarios.contains(&name) {
            continue;
        }
        if stop.is_raised() {
            break;
        }
        progress(&format!(
            "running {} for {:.1} s (+{:.1} s warm-up)",
            name.as_str(),
            options.duration.as_secs_f64(),
            options.warmup.as_secs_f64()
        ));
        let dir = work.scenario_dir(name.as_str())?;
        let result = match name {
            ScenarioName::Engine => {
                engine_append::run(&options.engine, &dir, options.duration, options.warmup, stop)?
            }
            ScenarioName::RawDisk => run_raw_disk(options, &report, &dir, stop)?,
        };
        report.scenarios.push(result);
    }
    report.comparisons = compare_with_raw(&report.scenarios);
    report.interrupted = stop.is_raised();
    Ok(report)
}

fn run_raw_disk(
    options: &SuiteOptions,
    report: &SuiteReport,
    dir: &std::path::Path,
    stop: &StopFlag,
) -> anyhow::Result<ScenarioResult> {
    let engine_write = report
        .scenarios
        .iter()
        .find(|s| s.name == ScenarioName::Engine)
        .map(|s| s.disk_bytes_per_fdatasync.round() as usize)
        .filter(|bytes| *bytes > 0);
    let write_size_bytes = engine_write.unwrap_or(options.raw_write_size_bytes);
    let config = RawDiskConfig {
        dir: dir.to_path_buf(),
        file_size_bytes: options.raw_file_size_bytes,
        write_size_bytes,
        duration: options.duration,
        warmup_rounds: if options.quick { 2 } else { 50 },
    };
    let cpu_before = process_cpu_time();
    let mut measure = raw_disk::run(&config, &|| stop.is_raised())?;
    measure.cpu = process_cpu_time().saturating_sub(cpu_before);
    let written = measure.disk_bytes_per_fdatasync() as usize;
    let mut notes = vec![format!(
        "write size {write_size_bytes} B requested ({}), {written} B issued (4 KiB-aligned); \
         sequential write→fdatasync, queue depth 1, linked in one io_uring submission",
        if engine_write.is_some() {
            "the engine's average bytes per fdatasync in this run"
        } else {
            "--raw-write-size"
        }
    )];
    if measure.operations == 0 {
        notes.push("no write completed (interrupted?)".to_string());
    }
    Ok(ScenarioResult::new(
        ScenarioName::RawDisk,
        "io_uring O_DIRECT write + fdatasync into a preallocated zero-filled file".to_string(),
        serde_json::json!({
            "write_size_bytes": written,
            "file_size_bytes": options.raw_file_size_bytes,
            "queue_depth": 1,
        }),
        measure,
        notes,
    ))
}

/// Ratios of each scenario to the raw-disk result of the same run.
pub fn compare_with_raw(results: &[ScenarioResult]) -> Vec<Comparison> {
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
            let disk_bytes_per_sec = r.measure.disk_bytes as f64
                / r.measure.elapsed.as_secs_f64().max(f64::MIN_POSITIVE);
            Comparison {
                scenario: r.name,
                record_bytes_ratio,
                disk_bytes_ratio: disk_bytes_per_sec / raw_bytes_per_sec,
                write_size_bytes: raw.disk_bytes_per_fdatasync.round() as usize,
                ratio_min,
                passed: ratio_min.map(|min| record_bytes_ratio >= min),
            }
        })
        .collect()
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

fn serialize_secs<S: serde::Serializer>(value: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_f64(value.as_secs_f64())
}
