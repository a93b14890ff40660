//! The replicated node: `ringlog_node_*`, over `ringlog_node::node::{Node, NodeHandle}`.
//!
//! `ringlog_node_start` loads and validates a node TOML file (the same file `ringlog serve`
//! reads), then `Node::start` probes the host (kernel, io_uring, memlock, O_DIRECT on the
//! data dir) before any executor starts and starts every shard, listening on the configured
//! client and peer addresses: the node joins its Raft groups exactly as a `serve` process
//! would, and other nodes and network clients talk to it normally. Several nodes may run in
//! one process (each with its own config, ports and data dir).
//!
//! Invariants: the node is stopped exactly once, by `ringlog_node_stop`; a status struct is
//! written only up to the caller's `size`.

use std::ffi::c_char;
use std::sync::Arc;
use std::time::Duration;

use ::ringlog_node::config::{ConfigError, NodeConfig};
use ::ringlog_node::node::{
    Acks, Node, NodeError, NodeHandle, NodeId, NodeStartError, Offset, PartitionId, Role,
    ShutdownMode,
};

use crate::guard::{ffi, refuse_in_callback, with_handle, Poison};
use crate::handles::Registry;
use crate::log::path_from_c;
use crate::records::{
    begin_read, buffer_from_c, consistency_from_c, deliver_read, ringlog_record, slices_from_c,
};
use crate::sized::write_sized;
use crate::status::{ringlog_status, ringlog_status::*, Error};

/// Opaque handle of a running node. Never dereference it: it is an id, not an address.
#[allow(non_camel_case_types)]
#[derive(Debug)]
pub struct ringlog_node {
    _opaque: [u8; 0],
}

/// `acks`: answered once the leader accepted the batch in memory.
pub const RINGLOG_ACKS_NONE: u32 = 0;
/// `acks`: answered once the leader's own fdatasync covering the batch completed.
pub const RINGLOG_ACKS_LEADER: u32 = 1;
/// `acks`: answered once a majority has the batch durable (committed; the default choice).
pub const RINGLOG_ACKS_QUORUM: u32 = 2;

/// Read consistency: the leader confirms it still leads before answering (ReadIndex).
pub const RINGLOG_READ_LINEARIZABLE: u32 = 0;
/// Read consistency: any replica answers with what it knows to be committed.
pub const RINGLOG_READ_REPLICA_COMMITTED: u32 = 1;

/// Stop mode: stop accepting, finish in-flight requests, hand leadership off, flush, close.
pub const RINGLOG_STOP_GRACEFUL: u32 = 0;
/// Stop mode: close now (in-flight requests fail).
pub const RINGLOG_STOP_IMMEDIATE: u32 = 1;

/// `ringlog_partition_status.role` values.
pub const RINGLOG_ROLE_FOLLOWER: u32 = 0;
pub const RINGLOG_ROLE_PRE_CANDIDATE: u32 = 1;
pub const RINGLOG_ROLE_CANDIDATE: u32 = 2;
pub const RINGLOG_ROLE_LEADER: u32 = 3;
pub const RINGLOG_ROLE_LEARNER: u32 = 4;

/// Longest `wait_ms` of `ringlog_node_read` (larger values are capped by the node).
pub const RINGLOG_READ_WAIT_MS_MAX: u32 = 60_000;

/// One partition's Raft state on this node. Set `size = sizeof(ringlog_partition_status)`
/// before the call; only `size` bytes are written (the struct grows at its end).
#[allow(non_camel_case_types)]
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ringlog_partition_status {
    /// Set by the caller: `sizeof(ringlog_partition_status)`.
    pub size: u32,
    /// `RINGLOG_ROLE_*`.
    pub role: u32,
    /// The node answering (this node).
    pub node_id: u32,
    /// The leader this node knows of; 0 when unknown (node ids start at 1).
    pub leader_id: u32,
    /// Current Raft term.
    pub term: u64,
    /// Highest Raft index known committed.
    pub commit_index: u64,
    /// Highest Raft index durable on this node's disk.
    pub durable_index: u64,
    /// Highest Raft index in this node's log.
    pub last_index: u64,
    /// First record offset not yet committed (reads return offsets below it).
    pub commit_offset: u64,
}

