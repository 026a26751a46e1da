//! Merge and purge: the load in `staging_followers` → `followers`, in ONE
//! transaction whose steps are named for logs and run records:
//!
//! | step     | does                                                   |
//! |----------|--------------------------------------------------------|
//! | lock     | `SHARE ROW EXCLUSIVE` on `followers`: readers go on,   |
//! |          | other writers wait for the commit; waits at most       |
//! |          | `LOCK_WAIT_TIMEOUT` for a writer in progress, then     |
//! |          | fails naming it                                        |
//! | verify   | locks staging, checks this run still holds the run     |
//! |          | lock and staging holds exactly the rows it staged      |
//! | diff     | one pass (a hash full join of the load and             |
//! |          | `followers`) keeping only the keys that differ         |
//! | update   | rewrites rows whose `full_name` differs (only those)   |
//! | insert   | adds emails that are new                               |
//! | delete   | removes followers absent from the load (not protected) |
//! |          | (each of these three journals what it changed, in the  |
//! |          | same statement, when the journal is on: `journal.rs`)  |
//! | guard    | refuses when the deletes exceed `MAX_DELETE_RATIO`     |
//! | status   | records the sync in `table_status`                     |
//! | record   | finishes the `sync_runs` row as `synced`               |
//! | cleanup  | empties staging (`TRUNCATE`, under the lock of verify) |
//!
//! Into an empty `followers` (the first sync) the load is inserted as it is:
//! there is nothing to compare. Update, insert and delete touch only the keys the
//! diff found, each through the primary key (docs/performance.md#one-pass-finds-what-differs).
//!
//! Exact with other writers (docs/sync.md#readers-and-writers-during-a-run): the
//! lock is taken before the diff, so nothing changes `followers` between the diff
//! and the statements that apply it; each statement also touches only rows still
//! as the diff saw them (`xmin` unchanged), and its row count must equal the
//! diff's, else the run fails. The journal's old states are therefore the states
//! the statements replaced.
//!
//! The compensation of every step is the rollback of the transaction: readers see
//! the old table or the new one, and a failure at any step leaves `followers` as
//! it was.

