//! Host checks against fake procfs/sysfs trees (and the real io_uring, O_DIRECT and statfs).
//!
//! The data dirs live under `CARGO_TARGET_TMPDIR` (the target dir, on disk) rather than /tmp,
//! which may be a tmpfs where the real O_DIRECT probe rightly fails.

use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use ringlog_engine::host::{
    names, Check, HostProbe, HostReport, HostRequirements, HostRoot, Limit, Status,
};

const NVME: &str = "devices/pci0000:00/0000:00:04.0/nvme/nvme0/nvme0n1";
const MIB: usize = 1 << 20;

/// A fake `/proc` + `/sys` describing a healthy NVMe host whose root filesystem (ext4 on
/// nvme0n1p2, 259:2) holds the data dir.
struct FakeHost {
    root: tempfile::TempDir,
    data_dir: tempfile::TempDir,
}

impl FakeHost {
    fn healthy() -> Self {
        let host = FakeHost {
            root: tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap(),
            data_dir: tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap(),
        };
        host.write("proc/sys/kernel/osrelease", "6.8.0-45-generic\n");
        host.write("proc/sys/kernel/io_uring_disabled", "0\n");
        host.write_limits(64 * MIB as u64, 1_048_576);
        host.write("proc/self/status", "Name:\tringlog\nCapEff:\t0000000000000000\n");
        host.write_mountinfo("rw,noatime", "ext4", "/dev/nvme0n1p2", "rw", "259:2");
        for cpu in 0..4 {
            let dir = format!("sys/devices/system/cpu/cpu{cpu}/topology");
            host.write(&format!("{dir}/physical_package_id"), "0\n");
            host.write(&format!("{dir}/core_id"), &format!("{cpu}\n"));
            host.write(&format!("{dir}/core_cpus_list"), &format!("{cpu}\n"));
        }
        host.write("sys/devices/system/cpu/online", "0-3\n");
        host.write("sys/devices/system/node/online", "0\n");
        host.write("sys/devices/system/node/node0/cpulist", "0-3\n");
        let clock = "sys/devices/system/clocksource/clocksource0";
        host.write(&format!("{clock}/current_clocksource"), "tsc\n");
        host.write(&format!("{clock}/available_clocksource"), "tsc hpet acpi_pm \n");
        host.write_disk(NVME, "write back", "[none] mq-deadline kyber bfq");
        host.write(&format!("sys/{NVME}/nvme0n1p2/partition"), "2\n");
        host.link("sys/dev/block/259:0", &format!("../../{NVME}"));
        host.link("sys/dev/block/259:2", &format!("../../{NVME}/nvme0n1p2"));
        host
    }

    fn path(&self, relative: &str) -> PathBuf {
        self.root.path().join(relative)
    }

    fn write(&self, relative: &str, contents: &str) {
        let path = self.path(relative);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, contents).unwrap();
    }

    fn remove(&self, relative: &str) {
        std::fs::remove_file(self.path(relative)).unwrap();
    }

    fn link(&self, relative: &str, target: &str) {
        let path = self.path(relative);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        symlink(target, path).unwrap();
    }

    fn write_limits(&self, memlock_bytes: u64, nofile: u64) {
        self.write(
            "proc/self/limits",
            &format!(
                "Limit                     Soft Limit           Hard Limit           Units\n\
                 Max open files            {nofile:<20} {nofile:<20} files\n\
                 Max locked memory         {memlock_bytes:<20} {memlock_bytes:<20} bytes\n"
            ),
        );
    }

    /// A mountinfo whose `/` mount has these per-mount options, type, source, superblock
    /// options and device numbers.
    fn write_mountinfo(
        &self,
        options: &str,
        fs_type: &str,
        source: &str,
        super_options: &str,
        dev: &str,
    ) {
        self.write(
            "proc/self/mountinfo",
            &format!(
                "22 27 0:21 / /proc rw,relatime - proc proc rw\n\
                 27 1 {dev} / / {options} shared:1 - {fs_type} {source} {super_options}\n\
                 25 24 0:23 / /dev/shm rw,relatime - tmpfs tmpfs rw,size=1024k\n"
            ),
        );
    }

    fn write_disk(&self, disk: &str, write_cache: &str, scheduler: &str) {
        let queue = format!("sys/{disk}/queue");
        for (file, value) in [
            ("rotational", "0"),
            ("minimum_io_size", "4096"),
            ("optimal_io_size", "0"),
            ("logical_block_size", "512"),
            ("physical_block_size", "4096"),
            ("max_sectors_kb", "1280"),
            ("max_segment_size", "4294967295"),
            ("write_cache", write_cache),
            ("scheduler", scheduler),
        ] {
            self.write(&format!("{queue}/{file}"), &format!("{value}\n"));
        }
        std::fs::create_dir_all(self.path(&format!("sys/{disk}/slaves"))).unwrap();
    }

    fn probe(&self) -> HostProbe {
        HostProbe::new(HostRoot::under(self.root.path()))
    }

    fn requirements(&self) -> HostRequirements {
        HostRequirements {
            data_dir: self.data_dir.path().to_path_buf(),
            shards: 1,
            io_memory_bytes: MIB,
            retention_bytes: None,
        }
    }

    fn run(&self) -> HostReport {
        self.probe().run(&self.requirements())
    }
}

