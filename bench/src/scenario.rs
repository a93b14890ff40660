//! Scenarios: the named runs of the suite, their options, and the suite runner.
//!
//! In-process scenarios (`engine`, `engine-handle`) run in rounds, each round followed by a
//! `raw-disk` run at that round's measured average write size (bytes per fdatasync) — the
//! same bytes at the same write size and cadence, in the same process run and under the same
//! machine load (design.md §9). Cluster scenarios (`replicated`, `sweep`, `fetch`,
//! `many-producers`, `failover`, `retention`) run against a local cluster of `ringlog serve`
//! processes started for the run (or an existing one with `--bootstrap`); each produce row is
//! compared with raw-disk by its *disk efficiency*: replicas × record bytes/s ÷ raw-disk
//! bytes/s, since every replica writes every record to the same disk here.
//!
//! Invariants: every scenario writes only inside its own sub-directory of the [`WorkDir`];
//! a raised stop flag ends the current scenario early and skips the rest; every cluster
//! started here is stopped before `run_suite` returns.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::ValueEnum;
use serde::Serialize;

use crate::cluster::{ClusterOptions, LocalCluster};
use crate::cluster_client::Endpoint;
use crate::cluster_scenarios::{
    self, ClusterRow, ClusterScenarioOptions, ClusterTarget, FailoverReport, SweepReport,
};
use crate::engine_append::{self, EngineAppendOptions};
use crate::machine::Machine;
use crate::measure::RunMeasure;
use crate::progress::ScenarioProgress;
use crate::provenance::Build;
use crate::raw_disk::{self, RawDiskRun, RawDiskSession};
use crate::workdir::{StopFlag, WorkDir};

/// The acceptance bar of issue 2: engine record bytes/s ÷ raw-disk bytes/s at 1 KiB records.
pub const ENGINE_TO_RAW_RATIO_MIN: f64 = 0.85;
/// Points of a percentile curve kept per result.
const CURVE_POINTS_MAX: usize = 200;

/// A scenario of the suite.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ScenarioName {
    /// Single-node log, producer tasks on the shard (embedded use): durable appends.
    Engine,
    /// Single-node log through EngineHandle from another thread: durable appends.
    EngineHandle,
    /// io_uring O_DIRECT writes + fdatasync at the engine's write size, without ringlog.
    RawDisk,
    /// Produce to the cluster with acks=quorum, leader and none.
    Replicated,
    /// Open-loop sweep of offered load (acks=quorum): latency vs load and the knee.
    Sweep,
    /// Tail readers while producing, then catch-up reads from the log start.
    Fetch,
    /// Hundreds of producers with one-record batches.
    ManyProducers,
    /// SIGKILL of a leader mid-run: latency and the unavailability window.
    Failover,
    /// Small segments and retention: segments are deleted while producing.
    Retention,
}

impl ScenarioName {
    /// Every scenario, in run order.
    pub const ALL: [ScenarioName; 9] = [
        ScenarioName::Engine,
        ScenarioName::EngineHandle,
        ScenarioName::RawDisk,
        ScenarioName::Replicated,
        ScenarioName::Sweep,
        ScenarioName::Fetch,
        ScenarioName::ManyProducers,
        ScenarioName::Failover,
        ScenarioName::Retention,
    ];

    /// The name used on the command line and in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            ScenarioName::Engine => "engine",
            ScenarioName::EngineHandle => "engine-handle",
            ScenarioName::RawDisk => "raw-disk",
            ScenarioName::Replicated => "replicated",
            ScenarioName::Sweep => "sweep",
            ScenarioName::Fetch => "fetch",
            ScenarioName::ManyProducers => "many-producers",
            ScenarioName::Failover => "failover",
            ScenarioName::Retention => "retention",
        }
    }

    /// Whether the scenario drives a cluster.
    pub fn is_cluster(self) -> bool {
        !matches!(self, ScenarioName::Engine | ScenarioName::EngineHandle | ScenarioName::RawDisk)
    }

    /// Whether the scenario needs a cluster started here (it kills nodes or reconfigures).
    pub fn needs_local_cluster(self) -> bool {
        matches!(self, ScenarioName::Failover | ScenarioName::Retention)
    }
}

