//! The engine's only door to the disk: O_DIRECT files through glommio and directory syncs.
//!
//! Every write and fdatasync of the log goes through `DirectFile`, which consults the log's
//! `FaultInjector` first. In production the injector is idle (one relaxed atomic load per
//! call); tests arm it to prove that a failed write or fdatasync latches the log. The code
//! path is otherwise the same.
//!
//! Invariants: writes are whole `BLOCK_SIZE` multiples at block-aligned positions from
//! page-aligned `DmaBuffer`s; a short write is an error.

#![forbid(unsafe_code)]

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU32, AtomicU64, Ordering};

use glommio::io::{Directory, DmaBuffer, DmaFile, OpenOptions, ReadResult};
use glommio::GlommioError;

use crate::limits::BLOCK_SIZE;

/// Permission bits of every file the engine creates (segments, spares, index files, hard
/// state, the lock file), whatever the process umask: owner read/write only.
pub const DATA_FILE_MODE: u32 = 0o600;
/// Permission bits of every directory the engine creates (the data dir and its missing
/// parents, partition dirs), whatever the process umask: owner only.
pub const DATA_DIR_MODE: u32 = 0o700;

/// Sets `path`'s permission bits to exactly `mode` (the umask applies at creation only).
pub(crate) fn set_mode(path: &Path, mode: u32) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}

/// Makes the next writes or fdatasyncs of a log fail with EIO (or ENOSPC), or makes the disk
/// look full, on command (tests only).
#[derive(Debug, Default)]
pub struct FaultInjector {
    writes_to_fail: AtomicU32,
    /// errno of the armed write failures (0: EIO).
    write_errno: AtomicI32,
    syncs_to_fail: AtomicU32,
    /// fdatasyncs made through `DirectFile::sync` (recovery, hard state, index and spare files;
    /// not the flush ring's linked ones), a count tests read.
    file_syncs: AtomicU64,
    /// While set, every write that allocates disk space (`DirectFile::write_allocating_at`:
    /// spare zero-fill, index and hard-state file creation) fails with ENOSPC.
    disk_full: AtomicBool,
    /// The next renames of a segment into place (a roll, a reset) fail with ENOSPC, as a
    /// rename that needs a new directory block does on a full disk.
    renames_to_fail_no_space: AtomicU32,
}

impl FaultInjector {
    /// The next `count` writes fail with EIO.
    pub fn fail_writes(&self, count: u32) {
        self.write_errno.store(libc::EIO, Ordering::Relaxed);
        self.writes_to_fail.store(count, Ordering::Relaxed);
    }

    /// The next `count` writes fail with ENOSPC, as an O_DIRECT write into a preallocated
    /// file should never do: such a write is a failed write (it latches the log).
    pub fn fail_writes_no_space(&self, count: u32) {
        self.write_errno.store(libc::ENOSPC, Ordering::Relaxed);
        self.writes_to_fail.store(count, Ordering::Relaxed);
    }

    /// The disk is full from now on: every write that allocates space fails with ENOSPC
    /// until `free_disk`. Writes into allocated space (segments, the hard-state slots) and
    /// fdatasyncs are unaffected, as on a real full disk.
    pub fn fill_disk(&self) {
        self.disk_full.store(true, Ordering::Relaxed);
    }

    /// The next `count` renames of a segment into place fail with ENOSPC (see
    /// `Dir::rename_segment`).
    pub fn fail_renames_no_space(&self, count: u32) {
        self.renames_to_fail_no_space.store(count, Ordering::Relaxed);
    }

    /// Space is back (see `fill_disk`).
    pub fn free_disk(&self) {
        self.disk_full.store(false, Ordering::Relaxed);
    }

    /// The error of an armed write failure (consumes one), if any.
    fn write_error(&self) -> Option<io::Error> {
        if !FaultInjector::take(&self.writes_to_fail) {
            return None;
        }
        let errno = match self.write_errno.load(Ordering::Relaxed) {
            0 => libc::EIO,
            errno => errno,
        };
        Some(io::Error::from_raw_os_error(errno))
    }

    /// The next `count` fdatasyncs fail with EIO.
    pub fn fail_syncs(&self, count: u32) {
        self.syncs_to_fail.store(count, Ordering::Relaxed);
    }

