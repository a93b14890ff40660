//! `ringlog-nemesis`: the multi-process nemesis soak (issue #13) as a command, for long runs.
//! See tests/README.md. Exit status: 0 clean, 1 anomalies found, 2 usage error.
//!
//! ```sh
//! cargo build --bin ringlog --bin ringlog-nemesis
//! target/debug/ringlog-nemesis --duration-secs 1800 --events all
//! ```
//!
//! The `ringlog` binary is taken from `RINGLOG_BIN`, else beside this executable. Ctrl-C (or
//! SIGTERM) ends the fault phase early; the final check and the cleanup still run.

// The one unsafe call: unshare(2) in netcut.rs (the `partition` event's network namespace).
#![deny(unsafe_code)]

#[path = "../../cluster/harness.rs"]
mod harness;
#[path = "../nemesis/mod.rs"]
mod nemesis;
#[path = "../../cluster/netcut.rs"]
mod netcut;

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--help" || a == "-h") {
        println!("{}", nemesis::USAGE);
        return;
    }
    let options = match nemesis::Options::parse(&args, harness::seed_from_time()) {
        Ok(options) => options,
        Err(problem) => {
            eprintln!("ringlog-nemesis: {problem}");
            std::process::exit(2);
        }
    };
    let interrupt = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, interrupt.clone()).expect("install a signal flag");
    }
    let report = nemesis::run(&options, &interrupt);
    println!("{}", report.summary());
    std::process::exit(if report.is_clean() { 0 } else { 1 });
}
