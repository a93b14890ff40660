//! Run folders: each run writes into `<results>/<UTC timestamp>[-<label>]/`, and
//! `<results>/latest` (a relative symlink) points at the newest one.
//!
//! Invariants: a run never writes into, or deletes, another run's folder (a name already
//! taken gets a `-2`, `-3`, ... suffix; the folder is created with `create_dir`, which fails
//! rather than reuse one); `latest` is replaced atomically (a temporary symlink renamed over
//! it), so a reader sees the old run or the new one, never neither. Files of the flat layout
//! of earlier versions (`results/results.json`, ...) are left alone.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};

use crate::report::RESULTS_JSON;

/// The symlink to the newest run folder.
pub const LATEST: &str = "latest";
/// Most suffixes tried for a taken folder name.
const SUFFIX_MAX: u32 = 1000;

/// Creates the folder of a run started at `started_unix_secs` under `results` (created if
/// needed): `20261207T153007Z` or `20261207T153007Z-<label>`.
pub fn create(
    results: &Path,
    started_unix_secs: u64,
    label: Option<&str>,
) -> anyhow::Result<PathBuf> {
    if let Some(label) = label {
        check_label(label)?;
    }
    std::fs::create_dir_all(results)
        .with_context(|| format!("creating the results folder {}", results.display()))?;
    let stamp = crate::provenance::utc_folder_name(started_unix_secs);
    let base = match label {
        Some(label) => format!("{stamp}-{label}"),
        None => stamp,
    };
    for attempt in 1..=SUFFIX_MAX {
        let name = if attempt == 1 { base.clone() } else { format!("{base}-{attempt}") };
        let dir = results.join(&name);
        match std::fs::create_dir(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e).with_context(|| format!("creating {}", dir.display())),
        }
    }
    bail!("{} already holds {SUFFIX_MAX} runs named {base}*", results.display())
}

/// Points `<results>/latest` at `run` (a folder inside `results`), atomically.
pub fn point_latest(results: &Path, run: &Path) -> anyhow::Result<()> {
    let name = run.file_name().with_context(|| format!("{} has no folder name", run.display()))?;
    let latest = results.join(LATEST);
    if latest.exists() && !latest.is_symlink() {
        bail!(
            "{} exists and is not a symlink: not replacing it (move it away to get `latest`)",
            latest.display()
        );
    }
    let temporary = results.join(format!(".{LATEST}.{}.tmp", std::process::id()));
    let _ = std::fs::remove_file(&temporary);
    std::os::unix::fs::symlink(name, &temporary)
        .with_context(|| format!("creating the symlink {}", temporary.display()))?;
    std::fs::rename(&temporary, &latest).with_context(|| {
        let _ = std::fs::remove_file(&temporary);
        format!("replacing {}", latest.display())
    })
}

/// The `results.json` a command-line argument names: a run folder (or `latest`), a
/// `results.json` path, or `<results>/latest` when given the results folder itself.
pub fn results_json(argument: &Path) -> anyhow::Result<PathBuf> {
    if argument.is_file() {
        return Ok(argument.to_path_buf());
    }
    if argument.is_dir() {
        // A results folder first: one of the flat layout also holds an old results.json.
        let latest = argument.join(LATEST).join(RESULTS_JSON);
        if latest.is_file() {
            return Ok(latest);
        }
        let direct = argument.join(RESULTS_JSON);
        if direct.is_file() {
            return Ok(direct);
        }
        bail!("{} holds no {RESULTS_JSON} (not a run folder)", argument.display());
    }
    bail!("{}: no such run folder or results file", argument.display())
}

/// A label is part of a folder name: letters, digits, `.`, `_` and `-` only.
pub fn check_label(label: &str) -> anyhow::Result<()> {
    let valid = !label.is_empty()
        && label.len() <= 64
        && !label.starts_with('.')
        && label.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if !valid {
        bail!("--label `{label}`: use 1 to 64 letters, digits, `.`, `_` or `-` (not starting with `.`)");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_started_in_the_same_second_get_their_own_folders_and_latest_follows() {
        let results = tempfile::tempdir().unwrap();
        let first = create(results.path(), 1_796_657_407, None).unwrap();
        point_latest(results.path(), &first).unwrap();
        std::fs::write(first.join(RESULTS_JSON), "{}").unwrap();
        let second = create(results.path(), 1_796_657_407, None).unwrap();
        let labelled = create(results.path(), 1_796_657_407, Some("nvme-a")).unwrap();
        assert_eq!(first.file_name().unwrap(), "20261207T153007Z");
        assert_eq!(second.file_name().unwrap(), "20261207T153007Z-2");
        assert_eq!(labelled.file_name().unwrap(), "20261207T153007Z-nvme-a");
        assert!(first.join(RESULTS_JSON).is_file(), "the first run was touched");
        point_latest(results.path(), &second).unwrap();
        let latest = results.path().join(LATEST);
        assert_eq!(std::fs::read_link(&latest).unwrap(), Path::new("20261207T153007Z-2"));
        assert_eq!(latest.canonicalize().unwrap(), second.canonicalize().unwrap());
        std::fs::write(second.join(RESULTS_JSON), "{}").unwrap();
        assert_eq!(results_json(results.path()).unwrap(), latest.join(RESULTS_JSON));
        assert_eq!(results_json(&first).unwrap(), first.join(RESULTS_JSON));
    }

    #[test]
    fn a_results_folder_of_the_flat_layout_keeps_its_files_and_resolves_to_latest() {
        let results = tempfile::tempdir().unwrap();
        std::fs::write(results.path().join(RESULTS_JSON), "old").unwrap();
        std::fs::write(results.path().join("report.md"), "old").unwrap();
        let run = create(results.path(), 0, None).unwrap();
        std::fs::write(run.join(RESULTS_JSON), "{}").unwrap();
        point_latest(results.path(), &run).unwrap();
        assert_eq!(std::fs::read_to_string(results.path().join(RESULTS_JSON)).unwrap(), "old");
        assert_eq!(std::fs::read_to_string(results.path().join("report.md")).unwrap(), "old");
        let resolved = results_json(results.path()).unwrap();
        assert_eq!(resolved, results.path().join(LATEST).join(RESULTS_JSON));
    }

    #[test]
    fn a_bad_label_or_a_missing_run_is_a_clear_error() {
        let results = tempfile::tempdir().unwrap();
        let error = create(results.path(), 0, Some("../up")).unwrap_err();
        assert!(error.to_string().contains("--label"), "{error}");
        let error = results_json(&results.path().join("nope")).unwrap_err();
        assert!(error.to_string().contains("no such run folder"), "{error}");
        let error = results_json(results.path()).unwrap_err();
        assert!(error.to_string().contains("not a run folder"), "{error}");
    }

    #[test]
    fn a_real_directory_named_latest_is_not_replaced() {
        let results = tempfile::tempdir().unwrap();
        std::fs::create_dir(results.path().join(LATEST)).unwrap();
        let run = create(results.path(), 0, None).unwrap();
        let error = point_latest(results.path(), &run).unwrap_err();
        assert!(error.to_string().contains("not a symlink"), "{error}");
    }
}
