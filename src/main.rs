//! `ringlog`: the server and command-line tool.
//!
//! One subcommand per job; each lives in the crate that implements it and is only wired up
//! here (`bench` → ringlog-bench's `cli`). Later issues add `serve`, `produce`, `consume`,
//! `status`, `transfer-leader`, `doctor` and `inspect` beside it (design.md §8).

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use ringlog_bench::cli::BenchArgs;
use ringlog_bench::workdir::StopFlag;

mod config_cli;
mod doctor;
mod inspect;

/// ringlog: a replicated commit-log storage engine on io_uring.
#[derive(Debug, Parser)]
#[command(name = "ringlog", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the benchmark suite (no arguments: every scenario, results in ./results).
    Bench(BenchArgs),
    /// Check this host (kernel, io_uring, memlock, O_DIRECT on the data dir, ...); exit 1 on
    /// any FAIL.
    Doctor(doctor::DoctorArgs),
    /// Decode a segment file and verify its checksums and chain; exit 1 on corruption.
    Inspect(inspect::InspectArgs),
    /// Check a node's configuration file, or print the configuration reference.
    Config(config_cli::ConfigArgs),
}

/// Exit status after Ctrl-C (128 + SIGINT), as shells report it.
const EXIT_INTERRUPTED: u8 = 130;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Bench(args) => run_bench(&args),
        Command::Doctor(args) => Ok(doctor::run(&args)),
        Command::Inspect(args) => inspect::run(&args),
        Command::Config(args) => Ok(config_cli::run(&args)),
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("ringlog: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run_bench(args: &BenchArgs) -> anyhow::Result<ExitCode> {
    let stop = StopFlag::on_signals()?;
    let report = ringlog_bench::cli::run(args, &stop)?;
    if report.interrupted {
        return Ok(ExitCode::from(EXIT_INTERRUPTED));
    }
    Ok(ExitCode::SUCCESS)
}
