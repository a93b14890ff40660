//! Raft hard state (term, vote) in two alternating checksummed slots (docs/format.md#hard-state).
//!
//! `store` writes the slot not holding the newest state, with a higher generation, and
//! fdatasyncs it before returning; `load` takes the valid slot with the highest generation.
//! A torn write damages at most the slot being written, so the previous state survives —
//! but a flipped bit in the newest slot looks the same and rolls the state back, so a damaged
//! slot is reported (`slot_damaged_at_open`) for the caller to treat as a lost hard state.
//! `open` fdatasyncs the file before returning, so what it loaded is durable.
//!
//! Invariants: the newest valid slot is the last state `store` returned Ok for (or a later
//! one whose store was interrupted); a failed write or fdatasync latches the store.

#![forbid(unsafe_code)]

use std::cell::{Cell, RefCell};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use crate::error::HardStateError;
use crate::io::{DataDir, DirectFile, FaultInjector, OpenFileError};
use crate::limits::BLOCK_SIZE;
use crate::types::{NodeId, Term};

/// File name of the hard state inside a data dir.
pub const HARD_STATE_FILE: &str = "hard_state";
/// Magic of a hard state slot: "RLGH".
pub const HARD_STATE_MAGIC: u32 = u32::from_le_bytes(*b"RLGH");
/// Current hard state slot version.
pub const HARD_STATE_VERSION: u16 = 1;
const SLOT_HEADER_SIZE: usize = 40;
const SLOT_COUNT: usize = 2;

/// Raft's durable state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct HardState {
    pub term: Term,
    pub vote: Option<NodeId>,
}

#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
struct Slot {
    magic: U32,
    version: U16,
    reserved: U16,
    /// crc32 of slot bytes 0..8 and 12..4096.
    crc: U32,
    reserved2: U32,
    generation: U64,
    term: U64,
    vote: U32,
    has_vote: U32,
}

const _: () = assert!(std::mem::size_of::<Slot>() == SLOT_HEADER_SIZE);

/// The hard state file of one Raft replica.
#[derive(Debug)]
pub struct HardStateStore {
    file: DirectFile,
    path: PathBuf,
    faults: Arc<FaultInjector>,
    generation: Cell<u64>,
    failed: RefCell<Option<String>>,
    /// One slot was damaged when the store was opened (see `slot_damaged_at_open`).
    slot_damaged_at_open: bool,
}

fn slot_crc(block: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&block[0..8]);
    hasher.update(&block[12..BLOCK_SIZE]);
    hasher.finalize()
}

/// Encodes a slot block.
pub fn encode_slot(state: &HardState, generation: u64, block: &mut [u8]) {
    assert_eq!(block.len(), BLOCK_SIZE);
    block.fill(0);
    let slot = Slot {
        magic: HARD_STATE_MAGIC.into(),
        version: HARD_STATE_VERSION.into(),
        reserved: 0.into(),
        crc: 0.into(),
        reserved2: 0.into(),
        generation: generation.into(),
        term: state.term.0.into(),
        vote: state.vote.map_or(0, |n| n.0).into(),
        has_vote: u32::from(state.vote.is_some()).into(),
    };
    block[..SLOT_HEADER_SIZE].copy_from_slice(slot.as_bytes());
    let crc = slot_crc(block);
    block[8..12].copy_from_slice(&crc.to_le_bytes());
}

/// A slot that is neither zero nor valid (torn or damaged).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DamagedSlot;

/// What a slot holds: `Ok(None)` if it was never written (zeros), `Err` if damaged.
pub fn decode_slot(block: &[u8]) -> Result<Option<(u64, HardState)>, DamagedSlot> {
    let block = block.get(..BLOCK_SIZE).ok_or(DamagedSlot)?;
    if block.iter().all(|b| *b == 0) {
        return Ok(None);
    }
    let slot = Slot::read_from_bytes(&block[..SLOT_HEADER_SIZE]).map_err(|_| DamagedSlot)?;
    if slot.magic.get() != HARD_STATE_MAGIC
        || slot.version.get() != HARD_STATE_VERSION
        || slot.crc.get() != slot_crc(block)
        || slot.has_vote.get() > 1
    {
        return Err(DamagedSlot);
    }
    let vote = (slot.has_vote.get() == 1).then(|| NodeId(slot.vote.get()));
    Ok(Some((slot.generation.get(), HardState { term: Term(slot.term.get()), vote })))
}

