//! The run of a configured mirror (docs/mirrors.md#runs), as `sync` and `serve`
//! start it: ready → settle → lock → recover → record → the mirror's own steps
//! (`mirror::run`: table, hash, read, stage, dedupe, merge) → record. Its
//! record is a `sync_runs` row with the mirror's name, its rejects are stored
//! as the built-in mirror's are, and every event carries `mirror=`.

use super::{ready, settle, timings::StageTimes, Summary, SyncContext, WOULD_REFUSE};
use crate::config::Settings;
use crate::db::AdvisoryLock;
use crate::domain::{Counts, LoadId, Outcome, Stage, Trigger};
use crate::errors::error_chain;
use crate::mirror::run::{locked_sync, run_lock, source_files, MirrorRunError, MirrorRunOptions};
use crate::mirror::run::{Held, MirrorReject, MirrorSummary};
use crate::mirror::MirrorSpec;
use crate::rejects::{self, StoredReject};
use crate::runs;
use sea_orm::{DatabaseConnection, TransactionTrait};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Why a run of an unchanged file was skipped.
const UNCHANGED: &str = "unchanged since the last sync";

/// Why a run of an unchanged file was skipped when its table has no counting
/// write counter (docs/mirrors.md#skip).
const UNVERIFIED: &str = "unchanged since the last sync; the table has no write counter that counts every write (none, not enabled ALWAYS, or a partitioned or inheritance table): it is compared with the file again once VERIFY_EVERY has passed";

/// Why a run of the content a revert undid was skipped (docs/mirrors.md#revert).
const HELD_BACK: &str =
    "the content in place was undone by a revert: held back until the file changes (sync --force applies it)";

/// What to sync of a configured mirror, and how.
#[derive(Clone, Copy, Debug)]
pub struct MirrorRequest {
    pub trigger: Trigger,
    pub force: bool,
    /// Plan only (docs/mirrors.md#dry-run).
    pub dry_run: bool,
    pub allow_mass_delete: bool,
    pub allow_mass_update: bool,
}

impl MirrorRequest {
    /// An explicit approval: it waits for a run lock held by another run
    /// instead of skipping, as the built-in mirror's does.
    fn approves(&self) -> bool {
        self.force || self.allow_mass_delete || self.allow_mass_update
    }
}

/// Why a configured mirror's run stopped before its own steps.
#[derive(Debug, thiserror::Error)]
enum BeforeRun {
    #[error("mirror {mirror}: {path}: {reason} (waited {}s for its ready marker); nothing was read", .waited.as_secs())]
    NotReady {
        mirror: String,
        path: PathBuf,
        reason: ready::NotReady,
        waited: Duration,
    },
    #[error("mirror {mirror}: {path}: still being written: {why} (waited {:.1}s); nothing was read (the next trigger tries again)", .waited.as_secs_f64())]
    StillWriting {
        mirror: String,
        path: PathBuf,
        why: String,
        waited: Duration,
    },
    #[error("mirror {mirror}: cancelled before it read the file; nothing changed")]
    Cancelled { mirror: String },
    #[error("mirror {mirror}: another sync of this mirror held its run lock for RUN_LOCK_WAIT={}; the approved run did nothing (run it again)", robfig_cron::go_duration::format_go_duration(*.waited))]
    LockBusy { mirror: String, waited: Duration },
}

/// How often an approved run asks again for a run lock another run holds.
const LOCK_POLL: Duration = Duration::from_millis(250);

/// The mirror's run lock; a run that approves something waits for it, at most
/// `RUN_LOCK_WAIT` (docs/sync.md#refusals-and-approvals), then is `Busy`.
async fn take_lock(
    ctx: &SyncContext,
    spec: &MirrorSpec,
    request: &MirrorRequest,
    cancel: &CancellationToken,
) -> Result<AdvisoryLock, MirrorRunError> {
    let url = &ctx.settings.database.url;
    let deadline = tokio::time::Instant::now() + ctx.settings.database.run_lock_wait;
    loop {
        match run_lock(url, spec).await {
            Err(MirrorRunError::Busy { .. })
                if request.approves() && tokio::time::Instant::now() < deadline =>
            {
                tokio::select! {
                    _ = cancel.cancelled() => return Err(MirrorRunError::Busy { mirror: spec.name.to_string() }),
                    _ = tokio::time::sleep(LOCK_POLL) => {}
                }
            }
            other => return other,
        }
    }
}

