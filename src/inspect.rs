//! `ringlog inspect <segment>`: decodes one segment file and verifies every checksum and the
//! chain of previous-batch checksums.
//!
//! Decoding uses the engine's pure functions (`segment::decode_header`, `batch::peek_header`,
//! `decode_batch`, `peek_padding`, `check_padding`) on positioned reads of the file, so the
//! file is never loaded whole: memory is one batch (at most the file's remaining bytes) plus
//! one list entry per batch or padding (at most `file size / 16`). The layout is
//! docs/format.md#segment: block 0 is the header, batches and padding markers follow from
//! byte 4096, zeros after the last flush.
//!
//! What counts as corruption (exit status 1, with the position): an invalid header, a file
//! whose size is not the header's `segment_size`, a batch or padding that fails to decode or
//! its checksum, a batch whose index, base offset, term or `prev_crc` does not follow the one
//! before it (or the header's `prev_crc` for the first), data ending mid-block, and non-zero
//! bytes after the end of the data (a torn or stray write). A segment whose block 0 is all
//! zeros never received a flush; it is clean if the rest is zero too.

#![forbid(unsafe_code)]

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Args;
use serde::Serialize;

use ringlog_engine::batch::{
    check_padding, decode_batch, peek_header, peek_padding, BatchHeader, CONTROL_MEMBERSHIP,
    CONTROL_NOOP, PADDING_MAGIC,
};
use ringlog_engine::limits::{BLOCK_SIZE, IO_CHUNK_BYTES};
use ringlog_engine::segment::{decode_header, HeaderState};

/// Exit status when the segment is corrupt.
const EXIT_CORRUPT: u8 = 1;
const BLOCK: u64 = BLOCK_SIZE as u64;
/// Bytes read to classify the item at a position (a batch header is the largest).
const ITEM_HEAD_BYTES: usize = ringlog_engine::batch::BATCH_HEADER_SIZE;
/// Smallest item (a padding header): bounds the number of items of a file.
const ITEM_BYTES_MIN: u64 = ringlog_engine::batch::PADDING_HEADER_SIZE as u64;

/// Arguments of `ringlog inspect`.
#[derive(Debug, Clone, Args)]
pub struct InspectArgs {
    /// The segment file (`<base offset>-<base index>.seg` in a partition's directory).
    #[arg(value_name = "SEGMENT")]
    pub path: PathBuf,
    /// Also print each batch's checksums and timestamps, and each record's offset and length.
    #[arg(long)]
    pub verbose: bool,
    /// Print the report as one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

/// The decoded segment header.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum HeaderReport {
    /// Block 0 is all zeros: no flush landed in this segment.
    Zero,
    Valid {
        base_offset: u64,
        base_index: u64,
        prev_term: u64,
        prev_crc: u32,
        segment_size: u64,
        created_unix_ms: i64,
    },
    Invalid,
}

/// One record of a batch (verbose).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RecordReport {
    pub offset: u64,
    pub length: usize,
}

/// One batch as found at `position`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct BatchReport {
    pub position: u64,
    pub term: u64,
    pub index: u64,
    pub base_offset: u64,
    pub record_count: u32,
    pub flags: u16,
    pub kind: &'static str,
    pub length: usize,
    pub header_crc: u32,
    pub payload_crc: u32,
    pub prev_crc: u32,
    pub first_timestamp_ms: i64,
    pub max_timestamp_ms: i64,
    /// Header and payload checksums and record structure verified.
    pub checksum_ok: bool,
    /// Index, offset, term and `prev_crc` follow the previous batch.
    pub chain_ok: bool,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub records: Vec<RecordReport>,
}

/// One padding marker.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PaddingReport {
    pub position: u64,
    pub length: usize,
}

/// A batch or a padding, in file order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Item {
    Batch(BatchReport),
    Padding(PaddingReport),
}

/// The first corruption found.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CorruptionReport {
    /// Byte position in the file.
    pub position: u64,
    pub detail: String,
}

/// Totals over the valid batches.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Summary {
    pub batches: u64,
    pub control_batches: u64,
    pub records: u64,
    /// Offset of the first record (`None`: no record).
    pub first_offset: Option<u64>,
    /// Offset of the last record.
    pub last_offset: Option<u64>,
    pub first_index: Option<u64>,
    pub last_index: Option<u64>,
    /// End of the last valid batch or padding (the header block included); 0 when the
    /// header is zero or invalid.
    pub bytes_used: u64,
    pub file_size: u64,
    /// Every batch follows the one before it (and the header's `prev_crc`).
    pub chain_ok: bool,
    /// `header_crc` of the last batch: it commits to the whole chain.
    pub last_crc: Option<u32>,
}

