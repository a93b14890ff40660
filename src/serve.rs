//! `ringlog serve --config FILE [--skip-host-checks]`: run one node until a signal.
//!
//! Start: load and validate the config (unknown keys, a node id not among the peers, an
//! unusable data dir... are reported with the file's line or the key's name); set up `tracing`
//! to stderr with `log.level` and `log.json`; install the SIGTERM/SIGINT/SIGHUP handlers;
//! bind the HTTP endpoint on `listen.metrics` (`/health` answers 200 from here on, `/ready`
//! 503 "starting" until the node is ready); start the node (`Node::start_with`: the FAIL host
//! checks of `ringlog doctor` first, with the same lines; it returns once every shard has
//! recovered its partitions and listens); then print exactly one line on stdout, flushed:
//!
//! ```text
//! ringlog: ready node=<id> client=<ip:port> peer=<ip:port> shards=<n>
//! ```
//!
//! (`client`/`peer` are shard 0's bound addresses; shard `s` listens on port + s.)
//!
//! systemd: when `NOTIFY_SOCKET` is set, `READY=1` is sent right after the ready line (every
//! shard opened and listens; a leader may not be known yet: `/ready` tells that), and
//! `STOPPING=1` when a stop begins (the first SIGTERM/SIGINT, or the node stopping on its own
//! after a fatal error). `deploy/ringlog.service` is `Type=notify`.
//!
//! Reload: SIGHUP reads the config file again (validated as at start; if it fails, nothing
//! changes and the reason is logged) and applies `log.level` (tracing's reload layer) and
//! the certificate and key named by `tls.cert` / `tls.key` (`TlsConfig::reload_certificate`:
//! new connections present it, existing ones keep theirs; one the cluster CA does not accept
//! is refused). It logs what changed, or why it refused; the node keeps running either way.
//! Other keys (the CAs, `log.json`, ...) wait for a restart, which the reload logs.
//!
//! Stop: the first SIGTERM or SIGINT stops gracefully (stop accepting clients, answer or fail
//! in-flight requests, hand off the leadership of led partitions, flush, close); a second one
//! stops immediately. A fatal storage error (a latched write/fdatasync failure) stops the node
//! on its own.
//!
//! Exit status: [`EXIT_CLEAN`] (0) after a stop, [`EXIT_START_FAILED`] (1) when the node did
//! not start (or did not stop cleanly), [`EXIT_FATAL_STORAGE`] (2) after a fatal storage error,
//! [`EXIT_PANIC`] (3) after a panic in any thread (a broken invariant): the panic is printed
//! and logged and the process ends at once, so that no half-alive node keeps its ports and its
//! supervisor (`Restart=on-failure`) restarts it; recovery then runs as after a crash.

#![forbid(unsafe_code)]

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use sd_notify::NotifyState;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, EnvFilter, Registry};

use ringlog_net::tls::CertificateReload;
use ringlog_node::config::{ConfigWarning, LogSection, NodeConfig};
use ringlog_node::metrics::NodeSlot;
use ringlog_node::node::{Node, NodeError, NodeExit, NodeHandle, ShutdownMode, StartOptions};

/// Exit status after a clean stop.
pub const EXIT_CLEAN: u8 = 0;
/// Exit status when the node could not start (bad config, host FAIL, data dir locked, port
/// taken...) or did not stop cleanly.
pub const EXIT_START_FAILED: u8 = 1;
/// Exit status after a fatal storage error stopped the node.
pub const EXIT_FATAL_STORAGE: u8 = 2;
/// Exit status after a panic anywhere in the process.
pub const EXIT_PANIC: u8 = 3;

/// Arguments of `ringlog serve`.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// The node's configuration file (TOML; `ringlog config reference` lists every key).
    #[arg(long, value_name = "FILE")]
    pub config: PathBuf,
    /// Start even when a host check FAILs (tests on odd hosts only: glommio may then panic
    /// or exit on what the check would have caught). The memlock rule still applies.
    #[arg(long)]
    pub skip_host_checks: bool,
}

