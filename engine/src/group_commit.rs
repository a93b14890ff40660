//! Group commit: the flusher task that turns queued batches into aligned writes, each with its
//! own fdatasync, keeping up to `flushes_in_flight_max` of them in flight (the spare segment it
//! rolls into is prepared by `spare.rs`).
//!
//! The flusher takes everything queued up to `flush_bytes_max` (whole batches, at least one)
//! that fits the active segment, pads it to the block boundary (docs/format.md#padding) and
//! submits it — one O_DIRECT write, then one fdatasync issued after that write completed — at
//! the end of the previous flush, which may still be in flight. Each flush's IO runs in its own
//! task; completions may arrive in any order, but flushes **commit strictly in submission
//! order**: segment metadata, `durable_index`, the tail cache, stats and the batches' `Durable`
//! futures advance only over the longest completed prefix. A roll waits until every flush into
//! the old segment has committed; the segment header block goes with the first flush into a
//! segment. `IoGate` admits the flushes and the exclusive operations (truncate, reset,
//! retention), which wait until no flush is in flight and keep new ones out meanwhile.
//!
//! Invariants: at most `flushes_in_flight_max` flushes are submitted and not yet committed or
//! failed (so a crash leaves at most that many flushes' worth of never-acknowledged data past
//! the durable end: `LogConfig::torn_reach_bytes`); flushes in flight are consecutive regions of
//! the active segment; a write never starts below the segment's write position (durable bytes
//! are never rewritten); a failed write or fdatasync latches the log at once, is never retried,
//! and fails its flush and every later one even if their own IO succeeded; after it no write or
//! fdatasync is issued; the preallocator's zero-fill never runs on the append path.
//!
//! A full disk: a roll that finds no spare while the preallocator is short of space, or whose
//! index file meets ENOSPC, changes nothing, releases its flush slot (so retention, truncation
//! and reset can take the IO gate and free space) and is retried after a bounded, doubling
//! wait (`spare::SpaceBackoff`); meanwhile the log answers appends `StorageFull` and its queued
//! batches stay queued, not durable. Closing a log whose roll waits for space resolves those
//! batches `StorageFull` (never durable, so never acknowledged).

#![forbid(unsafe_code)]

use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;

use bytes::{BufMut, Bytes};
use glommio::task::JoinHandle;

use crate::append_arena::aligned_chunk;
use crate::batch::{padding_len, write_padding, BatchHeader};
use crate::error::LogError;
use crate::flush_ring::FlushBuf;
use crate::io::{is_no_space, DirectFile};
use crate::limits::{LogConfig, BLOCK_SIZE, FLUSHES_IN_FLIGHT_LIMIT};
use crate::log::{Inner, State};
use crate::notify::{DurableSlot, Notify};
use crate::recovery::{open_segment_file, persist_index, sealed_index};
use crate::segment::{encode_header, segment_name, Segment, SPARE_READY};
use crate::segment_index::SegmentIndex;
use crate::spare::{take_usable_spare, SpaceBackoff};
use crate::types::LogIndex;

/// A stamped batch waiting for its flush.
#[derive(Debug)]
pub(crate) struct Pending {
    pub header: BatchHeader,
    pub bytes: Bytes,
    pub slot: Rc<DurableSlot>,
}

/// Most buckets a [`FixedHistogram`] has (its bounds plus the +Inf bucket).
pub const HISTOGRAM_BUCKETS_MAX: usize = 24;

/// Upper bounds (µs) of the fdatasync latency histogram: 25 µs .. 1 s, then +Inf.
pub const FDATASYNC_LATENCY_BOUNDS_US: [u64; 16] = [
    25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 2_500_000,
];

/// Upper bounds (bytes) of the appended batch size histogram: 128 B .. 16 MiB, then +Inf.
pub const BATCH_SIZE_BOUNDS_BYTES: [u64; 12] = [
    128,
    256,
    512,
    1 << 10,
    4 << 10,
    16 << 10,
    64 << 10,
    256 << 10,
    1 << 20,
    4 << 20,
    8 << 20,
    16 << 20,
];

const _: () = assert!(FDATASYNC_LATENCY_BOUNDS_US.len() < HISTOGRAM_BUCKETS_MAX);
const _: () = assert!(BATCH_SIZE_BOUNDS_BYTES.len() < HISTOGRAM_BUCKETS_MAX);

/// A histogram over fixed upper bounds (Prometheus style: a value lands in the first bucket
/// whose bound is >= it, or in the final +Inf bucket). Updating it is a short scan and two
/// additions; it never allocates, and it is `Copy` like the rest of [`FlushStats`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FixedHistogram {
    /// Ascending upper bounds; bucket `bounds.len()` is +Inf.
    bounds: &'static [u64],
    /// Observations per bucket (not cumulative).
    counts: [u64; HISTOGRAM_BUCKETS_MAX],
    /// Sum of every observed value (saturating).
    sum: u64,
}

