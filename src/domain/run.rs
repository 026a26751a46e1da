//! What a run is and how it ended: shared by the pipeline, the runner, the run
//! records and the command line. The string forms (`sync_runs.outcome`,
//! `sync_runs.trigger`, log fields, metric labels, JSON) are derived.

use serde::Serialize;

/// How a run ended (README.md#commands).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, strum::Display, strum::IntoStaticStr)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum Outcome {
    Synced,
    /// A `revert` that put the table back.
    Reverted,
    Skipped,
    Refused,
    Failed,
    DryRun,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

/// What started a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, strum::Display, strum::IntoStaticStr)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum Trigger {
    Cron,
    Watch,
    Start,
    Manual,
    Revert,
}

impl Trigger {
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

/// What a run did, by action.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    pub rows_read: u64,
    pub inserted: u64,
    pub updated: u64,
    pub deleted: u64,
    pub unchanged: u64,
    pub rejected: u64,
    pub duplicates: u64,
    /// Rows the journal holds (or, in a dry run, would hold) for this run: one
    /// per follower inserted, updated or deleted; 0 when the journal is off.
    pub journaled: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn string_forms_are_snake_case_everywhere() {
        for (outcome, text) in [
            (Outcome::Synced, "synced"),
            (Outcome::Reverted, "reverted"),
            (Outcome::Skipped, "skipped"),
            (Outcome::Refused, "refused"),
            (Outcome::Failed, "failed"),
            (Outcome::DryRun, "dry_run"),
        ] {
            assert_eq!(outcome.as_str(), text);
            assert_eq!(outcome.to_string(), text);
            assert_eq!(serde_json::to_value(outcome).unwrap(), text);
        }
        for (trigger, text) in [
            (Trigger::Cron, "cron"),
            (Trigger::Watch, "watch"),
            (Trigger::Start, "start"),
            (Trigger::Manual, "manual"),
            (Trigger::Revert, "revert"),
        ] {
            assert_eq!(trigger.as_str(), text);
            assert_eq!(serde_json::to_value(trigger).unwrap(), text);
        }
    }
}
