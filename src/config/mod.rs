//! Settings: every variable of docs/configuration.md#variables, layered (defaults < TOML file < `.env` <
//! process environment < command-line flags), parsed into typed values and
//! validated once at start-up. An invalid value becomes a `ConfigError` that names
//! the variable, the value and the rule; `main` turns it into exit code 2.

use robfig_cron::go_duration::{format_go_duration, parse_go_duration};
use robfig_cron::Schedule;
use secrecy::{ExposeSecret, SecretString};
use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

mod confine;
mod database_url;
mod sources;

pub use confine::{confine, file_identity, not_a_regular_file, ConfineError};
pub use database_url::DatabaseUrl;
use database_url::*;
pub use sources::early_log_format;
use sources::*;

/// Declares every variable the agent reads, once: the list `VARIABLES`, a
/// constant per name in `var` (so a misspelt name does not compile), and the
/// TOML file's serde struct whose keys are the same names in lower case.
macro_rules! variables {
    ($($name:ident),* $(,)?) => {
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
    };
}

variables!(
    DATABASE_URL,
    DSN,
    DEFAULT_DATABASE_URL,
    CSV_FILE,
    TABLES_DIR,
    CRON_SCHEDULE,
    BATCH_SIZE,
    WORKER_POOL_GOROUTINES,
    WORKER_POOL_SIZE,
    DB_MIN_CONNS,
    DB_MAX_CONNS,
    RUN_ON_START,
    WATCH,
    WATCH_DEBOUNCE,
    WATCH_POLL,
    MAX_DELETE_RATIO,
    MAX_UPDATE_RATIO,
    MAX_REJECTS,
    RUN_LOCK_WAIT,
    RETRY_MAX_ATTEMPTS,
    RETRY_BACKOFF,
    CSV_DELIMITER,
    CSV_HEADER,
    CSV_ENCODING,
    READY_MARKER,
    READY_TIMEOUT,
    HTTP_ADDR,
    LOG_FORMAT,
    LOG_LEVEL,
    SHUTDOWN_TIMEOUT,
    ALLOW_FILE_CHANGE,
    HISTORY_KEEP_DAYS,
    HISTORY_KEEP_RUNS,
    JOURNAL_KEEP_RUNS,
    JOURNAL_KEEP_DAYS,
    VERIFY_EVERY,
    DB_CONNECT_TIMEOUT,
    DB_TIMEOUT,
    LOCK_WAIT_TIMEOUT,
    FIRST_SYNC_KEY_REBUILD,
);

pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// The libpq variables (as `psql` reads them) that replace parts of the built-in
/// default connection when neither `DATABASE_URL` nor `DSN` is set. The others
/// libpq users set (`PGPASSWORD`, `PGSSLMODE`, `PGSSLROOTCERT`, `PGSSLCERT`,
/// `PGSSLKEY`, `PGAPPNAME`, `PGOPTIONS`, `PGPASSFILE`) are read by the driver
/// itself for whatever the connection string leaves out, whichever string it is.
pub const LIBPQ_TARGET_VARIABLES: &[&str] =
    &["PGHOST", "PGHOSTADDR", "PGPORT", "PGUSER", "PGDATABASE"];

/// Every libpq variable the agent or its driver reads (docs/configuration.md#libpq-variables).
pub const LIBPQ_VARIABLES: &[&str] = &[
    "PGHOST",
    "PGHOSTADDR",
    "PGPORT",
    "PGUSER",
    "PGDATABASE",
    "PGPASSWORD",
    "PGPASSFILE",
    "PGSSLMODE",
    "PGSSLROOTCERT",
    "PGSSLCERT",
    "PGSSLKEY",
    "PGAPPNAME",
    "PGOPTIONS",
];
/// Rows per batch: the best median of `bench/load.sh` (docs/performance.md#batch-size-benchloadsh).
pub const DEFAULT_BATCH_SIZE: usize = 10_000;
/// COPY workers: 4 staged 1M rows fastest on 2 cores, within 64 MiB; 16
/// oversubscribed them and took 70 MiB (docs/performance.md#defaults).
pub const DEFAULT_WORKERS: usize = 4;
/// The run history's bound (docs/sync.md#run-history): runs older than this many days,
/// or beyond this many newest runs, are pruned.
pub const DEFAULT_HISTORY_KEEP_DAYS: u32 = 90;
pub const DEFAULT_HISTORY_KEEP_RUNS: u64 = 10_000;
/// Larger batches only cost memory (the channel holds up to 3 per worker).
pub const MAX_BATCH_SIZE: u64 = 1_000_000;
/// The journal keeps the changes of this many synced runs (docs/operations.md#journal-retention).
pub const DEFAULT_JOURNAL_KEEP_RUNS: u64 = 100;
/// ... and of no run older than this many days.
pub const DEFAULT_JOURNAL_KEEP_DAYS: u64 = 30;
/// Without the write counter on `followers`, an unchanged file is compared with
/// the table at most this long after the last comparison
/// (docs/sync.md#edits-outside-the-agent).
pub const DEFAULT_VERIFY_EVERY: Duration = Duration::from_secs(3600);
/// How long opening a connection may take (docs/guarantees.md#database-faults).
pub const DEFAULT_DB_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a run waits for the database to answer a ping (docs/guarantees.md#database-faults).
pub const DEFAULT_DB_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a merge waits for another writer of `followers`
/// (docs/sync.md#readers-and-writers-during-a-run).
pub const DEFAULT_LOCK_WAIT_TIMEOUT: Duration = Duration::from_secs(30);

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
}

fn invalid(var: &'static str, value: &str, rule: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        var,
        value: value.to_owned(),
        rule: rule.into(),
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeaderMode {
    Auto,
    Present,
    Absent,
}

/// The settings that decide how bytes become rows; part of the content hash.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CsvFormat {
    pub delimiter: u8,
    pub header: HeaderMode,
    /// `CSV_ENCODING`; `None` is `auto` (UTF-8, or UTF-16 by its byte order mark).
    pub encoding: Option<&'static encoding_rs::Encoding>,
}

