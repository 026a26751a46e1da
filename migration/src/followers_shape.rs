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
pub async fn check(db: &impl ConnectionTrait) -> Result<(), DbErr> {
    let problems = problems(db).await?;
    if problems.is_empty() {
        Ok(())
    } else {
        Err(DbErr::Migration(message(&problems)))
    }
}
