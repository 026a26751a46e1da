//! The run records (`etl_info_schema.sync_runs`) and the sync status
//! (`etl_info_schema.table_status`): a run is recorded `running` when it starts and
//! finished with its outcome, counts and reason; crashed runs are recovered here.

use crate::config::RunRetention;
use crate::convert::bigint;
use crate::domain::{ContentHash, Counts, LoadId, Outcome, Trigger};
use crate::storage::sync_runs as sync_runs_sql;
use chrono::{NaiveDateTime, Utc};
use entity::{sync_runs, table_status};
use sea_orm::sea_query::OnConflict;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, DbBackend, DbErr, EntityTrait, FromQueryResult,
    QueryFilter, QueryOrder, Set, Statement, Value,
};

/// The table this agent mirrors, as named in `table_status`.
pub(crate) const TARGET_TABLE: &str = "followers";

/// The built-in mirror's name in `sync_runs.mirror` (docs/mirrors.md#runs): every
/// query of the followers path reads only its own runs.
pub(crate) const BUILTIN_MIRROR: &str = "followers";

fn now() -> NaiveDateTime {
    Utc::now().naive_utc()
}

/// A limit (`HISTORY_KEEP_RUNS`, a batch size) as a `bigint` parameter,
/// saturating: a limit beyond `bigint` is no limit. Counts go through
/// `crate::convert::bigint` instead.
/// Removes staging rows of crashed runs and marks their run records failed. Only
/// call it while holding the run lock: then no other run is in flight.
#[tracing::instrument(skip_all, err(level = "debug"))]
pub(crate) async fn recover(db: &impl ConnectionTrait) -> Result<(), DbErr> {
    let orphans = db
        .execute_unprepared(crate::storage::staging_followers::RECOVER)
        .await?;
    let interrupted = sync_runs::Entity::update_many()
        .col_expr(sync_runs::Column::Outcome, Outcome::Failed.as_str().into())
        .col_expr(sync_runs::Column::FinishedAt, now().into())
        .col_expr(
            sync_runs::Column::Error,
            "interrupted: the agent stopped during this run; its staged rows were removed".into(),
        )
        .filter(sync_runs::Column::Outcome.eq("running"))
        .filter(sync_runs::Column::Mirror.eq(BUILTIN_MIRROR))
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

/// Marks the interrupted runs of a configured mirror's table failed (a run
/// recorded `running` whose agent stopped), whatever the mirror was called
/// then: the run lock is the table's (docs/mirrors.md#runs), so a mirror
/// renamed in the configuration recovers its old name's runs. A run recorded
/// before runs kept their table (`table_name` NULL) is recovered by its
/// mirror's name. Only call it while holding the table's run lock; its staging
/// table, named by the table too, is dropped and made anew by each run.
pub(crate) async fn recover_mirror(
    db: &impl ConnectionTrait,
    mirror: &str,
    table: &str,
) -> Result<(), DbErr> {
    let interrupted = db
        .execute(Statement::from_sql_and_values(
            DbBackend::Postgres,
            sync_runs_sql::RECOVER_TABLE,
            [
                Outcome::Failed.as_str().into(),
                now().into(),
                BUILTIN_MIRROR.into(),
                table.into(),
                mirror.into(),
            ],
        ))
        .await?;
    if interrupted.rows_affected() > 0 {
        tracing::warn!(
            interrupted_runs = interrupted.rows_affected(),
            table,
            "recovered from an interrupted run"
        );
    }
    Ok(())
}

/// Records a configured mirror's run as `running`, with its table (what
/// `recover_mirror` finds it by).
pub(crate) async fn start_mirror_run(
    db: &impl ConnectionTrait,
    mirror: &str,
    table: &str,
    load_id: LoadId,
    trigger: Trigger,
    file: &str,
) -> Result<(), DbErr> {
    start_of(db, mirror, load_id, trigger, file, None).await?;
    db.execute(Statement::from_sql_and_values(
        DbBackend::Postgres,
        sync_runs_sql::SET_TABLE,
        [load_id.uuid().into(), table.into()],
    ))
    .await?;
    Ok(())
}

/// Records a run as `running`.
pub(crate) async fn start(
    db: &impl ConnectionTrait,
    load_id: LoadId,
    trigger: Trigger,
    file: &str,
    hash: Option<&ContentHash>,
) -> Result<(), DbErr> {
    start_of(db, BUILTIN_MIRROR, load_id, trigger, file, hash).await
}

/// Records a run of `mirror` as `running`.
pub(crate) async fn start_of(
    db: &impl ConnectionTrait,
    mirror: &str,
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
        journaled: Set(None),
        filled: Set(false),
        reverted_by: Set(None),
        mirror: Set(mirror.into()),
    }
    .insert(db)
    .await?;
    Ok(())
}

