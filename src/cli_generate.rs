//! `ringlog completions` and `ringlog man`: shell completion scripts (clap_complete) and roff
//! man pages (clap_mangen), both generated from the same clap definition as `--help`, so they
//! never drift from the parser.
//!
//! `man` without `--out-dir` prints the top-level page (`ringlog.1`) on stdout; with it, it
//! writes `ringlog.1` and one `ringlog-<subcommand>.1` per subcommand (nested ones too, e.g.
//! `ringlog-config-check.1`) and prints each path written.

#![forbid(unsafe_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use clap_complete::Shell;

/// The name completions are generated for (the installed binary's name).
const BIN_NAME: &str = "ringlog";

/// `ringlog completions`: print a completion script.
#[derive(Debug, Clone, Args)]
#[command(after_help = "Install, e.g.: ringlog completions bash > \
                        ~/.local/share/bash-completion/completions/ringlog")]
pub struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_enum)]
    pub shell: Shell,
}

/// `ringlog man`: generate roff man pages.
#[derive(Debug, Clone, Args)]
pub struct ManArgs {
    /// Write `ringlog.1` and one `ringlog-<subcommand>.1` per subcommand into this directory
    /// (created if missing) instead of printing `ringlog.1` on stdout.
    #[arg(long, value_name = "DIR")]
    pub out_dir: Option<PathBuf>,
}

/// `ringlog completions`.
pub fn run_completions(
    mut command: clap::Command,
    args: &CompletionsArgs,
) -> anyhow::Result<ExitCode> {
    let mut out = std::io::stdout().lock();
    clap_complete::generate(args.shell, &mut command, BIN_NAME, &mut out);
    out.flush().context("writing the completion script")?;
    Ok(ExitCode::SUCCESS)
}

/// `ringlog man`.
pub fn run_man(command: clap::Command, args: &ManArgs) -> anyhow::Result<ExitCode> {
    // As clap_mangen::generate_to: no `help` pseudo-subcommand page; building the command
    // names every subcommand `ringlog-<name>` (its display name, the page's title and file).
    let mut command = command.disable_help_subcommand(true);
    command.build();
    let Some(dir) = &args.out_dir else {
        let mut out = std::io::stdout().lock();
        clap_mangen::Man::new(command).render(&mut out).context("writing the man page")?;
        out.flush().context("writing the man page")?;
        return Ok(ExitCode::SUCCESS);
    };
    std::fs::create_dir_all(dir)
        .with_context(|| format!("creating the man page directory {}", dir.display()))?;
    let mut written = Vec::new();
    write_pages(&command, dir, &mut written)?;
    let mut out = std::io::stdout().lock();
    for path in written {
        writeln!(out, "{}", path.display())?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Writes the page of `command` and of each of its visible subcommands, depth first.
fn write_pages(
    command: &clap::Command,
    dir: &Path,
    written: &mut Vec<PathBuf>,
) -> anyhow::Result<()> {
    for sub in command.get_subcommands().filter(|sub| !sub.is_hide_set()) {
        write_pages(sub, dir, written)?;
    }
    let page = clap_mangen::Man::new(command.clone());
    let path = page
        .generate_to(dir)
        .with_context(|| format!("writing {}", dir.join(page.get_filename()).display()))?;
    written.push(path);
    Ok(())
}