/// Where the cluster scenarios find their cluster.
#[derive(Debug, Clone, Serialize)]
pub struct ClusterSetup {
    /// Existing cluster (shard-0 client addresses); `None`: start one here.
    pub bootstrap: Option<Vec<SocketAddr>>,
    /// TLS settings for the `--bootstrap` cluster's clients (`None`: plaintext).
    #[serde(skip)]
    pub bootstrap_tls: Option<ringlog_net::client::ClientTls>,
    /// The `--tls-ca` the settings came from (recorded in the results).
    pub tls_ca: Option<PathBuf>,
    /// The `ringlog` binary started as `ringlog serve`.
    pub binary: PathBuf,
    pub local: ClusterOptions,
    /// Segment size and retention of the separate `retention` cluster.
    pub retention_segment_bytes: u64,
    pub retention_bytes_max: u64,
    /// Measured time of the retention run: longer than the nodes' retention interval (5 s),
    /// so that retention runs while producers write.
    #[serde(serialize_with = "serialize_secs")]
    pub retention_duration: Duration,
}

/// Options shared by the scenarios of one run.
#[derive(Debug, Clone, Serialize)]
pub struct SuiteOptions {
    /// Scenarios to run (run order is fixed by [`ScenarioName::ALL`]).
    pub scenarios: Vec<ScenarioName>,
    /// Tiny durations and files: checks that every scenario still works.
    pub quick: bool,
    /// Measured time of each in-process scenario (split over the rounds).
    #[serde(serialize_with = "serialize_secs")]
    pub duration: Duration,
    #[serde(serialize_with = "serialize_secs")]
    pub warmup: Duration,
    /// Rounds the duration and warm-up are split into, alternating the scenarios.
    pub rounds: u32,
    /// The engine scenarios' options.
    pub engine: EngineAppendOptions,
    /// raw-disk write size when no engine scenario ran in the same run.
    pub raw_write_size_bytes: usize,
    /// Size of the raw-disk scratch file (writes wrap around inside it).
    pub raw_file_size_bytes: u64,
    pub cluster: ClusterScenarioOptions,
    pub cluster_setup: ClusterSetup,
}

/// What one scenario (or one row of it) measured, with its parameters.
#[derive(Debug, Clone, Serialize)]
pub struct ScenarioResult {
    pub name: ScenarioName,
    /// The row's name in tables (a scenario may have several rows).
    pub label: String,
    pub description: String,
    pub parameters: serde_json::Value,
    pub measure: RunMeasure,
    pub records_per_sec: f64,
    pub mb_per_sec: f64,
    pub offered_records_per_sec: Option<f64>,
    pub offered_mb_per_sec: Option<f64>,
    pub fdatasyncs_per_sec: f64,
    pub disk_bytes_per_fdatasync: f64,
    pub cpu_us_per_record: f64,
    pub node_cpu_secs_per_million_records: Option<f64>,
    pub client_cpu_secs_per_million_records: Option<f64>,
    /// Replicas × record bytes/s ÷ raw-disk bytes/s (cluster produce rows, local cluster).
    pub disk_efficiency: Option<f64>,
    /// (percentile, latency µs) for the percentile plot.
    pub percentile_curve: Vec<(f64, f64)>,
    pub notes: Vec<String>,
    /// The row's name across runs: the label without what a run measured (a sweep row's
    /// offered rate is a fraction of that run's maximum: `sweep 50%`).
    pub key: String,
    /// The options that shape the row's workload: `ringlog bench compare` matches rows on
    /// key + workload.
    pub workload: serde_json::Value,
    /// The row's figures per round, whose spread is the row's noise: the rounds of the
    /// in-process scenarios, or for cluster rows the intervals of their timeline.
    pub rounds: Vec<RoundFigures>,
    /// The latency histogram's file in the run folder (HdrHistogram V2 serialization), set
    /// when the results are written.
    pub histogram_file: Option<String>,
}

/// One round's (or one timeline interval's) figures of a row; `None` where a round does not
/// measure it (timeline intervals keep p99 and max only).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct RoundFigures {
    pub records_per_sec: f64,
    pub mb_per_sec: f64,
    pub cpu_us_per_record: Option<f64>,
    pub p50_us: Option<f64>,
    pub p99_us: Option<f64>,
    pub p999_us: Option<f64>,
}

