//! Errors of the log, one enum per operation (style.md).
//!
//! An IO failure during a write or fdatasync latches the log: every later call answers
//! `Failed { reason }` until the log is reopened (fsync is never retried: design.md §11).
//! A full disk (ENOSPC, EDQUOT) is not a failure: appends answer `StorageFull` while the log
//! cannot make room for its next segment, and it resumes by itself once space is back
//! (spare.rs). Only a failed write or fdatasync of segment data latches, whatever its errno.

#![forbid(unsafe_code)]

use std::io;
use std::path::PathBuf;

use thiserror::Error;

use crate::batch::BatchError;
use crate::limits::ConfigError;
use crate::types::{LogIndex, Offset};

/// Where and how the log is damaged beyond what a torn last flush explains.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[error("corruption in {segment:?} at byte {position}: {kind}")]
pub struct Corruption {
    pub segment: PathBuf,
    pub position: u64,
    pub kind: CorruptionKind,
}

/// What is wrong at a `Corruption`'s position.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CorruptionKind {
    #[error("invalid batch ({0})")]
    InvalidBatch(BatchError),
    #[error("invalid padding")]
    InvalidPadding,
    #[error("invalid segment header")]
    InvalidSegmentHeader,
    #[error("batch out of sequence: {detail}")]
    Discontinuity { detail: String },
    #[error("invalid bytes followed by valid batches {distance} bytes further (a torn flush spans at most {flush_write_bytes_max})")]
    DamageBeforeValidData { distance: u64, flush_write_bytes_max: u64 },
    #[error("a batch read back by fetch fails validation ({0})")]
    ReadBack(BatchError),
}

/// `Log::open` failed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum OpenError {
    #[error("invalid log configuration: {0}")]
    Config(#[from] ConfigError),
    /// The directory's `LOCK` stayed held for `LOCK_CONTENDED_WAIT_MAX` (2 s): another open
    /// log, in this process or another, has the directory.
    #[error("data dir {path:?} is locked by another open log (LOCK held)")]
    Locked { path: PathBuf },
    #[error("data dir {path:?} does not support O_DIRECT ({source}); use a disk-backed filesystem such as ext4 or xfs, not tmpfs")]
    DirectIoUnsupported { path: PathBuf, source: io::Error },
    #[error("IO error on {path:?} while opening the log: {source}")]
    Io { path: PathBuf, source: io::Error },
    /// A new log (or a file it must create) needs space the disk does not have. A log whose
    /// files exist opens on a full disk.
    #[error("no space on the disk of {path:?} for a file the log must create: {source}")]
    StorageFull { path: PathBuf, source: io::Error },
    #[error(
        "log is corrupt: {0} (open with RecoveryMode::TruncateAtCorruption to truncate there)"
    )]
    Corruption(#[from] Corruption),
}

/// `Log::append` / `Log::append_stamped` refused a batch. Nothing was appended.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum AppendError {
    #[error("log failed after an IO error and must be reopened: {reason}")]
    Failed { reason: String },
    /// The disk is full: the log cannot make room for its next segment. Nothing is lost;
    /// the log retries by itself (`Log::wait_space`) and takes appends again once space is
    /// back (retention or the operator freed some).
    #[error("the disk is full; appends resume once space is freed: {reason}")]
    StorageFull { reason: String },
    #[error("log is closed")]
    Closed,
    #[error("{queued_bytes} bytes already wait for fdatasync (queued_bytes_max {limit}); wait for durability and retry")]
    Backpressure { queued_bytes: usize, limit: usize },
    #[error("batch of {size} bytes exceeds batch_size_max {limit}")]
    BatchTooLarge { size: usize, limit: usize },
    #[error("invalid append request: {detail}")]
    InvalidRequest { detail: &'static str },
    #[error("malformed batch: {0}")]
    Malformed(#[from] BatchError),
    #[error("batch does not continue the log: expected index {expected_index}, offset {expected_offset}, prev crc {expected_prev_crc:#010x}; got {found_index}, {found_offset}, {found_prev_crc:#010x}")]
    NotContiguous {
        expected_index: LogIndex,
        expected_offset: Offset,
        expected_prev_crc: u32,
        found_index: LogIndex,
        found_offset: Offset,
        found_prev_crc: u32,
    },
    #[error("batch term {found} is below the last term {last}")]
    TermRegression { last: u64, found: u64 },
}

/// Waiting for durability, `sync` or `close` failed.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum LogError {
    #[error("log failed after an IO error and must be reopened: {reason}")]
    Failed { reason: String },
    /// The disk is full and batches wait for a segment the log cannot create yet (`sync`,
    /// `close`: those batches are not durable; see `AppendError::StorageFull`).
    #[error("the disk is full; appended batches wait for space: {reason}")]
    StorageFull { reason: String },
    #[error("log is closed")]
    Closed,
    #[error("index {index} was truncated before it became durable")]
    Truncated { index: LogIndex },
}

