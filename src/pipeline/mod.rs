//! One sync, as README.md ("What a sync does") defines it: settle → lock →
//! recover → hash → read → validate → stage → dedupe → merge/purge saga → record.
//! `run_sync` is the table of contents; each stage lives in its own module with
//! one input and one output type.
//!
//! Compensation: whatever fails after the run record was written, `compensate`
//! removes the load's staging rows and finishes the record as `failed` or
//! `refused` with the reason. `followers` only changes in the merge transaction.

pub(crate) mod check;
pub(crate) mod drift;
pub mod dupes;
pub(crate) mod journal;
pub(crate) mod merge;
pub mod mirror;
mod progress;
pub(crate) mod read;
pub(crate) mod ready;
pub(crate) mod revert;
pub(crate) mod settle;
pub mod staging;
pub mod timings;
pub(crate) mod validate;

use crate::config::{CsvFormat, Settings};
use crate::convert;
use crate::db::{AdvisoryLock, DbError};
use crate::domain::{ContentHash, LoadId};
use crate::domain::{Counts, Outcome, Stage, Trigger};
use crate::errors::error_chain;
use crate::runs;
use merge::{Guard, Load, MergeError};
use progress::Progress;
use read::{CsvRecords, ReadError};
use sea_orm::{DatabaseConnection, DbErr};
use serde::Serialize;
use staging::{Batch, StagingError};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use timings::StageTimes;
use tokio_util::sync::CancellationToken;
use tracing::Level;
use validate::{validate, Reject, RejectReason};

use crate::rejects::{self, StoredReject};
use std::sync::Mutex;

pub use progress::ProgressStyle;

/// How the reason of a run skipped for an earlier refusal starts.
pub(crate) const REFUSED_EARLIER: &str = "refused earlier: ";

/// How often an approved run asks again for a run lock held by another run.
const LOCK_POLL: Duration = Duration::from_millis(250);

/// How a dry run's note starts when a real run would be refused.
pub(crate) const WOULD_REFUSE: &str = "a real run would be refused: ";

/// How long a cancelled run waits for its file reader to notice.
const READER_GRACE: Duration = Duration::from_secs(5);

/// How many duplicate emails and rejects are logged one by one per run.
const REPORT_LIMIT: usize = 100;

/// What to sync and how.
#[derive(Clone, Debug)]
pub struct SyncRequest {
    pub file: PathBuf,
    pub trigger: Trigger,
    pub force: bool,
    pub dry_run: bool,
    pub allow_mass_delete: bool,
    /// Lift the rename guard (MAX_UPDATE_RATIO).
    pub allow_mass_update: bool,
    /// Sync even when the table was last synced from another file.
    pub allow_file_change: bool,
}

impl SyncRequest {
    /// An explicit approval (`--force`, `--allow-mass-delete`, `--allow-mass-update`):
    /// it re-reads a file refused earlier, and waits for a run lock held by
    /// another run instead of skipping (docs/sync.md#refusals-and-approvals).
    pub fn approves(&self) -> bool {
        self.force || self.allow_mass_delete || self.allow_mass_update
    }
}

/// What the pipeline needs from the agent.
#[derive(Clone)]
pub struct SyncContext {
    pub db: DatabaseConnection,
    pub settings: Arc<Settings>,
    pub progress: ProgressStyle,
    /// Writes still open on the file, as the watcher saw them (`serve` with inotify).
    pub writes: settle::WriteTracker,
}

/// The one summary a run produces (docs/operations.md#the-sync-summary).
#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    /// The mirror, once `[[mirror]]` tables are configured (docs/mirrors.md#commands):
    /// `mirror=NAME` in the line, `"mirror"` in the JSON object.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mirror: Option<String>,
    pub outcome: Outcome,
    pub load_id: LoadId,
    #[serde(flatten)]
    pub counts: Counts,
    /// Seconds.
    #[serde(serialize_with = "as_seconds")]
    pub duration: Duration,
    /// Dry runs only: whether a real run would be refused, and why.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub dry_run: Option<DryRunVerdict>,
    /// Why a run was skipped, refused or failed (not part of the JSON object).
    #[serde(skip)]
    pub reason: Option<String>,
    /// A failed run whose cause may pass (connection, serialization, lock,
    /// a concurrent writer): `serve` retries it (docs/sync.md#refusals-and-approvals).
    #[serde(skip)]
    pub transient: bool,
    /// Skipped because this content was refused earlier: the file still needs an
    /// operator (`sync` exits 1, the event is a warning).
    #[serde(skip)]
    pub refused_earlier: bool,
}

/// The keys a dry run's JSON summary adds (docs/operations.md#the-sync-summary).
#[derive(Clone, Debug, Serialize)]
pub struct DryRunVerdict {
    pub would_refuse: bool,
    /// The guard's reason when `would_refuse`, else null.
    pub would_refuse_reason: Option<String>,
}

impl Summary {
    /// The summary of a run that could not start (the database is unreachable).
    pub fn not_started(load_id: LoadId) -> Self {
        Self {
            mirror: None,
            outcome: Outcome::Failed,
            load_id,
            counts: Counts::default(),
            duration: Duration::ZERO,
            dry_run: None,
            reason: None,
            transient: true,
            refused_earlier: false,
        }
    }

    /// The level of the run's `sync finished` event.
    pub fn level(&self) -> Level {
        if self.refused_earlier {
            Level::WARN
        } else {
            finished_level(self.outcome)
        }
    }

    /// Whether the log filter shows the run's `sync finished` event.
    pub fn event_shown(&self) -> bool {
        level_enabled(self.level())
    }
}

