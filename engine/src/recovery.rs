//! Recovery: rebuilds a log's in-memory state from its directory on open.
//!
//! Sealed segments are trusted through their persisted index (rescanned only if the index is
//! missing or damaged); only the tail segment is scanned and checksummed. The tail is cut at
//! the first invalid item: if nothing valid lies further than one flush can reach
//! (`LogConfig::torn_reach_bytes`), the damage may be a torn last flush and is zeroed
//! (reported as `torn_bytes_dropped` and `tail_dropped`). Anything else is `Corruption`, unless the
//! caller asked for `RecoveryMode::TruncateAtCorruption`.
//!
//! Recycled segments (header flag `SEGMENT_FLAG_RECYCLED`, docs/format.md#recycled-segments)
//! keep stale batches of the file's earlier lives past their write position: valid checksums,
//! but every stale index is below the header's `stale_index_end`, itself `<= base_index`. So:
//! - the tail scan still ends at the first item that does not continue the segment (a stale
//!   batch fails the index/offset/chain continuity check, stale payload fails its checksum);
//! - only block-aligned valid batch headers with an index `>= base_index` count as "valid data
//!   beyond" (corruption if further than `torn_reach_bytes`); stale headers are ignored;
//! - a sealed segment rescan stops cleanly once it reaches the next segment's base index;
//! - a tail whose block 0 still holds a recycled-spare header (a crash between the roll's
//!   rename and the first flush) is an empty recycled segment, repaired like a torn first flush;
//! - repair of a recycled tail zeroes only the window `[block_floor(E), block_floor(E) +
//!   torn_reach_bytes())` (capped at the file's end), never the stale rest of the file. That
//!   window holds every byte the flushes in flight at the crash could have written. Stale bytes
//!   and torn bytes cannot be told apart (a torn write leaves any mix of old and new bytes), so
//!   the window is zeroed on **every** open of a recycled tail where it is not already all
//!   zeros — after a clean close too: at most `torn_reach_bytes` of writes and one fdatasync per
//!   open, and afterwards nothing of the segment's own indices lies past `E` except what later
//!   flushes in flight may leave, which the next open's window covers again. The bytes zeroed
//!   are reported as `recycled_bytes_zeroed`, not as `torn_bytes_dropped`.
//!
//! Whether recovery may have dropped acknowledged data is reported, never decided here:
//! `RecoveryReport::lost_possibly_acknowledged` is true whenever bytes past the tail's last
//! valid batch could have been this log's own (a torn last flush and rot in an acknowledged
//! one look alike) or a corruption cut was made. The table of outcomes is
//! docs/format.md#recovery-outcomes; the replicated node marks such a replica damaged.
//!
//! Invariants: recovery reads O(tail segment + index files) bytes; every write it makes is
//! fdatasynced and every name change directory-synced before `Log::open` returns; the tail
//! segment is fdatasynced even when nothing was repaired, so that every batch the log reports
//! durable after an open is on stable storage.

#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::rc::Rc;

use crate::batch::{
    padding_len, peek_header, write_padding, BatchHeader, BATCH_HEADER_SIZE, BATCH_MAGIC,
};
use crate::error::{Corruption, CorruptionKind, OpenError};
use crate::io::{DataDir, DirectFile, FaultInjector, OpenFileError};
use crate::limits::{block_ceil, block_floor, LogConfig, RecoveryMode, BLOCK_SIZE, IO_CHUNK_BYTES};
use crate::segment::{
    decode_header, encode_header, index_name, parse_recycle_candidate_name, parse_segment_name,
    segment_name, HeaderState, Segment, RESET_PENDING, SEGMENT_SUFFIX, SPARE_READY,
};
use crate::segment_index::{decode_index, encode_index, SealedIndex, SegmentIndex};
use crate::segment_reader::{InvalidKind, Item, SegmentReader};
use crate::types::{LogIndex, Offset, Term};

