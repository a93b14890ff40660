//! Shard partition: one partition's [`Log`] as its shard serves it — the adapter between the
//! shard's commands and the log's API.
//!
//! Appends of the shard API are local (no Raft): each batch is stamped with the log's last
//! term, so a log later driven by Raft never sees a term regression from this path.
//!
//! Durable appends are answered by one waiter task per partition, which sleeps on the log's
//! durable index and answers every append a flush made durable in one go — one wake-up per
//! fdatasync instead of one task per append.
//!
//! Invariants: the log is only touched on its shard's thread; waiting appends are kept in
//! index order and each is answered exactly once; `close` runs once, after every fetch and the
//! waiter have released the log (bounded by `CLOSE_WAIT_MAX`), flushes it and answers every
//! append still waiting: `Ok` if the flush made it durable, else the reason it is not.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::fmt;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use glommio::TaskQueueHandle;

use crate::batch::{decode_batch, Records};
use crate::error::{LogError, OpenError};
use crate::group_commit::FlushStats;
use crate::io::FaultInjector;
use crate::limits::LogConfig;
use crate::log::{AppendRequest, Log, ReadBound};
use crate::notify::Durable;
use crate::segment::now_unix_ms;
use crate::shard::{AppendAck, EngineError, PartitionId};
use crate::shard_worker::Completion;
use crate::types::Offset;

/// Longest wait at close for in-flight fetches to release the log.
const CLOSE_WAIT_MAX: Duration = Duration::from_secs(30);
/// Pause between two checks for in-flight fetches at close.
const CLOSE_WAIT_STEP: Duration = Duration::from_millis(1);

/// Whole batches read by a fetch.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Fetched {
    /// Raw batch bytes (checksums verified by the log), in offset order.
    pub batches: Vec<Bytes>,
    /// The offset after the last record returned (where the next fetch starts), or the
    /// requested offset when nothing was returned.
    pub next_offset: Offset,
    /// The partition's durable offset when the fetch was answered.
    pub durable_offset: Offset,
}

/// Counters of one partition.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PartitionStats {
    /// Appends accepted by the shard.
    pub appends: u64,
    /// Records in those appends.
    pub records: u64,
    /// The log's flush counters (flushes, fdatasyncs, bytes written, ...).
    pub flushes: u64,
    pub fdatasyncs: u64,
    pub bytes_written: u64,
    pub batches_flushed: u64,
    pub segments_rolled: u64,
    /// Spare segments zero-filled by the preallocator (each `segment_size_bytes` written).
    pub spares_filled: u64,
    /// Spare segments recycled from retention victims (one block written each).
    pub spares_recycled: u64,
    /// Offset after the last durable record.
    pub durable_offset: Offset,
    /// Offset the next record will take.
    pub next_offset: Offset,
    /// Bytes appended and not yet durable.
    pub queued_bytes: u64,
}

/// A partition's log on its shard.
pub struct Partition {
    shard: usize,
    id: PartitionId,
    /// `None` once closed.
    log: RefCell<Option<Rc<Log>>>,
    appends: Cell<u64>,
    records: Cell<u64>,
    /// Durable appends waiting for their fdatasync, in index order. One waiter task per
    /// partition answers them a whole flush at a time (not one task per append).
    waiting: RefCell<VecDeque<(AppendAck, Completion)>>,
    /// Whether the waiter task runs.
    waiter_running: Cell<bool>,
}

impl Partition {
    /// Opens (recovering) the partition's log in `dir`.
    pub(crate) async fn open(
        shard: usize,
        id: PartitionId,
        dir: PathBuf,
        config: LogConfig,
        faults: Option<Arc<FaultInjector>>,
    ) -> Result<Partition, OpenError> {
        let (log, report) = match faults {
            Some(faults) => Log::open_with_faults(&dir, config, faults).await?,
            None => Log::open(&dir, config).await?,
        };
        tracing::info!(partition = id.0, ?report, "partition opened");
        Ok(Partition {
            shard,
            id,
            log: RefCell::new(Some(Rc::new(log))),
            appends: Default::default(),
            records: Default::default(),
            waiting: RefCell::new(VecDeque::new()),
            waiter_running: Cell::new(false),
        })
    }

