//! The network client: `ringlog_client_*`, over the blocking `ringlog_net::client::Client`.
//!
//! A C program produces to and fetches from a ringlog cluster (`ringlog serve` processes, or
//! nodes embedded elsewhere) without running a node itself: no engine, no io_uring, no host
//! checks. `ringlog_client_connect` takes bootstrap addresses (any nodes' shard-0 client
//! addresses) and options (timeouts, retries, TLS); every call is routed to the partition's
//! leader with the Rust client's retry rules: reads are retried on any transport failure, a
//! produce only when the node surely did not take it (connection refused, `NotLeader`,
//! backpressure). A produce whose outcome is unknown is `RINGLOG_ERR_INDETERMINATE`, never
//! retried here (the records may commit later; a blind retry may append them twice).
//!
//! Records go in as `ringlog_record` arrays (records.rs; bounded by the wire's
//! `BATCH_SIZE_MAX` before any byte is read) and come out of `ringlog_client_fetch` in the
//! read-buffer format of `ringlog_log_read`, into the caller's buffer.
//!
//! Invariants: a handle is closed exactly once (the registry refuses a second close); calls
//! on other threads that hold the client when it closes finish normally (the client's
//! connections close when the last of them returns); every wait is bounded by the options'
//! timeouts (each at most [`RINGLOG_CLIENT_TIMEOUT_MS_MAX`]).

use std::ffi::{c_char, c_void, CStr};
use std::sync::Arc;
use std::time::Duration;

use ringlog_net::client::{parse_addresses, Client, ClientConfig, ClientError, ClientTls};
use ringlog_net::limits::{BATCH_SIZE_MAX, FETCH_BYTES_MAX};
use ringlog_net::protocol::{Acks, ErrorReply, MetadataResponse};
use ringlog_net::tls::{client_config, read_certs, read_key, TlsError};
use ringlog_net::{Offset, PartitionId};
use rustls::pki_types::ServerName;

use crate::guard::{ffi, refuse_in_callback, with_handle, Poison};
use crate::handles::Registry;
use crate::log::path_from_c;
use crate::node::{
    ignore_sigpipe, RINGLOG_ACKS_LEADER, RINGLOG_ACKS_NONE, RINGLOG_ACKS_QUORUM,
    RINGLOG_READ_WAIT_MS_MAX,
};
use crate::records::{
    begin_read, buffer_from_c, consistency_from_c, deliver_read, ringlog_record, slices_from_c,
};
use crate::sized::{read_sized, write_sized};
use crate::status::{ringlog_status, ringlog_status::*, Error};

/// Opaque handle of a cluster client. Never dereference it: it is an id, not an address.
#[allow(non_camel_case_types)]
#[derive(Debug)]
pub struct ringlog_client {
    _opaque: [u8; 0],
}

/// Longest bootstrap string `ringlog_client_connect` reads (bytes, NUL excluded).
pub const RINGLOG_CLIENT_BOOTSTRAP_BYTES_MAX: u32 = 4096;
/// Largest value of every `*_ms` field of `ringlog_client_options` (one hour).
pub const RINGLOG_CLIENT_TIMEOUT_MS_MAX: u32 = 3_600_000;
/// Largest `attempts_max` of `ringlog_client_options`.
pub const RINGLOG_CLIENT_ATTEMPTS_MAX: u32 = 10_000;
/// Size of `ringlog_partition_info.leader_address` (a NUL-terminated "ip:port"; the longest,
/// an IPv6 address with scope and port, takes 54 bytes).
pub const RINGLOG_ADDRESS_BYTES: usize = 64;
/// Largest record batch one `ringlog_client_produce` sends (header and length prefixes
/// included): the wire protocol's limit (8 MiB).
pub const RINGLOG_CLIENT_BATCH_BYTES_MAX: u32 = 8 * 1024 * 1024;
/// Largest `max_bytes` a fetch asks a node for: the wire protocol's limit (8 MiB).
pub const RINGLOG_CLIENT_FETCH_BYTES_MAX: u32 = 8 * 1024 * 1024;

// Literals for cbindgen's `#define`s, kept equal to the wire's limits.
const _: () = assert!(RINGLOG_CLIENT_BATCH_BYTES_MAX as usize == BATCH_SIZE_MAX);
const _: () = assert!(RINGLOG_CLIENT_FETCH_BYTES_MAX as usize == FETCH_BYTES_MAX);
// A fetch of `RINGLOG_CLIENT_FETCH_BYTES_MAX` always holds a whole batch of records.
const _: () = assert!(FETCH_BYTES_MAX >= BATCH_SIZE_MAX);

