//! ringlog-bench: the benchmark suite behind `ringlog bench`.
//!
//! Code map: [`cli`] (options and the top-level run) → [`scenario`] (scenario names, the
//! engine rounds against raw-disk, the suite runner) → in-process systems under test
//! [`engine_append`] / [`raw_disk`], or the cluster: [`cluster`] (local `ringlog serve`
//! children) and [`cluster_scenarios`] (replicated, sweep, fetch, failover, retention,
//! many-producers) over [`cluster_client`] (producers and readers on the Rust client) →
//! [`producers`] (producer threads) and [`load`] (closed loop, open-loop schedule) →
//! [`measure`] (HdrHistogram latency, timelines, throughput, CPU) → [`report`] (terminal
//! table, `results.json`, `report.md`, histograms) and [`plots`] (SVG), written into a run
//! folder ([`run_folder`]: timestamped, `results/latest`). [`compare`] is `ringlog bench
//! compare`. [`workdir`] owns the temporary directory and the Ctrl-C stop flag; [`progress`]
//! the progress bars; [`machine`] describes the host a run was measured on and
//! [`provenance`] the build that ran.
//!
//! Architecture invariant: only `raw_disk` (io_uring submission and aligned buffers) and
//! `cluster` (one `pre_exec` setting PR_SET_PDEATHSIG on node children) contain `unsafe`;
//! every other module is safe code.
//! Architecture invariant: every node process the bench starts is killed and reaped before
//! `cli::run` returns, on every path, and dies with the bench if the bench is killed.

#![deny(unsafe_code)]

pub mod cli;
pub mod cluster;
pub mod cluster_client;
pub mod cluster_scenarios;
pub mod compare;
pub mod engine_append;
pub mod load;
pub mod machine;
pub mod measure;
pub mod plots;
pub mod producers;
pub mod progress;
pub mod provenance;
pub mod raw_disk;
pub mod report;
pub mod run_folder;
pub mod scenario;
pub mod workdir;
