//! The process' own resources, read from /proc at scrape time: CPU seconds, resident and
//! virtual memory, open and allowed file descriptors — exposed under the standard names of
//! Prometheus' process collector (`process_cpu_seconds_total`, ...).
//!
//! Reading is bounded: /proc/self/stat and /proc/self/status are single small files, and
//! /proc/self/fd is listed once (at most the process' descriptor limit of entries). A file
//! that cannot be read or parsed makes the whole snapshot `None` (the series are left out;
//! the scrape still answers).

#![forbid(unsafe_code)]

use std::fs;
use std::path::Path;

/// Clock ticks per second of the CPU times in /proc/<pid>/stat: Linux reports them in
/// `USER_HZ`, which is 100 on every architecture ringlog runs on (x86-64, arm64), whatever
/// the kernel's internal HZ (Prometheus' procfs library makes the same assumption).
pub const USER_HZ: u64 = 100;
/// Bytes per kB in /proc/<pid>/status (`VmRSS:  2072 kB`).
const KIB: u64 = 1024;

/// What the process uses.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ProcessSnapshot {
    /// User plus system CPU time, seconds.
    pub cpu_seconds: f64,
    pub resident_memory_bytes: u64,
    pub virtual_memory_bytes: u64,
    pub open_fds: u64,
    /// The soft RLIMIT_NOFILE.
    pub max_fds: u64,
}

/// This process' snapshot, or `None` when /proc cannot be read.
pub fn read() -> Option<ProcessSnapshot> {
    read_from(Path::new("/proc/self"))
}

/// The snapshot of the process whose /proc directory is `dir`.
pub fn read_from(dir: &Path) -> Option<ProcessSnapshot> {
    let stat = fs::read_to_string(dir.join("stat")).ok()?;
    let status = fs::read_to_string(dir.join("status")).ok()?;
    let limits = fs::read_to_string(dir.join("limits")).ok()?;
    let open_fds = fs::read_dir(dir.join("fd")).ok()?.count() as u64;
    let ticks = cpu_ticks(&stat)?;
    Some(ProcessSnapshot {
        cpu_seconds: ticks as f64 / USER_HZ as f64,
        resident_memory_bytes: status_kib(&status, "VmRSS:")? * KIB,
        virtual_memory_bytes: status_kib(&status, "VmSize:")? * KIB,
        open_fds,
        max_fds: max_open_files(&limits)?,
    })
}

/// utime + stime (fields 14 and 15 of /proc/<pid>/stat), in clock ticks. The command name
/// (field 2) is in parentheses and may hold spaces and parentheses: fields are counted from
/// the last `)`.
fn cpu_ticks(stat: &str) -> Option<u64> {
    let (_, rest) = stat.rsplit_once(')')?;
    let mut fields = rest.split_ascii_whitespace();
    // `rest` starts at field 3 (state): utime is field 14, the 12th of `rest`.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    utime.checked_add(stime)
}

/// The kB value of a `Name:   1234 kB` line of /proc/<pid>/status.
fn status_kib(status: &str, name: &str) -> Option<u64> {
    let line = status.lines().find(|line| line.starts_with(name))?;
    let mut words = line[name.len()..].split_ascii_whitespace();
    let value = words.next()?.parse().ok()?;
    (words.next() == Some("kB")).then_some(value)
}

/// The soft limit of `Max open files` in /proc/<pid>/limits (`unlimited`: `u64::MAX`).
fn max_open_files(limits: &str) -> Option<u64> {
    let line = limits.lines().find(|line| line.starts_with("Max open files"))?;
    let soft = line["Max open files".len()..].split_ascii_whitespace().next()?;
    if soft == "unlimited" {
        Some(u64::MAX)
    } else {
        soft.parse().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_ticks_are_counted_from_the_last_parenthesis() {
        let stat = "16425 (a (b) c) R 16347 16347 7691 0 -1 4194304 100 0 0 0 250 31 0 0 20 0 \
                    1 0 5027244 3133440 416 18446744073709551615";
        assert_eq!(cpu_ticks(stat), Some(281));
        assert_eq!(cpu_ticks("12 (x) R 1 2"), None);
        assert_eq!(cpu_ticks("no parenthesis"), None);
    }

    #[test]
    fn status_and_limits_lines_are_parsed_with_their_units() {
        let status = "Name:\tringlog\nVmSize:\t    3896 kB\nVmRSS:\t    2072 kB\n";
        assert_eq!(status_kib(status, "VmRSS:"), Some(2072));
        assert_eq!(status_kib(status, "VmSize:"), Some(3896));
        assert_eq!(status_kib("VmRSS:\t12 pages\n", "VmRSS:"), None);
        assert_eq!(status_kib(status, "VmSwap:"), None);
        let limits = "Limit                     Soft Limit           Hard Limit           Units\n\
                      Max open files            20000                40000                files\n";
        assert_eq!(max_open_files(limits), Some(20000));
        let unlimited =
            "Max open files            unlimited            unlimited            files\n";
        assert_eq!(max_open_files(unlimited), Some(u64::MAX));
    }

    #[test]
    fn this_process_has_cpu_time_memory_and_descriptors() {
        // Burn a little CPU so that at least one tick is accounted.
        let start = std::time::Instant::now();
        let mut x = 0u64;
        while start.elapsed() < std::time::Duration::from_millis(50) {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
        }
        let snapshot = read().expect("/proc/self is readable");
        assert!(snapshot.cpu_seconds > 0.0, "{snapshot:?}");
        assert!(snapshot.resident_memory_bytes > 0, "{snapshot:?}");
        assert!(snapshot.virtual_memory_bytes >= snapshot.resident_memory_bytes, "{snapshot:?}");
        assert!(snapshot.open_fds >= 3 && snapshot.open_fds <= snapshot.max_fds, "{snapshot:?}");
        assert!(read_from(Path::new("/nonexistent/proc")).is_none());
    }
}
