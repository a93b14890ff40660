//! Where a process's shard executors run: one CPU (or none) per shard, chosen so that two
//! ringlog processes on one host never share a CPU.
//!
//! `pinning = "auto"` used to pin shard `i` to CPU `i` in every process, so three local nodes
//! of one shard each all ran on CPU 0 (and lost ~30% of their throughput to each other). Now
//! each process *claims* the CPUs it pins, host-wide, by holding an exclusive `flock` on one
//! lock file per CPU in a directory every ringlog process of the host shares
//! ([`cpu_claims_dir`]). A claim lives exactly as long as the process's open file: the kernel
//! drops it when the process exits, however it exits (kill -9 included), so a stale claim
//! cannot outlive its owner and there is nothing to clean up.
//!
//! The `auto` rule, for `shards` shards on the CPUs this process may run on (its affinity
//! mask, so `taskset` and cgroup cpusets are respected):
//! - claim CPUs from the highest-numbered down (CPU 0 usually takes the most interrupts);
//! - pin only if `shards` CPUs can be claimed *and* at least one more allowed CPU is free of
//!   every claim, left for the kernel's IO completion work, the node's other threads and the
//!   host (design.md §11); otherwise pin nothing and say why.
//!
//! `always` pins shard `i` to the `i % n`-th allowed CPU without claiming anything (the
//! operator placed the processes); `never` pins nothing.
//!
//! Invariants: a CPU is pinned by at most one `auto` process of a host at a time (the claim
//! is an exclusive lock taken before the executor exists); a process that cannot leave a
//! CPU free pins nothing.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rustix::fs::{flock, FlockOperation};

use crate::runtime::Pinning;

/// The environment variable that names the directory of CPU claims (default
/// [`CPU_CLAIMS_DIR_DEFAULT`]). Point every ringlog process that should see each other's
/// claims at one directory: containers on one host need a shared mount for it.
pub const CPU_CLAIMS_DIR_ENV: &str = "RINGLOG_CPU_CLAIMS_DIR";

/// Where CPU claims live when [`CPU_CLAIMS_DIR_ENV`] is unset: the host's directory for lock
/// files (a tmpfs, world-writable with the sticky bit on Linux distributions), so every user's
/// processes see one set of claims and nothing survives a reboot.
pub const CPU_CLAIMS_DIR_DEFAULT: &str = "/run/lock/ringlog-cpus";

/// The directory of CPU claims this process uses: [`CPU_CLAIMS_DIR_ENV`] if set, else
/// [`CPU_CLAIMS_DIR_DEFAULT`] when `/run/lock` exists, else `ringlog-cpus` in the temporary
/// directory.
pub fn cpu_claims_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os(CPU_CLAIMS_DIR_ENV).filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    let default = Path::new(CPU_CLAIMS_DIR_DEFAULT);
    if default.parent().is_some_and(Path::is_dir) {
        return default.to_path_buf();
    }
    std::env::temp_dir().join("ringlog-cpus")
}

/// The CPUs the calling thread may run on (its affinity mask), in increasing order.
pub fn allowed_cpus() -> Vec<usize> {
    match rustix::thread::sched_getaffinity(None) {
        Ok(set) => (0..rustix::thread::CpuSet::MAX_CPU).filter(|&cpu| set.is_set(cpu)).collect(),
        // No mask to read (never on Linux): every CPU the standard library counts.
        Err(_) => (0..crate::runtime::available_cpus()).collect(),
    }
}

/// One CPU a process holds for itself: the open, exclusively locked claim file.
#[derive(Debug)]
struct Claim {
    cpu: usize,
    _file: File,
}

/// Where each shard runs, and the claims that keep other processes off those CPUs. Keep it
/// alive as long as the executors run: dropping it releases the claims.
#[derive(Debug)]
pub struct Placement {
    cpus: Vec<Option<usize>>,
    claims: Vec<Claim>,
    summary: String,
}

