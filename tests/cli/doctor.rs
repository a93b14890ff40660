//! `ringlog doctor` end to end: the real binary on this host, on a tmpfs, and under a memlock
//! limit lowered with `prlimit` on the child (and dropped privileges, when run as root).
//!
//! The binary is the one cargo builds for this package's tests (`CARGO_BIN_EXE_ringlog`).
//! Data dirs live under `CARGO_TARGET_TMPDIR` (on disk, unlike a /tmp that may be a tmpfs).

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

/// Every check `doctor` reports, in order (`ringlog_engine::host::names::ALL`).
const CHECKS: [&str; 19] = [
    "kernel",
    "io_uring_disabled",
    "io_uring_ring",
    "io_uring_opcodes",
    "memlock",
    "nofile",
    "cpus",
    "cpu_topology",
    "clocksource",
    "data_dir",
    "o_direct",
    "filesystem",
    "mount_options",
    "free_space",
    "device",
    "glommio_sysfs",
    "block_sizes",
    "write_cache",
    "scheduler",
];

fn ringlog_binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_ringlog"))
}

/// A report as printed: check lines, the summary line and the exit status.
#[derive(Debug)]
struct Report {
    checks: Vec<(String, String, String)>,
    summary: String,
    code: Option<i32>,
    stdout: String,
}

impl Report {
    fn parse(output: Output) -> Report {
        let stdout = String::from_utf8(output.stdout).unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        println!("{stdout}{stderr}");
        let checks = stdout
            .lines()
            .filter(|line| ["OK ", "WARN ", "FAIL "].iter().any(|s| line.starts_with(s)))
            .map(|line| {
                let mut words = line.split_whitespace();
                let status = words.next().unwrap().to_string();
                let name = words.next().unwrap().to_string();
                (status, name, line.to_string())
            })
            .collect();
        let summary = stdout
            .lines()
            .find(|line| line.starts_with("summary: "))
            .unwrap_or_else(|| panic!("no summary line in {stdout}"))
            .to_string();
        Report { checks, summary, code: output.status.code(), stdout }
    }

    fn line(&self, name: &str) -> (&str, &str) {
        self.checks
            .iter()
            .find(|(_, check, _)| check == name)
            .map(|(status, _, line)| (status.as_str(), line.as_str()))
            .unwrap_or_else(|| panic!("no {name} line in {}", self.stdout))
    }

    fn failures(&self) -> usize {
        self.checks.iter().filter(|(status, ..)| status == "FAIL").count()
    }
}

fn doctor(prefix: &[&str], data_dir: &Path, extra: &[&str]) -> Report {
    doctor_with(ringlog_binary(), prefix, data_dir, extra)
}

fn doctor_with(binary: &Path, prefix: &[&str], data_dir: &Path, extra: &[&str]) -> Report {
    let mut command = match prefix.split_first() {
        Some((program, args)) => {
            let mut command = Command::new(program);
            command.args(args).arg(binary);
            command
        }
        None => Command::new(binary),
    };
    command.arg("doctor").arg("--data-dir").arg(data_dir).args(extra);
    Report::parse(command.output().expect("run ringlog doctor"))
}

fn disk_data_dir() -> tempfile::TempDir {
    tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap()
}

/// Whether every directory from `/` to `path` lets others search it (mode `o+x`).
fn reachable_by_everyone(path: &Path) -> bool {
    path.ancestors().all(|dir| {
        std::fs::metadata(dir).is_ok_and(|m| !m.is_dir() || m.permissions().mode() & 0o001 != 0)
    })
}

/// Scratch bases tried, in order, for a run as another user.
const EVERYONE_SCRATCH_BASES: [&str; 2] = ["/var/tmp", "/tmp"];