use super::journal;
use crate::convert::approx;
use crate::domain::Stage;
use crate::domain::{ContentHash, LoadId};
use crate::domain::{Counts, Outcome};
use crate::runs;
use crate::storage::{followers, session, staging_followers, sync_journal, sync_runs};
use sea_orm::{
    ConnectionTrait, DatabaseConnection, DatabaseTransaction, DbBackend, DbErr, Statement,
    TransactionTrait, Value,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    Begin,
    Verify,
    Lock,
    Diff,
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
    /// The step as a stage of the run's record (`sync_runs.stages`).
    pub fn stage(self) -> Stage {
        match self {
            Self::Begin => Stage::MergeBegin,
            Self::Verify => Stage::MergeVerify,
            Self::Lock => Stage::MergeLock,
            Self::Diff => Stage::MergeDiff,
            Self::Update => Stage::MergeUpdate,
            Self::Insert => Stage::MergeInsert,
            Self::Delete => Stage::MergeDelete,
            Self::Guard => Stage::MergeGuard,
            Self::Status => Stage::MergeStatus,
            Self::Record => Stage::MergeRecord,
            Self::Cleanup => Stage::MergeCleanup,
            Self::Commit => Stage::MergeCommit,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Begin => "begin",
            Self::Verify => "verify",
            Self::Lock => "lock",
            Self::Diff => "diff",
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
    #[error("the file would delete {} of {current} followers ({:.1}%), more than MAX_DELETE_RATIO={ratio}; rolled back (use --allow-mass-delete if intended)", .counts.deleted, crate::convert::percent(.counts.deleted, *current))]
    MassDelete {
        /// What the run would have done.
        counts: Counts,
        current: u64,
        ratio: f64,
    },
    #[error("the file would rename {} of {current} followers ({:.1}%, their full_name changes), more than MAX_UPDATE_RATIO={ratio}; rolled back (use --allow-mass-update if intended)", .counts.updated, crate::convert::percent(.counts.updated, *current))]
    MassUpdate {
        /// What the run would have done.
        counts: Counts,
        current: u64,
        ratio: f64,
    },
    #[error("the file is empty ({what}) and would delete all {current} followers; an empty file is refused whatever MAX_DELETE_RATIO says (use --allow-mass-delete if intended)")]
    EmptyFile {
        /// What the run would have done.
        counts: Counts,
        current: u64,
        what: Emptiness,
    },
    #[error("the run lost its lock or its staged rows ({0}); rolled back")]
    Lost(String),
    #[error("merge step {} waited LOCK_WAIT_TIMEOUT={} for another session writing the table: {blockers}; rolled back, nothing changed (the next run tries again)", .step.name(), robfig_cron::go_duration::format_go_duration(*.waited))]
    Busy {
        step: Step,
        waited: std::time::Duration,
        /// The sessions holding conflicting locks, described.
        blockers: String,
        #[source]
        source: DbErr,
    },
    #[error("merge step {} changed {actual} row(s), the diff found {expected} (a trigger, rule or another writer changed followers during the run); rolled back, nothing changed", .step.name())]
    Mismatch {
        step: Step,
        expected: u64,
        actual: u64,
    },
    #[error("the connection was lost during COMMIT and whether it committed could not be checked ({check}); the run's record in sync_runs tells (synced or not)")]
    CommitUnknown {
        #[source]
        source: DbErr,
        check: String,
    },
}

impl MergeError {
    /// A guard's refusal, with what the run would have done.
    pub fn refusal_counts(&self) -> Option<Counts> {
        match self {
            Self::MassDelete { counts, .. }
            | Self::MassUpdate { counts, .. }
            | Self::EmptyFile { counts, .. } => Some(*counts),
            _ => None,
        }
    }
}

/// What the merge needs to know about the load.
pub(crate) struct Load<'a> {
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
    /// Whether the run journals what it changes (docs/operations.md#journal).
    pub journal: bool,
    /// The zone whose wall time `modified_at` holds: written as
    /// `now() AT TIME ZONE zone` (`db::modified_at_clock`).
    pub modified_at_zone: String,
    /// `LOCK_WAIT_TIMEOUT`: the longest wait for another writer's lock.
    pub lock_wait: std::time::Duration,
    /// `FIRST_SYNC_KEY_REBUILD`: the first sync may rebuild the primary key.
    pub key_rebuild: bool,
}

/// The guards (docs/sync.md#refusals-and-approvals): deletes beyond
/// `max_delete_ratio` of the current followers, renames beyond
/// `max_update_ratio` (1.0 disables either), and an empty file (no bytes)
/// deleting anything, whatever the ratios. Each has its approval.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Guard {
    pub max_delete_ratio: f64,
    pub allow_mass_delete: bool,
    pub max_update_ratio: f64,
    pub allow_mass_update: bool,
    /// The file holds no data: never a plausible export.
    pub empty_file: Option<Emptiness>,
}

/// How a file holds no data (docs/sync.md#empty-file).
#[derive(Clone, Copy, Debug, PartialEq, Eq, strum::Display)]
pub enum Emptiness {
    /// No bytes at all.
    #[strum(serialize = "0 bytes")]
    NoBytes,
    /// A `.gz` or `.zst` archive that unpacks to no bytes.
    #[strum(serialize = "0 bytes once unpacked")]
    EmptyArchive,
}

impl Guard {
    /// Whether deleting `deleted` of `current` followers is refused (the delete
    /// ratio only: a revert's guard).
    pub(crate) fn refuses_deletes(&self, deleted: u64, current: u64) -> bool {
        let exceeded = current > 0 && approx(deleted) > self.max_delete_ratio * approx(current);
        exceeded && !self.allow_mass_delete && self.max_delete_ratio < 1.0
    }