impl RoundFigures {
    /// The figures of one measured round.
    pub fn of(measure: &RunMeasure) -> RoundFigures {
        let latency = (measure.latency.count > 0).then_some(measure.latency);
        RoundFigures {
            records_per_sec: measure.records_per_sec(),
            mb_per_sec: measure.mb_per_sec(),
            cpu_us_per_record: (!measure.cpu.is_zero()).then(|| measure.cpu_us_per_record()),
            p50_us: latency.map(|l| l.p50_us),
            p99_us: latency.map(|l| l.p99_us),
            p999_us: latency.map(|l| l.p999_us),
        }
    }

    fn of_timeline(point: &crate::measure::TimelinePoint) -> RoundFigures {
        RoundFigures {
            records_per_sec: point.records_per_sec,
            mb_per_sec: point.mb_per_sec,
            cpu_us_per_record: None,
            p50_us: None,
            p99_us: (point.p99_us > 0.0).then_some(point.p99_us),
            p999_us: None,
        }
    }
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
    /// `record_bytes_ratio` of each round alone (scenario round ÷ the raw-disk round after it).
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
    /// Version of this file's layout ([`RESULTS_FORMAT_VERSION`]).
    pub format_version: u32,
    pub started_unix_secs: u64,
    /// The start as an ISO 8601 UTC timestamp.
    pub started_utc: String,
    /// The ringlog build that ran (version, commit, profile).
    pub build: Build,
    /// The bench's own command line (argv).
    pub command_line: Vec<String>,
    pub machine: Machine,
    pub options: SuiteOptions,
    pub scenarios: Vec<ScenarioResult>,
    pub comparisons: Vec<Comparison>,
    pub sweep: Option<SweepReport>,
    pub failover: Option<FailoverReport>,
    /// Set when Ctrl-C ended the run early.
    pub interrupted: bool,
}

/// Version of the `results.json` layout: 2 added `format_version`, `build`, `command_line`,
/// `started_utc`, the machine's `device_model`, and per row `workload`, `rounds` and
/// `histogram_file`.
pub const RESULTS_FORMAT_VERSION: u32 = 2;

/// An in-process scenario run in rounds against raw-disk.
struct Paired {
    name: ScenarioName,
    dir: PathBuf,
    total: Option<RunMeasure>,
    raw_total: Option<RunMeasure>,
    raw_write_sizes: Vec<usize>,
    round_ratios: Vec<f64>,
    rounds: Vec<RoundFigures>,
    raw_rounds: Vec<RoundFigures>,
    /// How each engine round reached its measured window (steady state, spares).
    windows: Vec<engine_append::WindowReport>,
}

/// Runs the selected scenarios inside `work`.
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
    let mut results = Vec::new();
    let mut comparisons = Vec::new();
    for (result, raw, ratios) in run_rounds(options, work, stop, progress)? {
        comparisons.extend(compare_with_raw(&[result.clone(), raw.clone()], &ratios));
        results.push(result);
        if !raw.is_placeholder() {
            results.push(raw);
        }
    }
    let (rows, sweep, failover) = run_cluster_scenarios(options, work, stop, progress)?;
    let raw_bytes_per_sec = results
        .iter()
        .find(|r| r.name == ScenarioName::RawDisk)
        .map(|r| r.measure.bytes_per_sec())
        .filter(|b| *b > 0.0);
    let replicas = match options.cluster_setup.bootstrap {
        None => Some(options.cluster_setup.local.nodes as f64),
        Some(_) => None,
    };
    for (name, row) in rows {
        let mut result = cluster_result(name, row);
        if let (Some(raw), Some(replicas), true) =
            (raw_bytes_per_sec, replicas, name != ScenarioName::Fetch)
        {
            result.disk_efficiency = Some(replicas * result.measure.bytes_per_sec() / raw);
        }
        results.push(result);
    }
    for result in &mut results {
        result.key = match result.label.split_once(" (") {
            Some((key, _)) if result.name == ScenarioName::Sweep => key.to_string(),
            _ => result.label.clone(),
        };
        result.workload = workload(result, options);
    }
    let mut report = SuiteReport {
        format_version: RESULTS_FORMAT_VERSION,
        started_unix_secs,
        started_utc: crate::provenance::utc_timestamp(started_unix_secs),
        build: Build::current(),
        command_line: std::env::args().collect(),
        machine: Machine::describe(&work.mount, work.path()),
        options: options.clone(),
        scenarios: results,
        comparisons,
        sweep,
        failover,
        interrupted: stop.is_raised(),
    };
    report.options.rounds = rounds;
    Ok(report)
}

