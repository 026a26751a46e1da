//! The table of a configured mirror's run (docs/mirrors.md#runs):
//! `sync_runs.table_name`, the mirror's table as the configuration spells it
//! (`crm.subscribers`), NULL for the built-in mirror and for runs recorded
//! before it. The run lock is the table's, so the interrupted runs a run
//! recovers are its table's, whatever the mirror was called then (a mirror
//! renamed in the configuration, the same table); `sync_runs_running_table`
//! finds them.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub(crate) struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared(
                "ALTER TABLE etl_info_schema.sync_runs ADD COLUMN IF NOT EXISTS table_name text;
                 CREATE INDEX IF NOT EXISTS sync_runs_running_table
                     ON etl_info_schema.sync_runs (table_name) WHERE outcome = 'running';",
            )
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared(
                "DROP INDEX IF EXISTS etl_info_schema.sync_runs_running_table;
                 ALTER TABLE etl_info_schema.sync_runs DROP COLUMN IF EXISTS table_name;",
            )
            .await?;
        Ok(())
    }
}