fn check<'r>(report: &'r HostReport, name: &str) -> &'r Check {
    report.check(name).unwrap_or_else(|| panic!("no check {name} in {report:#?}"))
}

fn assert_status(report: &HostReport, name: &str, status: Status) -> Check {
    let found = check(report, name);
    assert_eq!(found.status, status, "{found}");
    found.clone()
}

fn print(report: &HostReport) {
    for check in &report.checks {
        println!("{check}");
    }
}

#[test]
fn healthy_fake_host_passes_every_check_in_order() {
    let host = FakeHost::healthy();
    let report = host.run();
    print(&report);
    let order: Vec<&str> = report.checks.iter().map(|c| c.name).collect();
    assert_eq!(order, names::ALL);
    for found in &report.checks {
        assert_eq!(found.status, Status::Ok, "{found}");
    }
    assert!(report.is_ready());
    assert!(check(&report, names::DEVICE).found.contains("nvme0n1p2 on disk nvme0n1"));
    assert!(check(&report, names::BLOCK_SIZES).found.contains("logical 512, physical 4096"));
    assert!(check(&report, names::SCHEDULER).found.contains("none (non-rotational)"));
    assert!(report.into_result().is_ok());
}

#[test]
fn io_uring_disabled_2_fails_with_the_sysctl_fix() {
    let host = FakeHost::healthy();
    host.write("proc/sys/kernel/io_uring_disabled", "2\n");
    let report = host.run();
    let found = assert_status(&report, names::IO_URING_DISABLED, Status::Fail);
    assert!(found.found.starts_with("2 "), "{found}");
    assert!(found.fix.contains("sysctl -w kernel.io_uring_disabled=0"), "{found}");
    let error = report.into_result().unwrap_err().to_string();
    assert!(error.contains("FAIL  io_uring_disabled"), "{error}");
}

#[test]
fn io_uring_disabled_1_warns_and_an_absent_sysctl_is_ok() {
    let host = FakeHost::healthy();
    host.write("proc/sys/kernel/io_uring_disabled", "1\n");
    host.write("proc/sys/kernel/io_uring_group", "1001\n");
    let found = assert_status(&host.run(), names::IO_URING_DISABLED, Status::Warn);
    assert!(found.found.contains("io_uring_group=1001"), "{found}");
    host.remove("proc/sys/kernel/io_uring_disabled");
    let found = assert_status(&host.run(), names::IO_URING_DISABLED, Status::Ok);
    assert!(found.found.contains("absent"), "{found}");
}

#[test]
fn kernel_5_4_fails_below_glommio_minimum() {
    let host = FakeHost::healthy();
    host.write("proc/sys/kernel/osrelease", "5.4.0-150-generic\n");
    let found = assert_status(&host.run(), names::KERNEL, Status::Fail);
    assert!(found.found.contains("5.4.0-150-generic"), "{found}");
    assert!(found.expected.contains(">= 5.8"), "{found}");
    assert!(found.fix.contains("upgrade the kernel"), "{found}");
}

#[test]
fn injected_kernel_release_overrides_procfs() {
    let host = FakeHost::healthy();
    let report = host.probe().with_kernel_release("5.15.0-1").run(&host.requirements());
    let found = assert_status(&report, names::KERNEL, Status::Warn);
    assert!(found.found.contains("5.15.0-1"), "{found}");
    let report = host.probe().with_kernel_release("6.18.44").run(&host.requirements());
    assert_status(&report, names::KERNEL, Status::Ok);
}

