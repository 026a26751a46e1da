//! Merge and purge: the load in `staging_followers` → `followers`, in ONE
//! transaction whose steps are named for logs and run records:
//!
//! | step     | does                                                   |
//! |----------|--------------------------------------------------------|
//! | verify   | this run still holds the run lock, and staging holds   |
//! |          | exactly the rows it staged (nobody else touched them)  |
//! | update   | rewrites rows whose `full_name` differs (only those)   |
//! | insert   | adds emails that are new                               |
//! | delete   | removes followers absent from the load (not protected) |
//! | guard    | refuses when the deletes exceed `MAX_DELETE_RATIO`     |
//! | status   | records the sync in `table_status`                     |
//! | record   | finishes the `sync_runs` row as `synced`               |
//! | cleanup  | removes the load's staging rows                        |
//!
//! The compensation of every step is the rollback of the transaction: readers see
//! the old table or the new one, and a failure at any step leaves `followers` as
//! it was. Only row locks are taken (UPDATE, INSERT, DELETE).

use crate::domain::{ContentHash, LoadId};
use crate::domain::{Counts, Outcome};
use crate::history;
use sea_orm::{
    ConnectionTrait, DatabaseConnection, DbBackend, DbErr, Statement, TransactionTrait, Value,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    Begin,
    Verify,
    Update,
    Insert,
    Delete,
    Guard,
    Status,
    Record,
    Cleanup,
    Commit,
}

