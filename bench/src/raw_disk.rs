//! Raw-disk baseline: the same bytes as the log, written with io_uring, O_DIRECT and fdatasync
//! into a preallocated zero-filled file, without ringlog (design.md §9).
//!
//! The cadence mirrors a group-commit loop: one write of `write_size_bytes` at the next
//! block-aligned position, then one fdatasync, with the fsync linked after the write
//! (IO_LINK), so a failed write cancels its sync. With `queue_depth` D, up to D such pairs are
//! in flight at consecutive positions (a new pair is submitted as soon as one completes) —
//! the raw equivalent of a log with `flushes_in_flight_max` = D, so that the comparison gives
//! the baseline the same concurrency as the engine. The file wraps around when full; every
//! block of it was zero-filled and synced beforehand, so a steady-state fdatasync is a device
//! flush, not an extent conversion (design.md §11).
//!
//! # Safety
//!
//! This is the only module of the bench with `unsafe`. The ownership rule: an [`AlignedBuffer`]
//! owns its allocation for its whole life, and a submission queue entry that points into it is
//! only pushed by [`RawDisk::submit_pair`], whose caller ([`RawDiskSession::measure`]) keeps
//! the buffer alive and unmodified until both completions of that pair were reaped (it reaps
//! every pair in flight before returning, also on error) — so the kernel never reads a buffer
//! after it is freed, and the file descriptor outlives every entry that names it.

#![allow(unsafe_code)]

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use io_uring::{opcode, squeue, types, IoUring};

use crate::measure::{process_cpu_time, LatencyRecorder, RunMeasure};

/// O_DIRECT alignment of buffers, positions and lengths.
pub const BLOCK_SIZE: usize = 4096;
/// Largest single write the baseline issues.
pub const WRITE_SIZE_MAX_BYTES: usize = 64 << 20;
/// Most write+fdatasync pairs in flight at once (`RawDiskRun::queue_depth`).
pub const QUEUE_DEPTH_MAX: usize = 16;
/// Submission queue entries: one write and one fsync per pair in flight.
const RING_ENTRIES: u32 = 2 * QUEUE_DEPTH_MAX as u32;
/// Chunk of the zero-fill writes that preallocate the file.
const ZERO_FILL_CHUNK_BYTES: usize = 1 << 20;

/// The scratch file of a baseline, zero-filled once and reused by every measurement.
pub struct RawDiskSession {
    disk: RawDisk,
    /// Next write position (writes continue where the previous measurement stopped).
    position: u64,
}

/// One baseline measurement.
#[derive(Debug, Clone)]
pub struct RawDiskRun {
    /// Bytes per write (rounded up to a block multiple, as the log's padded flushes are).
    pub write_size_bytes: usize,
    /// How long to keep writing.
    pub duration: Duration,
    /// Rounds before measuring starts (warm-up), not counted.
    pub warmup_rounds: u64,
    /// Write+fdatasync pairs kept in flight (1..=`QUEUE_DEPTH_MAX`).
    pub queue_depth: usize,
}

/// A heap buffer aligned to `BLOCK_SIZE`, as O_DIRECT requires.
#[derive(Debug)]
pub struct AlignedBuffer {
    ptr: std::ptr::NonNull<u8>,
    layout: Layout,
}

/// A scratch file opened for O_DIRECT IO and the ring that drives it.
pub struct RawDisk {
    ring: IoUring,
    file: File,
    path: PathBuf,
    /// Size of the file; writes wrap at this position.
    capacity_bytes: u64,
    /// Whether SINGLE_ISSUER + DEFER_TASKRUN were accepted by the kernel.
    pub single_issuer: bool,
}

impl std::fmt::Debug for RawDisk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawDisk")
            .field("path", &self.path)
            .field("capacity_bytes", &self.capacity_bytes)
            .field("single_issuer", &self.single_issuer)
            .finish()
    }
}

impl RawDiskSession {
    /// Creates and zero-fills `raw-disk.dat` of `file_size_bytes` (rounded up to a block
    /// multiple) in `dir`, which must be on the filesystem under test.
    pub fn create(dir: &Path, file_size_bytes: u64) -> anyhow::Result<RawDiskSession> {
        let capacity = file_size_bytes.div_ceil(BLOCK_SIZE as u64) * BLOCK_SIZE as u64;
        let disk = RawDisk::create(&dir.join("raw-disk.dat"), capacity)?;
        Ok(RawDiskSession { disk, position: 0 })
    }

    /// Whether the ring got SINGLE_ISSUER + DEFER_TASKRUN.
    pub fn single_issuer(&self) -> bool {
        self.disk.single_issuer
    }

