//! The command line (SPEC §3): clap definitions, and the one place where results
//! become exit codes (0 success, 1 refused/failed/unreachable, 2 configuration or
//! usage).

use crate::config::{ConfigError, Overrides, Settings};
use crate::domain::LoadId;
use crate::pipeline::{self, error_chain, ProgressStyle, Summary, SyncContext, SyncRequest};
use crate::runs::{self, Trigger};
use crate::triggers::cron::Schedule;
use chrono::{DateTime, Utc};
use clap::{Args, Parser, Subcommand};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// Keeps the PostgreSQL table `followers` an exact, safe mirror of a CSV file.
///
/// Settings come from (lowest first) built-in defaults, a TOML file (--config or
/// CONFIG_FILE), `.env`, the environment, and these flags. See README.md.
#[derive(Debug, Parser)]
#[command(name = "followers-etl", version, propagate_version = true)]
pub struct Cli {
    /// TOML file with settings (lower-case variable names, e.g. batch_size = 5000).
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
    /// Run the agent: migrations, recovery, then cron, file watch and HTTP until SIGINT/SIGTERM (the default).
    Serve,
    /// Sync once now, then exit (0 synced/skipped/dry run, 1 refused/failed, 2 bad configuration).
    ///
    /// A file still being written is waited for (at most 10 × WATCH_DEBOUNCE), then refused.
    Sync(SyncArgs),
    /// Validate a CSV file without touching any database (0 valid, 1 invalid, 2 usage).
    Check {
        /// The file to check, resolved as `sync --file` resolves it: relative to TABLES_DIR and inside it (default: CSV_FILE).
        path: Option<PathBuf>,
        /// Print the report as one JSON object.
        #[arg(long)]
        json: bool,
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
    /// Show the last runs and the current table_status (1 if the database is unreachable).
    Status {
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
        /// How many runs to show.
        #[arg(long, default_value_t = 10, value_name = "N")]
        limit: u64,
    },
    /// Apply pending migrations (once, the takeover of the old service's followers table) and check the shape of followers, then exit (1 on failure).
    Migrate,
}

#[derive(Debug, Args)]
pub struct SyncArgs {
    /// CSV file to sync, relative to TABLES_DIR or absolute (overrides CSV_FILE).
    #[arg(long, value_name = "PATH")]
    pub file: Option<PathBuf>,
    /// Sync even if the file is unchanged since the last successful sync.
    #[arg(long)]
    pub force: bool,
    /// Compute and print what would be inserted, updated and deleted, and whether the delete guard would refuse (would_refuse); change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Allow deleting more than MAX_DELETE_RATIO of the followers.
    #[arg(long)]
    pub allow_mass_delete: bool,
    /// Print the summary as one JSON object on stdout.
    #[arg(long)]
    pub json: bool,
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

const USAGE: u8 = 2;
const FAILURE: u8 = 1;

fn config_failure(e: &ConfigError) -> ExitCode {
    eprintln!("followers-etl: configuration error: {e}");
    ExitCode::from(USAGE)
}

fn failure(context: &str, e: &dyn std::error::Error) -> ExitCode {
    eprintln!("followers-etl: {context}: {}", error_chain(e));
    ExitCode::from(FAILURE)
}

/// Runs the command; the returned code is the process's exit status.
pub async fn run(cli: Cli, settings: Settings) -> ExitCode {
    let settings = Arc::new(settings);
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => crate::agent::serve(settings).await,
        Command::Sync(args) => sync(settings, args).await,
        Command::Check { path, json } => check(&settings, path, json),
        Command::Schedule { expr, from, count } => schedule(&settings, expr, from, count),
        Command::Status { json, limit } => status(&settings, json, limit).await,
        Command::Migrate => match connect_and_migrate(&settings).await {
            Ok(_) => {
                println!("migrations applied");
                ExitCode::SUCCESS
            }
            Err(code) => code,
        },
    }
}

async fn connect_and_migrate(settings: &Settings) -> Result<sea_orm::DatabaseConnection, ExitCode> {
    let db = crate::db::connect(settings)
        .await
        .map_err(|e| failure("database", &e))?;
    crate::db::migrate(&db, &settings.database_url)
        .await
        .map_err(|e| failure("migrations", &e))?;
    Ok(db)
}

async fn sync(settings: Arc<Settings>, args: SyncArgs) -> ExitCode {
    let file = match settings.resolve_csv_file(args.file.as_deref()) {
        Ok(file) => file,
        Err(e) => return config_failure(&e),
    };
    let load_id = LoadId::new();
    let db = match connect_and_migrate(&settings).await {
        Ok(db) => db,
        Err(code) => {
            print_summary(&Summary::not_started(load_id), args.json);
            return code;
        }
    };
    // SIGINT or SIGTERM cancels the run; it is compensated and `sync` exits 1.
    let cancel = CancellationToken::new();
    crate::agent::stop_on_signals(cancel.clone());
    let ctx = SyncContext {
        db,
        settings,
        progress: if std::io::stderr().is_terminal() && !args.json {
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
    };
    let summary = pipeline::run_sync(&ctx, &request, load_id, cancel).await;
    print_summary(&summary, args.json);
    if let Some(reason) = &summary.reason {
        eprintln!("followers-etl: {}: {reason}", summary.outcome);
    }
    ExitCode::from(summary.outcome.exit_code())
}

fn print_summary(summary: &Summary, json: bool) {
    if json {
        println!(
            "{}",
            serde_json::to_string(summary).expect("a summary always serialises")
        );
    } else {
        let c = &summary.counts;
        let verdict = summary
            .dry_run
            .as_ref()
            .map(|v| format!(" would_refuse={}", v.would_refuse))
            .unwrap_or_default();
        println!(
            "{} load_id={} rows_read={} inserted={} updated={} deleted={} unchanged={} rejected={} duplicates={} duration={:.3}s{verdict}",
            summary.outcome, summary.load_id, c.rows_read, c.inserted, c.updated, c.deleted, c.unchanged, c.rejected, c.duplicates,
            summary.duration.as_secs_f64()
        );
    }
}

fn check(settings: &Settings, path: Option<PathBuf>, json: bool) -> ExitCode {
    // The same file `sync --file PATH` would read (README, Commands).
    let resolved = match &path {
        Some(p) => crate::config::confine("PATH", &settings.tables_dir, p),
        None => settings.resolve_csv_file(None),
    };
    let path = match resolved {
        Ok(p) => p,
        Err(e) => return config_failure(&e),
    };
    let report = match pipeline::check::check_file(&path, &settings.csv) {
        Ok(report) => report,
        // The file cannot be read at all (missing, a directory): a usage error.
        Err(e) if !e.is_content() => {
            eprintln!("followers-etl: {}", error_chain(&e));
            return ExitCode::from(USAGE);
        }
        Err(e) => {
            eprintln!("followers-etl: invalid: {}", error_chain(&e));
            return ExitCode::from(FAILURE);
        }
    };
    for reject in &report.rejects {
        eprintln!("{}: {reject}", path.display());
    }
    let field_count = |r: &pipeline::validate::Reject| {
        matches!(
            r.reason,
            pipeline::validate::RejectReason::FieldCount { .. }
        )
    };
    if report.rejects.iter().any(field_count) {
        if let Some(hint) = pipeline::read::delimiter_hint(&path, &settings.csv) {
            eprintln!("{}: hint: {hint}", path.display());
        }
    }
    for (email, lines) in &report.duplicate_lines {
        eprintln!(
            "{}: warning: {email} appears on lines {lines:?}; the last wins",
            path.display()
        );
    }
    if json {
        println!("{}", serde_json::to_string(&report).expect("serialisable"));
    } else {
        println!(
            "{}: {} rows, {} valid, {} invalid, {} duplicates",
            path.display(),
            report.rows,
            report.valid,
            report.invalid,
            report.duplicates
        );
    }
    ExitCode::from(if report.invalid == 0 { 0 } else { FAILURE })
}

fn schedule(
    settings: &Settings,
    expr: Option<String>,
    from: Option<DateTime<chrono::FixedOffset>>,
    count: usize,
) -> ExitCode {
    let schedule = match expr {
        None => settings.cron_schedule.clone(),
        Some(expr) => match Schedule::parse(&expr) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("followers-etl: invalid schedule {expr:?}: {e}");
                return ExitCode::from(USAGE);
            }
        },
    };
    for warning in schedule.warnings() {
        eprintln!("followers-etl: warning: {warning}");
    }
    let from = from.map(|t| t.with_timezone(&Utc)).unwrap_or_else(Utc::now);
    let times = schedule.upcoming(from, count);
    for t in &times {
        println!("{}", t.to_rfc3339());
    }
    if times.is_empty() && count > 0 {
        eprintln!("followers-etl: this schedule never fires");
    }
    ExitCode::SUCCESS
}