/// What recovery found and did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RecoveryReport {
    /// Segments in the log after recovery.
    pub segments: usize,
    /// Sealed segments loaded from their persisted index without reading them.
    pub sealed_trusted: usize,
    /// Sealed segments whose index was missing or damaged, rebuilt by a scan.
    pub sealed_rescanned: usize,
    /// Bytes of the tail segment read and checksummed.
    pub tail_bytes_scanned: u64,
    /// Bytes past the last valid batch of the tail that were zeroed: a torn last flush, or
    /// rot in the last flushes — one node cannot tell which (docs/format.md#recovery-outcomes).
    pub torn_bytes_dropped: u64,
    /// Recovery dropped bytes of the tail that could have held batches of this log (a torn
    /// or rotted last flush; stale bytes of a recycled file do not count). The log alone
    /// cannot know whether they were ever acknowledged: see `lost_possibly_acknowledged`.
    pub tail_dropped: bool,
    /// With `RecoveryMode::TruncateAtCorruption`: where the log was cut.
    pub truncated_at: Option<Corruption>,
    /// Bytes dropped by that cut (from the corrupt batch to the old end of the log).
    pub corruption_bytes_dropped: u64,
    /// A reset interrupted by a crash was completed.
    pub reset_completed: bool,
    /// Whether a spare segment (zero-filled or recycled) was already there.
    pub spare_ready: bool,
    /// Bytes zeroed past the end of a recycled tail segment (stale or torn, see module doc).
    pub recycled_bytes_zeroed: u64,
}

impl RecoveryReport {
    /// Whether recovery dropped anything that may have been acknowledged: a cut tail
    /// (`tail_dropped`) or a corruption cut (`truncated_at`). A replicated log must then
    /// treat the replica as damaged for what it dropped (docs/format.md#recovery-outcomes):
    /// a torn write of the last flushes and rot in acknowledged data look the same here.
    pub fn lost_possibly_acknowledged(&self) -> bool {
        self.tail_dropped || self.truncated_at.is_some()
    }
}

pub(crate) struct Recovered {
    pub segments: Vec<Segment>,
    pub report: RecoveryReport,
    /// The ready spare's stale bound if it is a recycled one.
    pub spare_recycled: Option<LogIndex>,
    /// Retention victims kept for recycling: their stale bounds (names from
    /// `recycle_candidate_name`).
    pub recycle_candidates: Vec<LogIndex>,
}

struct Ctx<'a> {
    dir: &'a DataDir,
    config: &'a LogConfig,
    faults: &'a FaultInjector,
}

fn io_error(path: PathBuf) -> impl FnOnce(std::io::Error) -> OpenError {
    move |source| OpenError::Io { path, source }
}

pub(crate) async fn open_segment_file(dir: &DataDir, name: &str) -> Result<DirectFile, OpenError> {
    let path = dir.join(name);
    match DirectFile::open(&path).await {
        Ok(file) => Ok(file),
        Err(OpenFileError::DirectIoUnsupported(source)) => {
            Err(OpenError::DirectIoUnsupported { path, source })
        }
        Err(OpenFileError::Io(source)) => Err(OpenError::Io { path, source }),
    }
}

