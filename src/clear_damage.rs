//! `ringlog clear-damage --config FILE --partition P [--accept-data-loss]`: the operator's way
//! out when a majority of a partition's group is damaged at once.
//!
//! A damaged replica (docs/format.md#recovery-outcomes) neither votes nor counts toward a
//! quorum until a leader repairs it. If a majority of a group is damaged at the same time —
//! a full-cluster power loss that tore the last flushes of most replicas, say; outside the
//! fault model, which excludes losing a majority's disks — no leader can be elected and the
//! group waits for ever. No automatic way out is safe: records acknowledged in the dropped
//! bytes may be whole on no replica. This command, run on a **stopped** node, clears one
//! replica's damage so that it votes again:
//!
//! - it opens the partition's log (recovery runs as at a start; the log's lock refuses a
//!   running node) and prints its last (term, index): compare it across the damaged replicas
//!   and clear the ones with the most complete logs, only as many as make a majority with the
//!   undamaged ones — Raft then elects the most up-to-date of the voters;
//! - with `--accept-data-loss` it rewrites the hard state with both slots valid at
//!   `max(term, last log term)` and no vote (so neither a damaged slot nor an old term marks it
//!   damaged again), then removes `DAMAGED` (directory fsynced). Without the flag it only
//!   prints what it found and exits 1.
//!
//! Exit status: 0 when cleared (or nothing was damaged), 1 when refused or on an error.

#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use ringlog_engine::runtime::{spawn_executor, ExecutorSpec};
use ringlog_engine::{HardStateError, HardStateStore, Log, LogIndex, Term};
use ringlog_node::config::NodeConfig;

/// Name of the damaged mark in a partition directory (docs/format.md).
const DAMAGED_FILE: &str = "DAMAGED";

/// Arguments of `ringlog clear-damage`.
#[derive(Debug, Clone, Args)]
pub struct ClearDamageArgs {
    /// The node's configuration file (its data dir and storage settings are used).
    #[arg(long, value_name = "FILE")]
    pub config: PathBuf,
    /// The partition whose replica on this node is to vote again.
    #[arg(long, value_name = "P")]
    pub partition: u32,
    /// Clear the damage, accepting that records acknowledged in what this replica lost may be
    /// lost for good. Without it, only report.
    #[arg(long)]
    pub accept_data_loss: bool,
}

/// What the replica holds, as recovery sees it.
#[derive(Debug)]
struct Found {
    last_index: LogIndex,
    last_term: Term,
    term: Term,
    cleared: bool,
}

/// Runs the command (see the module docs).
pub fn run(args: &ClearDamageArgs) -> anyhow::Result<ExitCode> {
    let config = NodeConfig::load(&args.config)?.config;
    anyhow::ensure!(
        u64::from(args.partition) < config.partitions,
        "partition {} does not exist (partitions: {})",
        args.partition,
        config.partitions
    );
    let dir = config.data_dir.join(args.partition.to_string());
    anyhow::ensure!(dir.is_dir(), "no partition directory {dir:?}");
    if !dir.join(DAMAGED_FILE).exists() {
        println!("partition {}: not marked damaged ({dir:?}); nothing to do", args.partition);
        return Ok(ExitCode::SUCCESS);
    }
    let found = inspect_and_clear(&config, dir.clone(), args.accept_data_loss)?;
    println!(
        "partition {}: damaged replica at {dir:?}: log ends at index {} (term {}), hard-state \
         term {}",
        args.partition, found.last_index.0, found.last_term.0, found.term.0
    );
    if !found.cleared {
        eprintln!(
            "not cleared: records acknowledged in what this replica lost may exist nowhere \
             else. Compare the (term, index) above across the damaged replicas, clear only the \
             most complete ones needed for a majority, and rerun with --accept-data-loss."
        );
        return Ok(ExitCode::FAILURE);
    }
    remove_damaged_mark(&dir)?;
    println!(
        "partition {}: damage cleared; the replica votes again from its next start (hard state \
         term {}, no vote)",
        args.partition, found.term.0
    );
    Ok(ExitCode::SUCCESS)
}

/// Opens the log and the hard state on an executor of its own; with `clear`, rewrites the hard
/// state (both slots) at `max(term, last log term)` with no vote.
fn inspect_and_clear(config: &NodeConfig, dir: PathBuf, clear: bool) -> anyhow::Result<Found> {
    let log_config = config.to_log_config();
    let spec = ExecutorSpec {
        name: "ringlog-clear-damage".into(),
        cpu: None,
        io_memory_bytes: config.io_memory as usize,
        spin: false,
    };
    let (tx, rx) = crossbeam_channel::bounded(1);
    let thread = spawn_executor(spec, move || async move {
        let _ = tx.send(inspect_on_executor(dir, log_config, clear).await);
    })
    .map_err(|e| anyhow::anyhow!("cannot start an executor: {e}"))?;
    let result = rx.recv().map_err(|_| anyhow::anyhow!("the executor ended without an answer"));
    let _ = thread.join();
    result?
}

async fn inspect_on_executor(
    dir: PathBuf,
    log_config: ringlog_engine::LogConfig,
    clear: bool,
) -> anyhow::Result<Found> {
    let (log, report) = Log::open(&dir, log_config).await?;
    let (last_index, last_term) = (log.last_index(), log.last_term());
    log.close().await?;
    if report.lost_possibly_acknowledged() {
        println!("recovery: {report:?}");
    }
    let store = match HardStateStore::open(&dir).await {
        Ok(store) => Some(store),
        Err(HardStateError::Corrupt { .. }) => None,
        Err(e) => return Err(e.into()),
    };
    let loaded = match &store {
        Some(store) => store.load().await.map(|s| s.term).unwrap_or(Term(0)),
        None => Term(0),
    };
    let term = loaded.max(last_term);
    if !clear {
        return Ok(Found { last_index, last_term, term, cleared: false });
    }
    let store = match store {
        Some(store) => store,
        None => {
            std::fs::remove_file(dir.join(ringlog_engine::hard_state::HARD_STATE_FILE))?;
            HardStateStore::open(&dir).await?
        }
    };
    // Twice: both slots then hold this state, so no damaged slot is left to find.
    store.store(term, None).await?;
    store.store(term, None).await?;
    Ok(Found { last_index, last_term, term, cleared: true })
}

fn remove_damaged_mark(dir: &std::path::Path) -> anyhow::Result<()> {
    std::fs::remove_file(dir.join(DAMAGED_FILE))?;
    std::fs::File::open(dir)?.sync_all()?;
    Ok(())
}
