//! `ringlog doctor`: checks this host for what a node needs and says how to fix what is wrong.
//!
//! The checks themselves live in `ringlog_engine::host` (shared with `serve` and the C ABI,
//! which refuse to start on any FAIL with the same lines). This module only turns the report
//! into text or JSON and an exit status.
//!
//! Output: one line per check, `OK|WARN|FAIL  name  found … (expected …) — fix: …`, then a
//! summary line. Exit status: 0 when no check failed, 1 otherwise (WARNs do not fail).

#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use ringlog_engine::host::{Check, HostProbe, HostReport, HostRequirements, HostRoot, Status};
use ringlog_engine::shard::EngineConfig;

/// Data dir checked when none is given: the one the systemd deployment uses.
pub const DATA_DIR_DEFAULT: &str = "/var/lib/ringlog";
/// IO memory checked when none is given: the engine's default.
pub const IO_MEMORY_DEFAULT_BYTES: usize = ringlog_engine::shard::IO_MEMORY_DEFAULT_BYTES;
/// Exit status when at least one check failed.
const EXIT_FAILED_CHECK: u8 = 1;

/// Arguments of `ringlog doctor`.
#[derive(Debug, Clone, Args)]
pub struct DoctorArgs {
    /// Directory that holds (or will hold) the logs: O_DIRECT, filesystem and device are
    /// checked there.
    #[arg(long, value_name = "DIR", default_value = DATA_DIR_DEFAULT)]
    pub data_dir: PathBuf,
    /// Shards (executors, one per core) the node will run.
    #[arg(long, value_name = "N", default_value_t = EngineConfig::new(DATA_DIR_DEFAULT).shards)]
    pub shards: usize,
    /// Bytes of IO memory each executor registers with each of its 3 io_uring rings.
    #[arg(long, value_name = "BYTES", default_value_t = IO_MEMORY_DEFAULT_BYTES)]
    pub io_memory: usize,
    /// Bytes of log the node may keep on disk (checked against free space).
    #[arg(long, value_name = "B")]
    pub retention_bytes: Option<u64>,
    /// Print the report as one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Runs the checks on this host, prints the report and returns the exit status.
pub fn run(args: &DoctorArgs) -> ExitCode {
    let requirements = HostRequirements {
        data_dir: args.data_dir.clone(),
        shards: args.shards,
        io_memory_bytes: args.io_memory,
        retention_bytes: args.retention_bytes,
    };
    let report = HostProbe::new(HostRoot::default()).run(&requirements);
    if args.json {
        println!("{}", json_report(&requirements, &report));
    } else {
        print!("{}", text_report(&requirements, &report));
    }
    if report.is_ready() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_FAILED_CHECK)
    }
}

/// The text report: a header, one line per check, a summary.
pub fn text_report(requirements: &HostRequirements, report: &HostReport) -> String {
    let mut text = format!(
        "ringlog doctor: data dir {}, {} shard(s), io_memory {} bytes, retention {}\n",
        requirements.data_dir.display(),
        requirements.shards,
        requirements.io_memory_bytes,
        requirements
            .retention_bytes
            .map_or_else(|| "unbounded".to_string(), |bytes| format!("{bytes} bytes")),
    );
    for check in &report.checks {
        text.push_str(&check.to_string());
        text.push('\n');
    }
    text.push_str(&summary_line(report));
    text.push('\n');
    text
}

/// `summary: 17 OK, 2 WARN, 0 FAIL — …`.
pub fn summary_line(report: &HostReport) -> String {
    let verdict = if report.is_ready() {
        "this host can run ringlog"
    } else {
        "ringlog serve refuses to start until every FAIL is fixed"
    };
    format!(
        "summary: {} OK, {} WARN, {} FAIL — {verdict}",
        report.count(Status::Ok),
        report.count(Status::Warn),
        report.count(Status::Fail)
    )
}

/// The JSON report: `{ready, summary, requirements, checks: [{name, status, found, expected,
/// fix}]}`.
pub fn json_report(requirements: &HostRequirements, report: &HostReport) -> serde_json::Value {
    serde_json::json!({
        "ready": report.is_ready(),
        "summary": {
            "ok": report.count(Status::Ok),
            "warn": report.count(Status::Warn),
            "fail": report.count(Status::Fail),
        },
        "requirements": {
            "data_dir": requirements.data_dir.display().to_string(),
            "shards": requirements.shards,
            "io_memory_bytes": requirements.io_memory_bytes,
            "retention_bytes": requirements.retention_bytes,
        },
        "checks": report.checks.iter().map(json_check).collect::<Vec<_>>(),
    })
}

fn json_check(check: &Check) -> serde_json::Value {
    serde_json::json!({
        "name": check.name,
        "status": check.status.label(),
        "found": check.found,
        "expected": check.expected,
        "fix": check.fix,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(name: &'static str, status: Status) -> Check {
        Check {
            name,
            status,
            found: format!("{name} found"),
            expected: "something".to_string(),
            fix: if status == Status::Ok { String::new() } else { "do it".to_string() },
        }
    }

    fn requirements() -> HostRequirements {
        HostRequirements {
            data_dir: PathBuf::from("/srv/ringlog"),
            shards: 2,
            io_memory_bytes: 1 << 20,
            retention_bytes: Some(1 << 30),
        }
    }

    #[test]
    fn text_report_prints_one_line_per_check_and_a_failing_summary() {
        let report = HostReport {
            checks: vec![
                check("kernel", Status::Ok),
                check("nofile", Status::Warn),
                check("memlock", Status::Fail),
            ],
        };
        let text = text_report(&requirements(), &report);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 5, "{text}");
        assert!(lines[0].contains("/srv/ringlog, 2 shard(s)"), "{text}");
        assert!(lines[1].starts_with("OK    kernel"), "{text}");
        assert!(lines[2].starts_with("WARN  nofile") && lines[2].ends_with("— fix: do it"));
        assert!(lines[3].starts_with("FAIL  memlock"), "{text}");
        assert_eq!(
            lines[4],
            "summary: 1 OK, 1 WARN, 1 FAIL — ringlog serve refuses to start until every FAIL \
             is fixed"
        );
    }

    #[test]
    fn warnings_alone_keep_the_host_ready() {
        let report =
            HostReport { checks: vec![check("kernel", Status::Ok), check("nofile", Status::Warn)] };
        assert!(summary_line(&report).ends_with("this host can run ringlog"));
        let json = json_report(&requirements(), &report);
        assert_eq!(json["ready"], true);
        assert_eq!(json["summary"]["warn"], 1);
    }

    #[test]
    fn json_report_carries_every_field_of_every_check() {
        let report = HostReport { checks: vec![check("memlock", Status::Fail)] };
        let json = json_report(&requirements(), &report);
        assert_eq!(json["ready"], false);
        assert_eq!(json["requirements"]["retention_bytes"], 1u64 << 30);
        let first = &json["checks"][0];
        assert_eq!(first["name"], "memlock");
        assert_eq!(first["status"], "FAIL");
        assert_eq!(first["found"], "memlock found");
        assert_eq!(first["expected"], "something");
        assert_eq!(first["fix"], "do it");
    }
}
