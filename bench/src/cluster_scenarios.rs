//! The cluster scenarios: `replicated` (acks quorum / leader / none, plus the open-loop sweep
//! that finds the knee), `fetch` (tail readers, then catch-up from disk), `failover` (SIGKILL
//! of a leader mid-run), `retention` (small segments and retention while producing) and
//! `many-producers` (hundreds of connections, small batches).
//!
//! Every scenario runs its producers through `producers::drive_producers` and samples the
//! nodes around the measured window: CPU time of every node process (`/proc/<pid>/stat`),
//! fdatasyncs and bytes written (the nodes' metrics endpoint, else `/proc/<pid>/io`), and this
//! process's own CPU (the load generator).
//!
//! Invariants: a scenario that pauses a node resumes it on every path (a guard sends SIGCONT);
//! a scenario that kills a node restarts it and waits until every partition is writable
//! again before the next scenario starts.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use ringlog_net::client::Client;
use ringlog_net::protocol::{Acks, Consistency};
use ringlog_net::{Offset, PartitionId};
use rustix::process::Signal;
use serde::Serialize;

use crate::cluster::LocalCluster;
use crate::cluster_client::{
    client_config, leader_of, read_partition, scrape_counters, unix_nanos, wait_drained,
    wait_writable, ClusterProducer, Endpoint, NodeCounters,
};
use crate::load::LoadModel;
use crate::measure::{process_cpu_time, LatencyRecorder, RunMeasure, Timeline};
use crate::producers::{drive_producers, sleep_until, Producer, ProducerRun, SideTask};
use crate::workdir::StopFlag;

/// Longest wait for a cluster to elect leaders and accept writes.
pub const WRITABLE_TIMEOUT: Duration = Duration::from_secs(30);

/// The cluster a scenario drives: one started here, or an existing one.
#[derive(Debug)]
pub enum ClusterTarget {
    Local(LocalCluster),
    Remote(Endpoint),
}

/// Options of the cluster scenarios.
#[derive(Debug, Clone, Serialize)]
pub struct ClusterScenarioOptions {
    pub producers: usize,
    pub many_producers: usize,
    pub records_per_batch: usize,
    /// Produces each producer of `replicated` keeps in flight (1: the blocking client).
    pub pipeline: usize,
    #[serde(serialize_with = "serialize_secs")]
    pub linger: Duration,
    pub record_size_bytes: usize,
    pub partitions: u32,
    /// The acks settings `replicated` runs, in order.
    #[serde(serialize_with = "serialize_acks")]
    pub acks: Vec<Acks>,
    /// Load model of `replicated` (the sweep is always open-loop).
    pub load: LoadModel,
    /// Offered rates of the sweep, as fractions of the closed-loop maximum.
    pub sweep_fractions: Vec<f64>,
    /// The knee is the highest offered rate whose p99 stays under this bound.
    #[serde(serialize_with = "serialize_secs")]
    pub p99_bound: Duration,
    #[serde(serialize_with = "serialize_secs")]
    pub duration: Duration,
    #[serde(serialize_with = "serialize_secs")]
    pub sweep_point_duration: Duration,
    #[serde(serialize_with = "serialize_secs")]
    pub warmup: Duration,
    #[serde(serialize_with = "serialize_secs")]
    pub timeline_interval: Duration,
    /// Pause the leader of partition 0 (SIGSTOP) during the first `replicated` run.
    pub stall: Option<StallInjection>,
}

/// A deliberate pause of a node, to show the open loop counts it.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct StallInjection {
    /// Into the measured window.
    #[serde(serialize_with = "serialize_secs")]
    pub at: Duration,
    #[serde(serialize_with = "serialize_secs")]
    pub length: Duration,
}

/// One row of a cluster scenario.
#[derive(Debug, Clone)]
pub struct ClusterRow {
    pub label: String,
    pub description: String,
    pub parameters: serde_json::Value,
    pub measure: RunMeasure,
    pub notes: Vec<String>,
    /// Latency histogram for the percentile plot.
    pub latency: LatencyRecorder,
}

/// One point of the open-loop sweep.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct SweepPoint {
    pub fraction_of_max: f64,
    pub offered_records_per_sec: f64,
    pub achieved_records_per_sec: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
}

/// The sweep and the knee it found.
#[derive(Debug, Clone, Serialize)]
pub struct SweepReport {
    pub acks: String,
    pub closed_loop_max_records_per_sec: f64,
    pub p99_bound_us: f64,
    pub points: Vec<SweepPoint>,
    /// Highest offered rate with p99 under the bound and at least 95% of it achieved.
    pub knee_records_per_sec: Option<f64>,
    /// p99 at half of the closed-loop maximum (the point nearest 0.5).
    pub p99_at_half_max_us: Option<f64>,
}

