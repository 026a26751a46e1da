//! `serve`: the long-running agent. Connects (waiting for the database), applies
//! migrations, recovers an interrupted run, then starts the HTTP endpoints, the
//! runner and the triggers (start-up, cron, file watch) until SIGINT/SIGTERM.

use crate::config::Settings;
use crate::db::{self, AdvisoryLock, DbError};
use crate::domain::Trigger;
use crate::errors::error_chain;
use crate::exit;
use crate::pipeline::settle::WriteTracker;
use crate::pipeline::{ProgressStyle, SyncContext};
use crate::runner::{MirrorSync, PipelineSync, RunRequests, Runner, Slotted};
use crate::runs;
use crate::signals::{stop_on_signals, Hangup};
use crate::telemetry::report;
use crate::triggers::{
    ticker,
    watch::{FileWatch, Watched},
};
use sea_orm::DatabaseConnection;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracing::Level;

fn fatal(context: &str, e: &dyn std::error::Error) -> ExitCode {
    report(Level::ERROR, &format!("{context}: {}", error_chain(e)));
    exit::failure()
}

/// Repeats `attempt` with back-off (0.5 s, doubling up to 15 s) while it fails
/// with an error `retry` accepts, logging `waiting` each time. `None` when
/// stopped first.
async fn retrying<T, E, Fut>(
    stop: &CancellationToken,
    waiting: &str,
    retry: impl Fn(&E) -> bool,
    mut attempt: impl FnMut() -> Fut,
) -> Option<Result<T, E>>
where
    E: std::error::Error,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let mut delay = Duration::from_millis(500);
    loop {
        match attempt().await {
            Err(e) if retry(&e) => {
                tracing::warn!(error = %error_chain(&e), retry_in = ?delay, "{waiting}")
            }
            result => return Some(result),
        }
        tokio::select! {
            _ = stop.cancelled() => return None,
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(15));
    }
}

/// Connects, retrying while the database is not up yet (e.g. starting beside us
/// in docker compose). `None` when stopped first.
async fn connect_with_retry(
    settings: &Settings,
    stop: &CancellationToken,
) -> Option<DatabaseConnection> {
    retrying(
        stop,
        "database not reachable yet",
        |_| true,
        || db::connect(settings),
    )
    .await?
    .ok()
}

