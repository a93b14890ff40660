//! Host checks of resource limits: RLIMIT_MEMLOCK against what the shards' executors register
//! with io_uring, and RLIMIT_NOFILE. Limits come from `proc/self/limits` under the probe's
//! `HostRoot` (exactly what getrlimit(2) returns) unless injected.
//!
//! The memlock arithmetic and verdict are the runtime's (`runtime::check_memlock`), so `doctor`,
//! `serve` and the executor start agree on one rule.

#![forbid(unsafe_code)]

use crate::runtime::{self, MemlockError, MemlockOutcome};

use super::{human_bytes, names, read_host_file, Check, HostRequirements, HostRoot, Limit};
use super::{Status, NOFILE_MIN, NOFILE_RECOMMENDED};

const LIMITS: &str = "self/limits";
const STATUS: &str = "self/status";
/// Linux capability number of CAP_IPC_LOCK (include/uapi/linux/capability.h).
const CAP_IPC_LOCK: u32 = 14;

/// The soft limit on the `/proc/<pid>/limits` line that starts with `label`.
pub(super) fn parse_soft_limit(limits: &str, label: &str) -> Result<Limit, String> {
    let line = limits
        .lines()
        .find_map(|line| line.strip_prefix(label))
        .ok_or_else(|| format!("no {label:?} line"))?;
    match line.split_whitespace().next() {
        Some("unlimited") => Ok(Limit::Unlimited),
        Some(soft) => {
            soft.parse().map(Limit::Value).map_err(|_| format!("{label}: bad soft limit {soft:?}"))
        }
        None => Err(format!("empty {label:?} line")),
    }
}

pub(super) fn memlock(
    root: &HostRoot,
    injected: Option<Limit>,
    cap_injected: Option<bool>,
    requirements: &HostRequirements,
) -> Check {
    let required =
        runtime::memlock_required_bytes(requirements.shards, requirements.io_memory_bytes);
    let expected = format!(
        ">= {} = {} shard(s) × {} rings × io_memory {}",
        human_bytes(required),
        requirements.shards,
        runtime::REGISTERED_RINGS_PER_EXECUTOR,
        human_bytes(runtime::effective_io_memory_bytes(requirements.io_memory_bytes)),
    );
    let limit = match injected {
        Some(limit) => limit,
        None => {
            match read_limits(root).and_then(|text| parse_soft_limit(&text, "Max locked memory")) {
                Ok(limit) => limit,
                Err(error) => {
                    return Check::new(names::MEMLOCK, Status::Warn, format!("unreadable: {error}"))
                        .expected(expected)
                }
            }
        }
    };
    let cap = cap_injected.unwrap_or_else(|| has_cap_ipc_lock(root));
    let limit_bytes = match limit {
        Limit::Unlimited => None,
        Limit::Value(bytes) => Some(bytes),
    };
    let found = match limit_bytes {
        None => "unlimited".to_string(),
        Some(bytes) => human_bytes(bytes),
    };
    let found = format!("{found}{}", if cap { ", CAP_IPC_LOCK held" } else { "" });
    let check = Check::new(names::MEMLOCK, Status::Ok, found).expected(expected);
    let unit_line = format!("LimitMEMLOCK={required}");
    match runtime::check_memlock(
        limit_bytes,
        requirements.shards,
        requirements.io_memory_bytes,
        cap,
    ) {
        Ok(MemlockOutcome::WithinLimit { .. }) => check,
        Ok(MemlockOutcome::ExceededButPrivileged { .. }) => {
            check.with_status(Status::Warn).fix(format!(
                "works only because of CAP_IPC_LOCK (root); the same config fails as an \
                 unprivileged user: set {unit_line} in the unit or `ulimit -l {}`",
                required.div_ceil(1024)
            ))
        }
        Err(MemlockError::BelowGlommioMinimum { minimum_bytes, .. }) => {
            check.with_status(Status::Fail).fix(format!(
                "glommio refuses to start below {} even as root: set {unit_line} in the unit, \
                 `ulimit -l {}`, or `memlock` in /etc/security/limits.conf",
                human_bytes(minimum_bytes),
                required.max(minimum_bytes).div_ceil(1024)
            ))
        }
        Err(_) => check.with_status(Status::Fail).fix(format!(
            "set {unit_line} in the systemd unit, `ulimit -l {}` in the shell, or `memlock` in \
             /etc/security/limits.conf; or lower --io-memory/--shards (otherwise glommio \
             silently falls back to slower unregistered IO)",
            required.div_ceil(1024)
        )),
    }
}

pub(super) fn nofile(root: &HostRoot, injected: Option<Limit>) -> Check {
    let expected = format!(">= {NOFILE_RECOMMENDED} (at least {NOFILE_MIN})");
    let limit = match injected {
        Some(limit) => limit,
        None => {
            match read_limits(root).and_then(|text| parse_soft_limit(&text, "Max open files")) {
                Ok(limit) => limit,
                Err(error) => {
                    return Check::new(names::NOFILE, Status::Warn, format!("unreadable: {error}"))
                        .expected(expected)
                }
            }
        }
    };
    let fix = format!(
        "set LimitNOFILE=1048576 in the systemd unit, or `ulimit -n {NOFILE_RECOMMENDED}` / \
         `nofile` in /etc/security/limits.conf (segments, indexes and connections each hold a \
         descriptor)"
    );
    match limit {
        Limit::Unlimited => Check::new(names::NOFILE, Status::Ok, "unlimited").expected(expected),
        Limit::Value(n) if n < NOFILE_MIN => {
            Check::new(names::NOFILE, Status::Fail, n.to_string()).expected(expected).fix(fix)
        }
        Limit::Value(n) if n < NOFILE_RECOMMENDED => {
            Check::new(names::NOFILE, Status::Warn, n.to_string()).expected(expected).fix(fix)
        }
        Limit::Value(n) => Check::new(names::NOFILE, Status::Ok, n.to_string()).expected(expected),
    }
}

fn read_limits(root: &HostRoot) -> Result<String, String> {
    read_host_file(&root.proc(LIMITS))
}

/// Whether `proc/self/status` shows CAP_IPC_LOCK in the effective set (false if unreadable).
fn has_cap_ipc_lock(root: &HostRoot) -> bool {
    read_host_file(&root.proc(STATUS))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("CapEff:"))
                .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        })
        .is_some_and(|caps| caps & (1 << CAP_IPC_LOCK) != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS_TEXT: &str = "\
Limit                     Soft Limit           Hard Limit           Units
Max open files            20000                20000                files
Max locked memory         8388608              8388608              bytes
Max stack size            unlimited            unlimited            bytes
";

    #[test]
    fn soft_limits_parse_from_proc_limits() {
        assert_eq!(parse_soft_limit(LIMITS_TEXT, "Max locked memory"), Ok(Limit::Value(8 << 20)));
        assert_eq!(parse_soft_limit(LIMITS_TEXT, "Max open files"), Ok(Limit::Value(20_000)));
        assert_eq!(parse_soft_limit(LIMITS_TEXT, "Max stack size"), Ok(Limit::Unlimited));
        assert!(parse_soft_limit(LIMITS_TEXT, "Max processes").is_err());
    }
}