/// What the failover scenario saw.
#[derive(Debug, Clone, Serialize)]
pub struct FailoverReport {
    pub killed_node: u32,
    pub partitions_led: Vec<u32>,
    /// Seconds into the measured window when the leader was killed.
    pub killed_at_secs: f64,
    /// Longest time without any acknowledged produce on a partition the killed node led.
    pub unavailability_secs: f64,
    /// Time from the kill to the node's restart being writable again (not measured load).
    pub restart_secs: f64,
}

impl ClusterTarget {
    /// Shard-0 client addresses of the nodes.
    pub fn bootstrap(&self) -> Endpoint {
        match self {
            ClusterTarget::Local(cluster) => Endpoint { addrs: cluster.bootstrap(), tls: None },
            ClusterTarget::Remote(endpoint) => endpoint.clone(),
        }
    }

    fn local(&self) -> Option<&LocalCluster> {
        match self {
            ClusterTarget::Local(cluster) => Some(cluster),
            ClusterTarget::Remote(_) => None,
        }
    }

    fn sample(&self) -> NodeSample {
        let Some(cluster) = self.local() else {
            return NodeSample::default();
        };
        let mut cpu = HashMap::new();
        for pid in cluster.pids() {
            if let Some(time) = crate::measure::pid_cpu_time(pid) {
                cpu.insert(pid, time);
            }
        }
        let metrics = cluster
            .nodes()
            .iter()
            .filter_map(|node| scrape_counters(node.metrics).map(|c| (node.id, c)))
            .collect();
        NodeSample { cpu, metrics, io_write_bytes: Some(cluster.write_bytes()) }
    }
}

/// Node counters at one moment.
#[derive(Debug, Default)]
struct NodeSample {
    cpu: HashMap<u32, Duration>,
    /// Per node id: its metrics endpoint's counters (nodes that answered).
    metrics: HashMap<u32, NodeCounters>,
    io_write_bytes: Option<u64>,
}

/// Runs producers against `target` and fills a [`RunMeasure`] with what they and the nodes
/// did in the measured window.
fn measure_run(
    target: &ClusterTarget,
    run: &ProducerRun,
    make: &(dyn Fn(usize) -> anyhow::Result<Box<dyn Producer>> + Sync),
    side: Option<&SideTask<'_>>,
    stop: &StopFlag,
) -> anyhow::Result<(RunMeasure, LatencyRecorder, Vec<Vec<Duration>>)> {
    // Node counters are sampled at the window's edges by the side thread when possible;
    // here, around the whole run (warm-up excluded by starting after it).
    let samples: Mutex<Option<(NodeSample, Duration)>> = Mutex::new(None);
    let ends: Mutex<Option<(NodeSample, Duration)>> = Mutex::new(None);
    let sampler = |from: Instant, until: Instant| -> anyhow::Result<()> {
        let inner = std::thread::scope(|scope| {
            let side_thread = side.map(|side| scope.spawn(move || side(from, until)));
            sleep_until(from, stop);
            *samples.lock().expect("lock") = Some((target.sample(), process_cpu_time()));
            sleep_until(until, stop);
            *ends.lock().expect("lock") = Some((target.sample(), process_cpu_time()));
            match side_thread {
                Some(handle) => handle.join().map_err(|_| anyhow::anyhow!("side task panicked"))?,
                None => Ok(()),
            }
        });
        inner
    };
    let outcome = drive_producers(run, make, Some(&sampler), stop)?;
    if let Some(failure) = &outcome.failure {
        if !stop.is_raised() {
            bail!("a producer failed: {failure}");
        }
    }
    let start = samples.lock().expect("lock").take();
    let end = ends.lock().expect("lock").take();
    let mut measure = RunMeasure {
        operations: outcome.batches,
        records: outcome.records,
        bytes: outcome.bytes,
        elapsed: outcome.elapsed,
        errors: outcome.errors,
        offered_records_per_sec: match run.model {
            LoadModel::Closed => None,
            LoadModel::Open { rate_records_per_sec } => Some(rate_records_per_sec),
        },
        timeline: outcome.timeline.points(outcome.elapsed),
        ..RunMeasure::default()
    };
    if let (Some((start, start_cpu)), Some((end, end_cpu))) = (start, end) {
        measure.cpu = end_cpu.saturating_sub(start_cpu);
        if target.local().is_some() {
            let node_cpu: Duration = end
                .cpu
                .iter()
                .filter_map(|(pid, t)| start.cpu.get(pid).map(|s| t.saturating_sub(*s)))
                .sum();
            measure.node_cpu = Some(node_cpu);
        }
        // Nodes that answered at both edges (a node killed mid-run drops out).
        let deltas: Vec<NodeCounters> = end
            .metrics
            .iter()
            .filter_map(|(id, b)| start.metrics.get(id).map(|a| b.since(*a)))
            .collect();
        if !deltas.is_empty() {
            measure.fdatasyncs = deltas.iter().map(|d| d.fdatasyncs).sum();
            measure.disk_bytes = deltas.iter().map(|d| d.bytes_written).sum();
        } else if let (Some(a), Some(b)) = (start.io_write_bytes, end.io_write_bytes) {
            measure.disk_bytes = b.saturating_sub(a);
        }
    }
    let latency = outcome.latency.clone();
    measure.set_latency(outcome.latency);
    Ok((measure, latency, outcome.completions))
}