fn as_seconds<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64((d.as_secs_f64() * 1000.0).round() / 1000.0)
}

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error(transparent)]
    Read(#[from] ReadError),
    #[error(transparent)]
    Outside(crate::config::ConfineError),
    #[error("{path}: {first}; refused: {rejected} invalid row(s) of {rows_read}, more than MAX_REJECTS={max}{}", hint_suffix(.hint))]
    TooManyRejects {
        path: PathBuf,
        /// The first invalid row of the file.
        first: Box<Reject>,
        rejected: u64,
        rows_read: u64,
        max: u64,
        /// A likely cause, e.g. the wrong `CSV_DELIMITER`.
        hint: Option<String>,
    },
    #[error("{path}: {reject}; refused whatever MAX_REJECTS says: an unbalanced quote swallows the lines after it, and their followers would be deleted")]
    BrokenQuote {
        path: PathBuf,
        reject: Reject,
        rows_read: u64,
        rejected: u64,
    },
    #[error("followers was last synced from {last}, not from {this}; refused, since two agents or settings mirroring different files into one table revert each other on every run (to switch files on purpose: `sync --force` once, or ALLOW_FILE_CHANGE=true)")]
    OtherFile { last: String, this: String },
    #[error("{path}: the file changed while it was being read; nothing applied (a later run syncs the new content)")]
    FileChanged { path: PathBuf },
    #[error("{path}: the file is still being written ({why}); waited {:.1}s, nothing read (a later run syncs it once it has settled)", .waited.as_secs_f64())]
    StillWriting {
        path: PathBuf,
        why: String,
        waited: Duration,
    },
    #[error(transparent)]
    Staging(#[from] StagingError),
    #[error(transparent)]
    Merge(#[from] MergeError),
    /// The sync of an unchanged file into a table edited outside the agent
    /// (docs/sync.md#edits-outside-the-agent) stopped.
    #[error("{drift}; syncing the file back")]
    Drift {
        drift: String,
        #[source]
        source: Box<MergeError>,
    },
    #[error("cannot lock or reach the database")]
    Db(#[from] DbError),
    #[error("recording the run failed")]
    Bookkeeping(#[source] DbErr),
    #[error("{path}: not read: {reason} after waiting {}; the file's writer creates it once the file is complete (READY_MARKER)", robfig_cron::go_duration::format_go_duration(*.waited))]
    NotReady {
        path: PathBuf,
        reason: ready::NotReady,
        waited: Duration,
    },
    #[error("another sync of this database held the run lock for {} (RUN_LOCK_WAIT); nothing done, the approval was not applied: run it again", robfig_cron::go_duration::format_go_duration(*.waited))]
    LockBusy { waited: Duration },
    #[error("cancelled by shutdown")]
    Cancelled,
    #[error("reader task failed")]
    Join(#[source] tokio::task::JoinError),
    #[error("the file reader did not return after the COPY workers stopped (a hung read?)")]
    ReaderStuck,
}

impl SyncError {
    /// `refused` when the file's content is the reason, `failed` otherwise.
    pub fn outcome(&self) -> Outcome {
        match self {
            Self::TooManyRejects { .. }
            | Self::BrokenQuote { .. }
            | Self::Outside(_)
            | Self::StillWriting { .. }
            | Self::OtherFile { .. }
            | Self::NotReady { .. } => Outcome::Refused,
            Self::Merge(e) if e.refusal_counts().is_some() => Outcome::Refused,
            Self::Drift { source, .. } if source.refusal_counts().is_some() => Outcome::Refused,
            Self::Read(e) if e.is_content() => Outcome::Refused,
            _ => Outcome::Failed,
        }
    }

    /// Whether a failure may pass by itself, so that `serve` retries the run:
    /// the database unreachable or restarting, a serialization failure or
    /// deadlock, a lock timeout, a unique violation from a concurrent writer,
    /// a run that lost its lock connection. Refusals, bad files and anything
    /// else are permanent (docs/sync.md#refusals-and-approvals).
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Db(e) => match e {
                DbError::Connect { .. } | DbError::LockConnect { .. } | DbError::Lock(_) => true,
                _ => transient_cause(e),
            },
            Self::Merge(MergeError::Lost(_) | MergeError::Busy { .. }) => true,
            Self::Merge(MergeError::Step { source, .. }) => transient_db(source),
            Self::Bookkeeping(e) => transient_db(e),
            Self::Staging(e) => transient_cause(e),
            _ => false,
        }
    }

    /// The database stopped answering (`DB_TIMEOUT`): nothing more is asked of it.
    pub fn is_stalled(&self) -> bool {
        matches!(self, Self::Db(DbError::Stalled(_)))
    }

    /// The stage that failed, for logs, where the error itself says; `None` for a
    /// failure more than one stage may meet (the database, the run record, staging,
    /// a lost lock, a shutdown, and a read error or failed task, which the hash step
    /// meets as well as the read): the run's timings then tell where it was.
    pub fn stage(&self) -> Option<Stage> {
        match self {
            Self::TooManyRejects { .. }
            | Self::BrokenQuote { .. }
            | Self::FileChanged { .. }
            | Self::ReaderStuck => Some(Stage::ReadAndStage),
            Self::NotReady { .. } => Some(Stage::Ready),
            Self::StillWriting { .. } => Some(Stage::Settle),
            Self::LockBusy { .. } => Some(Stage::Lock),
            Self::Outside(_) | Self::OtherFile { .. } => Some(Stage::Hash),
            Self::Merge(e) => merge_stage(e),
            Self::Drift { source, .. } => merge_stage(source),
            Self::Read(_)
            | Self::Join(_)
            | Self::Staging(_)
            | Self::Db(_)
            | Self::Bookkeeping(_)
            | Self::Cancelled => None,
        }
    }

    /// What the run had counted when it stopped, for its summary and record.
    fn partial_counts(&self, counts: &mut Counts) {
        match self {
            Self::TooManyRejects {
                rows_read,
                rejected,
                ..
            }
            | Self::BrokenQuote {
                rows_read,
                rejected,
                ..
            } => {
                counts.rows_read = *rows_read;
                counts.rejected = *rejected;
            }
            Self::Merge(e) => {
                if let Some(would) = e.refusal_counts() {
                    *counts = would;
                }
            }
            Self::Drift { source, .. } => {
                if let Some(would) = source.refusal_counts() {
                    *counts = would;
                }
            }
            _ => {}
        }
    }
}

/// Whether a database error may pass by itself (see `SyncError::is_transient`).
fn transient_db(e: &DbErr) -> bool {
    use sea_orm::{ConnAcquireErr, RuntimeErr};
    match e {
        DbErr::ConnectionAcquire(ConnAcquireErr::Timeout | ConnAcquireErr::ConnectionClosed) => {
            true
        }
        DbErr::Conn(RuntimeErr::SqlxError(e))
        | DbErr::Exec(RuntimeErr::SqlxError(e))
        | DbErr::Query(RuntimeErr::SqlxError(e)) => transient_sqlx(e),
        DbErr::Conn(_) => true,
        _ => false,
    }
}

fn transient_sqlx(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(e) => e.code().is_some_and(|code| {
            // Connection exceptions (08…), serialization failure, deadlock,
            // lock not available, unique violation (a concurrent writer: the
            // load itself is deduplicated), too many connections, and a server
            // shutting down, crashed or starting up.
            code.starts_with("08")
                || matches!(
                    &*code,
                    "40001" | "40P01" | "55P03" | "23505" | "53300" | "57P01" | "57P02" | "57P03"
                )
        }),
        _ => false,
    }
}

/// Walks an error's sources for a database error and judges it.
fn transient_cause(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(e);
    while let Some(e) = cause {
        if let Some(e) = e.downcast_ref::<sqlx::Error>() {
            return transient_sqlx(e);
        }
        if let Some(e) = e.downcast_ref::<DbErr>() {
            return transient_db(e);
        }
        cause = e.source();
    }
    false
}

fn hint_suffix(hint: &Option<String>) -> String {
    hint.as_deref()
        .map(|h| format!(" (hint: {h})"))
        .unwrap_or_default()
}

/// The stage a merge error names: its step, or the guard for a refusal.
fn merge_stage(e: &MergeError) -> Option<Stage> {
    match e {
        MergeError::Step { step, .. }
        | MergeError::Busy { step, .. }
        | MergeError::Mismatch { step, .. } => Some(step.stage()),
        MergeError::MassDelete { .. }
        | MergeError::MassUpdate { .. }
        | MergeError::EmptyFile { .. } => Some(Stage::MergeGuard),
        MergeError::CommitUnknown { .. } => Some(Stage::MergeCommit),
        MergeError::Lost(_) => None,
    }
}

/// Runs one sync and returns its summary; never panics, never leaves staging rows
/// behind, and changes `followers` only when the outcome is `synced`.
#[tracing::instrument(name = "sync", skip_all, fields(mirror = tracing::field::Empty, load_id = %load_id, trigger = request.trigger.as_str(), file = %request.file.display()))]
pub async fn run_sync(
    ctx: &SyncContext,
    request: &SyncRequest,
    load_id: LoadId,
    cancel: CancellationToken,
) -> Summary {
    // Named once mirrors are configured (docs/mirrors.md#metrics-and-logs).
    let label = ctx.settings.builtin_label();
    if let Some(mirror) = label {
        tracing::Span::current().record("mirror", mirror);
    }
    let started = Instant::now();
    crate::metrics::record_run_started(label);
    let mut run = Run::new(load_id, label);
    let result = locked_run(ctx, request, &mut run, cancel).await;
    let Run {
        mut counts,
        mut stages,
        ..
    } = run;
    stages.end();
    // Bounded like compensation: an unreachable database must not hold the run.
    let stalled = result.as_ref().is_err_and(SyncError::is_stalled);
    let recorded = if stalled {
        Ok(Ok(()))
    } else {
        tokio::time::timeout(
            COMPENSATION_REACH_TIMEOUT,
            runs::record_stages(&ctx.db, load_id, &stages.to_json()),
        )
        .await
    };
    match recorded {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::warn!(error = %error_chain(&e), "could not record the run's stage durations")
        }
        Err(_) => tracing::warn!(
            "could not record the run's stage durations: the database did not answer"
        ),
    }
    let (outcome, reason, stage, transient) = match result {
        Ok((outcome, reason)) => (outcome, reason, None, false),
        Err(e) => (
            e.outcome(),
            Some(error_chain(&e)),
            e.stage().or(stages.last()).map(Stage::as_str),
            e.is_transient(),
        ),
    };
    // What a refused or failed run would have changed stays in its counts, but
    // it rolled back: the journal holds nothing for it (docs/operations.md#the-sync-summary).
    if matches!(outcome, Outcome::Refused | Outcome::Failed) {
        counts.journaled = 0;
    }
    let refused_earlier = outcome == Outcome::Skipped
        && reason
            .as_deref()
            .is_some_and(|r| r.starts_with(REFUSED_EARLIER));
    if outcome == Outcome::Synced {
        prune_journal(ctx).await;
    }
    // A dry run's only reason is the refusal a real run would meet.
    let dry_run = (outcome == Outcome::DryRun).then(|| DryRunVerdict {
        would_refuse: reason.is_some(),
        would_refuse_reason: reason
            .as_deref()
            .map(|r| r.strip_prefix(WOULD_REFUSE).unwrap_or(r).to_owned()),
    });
    let summary = Summary {
        mirror: None,
        outcome,
        load_id,
        counts,
        duration: started.elapsed(),
        dry_run,
        reason,
        transient,
        refused_earlier,
    };
    crate::metrics::record_run(label, summary.outcome, &summary.counts, summary.duration);
    if summary.outcome == Outcome::Refused || summary.refused_earlier {
        crate::metrics::record_refused(label);
    }
    finished_event(&summary, stage);
    summary
}

/// The one event of a run's end, with its reason (a refusal is said once).
fn finished_event(summary: &Summary, stage: Option<&str>) {
    let counts = &summary.counts;
    macro_rules! finished {
        ($level:expr) => {
            tracing::event!(
                $level,
                outcome = %summary.outcome,
                rows_read = counts.rows_read,
                inserted = counts.inserted,
                updated = counts.updated,
                deleted = counts.deleted,
                unchanged = counts.unchanged,
                rejected = counts.rejected,
                duplicates = counts.duplicates,
                journaled = counts.journaled,
                duration_s = summary.duration.as_secs_f64(),
                stage = stage,
                reason = summary.reason.as_deref().map(tracing::field::display),
                "sync finished"
            )
        };
    }
    match summary.level() {
        Level::ERROR => finished!(Level::ERROR),
        Level::WARN => finished!(Level::WARN),
        _ => finished!(Level::INFO),
    }
}

/// The level of a run's `sync finished` event: error when it failed, warn when
/// refused, info otherwise.
pub fn finished_level(outcome: Outcome) -> Level {
    match outcome {
        Outcome::Failed => Level::ERROR,
        Outcome::Refused => Level::WARN,
        Outcome::Synced | Outcome::Reverted | Outcome::Skipped | Outcome::DryRun => Level::INFO,
    }
}

/// Whether the log filter shows the `sync finished` event of a run with this outcome.
pub fn finished_event_shown(outcome: Outcome) -> bool {
    level_enabled(finished_level(outcome))
}

fn level_enabled(level: Level) -> bool {
    match level {
        Level::ERROR => tracing::enabled!(Level::ERROR),
        Level::WARN => tracing::enabled!(Level::WARN),
        _ => tracing::enabled!(Level::INFO),
    }
}

/// Drops the journal beyond its retention, after the run and outside its lock
/// (docs/operations.md#journal-retention); a failure is only logged, the next
/// run prunes again.
pub async fn prune_journal(ctx: &SyncContext) {
    // JOURNAL_KEEP_RUNS=0, even for one run, drops what could be reverted: say so.
    let dropping = match ctx.settings.retention.journal.keep_runs {
        0 => runs::journaled_runs(&ctx.db).await.unwrap_or(0),
        _ => 0,
    };
    match journal::prune(&ctx.db, ctx.settings.retention.journal).await {
        Err(e) => {
            tracing::warn!(error = %error_chain(&e), "could not prune the journal; the next run tries again")
        }
        Ok(rows) if dropping > 0 => tracing::warn!(
            runs = dropping,
            rows,
            "JOURNAL_KEEP_RUNS=0: the journal kept so far was dropped; those runs can no longer be reverted"
        ),
        Ok(_) => {}
    }
}

/// Takes the run lock (or records a skip), then runs and compensates.
async fn locked_run(
    ctx: &SyncContext,
    request: &SyncRequest,
    run: &mut Run,
    cancel: CancellationToken,
) -> Result<(Outcome, Option<String>), SyncError> {
    let db = &ctx.db;
    let load_id = run.load_id;
    let file = crate::config::file_identity(&request.file)
        .display()
        .to_string();
    if let Some(suffix) = &ctx.settings.csv.ready_marker {
        run.stages.begin(Stage::Ready);
        if let Some(reason) = wait_ready(ctx, request, load_id, &file, suffix, &cancel).await? {
            return Ok((Outcome::Skipped, Some(reason)));
        }
    }
    run.stages.begin(Stage::Settle);
    // Settle before the lock: a file still being written holds up no other agent.
    let rules = settle::Rules::from_debounce(ctx.settings.triggers.watch_debounce);
    let settled = match settle::wait(&request.file, rules, &ctx.writes, &cancel).await {
        Ok(settled) => settled,
        Err(unsettled) => {
            let e = match unsettled {
                Some(settle::Unsettled { why, waited }) => SyncError::StillWriting {
                    path: request.file.clone(),
                    why,
                    waited,
                },
                None => SyncError::Cancelled,
            };
            return Err(refuse_unlocked(db, load_id, request, &file, e).await);
        }
    };
    run.stages.begin(Stage::Lock);
    let lock = take_run_lock(ctx, request, load_id, &file, &cancel).await?;
    let Some(lock) = lock else {
        let reason = "another sync of this database is in progress (advisory lock held)";
        tracing::warn!("{reason}; skipping");
        record_unlocked(
            db,
            load_id,
            request.trigger,
            &file,
            Outcome::Skipped,
            reason,
        )
        .await?;
        return Ok((Outcome::Skipped, Some(reason.into())));
    };
    let lock_pid = lock.pid();
    // A database that stops answering fails the run within DB_TIMEOUT (docs/guarantees.md#database-faults).
    let stalled = lock.stalled(ctx.settings.database.timeout);
    let work = async {
        runs::recover(db).await.map_err(SyncError::Bookkeeping)?;
        runs::start(db, load_id, request.trigger, &file, None)
            .await
            .map_err(SyncError::Bookkeeping)?;
        let outcome = saga(ctx, request, &settled, lock_pid, &mut *run, &cancel).await;
        store_rejects(ctx, load_id, &run.tally).await;
        outcome
    };
    let result = tokio::select! {
        outcome = work => outcome,
        e = stalled => Err(SyncError::Db(e)),
    };
    run.stages.end();
    if let Err(e) = &result {
        e.partial_counts(&mut run.counts);
        if e.is_stalled() {
            tracing::error!("the database does not answer: the staging rows and the run record are left to the next run's recovery");
        } else {
            let refused = run
                .hashed
                .as_ref()
                .filter(|_| e.outcome() == Outcome::Refused);
            compensate(db, load_id, &run.counts, e, refused).await;
            // A refusal of the content is remembered: later runs skip it cheaply.
            if let Some(hash) = refused {
                let key = refusal_key(&ctx.settings, hash);
                if let Err(e) = runs::remember_refusal(db, load_id, &key).await {
                    tracing::warn!(error = %error_chain(&e), "could not remember the refusal; the next run reads the file again");
                }
            }
        }
    }
    lock.release().await;
    result
}

/// An approved run's wait for the run lock another run holds: at most
/// `RUN_LOCK_WAIT`; `None` when it stayed taken (or the run was cancelled).
async fn wait_for_lock(
    ctx: &SyncContext,
    cancel: &CancellationToken,
) -> Result<Option<AdvisoryLock>, SyncError> {
    let wait = ctx.settings.database.run_lock_wait;
    tracing::warn!(
        run_lock_wait = %robfig_cron::go_duration::format_go_duration(wait),
        "another sync of this database is in progress (advisory lock held); an approved run waits for it"
    );
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let now = tokio::time::Instant::now();
        if now >= deadline {
            return Ok(None);
        }
        tokio::select! {
            _ = cancel.cancelled() => return Ok(None),
            _ = tokio::time::sleep(LOCK_POLL.min(deadline - now)) => {}
        }
        if let Some(lock) = AdvisoryLock::try_run_lock(&ctx.settings.database.url).await? {
            return Ok(Some(lock));
        }
    }
}

