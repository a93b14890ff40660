//! Report: the terminal table, and `results.json` + `report.md` in the run folder.
//!
//! The JSON holds every parameter, the build and the machine description, and each row's
//! per-round figures, so a run can be compared with another one later (`compare.rs`); the
//! Markdown is the same table plus the conditions, ready to paste into bench/README.md; the
//! SVG plots (plots.rs) and each row's latency histogram (`histograms/*.hdr`, HdrHistogram V2
//! serialization) go beside them.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context as _;

use crate::scenario::{ScenarioResult, SuiteReport};

/// File names inside the results folder.
pub const RESULTS_JSON: &str = "results.json";
pub const REPORT_MD: &str = "report.md";
/// Sub-folder of the run folder holding the rows' latency histograms.
pub const HISTOGRAMS_DIR: &str = "histograms";

/// Writes `results.json`, `report.md`, the plots and the rows' histograms into `dir`
/// (created if needed); returns their paths. Sets each row's `histogram_file`.
pub fn write_results(report: &mut SuiteReport, dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut written = write_histograms(report, dir)?;
    let json_path = dir.join(RESULTS_JSON);
    let json = serde_json::to_string_pretty(report).context("encoding results")?;
    std::fs::write(&json_path, json + "\n")
        .with_context(|| format!("writing {}", json_path.display()))?;
    let md_path = dir.join(REPORT_MD);
    std::fs::write(&md_path, markdown(report))
        .with_context(|| format!("writing {}", md_path.display()))?;
    written.extend([json_path, md_path]);
    written.extend(crate::plots::write_plots(report, dir)?);
    Ok(written)
}

/// Writes each row's histogram as `histograms/NN-<label>.hdr`.
fn write_histograms(report: &mut SuiteReport, dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut written = Vec::new();
    for (index, result) in report.scenarios.iter_mut().enumerate() {
        if result.measure.recorder.is_empty() {
            continue;
        }
        let folder = dir.join(HISTOGRAMS_DIR);
        std::fs::create_dir_all(&folder)
            .with_context(|| format!("creating {}", folder.display()))?;
        let file = format!("{HISTOGRAMS_DIR}/{index:02}-{}.hdr", file_slug(&result.label));
        let path = dir.join(&file);
        std::fs::write(&path, result.measure.recorder.to_v2_bytes()?)
            .with_context(|| format!("writing {}", path.display()))?;
        result.histogram_file = Some(file);
        written.push(path);
    }
    Ok(written)
}

/// `label` as a file name: lower-case letters, digits and single dashes.
fn file_slug(label: &str) -> String {
    let mut slug = String::new();
    for c in label.chars() {
        if c.is_ascii_alphanumeric() {
            slug.push(c.to_ascii_lowercase());
        } else if !slug.ends_with('-') {
            slug.push('-');
        }
    }
    slug.trim_matches('-').to_string()
}

const COLUMNS: usize = 14;
const HEADERS: [&str; COLUMNS] = [
    "scenario",
    "offered rec/s",
    "records/s",
    "MB/s",
    "p50 µs",
    "p99 µs",
    "p99.9 µs",
    "max µs",
    "fdatasync/s",
    "B/fdatasync",
    "CPU s/Mrec",
    "node CPU s/Mrec",
    "disk eff.",
    "errors",
];

fn row(result: &ScenarioResult) -> [String; COLUMNS] {
    let latency = &result.measure.latency;
    let opt = |value: Option<f64>, digits: usize| {
        value.map_or_else(|| "-".to_string(), |v| format!("{v:.digits$}"))
    };
    let has_records = result.measure.records > 0;
    [
        result.label.clone(),
        opt(result.offered_records_per_sec, 0),
        if has_records { format!("{:.0}", result.records_per_sec) } else { "-".to_string() },
        format!("{:.1}", result.mb_per_sec),
        format!("{:.0}", latency.p50_us),
        format!("{:.0}", latency.p99_us),
        format!("{:.0}", latency.p999_us),
        format!("{:.0}", latency.max_us),
        if result.measure.fdatasyncs > 0 {
            format!("{:.0}", result.fdatasyncs_per_sec)
        } else {
            "-".to_string()
        },
        if result.measure.fdatasyncs > 0 {
            format!("{:.0}", result.disk_bytes_per_fdatasync)
        } else {
            "-".to_string()
        },
        if result.measure.cpu.is_zero() {
            "-".to_string()
        } else {
            format!("{:.2}", result.cpu_us_per_record)
        },
        opt(result.node_cpu_secs_per_million_records, 2),
        result.disk_efficiency.map_or_else(|| "-".to_string(), |e| format!("{:.1}%", e * 100.0)),
        result.measure.errors.to_string(),
    ]
}