const PARTITION_STATUS_V1_SIZE: usize = std::mem::size_of::<ringlog_partition_status>();

struct NodeEntry {
    node: NodeHandle,
    poison: Poison,
    batch_size_max: usize,
}

static NODES: Registry<NodeEntry> = Registry::new(b'N');

/// Starts a node from the TOML configuration file at `config_path` (the format of
/// `ringlog serve --config`, docs/config.md) and stores its handle in `*out_node`. Returns
/// when every shard has recovered its partitions and listens; the node then takes part in
/// its Raft groups with the peers the file lists.
///
/// Errors: `RINGLOG_ERR_CONFIG` (unreadable or invalid file; the message lists every
/// problem), `RINGLOG_ERR_HOST_UNSUPPORTED` (failed host checks, nothing started),
/// `RINGLOG_ERR_ADDRESS_IN_USE`, `RINGLOG_ERR_IO`, `RINGLOG_ERR_CORRUPTION`,
/// `RINGLOG_ERR_NULL_POINTER`, `RINGLOG_ERR_INVALID_ARGUMENT`, `RINGLOG_ERR_TOO_MANY_HANDLES`.
/// On error `*out_node` is set to NULL.
///
/// SIGPIPE: a node writes to TCP sockets whose peer may have gone; with the default SIGPIPE
/// disposition that would kill the host process. If SIGPIPE is at its default (`SIG_DFL`),
/// this call sets it to `SIG_IGN` (writes then fail with EPIPE, which the node handles); a
/// handler or disposition the host installed is left alone.
///
/// # Safety
/// `config_path` must be a NUL-terminated string; `out_node` writable.
#[no_mangle]
pub unsafe extern "C" fn ringlog_node_start(
    config_path: *const c_char,
    out_node: *mut *mut ringlog_node,
) -> ringlog_status {
    ffi(|| {
        if out_node.is_null() {
            return Err(Error::null("out_node"));
        }
        // SAFETY: non-NULL and writable per the caller's contract.
        unsafe { out_node.write(std::ptr::null_mut()) };
        refuse_in_callback("ringlog_node_start")?;
        // SAFETY: forwarded caller contract on `config_path`.
        let path = unsafe { path_from_c(config_path, "config_path")? };
        let loaded = NodeConfig::load(&path).map_err(config_error)?;
        ignore_sigpipe()?;
        let mut config = loaded.config;
        // glommio wants absolute paths (a relative data dir fails with EBADF).
        if let Ok(absolute) = std::path::absolute(&config.data_dir) {
            config.data_dir = absolute;
        }
        let batch_size_max = config.storage.batch_size_max as usize;
        let node = Node::start(config).map_err(start_error)?;
        let entry = NodeEntry { node, poison: Poison::default(), batch_size_max };
        let handle = NODES.insert(Arc::new(entry))?;
        // SAFETY: as above.
        unsafe { out_node.write(std::ptr::without_provenance_mut(handle)) };
        Ok(())
    })
}

