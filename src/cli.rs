//! The command line (README.md#commands): clap definitions and the commands;
//! their exit codes come from `exit.rs`.

use crate::config::{ConfigError, Overrides, Settings};
use crate::domain::LoadId;
use crate::domain::{Outcome, Trigger};
use crate::errors::error_chain;
use crate::exit;
use crate::mirror::MirrorSpec;
use crate::pipeline::revert::{RevertSummary, Target};
use crate::pipeline::{self, ProgressStyle, Summary, SyncContext, SyncRequest};
use crate::runs;
use crate::signals::{self, Hangup};
use crate::telemetry::{report, report_raw};
use chrono::{DateTime, Utc};
use clap::{Args, Parser, Subcommand};
use robfig_cron::Schedule;
use std::fmt;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;
use tracing::Level;

mod configured;
mod mirrors;

use mirrors::Chosen;

/// Keeps PostgreSQL tables exact, safe mirrors of CSV files: `followers` from CSV_FILE, and
/// the config file's `[[mirror]]` tables (docs/mirrors.md).
///
/// Settings come from (lowest first) built-in defaults, a TOML file (--config or
/// CONFIG_FILE), `.env`, the environment, and these flags. See README.md.
#[derive(Debug, Parser)]
#[command(name = "followers-etl", version, propagate_version = true)]
pub struct Cli {
    /// TOML file with settings (lower-case variable names, e.g. batch_size = 5000) and `[[mirror]]` tables (docs/mirrors.md).
    #[arg(long, global = true, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// PostgreSQL connection string (URL or libpq keywords); overrides DATABASE_URL, DSN and PGHOST/PGPORT/PGUSER/PGDATABASE.
    #[arg(long, global = true, value_name = "URL")]
    pub database_url: Option<String>,
    /// trace, debug, info, warn or error; overrides LOG_LEVEL.
    #[arg(long, global = true, value_name = "LEVEL")]
    pub log_level: Option<String>,
    /// text or json; overrides LOG_FORMAT.
    #[arg(long, global = true, value_name = "FORMAT")]
    pub log_format: Option<String>,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the agent: migrations, recovery, then cron, file watch and HTTP until SIGINT/SIGTERM; SIGHUP is logged and ignored (the default).
    Serve,
    /// Sync once now, then exit (0 synced/skipped/dry run; 1 refused/failed, or skipped because the same content was refused earlier; 2 bad configuration or usage).
    ///
    /// A file still being written is waited for (at most 10 × WATCH_DEBOUNCE), then refused.
    Sync(SyncArgs),
    /// Validate a CSV file without touching any database, with the columns of the mirror (0 valid, 1 invalid, 2 usage).
    Check {
        /// The file to check: any path (relative to TABLES_DIR when it names a file there, else to the working directory; default: CSV_FILE, or the mirror's file).
        path: Option<PathBuf>,
        /// Print the report as one JSON object, with every invalid line (line, reason, raw; and column for a configured mirror) as `rejects --json` lists them.
        #[arg(long)]
        json: bool,
        /// The mirror whose columns the file has: followers (the built-in one) or a configured one; required when more than one mirror is configured (docs/mirrors.md#commands).
        #[arg(long, value_name = "NAME")]
        mirror: Option<String>,
    },
    /// Print the next activation times of a cron expression (0, or 2 for an invalid expression).
    Schedule {
        /// robfig/cron v3 expression (default: CRON_SCHEDULE), e.g. "CRON_TZ=Europe/Berlin 30 2 * * MON-FRI".
        expr: Option<String>,
        /// Start strictly after this RFC 3339 time (default: now).
        #[arg(long, value_name = "RFC3339")]
        from: Option<DateTime<chrono::FixedOffset>>,
        /// How many activations to print.
        #[arg(long, default_value_t = 5, value_name = "N")]
        count: usize,
    },
    /// Followers, last success, next run, the last run's stages and any refusal, then the last runs (times UTC, RFC 3339; 1 if the database is unreachable).
    Status {
        /// Print the same report as one JSON object.
        #[arg(long)]
        json: bool,
        /// How many runs to show.
        #[arg(long, default_value_t = 10, value_name = "N")]
        limit: u64,
        /// Only this mirror's block (docs/mirrors.md#commands); without it, every mirror's, one block each.
        #[arg(long, value_name = "NAME")]
        mirror: Option<String>,
    },
    /// Print the rejected lines of a run: line number, reason, the line's text (1 if the database is unreachable or there is no such run).
    Rejects {
        /// The run's load_id (default: the newest run that read the file, as --last).
        #[arg(value_name = "LOAD_ID", conflicts_with = "last")]
        load_id: Option<uuid::Uuid>,
        /// The newest run that read the file (not skipped, not still running).
        #[arg(long)]
        last: bool,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
        /// The mirror (docs/mirrors.md#commands): required when more than one mirror is configured.
        #[arg(long, value_name = "NAME")]
        mirror: Option<String>,
    },
    /// Apply pending migrations (once, the takeover of the old service's followers table) and check the shape of followers, then exit (1 on failure).
    Migrate,
    /// Undo synced runs from their journal, newest first, back to and including LOAD_ID (or only the newest with --last), in one transaction (0 reverted or dry run, 1 refused/failed or the journal off, 2 usage).
    #[command(override_usage = "followers-etl revert <LOAD_ID | --last> [OPTIONS]")]
    Revert {
        /// The oldest run to undo (its load_id, as `status` shows it).
        #[arg(
            value_name = "LOAD_ID",
            required_unless_present = "last",
            conflicts_with = "last"
        )]
        load_id: Option<uuid::Uuid>,
        /// Undo the newest synced run that is not reverted yet.
        #[arg(long)]
        last: bool,
        /// Print what would be undone and change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Undo even when it deletes more than MAX_DELETE_RATIO of the followers (a configured mirror: its max_delete_ratio of its rows).
        #[arg(long)]
        allow_mass_delete: bool,
        /// Print the summary as one JSON object on stdout.
        #[arg(long)]
        json: bool,
        /// The mirror to revert: followers (the built-in one) or a configured one; required when more than one mirror is configured (docs/mirrors.md#commands).
        #[arg(long, value_name = "NAME")]
        mirror: Option<String>,
    },
    /// Every run whose journal shows it changed one row, oldest first: the follower with email KEY (inserted, renamed, deleted), or with --mirror NAME the row of a configured mirror with that key (0; 1 database unreachable; 2 invalid key or usage).
    History {
        /// The row's key: the follower's email (normalised as the CSV's emails are); for a configured mirror its key columns' values in the key's order, or col=value pairs in any order (each validated for its column's type).
        #[arg(value_name = "KEY", required = true, num_args = 1..)]
        key: Vec<String>,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
        /// The mirror: followers (the built-in one) or a configured one; required when more than one mirror is configured (docs/mirrors.md#commands).
        #[arg(long, value_name = "NAME")]
        mirror: Option<String>,
    },
    /// Print the resolved mirrors (docs/mirrors.md): source, table, key, columns, and each setting with its effective value; reads no file and no database (0; 2 bad configuration).
    Mirrors {
        /// Print one JSON object with a "mirrors" array.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Args)]
pub struct SyncArgs {
    /// CSV file to sync, relative to TABLES_DIR or absolute (overrides CSV_FILE).
    #[arg(long, value_name = "PATH")]
    pub file: Option<PathBuf>,
    /// Sync even if the file is unchanged since the last successful sync, was
    /// refused earlier, or is another file than the one the table was last synced
    /// from. Waits up to RUN_LOCK_WAIT for a run in progress.
    #[arg(long)]
    pub force: bool,
    /// Compute and print what would be inserted, updated and deleted, and whether a guard would refuse (would_refuse); change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Allow deleting more than MAX_DELETE_RATIO of the followers, or all of them
    /// by an empty file. Waits up to RUN_LOCK_WAIT for a run in progress.
    #[arg(long)]
    pub allow_mass_delete: bool,
    /// Allow renaming (changing the full_name of) more than MAX_UPDATE_RATIO of
    /// the followers. Waits up to RUN_LOCK_WAIT for a run in progress.
    #[arg(long)]
    pub allow_mass_update: bool,
    /// Print the summary as one JSON object on stdout.
    #[arg(long)]
    pub json: bool,
    /// A mirror to sync (repeatable; docs/mirrors.md#commands); without it, every mirror, at most MAX_PARALLEL_MIRRORS at once, one summary per mirror naming it; the exit code is the worst of them.
    #[arg(long, value_name = "NAME")]
    pub mirror: Vec<String>,
}

impl Cli {
    pub fn overrides(&self) -> Overrides {
        Overrides {
            config_file: self.config.clone(),
            database_url: self.database_url.clone(),
            log_level: self.log_level.clone(),
            log_format: self.log_format.clone(),
        }
    }
}

fn config_failure(e: &ConfigError) -> ExitCode {
    report(Level::ERROR, &format!("configuration error: {e}"));
    exit::usage()
}

/// `status` cannot read the runs: a role without the privilege is told so
/// (docs/sync.md#database-roles), else the tables may not exist yet.
fn unreadable_runs(e: &sea_orm::DbErr) -> ExitCode {
    let hint = if crate::pipeline::merge::sqlstate(e).as_deref() == Some("42501") {
        "cannot read the runs (this role may not read etl_info_schema: docs/sync.md#database-roles)"
    } else {
        "cannot read the runs (run `followers-etl migrate`?)"
    };
    failure(hint, e)
}

fn failure(context: &str, e: &dyn std::error::Error) -> ExitCode {
    report(Level::ERROR, &format!("{context}: {}", error_chain(e)));
    exit::failure()
}

/// Command output on stdout, buffered. A reader that goes away early (`status |
/// head -1`) ends the output quietly, as Unix tools do: the rest is dropped and
/// the command's exit status is kept. Any other write error is reported (exit 1).
struct Out {
    stdout: std::io::BufWriter<std::io::StdoutLock<'static>>,
    error: Option<std::io::Error>,
}

impl Out {
    fn new() -> Self {
        Self {
            stdout: std::io::BufWriter::with_capacity(64 * 1024, std::io::stdout().lock()),
            error: None,
        }
    }

    fn line(&mut self, text: fmt::Arguments<'_>) {
        if self.error.is_none() {
            if let Err(e) = writeln!(self.stdout, "{text}") {
                self.error = Some(e);
            }
        }
    }

    /// Like `line`, without the line break (a JSON object written in parts).
    fn write(&mut self, text: fmt::Arguments<'_>) {
        if self.error.is_none() {
            if let Err(e) = write!(self.stdout, "{text}") {
                self.error = Some(e);
            }
        }
    }

    /// Flushes; `code` unless stdout failed for another reason than a closed pipe.
    fn finish(mut self, code: ExitCode) -> ExitCode {
        if self.error.is_none() {
            self.error = self.stdout.flush().err();
        }
        match self.error {
            None => code,
            Some(e) if e.kind() == std::io::ErrorKind::BrokenPipe => code,
            Some(e) => {
                report(Level::ERROR, &format!("cannot write to stdout: {e}"));
                exit::failure()
            }
        }
    }
}

/// Prints one line to stdout (see `Out`).
fn print_line(text: fmt::Arguments<'_>) -> ExitCode {
    let mut out = Out::new();
    out.line(text);
    out.finish(ExitCode::SUCCESS)
}

/// Runs the command; the returned code is the process's exit status.
pub async fn run(cli: Cli, settings: Settings) -> ExitCode {
    let settings = Arc::new(settings);
    let command = cli.command.unwrap_or(Command::Serve);
    match command {
        Command::Serve => crate::agent::serve(settings).await,
        Command::Sync(args) => sync(settings, args).await,
        Command::Check { path, json, mirror } => {
            match mirrors::choose(&settings, mirror.as_deref()) {
                Ok(Chosen::Followers) => check(&settings, path, json),
                Ok(Chosen::Configured(spec)) => configured::check(&settings, spec, path, json),
                Err(code) => code,
            }
        }
        Command::Schedule { expr, from, count } => schedule(&settings, expr, from, count),
        Command::Status {
            json,
            limit,
            mirror,
        } => status(&settings, json, limit, mirror.as_deref()).await,
        Command::Rejects {
            load_id,
            json,
            mirror,
            ..
        } => match mirrors::choose(&settings, mirror.as_deref()) {
            Ok(Chosen::Followers) => rejects(&settings, runs::BUILTIN_MIRROR, load_id, json).await,
            Ok(Chosen::Configured(spec)) => {
                rejects(&settings, spec.name.as_str(), load_id, json).await
            }
            Err(code) => code,
        },
        Command::Revert {
            load_id,
            last: _,
            dry_run,
            allow_mass_delete,
            json,
            mirror,
        } => {
            let target = load_id.map_or(Target::Last, Target::Run);
            match mirrors::choose(&settings, mirror.as_deref()) {
                Ok(Chosen::Followers) => {
                    revert(settings.clone(), target, dry_run, allow_mass_delete, json).await
                }
                Ok(Chosen::Configured(spec)) => {
                    configured::revert(&settings, spec, target, dry_run, allow_mass_delete, json)
                        .await
                }
                Err(code) => code,
            }
        }
        Command::History { key, json, mirror } => {
            match mirrors::choose(&settings, mirror.as_deref()) {
                Ok(Chosen::Followers) => match key.as_slice() {
                    [email] => history(&settings, email, json).await,
                    _ => {
                        report(
                            Level::ERROR,
                            &format!(
                                "the followers mirror's key is one email, {} values given",
                                key.len()
                            ),
                        );
                        exit::usage()
                    }
                },
                Ok(Chosen::Configured(spec)) => {
                    configured::history(&settings, spec, &key, json).await
                }
                Err(code) => code,
            }
        }
        Command::Mirrors { json } => mirrors::mirrors(&settings, json),
        Command::Migrate => match connect_and_migrate(&settings).await {
            Ok(_) => print_line(format_args!("migrations applied")),
            Err(code) => code,
        },
    }
}

/// A dry run's start: connects and reads, never migrates (README.md#commands: a
/// dry run never changes the database; with migrations pending it is refused,
/// exit 1, naming `followers-etl migrate`).
/// The error's outcome is `refused` when the database is reachable but not
/// migrated, `failed` otherwise.
async fn connect_for_dry_run(
    settings: &Settings,
    what: &'static str,
) -> Result<sea_orm::DatabaseConnection, (ExitCode, Outcome)> {
    let db = crate::db::connect(settings)
        .await
        .map_err(|e| (failure("database", &e), Outcome::Failed))?;
    crate::db::check_dry_run(&db, what).await.map_err(|e| {
        report(Level::ERROR, &error_chain(&e));
        let outcome = match e {
            crate::db::DbError::PendingForDryRun { .. } => Outcome::Refused,
            _ => Outcome::Failed,
        };
        (exit::failure(), outcome)
    })?;
    Ok(db)
}

/// `sync`'s connection: a dry run's (never migrates), else migrated; the error
/// with the outcome a summary of the run that could not start reports.
async fn connect_for_sync(
    settings: &Settings,
    dry_run: bool,
) -> Result<sea_orm::DatabaseConnection, (ExitCode, Outcome)> {
    if dry_run {
        connect_for_dry_run(settings, "sync --dry-run").await
    } else {
        connect_and_migrate(settings)
            .await
            .map_err(|code| (code, Outcome::Failed))
    }
}

async fn connect_and_migrate(settings: &Settings) -> Result<sea_orm::DatabaseConnection, ExitCode> {
    let db = crate::db::connect(settings)
        .await
        .map_err(|e| failure("database", &e))?;
    crate::db::migrate_for(&db, &settings.database.url, settings.runs_builtin())
        .await
        .map_err(|e| failure("migrations", &e))?;
    if settings.runs_builtin() {
        pipeline::drift::ensure_counter(&db, settings.triggers.verify_every).await;
    }
    Ok(db)
}

async fn sync(settings: Arc<Settings>, args: SyncArgs) -> ExitCode {
    let json = args.json;
    // SIGINT, SIGTERM or SIGHUP cancels the run; it is compensated and `sync` exits 1.
    let signals = |cancel: CancellationToken| signals::stop_on_signals(cancel, Hangup::Stop);
    let mut print = |summary: &Summary, recorded: bool| print_summary(summary, json, recorded);
    sync_with(settings, args, signals, &mut print).await
}

/// `followers-etl sync` once its settings are loaded, with the summary handed to
/// `print` (with whether the run was recorded) instead of printed, and `signals`
/// given the token that cancels the run: the command itself passes the signal
/// handlers and `print_summary`; the integration tests (tests/it/helpers.rs) run a
/// sync in their own process through it. Returns the command's exit code.
pub async fn sync_with(
    settings: Arc<Settings>,
    args: SyncArgs,
    signals: impl FnOnce(CancellationToken),
    print: &mut dyn FnMut(&Summary, bool) -> ExitCode,
) -> ExitCode {
    let chosen: Vec<Option<MirrorSpec>> = match mirrors::to_sync(&settings, &args.mirror) {
        Ok(chosen) => chosen.into_iter().map(|m| m.cloned()).collect(),
        Err(code) => return code,
    };
    if mirrors::configured(&settings) {
        return sync_mirrors(settings, args, chosen, signals, print).await;
    }
    sync_builtin(settings, args, signals, print).await
}

/// `sync` of the built-in mirror alone, as it has always been (no `[[mirror]]`).
async fn sync_builtin(
    settings: Arc<Settings>,
    args: SyncArgs,
    signals: impl FnOnce(CancellationToken),
    print: &mut dyn FnMut(&Summary, bool) -> ExitCode,
) -> ExitCode {
    let file = match settings.resolve_csv_file(args.file.as_deref()) {
        Ok(file) => file,
        Err(e) => return config_failure(&e),
    };
    let load_id = LoadId::new();
    let cancel = CancellationToken::new();
    signals(cancel.clone());
    let connected = connect_for_sync(&settings, args.dry_run).await;
    let db = match connected {
        Ok(db) => db,
        // No run was recorded: the summary names no load_id ([The sync summary](docs/operations.md#the-sync-summary)).
        Err((code, outcome)) => {
            let summary = Summary {
                outcome,
                ..Summary::not_started(load_id)
            };
            print(&summary, false);
            return code;
        }
    };
    let ctx = SyncContext {
        db,
        settings,
        // A progress bar only for a person at a terminal, never among JSON lines.
        progress: if std::io::stderr().is_terminal() && !args.json && !crate::telemetry::is_json() {
            ProgressStyle::Bar
        } else {
            ProgressStyle::Log
        },
        writes: Default::default(),
    };
    let request = SyncRequest {
        file,
        trigger: Trigger::Manual,
        force: args.force,
        dry_run: args.dry_run,
        allow_mass_delete: args.allow_mass_delete,
        allow_mass_update: args.allow_mass_update,
        allow_file_change: args.force || ctx.settings.guard.allow_file_change,
    };
    let summary = pipeline::run_sync(&ctx, &request, load_id, cancel).await;
    let code = print(&summary, true);
    // The reason is on stderr once: in the run's `sync finished` event, or here
    // when LOG_LEVEL hides that event.
    if let Some(reason) = &summary.reason {
        if !summary.event_shown() {
            report(summary.level(), &format!("{}: {reason}", summary.outcome));
        }
    }
    // After the run (and its lock): keep the runs within their retention.
    // Bounded: a database that stopped answering must not hold the exit.
    let pruned = tokio::time::timeout(
        ctx.settings.database.timeout,
        runs::prune_or_warn(&ctx.db, ctx.settings.retention.runs),
    );
    if pruned.await.is_err() {
        tracing::warn!("pruning old runs got no answer within DB_TIMEOUT; the next run retries");
    }
    if code == ExitCode::SUCCESS && summary.refused_earlier {
        // Skipped, but the file is still refused: it needs an operator.
        exit::failure()
    } else if code == ExitCode::SUCCESS {
        exit::for_outcome(summary.outcome)
    } else {
        code
    }
}

/// `sync` once `[[mirror]]` tables are configured (docs/mirrors.md#commands):
/// the chosen mirrors (`None`: the built-in one), at most `MAX_PARALLEL_MIRRORS`
/// at once, one summary per mirror in their order, each naming its mirror; the
/// exit code is the worst of them.
async fn sync_mirrors(
    settings: Arc<Settings>,
    args: SyncArgs,
    chosen: Vec<Option<MirrorSpec>>,
    signals: impl FnOnce(CancellationToken),
    print: &mut dyn FnMut(&Summary, bool) -> ExitCode,
) -> ExitCode {
    if let Err(code) = refuse_for_configured(&args, &chosen) {
        return code;
    }
    let file = match chosen.iter().any(Option::is_none) {
        true => match settings.resolve_csv_file(args.file.as_deref()) {
            Ok(file) => Some(file),
            Err(e) => return config_failure(&e),
        },
        false => None,
    };
    let name_of = |spec: &Option<MirrorSpec>| {
        spec.as_ref()
            .map_or(runs::BUILTIN_MIRROR.to_owned(), |m| m.name.to_string())
    };
    let cancel = CancellationToken::new();
    signals(cancel.clone());
    let connected = connect_for_sync(&settings, args.dry_run).await;
    let db = match connected {
        Ok(db) => db,
        Err((code, outcome)) => {
            for spec in &chosen {
                let summary = Summary {
                    mirror: Some(name_of(spec)),
                    outcome,
                    ..Summary::not_started(LoadId::new())
                };
                print(&summary, false);
            }
            return code;
        }
    };
    if let Err(code) = check_tables(&db, chosen.iter().flatten()).await {
        return code;
    }
    let ctx = SyncContext {
        db,
        settings: settings.clone(),
        progress: ProgressStyle::Log,
        writes: Default::default(),
    };
    let slots = Arc::new(tokio::sync::Semaphore::new(
        settings.service.max_parallel_mirrors,
    ));
    let mut runs = Vec::with_capacity(chosen.len());
    for spec in chosen {
        let (ctx, slots, cancel) = (ctx.clone(), slots.clone(), cancel.clone());
        let request = file.clone().map(|file| SyncRequest {
            file,
            trigger: Trigger::Manual,
            force: args.force,
            dry_run: args.dry_run,
            allow_mass_delete: args.allow_mass_delete,
            allow_mass_update: args.allow_mass_update,
            allow_file_change: args.force || settings.guard.allow_file_change,
        });
        let mirror_request = pipeline::mirror::MirrorRequest {
            trigger: Trigger::Manual,
            force: args.force,
            dry_run: args.dry_run,
            allow_mass_delete: args.allow_mass_delete,
            allow_mass_update: args.allow_mass_update,
        };
        runs.push(async move {
            // Never closed: a slot always comes.
            let _slot = slots.acquire_owned().await;
            let summary = match (&spec, &request) {
                (Some(spec), _) => {
                    pipeline::mirror::run_mirror_sync(
                        &ctx,
                        spec,
                        &mirror_request,
                        LoadId::new(),
                        cancel,
                    )
                    .await
                }
                (None, Some(request)) => {
                    let mut summary =
                        pipeline::run_sync(&ctx, request, LoadId::new(), cancel).await;
                    summary.mirror = Some(runs::BUILTIN_MIRROR.to_owned());
                    summary
                }
                (None, None) => unreachable!("the built-in mirror's file was resolved above"),
            };
            summary
        });
    }
    // In this task, concurrently: a run's future borrows its progress callbacks.
    let summaries = futures::future::join_all(runs).await;
    let worst = print_all(&summaries, print);
    if file.is_some() {
        let pruned = tokio::time::timeout(
            settings.database.timeout,
            runs::prune_or_warn(&ctx.db, settings.retention.runs),
        );
        if pruned.await.is_err() {
            tracing::warn!(
                "pruning old runs got no answer within DB_TIMEOUT; the next run retries"
            );
        }
    }
    worst
}

/// Checks each configured mirror's existing table once, before any run
/// (docs/mirrors.md#an-existing-table): an incompatible one is a configuration
/// error (exit 2) naming the mirror, the column and the fix; a database error
/// fails the command (exit 1). Shared by `sync` and `serve`.
pub(crate) async fn check_tables<'a>(
    db: &sea_orm::DatabaseConnection,
    specs: impl IntoIterator<Item = &'a MirrorSpec>,
) -> Result<(), ExitCode> {
    for spec in specs {
        match crate::mirror::run::check_existing_table(db, spec).await {
            Ok(()) => {}
            Err(e @ crate::mirror::run::MirrorRunError::Incompatible(_)) => {
                report(Level::ERROR, &format!("configuration error: {e}"));
                return Err(exit::usage());
            }
            Err(e) => return Err(failure("database", &e)),
        }
    }
    Ok(())
}