/// Chooses the newest valid slot.
fn choose(
    slots: [Result<Option<(u64, HardState)>, DamagedSlot>; SLOT_COUNT],
) -> Option<(u64, HardState)> {
    let valid = slots.iter().filter_map(|s| s.as_ref().ok().copied().flatten());
    valid.max_by_key(|(generation, _)| *generation)
}

impl HardStateStore {
    /// Opens (creating and syncing if missing) the hard state file in `dir`.
    pub async fn open(dir: &Path) -> Result<HardStateStore, HardStateError> {
        Self::open_with_faults(dir, Arc::new(FaultInjector::default())).await
    }

    /// `open` with a fault injector (tests of the failed-write latch).
    pub async fn open_with_faults(
        dir: &Path,
        faults: Arc<FaultInjector>,
    ) -> Result<HardStateStore, HardStateError> {
        let path = dir.join(HARD_STATE_FILE);
        let io = |source| HardStateError::Io { path: path.clone(), source };
        match crate::io::probe_direct_io(dir).await {
            Ok(()) => {}
            Err(OpenFileError::DirectIoUnsupported(source)) => {
                return Err(HardStateError::DirectIoUnsupported { path, source })
            }
            Err(OpenFileError::Io(source)) if crate::io::is_no_space(&source) => {
                return Err(HardStateError::StorageFull { path, source })
            }
            Err(OpenFileError::Io(source)) => return Err(io(source)),
        }
        let existed = path.exists();
        let file = match DirectFile::open(&path).await {
            Ok(file) => file,
            Err(OpenFileError::DirectIoUnsupported(source)) => {
                return Err(HardStateError::DirectIoUnsupported { path, source })
            }
            Err(OpenFileError::Io(source)) => return Err(io(source)),
        };
        let size = file.file_size().await.map_err(io)?;
        if !existed || size < (SLOT_COUNT * BLOCK_SIZE) as u64 {
            if size > 0 && existed {
                // A previous create was interrupted before its sync: keep what is there.
                let bytes = file.read_at(0, SLOT_COUNT * BLOCK_SIZE).await.map_err(io)?;
                if bytes.iter().any(|b| *b != 0) {
                    return Err(HardStateError::Corrupt { path });
                }
            }
            let buf = file.alloc(SLOT_COUNT * BLOCK_SIZE);
            if let Err(source) = file.write_allocating_at(&faults, buf, 0).await {
                if crate::io::is_no_space(&source) {
                    // Nothing was stored: the next open creates the file again.
                    let _ = file.close().await;
                    if !existed || size == 0 {
                        let _ = std::fs::remove_file(&path);
                    }
                    return Err(HardStateError::StorageFull { path, source });
                }
                return Err(io(source));
            }
            file.sync(&faults).await.map_err(io)?;
            let data_dir = DataDir::open(dir).await.map_err(io)?;
            data_dir.sync(&faults).await.map_err(io)?;
        }
        let mut store = HardStateStore {
            file,
            path,
            faults,
            generation: Cell::new(0),
            failed: RefCell::new(None),
            slot_damaged_at_open: false,
        };
        let (loaded, damaged) = store.read_slots().await?;
        store.generation.set(loaded.map_or(0, |(generation, _)| generation));
        store.slot_damaged_at_open = damaged > 0;
        // What is loaded must be durable before anything depends on it: a store whose
        // fdatasync failed or never ran may be readable now and gone after a power loss.
        store
            .file
            .sync(&store.faults)
            .await
            .map_err(|source| HardStateError::Io { path: store.path.clone(), source })?;
        Ok(store)
    }

