//! `Log`: one partition's durable commit log, owned by one glommio executor.
//!
//! `append` stamps a batch synchronously (index, offsets, chain crc, checksums), caches it and
//! queues it for the group-commit flusher (group_commit.rs); its `Durable` future resolves
//! once the flush holding it is fdatasynced. Reads are served from the tail cache or from the
//! segments through their sparse index. Truncation, reset and retention take the IO gate
//! exclusively (waiting until no flush is in flight), so they never interleave with a flush.
//!
//! Invariants (checked by `State::check`): `start_index <= durable_index + 1 <= next_index`;
//! the tail cache holds every batch above `durable_index`; segments are contiguous in index,
//! offset and chain crc; only the last segment is unsealed; after a failed write or fdatasync
//! (`failed`) nothing is written again.

#![forbid(unsafe_code)]

use std::cell::RefCell;
use std::collections::VecDeque;
use std::path::Path;
use std::rc::Rc;
use std::sync::Arc;

use bytes::{BufMut, Bytes};
use glommio::task::JoinHandle;

use crate::append_arena::AppendArena;
use crate::flush_ring::FlushRing;

use crate::batch::{
    check_records, decode_batch, stamp_header_with_payload_crc, BatchHeader, BatchStamp, Records,
    BATCH_HEADER_SIZE, CONTROL_MEMBERSHIP, FLAGS_KNOWN,
};
use crate::error::{
    AppendError, Corruption, CorruptionKind, FetchError, Latched, LogError, OpenError, ResetError,
    RetentionError, TruncateError,
};
use crate::group_commit::{spawn_flusher, FlushStats, IoGate, Pending};
use crate::io::{DataDir, FaultInjector};
use crate::limits::{
    block_ceil, LogConfig, BLOCK_SIZE, FETCH_CONTROL_PREFIX_BYTES_MAX, IO_CHUNK_BYTES,
    RECORD_COUNT_MAX,
};
use crate::lock::DirLock;
use crate::notify::{Durable, DurableSlot, Notify};
use crate::recovery::{open_segment_file, persist_index, recover, sealed_index, RecoveryReport};
use crate::segment::{
    encode_header, index_name, recycle_candidate_name, segment_name, Segment, SegmentMeta,
    RESET_PENDING, SPARE_READY,
};
use crate::segment_index::{ControlPoint, SegmentIndex};
use crate::segment_reader::{Item, SegmentReader};
use crate::spare::{spawn_preallocator, take_usable_spare, RecycleCandidate, RECYCLED_SPARES_MAX};
use crate::tail_cache::{CachedBatch, TailCache};
use crate::types::{LogIndex, Offset, Term};

/// A batch to append: the log stamps term, index, offsets and checksums.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppendRequest {
    pub term: Term,
    /// The payload: records (`u32` length + value, see `RecordsBuilder`) for a data batch,
    /// opaque bytes for a control batch.
    pub records: Bytes,
    /// Records in `records`; 0 exactly for control batches.
    pub record_count: u32,
    /// `CONTROL_NOOP`, `CONTROL_MEMBERSHIP` or 0.
    pub flags: u16,
    pub first_timestamp_ms: i64,
    pub max_timestamp_ms: i64,
}

impl AppendRequest {
    /// A data batch of `records` stamped with one timestamp.
    pub fn data(term: Term, records: Records, timestamp_ms: i64) -> Self {
        AppendRequest {
            term,
            records: records.bytes,
            record_count: records.count,
            flags: 0,
            first_timestamp_ms: timestamp_ms,
            max_timestamp_ms: timestamp_ms,
        }
    }

    /// A control batch (`CONTROL_NOOP` / `CONTROL_MEMBERSHIP`) with an opaque payload.
    pub fn control(term: Term, flags: u16, payload: Bytes, timestamp_ms: i64) -> Self {
        AppendRequest {
            term,
            records: payload,
            record_count: 0,
            flags,
            first_timestamp_ms: timestamp_ms,
            max_timestamp_ms: timestamp_ms,
        }
    }
}

/// An accepted append.
#[derive(Debug)]
pub struct Appended {
    pub index: LogIndex,
    pub base_offset: Offset,
    pub record_count: u32,
    /// The stamped batch, byte for byte what is written to disk and sent to followers.
    pub batch: Bytes,
    /// Resolves when the batch is durable.
    pub durable: Durable,
}

/// Upper bound of a read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ReadBound {
    /// Only durable batches (the default for a single-node log).
    #[default]
    Durable,
    /// Every appended batch, durable or not (the leader sending to followers).
    Appended,
    /// Batches with index <= this (the replicated layer passes its commit index).
    Through(LogIndex),
}

/// What `apply_retention` deleted.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RetentionReport {
    pub segments_deleted: usize,
    pub bytes_deleted: u64,
    pub start_index: LogIndex,
    pub start_offset: Offset,
}

/// One partition's log. Not `Send`: it lives on the executor that opened it (share with `Rc`).
#[derive(Debug)]
pub struct Log {
    pub(crate) inner: Rc<Inner>,
}

#[derive(Debug)]
pub(crate) struct Inner {
    pub config: LogConfig,
    pub dir: DataDir,
    pub faults: Arc<FaultInjector>,
    pub state: RefCell<State>,
    /// Work queued for the flusher, or closing.
    pub flush_notify: Notify,
    /// The spare is wanted (preallocator) or ready (flusher).
    pub spare_notify: Notify,
    /// A flush completed, the log failed, or it closed.
    pub durable_notify: Notify,
    /// Admits up to `flushes_in_flight_max` flushes, or one of truncate/reset/retention with
    /// no flush in flight: those never interleave with a flush.
    pub io_gate: IoGate,
    /// The executor's ring that every flush's linked write + fdatasync goes to.
    pub flush_ring: Rc<FlushRing>,
    pub tasks: RefCell<Vec<JoinHandle<()>>>,
    _lock: DirLock,
}

#[derive(Debug)]
pub(crate) struct State {
    pub segments: Vec<Segment>,
    pub start_index: LogIndex,
    pub start_offset: Offset,
    /// Term of the batch at `start_index - 1`.
    pub start_prev_term: Term,
    pub next_index: LogIndex,
    pub next_offset: Offset,
    pub last_term: Term,
    pub last_crc: u32,
    /// `(first index, term)` of every term change at or after `start_index`.
    pub terms: Vec<(LogIndex, Term)>,
    /// Control batches at or after `start_index`.
    pub controls: Vec<(LogIndex, u16)>,
    pub durable_index: LogIndex,
    pub durable_offset: Offset,
    pub queue: VecDeque<Pending>,
    /// Bytes appended and not yet durable (queued or in the flush in flight).
    pub queued_bytes: usize,
    pub cache: TailCache,
    pub failed: Option<String>,
    /// Why the log takes no appends now: the disk is full (spare.rs); cleared by the next
    /// spare made or the next roll done. Not a failure: nothing is latched.
    pub no_space: Option<String>,
    /// The flusher waits for space to roll: queued batches stay queued (not durable) until
    /// then; `sync` and `close` answer `StorageFull` instead of waiting.
    pub roll_blocked: bool,
    pub closed: bool,
    pub spare_ready: bool,
    /// The ready spare's stale bound if it is recycled (`spare.rs`).
    pub spare_recycled: Option<LogIndex>,
    /// Retention victims kept for recycling (at most `RECYCLED_SPARES_MAX`).
    pub recycle_candidates: Vec<RecycleCandidate>,
    pub stats: FlushStats,
    /// Where `append` stamps (and `append_stamped` copies) batches, in runs that flushes
    /// write without a copy (`append_arena.rs`); its runs describe `queue`.
    pub arena: AppendArena,
}