impl FixedHistogram {
    /// An empty histogram over `bounds` (ascending, fewer than `HISTOGRAM_BUCKETS_MAX`).
    pub const fn new(bounds: &'static [u64]) -> FixedHistogram {
        assert!(bounds.len() < HISTOGRAM_BUCKETS_MAX);
        FixedHistogram { bounds, counts: [0; HISTOGRAM_BUCKETS_MAX], sum: 0 }
    }

    /// Adds one observation.
    pub fn record(&mut self, value: u64) {
        let bucket = self.bounds.partition_point(|bound| *bound < value);
        self.counts[bucket] += 1;
        self.sum = self.sum.saturating_add(value);
    }

    /// The upper bounds (without +Inf).
    pub fn bounds(&self) -> &'static [u64] {
        self.bounds
    }

    /// Prometheus buckets: `(upper bound, observations <= bound)`, cumulative, ending with
    /// `(u64::MAX, count)` for +Inf.
    pub fn cumulative_buckets(&self) -> Vec<(u64, u64)> {
        let mut total = 0;
        let mut out = Vec::with_capacity(self.bounds.len() + 1);
        for (at, bound) in self.bounds.iter().chain(std::iter::once(&u64::MAX)).enumerate() {
            total += self.counts[at];
            out.push((*bound, total));
        }
        out
    }

    /// Number of observations.
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// Sum of the observed values.
    pub fn sum(&self) -> u64 {
        self.sum
    }

    /// Adds `other`'s observations (same bounds; e.g. summing partitions).
    pub fn merge(&mut self, other: &FixedHistogram) {
        assert_eq!(self.bounds, other.bounds, "merging histograms with different bounds");
        for (mine, theirs) in self.counts.iter_mut().zip(other.counts.iter()) {
            *mine += theirs;
        }
        self.sum = self.sum.saturating_add(other.sum);
    }
}

/// Counters of the log's IO (observable by tests and the benchmark).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlushStats {
    /// Completed flushes (one write each).
    pub flushes: u64,
    /// fdatasyncs of segment data (one per flush).
    pub fdatasyncs: u64,
    /// Batches made durable.
    pub batches_flushed: u64,
    /// Bytes written by flushes, padding and segment headers included.
    pub bytes_written: u64,
    /// Flushes written from the append arena where the batches were stamped (no copy); the
    /// others were copied into a buffer of their own (`append_arena.rs`: a segment's first
    /// flush, a run split by a segment end or a truncation).
    pub flushes_in_place: u64,
    /// Segments rolled (spare renamed into place).
    pub segments_rolled: u64,
    /// Spare segments zero-filled by the preallocator.
    pub spares_filled: u64,
    /// Spare segments prepared by recycling a retention victim (one block written).
    pub spares_recycled: u64,
    /// Most flushes observed in flight at once (at most `flushes_in_flight_max`).
    pub flushes_in_flight_peak: u64,
    /// Flushes resolved `Failed`: the one whose write or fdatasync failed and every flush
    /// after it that was in flight (their own IO may have succeeded).
    pub flushes_failed: u64,
    /// Times the log ran out of disk space (ENOSPC or EDQUOT while preparing a spare or
    /// rolling) and began answering appends `StorageFull`.
    pub no_space_events: u64,
    /// Latency of each flush's fdatasync, in µs (`FDATASYNC_LATENCY_BOUNDS_US`).
    pub fdatasync_latency_us: FixedHistogram,
    /// Size of each appended batch in bytes, header included (`BATCH_SIZE_BOUNDS_BYTES`).
    pub batch_size_bytes: FixedHistogram,
}

impl Default for FlushStats {
    fn default() -> Self {
        FlushStats {
            flushes: 0,
            fdatasyncs: 0,
            batches_flushed: 0,
            bytes_written: 0,
            flushes_in_place: 0,
            segments_rolled: 0,
            spares_filled: 0,
            spares_recycled: 0,
            flushes_in_flight_peak: 0,
            flushes_failed: 0,
            no_space_events: 0,
            fdatasync_latency_us: FixedHistogram::new(&FDATASYNC_LATENCY_BOUNDS_US),
            batch_size_bytes: FixedHistogram::new(&BATCH_SIZE_BOUNDS_BYTES),
        }
    }
}

