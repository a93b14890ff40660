//! THE RECOVERY RULE as docs/format.md writes it: the first table of its "### Recovery
//! outcomes" section, parsed at test time, so that the simulator's disk
//! (`tests/recovery_table.rs`) and the engine with the node's damage rule (ringlog-node's
//! `replicator_tests.rs`, `every_recovery_outcome_row_holds_for_real_files`) are checked
//! against the same rows: one table, no copy of it in code. Each test keys its cases on
//! [`Row::key`] and calls [`check_cases`], which fails with the row's text when a row has no
//! case (a row was added or reworded) or a case has no row.
//!
//! The cells are matched exactly (after dropping `**` and case): a reworded cell is an error
//! that names it, never a silent pass. Numbers are plain (`u64` terms and indices, `u32` node
//! ids) so that both the simulator's and the engine's types convert to them.

/// Where the table is: the heading of its section (the first table after it).
pub const SECTION_HEADING: &str = "### Recovery outcomes";

/// The header row the parser understands.
pub const HEADER: [&str; 5] = [
    "recovery finds",
    "log",
    "damaged",
    "hard state it restarts with",
    "simulator fault that makes it",
];

/// What recovery leaves of the log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogOutcome {
    /// "kept whole": every entry written is kept.
    KeptWhole,
    /// "cut after the last valid batch": the log ends at the last valid entry before the bad
    /// bytes.
    CutAfterLastValid,
    /// "cut before it": the log ends just before the first invalid entry.
    CutBeforeBad,
    /// "as scanned": what the scan finds (no damage of the log itself in this row).
    AsScanned,
    /// "empty": nothing.
    Empty,
}

/// The hard state the replica restarts with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HardStateOutcome {
    /// "the newest valid slot".
    NewestSlot,
    /// "the newest valid slot, raised to the log's last term (no vote) if below it".
    NewestSlotRaisedIfBelowLog,
    /// "(max(valid slot term, log last term), no vote)".
    MaxOfSlotAndLogNoVote,
    /// "(0, no vote), ...": nothing survives.
    ZeroNoVote,
}

/// One row of the table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Row {
    /// The first cell up to its first ` (` or `:`, without `**`, lower case, spaces folded:
    /// the identifier both tests key their cases on.
    pub key: String,
    /// The whole first cell, as written.
    pub finds: String,
    pub log: LogOutcome,
    pub damaged: bool,
    pub hard_state: HardStateOutcome,
}

/// The row's first cell as a key (see [`Row::key`]).
pub fn row_key(first_cell: &str) -> String {
    let text = normalize(first_cell);
    let end = [text.find(" ("), text.find(':')].into_iter().flatten().min().unwrap_or(text.len());
    text[..end].trim().to_string()
}

fn normalize(cell: &str) -> String {
    cell.replace("**", "").split_whitespace().collect::<Vec<_>>().join(" ").to_lowercase()
}

/// Parses the table out of docs/format.md's text.
pub fn parse(markdown: &str) -> Result<Vec<Row>, String> {
    let mut lines = markdown.lines();
    lines
        .by_ref()
        .find(|l| l.trim() == SECTION_HEADING)
        .ok_or_else(|| format!("docs/format.md has no `{SECTION_HEADING}` heading"))?;
    let mut table = lines
        .skip_while(|l| !l.trim_start().starts_with('|'))
        .take_while(|l| l.trim_start().starts_with('|'));
    let cells = |line: &str| -> Vec<String> {
        let line = line.trim();
        let inner = line.strip_prefix('|').unwrap_or(line);
        let inner = inner.strip_suffix('|').unwrap_or(inner);
        inner.split('|').map(|c| c.trim().to_string()).collect()
    };
    let header = table.next().ok_or("no table after the recovery outcomes heading")?;
    let header: Vec<String> = cells(header).iter().map(|c| normalize(c)).collect();
    if header != HEADER {
        return Err(format!("the recovery outcomes table's header is {header:?}, not {HEADER:?}"));
    }
    table.next().ok_or("the recovery outcomes table has no separator row")?;
    let mut rows: Vec<Row> = Vec::new();
    for line in table {
        let c = cells(line);
        if c.len() != HEADER.len() {
            return Err(format!("a recovery outcomes row has {} cells, not 5: {line}", c.len()));
        }
        let log = match normalize(&c[1]).as_str() {
            "kept whole" => LogOutcome::KeptWhole,
            "cut after the last valid batch" => LogOutcome::CutAfterLastValid,
            "cut before it" => LogOutcome::CutBeforeBad,
            "as scanned" => LogOutcome::AsScanned,
            "empty" => LogOutcome::Empty,
            other => return Err(format!("unknown log outcome `{other}` in row: {line}")),
        };
        let damaged = match normalize(&c[2]).as_str() {
            "yes" => true,
            "no" => false,
            other => return Err(format!("unknown damaged cell `{other}` in row: {line}")),
        };
        let hard_state = match normalize(&c[3]).as_str() {
            "the newest valid slot" => HardStateOutcome::NewestSlot,
            "the newest valid slot, raised to the log's last term (no vote) if below it" => {
                HardStateOutcome::NewestSlotRaisedIfBelowLog
            }
            "as above" => {
                rows.last().ok_or(format!("`as above` in the first row: {line}"))?.hard_state
            }
            "(max(valid slot term, log last term), no vote)" => {
                HardStateOutcome::MaxOfSlotAndLogNoVote
            }
            "(0, no vote), the bootstrap membership from the config" => {
                HardStateOutcome::ZeroNoVote
            }
            other => return Err(format!("unknown hard-state cell `{other}` in row: {line}")),
        };
        let key = row_key(&c[0]);
        if rows.iter().any(|r| r.key == key) {
            return Err(format!("two recovery outcomes rows have the key `{key}`"));
        }
        rows.push(Row { key, finds: c[0].clone(), log, damaged, hard_state });
    }
    if rows.is_empty() {
        return Err("the recovery outcomes table has no rows".into());
    }
    Ok(rows)
}