#[test]
fn tmpfs_data_dir_fails_o_direct_and_filesystem_with_the_reason() {
    let shm = Path::new("/dev/shm");
    let on_tmpfs = rustix_free_tmpfs_check(shm);
    if !on_tmpfs {
        eprintln!("skipped: /dev/shm is not a tmpfs on this host");
        return;
    }
    let data_dir = tempfile::tempdir_in(shm).unwrap();
    let requirements = HostRequirements {
        data_dir: data_dir.path().to_path_buf(),
        shards: 1,
        io_memory_bytes: MIB,
        retention_bytes: None,
    };
    let report = HostProbe::new(HostRoot::default()).run(&requirements);
    print(&report);
    let o_direct = assert_status(&report, names::O_DIRECT, Status::Fail);
    assert!(o_direct.found.contains("tmpfs"), "{o_direct}");
    let filesystem = assert_status(&report, names::FILESYSTEM, Status::Fail);
    assert!(filesystem.found.starts_with("tmpfs"), "{filesystem}");
    assert!(filesystem.found.contains("nothing survives a reboot"), "{filesystem}");
    assert_status(&report, names::DEVICE, Status::Warn);
    assert!(!report.is_ready());
    let leftovers = std::fs::read_dir(data_dir.path()).unwrap().count();
    assert_eq!(leftovers, 0, "the O_DIRECT probe file must be removed");
}

/// Whether `path` is on a tmpfs, judged from the real mountinfo (independent of the code under
/// test's statfs).
fn rustix_free_tmpfs_check(path: &Path) -> bool {
    let Ok(mountinfo) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    mountinfo
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            let separator = fields.iter().position(|f| *f == "-")?;
            Some((fields[4], fields[separator + 1]))
        })
        .filter(|(mount_point, _)| path.starts_with(mount_point))
        .max_by_key(|(mount_point, _)| mount_point.len())
        .is_some_and(|(_, fs_type)| fs_type == "tmpfs")
}

#[test]
fn memlock_below_requirement_fails_without_cap_ipc_lock_and_warns_with_it() {
    let host = FakeHost::healthy();
    let mut requirements = host.requirements();
    requirements.shards = 2;
    requirements.io_memory_bytes = 10 * MIB;
    let probe = host.probe().with_memlock_limit(Limit::Value(8 * MIB as u64));
    let report = probe.clone().with_cap_ipc_lock(false).run(&requirements);
    let found = assert_status(&report, names::MEMLOCK, Status::Fail);
    assert!(found.expected.contains("60 MiB = 2 shard(s) × 3 rings × io_memory 10 MiB"), "{found}");
    assert!(found.fix.contains("LimitMEMLOCK=62914560"), "{found}");
    let report = probe.with_cap_ipc_lock(true).run(&requirements);
    let found = assert_status(&report, names::MEMLOCK, Status::Warn);
    assert!(found.fix.contains("CAP_IPC_LOCK"), "{found}");
}

#[test]
fn memlock_in_procfs_below_glommio_minimum_fails_even_with_cap_ipc_lock() {
    let host = FakeHost::healthy();
    host.write_limits(64 * 1024, 1_048_576);
    host.write("proc/self/status", "CapEff:\t000001ffffffffff\n");
    let found = assert_status(&host.run(), names::MEMLOCK, Status::Fail);
    assert!(found.found.starts_with("64 KiB, CAP_IPC_LOCK held"), "{found}");
    assert!(found.fix.contains("glommio refuses to start below 512 KiB"), "{found}");
}

#[test]
fn unlimited_memlock_passes_and_low_nofile_fails() {
    let host = FakeHost::healthy();
    let report = host
        .probe()
        .with_memlock_limit(Limit::Unlimited)
        .with_nofile_limit(Limit::Value(256))
        .run(&host.requirements());
    assert_status(&report, names::MEMLOCK, Status::Ok);
    let found = assert_status(&report, names::NOFILE, Status::Fail);
    assert!(found.fix.contains("LimitNOFILE="), "{found}");
    host.write_limits(64 * MIB as u64, 4096);
    assert_status(&host.run(), names::NOFILE, Status::Warn);
}

#[test]
fn write_back_cache_is_ok_and_says_fdatasync_flushes_it() {
    let host = FakeHost::healthy();
    let found = assert_status(&host.run(), names::WRITE_CACHE, Status::Ok);
    assert!(found.found.starts_with("write back"), "{found}");
    assert!(found.found.contains("fdatasync sends it a flush"), "{found}");
}

