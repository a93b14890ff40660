//! Shard main: what one shard's executor runs — open the replication core, bind the client
//! listener on `client.port + shard`, report readiness, then serve the commands foreign
//! threads (the `NodeHandle`) and the other shards' servers (forwarded requests) send through
//! the shard's mailbox, until a `Shutdown` command.
//!
//! Commands run in a `Latency::Matters` task queue, each as its own task spawned in mailbox
//! order, so a slow append or long-poll read never holds up the next command.
//!
//! Shutdown: the first `Shutdown { mode }` starts the stop sequence as a task — the client
//! server stops (graceful: stop accepting, answer in-flight requests, bounded) while
//! `ShardCore::hand_off(mode)` stops accepting peers and hands led partitions over, then
//! `ShardCore::shutdown(mode)` (flush, close) — while the loop
//! keeps taking commands, so that a later `Shutdown { Immediate }` can cut a graceful stop
//! short. Every `Shutdown` is answered once the sequence ended; then the loop ends.
//!
//! Invariants: readiness (or the start error) is reported exactly once, before any command is
//! taken; every command is answered exactly once, or its reply sender is dropped when the
//! shard ends (a dropped append callback runs with `ShuttingDown`, see [`Done`]).

#![forbid(unsafe_code)]

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use crossbeam_channel::Sender;
use glommio::net::TcpListener;
use glommio::{Latency, Shares, TaskQueueHandle};
use ringlog_engine::runtime_mailbox::{MailboxReceiver, MailboxSender};
use ringlog_net::protocol::{Acks, Consistency, GroupStatus, Request, Response};
use ringlog_net::{Offset, PartitionId};
use ringlog_raft::{LogIndex, MembershipChange, NodeId};

use super::api::{
    AppendOutcome, NodeAddresses, NodeError, NodeStartError, ReadOutcome, ShardSnapshot,
    ShutdownMode,
};
use super::core::{PartitionReplicator, ShardContext, ShardCore};
use super::server::{self, ClientServer, Event, Forwarding, ServerShared};
use super::{ExitState, Mailboxes};
use crate::config::NodeConfig;

/// What a `Backpressure` answer suggests as a retry delay when a mailbox is full.
pub const BACKPRESSURE_RETRY_MS: u32 = 10;
/// How long the shard's latency-sensitive command queue may run before others get the CPU.
const COMMAND_QUEUE_LATENCY: Duration = Duration::from_millis(1);

/// A typed one-shot reply to a foreign caller.
pub(crate) type Reply<T> = Sender<Result<T, NodeError>>;
/// Where a foreign caller waits for a [`Reply`].
pub(crate) type Answer<T> = crossbeam_channel::Receiver<Result<T, NodeError>>;
/// The completion of `NodeHandle::append_with_callback`.
pub(crate) type AppendCallback = Box<dyn FnOnce(Result<AppendOutcome, NodeError>) + Send>;

/// Where an append's outcome goes.
pub(crate) enum Done {
    /// A blocked caller waits on this channel.
    Blocking(Reply<AppendOutcome>),
    /// Runs on the shard's thread; run with `ShuttingDown` if dropped before completion.
    Callback(CallbackOnce),
}

/// An append callback that runs at most once: with the outcome, or — once the shard has taken
/// the command (`armed`) — with `ShuttingDown` when dropped unrun (the shard ended first). An
/// unarmed callback (the command never reached the shard) is dropped without running: the
/// caller got the error instead.
pub(crate) struct CallbackOnce {
    callback: Option<AppendCallback>,
    armed: bool,
}

/// A request from a foreign thread or another shard.
pub(crate) enum Command {
    Append {
        partition: PartitionId,
        acks: Acks,
        /// A client batch (zero stamp), within `batch_size_max`.
        batch: Bytes,
        done: Done,
    },
    Read {
        partition: PartitionId,
        offset: Offset,
        max_bytes: u32,
        consistency: Consistency,
        wait: Duration,
        reply: Reply<ReadOutcome>,
    },
    Status {
        partition: PartitionId,
        reply: Reply<GroupStatus>,
    },
    Transfer {
        partition: PartitionId,
        to: NodeId,
        reply: Reply<()>,
    },
    Membership {
        partition: PartitionId,
        change: MembershipChange,
        addresses: Option<NodeAddresses>,
        reply: Reply<LogIndex>,
    },
    Snapshot {
        reply: Reply<ShardSnapshot>,
    },
    /// A client request another shard's server received for a partition this shard owns.
    Serve {
        request: Request,
        reply: MailboxSender<Response>,
    },
    Shutdown {
        mode: ShutdownMode,
        reply: Reply<()>,
    },
    /// Does nothing: sent to wake a shard that owes an answer for too long (glommio 0.9.0 can
    /// lose the wake-up of a parked executor, also from its own blocking-pool thread, and an
    /// empty mailbox gives the watchdog nothing to kick).
    Nudge,
}

