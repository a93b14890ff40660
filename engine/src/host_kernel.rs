//! Host checks of the kernel and CPUs: release, the io_uring sysctl, CPU count and topology,
//! clock source. Each reads procfs/sysfs through the probe's `HostRoot` only.

#![forbid(unsafe_code)]

use super::{names, read_host_file, Check, HostRoot, Status};
use super::{KERNEL_VERSION_MIN, KERNEL_VERSION_RECOMMENDED};

/// Most CPUs a sysfs CPU list may name (bounds the parse of external input).
pub const CPU_LIST_ENTRIES_MAX: usize = 1 << 16;

const OSRELEASE: &str = "sys/kernel/osrelease";
const IO_URING_DISABLED: &str = "sys/kernel/io_uring_disabled";
const IO_URING_GROUP: &str = "sys/kernel/io_uring_group";
const CPU_ONLINE: &str = "devices/system/cpu/online";
const NODE_ONLINE: &str = "devices/system/node/online";
const CLOCKSOURCE_DIR: &str = "devices/system/clocksource/clocksource0";

/// `major.minor` of a kernel release such as `6.18.44-fc-v595` or `5.4.0-150-generic`.
pub fn parse_kernel_release(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.trim().split(['.', '-']);
    let major = parts.next()?.parse().ok()?;
    let minor_text: String = parts.next()?.chars().take_while(char::is_ascii_digit).collect();
    Some((major, minor_text.parse().ok()?))
}

/// The CPUs of a sysfs list such as `0-3,8,10-11` (at most [`CPU_LIST_ENTRIES_MAX`]).
pub fn parse_cpu_list(list: &str) -> Result<Vec<usize>, String> {
    let mut cpus = Vec::new();
    for item in list.trim().split(',').filter(|item| !item.is_empty()) {
        let (first, last) = match item.split_once('-') {
            Some((first, last)) => (first, last),
            None => (item, item),
        };
        let parse =
            |text: &str| text.trim().parse::<usize>().map_err(|_| format!("bad CPU list {list:?}"));
        let (first, last) = (parse(first)?, parse(last)?);
        if first > last || cpus.len() + (last - first) >= CPU_LIST_ENTRIES_MAX {
            return Err(format!("bad or oversized CPU list {list:?}"));
        }
        cpus.extend(first..=last);
    }
    Ok(cpus)
}

pub(super) fn kernel(root: &HostRoot, injected: Option<&str>) -> Check {
    let release = match injected {
        Some(release) => release.to_string(),
        None => match read_host_file(&root.proc(OSRELEASE)) {
            Ok(text) => text.trim().to_string(),
            Err(error) => {
                return Check::new(names::KERNEL, Status::Warn, format!("unreadable: {error}"))
                    .expected(format!(">= {}", version_text(KERNEL_VERSION_MIN)))
                    .fix("mount procfs at /proc so the kernel release can be checked")
            }
        },
    };
    let expected = format!(
        ">= {} (>= {} recommended)",
        version_text(KERNEL_VERSION_MIN),
        version_text(KERNEL_VERSION_RECOMMENDED)
    );
    let Some(version) = parse_kernel_release(&release) else {
        return Check::new(names::KERNEL, Status::Warn, format!("{release:?} (unparsable)"))
            .expected(expected);
    };
    let check = Check::new(names::KERNEL, Status::Ok, release).expected(expected);
    if version < KERNEL_VERSION_MIN {
        check.with_status(Status::Fail).fix(
            "upgrade the kernel: glommio panics below 5.8 (no IORING_REGISTER_PROBE, missing \
             opcodes); use a distribution kernel >= 6.1 (Debian 12, Ubuntu 22.04 HWE, RHEL 9.3)",
        )
    } else if version < KERNEL_VERSION_RECOMMENDED {
        check.with_status(Status::Warn).fix(
            "upgrade to a kernel >= 6.1 for IORING_SETUP_DEFER_TASKRUN and current io_uring \
             fixes",
        )
    } else {
        check
    }
}