/// What `sync` refuses (exit 2) while a configured mirror is chosen.
fn refuse_for_configured(args: &SyncArgs, chosen: &[Option<MirrorSpec>]) -> Result<(), ExitCode> {
    let Some(name) = chosen.iter().flatten().map(|m| m.name.to_string()).next() else {
        return Ok(());
    };
    if args.file.is_some() {
        report(
            Level::ERROR,
            &format!("mirror {name}: --file names the built-in mirror's file; a configured mirror reads its own (pass --mirror followers with --file)"),
        );
        return Err(exit::usage());
    }
    Ok(())
}

/// Prints each mirror's summary, in order, and its reason when the log hides
/// it; returns the worst exit code.
fn print_all(summaries: &[Summary], print: &mut dyn FnMut(&Summary, bool) -> ExitCode) -> ExitCode {
    let mut worst = ExitCode::SUCCESS;
    for summary in summaries {
        let printed = print(summary, true);
        if let Some(reason) = &summary.reason {
            if !summary.event_shown() {
                report(
                    summary.level(),
                    &format!(
                        "mirror {}: {}: {reason}",
                        summary.mirror.as_deref().unwrap_or(runs::BUILTIN_MIRROR),
                        summary.outcome
                    ),
                );
            }
        }
        let code = if printed != ExitCode::SUCCESS {
            printed
        } else if summary.refused_earlier {
            exit::failure()
        } else {
            exit::for_outcome(summary.outcome)
        };
        if code != ExitCode::SUCCESS {
            worst = code;
        }
    }
    worst
}