/// The settings of a run of `spec`: the mirror's own where it has them (the
/// rest of its overrides are read where they apply), else the variables'.
pub(crate) fn run_options(
    settings: &Settings,
    spec: &MirrorSpec,
    request: &MirrorRequest,
) -> MirrorRunOptions {
    MirrorRunOptions {
        csv: settings.csv.format,
        max_rejects: spec
            .overrides
            .max_rejects
            .unwrap_or(settings.guard.max_rejects),
        max_delete_ratio: settings.guard.max_delete_ratio,
        max_update_ratio: settings.guard.max_update_ratio,
        allow_mass_delete: request.allow_mass_delete,
        allow_mass_update: request.allow_mass_update,
        journal_keep_runs: settings.retention.journal.keep_runs,
        journal_keep_days: settings.retention.journal.keep_days,
        history: settings.retention.runs,
        verify_every: settings.triggers.verify_every,
        lock_wait: settings.database.lock_wait_timeout,
        force: request.force,
        dry_run: request.dry_run,
    }
}

/// `spec` with its effective ready marker (its own, else `READY_MARKER`), so
/// that a glob never matches a marker (docs/mirrors.md#source-files).
fn with_ready_marker(settings: &Settings, spec: &MirrorSpec) -> MirrorSpec {
    let mut spec = spec.clone();
    if spec.overrides.ready_marker.is_none() {
        spec.overrides.ready_marker = settings.csv.ready_marker.clone();
    }
    spec
}

/// The run's record's `file`: the mirror's file, or its glob, under `TABLES_DIR`.
fn record_file(spec: &MirrorSpec, tables_dir: &Path) -> String {
    match &spec.source {
        crate::mirror::MirrorSource::File(file) => tables_dir.join(file),
        crate::mirror::MirrorSource::Glob(glob) => tables_dir.join(glob),
    }
    .display()
    .to_string()
}