async fn status(settings: &Settings, json: bool, limit: u64) -> ExitCode {
    let db = match crate::db::connect(settings).await {
        Ok(db) => db,
        Err(e) => return failure("database", &e),
    };
    let (runs, tables) = match tokio::try_join!(runs::recent(&db, limit), runs::table_status(&db)) {
        Ok(x) => x,
        Err(e) => {
            return failure(
                "cannot read the run history (run `followers-etl migrate`?)",
                &e,
            )
        }
    };
    if json {
        let runs: Vec<_> = runs.iter().map(runs::run_json).collect();
        let tables: Vec<_> = tables.iter().map(runs::status_json).collect();
        println!(
            "{}",
            serde_json::json!({ "table_status": tables, "runs": runs })
        );
        return ExitCode::SUCCESS;
    }
    println!("table_status:");
    for t in &tables {
        println!(
            "  {} last_activity={} load_id={}",
            t.table_name,
            t.last_activity
                .map(|t| format!("{t}Z"))
                .unwrap_or_else(|| "never".into()),
            t.load_id.map(|l| l.to_string()).unwrap_or_default()
        );
    }
    println!("runs (newest first):");
    for r in &runs {
        println!(
            "  {} {} {:<8} {:<7} rows_read={} inserted={} updated={} deleted={} unchanged={} rejected={} duplicates={}{}",
            r.started_at,
            r.load_id,
            r.outcome,
            r.trigger,
            r.rows_read,
            r.inserted,
            r.updated,
            r.deleted,
            r.unchanged,
            r.rejected,
            r.duplicates,
            r.error.as_deref().map(|e| format!(" error={e:?}")).unwrap_or_default()
        );
    }
    ExitCode::SUCCESS
}
