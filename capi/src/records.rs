//! Records in and out of C memory: the append input array and the read buffer format.
//!
//! **Append input:** an array of [`ringlog_record`] `{ data, len }`; each becomes one record
//! of one batch. A record of zero bytes is allowed (`data` may then be NULL); zero records is
//! `RINGLOG_ERR_EMPTY_APPEND`. The batch size (header + 4 bytes + `len` per record) is
//! computed and checked against `batch_size_max` *before* any C memory is read or any
//! buffer allocated, so an absurd `len` is `RINGLOG_ERR_OVERSIZE`, never an allocation.
//!
//! **Read buffer:** records, in offset order, each as a little-endian `u32` length followed by
//! that many bytes, back to back, no padding:
//!
//! ```text
//! [len0: u32 LE][len0 bytes][len1: u32 LE][len1 bytes]...
//! ```
//!
//! The first record is the one at the requested offset and record `i` has offset
//! `offset + i` (offsets are dense; control batches hold no records). Only whole records are
//! written; `*out_next_offset` is the offset after the last record written.
//!
//! Invariants: no slice is built from C memory before its total length was bounded; every
//! batch read was checksum-verified by the engine and is decoded again here (`decode_batch`)
//! before a byte of it is copied out.

use std::ffi::c_void;

use bytes::Bytes;
use ringlog_engine::batch::{BATCH_HEADER_SIZE, RECORD_PREFIX_SIZE};
use ringlog_engine::limits::RECORD_COUNT_MAX;
use ringlog_engine::{decode_batch, Records, RecordsBuilder};
use ringlog_net::protocol::Consistency;

use crate::node::{RINGLOG_READ_LINEARIZABLE, RINGLOG_READ_REPLICA_COMMITTED};
use crate::status::{ringlog_status::*, Error};

/// Bytes of the length prefix of each record in a read buffer.
pub const RINGLOG_RECORD_PREFIX_BYTES: u32 = 4;

/// One record to append: `len` bytes at `data` (`data` may be NULL when `len` is 0).
#[allow(non_camel_case_types)]
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ringlog_record {
    pub data: *const u8,
    pub len: usize,
}

/// Borrows `count` records from C memory as slices, after bounding their total size.
///
/// # Safety
/// `records` must point to `count` readable `ringlog_record`s (unless `count` is 0), each
/// `data` to `len` readable bytes (unless `len` is 0), alive for `'a`.
pub(crate) unsafe fn slices_from_c<'a>(
    records: *const ringlog_record,
    count: usize,
    batch_size_max: usize,
) -> Result<Vec<&'a [u8]>, Error> {
    if count == 0 {
        return Err(Error::new(RINGLOG_ERR_EMPTY_APPEND, "an append needs at least one record"));
    }
    if records.is_null() {
        return Err(Error::null("records"));
    }
    if count > RECORD_COUNT_MAX as usize || count > batch_size_max / RECORD_PREFIX_SIZE {
        return Err(Error::new(
            RINGLOG_ERR_OVERSIZE,
            format!("{count} records cannot fit one batch of at most {batch_size_max} bytes"),
        ));
    }
    // SAFETY: the caller guarantees `count` readable records at `records` (non-NULL checked
    // above), and `count` is bounded by `batch_size_max / 4`, so the slice length is sane.
    let records = unsafe { std::slice::from_raw_parts(records, count) };
    // Every sum is checked: a `len` near SIZE_MAX must not wrap into a small total.
    let mut total = BATCH_HEADER_SIZE;
    for (i, record) in records.iter().enumerate() {
        if record.data.is_null() && record.len != 0 {
            return Err(Error::null(&format!("records[{i}].data (len {})", record.len)));
        }
        total = RECORD_PREFIX_SIZE
            .checked_add(record.len)
            .and_then(|size| total.checked_add(size))
            .filter(|total| *total <= batch_size_max)
            .ok_or_else(|| {
                Error::new(
                    RINGLOG_ERR_OVERSIZE,
                    format!(
                        "records[{i}] ({} bytes) takes the batch past batch_size_max                          {batch_size_max}",
                        record.len
                    ),
                )
            })?;
    }
    Ok(records
        .iter()
        .map(|record| {
            if record.len == 0 {
                &[][..]
            } else {
                // SAFETY: non-NULL (checked above), `len` readable bytes per the caller's
                // contract, and `len` ≤ batch_size_max (the total was bounded above).
                unsafe { std::slice::from_raw_parts(record.data, record.len) }
            }
        })
        .collect())
}

/// Reads `count` records from C memory into one batch's records.
///
/// # Safety
/// As [`slices_from_c`].
pub(crate) unsafe fn records_from_c(
    records: *const ringlog_record,
    count: usize,
    batch_size_max: usize,
) -> Result<Records, Error> {
    // SAFETY: forwarded caller contract.
    let slices = unsafe { slices_from_c(records, count, batch_size_max)? };
    let mut builder = RecordsBuilder::new(batch_size_max);
    for value in slices {
        builder.push(value).map_err(|error| Error::new(RINGLOG_ERR_OVERSIZE, error.to_string()))?;
    }
    Ok(builder.finish())
}