/// Longest wait for a run's replication backlog to drain before the next run.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(60);

/// Waits for the backlog of the last run to drain (so that runs do not pay for each other's
/// queues); returns a note saying how long it took.
fn drain(
    target: &ClusterTarget,
    options: &ClusterScenarioOptions,
    stop: &StopFlag,
) -> anyhow::Result<String> {
    Ok(match wait_drained(&target.bootstrap(), options.partitions, DRAIN_TIMEOUT, stop)? {
        Some(took) => format!(
            "after the window, the replication backlog drained (every partition committed \
             its log, no follower lagging) in {:.0} ms before the next run started",
            took.as_secs_f64() * 1e3
        ),
        None => format!("the replication backlog did not drain within {DRAIN_TIMEOUT:?}"),
    })
}

fn producer_run(
    options: &ClusterScenarioOptions,
    model: LoadModel,
    producers: usize,
) -> ProducerRun {
    ProducerRun {
        model,
        producers,
        records_per_batch: options.records_per_batch,
        linger: options.linger,
        record_size_bytes: options.record_size_bytes,
        duration: options.duration,
        warmup: options.warmup,
        timeline_interval: options.timeline_interval,
        drain_max: Duration::from_secs(5),
        keep_completions: false,
        pipeline_depth: 1,
    }
}

fn factory<'a>(
    bootstrap: &'a Endpoint,
    options: &'a ClusterScenarioOptions,
    acks: Acks,
    records_per_batch: usize,
    depth: usize,
    stop: &'a StopFlag,
) -> impl Fn(usize) -> anyhow::Result<Box<dyn Producer>> + Sync + 'a {
    move |index| {
        let partition = PartitionId(index as u32 % options.partitions.max(1));
        let producer = ClusterProducer::connect(
            bootstrap,
            partition,
            acks,
            options.record_size_bytes,
            records_per_batch,
            stop,
        )?;
        // `replicated` with --pipeline: the same producer over a pipelined connection.
        let producer = if depth > 1 { producer.pipelined(depth)? } else { producer };
        Ok(Box::new(producer) as Box<dyn Producer>)
    }
}

/// Name of an acks setting on the command line and in reports.
pub fn acks_name(acks: Acks) -> &'static str {
    match acks {
        Acks::Quorum => "quorum",
        Acks::Leader => "leader",
        Acks::None => "none",
    }
}

fn model_note(
    model: LoadModel,
    producers: usize,
    depth: usize,
    options: &ClusterScenarioOptions,
) -> String {
    match model {
        LoadModel::Closed if depth > 1 => format!(
            "closed loop: {producers} producers (one pipelined connection each), {depth} \
             batches of {} × {} B outstanding each; latency from send to acknowledgement",
            options.records_per_batch, options.record_size_bytes
        ),
        LoadModel::Closed => format!(
            "closed loop: {producers} producers (one connection each), one batch of {} × {} B \
             outstanding each; latency from send to acknowledgement",
            options.records_per_batch, options.record_size_bytes
        ),
        LoadModel::Open { rate_records_per_sec } if options.linger.is_zero() => format!(
            "open loop: {rate_records_per_sec:.0} records/s offered by {producers} producers \
             in batches of {} × {} B arriving whole; latency from each batch's intended \
             arrival",
            options.records_per_batch, options.record_size_bytes,
        ),
        LoadModel::Open { rate_records_per_sec } => format!(
            "open loop: {rate_records_per_sec:.0} records/s offered by {producers} producers, \
             records arriving one by one, batches of up to {} × {} B closed after {:.1} ms; \
             latency from each record's intended arrival",
            options.records_per_batch,
            options.record_size_bytes,
            options.linger.as_secs_f64() * 1e3
        ),
    }
}