/// Records a run stopped by `e` before it takes the run lock, and returns the
/// error to end the run with (the bookkeeping failure, if recording failed).
async fn refuse_unlocked(
    db: &DatabaseConnection,
    load_id: LoadId,
    request: &SyncRequest,
    file: &str,
    e: SyncError,
) -> SyncError {
    let recorded = record_unlocked(
        db,
        load_id,
        request.trigger,
        file,
        e.outcome(),
        &error_chain(&e),
    )
    .await;
    recorded.err().unwrap_or(e)
}

/// Records a run that ends before it takes the run lock.
async fn record_unlocked(
    db: &DatabaseConnection,
    load_id: LoadId,
    trigger: Trigger,
    file: &str,
    outcome: Outcome,
    reason: &str,
) -> Result<(), SyncError> {
    runs::start(db, load_id, trigger, file, None)
        .await
        .map_err(SyncError::Bookkeeping)?;
    runs::finish(db, load_id, outcome, &Counts::default(), Some(reason), None)
        .await
        .map_err(SyncError::Bookkeeping)
}

/// Stores the rejects the run read, whatever its outcome; a failure to store them
/// is logged and does not change the outcome.
async fn store_rejects(ctx: &SyncContext, load_id: LoadId, tally: &ReadTally) {
    let stored = std::mem::take(&mut *tally.rejects.lock().unwrap_or_else(|e| e.into_inner()));
    if stored.is_empty() {
        return;
    }
    // Bounded like compensation: an unreachable database must not hold the run.
    let reachable = tokio::time::timeout(COMPENSATION_REACH_TIMEOUT, ctx.db.ping()).await;
    if !matches!(reachable, Ok(Ok(()))) {
        tracing::error!("database unreachable: the run's rejects are not stored");
        return;
    }
    if let Err(e) = rejects::store(&ctx.db, load_id, &stored).await {
        tracing::error!(error = %error_chain(&e), "could not store the run's rejects");
    }
}