/// A started shard's bound addresses.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ShardReady {
    pub client: SocketAddr,
    pub peer: SocketAddr,
}

/// What a shard thread starts with.
pub(crate) struct ShardSetup {
    pub shard: usize,
    pub shards: usize,
    pub partitions: Vec<PartitionId>,
    pub config: Arc<NodeConfig>,
    pub receiver: MailboxReceiver<Command>,
    pub mailboxes: Arc<Mailboxes>,
    pub ready: Sender<Result<ShardReady, NodeStartError>>,
    pub exit: Arc<ExitState>,
    pub tls: Option<Arc<ringlog_net::tls::TlsConfig>>,
    /// `[admin]`: who may send admin requests to the client ports (crate::admin).
    pub admin: Arc<crate::admin::AdminPolicy>,
    pub balance_limit: Arc<super::balance::TransferLimit>,
}

/// The future each shard executor runs: open, listen, report, serve, stop.
pub(crate) async fn shard_main(setup: ShardSetup) {
    let ShardSetup {
        shard,
        shards,
        partitions,
        config,
        receiver,
        mailboxes,
        ready,
        exit,
        tls,
        admin,
        balance_limit,
    } = setup;
    let queue = glommio::executor().create_task_queue(
        Shares::default(),
        Latency::Matters(COMMAND_QUEUE_LATENCY),
        "ringlog-node-commands",
    );
    let context =
        ShardContext { shard, shards, config: config.clone(), partitions, tls, balance_limit };
    let core = match ShardCore::open(context).await {
        Ok(core) => core,
        Err(error) => {
            let _ = ready.send(Err(error));
            return;
        }
    };
    let client_addr = shard_addr(config.client_listen(), shard);
    let listener = match bind_exclusive(client_addr) {
        Ok(listener) => listener,
        Err(error) => {
            core.shutdown(ShutdownMode::Immediate).await;
            let reason = error.to_string();
            let _ = ready.send(Err(NodeStartError::Listen { addr: client_addr, reason }));
            return;
        }
    };
    let client = listener.local_addr().unwrap_or(client_addr);
    let shared =
        Rc::new(ServerShared::new(shard, shards, &config, client, core.clone(), mailboxes, admin));
    let server = ClientServer::start(listener, shared.clone(), queue);
    let _ = ready.send(Ok(ShardReady { client, peer: core.peer_addr() }));
    tracing::info!(shard, %client, peer = %core.peer_addr(), "shard ready");
    inject_panic(shard, queue);
    watch_fatal(shard, &core, exit, queue);
    serve_commands(&shared, &server, &receiver, queue).await;
    tracing::info!(shard, "shard stopped");
}

/// Binds the client listener, refusing an address another socket already listens on.
///
/// glommio's `TcpListener::bind` always sets SO_REUSEPORT, so a second node on the same port
/// would "succeed" and silently take half of the first one's connections. A plain probe bind
/// cannot tell that apart from harmless leftovers (a restarted node's orphaned FIN-WAIT
/// connections hold the port without SO_REUSEADDR), so after binding, the listening sockets
/// on the port are counted in `/proc/net/tcp{,6}`: more than ours is a conflict. Unreadable
/// procfs skips the check with a warning.
fn bind_exclusive(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let listener = TcpListener::bind(addr).map_err(std::io::Error::from)?;
    match listeners_on(addr) {
        Ok(inodes) if inodes.len() > 1 => {
            // glommio does not expose the listener's descriptor: every listener is named,
            // ours among them ("this process").
            let holders: Vec<String> = inodes.iter().map(|inode| describe_holder(*inode)).collect();
            Err(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                format!(
                    "another socket already listens on port {} (another node?); listeners: {}",
                    addr.port(),
                    holders.join("; ")
                ),
            ))
        }
        Ok(_) => Ok(listener),
        Err(error) => {
            tracing::warn!(%addr, %error, "cannot check for another listener on the port");
            Ok(listener)
        }
    }
}

