//! Simulated disk of one node: the Raft log and the hard state, with separate *written* and
//! *durable* images.
//!
//! Every write (hard state, append, truncate, log reset) lands in the written image at once
//! and joins the queue of unsynced operations. A sync covers every operation written before
//! it was requested and completes after a delay the simulator chooses (slow fsyncs included);
//! syncs complete in request order. Only then do those operations reach the durable image.
//!
//! Faults:
//! - **crash**: the written image is lost; a random prefix of the unsynced operations may
//!   still have reached the platter, and the last of them may be torn (the records written
//!   by a torn append keep a bad checksum; a torn hard-state slot too) when the caller allows
//!   it ([`Tear::Any`]: a torn write is disk damage, within the fault scheduler's budget);
//! - **failed sync**: fatal for the log (fsyncgate): the node stops at once, which is a crash;
//!   the driver never retries;
//! - **bit flip at rest** in any durable record (the last one included) or hard-state slot of
//!   a stopped node;
//! - **wipe**: everything is gone;
//! - **full disk** (ENOSPC) for a span of steps ([`SimDisk::fill_until`]): the engine's rule
//!   (ARCHITECTURE.md, "A full disk"), which the disk states and the driver follows:
//!   appends, resets and a truncation of the whole log (a reset in the engine) need space
//!   ([`SimDisk::needs_space`]) and are refused, held by the driver's log worker in order
//!   and written once space is back; a partial truncation, retention (deleting files) and
//!   clearing the damaged mark need none; **hard-state writes are never refused** (the
//!   engine's `hard_state` file is created with both slots and then only overwritten in
//!   place: votes need no space); a failed write or fdatasync is the failed-sync fault, not
//!   this one. A disk that was wiped cannot open while full (the engine's `Log::open` of a
//!   new log answers `OpenError::StorageFull`, [`SimDisk::opens_when_full`]); one whose files
//!   exist opens. The full span outlives a crash (it is the disk's, not the process's).
//!
//! Recovery ([`SimDisk::recover`]) reads the durable image only and checks every checksum,
//! following THE RECOVERY RULE, one table for the engine and the simulator:
//! docs/format.md, "Recovery outcomes". A replica restarts *damaged* whenever recovery dropped
//! bytes that could hold entries it may have acknowledged, since one node cannot tell a torn
//! write of its last flushes from rot in data it already acknowledged:
//! - a bad record anywhere, the last one included (a torn tail or a flip): the log is cut
//!   before it, damaged;
//! - a bad hard-state slot, even with the other one valid (a torn slot write and a flipped
//!   newest slot look alike): damaged, and the hard state is (max(valid slot term, log last
//!   term), no vote);
//! - a wiped disk: damaged, with the bootstrap membership. The mark is durable before the
//!   node runs (recovery writes it), so a crash during the first start after a wipe comes
//!   back damaged too; [`SimDisk::new`] stands for a directory created and proven pristine at
//!   the cluster's bootstrap;
//! - a clean end (the unsynced writes that landed did so whole): clean.
//!
//! The damaged mark stays durable until a repair is made durable (`DiskOp::ClearDamaged`).
//!
//! Invariants: records are contiguous from `log_start`; the durable image is always a state
//! the written image went through (a prefix of the operation history), apart from torn
//! writes and flips.

use std::cell::Cell;
use std::collections::VecDeque;

use rand::rngs::SmallRng;
use rand::Rng;

use crate::Mutation;
use ringlog_raft::message::{Entry, EntryKind, Membership};
use ringlog_raft::types::{HardState, LogIndex, NodeId, Term};

/// Records at the end of the durable log that half of the record flips strike.
pub const FLIP_TAIL_RECORDS: usize = 2;

/// Bound on operations written and not yet synced on one disk.
pub const UNSYNCED_OPS_MAX: usize = 100_000;

/// One write the driver issues.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DiskOp {
    HardState(HardState),
    Append(Vec<Entry>),
    Truncate {
        from: LogIndex,
    },
    /// Restart the log empty at `start`; `membership` is the membership as of `start - 1`.
    Reset {
        start: LogIndex,
        prev_term: Term,
        membership: Membership,
    },
    /// Retention: entries below `start` are deleted (whole sealed segments, in the engine).
    AdvanceStart {
        start: LogIndex,
    },
    /// The replica was repaired (`Action::Repaired`): clear the persistent damaged mark.
    ClearDamaged,
}

/// How a crash may tear the last write that reached the disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tear {
    /// Writes land whole or not at all (a prefix of the unsynced writes lands, none torn).
    None,
    /// The last write that landed may be torn, a log append or a hard-state slot: recovery
    /// reports either as damage, so the fault scheduler allows it only within its budget.
    Any,
}

/// A write the disk cannot apply: the driver asked for something the log contract forbids
/// (a core bug, reported by the simulator as a violation).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskOpError(pub String);

#[derive(Clone, Debug)]
struct Record {
    entry: Entry,
    checksum: u32,
}

#[derive(Clone, Copy, Debug)]
struct HardStateSlot {
    seq: u64,
    state: HardState,
    checksum: u32,
}