/// Runs until the log closes (and its queue is drained) or fails, then waits until no flush
/// is in flight (so that `Log::close` returns with the disk quiet).
async fn run_flusher(inner: Rc<Inner>) {
    let mut backoff = SpaceBackoff::default();
    loop {
        let epoch = inner.flush_notify.epoch();
        let (failed, idle, closed, blocked) = {
            let st = inner.state.borrow();
            (st.failed.is_some(), st.queue.is_empty(), st.closed, st.roll_blocked)
        };
        if failed || (idle && closed) {
            break;
        }
        if closed && blocked {
            give_up_for_space(&inner);
            break;
        }
        if idle {
            if blocked {
                forget_blocked_roll(&inner);
                backoff = SpaceBackoff::default();
            }
            inner.flush_notify.wait(epoch).await;
            continue;
        }
        let slot = inner.io_gate.reserve_flush().await;
        match submit_flush(&inner, slot).await {
            Ok(Submitted::Flush) => {
                if inner.state.borrow().roll_blocked {
                    inner.state.borrow_mut().roll_blocked = false;
                    backoff = SpaceBackoff::default();
                }
            }
            Ok(Submitted::NoSpace(reason)) => {
                // The slot is released: retention may run and free space meanwhile.
                inner.enter_no_space(reason);
                inner.state.borrow_mut().roll_blocked = true;
                inner.durable_notify.notify_all();
                let epoch = inner.spare_notify.epoch();
                if !inner.state.borrow().closed {
                    backoff.wait(&inner, epoch).await;
                }
                continue;
            }
            Err(reason) => {
                inner.latch(reason);
                break;
            }
        }
        glommio::yield_if_needed().await;
    }
    inner.io_gate.drained().await;
}

/// A closed log whose roll waits for space: its queued batches can never be written, so they
/// resolve `StorageFull` (never durable, so never acknowledged; the tail cache and the
/// counters go with the log).
fn give_up_for_space(inner: &Inner) {
    let mut st = inner.state.borrow_mut();
    let reason = st.no_space.clone().unwrap_or_else(|| "the disk is full".to_string());
    tracing::warn!(dir = ?inner.dir.path(), batches = st.queue.len(), %reason, "closing a full log: queued batches were not written");
    let error = LogError::StorageFull { reason };
    for pending in st.queue.drain(..) {
        pending.slot.resolve(Err(error.clone()));
    }
    st.queued_bytes = 0;
    st.arena.clear();
    drop(st);
    inner.spare_notify.notify_all();
    inner.durable_notify.notify_all();
}

/// The batches a blocked roll was for are gone (a truncation or reset dropped them): nothing
/// waits for a roll any more. With a spare ready the full-disk mark was the roll's own (its
/// index file), so it goes too and the next append tries again; without one it is the
/// preallocator's, which clears it when it makes a spare.
fn forget_blocked_roll(inner: &Inner) {
    let mut st = inner.state.borrow_mut();
    st.roll_blocked = false;
    if st.spare_ready {
        st.no_space = None;
    }
    drop(st);
    inner.spare_notify.notify_all();
}

/// What `submit_flush` did.
enum Submitted {
    /// A flush is in flight, or there was nothing to flush.
    Flush,
    /// The active segment is full and the disk has no room for the next one (no spare, or
    /// no room for the old segment's index file): nothing changed, retry later.
    NoSpace(String),
}

/// Waits for the preallocator's spare segment; `StorageFull` at once while there is none
/// and the disk is full (a waiter holding the IO gate must let go of it).
pub(crate) async fn wait_spare(inner: &Inner) -> Result<(), LogError> {
    loop {
        let epoch = inner.spare_notify.epoch();
        {
            let st = inner.state.borrow();
            if let Some(reason) = &st.failed {
                return Err(LogError::Failed { reason: reason.clone() });
            }
            if st.spare_ready {
                return Ok(());
            }
            if let Some(reason) = &st.no_space {
                return Err(LogError::StorageFull { reason: reason.clone() });
            }
            if st.closed && st.queue.is_empty() {
                return Err(LogError::Closed);
            }
        }
        inner.spare_notify.wait(epoch).await;
    }
}

/// Where the next flush goes in the active segment: after the last flush in flight, or at
/// the committed write position when none is.
struct Cursor {
    file: Rc<DirectFile>,
    position: u64,
    header_written: bool,
}

/// The cursor for the first queued batch, or `None` when the active segment cannot take it
/// (none, sealed, or full): the flusher must roll first.
fn cursor(inner: &Inner) -> Option<Cursor> {
    let st = inner.state.borrow();
    let first = st.queue.front().expect("the flusher looks for a cursor with a queued batch");
    let segment = st.segments.last().filter(|s| !s.sealed)?;
    let cursor = match inner.io_gate.in_flight_end() {
        Some(end) => Cursor { file: segment.file.clone(), position: end, header_written: true },
        None => Cursor {
            file: segment.file.clone(),
            position: segment.write_position,
            header_written: segment.header_written,
        },
    };
    let header = if cursor.header_written { 0 } else { BLOCK_SIZE as u64 };
    let end = cursor.position + header + first.bytes.len() as u64;
    fits_segment(end, segment.capacity).then_some(cursor)
}