/// How `ringlog_client_connect` connects, times out, retries and secures its connections.
/// Fill it with `ringlog_client_options_init` (it sets `size` and the defaults), then change
/// what you need. The strings are read during `ringlog_client_connect` only.
#[allow(non_camel_case_types)]
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ringlog_client_options {
    /// `sizeof(ringlog_client_options)`.
    pub size: u32,
    /// Bound on establishing one connection (default 2000).
    pub connect_timeout_ms: u32,
    /// Bound on one request's write and on waiting for its reply; a produce waits at most
    /// this for its acks, a fetch this plus its `wait_ms` (default 10000).
    pub request_timeout_ms: u32,
    /// Bound on waiting for a metadata reply (default 2000).
    pub metadata_timeout_ms: u32,
    /// Bound on the total time one call spends retrying (default 15000).
    pub retry_time_max_ms: u32,
    /// Attempts of one call, the first included (default 40).
    pub attempts_max: u32,
    /// TLS: the CA (PEM file) the nodes' certificates must chain to. NULL: plaintext.
    pub tls_ca_file: *const c_char,
    /// TLS: the client certificate chain (PEM) to present, for nodes that require one
    /// (`tls.client_ca`). Needs `tls_key_file` and `tls_ca_file`. NULL: none.
    pub tls_cert_file: *const c_char,
    /// TLS: the private key (PEM) of `tls_cert_file`.
    pub tls_key_file: *const c_char,
    /// TLS: the name the nodes' certificates are verified for. NULL: "ringlog-node" (the name
    /// every node certificate carries).
    pub tls_server_name: *const c_char,
}

/// Size of the first version of `ringlog_client_options`.
const CLIENT_OPTIONS_V1_SIZE: usize = std::mem::size_of::<ringlog_client_options>();

impl Default for ringlog_client_options {
    fn default() -> Self {
        let defaults = ClientConfig::new(Vec::new());
        ringlog_client_options {
            size: CLIENT_OPTIONS_V1_SIZE as u32,
            connect_timeout_ms: millis(defaults.connect_timeout),
            request_timeout_ms: millis(defaults.request_timeout),
            metadata_timeout_ms: millis(defaults.metadata_timeout),
            retry_time_max_ms: millis(defaults.retry_time_max),
            attempts_max: defaults.attempts_max,
            tls_ca_file: std::ptr::null(),
            tls_cert_file: std::ptr::null(),
            tls_key_file: std::ptr::null(),
            tls_server_name: std::ptr::null(),
        }
    }
}

fn millis(duration: Duration) -> u32 {
    u32::try_from(duration.as_millis()).unwrap_or(u32::MAX)
}

/// One partition of the cluster as `ringlog_client_metadata` reports it.
#[allow(non_camel_case_types)]
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ringlog_partition_info {
    pub partition: u32,
    /// The shard of each node that owns the partition (`partition % shards`).
    pub shard: u32,
    /// The leader's node id; 0 when no leader is known (an election is in progress).
    pub leader_id: u32,
    pub _reserved: u32,
    /// The leader's Raft term (0 when no leader is known).
    pub term: u64,
    /// The leader's client address for this partition, "ip:port", NUL-terminated; "" when no
    /// leader is known.
    pub leader_address: [c_char; RINGLOG_ADDRESS_BYTES],
}

/// Size of the first version of `ringlog_partition_info`.
const PARTITION_INFO_V1_SIZE: usize = std::mem::size_of::<ringlog_partition_info>();

/// A live client: the Rust client and its poison flag.
#[derive(Debug)]
struct ClientEntry {
    client: Client,
    poison: Poison,
}

static CLIENTS: Registry<ClientEntry> = Registry::new(b'C');

/// Fills `*options` with the defaults and `options->size = size`. Pass
/// `sizeof(ringlog_client_options)`.
///
/// Errors: `RINGLOG_ERR_NULL_POINTER`, `RINGLOG_ERR_BAD_STRUCT_SIZE`.
///
/// # Safety
/// `options` must point to `size` writable bytes.
#[no_mangle]
pub unsafe extern "C" fn ringlog_client_options_init(
    options: *mut ringlog_client_options,
    size: usize,
) -> ringlog_status {
    ffi(|| {
        if options.is_null() {
            return Err(Error::null("options"));
        }
        if size >= CLIENT_OPTIONS_V1_SIZE && size <= u32::MAX as usize {
            // SAFETY: `size` writable bytes per the caller's contract; the bytes past our
            // struct (a newer header's fields) are zeroed: their defaults.
            unsafe { std::ptr::write_bytes(options.cast::<u8>(), 0, size) };
        }
        let value = ringlog_client_options { size: size as u32, ..Default::default() };
        // SAFETY: forwarded caller contract; write_sized checks `size` first.
        unsafe {
            write_sized(options, size, CLIENT_OPTIONS_V1_SIZE, &value, "ringlog_client_options")
        }
    })
}

