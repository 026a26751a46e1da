//! The table, the duplicates and the merge of a mirror's run (its revert is in
//! `revert`; docs/mirrors.md#runs). The merge is one transaction: every lock wait bounded
//! by `LOCK_WAIT_TIMEOUT`, the table locked against writers (`SHARE ROW
//! EXCLUSIVE`, as the followers merge: readers go on), the diff, the guard, the
//! journaled writes (each checked against the diff's count) and the run's
//! record; any error rolls it all back. Its writes are the agent's own
//! (`OWN_WRITE`: the table's write counter does not count them). After the
//! commit, under the run lock, the retention of the journal and of the runs
//! (`retain`). The skip check (`trust`) and the table's preparation too.

use super::read::ReadOutcome;
use super::{stmt, MirrorRunError, MirrorRunOptions, MirrorSummary};
use crate::domain::LoadId;
use crate::errors::error_chain;
use crate::mirror::MirrorSpec;
use crate::pipeline::merge::{is_lock_timeout, Guard, MergeError};
use crate::storage::mirror::{definition_fingerprint, CatalogColumn, MirrorSql, TableState, Write};
use crate::storage::session::OWN_WRITE;
use sea_orm::{
    ConnectionTrait, DatabaseConnection, DatabaseTransaction, DbErr, TransactionTrait, Value,
};
use std::path::Path;

pub(super) fn db_error(spec: &MirrorSpec, step: &'static str, source: DbErr) -> MirrorRunError {
    MirrorRunError::Db {
        mirror: spec.name.to_string(),
        step,
        source,
    }
}