impl State {
    pub(crate) fn last_index(&self) -> LogIndex {
        LogIndex(self.next_index.0 - 1)
    }

    pub(crate) fn term_at(&self, index: LogIndex) -> Option<Term> {
        if index.0 + 1 < self.start_index.0 || index >= self.next_index {
            return None;
        }
        if index.0 + 1 == self.start_index.0 {
            return Some(self.start_prev_term);
        }
        let at = self.terms.partition_point(|(first, _)| *first <= index);
        Some(at.checked_sub(1).map_or(self.start_prev_term, |i| self.terms[i].1))
    }

    /// Checks the invariants of the module doc (a broken one is a bug: crash).
    pub(crate) fn check(&self) {
        assert!(self.start_index <= self.durable_index.next());
        assert!(self.durable_index < self.next_index);
        assert!(self.durable_offset <= self.next_offset);
        if let Some(last) = self.segments.last() {
            assert!(last.next_index <= self.next_index);
        }
        for pair in self.segments.windows(2) {
            assert!(pair[0].sealed, "only the last segment may be unsealed");
            assert_eq!(pair[0].next_index, pair[1].base_index);
            assert_eq!(pair[0].next_offset, pair[1].base_offset);
        }
    }

    /// Resolves and drops every queued batch at or above `from`.
    fn drop_queue_from(&mut self, from: LogIndex) {
        while self.queue.back().is_some_and(|p| p.header.index() >= from) {
            let pending = self.queue.pop_back().expect("checked");
            self.queued_bytes -= pending.bytes.len();
            self.arena.dropped_back(pending.bytes.len());
            pending.slot.resolve(Err(LogError::Truncated { index: pending.header.index() }));
        }
    }

    /// Forgets everything from `from` on, in memory; the batch at `from` is `cut`.
    fn truncate_memory(&mut self, from: LogIndex, cut_offset: Offset, cut_prev_crc: u32) {
        let term_before = self.term_at(LogIndex(from.0 - 1)).unwrap_or(self.start_prev_term);
        self.next_index = from;
        self.next_offset = cut_offset;
        self.last_crc = cut_prev_crc;
        self.last_term = term_before;
        self.terms.retain(|(first, _)| *first < from);
        self.controls.retain(|(index, _)| *index < from);
        self.cache.truncate_from(from);
        if self.durable_index >= from {
            self.durable_index = LogIndex(from.0 - 1);
            self.durable_offset = cut_offset;
        }
    }
}

impl Inner {
    /// Latches the failed state: every later call answers `Failed`, nothing more is written.
    pub(crate) fn latch(&self, reason: String) {
        tracing::error!(dir = ?self.dir.path(), %reason, "log failed; it must be reopened");
        let mut st = self.state.borrow_mut();
        if st.failed.is_none() {
            st.failed = Some(reason.clone());
        }
        let error = LogError::Failed { reason };
        for pending in st.queue.drain(..) {
            pending.slot.resolve(Err(error.clone()));
        }
        st.arena.clear();
        drop(st);
        self.flush_notify.notify_all();
        self.spare_notify.notify_all();
        self.durable_notify.notify_all();
    }

    /// Marks the log short of space (appends answer `StorageFull`) and wakes whoever waits
    /// for a spare or for durability, so that nothing waits on a spare that cannot come.
    pub(crate) fn enter_no_space(&self, reason: String) {
        let mut st = self.state.borrow_mut();
        if st.no_space.is_none() {
            tracing::warn!(dir = ?self.dir.path(), %reason, "disk full: appends answer StorageFull until space is back");
            st.stats.no_space_events += 1;
        }
        st.no_space = Some(reason);
        drop(st);
        self.spare_notify.notify_all();
        self.durable_notify.notify_all();
    }
}

fn closed_or_failed<E: From<Latched>>(st: &State, closed: E) -> Result<(), E> {
    if let Some(reason) = &st.failed {
        return Err(Latched(reason.clone()).into());
    }
    if st.closed {
        return Err(closed);
    }
    Ok(())
}

/// Where a read starts.
#[derive(Clone, Copy, Debug)]
enum Want {
    Offset(Offset),
    Index(LogIndex),
}

impl Want {
    fn skips(&self, header: &BatchHeader) -> bool {
        match *self {
            Want::Index(index) => header.index() < index,
            Want::Offset(offset) => {
                let count = header.record_count();
                header.next_offset() <= offset && !(count == 0 && header.base_offset() == offset)
            }
        }
    }
}

/// What a read keeps of the batches it walks, in log order.
///
/// - A fetch by offset (`Log::fetch`, what clients read; docs/format.md#fetch) must make
///   progress: control batches (Raft no-ops, membership: no records, no offsets of their own)
///   never stand in for data, and `max_bytes` never leaves a reader stuck in front of them.
///   It keeps the control batches in front of the first data batch at or after the offset
///   while they total at most `FETCH_CONTROL_PREFIX_BYTES_MAX` (whatever `max_bytes`; past
///   it, it skips the rest of them), always keeps that first data batch (whole, even past
///   `max_bytes`), then keeps batches while the total fits in `max_bytes`, and drops the
///   control batches after its last data batch. So a reply holds a data batch whenever one is
///   readable at or after the offset, its last batch is a data batch (its end is the next
///   offset to fetch, past everything returned), and a log that ends in control batches
///   reads as empty there, not as the same control batches again and again. Size: at most
///   `max(max_bytes, FETCH_CONTROL_PREFIX_BYTES_MAX + one data batch)`.
/// - A read by index (`Log::read_entries`, what a leader sends) keeps every batch: at least
///   one, then while the total fits.
#[derive(Debug)]
struct Gather {
    by_offset: bool,
    max_bytes: usize,
    total: usize,
    out: Vec<Bytes>,
    /// `out.len()` right after the last data batch kept (`None`: none kept yet).
    data_through: Option<usize>,
    /// A control batch before the first data batch did not fit in
    /// `FETCH_CONTROL_PREFIX_BYTES_MAX`: skip the rest of them.
    skipping_controls: bool,
}

/// Whether a read keeps the batch it is offered, skips it, or is complete.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Verdict {
    Keep,
    Skip,
    Stop,
}

impl Gather {
    fn new(want: Want, max_bytes: usize) -> Gather {
        Gather {
            by_offset: matches!(want, Want::Offset(_)),
            max_bytes,
            total: 0,
            out: Vec::new(),
            data_through: None,
            skipping_controls: false,
        }
    }

    /// The verdict on the next batch (`len` bytes, `record_count` records); the caller
    /// `keep`s it when told to.
    fn offer(&mut self, record_count: u32, len: usize) -> Verdict {
        let fits = self.total.saturating_add(len) <= self.max_bytes;
        if !self.by_offset {
            return if self.out.is_empty() || fits { Verdict::Keep } else { Verdict::Stop };
        }
        match (self.data_through.is_some(), record_count == 0) {
            (true, _) => match fits {
                true => Verdict::Keep,
                false => Verdict::Stop,
            },
            // The first data batch: whole, even past `max_bytes`.
            (false, false) => Verdict::Keep,
            (false, true) => {
                let prefix_fits = self.total + len <= FETCH_CONTROL_PREFIX_BYTES_MAX;
                if prefix_fits && !self.skipping_controls {
                    Verdict::Keep
                } else {
                    self.skipping_controls = true;
                    Verdict::Skip
                }
            }
        }
    }