/// Creates a client of the cluster reachable at `bootstrap` (`"host:port,host:port,..."`:
/// shard-0 client addresses of one or more nodes; names are resolved now) with `options`
/// (NULL: the defaults) and stores its handle in `*out_client`. Nothing is contacted yet: the
/// first call reads the cluster's metadata (so a cluster still starting is fine); TLS files
/// are read and checked now.
///
/// SIGPIPE: as `ringlog_node_start`, set to `SIG_IGN` if it is at its default disposition
/// (a write to a connection a node closed would otherwise kill the process).
///
/// Errors: `RINGLOG_ERR_NULL_POINTER`, `RINGLOG_ERR_INVALID_ARGUMENT` (empty, unresolvable
/// or over-long bootstrap, an option out of range, a TLS certificate without its key),
/// `RINGLOG_ERR_BAD_STRUCT_SIZE`, `RINGLOG_ERR_CONFIG` (a TLS file unreadable or not valid
/// PEM), `RINGLOG_ERR_TOO_MANY_HANDLES`. On error `*out_client` is set to NULL.
///
/// # Safety
/// `bootstrap` must be NUL-terminated; `options` NULL or pointing to `options->size`
/// readable bytes whose strings are NULL or NUL-terminated; `out_client` writable.
#[no_mangle]
pub unsafe extern "C" fn ringlog_client_connect(
    bootstrap: *const c_char,
    options: *const ringlog_client_options,
    out_client: *mut *mut ringlog_client,
) -> ringlog_status {
    ffi(|| {
        if out_client.is_null() {
            return Err(Error::null("out_client"));
        }
        // SAFETY: non-NULL and writable per the caller's contract.
        unsafe { out_client.write(std::ptr::null_mut()) };
        if bootstrap.is_null() {
            return Err(Error::null("bootstrap"));
        }
        // SAFETY: forwarded caller contract on `options`.
        let options = unsafe { read_client_options(options)? };
        // SAFETY: non-NULL and NUL-terminated per the caller's contract.
        let bootstrap = unsafe { bounded_str(bootstrap, "bootstrap")? };
        let addresses = parse_addresses(bootstrap).map_err(|error| {
            Error::invalid(format!("bootstrap \"{bootstrap}\": {error} (expected host:port,...)"))
        })?;
        let mut config = ClientConfig::new(addresses);
        config.connect_timeout = timeout(options.connect_timeout_ms, "connect_timeout_ms")?;
        config.request_timeout = timeout(options.request_timeout_ms, "request_timeout_ms")?;
        config.metadata_timeout = timeout(options.metadata_timeout_ms, "metadata_timeout_ms")?;
        config.retry_time_max = timeout(options.retry_time_max_ms, "retry_time_max_ms")?;
        if options.attempts_max == 0 || options.attempts_max > RINGLOG_CLIENT_ATTEMPTS_MAX {
            return Err(Error::invalid(format!(
                "attempts_max = {}: must be 1..={RINGLOG_CLIENT_ATTEMPTS_MAX}",
                options.attempts_max
            )));
        }
        config.attempts_max = options.attempts_max;
        // SAFETY: the option strings are NULL or NUL-terminated per the caller's contract.
        config.tls = unsafe { client_tls(&options)? };
        ignore_sigpipe()?;
        let client = Client::new(config).map_err(client_error)?;
        let handle = CLIENTS.insert(Arc::new(ClientEntry { client, poison: Poison::default() }))?;
        // SAFETY: as above.
        unsafe { out_client.write(std::ptr::without_provenance_mut(handle)) };
        Ok(())
    })
}

/// Appends `count` records to `partition` as one batch at the partition's leader and blocks
/// until `acks` (`RINGLOG_ACKS_*`) is met. `*out_base_offset` and `*out_commit_offset` (both
/// optional) receive the batch's first offset (record `i` has `base + i`) and the group's
/// commit offset when the leader answered.
///
/// Errors: `RINGLOG_ERR_INDETERMINATE` (the request reached a leader but its outcome is
/// unknown: the records may be appended, and may commit later; retrying may duplicate them),
/// `RINGLOG_ERR_UNAVAILABLE` (nothing was taken: no node answered, no leader was known, or
/// retries were used up), `RINGLOG_ERR_EMPTY_APPEND`,
/// `RINGLOG_ERR_OVERSIZE` (over `RINGLOG_CLIENT_BATCH_BYTES_MAX` or the node's batch limit),
/// `RINGLOG_ERR_UNKNOWN_PARTITION`, `RINGLOG_ERR_STORAGE_FULL` (not taken; retry later),
/// `RINGLOG_ERR_REJECTED`, `RINGLOG_ERR_PROTOCOL`, `RINGLOG_ERR_INVALID_ARGUMENT` (bad acks),
/// `RINGLOG_ERR_NULL_POINTER` (records), the handle errors.
///
/// # Safety
/// `records` must point to `count` records, each `data` to `len` readable bytes; the out
/// pointers NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn ringlog_client_produce(
    client: *mut ringlog_client,
    partition: u32,
    acks: u32,
    records: *const ringlog_record,
    count: usize,
    out_base_offset: *mut u64,
    out_commit_offset: *mut u64,
) -> ringlog_status {
    ffi(|| {
        refuse_in_callback("ringlog_client_produce")?;
        let entry = CLIENTS.get(client.addr())?;
        with_handle(&entry.poison, || {
            let acks = match acks {
                RINGLOG_ACKS_NONE => Acks::None,
                RINGLOG_ACKS_LEADER => Acks::Leader,
                RINGLOG_ACKS_QUORUM => Acks::Quorum,
                other => return Err(Error::invalid(format!("acks {other} is not RINGLOG_ACKS_*"))),
            };
            // SAFETY: forwarded caller contract on `records`.
            let slices = unsafe { slices_from_c(records, count, BATCH_SIZE_MAX)? };
            let reply = entry
                .client
                .produce(PartitionId(partition), acks, &slices)
                .map_err(client_error)?;
            // SAFETY: each out pointer is NULL or writable per the caller's contract.
            unsafe {
                if !out_base_offset.is_null() {
                    out_base_offset.write(reply.base_offset.0);
                }
                if !out_commit_offset.is_null() {
                    out_commit_offset.write(reply.commit.0);
                }
            }
            Ok(())
        })
    })
}

