//! The preallocator: the background task that keeps a spare segment ready for the flusher's
//! next roll, off the append path.
//!
//! A spare is either zero-filled (`SPARE_FILLING` grown to the segment size), or, with
//! `LogConfig::recycle_segments`, a recycled segment: retention kept up to
//! `RECYCLED_SPARES_MAX` victims as candidates (`spare.recycled-{stale_index_end}`), and the
//! preallocator prepares one by overwriting block 0 with a recycled-spare header (flags
//! `RECYCLED | SPARE`, the stale bound), fdatasync, rename to `SPARE_READY`, directory sync —
//! one block written instead of a whole segment. Zero-fill stays the fallback.
//!
//! A full disk (ENOSPC or EDQUOT from a zero-fill write) is not a failure: the preallocator
//! marks the log short of space (`State::no_space`: appends answer `StorageFull`), keeps the
//! half-filled file (it only ever holds zeros, so the fill resumes where it stopped), and
//! retries after a doubling wait (`SPACE_RETRY_BACKOFF_INITIAL` ..= `SPACE_RETRY_BACKOFF_MAX`),
//! at once when retention deleted or kept segments. The first spare it publishes clears the
//! mark: appends resume by themselves.
//!
//! Invariants: the spare's preparation never runs on the append path; a spare is published
//! (`SPARE_READY`) only after its bytes and the directory are durable; any failure other
//! than a full disk's ENOSPC on a write that grows the spare (an fdatasync, a rename, a
//! directory sync, EIO) latches the log. **Stale bound:** every batch left in a recycled file has an index below its
//! `stale_index_end`, and a recycled spare becomes only a segment whose base index is `>=`
//! that bound: retention makes candidates only of segments wholly below the new log start that
//! were never cut (`Segment::cut`), so their bound is `<= start_index`; a reset to a lower
//! index deletes candidates above it; the preallocator discards a candidate above the log
//! start, and the roll and the reset discard a spare above the base they need
//! (`take_usable_spare`), falling back to zero-fill. A candidate still read by a fetch (its
//! file shared) is not prepared until the reader is done.

#![forbid(unsafe_code)]

use std::rc::Rc;

use glommio::task::JoinHandle;
use glommio::{Latency, Shares, TaskQueueHandle};

use crate::error::LogError;
use crate::group_commit::wait_spare;
use crate::io::{is_no_space, DirectFile};
use crate::limits::{
    BLOCK_SIZE, IO_CHUNK_BYTES, SPACE_RETRY_BACKOFF_INITIAL, SPACE_RETRY_BACKOFF_MAX,
};
use crate::log::Inner;
use crate::segment::{
    encode_spare_header, recycle_candidate_name, RecycledSpare, SPARE_FILLING, SPARE_READY,
};
use crate::types::LogIndex;

/// Most retention victims kept as recycling candidates (each keeps a segment's disk space
/// beyond retention until it is reused): one for the next spare, one in reserve.
pub const RECYCLED_SPARES_MAX: usize = 2;