/// `replicated`: one row per acks setting.
pub fn replicated(
    target: &ClusterTarget,
    options: &ClusterScenarioOptions,
    stop: &StopFlag,
) -> anyhow::Result<Vec<ClusterRow>> {
    let bootstrap = target.bootstrap();
    let mut rows = Vec::new();
    for (i, &acks) in options.acks.iter().enumerate() {
        if stop.is_raised() {
            break;
        }
        let _bar = crate::progress::ScenarioProgress::start(
            &format!("replicated acks={}", acks_name(acks)),
            options.warmup + options.duration,
        );
        let mut run = producer_run(options, options.load, options.producers);
        run.pipeline_depth = options.pipeline;
        let make =
            factory(&bootstrap, options, acks, options.records_per_batch, options.pipeline, stop);
        let mut notes =
            vec![model_note(options.load, options.producers, options.pipeline, options)];
        let stall = if i == 0 { options.stall } else { None };
        let (measure, latency) = match (stall, target.local()) {
            (Some(stall), Some(cluster)) => {
                let client = Client::new(client_config(&bootstrap))?;
                let leader = leader_of(&client, PartitionId(0), WRITABLE_TIMEOUT)?;
                notes.push(format!(
                    "injected stall: node {leader} (leader of partition 0) paused with SIGSTOP \
                     for {:.0} ms, {:.1} s into the window",
                    stall.length.as_secs_f64() * 1e3,
                    stall.at.as_secs_f64()
                ));
                let side =
                    |from: Instant, _until: Instant| pause_node(cluster, leader, from, stall, stop);
                let (m, l, _) = measure_run(target, &run, &make, Some(&side), stop)?;
                (m, l)
            }
            (Some(_), None) => bail!("--inject-stall-ms needs a local cluster (not --bootstrap)"),
            (None, _) => {
                let (m, l, _) = measure_run(target, &run, &make, None, stop)?;
                (m, l)
            }
        };
        notes.push(drain(target, options, stop)?);
        rows.push(ClusterRow {
            label: format!("replicated acks={}", acks_name(acks)),
            description: format!(
                "produce through the Rust client to {} partitions, acks={}",
                options.partitions,
                acks_name(acks)
            ),
            parameters: serde_json::json!({ "acks": acks_name(acks), "run": run }),
            measure,
            notes,
            latency,
        });
    }
    Ok(rows)
}

/// Pauses node `id` at `from + stall.at` for `stall.length`; always resumes it.
fn pause_node(
    cluster: &LocalCluster,
    id: u32,
    from: Instant,
    stall: StallInjection,
    stop: &StopFlag,
) -> anyhow::Result<()> {
    struct Resume<'a>(&'a LocalCluster, u32);
    impl Drop for Resume<'_> {
        fn drop(&mut self) {
            let _ = self.0.signal(self.1, Signal::CONT);
        }
    }
    sleep_until(from + stall.at, stop);
    cluster.signal(id, Signal::STOP)?;
    let _resume = Resume(cluster, id);
    std::thread::sleep(stall.length);
    Ok(())
}

/// The open-loop sweep on acks=quorum: offered rates as fractions of `max_rate`.
pub fn sweep(
    target: &ClusterTarget,
    options: &ClusterScenarioOptions,
    max_rate: f64,
    stop: &StopFlag,
) -> anyhow::Result<(SweepReport, Vec<ClusterRow>)> {
    let bootstrap = target.bootstrap();
    let mut points = Vec::new();
    let mut rows = Vec::new();
    for &fraction in &options.sweep_fractions {
        if stop.is_raised() {
            break;
        }
        let rate = (max_rate * fraction).max(1.0);
        let label = format!("sweep {:.0}% ({rate:.0}/s)", fraction * 100.0);
        let _bar = crate::progress::ScenarioProgress::start(
            &label,
            options.warmup + options.sweep_point_duration,
        );
        let mut run = producer_run(
            options,
            LoadModel::Open { rate_records_per_sec: rate },
            options.producers,
        );
        run.duration = options.sweep_point_duration;
        let make = factory(&bootstrap, options, Acks::Quorum, options.records_per_batch, 1, stop);
        let (measure, latency, _) = measure_run(target, &run, &make, None, stop)?;
        let drained = drain(target, options, stop)?;
        points.push(SweepPoint {
            fraction_of_max: fraction,
            offered_records_per_sec: rate,
            achieved_records_per_sec: measure.records_per_sec(),
            p50_us: measure.latency.p50_us,
            p99_us: measure.latency.p99_us,
            p999_us: measure.latency.p999_us,
            max_us: measure.latency.max_us,
        });
        rows.push(ClusterRow {
            label,
            description: "open-loop point of the offered-load sweep (acks=quorum)".to_string(),
            parameters: serde_json::json!({ "fraction_of_max": fraction, "run": run }),
            notes: vec![model_note(run.model, options.producers, 1, options), drained],
            measure,
            latency,
        });
    }
    let bound_us = options.p99_bound.as_secs_f64() * 1e6;
    let report = SweepReport {
        acks: "quorum".to_string(),
        closed_loop_max_records_per_sec: max_rate,
        p99_bound_us: bound_us,
        knee_records_per_sec: knee(&points, bound_us),
        p99_at_half_max_us: points
            .iter()
            .min_by(|a, b| {
                (a.fraction_of_max - 0.5).abs().total_cmp(&(b.fraction_of_max - 0.5).abs())
            })
            .map(|p| p.p99_us),
        points,
    };
    Ok((report, rows))
}