/// Runs one sync of a configured mirror and returns its summary; never panics,
/// and changes the mirror's table only when the outcome is `synced`.
#[tracing::instrument(name = "sync", skip_all, fields(mirror = %spec.name, load_id = %load_id, trigger = request.trigger.as_str()))]
pub async fn run_mirror_sync(
    ctx: &SyncContext,
    spec: &MirrorSpec,
    request: &MirrorRequest,
    load_id: LoadId,
    cancel: CancellationToken,
) -> Summary {
    let started = Instant::now();
    let spec = &with_ready_marker(&ctx.settings, spec);
    let mirror = spec.name.as_str();
    let label = Some(mirror);
    crate::metrics::record_run_started(label);
    let mut stages = StageTimes::labelled(label);
    let result = run(ctx, spec, request, load_id, &mut stages, &cancel).await;
    stages.end();
    let stage = result
        .is_err()
        .then(|| stages.last().map(Stage::as_str))
        .flatten();
    let (outcome, counts, reason) = match result {
        Ok(Ran::Synced(s)) if s.skipped() => {
            (Outcome::Skipped, Counts::default(), Some(skip_reason(&s)))
        }
        Ok(Ran::Synced(s)) if s.dry_run => {
            report_duplicates(&s);
            let note = s
                .would_refuse
                .as_ref()
                .map(|r| format!("{WOULD_REFUSE}{r}"));
            (Outcome::DryRun, s.counts(), note)
        }
        Ok(Ran::Synced(s)) => {
            report_duplicates(&s);
            (Outcome::Synced, s.counts(), None)
        }
        Ok(Ran::Skipped(reason)) => (Outcome::Skipped, Counts::default(), Some(reason)),
        Err((outcome, counts, reason)) => (outcome, counts, Some(reason)),
    };
    // Bounded as the built-in mirror's: an unreachable database must not hold the run.
    let recorded = tokio::time::timeout(
        super::COMPENSATION_REACH_TIMEOUT,
        runs::record_stages(&ctx.db, load_id, &stages.to_json()),
    )
    .await;
    match recorded {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::warn!(error = %error_chain(&e), "could not record the run's stage durations")
        }
        Err(_) => tracing::warn!(
            "could not record the run's stage durations: the database did not answer"
        ),
    }
    let summary = Summary {
        mirror: Some(mirror.to_owned()),
        outcome,
        load_id,
        counts,
        duration: started.elapsed(),
        dry_run: (outcome == Outcome::DryRun).then(|| super::DryRunVerdict {
            would_refuse: reason.is_some(),
            would_refuse_reason: reason
                .as_deref()
                .map(|r| r.strip_prefix(WOULD_REFUSE).unwrap_or(r).to_owned()),
        }),
        reason,
        // Each run is one transaction: a failed one is retried (bounded) by serve.
        transient: outcome == Outcome::Failed,
        refused_earlier: false,
    };
    // Skipped, but the content still stands refused: it needs an operator.
    let summary = Summary {
        refused_earlier: outcome == Outcome::Skipped
            && summary
                .reason
                .as_deref()
                .is_some_and(|r| r.starts_with(super::REFUSED_EARLIER)),
        ..summary
    };
    crate::metrics::record_run(label, outcome, &summary.counts, summary.duration);
    if outcome == Outcome::Refused || summary.refused_earlier {
        crate::metrics::record_refused(label);
    } else if outcome == Outcome::Skipped && summary.reason.as_deref() == Some(UNCHANGED) {
        crate::metrics::record_in_sync(label);
    }
    super::finished_event(&summary, stage);
    summary
}

/// Logs the repeated keys of a run (at most 10, with their files and lines):
/// the last line of each won.
fn report_duplicates(s: &MirrorSummary) {
    for (key, lines) in &s.duplicate_lines {
        let lines: Vec<String> = lines.iter().map(ToString::to_string).collect();
        tracing::warn!(key = %key, lines = %lines.join(", "), "duplicate key; the last line wins");
    }
}

/// Why an unchanged file was skipped.
fn skip_reason(s: &MirrorSummary) -> String {
    if let Some(earlier) = &s.refused_earlier {
        format!(
            "{}{earlier}; skipped without reading until the file or the limits change, or a run approves it (sync --allow-mass-delete, --allow-mass-update or --force)",
            super::REFUSED_EARLIER
        )
    } else if s.held_back {
        HELD_BACK.to_owned()
    } else if s.unverified {
        UNVERIFIED.to_owned()
    } else {
        UNCHANGED.to_owned()
    }
}

/// How far a run got.
enum Ran {
    /// Its own steps ran: synced, or skipped for an unchanged file.
    Synced(Box<MirrorSummary>),
    /// Skipped before them, with the reason (recorded).
    Skipped(String),
}

type Failure = (Outcome, Counts, String);

/// A run error's outcome: refused when the file or a guard stopped it (an
/// operator's matter), failed otherwise.
fn outcome_of(e: &MirrorRunError) -> Outcome {
    use MirrorRunError as E;
    match e {
        E::MissingColumn { .. }
        | E::DuplicateColumn { .. }
        | E::TooManyRejects { .. }
        | E::MassDelete { .. }
        | E::MassUpdate { .. }
        | E::EmptyFile { .. }
        | E::Incompatible(_)
        | E::Source { .. }
        | E::GlobDir { .. }
        | E::EmptySource { .. }
        | E::Read { .. } => Outcome::Refused,
        _ => Outcome::Failed,
    }
}