    fn keep(&mut self, record_count: u32, bytes: Bytes) {
        self.total += bytes.len();
        self.out.push(bytes);
        if record_count > 0 {
            self.data_through = Some(self.out.len());
        }
    }

    fn finish(mut self) -> Vec<Bytes> {
        if self.by_offset {
            self.out.truncate(self.data_through.unwrap_or(0));
        }
        self.out
    }
}

/// Longest `close` waits for detached IO tasks to let go of the log (and its lock). An
/// fdatasync in flight on a busy disk can take seconds (2 s was once too short in CI while
/// another test ran mkfs on a loop device: the reopen right after `close` found the
/// directory still locked); the wait ends as soon as the last task lets go.
const CLOSE_RELEASE_WAIT_MAX: std::time::Duration = std::time::Duration::from_secs(10);

impl Log {
    /// Opens (creating if needed) the log in `dir`: locks it, recovers it, and starts its
    /// flusher and preallocator tasks on the current executor.
    pub async fn open(
        dir: impl AsRef<Path>,
        config: LogConfig,
    ) -> Result<(Log, RecoveryReport), OpenError> {
        Self::open_with_faults(dir, config, Arc::new(FaultInjector::default())).await
    }

    /// `open` with a fault injector armed by tests (the code path is otherwise the same).
    ///
    /// On a full disk a log whose files exist opens (recovery writes only into allocated
    /// space; an index file it cannot persist is rebuilt again next time) and answers appends
    /// `StorageFull` until space is back; a file it must create without room for it is
    /// `OpenError::StorageFull`.
    pub async fn open_with_faults(
        dir: impl AsRef<Path>,
        config: LogConfig,
        faults: Arc<FaultInjector>,
    ) -> Result<(Log, RecoveryReport), OpenError> {
        match Self::open_inner(dir.as_ref(), config, faults).await {
            Err(OpenError::Io { path, source }) if crate::io::is_no_space(&source) => {
                Err(OpenError::StorageFull { path, source })
            }
            other => other,
        }
    }

    async fn open_inner(
        dir: &Path,
        config: LogConfig,
        faults: Arc<FaultInjector>,
    ) -> Result<(Log, RecoveryReport), OpenError> {
        config.validate()?;
        let path = dir.to_path_buf();
        let created = crate::io::create_dir_all(&path)
            .map_err(|source| OpenError::Io { path: path.clone(), source })?;
        // Every created directory's name must be durable before anything is acknowledged in
        // it: the parent of each one, not only the log's own parent, is synced.
        for parent in created.iter().filter_map(|dir| dir.parent()) {
            let parent_dir = DataDir::open(parent)
                .await
                .map_err(|source| OpenError::Io { path: parent.to_path_buf(), source })?;
            parent_dir
                .sync(&faults)
                .await
                .map_err(|source| OpenError::Io { path: parent.to_path_buf(), source })?;
        }
        let lock = DirLock::acquire_waiting(&path).await?;
        probe_direct_io(&path).await?;
        let data_dir = DataDir::open(&path)
            .await
            .map_err(|source| OpenError::Io { path: path.clone(), source })?;
        let recovered = recover(&data_dir, &config, &faults).await?;
        let mut state = build_state(&config, recovered.segments, recovered.report.spare_ready);
        state.spare_recycled = recovered.spare_recycled;
        state.recycle_candidates = recovered
            .recycle_candidates
            .into_iter()
            .map(|stale_index_end| RecycleCandidate { stale_index_end, file: None })
            .collect();
        state.check();
        let io_gate = IoGate::new(config.flushes_in_flight_max);
        let flush_ring = FlushRing::current().map_err(|source| OpenError::Io {
            path: path.clone(),
            source: std::io::Error::new(
                source.kind(),
                format!("creating the flush io_uring (io_uring_setup) failed: {source}"),
            ),
        })?;
        let inner = Rc::new(Inner {
            config,
            dir: data_dir,
            faults,
            state: RefCell::new(state),
            flush_notify: Notify::default(),
            spare_notify: Notify::default(),
            durable_notify: Notify::default(),
            io_gate,
            flush_ring,
            tasks: RefCell::new(Vec::new()),
            _lock: lock,
        });
        let flusher = spawn_flusher(inner.clone());
        let preallocator = spawn_preallocator(inner.clone());
        inner.tasks.borrow_mut().extend([flusher, preallocator]);
        Ok((Log { inner }, recovered.report))
    }

    /// Appends a batch: stamps it now and queues it for the next flush.
    pub fn append(&self, request: AppendRequest) -> Result<Appended, AppendError> {
        let mut st = self.inner.state.borrow_mut();
        closed_or_failed(&st, AppendError::Closed)?;
        check_space(&st)?;
        let config = &self.inner.config;
        let size = BATCH_HEADER_SIZE + request.records.len();
        if size > config.batch_size_max {
            return Err(AppendError::BatchTooLarge { size, limit: config.batch_size_max });
        }
        if request.flags & !FLAGS_KNOWN != 0 {
            return Err(AppendError::InvalidRequest { detail: "unknown flags" });
        }
        let control = request.flags != 0;
        if control && request.record_count != 0 {
            return Err(AppendError::InvalidRequest { detail: "a control batch has no records" });
        }
        if !control && !(1..=RECORD_COUNT_MAX).contains(&request.record_count) {
            return Err(AppendError::InvalidRequest { detail: "record_count out of range" });
        }
        if !control {
            check_records(&request.records, request.record_count)?;
        }
        if request.term < st.last_term {
            return Err(AppendError::TermRegression {
                last: st.last_term.0,
                found: request.term.0,
            });
        }
        check_backpressure(&st, size, config)?;
        let stamp = BatchStamp {
            term: request.term,
            index: st.next_index,
            base_offset: st.next_offset,
            record_count: request.record_count,
            flags: request.flags,
            first_timestamp_ms: request.first_timestamp_ms,
            max_timestamp_ms: request.max_timestamp_ms,
            prev_crc: st.last_crc,
        };
        // Hashed where the payload is warm (not re-read from the arena right after the copy),
        // and the header stamped before `split` (whose atomic refcount increment waits for
        // the copy's stores into the arena to drain).
        let payload_crc = crc32fast::hash(&request.records);
        let chunk = st.arena.room_for(size, config.flush_bytes_max);
        debug_assert!(chunk.is_empty(), "the arena holds no unsplit batch");
        chunk.put_bytes(0, BATCH_HEADER_SIZE);
        chunk.extend_from_slice(&request.records);
        stamp_header_with_payload_crc(chunk, &stamp, payload_crc);
        let batch = chunk.split().freeze();
        st.arena.batch_added(size);
        let header = *crate::batch::header_of(&batch);
        Ok(self.enqueue(&mut st, batch, header))
    }

