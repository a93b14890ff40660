//! `ringlog bench compare A B`: the per-row differences between two runs, beside the noise
//! each row showed between its rounds.
//!
//! Rows match on their identity: `key` (the label without measured parts) and `workload` (the
//! options that shape the load). For each metric: the two values, the difference in % of A,
//! and each run's noise: the relative standard deviation (sample stddev ÷ mean, in %) of the
//! metric over the row's rounds (in-process rows) or timeline intervals (cluster rows). A
//! difference is *within noise* when |Δ%| ≤ noise A + noise B; with fewer than two rounds on
//! either side the noise is unknown and no verdict is given.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use serde::Serialize;
use serde_json::Value;

use crate::scenario::RESULTS_FORMAT_VERSION;

/// The metrics compared: (name in the output, path in a row, path in a row's round).
const METRICS: [(&str, &[&str], &str); 6] = [
    ("records/s", &["records_per_sec"], "records_per_sec"),
    ("MB/s", &["mb_per_sec"], "mb_per_sec"),
    ("CPU µs/rec", &["cpu_us_per_record"], "cpu_us_per_record"),
    ("p50 µs", &["measure", "latency", "p50_us"], "p50_us"),
    ("p99 µs", &["measure", "latency", "p99_us"], "p99_us"),
    ("p99.9 µs", &["measure", "latency", "p999_us"], "p999_us"),
];

/// Two runs compared.
#[derive(Debug, Clone, Serialize)]
pub struct RunComparison {
    pub a: RunInfo,
    pub b: RunInfo,
    pub rows: Vec<RowComparison>,
    /// Rows (key and workload) present in only one of the runs.
    pub only_in_a: Vec<String>,
    pub only_in_b: Vec<String>,
}

/// Where a run came from.
#[derive(Debug, Clone, Serialize)]
pub struct RunInfo {
    pub path: PathBuf,
    pub started_utc: String,
    pub commit: String,
    pub profile: String,
}

/// One row present in both runs.
#[derive(Debug, Clone, Serialize)]
pub struct RowComparison {
    pub key: String,
    pub rounds_a: usize,
    pub rounds_b: usize,
    pub metrics: Vec<MetricComparison>,
}

/// One metric of a row.
#[derive(Debug, Clone, Serialize)]
pub struct MetricComparison {
    pub metric: &'static str,
    pub a: f64,
    pub b: f64,
    /// (B − A) ÷ A in %; `None` when A is 0.
    pub difference_percent: Option<f64>,
    /// Relative stddev over the rounds, in %; `None` with fewer than two rounds.
    pub noise_a_percent: Option<f64>,
    pub noise_b_percent: Option<f64>,
    /// |difference| ≤ noise A + noise B; `None` when a noise is unknown.
    pub within_noise: Option<bool>,
}

/// Compares the runs `a` and `b` (run folders, `latest`, or results.json paths).
pub fn compare(a: &Path, b: &Path) -> anyhow::Result<RunComparison> {
    let (a_path, a_json) = load(a)?;
    let (b_path, b_json) = load(b)?;
    let a_rows = rows(&a_json, &a_path)?;
    let b_rows = rows(&b_json, &b_path)?;
    let mut compared = Vec::new();
    let mut only_in_a = Vec::new();
    for (identity, a_row) in &a_rows {
        let Some((_, b_row)) = b_rows.iter().find(|(id, _)| id == identity) else {
            only_in_a.push(identity.describe());
            continue;
        };
        compared.push(compare_row(&identity.key, a_row, b_row));
    }
    let only_in_b = b_rows
        .iter()
        .filter(|(id, _)| !a_rows.iter().any(|(other, _)| other == id))
        .map(|(id, _)| id.describe())
        .collect();
    Ok(RunComparison {
        a: run_info(a_path, &a_json),
        b: run_info(b_path, &b_json),
        rows: compared,
        only_in_a,
        only_in_b,
    })
}

