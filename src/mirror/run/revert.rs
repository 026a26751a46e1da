//! The revert of a generic mirror (docs/mirrors.md#revert), with the followers'
//! revert's rules (docs/operations.md#revert, #when-a-revert-refuses): under the
//! run lock, recorded in `sync_runs` as a run of the mirror (trigger `revert`)
//! before anything else, then in one transaction holding the table's writer
//! lock (its writes the agent's own, `OWN_WRITE`; a table that does not exist
//! is refused before its lock, `table_present`): the runs to undo (`--last`:
//! the newest in commit order that changed the table and is not reverted;
//! `LOAD_ID`: every run not reverted from the newest back to and including that
//! one), refused unless each that changed the table has its whole journal and
//! merged with the current definition, and the table is still exactly what the
//! newest of them left for every row they changed (else the result would not be
//! exact); the delete guard (the mirror's `max_delete_ratio`,
//! `--allow-mass-delete`); each undo statement checked against the plan's count;
//! the runs marked reverted and the mirror put on a reverted state, which holds
//! the content in place back until the file changes (or a forced sync); the run
//! lock checked just before the commit. A dry run does all of it and rolls back.
//! A refusal or failure finishes the record with its reason, as the followers'
//! revert does.

use super::merge::{count, db_error, holds_lock, lock_table};
use super::{run_lock, stmt, MirrorRevert, MirrorRunError, MirrorUndoneRun};
use crate::config::DatabaseUrl;
use crate::db::DbError;
use crate::domain::{Counts, LoadId, Outcome, Trigger};
use crate::errors::error_chain;
use crate::mirror::MirrorSpec;
use crate::pipeline::merge::Guard;
use crate::storage::mirror::{definition_fingerprint, MirrorSql};
use crate::storage::session::OWN_WRITE;
use sea_orm::{
    ConnectionTrait, DatabaseConnection, DatabaseTransaction, QueryResult, TransactionTrait, Value,
};
use std::time::Duration;
use uuid::Uuid;

/// Which runs a revert undoes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RevertTarget {
    /// The newest run (in commit order) that changed the table and is not reverted.
    Last,
    /// Every run not reverted yet from the newest back to and including this one.
    Run(Uuid),
}

/// How a revert runs.
#[derive(Clone, Copy, Debug)]
pub struct MirrorRevertOptions {
    pub target: RevertTarget,
    /// Do it all in a transaction that is rolled back; record a `dry_run` run.
    pub dry_run: bool,
    /// `MAX_DELETE_RATIO`, where the mirror has no `max_delete_ratio` of its own.
    pub max_delete_ratio: f64,
    pub allow_mass_delete: bool,
    /// `LOCK_WAIT_TIMEOUT`: the longest wait for another writer of the table.
    pub lock_wait: Duration,
    /// `DB_TIMEOUT`: the revert fails within it when the database stops
    /// answering (docs/guarantees.md#database-faults); `None`: no bound.
    pub db_timeout: Option<Duration>,
    /// The revert's own run record (`sync_runs`).
    pub load_id: LoadId,
}

impl MirrorRevertOptions {
    /// `--last`, with the default guard (`MAX_DELETE_RATIO` 0.5) and no
    /// approval, a new record.
    pub fn last(lock_wait: Duration) -> Self {
        Self {
            target: RevertTarget::Last,
            dry_run: false,
            max_delete_ratio: super::MirrorRunOptions::default().max_delete_ratio,
            allow_mass_delete: false,
            lock_wait,
            db_timeout: None,
            load_id: LoadId::new(),
        }
    }
}

impl MirrorRunError {
    /// A revert's outcome after this error: refused where the state of the
    /// mirror said no (nothing to revert, no journal, drift, busy, the guard),
    /// failed where the database did.
    pub fn revert_outcome(&self) -> Outcome {
        match self {
            Self::Db { .. } | Self::Lock { .. } | Self::Copy { .. } | Self::Lost { .. } => {
                Outcome::Failed
            }
            _ => Outcome::Refused,
        }
    }
}

