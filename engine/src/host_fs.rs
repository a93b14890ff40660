//! Host checks of the data dir's filesystem: existence and permissions, a real O_DIRECT write,
//! the filesystem type (statfs) and mount options (`proc/self/mountinfo`), free space.
//!
//! The data dir's mount is the `mountinfo` entry with the longest mount point above the data
//! dir (the last one listed on ties: later mounts hide earlier ones), preferring entries whose
//! `major:minor` matches the data dir's `st_dev`. A data dir that does not exist yet is checked
//! through its nearest existing ancestor, except for the O_DIRECT write.

#![forbid(unsafe_code)]

use std::fs::OpenOptions;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use rustix::fs::{Access, StatVfsMountFlags};

use super::{human_bytes, names, read_host_file, Check, HostRoot, Status};
use super::{FREE_SPACE_HEADROOM_PER_MILLE, FREE_SPACE_MIN_BYTES, O_DIRECT_PROBE_BYTES};

const MOUNTINFO: &str = "self/mountinfo";
/// Most lines of mountinfo considered (bounds the parse of external input).
const MOUNTINFO_LINES_MAX: usize = 100_000;

/// statfs(2) `f_type` magic numbers (include/uapi/linux/magic.h).
pub(super) mod magic {
    pub const EXT4: u32 = 0xEF53;
    pub const XFS: u32 = 0x5846_5342;
    pub const BTRFS: u32 = 0x9123_683E;
    pub const TMPFS: u32 = 0x0102_1994;
    pub const RAMFS: u32 = 0x8584_58F6;
    pub const OVERLAY: u32 = 0x794C_7630;
    pub const NFS: u32 = 0x6969;
    pub const SMB2: u32 = 0xFE53_4D42;
    pub const CIFS: u32 = 0xFF53_4D42;
    pub const V9FS: u32 = 0x0102_1997;
    pub const FUSE: u32 = 0x6573_5546;
    pub const CEPH: u32 = 0x00C3_6400;
    pub const ZFS: u32 = 0x2FC1_2FC1;
    pub const F2FS: u32 = 0xF2F5_2010;

    /// The usual name of a filesystem magic, for reports.
    pub fn name(magic: u32) -> &'static str {
        match magic {
            EXT4 => "ext2/3/4",
            XFS => "xfs",
            BTRFS => "btrfs",
            TMPFS => "tmpfs",
            RAMFS => "ramfs",
            OVERLAY => "overlay",
            NFS => "nfs",
            SMB2 | CIFS => "smb/cifs",
            V9FS => "9p",
            FUSE => "fuse",
            CEPH => "ceph",
            ZFS => "zfs",
            F2FS => "f2fs",
            _ => "unknown filesystem",
        }
    }
}

/// One line of `/proc/<pid>/mountinfo`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct MountEntry {
    pub major: u32,
    pub minor: u32,
    pub mount_point: PathBuf,
    pub mount_options: String,
    pub fs_type: String,
    pub source: String,
    pub super_options: String,
}

/// What statfs/statvfs said about the data dir's filesystem.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct FsStat {
    pub magic: u32,
    pub total_bytes: u64,
    pub available_bytes: u64,
    pub read_only: bool,
}

/// Where the data dir stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum DirState {
    Exists,
    Missing,
    NotADirectory,
    Unreadable(String),
}

/// Everything the filesystem and device checks need to know about the data dir.
#[derive(Debug, Clone)]
pub(super) struct DataDir {
    pub path: PathBuf,
    pub state: DirState,
    /// Canonical path of the data dir, or of its nearest existing ancestor.
    pub probe_path: Option<PathBuf>,
    /// `st_dev` of `probe_path` as (major, minor).
    pub st_dev: Option<(u32, u32)>,
    pub mount: Result<MountEntry, String>,
    pub stat: Result<FsStat, String>,
}