/// The highest offered rate whose p99 is under `bound_us` and which was (nearly) achieved.
pub fn knee(points: &[SweepPoint], bound_us: f64) -> Option<f64> {
    points
        .iter()
        .filter(|p| p.p99_us > 0.0 && p.p99_us <= bound_us)
        .filter(|p| p.achieved_records_per_sec >= 0.95 * p.offered_records_per_sec)
        .map(|p| p.offered_records_per_sec)
        .max_by(f64::total_cmp)
}

/// `fetch`: tail readers while producing, then catch-up reads from the start of the log.
pub fn fetch(
    target: &ClusterTarget,
    options: &ClusterScenarioOptions,
    stop: &StopFlag,
) -> anyhow::Result<Vec<ClusterRow>> {
    let bootstrap = target.bootstrap();
    let client = Client::new(client_config(&bootstrap))?;
    let mut starts = Vec::new();
    for p in 0..options.partitions {
        let status = client.status(PartitionId(p)).context("partition status")?;
        starts.push(status.commit_offset);
    }
    // Tail: one reader per partition from the current commit point, while producers write.
    let _bar =
        crate::progress::ScenarioProgress::start("fetch tail", options.warmup + options.duration);
    let done = AtomicBool::new(false);
    let run = producer_run(options, LoadModel::Closed, options.producers);
    let make = factory(&bootstrap, options, Acks::Quorum, options.records_per_batch, 1, stop);
    let (produce, tail) = std::thread::scope(|scope| -> anyhow::Result<_> {
        let readers: Vec<_> = starts
            .iter()
            .enumerate()
            .map(|(p, start)| {
                let (bootstrap, done, start) = (&bootstrap, &done, *start);
                scope.spawn(move || tail_reader(bootstrap, PartitionId(p as u32), start, done))
            })
            .collect();
        let produced = measure_run(target, &run, &make, None, stop);
        done.store(true, Ordering::Relaxed);
        let mut tail = TailOutcome::default();
        for reader in readers {
            let outcome = reader.join().map_err(|_| anyhow::anyhow!("a reader panicked"))??;
            tail.merge(outcome);
        }
        Ok((produced?, tail))
    })?;
    drop(_bar);
    let drained = drain(target, options, stop)?;
    let (produce_measure, _, _) = produce;
    let window = options.warmup + options.duration;
    let mut tail_measure = RunMeasure {
        operations: tail.fetches,
        records: tail.records,
        bytes: tail.bytes,
        elapsed: window,
        errors: tail.errors,
        ..RunMeasure::default()
    };
    let tail_latency = tail.latency.clone();
    tail_measure.set_latency(tail.latency);
    let mut rows = vec![ClusterRow {
        label: "fetch tail".to_string(),
        description: "one reader per partition long-polling the committed tail while producers \
                      write (acks=quorum)"
            .to_string(),
        parameters: serde_json::json!({ "readers": options.partitions, "producers": run }),
        notes: vec![
            format!(
                "latency: produce send → record fetched (from the send time stamped in each \
             record); readers ran for {:.1} s (warm-up included) while producers wrote {:.0} \
             records/s",
                window.as_secs_f64(),
                produce_measure.records_per_sec()
            ),
            drained,
        ],
        measure: tail_measure,
        latency: tail_latency,
    }];
    if stop.is_raised() {
        return Ok(rows);
    }
    // Catch-up: read every partition from its log start as fast as possible.
    let _bar = crate::progress::ScenarioProgress::start("fetch catch-up", options.duration);
    let started = Instant::now();
    let before = (target.sample(), process_cpu_time());
    let deadline = started + options.duration;
    let outcomes: Vec<anyhow::Result<TailOutcome>> = std::thread::scope(|scope| {
        let readers: Vec<_> = (0..options.partitions)
            .map(|p| {
                let bootstrap = &bootstrap;
                scope.spawn(move || catch_up_reader(bootstrap, PartitionId(p), deadline, stop))
            })
            .collect();
        readers
            .into_iter()
            .map(|r| r.join().unwrap_or_else(|_| Err(anyhow::anyhow!("a reader panicked"))))
            .collect()
    });
    let elapsed = started.elapsed().min(options.duration.max(Duration::from_millis(1)));
    let after = (target.sample(), process_cpu_time());
    let mut catch_up = TailOutcome::default();
    for outcome in outcomes {
        catch_up.merge(outcome?);
    }
    let mut measure = RunMeasure {
        operations: catch_up.fetches,
        records: catch_up.records,
        bytes: catch_up.bytes,
        elapsed,
        errors: catch_up.errors,
        cpu: after.1.saturating_sub(before.1),
        node_cpu: target.local().map(|_| {
            after
                .0
                .cpu
                .iter()
                .filter_map(|(pid, t)| before.0.cpu.get(pid).map(|s| t.saturating_sub(*s)))
                .sum()
        }),
        ..RunMeasure::default()
    };
    let latency = catch_up.latency.clone();
    measure.set_latency(catch_up.latency);
    rows.push(ClusterRow {
        label: "fetch catch-up".to_string(),
        description: "one reader per partition reading from the log start (older data comes \
                      from disk, past the tail cache)"
            .to_string(),
        parameters: serde_json::json!({ "readers": options.partitions, "fetch_bytes": crate::cluster_client::FETCH_BYTES }),
        notes: vec!["latency: one fetch round trip (up to 1 MiB of batches)".to_string()],
        measure,
        latency,
    });
    Ok(rows)
}