/// Largest `/proc/net/tcp{,6}` read when looking for listeners.
const PROC_NET_TCP_BYTES_MAX: u64 = 64 << 20;
/// `st` of a listening socket in `/proc/net/tcp`.
const TCP_LISTEN_STATE: &str = "0A";
/// Most processes, and descriptors per process, looked at to name another listener's holder.
const HOLDER_SCAN_MAX: usize = 4096;

/// The socket inodes of the listening sockets on `addr`'s port whose address is `addr`'s or
/// the wildcard.
fn listeners_on(addr: SocketAddr) -> std::io::Result<Vec<u64>> {
    use std::io::Read;
    let path = if addr.is_ipv4() { "/proc/net/tcp" } else { "/proc/net/tcp6" };
    let mut text = String::new();
    std::fs::File::open(path)?.take(PROC_NET_TCP_BYTES_MAX).read_to_string(&mut text)?;
    let port = format!("{:04X}", addr.port());
    let ours = match addr {
        // The kernel prints an IPv4 address as its 32-bit value in host (little-endian) order.
        SocketAddr::V4(v4) => Some(format!("{:08X}", u32::from_le_bytes(v4.ip().octets()))),
        SocketAddr::V6(_) => None,
    };
    let inodes = text
        .lines()
        .skip(1)
        .filter_map(|line| {
            // sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
            let fields: Vec<&str> = line.split_whitespace().take(10).collect();
            let (local, state, inode) = (fields.get(1)?, fields.get(3)?, fields.get(9)?);
            let (ip, local_port) = local.split_once(':')?;
            let matches = *state == TCP_LISTEN_STATE
                && local_port == port
                && (ours.as_deref().is_none_or(|o| o == ip) || ip.bytes().all(|b| b == b'0'));
            matches.then(|| inode.parse().ok()).flatten()
        })
        .collect::<std::collections::BTreeSet<u64>>();
    // One socket can be listed twice: /proc/net/tcp is read in chunks while the kernel's
    // listening hash changes, and a socket seen in two chunks is printed twice (seen here:
    // a node refused its own port, naming itself twice). Count sockets, not lines.
    Ok(inodes.into_iter().collect())
}

#[cfg(test)]
/// The inode of the socket behind `fd` (`socket:[N]` in /proc/self/fd).
fn socket_inode(fd: std::os::fd::RawFd) -> Option<u64> {
    let link = std::fs::read_link(format!("/proc/self/fd/{fd}")).ok()?;
    parse_socket_link(&link.to_string_lossy())
}

#[cfg(test)]
fn parse_socket_link(link: &str) -> Option<u64> {
    link.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
}

/// "socket inode N held by pid P (comm, command line)" for the first process found holding
/// it (bounded scan of /proc), or "not found" (another network namespace, or gone).
fn describe_holder(inode: u64) -> String {
    let wanted = format!("socket:[{inode}]");
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return format!("socket inode {inode} (holder not found: /proc unreadable)");
    };
    for entry in procs.flatten().take(HOLDER_SCAN_MAX) {
        let name = entry.file_name();
        let Some(pid) = name.to_str().filter(|n| n.bytes().all(|b| b.is_ascii_digit())) else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else { continue };
        let held = fds
            .flatten()
            .take(HOLDER_SCAN_MAX)
            .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|l| l.to_string_lossy() == wanted));
        if held {
            let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
            let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
            let cmdline: String =
                String::from_utf8_lossy(&cmdline).replace('\0', " ").chars().take(200).collect();
            let me = if pid == std::process::id().to_string() { ", this process" } else { "" };
            return format!(
                "socket inode {inode} held by pid {pid}{me} ({}: {})",
                comm.trim(),
                cmdline.trim()
            );
        }
    }
    format!("socket inode {inode} (holder not found)")
}