/// Recovers the log in `dir`.
pub(crate) async fn recover(
    dir: &DataDir,
    config: &LogConfig,
    faults: &FaultInjector,
) -> Result<Recovered, OpenError> {
    let ctx = Ctx { dir, config, faults };
    let mut report = RecoveryReport::default();
    let dir_err = || io_error(dir.path().to_path_buf());
    let mut names = dir.list().map_err(dir_err())?;
    if names.iter().any(|n| n == RESET_PENDING) {
        report.reset_completed = finish_reset(&ctx, &names).await?;
        names = dir.list().map_err(dir_err())?;
    }
    for name in &names {
        // A partly filled spare is kept: the preallocator resumes it (spare.rs).
        if name.ends_with(".tmp") {
            dir.remove(name).map_err(io_error(dir.join(name)))?;
        }
    }
    let spare = spare_is_ready(&ctx, &names).await?;
    report.spare_ready = spare.is_some();
    let spare_recycled = spare.flatten();
    let recycle_candidates: Vec<LogIndex> =
        names.iter().filter_map(|n| parse_recycle_candidate_name(n)).collect();
    let mut found: Vec<(Offset, LogIndex, String)> = names
        .iter()
        .filter_map(|n| parse_segment_name(n).map(|(o, i)| (o, i, n.clone())))
        .collect();
    found.sort_by_key(|(_, index, _)| *index);
    for name in &names {
        if name.ends_with(".idx") && !found.iter().any(|(_, _, s)| index_name(s) == *name) {
            dir.remove(name).map_err(io_error(dir.join(name)))?;
        }
    }
    dir.sync(faults).await.map_err(dir_err())?;

    let mut segments: Vec<Segment> = Vec::with_capacity(found.len());
    let count = found.len();
    let mut i = 0;
    while i < count {
        let (base_offset, base_index, name) = found[i].clone();
        let next_base = found.get(i + 1).map(|(_, index, _)| *index);
        let file = Rc::new(open_segment_file(dir, &name).await?);
        let size = file.file_size().await.map_err(io_error(dir.join(&name)))?;
        let capacity = block_floor(size);
        let prev = segments.last();
        let sealed = load_index(&ctx, capacity, &name, base_offset, base_index, next_base).await;
        if let Some(sealed) = sealed.filter(|s| continues(prev, s)) {
            report.sealed_trusted += 1;
            segments.push(segment_from_index(name, file, capacity, sealed));
            i += 1;
            continue;
        }
        let is_last = next_base.is_none();
        let start = Start { base_offset, base_index, capacity };
        let outcome = scan(&ctx, &file, &name, start, prev, next_base).await?;
        match outcome {
            Scanned::Clean(segment) if !is_last => {
                report.sealed_rescanned += 1;
                // What lies past a rescanned segment's data is unknown (a truncation may have
                // cut it): never recycle it.
                let segment = Segment { sealed: true, cut: true, ..segment };
                match persist_index(ctx.dir, ctx.faults, &segment.name, &sealed_index(&segment))
                    .await
                {
                    Ok(()) => {}
                    // A full disk: the index stays in memory, the next open rescans the
                    // segment (what an absent index file means anyway).
                    Err(e) if crate::io::is_no_space(&e) => {
                        tracing::warn!(segment = %segment.name, error = %e, "disk full: index of a rescanned segment not persisted");
                        let _ = dir.remove(&format!("{}.tmp", index_name(&segment.name)));
                    }
                    Err(e) => return Err(io_error(dir.join(&index_name(&segment.name)))(e)),
                }
                segments.push(segment);
            }
            Scanned::Clean(segment) => segments.push(segment),
            Scanned::Damaged { segment, damage, end, dirty_end, scanned, own_dropped } => {
                report.tail_bytes_scanned += scanned;
                let torn = is_last && damage.is_none();
                report.tail_dropped |= own_dropped;
                if !torn && config.recovery_mode == RecoveryMode::Strict {
                    return Err(OpenError::Corruption(damage.unwrap_or_else(|| Corruption {
                        segment: dir.join(&segment.name),
                        position: end,
                        kind: CorruptionKind::Discontinuity {
                            detail: "a sealed segment ends before the next segment starts".into(),
                        },
                    })));
                }
                let mut segment = segment;
                // A recycled tail is cut at the torn window only; a corruption cut zeroes
                // everything dirty (the whole stale rest too: rare, and the file is then
                // never recycled).
                let recycled_torn = torn && segment.recycled.is_some();
                let zero_end = if torn { dirty_end.torn } else { dirty_end.all };
                repair_tail(&ctx, &mut segment, end, zero_end).await?;
                if recycled_torn {
                    report.recycled_bytes_zeroed = zero_end.saturating_sub(end);
                } else if torn {
                    report.torn_bytes_dropped = zero_end.saturating_sub(end);
                } else {
                    segment.cut = true;
                    let dirty_end = zero_end;
                    report.corruption_bytes_dropped = dirty_end.saturating_sub(end);
                    for (_, _, later) in found[i + 1..].iter().rev() {
                        let size = std::fs::metadata(dir.join(later)).map_or(0, |m| m.len());
                        report.corruption_bytes_dropped += size;
                        dir.remove(&index_name(later)).map_err(dir_err())?;
                        dir.remove(later).map_err(dir_err())?;
                    }
                    dir.sync(faults).await.map_err(dir_err())?;
                    report.truncated_at = Some(damage.unwrap_or_else(|| Corruption {
                        segment: dir.join(&segment.name),
                        position: end,
                        kind: CorruptionKind::Discontinuity { detail: "gap".into() },
                    }));
                }
                // A cut segment becomes the active tail: its old index no longer applies.
                dir.remove(&index_name(&segment.name)).map_err(dir_err())?;
                segments.push(segment);
                break;
            }
        }
        i += 1;
    }
    if let Some(last) = segments.last() {
        if !last.sealed {
            // The active tail gets no index file until it is sealed.
            dir.remove(&index_name(&last.name)).map_err(dir_err())?;
        }
        // What recovery accepts is durable before the log reports it durable: a write whose
        // fdatasync failed (the process then exited) or never ran (killed in between) may
        // sit in the device's volatile cache, readable now and gone after a power loss.
        last.file.sync(faults).await.map_err(io_error(dir.join(&last.name)))?;
    }
    dir.sync(faults).await.map_err(dir_err())?;
    report.segments = segments.len();
    Ok(Recovered { segments, report, spare_recycled, recycle_candidates })
}

