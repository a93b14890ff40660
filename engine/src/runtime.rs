//! Runtime: the host checks and the per-shard glommio executor threads.
//!
//! One OS thread per shard runs one glommio `LocalExecutor` with an explicit `io_memory`.
//! glommio's reactor (`glommio-0.9.0/src/sys/uring.rs`, `Reactor::new`) allocates one
//! `io_memory` buffer (rounded up to 4 KiB, at least 64 KiB) and registers it with each of its
//! three rings (main, latency, poll). The kernel charges every registration separately against
//! the user's locked memory unless the process holds CAP_IPC_LOCK, so a process needs
//! `shards × 3 × io_memory` of RLIMIT_MEMLOCK. Past the limit glommio only logs a warning and
//! silently falls back to slower unregistered IO; below 512 KiB it refuses to start at all.
//! [`check_memlock`] turns both into a typed error before any executor starts.
//!
//! Invariants: an executor thread reports exactly one [`ExecutorStart`] outcome on its start
//! channel before running its future; executors park when idle unless `spin` is configured.

use std::fmt;
use std::thread::JoinHandle;
use std::time::Duration;

use glommio::{LocalExecutor, LocalExecutorBuilder, Placement};

/// glommio rounds `io_memory` up to this alignment.
const IO_MEMORY_ALIGN_BYTES: u64 = 4096;
/// glommio allocates at least this much IO memory per executor.
const IO_MEMORY_MIN_BYTES: u64 = 64 * 1024;
/// glommio registers the IO memory with this many rings per executor (main, latency, poll).
pub const REGISTERED_RINGS_PER_EXECUTOR: u64 = 3;
/// glommio's `Reactor::new` fails below this RLIMIT_MEMLOCK, whatever the capabilities.
pub const GLOMMIO_MEMLOCK_MIN_BYTES: u64 = 512 * 1024;
/// How long an executor spins before parking when `spin` is enabled.
pub const SPIN_BEFORE_PARK: Duration = Duration::from_micros(50);
/// Linux capability number of CAP_IPC_LOCK (include/uapi/linux/capability.h).
const CAP_IPC_LOCK: u32 = 14;

/// Why the memlock check refused to start the engine.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MemlockError {
    /// The limit cannot hold the IO memory every executor registers with io_uring: this
    /// start's executors plus those this process already runs (other logs or nodes).
    #[error(
        "RLIMIT_MEMLOCK is {limit_bytes} bytes but {shards} shard(s) × {rings} rings × \
         io_memory {io_memory_bytes} bytes = {required_bytes} bytes must be locked{}; fix: raise \
         the limit (`ulimit -l {required_kib}`, `LimitMEMLOCK={}` in the systemd \
         unit, or `memlock` in /etc/security/limits.conf), or lower io_memory or the shard count",
        held_text(*.held_bytes),
        .required_bytes + .held_bytes
    )]
    TooLow {
        limit_bytes: u64,
        /// What this start's executors lock.
        required_bytes: u64,
        /// What executors this process runs already lock (earlier logs or nodes not closed).
        held_bytes: u64,
        /// `held_bytes + required_bytes`, in KiB rounded up: the least limit that works.
        required_kib: u64,
        shards: usize,
        rings: u64,
        io_memory_bytes: u64,
    },
    /// glommio refuses to create a reactor below its fixed minimum, even with CAP_IPC_LOCK.
    #[error(
        "RLIMIT_MEMLOCK is {limit_bytes} bytes, below glommio's minimum of {minimum_bytes} \
         bytes (it refuses to start even as root); fix: `ulimit -l {minimum_kib}` or more"
    )]
    BelowGlommioMinimum { limit_bytes: u64, minimum_bytes: u64, minimum_kib: u64 },
    /// getrlimit failed.
    #[error("cannot read RLIMIT_MEMLOCK: {0}")]
    Unreadable(String),
}

/// A passed memlock check: fine, or over the limit but allowed by CAP_IPC_LOCK.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemlockOutcome {
    /// The limit covers the requirement.
    WithinLimit { required_bytes: u64, limit_bytes: Option<u64> },
    /// Over the limit, but the process holds CAP_IPC_LOCK, which the kernel lets bypass it.
    /// Reported as a warning: the same configuration fails for an unprivileged user.
    ExceededButPrivileged { required_bytes: u64, limit_bytes: u64 },
}

/// Bytes of IO memory one executor actually allocates for a requested `io_memory`.
pub fn effective_io_memory_bytes(io_memory_bytes: usize) -> u64 {
    let aligned = (io_memory_bytes as u64).div_ceil(IO_MEMORY_ALIGN_BYTES) * IO_MEMORY_ALIGN_BYTES;
    aligned.max(IO_MEMORY_MIN_BYTES)
}