    /// Writes `run.write_size_bytes` + fdatasync in a loop, `run.queue_depth` pairs in flight,
    /// for `run.duration` (or until `stop`), and returns what it measured. Latency runs from
    /// a pair's submission to its fdatasync's completion.
    pub fn measure(
        &mut self,
        run: &RawDiskRun,
        stop: &dyn Fn() -> bool,
    ) -> anyhow::Result<RunMeasure> {
        let write_size = run.write_size_bytes.div_ceil(BLOCK_SIZE) * BLOCK_SIZE;
        if write_size == 0 || write_size > WRITE_SIZE_MAX_BYTES {
            bail!("raw-disk write size {write_size} outside 4096..={WRITE_SIZE_MAX_BYTES}");
        }
        if !(1..=QUEUE_DEPTH_MAX).contains(&run.queue_depth) {
            bail!("raw-disk queue depth {} outside 1..={QUEUE_DEPTH_MAX}", run.queue_depth);
        }
        if self.disk.capacity_bytes < (write_size * run.queue_depth) as u64 {
            bail!(
                "raw-disk file of {} bytes cannot hold {} writes of {write_size} bytes",
                self.disk.capacity_bytes,
                run.queue_depth
            );
        }
        // One buffer per slot: the kernel reads a slot's buffer until its pair completes.
        let buffers: Vec<AlignedBuffer> = (0..run.queue_depth)
            .map(|_| {
                let mut buffer = AlignedBuffer::new(write_size);
                fill_pattern(buffer.as_mut_slice());
                buffer
            })
            .collect();
        let mut pipeline = Pipeline::new(run.queue_depth);
        let result = self.run_pipeline(&buffers, &mut pipeline, run, stop);
        // Whatever happened, no pair may stay in flight once the buffers are dropped.
        let drained = self.disk.drain(&mut pipeline, write_size);
        let measure = result?;
        drained?;
        Ok(measure)
    }

    fn run_pipeline(
        &mut self,
        buffers: &[AlignedBuffer],
        pipeline: &mut Pipeline,
        run: &RawDiskRun,
        stop: &dyn Fn() -> bool,
    ) -> anyhow::Result<RunMeasure> {
        let write_size = buffers[0].len();
        let mut warmup_left = run.warmup_rounds;
        let mut latency = LatencyRecorder::new();
        let mut measure = RunMeasure::default();
        let mut cpu_before = process_cpu_time();
        let mut started = Instant::now();
        let mut measuring = warmup_left == 0;
        loop {
            let window_over = measuring && (started.elapsed() >= run.duration || stop());
            if !window_over {
                while let Some(slot) = pipeline.free_slot() {
                    if self.position + write_size as u64 > self.disk.capacity_bytes {
                        self.position = 0;
                    }
                    self.disk.submit_pair(&buffers[slot], slot, self.position)?;
                    pipeline.started(slot, Instant::now());
                    self.position = self.disk.next_position(self.position, write_size);
                }
            }
            if pipeline.in_flight() == 0 {
                break;
            }
            let (completed, failure) = self.disk.reap(pipeline, write_size)?;
            if let Some(reason) = failure {
                bail!("raw-disk IO failed on {}: {reason}", self.disk.path.display());
            }
            for begun in completed {
                if !measuring {
                    warmup_left = warmup_left.saturating_sub(1);
                    if warmup_left == 0 {
                        measuring = true;
                        cpu_before = process_cpu_time();
                        started = Instant::now();
                    }
                    continue;
                }
                if begun < started {
                    continue; // Submitted during the warm-up.
                }
                latency.record(begun.elapsed());
                measure.operations += 1;
                measure.bytes += write_size as u64;
                measure.fdatasyncs += 1;
                measure.disk_bytes += write_size as u64;
            }
        }
        measure.elapsed = started.elapsed();
        measure.cpu = process_cpu_time().saturating_sub(cpu_before);
        measure.set_latency(latency);
        Ok(measure)
    }
}

/// The slots of the pairs in flight: when each was submitted and which of its two
/// completions (write, fdatasync) have arrived.
#[derive(Debug)]
struct Pipeline {
    slots: Vec<Option<PairState>>,
}

#[derive(Clone, Copy, Debug)]
struct PairState {
    submitted: Instant,
    completions: u8,
}

impl Pipeline {
    fn new(depth: usize) -> Pipeline {
        Pipeline { slots: vec![None; depth] }
    }

    fn free_slot(&self) -> Option<usize> {
        self.slots.iter().position(Option::is_none)
    }

    fn started(&mut self, slot: usize, at: Instant) {
        self.slots[slot] = Some(PairState { submitted: at, completions: 0 });
    }

    fn in_flight(&self) -> usize {
        self.slots.iter().filter(|s| s.is_some()).count()
    }

    /// Notes one completion of `slot`'s pair; returns its submission time once both arrived.
    fn completed(&mut self, slot: usize) -> Option<Instant> {
        let state = self.slots.get_mut(slot)?.as_mut()?;
        state.completions += 1;
        if state.completions < 2 {
            return None;
        }
        let submitted = state.submitted;
        self.slots[slot] = None;
        Some(submitted)
    }
}