/// How long compensation waits for the database to answer at all. A database
/// that went away would otherwise hold the run (and the runner, and a stop) for
/// the pool's acquire timeout twice over; the next run's recovery does the same
/// cleanup once it is back.
const COMPENSATION_REACH_TIMEOUT: Duration = Duration::from_secs(5);

/// Undoes what the run did: staging rows go, the record says why.
async fn compensate(
    db: &DatabaseConnection,
    load_id: LoadId,
    counts: &Counts,
    error: &SyncError,
    hash: Option<&ContentHash>,
) {
    let reachable = tokio::time::timeout(COMPENSATION_REACH_TIMEOUT, db.ping()).await;
    if !matches!(reachable, Ok(Ok(()))) {
        tracing::error!(
            "database unreachable: the staging rows and the run record are left to the next run's recovery"
        );
        return;
    }
    if let Err(e) = staging::purge(db, load_id).await {
        tracing::error!(error = %error_chain(&e), "could not remove staging rows; the next run removes them");
    }
    if let Err(e) = runs::finish(
        db,
        load_id,
        error.outcome(),
        counts,
        Some(&error_chain(error)),
        hash,
    )
    .await
    {
        tracing::error!(error = %error_chain(&e), "could not record the run's outcome; the next run marks it failed");
    }
}