/// What the main thread waits for.
enum Event {
    Signal(i32),
    ShutdownFailed(NodeError),
    Stopped(NodeExit),
}

/// What a SIGHUP may change in the running process.
struct Reloadable {
    config_path: PathBuf,
    /// The `log.level` filter of the tracing subscriber.
    level: LevelHandle,
    /// The config the process runs with (its `log.level` and `tls.cert`/`tls.key` follow
    /// the reloads that were applied).
    running: NodeConfig,
}

/// Swaps the subscriber's `log.level` filter.
type LevelHandle = reload::Handle<EnvFilter, Registry>;

/// Runs the node and returns the process exit status.
pub fn run(args: &ServeArgs) -> ExitCode {
    let loaded = match NodeConfig::load(&args.config) {
        Ok(loaded) => loaded,
        Err(error) => return start_failed(&error.to_string()),
    };
    let config = loaded.config;
    let level = match init_logging(&config.log) {
        Ok(level) => level,
        Err(reason) => return start_failed(&reason),
    };
    exit_on_panic();
    // The node logs the plaintext warning itself at start (also when embedded).
    for warning in loaded.warnings.iter().filter(|w| **w != ConfigWarning::Plaintext) {
        tracing::warn!("config: {warning}");
    }
    // Installed before the node starts, so that an early signal is not the default kill (a
    // SIGHUP during the start is handled once the node runs).
    let mut signals = match Signals::new([SIGTERM, SIGINT, SIGHUP]) {
        Ok(signals) => signals,
        Err(error) => return start_failed(&format!("cannot install signal handlers: {error}")),
    };
    let metrics_addr = config.listen.metrics;
    // Bound before the node starts: `/health` answers during recovery, `/ready` says why
    // the node is not ready yet.
    let slot = NodeSlot::new();
    let metrics = match ringlog_node::metrics::spawn_exporter_for(metrics_addr, slot.clone()) {
        Ok(metrics) => metrics,
        Err(error) => {
            return start_failed(&format!("cannot listen on {metrics_addr} for metrics: {error}"))
        }
    };
    let mut reloadable =
        Reloadable { config_path: args.config.clone(), level, running: config.clone() };
    let options = StartOptions { skip_host_checks: args.skip_host_checks };
    let node = match Node::start_with(config, options) {
        Ok(node) => node,
        Err(error) => return start_failed(&error.to_string()),
    };
    slot.set(node.clone());
    if let Err(error) = print_ready(&node) {
        let _ = node.shutdown(ShutdownMode::Immediate);
        return start_failed(&format!("cannot print the ready line: {error}"));
    }
    // After the ready line: every shard has recovered its partitions and listens.
    notify_systemd(NotifyState::Ready);
    let (events, received) = crossbeam_channel::unbounded();
    let signal_handle = signals.handle();
    let signal_events = events.clone();
    let signal_thread =
        std::thread::Builder::new().name("ringlog-signals".into()).spawn(move || {
            for signal in signals.forever() {
                if signal_events.send(Event::Signal(signal)).is_err() {
                    return;
                }
            }
        });
    let waiter = node.clone();
    let wait_events = events.clone();
    let wait_thread = std::thread::Builder::new()
        .name("ringlog-wait".into())
        .spawn(move || drop(wait_events.send(Event::Stopped(waiter.wait()))));
    if let Err(error) = signal_thread.as_ref().and(wait_thread.as_ref()) {
        tracing::error!(%error, "cannot start the signal or wait thread");
        let _ = node.shutdown(ShutdownMode::Immediate);
        return ExitCode::from(EXIT_START_FAILED);
    }
    let (exit, stopped_cleanly) = wait_for_stop(&node, &events, &received, &mut reloadable);
    drop(metrics);
    signal_handle.close();
    if let Ok(thread) = signal_thread {
        let _ = thread.join();
    }
    match exit {
        NodeExit::Stopped if stopped_cleanly => {
            tracing::info!("stopped");
            ExitCode::from(EXIT_CLEAN)
        }
        NodeExit::Stopped => ExitCode::from(EXIT_START_FAILED),
        NodeExit::Fatal(reason) => {
            eprintln!("ringlog: fatal storage error: {reason}");
            ExitCode::from(EXIT_FATAL_STORAGE)
        }
    }
}

