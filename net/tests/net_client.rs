//! The blocking `Client`'s routing, retry and bounds logic, against a tiny fake node on std
//! `TcpListener`s that speaks the frame protocol. (The real node is exercised by the root
//! package's cluster tests, tests/cluster/.)

#![cfg(feature = "client")]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use ringlog_format::batch::decode_batch;
use ringlog_net::admin::AdminToken;
use ringlog_net::client::{
    build_batch, decode_records, shard_address, Client, ClientConfig, ClientError, Completion,
};
use ringlog_net::frame::{encode_header, FrameDecoder, FrameKind};
use ringlog_net::limits::FRAME_BODY_SIZE_MAX;
use ringlog_net::protocol::PartitionMetadata;
use ringlog_net::{
    Acks, ClusterId, Consistency, ErrorReply, FetchResponse, MetadataResponse, Offset, PartitionId,
    ProduceResponse, Request, RequestId, Response, ShardId,
};
use ringlog_raft::{MembershipChange, NodeId, Term};
use zerocopy::IntoBytes;

/// What the fake node does with one request.
enum Reply {
    Respond(Response),
    /// Close the connection without answering (after reading the request).
    Close,
    /// Never answer (the connection stays open).
    Silence,
    /// Write these bytes verbatim.
    Raw(Vec<u8>),
}

type Handler = dyn Fn(usize, &Request) -> Reply + Send + Sync;

/// A fake node: `shards` listeners on consecutive ports; every request is recorded with the
/// shard it arrived on, then answered by `handler(shard, request)`.
struct FakeNode {
    addrs: Vec<SocketAddr>,
    seen: Arc<Mutex<Vec<(usize, Request)>>>,
    accepts: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl FakeNode {
    fn start(
        shards: usize,
        handler: impl Fn(usize, &Request) -> Reply + Send + Sync + 'static,
    ) -> Self {
        let listeners = bind_consecutive(shards);
        let addrs: Vec<SocketAddr> = listeners.iter().map(|l| l.local_addr().unwrap()).collect();
        let handler: Arc<Handler> = Arc::new(handler);
        let seen = Arc::new(Mutex::new(Vec::new()));
        let accepts = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        for (shard, listener) in listeners.into_iter().enumerate() {
            let (handler, seen, accepts, stop) =
                (handler.clone(), seen.clone(), accepts.clone(), stop.clone());
            listener.set_nonblocking(true).unwrap();
            thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((stream, _)) => {
                            accepts.fetch_add(1, Ordering::Relaxed);
                            let (handler, seen) = (handler.clone(), seen.clone());
                            thread::spawn(move || serve(shard, stream, &*handler, &seen));
                        }
                        Err(_) => thread::sleep(Duration::from_millis(2)),
                    }
                }
            });
        }
        FakeNode { addrs, seen, accepts, stop }
    }

    fn requests(&self) -> Vec<(usize, Request)> {
        self.seen.lock().unwrap().clone()
    }

    fn produces(&self) -> usize {
        self.requests().iter().filter(|(_, r)| matches!(r, Request::Produce(_))).count()
    }
}

impl Drop for FakeNode {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn bind_consecutive(count: usize) -> Vec<TcpListener> {
    for _ in 0..100 {
        let first = TcpListener::bind("127.0.0.1:0").unwrap();
        let base = first.local_addr().unwrap().port();
        let mut all = vec![first];
        for s in 1..count {
            match TcpListener::bind(("127.0.0.1", base + s as u16)) {
                Ok(l) => all.push(l),
                Err(_) => break,
            }
        }
        if all.len() == count {
            return all;
        }
    }
    panic!("no {count} consecutive free ports");
}

fn serve(
    shard: usize,
    mut stream: TcpStream,
    handler: &Handler,
    seen: &Mutex<Vec<(usize, Request)>>,
) {
    let mut decoder = FrameDecoder::new(FRAME_BODY_SIZE_MAX);
    let mut buf = BytesMut::new();
    let mut chunk = [0u8; 64 * 1024];
    loop {
        let frame = match decoder.decode(&mut buf) {
            Ok(Some(frame)) => frame,
            Ok(None) => match stream.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    buf.extend_from_slice(&chunk[..n]);
                    continue;
                }
            },
            Err(_) => return,
        };
        let request = Request::decode(&frame).expect("the client sends valid requests");
        seen.lock().unwrap().push((shard, request.clone()));
        match handler(shard, &request) {
            Reply::Respond(response) => {
                let bytes = response.encode(frame.request_id).to_bytes();
                if stream.write_all(&bytes).is_err() {
                    return;
                }
            }
            Reply::Close => return,
            Reply::Silence => {
                thread::sleep(Duration::from_secs(30));
                return;
            }
            Reply::Raw(bytes) => {
                let _ = stream.write_all(&bytes);
            }
        }
    }
}

