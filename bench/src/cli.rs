//! `ringlog bench`: command-line options and the top-level run (work dir, suite, report).
//!
//! With no arguments it runs every scenario with the standard durations in a temporary
//! directory under the current directory (the repository when started by `cargo run`),
//! prints the table, writes `results/results.json` and `results/report.md`, and removes the
//! temporary directory — also when Ctrl-C interrupts it.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use crate::engine_append::EngineAppendOptions;
use crate::report;
use crate::scenario::{self, ScenarioName, SuiteOptions, SuiteReport};
use crate::workdir::{StopFlag, WorkDir};

/// Options of `ringlog bench`.
#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// Scenarios to run (default: all, in their fixed order).
    #[arg(value_enum)]
    pub scenarios: Vec<ScenarioName>,
    /// Tiny durations and files: checks that every scenario works (figures meaningless).
    #[arg(long)]
    pub quick: bool,
    /// Measured seconds per scenario (default 10, or 0.5 with --quick).
    #[arg(long)]
    pub duration_secs: Option<f64>,
    /// Warm-up seconds per scenario, split over the rounds (default 2.5, or 0.1 with --quick).
    #[arg(long)]
    pub warmup_secs: Option<f64>,
    /// Rounds each scenario's time is split into, alternating engine and raw-disk (default
    /// 10, or 1 with --quick).
    #[arg(long)]
    pub rounds: Option<u32>,
    /// Appends kept outstanding by the closed loop (enough to saturate the disk).
    #[arg(long, default_value_t = 256)]
    pub appenders: usize,
    /// Record value size in bytes.
    #[arg(long, default_value_t = 1024)]
    pub record_size: usize,
    /// Records per append call (one batch each).
    #[arg(long, default_value_t = 1)]
    pub records_per_append: usize,
    /// LogConfig.segment_size_bytes (default 256 MiB, or 8 MiB with --quick).
    #[arg(long)]
    pub segment_size_bytes: Option<u64>,
    /// LogConfig.flush_bytes_max: most bytes coalesced into one write + fdatasync.
    #[arg(long)]
    pub flush_bytes_max: Option<usize>,
    /// LogConfig.queued_bytes_max: most bytes waiting for fdatasync.
    #[arg(long)]
    pub queued_bytes_max: Option<usize>,
    /// IO memory glommio registers per executor (default: 8 MiB, or the most the
    /// RLIMIT_MEMLOCK allows without CAP_IPC_LOCK).
    #[arg(long)]
    pub io_memory_bytes: Option<usize>,
    /// Let the shard executor spin before parking (dedicated cores only).
    #[arg(long)]
    pub spin: bool,
    /// raw-disk write size when the engine scenario is not run.
    #[arg(long, default_value_t = 256 * 1024)]
    pub raw_write_size: usize,
    /// Directory in which the temporary work directory is created (must be disk-backed).
    #[arg(long, default_value = ".")]
    pub dir: PathBuf,
    /// Folder receiving results.json and report.md.
    #[arg(long, default_value = "results")]
    pub results: PathBuf,
}

impl BenchArgs {
    /// The suite options these arguments select.
    pub fn suite_options(&self) -> SuiteOptions {
        let secs = |value: Option<f64>, normal: f64, quick: f64| {
            Duration::from_secs_f64(
                value.unwrap_or(if self.quick { quick } else { normal }).max(0.0),
            )
        };
        let scenarios = if self.scenarios.is_empty() {
            ScenarioName::ALL.to_vec()
        } else {
            self.scenarios.clone()
        };
        let mut engine = EngineAppendOptions {
            appenders: self.appenders,
            record_size_bytes: self.record_size,
            records_per_append: self.records_per_append,
            spin: self.spin,
            ..EngineAppendOptions::default()
        };
        if self.quick {
            engine.segment_size_bytes = 8 << 20;
        }
        engine.io_memory_bytes = self.io_memory_bytes.unwrap_or_else(default_io_memory_bytes);
        if let Some(bytes) = self.segment_size_bytes {
            engine.segment_size_bytes = bytes;
        }
        if let Some(bytes) = self.flush_bytes_max {
            engine.flush_bytes_max = bytes;
        }
        if let Some(bytes) = self.queued_bytes_max {
            engine.queued_bytes_max = bytes;
        }
        SuiteOptions {
            scenarios,
            quick: self.quick,
            duration: secs(self.duration_secs, 10.0, 0.5),
            warmup: secs(self.warmup_secs, 2.5, 0.1),
            rounds: self.rounds.unwrap_or(if self.quick { 1 } else { 10 }).max(1),
            engine,
            raw_write_size_bytes: self.raw_write_size,
            raw_file_size_bytes: if self.quick { 8 << 20 } else { 256 << 20 },
        }
    }
}

/// Largest IO memory the bench asks for by default.
const IO_MEMORY_BENCH_MAX_BYTES: usize = 8 << 20;

/// 8 MiB of registered IO memory (so flush buffers never fall back to freshly mapped,
/// page-faulting allocations), or less if RLIMIT_MEMLOCK would refuse that for one shard.
fn default_io_memory_bytes() -> usize {
    use ringlog_engine::runtime::{
        current_memlock_limit, has_cap_ipc_lock, REGISTERED_RINGS_PER_EXECUTOR,
    };
    match current_memlock_limit() {
        Ok(Some(limit)) if !has_cap_ipc_lock() => {
            let fitting = limit / REGISTERED_RINGS_PER_EXECUTOR / 4096 * 4096;
            (fitting as usize).min(IO_MEMORY_BENCH_MAX_BYTES)
        }
        _ => IO_MEMORY_BENCH_MAX_BYTES,
    }
}

/// Runs `ringlog bench`: returns the report (already printed and written).
pub fn run(args: &BenchArgs, stop: &StopFlag) -> anyhow::Result<SuiteReport> {
    let options = args.suite_options();
    let work = WorkDir::create(&args.dir)?;
    eprintln!(
        "ringlog bench: work dir {} ({} on {})",
        work.path().display(),
        work.mount.filesystem,
        work.mount.device
    );
    let report = scenario::run_suite(&options, &work, stop, &mut |line| eprintln!("  {line}"))?;
    drop(work);
    print!("{}", report::terminal_table(&report));
    let written = report::write_results(&report, &args.results)?;
    for path in written {
        eprintln!("wrote {}", path.display());
    }
    Ok(report)
}