#[derive(Debug, Default)]
struct TailOutcome {
    records: u64,
    bytes: u64,
    fetches: u64,
    errors: u64,
    latency: LatencyRecorder,
}

impl TailOutcome {
    fn merge(&mut self, other: TailOutcome) {
        self.records += other.records;
        self.bytes += other.bytes;
        self.fetches += other.fetches;
        self.errors += other.errors;
        self.latency.merge(&other.latency);
    }
}

fn tail_reader(
    bootstrap: &Endpoint,
    partition: PartitionId,
    start: Offset,
    done: &AtomicBool,
) -> anyhow::Result<TailOutcome> {
    let client = Client::new(client_config(bootstrap))?;
    let mut outcome = TailOutcome::default();
    let mut latency = LatencyRecorder::new();
    let mut on_record = |stamp: u64| {
        let now = unix_nanos();
        latency.record(Duration::from_nanos(now.saturating_sub(stamp)));
    };
    let progress = read_partition(
        &client,
        partition,
        start,
        &mut outcome.errors,
        &mut on_record,
        &mut |_| done.load(Ordering::Relaxed),
    )?;
    outcome.records = progress.records;
    outcome.bytes = progress.bytes;
    outcome.fetches = progress.fetches;
    outcome.latency = latency;
    Ok(outcome)
}

fn catch_up_reader(
    bootstrap: &Endpoint,
    partition: PartitionId,
    deadline: Instant,
    stop: &StopFlag,
) -> anyhow::Result<TailOutcome> {
    let client = Client::new(client_config(bootstrap))?;
    let end = client.status(partition).context("partition status")?.commit_offset;
    let mut outcome = TailOutcome::default();
    let mut last_fetch = Instant::now();
    let mut latency = LatencyRecorder::new();
    let progress = read_partition(
        &client,
        partition,
        Offset(0),
        &mut outcome.errors,
        &mut |_| {},
        &mut |progress| {
            let now = Instant::now();
            latency.record(now - last_fetch);
            last_fetch = now;
            progress.next >= end || now >= deadline || stop.is_raised()
        },
    )?;
    outcome.records = progress.records;
    outcome.bytes = progress.bytes;
    outcome.fetches = progress.fetches;
    outcome.latency = latency;
    Ok(outcome)
}