/// Undoes the mirror's newest run that changed its table and is not reverted
/// yet, from its journal (the steps above), with the default guard. The table
/// is unchanged after any error.
pub async fn revert_mirror_last(
    db: &DatabaseConnection,
    url: &DatabaseUrl,
    spec: &MirrorSpec,
    lock_wait: Duration,
) -> Result<MirrorRevert, MirrorRunError> {
    revert_mirror(db, url, spec, MirrorRevertOptions::last(lock_wait)).await
}

/// `revert_mirror_last`, failed within `db_timeout` (`DB_TIMEOUT`) when the
/// database stops answering (docs/guarantees.md#database-faults); `None`: no bound.
pub async fn revert_mirror_last_within(
    db: &DatabaseConnection,
    url: &DatabaseUrl,
    spec: &MirrorSpec,
    lock_wait: Duration,
    db_timeout: Option<Duration>,
) -> Result<MirrorRevert, MirrorRunError> {
    let options = MirrorRevertOptions {
        db_timeout,
        ..MirrorRevertOptions::last(lock_wait)
    };
    revert_mirror(db, url, spec, options).await
}

/// Reverts (or with `dry_run` plans the revert of) the runs `options.target`
/// names, from their journal (the steps above), recorded as the run
/// `options.load_id`. The table is unchanged after any error, and after a dry run.
#[tracing::instrument(name = "revert", skip_all, fields(mirror = %spec.name, load_id = %options.load_id))]
pub async fn revert_mirror(
    db: &DatabaseConnection,
    url: &DatabaseUrl,
    spec: &MirrorSpec,
    options: MirrorRevertOptions,
) -> Result<MirrorRevert, MirrorRunError> {
    let load_id = options.load_id;
    let lock = match run_lock(url, spec).await {
        Ok(lock) => lock,
        Err(e) => {
            // As the followers' revert: a busy one is recorded; one that
            // cannot reach the database cannot be.
            if matches!(e, MirrorRunError::Busy { .. }) {
                record_unlocked(db, spec, load_id, &e).await;
            }
            return Err(e);
        }
    };
    let pid = lock.pid();
    let work = async {
        // One transaction, as a sync's: the recovery of the table's
        // interrupted runs and this revert's record, with its table.
        let begun = async {
            let table = spec.table.to_string();
            let txn = db.begin().await?;
            crate::runs::recover_mirror(&txn, spec.name.as_str(), &table).await?;
            crate::runs::start_mirror_run(
                &txn,
                spec.name.as_str(),
                &table,
                load_id,
                Trigger::Revert,
                "",
            )
            .await?;
            txn.commit().await
        }
        .await;
        begun.map_err(|e| db_error(spec, "record", e))?;
        let txn = db.begin().await.map_err(|e| db_error(spec, "begin", e))?;
        let done = async {
            let (done, held) = revert_in(&txn, spec, &options).await?;
            if !options.dry_run {
                record_revert(&txn, spec, &done, &held).await?;
                // Last, just before the commit: nobody else may have taken over.
                holds_lock(&txn, &MirrorSql::new(spec), pid).await?;
            }
            Ok((done, held))
        }
        .await;
        match done {
            Ok((done, held)) if options.dry_run => {
                txn.rollback()
                    .await
                    .map_err(|e| db_error(spec, "rollback", e))?;
                let at = |e| db_error(spec, "record", e);
                crate::runs::describe_revert(db, load_id, &held.file, held.hash.as_deref())
                    .await
                    .map_err(at)?;
                crate::runs::finish(db, load_id, Outcome::DryRun, &counts(&done), None, None)
                    .await
                    .map_err(at)?;
                Ok(done)
            }
            Ok((mut done, held)) => {
                txn.commit()
                    .await
                    .map_err(|e| db_error(spec, "commit", e))?;
                done.held_back = Some(held.file);
                Ok(done)
            }
            Err(e) => {
                let _ = txn.rollback().await;
                Err(e)
            }
        }
    };
    let stalled = async {
        match options.db_timeout {
            Some(timeout) => lock.stalled(timeout).await,
            None => std::future::pending().await,
        }
    };
    let result = tokio::select! {
        result = work => result,
        e = stalled => Err(MirrorRunError::Lock { mirror: spec.name.to_string(), source: e }),
    };
    // A stalled database is asked nothing more: the next run's recovery marks
    // the record failed.
    if let Err(e) = &result {
        if !matches!(
            e,
            MirrorRunError::Lock {
                source: DbError::Stalled(_),
                ..
            }
        ) {
            let reason = error_chain(e);
            let finished = crate::runs::finish(
                db,
                load_id,
                e.revert_outcome(),
                &Counts::default(),
                Some(&reason),
                None,
            )
            .await;
            if let Err(record) = finished {
                tracing::error!(error = %error_chain(&record), "could not record the revert's outcome; the next run marks it failed");
            }
        }
    }
    lock.release().await;
    result
}

