//! libringlog: the C ABI of ringlog — embed a local durable log or a replicated node from C.
//!
//! The header `include/ringlog.h` is generated from this crate by cbindgen (pinned version;
//! `tests/header.rs` fails when it is stale, `RINGLOG_BLESS=1` rewrites it). README.md shows
//! how to compile and link a C program against it.
//!
//! Rules every export follows (they are the ABI's contract, see README.md):
//! - handles are opaque ids, never addresses (handles.rs): NULL, a closed handle, a double
//!   close or a handle of the other kind is a status, never a dereference;
//! - every function returns a [`ringlog_status`]; details go to the thread-local
//!   [`ringlog_last_error_message`];
//! - buffers are the caller's; option/status structs carry a `size` field (sized.rs);
//! - every export runs under `catch_unwind` (guard.rs): a panic becomes `RINGLOG_ERR_PANIC`
//!   and poisons the handle; nothing unwinds into C, nothing exits the host process;
//! - the host (kernel, io_uring, RLIMIT_MEMLOCK, O_DIRECT) is probed before any executor
//!   starts (`ringlog_engine::host::check_host`), because glommio panics or exits on hosts it
//!   cannot use;
//! - handles may be used from any thread at once.
//!
//! Unsafe code lives only at the boundary (raw pointers from C); each block says why it is
//! sound in a `// SAFETY:` comment.

pub mod client;
mod guard;
mod handles;
pub mod log;
pub mod log_callback;
pub mod node;
pub mod records;
mod sized;
pub mod status;

pub use client::*;
pub use log::*;
pub use log_callback::*;
pub use node::*;
pub use records::*;
pub use status::*;

/// Most handles of one kind (logs, nodes, clients) open at once.
pub const RINGLOG_HANDLES_MAX: u32 = 4096;

const _: () = assert!(RINGLOG_HANDLES_MAX as usize == handles::HANDLES_MAX);

/// Major version of the header (and of the ABI: `libringlog.so.<major>`). Kept equal to the
/// crate version by a compile-time check below (cbindgen needs literals for `#define`s).
pub const RINGLOG_VERSION_MAJOR: u32 = 0;
/// Minor version of the header.
pub const RINGLOG_VERSION_MINOR: u32 = 1;
/// Patch version of the header.
pub const RINGLOG_VERSION_PATCH: u32 = 0;
/// The header's version as one number, `major * 1000000 + minor * 1000 + patch`; compare it
/// with `ringlog_version_number()`, the version of the library actually loaded.
pub const RINGLOG_VERSION_NUMBER: u32 = 1000;

/// Parses a decimal version component at compile time.
const fn parse_component(text: &str) -> u32 {
    let bytes = text.as_bytes();
    let mut value = 0u32;
    let mut i = 0;
    while i < bytes.len() {
        assert!(bytes[i].is_ascii_digit(), "a version component is decimal");
        value = value * 10 + (bytes[i] - b'0') as u32;
        i += 1;
    }
    value
}

// The header's version constants follow the crate version: a version bump fails the build
// here until they are updated (and `tests/header.rs` until the header is regenerated).
// `RINGLOG_VERSION_STRING` is written by cbindgen.toml (cbindgen has no string constants);
// `tests/header.rs` checks it against the crate version.
const _: () = {
    assert!(RINGLOG_VERSION_MAJOR == parse_component(env!("CARGO_PKG_VERSION_MAJOR")));
    assert!(RINGLOG_VERSION_MINOR == parse_component(env!("CARGO_PKG_VERSION_MINOR")));
    assert!(RINGLOG_VERSION_PATCH == parse_component(env!("CARGO_PKG_VERSION_PATCH")));
    assert!(
        RINGLOG_VERSION_NUMBER
            == RINGLOG_VERSION_MAJOR * 1_000_000
                + RINGLOG_VERSION_MINOR * 1_000
                + RINGLOG_VERSION_PATCH
    );
    assert!(RINGLOG_VERSION_MINOR < 1_000 && RINGLOG_VERSION_PATCH < 1_000);
};

