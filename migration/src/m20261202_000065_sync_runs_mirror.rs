//! The mirror of every run (docs/mirrors.md#runs): `sync_runs.mirror` names the
//! mirror a run synced, `followers` (the built-in mirror) for every run before it
//! and for every run of the built-in mirror; the queries of one mirror's runs walk
//! `sync_runs_mirror_started` from its newest end.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub(crate) struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared(
                "ALTER TABLE etl_info_schema.sync_runs
                    ADD COLUMN IF NOT EXISTS mirror text NOT NULL DEFAULT 'followers';
                 CREATE INDEX IF NOT EXISTS sync_runs_mirror_started
                     ON etl_info_schema.sync_runs (mirror, started_at);",
            )
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared(
                "DROP INDEX IF EXISTS etl_info_schema.sync_runs_mirror_started;
                 ALTER TABLE etl_info_schema.sync_runs DROP COLUMN IF EXISTS mirror;",
            )
            .await?;
        Ok(())
    }
}
