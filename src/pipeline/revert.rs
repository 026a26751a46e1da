//! `followers-etl revert`: puts `followers` back to its state before one or more
//! synced runs, from their journal (docs/operations.md#revert).
//!
//! Under the run lock, in ONE transaction that holds the merge's writer lock on
//! `followers` (`merge::lock_writers`, docs/sync.md#readers-and-writers-during-a-run): lock the runs to undo (every synced, not yet reverted run from the
//! newest back to the target, in commit order: `sync_runs.commit_seq`), refuse unless each
//! has its whole journal and the table is exactly what the newest of them left
//! for every follower they changed (else the result would not be exact), undo
//! (`journal::undo`), mark the runs `reverted_by`, and point `table_status` at
//! the revert with the content hash of the newest undone run, so that file is
//! held back until it changes or `sync --force`. Reaching back to a first sync
//! into an empty table, it deletes only the rows that fill wrote (`xmin` =
//! `sync_runs.fill_xid`) and names the followers it leaves. The delete guard
//! (`MAX_DELETE_RATIO`, `--allow-mass-delete`) applies, and the run lock must
//! still be held just before the commit. A crash at any point leaves
//! the table as before or as reverted: the commit is the only switch (a lost
//! COMMIT answer is checked as the merge's is).

use super::journal::{self, Undone};
use super::merge::{self, MergeError};
use super::SyncContext;
use crate::convert;
use crate::db::{AdvisoryLock, DbError};
use crate::domain::LoadId;
use crate::domain::{Counts, Outcome, Trigger};
use crate::errors::error_chain;
use crate::runs;
use crate::storage::{followers, session, sync_runs, table_status};
use chrono::NaiveDateTime;
use sea_orm::{
    ConnectionTrait, DatabaseTransaction, DbBackend, DbErr, Statement, TransactionTrait, Value,
};
use serde::Serialize;
use std::time::{Duration, Instant};
use tracing::Level;
use uuid::Uuid;

/// Which runs to undo: the newest synced one, or every one back to this one.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Target {
    Last,
    Run(Uuid),
}

/// A run the revert undoes (or would undo).
#[derive(Clone, Debug, Serialize)]
pub(crate) struct UndoneRun {
    pub load_id: Uuid,
    pub started_at: String,
    pub file: String,
    pub trigger: String,
    #[serde(skip)]
    content_hash: Option<String>,
}