/// Seals the active segment (index persisted) and renames the spare into place as the new
/// active segment starting at the first queued batch. Directory synced before any batch
/// lands in the new segment.
///
/// A full disk (no spare while the preallocator is short of space, ENOSPC on the index
/// file or on the rename) is `RollError::NoSpace`, before the spare is renamed: the roll can
/// be retried.
async fn roll(inner: &Inner) -> Result<(), RollError> {
    let base = inner.state.borrow().queue.front().expect("non-empty queue").header.index();
    let recycled = match take_usable_spare(inner, base).await {
        Ok(recycled) => recycled,
        Err(LogError::StorageFull { reason }) => return Err(RollError::NoSpace(reason)),
        Err(e) => return Err(RollError::Failed(format!("waiting for a spare segment: {e}"))),
    };
    let (first, prev_term, seal) = {
        let st = inner.state.borrow();
        let first = st.queue.front().expect("non-empty queue").header;
        let prev_term = st.term_at(LogIndex(first.index().0 - 1)).unwrap_or(st.start_prev_term);
        let seal =
            st.segments.last().filter(|s| !s.sealed).map(|s| (s.name.clone(), sealed_index(s)));
        (first, prev_term, seal)
    };
    let dir = &inner.dir;
    let faults = &inner.faults;
    if let Some((name, sealed)) = seal {
        persist_index(dir, faults, &name, &sealed).await.map_err(|e| {
            let reason = format!("persisting the index of {name}: {e}");
            if is_no_space(&e) {
                RollError::NoSpace(reason)
            } else {
                RollError::Failed(reason)
            }
        })?;
        if let Some(last) = inner.state.borrow_mut().segments.last_mut() {
            last.sealed = true;
        }
    }
    let name = segment_name(first.base_offset(), first.index());
    let failed = RollError::Failed;
    // A rename may need a new directory block: ENOSPC leaves both names as they were (the
    // spare stays ready, the sealed segment sealed), so the roll is retried once space is
    // back. The nemesis soak met it on a filled disk: the node exited 2 at every restart.
    dir.rename_segment(faults, SPARE_READY, &name).map_err(|e| {
        let reason = format!("renaming the spare to {name}: {e}");
        if is_no_space(&e) {
            RollError::NoSpace(reason)
        } else {
            failed(reason)
        }
    })?;
    {
        let mut st = inner.state.borrow_mut();
        st.spare_ready = false;
        // A roll done: whatever a full disk refused before is done too.
        st.no_space = None;
    }
    inner.spare_notify.notify_all();
    dir.sync(faults).await.map_err(|e| failed(format!("directory sync after roll: {e}")))?;
    let file = open_segment_file(dir, &name).await.map_err(|e| failed(e.to_string()))?;
    let mut st = inner.state.borrow_mut();
    st.segments.push(Segment {
        name,
        file: Rc::new(file),
        capacity: inner.config.segment_size_bytes,
        base_offset: first.base_offset(),
        base_index: first.index(),
        prev_term,
        prev_crc: first.prev_crc.get(),
        header_written: false,
        write_position: 0,
        data_end: 0,
        next_index: first.index(),
        next_offset: first.base_offset(),
        last_crc: first.prev_crc.get(),
        last_term: prev_term,
        index: SegmentIndex::new(),
        sealed: false,
        recycled,
        cut: false,
    });
    st.stats.segments_rolled += 1;
    Ok(())
}

/// Why a roll did not happen.
enum RollError {
    /// The disk is full: nothing changed; retried after a wait.
    NoSpace(String),
    /// Latches the log.
    Failed(String),
}

/// One flush: the bytes of its batches (segment header block if first in the segment,
/// batches, padding marker) as one aligned region, to be written at `start` of the active
/// segment and fdatasynced.
struct Flush {
    file: Rc<DirectFile>,
    start: u64,
    wrote_header: bool,
    buf: Rc<FlushBuf>,
    batches: Vec<Pending>,
    /// File position of each batch.
    positions: Vec<u64>,
    /// Written from the append arena (no copy).
    in_place: bool,
}

impl Flush {
    /// A flush of a whole sealed arena run (`run_pad` is its padding): written from where the
    /// batches were stamped if they and the padding form one aligned region, else copied.
    fn from_run(
        file: Rc<DirectFile>,
        start: u64,
        batches: Vec<Pending>,
        run_pad: Option<Bytes>,
    ) -> Flush {
        let mut parts: Vec<Bytes> = batches.iter().map(|p| p.bytes.clone()).collect();
        parts.extend(run_pad);
        match FlushBuf::region(parts) {
            Ok(buf) => {
                let positions = positions(start, 0, &batches);
                let buf = Rc::new(buf);
                Flush { file, start, wrote_header: false, buf, batches, positions, in_place: true }
            }
            Err(_) => Flush::build(file, start, None, batches),
        }
    }

