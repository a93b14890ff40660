//! What a soak run does: its seed, length, load and the fault kinds the nemesis may pick;
//! parsed from the `ringlog-nemesis` command line and printed back as a replay command.

use std::collections::BTreeSet;
use std::time::Duration;

/// One kind of fault the nemesis injects (its command-line name in `NAMES`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum EventKind {
    /// kill -9 the leader of a partition, restart it after a while.
    KillLeader,
    /// kill -9 a follower of a partition, restart it after a while.
    KillFollower,
    /// SIGSTOP a node (any role) for 1–6 s, then SIGCONT.
    Pause,
    /// kill -9 two nodes at once (a majority crash, disks intact), restart both.
    KillTwo,
    /// SIGTERM a node (it must exit 0 within 30 s), restart it.
    GracefulRestart,
    /// kill -9 a follower, delete everything in its data dir, restart it.
    Wipe,
    /// As `Wipe`, and kill -9 it again 20–150 ms into its first start (issue #13 item 4).
    WipeCrash,
    /// kill -9 a follower, flip one bit in a batch within 512 KiB of its log's tail.
    FlipTail,
    /// kill -9 a follower, flip one bit in a batch of a sealed segment.
    FlipSealed,
    /// kill -9 a follower, flip one bit in a slot (mostly the newest) of its hard state.
    FlipHardState,
    /// Fill a follower's disk (its data dir is a small loop-mounted ext4) for 3–8 s.
    FillDisk,
    /// Cut a node (the leader of a partition or a follower) off from the other two for
    /// 1–4 s: every packet between them dropped by iptables inside the run's own network
    /// namespace (tests/cluster/netcut.rs), then healed. Unlike `pause`, the cut node keeps
    /// running, serving its clients and appending as a leader until it notices.
    Partition,
    /// Cut one link only (two nodes that can no longer reach each other, both still reaching
    /// the third) for 1–4 s, then heal: a partial partition, where a node that hears no
    /// leader must not disrupt the one the others follow.
    CutLink,
}

impl EventKind {
    pub const ALL: [EventKind; 13] = [
        EventKind::KillLeader,
        EventKind::KillFollower,
        EventKind::Pause,
        EventKind::KillTwo,
        EventKind::GracefulRestart,
        EventKind::Wipe,
        EventKind::WipeCrash,
        EventKind::FlipTail,
        EventKind::FlipSealed,
        EventKind::FlipHardState,
        EventKind::FillDisk,
        EventKind::Partition,
        EventKind::CutLink,
    ];

    /// The process faults (no disk touched): today's code survives them with no anomaly.
    pub const CRASH: [EventKind; 5] = [
        EventKind::KillLeader,
        EventKind::KillFollower,
        EventKind::Pause,
        EventKind::KillTwo,
        EventKind::GracefulRestart,
    ];

    /// The network faults (links cut inside the run's own network namespace).
    pub const NET: [EventKind; 2] = [EventKind::Partition, EventKind::CutLink];

    /// Whether the event cuts links (the run then lives in a network namespace of its own).
    pub fn is_net_event(self) -> bool {
        EventKind::NET.contains(&self)
    }

    pub fn name(self) -> &'static str {
        match self {
            EventKind::KillLeader => "kill-leader",
            EventKind::KillFollower => "kill-follower",
            EventKind::Pause => "pause",
            EventKind::KillTwo => "kill-two",
            EventKind::GracefulRestart => "graceful-restart",
            EventKind::Wipe => "wipe",
            EventKind::WipeCrash => "wipe-crash",
            EventKind::FlipTail => "flip-tail",
            EventKind::FlipSealed => "flip-sealed",
            EventKind::FlipHardState => "flip-hard-state",
            EventKind::FillDisk => "fill-disk",
            EventKind::Partition => "partition",
            EventKind::CutLink => "cut-link",
        }
    }

    /// Whether the event damages or fills a disk (only ever one node's, and only while the
    /// other two are healthy: the fault model excludes losing a majority's disks).
    pub fn is_disk_event(self) -> bool {
        matches!(
            self,
            EventKind::Wipe
                | EventKind::WipeCrash
                | EventKind::FlipTail
                | EventKind::FlipSealed
                | EventKind::FlipHardState
                | EventKind::FillDisk
        )
    }

    fn parse(name: &str) -> Option<EventKind> {
        EventKind::ALL.into_iter().find(|k| k.name() == name)
    }
}

/// A soak run's settings. `Options::ci(seed)` is the short CI run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Options {
    pub seed: u64,
    /// Length of the fault phase (the final heal, restart and check come after it).
    pub duration: Duration,
    pub events: BTreeSet<EventKind>,
    pub partitions: u32,
    /// Writer threads; writer `w` produces to partition `w % partitions`.
    pub writers: u32,
    /// Records per second over all writers (paced; acks=quorum, 1–8 records per produce).
    pub rate_records_per_sec: u32,
    pub segment_size: u64,
    /// Size of each node's loop-mounted ext4 (only with `fill-disk`); 0 sizes it from the
    /// duration and rate.
    pub disk_mib: u64,
    /// Keep the cluster directory (node logs, data) even when the run is clean.
    pub keep_dir: bool,
}