/// The in-process scenarios and their raw-disk runs: (scenario, its raw-disk, round ratios).
fn run_rounds(
    options: &SuiteOptions,
    work: &WorkDir,
    stop: &StopFlag,
    progress: &mut dyn FnMut(&str),
) -> anyhow::Result<Vec<(ScenarioResult, ScenarioResult, Vec<f64>)>> {
    let rounds = options.rounds.max(1);
    let round_duration = options.duration / rounds;
    let round_warmup = options.warmup / rounds;
    let run_raw = options.scenarios.contains(&ScenarioName::RawDisk);
    let mut paired: Vec<Paired> = Vec::new();
    for name in [ScenarioName::Engine, ScenarioName::EngineHandle] {
        if options.scenarios.contains(&name) {
            paired.push(Paired {
                name,
                dir: work.scenario_dir(name.as_str())?,
                total: None,
                raw_total: None,
                raw_write_sizes: Vec::new(),
                round_ratios: Vec::new(),
                rounds: Vec::new(),
                raw_rounds: Vec::new(),
                windows: Vec::new(),
            });
        }
    }
    if paired.is_empty() && !run_raw {
        return Ok(Vec::new());
    }
    let mut raw_session = if run_raw {
        progress("zero-filling the raw-disk scratch file");
        let dir = work.scenario_dir(ScenarioName::RawDisk.as_str())?;
        Some(RawDiskSession::create(&dir, options.raw_file_size_bytes)?)
    } else {
        None
    };
    let per_round = (round_duration + round_warmup) * paired.len().max(1) as u32
        + if run_raw { round_duration * paired.len().max(1) as u32 } else { Duration::ZERO };
    let label = paired.iter().map(|p| p.name.as_str()).chain(run_raw.then_some("raw-disk"));
    let _bar = ScenarioProgress::start(&label.collect::<Vec<_>>().join(" + "), per_round * rounds);
    let mut raw_alone: Option<(RunMeasure, Vec<usize>, Vec<RoundFigures>)> = None;
    for round in 0..rounds {
        if stop.is_raised() {
            break;
        }
        if paired.is_empty() {
            // raw-disk alone, at --raw-write-size.
            if let Some(session) = raw_session.as_mut() {
                let size = options.raw_write_size_bytes;
                progress(&format!("round {}/{rounds}: raw-disk at {size} B per write", round + 1));
                let measure = session
                    .measure(&raw_run(options, size, round_duration), &|| stop.is_raised())?;
                let entry = raw_alone
                    .get_or_insert_with(|| (RunMeasure::default(), Vec::new(), Vec::new()));
                entry.0.merge(&measure);
                entry.1.push(size);
                entry.2.push(RoundFigures::of(&measure));
            }
            continue;
        }
        for pair in &mut paired {
            if stop.is_raised() {
                break;
            }
            progress(&format!(
                "round {}/{rounds}: {} for {:.1} s (+{:.1} s warm-up)",
                round + 1,
                pair.name.as_str(),
                round_duration.as_secs_f64(),
                round_warmup.as_secs_f64()
            ));
            let engine_round = match pair.name {
                ScenarioName::Engine => engine_append::measure(
                    &options.engine,
                    &pair.dir,
                    round_duration,
                    round_warmup,
                    stop,
                )?,
                _ => engine_append::measure_handle(
                    &options.engine,
                    &pair.dir,
                    round_duration,
                    round_warmup,
                    stop,
                )?,
            };
            pair.windows.push(engine_round.window);
            let measure = engine_round.measure;
            let write_size = Some(measure.disk_bytes_per_fdatasync().round() as usize)
                .filter(|bytes| *bytes > 0)
                .unwrap_or(options.raw_write_size_bytes);
            let scenario_bytes_per_sec = measure.bytes_per_sec();
            pair.rounds.push(RoundFigures::of(&measure));
            merge_into(&mut pair.total, measure);
            let Some(session) = raw_session.as_mut() else { continue };
            if stop.is_raised() {
                break;
            }
            progress(&format!(
                "round {}/{rounds}: raw-disk at {write_size} B per write for {:.1} s",
                round + 1,
                round_duration.as_secs_f64()
            ));
            let measure = session
                .measure(&raw_run(options, write_size, round_duration), &|| stop.is_raised())?;
            if measure.bytes_per_sec() > 0.0 {
                pair.round_ratios.push(scenario_bytes_per_sec / measure.bytes_per_sec());
            }
            pair.raw_write_sizes.push(write_size);
            pair.raw_rounds.push(RoundFigures::of(&measure));
            merge_into(&mut pair.raw_total, measure);
        }
    }
    let single_issuer = raw_session.as_ref().is_some_and(|s| s.single_issuer());
    drop(raw_session);
    let mut out = Vec::new();
    for pair in paired {
        let Some(measure) = pair.total else { continue };
        let (description, parameters, notes) = match pair.name {
            ScenarioName::Engine => engine_append::describe(&options.engine, &pair.windows)?,
            _ => engine_append::describe_handle(&options.engine, &pair.windows)?,
        };
        let mut result = ScenarioResult::new(pair.name, description, parameters, measure, notes);
        result.rounds = pair.rounds;
        let raw = match pair.raw_total {
            Some(raw) => {
                let mut raw =
                    raw_result(options, raw, &pair.raw_write_sizes, pair.name, single_issuer);
                raw.label = format!("raw-disk @{}", pair.name.as_str());
                raw.rounds = pair.raw_rounds;
                raw
            }
            None => {
                // No raw-disk in this run: the scenario alone, compared with nothing.
                out.push((result, ScenarioResult::placeholder(), Vec::new()));
                continue;
            }
        };
        out.push((result, raw, pair.round_ratios));
    }
    if let Some((measure, sizes, rounds)) = raw_alone {
        let mut raw = raw_result(options, measure, &sizes, ScenarioName::RawDisk, single_issuer);
        raw.rounds = rounds;
        out.push((raw, ScenarioResult::placeholder(), Vec::new()));
    }
    Ok(out)
}

