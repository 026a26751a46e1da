//! `check`: read and validate a CSV without a database, and report every invalid
//! line, the duplicates and the totals (README.md#commands). It streams in the
//! same flat memory as a sync: each invalid line is handed to the caller as it is
//! found, and duplicates are found as a sync finds them, with the Bloom filter of
//! `dupes.rs`; only when it names candidates is the file read a second time, to
//! collect the lines of those emails alone.

use super::dupes::{Candidates, DuplicateFilter};
use super::read::{CsvRecords, RawRow, ReadError};
use super::validate::{validate, Reject};
use crate::config::CsvFormat;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

/// The totals, and each duplicated email with every line it appears on.
#[derive(Debug, Default, serde::Serialize)]
pub(crate) struct CheckReport {
    pub rows: u64,
    pub valid: u64,
    pub invalid: u64,
    pub duplicates: u64,
    /// Each duplicated email with every line it appears on, by first line.
    #[serde(skip)]
    pub duplicate_lines: Vec<(String, Vec<u64>)>,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum CheckError {
    #[error(transparent)]
    Read(#[from] ReadError),
    #[error("{}: the file changed while it was being checked (read twice to find duplicates); check it again once it is complete", path.display())]
    Changed { path: PathBuf },
}

impl CheckError {
    /// Whether the file's content (not the system) is at fault.
    pub(crate) fn is_content(&self) -> bool {
        match self {
            Self::Read(e) => e.is_content(),
            Self::Changed { .. } => true,
        }
    }
}

/// Reads `path` once (twice when it may hold duplicates), calling `on_reject`
/// with each invalid line and its text in file order. The counts in `report` are
/// those read so far when an error ends the check.
#[tracing::instrument(skip_all, fields(path = %path.display()))]
pub(crate) fn check_file(
    path: &Path,
    format: &CsvFormat,
    report: &mut CheckReport,
    mut on_reject: impl FnMut(&Reject, &RawRow),
) -> Result<(), CheckError> {
    let mut records = CsvRecords::open(path, format)?;
    let mut filter = DuplicateFilter::default();
    while let Some(row) = records.next_row()? {
        report.rows += 1;
        let columns = records.columns().expect("known after the first row");
        match validate(&row, &columns) {
            Ok(f) => {
                report.valid += 1;
                filter.insert(f.email.as_str());
            }
            Err(reject) => {
                report.invalid += 1;
                on_reject(&reject, &row);
            }
        }
    }
    let hash = records.finish();
    let wanted: Option<HashSet<String>> = match filter.finish() {
        Candidates::Only(c) if c.is_empty() => return Ok(()),
        Candidates::Only(c) => Some(c.into_iter().collect()),
        // More candidates than the filter lists: every email is collected.
        Candidates::All => None,
    };
    let mut lines: HashMap<String, Vec<u64>> = HashMap::new();
    let mut records = CsvRecords::open(path, format)?;
    while let Some(row) = records.next_row()? {
        let columns = records.columns().expect("known after the first row");
        if let Ok(f) = validate(&row, &columns) {
            if wanted.as_ref().is_none_or(|w| w.contains(f.email.as_str())) {
                lines
                    .entry(f.email.as_str().to_owned())
                    .or_default()
                    .push(f.line);
            }
        }
    }
    if records.finish() != hash {
        return Err(CheckError::Changed {
            path: path.to_owned(),
        });
    }
    report.duplicate_lines = lines
        .into_iter()
        .filter(|(_, lines)| lines.len() > 1)
        .collect();
    report.duplicate_lines.sort_by_key(|(_, lines)| lines[0]);
    report.duplicates = report
        .duplicate_lines
        .iter()
        .map(|(_, l)| crate::convert::len(l.len()) - 1)
        .sum();
    Ok(())
}