pub(super) fn count(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

fn signed(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Checks the mirror's table against its definition and returns whether it
/// is absent. An existing table gets its write counter when it is missing
/// (not in a dry run); an absent one is left absent: the merge creates it, its
/// schema too, in its own transaction (`create_in`), so a first run refused,
/// failed or killed leaves no table (docs/mirrors.md#runs).
#[tracing::instrument(skip_all, fields(mirror = %sql.spec().name))]
pub(super) async fn prepare_table(
    db: &DatabaseConnection,
    sql: &MirrorSql<'_>,
    options: &MirrorRunOptions,
) -> Result<bool, MirrorRunError> {
    if check_table(db, sql).await? == TableState::Absent {
        return Ok(true);
    }
    if !options.dry_run {
        ensure_counter(db, sql, options.lock_wait).await?;
    }
    Ok(false)
}

/// Creates the absent table in the merge's transaction `txn`, before its
/// writer lock: its schema when absent (`create_schema`), the table, checked
/// again (someone may have made it since the run found it absent), and its
/// write counter (under a savepoint: a role that cannot install it is warned,
/// as `ensure_counter` does). A rollback, or a crash, undoes all of it.
async fn create_in(
    txn: &DatabaseTransaction,
    sql: &MirrorSql<'_>,
    lock_wait: std::time::Duration,
) -> Result<(), MirrorRunError> {
    let spec = sql.spec();
    let at = |source| db_error(spec, "table", source);
    txn.execute_unprepared(&sql.lock_timeout(crate::convert::millis_int4(lock_wait)))
        .await
        .map_err(at)?;
    let exists: bool = txn
        .query_one(stmt(
            MirrorSql::SCHEMA_EXISTS,
            vec![Value::from(spec.table.schema().to_owned())],
        ))
        .await
        .map_err(at)?
        .map_or(Ok(false), |r| r.try_get_by_index(0))
        .map_err(at)?;
    if !exists {
        create_schema(txn, sql, lock_wait).await?;
    }
    txn.execute_unprepared(&sql.create_table())
        .await
        .map_err(|e| lock_waited(spec, lock_wait, e, String::new()))?;
    check_table(txn, sql).await?;
    let counter = txn.begin().await.map_err(at)?;
    let installed = async {
        counter.execute_unprepared(&sql.install_counter()).await?;
        counter
            .execute(stmt(
                &sql.forget_counter(),
                vec![Value::from(spec.name.to_string())],
            ))
            .await?;
        Ok::<_, DbErr>(())
    }
    .await;
    match installed {
        Ok(()) => counter.commit().await.map_err(at)?,
        Err(e) => {
            counter.rollback().await.map_err(at)?;
            warn_no_counter(spec, "install the write counter on", &e);
        }
    }
    Ok(())
}

/// Creates the table's absent schema in `txn`, under a savepoint: another
/// mirror's first run creating the same schema at once (in its merge's
/// transaction, not committed yet) makes this one wait for its commit, at most
/// `LOCK_WAIT_TIMEOUT` (then `WritersBusy`, naming the wait), and then find it.
async fn create_schema(
    txn: &DatabaseTransaction,
    sql: &MirrorSql<'_>,
    lock_wait: std::time::Duration,
) -> Result<(), MirrorRunError> {
    let spec = sql.spec();
    let at = |source| db_error(spec, "table", source);
    let schema = txn.begin().await.map_err(at)?;
    match schema.execute_unprepared(&sql.create_schema()).await {
        Ok(_) => schema.commit().await.map_err(at),
        // `CREATE SCHEMA IF NOT EXISTS` is not atomic: the other run committed it.
        Err(e)
            if matches!(
                crate::pipeline::merge::sqlstate(&e).as_deref(),
                Some("23505" | "42P06")
            ) =>
        {
            schema.rollback().await.map_err(at)
        }
        Err(e) => {
            let _ = schema.rollback().await;
            let creating = format!(
                "a session creating the schema {} in a transaction not committed yet (another mirror's first run, whose table is in it too?)",
                crate::mirror::quote_identifier(spec.table.schema())
            );
            Err(lock_waited(spec, lock_wait, e, creating))
        }
    }
}

/// A lock wait past `LOCK_WAIT_TIMEOUT` as `WritersBusy` (`blockers` empty:
/// named after the rollback, `name_blockers`); any other error as it is.
fn lock_waited(
    spec: &MirrorSpec,
    lock_wait: std::time::Duration,
    e: DbErr,
    blockers: String,
) -> MirrorRunError {
    if is_lock_timeout(&e) {
        MirrorRunError::WritersBusy {
            mirror: spec.name.to_string(),
            waited: lock_wait,
            blockers,
        }
    } else {
        db_error(spec, "table", e)
    }
}

/// Checks the mirror's existing table against its definition, from the
/// catalog (docs/mirrors.md#an-existing-table); `Absent` when there is none.
pub(crate) async fn check_table(
    db: &impl ConnectionTrait,
    sql: &MirrorSql<'_>,
) -> Result<TableState, MirrorRunError> {
    let spec = sql.spec();
    let at = |source| db_error(spec, "table", source);
    let names = || {
        vec![
            Value::from(spec.table.schema().to_owned()),
            Value::from(spec.table.table().to_owned()),
        ]
    };
    let columns = db
        .query_all(stmt(MirrorSql::CATALOG_COLUMNS, names()))
        .await
        .map_err(at)?
        .iter()
        .map(|r| {
            Ok(CatalogColumn {
                name: r.try_get_by_index(0)?,
                ty: r.try_get_by_index(1)?,
                not_null: r.try_get_by_index(2)?,
                fills_itself: r.try_get_by_index(3)?,
                loose_collation: r.try_get_by_index(4)?,
            })
        })
        .collect::<Result<Vec<_>, DbErr>>()
        .map_err(at)?;
    let keys = db
        .query_all(stmt(MirrorSql::CATALOG_UNIQUE_KEYS, names()))
        .await
        .map_err(at)?
        .iter()
        .map(|r| r.try_get_by_index::<Vec<String>>(0))
        .collect::<Result<Vec<_>, DbErr>>()
        .map_err(at)?;
    Ok(sql.check_table(&columns, &keys)?)
}

/// Installs the table's write counter when it is missing (a new table, the
/// first run after the migration, a table replaced), enabled ALWAYS; an
/// ORIGIN one (as earlier versions installed it, blind under
/// `session_replication_role = replica`) is enabled ALWAYS. Either way the
/// count the last sync saw is forgotten, so an unchanged file is compared
/// once. Where that cannot be done (a role that does not own the table), says
/// so: only a trigger enabled ALWAYS counts, and edits outside the agent are
/// then found by a comparison every `VERIFY_EVERY` (docs/mirrors.md#skip). A
/// trigger someone disabled (`D`) or set to replica only (`R`) is left so.
async fn ensure_counter(
    db: &DatabaseConnection,
    sql: &MirrorSql<'_>,
    lock_wait: std::time::Duration,
) -> Result<(), MirrorRunError> {
    let spec = sql.spec();
    let at = |source| db_error(spec, "table", source);
    let state: Option<String> = db
        .query_one(stmt(
            &sql.counter_state(),
            vec![Value::from(spec.table.sql())],
        ))
        .await
        .map_err(at)?
        .map_or(Ok(None), |r| r.try_get_by_index(0))
        .map_err(at)?;
    let (change, what) = match state.as_deref() {
        None => (sql.install_counter(), "install the write counter on"),
        Some("O") => (sql.counter_always(), "enable the write counter ALWAYS on"),
        Some(_) => return Ok(()),
    };
    let install = async {
        let txn = db.begin().await?;
        txn.execute_unprepared(&sql.lock_writers(crate::convert::millis_int4(lock_wait)))
            .await?;
        txn.execute_unprepared(&change).await?;
        txn.execute(stmt(
            &sql.forget_counter(),
            vec![Value::from(spec.name.to_string())],
        ))
        .await?;
        txn.commit().await
    };
    if let Err(e) = install.await {
        warn_no_counter(spec, what, &e);
    }
    Ok(())
}

/// The warning of a run that could not `what` (install, enable ALWAYS) the
/// table's write counter.
fn warn_no_counter(spec: &MirrorSpec, what: &str, e: &DbErr) {
    tracing::warn!(
        mirror = %spec.name,
        error = %error_chain(e),
        "cannot {what} {} (it needs the table's ownership): edits outside the agent are found by a full comparison of an unchanged file every VERIFY_EVERY (docs/mirrors.md#skip)",
        spec.table
    );
}

/// Whether an unchanged file may be skipped (docs/mirrors.md#skip).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Trust {
    /// The file, the definition and the table are what the last sync or revert
    /// left; `held_back`: a revert holds this content back; `unverified`: the
    /// table has no counting write counter and was compared within
    /// `VERIFY_EVERY`, so it is trusted unverified until then.
    Skip { held_back: bool, unverified: bool },
    /// Run; with why, when the file itself is unchanged.
    Sync(Option<String>),
}

/// Compares the file's hash, the definition's fingerprint, the table's identity
/// and its write counter with what the last sync or revert recorded.
#[tracing::instrument(skip_all, fields(mirror = %sql.spec().name))]
pub(super) async fn trust(
    db: &DatabaseConnection,
    sql: &MirrorSql<'_>,
    hash: &str,
    verify_every: std::time::Duration,
) -> Result<Trust, MirrorRunError> {
    let spec = sql.spec();
    let at = |source| db_error(spec, "status", source);
    let row = db
        .query_one(stmt(
            &sql.skip_check(),
            vec![
                Value::from(spec.name.to_string()),
                Value::from(spec.table.sql()),
                Value::from(verify_every.as_secs_f64()),
            ],
        ))
        .await
        .map_err(at)?
        .ok_or_else(|| at(DbErr::RecordNotFound("the skip check".into())))?;
    let last_hash: Option<String> = row.try_get_by_index(0).map_err(at)?;
    let fingerprint: Option<String> = row.try_get_by_index(1).map_err(at)?;
    let same_table: bool = row.try_get_by_index(2).map_err(at)?;
    let counting: bool = row.try_get_by_index(3).map_err(at)?;
    let now: i64 = row.try_get_by_index(4).map_err(at)?;
    let seen: Option<i64> = row.try_get_by_index(5).map_err(at)?;
    let due: bool = row.try_get_by_index(6).map_err(at)?;
    let reverted: Option<uuid::Uuid> = row.try_get_by_index(7).map_err(at)?;
    if last_hash.as_deref() != Some(hash) {
        return Ok(Trust::Sync(None));
    }
    let table = &spec.table;
    let why = if fingerprint.as_deref() != Some(definition_fingerprint(spec).as_str()) {
        Some("the mirror's definition (table, key, columns or modified_column) changed since the last sync".to_owned())
    } else if !same_table {
        Some(format!(
            "{table} was dropped, replaced or renamed since the last sync"
        ))
    } else {
        match (counting, seen) {
            (true, Some(seen)) if seen == now => None,
            (true, Some(seen)) => Some(format!(
                "{table} was changed outside the agent since the last sync ({} writing statement(s) counted)",
                now.saturating_sub(seen)
            )),
            (true, None) => Some(format!(
                "{table}'s write counter was installed after the last sync: the table is compared with the file"
            )),
            (false, _) if due => Some(format!(
                "{table} has no write counter that counts every write (none, not enabled ALWAYS, or the table has partitions or inheritance children) and was last compared with the file VERIFY_EVERY ago or longer"
            )),
            (false, _) => None,
        }
    };
    // A revert holds this content back: only a changed file or a forced run
    // applies it again, whatever else changed (as the built-in mirror's hash step).
    if let Some(revert) = reverted {
        if let Some(why) = &why {
            tracing::info!(
                mirror = %spec.name,
                reverted_load_id = %revert,
                reason = %why,
                "{table} left as it is while held back: the revert of run {revert} undid this content; it is skipped until the file changes (or a forced sync)"
            );
        }
        return Ok(Trust::Skip {
            held_back: true,
            unverified: false,
        });
    }
    Ok(match why {
        None => Trust::Skip {
            held_back: false,
            unverified: !counting,
        },
        Some(why) => Trust::Sync(Some(why)),
    })
}

/// The run's load, as the merge needs it.
pub(super) struct Load<'a> {
    pub load_id: LoadId,
    /// Backend pid of the session holding the mirror's run lock.
    pub lock_pid: i32,
    pub path: &'a Path,
    /// The guards the merge applies.
    pub guard: Guard,
    /// The table does not exist yet: the merge creates it in its transaction
    /// (a dry run, which creates nothing, plans every staged row as an insert).
    pub absent: bool,
}