/// Appends `count` records to `partition` as one batch and blocks until `acks`
/// (`RINGLOG_ACKS_*`) is met. `*out_first_offset` and `*out_commit_offset` (both optional)
/// receive the batch's first offset (record `i` has `first + i`) and the group's commit
/// offset at completion.
///
/// Errors: `RINGLOG_ERR_NOT_LEADER` (the message names the leader and its address when
/// known: send the append there), `RINGLOG_ERR_EMPTY_APPEND`, `RINGLOG_ERR_OVERSIZE`,
/// `RINGLOG_ERR_UNKNOWN_PARTITION`, `RINGLOG_ERR_BACKPRESSURE`, `RINGLOG_ERR_TIMEOUT` (acks
/// not reached in time: the batch may still commit), `RINGLOG_ERR_STORAGE_FAILED`,
/// `RINGLOG_ERR_STORAGE_FULL` (the leader's disk is full: not taken; reads go on, retry once
/// space is freed), `RINGLOG_ERR_CLOSED`, `RINGLOG_ERR_INVALID_ARGUMENT` (bad acks), the handle errors.
///
/// # Safety
/// `records` must point to `count` records, each `data` to `len` readable bytes; the out
/// pointers NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn ringlog_node_append(
    node: *mut ringlog_node,
    partition: u32,
    acks: u32,
    records: *const ringlog_record,
    count: usize,
    out_first_offset: *mut u64,
    out_commit_offset: *mut u64,
) -> ringlog_status {
    ffi(|| {
        refuse_in_callback("ringlog_node_append")?;
        let entry = NODES.get(node.addr())?;
        with_handle(&entry.poison, || {
            let acks = match acks {
                RINGLOG_ACKS_NONE => Acks::None,
                RINGLOG_ACKS_LEADER => Acks::Leader,
                RINGLOG_ACKS_QUORUM => Acks::Quorum,
                other => return Err(Error::invalid(format!("acks {other} is not RINGLOG_ACKS_*"))),
            };
            // SAFETY: forwarded caller contract on `records`.
            let slices = unsafe { slices_from_c(records, count, entry.batch_size_max)? };
            let outcome =
                entry.node.append(PartitionId(partition), acks, &slices).map_err(node_error)?;
            // SAFETY: each out pointer is NULL or writable per the caller's contract.
            unsafe {
                if !out_first_offset.is_null() {
                    out_first_offset.write(outcome.base_offset.0);
                }
                if !out_commit_offset.is_null() {
                    out_commit_offset.write(outcome.commit.0);
                }
            }
            Ok(())
        })
    })
}

/// Reads committed records of `partition` from `offset` into `buf` in the read-buffer format
/// of `ringlog_log_read` (`[uint32_t LE length][bytes]` per record; record `i` has offset
/// `offset + i`). `consistency` is `RINGLOG_READ_*`; when nothing is committed at `offset`
/// yet, waits up to `wait_ms` (capped at `RINGLOG_READ_WAIT_MS_MAX`) and then returns
/// `RINGLOG_OK` with `*out_len = 0`.
///
/// Errors: `RINGLOG_ERR_NOT_LEADER` (linearizable read on a follower),
/// `RINGLOG_ERR_OFFSET_OUT_OF_RANGE`, `RINGLOG_ERR_BUFFER_TOO_SMALL` (`*out_len` = bytes
/// needed), `RINGLOG_ERR_UNKNOWN_PARTITION`, `RINGLOG_ERR_INVALID_ARGUMENT`, the handle errors.
///
/// # Safety
/// As `ringlog_log_read`.
#[no_mangle]
pub unsafe extern "C" fn ringlog_node_read(
    node: *mut ringlog_node,
    partition: u32,
    offset: u64,
    consistency: u32,
    wait_ms: u32,
    buf: *mut std::ffi::c_void,
    cap: usize,
    out_len: *mut usize,
    out_next_offset: *mut u64,
) -> ringlog_status {
    ffi(|| {
        // SAFETY: the out-parameters are NULL or writable per the caller's contract.
        unsafe { begin_read(out_len, out_next_offset, offset)? };
        refuse_in_callback("ringlog_node_read")?;
        let entry = NODES.get(node.addr())?;
        with_handle(&entry.poison, || {
            let consistency = consistency_from_c(consistency)?;
            // SAFETY: forwarded caller contract on `buf`/`cap`.
            let buf = unsafe { buffer_from_c(buf, cap)? };
            // At least one whole batch, so that the first record is always looked at (a
            // too-small buffer then reports the size it needs).
            let max_bytes = u32::try_from(cap.max(entry.batch_size_max)).unwrap_or(u32::MAX);
            let wait = Duration::from_millis(u64::from(wait_ms.min(RINGLOG_READ_WAIT_MS_MAX)));
            let outcome = entry
                .node
                .read(PartitionId(partition), Offset(offset), max_bytes, consistency, wait)
                .map_err(node_error)?;
            // SAFETY: `out_len`/`out_next_offset` were checked non-NULL above.
            unsafe {
                deliver_read(
                    &outcome.batches,
                    offset,
                    entry.batch_size_max,
                    buf,
                    out_len,
                    out_next_offset,
                )
            }
        })
    })
}

