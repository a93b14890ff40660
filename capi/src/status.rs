//! Status codes, the error type every export returns internally, and the thread-local last
//! error message.
//!
//! Every exported function returns a [`ringlog_status`]. A failing call also stores a
//! human-readable message in a thread-local buffer that [`ringlog_last_error_message`] returns;
//! successful calls leave it unchanged (like `errno`).
//!
//! Invariants: `RINGLOG_OK` is 0 and every other code is positive and stable forever (codes
//! are only ever added, at the end); every code has a static description in
//! [`ringlog_status_str`]; the last-error buffer never holds an interior NUL.

use std::cell::RefCell;
use std::ffi::{c_char, c_int, CString};

/// The outcome of every call. `RINGLOG_OK` (0) is success; every other value is an error
/// whose details are in `ringlog_last_error_message()` on the calling thread.
#[allow(non_camel_case_types)]
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ringlog_status {
    /// Success.
    RINGLOG_OK = 0,
    /// A required pointer argument is NULL.
    RINGLOG_ERR_NULL_POINTER = 1,
    /// The handle was never returned by an open/start call, was already closed (use after
    /// close, double close), or is a handle of the other kind (a node passed as a log).
    RINGLOG_ERR_BAD_HANDLE = 2,
    /// A previous call on this handle panicked inside the library; only close/stop is
    /// accepted on it now.
    RINGLOG_ERR_POISONED = 3,
    /// This call panicked inside the library (caught: nothing unwound into the caller). The
    /// handle it used is poisoned.
    RINGLOG_ERR_PANIC = 4,
    /// An argument or option value is out of range (see the message).
    RINGLOG_ERR_INVALID_ARGUMENT = 5,
    /// An options or status struct's `size` field is smaller than the first version of the
    /// struct, or larger with non-zero bytes this library does not know.
    RINGLOG_ERR_BAD_STRUCT_SIZE = 6,
    /// An append of zero records (a record of zero bytes is fine).
    RINGLOG_ERR_EMPTY_APPEND = 7,
    /// The records do not fit one batch (`batch_size_max`, header included).
    RINGLOG_ERR_OVERSIZE = 8,
    /// Queues are full (shard mailbox or bytes waiting for fdatasync): retry later.
    RINGLOG_ERR_BACKPRESSURE = 9,
    /// The caller's read buffer cannot hold the first record; `*out_len` is set to the bytes
    /// needed.
    RINGLOG_ERR_BUFFER_TOO_SMALL = 10,
    /// The offset is outside the log (below its start, or past its end).
    RINGLOG_ERR_OFFSET_OUT_OF_RANGE = 11,
    /// The partition does not exist.
    RINGLOG_ERR_UNKNOWN_PARTITION = 12,
    /// The host cannot run ringlog (kernel, io_uring, RLIMIT_MEMLOCK, O_DIRECT on the data
    /// dir, ...); the message lists every failed check and its fix. Nothing was started.
    RINGLOG_ERR_HOST_UNSUPPORTED = 13,
    /// The data directory is in use by another open log or node (its LOCK file is held).
    RINGLOG_ERR_LOCKED = 14,
    /// Recovery found corruption in the middle of the log; nothing was started.
    RINGLOG_ERR_CORRUPTION = 15,
    /// An IO error (creating or opening the data directory, reading a segment).
    RINGLOG_ERR_IO = 16,
    /// A write or fdatasync failed: the log is dead (fatal, never retried). Close it.
    RINGLOG_ERR_STORAGE_FAILED = 17,
    /// The log or node is closing or closed (a call raced with close/stop).
    RINGLOG_ERR_CLOSED = 18,
    /// No answer in time; the outcome of the operation is unknown.
    RINGLOG_ERR_TIMEOUT = 19,
    /// This node does not lead the partition (the message names the leader if known).
    RINGLOG_ERR_NOT_LEADER = 20,
    /// The node configuration file cannot be read or is invalid.
    RINGLOG_ERR_CONFIG = 21,
    /// The request was refused (e.g. a leadership transfer to a node that cannot take it).
    RINGLOG_ERR_REJECTED = 22,
    /// Too many open handles (`RINGLOG_HANDLES_MAX` per kind).
    RINGLOG_ERR_TOO_MANY_HANDLES = 23,
    /// A blocking call was made from inside a completion callback, where it would deadlock
    /// the thread that must complete it.
    RINGLOG_ERR_WOULD_DEADLOCK = 24,
    /// Cannot bind a listening address.
    RINGLOG_ERR_ADDRESS_IN_USE = 25,
    /// An internal error (see the message).
    RINGLOG_ERR_INTERNAL = 26,
    /// The disk is full: the append was not taken (or, from `ringlog_log_sync`/close, batches
    /// wait for space and are not durable). Not fatal: reads go on, and appends are taken
    /// again by themselves once space is freed (retention, the operator). Retry later.
    RINGLOG_ERR_STORAGE_FULL = 27,
    /// The handle was opened by another process: this is a child forked after the open. A
    /// child cannot use (nor close) its parent's logs and nodes — their threads did not
    /// survive the fork; it may open its own.
    RINGLOG_ERR_FORKED = 28,
    /// A produce through `ringlog_client_*` may or may not have been appended: the request
    /// reached a leader, then the connection failed or the leader answered that the acks
    /// were not reached in time. The records may commit later; retrying may duplicate them.
    RINGLOG_ERR_INDETERMINATE = 29,
    /// No node of the cluster could be reached, or every retry was used up (connection
    /// refused or reset, no leader elected in time). Nothing was applied; retry later.
    RINGLOG_ERR_UNAVAILABLE = 30,
    /// A node answered something this client cannot accept (a malformed frame, an
    /// unexpected reply, another cluster, a protocol version it does not speak).
    RINGLOG_ERR_PROTOCOL = 31,
}