/// The summary line; `recorded` false for a run that never reached the database,
/// whose load_id is then shown as null (`none`), being recorded nowhere.
fn print_summary(summary: &Summary, json: bool, recorded: bool) -> ExitCode {
    let mut out = Out::new();
    let load_id = if recorded {
        summary.load_id.to_string()
    } else {
        "none".to_owned()
    };
    if json {
        out.line(format_args!("{}", summary_json(summary, recorded)));
    } else {
        let c = &summary.counts;
        let verdict = summary
            .dry_run
            .as_ref()
            .map(|v| format!(" would_refuse={}", v.would_refuse))
            .unwrap_or_default();
        let mirror = summary
            .mirror
            .as_deref()
            .map(|m| format!(" mirror={m}"))
            .unwrap_or_default();
        out.line(format_args!(
            "{}{mirror} load_id={} rows_read={} inserted={} updated={} deleted={} unchanged={} rejected={} duplicates={} journaled={} duration={:.3}s{verdict}",
            summary.outcome, load_id, c.rows_read, c.inserted, c.updated, c.deleted, c.unchanged, c.rejected, c.duplicates, c.journaled,
            summary.duration.as_secs_f64()
        ));
    }
    out.finish(ExitCode::SUCCESS)
}

/// The `sync --json` summary line (without its newline): the [`Summary`] as one
/// JSON object, its `load_id` null when `recorded` is false (a run that never
/// reached the database is recorded nowhere). Shared by `sync` and the
/// integration tests' in-process syncs (tests/it/helpers.rs).
pub fn summary_json(summary: &Summary, recorded: bool) -> String {
    let text = serde_json::to_string(summary).expect("a summary always serialises");
    if recorded {
        text
    } else {
        let quoted = format!("\"{}\"", summary.load_id);
        text.replacen(&quoted, "null", 1)
    }
}