/// Fetches committed records of `partition` from `offset` into `buf`, in the read-buffer
/// format of `ringlog_log_read` (`[uint32_t LE length][bytes]` per record, whole records
/// only; record `i` has offset `offset + i`; `*out_next_offset` is where to fetch next).
/// `consistency` is `RINGLOG_READ_LINEARIZABLE` (the leader confirms it still leads) or
/// `RINGLOG_READ_REPLICA_COMMITTED`; the call is routed to the leader either way. When
/// nothing is committed at `offset` yet, waits up to `wait_ms` (capped at
/// `RINGLOG_READ_WAIT_MS_MAX`), then returns `RINGLOG_OK` with `*out_len = 0`. The node is
/// asked for `RINGLOG_CLIENT_FETCH_BYTES_MAX` bytes of batches whatever `cap` is (so that a
/// whole batch of records always comes back, past any Raft control batch); what does not fit
/// `buf` is dropped and fetched again from `*out_next_offset`.
///
/// Errors: `RINGLOG_ERR_BUFFER_TOO_SMALL` (`*out_len` = bytes the first record needs; `buf`
/// NULL and `cap` 0 asks), `RINGLOG_ERR_OFFSET_OUT_OF_RANGE`, `RINGLOG_ERR_UNKNOWN_PARTITION`,
/// `RINGLOG_ERR_UNAVAILABLE`, `RINGLOG_ERR_TIMEOUT`,
/// `RINGLOG_ERR_CORRUPTION` (a fetched batch failed its checksum), `RINGLOG_ERR_PROTOCOL`,
/// `RINGLOG_ERR_INVALID_ARGUMENT`, `RINGLOG_ERR_NULL_POINTER`, the handle errors.
///
/// # Safety
/// `buf` must point to `cap` writable bytes (unless `cap` is 0); `out_len` and
/// `out_next_offset` writable.
#[no_mangle]
pub unsafe extern "C" fn ringlog_client_fetch(
    client: *mut ringlog_client,
    partition: u32,
    offset: u64,
    consistency: u32,
    wait_ms: u32,
    buf: *mut c_void,
    cap: usize,
    out_len: *mut usize,
    out_next_offset: *mut u64,
) -> ringlog_status {
    ffi(|| {
        // SAFETY: the out-parameters are NULL or writable per the caller's contract.
        unsafe { begin_read(out_len, out_next_offset, offset)? };
        refuse_in_callback("ringlog_client_fetch")?;
        let entry = CLIENTS.get(client.addr())?;
        with_handle(&entry.poison, || {
            let consistency = consistency_from_c(consistency)?;
            // SAFETY: forwarded caller contract on `buf`/`cap`.
            let buf = unsafe { buffer_from_c(buf, cap)? };
            // At least one whole batch of records past any control batches (a Raft no-op
            // holds no record and may come first), so that the first record is always looked
            // at: a too-small buffer then learns the size it needs, and a small one still
            // makes progress.
            let max_bytes = RINGLOG_CLIENT_FETCH_BYTES_MAX;
            let wait = Duration::from_millis(u64::from(wait_ms.min(RINGLOG_READ_WAIT_MS_MAX)));
            let reply = entry
                .client
                .fetch(PartitionId(partition), Offset(offset), max_bytes, wait, consistency)
                .map_err(client_error)?;
            // SAFETY: `out_len`/`out_next_offset` were checked non-NULL above.
            unsafe {
                deliver_read(&reply.batches, offset, BATCH_SIZE_MAX, buf, out_len, out_next_offset)
            }
        })
    })
}