    /// Whether one slot was damaged (neither zero nor valid) when the store was opened. The
    /// other slot's state was loaded, but it may be older than a state this replica already
    /// acted on: a torn store of the newest slot (never acted on) and a flipped bit in it
    /// (acted on: a vote was sent) look alike. A replicated log must treat this as a lost
    /// hard state (docs/format.md#recovery-outcomes).
    pub fn slot_damaged_at_open(&self) -> bool {
        self.slot_damaged_at_open
    }

    /// The newest valid slot, and how many slots are damaged.
    async fn read_slots(&self) -> Result<(Option<(u64, HardState)>, usize), HardStateError> {
        let bytes = self
            .file
            .read_at(0, SLOT_COUNT * BLOCK_SIZE)
            .await
            .map_err(|source| HardStateError::Io { path: self.path.clone(), source })?;
        let slot = |i: usize| {
            bytes.get(i * BLOCK_SIZE..(i + 1) * BLOCK_SIZE).map_or(Err(DamagedSlot), decode_slot)
        };
        let slots = [slot(0), slot(1)];
        let damaged = slots.iter().filter(|s| s.is_err()).count();
        let chosen = choose(slots);
        // One torn write damages one slot; so does one flipped bit (`slot_damaged_at_open`
        // tells the caller). Two damaged slots are not a torn write.
        if damaged == SLOT_COUNT {
            return Err(HardStateError::Corrupt { path: self.path.clone() });
        }
        Ok((chosen, damaged))
    }

    /// The newest durable hard state (default: term 0, no vote). With a damaged slot it is
    /// the other slot's state, which may be older than one acted on (`slot_damaged_at_open`).
    pub async fn load(&self) -> Result<HardState, HardStateError> {
        Ok(self.read_slots().await?.0.map(|(_, state)| state).unwrap_or_default())
    }

    /// Writes `(term, vote)` and fdatasyncs it; durable when this returns Ok.
    pub async fn store(&self, term: Term, vote: Option<NodeId>) -> Result<(), HardStateError> {
        let state = HardState { term, vote };
        if let Some(reason) = self.failed.borrow().clone() {
            return Err(HardStateError::Failed { reason });
        }
        let generation = self.generation.get() + 1;
        let slot = (generation % SLOT_COUNT as u64) as usize;
        let mut buf = self.file.alloc(BLOCK_SIZE);
        encode_slot(&state, generation, buf.as_bytes_mut());
        let position = (slot * BLOCK_SIZE) as u64;
        let written = self.file.write_at(&self.faults, buf, position).await;
        let result = match written {
            Ok(()) => self.file.sync(&self.faults).await,
            Err(e) => Err(e),
        };
        match result {
            Ok(()) => {
                self.generation.set(generation);
                Ok(())
            }
            Err(e) => {
                let reason = format!("hard state write to {:?} failed: {e}", self.path);
                *self.failed.borrow_mut() = Some(reason.clone());
                Err(HardStateError::Failed { reason })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_round_trips_with_and_without_vote() {
        let mut block = vec![0u8; BLOCK_SIZE];
        for state in [
            HardState { term: Term(9), vote: Some(NodeId(3)) },
            HardState { term: Term(1), vote: None },
        ] {
            encode_slot(&state, 42, &mut block);
            assert_eq!(decode_slot(&block), Ok(Some((42, state))));
        }
    }

    #[test]
    fn a_torn_slot_is_damaged_and_the_other_slot_wins() {
        let mut a = vec![0u8; BLOCK_SIZE];
        let mut b = vec![0u8; BLOCK_SIZE];
        encode_slot(&HardState { term: Term(4), vote: None }, 7, &mut a);
        encode_slot(&HardState { term: Term(5), vote: None }, 8, &mut b);
        b[2000] = 0xff;
        let chosen = choose([decode_slot(&a), decode_slot(&b)]);
        assert_eq!(chosen, Some((7, HardState { term: Term(4), vote: None })));
    }
}
