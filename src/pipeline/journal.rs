//! The journal (`etl_info_schema.sync_journal`, docs/operations.md#journal): what a run changed in `followers`, one row per changed follower,
//! written by the same statement that makes the change (a data-modifying CTE), so
//! unchanged rows cost nothing and the journal commits or rolls back with the
//! merge. Every statement here is set-based; `merge.rs` and `revert.rs` call them.
//!
//! | action   | a sync wrote it for          | columns set                          |
//! |----------|------------------------------|--------------------------------------|
//! | `insert` | a new follower               | email                                |
//! | `update` | a renamed follower           | email, old/new name, old modified_at |
//! | `delete` | a deleted follower           | email, old name, old modified_at     |

use crate::config::JournalRetention;
use crate::domain::LoadId;
use chrono::NaiveDateTime;
use sea_orm::{
    ConnectionTrait, DatabaseConnection, DbBackend, DbErr, Statement, TransactionTrait, Value,
};
use serde::Serialize;
use uuid::Uuid;

const JOURNAL: &str = "etl_info_schema.sync_journal";

/// `merge`'s update step, journaled: the rows `diff` found renamed, with the
/// old name and `modified_at` it read (`$1` the load, `$2` the zone of `modified_at`).
pub const UPDATE: &str = "WITH changed AS (
  UPDATE public.followers f
     SET full_name = d.full_name, modified_at = (now() AT TIME ZONE $2::text)
    FROM merge_diff d
   WHERE d.action = 'update' AND f.email = d.email
  RETURNING f.email, d.old_name, d.full_name AS new_name, d.old_modified_at)
INSERT INTO etl_info_schema.sync_journal (load_id, action, email, old_name, new_name, old_modified_at)
SELECT $1, 'update', email, old_name, new_name, old_modified_at FROM changed";

/// `merge`'s insert step, journaled (the email only: a revert removes the row;
/// `$1` the load, `$2` the zone of `modified_at`).
pub const INSERT: &str = "WITH changed AS (
  INSERT INTO public.followers (email, full_name, modified_at)
  SELECT d.email, d.full_name, (now() AT TIME ZONE $2::text) FROM merge_diff d WHERE d.action = 'insert'
  RETURNING email)
INSERT INTO etl_info_schema.sync_journal (load_id, action, email)
SELECT $1, 'insert', email FROM changed";

/// `merge`'s delete step, journaled with what the deleted rows held (`$1` the
/// protected emails, `$2` the load).
pub const DELETE: &str = "WITH changed AS (
  DELETE FROM public.followers f
   USING merge_diff d
   WHERE d.action = 'delete' AND f.email = d.email AND f.email <> ALL($1::text[])
  RETURNING f.email, f.full_name, f.modified_at)
INSERT INTO etl_info_schema.sync_journal (load_id, action, email, old_name, old_modified_at)
SELECT $2, 'delete', email, full_name, modified_at FROM changed";

fn stmt(sql: &str, values: Vec<Value>) -> Statement {
    Statement::from_sql_and_values(DbBackend::Postgres, sql, values)
}

/// Records on the run how many journal rows it holds (a run whose `journaled`
/// is NULL has no journal: it was off, or pruned), and whether it `filled` an
/// empty table: such a run is journaled without rows (one per follower would
/// double the first sync's cost), since what it did is known without them:
/// before it the table was empty, and every follower present just after it was
/// inserted by it.
pub async fn seal(
    db: &impl ConnectionTrait,
    load_id: LoadId,
    rows: u64,
    filled: bool,
) -> Result<(), DbErr> {
    db.execute(stmt(
        "UPDATE etl_info_schema.sync_runs SET journaled = $2, filled = $3 WHERE load_id = $1",
        vec![load_id.uuid().into(), (rows as i64).into(), filled.into()],
    ))
    .await?;
    Ok(())
}

