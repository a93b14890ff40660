//! Host checks of the data dir's block device: which disk it is, whether glommio can read what
//! it needs from sysfs, block sizes, write cache and IO scheduler.
//!
//! The device is found through the mount's `major:minor` (mountinfo; the data dir's `st_dev` if
//! no mount matched; the mount source's `st_rdev` when the mount has an anonymous `0:N` device,
//! as btrfs does), then `sys/dev/block/M:m`, a symlink into `sys/devices/…`. A partition's
//! directory holds a `partition` file and sits inside its disk's directory, which has `queue/`.

#![forbid(unsafe_code)]

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::fs::{dev_major_minor, magic, DataDir};
use super::O_DIRECT_PROBE_BYTES;
use super::{names, read_host_file, Check, HostRoot, Status, LOGICAL_BLOCK_SIZE_MAX};

/// The queue attributes glommio 0.9.0 reads (and unwraps) in `sysfs.rs`, `BlockDevice::new`.
const GLOMMIO_QUEUE_INTEGERS: [&str; 7] = [
    "rotational",
    "minimum_io_size",
    "optimal_io_size",
    "logical_block_size",
    "physical_block_size",
    "max_sectors_kb",
    "max_segment_size",
];

/// The data dir's block device, as far as it could be resolved.
#[derive(Debug, Clone)]
pub(super) struct Disk {
    /// (major, minor) the data dir lives on, and where that came from.
    pub dev: Option<((u32, u32), &'static str)>,
    pub resolved: Result<DiskInfo, String>,
}

/// A resolved disk in sysfs.
#[derive(Debug, Clone)]
pub(super) struct DiskInfo {
    /// Whole-disk name, e.g. `vda`, `nvme0n1`, `dm-0`.
    pub name: String,
    /// Partition name when the data dir is on one, e.g. `vda1`.
    pub partition: Option<String>,
    /// Canonical sysfs directory of the whole disk.
    pub disk_dir: PathBuf,
}

impl Disk {
    pub(super) fn resolve(root: &HostRoot, dir: &DataDir) -> Self {
        let dev = match (&dir.mount, dir.st_dev) {
            (Ok(mount), _) if mount.major != 0 => Some(((mount.major, mount.minor), "mountinfo")),
            (Ok(mount), _) if mount.source.starts_with("/dev/") => std::fs::metadata(&mount.source)
                .ok()
                .filter(|meta| meta.rdev() != 0)
                .map(|meta| (dev_major_minor(meta.rdev()), "mount source"))
                .or(Some(((mount.major, mount.minor), "mountinfo"))),
            (Ok(mount), _) => Some(((mount.major, mount.minor), "mountinfo")),
            (Err(_), Some(st_dev)) => Some((st_dev, "st_dev")),
            (Err(_), None) => None,
        };
        let resolved = match dev {
            Some(((major, minor), _)) => resolve_disk(root, major, minor, dir),
            None => Err("the data dir's device is unknown".to_string()),
        };
        Self { dev, resolved }
    }

    /// The resolved disk, or the check to report when there is no disk to look at.
    fn info_or_skip(&self, name: &'static str, expected: &str) -> Result<&DiskInfo, Check> {
        self.resolved.as_ref().map_err(|error| {
            Check::new(name, Status::Warn, format!("not checked: {error}"))
                .expected(expected)
                .fix("see device")
        })
    }
}

fn resolve_disk(
    root: &HostRoot,
    major: u32,
    minor: u32,
    dir: &DataDir,
) -> Result<DiskInfo, String> {
    let link = root.sys(&format!("dev/block/{major}:{minor}"));
    let target = match link.canonicalize() {
        Ok(target) => target,
        Err(_) if major == 0 => {
            let fs_type = dir.mount.as_ref().map_or("?", |mount| mount.fs_type.as_str());
            return Err(format!("no block device ({major}:{minor} is a {fs_type} mount)"));
        }
        Err(error) => return Err(format!("{}: {error}", link.display())),
    };
    let (disk_dir, partition) = if target.join("partition").exists() {
        let disk_dir = target
            .parent()
            .ok_or_else(|| format!("{}: partition without a disk", target.display()))?;
        (disk_dir.to_path_buf(), Some(file_name(&target)))
    } else {
        (target.clone(), None)
    };
    if !disk_dir.join("queue").is_dir() {
        return Err(format!("{}: no queue/ directory", disk_dir.display()));
    }
    Ok(DiskInfo { name: file_name(&disk_dir), partition, disk_dir })
}

fn queue_file(info: &DiskInfo, file: &str) -> Result<String, String> {
    read_host_file(&info.disk_dir.join("queue").join(file)).map(|text| text.trim().to_string())
}

fn file_name(path: &Path) -> String {
    path.file_name().map(|name| name.to_string_lossy().into_owned()).unwrap_or_default()
}

pub(super) fn device_check(dir: &DataDir, disk: &Disk) -> Check {
    let expected = "a local block device";
    let numbers = disk
        .dev
        .map(|((major, minor), via)| format!("{major}:{minor} from {via}"))
        .unwrap_or_default();
    match &disk.resolved {
        Ok(info) => {
            let on = match &info.partition {
                Some(partition) => format!("{partition} on disk {}", info.name),
                None => format!("disk {}", info.name),
            };
            let kind = device_kind(&info.disk_dir);
            Check::new(names::DEVICE, Status::Ok, format!("{on} ({kind}{numbers})"))
                .expected(expected)
        }
        Err(error) => {
            let memory = dir
                .stat
                .as_ref()
                .is_ok_and(|stat| stat.magic == magic::TMPFS || stat.magic == magic::RAMFS);
            Check::new(names::DEVICE, Status::Warn, error.clone()).expected(expected).fix(
                if memory {
                    "see filesystem: the data dir is not on a disk"
                } else {
                    "put the data dir on a local disk so its cache and scheduler can be checked"
                },
            )
        }
    }
}

/// `virtio `, `nvme `, `device-mapper `... from the sysfs path, for the report.
fn device_kind(disk_dir: &Path) -> &'static str {
    let path = disk_dir.to_string_lossy();
    let name = file_name(disk_dir);
    if path.contains("/virtio") {
        "virtio, "
    } else if name.starts_with("nvme") {
        "nvme, "
    } else if name.starts_with("dm-") {
        "device-mapper, "
    } else if name.starts_with("md") {
        "md raid, "
    } else if name.starts_with("sd") {
        "scsi/sata, "
    } else {
        ""
    }
}