    /// How many `DirectFile::sync` fdatasyncs were made (failed ones included): tests of the
    /// rule that recovery syncs what it accepts.
    pub fn file_syncs(&self) -> u64 {
        self.file_syncs.load(Ordering::Relaxed)
    }

    fn take(counter: &AtomicU32) -> bool {
        counter.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1)).is_ok()
    }
}

/// Turns a glommio error into the `io::Error` it carries.
pub(crate) fn to_io(error: GlommioError<()>) -> io::Error {
    match error {
        GlommioError::IoError(e) => e,
        GlommioError::EnhancedIoError { source, .. } => source,
        other => io::Error::other(other.to_string()),
    }
}

/// Why a file could not be opened.
#[derive(Debug)]
pub(crate) enum OpenFileError {
    /// The filesystem refuses O_DIRECT (EINVAL from open(2), e.g. tmpfs).
    DirectIoUnsupported(io::Error),
    Io(io::Error),
}

/// A file opened read+write with O_DIRECT.
#[derive(Debug)]
pub(crate) struct DirectFile {
    file: DmaFile,
    path: PathBuf,
}

impl DirectFile {
    /// Opens (creating if missing, mode `DATA_FILE_MODE`) `path` read+write with O_DIRECT.
    /// Never truncates.
    pub(crate) async fn open(path: &Path) -> Result<DirectFile, OpenFileError> {
        let existed = path.exists();
        let opened = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .mode(DATA_FILE_MODE)
            .dma_open(path)
            .await;
        match opened {
            Ok(file) => {
                if !existed {
                    // The umask may have removed bits from, or a permissive one kept, the
                    // mode asked at creation: set it exactly.
                    set_mode(path, DATA_FILE_MODE).map_err(OpenFileError::Io)?;
                }
                Ok(DirectFile { file, path: path.to_path_buf() })
            }
            Err(e) => {
                let e = to_io(e);
                if e.raw_os_error() == Some(libc::EINVAL) {
                    Err(OpenFileError::DirectIoUnsupported(e))
                } else {
                    Err(OpenFileError::Io(e))
                }
            }
        }
    }