/// Drops the journal of runs beyond the retention (the newest `keep_runs`
/// journaled runs, none older than `keep_days`). Its own short transaction after
/// the run, outside the run lock: it touches only old runs' rows, so it never
/// waits for a sync; against a revert of the same runs, the row locks on
/// `sync_runs` order the two (the revert then sees the journal gone and refuses).
#[tracing::instrument(skip_all, err(level = "debug"))]
pub async fn prune(db: &DatabaseConnection, retention: JournalRetention) -> Result<u64, DbErr> {
    let txn = db.begin().await?;
    let pruned = txn
        .execute(stmt(
            "WITH keep AS (
               SELECT load_id FROM etl_info_schema.sync_runs WHERE journaled IS NOT NULL
                ORDER BY started_at DESC LIMIT $1),
             dropped AS (
               UPDATE etl_info_schema.sync_runs SET journaled = NULL
                WHERE journaled IS NOT NULL
                  AND (load_id NOT IN (SELECT load_id FROM keep)
                       OR started_at < (now() AT TIME ZONE 'UTC') - make_interval(days => $2))
               RETURNING load_id)
             DELETE FROM etl_info_schema.sync_journal j USING dropped d WHERE j.load_id = d.load_id",
            vec![
                (retention.keep_runs as i64).into(),
                (retention.keep_days.min(i32::MAX as u64) as i32).into(),
            ],
        ))
        .await?
        .rows_affected();
    // Runs the run history's retention deleted (oldest first; load ids are
    // UUID v7, so in start order) take their journal with them.
    let orphans = txn
        .execute(stmt(
            "DELETE FROM etl_info_schema.sync_journal
              WHERE load_id < (SELECT load_id FROM etl_info_schema.sync_runs ORDER BY load_id LIMIT 1)",
            vec![],
        ))
        .await?
        .rows_affected();
    let pruned = pruned + orphans;
    txn.commit().await?;
    if pruned > 0 {
        tracing::info!(rows = pruned, "journal pruned");
    }
    Ok(pruned)
}

/// The runs a revert undoes, newest first, as `$2` of the statements below. The
/// net effect per follower is its state before the OLDEST of these runs that
/// touched it.
const OLDEST: &str =
    "WITH runs AS (SELECT load_id, ord FROM unnest($2::uuid[]) WITH ORDINALITY AS r(load_id, ord)),
  oldest AS (SELECT DISTINCT ON (j.email) j.email, j.action, j.old_name, j.old_modified_at
               FROM etl_info_schema.sync_journal j JOIN runs USING (load_id)
              ORDER BY j.email, runs.ord DESC)";

/// Followers whose current state is not what the NEWEST of the runs left: the
/// table changed outside the agent, so a revert would not be exact.
const DRIFT: &str =
    "WITH runs AS (SELECT load_id, ord FROM unnest($1::uuid[]) WITH ORDINALITY AS r(load_id, ord)),
  newest AS (SELECT DISTINCT ON (j.email) j.email, j.action, j.new_name
               FROM etl_info_schema.sync_journal j JOIN runs USING (load_id)
              ORDER BY j.email, runs.ord ASC)
SELECT n.email, n.action, n.new_name, f.full_name, count(*) OVER ()::bigint AS drifted
  FROM newest n LEFT JOIN public.followers f ON f.email = n.email
 WHERE CASE n.action WHEN 'delete' THEN f.email IS NOT NULL
                     WHEN 'update' THEN f.email IS NULL OR f.full_name IS DISTINCT FROM n.new_name
                     ELSE f.email IS NULL END
 ORDER BY n.email LIMIT 3";

/// Undo inserts: followers whose oldest change was their insert are removed.
fn undo_inserts() -> String {
    format!(
        "{OLDEST}, changed AS (
  DELETE FROM public.followers f USING oldest o
   WHERE o.action = 'insert' AND f.email = o.email
  RETURNING f.email, f.full_name, f.modified_at)
INSERT INTO {JOURNAL} (load_id, action, email, old_name, old_modified_at)
SELECT $1, 'delete', email, full_name, modified_at FROM changed"
    )
}