/// Waits for the ready marker (`READY_MARKER`). Returns the reason to skip when
/// serve's trigger finds it missing; a run started by hand is refused instead.
async fn wait_ready(
    ctx: &SyncContext,
    request: &SyncRequest,
    load_id: LoadId,
    file: &str,
    suffix: &str,
    cancel: &CancellationToken,
) -> Result<Option<String>, SyncError> {
    let db = &ctx.db;
    // Serve's triggers try again on the marker's arrival or the next tick; a
    // run started by hand waits a bounded time, then is refused. Checked
    // before the settle step: a file without its marker is not waited on.
    let manual = request.trigger == Trigger::Manual;
    let waited = if manual {
        ctx.settings.csv.ready_timeout
    } else {
        Duration::ZERO
    };
    if let Err(reason) = ready::wait(&request.file, suffix, waited, cancel).await {
        if !manual {
            let reason = format!("not read yet: {reason}");
            tracing::info!("{reason}; skipping");
            record_unlocked(
                db,
                load_id,
                request.trigger,
                file,
                Outcome::Skipped,
                &reason,
            )
            .await?;
            return Ok(Some(reason));
        }
        let e = SyncError::NotReady {
            path: request.file.clone(),
            reason,
            waited,
        };
        return Err(refuse_unlocked(db, load_id, request, file, e).await);
    }
    Ok(None)
}

/// Takes the run lock; a run that approves something waits for it
/// (`RUN_LOCK_WAIT`) and is refused if it stays busy. `None`: held elsewhere.
async fn take_run_lock(
    ctx: &SyncContext,
    request: &SyncRequest,
    load_id: LoadId,
    file: &str,
    cancel: &CancellationToken,
) -> Result<Option<AdvisoryLock>, SyncError> {
    let db = &ctx.db;
    let lock = match AdvisoryLock::try_run_lock(&ctx.settings.database.url).await? {
        None if request.approves() => match wait_for_lock(ctx, cancel).await? {
            Some(lock) => Some(lock),
            None if cancel.is_cancelled() => {
                return Err(refuse_unlocked(db, load_id, request, file, SyncError::Cancelled).await)
            }
            None => {
                let e = SyncError::LockBusy {
                    waited: ctx.settings.database.run_lock_wait,
                };
                return Err(refuse_unlocked(db, load_id, request, file, e).await);
            }
        },
        lock => lock,
    };
    Ok(lock)
}