async fn run(
    ctx: &SyncContext,
    spec: &MirrorSpec,
    request: &MirrorRequest,
    load_id: LoadId,
    stages: &mut StageTimes,
    cancel: &CancellationToken,
) -> Result<Ran, Failure> {
    let db = &ctx.db;
    let mirror = spec.name.to_string();
    let file = record_file(spec, &ctx.settings.csv.tables_dir);
    let unlocked = |outcome: Outcome, reason: String| {
        let file = file.clone();
        async move {
            record_unlocked(db, spec, load_id, request.trigger, &file, outcome, &reason).await;
            (outcome, Counts::default(), reason)
        }
    };
    let files = match source_files(spec, &ctx.settings.csv.tables_dir) {
        Ok(files) => files,
        Err(e) => return Err(unlocked(outcome_of(&e), error_chain(&e)).await),
    };
    let marker = spec.overrides.ready_marker.as_deref().or(ctx
        .settings
        .csv
        .ready_marker
        .as_deref());
    if let Some(suffix) = marker {
        stages.begin(Stage::Ready);
        let manual = request.trigger == Trigger::Manual;
        let waited = if manual {
            ctx.settings.csv.ready_timeout
        } else {
            Duration::ZERO
        };
        for path in &files {
            if let Err(reason) = ready::wait(path, suffix, waited, cancel).await {
                if !manual {
                    let reason = format!("not read yet: {reason}");
                    tracing::info!("{reason}; skipping");
                    record_unlocked(
                        db,
                        spec,
                        load_id,
                        request.trigger,
                        &file,
                        Outcome::Skipped,
                        &reason,
                    )
                    .await;
                    return Ok(Ran::Skipped(reason));
                }
                let e = BeforeRun::NotReady {
                    mirror,
                    path: path.clone(),
                    reason,
                    waited,
                };
                return Err(unlocked(Outcome::Refused, e.to_string()).await);
            }
        }
    }
    stages.begin(Stage::Settle);
    let rules = settle::Rules::from_debounce(ctx.settings.triggers.watch_debounce);
    // Every file at once, each on its own evidence in the watch's tracker.
    let mut found = Vec::with_capacity(files.len());
    for (path, settled) in settle::wait_all(&files, rules, &ctx.writes, cancel).await {
        match &settled {
            Ok(settle::Settled::File(state)) => found.push((path.clone(), Some(state.clone()))),
            Ok(settle::Settled::Missing) => found.push((path.clone(), None)),
            Err(_) => {}
        }
        if let Err(unsettled) = settled {
            let e = match unsettled {
                Some(settle::Unsettled { why, waited }) => BeforeRun::StillWriting {
                    mirror,
                    path: path.clone(),
                    why,
                    waited,
                },
                None => BeforeRun::Cancelled { mirror },
            };
            return Err(unlocked(Outcome::Refused, e.to_string()).await);
        }
    }
    stages.begin(Stage::Lock);
    let lock = match take_lock(ctx, spec, request, cancel).await {
        Ok(lock) => lock,
        Err(MirrorRunError::Busy { .. }) if request.approves() => {
            let e = if cancel.is_cancelled() {
                BeforeRun::Cancelled { mirror }
            } else {
                BeforeRun::LockBusy {
                    mirror,
                    waited: ctx.settings.database.run_lock_wait,
                }
            };
            return Err(unlocked(Outcome::Refused, e.to_string()).await);
        }
        Err(MirrorRunError::Busy { .. }) => {
            let reason = "another sync of this mirror is in progress (its run lock is held)";
            tracing::warn!("{reason}; skipping");
            record_unlocked(
                db,
                spec,
                load_id,
                request.trigger,
                &file,
                Outcome::Skipped,
                reason,
            )
            .await;
            return Ok(Ran::Skipped(reason.to_owned()));
        }
        Err(e) => return Err(unlocked(Outcome::Failed, error_chain(&e)).await),
    };
    let run = Locked {
        request,
        load_id,
        file: &file,
        settled: &found,
    };
    locked(ctx, spec, &run, lock, stages).await
}

/// A run that holds its mirror's run lock: what it was asked, its load, its
/// record's file, and its source as it settled.
struct Locked<'a> {
    request: &'a MirrorRequest,
    load_id: LoadId,
    file: &'a str,
    settled: &'a [crate::mirror::run::Settled],
}