async fn revert(
    settings: Arc<Settings>,
    target: Target,
    dry_run: bool,
    allow_mass_delete: bool,
    json: bool,
) -> ExitCode {
    let connected = if dry_run {
        connect_for_dry_run(&settings, "revert --dry-run")
            .await
            .map_err(|(code, _)| code)
    } else {
        connect_and_migrate(&settings).await
    };
    let db = match connected {
        Ok(db) => db,
        Err(code) => return code,
    };
    let ctx = SyncContext {
        db,
        settings,
        progress: ProgressStyle::Log,
        writes: Default::default(),
    };
    let summary =
        pipeline::revert::run_revert(&ctx, target, dry_run, allow_mass_delete, LoadId::new()).await;
    let code = print_revert(&summary, json);
    // The reason is on stderr once, as for `sync`.
    if let Some(reason) = &summary.reason {
        if !pipeline::finished_event_shown(summary.outcome) {
            report(
                pipeline::finished_level(summary.outcome),
                &format!("revert {}: {reason}", summary.outcome),
            );
        }
    }
    if code == ExitCode::SUCCESS {
        exit::for_outcome(summary.outcome)
    } else {
        code
    }
}

fn print_revert(s: &RevertSummary, json: bool) -> ExitCode {
    let mut out = Out::new();
    if json {
        out.line(format_args!(
            "{}",
            serde_json::to_string(s).expect("a summary always serialises")
        ));
        return out.finish(ExitCode::SUCCESS);
    }
    out.line(format_args!(
        "{} load_id={} undone={} inserted={} updated={} deleted={} journaled={} duration={:.3}s",
        s.outcome,
        s.load_id,
        s.undone.len(),
        s.inserted,
        s.updated,
        s.deleted,
        s.journaled,
        s.duration.as_secs_f64()
    ));
    let verb = if s.outcome == Outcome::DryRun {
        "would undo"
    } else {
        "undid"
    };
    for r in &s.undone {
        out.line(format_args!(
            "  {verb} {} {} {} {}",
            r.load_id, r.started_at, r.trigger, r.file
        ));
    }
    if s.left > 0 {
        out.line(format_args!(
            "  left: {} follower(s) written or changed by another session after the first sync (e.g. {})",
            s.left,
            s.left_examples.join(", ")
        ));
    }
    if let Some(file) = &s.held_back {
        out.line(format_args!(
            "  held back: {file} (sync skips this content until it changes, or use sync --force)"
        ));
    }
    out.finish(ExitCode::SUCCESS)
}