/// Finishes a run record with its outcome, counts and reason. Only a `running`
/// record changes: a run the merge recorded `synced` stays so, even if a
/// compensation runs after a COMMIT whose answer was lost.
pub(crate) async fn finish(
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
        rows_read: Set(bigint("rows_read", counts.rows_read)?),
        inserted: Set(bigint("inserted", counts.inserted)?),
        updated: Set(bigint("updated", counts.updated)?),
        deleted: Set(bigint("deleted", counts.deleted)?),
        unchanged: Set(bigint("unchanged", counts.unchanged)?),
        rejected: Set(bigint("rejected", counts.rejected)?),
        duplicates: Set(bigint("duplicates", counts.duplicates)?),
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

/// Keeps what a refused run refused (`sync_runs.refusal_key`), so later runs
/// skip the same content under the same settings (docs/sync.md#refusals-and-approvals).
pub(crate) async fn remember_refusal(
    db: &impl ConnectionTrait,
    load_id: LoadId,
    key: &str,
) -> Result<(), DbErr> {
    set_refusal_key(db, load_id, key, Outcome::Refused.as_str()).await
}

/// Keeps the refusal key on a configured mirror's run while it is still
/// `running` (its record is finished `refused` next): `standing_refusal_of`
/// then finds it (docs/mirrors.md#commands).
pub(crate) async fn mark_refusal(
    db: &impl ConnectionTrait,
    load_id: LoadId,
    key: &str,
) -> Result<(), DbErr> {
    set_refusal_key(db, load_id, key, "running").await
}

/// Sets the run's `refusal_key` while its record's outcome is `outcome`.
async fn set_refusal_key(
    db: &impl ConnectionTrait,
    load_id: LoadId,
    key: &str,
    outcome: &str,
) -> Result<(), DbErr> {
    db.execute(Statement::from_sql_and_values(
        DbBackend::Postgres,
        sync_runs_sql::SET_REFUSAL_KEY,
        [load_id.uuid().into(), key.into(), outcome.into()],
    ))
    .await?;
    Ok(())
}

/// Marks a configured mirror's runs undone by the revert `by` (its own run
/// record), as the built-in mirror's revert marks its runs.
pub(crate) async fn mark_reverted(
    db: &impl ConnectionTrait,
    load_ids: &[uuid::Uuid],
    by: LoadId,
) -> Result<(), DbErr> {
    db.execute(Statement::from_sql_and_values(
        DbBackend::Postgres,
        sync_runs_sql::MARK_UNDONE,
        [by.uuid().into(), load_ids.to_vec().into()],
    ))
    .await?;
    Ok(())
}

/// Records how many journal rows a configured mirror's synced run holds
/// (`sync_runs.journaled`, as the built-in mirror's merge seals its runs; NULL:
/// synced with the journal off), in its merge's transaction.
pub(crate) async fn set_journaled(
    db: &impl ConnectionTrait,
    load_id: LoadId,
    rows: Option<u64>,
) -> Result<(), DbErr> {
    let rows = rows.map(|n| bigint("journaled", n)).transpose()?;
    db.execute(Statement::from_sql_and_values(
        DbBackend::Postgres,
        sync_runs_sql::SET_JOURNALED,
        [load_id.uuid().into(), rows.into()],
    ))
    .await?;
    Ok(())
}

/// A revert's record names the file whose content it holds back and that
/// content's hash (docs/operations.md#after-a-revert).
pub(crate) async fn describe_revert(
    db: &impl ConnectionTrait,
    load_id: LoadId,
    file: &str,
    hash: Option<&str>,
) -> Result<(), DbErr> {
    db.execute(Statement::from_sql_and_values(
        DbBackend::Postgres,
        sync_runs_sql::DESCRIBE,
        [
            load_id.uuid().into(),
            file.into(),
            hash.map(str::to_owned).into(),
        ],
    ))
    .await?;
    Ok(())
}

/// The outcome of `mirror`'s run `load_id` as its record holds it, and the
/// revert that undid it (none: no such run of the mirror).
pub(crate) async fn outcome_of(
    db: &impl ConnectionTrait,
    mirror: &str,
    load_id: uuid::Uuid,
) -> Result<Option<(String, Option<uuid::Uuid>)>, DbErr> {
    let Some(row) = db
        .query_one(Statement::from_sql_and_values(
            DbBackend::Postgres,
            sync_runs_sql::OUTCOME_OF,
            [load_id.into(), mirror.into()],
        ))
        .await?
    else {
        return Ok(None);
    };
    Ok(Some((
        row.try_get("", "outcome")?,
        row.try_get("", "reverted_by")?,
    )))
}

/// The refusal that stands for `key`: the newest decisive run (synced, refused or
/// failed), when it refused with this key. Its load_id and reason.
pub(crate) async fn standing_refusal(
    db: &impl ConnectionTrait,
    key: &str,
) -> Result<Option<(uuid::Uuid, Option<String>)>, DbErr> {
    standing_refusal_of(db, BUILTIN_MIRROR, key).await
}

/// `standing_refusal` among the runs of `mirror`.
pub(crate) async fn standing_refusal_of(
    db: &impl ConnectionTrait,
    mirror: &str,
    key: &str,
) -> Result<Option<(uuid::Uuid, Option<String>)>, DbErr> {
    let Some(row) = db
        .query_one(Statement::from_sql_and_values(
            DbBackend::Postgres,
            sync_runs_sql::STANDING_REFUSAL,
            [key.into(), mirror.into()],
        ))
        .await?
    else {
        return Ok(None);
    };
    if !row.try_get::<bool>("", "stands")? {
        return Ok(None);
    }
    Ok(Some((
        row.try_get("", "load_id")?,
        row.try_get("", "error")?,
    )))
}

/// The content hash of the last successful sync, if any.
pub(crate) async fn last_synced_hash(db: &impl ConnectionTrait) -> Result<Option<String>, DbErr> {
    Ok(table_status::Entity::find()
        .filter(table_status::Column::TableName.eq(TARGET_TABLE))
        .one(db)
        .await?
        .and_then(|s| s.content_hash))
}

/// The file (as `file_identity` gives it) of the last successful sync, if it is
/// known (a `table_status` of the old service has no load).
pub(crate) async fn last_synced_file(db: &impl ConnectionTrait) -> Result<Option<String>, DbErr> {
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
pub(crate) async fn mark_synced(
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
    // The write counter as this sync leaves the table (docs: "Edits outside the agent").
    db.execute_unprepared(crate::storage::table_status::RECORD)
        .await?;
    Ok(())
}

/// Stores a run's per-stage durations (`{"stage": seconds}`) in `sync_runs.stages`.
pub(crate) async fn record_stages(
    db: &impl ConnectionTrait,
    load_id: LoadId,
    stages: &serde_json::Value,
) -> Result<(), DbErr> {
    db.execute(Statement::from_sql_and_values(
        DbBackend::Postgres,
        sync_runs_sql::RECORD_STAGES,
        [stages.to_string().into(), load_id.uuid().into()],
    ))
    .await?;
    Ok(())
}

/// Rows one pruning statement deletes at most: short statements, short row locks.
const PRUNE_BATCH: u64 = 500;

/// Deletes the runs beyond the retention bound (older than `keep_days`, or beyond the
/// newest `keep_runs`), oldest first, `PRUNE_BATCH` rows per statement. Never deletes
/// a `running` run, nor the last successful sync (the newest `synced` run and the run
/// `table_status` names), nor the newest decisive run (a refusal it holds is what
/// later runs skip: docs/sync.md#refusals-and-approvals), nor the run `mirror_status`
/// names. Each mirror keeps its own newest runs (docs/mirrors.md#runs). Returns how
/// many runs it deleted.
#[tracing::instrument(skip(db, bound), err(level = "debug"))]
pub(crate) async fn prune_of(
    db: &impl ConnectionTrait,
    mirror: &str,
    bound: RunRetention,
) -> Result<u64, DbErr> {
    let older_than: Option<NaiveDateTime> = bound
        .keep_days
        .and_then(|days| now().checked_sub_signed(chrono::TimeDelta::try_days(days.into())?));
    // The newest run beyond the count bound: it and every older run go.
    let beyond_count = match bound.keep_runs {
        None => None,
        Some(keep) => db
            .query_one(Statement::from_sql_and_values(
                DbBackend::Postgres,
                sync_runs_sql::BEYOND_COUNT,
                [
                    crate::convert::saturating_bigint(keep).into(),
                    mirror.into(),
                ],
            ))
            .await?
            .map(|row| {
                Ok::<_, DbErr>((
                    row.try_get::<NaiveDateTime>("", "started_at")?,
                    row.try_get::<uuid::Uuid>("", "load_id")?,
                ))
            })
            .transpose()?,
    };
    if older_than.is_none() && beyond_count.is_none() {
        return Ok(0);
    }
    let mut pruned = 0;
    loop {
        // A run's journal rows go with it, in the same statement: a journaled run
        // pruned while an older one is kept (the last successful sync) would
        // otherwise leave them for ever (docs/sync.md#runs-and-their-retention).
        let deleted = db
            .query_one(Statement::from_sql_and_values(
                DbBackend::Postgres,
                sync_runs_sql::PRUNE,
                [
                    older_than.into(),
                    beyond_count.map(|(t, _)| t).into(),
                    beyond_count.map(|(_, id)| id).into(),
                    crate::convert::saturating_bigint(PRUNE_BATCH).into(),
                    mirror.into(),
                ],
            ))
            .await?
            .map(|row| row.try_get::<i64>("", "deleted"))
            .transpose()?
            .map_or(Ok(0), |n| crate::convert::count("runs pruned", n))?;
        pruned += deleted;
        if deleted < PRUNE_BATCH {
            break;
        }
    }
    if pruned > 0 {
        tracing::info!(
            pruned,
            mirror,
            "old runs pruned (HISTORY_KEEP_DAYS, HISTORY_KEEP_RUNS)"
        );
    }
    Ok(pruned)
}

/// How many runs still hold a journal (`sync_runs.journaled` set), for the
/// warning when `JOURNAL_KEEP_RUNS=0` drops them.
pub(crate) async fn journaled_runs(db: &impl ConnectionTrait) -> Result<u64, DbErr> {
    let row = db
        .query_one(Statement::from_string(
            DbBackend::Postgres,
            sync_runs_sql::JOURNALED_RUNS,
        ))
        .await?;
    Ok(row
        .map(|r| r.try_get::<i64>("", "n"))
        .transpose()?
        .map_or(Ok(0), |n| crate::convert::count("journaled runs", n))?)
}

/// `prune_of` the built-in mirror, logging a failure instead of returning it (the next run retries).
pub(crate) async fn prune_or_warn(db: &impl ConnectionTrait, bound: RunRetention) {
    prune_of_or_warn(db, BUILTIN_MIRROR, bound).await;
}

/// `prune_of`, logging a failure instead of returning it (the next run retries).
pub(crate) async fn prune_of_or_warn(db: &impl ConnectionTrait, mirror: &str, bound: RunRetention) {
    if let Err(e) = prune_of(db, mirror, bound).await {
        tracing::warn!(error = %e, "pruning old runs failed; the next run retries");
    }
}

/// A run record with its stage durations (`status`).
#[derive(Clone, Debug, FromQueryResult)]
pub(crate) struct RunRecord {
    #[sea_orm(nested)]
    pub run: sync_runs::Model,
    /// `sync_runs.stages` as JSON text.
    pub stages: Option<String>,
}

impl RunRecord {
    pub(crate) fn counts(&self) -> Counts {
        // For display only: the agent writes these from `u64` counts
        // (`finish`), so 0 stands only for a value edited out of range by hand.
        let u = |n: i64| u64::try_from(n).unwrap_or(0);
        let r = &self.run;
        Counts {
            rows_read: u(r.rows_read),
            inserted: u(r.inserted),
            updated: u(r.updated),
            deleted: u(r.deleted),
            unchanged: u(r.unchanged),
            rejected: u(r.rejected),
            duplicates: u(r.duplicates),
            journaled: r.journaled.map_or(0, u),
        }
    }
}

/// Runs of `mirror` matching `condition` (which may use `$3`, bound to `param`), newest first.
/// Every query here walks an index on `started_at` (or the partial index of decisive
/// runs) from its newest end, so it stays fast however many runs there are.
async fn runs_where(
    db: &impl ConnectionTrait,
    mirror: &str,
    condition: &str,
    param: Option<Value>,
    limit: u64,
) -> Result<Vec<RunRecord>, DbErr> {
    let mut values = vec![
        Value::from(crate::convert::saturating_bigint(limit)),
        Value::from(mirror),
    ];
    values.extend(param);
    RunRecord::find_by_statement(Statement::from_sql_and_values(
        DbBackend::Postgres,
        sync_runs_sql::runs_where(condition),
        values,
    ))
    .all(db)
    .await
}

/// The newest runs, newest first.
pub(crate) async fn recent(
    db: &impl ConnectionTrait,
    mirror: &str,
    limit: u64,
) -> Result<Vec<RunRecord>, DbErr> {
    runs_where(db, mirror, "true", None, limit).await
}

/// The newest successful sync.
pub(crate) async fn last_synced(
    db: &impl ConnectionTrait,
    mirror: &str,
) -> Result<Option<sync_runs::Model>, DbErr> {
    Ok(runs_where(db, mirror, "outcome = 'synced'", None, 1)
        .await?
        .pop()
        .map(|r| r.run))
}

/// The newest run that decided something (not running, skipped or a dry run): when it
/// was refused or failed, that needs an operator.
pub(crate) async fn last_decisive(
    db: &impl ConnectionTrait,
    mirror: &str,
) -> Result<Option<sync_runs::Model>, DbErr> {
    Ok(runs_where(
        db,
        mirror,
        "outcome IN ('synced', 'refused', 'failed')",
        None,
        1,
    )
    .await?
    .pop()
    .map(|r| r.run))
}

/// When the newest cron-triggered run since `since` started.
pub(crate) async fn last_cron_start(
    db: &impl ConnectionTrait,
    mirror: &str,
    since: NaiveDateTime,
) -> Result<Option<NaiveDateTime>, DbErr> {
    Ok(runs_where(
        db,
        mirror,
        "trigger = 'cron' AND started_at > $3",
        Some(since.into()),
        1,
    )
    .await?
    .pop()
    .map(|r| r.run.started_at))
}

pub(crate) async fn table_status(
    db: &impl ConnectionTrait,
) -> Result<Vec<table_status::Model>, DbErr> {
    table_status::Entity::find()
        .order_by_asc(table_status::Column::TableName)
        .all(db)
        .await
}

/// How many followers the mirrored table holds.
pub(crate) async fn follower_count(db: &impl ConnectionTrait) -> Result<i64, DbErr> {
    let row = db
        .query_one(Statement::from_string(
            DbBackend::Postgres,
            crate::storage::followers::COUNT,
        ))
        .await?
        .ok_or_else(|| DbErr::RecordNotFound("count(*)".into()))?;
    row.try_get("", "n")
}

/// The revert the table is on, when the last change of `followers` was a
/// revert (its `file` is the one held back).
pub(crate) async fn reverted_state(
    db: &impl ConnectionTrait,
) -> Result<Option<sync_runs::Model>, DbErr> {
    let Some(load_id) = table_status::Entity::find()
        .filter(table_status::Column::TableName.eq(TARGET_TABLE))
        .one(db)
        .await?
        .and_then(|s| s.load_id)
    else {
        return Ok(None);
    };
    sync_runs::Entity::find_by_id(load_id)
        .filter(sync_runs::Column::Trigger.eq(Trigger::Revert.as_str()))
        .one(db)
        .await
}

/// The reverted state as JSON (`status --json`, key `reverted`).
pub(crate) fn reverted_json(r: &sync_runs::Model) -> serde_json::Value {
    serde_json::json!({
        "load_id": r.load_id,
        "at": r
            .finished_at
            .unwrap_or(r.started_at)
            .and_utc()
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "held_back_file": r.file,
        "content_hash": r.content_hash,
    })
}