    /// Copies `header_block` (if any), `batches` and the padding after them into one buffer.
    fn build(
        file: Rc<DirectFile>,
        start: u64,
        header_block: Option<&[u8]>,
        batches: Vec<Pending>,
    ) -> Flush {
        let header_len = header_block.map_or(0, <[u8]>::len);
        let total: usize = batches.iter().map(|p| p.bytes.len()).sum();
        let pad = padding_len(start + (header_len + total) as u64, BLOCK_SIZE);
        let len = header_len + total + pad;
        let mut out = aligned_chunk(len);
        if let Some(block) = header_block {
            out.extend_from_slice(block);
        }
        for pending in &batches {
            out.extend_from_slice(&pending.bytes);
        }
        if pad > 0 {
            out.put_bytes(0, pad);
            write_padding(&mut out[header_len + total..]);
        }
        debug_assert_eq!(out.len(), len, "the flush buffer is written whole");
        let positions = positions(start, header_len, &batches);
        let wrote_header = header_block.is_some();
        let buf = Rc::new(FlushBuf::copied(out.freeze()));
        Flush { file, start, wrote_header, buf, batches, positions, in_place: false }
    }

    fn len(&self) -> u64 {
        self.buf.len() as u64
    }

    /// Resolves every batch of the flush as failed (it will never be written).
    fn fail(self, reason: &str) {
        for pending in &self.batches {
            pending.slot.resolve(Err(LogError::Failed { reason: reason.to_string() }));
        }
    }
}

/// Whether batches ending at `end`, with the padding after them, fit a segment of `capacity`.
fn fits_segment(end: u64, capacity: u64) -> bool {
    end + padding_len(end, BLOCK_SIZE) as u64 <= capacity
}

/// File position of each of `batches` written back to back from `start + header_len`.
fn positions(start: u64, header_len: usize, batches: &[Pending]) -> Vec<u64> {
    let mut at = start + header_len as u64;
    batches
        .iter()
        .map(|pending| {
            let position = at;
            at += pending.bytes.len() as u64;
            position
        })
        .collect()
}

/// Takes whole queued batches, from the front, that fit one flush starting at `base` (where
/// the first batch lands) in a segment of `capacity` bytes. The first batch is taken even if
/// it alone exceeds `flush_bytes_max` (it cannot: `flush_bytes_max >= batch_size_max`), never
/// if it does not fit the segment (then nothing is taken).
fn take_batches(st: &mut State, config: &LogConfig, base: u64, capacity: u64) -> Vec<Pending> {
    let mut total = 0u64;
    let mut count = 0;
    for pending in st.queue.iter() {
        let len = pending.bytes.len() as u64;
        let end = base + total + len;
        let fits_segment = fits_segment(end, capacity);
        let fits_flush = total + len <= config.flush_bytes_max as u64;
        if !(fits_segment && (fits_flush || count == 0)) {
            break;
        }
        total += len;
        count += 1;
    }
    st.queue.drain(..count).collect()
}

/// Prepares the next flush in the reserved `slot` (rolling first if the active segment is
/// full, once every flush into it has committed) and starts its IO. Returns early, without a
/// flush, if the log failed or the queue emptied while it waited, or with `NoSpace` (the slot
/// released) if the roll needs space the disk does not have.
async fn submit_flush(inner: &Rc<Inner>, slot: FlushSlot<'_>) -> Result<Submitted, String> {
    // Bound: after one roll the active segment is empty and takes any batch (`validate`).
    let mut rolls = 0;
    let cursor = loop {
        {
            let st = inner.state.borrow();
            if st.failed.is_some() || st.queue.is_empty() {
                return Ok(Submitted::Flush);
            }
        }
        if let Some(cursor) = cursor(inner) {
            break cursor;
        }
        assert!(rolls < 2, "a fresh segment takes the first queued batch");
        // The old segment is sealed from complete metadata: every flush into it committed.
        inner.io_gate.drained().await;
        if inner.state.borrow().failed.is_some() {
            return Ok(Submitted::Flush);
        }
        match roll(inner).await {
            Ok(()) => {}
            Err(RollError::NoSpace(reason)) => return Ok(Submitted::NoSpace(reason)),
            Err(RollError::Failed(reason)) => return Err(reason),
        }
        rolls += 1;
    };
    let flush = {
        let mut st = inner.state.borrow_mut();
        let header_block = if cursor.header_written {
            None
        } else {
            let mut block = vec![0u8; BLOCK_SIZE];
            encode_header(&st.segments.last().expect("cursor found it").meta(), &mut block);
            Some(block)
        };
        let capacity = st.segments.last().expect("cursor found it").capacity;
        let base = cursor.position + header_block.as_ref().map_or(0, |b| b.len() as u64);
        if let Some(count) = whole_run_fits(&st, base, capacity, header_block.is_some()) {
            // The front run whole: sealed now if still open, written from the arena.
            if st.arena.front().is_some_and(|run| run.open) {
                st.arena.seal_open();
            }
            let run = st.arena.take_front();
            debug_assert_eq!(run.batches, count);
            let batches: Vec<Pending> = st.queue.drain(..count).collect();
            Flush::from_run(cursor.file, cursor.position, batches, run.pad)
        } else {
            let batches = take_batches(&mut st, &inner.config, base, capacity);
            assert!(!batches.is_empty(), "the cursor guarantees the first batch fits");
            let bytes = batches.iter().map(|p| p.bytes.len()).sum();
            st.arena.took_prefix(batches.len(), bytes);
            Flush::build(cursor.file, cursor.position, header_block.as_deref(), batches)
        }
    };
    let io = FlushIo { file: flush.file.clone(), buf: flush.buf.clone(), start: flush.start };
    let (seq, in_flight) = inner.io_gate.submit(slot, flush);
    {
        let mut st = inner.state.borrow_mut();
        let peak = &mut st.stats.flushes_in_flight_peak;
        *peak = (*peak).max(in_flight as u64);
    }
    glommio::spawn_local(run_flush_io(inner.clone(), seq, io)).detach();
    Ok(Submitted::Flush)
}