fn metadata(shards: u16, leaders: &[(u32, Option<SocketAddr>)]) -> Response {
    Response::Metadata(MetadataResponse {
        cluster: ClusterId(7),
        shards,
        partitions: leaders
            .iter()
            .map(|&(p, address)| PartitionMetadata {
                partition: PartitionId(p),
                shard: ShardId((p % u32::from(shards)) as u16),
                leader: address.map(|_| NodeId(1)),
                term: Term(3),
                address,
            })
            .collect(),
    })
}

fn produced(partition: PartitionId) -> Response {
    Response::Produce(ProduceResponse {
        partition,
        base_offset: Offset(10),
        last_offset: Offset(11),
        commit: Offset(12),
    })
}

/// `NotLeader` for `partition`, naming node 2 at `leader` as the leader when given.
fn not_leader(partition: PartitionId, leader: Option<SocketAddr>) -> Response {
    Response::Error(ErrorReply::NotLeader {
        partition,
        leader: leader.map(|_| NodeId(2)),
        address: leader,
    })
}

fn fast_config(bootstrap: Vec<SocketAddr>) -> ClientConfig {
    ClientConfig {
        request_timeout: Duration::from_secs(5),
        backoff_initial: Duration::from_millis(1),
        backoff_max: Duration::from_millis(20),
        ..ClientConfig::new(bootstrap)
    }
}

/// A node whose metadata names `leader` for every partition and that answers requests by
/// `handler` (metadata requests are answered here).
fn node_with_metadata(
    shards: u16,
    partitions: u32,
    leader: Arc<Mutex<Option<SocketAddr>>>,
    handler: impl Fn(usize, &Request) -> Reply + Send + Sync + 'static,
) -> FakeNode {
    FakeNode::start(shards as usize, move |shard, request| match request {
        Request::Metadata { .. } => {
            let leader = *leader.lock().unwrap();
            let leaders: Vec<_> = (0..partitions)
                .map(|p| (p, leader.map(|a| shard_address(a, PartitionId(p), shards))))
                .collect();
            Reply::Respond(metadata(shards, &leaders))
        }
        other => handler(shard, other),
    })
}

#[test]
fn produce_follows_the_not_leader_hint_to_the_leader() {
    let leader = FakeNode::start(1, |_, request| match request {
        Request::Produce(p) => Reply::Respond(produced(p.partition)),
        _ => Reply::Close,
    });
    let leader_addr = leader.addrs[0];
    let believed = Arc::new(Mutex::new(None));
    let follower = FakeNode::start(1, move |_, request| match request {
        Request::Produce(p) => Reply::Respond(not_leader(p.partition, Some(leader_addr))),
        _ => Reply::Close,
    });
    *believed.lock().unwrap() = Some(follower.addrs[0]);
    let bootstrap = node_with_metadata(1, 4, believed, |_, _| Reply::Close);
    let client = Client::new(fast_config(vec![bootstrap.addrs[0]])).unwrap();

    let response = client.produce(PartitionId(2), Acks::Quorum, &[b"a", b"b"]).unwrap();

    assert_eq!(response.base_offset, Offset(10));
    assert_eq!(follower.produces(), 1);
    assert_eq!(leader.produces(), 1);
    // The route is remembered: the next produce goes straight to the leader.
    client.produce(PartitionId(2), Acks::Quorum, &[b"c"]).unwrap();
    assert_eq!(follower.produces(), 1);
    assert_eq!(leader.produces(), 2);
}