    pub(crate) fn log(&self) -> Result<Rc<Log>, EngineError> {
        self.log.borrow().clone().ok_or(EngineError::Closed)
    }

    /// Stamps and queues `records` as one batch; the returned future resolves when durable.
    pub(crate) fn append(&self, records: Records) -> Result<(AppendAck, Durable), EngineError> {
        let log = self.log()?;
        let count = records.count;
        let request = AppendRequest::data(log.last_term(), records, now_unix_ms());
        let appended = log.append(request)?;
        self.appends.set(self.appends.get() + 1);
        self.records.set(self.records.get() + u64::from(count));
        let ack = AppendAck {
            partition: self.id,
            index: appended.index,
            base_offset: appended.base_offset,
            record_count: appended.record_count,
            durable: false,
        };
        Ok((ack, appended.durable))
    }

    /// Appends `records` and answers `completion` once the batch is durable.
    pub(crate) fn append_durable(
        self: &Rc<Self>,
        records: Records,
        completion: Completion,
        queue: TaskQueueHandle,
    ) {
        let ack = match self.append(records) {
            // Dropping `Durable` does not cancel the append; the waiter tracks it by index.
            Ok((ack, _durable)) => ack,
            Err(error) => return completion.complete(Err(error)),
        };
        self.waiting.borrow_mut().push_back((ack, completion));
        if self.waiter_running.replace(true) {
            return;
        }
        let partition = self.clone();
        match glommio::spawn_local_into(async move { partition.answer_durable().await }, queue) {
            Ok(task) => {
                task.detach();
            }
            Err(error) => {
                self.waiter_running.set(false);
                let reason = format!("cannot spawn the durability waiter: {error}");
                self.fail_waiting(&reason);
            }
        }
    }

    /// The waiter task: answers waiting appends as the log's durable index passes them.
    async fn answer_durable(self: Rc<Self>) {
        loop {
            let Some(next) = self.waiting.borrow().front().map(|(ack, _)| ack.index) else {
                self.waiter_running.set(false);
                return;
            };
            let Ok(log) = self.log() else {
                // `close` took the log: it flushes it and answers every waiting append with
                // its true outcome (they may well be durable).
                self.waiter_running.set(false);
                return;
            };
            let waited = log.wait_durable(next).await;
            let durable_index = log.durable_index();
            drop(log);
            let mut answered = Vec::new();
            {
                let mut waiting = self.waiting.borrow_mut();
                while waiting.front().is_some_and(|(ack, _)| ack.index <= durable_index) {
                    answered.extend(waiting.pop_front());
                }
                if answered.is_empty() {
                    // Not durable and never will be (failed, truncated, closed): answer the
                    // first one with the reason; the loop re-checks the others.
                    answered.extend(waiting.pop_front());
                }
            }
            for (ack, completion) in answered {
                let result = if ack.index <= durable_index {
                    Ok(AppendAck { durable: true, ..ack })
                } else {
                    Err(match &waited {
                        Err(error) => EngineError::Durability(error.clone()),
                        Ok(()) => EngineError::Internal {
                            shard: self.shard,
                            reason: format!("{} not durable after its wait", ack.index),
                        },
                    })
                };
                completion.complete(result);
            }
        }
    }

    fn fail_waiting(&self, reason: &str) {
        let waiting: Vec<_> = self.waiting.borrow_mut().drain(..).collect();
        for (_, completion) in waiting {
            completion.complete(Err(EngineError::Internal {
                shard: self.shard,
                reason: reason.to_string(),
            }));
        }
    }