/// Reads what glommio reads for files in the data dir, where it reads it: `dev/block/M:0`, with
/// `M` the major of the files' `st_dev` — the mount's `major:minor` in mountinfo (anonymous
/// `0:N` on btrfs, whatever the mount source).
pub(super) fn glommio_sysfs_check(root: &HostRoot, dir: &DataDir, disk: &Disk) -> Check {
    let expected = "dev/block/<major>:0 readable as glommio needs";
    let files_dev = match &dir.mount {
        Ok(mount) => Some((mount.major, mount.minor)),
        Err(_) => dir.st_dev,
    };
    let Some((major, _)) = files_dev else {
        return Check::new(names::GLOMMIO_SYSFS, Status::Warn, "not probed: device unknown")
            .expected(expected);
    };
    let link = root.sys(&format!("dev/block/{major}:0"));
    let fix = format!(
        "mount sysfs read-only at /sys (containers: bind-mount /sys/dev/block and /sys/devices) \
         so glommio can read {}",
        link.display()
    );
    let glommio_dir = match link.canonicalize() {
        Ok(dir) => dir,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            return Check::new(
                names::GLOMMIO_SYSFS,
                Status::Ok,
                format!("{major}:0 absent: glommio treats the files as in-memory"),
            )
            .expected(expected)
        }
        Err(error) => {
            return Check::new(
                names::GLOMMIO_SYSFS,
                Status::Fail,
                format!("{}: {error}", link.display()),
            )
            .expected(expected)
            .fix(fix)
        }
    };
    if let Err(error) = glommio_reads(&glommio_dir) {
        return Check::new(
            names::GLOMMIO_SYSFS,
            Status::Fail,
            format!("{error} (glommio unwraps this read when a file is opened: panic)"),
        )
        .expected(expected)
        .fix(fix);
    }
    let glommio_name = file_name(&glommio_dir);
    match &disk.resolved {
        Ok(info) if info.disk_dir != glommio_dir => Check::new(
            names::GLOMMIO_SYSFS,
            Status::Warn,
            format!(
                "readable, but glommio reads {major}:0 = {glommio_name} while the data dir is \
                 on {}: its O_DIRECT alignment comes from the wrong disk",
                info.name
            ),
        )
        .expected(expected)
        .fix(format!(
            "put the data dir on {glommio_name} (minor 0 of major {major}) or on a disk whose \
             logical block size matches"
        )),
        _ => Check::new(
            names::GLOMMIO_SYSFS,
            Status::Ok,
            format!("{major}:0 = {glommio_name} readable"),
        )
        .expected(expected),
    }
}

fn glommio_reads(disk_dir: &Path) -> Result<(), String> {
    let queue = disk_dir.join("queue");
    for file in GLOMMIO_QUEUE_INTEGERS {
        let path = queue.join(file);
        let text = read_host_file(&path)?;
        text.trim()
            .parse::<isize>()
            .map_err(|_| format!("{}: not an integer: {:?}", path.display(), text.trim()))?;
    }
    let cache_path = queue.join("write_cache");
    let cache = read_host_file(&cache_path)?;
    if !matches!(cache.trim_matches('\n'), "write back" | "write through") {
        return Err(format!(
            "{}: {:?} is neither \"write back\" nor \"write through\"",
            cache_path.display(),
            cache.trim()
        ));
    }
    let slaves = disk_dir.join("slaves");
    std::fs::read_dir(&slaves).map_err(|error| format!("{}: {error}", slaves.display()))?;
    Ok(())
}