impl Placement {
    /// The CPU shard `shard` is pinned to, if any.
    pub fn cpu(&self, shard: usize) -> Option<usize> {
        self.cpus.get(shard).copied().flatten()
    }

    /// The CPUs this process has claimed (empty unless `auto` pinned).
    pub fn claimed(&self) -> Vec<usize> {
        self.claims.iter().map(|c| c.cpu).collect()
    }

    /// One line for the log: the mode, which shard runs where, and why.
    pub fn summary(&self) -> &str {
        &self.summary
    }

    fn unpinned(shards: usize, summary: String) -> Placement {
        Placement { cpus: vec![None; shards], claims: Vec::new(), summary }
    }
}

/// Places `shards` shards by `pinning` on the CPUs this process may run on, claiming them in
/// [`cpu_claims_dir`] for `auto` (see the module docs).
pub fn place_shards(pinning: Pinning, shards: usize) -> Placement {
    place_shards_on(pinning, shards, &allowed_cpus(), &cpu_claims_dir())
}

/// [`place_shards`] on an explicit set of allowed CPUs and claims directory.
pub fn place_shards_on(
    pinning: Pinning,
    shards: usize,
    allowed: &[usize],
    claims_dir: &Path,
) -> Placement {
    match pinning {
        Pinning::Never => {
            Placement::unpinned(shards, "pinning = never: shards are not pinned".to_string())
        }
        Pinning::Always => {
            if allowed.is_empty() {
                return Placement::unpinned(shards, "pinning = always: no CPU allowed".into());
            }
            let cpus: Vec<Option<usize>> =
                (0..shards).map(|shard| Some(allowed[shard % allowed.len()])).collect();
            let summary = format!("pinning = always: shard i on CPU {cpus:?}");
            Placement { cpus, claims: Vec::new(), summary }
        }
        Pinning::Auto => place_auto(shards, allowed, claims_dir),
    }
}

fn place_auto(shards: usize, allowed: &[usize], claims_dir: &Path) -> Placement {
    if allowed.len() <= shards {
        return Placement::unpinned(
            shards,
            format!(
                "pinning = auto: not pinned ({shards} shards on {} allowed CPUs leave none free)",
                allowed.len()
            ),
        );
    }
    if let Err(error) = prepare_dir(claims_dir) {
        return Placement::unpinned(
            shards,
            format!("pinning = auto: not pinned (CPU claims directory {claims_dir:?}: {error})"),
        );
    }
    // Claim one CPU more than needed, to see that one stays free of every claim; then give
    // the spare (the lowest) back.
    let mut claims: Vec<Claim> = Vec::with_capacity(shards + 1);
    for &cpu in allowed.iter().rev() {
        if claims.len() == shards + 1 {
            break;
        }
        if let Some(claim) = try_claim(claims_dir, cpu) {
            claims.push(claim);
        }
    }
    if claims.len() < shards + 1 {
        let free = claims.len();
        return Placement::unpinned(
            shards,
            format!(
                "pinning = auto: not pinned (other ringlog processes hold CPU claims in \
                 {claims_dir:?}; {free} of {} allowed CPUs free, {shards} shards need {})",
                allowed.len(),
                shards + 1
            ),
        );
    }
    claims.pop(); // the spare
    claims.sort_by_key(|c| c.cpu);
    let cpus: Vec<Option<usize>> = claims.iter().map(|c| Some(c.cpu)).collect();
    let summary = format!(
        "pinning = auto: shard i on CPU {:?} (claimed in {claims_dir:?})",
        claims.iter().map(|c| c.cpu).collect::<Vec<_>>()
    );
    Placement { cpus, claims, summary }
}

/// Creates the claims directory if needed, open to every user (sticky, like /tmp) so that
/// processes of other users can claim CPUs beside ours.
fn prepare_dir(dir: &Path) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    match std::fs::create_dir(dir) {
        Ok(()) => std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o1777)),
        Err(error) if error.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(error) => Err(error),
    }
}