fn raw_run(options: &SuiteOptions, write_size_bytes: usize, duration: Duration) -> RawDiskRun {
    RawDiskRun {
        write_size_bytes,
        duration,
        warmup_rounds: if options.quick { 2 } else { 20 },
        // The same concurrency as the engine it is compared with (its flushes in flight).
        queue_depth: options.engine.flushes_in_flight_max.clamp(1, raw_disk::QUEUE_DEPTH_MAX),
    }
}

/// Starts (or connects to) the cluster and runs the selected cluster scenarios.
#[allow(clippy::type_complexity)]
fn run_cluster_scenarios(
    options: &SuiteOptions,
    work: &WorkDir,
    stop: &StopFlag,
    progress: &mut dyn FnMut(&str),
) -> anyhow::Result<(Vec<(ScenarioName, ClusterRow)>, Option<SweepReport>, Option<FailoverReport>)>
{
    let selected = |name: ScenarioName| options.scenarios.contains(&name);
    let main: Vec<ScenarioName> = [
        ScenarioName::Replicated,
        ScenarioName::Sweep,
        ScenarioName::Fetch,
        ScenarioName::ManyProducers,
        ScenarioName::Failover,
    ]
    .into_iter()
    .filter(|n| selected(*n))
    .collect();
    let setup = &options.cluster_setup;
    if setup.bootstrap.is_some() {
        if let Some(name) = options.scenarios.iter().find(|n| n.needs_local_cluster()) {
            anyhow::bail!(
                "scenario {} needs a cluster started by the bench (it kills nodes or needs \
                 its own configuration); leave out --bootstrap or the scenario",
                name.as_str()
            );
        }
    }
    let copts = &options.cluster;
    let mut rows = Vec::new();
    let mut sweep = None;
    let mut failover = None;
    if !main.is_empty() && !stop.is_raised() {
        let mut target = start_target(options, work, "cluster", &setup.local, progress)?;
        let mut max_rate = None;
        for name in main {
            if stop.is_raised() {
                break;
            }
            progress(&format!(
                "{}: {:.1} s (+{:.1} s warm-up)",
                name.as_str(),
                copts.duration.as_secs_f64(),
                copts.warmup.as_secs_f64()
            ));
            match name {
                ScenarioName::Replicated => {
                    let replicated = cluster_scenarios::replicated(&target, copts, stop)?;
                    max_rate = replicated
                        .iter()
                        .find(|r| r.label.ends_with("acks=quorum"))
                        .filter(|_| copts.load == crate::load::LoadModel::Closed)
                        .map(|r| r.measure.records_per_sec());
                    rows.extend(replicated.into_iter().map(|row| (name, row)));
                }
                ScenarioName::Sweep => {
                    let max = match max_rate {
                        Some(max) if max > 0.0 => max,
                        _ => {
                            progress("sweep: measuring the closed-loop maximum first");
                            let mut probe = copts.clone();
                            probe.acks = vec![ringlog_net::protocol::Acks::Quorum];
                            probe.load = crate::load::LoadModel::Closed;
                            probe.stall = None;
                            probe.duration = copts.sweep_point_duration;
                            let rows = cluster_scenarios::replicated(&target, &probe, stop)?;
                            rows.first().map_or(0.0, |r| r.measure.records_per_sec())
                        }
                    };
                    if max <= 0.0 {
                        anyhow::bail!("sweep: the closed loop acknowledged nothing");
                    }
                    let (report, sweep_rows) = cluster_scenarios::sweep(&target, copts, max, stop)?;
                    rows.extend(sweep_rows.into_iter().map(|row| (name, row)));
                    sweep = Some(report);
                }
                ScenarioName::Fetch => {
                    let fetch_rows = cluster_scenarios::fetch(&target, copts, stop)?;
                    rows.extend(fetch_rows.into_iter().map(|row| (name, row)));
                }
                ScenarioName::ManyProducers => {
                    rows.push((name, cluster_scenarios::many_producers(&target, copts, stop)?));
                }
                ScenarioName::Failover => {
                    let (row, report) = cluster_scenarios::failover(&mut target, copts, stop)?;
                    rows.push((name, row));
                    failover = Some(report);
                }
                _ => {}
            }
        }
        drop(target);
    }
    if selected(ScenarioName::Retention) && !stop.is_raised() {
        let mut local = setup.local.clone();
        local.segment_size_bytes = setup.retention_segment_bytes;
        local.retention_bytes_max = Some(setup.retention_bytes_max);
        let target = start_target(options, work, "cluster-retention", &local, progress)?;
        let mut retention = copts.clone();
        retention.duration = setup.retention_duration;
        progress(&format!("retention: {:.1} s", retention.duration.as_secs_f64()));
        rows.push((
            ScenarioName::Retention,
            cluster_scenarios::retention(&target, &retention, setup.retention_bytes_max, stop)?,
        ));
    }
    Ok((rows, sweep, failover))
}