/// Bytes of locked memory `shards` executors with `io_memory_bytes` each need.
pub fn memlock_required_bytes(shards: usize, io_memory_bytes: usize) -> u64 {
    (shards as u64)
        .saturating_mul(REGISTERED_RINGS_PER_EXECUTOR)
        .saturating_mul(effective_io_memory_bytes(io_memory_bytes))
}

/// Pure check of a memlock limit (`None` = unlimited) against a configuration, for a process
/// that runs no other executor.
pub fn check_memlock(
    limit_bytes: Option<u64>,
    shards: usize,
    io_memory_bytes: usize,
    has_cap_ipc_lock: bool,
) -> Result<MemlockOutcome, MemlockError> {
    check_memlock_held(limit_bytes, 0, shards, io_memory_bytes, has_cap_ipc_lock)
}

/// Pure check of a memlock limit against a configuration started beside executors that
/// already lock `held_bytes` (the kernel charges them all against the same limit).
pub fn check_memlock_held(
    limit_bytes: Option<u64>,
    held_bytes: u64,
    shards: usize,
    io_memory_bytes: usize,
    has_cap_ipc_lock: bool,
) -> Result<MemlockOutcome, MemlockError> {
    let required_bytes = memlock_required_bytes(shards, io_memory_bytes);
    let Some(limit) = limit_bytes else {
        return Ok(MemlockOutcome::WithinLimit { required_bytes, limit_bytes: None });
    };
    if limit < GLOMMIO_MEMLOCK_MIN_BYTES {
        return Err(MemlockError::BelowGlommioMinimum {
            limit_bytes: limit,
            minimum_bytes: GLOMMIO_MEMLOCK_MIN_BYTES,
            minimum_kib: GLOMMIO_MEMLOCK_MIN_BYTES / 1024,
        });
    }
    let total = required_bytes.saturating_add(held_bytes);
    if total <= limit {
        return Ok(MemlockOutcome::WithinLimit { required_bytes, limit_bytes: Some(limit) });
    }
    if has_cap_ipc_lock {
        return Ok(MemlockOutcome::ExceededButPrivileged { required_bytes, limit_bytes: limit });
    }
    Err(MemlockError::TooLow {
        limit_bytes: limit,
        required_bytes,
        held_bytes,
        required_kib: total.div_ceil(1024),
        shards,
        rings: REGISTERED_RINGS_PER_EXECUTOR,
        io_memory_bytes: effective_io_memory_bytes(io_memory_bytes),
    })
}

fn held_text(held_bytes: u64) -> String {
    if held_bytes == 0 {
        String::new()
    } else {
        format!(
            " beside the {held_bytes} bytes this process's running logs or nodes lock already \
             (close them, or allow the sum)"
        )
    }
}

/// Locked memory the executors this process runs hold, as reserved by
/// [`reserve_host_memlock`]: the kernel charges every executor's rings against one limit, so
/// a check per start alone let four logs together exceed what one was refused for.
static MEMLOCK_HELD_BYTES: std::sync::Mutex<u64> = std::sync::Mutex::new(0);

/// Locked memory reserved for a start's executors; released when dropped (after the
/// executors ended: the holder drops it once their threads are joined).
#[derive(Debug)]
pub struct MemlockReservation {
    bytes: u64,
}

impl MemlockReservation {
    /// Bytes reserved.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }
}

impl Drop for MemlockReservation {
    fn drop(&mut self) {
        let mut held = MEMLOCK_HELD_BYTES.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        *held = held.saturating_sub(self.bytes);
    }
}