/// Completes (or abandons) a reset interrupted by a crash.
async fn finish_reset(ctx: &Ctx<'_>, names: &[String]) -> Result<bool, OpenError> {
    let path = ctx.dir.join(RESET_PENDING);
    let file = open_segment_file(ctx.dir, RESET_PENDING).await?;
    let block = file.read_at(0, BLOCK_SIZE).await.map_err(io_error(path.clone()))?;
    let header = decode_header(&block);
    file.close().await.map_err(io_error(path.clone()))?;
    let HeaderState::Valid(meta) = header else {
        ctx.dir.remove(RESET_PENDING).map_err(io_error(path))?;
        return Ok(false);
    };
    for name in names.iter().rev() {
        if name.ends_with(SEGMENT_SUFFIX) || name.ends_with(".idx") {
            ctx.dir.remove(name).map_err(io_error(ctx.dir.join(name)))?;
        }
    }
    ctx.dir.sync(ctx.faults).await.map_err(io_error(path.clone()))?;
    let final_name = segment_name(meta.base_offset, meta.base_index);
    ctx.dir.rename(RESET_PENDING, &final_name).map_err(io_error(path.clone()))?;
    ctx.dir.sync(ctx.faults).await.map_err(io_error(path))?;
    Ok(true)
}

/// Whether a usable spare is ready: `Some(None)` zero-filled, `Some(Some(bound))` recycled
/// (block 0 a recycled-spare header with stale bound `bound`). A spare of another size or
/// with any other block 0 is deleted (the preallocator makes a new one).
async fn spare_is_ready(
    ctx: &Ctx<'_>,
    names: &[String],
) -> Result<Option<Option<LogIndex>>, OpenError> {
    if !names.iter().any(|n| n == SPARE_READY) {
        return Ok(None);
    }
    let path = ctx.dir.join(SPARE_READY);
    let size = std::fs::metadata(&path).map_err(io_error(path.clone()))?.len();
    if size == ctx.config.segment_size_bytes {
        let file = open_segment_file(ctx.dir, SPARE_READY).await?;
        let block = file.read_at(0, BLOCK_SIZE).await.map_err(io_error(path.clone()))?.to_vec();
        file.close().await.map_err(io_error(path.clone()))?;
        match decode_header(&block) {
            HeaderState::Zero => return Ok(Some(None)),
            HeaderState::RecycledSpare(spare) if spare.segment_size == size => {
                return Ok(Some(Some(spare.stale_index_end)));
            }
            _ => {}
        }
    }
    ctx.dir.remove(SPARE_READY).map_err(io_error(path))?;
    Ok(None)
}

/// Loads a segment's index file if it exists, is intact and agrees with the segment's name
/// and its successor.
async fn load_index(
    ctx: &Ctx<'_>,
    capacity: u64,
    name: &str,
    base_offset: Offset,
    base_index: LogIndex,
    next_base: Option<LogIndex>,
) -> Option<SealedIndex> {
    let path = ctx.dir.join(&index_name(name));
    let index_file = match DirectFile::open_existing(&path).await {
        Ok(Some(file)) => file,
        _ => return None,
    };
    let size = index_file.file_size().await.ok()?;
    let bytes = if size > 0 && size <= (64 << 20) {
        index_file.read_at(0, size as usize).await.ok().map(|r| r.to_vec())
    } else {
        None
    };
    let _ = index_file.close().await;
    let sealed = decode_index(&bytes?)?;
    let fits = sealed.base_offset == base_offset
        && sealed.base_index == base_index
        && sealed.write_position <= capacity
        && next_base.is_none_or(|next| sealed.next_index == next);
    fits.then_some(sealed)
}

fn continues(prev: Option<&Segment>, sealed: &SealedIndex) -> bool {
    match prev {
        None => true,
        Some(p) => {
            p.next_index == sealed.base_index
                && p.next_offset == sealed.base_offset
                && p.last_crc == sealed.prev_crc
        }
    }
}

