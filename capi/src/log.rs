//! The embedded local log: `ringlog_log_*`, over the engine's shard runtime.
//!
//! A `ringlog_log` is an engine ([`ringlog_engine::shard::Engine`]) of `partitions` partition
//! logs on `shards` executor threads under one directory (`dir/<partition>/`). Every call may
//! come from any thread: the engine's [`EngineHandle`] sends commands to the owning shard's
//! mailbox and waits for the answer. Appends are acknowledged only once durable (the
//! fdatasync covering them completed).
//!
//! `ringlog_log_open` creates the directory, runs the host checks
//! ([`ringlog_engine::host::check_host`]: kernel, io_uring, RLIMIT_MEMLOCK for
//! `shards × 3 × io_memory`, O_DIRECT on the directory, ...) and only then starts the
//! executors, because glommio panics or exits on hosts it cannot use.
//!
//! Async appends: the completion callback runs on the shard's executor thread. Every append
//! `ringlog_log_append_async` accepted (returned `RINGLOG_OK`) gets exactly one callback. The
//! handle tracks accepted appends whose callback has not run yet, which is what
//! `ringlog_log_sync` waits for.
//!
//! Invariants: a handle's engine is shut down exactly once, by `ringlog_log_close`; a storage
//! failure seen by any call is latched on the handle and reported by `ringlog_log_sync`.

use std::collections::BTreeSet;
use std::ffi::{c_char, c_void, CStr};
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use ringlog_engine::host::{check_host, HostRequirements};
use ringlog_engine::shard::{
    AppendAck, Durability, Engine, EngineConfig, EngineError, EngineHandle, PartitionId,
    StartError, COMMAND_QUEUE_MAX_DEFAULT, COMMAND_QUEUE_MAX_LIMIT, FETCH_BYTES_MAX,
    IO_MEMORY_DEFAULT_BYTES, PARTITIONS_MAX, REPLY_WAIT_MAX, SHARDS_MAX,
};
use ringlog_engine::{AppendError, FetchError, LogConfig, LogError, Offset, OpenError};

use crate::guard::{ffi, refuse_in_callback, run_callback, with_handle, Poison};
use crate::handles::Registry;
use crate::records::{begin_read, buffer_from_c, deliver_read, records_from_c, ringlog_record};
use crate::status::{ringlog_status, ringlog_status::*, Error};

/// Opaque handle of an open local log. Never dereference it: it is an id, not an address.
#[allow(non_camel_case_types)]
#[derive(Debug)]
pub struct ringlog_log {
    _opaque: [u8; 0],
}

/// Options of `ringlog_log_open`. Fill with `ringlog_log_options_init(&o, sizeof o)`, then
/// change fields. `size` lets the struct grow: fields added later go at the end and 0 means
/// "default" for them.
#[allow(non_camel_case_types)]
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ringlog_log_options {
    /// `sizeof(ringlog_log_options)` as the caller compiled it (set by the init function).
    pub size: u32,
    /// Executor threads, 1..=256 (default 1).
    pub shards: u32,
    /// Partitions (independent logs) in the directory, 1..=65536 (default 1); partition `p`
    /// lives on shard `p % shards` in `dir/<p>/`.
    pub partitions: u32,
    /// Commands waiting in one shard's queue before calls fail with
    /// `RINGLOG_ERR_BACKPRESSURE` (default 4096).
    pub command_queue_max: u32,
    /// Bytes of IO memory each executor registers with io_uring (×3 rings; default 1 MiB:
    /// 1 shard locks 3 MiB of RLIMIT_MEMLOCK).
    pub io_memory_bytes: u64,
    /// Size of each segment file, a multiple of 4096 in 1 MiB..=2 GiB (default 256 MiB).
    pub segment_size_bytes: u64,
    /// Largest batch (one append), header and 4 bytes per record included (default 1 MiB).
    pub batch_size_max: u64,
    /// Most bytes coalesced into one write + fdatasync, >= batch_size_max (default 1 MiB).
    pub flush_bytes_max: u64,
    /// Most bytes appended and not yet durable before appends fail with
    /// `RINGLOG_ERR_BACKPRESSURE`, >= flush_bytes_max (default 16 MiB).
    pub queued_bytes_max: u64,
}

