//! Database plumbing: the connection pool, migrations under an advisory lock, and
//! the per-database run lock that keeps two agents from syncing at once.

use crate::config::{DatabaseUrl, Settings};
use crate::storage::{seaql_migrations, session};
use migration::{Migrator, MigratorTrait};
use sea_orm::{
    ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DbBackend, DbErr, RuntimeErr,
    Statement,
};
use sqlx::{Connection, PgConnection};
use std::time::Duration;

/// Advisory lock keys (arbitrary constants, "fetl" + purpose).
const MIGRATE_LOCK: i64 = 0x6665_746c_0000_0001;
pub const RUN_LOCK: i64 = 0x6665_746c_0000_0002;

/// An advisory lock's key: the one-key form, or the two-key form.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum LockKey {
    Single(i64),
    Pair(i32, i32),
}

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("cannot connect to {url}")]
    Connect {
        url: String,
        #[source]
        source: DbErr,
    },
    #[error("cannot connect to {url}")]
    LockConnect {
        url: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("cannot set up the HTTP endpoints' connection to {url}")]
    HttpPool {
        url: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("cannot connect to {url}: no answer within DB_CONNECT_TIMEOUT={}", robfig_cron::go_duration::format_go_duration(*.after))]
    ConnectTimeout { url: String, after: Duration },
    #[error("cannot connect to {url}: the server has no free connection (max_connections reached: {message}); raise max_connections on the server, or lower DB_MAX_CONNS here and the pools of its other clients (docs/guarantees.md#database-faults)")]
    TooManyConnections { url: String, message: String },
    #[error("the database stopped answering: a ping of the run lock's session got no answer within DB_TIMEOUT={}; nothing was committed unless this happened during the commit (the run's sync_runs record tells), and the next run removes what is left", robfig_cron::go_duration::format_go_duration(*.0))]
    Stalled(Duration),
    #[error("advisory lock query failed")]
    Lock(#[source] sqlx::Error),
    #[error("applying migrations failed")]
    Migrate(#[source] DbErr),
    #[error("{0}")]
    Incompatible(String),
    #[error("cannot read the shape of public.followers")]
    Shape(#[source] DbErr),
    #[error("cannot read the applied migrations (seaql_migrations)")]
    MigrationState(#[source] DbErr),
    /// docs/sync.md#dry-run: a dry run never changes the database, and the
    /// pending migrations would (the takeover rewrites stored emails).
    #[error("{what} refused: migration {first} is pending{more}; a dry run changes nothing, and applying it would (the takeover canonicalises and merges stored emails, see docs/sync.md#taking-over-the-old-services-database): apply the migrations with `followers-etl migrate`, then run the dry run again")]
    PendingForDryRun {
        what: &'static str,
        first: String,
        more: String,
    },
    #[error("migration {first} is pending{more} and role {role:?} may not apply it: {denied}; apply the migrations once as the tables' owner (`followers-etl migrate` with the owner's DATABASE_URL), see docs/sync.md#database-roles")]
    MigrationPrivilege {
        first: String,
        more: String,
        role: String,
        /// PostgreSQL's words, naming the missing privilege (e.g. "permission denied for schema public").
        denied: String,
    },
}

impl DbError {
    /// Pending migrations this role may not apply: `serve` waits for an owner to
    /// apply them, as it waits for an unreachable database.
    pub fn is_migration_privilege(&self) -> bool {
        match self {
            Self::MigrationPrivilege { .. } => true,
            Self::MigrationState(e) => insufficient_privilege(e).is_some(),
            _ => false,
        }
    }
}

/// `DB_CONNECT_TIMEOUT`, set by [`connect`] (every command connects through it
/// first) for the connections opened outside the pool.
static CONNECT_TIMEOUT: std::sync::OnceLock<Duration> = std::sync::OnceLock::new();

fn connect_timeout() -> Duration {
    CONNECT_TIMEOUT
        .get()
        .copied()
        .unwrap_or(crate::config::DEFAULT_DB_CONNECT_TIMEOUT)
}

/// PostgreSQL's words when `e` is `too_many_connections` (SQLSTATE 53300).
fn too_many_connections(e: &sqlx::Error) -> Option<String> {
    match e {
        sqlx::Error::Database(db) if db.code().as_deref() == Some("53300") => {
            Some(db.message().to_owned())
        }
        _ => None,
    }
}

/// The pool every part of the agent shares; COPY goes through its sqlx pool.
pub async fn connect(settings: &Settings) -> Result<DatabaseConnection, DbError> {
    let _ = CONNECT_TIMEOUT.set(settings.database.connect_timeout);
    // One direct attempt first: an unreachable server fails now, not after the
    // pool's acquire timeout.
    AdvisoryLock::dedicated_connection(&settings.database.url)
        .await?
        .close()
        .await
        .ok();
    let mut options = ConnectOptions::new(settings.database.url.expose().to_owned());
    options
        .max_connections(settings.database.max_conns)
        .min_connections(settings.database.min_conns)
        .connect_timeout(settings.database.connect_timeout)
        .acquire_timeout(Duration::from_secs(60))
        .sqlx_logging(false);
    Database::connect(options)
        .await
        .map_err(|source| DbError::Connect {
            url: settings.database.url.to_string(),
            source,
        })
}

/// How long the HTTP endpoints wait for the database.
pub const HTTP_DB_TIMEOUT: Duration = Duration::from_millis(800);

/// The HTTP endpoints' own pool (two connections at most, connected on first
/// use): `/readyz` and `/metrics` answer while a run holds every connection of
/// the main pool.
pub fn http_pool(settings: &Settings) -> Result<DatabaseConnection, DbError> {
    sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .min_connections(0)
        .acquire_timeout(HTTP_DB_TIMEOUT)
        .connect_lazy(settings.database.url.expose())
        .map(sea_orm::SqlxPostgresConnector::from_sqlx_postgres_pool)
        .map_err(|source| DbError::HttpPool {
            url: settings.database.url.to_string(),
            source,
        })
}

/// A session-level advisory lock held on its own connection (outside the pool, so a
/// pool of one connection cannot deadlock on it). Dropping it, or the process dying,
/// closes the connection and releases the lock.
pub struct AdvisoryLock {
    /// Shared by the run's statements on the lock's session (`execute_holding`)
    /// and the pings of `stalled`, which run beside them.
    conn: tokio::sync::Mutex<PgConnection>,
    key: LockKey,
    /// Backend pid of the lock's session: the merge checks it still holds the lock.
    pid: i32,
    /// A ping went unanswered (`stalled`): the session is not used again.
    stalled: std::sync::atomic::AtomicBool,
    /// Where `stalled` opens its probe: a second session, opened only while a
    /// statement of the run occupies the lock's session, that asks the server
    /// about that session (`None`: no probe, as for the migration lock).
    probe_url: Option<DatabaseUrl>,
}

impl AdvisoryLock {
    async fn dedicated_connection(url: &DatabaseUrl) -> Result<PgConnection, DbError> {
        let after = connect_timeout();
        match tokio::time::timeout(after, PgConnection::connect(url.expose())).await {
            Err(_) => Err(DbError::ConnectTimeout {
                url: url.to_string(),
                after,
            }),
            Ok(Ok(conn)) => Ok(conn),
            Ok(Err(source)) => Err(match too_many_connections(&source) {
                Some(message) => DbError::TooManyConnections {
                    url: url.to_string(),
                    message,
                },
                None => DbError::LockConnect {
                    url: url.to_string(),
                    source,
                },
            }),
        }
    }

    /// Takes the run lock if it is free; `None` when another run holds it.
    pub async fn try_run_lock(url: &DatabaseUrl) -> Result<Option<Self>, DbError> {
        let mut conn = Self::dedicated_connection(url).await?;
        let (got, pid): (bool, i32) = sqlx::query_as(session::TRY_LOCK)
            .bind(RUN_LOCK)
            .fetch_one(&mut conn)
            .await
            .map_err(DbError::Lock)?;
        Ok(got.then_some(Self {
            conn: tokio::sync::Mutex::new(conn),
            key: LockKey::Single(RUN_LOCK),
            pid,
            stalled: std::sync::atomic::AtomicBool::new(false),
            probe_url: Some(url.clone()),
        }))
    }

    /// Takes the run lock of one mirror if it is free; `None` when another run
    /// of the mirror holds it. `key`: both keys of the two-key form
    /// `pg_try_advisory_lock(int4, int4)` (`MirrorSql::lock_key`, 64 bits of the
    /// hash of the mirror's table, docs/mirrors.md#runs), which PostgreSQL keeps
    /// apart from the one-key (`bigint`) form of `RUN_LOCK` and `MIGRATE_LOCK`.
    pub async fn try_mirror_lock(
        url: &DatabaseUrl,
        key: (i32, i32),
    ) -> Result<Option<Self>, DbError> {
        let mut conn = Self::dedicated_connection(url).await?;
        let (got, pid): (bool, i32) = sqlx::query_as(session::TRY_LOCK_PAIR)
            .bind(key.0)
            .bind(key.1)
            .fetch_one(&mut conn)
            .await
            .map_err(DbError::Lock)?;
        Ok(got.then_some(Self {
            conn: tokio::sync::Mutex::new(conn),
            key: LockKey::Pair(key.0, key.1),
            pid,
            stalled: std::sync::atomic::AtomicBool::new(false),
            probe_url: Some(url.clone()),
        }))
    }

    /// Runs `sql` (no parameters) on the lock's own session: it runs only while
    /// the lock is held (a session that ended took its lock with it, and the
    /// statement fails), e.g. dropping what only the lock's holder may drop.
    pub async fn execute_holding(&self, sql: &str) -> Result<(), sqlx::Error> {
        sqlx::raw_sql(sql)
            .execute(&mut *self.conn.lock().await)
            .await?;
        Ok(())
    }

    /// Waits for the migration lock.
    async fn migrate_lock(url: &DatabaseUrl) -> Result<Self, DbError> {
        let mut conn = Self::dedicated_connection(url).await?;
        sqlx::query(session::LOCK)
            .bind(MIGRATE_LOCK)
            .execute(&mut conn)
            .await
            .map_err(DbError::Lock)?;
        Ok(Self {
            conn: tokio::sync::Mutex::new(conn),
            key: LockKey::Single(MIGRATE_LOCK),
            pid: 0,
            stalled: std::sync::atomic::AtomicBool::new(false),
            probe_url: None,
        })
    }

    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Pings the lock's session every third of `timeout`; returns once a ping
    /// goes unanswered that long (a server or network that hangs without
    /// refusing: docs/guarantees.md#database-faults). A session that fails outright is left to the
    /// run's own statements to report: this then never returns.
    ///
    /// The ping measures the session, not the run's statements on it
    /// (`execute_holding`): while one occupies the session (a staging DDL
    /// waiting for another session's lock, say), the ping cannot go through
    /// it, so a probe session asks the server instead. The server answering
    /// that the lock's session is running a statement is an answer (waits for
    /// locks are not the ping's to bound, as the merge's); the server not
    /// answering within `timeout` is a stall; the session idle or gone while
    /// its statement's answer has not arrived for `timeout` is one too (the
    /// answer is lost on the way).
    pub async fn stalled(&self, timeout: Duration) -> DbError {
        let every = (timeout / 3).max(Duration::from_millis(50));
        let mut probe: Option<PgConnection> = None;
        // Since when the server has had the session idle while a statement of
        // ours still waits for its answer.
        let mut unanswered: Option<tokio::time::Instant> = None;
        let stall = |this: &Self| {
            this.stalled
                .store(true, std::sync::atomic::Ordering::Relaxed);
            DbError::Stalled(timeout)
        };
        loop {
            tokio::time::sleep(every).await;
            let Ok(mut conn) = self.conn.try_lock() else {
                let Some(url) = &self.probe_url else {
                    continue;
                };
                let asked = tokio::time::timeout(timeout, async {
                    if probe.is_none() {
                        probe = Some(Self::dedicated_connection(url).await.map_err(|_| ())?);
                    }
                    let Some(conn) = probe.as_mut() else {
                        return Err(());
                    };
                    sqlx::query_scalar::<_, bool>(session::SESSION_ACTIVE)
                        .bind(self.pid)
                        .fetch_one(conn)
                        .await
                        .map_err(|_| ())
                })
                .await;
                match asked {
                    Err(_) => return stall(self),
                    Ok(Ok(true)) => unanswered = None,
                    // Idle or gone (or the probe failed: no word either way):
                    // a stall once that lasts `timeout`.
                    Ok(answer) => {
                        if answer.is_err() {
                            probe = None;
                        }
                        let since = *unanswered.get_or_insert_with(tokio::time::Instant::now);
                        if since.elapsed() >= timeout {
                            return stall(self);
                        }
                    }
                }
                continue;
            };
            unanswered = None;
            if let Some(p) = probe.take() {
                let _ = tokio::time::timeout(every, p.close()).await;
            }
            let ping = sqlx::query(session::PING).execute(&mut *conn);
            match tokio::time::timeout(timeout, ping).await {
                Ok(Ok(_)) => {}
                Ok(Err(_)) => {
                    drop(conn);
                    std::future::pending::<()>().await;
                }
                Err(_) => return stall(self),
            }
        }
    }

    /// Unlocks and closes; a stalled session is only dropped (the server ends
    /// it, and its lock, when the connection breaks).
    pub async fn release(self) {
        if self.stalled.load(std::sync::atomic::Ordering::Relaxed) {
            return;
        }
        let mut conn = self.conn.into_inner();
        let unlock = async {
            let _ = match self.key {
                LockKey::Single(key) => {
                    sqlx::query(session::UNLOCK)
                        .bind(key)
                        .execute(&mut conn)
                        .await
                }
                LockKey::Pair(class, key) => {
                    sqlx::query(session::UNLOCK_PAIR)
                        .bind(class)
                        .bind(key)
                        .execute(&mut conn)
                        .await
                }
            };
            let _ = conn.close().await;
        };
        let _ = tokio::time::timeout(connect_timeout(), unlock).await;
    }
}

/// Applies pending migrations while holding the migration lock, so agents that
/// start together apply them once. When nothing is pending it only reads
/// `seaql_migrations` (no DDL, no lock), so a runtime role without CREATE
/// privileges starts (docs/sync.md#database-roles).
pub async fn migrate(db: &DatabaseConnection, url: &DatabaseUrl) -> Result<(), DbError> {
    migrate_for(db, url, true).await
}

/// `migrate` for an agent whose built-in mirror runs (`builtin`: `CSV_FILE`
/// set) or not: without it, an incompatible `public.followers` (an
/// application's own) is left alone and not checked
/// (docs/mirrors.md#an-applications-own-publicfollowers).
#[tracing::instrument(skip_all, fields(builtin))]
pub async fn migrate_for(
    db: &DatabaseConnection,
    url: &DatabaseUrl,
    builtin: bool,
) -> Result<(), DbError> {
    migration::followers_shape::set_builtin_mirror(builtin);
    // The takeover migration canonicalises stored emails with the file rows' rule.
    migration::email_rule::install(|raw| {
        crate::domain::Email::parse(raw)
            .map(|e| e.as_str().to_owned())
            .map_err(|e| e.to_string())
    });
    migration::email_rule::install_name_rule(|raw| {
        crate::domain::FullName::parse(raw)
            .map(|n| n.as_str().to_owned())
            .map_err(|e| e.to_string())
    });
    let pending = pending_migrations(db)
        .await
        .map_err(DbError::MigrationState)?;
    if !pending.is_empty() {
        let lock = AdvisoryLock::migrate_lock(url).await?;
        let result = apply_pending(db).await;
        lock.release().await;
        result?;
    }
    if !builtin {
        return Ok(());
    }
    check_followers_shape(db).await?;
    let clock = modified_at_clock(db).await?;
    if !clock.utc {
        tracing::warn!(
            zone = %clock.zone,
            source = %clock.source,
            "followers.modified_at is a timestamp without time zone whose default (CURRENT_TIMESTAMP) \
             writes the database's local time: the agent writes modified_at in that zone's wall time \
             too, so new and old rows compare (docs/sync.md#modified_at-and-the-time-zone)"
        );
    }
    Ok(())
}

/// The clock `followers.modified_at` holds (`migration::followers_shape::Clock`):
/// every sync writes it in the same one.
pub async fn modified_at_clock(
    db: &DatabaseConnection,
) -> Result<migration::followers_shape::Clock, DbError> {
    migration::followers_shape::modified_at_clock(db)
        .await
        .map_err(DbError::Shape)
}

/// Whether `public.followers` can still be mirrored into (someone may have
/// replaced or altered it since the migrations ran); checked at every start of
/// `sync`, `serve` and `migrate`. See `migration::followers_shape`.
pub async fn check_followers_shape(db: &DatabaseConnection) -> Result<(), DbError> {
    let problems = migration::followers_shape::problems(db)
        .await
        .map_err(DbError::Shape)?;
    if problems.is_empty() {
        Ok(())
    } else {
        Err(DbError::Incompatible(migration::followers_shape::message(
            &problems,
        )))
    }
}

/// Under the migration lock: another agent may have applied them meanwhile.
async fn apply_pending(db: &DatabaseConnection) -> Result<(), DbError> {
    let pending = pending_migrations(db)
        .await
        .map_err(DbError::MigrationState)?;
    let Some(first) = pending.first() else {
        return Ok(());
    };
    let Err(e) = Migrator::up(db, None).await else {
        return Ok(());
    };
    let Some(denied) = insufficient_privilege(&e) else {
        return Err(match e {
            // The takeover migration's own errors say what is wrong and how to fix it.
            DbErr::Migration(message) => DbError::Incompatible(message),
            e => DbError::Migrate(e),
        });
    };
    // Which CREATE privileges the migrations need and the role lacks.
    let (role, lacking) = db
        .query_one(Statement::from_string(
            DbBackend::Postgres,
            seaql_migrations::LACKING,
        ))
        .await
        .ok()
        .flatten()
        .and_then(|row| row.try_get_many_by_index::<(String, String)>().ok())
        .unwrap_or_default();
    let denied = if lacking.is_empty() {
        denied
    } else {
        format!("{denied} (it lacks {lacking})")
    };
    Err(DbError::MigrationPrivilege {
        first: first.clone(),
        more: pending_suffix(&pending),
        role,
        denied,
    })
}

/// PostgreSQL's message when `e` is `insufficient_privilege` (SQLSTATE 42501).
fn insufficient_privilege(e: &DbErr) -> Option<String> {
    let (DbErr::Exec(RuntimeErr::SqlxError(sqlx::Error::Database(db)))
    | DbErr::Query(RuntimeErr::SqlxError(sqlx::Error::Database(db)))) = e
    else {
        return None;
    };
    (db.code().as_deref() == Some("42501")).then(|| db.message().to_owned())
}

/// The migrations of this binary that `seaql_migrations` does not list, in
/// order, read with plain SELECTs (sea-orm's own check creates the table first).
pub async fn pending_migrations(db: &DatabaseConnection) -> Result<Vec<String>, DbErr> {
    let compiled: Vec<String> = Migrator::migrations()
        .iter()
        .map(|m| m.name().to_owned())
        .collect();
    let exists = db
        .query_one(Statement::from_string(
            DbBackend::Postgres,
            seaql_migrations::EXISTS,
        ))
        .await?
        .map(|row| row.try_get_by_index::<bool>(0))
        .transpose()?
        .unwrap_or(false);
    if !exists {
        return Ok(compiled);
    }
    let applied: std::collections::HashSet<String> = db
        .query_all(Statement::from_string(
            DbBackend::Postgres,
            seaql_migrations::APPLIED,
        ))
        .await?
        .iter()
        .map(|row| row.try_get_by_index::<String>(0))
        .collect::<Result<_, _>>()?;
    Ok(compiled
        .into_iter()
        .filter(|name| !applied.contains(name))
        .collect())
}

/// For a dry run (README.md#commands): reads only. With migrations pending it
/// refuses, naming `followers-etl migrate`, instead of applying them: they
/// would change the table (the takeover rewrites and merges stored emails)
/// while the old service may still be using it.
#[tracing::instrument(skip_all)]
pub async fn check_dry_run(db: &DatabaseConnection, what: &'static str) -> Result<(), DbError> {
    let pending = pending_migrations(db)
        .await
        .map_err(DbError::MigrationState)?;
    if let Some(first) = pending.first() {
        return Err(DbError::PendingForDryRun {
            what,
            first: first.clone(),
            more: pending_suffix(&pending),
        });
    }
    check_followers_shape(db).await
}

fn pending_suffix(pending: &[String]) -> String {
    match pending.len() {
        0 | 1 => String::new(),
        n => format!(" (one of {n}: {})", pending.join(", ")),
    }
}

/// Whether a migration is pending (for `/readyz`); reads only.
pub async fn migrations_pending(db: &DatabaseConnection) -> Result<bool, DbErr> {
    Ok(!pending_migrations(db).await?.is_empty())
}