impl Default for CsvFormat {
    fn default() -> Self {
        Self {
            delimiter: b',',
            header: HeaderMode::Auto,
            encoding: None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// Values from the command line, the highest layer.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    pub config_file: Option<PathBuf>,
    pub database_url: Option<String>,
    pub log_level: Option<String>,
    pub log_format: Option<String>,
}

#[derive(Clone, Debug)]
pub struct Settings {
    pub database_url: DatabaseUrl,
    pub csv_file: Option<PathBuf>,
    pub tables_dir: PathBuf,
    pub cron_schedule: Schedule,
    pub batch_size: usize,
    pub workers: usize,
    pub db_min_conns: u32,
    pub db_max_conns: u32,
    pub run_on_start: bool,
    pub watch: bool,
    pub watch_debounce: Duration,
    pub watch_poll: bool,
    pub max_delete_ratio: f64,
    /// The rename guard (docs/sync.md#refusals-and-approvals): 1.0 disables.
    pub max_update_ratio: f64,
    pub max_rejects: u64,
    /// How long an approved `sync` waits for the run lock held by another run.
    pub run_lock_wait: Duration,
    /// `serve`'s retries of a run that failed for a transient reason.
    pub retry: RetryPolicy,
    pub csv: CsvFormat,
    /// `READY_MARKER`: a suffix; `CSV_FILE` + it must exist, and be no older than
    /// `CSV_FILE`, before any run reads the file.
    pub ready_marker: Option<String>,
    /// How long a run started by hand waits for the ready marker.
    pub ready_timeout: Duration,
    pub http_addr: Option<SocketAddr>,
    pub log_format: LogFormat,
    pub log_level: String,
    pub shutdown_timeout: Duration,
    /// Sync from another file than the last successful sync (docs/sync.md#one-file-per-table).
    pub allow_file_change: bool,
    pub history: HistoryBound,
    pub journal: JournalRetention,
    /// `VERIFY_EVERY`: where `followers` has no write counter, how long a run may
    /// trust that the table is what the last sync left (docs/sync.md#edits-outside-the-agent).
    pub verify_every: Duration,
    /// `DB_CONNECT_TIMEOUT`: how long opening a database connection may take
    /// (docs/guarantees.md#database-faults), for a server or network that hangs without refusing.
    pub db_connect_timeout: Duration,
    /// `DB_TIMEOUT`: a run fails when the database does not answer a ping on the
    /// run lock's session within it (docs/guarantees.md#database-faults).
    pub db_timeout: Duration,
    /// How long a merge or revert waits for another writer of `followers` (or of
    /// staging) to commit before it fails naming it
    /// (docs/sync.md#readers-and-writers-during-a-run).
    pub lock_wait_timeout: Duration,
    /// Whether the first sync into an empty, provably plain table may take an
    /// exclusive lock to rebuild the primary key after its insert.
    pub first_sync_key_rebuild: bool,
}

/// Bounded exponential back-off of `serve`'s retries after a transient failure
/// (docs/sync.md#refusals-and-approvals): `max_attempts` retries (0: none), the
/// first after `backoff`, each next one after twice the wait before it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub backoff: Duration,
}

impl RetryPolicy {
    /// No single wait is longer than this, whatever the attempt.
    pub const MAX_DELAY: Duration = Duration::from_secs(3600);

    /// The wait before retry `attempt` (1-based).
    pub fn delay(&self, attempt: u32) -> Duration {
        let factor = 1u32 << attempt.saturating_sub(1).min(20);
        self.backoff.saturating_mul(factor).min(Self::MAX_DELAY)
    }
}

/// How much run history to keep; `None` disables that bound.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HistoryBound {
    pub keep_days: Option<u32>,
    pub keep_runs: Option<u64>,
}

/// How long the journal keeps what a run changed (docs/operations.md#journal-retention): the newest `keep_runs` runs, none older than `keep_days`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct JournalRetention {
    /// 0 disables the journal (and so `revert`).
    pub keep_runs: u64,
    pub keep_days: u64,
}

impl JournalRetention {
    pub fn enabled(&self) -> bool {
        self.keep_runs > 0
    }
}

fn parse_bool(var: &'static str, raw: &str) -> Result<bool, ConfigError> {
    match raw.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err(invalid(
            var,
            raw,
            "expected true or false (also 1/0, yes/no, on/off)",
        )),
    }
}