/// The number of batches of the front arena run if the next flush can be exactly that run,
/// written in place: no segment header block to write first, the run not broken, and the run
/// with its padding fitting the segment from `base`.
fn whole_run_fits(st: &State, base: u64, capacity: u64, header: bool) -> Option<usize> {
    let run = st.arena.front()?;
    if header || run.broken {
        return None;
    }
    let end = base + run.bytes as u64;
    fits_segment(end, capacity).then_some(run.batches)
}

/// What one flush's IO task needs: the buffer and where it goes.
struct FlushIo {
    file: Rc<DirectFile>,
    buf: Rc<FlushBuf>,
    start: u64,
}

/// One flush's IO task: its write, then its own fdatasync; then commits whatever prefix of
/// the flushes in flight is complete. A failure latches the log at once (nothing more is
/// submitted) and fails this flush and every later one.
async fn run_flush_io(inner: Rc<Inner>, seq: u64, io: FlushIo) {
    let result = write_and_sync(&inner, &io)
        .await
        .map_err(|e| format!("flush to {:?} at {} failed: {e}", io.file.path(), io.start));
    if let Err(reason) = &result {
        inner.io_gate.fail_from(seq);
        if inner.state.borrow().failed.is_none() {
            inner.latch(reason.clone());
        }
    }
    inner.io_gate.complete(seq, result.is_ok());
    commit_ready(&inner);
}

/// Writes the flush and fdatasyncs it, linked in one submission on the executor's flush ring
/// (`flush_ring.rs`): the fdatasync starts in the kernel as soon as the write completed, so it
/// covers it. Timed (write submission to fdatasync completion) for
/// `FlushStats::fdatasync_latency_us`. Once the log has failed (another flush's IO), nothing is
/// submitted; a flush already submitted when another fails still completes its pair.
async fn write_and_sync(inner: &Inner, io: &FlushIo) -> std::io::Result<()> {
    if inner.state.borrow().failed.is_some() {
        return Err(std::io::Error::other("not written: the log failed"));
    }
    if let Some(e) = DirectFile::write_fault(&inner.faults) {
        return Err(e);
    }
    // An armed fdatasync failure: the write still happens, its fdatasync is not issued.
    let sync_fault = DirectFile::sync_fault(&inner.faults);
    let started = std::time::Instant::now();
    let outcome = inner.flush_ring.write_and_sync(&io.file, &io.buf, io.start, !sync_fault).await;
    outcome.write?;
    match outcome.sync {
        Some(result) => result?,
        None => return Err(std::io::Error::from_raw_os_error(libc::EIO)),
    }
    let sync_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
    inner.state.borrow_mut().stats.fdatasync_latency_us.record(sync_us);
    Ok(())
}

/// Commits, in submission order, every flush in flight whose IO completed and which no
/// earlier flush precedes: a completed flush waits for every earlier one. A flush at or after
/// the first failed one resolves `Failed`, even if its own IO succeeded.
fn commit_ready(inner: &Inner) {
    while let Some((flush, committable)) = inner.io_gate.pop_completed() {
        if committable {
            commit(inner, &flush);
        } else {
            let reason = inner.state.borrow().failed.clone();
            let reason = reason.unwrap_or_else(|| "an earlier flush failed".to_string());
            inner.state.borrow_mut().stats.flushes_failed += 1;
            flush.fail(&reason);
            inner.durable_notify.notify_all();
        }
    }
}