    /// Appends a batch stamped elsewhere (the follower path): verifies its checksums and that
    /// it continues this log (index, offset, chain crc), then appends its bytes unchanged.
    /// The first batch after a reset (or of an empty log) may chain to any crc.
    pub fn append_stamped(&self, batch: Bytes) -> Result<Appended, AppendError> {
        let mut st = self.inner.state.borrow_mut();
        closed_or_failed(&st, AppendError::Closed)?;
        check_space(&st)?;
        let config = &self.inner.config;
        if batch.len() > config.batch_size_max {
            return Err(AppendError::BatchTooLarge {
                size: batch.len(),
                limit: config.batch_size_max,
            });
        }
        let header = *decode_batch(&batch, config.batch_size_max)?.header();
        if header.length() != batch.len() {
            return Err(AppendError::InvalidRequest { detail: "bytes after the batch's length" });
        }
        let chain_free = st.next_index == st.start_index;
        if header.index() != st.next_index
            || header.base_offset() != st.next_offset
            || (!chain_free && header.prev_crc.get() != st.last_crc)
        {
            return Err(AppendError::NotContiguous {
                expected_index: st.next_index,
                expected_offset: st.next_offset,
                expected_prev_crc: st.last_crc,
                found_index: header.index(),
                found_offset: header.base_offset(),
                found_prev_crc: header.prev_crc.get(),
            });
        }
        if header.term() < st.last_term {
            return Err(AppendError::TermRegression {
                last: st.last_term.0,
                found: header.term().0,
            });
        }
        check_backpressure(&st, batch.len(), config)?;
        // Into the arena, so that its flush is written from there (one copy, here, instead
        // of one into the flush's buffer).
        let size = batch.len();
        let chunk = st.arena.room_for(size, config.flush_bytes_max);
        chunk.extend_from_slice(&batch);
        let batch = chunk.split().freeze();
        st.arena.batch_added(size);
        Ok(self.enqueue(&mut st, batch, header))
    }

    fn enqueue(&self, st: &mut State, batch: Bytes, header: BatchHeader) -> Appended {
        let index = header.index();
        if header.term() != st.last_term {
            st.terms.push((index, header.term()));
        }
        if header.is_control() {
            st.controls.push((index, header.flags.get()));
        }
        st.next_index = index.next();
        st.next_offset = header.next_offset();
        st.last_crc = header.header_crc.get();
        st.last_term = header.term();
        st.cache.push(CachedBatch {
            index,
            base_offset: header.base_offset(),
            record_count: header.record_count(),
            bytes: batch.clone(),
        });
        st.stats.batch_size_bytes.record(batch.len() as u64);
        let slot = Rc::new(DurableSlot::default());
        st.queued_bytes += batch.len();
        st.queue.push_back(Pending { header, bytes: batch.clone(), slot: slot.clone() });
        self.inner.flush_notify.notify_all();
        Appended {
            index,
            base_offset: header.base_offset(),
            record_count: header.record_count(),
            batch,
            durable: Durable { slot },
        }
    }

    /// Resolves once every batch through `index` is durable (or the log fails or closes).
    /// After a truncation it waits for the batch that now has that index.
    pub async fn wait_durable(&self, index: LogIndex) -> Result<(), LogError> {
        loop {
            let epoch = self.inner.durable_notify.epoch();
            {
                let st = self.inner.state.borrow();
                if let Some(reason) = &st.failed {
                    return Err(LogError::Failed { reason: reason.clone() });
                }
                if st.durable_index >= index {
                    return Ok(());
                }
                if index >= st.next_index {
                    return Err(LogError::Truncated { index });
                }
                if st.closed && st.queue.is_empty() {
                    return Err(LogError::Closed);
                }
            }
            self.inner.durable_notify.wait(epoch).await;
        }
    }

    /// Waits until everything appended so far is durable; `StorageFull` if batches wait for
    /// a segment the full disk cannot hold yet (they stay queued: not an error of theirs).
    pub async fn sync(&self) -> Result<(), LogError> {
        let last = self.last_index();
        loop {
            let epoch = self.inner.durable_notify.epoch();
            {
                let st = self.inner.state.borrow();
                if let Some(reason) = &st.failed {
                    return Err(LogError::Failed { reason: reason.clone() });
                }
                if last <= st.durable_index {
                    return Ok(());
                }
                if last >= st.next_index {
                    return Err(LogError::Truncated { index: last });
                }
                if st.roll_blocked {
                    let reason = st.no_space.clone().unwrap_or_default();
                    return Err(LogError::StorageFull { reason });
                }
                if st.closed && st.queue.is_empty() {
                    return Err(LogError::Closed);
                }
            }
            self.inner.durable_notify.wait(epoch).await;
        }
    }

    /// Why the log answers appends `StorageFull` (the disk is full), if it does.
    pub fn storage_full(&self) -> Option<String> {
        self.inner.state.borrow().no_space.clone()
    }

    /// Resolves once the log takes appends again after a full disk (at once if it does):
    /// when a spare segment could be made or a roll could be done. `Failed` / `Closed` if
    /// the log fails or closes meanwhile.
    pub async fn wait_space(&self) -> Result<(), LogError> {
        loop {
            let epoch = self.inner.spare_notify.epoch();
            {
                let st = self.inner.state.borrow();
                closed_or_failed(&st, LogError::Closed)?;
                if st.no_space.is_none() {
                    return Ok(());
                }
            }
            self.inner.spare_notify.wait(epoch).await;
        }
    }

    /// Flushes everything appended, stops the background tasks and releases the data dir.
    pub async fn close(self) -> Result<(), LogError> {
        let synced = self.sync().await;
        self.inner.state.borrow_mut().closed = true;
        self.inner.flush_notify.notify_all();
        self.inner.spare_notify.notify_all();
        self.inner.durable_notify.notify_all();
        let tasks: Vec<_> = self.inner.tasks.borrow_mut().drain(..).collect();
        for task in tasks {
            task.await;
        }
        // Detached flush IO tasks hold the log until their completions are reaped: wait
        // (bounded) until they let go, so that the directory lock is released when `close`
        // returns and the log can be reopened at once.
        let deadline = std::time::Instant::now() + CLOSE_RELEASE_WAIT_MAX;
        while Rc::strong_count(&self.inner) > 1 && std::time::Instant::now() < deadline {
            glommio::timer::sleep(std::time::Duration::from_millis(1)).await;
        }
        // Dropping the last reference drops the log's files (segments, index, directory),
        // which only queues their closes on the ring: have it submit them, so that every fd
        // is released when `close` returns even if the executor ends right after.
        let dir = self.dir().to_path_buf();
        drop(self);
        crate::io::submit_dropped_closes(&dir).await;
        synced
    }

