//! Work directory: a temporary directory on the filesystem under test, removed on every exit
//! path (normal end, error, Ctrl-C), and the stop flag that Ctrl-C raises.
//!
//! Invariants: the directory is never on tmpfs (O_DIRECT and fdatasync would measure memory);
//! the first SIGINT/SIGTERM only raises the stop flag so scenarios end and clean up, a second
//! one terminates the process at once.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{bail, Context as _};
use serde::Serialize;

/// Filesystems on which a disk benchmark measures memory, not a device.
const MEMORY_FILESYSTEMS: [&str; 3] = ["tmpfs", "ramfs", "devtmpfs"];

/// The mount a path lives on, as /proc/self/mountinfo describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MountInfo {
    pub mount_point: PathBuf,
    pub filesystem: String,
    pub device: String,
}

/// A temporary directory for one benchmark run; removed on drop.
#[derive(Debug)]
pub struct WorkDir {
    dir: tempfile::TempDir,
    /// The mount the directory lives on.
    pub mount: MountInfo,
}

impl WorkDir {
    /// Creates `ringlog-bench-*` under `base`, refusing memory-backed filesystems.
    pub fn create(base: &Path) -> anyhow::Result<WorkDir> {
        std::fs::create_dir_all(base).with_context(|| format!("creating {}", base.display()))?;
        let base = base.canonicalize().with_context(|| format!("resolving {}", base.display()))?;
        let mount = mount_of(&base)?;
        if MEMORY_FILESYSTEMS.contains(&mount.filesystem.as_str()) {
            bail!(
                "{} is on {} ({}): a disk benchmark there measures memory; pass --dir on a \
                 disk-backed filesystem",
                base.display(),
                mount.filesystem,
                mount.mount_point.display()
            );
        }
        let dir = tempfile::Builder::new()
            .prefix("ringlog-bench-")
            .tempdir_in(&base)
            .with_context(|| format!("creating a temp dir in {}", base.display()))?;
        Ok(WorkDir { dir, mount })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// A fresh sub-directory for one scenario.
    pub fn scenario_dir(&self, name: &str) -> anyhow::Result<PathBuf> {
        let path = self.dir.path().join(name);
        std::fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(path)
    }
}

/// The mount (longest mount-point prefix) that holds `path`, from /proc/self/mountinfo.
pub fn mount_of(path: &Path) -> anyhow::Result<MountInfo> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").context("reading mountinfo")?;
    parse_mount_of(&text, path).with_context(|| format!("no mount holds {}", path.display()))
}

fn parse_mount_of(mountinfo: &str, path: &Path) -> Option<MountInfo> {
    let mut best: Option<MountInfo> = None;
    for line in mountinfo.lines() {
        // Format: id parent major:minor root mount_point options [optional...] - fstype source ...
        let fields: Vec<&str> = line.split_whitespace().collect();
        let Some(separator) = fields.iter().position(|f| *f == "-") else {
            continue;
        };
        let (Some(mount_point), Some(filesystem), Some(device)) =
            (fields.get(4), fields.get(separator + 1), fields.get(separator + 2))
        else {
            continue;
        };
        let mount_point = PathBuf::from(mount_point.replace("\\040", " "));
        if !path.starts_with(&mount_point) {
            continue;
        }
        let longer = best
            .as_ref()
            .is_none_or(|b| mount_point.as_os_str().len() >= b.mount_point.as_os_str().len());
        if longer {
            best = Some(MountInfo {
                mount_point,
                filesystem: (*filesystem).to_string(),
                device: (*device).to_string(),
            });
        }
    }
    best
}

/// The flag Ctrl-C (SIGINT) or SIGTERM raises; scenarios poll it and end early.
#[derive(Debug, Clone)]
pub struct StopFlag(Arc<AtomicBool>);

impl StopFlag {
    /// A flag nothing raises except [`StopFlag::raise`].
    pub fn new() -> StopFlag {
        StopFlag(Arc::new(AtomicBool::new(false)))
    }

    /// A flag raised by the first SIGINT/SIGTERM; a second signal terminates the process.
    pub fn on_signals() -> anyhow::Result<StopFlag> {
        let flag = Arc::new(AtomicBool::new(false));
        for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
            // Registered first: runs when the flag is already set, i.e. on a second signal.
            signal_hook::flag::register_conditional_shutdown(signal, 130, flag.clone())
                .context("installing the signal handler")?;
            signal_hook::flag::register(signal, flag.clone())
                .context("installing the signal handler")?;
        }
        Ok(StopFlag(flag))
    }

    /// Whether a stop was asked.
    pub fn is_raised(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }

    /// Asks every scenario to stop.
    pub fn raise(&self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

impl Default for StopFlag {
    fn default() -> Self {
        StopFlag::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
30 22 0:27 / /tmp rw,nosuid shared:5 - tmpfs tmpfs rw
31 22 0:28 / /work/my\\040disk rw - xfs /dev/nvme0n1 rw
";

    #[test]
    fn the_longest_mount_prefix_wins() {
        let root = parse_mount_of(MOUNTINFO, Path::new("/work/main")).unwrap();
        assert_eq!(root.filesystem, "ext4");
        let tmp = parse_mount_of(MOUNTINFO, Path::new("/tmp/x")).unwrap();
        assert_eq!(tmp.filesystem, "tmpfs");
        let spaced = parse_mount_of(MOUNTINFO, Path::new("/work/my disk/a")).unwrap();
        assert_eq!(spaced.device, "/dev/nvme0n1");
    }

    #[test]
    fn the_work_dir_is_removed_on_drop() {
        let work = WorkDir::create(Path::new(env!("CARGO_MANIFEST_DIR"))).unwrap();
        let path = work.path().to_path_buf();
        std::fs::write(work.scenario_dir("s").unwrap().join("f"), b"x").unwrap();
        drop(work);
        assert!(!path.exists());
    }
}