/// Size of the first version of `ringlog_log_options`; smaller `size` fields are refused.
const LOG_OPTIONS_V1_SIZE: usize = std::mem::size_of::<ringlog_log_options>();

impl Default for ringlog_log_options {
    fn default() -> Self {
        let log = LogConfig::default();
        ringlog_log_options {
            size: LOG_OPTIONS_V1_SIZE as u32,
            shards: 1,
            partitions: 1,
            command_queue_max: COMMAND_QUEUE_MAX_DEFAULT as u32,
            io_memory_bytes: IO_MEMORY_DEFAULT_BYTES as u64,
            segment_size_bytes: log.segment_size_bytes,
            batch_size_max: log.batch_size_max as u64,
            flush_bytes_max: log.flush_bytes_max as u64,
            queued_bytes_max: log.queued_bytes_max as u64,
        }
    }
}

/// Completion of `ringlog_log_append_async`: `status` is `RINGLOG_OK` when the batch is
/// durable, with its first offset and record count (its records take
/// `first_offset .. first_offset + record_count`); else an error status, offsets 0, and
/// `message` describes it. `message` is never NULL and valid only during the call.
#[allow(non_camel_case_types)]
pub type ringlog_append_callback = Option<
    unsafe extern "C" fn(
        user_data: *mut c_void,
        status: ringlog_status,
        first_offset: u64,
        record_count: u32,
        message: *const c_char,
    ),
>;

/// What a handle holds.
struct LogEntry {
    engine: EngineHandle,
    poison: Poison,
    batch_size_max: usize,
    pending: Arc<Pending>,
}

/// Async appends accepted and not yet called back, and the latched storage failure.
#[derive(Debug, Default)]
struct Pending {
    state: Mutex<PendingState>,
    changed: Condvar,
}

#[derive(Debug, Default)]
struct PendingState {
    next_id: u64,
    outstanding: BTreeSet<u64>,
    failure: Option<Error>,
}

static LOGS: Registry<LogEntry> = Registry::new(b'L');

/// Longest `ringlog_log_sync` waits for earlier async appends (each is bounded by the
/// engine's own reply limit; this only guards against a lost callback).
const SYNC_WAIT_MAX: Duration = REPLY_WAIT_MAX;

/// Fills `*options` with the defaults and sets `options->size = size`. Pass
/// `sizeof(ringlog_log_options)` as `size`: only that many bytes are written.
///
/// Returns `RINGLOG_ERR_NULL_POINTER` or `RINGLOG_ERR_BAD_STRUCT_SIZE` (size smaller than
/// the first version of the struct).
///
/// # Safety
/// `options` must point to `size` writable bytes.
#[no_mangle]
pub unsafe extern "C" fn ringlog_log_options_init(
    options: *mut ringlog_log_options,
    size: usize,
) -> ringlog_status {
    ffi(|| {
        if options.is_null() {
            return Err(Error::null("options"));
        }
        if size < LOG_OPTIONS_V1_SIZE || size > u32::MAX as usize {
            return Err(bad_size("ringlog_log_options", size, LOG_OPTIONS_V1_SIZE));
        }
        let defaults = ringlog_log_options { size: size as u32, ..Default::default() };
        // SAFETY: `options` is non-NULL and points to `size` ≥ sizeof(defaults) writable
        // bytes (caller's contract, size checked); bytes past our struct are zeroed so that
        // newer fields read as "default".
        unsafe {
            std::ptr::write_bytes(options.cast::<u8>(), 0, size);
            std::ptr::write_unaligned(options, defaults);
        }
        Ok(())
    })
}