/// Everything `inspect` found in a segment file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SegmentReport {
    pub path: PathBuf,
    pub header: HeaderReport,
    pub items: Vec<Item>,
    pub summary: Summary,
    pub corruption: Option<CorruptionReport>,
}

/// Runs `ringlog inspect`: prints the report; exit 1 on corruption.
pub fn run(args: &InspectArgs) -> anyhow::Result<ExitCode> {
    let report = inspect_segment(&args.path, args.verbose)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", text_report(&report, args.verbose));
    }
    Ok(ExitCode::from(exit_status(&report)))
}

/// 0 for a clean segment, 1 when corruption was found.
pub fn exit_status(report: &SegmentReport) -> u8 {
    if report.corruption.is_some() {
        EXIT_CORRUPT
    } else {
        0
    }
}

/// Decodes and verifies the segment at `path`; `with_records` lists every record.
pub fn inspect_segment(path: &Path, with_records: bool) -> std::io::Result<SegmentReport> {
    let file = File::open(path)?;
    let file_size = file.metadata()?.len();
    let mut scan = Scan::new(&file, file_size, with_records);
    let header = scan.run()?;
    Ok(SegmentReport {
        path: path.to_path_buf(),
        header,
        items: scan.items,
        summary: scan.summary,
        corruption: scan.corruption,
    })
}

/// What the next batch must continue.
#[derive(Clone, Copy, Debug)]
struct Expected {
    index: u64,
    offset: u64,
    term: u64,
    prev_crc: u32,
}

struct Scan<'a> {
    file: &'a File,
    file_size: u64,
    with_records: bool,
    /// A recycled segment: at a block boundary, an item that does not continue the segment
    /// (garbage, or a batch of an index below the expected one) is stale, the end of the data.
    stale_tail: bool,
    items: Vec<Item>,
    summary: Summary,
    corruption: Option<CorruptionReport>,
    buffer: Vec<u8>,
}

/// What the scan loop does after one item.
enum Step {
    Continue(u64),
    /// The data ends here (zeros follow).
    End(u64),
    /// Corruption at the position; nothing after it can be trusted.
    Stop,
}

impl<'a> Scan<'a> {
    fn new(file: &'a File, file_size: u64, with_records: bool) -> Self {
        let summary = Summary { file_size, chain_ok: true, ..Summary::default() };
        Scan {
            file,
            file_size,
            with_records,
            stale_tail: false,
            items: Vec::new(),
            summary,
            corruption: None,
            buffer: Vec::new(),
        }
    }

    fn corrupt(&mut self, position: u64, detail: String) {
        if self.corruption.is_none() {
            self.corruption = Some(CorruptionReport { position, detail });
        }
    }

    /// Reads `len` bytes at `position` (fewer at the end of the file) into the buffer.
    fn read(&mut self, position: u64, len: usize) -> std::io::Result<&[u8]> {
        let len = len.min(self.file_size.saturating_sub(position) as usize);
        self.buffer.resize(len, 0);
        self.file.read_exact_at(&mut self.buffer, position)?;
        Ok(&self.buffer)
    }

