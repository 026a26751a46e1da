//! Takes over a `followers` table written by the old Go service, which stored
//! emails as they came (case and padding kept), once
//! (docs/sync.md#taking-over-the-old-services-database):
//!
//! 1. the table must have the agent's shape (`followers_shape`), else an error
//!    names every difference and the fix;
//! 2. every stored email gets the rule file rows get (`canonical::emails`, with
//!    `email_rule`: the agent's
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
//!    takeover, in the clock the column holds (`followers_shape::modified_at_clock`), and `email` and `modified_at` become NOT NULL.
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
pub(crate) struct Migration;

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
        if crate::followers_shape::leave_alone(db).await? {
            return Ok(());
        }
        crate::followers_shape::check(db).await?;

        let done = crate::canonical::emails(db, crate::canonical::Invalid::Stop).await?;
        // In the clock the column holds (the old service's local time, or UTC).
        let zone = crate::followers_shape::modified_at_clock(db).await?.zone;
        let dated = exec(
            db,
            "UPDATE public.followers SET modified_at = (now() AT TIME ZONE $1::text) WHERE modified_at IS NULL",
            vec![zone.into()],
        )
        .await?;
        exec(
            db,
            "ALTER TABLE public.followers ALTER COLUMN email SET NOT NULL,
                                          ALTER COLUMN modified_at SET NOT NULL",
            vec![],
        )
        .await?;
        if done.merged + done.rewritten + dated > 0 {
            tracing::warn!(
                rewritten = done.rewritten,
                merged = done.merged,
                merged_into = done.merged_into,
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