/// Whether the session `pid` still holds the mirror's run lock: checked inside
/// the merge and the revert, so a run whose lock session ended (and which
/// another run may have overtaken) never commits.
pub(super) async fn holds_lock(
    txn: &DatabaseTransaction,
    sql: &MirrorSql<'_>,
    pid: i32,
) -> Result<(), MirrorRunError> {
    let spec = sql.spec();
    let held: i64 = txn
        .query_one(stmt(&sql.holds_lock(), vec![Value::from(pid)]))
        .await
        .map_err(|e| db_error(spec, "lock", e))?
        .map_or(Ok(0), |r| r.try_get_by_index(0))
        .map_err(|e| db_error(spec, "lock", e))?;
    if held == 0 {
        return Err(MirrorRunError::Lost {
            mirror: spec.name.to_string(),
        });
    }
    Ok(())
}

/// Resolves the load's repeated keys (the last line wins): how many copies
/// were dropped, and up to 10 keys with their lines.
async fn drop_duplicates(
    db: &DatabaseConnection,
    sql: &MirrorSql<'_>,
    load_id: LoadId,
) -> Result<(i64, Vec<(String, Vec<i64>)>), MirrorRunError> {
    let spec = sql.spec();
    let at = |source| db_error(spec, "dedupe", source);
    let load = || vec![Value::from(load_id.uuid())];
    let extra: i64 = db
        .query_one(stmt(&sql.duplicate_count(), load()))
        .await
        .map_err(at)?
        .map_or(Ok(0), |r| r.try_get_by_index(0))
        .map_err(at)?;
    let mut duplicate_examples = Vec::new();
    if extra > 0 {
        for row in db
            .query_all(stmt(
                &sql.duplicate_examples_text(),
                vec![Value::from(load_id.uuid()), Value::from(10i64)],
            ))
            .await
            .map_err(at)?
        {
            let key: String = row.try_get_by_index(0).map_err(at)?;
            let lines: String = row.try_get_by_index(1).map_err(at)?;
            let lines = lines.split(',').filter_map(|l| l.parse().ok()).collect();
            duplicate_examples.push((key, lines));
        }
        db.execute(stmt(&sql.drop_earlier_copies(), load()))
            .await
            .map_err(at)?;
    }
    Ok((extra, duplicate_examples))
}