fn segment_from_index(
    name: String,
    file: Rc<DirectFile>,
    capacity: u64,
    s: SealedIndex,
) -> Segment {
    Segment {
        name,
        file,
        capacity,
        base_offset: s.base_offset,
        base_index: s.base_index,
        prev_term: s.prev_term,
        prev_crc: s.prev_crc,
        header_written: true,
        write_position: s.write_position,
        data_end: s.data_end,
        next_index: s.next_index,
        next_offset: s.next_offset,
        last_crc: s.last_crc,
        last_term: s.last_term,
        index: s.index,
        sealed: true,
        // Whether the file is recycled matters only to a tail scan; a sealed segment's reads
        // are bounded by its index.
        recycled: None,
        cut: s.cut,
    }
}

/// The index file contents describing `segment`.
pub(crate) fn sealed_index(segment: &Segment) -> SealedIndex {
    SealedIndex {
        base_offset: segment.base_offset,
        base_index: segment.base_index,
        next_offset: segment.next_offset,
        next_index: segment.next_index,
        data_end: segment.data_end,
        write_position: segment.write_position,
        prev_term: segment.prev_term,
        last_term: segment.last_term,
        prev_crc: segment.prev_crc,
        last_crc: segment.last_crc,
        index: segment.index.clone(),
        cut: segment.cut,
    }
}

/// Writes `{segment}.idx` durably: temp file, fdatasync, rename, directory sync.
pub(crate) async fn persist_index(
    dir: &DataDir,
    faults: &FaultInjector,
    segment_name: &str,
    sealed: &SealedIndex,
) -> std::io::Result<()> {
    let bytes = encode_index(sealed);
    let final_name = index_name(segment_name);
    let tmp_name = format!("{final_name}.tmp");
    dir.remove(&tmp_name)?;
    let file = match DirectFile::open(&dir.join(&tmp_name)).await {
        Ok(file) => file,
        Err(OpenFileError::DirectIoUnsupported(e)) | Err(OpenFileError::Io(e)) => return Err(e),
    };
    let mut buf = file.alloc(bytes.len());
    buf.as_bytes_mut().copy_from_slice(&bytes);
    if let Err(e) = file.write_allocating_at(faults, buf, 0).await {
        // The temp file is never renamed: remove it, so that it holds no space.
        let _ = file.close().await;
        let _ = dir.remove(&tmp_name);
        return Err(e);
    }
    file.sync(faults).await?;
    file.close().await?;
    dir.rename(&tmp_name, &final_name)?;
    dir.sync(faults).await
}

enum Scanned {
    /// The segment is whole: every item valid up to its end (or up to `next_base`).
    Clean(Segment),
    /// The segment stops at an invalid item or unwritten gap. `damage` is `None` when the
    /// damage is explained by a torn last flush; `dirty_end` bounds the bytes to zero.
    /// `own_dropped`: bytes past `end` may be this log's own data (anything non-zero in a
    /// fresh file; in a recycled one, a batch header of this segment's own index range or a
    /// damaged segment header) — never only stale bytes of a recycled file's earlier life.
    Damaged {
        segment: Segment,
        damage: Option<Corruption>,
        end: u64,
        dirty_end: DirtyEnd,
        scanned: u64,
        own_dropped: bool,
    },
}

/// Where the bytes to zero after a cut at `E` end.
#[derive(Clone, Copy, Debug)]
struct DirtyEnd {
    /// The end of the last non-zero byte of the segment (a corruption cut zeroes this far).
    all: u64,
    /// For a torn tail: `all`, or, in a recycled segment, the end of the last non-zero byte
    /// within the torn window `[block_floor(E), block_floor(E) + torn_reach_bytes)`.
    torn: u64,
}

/// Where a segment starts, from its name, and its file size.
struct Start {
    base_offset: Offset,
    base_index: LogIndex,
    capacity: u64,
}