    pub fn durable_index(&self) -> LogIndex {
        self.inner.state.borrow().durable_index
    }
    /// The offset after the last durable record.
    pub fn durable_offset(&self) -> Offset {
        self.inner.state.borrow().durable_offset
    }
    /// The offset the next record appended gets.
    pub fn next_offset(&self) -> Offset {
        self.inner.state.borrow().next_offset
    }
    /// Index of the last appended batch (`start_index - 1` if the log is empty).
    pub fn last_index(&self) -> LogIndex {
        self.inner.state.borrow().last_index()
    }
    /// Term of the last appended batch (the reset's `prev_term` if the log is empty).
    pub fn last_term(&self) -> Term {
        self.inner.state.borrow().last_term
    }
    /// Term of the batch at `index`, for `start_index - 1 ..= last_index`; None outside.
    pub fn term_at(&self, index: LogIndex) -> Option<Term> {
        self.inner.state.borrow().term_at(index)
    }
    pub fn start_index(&self) -> LogIndex {
        self.inner.state.borrow().start_index
    }
    pub fn start_offset(&self) -> Offset {
        self.inner.state.borrow().start_offset
    }
    /// The chain crc of the last batch: two logs with the same last index and crc are equal.
    pub fn last_crc(&self) -> u32 {
        self.inner.state.borrow().last_crc
    }
    /// `(index, flags)` of every control batch still in the log.
    pub fn control_batches(&self) -> Vec<(LogIndex, u16)> {
        self.inner.state.borrow().controls.clone()
    }
    /// Indices of the membership batches still in the log (read them with `read_entries`).
    pub fn membership_indices(&self) -> Vec<LogIndex> {
        let st = self.inner.state.borrow();
        st.controls.iter().filter(|(_, f)| f & CONTROL_MEMBERSHIP != 0).map(|(i, _)| *i).collect()
    }
    /// Counters of flushes and fdatasyncs.
    pub fn stats(&self) -> FlushStats {
        self.inner.state.borrow().stats
    }
    /// Bytes appended and not yet durable.
    pub fn queued_bytes(&self) -> usize {
        self.inner.state.borrow().queued_bytes
    }
    /// Why the log failed, if it did.
    pub fn failure(&self) -> Option<String> {
        self.inner.state.borrow().failed.clone()
    }
    pub fn config(&self) -> &LogConfig {
        &self.inner.config
    }
    pub fn dir(&self) -> &Path {
        self.inner.dir.path()
    }
    /// The log's fault injector (tests arm it to fail writes or fdatasyncs).
    pub fn fault_injector(&self) -> Arc<FaultInjector> {
        self.inner.faults.clone()
    }
    /// Bytes written into the log's segments, segment headers and padding included (what
    /// `retention_bytes_max` limits; the preallocated rest of the active segment is not
    /// counted).
    pub fn size_bytes(&self) -> u64 {
        self.inner.state.borrow().segments.iter().map(Segment::used_bytes).sum()
    }
    /// Number of segments (sealed and active).
    pub fn segment_count(&self) -> usize {
        self.inner.state.borrow().segments.len()
    }

    /// Whole raw batches from the one holding `offset` on (control batches at `offset`
    /// first), up to `bound` and `max_bytes`: at least the first data batch at or after
    /// `offset` if one is readable (whole, even past `max_bytes`, with the control batches in
    /// front of it up to `FETCH_CONTROL_PREFIX_BYTES_MAX`); never ending in a control batch
    /// (see `Gather`). Empty when only control batches are readable there. Every batch is checksum-verified; a corrupt
    /// one is an error, never returned.
    pub async fn fetch(
        &self,
        offset: Offset,
        max_bytes: usize,
        bound: ReadBound,
    ) -> Result<Vec<Bytes>, FetchError> {
        let limit = {
            let st = self.inner.state.borrow();
            closed_or_failed(&st, FetchError::Closed)?;
            if offset < st.start_offset || offset > st.next_offset {
                return Err(FetchError::OffsetOutOfRange {
                    offset,
                    start: st.start_offset,
                    next: st.next_offset,
                });
            }
            match bound {
                ReadBound::Durable => st.durable_index,
                ReadBound::Appended => st.last_index(),
                ReadBound::Through(index) => index.min(st.last_index()),
            }
        };
        self.collect(Want::Offset(offset), limit, max_bytes).await
    }

    /// Raw batches with indices `from..=through` (capped at the last index), up to
    /// `max_bytes` (at least one), durable or not: what a leader sends to a follower.
    pub async fn read_entries(
        &self,
        from: LogIndex,
        through: LogIndex,
        max_bytes: usize,
    ) -> Result<Vec<Bytes>, FetchError> {
        let limit = {
            let st = self.inner.state.borrow();
            closed_or_failed(&st, FetchError::Closed)?;
            if from < st.start_index || from > st.next_index {
                return Err(FetchError::IndexOutOfRange {
                    index: from,
                    start: st.start_index,
                    last: st.last_index(),
                });
            }
            through.min(st.last_index())
        };
        if from > limit {
            return Ok(Vec::new());
        }
        self.collect(Want::Index(from), limit, max_bytes).await
    }

    async fn collect(
        &self,
        mut want: Want,
        limit: LogIndex,
        max_bytes: usize,
    ) -> Result<Vec<Bytes>, FetchError> {
        let mut gather = Gather::new(want, max_bytes);
        let rounds = self.inner.state.borrow().segments.len() + 2;
        for _ in 0..rounds {
            // The tail cache, if it holds the start.
            {
                let st = self.inner.state.borrow();
                if let Some(front) = st.cache.front() {
                    let covers = match want {
                        Want::Index(index) => index >= front.index,
                        Want::Offset(offset) => {
                            front.index == st.start_index || front.before_offset(offset)
                        }
                    };
                    if covers {
                        let batches: Box<dyn Iterator<Item = &CachedBatch>> = match want {
                            Want::Index(index) => Box::new(st.cache.starting_at_index(index)),
                            Want::Offset(offset) => Box::new(st.cache.starting_at_offset(offset)),
                        };
                        for batch in batches {
                            if batch.index > limit {
                                break;
                            }
                            match gather.offer(batch.record_count, batch.bytes.len()) {
                                Verdict::Keep => {
                                    gather.keep(batch.record_count, batch.bytes.clone());
                                }
                                Verdict::Skip => {}
                                Verdict::Stop => break,
                            }
                        }
                        return Ok(gather.finish());
                    }
                }
            }
            // Otherwise the segment holding it.
            let Some((file, name, position, data_end, seg_next)) = self.locate(want) else {
                return Ok(gather.finish());
            };
            // Clamped before rounding: any `max_bytes` (up to usize::MAX) is accepted.
            let wanted = (max_bytes as u64).min(IO_CHUNK_BYTES as u64);
            let chunk = (block_ceil(wanted) as usize).clamp(BLOCK_SIZE * 16, IO_CHUNK_BYTES);
            let mut reader = SegmentReader::new(file, data_end, chunk);
            let mut position = position;
            let batch_size_max = self.inner.config.batch_size_max;
            let path = self.inner.dir.join(&name);
            let io = |source| FetchError::Io { path: path.clone(), source };
            let corrupt = |position, kind| {
                FetchError::Corruption(Corruption { segment: path.clone(), position, kind })
            };
            loop {
                match reader.next_item(position, batch_size_max).await.map_err(io)? {
                    Item::Batch { header, len } => {
                        if !want.skips(&header) {
                            if header.index() > limit {
                                return Ok(gather.finish());
                            }
                            let records = header.record_count();
                            match gather.offer(records, len) {
                                Verdict::Keep => {
                                    let bytes = reader.bytes(position, len).await.map_err(io)?;
                                    // Checked by next_item; decode again so what we return is
                                    // what was verified.
                                    decode_batch(bytes, batch_size_max).map_err(|e| {
                                        corrupt(position, CorruptionKind::ReadBack(e))
                                    })?;
                                    gather.keep(records, Bytes::copy_from_slice(bytes));
                                }
                                Verdict::Skip => {}
                                Verdict::Stop => return Ok(gather.finish()),
                            }
                            want = Want::Index(header.index().next());
                        }
                        position += len as u64;
                    }
                    Item::Padding { len } => position += len as u64,
                    Item::End => break,
                    Item::Zero => {
                        return Err(corrupt(position, CorruptionKind::InvalidPadding));
                    }
                    Item::Invalid(kind) => {
                        let kind = match kind {
                            crate::segment_reader::InvalidKind::Batch(e) => {
                                CorruptionKind::InvalidBatch(e)
                            }
                            crate::segment_reader::InvalidKind::Padding => {
                                CorruptionKind::InvalidPadding
                            }
                        };
                        return Err(corrupt(position, kind));
                    }
                }
            }
            if seg_next > limit {
                return Ok(gather.finish());
            }
            // The rest starts at the next segment (or the tail cache).
            if matches!(want, Want::Offset(_)) {
                want = Want::Index(seg_next);
            }
        }
        Ok(gather.finish())
    }

