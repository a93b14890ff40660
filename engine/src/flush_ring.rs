//! The flushes' IO ring: each flush's O_DIRECT write and its fdatasync go to the kernel
//! together, linked, on an io_uring of the engine's own (one per executor), instead of as two
//! glommio operations.
//!
//! Why: glommio 0.9.0 cannot link operations, so a flush through it is a write, a return to
//! the executor, and only then the fdatasync (bench/README.md, "Flush ring": the engine's
//! ratio to raw-disk before and after this module, same machine and command). Here one
//! submission carries three entries: the write, then (`IO_HARDLINK`) the fdatasync, then
//! (`IO_HARDLINK`, `SKIP_SUCCESS`) a one-byte `send` on a socket pair whose other end is a
//! glommio `UnixStream`: the executor's reactor wakes the reaper task when a pair is done,
//! without a thread of ours and without polling. Hard links run the next entry even after a
//! failure, so every submitted pair ends with exactly one notification byte; the write's and
//! the fdatasync's own results come from this ring's completion queue.
//!
//! Ordering of the wake-up: the kernel queues a completion as task work on the submitting
//! thread (this executor's) before the linked `send` runs, so once a byte arrived its pair's
//! completions are at most one `io_uring_enter` away; the reaper enters the ring
//! (`GETEVENTS`) until every notified pair has completed. A notification that never comes
//! (the `send` failed) is caught by a periodic look at the completion queue
//! (`SAFETY_NET_POLL`).
//!
//! # Safety
//!
//! This module is the engine's only `unsafe` besides `host_uring.rs`. The rule: a submitted
//! entry names a buffer and a file descriptor that the ring's in-flight table owns (`Rc`
//! clones of the flush's `FlushBuf` and `DirectFile`) until both the write's and the
//! fdatasync's completions were reaped; the table is only emptied by reaping, and dropping
//! the ring first waits (blocking) for every pair in flight. So the kernel never reads freed
//! memory nor a reused descriptor. The notification's byte is a `'static`.

#![allow(unsafe_code)]

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd};
use std::pin::Pin;
use std::rc::{Rc, Weak};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use io_uring::{opcode, squeue, types, IoUring};

use crate::io::DirectFile;
use crate::limits::BLOCK_SIZE;

/// Most flush pairs in flight on one executor's ring, all logs together; a flush beyond it
/// waits for a slot (`FlushRing::admit`).
pub const RING_PAIRS_MAX: usize = 64;
/// Submission queue entries: three per pair (write, fdatasync, notification).
const RING_ENTRIES: u32 = 256;
/// How often the reaper looks at the completion queue when no notification came
/// though pairs are in flight (a failed notification `send`; never seen).
const SAFETY_NET_POLL: Duration = Duration::from_millis(20);
/// Attempts at `io_uring_enter` for one submission when it fails transiently (EINTR, EAGAIN,
/// EBUSY).
const SUBMIT_ATTEMPTS: u32 = 16;
/// The notification byte every pair sends when done.
static NOTIFICATION: [u8; 1] = [1];

/// The bytes of one flush: one region, block-aligned in memory and in length, kept alive by
/// the `Bytes` that view it (the batches and padding of an arena run, or one copied buffer).
#[derive(Debug)]
pub(crate) struct FlushBuf {
    parts: Vec<Bytes>,
    len: usize,
}

impl FlushBuf {
    /// `parts` as one region if they are adjacent in memory, start block-aligned and sum to a
    /// block multiple; otherwise gives them back.
    pub(crate) fn region(parts: Vec<Bytes>) -> Result<FlushBuf, Vec<Bytes>> {
        let mut parts = parts;
        parts.retain(|p| !p.is_empty());
        let adjacent =
            parts.windows(2).all(|w| w[0].as_ptr() as usize + w[0].len() == w[1].as_ptr() as usize);
        let len: usize = parts.iter().map(Bytes::len).sum();
        let aligned = parts.first().is_some_and(|p| p.as_ptr() as usize % BLOCK_SIZE == 0);
        if adjacent && aligned && len % BLOCK_SIZE == 0 {
            Ok(FlushBuf { parts, len })
        } else {
            Err(parts)
        }
    }

