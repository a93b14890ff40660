//! Building and running C programs against libringlog from `cargo test`.
//!
//! The library is the one cargo built for this test run: `libringlog.so` / `libringlog.a`
//! sit in the profile directory (`<target>/<profile>/`), the parent of the `deps/` directory
//! holding this test executable, wherever `CARGO_TARGET_DIR` points. Programs are compiled
//! with `cc` (override with `CC`) against `capi/include/ringlog.h`:
//! - normally, linked to the shared library (rpath set to the profile dir);
//! - under AddressSanitizer + UndefinedBehaviorSanitizer, linked to the static library, so
//!   the sanitizer runtime comes first in the executable (no LD_PRELOAD needed).
//!
//! Without a C compiler the tests print a loud SKIP message and pass.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Native libraries the static library needs (`--print native-static-libs`).
const STATIC_LIBS: &[&str] = &["-lgcc_s", "-lutil", "-lrt", "-lpthread", "-lm", "-ldl", "-lc"];

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

/// `<target>/<profile>/`: where cargo put libringlog for this test run.
pub fn library_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let deps = exe.parent().expect("test executable has a directory");
    let dir = if deps.file_name().is_some_and(|name| name == "deps") {
        deps.parent().expect("deps has a parent").to_path_buf()
    } else {
        deps.to_path_buf()
    };
    for name in ["libringlog.so", "libringlog.a"] {
        assert!(
            dir.join(name).exists() || deps.join(name).exists(),
            "{name} not found in {dir:?}: cargo builds it with the crate's lib target"
        );
    }
    dir
}

fn library_file(name: &str) -> PathBuf {
    let dir = library_dir();
    let candidate = dir.join(name);
    if candidate.exists() {
        candidate
    } else {
        dir.join("deps").join(name)
    }
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
            command.arg(format!("-Wl,-rpath,{}", dir.display()));
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

/// Runs `program` with `args`; panics with its output unless it exits 0.
pub fn run(program: &Path, args: &[&Path], build: Build) -> Output {
    let mut command = Command::new(program);
    command.args(args);
    if build == Build::Sanitized {
        // Leak checking is on: the library must not leak what a closed handle owned.
        command.env("ASAN_OPTIONS", "detect_leaks=1:abort_on_error=0:halt_on_error=1");
        command.env("UBSAN_OPTIONS", "print_stacktrace=1:halt_on_error=1");
    }
    let output = command.output().expect("run the C program");
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
    let base = std::env::var_os("RINGLOG_TEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    tempfile::Builder::new().prefix("ringlog-capi-").tempdir_in(base).expect("temp dir")
}

/// A tmpfs directory if the host has one (for the host-check refusal test).
pub fn tmpfs_dir() -> Option<PathBuf> {
    let shm = PathBuf::from("/dev/shm");
    shm.is_dir().then_some(shm)
}