/// `failover`: kill -9 the leader of partition 0 a third into the window; restart it after.
pub fn failover(
    target: &mut ClusterTarget,
    options: &ClusterScenarioOptions,
    stop: &StopFlag,
) -> anyhow::Result<(ClusterRow, FailoverReport)> {
    let ClusterTarget::Local(_) = target else {
        bail!("failover needs a local cluster (it kills a node): not available with --bootstrap");
    };
    let bootstrap = target.bootstrap();
    let client = Client::new(client_config(&bootstrap))?;
    let victim = leader_of(&client, PartitionId(0), WRITABLE_TIMEOUT)?;
    let metadata = client.metadata().context("metadata")?;
    let led: Vec<u32> = metadata
        .partitions
        .iter()
        .filter(|p| p.leader.map(|l| l.0) == Some(victim))
        .map(|p| p.partition.0)
        .collect();
    let _bar =
        crate::progress::ScenarioProgress::start("failover", options.warmup + options.duration);
    let mut run = producer_run(options, LoadModel::Closed, options.producers);
    run.keep_completions = true;
    let make = factory(&bootstrap, options, Acks::Quorum, options.records_per_batch, 1, stop);
    let kill_after = options.duration / 3;
    let killed_at: Mutex<Option<Instant>> = Mutex::new(None);
    let window_from: Mutex<Option<Instant>> = Mutex::new(None);
    let (measure, latency, completions) = {
        let ClusterTarget::Local(cluster) = &*target else { unreachable!("checked above") };
        let side = |from: Instant, _until: Instant| -> anyhow::Result<()> {
            *window_from.lock().expect("lock") = Some(from);
            sleep_until(from + kill_after, stop);
            if stop.is_raised() {
                return Ok(());
            }
            cluster.signal(victim, Signal::KILL)?;
            *killed_at.lock().expect("lock") = Some(Instant::now());
            Ok(())
        };
        measure_run(target, &run, &make, Some(&side), stop)?
    };
    drop(_bar);
    let from = window_from.lock().expect("lock").context("window start")?;
    let killed = killed_at.lock().expect("lock").unwrap_or(from + kill_after);
    let killed_at_secs = killed.saturating_duration_since(from).as_secs_f64();
    // Producers of the partitions the victim led: their longest gap between completions.
    let mut affected: Vec<Duration> = completions
        .iter()
        .enumerate()
        .filter(|(index, _)| led.contains(&(*index as u32 % options.partitions.max(1))))
        .flat_map(|(_, times)| times.iter().copied())
        .collect();
    affected.sort();
    let kill_offset = Duration::from_secs_f64(killed_at_secs);
    let unavailability = longest_gap_around(&affected, kill_offset, options.duration);
    // Bring the victim back so later scenarios see three nodes.
    let restart_started = Instant::now();
    if let ClusterTarget::Local(cluster) = target {
        cluster.kill(victim)?;
        if !stop.is_raised() {
            cluster.restart(victim)?;
            wait_writable(&bootstrap, options.partitions, WRITABLE_TIMEOUT)?;
        }
    }
    let report = FailoverReport {
        killed_node: victim,
        partitions_led: led.clone(),
        killed_at_secs,
        unavailability_secs: unavailability.as_secs_f64(),
        restart_secs: restart_started.elapsed().as_secs_f64(),
    };
    let row = ClusterRow {
        label: "failover".to_string(),
        description: "SIGKILL of the leader of partition 0 mid-run (acks=quorum); the client \
                      re-routes to the new leader"
            .to_string(),
        parameters: serde_json::json!({ "run": run, "killed_node": victim, "partitions_led": led }),
        notes: vec![
            model_note(LoadModel::Closed, options.producers, 1, options),
            format!(
                "node {victim} (leader of partitions {led:?}) killed {killed_at_secs:.2} s into \
                 the window; longest time without an acknowledged produce on those partitions: \
                 {:.0} ms; node CPU excludes the killed node after the kill",
                unavailability.as_secs_f64() * 1e3
            ),
        ],
        measure,
        latency,
    };
    Ok((row, report))
}

/// The longest interval between consecutive `times` (sorted) that overlaps `around`, with
/// the window's edges `[0, end]` as the outer bounds.
pub fn longest_gap_around(times: &[Duration], around: Duration, end: Duration) -> Duration {
    let mut previous = Duration::ZERO;
    let mut longest = Duration::ZERO;
    for &t in times.iter().chain(std::iter::once(&end)) {
        if previous <= around && t >= around {
            longest = longest.max(t.saturating_sub(previous));
        }
        previous = t;
    }
    longest
}

/// `many-producers`: hundreds of producers, one record per batch.
pub fn many_producers(
    target: &ClusterTarget,
    options: &ClusterScenarioOptions,
    stop: &StopFlag,
) -> anyhow::Result<ClusterRow> {
    let bootstrap = target.bootstrap();
    let _bar = crate::progress::ScenarioProgress::start(
        "many-producers",
        options.warmup + options.duration,
    );
    let mut small = options.clone();
    small.records_per_batch = 1;
    let run = producer_run(&small, LoadModel::Closed, options.many_producers);
    let make = factory(&bootstrap, &small, Acks::Quorum, 1, 1, stop);
    let (measure, latency, _) = measure_run(target, &run, &make, None, stop)?;
    let drained = drain(target, options, stop)?;
    Ok(ClusterRow {
        label: "many-producers".to_string(),
        description: format!(
            "{} producers, one connection and one 1-record batch outstanding each (acks=quorum)",
            options.many_producers
        ),
        parameters: serde_json::json!({ "run": run }),
        notes: vec![model_note(LoadModel::Closed, options.many_producers, 1, &small), drained],
        measure,
        latency,
    })
}