/// Default records per second over all writers: leaves CPU to the nodes on a 2-core VM.
pub const RATE_DEFAULT: u32 = 1500;

impl Options {
    /// The CI run: 60 s of `events` on 3 partitions.
    pub fn ci(seed: u64, events: &[EventKind]) -> Options {
        Options {
            seed,
            duration: Duration::from_secs(60),
            events: events.iter().copied().collect(),
            partitions: 3,
            writers: 6,
            rate_records_per_sec: RATE_DEFAULT,
            segment_size: 1024 * 1024,
            disk_mib: 0,
            keep_dir: false,
        }
    }

    /// Parses `ringlog-nemesis` arguments (see `USAGE`) over the CI defaults (events: crash).
    pub fn parse(args: &[String], default_seed: u64) -> Result<Options, String> {
        let mut options = Options::ci(default_seed, &EventKind::CRASH);
        let mut i = 0;
        while i < args.len() {
            let flag = args[i].as_str();
            if flag == "--keep-dir" {
                options.keep_dir = true;
                i += 1;
                continue;
            }
            let value = args.get(i + 1).ok_or_else(|| format!("{flag} needs a value"))?;
            let number =
                || value.parse::<u64>().map_err(|_| format!("{flag}: not a number: {value}"));
            match flag {
                "--seed" => options.seed = number()?,
                "--duration-secs" => options.duration = Duration::from_secs(number()?),
                "--events" => options.events = parse_events(value)?,
                "--partitions" => options.partitions = small(flag, number()?, 1, 64)?,
                "--writers" => options.writers = small(flag, number()?, 1, 256)?,
                "--rate" => options.rate_records_per_sec = small(flag, number()?, 1, 1_000_000)?,
                "--segment-mib" => options.segment_size = number()?.clamp(1, 1024) * 1024 * 1024,
                "--disk-mib" => options.disk_mib = number()?,
                _ => return Err(format!("unknown flag {flag}\n{USAGE}")),
            }
            i += 2;
        }
        if options.events.is_empty() {
            return Err("--events selects no event".to_string());
        }
        Ok(options)
    }

    /// The arguments that replay this run (`ringlog-nemesis <args>`).
    pub fn to_args(&self) -> String {
        let events: Vec<&str> = self.events.iter().map(|k| k.name()).collect();
        format!(
            "--seed {} --duration-secs {} --events {} --partitions {} --writers {} --rate {} \
             --segment-mib {}",
            self.seed,
            self.duration.as_secs(),
            events.join(","),
            self.partitions,
            self.writers,
            self.rate_records_per_sec,
            self.segment_size / (1024 * 1024),
        )
    }

    /// The loop disk size: the configured one, or room for the run's writes, at least 256 MiB.
    /// At this rate each produce (4.5 records on average) is about one flush, and a flush is
    /// padded to 4 KiB: ~4 KiB per produce, with half again as margin (repairs, spares).
    pub fn disk_size_mib(&self) -> u64 {
        if self.disk_mib > 0 {
            return self.disk_mib;
        }
        let produces = self.duration.as_secs() * u64::from(self.rate_records_per_sec) / 4;
        let spares = u64::from(self.partitions) * 4 * self.segment_size;
        ((produces * 6 * 1024 + spares) >> 20).clamp(256, 16 * 1024)
    }
}

pub const USAGE: &str = "\
ringlog-nemesis [--seed N] [--duration-secs N] [--events LIST] [--partitions N] [--writers N]
                [--rate RECORDS_PER_SEC] [--segment-mib N] [--disk-mib N] [--keep-dir]
LIST (default crash): comma-separated event names or presets: crash (kill-leader,
kill-follower, pause, kill-two, graceful-restart), disk (wipe, wipe-crash, flip-tail,
flip-sealed, flip-hard-state, fill-disk), net (partition: a node cut off by iptables in a
network namespace of the run's own, cut-link: one link cut; both need root and iptables),
all; a name prefixed with '-' removes it (all,-fill-disk).";

fn parse_events(list: &str) -> Result<BTreeSet<EventKind>, String> {
    let mut out = BTreeSet::new();
    for item in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (remove, name) = match item.strip_prefix('-') {
            Some(name) => (true, name),
            None => (false, item),
        };
        let kinds: Vec<EventKind> = match name {
            "crash" => EventKind::CRASH.to_vec(),
            "net" => EventKind::NET.to_vec(),
            "all" => EventKind::ALL.to_vec(),
            "disk" => EventKind::ALL.into_iter().filter(|k| k.is_disk_event()).collect(),
            _ => vec![EventKind::parse(name).ok_or_else(|| format!("unknown event {name}"))?],
        };
        for kind in kinds {
            if remove {
                out.remove(&kind);
            } else {
                out.insert(kind);
            }
        }
    }
    Ok(out)
}

fn small(flag: &str, value: u64, min: u64, max: u64) -> Result<u32, String> {
    if (min..=max).contains(&value) {
        Ok(value as u32)
    } else {
        Err(format!("{flag} must be in {min}..={max}, got {value}"))
    }
}
