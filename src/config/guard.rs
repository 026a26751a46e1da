//! The guard settings (docs/sync.md#refusals-and-approvals): how much of the
//! table one run may delete or rename, how many rejected rows it tolerates, and
//! whether it may sync from another file than the last successful sync.

use super::parse::{bool_or, int_or};
use super::sources::Raw;
use super::{invalid, var, ConfigError};

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GuardSettings {
    /// The delete guard: 1.0 disables.
    pub max_delete_ratio: f64,
    /// The rename guard (docs/sync.md#refusals-and-approvals): 1.0 disables.
    pub max_update_ratio: f64,
    pub max_rejects: u64,
    /// Sync from another file than the last successful sync (docs/sync.md#one-file-per-table).
    pub allow_file_change: bool,
}

impl GuardSettings {
    pub(super) fn from_raw(raw: &Raw) -> Result<Self, ConfigError> {
        Ok(Self {
            max_delete_ratio: ratio(raw, var::MAX_DELETE_RATIO, "delete")?,
            max_update_ratio: ratio(raw, var::MAX_UPDATE_RATIO, "rename")?,
            max_rejects: int_or(raw, var::MAX_REJECTS, 0, 0)?,
            allow_file_change: bool_or(raw, var::ALLOW_FILE_CHANGE, false)?,
        })
    }
}

/// A guard's ratio, 0.5 by default; `what` names the guard in the rule.
fn ratio(raw: &Raw, var: &'static str, what: &str) -> Result<f64, ConfigError> {
    match raw.get(var) {
        None => Ok(0.5),
        Some(v) => v
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|r| (0.0..=1.0).contains(r))
            .ok_or_else(|| {
                invalid(
                    var,
                    v,
                    format!("expected a number from 0.0 to 1.0 (1.0 disables the {what} guard)"),
                )
            }),
    }
}