/// What a read wrote into the caller's buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Copied {
    pub len: usize,
    pub next_offset: u64,
}

/// Copies the records from `offset` on out of `batches` (whole batches, the first holding
/// `offset`) into `buf` in the read-buffer format. Returns `RINGLOG_ERR_BUFFER_TOO_SMALL` with
/// the needed size when not even the first record fits.
pub(crate) fn copy_records(
    batches: &[Bytes],
    offset: u64,
    batch_size_max: usize,
    buf: &mut [u8],
) -> Result<Copied, (Error, usize)> {
    let mut len = 0usize;
    let mut next = offset;
    for batch in batches {
        let view = decode_batch(batch, batch_size_max).map_err(|error| {
            (
                Error::new(
                    RINGLOG_ERR_INTERNAL,
                    format!("a fetched batch does not decode: {error}"),
                ),
                0,
            )
        })?;
        if view.header().is_control() {
            continue;
        }
        let base = view.header().base_offset().0;
        for (i, value) in view.records().enumerate() {
            let record_offset = base + i as u64;
            if record_offset < next {
                continue;
            }
            if record_offset > next {
                let message = format!("fetched records jump from offset {next} to {record_offset}");
                return Err((Error::new(RINGLOG_ERR_INTERNAL, message), 0));
            }
            let needed = RECORD_PREFIX_SIZE + value.len();
            if buf.len() - len < needed {
                if len == 0 {
                    let message = format!(
                        "the record at offset {record_offset} needs {needed} bytes of buffer; \
                         the buffer has {}",
                        buf.len()
                    );
                    return Err((Error::new(RINGLOG_ERR_BUFFER_TOO_SMALL, message), needed));
                }
                return Ok(Copied { len, next_offset: next });
            }
            buf[len..len + RECORD_PREFIX_SIZE].copy_from_slice(&(value.len() as u32).to_le_bytes());
            buf[len + RECORD_PREFIX_SIZE..len + needed].copy_from_slice(value);
            len += needed;
            next += 1;
        }
    }
    Ok(Copied { len, next_offset: next })
}

/// The prologue every read entry point (`ringlog_log_read`, `ringlog_node_read`,
/// `ringlog_client_fetch`) runs before anything else: both out-parameters must be non-NULL,
/// and they are set to "nothing read, read again from `offset`" so that a failing call
/// leaves them defined.
///
/// # Safety
/// `out_len` and `out_next_offset` must each be NULL or writable.
pub(crate) unsafe fn begin_read(
    out_len: *mut usize,
    out_next_offset: *mut u64,
    offset: u64,
) -> Result<(), Error> {
    if out_len.is_null() {
        return Err(Error::null("out_len"));
    }
    if out_next_offset.is_null() {
        return Err(Error::null("out_next_offset"));
    }
    // SAFETY: both non-NULL and writable per the caller's contract.
    unsafe {
        out_len.write(0);
        out_next_offset.write(offset);
    }
    Ok(())
}

/// A read's `consistency` argument (`RINGLOG_READ_*`) as the protocol's [`Consistency`].
pub(crate) fn consistency_from_c(consistency: u32) -> Result<Consistency, Error> {
    match consistency {
        RINGLOG_READ_LINEARIZABLE => Ok(Consistency::LeaderLinearizable),
        RINGLOG_READ_REPLICA_COMMITTED => Ok(Consistency::ReplicaCommitted),
        other => Err(Error::invalid(format!("consistency {other} is not RINGLOG_READ_*"))),
    }
}

/// Copies the records from `offset` on out of `batches` into `buf` ([`copy_records`]) and
/// reports the outcome through the caller's out-parameters: the bytes written and the next
/// offset to read on success, the buffer size needed when not even the first record fits.
///
/// # Safety
/// `out_len` and `out_next_offset` must be non-NULL and writable.
pub(crate) unsafe fn deliver_read(
    batches: &[Bytes],
    offset: u64,
    batch_size_max: usize,
    buf: &mut [u8],
    out_len: *mut usize,
    out_next_offset: *mut u64,
) -> Result<(), Error> {
    match copy_records(batches, offset, batch_size_max, buf) {
        Ok(copied) => {
            // SAFETY: non-NULL and writable per the caller's contract.
            unsafe {
                out_len.write(copied.len);
                out_next_offset.write(copied.next_offset);
            }
            Ok(())
        }
        Err((error, needed)) => {
            // SAFETY: as above.
            unsafe { out_len.write(needed) };
            Err(error)
        }
    }
}