/// Reads the cluster's metadata (fresh, from a node that answers) into `infos`: one
/// `ringlog_partition_info` per partition, in partition order. `info_size` is
/// `sizeof(ringlog_partition_info)` (the array's stride); `cap` is how many the array holds.
/// `*out_count` receives the number of partitions; when `cap` is smaller, nothing is written
/// and the call answers `RINGLOG_ERR_BUFFER_TOO_SMALL` (`infos` NULL and `cap` 0 asks).
///
/// Errors: `RINGLOG_ERR_BUFFER_TOO_SMALL`, `RINGLOG_ERR_BAD_STRUCT_SIZE`,
/// `RINGLOG_ERR_UNAVAILABLE`, `RINGLOG_ERR_PROTOCOL`, `RINGLOG_ERR_NULL_POINTER`,
/// `RINGLOG_ERR_INVALID_ARGUMENT` (`cap * info_size` overflows), the handle errors.
///
/// # Safety
/// `infos` must point to `cap * info_size` writable bytes (unless `cap` is 0); `out_count`
/// writable.
#[no_mangle]
pub unsafe extern "C" fn ringlog_client_metadata(
    client: *mut ringlog_client,
    infos: *mut ringlog_partition_info,
    info_size: usize,
    cap: usize,
    out_count: *mut usize,
) -> ringlog_status {
    ffi(|| {
        if out_count.is_null() {
            return Err(Error::null("out_count"));
        }
        // SAFETY: non-NULL and writable per the caller's contract.
        unsafe { out_count.write(0) };
        refuse_in_callback("ringlog_client_metadata")?;
        let entry = CLIENTS.get(client.addr())?;
        with_handle(&entry.poison, || {
            if info_size < PARTITION_INFO_V1_SIZE || info_size > u32::MAX as usize {
                return Err(crate::log::bad_size(
                    "ringlog_partition_info",
                    info_size,
                    PARTITION_INFO_V1_SIZE,
                ));
            }
            if cap != 0 && infos.is_null() {
                return Err(Error::null("infos"));
            }
            if cap.checked_mul(info_size).is_none_or(|bytes| bytes > isize::MAX as usize) {
                return Err(Error::invalid(format!("cap {cap} × info_size {info_size} overflows")));
            }
            let metadata = entry.client.metadata().map_err(client_error)?;
            let rows = partition_infos(&metadata);
            // SAFETY: as above.
            unsafe { out_count.write(rows.len()) };
            if rows.len() > cap {
                return Err(Error::new(
                    RINGLOG_ERR_BUFFER_TOO_SMALL,
                    format!("the cluster has {} partitions; infos holds {cap}", rows.len()),
                ));
            }
            for (i, row) in rows.iter().enumerate() {
                // SAFETY: i < cap, so `i * info_size + info_size` ≤ the caller's
                // `cap * info_size` writable bytes (overflow checked above).
                let slot = unsafe { infos.cast::<u8>().add(i * info_size) }
                    .cast::<ringlog_partition_info>();
                // SAFETY: `info_size` writable bytes at `slot` (as above).
                unsafe {
                    write_sized(
                        slot,
                        info_size,
                        PARTITION_INFO_V1_SIZE,
                        row,
                        "ringlog_partition_info",
                    )?
                };
            }
            Ok(())
        })
    })
}

/// Closes the client: its connections are closed (once calls still running on other threads
/// return) and the handle is dead. A second close is `RINGLOG_ERR_BAD_HANDLE`.
///
/// Errors: `RINGLOG_ERR_NULL_POINTER`, `RINGLOG_ERR_BAD_HANDLE`, `RINGLOG_ERR_FORKED`.
///
/// # Safety
/// None beyond passing a handle value (any value is checked, never dereferenced).
#[no_mangle]
pub unsafe extern "C" fn ringlog_client_close(client: *mut ringlog_client) -> ringlog_status {
    ffi(|| {
        let entry = CLIENTS.remove(client.addr())?;
        drop(entry);
        Ok(())
    })
}

/// The metadata as C rows, in partition order.
fn partition_infos(metadata: &MetadataResponse) -> Vec<ringlog_partition_info> {
    let mut rows: Vec<ringlog_partition_info> = metadata
        .partitions
        .iter()
        .map(|p| {
            let mut leader_address = [0 as c_char; RINGLOG_ADDRESS_BYTES];
            if let Some(address) = p.address {
                let text = address.to_string();
                // An "ip:port" is at most 54 bytes: it always fits with its NUL.
                for (slot, byte) in
                    leader_address.iter_mut().zip(text.bytes().take(RINGLOG_ADDRESS_BYTES - 1))
                {
                    *slot = byte as c_char;
                }
            }
            ringlog_partition_info {
                partition: p.partition.0,
                shard: u32::from(p.shard.0),
                leader_id: p.leader.map_or(0, |node| node.0),
                _reserved: 0,
                term: if p.leader.is_some() { p.term.0 } else { 0 },
                leader_address,
            }
        })
        .collect();
    rows.sort_by_key(|row| row.partition);
    rows
}

/// The caller's options (NULL: defaults), size-checked.
///
/// # Safety
/// `options` NULL or pointing to `options->size` readable bytes.
unsafe fn read_client_options(
    options: *const ringlog_client_options,
) -> Result<ringlog_client_options, Error> {
    if options.is_null() {
        return Ok(ringlog_client_options::default());
    }
    // SAFETY: non-NULL; its first field is the caller's size (caller's contract).
    let size = unsafe { std::ptr::read_unaligned(options.cast::<u32>()) } as usize;
    // SAFETY: `size` readable bytes per the caller's contract.
    unsafe { read_sized(options, size, CLIENT_OPTIONS_V1_SIZE, "ringlog_client_options") }
}