async fn history(settings: &Settings, email: &str, json: bool) -> ExitCode {
    let email = match crate::domain::Email::parse(email) {
        Ok(e) => e,
        Err(e) => {
            report(Level::ERROR, &format!("invalid email {email:?}: {e}"));
            return exit::usage();
        }
    };
    let db = match crate::db::connect(settings).await {
        Ok(db) => db,
        Err(e) => return failure("database", &e),
    };
    let clock = match crate::db::modified_at_clock(&db).await {
        Ok(clock) => clock,
        Err(e) => return failure("cannot read followers.modified_at", &e),
    };
    let events = match pipeline::journal::history(&db, email.as_str(), &clock.zone).await {
        Ok(events) => events,
        Err(e) => return failure("cannot read the journal (run `followers-etl migrate`?)", &e),
    };
    let mut out = Out::new();
    if json {
        out.line(format_args!(
            "{}",
            serde_json::json!({ "email": email.as_str(), "events": events })
        ));
        return out.finish(ExitCode::SUCCESS);
    }
    if events.is_empty() {
        out.line(format_args!("{email}: no journaled change (the journal keeps JOURNAL_KEEP_RUNS runs, JOURNAL_KEEP_DAYS days)"));
    }
    for e in &events {
        let names = match (e.action, &e.old_name, &e.new_name) {
            ("renamed", Some(old), Some(new)) => format!(" {old:?} -> {new:?}"),
            (_, Some(old), _) => format!(" {old:?}"),
            _ => String::new(),
        };
        out.line(format_args!(
            "{} {} load_id={} trigger={} file={}{}{}",
            e.time,
            e.action,
            e.load_id,
            e.trigger,
            e.file,
            names,
            e.reverted_by
                .map(|r| format!(" (reverted by {r})"))
                .unwrap_or_default()
        ));
    }
    out.finish(ExitCode::SUCCESS)
}

