//! `sync_runs.stages`: every run's per-stage durations in seconds, as a JSON object
//! (`{"hash": 0.01, "read_and_stage": 2.5, ...}`; docs/sync.md#runs-and-their-retention), and a
//! partial index of the runs that synced, were refused or failed, so `status` finds
//! the newest of them without walking past every skipped run.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub(crate) struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared(
                "ALTER TABLE etl_info_schema.sync_runs ADD COLUMN IF NOT EXISTS stages jsonb;
                 CREATE INDEX IF NOT EXISTS sync_runs_decisive_started_at_idx
                    ON etl_info_schema.sync_runs (started_at)
                    WHERE outcome IN ('synced', 'refused', 'failed')",
            )
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared(
                "DROP INDEX IF EXISTS etl_info_schema.sync_runs_decisive_started_at_idx;
                 ALTER TABLE etl_info_schema.sync_runs DROP COLUMN IF EXISTS stages",
            )
            .await?;
        Ok(())
    }
}
