//! ringlog-format: the ids and the record batch format shared by the engine, the wire
//! protocol and the client.
//!
//! - [`ids`]: [`PartitionId`] and [`Offset`] (the only definitions in the workspace), and the
//!   Raft core's `Term`, `LogIndex`, `NodeId`.
//! - [`batch`]: the batch header and its codec (`encode_batch`, [`decode_batch`],
//!   `peek_header`), its checksums (header crc, payload crc, the `prev_crc` chain, padding) and
//!   the [`RecordsBuilder`] of a data batch's records. Layout: docs/format.md#batch.
//!
//! Architecture invariant: no IO, no runtime, no platform-specific code; this crate builds on
//! any OS so that a client can build, check and decode batches without glommio or io_uring.
//! Its only ringlog dependency is `ringlog-raft` (pure, for the Raft ids).
//!
//! ```
//! use ringlog_format::batch::{decode_batch, encode_batch, BatchStamp, RecordsBuilder};
//! use ringlog_format::{LogIndex, Offset, Term};
//!
//! let mut builder = RecordsBuilder::new(1 << 20);
//! builder.push(b"hello").unwrap();
//! let records = builder.finish();
//! let stamp = BatchStamp {
//!     term: Term(0),
//!     index: LogIndex(0),
//!     base_offset: Offset(0),
//!     record_count: records.count,
//!     flags: 0,
//!     first_timestamp_ms: 0,
//!     max_timestamp_ms: 0,
//!     prev_crc: 0,
//! };
//! let batch = encode_batch(&stamp, &records.bytes);
//! let view = decode_batch(&batch, 1 << 20).unwrap();
//! assert_eq!(view.records().next(), Some(&b"hello"[..]));
//! ```

#![forbid(unsafe_code)]

pub mod batch;
pub mod ids;

pub use batch::{
    decode_batch, BatchError, BatchHeader, BatchView, Records, RecordsBuilder, CONTROL_MEMBERSHIP,
    CONTROL_NOOP, RECORD_COUNT_MAX,
};
pub use ids::{LogIndex, NodeId, Offset, PartitionId, Term};