/// What the revert's record counts: rows restored (`inserted`), put back
/// (`updated`) and removed (`deleted`), as the followers' revert counts them.
fn counts(done: &MirrorRevert) -> Counts {
    Counts {
        inserted: done.inserted,
        updated: done.updated,
        deleted: done.deleted,
        ..Counts::default()
    }
}

/// Records a revert refused before it took the run lock, in one transaction
/// (no other run's recovery ever sees it `running`); a failure is only logged.
async fn record_unlocked(
    db: &DatabaseConnection,
    spec: &MirrorSpec,
    load_id: LoadId,
    e: &MirrorRunError,
) {
    let reason = error_chain(e);
    let recorded = async {
        let txn = db.begin().await?;
        crate::runs::start_of(&txn, spec.name.as_str(), load_id, Trigger::Revert, "", None).await?;
        crate::runs::finish(
            &txn,
            load_id,
            e.revert_outcome(),
            &Counts::default(),
            Some(&reason),
            None,
        )
        .await?;
        txn.commit().await
    }
    .await;
    if let Err(e) = recorded {
        tracing::warn!(error = %error_chain(&e), "could not record the revert");
    }
}

/// What a revert holds back: the content of the mirror's last sync (its file
/// and hash), which its status keeps.
struct Held {
    file: String,
    hash: Option<String>,
}

/// The revert's own run record, in its transaction: finished `reverted` with
/// its counts, naming the content it holds back; the undone runs' `reverted_by`
/// naming it. A configured mirror's revert keeps no journal of its own
/// (`journaled` stays NULL): `history` shows the undone runs as reverted.
async fn record_revert(
    txn: &DatabaseTransaction,
    spec: &MirrorSpec,
    done: &MirrorRevert,
    held: &Held,
) -> Result<(), MirrorRunError> {
    let at = |e| db_error(spec, "record", e);
    let revert = done.revert_load_id;
    crate::runs::describe_revert(txn, revert, &held.file, held.hash.as_deref())
        .await
        .map_err(at)?;
    crate::runs::finish(txn, revert, Outcome::Reverted, &counts(done), None, None)
        .await
        .map_err(at)?;
    let ids: Vec<Uuid> = done.undone.iter().map(|r| r.load_id).collect();
    crate::runs::mark_reverted(txn, &ids, revert)
        .await
        .map_err(at)
}

/// The mirror's newest run that changed its table and is not reverted
/// (`newest_revertible`), or `NothingToRevert`.
async fn newest_run(
    txn: &DatabaseTransaction,
    sql: &MirrorSql<'_>,
) -> Result<QueryResult, MirrorRunError> {
    let spec = sql.spec();
    let mirror = spec.name.to_string();
    txn.query_one(stmt(
        &sql.newest_revertible(),
        vec![Value::from(mirror.clone())],
    ))
    .await
    .map_err(|e| db_error(spec, "revert", e))?
    .ok_or(MirrorRunError::NothingToRevert { mirror })
}