/// Opens (creating if needed, recovering otherwise) the log in directory `dir`, and stores
/// its handle in `*out_log`. `options` may be NULL for the defaults.
///
/// Runs the host checks first: an unsupported host is `RINGLOG_ERR_HOST_UNSUPPORTED` (the
/// last error message lists each failed check and its fix), with nothing started. Other
/// errors: `RINGLOG_ERR_NULL_POINTER`, `RINGLOG_ERR_INVALID_ARGUMENT` (option out of range,
/// `dir` not UTF-8), `RINGLOG_ERR_BAD_STRUCT_SIZE`, `RINGLOG_ERR_LOCKED` (another open log
/// holds `dir`), `RINGLOG_ERR_CORRUPTION`, `RINGLOG_ERR_IO`, `RINGLOG_ERR_TOO_MANY_HANDLES`.
/// On error `*out_log` is set to NULL.
///
/// # Safety
/// `dir` must be a NUL-terminated string; `options` NULL or `options->size` readable bytes;
/// `out_log` a writable pointer.
#[no_mangle]
pub unsafe extern "C" fn ringlog_log_open(
    dir: *const c_char,
    options: *const ringlog_log_options,
    out_log: *mut *mut ringlog_log,
) -> ringlog_status {
    ffi(|| {
        if out_log.is_null() {
            return Err(Error::null("out_log"));
        }
        // SAFETY: `out_log` is non-NULL and writable (caller's contract).
        unsafe { out_log.write(std::ptr::null_mut()) };
        refuse_in_callback("ringlog_log_open")?;
        // SAFETY: forwarded caller contract on `dir` and `options`.
        let (dir, options) = unsafe { (path_from_c(dir, "dir")?, read_options(options)?) };
        let config = engine_config(dir, &options)?;
        let entry = open_engine(config)?;
        let handle = LOGS.insert(Arc::new(entry))?;
        // SAFETY: as above.
        unsafe { out_log.write(std::ptr::without_provenance_mut(handle)) };
        Ok(())
    })
}

/// Appends `count` records to `partition` as one batch and blocks until it is durable
/// (fdatasync completed). `*out_first_offset` (optional, may be NULL) receives the offset of
/// the first record; record `i` has offset `first + i`.
///
/// Errors: `RINGLOG_ERR_EMPTY_APPEND` (count 0), `RINGLOG_ERR_OVERSIZE`,
/// `RINGLOG_ERR_UNKNOWN_PARTITION`, `RINGLOG_ERR_BACKPRESSURE`, `RINGLOG_ERR_STORAGE_FAILED`,
/// `RINGLOG_ERR_STORAGE_FULL` (the disk is full: not taken; retry once space is freed),
/// `RINGLOG_ERR_CLOSED`, `RINGLOG_ERR_TIMEOUT`, `RINGLOG_ERR_WOULD_DEADLOCK` (called from a
/// completion callback), and the handle errors.
///
/// # Safety
/// `records` must point to `count` records, each `data` to `len` readable bytes;
/// `out_first_offset` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn ringlog_log_append(
    log: *mut ringlog_log,
    partition: u32,
    records: *const ringlog_record,
    count: usize,
    out_first_offset: *mut u64,
) -> ringlog_status {
    ffi(|| {
        refuse_in_callback("ringlog_log_append")?;
        let entry = LOGS.get(log.addr())?;
        with_handle(&entry.poison, || {
            // SAFETY: forwarded caller contract on `records`.
            let records = unsafe { records_from_c(records, count, entry.batch_size_max)? };
            let ack = entry
                .engine
                .append(PartitionId(partition), records, Durability::Durable)
                .map_err(|error| entry.engine_error(error))?;
            if !out_first_offset.is_null() {
                // SAFETY: non-NULL and writable per the caller's contract.
                unsafe { out_first_offset.write(ack.base_offset.0) };
            }
            Ok(())
        })
    })
}

