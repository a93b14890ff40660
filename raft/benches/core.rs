//! Raft core benchmark: proposals committed per second through a 3-replica in-memory loop, and
//! heap allocations per proposal.
//!
//! Resource stressed: one core's CPU running three `Replica`s back to back — the leader's
//! propose path (term-run append, per-follower window accounting, SendEntries), the followers'
//! Append handling (log matching over term runs, acks held for durability), and the leader's
//! quorum/commit computation — with "disk" and "network" reduced to in-memory queues, so the
//! number is the core's own cost, not IO.
//! Expectation (back of envelope): a proposal costs one leader append plus, per follower, one
//! Append handled and one ack (about 5 core inputs and ~10 actions, each well under 1 µs), so
//! ~1–3 µs per proposal one at a time (~300k–1M/s), and several times that when 64 proposals
//! share each Append message. Allocations: the core allocates the one-entry `AppendEntries`
//! vector per proposal; amortized queue growth adds nothing in the steady state, so ~1 per
//! proposal in the core (the driver's message vectors are counted separately).

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::VecDeque;
use std::hint::black_box;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ringlog_raft::{
    Action, Config, Entry, HardState, LogIndex, Membership, Message, NodeId, Recovered, Replica,
    Role,
};

/// Counts allocations while `COUNTING_CORE` (core calls) or `COUNTING_ALL` is set.
struct CountingAllocator;

static COUNTING_CORE: AtomicBool = AtomicBool::new(false);
static ALLOCS_CORE: AtomicU64 = AtomicU64::new(0);
static ALLOCS_ALL: AtomicU64 = AtomicU64::new(0);

// SAFETY: every method forwards to `System` with the caller's arguments unchanged, so the
// `GlobalAlloc` contract is System's; the counters are atomics and never allocate.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: forwarded as is; the caller upholds `alloc`'s contract.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` was allocated by `System` with `layout` (every allocation goes there).
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        // SAFETY: `ptr` came from `System` with `layout`; the caller upholds the rest.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

fn count() {
    ALLOCS_ALL.fetch_add(1, Ordering::Relaxed);
    if COUNTING_CORE.load(Ordering::Relaxed) {
        ALLOCS_CORE.fetch_add(1, Ordering::Relaxed);
    }
}

#[global_allocator]
static GLOBAL: CountingAllocator = CountingAllocator;

/// Runs `f` with core allocations counted.
fn core<T>(f: impl FnOnce() -> T) -> T {
    COUNTING_CORE.store(true, Ordering::Relaxed);
    let out = f();
    COUNTING_CORE.store(false, Ordering::Relaxed);
    out
}

const REPLICAS: usize = 3;
const PAYLOAD: &[u8] = &[0x5a; 256];

/// Three replicas, an in-memory log each (index i at `logs[r][i - 1]`), an instant network,
/// and instant durability.
struct Loop {
    replicas: Vec<Replica>,
    logs: Vec<Vec<Entry>>,
    hard_states: Vec<Vec<HardState>>,
    reported: Vec<LogIndex>,
    net: VecDeque<(NodeId, NodeId, Message)>,
    leader_commit: LogIndex,
}

impl Loop {
    fn new() -> Loop {
        let voters: Vec<NodeId> = (1..=REPLICAS as u32).map(NodeId).collect();
        let membership = Membership { voters, learners: Vec::new() };
        let replicas = (0..REPLICAS)
            .map(|i| {
                let config = Config::new(NodeId(i as u32 + 1), i as u64);
                Replica::new(config, Recovered::bootstrap(membership.clone())).expect("config")
            })
            .collect();
        let mut l = Loop {
            replicas,
            logs: vec![Vec::new(); REPLICAS],
            hard_states: vec![Vec::new(); REPLICAS],
            reported: vec![LogIndex(0); REPLICAS],
            net: VecDeque::new(),
            leader_commit: LogIndex(0),
        };
        while l.replicas[0].role() != Role::Leader {
            core(|| l.replicas[0].handle_tick());
            l.drain(0);
            l.run();
        }
        l
    }