impl Step {
    pub fn name(self) -> &'static str {
        match self {
            Self::Begin => "begin",
            Self::Verify => "verify",
            Self::Update => "update",
            Self::Insert => "insert",
            Self::Delete => "delete",
            Self::Guard => "guard",
            Self::Status => "status",
            Self::Record => "record",
            Self::Cleanup => "cleanup",
            Self::Commit => "commit",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MergeError {
    #[error("merge step {} failed (rolled back)", .step.name())]
    Step {
        step: Step,
        #[source]
        source: DbErr,
    },
    #[error("the file would delete {} of {current} followers ({:.1}%), more than MAX_DELETE_RATIO={ratio}; rolled back (use --allow-mass-delete if intended)", .counts.deleted, .counts.deleted as f64 * 100.0 / *current as f64)]
    MassDelete {
        /// What the run would have done.
        counts: Counts,
        current: u64,
        ratio: f64,
    },
    #[error("the run lost its lock or its staged rows ({0}); rolled back")]
    Lost(String),
    #[error("the connection was lost during COMMIT and whether it committed could not be checked ({check}); the run's record in sync_runs tells (synced or not)")]
    CommitUnknown {
        #[source]
        source: DbErr,
        check: String,
    },
}

/// What the merge needs to know about the load.
pub struct Load<'a> {
    pub load_id: LoadId,
    /// Backend pid of the session holding the run lock.
    pub lock_pid: i32,
    pub hash: &'a ContentHash,
    /// Emails of rejected rows: never deleted.
    pub protected: Vec<String>,
    /// Counts known before the merge (rows read, rejected, duplicates).
    pub counts: Counts,
    /// Distinct emails in the load: the rows it must hold in staging.
    pub distinct: u64,
}

/// The delete guard; 1.0 disables it.
#[derive(Clone, Copy, Debug)]
pub struct Guard {
    pub max_delete_ratio: f64,
    pub allow_mass_delete: bool,
}

impl Guard {
    fn check(&self, counts: Counts, current: u64) -> Result<(), MergeError> {
        let deleted = counts.deleted as f64;
        let exceeded = current > 0 && deleted > self.max_delete_ratio * current as f64;
        if exceeded && !self.allow_mass_delete && self.max_delete_ratio < 1.0 {
            return Err(MergeError::MassDelete {
                counts,
                current,
                ratio: self.max_delete_ratio,
            });
        }
        Ok(())
    }
}

const UPDATE: &str = "UPDATE public.followers f
    SET full_name = s.full_name, modified_at = (now() AT TIME ZONE 'UTC')
   FROM public.staging_followers s
  WHERE s.load_id = $1 AND s.email = f.email AND f.full_name IS DISTINCT FROM s.full_name";

const INSERT: &str = "INSERT INTO public.followers (email, full_name, modified_at)
 SELECT s.email, s.full_name, (now() AT TIME ZONE 'UTC')
   FROM public.staging_followers s
  WHERE s.load_id = $1
    AND NOT EXISTS (SELECT 1 FROM public.followers f WHERE f.email = s.email)";

/// Followers absent from the load and not protected by a rejected row.
const ABSENT: &str = "FROM public.followers f
  WHERE NOT EXISTS (SELECT 1 FROM public.staging_followers s WHERE s.load_id = $1 AND s.email = f.email)
    AND f.email <> ALL($2::text[])";

const COUNT_CHANGED: &str = "SELECT
    count(*) FILTER (WHERE f.email IS NULL)::bigint AS inserted,
    count(*) FILTER (WHERE f.email IS NOT NULL AND f.full_name IS DISTINCT FROM s.full_name)::bigint AS updated
   FROM public.staging_followers s LEFT JOIN public.followers f ON f.email = s.email
  WHERE s.load_id = $1";

fn stmt(sql: &str, values: Vec<Value>) -> Statement {
    Statement::from_sql_and_values(DbBackend::Postgres, sql, values)
}

async fn count(db: &impl ConnectionTrait, sql: &str, values: Vec<Value>) -> Result<u64, DbErr> {
    let row = db.query_one(stmt(sql, values)).await?;
    let n: i64 = row.map(|r| r.try_get_by_index(0)).transpose()?.unwrap_or(0);
    Ok(n as u64)
}

fn at(step: Step) -> impl FnOnce(DbErr) -> MergeError {
    move |source| MergeError::Step { step, source }
}

/// Checks, inside the transaction, that this run still holds the run lock (so no
/// other run can have recovered, i.e. deleted, its staging rows) and that staging
/// holds exactly the rows this run staged.
async fn verify(txn: &impl ConnectionTrait, load: &Load<'_>) -> Result<(), MergeError> {
    let locked = count(
        txn,
        "SELECT count(*) FROM pg_locks
          WHERE locktype = 'advisory' AND granted AND pid = $1
            AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
            AND classid = ($2 >> 32)::oid AND objid = ($2 & 4294967295)::oid AND objsubid = 1",
        vec![load.lock_pid.into(), crate::db::RUN_LOCK.into()],
    )
    .await
    .map_err(at(Step::Verify))?;
    if locked == 0 {
        return Err(MergeError::Lost("the run lock's session is gone".into()));
    }
    let staged = count(
        txn,
        "SELECT count(*) FROM public.staging_followers WHERE load_id = $1",
        vec![load.load_id.uuid().into()],
    )
    .await
    .map_err(at(Step::Verify))?;
    if staged != load.distinct {
        return Err(MergeError::Lost(format!(
            "staging holds {staged} rows of this load, {} expected",
            load.distinct
        )));
    }
    Ok(())
}

/// Applies the load in one transaction and commits, or rolls back on any error.
#[tracing::instrument(skip_all, fields(load_id = %load.load_id), err)]
pub async fn merge(
    db: &DatabaseConnection,
    load: &Load<'_>,
    guard: Guard,
) -> Result<Counts, MergeError> {
    let id: Value = load.load_id.uuid().into();
    let protected: Value = load.protected.clone().into();
    let txn = db.begin().await.map_err(at(Step::Begin))?;
    verify(&txn, load).await?;
    let session = session(&txn).await.map_err(at(Step::Begin))?;
    let current = count(&txn, "SELECT count(*) FROM public.followers", vec![])
        .await
        .map_err(at(Step::Begin))?;
    let updated = txn
        .execute(stmt(UPDATE, vec![id.clone()]))
        .await
        .map_err(at(Step::Update))?
        .rows_affected();
    let inserted = txn
        .execute(stmt(INSERT, vec![id.clone()]))
        .await
        .map_err(at(Step::Insert))?
        .rows_affected();
    let deleted = txn
        .execute(stmt(
            &format!("DELETE {ABSENT}"),
            vec![id.clone(), protected],
        ))
        .await
        .map_err(at(Step::Delete))?
        .rows_affected();
    let counts = Counts {
        inserted,
        updated,
        deleted,
        unchanged: load.distinct.saturating_sub(inserted + updated),
        ..load.counts
    };
    guard.check(counts, current)?;
    history::mark_synced(&txn, load.load_id, load.hash)
        .await
        .map_err(at(Step::Status))?;
    history::finish(
        &txn,
        load.load_id,
        Outcome::Synced,
        &counts,
        None,
        Some(load.hash),
    )
    .await
    .map_err(at(Step::Record))?;
    // Deleting the load's rows also proves they were all still there: a DELETE
    // waits for and re-checks concurrent deleters, unlike the reads above.
    let cleaned = super::stage::discard(&txn, load.load_id)
        .await
        .map_err(at(Step::Cleanup))?;
    if cleaned != load.distinct {
        return Err(MergeError::Lost(format!(
            "{cleaned} staged rows at commit, {} expected",
            load.distinct
        )));
    }
    if let Err(source) = txn.commit().await {
        return match committed(db, load.load_id, &session).await {
            Ok(true) => {
                tracing::warn!(error = %source, "the connection was lost during COMMIT, but the commit happened");
                Ok(counts)
            }
            Ok(false) => Err(at(Step::Commit)(source)),
            Err(check) => Err(MergeError::CommitUnknown {
                source,
                check: check.to_string(),
            }),
        };
    }
    Ok(counts)
}

/// The merge transaction's server session: backend pid and start time.
struct Session {
    pid: i32,
    started: String,
}

async fn session(txn: &impl ConnectionTrait) -> Result<Session, DbErr> {
    let row = txn
        .query_one(stmt(
            "SELECT pg_backend_pid(), backend_start::text FROM pg_stat_activity WHERE pid = pg_backend_pid()",
            vec![],
        ))
        .await?
        .ok_or_else(|| DbErr::RecordNotFound("own session in pg_stat_activity".into()))?;
    Ok(Session {
        pid: row.try_get_by_index(0)?,
        started: row.try_get_by_index(1)?,
    })
}

/// How long a lost COMMIT is investigated before its outcome is called unknown.
const COMMIT_CHECK: std::time::Duration = std::time::Duration::from_secs(30);

/// Whether the transaction whose COMMIT lost its connection committed. On
/// another connection: ends the old session if it is still there (a COMMIT
/// that never arrived then rolls back; one being executed completes first),
/// waits until it is gone, then reads the run's record, which the transaction
/// itself set to `synced`. Retries while the database is unreachable.
async fn committed(
    db: &DatabaseConnection,
    load_id: LoadId,
    session: &Session,
) -> Result<bool, DbErr> {
    let deadline = tokio::time::Instant::now() + COMMIT_CHECK;
    let alive = vec![session.pid.into(), session.started.clone().into()];
    loop {
        let check = async {
            // In the select list, so only that one session is signalled.
            let still = db
                .query_all(stmt(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                      WHERE pid = $1 AND backend_start::text = $2",
                    alive.clone(),
                ))
                .await?
                .len();
            if still > 0 {
                return Ok(None);
            }
            let synced = count(
                db,
                "SELECT count(*) FROM etl_info_schema.sync_runs WHERE load_id = $1 AND outcome = $2",
                vec![load_id.uuid().into(), Outcome::Synced.as_str().into()],
            )
            .await?;
            Ok(Some(synced == 1))
        };
        match check.await {
            Ok(Some(done)) => return Ok(done),
            Ok(None) => {}
            Err(e) if tokio::time::Instant::now() >= deadline => return Err(e),
            Err(e) => tracing::warn!(error = %e, "checking whether the COMMIT happened; retrying"),
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(DbErr::Custom(format!(
                "the merge's session (pid {}) did not end within {COMMIT_CHECK:?}",
                session.pid
            )));
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// What `merge` would do, computed with reads only; the second value tells that
/// the guard would refuse.
#[tracing::instrument(skip_all, fields(load_id = %load.load_id), err)]
pub async fn plan(
    db: &DatabaseConnection,
    load: &Load<'_>,
    guard: Guard,
) -> Result<(Counts, Option<MergeError>), MergeError> {
    let id: Value = load.load_id.uuid().into();
    let protected: Value = load.protected.clone().into();
    let txn = db.begin().await.map_err(at(Step::Begin))?;
    verify(&txn, load).await?;
    let row = txn
        .query_one(stmt(COUNT_CHANGED, vec![id.clone()]))
        .await
        .map_err(at(Step::Update))?
        .ok_or_else(|| at(Step::Update)(DbErr::RecordNotFound("count".into())))?;
    let inserted: i64 = row.try_get("", "inserted").map_err(at(Step::Insert))?;
    let updated: i64 = row.try_get("", "updated").map_err(at(Step::Update))?;
    let deleted = count(
        &txn,
        &format!("SELECT count(*) {ABSENT}"),
        vec![id, protected],
    )
    .await
    .map_err(at(Step::Delete))?;
    let current = count(&txn, "SELECT count(*) FROM public.followers", vec![])
        .await
        .map_err(at(Step::Guard))?;
    txn.rollback().await.map_err(at(Step::Commit))?;
    let (inserted, updated) = (inserted as u64, updated as u64);
    let counts = Counts {
        inserted,
        updated,
        deleted,
        unchanged: load.distinct.saturating_sub(inserted + updated),
        ..load.counts
    };
    Ok((counts, guard.check(counts, current).err()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guard_refuses_above_the_ratio_only() {
        let g = Guard {
            max_delete_ratio: 0.5,
            allow_mass_delete: false,
        };
        let del = |deleted| Counts {
            deleted,
            ..Counts::default()
        };
        assert!(g.check(del(5), 10).is_ok());
        assert!(g.check(del(6), 10).is_err());
        assert!(g.check(del(0), 0).is_ok());
        let allow = Guard {
            allow_mass_delete: true,
            ..g
        };
        assert!(allow.check(del(10), 10).is_ok());
        let disabled = Guard {
            max_delete_ratio: 1.0,
            ..g
        };
        assert!(disabled.check(del(10), 10).is_ok());
        let strict = Guard {
            max_delete_ratio: 0.0,
            ..g
        };
        assert!(strict.check(del(1), 10).is_err());
    }
}