/// Every row has a case in `cases` (row keys) and every case a row; else the error names
/// them.
pub fn check_cases(rows: &[Row], cases: &[&str]) -> Result<(), String> {
    let mut problems = Vec::new();
    for row in rows {
        if !cases.contains(&row.key.as_str()) {
            problems.push(format!(
                "the row `{}` (key `{}`) has no case: add one that builds its fault",
                row.finds, row.key
            ));
        }
    }
    for case in cases {
        if !rows.iter().any(|r| r.key == *case) {
            problems.push(format!("the case `{case}` matches no row of the table"));
        }
    }
    match problems.is_empty() {
        true => Ok(()),
        false => Err(format!(
            "docs/format.md \"Recovery outcomes\" and the cases disagree:\n{}",
            problems.join("\n")
        )),
    }
}

/// What a case knows of the log it damaged: its last index as written, the first entry the
/// fault made invalid (if any), and the index before its first entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LogFacts {
    pub written_last: u64,
    pub first_bad: Option<u64>,
    pub start_prev: u64,
}

impl LogOutcome {
    /// The last index the log must end at under this outcome.
    pub fn expected_last(self, facts: LogFacts) -> Result<u64, String> {
        match self {
            LogOutcome::KeptWhole | LogOutcome::AsScanned => Ok(facts.written_last),
            LogOutcome::CutAfterLastValid | LogOutcome::CutBeforeBad => facts
                .first_bad
                .map(|bad| bad - 1)
                .ok_or_else(|| format!("{self:?}, but the case made no entry invalid")),
            LogOutcome::Empty => Ok(facts.start_prev),
        }
    }
}

impl HardStateOutcome {
    /// The (term, vote) the replica must restart with, from the newest slot that is still
    /// valid (`None`: none is) and the recovered log's last term.
    pub fn expected(
        self,
        newest_valid: Option<(u64, Option<u32>)>,
        log_last_term: u64,
    ) -> (u64, Option<u32>) {
        let slot = newest_valid.unwrap_or((0, None));
        match self {
            HardStateOutcome::NewestSlot => slot,
            HardStateOutcome::NewestSlotRaisedIfBelowLog if slot.0 < log_last_term => {
                (log_last_term, None)
            }
            HardStateOutcome::NewestSlotRaisedIfBelowLog => slot,
            HardStateOutcome::MaxOfSlotAndLogNoVote => (slot.0.max(log_last_term), None),
            HardStateOutcome::ZeroNoVote => (0, None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = "intro\n### Recovery outcomes\n\ntext\n\n\
| recovery finds | log | damaged | hard state it restarts with | simulator fault that makes it |\n\
|---|---|---|---|---|\n\
| a clean end: zeros | kept whole | no | the newest valid slot | a crash |\n\
| an invalid batch (anywhere) | cut before it | **yes** | as above | a flip |\n\
\nafter\n| other | table |\n";

    #[test]
    fn parses_rows_keys_and_as_above() {
        let rows = parse(DOC).unwrap();
        assert_eq!(rows.len(), 2, "the table ends at the first line that is not a row");
        assert_eq!(rows[0].key, "a clean end");
        assert_eq!(rows[1].key, "an invalid batch");
        assert_eq!(rows[1].log, LogOutcome::CutBeforeBad);
        assert!(rows[1].damaged);
        assert_eq!(rows[1].hard_state, HardStateOutcome::NewestSlot);
    }

    #[test]
    fn a_reworded_cell_or_a_row_without_a_case_is_an_error() {
        let reworded = DOC.replace("| kept whole |", "| kept |");
        assert!(parse(&reworded).unwrap_err().contains("unknown log outcome `kept`"));
        let rows = parse(DOC).unwrap();
        let err = check_cases(&rows, &["a clean end"]).unwrap_err();
        assert!(err.contains("`an invalid batch` has no case") || err.contains("has no case"));
        assert!(check_cases(&rows, &["a clean end", "an invalid batch", "x"]).is_err());
        assert!(check_cases(&rows, &["a clean end", "an invalid batch"]).is_ok());
        assert!(parse("no table here").is_err());
    }

    #[test]
    fn expected_values_follow_the_outcome() {
        let facts = LogFacts { written_last: 9, first_bad: Some(4), start_prev: 0 };
        assert_eq!(LogOutcome::KeptWhole.expected_last(facts), Ok(9));
        assert_eq!(LogOutcome::CutBeforeBad.expected_last(facts), Ok(3));
        assert_eq!(LogOutcome::Empty.expected_last(facts), Ok(0));
        let clean = LogFacts { first_bad: None, ..facts };
        assert!(LogOutcome::CutBeforeBad.expected_last(clean).is_err());
        let raised = HardStateOutcome::NewestSlotRaisedIfBelowLog;
        assert_eq!(raised.expected(Some((2, Some(1))), 3), (3, None));
        assert_eq!(raised.expected(Some((3, Some(1))), 3), (3, Some(1)));
        assert_eq!(
            HardStateOutcome::MaxOfSlotAndLogNoVote.expected(Some((5, Some(2))), 3),
            (5, None)
        );
    }
}