fn start_target(
    options: &SuiteOptions,
    work: &WorkDir,
    dir_name: &str,
    local: &ClusterOptions,
    progress: &mut dyn FnMut(&str),
) -> anyhow::Result<ClusterTarget> {
    let setup = &options.cluster_setup;
    let target = match &setup.bootstrap {
        Some(addrs) if dir_name == "cluster" => ClusterTarget::Remote(Endpoint {
            addrs: addrs.clone(),
            tls: setup.bootstrap_tls.clone(),
        }),
        _ => {
            let dir = work.scenario_dir(dir_name)?;
            progress(&format!(
                "starting a {}-node cluster ({} × `serve`) in {}",
                local.nodes,
                setup.binary.display(),
                dir.display()
            ));
            ClusterTarget::Local(
                LocalCluster::start(&setup.binary, &dir, local)
                    .context("starting the local cluster")?,
            )
        }
    };
    cluster_scenarios::ready(&target, local.partitions).context("waiting for leaders")?;
    Ok(target)
}

/// The options that shape a row's workload: its identity across runs, beside its label.
fn workload(result: &ScenarioResult, options: &SuiteOptions) -> serde_json::Value {
    let engine = &options.engine;
    let cluster = &options.cluster;
    match result.name {
        ScenarioName::Engine | ScenarioName::EngineHandle => serde_json::json!({
            "record_size_bytes": engine.record_size_bytes,
            "records_per_append": engine.records_per_append,
            "appenders": engine.appenders,
            "flushes_in_flight_max": engine.flushes_in_flight_max,
        }),
        ScenarioName::RawDisk => serde_json::json!({
            "queue_depth": engine.flushes_in_flight_max.clamp(1, raw_disk::QUEUE_DEPTH_MAX),
        }),
        _ => serde_json::json!({
            "record_size_bytes": cluster.record_size_bytes,
            "records_per_batch": if result.name == ScenarioName::ManyProducers {
                1
            } else {
                cluster.records_per_batch
            },
            "producers": if result.name == ScenarioName::ManyProducers {
                cluster.many_producers
            } else {
                cluster.producers
            },
            "partitions": cluster.partitions,
            "load": serde_json::to_value(cluster.load).unwrap_or_default(),
            "linger_ms": cluster.linger.as_secs_f64() * 1e3,
            "nodes": match &options.cluster_setup.bootstrap {
                Some(addrs) => serde_json::json!(format!("--bootstrap ({} addresses)", addrs.len())),
                None => serde_json::json!(options.cluster_setup.local.nodes),
            },
        }),
    }
}