#[test]
fn write_through_cache_warns_that_durability_relies_on_power_loss_protection() {
    let host = FakeHost::healthy();
    host.write(&format!("sys/{NVME}/queue/write_cache"), "write through\n");
    let report = host.run();
    let found = assert_status(&report, names::WRITE_CACHE, Status::Warn);
    assert!(found.found.starts_with("write through"), "{found}");
    assert!(found.found.contains("no cache flushes"), "{found}");
    assert!(found.fix.contains("power-loss protection"), "{found}");
    assert_status(&report, names::GLOMMIO_SYSFS, Status::Ok);
}

#[test]
fn missing_sysfs_files_warn_instead_of_panicking() {
    let host = FakeHost::healthy();
    host.remove(&format!("sys/{NVME}/queue/scheduler"));
    host.remove("sys/devices/system/clocksource/clocksource0/current_clocksource");
    let report = host.run();
    assert_status(&report, names::SCHEDULER, Status::Warn);
    assert_status(&report, names::CLOCKSOURCE, Status::Warn);
    assert_status(&report, names::GLOMMIO_SYSFS, Status::Ok);
    assert!(report.is_ready());
}

#[test]
fn a_missing_write_cache_file_warns_but_fails_glommio_sysfs_which_would_panic() {
    let host = FakeHost::healthy();
    host.remove(&format!("sys/{NVME}/queue/write_cache"));
    let report = host.run();
    let cache = assert_status(&report, names::WRITE_CACHE, Status::Warn);
    assert!(cache.found.contains("unreadable"), "{cache}");
    let glommio = assert_status(&report, names::GLOMMIO_SYSFS, Status::Fail);
    assert!(glommio.found.contains("write_cache"), "{glommio}");
    assert!(glommio.found.contains("panic"), "{glommio}");
}

#[test]
fn an_unknown_write_cache_value_fails_glommio_sysfs() {
    let host = FakeHost::healthy();
    host.write(&format!("sys/{NVME}/queue/write_cache"), "write around\n");
    let report = host.run();
    assert_status(&report, names::WRITE_CACHE, Status::Warn);
    let glommio = assert_status(&report, names::GLOMMIO_SYSFS, Status::Fail);
    assert!(glommio.found.contains("neither"), "{glommio}");
}

#[test]
fn an_empty_sys_tree_reports_without_panicking() {
    let host = FakeHost::healthy();
    std::fs::remove_dir_all(host.path("sys")).unwrap();
    std::fs::create_dir(host.path("sys")).unwrap();
    let report = host.run();
    print(&report);
    assert_eq!(report.checks.len(), names::ALL.len());
    assert_status(&report, names::CPU_TOPOLOGY, Status::Fail);
    assert_status(&report, names::CPUS, Status::Warn);
    assert_status(&report, names::CLOCKSOURCE, Status::Warn);
    assert_status(&report, names::DEVICE, Status::Warn);
    assert_status(&report, names::WRITE_CACHE, Status::Warn);
}

#[test]
fn an_empty_proc_tree_reports_without_panicking() {
    let host = FakeHost::healthy();
    std::fs::remove_dir_all(host.path("proc")).unwrap();
    let report = host.run();
    print(&report);
    assert_eq!(report.checks.len(), names::ALL.len());
    for name in [
        names::KERNEL,
        names::IO_URING_DISABLED,
        names::MEMLOCK,
        names::NOFILE,
        names::MOUNT_OPTIONS,
    ] {
        assert_status(&report, name, Status::Warn);
    }
    // Without mountinfo the device comes from the data dir's st_dev, absent from the fake sys.
    assert_status(&report, names::DEVICE, Status::Warn);
}

#[test]
fn clocksource_other_than_tsc_warns_with_the_switch_command() {
    let host = FakeHost::healthy();
    let clock = "sys/devices/system/clocksource/clocksource0";
    host.write(&format!("{clock}/current_clocksource"), "hpet\n");
    let found = assert_status(&host.run(), names::CLOCKSOURCE, Status::Warn);
    assert!(found.found.contains("hpet"), "{found}");
    assert!(found.fix.contains("echo tsc >"), "{found}");
    host.write(&format!("{clock}/available_clocksource"), "kvm-clock acpi_pm\n");
    let found = assert_status(&host.run(), names::CLOCKSOURCE, Status::Warn);
    assert!(found.fix.contains("no tsc offered"), "{found}");
}

