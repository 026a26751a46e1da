//! The run history (`etl_info_schema.sync_runs`) and the sync status
//! (`etl_info_schema.table_status`): a run is recorded `running` when it starts and
//! finished with its outcome, counts and reason; crashed runs are recovered here.

use crate::domain::{ContentHash, LoadId};
use chrono::{NaiveDateTime, Utc};
use entity::{sync_runs, table_status};
use sea_orm::sea_query::OnConflict;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, DbErr, EntityTrait, QueryFilter, QueryOrder,
    QuerySelect, Set,
};
use serde::Serialize;
use std::fmt;

/// The table this agent mirrors, as named in `table_status`.
pub const TARGET_TABLE: &str = "followers";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Synced,
    Skipped,
    Refused,
    Failed,
    DryRun,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Synced => "synced",
            Self::Skipped => "skipped",
            Self::Refused => "refused",
            Self::Failed => "failed",
            Self::DryRun => "dry_run",
        }
    }

    /// `sync`'s exit status for this outcome (SPEC §3).
    pub fn exit_code(self) -> u8 {
        match self {
            Self::Synced | Self::Skipped | Self::DryRun => 0,
            Self::Refused | Self::Failed => 1,
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Trigger {
    Cron,
    Watch,
    Start,
    Manual,
}

impl Trigger {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Cron => "cron",
            Self::Watch => "watch",
            Self::Start => "start",
            Self::Manual => "manual",
        }
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
}

fn now() -> NaiveDateTime {
    Utc::now().naive_utc()
}

fn i(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Removes staging rows of crashed runs and marks their run records failed. Only
/// call it while holding the run lock: then no other run is in flight.
#[tracing::instrument(skip_all, err)]
pub async fn recover(db: &impl ConnectionTrait) -> Result<(), DbErr> {
    let orphans = db
        .execute_unprepared("DELETE FROM public.staging_followers")
        .await?;
    let interrupted = sync_runs::Entity::update_many()
        .col_expr(sync_runs::Column::Outcome, Outcome::Failed.as_str().into())
        .col_expr(sync_runs::Column::FinishedAt, now().into())
        .col_expr(
            sync_runs::Column::Error,
            "interrupted: the agent stopped during this run; its staged rows were removed".into(),
        )
        .filter(sync_runs::Column::Outcome.eq("running"))
        .exec(db)
        .await?;
    if orphans.rows_affected() > 0 || interrupted.rows_affected > 0 {
        tracing::warn!(
            orphaned_staging_rows = orphans.rows_affected(),
            interrupted_runs = interrupted.rows_affected,
            "recovered from an interrupted run"
        );
    }
    Ok(())
}

/// Records a run as `running`.
pub async fn start(
    db: &impl ConnectionTrait,
    load_id: LoadId,
    trigger: Trigger,
    file: &str,
    hash: Option<&ContentHash>,
) -> Result<(), DbErr> {
    sync_runs::ActiveModel {
        load_id: Set(load_id.uuid()),
        trigger: Set(trigger.as_str().into()),
        file: Set(file.into()),
        content_hash: Set(hash.map(|h| h.to_string())),
        started_at: Set(now()),
        finished_at: Set(None),
        outcome: Set("running".into()),
        rows_read: Set(0),
        inserted: Set(0),
        updated: Set(0),
        deleted: Set(0),
        unchanged: Set(0),
        rejected: Set(0),
        duplicates: Set(0),
        error: Set(None),
    }
    .insert(db)
    .await?;
    Ok(())
}

/// Finishes a run record with its outcome, counts and reason. Only a `running`
/// record changes: a run the merge recorded `synced` stays so, even if a
/// compensation runs after a COMMIT whose answer was lost.
pub async fn finish(
    db: &impl ConnectionTrait,
    load_id: LoadId,
    outcome: Outcome,
    counts: &Counts,
    error: Option<&str>,
    hash: Option<&ContentHash>,
) -> Result<(), DbErr> {
    let mut record = sync_runs::ActiveModel {
        finished_at: Set(Some(now())),
        outcome: Set(outcome.as_str().into()),
        rows_read: Set(i(counts.rows_read)),
        inserted: Set(i(counts.inserted)),
        updated: Set(i(counts.updated)),
        deleted: Set(i(counts.deleted)),
        unchanged: Set(i(counts.unchanged)),
        rejected: Set(i(counts.rejected)),
        duplicates: Set(i(counts.duplicates)),
        error: Set(error.map(str::to_owned)),
        ..Default::default()
    };
    if let Some(hash) = hash {
        record.content_hash = Set(Some(hash.to_string()));
    }
    sync_runs::Entity::update_many()
        .set(record)
        .filter(sync_runs::Column::LoadId.eq(load_id.uuid()))
        .filter(sync_runs::Column::Outcome.eq("running"))
        .exec(db)
        .await?;
    Ok(())
}

/// The content hash of the last successful sync, if any.
pub async fn last_synced_hash(db: &impl ConnectionTrait) -> Result<Option<String>, DbErr> {
    Ok(table_status::Entity::find()
        .filter(table_status::Column::TableName.eq(TARGET_TABLE))
        .one(db)
        .await?
        .and_then(|s| s.content_hash))
}

/// The file (as `file_identity` gives it) of the last successful sync, if it is
/// known (a `table_status` of the old service has no load).
pub async fn last_synced_file(db: &impl ConnectionTrait) -> Result<Option<String>, DbErr> {
    let load = table_status::Entity::find()
        .filter(table_status::Column::TableName.eq(TARGET_TABLE))
        .one(db)
        .await?
        .and_then(|s| s.load_id);
    let Some(load) = load else {
        return Ok(None);
    };
    Ok(sync_runs::Entity::find_by_id(load)
        .one(db)
        .await?
        .map(|run| run.file))
}

/// Marks a successful sync in `table_status` (one row per target table).
pub async fn mark_synced(
    db: &impl ConnectionTrait,
    load_id: LoadId,
    hash: &ContentHash,
) -> Result<(), DbErr> {
    table_status::Entity::insert(table_status::ActiveModel {
        table_name: Set(TARGET_TABLE.into()),
        last_activity: Set(Some(now())),
        content_hash: Set(Some(hash.to_string())),
        load_id: Set(Some(load_id.uuid())),
        ..Default::default()
    })
    .on_conflict(
        OnConflict::column(table_status::Column::TableName)
            .update_columns([
                table_status::Column::LastActivity,
                table_status::Column::ContentHash,
                table_status::Column::LoadId,
            ])
            .to_owned(),
    )
    .exec(db)
    .await?;
    Ok(())
}

/// The newest runs, newest first.
pub async fn recent(db: &impl ConnectionTrait, limit: u64) -> Result<Vec<sync_runs::Model>, DbErr> {
    sync_runs::Entity::find()
        .order_by_desc(sync_runs::Column::StartedAt)
        .limit(limit)
        .all(db)
        .await
}

pub async fn table_status(db: &impl ConnectionTrait) -> Result<Vec<table_status::Model>, DbErr> {
    table_status::Entity::find()
        .order_by_asc(table_status::Column::TableName)
        .all(db)
        .await
}

/// A run record as JSON (`status --json`).
pub fn run_json(r: &sync_runs::Model) -> serde_json::Value {
    serde_json::json!({
        "load_id": r.load_id,
        "trigger": r.trigger,
        "file": r.file,
        "content_hash": r.content_hash,
        "started_at": r.started_at.and_utc().to_rfc3339(),
        "finished_at": r.finished_at.map(|t| t.and_utc().to_rfc3339()),
        "outcome": r.outcome,
        "rows_read": r.rows_read,
        "inserted": r.inserted,
        "updated": r.updated,
        "deleted": r.deleted,
        "unchanged": r.unchanged,
        "rejected": r.rejected,
        "duplicates": r.duplicates,
        "error": r.error,
    })
}

/// A `table_status` row as JSON (`status --json`).
pub fn status_json(t: &table_status::Model) -> serde_json::Value {
    serde_json::json!({
        "table_name": t.table_name,
        "last_activity": t.last_activity.map(|t| t.and_utc().to_rfc3339()),
        "content_hash": t.content_hash,
        "load_id": t.load_id,
    })
}