use ringlog_status::*;

/// Static, NUL-terminated description of a status code (never NULL; a value that is not a
/// `ringlog_status` gives "unknown status"). Takes an `int` so that any value is safe to pass.
#[no_mangle]
pub extern "C" fn ringlog_status_str(status: c_int) -> *const c_char {
    let text: &'static std::ffi::CStr = match status {
        0 => c"ok",
        1 => c"a required pointer argument is NULL",
        2 => c"invalid handle (never opened, already closed, or of the other kind)",
        3 => c"handle poisoned by an earlier internal panic; only close is accepted",
        4 => c"internal panic (caught); the handle is poisoned",
        5 => c"invalid argument",
        6 => c"bad struct size field",
        7 => c"append of zero records",
        8 => c"records do not fit one batch (batch_size_max)",
        9 => c"queues are full; retry later",
        10 => c"buffer too small for the first record",
        11 => c"offset out of range",
        12 => c"unknown partition",
        13 => c"host cannot run ringlog (see the last error message for the failed checks)",
        14 => c"data directory is locked by another log or node",
        15 => c"log corruption found by recovery",
        16 => c"IO error",
        17 => c"storage failed (fatal): the log must be closed",
        18 => c"closed or closing",
        19 => c"timed out; outcome unknown",
        20 => c"not the leader of this partition",
        21 => c"invalid or unreadable node configuration",
        22 => c"request rejected",
        23 => c"too many open handles",
        24 => c"blocking call from inside a completion callback",
        25 => c"address in use or cannot be bound",
        26 => c"internal error",
        27 => c"disk full: not taken now; appends resume once space is freed",
        28 => c"handle opened by the parent of this forked process; unusable here",
        29 => c"outcome unknown: the produce may have been appended (do not blindly retry)",
        30 => c"cluster unavailable: no node answered, or retries were used up",
        31 => c"protocol error: a node's answer could not be understood",
        _ => c"unknown status",
    };
    text.as_ptr()
}

/// A failed call: its status and message (the message becomes the last error).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Error {
    pub status: ringlog_status,
    pub message: String,
}

impl Error {
    pub fn new(status: ringlog_status, message: impl Into<String>) -> Error {
        Error { status, message: message.into() }
    }

    pub fn null(argument: &str) -> Error {
        Error::new(RINGLOG_ERR_NULL_POINTER, format!("argument `{argument}` is NULL"))
    }

    pub fn invalid(message: impl Into<String>) -> Error {
        Error::new(RINGLOG_ERR_INVALID_ARGUMENT, message)
    }
}

thread_local! {
    /// The message of the last failed call on this thread.
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

/// Stores `message` as this thread's last error.
pub(crate) fn set_last_error(message: &str) {
    let text = CString::new(message.replace('\0', "\\0")).unwrap_or_default();
    // `try_with`: during thread teardown the slot may be gone; the status still tells.
    let _ = LAST_ERROR.try_with(|slot| *slot.borrow_mut() = text);
}

/// Converts a call's outcome into its status, recording the error message.
pub(crate) fn finish(outcome: Result<(), Error>) -> ringlog_status {
    match outcome {
        Ok(()) => RINGLOG_OK,
        Err(error) => {
            set_last_error(&error.message);
            error.status
        }
    }
}

/// The message of the last failed call made on the calling thread ("" if none). The pointer
/// stays valid until the next failing call on this thread; copy it to keep it. Never NULL.
#[no_mangle]
pub extern "C" fn ringlog_last_error_message() -> *const c_char {
    static EMPTY: &std::ffi::CStr = c"";
    let result = std::panic::catch_unwind(|| {
        LAST_ERROR.try_with(|slot| slot.borrow().as_ptr()).unwrap_or(EMPTY.as_ptr())
    });
    result.unwrap_or(EMPTY.as_ptr())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::CStr;

    #[test]
    fn every_status_has_its_own_description() {
        let mut seen = std::collections::HashSet::new();
        for code in 0..=RINGLOG_ERR_PROTOCOL as c_int {
            // SAFETY: ringlog_status_str returns a static NUL-terminated string.
            let text = unsafe { CStr::from_ptr(ringlog_status_str(code)) };
            assert_ne!(text.to_str().unwrap(), "unknown status", "code {code}");
            assert!(seen.insert(text.to_owned()), "code {code} shares its text");
        }
        for code in [-1, RINGLOG_ERR_PROTOCOL as c_int + 1, c_int::MAX] {
            // SAFETY: as above.
            let text = unsafe { CStr::from_ptr(ringlog_status_str(code)) };
            assert_eq!(text.to_str().unwrap(), "unknown status");
        }
    }

    #[test]
    fn the_last_error_is_per_thread_and_survives_successes() {
        assert_eq!(finish(Err(Error::invalid("bad thing"))), RINGLOG_ERR_INVALID_ARGUMENT);
        assert_eq!(finish(Ok(())), RINGLOG_OK);
        // SAFETY: the pointer is valid until the next failing call on this thread.
        let text = unsafe { CStr::from_ptr(ringlog_last_error_message()) };
        assert_eq!(text.to_str().unwrap(), "bad thing");
        let other = std::thread::spawn(|| {
            // SAFETY: as above, on the other thread.
            unsafe { CStr::from_ptr(ringlog_last_error_message()) }.to_str().unwrap().to_owned()
        });
        assert_eq!(other.join().unwrap(), "");
    }
}
