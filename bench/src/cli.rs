//! `ringlog bench`: command-line options and the top-level run (work dir, suite, report).
//!
//! With no arguments it starts a local 3-node cluster (`ringlog serve` children of this very
//! binary) in a temporary directory under the current directory (the repository when started
//! by `cargo run`), runs every scenario for about a minute in total, prints the table, writes
//! `results.json`, `report.md`, SVG plots and the latency histograms into a new run folder
//! `results/<UTC timestamp>[-<label>]/` (`results/latest` points at it), stops the cluster and
//! removes the temporary directory — also when Ctrl-C interrupts it. `ringlog bench compare
//! A B` compares two run folders; `ringlog bench merge` merges saved histograms.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context as _};
use clap::{Args, Subcommand, ValueEnum};
use ringlog_net::protocol::Acks;

use crate::cluster::ClusterOptions;
use crate::cluster_scenarios::{ClusterScenarioOptions, StallInjection};
use crate::engine_append::EngineAppendOptions;
use crate::load::LoadModel;
use crate::measure::LatencyRecorder;
use crate::report;
use crate::run_folder;
use crate::scenario::{self, ClusterSetup, ScenarioName, SuiteOptions, SuiteReport};
use crate::workdir::{StopFlag, WorkDir};

/// Options of `ringlog bench`.
#[derive(Debug, Clone, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct BenchArgs {
    /// Instead of a run: compare two runs, or merge saved histograms.
    #[command(subcommand)]
    pub command: Option<BenchCommand>,
    /// Scenarios to run (default: all, in their fixed order).
    #[arg(value_enum)]
    pub scenarios: Vec<ScenarioName>,
    /// Tiny durations and files: checks that every scenario works (figures meaningless).
    #[arg(long)]
    pub quick: bool,

    // ---- in-process scenarios (engine, engine-handle, raw-disk) ----
    /// Measured seconds per in-process scenario, split over the rounds (default 4, or 0.5
    /// with --quick).
    #[arg(long)]
    pub duration_secs: Option<f64>,
    /// Warm-up seconds per in-process scenario, split over the rounds (default 1, or 0.1
    /// with --quick).
    #[arg(long)]
    pub warmup_secs: Option<f64>,
    /// Rounds the in-process scenarios' time is split into, alternating each with raw-disk
    /// (default 4, or 1 with --quick).
    #[arg(long)]
    pub rounds: Option<u32>,
    /// Appends kept outstanding by the engine scenarios' closed loop: enough that more than
    /// `flushes_in_flight_max` flushes' worth waits, so the engine's pipeline can stay full
    /// (256 × 16 records of 1 KiB ≈ 4 flushes; with --records-per-append 1 use 2048).
    #[arg(long, default_value_t = crate::engine_append::APPENDERS_DEFAULT)]
    pub appenders: usize,
    /// Record value size in bytes (every scenario).
    #[arg(long, default_value_t = 1024)]
    pub record_size: usize,
    /// Records per append call in the engine scenarios (one batch each; 16, as the cluster
    /// scenarios' --records-per-batch; 1 measures the per-append CPU).
    #[arg(long, default_value_t = crate::engine_append::RECORDS_PER_APPEND_DEFAULT)]
    pub records_per_append: usize,
    /// Engine LogConfig.segment_size_bytes (default 256 MiB, or 8 MiB with --quick).
    #[arg(long)]
    pub segment_size_bytes: Option<u64>,
    /// Engine LogConfig.flush_bytes_max: most bytes coalesced into one write + fdatasync.
    #[arg(long)]
    pub flush_bytes_max: Option<usize>,
    /// Engine LogConfig.queued_bytes_max: most bytes waiting for fdatasync.
    #[arg(long)]
    pub queued_bytes_max: Option<usize>,
    /// Engine LogConfig.flushes_in_flight_max: flushes (write + fdatasync) in flight at once.
    #[arg(long)]
    pub flushes_in_flight_max: Option<usize>,
    /// IO memory glommio registers per executor (default: 8 MiB, or the most the
    /// RLIMIT_MEMLOCK allows without CAP_IPC_LOCK).
    #[arg(long)]
    pub io_memory_bytes: Option<usize>,
    /// Let the engine's shard executor spin before parking (dedicated cores only).
    #[arg(long)]
    pub spin: bool,
    /// Engine LogConfig.retention_bytes_max, applied on the shard after every segment roll
    /// while appending; the window opens once retention deletes segments (steady state).
    /// Default: 2 segments; 0 = unlimited (a growing log, every spare zero-filled).
    #[arg(long)]
    pub engine_retention_bytes: Option<u64>,
    /// Longest engine warm-up while waiting for that steady state (default 60, or 10 with
    /// --quick); the row's note says when it was hit.
    #[arg(long)]
    pub engine_warmup_timeout_secs: Option<f64>,
    /// raw-disk write size when no engine scenario is run.
    #[arg(long, default_value_t = 256 * 1024)]
    pub raw_write_size: usize,

    // ---- cluster scenarios ----
    /// Run the cluster scenarios against this existing cluster (shard-0 client addresses,
    /// `host:port,host:port`) instead of starting one; failover and retention need a local
    /// cluster and are refused.
    #[arg(long, value_delimiter = ',')]
    pub bootstrap: Vec<String>,
    /// With --bootstrap: connect with TLS, verifying the nodes' certificates against this CA
    /// (PEM) for the name `ringlog-node`, as the other client commands do (the local cluster
    /// the bench starts is plaintext and ignores it).
    #[arg(long, value_name = "PEM", env = "RINGLOG_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// Client certificate chain (PEM) to present: required by nodes with `tls.client_ca`.
    #[arg(long, value_name = "PEM", env = "RINGLOG_TLS_CERT", requires_all = ["tls_ca", "tls_key"])]
    pub tls_cert: Option<PathBuf>,
    /// Private key (PEM) of `--tls-cert`.
    #[arg(long, value_name = "PEM", env = "RINGLOG_TLS_KEY", requires_all = ["tls_ca", "tls_cert"])]
    pub tls_key: Option<PathBuf>,
    /// The `ringlog` binary started as `ringlog serve` (default: this executable).
    #[arg(long)]
    pub ringlog_bin: Option<PathBuf>,
    /// Nodes of the local cluster.
    #[arg(long, default_value_t = 3)]
    pub nodes: usize,
    /// Shards (executor threads) per local node.
    #[arg(long, default_value_t = 1)]
    pub node_shards: usize,
    /// Partitions of the local cluster (producers are spread over them).
    #[arg(long, default_value_t = 3)]
    pub partitions: u32,
    /// Segment size of the local cluster (default 64 MiB, or 8 MiB with --quick).
    #[arg(long)]
    pub cluster_segment_size_bytes: Option<u64>,
    /// Producer threads (one connection each) of the cluster scenarios.
    #[arg(long, default_value_t = 16)]
    pub producers: usize,
    /// Producers of the many-producers scenario (default 200, or 32 with --quick).
    #[arg(long)]
    pub many_producers: Option<usize>,
    /// Produces each producer of the replicated scenario keeps in flight on its connection
    /// (closed loop only): 1 is the blocking client, one produce at a time; 2..=64 a
    /// pipelined connection (`ringlog_net::client::Pipeline`), latency still from each
    /// produce's send to its acknowledgement.
    #[arg(long, default_value_t = 1)]
    pub pipeline: usize,
    /// Records per produce batch (the most, in an open loop).
    #[arg(long, default_value_t = 16)]
    pub records_per_batch: usize,
    /// Open loop: records arrive one by one and a batch is sent at most this long after its
    /// first record arrived; 0: records arrive in whole batches (one request each).
    #[arg(long, default_value_t = 0.0)]
    pub linger_ms: f64,
    /// Acks settings of the replicated scenario (default: quorum,leader,none).
    #[arg(long, value_enum, value_delimiter = ',')]
    pub acks: Vec<AcksArg>,
    /// Load model of the replicated scenario.
    #[arg(long, value_enum, default_value_t = LoadArg::Closed)]
    pub load: LoadArg,
    /// Offered records/s of the open loop (required with --load open).
    #[arg(long)]
    pub rate: Option<f64>,
    /// Offered rates of the sweep, as fractions of the closed-loop maximum (default
    /// 0.1,0.25,0.5,0.75,0.9,1.0, or 0.25,0.5,1.0 with --quick).
    #[arg(long, value_delimiter = ',')]
    pub sweep: Vec<f64>,
    /// The sweep's knee: the highest offered rate whose p99 stays under this bound.
    #[arg(long, default_value_t = 10.0)]
    pub p99_bound_ms: f64,
    /// Measured seconds of each cluster scenario (default 3, or 1 with --quick).
    #[arg(long)]
    pub cluster_duration_secs: Option<f64>,
    /// Warm-up seconds of each cluster run (default 1, or 0.3 with --quick).
    #[arg(long)]
    pub cluster_warmup_secs: Option<f64>,
    /// Measured seconds of each sweep point (default 1.5, or 0.6 with --quick).
    #[arg(long)]
    pub sweep_point_secs: Option<f64>,
    /// Pause the leader of partition 0 (SIGSTOP, then SIGCONT) for this long during the first
    /// replicated run: shows the open loop counting a stall. Local cluster only.
    #[arg(long)]
    pub inject_stall_ms: Option<f64>,
    /// When the injected stall starts, in seconds into the measured window.
    #[arg(long, default_value_t = 0.5)]
    pub inject_stall_at_secs: f64,
    /// Segment size of the retention scenario's cluster.
    #[arg(long, default_value_t = 1 << 20)]
    pub retention_segment_bytes: u64,
    /// retention_bytes_max of the retention scenario's cluster.
    #[arg(long, default_value_t = 2 << 20)]
    pub retention_bytes: u64,
    /// Measured seconds of the retention run: longer than the nodes' retention interval
    /// (5 s) so that segments are deleted while producing (default 8, or 6 with --quick).
    #[arg(long)]
    pub retention_secs: Option<f64>,
    /// Pass --skip-host-checks to the nodes (hosts whose checks fail; never in CI).
    #[arg(long)]
    pub skip_host_checks: bool,
    /// `[log] level` of the local nodes (their logs stay in the work dir).
    #[arg(long, default_value = "warn")]
    pub node_log_level: String,

    // ---- output ----
    /// Directory in which the temporary work directory is created (must be disk-backed).
    #[arg(long, default_value = ".")]
    pub dir: PathBuf,
    /// Folder receiving the run folders (`<UTC timestamp>[-<label>]/`: results.json,
    /// report.md, the SVG plots, histograms/) and the `latest` symlink to the newest.
    #[arg(long, default_value = "results")]
    pub results: PathBuf,
    /// Appended to this run's folder name (letters, digits, `.`, `_`, `-`).
    #[arg(long)]
    pub label: Option<String>,
}

