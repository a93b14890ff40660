//! Shard worker: what runs on one shard's executor — opening its partitions, then serving the
//! commands foreign threads send through its mailbox.
//!
//! The command loop runs in a `Latency::Matters` task queue (design.md §5): appends are
//! stamped and enqueued synchronously, in mailbox order, so offsets of one partition follow
//! the order its commands arrived in; waiting for durability and fetches run as their own
//! tasks (in the same latency queue) so a slow read never holds up appends.
//!
//! Invariants: every command is answered exactly once (or its reply sender is dropped when the
//! shard ends); `Shutdown` closes every log (flushing what is queued) before it is answered,
//! and the loop ends right after it.

use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::time::Duration;

use crossbeam_channel::Sender;
use glommio::{Latency, Shares, TaskQueueHandle};

use crate::batch::Records;
use crate::log::Log;
use crate::runtime_mailbox::MailboxReceiver;
use crate::shard::{
    AppendAck, AppendCompletion, Durability, EngineConfig, EngineError, PartitionId, ShardStats,
    StartError,
};
use crate::shard_partition::{Fetched, Partition};
use crate::types::Offset;

/// How long the latency-sensitive queue may run before the executor checks other queues.
const COMMAND_QUEUE_LATENCY: Duration = Duration::from_millis(1);

/// Where an append's answer goes.
pub(crate) enum Completion {
    /// A blocked caller waits on this one-shot channel.
    Blocking(Sender<Result<AppendAck, EngineError>>),
    /// The caller's own channel, tagged with its token.
    Channel { token: u64, reply: Sender<AppendCompletion> },
    /// Runs on the shard's thread.
    Callback(Box<dyn FnOnce(Result<AppendAck, EngineError>) + Send>),
}

/// A task a foreign thread hands to a shard: called there with a partition's log, its future
/// runs on the shard's executor (see `EngineHandle::run_with_log`).
pub(crate) type LogTask = Box<dyn FnOnce(Rc<Log>) -> Pin<Box<dyn Future<Output = ()>>> + Send>;

/// A request from a foreign thread.
pub(crate) enum Command {
    Append {
        partition: PartitionId,
        records: Records,
        durability: Durability,
        completion: Completion,
    },
    Fetch {
        partition: PartitionId,
        offset: Offset,
        max_bytes: usize,
        reply: Sender<Result<Fetched, EngineError>>,
    },
    DurableOffset {
        partition: PartitionId,
        reply: Sender<Result<Offset, EngineError>>,
    },
    Stats {
        reply: Sender<ShardStats>,
    },
    RunWithLog {
        partition: PartitionId,
        task: LogTask,
        reply: Sender<Result<(), EngineError>>,
    },
    Shutdown {
        reply: Sender<Result<(), EngineError>>,
    },
}

/// What a shard thread starts with.
pub(crate) struct ShardSetup {
    pub shard: usize,
    pub partitions: Vec<PartitionId>,
    pub config: EngineConfig,
    pub receiver: MailboxReceiver<Command>,
    /// Receives `Ok` once every partition is open, or the first error.
    pub ready: Sender<Result<(), StartError>>,
}

/// The shard's partitions, indexed by `partition / shards`.
struct Partitions {
    shard: usize,
    shards: usize,
    list: Vec<(PartitionId, Rc<Partition>)>,
}

/// The future each shard executor runs: open, serve, close.
pub(crate) async fn shard_main(setup: ShardSetup) {
    let ShardSetup { shard, partitions, config, receiver, ready } = setup;
    let queue = glommio::executor().create_task_queue(
        Shares::default(),
        Latency::Matters(COMMAND_QUEUE_LATENCY),
        "ringlog-commands",
    );
    let opened = match open_partitions(shard, &partitions, &config).await {
        Ok(opened) => opened,
        Err(error) => {
            let _ = ready.send(Err(error));
            return;
        }
    };
    let _ = ready.send(Ok(()));
    let served = glommio::spawn_local_into(serve(opened, receiver, queue), queue);
    match served {
        Ok(task) => task.await,
        Err(error) => tracing::error!(shard, %error, "cannot spawn the command loop"),
    }
}