/// The comparison as text: one block per row, then the rows found on one side only.
pub fn text(comparison: &RunComparison) -> String {
    let mut out = String::new();
    for (side, run) in [("A", &comparison.a), ("B", &comparison.b)] {
        let _ = writeln!(
            out,
            "{side}: {} (started {}, commit {}, {} build)",
            run.path.display(),
            run.started_utc,
            run.commit,
            run.profile
        );
    }
    let _ = writeln!(
        out,
        "Δ = (B − A) ÷ A; noise = stddev ÷ mean over a row's rounds; \"within noise\" when \
         |Δ| ≤ noise A + noise B"
    );
    for row in &comparison.rows {
        let _ = writeln!(out, "\n{} (rounds: A {}, B {})", row.key, row.rounds_a, row.rounds_b);
        let _ = writeln!(
            out,
            "  {:<11} {:>12} {:>12} {:>9} {:>9} {:>9}",
            "metric", "A", "B", "Δ", "noise A", "noise B"
        );
        for m in &row.metrics {
            let percent = |p: Option<f64>, sign: bool| match p {
                Some(p) if sign => format!("{p:+.1}%"),
                Some(p) => format!("±{p:.1}%"),
                None => "-".to_string(),
            };
            let verdict = match m.within_noise {
                Some(true) => "within noise",
                Some(false) => "BEYOND noise",
                None => "noise unknown",
            };
            let _ = writeln!(
                out,
                "  {:<11} {:>12} {:>12} {:>9} {:>9} {:>9}  {verdict}",
                m.metric,
                figure(m.a),
                figure(m.b),
                percent(m.difference_percent, true),
                percent(m.noise_a_percent, false),
                percent(m.noise_b_percent, false),
            );
        }
    }
    for (side, rows) in [("A", &comparison.only_in_a), ("B", &comparison.only_in_b)] {
        if !rows.is_empty() {
            out.push('\n');
        }
        for row in rows {
            let _ = writeln!(out, "only in {side}: {row}");
        }
    }
    out
}

fn figure(value: f64) -> String {
    if value.abs() >= 100.0 {
        format!("{value:.0}")
    } else {
        format!("{value:.2}")
    }
}

/// A row's identity.
#[derive(Debug, Clone, PartialEq)]
struct Identity {
    key: String,
    workload: Value,
}

impl Identity {
    fn describe(&self) -> String {
        format!("{} {}", self.key, self.workload)
    }
}

fn load(argument: &Path) -> anyhow::Result<(PathBuf, Value)> {
    let path = crate::run_folder::results_json(argument)?;
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let json: Value = serde_json::from_str(&text)
        .with_context(|| format!("{} is not valid JSON", path.display()))?;
    match json.get("format_version").and_then(Value::as_u64) {
        Some(v) if v == u64::from(RESULTS_FORMAT_VERSION) => Ok((path, json)),
        Some(v) => bail!(
            "{}: results format_version {v}; this ringlog reads version {RESULTS_FORMAT_VERSION}",
            path.display()
        ),
        None => bail!(
            "{}: no format_version (written by a ringlog before run folders, without per-round \
             figures): rerun the bench with this version to compare",
            path.display()
        ),
    }
}

fn rows<'a>(json: &'a Value, path: &Path) -> anyhow::Result<Vec<(Identity, &'a Value)>> {
    let Some(scenarios) = json.get("scenarios").and_then(Value::as_array) else {
        bail!("{}: no `scenarios` array", path.display());
    };
    scenarios
        .iter()
        .map(|row| {
            let key = row
                .get("key")
                .and_then(Value::as_str)
                .with_context(|| format!("{}: a row without a `key`", path.display()))?;
            let workload = row.get("workload").cloned().unwrap_or(Value::Null);
            Ok((Identity { key: key.to_string(), workload }, row))
        })
        .collect()
}

fn compare_row(key: &str, a: &Value, b: &Value) -> RowComparison {
    let rounds = |row: &Value| row.get("rounds").and_then(Value::as_array).map_or(0, Vec::len);
    let metrics = METRICS
        .iter()
        .filter_map(|(metric, path, round_field)| {
            let value = |row: &Value| {
                path.iter().try_fold(row, |v, field| v.get(field)).and_then(Value::as_f64)
            };
            let (a_value, b_value) = (value(a)?, value(b)?);
            if a_value == 0.0 && b_value == 0.0 {
                return None; // not measured by this row (no CPU, no latency)
            }
            let noise_a = noise(a, round_field);
            let noise_b = noise(b, round_field);
            let difference = (a_value != 0.0).then(|| (b_value - a_value) / a_value * 100.0);
            let within_noise = match (difference, noise_a, noise_b) {
                (Some(d), Some(na), Some(nb)) => Some(d.abs() <= na + nb),
                _ => None,
            };
            Some(MetricComparison {
                metric,
                a: a_value,
                b: b_value,
                difference_percent: difference,
                noise_a_percent: noise_a,
                noise_b_percent: noise_b,
                within_noise,
            })
        })
        .collect();
    RowComparison { key: key.to_string(), rounds_a: rounds(a), rounds_b: rounds(b), metrics }
}

/// Relative sample standard deviation of `field` over a row's rounds, in %.
fn noise(row: &Value, field: &str) -> Option<f64> {
    let values: Vec<f64> = row
        .get("rounds")?
        .as_array()?
        .iter()
        .filter_map(|round| round.get(field).and_then(Value::as_f64))
        .collect();
    relative_stddev_percent(&values)
}