impl Drop for RawDiskSession {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.disk.path);
    }
}

impl std::fmt::Debug for RawDiskSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawDiskSession")
            .field("disk", &self.disk)
            .field("position", &self.position)
            .finish()
    }
}

impl RawDisk {
    /// Creates `path`, zero-fills `capacity_bytes` of it durably, and reopens it O_DIRECT.
    pub fn create(path: &Path, capacity_bytes: u64) -> anyhow::Result<RawDisk> {
        zero_fill(path, capacity_bytes)?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_DIRECT)
            .open(path)
            .with_context(|| format!("opening {} with O_DIRECT", path.display()))?;
        let (ring, single_issuer) = build_ring()?;
        Ok(RawDisk { ring, file, path: path.to_path_buf(), capacity_bytes, single_issuer })
    }

    /// The position after a write of `write_size` at `position`, wrapping at the end.
    pub fn next_position(&self, position: u64, write_size: usize) -> u64 {
        let next = position + write_size as u64;
        if next + write_size as u64 > self.capacity_bytes {
            0
        } else {
            next
        }
    }

    /// Submits the write of `buffer` at `position` and an fdatasync linked after it (a failed
    /// write cancels the sync), tagged with `slot`. The caller keeps `buffer` alive and
    /// unmodified until [`reap`](Self::reap) reported the pair complete (module's rule).
    fn submit_pair(
        &mut self,
        buffer: &AlignedBuffer,
        slot: usize,
        position: u64,
    ) -> anyhow::Result<()> {
        assert!(position % BLOCK_SIZE as u64 == 0);
        assert!(position + buffer.len() as u64 <= self.capacity_bytes);
        let fd = types::Fd(self.file.as_raw_fd());
        let length = u32::try_from(buffer.len()).context("write too large")?;
        let tag = (slot as u64) << 1;
        let write = opcode::Write::new(fd, buffer.ptr.as_ptr(), length)
            .offset(position)
            .build()
            .flags(squeue::Flags::IO_LINK)
            .user_data(tag);
        let sync =
            opcode::Fsync::new(fd).flags(types::FsyncFlags::DATASYNC).build().user_data(tag | 1);
        // SAFETY: the write names `buffer`, which the caller keeps alive and unmodified until
        // the pair's completions are reaped (module's rule; `measure` drains every pair before
        // its buffers drop), and `self.file`, owned by `self`, which outlives the ring's work
        // because `drain` runs before `self` can be dropped by `measure`'s caller.
        unsafe {
            let mut submission = self.ring.submission();
            submission.push(&write).map_err(|_| anyhow::anyhow!("submission queue full"))?;
            submission.push(&sync).map_err(|_| anyhow::anyhow!("submission queue full"))?;
        }
        Ok(())
    }

    /// Submits what is queued, waits for at least one completion, and returns the submission
    /// times of the pairs that completed, with the first IO failure seen (a short write or an
    /// error; the failing pair still counts as complete). `Err` only if the ring itself fails.
    fn reap(
        &mut self,
        pipeline: &mut Pipeline,
        write_len: usize,
    ) -> anyhow::Result<(Vec<Instant>, Option<String>)> {
        self.ring.submit_and_wait(1).context("io_uring submit")?;
        let mut done = Vec::new();
        let mut failure = None;
        for entry in self.ring.completion() {
            let tag = entry.user_data();
            let result = entry.result();
            let is_sync = tag & 1 == 1;
            if !is_sync && result != write_len as i32 {
                failure.get_or_insert(format!("write returned {result}"));
            }
            if is_sync && result != 0 {
                failure.get_or_insert(format!("fdatasync returned {result}"));
            }
            if let Some(submitted) = pipeline.completed((tag >> 1) as usize) {
                done.push(submitted);
            }
        }
        Ok((done, failure))
    }

    /// Waits until no pair is in flight. IO failures are not reported again (the measurement
    /// that left pairs in flight already failed or ended); a failing ring is.
    fn drain(&mut self, pipeline: &mut Pipeline, write_len: usize) -> anyhow::Result<()> {
        while pipeline.in_flight() > 0 {
            self.reap(pipeline, write_len)?;
        }
        Ok(())
    }
}

/// A ring with SINGLE_ISSUER + DEFER_TASKRUN if the kernel accepts them, else a plain one.
fn build_ring() -> anyhow::Result<(IoUring, bool)> {
    let tuned = IoUring::builder().setup_single_issuer().setup_defer_taskrun().build(RING_ENTRIES);
    match tuned {
        Ok(ring) => Ok((ring, true)),
        Err(_) => Ok((IoUring::new(RING_ENTRIES).context("creating an io_uring")?, false)),
    }
}

