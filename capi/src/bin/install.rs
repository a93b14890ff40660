//! `ringlog-capi-install`: installs libringlog for C programs into a prefix, as `cargo cinstall`
//! (cargo-c) would, without needing cargo-c:
//!
//! ```text
//! <prefix>/lib/libringlog.so.0.1.0              the shared library (SONAME libringlog.so.0)
//! <prefix>/lib/libringlog.so.0 -> libringlog.so.0.1.0
//! <prefix>/lib/libringlog.so   -> libringlog.so.0
//! <prefix>/lib/libringlog.a                     the static library, packaged (only ringlog_*
//!                                               symbols global: scripts/package-static.sh)
//! <prefix>/include/ringlog.h
//! <prefix>/lib/pkgconfig/ringlog.pc             prefix, -lringlog, Libs.private, Cflags
//! ```
//!
//! Usage (the libraries are the ones `cargo build -p ringlog-capi` put beside this program;
//! `cargo run` would not: it builds the library only as this program's dependency, without
//! copying `libringlog.so`/`.a` up to the profile directory):
//!
//! ```sh
//! cargo build --release -p ringlog-capi      # the libraries and the installer, side by side
//! target/release/ringlog-capi-install --prefix /usr/local
//! ```
//!
//! Options: `--prefix DIR` (required; created if missing), `--lib-dir DIR` (where
//! `libringlog.so` and `libringlog.a` were built; default: this program's directory),
//! `--no-static` (skip the static library: packaging it needs GNU binutils `ld`, `objcopy`,
//! `readelf` and `ar`). The header and the packaging script are compiled into this program,
//! so it installs the header of the sources it was built from. Exit status 0 on success, 1 on
//! a failed step, 2 on bad usage; every failure names the step and the path.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};

/// The header of the sources this installer was built from.
const HEADER: &str = include_str!("../../include/ringlog.h");
/// The static-library packaging script (capi/scripts/package-static.sh).
const PACKAGE_STATIC: &str = include_str!("../../scripts/package-static.sh");
const VERSION: &str = env!("CARGO_PKG_VERSION");
const MAJOR: &str = env!("CARGO_PKG_VERSION_MAJOR");
/// Native libraries a program linking the static library also needs
/// (`rustc --print native-static-libs` for this crate on Linux).
const LIBS_PRIVATE: &str = "-lgcc_s -lutil -lrt -lpthread -lm -ldl -lc";

const USAGE: &str = "usage: ringlog-capi-install --prefix DIR [--lib-dir DIR] [--no-static]";

#[derive(Debug)]
struct Options {
    prefix: PathBuf,
    lib_dir: Option<PathBuf>,
    with_static: bool,
}

fn parse(args: &[String]) -> Result<Options, String> {
    let mut prefix = None;
    let mut lib_dir = None;
    let mut with_static = true;
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--prefix" => prefix = Some(PathBuf::from(args.next().ok_or("--prefix needs DIR")?)),
            "--lib-dir" => lib_dir = Some(PathBuf::from(args.next().ok_or("--lib-dir needs DIR")?)),
            "--no-static" => with_static = false,
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument `{other}`")),
        }
    }
    let prefix = prefix.ok_or("--prefix DIR is required")?;
    if prefix.as_os_str().is_empty() {
        return Err("--prefix is empty".into());
    }
    Ok(Options { prefix, lib_dir, with_static })
}

/// The text of `ringlog.pc` for a prefix.
fn pkg_config(prefix: &Path) -> String {
    format!(
        "# libringlog (installed by ringlog-capi-install)\n\
         prefix={}\n\
         exec_prefix=${{prefix}}\n\
         libdir=${{exec_prefix}}/lib\n\
         includedir=${{prefix}}/include\n\
         \n\
         Name: ringlog\n\
         Description: Embedded durable commit log, replicated log node and cluster client (io_uring, Raft)\n\
         Version: {VERSION}\n\
         Libs: -L${{libdir}} -lringlog\n\
         Libs.private: {LIBS_PRIVATE}\n\
         Cflags: -I${{includedir}}\n",
        prefix.display()
    )
}

fn step<T>(what: &str, result: std::io::Result<T>) -> Result<T, String> {
    result.map_err(|error| format!("{what}: {error}"))
}

/// Replaces whatever is at `link` with a symlink to `target`.
fn relink(target: &str, link: &Path) -> Result<(), String> {
    match std::fs::remove_file(link) {
        Ok(()) => {}
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => return Err(format!("remove {}: {error}", link.display())),
    }
    step(&format!("link {} -> {target}", link.display()), std::os::unix::fs::symlink(target, link))
}