/// Scans one segment from its header on.
async fn scan(
    ctx: &Ctx<'_>,
    file: &Rc<DirectFile>,
    name: &str,
    start: Start,
    prev: Option<&Segment>,
    next_base: Option<LogIndex>,
) -> Result<Scanned, OpenError> {
    let config = ctx.config;
    let path = ctx.dir.join(name);
    let Start { base_offset, base_index, capacity } = start;
    let mut reader = SegmentReader::new(file.clone(), capacity, IO_CHUNK_BYTES);
    let header_block = reader.bytes(0, BLOCK_SIZE).await.map_err(io_error(path.clone()))?.to_vec();
    let (prev_term, prev_crc) = prev.map_or((Term(0), 0), |p| (p.last_term, p.last_crc));
    let mut segment = Segment {
        name: name.to_string(),
        file: file.clone(),
        capacity,
        base_offset,
        base_index,
        prev_term,
        prev_crc,
        header_written: false,
        write_position: 0,
        data_end: 0,
        next_index: base_index,
        next_offset: base_offset,
        last_crc: prev_crc,
        last_term: prev_term,
        index: SegmentIndex::new(),
        sealed: false,
        recycled: None,
        cut: false,
    };
    let corrupt = |position, kind| Corruption { segment: path.clone(), position, kind };
    if let Some(p) = prev {
        if p.next_index != base_index || p.next_offset != base_offset {
            let detail = format!(
                "segment starts at {base_index}/{base_offset}, previous ends at {}/{}",
                p.next_index, p.next_offset
            );
            return Err(corrupt(0, CorruptionKind::Discontinuity { detail }).into());
        }
    }
    let mut header_damaged = false;
    let header_ok = match decode_header(&header_block) {
        HeaderState::Valid(meta) => {
            let matches = meta.base_offset == base_offset
                && meta.base_index == base_index
                && (prev.is_none() || meta.prev_crc == prev_crc)
                && meta.recycled.is_none_or(|bound| bound <= base_index);
            if matches {
                segment.prev_term = meta.prev_term;
                segment.prev_crc = meta.prev_crc;
                segment.last_term = meta.prev_term;
                segment.last_crc = meta.prev_crc;
                segment.recycled = meta.recycled;
            }
            header_damaged = !matches;
            matches
        }
        // Renamed into place by a roll, no flush landed: an empty recycled segment (its
        // header is written by the repair below, as for a torn first flush).
        HeaderState::RecycledSpare(spare) => {
            if spare.stale_index_end <= base_index {
                segment.recycled = Some(spare.stale_index_end);
            }
            false
        }
        HeaderState::Zero => false,
        HeaderState::Invalid => {
            header_damaged = true;
            false
        }
    };
    if !header_ok && prev.is_none() && base_index != LogIndex(1) {
        // The first segment of a log that does not start at index 1 was created by a reset,
        // which writes its header before the segment gets its name.
        if config.recovery_mode == RecoveryMode::Strict {
            return Err(corrupt(0, CorruptionKind::InvalidSegmentHeader).into());
        }
    }
    let mut position = 0;
    let mut stop: Option<CorruptionKind> = None;
    if header_ok {
        segment.header_written = true;
        position = BLOCK_SIZE as u64;
        segment.data_end = position;
        let first_chain_free = prev.is_none();
        let items_max = capacity / 16 + 1;
        for _ in 0..items_max {
            if next_base == Some(segment.next_index) {
                // A sealed segment is complete; whatever follows is stale or cut off.
                break;
            }
            let item = reader
                .next_item(position, config.batch_size_max)
                .await
                .map_err(io_error(path.clone()))?;
            match item {
                Item::Batch { header, len } => {
                    if next_base.is_some_and(|next| header.index() >= next) {
                        break;
                    }
                    let chain_free = first_chain_free && segment.is_empty();
                    if let Err(detail) = check_continuity(&segment, &header, chain_free) {
                        stop = Some(CorruptionKind::Discontinuity { detail });
                        break;
                    }
                    segment.index.note_batch(
                        &header,
                        position,
                        config.index_interval_bytes,
                        segment.last_term,
                    );
                    segment.next_index = header.index().next();
                    segment.next_offset = header.next_offset();
                    segment.last_crc = header.header_crc.get();
                    segment.last_term = header.term();
                    position += len as u64;
                    segment.data_end = position;
                }
                Item::Padding { len } => position += len as u64,
                Item::Zero => {
                    if position % BLOCK_SIZE as u64 != 0 {
                        stop = Some(CorruptionKind::InvalidPadding);
                    }
                    break;
                }
                Item::End => break,
                Item::Invalid(InvalidKind::Batch(e)) => {
                    stop = Some(CorruptionKind::InvalidBatch(e));
                    break;
                }
                Item::Invalid(InvalidKind::Padding) => {
                    stop = Some(CorruptionKind::InvalidPadding);
                    break;
                }
            }
        }
    } else {
        stop = Some(CorruptionKind::InvalidSegmentHeader);
    }
    segment.write_position = block_ceil(position);
    let end = position;
    let probe = Probe { end, capacity, base_index, recycled: segment.recycled.is_some() };
    let beyond = probe_beyond(&mut reader, &probe, config).await.map_err(io_error(path.clone()))?;
    let Beyond { dirty_end, valid_beyond, own_in_window } = beyond;
    let scanned = capacity;
    let is_last = next_base.is_none();
    // Could the bytes past `end` be this log's own (possibly acknowledged) data? In a fresh
    // file anything non-zero is; in a recycled one only what is not provably stale.
    let own_dropped = if segment.recycled.is_some() {
        let own_at_end = header_ok && {
            let at_end =
                reader.bytes(end, BATCH_HEADER_SIZE).await.map_err(io_error(path.clone()))?;
            peek_header(at_end, config.batch_size_max).is_ok_and(|h| h.index() >= base_index)
        };
        header_damaged || own_at_end || own_in_window || valid_beyond.is_some()
    } else {
        header_damaged || dirty_end.all > end || valid_beyond.is_some()
    };
    if is_last {
        // In a recycled tail the stop item may be a stale one: the tail is clean when the torn
        // window past `end` is all zeros (then the stop item was zeros too).
        let benign_stop = stop.is_none() || segment.recycled.is_some();
        if benign_stop && dirty_end.torn <= end && end % BLOCK_SIZE as u64 == 0 {
            segment.write_position = end;
            return Ok(Scanned::Clean(segment));
        }
        let damage = valid_beyond.map(|distance| {
            let kind = stop.clone().unwrap_or(CorruptionKind::DamageBeforeValidData {
                distance,
                flush_write_bytes_max: config.torn_reach_bytes(),
            });
            corrupt(end, kind)
        });
        return Ok(Scanned::Damaged { segment, damage, end, dirty_end, scanned, own_dropped });
    }
    // A sealed segment: every flush into it completed, so any damage is corruption, and it
    // must reach the next segment's first index.
    let complete = next_base == Some(segment.next_index);
    // A short or corrupt sealed segment always dropped acknowledged data.
    let own_dropped = true;
    match stop {
        None if complete => Ok(Scanned::Clean(segment)),
        None => {
            Ok(Scanned::Damaged { segment, damage: None, end, dirty_end, scanned, own_dropped })
        }
        Some(kind) => {
            let damage = Some(corrupt(end, kind));
            Ok(Scanned::Damaged { segment, damage, end, dirty_end, scanned, own_dropped })
        }
    }
}

