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
use crate::storage::{followers, sync_journal as journal, sync_runs};
use chrono::{DateTime, NaiveDateTime, Utc};
use sea_orm::{
    ConnectionTrait, DatabaseConnection, DbBackend, DbErr, Statement, TransactionTrait, Value,
};
use serde::Serialize;
use uuid::Uuid;

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
        sync_runs::SEAL,
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
    db.execute(stmt(sync_runs::ORDER, vec![load_id.uuid().into()]))
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
        sync_runs::MARK_XID,
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
            journal::PRUNE,
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
        .execute(stmt(journal::PRUNE_ORPHANS, vec![]))
        .await?
        .rows_affected();
    let pruned = pruned + orphans;
    txn.commit().await?;
    if pruned > 0 {
        tracing::info!(rows = pruned, "journal pruned");
    }
    Ok(pruned)
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
        .query_all(stmt(journal::DRIFT, vec![runs.to_vec().into()]))
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
    let deleted = run(journal::undo_inserts()).await?;
    let updated = run(journal::undo_renames()).await?;
    let inserted = run(journal::undo_deletes()).await?;
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
            &journal::unfill(),
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
            journal::FILL_TOO_OLD,
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
        .query_one(stmt(followers::LEFT, vec![]))
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
        .query_all(stmt(journal::HISTORY, vec![email.into(), zone.into()]))
        .await?;
    let present = db
        .query_one(stmt(followers::PRESENT, vec![email.into()]))
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
