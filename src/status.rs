//! `followers-etl status`: what an operator needs at a glance (docs/operations.md#status):
//! the follower count, the last successful sync and how long ago, the next scheduled
//! run, the last run with its per-stage durations, a refused or failed last run with
//! its reason, then `table_status` and the newest runs. The same report is printed
//! as text or, derived with serde, as one JSON object. Every time is UTC, RFC 3339.

use crate::config::Settings;
use crate::domain::Counts;
use crate::domain::Stage;
use crate::pipeline::drift::{self, Drift};
use crate::runs::{self, RunRecord};
use chrono::{DateTime, NaiveDateTime, SecondsFormat, Utc};
use entity::table_status;
use sea_orm::{ConnectionTrait, DbErr};
use serde::{Serialize, Serializer};
use std::fmt::Write;
use strum::IntoEnumIterator;

/// A point in time, shown as UTC RFC 3339 with milliseconds (`2026-11-30T15:04:05.123Z`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Utc3339(pub DateTime<Utc>);

impl Utc3339 {
    fn from_naive(t: NaiveDateTime) -> Self {
        Self(t.and_utc())
    }
}

impl std::fmt::Display for Utc3339 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0.to_rfc3339_opts(SecondsFormat::Millis, true))
    }
}

impl Serialize for Utc3339 {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[derive(Debug, Serialize)]
pub(crate) struct StatusReport {
    /// When the report was made.
    pub now: Utc3339,
    /// Rows in `public.followers`.
    pub followers: i64,
    pub last_success: Option<LastSuccess>,
    /// `CRON_SCHEDULE` as this process reads it.
    pub schedule: String,
    /// The next cron activation (for `@every`, counted from the last cron run if the
    /// agent is still on that beat, else from now); `None` if it never fires.
    pub next_run: Option<Utc3339>,
    /// The newest run, whatever its outcome.
    pub last_run: Option<RunView>,
    /// Set when the newest run that synced, was refused or failed was refused or
    /// failed: `"refused: <reason>"`.
    pub attention: Option<String>,
    /// Set when the table is on a reverted state: the revert's `load_id`, `at`,
    /// and the `held_back_file` (docs/operations.md#after-a-revert).
    pub reverted: Option<serde_json::Value>,
    /// Whether `followers` is still what the last sync or revert left (docs/sync.md#edits-outside-the-agent); null when it cannot be read (not migrated).
    pub drift: Option<Drift>,
    pub table_status: Vec<TableView>,
    /// The newest runs (`--limit`), newest first.
    pub runs: Vec<RunView>,
}

#[derive(Debug, Serialize)]
pub(crate) struct LastSuccess {
    pub load_id: Option<uuid::Uuid>,
    pub at: Utc3339,
    pub ago_seconds: i64,
    pub file: Option<String>,
    /// The revert that undid this sync (the table is then on a reverted state).
    pub reverted_by: Option<uuid::Uuid>,
}

#[derive(Debug, Serialize)]
pub(crate) struct RunView {
    pub load_id: uuid::Uuid,
    pub trigger: String,
    pub file: String,
    pub content_hash: Option<String>,
    pub started_at: Utc3339,
    pub finished_at: Option<Utc3339>,
    pub outcome: String,
    #[serde(flatten)]
    pub counts: Counts,
    /// Why the run was skipped, refused or failed (or what a dry run would do).
    pub reason: Option<String>,
    /// Seconds per stage, in pipeline order (`Stage`: `ready`, `settle`, `lock`,
    /// `hash`, `read_and_stage`, `dedupe`, `merge` and its steps, or `plan`); only
    /// the stages the run reached.
    pub stages: StageDurations,
}

/// Stage name → seconds, serialised as a JSON object in pipeline order.
#[derive(Debug, Default)]
pub(crate) struct StageDurations(pub Vec<(String, f64)>);

impl StageDurations {
    /// From `sync_runs.stages`: known stages in pipeline order, then any other.
    fn from_recorded(text: Option<&str>) -> Self {
        let recorded: serde_json::Map<String, serde_json::Value> = text
            .and_then(|text| serde_json::from_str(text).ok())
            .unwrap_or_default();
        let rank = |name: &str| {
            Stage::iter()
                .position(|s| s.as_str() == name)
                .unwrap_or(usize::MAX)
        };
        let mut all: Vec<(String, f64)> = recorded
            .into_iter()
            .filter_map(|(name, v)| Some((name, v.as_f64()?)))
            .collect();
        all.sort_by_key(|(name, _)| rank(name));
        Self(all)
    }
}

impl Serialize for StageDurations {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.0.iter().map(|(name, seconds)| (name, seconds)))
    }
}

