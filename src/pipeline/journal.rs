//! The journal (`etl_info_schema.sync_journal`, docs/operations.md#journal): what a run changed in `followers`, one row per changed follower,
//! written by the same statement that makes the change (a data-modifying CTE), so
//! unchanged rows cost nothing and the journal commits or rolls back with the
//! merge. Every statement here is set-based; `merge.rs` and `revert.rs` call them.
//!
//! | action   | a sync wrote it for          | columns set                          |
//! |----------|------------------------------|--------------------------------------|
//! | `insert` | a new follower               | email, new name                      |
//! | `update` | a renamed follower           | email, old/new name, old modified_at, |
//! |          |                              | old xmin                             |
//! | `delete` | a deleted follower           | email, old name, old modified_at,    |
//! |          |                              | old xmin                             |
//!
//! The old states are those the statement replaced: it touches only rows whose
//! `xmin` is still the one the diff read (under the merge's writer lock), and the
//! merge checks its row count. `old_xmin` tells a revert reaching a first sync
//! whether the replaced row was the one that fill wrote (`sync_runs.fill_xid`).

use crate::config::JournalRetention;
use crate::convert;
use crate::domain::LoadId;
use chrono::{DateTime, NaiveDateTime, Utc};
use sea_orm::{
    ConnectionTrait, DatabaseConnection, DbBackend, DbErr, Statement, TransactionTrait, Value,
};
use serde::Serialize;
use uuid::Uuid;

const JOURNAL: &str = "etl_info_schema.sync_journal";

/// `merge`'s update step, journaled: the rows `diff` found renamed and still as
/// it read them (same `xmin`), with the old name and `modified_at` it read, which
/// are therefore the ones overwritten (`$1` the load, `$2` the zone of `modified_at`).
pub(crate) const UPDATE: &str = "WITH changed AS (
  UPDATE public.followers f
     SET full_name = d.full_name, modified_at = (now() AT TIME ZONE $2::text)
    FROM merge_diff d
   WHERE d.action = 'update' AND f.email = d.email AND f.xmin = d.old_xmin
  RETURNING f.email, d.old_name, d.full_name AS new_name, d.old_modified_at, d.old_xmin)
INSERT INTO etl_info_schema.sync_journal (load_id, action, email, old_name, new_name, old_modified_at, old_xmin)
SELECT $1, 'update', email, old_name, new_name, old_modified_at, old_xmin FROM changed";

/// `merge`'s insert step, journaled (the email and the name inserted: a revert
/// removes the row if it still has that name; `$1` the load, `$2` the zone
/// of `modified_at`).
pub(crate) const INSERT: &str = "WITH changed AS (
  INSERT INTO public.followers (email, full_name, modified_at)
  SELECT d.email, d.full_name, (now() AT TIME ZONE $2::text) FROM merge_diff d WHERE d.action = 'insert'
  RETURNING email, full_name)
INSERT INTO etl_info_schema.sync_journal (load_id, action, email, new_name)
SELECT $1, 'insert', email, full_name FROM changed";

/// `merge`'s delete step, journaled with what the deleted rows held (`$1` the
/// protected emails, `$2` the load).
pub(crate) const DELETE: &str = "WITH changed AS (
  DELETE FROM public.followers f
   USING merge_diff d
   WHERE d.action = 'delete' AND f.email = d.email AND f.xmin = d.old_xmin
     AND f.email <> ALL($1::text[])
  RETURNING f.email, f.full_name, f.modified_at, d.old_xmin)
INSERT INTO etl_info_schema.sync_journal (load_id, action, email, old_name, old_modified_at, old_xmin)
SELECT $2, 'delete', email, full_name, modified_at, old_xmin FROM changed";

fn stmt(sql: &str, values: Vec<Value>) -> Statement {
    Statement::from_sql_and_values(DbBackend::Postgres, sql, values)
}

/// Records on the run how many journal rows it holds (a run whose `journaled`
/// is NULL has no journal: it was off, or pruned), and whether it `filled` an
/// empty table: such a run is journaled without rows (one per follower would
/// double the first sync's cost), since what it did is known without them:
/// before it the table was empty, and every follower present just after it was
/// inserted by it.
pub(crate) async fn seal(
    db: &impl ConnectionTrait,
    load_id: LoadId,
    rows: u64,
    filled: bool,
) -> Result<(), DbErr> {
    db.execute(stmt(
        "UPDATE etl_info_schema.sync_runs SET journaled = $2, filled = $3 WHERE load_id = $1",
        vec![
            load_id.uuid().into(),
            convert::bigint("journaled", rows)?.into(),
            filled.into(),
        ],
    ))
    .await?;
    Ok(())
}