    /// Durable whole batches from the one holding `offset`, up to about `max_bytes`.
    pub(crate) async fn fetch(
        &self,
        offset: Offset,
        max_bytes: usize,
    ) -> Result<Fetched, EngineError> {
        let log = self.log()?;
        let batches = log.fetch(offset, max_bytes, ReadBound::Durable).await?;
        let mut next_offset = offset;
        if let Some(last) = batches.last() {
            let view = decode_batch(last, log.config().batch_size_max).map_err(|error| {
                EngineError::Internal {
                    shard: self.shard,
                    reason: format!("{}: fetched batch does not decode: {error}", self.id),
                }
            })?;
            next_offset = view.header().next_offset();
        }
        Ok(Fetched { batches, next_offset, durable_offset: log.durable_offset() })
    }

    /// The offset after the last durable record.
    pub(crate) fn durable_offset(&self) -> Result<Offset, EngineError> {
        Ok(self.log()?.durable_offset())
    }

    /// Counters; zeros after close.
    pub(crate) fn stats(&self) -> PartitionStats {
        let Ok(log) = self.log() else {
            return PartitionStats::default();
        };
        let flush: FlushStats = log.stats();
        PartitionStats {
            appends: self.appends.get(),
            records: self.records.get(),
            flushes: flush.flushes,
            fdatasyncs: flush.fdatasyncs,
            bytes_written: flush.bytes_written,
            batches_flushed: flush.batches_flushed,
            segments_rolled: flush.segments_rolled,
            spares_filled: flush.spares_filled,
            spares_recycled: flush.spares_recycled,
            durable_offset: log.durable_offset(),
            next_offset: log.next_offset(),
            queued_bytes: log.queued_bytes() as u64,
        }
    }

    /// Flushes and closes the log once in-flight fetches released it. Idempotent.
    pub(crate) async fn close(&self) -> Result<(), EngineError> {
        let Some(mut log) = self.log.borrow_mut().take() else {
            return Ok(());
        };
        let deadline = std::time::Instant::now() + CLOSE_WAIT_MAX;
        let log = loop {
            match Rc::try_unwrap(log) {
                Ok(log) => break log,
                Err(shared) if std::time::Instant::now() < deadline => {
                    log = shared;
                    glommio::timer::sleep(CLOSE_WAIT_STEP).await;
                }
                Err(_) => {
                    return Err(EngineError::Internal {
                        shard: self.shard,
                        reason: format!("{}: fetches still hold the log at close", self.id),
                    })
                }
            }
        };
        // Flush what is queued, then answer every waiting append with its true outcome: a
        // batch the flush made durable is acknowledged, whatever close reports after.
        let synced = log.sync().await;
        let durable_index = log.durable_index();
        let closed = log.close().await;
        let reason = synced.clone().err().or_else(|| closed.clone().err());
        let waiting: Vec<_> = self.waiting.borrow_mut().drain(..).collect();
        for (ack, completion) in waiting {
            let result = if ack.index <= durable_index {
                Ok(AppendAck { durable: true, ..ack })
            } else {
                Err(EngineError::Durability(reason.clone().unwrap_or(LogError::Closed)))
            };
            completion.complete(result);
        }
        closed.map_err(|error: LogError| EngineError::Durability(error))
    }
}

impl fmt::Debug for Partition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Partition")
            .field("shard", &self.shard)
            .field("id", &self.id)
            .field("waiting", &self.waiting.borrow().len())
            .finish()
    }
}

impl PartitionStats {
    /// Adds another partition's counters (offsets are summed as record counts).
    pub fn add(&mut self, other: &PartitionStats) {
        self.appends += other.appends;
        self.records += other.records;
        self.flushes += other.flushes;
        self.fdatasyncs += other.fdatasyncs;
        self.bytes_written += other.bytes_written;
        self.batches_flushed += other.batches_flushed;
        self.segments_rolled += other.segments_rolled;
        self.spares_filled += other.spares_filled;
        self.spares_recycled += other.spares_recycled;
        self.durable_offset = Offset(self.durable_offset.0 + other.durable_offset.0);
        self.next_offset = Offset(self.next_offset.0 + other.next_offset.0);
        self.queued_bytes += other.queued_bytes;
    }
}