/// The place in the commit order of the run a `revert LOAD_ID` reaches back
/// to, refused as the followers' revert refuses: a run the mirror does not
/// know, one that did not sync, one already reverted, one whose record is gone.
async fn target_seq(
    txn: &DatabaseTransaction,
    sql: &MirrorSql<'_>,
    target: Uuid,
) -> Result<i64, MirrorRunError> {
    let spec = sql.spec();
    let mirror = spec.name.to_string();
    let at = |source| db_error(spec, "revert", source);
    let row = txn
        .query_one(stmt(
            &sql.run_of(),
            vec![Value::from(mirror.clone()), Value::from(target)],
        ))
        .await
        .map_err(at)?;
    let record = crate::runs::outcome_of(txn, &mirror, target)
        .await
        .map_err(at)?;
    let Some(row) = row else {
        return Err(match record {
            None => MirrorRunError::UnknownRun {
                mirror,
                load_id: target,
            },
            Some((outcome, _)) if outcome != Outcome::Synced.as_str() => {
                MirrorRunError::NotSynced {
                    mirror,
                    load_id: target,
                    outcome,
                }
            }
            // Synced, but its run record (and journal) pruned since.
            Some(_) => MirrorRunError::NoJournal {
                mirror,
                load_id: target,
            },
        });
    };
    let reverted: Option<chrono::DateTime<chrono::Utc>> = row.try_get_by_index(1).map_err(at)?;
    if let Some(at) = reverted {
        return Err(MirrorRunError::AlreadyReverted {
            mirror,
            load_id: target,
            by: record.and_then(|(_, by)| by),
            at: at.to_rfc3339(),
        });
    }
    row.try_get_by_index(0).map_err(at)
}

/// Refuses, before the table's lock, a revert of a mirror whose table does
/// not exist: never synced (`NothingToRevert`: no run changed it), or dropped
/// since the runs (`TableMissing`: nothing to write back to).
async fn table_present(
    txn: &DatabaseTransaction,
    sql: &MirrorSql<'_>,
    target: RevertTarget,
) -> Result<(), MirrorRunError> {
    let spec = sql.spec();
    let at = |source| db_error(spec, "revert", source);
    let exists: bool = txn
        .query_one(stmt(
            MirrorSql::TABLE_EXISTS,
            vec![Value::from(spec.table.sql())],
        ))
        .await
        .map_err(at)?
        .map_or(Ok(false), |r| r.try_get_by_index(0))
        .map_err(at)?;
    if exists {
        return Ok(());
    }
    let load_id = match target {
        RevertTarget::Run(id) => id,
        RevertTarget::Last => newest_run(txn, sql)
            .await?
            .try_get_by_index(0)
            .map_err(at)?,
    };
    Err(MirrorRunError::TableMissing {
        mirror: spec.name.to_string(),
        table: spec.table.to_string(),
        load_id,
    })
}

/// One run to undo, as `revertible_since` reads it.
struct Candidate {
    run: MirrorUndoneRun,
    journaled: Option<i64>,
    kept: i64,
    fingerprint: Option<String>,
    changed: i64,
}

fn candidate(row: &QueryResult) -> Result<Candidate, sea_orm::DbErr> {
    let started: Option<chrono::NaiveDateTime> = row.try_get_by_index(7)?;
    let finished: chrono::DateTime<chrono::Utc> = row.try_get_by_index(6)?;
    Ok(Candidate {
        run: MirrorUndoneRun {
            load_id: row.try_get_by_index(0)?,
            started_at: started.map(|t| t.and_utc().to_rfc3339()),
            finished_at: finished.to_rfc3339(),
            file: row.try_get_by_index(5)?,
            trigger: row.try_get_by_index(8)?,
        },
        journaled: row.try_get_by_index(1)?,
        kept: row.try_get_by_index(2)?,
        fingerprint: row.try_get_by_index(3)?,
        changed: row.try_get_by_index(4)?,
    })
}

