//! Drops the `(load_id, email)` index of `public.staging_followers`: PostgreSQL
//! maintained it row by row during every COPY, which cost more than the load
//! itself. The merge finds what differs in one hash join of the load and
//! `followers` (docs/performance.md#one-pass-finds-what-differs), which needs no index on staging.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub(crate) struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared("DROP INDEX IF EXISTS public.staging_followers_load_id_email_idx")
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared(
                "CREATE INDEX IF NOT EXISTS staging_followers_load_id_email_idx
                    ON public.staging_followers (load_id, email)",
            )
            .await?;
        Ok(())
    }
}
