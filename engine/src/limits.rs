//! Named limits of the engine and the validated `LogConfig`.
//!
//! Every queue, buffer and batch of the log has a bound here. Relations between the fixed
//! constants are checked at compile time; relations between configurable limits are checked by
//! `LogConfig::validate` before a log opens.

#![forbid(unsafe_code)]

use std::time::Duration;

use thiserror::Error;

use crate::batch::{BATCH_HEADER_SIZE, PADDING_HEADER_SIZE};

/// The IO block: every write is a whole number of blocks at a block-aligned position.
pub const BLOCK_SIZE: usize = 4096;
/// Smallest segment accepted (tests use it so that rolls happen often).
pub const SEGMENT_SIZE_MIN: u64 = 1 << 20;
/// Largest segment accepted: positions inside a segment are stored as `u32`.
pub const SEGMENT_SIZE_MAX: u64 = 1 << 31;
/// Default segment size (design.md §4).
pub const SEGMENT_SIZE_DEFAULT: u64 = 256 << 20;
/// Default bytes of batches per flush (one write + one fdatasync).
pub const FLUSH_BYTES_MAX_DEFAULT: usize = 1 << 20;
/// Default bytes appended but not yet durable before `append` answers `Backpressure`.
pub const QUEUED_BYTES_MAX_DEFAULT: usize = 16 << 20;
/// Default largest batch (header included).
pub const BATCH_SIZE_MAX_DEFAULT: usize = 1 << 20;
/// Default distance in bytes between two entries of a segment's sparse index.
pub const INDEX_INTERVAL_BYTES_DEFAULT: u32 = 64 << 10;
/// Default bytes of recent batches kept in memory for readers at the head.
pub const TAIL_CACHE_BYTES_MAX_DEFAULT: usize = 8 << 20;
/// Most bytes of control batches (Raft no-ops, membership changes) a fetch by offset returns in
/// front of its first data batch, whatever its `max_bytes` (`Log::fetch`): enough for ~900
/// no-ops in a row; beyond it the rest up to the data batch are left out of that reply.
pub const FETCH_CONTROL_PREFIX_BYTES_MAX: usize = 64 << 10;
/// Chunk used by the preallocator's zero-fill writes and by recovery's scanner reads.
pub const IO_CHUNK_BYTES: usize = 1 << 20;
/// Most entries of one sparse index file (bounds the allocation when loading one).
pub const INDEX_ENTRIES_MAX: usize = 1 << 20;
/// Most term-change points and control batches one index file may list.
pub const INDEX_POINTS_MAX: usize = 1 << 20;
/// Most records one batch may carry (a property of the batch format, ringlog-format).
pub use ringlog_format::batch::RECORD_COUNT_MAX;
/// Default flushes (write + fdatasync) in flight at once per log. Measured (tuning.md, "Flush
/// pipeline"): 2 raises the engine's fdatasyncs/s by ~40% over 1 with 256 or 1,024 appenders
/// of 1 KiB; 4 adds nothing over 2 and doubles recovery's torn reach.
pub const FLUSHES_IN_FLIGHT_DEFAULT: usize = 2;
/// Largest accepted `flushes_in_flight_max` (recovery's torn-tail reach grows with it).
pub const FLUSHES_IN_FLIGHT_LIMIT: usize = 8;

/// First wait before the log retries what a full disk refused (a spare's zero-fill, a roll's
/// index file); it doubles up to `SPACE_RETRY_BACKOFF_MAX`. Retention wakes it at once.
pub const SPACE_RETRY_BACKOFF_INITIAL: std::time::Duration = std::time::Duration::from_millis(50);
/// Longest wait between two retries on a full disk: how late, at most, a log notices space
/// freed by someone else (an operator deleting files).
pub const SPACE_RETRY_BACKOFF_MAX: std::time::Duration = std::time::Duration::from_secs(2);