/// What `revert` prints (text or `--json`).
#[derive(Clone, Debug, Serialize)]
pub(crate) struct RevertSummary {
    pub outcome: Outcome,
    pub load_id: LoadId,
    /// The runs undone, newest first.
    pub undone: Vec<UndoneRun>,
    /// Followers restored (deleted by the runs).
    pub inserted: u64,
    /// Followers given their old name and `modified_at` back.
    pub updated: u64,
    /// Followers removed (inserted by the runs).
    pub deleted: u64,
    /// Rows the journal holds for the revert itself.
    pub journaled: u64,
    /// Reverting to before a first sync: followers left in the table because
    /// another session wrote or changed them after that fill.
    pub left: u64,
    /// Up to three of them.
    pub left_examples: Vec<String>,
    /// The file whose content the next syncs skip until it changes (after a
    /// revert only; null otherwise).
    pub held_back: Option<String>,
    #[serde(serialize_with = "super::as_seconds")]
    pub duration: Duration,
    #[serde(skip)]
    pub reason: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum RevertError {
    #[error("nothing to revert: no synced run that is not reverted yet")]
    Nothing,
    #[error("the journal is off (JOURNAL_KEEP_RUNS=0): nothing is reverted, and the next synced run drops the journal kept so far")]
    JournalOff,
    #[error("no run with load_id {0}")]
    Unknown(Uuid),
    #[error("run {load_id} is {outcome}, not synced: only synced runs changed the table")]
    NotSynced { load_id: Uuid, outcome: String },
    #[error("run {load_id} was already reverted (by {by})")]
    AlreadyReverted { load_id: Uuid, by: Uuid },
    #[error("run {load_id} ({started_at}) has no journal (pruned by JOURNAL_KEEP_RUNS/JOURNAL_KEEP_DAYS, or synced with the journal off); a revert could not be exact, nothing changed")]
    NoJournal { load_id: Uuid, started_at: String },
    #[error("the journal of run {load_id} holds {found} rows, {expected} recorded; a revert could not be exact, nothing changed")]
    Incomplete {
        load_id: Uuid,
        found: u64,
        expected: u64,
    },
    #[error("{count} follower(s) changed outside the agent since run {newest} (e.g. {}); a revert would not be exact, nothing changed (sync a corrected file instead)", .examples.join("; "))]
    Drift {
        newest: Uuid,
        count: u64,
        examples: Vec<String>,
    },
    #[error("run {fill} was the first sync into a table emptied outside the agent since the runs before it; a revert past it could not be exact, nothing changed (revert up to {fill} instead)")]
    PastFill { fill: Uuid },
    #[error("another sync of this database is in progress (advisory lock held); nothing reverted, try again")]
    Busy,
    #[error("the revert would delete {deleted} of {current} followers ({:.1}%), more than MAX_DELETE_RATIO={ratio}; nothing changed (use --allow-mass-delete if intended)", crate::convert::percent(*.deleted, *.current))]
    MassDelete {
        deleted: u64,
        current: u64,
        ratio: f64,
    },
    #[error("run {fill} filled the empty table before this version recorded which rows a first sync writes; a revert to before it could not be exact, nothing changed (revert the runs after it instead)")]
    FillUnknown { fill: Uuid },
    #[error("run {fill} filled the table more than 2^31 transactions ago, so its rows can no longer be told from others'; a revert to before it could not be exact, nothing changed")]
    FillTooOld { fill: Uuid },
    #[error("the revert's run lock session is gone (another agent may have taken over); rolled back, nothing changed")]
    LostLock,
    #[error("cannot lock or reach the database")]
    Lock(#[from] DbError),
    #[error("revert failed (rolled back)")]
    Db(#[from] DbErr),
    #[error(transparent)]
    Commit(#[from] MergeError),
}

impl RevertError {
    /// `refused` when the journal or the table makes an exact revert impossible.
    pub(crate) fn outcome(&self) -> Outcome {
        match self {
            Self::Busy | Self::Lock(_) | Self::Db(_) | Self::Commit(_) | Self::LostLock => {
                Outcome::Failed
            }
            _ => Outcome::Refused,
        }
    }
}

fn stmt(sql: &str, values: Vec<Value>) -> Statement {
    Statement::from_sql_and_values(DbBackend::Postgres, sql, values)
}

fn utc(t: NaiveDateTime) -> String {
    t.and_utc().to_rfc3339()
}

/// Runs `revert` and returns its summary; records it as a run (trigger `revert`).
#[tracing::instrument(name = "revert", skip_all, fields(load_id = %load_id))]
pub(crate) async fn run_revert(
    ctx: &SyncContext,
    target: Target,
    dry_run: bool,
    allow_mass_delete: bool,
    load_id: LoadId,
) -> RevertSummary {
    let started = Instant::now();
    let mut summary = RevertSummary {
        outcome: Outcome::Failed,
        load_id,
        undone: Vec::new(),
        inserted: 0,
        updated: 0,
        deleted: 0,
        journaled: 0,
        left: 0,
        left_examples: Vec::new(),
        held_back: None,
        duration: Duration::ZERO,
        reason: None,
    };
    let guard = merge::Guard {
        max_delete_ratio: ctx.settings.guard.max_delete_ratio,
        allow_mass_delete,
        // A revert puts names back; only its deletes are guarded.
        max_update_ratio: 1.0,
        allow_mass_update: false,
        empty_file: None,
    };
    if let Err(e) = locked(ctx, target, dry_run, guard, &mut summary).await {
        summary.outcome = e.outcome();
        summary.reason = Some(error_chain(&e));
    }
    summary.duration = started.elapsed();
    if summary.outcome == Outcome::Reverted {
        super::prune_journal(ctx).await;
    }
    // One event at the end, at the level `sync finished` would have.
    macro_rules! finished {
        ($level:expr) => {
            tracing::event!(
                $level,
                outcome = %summary.outcome,
                undone = summary.undone.len(),
                inserted = summary.inserted,
                updated = summary.updated,
                deleted = summary.deleted,
                journaled = summary.journaled,
                left = summary.left,
                reason = summary.reason.as_deref().map(tracing::field::display),
                "revert finished"
            )
        };
    }
    match super::finished_level(summary.outcome) {
        Level::ERROR => finished!(Level::ERROR),
        Level::WARN => finished!(Level::WARN),
        _ => finished!(Level::INFO),
    }
    summary
}

async fn locked(
    ctx: &SyncContext,
    target: Target,
    dry_run: bool,
    guard: merge::Guard,
    summary: &mut RevertSummary,
) -> Result<(), RevertError> {
    let db = &ctx.db;
    let load_id = summary.load_id;
    let mut lock = AdvisoryLock::try_run_lock(&ctx.settings.database.url).await?;
    let lock_pid = lock.as_ref().map(AdvisoryLock::pid);
    let work = async {
        let Some(lock_pid) = lock_pid else {
            runs::start(db, load_id, Trigger::Revert, "", None).await?;
            return Err(RevertError::Busy);
        };
        runs::recover(db).await?;
        runs::start(db, load_id, Trigger::Revert, "", None).await?;
        if !ctx.settings.retention.journal.enabled() {
            return Err(RevertError::JournalOff);
        }
        let wait = ctx.settings.database.lock_wait_timeout;
        let txn = db.begin().await?;
        txn.execute_unprepared(session::OWN_WRITE).await?;
        let session = merge::session(&txn).await?;
        let undone = async {
            merge::bound_lock_waits(&txn, wait).await?;
            // A dry run only previews: it makes other writers wait for nothing.
            if !dry_run {
                merge::lock_writers(&txn)
                    .await
                    .map_err(|source| MergeError::Step {
                        step: merge::Step::Lock,
                        source,
                    })?;
            }
            undo(&txn, load_id, target, guard).await
        }
        .await;
        let (runs, changed) = match undone {
            Ok(x) => x,
            Err(e) => {
                // Nothing may stay: the rollback is the compensation.
                txn.rollback().await?;
                return Err(match e {
                    RevertError::Commit(e) => {
                        RevertError::Commit(merge::explain_lock_timeout(db, e, wait).await)
                    }
                    RevertError::Db(source) if merge::is_lock_timeout(&source) => {
                        RevertError::Commit(
                            merge::explain_lock_timeout(
                                db,
                                MergeError::Step {
                                    step: merge::Step::Lock,
                                    source,
                                },
                                wait,
                            )
                            .await,
                        )
                    }
                    e => e,
                });
            }
        };
        summary.left = changed.left;
        summary.left_examples = changed.left_examples.clone();
        summary.inserted = changed.inserted;
        summary.updated = changed.updated;
        summary.deleted = changed.deleted;
        summary.journaled = changed.inserted + changed.updated + changed.deleted;
        summary.undone = runs;
        let counts = Counts {
            inserted: changed.inserted,
            updated: changed.updated,
            deleted: changed.deleted,
            journaled: summary.journaled,
            ..Counts::default()
        };
        if dry_run {
            txn.rollback().await?;
            if let Some(held) = held_back(db, &summary.undone).await? {
                describe(db, load_id, &held).await?;
            }
            runs::finish(db, load_id, Outcome::DryRun, &counts, None, None).await?;
            summary.outcome = Outcome::DryRun;
            return Ok(());
        }
        let held = held_back(&txn, &summary.undone)
            .await?
            .ok_or(RevertError::Nothing)?;
        record(&txn, load_id, &summary.undone, &held).await?;
        journal::seal(&txn, load_id, summary.journaled, false).await?;
        runs::finish(&txn, load_id, Outcome::Reverted, &counts, None, None).await?;
        journal::order(&txn, load_id).await?;
        journal::mark_xid(&txn, load_id, false).await?;
        // As the merge's verify: nobody else may have taken over meanwhile.
        if !merge::holds_run_lock(&txn, lock_pid).await? {
            txn.rollback().await?;
            return Err(RevertError::LostLock);
        }
        merge::commit(db, txn, load_id, &session, Outcome::Reverted).await?;
        summary.outcome = Outcome::Reverted;
        summary.held_back = Some(held.file);
        Ok(())
    };
    // As a sync's: a database that stops answering fails the revert within
    // DB_TIMEOUT (docs/configuration.md#variables); its transaction never commits.
    let result = match lock.as_mut() {
        Some(held) => tokio::select! {
            result = work => result,
            e = held.stalled(ctx.settings.database.timeout) => Err(RevertError::Lock(e)),
        },
        None => work.await,
    };
    // A stalled database is not asked anything more: the next run's recovery
    // marks this revert failed.
    let stalled = matches!(result, Err(RevertError::Lock(DbError::Stalled(_))));
    if let (Err(e), false) = (&result, stalled) {
        if let Err(record) = runs::finish(
            db,
            load_id,
            e.outcome(),
            &Counts::default(),
            Some(&error_chain(e)),
            None,
        )
        .await
        {
            tracing::error!(error = %error_chain(&record), "could not record the revert's outcome; the next run marks it failed");
        }
    }
    if let Some(lock) = lock {
        lock.release().await;
    }
    result
}

/// Chooses and checks the runs, then undoes them in `txn` (not committed).
async fn undo(
    txn: &DatabaseTransaction,
    load_id: LoadId,
    target: Target,
    guard: merge::Guard,
) -> Result<(Vec<UndoneRun>, Undone), RevertError> {
    let target = match target {
        Target::Run(id) => id,
        Target::Last => {
            let row = txn
                .query_one(stmt(sync_runs::LAST_REVERTIBLE, vec![]))
                .await?
                .ok_or(RevertError::Nothing)?;
            row.try_get("", "load_id")?
        }
    };
    let row = txn
        .query_one(stmt(sync_runs::REVERT_TARGET, vec![target.into()]))
        .await?
        .ok_or(RevertError::Unknown(target))?;
    let outcome: String = row.try_get("", "outcome")?;
    if outcome != Outcome::Synced.as_str() {
        return Err(RevertError::NotSynced {
            load_id: target,
            outcome,
        });
    }
    if let Some(by) = row.try_get::<Option<Uuid>>("", "reverted_by")? {
        return Err(RevertError::AlreadyReverted {
            load_id: target,
            by,
        });
    }
    // Every synced run has its place in the commit order (journal::order; the
    // migration numbered the earlier ones).
    let since: i64 = row.try_get::<Option<i64>>("", "commit_seq")?.unwrap_or(0);
    // Row locks on the runs: a concurrent prune of their journal waits, or has
    // committed and `journaled` reads NULL.
    let rows = txn
        .query_all(stmt(sync_runs::TO_UNDO, vec![since.into()]))
        .await?;
    let mut runs = Vec::with_capacity(rows.len());
    let mut filled = false;
    let mut fill_xid: Option<String> = None;
    for row in &rows {
        if filled {
            // An older run than one that filled an empty table: the table was
            // emptied outside the agent in between.
            let fill = runs.last().map(|r: &UndoneRun| r.load_id);
            return Err(RevertError::PastFill {
                fill: fill.unwrap_or_default(),
            });
        }
        filled = row.try_get("", "filled")?;
        fill_xid = row.try_get("", "write_xid")?;
        let run = UndoneRun {
            load_id: row.try_get("", "load_id")?,
            started_at: utc(row.try_get("", "started_at")?),
            file: row.try_get("", "file")?,
            trigger: row.try_get("", "trigger")?,
            content_hash: row.try_get("", "content_hash")?,
        };
        let expected: Option<i64> = row.try_get("", "journaled")?;
        let found: i64 = row.try_get("", "found")?;
        match expected {
            None => {
                return Err(RevertError::NoJournal {
                    load_id: run.load_id,
                    started_at: run.started_at,
                })
            }
            Some(expected) if expected != found => {
                return Err(RevertError::Incomplete {
                    load_id: run.load_id,
                    found: convert::count("found", found).map_err(DbErr::from)?,
                    expected: convert::count("journaled", expected).map_err(DbErr::from)?,
                })
            }
            Some(_) => {}
        }
        runs.push(run);
    }
    let ids: Vec<Uuid> = runs.iter().map(|r| r.load_id).collect();
    if let Some(drift) = journal::drift(txn, &ids).await? {
        return Err(RevertError::Drift {
            newest: ids[0],
            count: drift.count,
            examples: drift.examples,
        });
    }
    let current: i64 = txn
        .query_one(stmt(followers::COUNT, vec![]))
        .await?
        .map(|r| r.try_get_by_index(0))
        .transpose()?
        .unwrap_or(0);
    let current = convert::count("count(*)", current).map_err(DbErr::from)?;
    let undone = if filled {
        // Before a run that filled an empty table, the table was empty: what
        // that fill wrote goes, what others wrote since stays (and is named).
        let fill = ids[ids.len() - 1];
        let xid = fill_xid.ok_or(RevertError::FillUnknown { fill })?;
        if journal::fill_too_old(txn, &xid).await? {
            return Err(RevertError::FillTooOld { fill });
        }
        let later = &ids[..ids.len() - 1];
        let removed = journal::unfill(txn, load_id, later).await?;
        let mut undone = journal::undo(txn, load_id, later, true).await?;
        undone.deleted += removed;
        (undone.left, undone.left_examples) = journal::left(txn).await?;
        undone
    } else {
        journal::undo(txn, load_id, &ids, false).await?
    };
    if guard.refuses_deletes(undone.deleted, current) {
        return Err(RevertError::MassDelete {
            deleted: undone.deleted,
            current,
            ratio: guard.max_delete_ratio,
        });
    }
    Ok((runs, undone))
}

/// What a revert holds back: a file and its content hash.
struct Held {
    file: String,
    content_hash: Option<String>,
}

/// The content the revert holds back: the newest undone run's, unless the table
/// is already on a reverted state, whose held-back content stays held back (the
/// file in place has not been applied since; reverting further back must not
/// release it).
async fn held_back(db: &impl ConnectionTrait, runs: &[UndoneRun]) -> Result<Option<Held>, DbErr> {
    let held = db
        .query_one(stmt(
            table_status::HELD_BACK,
            vec![runs::TARGET_TABLE.into(), Outcome::Reverted.as_str().into()],
        ))
        .await?;
    if let Some(row) = held {
        return Ok(Some(Held {
            file: row.try_get("", "file")?,
            content_hash: row.try_get("", "content_hash")?,
        }));
    }
    Ok(runs.first().map(|newest| Held {
        file: newest.file.clone(),
        content_hash: newest.content_hash.clone(),
    }))
}

/// The revert's record names the file it holds back and its content hash.
async fn describe(db: &impl ConnectionTrait, load_id: LoadId, held: &Held) -> Result<(), DbErr> {
    db.execute(stmt(
        sync_runs::DESCRIBE,
        vec![
            load_id.uuid().into(),
            held.file.clone().into(),
            held.content_hash.clone().into(),
        ],
    ))
    .await?;
    Ok(())
}

/// Marks the runs undone and points `table_status` at the revert, with the
/// held-back content hash: that content is skipped until it changes.
async fn record(
    db: &impl ConnectionTrait,
    load_id: LoadId,
    runs: &[UndoneRun],
    held: &Held,
) -> Result<(), DbErr> {
    let ids: Vec<Uuid> = runs.iter().map(|r| r.load_id).collect();
    db.execute(stmt(
        sync_runs::MARK_UNDONE,
        vec![load_id.uuid().into(), ids.into()],
    ))
    .await?;
    describe(db, load_id, held).await?;
    db.execute(stmt(
        table_status::REVERTED,
        vec![
            load_id.uuid().into(),
            held.content_hash.clone().into(),
            runs::TARGET_TABLE.into(),
        ],
    ))
    .await?;
    db.execute_unprepared(table_status::RECORD).await?;
    Ok(())
}