/// The stages in order, each adding to `run`. Returns the outcome of a run
/// that got this far.
async fn saga(
    ctx: &SyncContext,
    request: &SyncRequest,
    settled: &settle::Settled,
    lock_pid: i32,
    run: &mut Run,
    cancel: &CancellationToken,
) -> Result<(Outcome, Option<String>), SyncError> {
    let load_id = run.load_id;
    let Run {
        counts,
        stages,
        tally,
        hashed,
        ..
    } = run;
    let settings = &ctx.settings;
    let db = &ctx.db;
    let file = &request.file;
    let progress = progress::start(ctx.progress, load_id, file);
    let mut stage = |stage: Stage| {
        progress.stage(stage);
        stages.begin(stage);
    };

    // 1. Hash: unchanged since the last successful sync → skip. The file must
    //    still resolve inside TABLES_DIR (a symlink may have been repointed).
    stage(Stage::Hash);
    let (hash, repairing) = match hash_step(ctx, request, load_id, counts, cancel).await? {
        HashStep::Skip(reason) => return Ok((Outcome::Skipped, Some(reason))),
        HashStep::Sync { hash, repairing } => (hash, repairing),
    };
    let drifted = |source: MergeError| match &repairing {
        Some(drift) => SyncError::Drift {
            drift: drift.clone(),
            source: Box::new(source),
        },
        None => SyncError::Merge(source),
    };
    *hashed = Some(hash.clone());
    let guard = Guard {
        max_delete_ratio: settings.guard.max_delete_ratio,
        allow_mass_delete: request.allow_mass_delete,
        max_update_ratio: settings.guard.max_update_ratio,
        allow_mass_update: request.allow_mass_update,
        empty_file: read::emptiness(file),
    };
    // An empty file is refused before anything is staged (a dry run plans it).
    if guard.empty_file.is_some() && !request.dry_run {
        let current = runs::follower_count(db)
            .await
            .map_err(SyncError::Bookkeeping)?;
        let current =
            convert::count("followers", current).map_err(|e| SyncError::Bookkeeping(e.into()))?;
        let would = Counts {
            deleted: current,
            ..Counts::default()
        };
        guard.check(would, current).map_err(drifted)?;
    }

    // 2-5. Read, validate and stage, streaming.
    stage(Stage::ReadAndStage);
    let read = read_and_stage(ctx, request, load_id, &progress, tally, cancel)
        .await
        .inspect_err(|_| {
            // A run stopped while reading reports the rows it had read.
            counts.rows_read = tally.rows.load(Ordering::Relaxed);
            counts.rejected = tally.rejected.load(Ordering::Relaxed);
        })?;
    *counts = Counts {
        rows_read: read.rows_read,
        rejected: read.rejected,
        ..Counts::default()
    };
    // The bytes read are the bytes hashed, and the file is as it was when it
    // settled (nothing started writing it between the two).
    let unchanged = match settled {
        settle::Settled::File(state) => settle::file_state(file).as_ref() == Some(state),
        settle::Settled::Missing => true,
    };
    if read.hash != hash || !unchanged {
        return Err(SyncError::FileChanged { path: file.clone() });
    }

    // 4. Duplicates: the last occurrence wins, also when it is a rejected row
    //    (then the follower stays as it is).
    stage(Stage::Dedupe);
    if cancel.is_cancelled() {
        return Err(SyncError::Cancelled);
    }
    let duplicates =
        staging::resolve_duplicates(db, load_id, convert::len(REPORT_LIMIT), &read.candidates)
            .await?;
    for (email, lines) in &duplicates.examples {
        tracing::warn!(file = %file.display(), %email, ?lines, "duplicate email; the last valid occurrence wins unless a later rejected row leaves the follower as it is");
    }
    let superseded = staging::drop_superseded(db, load_id, &read.protected).await?;
    // A valid row followed by a rejected row of the same email is a duplicate too.
    counts.duplicates = duplicates.extra_rows + superseded;
    if cancel.is_cancelled() {
        return Err(SyncError::Cancelled);
    }

    // 6-7. Merge and purge in one transaction (it also removes the staging rows).
    let clock = crate::db::modified_at_clock(db).await?;
    let load = Load {
        load_id,
        lock_pid,
        hash: &hash,
        protected: read.protected.into_iter().map(|(email, _)| email).collect(),
        counts: *counts,
        distinct: read
            .staged
            .saturating_sub(duplicates.extra_rows + superseded),
        journal: settings.retention.journal.enabled(),
        modified_at_zone: clock.zone,
        lock_wait: settings.database.lock_wait_timeout,
        key_rebuild: settings.database.first_sync_key_rebuild,
    };
    if request.dry_run {
        stage(Stage::Plan);
        let (planned, refusal) = merge::plan(db, &load, guard).await.map_err(drifted)?;
        *counts = planned;
        staging::purge(db, load_id)
            .await
            .map_err(SyncError::Bookkeeping)?;
        let note = refusal.map(|e| format!("{WOULD_REFUSE}{}", error_chain(&drifted(e))));
        runs::finish(
            db,
            load_id,
            Outcome::DryRun,
            counts,
            note.as_deref(),
            Some(&hash),
        )
        .await
        .map_err(SyncError::Bookkeeping)?;
        return Ok((Outcome::DryRun, note));
    }
    stage(Stage::Merge);
    *counts = merge::merge(db, &load, guard, &mut |step| stages.step(step.stage()))
        .await
        .map_err(drifted)?;
    Ok((Outcome::Synced, None))
}

/// What one run accumulates as it goes (docs/ARCHITECTURE.md#one-run-the-pipeline):
/// its counts, its stage times, the rejects read and, once hashed, the content
/// hash. `run_sync` makes it, each stage adds to it, and the run's record and
/// summary are written from it.
struct Run {
    load_id: LoadId,
    counts: Counts,
    stages: StageTimes,
    /// What the reader counted and kept, shared with its thread.
    tally: Arc<ReadTally>,
    /// The file's content hash, once the hash step took it.
    hashed: Option<ContentHash>,
}

impl Run {
    /// A run of `load_id`; its metrics carry the label `mirror`.
    fn new(load_id: LoadId, mirror: Option<&str>) -> Self {
        Self {
            load_id,
            counts: Counts::default(),
            stages: StageTimes::labelled(mirror),
            tally: Arc::new(ReadTally::default()),
            hashed: None,
        }
    }
}

/// What the hash step decided.
enum HashStep {
    /// Skipped, with the reason (recorded): the content is unchanged since the
    /// last successful sync, held back by a revert, or refused earlier.
    Skip(String),
    /// Read and sync it; `repairing` names the drift an unchanged file syncs back.
    Sync {
        hash: ContentHash,
        repairing: Option<String>,
    },
}

/// Step 1: the file is still inside TABLES_DIR and the one synced before, its
/// content hash, and whether that content is skipped.
async fn hash_step(
    ctx: &SyncContext,
    request: &SyncRequest,
    load_id: LoadId,
    counts: &Counts,
    cancel: &CancellationToken,
) -> Result<HashStep, SyncError> {
    let settings = &ctx.settings;
    let db = &ctx.db;
    let file = &request.file;
    crate::config::confine("CSV_FILE", &settings.csv.tables_dir, file)
        .map_err(SyncError::Outside)?;
    if !request.allow_file_change {
        let this = crate::config::file_identity(file).display().to_string();
        let last = runs::last_synced_file(db)
            .await
            .map_err(SyncError::Bookkeeping)?;
        if let Some(last) = last.filter(|last| *last != this) {
            return Err(SyncError::OtherFile { last, this });
        }
    }
    let hash = tokio::select! {
        _ = cancel.cancelled() => return Err(SyncError::Cancelled),
        hash = hash(file, settings.csv.format) => hash?,
    };
    let last = runs::last_synced_hash(db)
        .await
        .map_err(SyncError::Bookkeeping)?;
    let mut repairing: Option<String> = None;
    if !request.force && last.as_deref() == Some(hash.as_str()) {
        let reverted = runs::reverted_state(db)
            .await
            .map_err(SyncError::Bookkeeping)?;
        // Is the table still what the last sync left? (docs: "Edits outside the agent")
        let drift = drift::check(db, settings.triggers.verify_every)
            .await
            .map_err(SyncError::Bookkeeping)?;
        repairing = drift.describe().filter(|_| drift.needs_sync());
        if reverted.is_some() || repairing.is_none() {
            let reason = match &reverted {
                Some(revert) => format!(
                    "held back: revert {} undid this content; it is skipped until the file changes (or sync --force){}",
                    revert.load_id,
                    drift.describe().filter(|_| drift.needs_sync()).map(|d| format!("; {d}, left as it is while held back")).unwrap_or_default()
                ),
                None => "unchanged since the last successful sync".to_owned(),
            };
            record_skip(db, load_id, counts, &reason, &hash).await?;
            // Only a skip that vouches for the table refreshes the last success.
            if reverted.is_none() && drift.confirmed() {
                crate::metrics::record_in_sync(ctx.settings.builtin_label());
            }
            return Ok(HashStep::Skip(reason));
        }
        tracing::warn!(
            "{}; syncing the unchanged file back",
            repairing.as_deref().unwrap_or_default()
        );
    }
    if let Some(reason) = refused_earlier(db, request, &refusal_key(settings, &hash)).await? {
        record_skip(db, load_id, counts, &reason, &hash).await?;
        return Ok(HashStep::Skip(reason));
    }
    Ok(HashStep::Sync { hash, repairing })
}

