//! C programs built with `cc` against `include/ringlog.h` and libringlog, run from
//! `cargo test`: the C tests (tests/c/*.c) both plain and under AddressSanitizer +
//! UndefinedBehaviorSanitizer, and the examples (examples/*.c).

mod support;

use std::path::Path;

use support::{compile, compiler, run, scratch, tmpfs_dir, Build};

/// Compiles `sources` and runs the program with a fresh scratch dir (plus `extra` args).
fn build_and_run(name: &str, sources: &[&str], build: Build, extra: &[&Path]) -> String {
    let Some(cc) = compiler() else { return String::new() };
    let dir = scratch();
    let program = dir.path().join(name);
    compile(&cc, sources, &program, build);
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let mut args: Vec<&Path> = vec![&data];
    args.extend_from_slice(extra);
    let output = run(&program, &args, build);
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn tmpfs_arg() -> std::path::PathBuf {
    tmpfs_dir().unwrap_or_else(|| "-".into())
}

#[test]
fn the_log_api_handles_every_function_and_misuse_from_c() {
    let tmpfs = tmpfs_arg();
    let out = build_and_run("log_test", &["tests/c/log_test.c"], Build::Shared, &[&tmpfs]);
    assert!(out.is_empty() || out.contains("log_test: PASS"), "{out}");
}

#[test]
fn the_log_api_is_clean_under_address_and_undefined_behavior_sanitizers() {
    let tmpfs = tmpfs_arg();
    let out = build_and_run("log_test_asan", &["tests/c/log_test.c"], Build::Sanitized, &[&tmpfs]);
    assert!(out.is_empty() || out.contains("log_test: PASS"), "{out}");
}

#[test]
fn eight_c_threads_appending_through_one_handle_get_dense_unique_durable_offsets() {
    let out = build_and_run("threads_test", &["tests/c/threads_test.c"], Build::Shared, &[]);
    assert!(out.is_empty() || out.contains("threads_test: PASS"), "{out}");
}

#[test]
fn eight_c_threads_are_clean_under_address_and_undefined_behavior_sanitizers() {
    let out = build_and_run("threads_test_asan", &["tests/c/threads_test.c"], Build::Sanitized, &[]);
    assert!(out.is_empty() || out.contains("threads_test: PASS"), "{out}");
}

#[test]
fn the_embedded_log_example_runs() {
    let out = build_and_run("local_log", &["examples/local_log.c"], Build::Shared, &[]);
    assert!(out.is_empty() || out.contains("local_log: ok"), "{out}");
}
