//! `ringlog bench` end to end with the real binary (`CARGO_BIN_EXE_ringlog`): the
//! no-argument suite in its `--quick` form (a local 3-node cluster of `ringlog serve`
//! children, every scenario, the report files, nothing left behind), then a second, one-row
//! run beside it compared with it by `ringlog bench compare` (run folders, `results/latest`,
//! build and machine metadata, saved histograms merged by `ringlog bench merge`), the open
//! loop counting a leader paused with SIGSTOP, and Ctrl-C in the middle of a run.
//!
//! Figures are not checked against expectations (the machine is shared); what is checked is
//! that each scenario did what it claims: the stall shows in p99.9, retention moved the log
//! start, the failover found an unavailability window, and no process or directory is left.
//! Work dirs live under `CARGO_TARGET_TMPDIR` (on disk: the bench refuses tmpfs).

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use ringlog_bench::measure::LatencyRecorder;

/// Generous bound on one `--quick` run (a cluster start takes a few seconds, the scenarios
/// about 20 s together on an idle machine).
const RUN_TIMEOUT: Duration = Duration::from_secs(300);

/// The runs share 2 cores with their 3-node clusters: one at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn ringlog() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_ringlog"));
    command.stdin(Stdio::null());
    command
}

fn base_dir() -> tempfile::TempDir {
    tempfile::Builder::new().prefix("cli-bench-").tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap()
}

/// Runs `command` to completion, killing it after `RUN_TIMEOUT`.
fn run(mut command: Command) -> Output {
    let child = command.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let pid = child.id();
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let watchdog = std::thread::spawn(move || {
        if done_rx.recv_timeout(RUN_TIMEOUT).is_err() {
            let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).status();
        }
    });
    let output = child.wait_with_output().unwrap();
    let _ = done_tx.send(());
    watchdog.join().unwrap();
    output
}

fn describe(output: &Output) -> String {
    format!(
        "status {:?}\n--- stdout\n{}\n--- stderr\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Processes whose command line mentions `dir` (the nodes' configs live under it).
fn processes_under(dir: &Path) -> Vec<String> {
    let needle = dir.to_string_lossy().to_string();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else { continue };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains(&needle) {
            found.push(format!("{}: {cmdline}", entry.file_name().to_string_lossy()));
        }
    }
    found
}

fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    names.sort();
    names
}

/// The results.json of the newest run under `results` (`results/latest`).
fn results_json(results: &Path) -> serde_json::Value {
    run_json(&results.join("latest"))
}

fn run_json(run: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(run.join("results.json")).unwrap()).unwrap()
}

/// The run folders under `results` (every entry but `latest`).
fn run_folders(results: &Path) -> Vec<String> {
    entries(results).into_iter().filter(|e| e != "latest").collect()
}

fn row<'a>(json: &'a serde_json::Value, label: &str) -> &'a serde_json::Value {
    json["scenarios"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["label"] == label)
        .unwrap_or_else(|| panic!("no row {label} in {json:#}"))
}