fn cluster_result(name: ScenarioName, row: ClusterRow) -> ScenarioResult {
    let mut result =
        ScenarioResult::new(name, row.description, row.parameters, row.measure, row.notes);
    result.label = row.label;
    result.percentile_curve = row.latency.percentile_curve(CURVE_POINTS_MAX);
    result
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
    paired_with: ScenarioName,
    single_issuer: bool,
) -> ScenarioResult {
    let from_scenario = paired_with != ScenarioName::RawDisk;
    let mut notes = vec![format!(
        "write sizes per round {write_sizes:?} B ({}), issued 4 KiB-aligned; sequential \
         write→fdatasync pairs (each linked in one io_uring submission), {} in flight (the \
         engine's flushes_in_flight_max){}",
        if from_scenario {
            format!("the {}'s average bytes per fdatasync in the same round", paired_with.as_str())
        } else {
            "--raw-write-size".to_string()
        },
        options.engine.flushes_in_flight_max.clamp(1, raw_disk::QUEUE_DEPTH_MAX),
        if single_issuer { " (SINGLE_ISSUER + DEFER_TASKRUN)" } else { "" }
    )];
    if measure.operations == 0 {
        notes.push("no write completed (interrupted?)".to_string());
    }
    ScenarioResult::new(
        ScenarioName::RawDisk,
        "io_uring O_DIRECT write + fdatasync into a preallocated zero-filled file".to_string(),
        serde_json::json!({
            "paired_with": paired_with.as_str(),
            "write_size_bytes_per_round": write_sizes,
            "file_size_bytes": options.raw_file_size_bytes,
            "queue_depth": options.engine.flushes_in_flight_max.clamp(1, raw_disk::QUEUE_DEPTH_MAX),
        }),
        measure,
        notes,
    )
}

/// Ratio of the first non-raw-disk result to the raw-disk result in `results`.
pub fn compare_with_raw(results: &[ScenarioResult], round_ratios: &[f64]) -> Vec<Comparison> {
    let Some(raw) =
        results.iter().find(|r| r.name == ScenarioName::RawDisk && r.measure.operations > 0)
    else {
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
        let percentile_curve = measure.recorder.percentile_curve(CURVE_POINTS_MAX);
        let rounds = if measure.timeline.is_empty() {
            vec![RoundFigures::of(&measure)]
        } else {
            measure.timeline.iter().map(RoundFigures::of_timeline).collect()
        };
        ScenarioResult {
            name,
            label: name.as_str().to_string(),
            description,
            parameters,
            records_per_sec: measure.records_per_sec(),
            mb_per_sec: measure.mb_per_sec(),
            offered_records_per_sec: measure.offered_records_per_sec,
            offered_mb_per_sec: None,
            fdatasyncs_per_sec: measure.fdatasyncs_per_sec(),
            disk_bytes_per_fdatasync: measure.disk_bytes_per_fdatasync(),
            cpu_us_per_record: measure.cpu_us_per_record(),
            node_cpu_secs_per_million_records: measure.node_cpu_secs_per_million_records(),
            client_cpu_secs_per_million_records: measure.client_cpu_secs_per_million_records(),
            disk_efficiency: None,
            percentile_curve,
            measure,
            notes,
            key: String::new(),
            workload: serde_json::Value::Null,
            rounds,
            histogram_file: None,
        }
    }

    fn is_placeholder(&self) -> bool {
        self.description.is_empty()
    }

    /// Stands for "no raw-disk row" in pairings; never reported.
    fn placeholder() -> ScenarioResult {
        ScenarioResult::new(
            ScenarioName::RawDisk,
            String::new(),
            serde_json::Value::Null,
            RunMeasure::default(),
            Vec::new(),
        )
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

    #[test]
    fn scenario_names_round_trip_through_the_command_line() {
        for name in ScenarioName::ALL {
            assert_eq!(ScenarioName::from_str(name.as_str(), false).unwrap(), name);
        }
        assert!(ScenarioName::Failover.needs_local_cluster());
        assert!(!ScenarioName::Engine.is_cluster());
    }
}