/// `Log::fetch` / `Log::read_entries` failed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum FetchError {
    #[error("offset {offset} outside the log [{start}, {next})")]
    OffsetOutOfRange { offset: Offset, start: Offset, next: Offset },
    #[error("index {index} outside the log [{start}, {last}]")]
    IndexOutOfRange { index: LogIndex, start: LogIndex, last: LogIndex },
    #[error("read of a corrupt batch refused: {0}")]
    Corruption(#[from] Corruption),
    #[error("IO error reading {path:?}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("log failed after an IO error and must be reopened: {reason}")]
    Failed { reason: String },
    #[error("log is closed")]
    Closed,
}

/// `Log::truncate_suffix` failed.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum TruncateError {
    #[error("cannot truncate from {index}: the log starts at {start}")]
    BelowStart { index: LogIndex, start: LogIndex },
    /// Truncating the whole log is a reset, which needs a spare segment the full disk cannot
    /// hold: nothing was changed; retry once `Log::wait_space` returns.
    #[error("the disk is full; nothing was truncated: {reason}")]
    StorageFull { reason: String },
    #[error("log failed after an IO error and must be reopened: {reason}")]
    Failed { reason: String },
    #[error("log is closed")]
    Closed,
}

/// `Log::reset` failed.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ResetError {
    #[error("cannot reset to index 0: the first index of a log is 1")]
    ZeroIndex,
    /// The new first segment needs a spare the full disk cannot hold: nothing was changed;
    /// retry once `Log::wait_space` returns.
    #[error("the disk is full; the log was not reset: {reason}")]
    StorageFull { reason: String },
    #[error("log failed after an IO error and must be reopened: {reason}")]
    Failed { reason: String },
    #[error("log is closed")]
    Closed,
}

/// `Log::apply_retention` failed.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RetentionError {
    #[error("log failed after an IO error and must be reopened: {reason}")]
    Failed { reason: String },
    #[error("log is closed")]
    Closed,
}

/// `HardStateStore` failed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum HardStateError {
    #[error("IO error on hard state file {path:?}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("hard state file {path:?} does not support O_DIRECT ({source})")]
    DirectIoUnsupported { path: PathBuf, source: io::Error },
    /// Creating the hard state file needs space the disk does not have (an existing file is
    /// written in place and needs none).
    #[error("no space on the disk to create hard state file {path:?}: {source}")]
    StorageFull { path: PathBuf, source: io::Error },
    #[error("both slots of hard state file {path:?} are corrupt")]
    Corrupt { path: PathBuf },
    #[error("hard state store failed after an IO error and must be reopened: {reason}")]
    Failed { reason: String },
}

/// The reason a log latched into its failed state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Latched(pub String);

impl From<Latched> for AppendError {
    fn from(l: Latched) -> Self {
        AppendError::Failed { reason: l.0 }
    }
}
impl From<Latched> for LogError {
    fn from(l: Latched) -> Self {
        LogError::Failed { reason: l.0 }
    }
}
impl From<Latched> for FetchError {
    fn from(l: Latched) -> Self {
        FetchError::Failed { reason: l.0 }
    }
}
impl From<Latched> for TruncateError {
    fn from(l: Latched) -> Self {
        TruncateError::Failed { reason: l.0 }
    }
}
impl From<Latched> for ResetError {
    fn from(l: Latched) -> Self {
        ResetError::Failed { reason: l.0 }
    }
}
impl From<Latched> for RetentionError {
    fn from(l: Latched) -> Self {
        RetentionError::Failed { reason: l.0 }
    }
}
