//! Every scenario of the suite runs once with `--quick`, so none rots (figures not checked:
//! the machine is shared and timing assertions would be flaky).

use clap::Parser;

use ringlog_bench::cli::{self, BenchArgs};
use ringlog_bench::scenario::ScenarioName;
use ringlog_bench::workdir::StopFlag;

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
        "--dir".as_ref(),
        base.path().as_os_str(),
        "--results".as_ref(),
        results.as_os_str(),
    ]);
    let report = cli::run(&wrapper.args, &StopFlag::new()).unwrap();

    let names: Vec<ScenarioName> = report.scenarios.iter().map(|s| s.name).collect();
    assert_eq!(names, ScenarioName::ALL.to_vec());
    for scenario in &report.scenarios {
        assert!(scenario.measure.operations > 0, "{:?} did nothing", scenario.name);
        assert!(scenario.measure.fdatasyncs > 0, "{:?} never synced", scenario.name);
    }
    assert_eq!(report.comparisons.len(), 1);
    assert!(report.comparisons[0].record_bytes_ratio > 0.0);

    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(results.join("results.json")).unwrap())
            .unwrap();
    assert_eq!(json["scenarios"].as_array().unwrap().len(), ScenarioName::ALL.len());
    let markdown = std::fs::read_to_string(results.join("report.md")).unwrap();
    assert!(markdown.contains("| engine |"), "{markdown}");

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
