//! How long each stage of a run took: kept in the run's record (`sync_runs.stages`,
//! shown by `status`) and observed by the `followers_etl_stage_duration_seconds`
//! histogram (docs/operations.md#metrics).

use std::time::Instant;

/// Every stage, in pipeline order: `settle` (waiting for the file to stop changing),
/// `lock` (run lock, recovery, run record), `hash`, `read_and_stage`, `dedupe`, then
/// `merge` (the whole transaction) and its steps `merge.begin` … `merge.commit`
/// (`merge.status` covers the guard, `table_status` and the run record; see
/// merge.rs), or `plan` for a dry run.
pub const ORDER: &[&str] = &[
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
];

/// The stages a run went through, with their durations; the stage a run stopped in
/// is timed up to that point.
#[derive(Debug, Default)]
pub struct StageTimes {
    current: Option<(&'static str, Instant)>,
    /// A step inside the current stage (the merge's), timed on its own.
    step: Option<(&'static str, Instant)>,
    done: Vec<(&'static str, f64)>,
}

impl StageTimes {
    /// Ends the current stage (if any) and starts `name`.
    pub fn begin(&mut self, name: &'static str) {
        self.end();
        self.current = Some((name, Instant::now()));
    }

    /// Ends the current step (if any) and starts step `name` of the current
    /// stage, which goes on; steps are recorded next to it, not in the metrics.
    pub fn step(&mut self, name: &'static str) {
        self.end_step();
        self.step = Some((name, Instant::now()));
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
            .map(|(name, s)| ((*name).to_owned(), ((s * 1e6).round() / 1e6).into()))
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
        t.begin("hash");
        t.begin("merge");
        t.step("merge.verify");
        t.step("merge.diff");
        t.end();
        t.end();
        let json = t.to_json();
        let keys: Vec<_> = json.as_object().unwrap().keys().cloned().collect();
        assert_eq!(keys.len(), 4);
        assert!(json["merge.diff"].as_f64().unwrap() <= json["merge"].as_f64().unwrap());
        assert!(keys.iter().all(|k| ORDER.contains(&k.as_str())));
        assert!(json["hash"].as_f64().unwrap() >= 0.0);
        assert!(json["merge"].is_number());
        assert!(["hash", "merge"].iter().all(|s| ORDER.contains(s)));
    }
}
