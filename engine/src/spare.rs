//! The preallocator: the background task that keeps a spare segment ready for the flusher's
//! next roll, off the append path.
//!
//! Invariants: the spare's preparation never runs on the append path; a spare is published
//! (`SPARE_READY`) only after its bytes and the directory are durable; a failure latches the log.

#![forbid(unsafe_code)]

use std::rc::Rc;

use glommio::task::JoinHandle;
use glommio::{Latency, Shares, TaskQueueHandle};

use crate::io::DirectFile;
use crate::limits::{BLOCK_SIZE, IO_CHUNK_BYTES};
use crate::log::Inner;
use crate::segment::{SPARE_FILLING, SPARE_READY};

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
        if len == IO_CHUNK_BYTES {
            file.write_shared_at(faults, zeros.clone(), position).await?;
        } else {
            file.write_at(faults, file.alloc(len), position).await?;
        }
        position += len as u64;
    }
    file.sync(faults).await?;
    file.close().await?;
    dir.rename(SPARE_FILLING, SPARE_READY)?;
    dir.sync(faults).await?;
    Ok(true)
}
