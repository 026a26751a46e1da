//! Takes over a `followers` table written by the old Go service, which stored
//! emails as they came (case and padding kept), once (README, "Taking over the old
//! service's database"):
//!
//! 1. the table must have the agent's shape (`followers_shape`), else an error
//!    names every difference and the fix;
//! 2. every stored email gets the rule file rows get (`email_rule`: trimmed,
//!    lower-cased); one that is not a valid address after it (or NULL) stops the
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

use crate::email_rule::{ascii_canonical_sql, canonical, invalid_reason_sql, is_ascii_sql};
use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::{ConnectionTrait, DbBackend, Statement, Value};

#[derive(DeriveMigrationName)]
pub struct Migration;

/// Invalid stored emails shown in the error (all are counted).
const SHOWN: usize = 20;

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

        // The canonical form of every stored email: set-based SQL for ASCII values
        // (exact), Rust's rule for the others (few; no locale/ICU dependence).
        let others: Vec<String> = db
            .query_all(stmt(
                &format!(
                    "SELECT DISTINCT email FROM public.followers WHERE NOT {}",
                    is_ascii_sql("email")
                ),
                vec![],
            ))
            .await?
            .iter()
            .map(|r| r.try_get("", "email"))
            .collect::<Result<_, _>>()?;
        let canonicals: Vec<String> = others.iter().map(|e| canonical(e)).collect();
        exec(
            db,
            "CREATE TEMP TABLE fetl_takeover_map (stored text, canonical text) ON COMMIT DROP",
            vec![],
        )
        .await?;
        exec(
            db,
            "INSERT INTO fetl_takeover_map SELECT * FROM unnest($1::text[], $2::text[])",
            vec![others.into(), canonicals.into()],
        )
        .await?;
        exec(
            db,
            &format!(
                "CREATE TEMP TABLE fetl_takeover ON COMMIT DROP AS
                 SELECT c.*,
                        row_number() OVER (PARTITION BY c.canonical
                          ORDER BY c.modified_at DESC NULLS LAST,
                                   (c.stored = c.canonical) DESC, c.stored COLLATE \"C\") AS rank,
                        count(*) OVER (PARTITION BY c.canonical) AS copies,
                        {reason} AS invalid
                   FROM (SELECT f.email::text AS stored, f.full_name::text AS full_name,
                                f.modified_at,
                                COALESCE(m.canonical, {ascii}) AS canonical
                           FROM public.followers f
                           LEFT JOIN fetl_takeover_map m ON m.stored = f.email) c",
                reason = invalid_reason_sql("c.canonical"),
                ascii = ascii_canonical_sql("f.email"),
            ),
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
                        Some(s) => format!("{s:?} ({why})"),
                        None => why,
                    })
                })
                .collect::<Result<_, DbErr>>()?;
            return Err(DbErr::Migration(format!(
                "public.followers holds {total} email(s) that are not valid addresses once trimmed \
                 and lower-cased as file rows are (exactly one '@' with text on both sides, no white \
                 space or control character, at most 255 characters), so they cannot be taken over: \
                 {}{}. Fix: correct or delete those rows (UPDATE/DELETE public.followers WHERE email \
                 = '…'), then start again. Nothing was changed.",
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
                "followers takeover: stored emails canonicalised (trimmed, lower-cased) as file rows are"
            );
        }
        Ok(())
    }

    async fn down(&self, _manager: &SchemaManager) -> Result<(), DbErr> {
        // Canonical emails stay canonical: the original spellings are gone.
        Ok(())
    }
}