/// `ringlog bench compare` and `ringlog bench merge`.
#[derive(Debug, Clone, Subcommand)]
pub enum BenchCommand {
    /// Per row present in both runs: each metric, the difference in %, and the noise the
    /// row showed between its rounds in each run (exit 0; 1 on unreadable input).
    Compare(CompareArgs),
    /// Merge saved latency histograms (`histograms/*.hdr` of run folders) into one, print its
    /// percentiles and optionally write it.
    Merge(MergeArgs),
}

/// Options of `ringlog bench compare`.
#[derive(Debug, Clone, Args)]
pub struct CompareArgs {
    /// The baseline run: a run folder, `results/latest`, a results folder (its `latest`) or a
    /// results.json.
    pub a: PathBuf,
    /// The run compared with it (same forms).
    pub b: PathBuf,
    /// Output format.
    #[arg(long, value_enum, default_value_t = CompareFormat::Text)]
    pub format: CompareFormat,
}

/// `--format` of `ringlog bench compare`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CompareFormat {
    Text,
    Json,
}

/// Options of `ringlog bench merge`.
#[derive(Debug, Clone, Args)]
pub struct MergeArgs {
    /// Histogram files (HdrHistogram V2 serialization, values in nanoseconds).
    #[arg(required = true)]
    pub histograms: Vec<PathBuf>,
    /// Write the merged histogram here (V2 serialization).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// `--acks` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AcksArg {
    Quorum,
    Leader,
    None,
}