fn check_continuity(
    segment: &Segment,
    header: &BatchHeader,
    chain_free: bool,
) -> Result<(), String> {
    if header.index() != segment.next_index || header.base_offset() != segment.next_offset {
        return Err(format!(
            "batch {}/{} where {}/{} was expected",
            header.index(),
            header.base_offset(),
            segment.next_index,
            segment.next_offset
        ));
    }
    if !chain_free && header.prev_crc.get() != segment.last_crc {
        return Err(format!(
            "batch {} chains to {:#010x}, the previous batch is {:#010x}",
            header.index(),
            header.prev_crc.get(),
            segment.last_crc
        ));
    }
    if header.term() < segment.last_term {
        return Err(format!(
            "batch {} has term {} below {}",
            header.index(),
            header.term(),
            segment.last_term
        ));
    }
    Ok(())
}

/// What `probe_beyond` looks at: from `end` to `capacity` of a segment starting at
/// `base_index`, recycled or not.
struct Probe {
    end: u64,
    capacity: u64,
    base_index: LogIndex,
    recycled: bool,
}

/// What lies past the end of a segment's valid data.
struct Beyond {
    dirty_end: DirtyEnd,
    /// Distance from `end`'s block to the first block-aligned valid batch header of this
    /// segment further than the flushes in flight can reach (corruption, not a torn flush).
    valid_beyond: Option<u64>,
    /// A block-aligned valid batch header of this segment within that reach (past `end`).
    own_in_window: bool,
}