/// The results as an aligned plain-text table, followed by the comparisons.
pub fn terminal_table(report: &SuiteReport) -> String {
    let rows: Vec<[String; COLUMNS]> = report.scenarios.iter().map(row).collect();
    let mut widths = HEADERS.map(|h| h.chars().count());
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let line = |cells: &[String], out: &mut String| {
        for (i, (cell, width)) in cells.iter().zip(widths).enumerate() {
            let pad = width - cell.chars().count();
            if i == 0 {
                let _ = write!(out, "{cell}{}  ", " ".repeat(pad));
            } else {
                let _ = write!(out, "{}{cell}  ", " ".repeat(pad));
            }
        }
        out.truncate(out.trim_end().len());
        out.push('\n');
    };
    line(&HEADERS.map(String::from), &mut out);
    for row in &rows {
        line(row, &mut out);
    }
    out.push_str(&comparison_lines(report));
    out.push_str(&cluster_lines(report));
    if report.interrupted {
        out.push_str("interrupted: the run was cut short by Ctrl-C\n");
    }
    out
}

fn comparison_lines(report: &SuiteReport) -> String {
    let mut out = String::new();
    for c in &report.comparisons {
        let verdict = match (c.passed, c.ratio_min) {
            (Some(true), Some(min)) => format!(" — meets the ≥ {:.0}% bar", min * 100.0),
            (Some(false), Some(min)) => format!(" — BELOW the ≥ {:.0}% bar", min * 100.0),
            _ => String::new(),
        };
        let rounds: Vec<String> =
            c.record_bytes_ratio_per_round.iter().map(|r| format!("{:.0}%", r * 100.0)).collect();
        let _ = writeln!(
            out,
            "{} / raw-disk at {} B per write: record bytes {:.1}%, device bytes {:.1}%{verdict}\n  \
             per round: [{}], median {:.1}%; with background zero-fill writes the device \
             wrote {:.1}% of raw-disk's bytes/s",
            c.scenario.as_str(),
            c.write_size_bytes,
            c.record_bytes_ratio * 100.0,
            c.disk_bytes_ratio * 100.0,
            rounds.join(", "),
            c.record_bytes_ratio_median * 100.0,
            c.device_busy_ratio * 100.0,
        );
    }
    out
}

fn cluster_lines(report: &SuiteReport) -> String {
    let mut out = String::new();
    if let Some(sweep) = &report.sweep {
        let knee = sweep
            .knee_records_per_sec
            .map_or_else(|| "none of the points".to_string(), |k| format!("{k:.0} records/s"));
        let _ = writeln!(
            out,
            "sweep (open loop, acks={}): knee = {knee} (highest offered rate with p99 ≤ {:.1} ms \
             and ≥ 95% achieved; closed-loop max {:.0} records/s); p99 at half the max: {}",
            sweep.acks,
            sweep.p99_bound_us / 1e3,
            sweep.closed_loop_max_records_per_sec,
            sweep.p99_at_half_max_us.map_or_else(|| "-".to_string(), |p| format!("{:.0} µs", p)),
        );
    }
    if let Some(failover) = &report.failover {
        let _ = writeln!(
            out,
            "failover: node {} (leader of partitions {:?}) killed {:.2} s into the window; \
             unavailability window {:.0} ms; node restarted and writable after {:.1} s",
            failover.killed_node,
            failover.partitions_led,
            failover.killed_at_secs,
            failover.unavailability_secs * 1e3,
            failover.restart_secs,
        );
    }
    if report.scenarios.iter().any(|r| r.disk_efficiency.is_some()) {
        out.push_str(
            "disk eff. = replicas × record bytes/s ÷ raw-disk bytes/s (raw-disk of this run, \
             every replica on the same disk); CPU s/Mrec: this process (the load generator, or \
             the engine in-process); node CPU: every node process\n",
        );
    }
    out
}