/// `--load` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LoadArg {
    Closed,
    Open,
}

impl BenchArgs {
    /// The suite options these arguments select.
    pub fn suite_options(&self) -> anyhow::Result<SuiteOptions> {
        let secs = |value: Option<f64>, normal: f64, quick: f64| {
            Duration::from_secs_f64(
                value.unwrap_or(if self.quick { quick } else { normal }).max(0.0),
            )
        };
        let scenarios = if self.scenarios.is_empty() {
            ScenarioName::ALL.to_vec()
        } else {
            let mut selected = self.scenarios.clone();
            selected.sort();
            selected.dedup();
            selected
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
        engine.retention_bytes = self.engine_retention_bytes.unwrap_or(
            crate::engine_append::RETENTION_SEGMENTS_DEFAULT * engine.segment_size_bytes,
        );
        engine.warmup_timeout = secs(self.engine_warmup_timeout_secs, 60.0, 10.0);
        if let Some(flushes) = self.flushes_in_flight_max {
            engine.flushes_in_flight_max = flushes;
        }
        Ok(SuiteOptions {
            scenarios,
            quick: self.quick,
            duration: secs(self.duration_secs, 4.0, 0.5),
            warmup: secs(self.warmup_secs, 1.0, 0.1),
            rounds: self.rounds.unwrap_or(if self.quick { 1 } else { 4 }).max(1),
            engine,
            raw_write_size_bytes: self.raw_write_size,
            raw_file_size_bytes: if self.quick { 8 << 20 } else { 256 << 20 },
            cluster: self.cluster_options(&secs)?,
            cluster_setup: self.cluster_setup()?,
        })
    }

    fn cluster_options(
        &self,
        secs: &dyn Fn(Option<f64>, f64, f64) -> Duration,
    ) -> anyhow::Result<ClusterScenarioOptions> {
        let load = match (self.load, self.rate) {
            (LoadArg::Closed, None) => LoadModel::Closed,
            (LoadArg::Closed, Some(_)) => bail!("--rate applies to --load open"),
            (LoadArg::Open, Some(rate)) => LoadModel::Open { rate_records_per_sec: rate },
            (LoadArg::Open, None) => bail!("--load open needs --rate <records/s>"),
        };
        let pipeline_max = ringlog_net::limits::PIPELINE_REQUESTS_MAX;
        if self.pipeline == 0 || self.pipeline > pipeline_max {
            bail!("--pipeline must be in 1..={pipeline_max}");
        }
        if self.pipeline > 1 && load != LoadModel::Closed {
            bail!("--pipeline applies to --load closed");
        }
        let acks = if self.acks.is_empty() {
            vec![Acks::Quorum, Acks::Leader, Acks::None]
        } else {
            self.acks
                .iter()
                .map(|a| match a {
                    AcksArg::Quorum => Acks::Quorum,
                    AcksArg::Leader => Acks::Leader,
                    AcksArg::None => Acks::None,
                })
                .collect()
        };
        let sweep_fractions = if !self.sweep.is_empty() {
            self.sweep.clone()
        } else if self.quick {
            vec![0.25, 0.5, 1.0]
        } else {
            vec![0.1, 0.25, 0.5, 0.75, 0.9, 1.0]
        };
        if sweep_fractions.iter().any(|f| !(*f > 0.0 && *f <= 10.0)) {
            bail!("--sweep fractions must be in (0, 10]");
        }
        if self.record_size < crate::cluster_client::STAMP_BYTES {
            bail!("--record-size must be at least {} bytes", crate::cluster_client::STAMP_BYTES);
        }
        let stall = self.inject_stall_ms.map(|ms| StallInjection {
            at: Duration::from_secs_f64(self.inject_stall_at_secs.max(0.0)),
            length: Duration::from_secs_f64(ms.max(0.0) / 1e3),
        });
        let duration = secs(self.cluster_duration_secs, 3.0, 1.0);
        Ok(ClusterScenarioOptions {
            producers: self.producers,
            many_producers: self.many_producers.unwrap_or(if self.quick { 32 } else { 200 }),
            records_per_batch: self.records_per_batch,
            pipeline: self.pipeline,
            linger: Duration::from_secs_f64(self.linger_ms.max(0.0) / 1e3),
            record_size_bytes: self.record_size,
            partitions: self.partitions,
            acks,
            load,
            sweep_fractions,
            p99_bound: Duration::from_secs_f64(self.p99_bound_ms.max(0.0) / 1e3),
            duration,
            sweep_point_duration: secs(self.sweep_point_secs, 1.5, 0.6),
            warmup: secs(self.cluster_warmup_secs, 1.0, 0.3),
            timeline_interval: if duration <= Duration::from_secs(5) {
                Duration::from_millis(250)
            } else {
                Duration::from_secs(1)
            },
            stall,
        })
    }

    fn cluster_setup(&self) -> anyhow::Result<ClusterSetup> {
        let bootstrap = if self.bootstrap.is_empty() {
            None
        } else {
            let joined = self.bootstrap.join(",");
            let addrs: Vec<SocketAddr> = ringlog_net::client::parse_addresses(&joined)
                .with_context(|| format!("--bootstrap {joined}"))?;
            Some(addrs)
        };
        let bootstrap_tls = match (&bootstrap, &self.tls_ca) {
            (None, _) | (_, None) => None,
            (Some(_), Some(ca)) => {
                use ringlog_net::tls::{client_config, read_certs, read_key};
                let roots = read_certs("--tls-ca (RINGLOG_TLS_CA)", ca)?;
                let identity = match (&self.tls_cert, &self.tls_key) {
                    (Some(cert), Some(key)) => Some((
                        read_certs("--tls-cert (RINGLOG_TLS_CERT)", cert)?,
                        read_key("--tls-key (RINGLOG_TLS_KEY)", key)?,
                    )),
                    _ => None,
                };
                Some(ringlog_net::client::ClientTls::new(client_config(roots, identity)?))
            }
        };
        let binary = match &self.ringlog_bin {
            Some(path) => path.clone(),
            None => std::env::current_exe().context("locating the ringlog binary")?,
        };
        Ok(ClusterSetup {
            bootstrap,
            bootstrap_tls,
            tls_ca: self.tls_ca.clone(),
            binary,
            local: ClusterOptions {
                nodes: self.nodes,
                shards: self.node_shards.max(1),
                partitions: self.partitions.max(1),
                segment_size_bytes: self.cluster_segment_size_bytes.unwrap_or(if self.quick {
                    8 << 20
                } else {
                    64 << 20
                }),
                retention_bytes_max: None,
                io_memory_bytes: 1 << 20,
                skip_host_checks: self.skip_host_checks,
                log_level: self.node_log_level.clone(),
            },
            retention_segment_bytes: self.retention_segment_bytes,
            retention_bytes_max: self.retention_bytes,
            retention_duration: Duration::from_secs_f64(
                self.retention_secs.unwrap_or(if self.quick { 6.0 } else { 8.0 }).max(0.0),
            ),
        })
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
    let options = args.suite_options()?;
    if let Some(label) = &args.label {
        // Refuse a bad label before measuring anything.
        crate::run_folder::check_label(label)?;
    }
    let work = WorkDir::create(&args.dir)?;
    eprintln!(
        "ringlog bench: work dir {} ({} on {})",
        work.path().display(),
        work.mount.filesystem,
        work.mount.device
    );
    let report = scenario::run_suite(&options, &work, stop, &mut |line| eprintln!("  {line}"));
    // Every cluster is stopped inside run_suite; the work dir goes now, on error too.
    drop(work);
    let mut report = report?;
    print!("{}", report::terminal_table(&report));
    let run_dir =
        run_folder::create(&args.results, report.started_unix_secs, args.label.as_deref())?;
    let written = report::write_results(&mut report, &run_dir)?;
    for path in written {
        eprintln!("wrote {}", path.display());
    }
    run_folder::point_latest(&args.results, &run_dir)?;
    eprintln!("{} -> {}", args.results.join(run_folder::LATEST).display(), run_dir.display());
    Ok(report)
}

/// Runs `ringlog bench compare` or `ringlog bench merge`, printing to stdout.
pub fn run_command(command: &BenchCommand) -> anyhow::Result<()> {
    match command {
        BenchCommand::Compare(args) => {
            let comparison = crate::compare::compare(&args.a, &args.b)?;
            match args.format {
                CompareFormat::Text => print!("{}", crate::compare::text(&comparison)),
                CompareFormat::Json => println!(
                    "{}",
                    serde_json::to_string_pretty(&comparison).context("encoding the comparison")?
                ),
            }
        }
        BenchCommand::Merge(args) => {
            let mut merged = LatencyRecorder::new();
            for path in &args.histograms {
                let bytes =
                    std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
                let recorder = LatencyRecorder::from_v2_bytes(&bytes)
                    .with_context(|| format!("reading {}", path.display()))?;
                merged.merge(&recorder);
            }
            let s = merged.summary();
            println!(
                "histograms {}: count {}, mean {:.1} µs, p50 {:.1} µs, p90 {:.1} µs, p99 {:.1} µs, \
                 p99.9 {:.1} µs, max {:.1} µs",
                args.histograms.len(),
                s.count,
                s.mean_us,
                s.p50_us,
                s.p90_us,
                s.p99_us,
                s.p999_us,
                s.max_us
            );
            if let Some(out) = &args.out {
                std::fs::write(out, merged.to_v2_bytes()?)
                    .with_context(|| format!("writing {}", out.display()))?;
                eprintln!("wrote {}", out.display());
            }
        }
    }
    Ok(())
}
