//! Issue #13 item 10: a follower whose disk fills must not crash-loop. Real `ringlog serve`
//! processes; the follower's data dir is a small loop-mounted ext4 (root, `mkfs.ext4` and
//! loop devices needed; the test skips with a message without them). The follower fills its
//! disk under a produce load, stays up (before the fix it exited with status 2, again after
//! every restart), keeps answering status and reads, acks nothing it could not make durable
//! (the two others commit), and catches up by itself once a file is removed; at the end every
//! acknowledged record is present once and every replica's committed log is byte-identical.

#[path = "harness.rs"]
mod harness;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use harness::{Cluster, Ledger, Spec, LIVENESS_TIMEOUT};
use ringlog_net::client::Client;
use ringlog_net::protocol::{Acks, Consistency};
use ringlog_net::{Offset, PartitionId};

const PARTITION: PartitionId = PartitionId(0);
/// The follower's disk.
const DISK_MIB: u64 = 64;
/// Free space left on it (beside its log) when the load starts: filled within seconds.
const FREE_LEFT_MIB: u64 = 10;
/// Bytes of one produced record.
const RECORD_BYTES: usize = 16 * 1024;
/// Longer than the ~4 s crash loop of the issue: the full follower must still be up after it.
const FULL_FOR: Duration = Duration::from_secs(6);

/// A loop-mounted ext4 image; unmounted when dropped (even when the test fails).
struct LoopDisk {
    mount: PathBuf,
    image: PathBuf,
}

impl LoopDisk {
    fn mount(image: PathBuf, mount: &Path, size_mib: u64) -> Result<LoopDisk, String> {
        let uid = Command::new("id").arg("-u").output().map_err(|e| format!("id: {e}"))?;
        if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
            return Err("not root (mount needs it)".into());
        }
        if Command::new("mkfs.ext4").arg("-V").output().is_err() {
            return Err("mkfs.ext4 not found (install e2fsprogs)".into());
        }
        let file = std::fs::File::create(&image).map_err(|e| e.to_string())?;
        file.set_len(size_mib << 20).map_err(|e| e.to_string())?;
        drop(file);
        run("mkfs.ext4", &["-q", "-F", as_str(&image)])?;
        run("mount", &["-o", "loop", as_str(&image), as_str(mount)])?;
        Ok(LoopDisk { mount: mount.to_path_buf(), image })
    }
}

impl Drop for LoopDisk {
    fn drop(&mut self) {
        // `mount -o loop` sets autoclear: the loop device goes with the unmount.
        if run("umount", &[as_str(&self.mount)]).is_err() {
            let _ = run("umount", &["-l", as_str(&self.mount)]);
        }
        let _ = std::fs::remove_file(&self.image);
    }
}

fn as_str(path: &Path) -> &str {
    path.to_str().expect("utf-8 test path")
}

fn run(program: &str, args: &[&str]) -> Result<(), String> {
    let out = Command::new(program).args(args).output().map_err(|e| format!("{program}: {e}"))?;
    if !out.status.success() {
        return Err(format!("{program} {args:?}: {}", String::from_utf8_lossy(&out.stderr)));
    }
    Ok(())
}

/// Whether process `pid` runs (exists and is not a zombie waiting to be reaped).
fn alive(pid: u32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // "pid (comm) S ...": the state follows the last ')'.
    stat.rsplit(')')
        .next()
        .and_then(|rest| rest.trim_start().chars().next())
        .is_some_and(|s| s != 'Z')
}