/// The version of the library loaded at run time, "major.minor.patch" (static,
/// NUL-terminated, never NULL). Compare with the header's `RINGLOG_VERSION_STRING`.
#[no_mangle]
pub extern "C" fn ringlog_version() -> *const std::ffi::c_char {
    const VERSION: &std::ffi::CStr = match std::ffi::CStr::from_bytes_with_nul(
        concat!(env!("CARGO_PKG_VERSION"), "\0").as_bytes(),
    ) {
        Ok(version) => version,
        Err(_) => c"unknown",
    };
    VERSION.as_ptr()
}

/// The version of the library loaded at run time as `major * 1000000 + minor * 1000 +
/// patch`. A program checks it against the header it was compiled with, e.g. refusing a
/// library of another major version: `ringlog_version_number() / 1000000 ==
/// RINGLOG_VERSION_MAJOR` (the shared library's SONAME, `libringlog.so.<major>`, already
/// keeps another major from being loaded by the dynamic linker).
#[no_mangle]
pub extern "C" fn ringlog_version_number() -> u32 {
    RINGLOG_VERSION_NUMBER
}

#[cfg(test)]
mod tests {
    use std::ffi::CString;

    use super::guard::test_hooks::panic_next_call;
    use super::*;
    use ringlog_status::*;

    fn open(dir: &std::path::Path) -> *mut ringlog_log {
        let path = CString::new(dir.to_str().unwrap()).unwrap();
        let options = ringlog_log_options {
            segment_size_bytes: 1 << 20,
            batch_size_max: 64 << 10,
            flush_bytes_max: 256 << 10,
            ..Default::default()
        };
        let mut log = std::ptr::null_mut();
        // SAFETY: valid C string, options and out pointer.
        let status = unsafe { ringlog_log_open(path.as_ptr(), &options, &mut log) };
        assert_eq!(status, RINGLOG_OK);
        log
    }

    #[test]
    fn a_panic_inside_a_call_becomes_a_status_and_poisons_only_that_handle() {
        let dir = tempfile::tempdir_in(std::env::temp_dir()).unwrap();
        let poisoned = open(&dir.path().join("a"));
        let healthy = open(&dir.path().join("b"));
        let value = *b"v";
        let record = ringlog_record { data: value.as_ptr(), len: 1 };
        let mut first = 0;
        panic_next_call();
        // SAFETY: valid handle, record and out pointer.
        let status = unsafe { ringlog_log_append(poisoned, 0, &record, 1, &mut first) };
        assert_eq!(status, RINGLOG_ERR_PANIC);
        // SAFETY: the message pointer is valid until the next failing call on this thread.
        let message = unsafe { std::ffi::CStr::from_ptr(ringlog_last_error_message()) };
        assert!(message.to_str().unwrap().contains("injected"), "{message:?}");
        // SAFETY: as above.
        let status = unsafe { ringlog_log_append(poisoned, 0, &record, 1, &mut first) };
        assert_eq!(status, RINGLOG_ERR_POISONED);
        // SAFETY: as above.
        assert_eq!(unsafe { ringlog_log_sync(poisoned) }, RINGLOG_ERR_POISONED);
        // SAFETY: as above.
        let status = unsafe { ringlog_log_append(healthy, 0, &record, 1, &mut first) };
        assert_eq!(status, RINGLOG_OK);
        // A poisoned handle can still be closed, once.
        // SAFETY: handles from open.
        unsafe {
            assert_eq!(ringlog_log_close(poisoned), RINGLOG_OK);
            assert_eq!(ringlog_log_close(poisoned), RINGLOG_ERR_BAD_HANDLE);
            assert_eq!(ringlog_log_close(healthy), RINGLOG_OK);
        }
    }
}