impl DataDir {
    pub(super) fn inspect(root: &HostRoot, path: &Path) -> Self {
        let state = match std::fs::metadata(path) {
            Ok(meta) if meta.is_dir() => DirState::Exists,
            Ok(_) => DirState::NotADirectory,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => DirState::Missing,
            Err(error) => DirState::Unreadable(error.to_string()),
        };
        let probe_path = path
            .ancestors()
            .filter(|candidate| !candidate.as_os_str().is_empty())
            .find(|candidate| candidate.is_dir())
            .or_else(|| path.is_relative().then_some(Path::new(".")))
            .and_then(|existing| existing.canonicalize().ok());
        let st_dev = probe_path
            .as_ref()
            .and_then(|p| std::fs::metadata(p).ok())
            .map(|meta| dev_major_minor(meta.dev()));
        let mount = match &probe_path {
            Some(probe) => read_host_file(&root.proc(MOUNTINFO))
                .and_then(|text| find_mount(&parse_mountinfo(&text), probe, st_dev)),
            None => Err("no existing directory to look up".to_string()),
        };
        let stat = match &probe_path {
            Some(probe) => fs_stat(probe),
            None => Err("no existing directory to statfs".to_string()),
        };
        Self { path: path.to_path_buf(), state, probe_path, st_dev, mount, stat }
    }
}

/// (major, minor) of a Linux `dev_t` (glibc's `gnu_dev_major`/`gnu_dev_minor` encoding).
pub(super) fn dev_major_minor(dev: u64) -> (u32, u32) {
    let major = ((dev >> 32) & 0xffff_f000) | ((dev >> 8) & 0x0fff);
    let minor = ((dev >> 12) & 0xffff_ff00) | (dev & 0x00ff);
    (major as u32, minor as u32)
}

/// Parses mountinfo lines (`id parent M:m root mountpoint opts [optional…] - type source
/// superopts`); malformed lines are skipped.
pub(super) fn parse_mountinfo(text: &str) -> Vec<MountEntry> {
    text.lines().take(MOUNTINFO_LINES_MAX).filter_map(parse_mount_line).collect()
}

fn parse_mount_line(line: &str) -> Option<MountEntry> {
    let fields: Vec<&str> = line.split(' ').collect();
    let separator = fields.iter().position(|field| *field == "-")?;
    if separator < 6 || fields.len() < separator + 3 {
        return None;
    }
    let (major, minor) = fields[2].split_once(':')?;
    Some(MountEntry {
        major: major.parse().ok()?,
        minor: minor.parse().ok()?,
        mount_point: PathBuf::from(unescape_octal(fields[4])),
        mount_options: fields[5].to_string(),
        fs_type: fields[separator + 1].to_string(),
        source: unescape_octal(fields[separator + 2]),
        super_options: fields.get(separator + 3).unwrap_or(&"").to_string(),
    })
}