#[test]
fn not_leader_without_a_hint_rereads_the_metadata() {
    let leader = FakeNode::start(1, |_, request| match request {
        Request::Produce(p) => Reply::Respond(produced(p.partition)),
        _ => Reply::Close,
    });
    let believed = Arc::new(Mutex::new(None));
    let follower = FakeNode::start(1, |_, request| match request {
        Request::Produce(p) => Reply::Respond(not_leader(p.partition, None)),
        _ => Reply::Close,
    });
    *believed.lock().unwrap() = Some(follower.addrs[0]);
    let believed_in_node = believed.clone();
    let leader_addr = leader.addrs[0];
    let bootstrap = node_with_metadata(1, 1, believed.clone(), move |_, _| Reply::Close);
    let client = Client::new(fast_config(vec![bootstrap.addrs[0]])).unwrap();
    // Warm the route with the follower, then move the leadership.
    client.metadata().unwrap();
    *believed_in_node.lock().unwrap() = Some(leader_addr);

    client.produce(PartitionId(0), Acks::Leader, &[b"x"]).unwrap();

    assert_eq!(follower.produces(), 1);
    assert_eq!(leader.produces(), 1);
    let metadata_calls =
        bootstrap.requests().iter().filter(|(_, r)| matches!(r, Request::Metadata { .. })).count();
    assert_eq!(metadata_calls, 2, "one at warm-up, one after the hintless NotLeader");
}

/// A node cut off from the others knows no leader while the majority has elected one: a
/// client whose first bootstrap node is that node must ask the next one rather than wait for
/// the cut to heal (found by the nemesis's `partition` event: a partition had no
/// acknowledgement for 6.6 s while its new leader was serving).
#[test]
fn metadata_naming_no_leader_is_passed_over_for_another_nodes() {
    let leader = FakeNode::start(1, |_, request| match request {
        Request::Produce(p) => Reply::Respond(produced(p.partition)),
        _ => Reply::Close,
    });
    let cut_off = node_with_metadata(1, 1, Arc::new(Mutex::new(None)), |_, _| Reply::Close);
    let majority =
        node_with_metadata(1, 1, Arc::new(Mutex::new(Some(leader.addrs[0]))), |_, _| Reply::Close);
    let config = ClientConfig {
        retry_time_max: Duration::from_secs(2),
        ..fast_config(vec![cut_off.addrs[0], majority.addrs[0]])
    };
    let client = Client::new(config).unwrap();

    let response = client.produce(PartitionId(0), Acks::Quorum, &[b"a"]).unwrap();

    assert_eq!(response.base_offset, Offset(10));
    assert_eq!(leader.produces(), 1);
    let asked = |node: &FakeNode| {
        node.requests().iter().filter(|(_, r)| matches!(r, Request::Metadata { .. })).count()
    };
    assert_eq!(asked(&cut_off), 1, "the cut-off node was asked once");
    assert_eq!(asked(&majority), 1, "then the next node, which names the leader");
}

#[test]
fn backpressure_is_retried_at_the_same_node_after_the_hinted_delay() {
    let calls = Arc::new(AtomicUsize::new(0));
    let calls_in = calls.clone();
    let node =
        node_with_metadata(1, 1, Arc::new(Mutex::new(None)), move |_, request| match request {
            Request::Produce(p) if calls_in.fetch_add(1, Ordering::SeqCst) < 2 => {
                let _ = p;
                Reply::Respond(Response::Error(ErrorReply::Backpressure { retry_after_ms: 30 }))
            }
            Request::Produce(p) => Reply::Respond(produced(p.partition)),
            _ => Reply::Close,
        });
    // The metadata names the node itself as leader.
    let me = node.addrs[0];
    let leader = Arc::new(Mutex::new(Some(me)));
    let node2 = node_with_metadata(1, 1, leader, |_, _| Reply::Close);
    let client = Client::new(fast_config(vec![node2.addrs[0]])).unwrap();
    let started = Instant::now();

    client.produce(PartitionId(0), Acks::Quorum, &[b"v"]).unwrap();

    assert_eq!(node.produces(), 3);
    assert!(started.elapsed() >= Duration::from_millis(60), "waited the hinted 2 x 30 ms");
}

