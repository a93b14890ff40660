//! Issue 15, "a pipelined client": `ringlog_net::client::Pipeline` against real node
//! processes. Many produces in flight on one connection complete in send order with
//! contiguous offsets and read back byte-identical; a SIGKILLed leader with produces in
//! flight completes each of them `Indeterminate` or acknowledged (never a false success, never
//! a silent resend, none hangs); the window bounds what is in flight; a completion is a
//! future that any executor (here a hand-rolled one) drives.

#[path = "harness.rs"]
mod harness;

use std::collections::HashSet;
use std::future::Future;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::thread::{self, Thread};
use std::time::{Duration, Instant};

use harness::{Cluster, Ledger, Spec, LIVENESS_TIMEOUT};
use ringlog_net::client::{ClientError, Completion, PIPELINE_WINDOW_DEFAULT};
use ringlog_net::limits::PIPELINE_REQUESTS_MAX;
use ringlog_net::protocol::{Acks, ErrorReply, ProduceResponse};
use ringlog_net::{Offset, PartitionId};

const PARTITION: PartitionId = PartitionId(0);

/// Bound on one completion arriving (a leader election and the client's retries included).
const COMPLETION_BOUND: Duration = Duration::from_secs(120);

/// Waits for `completion` within [`COMPLETION_BOUND`] (a hang fails the test).
fn wait_bounded(completion: Completion, what: &str) -> Result<ProduceResponse, ClientError> {
    let deadline = Instant::now() + COMPLETION_BOUND;
    while !completion.is_done() {
        assert!(Instant::now() < deadline, "{what} did not complete within {COMPLETION_BOUND:?}");
        thread::sleep(Duration::from_millis(5));
    }
    completion.wait()
}

#[test]
fn many_produces_in_flight_complete_in_send_order_with_contiguous_offsets_and_read_back_identical()
{
    let cluster = Cluster::start("pipeline_order", Spec::new(3));
    let client = cluster.client();
    cluster.wait_leader(&client, PARTITION);
    let pipeline = client.pipeline(PARTITION, Acks::Quorum).expect("a pipeline");
    assert_eq!(pipeline.window(), PIPELINE_WINDOW_DEFAULT);

    const PRODUCES: usize = 600;
    let mut sent: Vec<Vec<Vec<u8>>> = Vec::with_capacity(PRODUCES);
    let mut completions: Vec<Completion> = Vec::with_capacity(PRODUCES);
    let mut in_flight_max = 0;
    for i in 0..PRODUCES {
        // Some batches are over the nodes' batch_size_max: the leader refuses them at once
        // (`Oversize`), so their replies overtake those of the produces sent before them,
        // which wait for a quorum; their completions must still come in send order.
        let values: Vec<Vec<u8>> = if oversize(i) {
            vec![vec![b'x'; OVERSIZE_BYTES]]
        } else {
            (0..1 + i % 3).map(|r| format!("pipelined-{i:05}-{r}").into_bytes()).collect()
        };
        let records: Vec<&[u8]> = values.iter().map(Vec::as_slice).collect();
        completions.push(pipeline.send(&records).expect("send"));
        sent.push(values);
        in_flight_max = in_flight_max.max(pipeline.in_flight());
        assert!(pipeline.in_flight() <= PIPELINE_WINDOW_DEFAULT);
        // Completion is in send order: once a produce is done, every earlier one is (a done
        // completion stays done until taken, and none is taken yet).
        if let Some(done) = completions.iter().rposition(Completion::is_done) {
            let early = completions[..done].iter().position(|c| !c.is_done());
            assert_eq!(early, None, "produce {done} completed before an earlier one");
        }
    }
    assert!(in_flight_max > 1, "never more than one produce in flight: not pipelined");
    eprintln!("at most {in_flight_max} produces in flight");
    pipeline.flush();
    assert_eq!(pipeline.in_flight(), 0, "flush returns with nothing in flight");

    let mut next: Option<Offset> = None;
    let mut first = None;
    for (i, completion) in completions.into_iter().enumerate() {
        let outcome = wait_bounded(completion, "a produce");
        if oversize(i) {
            let refused = outcome.as_ref().err().and_then(ClientError::reply);
            assert!(matches!(refused, Some(ErrorReply::Oversize { .. })), "{i}: {outcome:?}");
            continue;
        }
        let ack = outcome.expect("a healthy cluster acknowledges");
        assert_eq!(ack.last_offset.0 - ack.base_offset.0 + 1, sent[i].len() as u64, "{ack:?}");
        if let Some(next) = next {
            assert_eq!(ack.base_offset, next, "produce {i}: offsets follow send order densely");
        }
        first.get_or_insert(ack.base_offset);
        next = Some(Offset(ack.last_offset.0 + 1));
    }

    let records = cluster.assert_replicas_identical(&client, PARTITION);
    let first = first.expect("produces were sent").0 as usize;
    let expected: Vec<&Vec<u8>> =
        sent.iter().enumerate().filter(|(i, _)| !oversize(*i)).flat_map(|(_, v)| v).collect();
    let read: Vec<&[u8]> = records[first..].iter().map(|r| &r.value[..]).collect();
    assert_eq!(read.len(), expected.len(), "every record reads back, nothing more");
    for (i, (value, want)) in read.iter().zip(&expected).enumerate() {
        assert_eq!(*value, &want[..], "record {i} reads back byte-identical, in send order");
        assert_eq!(records[first + i].offset.0, (first + i) as u64);
    }
}