    fn run(&mut self) -> std::io::Result<HeaderReport> {
        let block = self.read(0, BLOCK_SIZE)?.to_vec();
        let decoded = decode_header(&block);
        // A recycled segment keeps stale bytes of its earlier lives past its data.
        let stale_tail = match decoded {
            HeaderState::RecycledSpare(_) => true,
            HeaderState::Valid(meta) => meta.recycled.is_some(),
            HeaderState::Zero | HeaderState::Invalid => false,
        };
        self.stale_tail = stale_tail;
        let header = match decoded {
            HeaderState::Zero | HeaderState::RecycledSpare(_) => HeaderReport::Zero,
            HeaderState::Invalid => HeaderReport::Invalid,
            HeaderState::Valid(meta) => HeaderReport::Valid {
                base_offset: meta.base_offset.0,
                base_index: meta.base_index.0,
                prev_term: meta.prev_term.0,
                prev_crc: meta.prev_crc,
                segment_size: meta.segment_size,
                created_unix_ms: meta.created_unix_ms,
            },
        };
        let data_end = match &header {
            HeaderReport::Invalid => {
                self.corrupt(0, "invalid segment header (magic, version or crc)".to_string());
                return Ok(header);
            }
            HeaderReport::Zero => 0,
            HeaderReport::Valid { segment_size, .. } if *segment_size != self.file_size => {
                let detail =
                    format!("file is {} bytes, its header says {segment_size}", self.file_size);
                self.corrupt(0, detail);
                return Ok(header);
            }
            HeaderReport::Valid { base_offset, base_index, prev_term, prev_crc, .. } => {
                let expected = Expected {
                    index: *base_index,
                    offset: *base_offset,
                    term: *prev_term,
                    prev_crc: *prev_crc,
                };
                match self.scan_items(expected)? {
                    Some(end) => end,
                    None => return Ok(header),
                }
            }
        };
        self.summary.bytes_used = data_end;
        if !stale_tail {
            self.check_zero_tail(data_end)?;
        }
        Ok(header)
    }

    /// Scans batches and paddings from block 1; the end of the data, or `None` on corruption.
    fn scan_items(&mut self, mut expected: Expected) -> std::io::Result<Option<u64>> {
        let mut position = BLOCK;
        self.summary.bytes_used = BLOCK;
        // Bound: every item is at least a padding header long.
        for _ in 0..=self.file_size / ITEM_BYTES_MIN {
            match self.next_item(position, &mut expected)? {
                Step::Continue(next) => {
                    position = next;
                    self.summary.bytes_used = next;
                }
                Step::End(end) => return Ok(Some(end)),
                Step::Stop => return Ok(None),
            }
        }
        Ok(Some(position))
    }

    fn next_item(&mut self, position: u64, expected: &mut Expected) -> std::io::Result<Step> {
        let room = self.file_size.saturating_sub(position) as usize;
        let stale_tail = self.stale_tail;
        let head = self.read(position, ITEM_HEAD_BYTES)?;
        if head.len() < 4 {
            return Ok(Step::End(position));
        }
        let magic = u32::from_le_bytes([head[0], head[1], head[2], head[3]]);
        if magic == 0 {
            if position % BLOCK != 0 {
                let detail = "data ends in the middle of a block without a padding marker";
                self.corrupt(position, detail.to_string());
                return Ok(Step::Stop);
            }
            return Ok(Step::End(position));
        }
        if magic == PADDING_MAGIC {
            return self.padding(position, room);
        }
        if stale_tail && position % BLOCK == 0 {
            let continues = peek_header(head, room).is_ok_and(|h| h.index.get() >= expected.index);
            if !continues {
                return Ok(Step::End(position));
            }
        }
        match peek_header(head, room) {
            Ok(header) => {
                let header = *header;
                self.batch(position, header, expected)
            }
            Err(error) => {
                self.corrupt(position, format!("invalid batch header: {error}"));
                Ok(Step::Stop)
            }
        }
    }

    fn padding(&mut self, position: u64, room: usize) -> std::io::Result<Step> {
        let head = self.read(position, ITEM_HEAD_BYTES)?;
        let length = match peek_padding(head, room.min(2 * BLOCK_SIZE)) {
            Ok(length) => length,
            Err(error) => {
                self.corrupt(position, format!("invalid padding header: {error}"));
                return Ok(Step::Stop);
            }
        };
        if let Err(error) = check_padding(self.read(position, length)?) {
            self.corrupt(position, format!("invalid padding: {error}"));
            return Ok(Step::Stop);
        }
        self.items.push(Item::Padding(PaddingReport { position, length }));
        let next = position + length as u64;
        if next % BLOCK != 0 {
            self.corrupt(position, format!("padding of {length} bytes ends mid-block"));
            return Ok(Step::Stop);
        }
        Ok(Step::Continue(next))
    }