fn install(options: &Options) -> Result<Vec<PathBuf>, String> {
    let lib_dir = match &options.lib_dir {
        Some(dir) => dir.clone(),
        None => {
            let exe = step("locate this program", std::env::current_exe())?;
            exe.parent().ok_or("this program has no directory")?.to_path_buf()
        }
    };
    let shared = lib_dir.join("libringlog.so");
    if !shared.is_file() {
        return Err(format!(
            "{} not found: build the library and this installer together (`cargo build [--release] \
             -p ringlog-capi`, then run target/<profile>/ringlog-capi-install) or pass --lib-dir",
            shared.display()
        ));
    }
    step(
        &format!("create {}", options.prefix.display()),
        std::fs::create_dir_all(&options.prefix),
    )?;
    let prefix = step(
        &format!("resolve {}", options.prefix.display()),
        std::fs::canonicalize(&options.prefix),
    )?;
    let lib = prefix.join("lib");
    let include = prefix.join("include");
    let pkgconfig = lib.join("pkgconfig");
    for dir in [&lib, &include, &pkgconfig] {
        step(&format!("create {}", dir.display()), std::fs::create_dir_all(dir))?;
    }
    let mut installed = Vec::new();

    let real_name = format!("libringlog.so.{VERSION}");
    let soname = format!("libringlog.so.{MAJOR}");
    let real = lib.join(&real_name);
    // Copy to a temporary name and rename: a program running with the old library keeps its
    // mapping intact.
    let temporary = lib.join(format!(".{real_name}.tmp"));
    step(&format!("copy {} to {}", shared.display(), temporary.display()), {
        std::fs::copy(&shared, &temporary)
    })?;
    step(&format!("rename to {}", real.display()), std::fs::rename(&temporary, &real))?;
    relink(&real_name, &lib.join(&soname))?;
    relink(&soname, &lib.join("libringlog.so"))?;
    installed.extend([real, lib.join(&soname), lib.join("libringlog.so")]);

    if options.with_static {
        let archive = lib_dir.join("libringlog.a");
        if !archive.is_file() {
            return Err(format!("{} not found (or pass --no-static)", archive.display()));
        }
        let out = lib.join("libringlog.a");
        let mut child = step(
            "run sh (packaging the static library)",
            Command::new("sh")
                .arg("-s")
                .arg(&archive)
                .arg(&out)
                .stdin(Stdio::piped())
                .stdout(Stdio::inherit())
                .stderr(Stdio::piped())
                .spawn(),
        )?;
        {
            use std::io::Write;
            let mut stdin = child.stdin.take().ok_or("sh has no stdin")?;
            step("feed the packaging script to sh", stdin.write_all(PACKAGE_STATIC.as_bytes()))?;
        }
        let output = step("wait for the packaging script", child.wait_with_output())?;
        if !output.status.success() {
            return Err(format!(
                "packaging {} failed ({}; it needs GNU binutils: ld, objcopy, readelf, ar; or \
                 pass --no-static): {}",
                archive.display(),
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            ));
        }
        installed.push(out);
    }

    let header = include.join("ringlog.h");
    step(&format!("write {}", header.display()), std::fs::write(&header, HEADER))?;
    installed.push(header);
    let pc = pkgconfig.join("ringlog.pc");
    step(&format!("write {}", pc.display()), std::fs::write(&pc, pkg_config(&prefix)))?;
    installed.push(pc);
    Ok(installed)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let options = match parse(&args) {
        Ok(options) => options,
        Err(message) => {
            if message.is_empty() {
                println!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            eprintln!("ringlog-capi-install: {message}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match install(&options) {
        Ok(files) => {
            for file in files {
                println!("installed {}", file.display());
            }
            ExitCode::SUCCESS
        }
        Err(message) => {
            eprintln!("ringlog-capi-install: {message}");
            ExitCode::from(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pc_file_names_the_prefix_version_and_private_libs() {
        let text = pkg_config(Path::new("/opt/ringlog"));
        assert!(text.contains("prefix=/opt/ringlog\n"), "{text}");
        assert!(text.contains(&format!("Version: {VERSION}\n")), "{text}");
        assert!(text.contains("Libs: -L${libdir} -lringlog\n"), "{text}");
        assert!(text.contains("Libs.private: -lgcc_s"), "{text}");
        assert!(text.contains("Cflags: -I${includedir}\n"), "{text}");
    }

    #[test]
    fn usage_errors_are_clear() {
        assert_eq!(parse(&[]).unwrap_err(), "--prefix DIR is required");
        assert_eq!(parse(&["--prefix".into()]).unwrap_err(), "--prefix needs DIR");
        assert!(parse(&["--bogus".into()]).unwrap_err().contains("--bogus"));
        let options = parse(&["--prefix".into(), "/p".into(), "--no-static".into()]).unwrap();
        assert!(!options.with_static);
    }
}
