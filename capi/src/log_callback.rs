//! The embedder's log callback: where libringlog's own diagnostics go instead of the host's
//! stderr.
//!
//! Today that is every panic inside libringlog (caught, turned into `RINGLOG_ERR_PANIC`, but
//! Rust's default panic hook would first print it and a backtrace hint to stderr). With a
//! callback registered ([`ringlog_set_log_callback`]), a panic raised inside a ringlog call or
//! on a ringlog thread (named `ringlog-*`) is handed to the callback, and nothing is printed;
//! panics elsewhere in the process go to the hook that was installed before. Without a
//! callback, behaviour is unchanged.
//!
//! Invariants: the panic hook is installed at most once and chains to the previous one; the
//! callback is read under a lock, so replacing it while a panic is reported is safe.

use std::cell::Cell;
use std::ffi::{c_char, c_void, CString};
use std::sync::{Once, RwLock};

use crate::status::ringlog_status;

/// `level` of a log callback: something failed (a panic was caught).
pub const RINGLOG_LOG_ERROR: u32 = 1;

/// The embedder's log callback: `callback(user_data, level, message)` with `level` one of
/// `RINGLOG_LOG_*` and `message` a NUL-terminated string valid only during the call. It may
/// run on any thread, ringlog's included: keep it short, do not call into ringlog from it.
#[allow(non_camel_case_types)]
pub type ringlog_log_callback =
    Option<unsafe extern "C" fn(user_data: *mut c_void, level: u32, message: *const c_char)>;

/// A registered callback and its user data (an address: never dereferenced by us).
#[derive(Clone, Copy)]
struct Registered {
    callback: unsafe extern "C" fn(*mut c_void, u32, *const c_char),
    user_data: usize,
}

static CALLBACK: RwLock<Option<Registered>> = RwLock::new(None);
static HOOK: Once = Once::new();

thread_local! {
    /// Depth of ringlog calls on this thread (a panic here is ringlog's).
    static IN_RINGLOG: Cell<u32> = const { Cell::new(0) };
}

/// Sets (or, with NULL, removes) the callback that receives libringlog's diagnostics instead
/// of the process's stderr: today, the message of every panic caught inside libringlog (each
/// also returned as `RINGLOG_ERR_PANIC`). Without a callback such panics are printed to stderr
/// by Rust's default hook. Always returns `RINGLOG_OK`.
///
/// # Safety
/// `callback` must be safe to call from any thread with `user_data` until it is replaced.
#[no_mangle]
pub unsafe extern "C" fn ringlog_set_log_callback(
    callback: ringlog_log_callback,
    user_data: *mut c_void,
) -> ringlog_status {
    crate::guard::ffi(|| {
        HOOK.call_once(install_hook);
        let registered =
            callback.map(|callback| Registered { callback, user_data: user_data as usize });
        *CALLBACK.write().unwrap_or_else(|poisoned| poisoned.into_inner()) = registered;
        Ok(())
    })
}

/// Marks the current thread as inside a ringlog call for the life of the guard.
pub(crate) struct InRinglog;

impl InRinglog {
    pub(crate) fn enter() -> InRinglog {
        IN_RINGLOG.with(|depth| depth.set(depth.get() + 1));
        InRinglog
    }
}

impl Drop for InRinglog {
    fn drop(&mut self) {
        IN_RINGLOG.with(|depth| depth.set(depth.get().saturating_sub(1)));
    }
}

fn install_hook() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let ours = IN_RINGLOG.with(Cell::get) > 0
            || std::thread::current().name().is_some_and(|name| name.starts_with("ringlog-"));
        let registered = *CALLBACK.read().unwrap_or_else(|poisoned| poisoned.into_inner());
        match registered {
            Some(registered) if ours => report(registered, info),
            _ => previous(info),
        }
    }));
}

fn report(registered: Registered, info: &std::panic::PanicHookInfo<'_>) {
    let thread = std::thread::current();
    let text = format!(
        "libringlog: panic in thread {} (caught): {info}",
        thread.name().unwrap_or("<unnamed>")
    );
    let message = CString::new(text.replace('\0', "\\0")).unwrap_or_default();
    // SAFETY: a C function the embedder registered for exactly this, with its own user data
    // (passed back as given); `message` outlives the call.
    unsafe {
        (registered.callback)(
            registered.user_data as *mut c_void,
            RINGLOG_LOG_ERROR,
            message.as_ptr(),
        )
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    static SEEN: Mutex<Vec<(u32, String)>> = Mutex::new(Vec::new());

    unsafe extern "C" fn collect(_user: *mut c_void, level: u32, message: *const c_char) {
        // SAFETY: the library passes a NUL-terminated string valid during the call.
        let text = unsafe { std::ffi::CStr::from_ptr(message) }.to_string_lossy().into_owned();
        SEEN.lock().unwrap().push((level, text));
    }

    #[test]
    fn a_panic_inside_a_call_goes_to_the_log_callback_not_stderr() {
        // SAFETY: `collect` is callable from any thread; no user data.
        let status = unsafe { ringlog_set_log_callback(Some(collect), std::ptr::null_mut()) };
        assert_eq!(status, crate::status::ringlog_status::RINGLOG_OK);
        let status = crate::guard::ffi(|| panic!("log callback probe"));
        assert_eq!(status, crate::status::ringlog_status::RINGLOG_ERR_PANIC);
        // SAFETY: removing the callback.
        unsafe { ringlog_set_log_callback(None, std::ptr::null_mut()) };
        let seen = SEEN.lock().unwrap();
        assert!(
            seen.iter()
                .any(|(level, text)| *level == RINGLOG_LOG_ERROR
                    && text.contains("log callback probe")),
            "{seen:?}"
        );
    }
}