/// Starts an append of `count` records to `partition` as one batch and returns at once.
/// `callback(user_data, status, first_offset, record_count, message)` runs exactly once when
/// the batch is durable or failed — **on a ringlog shard thread**, not the caller's. It must
/// be short and must not block; ringlog calls that block (append, read, sync, close, ...)
/// made from inside it return `RINGLOG_ERR_WOULD_DEADLOCK` (`ringlog_log_append_async` is
/// allowed). When the log is being closed concurrently the callback may instead run with
/// `RINGLOG_ERR_CLOSED` on the thread that dropped the append (the closing thread, or this
/// one before this function returns).
///
/// Records are copied before this function returns. On an error return the callback is never
/// called. Errors: as `ringlog_log_append`, plus `RINGLOG_ERR_NULL_POINTER` for a NULL
/// callback.
///
/// # Safety
/// As `ringlog_log_append`; `callback` must be safe to call from another thread with
/// `user_data`.
#[no_mangle]
pub unsafe extern "C" fn ringlog_log_append_async(
    log: *mut ringlog_log,
    partition: u32,
    records: *const ringlog_record,
    count: usize,
    callback: ringlog_append_callback,
    user_data: *mut c_void,
) -> ringlog_status {
    ffi(|| {
        let entry = LOGS.get(log.addr())?;
        let Some(callback) = callback else {
            return Err(Error::null("callback"));
        };
        with_handle(&entry.poison, || {
            // SAFETY: forwarded caller contract on `records`.
            let records = unsafe { records_from_c(records, count, entry.batch_size_max)? };
            let call = CCallback { callback, user_data };
            let completion = Completion::new(call, entry.pending.clone());
            let id = entry.pending.begin();
            let guard = DropGuard { completion: completion.clone(), id };
            let sent = entry.engine.append_with_callback(
                PartitionId(partition),
                records,
                Durability::Durable,
                move |result| guard.completion.complete(guard.id, result.map_err(EngineFailure)),
            );
            match sent {
                Ok(()) => {
                    completion.accepted(id);
                    Ok(())
                }
                Err(error) => {
                    completion.refused(id);
                    Err(entry.engine_error(error))
                }
            }
        })
    })
}

/// Reads durable records of `partition` from `offset` into `buf` (capacity `cap` bytes) in
/// the read-buffer format: each record as a little-endian `uint32_t` length then its bytes,
/// back to back; record `i` of the buffer has offset `offset + i`. Only whole records are
/// written. `*out_len` receives the bytes written and `*out_next_offset` the offset to read
/// next (`offset` + records written).
///
/// Reading at the end of the log (offset = next offset to be written) is `RINGLOG_OK` with
/// `*out_len = 0`. Errors: `RINGLOG_ERR_OFFSET_OUT_OF_RANGE` (below the log's start or past
/// its end), `RINGLOG_ERR_BUFFER_TOO_SMALL` (the first record does not fit; `*out_len` is set
/// to the bytes it needs — `buf` may be NULL with `cap` 0 to ask), `RINGLOG_ERR_UNKNOWN_PARTITION`,
/// `RINGLOG_ERR_CORRUPTION` (a batch failed its checksum: never returned), `RINGLOG_ERR_IO`,
/// `RINGLOG_ERR_INVALID_ARGUMENT` (`cap` above `PTRDIFF_MAX`), `RINGLOG_ERR_BACKPRESSURE`
/// (the shard's command queue is full, e.g. while a close drains many appends: retry),
/// `RINGLOG_ERR_CLOSED` (the log is closing), `RINGLOG_ERR_TIMEOUT`,
/// `RINGLOG_ERR_WOULD_DEADLOCK` (from a callback), and the handle errors.
///
/// # Safety
/// `buf` must point to `cap` writable bytes (or be NULL with `cap` 0); `out_len` and
/// `out_next_offset` must be writable.
#[no_mangle]
pub unsafe extern "C" fn ringlog_log_read(
    log: *mut ringlog_log,
    partition: u32,
    offset: u64,
    buf: *mut c_void,
    cap: usize,
    out_len: *mut usize,
    out_next_offset: *mut u64,
) -> ringlog_status {
    ffi(|| {
        // SAFETY: the out-parameters are NULL or writable per the caller's contract.
        unsafe { begin_read(out_len, out_next_offset, offset)? };
        refuse_in_callback("ringlog_log_read")?;
        let entry = LOGS.get(log.addr())?;
        with_handle(&entry.poison, || {
            // SAFETY: forwarded caller contract on `buf`/`cap`.
            let buf = unsafe { buffer_from_c(buf, cap)? };
            let max_bytes = cap.clamp(1, FETCH_BYTES_MAX);
            let fetched = entry
                .engine
                .fetch(PartitionId(partition), Offset(offset), max_bytes)
                .map_err(|error| entry.engine_error(error))?;
            // SAFETY: `out_len`/`out_next_offset` were checked non-NULL above.
            unsafe {
                deliver_read(
                    &fetched.batches,
                    offset,
                    entry.batch_size_max,
                    buf,
                    out_len,
                    out_next_offset,
                )
            }
        })
    })
}