/// Resolves repeated keys (the last line wins), then merges. `counts` holds
/// what the run read (rows, rejects, duplicates) as soon as it is known, so a
/// run that fails after reading reports it (docs/operations.md#the-sync-summary).
#[tracing::instrument(skip_all, fields(mirror = %sql.spec().name, load_id = %run.load_id.uuid()))]
pub(super) async fn dedupe_and_merge(
    db: &DatabaseConnection,
    sql: &MirrorSql<'_>,
    options: &MirrorRunOptions,
    run: &Load<'_>,
    read: ReadOutcome,
    stages: &mut crate::pipeline::timings::StageTimes,
    counts: &mut crate::domain::Counts,
) -> Result<MirrorSummary, MirrorRunError> {
    let guard = run.guard;
    let spec = sql.spec();
    let load_id = run.load_id;
    let at = |source| db_error(spec, "dedupe", source);
    let load = || vec![Value::from(load_id.uuid())];
    let (extra, duplicate_examples) = drop_duplicates(db, sql, load_id).await?;
    if !read.protected.is_empty() {
        let rejected: Vec<serde_json::Value> = read
            .protected
            .iter()
            .map(|(key, line)| serde_json::json!({"key": key, "line": line}))
            .collect();
        let values = vec![
            Value::from(load_id.uuid()),
            Value::from(serde_json::Value::Array(rejected).to_string()),
        ];
        db.execute(stmt(&sql.drop_rejected_keys(), values))
            .await
            .map_err(at)?;
    }
    let staged: i64 = db
        .query_one(stmt(&sql.staged_count(), load()))
        .await
        .map_err(at)?
        .map_or(Ok(0), |r| r.try_get_by_index(0))
        .map_err(at)?;
    let mut summary = MirrorSummary {
        mirror: spec.name.to_string(),
        load_id: Some(load_id.uuid()),
        content_hash: read.hash.as_str().to_owned(),
        rows_read: read.rows_read,
        rejected: read.rejected,
        duplicates: count(extra),
        rejects: read.rejects,
        duplicate_examples,
        // Until the merge: the rows left to compare.
        unchanged: count(staged),
        ..MirrorSummary::default()
    };
    *counts = crate::domain::Counts {
        rows_read: summary.rows_read,
        rejected: summary.rejected,
        duplicates: summary.duplicates,
        ..crate::domain::Counts::default()
    };
    let protected: Vec<serde_json::Value> = read.protected.into_iter().map(|(k, _)| k).collect();
    if options.dry_run && run.absent {
        // No table yet: its first run would insert every row staged.
        stages.begin(crate::domain::Stage::Plan);
        summary.inserted = summary.unchanged;
        summary.unchanged = 0;
        if spec
            .overrides
            .journal_keep_runs
            .unwrap_or(options.journal_keep_runs)
            > 0
        {
            summary.journaled = summary.inserted;
        }
        summary.dry_run = true;
        return Ok(summary);
    }
    stages.begin(if options.dry_run {
        crate::domain::Stage::Plan
    } else {
        crate::domain::Stage::Merge
    });
    let txn = db.begin().await.map_err(|e| db_error(spec, "begin", e))?;
    let merged = async {
        txn.execute_unprepared(OWN_WRITE)
            .await
            .map_err(|e| db_error(spec, "begin", e))?;
        if run.absent {
            create_in(&txn, sql, options.lock_wait).await?;
        }
        if !options.dry_run {
            // A dry run reads a snapshot and makes no writer wait
            // (docs/sync.md#dry-run).
            lock_table(&txn, sql, options.lock_wait).await?;
        }
        merge_in(&txn, sql, options, guard, &protected, &mut summary).await?;
        if options.dry_run {
            // The real diff and guard, nothing written: rolled back below.
            return Ok(());
        }
        record(&txn, sql, run.path, &summary).await?;
        // The run's record says synced in the transaction that synced it.
        let journal = spec
            .overrides
            .journal_keep_runs
            .unwrap_or(options.journal_keep_runs)
            > 0;
        finish_record(&txn, spec, load_id, &summary, journal).await?;
        // Last, just before the commit: the merge and its writes may have
        // waited long enough for the lock's session to end and another run
        // to take the table over.
        holds_lock(&txn, sql, run.lock_pid).await
    }
    .await;
    match merged {
        Ok(()) if options.dry_run => {
            let _ = txn.rollback().await;
            summary.dry_run = true;
            Ok(summary)
        }
        Ok(()) => {
            txn.commit()
                .await
                .map_err(|e| db_error(spec, "commit", e))?;
            Ok(summary)
        }
        Err(e) => {
            let _ = txn.rollback().await;
            Err(name_blockers(db, sql, e).await)
        }
    }
}