    /// A batch whose header (and so its length) passed its checksum.
    fn batch(
        &mut self,
        position: u64,
        header: BatchHeader,
        expected: &mut Expected,
    ) -> std::io::Result<Step> {
        let length = header.length();
        let with_records = self.with_records;
        let bytes = self.read(position, length)?;
        let decoded = decode_batch(bytes, length);
        let records = match (&decoded, with_records) {
            (Ok(view), true) => view
                .records()
                .enumerate()
                .map(|(i, value)| RecordReport {
                    offset: header.base_offset.get() + i as u64,
                    length: value.len(),
                })
                .collect(),
            _ => Vec::new(),
        };
        let checksum_error = decoded.err();
        let chain_error = chain_error(&header, expected);
        let report = batch_report(position, &header, checksum_error.is_none(), records);
        self.items.push(Item::Batch(BatchReport { chain_ok: chain_error.is_none(), ..report }));
        if let Some(error) = checksum_error {
            self.corrupt(position, format!("batch {}: {error}", header.index.get()));
            return Ok(Step::Stop);
        }
        if let Some(detail) = chain_error {
            self.summary.chain_ok = false;
            self.corrupt(position, detail);
        }
        self.count(&header);
        *expected = Expected {
            index: header.index.get() + 1,
            offset: header.next_offset().0,
            term: header.term.get(),
            prev_crc: header.header_crc.get(),
        };
        Ok(Step::Continue(position + length as u64))
    }

    fn count(&mut self, header: &BatchHeader) {
        let s = &mut self.summary;
        s.batches += 1;
        s.first_index.get_or_insert(header.index.get());
        s.last_index = Some(header.index.get());
        s.last_crc = Some(header.header_crc.get());
        if header.is_control() {
            s.control_batches += 1;
            return;
        }
        s.records += u64::from(header.record_count());
        s.first_offset.get_or_insert(header.base_offset.get());
        s.last_offset = Some(header.next_offset().0 - 1);
    }

    /// Every byte from `end` to the end of the file must be zero.
    fn check_zero_tail(&mut self, end: u64) -> std::io::Result<()> {
        let mut chunk_start = end;
        while chunk_start < self.file_size {
            let chunk = self.read(chunk_start, IO_CHUNK_BYTES)?;
            if let Some(at) = chunk.iter().position(|b| *b != 0) {
                let position = chunk_start + at as u64;
                let detail = format!(
                    "non-zero bytes after the end of the data at {end} (a torn or stray write)"
                );
                self.corrupt(position, detail);
                return Ok(());
            }
            chunk_start += chunk.len() as u64;
        }
        Ok(())
    }
}

/// Why `header` does not continue the log described by `expected`, if it does not.
fn chain_error(header: &BatchHeader, expected: &Expected) -> Option<String> {
    let index = header.index.get();
    if index != expected.index || header.base_offset.get() != expected.offset {
        return Some(format!(
            "batch {index} at offset {} where index {} at offset {} was expected",
            header.base_offset.get(),
            expected.index,
            expected.offset
        ));
    }
    if header.prev_crc.get() != expected.prev_crc {
        return Some(format!(
            "batch {index} chains to prev_crc {:#010x}, the previous batch's crc is {:#010x}",
            header.prev_crc.get(),
            expected.prev_crc
        ));
    }
    if header.term.get() < expected.term {
        return Some(format!(
            "batch {index} has term {} below the previous term {}",
            header.term.get(),
            expected.term
        ));
    }
    None
}

fn batch_report(
    position: u64,
    header: &BatchHeader,
    checksum_ok: bool,
    records: Vec<RecordReport>,
) -> BatchReport {
    let flags = header.flags.get();
    BatchReport {
        position,
        term: header.term.get(),
        index: header.index.get(),
        base_offset: header.base_offset.get(),
        record_count: header.record_count(),
        flags,
        kind: kind_name(flags),
        length: header.length(),
        header_crc: header.header_crc.get(),
        payload_crc: header.payload_crc.get(),
        prev_crc: header.prev_crc.get(),
        first_timestamp_ms: header.first_timestamp_ms.get(),
        max_timestamp_ms: header.max_timestamp_ms.get(),
        checksum_ok,
        chain_ok: true,
        records,
    }
}

fn kind_name(flags: u16) -> &'static str {
    if flags & CONTROL_MEMBERSHIP != 0 {
        "membership"
    } else if flags & CONTROL_NOOP != 0 {
        "noop"
    } else {
        "data"
    }
}

