//! Data dir lock: an exclusive `flock` on `LOCK`, held for as long as the log is open, so that
//! two logs (in this process or another) never open the same directory.

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

impl DirLock {
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
