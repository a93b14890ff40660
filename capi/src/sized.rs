//! Versioned structs crossing the ABI: a leading `size` field tells how many bytes the caller
//! has, so a struct can grow at its end without breaking older or newer callers.
//!
//! Reading (options): a caller's struct smaller than the first version is refused; a larger
//! one (a newer header) is accepted only if every byte this library does not know is zero
//! ("default"). Writing (status): only `min(size, ours)` bytes are written.
//!
//! Invariants: never read or write past the caller's `size`; never accept a struct too
//! small to hold every field of its first version.

use crate::status::Error;

/// Reads a `T` whose caller-side size is `size` (defaults for fields the caller lacks never
/// arise: `min_size` is `T`'s full first-version size).
///
/// # Safety
/// `ptr` must point to `size` readable bytes.
pub(crate) unsafe fn read_sized<T: Copy>(
    ptr: *const T,
    size: usize,
    min_size: usize,
    name: &str,
) -> Result<T, Error> {
    let ours = std::mem::size_of::<T>();
    if size < min_size || size > u32::MAX as usize {
        return Err(crate::log::bad_size(name, size, min_size));
    }
    if size > ours {
        // SAFETY: `size` readable bytes at `ptr` (caller's contract); we read the tail past
        // our own struct only.
        let tail = unsafe { std::slice::from_raw_parts(ptr.cast::<u8>().add(ours), size - ours) };
        if tail.iter().any(|b| *b != 0) {
            return Err(Error::new(
                crate::status::ringlog_status::RINGLOG_ERR_BAD_STRUCT_SIZE,
                format!(
                    "{name}.size = {size} and fields past byte {ours} are set: this library \
                     is older than the header the caller was compiled with"
                ),
            ));
        }
    }
    // SAFETY: `size >= ours` bytes readable (min_size == ours for every struct here).
    Ok(unsafe { std::ptr::read_unaligned(ptr) })
}

/// Writes `value` into a caller's struct of `size` bytes (at most `size_of::<T>()` written).
///
/// # Safety
/// `ptr` must point to `size` writable bytes.
pub(crate) unsafe fn write_sized<T: Copy>(
    ptr: *mut T,
    size: usize,
    min_size: usize,
    value: &T,
    name: &str,
) -> Result<(), Error> {
    if size < min_size || size > u32::MAX as usize {
        return Err(crate::log::bad_size(name, size, min_size));
    }
    let len = size.min(std::mem::size_of::<T>());
    // SAFETY: `len` ≤ size writable bytes at `ptr`; `value` is a plain repr(C) struct of at
    // least `len` bytes; the regions cannot overlap (one is ours on the stack).
    unsafe {
        std::ptr::copy_nonoverlapping((value as *const T).cast::<u8>(), ptr.cast::<u8>(), len)
    };
    Ok(())
}