pub(super) fn io_uring_disabled(root: &HostRoot) -> Check {
    let path = root.proc(IO_URING_DISABLED);
    let expected = "0 (io_uring enabled for all)";
    let fix = "sysctl -w kernel.io_uring_disabled=0 and persist it in /etc/sysctl.d/ (or set \
               1 and add the ringlog user's group to kernel.io_uring_group)";
    let text = match read_host_file(&path) {
        Ok(text) => text,
        Err(_) if !path.exists() && root.proc("sys/kernel").is_dir() => {
            return Check::new(
                names::IO_URING_DISABLED,
                Status::Ok,
                "absent (kernel predates the sysctl, io_uring not restricted by it)",
            )
            .expected(expected)
        }
        Err(error) => {
            return Check::new(
                names::IO_URING_DISABLED,
                Status::Warn,
                format!("unreadable: {error}"),
            )
            .expected(expected)
            .fix("mount procfs at /proc so the sysctl can be checked")
        }
    };
    match text.trim() {
        "0" => Check::new(names::IO_URING_DISABLED, Status::Ok, "0").expected(expected),
        "1" => {
            let group = read_host_file(&root.proc(IO_URING_GROUP))
                .map(|text| text.trim().to_string())
                .unwrap_or_else(|_| "?".to_string());
            Check::new(
                names::IO_URING_DISABLED,
                Status::Warn,
                format!(
                    "1 (only CAP_SYS_ADMIN or members of kernel.io_uring_group={group} may \
                     create rings; io_uring_ring below tells whether this process can)"
                ),
            )
            .expected(expected)
            .fix(fix)
        }
        "2" => Check::new(
            names::IO_URING_DISABLED,
            Status::Fail,
            "2 (io_uring disabled for every process: glommio panics at executor start)",
        )
        .expected(expected)
        .fix(fix),
        other => Check::new(names::IO_URING_DISABLED, Status::Warn, format!("{other:?}"))
            .expected(expected)
            .fix(fix),
    }
}

pub(super) fn cpus(root: &HostRoot, shards: usize) -> Check {
    let online = read_host_file(&root.sys(CPU_ONLINE)).and_then(|text| parse_cpu_list(&text));
    let usable = std::thread::available_parallelism().map_or(1, |n| n.get());
    let expected = format!("more CPUs than the {shards} shard(s): one left for IO completion");
    let online = match online {
        Ok(online) => online.len(),
        Err(error) => {
            return Check::new(names::CPUS, Status::Warn, format!("online CPUs unknown: {error}"))
                .expected(expected)
        }
    };
    let cpus = online.min(usable);
    let found = format!("{cpus} usable CPU(s) ({online} online), {shards} shard(s)");
    let check = Check::new(names::CPUS, Status::Ok, found).expected(expected);
    if shards == 0 {
        check
            .with_status(Status::Fail)
            .fix("configure at least one shard (--shards / shards in node.toml)")
    } else if shards > cpus {
        check.with_status(Status::Warn).fix(format!(
            "lower shards to at most {} (executors sharing a core starve each other and the \
             kernel's IO completion), or give the process more CPUs (taskset/CPUAffinity=)",
            cpus.saturating_sub(1).max(1)
        ))
    } else if shards == cpus && cpus > 1 {
        check.with_status(Status::Warn).fix(format!(
            "use {} shard(s) so a CPU stays free for interrupts and IO completion (busy cores \
             starve fdatasync, design.md §11)",
            cpus - 1
        ))
    } else {
        check
    }
}

