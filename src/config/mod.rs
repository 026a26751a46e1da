//! Settings: every variable of docs/configuration.md#variables, layered (defaults < TOML file < `.env` <
//! process environment < command-line flags), parsed into typed values and
//! validated once at start-up. An invalid value becomes a `ConfigError` that names
//! the variable, the value and the rule; `main` turns it into exit code 2.
//!
//! `Settings` is a table of contents: each group of settings is its own struct,
//! parsed by its own `from_raw` in its own file (`database.rs`, `csv.rs`,
//! `triggers.rs`, `guard.rs`, `retention.rs`, `service.rs`, `logging.rs`);
//! `sources.rs` gathers the layers, `parse.rs` holds the shared value syntaxes.

use robfig_cron::go_duration::format_go_duration;
use secrecy::{ExposeSecret, SecretString};
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

mod confine;
mod csv;
mod database;
mod database_url;
mod guard;
mod logging;
mod mirrors;
mod parse;
mod retention;
mod service;
mod sources;
mod triggers;

pub use confine::{confine, file_identity, not_a_regular_file, ConfineError};
pub use csv::{
    CsvFormat, CsvSettings, HeaderMode, DEFAULT_BATCH_SIZE, DEFAULT_WORKERS, MAX_BATCH_SIZE,
};
pub use database::{
    DatabaseSettings, DEFAULT_DATABASE_URL, DEFAULT_DB_CONNECT_TIMEOUT, DEFAULT_DB_TIMEOUT,
    DEFAULT_LOCK_WAIT_TIMEOUT, LIBPQ_TARGET_VARIABLES, LIBPQ_VARIABLES,
};
pub use database_url::DatabaseUrl;
use database_url::*;
pub use guard::GuardSettings;
pub use logging::{LogFormat, LoggingSettings};
pub use mirrors::EffectiveSetting;
pub use retention::{
    JournalRetention, Retention, RunRetention, DEFAULT_HISTORY_KEEP_DAYS,
    DEFAULT_HISTORY_KEEP_RUNS, DEFAULT_JOURNAL_KEEP_DAYS, DEFAULT_JOURNAL_KEEP_RUNS,
};
pub use service::{RetryPolicy, ServiceSettings};
pub use sources::early_log_format;
use sources::*;
pub use triggers::{TriggerSettings, DEFAULT_VERIFY_EVERY};