    /// The segment and start position for `want` (durable bytes only).
    fn locate(
        &self,
        want: Want,
    ) -> Option<(Rc<crate::io::DirectFile>, String, u64, u64, LogIndex)> {
        let st = self.inner.state.borrow();
        let at = match want {
            Want::Index(index) => st.segments.partition_point(|s| s.base_index <= index),
            Want::Offset(offset) => st.segments.partition_point(|s| s.base_offset < offset),
        };
        let segment = st.segments.get(at.saturating_sub(1))?;
        if let Want::Index(index) = want {
            if index >= segment.next_index {
                return None;
            }
        }
        let position = match want {
            Want::Index(index) => segment.index.position_for_index(index),
            Want::Offset(offset) => segment.index.position_for_offset(offset),
        }
        .map_or(BLOCK_SIZE as u64, u64::from);
        Some((
            segment.file.clone(),
            segment.name.clone(),
            position,
            segment.data_end,
            segment.next_index,
        ))
    }

    /// Removes every batch at or above `from` (a Raft conflict), durably: when this returns,
    /// a crash cannot bring them back. Batches still queued resolve `Truncated`.
    pub async fn truncate_suffix(&self, from: LogIndex) -> Result<(), TruncateError> {
        let inner = &self.inner;
        let _exclusive = inner.io_gate.exclusive().await;
        let (start_index, start_offset, start_prev_term, durable) = {
            let st = inner.state.borrow();
            closed_or_failed(&st, TruncateError::Closed)?;
            if from >= st.next_index {
                return Ok(());
            }
            if from < st.start_index {
                return Err(TruncateError::BelowStart { index: from, start: st.start_index });
            }
            (st.start_index, st.start_offset, st.start_prev_term, st.durable_index)
        };
        if from == start_index {
            return self.reset_locked(start_index, start_offset, start_prev_term).await.map_err(
                |e| match e {
                    ResetError::Closed => TruncateError::Closed,
                    ResetError::Failed { reason } => TruncateError::Failed { reason },
                    ResetError::StorageFull { reason } => TruncateError::StorageFull { reason },
                    other => TruncateError::Failed { reason: other.to_string() },
                },
            );
        }
        if from > durable {
            // Only queued batches: nothing on disk to undo.
            let mut st = inner.state.borrow_mut();
            let cut = st.cache.get(from).expect("batches above durable are cached").clone();
            let prev_crc = crate::batch::header_of(&cut.bytes).prev_crc.get();
            st.drop_queue_from(from);
            st.truncate_memory(from, cut.base_offset, prev_crc);
            st.check();
            return Ok(());
        }
        let result = self.truncate_durable(from).await;
        if let Err(reason) = &result {
            inner.latch(reason.clone());
        }
        result.map_err(|reason| TruncateError::Failed { reason })
    }

    async fn truncate_durable(&self, from: LogIndex) -> Result<(), String> {
        let inner = &self.inner;
        let dir = &inner.dir;
        let faults = &inner.faults;
        let (segment_at, position, header) = self.find_batch(from).await?;
        inner.state.borrow_mut().drop_queue_from(from);
        let later: Vec<String> = inner.state.borrow().segments[segment_at + 1..]
            .iter()
            .map(|s| s.name.clone())
            .collect();
        let err = |what: &str, e: std::io::Error| format!("truncate_suffix: {what}: {e}");
        for name in later.iter().rev() {
            dir.remove(&index_name(name)).map_err(|e| err("remove index", e))?;
            dir.remove(name).map_err(|e| err("remove segment", e))?;
        }
        dir.sync(faults).await.map_err(|e| err("directory sync", e))?;
        let (cut_whole, name) = {
            let st = inner.state.borrow();
            let segment = &st.segments[segment_at];
            (segment.base_index == from, segment.name.clone())
        };
        if cut_whole {
            dir.remove(&index_name(&name)).map_err(|e| err("remove index", e))?;
            dir.remove(&name).map_err(|e| err("remove segment", e))?;
            dir.sync(faults).await.map_err(|e| err("directory sync", e))?;
            let mut st = inner.state.borrow_mut();
            st.segments.truncate(segment_at);
        } else {
            let (file, old_end, capacity) = {
                let st = inner.state.borrow();
                let segment = &st.segments[segment_at];
                (segment.file.clone(), segment.data_end, segment.capacity)
            };
            let sealed = {
                let mut st = inner.state.borrow_mut();
                let term_before = st.term_at(LogIndex(from.0 - 1)).expect("from > start_index");
                st.segments.truncate(segment_at + 1);
                let segment = &mut st.segments[segment_at];
                segment.next_index = from;
                segment.next_offset = header.base_offset();
                segment.last_crc = header.prev_crc.get();
                segment.last_term = term_before;
                segment.data_end = position;
                segment.write_position = block_ceil(position);
                segment.index.truncate_from(from);
                // The cut batches stay in the file past `data_end`: never recycle it.
                segment.cut = true;
                sealed_index(segment)
            };
            persist_index(dir, faults, &name, &sealed)
                .await
                .map_err(|e| err("persist index", e))?;
            inner.state.borrow_mut().segments[segment_at].sealed = true;
            erase_cut(&file, faults, (position, old_end), capacity)
                .await
                .map_err(|e| err("erase the cut batches", e))?;
        }
        let mut st = inner.state.borrow_mut();
        // Appends made while this truncation awaited IO continued the old log: drop them too.
        st.drop_queue_from(from);
        st.truncate_memory(from, header.base_offset(), header.prev_crc.get());
        st.check();
        Ok(())
    }

    /// Finds the durable batch `index` on disk: (segment position in the list, file position,
    /// header).
    async fn find_batch(&self, index: LogIndex) -> Result<(usize, u64, BatchHeader), String> {
        let (segment_at, file, position, data_end) = {
            let st = self.inner.state.borrow();
            let at = st.segments.partition_point(|s| s.base_index <= index).saturating_sub(1);
            let segment = st.segments.get(at).ok_or("no segment holds the batch")?;
            let position =
                segment.index.position_for_index(index).map_or(BLOCK_SIZE as u64, u64::from);
            (at, segment.file.clone(), position, segment.data_end)
        };
        let mut reader = SegmentReader::new(file, data_end, IO_CHUNK_BYTES);
        let mut position = position;
        let items_max = data_end / 16 + 1;
        for _ in 0..items_max {
            let item = reader
                .next_item(position, self.inner.config.batch_size_max)
                .await
                .map_err(|e| format!("read while truncating: {e}"))?;
            match item {
                Item::Batch { header, .. } if header.index() == index => {
                    return Ok((segment_at, position, header));
                }
                Item::Batch { len, .. } | Item::Padding { len } => position += len as u64,
                other => return Err(format!("batch {index} not found at {position}: {other:?}")),
            }
        }
        Err(format!("batch {index} not found"))
    }