/// A NUL-terminated string of at most [`RINGLOG_CLIENT_BOOTSTRAP_BYTES_MAX`] bytes, UTF-8.
///
/// # Safety
/// `text` non-NULL and NUL-terminated.
unsafe fn bounded_str<'a>(text: *const c_char, name: &str) -> Result<&'a str, Error> {
    let max = RINGLOG_CLIENT_BOOTSTRAP_BYTES_MAX as usize;
    // Look for the NUL within the limit only: an unterminated string is not read past it.
    // SAFETY: NUL-terminated per the caller's contract, so every byte up to the NUL is
    // readable; we stop at the NUL or at `max + 1` bytes, whichever comes first.
    let len = (0..=max).find(|&i| unsafe { *text.add(i) } == 0).ok_or_else(|| {
        Error::invalid(format!(
            "{name} is longer than {max} bytes (RINGLOG_CLIENT_BOOTSTRAP_BYTES_MAX)"
        ))
    })?;
    // SAFETY: `len` readable bytes before the NUL found above.
    let bytes = unsafe { std::slice::from_raw_parts(text.cast::<u8>(), len) };
    let text = std::str::from_utf8(bytes)
        .map_err(|_| Error::invalid(format!("{name} is not valid UTF-8")))?;
    if text.trim().is_empty() {
        return Err(Error::invalid(format!("{name} is empty (expected host:port,...)")));
    }
    Ok(text)
}

fn timeout(ms: u32, name: &str) -> Result<Duration, Error> {
    if ms == 0 || ms > RINGLOG_CLIENT_TIMEOUT_MS_MAX {
        return Err(Error::invalid(format!(
            "{name} = {ms}: must be 1..={RINGLOG_CLIENT_TIMEOUT_MS_MAX} \
             (ringlog_client_options_init sets the defaults)"
        )));
    }
    Ok(Duration::from_millis(u64::from(ms)))
}

/// The TLS settings of the options (None: plaintext).
///
/// # Safety
/// The option strings NULL or NUL-terminated.
unsafe fn client_tls(options: &ringlog_client_options) -> Result<Option<ClientTls>, Error> {
    let optional = |ptr: *const c_char, name: &str| {
        // SAFETY: forwarded caller contract.
        (!ptr.is_null()).then(|| unsafe { path_from_c(ptr, name) }).transpose()
    };
    let ca = optional(options.tls_ca_file, "tls_ca_file")?;
    let cert = optional(options.tls_cert_file, "tls_cert_file")?;
    let key = optional(options.tls_key_file, "tls_key_file")?;
    let server_name = if options.tls_server_name.is_null() {
        None
    } else {
        // SAFETY: non-NULL and NUL-terminated per the caller's contract.
        let text = unsafe { CStr::from_ptr(options.tls_server_name) };
        let text =
            text.to_str().map_err(|_| Error::invalid("tls_server_name is not valid UTF-8"))?;
        Some(ServerName::try_from(text.to_string()).map_err(|error| {
            Error::invalid(format!("tls_server_name \"{text}\" is not a valid name: {error}"))
        })?)
    };
    let Some(ca) = ca else {
        if cert.is_some() || key.is_some() || server_name.is_some() {
            return Err(Error::invalid(
                "tls_cert_file, tls_key_file and tls_server_name need tls_ca_file (TLS is on \
                 only with a CA to verify the nodes against)",
            ));
        }
        return Ok(None);
    };
    let identity = match (cert, key) {
        (Some(cert), Some(key)) => Some((
            read_certs("tls_cert_file", &cert).map_err(tls_error)?,
            read_key("tls_key_file", &key).map_err(tls_error)?,
        )),
        (None, None) => None,
        _ => {
            return Err(Error::invalid(
                "tls_cert_file and tls_key_file go together: set both or neither",
            ))
        }
    };
    let roots = read_certs("tls_ca_file", &ca).map_err(tls_error)?;
    let config = client_config(roots, identity).map_err(tls_error)?;
    let mut tls = ClientTls::new(config);
    if let Some(name) = server_name {
        tls.server_name = name;
    }
    Ok(Some(tls))
}

fn tls_error(error: TlsError) -> Error {
    Error::new(RINGLOG_ERR_CONFIG, format!("TLS: {error}"))
}

/// The status and message of a failed client call.
fn client_error(error: ClientError) -> Error {
    let status = match &error {
        ClientError::NoBootstrap | ClientError::Resolve { .. } => RINGLOG_ERR_INVALID_ARGUMENT,
        ClientError::Connect { .. }
        | ClientError::Io { .. }
        | ClientError::RetriesExhausted { .. }
        // No leader known after every retry: none elected in time, or no node answered the
        // metadata request (the message says which).
        | ClientError::NoLeader { .. } => RINGLOG_ERR_UNAVAILABLE,
        ClientError::Indeterminate { .. } => RINGLOG_ERR_INDETERMINATE,
        ClientError::Frame { .. }
        | ClientError::Protocol { .. }
        | ClientError::UnexpectedResponse { .. }
        | ClientError::RequestIdMismatch { .. } => RINGLOG_ERR_PROTOCOL,
        ClientError::UnknownPartition { .. } => RINGLOG_ERR_UNKNOWN_PARTITION,
        ClientError::EmptyBatch => RINGLOG_ERR_EMPTY_APPEND,
        ClientError::Batch(_) => RINGLOG_ERR_OVERSIZE,
        ClientError::CorruptBatch { .. } => RINGLOG_ERR_CORRUPTION,
        ClientError::Server { reply, .. } => reply_status(reply),
        _ => RINGLOG_ERR_INTERNAL,
    };
    Error::new(status, error.to_string())
}

