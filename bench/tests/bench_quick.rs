//! Every in-process scenario of the suite (engine, engine-handle, raw-disk) runs once with
//! `--quick`, so none rots (figures not checked: the machine is shared and timing assertions
//! would be flaky). The cluster scenarios need the `ringlog` binary: they run end to end in
//! the root package's `tests/cli/bench.rs`.

use clap::Parser;

use ringlog_bench::cli::{self, BenchArgs};
use ringlog_bench::scenario::ScenarioName;
use ringlog_bench::workdir::StopFlag;

/// The scenarios that run inside the test process.
const IN_PROCESS: [ScenarioName; 3] =
    [ScenarioName::Engine, ScenarioName::EngineHandle, ScenarioName::RawDisk];

#[derive(Debug, Parser)]
struct Wrapper {
    #[command(flatten)]
    args: BenchArgs,
}

#[test]
fn every_scenario_runs_once_with_quick_and_leaves_only_the_results() {
    let base = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let results = base.path().join("results");
    let wrapper = Wrapper::parse_from([
        "bench".as_ref(),
        "--quick".as_ref(),
        "engine".as_ref(),
        "engine-handle".as_ref(),
        "raw-disk".as_ref(),
        "--dir".as_ref(),
        base.path().as_os_str(),
        "--results".as_ref(),
        results.as_os_str(),
    ]);
    let report = cli::run(&wrapper.args, &StopFlag::new()).unwrap();

    // Each engine scenario is followed by its own raw-disk row at its write size.
    let labels: Vec<&str> = report.scenarios.iter().map(|s| s.label.as_str()).collect();
    assert_eq!(labels, ["engine", "raw-disk @engine", "engine-handle", "raw-disk @engine-handle"]);
    for scenario in &report.scenarios {
        assert!(IN_PROCESS.contains(&scenario.name));
        assert!(scenario.measure.operations > 0, "{} did nothing", scenario.label);
        assert!(scenario.measure.fdatasyncs > 0, "{} never synced", scenario.label);
        assert!(!scenario.percentile_curve.is_empty(), "{} has no latency curve", scenario.label);
    }
    assert_eq!(report.comparisons.len(), 2);
    assert!(report.comparisons.iter().all(|c| c.record_bytes_ratio > 0.0));

    // The run wrote its own folder, and `latest` points at it.
    let run = results.join("latest");
    assert!(std::fs::symlink_metadata(&run).unwrap().file_type().is_symlink());
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("results.json")).unwrap()).unwrap();
    assert_eq!(json["scenarios"].as_array().unwrap().len(), 4);
    for row in json["scenarios"].as_array().unwrap() {
        let file = row["histogram_file"].as_str().unwrap_or_else(|| panic!("{row:#}"));
        assert!(run.join(file).is_file(), "{file}");
    }
    let markdown = std::fs::read_to_string(run.join("report.md")).unwrap();
    assert!(markdown.contains("| engine |"), "{markdown}");
    assert!(markdown.contains("![latency.svg](latency.svg)"), "{markdown}");
    let svg = std::fs::read_to_string(run.join("latency.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("engine-handle"), "{svg:.200}");

    // The temporary work directory is gone: only the results folder remains.
    let left: Vec<_> =
        std::fs::read_dir(base.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(left, vec![std::ffi::OsString::from("results")]);
}

#[test]
fn a_raised_stop_flag_ends_the_run_early_and_still_cleans_up() {
    let base = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let results = base.path().join("results");
    let wrapper = Wrapper::parse_from([
        "bench".as_ref(),
        "--quick".as_ref(),
        "engine".as_ref(),
        "raw-disk".as_ref(),
        "--duration-secs".as_ref(),
        "3600".as_ref(),
        "--dir".as_ref(),
        base.path().as_os_str(),
        "--results".as_ref(),
        results.as_os_str(),
    ]);
    let stop = StopFlag::new();
    let raiser = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(300));
            stop.raise();
        })
    };
    let report = cli::run(&wrapper.args, &stop).unwrap();
    raiser.join().unwrap();
    assert!(report.interrupted);
    let left: Vec<_> =
        std::fs::read_dir(base.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(left, vec![std::ffi::OsString::from("results")]);
}
