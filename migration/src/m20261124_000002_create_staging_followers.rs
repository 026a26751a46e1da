//! `public.staging_followers`, where a run COPYs its rows under its `load_id`.
//! UNLOGGED (sea-query cannot say that, hence raw SQL): its rows only live while a
//! run is in flight, and a crash must not cost WAL for them. `line_no` keeps the
//! CSV line of each row so duplicates resolve to the last occurrence in SQL,
//! without the agent holding every email in memory. A staging table left by the
//! old Go service (three columns) is replaced: its rows are transient by design.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub(crate) struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        db.execute_unprepared("DROP TABLE IF EXISTS public.staging_followers")
            .await?;
        db.execute_unprepared(
            "CREATE UNLOGGED TABLE public.staging_followers (
                email     VARCHAR(255) NOT NULL,
                full_name VARCHAR(255) NOT NULL,
                load_id   UUID         NOT NULL,
                line_no   BIGINT       NOT NULL
            )",
        )
        .await?;
        db.execute_unprepared(
            "CREATE INDEX IF NOT EXISTS staging_followers_load_id_email_idx
                ON public.staging_followers (load_id, email)",
        )
        .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared("DROP TABLE IF EXISTS public.staging_followers")
            .await?;
        Ok(())
    }
}