/// Undoes mountinfo's `\040`-style escapes of space, tab, newline and backslash.
fn unescape_octal(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).and_then(|digits| {
            let digits = std::str::from_utf8(digits).ok()?;
            u8::from_str_radix(digits, 8).ok()
        });
        match (bytes[i], octal) {
            (b'\\', Some(value)) => {
                out.push(value);
                i += 4;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The mount holding `path` (see the module doc for the rule).
pub(super) fn find_mount(
    entries: &[MountEntry],
    path: &Path,
    st_dev: Option<(u32, u32)>,
) -> Result<MountEntry, String> {
    let above: Vec<&MountEntry> =
        entries.iter().filter(|entry| path.starts_with(&entry.mount_point)).collect();
    let same_dev: Vec<&MountEntry> =
        above.iter().copied().filter(|entry| Some((entry.major, entry.minor)) == st_dev).collect();
    let candidates = if same_dev.is_empty() { above } else { same_dev };
    candidates
        .into_iter()
        .enumerate()
        .max_by_key(|(index, entry)| (entry.mount_point.components().count(), *index))
        .map(|(_, entry)| entry.clone())
        .ok_or_else(|| format!("no mountinfo entry above {}", path.display()))
}

fn fs_stat(path: &Path) -> Result<FsStat, String> {
    let statfs = rustix::fs::statfs(path).map_err(|error| format!("statfs: {error}"))?;
    let statvfs = rustix::fs::statvfs(path).map_err(|error| format!("statvfs: {error}"))?;
    Ok(FsStat {
        magic: (statfs.f_type as u64 & 0xffff_ffff) as u32,
        total_bytes: statvfs.f_blocks.saturating_mul(statvfs.f_frsize),
        available_bytes: statvfs.f_bavail.saturating_mul(statvfs.f_frsize),
        read_only: statvfs.f_flag.contains(StatVfsMountFlags::RDONLY),
    })
}

/// How fit a filesystem is to hold the log.
fn fs_verdict(magic: u32, mount_type: Option<&str>) -> (Status, &'static str, &'static str) {
    match (magic, mount_type) {
        (magic::EXT4, Some("ext2")) => {
            (Status::Warn, "ext2 has no journal: a crash can need a long fsck", "use ext4 or XFS")
        }
        (magic::EXT4, Some("ext3")) => {
            (Status::Warn, "ext3 is slow for O_DIRECT appends", "use ext4 or XFS")
        }
        (magic::EXT4 | magic::XFS, _) => (Status::Ok, "", ""),
        (magic::TMPFS | magic::RAMFS, _) => (
            Status::Fail,
            "memory, not stable storage: nothing survives a reboot, and glommio turns direct \
             IO off on tmpfs",
            "point --data-dir at an ext4 or XFS filesystem on a local disk",
        ),
        (magic::OVERLAY, _) => (
            Status::Fail,
            "overlayfs (a container's writable layer): not meant for durable data",
            "mount a volume (ext4/XFS on a local disk) at the data dir",
        ),
        (magic::NFS | magic::SMB2 | magic::CIFS | magic::V9FS | magic::CEPH | magic::FUSE, _) => (
            Status::Fail,
            "network or user-space filesystem: O_DIRECT and fdatasync semantics differ and \
             latency is unbounded",
            "use a local ext4 or XFS filesystem",
        ),
        (magic::BTRFS | magic::ZFS | magic::F2FS, _) => (
            Status::Warn,
            "copy-on-write or log-structured: O_DIRECT and fdatasync cost more and are less \
             tested with ringlog",
            "prefer ext4 or XFS on a local disk",
        ),
        _ => (Status::Warn, "untested filesystem", "prefer ext4 or XFS on a local disk"),
    }
}

pub(super) fn data_dir_check(dir: &DataDir) -> Check {
    let shown = dir.path.display().to_string();
    let expected = "an existing directory writable by this user";
    let check =
        |status, found: String| Check::new(names::DATA_DIR, status, found).expected(expected);
    match &dir.state {
        DirState::Exists => match rustix::fs::access(&dir.path, Access::WRITE_OK | Access::EXEC_OK)
        {
            Ok(()) => check(Status::Ok, format!("{shown} (writable)")),
            Err(error) => check(Status::Fail, format!("{shown} is not writable: {error}"))
                .fix(format!("chown the data dir to the ringlog user (chown -R ringlog: {shown})")),
        },
        DirState::Missing => check(
            Status::Fail,
            format!(
                "{shown} does not exist (the checks below looked at {})",
                dir.probe_path.as_deref().map_or("nothing".into(), Path::to_string_lossy)
            ),
        )
        .fix(format!("mkdir -p {shown} && chown ringlog: {shown} && chmod 0700 {shown}")),
        DirState::NotADirectory => {
            check(Status::Fail, format!("{shown} is not a directory")).fix("choose a directory")
        }
        DirState::Unreadable(error) => check(Status::Fail, format!("{shown}: {error}"))
            .fix("fix the permissions of the path's parents"),
    }
}

pub(super) fn o_direct_check(dir: &DataDir) -> Check {
    let expected = "a 4 KiB O_DIRECT write + fdatasync + read-back on a durable filesystem";
    let check =
        |status, found: String| Check::new(names::O_DIRECT, status, found).expected(expected);
    if dir.state != DirState::Exists {
        return check(Status::Fail, "not probed: the data dir is unusable".to_string())
            .fix("fix data_dir first");
    }
    let memory_fs =
        matches!(&dir.stat, Ok(stat) if matches!(stat.magic, magic::TMPFS | magic::RAMFS));
    match o_direct_probe(&dir.path) {
        Ok(()) if memory_fs => check(
            Status::Fail,
            "the write worked, but on tmpfs: O_DIRECT goes to memory, not to a device, so \
             fdatasync guarantees nothing"
                .to_string(),
        )
        .fix("point --data-dir at an ext4 or XFS filesystem on a local disk"),
        Ok(()) => check(Status::Ok, "write, fdatasync and read-back of 4 KiB worked".to_string()),
        // A full filesystem is an operating condition, not a host that cannot do O_DIRECT:
        // a node on it starts, serves reads and answers appends `StorageFull` until space is
        // back (its logs' own probe falls back to an existing file). Refusing to start here
        // would turn a full disk into a crash loop.
        Err(error) if error.contains(NO_SPACE_MARK) => {
            check(Status::Warn, format!("not probed: the filesystem is full ({error})"))
                .fix("free space on the data dir's filesystem (retention, or remove other files)")
        }
        Err(error) => check(Status::Fail, error).fix(
            "use a filesystem that supports O_DIRECT (ext4, XFS) on a device with a logical \
             block size <= 4096",
        ),
    }
}

/// Marks a probe error caused by a full filesystem (ENOSPC or EDQUOT).
const NO_SPACE_MARK: &str = "[no space]";

fn describe(what: &str, error: &std::io::Error) -> String {
    match error.raw_os_error() {
        Some(libc::ENOSPC | libc::EDQUOT) => format!("{what}: {error} {NO_SPACE_MARK}"),
        _ => format!("{what}: {error}"),
    }
}

/// Writes, syncs, reads back and removes one aligned block in `dir` with O_DIRECT.
fn o_direct_probe(dir: &Path) -> Result<(), String> {
    let nanos =
        SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |elapsed| elapsed.subsec_nanos());
    let path = dir.join(format!(".ringlog-doctor-{}-{nanos}.probe", std::process::id()));
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_DIRECT)
        .open(&path)
        .map_err(|error| match error.raw_os_error() {
            Some(libc::EINVAL) => format!("open with O_DIRECT refused (EINVAL): {error}"),
            _ => describe(&format!("cannot create {}", path.display()), &error),
        })?;
    let result = write_sync_read(&file);
    drop(file);
    let removed = std::fs::remove_file(&path)
        .map_err(|error| format!("cannot remove probe file {}: {error}", path.display()));
    result.and(removed)
}

