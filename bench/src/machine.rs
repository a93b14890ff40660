//! Machine: the conditions a run was measured under (CPU, kernel, filesystem, device, load).
//!
//! Everything is read from /proc and /sys; a value that cannot be read is reported as
//! "unknown", never guessed.

use serde::Serialize;

use crate::workdir::MountInfo;

/// The host a run was measured on.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub cpu_model: String,
    pub cpus: usize,
    pub kernel: String,
    pub memlock_limit: String,
    pub filesystem: String,
    pub device: String,
    pub mount_point: String,
    /// 1-minute load average at the start of the run (other work sharing the machine).
    pub load_average_1m: String,
}

impl Machine {
    /// Describes this host, with `mount` the filesystem the benchmark writes to.
    pub fn describe(mount: &MountInfo) -> Machine {
        Machine {
            cpu_model: cpu_model(),
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            kernel: read_trimmed("/proc/sys/kernel/osrelease"),
            memlock_limit: memlock_limit(),
            filesystem: mount.filesystem.clone(),
            device: mount.device.clone(),
            mount_point: mount.mount_point.display().to_string(),
            load_average_1m: read_trimmed("/proc/loadavg")
                .split_whitespace()
                .next()
                .unwrap_or("unknown")
                .to_string(),
        }
    }
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|line| line.strip_prefix("model name"))
                .map(|rest| rest.trim_start_matches([' ', '\t', ':']).trim().to_string())
        })
        .unwrap_or_else(|| "unknown".to_string())
}

fn memlock_limit() -> String {
    match ringlog_engine::runtime::current_memlock_limit() {
        Ok(Some(bytes)) => format!("{bytes} bytes"),
        Ok(None) => "unlimited".to_string(),
        Err(_) => "unknown".to_string(),
    }
}

fn read_trimmed(path: &str) -> String {
    std::fs::read_to_string(path)
        .map(|text| text.trim().to_string())
        .unwrap_or_else(|_| "unknown".to_string())
}