/// Blocks until every async append this handle accepted before the call has completed (its
/// callback has returned). Blocking appends are durable when they return, so after `sync`
/// every record acknowledged through this handle is on stable storage. Returns
/// `RINGLOG_ERR_STORAGE_FAILED` if any append on this handle ever hit a write/fdatasync
/// failure (the log is dead), `RINGLOG_ERR_WOULD_DEADLOCK` from a callback, `RINGLOG_ERR_TIMEOUT`
/// if callbacks did not arrive within the engine's reply limit, and the handle errors.
///
/// # Safety
/// `log` must be a handle value (any value is detected, but must be passed as given).
#[no_mangle]
pub unsafe extern "C" fn ringlog_log_sync(log: *mut ringlog_log) -> ringlog_status {
    ffi(|| {
        refuse_in_callback("ringlog_log_sync")?;
        let entry = LOGS.get(log.addr())?;
        with_handle(&entry.poison, || entry.pending.wait_earlier())
    })
}

/// Flushes and closes every partition, stops the shard threads and invalidates the handle
/// (later calls with it, including a second close, return `RINGLOG_ERR_BAD_HANDLE`).
///
/// Appends in flight tell the truth: every append the log took before the close (async or
/// blocking, from any thread) is flushed and answered with its true outcome — `RINGLOG_OK`
/// with its offsets once durable, or the reason it is not (`RINGLOG_ERR_STORAGE_FAILED`,
/// `RINGLOG_ERR_STORAGE_FULL`). An append the log had not taken yet when the close began is
/// refused with `RINGLOG_ERR_CLOSED` (nothing written: safe to retry elsewhere). Every
/// accepted async append's callback has run when this returns (except for appends racing
/// with the close on other threads: theirs run before those calls return). When this
/// returns, every file descriptor and thread of the log is released (glommio's blocking-pool
/// thread ends a moment later). A poisoned handle can be closed. The handle is invalid
/// afterwards even when this returns an error (a flush failure: `RINGLOG_ERR_STORAGE_FAILED`,
/// ...). Other errors: `RINGLOG_ERR_WOULD_DEADLOCK` (from a callback), `RINGLOG_ERR_FORKED`,
/// `RINGLOG_ERR_NULL_POINTER`, `RINGLOG_ERR_BAD_HANDLE`.
///
/// # Safety
/// None beyond passing the value received from `ringlog_log_open`.
#[no_mangle]
pub unsafe extern "C" fn ringlog_log_close(log: *mut ringlog_log) -> ringlog_status {
    ffi(|| {
        refuse_in_callback("ringlog_log_close")?;
        let entry = LOGS.remove(log.addr())?;
        entry.engine.shutdown().map_err(|error| entry.engine_error(error))
    })
}

impl LogEntry {
    /// Maps an engine error to a status; latches storage failures on the handle.
    fn engine_error(&self, error: EngineError) -> Error {
        let error = engine_error(error);
        if error.status == RINGLOG_ERR_STORAGE_FAILED {
            self.pending.latch(&error);
        }
        error
    }
}

/// An engine error delivered to an async completion.
struct EngineFailure(EngineError);