fn parse_int<T>(var: &'static str, raw: &str, min: u64) -> Result<T, ConfigError>
where
    T: TryFrom<u64>,
{
    raw.trim()
        .parse::<u64>()
        .ok()
        .filter(|n| *n >= min)
        .and_then(|n| T::try_from(n).ok())
        .ok_or_else(|| invalid(var, raw, format!("expected a whole number ≥ {min}")))
}

/// A history bound: a whole number, `0` for no bound.
fn history_bound<T>(raw: &Raw, var: &'static str, default: T) -> Result<Option<T>, ConfigError>
where
    T: TryFrom<u64> + PartialEq + Default,
{
    let n = raw
        .get(var)
        .map(|v| parse_int(var, v, 0))
        .transpose()?
        .unwrap_or(default);
    Ok((n != T::default()).then_some(n))
}

fn parse_int_in(var: &'static str, raw: &str, min: u64, max: u64) -> Result<usize, ConfigError> {
    raw.trim()
        .parse::<u64>()
        .ok()
        .filter(|n| (min..=max).contains(n))
        .and_then(|n| usize::try_from(n).ok())
        .ok_or_else(|| {
            invalid(
                var,
                raw,
                format!("expected a whole number ≥ {min} and ≤ {max}"),
            )
        })
}

fn parse_duration(var: &'static str, raw: &str) -> Result<Duration, ConfigError> {
    parse_go_duration(raw.trim()).map_err(|e| {
        invalid(
            var,
            raw,
            format!("expected a Go duration such as 2s, 500ms or 1m30s ({e})"),
        )
    })
}

/// `CSV_DELIMITER`: one ASCII character; a tab also as `\t` or `tab` (any
/// case), with or without surrounding quotes or spaces. Read without the usual
/// trimming, since a tab is whitespace; empty (or only spaces) means the default.
fn parse_delimiter(raw: &str) -> Result<u8, ConfigError> {
    let unquoted = |v: &str| {
        ['"', '\'']
            .iter()
            .find_map(|q| v.strip_prefix(*q).and_then(|v| v.strip_suffix(*q)))
            .map(str::to_owned)
            .unwrap_or_else(|| v.to_owned())
    };
    let spaces = |v: &str| v.trim_matches(' ').to_owned();
    let inner = unquoted(&spaces(raw));
    if inner == " " {
        return Ok(b' ');
    }
    let value = spaces(&inner);
    if value.is_empty() {
        return Ok(b',');
    }
    let tab = value.eq_ignore_ascii_case("tab") || value == "\\t" || value.trim().is_empty();
    match value.as_bytes() {
        _ if tab => Ok(b'\t'),
        [b] if b.is_ascii() && !matches!(b, b'"' | b'\n' | b'\r') => Ok(*b),
        _ => Err(invalid(
            "CSV_DELIMITER",
            raw,
            "expected one ASCII character other than a quote or line break (\\t or tab for a tab)",
        )),
    }
}

impl Settings {
    /// Gathers every source (`sources.rs`), then reads and validates every variable.
    pub fn load(overrides: &Overrides) -> Result<Self, ConfigError> {
        let (raw, libpq) = sources::gather(overrides)?;
        let mut settings = Self::from_raw(&raw)?;
        settings.database_url = settings.database_url.with_libpq_defaults(&libpq);
        Ok(settings)
    }

    fn from_raw(raw: &Raw) -> Result<Self, ConfigError> {
        let database_url = match raw.aliased(var::DATABASE_URL, var::DSN)? {
            Some((var, value)) => DatabaseUrl::parse(var, value)?,
            None => match raw.get(var::DEFAULT_DATABASE_URL) {
                // docker-compose.yml points DEFAULT_DATABASE_URL at its db service; libpq
                // variables, when set, are the user's own choice and win over it.
                Some(value) if LIBPQ_TARGET_VARIABLES.iter().all(|v| raw.get(v).is_none()) => {
                    DatabaseUrl::parse(var::DEFAULT_DATABASE_URL, value)?
                }
                _ => default_database_url(raw)?,
            },
        };
        let tables_dir = PathBuf::from(raw.get(var::TABLES_DIR).unwrap_or("./tables"));
        let csv_file = raw.get(var::CSV_FILE).map(PathBuf::from);
        let cron_expression = raw
            .get(var::CRON_SCHEDULE)
            .unwrap_or("@every 24h")
            .trim()
            .to_owned();
        let cron_schedule = Schedule::parse(&cron_expression).map_err(|e| {
            invalid(
                var::CRON_SCHEDULE,
                &cron_expression,
                format!("{e} (robfig/cron v3 standard syntax)"),
            )
        })?;
        let batch_size = raw
            .get(var::BATCH_SIZE)
            .map(|v| parse_int_in(var::BATCH_SIZE, v, 1, MAX_BATCH_SIZE))
            .transpose()?
            .unwrap_or(DEFAULT_BATCH_SIZE);
        let db_min_conns: u32 = raw
            .get(var::DB_MIN_CONNS)
            .map(|v| parse_int(var::DB_MIN_CONNS, v, 0))
            .transpose()?
            .unwrap_or(0);
        let db_max_conns: u32 = raw
            .get(var::DB_MAX_CONNS)
            .map(|v| parse_int(var::DB_MAX_CONNS, v, 1))
            .transpose()?
            .unwrap_or(30);
        if db_max_conns < db_min_conns {
            return Err(invalid(
                var::DB_MAX_CONNS,
                &db_max_conns.to_string(),
                format!("must be ≥ DB_MIN_CONNS ({db_min_conns})"),
            ));
        }
        let workers = match raw.aliased(var::WORKER_POOL_GOROUTINES, var::WORKER_POOL_SIZE)? {
            Some((var, value)) => {
                let n: usize = parse_int(var, value, 1)?;
                if n > db_max_conns as usize {
                    return Err(invalid(
                        var,
                        value,
                        format!("must be ≤ DB_MAX_CONNS ({db_max_conns})"),
                    ));
                }
                n
            }
            None => DEFAULT_WORKERS.min(db_max_conns as usize),
        };
        let bool_or = |var: &'static str, default: bool| {
            raw.get(var)
                .map(|v| parse_bool(var, v))
                .transpose()
                .map(|b| b.unwrap_or(default))
        };
        let watch_debounce = raw
            .get(var::WATCH_DEBOUNCE)
            .map(|v| parse_duration(var::WATCH_DEBOUNCE, v))
            .transpose()?
            .unwrap_or(Duration::from_secs(2));
        let shutdown_timeout = raw
            .get(var::SHUTDOWN_TIMEOUT)
            .map(|v| parse_duration(var::SHUTDOWN_TIMEOUT, v))
            .transpose()?
            .unwrap_or(Duration::from_secs(30));
        let verify_every = raw
            .get(var::VERIFY_EVERY)
            .map(|v| parse_duration(var::VERIFY_EVERY, v))
            .transpose()?
            .unwrap_or(DEFAULT_VERIFY_EVERY);
        let db_connect_timeout = raw
            .get(var::DB_CONNECT_TIMEOUT)
            .map(|v| parse_duration(var::DB_CONNECT_TIMEOUT, v))
            .transpose()?
            .unwrap_or(DEFAULT_DB_CONNECT_TIMEOUT);
        if db_connect_timeout.is_zero() {
            return Err(invalid(
                var::DB_CONNECT_TIMEOUT,
                "0s",
                "expected a duration above zero, such as 10s",
            ));
        }
        let db_timeout = raw
            .get(var::DB_TIMEOUT)
            .map(|v| parse_duration(var::DB_TIMEOUT, v))
            .transpose()?
            .unwrap_or(DEFAULT_DB_TIMEOUT);
        if db_timeout < Duration::from_millis(100) {
            return Err(invalid(
                var::DB_TIMEOUT,
                &format_go_duration(db_timeout).to_string(),
                "expected at least 100ms, such as 30s",
            ));
        }
        let lock_wait_timeout = raw
            .get(var::LOCK_WAIT_TIMEOUT)
            .map(|v| parse_duration(var::LOCK_WAIT_TIMEOUT, v))
            .transpose()?
            .unwrap_or(DEFAULT_LOCK_WAIT_TIMEOUT);
        if lock_wait_timeout < Duration::from_millis(1) {
            return Err(invalid(
                var::LOCK_WAIT_TIMEOUT,
                raw.get(var::LOCK_WAIT_TIMEOUT).unwrap_or_default(),
                "must be at least 1ms (a wait without bound is not offered)",
            ));
        }
        let ratio = |var: &'static str, what: &str| -> Result<f64, ConfigError> {
            match raw.get(var) {
                None => Ok(0.5),
                Some(v) => v
                    .trim()
                    .parse::<f64>()
                    .ok()
                    .filter(|r| (0.0..=1.0).contains(r))
                    .ok_or_else(|| {
                        invalid(
                            var,
                            v,
                            format!(
                                "expected a number from 0.0 to 1.0 (1.0 disables the {what} guard)"
                            ),
                        )
                    }),
            }
        };
        let max_delete_ratio = ratio(var::MAX_DELETE_RATIO, "delete")?;
        let max_update_ratio = ratio(var::MAX_UPDATE_RATIO, "rename")?;
        let run_lock_wait = raw
            .get(var::RUN_LOCK_WAIT)
            .map(|v| parse_duration(var::RUN_LOCK_WAIT, v))
            .transpose()?
            .unwrap_or(Duration::from_secs(300));
        let retry = RetryPolicy {
            max_attempts: raw
                .get(var::RETRY_MAX_ATTEMPTS)
                .map(|v| parse_int(var::RETRY_MAX_ATTEMPTS, v, 0))
                .transpose()?
                .unwrap_or(5),
            backoff: raw
                .get(var::RETRY_BACKOFF)
                .map(|v| parse_duration(var::RETRY_BACKOFF, v))
                .transpose()?
                .unwrap_or(Duration::from_secs(5)),
        };
        let max_rejects = raw
            .get(var::MAX_REJECTS)
            .map(|v| parse_int(var::MAX_REJECTS, v, 0))
            .transpose()?
            .unwrap_or(0);
        let journal = JournalRetention {
            keep_runs: raw
                .get(var::JOURNAL_KEEP_RUNS)
                .map(|v| parse_int(var::JOURNAL_KEEP_RUNS, v, 0))
                .transpose()?
                .unwrap_or(DEFAULT_JOURNAL_KEEP_RUNS),
            keep_days: raw
                .get(var::JOURNAL_KEEP_DAYS)
                .map(|v| parse_int(var::JOURNAL_KEEP_DAYS, v, 1))
                .transpose()?
                .unwrap_or(DEFAULT_JOURNAL_KEEP_DAYS),
        };
        let delimiter = match raw.untrimmed(var::CSV_DELIMITER) {
            None => b',',
            Some(v) => parse_delimiter(v)?,
        };
        let header = match raw
            .get(var::CSV_HEADER)
            .map(|v| v.trim().to_ascii_lowercase())
        {
            None => HeaderMode::Auto,
            Some(v) if v == "auto" => HeaderMode::Auto,
            Some(v) if v == "true" => HeaderMode::Present,
            Some(v) if v == "false" => HeaderMode::Absent,
            Some(v) => return Err(invalid(var::CSV_HEADER, &v, "expected auto, true or false")),
        };
        let encoding = match raw.get(var::CSV_ENCODING).map(str::trim) {
            None => None,
            Some(v) if v.eq_ignore_ascii_case("auto") => None,
            Some(v) => Some(
                encoding_rs::Encoding::for_label(v.as_bytes())
                    .filter(|e| *e != encoding_rs::REPLACEMENT)
                    .ok_or_else(|| {
                        invalid(
                            var::CSV_ENCODING,
                            v,
                            "expected auto, utf-8, utf-16 (LE), utf-16be, windows-1252, latin1 or another WHATWG encoding label",
                        )
                    })?,
            ),
        };
        let ready_marker = match raw.get(var::READY_MARKER).map(str::trim) {
            None => None,
            Some(v) if v.contains(['/', '\\']) || v == "." || v == ".." => return Err(invalid(
                var::READY_MARKER,
                v,
                "expected a suffix added to CSV_FILE's name, such as .done (no path separators)",
            )),
            Some(v) => Some(v.to_owned()),
        };
        let ready_timeout = raw
            .get(var::READY_TIMEOUT)
            .map(|v| parse_duration(var::READY_TIMEOUT, v))
            .transpose()?
            .unwrap_or(Duration::from_secs(60));
        let http_addr = match raw.get(var::HTTP_ADDR).map(str::trim) {
            None => Some(SocketAddr::from(([127, 0, 0, 1], 9188))),
            Some(v) if v.eq_ignore_ascii_case("off") => None,
            Some(v) => Some(v.parse().map_err(|_| {
                invalid(
                    var::HTTP_ADDR,
                    v,
                    "expected IP:port such as 0.0.0.0:9188 or 127.0.0.1:9188 (an IP address, not a host name), or off",
                )
            })?),
        };
        let log_format = match raw
            .get(var::LOG_FORMAT)
            .map(|v| v.trim().to_ascii_lowercase())
        {
            None => LogFormat::Text,
            Some(v) if v == "text" => LogFormat::Text,
            Some(v) if v == "json" => LogFormat::Json,
            Some(v) => return Err(invalid(var::LOG_FORMAT, &v, "expected text or json")),
        };
        let log_level = raw
            .get(var::LOG_LEVEL)
            .unwrap_or("info")
            .trim()
            .to_ascii_lowercase();
        if !matches!(
            log_level.as_str(),
            "trace" | "debug" | "info" | "warn" | "error"
        ) {
            return Err(invalid(
                var::LOG_LEVEL,
                &log_level,
                "expected trace, debug, info, warn or error",
            ));
        }
        Ok(Self {
            database_url,
            csv_file,
            tables_dir,
            cron_schedule,
            batch_size,
            workers,
            db_min_conns,
            db_max_conns,
            run_on_start: bool_or(var::RUN_ON_START, true)?,
            watch: bool_or(var::WATCH, true)?,
            watch_debounce,
            watch_poll: bool_or(var::WATCH_POLL, false)?,
            max_delete_ratio,
            max_update_ratio,
            max_rejects,
            run_lock_wait,
            retry,
            csv: CsvFormat {
                delimiter,
                header,
                encoding,
            },
            ready_marker,
            ready_timeout,
            http_addr,
            log_format,
            log_level,
            shutdown_timeout,
            allow_file_change: bool_or(var::ALLOW_FILE_CHANGE, false)?,
            history: HistoryBound {
                keep_days: history_bound(raw, var::HISTORY_KEEP_DAYS, DEFAULT_HISTORY_KEEP_DAYS)?,
                keep_runs: history_bound(raw, var::HISTORY_KEEP_RUNS, DEFAULT_HISTORY_KEEP_RUNS)?,
            },
            journal,
            verify_every,
            db_connect_timeout,
            db_timeout,
            lock_wait_timeout,
            first_sync_key_rebuild: bool_or(var::FIRST_SYNC_KEY_REBUILD, true)?,
        })
    }

    /// The CSV file to mirror (`--file` wins over `CSV_FILE`), confined to `TABLES_DIR`.
    pub fn resolve_csv_file(&self, flag: Option<&Path>) -> Result<PathBuf, ConfigError> {
        let (var, file) = match flag {
            Some(f) => ("--file", f.to_path_buf()),
            None => (
                var::CSV_FILE,
                self.csv_file
                    .clone()
                    .ok_or(ConfigError::Missing { var: var::CSV_FILE })?,
            ),
        };
        Ok(confine(var, &self.tables_dir, &file)?)
    }

    /// One line per variable with its effective value (secrets redacted), for logs.
    pub fn describe(&self) -> String {
        let duration = |d: Duration| format_go_duration(d).to_string();
        [
            (var::DATABASE_URL, self.database_url.to_string()),
            (var::TABLES_DIR, self.tables_dir.display().to_string()),
            (
                var::CSV_FILE,
                self.csv_file
                    .as_deref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default(),
            ),
            (
                var::CRON_SCHEDULE,
                format!("{:?}", self.cron_schedule.to_string()),
            ),
            (var::BATCH_SIZE, self.batch_size.to_string()),
            (var::WORKER_POOL_GOROUTINES, self.workers.to_string()),
            (var::DB_MIN_CONNS, self.db_min_conns.to_string()),
            (var::DB_MAX_CONNS, self.db_max_conns.to_string()),
            (var::RUN_ON_START, self.run_on_start.to_string()),
            (var::WATCH, self.watch.to_string()),
            (var::WATCH_DEBOUNCE, duration(self.watch_debounce)),
            (var::WATCH_POLL, self.watch_poll.to_string()),
            (var::MAX_DELETE_RATIO, self.max_delete_ratio.to_string()),
            (var::MAX_UPDATE_RATIO, self.max_update_ratio.to_string()),
            (var::MAX_REJECTS, self.max_rejects.to_string()),
            (var::RUN_LOCK_WAIT, duration(self.run_lock_wait)),
            (var::RETRY_MAX_ATTEMPTS, self.retry.max_attempts.to_string()),
            (var::RETRY_BACKOFF, duration(self.retry.backoff)),
            (
                var::CSV_ENCODING,
                self.csv.encoding.map_or("auto", |e| e.name()).to_owned(),
            ),
            (
                var::READY_MARKER,
                self.ready_marker.clone().unwrap_or_default(),
            ),
            (var::READY_TIMEOUT, duration(self.ready_timeout)),
            (
                var::HTTP_ADDR,
                self.http_addr
                    .map(|a| a.to_string())
                    .unwrap_or_else(|| "off".into()),
            ),
            (var::SHUTDOWN_TIMEOUT, duration(self.shutdown_timeout)),
            (var::ALLOW_FILE_CHANGE, self.allow_file_change.to_string()),
            (var::JOURNAL_KEEP_RUNS, self.journal.keep_runs.to_string()),
            (var::JOURNAL_KEEP_DAYS, self.journal.keep_days.to_string()),
            (var::VERIFY_EVERY, duration(self.verify_every)),
            (var::DB_CONNECT_TIMEOUT, duration(self.db_connect_timeout)),
            (var::DB_TIMEOUT, duration(self.db_timeout)),
            (var::LOCK_WAIT_TIMEOUT, duration(self.lock_wait_timeout)),
            (
                var::FIRST_SYNC_KEY_REBUILD,
                self.first_sync_key_rebuild.to_string(),
            ),
        ]
        .map(|(name, value)| format!("{name}={value}"))
        .join(" ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(pairs: &[(&str, &str)]) -> Raw {
        Raw(pairs
            .iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v.to_string()))
            .collect())
    }

    fn err_of(pairs: &[(&str, &str)]) -> String {
        Settings::from_raw(&raw(pairs)).unwrap_err().to_string()
    }

    #[test]
    fn defaults_match_the_spec() {
        let s = Settings::from_raw(&raw(&[])).unwrap();
        assert_eq!(s.database_url.expose(), DEFAULT_DATABASE_URL);
        assert_eq!(s.tables_dir, PathBuf::from("./tables"));
        assert_eq!(s.cron_schedule.to_string(), "@every 24h");
        assert_eq!(s.workers, 4);
        assert_eq!((s.db_min_conns, s.db_max_conns), (0, 30));
        assert!(s.run_on_start && s.watch && !s.watch_poll);
        assert_eq!(s.watch_debounce, Duration::from_secs(2));
        assert_eq!(s.max_delete_ratio, 0.5);
        assert_eq!(s.max_update_ratio, 0.5);
        assert_eq!(s.run_lock_wait, Duration::from_secs(300));
        assert_eq!(
            s.retry,
            RetryPolicy {
                max_attempts: 5,
                backoff: Duration::from_secs(5)
            }
        );
        assert_eq!(s.max_rejects, 0);
        assert_eq!(s.csv, CsvFormat::default());
        assert_eq!(s.http_addr, Some("127.0.0.1:9188".parse().unwrap()));
        assert_eq!(s.shutdown_timeout, Duration::from_secs(30));
        assert!(!s.allow_file_change);
        assert_eq!(
            s.journal,
            JournalRetention {
                keep_runs: 100,
                keep_days: 30
            }
        );
    }

    #[test]
    fn dotenv_values_with_spaces_need_no_quotes() {
        assert_eq!(
            compatible_line("CRON_SCHEDULE=0 */6 * * *"),
            "CRON_SCHEDULE='0 */6 * * *'"
        );
        assert_eq!(
            compatible_line("CRON_SCHEDULE=@every 1h # nightly"),
            "CRON_SCHEDULE='@every 1h'"
        );
        assert_eq!(
            compatible_line("CRON_SCHEDULE=\"@every 1h\""),
            "CRON_SCHEDULE=\"@every 1h\""
        );
        assert_eq!(compatible_line("# A=b c"), "# A=b c");
        assert_eq!(compatible_line("BATCH_SIZE=5000"), "BATCH_SIZE=5000");
    }

    #[test]
    fn dotenv_tabs_and_backslashes_read_as_the_old_loader_did() {
        assert_eq!(compatible_line("CSV_DELIMITER=\\t"), "CSV_DELIMITER='\\t'");
        assert_eq!(
            compatible_line("CSV_DELIMITER=\"\\t\""),
            "CSV_DELIMITER=\"\t\""
        );
        assert_eq!(compatible_line("CSV_DELIMITER=\t"), "CSV_DELIMITER='\t'");
        assert_eq!(
            compatible_line("CSV_DELIMITER='\\t'"),
            "CSV_DELIMITER='\\t'"
        );
        assert_eq!(compatible_line("A=\"x\\\\t\""), "A=\"x\\\\t\"");
        assert_eq!(compatible_line("A=C:\\dir"), "A='C:\\dir'");
    }

    #[test]
    fn csv_delimiter_accepts_every_tab_form() {
        for v in [
            "\\t", "tab", "TAB", "\t", "\"\\t\"", "'\\t'", "\"\t\"", " \\t ", "'tab'",
        ] {
            assert_eq!(parse_delimiter(v).unwrap(), b'\t', "{v:?}");
        }
        assert_eq!(parse_delimiter(";").unwrap(), b';');
        assert_eq!(parse_delimiter("\";\"").unwrap(), b';');
        assert_eq!(parse_delimiter("' '").unwrap(), b' ');
        assert_eq!(parse_delimiter("").unwrap(), b',');
        for v in ["\"", "ab", "é", "\\n"] {
            assert!(parse_delimiter(v).is_err(), "{v:?}");
        }
    }

    #[test]
    fn toml_syntax_errors_name_line_and_key_not_value() {
        let text = "batch_size = 1\ndatabase_url = \"postgres://u:s3cr3t@h/x\n";
        let e = toml::from_str::<toml::Table>(text).unwrap_err();
        let msg = toml_error(text, &e);
        assert!(
            msg.contains("line 2") && msg.contains("database_url") && !msg.contains("s3cr3t"),
            "{msg}"
        );
    }

    #[test]
    fn workers_default_is_capped_by_max_conns_and_explicit_excess_is_refused() {
        let s = Settings::from_raw(&raw(&[("DB_MAX_CONNS", "2")])).unwrap();
        assert_eq!(s.workers, 2);
        let e = err_of(&[("DB_MAX_CONNS", "4"), ("WORKER_POOL_SIZE", "5")]);
        assert!(
            e.contains("WORKER_POOL_SIZE") && e.contains("DB_MAX_CONNS"),
            "{e}"
        );
    }

    #[test]
    fn a_socket_directory_host_is_accepted_in_keyword_and_url_form() {
        let url = DatabaseUrl::parse(
            "DSN",
            "host=/var/run/postgresql user=app password='p w' dbname=app port=5433",
        )
        .unwrap();
        assert_eq!(
            url.expose(),
            "postgres:///app?host=%2Fvar%2Frun%2Fpostgresql&password=p+w&port=5433&user=app"
        );
        assert!(!url.to_string().contains("p+w"), "{url}");
        let url =
            DatabaseUrl::parse("DATABASE_URL", "postgres:///app?host=/var/run/postgresql").unwrap();
        assert_eq!(url.expose(), "postgres:///app?host=/var/run/postgresql");
    }

    #[test]
    fn libpq_variables_replace_the_built_in_default_only() {
        let url = |pairs: &[(&str, &str)]| {
            Settings::from_raw(&raw(pairs))
                .unwrap()
                .database_url
                .expose()
                .to_owned()
        };
        assert_eq!(
            url(&[("PGHOST", "db"), ("PGPORT", "6543"), ("PGDATABASE", "f")]),
            "postgres://postgres@db:6543/f"
        );
        assert_eq!(
            url(&[("PGHOST", "/var/run/postgresql"), ("PGUSER", "app")]),
            "postgres:///postgres?host=%2Fvar%2Frun%2Fpostgresql&port=5432&user=app"
        );
        assert_eq!(
            url(&[("PGHOSTADDR", "10.0.0.5")]),
            "postgres://postgres@10.0.0.5:5432/postgres"
        );
        // DATABASE_URL or DSN, when set, win whole.
        assert_eq!(
            url(&[("DSN", "postgres://u@x/y"), ("PGHOST", "db")]),
            "postgres://u@x/y"
        );
        assert_eq!(url(&[("PGPASSWORD", "s3cret")]), DEFAULT_DATABASE_URL);
        let e = err_of(&[("PGPORT", "54x")]);
        assert!(e.contains("PGPORT") && e.contains("54x"), "{e}");
        let e = err_of(&[("PGHOST", "a,b")]);
        assert!(e.contains("PGHOST"), "{e}");
    }

    #[test]
    fn dsn_is_the_old_name_and_a_conflict_is_an_error() {
        let s = Settings::from_raw(&raw(&[("DSN", "postgres://u:pw@db/x")])).unwrap();
        assert_eq!(s.database_url.expose(), "postgres://u:pw@db/x");
        let e = err_of(&[
            ("DSN", "postgres://u:pw@db/x"),
            ("DATABASE_URL", "postgres://u:pw@db/y"),
        ]);
        assert!(e.contains("DSN") && e.contains("DATABASE_URL"), "{e}");
        assert!(!e.contains("pw"), "password leaked: {e}");
    }

    #[test]
    fn default_database_url_applies_only_when_neither_database_url_nor_dsn_is_set() {
        let bundled = ("DEFAULT_DATABASE_URL", "postgres://f:pw@db:5432/f");
        let s = Settings::from_raw(&raw(&[bundled])).unwrap();
        assert_eq!(s.database_url.expose(), "postgres://f:pw@db:5432/f");
        let s = Settings::from_raw(&raw(&[bundled, ("DSN", "postgres://o@pg/old")])).unwrap();
        assert_eq!(s.database_url.expose(), "postgres://o@pg/old");
        let s = Settings::from_raw(&raw(&[bundled, ("DATABASE_URL", "postgres://a@x/y")])).unwrap();
        assert_eq!(s.database_url.expose(), "postgres://a@x/y");
        let s = Settings::from_raw(&raw(&[("DEFAULT_DATABASE_URL", "")])).unwrap();
        assert_eq!(s.database_url.expose(), DEFAULT_DATABASE_URL);
        // libpq variables are the user's own choice: they win over the compose default.
        let s = Settings::from_raw(&raw(&[bundled, ("PGHOST", "own-db")])).unwrap();
        assert!(
            s.database_url.expose().contains("own-db"),
            "{}",
            s.database_url
        );
        let e = err_of(&[("DEFAULT_DATABASE_URL", "mysql://u:s3cret@db/x")]);
        assert!(
            e.contains("DEFAULT_DATABASE_URL") && !e.contains("s3cret"),
            "{e}"
        );
    }

    #[test]
    fn history_bounds_default_and_zero_disables() {
        let s = Settings::from_raw(&raw(&[])).unwrap();
        assert_eq!(
            s.history,
            HistoryBound {
                keep_days: Some(DEFAULT_HISTORY_KEEP_DAYS),
                keep_runs: Some(DEFAULT_HISTORY_KEEP_RUNS),
            }
        );
        let s = Settings::from_raw(&raw(&[
            ("HISTORY_KEEP_DAYS", "0"),
            ("HISTORY_KEEP_RUNS", "25"),
        ]))
        .unwrap();
        assert_eq!(s.history.keep_days, None);
        assert_eq!(s.history.keep_runs, Some(25));
        let e = err_of(&[("HISTORY_KEEP_RUNS", "-1")]);
        assert!(e.contains("HISTORY_KEEP_RUNS"), "{e}");
    }

    #[test]
    fn password_is_redacted_everywhere() {
        let url = DatabaseUrl::parse("DATABASE_URL", "postgres://app:s3cret@db:5432/app").unwrap();
        assert_eq!(url.to_string(), "postgres://app:***@db:5432/app");
        assert!(!format!("{url:?}").contains("s3cret"));
        let e = err_of(&[("DATABASE_URL", "mysql://app:s3cret@db/app")]);
        assert!(!e.contains("s3cret") && e.contains("DATABASE_URL"), "{e}");
        let url = DatabaseUrl::parse(
            "DATABASE_URL",
            "postgres://app@db/app?sslmode=disable&password=s3cret",
        )
        .unwrap();
        assert_eq!(
            url.to_string(),
            "postgres://app@db/app?sslmode=disable&password=***"
        );
        let e = err_of(&[
            ("DSN", "host=db password='my s3cret pw' dbname=a"),
            ("DATABASE_URL", "postgres://app@db/b"),
        ]);
        assert!(!e.contains("s3cret") && !e.contains(" pw"), "{e}");
        let e = err_of(&[("DATABASE_URL", "host=db password='unterminated s3cret")]);
        assert!(!e.contains("s3cret"), "{e}");
        let e = err_of(&[("DATABASE_URL", "postgres://app:2024#Summer!@127.0.0.1/db")]);
        assert!(!e.contains("Summer") && e.contains("percent-encode"), "{e}");
        let url =
            DatabaseUrl::parse("DATABASE_URL", "postgres://app@db/app?sslpassword=s3cret").unwrap();
        assert!(!url.to_string().contains("s3cret"));
    }

    #[test]
    fn an_unknown_connection_parameter_is_refused_without_its_value() {
        // A misspelt keyword: the driver would ignore it and log its value.
        for (var, dsn) in [
            ("DSN", "host=127.0.0.1 user=bob pasword=S3cretPw dbname=x"),
            (
                "DATABASE_URL",
                "postgres://bob@127.0.0.1/x?pasword=S3cretPw",
            ),
            (
                "DATABASE_URL",
                "postgres://bob@db/x?sslmode=disable&SSLMODE=S3cretPw",
            ),
            ("DSN", "host=db dbname=x target_session_attrs=S3cretPw"),
        ] {
            let e = err_of(&[(var, dsn)]);
            assert!(
                !e.contains("S3cretPw") && e.contains(var) && e.contains('`'),
                "{dsn}: {e}"
            );
        }
        let e = err_of(&[("DSN", "host=db user=bob pasword=S3cretPw dbname=x")]);
        assert!(
            e.contains("`pasword`") && e.contains("did you mean `password`"),
            "{e}"
        );
        // A harmless libpq keyword the driver lacks is accepted, dropped from what the
        // driver gets, and named for a warning; a secret one is never shown.
        let url = DatabaseUrl::parse(
            "DSN",
            "host=db user=bob dbname=x connect_timeout=10 sslpassword=S3cretPw sslmode=disable",
        )
        .unwrap();
        assert_eq!(url.ignored_keywords(), ["connect_timeout", "sslpassword"]);
        assert!(!url.expose().contains("connect_timeout") && !url.expose().contains("S3cretPw"));
        assert!(url.expose().contains("sslmode=disable"), "{}", url.expose());
        assert!(!url.to_string().contains("S3cretPw"), "{url}");
        assert!(url.to_string().contains("connect_timeout=10"), "{url}");
    }

    #[test]
    fn a_url_password_with_a_hash_that_breaks_the_port_gets_the_hint() {
        for dsn in [
            "postgres://app:pa#ss@db/app",
            "postgres://app:S3cr#etPw@db:5432/app",
            "postgres://app:x/S3cretPw@db/app",
        ] {
            let e = err_of(&[("DATABASE_URL", dsn)]);
            assert!(
                e.contains("percent-encode") && !e.contains("ss@") && !e.contains("S3cr"),
                "{dsn}: {e}"
            );
        }
    }

    #[test]
    fn libpq_variables_from_dotenv_fill_in_only_what_the_string_leaves_out() {
        let defaults = LibpqDefaults(vec![
            ("PGPASSWORD", "s3cret".into()),
            ("PGSSLMODE", "require".into()),
            ("PGHOST", "other".into()),
        ]);
        let url = DatabaseUrl::parse("DATABASE_URL", "postgres://app@db/x?sslmode=disable")
            .unwrap()
            .with_libpq_defaults(&defaults);
        assert_eq!(
            url.expose(),
            "postgres://app@db/x?password=s3cret&sslmode=require&sslmode=disable"
        );
        assert_eq!(url.to_string(), "postgres://app@db/x?sslmode=disable");
        let url = DatabaseUrl::parse("DATABASE_URL", "postgres://app:own@db/x")
            .unwrap()
            .with_libpq_defaults(&defaults);
        assert_eq!(url.expose(), "postgres://app:own@db/x?sslmode=require");
        let url = DatabaseUrl::parse("DATABASE_URL", "postgres:///x")
            .unwrap()
            .with_libpq_defaults(&defaults);
        assert_eq!(
            url.expose(),
            "postgres:///x?host=other&password=s3cret&sslmode=require"
        );
    }

    #[cfg(unix)]
    #[test]
    fn a_pgpass_file_from_dotenv_supplies_a_missing_password_as_the_driver_would() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pgpass");
        std::fs::write(
            &file,
            "# comment\nother:5432:x:app:no\ndb:5432:x:app:p:w\\:x\n*:*:*:*:any\n",
        )
        .unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        let defaults = LibpqDefaults(vec![("PGPASSFILE", file.to_str().unwrap().into())]);
        let with = |text: &str| {
            DatabaseUrl::parse("DATABASE_URL", text)
                .unwrap()
                .with_libpq_defaults(&defaults)
                .expose()
                .to_owned()
        };
        assert_eq!(
            with("postgres://app@db/x"),
            "postgres://app@db/x?password=p%3Aw%5C%3Ax"
        );
        assert_eq!(with("postgres://app:own@db/x"), "postgres://app:own@db/x");
        assert_eq!(
            with("postgres://app@elsewhere/y"),
            "postgres://app@elsewhere/y?password=any"
        );
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(with("postgres://app@db/x"), "postgres://app@db/x");
    }

    #[test]
    fn keyword_value_dsn_of_the_old_service_is_accepted() {
        let url = DatabaseUrl::parse(
            "DSN",
            "host=db port=5433 user=app password='p w' dbname=followers sslmode=disable",
        )
        .unwrap();
        assert_eq!(
            url.expose(),
            "postgres://app:p%20w@db:5433/followers?sslmode=disable"
        );
        assert!(!url.to_string().contains("p%20w"));
    }

    #[test]
    fn each_invalid_value_names_variable_value_and_rule() {
        for (var, value, rule) in [
            ("BATCH_SIZE", "0", "≥ 1"),
            ("BATCH_SIZE", "many", "whole number"),
            ("DB_MAX_CONNS", "0", "≥ 1"),
            ("WATCH", "maybe", "true or false"),
            ("WATCH_DEBOUNCE", "2 seconds", "Go duration"),
            ("MAX_DELETE_RATIO", "1.5", "0.0 to 1.0"),
            ("MAX_UPDATE_RATIO", "-0.1", "rename guard"),
            ("RUN_LOCK_WAIT", "soon", "Go duration"),
            ("RETRY_MAX_ATTEMPTS", "-1", "whole number"),
            ("RETRY_BACKOFF", "5", "Go duration"),
            ("MAX_REJECTS", "-1", "whole number"),
            ("JOURNAL_KEEP_RUNS", "-1", "whole number"),
            ("JOURNAL_KEEP_DAYS", "0", "≥ 1"),
            ("CSV_DELIMITER", ";;", "one ASCII character"),
            ("CSV_HEADER", "yes", "auto, true or false"),
            ("HTTP_ADDR", "localhost", "IP:port"),
            ("LOG_FORMAT", "xml", "text or json"),
            ("LOG_LEVEL", "loud", "trace, debug"),
            ("ALLOW_FILE_CHANGE", "maybe", "true or false"),
            ("CRON_SCHEDULE", "61 * * * *", "robfig"),
        ] {
            let e = err_of(&[(var, value)]);
            assert!(
                e.contains(var) && e.contains(value) && e.contains(rule),
                "{var}={value}: {e}"
            );
        }
        let e = err_of(&[("DB_MIN_CONNS", "5"), ("DB_MAX_CONNS", "2")]);
        assert!(e.contains("DB_MIN_CONNS"), "{e}");
    }

    #[test]
    fn a_file_is_the_same_under_every_spelling_and_a_symlink_keeps_its_name() {
        let dir = tempfile::tempdir().unwrap();
        let tables = dir.path().canonicalize().unwrap().join("tables");
        std::fs::create_dir(&tables).unwrap();
        std::fs::write(tables.join("a.csv"), "x").unwrap();
        let id = file_identity(&tables.join("a.csv"));
        assert_eq!(id, tables.join("a.csv"));
        assert_eq!(file_identity(&tables.join(".").join("a.csv")), id);
        assert_ne!(file_identity(&tables.join("b.csv")), id);
        #[cfg(unix)]
        {
            // A directory reached through a symlink is the same directory...
            std::os::unix::fs::symlink(&tables, dir.path().join("alias")).unwrap();
            assert_eq!(file_identity(&dir.path().join("alias/a.csv")), id);
            // ...but a symlinked file is its own name, whatever it points to.
            std::os::unix::fs::symlink("a.csv", tables.join("link.csv")).unwrap();
            assert_eq!(
                file_identity(&tables.join("link.csv")),
                tables.join("link.csv")
            );
        }
    }

    #[test]
    fn csv_file_must_stay_inside_tables_dir() {
        let dir = tempfile::tempdir().unwrap();
        let tables = dir.path().join("tables");
        std::fs::create_dir(&tables).unwrap();
        std::fs::write(dir.path().join("secret.csv"), "x").unwrap();
        std::fs::write(tables.join("f.csv"), "x").unwrap();
        assert_eq!(
            confine("CSV_FILE", &tables, Path::new("f.csv")).unwrap(),
            tables.canonicalize().unwrap().join("f.csv")
        );
        assert!(
            confine("CSV_FILE", &tables, Path::new("new.csv")).is_ok(),
            "a file not yet written is fine"
        );
        assert!(confine("CSV_FILE", &tables, Path::new("../secret.csv"))
            .unwrap_err()
            .to_string()
            .contains("TABLES_DIR"));
        assert!(confine("CSV_FILE", &tables, &dir.path().join("secret.csv")).is_err());
        #[cfg(unix)]
        {
            std::os::unix::fs::symlink(dir.path().join("secret.csv"), tables.join("link.csv"))
                .unwrap();
            let e = confine("CSV_FILE", &tables, Path::new("link.csv"))
                .unwrap_err()
                .to_string();
            assert!(e.contains("resolves to"), "{e}");
        }
    }
}