/// Undo renames (and deletes followed by a re-insert): the old name and
/// `modified_at` come back on rows that exist.
fn undo_renames() -> String {
    format!(
        "{OLDEST}, changed AS (
  UPDATE public.followers f SET full_name = o.old_name, modified_at = o.old_modified_at
    FROM (SELECT o.email, o.old_name, o.old_modified_at, c.full_name AS cur_name, c.modified_at AS cur_modified_at
            FROM oldest o JOIN public.followers c ON c.email = o.email
           WHERE o.action <> 'insert') o
   WHERE f.email = o.email AND (f.full_name, f.modified_at) IS DISTINCT FROM (o.old_name, o.old_modified_at)
  RETURNING f.email, o.cur_name, o.old_name, o.cur_modified_at)
INSERT INTO {JOURNAL} (load_id, action, email, old_name, new_name, old_modified_at)
SELECT $1, 'update', email, cur_name, old_name, cur_modified_at FROM changed"
    )
}

/// Undo deletes: followers that existed before the runs and are absent now come
/// back with their old name and `modified_at`.
fn undo_deletes() -> String {
    format!(
        "{OLDEST}, changed AS (
  INSERT INTO public.followers (email, full_name, modified_at)
  SELECT o.email, o.old_name, o.old_modified_at FROM oldest o
   WHERE o.action <> 'insert'
     AND NOT EXISTS (SELECT 1 FROM public.followers f WHERE f.email = o.email)
  RETURNING email)
INSERT INTO {JOURNAL} (load_id, action, email)
SELECT $1, 'insert', email FROM changed"
    )
}

/// A follower that is not as the journal says the runs left it.
#[derive(Debug)]
pub struct Drift {
    /// How many followers differ.
    pub count: u64,
    /// Up to three, described ("a@x: deleted by the run, present now").
    pub examples: Vec<String>,
}

/// Checks that the table is exactly what the runs (newest first) left for every
/// follower they changed.
pub async fn drift(db: &impl ConnectionTrait, runs: &[Uuid]) -> Result<Option<Drift>, DbErr> {
    let rows = db
        .query_all(stmt(DRIFT, vec![runs.to_vec().into()]))
        .await?;
    let Some(first) = rows.first() else {
        return Ok(None);
    };
    let count: i64 = first.try_get("", "drifted")?;
    let mut examples = Vec::new();
    for row in &rows {
        let email: String = row.try_get("", "email")?;
        let action: String = row.try_get("", "action")?;
        let new_name: Option<String> = row.try_get("", "new_name")?;
        let now: Option<String> = row.try_get("", "full_name")?;
        let now = now.map_or_else(|| "absent now".to_owned(), |n| format!("{n:?} now"));
        examples.push(match action.as_str() {
            "delete" => format!("{email}: deleted by the run, present now"),
            "update" => format!(
                "{email}: renamed to {:?} by the run, {now}",
                new_name.unwrap_or_default()
            ),
            _ => format!("{email}: inserted by the run, {now}"),
        });
    }
    Ok(Some(Drift {
        count: count as u64,
        examples,
    }))
}

/// What a revert changed.
#[derive(Clone, Copy, Debug, Default)]
pub struct Undone {
    /// Followers restored (deleted by the runs).
    pub inserted: u64,
    /// Followers given their old name and `modified_at` back.
    pub updated: u64,
    /// Followers removed (inserted by the runs).
    pub deleted: u64,
}

/// Puts back, in the caller's transaction, the state before `runs` (newest
/// first), journaling the revert's own changes under `load_id`.
pub async fn undo(
    db: &impl ConnectionTrait,
    load_id: LoadId,
    runs: &[Uuid],
) -> Result<Undone, DbErr> {
    let values = || vec![load_id.uuid().into(), runs.to_vec().into()];
    let run = |sql: String| {
        let statement = stmt(&sql, values());
        async move { Ok::<_, DbErr>(db.execute(statement).await?.rows_affected()) }
    };
    let deleted = run(undo_inserts()).await?;
    let updated = run(undo_renames()).await?;
    let inserted = run(undo_deletes()).await?;
    Ok(Undone {
        inserted,
        updated,
        deleted,
    })
}

