//! How Raft entries map onto record batches, both ways. No IO.
//!
//! The wire batch is the disk batch: a follower writes the leader's stamped bytes unchanged.
//! - `Normal` entry: a data batch. On the leader, before the log stamps it, the entry's
//!   payload is the client's batch with a zero stamp (`propose` gets the client batch as is);
//!   the log re-stamps it (`Log::append`). Everywhere else the payload is the stamped batch.
//! - `Noop` entry: a `CONTROL_NOOP` batch with an empty payload.
//! - `Membership` entry: a `CONTROL_MEMBERSHIP` batch whose payload is a
//!   [`MembershipRecord`] (the membership plus the members' addresses).
//!
//! A leader's own `Noop` / `Membership` entries reach the replicator with an empty payload
//! (the core creates them); its own `Normal` entries carry a zero-stamp batch (index 0). A
//! stamped batch always has index >= 1, so the two are told apart by the payload alone.
//!
//! Invariant: every entry passed to the Raft core from the wire went through
//! [`EngineBatchCheck`]: the batch decodes (checksums, record structure, length), its header's
//! term and index are the entry's, and its control flags agree with the entry's kind.

#![forbid(unsafe_code)]

use bytes::Bytes;
use ringlog_engine::batch::{peek_header, BatchHeader};
use ringlog_engine::{decode_batch, AppendRequest, CONTROL_MEMBERSHIP, CONTROL_NOOP};
use ringlog_net::peer::BatchCheck;
use ringlog_raft::{Entry, EntryKind, LogIndex, Term};

use crate::node::addresses::MembershipRecord;

/// Verifies received entries with the engine's batch decoder (see the module invariant).
#[derive(Clone, Copy, Debug)]
pub(crate) struct EngineBatchCheck {
    pub batch_size_max: usize,
}

impl BatchCheck for EngineBatchCheck {
    fn check(&self, entry: &Entry) -> Result<(), String> {
        let view = decode_batch(&entry.payload, self.batch_size_max).map_err(|e| e.to_string())?;
        let header = view.header();
        if header.length() != entry.payload.len() {
            return Err("bytes after the batch's length".into());
        }
        if header.term() != entry.term || header.index() != entry.index {
            return Err(format!(
                "batch stamped {}/{} carried as entry {}/{}",
                header.term(),
                header.index(),
                entry.term,
                entry.index
            ));
        }
        let flags = header.flags.get();
        let kind_ok = match &entry.kind {
            EntryKind::Normal => flags == 0,
            EntryKind::Noop => flags == CONTROL_NOOP,
            EntryKind::Membership(membership) => {
                flags == CONTROL_MEMBERSHIP
                    && MembershipRecord::decode(view.payload())
                        .map_err(|e| e.to_string())?
                        .membership
                        == *membership
            }
        };
        if !kind_ok {
            return Err(format!("batch flags {flags:#06x} do not match the entry kind"));
        }
        Ok(())
    }
}

/// Where an entry's payload comes from (see the module docs).
#[derive(Debug)]
pub(crate) enum EntrySource {
    /// Created by this leader: the log stamps it.
    Own(AppendRequest),
    /// Stamped by a leader: appended byte for byte.
    Stamped(Bytes),
}

/// Classifies an entry of an `AppendEntries` action. `record` is the membership record to
/// store for a leader's own membership entry (the core gives it no payload).
pub(crate) fn entry_source(
    entry: &Entry,
    batch_size_max: usize,
    record: impl FnOnce() -> MembershipRecord,
) -> Result<EntrySource, String> {
    if entry.payload.is_empty() {
        let (flags, payload) = match &entry.kind {
            EntryKind::Noop => (CONTROL_NOOP, Bytes::new()),
            EntryKind::Membership(_) => (CONTROL_MEMBERSHIP, record().encode()),
            EntryKind::Normal => return Err(format!("entry {} has no batch", entry.index)),
        };
        let now = now_unix_ms();
        return Ok(EntrySource::Own(AppendRequest::control(entry.term, flags, payload, now)));
    }
    let header = peek_header(&entry.payload, batch_size_max).map_err(|e| e.to_string())?;
    if header.index() != LogIndex(0) {
        return Ok(EntrySource::Stamped(entry.payload.clone()));
    }
    let header: BatchHeader = *header;
    let records = entry.payload.slice(ringlog_engine::batch::BATCH_HEADER_SIZE..header.length());
    Ok(EntrySource::Own(AppendRequest {
        term: entry.term,
        records,
        record_count: header.record_count(),
        flags: 0,
        first_timestamp_ms: header.first_timestamp_ms.get(),
        max_timestamp_ms: header.max_timestamp_ms.get(),
    }))
}

/// The entry a stamped batch read from the log stands for (the leader sending it).
pub(crate) fn entry_of_batch(batch: Bytes, batch_size_max: usize) -> Result<Entry, String> {
    let header = *peek_header(&batch, batch_size_max).map_err(|e| e.to_string())?;
    let flags = header.flags.get();
    let kind = if flags & CONTROL_MEMBERSHIP != 0 {
        let payload = &batch[ringlog_engine::batch::BATCH_HEADER_SIZE..header.length()];
        EntryKind::Membership(
            MembershipRecord::decode(payload).map_err(|e| e.to_string())?.membership,
        )
    } else if flags & CONTROL_NOOP != 0 {
        EntryKind::Noop
    } else {
        EntryKind::Normal
    };
    Ok(Entry { term: header.term(), index: header.index(), kind, payload: batch })
}

/// Checks a client batch (decision 3 of the contract): a valid data batch with a zero stamp.
/// Returns its record count.
pub(crate) fn check_client_batch(batch: &Bytes, batch_size_max: usize) -> Result<u32, String> {
    let view = decode_batch(batch, batch_size_max).map_err(|e| e.to_string())?;
    let header = view.header();
    if header.length() != batch.len() {
        return Err("bytes after the batch's length".into());
    }
    if header.is_control() {
        return Err("a produced batch cannot be a control batch".into());
    }
    if header.term() != Term(0)
        || header.index() != LogIndex(0)
        || header.base_offset().0 != 0
        || header.prev_crc.get() != 0
    {
        return Err(
            "a produced batch must have a zero stamp (term, index, offset, prev crc)".into()
        );
    }
    Ok(header.record_count())
}

pub(crate) fn now_unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
