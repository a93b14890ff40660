//! Group commit: the flusher task that turns queued batches into one aligned write and one
//! fdatasync, and the preallocator task that keeps a zero-filled spare segment ready.
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
use glommio::task::JoinHandle;
use glommio::{Latency, Shares, TaskQueueHandle};

use crate::batch::{padding_len, write_padding, BatchHeader};
use crate::error::LogError;
use crate::io::DirectFile;
use crate::limits::{BLOCK_SIZE, IO_CHUNK_BYTES};
use crate::log::Inner;
use crate::notify::DurableSlot;
use crate::recovery::{open_segment_file, persist_index, sealed_index};
use crate::segment::{encode_header, segment_name, Segment, SPARE_FILLING, SPARE_READY};
use crate::segment_index::SegmentIndex;
use crate::types::LogIndex;

/// A stamped batch waiting for its flush.
#[derive(Debug)]
pub(crate) struct Pending {
    pub header: BatchHeader,
    pub bytes: Bytes,
    pub slot: Rc<DurableSlot>,
}

/// Counters of the log's IO (observable by tests and the benchmark).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
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
}

/// Runs until the log closes (and its queue is drained) or fails.
pub(crate) async fn run_flusher(inner: Rc<Inner>) {
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
    wait_spare(inner).await.map_err(|e| format!("waiting for a spare segment: {e}"))?;
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
    });
    st.stats.segments_rolled += 1;
    Ok(())
}

/// One flush: take, write, fdatasync, resolve.
async fn flush_once(inner: &Inner) -> Result<(), String> {
    while needs_roll(inner) {
        roll(inner).await?;
    }
    let config = &inner.config;
    // Take whole batches that fit the flush and the segment.
    let (batches, file, start, header_block, pad) = {
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
        let mut total = 0u64;
        let mut count = 0;
        for pending in st.queue.iter() {
            let len = pending.bytes.len() as u64;
            let end = base + total + len;
            let fits_segment = end + padding_len(end, BLOCK_SIZE) as u64 <= capacity;
            let fits_flush = total + len <= config.flush_bytes_max as u64;
            if count > 0 && !(fits_segment && fits_flush) {
                break;
            }
            assert!(fits_segment, "needs_roll guarantees the first batch fits");
            total += len;
            count += 1;
        }
        let batches: Vec<Pending> = st.queue.drain(..count).collect();
        let pad = padding_len(base + total, BLOCK_SIZE);
        (batches, file, start, header_block, pad)
    };
    let result = write_and_sync(inner, &file, start, header_block.as_deref(), &batches, pad).await;
    match result {
        Ok((written, positions)) => {
            commit(inner, &batches, &positions, start, written, header_block.is_some());
            Ok(())
        }
        Err(e) => {
            let reason = format!("flush to {:?} at {start} failed: {e}", file.path());
            for pending in &batches {
                pending.slot.resolve(Err(LogError::Failed { reason: reason.clone() }));
            }
            Err(reason)
        }
    }
}

/// Copies the flush into one aligned buffer, writes it and fdatasyncs. Returns the bytes
/// written and each batch's file position.
async fn write_and_sync(
    inner: &Inner,
    file: &DirectFile,
    start: u64,
    header_block: Option<&[u8]>,
    batches: &[Pending],
    pad: usize,
) -> std::io::Result<(u64, Vec<u64>)> {
    let header_len = header_block.map_or(0, <[u8]>::len);
    let total: usize = batches.iter().map(|p| p.bytes.len()).sum();
    let len = header_len + total + pad;
    // Every byte is written below (header block, batches, padding), so no zero-fill.
    let mut buf = file.alloc_for_overwrite(len);
    let bytes = buf.as_bytes_mut();
    if let Some(block) = header_block {
        bytes[..header_len].copy_from_slice(block);
    }
    let mut at = header_len;
    let mut positions = Vec::with_capacity(batches.len());
    for pending in batches {
        positions.push(start + at as u64);
        bytes[at..at + pending.bytes.len()].copy_from_slice(&pending.bytes);
        at += pending.bytes.len();
    }
    if pad > 0 {
        write_padding(&mut bytes[at..at + pad]);
    }
    debug_assert_eq!(at + pad, len, "the flush buffer is written whole");
    file.write_at(&inner.faults, buf, start).await?;
    file.sync(&inner.faults).await?;
    Ok((len as u64, positions))
}