    /// One copied buffer (`bytes`, block-aligned and a block multiple long).
    pub(crate) fn copied(bytes: Bytes) -> FlushBuf {
        match FlushBuf::region(vec![bytes]) {
            Ok(buf) => buf,
            Err(_) => panic!("a copied flush buffer is allocated aligned and padded"),
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    fn as_ptr(&self) -> *const u8 {
        self.parts[0].as_ptr()
    }

    /// The region's bytes, in order (tests and the fault-free read-back).
    #[cfg(test)]
    pub(crate) fn to_vec(&self) -> Vec<u8> {
        self.parts.iter().flat_map(|p| p.iter().copied()).collect()
    }
}

/// What a flush's IO came to: the write's result, then the fdatasync's (`None`: not asked).
#[derive(Debug)]
pub(crate) struct PairOutcome {
    pub write: io::Result<()>,
    pub sync: Option<io::Result<()>>,
}

/// One pair in flight: what the kernel reads (owned until reaped), and what came back.
struct InFlight {
    _buf: Rc<FlushBuf>,
    _file: Rc<DirectFile>,
    len: usize,
    with_sync: bool,
    write: Option<i32>,
    sync: Option<i32>,
    waker: Option<Waker>,
    outcome: Option<PairOutcome>,
    /// Its flush task is gone: removed (and its slot freed) once finished.
    abandoned: bool,
}

impl InFlight {
    /// Notes the completion tagged `tag` (even: the write; odd: the fdatasync).
    fn record(&mut self, tag: u64, result: i32) {
        if tag & 1 == 0 {
            self.write = Some(result);
        } else {
            self.sync = Some(result);
        }
    }

    fn finished(&self) -> bool {
        self.write.is_some() && (!self.with_sync || self.sync.is_some())
    }
}

/// One executor's flush ring (see the module doc). Not `Send`.
pub(crate) struct FlushRing {
    executor_id: usize,
    ring: RefCell<IoUring>,
    /// The end the kernel sends notifications to.
    notify_tx: std::os::unix::net::UnixStream,
    /// The end the reaper reads (taken by the reaper while it runs).
    notify_rx: RefCell<Option<glommio::net::UnixStream>>,
    /// A reaper task runs (one at a time, only while pairs are in flight).
    reaping: Cell<bool>,
    pairs: RefCell<HashMap<u64, InFlight>>,
    next_id: Cell<u64>,
    /// Pairs admitted (submitted or about to be), at most `RING_PAIRS_MAX`.
    admitted: Cell<usize>,
    /// Pairs whose notification byte arrived.
    notified: Cell<u64>,
    /// Pairs whose completions were all reaped.
    completed: Cell<u64>,
    slot_freed: crate::notify::Notify,
}

impl std::fmt::Debug for FlushRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FlushRing")
            .field("executor_id", &self.executor_id)
            .field("in_flight", &self.pairs.borrow().len())
            .field("admitted", &self.admitted.get())
            .finish()
    }
}

thread_local! {
    /// The current executor's ring while any log uses it (the logs hold it; this does not).
    static RING: RefCell<Option<Weak<FlushRing>>> = const { RefCell::new(None) };
}

impl FlushRing {
    /// The ring of the current glommio executor, created on first use; it lives as long as a
    /// log holds it. A thread that runs several executors one after another gets one ring each.
    /// The reaper task runs only while pairs are in flight (`reap_until_idle`).
    pub(crate) fn current() -> io::Result<Rc<FlushRing>> {
        let executor_id = glommio::executor().id();
        let existing = RING.with(|r| r.borrow().as_ref().and_then(Weak::upgrade));
        if let Some(ring) = existing.filter(|ring| ring.executor_id == executor_id) {
            return Ok(ring);
        }
        let ring = Rc::new(FlushRing::new(executor_id)?);
        RING.with(|r| *r.borrow_mut() = Some(Rc::downgrade(&ring)));
        Ok(ring)
    }

    fn new(executor_id: usize) -> io::Result<FlushRing> {
        let ring = IoUring::builder().build(RING_ENTRIES)?;
        let (tx, rx) = std::os::unix::net::UnixStream::pair()?;
        rx.set_nonblocking(true)?;
        // SAFETY: `rx` is a connected, non-blocking Unix stream socket whose descriptor we own
        // and hand over (`into_raw_fd`); glommio's stream closes it when dropped.
        let rx = unsafe { glommio::net::UnixStream::from_raw_fd(rx.into_raw_fd()) };
        let ring = FlushRing {
            executor_id,
            ring: RefCell::new(ring),
            notify_tx: tx,
            notify_rx: RefCell::new(Some(rx)),
            reaping: Cell::new(false),
            pairs: RefCell::new(HashMap::with_capacity(RING_PAIRS_MAX)),
            next_id: Cell::new(0),
            admitted: Cell::new(0),
            notified: Cell::new(0),
            completed: Cell::new(0),
            slot_freed: crate::notify::Notify::default(),
        };
        Ok(ring)
    }