/// One image (written or durable) of the disk.
#[derive(Clone, Debug, Default)]
pub struct DiskImage {
    /// Index the first record has (or would have).
    log_start: LogIndex,
    /// Term of the entry before `log_start` (Term(0) at the very beginning).
    start_prev_term: Term,
    records: Vec<Record>,
    slots: [Option<HardStateSlot>; 2],
    hard_state_seq: u64,
    /// Membership as of `log_start - 1`, stored by a log reset (`None`: the bootstrap one).
    base_membership: Option<Membership>,
    /// Persistent mark: recovery found damage and no repair has been made durable since.
    damaged_mark: bool,
    wiped: bool,
}

/// What recovery found on a durable image: what the node restarts from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecoveredImage {
    pub hard_state: HardState,
    pub log_start: LogIndex,
    pub start_prev_term: Term,
    pub entries: Vec<Entry>,
    /// Membership as of `log_start - 1` stored by the last log reset (`None`: bootstrap).
    pub base_membership: Option<Membership>,
    /// The log or the hard state was lost or corrupted (now or at an earlier recovery, and
    /// not repaired since).
    pub damaged: bool,
    /// The whole disk was wiped.
    pub wiped: bool,
}

#[derive(Clone, Copy, Debug)]
struct PendingSync {
    /// Operations with sequence number below this are covered.
    ops_through: u64,
    due_step: u64,
    fails: bool,
}

/// Outcome of a sync that came due.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SyncOutcome {
    /// These operations (in write order) are now durable.
    Completed(Vec<DiskOp>),
    /// The fdatasync failed: fatal for the log.
    Failed,
}

/// Counters for the run summary.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DiskStats {
    pub writes: u64,
    pub syncs: u64,
    pub torn_writes: u64,
    pub lost_unsynced_ops: u64,
    /// Full-disk spans begun ([`SimDisk::fill_until`]).
    pub full_events: u64,
}

/// The simulated disk of one node.
#[derive(Debug)]
pub struct SimDisk {
    written: DiskImage,
    durable: DiskImage,
    /// Unsynced operations and their sequence numbers, oldest first.
    unsynced: VecDeque<(u64, DiskOp)>,
    op_seq_next: u64,
    syncs: VecDeque<PendingSync>,
    pub stats: DiskStats,
    /// `damaged_on_recovery` of the durable image as last computed; forgotten by every
    /// `&mut self` method (only they change the image). The fault scheduler asks for every
    /// stopped node at every step, and recomputing it checksums the whole durable log.
    recovery_damage: Cell<Option<bool>>,
    /// The disk is full before this step (ENOSPC): `fill_until`.
    full_until: u64,
}

impl Default for SimDisk {
    fn default() -> Self {
        SimDisk::new()
    }
}

impl SimDisk {
    /// A fresh, empty disk (a node that has never run).
    pub fn new() -> SimDisk {
        let image = DiskImage { log_start: LogIndex(1), ..DiskImage::default() };
        SimDisk {
            written: image.clone(),
            durable: image,
            unsynced: VecDeque::new(),
            op_seq_next: 0,
            syncs: VecDeque::new(),
            stats: DiskStats::default(),
            recovery_damage: Cell::new(None),
            full_until: 0,
        }
    }

    /// The disk is full (every allocating write answers ENOSPC) until step `until` (0: space
    /// is back now). Counted as a full-disk event when it begins a span.
    pub fn fill_until(&mut self, until: u64, now: u64) {
        if until > now && !self.full_at(now) {
            self.stats.full_events += 1;
        }
        self.full_until = until;
    }

    /// Whether the disk is full at step `now`.
    pub fn full_at(&self, now: u64) -> bool {
        now < self.full_until
    }

    /// Whether `op` allocates space, so that a full disk refuses it (module doc): an append,
    /// a log reset, a truncation of the whole written log (the engine makes that a reset into
    /// a new first segment). Hard state, a partial truncation, retention and the damaged
    /// mark's removal need none.
    pub fn needs_space(&self, op: &DiskOp) -> bool {
        match op {
            DiskOp::Append(_) | DiskOp::Reset { .. } => true,
            DiskOp::Truncate { from } => *from <= self.written.log_start,
            DiskOp::HardState(_) | DiskOp::AdvanceStart { .. } | DiskOp::ClearDamaged => false,
        }
    }

    /// Whether the node can open this disk while it is full: not after a wipe (the engine
    /// creates a new log, which a full disk refuses), yes when its files exist.
    pub fn opens_when_full(&self) -> bool {
        !self.durable.wiped
    }

    /// Writes `op` (not durable until a sync requested after it completes).
    pub fn write(&mut self, op: DiskOp) -> Result<(), DiskOpError> {
        self.recovery_damage.set(None);
        if self.unsynced.len() >= UNSYNCED_OPS_MAX {
            return Err(DiskOpError(format!("more than {UNSYNCED_OPS_MAX} unsynced writes")));
        }
        self.written.apply(&op)?;
        self.stats.writes += 1;
        self.unsynced.push_back((self.op_seq_next, op));
        self.op_seq_next += 1;
        Ok(())
    }

    /// Requests an fdatasync of everything written so far, completing at `due_step` (or after
    /// the previous sync, whichever is later); `fails` makes it fail.
    pub fn request_sync(&mut self, due_step: u64, fails: bool) {
        self.recovery_damage.set(None);
        let due_step = self.syncs.back().map_or(due_step, |s| s.due_step.max(due_step));
        self.syncs.push_back(PendingSync { ops_through: self.op_seq_next, due_step, fails });
        self.stats.syncs += 1;
    }