const _: () = assert!(
    SPACE_RETRY_BACKOFF_INITIAL.as_millis() > 0
        && SPACE_RETRY_BACKOFF_INITIAL.as_millis() <= SPACE_RETRY_BACKOFF_MAX.as_millis()
);
const _: () = assert!(SEGMENT_SIZE_MIN % BLOCK_SIZE as u64 == 0);
const _: () = assert!(SEGMENT_SIZE_DEFAULT % BLOCK_SIZE as u64 == 0);
const _: () = assert!(SEGMENT_SIZE_MAX <= u32::MAX as u64 + 1);
const _: () = assert!(IO_CHUNK_BYTES % BLOCK_SIZE == 0);
const _: () = assert!(BATCH_HEADER_SIZE < BLOCK_SIZE && PADDING_HEADER_SIZE < BLOCK_SIZE);
const _: () = assert!(BATCH_SIZE_MAX_DEFAULT <= FLUSH_BYTES_MAX_DEFAULT);
const _: () = assert!(FLUSH_BYTES_MAX_DEFAULT <= QUEUED_BYTES_MAX_DEFAULT);
const _: () = assert!(FLUSHES_IN_FLIGHT_DEFAULT >= 1);
const _: () = assert!(FLUSHES_IN_FLIGHT_DEFAULT <= FLUSHES_IN_FLIGHT_LIMIT);
const _: () =
    assert!(FLUSHES_IN_FLIGHT_DEFAULT * FLUSH_BYTES_MAX_DEFAULT <= QUEUED_BYTES_MAX_DEFAULT);

/// What recovery does with corruption found in the middle of the log.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RecoveryMode {
    /// Refuse to open: `OpenError::Corruption` names the segment and position (default).
    #[default]
    Strict,
    /// Truncate the log at the first corrupt batch (everything after it is dropped and
    /// reported); the Raft layer then repairs the range from the leader.
    TruncateAtCorruption,
}

/// Configuration of one log. Build with `LogConfig::default()` and adjust fields.
#[derive(Clone, Debug)]
pub struct LogConfig {
    /// Size of every segment file, a multiple of `BLOCK_SIZE` in
    /// `SEGMENT_SIZE_MIN..=SEGMENT_SIZE_MAX`.
    pub segment_size_bytes: u64,
    /// Most bytes of batches coalesced into one write + fdatasync (>= `batch_size_max`).
    pub flush_bytes_max: usize,
    /// Most bytes appended and not yet durable; past it `append` fails with `Backpressure`.
    pub queued_bytes_max: usize,
    /// Largest batch, header included.
    pub batch_size_max: usize,
    /// Bytes between two sparse index entries of a segment.
    pub index_interval_bytes: u32,
    /// Bytes of recent batches kept in memory (durable ones are evicted past it).
    pub tail_cache_bytes_max: usize,
    /// Retention: keep at most this many bytes of sealed segments (None: unlimited).
    pub retention_bytes_max: Option<u64>,
    /// Retention: delete sealed segments whose newest batch timestamp is older than this.
    pub retention_age_max: Option<Duration>,
    /// What recovery does with corruption in the middle of the log.
    pub recovery_mode: RecoveryMode,
    /// Most flushes (write + fdatasync) in flight at once, in `1..=FLUSHES_IN_FLIGHT_LIMIT`;
    /// they complete in order (a batch is durable only when every flush before it is).
    pub flushes_in_flight_max: usize,
    /// Reuse segments deleted by retention as spares instead of zero-filling new ones.
    pub recycle_segments: bool,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            segment_size_bytes: SEGMENT_SIZE_DEFAULT,
            flush_bytes_max: FLUSH_BYTES_MAX_DEFAULT,
            queued_bytes_max: QUEUED_BYTES_MAX_DEFAULT,
            batch_size_max: BATCH_SIZE_MAX_DEFAULT,
            index_interval_bytes: INDEX_INTERVAL_BYTES_DEFAULT,
            tail_cache_bytes_max: TAIL_CACHE_BYTES_MAX_DEFAULT,
            retention_bytes_max: None,
            retention_age_max: None,
            recovery_mode: RecoveryMode::Strict,
            flushes_in_flight_max: FLUSHES_IN_FLIGHT_DEFAULT,
            recycle_segments: true,
        }
    }
}

/// A `LogConfig` whose limits contradict each other.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConfigError {
    #[error("segment_size_bytes {value} must be a multiple of {BLOCK_SIZE} in {SEGMENT_SIZE_MIN}..={SEGMENT_SIZE_MAX}")]
    SegmentSize { value: u64 },
    #[error(
        "batch_size_max {value} must be in {min}..={max} (a batch plus padding must fit a segment)"
    )]
    BatchSizeMax { value: usize, min: usize, max: usize },
    #[error("flush_bytes_max {value} must be >= batch_size_max {batch_size_max} and <= segment_size_bytes / 2")]
    FlushBytesMax { value: usize, batch_size_max: usize },
    #[error("queued_bytes_max {value} must be >= flush_bytes_max {flush_bytes_max}")]
    QueuedBytesMax { value: usize, flush_bytes_max: usize },
    #[error("index_interval_bytes {value} must be in {BLOCK_SIZE}..=segment_size_bytes")]
    IndexInterval { value: u32 },
    #[error("flushes_in_flight_max {value} must be in 1..={FLUSHES_IN_FLIGHT_LIMIT}")]
    FlushesInFlight { value: usize },
}

