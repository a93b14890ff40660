//! Issue #18 (CLI conventions): `ringlog completions` prints completion scripts that name the
//! subcommands (bash's parses with `bash -n`), `ringlog man` prints roff man pages — one per
//! subcommand with `--out-dir` — and `--help` names the environment variable of each
//! connection flag.
//!
//! The subcommands expected are read from `ringlog --help` (and `ringlog <sub> --help` for
//! nested ones), not from the code under test.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Output};

fn ringlog(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ringlog")).args(args).output().expect("run ringlog")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn success(args: &[&str]) -> String {
    let output = ringlog(args);
    assert!(
        output.status.success(),
        "ringlog {}: {}\n{}",
        args.join(" "),
        output.status,
        text(&output.stderr)
    );
    text(&output.stdout)
}

/// The subcommand names a `--help` text lists under `Commands:` (without `help`).
fn commands_of(help: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut in_commands = false;
    for line in help.lines() {
        if line.starts_with("Commands:") {
            in_commands = true;
            continue;
        }
        if in_commands {
            if !line.starts_with("  ") {
                break;
            }
            // A command's first line is indented by two; its wrapped help by more.
            if line.starts_with("   ") {
                continue;
            }
            let name = line.split_whitespace().next().expect("a command name");
            if name != "help" {
                names.push(name.to_string());
            }
        }
    }
    names
}

/// Every command path below `ringlog`, e.g. `["produce"]`, `["config", "check"]`.
fn command_paths(prefix: &[String]) -> Vec<Vec<String>> {
    let mut args: Vec<&str> = prefix.iter().map(String::as_str).collect();
    args.push("--help");
    let mut paths = Vec::new();
    for name in commands_of(&success(&args)) {
        let mut path = prefix.to_vec();
        path.push(name);
        paths.extend(command_paths(&path));
        paths.push(path);
    }
    paths
}

#[test]
fn bash_completion_parses_and_names_every_subcommand_and_client_flag() {
    let script = success(&["completions", "bash"]);
    assert!(script.lines().count() > 50, "a real script, not a stub:\n{script}");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ringlog.bash");
    std::fs::write(&path, &script).unwrap();
    let checked = Command::new("bash").arg("-n").arg(&path).output().expect("run bash -n");
    assert!(checked.status.success(), "bash -n refuses the script: {}", text(&checked.stderr));
    let subcommands = command_paths(&[]);
    assert!(subcommands.len() >= 14, "{subcommands:?}");
    for path in &subcommands {
        let name = path.last().unwrap();
        assert!(script.contains(name.as_str()), "bash completion lacks `{name}`");
    }
    for flag in ["--bootstrap", "--tls-ca", "--format", "--partition"] {
        assert!(script.contains(flag), "bash completion lacks {flag}");
    }
    // The `--format` values are completed too.
    assert!(script.contains("text raw json"), "bash completion lacks the --format values");
}

#[test]
fn every_shell_gets_a_completion_script_naming_the_client_subcommands() {
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let script = success(&["completions", shell]);
        for name in ["produce", "consume", "status", "transfer-leader", "completions", "man"] {
            assert!(script.contains(name), "{shell} completion lacks `{name}`");
        }
    }
    let output = ringlog(&["completions", "tcsh"]);
    assert_eq!(output.status.code(), Some(2), "an unknown shell is a usage error");
    let stderr = text(&output.stderr);
    assert!(stderr.contains("invalid value 'tcsh'"), "{stderr}");
    assert!(stderr.contains("bash, elvish, fish, powershell, zsh"), "{stderr}");
}

/// Checks a roff page's header and name section for `title` (e.g. `ringlog-produce`).
fn assert_man_page(page: &str, title: &str) {
    assert!(
        page.lines().any(|line| line.starts_with(&format!(".TH {title} 1 "))),
        "no `.TH {title} 1` header:\n{page}"
    );
    let name_line = title.replace('-', "\\-");
    let name_section = page.split(".SH NAME\n").nth(1).unwrap_or_default();
    assert!(name_section.starts_with(&name_line), "NAME of {title} is not {name_line}:\n{page}");
    assert!(page.contains(".SH SYNOPSIS\n"), "{title} has no SYNOPSIS:\n{page}");
}

#[test]
fn man_prints_the_top_level_page_naming_the_subcommands() {
    let page = success(&["man"]);
    assert_man_page(&page, "ringlog");
    let commands = page.split(".SH SUBCOMMANDS\n").nth(1).expect("a SUBCOMMANDS section");
    for path in command_paths(&[]).iter().filter(|path| path.len() == 1) {
        let reference = format!("ringlog\\-{}(1)", path[0].replace('-', "\\-"));
        assert!(commands.contains(&reference), "no {reference}:\n{page}");
    }
}

#[test]
fn man_out_dir_writes_one_page_per_subcommand() {
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("man1");
    let printed = success(&["man", "--out-dir", out_dir.to_str().unwrap()]);

    let mut expected: BTreeSet<String> =
        command_paths(&[]).iter().map(|path| format!("ringlog-{}.1", path.join("-"))).collect();
    expected.insert("ringlog.1".to_string());
    let written: BTreeSet<String> = std::fs::read_dir(&out_dir)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(written, expected, "one page per subcommand, nothing else");
    let listed: BTreeSet<String> = printed
        .lines()
        .map(|line| Path::new(line).file_name().unwrap().to_str().unwrap().to_string())
        .collect();
    assert_eq!(listed, expected, "it prints each path it wrote");

    for file in &expected {
        let page = std::fs::read_to_string(out_dir.join(file)).unwrap();
        assert_man_page(&page, file.trim_end_matches(".1"));
    }
    // A client command's page documents its options and where they may come from.
    let produce = std::fs::read_to_string(out_dir.join("ringlog-produce.1")).unwrap();
    assert!(produce.contains("\\-\\-bootstrap"), "{produce}");
    assert!(produce.contains("RINGLOG_BOOTSTRAP"), "{produce}");
    let consume = std::fs::read_to_string(out_dir.join("ringlog-consume.1")).unwrap();
    assert!(consume.contains("\\-\\-format"), "{consume}");

    // A directory that cannot be created is a clear error, not a panic.
    let blocker = dir.path().join("a-file");
    std::fs::write(&blocker, b"").unwrap();
    let output = ringlog(&["man", "--out-dir", blocker.join("man1").to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = text(&output.stderr);
    assert!(stderr.starts_with("ringlog: creating the man page directory"), "{stderr}");
}

#[test]
fn help_of_the_client_commands_names_their_environment_variables() {
    for command in ["produce", "consume", "status", "transfer-leader", "add-node", "remove-node"] {
        let help = success(&[command, "--help"]);
        for variable in
            ["RINGLOG_BOOTSTRAP", "RINGLOG_TLS_CA", "RINGLOG_TLS_CERT", "RINGLOG_TLS_KEY"]
        {
            assert!(help.contains(&format!("[env: {variable}")), "{command} --help:\n{help}");
        }
    }
}