    /// Opens `path` read+write with O_DIRECT if it exists (`None` if it does not).
    pub(crate) async fn open_existing(path: &Path) -> io::Result<Option<DirectFile>> {
        match OpenOptions::new().read(true).write(true).dma_open(path).await {
            Ok(file) => Ok(Some(DirectFile { file, path: path.to_path_buf() })),
            Err(e) => {
                let e = to_io(e);
                if e.kind() == io::ErrorKind::NotFound {
                    Ok(None)
                } else {
                    Err(e)
                }
            }
        }
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// The O_DIRECT descriptor, for the flush ring (`flush_ring.rs`), which keeps this file
    /// alive while its IO is in flight.
    pub(crate) fn raw_fd(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsRawFd;
        self.file.as_raw_fd()
    }

    /// The error the next write should fail with (consumes one armed write failure).
    pub(crate) fn write_fault(faults: &FaultInjector) -> Option<io::Error> {
        faults.write_error()
    }

    /// Whether the next fdatasync should fail (consumes one armed fdatasync failure).
    pub(crate) fn sync_fault(faults: &FaultInjector) -> bool {
        FaultInjector::take(&faults.syncs_to_fail)
    }

    /// A page-aligned buffer of `len` bytes (a multiple of `BLOCK_SIZE`), zero-filled.
    pub(crate) fn alloc(&self, len: usize) -> DmaBuffer {
        assert!(len % BLOCK_SIZE == 0 && len > 0);
        let mut buf = self.file.alloc_dma_buffer(len);
        buf.as_bytes_mut().fill(0);
        buf
    }

    /// Writes the whole buffer at `position`; a short write is an error.
    pub(crate) async fn write_at(
        &self,
        faults: &FaultInjector,
        buf: DmaBuffer,
        position: u64,
    ) -> io::Result<()> {
        let len = buf.len();
        assert!(len % BLOCK_SIZE == 0 && position % BLOCK_SIZE as u64 == 0);
        if let Some(e) = faults.write_error() {
            return Err(e);
        }
        let written = self.file.write_at(buf, position).await.map_err(to_io)?;
        if written != len {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                format!("short write: {written} of {len} bytes"),
            ));
        }
        Ok(())
    }

    /// `write_at` for a write that allocates disk space (a file being created or grown: index
    /// and hard-state files): fails with ENOSPC while the injector's disk is full.
    pub(crate) async fn write_allocating_at(
        &self,
        faults: &FaultInjector,
        buf: DmaBuffer,
        position: u64,
    ) -> io::Result<()> {
        if faults.disk_full.load(Ordering::Relaxed) {
            return Err(io::Error::from_raw_os_error(libc::ENOSPC));
        }
        self.write_at(faults, buf, position).await
    }

    /// Writes a shared buffer whole at `position` (the same buffer can be written again: the
    /// zero chunk of a spare's fill, which grows its file, so it allocates: ENOSPC while the
    /// injector's disk is full); a short write is an error.
    pub(crate) async fn write_shared_at(
        &self,
        faults: &FaultInjector,
        buf: std::rc::Rc<DmaBuffer>,
        position: u64,
    ) -> io::Result<()> {
        let len = buf.len();
        assert!(len % BLOCK_SIZE == 0 && position % BLOCK_SIZE as u64 == 0);
        if faults.disk_full.load(Ordering::Relaxed) {
            return Err(io::Error::from_raw_os_error(libc::ENOSPC));
        }
        if let Some(e) = faults.write_error() {
            return Err(e);
        }
        let written = self.file.write_rc_at(buf, position).await.map_err(to_io)?;
        if written != len {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                format!("short write: {written} of {len} bytes"),
            ));
        }
        Ok(())
    }

    /// fdatasync.
    pub(crate) async fn sync(&self, faults: &FaultInjector) -> io::Result<()> {
        faults.file_syncs.fetch_add(1, Ordering::Relaxed);
        if FaultInjector::take(&faults.syncs_to_fail) {
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        self.file.fdatasync().await.map_err(to_io)
    }

    /// Reads up to `len` bytes at `position` (any alignment); shorter at end of file.
    pub(crate) async fn read_at(&self, position: u64, len: usize) -> io::Result<ReadResult> {
        self.file.read_at(position, len).await.map_err(to_io)
    }

    pub(crate) async fn file_size(&self) -> io::Result<u64> {
        self.file.file_size().await.map_err(to_io)
    }

    pub(crate) async fn close(self) -> io::Result<()> {
        self.file.close().await.map_err(to_io)
    }
}

/// Makes this executor's ring submit the closes that glommio files dropped so far queued.
///
/// A glommio file dropped without `close().await` only queues its close on the executor's
/// main ring (glommio-0.9.0 `GlommioFile::drop` → `Reactor::async_close`), submitted with the
/// ring's next operation. Opening and closing `dir` through the same ring is such an
/// operation (queued behind them, so submitted after them); when it has completed, every
/// close queued before it was handed to the kernel. If `dir` cannot be opened, one reactor
/// cycle does the same.
pub(crate) async fn submit_dropped_closes(dir: &Path) {
    match Directory::open(dir).await {
        Ok(directory) => {
            let _ = directory.close().await;
        }
        Err(_) => crate::runtime::settle_dropped_files().await,
    }
}

/// `f_type` of ramfs (statfs(2); not exported by libc).
const RAMFS_MAGIC: i64 = 0x8584_58f6;

/// Name prefix of the probe files `probe_direct_io` writes and removes.
pub const DIRECT_IO_PROBE: &str = ".direct-io-probe";