/// Writes `capacity` zero bytes to `path` and syncs them (data and size) to disk.
fn zero_fill(path: &Path, capacity: u64) -> anyhow::Result<()> {
    let mut file = File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let zeros = vec![0u8; ZERO_FILL_CHUNK_BYTES];
    let mut written = 0u64;
    while written < capacity {
        let chunk = (capacity - written).min(ZERO_FILL_CHUNK_BYTES as u64) as usize;
        file.write_all(&zeros[..chunk])
            .with_context(|| format!("zero-filling {}", path.display()))?;
        written += chunk as u64;
    }
    file.sync_all().with_context(|| format!("syncing {}", path.display()))?;
    Ok(())
}

/// Fills a buffer with incompressible-looking bytes (xorshift), like record payloads.
pub fn fill_pattern(bytes: &mut [u8]) {
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    for byte in bytes {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        *byte = state as u8;
    }
}

impl AlignedBuffer {
    /// A zeroed buffer of `len` bytes (a non-zero multiple of `BLOCK_SIZE`).
    pub fn new(len: usize) -> AlignedBuffer {
        assert!(len > 0 && len % BLOCK_SIZE == 0, "aligned buffer length {len}");
        let layout = Layout::from_size_align(len, BLOCK_SIZE).expect("valid layout");
        // SAFETY: `layout` has a non-zero size (asserted above).
        let raw = unsafe { alloc_zeroed(layout) };
        let ptr =
            std::ptr::NonNull::new(raw).unwrap_or_else(|| std::alloc::handle_alloc_error(layout));
        AlignedBuffer { ptr, layout }
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.layout.size()
    }

    /// Whether the buffer is empty (never: the length is asserted non-zero).
    pub fn is_empty(&self) -> bool {
        self.layout.size() == 0
    }

    /// The bytes, mutably.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: `ptr` points to `layout.size()` initialized (zeroed) bytes owned by `self`,
        // and `&mut self` guarantees no other reference exists.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.layout.size()) }
    }
}

impl Drop for AlignedBuffer {
    fn drop(&mut self) {
        // SAFETY: `ptr` was allocated by `alloc_zeroed` with exactly `layout` and is freed once.
        unsafe { dealloc(self.ptr.as_ptr(), self.layout) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_disk_writes_and_syncs_the_requested_bytes() {
        let dir = tempfile::tempdir_in(env!("CARGO_MANIFEST_DIR")).unwrap();
        let mut session = RawDiskSession::create(dir.path(), 1 << 20).unwrap();
        let run = RawDiskRun {
            write_size_bytes: 5000,
            duration: Duration::from_millis(100),
            warmup_rounds: 2,
            queue_depth: 1,
        };
        let measure = session.measure(&run, &|| false).unwrap();
        assert!(measure.operations > 0);
        assert_eq!(measure.bytes, measure.operations * 8192);
        assert_eq!(measure.fdatasyncs, measure.operations);
        // A second measurement reuses the file.
        assert!(session.measure(&run, &|| false).unwrap().operations > 0);
        drop(session);
        assert!(!dir.path().join("raw-disk.dat").exists());
    }

    #[test]
    fn raw_disk_keeps_several_pairs_in_flight_and_drains_them() {
        let dir = tempfile::tempdir_in(env!("CARGO_MANIFEST_DIR")).unwrap();
        // 5 writes of 8 KiB fit the file: positions wrap while 4 pairs are in flight.
        let mut session = RawDiskSession::create(dir.path(), 5 * 8192).unwrap();
        let run = RawDiskRun {
            write_size_bytes: 8192,
            duration: Duration::from_millis(100),
            warmup_rounds: 8,
            queue_depth: 4,
        };
        let measure = session.measure(&run, &|| false).unwrap();
        assert!(measure.operations > 0);
        assert_eq!(measure.bytes, measure.operations * 8192);
        assert_eq!(measure.fdatasyncs, measure.operations);
        let too_deep = RawDiskRun { queue_depth: QUEUE_DEPTH_MAX + 1, ..run.clone() };
        assert!(session.measure(&too_deep, &|| false).is_err());
        let too_big = RawDiskRun { queue_depth: 6, ..run };
        assert!(session.measure(&too_big, &|| false).is_err(), "6 writes cannot fit the file");
    }

    #[test]
    fn positions_wrap_before_the_end_of_the_file() {
        let dir = tempfile::tempdir_in(env!("CARGO_MANIFEST_DIR")).unwrap();
        let disk = RawDisk::create(&dir.path().join("f"), 3 * 4096).unwrap();
        assert_eq!(disk.next_position(0, 4096), 4096);
        assert_eq!(disk.next_position(4096, 4096), 8192);
        assert_eq!(disk.next_position(8192, 4096), 0);
    }
}
