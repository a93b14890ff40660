//! docs/format.md "Recovery outcomes", simulator side: for every row of the table (parsed from
//! the doc at test time), the row's fault is built in the simulator's disk
//! (`ringlog_sim::disk::SimDisk`) and what recovery restarts the node with — the log's last
//! index, damaged or not, the hard state — must be what the row's cells say. The engine side
//! (real files, the node's damage rule) is ringlog-node's
//! `every_recovery_outcome_row_holds_for_real_files`, keyed on the same rows.

use bytes::Bytes;
use rand::rngs::SmallRng;
use rand::SeedableRng;

use ringlog_raft::message::{Entry, EntryKind};
use ringlog_raft::types::{HardState, LogIndex, NodeId, Term};
use ringlog_sim::disk::{DiskOp, RecoveredImage, SimDisk, Tear};
use ringlog_sim::recovery_table::{self, LogFacts, Row};
use ringlog_sim::Mutation;

const CLEAN_END: &str = "a clean end";
const BYTES_AFTER_TAIL: &str = "non-zero bytes after the last valid batch of the tail";
const INVALID_THEN_VALID: &str = "an invalid batch followed by valid data";
const BAD_SLOT: &str = "a hard-state file with any bad slot, even if the other is valid";
const EMPTY_DIR: &str = "an empty or half-created partition directory";
const DAMAGED_MARK: &str = "the persistent damaged mark";
const CASES: [&str; 6] =
    [CLEAN_END, BYTES_AFTER_TAIL, INVALID_THEN_VALID, BAD_SLOT, EMPTY_DIR, DAMAGED_MARK];

fn rows() -> Vec<Row> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/format.md");
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {path}: {e}"));
    let rows = recovery_table::parse(&text).unwrap_or_else(|e| panic!("{path}: {e}"));
    recovery_table::check_cases(&rows, &CASES).unwrap_or_else(|e| panic!("{e}"));
    rows
}

fn entry(index: u64, term: u64) -> Entry {
    Entry {
        term: Term(term),
        index: LogIndex(index),
        kind: EntryKind::Normal,
        payload: Bytes::from(format!("p{index}")),
    }
}

/// The older slot holds (1, no vote), the newest (2, voted for n2); the log 1..=4 (terms 1,
/// 1, 2, 2); all of it durable. Returns the disk and the newest slot as (term, vote).
fn synced_disk() -> SimDisk {
    let mut disk = SimDisk::new();
    disk.write(DiskOp::HardState(HardState { term: Term(1), vote: None })).unwrap();
    disk.write(DiskOp::Append(vec![entry(1, 1), entry(2, 1)])).unwrap();
    disk.write(DiskOp::HardState(HardState { term: Term(2), vote: Some(NodeId(2)) })).unwrap();
    disk.write(DiskOp::Append(vec![entry(3, 2), entry(4, 2)])).unwrap();
    sync(&mut disk);
    disk
}

const OLDER_SLOT: (u64, Option<u32>) = (1, None);
const NEWEST_SLOT: (u64, Option<u32>) = (2, Some(2));

fn sync(disk: &mut SimDisk) {
    disk.request_sync(0, false);
    while disk.poll_sync(0).is_some() {}
}

/// One case: a disk with the row's fault, what the case knows of it, and a name.
struct Case {
    name: &'static str,
    disk: SimDisk,
    facts: LogFacts,
    /// The newest hard-state slot still valid on the disk, as (term, vote).
    newest_valid: Option<(u64, Option<u32>)>,
}

fn durable_facts(disk: &SimDisk, first_bad: Option<u64>) -> LogFacts {
    LogFacts {
        written_last: disk.durable_last().0 .0,
        first_bad,
        start_prev: disk.durable_log_start().0 - 1,
    }
}