/// Makes a completed flush visible: segment metadata, durable index, cache, waiters.
fn commit(
    inner: &Inner,
    batches: &[Pending],
    positions: &[u64],
    start: u64,
    written: u64,
    wrote_header: bool,
) {
    let end = start + written;
    let interval = inner.config.index_interval_bytes;
    let mut st = inner.state.borrow_mut();
    let last = batches.last().expect("a flush has at least one batch").header;
    let segment = st.segments.last_mut().expect("flushed into the active segment");
    segment.header_written |= wrote_header;
    for (pending, position) in batches.iter().zip(positions) {
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
    st.stats.bytes_written += written;
    st.check();
    drop(st);
    for pending in batches {
        pending.slot.resolve(Ok(()));
    }
    inner.durable_notify.notify_all();
}

/// CPU shares of the preallocator's task queue, against glommio's default queue (1000
/// shares) where the flusher and the appends run: when both are runnable the flusher wins.
const BACKGROUND_SHARES: usize = 50;

thread_local! {
    /// The low-share task queue of this thread's executor: (executor id, queue).
    static BACKGROUND_QUEUE: std::cell::Cell<Option<(usize, TaskQueueHandle)>> =
        const { std::cell::Cell::new(None) };
}

/// Spawns the preallocator on the current executor in a low-share, latency-insensitive task
/// queue (one per executor, created on first use), so that zero-filling yields the CPU to
/// the flusher and the appends. The zero-fill still runs whenever a spare is missing: its IO
/// is a real cost of the log, only its CPU priority is lowered.
pub(crate) fn spawn_preallocator(inner: Rc<Inner>) -> JoinHandle<()> {
    let executor = glommio::executor();
    let id = executor.id();
    let queue = match BACKGROUND_QUEUE.get() {
        Some((owner, queue)) if owner == id => queue,
        _ => {
            let queue = executor.create_task_queue(
                Shares::Static(BACKGROUND_SHARES),
                Latency::NotImportant,
                "ringlog-preallocator",
            );
            BACKGROUND_QUEUE.set(Some((id, queue)));
            queue
        }
    };
    match glommio::spawn_local_into(run_preallocator(inner.clone()), queue) {
        Ok(task) => task.detach(),
        // A stale handle (another executor that reused this thread and id): default queue.
        Err(_) => glommio::spawn_local(run_preallocator(inner)).detach(),
    }
}

/// Keeps one zero-filled spare segment ready, off the append path.
async fn run_preallocator(inner: Rc<Inner>) {
    loop {
        let epoch = inner.spare_notify.epoch();
        let (stop, ready) = {
            let st = inner.state.borrow();
            // After close, keep serving a flusher that still drains its queue (Drop path).
            (st.failed.is_some() || (st.closed && st.queue.is_empty()), st.spare_ready)
        };
        if stop {
            return;
        }
        if ready {
            inner.spare_notify.wait(epoch).await;
            continue;
        }
        match fill_spare(&inner).await {
            Ok(true) => {
                let mut st = inner.state.borrow_mut();
                st.spare_ready = true;
                st.stats.spares_filled += 1;
                drop(st);
                inner.spare_notify.notify_all();
            }
            Ok(false) => return,
            Err(e) => {
                inner.latch(format!("zero-filling the spare segment failed: {e}"));
                return;
            }
        }
    }
}

/// Zero-fills `SPARE_FILLING` to the segment size, fdatasyncs it and renames it
/// `SPARE_READY` (directory synced). `Ok(false)` if the log closed meanwhile.
///
/// A fill interrupted by a close, a failed write or a crash is resumed, not restarted: this
/// file only ever receives zeros, so every byte below its size reads as zero (written zeros,
/// or at worst a block the filesystem allocated but never wrote, which reads as zeros too).
/// The final fdatasync makes the whole file durable before the rename publishes the spare.
/// A file larger than the segment size (the configuration changed) is restarted.
async fn fill_spare(inner: &Inner) -> std::io::Result<bool> {
    let dir = &inner.dir;
    let faults = &inner.faults;
    let capacity = inner.config.segment_size_bytes;
    let path = dir.join(SPARE_FILLING);
    if std::fs::metadata(&path).is_ok_and(|m| m.len() > capacity) {
        dir.remove(SPARE_FILLING)?;
    }
    let file = match DirectFile::open(&path).await {
        Ok(file) => file,
        Err(crate::io::OpenFileError::DirectIoUnsupported(e))
        | Err(crate::io::OpenFileError::Io(e)) => return Err(e),
    };
    let mut position = file.file_size().await?;
    position -= position % BLOCK_SIZE as u64;
    while position < capacity {
        let abandon = {
            let st = inner.state.borrow();
            st.closed && st.queue.is_empty()
        };
        if abandon {
            // Kept: the next open resumes the fill where it stopped.
            file.close().await?;
            return Ok(false);
        }
        let len = (IO_CHUNK_BYTES as u64).min(capacity - position) as usize;
        let buf = file.alloc(len);
        file.write_at(faults, buf, position).await?;
        position += len as u64;
    }
    file.sync(faults).await?;
    file.close().await?;
    dir.rename(SPARE_FILLING, SPARE_READY)?;
    dir.sync(faults).await?;
    Ok(true)
}