/// The caller's read buffer as a slice (empty when `cap` is 0, whatever `buf` is).
///
/// # Safety
/// `buf` must point to `cap` writable bytes when `cap` is not 0.
pub(crate) unsafe fn buffer_from_c<'a>(
    buf: *mut c_void,
    cap: usize,
) -> Result<&'a mut [u8], Error> {
    if cap == 0 {
        return Ok(&mut []);
    }
    if buf.is_null() {
        return Err(Error::null("buf"));
    }
    if cap > isize::MAX as usize {
        return Err(Error::invalid(format!("cap {cap} exceeds isize::MAX")));
    }
    // SAFETY: non-NULL, `cap` ≤ isize::MAX and writable per the caller's contract; the slice
    // lives only for the duration of the call that received `buf`.
    Ok(unsafe { std::slice::from_raw_parts_mut(buf.cast::<u8>(), cap) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringlog_engine::batch::{encode_batch, BatchStamp};
    use ringlog_engine::{LogIndex, Offset, Term};

    fn batch(base: u64, values: &[&[u8]]) -> Bytes {
        let mut builder = RecordsBuilder::new(1 << 20);
        for value in values {
            builder.push(value).unwrap();
        }
        let records = builder.finish();
        let stamp = BatchStamp {
            term: Term(1),
            index: LogIndex(base + 1),
            base_offset: Offset(base),
            record_count: records.count,
            flags: 0,
            first_timestamp_ms: 0,
            max_timestamp_ms: 0,
            prev_crc: 0,
        };
        encode_batch(&stamp, &records.bytes)
    }

    #[test]
    fn records_are_copied_from_the_requested_offset_as_length_prefixed_values() {
        let batches = [batch(10, &[b"a", b"", b"ccc"]), batch(13, &[b"dd"])];
        let mut buf = [0u8; 64];
        let copied = copy_records(&batches, 11, 1 << 20, &mut buf).unwrap();
        assert_eq!(copied, Copied { len: 4 + 4 + 3 + 4 + 2, next_offset: 14 });
        assert_eq!(&buf[..copied.len], b"\0\0\0\0\x03\0\0\0ccc\x02\0\0\0dd");
    }

    #[test]
    fn only_whole_records_are_copied_and_a_too_small_buffer_reports_the_size_needed() {
        let batches = [batch(0, &[b"hello", b"world!"])];
        let mut buf = [0u8; 12];
        let copied = copy_records(&batches, 0, 1 << 20, &mut buf).unwrap();
        assert_eq!(copied, Copied { len: 9, next_offset: 1 });
        let mut tiny = [0u8; 8];
        let (error, needed) = copy_records(&batches, 0, 1 << 20, &mut tiny).unwrap_err();
        assert_eq!(error.status, RINGLOG_ERR_BUFFER_TOO_SMALL);
        assert_eq!(needed, 9);
    }

    #[test]
    fn record_lengths_near_size_max_are_oversize_never_a_wrapped_total() {
        for k in 0..8 {
            let huge = ringlog_record { data: std::ptr::dangling(), len: usize::MAX - k };
            // SAFETY: the record's data is never read: the size check refuses it first.
            let error = unsafe { records_from_c(&huge, 1, 1 << 20) }.unwrap_err();
            assert_eq!(error.status, RINGLOG_ERR_OVERSIZE, "len SIZE_MAX - {k}");
            // A small record first, then the huge one: the running total must not wrap.
            let pair = [ringlog_record { data: std::ptr::dangling(), len: 1 }, huge];
            // SAFETY: as above (the small record is not read either: the check comes first).
            let error = unsafe { records_from_c(pair.as_ptr(), 2, 1 << 20) }.unwrap_err();
            assert_eq!(error.status, RINGLOG_ERR_OVERSIZE, "len 1 + SIZE_MAX - {k}");
        }
        // Two halves whose sum wraps exactly past zero.
        let half = ringlog_record { data: std::ptr::dangling(), len: usize::MAX / 2 + 1 };
        let pair = [half, half];
        // SAFETY: as above.
        let error = unsafe { records_from_c(pair.as_ptr(), 2, 1 << 20) }.unwrap_err();
        assert_eq!(error.status, RINGLOG_ERR_OVERSIZE);
    }

    #[test]
    fn oversize_and_empty_appends_are_refused_before_reading_the_data() {
        let huge = ringlog_record { data: std::ptr::dangling(), len: usize::MAX / 2 };
        // SAFETY: the record's data is never read: the size check refuses it first.
        let error = unsafe { records_from_c(&huge, 1, 1 << 20) }.unwrap_err();
        assert_eq!(error.status, RINGLOG_ERR_OVERSIZE);
        // SAFETY: count 0: nothing is read.
        let error = unsafe { records_from_c(std::ptr::null(), 0, 1 << 20) }.unwrap_err();
        assert_eq!(error.status, RINGLOG_ERR_EMPTY_APPEND);
        let empty = ringlog_record { data: std::ptr::null(), len: 0 };
        // SAFETY: one valid record of zero bytes.
        let records = unsafe { records_from_c(&empty, 1, 1 << 20) }.unwrap();
        assert_eq!(records.count, 1);
    }
}
