//! ringlog-engine: one partition's durable commit log (segments, group commit, recovery).
//!
//! # API summary (the contract with shards, raft replicator, capi and bench)
//!
//! A [`Log`] is owned by one glommio executor (it is not `Send`; share it with `Rc`).
//!
//! ```text
//! Log::open(dir, LogConfig) -> Result<(Log, RecoveryReport), OpenError>            async
//! log.append(AppendRequest { term, records, record_count, flags, timestamps })
//!     -> Result<Appended { index, base_offset, record_count, batch: Bytes, durable: Durable }, AppendError>
//!     (synchronous stamp + enqueue; `appended.durable.await` -> Result<(), LogError>)
//! log.append_stamped(batch: Bytes) -> Result<Appended, AppendError>                follower path
//! log.wait_durable(index) / log.sync() / log.close()                                async
//! log.durable_index() durable_offset() next_offset() last_index() last_term() last_crc()
//!     term_at(index) start_index() start_offset() control_batches() membership_indices()
//!     stats() -> FlushStats { flushes, fdatasyncs, .., fdatasync_latency_us, batch_size_bytes }
//!     (FixedHistogram: cumulative_buckets() -> Vec<(upper, count)>, sum())  queued_bytes() failure()
//!     size_bytes() (bytes written into the segments: what retention by bytes limits)
//! log.fetch(offset, max_bytes, ReadBound::{Durable|Appended|Through(index)}) -> Vec<Bytes>   async
//! log.read_entries(from, through, max_bytes) -> Vec<Bytes>                          async
//! log.truncate_suffix(from) / log.reset(next_index, next_offset, prev_term)         async
//! log.apply_retention(now_unix_ms, deletable_below) -> RetentionReport              async
//! HardStateStore::open(dir) / load() -> HardState { term, vote } / store(term, vote)  async
//! ```
//!
//! Durability choices map onto one call: acks=none ignores `durable`; acks=leader awaits it;
//! acks=quorum is the replicated layer's business (it awaits `durable` as the leader's vote).
//! Tests arm failures through `Log::open_with_faults(dir, config, Arc<FaultInjector>)`.
//! `HardStateStore` lives in the same data dir as the log (file `hard_state`).
//!
//! Batches: [`RecordsBuilder`] builds the records of a data batch (`u32` length + value),
//! [`decode_batch`] validates raw batch bytes and iterates records. Limits live in
//! [`LogConfig`] and [`limits`]. Formats: `docs/format.md`; design: `ARCHITECTURE.md#engine`.

mod append_arena;
/// The batch format lives in the `ringlog-format` leaf crate; re-exported at its old path.
pub use ringlog_format::batch;
pub mod error;
mod flush_ring;
mod group_commit;
pub mod hard_state;
pub mod host;
pub mod io;
pub mod limits;
mod lock;
mod log;
pub mod notify;
pub mod placement;
pub mod recovery;
pub mod runtime;
pub mod runtime_mailbox;
pub mod segment;
pub mod segment_index;
mod segment_reader;
pub mod shard;
mod shard_partition;
mod shard_worker;
mod spare;
mod tail_cache;
pub mod types;

pub use batch::{
    decode_batch, BatchError, BatchHeader, BatchView, Records, RecordsBuilder, CONTROL_MEMBERSHIP,
    CONTROL_NOOP,
};
pub use error::{
    AppendError, Corruption, CorruptionKind, FetchError, HardStateError, LogError, OpenError,
    ResetError, RetentionError, TruncateError,
};
pub use group_commit::{
    FixedHistogram, FlushStats, BATCH_SIZE_BOUNDS_BYTES, FDATASYNC_LATENCY_BOUNDS_US,
};
pub use hard_state::{HardState, HardStateStore};
pub use io::FaultInjector;
pub use limits::{ConfigError, LogConfig, RecoveryMode};
pub use lock::LOCK_CONTENDED_WAIT_MAX;
pub use log::{AppendRequest, Appended, Log, ReadBound, RetentionReport};
pub use notify::Durable;
pub use recovery::RecoveryReport;
pub use shard::{
    AppendAck, AppendCompletion, Durability, Engine, EngineConfig, EngineError, EngineHandle,
    EngineStats, PartitionId, StartError,
};
pub use types::{LogIndex, NodeId, Offset, Term};