/// A panic in any thread (a shard's Raft assertion, say) ends the process with
/// [`EXIT_PANIC`] after the default hook printed it: a shard thread that died alone would
/// leave a node that answers nothing but holds its ports, which no supervisor restarts.
fn exit_on_panic() {
    let print = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        print(info);
        let thread = std::thread::current().name().unwrap_or("unnamed").to_string();
        tracing::error!(%thread, panic = %info, "panic: the node exits (recovery runs at the next start)");
        std::process::exit(i32::from(EXIT_PANIC));
    }));
}

/// Handles signals until the node stopped; returns how it ended and whether every requested
/// shutdown succeeded.
fn wait_for_stop(
    node: &NodeHandle,
    events: &crossbeam_channel::Sender<Event>,
    received: &crossbeam_channel::Receiver<Event>,
    reloadable: &mut Reloadable,
) -> (NodeExit, bool) {
    let mut signals_seen = 0u32;
    let mut clean = true;
    while let Ok(event) = received.recv() {
        match event {
            Event::Signal(SIGHUP) => reload(node, reloadable),
            Event::Signal(signal) => {
                signals_seen += 1;
                if signals_seen == 1 {
                    notify_systemd(NotifyState::Stopping);
                }
                let mode = if signals_seen == 1 {
                    tracing::info!(signal, "stopping gracefully (a second signal stops at once)");
                    ShutdownMode::Graceful
                } else {
                    tracing::warn!(signal, "stopping immediately");
                    ShutdownMode::Immediate
                };
                let (stopping, events) = (node.clone(), events.clone());
                // On its own thread: a second signal must be seen while the first stop runs.
                let spawned =
                    std::thread::Builder::new().name("ringlog-stop".into()).spawn(move || {
                        if let Err(error) = stopping.shutdown(mode) {
                            let _ = events.send(Event::ShutdownFailed(error));
                        }
                    });
                if let Err(error) = spawned {
                    tracing::error!(%error, "cannot start the stop thread; stopping here");
                    clean &= node.shutdown(mode).is_ok();
                }
            }
            Event::ShutdownFailed(error) => {
                tracing::error!(%error, "the node did not stop cleanly");
                clean = false;
            }
            Event::Stopped(exit) => {
                if signals_seen == 0 {
                    // Stopped on its own (a fatal storage error).
                    notify_systemd(NotifyState::Stopping);
                }
                // A failed shutdown reports before the node is marked stopped.
                while let Ok(Event::ShutdownFailed(error)) = received.try_recv() {
                    tracing::error!(%error, "the node did not stop cleanly");
                    clean = false;
                }
                return (exit, clean);
            }
        }
    }
    (node.wait(), clean)
}

/// The contract's ready line, on stdout, flushed.
fn print_ready(node: &NodeHandle) -> std::io::Result<()> {
    let missing = || std::io::Error::other("shard 0 has no bound address");
    let client = node.client_addr(0).ok_or_else(missing)?;
    let peer = node.peer_addr(0).ok_or_else(missing)?;
    let mut stdout = std::io::stdout().lock();
    writeln!(
        stdout,
        "ringlog: ready node={} client={client} peer={peer} shards={}",
        node.node_id().0,
        node.shards()
    )?;
    stdout.flush()
}

/// `tracing` to stderr with the configured filter, as text or one JSON object per line; the
/// filter sits in a reload layer (SIGHUP applies a new `log.level`).
fn init_logging(log: &LogSection) -> Result<LevelHandle, String> {
    let filter = EnvFilter::try_new(&log.level)
        .map_err(|error| format!("log.level = {:?}: {error}", log.level))?;
    let (filter, handle) = reload::Layer::new(filter);
    let output = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let subscriber = tracing_subscriber::registry().with(filter);
    let installed = if log.json {
        subscriber.with(output.json()).try_init()
    } else {
        subscriber.with(output).try_init()
    };
    installed.map_err(|error| format!("cannot set up logging: {error}"))?;
    Ok(handle)
}