/// Locked memory this process's running executors hold now (reserved and not released).
pub fn memlock_held_bytes() -> u64 {
    *MEMLOCK_HELD_BYTES.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// [`check_memlock_held`] against this process's limit, capabilities and what its running
/// executors hold; on success reserves this start's bytes until the reservation drops. The
/// check and the reservation are one step, so two starts racing cannot both pass on the
/// same room.
pub fn reserve_host_memlock(
    shards: usize,
    io_memory_bytes: usize,
) -> Result<(MemlockOutcome, MemlockReservation), MemlockError> {
    let limit = current_memlock_limit()?;
    let cap = has_cap_ipc_lock();
    let mut held = MEMLOCK_HELD_BYTES.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let outcome = check_memlock_held(limit, *held, shards, io_memory_bytes, cap)?;
    let bytes = memlock_required_bytes(shards, io_memory_bytes);
    *held = held.saturating_add(bytes);
    Ok((outcome, MemlockReservation { bytes }))
}

/// The calling process's soft RLIMIT_MEMLOCK (`None` = unlimited).
///
/// Read from `/proc/self/limits`, which prints exactly what getrlimit(2) returns; that keeps
/// this crate free of `unsafe`.
pub fn current_memlock_limit() -> Result<Option<u64>, MemlockError> {
    let limits = std::fs::read_to_string("/proc/self/limits")
        .map_err(|error| MemlockError::Unreadable(format!("/proc/self/limits: {error}")))?;
    parse_memlock_soft_limit(&limits)
}

/// Parses the "Max locked memory" soft limit out of a `/proc/<pid>/limits` text.
pub fn parse_memlock_soft_limit(limits: &str) -> Result<Option<u64>, MemlockError> {
    let line = limits
        .lines()
        .find_map(|line| line.strip_prefix("Max locked memory"))
        .ok_or_else(|| MemlockError::Unreadable("no \"Max locked memory\" line".into()))?;
    let soft = line
        .split_whitespace()
        .next()
        .ok_or_else(|| MemlockError::Unreadable("empty \"Max locked memory\" line".into()))?;
    if soft == "unlimited" {
        return Ok(None);
    }
    soft.parse::<u64>()
        .map(Some)
        .map_err(|error| MemlockError::Unreadable(format!("soft limit {soft:?}: {error}")))
}

/// Whether the effective capability set holds CAP_IPC_LOCK (read from /proc/self/status).
pub fn has_cap_ipc_lock() -> bool {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return false;
    };
    status
        .lines()
        .find_map(|line| line.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .is_some_and(|caps| caps & (1 << CAP_IPC_LOCK) != 0)
}

/// Where the executor threads run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Pinning {
    /// Pin each shard to a CPU of its own that no other ringlog process of the host has
    /// claimed, only when one allowed CPU stays free besides (for the kernel's IO completion
    /// work and foreign threads, see design.md §11), else unpinned (`placement.rs`).
    #[default]
    Auto,
    /// Always pin shard `i` to the `i % n`-th of the `n` CPUs the process may run on.
    Always,
    /// Never pin.
    Never,
}

/// Number of CPUs this process may run on.
pub fn available_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// How one executor thread is built.
#[derive(Debug, Clone)]
pub struct ExecutorSpec {
    /// Thread name (shown by `top -H`, in panics and in errors).
    pub name: String,
    /// CPU to pin to, or `None` for unpinned.
    pub cpu: Option<usize>,
    /// Bytes of IO memory glommio registers with each ring.
    pub io_memory_bytes: usize,
    /// Spin briefly before parking (dedicated cores only).
    pub spin: bool,
}

/// A failure to bring up one executor thread.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ExecutorStart {
    /// The OS refused to create the thread.
    #[error("cannot spawn executor thread {name}: {source}")]
    Thread { name: String, source: std::io::Error },
    /// glommio refused to create the executor.
    #[error("glommio cannot create executor {name}: {reason}")]
    Executor { name: String, reason: String },
}

/// Spawns a thread that builds the executor described by `spec` and runs `main` on it.
///
/// `main` receives `Ok(())` from the caller's point of view only after the executor exists:
/// the function blocks until the thread reports whether `LocalExecutorBuilder::make` worked.
pub fn spawn_executor<G, F>(spec: ExecutorSpec, main: G) -> Result<JoinHandle<()>, ExecutorStart>
where
    G: FnOnce() -> F + Send + 'static,
    F: std::future::Future<Output = ()> + 'static,
{
    let (started_tx, started_rx) = crossbeam_channel::bounded::<Result<(), String>>(1);
    let thread_name = spec.name.clone();
    let handle = std::thread::Builder::new()
        .name(spec.name.clone())
        .spawn(move || {
            let executor = match build_executor(&spec) {
                Ok(executor) => executor,
                Err(reason) => {
                    let _ = started_tx.send(Err(reason));
                    return;
                }
            };
            let _ = started_tx.send(Ok(()));
            executor.run(async move {
                main().await;
                settle_dropped_files().await;
            });
        })
        .map_err(|source| ExecutorStart::Thread { name: thread_name.clone(), source })?;
    match started_rx.recv() {
        Ok(Ok(())) => Ok(handle),
        Ok(Err(reason)) => {
            let _ = handle.join();
            Err(ExecutorStart::Executor { name: thread_name, reason })
        }
        Err(_) => {
            let reason = match handle.join() {
                Ok(()) => "thread ended before reporting".to_string(),
                Err(panic) => panic_message(&panic),
            };
            Err(ExecutorStart::Executor { name: thread_name, reason })
        }
    }
}