/// Sample standard deviation ÷ mean, in %; `None` for fewer than 2 values or a zero mean.
pub fn relative_stddev_percent(values: &[f64]) -> Option<f64> {
    if values.len() < 2 {
        return None;
    }
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    if mean == 0.0 {
        return None;
    }
    let variance = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0);
    Some(variance.sqrt() / mean.abs() * 100.0)
}

fn run_info(path: PathBuf, json: &Value) -> RunInfo {
    let text =
        |value: Option<&Value>| value.and_then(Value::as_str).unwrap_or("unknown").to_string();
    RunInfo {
        path,
        started_utc: text(json.get("started_utc")),
        commit: text(json.pointer("/build/commit")),
        profile: text(json.pointer("/build/profile")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(dir: &Path, rows: Value) -> PathBuf {
        let json = serde_json::json!({
            "format_version": RESULTS_FORMAT_VERSION,
            "started_utc": "2026-12-07T15:30:07Z",
            "build": { "commit": "abc", "profile": "release" },
            "scenarios": rows,
        });
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join("results.json"), json.to_string()).unwrap();
        dir.to_path_buf()
    }

    fn row(key: &str, producers: u64, records_per_sec: f64, rounds: &[f64]) -> Value {
        serde_json::json!({
            "key": key,
            "workload": { "producers": producers },
            "records_per_sec": records_per_sec,
            "mb_per_sec": records_per_sec / 1000.0,
            "cpu_us_per_record": 0.0,
            "measure": { "latency": { "p50_us": 100.0, "p99_us": 200.0, "p999_us": 300.0 } },
            "rounds": rounds.iter().map(|r| serde_json::json!({ "records_per_sec": r })).collect::<Vec<_>>(),
        })
    }

    #[test]
    fn rows_match_on_key_and_workload_and_differences_are_judged_against_noise() {
        let dir = tempfile::tempdir().unwrap();
        let a = run(
            &dir.path().join("a"),
            serde_json::json!([
                row("engine", 1, 1000.0, &[900.0, 1000.0, 1100.0]),
                row("fetch tail", 4, 500.0, &[500.0, 500.0]),
                row("retention", 16, 10.0, &[10.0]),
            ]),
        );
        let b = run(
            &dir.path().join("b"),
            serde_json::json!([
                row("engine", 1, 1050.0, &[1000.0, 1050.0, 1100.0]),
                row("fetch tail", 4, 600.0, &[600.0, 601.0]),
                row("retention", 32, 10.0, &[10.0]),
            ]),
        );
        let comparison = compare(&a, &b).unwrap();
        assert_eq!(comparison.rows.len(), 2);
        let engine = &comparison.rows[0].metrics[0];
        assert_eq!(engine.metric, "records/s");
        assert!((engine.difference_percent.unwrap() - 5.0).abs() < 1e-9);
        assert!((engine.noise_a_percent.unwrap() - 10.0).abs() < 1e-9);
        assert_eq!(engine.within_noise, Some(true));
        let fetch = &comparison.rows[1].metrics[0];
        assert_eq!(fetch.within_noise, Some(false), "{fetch:?}");
        // No CPU was measured: that metric is left out, latency is kept.
        assert!(comparison.rows[0].metrics.iter().all(|m| m.metric != "CPU µs/rec"));
        assert!(comparison.rows[0].metrics.iter().any(|m| m.metric == "p99 µs"));
        // A different workload is a different row.
        assert_eq!(comparison.only_in_a, ["retention {\"producers\":16}"]);
        assert_eq!(comparison.only_in_b, ["retention {\"producers\":32}"]);
        let text = text(&comparison);
        assert!(text.contains("engine (rounds: A 3, B 3)"), "{text}");
        assert!(text.contains("BEYOND noise"), "{text}");
        assert!(text.contains("only in B: retention"), "{text}");
    }

    #[test]
    fn a_missing_or_old_results_file_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let error = compare(&dir.path().join("none"), &dir.path().join("none")).unwrap_err();
        assert!(error.to_string().contains("no such run folder"), "{error:#}");
        std::fs::write(dir.path().join("results.json"), r#"{"scenarios": []}"#).unwrap();
        let error = compare(dir.path(), dir.path()).unwrap_err();
        assert!(error.to_string().contains("no format_version"), "{error:#}");
        std::fs::write(dir.path().join("results.json"), "{ not json").unwrap();
        let error = compare(dir.path(), dir.path()).unwrap_err();
        assert!(format!("{error:#}").contains("not valid JSON"), "{error:#}");
    }

    #[test]
    fn the_relative_stddev_needs_two_rounds() {
        assert_eq!(relative_stddev_percent(&[5.0]), None);
        assert_eq!(relative_stddev_percent(&[5.0, 5.0]), Some(0.0));
        let noise = relative_stddev_percent(&[90.0, 100.0, 110.0]).unwrap();
        assert!((noise - 10.0).abs() < 1e-9, "{noise}");
    }
}