/// Tells systemd (`NOTIFY_SOCKET`) where the node is; without the variable nothing is sent.
/// A failure is logged: the node runs on (systemd would then time the start out).
fn notify_systemd(state: NotifyState<'_>) {
    if let Err(error) = sd_notify::notify(false, &[state]) {
        tracing::error!(%error, "cannot notify systemd (NOTIFY_SOCKET)");
    }
}

/// SIGHUP: reads the config file again and applies `log.level` and the TLS certificate;
/// everything else waits for a restart. Refusals are logged; the node keeps running.
fn reload(node: &NodeHandle, reloadable: &mut Reloadable) {
    let path = reloadable.config_path.display().to_string();
    tracing::info!(config = %path, "SIGHUP: reloading log.level and the TLS certificate");
    let new = match NodeConfig::load(&reloadable.config_path) {
        Ok(loaded) => loaded.config,
        Err(error) => {
            tracing::error!(config = %path, %error, "reload refused: the config file does not load; the running log level and certificate stay");
            return;
        }
    };
    reload_level(&reloadable.level, &mut reloadable.running, &new.log);
    reload_certificate(node, &mut reloadable.running, &new);
    let mut rest = new;
    rest.log.level.clone_from(&reloadable.running.log.level);
    rest.tls.cert.clone_from(&reloadable.running.tls.cert);
    rest.tls.key.clone_from(&reloadable.running.tls.key);
    if rest != reloadable.running {
        tracing::warn!(config = %path, "the config file changed keys other than log.level, tls.cert and tls.key: they take effect at the next restart");
    }
}

fn reload_level(level: &LevelHandle, running: &mut NodeConfig, new: &LogSection) {
    if new.level == running.log.level {
        tracing::info!(level = %new.level, "log.level unchanged");
        return;
    }
    let applied = EnvFilter::try_new(&new.level)
        .map_err(|error| error.to_string())
        .and_then(|filter| level.reload(filter).map_err(|error| error.to_string()));
    match applied {
        Ok(()) => {
            tracing::info!(from = %running.log.level, to = %new.level, "log.level reloaded");
            running.log.level.clone_from(&new.level);
        }
        Err(error) => {
            tracing::error!(level = %new.level, %error, "log.level reload refused; the running level stays")
        }
    }
}

fn reload_certificate(node: &NodeHandle, running: &mut NodeConfig, new: &NodeConfig) {
    let Some(tls) = node.tls() else {
        if new.tls.mode != running.tls.mode {
            tracing::warn!("tls.mode changed: it takes effect at the next restart");
        }
        return;
    };
    let (Some(cert), Some(key)) = (&new.tls.cert, &new.tls.key) else {
        tracing::error!("TLS reload refused: the config file names no tls.cert/tls.key (tls.mode changes need a restart); the running certificate stays");
        return;
    };
    match tls.reload_certificate(cert, key) {
        Ok(CertificateReload::Replaced) => {
            tracing::info!(cert = %cert.display(), key = %key.display(), "TLS certificate reloaded: new connections present the new certificate, open ones keep theirs");
            running.tls.cert = Some(cert.clone());
            running.tls.key = Some(key.clone());
        }
        Ok(CertificateReload::Unchanged) => {
            tracing::info!(cert = %cert.display(), "TLS certificate unchanged");
            running.tls.cert = Some(cert.clone());
            running.tls.key = Some(key.clone());
        }
        Err(error) => {
            tracing::error!(%error, "TLS certificate reload refused; new connections keep the running certificate")
        }
    }
}

/// Prints why the node did not start (plain text on stderr, as `doctor` prints its lines).
fn start_failed(reason: &str) -> ExitCode {
    eprintln!("ringlog: {reason}");
    ExitCode::from(EXIT_START_FAILED)
}