/// Fills `*out_status` with `partition`'s Raft state on this node (role, term, leader,
/// commit and durable indexes, commit offset). Set `out_status->size` first.
///
/// Errors: `RINGLOG_ERR_BAD_STRUCT_SIZE`, `RINGLOG_ERR_UNKNOWN_PARTITION`, the handle errors.
///
/// # Safety
/// `out_status` must point to `out_status->size` writable bytes.
#[no_mangle]
pub unsafe extern "C" fn ringlog_node_status(
    node: *mut ringlog_node,
    partition: u32,
    out_status: *mut ringlog_partition_status,
) -> ringlog_status {
    ffi(|| {
        if out_status.is_null() {
            return Err(Error::null("out_status"));
        }
        refuse_in_callback("ringlog_node_status")?;
        let entry = NODES.get(node.addr())?;
        with_handle(&entry.poison, || {
            // SAFETY: non-NULL; the first field is the caller's size (caller's contract).
            let size = unsafe { std::ptr::read_unaligned(out_status.cast::<u32>()) } as usize;
            if size < PARTITION_STATUS_V1_SIZE {
                return Err(crate::log::bad_size(
                    "ringlog_partition_status",
                    size,
                    PARTITION_STATUS_V1_SIZE,
                ));
            }
            let status = entry.node.status(PartitionId(partition)).map_err(node_error)?;
            let value = ringlog_partition_status {
                size: size.min(PARTITION_STATUS_V1_SIZE) as u32,
                role: match status.role {
                    Role::Follower => RINGLOG_ROLE_FOLLOWER,
                    Role::PreCandidate => RINGLOG_ROLE_PRE_CANDIDATE,
                    Role::Candidate => RINGLOG_ROLE_CANDIDATE,
                    Role::Leader => RINGLOG_ROLE_LEADER,
                    Role::Learner => RINGLOG_ROLE_LEARNER,
                },
                node_id: status.node.0,
                leader_id: status.leader.map_or(0, |leader| leader.0),
                term: status.term.0,
                commit_index: status.commit.0,
                durable_index: status.durable.0,
                last_index: status.last_index.0,
                commit_offset: status.commit_offset.0,
            };
            // SAFETY: `size` writable bytes at `out_status` (caller's contract).
            unsafe {
                write_sized(
                    out_status,
                    size,
                    PARTITION_STATUS_V1_SIZE,
                    &value,
                    "ringlog_partition_status",
                )
            }
        })
    })
}

/// Asks this node, which must lead `partition`, to hand leadership to node `to_node_id` (for
/// rolling restarts). Returns once the transfer started; watch `ringlog_node_status` for the
/// new leader. Errors: `RINGLOG_ERR_NOT_LEADER`, `RINGLOG_ERR_REJECTED` (unknown or
/// unsuitable target), `RINGLOG_ERR_UNKNOWN_PARTITION`, the handle errors.
///
/// # Safety
/// None beyond passing the value received from `ringlog_node_start`.
#[no_mangle]
pub unsafe extern "C" fn ringlog_node_transfer_leadership(
    node: *mut ringlog_node,
    partition: u32,
    to_node_id: u32,
) -> ringlog_status {
    ffi(|| {
        refuse_in_callback("ringlog_node_transfer_leadership")?;
        let entry = NODES.get(node.addr())?;
        with_handle(&entry.poison, || {
            entry
                .node
                .transfer_leadership(PartitionId(partition), NodeId(to_node_id))
                .map_err(node_error)
        })
    })
}

/// Stops the node (`mode`: `RINGLOG_STOP_GRACEFUL` or `RINGLOG_STOP_IMMEDIATE`), waits for
/// every shard thread to exit, and invalidates the handle (later use and a second stop return
/// `RINGLOG_ERR_BAD_HANDLE`). An invalid `mode` is `RINGLOG_ERR_INVALID_ARGUMENT` and leaves
/// the node running. A poisoned handle can be stopped.
///
/// # Safety
/// None beyond passing the value received from `ringlog_node_start`.
#[no_mangle]
pub unsafe extern "C" fn ringlog_node_stop(node: *mut ringlog_node, mode: u32) -> ringlog_status {
    ffi(|| {
        if node.is_null() {
            return Err(Error::null("node"));
        }
        refuse_in_callback("ringlog_node_stop")?;
        let mode = match mode {
            RINGLOG_STOP_GRACEFUL => ShutdownMode::Graceful,
            RINGLOG_STOP_IMMEDIATE => ShutdownMode::Immediate,
            other => return Err(Error::invalid(format!("mode {other} is not RINGLOG_STOP_*"))),
        };
        let entry = NODES.remove(node.addr())?;
        entry.node.shutdown(mode).map_err(node_error)
    })
}