#[test]
fn retries_are_bounded_when_no_node_ever_leads() {
    let believed = Arc::new(Mutex::new(None));
    let node = node_with_metadata(1, 1, believed.clone(), |_, request| match request {
        Request::Produce(p) => Reply::Respond(not_leader(p.partition, None)),
        _ => Reply::Close,
    });
    *believed.lock().unwrap() = Some(node.addrs[0]);
    let config = ClientConfig { attempts_max: 5, ..fast_config(vec![node.addrs[0]]) };
    let client = Client::new(config).unwrap();

    let error = client.produce(PartitionId(0), Acks::Quorum, &[b"v"]).unwrap_err();

    assert!(matches!(error, ClientError::NoLeader { attempts: 5, .. }), "{error}");
    assert_eq!(node.produces(), 5);
}

#[test]
fn produce_is_not_retried_once_the_connection_drops_after_sending() {
    let believed = Arc::new(Mutex::new(None));
    let node = node_with_metadata(1, 1, believed.clone(), |_, request| match request {
        Request::Produce(_) => Reply::Close,
        _ => Reply::Close,
    });
    *believed.lock().unwrap() = Some(node.addrs[0]);
    let client = Client::new(fast_config(vec![node.addrs[0]])).unwrap();

    let error = client.produce(PartitionId(0), Acks::Quorum, &[b"v"]).unwrap_err();

    assert!(matches!(error, ClientError::Indeterminate { .. }), "{error}");
    assert_eq!(node.produces(), 1, "an indeterminate produce must not be resent");
}

#[test]
fn a_timeout_reply_to_a_produce_is_indeterminate_not_retried() {
    let believed = Arc::new(Mutex::new(None));
    let node = node_with_metadata(1, 1, believed.clone(), |_, _| {
        Reply::Respond(Response::Error(ErrorReply::Timeout))
    });
    *believed.lock().unwrap() = Some(node.addrs[0]);
    let client = Client::new(fast_config(vec![node.addrs[0]])).unwrap();

    let error = client.produce(PartitionId(0), Acks::Quorum, &[b"v"]).unwrap_err();

    assert!(matches!(error, ClientError::Indeterminate { .. }), "{error}");
    assert_eq!(node.produces(), 1);
}