/// Makes a completed flush visible: segment metadata, durable index, cache, waiters.
fn commit(inner: &Inner, flush: &Flush) {
    let end = flush.start + flush.len();
    let interval = inner.config.index_interval_bytes;
    let batches = &flush.batches;
    let mut st = inner.state.borrow_mut();
    let last = batches.last().expect("a flush has at least one batch").header;
    let segment = st.segments.last_mut().expect("flushed into the active segment");
    assert!(Rc::ptr_eq(&segment.file, &flush.file), "a flush lands in the active segment");
    assert_eq!(segment.write_position, flush.start, "flushes commit contiguously, in order");
    segment.header_written |= flush.wrote_header;
    for (pending, position) in batches.iter().zip(&flush.positions) {
        let header = &pending.header;
        segment.index.note_batch(header, *position, interval, segment.last_term);
        segment.last_term = header.term();
        segment.last_crc = header.header_crc.get();
        segment.next_index = header.index().next();
        segment.next_offset = header.next_offset();
        segment.data_end = position + header.length() as u64;
    }
    segment.write_position = end;
    let total: usize = batches.iter().map(|p| p.bytes.len()).sum();
    st.queued_bytes -= total;
    assert_eq!(
        batches[0].header.index(),
        st.durable_index.next(),
        "a flush continues the durable prefix"
    );
    st.durable_index = last.index();
    st.durable_offset = last.next_offset();
    let durable = st.durable_index;
    st.cache.evict(durable);
    st.stats.flushes += 1;
    st.stats.fdatasyncs += 1;
    st.stats.batches_flushed += batches.len() as u64;
    st.stats.bytes_written += flush.len();
    st.stats.flushes_in_place += u64::from(flush.in_place);
    st.check();
    drop(st);
    for pending in batches {
        pending.slot.resolve(Ok(()));
    }
    inner.durable_notify.notify_all();
}

/// Admission to the log's IO: up to `flushes_in_flight_max` flushes at once (submitted, not
/// yet committed or failed), or one exclusive operation (truncate, reset, retention) with no
/// flush in flight. An exclusive operation that waits keeps new flushes out, so a steady
/// append load cannot starve it. Also holds the flushes in flight, oldest first.
///
/// Invariants: `in_flight.len() + reserved <= flushes_max`; `exclusive` implies no flush in
/// flight or reserved; flushes in flight are consecutive regions of the active segment.
pub(crate) struct IoGate {
    flushes_max: usize,
    state: RefCell<GateState>,
    changed: Notify,
}

struct GateState {
    in_flight: VecDeque<InFlight>,
    /// The flusher holds a slot while it prepares a flush (roll, take, copy).
    reserved: bool,
    exclusive: bool,
    exclusive_waiting: usize,
    next_seq: u64,
    /// The first flush (by sequence) that failed: it and every later one resolve `Failed`.
    failed_from: Option<u64>,
}

struct InFlight {
    seq: u64,
    flush: Flush,
    /// `None` while its IO runs; then whether both the write and the fdatasync succeeded.
    succeeded: Option<bool>,
}

/// A reserved flush slot; released if dropped before `IoGate::submit`.
pub(crate) struct FlushSlot<'a> {
    gate: &'a IoGate,
}

/// Exclusive use of the log's IO: no flush runs while it is held.
pub(crate) struct ExclusiveIo<'a> {
    gate: &'a IoGate,
}

/// Counts an exclusive operation as waiting (new flushes stay out) until dropped.
struct ExclusiveWaiting<'a> {
    gate: &'a IoGate,
}

impl IoGate {
    pub(crate) fn new(flushes_max: usize) -> IoGate {
        assert!((1..=FLUSHES_IN_FLIGHT_LIMIT).contains(&flushes_max));
        IoGate {
            flushes_max,
            state: RefCell::new(GateState {
                in_flight: VecDeque::with_capacity(flushes_max),
                reserved: false,
                exclusive: false,
                exclusive_waiting: 0,
                next_seq: 0,
                failed_from: None,
            }),
            changed: Notify::default(),
        }
    }

