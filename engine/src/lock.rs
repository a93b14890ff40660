//! Data dir lock: an exclusive `flock` on `LOCK`, held for as long as the log is open, so that
//! two logs (in this process or another) never open the same directory.
//!
//! A `flock` belongs to the open file description, and a child process forked by this one
//! shares every descriptor until its `exec` closes the close-on-exec ones. A log closed while
//! another thread of the process is between `fork` and `exec` (running `Command`, a C
//! embedder's `system()`...) is therefore still locked for that moment, and a reopen right
//! after `close` met `Locked` (seen under a CPU hog, where that moment stretches). So `Log::open`
//! retries a refused lock for up to [`LOCK_CONTENDED_WAIT_MAX`] before it answers `Locked`
//! ([`DirLock::acquire_waiting`]): a transient holder lets go; a log really open elsewhere
//! keeps it and is reported after that wait.

#![forbid(unsafe_code)]

use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;

use rustix::fs::{flock, FlockOperation};
use std::path::Path;

use crate::error::OpenError;
use crate::io::{set_mode, DATA_FILE_MODE};

/// File name of the lock inside a data dir.
pub const LOCK_FILE: &str = "LOCK";

/// The held lock; released when dropped (or when the process dies).
#[derive(Debug)]
pub(crate) struct DirLock {
    _file: File,
}

/// Longest `Log::open` waits for a refused directory lock to be let go (see the module docs).
pub const LOCK_CONTENDED_WAIT_MAX: std::time::Duration = std::time::Duration::from_secs(2);
/// Pause between two attempts at a refused lock.
const LOCK_RETRY_INTERVAL: std::time::Duration = std::time::Duration::from_millis(5);

impl DirLock {
    /// [`DirLock::acquire`], retried while refused for up to [`LOCK_CONTENDED_WAIT_MAX`]
    /// (without blocking the executor).
    pub(crate) async fn acquire_waiting(dir: &Path) -> Result<DirLock, OpenError> {
        let deadline = std::time::Instant::now() + LOCK_CONTENDED_WAIT_MAX;
        loop {
            match DirLock::acquire(dir) {
                Err(OpenError::Locked { .. }) if std::time::Instant::now() < deadline => {
                    glommio::timer::sleep(LOCK_RETRY_INTERVAL).await;
                }
                other => return other,
            }
        }
    }

    /// One attempt: the lock, or `Locked` at once if another open file description holds it.
    pub(crate) fn acquire(dir: &Path) -> Result<DirLock, OpenError> {
        let path = dir.join(LOCK_FILE);
        let existed = path.exists();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(DATA_FILE_MODE)
            .open(&path)
            .map_err(|source| OpenError::Io { path: path.clone(), source })?;
        if !existed {
            set_mode(&path, DATA_FILE_MODE)
                .map_err(|source| OpenError::Io { path: path.clone(), source })?;
        }
        match flock(&file, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => Ok(DirLock { _file: file }),
            Err(e) if e == rustix::io::Errno::WOULDBLOCK => {
                Err(OpenError::Locked { path: dir.to_path_buf() })
            }
            Err(e) => Err(OpenError::Io { path, source: e.into() }),
        }
    }
}