/// Bytes of the record of an oversize produce: over the harness's `batch_size_max` (256 KiB),
/// within the client's batch and frame limits.
const OVERSIZE_BYTES: usize = 300 * 1024;

/// Whether produce `i` of the ordering test is an oversize one.
fn oversize(i: usize) -> bool {
    i % 50 == 25
}

/// What the sender thread of the kill test saw.
#[derive(Default)]
struct Outcomes {
    ledger: Ledger,
    /// Values of produces that certainly were not appended (never sent, or refused).
    not_appended: Vec<Vec<u8>>,
    indeterminate: u64,
    acked_after_kill: u64,
}

#[test]
fn killing_the_leader_with_produces_in_flight_completes_each_indeterminate_or_acknowledged() {
    let mut cluster = Cluster::start("pipeline_kill", Spec::new(3));
    let client = Arc::new(cluster.client());
    let (leader, _) = cluster.wait_leader(&client, PARTITION);
    let pipeline = Arc::new(client.pipeline(PARTITION, Acks::Quorum).expect("a pipeline"));
    let outcomes = Arc::new(Mutex::new(Outcomes::default()));
    let (stop, killed, acked) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicU64::new(0)),
    );

    // The sender keeps the window full; a second thread takes the completions in order.
    let (tx, rx) = mpsc::sync_channel::<(Vec<Vec<u8>>, Completion)>(PIPELINE_REQUESTS_MAX);
    let sender = {
        let (pipeline, stop, outcomes) = (pipeline.clone(), stop.clone(), outcomes.clone());
        thread::spawn(move || {
            let mut seq = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let values: Vec<Vec<u8>> =
                    (0..1 + seq % 4).map(|r| format!("kill-{seq:08}-{r}").into_bytes()).collect();
                seq += 1;
                outcomes.lock().unwrap().ledger.sent.extend(values.iter().cloned());
                let records: Vec<&[u8]> = values.iter().map(Vec::as_slice).collect();
                let completion = pipeline.send(&records).expect("send");
                tx.send((values, completion)).expect("the collector runs");
            }
        })
    };
    let collector = {
        let (outcomes, killed, acked) = (outcomes.clone(), killed.clone(), acked.clone());
        thread::spawn(move || {
            for (values, completion) in rx {
                let outcome = wait_bounded(completion, "a produce around the kill");
                let mut o = outcomes.lock().unwrap();
                match outcome {
                    Ok(ack) => {
                        assert_eq!(ack.last_offset.0 - ack.base_offset.0 + 1, values.len() as u64);
                        for (i, value) in values.into_iter().enumerate() {
                            let offset = Offset(ack.base_offset.0 + i as u64);
                            assert!(o.ledger.acked.insert(value.clone(), offset).is_none());
                            o.ledger.acked_order.entry(0).or_default().push(value);
                        }
                        if killed.load(Ordering::Relaxed) {
                            o.acked_after_kill += 1;
                        }
                        acked.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(ClientError::Indeterminate { .. }) => {
                        o.indeterminate += 1;
                        o.ledger.failures += 1;
                    }
                    Err(
                        ClientError::NoLeader { .. }
                        | ClientError::RetriesExhausted { .. }
                        | ClientError::PipelineClosed,
                    ) => {
                        o.ledger.failures += 1;
                        o.not_appended.extend(values);
                    }
                    Err(error)
                        if matches!(
                            error.reply(),
                            Some(ErrorReply::NotLeader { .. } | ErrorReply::Backpressure { .. })
                        ) =>
                    {
                        o.ledger.failures += 1;
                        o.not_appended.extend(values);
                    }
                    Err(error) => panic!("unexpected outcome of a produce: {error}"),
                }
            }
        })
    };

    // Kill the leader while produces are in flight on its connection.
    let deadline = Instant::now() + LIVENESS_TIMEOUT;
    while acked.load(Ordering::Relaxed) < 100 || pipeline.in_flight() < 2 {
        assert!(Instant::now() < deadline, "the pipeline made no progress before the kill");
        thread::sleep(Duration::from_millis(1));
    }
    cluster.kill(leader);
    killed.store(true, Ordering::Relaxed);
    eprintln!("killed leader node {leader} with produces in flight");
    let deadline = Instant::now() + LIVENESS_TIMEOUT + COMPLETION_BOUND;
    while outcomes.lock().unwrap().acked_after_kill < 100 {
        assert!(Instant::now() < deadline, "produces did not resume under a new leader");
        thread::sleep(Duration::from_millis(10));
    }
    stop.store(true, Ordering::Relaxed);
    sender.join().expect("the sender");
    pipeline.flush();
    drop(pipeline);
    collector.join().expect("the collector");

    cluster.restart(leader);
    let records = cluster.assert_replicas_identical(&client, PARTITION);
    let o = outcomes.lock().unwrap();
    // Every acknowledged value at its offset, in send order; no duplicate (nothing resent).
    o.ledger.check(&records, PARTITION);
    assert!(o.indeterminate >= 1, "the produces in flight at the kill completed Indeterminate");
    let present: HashSet<&[u8]> = records.iter().map(|r| &r.value[..]).collect();
    for value in &o.not_appended {
        assert!(
            !present.contains(&value[..]),
            "{:?} was reported not appended but is in the log",
            String::from_utf8_lossy(value)
        );
    }
    eprintln!(
        "{} indeterminate, {} certainly not appended, {} acknowledged after the kill",
        o.indeterminate,
        o.not_appended.len(),
        o.acked_after_kill
    );
}