    /// Throws the whole log away and restarts it empty so that the next batch appended gets
    /// `next_index` and `next_offset`, the batch before it having `prev_term` (a follower
    /// behind the leader's retention). Durable when this returns.
    pub async fn reset(
        &self,
        next_index: LogIndex,
        next_offset: Offset,
        prev_term: Term,
    ) -> Result<(), ResetError> {
        if next_index == LogIndex(0) {
            return Err(ResetError::ZeroIndex);
        }
        let _exclusive = self.inner.io_gate.exclusive().await;
        self.reset_locked(next_index, next_offset, prev_term).await
    }

    async fn reset_locked(
        &self,
        next_index: LogIndex,
        next_offset: Offset,
        prev_term: Term,
    ) -> Result<(), ResetError> {
        let inner = &self.inner;
        closed_or_failed(&inner.state.borrow(), ResetError::Closed)?;
        // The new first segment is the spare: on a full disk, refuse before changing anything
        // (the IO gate is held, so no roll takes the spare before `reset_disk` does).
        match take_usable_spare(inner, next_index).await {
            Ok(_) => {}
            Err(LogError::StorageFull { reason }) => {
                return Err(ResetError::StorageFull { reason })
            }
            Err(LogError::Failed { reason }) => return Err(ResetError::Failed { reason }),
            Err(_) => return Err(ResetError::Closed),
        }
        inner.state.borrow_mut().drop_queue_from(LogIndex(0));
        let result = self.reset_disk(next_index, next_offset, prev_term).await;
        match result {
            Ok(segment) => {
                let mut st = inner.state.borrow_mut();
                // Appends made while the reset awaited IO belong to the old log.
                st.drop_queue_from(LogIndex(0));
                st.segments = vec![segment];
                st.start_index = next_index;
                st.start_offset = next_offset;
                st.start_prev_term = prev_term;
                st.next_index = next_index;
                st.next_offset = next_offset;
                st.last_term = prev_term;
                st.last_crc = 0;
                st.terms.clear();
                st.controls.clear();
                st.cache.clear();
                st.durable_index = LogIndex(next_index.0 - 1);
                st.durable_offset = next_offset;
                st.check();
                Ok(())
            }
            Err(reason) => {
                inner.latch(reason.clone());
                Err(ResetError::Failed { reason })
            }
        }
    }

    async fn reset_disk(
        &self,
        next_index: LogIndex,
        next_offset: Offset,
        prev_term: Term,
    ) -> Result<Segment, String> {
        let inner = &self.inner;
        let dir = &inner.dir;
        let faults = &inner.faults;
        let err = |what: &str, e: &dyn std::fmt::Display| format!("reset: {what}: {e}");
        // Recycling candidates with batches at or above the new start can never be reused.
        let above: Vec<LogIndex> = {
            let mut st = inner.state.borrow_mut();
            let above = st
                .recycle_candidates
                .iter()
                .filter(|c| c.stale_index_end > next_index)
                .map(|c| c.stale_index_end)
                .collect();
            st.recycle_candidates.retain(|c| c.stale_index_end <= next_index);
            above
        };
        for bound in above {
            dir.remove(&recycle_candidate_name(bound)).map_err(|e| err("remove candidate", &e))?;
        }
        let recycled = take_usable_spare(inner, next_index).await.map_err(|e| err("spare", &e))?;
        dir.rename(SPARE_READY, RESET_PENDING).map_err(|e| err("rename spare", &e))?;
        inner.state.borrow_mut().spare_ready = false;
        inner.spare_notify.notify_all();
        dir.sync(faults).await.map_err(|e| err("directory sync", &e))?;
        let file = open_segment_file(dir, RESET_PENDING).await.map_err(|e| err("open", &e))?;
        let meta = SegmentMeta {
            base_offset: next_offset,
            base_index: next_index,
            prev_term,
            prev_crc: 0,
            segment_size: inner.config.segment_size_bytes,
            created_unix_ms: crate::segment::now_unix_ms(),
            recycled,
        };
        let mut buf = file.alloc(BLOCK_SIZE);
        encode_header(&meta, buf.as_bytes_mut());
        file.write_at(faults, buf, 0).await.map_err(|e| err("write header", &e))?;
        file.sync(faults).await.map_err(|e| err("fdatasync", &e))?;
        let old: Vec<String> =
            inner.state.borrow().segments.iter().map(|s| s.name.clone()).collect();
        for name in old.iter().rev() {
            dir.remove(&index_name(name)).map_err(|e| err("remove index", &e))?;
            dir.remove(name).map_err(|e| err("remove segment", &e))?;
        }
        dir.sync(faults).await.map_err(|e| err("directory sync", &e))?;
        let name = segment_name(next_offset, next_index);
        dir.rename(RESET_PENDING, &name).map_err(|e| err("rename", &e))?;
        dir.sync(faults).await.map_err(|e| err("directory sync", &e))?;
        Ok(Segment {
            name,
            file: Rc::new(file),
            capacity: inner.config.segment_size_bytes,
            base_offset: next_offset,
            base_index: next_index,
            prev_term,
            prev_crc: 0,
            header_written: true,
            write_position: BLOCK_SIZE as u64,
            data_end: BLOCK_SIZE as u64,
            next_index,
            next_offset,
            last_crc: 0,
            last_term: prev_term,
            index: SegmentIndex::new(),
            sealed: false,
            recycled,
            cut: false,
        })
    }