impl From<&RunRecord> for RunView {
    fn from(record: &RunRecord) -> Self {
        let r = &record.run;
        Self {
            load_id: r.load_id,
            trigger: r.trigger.clone(),
            file: r.file.clone(),
            content_hash: r.content_hash.clone(),
            started_at: Utc3339::from_naive(r.started_at),
            finished_at: r.finished_at.map(Utc3339::from_naive),
            outcome: r.outcome.clone(),
            counts: record.counts(),
            reason: r.error.clone(),
            stages: StageDurations::from_recorded(record.stages.as_deref()),
        }
    }
}

#[derive(Debug, Serialize)]
pub(crate) struct TableView {
    pub table_name: String,
    pub last_activity: Option<Utc3339>,
    pub content_hash: Option<String>,
    pub load_id: Option<uuid::Uuid>,
}

impl From<&table_status::Model> for TableView {
    fn from(t: &table_status::Model) -> Self {
        Self {
            table_name: t.table_name.clone(),
            last_activity: t.last_activity.map(Utc3339::from_naive),
            content_hash: t.content_hash.clone(),
            load_id: t.load_id,
        }
    }
}

/// Reads everything the report shows (a handful of indexed queries).
pub(crate) async fn report(
    db: &impl ConnectionTrait,
    settings: &Settings,
    limit: u64,
) -> Result<StatusReport, DbErr> {
    let now = Utc::now();
    let schedule = &settings.triggers.cron_schedule;
    let from_now = schedule.next_after(now);
    // Only a cron run within the last interval can still set the beat of `@every`.
    let beat_since = now - from_now.map_or(chrono::TimeDelta::zero(), |next| next - now);
    let (followers, synced, decisive, recent, tables, last_cron, reverted) = tokio::try_join!(
        runs::follower_count(db),
        runs::last_synced(db, runs::BUILTIN_MIRROR),
        runs::last_decisive(db, runs::BUILTIN_MIRROR),
        runs::recent(db, runs::BUILTIN_MIRROR, limit.max(1)),
        runs::table_status(db),
        runs::last_cron_start(db, runs::BUILTIN_MIRROR, beat_since.naive_utc()),
        runs::reverted_state(db),
    )?;
    let drift = drift::check(db, settings.triggers.verify_every).await.ok();
    let tables: Vec<TableView> = tables.iter().map(TableView::from).collect();
    // Runs from before this agent (or pruned) may leave only table_status.
    let last_success = match &synced {
        Some(r) => Some((
            Some(r.load_id),
            r.finished_at.unwrap_or(r.started_at).and_utc(),
            Some(r.file.clone()),
            r.reverted_by,
        )),
        None => tables
            .iter()
            .find(|t| t.table_name == runs::TARGET_TABLE)
            .and_then(|t| Some((t.load_id, t.last_activity?.0, None, None))),
    }
    .map(|(load_id, at, file, reverted_by)| LastSuccess {
        load_id,
        at: Utc3339(at),
        ago_seconds: (now - at).num_seconds().max(0),
        file,
        reverted_by,
    });
    let next_run = last_cron
        .and_then(|t| schedule.next_after(t.and_utc()))
        .filter(|t| *t > now)
        .or(from_now)
        .map(Utc3339);
    let attention = decisive
        .filter(|r| matches!(r.outcome.as_str(), "refused" | "failed"))
        .map(|r| {
            format!(
                "{}: {}",
                r.outcome,
                r.error.as_deref().unwrap_or("no reason recorded")
            )
        });
    let last_run = recent.first().map(RunView::from);
    let shown = usize::try_from(limit).unwrap_or(usize::MAX);
    let runs: Vec<RunView> = recent.iter().take(shown).map(RunView::from).collect();
    Ok(StatusReport {
        now: Utc3339(now),
        followers,
        last_success,
        schedule: settings.triggers.cron_schedule.to_string(),
        next_run,
        last_run,
        attention,
        reverted: reverted.as_ref().map(runs::reverted_json),
        drift,
        table_status: tables,
        runs,
    })
}

