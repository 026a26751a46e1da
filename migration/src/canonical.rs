//! Stored followers in the form file rows get
//! (docs/sync.md#taking-over-the-old-services-database): emails through the agent's `Email::parse`, names
//! through its `FullName::parse` (`email_rule`), computed in Rust and sent back
//! as arrays, the changes set-based. Used by the takeover migration (000004)
//! and by 000011, which applies the stricter rules of a later version to tables
//! taken over (or filled) before it.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::{ConnectionTrait, DbBackend, Statement, Value};

/// Invalid stored emails shown in the error or the warning (all are counted).
const SHOWN: i64 = 20;
/// Stored values per round trip through a rule.
const BATCH: usize = 10_000;

fn stmt(sql: &str, values: Vec<Value>) -> Statement {
    Statement::from_sql_and_values(DbBackend::Postgres, sql, values)
}

async fn exec(db: &impl ConnectionTrait, sql: &str, values: Vec<Value>) -> Result<u64, DbErr> {
    Ok(db.execute(stmt(sql, values)).await?.rows_affected())
}

/// What to do with stored emails that are not valid by the rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Invalid {
    /// Stop with an error naming them: nothing changes (the takeover).
    Stop,
    /// Leave them as they are, with a warning naming them: rows the agent stored
    /// under an earlier, laxer rule. The next sync treats them as absent.
    Keep,
}

/// What `emails` did.
#[derive(Debug, Default)]
pub(crate) struct Emails {
    pub rewritten: u64,
    pub merged: u64,
    pub merged_into: usize,
}

/// Every stored email in its canonical form; variants of one email become one
/// row (the latest `modified_at` wins, NULL oldest; on a tie the row already
/// canonical, then the smallest stored email in byte order), each merge logged.
pub(crate) async fn emails(db: &impl ConnectionTrait, invalid: Invalid) -> Result<Emails, DbErr> {
    map_to_canonical(db).await?;
    rank_variants(db).await?;
    invalid_emails(db, invalid).await?;
    let merged_into = log_merges(db).await?;
    let merged = exec(
        db,
        "DELETE FROM public.followers f USING fetl_takeover t
          WHERE t.rank > 1 AND t.invalid IS NULL AND f.email = t.stored",
        vec![],
    )
    .await?;
    let rewritten = exec(
        db,
        "UPDATE public.followers f SET email = t.canonical FROM fetl_takeover t
          WHERE t.rank = 1 AND t.invalid IS NULL AND f.email = t.stored AND t.stored <> t.canonical",
        vec![],
    )
    .await?;
    // Both migrations may run in one transaction: drop them now, not at commit.
    exec(db, "DROP TABLE fetl_takeover_map, fetl_takeover", vec![]).await?;
    Ok(Emails {
        rewritten,
        merged,
        merged_into,
    })
}

/// Fills `fetl_takeover_map`: the canonical form (or why there is none) of every
/// stored email that is not already canonical; the others map to themselves.
async fn map_to_canonical(db: &impl ConnectionTrait) -> Result<(), DbErr> {
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
    Ok(())
}