    /// Writes `buf` whole at `position` of `file` and, if `with_sync`, fdatasyncs `file` after
    /// the write completed (linked: one submission). Resolves when both are done.
    pub(crate) async fn write_and_sync(
        self: &Rc<Self>,
        file: &Rc<DirectFile>,
        buf: &Rc<FlushBuf>,
        position: u64,
        with_sync: bool,
    ) -> PairOutcome {
        loop {
            let epoch = self.slot_freed.epoch();
            if self.admitted.get() < RING_PAIRS_MAX {
                break;
            }
            self.slot_freed.wait(epoch).await;
        }
        self.admitted.set(self.admitted.get() + 1);
        let id = self.next_id.get();
        self.next_id.set(id + 1);
        if let Err(error) = self.submit(id, file, buf, position, with_sync) {
            // The slot stays taken while the table holds the pair (freed when it finishes).
            if !self.pairs.borrow().contains_key(&id) {
                self.release_slot();
            }
            return PairOutcome { write: Err(error), sync: None };
        }
        if !self.reaping.replace(true) {
            glommio::spawn_local(reap_until_idle(self.clone())).detach();
        }
        PairDone { ring: self, id }.await
    }

    fn submit(
        &self,
        id: u64,
        file: &Rc<DirectFile>,
        buf: &Rc<FlushBuf>,
        position: u64,
        with_sync: bool,
    ) -> io::Result<()> {
        let fd = types::Fd(file.raw_fd());
        let len = u32::try_from(buf.len()).map_err(|_| io::Error::other("flush too large"))?;
        let write = opcode::Write::new(fd, buf.as_ptr(), len)
            .offset(position)
            .build()
            .flags(squeue::Flags::IO_HARDLINK)
            .user_data(id << 1);
        let sync = opcode::Fsync::new(fd)
            .flags(types::FsyncFlags::DATASYNC)
            .build()
            .user_data(id << 1 | 1);
        let notify = opcode::Send::new(
            types::Fd(self.notify_tx.as_raw_fd()),
            NOTIFICATION.as_ptr(),
            NOTIFICATION.len() as u32,
        )
        .build()
        .flags(squeue::Flags::SKIP_SUCCESS)
        .user_data(u64::MAX);
        let entries: Vec<squeue::Entry> = if with_sync {
            vec![write, sync.flags(squeue::Flags::IO_HARDLINK), notify]
        } else {
            vec![write, notify]
        };
        self.pairs.borrow_mut().insert(
            id,
            InFlight {
                _buf: buf.clone(),
                _file: file.clone(),
                len: buf.len(),
                with_sync,
                write: None,
                sync: None,
                waker: None,
                outcome: None,
                abandoned: false,
            },
        );
        let mut ring = self.ring.borrow_mut();
        // SAFETY: the entries name `buf` and `file`'s descriptor, both owned by the in-flight
        // table entry inserted above until both completions are reaped (module's rule), and
        // the `'static` notification byte. The queue has room: at most `RING_PAIRS_MAX` pairs
        // of at most 3 entries are in flight, fewer than `RING_ENTRIES`, and every push is
        // submitted below before the ring is borrowed again.
        let pushed = unsafe { ring.submission().push_multiple(&entries) };
        if pushed.is_err() {
            self.pairs.borrow_mut().remove(&id);
            return Err(io::Error::other("flush ring submission queue full"));
        }
        let mut attempts = 0;
        loop {
            match ring.submit() {
                Ok(_) => return Ok(()),
                Err(error) if attempts < SUBMIT_ATTEMPTS && transient(&error) => {
                    attempts += 1;
                    // EBUSY: completions wait to be posted; make room.
                    drop(ring);
                    self.reap();
                    ring = self.ring.borrow_mut();
                }
                Err(error) => {
                    // The entries may still be in the submission queue and go to the kernel
                    // with a later submission: the table keeps what they name until then.
                    if let Some(pair) = self.pairs.borrow_mut().get_mut(&id) {
                        pair.abandoned = true;
                    }
                    return Err(error);
                }
            }
        }
    }

    fn release_slot(&self) {
        self.admitted.set(self.admitted.get() - 1);
        self.slot_freed.notify_all();
    }