    /// Whether any sync is outstanding.
    pub fn sync_pending(&self) -> bool {
        !self.syncs.is_empty()
    }

    /// Completes the next sync if it is due at `now`.
    pub fn poll_sync(&mut self, now: u64) -> Option<SyncOutcome> {
        self.recovery_damage.set(None);
        let sync = *self.syncs.front()?;
        if sync.due_step > now {
            return None;
        }
        self.syncs.pop_front();
        if sync.fails {
            return Some(SyncOutcome::Failed);
        }
        let mut done = Vec::new();
        while self.unsynced.front().is_some_and(|(seq, _)| *seq < sync.ops_through) {
            let (_, op) = self.unsynced.pop_front().expect("front exists");
            self.durable.apply(&op).expect("an op valid on the written image is valid here");
            done.push(op);
        }
        Some(SyncOutcome::Completed(done))
    }

    /// Power loss / kill -9: the written image is lost. A random prefix of the unsynced
    /// operations reached the disk anyway; the last of them may be torn as `tear` allows.
    pub fn crash(&mut self, rng: &mut SmallRng, tear: Tear) {
        self.recovery_damage.set(None);
        let survivors = rng.gen_range(0..=self.unsynced.len());
        self.stats.lost_unsynced_ops += (self.unsynced.len() - survivors) as u64;
        for i in 0..survivors {
            let op = self.unsynced[i].1.clone();
            let last = i + 1 == survivors;
            let tearable = tear == Tear::Any;
            if last && tearable {
                self.durable.apply_torn(&op, rng);
                self.stats.torn_writes += 1;
            } else {
                self.durable.apply(&op).expect("valid on the written image");
            }
        }
        self.unsynced.clear();
        self.syncs.clear();
        self.written = self.durable.clone();
    }

    /// Flips a bit of a durable record (any, the last one included) or of a hard-state slot.
    /// Only for a stopped node (at rest). The file is picked first (the log or the hard state,
    /// even odds when both hold something), then a record or slot in it: half the record
    /// flips strike one of the last `FLIP_TAIL_RECORDS` records (the last flushes, the
    /// acknowledged data a torn-write rule is tempted to drop), three slot flips in four the
    /// newest slot. Returns what was hit.
    pub fn flip_bit_at_rest(&mut self, rng: &mut SmallRng) -> Option<String> {
        self.recovery_damage.set(None);
        assert!(self.unsynced.is_empty(), "bit flips at rest hit stopped nodes only");
        let record_choices = self.durable.records.len();
        let slot_choices = self.durable.slots.iter().filter(|s| s.is_some()).count();
        if record_choices + slot_choices == 0 {
            return None;
        }
        let hit_log = slot_choices == 0 || (record_choices > 0 && rng.gen_bool(0.5));
        let bit = 1u32 << rng.gen_range(0..32);
        let hit = if hit_log {
            let tail = record_choices.min(FLIP_TAIL_RECORDS);
            let pick = if rng.gen_bool(0.5) {
                record_choices - 1 - rng.gen_range(0..tail)
            } else {
                rng.gen_range(0..record_choices)
            };
            let record = &mut self.durable.records[pick];
            record.checksum ^= bit;
            format!("record {}", record.entry.index)
        } else {
            // The newest slot is the one whose loss matters (it may hold a vote the node
            // already sent): three flips in four strike it when both slots are written.
            let newest = self.durable.slots.iter().flatten().map(|s| s.seq).max();
            let pick_newest = slot_choices == 1 || rng.gen_bool(0.75);
            let slot = self
                .durable
                .slots
                .iter_mut()
                .flatten()
                .find(|s| (Some(s.seq) == newest) == pick_newest)
                .expect("counted");
            slot.checksum ^= bit;
            format!("hard-state slot seq {}", slot.seq)
        };
        self.written = self.durable.clone();
        Some(hit)
    }

    /// Flips a bit of the durable record at `index` (a stopped node's rot at rest, placed).
    /// Returns whether the log holds that record.
    pub fn flip_record_at_rest(&mut self, index: LogIndex) -> bool {
        self.recovery_damage.set(None);
        assert!(self.unsynced.is_empty(), "bit flips at rest hit stopped nodes only");
        let Some(pos) = index.0.checked_sub(self.durable.log_start.0) else { return false };
        let Some(record) = self.durable.records.get_mut(pos as usize) else { return false };
        record.checksum ^= 1 << 5;
        self.written = self.durable.clone();
        true
    }

    /// Flips a bit of the newest hard-state slot (`newest`) or of the other one. Returns
    /// whether that slot was written.
    pub fn flip_slot_at_rest(&mut self, newest: bool) -> bool {
        self.recovery_damage.set(None);
        assert!(self.unsynced.is_empty(), "bit flips at rest hit stopped nodes only");
        let seq = self.durable.hard_state_seq;
        let pick = if newest { seq % 2 } else { (seq + 1) % 2 };
        let Some(slot) = self.durable.slots[pick as usize].as_mut() else { return false };
        slot.checksum ^= 1 << 5;
        self.written = self.durable.clone();
        true
    }

    /// Whether the durable image carries the damaged mark (a repair not yet durable).
    pub fn damaged_mark_durable(&self) -> bool {
        self.durable.damaged_mark
    }