/// Maps an engine error onto a status and message.
fn engine_error(error: EngineError) -> Error {
    let message = error.to_string();
    let status = match &error {
        EngineError::UnknownPartition { .. } => RINGLOG_ERR_UNKNOWN_PARTITION,
        EngineError::Backpressure { .. } => RINGLOG_ERR_BACKPRESSURE,
        EngineError::Closed | EngineError::ShardStopped { .. } => RINGLOG_ERR_CLOSED,
        EngineError::NoReply { .. } => RINGLOG_ERR_TIMEOUT,
        EngineError::FetchTooLarge { .. } => RINGLOG_ERR_INVALID_ARGUMENT,
        EngineError::Append(append) => match append {
            AppendError::Failed { .. } => RINGLOG_ERR_STORAGE_FAILED,
            AppendError::StorageFull { .. } => RINGLOG_ERR_STORAGE_FULL,
            AppendError::Closed => RINGLOG_ERR_CLOSED,
            AppendError::Backpressure { .. } => RINGLOG_ERR_BACKPRESSURE,
            AppendError::BatchTooLarge { .. } => RINGLOG_ERR_OVERSIZE,
            _ => RINGLOG_ERR_INVALID_ARGUMENT,
        },
        EngineError::Durability(durability) => match durability {
            LogError::Failed { .. } => RINGLOG_ERR_STORAGE_FAILED,
            LogError::StorageFull { .. } => RINGLOG_ERR_STORAGE_FULL,
            LogError::Closed => RINGLOG_ERR_CLOSED,
            _ => RINGLOG_ERR_INTERNAL,
        },
        EngineError::Fetch(fetch) => match fetch {
            FetchError::OffsetOutOfRange { .. } | FetchError::IndexOutOfRange { .. } => {
                RINGLOG_ERR_OFFSET_OUT_OF_RANGE
            }
            FetchError::Corruption(_) => RINGLOG_ERR_CORRUPTION,
            FetchError::Io { .. } => RINGLOG_ERR_IO,
            FetchError::Failed { .. } => RINGLOG_ERR_STORAGE_FAILED,
            FetchError::Closed => RINGLOG_ERR_CLOSED,
            _ => RINGLOG_ERR_INTERNAL,
        },
        _ => RINGLOG_ERR_INTERNAL,
    };
    Error::new(status, message)
}

/// Maps an engine start error onto a status and message.
fn start_error(error: StartError) -> Error {
    let message = error.to_string();
    let status = match &error {
        StartError::Config { .. } | StartError::LogConfig(_) => RINGLOG_ERR_INVALID_ARGUMENT,
        StartError::Memlock(_) => RINGLOG_ERR_HOST_UNSUPPORTED,
        StartError::DataDir { .. } => RINGLOG_ERR_IO,
        StartError::Open { source, .. } => match source {
            OpenError::Config(_) => RINGLOG_ERR_INVALID_ARGUMENT,
            OpenError::Locked { .. } => RINGLOG_ERR_LOCKED,
            OpenError::DirectIoUnsupported { .. } => RINGLOG_ERR_HOST_UNSUPPORTED,
            OpenError::Io { .. } => RINGLOG_ERR_IO,
            OpenError::StorageFull { .. } => RINGLOG_ERR_STORAGE_FULL,
            OpenError::Corruption(_) => RINGLOG_ERR_CORRUPTION,
            _ => RINGLOG_ERR_INTERNAL,
        },
        _ => RINGLOG_ERR_INTERNAL,
    };
    Error::new(status, message)
}

/// Checks the host, then starts the engine.
fn open_engine(mut config: EngineConfig) -> Result<LogEntry, Error> {
    std::fs::create_dir_all(&config.data_dir).map_err(|error| {
        Error::new(RINGLOG_ERR_IO, format!("cannot create {:?}: {error}", config.data_dir))
    })?;
    // The engine's glommio files want absolute paths (a relative one fails with EBADF).
    config.data_dir = std::fs::canonicalize(&config.data_dir).map_err(|error| {
        Error::new(RINGLOG_ERR_IO, format!("cannot resolve {:?}: {error}", config.data_dir))
    })?;
    let requirements = HostRequirements {
        data_dir: config.data_dir.clone(),
        shards: config.shards,
        io_memory_bytes: config.io_memory_bytes,
        retention_bytes: None,
    };
    check_host(&requirements)
        .map_err(|error| Error::new(RINGLOG_ERR_HOST_UNSUPPORTED, error.to_string()))?;
    let batch_size_max = config.log.batch_size_max;
    let engine = Engine::start(config).map_err(start_error)?;
    Ok(LogEntry { engine, poison: Poison::default(), batch_size_max, pending: Default::default() })
}