    /// Reaps every completion in the queue: wakes the flushes whose pair finished, drops the
    /// finished pairs nobody waits for.
    fn reap(&self) {
        let mut finished = 0;
        let mut freed = 0;
        let mut ring = self.ring.borrow_mut();
        let mut pairs = self.pairs.borrow_mut();
        for entry in ring.completion() {
            let tag = entry.user_data();
            if tag == u64::MAX {
                // A notification `send` failed (successes are skipped).
                tracing::warn!(result = entry.result(), "flush ring notification failed");
                continue;
            }
            let id = tag >> 1;
            let Some(pair) = pairs.get_mut(&id) else {
                continue;
            };
            pair.record(tag, entry.result());
            if !pair.finished() || pair.outcome.is_some() {
                continue;
            }
            finished += 1;
            if pair.abandoned {
                pairs.remove(&id);
                freed += 1;
                continue;
            }
            pair.outcome = Some(outcome_of(pair));
            if let Some(waker) = pair.waker.take() {
                waker.wake();
            }
        }
        drop((ring, pairs));
        self.completed.set(self.completed.get() + finished);
        for _ in 0..freed {
            self.release_slot();
        }
    }

    /// Enters the ring with `GETEVENTS` so that completions queued as task work on this thread
    /// are posted (see the module doc), and reaps them.
    fn enter_and_reap(&self) -> io::Result<()> {
        self.ring.borrow().submitter().submit_and_wait(1)?;
        self.reap();
        Ok(())
    }

    /// Pairs notified whose completions were not reaped yet.
    fn owed(&self) -> u64 {
        self.notified.get().saturating_sub(self.completed.get())
    }
}

fn transient(error: &io::Error) -> bool {
    matches!(error.raw_os_error(), Some(libc::EINTR | libc::EAGAIN | libc::EBUSY))
}

fn outcome_of(pair: &InFlight) -> PairOutcome {
    let write = match pair.write.expect("finished") {
        n if n < 0 => Err(io::Error::from_raw_os_error(-n)),
        n if n as usize != pair.len => Err(io::Error::new(
            io::ErrorKind::WriteZero,
            format!("short write: {n} of {} bytes", pair.len),
        )),
        _ => Ok(()),
    };
    let sync =
        pair.sync.map(|n| if n < 0 { Err(io::Error::from_raw_os_error(-n)) } else { Ok(()) });
    PairOutcome { write, sync }
}

/// Resolves when pair `id` finished; takes its outcome and frees its slot.
struct PairDone<'a> {
    ring: &'a Rc<FlushRing>,
    id: u64,
}

impl Future for PairDone<'_> {
    type Output = PairOutcome;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<PairOutcome> {
        let mut pairs = self.ring.pairs.borrow_mut();
        let pair = pairs.get_mut(&self.id).expect("a pair stays in the table until taken");
        if pair.outcome.is_none() {
            pair.waker = Some(cx.waker().clone());
            return Poll::Pending;
        }
        let outcome = pairs.remove(&self.id).and_then(|p| p.outcome).expect("checked");
        drop(pairs);
        self.ring.release_slot();
        Poll::Ready(outcome)
    }
}

impl Drop for PairDone<'_> {
    fn drop(&mut self) {
        // Dropped before it took its outcome (its task was cancelled): if the pair finished,
        // free it now; otherwise the table keeps the buffer and the file until the kernel is
        // done, and `reap` frees it then.
        let mut pairs = self.ring.pairs.borrow_mut();
        let Some(pair) = pairs.get_mut(&self.id) else {
            return;
        };
        if pair.outcome.is_some() {
            pairs.remove(&self.id);
            drop(pairs);
            self.ring.release_slot();
        } else {
            pair.abandoned = true;
            pair.waker = None;
        }
    }
}