    /// Whether recovery would report damage now (for a stopped node).
    pub fn damaged_on_recovery(&self) -> bool {
        if let Some(damage) = self.recovery_damage.get() {
            return damage;
        }
        let image = &self.durable;
        let slot_bad = image
            .slots
            .iter()
            .flatten()
            .any(|s| s.checksum != hard_state_checksum(s.seq, &s.state));
        let bad = image.records.iter().any(|r| r.checksum != entry_checksum(&r.entry));
        let damage = image.damaged_mark || image.wiped || slot_bad || bad;
        self.recovery_damage.set(Some(damage));
        damage
    }

    /// Everything on the disk is lost (a replaced or reformatted drive).
    pub fn wipe(&mut self) {
        self.recovery_damage.set(None);
        *self = SimDisk { stats: self.stats, full_until: self.full_until, ..SimDisk::new() };
        self.durable.wiped = true;
        self.written.wiped = true;
    }

    /// Recovery after a restart: reads the durable image only (the node must be stopped: no
    /// unsynced writes), following the recovery rule (module doc; docs/format.md "Recovery
    /// outcomes"). Also rewrites the disk to what was recovered (bad records cut, hard state
    /// rewritten, damaged mark set), durably before the node runs, as the engine's recovery
    /// does. `mutation` may plant a known recovery bug (the mutation check).
    pub fn recover(&mut self, mutation: Mutation) -> RecoveredImage {
        self.recovery_damage.set(None);
        assert!(self.unsynced.is_empty() && self.syncs.is_empty(), "recover a stopped disk");
        let image = &mut self.durable;
        let wiped = image.wiped;
        let mut damaged = image.wiped || image.damaged_mark;
        image.wiped = false;
        let mut best: Option<HardStateSlot> = None;
        let mut bad_slots = 0;
        for slot in image.slots.iter().flatten() {
            if slot.checksum != hard_state_checksum(slot.seq, &slot.state) {
                bad_slots += 1;
            } else if best.is_none_or(|b| slot.seq > b.seq) {
                best = Some(*slot);
            }
        }
        let mut hard_state = best.map_or(HardState::default(), |b| b.state);
        let rollback = mutation == Mutation::SingleSlotRollback && best.is_some();
        let slot_damage = bad_slots > 0 && !rollback;
        if let Some(bad) = image.records.iter().position(|r| r.checksum != entry_checksum(&r.entry))
        {
            let torn_tail_as_clean =
                mutation == Mutation::TornTailTakenAsClean && bad + 1 == image.records.len();
            // MUTATION (TornTailTakenAsClean): a bad last record is taken for a torn write of
            // an unacknowledged flush and dropped without damage.
            damaged |= !torn_tail_as_clean;
            image.records.truncate(bad);
        }
        let last_term = image.records.last().map_or(image.start_prev_term, |r| r.entry.term);
        if slot_damage {
            // Any bad slot: the newest state may be the lost one (a vote included). Restart
            // at the highest term known, voting for nobody (a damaged replica never votes).
            damaged = true;
            hard_state = HardState { term: hard_state.term.max(last_term), vote: None };
        } else if hard_state.term < last_term && (damaged || rollback) {
            // MUTATION (SingleSlotRollback) lands here when the older slot trails the log:
            // the engine's replicator calls a hard state below the log's last term damage.
            damaged = true;
            hard_state = HardState { term: last_term, vote: None };
        }
        // The damage is remembered durably until a repair is durable; the hard state is
        // rewritten cleanly so that the same damage is not found again next time.
        image.damaged_mark = damaged;
        let seq = image.hard_state_seq;
        image.slots = [None, None];
        image.slots[(seq % 2) as usize] = Some(HardStateSlot {
            seq,
            state: hard_state,
            checksum: hard_state_checksum(seq, &hard_state),
        });
        self.written = self.durable.clone();
        RecoveredImage {
            hard_state,
            log_start: self.durable.log_start,
            start_prev_term: self.durable.start_prev_term,
            entries: self.durable.records.iter().map(|r| r.entry.clone()).collect(),
            base_membership: self.durable.base_membership.clone(),
            damaged,
            wiped,
        }
    }

    /// The written log's entries `from..=through`, or `None` if it does not hold all of them.
    pub fn read_written(&self, from: LogIndex, through: LogIndex) -> Option<Vec<Entry>> {
        self.written.read(from, through)
    }

    /// The entry at `index` in the written log.
    pub fn written_entry(&self, index: LogIndex) -> Option<&Entry> {
        self.written.entry(index)
    }

    /// Last index of the written log (`log_start - 1` if empty) and its term.
    pub fn written_last(&self) -> (LogIndex, Term) {
        self.written.last()
    }

    /// First index of the written log.
    pub fn written_log_start(&self) -> LogIndex {
        self.written.log_start
    }

    /// Last index of the durable log and its term.
    pub fn durable_last(&self) -> (LogIndex, Term) {
        self.durable.last()
    }

    /// First index of the durable log.
    pub fn durable_log_start(&self) -> LogIndex {
        self.durable.log_start
    }

    /// The durable hard state (newest valid slot), without recovery's side effects.
    pub fn durable_hard_state(&self) -> HardState {
        self.durable
            .slots
            .iter()
            .flatten()
            .max_by_key(|s| s.seq)
            .map(|s| s.state)
            .unwrap_or_default()
    }