/// The files glommio's `CpuSet::online()` reads; `Placement::Fixed` unwraps the result.
pub(super) fn cpu_topology(root: &HostRoot) -> Check {
    let expected = "a readable sysfs CPU topology (glommio pins executors with it)";
    let fix = "mount sysfs read-only at /sys in the container or unit (glommio panics when \
               pinning without it), or run with pinning = never";
    match topology(root) {
        Ok(cpus) => Check::new(
            names::CPU_TOPOLOGY,
            Status::Ok,
            format!("readable for {cpus} online CPU(s)"),
        )
        .expected(expected),
        Err(error) => {
            Check::new(names::CPU_TOPOLOGY, Status::Fail, error).expected(expected).fix(fix)
        }
    }
}

fn topology(root: &HostRoot) -> Result<usize, String> {
    let online = parse_cpu_list(&read_host_file(&root.sys(CPU_ONLINE))?)?;
    for cpu in &online {
        let dir = format!("devices/system/cpu/cpu{cpu}/topology");
        for file in ["physical_package_id", "core_id"] {
            let text = read_host_file(&root.sys(&format!("{dir}/{file}")))?;
            text.trim()
                .parse::<usize>()
                .map_err(|_| format!("{dir}/{file}: not a number: {:?}", text.trim()))?;
        }
        parse_cpu_list(&read_host_file(&root.sys(&format!("{dir}/core_cpus_list")))?)?;
    }
    let node_online = root.sys(NODE_ONLINE);
    if node_online.exists() {
        for node in parse_cpu_list(&read_host_file(&node_online)?)? {
            let cpulist = format!("devices/system/node/node{node}/cpulist");
            parse_cpu_list(&read_host_file(&root.sys(&cpulist))?)?;
        }
    }
    Ok(online.len())
}

pub(super) fn clocksource(root: &HostRoot) -> Check {
    let expected = "tsc";
    let current = match read_host_file(&root.sys(&format!("{CLOCKSOURCE_DIR}/current_clocksource")))
    {
        Ok(text) => text.trim().to_string(),
        Err(error) => {
            return Check::new(names::CLOCKSOURCE, Status::Warn, format!("unreadable: {error}"))
                .expected(expected)
                .fix("mount sysfs at /sys so the clock source can be checked")
        }
    };
    if current == "tsc" {
        return Check::new(names::CLOCKSOURCE, Status::Ok, current).expected(expected);
    }
    let available = read_host_file(&root.sys(&format!("{CLOCKSOURCE_DIR}/available_clocksource")))
        .map(|text| text.trim().to_string())
        .unwrap_or_default();
    let fix = if available.split_whitespace().any(|source| source == "tsc") {
        format!(
            "echo tsc > /sys/{CLOCKSOURCE_DIR}/current_clocksource, and add clocksource=tsc to \
             the kernel command line to keep it (timestamps and timers cost a syscall otherwise)"
        )
    } else {
        "no tsc offered (the kernel found it unstable): check BIOS power states, or on a VM \
         enable an invariant TSC for the guest; latency timers will cost more"
            .to_string()
    };
    Check::new(names::CLOCKSOURCE, Status::Warn, format!("{current} (available: {available})"))
        .expected(expected)
        .fix(fix)
}

fn version_text((major, minor): (u32, u32)) -> String {
    format!("{major}.{minor}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_release_parses_major_and_minor() {
        assert_eq!(parse_kernel_release("6.18.44-fc-v595"), Some((6, 18)));
        assert_eq!(parse_kernel_release("5.4.0-150-generic\n"), Some((5, 4)));
        assert_eq!(parse_kernel_release("6.1-rc3"), Some((6, 1)));
        assert_eq!(parse_kernel_release("garbage"), None);
    }

    #[test]
    fn cpu_list_parses_ranges_and_singles() {
        assert_eq!(parse_cpu_list("0-3,8,10-11\n").unwrap(), vec![0, 1, 2, 3, 8, 10, 11]);
        assert_eq!(parse_cpu_list("0\n").unwrap(), vec![0]);
        assert!(parse_cpu_list("3-1").is_err());
        assert!(parse_cpu_list("a-b").is_err());
        assert!(parse_cpu_list("0-4000000000").is_err());
    }
}
