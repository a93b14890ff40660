//! The final check, after every node was restarted and every partition converged: read each
//! partition's committed log from every replica (`ReplicaCommitted`, from offset 0) and check
//! that every acknowledged record is at its acknowledged offset, byte-identical, on every
//! replica (`lost`: on none of at least two replicas read; `unverified`: on none of the one
//! replica that could be read; `missing`: on some but not all); no value
//! appears twice; every value is one a writer sent (byte for byte: corrupt
//! bytes count as never sent); and the replicas' committed logs are identical (same batches:
//! Raft index and header crc, which chains over every earlier batch).

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use ringlog_engine::decode_batch;
use ringlog_net::client::{next_offset, Client};
use ringlog_net::limits::BATCH_SIZE_MAX;
use ringlog_net::protocol::Consistency;
use ringlog_net::{Offset, PartitionId};

use super::payload::{self, RecordId};
use super::rig::Rig;
use super::writers::WriterLog;
use super::Report;

const FETCH_BYTES: u32 = 1 << 20;
const FETCH_ATTEMPTS: u32 = 10;
/// Bound on fetch rounds per replica (each returns at least one batch or ends the read).
const FETCH_ROUNDS_MAX: u32 = 10_000_000;

/// One replica's committed log: its batches (index, header crc) and, per offset from 0, the
/// record's id (`None`: not a value this soak sent, or corrupt).
#[derive(Debug, Default)]
struct ReplicaLog {
    batches: Vec<(u64, u32)>,
    records: Vec<Option<RecordId>>,
}

pub fn check(rig: &Rig, seed: u64, logs: &[WriterLog], report: &mut Report) {
    for partition in rig.partitions() {
        check_partition(rig, seed, partition, logs, report);
    }
}

fn check_partition(
    rig: &Rig,
    seed: u64,
    partition: PartitionId,
    logs: &[WriterLog],
    report: &mut Report,
) {
    let p = partition.0;
    let mut acks: Vec<(u64, u32, u64)> = Vec::new();
    for log in logs.iter().filter(|l| l.partition == p) {
        for ack in &log.acks {
            for i in 0..u64::from(ack.count) {
                acks.push((ack.base_offset + i, log.writer, ack.first_seq + i));
            }
        }
    }
    acks.sort_unstable();
    for pair in acks.windows(2).filter(|w| w[0].0 == w[1].0) {
        report.anomaly_detail(format!(
            "{partition}: offset {} acknowledged twice: {pair:?}",
            pair[0].0
        ));
    }
    // Per acknowledged record: on how many readable replicas it is where it was acked.
    let mut present: Vec<u8> = vec![0; acks.len()];
    let mut readable = 0u8;
    let mut never_sent: BTreeSet<u64> = BTreeSet::new();
    let mut duplicated: BTreeSet<(u32, u64)> = BTreeSet::new();
    let mut reference: Option<(u32, Vec<(u64, u32)>)> = None;
    let mut divergent = false;
    for id in rig.ids() {
        let addr = rig.cluster.nodes[&id].client;
        let replica = match read_replica(&rig.client, addr, partition, seed, report) {
            Ok(replica) => replica,
            Err(why) => {
                report.anomalies.unreadable += 1;
                report.anomaly_detail(format!("{partition}: node {id} unreadable: {why}"));
                continue;
            }
        };
        let mut seen: Vec<Vec<bool>> =
            logs.iter().map(|l| vec![false; l.next_seq as usize]).collect();
        for (offset, record) in replica.records.iter().enumerate() {
            let offset = offset as u64;
            let sent = record.filter(|r| {
                r.partition == p && logs.get(r.writer as usize).is_some_and(|l| r.seq < l.next_seq)
            });
            let Some(r) = sent else {
                if never_sent.insert(offset) {
                    report.anomaly_detail(format!(
                        "{partition}: node {id} offset {offset}: a value never sent ({record:?})"
                    ));
                }
                continue;
            };
            let flag = &mut seen[r.writer as usize][r.seq as usize];
            if *flag && duplicated.insert((r.writer, r.seq)) {
                report.anomaly_detail(format!(
                    "{partition}: node {id}: writer {} seq {} appears twice (again at {offset})",
                    r.writer, r.seq
                ));
            }
            *flag = true;
        }
        readable += 1;
        let mut missing_here = 0u64;
        for (i, (offset, writer, seq)) in acks.iter().enumerate() {
            let found = replica.records.get(*offset as usize).copied().flatten();
            let expected = RecordId { partition: p, writer: *writer, seq: *seq };
            if found == Some(expected) {
                present[i] += 1;
                continue;
            }
            missing_here += 1;
            if missing_here <= 3 {
                report.anomaly_detail(format!(
                    "{partition}: node {id}: acknowledged writer {writer} seq {seq} at offset {offset} not there (found {found:?})"
                ));
            }
        }
        if missing_here > 0 {
            report.anomaly_detail(format!(
                "{partition}: node {id} misses {missing_here} acknowledged records"
            ));
        }
        match &reference {
            None => reference = Some((id, replica.batches)),
            Some((rid, batches)) => {
                if let Some(why) = compare(batches, &replica.batches) {
                    divergent = true;
                    report
                        .anomaly_detail(format!("{partition}: nodes {rid} and {id} differ: {why}"));
                }
            }
        }
    }
    // On none of a majority (2 of 3) of replicas: lost. With fewer replicas readable, an
    // absent record may sit on an unreadable one: unverified.
    let absent = present.iter().filter(|n| **n == 0).count();
    let (lost, unverified) = if readable >= 2 { (absent, 0) } else { (0, absent) };
    let missing = present.iter().filter(|n| **n > 0 && **n < readable).count();
    let a = &mut report.anomalies;
    a.lost += lost as u64;
    a.unverified += unverified as u64;
    a.missing += missing as u64;
    a.never_sent += never_sent.len() as u64;
    a.duplicated += duplicated.len() as u64;
    a.divergent += u64::from(divergent);
    eprintln!(
        "nemesis check {partition}: {} acknowledged records, {} batches on node {:?}, {readable} \
         replicas read; lost {lost}, unverified {unverified}, missing on some replica {missing}, \
         never sent {}, \
         duplicated {}, divergent {divergent}",
        acks.len(),
        reference.as_ref().map_or(0, |r| r.1.len()),
        reference.as_ref().map(|r| r.0),
        never_sent.len(),
        duplicated.len()
    );
}