    /// Waits until no flush is in flight, then keeps flushes out until the guard drops.
    pub(crate) async fn exclusive(&self) -> ExclusiveIo<'_> {
        self.state.borrow_mut().exclusive_waiting += 1;
        let waiting = ExclusiveWaiting { gate: self };
        loop {
            let epoch = self.changed.epoch();
            {
                let mut st = self.state.borrow_mut();
                if !st.exclusive && !st.reserved && st.in_flight.is_empty() {
                    st.exclusive = true;
                    drop(st);
                    drop(waiting);
                    return ExclusiveIo { gate: self };
                }
            }
            self.changed.wait(epoch).await;
        }
    }

    /// Waits for a free flush slot (no exclusive operation running or waiting).
    async fn reserve_flush(&self) -> FlushSlot<'_> {
        loop {
            let epoch = self.changed.epoch();
            {
                let mut st = self.state.borrow_mut();
                let free = st.in_flight.len() < self.flushes_max && !st.reserved;
                if free && !st.exclusive && st.exclusive_waiting == 0 {
                    st.reserved = true;
                    return FlushSlot { gate: self };
                }
            }
            self.changed.wait(epoch).await;
        }
    }

    /// Waits until every flush in flight has committed or failed.
    async fn drained(&self) {
        loop {
            let epoch = self.changed.epoch();
            if self.state.borrow().in_flight.is_empty() {
                return;
            }
            self.changed.wait(epoch).await;
        }
    }

    /// The end of the last flush in flight, if any.
    fn in_flight_end(&self) -> Option<u64> {
        self.state.borrow().in_flight.back().map(|f| f.flush.start + f.flush.len())
    }

    /// Turns the reserved slot into a flush in flight: (its sequence number, flushes now in
    /// flight).
    fn submit(&self, slot: FlushSlot<'_>, flush: Flush) -> (u64, usize) {
        std::mem::forget(slot);
        let mut st = self.state.borrow_mut();
        assert!(st.reserved, "a flush is submitted in a reserved slot");
        st.reserved = false;
        if let Some(last) = st.in_flight.back() {
            let end = last.flush.start + last.flush.len();
            assert_eq!(end, flush.start, "flushes in flight are consecutive");
            assert!(Rc::ptr_eq(&last.flush.file, &flush.file), "and in one segment");
        }
        let seq = st.next_seq;
        st.next_seq += 1;
        st.in_flight.push_back(InFlight { seq, flush, succeeded: None });
        assert!(st.in_flight.len() <= self.flushes_max);
        (seq, st.in_flight.len())
    }

    /// Records that flush `seq` failed: it and every later flush will resolve `Failed`.
    fn fail_from(&self, seq: u64) {
        let mut st = self.state.borrow_mut();
        st.failed_from = Some(st.failed_from.map_or(seq, |first| first.min(seq)));
    }

    /// Records the outcome of flush `seq`'s IO.
    fn complete(&self, seq: u64, succeeded: bool) {
        let mut st = self.state.borrow_mut();
        let entry = st.in_flight.iter_mut().find(|f| f.seq == seq).expect("flush in flight");
        assert!(entry.succeeded.is_none(), "a flush completes once");
        entry.succeeded = Some(succeeded);
    }

    /// Removes the oldest flush if its IO completed: (the flush, whether it may commit).
    fn pop_completed(&self) -> Option<(Flush, bool)> {
        let mut st = self.state.borrow_mut();
        let succeeded = st.in_flight.front()?.succeeded?;
        let entry = st.in_flight.pop_front().expect("checked");
        let committable = succeeded && st.failed_from.is_none_or(|first| entry.seq < first);
        drop(st);
        self.changed.notify_all();
        Some((entry.flush, committable))
    }
}

impl std::fmt::Debug for IoGate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let st = self.state.borrow();
        f.debug_struct("IoGate")
            .field("flushes_max", &self.flushes_max)
            .field("in_flight", &st.in_flight.len())
            .field("reserved", &st.reserved)
            .field("exclusive", &st.exclusive)
            .field("exclusive_waiting", &st.exclusive_waiting)
            .field("failed_from", &st.failed_from)
            .finish()
    }
}

impl Drop for FlushSlot<'_> {
    fn drop(&mut self) {
        self.gate.state.borrow_mut().reserved = false;
        self.gate.changed.notify_all();
    }
}

impl Drop for ExclusiveIo<'_> {
    fn drop(&mut self) {
        self.gate.state.borrow_mut().exclusive = false;
        self.gate.changed.notify_all();
    }
}

impl Drop for ExclusiveWaiting<'_> {
    fn drop(&mut self) {
        self.gate.state.borrow_mut().exclusive_waiting -= 1;
        self.gate.changed.notify_all();
    }
}

/// Spawns the flusher on the current executor, in the current task queue.
///
/// Tried and rejected: a dedicated `Latency::Matters(50 µs)` queue for the flushers, so that
/// glommio hands their IO to the kernel sooner under a full append load — with it the
/// executor sometimes parked for good with a timer pending (glommio 0.9.0), hanging tests.
pub(crate) fn spawn_flusher(inner: Rc<Inner>) -> JoinHandle<()> {
    glommio::spawn_local(run_flusher(inner)).detach()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fixed_histogram_counts_values_into_cumulative_prometheus_buckets() {
        let mut histogram = FixedHistogram::new(&[10, 100]);
        for value in [0, 10, 11, 100, 101, 5_000] {
            histogram.record(value);
        }
        // A value equal to a bound belongs to that bound's bucket (Prometheus `le`).
        assert_eq!(histogram.cumulative_buckets(), vec![(10, 2), (100, 4), (u64::MAX, 6)]);
        assert_eq!(histogram.count(), 6);
        assert_eq!(histogram.sum(), 5_222);
        let mut other = FixedHistogram::new(&[10, 100]);
        other.record(7);
        histogram.merge(&other);
        assert_eq!(histogram.cumulative_buckets(), vec![(10, 3), (100, 5), (u64::MAX, 7)]);
    }

    #[test]
    fn flush_stats_start_with_empty_histograms_over_the_published_bounds() {
        let stats = FlushStats::default();
        assert_eq!(stats.fdatasync_latency_us.bounds(), &FDATASYNC_LATENCY_BOUNDS_US);
        assert_eq!(stats.batch_size_bytes.bounds(), &BATCH_SIZE_BOUNDS_BYTES);
        assert_eq!(stats.fdatasync_latency_us.count(), 0);
        let buckets = stats.batch_size_bytes.cumulative_buckets();
        assert_eq!(buckets.len(), BATCH_SIZE_BOUNDS_BYTES.len() + 1);
        assert_eq!(buckets.last(), Some(&(u64::MAX, 0)));
    }
}
