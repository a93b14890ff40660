//! Tail cache: the most recent batches in memory, so readers at the head (consumers and the
//! Raft leader sending to followers) need no disk IO.
//!
//! Invariants: the cached batches are a contiguous suffix of the log (indices consecutive,
//! ending at the last appended batch); every batch not yet durable is cached; durable batches
//! are evicted oldest first once `bytes > bytes_max`.

#![forbid(unsafe_code)]

use std::collections::VecDeque;

use bytes::Bytes;

use crate::types::{LogIndex, Offset};

/// One cached batch (the stamped bytes, shared with the group-commit queue and readers).
#[derive(Clone, Debug)]
pub(crate) struct CachedBatch {
    pub index: LogIndex,
    pub base_offset: Offset,
    pub record_count: u32,
    pub bytes: Bytes,
}

impl CachedBatch {
    /// True if a fetch from `offset` does not need this batch (it ends at or before `offset`
    /// and is not a control batch sitting exactly at `offset`).
    pub fn before_offset(&self, offset: Offset) -> bool {
        let end = self.base_offset.0 + u64::from(self.record_count);
        end <= offset.0 && !(self.record_count == 0 && self.base_offset == offset)
    }
}

#[derive(Debug)]
pub(crate) struct TailCache {
    batches: VecDeque<CachedBatch>,
    bytes: usize,
    bytes_max: usize,
}

impl TailCache {
    pub fn new(bytes_max: usize) -> Self {
        TailCache { batches: VecDeque::new(), bytes: 0, bytes_max }
    }

    pub fn push(&mut self, batch: CachedBatch) {
        if let Some(last) = self.batches.back() {
            assert_eq!(last.index.next(), batch.index, "tail cache must stay contiguous");
        }
        self.bytes += batch.bytes.len();
        self.batches.push_back(batch);
    }

    /// Evicts durable batches (index <= `durable`) while over the byte bound.
    pub fn evict(&mut self, durable: LogIndex) {
        while self.bytes > self.bytes_max {
            match self.batches.front() {
                Some(front) if front.index <= durable => {
                    self.bytes -= front.bytes.len();
                    self.batches.pop_front();
                }
                _ => break,
            }
        }
    }

    /// Drops every batch at or above `index`.
    pub fn truncate_from(&mut self, index: LogIndex) {
        while self.batches.back().is_some_and(|b| b.index >= index) {
            let b = self.batches.pop_back().expect("checked");
            self.bytes -= b.bytes.len();
        }
    }

    pub fn clear(&mut self) {
        self.batches.clear();
        self.bytes = 0;
    }

    pub fn front(&self) -> Option<&CachedBatch> {
        self.batches.front()
    }

    pub fn get(&self, index: LogIndex) -> Option<&CachedBatch> {
        let first = self.batches.front()?.index;
        let at = index.0.checked_sub(first.0)?;
        self.batches.get(usize::try_from(at).ok()?)
    }

    /// Cached batches from index `from` on.
    pub fn starting_at_index(&self, from: LogIndex) -> impl Iterator<Item = &CachedBatch> {
        let skip = self.batches.front().map_or(0, |f| from.0.saturating_sub(f.index.0) as usize);
        self.batches.iter().skip(skip)
    }

    /// Cached batches a fetch from `offset` returns, in order.
    pub fn starting_at_offset(&self, offset: Offset) -> impl Iterator<Item = &CachedBatch> {
        let skip = self.batches.partition_point(|b| b.before_offset(offset));
        self.batches.iter().skip(skip)
    }

    #[cfg(test)]
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(index: u64, offset: u64, count: u32) -> CachedBatch {
        CachedBatch {
            index: LogIndex(index),
            base_offset: Offset(offset),
            record_count: count,
            bytes: Bytes::from(vec![0u8; 100]),
        }
    }

    #[test]
    fn eviction_keeps_batches_that_are_not_durable() {
        let mut cache = TailCache::new(150);
        for i in 1..=4 {
            cache.push(batch(i, i * 10, 10));
        }
        cache.evict(LogIndex(1));
        assert_eq!(cache.front().unwrap().index, LogIndex(2));
        cache.evict(LogIndex(4));
        assert_eq!(cache.front().unwrap().index, LogIndex(4));
        assert_eq!(cache.bytes(), 100);
    }

    #[test]
    fn lookups_by_offset_include_control_batches_at_the_offset() {
        let mut cache = TailCache::new(1 << 20);
        cache.push(batch(1, 0, 5));
        cache.push(batch(2, 5, 0));
        cache.push(batch(3, 5, 5));
        let got: Vec<u64> = cache.starting_at_offset(Offset(5)).map(|b| b.index.0).collect();
        assert_eq!(got, vec![2, 3]);
        let got: Vec<u64> = cache.starting_at_offset(Offset(4)).map(|b| b.index.0).collect();
        assert_eq!(got, vec![1, 2, 3]);
        assert_eq!(cache.get(LogIndex(3)).unwrap().base_offset, Offset(5));
        cache.truncate_from(LogIndex(2));
        assert!(cache.get(LogIndex(2)).is_none());
    }
}
