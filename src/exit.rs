//! The process's exit codes (README.md#commands), in one place: 0 success, 1
//! refused or failed (also fatal errors), 2 bad configuration or usage.

use crate::domain::Outcome;
use std::process::ExitCode;

/// Success: synced, reverted, skipped, dry run; a command that did its job.
pub const SUCCESS: u8 = 0;
/// Refused or failed runs, fatal errors (migrations, database, HTTP port, watch).
pub const FAILURE: u8 = 1;
/// Bad configuration or usage.
pub const USAGE: u8 = 2;

/// `sync`'s exit status for a run's outcome.
pub fn for_outcome(outcome: Outcome) -> ExitCode {
    ExitCode::from(match outcome {
        Outcome::Synced | Outcome::Reverted | Outcome::Skipped | Outcome::DryRun => SUCCESS,
        Outcome::Refused | Outcome::Failed => FAILURE,
    })
}

pub fn failure() -> ExitCode {
    ExitCode::from(FAILURE)
}

pub fn usage() -> ExitCode {
    ExitCode::from(USAGE)
}
