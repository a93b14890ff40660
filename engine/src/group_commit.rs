//! Group commit: the flusher task that turns queued batches into one aligned write and one
//! fdatasync (the spare segment it rolls into is prepared by `spare.rs`).
//!
//! While a flush is in flight, appends keep queueing; the next flush takes everything queued
//! up to `flush_bytes_max` (whole batches, at least one) that fits the active segment, pads it
//! to the block boundary (docs/format.md#padding), writes it at the segment's block-aligned
//! write position and fdatasyncs. Only then are the batches' `Durable` futures resolved.
//!
//! Invariants: at most one flush is in flight per log (it holds the IO lock); a write never
//! starts below the segment's write position (durable bytes are never rewritten); a failed
//! write or fdatasync latches the log and is never retried; the preallocator's zero-fill never
//! runs on the append path.

#![forbid(unsafe_code)]

use std::rc::Rc;

use bytes::Bytes;
use glommio::io::DmaBuffer;
use glommio::task::JoinHandle;

use crate::batch::{padding_len, write_padding, BatchHeader};
use crate::error::LogError;
use crate::io::DirectFile;
use crate::limits::{LogConfig, BLOCK_SIZE};
use crate::log::{Inner, State};
use crate::notify::DurableSlot;
use crate::recovery::{open_segment_file, persist_index, sealed_index};
use crate::segment::{encode_header, segment_name, Segment, SPARE_READY};
use crate::segment_index::SegmentIndex;
use crate::spare::take_usable_spare;
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
    /// Segments rolled (spare renamed into place).
    pub segments_rolled: u64,
    /// Spare segments zero-filled by the preallocator.
    pub spares_filled: u64,
    /// Spare segments prepared by recycling a retention victim (one block written).
    pub spares_recycled: u64,
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
            segments_rolled: 0,
            spares_filled: 0,
            spares_recycled: 0,
            fdatasync_latency_us: FixedHistogram::new(&FDATASYNC_LATENCY_BOUNDS_US),
            batch_size_bytes: FixedHistogram::new(&BATCH_SIZE_BOUNDS_BYTES),
        }
    }
}

/// Runs until the log closes (and its queue is drained) or fails.
async fn run_flusher(inner: Rc<Inner>) {
    loop {
        let epoch = inner.flush_notify.epoch();
        let (failed, idle, closed) = {
            let st = inner.state.borrow();
            (st.failed.is_some(), st.queue.is_empty(), st.closed)
        };
        if failed || (idle && closed) {
            return;
        }
        if idle {
            inner.flush_notify.wait(epoch).await;
            continue;
        }
        let Ok(permit) = inner.io_lock.acquire_permit(1).await else { return };
        if inner.state.borrow().queue.is_empty() {
            continue;
        }
        if let Err(reason) = flush_once(&inner).await {
            inner.latch(reason);
            return;
        }
        drop(permit);
        glommio::yield_if_needed().await;
    }
}

/// Waits for the preallocator's spare segment.
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
            if st.closed && st.queue.is_empty() {
                return Err(LogError::Closed);
            }
        }
        inner.spare_notify.wait(epoch).await;
    }
}

fn needs_roll(inner: &Inner) -> bool {
    let st = inner.state.borrow();
    let first = st.queue.front().expect("flush_once runs with a non-empty queue");
    match st.segments.last() {
        None => true,
        Some(segment) if segment.sealed => true,
        Some(segment) => {
            let header = if segment.header_written { 0 } else { BLOCK_SIZE as u64 };
            let end = segment.write_position + header + first.bytes.len() as u64;
            end + padding_len(end, BLOCK_SIZE) as u64 > segment.capacity
        }
    }
}

/// Seals the active segment (index persisted) and renames the spare into place as the new
/// active segment starting at the first queued batch. Directory synced before any batch
/// lands in the new segment.
async fn roll(inner: &Inner) -> Result<(), String> {
    let base = inner.state.borrow().queue.front().expect("non-empty queue").header.index();
    let recycled = take_usable_spare(inner, base)
        .await
        .map_err(|e| format!("waiting for a spare segment: {e}"))?;
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
        persist_index(dir, faults, &name, &sealed)
            .await
            .map_err(|e| format!("persisting the index of {name}: {e}"))?;
        if let Some(last) = inner.state.borrow_mut().segments.last_mut() {
            last.sealed = true;
        }
    }
    let name = segment_name(first.base_offset(), first.index());
    dir.rename(SPARE_READY, &name).map_err(|e| format!("renaming the spare to {name}: {e}"))?;
    inner.state.borrow_mut().spare_ready = false;
    inner.spare_notify.notify_all();
    dir.sync(faults).await.map_err(|e| format!("directory sync after roll: {e}"))?;
    let file = open_segment_file(dir, &name).await.map_err(|e| e.to_string())?;
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

