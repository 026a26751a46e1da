//! The shape `public.followers` must have for the agent to mirror a file into it
//! (docs/sync.md#shape-check): columns `email` and
//! `full_name` of a text type (`varchar(n)` with n ≥ 255, or `text`), `modified_at`
//! a timestamp, a unique key (or primary key) on `email` alone, and no other
//! column the agent's inserts cannot fill. A table created by another program
//! under the same name (`CREATE TABLE IF NOT EXISTS` leaves it alone) is named
//! with every difference and the fix, instead of every sync failing halfway.
//! Checked by the takeover migration and at every start of `sync`, `serve` and
//! `migrate`.

use sea_orm_migration::sea_orm::{ConnectionTrait, DbBackend, DbErr, Statement};

/// The definition the agent creates, for the fix in the message.
pub const DEFINITION: &str = "CREATE TABLE public.followers (email varchar(255) PRIMARY KEY, \
     full_name varchar(255) NOT NULL, modified_at timestamp NOT NULL)";

fn stmt(sql: &str) -> Statement {
    Statement::from_string(DbBackend::Postgres, sql)
}

/// Every way `public.followers` differs from what the agent needs; empty when
/// it is compatible.
pub async fn problems(db: &impl ConnectionTrait) -> Result<Vec<String>, DbErr> {
    let Some(table) = db
        .query_one(stmt(
            "SELECT c.oid::bigint AS oid, c.relkind::text AS kind FROM pg_class c
               JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE n.nspname = 'public' AND c.relname = 'followers'",
        ))
        .await?
    else {
        return Ok(vec!["it does not exist".into()]);
    };
    let oid: i64 = table.try_get("", "oid")?;
    let kind: String = table.try_get("", "kind")?;
    if !matches!(kind.as_str(), "r" | "p") {
        return Ok(vec![format!(
            "it is not a table (pg_class.relkind {kind:?})"
        )]);
    }
    let mut problems = Vec::new();
    let columns = db
        .query_all(stmt(&format!(
            "SELECT a.attname::text AS name, t.typname::text AS type,
                    format_type(a.atttypid, a.atttypmod) AS shown, a.atttypmod AS typmod,
                    a.attnotnull AND NOT a.atthasdef AND a.attidentity = '' AND a.attgenerated = ''
                      AS needs_value
               FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid
              WHERE a.attrelid = {oid} AND a.attnum > 0 AND NOT a.attisdropped
              ORDER BY a.attnum"
        )))
        .await?;
    for (name, wanted, types) in [
        ("email", "varchar(255) or text", &["varchar", "text"][..]),
        (
            "full_name",
            "varchar(255) or text",
            &["varchar", "text"][..],
        ),
        (
            "modified_at",
            "timestamp or timestamptz",
            &["timestamp", "timestamptz"][..],
        ),
    ] {
        let found = columns
            .iter()
            .find(|c| c.try_get::<String>("", "name").is_ok_and(|n| n == name));
        let Some(column) = found else {
            problems.push(format!("column {name} is missing"));
            continue;
        };
        let ty: String = column.try_get("", "type")?;
        let shown: String = column.try_get("", "shown")?;
        let typmod: i32 = column.try_get("", "typmod")?;
        // varchar(n) stores n + 4 in atttypmod; -1 is unbounded.
        let too_short = ty == "varchar" && typmod >= 0 && typmod - 4 < 255;
        if !types.contains(&ty.as_str()) || too_short {
            problems.push(format!("column {name} is {shown}, not {wanted}"));
        }
    }
    for column in &columns {
        let name: String = column.try_get("", "name")?;
        let needs_value: bool = column.try_get("", "needs_value")?;
        if needs_value && !matches!(name.as_str(), "email" | "full_name" | "modified_at") {
            problems.push(format!(
                "column {name} is NOT NULL without a default, so inserting a follower fails"
            ));
        }
    }
    let unique = db
        .query_one(stmt(&format!(
            "SELECT EXISTS (SELECT 1 FROM pg_index i
               JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
              WHERE i.indrelid = {oid} AND i.indisunique AND i.indisvalid
                AND i.indnkeyatts = 1 AND i.indpred IS NULL AND i.indexprs IS NULL
                AND a.attname = 'email') AS unique_email"
        )))
        .await?
        .map(|r| r.try_get::<bool>("", "unique_email"))
        .transpose()?
        .unwrap_or(false);
    if !unique && !problems.iter().any(|p| p.starts_with("column email ")) {
        problems.push(
            "it has no primary key or unique key on email alone (add one: \
             ALTER TABLE public.followers ADD PRIMARY KEY (email), after removing duplicate emails)"
                .into(),
        );
    }
    Ok(problems)
}