/// A lock wait that timed out names the sessions holding the table, read
/// after the rollback (the aborted transaction can read nothing).
pub(super) async fn name_blockers(
    db: &DatabaseConnection,
    sql: &MirrorSql<'_>,
    e: MirrorRunError,
) -> MirrorRunError {
    match e {
        MirrorRunError::WritersBusy {
            mirror,
            waited,
            blockers,
        } if blockers.is_empty() => MirrorRunError::WritersBusy {
            mirror,
            waited,
            blockers: crate::pipeline::merge::blockers_by(db, &sql.blockers()).await,
        },
        e => e,
    }
}

/// Bounds lock waits, then locks the table against other writers.
pub(super) async fn lock_table(
    txn: &DatabaseTransaction,
    sql: &MirrorSql<'_>,
    wait: std::time::Duration,
) -> Result<(), MirrorRunError> {
    let spec = sql.spec();
    let lock = sql.lock_writers(crate::convert::millis_int4(wait));
    txn.execute_unprepared(&lock).await.map_err(|e| {
        if is_lock_timeout(&e) {
            MirrorRunError::WritersBusy {
                mirror: spec.name.to_string(),
                waited: wait,
                // Named once the transaction is rolled back (`name_blockers`).
                blockers: String::new(),
            }
        } else {
            db_error(spec, "lock", e)
        }
    })?;
    Ok(())
}

