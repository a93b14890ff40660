//! Host checks: does this machine give ringlog and glommio what they need?
//!
//! `ringlog doctor` prints every [`Check`]; `serve` and the C ABI call [`check_host`] and refuse
//! to start on any [`Status::Fail`], with the same one-line text per failure. The C ABI must run
//! it *before* it builds any glommio executor: glommio 0.9.0 panics or calls `process::exit` on
//! hosts it dislikes, and neither is acceptable inside an embedding process. What glommio
//! requires, read in its source (`glommio-0.9.0/src/sys/{uring,sysfs,hardware_topology}.rs`,
//! `src/io/dma_file.rs`, `src/executor/placement/mod.rs`):
//!
//! - a kernel that answers `IORING_REGISTER_PROBE` (else `panic!`, "at least 5.8") and supports
//!   every opcode of its `GLOMMIO_URING_OPS` list (else `process::exit(1)`) — checks
//!   `kernel`, `io_uring_disabled`, `io_uring_ring`, `io_uring_opcodes`;
//! - RLIMIT_MEMLOCK of at least 512 KiB (else `make()` fails) and `3 × io_memory` per executor
//!   to keep registered buffers (else a silent fall back to slower IO) — check `memlock`;
//! - a readable CPU topology under `/sys/devices/system` when an executor is pinned
//!   (`Placement::Fixed` unwraps `CpuSet::online()`) — check `cpu_topology`;
//! - `statfs` of every opened file's path succeeding (it is unwrapped) — check `filesystem`;
//! - for the data dir's disk, readable `queue/` attributes and `slaves/` of
//!   `/sys/dev/block/<major>:0` (glommio always reads minor 0, and unwraps each read and the
//!   `write_cache` parse) — check `glommio_sysfs`.
//!
//! Every check that reads procfs or sysfs goes through a [`HostRoot`], so tests run against a
//! fake tree; the kernel release, rlimits and CAP_IPC_LOCK can also be injected into a
//! [`HostProbe`]. The io_uring, O_DIRECT and statfs probes are always real.
//!
//! Invariants: probing never panics and never exits; every procfs/sysfs read is bounded by
//! [`HOST_FILE_BYTES_MAX`]; the only write is one [`O_DIRECT_PROBE_BYTES`] file in the data dir,
//! removed before the probe returns; a report lists every check exactly once, in a fixed order.

#![deny(unsafe_code)]

use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};

/// Size of the filesystem holding a path and what an unprivileged user may still write.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FilesystemSpace {
    pub total_bytes: u64,
    pub available_bytes: u64,
}

/// statvfs of `path`: its filesystem's size and free space (`f_bavail`, what the node's user
/// may write). An error names the call and the errno.
pub fn filesystem_space(path: &std::path::Path) -> Result<FilesystemSpace, String> {
    let stat = rustix::fs::statvfs(path).map_err(|error| format!("statvfs: {error}"))?;
    Ok(FilesystemSpace {
        total_bytes: stat.f_blocks.saturating_mul(stat.f_frsize),
        available_bytes: stat.f_bavail.saturating_mul(stat.f_frsize),
    })
}

#[path = "host_device.rs"]
mod device;
#[path = "host_fs.rs"]
mod fs;
#[path = "host_kernel.rs"]
mod kernel;
#[path = "host_limits.rs"]
mod limits;
#[path = "host_uring.rs"]
mod uring;

pub use kernel::{parse_cpu_list, parse_kernel_release};
pub use uring::GLOMMIO_URING_OPCODES;

/// Largest procfs/sysfs file a check reads (mountinfo of a busy container host included).
pub const HOST_FILE_BYTES_MAX: u64 = 4 << 20;
/// glommio refuses to start below this kernel (it panics: "kernel should be at least 5.8").
pub const KERNEL_VERSION_MIN: (u32, u32) = (5, 8);
/// Below this kernel ringlog runs, but without IORING_SETUP_DEFER_TASKRUN (6.1), which the
/// raw-disk baseline and future io_uring paths use.
pub const KERNEL_VERSION_RECOMMENDED: (u32, u32) = (6, 1);
/// RLIMIT_NOFILE below this fails: segments, indexes and sockets of a few partitions exceed it.
pub const NOFILE_MIN: u64 = 1024;
/// RLIMIT_NOFILE below this warns; the systemd unit sets `LimitNOFILE=1048576`.
pub const NOFILE_RECOMMENDED: u64 = 65_536;
/// Free space below this warns even when no retention is configured.
pub const FREE_SPACE_MIN_BYTES: u64 = 1 << 30;
/// Free space must exceed the retention by this fraction (per mille) to leave room for the
/// segments preallocated ahead of need and the one being deleted.
pub const FREE_SPACE_HEADROOM_PER_MILLE: u64 = 100;
/// Size and alignment of the O_DIRECT probe write.
pub const O_DIRECT_PROBE_BYTES: usize = 4096;
/// Largest logical block size our 4 KiB O_DIRECT writes work with.
pub const LOGICAL_BLOCK_SIZE_MAX: u64 = 4096;