/// The status of a configured mirror (docs/mirrors.md#commands): its table's
/// rows, last success, next run, last run, a refusal or failure to attend to,
/// and its newest runs, as the built-in mirror's report shows them.
#[derive(Debug, Serialize)]
pub(crate) struct MirrorStatus {
    pub mirror: String,
    pub table: String,
    /// Rows in the table; null before its first run created it.
    pub rows: Option<i64>,
    pub last_success: Option<LastSuccess>,
    /// The mirror's `schedule`, else `CRON_SCHEDULE`.
    pub schedule: String,
    pub next_run: Option<Utc3339>,
    pub last_run: Option<RunView>,
    pub attention: Option<String>,
    pub runs: Vec<RunView>,
}

/// Reads a configured mirror's status (a handful of indexed queries).
pub(crate) async fn mirror_report(
    db: &impl ConnectionTrait,
    settings: &Settings,
    spec: &crate::mirror::MirrorSpec,
    limit: u64,
) -> Result<MirrorStatus, DbErr> {
    let now = Utc::now();
    let mirror = spec.name.as_str();
    let schedule = spec
        .schedule
        .as_ref()
        .unwrap_or(&settings.triggers.cron_schedule);
    let (synced, decisive, recent) = tokio::try_join!(
        runs::last_synced(db, mirror),
        runs::last_decisive(db, mirror),
        runs::recent(db, mirror, limit.max(1)),
    )?;
    let count = crate::storage::mirror::MirrorSql::new(spec).row_count();
    let rows = match db
        .query_one(sea_orm::Statement::from_string(
            sea_orm::DbBackend::Postgres,
            count,
        ))
        .await
    {
        Ok(row) => row.map(|r| r.try_get_by_index::<i64>(0)).transpose()?,
        // Not created yet (its first run creates it).
        Err(e) if crate::pipeline::merge::sqlstate(&e).as_deref() == Some("42P01") => None,
        Err(e) => return Err(e),
    };
    let last_success = synced.map(|r| {
        let at = r.finished_at.unwrap_or(r.started_at).and_utc();
        LastSuccess {
            load_id: Some(r.load_id),
            at: Utc3339(at),
            ago_seconds: (now - at).num_seconds().max(0),
            file: Some(r.file),
            reverted_by: r.reverted_by,
        }
    });
    let shown = usize::try_from(limit).unwrap_or(usize::MAX);
    Ok(MirrorStatus {
        mirror: mirror.to_owned(),
        table: spec.table.to_string(),
        rows,
        last_success,
        schedule: schedule.to_string(),
        next_run: schedule.next_after(now).map(Utc3339),
        last_run: recent.first().map(RunView::from),
        attention: attention(decisive),
        runs: recent.iter().take(shown).map(RunView::from).collect(),
    })
}

/// "refused: <reason>" when the newest decisive run was refused or failed.
fn attention(decisive: Option<entity::sync_runs::Model>) -> Option<String> {
    decisive
        .filter(|r| matches!(r.outcome.as_str(), "refused" | "failed"))
        .map(|r| {
            format!(
                "{}: {}",
                r.outcome,
                r.error.as_deref().unwrap_or("no reason recorded")
            )
        })
}

