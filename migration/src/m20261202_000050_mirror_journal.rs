//! The storage of generic mirrors (docs/mirrors.md#storage):
//! `etl_info_schema.mirror_journal`, what every sync of a mirror changed, one row
//! per changed row, its key and its before and after states as `jsonb` of the
//! configured columns (any set of columns fits one table); and the schema
//! `etl_mirror_staging`, where each mirror's UNLOGGED staging table lives
//! (created per run by the agent, its columns those of the mirror's definition).
//! Indexed by `load_id` only, as `sync_journal` (revert reads one load; `history`
//! scans).

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub(crate) struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared(
                "CREATE SCHEMA IF NOT EXISTS etl_mirror_staging;
                 CREATE TABLE IF NOT EXISTS etl_info_schema.mirror_journal (
                    load_id uuid NOT NULL,
                    mirror text NOT NULL,
                    op char(1) NOT NULL CHECK (op IN ('i', 'u', 'd')),
                    key jsonb NOT NULL,
                    before jsonb,
                    after jsonb
                 );
                 CREATE INDEX IF NOT EXISTS mirror_journal_load_id_idx
                    ON etl_info_schema.mirror_journal (load_id);",
            )
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared(
                "DROP TABLE IF EXISTS etl_info_schema.mirror_journal;
                 DROP SCHEMA IF EXISTS etl_mirror_staging CASCADE;",
            )
            .await?;
        Ok(())
    }
}