/// The status of a node's error reply that the client returned as is.
fn reply_status(reply: &ErrorReply) -> ringlog_status {
    match reply {
        ErrorReply::NotLeader { .. } => RINGLOG_ERR_NOT_LEADER,
        ErrorReply::UnknownPartition { .. } => RINGLOG_ERR_UNKNOWN_PARTITION,
        ErrorReply::OffsetOutOfRange { .. } => RINGLOG_ERR_OFFSET_OUT_OF_RANGE,
        ErrorReply::Backpressure { .. } => RINGLOG_ERR_BACKPRESSURE,
        ErrorReply::Oversize { .. } => RINGLOG_ERR_OVERSIZE,
        ErrorReply::Malformed { .. }
        | ErrorReply::WrongCluster { .. }
        | ErrorReply::UnsupportedVersion { .. } => RINGLOG_ERR_PROTOCOL,
        ErrorReply::Timeout => RINGLOG_ERR_TIMEOUT,
        ErrorReply::ShuttingDown => RINGLOG_ERR_UNAVAILABLE,
        ErrorReply::StorageFailed { .. } => RINGLOG_ERR_STORAGE_FAILED,
        ErrorReply::StorageFull { .. } => RINGLOG_ERR_STORAGE_FULL,
        ErrorReply::Rejected { .. } | ErrorReply::Unauthorized { .. } => RINGLOG_ERR_REJECTED,
        ErrorReply::Internal { .. } => RINGLOG_ERR_INTERNAL,
        #[allow(unreachable_patterns)]
        _ => RINGLOG_ERR_INTERNAL,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::RINGLOG_READ_LINEARIZABLE;

    #[test]
    fn every_client_error_maps_to_its_typed_status() {
        let addr: std::net::SocketAddr = "127.0.0.1:1".parse().unwrap();
        let io = || std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        let cases = [
            (
                ClientError::Indeterminate { addr, reason: "reset".into() },
                RINGLOG_ERR_INDETERMINATE,
            ),
            (ClientError::Connect { addr, source: io() }, RINGLOG_ERR_UNAVAILABLE),
            (ClientError::Io { addr, source: io() }, RINGLOG_ERR_UNAVAILABLE),
            (
                ClientError::NoLeader {
                    partition: PartitionId(1),
                    attempts: 3,
                    elapsed: Duration::from_secs(1),
                    last: "x".into(),
                },
                RINGLOG_ERR_UNAVAILABLE,
            ),
            (
                ClientError::UnknownPartition { partition: PartitionId(9), partitions: 2 },
                RINGLOG_ERR_UNKNOWN_PARTITION,
            ),
            (ClientError::Server { addr, reply: ErrorReply::Timeout }, RINGLOG_ERR_TIMEOUT),
            (
                ClientError::Server {
                    addr,
                    reply: ErrorReply::OffsetOutOfRange {
                        partition: PartitionId(0),
                        requested: Offset(9),
                        log_start: Offset(0),
                        log_end: Offset(3),
                    },
                },
                RINGLOG_ERR_OFFSET_OUT_OF_RANGE,
            ),
        ];
        for (error, status) in cases {
            let text = error.to_string();
            let mapped = client_error(error);
            assert_eq!(mapped.status, status, "{text}");
            assert_eq!(mapped.message, text);
        }
    }

    /// A live TCP port with nothing listening (bound, then closed).
    fn refused_address() -> String {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap().to_string();
        drop(listener);
        address
    }

    #[test]
    fn calls_to_an_unreachable_cluster_are_unavailable_and_misuse_is_a_status() {
        let mut options = ringlog_client_options::default();
        // SAFETY: a valid, writable options struct of its own size.
        let status =
            unsafe { ringlog_client_options_init(&mut options, std::mem::size_of_val(&options)) };
        assert_eq!(status, RINGLOG_OK);
        options.connect_timeout_ms = 200;
        options.metadata_timeout_ms = 200;
        options.retry_time_max_ms = 300;
        options.attempts_max = 3;
        let bootstrap = std::ffi::CString::new(refused_address()).unwrap();
        let mut client = std::ptr::null_mut();
        // SAFETY: valid C string, options and out pointer.
        let status = unsafe { ringlog_client_connect(bootstrap.as_ptr(), &options, &mut client) };
        assert_eq!(status, RINGLOG_OK);
        assert!(!client.is_null());

        let value = *b"v";
        let record = ringlog_record { data: value.as_ptr(), len: 1 };
        let mut base = u64::MAX;
        // SAFETY: valid handle, record and out pointer.
        let status = unsafe {
            ringlog_client_produce(
                client,
                0,
                RINGLOG_ACKS_QUORUM,
                &record,
                1,
                &mut base,
                std::ptr::null_mut(),
            )
        };
        assert_eq!(status, RINGLOG_ERR_UNAVAILABLE);
        assert_eq!(base, u64::MAX, "nothing written on failure");
        let (mut buf, mut len, mut next) = ([0u8; 64], 0usize, 0u64);
        // SAFETY: valid handle, buffer and out pointers.
        let status = unsafe {
            ringlog_client_fetch(
                client,
                0,
                0,
                RINGLOG_READ_LINEARIZABLE,
                0,
                buf.as_mut_ptr().cast(),
                buf.len(),
                &mut len,
                &mut next,
            )
        };
        assert_eq!(status, RINGLOG_ERR_UNAVAILABLE);
        let mut count = 7usize;
        // SAFETY: valid handle; `cap` 0 asks.
        let status = unsafe {
            ringlog_client_metadata(
                client,
                std::ptr::null_mut(),
                PARTITION_INFO_V1_SIZE,
                0,
                &mut count,
            )
        };
        assert_eq!(status, RINGLOG_ERR_UNAVAILABLE);
        assert_eq!(count, 0);
        // SAFETY: the handle from connect; then a dead one (checked, never dereferenced).
        unsafe {
            assert_eq!(ringlog_client_close(client), RINGLOG_OK);
            assert_eq!(ringlog_client_close(client), RINGLOG_ERR_BAD_HANDLE);
        }
    }

    #[test]
    fn connect_refuses_bad_bootstraps_options_and_tls_settings() {
        let connect = |bootstrap: &[u8], options: Option<&ringlog_client_options>| {
            let bootstrap = std::ffi::CString::new(bootstrap).unwrap();
            let mut client = std::ptr::dangling_mut();
            let options = options.map_or(std::ptr::null(), |o| o as *const _);
            // SAFETY: valid C string, options (or NULL) and out pointer.
            let status =
                unsafe { ringlog_client_connect(bootstrap.as_ptr(), options, &mut client) };
            assert!(client.is_null(), "out_client is NULL on failure");
            status
        };
        let long = vec![b'x'; RINGLOG_CLIENT_BOOTSTRAP_BYTES_MAX as usize + 1];
        assert_eq!(connect(&long, None), RINGLOG_ERR_INVALID_ARGUMENT);
        assert_eq!(connect(b" , ", None), RINGLOG_ERR_INVALID_ARGUMENT);
        let options = ringlog_client_options {
            attempts_max: RINGLOG_CLIENT_ATTEMPTS_MAX + 1,
            ..Default::default()
        };
        assert_eq!(connect(b"127.0.0.1:1", Some(&options)), RINGLOG_ERR_INVALID_ARGUMENT);
        let options = ringlog_client_options {
            retry_time_max_ms: RINGLOG_CLIENT_TIMEOUT_MS_MAX + 1,
            ..Default::default()
        };
        assert_eq!(connect(b"127.0.0.1:1", Some(&options)), RINGLOG_ERR_INVALID_ARGUMENT);
        let dir = tempfile::tempdir().unwrap();
        let not_pem = dir.path().join("ca.pem");
        std::fs::write(&not_pem, "not a certificate").unwrap();
        let path = std::ffi::CString::new(not_pem.to_str().unwrap()).unwrap();
        let mut options =
            ringlog_client_options { tls_ca_file: path.as_ptr(), ..Default::default() };
        assert_eq!(connect(b"127.0.0.1:1", Some(&options)), RINGLOG_ERR_CONFIG);
        options.tls_key_file = path.as_ptr();
        assert_eq!(connect(b"127.0.0.1:1", Some(&options)), RINGLOG_ERR_INVALID_ARGUMENT);
        // A newer, larger struct is accepted with its unknown tail zero, refused otherwise.
        #[repr(C)]
        struct Newer {
            options: ringlog_client_options,
            extra: u64,
        }
        let mut newer = Newer { options: ringlog_client_options::default(), extra: 0 };
        newer.options.size = std::mem::size_of::<Newer>() as u32;
        let mut client = std::ptr::null_mut();
        // SAFETY: `size` readable bytes at the pointer (the whole `Newer`).
        let status =
            unsafe { ringlog_client_connect(c"127.0.0.1:1".as_ptr(), &newer.options, &mut client) };
        assert_eq!(status, RINGLOG_OK);
        // SAFETY: the handle from connect.
        assert_eq!(unsafe { ringlog_client_close(client) }, RINGLOG_OK);
        newer.extra = 1;
        // SAFETY: as above.
        let status =
            unsafe { ringlog_client_connect(c"127.0.0.1:1".as_ptr(), &newer.options, &mut client) };
        assert_eq!(status, RINGLOG_ERR_BAD_STRUCT_SIZE);
    }
}