/// Under the run lock: recovery of the interrupted runs of the mirror's table
/// (docs/mirrors.md#runs), the run record, the mirror's own steps (bounded by
/// `DB_TIMEOUT`), the record's end and the rejects.
async fn locked(
    ctx: &SyncContext,
    spec: &MirrorSpec,
    run: &Locked<'_>,
    lock: AdvisoryLock,
    stages: &mut StageTimes,
) -> Result<Ran, Failure> {
    let Locked {
        request,
        load_id,
        file,
        settled,
    } = *run;
    let db = &ctx.db;
    let mirror = spec.name.as_str();
    let bookkeeping = |e: sea_orm::DbErr| {
        (
            Outcome::Failed,
            Counts::default(),
            format!(
                "mirror {mirror}: recording the run failed: {}",
                error_chain(&e)
            ),
        )
    };
    // One transaction: the recovery of the table's interrupted runs (whatever
    // their mirror was called) and this run's record, with its table.
    let table = spec.table.to_string();
    let begun = async {
        let txn = db.begin().await?;
        runs::recover_mirror(&txn, mirror, &table).await?;
        runs::start_mirror_run(&txn, mirror, &table, load_id, request.trigger, file).await?;
        txn.commit().await
    }
    .await;
    if let Err(e) = begun {
        lock.release().await;
        return Err(bookkeeping(e));
    }
    let options = run_options(&ctx.settings, spec, request);
    let tables_dir = ctx.settings.csv.tables_dir.clone();
    // A database that stops answering fails the run within DB_TIMEOUT (docs/guarantees.md#database-faults).
    // What the run read, once known: a run that fails after it reports it.
    let mut read = Counts::default();
    let outcome = tokio::select! {
        outcome = locked_sync(db, spec, &tables_dir, &options, Held { lock: &lock, load_id, settled: Some(settled) }, stages, &mut read) => outcome,
        e = lock.stalled(ctx.settings.database.timeout) => Err(MirrorRunError::Lock { mirror: mirror.to_owned(), source: e }),
    };
    // The record is finished under the lock: no other run's recovery can
    // take it for an interrupted one meanwhile.
    let ended = end_record(db, spec, load_id, outcome.map_err(|e| (e, read))).await;
    lock.release().await;
    if ended.is_ok() {
        runs::prune_of_or_warn(db, mirror, ctx.settings.retention.runs).await;
    }
    ended
}

