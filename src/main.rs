//! `ringlog`: the server and command-line tool.
//!
//! One subcommand per job; each lives in the crate that implements it and is only wired up
//! here (`bench` → ringlog-bench's `cli`). Later issues add `serve`, `produce`, `consume`,
//! `status`, `transfer-leader`, `doctor` and `inspect` beside it (design.md §8).

use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};

use ringlog_bench::cli::BenchArgs;
use ringlog_bench::workdir::StopFlag;

mod clear_damage;
mod cli_client;
mod cli_consume_format;
mod cli_generate;
mod config_cli;
mod doctor;
mod inspect;
mod serve;

/// ringlog: a replicated commit-log storage engine on io_uring.
#[derive(Debug, Parser)]
#[command(name = "ringlog", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a node until SIGTERM/SIGINT (prints `ringlog: ready ...` once serving).
    Serve(serve::ServeArgs),
    /// Run the benchmark suite (no arguments: every scenario, results in ./results/<time>/),
    /// or compare two runs (`bench compare A B`).
    Bench(Box<BenchArgs>),
    /// Check this host (kernel, io_uring, memlock, O_DIRECT on the data dir, ...); exit 1 on
    /// any FAIL.
    Doctor(doctor::DoctorArgs),
    /// Decode a segment file and verify its checksums and chain; exit 1 on corruption.
    Inspect(inspect::InspectArgs),
    /// Check a node's configuration file, or print the configuration reference.
    Config(config_cli::ConfigArgs),
    /// Append records to a partition; prints one offset per record.
    Produce(cli_client::ProduceArgs),
    /// Print a partition's committed records (`--format text`: `offset<TAB>value`).
    Consume(cli_client::ConsumeArgs),
    /// Per partition and node: role, term, leader, commit, durable, lag per follower.
    Status(cli_client::StatusArgs),
    /// Hand a partition's leadership to another node.
    TransferLeader(cli_client::TransferLeaderArgs),
    /// Add a node to partitions' groups (as a learner, then a voter once caught up).
    AddNode(cli_client::AddNodeArgs),
    /// Remove a node from partitions' groups.
    RemoveNode(cli_client::RemoveNodeArgs),
    /// On a stopped node: let a damaged replica vote again (the way out when a majority of a
    /// group is damaged at once; may lose acknowledged records: see its --help).
    ClearDamage(clear_damage::ClearDamageArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish or powershell).
    Completions(cli_generate::CompletionsArgs),
    /// Print the roff man page of `ringlog`, or write one page per subcommand to a directory.
    Man(cli_generate::ManArgs),
}

/// Exit status after Ctrl-C (128 + SIGINT), as shells report it.
const EXIT_INTERRUPTED: u8 = 130;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => Ok(serve::run(&args)),
        Command::Bench(args) => run_bench(&args),
        Command::Doctor(args) => Ok(doctor::run(&args)),
        Command::Inspect(args) => inspect::run(&args),
        Command::Config(args) => Ok(config_cli::run(&args)),
        Command::Produce(args) => cli_client::run_produce(&args),
        Command::Consume(args) => cli_client::run_consume(&args),
        Command::Status(args) => cli_client::run_status(&args),
        Command::TransferLeader(args) => cli_client::run_transfer_leader(&args),
        Command::AddNode(args) => cli_client::run_add_node(&args),
        Command::RemoveNode(args) => cli_client::run_remove_node(&args),
        Command::ClearDamage(args) => clear_damage::run(&args),
        Command::Completions(args) => cli_generate::run_completions(Cli::command(), &args),
        Command::Man(args) => cli_generate::run_man(Cli::command(), &args),
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
    if let Some(command) = &args.command {
        ringlog_bench::cli::run_command(command)?;
        return Ok(ExitCode::SUCCESS);
    }
    let stop = StopFlag::on_signals()?;
    let report = ringlog_bench::cli::run(args, &stop)?;
    if report.interrupted {
        return Ok(ExitCode::from(EXIT_INTERRUPTED));
    }
    Ok(ExitCode::SUCCESS)
}
