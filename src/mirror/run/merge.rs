//! The table, the duplicates and the merge of a mirror's run, and its revert
//! (docs/mirrors.md#runs). The merge is one transaction: every lock wait bounded
//! by `LOCK_WAIT_TIMEOUT`, the table locked against writers (`SHARE ROW
//! EXCLUSIVE`, as the followers merge: readers go on), the diff, the guard, the
//! journaled writes (each checked against the diff's count), the run's record
//! and the journal's retention; any error rolls it all back.

use super::read::ReadOutcome;
use super::{run_lock, stmt, MirrorRevert, MirrorRunError, MirrorRunOptions, MirrorSummary};
use crate::config::DatabaseUrl;
use crate::domain::LoadId;
use crate::mirror::store::{CatalogColumn, MirrorSql, TableState, Write};
use crate::mirror::MirrorSpec;
use crate::pipeline::merge::{is_lock_timeout, Guard, MergeError};
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

fn count(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

fn signed(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Checks the mirror's table against its definition; creates it (and its
/// schema) when absent.
pub(super) async fn prepare_table(
    db: &DatabaseConnection,
    sql: &MirrorSql<'_>,
) -> Result<(), MirrorRunError> {
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
    if sql.check_table(&columns, &keys)? == TableState::Absent {
        // `CREATE SCHEMA IF NOT EXISTS` is not atomic: two first runs creating one
        // schema at once, the loser fails with a duplicate, and the schema exists.
        if let Err(e) = db.execute_unprepared(&sql.create_schema()).await {
            if !matches!(
                crate::pipeline::merge::sqlstate(&e).as_deref(),
                Some("23505" | "42P06")
            ) {
                return Err(at(e));
            }
        }
        db.execute_unprepared(&sql.create_table())
            .await
            .map_err(at)?;
    }
    Ok(())
}

/// The content hash of the mirror's last sync, if any.
pub(super) async fn last_hash(
    db: &DatabaseConnection,
    spec: &MirrorSpec,
) -> Result<Option<String>, MirrorRunError> {
    let row = db
        .query_one(stmt(
            "SELECT last_hash FROM etl_info_schema.mirror_status WHERE mirror = $1",
            vec![Value::from(spec.name.to_string())],
        ))
        .await
        .map_err(|e| db_error(spec, "status", e))?;
    match row {
        None => Ok(None),
        Some(row) => row
            .try_get_by_index::<Option<String>>(0)
            .map_err(|e| db_error(spec, "status", e)),
    }
}

/// The run's load, as the merge needs it.
pub(super) struct Load<'a> {
    pub load_id: LoadId,
    /// Backend pid of the session holding the mirror's run lock.
    pub lock_pid: i32,
    pub path: &'a Path,
}

/// Whether the session `pid` still holds the mirror's run lock: checked inside
/// the merge, so a run whose lock session ended (and which another run may have
/// overtaken) never commits.
async fn holds_lock(
    txn: &DatabaseTransaction,
    spec: &MirrorSpec,
    pid: i32,
) -> Result<(), MirrorRunError> {
    let row = txn
        .query_one(stmt(
            "SELECT count(*) FROM pg_locks
              WHERE locktype = 'advisory' AND granted AND pid = $1
                AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
                AND classid = $2::int4::oid AND objid = $3::int4::oid AND objsubid = 2",
            vec![
                Value::from(pid),
                Value::from(crate::db::MIRROR_LOCK_CLASS),
                Value::from(super::mirror_lock_key(spec)),
            ],
        ))
        .await
        .map_err(|e| db_error(spec, "lock", e))?;
    let held: i64 = row
        .map_or(Ok(0), |r| r.try_get_by_index(0))
        .map_err(|e| db_error(spec, "lock", e))?;
    if held == 0 {
        return Err(MirrorRunError::Lost {
            mirror: spec.name.to_string(),
        });
    }
    Ok(())
}

/// Resolves repeated keys (the last line wins), then merges.
pub(super) async fn dedupe_and_merge(
    db: &DatabaseConnection,
    sql: &MirrorSql<'_>,
    options: &MirrorRunOptions,
    guard: Guard,
    run: &Load<'_>,
    read: ReadOutcome,
) -> Result<MirrorSummary, MirrorRunError> {
    let spec = sql.spec();
    let load_id = run.load_id;
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
        let examples = format!(
            "SELECT d.key::text, array_to_string(d.lines, ',') FROM ({}) d",
            sql.duplicate_examples()
        );
        for row in db
            .query_all(stmt(
                &examples,
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
        .query_one(stmt(
            &format!(
                "SELECT count(*) FROM {} WHERE load_id = $1",
                sql.staging_table()
            ),
            load(),
        ))
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
    let protected: Vec<serde_json::Value> = read.protected.into_iter().map(|(k, _)| k).collect();
    let txn = db.begin().await.map_err(|e| db_error(spec, "begin", e))?;
    let merged = async {
        lock_table(&txn, spec, options.lock_wait).await?;
        holds_lock(&txn, spec, run.lock_pid).await?;
        merge_in(&txn, sql, options, guard, &protected, &mut summary).await?;
        record(&txn, sql, options, run.path, &summary).await?;
        // The run's record says synced in the transaction that synced it.
        finish_record(&txn, spec, load_id, &summary).await
    }
    .await;
    match merged {
        Ok(()) => {
            txn.commit()
                .await
                .map_err(|e| db_error(spec, "commit", e))?;
            Ok(summary)
        }
        Err(e) => {
            let _ = txn.rollback().await;
            Err(e)
        }
    }
}

/// Bounds lock waits, then locks the table against other writers.
async fn lock_table(
    txn: &DatabaseTransaction,
    spec: &MirrorSpec,
    wait: std::time::Duration,
) -> Result<(), MirrorRunError> {
    let ms = crate::convert::millis_int4(wait);
    let lock = format!(
        "SET LOCAL lock_timeout = '{ms}ms'; LOCK TABLE {} IN SHARE ROW EXCLUSIVE MODE",
        spec.table.sql()
    );
    txn.execute_unprepared(&lock).await.map_err(|e| {
        if is_lock_timeout(&e) {
            MirrorRunError::WritersBusy {
                mirror: spec.name.to_string(),
                waited: wait,
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
        },
        MergeError::EmptyFile { current, what, .. } => MirrorRunError::EmptyFile {
            mirror,
            current,
            what,
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
    let counts = crate::domain::Counts {
        rows_read: summary.rows_read,
        inserted,
        updated,
        deleted,
        ..crate::domain::Counts::default()
    };
    guard.check(counts, current).map_err(|e| refusal(spec, e))?;
    let journal = spec
        .overrides
        .journal_keep_runs
        .unwrap_or(options.journal_keep_runs)
        > 0;
    let writes: [(Option<Write>, u64); 3] = [
        (sql.update(), updated),
        (Some(sql.insert()), inserted),
        (Some(sql.delete()), deleted),
    ];
    for (write, expected) in writes {
        let Some(write) = write else { continue };
        let op = match write.op {
            crate::mirror::store::Op::Insert => "insert",
            crate::mirror::store::Op::Update => "update",
            crate::mirror::store::Op::Delete => "delete",
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

/// Finishes the run's `sync_runs` record as synced, with its counts and hash
/// (a run recorded by `sync` and `serve`; nothing when there is none).
async fn finish_record(
    txn: &DatabaseTransaction,
    spec: &MirrorSpec,
    load_id: LoadId,
    s: &MirrorSummary,
) -> Result<(), MirrorRunError> {
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
    .map_err(|e| db_error(spec, "record", e))
}

/// The run's record (`mirror_runs`), the mirror's status (`mirror_status`) and
/// the journal's retention: the newest `journal_keep_runs` runs keep theirs.
async fn record(
    txn: &DatabaseTransaction,
    sql: &MirrorSql<'_>,
    options: &MirrorRunOptions,
    path: &Path,
    s: &MirrorSummary,
) -> Result<(), MirrorRunError> {
    let spec = sql.spec();
    let at = |source| db_error(spec, "record", source);
    let load_id = s.load_id.unwrap_or_default();
    let (mirror, table) = (spec.name.to_string(), spec.table.to_string());
    txn.execute(stmt(
        "INSERT INTO etl_info_schema.mirror_runs (load_id, mirror, table_name, file, content_hash,
             rows_read, inserted, updated, deleted, rejected, duplicates, journaled)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
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
        ],
    ))
    .await
    .map_err(at)?;
    txn.execute(stmt(
        "INSERT INTO etl_info_schema.mirror_status (mirror, table_name, last_hash, last_load_id, synced_at)
         VALUES ($1, $2, $3, $4, now())
         ON CONFLICT (mirror) DO UPDATE SET table_name = EXCLUDED.table_name,
             last_hash = EXCLUDED.last_hash, last_load_id = EXCLUDED.last_load_id,
             synced_at = EXCLUDED.synced_at",
        vec![
            Value::from(mirror.clone()),
            Value::from(table),
            Value::from(s.content_hash.clone()),
            Value::from(load_id),
        ],
    ))
    .await
    .map_err(at)?;
    let keep = spec
        .overrides
        .journal_keep_runs
        .unwrap_or(options.journal_keep_runs);
    txn.execute(stmt(
        "DELETE FROM etl_info_schema.mirror_journal j
          WHERE j.mirror = $1 AND j.load_id NOT IN (
                SELECT r.load_id FROM etl_info_schema.mirror_runs r
                 WHERE r.mirror = $1 ORDER BY r.load_id DESC LIMIT $2)",
        vec![Value::from(mirror), Value::from(signed(keep))],
    ))
    .await
    .map_err(at)?;
    Ok(())
}

/// Undoes the mirror's newest run that changed its table and is not reverted
/// yet, from its journal, in one transaction under the mirror's run lock and
/// the table's writer lock; the run is marked reverted and the mirror's last
/// hash forgotten, so the next sync applies the file again.
pub async fn revert_mirror_last(
    db: &DatabaseConnection,
    url: &DatabaseUrl,
    spec: &MirrorSpec,
    lock_wait: std::time::Duration,
) -> Result<MirrorRevert, MirrorRunError> {
    let lock = run_lock(url, spec).await?;
    let result = async {
        let txn = db.begin().await.map_err(|e| db_error(spec, "begin", e))?;
        match revert_in(&txn, spec, lock_wait).await {
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
    }
    .await;
    lock.release().await;
    result
}

async fn revert_in(
    txn: &DatabaseTransaction,
    spec: &MirrorSpec,
    lock_wait: std::time::Duration,
) -> Result<MirrorRevert, MirrorRunError> {
    let at = |source| db_error(spec, "revert", source);
    let mirror = spec.name.to_string();
    lock_table(txn, spec, lock_wait).await?;
    let run = txn
        .query_one(stmt(
            "SELECT r.load_id, r.journaled,
                    (SELECT count(*) FROM etl_info_schema.mirror_journal j
                      WHERE j.load_id = r.load_id AND j.mirror = r.mirror)
               FROM etl_info_schema.mirror_runs r
              WHERE r.mirror = $1 AND r.reverted_at IS NULL
                AND r.inserted + r.updated + r.deleted > 0
              ORDER BY r.load_id DESC LIMIT 1 FOR UPDATE",
            vec![Value::from(mirror.clone())],
        ))
        .await
        .map_err(at)?
        .ok_or_else(|| MirrorRunError::NothingToRevert {
            mirror: mirror.clone(),
        })?;
    let load_id: uuid::Uuid = run.try_get_by_index(0).map_err(at)?;
    let journaled: i64 = run.try_get_by_index(1).map_err(at)?;
    let kept: i64 = run.try_get_by_index(2).map_err(at)?;
    if journaled == 0 || kept != journaled {
        return Err(MirrorRunError::NoJournal { mirror, load_id });
    }
    let sql = MirrorSql::new(spec);
    let mut changed = 0;
    let statements = sql
        .revert_updates()
        .into_iter()
        .chain([sql.revert_inserts(), sql.revert_deletes()]);
    for statement in statements {
        let values = vec![Value::from(load_id), Value::from(mirror.clone())];
        changed += txn
            .execute(stmt(&statement, values))
            .await
            .map_err(at)?
            .rows_affected();
    }
    txn.execute(stmt(
        "UPDATE etl_info_schema.mirror_runs SET reverted_at = now() WHERE load_id = $1;",
        vec![Value::from(load_id)],
    ))
    .await
    .map_err(at)?;
    txn.execute(stmt(
        "UPDATE etl_info_schema.mirror_status SET last_hash = NULL WHERE mirror = $1",
        vec![Value::from(mirror.clone())],
    ))
    .await
    .map_err(at)?;
    Ok(MirrorRevert {
        mirror,
        load_id,
        changed,
    })
}
