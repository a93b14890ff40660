//! Shard memlock check: the engine refuses to start when RLIMIT_MEMLOCK cannot hold the IO
//! memory its executors register, with an error that names the numbers and the fix.

use std::process::Command;

use ringlog_engine::runtime::{
    check_memlock, memlock_required_bytes, MemlockError, MemlockOutcome,
};
use ringlog_engine::shard::{Engine, EngineConfig, StartError};

const MIB: usize = 1 << 20;
/// Set in the child process that runs `child_start_is_refused_under_a_low_memlock_limit`.
const CHILD_ENV: &str = "RINGLOG_SHARD_MEMLOCK_CHILD";
/// The limit the child runs under.
const CHILD_LIMIT_BYTES: u64 = 1 << 20;

#[test]
fn the_check_refuses_a_limit_below_shards_times_three_times_io_memory() {
    let required = memlock_required_bytes(2, 4 * MIB);
    assert_eq!(required, 24 * MIB as u64);
    let error = check_memlock(Some(required - 4096), 2, 4 * MIB, false).unwrap_err();
    assert!(matches!(error, MemlockError::TooLow { .. }));
    let text = error.to_string();
    assert!(text.contains(&required.to_string()), "{text}");
    assert!(text.contains("ulimit -l"), "{text}");
    assert!(matches!(
        check_memlock(Some(required), 2, 4 * MIB, false),
        Ok(MemlockOutcome::WithinLimit { .. })
    ));
}

#[test]
fn with_cap_ipc_lock_an_exceeded_limit_is_only_a_warning() {
    assert!(matches!(
        check_memlock(Some(MIB as u64), 2, 4 * MIB, true),
        Ok(MemlockOutcome::ExceededButPrivileged { .. })
    ));
}

/// Runs in a child process started by the test below (skipped otherwise).
#[test]
fn child_start_is_refused_under_a_low_memlock_limit() {
    if std::env::var_os(CHILD_ENV).is_none() {
        return;
    }
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let mut config = EngineConfig::new(dir.path().join("data"));
    config.shards = 2;
    config.io_memory_bytes = MIB;
    match Engine::start(config) {
        Err(StartError::Memlock(MemlockError::TooLow { limit_bytes, required_bytes, .. })) => {
            assert_eq!(limit_bytes, CHILD_LIMIT_BYTES);
            assert_eq!(required_bytes, 6 * MIB as u64);
            println!("REFUSED-AS-EXPECTED");
        }
        other => panic!("expected a memlock refusal, got {other:?}"),
    }
}

#[test]
fn start_is_refused_in_a_child_under_prlimit_without_cap_ipc_lock() {
    let tools = ["prlimit", "setpriv"];
    if tools.iter().any(|tool| which(tool).is_none()) {
        println!("skipped: prlimit or setpriv not installed");
        return;
    }
    let exe = std::env::current_exe().unwrap();
    // setpriv drops CAP_IPC_LOCK from the bounding set (so even root loses it across exec);
    // prlimit sets the soft and hard RLIMIT_MEMLOCK.
    let output = Command::new("prlimit")
        .arg(format!("--memlock={CHILD_LIMIT_BYTES}"))
        .args(["setpriv", "--bounding-set=-ipc_lock", "--inh-caps=-ipc_lock", "--"])
        .arg(exe)
        .args(["--exact", "child_start_is_refused_under_a_low_memlock_limit", "--nocapture"])
        .env(CHILD_ENV, "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "child failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("REFUSED-AS-EXPECTED"), "child output:\n{stdout}\n{stderr}");
}

fn which(tool: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|dir| std::path::Path::new(dir).join(tool))
        .find(|path| path.is_file())
}