    fn drain(&mut self, r: usize) {
        let from = NodeId(r as u32 + 1);
        while let Some(action) = core(|| self.replicas[r].poll_action()) {
            match action {
                Action::PersistHardState(hs) => self.hard_states[r].push(hs),
                Action::TruncateLog { from: at } => self.logs[r].truncate(at.0 as usize - 1),
                Action::AppendEntries { entries } => self.logs[r].extend(entries),
                Action::Send { to, message } => self.net.push_back((from, to, message)),
                Action::SendEntries {
                    to,
                    term,
                    prev_index,
                    prev_term,
                    commit,
                    from: f,
                    through,
                } => {
                    let entries = self.logs[r][f.0 as usize - 1..through.0 as usize].to_vec();
                    let message = Message::Append { term, prev_index, prev_term, commit, entries };
                    self.net.push_back((from, to, message));
                }
                Action::CommitAdvanced { through } if r == 0 => self.leader_commit = through,
                _ => {}
            }
        }
    }

    /// Reports hard states and the whole written log durable; true if anything was new.
    fn sync(&mut self, r: usize) -> bool {
        let mut any = false;
        for hs in std::mem::take(&mut self.hard_states[r]) {
            core(|| self.replicas[r].handle_hard_state_durable(hs));
            any = true;
        }
        let last = LogIndex(self.logs[r].len() as u64);
        if last > self.reported[r] {
            let term = self.logs[r][last.0 as usize - 1].term;
            self.reported[r] = last;
            core(|| self.replicas[r].handle_durable(last, term));
            any = true;
        }
        if any {
            self.drain(r);
        }
        any
    }

    fn run(&mut self) {
        loop {
            let mut moved = false;
            while let Some((from, to, message)) = self.net.pop_front() {
                let r = to.0 as usize - 1;
                core(|| self.replicas[r].handle_message(from, message));
                self.drain(r);
                moved = true;
            }
            for r in 0..REPLICAS {
                moved |= self.sync(r);
            }
            if !moved {
                return;
            }
        }
    }

    /// Proposes `batch` payloads on the leader and runs until they are committed.
    fn commit_batch(&mut self, batch: usize) {
        let mut last = LogIndex(0);
        for _ in 0..batch {
            let payload = Bytes::from_static(PAYLOAD);
            last = core(|| self.replicas[0].propose(payload)).expect("leader accepts");
        }
        self.drain(0);
        self.run();
        assert!(self.leader_commit >= last, "the batch committed");
    }
}

fn report_allocations() {
    const PROPOSALS: usize = 10_000;
    for batch in [1usize, 64] {
        let mut l = Loop::new();
        l.commit_batch(batch); // warm the queues
        let (core_before, all_before) =
            (ALLOCS_CORE.load(Ordering::Relaxed), ALLOCS_ALL.load(Ordering::Relaxed));
        for _ in 0..PROPOSALS / batch {
            l.commit_batch(batch);
        }
        let proposals = (PROPOSALS / batch * batch) as f64;
        let core_allocs = (ALLOCS_CORE.load(Ordering::Relaxed) - core_before) as f64;
        let all_allocs = (ALLOCS_ALL.load(Ordering::Relaxed) - all_before) as f64;
        println!(
            "raft core, batch {batch}: {:.2} allocations per proposal in the core, {:.2} with \
             the in-memory driver",
            core_allocs / proposals,
            all_allocs / proposals
        );
    }
}

fn proposals_committed(c: &mut Criterion) {
    report_allocations();
    let mut group = c.benchmark_group("raft_core_3_replicas");
    for batch in [1usize, 64] {
        group.throughput(Throughput::Elements(batch as u64));
        group.bench_with_input(BenchmarkId::new("commit", batch), &batch, |b, &batch| {
            let mut l = Loop::new();
            b.iter(|| {
                l.commit_batch(black_box(batch));
                // Keep the in-memory logs from growing without bound across iterations.
                if l.logs[0].len() > 1 << 20 {
                    l = Loop::new();
                }
            })
        });
    }
    group.finish();
}

criterion_group!(benches, proposals_committed);
criterion_main!(benches);
