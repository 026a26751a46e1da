//! `sync_runs.refusal_key`: what a refused run remembers (docs/sync.md#refusals-and-approvals).
//! The content hash of the refused file together with the settings its verdict
//! depended on (`MAX_REJECTS`, `MAX_DELETE_RATIO`, `MAX_UPDATE_RATIO`); while the
//! newest decisive run is a refusal with the key a run computes, that run skips
//! the file without reading it.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub(crate) struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared(
                "ALTER TABLE etl_info_schema.sync_runs ADD COLUMN IF NOT EXISTS refusal_key text",
            )
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared(
                "ALTER TABLE etl_info_schema.sync_runs DROP COLUMN IF EXISTS refusal_key",
            )
            .await?;
        Ok(())
    }
}
