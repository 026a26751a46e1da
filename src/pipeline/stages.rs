//! How long each stage of a run took: kept in the run's record (`sync_runs.stages`,
//! shown by `status`) and observed by the `followers_etl_stage_duration_seconds`
//! histogram (README, "Observability").

use std::time::Instant;

/// Every stage, in pipeline order: `settle` (waiting for the file to stop changing),
/// `lock` (run lock, recovery, run record), `hash`, `read_and_stage`, `dedupe`, then
/// `merge` (or `plan` for a dry run).
pub const ORDER: &[&str] = &[
    "settle",
    "lock",
    "hash",
    "read_and_stage",
    "dedupe",
    "merge",
    "plan",
];

/// The stages a run went through, with their durations; the stage a run stopped in
/// is timed up to that point.
#[derive(Debug, Default)]
pub struct StageTimes {
    current: Option<(&'static str, Instant)>,
    done: Vec<(&'static str, f64)>,
}

impl StageTimes {
    /// Ends the current stage (if any) and starts `name`.
    pub fn begin(&mut self, name: &'static str) {
        self.end();
        self.current = Some((name, Instant::now()));
    }

    /// Ends the current stage.
    pub fn end(&mut self) {
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
        t.end();
        t.end();
        let json = t.to_json();
        let keys: Vec<_> = json.as_object().unwrap().keys().cloned().collect();
        assert_eq!(keys.len(), 2);
        assert!(json["hash"].as_f64().unwrap() >= 0.0);
        assert!(json["merge"].is_number());
        assert!(["hash", "merge"].iter().all(|s| ORDER.contains(s)));
    }
}