/// Names of the checks, in report order.
pub mod names {
    pub const KERNEL: &str = "kernel";
    pub const IO_URING_DISABLED: &str = "io_uring_disabled";
    pub const IO_URING_RING: &str = "io_uring_ring";
    pub const IO_URING_OPCODES: &str = "io_uring_opcodes";
    pub const MEMLOCK: &str = "memlock";
    pub const NOFILE: &str = "nofile";
    pub const CPUS: &str = "cpus";
    pub const CPU_TOPOLOGY: &str = "cpu_topology";
    pub const CLOCKSOURCE: &str = "clocksource";
    pub const DATA_DIR: &str = "data_dir";
    pub const O_DIRECT: &str = "o_direct";
    pub const FILESYSTEM: &str = "filesystem";
    pub const MOUNT_OPTIONS: &str = "mount_options";
    pub const FREE_SPACE: &str = "free_space";
    pub const DEVICE: &str = "device";
    pub const GLOMMIO_SYSFS: &str = "glommio_sysfs";
    pub const BLOCK_SIZES: &str = "block_sizes";
    pub const WRITE_CACHE: &str = "write_cache";
    pub const SCHEDULER: &str = "scheduler";

    /// Every check name, in the order a report lists them.
    pub const ALL: [&str; 19] = [
        KERNEL,
        IO_URING_DISABLED,
        IO_URING_RING,
        IO_URING_OPCODES,
        MEMLOCK,
        NOFILE,
        CPUS,
        CPU_TOPOLOGY,
        CLOCKSOURCE,
        DATA_DIR,
        O_DIRECT,
        FILESYSTEM,
        MOUNT_OPTIONS,
        FREE_SPACE,
        DEVICE,
        GLOMMIO_SYSFS,
        BLOCK_SIZES,
        WRITE_CACHE,
        SCHEDULER,
    ];
}

/// Where procfs and sysfs are mounted: `/proc` and `/sys` on a real host, a temp dir in tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostRoot {
    pub proc_dir: PathBuf,
    pub sys_dir: PathBuf,
}

/// Outcome of one check, ordered by severity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Status {
    Ok,
    Warn,
    Fail,
}

/// One checked item: what was found, what was expected and how to fix it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub name: &'static str,
    pub status: Status,
    pub found: String,
    pub expected: String,
    /// Empty when there is nothing to fix.
    pub fix: String,
}

/// What the node is configured to need from the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostRequirements {
    pub data_dir: PathBuf,
    pub shards: usize,
    /// Bytes of IO memory glommio registers per ring (`LocalExecutorBuilder::io_memory`).
    pub io_memory_bytes: usize,
    /// Bytes the log may keep on disk, if bounded.
    pub retention_bytes: Option<u64>,
}

/// A soft resource limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    Unlimited,
    Value(u64),
}

/// Runs the checks against a [`HostRoot`], with optional injected values.
#[derive(Debug, Clone)]
pub struct HostProbe {
    root: HostRoot,
    kernel_release: Option<String>,
    memlock: Option<Limit>,
    nofile: Option<Limit>,
    cap_ipc_lock: Option<bool>,
}

/// Every check of one probe, in [`names::ALL`] order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostReport {
    pub checks: Vec<Check>,
}

/// Why a node refuses to start on this host.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HostCheckError {
    /// At least one check failed; each failure is listed on its own line, as `doctor` prints it.
    #[error("host check failed ({} FAIL; run `ringlog doctor` for the full report):\n{}",
        .failures.len(), lines(.failures))]
    Failed { failures: Vec<Check> },
}

