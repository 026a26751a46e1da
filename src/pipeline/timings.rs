//! How long each stage of a run took: kept in the run's record (`sync_runs.stages`,
//! shown by `status`) and observed by the `followers_etl_stage_duration_seconds`
//! histogram (docs/operations.md#metrics).

use crate::domain::Stage;
use std::time::Instant;

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
    /// The mirror the run syncs, as its metrics' label (`None`: no label).
    mirror: Option<String>,
}

impl StageTimes {
    /// The stage times of a run whose metrics carry the label `mirror`.
    pub fn labelled(mirror: Option<&str>) -> Self {
        Self {
            mirror: mirror.map(str::to_owned),
            ..Self::default()
        }
    }

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
            crate::metrics::record_stage(self.mirror.as_deref(), name, seconds);
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
}