/// The guard's refusal, in the mirror's words.
fn refusal(spec: &MirrorSpec, e: MergeError) -> MirrorRunError {
    let mirror = spec.name.to_string();
    match e {
        MergeError::MassDelete {
            counts,
            current,
            ratio,
        } => MirrorRunError::MassDelete {
            mirror,
            deleted: counts.deleted,
            current,
            ratio,
            counts: Box::new(counts),
        },
        MergeError::MassUpdate {
            counts,
            current,
            ratio,
        } => MirrorRunError::MassUpdate {
            mirror,
            updated: counts.updated,
            current,
            ratio,
            counts: Box::new(counts),
        },
        MergeError::EmptyFile {
            current,
            what,
            counts,
        } => MirrorRunError::EmptyFile {
            mirror,
            current,
            what,
            counts: Box::new(counts),
        },
        other => db_error(spec, "guard", DbErr::Custom(other.to_string())),
    }
}

async fn merge_in(
    txn: &DatabaseTransaction,
    sql: &MirrorSql<'_>,
    options: &MirrorRunOptions,
    guard: Guard,
    protected: &[serde_json::Value],
    summary: &mut MirrorSummary,
) -> Result<(), MirrorRunError> {
    let spec = sql.spec();
    let at = |step| move |source| db_error(spec, step, source);
    let load_id = summary.load_id.unwrap_or_default();
    txn.execute_unprepared(&sql.diff_table())
        .await
        .map_err(at("diff"))?;
    let protected = serde_json::Value::Array(protected.to_vec()).to_string();
    txn.execute(stmt(
        &sql.diff(),
        vec![Value::from(load_id), Value::from(protected)],
    ))
    .await
    .map_err(at("diff"))?;
    let row = txn
        .query_one(stmt(&sql.diff_counts(), vec![]))
        .await
        .map_err(at("counts"))?
        .ok_or_else(|| at("counts")(DbErr::RecordNotFound("the diff's counts".into())))?;
    let get = |i| row.try_get_by_index::<i64>(i).map(count);
    let (inserted, updated, deleted, current) = (
        get(0).map_err(at("counts"))?,
        get(1).map_err(at("counts"))?,
        get(2).map_err(at("counts"))?,
        get(3).map_err(at("counts"))?,
    );
    // What the run would do: the guard's refusal keeps it (docs/operations.md#the-sync-summary).
    let counts = crate::domain::Counts {
        rows_read: summary.rows_read,
        inserted,
        updated,
        deleted,
        unchanged: summary.unchanged.saturating_sub(inserted + updated),
        rejected: summary.rejected,
        duplicates: summary.duplicates,
        journaled: 0,
    };
    let journal = spec
        .overrides
        .journal_keep_runs
        .unwrap_or(options.journal_keep_runs)
        > 0;
    if options.dry_run {
        // The plan, and the guard's verdict on it.
        if journal {
            summary.journaled = inserted + updated + deleted;
        }
        summary.would_refuse = guard
            .check(counts, current)
            .err()
            .map(|e| refusal(spec, e).to_string());
        summary.inserted = inserted;
        summary.updated = updated;
        summary.deleted = deleted;
        summary.unchanged = counts.unchanged;
        return Ok(());
    }
    guard.check(counts, current).map_err(|e| refusal(spec, e))?;
    let writes: [(Option<Write>, u64); 3] = [
        (sql.update(), updated),
        (Some(sql.insert()), inserted),
        (Some(sql.delete()), deleted),
    ];
    for (write, expected) in writes {
        let Some(write) = write else { continue };
        let op = match write.op {
            crate::storage::mirror::Op::Insert => "insert",
            crate::storage::mirror::Op::Update => "update",
            crate::storage::mirror::Op::Delete => "delete",
        };
        let done = if journal {
            let values = vec![Value::from(load_id), Value::from(spec.name.to_string())];
            txn.execute(stmt(&write.journaled(), values)).await
        } else {
            txn.execute_unprepared(write.plain()).await
        }
        .map_err(at(op))?
        .rows_affected();
        if done != expected {
            return Err(MirrorRunError::Mismatch {
                mirror: spec.name.to_string(),
                op,
                expected,
                actual: done,
            });
        }
        if journal {
            summary.journaled += done;
        }
    }
    summary.inserted = inserted;
    summary.updated = updated;
    summary.deleted = deleted;
    summary.unchanged = summary.unchanged.saturating_sub(inserted + updated);
    Ok(())
}