    pub(crate) fn check(&self, counts: Counts, current: u64) -> Result<(), MergeError> {
        let beyond =
            |n: u64, ratio: f64| current > 0 && ratio < 1.0 && approx(n) > ratio * approx(current);
        if let Some(what) = self.empty_file {
            if counts.deleted > 0 && !self.allow_mass_delete {
                return Err(MergeError::EmptyFile {
                    counts,
                    current,
                    what,
                });
            }
        }
        if beyond(counts.deleted, self.max_delete_ratio) && !self.allow_mass_delete {
            return Err(MergeError::MassDelete {
                counts,
                current,
                ratio: self.max_delete_ratio,
            });
        }
        if beyond(counts.updated, self.max_update_ratio) && !self.allow_mass_update {
            return Err(MergeError::MassUpdate {
                counts,
                current,
                ratio: self.max_update_ratio,
            });
        }
        Ok(())
    }
}

/// Every lock wait of the transaction is bounded by `wait` (`LOCK_WAIT_TIMEOUT`).
pub(super) async fn bound_lock_waits(
    txn: &impl ConnectionTrait,
    wait: std::time::Duration,
) -> Result<(), DbErr> {
    let ms = crate::convert::millis_int4(wait);
    txn.execute_unprepared(&session::lock_timeout(ms))
        .await
        .map(|_| ())
}

/// The writer lock of a merge or a revert, taken before it reads `followers`
/// (docs/sync.md#readers-and-writers-during-a-run): `SHARE ROW EXCLUSIVE` conflicts
/// with every writer (and with itself) but not with readers, so from here to the
/// commit nobody else changes the table and what the transaction read stays true.
/// Settings that every writing transaction of the agent makes go here too.
pub(super) async fn lock_writers(txn: &impl ConnectionTrait) -> Result<(), DbErr> {
    txn.execute_unprepared(followers::LOCK_WRITERS)
        .await
        .map(|_| ())
}

/// Whether `e` is PostgreSQL's `lock_not_available` (a `lock_timeout` expired).
pub(crate) fn is_lock_timeout(e: &DbErr) -> bool {
    sqlstate(e).as_deref() == Some("55P03")
}

/// The SQLSTATE of a statement's error from the server, if it is one.
pub(crate) fn sqlstate(e: &DbErr) -> Option<String> {
    use sea_orm::RuntimeErr;
    let (DbErr::Exec(RuntimeErr::SqlxError(sqlx::Error::Database(db)))
    | DbErr::Query(RuntimeErr::SqlxError(sqlx::Error::Database(db)))) = e
    else {
        return None;
    };
    db.code().map(|code| code.into_owned())
}

/// Describes the sessions a lock wait may have waited for (`BLOCKERS`).
pub(super) async fn blockers(db: &impl ConnectionTrait) -> String {
    blockers_by(db, followers::BLOCKERS).await
}

/// Describes the sessions `query` finds (the columns of `BLOCKERS`): those a
/// lock wait on a table may have waited for.
pub(crate) async fn blockers_by(db: &impl ConnectionTrait, query: &str) -> String {
    let rows = match db.query_all(stmt(query, vec![])).await {
        Ok(rows) => rows,
        Err(e) => return format!("the blocking session could not be looked up ({e})"),
    };
    let described: Vec<String> = rows
        .iter()
        .filter_map(|r| {
            let pid: i32 = r.try_get("", "pid").ok()?;
            let text = |c: &str| r.try_get::<String>("", c).unwrap_or_default();
            Some(format!(
                "pid {pid} (application {:?}, user {:?}, {}, transaction since {}, last query at {})",
                text("app"),
                text("usr"),
                text("state"),
                text("xact_start"),
                text("query_start")
            ))
        })
        .collect();
    if described.is_empty() {
        "a session that had ended by the time it was looked up".to_owned()
    } else {
        described.join("; ")
    }
}

/// Below this share of `followers` changing, update and delete probe the
/// primary key once per changed key; the planner would otherwise often scan
/// the whole table to hash-join a few thousand keys (measured: docs/performance.md#one-pass-finds-what-differs).
const PROBE_BELOW: f64 = 0.2;

fn stmt(sql: &str, values: Vec<Value>) -> Statement {
    Statement::from_sql_and_values(DbBackend::Postgres, sql, values)
}