impl MirrorStatus {
    /// The status as text: a heading naming the mirror and its table, then the
    /// lines of the built-in mirror's report that apply.
    pub(crate) fn to_text(&self) -> String {
        let mut out = String::new();
        let _ = self.write_text(&mut out);
        out
    }

    fn write_text(&self, out: &mut String) -> std::fmt::Result {
        writeln!(out, "mirror {} ({})", self.mirror, self.table)?;
        match self.rows {
            Some(n) => writeln!(out, "rows:          {n}")?,
            None => writeln!(
                out,
                "rows:          none (the table is created by the first sync that merges)"
            )?,
        }
        write_last_success(out, self.last_success.as_ref())?;
        write_next_run(out, self.next_run.as_ref(), &self.schedule, Utc::now())?;
        write_last_run(out, self.last_run.as_ref())?;
        if let Some(attention) = &self.attention {
            writeln!(out, "!! ATTENTION:  last decisive run {attention}")?;
        }
        write_runs(out, &self.runs)
    }
}

/// "3d 4h", "2h 5m", "4m 10s", "12s".
fn human(seconds: i64) -> String {
    let (d, h, m, s) = (
        seconds / 86_400,
        seconds % 86_400 / 3600,
        seconds % 3600 / 60,
        seconds % 60,
    );
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m {s}s"),
        (0, _, _) => format!("{h}h {m}m"),
        _ => format!("{d}d {h}h"),
    }
}

fn stages_text(stages: &StageDurations) -> String {
    stages
        .0
        .iter()
        .map(|(name, s)| format!("{name} {s:.3}s"))
        .collect::<Vec<_>>()
        .join(", ")
}

impl StatusReport {
    /// The report as text: a summary block, `table_status`, then one line per run.
    pub(crate) fn to_text(&self) -> String {
        let mut out = String::new();
        let _ = self.write_text(&mut out);
        out
    }

    fn write_text(&self, out: &mut String) -> std::fmt::Result {
        writeln!(out, "followers:     {}", self.followers)?;
        write_last_success(out, self.last_success.as_ref())?;
        write_next_run(out, self.next_run.as_ref(), &self.schedule, self.now.0)?;
        if let Some(r) = &self.reverted {
            writeln!(
                out,
                "reverted:      revert {} at {}; {} is held back until it changes (or sync --force)",
                r["load_id"].as_str().unwrap_or_default(),
                r["at"].as_str().unwrap_or_default(),
                r["held_back_file"].as_str().unwrap_or_default()
            )?;
        }
        write_last_run(out, self.last_run.as_ref())?;
        if let Some(d) = self.drift.and_then(Drift::describe) {
            let flag = if self.drift.is_some_and(Drift::needs_sync) {
                "!! "
            } else {
                ""
            };
            writeln!(out, "drift:         {flag}{d}")?;
        }
        if let Some(attention) = &self.attention {
            writeln!(out, "!! ATTENTION:  last decisive run {attention}")?;
        }
        writeln!(out, "(times are UTC, RFC 3339)")?;
        writeln!(out, "table_status:")?;
        for t in &self.table_status {
            writeln!(
                out,
                "  {} last_activity={} load_id={}",
                t.table_name,
                t.last_activity
                    .map(|t| t.to_string())
                    .unwrap_or_else(|| "never".into()),
                t.load_id.map(|l| l.to_string()).unwrap_or_default()
            )?;
        }
        write_runs(out, &self.runs)
    }
}

fn write_last_success(out: &mut String, last_success: Option<&LastSuccess>) -> std::fmt::Result {
    match last_success {
        Some(s) => writeln!(
            out,
            "last success:  {} ({} ago){}{}",
            s.at,
            human(s.ago_seconds),
            s.load_id
                .map(|l| format!(" load_id={l}"))
                .unwrap_or_default(),
            s.reverted_by
                .map(|r| format!(", reverted by {r}"))
                .unwrap_or_default()
        )?,
        None => writeln!(out, "last success:  never")?,
    }
    Ok(())
}