/// The reaper: runs while pairs are in flight — waits for notification bytes, reaps
/// completions, wakes the flushes — and ends when none is left unfinished, so that no task of
/// the ring waits on IO while the executor is idle or shutting down (a task parked on a glommio
/// source when its executor is dropped is leaked, with the executor's state it references).
async fn reap_until_idle(ring: Rc<FlushRing>) {
    use futures_lite::AsyncReadExt;
    let mut rx = ring.notify_rx.borrow_mut().take().expect("one reaper at a time");
    let mut bytes = [0u8; RING_PAIRS_MAX];
    loop {
        if let Err(error) = settle(&ring) {
            tracing::error!(%error, "flush ring enter failed");
        }
        let unfinished = ring.pairs.borrow().values().any(|p| p.outcome.is_none());
        if !unfinished {
            break;
        }
        let read = futures_lite::future::or(async { Some(rx.read(&mut bytes).await) }, async {
            glommio::timer::sleep(SAFETY_NET_POLL).await;
            None
        })
        .await;
        match read {
            Some(Ok(0)) | Some(Err(_)) => {
                tracing::error!("flush ring notification socket failed; polling instead");
                glommio::timer::sleep(Duration::from_millis(1)).await;
            }
            Some(Ok(n)) => ring.notified.set(ring.notified.get() + n as u64),
            None => {}
        }
    }
    *ring.notify_rx.borrow_mut() = Some(rx);
    ring.reaping.set(false);
}

/// Reaps until every notified pair's completions were reaped.
fn settle(ring: &FlushRing) -> io::Result<()> {
    ring.reap();
    while ring.owed() > 0 {
        ring.enter_and_reap()?;
    }
    Ok(())
}