/// The runs to undo, newest first, each locked, and each checked: one that
/// changed the table must have merged with the current definition (the
/// journal's states are of its columns) and hold its whole journal.
async fn chosen(
    txn: &DatabaseTransaction,
    sql: &MirrorSql<'_>,
    target: RevertTarget,
    seq: Option<i64>,
) -> Result<Vec<MirrorUndoneRun>, MirrorRunError> {
    let spec = sql.spec();
    let mirror = spec.name.to_string();
    let at = |source| db_error(spec, "revert", source);
    let rows = match (target, seq) {
        (RevertTarget::Run(_), Some(seq)) => txn
            .query_all(stmt(
                &sql.revertible_since(),
                vec![Value::from(mirror.clone()), Value::from(seq)],
            ))
            .await
            .map_err(at)?,
        _ => vec![newest_run(txn, sql).await?],
    };
    let fingerprint = definition_fingerprint(spec);
    let mut runs = Vec::with_capacity(rows.len());
    for row in &rows {
        let c = candidate(row).map_err(at)?;
        let load_id = c.run.load_id;
        if c.changed > 0 {
            if c.fingerprint.as_deref() != Some(fingerprint.as_str()) {
                return Err(MirrorRunError::DefinitionChanged { mirror, load_id });
            }
            match c.journaled {
                None | Some(0) => return Err(MirrorRunError::NoJournal { mirror, load_id }),
                Some(expected) if expected != c.kept => {
                    return Err(MirrorRunError::JournalIncomplete {
                        mirror,
                        load_id,
                        found: count(c.kept),
                        expected: count(expected),
                    })
                }
                Some(_) => {}
            }
        }
        runs.push(c.run);
    }
    if let RevertTarget::Run(id) = target {
        if runs.last().map(|r| r.load_id) != Some(id) {
            // Reverted or pruned between the look-up and the lock.
            return Err(MirrorRunError::NoJournal {
                mirror,
                load_id: id,
            });
        }
    }
    Ok(runs)
}

/// Refuses unless the table is what the runs of the plan (the newest
/// `newest`) left for every row they changed (`revert_drift`).
async fn no_drift(
    txn: &DatabaseTransaction,
    sql: &MirrorSql<'_>,
    newest: Uuid,
) -> Result<(), MirrorRunError> {
    let spec = sql.spec();
    let at = |source| db_error(spec, "revert", source);
    let drifted = txn
        .query_all(stmt(&sql.revert_drift(), vec![]))
        .await
        .map_err(at)?;
    let Some(first) = drifted.first() else {
        return Ok(());
    };
    let total: i64 = first.try_get_by_index(3).map_err(at)?;
    let mut examples = Vec::new();
    for row in &drifted {
        let key: String = row.try_get_by_index(0).map_err(at)?;
        let op: String = row.try_get_by_index(1).map_err(at)?;
        let present: bool = row.try_get_by_index(2).map_err(at)?;
        examples.push(match (op.as_str(), present) {
            ("d", _) => format!("{key}: deleted by the run, present now"),
            ("i", true) => format!("{key}: inserted by the run, changed now"),
            ("i", false) => format!("{key}: inserted by the run, absent now"),
            (_, true) => format!("{key}: changed by the run, changed again now"),
            (_, false) => format!("{key}: changed by the run, absent now"),
        });
    }
    Err(MirrorRunError::RevertDrift {
        mirror: spec.name.to_string(),
        load_id: newest,
        count: count(total),
        examples,
    })
}

/// The plan's parameters: the loads (newest first) and the mirror.
fn loads(spec: &MirrorSpec, ids: &[Uuid]) -> Vec<Value> {
    vec![
        Value::from(ids.to_vec()),
        Value::from(spec.name.to_string()),
    ]
}