/// Finishes the run's `sync_runs` record as synced, with its counts, hash and
/// journal rows (`journaled`, NULL with the journal off) (a run recorded by
/// `sync` and `serve`; nothing when there is none). The
/// record is locked first (`RUN_OUTCOME`): one no longer `running` (another
/// agent's recovery marked it interrupted, having taken the run lock) is
/// `Lost`, and the merge rolls back.
async fn finish_record(
    txn: &DatabaseTransaction,
    spec: &MirrorSpec,
    load_id: LoadId,
    s: &MirrorSummary,
    journal: bool,
) -> Result<(), MirrorRunError> {
    let at = |e| db_error(spec, "record", e);
    let outcome: Option<String> = txn
        .query_one(stmt(
            MirrorSql::RUN_OUTCOME,
            vec![Value::from(load_id.uuid())],
        ))
        .await
        .map_err(at)?
        .map(|r| r.try_get_by_index(0))
        .transpose()
        .map_err(at)?;
    if let Some(outcome) = outcome {
        if outcome != "running" {
            tracing::warn!(
                mirror = %spec.name,
                outcome = %outcome,
                "the run's record is no longer running (another agent's recovery marked it): rolled back"
            );
            return Err(MirrorRunError::Lost {
                mirror: spec.name.to_string(),
            });
        }
    }
    let counts = s.counts();
    let hash = crate::domain::ContentHash::from_hex(&s.content_hash);
    crate::runs::finish(
        txn,
        load_id,
        crate::domain::Outcome::Synced,
        &counts,
        None,
        Some(&hash),
    )
    .await
    .map_err(at)?;
    // As the built-in mirror's: the journal's rows (NULL: the journal off).
    crate::runs::set_journaled(txn, load_id, journal.then_some(s.journaled))
        .await
        .map_err(at)
}