/// The file `check PATH` reads: any path, as `sync --file PATH` would find it
/// when it names a file in `TABLES_DIR` (relative to it), else as given
/// (relative to the working directory), so an export can be checked before it is
/// copied in (README.md#commands). Without `PATH`, `CSV_FILE` as `sync` resolves it.
fn check_path(settings: &Settings, path: Option<PathBuf>) -> Result<PathBuf, ConfigError> {
    match path {
        None => settings.resolve_csv_file(None),
        Some(p) if p.is_relative() && settings.csv.tables_dir.join(&p).exists() => {
            Ok(settings.csv.tables_dir.join(p))
        }
        Some(p) => Ok(p),
    }
}

fn check(settings: &Settings, path: Option<PathBuf>, json: bool) -> ExitCode {
    let path = match check_path(settings, path) {
        Ok(p) => p,
        Err(e) => return config_failure(&e),
    };
    let mut out = Out::new();
    let mut tally = pipeline::check::CheckReport::default();
    let mut field_count = false;
    // `--json` streams: the object opens with its `rejects` list, each invalid line
    // written as it is found, with the keys of `rejects --json` (line, reason, raw).
    let mut opened = false;
    let open = |out: &mut Out, opened: &mut bool| {
        if !*opened {
            *opened = true;
            out.write(format_args!(
                "{{\"file\":{},\"rejects\":[",
                serde_json::Value::from(path.display().to_string())
            ));
        }
    };
    let result =
        pipeline::check::check_file(&path, &settings.csv.format, &mut tally, |reject, row| {
            report_raw(Level::WARN, &format!("{}: {reject}", path.display()));
            field_count |= matches!(
                reject.reason,
                pipeline::validate::RejectReason::FieldCount { .. }
            );
            if json {
                let first = !opened;
                open(&mut out, &mut opened);
                let stored = crate::rejects::StoredReject {
                    line: reject.line,
                    reason: reject.reason.to_string(),
                    raw: String::from_utf8_lossy(&row.raw).into_owned(),
                };
                out.write(format_args!(
                    "{}{}",
                    if first { "" } else { "," },
                    serde_json::to_string(&stored).expect("serialisable")
                ));
            }
        });
    let error = match result {
        Ok(()) => None,
        // The file cannot be read (missing, a directory): a usage error.
        Err(e) => {
            report_check_error(&error_chain(&e), e.is_content());
            Some(e)
        }
    };
    if field_count {
        if let Some(hint) = pipeline::read::delimiter_hint(&path, &settings.csv.format) {
            report_raw(Level::WARN, &format!("{}: hint: {hint}", path.display()));
        }
    }
    for (email, lines) in &tally.duplicate_lines {
        report_raw(
            Level::WARN,
            &format!(
                "{}: warning: {email} appears on lines {lines:?}; the last wins",
                path.display()
            ),
        );
    }
    if json {
        open(&mut out, &mut opened);
    }
    let end = CheckEnd {
        rows: tally.rows,
        valid: tally.valid,
        invalid: tally.invalid,
        duplicates: tally.duplicates,
        duplicate_lines: tally
            .duplicate_lines
            .iter()
            .map(|(email, lines)| serde_json::json!({ "email": email, "lines": lines }))
            .collect(),
        error: error.as_ref().map(|e| (error_chain(e), e.is_content())),
    };
    end.print(out, json, &path)
}

