//! Small per-partition metadata files kept beside the log and the hard state:
//!
//! - `DAMAGED`: present while the replica is damaged (log or hard state lost or corrupt, or
//!   a data dir that appeared empty while the node is a configured member) and not yet
//!   repaired. Created (file + directory fsync) before the replica starts; removed
//!   (directory fsync) when the core reports `Repaired`. Its content is irrelevant.
//! - `membership_base-<start, 20 digits>`: the membership (with addresses) in effect just
//!   before log index `start`, written when the log is reset to a leader's start `start`
//!   (`Action::ResetLog`): `crc32 u32 LE | length u32 LE | MembershipRecord bytes`. Written
//!   to a temp file, fdatasynced, renamed, directory fsynced; a torn or missing file reads as
//!   absent. It is written *before* the reset is applied (which waits for the entry at
//!   `start`), so a crash in between finds a base for a start its log does not have yet:
//!   recovery takes the file with the greatest start at or below the log's start (the old
//!   log's base), and the others are removed once the reset is applied. `membership_base`
//!   (no start) is the file of earlier versions, used when no keyed one applies.
//!
//! These are tiny, rare, synchronous writes (std::fs) on the shard thread: a replica becomes
//! damaged or is reset a handful of times in its life.

#![forbid(unsafe_code)]

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::Path;

use crate::node::addresses::MembershipRecord;

pub(crate) const DAMAGED_FILE: &str = "DAMAGED";
/// The unkeyed base of earlier versions.
const MEMBERSHIP_BASE_FILE: &str = "membership_base";
const MEMBERSHIP_BASE_PREFIX: &str = "membership_base-";
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

fn membership_base_name(start: u64) -> String {
    format!("{MEMBERSHIP_BASE_PREFIX}{start:020}")
}

/// The starts of the keyed membership base files in `dir`, ascending.
fn membership_base_starts(dir: &Path) -> Vec<u64> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut starts: Vec<u64> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name();
            let digits = name.to_str()?.strip_prefix(MEMBERSHIP_BASE_PREFIX)?.to_string();
            (digits.len() == 20).then(|| digits.parse().ok()).flatten()
        })
        .collect();
    starts.sort_unstable();
    starts
}

/// Writes the membership base of a log starting at `start` durably.
pub(crate) fn store_membership_base(
    dir: &Path,
    start: u64,
    record: &MembershipRecord,
) -> io::Result<()> {
    let body = record.encode();
    let mut bytes = Vec::with_capacity(body.len() + 8);
    bytes.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
    bytes.extend_from_slice(&(body.len() as u32).to_le_bytes());
    bytes.extend_from_slice(&body);
    let tmp = dir.join(MEMBERSHIP_BASE_TMP);
    let mut file = File::create(&tmp)?;
    file.write_all(&bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, dir.join(membership_base_name(start)))?;
    sync_dir(dir)
}

/// Removes the bases of starts other than `start` (and the unkeyed one) once the log was
/// reset to `start`. Best effort: a leftover file is never chosen over `start`'s.
pub(crate) fn prune_membership_bases(dir: &Path, start: u64) -> io::Result<()> {
    for other in membership_base_starts(dir).into_iter().filter(|s| *s != start) {
        std::fs::remove_file(dir.join(membership_base_name(other)))?;
    }
    match std::fs::remove_file(dir.join(MEMBERSHIP_BASE_FILE)) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    sync_dir(dir)
}

/// The membership base of a log starting at `start`: the valid keyed file with the greatest
/// start at or below it (a base written for a reset not applied yet is above it), else the
/// unkeyed file of earlier versions.
pub(crate) fn load_membership_base(dir: &Path, start: u64) -> Option<MembershipRecord> {
    let keyed = membership_base_starts(dir).into_iter().rev().filter(|s| *s <= start);
    for base in keyed {
        if let Some(record) = read_membership_base(&dir.join(membership_base_name(base))) {
            return Some(record);
        }
    }
    read_membership_base(&dir.join(MEMBERSHIP_BASE_FILE))
}

fn read_membership_base(path: &Path) -> Option<MembershipRecord> {
    if std::fs::metadata(path).ok()?.len() > MEMBERSHIP_BASE_BYTES_MAX {
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

#[cfg(test)]
mod tests {
    use super::*;
    use ringlog_raft::{Membership, NodeId};

    fn record(voters: &[u32]) -> MembershipRecord {
        let voters = voters.iter().map(|v| NodeId(*v)).collect();
        MembershipRecord {
            membership: Membership { voters, learners: Vec::new() },
            addresses: Vec::new(),
        }
    }

    /// Issue #13 item 12: the base of a log reset is written before the reset is applied (it
    /// waits for the leader's entry at the new start); a crash in between restarts with the
    /// old log, which must keep its own base, not the new log's.
    #[test]
    fn a_base_written_for_a_reset_not_applied_yet_is_not_taken_for_the_old_log() {
        let dir = tempfile::tempdir().expect("tempdir");
        let dir = dir.path();
        store_membership_base(dir, 100, &record(&[1, 2, 3])).unwrap();
        // The reset to 500 is queued: its base is written, the log still starts at 100.
        store_membership_base(dir, 500, &record(&[1, 2])).unwrap();
        assert_eq!(load_membership_base(dir, 100), Some(record(&[1, 2, 3])));
        // Once applied, the log starts at 500 (and later, after retention, above it).
        assert_eq!(load_membership_base(dir, 500), Some(record(&[1, 2])));
        prune_membership_bases(dir, 500).unwrap();
        assert_eq!(membership_base_starts(dir), vec![500]);
        assert_eq!(load_membership_base(dir, 900), Some(record(&[1, 2])));
        assert_eq!(load_membership_base(dir, 100), None, "nothing for a start below every base");
    }

    #[test]
    fn a_torn_keyed_base_falls_back_to_the_one_below_and_the_unkeyed_file_is_still_read() {
        let dir = tempfile::tempdir().expect("tempdir");
        let dir = dir.path();
        // A base from an earlier version (no start in its name).
        store_membership_base(dir, 7, &record(&[4, 5, 6])).unwrap();
        std::fs::rename(dir.join(membership_base_name(7)), dir.join(MEMBERSHIP_BASE_FILE)).unwrap();
        assert_eq!(load_membership_base(dir, 50), Some(record(&[4, 5, 6])));
        store_membership_base(dir, 40, &record(&[1, 2, 3])).unwrap();
        store_membership_base(dir, 50, &record(&[1, 2])).unwrap();
        assert_eq!(load_membership_base(dir, 50), Some(record(&[1, 2])));
        // The newest file torn: the one below it applies.
        std::fs::write(dir.join(membership_base_name(50)), b"torn").unwrap();
        assert_eq!(load_membership_base(dir, 50), Some(record(&[1, 2, 3])));
    }
}
