//! How long each stage of a run took: kept in the run's record (`sync_runs.stages`,
//! shown by `status`) and observed by the `followers_etl_stage_duration_seconds`
//! histogram (docs/operations.md#metrics).

use std::time::Instant;

/// Every stage, in pipeline order; the strings are those of `sync_runs.stages` and
/// of the metric's `stage` label. `ready` (waiting for `READY_MARKER`, when set),
/// `settle` (waiting for the file to stop changing), `lock` (run lock, recovery, run
/// record), `hash`, `read_and_stage`, `dedupe`, then `merge` (the whole transaction)
/// and its steps `merge.begin` … `merge.commit` (`merge.status` covers
/// `table_status` and the run record, the guard is timed within the step before it:
/// `merge.guard` and `merge.record` name where a run failed; see merge.rs), or
/// `plan` for a dry run.
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

/// The stages a run went through, with their durations; the stage a run stopped in
/// is timed up to that point.
#[derive(Debug, Default)]
pub struct StageTimes {
    current: Option<(Stage, Instant)>,
    /// A step inside the current stage (the merge's), timed on its own.
    step: Option<(Stage, Instant)>,
    done: Vec<(Stage, f64)>,
    /// The stage, or step, begun last: where the run was when it stopped.
    last: Option<Stage>,
}

impl StageTimes {
    /// Ends the current stage (if any) and starts `stage`.
    pub fn begin(&mut self, stage: Stage) {
        self.end();
        self.current = Some((stage, Instant::now()));
        self.last = Some(stage);
    }

    /// Ends the current step (if any) and starts step `step` of the current
    /// stage, which goes on; steps are recorded next to it, not in the metrics.
    pub fn step(&mut self, step: Stage) {
        self.end_step();
        self.step = Some((step, Instant::now()));
        self.last = Some(step);
    }

    /// The stage, or the merge's step, the run was in last (it stopped there).
    pub fn last(&self) -> Option<Stage> {
        self.last
    }

    fn end_step(&mut self) {
        if let Some((name, started)) = self.step.take() {
            self.done.push((name, started.elapsed().as_secs_f64()));
        }
    }

    /// Ends the current stage.
    pub fn end(&mut self) {
        self.end_step();
        if let Some((name, started)) = self.current.take() {
            let seconds = started.elapsed().as_secs_f64();
            crate::metrics::record_stage(name, seconds);
            self.done.push((name, seconds));
        }
    }

    /// `{"stage": seconds, ...}`, to the microsecond.
    pub fn to_json(&self) -> serde_json::Value {
        self.done
            .iter()
            .map(|(stage, s)| (stage.to_string(), ((s * 1e6).round() / 1e6).into()))
            .collect::<serde_json::Map<_, _>>()
            .into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use strum::IntoEnumIterator;

    #[test]
    fn stages_are_timed_in_order_and_the_last_one_ends_with_end() {
        let mut t = StageTimes::default();
        t.begin(Stage::Hash);
        t.begin(Stage::Merge);
        t.step(Stage::MergeVerify);
        t.step(Stage::MergeDiff);
        assert_eq!(t.last(), Some(Stage::MergeDiff));
        t.end();
        t.end();
        let json = t.to_json();
        let keys: Vec<_> = json.as_object().unwrap().keys().cloned().collect();
        assert_eq!(keys.len(), 4);
        assert!(json["merge.diff"].as_f64().unwrap() <= json["merge"].as_f64().unwrap());
        assert!(keys.iter().all(|k| k.parse::<Stage>().is_ok()));
        assert!(json["hash"].as_f64().unwrap() >= 0.0);
        assert!(json["merge"].is_number());
        assert_eq!(t.last(), Some(Stage::MergeDiff));
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