#[test]
fn a_full_window_refuses_try_send_and_blocks_send_until_a_produce_completes() {
    let mut cluster = Cluster::start("pipeline_window", Spec::new(1));
    let client = cluster.client();
    let (leader, _) = cluster.wait_leader(&client, PARTITION);
    for window in [0, PIPELINE_REQUESTS_MAX + 1] {
        let refused = client.pipeline_with_window(PARTITION, Acks::Quorum, window);
        assert!(
            matches!(refused, Err(ClientError::PipelineWindow { window: w, .. }) if w == window),
            "window {window}: {refused:?}"
        );
    }
    const WINDOW: usize = 4;
    let pipeline =
        Arc::new(client.pipeline_with_window(PARTITION, Acks::Quorum, WINDOW).expect("a pipeline"));
    // Connected and warm before the node is stopped.
    wait_bounded(pipeline.send(&[b"warm-up"]).expect("send"), "the warm-up").expect("warm-up");

    cluster.signal(leader, "STOP");
    let mut completions: Vec<Completion> = (0..WINDOW)
        .map(|i| pipeline.send(&[format!("windowed-{i}").as_bytes()]).expect("send"))
        .collect();
    assert_eq!(pipeline.in_flight(), WINDOW);
    let refused = pipeline.try_send(&[b"over the window"]);
    assert!(matches!(refused, Err(ClientError::WindowFull { window: WINDOW })), "{refused:?}");
    let (tx, rx) = mpsc::channel();
    let blocked = {
        let pipeline = pipeline.clone();
        thread::spawn(move || {
            let completion = pipeline.send(&[b"windowed-4"]);
            tx.send(()).expect("the test waits");
            completion
        })
    };
    // While the node is stopped nothing completes, so the send stays blocked.
    assert!(rx.recv_timeout(Duration::from_secs(1)).is_err(), "send returned with a full window");
    assert_eq!(pipeline.in_flight(), WINDOW);
    cluster.signal(leader, "CONT");
    rx.recv_timeout(COMPLETION_BOUND).expect("send returns once a produce completed");
    completions.push(blocked.join().expect("the blocked sender").expect("send"));

    let mut next = None;
    for (i, completion) in completions.into_iter().enumerate() {
        let ack = wait_bounded(completion, "a windowed produce").expect("acknowledged");
        if let Some(next) = next {
            assert_eq!(ack.base_offset, next, "produce {i} follows the one sent before it");
        }
        next = Some(Offset(ack.last_offset.0 + 1));
    }
}

