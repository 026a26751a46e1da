//! `check`: read and validate a CSV without a database, and report every invalid
//! line, the duplicates and the totals. Unlike a sync it keeps every email in
//! memory to find duplicates (it is an operator's tool for one file).

use super::read::{CsvRecords, ReadError};
use super::validate::{validate, Reject};
use crate::config::CsvFormat;
use std::collections::HashMap;
use std::path::Path;

#[derive(Debug, Default, serde::Serialize)]
pub struct CheckReport {
    pub rows: u64,
    pub valid: u64,
    pub invalid: u64,
    pub duplicates: u64,
    /// Every invalid line, in file order.
    #[serde(skip)]
    pub rejects: Vec<Reject>,
    /// Each duplicated email with every line it appears on.
    #[serde(skip)]
    pub duplicate_lines: Vec<(String, Vec<u64>)>,
}

pub fn check_file(path: &Path, format: &CsvFormat) -> Result<CheckReport, ReadError> {
    let mut records = CsvRecords::open(path, format)?;
    let mut report = CheckReport::default();
    let mut seen: HashMap<String, Vec<u64>> = HashMap::new();
    while let Some(row) = records.next_row()? {
        report.rows += 1;
        let columns = records.columns().expect("known after the first row");
        match validate(&row, &columns) {
            Ok(f) => {
                report.valid += 1;
                seen.entry(f.email.as_str().to_owned())
                    .or_default()
                    .push(f.line);
            }
            Err(reject) => {
                report.invalid += 1;
                report.rejects.push(reject);
            }
        }
    }
    report.duplicate_lines = seen
        .into_iter()
        .filter(|(_, lines)| lines.len() > 1)
        .collect();
    report.duplicate_lines.sort_by_key(|(_, lines)| lines[0]);
    report.duplicates = report
        .duplicate_lines
        .iter()
        .map(|(_, l)| l.len() as u64 - 1)
        .sum();
    Ok(report)
}