/// The report as text: header, one line per batch and padding, summary, verdict.
pub fn text_report(report: &SegmentReport, verbose: bool) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(out, "segment {}", report.path.display());
    let _ = match &report.header {
        HeaderReport::Zero => writeln!(out, "header: all zeros (no flush landed)"),
        HeaderReport::Invalid => writeln!(out, "header: INVALID"),
        HeaderReport::Valid {
            base_offset,
            base_index,
            prev_term,
            prev_crc,
            segment_size,
            created_unix_ms,
        } => writeln!(
            out,
            "header: base_offset {base_offset} base_index {base_index} prev_term {prev_term} \
             prev_crc {prev_crc:#010x} segment_size {segment_size} created_unix_ms \
             {created_unix_ms}"
        ),
    };
    for item in &report.items {
        match item {
            Item::Padding(p) => {
                let _ = writeln!(out, "@{:<10} padding  length {}", p.position, p.length);
            }
            Item::Batch(b) => write_batch(&mut out, b, verbose),
        }
    }
    let s = &report.summary;
    let range = |first: Option<u64>, last: Option<u64>| match (first, last) {
        (Some(first), Some(last)) => format!("{first}..={last}"),
        _ => "none".to_string(),
    };
    let _ = writeln!(
        out,
        "summary: {} batches ({} control), {} records, offsets {}, indexes {}, \
         {} of {} bytes used, chain {}",
        s.batches,
        s.control_batches,
        s.records,
        range(s.first_offset, s.last_offset),
        range(s.first_index, s.last_index),
        s.bytes_used,
        s.file_size,
        if s.chain_ok { "ok" } else { "BROKEN" }
    );
    let _ = match &report.corruption {
        None => writeln!(out, "OK: every checksum and the chain verified"),
        Some(c) => writeln!(out, "CORRUPT at position {}: {}", c.position, c.detail),
    };
    out
}

