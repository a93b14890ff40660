//! Where batches are stamped, laid out so that a flush can be written from them without a copy.
//!
//! Batches are stamped (leader) or copied (follower) into a chunk of memory, one after
//! another. Consecutive batches form a **run** that starts block-aligned in memory; a run is
//! **sealed** — its padding marker (docs/format.md#padding) written right after its last
//! batch, which brings the chunk back to a block boundary — when the flusher takes it, or by
//! the append that would grow it past `flush_bytes_max`, or when its chunk is full. A sealed
//! run plus its padding is then exactly the bytes of one flush, block-aligned in memory and in
//! length: the flush ring writes it from the chunk (`FlushBuf::Region`), the batches' `Bytes`
//! (also held by the tail cache and the appenders) keeping the chunk alive.
//!
//! A run that cannot be written that way is **broken** and its batches are copied into a
//! fresh aligned buffer instead (`FlushBuf` built by `group_commit`): a run that a flush took
//! only in part (segment end, or a segment header block to write first), and a run whose
//! queued tail a truncation dropped. Both are rare (once per segment roll, per truncation).
//!
//! Invariants: `runs` describes the queued batches in order (their counts and byte sums match
//! the log's queue); only the back run may be open; an open, unbroken run starts at a
//! block-aligned address and its batches end exactly where `chunk` starts (nothing else is
//! written into a chunk); a sealed unbroken run is immediately followed by its padding.

#![forbid(unsafe_code)]

use std::collections::VecDeque;

use bytes::{BufMut, Bytes, BytesMut};

use crate::batch::{padding_len, write_padding};
use crate::limits::BLOCK_SIZE;

/// Smallest chunk the arena allocates. A batch keeps its whole chunk allocated while anyone
/// holds it (tail cache, a follower's send queue, a reader); a quiet log's chunks stay this
/// small, a busy log's grow to hold its next run: twice its last one, at most `flush_bytes_max`.
pub const APPEND_ARENA_BYTES: usize = 64 << 10;
/// Room kept after a run's batches for its padding (`padding_len` is below two blocks).
const PAD_ROOM: usize = 2 * BLOCK_SIZE;

/// One run of queued batches (see the module doc).
#[derive(Debug)]
pub(crate) struct Run {
    /// Batches of this run still queued.
    pub batches: usize,
    /// Their bytes.
    pub bytes: usize,
    /// Still appended to (only the back run).
    pub open: bool,
    /// Cannot be written from the chunk (copied instead).
    pub broken: bool,
    /// The padding after it, once sealed (unbroken runs only).
    pub pad: Option<Bytes>,
}

/// The arena and the runs of the queued batches.
#[derive(Debug, Default)]
pub(crate) struct AppendArena {
    chunk: BytesMut,
    runs: VecDeque<Run>,
    /// Length of the last run sealed, which sizes new chunks.
    last_run_bytes: usize,
}

impl AppendArena {
    /// Where the next batch of `size` bytes goes: the caller writes exactly the batch into the
    /// returned buffer's spare capacity, splits it off, and calls [`batch_added`]. Seals the
    /// open run first if the batch would make it longer than `run_max` or does not fit its
    /// chunk; opens a run (aligned, in a chunk with room for a whole run) if none is open.
    ///
    /// [`batch_added`]: AppendArena::batch_added
    pub fn room_for(&mut self, size: usize, run_max: usize) -> &mut BytesMut {
        if let Some(run) = self.runs.back().filter(|r| r.open) {
            let too_long = run.bytes + size > run_max;
            let no_room = self.chunk.capacity() < size + PAD_ROOM;
            if too_long || no_room {
                self.seal_open();
            }
        }
        if !self.runs.back().is_some_and(|r| r.open) {
            self.open_run(size, run_max);
        }
        &mut self.chunk
    }