/// Gives the run its place in the commit order (`sync_runs.commit_seq`,
/// docs/operations.md#revert), in its own transaction while that holds the
/// writer lock on `followers` (`merge::lock_writers`): every run that changes the
/// table takes it, and it conflicts with itself, so the next number is taken
/// only after the previous holder committed or rolled back.
pub(crate) async fn order(db: &impl ConnectionTrait, load_id: LoadId) -> Result<(), DbErr> {
    db.execute(stmt(
        "UPDATE etl_info_schema.sync_runs
            SET commit_seq = (SELECT coalesce(max(commit_seq), 0) + 1 FROM etl_info_schema.sync_runs)
          WHERE load_id = $1",
        vec![load_id.uuid().into()],
    ))
    .await?;
    Ok(())
}

/// Records the transaction id that wrote the run's rows (`sync_runs.write_xid`,
/// an `xid8`): the transaction's own, or for a first sync into the empty table
/// (`filled`) its rows' `xmin`, which is the savepoint's subtransaction when the
/// key was rebuilt, widened with the epoch of the top transaction (a
/// subtransaction's id is never below its parent's).
pub(crate) async fn mark_xid(
    db: &impl ConnectionTrait,
    load_id: LoadId,
    filled: bool,
) -> Result<(), DbErr> {
    db.execute(stmt(
        "UPDATE etl_info_schema.sync_runs SET write_xid = (
           SELECT (top + (coalesce(x, top % 4294967296) - top % 4294967296 + 4294967296) % 4294967296)::text::xid8
             FROM (SELECT pg_current_xact_id()::text::bigint AS top,
                          CASE WHEN $2 THEN (SELECT xmin::text::bigint FROM public.followers LIMIT 1) END AS x) t)
          WHERE load_id = $1",
        vec![load_id.uuid().into(), filled.into()],
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
pub(crate) async fn prune(
    db: &DatabaseConnection,
    retention: JournalRetention,
) -> Result<u64, DbErr> {
    let txn = db.begin().await?;
    let pruned = txn
        .execute(stmt(
            "WITH keep AS (
               SELECT load_id FROM etl_info_schema.sync_runs WHERE journaled IS NOT NULL
                ORDER BY commit_seq DESC NULLS LAST, started_at DESC LIMIT $1),
             dropped AS (
               UPDATE etl_info_schema.sync_runs SET journaled = NULL
                WHERE journaled IS NOT NULL
                  AND (load_id NOT IN (SELECT load_id FROM keep)
                       OR started_at < (now() AT TIME ZONE 'UTC') - make_interval(days => $2))
               RETURNING load_id)
             DELETE FROM etl_info_schema.sync_journal j USING dropped d WHERE j.load_id = d.load_id",
            vec![
                // Limits beyond bigint and int4 keep every run's journal: saturation is the meaning.
                convert::saturating_bigint(retention.keep_runs).into(),
                convert::saturating_int4(retention.keep_days).into(),
            ],
        ))
        .await?
        .rows_affected();
    // Runs the runs' retention deleted (oldest first; load ids are
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

/// The agent's own writes: each run that wrote `followers` (synced runs and
/// reverts) by the transaction id that wrote its rows (`write_xid`), within the
/// last 2^31 transactions (older ids may have wrapped around).
const AGENT: &str = "agent AS (
  SELECT r.load_id, xid(r.write_xid) AS x, r.outcome = 'reverted' AS is_revert,
         r.journaled IS NOT NULL AS journaled
    FROM etl_info_schema.sync_runs r
   WHERE r.write_xid IS NOT NULL AND r.outcome IN ('synced', 'reverted')
     AND pg_current_xact_id()::text::numeric - r.write_xid::text::numeric < 2147483648)";

/// Whether the row version of follower `email` whose `xmin` is `x` is the
/// agent's: written by a sync, or put back by a revert (whose journal is kept)
/// from a version that was itself the agent's (`foreign_origin` false).
fn agent_origin(email: &str, x: &str) -> String {
    format!(
        "EXISTS (SELECT 1 FROM agent a WHERE a.x = {x}
                   AND (NOT a.is_revert OR (a.journaled AND EXISTS (
                        SELECT 1 FROM {JOURNAL} jr
                         WHERE jr.load_id = a.load_id AND jr.email = {email}
                           AND jr.foreign_origin IS FALSE))))"
    )
}