#[tracing::instrument(skip_all, fields(mirror = %spec.name))]
async fn revert_in(
    txn: &DatabaseTransaction,
    spec: &MirrorSpec,
    options: &MirrorRevertOptions,
) -> Result<(MirrorRevert, Held), MirrorRunError> {
    let at = |source| db_error(spec, "revert", source);
    let mirror = spec.name.to_string();
    let sql = MirrorSql::new(spec);
    txn.execute_unprepared(OWN_WRITE).await.map_err(at)?;
    let seq = match options.target {
        RevertTarget::Run(id) => Some(target_seq(txn, &sql, id).await?),
        RevertTarget::Last => None,
    };
    table_present(txn, &sql, options.target).await?;
    lock_table(txn, &sql, options.lock_wait).await?;
    let undone = chosen(txn, &sql, options.target, seq).await?;
    let ids: Vec<Uuid> = undone.iter().map(|r| r.load_id).collect();
    // The plan, once: per key, the newest run's state and the oldest's before.
    txn.execute(stmt(&sql.revert_plan(), loads(spec, &ids)))
        .await
        .map_err(at)?;
    no_drift(txn, &sql, ids[0]).await?;
    let planned = txn
        .query_one(stmt(&sql.revert_counts(), vec![]))
        .await
        .map_err(at)?
        .ok_or_else(|| {
            at(sea_orm::DbErr::RecordNotFound(
                "the journal's counts".into(),
            ))
        })?;
    let expected = |i| planned.try_get_by_index::<i64>(i).map(count).map_err(at);
    let (removed, restored, reinserted) = (expected(0)?, expected(1)?, expected(2)?);
    let current: i64 = txn
        .query_one(stmt(&sql.row_count(), vec![]))
        .await
        .map_err(at)?
        .map_or(Ok(0), |r| r.try_get_by_index(0))
        .map_err(at)?;
    let ratio = spec
        .overrides
        .max_delete_ratio
        .unwrap_or(options.max_delete_ratio);
    let guard = Guard {
        max_delete_ratio: ratio,
        allow_mass_delete: options.allow_mass_delete,
        // A revert puts rows back; only its deletes are guarded.
        max_update_ratio: 1.0,
        allow_mass_update: false,
        empty_file: None,
    };
    if guard.refuses_deletes(removed, count(current)) {
        return Err(MirrorRunError::RevertMassDelete {
            mirror,
            deleted: removed,
            current: count(current),
            ratio,
        });
    }
    let mut statements = Vec::new();
    if let Some(update) = sql.revert_updates() {
        statements.push(("revert of the updates", update, restored));
    } else if restored > 0 {
        return Err(MirrorRunError::RevertMismatch {
            mirror,
            op: "revert of the updates",
            expected: restored,
            actual: 0,
        });
    }
    statements.push(("revert of the inserts", sql.revert_inserts(), removed));
    statements.push(("revert of the deletes", sql.revert_deletes(), reinserted));
    let mut changed = 0;
    for (op, statement, expected) in statements {
        let done = txn
            .execute(stmt(&statement, vec![]))
            .await
            .map_err(at)?
            .rows_affected();
        if done != expected {
            return Err(MirrorRunError::RevertMismatch {
                mirror,
                op,
                expected,
                actual: done,
            });
        }
        changed += done;
    }
    let held = held_back(txn, &sql).await?;
    if !options.dry_run {
        txn.execute(stmt(&sql.mark_reverted(), vec![Value::from(ids.clone())]))
            .await
            .map_err(at)?;
        txn.execute(stmt(
            &sql.record_revert(),
            vec![
                Value::from(mirror.clone()),
                Value::from(ids[0]),
                Value::from(spec.table.sql()),
            ],
        ))
        .await
        .map_err(at)?;
    }
    let done = MirrorRevert {
        mirror,
        load_id: ids[0],
        revert_load_id: options.load_id,
        changed,
        inserted: reinserted,
        updated: restored,
        deleted: removed,
        undone,
        dry_run: options.dry_run,
        held_back: None,
    };
    Ok((done, held))
}

/// The content the revert holds back (`held_back`): the mirror's last sync's.
async fn held_back(txn: &DatabaseTransaction, sql: &MirrorSql<'_>) -> Result<Held, MirrorRunError> {
    let spec = sql.spec();
    let at = |source| db_error(spec, "revert", source);
    let row = txn
        .query_one(stmt(
            &sql.held_back(),
            vec![Value::from(spec.name.to_string())],
        ))
        .await
        .map_err(at)?;
    let (hash, file): (Option<String>, Option<String>) = match row {
        Some(row) => (
            row.try_get_by_index(0).map_err(at)?,
            row.try_get_by_index(1).map_err(at)?,
        ),
        None => (None, None),
    };
    Ok(Held {
        file: file.unwrap_or_default(),
        hash,
    })
}