pub(super) fn block_sizes_check(disk: &Disk) -> Check {
    let expected = format!(
        "logical <= {LOGICAL_BLOCK_SIZE_MAX} and physical <= {O_DIRECT_PROBE_BYTES} (ringlog \
         writes 4 KiB-aligned blocks)"
    );
    let info = match disk.info_or_skip(names::BLOCK_SIZES, &expected) {
        Ok(info) => info,
        Err(check) => return check,
    };
    let read = |file| {
        queue_file(info, file).and_then(|text| {
            text.parse::<u64>().map_err(|_| format!("queue/{file}: not a number: {text:?}"))
        })
    };
    let (logical, physical) = match (read("logical_block_size"), read("physical_block_size")) {
        (Ok(logical), Ok(physical)) => (logical, physical),
        (Err(error), _) | (_, Err(error)) => {
            return Check::new(names::BLOCK_SIZES, Status::Warn, error).expected(expected)
        }
    };
    let found = format!("logical {logical}, physical {physical}");
    let check = Check::new(names::BLOCK_SIZES, Status::Ok, found).expected(expected);
    if logical > LOGICAL_BLOCK_SIZE_MAX {
        check.with_status(Status::Fail).fix(
            "the device rejects 4 KiB O_DIRECT writes: reformat it (nvme format --lbaf) to a \
             512 or 4096 byte logical block size",
        )
    } else if physical > O_DIRECT_PROBE_BYTES as u64 {
        check.with_status(Status::Warn).fix(
            "4 KiB writes are smaller than the physical sector: the device does read-modify-write; \
             raise flush sizes (tuning.md)",
        )
    } else {
        check
    }
}

pub(super) fn write_cache_check(disk: &Disk) -> Check {
    let expected = "\"write back\" (volatile cache flushed by fdatasync), or \"write through\" \
                    only on power-loss-protected devices";
    let info = match disk.info_or_skip(names::WRITE_CACHE, expected) {
        Ok(info) => info,
        Err(check) => return check,
    };
    match queue_file(info, "write_cache").as_deref() {
        Ok("write back") => Check::new(
            names::WRITE_CACHE,
            Status::Ok,
            "write back: the device has a volatile cache and fdatasync sends it a flush",
        )
        .expected(expected),
        Ok("write through") => Check::new(
            names::WRITE_CACHE,
            Status::Warn,
            "write through: the kernel sends no cache flushes, so durability relies on the \
             device having no volatile cache or power-loss protection",
        )
        .expected(expected)
        .fix(
            "confirm the device has power-loss protection (nvme id-ctrl: vwc = 0, or a PLP \
             datasheet); if it has a volatile cache, echo \"write back\" > \
             /sys/block/<dev>/queue/write_cache so flushes are sent",
        ),
        Ok(other) => {
            Check::new(names::WRITE_CACHE, Status::Warn, format!("unknown value {other:?}"))
                .expected(expected)
        }
        Err(error) => Check::new(names::WRITE_CACHE, Status::Warn, format!("unreadable: {error}"))
            .expected(expected)
            .fix("mount sysfs at /sys so the write cache can be checked"),
    }
}

pub(super) fn scheduler_check(disk: &Disk) -> Check {
    let expected = "none or mq-deadline (kyber fine; bfq costs CPU and latency)";
    let info = match disk.info_or_skip(names::SCHEDULER, expected) {
        Ok(info) => info,
        Err(check) => return check,
    };
    let text = match queue_file(info, "scheduler") {
        Ok(text) => text,
        Err(error) => {
            return Check::new(names::SCHEDULER, Status::Warn, format!("unreadable: {error}"))
                .expected(expected)
        }
    };
    let active = text
        .split_whitespace()
        .find_map(|word| word.strip_prefix('[')?.strip_suffix(']'))
        .unwrap_or(text.as_str())
        .to_string();
    let rotational = queue_file(info, "rotational").ok();
    let found = match rotational.as_deref() {
        Some("1") => format!("{active} (rotational)"),
        Some("0") => format!("{active} (non-rotational)"),
        _ => active.clone(),
    };
    let check = Check::new(names::SCHEDULER, Status::Ok, found).expected(expected);
    match active.as_str() {
        "none" | "mq-deadline" | "kyber" => check,
        _ => {
            let name = &info.name;
            check.with_status(Status::Warn).fix(format!(
                "echo none > /sys/block/{name}/queue/scheduler (mq-deadline for spinning disks), \
                 kept with a udev rule: ACTION==\"add|change\", KERNEL==\"{name}\", \
                 ATTR{{queue/scheduler}}=\"none\""
            ))
        }
    }
}