fn write_next_run(
    out: &mut String,
    next_run: Option<&Utc3339>,
    schedule: &str,
    now: DateTime<Utc>,
) -> std::fmt::Result {
    match next_run {
        Some(t) => writeln!(
            out,
            "next run:      {} (in {}; CRON_SCHEDULE={:?})",
            t,
            human((t.0 - now).num_seconds().max(0)),
            schedule
        )?,
        None => writeln!(
            out,
            "next run:      never (CRON_SCHEDULE={:?} never fires)",
            schedule
        )?,
    }
    Ok(())
}

fn write_last_run(out: &mut String, last_run: Option<&RunView>) -> std::fmt::Result {
    match last_run {
        Some(r) => {
            let flagged = matches!(r.outcome.as_str(), "refused" | "failed");
            writeln!(
                out,
                "last run:      {}{} {} trigger={} load_id={}",
                if flagged { "!! " } else { "" },
                if flagged {
                    r.outcome.to_uppercase()
                } else {
                    r.outcome.clone()
                },
                r.started_at,
                r.trigger,
                r.load_id
            )?;
            if !r.stages.0.is_empty() {
                writeln!(out, "  stages:      {}", stages_text(&r.stages))?;
            }
        }
        None => writeln!(out, "last run:      none")?,
    }
    Ok(())
}

fn write_runs(out: &mut String, runs: &[RunView]) -> std::fmt::Result {
    writeln!(out, "runs (newest first):")?;
    for r in runs {
        let c = &r.counts;
        writeln!(
            out,
            "  {} {} {:<8} {:<7} rows_read={} inserted={} updated={} deleted={} unchanged={} rejected={} duplicates={}{}",
            r.started_at,
            r.load_id,
            r.outcome,
            r.trigger,
            c.rows_read,
            c.inserted,
            c.updated,
            c.deleted,
            c.unchanged,
            c.rejected,
            c.duplicates,
            r.reason.as_deref().map(|e| format!(" reason={e:?}")).unwrap_or_default()
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_at_a_glance() {
        assert_eq!(human(12), "12s");
        assert_eq!(human(250), "4m 10s");
        assert_eq!(human(7500), "2h 5m");
        assert_eq!(human(3 * 86_400 + 4 * 3600 + 59), "3d 4h");
    }

    #[test]
    fn stages_keep_pipeline_order_in_text_and_json() {
        let s = StageDurations::from_recorded(Some(
            r#"{"merge": 0.5, "hash": 0.01, "lock": 0.002, "read_and_stage": 2, "later": 1}"#,
        ));
        assert_eq!(
            stages_text(&s),
            "lock 0.002s, hash 0.010s, read_and_stage 2.000s, merge 0.500s, later 1.000s"
        );
        assert_eq!(
            serde_json::to_string(&s).unwrap(),
            r#"{"lock":0.002,"hash":0.01,"read_and_stage":2.0,"merge":0.5,"later":1.0}"#
        );
    }

    #[test]
    fn ready_comes_before_settle_and_lock() {
        let s = StageDurations::from_recorded(Some(
            r#"{"lock": 0.002, "settle": 1, "ready": 0.5, "merge.diff": 0.1, "merge": 0.3}"#,
        ));
        assert_eq!(
            stages_text(&s),
            "ready 0.500s, settle 1.000s, lock 0.002s, merge 0.300s, merge.diff 0.100s"
        );
    }

    #[test]
    fn times_are_utc_rfc3339_with_z() {
        let t = NaiveDateTime::parse_from_str("2026-11-30 15:04:05.123456", "%Y-%m-%d %H:%M:%S%.f")
            .unwrap();
        let t = Utc3339::from_naive(t);
        assert_eq!(t.to_string(), "2026-11-30T15:04:05.123Z");
        assert_eq!(serde_json::to_value(t).unwrap(), "2026-11-30T15:04:05.123Z");
    }
}