/// From `end` to the segment's end: where the non-zero bytes end (`DirtyEnd`), and where
/// block-aligned valid batch headers of this segment (index `>= base_index`: stale batches
/// of a recycled file are not data) lie: within the flushes' reach, or further.
async fn probe_beyond(
    reader: &mut SegmentReader,
    probe: &Probe,
    config: &LogConfig,
) -> std::io::Result<Beyond> {
    let Probe { end, capacity, base_index, recycled } = *probe;
    let reach = block_floor(end) + config.torn_reach_bytes();
    let window_end = reach.min(capacity);
    let mut dirty_end = end;
    let mut window_dirty_end = end;
    let mut valid_beyond = None;
    let mut own_in_window = false;
    let mut chunk_start = end;
    while chunk_start < capacity {
        let len = (IO_CHUNK_BYTES as u64).min(capacity - chunk_start) as usize;
        let bytes = reader.bytes(chunk_start, len).await?;
        if bytes.is_empty() {
            break;
        }
        if let Some(last) = bytes.iter().rposition(|b| *b != 0) {
            dirty_end = chunk_start + last as u64 + 1;
        }
        if chunk_start < window_end {
            let in_window = &bytes[..((window_end - chunk_start) as usize).min(bytes.len())];
            if let Some(last) = in_window.iter().rposition(|b| *b != 0) {
                window_dirty_end = chunk_start + last as u64 + 1;
            }
        }
        if valid_beyond.is_none() {
            // Blocks strictly past `end` (the item at `end` itself is the scan's stop item).
            let first = block_ceil(chunk_start.max(end + 1));
            let mut block = if own_in_window { first.max(reach) } else { first };
            while block + 4 <= chunk_start + bytes.len() as u64 {
                let at = (block - chunk_start) as usize;
                let magic =
                    u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]);
                let ours = magic == BATCH_MAGIC
                    && peek_header(&bytes[at..], config.batch_size_max)
                        .is_ok_and(|header| header.index() >= base_index);
                if ours && block < reach {
                    own_in_window = true;
                    block = block.max(reach);
                    continue;
                }
                if ours {
                    valid_beyond = Some(block - block_floor(end));
                    break;
                }
                block += BLOCK_SIZE as u64;
            }
        }
        let advanced = bytes.len() as u64;
        chunk_start += advanced;
    }
    let torn = if recycled { window_dirty_end } else { dirty_end };
    Ok(Beyond { dirty_end: DirtyEnd { all: dirty_end, torn }, valid_beyond, own_in_window })
}

/// Cuts the segment where the scan stopped (`end`, after the last valid batch or padding):
/// zeroes every dirty byte after it (from the far end backwards), pads the block holding
/// `end` if it is not block-aligned, rewrites the header if it was damaged, and fdatasyncs.
///
/// When `end` is block-aligned (the usual torn last flush) no byte below it is written. When
/// it is not, the block holding it belongs to the torn flush (every complete flush ends on a
/// block boundary), and its bytes below `end` are rewritten unchanged.
async fn repair_tail(
    ctx: &Ctx<'_>,
    segment: &mut Segment,
    end: u64,
    dirty_end: u64,
) -> Result<(), OpenError> {
    let path = ctx.dir.join(&segment.name);
    let err = || io_error(path.clone());
    let end = if segment.header_written { end } else { 0 };
    let start = block_floor(end);
    let pad = padding_len(end, BLOCK_SIZE) as u64;
    // With `end == 0` the header block is always rewritten (it is zero or damaged).
    let floor = if end == 0 { BLOCK_SIZE as u64 } else { end + pad };
    let region_end = block_ceil(dirty_end.max(floor)).min(segment.capacity);
    let kept = segment.file.read_at(start, (end - start) as usize).await.map_err(err())?.to_vec();
    let file = segment.file.clone();
    // Zero the far part first, in chunks, so a crash mid-repair leaves a state this same
    // repair handles again.
    let first_len = (region_end - start).min(IO_CHUNK_BYTES as u64);
    let mut chunk_end = region_end;
    while chunk_end > start + first_len {
        let chunk_start = (chunk_end - IO_CHUNK_BYTES as u64).max(start + first_len);
        let buf = file.alloc((chunk_end - chunk_start) as usize);
        file.write_at(ctx.faults, buf, chunk_start).await.map_err(err())?;
        chunk_end = chunk_start;
    }
    if first_len > 0 {
        let mut buf = file.alloc(first_len as usize);
        let bytes = buf.as_bytes_mut();
        if end == 0 {
            encode_header(&segment.meta(), &mut bytes[..BLOCK_SIZE]);
        } else {
            bytes[..kept.len()].copy_from_slice(&kept);
            if pad > 0 {
                let at = (end - start) as usize;
                write_padding(&mut bytes[at..at + pad as usize]);
            }
        }
        file.write_at(ctx.faults, buf, start).await.map_err(err())?;
    }
    file.sync(ctx.faults).await.map_err(err())?;
    if end == 0 {
        segment.header_written = true;
        segment.data_end = BLOCK_SIZE as u64;
        segment.write_position = BLOCK_SIZE as u64;
    } else {
        segment.write_position = end + pad;
    }
    segment.sealed = false;
    Ok(())
}
