//! libringlog exports only `ringlog_*` symbols: the shared library (rustc's export list) and
//! the static library as packaged by `scripts/package-static.sh` (cargo's own `.a` also
//! exports every Rust symbol and glommio's bundled liburing, `io_uring_*`, which could clash
//! with or replace a program's own liburing). Checked with `nm`, as an embedder would.

mod support;

use std::path::Path;
use std::process::Command;

use support::{compiler, crate_dir, library_dir, run, scratch, Build};

/// Defined global symbols of `file` per `nm` (`-D` for a shared library's dynamic table).
fn defined_globals(file: &Path, dynamic: bool) -> Vec<String> {
    let mut command = Command::new("nm");
    command.args(["-g", "--defined-only"]);
    if dynamic {
        command.arg("-D");
    }
    let output = command.arg(file).output().expect("run nm (binutils)");
    assert!(output.status.success(), "nm {file:?}: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            (fields.len() == 3).then(|| fields[2].to_string())
        })
        .collect()
}

fn foreign(symbols: &[String]) -> Vec<&String> {
    symbols.iter().filter(|name| !name.starts_with("ringlog_")).collect()
}

#[test]
fn the_shared_library_exports_only_ringlog_symbols() {
    let symbols = defined_globals(&library_dir().join("libringlog.so"), true);
    assert!(symbols.iter().any(|name| name == "ringlog_log_open"), "{symbols:?}");
    let foreign = foreign(&symbols);
    assert!(
        foreign.is_empty(),
        "libringlog.so exports {} other symbols: {foreign:?}",
        foreign.len()
    );
}

#[test]
fn the_packaged_static_library_exports_only_ringlog_symbols_and_links() {
    let Some(cc) = compiler() else { return };
    let dir = scratch();
    let packaged = dir.path().join("libringlog.a");
    let script = crate_dir().join("scripts/package-static.sh");
    let output = Command::new("sh")
        .arg(&script)
        .arg(library_dir().join("libringlog.a"))
        .arg(&packaged)
        .output()
        .expect("run package-static.sh");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let symbols = defined_globals(&packaged, false);
    assert!(symbols.iter().any(|name| name == "ringlog_log_open"), "{symbols:?}");
    let foreign = foreign(&symbols);
    assert!(
        foreign.is_empty(),
        "the packaged .a exports {} other symbols: {foreign:?}",
        foreign.len()
    );
    // It still links and runs: the embedded-log example against the packaged archive.
    let program = dir.path().join("local_log");
    let compiled = Command::new(&cc)
        .args(["-std=c11", "-O1", "-Wall", "-Wextra", "-Werror", "-pthread", "-I"])
        .arg(crate_dir().join("include"))
        .arg(crate_dir().join("examples/local_log.c"))
        .arg(&packaged)
        .args(support::STATIC_LIBS)
        .arg("-o")
        .arg(&program)
        .output()
        .expect("run the C compiler");
    assert!(compiled.status.success(), "{}", String::from_utf8_lossy(&compiled.stderr));
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let out = run(&program, &[&data], Build::Shared, &[]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("local_log: ok"));
}

/// The header compiles as the C and C++ standards README.md states (C99, C++11), with
/// `-pedantic-errors`.
#[test]
fn the_header_compiles_as_c99_and_cpp11_with_pedantic_errors() {
    let Some(cc) = compiler() else { return };
    let dir = scratch();
    let source = dir.path().join("include_only.c");
    std::fs::write(
        &source,
        "#include \"ringlog.h\"\nint main(void) { return ringlog_version() == 0; }\n",
    )
    .unwrap();
    let cxx = std::env::var("CXX").unwrap_or_else(|_| "c++".to_string());
    for (compiler, standard, language) in
        [(cc.as_str(), "-std=c99", "c"), (cxx.as_str(), "-std=c++11", "c++")]
    {
        let output = Command::new(compiler)
            .args([
                standard,
                "-pedantic-errors",
                "-Wall",
                "-Wextra",
                "-Werror",
                "-fsyntax-only",
                "-x",
                language,
                "-I",
            ])
            .arg(crate_dir().join("include"))
            .arg(&source)
            .output();
        match output {
            Ok(output) => assert!(
                output.status.success(),
                "ringlog.h does not compile as {standard}:\n{}",
                String::from_utf8_lossy(&output.stderr)
            ),
            Err(error) if compiler == cxx => {
                eprintln!("\n*** SKIPPED the C++ check: no C++ compiler `{cxx}`: {error} ***\n")
            }
            Err(error) => panic!("run {compiler}: {error}"),
        }
    }
}
