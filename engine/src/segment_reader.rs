//! Sequential reader of a segment file and the item scanner shared by recovery and fetch.
//!
//! `SegmentReader` keeps one window of the file in memory and refills it with chunked O_DIRECT
//! reads; `next_item` classifies what starts at a position (batch, padding, zeros, invalid).
//!
//! Invariants: the window never exceeds `max(chunk, batch_size_max) + BLOCK_SIZE` bytes; a
//! position past `limit` reads as nothing; nothing here panics on garbage.

#![forbid(unsafe_code)]

use std::io;
use std::rc::Rc;

use crate::batch::{
    check_padding, decode_batch, peek_header, peek_padding, BatchError, BatchHeader,
    BATCH_HEADER_SIZE, BATCH_MAGIC, PADDING_HEADER_SIZE, PADDING_MAGIC,
};
use crate::io::DirectFile;
use crate::limits::{block_floor, BLOCK_SIZE};

/// What starts at a position of a segment.
#[derive(Clone, Debug)]
pub(crate) enum Item {
    /// A fully valid batch of `len` bytes.
    Batch {
        header: BatchHeader,
        len: usize,
    },
    /// A valid padding marker of `len` bytes.
    Padding {
        len: usize,
    },
    /// A zero `u32` (unwritten space).
    Zero,
    /// The position is at (or too close to) the segment's end.
    End,
    Invalid(InvalidKind),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum InvalidKind {
    Batch(BatchError),
    Padding,
}

/// A windowed reader over `[0, limit)` of a segment file.
#[derive(Debug)]
pub(crate) struct SegmentReader {
    file: Rc<DirectFile>,
    window: Vec<u8>,
    window_start: u64,
    limit: u64,
    chunk: usize,
}

impl SegmentReader {
    pub(crate) fn new(file: Rc<DirectFile>, limit: u64, chunk: usize) -> Self {
        SegmentReader { file, window: Vec::new(), window_start: 0, limit, chunk }
    }

    /// Bytes `[position, position + len)`, shorter where the file or `limit` ends.
    pub(crate) async fn bytes(&mut self, position: u64, len: usize) -> io::Result<&[u8]> {
        let end = (position + len as u64).min(self.limit);
        if position >= end {
            return Ok(&[]);
        }
        let window_end = self.window_start + self.window.len() as u64;
        if position < self.window_start || end > window_end {
            let start = block_floor(position);
            let want = ((end - start) as usize).max(self.chunk);
            let want = want.min((self.limit - start) as usize);
            let read = self.file.read_at(start, want).await?;
            self.window.clear();
            self.window.extend_from_slice(&read);
            self.window_start = start;
        }
        let from = (position - self.window_start) as usize;
        let to = ((end - self.window_start) as usize).min(self.window.len()).max(from);
        Ok(&self.window[from..to])
    }

    /// Classifies what starts at `position`.
    pub(crate) async fn next_item(
        &mut self,
        position: u64,
        batch_size_max: usize,
    ) -> io::Result<Item> {
        let room = self.limit.saturating_sub(position) as usize;
        let head = self.bytes(position, BATCH_HEADER_SIZE).await?;
        if head.len() < 4 {
            return Ok(if head.iter().all(|b| *b == 0) {
                Item::End
            } else {
                Item::Invalid(InvalidKind::Padding)
            });
        }
        let magic = u32::from_le_bytes([head[0], head[1], head[2], head[3]]);
        match magic {
            0 => Ok(Item::Zero),
            PADDING_MAGIC => {
                let len = match peek_padding(head, room.min(2 * BLOCK_SIZE)) {
                    Ok(len) => len,
                    Err(_) => return Ok(Item::Invalid(InvalidKind::Padding)),
                };
                let whole = self.bytes(position, len).await?;
                if whole.len() < len.max(PADDING_HEADER_SIZE) || check_padding(whole).is_err() {
                    return Ok(Item::Invalid(InvalidKind::Padding));
                }
                Ok(Item::Padding { len })
            }
            BATCH_MAGIC => {
                let len = match peek_header(head, batch_size_max.min(room)) {
                    Ok(header) => header.length(),
                    Err(e) => return Ok(Item::Invalid(InvalidKind::Batch(e))),
                };
                let whole = self.bytes(position, len).await?;
                match decode_batch(whole, batch_size_max) {
                    Ok(view) => Ok(Item::Batch { header: *view.header(), len }),
                    Err(e) => Ok(Item::Invalid(InvalidKind::Batch(e))),
                }
            }
            found => Ok(Item::Invalid(InvalidKind::Batch(BatchError::BadMagic { found }))),
        }
    }
}