fn write_sync_read(file: &std::fs::File) -> Result<(), String> {
    let mut written = vec![0u8; 2 * O_DIRECT_PROBE_BYTES];
    let mut read = vec![0u8; 2 * O_DIRECT_PROBE_BYTES];
    let block = aligned_block(&mut written);
    for (i, byte) in block.iter_mut().enumerate() {
        *byte = (i % 251) as u8;
    }
    let count = file
        .write_at(block, 0)
        .map_err(|error| describe("aligned 4 KiB O_DIRECT write failed", &error))?;
    if count != O_DIRECT_PROBE_BYTES {
        return Err(format!("short O_DIRECT write: {count} of {O_DIRECT_PROBE_BYTES} bytes"));
    }
    file.sync_data().map_err(|error| describe("fdatasync failed", &error))?;
    let back = aligned_block(&mut read);
    let count = file
        .read_at(back, 0)
        .map_err(|error| format!("aligned 4 KiB O_DIRECT read failed: {error}"))?;
    let block = aligned_block(&mut written);
    if count != O_DIRECT_PROBE_BYTES || back != block {
        return Err("O_DIRECT read-back differs from what was written".to_string());
    }
    Ok(())
}

/// The `O_DIRECT_PROBE_BYTES`-aligned block inside a buffer of twice that size.
fn aligned_block(buffer: &mut [u8]) -> &mut [u8] {
    let offset = buffer.as_ptr().align_offset(O_DIRECT_PROBE_BYTES);
    &mut buffer[offset..offset + O_DIRECT_PROBE_BYTES]
}

