//! Takes over a `followers` table written by the old Go service, which stored
//! emails as they came (case and padding kept), once
//! (docs/sync.md#taking-over-the-old-services-database):
//!
//! 1. the table must have the agent's shape (`followers_shape`), else an error
//!    names every difference and the fix;
//! 2. every stored email gets the rule file rows get (`email_rule`: the agent's
//!    `Email::parse` itself: trimmed, lower-cased, the domain in one IDNA form),
//!    read through a cursor in batches and computed in Rust, the results sent back
//!    as arrays; one that is not a valid address by that rule (or NULL) stops the
//!    migration with the rows and the fix: nothing is guessed or dropped silently;
//! 3. variants of one email (`Ann@X.io`, ` ann@x.io`) become one row: the one with
//!    the latest `modified_at` (NULL counts as oldest), on a tie the one already
//!    stored canonically, then the smallest stored email (byte order). Each merge
//!    is logged with what was dropped, and counted;
//! 4. the survivors' emails are rewritten to the canonical form (`full_name` and
//!    `modified_at` kept; rows already canonical are not touched at all), so the
//!    table's unique key is on canonical emails;
//! 5. a NULL `modified_at` (the old column allowed it) becomes the time of the
//!    takeover (UTC), and `email` and `modified_at` become NOT NULL.
//!
//! sea-orm-migration runs all pending migrations of a Postgres database in ONE
//! transaction (`exec_with_connection` begins it and commits after the last), and
//! `followers_etl::db::migrate` holds the migration advisory lock around it: an
//! error anywhere leaves the table exactly as it was, and two agents starting
//! together canonicalise once. On a database created by the agent this finds
//! nothing to do.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::{ConnectionTrait, DbBackend, Statement, Value};

#[derive(DeriveMigrationName)]
pub struct Migration;

/// Invalid stored emails shown in the error (all are counted).
const SHOWN: usize = 20;
/// Stored emails per round trip through the email rule.
const BATCH: usize = 10_000;

fn stmt(sql: &str, values: Vec<Value>) -> Statement {
    Statement::from_sql_and_values(DbBackend::Postgres, sql, values)
}