    /// Notes the batch of `size` bytes just split off the chunk (after `room_for`).
    pub fn batch_added(&mut self, size: usize) {
        let run = self.runs.back_mut().expect("room_for opened a run");
        debug_assert!(run.open);
        run.batches += 1;
        run.bytes += size;
    }

    fn open_run(&mut self, size: usize, run_max: usize) {
        // A run is expected to grow to about the last one (a busy log) or stay small.
        let expected = (2 * self.last_run_bytes).clamp(size, run_max.max(size));
        let want = expected + size + 2 * PAD_ROOM;
        let offset = self.chunk.as_ptr().align_offset(BLOCK_SIZE);
        if self.chunk.capacity() < offset + want {
            self.chunk = aligned_chunk(want.max(APPEND_ARENA_BYTES));
        } else if offset > 0 {
            skip(&mut self.chunk, offset);
        }
        debug_assert_eq!(self.chunk.as_ptr() as usize % BLOCK_SIZE, 0);
        self.runs.push_back(Run { batches: 0, bytes: 0, open: true, broken: false, pad: None });
    }

    /// Seals the open run (if any): an unbroken one gets its padding written after it.
    pub fn seal_open(&mut self) {
        let Some(run) = self.runs.back_mut().filter(|r| r.open) else {
            return;
        };
        run.open = false;
        self.last_run_bytes = run.bytes;
        if run.broken || run.batches == 0 {
            run.broken = true;
            return;
        }
        let pad = padding_len(run.bytes as u64, BLOCK_SIZE);
        if pad == 0 {
            run.pad = Some(Bytes::new());
            return;
        }
        assert!(self.chunk.capacity() >= pad, "PAD_ROOM is kept after every batch");
        self.chunk.put_bytes(0, pad);
        write_padding(&mut self.chunk[..pad]);
        run.pad = Some(self.chunk.split().freeze());
    }

    /// The oldest run with queued batches.
    pub fn front(&self) -> Option<&Run> {
        self.runs.front()
    }

    /// The flusher took the whole front run (sealed, unbroken) for one flush.
    pub fn take_front(&mut self) -> Run {
        self.runs.pop_front().expect("a run was queued")
    }

    /// The flusher took the first `count` queued batches (`bytes` in all) to copy them: runs
    /// they emptied go, a run they took in part is broken (its rest starts mid-block).
    pub fn took_prefix(&mut self, mut count: usize, mut bytes: usize) {
        while count > 0 {
            let run = self.runs.front_mut().expect("the queue's batches belong to runs");
            if run.batches <= count {
                count -= run.batches;
                bytes -= run.bytes;
                if run.open {
                    // Its chunk continues after its last batch, unpadded: the next run
                    // realigns (`open_run`).
                    self.last_run_bytes = run.bytes;
                }
                self.runs.pop_front();
            } else {
                run.batches -= count;
                run.bytes -= bytes;
                run.broken = true;
                run.pad = None;
                if run.open {
                    // New batches start a clean run rather than join a copied one.
                    run.open = false;
                    self.last_run_bytes = run.bytes;
                }
                count = 0;
            }
        }
    }

    /// A truncation dropped the last queued batch (`size` bytes): its run is broken (the
    /// dropped bytes sit where its padding would go) and no longer open.
    pub fn dropped_back(&mut self, size: usize) {
        let run = self.runs.back_mut().expect("the queue's batches belong to runs");
        run.batches -= 1;
        run.bytes -= size;
        run.broken = true;
        run.open = false;
        run.pad = None;
        if run.batches == 0 {
            self.runs.pop_back();
        }
    }

    /// Every queued batch is gone (the log failed).
    pub fn clear(&mut self) {
        self.runs.clear();
    }
}

/// A chunk of at least `len` bytes starting at a block-aligned address (safe code: a larger
/// `BytesMut` whose unaligned head is split off).
pub(crate) fn aligned_chunk(len: usize) -> BytesMut {
    let mut chunk = BytesMut::with_capacity(len + BLOCK_SIZE);
    let offset = chunk.as_ptr().align_offset(BLOCK_SIZE);
    skip(&mut chunk, offset);
    chunk
}