/// A scratch directory everyone can reach, on a filesystem where O_DIRECT reaches a device
/// (not tmpfs or ramfs: doctor's `o_direct` check fails there): under the first base of
/// [`EVERYONE_SCRATCH_BASES`] that every user can reach and that is on such a filesystem,
/// mode 0777, removed when dropped. `Err` says why each base was unfit.
fn everyone_scratch_dir() -> Result<tempfile::TempDir, String> {
    let mut unfit = Vec::new();
    for base in EVERYONE_SCRATCH_BASES.map(Path::new) {
        if !reachable_by_everyone(base) {
            unfit.push(format!("{}: not reachable by every user", base.display()));
            continue;
        }
        match filesystem_type(base) {
            Ok(kind) if kind == "tmpfs" || kind == "ramfs" => {
                unfit.push(format!("{}: on {kind}", base.display()));
                continue;
            }
            Ok(_) => {}
            Err(error) => {
                unfit.push(format!("{}: filesystem type unknown ({error})", base.display()));
                continue;
            }
        }
        let made = tempfile::Builder::new().prefix("ringlog-doctor-").tempdir_in(base);
        let dir = match made {
            Ok(dir) => dir,
            Err(error) => {
                unfit.push(format!("{}: {error}", base.display()));
                continue;
            }
        };
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        return Ok(dir);
    }
    Err(unfit.join("; "))
}

/// The filesystem type of `path` as `stat -f` names it (`ext2/ext3` for ext4, `tmpfs`, ...).
fn filesystem_type(path: &Path) -> Result<String, String> {
    let output = Command::new("stat")
        .args(["-f", "-c", "%T"])
        .arg(path)
        .output()
        .map_err(|e| format!("stat: {e}"))?;
    if !output.status.success() {
        return Err(String::from_utf8_lossy(&output.stderr).trim().to_string());
    }
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_string())
}

fn has_program(name: &str) -> bool {
    Command::new(name).arg("--version").output().is_ok()
}

#[test]
fn doctor_reports_every_check_in_order_and_exits_by_its_failures() {
    let data_dir = disk_data_dir();
    let report = doctor(&[], data_dir.path(), &[]);
    let names: Vec<&str> = report.checks.iter().map(|(_, name, _)| name.as_str()).collect();
    assert_eq!(names, CHECKS);
    let expected_code = if report.failures() == 0 { 0 } else { 1 };
    assert_eq!(report.code, Some(expected_code), "{}", report.summary);
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    let (_, kernel) = report.line("kernel");
    assert!(kernel.contains(release.trim()), "{kernel}");
    if let Ok(disabled) = std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled") {
        let (_, line) = report.line("io_uring_disabled");
        assert!(line.contains(&format!("found {}", disabled.trim())), "{line}");
    }
    assert_eq!(
        std::fs::read_dir(data_dir.path()).unwrap().count(),
        0,
        "the O_DIRECT probe file must be removed"
    );
}

#[test]
fn doctor_json_lists_the_same_checks_and_readiness() {
    let data_dir = disk_data_dir();
    let output = Command::new(ringlog_binary())
        .args(["doctor", "--json", "--shards", "1", "--retention-bytes", "1048576"])
        .arg("--data-dir")
        .arg(data_dir.path())
        .output()
        .unwrap();
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let checks = json["checks"].as_array().unwrap();
    let names: Vec<&str> = checks.iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(names, CHECKS);
    let fails = checks.iter().filter(|c| c["status"] == "FAIL").count();
    assert_eq!(json["summary"]["fail"], fails);
    assert_eq!(json["ready"], fails == 0);
    assert_eq!(output.status.code(), Some(if fails == 0 { 0 } else { 1 }));
    assert_eq!(json["requirements"]["retention_bytes"], 1_048_576);
    for check in checks {
        for field in ["found", "expected", "fix"] {
            assert!(check[field].is_string(), "{check}");
        }
    }
}