/// The engine configuration for `options`, every value range-checked.
fn engine_config(dir: PathBuf, options: &ringlog_log_options) -> Result<EngineConfig, Error> {
    let range = |name: &str, value: u64, min: u64, max: u64| {
        if (min..=max).contains(&value) {
            Ok(value)
        } else {
            Err(Error::invalid(format!("options.{name} = {value} is outside {min}..={max}")))
        }
    };
    let mut config = EngineConfig::new(dir);
    config.shards = range("shards", options.shards.into(), 1, SHARDS_MAX as u64)? as usize;
    config.partitions =
        range("partitions", options.partitions.into(), 1, PARTITIONS_MAX.into())? as u32;
    config.command_queue_max = range(
        "command_queue_max",
        options.command_queue_max.into(),
        1,
        COMMAND_QUEUE_MAX_LIMIT as u64,
    )? as usize;
    config.io_memory_bytes =
        range("io_memory_bytes", options.io_memory_bytes, 4096, 1 << 30)? as usize;
    let as_usize = |name: &str, value: u64| {
        usize::try_from(value)
            .map_err(|_| Error::invalid(format!("options.{name} = {value} is too large")))
    };
    config.log = LogConfig {
        segment_size_bytes: options.segment_size_bytes,
        batch_size_max: as_usize("batch_size_max", options.batch_size_max)?,
        flush_bytes_max: as_usize("flush_bytes_max", options.flush_bytes_max)?,
        queued_bytes_max: as_usize("queued_bytes_max", options.queued_bytes_max)?,
        ..LogConfig::default()
    };
    config
        .log
        .validate()
        .map_err(|error| Error::invalid(format!("invalid log options: {error}")))?;
    Ok(config)
}

/// Reads a caller's options struct of any version (NULL: the defaults).
///
/// # Safety
/// `options` must be NULL or point to `options->size` readable bytes.
unsafe fn read_options(options: *const ringlog_log_options) -> Result<ringlog_log_options, Error> {
    if options.is_null() {
        return Ok(ringlog_log_options::default());
    }
    // SAFETY: non-NULL; the first field is the size, readable per the caller's contract.
    let size = unsafe { std::ptr::read_unaligned(options.cast::<u32>()) } as usize;
    // SAFETY: `options->size` readable bytes (caller's contract), checked by the helper.
    unsafe { crate::sized::read_sized(options, size, LOG_OPTIONS_V1_SIZE, "ringlog_log_options") }
}

pub(crate) fn bad_size(name: &str, size: usize, min: usize) -> Error {
    Error::new(
        RINGLOG_ERR_BAD_STRUCT_SIZE,
        format!("{name}.size = {size}: this library needs at least {min} (set it with sizeof)"),
    )
}

/// A path argument as a `PathBuf`.
///
/// # Safety
/// `path` must be NULL or a NUL-terminated string.
pub(crate) unsafe fn path_from_c(path: *const c_char, name: &str) -> Result<PathBuf, Error> {
    if path.is_null() {
        return Err(Error::null(name));
    }
    // SAFETY: non-NULL and NUL-terminated per the caller's contract.
    let text = unsafe { CStr::from_ptr(path) };
    let text = text.to_str().map_err(|_| Error::invalid(format!("{name} is not valid UTF-8")))?;
    if text.is_empty() {
        return Err(Error::invalid(format!("{name} is empty")));
    }
    Ok(PathBuf::from(text))
}

/// A C callback and its user data, carried to the shard thread.
#[derive(Clone, Copy)]
struct CCallback {
    callback: unsafe extern "C" fn(*mut c_void, ringlog_status, u64, u32, *const c_char),
    user_data: *mut c_void,
}

// SAFETY: the C caller promises (documented on ringlog_log_append_async) that the callback
// may run on another thread with `user_data`; we never dereference `user_data` ourselves.
unsafe impl Send for CCallback {}
// SAFETY: as above; the callback is only ever invoked once, by whoever takes it.
unsafe impl Sync for CCallback {}

/// One async append's completion: runs the C callback exactly once, whoever gets there first
/// (the shard with the result, or the drop of an append the engine never ran).
#[derive(Clone)]
struct Completion {
    inner: Arc<Mutex<CompletionState>>,
    pending: Arc<Pending>,
}