/// The error for `problems`: what is wrong, and how to fix it.
pub fn message(problems: &[String]) -> String {
    format!(
        "public.followers is not a table followers-etl can mirror into: {}. Fix: alter it to \
         match `{DEFINITION}`, or rename it away (ALTER TABLE public.followers RENAME TO \
         followers_old) and create that table; then start again. Nothing was changed.",
        problems.join("; ")
    )
}

/// `Err(message)` when `public.followers` is not compatible.
/// Whether the built-in mirror runs in this process (the agent sets it before
/// it applies migrations, `followers_etl::db::migrate`; default: it runs).
static BUILTIN_OFF: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Tells the takeover migrations whether the built-in mirror runs (`CSV_FILE`
/// set): when it does not, they leave an incompatible `public.followers`
/// alone (docs/mirrors.md#an-applications-own-publicfollowers).
pub fn set_builtin_mirror(runs: bool) {
    BUILTIN_OFF.store(!runs, std::sync::atomic::Ordering::Relaxed);
}

/// Whether a takeover migration leaves `public.followers` alone: the built-in
/// mirror does not run and the table is not one the agent could mirror (it is
/// another program's, of another shape). Such a table is then, for the agent,
/// one created after the migrations: the built-in mirror, once `CSV_FILE` is
/// set, checks its shape at every start (exit 2 until it fits) and
/// canonicalises nothing in it.
pub async fn leave_alone(db: &impl ConnectionTrait) -> Result<bool, DbErr> {
    if !BUILTIN_OFF.load(std::sync::atomic::Ordering::Relaxed) {
        return Ok(false);
    }
    let problems = problems(db).await?;
    if !problems.is_empty() {
        tracing::info!(
            "public.followers is not the agent's ({}), and the built-in mirror does not run (no CSV_FILE): the takeover leaves it alone",
            problems.join("; ")
        );
    }
    Ok(!problems.is_empty())
}

pub async fn check(db: &impl ConnectionTrait) -> Result<(), DbErr> {
    let problems = problems(db).await?;
    if problems.is_empty() {
        Ok(())
    } else {
        Err(DbErr::Migration(message(&problems)))
    }
}

/// The clock `modified_at` holds, so the agent writes it in the same one
/// (docs/sync.md#modified_at-and-the-time-zone). A `timestamptz` column
/// holds instants: any zone is right. A `timestamp` column whose default reads
/// the session's clock (the old service's `DEFAULT CURRENT_TIMESTAMP`) holds the
/// wall time of the time zone the database gives its sessions, since the old
/// service's sessions wrote it; the agent's own sessions run in UTC (the driver
/// sets `TimeZone=UTC` when it connects), so that zone is looked up: the
/// `ALTER ROLE … IN DATABASE`, `ALTER ROLE` and `ALTER DATABASE … SET TimeZone`
/// settings of this role and database, in PostgreSQL's order, then the server's
/// configuration file (readable by a superuser or `pg_read_all_settings`), then
/// `log_timezone` (initdb writes both from the same zone). Any other `timestamp`
/// column (the agent's own, without a default) holds UTC.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Clock {
    /// The zone whose wall time `modified_at` holds: written as
    /// `now() AT TIME ZONE zone`.
    pub zone: String,
    /// Why that zone, for the start-up log.
    pub source: String,
    /// Whether the zone is UTC all year (nothing to warn about).
    pub utc: bool,
}