/// Probes the real host (`/proc`, `/sys`, this process's limits) and returns the report, or
/// the failures when any check fails. `serve` and the C ABI call this before any executor.
pub fn check_host(requirements: &HostRequirements) -> Result<HostReport, HostCheckError> {
    HostProbe::new(HostRoot::default()).run(requirements).into_result()
}

impl Default for HostRoot {
    fn default() -> Self {
        Self { proc_dir: PathBuf::from("/proc"), sys_dir: PathBuf::from("/sys") }
    }
}

impl HostRoot {
    /// `root/proc` and `root/sys`: a fake tree built by a test.
    pub fn under(root: impl AsRef<Path>) -> Self {
        Self { proc_dir: root.as_ref().join("proc"), sys_dir: root.as_ref().join("sys") }
    }

    fn proc(&self, relative: &str) -> PathBuf {
        self.proc_dir.join(relative)
    }

    fn sys(&self, relative: &str) -> PathBuf {
        self.sys_dir.join(relative)
    }
}

impl Status {
    /// `OK`, `WARN` or `FAIL`.
    pub fn label(self) -> &'static str {
        match self {
            Status::Ok => "OK",
            Status::Warn => "WARN",
            Status::Fail => "FAIL",
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

impl Check {
    fn new(name: &'static str, status: Status, found: impl Into<String>) -> Self {
        Self { name, status, found: found.into(), expected: String::new(), fix: String::new() }
    }

    fn expected(mut self, expected: impl Into<String>) -> Self {
        self.expected = expected.into();
        self
    }

    fn fix(mut self, fix: impl Into<String>) -> Self {
        self.fix = fix.into();
        self
    }

    fn with_status(mut self, status: Status) -> Self {
        self.status = status;
        self
    }
}

/// `FAIL  memlock           found … (expected …) — fix: …`, the line `doctor` prints and
/// `serve` refuses to start with.
impl fmt::Display for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:<4}  {:<17} found {}", self.status.label(), self.name, self.found)?;
        if !self.expected.is_empty() {
            write!(f, " (expected {})", self.expected)?;
        }
        if !self.fix.is_empty() {
            write!(f, " — fix: {}", self.fix)?;
        }
        Ok(())
    }
}

impl HostProbe {
    /// A probe of the host whose procfs and sysfs are under `root`.
    pub fn new(root: HostRoot) -> Self {
        Self { root, kernel_release: None, memlock: None, nofile: None, cap_ipc_lock: None }
    }

    /// Use this release instead of `proc/sys/kernel/osrelease`.
    pub fn with_kernel_release(mut self, release: impl Into<String>) -> Self {
        self.kernel_release = Some(release.into());
        self
    }

    /// Use this RLIMIT_MEMLOCK instead of the one in `proc/self/limits`.
    pub fn with_memlock_limit(mut self, limit: Limit) -> Self {
        self.memlock = Some(limit);
        self
    }

    /// Use this RLIMIT_NOFILE instead of the one in `proc/self/limits`.
    pub fn with_nofile_limit(mut self, limit: Limit) -> Self {
        self.nofile = Some(limit);
        self
    }

    /// Assume CAP_IPC_LOCK is (or is not) held instead of reading `proc/self/status`.
    pub fn with_cap_ipc_lock(mut self, held: bool) -> Self {
        self.cap_ipc_lock = Some(held);
        self
    }

    /// Runs every check, in [`names::ALL`] order.
    pub fn run(&self, requirements: &HostRequirements) -> HostReport {
        let root = &self.root;
        let uring = uring::probe();
        let data_dir = fs::DataDir::inspect(root, &requirements.data_dir);
        let disk = device::Disk::resolve(root, &data_dir);
        let checks = vec![
            kernel::kernel(root, self.kernel_release.as_deref()),
            kernel::io_uring_disabled(root),
            uring::ring_check(&uring),
            uring::opcodes_check(&uring),
            limits::memlock(root, self.memlock, self.cap_ipc_lock, requirements),
            limits::nofile(root, self.nofile),
            kernel::cpus(root, requirements.shards),
            kernel::cpu_topology(root),
            kernel::clocksource(root),
            fs::data_dir_check(&data_dir),
            fs::o_direct_check(&data_dir),
            fs::filesystem_check(&data_dir),
            fs::mount_options_check(&data_dir),
            fs::free_space_check(&data_dir, requirements.retention_bytes),
            device::device_check(&data_dir, &disk),
            device::glommio_sysfs_check(root, &data_dir, &disk),
            device::block_sizes_check(&disk),
            device::write_cache_check(&disk),
            device::scheduler_check(&disk),
        ];
        debug_assert!(checks.iter().map(|c| c.name).eq(names::ALL));
        HostReport { checks }
    }
}