#[test]
fn fetch_is_retried_after_the_connection_drops() {
    let calls = Arc::new(AtomicUsize::new(0));
    let calls_in = calls.clone();
    let believed = Arc::new(Mutex::new(None));
    let node = node_with_metadata(1, 1, believed.clone(), move |_, request| match request {
        Request::Fetch(_) if calls_in.fetch_add(1, Ordering::SeqCst) == 0 => Reply::Close,
        Request::Fetch(f) => Reply::Respond(Response::Fetch(FetchResponse {
            partition: f.partition,
            log_start: Offset(0),
            commit: Offset(0),
            batches: vec![],
        })),
        _ => Reply::Close,
    });
    *believed.lock().unwrap() = Some(node.addrs[0]);
    let client = Client::new(fast_config(vec![node.addrs[0]])).unwrap();

    let response = client
        .fetch(PartitionId(0), Offset(0), 1 << 20, Duration::ZERO, Consistency::ReplicaCommitted)
        .unwrap();

    assert!(response.batches.is_empty());
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[test]
fn a_dead_bootstrap_address_falls_through_to_the_next() {
    let dead = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let believed = Arc::new(Mutex::new(None));
    let node = node_with_metadata(1, 3, believed.clone(), |_, request| match request {
        Request::Produce(p) => Reply::Respond(produced(p.partition)),
        _ => Reply::Close,
    });
    *believed.lock().unwrap() = Some(node.addrs[0]);
    let client = Client::new(fast_config(vec![dead, node.addrs[0]])).unwrap();

    let metadata = client.metadata().unwrap();
    client.produce(PartitionId(1), Acks::None, &[b"v"]).unwrap();

    assert_eq!(metadata.partitions.len(), 3);
}

#[test]
fn partitions_are_routed_to_their_owning_shard_port() {
    let believed = Arc::new(Mutex::new(None));
    let node = node_with_metadata(2, 4, believed.clone(), |_, request| match request {
        Request::Produce(p) => Reply::Respond(produced(p.partition)),
        _ => Reply::Close,
    });
    *believed.lock().unwrap() = Some(node.addrs[0]);
    let client = Client::new(fast_config(vec![node.addrs[0]])).unwrap();

    for p in 0..4 {
        client.produce(PartitionId(p), Acks::Quorum, &[b"v"]).unwrap();
    }
    let status_calls = client.node(node.addrs[0]).shard_address(PartitionId(3)).unwrap();

    let shards: Vec<(usize, u32)> = node
        .requests()
        .into_iter()
        .filter_map(|(s, r)| match r {
            Request::Produce(p) => Some((s, p.partition.0)),
            _ => None,
        })
        .collect();
    assert_eq!(shards, vec![(0, 0), (1, 1), (0, 2), (1, 3)]);
    assert_eq!(status_calls, node.addrs[1]);
}

#[test]
fn connections_are_pooled_and_reused() {
    let believed = Arc::new(Mutex::new(None));
    let node = node_with_metadata(1, 1, believed.clone(), |_, request| match request {
        Request::Produce(p) => Reply::Respond(produced(p.partition)),
        _ => Reply::Close,
    });
    *believed.lock().unwrap() = Some(node.addrs[0]);
    let client = Client::new(fast_config(vec![node.addrs[0]])).unwrap();

    for _ in 0..20 {
        client.produce(PartitionId(0), Acks::Quorum, &[b"v"]).unwrap();
    }

    assert_eq!(node.accepts.load(Ordering::Relaxed), 1, "metadata and produces share one");
}

#[test]
fn a_response_announcing_an_oversize_body_fails_before_any_allocation() {
    let huge = encode_header(FrameKind::ProduceResponse, RequestId(2), u32::MAX, 0);
    let bytes = huge.as_bytes().to_vec();
    let node = FakeNode::start(1, move |_, _| Reply::Raw(bytes.clone()));
    let client = Client::new(fast_config(vec![node.addrs[0]])).unwrap();

    let error =
        client.request_at(node.addrs[0], &Request::GroupStatus { partition: PartitionId(0) });

    assert!(matches!(error, Err(ClientError::Frame { .. })), "{error:?}");
}

#[test]
fn a_reply_with_another_request_id_is_rejected() {
    let node = FakeNode::start(1, |_, _| {
        Reply::Raw(
            Response::Error(ErrorReply::Timeout).encode(RequestId(999_999)).to_bytes().to_vec(),
        )
    });
    let client = Client::new(fast_config(vec![node.addrs[0]])).unwrap();

    let error =
        client.request_at(node.addrs[0], &Request::GroupStatus { partition: PartitionId(0) });

    assert!(matches!(error, Err(ClientError::RequestIdMismatch { .. })), "{error:?}");
}

#[test]
fn a_silent_node_hits_the_read_timeout() {
    let node = FakeNode::start(1, |_, _| Reply::Silence);
    let config = ClientConfig {
        request_timeout: Duration::from_millis(200),
        ..fast_config(vec![node.addrs[0]])
    };
    let client = Client::new(config).unwrap();
    let started = Instant::now();

    let read =
        client.request_at(node.addrs[0], &Request::GroupStatus { partition: PartitionId(0) });
    let produce = client.request_at(
        node.addrs[0],
        &Request::Produce(ringlog_net::ProduceRequest {
            partition: PartitionId(0),
            acks: Acks::Quorum,
            batch: build_batch(&[b"v"]).unwrap(),
        }),
    );

    assert!(matches!(read, Err(ClientError::Io { .. })), "a read times out: {read:?}");
    assert!(
        matches!(produce, Err(ClientError::Indeterminate { .. })),
        "a produce that timed out may have been applied: {produce:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(5), "took {:?}", started.elapsed());
}

#[test]
fn produce_sends_a_zero_stamped_batch_with_valid_checksums() {
    let believed = Arc::new(Mutex::new(None));
    let node = node_with_metadata(1, 1, believed.clone(), |_, request| match request {
        Request::Produce(p) => Reply::Respond(produced(p.partition)),
        _ => Reply::Close,
    });
    *believed.lock().unwrap() = Some(node.addrs[0]);
    let client = Client::new(fast_config(vec![node.addrs[0]])).unwrap();

    client.produce(PartitionId(0), Acks::Quorum, &[b"one", b"", b"three"]).unwrap();

    let batch = node
        .requests()
        .into_iter()
        .find_map(|(_, r)| match r {
            Request::Produce(p) => Some(p.batch),
            _ => None,
        })
        .unwrap();
    let view = decode_batch(&batch, 1 << 20).unwrap();
    let header = view.header();
    assert_eq!(header.record_count(), 3);
    assert_eq!((header.term().0, header.index().0, header.base_offset().0), (0, 0, 0));
    assert_eq!(view.header().prev_crc.get(), 0);
    let values: Vec<&[u8]> = view.records().collect();
    assert_eq!(values, vec![&b"one"[..], b"", b"three"]);
}

#[test]
fn decode_records_skips_records_below_the_start_and_rejects_corruption() {
    let batch = build_batch(&[b"a", b"b", b"c"]).unwrap();
    let addr: SocketAddr = "127.0.0.1:1".parse().unwrap();

    let records = decode_records(addr, std::slice::from_ref(&batch), Offset(1)).unwrap();
    assert_eq!(records.len(), 2);
    assert_eq!(records[0].offset, Offset(1));
    assert_eq!(&records[0].value[..], b"b");

    let mut bad = batch.to_vec();
    let last = bad.len() - 1;
    bad[last] ^= 0xFF;
    let error = decode_records(addr, &[bad.into()], Offset(0)).unwrap_err();
    assert!(matches!(error, ClientError::CorruptBatch { .. }), "{error}");
}

#[test]
fn empty_produce_is_refused_locally() {
    assert!(matches!(build_batch(&[]), Err(ClientError::EmptyBatch)));
}

#[test]
fn membership_change_carries_both_addresses_of_the_added_node() {
    let believed = Arc::new(Mutex::new(None));
    let node = node_with_metadata(1, 1, believed.clone(), |_, request| match request {
        Request::ChangeMembership { partition, .. } => Reply::Respond(Response::ChangeMembership {
            partition: *partition,
            index: ringlog_raft::LogIndex(9),
        }),
        _ => Reply::Close,
    });
    *believed.lock().unwrap() = Some(node.addrs[0]);
    let client = Client::new(fast_config(vec![node.addrs[0]])).unwrap();
    let peer: SocketAddr = "127.0.0.1:7204".parse().unwrap();
    let client_addr: SocketAddr = "127.0.0.1:7104".parse().unwrap();

    let index = client
        .change_membership(
            PartitionId(0),
            MembershipChange::AddLearner(NodeId(4)),
            Some((peer, client_addr)),
        )
        .unwrap();

    assert_eq!(index.0, 9);
    let sent = node.requests().into_iter().find_map(|(_, r)| match r {
        Request::ChangeMembership { peer, client, .. } => Some((peer, client)),
        _ => None,
    });
    assert_eq!(sent, Some((Some(peer), Some(client_addr))));
}

const ADMIN_TOKEN: &[u8] = b"fake-node-admin-token-01234";

/// A node that accepts `ADMIN_TOKEN` and answers transfers; anything else admin-related is
/// `Unauthorized`.
fn admin_node(believed: Arc<Mutex<Option<SocketAddr>>>) -> FakeNode {
    node_with_metadata(1, 1, believed, |_, request| match request {
        Request::Authenticate { credential } if &credential.token[..] == ADMIN_TOKEN => {
            Reply::Respond(Response::Authenticated)
        }
        Request::Authenticate { .. } => Reply::Respond(Response::Error(ErrorReply::Unauthorized {
            reason: "the admin token was refused".into(),
        })),
        Request::TransferLeader { partition, to } => {
            Reply::Respond(Response::TransferLeader { partition: *partition, to: *to })
        }
        Request::Produce(_) => Reply::Respond(produced(PartitionId(0))),
        _ => Reply::Close,
    })
}

#[test]
fn the_admin_token_is_presented_before_admin_requests_only() {
    let believed = Arc::new(Mutex::new(None));
    let node = admin_node(believed.clone());
    *believed.lock().unwrap() = Some(node.addrs[0]);
    let token = AdminToken::new(ADMIN_TOKEN).unwrap();
    let config = ClientConfig { admin_token: Some(token), ..fast_config(vec![node.addrs[0]]) };
    let client = Client::new(config).unwrap();

    client.produce(PartitionId(0), Acks::Quorum, &[b"x"]).unwrap();
    client.transfer_leader(PartitionId(0), NodeId(2)).unwrap();

    let sent: Vec<Request> = node
        .requests()
        .into_iter()
        .map(|(_, r)| r)
        .filter(|r| !matches!(r, Request::Metadata { .. }))
        .collect();
    assert_eq!(sent.len(), 3, "{sent:?}");
    assert!(matches!(sent[0], Request::Produce(_)), "no token before a produce: {sent:?}");
    match &sent[1] {
        Request::Authenticate { credential } => assert_eq!(&credential.token[..], ADMIN_TOKEN),
        other => panic!("the token comes first: {other:?}"),
    }
    assert!(matches!(sent[2], Request::TransferLeader { .. }), "{sent:?}");
}

#[test]
fn a_refused_token_is_returned_at_once_and_the_admin_request_is_never_sent() {
    let believed = Arc::new(Mutex::new(None));
    let node = admin_node(believed.clone());
    *believed.lock().unwrap() = Some(node.addrs[0]);
    let token = AdminToken::new(b"a-wrong-admin-token-xxxxxx").unwrap();
    let config = ClientConfig { admin_token: Some(token), ..fast_config(vec![node.addrs[0]]) };
    let client = Client::new(config).unwrap();

    let error = client.transfer_leader(PartitionId(0), NodeId(2)).unwrap_err();
    assert!(
        matches!(error.reply(), Some(ErrorReply::Unauthorized { reason }) if reason.contains("refused")),
        "{error}"
    );
    let authenticates =
        node.requests().iter().filter(|(_, r)| matches!(r, Request::Authenticate { .. })).count();
    assert_eq!(authenticates, 1, "not retried");
    assert!(
        !node.requests().iter().any(|(_, r)| matches!(r, Request::TransferLeader { .. })),
        "the transfer is not sent after a refused token"
    );
}

// ---- the pipelined producer (`Client::pipeline`) ----

/// `completion`'s outcome, failing the test if it takes longer than a generous bound (a lost
/// completion would otherwise hang the test).
fn wait_within(completion: Completion) -> Result<ProduceResponse, ClientError> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !completion.is_done() {
        assert!(Instant::now() < deadline, "a pipelined produce never completed");
        thread::sleep(Duration::from_millis(1));
    }
    completion.wait()
}

/// The values of every produce `node` received, in arrival order.
fn produced_values(node: &FakeNode) -> Vec<Vec<u8>> {
    node.requests()
        .into_iter()
        .filter_map(|(_, request)| match request {
            Request::Produce(p) => Some(p.batch),
            _ => None,
        })
        .flat_map(|batch| {
            let records = decode_records(node.addrs[0], &[batch], Offset(0)).unwrap();
            records.into_iter().map(|r| r.value.to_vec()).collect::<Vec<_>>()
        })
        .collect()
}

/// A leader that gives each produce the next offsets, in arrival order.
fn counting_leader() -> FakeNode {
    let next = Arc::new(AtomicUsize::new(0));
    FakeNode::start(1, move |_, request| match request {
        Request::Produce(p) => {
            let count = decode_records(
                "127.0.0.1:1".parse().unwrap(),
                std::slice::from_ref(&p.batch),
                Offset(0),
            )
            .unwrap()
            .len();
            let base = next.fetch_add(count, Ordering::SeqCst) as u64;
            Reply::Respond(Response::Produce(ProduceResponse {
                partition: p.partition,
                base_offset: Offset(base),
                last_offset: Offset(base + count as u64 - 1),
                commit: Offset(base + count as u64),
            }))
        }
        _ => Reply::Close,
    })
}

#[test]
fn a_pipeline_resends_produces_refused_not_leader_to_the_hinted_leader_in_send_order() {
    let leader = counting_leader();
    let leader_addr = leader.addrs[0];
    let follower = FakeNode::start(1, move |_, request| match request {
        Request::Produce(p) => Reply::Respond(not_leader(p.partition, Some(leader_addr))),
        _ => Reply::Close,
    });
    let believed = Arc::new(Mutex::new(Some(follower.addrs[0])));
    let bootstrap = node_with_metadata(1, 1, believed, |_, _| Reply::Close);
    let client = Client::new(fast_config(vec![bootstrap.addrs[0]])).unwrap();
    let pipeline = client.pipeline(PartitionId(0), Acks::Quorum).unwrap();

    let values: Vec<Vec<u8>> = (0..8).map(|i| format!("value-{i}").into_bytes()).collect();
    let completions: Vec<_> = values.iter().map(|v| pipeline.send(&[v]).unwrap()).collect();
    let offsets: Vec<u64> =
        completions.into_iter().map(|c| wait_within(c).unwrap().base_offset.0).collect();

    assert_eq!(offsets, (0..8).collect::<Vec<u64>>(), "acknowledged in send order");
    assert!(follower.produces() >= 1, "the first produce went to the believed leader");
    assert_eq!(produced_values(&leader), values, "each resent once, in send order");
}

#[test]
fn a_pipeline_surfaces_a_refusal_followed_by_an_acknowledged_produce_instead_of_resending_it() {
    let leader = counting_leader();
    let leader_addr = leader.addrs[0];
    let seen = Arc::new(AtomicUsize::new(0));
    // The first produce is refused (late: the second is on the wire by then), the second
    // taken: resending the first would put it after the second.
    let node = FakeNode::start(1, move |_, request| match request {
        Request::Produce(p) if seen.fetch_add(1, Ordering::SeqCst) == 0 => {
            thread::sleep(Duration::from_millis(300));
            Reply::Respond(Response::Error(ErrorReply::NotLeader {
                partition: p.partition,
                leader: Some(NodeId(2)),
                address: Some(leader_addr),
            }))
        }
        Request::Produce(p) => Reply::Respond(produced(p.partition)),
        _ => Reply::Close,
    });
    let believed = Arc::new(Mutex::new(Some(node.addrs[0])));
    let bootstrap = node_with_metadata(1, 1, believed, |_, _| Reply::Close);
    let client = Client::new(fast_config(vec![bootstrap.addrs[0]])).unwrap();
    let pipeline = client.pipeline(PartitionId(0), Acks::Quorum).unwrap();

    let first = pipeline.send(&[b"first"]).unwrap();
    let second = pipeline.send(&[b"second"]).unwrap();

    let refused = wait_within(first);
    assert!(
        matches!(
            refused.as_ref().err().and_then(ClientError::reply),
            Some(ErrorReply::NotLeader { .. })
        ),
        "{refused:?}"
    );
    assert_eq!(wait_within(second).unwrap().base_offset, Offset(10));
    pipeline.flush();
    assert_eq!(leader.produces(), 0, "the refused produce is not resent");
}

#[test]
fn a_pipeline_completes_a_produce_whose_connection_drops_indeterminate_and_sends_on() {
    let seen = Arc::new(AtomicUsize::new(0));
    let node = FakeNode::start(1, move |_, request| match request {
        Request::Produce(_) if seen.fetch_add(1, Ordering::SeqCst) == 0 => Reply::Close,
        Request::Produce(p) => Reply::Respond(produced(p.partition)),
        _ => Reply::Close,
    });
    let believed = Arc::new(Mutex::new(Some(node.addrs[0])));
    let bootstrap = node_with_metadata(1, 1, believed, |_, _| Reply::Close);
    let client = Client::new(fast_config(vec![bootstrap.addrs[0]])).unwrap();
    let pipeline = client.pipeline(PartitionId(0), Acks::Quorum).unwrap();

    let lost = wait_within(pipeline.send(&[b"lost"]).unwrap());
    assert!(matches!(lost, Err(ClientError::Indeterminate { .. })), "{lost:?}");
    // The next produce goes out on a new connection; the lost one was never resent.
    assert_eq!(wait_within(pipeline.send(&[b"next"]).unwrap()).unwrap().base_offset, Offset(10));
    assert_eq!(node.produces(), 2);
    assert!(node.accepts.load(Ordering::Relaxed) >= 2, "a new connection");
}

#[test]
fn a_pipeline_refuses_windows_outside_one_to_the_nodes_limit() {
    let client = Client::new(fast_config(vec!["127.0.0.1:1".parse().unwrap()])).unwrap();
    for window in [0, ringlog_net::limits::PIPELINE_REQUESTS_MAX + 1] {
        let refused = client.pipeline_with_window(PartitionId(0), Acks::Quorum, window);
        assert!(matches!(refused, Err(ClientError::PipelineWindow { .. })), "{window}");
    }
}