/// Drops the first `n` bytes of `chunk`'s spare capacity.
fn skip(chunk: &mut BytesMut, n: usize) {
    if n > 0 {
        debug_assert!(chunk.is_empty());
        chunk.put_bytes(0, n);
        drop(chunk.split());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn add(arena: &mut AppendArena, size: usize, run_max: usize) -> Bytes {
        let chunk = arena.room_for(size, run_max);
        chunk.put_bytes(7, size);
        let batch = chunk.split().freeze();
        arena.batch_added(size);
        batch
    }

    fn contiguous(parts: &[Bytes]) -> bool {
        parts.windows(2).all(|w| w[0].as_ptr() as usize + w[0].len() == w[1].as_ptr() as usize)
    }

    #[test]
    fn a_sealed_run_and_its_padding_are_one_aligned_region() {
        let mut arena = AppendArena::default();
        let batches: Vec<Bytes> = (0..10).map(|i| add(&mut arena, 1000 + i, 1 << 20)).collect();
        arena.seal_open();
        let run = arena.take_front();
        assert_eq!(run.batches, 10);
        let mut parts = batches.clone();
        parts.push(run.pad.clone().expect("sealed"));
        assert!(contiguous(&parts));
        assert_eq!(parts[0].as_ptr() as usize % BLOCK_SIZE, 0);
        let total: usize = parts.iter().map(Bytes::len).sum();
        assert_eq!(total % BLOCK_SIZE, 0);
        assert_eq!(total - run.pad.unwrap().len(), run.bytes);
        // The next run starts aligned again.
        let next = add(&mut arena, 10, 1 << 20);
        assert_eq!(next.as_ptr() as usize % BLOCK_SIZE, 0);
    }

    #[test]
    fn a_run_is_sealed_before_it_outgrows_run_max() {
        let mut arena = AppendArena::default();
        for _ in 0..10 {
            add(&mut arena, 3000, 8192);
        }
        let mut seen = 0;
        while let Some(run) = arena.front() {
            assert!(run.bytes <= 8192);
            seen += run.batches;
            if run.open {
                arena.seal_open();
            }
            arena.take_front();
        }
        assert_eq!(seen, 10);
    }

    #[test]
    fn runs_grow_past_the_first_chunk_without_breaking() {
        let mut arena = AppendArena::default();
        let run_max = 1 << 20;
        for round in 0..4 {
            let batches: Vec<Bytes> = (0..700).map(|_| add(&mut arena, 1096, run_max)).collect();
            arena.seal_open();
            let mut taken = 0;
            while taken < batches.len() {
                let run = arena.take_front();
                assert!(!run.broken, "round {round}");
                let mut parts = batches[taken..taken + run.batches].to_vec();
                parts.push(run.pad.unwrap());
                assert!(contiguous(&parts), "round {round}");
                assert_eq!(parts[0].as_ptr() as usize % BLOCK_SIZE, 0);
                taken += run.batches;
            }
        }
    }

    #[test]
    fn a_partly_taken_or_truncated_run_is_broken_and_the_next_one_is_clean() {
        let mut arena = AppendArena::default();
        for _ in 0..5 {
            add(&mut arena, 500, 1 << 20);
        }
        arena.took_prefix(2, 1000);
        let run = arena.front().unwrap();
        assert!(run.broken && !run.open && run.batches == 3 && run.bytes == 1500);
        arena.dropped_back(500);
        let run = arena.front().unwrap();
        assert!(run.broken && !run.open && run.batches == 2);
        let next = add(&mut arena, 100, 1 << 20);
        assert_eq!(next.as_ptr() as usize % BLOCK_SIZE, 0);
        assert_eq!(arena.runs.len(), 2);
        arena.took_prefix(3, 1100);
        assert!(arena.front().is_none());
    }
}
