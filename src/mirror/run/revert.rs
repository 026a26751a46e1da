//! The revert of a generic mirror's newest run (docs/mirrors.md#revert), as the
//! followers' revert (docs/sync.md, "Journal, revert and history"): under the
//! run lock, in one transaction holding the table's writer lock (its writes
//! the agent's own, `OWN_WRITE`; a table that does not exist is refused
//! before its lock, `table_present`): the newest run in commit order that changed
//! the table and is not reverted, refused unless its whole journal is kept and
//! the table is still exactly what it left for every row it changed and the
//! definition is the one it merged with (else the result would not be exact); each undo statement checked against the
//! journal's count of its operation; the run marked reverted and the mirror put
//! on a reverted state, which holds the content in place back until the file
//! changes (or a forced sync); the run lock checked just before the commit.

use super::merge::{count, db_error, holds_lock, lock_table};
use super::{run_lock, stmt, MirrorRevert, MirrorRunError};
use crate::config::DatabaseUrl;
use crate::mirror::MirrorSpec;
use crate::storage::mirror::{definition_fingerprint, MirrorSql};
use crate::storage::session::OWN_WRITE;
use sea_orm::{
    ConnectionTrait, DatabaseConnection, DatabaseTransaction, QueryResult, TransactionTrait, Value,
};

/// Undoes the mirror's newest run that changed its table and is not reverted
/// yet, from its journal (the steps above). The table is unchanged after any
/// error.
pub async fn revert_mirror_last(
    db: &DatabaseConnection,
    url: &DatabaseUrl,
    spec: &MirrorSpec,
    lock_wait: std::time::Duration,
) -> Result<MirrorRevert, MirrorRunError> {
    revert_mirror_last_within(db, url, spec, lock_wait, None).await
}

/// `revert_mirror_last`, failed within `db_timeout` (`DB_TIMEOUT`) when the
/// database stops answering (docs/guarantees.md#database-faults); `None`: no bound.
pub async fn revert_mirror_last_within(
    db: &DatabaseConnection,
    url: &DatabaseUrl,
    spec: &MirrorSpec,
    lock_wait: std::time::Duration,
    db_timeout: Option<std::time::Duration>,
) -> Result<MirrorRevert, MirrorRunError> {
    let lock = run_lock(url, spec).await?;
    let pid = lock.pid();
    let work = async {
        let txn = db.begin().await.map_err(|e| db_error(spec, "begin", e))?;
        let done = async {
            let done = revert_in(&txn, spec, lock_wait, pid).await?;
            record_revert(&txn, spec, &done).await?;
            Ok(done)
        }
        .await;
        match done {
            Ok(done) => {
                txn.commit()
                    .await
                    .map_err(|e| db_error(spec, "commit", e))?;
                Ok(done)
            }
            Err(e) => {
                let _ = txn.rollback().await;
                Err(e)
            }
        }
    };
    let stalled = async {
        match db_timeout {
            Some(timeout) => lock.stalled(timeout).await,
            None => std::future::pending().await,
        }
    };
    let result = tokio::select! {
        result = work => result,
        e = stalled => Err(MirrorRunError::Lock { mirror: spec.name.to_string(), source: e }),
    };
    lock.release().await;
    result
}