/// The run's record (`mirror_runs`, its place in the commit order) and the
/// mirror's status (`mirror_status`: the hash, the definition's fingerprint,
/// the table's identity and its write counter now), in the merge's transaction.
async fn record(
    txn: &DatabaseTransaction,
    sql: &MirrorSql<'_>,
    path: &Path,
    s: &MirrorSummary,
) -> Result<(), MirrorRunError> {
    let spec = sql.spec();
    let at = |source| db_error(spec, "record", source);
    let load_id = s.load_id.unwrap_or_default();
    let (mirror, table) = (spec.name.to_string(), spec.table.to_string());
    txn.execute(stmt(
        &sql.record_run(),
        vec![
            Value::from(load_id),
            Value::from(mirror.clone()),
            Value::from(table.clone()),
            Value::from(path.display().to_string()),
            Value::from(s.content_hash.clone()),
            Value::from(signed(s.rows_read)),
            Value::from(signed(s.inserted)),
            Value::from(signed(s.updated)),
            Value::from(signed(s.deleted)),
            Value::from(signed(s.rejected)),
            Value::from(signed(s.duplicates)),
            Value::from(signed(s.journaled)),
            Value::from(definition_fingerprint(spec)),
        ],
    ))
    .await
    .map_err(at)?;
    txn.execute(stmt(
        &sql.record_status(),
        vec![
            Value::from(mirror),
            Value::from(table),
            Value::from(s.content_hash.clone()),
            Value::from(load_id),
            Value::from(definition_fingerprint(spec)),
            Value::from(spec.table.sql()),
        ],
    ))
    .await
    .map_err(at)?;
    Ok(())
}

/// Runs one retention statement pruning at most this many runs.
const PRUNE_BATCH: u64 = 100;

/// After a committed sync, under the run lock, each statement its own
/// transaction (never under the table's writer lock): the journal's retention
/// (the newest `journal_keep_runs` runs that hold a journal keep theirs, none
/// older than `journal_keep_days`) and the run records' (`history`), batch by
/// batch. A failure is logged; the next run tries again.
#[tracing::instrument(skip_all, fields(mirror = %sql.spec().name))]
pub(super) async fn retain(
    db: &DatabaseConnection,
    sql: &MirrorSql<'_>,
    options: &MirrorRunOptions,
) {
    let spec = sql.spec();
    let keep_runs = spec
        .overrides
        .journal_keep_runs
        .unwrap_or(options.journal_keep_runs);
    let batch = || Value::from(crate::convert::saturating_bigint(PRUNE_BATCH));
    let journal = vec![
        Value::from(spec.name.to_string()),
        Value::from(crate::convert::saturating_bigint(keep_runs)),
        Value::from(crate::convert::saturating_int4(options.journal_keep_days)),
        batch(),
    ];
    let runs = vec![
        Value::from(spec.name.to_string()),
        Value::from(
            options
                .history
                .keep_runs
                .map(crate::convert::saturating_bigint),
        ),
        Value::from(
            options
                .history
                .keep_days
                .map(|d| crate::convert::saturating_int4(u64::from(d))),
        ),
        batch(),
    ];
    for (what, result) in [
        ("journal", prune(db, &sql.prune_journal(), journal).await),
        ("runs", prune(db, &sql.prune_runs(), runs).await),
    ] {
        match result {
            Ok(0) => {}
            // As the followers run: JOURNAL_KEEP_RUNS=0 drops what could be reverted.
            Ok(pruned) if what == "journal" && keep_runs == 0 => tracing::warn!(
                mirror = %spec.name,
                runs = pruned,
                "journal_keep_runs=0: the mirror's journal kept so far was dropped; those runs can no longer be reverted"
            ),
            Ok(pruned) => tracing::info!(mirror = %spec.name, pruned, "mirror {what} pruned"),
            Err(e) => tracing::warn!(
                mirror = %spec.name,
                error = %error_chain(&e),
                "could not prune the mirror's {what}; the next run tries again"
            ),
        }
    }
}

/// Runs a retention statement (returning how many runs it pruned) until a batch
/// prunes fewer than `PRUNE_BATCH`.
async fn prune(db: &DatabaseConnection, statement: &str, values: Vec<Value>) -> Result<u64, DbErr> {
    let mut pruned = 0;
    loop {
        let n: i64 = db
            .query_one(stmt(statement, values.clone()))
            .await?
            .map_or(Ok(0), |r| r.try_get_by_index(0))?;
        pruned += count(n);
        if count(n) < PRUNE_BATCH {
            return Ok(pruned);
        }
    }
}