async fn exec(db: &impl ConnectionTrait, sql: &str, values: Vec<Value>) -> Result<u64, DbErr> {
    Ok(db.execute(stmt(sql, values)).await?.rows_affected())
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        crate::followers_shape::check(db).await?;

        // The canonical form (or why there is none) of every stored email that is
        // not already canonical; the others map to themselves.
        let rule = crate::email_rule::rule()?;
        exec(
            db,
            "CREATE TEMP TABLE fetl_takeover_map (stored text, canonical text, reason text) ON COMMIT DROP",
            vec![],
        )
        .await?;
        exec(
            db,
            "DECLARE fetl_takeover_emails NO SCROLL CURSOR FOR
             SELECT email::text AS email FROM public.followers WHERE email IS NOT NULL",
            vec![],
        )
        .await?;
        loop {
            let rows = db
                .query_all(stmt(
                    &format!("FETCH {BATCH} FROM fetl_takeover_emails"),
                    vec![],
                ))
                .await?;
            let (mut stored, mut canonical, mut reason) = (Vec::new(), Vec::new(), Vec::new());
            for row in &rows {
                let email: String = row.try_get("", "email")?;
                match rule(&email) {
                    Ok(c) if c == email => continue,
                    // Neither is ever empty: '' stands for "none" (arrays of
                    // Option cannot be bound).
                    Ok(c) => {
                        canonical.push(c);
                        reason.push(String::new());
                    }
                    Err(why) => {
                        canonical.push(String::new());
                        reason.push(why);
                    }
                }
                stored.push(email);
            }
            if !stored.is_empty() {
                exec(
                    db,
                    "INSERT INTO fetl_takeover_map
                     SELECT s, NULLIF(c, ''), NULLIF(r, '')
                       FROM unnest($1::text[], $2::text[], $3::text[]) AS x(s, c, r)",
                    vec![stored.into(), canonical.into(), reason.into()],
                )
                .await?;
            }
            if rows.len() < BATCH {
                break;
            }
        }
        exec(db, "CLOSE fetl_takeover_emails", vec![]).await?;
        exec(
            db,
            "CREATE TEMP TABLE fetl_takeover ON COMMIT DROP AS
             SELECT c.*,
                    row_number() OVER (PARTITION BY c.canonical
                      ORDER BY c.modified_at DESC NULLS LAST,
                               (c.stored = c.canonical) DESC, c.stored COLLATE \"C\") AS rank,
                    count(*) OVER (PARTITION BY c.canonical) AS copies
               FROM (SELECT f.email::text AS stored, f.full_name::text AS full_name, f.modified_at,
                            CASE WHEN m.stored IS NULL THEN f.email::text ELSE m.canonical END
                              AS canonical,
                            CASE WHEN f.email IS NULL THEN 'the email is NULL' ELSE m.reason END
                              AS invalid
                       FROM public.followers f
                       LEFT JOIN fetl_takeover_map m ON m.stored = f.email) c",
            vec![],
        )
        .await?;

        let invalid = db
            .query_all(stmt(
                &format!(
                    "SELECT stored, invalid, count(*) OVER ()::bigint AS total FROM fetl_takeover
                      WHERE invalid IS NOT NULL ORDER BY stored COLLATE \"C\" NULLS FIRST LIMIT {SHOWN}"
                ),
                vec![],
            ))
            .await?;
        if let Some(first) = invalid.first() {
            let total: i64 = first.try_get("", "total")?;
            let shown: Vec<String> = invalid
                .iter()
                .map(|r| {
                    let stored: Option<String> = r.try_get("", "stored")?;
                    let why: String = r.try_get("", "invalid")?;
                    Ok(match stored {
                        Some(s) => format!("{s:?}: {why}"),
                        None => why,
                    })
                })
                .collect::<Result<_, DbErr>>()?;
            return Err(DbErr::Migration(format!(
                "public.followers holds {total} email(s) that are not valid by the rules file rows \
                 are checked with (docs/sync.md#4-validate), so they cannot be taken \
                 over: {}{}. Fix: correct or delete those rows (UPDATE/DELETE public.followers \
                 WHERE email = '…'), then start again. Nothing was changed.",
                shown.join(", "),
                if total as usize > SHOWN { ", …" } else { "" }
            )));
        }

        let groups = db
            .query_all(stmt(
                "SELECT canonical, array_agg(stored ORDER BY rank) AS stored,
                        array_agg(full_name ORDER BY rank) AS names,
                        array_agg(coalesce(modified_at::text, 'NULL') ORDER BY rank) AS modified
                   FROM fetl_takeover WHERE copies > 1 GROUP BY canonical ORDER BY canonical",
                vec![],
            ))
            .await?;
        for group in &groups {
            let email: String = group.try_get("", "canonical")?;
            let stored: Vec<String> = group.try_get("", "stored")?;
            let names: Vec<String> = group.try_get("", "names")?;
            let modified: Vec<String> = group.try_get("", "modified")?;
            let rows: Vec<String> = (0..stored.len())
                .map(|i| format!("{:?} {:?} modified_at={}", stored[i], names[i], modified[i]))
                .collect();
            tracing::warn!(
                %email,
                kept = %rows[0],
                dropped = %rows[1..].join("; "),
                "followers takeover: merged variants of one email into one row (latest modified_at wins)"
            );
        }
        let merged = exec(
            db,
            "DELETE FROM public.followers f USING fetl_takeover t
              WHERE t.rank > 1 AND f.email = t.stored",
            vec![],
        )
        .await?;
        let rewritten = exec(
            db,
            "UPDATE public.followers f SET email = t.canonical FROM fetl_takeover t
              WHERE t.rank = 1 AND f.email = t.stored AND t.stored <> t.canonical",
            vec![],
        )
        .await?;
        let dated = exec(
            db,
            "UPDATE public.followers SET modified_at = (now() AT TIME ZONE 'UTC') WHERE modified_at IS NULL",
            vec![],
        )
        .await?;
        exec(
            db,
            "ALTER TABLE public.followers ALTER COLUMN email SET NOT NULL,
                                          ALTER COLUMN modified_at SET NOT NULL",
            vec![],
        )
        .await?;
        if merged + rewritten + dated > 0 {
            tracing::warn!(
                rewritten,
                merged,
                merged_into = groups.len(),
                null_modified_at = dated,
                "followers takeover: stored emails canonicalised as file rows are (trimmed, lower-cased, one domain form)"
            );
        }
        Ok(())
    }

    async fn down(&self, _manager: &SchemaManager) -> Result<(), DbErr> {
        // Canonical emails stay canonical: the original spellings are gone.
        Ok(())
    }
}