/// Wakes the thread that ran the future.
struct Unpark(Thread);

impl Wake for Unpark {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }
}

/// A minimal executor: polls `future` on this thread, parking between polls. A future that
/// is not woken within `bound` of its last poll fails the test (a lost wake-up would
/// otherwise only show as a hang).
fn block_on<F: Future>(future: F, bound: Duration) -> F::Output {
    let mut future = pin!(future);
    let waker = Waker::from(Arc::new(Unpark(thread::current())));
    let mut cx = Context::from_waker(&waker);
    loop {
        if let Poll::Ready(output) = future.as_mut().poll(&mut cx) {
            return output;
        }
        let parked = Instant::now();
        // Spurious unparks are allowed; only a wait of the whole bound means no wake-up.
        thread::park_timeout(bound);
        assert!(parked.elapsed() < bound, "the future was not woken within {bound:?}");
    }
}

#[test]
fn completions_are_futures_that_a_minimal_executor_drives_to_their_acknowledgements() {
    let cluster = Cluster::start("pipeline_async", Spec::new(1));
    let client = cluster.client();
    cluster.wait_leader(&client, PARTITION);
    let pipeline = client.pipeline_with_window(PARTITION, Acks::Quorum, 16).expect("a pipeline");
    let offsets = block_on(
        async {
            let mut offsets = Vec::new();
            let mut pending = std::collections::VecDeque::new();
            for i in 0..100u32 {
                let value = format!("async-{i}");
                let completion = loop {
                    match pipeline.try_send(&[value.as_bytes()]) {
                        Ok(completion) => break completion,
                        Err(ClientError::WindowFull { .. }) => {
                            // Await the oldest produce (its slot may be free already), then
                            // send again.
                            let oldest: Completion = pending.pop_front().expect("a full window");
                            offsets.push(oldest.await.expect("acknowledged").base_offset);
                        }
                        Err(error) => panic!("try_send: {error}"),
                    }
                };
                pending.push_back(completion);
            }
            for completion in pending {
                offsets.push(completion.await.expect("acknowledged").base_offset);
            }
            offsets
        },
        COMPLETION_BOUND,
    );
    assert_eq!(offsets.len(), 100);
    for pair in offsets.windows(2) {
        assert_eq!(pair[1].0, pair[0].0 + 1, "one record per produce, in send order");
    }
}