/// How long an executor keeps its reactor running after its main future ended.
pub const SETTLE_BEFORE_EXIT: Duration = Duration::from_millis(1);

/// Lets the reactor submit the closes of files dropped by the main future's end.
///
/// A glommio file dropped without an explicit `close().await` (every engine file shared
/// through `Rc`: segments, the partition directory, the hard-state file, ...) only queues an
/// asynchronous close on its executor's ring (glommio-0.9.0 `GlommioFile::drop` →
/// `Reactor::async_close`); the ring submits it on its next cycle. The main future drops the
/// last of them as it ends, and an executor that stops right then never submits them: each
/// `Engine` start/shutdown leaked the partition directory's and every open segment's fd (and
/// pinned deleted segments' space). One timer sleep makes the reactor cycle once more, which
/// submits every queued close; by then nothing is left to drop them again.
pub(crate) async fn settle_dropped_files() {
    glommio::timer::sleep(SETTLE_BEFORE_EXIT).await;
}

fn build_executor(spec: &ExecutorSpec) -> Result<LocalExecutor, String> {
    let placement = spec.cpu.map_or(Placement::Unbound, Placement::Fixed);
    let mut builder =
        LocalExecutorBuilder::new(placement).name(&spec.name).io_memory(spec.io_memory_bytes);
    if spec.spin {
        builder = builder.spin_before_park(SPIN_BEFORE_PARK);
    }
    builder.make().map_err(|error| error.to_string())
}

/// Text of a thread panic payload.
pub fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(text) = panic.downcast_ref::<&str>() {
        (*text).to_string()
    } else if let Some(text) = panic.downcast_ref::<String>() {
        text.clone()
    } else {
        "executor thread panicked".to_string()
    }
}

impl fmt::Display for Pinning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = match self {
            Pinning::Auto => "auto",
            Pinning::Always => "always",
            Pinning::Never => "never",
        };
        f.write_str(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: usize = 1024 * 1024;

    #[test]
    fn memlock_requirement_counts_three_rings_per_shard() {
        assert_eq!(memlock_required_bytes(2, 8 * MIB), 2 * 3 * 8 * MIB as u64);
        assert_eq!(memlock_required_bytes(1, 1), 3 * 64 * 1024);
        assert_eq!(memlock_required_bytes(1, 65 * 1024), 3 * 68 * 1024);
    }

    #[test]
    fn memlock_check_rejects_a_small_limit_naming_the_numbers() {
        let error = check_memlock(Some(8 * MIB as u64), 2, 8 * MIB, false).unwrap_err();
        let text = error.to_string();
        assert!(matches!(error, MemlockError::TooLow { required_bytes: 50_331_648, .. }));
        assert!(text.contains("8388608"), "{text}");
        assert!(text.contains("50331648"), "{text}");
        assert!(text.contains("ulimit -l 49152"), "{text}");
    }

    #[test]
    fn memlock_check_only_warns_when_cap_ipc_lock_is_held() {
        let outcome = check_memlock(Some(8 * MIB as u64), 2, 8 * MIB, true).unwrap();
        assert!(matches!(outcome, MemlockOutcome::ExceededButPrivileged { .. }));
    }

    #[test]
    fn memlock_check_refuses_below_glommio_minimum_even_when_privileged() {
        let error = check_memlock(Some(64 * 1024), 1, 64 * 1024, true).unwrap_err();
        assert!(matches!(error, MemlockError::BelowGlommioMinimum { .. }));
    }

    #[test]
    fn memlock_check_accepts_unlimited_and_sufficient_limits() {
        assert!(check_memlock(None, 64, 64 * MIB, false).is_ok());
        assert!(check_memlock(Some(6 * MIB as u64), 2, MIB, false).is_ok());
    }

    #[test]
    fn memlock_soft_limit_parses_from_proc_limits() {
        let text = "Limit                     Soft Limit           Hard Limit           Units\n\
                    Max locked memory         8388608              16777216             bytes\n";
        assert_eq!(parse_memlock_soft_limit(text).unwrap(), Some(8_388_608));
        let unlimited =
            "Max locked memory         unlimited            unlimited            bytes\n";
        assert_eq!(parse_memlock_soft_limit(unlimited).unwrap(), None);
        assert!(parse_memlock_soft_limit("Max open files 1024 1024 files\n").is_err());
    }
}