impl HostReport {
    /// How many checks ended with `status`.
    pub fn count(&self, status: Status) -> usize {
        self.checks.iter().filter(|c| c.status == status).count()
    }

    /// The check named `name` (see [`names`]).
    pub fn check(&self, name: &str) -> Option<&Check> {
        self.checks.iter().find(|c| c.name == name)
    }

    /// The failed checks.
    pub fn failures(&self) -> impl Iterator<Item = &Check> {
        self.checks.iter().filter(|c| c.status == Status::Fail)
    }

    /// No check failed: a node may start.
    pub fn is_ready(&self) -> bool {
        self.failures().next().is_none()
    }

    /// The report itself if no check failed, else the failures as an error.
    pub fn into_result(self) -> Result<HostReport, HostCheckError> {
        if self.is_ready() {
            return Ok(self);
        }
        Err(HostCheckError::Failed { failures: self.failures().cloned().collect() })
    }
}

fn lines(checks: &[Check]) -> String {
    checks.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n")
}

/// Reads a procfs/sysfs text file, refusing more than [`HOST_FILE_BYTES_MAX`] bytes.
fn read_host_file(path: &Path) -> Result<String, String> {
    let file = std::fs::File::open(path).map_err(|error| format!("{}: {error}", path.display()))?;
    let mut text = String::new();
    file.take(HOST_FILE_BYTES_MAX + 1)
        .read_to_string(&mut text)
        .map_err(|error| format!("{}: {error}", path.display()))?;
    if text.len() as u64 > HOST_FILE_BYTES_MAX {
        return Err(format!("{}: larger than {HOST_FILE_BYTES_MAX} bytes", path.display()));
    }
    Ok(text)
}

/// `1.5 GiB`-style size for reports.
fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 || value.fract() == 0.0 {
        format!("{value:.0} {}", UNITS[unit])
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filesystem_space_reports_a_size_and_what_is_free_or_why_not() {
        let space = filesystem_space(Path::new(env!("CARGO_MANIFEST_DIR"))).expect("statvfs");
        assert!(space.total_bytes > 0, "{space:?}");
        assert!(space.available_bytes <= space.total_bytes, "{space:?}");
        let missing = filesystem_space(Path::new("/nonexistent/ringlog-data")).unwrap_err();
        assert!(missing.starts_with("statvfs: "), "{missing}");
    }

    #[test]
    fn check_line_has_status_name_found_expected_and_fix() {
        let check = Check::new(names::MEMLOCK, Status::Fail, "64 KiB")
            .expected(">= 3 MiB")
            .fix("LimitMEMLOCK=3145728");
        let line = check.to_string();
        assert!(line.starts_with("FAIL  memlock "), "{line}");
        assert!(
            line.ends_with("found 64 KiB (expected >= 3 MiB) — fix: LimitMEMLOCK=3145728"),
            "{line}"
        );
    }

    #[test]
    fn check_line_omits_empty_expected_and_fix() {
        let line = Check::new(names::KERNEL, Status::Ok, "6.18").to_string();
        assert_eq!(line, format!("OK    {:<17} found 6.18", "kernel"));
    }

    #[test]
    fn report_error_lists_only_the_failures() {
        let report = HostReport {
            checks: vec![
                Check::new(names::KERNEL, Status::Ok, "6.18"),
                Check::new(names::MEMLOCK, Status::Fail, "64 KiB").fix("raise it"),
                Check::new(names::NOFILE, Status::Warn, "1024"),
            ],
        };
        assert!(!report.is_ready());
        let error = report.into_result().unwrap_err().to_string();
        assert!(error.contains("1 FAIL"), "{error}");
        assert!(error.contains("FAIL  memlock"), "{error}");
        assert!(!error.contains("nofile"), "{error}");
    }

    #[test]
    fn human_bytes_uses_binary_units() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(8 << 20), "8 MiB");
        assert_eq!(human_bytes(3 << 29), "1.5 GiB");
    }
}