#[test]
fn the_no_argument_bench_runs_every_scenario_on_a_local_cluster_and_leaves_nothing_behind() {
    let _serial = serial();
    let base = base_dir();
    let started = Instant::now();
    let mut command = ringlog();
    command.current_dir(base.path()).args(["bench", "--quick"]);
    let output = run(command);
    println!("`ringlog bench --quick` took {:?}", started.elapsed());
    assert!(output.status.success(), "{}", describe(&output));

    let results = base.path().join("results");
    let first_runs = run_folders(&results);
    assert_eq!(first_runs.len(), 1, "one run folder: {first_runs:?}");
    let first = results.join(&first_runs[0]);
    assert_eq!(std::fs::read_link(results.join("latest")).unwrap(), Path::new(&first_runs[0]));
    for file in ["results.json", "report.md", "latency.svg", "timeline.svg", "sweep.svg"] {
        assert!(first.join(file).is_file(), "{file} missing\n{}", describe(&output));
    }
    let json = results_json(&results);
    check_metadata(&json, &first);
    let scenarios: Vec<&str> =
        json["scenarios"].as_array().unwrap().iter().map(|s| s["name"].as_str().unwrap()).collect();
    for name in [
        "engine",
        "engine-handle",
        "raw-disk",
        "replicated",
        "sweep",
        "fetch",
        "many-producers",
        "failover",
        "retention",
    ] {
        assert!(scenarios.contains(&name), "no {name} row: {scenarios:?}");
    }
    for label in ["replicated acks=quorum", "replicated acks=leader", "replicated acks=none"] {
        let row = row(&json, label);
        assert!(row["measure"]["records"].as_u64().unwrap() > 0, "{label}: {row:#}");
        assert!(row["disk_efficiency"].as_f64().unwrap() > 0.0, "{label}: {row:#}");
        assert!(row["node_cpu_secs_per_million_records"].as_f64().is_some(), "{label}");
    }
    assert!(row(&json, "fetch tail")["measure"]["records"].as_u64().unwrap() > 0);
    assert!(row(&json, "fetch catch-up")["measure"]["records"].as_u64().unwrap() > 0);
    assert!(json["sweep"]["points"].as_array().unwrap().len() >= 3, "{:#}", json["sweep"]);
    assert!(json["failover"]["unavailability_secs"].as_f64().unwrap() > 0.0);
    let starts = row(&json, "retention")["parameters"]["log_start_offsets"].clone();
    assert!(
        starts.as_array().unwrap().iter().any(|s| s.as_u64().unwrap() > 0),
        "retention deleted no segment: log starts {starts}"
    );
    let table = String::from_utf8_lossy(&output.stdout);
    assert!(table.contains("replicated acks=quorum"), "{table}");
    assert!(table.contains("knee"), "{table}");

    // Only the results folder remains, and no node process.
    assert_eq!(entries(base.path()), ["results"]);
    assert_eq!(processes_under(base.path()), Vec::<String>::new());

    // A second run, one small row, into its own folder; `latest` moves to it.
    let mut command = ringlog();
    command.current_dir(base.path()).args([
        "bench",
        "--quick",
        "replicated",
        "--acks",
        "quorum",
        "--label",
        "second",
    ]);
    let output = run(command);
    assert!(output.status.success(), "{}", describe(&output));
    let runs = run_folders(&results);
    assert_eq!(runs.len(), 2, "{runs:?}");
    let second_name = runs.iter().find(|r| r.ends_with("-second")).expect("the labelled run");
    let second = results.join(second_name);
    assert_eq!(std::fs::read_link(results.join("latest")).unwrap(), Path::new(second_name));
    assert!(first.join("results.json").is_file(), "the first run was left alone");
    let second_json = run_json(&second);
    check_metadata(&second_json, &second);

    // compare: the shared row with numbers and noise, every other row of A listed as such.
    let mut command = ringlog();
    command.args(["bench", "compare"]).arg(&first).arg(results.join("latest"));
    let output = run(command);
    assert!(output.status.success(), "{}", describe(&output));
    let text = String::from_utf8_lossy(&output.stdout).to_string();
    println!("{text}");
    let shared_row = text
        .split("\n\n")
        .find(|block| block.starts_with("replicated acks=quorum (rounds: A "))
        .unwrap_or_else(|| panic!("no compared replicated acks=quorum row:\n{text}"));
    let records_line = shared_row
        .lines()
        .find(|l| l.trim_start().starts_with("records/s"))
        .unwrap_or_else(|| panic!("no records/s line:\n{shared_row}"));
    let numbers = records_line.split_whitespace().skip(1).take(5).collect::<Vec<_>>();
    assert!(numbers[0].parse::<f64>().unwrap() > 0.0, "{records_line}");
    assert!(numbers[1].parse::<f64>().unwrap() > 0.0, "{records_line}");
    assert!(numbers[2].ends_with('%') && numbers[3].starts_with('±'), "{records_line}");
    assert!(records_line.contains("noise"), "{records_line}");
    for row in json["scenarios"].as_array().unwrap() {
        let key = row["key"].as_str().unwrap();
        if key != "replicated acks=quorum" {
            assert!(text.contains(&format!("only in A: {key} ")), "{key} not listed:\n{text}");
        }
    }
    let mut command = ringlog();
    command.args(["bench", "compare", "--format", "json"]).arg(&first).arg(&second);
    let output = run(command);
    assert!(output.status.success(), "{}", describe(&output));
    let comparison: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let rows = comparison["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 1, "{comparison:#}");
    let records = &rows[0]["metrics"][0];
    assert_eq!(records["metric"], "records/s");
    assert!(records["difference_percent"].as_f64().is_some(), "{records}");
    assert!(records["noise_a_percent"].as_f64().is_some(), "{records}");
    assert!(records["noise_b_percent"].as_f64().is_some(), "{records}");
    assert!(rows[0]["rounds_b"].as_u64().unwrap() >= 2, "{comparison:#}");

    // A missing run is a clear error, not a panic.
    let mut command = ringlog();
    command.args(["bench", "compare"]).arg(&first).arg(results.join("no-such-run"));
    let output = run(command);
    assert_eq!(output.status.code(), Some(1), "{}", describe(&output));
    assert!(String::from_utf8_lossy(&output.stderr).contains("no such run folder"));

    // The saved histograms of the shared row merge: counts add up, the max is the larger.
    let histogram = |json: &serde_json::Value, run: &Path| {
        let row = row(json, "replicated acks=quorum");
        let file = run.join(row["histogram_file"].as_str().unwrap());
        let recorder = LatencyRecorder::from_v2_bytes(&std::fs::read(&file).unwrap()).unwrap();
        assert_eq!(recorder.len(), row["measure"]["latency"]["count"].as_u64().unwrap());
        (file, recorder)
    };
    let (a_file, a) = histogram(&json, &first);
    let (b_file, b) = histogram(&second_json, &second);
    let merged_file = base.path().join("merged.hdr");
    let mut command = ringlog();
    command.args(["bench", "merge"]).arg(&a_file).arg(&b_file).arg("--out").arg(&merged_file);
    let output = run(command);
    assert!(output.status.success(), "{}", describe(&output));
    let merged = LatencyRecorder::from_v2_bytes(&std::fs::read(&merged_file).unwrap()).unwrap();
    assert_eq!(merged.len(), a.len() + b.len());
    assert_eq!(merged.max_nanos(), a.max_nanos().max(b.max_nanos()));
    let printed = String::from_utf8_lossy(&output.stdout);
    assert!(printed.contains(&format!("count {}", a.len() + b.len())), "{printed}");
}

/// The provenance a run folder must carry: build, machine, command line, start time, and a
/// saved histogram for every row that measured latency.
fn check_metadata(json: &serde_json::Value, run: &Path) {
    assert_eq!(json["format_version"], 2, "{:#}", json["format_version"]);
    let build = &json["build"];
    assert_eq!(build["version"], env!("CARGO_PKG_VERSION"));
    let commit = build["commit"].as_str().unwrap();
    let hash = commit.strip_suffix("-dirty").unwrap_or(commit);
    assert!(
        commit == "unknown" || (hash.len() == 40 && hash.chars().all(|c| c.is_ascii_hexdigit())),
        "commit {commit}"
    );
    assert!(["debug", "release"].contains(&build["profile"].as_str().unwrap()), "{build}");
    assert!(!build["opt_level"].as_str().unwrap().is_empty(), "{build}");
    let machine = &json["machine"];
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    assert_eq!(machine["kernel"].as_str().unwrap(), kernel.trim());
    assert!(machine["cpus"].as_u64().unwrap() >= 1);
    for field in ["cpu_model", "device_model"] {
        assert!(!machine[field].as_str().unwrap().is_empty(), "{field}: {machine}");
    }
    let command_line: Vec<&str> =
        json["command_line"].as_array().unwrap().iter().map(|a| a.as_str().unwrap()).collect();
    assert!(
        command_line.contains(&"bench") && command_line.contains(&"--quick"),
        "{command_line:?}"
    );
    let started = json["started_utc"].as_str().unwrap();
    assert!(started.len() == 20 && started.ends_with('Z'), "{started}");
    let folder = run.file_name().unwrap().to_string_lossy().to_string();
    assert!(folder.starts_with(&started.replace(['-', ':'], "")), "{folder} vs {started}");
    let report = std::fs::read_to_string(run.join("report.md")).unwrap();
    for needle in [commit, machine["device_model"].as_str().unwrap(), kernel.trim(), started] {
        assert!(report.contains(needle), "report.md lacks {needle}:\n{report}");
    }
    for row in json["scenarios"].as_array().unwrap() {
        if row["measure"]["latency"]["count"].as_u64().unwrap() == 0 {
            continue;
        }
        let file = row["histogram_file"].as_str().unwrap_or_else(|| panic!("{row:#}"));
        assert!(run.join(file).is_file(), "{file}");
        assert!(!row["rounds"].as_array().unwrap().is_empty(), "{row:#}");
    }
}

#[test]
fn the_open_loop_counts_a_leader_paused_with_sigstop_in_its_p999() {
    let _serial = serial();
    let base = base_dir();
    let results = base.path().join("results");
    let pause_ms = 400.0;
    let mut command = ringlog();
    command.current_dir(base.path()).args([
        "bench",
        "--quick",
        "replicated",
        "--acks",
        "quorum",
        "--partitions",
        "1",
        "--producers",
        "4",
        "--records-per-batch",
        "1",
        "--load",
        "open",
        "--rate",
        "400",
        "--cluster-duration-secs",
        "3",
        "--inject-stall-ms",
        "400",
        "--inject-stall-at-secs",
        "1",
    ]);
    let output = run(command);
    assert!(output.status.success(), "{}", describe(&output));
    let json = results_json(&results);
    let row = row(&json, "replicated acks=quorum");
    let p999_ms = row["measure"]["latency"]["p999_us"].as_f64().unwrap() / 1e3;
    let p50_ms = row["measure"]["latency"]["p50_us"].as_f64().unwrap() / 1e3;
    println!("p50 {p50_ms:.2} ms, p99.9 {p999_ms:.1} ms with a {pause_ms} ms pause");
    // Every record that arrived during the pause waited for it: p99.9 is the pause, less the
    // slack of scheduling and the records that arrived late in it.
    assert!(p999_ms >= pause_ms - 100.0, "p99.9 {p999_ms} ms hides a {pause_ms} ms stall");
    assert!(row["notes"].to_string().contains("SIGSTOP"), "{row:#}");
    assert_eq!(entries(base.path()), ["results"]);
    assert_eq!(processes_under(base.path()), Vec::<String>::new());
}

#[test]
fn ctrl_c_mid_run_stops_the_cluster_and_removes_the_work_dir() {
    let _serial = serial();
    let base = base_dir();
    let logs = base_dir();
    let stderr_path = logs.path().join("bench.stderr");
    let mut child = ringlog()
        .current_dir(base.path())
        .args(["bench", "--quick", "replicated", "--cluster-duration-secs", "60"])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&stderr_path).unwrap())
        .spawn()
        .unwrap();
    let stderr = || std::fs::read_to_string(&stderr_path).unwrap_or_default();
    // Wait until the cluster runs (a node's log exists), then interrupt.
    let deadline = Instant::now() + RUN_TIMEOUT;
    let started = loop {
        let logs = find_files(base.path(), "node-1.log");
        if !logs.is_empty() {
            break true;
        }
        if Instant::now() >= deadline || child.try_wait().unwrap().is_some() {
            break false;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(started, "the cluster never started:\n{}", stderr());
    std::thread::sleep(Duration::from_secs(3));
    assert!(child.try_wait().unwrap().is_none(), "the bench ended early:\n{}", stderr());
    assert!(!processes_under(base.path()).is_empty(), "no node is running:\n{}", stderr());
    let status = Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    assert!(status.success());
    let exit = wait_with_timeout(&mut child, RUN_TIMEOUT);
    assert_eq!(exit.and_then(|s| s.code()), Some(130), "{exit:?}\n{}", stderr());
    let left = entries(base.path());
    assert!(left.iter().all(|e| e == "results"), "left behind: {left:?}");
    assert_eq!(processes_under(base.path()), Vec::<String>::new());
}

fn wait_with_timeout(
    child: &mut std::process::Child,
    timeout: Duration,
) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn find_files(dir: &Path, name: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let Ok(read) = std::fs::read_dir(dir) else { return found };
    for entry in read.flatten() {
        let path = entry.path();
        if path.is_dir() {
            found.extend(find_files(&path, name));
        } else if path.file_name().is_some_and(|n| n == name) {
            found.push(path);
        }
    }
    found
}