pub(super) fn filesystem_check(dir: &DataDir) -> Check {
    let expected = "ext4 or xfs on a local disk";
    let stat = match &dir.stat {
        Ok(stat) => stat,
        Err(error) => {
            return Check::new(names::FILESYSTEM, Status::Fail, error.clone())
                .expected(expected)
                .fix("make the data dir's path reachable (glommio unwraps statfs and panics)")
        }
    };
    let mount_type = dir.mount.as_ref().ok().map(|mount| mount.fs_type.as_str());
    let (status, reason, fix) = fs_verdict(stat.magic, mount_type);
    let mut found = match &dir.mount {
        Ok(mount) => format!(
            "{} ({} at {}, statfs magic {:#x})",
            mount.fs_type,
            mount.source,
            mount.mount_point.display(),
            stat.magic
        ),
        Err(error) => format!(
            "{} (statfs magic {:#x}; mountinfo: {error})",
            magic::name(stat.magic),
            stat.magic
        ),
    };
    if !reason.is_empty() {
        found = format!("{found}: {reason}");
    }
    Check::new(names::FILESYSTEM, status, found).expected(expected).fix(fix)
}

pub(super) fn mount_options_check(dir: &DataDir) -> Check {
    let expected = "rw, barriers on, no data=journal/sync";
    let mount = match &dir.mount {
        Ok(mount) => mount,
        Err(error) => {
            return Check::new(names::MOUNT_OPTIONS, Status::Warn, error.clone())
                .expected(expected)
                .fix("mount procfs at /proc so mount options can be checked")
        }
    };
    let options: Vec<&str> =
        mount.mount_options.split(',').chain(mount.super_options.split(',')).collect();
    let has = |name: &str| options.contains(&name);
    let read_only = has("ro") || dir.stat.as_ref().is_ok_and(|stat| stat.read_only);
    let mut fails = Vec::new();
    let mut warns = Vec::new();
    if read_only {
        fails.push("ro: the filesystem is read-only");
    }
    if has("nobarrier") || has("barrier=0") {
        warns.push(
            "nobarrier: cache flushes are not sent, an acknowledged write can vanish on power \
             loss unless the device has power-loss protection",
        );
    }
    if has("data=journal") {
        warns.push("data=journal: ext4 turns O_DIRECT into buffered, journalled IO");
    }
    if has("sync") || has("dirsync") {
        warns.push("sync/dirsync: every write is synchronous, fdatasync batching is lost");
    }
    let found = format!("{}; super {}", mount.mount_options, mount.super_options);
    let status = if !fails.is_empty() {
        Status::Fail
    } else if !warns.is_empty() {
        Status::Warn
    } else {
        Status::Ok
    };
    let reasons: Vec<&str> = fails.into_iter().chain(warns).collect();
    let found = if reasons.is_empty() { found } else { format!("{found}: {}", reasons.join("; ")) };
    let check = Check::new(names::MOUNT_OPTIONS, status, found).expected(expected);
    if status == Status::Ok {
        return check;
    }
    check.fix(format!(
        "remount {} with defaults (mount -o remount,rw,barrier …) and fix its /etc/fstab line: \
         drop nobarrier/barrier=0, data=journal, sync, dirsync",
        mount.mount_point.display()
    ))
}

