//! The metrics every run records (docs/operations.md#metrics): their names, their
//! help texts and the recording. `http.rs` only exports them.

use crate::convert::approx_signed;
use crate::domain::{Counts, Outcome, Stage};
use metrics::Unit;
use std::time::Duration;

/// Metric names (docs/operations.md#metrics).
pub(crate) const RUNS_TOTAL: &str = "followers_etl_runs_total";
pub(crate) const ROWS_TOTAL: &str = "followers_etl_rows_total";
pub(crate) const RUN_DURATION: &str = "followers_etl_run_duration_seconds";
pub(crate) const STAGE_DURATION: &str = "followers_etl_stage_duration_seconds";
pub(crate) const RUN_IN_PROGRESS: &str = "followers_etl_run_in_progress";
pub(crate) const LAST_SUCCESS: &str = "followers_etl_last_success_timestamp_seconds";
pub(crate) const FOLLOWERS: &str = "followers_etl_followers";
pub(crate) const REFUSED: &str = "followers_etl_refused";

/// Histogram buckets of run and stage durations, in seconds: from a skipped run
/// (milliseconds) to a large file (tens of minutes).
pub(crate) const DURATION_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
    1800.0,
];

/// Gives every metric its HELP and TYPE lines; call once the recorder is installed.
/// `mirrors`: the label of each running mirror's series (`None`: the built-in
/// one's, without mirrors), whose gauges start at 0.
pub(crate) fn describe(mirrors: &[Option<&str>]) {
    metrics::describe_counter!(
        RUNS_TOTAL,
        Unit::Count,
        "Sync runs finished, by outcome (synced, skipped, refused, failed, dry_run)."
    );
    metrics::describe_counter!(ROWS_TOTAL, Unit::Count, "Rows handled by successful syncs, by action (read, inserted, updated, deleted, unchanged, rejected, duplicate).");
    metrics::describe_histogram!(
        RUN_DURATION,
        Unit::Seconds,
        "Duration of sync runs, by outcome."
    );
    metrics::describe_histogram!(STAGE_DURATION, Unit::Seconds, stage_help());
    metrics::describe_gauge!(
        RUN_IN_PROGRESS,
        "1 while a sync run is in progress, else 0."
    );
    metrics::describe_gauge!(
        LAST_SUCCESS,
        Unit::Seconds,
        "Unix time this process last confirmed followers mirror the file: a synced run, or one skipped because the file is unchanged."
    );
    metrics::describe_gauge!(
        FOLLOWERS,
        Unit::Count,
        "Rows in public.followers, counted at scrape."
    );
    metrics::describe_gauge!(
        REFUSED,
        "1 after a refused run (or one skipped because its content was refused earlier) until a run confirms followers mirror the file, else 0."
    );
    for &mirror in mirrors {
        metrics::gauge!(RUN_IN_PROGRESS, labels(mirror, &[])).set(0.0);
        metrics::gauge!(REFUSED, labels(mirror, &[])).set(0.0);
    }
}

/// The labels of one series: `pairs`, then `mirror` when given. A run's mirror
/// is given only once `[[mirror]]` tables are configured, so an agent without
/// them exports exactly the series it always has (docs/mirrors.md#metrics-and-logs).
fn labels(mirror: Option<&str>, pairs: &[(&'static str, &str)]) -> Vec<metrics::Label> {
    let mut labels: Vec<metrics::Label> = pairs
        .iter()
        .map(|(k, v)| metrics::Label::new(*k, v.to_string()))
        .collect();
    if let Some(mirror) = mirror {
        labels.push(metrics::Label::new("mirror", mirror.to_owned()));
    }
    labels
}

/// The file stands refused (docs/sync.md#remembered-refusals): refused now, or
/// skipped because its content was refused earlier.
pub(crate) fn record_refused(mirror: Option<&str>) {
    metrics::gauge!(REFUSED, labels(mirror, &[])).set(1.0);
}

/// A run started: the in-progress gauge goes to 1 until `record_run`.
pub(crate) fn record_run_started(mirror: Option<&str>) {
    metrics::gauge!(RUN_IN_PROGRESS, labels(mirror, &[])).set(1.0);
}

/// Records what a run did; a no-op while no recorder is installed.
pub(crate) fn record_run(
    mirror: Option<&str>,
    outcome: Outcome,
    counts: &Counts,
    duration: Duration,
) {
    let outcome_label = [("outcome", outcome.as_str())];
    metrics::gauge!(RUN_IN_PROGRESS, labels(mirror, &[])).set(0.0);
    metrics::counter!(RUNS_TOTAL, labels(mirror, &outcome_label)).increment(1);
    metrics::histogram!(RUN_DURATION, labels(mirror, &outcome_label))
        .record(duration.as_secs_f64());
    if outcome == Outcome::Synced {
        let c = counts;
        for (action, n) in [
            ("read", c.rows_read),
            ("inserted", c.inserted),
            ("updated", c.updated),
            ("deleted", c.deleted),
            ("unchanged", c.unchanged),
            ("rejected", c.rejected),
            ("duplicate", c.duplicates),
        ] {
            metrics::counter!(ROWS_TOTAL, labels(mirror, &[("action", action)])).increment(n);
        }
        record_in_sync(mirror);
    }
}

/// The table was just confirmed a mirror of the file: synced, or skipped because the
/// file is unchanged since the last successful sync.
pub(crate) fn record_in_sync(mirror: Option<&str>) {
    metrics::gauge!(LAST_SUCCESS, labels(mirror, &[]))
        .set(approx_signed(chrono::Utc::now().timestamp()));
    metrics::gauge!(REFUSED, labels(mirror, &[])).set(0.0);
}

/// The stage histogram's help: its `stage` labels, in pipeline order.
fn stage_help() -> String {
    let stages: Vec<&str> = Stage::stages().map(Stage::as_str).collect();
    format!("Duration of each stage of a run ({}).", stages.join(", "))
}

/// Records how long one stage of a run took.
pub(crate) fn record_stage(mirror: Option<&str>, stage: Stage, seconds: f64) {
    metrics::histogram!(STAGE_DURATION, labels(mirror, &[("stage", stage.as_str())]))
        .record(seconds);
}

/// The rows of the built-in mirror's `public.followers`, counted at a scrape
/// (labelled `mirror="followers"` once mirrors are configured; a configured
/// mirror's rows are in `status`, not in a gauge).
pub(crate) fn record_followers(mirror: Option<&str>, count: i64) {
    metrics::gauge!(FOLLOWERS, labels(mirror, &[])).set(approx_signed(count));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stage_help_names_every_label_in_pipeline_order() {
        assert_eq!(
            stage_help(),
            "Duration of each stage of a run (ready, settle, lock, hash, read_and_stage, dedupe, merge, plan)."
        );
    }
}
