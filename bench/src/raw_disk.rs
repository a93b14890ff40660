//! Raw-disk baseline: the same bytes as the log, written with io_uring, O_DIRECT and fdatasync
//! into a preallocated zero-filled file, without ringlog (design.md §9).
//!
//! The cadence mirrors a group-commit loop: one write of `write_size_bytes` at the next
//! block-aligned position, then one fdatasync, then the next write — queue depth 1, with the
//! fsync linked after the write (IO_LINK), so a failed write cancels its sync. The file wraps
//! around when full; every block of it was zero-filled and synced beforehand, so a steady-state
//! fdatasync is a device flush, not an extent conversion (design.md §11).
//!
//! # Safety
//!
//! This is the only module of the bench with `unsafe`. The ownership rule: an [`AlignedBuffer`]
//! owns its allocation for its whole life, and a submission queue entry that points into it is
//! only pushed by [`RawDisk::write_and_sync`], which waits for both completions of that entry
//! pair before returning — so the kernel never reads the buffer after the borrow ends and the
//! file descriptor outlives every entry that names it.

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
/// Submission queue entries: one write and one fsync per round, with room to spare.
const RING_ENTRIES: u32 = 8;
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

    /// Writes `run.write_size_bytes` + fdatasync in a loop for `run.duration` (or until
    /// `stop`), and returns what it measured.
    pub fn measure(
        &mut self,
        run: &RawDiskRun,
        stop: &dyn Fn() -> bool,
    ) -> anyhow::Result<RunMeasure> {
        let write_size = run.write_size_bytes.div_ceil(BLOCK_SIZE) * BLOCK_SIZE;
        if write_size == 0 || write_size > WRITE_SIZE_MAX_BYTES {
            bail!("raw-disk write size {write_size} outside 4096..={WRITE_SIZE_MAX_BYTES}");
        }
        if self.disk.capacity_bytes < write_size as u64 {
            bail!(
                "raw-disk file of {} bytes cannot hold one {write_size}-byte write",
                self.disk.capacity_bytes
            );
        }
        let mut buffer = AlignedBuffer::new(write_size);
        fill_pattern(buffer.as_mut_slice());
        for _ in 0..run.warmup_rounds {
            self.write_next(&buffer)?;
        }
        let mut latency = LatencyRecorder::new();
        let mut measure = RunMeasure::default();
        let cpu_before = process_cpu_time();
        let started = Instant::now();
        while started.elapsed() < run.duration && !stop() {
            let round_started = Instant::now();
            self.write_next(&buffer)?;
            latency.record(round_started.elapsed());
            measure.operations += 1;
            measure.bytes += write_size as u64;
            measure.fdatasyncs += 1;
            measure.disk_bytes += write_size as u64;
        }
        measure.elapsed = started.elapsed();
        measure.cpu = process_cpu_time().saturating_sub(cpu_before);
        measure.set_latency(latency);
        Ok(measure)
    }

    fn write_next(&mut self, buffer: &AlignedBuffer) -> anyhow::Result<()> {
        if self.position + buffer.len() as u64 > self.disk.capacity_bytes {
            self.position = 0;
        }
        self.disk.write_and_sync(buffer, self.position)?;
        self.position = self.disk.next_position(self.position, buffer.len());
        Ok(())
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

    /// Writes `buffer` at `position` and fdatasyncs, as one linked pair; fails on any short
    /// write or error (a failed write cancels the sync).
    pub fn write_and_sync(&mut self, buffer: &AlignedBuffer, position: u64) -> anyhow::Result<()> {
        assert!(position % BLOCK_SIZE as u64 == 0);
        assert!(position + buffer.len() as u64 <= self.capacity_bytes);
        let fd = types::Fd(self.file.as_raw_fd());
        let length = u32::try_from(buffer.len()).context("write too large")?;
        let write = opcode::Write::new(fd, buffer.ptr.as_ptr(), length)
            .offset(position)
            .build()
            .flags(squeue::Flags::IO_LINK)
            .user_data(1);
        let sync = opcode::Fsync::new(fd).flags(types::FsyncFlags::DATASYNC).build().user_data(2);
        // SAFETY: the write names `buffer` (alive and unmoved for this whole call, see the
        // module's rule) and `self.file` (owned by `self`); both entries complete before
        // `wait_for` returns below, and we return only after that.
        unsafe {
            let mut submission = self.ring.submission();
            submission.push(&write).map_err(|_| anyhow::anyhow!("submission queue full"))?;
            submission.push(&sync).map_err(|_| anyhow::anyhow!("submission queue full"))?;
        }
        self.wait_for(2, buffer.len())
    }

    fn wait_for(&mut self, entries: usize, write_len: usize) -> anyhow::Result<()> {
        let mut completed = 0;
        let mut failure = None;
        while completed < entries {
            self.ring.submit_and_wait(entries - completed).context("io_uring submit")?;
            for entry in self.ring.completion() {
                completed += 1;
                let result = entry.result();
                match entry.user_data() {
                    1 if result != write_len as i32 => {
                        failure.get_or_insert(format!("write returned {result}"));
                    }
                    2 if result != 0 => {
                        failure.get_or_insert(format!("fdatasync returned {result}"));
                    }
                    _ => {}
                }
            }
        }
        match failure {
            Some(reason) => bail!("raw-disk IO failed on {}: {reason}", self.path.display()),
            None => Ok(()),
        }
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
    fn positions_wrap_before_the_end_of_the_file() {
        let dir = tempfile::tempdir_in(env!("CARGO_MANIFEST_DIR")).unwrap();
        let disk = RawDisk::create(&dir.path().join("f"), 3 * 4096).unwrap();
        assert_eq!(disk.next_position(0, 4096), 4096);
        assert_eq!(disk.next_position(4096, 4096), 8192);
        assert_eq!(disk.next_position(8192, 4096), 0);
    }
}