fn config_error(error: ConfigError) -> Error {
    Error::new(RINGLOG_ERR_CONFIG, error.to_string())
}

fn start_error(error: NodeStartError) -> Error {
    let status = match &error {
        NodeStartError::Config(_) => RINGLOG_ERR_CONFIG,
        NodeStartError::Host(_) => RINGLOG_ERR_HOST_UNSUPPORTED,
        NodeStartError::DataDir { reason, .. } if reason.contains("lock") => RINGLOG_ERR_LOCKED,
        NodeStartError::DataDir { .. } => RINGLOG_ERR_IO,
        NodeStartError::Listen { .. } => RINGLOG_ERR_ADDRESS_IN_USE,
        NodeStartError::Recovery { .. } => RINGLOG_ERR_CORRUPTION,
        _ => RINGLOG_ERR_INTERNAL,
    };
    Error::new(status, error.to_string())
}

fn node_error(error: NodeError) -> Error {
    let status = match &error {
        NodeError::NotLeader { .. } => RINGLOG_ERR_NOT_LEADER,
        NodeError::UnknownPartition { .. } => RINGLOG_ERR_UNKNOWN_PARTITION,
        NodeError::OffsetOutOfRange { .. } => RINGLOG_ERR_OFFSET_OUT_OF_RANGE,
        NodeError::Backpressure { .. } => RINGLOG_ERR_BACKPRESSURE,
        NodeError::Oversize { .. } => RINGLOG_ERR_OVERSIZE,
        NodeError::Invalid(_) => RINGLOG_ERR_INVALID_ARGUMENT,
        NodeError::Timeout => RINGLOG_ERR_TIMEOUT,
        NodeError::ShuttingDown | NodeError::Stopped => RINGLOG_ERR_CLOSED,
        NodeError::StorageFailed { .. } => RINGLOG_ERR_STORAGE_FAILED,
        NodeError::StorageFull { .. } => RINGLOG_ERR_STORAGE_FULL,
        NodeError::Rejected(_) => RINGLOG_ERR_REJECTED,
        _ => RINGLOG_ERR_INTERNAL,
    };
    Error::new(status, error.to_string())
}

/// Sets SIGPIPE to `SIG_IGN` if it is at its default disposition (which kills the process on
/// a write to a closed socket); leaves any host-installed disposition alone.
pub(crate) fn ignore_sigpipe() -> Result<(), Error> {
    // SAFETY: `sigaction` structs are plain C data for which all-zero is a valid value.
    let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
    // SAFETY: querying (NULL new action) into a valid, writable struct.
    if unsafe { libc::sigaction(libc::SIGPIPE, std::ptr::null(), &mut old) } != 0 {
        let error = std::io::Error::last_os_error();
        return Err(Error::new(RINGLOG_ERR_INTERNAL, format!("sigaction(SIGPIPE): {error}")));
    }
    if old.sa_sigaction != libc::SIG_DFL {
        return Ok(());
    }
    // SAFETY: as above.
    let mut ignore: libc::sigaction = unsafe { std::mem::zeroed() };
    ignore.sa_sigaction = libc::SIG_IGN;
    // SAFETY: a valid sigaction with an empty mask and SIG_IGN; the old action is not needed.
    let set = unsafe {
        libc::sigemptyset(&mut ignore.sa_mask);
        libc::sigaction(libc::SIGPIPE, &ignore, std::ptr::null_mut())
    };
    if set != 0 {
        let error = std::io::Error::last_os_error();
        return Err(Error::new(RINGLOG_ERR_INTERNAL, format!("sigaction(SIGPIPE): {error}")));
    }
    Ok(())
}