/// Ends the run record of a run skipped after hashing: its reason and the hash,
/// so the next trigger compares against it.
async fn record_skip(
    db: &DatabaseConnection,
    load_id: LoadId,
    counts: &Counts,
    reason: &str,
    hash: &ContentHash,
) -> Result<(), SyncError> {
    runs::finish(
        db,
        load_id,
        Outcome::Skipped,
        counts,
        Some(reason),
        Some(hash),
    )
    .await
    .map_err(SyncError::Bookkeeping)
}

/// What a refusal of this content depends on: its hash (the bytes and the parse
/// settings) and the limits of the verdict.
fn refusal_key(settings: &Settings, hash: &ContentHash) -> String {
    let key = format!(
        "{hash} MAX_REJECTS={} MAX_DELETE_RATIO={} MAX_UPDATE_RATIO={}",
        settings.guard.max_rejects,
        settings.guard.max_delete_ratio,
        settings.guard.max_update_ratio
    );
    blake3::hash(key.as_bytes()).to_hex().to_string()
}

/// The reason to skip this content without reading it: the newest run that
/// decided something refused the same content under the same limits
/// (`refusal_key`), and nothing approves it now. A dry run always reads.
/// See docs/sync.md#refusals-and-approvals.
async fn refused_earlier(
    db: &DatabaseConnection,
    request: &SyncRequest,
    key: &str,
) -> Result<Option<String>, SyncError> {
    if request.approves() || request.dry_run {
        return Ok(None);
    }
    let refused = runs::standing_refusal(db, key)
        .await
        .map_err(SyncError::Bookkeeping)?;
    Ok(refused.map(|(load_id, why)| {
        format!(
            "{REFUSED_EARLIER}{} (run {load_id}); skipped without reading until the file or the limits change, or a run approves it (sync --allow-mass-delete, --allow-mass-update or --force)",
            why.as_deref().unwrap_or("refused")
        )
    }))
}

async fn hash(path: &Path, format: CsvFormat) -> Result<ContentHash, SyncError> {
    let path = path.to_owned();
    tokio::task::spawn_blocking(move || read::hash_file(&path, &format))
        .await
        .map_err(SyncError::Join)?
        .map_err(SyncError::Read)
}

/// What reading the file produced besides the staged rows.
struct ReadReport {
    rows_read: u64,
    rejected: u64,
    staged: u64,
    /// Rejected rows with a valid email, and their line: those followers are
    /// never deleted, and when the rejected row is an email's last occurrence
    /// the follower is left as it is. At most MAX_REJECTS entries.
    protected: Vec<(String, u64)>,
    hash: ContentHash,
    /// The emails that may occur more than once among the staged rows.
    candidates: dupes::Candidates,
}

/// The rows read and rejected so far, for the summary of a run stopped while
/// reading (cancelled, or its staging failed), and the rejects to store (the
/// first `rejects::STORED_PER_RUN`).
#[derive(Default)]
struct ReadTally {
    rows: AtomicU64,
    rejected: AtomicU64,
    rejects: Mutex<Vec<StoredReject>>,
}

impl ReadTally {
    fn keep(&self, reject: &Reject, raw: &[u8]) {
        let mut kept = self.rejects.lock().unwrap_or_else(|e| e.into_inner());
        if kept.len() < rejects::STORED_PER_RUN {
            // PostgreSQL text holds no NUL.
            let text = |s: &str| s.replace('\0', "\u{FFFD}");
            kept.push(StoredReject {
                line: reject.line,
                reason: text(&reject.reason.to_string()),
                raw: text(&String::from_utf8_lossy(raw)),
            });
        }
    }
}

/// The reader (a blocking task) feeds batches through a bounded channel to the
/// COPY workers; whichever fails first stops the other.
async fn read_and_stage(
    ctx: &SyncContext,
    request: &SyncRequest,
    load_id: LoadId,
    progress: &Progress,
    tally: &Arc<ReadTally>,
    cancel: &CancellationToken,
) -> Result<ReadReport, SyncError> {
    let settings = ctx.settings.clone();
    let stage_cancel = cancel.child_token();
    let (tx, rx) = async_channel::bounded::<Batch>(settings.csv.workers * 2);
    let reader = {
        let (file, cancel, progress, tally) = (
            request.file.clone(),
            stage_cancel.clone(),
            progress.clone(),
            tally.clone(),
        );
        // The reader's log lines (rejects) belong to this run's span.
        let span = tracing::Span::current();
        tokio::task::spawn_blocking(move || {
            span.in_scope(|| produce(&file, &settings, tx, &cancel, &progress, &tally))
        })
    };
    let copied = staging::copy_batches(
        ctx.db.get_postgres_connection_pool(),
        load_id,
        ctx.settings.csv.workers,
        rx,
        progress.staged_counter(),
        stage_cancel.clone(),
    )
    .await;
    if copied.is_err() {
        stage_cancel.cancel();
    }
    // A reader stuck in a read that never returns (a hung mount) must not hold a
    // cancelled run: it is abandoned after a grace period (the process exits
    // without waiting for it, see main.rs).
    let read = tokio::select! {
        joined = reader => joined.map_err(SyncError::Join)?,
        _ = async {
            stage_cancel.cancelled().await;
            tokio::time::sleep(READER_GRACE).await;
        } => {
            tracing::warn!("the file reader does not return; abandoned");
            return Err(if cancel.is_cancelled() {
                SyncError::Cancelled
            } else {
                SyncError::ReaderStuck
            });
        }
    };
    match (read, copied) {
        (Ok(read), Ok(staged)) => Ok(ReadReport { staged, ..read }),
        _ if cancel.is_cancelled() => Err(SyncError::Cancelled),
        // The reader's own error explains more than the cancellation it caused.
        (Err(e), _) if !matches!(e, SyncError::Cancelled) => Err(e),
        (_, Err(e)) => Err(e.into()),
        (Err(e), Ok(_)) => Err(e),
    }
}

