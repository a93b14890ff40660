//! Provenance: which ringlog build produced a result (version, git commit, build profile).
//!
//! Recorded at build time by `bench/build.rs`, so a binary copied to another host still
//! reports the commit it was built from; "unknown" when it was not built in a git checkout,
//! and `-dirty` appended when tracked files differed from that commit.

use serde::Serialize;

/// The build of ringlog that ran the benchmark.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Build {
    /// The crate version (the workspace's version).
    pub version: String,
    /// `git rev-parse HEAD` at build time, `-dirty` if tracked files had changes; "unknown"
    /// outside a git checkout.
    pub commit: String,
    /// Cargo's profile: "debug" or "release".
    pub profile: String,
    /// rustc's opt-level of that profile.
    pub opt_level: String,
}

impl Build {
    /// This binary's build.
    pub fn current() -> Build {
        Build {
            version: env!("CARGO_PKG_VERSION").to_string(),
            commit: env!("RINGLOG_GIT_COMMIT").to_string(),
            profile: env!("RINGLOG_BUILD_PROFILE").to_string(),
            opt_level: env!("RINGLOG_BUILD_OPT_LEVEL").to_string(),
        }
    }
}

/// `unix_secs` as an ISO 8601 UTC timestamp (`2026-12-07T15:30:07Z`).
pub fn utc_timestamp(unix_secs: u64) -> String {
    let (date, time) = utc_parts(unix_secs);
    format!("{}-{:02}-{:02}T{:02}:{:02}:{:02}Z", date.0, date.1, date.2, time.0, time.1, time.2)
}

/// `unix_secs` as a file-name-safe UTC timestamp (`20261207T153007Z`).
pub fn utc_folder_name(unix_secs: u64) -> String {
    let (date, time) = utc_parts(unix_secs);
    format!("{}{:02}{:02}T{:02}{:02}{:02}Z", date.0, date.1, date.2, time.0, time.1, time.2)
}

/// ((year, month, day), (hour, minute, second)) in UTC, by the civil-from-days algorithm of
/// Howard Hinnant (proleptic Gregorian calendar).
fn utc_parts(unix_secs: u64) -> ((i64, u32, u32), (u32, u32, u32)) {
    let days = (unix_secs / 86_400) as i64;
    let secs = (unix_secs % 86_400) as u32;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    ((year, month, day), (secs / 3600, secs / 60 % 60, secs % 60))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_utc_calendar_dates() {
        assert_eq!(utc_timestamp(0), "1970-01-01T00:00:00Z");
        // 2000-02-29 (a leap day of a century leap year) 12:34:56.
        assert_eq!(utc_timestamp(951_827_696), "2000-02-29T12:34:56Z");
        assert_eq!(utc_folder_name(1_796_657_407), "20261207T153007Z");
    }

    #[test]
    fn the_build_names_a_commit_and_a_profile() {
        let build = Build::current();
        assert_eq!(build.version, env!("CARGO_PKG_VERSION"));
        assert!(!build.commit.is_empty());
        assert!(["debug", "release"].contains(&build.profile.as_str()), "{build:?}");
    }
}