/// Checks that `dir`'s filesystem accepts O_DIRECT, and makes glommio's per-device IO-poll
/// probe see real data.
///
/// glommio 0.9.0 silently disables O_DIRECT on tmpfs (and Linux >= 6.6 accepts O_DIRECT
/// opens there), so tmpfs/ramfs are refused by `statfs` type; any other filesystem must
/// accept an `O_DIRECT` open(2) (EINVAL means unsupported). It also caches, per block
/// device and process, whether the device supports IO polling, deciding with a read at offset
/// 0 of the first file it opens there: an empty file reads "successfully" and turns polling on
/// for a device without poll queues, after which every read fails with EOPNOTSUPP. The probe
/// file therefore holds one block of data before glommio opens it.
pub(crate) async fn probe_direct_io(dir: &Path) -> Result<(), OpenFileError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let fs = rustix::fs::statfs(dir).map_err(|e| OpenFileError::Io(e.into()))?;
    let fs_type = fs.f_type as i64;
    if fs_type == libc::TMPFS_MAGIC || fs_type == RAMFS_MAGIC {
        return Err(OpenFileError::DirectIoUnsupported(io::Error::other(
            "the filesystem is tmpfs/ramfs: memory, not a disk, and glommio silently disables \
             O_DIRECT there",
        )));
    }
    static PROBES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let unique = PROBES.fetch_add(1, Ordering::Relaxed);
    let path = dir.join(format!("{DIRECT_IO_PROBE}-{}-{unique}", std::process::id()));
    let direct = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(DATA_FILE_MODE)
        .custom_flags(libc::O_DIRECT)
        .open(&path);
    let result = match direct {
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            Err(OpenFileError::DirectIoUnsupported(e))
        }
        // A full disk may have no block for one more directory entry: nothing was created.
        Err(e) if is_no_space(&e) => return probe_read_existing(dir, e).await,
        Err(e) => Err(OpenFileError::Io(e)),
        Ok(_) => {
            let written =
                std::fs::OpenOptions::new().write(true).truncate(true).open(&path).and_then(
                    |mut f| {
                        f.write_all(&[0x5a; BLOCK_SIZE])?;
                        f.sync_data()
                    },
                );
            match written {
                // A full disk: the log's own files serve as glommio's first read instead.
                Err(e) if is_no_space(&e) => {
                    let _ = std::fs::remove_file(&path);
                    return probe_read_existing(dir, e).await;
                }
                Err(e) => Err(OpenFileError::Io(e)),
                Ok(()) => match DirectFile::open(&path).await {
                    Ok(file) => {
                        let read = file.read_at(0, BLOCK_SIZE).await.map(|r| r.len());
                        let _ = file.close().await;
                        match read {
                            Ok(BLOCK_SIZE) => Ok(()),
                            Ok(n) => Err(OpenFileError::Io(io::Error::other(format!(
                                "O_DIRECT probe read {n} of {BLOCK_SIZE} bytes"
                            )))),
                            Err(e) => Err(OpenFileError::Io(e)),
                        }
                    }
                    Err(e) => Err(e),
                },
            }
        }
    };
    let _ = std::fs::remove_file(&path);
    result
}

/// Whether `error` says the disk (or the owner's quota) is full: ENOSPC or EDQUOT. An
/// operating condition, not a failure: the log answers `StorageFull` and retries (spare.rs),
/// except for a write or fdatasync of segment data, which latches like any failed write.
pub fn is_no_space(error: &io::Error) -> bool {
    matches!(error.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT))
}

/// Most directory entries `probe_read_existing` looks at (a partition directory holds a few
/// segments, their index files, spares, the hard state and the lock).
const PROBE_ENTRIES_MAX: usize = 4096;

/// The probe on a full disk, where its file cannot be created (no block for one more
/// directory entry) or its block cannot be written. It opens an existing file of the
/// directory holding at least a block (a segment, the hard state, a spare) with O_DIRECT
/// through glommio instead — the O_DIRECT check (EINVAL) and glommio's poll probe, which must
/// see data, both happen on it. Without one (a new log on a full disk) the probe fails with
/// `no_space`.
async fn probe_read_existing(dir: &Path, no_space: io::Error) -> Result<(), OpenFileError> {
    let mut candidate = None;
    for entry in std::fs::read_dir(dir).map_err(OpenFileError::Io)?.take(PROBE_ENTRIES_MAX) {
        let entry = entry.map_err(OpenFileError::Io)?;
        if entry.file_name().to_string_lossy().starts_with(DIRECT_IO_PROBE) {
            continue;
        }
        let big_enough =
            entry.metadata().is_ok_and(|m| m.is_file() && m.len() >= BLOCK_SIZE as u64);
        if big_enough {
            candidate = Some(entry.path());
            break;
        }
    }
    let Some(path) = candidate else { return Err(OpenFileError::Io(no_space)) };
    let file = match DirectFile::open_existing(&path).await {
        Ok(Some(file)) => file,
        Ok(None) => return Err(OpenFileError::Io(no_space)),
        // The O_DIRECT open of an existing file checks what the probe's own open would have.
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            return Err(OpenFileError::DirectIoUnsupported(e))
        }
        Err(e) => return Err(OpenFileError::Io(e)),
    };
    let read = file.read_at(0, BLOCK_SIZE).await.map(|r| r.len());
    let _ = file.close().await;
    match read {
        Ok(BLOCK_SIZE) => Ok(()),
        Ok(n) => Err(OpenFileError::Io(io::Error::other(format!(
            "O_DIRECT probe read {n} of {BLOCK_SIZE} bytes of {path:?}"
        )))),
        Err(e) => Err(OpenFileError::Io(e)),
    }
}

