//! Memory given back after bursts of connections.
//!
//! glibc's malloc keeps what is freed in its arenas: a shard thread allocates from its own
//! arena, and once a large buffer was freed the mmap threshold rises to its size, so later
//! buffers of that size come from the arena too. A node that served a flood of connections
//! each holding part of a large request kept their buffers' pages after every one of them
//! closed (RSS 75 → 309 MB, and it stayed there). Each shard counts the buffer bytes its
//! closed client connections released ([`MemoryTrim::released`]) and the client and peer
//! connections that closed ([`MemoryTrim::closed`]); past [`TRIM_RELEASED_BYTES_MIN`] or
//! [`TRIM_CLOSED_CONNECTIONS_MIN`] a trim runs, at most every [`TRIM_INTERVAL`]:
//! `malloc_trim(0)` gives back the free top of every arena and the free whole pages inside
//! them. Steady serving (long-lived connections) does not trigger it.
//!
//! The only `unsafe` of this crate: the `malloc_trim` call (glibc only; elsewhere `trim`
//! does nothing).

use std::cell::Cell;
use std::time::Duration;

/// Buffer bytes released by closed connections before a trim is worth its cost.
pub const TRIM_RELEASED_BYTES_MIN: u64 = 16 * 1024 * 1024;
/// Connections closed before a trim is worth its cost (a flood of small ones).
pub const TRIM_CLOSED_CONNECTIONS_MIN: u64 = 64;
/// How often released bytes are checked (so at most one trim per interval and shard).
pub const TRIM_INTERVAL: Duration = Duration::from_secs(1);

/// Released-bytes accounting of one shard's client server.
#[derive(Debug, Default)]
pub struct MemoryTrim {
    released: Cell<u64>,
    closed: Cell<u64>,
}

impl MemoryTrim {
    /// A closed connection released `bytes` of buffers.
    pub fn released(&self, bytes: u64) {
        self.released.set(self.released.get().saturating_add(bytes));
    }

    /// `count` more connections closed.
    pub fn closed(&self, count: u64) {
        self.closed.set(self.closed.get().saturating_add(count));
    }

    /// Trims when enough was released since the last trim; true if it trimmed.
    pub fn trim_if_worth_it(&self) -> bool {
        if self.released.get() < TRIM_RELEASED_BYTES_MIN
            && self.closed.get() < TRIM_CLOSED_CONNECTIONS_MIN
        {
            return false;
        }
        self.released.set(0);
        self.closed.set(0);
        trim();
        true
    }
}

/// Returns the allocator's free memory to the system (glibc: `malloc_trim(0)`).
pub fn trim() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: `malloc_trim` takes no pointer and has no precondition; glibc locks each
    // arena while it trims it, so it is safe to call from any thread at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_trim_runs_only_past_the_released_bytes_threshold() {
        let trim = MemoryTrim::default();
        trim.released(TRIM_RELEASED_BYTES_MIN - 1);
        assert!(!trim.trim_if_worth_it());
        trim.released(1);
        assert!(trim.trim_if_worth_it());
        assert!(!trim.trim_if_worth_it(), "the count starts over after a trim");
        trim.closed(TRIM_CLOSED_CONNECTIONS_MIN - 1);
        assert!(!trim.trim_if_worth_it());
        trim.closed(1);
        assert!(trim.trim_if_worth_it());
    }
}
