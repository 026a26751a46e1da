//! The retention settings: how many run records `sync_runs` keeps
//! (docs/sync.md#runs-and-their-retention, `HISTORY_KEEP_*`) and how long the journal keeps
//! what a run changed (docs/operations.md#journal-retention, `JOURNAL_KEEP_*`).

use super::parse::int_or;
use super::sources::Raw;
use super::{var, ConfigError};

/// Runs older than this many days are pruned from the run records.
pub const DEFAULT_HISTORY_KEEP_DAYS: u32 = 90;
/// ... and so are runs beyond this many newest ones.
pub const DEFAULT_HISTORY_KEEP_RUNS: u64 = 10_000;
/// The journal keeps the changes of this many synced runs (docs/operations.md#journal-retention).
pub const DEFAULT_JOURNAL_KEEP_RUNS: u64 = 100;
/// ... and of no run older than this many days.
pub const DEFAULT_JOURNAL_KEEP_DAYS: u64 = 30;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retention {
    pub runs: RunRetention,
    pub journal: JournalRetention,
}

impl Retention {
    pub(super) fn from_raw(raw: &Raw) -> Result<Self, ConfigError> {
        Ok(Self {
            runs: RunRetention {
                keep_days: run_retention_bound(
                    raw,
                    var::HISTORY_KEEP_DAYS,
                    DEFAULT_HISTORY_KEEP_DAYS,
                )?,
                keep_runs: run_retention_bound(
                    raw,
                    var::HISTORY_KEEP_RUNS,
                    DEFAULT_HISTORY_KEEP_RUNS,
                )?,
            },
            journal: JournalRetention {
                keep_runs: int_or(raw, var::JOURNAL_KEEP_RUNS, 0, DEFAULT_JOURNAL_KEEP_RUNS)?,
                keep_days: int_or(raw, var::JOURNAL_KEEP_DAYS, 1, DEFAULT_JOURNAL_KEEP_DAYS)?,
            },
        })
    }
}

/// How many run records to keep (docs/sync.md#runs-and-their-retention); `None` disables that bound.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RunRetention {
    pub keep_days: Option<u32>,
    pub keep_runs: Option<u64>,
}

/// How long the journal keeps what a run changed (docs/operations.md#journal-retention): the newest `keep_runs` runs, none older than `keep_days`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct JournalRetention {
    /// 0 disables the journal (and so `revert`).
    pub keep_runs: u64,
    pub keep_days: u64,
}

impl JournalRetention {
    pub fn enabled(&self) -> bool {
        self.keep_runs > 0
    }
}

/// A run retention bound: a whole number, `0` for no bound.
fn run_retention_bound<T>(
    raw: &Raw,
    var: &'static str,
    default: T,
) -> Result<Option<T>, ConfigError>
where
    T: TryFrom<u64> + PartialEq + Default,
{
    let n = int_or(raw, var, 0, default)?;
    Ok((n != T::default()).then_some(n))
}
