//! The database settings: which server (`DATABASE_URL`, its old name `DSN`, the
//! compose default `DEFAULT_DATABASE_URL`, else libpq variables over the built-in
//! default), the pool, and how long connecting, pings and lock waits may take
//! (docs/guarantees.md#database-faults, docs/sync.md#readers-and-writers-during-a-run).

use super::database_url::default_database_url;
use super::parse::{bool_or, duration_or, int_or};
use super::sources::Raw;
use super::{invalid, var, ConfigError, DatabaseUrl};
use robfig_cron::go_duration::format_go_duration;
use std::time::Duration;

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

/// How long opening a connection may take (docs/guarantees.md#database-faults).
pub const DEFAULT_DB_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a run waits for the database to answer a ping (docs/guarantees.md#database-faults).
pub const DEFAULT_DB_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a merge waits for another writer of `followers`
/// (docs/sync.md#readers-and-writers-during-a-run).
pub const DEFAULT_LOCK_WAIT_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Clone, Debug)]
pub struct DatabaseSettings {
    pub url: DatabaseUrl,
    /// The variable that supplied `url` (`DATABASE_URL`, `DSN` or
    /// `DEFAULT_DATABASE_URL`); `None` for the built-in default with libpq variables.
    pub(super) url_from: Option<&'static str>,
    /// `DB_MIN_CONNS`, `DB_MAX_CONNS`: the pool's bounds.
    pub min_conns: u32,
    pub max_conns: u32,
    /// `DB_CONNECT_TIMEOUT`: how long opening a database connection may take
    /// (docs/guarantees.md#database-faults), for a server or network that hangs without refusing.
    pub connect_timeout: Duration,
    /// `DB_TIMEOUT`: a run fails when the database does not answer a ping on the
    /// run lock's session within it (docs/guarantees.md#database-faults).
    pub timeout: Duration,
    /// `LOCK_WAIT_TIMEOUT`: how long a merge or revert waits for another writer of
    /// `followers` (or of staging) to commit before it fails naming it
    /// (docs/sync.md#readers-and-writers-during-a-run).
    pub lock_wait_timeout: Duration,
    /// `RUN_LOCK_WAIT`: how long an approved `sync` waits for the run lock held by another run.
    pub run_lock_wait: Duration,
    /// `FIRST_SYNC_KEY_REBUILD`: whether the first sync into an empty, provably plain
    /// table may take an exclusive lock to rebuild the primary key after its insert.
    pub first_sync_key_rebuild: bool,
}

impl DatabaseSettings {
    pub(super) fn from_raw(raw: &Raw) -> Result<Self, ConfigError> {
        let (url, url_from) = url(raw)?;
        let min_conns: u32 = int_or(raw, var::DB_MIN_CONNS, 0, 0)?;
        let max_conns: u32 = int_or(raw, var::DB_MAX_CONNS, 1, 30)?;
        if max_conns < min_conns {
            return Err(invalid(
                var::DB_MAX_CONNS,
                &max_conns.to_string(),
                format!("must be ≥ DB_MIN_CONNS ({min_conns})"),
            ));
        }
        Ok(Self {
            url,
            url_from,
            min_conns,
            max_conns,
            connect_timeout: connect_timeout(raw)?,
            timeout: timeout(raw)?,
            lock_wait_timeout: lock_wait_timeout(raw)?,
            run_lock_wait: duration_or(raw, var::RUN_LOCK_WAIT, Duration::from_secs(300))?,
            first_sync_key_rebuild: bool_or(raw, var::FIRST_SYNC_KEY_REBUILD, true)?,
        })
    }

    /// The URL (redacted) when `var` supplied it, else empty: for `describe`.
    pub(super) fn url_if_from(&self, var: &str) -> String {
        if self.url_from == Some(var) {
            self.url.to_string()
        } else {
            String::new()
        }
    }
}

/// `DATABASE_URL` (or `DSN`), else `DEFAULT_DATABASE_URL`, else the built-in
/// default with the libpq variables, and the variable it came from.
fn url(raw: &Raw) -> Result<(DatabaseUrl, Option<&'static str>), ConfigError> {
    if let Some((var, value)) = raw.aliased(var::DATABASE_URL, var::DSN)? {
        return Ok((DatabaseUrl::parse(var, value)?, Some(var)));
    }
    match raw.get(var::DEFAULT_DATABASE_URL) {
        // docker-compose.yml points DEFAULT_DATABASE_URL at its db service; libpq
        // variables, when set, are the user's own choice and win over it.
        Some(value) if LIBPQ_TARGET_VARIABLES.iter().all(|v| raw.get(v).is_none()) => Ok((
            DatabaseUrl::parse(var::DEFAULT_DATABASE_URL, value)?,
            Some(var::DEFAULT_DATABASE_URL),
        )),
        _ => Ok((default_database_url(raw)?, None)),
    }
}

fn connect_timeout(raw: &Raw) -> Result<Duration, ConfigError> {
    let timeout = duration_or(raw, var::DB_CONNECT_TIMEOUT, DEFAULT_DB_CONNECT_TIMEOUT)?;
    if timeout.is_zero() {
        return Err(invalid(
            var::DB_CONNECT_TIMEOUT,
            "0s",
            "expected a duration above zero, such as 10s",
        ));
    }
    Ok(timeout)
}

fn timeout(raw: &Raw) -> Result<Duration, ConfigError> {
    let timeout = duration_or(raw, var::DB_TIMEOUT, DEFAULT_DB_TIMEOUT)?;
    if timeout < Duration::from_millis(100) {
        return Err(invalid(
            var::DB_TIMEOUT,
            &format_go_duration(timeout).to_string(),
            "expected at least 100ms, such as 30s",
        ));
    }
    Ok(timeout)
}

fn lock_wait_timeout(raw: &Raw) -> Result<Duration, ConfigError> {
    let timeout = duration_or(raw, var::LOCK_WAIT_TIMEOUT, DEFAULT_LOCK_WAIT_TIMEOUT)?;
    if timeout < Duration::from_millis(1) {
        return Err(invalid(
            var::LOCK_WAIT_TIMEOUT,
            raw.get(var::LOCK_WAIT_TIMEOUT).unwrap_or_default(),
            "must be at least 1ms (a wait without bound is not offered)",
        ));
    }
    Ok(timeout)
}