#[test]
fn risky_mount_options_warn_and_read_only_fails() {
    let host = FakeHost::healthy();
    host.write_mountinfo(
        "rw,relatime",
        "ext4",
        "/dev/nvme0n1p2",
        "rw,nobarrier,data=journal",
        "259:2",
    );
    let found = assert_status(&host.run(), names::MOUNT_OPTIONS, Status::Warn);
    assert!(found.found.contains("nobarrier"), "{found}");
    assert!(found.found.contains("data=journal"), "{found}");
    host.write_mountinfo("ro,relatime", "ext4", "/dev/nvme0n1p2", "ro", "259:2");
    let found = assert_status(&host.run(), names::MOUNT_OPTIONS, Status::Fail);
    assert!(found.found.contains("read-only"), "{found}");
}

#[test]
fn a_missing_data_dir_fails_with_mkdir_and_still_checks_its_filesystem() {
    let host = FakeHost::healthy();
    let mut requirements = host.requirements();
    requirements.data_dir = host.data_dir.path().join("not/yet");
    let report = host.probe().run(&requirements);
    let found = assert_status(&report, names::DATA_DIR, Status::Fail);
    assert!(found.fix.starts_with("mkdir -p"), "{found}");
    assert_status(&report, names::O_DIRECT, Status::Fail);
    assert_status(&report, names::FILESYSTEM, Status::Ok);
    assert_status(&report, names::DEVICE, Status::Ok);
}

#[test]
fn retention_beyond_free_space_fails() {
    let host = FakeHost::healthy();
    let mut requirements = host.requirements();
    requirements.retention_bytes = Some(u64::MAX / 4);
    let found = assert_status(&host.probe().run(&requirements), names::FREE_SPACE, Status::Fail);
    assert!(found.fix.contains("--retention-bytes"), "{found}");
    requirements.retention_bytes = Some(1 << 20);
    assert_status(&host.probe().run(&requirements), names::FREE_SPACE, Status::Ok);
}

#[test]
fn shards_on_every_cpu_warn_and_zero_shards_fail() {
    let host = FakeHost::healthy();
    let mut requirements = host.requirements();
    requirements.shards = 64;
    let found = assert_status(&host.probe().run(&requirements), names::CPUS, Status::Warn);
    assert!(found.found.contains("64 shard(s)"), "{found}");
    requirements.shards = 0;
    assert_status(&host.probe().run(&requirements), names::CPUS, Status::Fail);
}

#[test]
fn glommio_reading_another_disk_at_minor_zero_warns() {
    let host = FakeHost::healthy();
    let other = "devices/pci0000:00/0000:00:05.0/nvme/nvme1/nvme1n1";
    host.write_disk(other, "write back", "[none]");
    host.write(&format!("sys/{other}/nvme1n1p1/partition"), "1\n");
    host.link("sys/dev/block/259:5", &format!("../../{other}/nvme1n1p1"));
    host.write_mountinfo("rw", "ext4", "/dev/nvme1n1p1", "rw", "259:5");
    let report = host.run();
    let device = assert_status(&report, names::DEVICE, Status::Ok);
    assert!(device.found.contains("nvme1n1p1 on disk nvme1n1"), "{device}");
    let glommio = assert_status(&report, names::GLOMMIO_SYSFS, Status::Warn);
    assert!(glommio.found.contains("259:0 = nvme0n1"), "{glommio}");
}

#[test]
fn a_large_logical_block_size_fails() {
    let host = FakeHost::healthy();
    host.write(&format!("sys/{NVME}/queue/logical_block_size"), "8192\n");
    host.write(&format!("sys/{NVME}/queue/physical_block_size"), "8192\n");
    let found = assert_status(&host.run(), names::BLOCK_SIZES, Status::Fail);
    assert!(found.found.contains("logical 8192"), "{found}");
}

#[test]
fn the_real_host_report_is_complete_and_leaves_no_probe_file() {
    let data_dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let requirements = HostRequirements {
        data_dir: data_dir.path().to_path_buf(),
        shards: 1,
        io_memory_bytes: MIB,
        retention_bytes: None,
    };
    let report = HostProbe::new(HostRoot::default()).run(&requirements);
    print(&report);
    assert_eq!(report.checks.len(), names::ALL.len());
    assert_eq!(std::fs::read_dir(data_dir.path()).unwrap().count(), 0);
}