/// Creates `path` and its missing parents, each with exactly `DATA_DIR_MODE` whatever the
/// umask, and returns the directories it created, outermost first (the caller makes each
/// one's name durable by syncing its parent: `Log::open`, `create_dir_all_durable`).
/// Recursion is bounded by the number of components of `path`.
pub(crate) fn create_dir_all(path: &Path) -> io::Result<Vec<PathBuf>> {
    use std::os::unix::fs::DirBuilderExt;
    if path.is_dir() {
        return Ok(Vec::new());
    }
    let mut created = match path.parent().filter(|p| !p.as_os_str().is_empty()) {
        Some(parent) => create_dir_all(parent)?,
        None => Vec::new(),
    };
    match std::fs::DirBuilder::new().mode(DATA_DIR_MODE).create(path) {
        Ok(()) => {
            set_mode(path, DATA_DIR_MODE)?;
            created.push(path.to_path_buf());
            Ok(created)
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && path.is_dir() => Ok(created),
        Err(e) => Err(e),
    }
}

/// `create_dir_all` for code outside the engine's executor (std::fs, blocking): every
/// directory it creates has its name made durable (its parent fsynced) before it returns,
/// so a crash cannot take back a directory anything was written into.
pub fn create_dir_all_durable(path: &Path) -> io::Result<()> {
    for dir in create_dir_all(path)? {
        if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::File::open(parent)?.sync_all()?;
        }
    }
    Ok(())
}

/// A directory whose entries are made durable by `sync`.
#[derive(Debug)]
pub(crate) struct DataDir {
    dir: Directory,
    path: PathBuf,
}

impl DataDir {
    pub(crate) async fn open(path: &Path) -> io::Result<DataDir> {
        let dir = Directory::open(path).await.map_err(to_io)?;
        Ok(DataDir { dir, path: path.to_path_buf() })
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    pub(crate) fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// fsyncs the directory so created, renamed and deleted names are durable.
    pub(crate) async fn sync(&self, faults: &FaultInjector) -> io::Result<()> {
        if FaultInjector::take(&faults.syncs_to_fail) {
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        self.dir.sync().await.map_err(to_io)
    }

    /// Renames `from` to `to` inside this directory (durable after `sync`).
    pub(crate) fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        std::fs::rename(self.join(from), self.join(to))
    }

    /// Renames a spare into place as a segment; an armed fault fails it with ENOSPC
    /// (`FaultInjector::fail_renames_no_space`).
    pub(crate) fn rename_segment(
        &self,
        faults: &FaultInjector,
        from: &str,
        to: &str,
    ) -> io::Result<()> {
        if FaultInjector::take(&faults.renames_to_fail_no_space) {
            return Err(io::Error::from_raw_os_error(libc::ENOSPC));
        }
        self.rename(from, to)
    }

    /// Removes `name` if it exists (durable after `sync`).
    pub(crate) fn remove(&self, name: &str) -> io::Result<()> {
        match std::fs::remove_file(self.join(name)) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            other => other,
        }
    }

    /// The names of the directory's regular entries.
    pub(crate) fn list(&self) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(&self.path)? {
            let entry = entry?;
            if let Ok(name) = entry.file_name().into_string() {
                names.push(name);
            }
        }
        names.sort();
        Ok(names)
    }
}
