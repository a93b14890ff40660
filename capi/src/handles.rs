//! Handle registry: the opaque pointers given to C are encoded ids, never addresses.
//!
//! A C caller may pass a handle after closing it, twice to close, a handle of the other
//! kind, or garbage. So a handle is never memory we free: it is
//! `kind << 56 | generation << 32 | (slot + 1)`, cast to a pointer type, and every call looks
//! it up in a global table of slots. Closing a handle empties its slot and bumps the slot's
//! generation, so the old value no longer matches anything: use after close and double close
//! are detected (`RINGLOG_ERR_BAD_HANDLE`) instead of dereferencing freed memory. The high
//! byte makes the value a non-canonical x86-64 address, so a C caller dereferencing it by
//! mistake faults at once instead of reading someone else's memory.
//!
//! A lookup takes a read lock and clones an `Arc` of the slot's value, so a handle used by
//! several threads while one closes it stays alive until each in-flight call returns; the
//! close itself stops the engine, which fails those calls with `RINGLOG_ERR_CLOSED`.
//!
//! A handle belongs to the process that opened it: after `fork` the child inherits the table
//! but not the engine threads behind it, and a call there would wait for a thread that does
//! not exist. Each slot keeps its opener's pid and a lookup from another process is
//! `RINGLOG_ERR_FORKED`.
//!
//! Invariants: a slot's generation only grows; a slot whose generation would overflow
//! [`GENERATION_MAX`] is retired, never reused; at most [`HANDLES_MAX`] slots per kind exist;
//! an encoded handle is never 0 (NULL).

use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use crate::status::{ringlog_status::*, Error};

/// Most handles of one kind (logs, nodes) open at once.
pub(crate) const HANDLES_MAX: usize = 4096;
/// Largest generation of a slot (24 bits of the handle).
const GENERATION_MAX: u32 = (1 << 24) - 1;
const SLOT_BITS: u32 = 32;
const GENERATION_SHIFT: u32 = 32;
const KIND_SHIFT: u32 = 56;

const _: () = assert!(usize::BITS == 64, "handles encode 64-bit ids in pointers");
const _: () = assert!(HANDLES_MAX < (1 << SLOT_BITS) - 1);

/// A table of live handles of one kind.
#[derive(Debug)]
pub(crate) struct Registry<T> {
    kind: u8,
    slots: RwLock<Slots<T>>,
}

#[derive(Debug)]
struct Slots<T> {
    entries: Vec<Slot<T>>,
    /// Empty slots that can be reused (generation below the maximum).
    free: Vec<u32>,
}

#[derive(Debug)]
struct Slot<T> {
    generation: u32,
    value: Option<Arc<T>>,
    /// The process that stored `value`.
    pid: u32,
}

impl<T> Registry<T> {
    /// An empty registry whose handles carry `kind` in their high byte.
    pub const fn new(kind: u8) -> Registry<T> {
        Registry { kind, slots: RwLock::new(Slots { entries: Vec::new(), free: Vec::new() }) }
    }

    /// Stores `value` and returns its handle value (never 0).
    pub fn insert(&self, value: Arc<T>) -> Result<usize, Error> {
        let mut slots = self.write();
        let index = match slots.free.pop() {
            Some(index) => index as usize,
            None if slots.entries.len() < HANDLES_MAX => {
                slots.entries.push(Slot { generation: 0, value: None, pid: 0 });
                slots.entries.len() - 1
            }
            None => {
                return Err(Error::new(
                    RINGLOG_ERR_TOO_MANY_HANDLES,
                    format!("{HANDLES_MAX} handles of this kind are open; close some first"),
                ))
            }
        };
        let slot = &mut slots.entries[index];
        slot.generation += 1;
        slot.value = Some(value);
        slot.pid = std::process::id();
        Ok(self.encode(index, slot.generation))
    }

    /// The value behind `handle`, if it is live.
    pub fn get(&self, handle: usize) -> Result<Arc<T>, Error> {
        let (index, generation) = self.decode(handle)?;
        let slots = self.read();
        match slots.entries.get(index) {
            Some(Slot { generation: g, value: Some(value), pid }) if *g == generation => {
                check_process(*pid)?;
                Ok(value.clone())
            }
            _ => Err(stale(handle)),
        }
    }