async fn count(db: &impl ConnectionTrait, sql: &str, values: Vec<Value>) -> Result<u64, DbErr> {
    let row = db.query_one(stmt(sql, values)).await?;
    let n: i64 = row.map(|r| r.try_get_by_index(0)).transpose()?.unwrap_or(0);
    Ok(crate::convert::count("count(*)", n)?)
}

fn at(step: Step) -> impl FnOnce(DbErr) -> MergeError {
    move |source| MergeError::Step { step, source }
}

/// Whether the session `pid` still holds the run lock (docs/sync.md#1-lock).
pub(super) async fn holds_run_lock(db: &impl ConnectionTrait, pid: i32) -> Result<bool, DbErr> {
    let held = count(
        db,
        session::HOLDS_LOCK,
        vec![pid.into(), crate::db::RUN_LOCK.into()],
    )
    .await?;
    Ok(held > 0)
}

/// Checks, inside the transaction, that this run still holds the run lock (so no
/// other run can have recovered, i.e. deleted, its staging rows) and that staging
/// holds exactly the rows this run staged.
async fn verify(txn: &impl ConnectionTrait, load: &Load<'_>) -> Result<(), MergeError> {
    // Nobody changes staging from here to the end of the transaction: the count
    // below stays true, and the cleanup can TRUNCATE. A concurrent writer (the
    // COPY of a run that lost its lock, another agent's recovery) is waited for.
    // jit: compiling the big statements costs more than it saves here.
    txn.execute_unprepared(staging_followers::LOCK)
        .await
        .map_err(at(Step::Verify))?;
    let locked = holds_run_lock(txn, load.lock_pid)
        .await
        .map_err(at(Step::Verify))?;
    if !locked {
        return Err(MergeError::Lost("the run lock's session is gone".into()));
    }
    let staged = count(
        txn,
        staging_followers::STAGED,
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

/// Empties staging: `TRUNCATE` when the role may (the owner, or a runtime role
/// granted it: docs/sync.md#database-roles), else the load's rows are deleted, as
/// the runtime grants of earlier versions allow. Under the lock `verify` took,
/// staging holds this load and at most rows of a run that lost its lock, which
/// its own `verify` refuses.
async fn cleanup(txn: &impl ConnectionTrait, load: &Load<'_>) -> Result<(), MergeError> {
    let may_truncate = count(txn, staging_followers::MAY_TRUNCATE, vec![])
        .await
        .map_err(at(Step::Cleanup))?
        == 1;
    if may_truncate {
        txn.execute_unprepared(staging_followers::TRUNCATE)
            .await
            .map_err(at(Step::Cleanup))?;
        return Ok(());
    }
    let cleaned = super::staging::discard(txn, load.load_id)
        .await
        .map_err(at(Step::Cleanup))?;
    if cleaned != load.distinct {
        return Err(MergeError::Lost(format!(
            "{cleaned} staged rows at commit, {} expected",
            load.distinct
        )));
    }
    Ok(())
}

/// The first sync: the load goes into the empty `followers` as it is. Building
/// the primary key once after the insert costs about a third of maintaining it
/// row by row (docs/performance.md#the-first-sync), so, where `FIRST_SYNC_KEY_REBUILD` and
/// `FILL_KEY` allow it and the exclusive lock comes within `FILL_LOCK_TIMEOUT`,
/// the key is dropped and rebuilt in this transaction: readers wait for the
/// first sync instead of seeing the empty table. That path runs in a savepoint:
/// on any error it is rolled back (key and all) and the rows are inserted with
/// the key in place, so it never makes a sync fail that the plain insert would
/// not.
async fn fill(txn: &impl ConnectionTrait, load: &Load<'_>, id: &Value) -> Result<u64, MergeError> {
    if load.key_rebuild {
        txn.execute_unprepared(followers::FILL_SAVEPOINT)
            .await
            .map_err(at(Step::Insert))?;
        match rebuild(txn, id, &load.modified_at_zone).await {
            Ok(Some(inserted)) => {
                txn.execute_unprepared(followers::FILL_RELEASE)
                    .await
                    .map_err(at(Step::Insert))?;
                // The savepoint's shorter lock_timeout outlives its release.
                bound_lock_waits(txn, load.lock_wait)
                    .await
                    .map_err(at(Step::Insert))?;
                return Ok(inserted);
            }
            Ok(None) => {}
            Err(e) => {
                tracing::info!(error = %e, "the first sync keeps its primary key during the insert");
            }
        }
        txn.execute_unprepared(followers::FILL_ROLLBACK)
            .await
            .map_err(at(Step::Insert))?;
    }
    txn.execute(stmt(
        followers::INSERT_ALL,
        vec![id.clone(), load.modified_at_zone.as_str().into()],
    ))
    .await
    .map_err(at(Step::Insert))
    .map(|r| r.rows_affected())
}

/// The first sync's fast path (in the savepoint of `fill`): `None` when the
/// table is not provably plain.
async fn rebuild(txn: &impl ConnectionTrait, id: &Value, zone: &str) -> Result<Option<u64>, DbErr> {
    let Some(key) = txn.query_one(stmt(followers::FILL_KEY, vec![])).await? else {
        return Ok(None);
    };
    let name: String = key.try_get_by_index(0)?;
    let index: String = key.try_get_by_index(1)?;
    txn.execute_unprepared(&followers::drop_key(&name)).await?;
    let inserted = txn
        .execute(stmt(followers::INSERT_ALL, vec![id.clone(), zone.into()]))
        .await?
        .rows_affected();
    txn.execute_unprepared(&followers::add_key(&name, &index))
        .await?;
    Ok(Some(inserted))
}

/// What `diff` found: keys new to `followers`, followers absent from the load
/// (protected ones included), all keys that differ, and the absent followers
/// the delete removes (not protected).
struct Diffed {
    new: u64,
    absent: u64,
    changed: u64,
    deletes: u64,
}

impl Diffed {
    /// The followers before the merge: every one is either matched by a row
    /// of the load (`distinct` of them, `new` excepted) or absent from it.
    fn current(&self, distinct: u64) -> u64 {
        distinct.saturating_sub(self.new) + self.absent
    }

    /// The followers the update renames: the differing keys neither new nor absent.
    fn updates(&self) -> u64 {
        self.changed - self.new - self.absent
    }
}

/// Fills `merge_diff` with the keys that differ.
async fn diff(
    txn: &impl ConnectionTrait,
    id: &Value,
    protected: &Value,
) -> Result<Diffed, MergeError> {
    // No ANALYZE of the load (it cost a third of the join): after the last
    // run's TRUNCATE the planner sizes staging from its pages, which is enough
    // to choose this hash join.
    txn.execute_unprepared(&followers::diff_table())
        .await
        .map_err(at(Step::Diff))?;
    txn.execute(stmt(followers::DIFF, vec![id.clone()]))
        .await
        .map_err(at(Step::Diff))?;
    let row = txn
        .query_one(stmt(followers::DIFF_COUNTS, vec![protected.clone()]))
        .await
        .map_err(at(Step::Diff))?
        .ok_or_else(|| at(Step::Diff)(DbErr::RecordNotFound("diff counts".into())))?;
    let n = |i: usize| -> Result<u64, MergeError> {
        let v: i64 = row.try_get_by_index(i).map_err(at(Step::Diff))?;
        crate::convert::count("diff count", v).map_err(|e| at(Step::Diff)(e.into()))
    };
    Ok(Diffed {
        new: n(0)?,
        absent: n(1)?,
        changed: n(2)?,
        deletes: n(3)?,
    })
}

/// Runs one statement of the merge; its row count must be what the diff found.
async fn apply(
    txn: &impl ConnectionTrait,
    step: Step,
    sql: &str,
    values: Vec<Value>,
    expected: u64,
) -> Result<u64, MergeError> {
    let actual = txn
        .execute(stmt(sql, values))
        .await
        .map_err(at(step))?
        .rows_affected();
    if actual != expected {
        return Err(MergeError::Mismatch {
            step,
            expected,
            actual,
        });
    }
    Ok(actual)
}

/// Applies the load in one transaction and commits, or rolls back on any error.
#[tracing::instrument(skip_all, fields(load_id = %load.load_id), err(level = "debug"))]
pub(crate) async fn merge(
    db: &DatabaseConnection,
    load: &Load<'_>,
    guard: Guard,
    step: &mut dyn FnMut(Step),
) -> Result<Counts, MergeError> {
    step(Step::Begin);
    let txn = db.begin().await.map_err(at(Step::Begin))?;
    match merge_in(&txn, load, guard, step).await {
        Ok((counts, session)) => {
            step(Step::Commit);
            commit(db, txn, load.load_id, &session, Outcome::Synced).await?;
            Ok(counts)
        }
        Err(e) => {
            // Explicitly, so the locks are gone before the blockers are read.
            if let Err(rollback) = txn.rollback().await {
                tracing::warn!(error = %rollback, "rolling back the merge failed; the server rolls it back when the connection closes");
            }
            Err(explain_lock_timeout(db, e, load.lock_wait).await)
        }
    }
}

/// A step that failed on `lock_timeout` becomes `Busy`, naming the sessions it
/// waited for.
pub(super) async fn explain_lock_timeout(
    db: &DatabaseConnection,
    e: MergeError,
    waited: std::time::Duration,
) -> MergeError {
    match e {
        MergeError::Step { step, source } if is_lock_timeout(&source) => MergeError::Busy {
            step,
            waited,
            blockers: blockers(db).await,
            source,
        },
        e => e,
    }
}

/// The merge's statements, in `txn` (not committed).
async fn merge_in(
    txn: &DatabaseTransaction,
    load: &Load<'_>,
    guard: Guard,
    step: &mut dyn FnMut(Step),
) -> Result<(Counts, Session), MergeError> {
    let id: Value = load.load_id.uuid().into();
    let protected: Value = load.protected.clone().into();
    bound_lock_waits(txn, load.lock_wait)
        .await
        .map_err(at(Step::Begin))?;
    // Not counted as an edit outside the agent (drift.rs).
    txn.execute_unprepared(session::OWN_WRITE)
        .await
        .map_err(at(Step::Begin))?;
    // The writer lock first: the transaction's id (taken by the exclusive lock on
    // staging, or by its first write) then follows every other writer's that
    // committed before it, and precedes every later writer's.
    step(Step::Lock);
    lock_writers(txn).await.map_err(at(Step::Lock))?;
    step(Step::Verify);
    verify(txn, load).await?;
    let session = session(txn).await.map_err(at(Step::Begin))?;
    // Under the writer lock: a row committed while the lock was awaited is seen.
    let empty = is_empty(txn).await?;
    let (current, inserted, updated, deleted) = if empty {
        step(Step::Insert);
        let inserted = fill(txn, load, &id).await?;
        if inserted != load.distinct {
            return Err(MergeError::Mismatch {
                step: Step::Insert,
                expected: load.distinct,
                actual: inserted,
            });
        }
        (0, inserted, 0, 0)
    } else {
        step(Step::Diff);
        let diffed = diff(txn, &id, &protected).await?;
        let current = diffed.current(load.distinct);
        let (new, updates, deletes) = (diffed.new, diffed.updates(), diffed.deletes);
        if approx(diffed.changed) < PROBE_BELOW * approx(current) {
            txn.execute_unprepared(followers::PROBE_KEYS)
                .await
                .map_err(at(Step::Diff))?;
        }
        // Journaled, each statement also writes what it changed: the plain
        // write wrapped (storage::journaled), its parameters then the load.
        let (update, insert, delete, journal_id) = if load.journal {
            (
                sync_journal::update(),
                sync_journal::insert(),
                sync_journal::delete(),
                vec![id.clone()],
            )
        } else {
            (
                followers::UPDATE.to_owned(),
                followers::INSERT.to_owned(),
                followers::DELETE.to_owned(),
                vec![],
            )
        };
        // The zone of `modified_at` is the plain update's and insert's parameter.
        let zone = || {
            [
                vec![load.modified_at_zone.as_str().into()],
                journal_id.clone(),
            ]
            .concat()
        };
        step(Step::Update);
        let updated = apply(txn, Step::Update, &update, zone(), updates).await?;
        step(Step::Insert);
        let inserted = apply(txn, Step::Insert, &insert, zone(), new).await?;
        step(Step::Delete);
        let values = [vec![protected], journal_id].concat();
        let deleted = apply(txn, Step::Delete, &delete, values, deletes).await?;
        (current, inserted, updated, deleted)
    };
    let counts = counted(load, empty, inserted, updated, deleted);
    guard.check(counts, current)?;
    step(Step::Status);
    runs::mark_synced(txn, load.load_id, load.hash)
        .await
        .map_err(at(Step::Status))?;
    runs::finish(
        txn,
        load.load_id,
        Outcome::Synced,
        &counts,
        None,
        Some(load.hash),
    )
    .await
    .map_err(at(Step::Record))?;
    journal::order(txn, load.load_id)
        .await
        .map_err(at(Step::Record))?;
    journal::mark_xid(txn, load.load_id, empty)
        .await
        .map_err(at(Step::Record))?;
    if load.journal {
        journal::seal(txn, load.load_id, counts.journaled, empty)
            .await
            .map_err(at(Step::Record))?;
    }
    // Staging holds this load (checked under the lock taken by verify) and
    // at most rows of a run that lost its lock, which fails its own verify.
    step(Step::Cleanup);
    cleanup(txn, load).await?;
    Ok((counts, session))
}

/// Commits `txn`, which records the run `load_id` as `outcome`. When the
/// COMMIT's answer is lost, finds out (on another connection) whether it
/// happened: `Ok` if it did.
pub(super) async fn commit(
    db: &DatabaseConnection,
    txn: DatabaseTransaction,
    load_id: LoadId,
    session: &Session,
    outcome: Outcome,
) -> Result<(), MergeError> {
    let Err(source) = txn.commit().await else {
        return Ok(());
    };
    match committed(db, load_id, session, outcome).await {
        Ok(true) => {
            tracing::warn!(error = %source, "the connection was lost during COMMIT, but the commit happened");
            Ok(())
        }
        Ok(false) => Err(at(Step::Commit)(source)),
        Err(check) => Err(MergeError::CommitUnknown {
            source,
            check: check.to_string(),
        }),
    }
}

/// The merge transaction's server session: backend pid and start time.
pub(super) struct Session {
    pid: i32,
    started: String,
}

pub(super) async fn session(txn: &impl ConnectionTrait) -> Result<Session, DbErr> {
    let row = txn
        .query_one(stmt(session::SESSION, vec![]))
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
    outcome: Outcome,
) -> Result<bool, DbErr> {
    let deadline = tokio::time::Instant::now() + COMMIT_CHECK;
    let alive = vec![session.pid.into(), session.started.clone().into()];
    loop {
        let check = async {
            // In the select list, so only that one session is signalled.
            let still = db
                .query_all(stmt(session::TERMINATE, alive.clone()))
                .await?
                .len();
            if still > 0 {
                return Ok(None);
            }
            let synced = count(
                db,
                sync_runs::HAS_OUTCOME,
                vec![load_id.uuid().into(), outcome.as_str().into()],
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

/// What `merge` would do, and whether the guard would refuse (the second
/// value): the merge's own steps up to the guard (verify, the empty-table
/// check, the diff and its counts) in a transaction that is always rolled
/// back, so the plan's counts are the merge's by construction
/// (docs/sync.md#dry-run). Unlike the merge it takes no writer lock on
/// `followers` (nor any lock a writer of `followers` would wait for): it
/// reads a snapshot. Its verify locks `staging_followers` as the merge's does
/// (a run's staging is used under the run lock only), its waits bounded by
/// `LOCK_WAIT_TIMEOUT` as the merge's are.
#[tracing::instrument(skip_all, fields(load_id = %load.load_id), err(level = "debug"))]
pub(crate) async fn plan(
    db: &DatabaseConnection,
    load: &Load<'_>,
    guard: Guard,
) -> Result<(Counts, Option<MergeError>), MergeError> {
    let txn = db.begin().await.map_err(at(Step::Begin))?;
    let planned = plan_in(&txn, load).await;
    // Whatever happened: the diff table and the lock on staging go with it.
    let rolled_back = txn.rollback().await.map_err(at(Step::Commit));
    let (counts, current) = match planned {
        Ok(planned) => planned,
        Err(e) => return Err(explain_lock_timeout(db, e, load.lock_wait).await),
    };
    rolled_back?;
    Ok((counts, guard.check(counts, current).err()))
}

/// Whether `followers` is empty: the first sync, which only inserts.
async fn is_empty(txn: &impl ConnectionTrait) -> Result<bool, MergeError> {
    let rows = count(txn, followers::IS_EMPTY, vec![])
        .await
        .map_err(at(Step::Lock))?;
    Ok(rows == 0)
}

/// `plan`'s statements, in `txn` (rolled back by the caller): the counts and
/// the followers before the merge.
async fn plan_in(txn: &DatabaseTransaction, load: &Load<'_>) -> Result<(Counts, u64), MergeError> {
    let id: Value = load.load_id.uuid().into();
    let protected: Value = load.protected.clone().into();
    bound_lock_waits(txn, load.lock_wait)
        .await
        .map_err(at(Step::Begin))?;
    verify(txn, load).await?;
    if is_empty(txn).await? {
        // The merge's fill inserts the whole load (verify counted it).
        return Ok((counted(load, true, load.distinct, 0, 0), 0));
    }
    let diffed = diff(txn, &id, &protected).await?;
    let counts = counted(load, false, diffed.new, diffed.updates(), diffed.deletes);
    Ok((counts, diffed.current(load.distinct)))
}

/// The run's counts once the changes are known; the journal holds one row per
/// changed follower, none for the first sync into an empty table (`filled`,
/// journaled as such: journal.rs).
fn counted(load: &Load<'_>, filled: bool, inserted: u64, updated: u64, deleted: u64) -> Counts {
    Counts {
        inserted,
        updated,
        deleted,
        unchanged: load.distinct.saturating_sub(inserted + updated),
        journaled: if load.journal && !filled {
            inserted + updated + deleted
        } else {
            0
        },
        ..load.counts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guard_refuses_above_the_ratio_only() {
        let g = Guard {
            max_delete_ratio: 0.5,
            allow_mass_delete: false,
            max_update_ratio: 1.0,
            allow_mass_update: false,
            empty_file: None,
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

    #[test]
    fn rename_guard_refuses_above_its_ratio_unless_approved() {
        let g = Guard {
            max_delete_ratio: 0.5,
            allow_mass_delete: false,
            max_update_ratio: 0.5,
            allow_mass_update: false,
            empty_file: None,
        };
        let upd = |updated| Counts {
            updated,
            ..Counts::default()
        };
        assert!(g.check(upd(5), 10).is_ok());
        assert!(matches!(
            g.check(upd(6), 10),
            Err(MergeError::MassUpdate { .. })
        ));
        let approved = Guard {
            allow_mass_update: true,
            ..g
        };
        assert!(approved.check(upd(10), 10).is_ok());
        let deletes_approved = Guard {
            allow_mass_delete: true,
            ..g
        };
        assert!(
            deletes_approved.check(upd(10), 10).is_err(),
            "each guard has its own approval"
        );
        assert!(Guard {
            max_update_ratio: 1.0,
            ..g
        }
        .check(upd(10), 10)
        .is_ok());
    }

    #[test]
    fn an_empty_file_is_refused_whatever_the_ratio() {
        let g = Guard {
            max_delete_ratio: 1.0,
            allow_mass_delete: false,
            max_update_ratio: 1.0,
            allow_mass_update: false,
            empty_file: Some(Emptiness::NoBytes),
        };
        let del = Counts {
            deleted: 3,
            ..Counts::default()
        };
        assert!(matches!(g.check(del, 3), Err(MergeError::EmptyFile { .. })));
        assert!(g.check(Counts::default(), 0).is_ok(), "nothing to delete");
        assert!(Guard {
            allow_mass_delete: true,
            ..g
        }
        .check(del, 3)
        .is_ok());
    }
}