impl Drop for FlushRing {
    fn drop(&mut self) {
        // The kernel may still read buffers the table owns: wait for every pair in flight.
        let ring = self.ring.get_mut();
        let pairs = self.pairs.get_mut();
        while pairs.values().any(|p| !p.finished()) {
            if ring.submit_and_wait(1).is_err() {
                break;
            }
            for entry in ring.completion() {
                let tag = entry.user_data();
                if let Some(pair) = pairs.get_mut(&(tag >> 1)) {
                    pair.record(tag, entry.result());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::DirectFile;
    use crate::limits::BLOCK_SIZE;

    fn run<F: Future<Output = ()> + 'static>(make: impl FnOnce() -> F + Send + 'static) {
        glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
            .io_memory(256 << 10)
            .spawn(make)
            .expect("executor")
            .join()
            .expect("join");
    }

    async fn open(dir: &std::path::Path) -> Rc<DirectFile> {
        crate::io::probe_direct_io(dir).await.expect("O_DIRECT");
        Rc::new(DirectFile::open(&dir.join("f")).await.expect("open"))
    }

    fn block(fill: u8) -> Rc<FlushBuf> {
        use bytes::BufMut;
        let mut chunk = crate::append_arena::aligned_chunk(BLOCK_SIZE);
        chunk.put_bytes(fill, BLOCK_SIZE);
        Rc::new(FlushBuf::copied(chunk.freeze()))
    }

    #[test]
    fn a_region_must_be_adjacent_aligned_and_whole_blocks() {
        use bytes::BufMut;
        let mut chunk = crate::append_arena::aligned_chunk(3 * BLOCK_SIZE);
        chunk.put_bytes(1, 3 * BLOCK_SIZE);
        let all = chunk.freeze();
        let (a, b, c) = (all.slice(0..100), all.slice(100..BLOCK_SIZE), all.slice(BLOCK_SIZE..));
        let region = FlushBuf::region(vec![a.clone(), b.clone(), Bytes::new(), c.clone()]).unwrap();
        assert_eq!(region.len(), 3 * BLOCK_SIZE);
        assert_eq!(region.to_vec(), all.to_vec());
        assert!(FlushBuf::region(vec![a.clone(), c.clone()]).is_err(), "not adjacent");
        assert!(FlushBuf::region(vec![b.clone(), c]).is_err(), "not aligned");
        assert!(FlushBuf::region(vec![a, b.slice(..100)]).is_err(), "not whole blocks");
        assert!(FlushBuf::region(Vec::new()).is_err(), "empty");
    }

    #[test]
    fn more_pairs_than_the_ring_holds_all_complete_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_path_buf();
        run(move || async move {
            let file = open(&path).await;
            let ring = FlushRing::current().unwrap();
            let count = RING_PAIRS_MAX * 2 + 5;
            let tasks: Vec<_> = (0..count)
                .map(|i| {
                    let (ring, file) = (ring.clone(), file.clone());
                    let buf = block(i as u8);
                    glommio::spawn_local(async move {
                        let at = (i * BLOCK_SIZE) as u64;
                        ring.write_and_sync(&file, &buf, at, i % 3 != 0).await
                    })
                })
                .collect();
            for (i, task) in tasks.into_iter().enumerate() {
                let outcome = task.await;
                outcome.write.unwrap();
                assert_eq!(outcome.sync.is_some(), i % 3 != 0, "pair {i}");
                if let Some(sync) = outcome.sync {
                    sync.unwrap();
                }
            }
            assert_eq!(ring.admitted.get(), 0, "every slot freed");
            assert!(ring.pairs.borrow().is_empty());
            for _ in 0..1000 {
                if !ring.reaping.get() {
                    break;
                }
                glommio::timer::sleep(Duration::from_millis(1)).await;
            }
            assert!(!ring.reaping.get(), "the reaper ends once no pair is in flight");
            assert!(ring.notify_rx.borrow().is_some(), "and hands the socket back");
            let bytes = std::fs::read(path.join("f")).unwrap();
            for i in 0..count {
                assert!(bytes[i * BLOCK_SIZE..(i + 1) * BLOCK_SIZE].iter().all(|b| *b == i as u8));
            }
        });
    }

    #[test]
    fn a_failed_write_is_reported_and_its_pair_still_notifies() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_path_buf();
        run(move || async move {
            let file = open(&path).await;
            let ring = FlushRing::current().unwrap();
            // O_DIRECT refuses a position that is not block-aligned: EINVAL from the kernel.
            let outcome = ring.write_and_sync(&file, &block(1), 100, true).await;
            let error = outcome.write.unwrap_err();
            assert_eq!(error.raw_os_error(), Some(libc::EINVAL), "{error}");
            // The linked fdatasync ran anyway (hard link): the pair ended with its notification.
            assert!(outcome.sync.is_some());
            // The ring keeps working.
            let outcome = ring.write_and_sync(&file, &block(2), 0, true).await;
            outcome.write.unwrap();
            outcome.sync.unwrap().unwrap();
            assert_eq!(ring.admitted.get(), 0);
        });
    }

    #[test]
    fn a_cancelled_flush_keeps_its_buffer_until_the_kernel_is_done() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_path_buf();
        run(move || async move {
            let file = open(&path).await;
            let ring = FlushRing::current().unwrap();
            let mut cancelled = 0;
            for round in 0..20u8 {
                let buf = block(round);
                let weak = Rc::downgrade(&buf);
                let pending = ring.write_and_sync(&file, &buf, 0, true);
                // Polled once (submitted), then dropped: the task that waited is gone.
                let mut pending = Box::pin(pending);
                if let Some(done) = futures_lite::future::poll_once(&mut pending).await {
                    // Finished within its first poll (its completions were reaped while it
                    // was submitted): nothing to cancel this round, but it must have
                    // succeeded and let go of its buffer.
                    let write = done.write.map_err(|e| format!("{e}"));
                    let sync = done.sync.map(|s| s.map_err(|e| format!("{e}")));
                    assert!(
                        write.is_ok() && matches!(sync, Some(Ok(()))),
                        "round {round}: a pair answered at its first poll failed: write \
                         {write:?}, sync {sync:?}"
                    );
                    drop(pending);
                    drop(buf);
                    assert!(weak.upgrade().is_none(), "a finished pair released its buffer");
                    continue;
                }
                cancelled += 1;
                drop(pending);
                drop(buf);
                assert!(weak.upgrade().is_some(), "the ring's table holds the buffer in flight");
                // The next pair completes and the abandoned one is freed on its own.
                let outcome = ring.write_and_sync(&file, &block(9), 0, true).await;
                outcome.write.unwrap();
                while ring.admitted.get() > 0 {
                    glommio::timer::sleep(Duration::from_millis(1)).await;
                }
                assert!(weak.upgrade().is_none(), "the abandoned pair's buffer was released");
            }
            assert!(cancelled >= 10, "only {cancelled} of 20 pairs were still in flight");
        });
    }

    #[test]
    fn each_executor_of_a_thread_gets_its_own_ring() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_path_buf();
        std::thread::spawn(move || {
            let mut ids = Vec::new();
            for round in 0..3u8 {
                let path = path.clone();
                let id = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
                    .io_memory(256 << 10)
                    .make()
                    .unwrap()
                    .run(async move {
                        let file = open(&path).await;
                        let ring = FlushRing::current().unwrap();
                        let outcome = ring.write_and_sync(&file, &block(round), 0, true).await;
                        outcome.write.unwrap();
                        outcome.sync.unwrap().unwrap();
                        ring.executor_id
                    });
                ids.push(id);
            }
            ids.dedup();
            assert_eq!(ids.len(), 3);
        })
        .join()
        .unwrap();
    }
}