/// Puts back, in the caller's transaction, the state before a run that filled
/// an empty table: removes every follower, journaling each under `load_id`.
pub async fn empty(db: &impl ConnectionTrait, load_id: LoadId) -> Result<Undone, DbErr> {
    let deleted = db
        .execute(stmt(
            &format!(
                "WITH changed AS (
  DELETE FROM public.followers f RETURNING f.email, f.full_name, f.modified_at)
INSERT INTO {JOURNAL} (load_id, action, email, old_name, old_modified_at)
SELECT $1, 'delete', email, full_name, modified_at FROM changed"
            ),
            vec![load_id.uuid().into()],
        ))
        .await?
        .rows_affected();
    Ok(Undone {
        deleted,
        ..Undone::default()
    })
}

/// One journaled change of one follower (`history`).
#[derive(Clone, Debug, Serialize)]
pub struct Event {
    /// When the run committed (its start when it never finished).
    pub time: String,
    pub load_id: Uuid,
    pub file: String,
    pub trigger: String,
    /// `inserted`, `renamed` or `deleted`.
    pub action: &'static str,
    /// The name before (renamed, deleted).
    pub old_name: Option<String>,
    /// The name after (renamed).
    pub new_name: Option<String>,
    /// `modified_at` before (renamed, deleted).
    pub old_modified_at: Option<String>,
    /// The revert that later undid this run.
    pub reverted_by: Option<Uuid>,
}

fn utc(t: NaiveDateTime) -> String {
    t.and_utc().to_rfc3339()
}

/// Every journaled change of `email`, oldest first (a scan of the journal: it
/// has no index on `email`, see the migration). A run that `filled` an empty
/// table has no rows; it inserted `email` when the email was present just after
/// it: its next change (before the next fill) is not an insert, or, with none,
/// it is present now.
pub async fn history(db: &impl ConnectionTrait, email: &str) -> Result<Vec<Event>, DbErr> {
    let rows = db
        .query_all(stmt(
            "SELECT r.load_id, r.started_at, coalesce(r.finished_at, r.started_at) AS at, r.file,
                    r.trigger, r.reverted_by, j.action, j.old_name, j.new_name, j.old_modified_at
               FROM etl_info_schema.sync_journal j
               JOIN etl_info_schema.sync_runs r ON r.load_id = j.load_id
              WHERE j.email = $1 AND r.journaled IS NOT NULL
             UNION ALL
             SELECT r.load_id, r.started_at, coalesce(r.finished_at, r.started_at), r.file,
                    r.trigger, r.reverted_by, 'fill', NULL, NULL, NULL
               FROM etl_info_schema.sync_runs r
              WHERE r.filled AND r.journaled IS NOT NULL
              ORDER BY 2, 1",
            vec![email.into()],
        ))
        .await?;
    let present = db
        .query_one(stmt(
            "SELECT 1 FROM public.followers WHERE email = $1",
            vec![email.into()],
        ))
        .await?
        .is_some();
    let changes = rows
        .iter()
        .map(|row| {
            let action: String = row.try_get("", "action")?;
            let event = Event {
                time: utc(row.try_get("", "at")?),
                load_id: row.try_get("", "load_id")?,
                file: row.try_get("", "file")?,
                trigger: row.try_get("", "trigger")?,
                action: match action.as_str() {
                    "insert" | "fill" => "inserted",
                    "update" => "renamed",
                    _ => "deleted",
                },
                old_name: row.try_get("", "old_name")?,
                new_name: row.try_get("", "new_name")?,
                old_modified_at: row
                    .try_get::<Option<NaiveDateTime>>("", "old_modified_at")?
                    .map(utc),
                reverted_by: row.try_get("", "reverted_by")?,
            };
            Ok((action, event))
        })
        .collect::<Result<Vec<_>, DbErr>>()?;
    let mut events = Vec::with_capacity(changes.len());
    for (i, (action, event)) in changes.iter().enumerate() {
        if action == "fill" {
            let later = &changes[i + 1..];
            let inserted = match later.iter().map(|(a, _)| a.as_str()).next() {
                Some("fill") => false,
                Some(next) => next != "insert",
                None => present,
            };
            if !inserted {
                continue;
            }
        }
        events.push(event.clone());
    }
    Ok(events)
}
