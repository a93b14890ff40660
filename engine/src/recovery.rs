//! Recovery: rebuilds a log's in-memory state from its directory on open.
//!
//! Sealed segments are trusted through their persisted index (rescanned only if the index is
//! missing or damaged); only the tail segment is scanned and checksummed. The tail is cut at
//! the first invalid item: if nothing valid lies further than one flush can reach
//! (`LogConfig::torn_reach_bytes`), the damage is a torn last flush — never acknowledged —
//! and is zeroed (reported as `torn_bytes_dropped`). Anything else is `Corruption`, unless the
//! caller asked for `RecoveryMode::TruncateAtCorruption`.
//!
//! Invariants: recovery reads O(tail segment + index files) bytes; every write it makes is
//! fdatasynced and every name change directory-synced before `Log::open` returns.

#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::rc::Rc;

use crate::batch::{padding_len, peek_header, write_padding, BatchHeader, BATCH_MAGIC};
use crate::error::{Corruption, CorruptionKind, OpenError};
use crate::io::{DataDir, DirectFile, FaultInjector, OpenFileError};
use crate::limits::{block_ceil, block_floor, LogConfig, RecoveryMode, BLOCK_SIZE, IO_CHUNK_BYTES};
use crate::segment::{
    decode_header, encode_header, index_name, parse_segment_name, segment_name, HeaderState,
    Segment, RESET_PENDING, SEGMENT_SUFFIX, SPARE_READY,
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
    /// Bytes of a torn (never acknowledged) last flush that were zeroed.
    pub torn_bytes_dropped: u64,
    /// With `RecoveryMode::TruncateAtCorruption`: where the log was cut.
    pub truncated_at: Option<Corruption>,
    /// Bytes dropped by that cut (from the corrupt batch to the old end of the log).
    pub corruption_bytes_dropped: u64,
    /// A reset interrupted by a crash was completed.
    pub reset_completed: bool,
    /// Whether a zero-filled spare segment was already there.
    pub spare_ready: bool,
}

pub(crate) struct Recovered {
    pub segments: Vec<Segment>,
    pub report: RecoveryReport,
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
    report.spare_ready = spare_is_ready(&ctx, &names).await?;
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
                persist_index(ctx.dir, ctx.faults, &segment.name, &sealed_index(&segment))
                    .await
                    .map_err(io_error(dir.join(&index_name(&segment.name))))?;
                segments.push(Segment { sealed: true, ..segment });
            }
            Scanned::Clean(segment) => segments.push(segment),
            Scanned::Damaged { segment, damage, end, dirty_end, scanned } => {
                report.tail_bytes_scanned += scanned;
                let torn = is_last && damage.is_none();
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
                repair_tail(&ctx, &mut segment, end, dirty_end).await?;
                if torn {
                    report.torn_bytes_dropped = dirty_end.saturating_sub(end);
                } else {
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
    }
    dir.sync(faults).await.map_err(dir_err())?;
    report.segments = segments.len();
    Ok(Recovered { segments, report })
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

async fn spare_is_ready(ctx: &Ctx<'_>, names: &[String]) -> Result<bool, OpenError> {
    if !names.iter().any(|n| n == SPARE_READY) {
        return Ok(false);
    }
    let path = ctx.dir.join(SPARE_READY);
    let size = std::fs::metadata(&path).map_err(io_error(path.clone()))?.len();
    if size == ctx.config.segment_size_bytes {
        return Ok(true);
    }
    ctx.dir.remove(SPARE_READY).map_err(io_error(path))?;
    Ok(false)
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
    file.write_at(faults, buf, 0).await?;
    file.sync(faults).await?;
    file.close().await?;
    dir.rename(&tmp_name, &final_name)?;
    dir.sync(faults).await
}

enum Scanned {
    /// The segment is whole: every item valid up to its end (or up to `next_base`).
    Clean(Segment),
    /// The segment stops at an invalid item or unwritten gap. `damage` is `None` when the
    /// damage is explained by a torn last flush; `dirty_end` is the end of non-zero bytes.
    Damaged { segment: Segment, damage: Option<Corruption>, end: u64, dirty_end: u64, scanned: u64 },
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
    let header_ok = match decode_header(&header_block) {
        HeaderState::Valid(meta) => {
            let matches = meta.base_offset == base_offset
                && meta.base_index == base_index
                && (prev.is_none() || meta.prev_crc == prev_crc);
            if matches {
                segment.prev_term = meta.prev_term;
                segment.prev_crc = meta.prev_crc;
                segment.last_term = meta.prev_term;
                segment.last_crc = meta.prev_crc;
            }
            matches
        }
        HeaderState::Zero | HeaderState::Invalid => false,
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
    let (dirty_end, valid_beyond) =
        probe_beyond(&mut reader, end, capacity, config).await.map_err(io_error(path.clone()))?;
    let scanned = capacity;
    let is_last = next_base.is_none();
    if is_last {
        if stop.is_none() && dirty_end <= end && end % BLOCK_SIZE as u64 == 0 {
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
        return Ok(Scanned::Damaged { segment, damage, end, dirty_end, scanned });
    }
    // A sealed segment: every flush into it completed, so any damage is corruption, and it
    // must reach the next segment's first index.
    let complete = next_base == Some(segment.next_index);
    match stop {
        None if complete => Ok(Scanned::Clean(segment)),
        None => Ok(Scanned::Damaged { segment, damage: None, end, dirty_end, scanned }),
        Some(kind) => {
            let damage = Some(corrupt(end, kind));
            Ok(Scanned::Damaged { segment, damage, end, dirty_end, scanned })
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

/// From `end` to the segment's end: the end of the last non-zero byte, and the distance from
/// `end`'s block to the first block-aligned valid batch header further than one flush.
async fn probe_beyond(
    reader: &mut SegmentReader,
    end: u64,
    capacity: u64,
    config: &LogConfig,
) -> std::io::Result<(u64, Option<u64>)> {
    let reach = block_floor(end) + config.torn_reach_bytes();
    let mut dirty_end = end;
    let mut valid_beyond = None;
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
        if valid_beyond.is_none() {
            let mut block = block_ceil(chunk_start).max(reach);
            while block + 4 <= chunk_start + bytes.len() as u64 {
                let at = (block - chunk_start) as usize;
                let magic =
                    u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]);
                if magic == BATCH_MAGIC && peek_header(&bytes[at..], config.batch_size_max).is_ok()
                {
                    valid_beyond = Some(block - block_floor(end));
                    break;
                }
                block += BLOCK_SIZE as u64;
            }
        }
        let advanced = bytes.len() as u64;
        chunk_start += advanced;
    }
    Ok((dirty_end, valid_beyond))
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