/// The runs a revert undoes, newest first, as `$2` of the statements below. The
/// net effect per follower is its state before the OLDEST of these runs that
/// touched it. When the runs reach back to a first sync (`$3` is true), the
/// followers whose oldest change replaced a row the agent wrote are left out:
/// `unfill` removes them (the table was empty before that sync).
fn oldest() -> String {
    format!(
        "WITH runs AS (SELECT load_id, ord FROM unnest($2::uuid[]) WITH ORDINALITY AS r(load_id, ord)),
  {AGENT},
  all_oldest AS (SELECT DISTINCT ON (j.email) j.email, j.action, j.old_name, j.old_modified_at, j.old_xmin
               FROM {JOURNAL} j JOIN runs USING (load_id)
              ORDER BY j.email, runs.ord DESC),
  oldest AS (SELECT o.*, NOT {origin} AS foreign_origin FROM all_oldest o
              WHERE NOT $3::boolean OR o.action = 'insert' OR NOT {origin})",
        origin = agent_origin("o.email", "o.old_xmin")
    )
}

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
                     ELSE f.email IS NULL
                          OR (n.new_name IS NOT NULL AND f.full_name IS DISTINCT FROM n.new_name) END
 ORDER BY n.email LIMIT 3";

/// Undo inserts: followers whose oldest change was their insert are removed.
fn undo_inserts() -> String {
    format!(
        "{}, changed AS (
  DELETE FROM public.followers f USING oldest o
   WHERE o.action = 'insert' AND f.email = o.email
  RETURNING f.email, f.full_name, f.modified_at, f.xmin)
INSERT INTO {JOURNAL} (load_id, action, email, old_name, old_modified_at, old_xmin)
SELECT $1, 'delete', email, full_name, modified_at, xmin FROM changed",
        oldest()
    )
}

/// Undo renames (and deletes followed by a re-insert): the old name and
/// `modified_at` come back on rows that exist. The journal marks a row put back
/// from a version another session wrote (`foreign_origin`).
fn undo_renames() -> String {
    format!(
        "{}, changed AS (
  UPDATE public.followers f SET full_name = o.old_name, modified_at = o.old_modified_at
    FROM (SELECT o.email, o.old_name, o.old_modified_at, o.foreign_origin, c.full_name AS cur_name,
                 c.modified_at AS cur_modified_at, c.xmin AS cur_xmin
            FROM oldest o JOIN public.followers c ON c.email = o.email
           WHERE o.action <> 'insert') o
   WHERE f.email = o.email AND (f.full_name, f.modified_at) IS DISTINCT FROM (o.old_name, o.old_modified_at)
  RETURNING f.email, o.cur_name, o.old_name, o.cur_modified_at, o.cur_xmin, o.foreign_origin)
INSERT INTO {JOURNAL} (load_id, action, email, old_name, new_name, old_modified_at, old_xmin, foreign_origin)
SELECT $1, 'update', email, cur_name, old_name, cur_modified_at, cur_xmin, foreign_origin FROM changed",
        oldest()
    )
}

/// Undo deletes: followers that existed before the runs and are absent now come
/// back with their old name and `modified_at`.
fn undo_deletes() -> String {
    format!(
        "{}, changed AS (
  INSERT INTO public.followers (email, full_name, modified_at)
  SELECT o.email, o.old_name, o.old_modified_at FROM oldest o
   WHERE o.action <> 'insert'
     AND NOT EXISTS (SELECT 1 FROM public.followers f WHERE f.email = o.email)
  RETURNING email, full_name)
INSERT INTO {JOURNAL} (load_id, action, email, new_name, foreign_origin)
SELECT $1, 'insert', c.email, c.full_name, o.foreign_origin FROM changed c JOIN oldest o USING (email)",
        oldest()
    )
}

/// A follower that is not as the journal says the runs left it.
#[derive(Debug)]
pub(crate) struct Drift {
    /// How many followers differ.
    pub count: u64,
    /// Up to three, described ("a@x: deleted by the run, present now").
    pub examples: Vec<String>,
}

/// Checks that the table is exactly what the runs (newest first) left for every
/// follower they changed.
pub(crate) async fn drift(
    db: &impl ConnectionTrait,
    runs: &[Uuid],
) -> Result<Option<Drift>, DbErr> {
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
        count: convert::count("drift count", count)?,
        examples,
    }))
}

/// What a revert changed.
#[derive(Clone, Debug, Default)]
pub(crate) struct Undone {
    /// Followers restored (deleted by the runs).
    pub inserted: u64,
    /// Followers given their old name and `modified_at` back.
    pub updated: u64,
    /// Followers removed (inserted by the runs).
    pub deleted: u64,
    /// Reverting to before a fill: followers left (written by others since).
    pub left: u64,
    /// Up to three of them.
    pub left_examples: Vec<String>,
}

/// Puts back, in the caller's transaction, the state before `runs` (newest
/// first), journaling the revert's own changes under `load_id`.
pub(crate) async fn undo(
    db: &impl ConnectionTrait,
    load_id: LoadId,
    runs: &[Uuid],
    to_fill: bool,
) -> Result<Undone, DbErr> {
    let values = || vec![load_id.uuid().into(), runs.to_vec().into(), to_fill.into()];
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
        ..Undone::default()
    })
}