/// One flush: its batches copied into one aligned buffer (segment header block, batches,
/// padding marker), to be written at `start` of the active segment and fdatasynced.
struct Flush {
    file: Rc<DirectFile>,
    start: u64,
    wrote_header: bool,
    buf: Rc<DmaBuffer>,
    batches: Vec<Pending>,
    /// File position of each batch.
    positions: Vec<u64>,
}

impl Flush {
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
        // Every byte is written below (header block, batches, padding), so no zero-fill.
        let mut buf = file.alloc_for_overwrite(len);
        let bytes = buf.as_bytes_mut();
        if let Some(block) = header_block {
            bytes[..header_len].copy_from_slice(block);
        }
        let mut at = header_len;
        let mut positions = Vec::with_capacity(batches.len());
        for pending in &batches {
            positions.push(start + at as u64);
            bytes[at..at + pending.bytes.len()].copy_from_slice(&pending.bytes);
            at += pending.bytes.len();
        }
        if pad > 0 {
            write_padding(&mut bytes[at..at + pad]);
        }
        debug_assert_eq!(at + pad, len, "the flush buffer is written whole");
        let wrote_header = header_block.is_some();
        Flush { file, start, wrote_header, buf: Rc::new(buf), batches, positions }
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
        let fits_segment = end + padding_len(end, BLOCK_SIZE) as u64 <= capacity;
        let fits_flush = total + len <= config.flush_bytes_max as u64;
        if !(fits_segment && (fits_flush || count == 0)) {
            break;
        }
        total += len;
        count += 1;
    }
    st.queue.drain(..count).collect()
}

/// One flush: take, copy, write, fdatasync, resolve.
async fn flush_once(inner: &Inner) -> Result<(), String> {
    while needs_roll(inner) {
        roll(inner).await?;
    }
    let (file, start, header_block, batches) = {
        let mut st = inner.state.borrow_mut();
        let segment = st.segments.last().expect("rolled");
        let start = segment.write_position;
        let capacity = segment.capacity;
        let header_block = if segment.header_written {
            None
        } else {
            let mut block = vec![0u8; BLOCK_SIZE];
            encode_header(&segment.meta(), &mut block);
            Some(block)
        };
        let file = segment.file.clone();
        let base = start + header_block.as_ref().map_or(0, |b| b.len() as u64);
        let batches = take_batches(&mut st, &inner.config, base, capacity);
        assert!(!batches.is_empty(), "needs_roll guarantees the first batch fits");
        (file, start, header_block, batches)
    };
    let flush = Flush::build(file, start, header_block.as_deref(), batches);
    match write_and_sync(inner, &flush).await {
        Ok(()) => {
            commit(inner, &flush);
            Ok(())
        }
        Err(e) => {
            let reason = format!("flush to {:?} at {start} failed: {e}", flush.file.path());
            flush.fail(&reason);
            Err(reason)
        }
    }
}

/// Writes the flush, then fdatasyncs (timed for `FlushStats::fdatasync_latency_us`).
async fn write_and_sync(inner: &Inner, flush: &Flush) -> std::io::Result<()> {
    flush.file.write_shared_at(&inner.faults, flush.buf.clone(), flush.start).await?;
    let sync_started = std::time::Instant::now();
    flush.file.sync(&inner.faults).await?;
    let sync_us = u64::try_from(sync_started.elapsed().as_micros()).unwrap_or(u64::MAX);
    inner.state.borrow_mut().stats.fdatasync_latency_us.record(sync_us);
    Ok(())
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
    assert_eq!(segment.write_position, flush.start, "flushes are contiguous");
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
    st.durable_index = last.index();
    st.durable_offset = last.next_offset();
    let durable = st.durable_index;
    st.cache.evict(durable);
    st.stats.flushes += 1;
    st.stats.fdatasyncs += 1;
    st.stats.batches_flushed += batches.len() as u64;
    st.stats.bytes_written += flush.len();
    st.check();
    drop(st);
    for pending in batches {
        pending.slot.resolve(Ok(()));
    }
    inner.durable_notify.notify_all();
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