/// `base` with its port moved up by `shard` (contract decision 2; validated in `start`).
pub(crate) fn shard_addr(base: Option<SocketAddr>, shard: usize) -> SocketAddr {
    let mut addr = base.expect("a validated config has client and peer addresses");
    addr.set_port(addr.port() + shard as u16);
    addr
}

/// Fault injection for tests of the panic rule (`ringlog serve` ends the whole process on a
/// panic in any thread): with `RINGLOG_FAULT_PANIC_SHARD_AFTER_MS=<ms>` in the environment,
/// shard 0 panics that long after it is ready. Unset in production; read once per start.
pub const PANIC_INJECTION_ENV: &str = "RINGLOG_FAULT_PANIC_SHARD_AFTER_MS";

fn inject_panic(shard: usize, queue: TaskQueueHandle) {
    let Some(after_ms) = std::env::var(PANIC_INJECTION_ENV).ok().and_then(|v| v.parse().ok())
    else {
        return;
    };
    if shard != 0 {
        return;
    }
    tracing::warn!(after_ms, "{PANIC_INJECTION_ENV} is set: shard 0 will panic");
    spawn(queue, async move {
        glommio::timer::sleep(std::time::Duration::from_millis(after_ms)).await;
        panic!("injected panic ({PANIC_INJECTION_ENV}={after_ms})");
    });
}

/// Reports the core's fatal error (a latched storage failure) to the node, which stops.
fn watch_fatal(shard: usize, core: &Rc<ShardCore>, exit: Arc<ExitState>, queue: TaskQueueHandle) {
    let core = Rc::downgrade(core);
    spawn(queue, async move {
        let Some(core) = core.upgrade() else { return };
        if let Some(error) = core.fatal().await {
            exit.report_fatal(shard, &error);
        }
    });
}

async fn serve_commands(
    shared: &Rc<ServerShared>,
    server: &Rc<ClientServer>,
    receiver: &MailboxReceiver<Command>,
    queue: TaskQueueHandle,
) {
    let stopped = Rc::new(Event::default());
    let stopping = Cell::new(false);
    let waiting: RefCell<Vec<Reply<()>>> = RefCell::new(Vec::new());
    loop {
        let next = futures_lite::future::or(async { receiver.recv().await.map(Some) }, async {
            stopped.wait().await;
            None
        })
        .await;
        let command = match next {
            Some(Some(command)) => command,
            // Every sender is gone (cannot happen while the node holds its mailboxes) or the
            // stop sequence finished.
            Some(None) | None => break,
        };
        match command {
            Command::Shutdown { mode, reply } => {
                waiting.borrow_mut().push(reply);
                if !stopping.replace(true) {
                    let (server, core, stopped) =
                        (server.clone(), shared.core.clone(), stopped.clone());
                    spawn(queue, async move {
                        // Both stop accepting first; the leadership hand-off runs while
                        // the server drains, so in-flight produces learn their outcome.
                        futures_lite::future::zip(server.stop(mode), core.hand_off(mode)).await;
                        core.shutdown(mode).await;
                        stopped.fire();
                    });
                } else if mode == ShutdownMode::Immediate {
                    // Cuts the graceful drain and hand-off short; the first task closes.
                    let (server, core) = (server.clone(), shared.core.clone());
                    spawn(queue, async move {
                        futures_lite::future::zip(
                            server.stop(ShutdownMode::Immediate),
                            core.hand_off(ShutdownMode::Immediate),
                        )
                        .await;
                    });
                }
            }
            command => run_command(shared, command, queue),
        }
    }
    // Commands that raced with the shutdown: answered, not left in the mailbox.
    while let Some(command) = receiver.try_recv() {
        refuse(command);
    }
    for reply in waiting.take() {
        let _ = reply.send(Ok(()));
    }
}

/// Answers a command the stopped shard will not run.
fn refuse(command: Command) {
    let error = NodeError::ShuttingDown;
    match command {
        Command::Append { mut done, .. } => {
            done.arm();
            done.complete(Err(error));
        }
        Command::Read { reply, .. } => drop(reply.send(Err(error))),
        Command::Status { reply, .. } => drop(reply.send(Err(error))),
        Command::Transfer { reply, .. } => drop(reply.send(Err(error))),
        Command::Membership { reply, .. } => drop(reply.send(Err(error))),
        Command::Snapshot { reply } => drop(reply.send(Err(error))),
        Command::Serve { reply, .. } => drop(reply.try_send(Response::Error(error.to_reply()))),
        Command::Shutdown { reply, .. } => drop(reply.send(Ok(()))),
        Command::Nudge => {}
    }
}