pub(crate) async fn serve(settings: Arc<Settings>) -> ExitCode {
    // The built-in mirror runs when CSV_FILE is set, and is required without
    // `[[mirror]]` tables (docs/mirrors.md#serve).
    let file = match settings.resolve_csv_file(None) {
        Ok(file) => Some(file),
        Err(_) if settings.has_configured_mirrors() && settings.csv.file.is_none() => None,
        Err(e) => {
            report(Level::ERROR, &format!("configuration error: {e}"));
            return exit::usage();
        }
    };
    tracing::info!(settings = %settings.describe(), "starting");
    for warning in settings.triggers.cron_schedule.warnings() {
        tracing::warn!(schedule = %settings.triggers.cron_schedule, "{warning}");
    }
    let stop = CancellationToken::new();
    stop_on_signals(stop.clone(), Hangup::Ignore);
    // Series name their mirror once mirrors are configured (docs/mirrors.md#metrics-and-logs).
    let label = settings.builtin_label();
    // Each running mirror's gauges start at 0: the built-in one's when it runs.
    let running: Vec<Option<&str>> = file
        .as_ref()
        .map(|_| label)
        .into_iter()
        .chain(
            settings
                .mirrors
                .iter()
                .filter(|m| m.name.as_str() != runs::BUILTIN_MIRROR)
                .map(|m| Some(m.name.as_str())),
        )
        .collect();
    let metrics = crate::http::install_recorder(&running);

    // The endpoints answer from the start (their pool connects on first use):
    // /healthz 200, /readyz 503 until the database is reachable and migrated.
    let mut tasks = tokio::task::JoinSet::new();
    if let Some(addr) = settings.service.http_addr {
        let listener = match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => l,
            Err(e) => return fatal(&format!("cannot listen on HTTP_ADDR={addr}"), &e),
        };
        let db = match db::http_pool(&settings) {
            Ok(db) => db,
            Err(e) => return fatal("database", &e),
        };
        let stop = stop.clone();
        tasks.spawn(async move {
            if let Err(e) = crate::http::serve(listener, db, metrics, label, stop).await {
                tracing::error!(error = %e, "HTTP endpoints stopped");
            }
        });
    }

    let Some(db) = connect_with_retry(&settings, &stop).await else {
        while tasks.join_next().await.is_some() {}
        return ExitCode::SUCCESS;
    };
    // Pending migrations this role may not apply: wait for an owner to apply them.
    let migrated = retrying(
        &stop,
        "waiting for the pending migrations to be applied",
        DbError::is_migration_privilege,
        || db::migrate_for(&db, &settings.database.url, settings.runs_builtin()),
    )
    .await;
    match migrated {
        None => {
            while tasks.join_next().await.is_some() {}
            return ExitCode::SUCCESS;
        }
        Some(Err(e)) => return fatal("applying migrations failed", &e),
        Some(Ok(())) => {}
    }
    if settings.runs_builtin() {
        crate::pipeline::drift::ensure_counter(&db, settings.triggers.verify_every).await;
    }
    match AdvisoryLock::try_run_lock(&settings.database.url).await {
        Ok(Some(lock)) => {
            if let Err(e) = runs::recover(&db).await {
                tracing::warn!(error = %error_chain(&e), "recovery failed; the first run retries it");
            }
            lock.release().await;
        }
        Ok(None) => tracing::info!("another agent is syncing this database; it owns recovery"),
        Err(e) => return fatal("database", &e),
    }

    let configured = settings
        .mirrors
        .iter()
        .filter(|m| m.name.as_str() != runs::BUILTIN_MIRROR);
    if let Err(code) = crate::cli::check_tables(&db, configured).await {
        return code;
    }
    let runners = match runners(&settings, &db, file, &mut tasks, &stop) {
        Ok(runners) => runners,
        Err(code) => return code,
    };
    futures::future::join_all(runners).await;
    stop.cancel();
    while tasks.join_next().await.is_some() {}
    tracing::info!("stopped");
    ExitCode::SUCCESS
}

/// A running mirror's runner, as `serve` awaits it.
type RunnerTask = std::pin::Pin<Box<dyn std::future::Future<Output = ()>>>;

/// One runner per mirror (the built-in one when `CSV_FILE` is set, then each
/// configured one), each with its own triggers started on `tasks`; at most
/// `MAX_PARALLEL_MIRRORS` of them sync at once (docs/mirrors.md#serve).
fn runners(
    settings: &Arc<Settings>,
    db: &DatabaseConnection,
    file: Option<std::path::PathBuf>,
    tasks: &mut tokio::task::JoinSet<()>,
    stop: &CancellationToken,
) -> Result<Vec<RunnerTask>, ExitCode> {
    // One runner per mirror, each with its own triggers; at most
    // MAX_PARALLEL_MIRRORS of them sync at once.
    let slots = Arc::new(tokio::sync::Semaphore::new(
        settings.service.max_parallel_mirrors,
    ));
    let mut runners: Vec<RunnerTask> = Vec::new();
    let context = |writes: &WriteTracker| SyncContext {
        db: db.clone(),
        settings: settings.clone(),
        progress: ProgressStyle::Log,
        writes: writes.clone(),
    };
    if let Some(file) = file {
        let writes = WriteTracker::default();
        let sync = Slotted::new(
            PipelineSync::new(context(&writes), file.clone()),
            slots.clone(),
        );
        let (runner, requests) = Runner::new(
            sync,
            settings.service.shutdown_timeout,
            settings.service.retry,
        );
        let triggers = Triggers {
            watched: Some(Watched::File(file.clone())),
            marker: settings.csv.ready_marker.as_deref(),
            schedule: &settings.triggers.cron_schedule,
        };
        triggers.start(settings, writes, &requests, tasks, stop)?;
        runners.push(Box::pin(runner.run(stop.clone())));
    }
    for spec in settings
        .mirrors
        .iter()
        .filter(|m| m.name.as_str() != runs::BUILTIN_MIRROR)
    {
        let writes = WriteTracker::default();
        let watched = watched(settings, spec);
        let sync = Slotted::new(
            MirrorSync::new(context(&writes), spec.clone()),
            slots.clone(),
        );
        let (runner, requests) = Runner::new(
            sync,
            settings.service.shutdown_timeout,
            settings.service.retry,
        );
        let triggers = Triggers {
            watched,
            marker: spec
                .overrides
                .ready_marker
                .as_deref()
                .or(settings.csv.ready_marker.as_deref()),
            schedule: spec
                .schedule
                .as_ref()
                .unwrap_or(&settings.triggers.cron_schedule),
        };
        triggers.start(settings, writes, &requests, tasks, stop)?;
        runners.push(Box::pin(runner.run(stop.clone())));
    }
    Ok(runners)
}