impl LogConfig {
    /// Checks every relation between the limits.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let seg = self.segment_size_bytes;
        if !(SEGMENT_SIZE_MIN..=SEGMENT_SIZE_MAX).contains(&seg) || seg % BLOCK_SIZE as u64 != 0 {
            return Err(ConfigError::SegmentSize { value: seg });
        }
        // A batch must fit a segment after the header block, with its padding (which may take
        // one extra block).
        let batch_max_allowed = (seg as usize - 3 * BLOCK_SIZE).min(u32::MAX as usize);
        let batch_min = BATCH_HEADER_SIZE;
        if self.batch_size_max < batch_min || self.batch_size_max > batch_max_allowed {
            return Err(ConfigError::BatchSizeMax {
                value: self.batch_size_max,
                min: batch_min,
                max: batch_max_allowed,
            });
        }
        if self.flush_bytes_max < self.batch_size_max || self.flush_bytes_max as u64 > seg / 2 {
            return Err(ConfigError::FlushBytesMax {
                value: self.flush_bytes_max,
                batch_size_max: self.batch_size_max,
            });
        }
        if self.queued_bytes_max < self.flush_bytes_max {
            return Err(ConfigError::QueuedBytesMax {
                value: self.queued_bytes_max,
                flush_bytes_max: self.flush_bytes_max,
            });
        }
        if (self.index_interval_bytes as usize) < BLOCK_SIZE
            || self.index_interval_bytes as u64 > seg
        {
            return Err(ConfigError::IndexInterval { value: self.index_interval_bytes });
        }
        if !(1..=FLUSHES_IN_FLIGHT_LIMIT).contains(&self.flushes_in_flight_max) {
            return Err(ConfigError::FlushesInFlight { value: self.flushes_in_flight_max });
        }
        Ok(())
    }

    /// Largest single write of one flush: the segment header block, the batches, and padding
    /// that may spill into one more block. Only the last flush can be torn, so recovery treats
    /// damage followed by valid data further than this as corruption, not a torn tail.
    pub fn flush_write_bytes_max(&self) -> u64 {
        let batches = self.flush_bytes_max.div_ceil(BLOCK_SIZE) * BLOCK_SIZE;
        (batches + 2 * BLOCK_SIZE) as u64
    }

    /// How far past the last valid item a crash can have left valid-looking data of flushes
    /// that were in flight (never acknowledged): `flushes_in_flight_max` whole flushes.
    /// Recovery treats damage followed by valid data further than this as corruption.
    pub fn torn_reach_bytes(&self) -> u64 {
        self.flush_write_bytes_max() * self.flushes_in_flight_max as u64
    }
}

/// Rounds `value` up to a multiple of `BLOCK_SIZE`.
pub fn block_ceil(value: u64) -> u64 {
    value.div_ceil(BLOCK_SIZE as u64) * BLOCK_SIZE as u64
}

/// Rounds `value` down to a multiple of `BLOCK_SIZE`.
pub fn block_floor(value: u64) -> u64 {
    value / BLOCK_SIZE as u64 * BLOCK_SIZE as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_config_is_valid() {
        LogConfig::default().validate().unwrap();
    }

    #[test]
    fn segment_size_not_a_block_multiple_is_rejected() {
        let config = LogConfig { segment_size_bytes: SEGMENT_SIZE_MIN + 1, ..LogConfig::default() };
        assert!(matches!(config.validate(), Err(ConfigError::SegmentSize { .. })));
    }

    #[test]
    fn flush_smaller_than_batch_is_rejected() {
        let config = LogConfig { flush_bytes_max: 4096, ..LogConfig::default() };
        assert!(matches!(config.validate(), Err(ConfigError::FlushBytesMax { .. })));
    }

    #[test]
    fn queue_smaller_than_flush_is_rejected() {
        let config = LogConfig { queued_bytes_max: 4096, ..LogConfig::default() };
        assert!(matches!(config.validate(), Err(ConfigError::QueuedBytesMax { .. })));
    }

    #[test]
    fn one_mib_segments_are_accepted_with_small_batches() {
        let config = LogConfig {
            segment_size_bytes: SEGMENT_SIZE_MIN,
            batch_size_max: 64 << 10,
            flush_bytes_max: 256 << 10,
            queued_bytes_max: 1 << 20,
            index_interval_bytes: 4096,
            ..LogConfig::default()
        };
        config.validate().unwrap();
    }
}