/// Says why `check` refused a file as a whole: `invalid: …` when its content
/// is at fault, else (missing, a directory, unreadable) the error alone.
fn report_check_error(error: &str, content: bool) {
    if content {
        report(Level::ERROR, &format!("invalid: {error}"));
    } else {
        report(Level::ERROR, error);
    }
}

/// How a `check` ends, the built-in mirror's or a configured one's: the
/// totals, the repeated keys (as JSON objects), and the error that refused the
/// file as a whole with whether its content was at fault.
struct CheckEnd {
    rows: u64,
    valid: u64,
    invalid: u64,
    duplicates: u64,
    duplicate_lines: Vec<serde_json::Value>,
    error: Option<(String, bool)>,
}

impl CheckEnd {
    /// Prints the totals (`--json`: closes the object the rejects opened) and
    /// returns the exit code: 0 valid, 1 invalid, 2 an unreadable file.
    fn print(self, mut out: Out, json: bool, path: &std::path::Path) -> ExitCode {
        if json {
            let mut tail = serde_json::json!({
                "duplicate_lines": self.duplicate_lines,
                "rows": self.rows,
                "valid": self.valid,
                "invalid": self.invalid,
                "duplicates": self.duplicates,
            });
            if let Some((e, _)) = &self.error {
                tail["error"] = e.clone().into();
            }
            let tail = tail.to_string();
            out.line(format_args!("],{}", &tail[1..]));
        } else if self.error.is_none() {
            out.line(format_args!(
                "{}: {} rows, {} valid, {} invalid, {} duplicates",
                path.display(),
                self.rows,
                self.valid,
                self.invalid,
                self.duplicates
            ));
        }
        out.finish(match &self.error {
            Some((_, false)) => exit::usage(),
            Some(_) => exit::failure(),
            None if self.invalid > 0 => exit::failure(),
            None => ExitCode::SUCCESS,
        })
    }
}