/// Finishes the run's record with its outcome (a synced run's was finished in
/// its merge transaction) and stores its rejects.
async fn end_record(
    db: &DatabaseConnection,
    spec: &MirrorSpec,
    load_id: LoadId,
    outcome: Result<MirrorSummary, (MirrorRunError, Counts)>,
) -> Result<Ran, Failure> {
    let mirror = spec.name.as_str();
    let bookkeeping = |e: sea_orm::DbErr| {
        (
            Outcome::Failed,
            Counts::default(),
            format!(
                "mirror {mirror}: recording the run failed: {}",
                error_chain(&e)
            ),
        )
    };
    let (result, rejects) = match outcome {
        Ok(summary) => {
            let rejects = summary.rejects.clone();
            let counts = summary.counts();
            let note = summary
                .would_refuse
                .as_ref()
                .map(|r| format!("{WOULD_REFUSE}{r}"));
            let skipped;
            let (outcome, reason) = if summary.dry_run {
                (Outcome::DryRun, note.as_deref())
            } else if summary.skipped() {
                skipped = skip_reason(&summary);
                (Outcome::Skipped, Some(skipped.as_str()))
            } else {
                (Outcome::Synced, None)
            };
            let hash = crate::domain::ContentHash::from_hex(&summary.content_hash);
            if outcome != Outcome::Synced {
                if let Err(e) =
                    runs::finish(db, load_id, outcome, &counts, reason, Some(&hash)).await
                {
                    return Err(bookkeeping(e));
                }
            }
            (Ok(Ran::Synced(Box::new(summary))), rejects)
        }
        Err((e, read))
            if matches!(
                &e,
                MirrorRunError::Lock {
                    source: crate::db::DbError::Stalled(_),
                    ..
                }
            ) =>
        {
            // As the built-in mirror's: nothing more is asked of a database
            // that stopped answering (docs/guarantees.md#database-faults).
            tracing::error!("the database does not answer: the staging table and the run record are left to the next run's recovery");
            let reason = error_chain(&e);
            return Err((outcome_of(&e), e.would_have().unwrap_or(read), reason));
        }
        Err((e, read)) => {
            let outcome = outcome_of(&e);
            let reason = error_chain(&e);
            let rejects = match &e {
                MirrorRunError::TooManyRejects { first, rejects, .. } => {
                    std::iter::once((**first).clone())
                        .chain(rejects.iter().cloned())
                        .collect()
                }
                _ => Vec::new(),
            };
            // What a refusal would have done, else what the run read before it stopped.
            let counts = match &e {
                MirrorRunError::TooManyRejects {
                    rows_read,
                    rejected,
                    ..
                } => Counts {
                    rows_read: *rows_read,
                    rejected: *rejected,
                    ..Counts::default()
                },
                e => e.would_have().unwrap_or(read),
            };
            // A database that went away (a restart, a lost network) would hold
            // the run for the pool's acquire timeout: the record is then left
            // to the next run's recovery, which marks it failed.
            let reachable =
                tokio::time::timeout(super::COMPENSATION_REACH_TIMEOUT, db.ping()).await;
            if !matches!(reachable, Ok(Ok(()))) {
                tracing::error!(
                    "database unreachable: the run's record and rejects are left to the next run's recovery"
                );
                return Err((outcome, counts, reason));
            }
            if let Err(e) = runs::finish(db, load_id, outcome, &counts, Some(&reason), None).await {
                tracing::warn!(error = %error_chain(&e), "could not finish the run's record");
            }
            (Err((outcome, counts, reason)), rejects)
        }
    };
    store_rejects(db, spec, load_id, &rejects).await;
    result
}

/// Records a run that ends before it takes the run lock (a failure to record
/// is only logged: the summary still tells).
async fn record_unlocked(
    db: &DatabaseConnection,
    spec: &MirrorSpec,
    load_id: LoadId,
    trigger: Trigger,
    file: &str,
    outcome: Outcome,
    reason: &str,
) {
    let mirror = spec.name.as_str();
    // One transaction: no other run's recovery ever sees it `running`.
    let recorded = async {
        let txn = db.begin().await?;
        runs::start_of(&txn, mirror, load_id, trigger, file, None).await?;
        runs::finish(
            &txn,
            load_id,
            outcome,
            &Counts::default(),
            Some(reason),
            None,
        )
        .await?;
        txn.commit().await
    }
    .await;
    if let Err(e) = recorded {
        tracing::warn!(error = %error_chain(&e), "could not record the run");
    }
}

/// Stores the run's rejects (`rejects --mirror NAME` reads them), the column
/// named in the reason, and for a glob the file first.
async fn store_rejects(
    db: &DatabaseConnection,
    spec: &MirrorSpec,
    load_id: LoadId,
    rejects: &[MirrorReject],
) {
    let glob = matches!(spec.source, crate::mirror::MirrorSource::Glob(_));
    if rejects.is_empty() {
        return;
    }
    let stored: Vec<StoredReject> = rejects
        .iter()
        .take(rejects::STORED_PER_RUN)
        .map(|r| StoredReject {
            line: r.line,
            reason: {
                let file = match (glob, r.file.file_name()) {
                    (true, Some(name)) => format!("{}: ", name.to_string_lossy()),
                    _ => String::new(),
                };
                match &r.column {
                    Some(column) => format!("{file}column {column}: {}", r.reason),
                    None => format!("{file}{}", r.reason),
                }
            },
            raw: r.raw.clone(),
        })
        .collect();
    if let Err(e) = rejects::store(db, load_id, &stored).await {
        tracing::warn!(error = %error_chain(&e), "could not store the rejects report");
    }
}
