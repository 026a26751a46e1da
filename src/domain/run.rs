//! What a run is, the stages it goes through and how it ended: shared by the
//! pipeline, the runner, the run records, the metrics and the command line. The
//! string forms (`sync_runs.outcome`, `sync_runs.trigger`, `sync_runs.stages`, log
//! fields, metric labels, JSON) are derived.

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

/// Every stage, in pipeline order; the strings are those of `sync_runs.stages` and
/// of the metric's `stage` label. `ready` (waiting for `READY_MARKER`, when set),
/// `settle` (waiting for the file to stop changing), `lock` (run lock, recovery, run
/// record), `hash`, `read_and_stage`, `dedupe`, then `merge` (the whole transaction)
/// and its steps `merge.begin` … `merge.commit` (`merge.status` covers
/// `table_status` and the run record, the guard is timed within the step before it:
/// `merge.guard` and `merge.record` name where a run failed; see pipeline/merge.rs),
/// or `plan` for a dry run. Timed by `pipeline::timings`.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Hash,
    strum::Display,
    strum::EnumIter,
    strum::EnumString,
    strum::IntoStaticStr,
)]
#[strum(serialize_all = "snake_case")]
pub enum Stage {
    Ready,
    Settle,
    Lock,
    Hash,
    ReadAndStage,
    Dedupe,
    Merge,
    #[strum(serialize = "merge.begin")]
    MergeBegin,
    #[strum(serialize = "merge.lock")]
    MergeLock,
    #[strum(serialize = "merge.verify")]
    MergeVerify,
    #[strum(serialize = "merge.diff")]
    MergeDiff,
    #[strum(serialize = "merge.update")]
    MergeUpdate,
    #[strum(serialize = "merge.insert")]
    MergeInsert,
    #[strum(serialize = "merge.delete")]
    MergeDelete,
    #[strum(serialize = "merge.guard")]
    MergeGuard,
    #[strum(serialize = "merge.status")]
    MergeStatus,
    #[strum(serialize = "merge.record")]
    MergeRecord,
    #[strum(serialize = "merge.cleanup")]
    MergeCleanup,
    #[strum(serialize = "merge.commit")]
    MergeCommit,
    Plan,
}

impl Stage {
    /// The stage's name, as stored and as the metric's label.
    pub fn as_str(self) -> &'static str {
        self.into()
    }

    /// A step of the merge (`merge.…`): recorded next to `merge`, not in the metrics.
    pub fn is_step(self) -> bool {
        self.as_str().starts_with("merge.")
    }

    /// The stages proper (not the merge's steps), in pipeline order.
    pub fn stages() -> impl Iterator<Item = Stage> {
        <Self as strum::IntoEnumIterator>::iter().filter(|s| !s.is_step())
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
    use strum::IntoEnumIterator;

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

    #[test]
    fn the_names_are_those_stored_and_the_order_is_the_pipelines() {
        let names: Vec<&str> = Stage::iter().map(Stage::as_str).collect();
        assert_eq!(
            names,
            [
                "ready",
                "settle",
                "lock",
                "hash",
                "read_and_stage",
                "dedupe",
                "merge",
                "merge.begin",
                "merge.lock",
                "merge.verify",
                "merge.diff",
                "merge.update",
                "merge.insert",
                "merge.delete",
                "merge.guard",
                "merge.status",
                "merge.record",
                "merge.cleanup",
                "merge.commit",
                "plan",
            ]
        );
        for stage in Stage::iter() {
            assert_eq!(stage.as_str().parse::<Stage>(), Ok(stage));
            assert_eq!(stage.to_string(), stage.as_str());
        }
        let stages: Vec<_> = Stage::stages().map(Stage::as_str).collect();
        assert_eq!(
            stages,
            [
                "ready",
                "settle",
                "lock",
                "hash",
                "read_and_stage",
                "dedupe",
                "merge",
                "plan"
            ]
        );
    }
}