    /// Deletes whole sealed segments, oldest first, while the log is over
    /// `retention_bytes_max` or their newest batch is older than `retention_age_max`, and only
    /// segments whose every batch is below `deletable_below` (e.g. the commit index + 1).
    /// Never deletes the active (last) segment. Advances the log start.
    ///
    /// With `LogConfig::recycle_segments`, up to `RECYCLED_SPARES_MAX` victims that were never
    /// cut are kept as recycling candidates instead (renamed `spare.recycled-{next_index}`,
    /// their index deleted) for the preallocator (spare.rs); the directory is synced before
    /// the log start advances either way.
    pub async fn apply_retention(
        &self,
        now_unix_ms: i64,
        deletable_below: LogIndex,
    ) -> Result<RetentionReport, RetentionError> {
        let inner = &self.inner;
        let _exclusive = inner.io_gate.exclusive().await;
        let victims: Vec<Victim> = {
            let st = inner.state.borrow();
            closed_or_failed(&st, RetentionError::Closed)?;
            let config = &inner.config;
            let mut total: u64 = st.segments.iter().map(Segment::used_bytes).sum();
            let mut victims = Vec::new();
            let deletable = st.segments.len().saturating_sub(1);
            for segment in &st.segments[..deletable] {
                let by_bytes = config.retention_bytes_max.is_some_and(|max| total > max);
                let by_age = config.retention_age_max.is_some_and(|age| {
                    segment.index.max_timestamp_ms < now_unix_ms - age.as_millis() as i64
                });
                if !segment.sealed || segment.next_index > deletable_below || !(by_bytes || by_age)
                {
                    break;
                }
                total -= segment.used_bytes();
                victims.push(Victim {
                    name: segment.name.clone(),
                    bytes: segment.used_bytes(),
                    next_index: segment.next_index,
                    recyclable: !segment.cut && segment.capacity == config.segment_size_bytes,
                    file: segment.file.clone(),
                });
            }
            victims
        };
        let mut report = RetentionReport::default();
        if !victims.is_empty() {
            let mut room = if inner.config.recycle_segments {
                RECYCLED_SPARES_MAX.saturating_sub(inner.state.borrow().recycle_candidates.len())
            } else {
                0
            };
            let mut kept = Vec::new();
            let removed: Result<(), String> = async {
                for victim in &victims {
                    let name = &victim.name;
                    if victim.recyclable && room > 0 {
                        let candidate = recycle_candidate_name(victim.next_index);
                        inner
                            .dir
                            .rename(name, &candidate)
                            .map_err(|e| format!("retention: rename {name} to {candidate}: {e}"))?;
                        room -= 1;
                        kept.push(RecycleCandidate {
                            stale_index_end: victim.next_index,
                            file: Some(victim.file.clone()),
                        });
                    } else {
                        inner
                            .dir
                            .remove(name)
                            .map_err(|e| format!("retention: remove {name}: {e}"))?;
                    }
                    inner.dir.remove(&index_name(name)).map_err(|e| format!("retention: {e}"))?;
                }
                inner
                    .dir
                    .sync(&inner.faults)
                    .await
                    .map_err(|e| format!("retention: directory sync: {e}"))
            }
            .await;
            if let Err(reason) = removed {
                inner.latch(reason.clone());
                return Err(RetentionError::Failed { reason });
            }
            let mut st = inner.state.borrow_mut();
            st.recycle_candidates.extend(kept);
            st.segments.drain(..victims.len());
            let first = &st.segments[0];
            let (start_index, start_offset, prev_term) =
                (first.base_index, first.base_offset, first.prev_term);
            st.start_index = start_index;
            st.start_offset = start_offset;
            st.start_prev_term = prev_term;
            st.terms.retain(|(first, _)| *first >= start_index);
            st.controls.retain(|(index, _)| *index >= start_index);
            st.check();
            report.segments_deleted = victims.len();
            report.bytes_deleted = victims.iter().map(|v| v.bytes).sum();
            drop(st);
            // A preallocator waiting for a zero-fill to be wanted may now recycle instead.
            inner.spare_notify.notify_all();
        }
        let st = inner.state.borrow();
        report.start_index = st.start_index;
        report.start_offset = st.start_offset;
        Ok(report)
    }
}

/// A segment retention removes from the log.
struct Victim {
    name: String,
    bytes: u64,
    next_index: LogIndex,
    /// Never cut and of the configured size: may become a recycling candidate.
    recyclable: bool,
    file: Rc<crate::io::DirectFile>,
}

impl Drop for Log {
    fn drop(&mut self) {
        // Background tasks flush what is queued, then exit and release the data dir.
        self.inner.state.borrow_mut().closed = true;
        self.inner.flush_notify.notify_all();
        self.inner.spare_notify.notify_all();
        self.inner.durable_notify.notify_all();
    }
}

/// `StorageFull` while the disk is full (`State::no_space`).
fn check_space(st: &State) -> Result<(), AppendError> {
    match &st.no_space {
        Some(reason) => Err(AppendError::StorageFull { reason: reason.clone() }),
        None => Ok(()),
    }
}

fn check_backpressure(st: &State, size: usize, config: &LogConfig) -> Result<(), AppendError> {
    if st.queued_bytes + size > config.queued_bytes_max {
        return Err(AppendError::Backpressure {
            queued_bytes: st.queued_bytes,
            limit: config.queued_bytes_max,
        });
    }
    Ok(())
}

/// Refuses a data dir whose filesystem rejects O_DIRECT, naming the dir and the reason.
async fn probe_direct_io(dir: &Path) -> Result<(), OpenError> {
    match crate::io::probe_direct_io(dir).await {
        Ok(()) => Ok(()),
        Err(crate::io::OpenFileError::DirectIoUnsupported(source)) => {
            Err(OpenError::DirectIoUnsupported { path: dir.to_path_buf(), source })
        }
        Err(crate::io::OpenFileError::Io(source)) => {
            Err(OpenError::Io { path: dir.join(crate::io::DIRECT_IO_PROBE), source })
        }
    }
}

fn build_state(config: &LogConfig, segments: Vec<Segment>, spare_ready: bool) -> State {
    let (start_index, start_offset, start_prev_term) = segments
        .first()
        .map_or((LogIndex(1), Offset(0), Term(0)), |s| (s.base_index, s.base_offset, s.prev_term));
    let (next_index, next_offset, last_term, last_crc) =
        segments.last().map_or((LogIndex(1), Offset(0), Term(0), 0), |s| {
            (s.next_index, s.next_offset, s.last_term, s.last_crc)
        });
    let mut terms = Vec::new();
    let mut controls = Vec::new();
    for segment in &segments {
        terms.extend(segment.index.terms.iter().copied());
        controls.extend(segment.index.controls.iter().map(|c: &ControlPoint| (c.index, c.flags)));
    }
    State {
        segments,
        start_index,
        start_offset,
        start_prev_term,
        next_index,
        next_offset,
        last_term,
        last_crc,
        terms,
        controls,
        durable_index: LogIndex(next_index.0 - 1),
        durable_offset: next_offset,
        queue: VecDeque::new(),
        queued_bytes: 0,
        cache: TailCache::new(config.tail_cache_bytes_max),
        failed: None,
        no_space: None,
        roll_blocked: false,
        closed: false,
        spare_ready,
        spare_recycled: None,
        recycle_candidates: Vec::new(),
        stats: FlushStats::default(),
        arena: AppendArena::default(),
    }
}

/// Erases the batches a truncation cut off inside a segment, so that the file records the
/// cut as well as the index does: a rescan after a lost or damaged index file must not take
/// them back as the log's own (they continue its chain). The block holding `position` is
/// rewritten with its bytes below `position` and a padding marker (as recovery's tail repair
/// does: a torn rewrite there is found as damage and repaired by the cluster), every later
/// block up to the old end is zeroed (the far part first), then the file is fdatasynced.
async fn erase_cut(
    file: &crate::io::DirectFile,
    faults: &FaultInjector,
    (position, old_end): (u64, u64),
    capacity: u64,
) -> std::io::Result<()> {
    let start = crate::limits::block_floor(position);
    let pad = crate::batch::padding_len(position, BLOCK_SIZE) as u64;
    // A padding marker needs 16 bytes; within 16 bytes of the segment's end zeros stand in.
    let padded = position + pad <= capacity;
    let head_end = if padded { block_ceil(position + pad) } else { capacity };
    let region_end = block_ceil(old_end).max(head_end).min(capacity);
    let mut chunk_end = region_end;
    while chunk_end > head_end {
        let chunk_start = chunk_end.saturating_sub(IO_CHUNK_BYTES as u64).max(head_end);
        let buf = file.alloc((chunk_end - chunk_start) as usize);
        file.write_at(faults, buf, chunk_start).await?;
        chunk_end = chunk_start;
    }
    if head_end > start {
        let kept = file.read_at(start, (position - start) as usize).await?.to_vec();
        let mut buf = file.alloc((head_end - start) as usize);
        let bytes = buf.as_bytes_mut();
        bytes[..kept.len()].copy_from_slice(&kept);
        if padded && pad > 0 {
            let at = (position - start) as usize;
            crate::batch::write_padding(&mut bytes[at..at + pad as usize]);
        }
        file.write_at(faults, buf, start).await?;
    }
    file.sync(faults).await
}