/// `retention`: producing into a cluster of small segments with a small retention, so that
/// whole segments are deleted while producers write; reports how far the log start moved.
pub fn retention(
    target: &ClusterTarget,
    options: &ClusterScenarioOptions,
    retention_bytes: u64,
    stop: &StopFlag,
) -> anyhow::Result<ClusterRow> {
    let bootstrap = target.bootstrap();
    let _bar =
        crate::progress::ScenarioProgress::start("retention", options.warmup + options.duration);
    let run = producer_run(options, LoadModel::Closed, options.producers);
    let make = factory(&bootstrap, options, Acks::Quorum, options.records_per_batch, 1, stop);
    let (measure, latency, _) = measure_run(target, &run, &make, None, stop)?;
    let client = Client::new(client_config(&bootstrap))?;
    let mut starts = Vec::new();
    for p in 0..options.partitions {
        let start = match client.fetch(
            PartitionId(p),
            Offset(0),
            4096,
            Duration::ZERO,
            Consistency::ReplicaCommitted,
        ) {
            Ok(response) => response.log_start.0,
            Err(error) => match error.reply() {
                Some(ringlog_net::protocol::ErrorReply::OffsetOutOfRange { log_start, .. }) => {
                    log_start.0
                }
                _ => return Err(error).context("reading the log start"),
            },
        };
        starts.push(start);
    }
    let moved = starts.iter().filter(|s| **s > 0).count();
    Ok(ClusterRow {
        label: "retention".to_string(),
        description: format!(
            "producing with retention_bytes_max = {retention_bytes} B per partition on small \
             segments: sealed segments are deleted while producers write"
        ),
        parameters: serde_json::json!({ "run": run, "retention_bytes_max": retention_bytes, "log_start_offsets": starts }),
        notes: vec![format!(
            "log start offsets after the run: {starts:?} ({moved} of {} partitions had \
             segments deleted by retention)",
            options.partitions
        )],
        measure,
        latency,
    })
}

/// Waits until every partition of `target` accepts writes.
pub fn ready(target: &ClusterTarget, partitions: u32) -> anyhow::Result<()> {
    wait_writable(&target.bootstrap(), partitions, WRITABLE_TIMEOUT)
}

/// A timeline for rows that have none.
pub fn empty_timeline() -> Timeline {
    Timeline::new(Duration::from_secs(1))
}

fn serialize_secs<S: serde::Serializer>(
    value: &Duration,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.serialize_f64(value.as_secs_f64())
}

fn serialize_acks<S: serde::Serializer>(value: &[Acks], serializer: S) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeSeq as _;
    let mut seq = serializer.serialize_seq(Some(value.len()))?;
    for acks in value {
        seq.serialize_element(acks_name(*acks))?;
    }
    seq.end()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(offered: f64, achieved: f64, p99_us: f64) -> SweepPoint {
        SweepPoint {
            fraction_of_max: 0.0,
            offered_records_per_sec: offered,
            achieved_records_per_sec: achieved,
            p50_us: 0.0,
            p99_us,
            p999_us: 0.0,
            max_us: 0.0,
        }
    }

    #[test]
    fn the_knee_is_the_highest_rate_under_the_bound_that_was_achieved() {
        let points = [
            point(1000.0, 1000.0, 800.0),
            point(2000.0, 1990.0, 2000.0),
            point(3000.0, 2500.0, 5000.0), // under the bound but not achieved
            point(4000.0, 4000.0, 50_000.0),
        ];
        assert_eq!(knee(&points, 10_000.0), Some(2000.0));
        assert_eq!(knee(&points, 100.0), None);
    }

    #[test]
    fn the_unavailability_gap_is_the_one_spanning_the_kill() {
        let ms = Duration::from_millis;
        let times = [ms(10), ms(20), ms(30), ms(900), ms(910)];
        assert_eq!(longest_gap_around(&times, ms(35), ms(1000)), ms(870));
        // No completion after the kill: the gap runs to the window's end.
        assert_eq!(longest_gap_around(&times[..3], ms(35), ms(1000)), ms(970));
    }
}