fn run_command(shared: &Rc<ServerShared>, command: Command, queue: TaskQueueHandle) {
    let shared = shared.clone();
    match command {
        Command::Append { partition, acks, batch, mut done } => spawn(queue, async move {
            done.arm();
            let result = match replica(&shared, partition) {
                Ok(replica) => replica.append(acks, batch).await,
                Err(error) => Err(error),
            };
            done.complete(result);
        }),
        Command::Read { partition, offset, max_bytes, consistency, wait, reply } => {
            spawn(queue, async move {
                let result = match replica(&shared, partition) {
                    Ok(replica) => replica.read(offset, max_bytes, consistency, wait).await,
                    Err(error) => Err(error),
                };
                let _ = reply.send(result);
            })
        }
        Command::Status { partition, reply } => {
            let _ = reply.send(replica(&shared, partition).map(|r| r.status()));
        }
        Command::Transfer { partition, to, reply } => {
            let _ = reply.send(replica(&shared, partition).and_then(|r| r.transfer_leadership(to)));
        }
        Command::Membership { partition, change, addresses, reply } => spawn(queue, async move {
            let result = match replica(&shared, partition) {
                Ok(replica) => replica.change_membership(change, addresses).await,
                Err(error) => Err(error),
            };
            let _ = reply.send(result);
        }),
        Command::Snapshot { reply } => {
            let _ = reply.send(Ok(shared.snapshot()));
        }
        Command::Serve { request, reply } => spawn(queue, async move {
            let response = server::handle(&shared, request, Forwarding::Never).await;
            let _ = reply.try_send(response);
        }),
        Command::Nudge => {}
        Command::Shutdown { .. } => unreachable!("handled by the command loop"),
    }
}

/// The replicator of `partition`, which this shard must own.
fn replica(
    shared: &ServerShared,
    partition: PartitionId,
) -> Result<Rc<PartitionReplicator>, NodeError> {
    shared
        .core
        .partition(partition)
        .ok_or(NodeError::UnknownPartition { partition, partitions: shared.partitions })
}

/// Spawns `task` into `queue`, detached.
pub(crate) fn spawn(queue: TaskQueueHandle, task: impl std::future::Future<Output = ()> + 'static) {
    match glommio::spawn_local_into(task, queue) {
        Ok(task) => {
            task.detach();
        }
        Err(error) => tracing::error!(%error, "cannot spawn a shard task"),
    }
}

impl Done {
    pub(crate) fn callback(callback: AppendCallback) -> Done {
        Done::Callback(CallbackOnce { callback: Some(callback), armed: false })
    }

    /// The shard has taken the command: from now on the callback runs exactly once.
    fn arm(&mut self) {
        if let Done::Callback(once) = self {
            once.armed = true;
        }
    }

    fn complete(self, result: Result<AppendOutcome, NodeError>) {
        match self {
            Done::Blocking(reply) => {
                let _ = reply.send(result);
            }
            Done::Callback(mut once) => {
                if let Some(callback) = once.callback.take() {
                    callback(result);
                }
            }
        }
    }
}

impl Drop for CallbackOnce {
    fn drop(&mut self) {
        if let Some(callback) = self.callback.take().filter(|_| self.armed) {
            callback(Err(NodeError::ShuttingDown));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    #[test]
    fn a_listener_is_found_on_its_port_and_its_holder_named() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let inode = socket_inode(listener.as_raw_fd()).expect("a socket has an inode");
        assert_eq!(listeners_on(addr).unwrap(), vec![inode]);
        let holder = describe_holder(inode);
        assert!(holder.contains(&format!("pid {}, this process", std::process::id())), "{holder}");
        drop(listener);
        assert!(listeners_on(addr).unwrap().is_empty());
        assert!(describe_holder(inode).contains("holder not found"));
        assert_eq!(parse_socket_link("socket:[12345]"), Some(12345));
        assert_eq!(parse_socket_link("pipe:[1]"), None);
    }
}
