//! ringlog-sim: runs the deterministic Raft simulator for one seed (with a readable trace) or
//! for a range of seeds (soak runs).
//!
//! ```text
//! ringlog-sim --seed 1234 [--nodes 3] [--steps 5000] [--trace]
//! ringlog-sim --seeds 0..100000 [--nodes 3|5|both] [--steps 5000] [--threads 2]
//! ```
//! `--nodes both` (the default for ranges) runs even seeds on 3 nodes and odd seeds on 5.
//! Exit code: 0 if every seed passed, 1 on any violation, 2 on bad arguments.

use std::ops::Range;
use std::process::ExitCode;
use std::time::Instant;

use ringlog_sim::{
    install_quiet_panic_hook, replay_command, run_seed_catching, run_seeds, FaultConfig, Mutation,
    RangeReport, SimOptions, Trace,
};

/// Bound on failing seeds listed before a range run stops.
const FAILURES_MAX_DEFAULT: usize = 20;

#[derive(Debug)]
enum Nodes {
    Fixed(usize),
    Both,
}

#[derive(Debug)]
struct Args {
    seeds: Range<u64>,
    single: bool,
    nodes: Nodes,
    steps: u64,
    trace: bool,
    threads: usize,
    failures_max: usize,
    mutation: Mutation,
    faults: FaultConfig,
}

fn usage() -> &'static str {
    "usage: ringlog-sim (--seed N | --seeds A..B) [--nodes 3|5|both] [--steps N] [--trace] \
     [--threads N] [--failures-max N] [--faults all|none] \
     [--mutation <name>] (ack-before-durable, forget-vote-on-restart, repair-from-lower-term,
     torn-tail-as-clean, single-slot-rollback, full-disk-refusal-as-durable)"
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        seeds: 0..0,
        single: false,
        nodes: Nodes::Both,
        steps: ringlog_sim::STEPS_DEFAULT,
        trace: false,
        threads: 2,
        failures_max: FAILURES_MAX_DEFAULT,
        mutation: Mutation::None,
        faults: FaultConfig::all(),
    };
    let mut seen_seed = false;
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        let number = |v: String| v.parse::<u64>().map_err(|e| format!("{flag} {v}: {e}"));
        match flag.as_str() {
            "--seed" => {
                let seed = number(value()?)?;
                args.seeds = seed..seed + 1;
                args.single = true;
                seen_seed = true;
            }
            "--seeds" => {
                let v = value()?;
                let (a, b) = v.split_once("..").ok_or(format!("--seeds {v}: expected A..B"))?;
                args.seeds = number(a.to_string())?..number(b.to_string())?;
                seen_seed = true;
            }
            "--nodes" => {
                args.nodes = match value()?.as_str() {
                    "both" => Nodes::Both,
                    v => Nodes::Fixed(number(v.to_string())?.clamp(1, 9) as usize),
                }
            }
            "--steps" => args.steps = number(value()?)?,
            "--trace" => args.trace = true,
            "--threads" => args.threads = number(value()?)?.clamp(1, 64) as usize,
            "--failures-max" => args.failures_max = number(value()?)?.max(1) as usize,
            "--faults" => {
                args.faults = match value()?.as_str() {
                    "all" => FaultConfig::all(),
                    "none" => FaultConfig::none(),
                    v => return Err(format!("--faults {v}: expected all or none")),
                }
            }
            "--mutation" => {
                let v = value()?;
                args.mutation = match Mutation::from_name(&v) {
                    Some(m) => m,
                    None => return Err(format!("--mutation {v}: unknown")),
                }
            }
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument {other}")),
        }
    }
    if !seen_seed {
        return Err("--seed or --seeds is required".into());
    }
    Ok(args)
}

fn options(args: &Args, seed: u64) -> SimOptions {
    let nodes = match args.nodes {
        Nodes::Fixed(n) => n,
        Nodes::Both if seed % 2 == 0 => 3,
        Nodes::Both => 5,
    };
    let mut opts = SimOptions::new(seed, nodes);
    opts.steps = args.steps;
    opts.mutation = args.mutation;
    opts.faults = args.faults;
    opts
}

fn run_single(args: &Args) -> ExitCode {
    let opts = options(args, args.seeds.start);
    let trace =
        if args.trace { Trace::to(Box::new(|line| println!("{line}"))) } else { Trace::off() };
    match run_seed_catching(opts, trace) {
        Ok(summary) => {
            println!("seed {} passed: {summary:?}", opts.seed);
            ExitCode::SUCCESS
        }
        Err(failure) => {
            println!("seed {} FAILED: {failure}", opts.seed);
            println!("replay: {}", replay_command(&opts));
            ExitCode::FAILURE
        }
    }
}

fn run_range(args: &Args) -> ExitCode {
    install_quiet_panic_hook();
    let started = Instant::now();
    let total = args.seeds.end.saturating_sub(args.seeds.start);
    let step = (total / 20).clamp(1, 1_000);
    let failures_printed = std::sync::atomic::AtomicUsize::new(0);
    let progress = |r: &RangeReport| {
        // Failures are printed as they happen (the full list comes again at the end).
        if r.failures.len() > failures_printed.load(std::sync::atomic::Ordering::Relaxed) {
            failures_printed.store(r.failures.len(), std::sync::atomic::Ordering::Relaxed);
            let (seed, failure) = r.failures.last().expect("non-empty");
            println!("FAILED seed {seed}: {failure}");
            println!("  replay: {}", replay_command(&options(args, *seed)));
        }
        if r.seeds_run % step == 0 || r.seeds_run == total {
            let secs = started.elapsed().as_secs_f64();
            println!(
                "{}/{} seeds, {} failed, {:.0} seeds/s, {:.0}s elapsed",
                r.seeds_run,
                total,
                r.failures.len(),
                r.seeds_run as f64 / secs.max(1e-9),
                secs
            );
        }
    };
    let report = run_seeds(
        args.seeds.clone(),
        args.threads,
        args.failures_max,
        &|s| options(args, s),
        &progress,
    );
    let secs = started.elapsed().as_secs_f64();
    println!(
        "done: {} seeds, {} steps, {} acked, {} committed entries, {} crashes, {} faults, \
         {} corrupted frames, {} full disks ({} writes held), slowest liveness {} steps, {:.1}s",
        report.seeds_run,
        report.steps_run,
        report.acked,
        report.committed,
        report.crashes,
        report.faults,
        report.corrupted_frames,
        report.disk_full_events,
        report.held_for_space,
        report.liveness_steps_max,
        secs
    );
    if report.failures.is_empty() {
        println!("no violations");
        return ExitCode::SUCCESS;
    }
    println!("{} seeds FAILED:", report.failures.len());
    for (seed, failure) in &report.failures {
        println!("seed {seed}: {failure}");
        println!("  replay: {}", replay_command(&options(args, *seed)));
    }
    ExitCode::FAILURE
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(args) => args,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("ringlog-sim: {e}");
            }
            eprintln!("{}", usage());
            return ExitCode::from(2);
        }
    };
    if args.single {
        run_single(&args)
    } else {
        run_range(&args)
    }
}