    /// The entry at `index` in the durable log.
    pub fn durable_entry(&self, index: LogIndex) -> Option<&Entry> {
        self.durable.entry(index)
    }

    /// The membership a restart from the durable image would start with: that of its last
    /// membership entry, else its base (`None`: the bootstrap one).
    pub fn durable_membership(&self) -> Option<&Membership> {
        self.durable
            .records
            .iter()
            .rev()
            .find_map(|r| match &r.entry.kind {
                EntryKind::Membership(m) => Some(m),
                _ => None,
            })
            .or(self.durable.base_membership.as_ref())
    }
}

impl DiskImage {
    fn last(&self) -> (LogIndex, Term) {
        match self.records.last() {
            Some(r) => (r.entry.index, r.entry.term),
            None => (LogIndex(self.log_start.0 - 1), self.start_prev_term),
        }
    }

    fn entry(&self, index: LogIndex) -> Option<&Entry> {
        let pos = index.0.checked_sub(self.log_start.0)?;
        self.records.get(usize::try_from(pos).ok()?).map(|r| &r.entry)
    }

    fn read(&self, from: LogIndex, through: LogIndex) -> Option<Vec<Entry>> {
        if from > through || from < self.log_start || through > self.last().0 {
            return None;
        }
        let a = (from.0 - self.log_start.0) as usize;
        let b = (through.0 - self.log_start.0) as usize;
        Some(self.records[a..=b].iter().map(|r| r.entry.clone()).collect())
    }

    fn apply(&mut self, op: &DiskOp) -> Result<(), DiskOpError> {
        match op {
            DiskOp::HardState(state) => {
                self.hard_state_seq += 1;
                let seq = self.hard_state_seq;
                self.slots[(seq % 2) as usize] = Some(HardStateSlot {
                    seq,
                    state: *state,
                    checksum: hard_state_checksum(seq, state),
                });
            }
            DiskOp::Append(entries) => {
                let mut expected = self.last().0.next();
                for entry in entries {
                    if entry.index != expected {
                        return Err(DiskOpError(format!(
                            "append of {} where the log expects {expected}",
                            entry.index
                        )));
                    }
                    expected = expected.next();
                }
                self.records.extend(
                    entries
                        .iter()
                        .map(|e| Record { entry: e.clone(), checksum: entry_checksum(e) }),
                );
            }
            DiskOp::Truncate { from } => {
                let last = self.last().0;
                if *from > last.next() {
                    return Err(DiskOpError(format!("truncate from {from} beyond last {last}")));
                }
                let keep = from.0.saturating_sub(self.log_start.0) as usize;
                self.records.truncate(keep);
            }
            DiskOp::Reset { start, prev_term, membership } => {
                if start.0 == 0 {
                    return Err(DiskOpError("reset of the log to start i0".into()));
                }
                self.records.clear();
                self.log_start = *start;
                self.start_prev_term = *prev_term;
                self.base_membership = Some(membership.clone());
            }
            DiskOp::AdvanceStart { start } => {
                let last = self.last().0;
                if *start <= self.log_start || start.0 > last.0 + 1 {
                    return Err(DiskOpError(format!(
                        "log start {} cannot move to {start} (last {last})",
                        self.log_start
                    )));
                }
                let gone = (start.0 - self.log_start.0) as usize;
                self.start_prev_term = self.records[gone - 1].entry.term;
                for record in self.records.drain(..gone) {
                    if let EntryKind::Membership(m) = record.entry.kind {
                        self.base_membership = Some(m);
                    }
                }
                self.log_start = *start;
            }
            DiskOp::ClearDamaged => self.damaged_mark = false,
        }
        Ok(())
    }

    /// Applies `op` as a write that was cut short by the crash.
    fn apply_torn(&mut self, op: &DiskOp, rng: &mut SmallRng) {
        match op {
            DiskOp::HardState(state) => {
                self.apply(&DiskOp::HardState(*state)).expect("hard state writes always apply");
                let slot = self.slots[(self.hard_state_seq % 2) as usize].as_mut().expect("set");
                slot.checksum ^= 1 << rng.gen_range(0..32);
            }
            DiskOp::Append(entries) => {
                // A prefix of the records made it; the last of those is torn.
                let kept = rng.gen_range(1..=entries.len().max(1)).min(entries.len());
                self.apply(&DiskOp::Append(entries[..kept].to_vec())).expect("valid");
                if let Some(last) = self.records.last_mut() {
                    last.checksum ^= 1 << rng.gen_range(0..32);
                }
            }
            // Metadata updates are modelled as atomic: applied whole or not at all.
            DiskOp::Truncate { .. }
            | DiskOp::Reset { .. }
            | DiskOp::AdvanceStart { .. }
            | DiskOp::ClearDamaged => {
                if rng.gen_bool(0.5) {
                    self.apply(op).expect("valid");
                }
            }
        }
    }
}

/// FNV-1a over the fields a record's checksum covers.
fn fnv(hash: u32, bytes: &[u8]) -> u32 {
    bytes.iter().fold(hash, |h, b| (h ^ u32::from(*b)).wrapping_mul(0x0100_0193))
}

const FNV_OFFSET: u32 = 0x811c_9dc5;