#[test]
fn doctor_on_a_tmpfs_data_dir_fails_o_direct_and_exits_1() {
    let shm = Path::new("/dev/shm");
    let is_tmpfs = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .any(|line| line.contains(" /dev/shm ") && line.contains(" - tmpfs "));
    if !is_tmpfs {
        eprintln!("skipped: /dev/shm is not a tmpfs here");
        return;
    }
    let data_dir = tempfile::tempdir_in(shm).unwrap();
    let report = doctor(&[], data_dir.path(), &[]);
    assert_eq!(report.code, Some(1));
    let (status, line) = report.line("o_direct");
    assert_eq!(status, "FAIL", "{line}");
    assert!(line.contains("tmpfs"), "{line}");
    let (status, line) = report.line("filesystem");
    assert_eq!(status, "FAIL", "{line}");
    assert!(line.contains("found tmpfs"), "{line}");
    assert!(report.summary.contains("refuses to start"), "{}", report.summary);
}

#[test]
fn doctor_under_a_memlock_limit_below_glommio_minimum_fails_and_exits_1() {
    if !has_program("prlimit") {
        eprintln!("skipped: prlimit not installed");
        return;
    }
    let data_dir = disk_data_dir();
    let report = doctor(&["prlimit", "--memlock=65536:65536"], data_dir.path(), &[]);
    assert_eq!(report.code, Some(1));
    let (status, line) = report.line("memlock");
    assert_eq!(status, "FAIL", "{line}");
    assert!(line.contains("found 64 KiB"), "{line}");
    assert!(line.contains("LimitMEMLOCK="), "{line}");
}

#[test]
fn doctor_as_an_unprivileged_user_fails_a_memlock_limit_below_the_shards_need() {
    if !has_program("prlimit") {
        eprintln!("skipped: prlimit not installed");
        return;
    }
    let is_root = std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .any(|line| line.starts_with("Uid:") && line.split_whitespace().nth(1) == Some("0"));
    // Root holds CAP_IPC_LOCK, which the kernel lets bypass the limit: drop to nobody.
    let mut prefix = vec!["prlimit", "--memlock=2097152:2097152"];
    if is_root {
        if !has_program("setpriv") {
            eprintln!("skipped: running as root without setpriv to drop privileges");
            return;
        }
        prefix.extend([
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
        ]);
    }
    // The unprivileged child must reach both the binary and the data dir: a checkout inside a
    // 0700 home directory (root's, say) hides the target directory from it. So both always go
    // to a scratch directory on a real disk that everyone can reach (the same run wherever
    // the checkout is).
    let (scratch, binary) = if !is_root {
        (disk_data_dir(), ringlog_binary().to_path_buf())
    } else {
        let scratch = match everyone_scratch_dir() {
            Ok(scratch) => scratch,
            Err(why) => {
                eprintln!(
                    "skipped: no scratch directory on a disk that an unprivileged user can \
                     reach ({why})"
                );
                return;
            }
        };
        let binary = scratch.path().join("ringlog");
        std::fs::copy(ringlog_binary(), &binary).unwrap();
        std::fs::set_permissions(&binary, std::fs::Permissions::from_mode(0o755)).unwrap();
        (scratch, binary)
    };
    let data_dir = tempfile::tempdir_in(scratch.path()).unwrap();
    std::fs::set_permissions(data_dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    // 1 shard × 3 rings × 1 MiB = 3 MiB > 2 MiB.
    let extra = ["--shards", "1", "--io-memory", "1048576"];
    let report = doctor_with(&binary, &prefix, data_dir.path(), &extra);
    assert_eq!(report.code, Some(1), "{}", report.stdout);
    let (status, line) = report.line("memlock");
    assert_eq!(status, "FAIL", "{line}");
    assert!(line.contains("found 2 MiB ("), "no CAP_IPC_LOCK expected: {line}");
    assert!(line.contains("LimitMEMLOCK=3145728"), "{line}");
    let (status, line) = report.line("o_direct");
    assert_eq!(status, "OK", "the unprivileged child must still write the data dir: {line}");
}

#[test]
fn doctor_fails_a_retention_larger_than_the_free_space() {
    let data_dir = disk_data_dir();
    let huge = (u64::MAX / 4).to_string();
    let report = doctor(&[], data_dir.path(), &["--retention-bytes", &huge]);
    assert_eq!(report.code, Some(1));
    let (status, line) = report.line("free_space");
    assert_eq!(status, "FAIL", "{line}");
}