/// Builds `fetl_takeover`: every stored row with its canonical email, why it is
/// invalid (if it is), its rank among the variants of its email and their number.
async fn rank_variants(db: &impl ConnectionTrait) -> Result<(), DbErr> {
    // Invalid rows (kept) rank among themselves only and are never touched.
    exec(
        db,
        "CREATE TEMP TABLE fetl_takeover ON COMMIT DROP AS
         SELECT c.*,
                row_number() OVER (PARTITION BY c.canonical, c.invalid IS NULL
                  ORDER BY c.modified_at DESC NULLS LAST,
                           (c.stored = c.canonical) DESC, c.stored COLLATE \"C\") AS rank,
                count(*) OVER (PARTITION BY c.canonical, c.invalid IS NULL) AS copies
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

    Ok(())
}

/// Stops on invalid stored emails or keeps them with a warning naming them
/// (`invalid`).
async fn invalid_emails(db: &impl ConnectionTrait, invalid: Invalid) -> Result<(), DbErr> {
    let found = db
        .query_all(stmt(
            &format!(
                "SELECT stored, invalid, count(*) OVER ()::bigint AS total FROM fetl_takeover
                  WHERE invalid IS NOT NULL ORDER BY stored COLLATE \"C\" NULLS FIRST LIMIT {SHOWN}"
            ),
            vec![],
        ))
        .await?;
    if let Some(first) = found.first() {
        let total: i64 = first.try_get("", "total")?;
        let shown: Vec<String> = found
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
        let more = if total > SHOWN { ", …" } else { "" };
        match invalid {
            Invalid::Stop => {
                return Err(DbErr::Migration(format!(
                    "public.followers holds {total} email(s) that are not valid by the rules file rows \
                     are checked with (docs/sync.md#4-validate), so they cannot be taken \
                     over: {}{more}. Fix: correct or delete those rows (UPDATE/DELETE public.followers \
                     WHERE email = '…'), then start again. Nothing was changed.",
                    shown.join(", "),
                )))
            }
            Invalid::Keep => {
                tracing::warn!(
                    count = total,
                    emails = %format!("{}{more}", shown.join(", ")),
                    "followers: stored email(s) are not valid by the current rules and were left as they are; \
                     the next sync deletes them unless fixed (UPDATE/DELETE public.followers WHERE email = '…')"
                );
            }
        }
    }
    Ok(())
}

/// Logs each email whose variants are merged into one row; returns how many.
async fn log_merges(db: &impl ConnectionTrait) -> Result<usize, DbErr> {
    let groups = db
        .query_all(stmt(
            "SELECT canonical, array_agg(stored ORDER BY rank) AS stored,
                    array_agg(full_name ORDER BY rank) AS names,
                    array_agg(coalesce(modified_at::text, 'NULL') ORDER BY rank) AS modified
               FROM fetl_takeover WHERE copies > 1 AND invalid IS NULL
              GROUP BY canonical ORDER BY canonical",
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
    Ok(groups.len())
}

/// Every stored `full_name` in the form the reader gives a file's name (trimmed:
/// the old service stored `'Cy '` and `' Dee'` as they came), `modified_at`
/// kept; returns how many changed. Only names that start or end with a
/// character outside printable ASCII go through the rule (a superset of those
/// with surrounding whitespace, decided by code point, not by the server's
/// locale).
pub(crate) async fn names(db: &impl ConnectionTrait) -> Result<u64, DbErr> {
    let rule = crate::email_rule::name_rule()?;
    exec(
        db,
        "DECLARE fetl_takeover_names NO SCROLL CURSOR FOR
         SELECT email::text AS email, full_name::text AS name FROM public.followers
          WHERE full_name <> ''
            AND (ascii(full_name) NOT BETWEEN 33 AND 126
                 OR ascii(right(full_name, 1)) NOT BETWEEN 33 AND 126)",
        vec![],
    )
    .await?;
    let mut changed = 0;
    loop {
        let rows = db
            .query_all(stmt(
                &format!("FETCH {BATCH} FROM fetl_takeover_names"),
                vec![],
            ))
            .await?;
        let (mut emails, mut names) = (Vec::new(), Vec::new());
        for row in &rows {
            let name: String = row.try_get("", "name")?;
            // A name the rule refuses cannot be stored by a file either: left as is.
            if let Ok(canonical) = rule(&name) {
                if canonical != name {
                    emails.push(row.try_get::<String>("", "email")?);
                    names.push(canonical);
                }
            }
        }
        if !emails.is_empty() {
            changed += exec(
                db,
                "UPDATE public.followers f SET full_name = x.n
                   FROM unnest($1::text[], $2::text[]) AS x(e, n) WHERE f.email = x.e",
                vec![emails.into(), names.into()],
            )
            .await?;
        }
        if rows.len() < BATCH {
            break;
        }
    }
    exec(db, "CLOSE fetl_takeover_names", vec![]).await?;
    Ok(changed)
}