/// Declares every variable the agent reads, once, with how `describe` shows its
/// effective value: the list `VARIABLES`, a constant per name in `var` (so a
/// misspelt name does not compile), the TOML file's serde struct whose keys are
/// the same names in lower case, and `Settings::describe`.
macro_rules! variables {
    ($($name:ident => |$s:ident| $shown:expr),* $(,)?) => {
        /// Every variable the agent reads, as written in the environment. A TOML file
        /// uses the same names in lower case (`batch_size = 5000`).
        pub const VARIABLES: &[&str] = &[$(stringify!($name)),*];

        /// Each variable's name, as written in the environment.
        pub mod var {
            $(pub const $name: &str = stringify!($name);)*
        }

        /// The TOML file's layer, by variable name (`sources::gather` matches the
        /// file's keys without regard to case): an unknown key is an error naming it.
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        #[allow(non_snake_case)]
        pub(super) struct TomlLayer {
            $(#[serde(default)] $name: Option<figment::value::Value>,)*
        }

        impl TomlLayer {
            /// Each key set in the file, by variable name.
            pub(super) fn into_values(self) -> impl Iterator<Item = (&'static str, figment::value::Value)> {
                [$((var::$name, self.$name)),*]
                    .into_iter()
                    .filter_map(|(name, value)| Some((name, value?)))
            }
        }

        impl Settings {
            /// Every variable (`VARIABLES`, in its order) with its effective value,
            /// `NAME=value` separated by spaces, for logs. Secrets are redacted
            /// (`DatabaseUrl`'s `Display`); `CRON_SCHEDULE` and `CSV_DELIMITER` are
            /// quoted (a schedule has spaces, a delimiter may be one), every other
            /// value is shown as it is, also one with spaces (a path).
            pub fn describe(&self) -> String {
                [$((var::$name, { let $s = self; String::from($shown) })),*]
                    .map(|(name, value)| format!("{name}={value}"))
                    .join(" ")
            }
        }
    };
}

// Grouped as `Settings` is; an old name or a fallback (`DSN`, `WORKER_POOL_SIZE`,
// `DEFAULT_DATABASE_URL`) shows the value when it supplied it, and is empty otherwise.
variables!(
    // database.rs
    DATABASE_URL => |s| s.database.url.to_string(),
    DSN => |s| s.database.url_if_from(var::DSN),
    DEFAULT_DATABASE_URL => |s| s.database.url_if_from(var::DEFAULT_DATABASE_URL),
    DB_MIN_CONNS => |s| s.database.min_conns.to_string(),
    DB_MAX_CONNS => |s| s.database.max_conns.to_string(),
    DB_CONNECT_TIMEOUT => |s| duration(s.database.connect_timeout),
    DB_TIMEOUT => |s| duration(s.database.timeout),
    LOCK_WAIT_TIMEOUT => |s| duration(s.database.lock_wait_timeout),
    RUN_LOCK_WAIT => |s| duration(s.database.run_lock_wait),
    FIRST_SYNC_KEY_REBUILD => |s| s.database.first_sync_key_rebuild.to_string(),
    // csv.rs
    TABLES_DIR => |s| s.csv.tables_dir.display().to_string(),
    CSV_FILE => |s| s.csv.file.as_deref().map(|p| p.display().to_string()).unwrap_or_default(),
    BATCH_SIZE => |s| s.csv.batch_size.to_string(),
    WORKER_POOL_GOROUTINES => |s| s.csv.workers.to_string(),
    WORKER_POOL_SIZE => |s| s.csv.workers_if_from(var::WORKER_POOL_SIZE),
    CSV_DELIMITER => |s| csv::show_delimiter(s.csv.format.delimiter),
    CSV_HEADER => |s| s.csv.format.header.as_str(),
    CSV_ENCODING => |s| s.csv.format.encoding.map_or("auto", |e| e.name()),
    READY_MARKER => |s| s.csv.ready_marker.clone().unwrap_or_default(),
    READY_TIMEOUT => |s| duration(s.csv.ready_timeout),
    // triggers.rs
    CRON_SCHEDULE => |s| format!("{:?}", s.triggers.cron_schedule.to_string()),
    RUN_ON_START => |s| s.triggers.run_on_start.to_string(),
    WATCH => |s| s.triggers.watch.to_string(),
    WATCH_DEBOUNCE => |s| duration(s.triggers.watch_debounce),
    WATCH_POLL => |s| s.triggers.watch_poll.to_string(),
    VERIFY_EVERY => |s| duration(s.triggers.verify_every),
    // guard.rs
    MAX_DELETE_RATIO => |s| s.guard.max_delete_ratio.to_string(),
    MAX_UPDATE_RATIO => |s| s.guard.max_update_ratio.to_string(),
    MAX_REJECTS => |s| s.guard.max_rejects.to_string(),
    ALLOW_FILE_CHANGE => |s| s.guard.allow_file_change.to_string(),
    // retention.rs (0: no bound)
    HISTORY_KEEP_DAYS => |s| s.retention.runs.keep_days.unwrap_or(0).to_string(),
    HISTORY_KEEP_RUNS => |s| s.retention.runs.keep_runs.unwrap_or(0).to_string(),
    JOURNAL_KEEP_RUNS => |s| s.retention.journal.keep_runs.to_string(),
    JOURNAL_KEEP_DAYS => |s| s.retention.journal.keep_days.to_string(),
    // service.rs
    HTTP_ADDR => |s| s.service.http_addr.map_or_else(|| "off".into(), |a| a.to_string()),
    SHUTDOWN_TIMEOUT => |s| duration(s.service.shutdown_timeout),
    RETRY_MAX_ATTEMPTS => |s| s.service.retry.max_attempts.to_string(),
    RETRY_BACKOFF => |s| duration(s.service.retry.backoff),
    MAX_PARALLEL_MIRRORS => |s| s.service.max_parallel_mirrors.to_string(),
    // logging.rs
    LOG_FORMAT => |s| s.logging.format.as_str(),
    LOG_LEVEL => |s| s.logging.level.clone(),
);

/// A duration as `describe` shows it: Go syntax, as the variables take it.
fn duration(d: Duration) -> String {
    format_go_duration(d).to_string()
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{var}={value:?} is invalid: {rule}")]
    Invalid {
        var: &'static str,
        value: String,
        rule: String,
    },
    #[error(
        "{var} is required for this command (set it in the environment, .env or the config file)"
    )]
    Missing { var: &'static str },
    #[error("{a} and {b} are both set and differ ({a}={va:?}, {b}={vb:?}); set only one")]
    Conflict {
        a: &'static str,
        b: &'static str,
        va: String,
        vb: String,
    },
    #[error("config file {path}: {reason}")]
    File { path: PathBuf, reason: String },
    #[error(transparent)]
    Confine(#[from] ConfineError),
    /// A `[[mirror]]` table breaks a rule: names the mirror, the key and the rule.
    #[error(transparent)]
    Mirror(#[from] crate::mirror::MirrorError),
}

fn invalid(var: &'static str, value: &str, rule: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        var,
        value: value.to_owned(),
        rule: rule.into(),
    }
}

/// Values from the command line, the highest layer.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    pub config_file: Option<PathBuf>,
    pub database_url: Option<String>,
    pub log_level: Option<String>,
    pub log_format: Option<String>,
}

