//! Small per-partition metadata files kept beside the log and the hard state:
//!
//! - `DAMAGED`: present while the replica is damaged (log or hard state lost or corrupt, or
//!   a data dir that appeared empty while the node is a configured member) and not yet
//!   repaired. Created (file + directory fsync) before the replica starts; removed
//!   (directory fsync) when the core reports `Repaired`. Its content is irrelevant.
//! - `membership_base`: the membership (with addresses) in effect just before the log's
//!   first entry, written when the log is reset to a leader's start (`Action::ResetLog`):
//!   `crc32 u32 LE | length u32 LE | MembershipRecord bytes`. Written to a temp file,
//!   fdatasynced, renamed, directory fsynced; a torn or missing file reads as absent.
//!
//! These are tiny, rare, synchronous writes (std::fs) on the shard thread: a replica becomes
//! damaged or is reset a handful of times in its life.

#![forbid(unsafe_code)]

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::Path;

use crate::node::addresses::MembershipRecord;

pub(crate) const DAMAGED_FILE: &str = "DAMAGED";
const MEMBERSHIP_BASE_FILE: &str = "membership_base";
const MEMBERSHIP_BASE_TMP: &str = "membership_base.tmp";
/// Bound on the membership base file (a record of at most 64 members with addresses).
const MEMBERSHIP_BASE_BYTES_MAX: u64 = 64 * 1024;

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

pub(crate) fn is_damaged(dir: &Path) -> bool {
    dir.join(DAMAGED_FILE).exists()
}

/// Creates the damaged mark durably.
pub(crate) fn mark_damaged(dir: &Path) -> io::Result<()> {
    let file =
        OpenOptions::new().create(true).write(true).truncate(false).open(dir.join(DAMAGED_FILE))?;
    file.sync_all()?;
    sync_dir(dir)
}

/// Removes the damaged mark durably.
pub(crate) fn clear_damaged(dir: &Path) -> io::Result<()> {
    match std::fs::remove_file(dir.join(DAMAGED_FILE)) {
        Ok(()) => sync_dir(dir),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Writes the membership base durably.
pub(crate) fn store_membership_base(dir: &Path, record: &MembershipRecord) -> io::Result<()> {
    let body = record.encode();
    let mut bytes = Vec::with_capacity(body.len() + 8);
    bytes.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
    bytes.extend_from_slice(&(body.len() as u32).to_le_bytes());
    bytes.extend_from_slice(&body);
    let tmp = dir.join(MEMBERSHIP_BASE_TMP);
    let mut file = File::create(&tmp)?;
    file.write_all(&bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, dir.join(MEMBERSHIP_BASE_FILE))?;
    sync_dir(dir)
}

/// The membership base, if a valid one is stored.
pub(crate) fn load_membership_base(dir: &Path) -> Option<MembershipRecord> {
    let path = dir.join(MEMBERSHIP_BASE_FILE);
    if std::fs::metadata(&path).ok()?.len() > MEMBERSHIP_BASE_BYTES_MAX {
        return None;
    }
    let bytes = std::fs::read(path).ok()?;
    let crc = u32::from_le_bytes(bytes.get(0..4)?.try_into().ok()?);
    let len = u32::from_le_bytes(bytes.get(4..8)?.try_into().ok()?) as usize;
    let body = bytes.get(8..8usize.checked_add(len)?)?;
    if crc32fast::hash(body) != crc {
        return None;
    }
    MembershipRecord::decode(body).ok()
}
