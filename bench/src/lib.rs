//! ringlog-bench: the benchmark suite behind `ringlog bench`.
//!
//! Code map: [`cli`] (options and the top-level run) → [`scenario`] (the named scenarios and
//! the suite runner) → [`load`] (load models: closed loop now, open loop with issue 5) →
//! [`engine_append`] / [`raw_disk`] (the systems under test) → [`measure`] (HdrHistogram
//! latency, throughput, fdatasync counters, CPU time) → [`report`] (terminal table,
//! `results.json`, `report.md`). [`workdir`] owns the temporary directory and the Ctrl-C stop
//! flag; [`machine`] describes the host a run was measured on.
//!
//! Architecture invariant: only `raw_disk` contains `unsafe` (io_uring submission and aligned
//! buffers); every other module is safe code.

#![deny(unsafe_code)]

pub mod cli;
pub mod cluster;
pub mod cluster_client;
pub mod cluster_scenarios;
pub mod engine_append;
pub mod load;
pub mod machine;
pub mod measure;
pub mod plots;
pub mod producers;
pub mod progress;
pub mod raw_disk;
pub mod report;
pub mod scenario;
pub mod workdir;