/// What a configured mirror's watch follows: its file, or its glob (with the
/// effective ready marker, which the glob never matches); `None` for a file
/// outside `TABLES_DIR` (each run says why, naming the mirror).
fn watched(settings: &Settings, spec: &crate::mirror::MirrorSpec) -> Option<Watched> {
    match &spec.source {
        crate::mirror::MirrorSource::File(_) => {
            match spec.source.confined_file(&settings.csv.tables_dir) {
                Some(Ok(path)) => Some(Watched::File(path)),
                _ => None,
            }
        }
        crate::mirror::MirrorSource::Glob(pattern) => {
            let dir = pattern.rsplit_once('/').map_or("", |(dir, _)| dir);
            let mut spec = spec.clone();
            if spec.overrides.ready_marker.is_none() {
                spec.overrides.ready_marker = settings.csv.ready_marker.clone();
            }
            Some(Watched::Glob {
                spec: Box::new(spec),
                tables_dir: settings.csv.tables_dir.clone(),
                dir: settings.csv.tables_dir.join(dir),
            })
        }
    }
}

/// One mirror's triggers: the watch of its file (when it has one), its schedule
/// and the start.
struct Triggers<'a> {
    watched: Option<Watched>,
    marker: Option<&'a str>,
    schedule: &'a robfig_cron::Schedule,
}

impl Triggers<'_> {
    fn start(
        self,
        settings: &Settings,
        writes: WriteTracker,
        requests: &RunRequests,
        tasks: &mut tokio::task::JoinSet<()>,
        stop: &CancellationToken,
    ) -> Result<(), ExitCode> {
        if let (true, Some(watched)) = (settings.triggers.watch, self.watched) {
            let glob = matches!(watched, Watched::Glob { .. });
            match FileWatch::start(
                watched,
                self.marker,
                settings.triggers.watch_debounce,
                settings.triggers.watch_poll,
                writes,
            ) {
                Ok(watch) => {
                    tasks.spawn(watch.run(requests.clone(), stop.clone()));
                }
                // A glob's directory may come later: the mirror runs on its schedule
                // (each run refuses it while the directory is missing), the others go on.
                Err(e) if glob => {
                    tracing::warn!(error = %error_chain(&e), "the glob's directory cannot be watched; the mirror runs on its schedule only")
                }
                Err(e) => return Err(fatal("file watch", &e)),
            }
        }
        tasks.spawn(ticker::run(
            self.schedule.clone(),
            requests.clone(),
            stop.clone(),
        ));
        if settings.triggers.run_on_start {
            requests.send(Trigger::Start);
        }
        Ok(())
    }
}