/// The revert's own run record, in its transaction: a `sync_runs` row of the
/// mirror (trigger `revert`, outcome `reverted`, the rows written back as
/// `updated`), and the undone run's `reverted_by` naming it.
async fn record_revert(
    txn: &DatabaseTransaction,
    spec: &MirrorSpec,
    done: &MirrorRevert,
) -> Result<(), MirrorRunError> {
    let at = |e| db_error(spec, "record", e);
    let revert = done.revert_load_id;
    crate::runs::start_of(
        txn,
        spec.name.as_str(),
        revert,
        crate::domain::Trigger::Revert,
        "",
        None,
    )
    .await
    .map_err(at)?;
    let counts = crate::domain::Counts {
        updated: done.changed,
        ..crate::domain::Counts::default()
    };
    crate::runs::finish(
        txn,
        revert,
        crate::domain::Outcome::Reverted,
        &counts,
        None,
        None,
    )
    .await
    .map_err(at)?;
    crate::runs::mark_reverted(txn, done.load_id, revert)
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

/// Refuses, before the table's lock, a revert of a mirror whose table does
/// not exist: never synced (`NothingToRevert`: no run changed it), or dropped
/// since its newest run (`TableMissing`: nothing to write back to).
async fn table_present(
    txn: &DatabaseTransaction,
    sql: &MirrorSql<'_>,
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
    let run = newest_run(txn, sql).await?;
    Err(MirrorRunError::TableMissing {
        mirror: spec.name.to_string(),
        table: spec.table.to_string(),
        load_id: run.try_get_by_index(0).map_err(at)?,
    })
}

#[tracing::instrument(skip_all, fields(mirror = %spec.name))]
async fn revert_in(
    txn: &DatabaseTransaction,
    spec: &MirrorSpec,
    lock_wait: std::time::Duration,
    lock_pid: i32,
) -> Result<MirrorRevert, MirrorRunError> {
    let at = |source| db_error(spec, "revert", source);
    let mirror = spec.name.to_string();
    let sql = MirrorSql::new(spec);
    txn.execute_unprepared(OWN_WRITE).await.map_err(at)?;
    table_present(txn, &sql).await?;
    lock_table(txn, &sql, lock_wait).await?;
    let run = newest_run(txn, &sql).await?;
    let load_id: uuid::Uuid = run.try_get_by_index(0).map_err(at)?;
    let journaled: Option<i64> = run.try_get_by_index(1).map_err(at)?;
    let kept: i64 = run.try_get_by_index(2).map_err(at)?;
    let fingerprint: Option<String> = run.try_get_by_index(3).map_err(at)?;
    // The journal's states are of the definition the run merged with.
    if fingerprint.as_deref() != Some(definition_fingerprint(spec).as_str()) {
        return Err(MirrorRunError::DefinitionChanged { mirror, load_id });
    }
    match journaled {
        None | Some(0) => return Err(MirrorRunError::NoJournal { mirror, load_id }),
        Some(expected) if expected != kept => {
            return Err(MirrorRunError::JournalIncomplete {
                mirror,
                load_id,
                found: count(kept),
                expected: count(expected),
            })
        }
        Some(_) => {}
    }
    let load = || vec![Value::from(load_id), Value::from(mirror.clone())];
    let drifted = txn
        .query_all(stmt(&sql.revert_drift(), load()))
        .await
        .map_err(at)?;
    if let Some(first) = drifted.first() {
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
        return Err(MirrorRunError::RevertDrift {
            mirror,
            load_id,
            count: count(total),
            examples,
        });
    }
    let counts = txn
        .query_one(stmt(&sql.revert_counts(), load()))
        .await
        .map_err(at)?
        .ok_or_else(|| {
            at(sea_orm::DbErr::RecordNotFound(
                "the journal's counts".into(),
            ))
        })?;
    let expected = |i| counts.try_get_by_index::<i64>(i).map(count).map_err(at);
    let (inserts, updates, deletes) = (expected(0)?, expected(1)?, expected(2)?);
    let mut statements = Vec::new();
    if let Some(update) = sql.revert_updates() {
        statements.push(("revert of the updates", update, updates));
    } else if updates > 0 {
        return Err(MirrorRunError::RevertMismatch {
            mirror,
            op: "revert of the updates",
            expected: updates,
            actual: 0,
        });
    }
    statements.push(("revert of the inserts", sql.revert_inserts(), inserts));
    statements.push(("revert of the deletes", sql.revert_deletes(), deletes));
    let mut changed = 0;
    for (op, statement, expected) in statements {
        let done = txn
            .execute(stmt(&statement, load()))
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
    txn.execute(stmt(&sql.mark_reverted(), vec![Value::from(load_id)]))
        .await
        .map_err(at)?;
    txn.execute(stmt(
        &sql.record_revert(),
        vec![
            Value::from(mirror.clone()),
            Value::from(load_id),
            Value::from(spec.table.sql()),
        ],
    ))
    .await
    .map_err(at)?;
    holds_lock(txn, &sql, lock_pid).await?;
    Ok(MirrorRevert {
        mirror,
        load_id,
        revert_load_id: crate::domain::LoadId::new(),
        changed,
    })
}