pub(super) fn free_space_check(dir: &DataDir, retention_bytes: Option<u64>) -> Check {
    let stat = match &dir.stat {
        Ok(stat) => stat,
        Err(error) => {
            return Check::new(names::FREE_SPACE, Status::Warn, error.clone())
                .expected("statvfs of the data dir")
        }
    };
    let found =
        format!("{} free of {}", human_bytes(stat.available_bytes), human_bytes(stat.total_bytes));
    let Some(retention) = retention_bytes else {
        let check = Check::new(names::FREE_SPACE, Status::Ok, found).expected(format!(
            ">= {} (no --retention-bytes given: the log grows until retention is set)",
            human_bytes(FREE_SPACE_MIN_BYTES)
        ));
        if stat.available_bytes < FREE_SPACE_MIN_BYTES {
            return check
                .with_status(Status::Warn)
                .fix("free space on the data dir's filesystem or move the data dir");
        }
        return check;
    };
    let needed = retention.saturating_add(retention / 1000 * FREE_SPACE_HEADROOM_PER_MILLE);
    let check = Check::new(names::FREE_SPACE, Status::Ok, found).expected(format!(
        ">= {} (retention {} + {}% headroom for preallocated segments)",
        human_bytes(needed),
        human_bytes(retention),
        FREE_SPACE_HEADROOM_PER_MILLE / 10
    ));
    let fix = "lower --retention-bytes, free space, or use a larger filesystem";
    if stat.available_bytes < retention {
        check.with_status(Status::Fail).fix(fix)
    } else if stat.available_bytes < needed {
        check.with_status(Status::Warn).fix(fix)
    } else {
        check
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO_TEXT: &str = "\
22 27 0:21 / /proc rw,relatime - proc proc rw
27 1 254:0 / / rw,relatime - ext4 /dev/vda rw,discard
25 24 0:23 / /dev/shm rw,relatime - tmpfs tmpfs rw,size=24684096k
30 25 0:27 / /dev/shm rw,relatime - tmpfs tmpfs rw,size=24684096k
40 27 259:3 / /srv/my\\040data rw,noatime shared:5 - xfs /dev/nvme0n1p3 rw,nobarrier
bad line
";

    #[test]
    fn mountinfo_lines_parse_with_optional_fields_and_escapes() {
        let entries = parse_mountinfo(MOUNTINFO_TEXT);
        assert_eq!(entries.len(), 5);
        let xfs = &entries[4];
        assert_eq!((xfs.major, xfs.minor), (259, 3));
        assert_eq!(xfs.mount_point, PathBuf::from("/srv/my data"));
        assert_eq!(xfs.fs_type, "xfs");
        assert_eq!(xfs.source, "/dev/nvme0n1p3");
        assert_eq!(xfs.super_options, "rw,nobarrier");
    }

    #[test]
    fn mount_lookup_takes_the_longest_then_latest_mount_point() {
        let entries = parse_mountinfo(MOUNTINFO_TEXT);
        let shm = find_mount(&entries, Path::new("/dev/shm/x"), None).unwrap();
        assert_eq!((shm.major, shm.minor), (0, 27));
        let root = find_mount(&entries, Path::new("/srv/other"), Some((254, 0))).unwrap();
        assert_eq!(root.fs_type, "ext4");
        let data = find_mount(&entries, Path::new("/srv/my data/log"), Some((259, 3))).unwrap();
        assert_eq!(data.fs_type, "xfs");
    }

    #[test]
    fn dev_t_splits_into_major_and_minor() {
        assert_eq!(dev_major_minor(0xfe00), (254, 0));
        assert_eq!(dev_major_minor(0x10301), (259, 1) /* 259 = 0x103 */);
    }
}