fn schedule(
    settings: &Settings,
    expr: Option<String>,
    from: Option<DateTime<chrono::FixedOffset>>,
    count: usize,
) -> ExitCode {
    let schedule = match expr {
        None => settings.triggers.cron_schedule.clone(),
        Some(expr) => match Schedule::parse(&expr) {
            Ok(s) => s,
            Err(e) => {
                report(Level::ERROR, &format!("invalid schedule {expr:?}: {e}"));
                return exit::usage();
            }
        },
    };
    for warning in schedule.warnings() {
        report(Level::WARN, &format!("warning: {warning}"));
    }
    let from = from.map(|t| t.with_timezone(&Utc)).unwrap_or_else(Utc::now);
    let times = schedule.upcoming(from, count);
    if times.is_empty() && count > 0 {
        report(Level::WARN, "this schedule never fires");
    }
    let mut out = Out::new();
    for t in &times {
        out.line(format_args!("{}", t.to_rfc3339()));
    }
    out.finish(ExitCode::SUCCESS)
}

async fn status(settings: &Settings, json: bool, limit: u64, mirror: Option<&str>) -> ExitCode {
    let chosen = match mirrors::to_sync(settings, mirror.map(str::to_owned).as_slice()) {
        Ok(chosen) => chosen,
        Err(code) => return code,
    };
    let db = match crate::db::connect(settings).await {
        Ok(db) => db,
        Err(e) => return failure("database", &e),
    };
    if mirrors::configured(settings) {
        return status_of_mirrors(settings, &db, &chosen, json, limit).await;
    }
    let report = match crate::status::report(&db, settings, limit).await {
        Ok(report) => report,
        Err(e) => return unreadable_runs(&e),
    };
    let mut out = Out::new();
    if json {
        out.line(format_args!(
            "{}",
            serde_json::to_string(&report).expect("a status report always serialises")
        ));
    } else {
        out.line(format_args!("{}", report.to_text().trim_end()));
    }
    out.finish(ExitCode::SUCCESS)
}

/// `status` once `[[mirror]]` tables are configured (docs/mirrors.md#commands):
/// one block per mirror (`--mirror` narrows to one), the built-in mirror's as
/// without mirrors under a heading; `--json`: `{"mirrors": [...]}`, each with
/// its `"mirror"`.
async fn status_of_mirrors(
    settings: &Settings,
    db: &sea_orm::DatabaseConnection,
    chosen: &[Option<&MirrorSpec>],
    json: bool,
    limit: u64,
) -> ExitCode {
    let mut texts = Vec::with_capacity(chosen.len());
    let mut objects = Vec::with_capacity(chosen.len());
    for spec in chosen {
        let (text, object) = match spec {
            None => match crate::status::report(db, settings, limit).await {
                Ok(report) => {
                    let mut object =
                        serde_json::to_value(&report).expect("a status report always serialises");
                    object["mirror"] = runs::BUILTIN_MIRROR.into();
                    (
                        format!("mirror followers (public.followers)\n{}", report.to_text()),
                        object,
                    )
                }
                Err(e) => return unreadable_runs(&e),
            },
            Some(spec) => match crate::status::mirror_report(db, settings, spec, limit).await {
                Ok(report) => (
                    report.to_text(),
                    serde_json::to_value(&report).expect("a status report always serialises"),
                ),
                Err(e) => return unreadable_runs(&e),
            },
        };
        texts.push(text.trim_end().to_owned());
        objects.push(object);
    }
    let mut out = Out::new();
    if json {
        out.line(format_args!(
            "{}",
            serde_json::json!({ "mirrors": objects })
        ));
    } else {
        out.line(format_args!("{}", texts.join("\n\n")));
    }
    out.finish(ExitCode::SUCCESS)
}

async fn rejects(
    settings: &Settings,
    mirror: &str,
    load_id: Option<uuid::Uuid>,
    json: bool,
) -> ExitCode {
    let db = match crate::db::connect(settings).await {
        Ok(db) => db,
        Err(e) => return failure("database", &e),
    };
    let run = match crate::rejects::of_run(&db, mirror, load_id).await {
        Ok(Some(run)) => run,
        Ok(None) => {
            report(
                Level::ERROR,
                &match load_id {
                    Some(id) => format!("no run with load_id {id}"),
                    None => "no run has read the file yet".to_owned(),
                },
            );
            return exit::failure();
        }
        Err(e) => return failure("cannot read the rejects (run `followers-etl migrate`?)", &e),
    };
    let mut out = Out::new();
    if json {
        out.line(format_args!(
            "{}",
            serde_json::to_string(&run).expect("serialisable")
        ));
        return out.finish(ExitCode::SUCCESS);
    }
    out.line(format_args!(
        "load_id={} outcome={} file={} rejected={} stored={}",
        run.load_id,
        run.outcome,
        run.file,
        run.rejected,
        run.rejects.len()
    ));
    for r in &run.rejects {
        out.line(format_args!("line {}: {}: {:?}", r.line, r.reason, r.raw));
    }
    out.finish(ExitCode::SUCCESS)
}