fn entry_checksum(entry: &Entry) -> u32 {
    let mut h = fnv(FNV_OFFSET, &entry.term.0.to_le_bytes());
    h = fnv(h, &entry.index.0.to_le_bytes());
    match &entry.kind {
        EntryKind::Normal => h = fnv(h, &[0]),
        EntryKind::Noop => h = fnv(h, &[1]),
        EntryKind::Membership(m) => {
            h = fnv(h, &[2]);
            for id in m.voters.iter().chain([NodeId(u32::MAX)].iter()).chain(&m.learners) {
                h = fnv(h, &id.0.to_le_bytes());
            }
        }
    }
    fnv(h, &entry.payload)
}

fn hard_state_checksum(seq: u64, state: &HardState) -> u32 {
    let h = fnv(FNV_OFFSET, &seq.to_le_bytes());
    let h = fnv(h, &state.term.0.to_le_bytes());
    fnv(h, &state.vote.map_or(0, |v| u64::from(v.0) + 1).to_le_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use rand::SeedableRng;

    fn entry(index: u64, term: u64) -> Entry {
        Entry {
            term: Term(term),
            index: LogIndex(index),
            kind: EntryKind::Normal,
            payload: Bytes::from(format!("p{index}")),
        }
    }

    #[test]
    fn synced_writes_survive_a_crash_and_unsynced_ones_may_not() {
        let mut rng = SmallRng::seed_from_u64(7);
        let mut disk = SimDisk::new();
        disk.write(DiskOp::Append(vec![entry(1, 1), entry(2, 1)])).unwrap();
        disk.request_sync(5, false);
        disk.write(DiskOp::Append(vec![entry(3, 1)])).unwrap();
        assert!(disk.poll_sync(4).is_none());
        assert!(matches!(disk.poll_sync(5), Some(SyncOutcome::Completed(ops)) if ops.len() == 1));
        assert_eq!(disk.durable_last().0, LogIndex(2));
        disk.crash(&mut rng, Tear::None);
        let recovered = disk.recover(Mutation::None);
        assert!(!recovered.damaged);
        assert!(recovered.entries.len() >= 2);
        assert_eq!(recovered.entries[..2], [entry(1, 1), entry(2, 1)]);
    }

    #[test]
    fn torn_tail_is_dropped_and_is_damage() {
        // Recovery outcomes: non-zero bytes past the last valid batch -> cut AND damaged (the
        // torn write cannot be told from a flip in an acknowledged last flush).
        let mut rng = SmallRng::seed_from_u64(1);
        let mut torn = 0;
        for _ in 0..50 {
            let mut disk = SimDisk::new();
            disk.write(DiskOp::Append(vec![entry(1, 1)])).unwrap();
            disk.request_sync(0, false);
            disk.poll_sync(0);
            disk.write(DiskOp::Append(vec![entry(2, 1), entry(3, 1)])).unwrap();
            let before = disk.stats.torn_writes;
            disk.crash(&mut rng, Tear::Any);
            let tore = disk.stats.torn_writes > before;
            torn += usize::from(tore);
            let recovered = disk.recover(Mutation::None);
            assert_eq!(recovered.damaged, tore, "damaged exactly when a write was torn");
            assert_eq!(recovered.entries[0], entry(1, 1));
            assert!(recovered.entries.len() <= 2, "the torn record is gone");
        }
        assert!(torn > 0, "some crashes tore the append");
    }

    #[test]
    fn a_crash_that_may_not_tear_lands_whole_writes_and_is_clean() {
        let mut rng = SmallRng::seed_from_u64(2);
        for _ in 0..50 {
            let mut disk = SimDisk::new();
            disk.write(DiskOp::HardState(HardState { term: Term(1), vote: None })).unwrap();
            disk.write(DiskOp::Append(vec![entry(1, 1), entry(2, 1)])).unwrap();
            disk.crash(&mut rng, Tear::None);
            let recovered = disk.recover(Mutation::None);
            assert!(!recovered.damaged);
            assert!(recovered.entries.is_empty() || recovered.entries.len() == 2);
        }
    }

    #[test]
    fn bit_flip_in_the_last_durable_record_is_damage() {
        let mut rng = SmallRng::seed_from_u64(9);
        let mut last_hit = false;
        for _ in 0..200 {
            let mut disk = SimDisk::new();
            disk.write(DiskOp::Append((1..=2).map(|i| entry(i, 1)).collect())).unwrap();
            disk.request_sync(0, false);
            disk.poll_sync(0);
            if disk.flip_bit_at_rest(&mut rng).as_deref() != Some("record i2") {
                continue;
            }
            last_hit = true;
            let recovered = disk.recover(Mutation::None);
            assert!(recovered.damaged, "a flipped last record may have been acknowledged");
            assert_eq!(recovered.entries, vec![entry(1, 1)]);
        }
        assert!(last_hit, "flips strike the last durable record too");
    }

    /// `damaged_on_recovery` is remembered between changes of the disk: a flip, a wipe or a
    /// recovery after it was asked must still be seen.
    #[test]
    fn damage_on_recovery_follows_flips_wipes_and_recovery() {
        let mut rng = SmallRng::seed_from_u64(10);
        let mut disk = SimDisk::new();
        disk.write(DiskOp::Append((1..=4).map(|i| entry(i, 1)).collect())).unwrap();
        disk.request_sync(0, false);
        disk.poll_sync(0);
        assert!(!disk.damaged_on_recovery());
        assert!(!disk.damaged_on_recovery(), "asked twice, same answer");
        let hit = disk.flip_bit_at_rest(&mut rng).expect("a record or a slot to flip");
        assert!(disk.damaged_on_recovery(), "the flip of {hit} is damage");
        assert!(disk.recover(Mutation::None).damaged);
        // Recovery made the damaged mark durable: still damage until a repair is durable.
        assert!(disk.damaged_on_recovery());
        disk.wipe();
        assert!(disk.damaged_on_recovery(), "a wiped disk recovers damaged");
    }

    #[test]
    fn torn_tail_taken_as_clean_mutation_drops_the_last_record_undamaged() {
        let mut disk = SimDisk::new();
        disk.write(DiskOp::Append((1..=2).map(|i| entry(i, 1)).collect())).unwrap();
        disk.request_sync(0, false);
        disk.poll_sync(0);
        disk.durable.records[1].checksum ^= 4;
        let recovered = disk.recover(Mutation::TornTailTakenAsClean);
        assert!(!recovered.damaged);
        assert_eq!(recovered.entries, vec![entry(1, 1)]);
    }

    #[test]
    fn one_bad_hard_state_slot_is_damage_without_a_vote_at_the_highest_term() {
        let image = || {
            let mut disk = SimDisk::new();
            disk.write(DiskOp::HardState(HardState { term: Term(2), vote: None })).unwrap();
            disk.write(DiskOp::Append(vec![entry(1, 2)])).unwrap();
            let voted = HardState { term: Term(3), vote: Some(NodeId(1)) };
            disk.write(DiskOp::HardState(voted)).unwrap();
            disk.request_sync(0, false);
            disk.poll_sync(0);
            // The newest slot (term 3, voted for n1) rots; the older one (term 2) is valid.
            let newest = disk.durable.hard_state_seq;
            disk.durable.slots[(newest % 2) as usize].as_mut().unwrap().checksum ^= 1;
            disk
        };
        let recovered = image().recover(Mutation::None);
        assert!(recovered.damaged);
        assert_eq!(recovered.hard_state, HardState { term: Term(2), vote: None });
        assert_eq!(recovered.entries, vec![entry(1, 2)]);
        // The planted bug (the engine's old `read_slots`): the older slot, undamaged.
        let planted = image().recover(Mutation::SingleSlotRollback);
        assert!(!planted.damaged);
        assert_eq!(planted.hard_state, HardState { term: Term(2), vote: None });
    }

    #[test]
    fn a_bad_slot_restarts_at_the_log_last_term_when_the_valid_slot_trails_it() {
        let mut disk = SimDisk::new();
        disk.write(DiskOp::HardState(HardState { term: Term(1), vote: None })).unwrap();
        disk.write(DiskOp::HardState(HardState { term: Term(4), vote: Some(NodeId(2)) })).unwrap();
        disk.write(DiskOp::Append(vec![entry(1, 4)])).unwrap();
        disk.request_sync(0, false);
        disk.poll_sync(0);
        let newest = disk.durable.hard_state_seq;
        disk.durable.slots[(newest % 2) as usize].as_mut().unwrap().checksum ^= 1;
        let recovered = disk.recover(Mutation::None);
        assert!(recovered.damaged);
        assert_eq!(recovered.hard_state, HardState { term: Term(4), vote: None });
    }

    #[test]
    fn a_wiped_disk_that_crashes_during_its_first_start_is_damaged_again() {
        let mut rng = SmallRng::seed_from_u64(11);
        let mut disk = SimDisk::new();
        disk.write(DiskOp::Append(vec![entry(1, 1)])).unwrap();
        disk.request_sync(0, false);
        disk.poll_sync(0);
        disk.wipe();
        assert!(disk.recover(Mutation::None).damaged);
        // The first start writes its hard state and crashes before any sync completes.
        disk.write(DiskOp::HardState(HardState { term: Term(2), vote: None })).unwrap();
        disk.crash(&mut rng, Tear::Any);
        let again = disk.recover(Mutation::None);
        assert!(again.damaged, "the damaged mark was durable before the first start ran");
        assert!(again.entries.is_empty());
    }

    #[test]
    fn bit_flip_in_the_middle_of_the_log_is_damage_and_cuts_the_log_before_it() {
        let mut rng = SmallRng::seed_from_u64(3);
        let mut disk = SimDisk::new();
        disk.write(DiskOp::Append((1..=3).map(|i| entry(i, 1)).collect())).unwrap();
        disk.request_sync(0, false);
        disk.poll_sync(0);
        disk.crash(&mut rng, Tear::None);
        // Rot in record 2 of 3.
        disk.durable.records[1].checksum ^= 1 << 7;
        let recovered = disk.recover(Mutation::None);
        assert!(recovered.damaged);
        assert_eq!(recovered.entries, vec![entry(1, 1)]);
        // Recovery cut the log durably and marked it damaged: the next restart is still
        // damaged (until a repair is durable) but loses nothing more.
        let again = disk.recover(Mutation::None);
        assert!(again.damaged);
        assert_eq!(again.entries, recovered.entries);
    }

    #[test]
    fn wiped_disk_recovers_empty_and_damaged() {
        let mut disk = SimDisk::new();
        disk.write(DiskOp::HardState(HardState { term: Term(3), vote: Some(NodeId(1)) })).unwrap();
        disk.request_sync(0, false);
        disk.poll_sync(0);
        disk.wipe();
        let recovered = disk.recover(Mutation::None);
        assert!(recovered.damaged);
        assert_eq!(recovered.hard_state, HardState::default());
        assert!(recovered.entries.is_empty());
    }

    #[test]
    fn hard_state_alternates_slots_and_recovers_the_newest() {
        let mut rng = SmallRng::seed_from_u64(4);
        let mut disk = SimDisk::new();
        for term in 1..=3 {
            disk.write(DiskOp::HardState(HardState { term: Term(term), vote: None })).unwrap();
        }
        disk.request_sync(0, false);
        disk.poll_sync(0);
        disk.crash(&mut rng, Tear::None);
        let recovered = disk.recover(Mutation::None);
        assert_eq!(recovered.hard_state.term, Term(3));
        assert!(!recovered.damaged);
    }

    #[test]
    fn damaged_mark_persists_until_the_repair_is_durable() {
        let mut rng = SmallRng::seed_from_u64(5);
        let mut disk = SimDisk::new();
        disk.wipe();
        assert!(disk.recover(Mutation::None).damaged);
        disk.crash(&mut rng, Tear::None);
        assert!(disk.recover(Mutation::None).damaged, "still damaged: no repair written");
        disk.write(DiskOp::ClearDamaged).unwrap();
        disk.crash(&mut rng, Tear::None);
        // The unsynced repair may or may not have landed; once synced it must have.
        disk.recover(Mutation::None);
        disk.write(DiskOp::ClearDamaged).unwrap();
        disk.request_sync(0, false);
        disk.poll_sync(0);
        disk.crash(&mut rng, Tear::None);
        assert!(!disk.recover(Mutation::None).damaged);
    }

    #[test]
    fn retention_moves_the_start_and_keeps_the_membership_it_deleted() {
        let mut disk = SimDisk::new();
        let members = Membership { voters: vec![NodeId(1), NodeId(2)], learners: vec![] };
        let mut change = entry(2, 1);
        change.kind = EntryKind::Membership(members.clone());
        disk.write(DiskOp::Append(vec![entry(1, 1), change, entry(3, 2)])).unwrap();
        disk.write(DiskOp::AdvanceStart { start: LogIndex(3) }).unwrap();
        assert!(disk.write(DiskOp::AdvanceStart { start: LogIndex(3) }).is_err());
        disk.request_sync(0, false);
        disk.poll_sync(0);
        let recovered = disk.recover(Mutation::None);
        assert_eq!(recovered.log_start, LogIndex(3));
        assert_eq!(recovered.start_prev_term, Term(1));
        assert_eq!(recovered.entries, vec![entry(3, 2)]);
        assert_eq!(recovered.base_membership, Some(members));
    }

    #[test]
    fn failed_sync_is_reported_and_makes_nothing_durable() {
        let mut disk = SimDisk::new();
        disk.write(DiskOp::Append(vec![entry(1, 1)])).unwrap();
        disk.request_sync(3, true);
        assert_eq!(disk.poll_sync(3), Some(SyncOutcome::Failed));
        assert_eq!(disk.durable_last().0, LogIndex(0));
    }

    #[test]
    fn a_full_disk_refuses_what_allocates_never_hard_state_and_stays_full_across_a_crash() {
        let mut rng = SmallRng::seed_from_u64(12);
        let mut disk = SimDisk::new();
        disk.write(DiskOp::Append((1..=3).map(|i| entry(i, 1)).collect())).unwrap();
        disk.fill_until(50, 10);
        disk.fill_until(60, 20);
        assert_eq!(disk.stats.full_events, 1, "one span, extended");
        assert!(disk.full_at(59) && !disk.full_at(60));
        assert!(disk.needs_space(&DiskOp::Append(vec![entry(4, 1)])));
        let members = Membership { voters: vec![NodeId(1)], learners: vec![] };
        let reset = DiskOp::Reset { start: LogIndex(9), prev_term: Term(1), membership: members };
        assert!(disk.needs_space(&reset));
        // A truncation of the whole log is a reset in the engine; a partial one is not.
        assert!(disk.needs_space(&DiskOp::Truncate { from: LogIndex(1) }));
        assert!(!disk.needs_space(&DiskOp::Truncate { from: LogIndex(2) }));
        // Votes need no space: the hard-state file is overwritten in place.
        assert!(!disk.needs_space(&DiskOp::HardState(HardState::default())));
        assert!(!disk.needs_space(&DiskOp::AdvanceStart { start: LogIndex(2) }));
        assert!(!disk.needs_space(&DiskOp::ClearDamaged));
        disk.crash(&mut rng, Tear::None);
        assert!(disk.full_at(30), "the disk stays full after the process died");
        assert!(disk.opens_when_full(), "a log whose files exist opens on a full disk");
        disk.wipe();
        assert!(disk.full_at(30), "a wipe frees nothing the span did not");
        assert!(!disk.opens_when_full(), "a wiped disk needs a new log: refused while full");
        disk.recover(Mutation::None);
        disk.fill_until(0, 30);
        assert!(!disk.full_at(30), "space is back");
    }

    #[test]
    fn append_that_skips_an_index_is_refused() {
        let mut disk = SimDisk::new();
        assert!(disk.write(DiskOp::Append(vec![entry(2, 1)])).is_err());
    }
}