struct CompletionState {
    call: Option<CCallback>,
    /// `append_with_callback` returned Ok: a drop without result must call back.
    accepted: bool,
    /// The engine dropped the closure without running it.
    dropped: bool,
}

impl Completion {
    fn new(call: CCallback, pending: Arc<Pending>) -> Completion {
        let state = CompletionState { call: Some(call), accepted: false, dropped: false };
        Completion { inner: Arc::new(Mutex::new(state)), pending }
    }

    fn lock(&self) -> MutexGuard<'_, CompletionState> {
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The engine's answer (on the shard thread).
    fn complete(&self, id: u64, result: Result<AppendAck, EngineFailure>) {
        let call = self.lock().call.take();
        let outcome = result.map_err(|EngineFailure(error)| engine_error(error));
        if let Err(error) = &outcome {
            if error.status == RINGLOG_ERR_STORAGE_FAILED {
                self.pending.latch(error);
            }
        }
        if let Some(call) = call {
            invoke(call, &outcome);
        }
        self.pending.end(id);
    }

    /// `append_with_callback` returned Ok.
    fn accepted(&self, id: u64) {
        let call = {
            let mut state = self.lock();
            state.accepted = true;
            if state.dropped {
                state.call.take()
            } else {
                None
            }
        };
        if let Some(call) = call {
            invoke(call, &Err(closed_before_running()));
            self.pending.end(id);
        }
    }

    /// `append_with_callback` returned an error: the callback must not run.
    fn refused(&self, id: u64) {
        self.lock().call = None;
        self.pending.end(id);
    }
}

/// Dropping the engine's closure without running it (the shard ended with the command queued).
struct DropGuard {
    completion: Completion,
    id: u64,
}

impl Drop for DropGuard {
    fn drop(&mut self) {
        let call = {
            let mut state = self.completion.lock();
            state.dropped = true;
            if state.accepted {
                state.call.take()
            } else {
                None
            }
        };
        if let Some(call) = call {
            invoke(call, &Err(closed_before_running()));
            self.completion.pending.end(self.id);
        }
    }
}

fn closed_before_running() -> Error {
    Error::new(RINGLOG_ERR_CLOSED, "the log closed before the append ran")
}

/// Calls the C callback with an outcome.
fn invoke(call: CCallback, outcome: &Result<AppendAck, Error>) {
    run_callback(|| {
        let (status, first, count, message) = match outcome {
            Ok(ack) => (RINGLOG_OK, ack.base_offset.0, ack.record_count, String::new()),
            Err(error) => (error.status, 0, 0, error.message.clone()),
        };
        let message = std::ffi::CString::new(message.replace('\0', "\\0")).unwrap_or_default();
        // SAFETY: a C function pointer the caller registered for exactly this call, with the
        // caller's own user data; `message` outlives the call.
        unsafe { (call.callback)(call.user_data, status, first, count, message.as_ptr()) };
    });
}

impl Pending {
    fn lock(&self) -> MutexGuard<'_, PendingState> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Registers an async append about to be sent; returns its id.
    fn begin(&self) -> u64 {
        let mut state = self.lock();
        let id = state.next_id;
        state.next_id += 1;
        state.outstanding.insert(id);
        id
    }

    /// The append `id` completed (its callback returned) or was refused.
    fn end(&self, id: u64) {
        self.lock().outstanding.remove(&id);
        self.changed.notify_all();
    }

    fn latch(&self, error: &Error) {
        self.lock().failure.get_or_insert_with(|| error.clone());
    }

    /// Waits until no append registered before this call is outstanding.
    fn wait_earlier(&self) -> Result<(), Error> {
        let deadline = Instant::now() + SYNC_WAIT_MAX;
        let mut state = self.lock();
        let target = state.next_id;
        while state.outstanding.first().is_some_and(|first| *first < target) {
            let now = Instant::now();
            if now >= deadline {
                return Err(Error::new(
                    RINGLOG_ERR_TIMEOUT,
                    format!("async appends still outstanding after {SYNC_WAIT_MAX:?}"),
                ));
            }
            state = self
                .changed
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .0;
        }
        match &state.failure {
            Some(failure) => Err(failure.clone()),
            None => Ok(()),
        }
    }
}