fn free_bytes(path: &Path) -> u64 {
    let out = Command::new("df").args(["-B1", "--output=avail", as_str(path)]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines().nth(1).and_then(|l| l.trim().parse().ok()).expect("df output")
}

fn produce(client: &Client, ledger: &mut Ledger, tag: &str, batches: u32) {
    for b in 0..batches {
        let values: Vec<Vec<u8>> = (0..4)
            .map(|r| {
                let mut value = format!("{tag}-{b:05}-{r}-").into_bytes();
                value.resize(RECORD_BYTES, (b % 251) as u8);
                value
            })
            .collect();
        ledger.sent.extend(values.iter().cloned());
        let records: Vec<&[u8]> = values.iter().map(Vec::as_slice).collect();
        let ack = client.produce(PARTITION, Acks::Quorum, &records).expect("produce");
        for (i, value) in values.into_iter().enumerate() {
            ledger.acked.insert(value.clone(), Offset(ack.base_offset.0 + i as u64));
            ledger.acked_order.entry(0).or_default().push(value);
        }
    }
}

#[test]
fn a_follower_whose_disk_fills_stays_up_serves_and_catches_up_when_space_is_freed() {
    let mut cluster = Cluster::start("full-disk", Spec::new(3));
    let client = cluster.client();
    let mut ledger = Ledger::default();
    let (leader, _) = cluster.wait_leader(&client, PARTITION);
    let victim = *cluster.nodes.keys().find(|id| **id != leader).expect("a follower");
    produce(&client, &mut ledger, "before", 10);

    // Move the follower's data dir onto a small ext4 of its own.
    cluster.kill(victim);
    let data = cluster.nodes[&victim].data_dir.clone();
    let old = data.with_extension("old");
    std::fs::rename(&data, &old).unwrap();
    std::fs::create_dir(&data).unwrap();
    let image = cluster.dir.join("victim-disk.img");
    let _disk = match LoopDisk::mount(image, &data, DISK_MIB) {
        Ok(disk) => disk,
        Err(why) => {
            eprintln!("SKIPPED a_follower_whose_disk_fills_...: no loop ext4 here: {why}");
            return;
        }
    };
    // Locals drop in reverse order: re-bound after the disk, the cluster (and its nodes)
    // goes first, then the disk is unmounted, whether the test passes or panics.
    let mut cluster = cluster;
    let copied = Command::new("cp")
        .args(["-a", &format!("{}/.", as_str(&old)), as_str(&data)])
        .status()
        .unwrap();
    assert!(copied.success(), "copy the follower's data dir onto its disk");
    let lost_found = data.join("lost+found");
    let _ = std::fs::remove_dir(&lost_found);
    let ballast = data.join("ballast");
    let ballast_bytes = free_bytes(&data).saturating_sub(FREE_LEFT_MIB << 20);
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&ballast).unwrap();
        let chunk = vec![0xa5u8; 1 << 20];
        for _ in 0..ballast_bytes >> 20 {
            f.write_all(&chunk).unwrap();
        }
        f.sync_all().unwrap();
    }
    cluster.restart(victim);
    let victim_addr = cluster.nodes[&victim].client;

    // Fill it: twice the free space through the cluster (the ballast's room takes the rest
    // once it is removed).
    let batches = ((FREE_LEFT_MIB << 20) * 2 / (4 * RECORD_BYTES as u64)) as u32;
    produce(&client, &mut ledger, "filling", batches);
    let full_since = Instant::now();
    let mut last_durable = 0;
    let mut round = 0;
    while full_since.elapsed() < FULL_FOR {
        round += 1;
        let status = cluster
            .status_of(&client, victim, PARTITION)
            .expect("the full follower answers status");
        let leader_status = cluster.status_of(&client, leader, PARTITION).expect("leader");
        assert!(
            status.durable < leader_status.last_index,
            "the follower kept up on a full disk: {status:?}"
        );
        last_durable = status.durable.0;
        produce(&client, &mut ledger, &format!("while-full-{round}"), 2);
        std::thread::sleep(Duration::from_millis(200));
    }
    let pid = cluster.nodes[&victim].pid().expect("spawned");
    assert!(alive(pid), "the full follower exited (before the fix: status 2, a crash loop)");
    // It serves reads of what it holds.
    let read = client
        .node(victim_addr)
        .fetch(PARTITION, Offset(0), 1 << 20, Duration::ZERO, Consistency::ReplicaCommitted)
        .expect("a read from the full follower");
    assert!(!read.batches.is_empty());
    eprintln!("follower {victim} full: durable {last_durable}, {} bytes free", free_bytes(&data));
    // Restarted on the still-full disk (as its supervisor would after a crash), it starts,
    // keeps running and serves: the host checks and recovery need no free space.
    cluster.kill(victim);
    // Every last block, root's reserve included (the node runs as root here).
    let ballast_last = data.join("ballast-last");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&ballast_last).unwrap();
        let chunk = vec![0x5au8; 4096];
        while f.write_all(&chunk).is_ok() {}
        let _ = f.sync_all();
    }
    assert!(free_bytes(&data) < 4096, "the disk is full to the last block");
    cluster.restart(victim);
    std::thread::sleep(Duration::from_secs(2));
    let pid = cluster.nodes[&victim].pid().expect("spawned");
    assert!(alive(pid), "the follower restarted on a full disk exited");
    let read = client.node(victim_addr).fetch(
        PARTITION,
        Offset(0),
        1 << 20,
        Duration::ZERO,
        Consistency::ReplicaCommitted,
    );
    assert!(read.is_ok_and(|r| !r.batches.is_empty()), "the restarted full follower serves");

    // Space is back: it catches up by itself.
    std::fs::remove_file(&ballast).unwrap();
    std::fs::remove_file(&ballast_last).unwrap();
    let deadline = Instant::now() + LIVENESS_TIMEOUT * 2;
    loop {
        let status = cluster.status_of(&client, victim, PARTITION);
        let leader_status = cluster.status_of(&client, leader, PARTITION);
        if let (Some(s), Some(l)) = (&status, &leader_status) {
            if s.durable >= l.commit {
                break;
            }
        }
        assert!(Instant::now() < deadline, "no catch-up: {status:?} vs {leader_status:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    produce(&client, &mut ledger, "after", 10);
    let records = cluster.assert_replicas_identical(&client, PARTITION);
    ledger.check(&records, PARTITION);
}