/// Reads and validates the file, sending `BATCH_SIZE`-row batches. Runs on a
/// blocking thread. Once more rows are invalid than MAX_REJECTS allows, nothing
/// more is sent, but the file is read to the end so every invalid line is
/// reported (the first `REPORT_LIMIT` one by one) and counted.
fn produce(
    path: &Path,
    settings: &Settings,
    tx: async_channel::Sender<Batch>,
    cancel: &CancellationToken,
    progress: &Progress,
    tally: &ReadTally,
) -> Result<ReadReport, SyncError> {
    let mut records = CsvRecords::open(path, &settings.csv.format)?;
    let mut report = ReadReport {
        rows_read: 0,
        rejected: 0,
        staged: 0,
        protected: Vec::new(),
        hash: ContentHash::from_hasher(&blake3::Hasher::new()),
        candidates: dupes::Candidates::All,
    };
    let mut filter = dupes::DuplicateFilter::default();
    let mut first_reject = None;
    let mut batch = Vec::new();
    let send = |batch: Batch| -> Result<(), SyncError> {
        if cancel.is_cancelled() {
            return Err(SyncError::Cancelled);
        }
        // A closed channel means the workers stopped; their error is reported.
        tx.send_blocking(batch).map_err(|_| SyncError::Cancelled)
    };
    while let Some(row) = records.next_row()? {
        report.rows_read += 1;
        tally.rows.store(report.rows_read, Ordering::Relaxed);
        let columns = records.columns().expect("known after the first row");
        match validate(&row, &columns) {
            // Past MAX_REJECTS the file is refused: stop staging, keep counting.
            Ok(follower) if report.rejected <= settings.guard.max_rejects => {
                filter.insert(follower.email.as_str());
                batch.push(follower);
            }
            Ok(_) => {}
            Err(reject) => {
                report.rejected += 1;
                tally.rejected.store(report.rejected, Ordering::Relaxed);
                tally.keep(&reject, &row.raw);
                if matches!(reject.reason, RejectReason::LineBreak { .. }) {
                    return Err(SyncError::BrokenQuote {
                        path: path.to_owned(),
                        reject,
                        rows_read: report.rows_read,
                        rejected: report.rejected,
                    });
                }
                if report.rejected <= convert::len(REPORT_LIMIT) {
                    tracing::warn!(file = %path.display(), line = reject.line, reason = %reject.reason, "row rejected");
                }
                if let Some(email) = &reject.email {
                    if report.rejected <= settings.guard.max_rejects {
                        report
                            .protected
                            .push((email.as_str().to_owned(), reject.line));
                    }
                }
                first_reject.get_or_insert(reject);
            }
        }
        if batch.len() >= settings.csv.batch_size {
            progress.read_up_to(records.bytes_read());
            send(std::mem::take(&mut batch))?;
        }
    }
    if report.rejected > settings.guard.max_rejects {
        let hint = first_reject
            .as_ref()
            .filter(|r| matches!(r.reason, RejectReason::FieldCount { .. }))
            .and_then(|_| read::delimiter_hint(path, &settings.csv.format));
        return Err(SyncError::TooManyRejects {
            path: path.to_owned(),
            first: Box::new(first_reject.expect("a reject was counted")),
            rejected: report.rejected,
            rows_read: report.rows_read,
            max: settings.guard.max_rejects,
            hint,
        });
    }
    if !batch.is_empty() {
        send(batch)?;
    }
    report.hash = records.finish();
    report.candidates = filter.finish();
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `JoinError` of a task cancelled before it ran.
    async fn join_error() -> tokio::task::JoinError {
        let task = tokio::spawn(std::future::pending::<()>());
        task.abort();
        task.await.unwrap_err()
    }

    #[tokio::test]
    async fn the_failed_stage_is_the_errors_or_none_when_more_than_one_stage_meets_it() {
        let path = PathBuf::from("followers.csv");
        let merge = |step| MergeError::Mismatch {
            step,
            expected: 1,
            actual: 2,
        };
        let mass_delete = || MergeError::MassDelete {
            counts: Counts::default(),
            current: 10,
            ratio: 0.2,
        };
        let outside = crate::config::confine(
            "CSV_FILE",
            Path::new("/nonexistent/tables_dir"),
            Path::new("/nonexistent/tables_dir/followers.csv"),
        )
        .unwrap_err();
        let cases: Vec<(SyncError, Option<Stage>)> = vec![
            (
                SyncError::NotReady {
                    path: path.clone(),
                    reason: ready::NotReady::Missing(path.clone()),
                    waited: Duration::ZERO,
                },
                Some(Stage::Ready),
            ),
            (
                SyncError::StillWriting {
                    path: path.clone(),
                    why: "it grew".to_owned(),
                    waited: Duration::ZERO,
                },
                Some(Stage::Settle),
            ),
            (
                SyncError::LockBusy {
                    waited: Duration::ZERO,
                },
                Some(Stage::Lock),
            ),
            (SyncError::Outside(outside), Some(Stage::Hash)),
            (
                SyncError::OtherFile {
                    last: "a.csv".to_owned(),
                    this: "b.csv".to_owned(),
                },
                Some(Stage::Hash),
            ),
            (
                SyncError::FileChanged { path: path.clone() },
                Some(Stage::ReadAndStage),
            ),
            (SyncError::ReaderStuck, Some(Stage::ReadAndStage)),
            (
                SyncError::Merge(merge(merge::Step::Update)),
                Some(Stage::MergeUpdate),
            ),
            (SyncError::Merge(mass_delete()), Some(Stage::MergeGuard)),
            (
                SyncError::Drift {
                    drift: "edited outside the agent".to_owned(),
                    source: Box::new(mass_delete()),
                },
                Some(Stage::MergeGuard),
            ),
            (
                SyncError::Merge(MergeError::CommitUnknown {
                    source: DbErr::Custom("connection lost".to_owned()),
                    check: "no answer".to_owned(),
                }),
                Some(Stage::MergeCommit),
            ),
            (SyncError::Merge(MergeError::Lost("gone".to_owned())), None),
            // The hash step reads the file too: the timings tell which stage it was.
            (
                SyncError::Read(ReadError::RecordTooLong {
                    path: path.clone(),
                    line: 2,
                }),
                None,
            ),
            (SyncError::Join(join_error().await), None),
            (SyncError::Staging(StagingError::Cancelled), None),
            (
                SyncError::Db(DbError::Stalled(Duration::from_secs(30))),
                None,
            ),
            (
                SyncError::Bookkeeping(DbErr::Custom("no answer".to_owned())),
                None,
            ),
            (SyncError::Cancelled, None),
        ];
        for (error, stage) in cases {
            assert_eq!(error.stage(), stage, "{error:?}");
        }
    }
}
