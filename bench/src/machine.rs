//! Machine: the conditions a run was measured under (CPU, kernel, filesystem, device, load).
//!
//! Everything is read from /proc and /sys; a value that cannot be read is reported as
//! "unknown", never guessed. The device model is that of the disk holding the work dir: its
//! `st_dev` leads to `/sys/dev/block/MAJOR:MINOR`, a partition to its disk, a device-mapper or
//! md device to its first underlying disk, and the disk to `device/model` (SCSI, SATA, NVMe) or,
//! for virtio disks, which have no model, to their PCI vendor and device ids.

use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

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
    /// Model of the disk holding the work dir ("unknown" where /sys does not say).
    pub device_model: String,
    /// 1-minute load average at the start of the run (other work sharing the machine).
    pub load_average_1m: String,
}

impl Machine {
    /// Describes this host, with `dir` the work dir and `mount` the filesystem it is on.
    pub fn describe(mount: &MountInfo, dir: &Path) -> Machine {
        Machine {
            cpu_model: cpu_model(),
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            kernel: read_trimmed("/proc/sys/kernel/osrelease"),
            memlock_limit: memlock_limit(),
            filesystem: mount.filesystem.clone(),
            device: mount.device.clone(),
            mount_point: mount.mount_point.display().to_string(),
            device_model: device_model(dir),
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

/// The model of the disk `path` lives on, or "unknown".
pub fn device_model(path: &Path) -> String {
    let Ok(metadata) = std::fs::metadata(path) else { return "unknown".to_string() };
    let dev = metadata.dev();
    let (major, minor) = (dev_major(dev), dev_minor(dev));
    if major == 0 {
        // Anonymous devices: overlayfs, btrfs subvolumes, network filesystems.
        return format!("unknown (no block device behind {major}:{minor})");
    }
    let Ok(mut disk) = std::fs::canonicalize(format!("/sys/dev/block/{major}:{minor}")) else {
        return "unknown".to_string();
    };
    // Device-mapper / md: follow the first underlying device (a bounded chain).
    for _ in 0..8 {
        if disk.join("partition").exists() {
            if let Some(parent) = disk.parent() {
                disk = parent.to_path_buf();
            }
        }
        match first_slave(&disk) {
            Some(slave) => disk = slave,
            None => break,
        }
    }
    model_of_disk(&disk)
}

fn first_slave(disk: &Path) -> Option<PathBuf> {
    let mut slaves: Vec<PathBuf> =
        std::fs::read_dir(disk.join("slaves")).ok()?.flatten().map(|e| e.path()).collect();
    slaves.sort();
    std::fs::canonicalize(slaves.first()?).ok()
}

fn model_of_disk(disk: &Path) -> String {
    let read = |name: &str| {
        std::fs::read_to_string(disk.join("device").join(name))
            .ok()
            .map(|text| text.trim().to_string())
            .filter(|text| !text.is_empty())
    };
    let name = disk.file_name().map_or_else(String::new, |n| n.to_string_lossy().to_string());
    if let Some(model) = read("model") {
        return match read("vendor").filter(|v| !v.starts_with("0x")) {
            Some(vendor) => format!("{vendor} {model} ({name})"),
            None => format!("{model} ({name})"),
        };
    }
    match (read("vendor"), read("device")) {
        (Some(vendor), Some(device)) if vendor == "0x1af4" => {
            format!("virtio-blk (PCI {vendor}:{device}, {name})")
        }
        (Some(vendor), Some(device)) => format!("unknown model (PCI {vendor}:{device}, {name})"),
        _ => format!("unknown ({name})"),
    }
}

/// glibc's `gnu_dev_major`.
fn dev_major(dev: u64) -> u64 {
    ((dev >> 32) & 0xffff_f000) | ((dev >> 8) & 0xfff)
}

/// glibc's `gnu_dev_minor`.
fn dev_minor(dev: u64) -> u64 {
    ((dev >> 12) & 0xffff_ff00) | (dev & 0xff)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_numbers_split_as_glibc_does() {
        // 254:0 (a virtio disk), 259:1 (an NVMe partition), 8:300 (a minor above 255).
        assert_eq!((dev_major(0xfe00), dev_minor(0xfe00)), (254, 0));
        assert_eq!((dev_major((259 << 8) | 1), dev_minor((259 << 8) | 1)), (259, 1));
        let dev = (8 << 8) | (300 & 0xff) | ((300 & !0xff) << 12);
        assert_eq!((dev_major(dev), dev_minor(dev)), (8, 300));
    }

    #[test]
    fn the_device_model_of_a_path_is_a_non_empty_description() {
        let model = device_model(Path::new(env!("CARGO_MANIFEST_DIR")));
        assert!(!model.is_empty());
        assert_eq!(device_model(Path::new("/nonexistent/ringlog")), "unknown");
    }
}