pub async fn modified_at_clock(db: &impl ConnectionTrait) -> Result<Clock, DbErr> {
    let column = db
        .query_one(stmt(
            "SELECT t.typname::text AS type, pg_get_expr(d.adbin, d.adrelid) AS default
               FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid
               LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
              WHERE a.attrelid = 'public.followers'::regclass AND a.attname = 'modified_at'",
        ))
        .await?;
    let (kind, default) = match &column {
        Some(row) => (
            row.try_get::<String>("", "type")?,
            row.try_get::<Option<String>>("", "default")?,
        ),
        None => (String::new(), None),
    };
    let default = default.unwrap_or_default().to_lowercase();
    let session_clock = [
        "current_timestamp",
        "localtimestamp",
        "now()",
        "transaction_timestamp()",
        "statement_timestamp()",
        "clock_timestamp()",
    ]
    .iter()
    .any(|f| default.contains(f))
        && !default.contains("at time zone")
        && !default.contains("timezone(");
    let (zone, source) = if kind != "timestamp" || !session_clock {
        ("UTC".to_owned(), "the column holds UTC".to_owned())
    } else {
        database_zone(db).await?
    };
    let utc = db
        .query_one(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "SELECT (timestamptz '2000-01-15 12:00+00' AT TIME ZONE $1) = timestamp '2000-01-15 12:00'
                AND (timestamptz '2000-07-15 12:00+00' AT TIME ZONE $1) = timestamp '2000-07-15 12:00'
                AS utc",
            [zone.clone().into()],
        ))
        .await?
        .map(|r| r.try_get::<bool>("", "utc"))
        .transpose()?
        .unwrap_or(true);
    Ok(Clock { zone, source, utc })
}

/// The `TimeZone` a session of this role gets in this database by default, and
/// where it is set.
async fn database_zone(db: &impl ConnectionTrait) -> Result<(String, String), DbErr> {
    let text = |row: Option<sea_orm_migration::sea_orm::QueryResult>, col: &str| {
        row.map(|r| r.try_get::<Option<String>>("", col))
            .transpose()
            .map(Option::flatten)
    };
    let set = db
        .query_one(stmt(
            "SELECT substr(cfg, strpos(cfg, '=') + 1) AS zone,
                    CASE WHEN s.setdatabase <> 0 AND s.setrole <> 0 THEN 'ALTER ROLE … IN DATABASE … SET TimeZone'
                         WHEN s.setrole <> 0 THEN 'ALTER ROLE … SET TimeZone'
                         ELSE 'ALTER DATABASE … SET TimeZone' END AS source
               FROM pg_db_role_setting s, unnest(s.setconfig) cfg
              WHERE s.setdatabase IN (0, (SELECT oid FROM pg_database WHERE datname = current_database()))
                AND s.setrole IN (0, (SELECT oid FROM pg_roles WHERE rolname = session_user))
                AND lower(split_part(cfg, '=', 1)) = 'timezone'
              ORDER BY s.setdatabase <> 0 AND s.setrole <> 0 DESC, s.setrole <> 0 DESC
              LIMIT 1",
        ))
        .await?;
    if let Some(row) = set {
        let zone: String = row.try_get("", "zone")?;
        let source: String = row.try_get("", "source")?;
        return Ok((zone, source));
    }
    // Asked first, so that a role without the privilege gets no error (which
    // would abort a migration's transaction).
    let readable = db
        .query_one(stmt(
            "SELECT has_table_privilege('pg_catalog.pg_file_settings', 'SELECT') AS readable",
        ))
        .await?
        .map(|r| r.try_get::<bool>("", "readable"))
        .transpose()?
        .unwrap_or(false);
    if readable {
        let file = text(
            db.query_one(stmt(
                "SELECT setting AS zone FROM pg_catalog.pg_file_settings
                  WHERE lower(name) = 'timezone' AND applied ORDER BY seqno DESC LIMIT 1",
            ))
            .await?,
            "zone",
        )?;
        if let Some(zone) = file {
            return Ok((zone, "the server's configuration (timezone)".into()));
        }
    }
    let log = text(
        db.query_one(stmt("SELECT current_setting('log_timezone') AS zone"))
            .await?,
        "zone",
    )?;
    Ok(match log {
        Some(zone) => (
            zone,
            "log_timezone (the server's timezone setting was not found in a configuration \
             file this role may read; set it explicitly with ALTER DATABASE … SET TimeZone)"
                .into(),
        ),
        None => ("UTC".into(), "no time zone found".into()),
    })
}