    /// Takes the value out of `handle`'s slot: the handle is dead from now on.
    pub fn remove(&self, handle: usize) -> Result<Arc<T>, Error> {
        let (index, generation) = self.decode(handle)?;
        let mut slots = self.write();
        let slot = match slots.entries.get_mut(index) {
            Some(slot) if slot.generation == generation && slot.value.is_some() => slot,
            _ => return Err(stale(handle)),
        };
        check_process(slot.pid)?;
        let value = slot.value.take().ok_or_else(|| stale(handle))?;
        if slot.generation < GENERATION_MAX {
            slots.free.push(index as u32);
        }
        Ok(value)
    }

    /// Every live value (used by tests and diagnostics).
    #[cfg(test)]
    pub fn live(&self) -> usize {
        self.read().entries.iter().filter(|s| s.value.is_some()).count()
    }

    fn encode(&self, index: usize, generation: u32) -> usize {
        (usize::from(self.kind) << KIND_SHIFT)
            | ((generation as usize) << GENERATION_SHIFT)
            | (index + 1)
    }

    fn decode(&self, handle: usize) -> Result<(usize, u32), Error> {
        if handle == 0 {
            return Err(Error::null("handle"));
        }
        let kind = (handle >> KIND_SHIFT) as u8;
        let generation = ((handle >> GENERATION_SHIFT) & GENERATION_MAX as usize) as u32;
        let slot = handle & ((1usize << SLOT_BITS) - 1);
        if kind != self.kind || slot == 0 || generation == 0 {
            return Err(Error::new(
                RINGLOG_ERR_BAD_HANDLE,
                format!("{handle:#x} is not a handle of this kind (wrong kind or garbage)"),
            ));
        }
        Ok((slot - 1, generation))
    }

    fn read(&self) -> RwLockReadGuard<'_, Slots<T>> {
        // The table is only mutated by short, panic-free sections: a poisoned lock still
        // holds consistent data.
        self.slots.read().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Slots<T>> {
        self.slots.write().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// `RINGLOG_ERR_FORKED` unless this is the process `pid` that stored the handle.
fn check_process(pid: u32) -> Result<(), Error> {
    let current = std::process::id();
    if current == pid {
        return Ok(());
    }
    Err(Error::new(
        RINGLOG_ERR_FORKED,
        format!(
            "this handle was opened by process {pid}; this is process {current}, forked from \
             it: a forked child cannot use or close its parent's handles (open its own)"
        ),
    ))
}

fn stale(handle: usize) -> Error {
    Error::new(
        RINGLOG_ERR_BAD_HANDLE,
        format!("handle {handle:#x} is closed (use after close or double close) or unknown"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_closed_handle_is_refused_even_after_its_slot_is_reused() {
        let registry: Registry<u32> = Registry::new(7);
        let first = registry.insert(Arc::new(1)).unwrap();
        assert_eq!(*registry.get(first).unwrap(), 1);
        assert_eq!(*registry.remove(first).unwrap(), 1);
        assert_eq!(registry.get(first).unwrap_err().status, RINGLOG_ERR_BAD_HANDLE);
        assert_eq!(registry.remove(first).unwrap_err().status, RINGLOG_ERR_BAD_HANDLE);
        let second = registry.insert(Arc::new(2)).unwrap();
        assert_ne!(first, second, "the reused slot has a new generation");
        assert_eq!(registry.get(first).unwrap_err().status, RINGLOG_ERR_BAD_HANDLE);
        assert_eq!(*registry.get(second).unwrap(), 2);
    }

    #[test]
    fn handles_of_another_kind_null_and_garbage_are_refused() {
        let logs: Registry<u32> = Registry::new(1);
        let nodes: Registry<u32> = Registry::new(2);
        let log = logs.insert(Arc::new(1)).unwrap();
        assert_eq!(nodes.get(log).unwrap_err().status, RINGLOG_ERR_BAD_HANDLE);
        assert_eq!(logs.get(0).unwrap_err().status, RINGLOG_ERR_NULL_POINTER);
        for garbage in [1usize, 0xdead_beef, usize::MAX, log + 1, log ^ (1 << 40)] {
            assert_eq!(logs.get(garbage).unwrap_err().status, RINGLOG_ERR_BAD_HANDLE);
        }
    }

    #[test]
    fn the_table_is_bounded() {
        let registry: Registry<u32> = Registry::new(3);
        let handles: Vec<usize> =
            (0..HANDLES_MAX).map(|i| registry.insert(Arc::new(i as u32)).unwrap()).collect();
        let refused = registry.insert(Arc::new(0)).unwrap_err();
        assert_eq!(refused.status, RINGLOG_ERR_TOO_MANY_HANDLES);
        registry.remove(handles[17]).unwrap();
        registry.insert(Arc::new(0)).unwrap();
        assert_eq!(registry.live(), HANDLES_MAX);
    }
}