/// Takes the exclusive claim of `cpu`, or `None` if another process holds it (or its file
/// cannot be opened, which is treated as claimed: never pin on a CPU we cannot vouch for).
fn try_claim(dir: &Path, cpu: usize) -> Option<Claim> {
    let path = dir.join(format!("cpu{cpu}.lock"));
    // Readable by everyone: any user's process can open it to lock it (flock needs no
    // write access).
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o644)
        .open(&path)
        .or_else(|_| File::open(&path))
        .ok()?;
    flock(&file, FlockOperation::NonBlockingLockExclusive).ok()?;
    Some(Claim { cpu, _file: file })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_auto_processes_never_share_a_cpu_and_one_cpu_stays_free() {
        let dir = tempfile::tempdir().unwrap();
        let allowed = [0, 1, 2, 3];
        let a = place_shards_on(Pinning::Auto, 1, &allowed, dir.path());
        assert_eq!(a.claimed(), vec![3], "{}", a.summary());
        assert_eq!(a.cpu(0), Some(3));
        let b = place_shards_on(Pinning::Auto, 1, &allowed, dir.path());
        assert_eq!(b.claimed(), vec![2], "{}", b.summary());
        let c = place_shards_on(Pinning::Auto, 1, &allowed, dir.path());
        assert_eq!(c.claimed(), vec![1], "{}", c.summary());
        // Only CPU 0 is left: pinning on it would leave nothing free.
        let d = place_shards_on(Pinning::Auto, 1, &allowed, dir.path());
        assert_eq!(d.cpu(0), None, "{}", d.summary());
        assert!(d.summary().contains("not pinned"), "{}", d.summary());
        // A process that ends gives its CPUs back.
        drop(b);
        let e = place_shards_on(Pinning::Auto, 1, &allowed, dir.path());
        assert_eq!(e.claimed(), vec![2], "{}", e.summary());
    }

    #[test]
    fn auto_pins_nothing_when_the_shards_do_not_leave_a_cpu_free() {
        let dir = tempfile::tempdir().unwrap();
        let p = place_shards_on(Pinning::Auto, 2, &[0, 1], dir.path());
        assert_eq!((p.cpu(0), p.cpu(1)), (None, None));
        assert!(p.claimed().is_empty());
        let p = place_shards_on(Pinning::Auto, 2, &[0, 1, 2], dir.path());
        assert_eq!((p.cpu(0), p.cpu(1)), (Some(1), Some(2)), "{}", p.summary());
        // Two CPUs claimed of three: a second two-shard process finds one and pins nothing,
        // and its failed try holds no claim afterwards.
        let q = place_shards_on(Pinning::Auto, 2, &[0, 1, 2], dir.path());
        assert!(q.claimed().is_empty(), "{}", q.summary());
        let r = place_shards_on(Pinning::Auto, 1, &[0, 1, 2], dir.path());
        assert!(r.claimed().is_empty(), "one CPU free cannot be pinned: {}", r.summary());
    }

    #[test]
    fn auto_respects_the_affinity_mask() {
        let dir = tempfile::tempdir().unwrap();
        let p = place_shards_on(Pinning::Auto, 1, &[4, 6, 9], dir.path());
        assert_eq!(p.cpu(0), Some(9), "{}", p.summary());
        let q = place_shards_on(Pinning::Always, 3, &[4, 6], dir.path());
        assert_eq!((q.cpu(0), q.cpu(1), q.cpu(2)), (Some(4), Some(6), Some(4)));
        assert!(q.claimed().is_empty());
        let n = place_shards_on(Pinning::Never, 2, &[4, 6], dir.path());
        assert_eq!((n.cpu(0), n.cpu(1)), (None, None));
    }

    #[test]
    fn an_unusable_claims_directory_means_unpinned_with_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("not-a-dir");
        std::fs::write(&file, b"x").unwrap();
        let p = place_shards_on(Pinning::Auto, 1, &[0, 1, 2], &file.join("claims"));
        assert_eq!(p.cpu(0), None);
        assert!(p.summary().contains("CPU claims directory"), "{}", p.summary());
    }
}