/// A retention victim kept for recycling.
#[derive(Debug)]
pub(crate) struct RecycleCandidate {
    /// Every batch in the file has an index below this (the victim's next index).
    pub stale_index_end: LogIndex,
    /// The victim's open file while readers may still hold it (None after a reopen).
    pub file: Option<Rc<DirectFile>>,
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

/// What one preparation made.
enum Prepared {
    ZeroFilled,
    Recycled(LogIndex),
    /// The candidate was unusable and deleted: try again.
    Discarded,
    /// The log closed meanwhile.
    Closed,
}

/// Keeps one spare segment ready (recycled if a candidate is usable, else zero-filled), off
/// the append path.
async fn run_preallocator(inner: Rc<Inner>) {
    let mut backoff = SpaceBackoff::default();
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
        let prepared = match take_candidate(&inner) {
            Ok(Some(bound)) => recycle_spare(&inner, bound).await,
            Ok(None) => match fill_spare(&inner).await {
                Ok(true) => Ok(Prepared::ZeroFilled),
                Ok(false) => Ok(Prepared::Closed),
                Err(FillError::NoSpace(e)) => {
                    inner.enter_no_space(format!("zero-filling the spare segment: {e}"));
                    // After the mark's own wake-up: only a later event cuts the wait short.
                    let epoch = inner.spare_notify.epoch();
                    backoff.wait(&inner, epoch).await;
                    continue;
                }
                Err(FillError::Failed(e)) => Err(e),
            },
            Err(e) => Err(e),
        };
        let recycled = match prepared {
            Ok(Prepared::ZeroFilled) => None,
            Ok(Prepared::Recycled(bound)) => Some(bound),
            Ok(Prepared::Discarded) => continue,
            Ok(Prepared::Closed) => return,
            Err(e) => {
                inner.latch(format!("preparing the spare segment failed: {e}"));
                return;
            }
        };
        backoff = SpaceBackoff::default();
        let mut st = inner.state.borrow_mut();
        if let Some(reason) = st.no_space.take() {
            tracing::info!(dir = ?inner.dir.path(), %reason, "space is back: the log takes appends again");
        }
        st.spare_ready = true;
        st.spare_recycled = recycled;
        if recycled.is_some() {
            st.stats.spares_recycled += 1;
        } else {
            st.stats.spares_filled += 1;
        }
        drop(st);
        inner.spare_notify.notify_all();
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
///
/// `FillError::NoSpace`: creating or growing the file met a full disk (ENOSPC, EDQUOT); the
/// file is kept and the fill resumes at the next attempt. Anything else is `Failed`.
async fn fill_spare(inner: &Inner) -> Result<bool, FillError> {
    let dir = &inner.dir;
    let faults = &inner.faults;
    let capacity = inner.config.segment_size_bytes;
    let path = dir.join(SPARE_FILLING);
    if std::fs::metadata(&path).is_ok_and(|m| m.len() > capacity) {
        dir.remove(SPARE_FILLING)?;
    }
    let file = match DirectFile::open(&path).await {
        Ok(file) => file,
        Err(crate::io::OpenFileError::DirectIoUnsupported(e)) => return Err(FillError::Failed(e)),
        Err(crate::io::OpenFileError::Io(e)) => return Err(FillError::growing(e)),
    };
    let mut position = file.file_size().await?;
    position -= position % BLOCK_SIZE as u64;
    // One zeroed chunk, written again and again: zeroing 1 MiB per write cost ~10% of the
    // shard's CPU under a full append load.
    let zeros = std::rc::Rc::new(file.alloc(IO_CHUNK_BYTES));
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
        let written = if len == IO_CHUNK_BYTES {
            file.write_shared_at(faults, zeros.clone(), position).await
        } else {
            file.write_allocating_at(faults, file.alloc(len), position).await
        };
        if let Err(e) = written {
            // Kept as it is: every byte below its size reads as zero.
            let _ = file.close().await;
            return Err(FillError::growing(e));
        }
        position += len as u64;
    }
    file.sync(faults).await?;
    file.close().await?;
    dir.rename(SPARE_FILLING, SPARE_READY)?;
    dir.sync(faults).await?;
    Ok(true)
}

/// Why a zero-fill stopped.
#[derive(Debug)]
enum FillError {
    /// The disk is full: retried later, not a failure.
    NoSpace(std::io::Error),
    /// Latches the log.
    Failed(std::io::Error),
}

impl FillError {
    /// The error of creating or growing the file: `NoSpace` for ENOSPC/EDQUOT.
    fn growing(e: std::io::Error) -> FillError {
        if is_no_space(&e) {
            FillError::NoSpace(e)
        } else {
            FillError::Failed(e)
        }
    }
}

impl From<std::io::Error> for FillError {
    fn from(e: std::io::Error) -> FillError {
        FillError::Failed(e)
    }
}

/// Doubling waits between retries on a full disk, from `SPACE_RETRY_BACKOFF_INITIAL` to
/// `SPACE_RETRY_BACKOFF_MAX`.
#[derive(Debug)]
pub(crate) struct SpaceBackoff {
    next: std::time::Duration,
}

impl Default for SpaceBackoff {
    fn default() -> Self {
        SpaceBackoff { next: SPACE_RETRY_BACKOFF_INITIAL }
    }
}

impl SpaceBackoff {
    /// Waits the current delay, or less if `spare_notify` fires after `epoch` (a spare was
    /// made or taken, retention ran, the log closed or failed); then doubles the delay.
    pub(crate) async fn wait(&mut self, inner: &Inner, epoch: u64) {
        let delay = self.next;
        self.next = (self.next * 2).min(SPACE_RETRY_BACKOFF_MAX);
        futures_lite::future::or(glommio::timer::sleep(delay), inner.spare_notify.wait(epoch))
            .await;
    }
}

/// Takes a recycling candidate that is ready to be prepared. Candidates whose stale bound is
/// above the log start are deleted (never reused), and all of them while recycling is off (a
/// log reopened with `recycle_segments = false` gives their disk space back); a candidate
/// whose file a reader still holds is left for a later spare.
fn take_candidate(inner: &Inner) -> std::io::Result<Option<LogIndex>> {
    let mut st = inner.state.borrow_mut();
    let start = st.start_index;
    let recycle = inner.config.recycle_segments;
    let mut discarded = Vec::new();
    st.recycle_candidates.retain(|c| {
        let keep = recycle && c.stale_index_end <= start;
        if !keep {
            discarded.push(c.stale_index_end);
        }
        keep
    });
    let free = st
        .recycle_candidates
        .iter()
        .position(|c| c.file.as_ref().is_none_or(|file| Rc::strong_count(file) == 1));
    let taken = free.map(|at| st.recycle_candidates.remove(at).stale_index_end);
    drop(st);
    for bound in discarded {
        inner.dir.remove(&recycle_candidate_name(bound))?;
    }
    Ok(taken)
}

/// Prepares candidate `bound` as the spare: recycled-spare header in block 0, fdatasync,
/// rename to `SPARE_READY`, directory sync. A candidate of another size is deleted instead.
/// A crash anywhere leaves the candidate (prepared again at the next open) or the spare.
async fn recycle_spare(inner: &Inner, bound: LogIndex) -> std::io::Result<Prepared> {
    let dir = &inner.dir;
    let faults = &inner.faults;
    let capacity = inner.config.segment_size_bytes;
    let name = recycle_candidate_name(bound);
    let path = dir.join(&name);
    match std::fs::metadata(&path) {
        Ok(meta) if meta.len() == capacity => {}
        Ok(_) => {
            dir.remove(&name)?;
            return Ok(Prepared::Discarded);
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Prepared::Discarded),
        Err(e) => return Err(e),
    }
    let file = match DirectFile::open(&path).await {
        Ok(file) => file,
        Err(crate::io::OpenFileError::DirectIoUnsupported(e))
        | Err(crate::io::OpenFileError::Io(e)) => return Err(e),
    };
    let mut block = file.alloc(BLOCK_SIZE);
    let spare = RecycledSpare { stale_index_end: bound, segment_size: capacity };
    encode_spare_header(&spare, block.as_bytes_mut());
    file.write_at(faults, block, 0).await?;
    file.sync(faults).await?;
    file.close().await?;
    dir.rename(&name, SPARE_READY)?;
    dir.sync(faults).await?;
    Ok(Prepared::Recycled(bound))
}

/// Waits for the spare and makes sure it may become a segment whose first index is `base`:
/// a recycled spare whose stale bound is above `base` is deleted and another one awaited
/// (zero-filled, since candidates above the log start are discarded too). Returns the spare's
/// stale bound (`None`: zero-filled).
pub(crate) async fn take_usable_spare(
    inner: &Inner,
    base: LogIndex,
) -> Result<Option<LogIndex>, LogError> {
    loop {
        wait_spare(inner).await?;
        let recycled = inner.state.borrow().spare_recycled;
        match recycled {
            Some(bound) if bound > base => {
                inner.dir.remove(SPARE_READY).map_err(|e| LogError::Failed {
                    reason: format!("deleting a recycled spare above index {base}: {e}"),
                })?;
                let mut st = inner.state.borrow_mut();
                st.spare_ready = false;
                st.spare_recycled = None;
                drop(st);
                inner.spare_notify.notify_all();
            }
            _ => return Ok(recycled),
        }
    }
}