/// The results as Markdown: conditions, table, comparisons, notes.
pub fn markdown(report: &SuiteReport) -> String {
    let m = &report.machine;
    let b = &report.build;
    let mut out = String::from("# ringlog benchmark report\n\n");
    let _ = writeln!(
        out,
        "- ringlog {} (commit {}), {} build (opt-level {})\n\
         - machine: {} × {}, kernel {}, memlock {}\n- filesystem: {} on {} (mounted at {}), \
         device model: {}\n- load average (1 min) at start: {}\n- command: `{}`\n\
         - started: {} (unix {}){}\n",
        b.version,
        b.commit,
        b.profile,
        b.opt_level,
        m.cpus,
        m.cpu_model,
        m.kernel,
        m.memlock_limit,
        m.filesystem,
        m.device,
        m.mount_point,
        m.device_model,
        m.load_average_1m,
        report.command_line.join(" "),
        report.started_utc,
        report.started_unix_secs,
        if report.options.quick { " (--quick: figures are not meaningful)" } else { "" },
    );
    out.push_str(&format!("| {} |\n", HEADERS.join(" | ")));
    out.push_str(&format!("|{}\n", "---|".repeat(HEADERS.len())));
    for result in &report.scenarios {
        out.push_str(&format!("| {} |\n", row(result).join(" | ")));
    }
    out.push('\n');
    for line in comparison_lines(report).lines().chain(cluster_lines(report).lines()) {
        let _ = writeln!(out, "- {line}");
    }
    out.push('\n');
    if let Some(sweep) = &report.sweep {
        out.push_str("Offered-load sweep:\n\n| offered rec/s | achieved rec/s | p50 µs | p99 µs | p99.9 µs | max µs |\n|---|---|---|---|---|---|\n");
        for p in &sweep.points {
            let _ = writeln!(
                out,
                "| {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} |",
                p.offered_records_per_sec,
                p.achieved_records_per_sec,
                p.p50_us,
                p.p99_us,
                p.p999_us,
                p.max_us
            );
        }
        out.push('\n');
    }
    for plot in crate::plots::plot_files(report) {
        let _ = writeln!(out, "![{plot}]({plot})");
    }
    out.push('\n');
    for result in &report.scenarios {
        let _ = writeln!(out, "**{}**: {}", result.label, result.description);
        if result.measure.background_bytes > 0 {
            let _ = writeln!(
                out,
                "- background writes (zero-filling spare segments) in the measured window: \
                 {:.1} MB, i.e. {:.1} MB/s on top of the {:.1} MB/s of flushed batches",
                result.measure.background_bytes as f64 / 1e6,
                result.measure.background_bytes as f64
                    / 1e6
                    / result.measure.elapsed.as_secs_f64().max(f64::MIN_POSITIVE),
                result.measure.disk_bytes as f64
                    / 1e6
                    / result.measure.elapsed.as_secs_f64().max(f64::MIN_POSITIVE),
            );
        }
        let _ = writeln!(out, "parameters: `{}`", result.parameters);
        for note in &result.notes {
            let _ = writeln!(out, "- {note}");
        }
        out.push('\n');
    }
    if report.interrupted {
        out.push_str("**interrupted** by Ctrl-C: the figures cover a shortened run.\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_file_names_are_slugs_of_the_labels() {
        assert_eq!(file_slug("replicated acks=quorum"), "replicated-acks-quorum");
        assert_eq!(file_slug("sweep 50% (1200/s)"), "sweep-50-1200-s");
        assert_eq!(file_slug("raw-disk @engine"), "raw-disk-engine");
    }
}