/// Every setting, by group; each group's file says what it holds.
#[derive(Clone, Debug)]
pub struct Settings {
    pub database: DatabaseSettings,
    pub csv: CsvSettings,
    pub triggers: TriggerSettings,
    pub guard: GuardSettings,
    pub retention: Retention,
    pub service: ServiceSettings,
    pub logging: LoggingSettings,
    /// Every mirror (docs/mirrors.md): the built-in `followers` first (whenever
    /// `CSV_FILE` is set), then the config file's `[[mirror]]` tables in order.
    pub mirrors: Vec<crate::mirror::MirrorSpec>,
}

impl Settings {
    /// Gathers every source (`sources.rs`), then reads and validates every
    /// variable; the config file's mirrors follow the built-in one.
    pub fn load(overrides: &Overrides) -> Result<Self, ConfigError> {
        let (raw, libpq, configured) = sources::gather(overrides)?;
        let mut settings = Self::from_raw(&raw)?;
        settings.database.url = settings.database.url.with_libpq_defaults(&libpq);
        settings.mirrors.extend(configured);
        Ok(settings)
    }

    /// Each group reads and validates its own variables; the CSV group's worker
    /// count is bounded by the database pool.
    fn from_raw(raw: &Raw) -> Result<Self, ConfigError> {
        let database = DatabaseSettings::from_raw(raw)?;
        let csv = CsvSettings::from_raw(raw, &database)?;
        Ok(Self {
            mirrors: mirrors::builtin(&csv),
            csv,
            triggers: TriggerSettings::from_raw(raw)?,
            guard: GuardSettings::from_raw(raw)?,
            retention: Retention::from_raw(raw)?,
            service: ServiceSettings::from_raw(raw)?,
            logging: LoggingSettings::from_raw(raw)?,
            database,
        })
    }

    /// The CSV file to mirror (`--file` wins over `CSV_FILE`), confined to `TABLES_DIR`.
    pub fn resolve_csv_file(&self, flag: Option<&Path>) -> Result<PathBuf, ConfigError> {
        let (var, file) = match flag {
            Some(f) => ("--file", f.to_path_buf()),
            None => (
                var::CSV_FILE,
                self.csv
                    .file
                    .clone()
                    .ok_or(ConfigError::Missing { var: var::CSV_FILE })?,
            ),
        };
        Ok(confine(var, &self.csv.tables_dir, &file)?)
    }
}

#[cfg(test)]
mod tests;