fn cases(key: &str) -> Vec<Case> {
    match key {
        CLEAN_END => {
            // A crash lands a prefix of the unsynced writes, each whole.
            let mut disk = synced_disk();
            disk.write(DiskOp::Append(vec![entry(5, 2), entry(6, 2)])).unwrap();
            disk.crash(&mut SmallRng::seed_from_u64(1), Tear::None);
            let facts = durable_facts(&disk, None);
            vec![Case { name: "crash, whole writes", disk, facts, newest_valid: Some(NEWEST_SLOT) }]
        }
        BYTES_AFTER_TAIL => {
            let mut flipped = synced_disk();
            assert!(flipped.flip_record_at_rest(LogIndex(4)));
            let flip_facts = durable_facts(&flipped, Some(4));
            // A crash that tears the last write that landed (an append of 5..=6).
            let torn = (0..64)
                .find_map(|seed| {
                    let mut disk = synced_disk();
                    disk.write(DiskOp::Append(vec![entry(5, 2), entry(6, 2)])).unwrap();
                    disk.crash(&mut SmallRng::seed_from_u64(seed), Tear::Any);
                    (disk.stats.torn_writes == 1).then_some(disk)
                })
                .expect("some seed tears the append");
            let torn_at = torn.durable_last().0 .0;
            let torn_facts = durable_facts(&torn, Some(torn_at));
            vec![
                Case {
                    name: "flip in the last durable record",
                    disk: flipped,
                    facts: flip_facts,
                    newest_valid: Some(NEWEST_SLOT),
                },
                Case {
                    name: "torn last write",
                    disk: torn,
                    facts: torn_facts,
                    newest_valid: Some(NEWEST_SLOT),
                },
            ]
        }
        INVALID_THEN_VALID => {
            let mut disk = synced_disk();
            assert!(disk.flip_record_at_rest(LogIndex(2)));
            let facts = durable_facts(&disk, Some(2));
            vec![Case {
                name: "flip in record 2 of 4",
                disk,
                facts,
                newest_valid: Some(NEWEST_SLOT),
            }]
        }
        BAD_SLOT => {
            let mut newest = synced_disk();
            assert!(newest.flip_slot_at_rest(true));
            let newest_facts = durable_facts(&newest, None);
            let mut older = synced_disk();
            assert!(older.flip_slot_at_rest(false));
            let older_facts = durable_facts(&older, None);
            vec![
                Case {
                    name: "flip in the newest slot",
                    disk: newest,
                    facts: newest_facts,
                    newest_valid: Some(OLDER_SLOT),
                },
                Case {
                    name: "flip in the older slot",
                    disk: older,
                    facts: older_facts,
                    newest_valid: Some(NEWEST_SLOT),
                },
            ]
        }
        EMPTY_DIR => {
            let mut wiped = synced_disk();
            wiped.wipe();
            let wiped_facts = durable_facts(&wiped, None);
            // A crash during the first start after the wipe, before it wrote anything of its
            // own (its recovery ran: the mark is durable first).
            let mut half = synced_disk();
            half.wipe();
            half.recover(Mutation::None);
            half.crash(&mut SmallRng::seed_from_u64(2), Tear::None);
            let half_facts = durable_facts(&half, None);
            let half_valid = half.durable_hard_state();
            vec![
                Case { name: "wiped", disk: wiped, facts: wiped_facts, newest_valid: None },
                Case {
                    name: "crash during the first start after a wipe",
                    disk: half,
                    facts: half_facts,
                    newest_valid: Some((half_valid.term.0, half_valid.vote.map(|v| v.0))),
                },
            ]
        }
        DAMAGED_MARK => {
            // An earlier recovery found damage (a flip in record 4) and set the mark; no
            // repair since; the node restarts again.
            let mut disk = synced_disk();
            assert!(disk.flip_record_at_rest(LogIndex(4)));
            let first = disk.recover(Mutation::None);
            assert!(first.damaged);
            disk.crash(&mut SmallRng::seed_from_u64(3), Tear::None);
            assert!(disk.damaged_mark_durable());
            let facts = durable_facts(&disk, None);
            let valid = disk.durable_hard_state();
            vec![Case {
                name: "mark from an earlier recovery",
                disk,
                facts,
                newest_valid: Some((valid.term.0, valid.vote.map(|v| v.0))),
            }]
        }
        other => panic!("no case for `{other}`"),
    }
}

fn last_of(image: &RecoveredImage) -> (u64, u64) {
    match image.entries.last() {
        Some(e) => (e.index.0, e.term.0),
        None => (image.log_start.0 - 1, image.start_prev_term.0),
    }
}

#[test]
fn every_recovery_outcome_row_holds_in_the_simulated_disk() {
    let rows = rows();
    let mut failures = Vec::new();
    let mut checked = 0;
    for row in &rows {
        for mut case in cases(&row.key) {
            let expected_last = row
                .log
                .expected_last(case.facts)
                .unwrap_or_else(|e| panic!("row `{}`, case {}: {e}", row.key, case.name));
            let image = case.disk.recover(Mutation::None);
            let (last, last_term) = last_of(&image);
            let expected_hs = row.hard_state.expected(case.newest_valid, last_term);
            let got_hs = (image.hard_state.term.0, image.hard_state.vote.map(|v| v.0));
            let what = format!(
                "row `{}`, case {}: log last {last} (row: {:?} -> {expected_last}), damaged {} \
                 (row: {}), hard state {got_hs:?} (row: {:?} -> {expected_hs:?})",
                row.key, case.name, row.log, image.damaged, row.damaged, row.hard_state
            );
            if last != expected_last || image.damaged != row.damaged || got_hs != expected_hs {
                failures.push(what);
            }
            checked += 1;
        }
    }
    assert!(
        failures.is_empty(),
        "the simulator disagrees with the table:\n{}",
        failures.join("\n")
    );
    assert!(checked >= rows.len());
}