async fn open_partitions(
    shard: usize,
    partitions: &[PartitionId],
    config: &EngineConfig,
) -> Result<Partitions, StartError> {
    let mut list = Vec::with_capacity(partitions.len());
    for &partition in partitions {
        let dir = config.partition_dir(partition);
        let faults = config.faults.clone();
        match Partition::open(shard, partition, dir, config.log.clone(), faults).await {
            Ok(opened) => list.push((partition, Rc::new(opened))),
            Err(source) => {
                for (_, opened) in list {
                    let _ = opened.close().await;
                }
                return Err(StartError::Open { partition: partition.0, source });
            }
        }
    }
    Ok(Partitions { shard, shards: config.shards, list })
}

async fn serve(partitions: Partitions, receiver: MailboxReceiver<Command>, queue: TaskQueueHandle) {
    let shard = partitions.shard;
    while let Some(command) = receiver.recv().await {
        match command {
            Command::Append { partition, records, durability, completion } => {
                match partitions.get(partition) {
                    Ok(log) => append(log, records, durability, completion, queue),
                    Err(error) => completion.complete(Err(error)),
                }
            }
            Command::Fetch { partition, offset, max_bytes, reply } => {
                match partitions.get(partition) {
                    Ok(log) => {
                        let log = log.clone();
                        spawn(queue, shard, async move {
                            let result = log.fetch(offset, max_bytes).await;
                            let _ = reply.send(result);
                        });
                    }
                    Err(error) => {
                        let _ = reply.send(Err(error));
                    }
                }
            }
            Command::DurableOffset { partition, reply } => {
                let _ = reply.send(partitions.get(partition).and_then(|log| log.durable_offset()));
            }
            Command::Stats { reply } => {
                let _ = reply.send(ShardStats {
                    shard,
                    partitions: partitions
                        .list
                        .iter()
                        .map(|(id, log)| (*id, log.stats()))
                        .collect(),
                    queued_commands: 0,
                });
            }
            Command::RunWithLog { partition, task, reply } => {
                let spawned = partitions.get(partition).and_then(|p| p.log()).map(|log| {
                    spawn(queue, shard, task(log));
                });
                let _ = reply.send(spawned);
            }
            Command::Shutdown { reply } => {
                let _ = reply.send(close_all(&partitions).await);
                return;
            }
        }
        // A full mailbox is drained without awaiting anything: let glommio preempt this
        // task when its timer says so, so queued flush IO reaches the kernel meanwhile.
        glommio::yield_if_needed().await;
    }
    // Every handle is gone without a shutdown: still flush and close the logs.
    if let Err(error) = close_all(&partitions).await {
        tracing::error!(shard, %error, "closing the logs after the last handle dropped");
    }
}

fn append(
    log: &Rc<Partition>,
    records: Records,
    durability: Durability,
    completion: Completion,
    queue: TaskQueueHandle,
) {
    match durability {
        Durability::None => completion.complete(log.append(records).map(|(ack, _durable)| ack)),
        Durability::Durable => log.append_durable(records, completion, queue),
    }
}

async fn close_all(partitions: &Partitions) -> Result<(), EngineError> {
    let mut first_error = None;
    for (_, log) in &partitions.list {
        if let Err(error) = log.close().await {
            first_error.get_or_insert(error);
        }
    }
    first_error.map_or(Ok(()), Err)
}

fn spawn(
    queue: TaskQueueHandle,
    shard: usize,
    task: impl std::future::Future<Output = ()> + 'static,
) {
    match glommio::spawn_local_into(task, queue) {
        Ok(task) => {
            task.detach();
        }
        Err(error) => tracing::error!(shard, %error, "cannot spawn a shard task"),
    }
}

impl Partitions {
    fn get(&self, partition: PartitionId) -> Result<&Rc<Partition>, EngineError> {
        let slot = partition.0 as usize / self.shards;
        match self.list.get(slot) {
            Some((id, log)) if *id == partition => Ok(log),
            _ => Err(EngineError::Internal {
                shard: self.shard,
                reason: format!("{partition} is not owned by this shard"),
            }),
        }
    }
}

impl Completion {
    /// Delivers the answer; a caller that went away is not an error.
    pub(crate) fn complete(self, result: Result<AppendAck, EngineError>) {
        match self {
            Completion::Blocking(reply) => {
                let _ = reply.send(result);
            }
            Completion::Channel { token, reply } => {
                let _ = reply.send(AppendCompletion { token, result });
            }
            Completion::Callback(callback) => callback(result),
        }
    }
}