/// Where two replicas' batch lists first differ (`None`: identical).
fn compare(a: &[(u64, u32)], b: &[(u64, u32)]) -> Option<String> {
    if let Some(i) = a.iter().zip(b).position(|(x, y)| x != y) {
        return Some(format!("batch #{i}: (index, crc) {:?} vs {:?}", a[i], b[i]));
    }
    (a.len() != b.len()).then(|| format!("{} vs {} committed batches", a.len(), b.len()))
}

/// Reads `partition`'s committed log from the node at `addr`, from offset 0 to its commit.
fn read_replica(
    client: &Client,
    addr: SocketAddr,
    partition: PartitionId,
    seed: u64,
    report: &mut Report,
) -> Result<ReplicaLog, String> {
    let view = client.node(addr);
    let mut log = ReplicaLog::default();
    let mut offset = Offset(0);
    let mut last_index = 0u64;
    for _ in 0..FETCH_ROUNDS_MAX {
        let response = fetch_retrying(FETCH_ATTEMPTS, || {
            view.fetch(
                partition,
                offset,
                FETCH_BYTES,
                Duration::ZERO,
                Consistency::ReplicaCommitted,
            )
        })?;
        if response.batches.is_empty() {
            return Ok(log);
        }
        let next =
            next_offset(&response.batches).ok_or("a fetch returned an invalid last batch")?;
        for batch in &response.batches {
            let view = match decode_batch(batch, BATCH_SIZE_MAX) {
                Ok(view) => view,
                Err(e) => {
                    report.anomalies.corrupt_returned += 1;
                    return Err(format!("a fetch at {offset:?} returned a corrupt batch: {e}"));
                }
            };
            let header = view.header();
            let index = header.index().0;
            if index <= last_index {
                continue; // fetched again: a fetch returns the batch holding its offset
            }
            if last_index != 0 && index != last_index + 1 {
                return Err(format!("committed log skips from index {last_index} to {index}"));
            }
            last_index = index;
            let crc = u32::from_le_bytes([batch[8], batch[9], batch[10], batch[11]]);
            log.batches.push((index, crc));
            if header.is_control() {
                continue;
            }
            if header.base_offset().0 != log.records.len() as u64 {
                return Err(format!(
                    "batch {index} starts at offset {} after {} records",
                    header.base_offset().0,
                    log.records.len()
                ));
            }
            log.records.extend(view.records().map(|value| payload::parse(seed, value)));
        }
        if next <= offset || next >= response.commit {
            return Ok(log);
        }
        offset = next;
    }
    Err(format!("more than {FETCH_ROUNDS_MAX} fetch rounds"))
}

fn fetch_retrying<T, E: std::fmt::Display>(
    attempts: u32,
    mut call: impl FnMut() -> Result<T, E>,
) -> Result<T, String> {
    let mut last = String::new();
    for _ in 0..attempts {
        match call() {
            Ok(value) => return Ok(value),
            Err(e) => last = e.to_string(),
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Err(format!("fetch failed {attempts} times: {last}"))
}

#[cfg(test)]
mod tests {
    use super::compare;

    #[test]
    fn replicas_compare_equal_only_with_the_same_batches() {
        let a = [(1, 10), (2, 20), (3, 30)];
        assert_eq!(compare(&a, &a), None);
        assert!(compare(&a, &a[..2]).is_some(), "a shorter committed log differs");
        let b = [(1, 10), (2, 21), (3, 30)];
        assert!(compare(&a, &b).unwrap().contains("batch #1"));
    }
}