fn write_batch(out: &mut String, b: &BatchReport, verbose: bool) {
    use std::fmt::Write as _;
    let _ = writeln!(
        out,
        "@{:<10} batch    term {} index {} base_offset {} records {} flags {:#06x} ({}) length \
         {} checksum {}{}",
        b.position,
        b.term,
        b.index,
        b.base_offset,
        b.record_count,
        b.flags,
        b.kind,
        b.length,
        if b.checksum_ok { "ok" } else { "FAILED" },
        if b.chain_ok { "" } else { " chain BROKEN" }
    );
    if verbose {
        let _ = writeln!(
            out,
            "            header_crc {:#010x} payload_crc {:#010x} prev_crc {:#010x} timestamps \
             {}..{} ms",
            b.header_crc, b.payload_crc, b.prev_crc, b.first_timestamp_ms, b.max_timestamp_ms
        );
        for r in &b.records {
            let _ = writeln!(out, "            record offset {} length {}", r.offset, r.length);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use bytes::Bytes;
    use ringlog_engine::batch::{
        encode_batch, padding_len, write_padding, BatchStamp, RecordsBuilder, BATCH_HEADER_SIZE,
    };
    use ringlog_engine::segment::{encode_header, parse_segment_name, SegmentMeta};
    use ringlog_engine::{AppendRequest, LogConfig, LogIndex, Offset, Term};

    use super::*;

    /// Records per data batch appended by `real_segment`.
    const RECORDS: [usize; 3] = [3, 1, 5];

    fn scratch_dir() -> tempfile::TempDir {
        // On the repository's filesystem: O_DIRECT does not work on tmpfs.
        let parent = Path::new(env!("CARGO_MANIFEST_DIR")).join("target");
        std::fs::create_dir_all(&parent).unwrap();
        tempfile::tempdir_in(parent).unwrap()
    }

    fn log_config() -> LogConfig {
        LogConfig {
            segment_size_bytes: ringlog_engine::limits::SEGMENT_SIZE_MIN,
            batch_size_max: 64 << 10,
            flush_bytes_max: 256 << 10,
            queued_bytes_max: 1 << 20,
            index_interval_bytes: 4096,
            ..LogConfig::default()
        }
    }

    /// Opens a real engine `Log` in `dir`, appends a no-op then `RECORDS` data batches (each
    /// made durable before the next, so flushes end with padding), closes it, and returns the
    /// segment file.
    fn real_segment(dir: &Path) -> PathBuf {
        let log_dir = dir.join("0");
        let open_dir = log_dir.clone();
        glommio::LocalExecutorBuilder::default()
            .io_memory(512 << 10)
            .make()
            .expect("glommio executor")
            .run(async move {
                let (log, _) = ringlog_engine::Log::open(&open_dir, log_config()).await.unwrap();
                let noop =
                    AppendRequest::control(Term(1), CONTROL_NOOP, Bytes::new(), 1_700_000_000_000);
                log.append(noop).unwrap().durable.await.unwrap();
                for (batch, count) in RECORDS.iter().enumerate() {
                    let mut records = RecordsBuilder::new(64 << 10);
                    for record in 0..*count {
                        let value = format!("batch {batch} record {record}");
                        records.push(value.as_bytes()).unwrap();
                    }
                    let request = AppendRequest::data(Term(2), records.finish(), 1_700_000_000_001);
                    log.append(request).unwrap().durable.await.unwrap();
                }
                log.close().await.unwrap();
            });
        let segments: Vec<PathBuf> = std::fs::read_dir(&log_dir)
            .unwrap()
            .map(|entry| entry.unwrap().path())
            .filter(|path| {
                let name = path.file_name().unwrap().to_str().unwrap();
                parse_segment_name(name).is_some()
            })
            .collect();
        assert_eq!(segments.len(), 1, "one segment expected: {segments:?}");
        segments.into_iter().next().unwrap()
    }

    fn batches(report: &SegmentReport) -> Vec<&BatchReport> {
        report
            .items
            .iter()
            .filter_map(|item| match item {
                Item::Batch(b) => Some(b),
                Item::Padding(_) => None,
            })
            .collect()
    }

    fn flip_byte(path: &Path, position: u64) {
        let file = std::fs::OpenOptions::new().read(true).write(true).open(path).unwrap();
        let mut byte = [0u8];
        file.read_exact_at(&mut byte, position).unwrap();
        byte[0] ^= 0x40;
        file.write_all_at(&byte, position).unwrap();
    }

    #[test]
    fn clean_segment_of_a_real_log_decodes_with_every_checksum_and_the_chain_ok() {
        let dir = scratch_dir();
        let segment = real_segment(dir.path());
        let report = inspect_segment(&segment, true).unwrap();
        assert_eq!(report.corruption, None, "{}", text_report(&report, true));
        assert!(matches!(report.header, HeaderReport::Valid { base_offset: 0, base_index: 1, .. }));
        let found = batches(&report);
        let kinds: Vec<&str> = found.iter().map(|b| b.kind).collect();
        assert_eq!(kinds, ["noop", "data", "data", "data"]);
        let indexes: Vec<u64> = found.iter().map(|b| b.index).collect();
        assert_eq!(indexes, [1, 2, 3, 4]);
        let counts: Vec<u32> = found.iter().map(|b| b.record_count).collect();
        assert_eq!(counts, [0, 3, 1, 5]);
        assert!(found.iter().all(|b| b.checksum_ok && b.chain_ok));
        assert_eq!(found[0].position, BLOCK, "the first batch follows the header block");
        assert_eq!(found[1].records[2], RecordReport { offset: 2, length: 16 });
        let paddings = report.items.iter().filter(|i| matches!(i, Item::Padding(_))).count();
        assert_eq!(paddings, 4, "each durable flush ends with padding");
        let s = &report.summary;
        assert_eq!((s.batches, s.control_batches, s.records), (4, 1, 9));
        assert_eq!((s.first_offset, s.last_offset), (Some(0), Some(8)));
        assert_eq!((s.first_index, s.last_index), (Some(1), Some(4)));
        assert_eq!(s.bytes_used, 5 * BLOCK, "header block plus one block per flush");
        assert!(s.chain_ok);
        assert_eq!(s.last_crc, Some(found[3].header_crc));
        let text = text_report(&report, true);
        assert!(text.contains("batch    term 2 index 3 base_offset 3 records 1"), "{text}");
        assert!(text.contains("record offset 8 length 16"), "{text}");
        assert!(text.ends_with("OK: every checksum and the chain verified\n"), "{text}");
        let json: serde_json::Value = serde_json::to_value(&report).unwrap();
        assert_eq!(json["summary"]["records"], 9);
        assert_eq!(json["items"][0]["type"], "batch");
        assert_eq!(exit_status(&report), 0);
    }

    #[test]
    fn flipped_payload_byte_is_reported_as_a_failed_checksum_at_its_batch() {
        let dir = scratch_dir();
        let segment = real_segment(dir.path());
        let clean = inspect_segment(&segment, false).unwrap();
        let target = batches(&clean)[2].position;
        flip_byte(&segment, target + BATCH_HEADER_SIZE as u64 + 5);
        let report = inspect_segment(&segment, false).unwrap();
        let corruption = report.corruption.clone().expect("corruption reported");
        assert_eq!(corruption.position, target);
        assert!(corruption.detail.contains("payload checksum mismatch"), "{corruption:?}");
        let found = batches(&report);
        assert!(found[1].checksum_ok);
        assert!(!found[2].checksum_ok);
        assert_eq!(found.len(), 3, "nothing after the corrupt batch is trusted");
        assert_eq!(report.summary.bytes_used, target, "valid up to the corrupt batch");
        assert_eq!(report.summary.batches, 2);
        let text = text_report(&report, false);
        assert!(text.contains("checksum FAILED"), "{text}");
        assert!(text.contains(&format!("CORRUPT at position {target}: batch 3:")), "{text}");
        assert_eq!(exit_status(&report), EXIT_CORRUPT);
    }

    #[test]
    fn flipped_header_byte_is_reported_at_its_batch() {
        let dir = scratch_dir();
        let segment = real_segment(dir.path());
        let clean = inspect_segment(&segment, false).unwrap();
        let target = batches(&clean)[3].position;
        flip_byte(&segment, target + 40); // inside the index field
        let report = inspect_segment(&segment, false).unwrap();
        let corruption = report.corruption.clone().expect("corruption reported");
        assert_eq!(corruption.position, target);
        assert!(corruption.detail.contains("header checksum mismatch"), "{corruption:?}");
        assert_eq!(batches(&report).len(), 3);
    }

    #[test]
    fn flipped_byte_after_the_data_is_reported_at_its_position() {
        let dir = scratch_dir();
        let segment = real_segment(dir.path());
        let target = 300_000;
        flip_byte(&segment, target);
        let report = inspect_segment(&segment, false).unwrap();
        let corruption = report.corruption.clone().expect("corruption reported");
        assert_eq!(corruption.position, target);
        assert!(corruption.detail.contains("after the end of the data"), "{corruption:?}");
        assert_eq!(report.summary.batches, 4, "the batches themselves are fine");
    }

    #[test]
    fn flipped_segment_header_byte_is_reported_at_position_zero() {
        let dir = scratch_dir();
        let segment = real_segment(dir.path());
        flip_byte(&segment, 17);
        let report = inspect_segment(&segment, false).unwrap();
        assert_eq!(report.header, HeaderReport::Invalid);
        assert_eq!(report.corruption.map(|c| c.position), Some(0));
    }

    /// A 1 MiB segment with two data batches, the second chaining to `second_prev_crc` (the
    /// first batch's header crc when `None`).
    fn synthetic_segment(second_prev_crc: Option<u32>) -> Vec<u8> {
        let size = ringlog_engine::limits::SEGMENT_SIZE_MIN;
        let mut file = vec![0u8; size as usize];
        let meta = SegmentMeta {
            base_offset: Offset(10),
            base_index: LogIndex(5),
            prev_term: Term(1),
            prev_crc: 0xabcd,
            segment_size: size,
            created_unix_ms: 0,
            recycled: None,
        };
        encode_header(&meta, &mut file[..BLOCK_SIZE]);
        let mut records = RecordsBuilder::new(64 << 10);
        records.push(b"value").unwrap();
        let payload = records.finish().bytes;
        let first = BatchStamp {
            term: Term(1),
            index: LogIndex(5),
            base_offset: Offset(10),
            record_count: 1,
            flags: 0,
            first_timestamp_ms: 0,
            max_timestamp_ms: 0,
            prev_crc: 0xabcd,
        };
        let first = encode_batch(&first, &payload);
        let first_crc = u32::from_le_bytes(first[8..12].try_into().unwrap());
        let second = BatchStamp {
            index: LogIndex(6),
            base_offset: Offset(11),
            prev_crc: second_prev_crc.unwrap_or(first_crc),
            ..BatchStamp {
                term: Term(1),
                index: LogIndex(0),
                base_offset: Offset(0),
                record_count: 1,
                flags: 0,
                first_timestamp_ms: 0,
                max_timestamp_ms: 0,
                prev_crc: 0,
            }
        };
        let second = encode_batch(&second, &payload);
        let mut at = BLOCK_SIZE;
        for batch in [&first, &second] {
            file[at..at + batch.len()].copy_from_slice(batch);
            at += batch.len();
        }
        let pad = padding_len(at as u64, BLOCK_SIZE);
        write_padding(&mut file[at..at + pad]);
        file
    }

    fn write_file(dir: &Path, bytes: &[u8]) -> PathBuf {
        let path = dir.join("00000000000000000010-00000000000000000005.seg");
        std::fs::write(&path, bytes).unwrap();
        path
    }

    #[test]
    fn synthetic_segment_starts_its_chain_at_the_header_prev_crc() {
        let dir = scratch_dir();
        let path = write_file(dir.path(), &synthetic_segment(None));
        let report = inspect_segment(&path, false).unwrap();
        assert_eq!(report.corruption, None, "{}", text_report(&report, false));
        assert_eq!((report.summary.first_offset, report.summary.last_offset), (Some(10), Some(11)));
    }

    #[test]
    fn batch_chained_to_the_wrong_previous_crc_breaks_the_chain_at_its_position() {
        let dir = scratch_dir();
        let path = write_file(dir.path(), &synthetic_segment(Some(0x1234_5678)));
        let report = inspect_segment(&path, false).unwrap();
        let found = batches(&report);
        assert!(found.iter().all(|b| b.checksum_ok));
        assert!(found[0].chain_ok && !found[1].chain_ok);
        assert!(!report.summary.chain_ok);
        let corruption = report.corruption.clone().unwrap();
        assert_eq!(corruption.position, BLOCK + found[0].length as u64);
        assert!(corruption.detail.contains("chains to prev_crc 0x12345678"), "{corruption:?}");
        assert!(text_report(&report, false).contains("chain BROKEN"));
    }

    #[test]
    fn truncated_segment_file_is_corrupt() {
        let dir = scratch_dir();
        let bytes = synthetic_segment(None);
        let path = write_file(dir.path(), &bytes[..bytes.len() / 2]);
        let report = inspect_segment(&path, false).unwrap();
        let corruption = report.corruption.unwrap();
        assert_eq!(corruption.position, 0);
        assert_eq!(corruption.detail, "file is 524288 bytes, its header says 1048576");
    }

    #[test]
    fn stale_bytes_after_the_data_of_a_recycled_segment_are_not_corruption() {
        let dir = scratch_dir();
        let mut bytes = synthetic_segment(None);
        let meta = SegmentMeta {
            base_offset: Offset(10),
            base_index: LogIndex(5),
            prev_term: Term(1),
            prev_crc: 0xabcd,
            segment_size: bytes.len() as u64,
            created_unix_ms: 0,
            recycled: Some(LogIndex(5)),
        };
        encode_header(&meta, &mut bytes[..BLOCK_SIZE]);
        // An earlier life's batch (index 3) right after the data, then garbage.
        let stale = BatchStamp {
            term: Term(1),
            index: LogIndex(3),
            base_offset: Offset(4),
            record_count: 1,
            flags: 0,
            first_timestamp_ms: 0,
            max_timestamp_ms: 0,
            prev_crc: 7,
        };
        let mut records = RecordsBuilder::new(64 << 10);
        records.push(b"old").unwrap();
        let stale = encode_batch(&stale, &records.finish().bytes);
        let at = 2 * BLOCK_SIZE;
        bytes[at..at + stale.len()].copy_from_slice(&stale);
        bytes[5 * BLOCK_SIZE..6 * BLOCK_SIZE].fill(0x5a);
        let path = write_file(dir.path(), &bytes);
        let report = inspect_segment(&path, false).unwrap();
        assert_eq!(report.corruption, None, "{}", text_report(&report, false));
        assert_eq!(report.summary.batches, 2);
        // Without the flag the same bytes are damage after the data.
        encode_header(&SegmentMeta { recycled: None, ..meta }, &mut bytes[..BLOCK_SIZE]);
        let path = write_file(dir.path(), &bytes);
        assert!(inspect_segment(&path, false).unwrap().corruption.is_some());
    }

    #[test]
    fn all_zero_segment_is_an_unwritten_segment_not_corruption() {
        let dir = scratch_dir();
        let path = write_file(dir.path(), &vec![0u8; 1 << 20]);
        let report = inspect_segment(&path, false).unwrap();
        assert_eq!(report.header, HeaderReport::Zero);
        assert_eq!(report.corruption, None);
        assert_eq!(report.summary.batches, 0);
    }
}
