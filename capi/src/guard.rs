//! The wrapper every export runs in: no panic unwinds into C, a panic poisons the handle.
//!
//! [`ffi`] runs a call's body under `catch_unwind` and turns its outcome into a status. A
//! call that resolved a handle runs its handle work through [`with_handle`], which refuses a
//! poisoned handle and poisons it when the work panics (its state may be half-updated).
//!
//! Completion callbacks run on a shard's thread, which must never block on itself: while a
//! callback runs, [`IN_CALLBACK`] is set on that thread and blocking calls refuse with
//! `RINGLOG_ERR_WOULD_DEADLOCK` ([`refuse_in_callback`]).
//!
//! Invariants: nothing in this crate unwinds across `extern "C"`; nothing calls
//! `process::exit` or `abort`.

use std::cell::Cell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};

use crate::status::{finish, ringlog_status, ringlog_status::*, Error};

thread_local! {
    /// Set while a completion callback runs on this thread.
    static IN_CALLBACK: Cell<bool> = const { Cell::new(false) };
}

/// A handle's poison flag: set when a call on it panicked.
#[derive(Debug, Default)]
pub(crate) struct Poison(AtomicBool);

impl Poison {
    pub fn is_poisoned(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }

    fn poison(&self) {
        self.0.store(true, Ordering::Release);
    }
}

/// Runs an export's body: a panic becomes `RINGLOG_ERR_PANIC`, an error sets the last error.
pub(crate) fn ffi(body: impl FnOnce() -> Result<(), Error>) -> ringlog_status {
    let _inside = crate::log_callback::InRinglog::enter();
    let outcome = match catch_unwind(AssertUnwindSafe(body)) {
        Ok(outcome) => outcome,
        Err(panic) => Err(panic_error(&panic)),
    };
    finish(outcome)
}

/// Runs `work` on a resolved handle: refused if the handle is poisoned; poisons it if `work`
/// panics.
pub(crate) fn with_handle<R>(
    poison: &Poison,
    work: impl FnOnce() -> Result<R, Error>,
) -> Result<R, Error> {
    if poison.is_poisoned() {
        return Err(Error::new(
            RINGLOG_ERR_POISONED,
            "an earlier call on this handle panicked inside ringlog; close it",
        ));
    }
    match catch_unwind(AssertUnwindSafe(|| {
        #[cfg(test)]
        test_hooks::maybe_panic();
        work()
    })) {
        Ok(result) => result,
        Err(panic) => {
            poison.poison();
            Err(panic_error(&panic))
        }
    }
}

fn panic_error(panic: &Box<dyn std::any::Any + Send>) -> Error {
    let text = if let Some(text) = panic.downcast_ref::<&str>() {
        (*text).to_string()
    } else if let Some(text) = panic.downcast_ref::<String>() {
        text.clone()
    } else {
        "a panic with a non-string payload".to_string()
    };
    Error::new(RINGLOG_ERR_PANIC, format!("internal panic (caught, handle poisoned): {text}"))
}

/// Refuses a blocking call made from inside a completion callback.
pub(crate) fn refuse_in_callback(function: &str) -> Result<(), Error> {
    if IN_CALLBACK.with(Cell::get) {
        return Err(Error::new(
            RINGLOG_ERR_WOULD_DEADLOCK,
            format!(
                "{function} blocks, and was called from a completion callback, which runs on \
                 the shard thread that would have to answer it; hand the work to another thread"
            ),
        ));
    }
    Ok(())
}

/// Runs a C completion callback with [`IN_CALLBACK`] set; a panic in our own code around it
/// is contained (the callback itself is C and must not unwind).
pub(crate) fn run_callback(call: impl FnOnce()) {
    let was = IN_CALLBACK.with(|flag| flag.replace(true));
    let _ = catch_unwind(AssertUnwindSafe(call));
    IN_CALLBACK.with(|flag| flag.set(was));
}

/// Test-only panic injection: the next handle call on the injecting thread panics.
#[cfg(test)]
pub(crate) mod test_hooks {
    use std::cell::Cell;

    thread_local! {
        static PANIC_NEXT: Cell<bool> = const { Cell::new(false) };
    }

    pub fn panic_next_call() {
        PANIC_NEXT.with(|flag| flag.set(true));
    }

    pub(super) fn maybe_panic() {
        if PANIC_NEXT.with(|flag| flag.replace(false)) {
            panic!("injected by test_hooks::panic_next_call");
        }
    }
}
