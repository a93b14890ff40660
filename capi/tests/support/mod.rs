//! Building and running C programs against libringlog from `cargo test`.
//!
//! The library is the one cargo built for this test run: `libringlog.so` / `libringlog.a`
//! in `<target>/<profile>/deps/`, next to this test executable, wherever `CARGO_TARGET_DIR`
//! points. Programs are compiled
//! with `cc` (override with `CC`) against `capi/include/ringlog.h`:
//! - normally, linked to the shared library (rpath set to the profile dir);
//! - under AddressSanitizer + UndefinedBehaviorSanitizer, linked to the static library, so
//!   the sanitizer runtime comes first in the executable (no LD_PRELOAD needed).
//!
//! Without a C compiler the tests print a loud SKIP message and pass.

#![allow(dead_code)]

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Native libraries the static library needs (`--print native-static-libs`).
pub const STATIC_LIBS: &[&str] = &["-lgcc_s", "-lutil", "-lrt", "-lpthread", "-lm", "-ldl", "-lc"];

/// How a program is built.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Build {
    Shared,
    Sanitized,
}

/// The C compiler, or `None` (after a loud message) when there is none.
pub fn compiler() -> Option<String> {
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".to_string());
    match Command::new(&cc).arg("--version").output() {
        Ok(output) if output.status.success() => Some(cc),
        _ => {
            eprintln!(
                "\n\n*** SKIPPED: no C compiler (`{cc}`) found: the C ABI tests did not run. \
                 Install gcc or clang (and libasan) to run them. ***\n\n"
            );
            None
        }
    }
}

/// Where cargo put the libringlog of this test run: `<target>/<profile>/deps/`, the directory
/// of this test executable (cargo builds the library there for tests and only copies it up
/// to `<target>/<profile>/` on `cargo build`, so the copy there may be stale).
pub fn library_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let deps = exe.parent().expect("test executable has a directory").to_path_buf();
    for name in ["libringlog.so", "libringlog.a"] {
        assert!(
            deps.join(name).exists(),
            "{name} not found in {deps:?} (built with the lib target)"
        );
    }
    deps
}

fn library_file(name: &str) -> PathBuf {
    library_dir().join(name)
}

pub fn crate_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Compiles `sources` (relative to the crate dir) into `out`; panics with the compiler's
/// output on failure.
pub fn compile(cc: &str, sources: &[&str], out: &Path, build: Build) {
    let mut command = Command::new(cc);
    command
        .args(["-std=c11", "-O1", "-g", "-Wall", "-Wextra", "-Werror", "-pthread"])
        .arg("-I")
        .arg(crate_dir().join("include"))
        .arg("-I")
        .arg(crate_dir().join("tests/c"));
    for source in sources {
        command.arg(crate_dir().join(source));
    }
    command.arg("-o").arg(out);
    match build {
        Build::Shared => {
            let dir = library_file("libringlog.so").parent().unwrap().to_path_buf();
            command.arg("-L").arg(&dir).arg("-lringlog");
            // The library's SONAME is `libringlog.so.0` (build.rs): the program asks the
            // dynamic linker for that name, which cargo's output directory does not hold.
            let runtime = soname_dir(out);
            command.arg(format!("-Wl,-rpath,{}", runtime.display()));
        }
        Build::Sanitized => {
            command.args([
                "-fsanitize=address,undefined",
                "-fno-sanitize-recover=undefined",
                "-fno-omit-frame-pointer",
            ]);
            command.arg(library_file("libringlog.a"));
            command.args(STATIC_LIBS);
        }
    }
    let output = command.output().expect("run the C compiler");
    assert!(
        output.status.success(),
        "compiling {sources:?} failed:\n{command:?}\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The SONAME the shared library is built with (capi/build.rs).
pub const SONAME: &str = "libringlog.so.0";

/// A directory beside `program` holding `libringlog.so.0` → this run's `libringlog.so`, for
/// the program's rpath (as an installed prefix's `lib/` would).
fn soname_dir(program: &Path) -> PathBuf {
    let dir = program.with_file_name(format!(
        "{}.lib",
        program.file_name().expect("a program file name").to_string_lossy()
    ));
    std::fs::create_dir_all(&dir).expect("create the program's library dir");
    let link = dir.join(SONAME);
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(library_file("libringlog.so"), &link).expect("link the SONAME");
    dir
}

/// Longest a C program may run before it is killed and the test fails (a hang). Generous:
/// the 200 node start/stop cycles take about a minute alone and far longer on a loaded host.
pub const PROGRAM_TIMEOUT: Duration = Duration::from_secs(600);

/// Runs `program` with `args` (and `env`); panics with its output unless it exits 0 within
/// [`PROGRAM_TIMEOUT`].
pub fn run(program: &Path, args: &[&Path], build: Build, env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(program);
    // cargo test puts `<target>/<profile>` on LD_LIBRARY_PATH, which wins over the rpath
    // and may hold a stale libringlog.so from an earlier `cargo build`.
    // (A test that needs it, e.g. for an installed prefix, passes it in `env`.)
    command.args(args).env_remove("LD_LIBRARY_PATH").envs(env.iter().copied());
    if build == Build::Sanitized {
        // Leak checking is on: the library must not leak what a closed handle owned.
        if !env.iter().any(|(name, _)| *name == "ASAN_OPTIONS") {
            command.env("ASAN_OPTIONS", "detect_leaks=1:abort_on_error=0:halt_on_error=1");
        }
        command.env("UBSAN_OPTIONS", "print_stacktrace=1:halt_on_error=1");
    }
    let child =
        command.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("start the C program");
    let output = wait_with_timeout(child, program);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "{program:?} {args:?} ({build:?}) failed with {}:\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        output.status
    );
    assert!(
        !stderr.contains("runtime error:") && !stderr.contains("AddressSanitizer"),
        "{program:?} ({build:?}) reported a sanitizer error:\n{stderr}"
    );
    output
}

/// A scratch directory on a disk filesystem (O_DIRECT works; not tmpfs).
pub fn scratch() -> tempfile::TempDir {
    let base =
        std::env::var_os("RINGLOG_TEST_DIR").map(PathBuf::from).unwrap_or_else(std::env::temp_dir);
    tempfile::Builder::new().prefix("ringlog-capi-").tempdir_in(base).expect("temp dir")
}

/// A tmpfs directory if the host has one (for the host-check refusal test).
pub fn tmpfs_dir() -> Option<PathBuf> {
    let shm = PathBuf::from("/dev/shm");
    shm.is_dir().then_some(shm)
}

/// Waits for `child`, killing it after [`PROGRAM_TIMEOUT`] (then panics with its output).
fn wait_with_timeout(mut child: Child, program: &Path) -> Output {
    // Drain the pipes on threads so a chatty program cannot block on a full pipe.
    let mut stdout = child.stdout.take().expect("piped stdout");
    let mut stderr = child.stderr.take().expect("piped stderr");
    let out = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stdout.read_to_end(&mut buf);
        buf
    });
    let err = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stderr.read_to_end(&mut buf);
        buf
    });
    let deadline = Instant::now() + PROGRAM_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for the C program") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            let stdout = String::from_utf8_lossy(&out.join().unwrap_or_default()).into_owned();
            let stderr = String::from_utf8_lossy(&err.join().unwrap_or_default()).into_owned();
            panic!(
                "{program:?} did not finish within {PROGRAM_TIMEOUT:?} (hang): killed\n\
                 --- stdout\n{stdout}\n--- stderr\n{stderr}"
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    }
}