/// The part of a revert to before a first sync that removes what the agent
/// wrote, in the caller's transaction and before `undo` of the later runs
/// (`runs`, newest first, `$2`): followers the later runs did not touch whose
/// row the agent wrote (`xmin` one of the agent's: that fill's, or a revert's
/// that put back an agent's version), and followers whose oldest change by the
/// later runs was their insert or replaced a row the agent wrote. Rows another
/// session wrote or changed since are left (`undo` puts back those the later
/// runs changed). Journaled under `load_id`.
pub(crate) async fn unfill(
    db: &impl ConnectionTrait,
    load_id: LoadId,
    runs: &[Uuid],
) -> Result<u64, DbErr> {
    let deleted = db
        .execute(stmt(
            &format!(
                "{oldest}, changed AS (
  DELETE FROM public.followers f
   WHERE (NOT EXISTS (SELECT 1 FROM all_oldest o WHERE o.email = f.email) AND {current})
      OR f.email IN (SELECT o.email FROM all_oldest o WHERE o.action = 'insert' OR {origin})
  RETURNING f.email, f.full_name, f.modified_at, f.xmin)
INSERT INTO {JOURNAL} (load_id, action, email, old_name, old_modified_at, old_xmin)
SELECT $1, 'delete', email, full_name, modified_at, xmin FROM changed",
                oldest = oldest(),
                current = agent_origin("f.email", "f.xmin"),
                origin = agent_origin("o.email", "o.old_xmin"),
            ),
            vec![load_id.uuid().into(), runs.to_vec().into(), true.into()],
        ))
        .await?
        .rows_affected();
    Ok(deleted)
}

/// Whether a fill's transaction id may have wrapped around (more than 2^31
/// transactions ago): its rows can then no longer be told by `xmin`.
pub(crate) async fn fill_too_old(db: &impl ConnectionTrait, fill_xid: &str) -> Result<bool, DbErr> {
    let row = db
        .query_one(stmt(
            "SELECT pg_current_xact_id()::text::numeric - $1::xid8::text::numeric > 2147483647",
            vec![fill_xid.to_owned().into()],
        ))
        .await?
        .ok_or_else(|| DbErr::RecordNotFound("xid age".into()))?;
    row.try_get_by_index(0)
}

/// The followers left after a revert to before a first sync (the table was
/// empty then): how many, and up to three of their emails.
pub(crate) async fn left(db: &impl ConnectionTrait) -> Result<(u64, Vec<String>), DbErr> {
    let row = db
        .query_one(stmt(
            "SELECT count(*)::bigint,
                    coalesce((SELECT array_agg(email) FROM (SELECT email FROM public.followers ORDER BY email LIMIT 3) e), '{}')
               FROM public.followers",
            vec![],
        ))
        .await?
        .ok_or_else(|| DbErr::RecordNotFound("followers left".into()))?;
    let n: i64 = row.try_get_by_index(0)?;
    Ok((
        convert::count("followers left", n)?,
        row.try_get_by_index(1)?,
    ))
}

/// One journaled change of one follower (`history`).
#[derive(Clone, Debug, Serialize)]
pub(crate) struct Event {
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
    /// `modified_at` before (renamed, deleted), as an instant in UTC whatever clock
    /// the column holds (docs/sync.md#modified_at-and-the-time-zone).
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
///
/// `zone` is the clock `followers.modified_at` holds (`db::modified_at_clock`):
/// the journal keeps that column's wall time, shown here as the instant it was.
pub(crate) async fn history(
    db: &impl ConnectionTrait,
    email: &str,
    zone: &str,
) -> Result<Vec<Event>, DbErr> {
    let rows = db
        .query_all(stmt(
            "SELECT r.load_id, r.started_at, coalesce(r.finished_at, r.started_at) AS at, r.file,
                    r.trigger, r.reverted_by, j.action, j.old_name, j.new_name,
                    j.old_modified_at AT TIME ZONE $2 AS old_modified_at, r.commit_seq
               FROM etl_info_schema.sync_journal j
               JOIN etl_info_schema.sync_runs r ON r.load_id = j.load_id
              WHERE j.email = $1 AND r.journaled IS NOT NULL
             UNION ALL
             SELECT r.load_id, r.started_at, coalesce(r.finished_at, r.started_at), r.file,
                    r.trigger, r.reverted_by, 'fill', NULL, NULL, NULL::timestamptz, r.commit_seq
               FROM etl_info_schema.sync_runs r
              WHERE r.filled AND r.journaled IS NOT NULL
              ORDER BY 11 NULLS FIRST, 2, 1",
            vec![email.into(), zone.into()],
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
                    .try_get::<Option<DateTime<Utc>>>("", "old_modified_at")?
                    .map(|t| t.to_rfc3339()),
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
