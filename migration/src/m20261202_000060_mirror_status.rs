//! The run records of generic mirrors (docs/mirrors.md#runs):
//! `etl_info_schema.mirror_status`, one row per mirror (the hash and load of its
//! last sync, so an unchanged file is skipped), and `etl_info_schema.mirror_runs`,
//! one row per sync that merged (its counts, and `reverted_at` once undone), from
//! which `revert` picks the newest run and the journal's retention keeps the
//! newest `JOURNAL_KEEP_RUNS`. Kept apart from the old service's `table_status`
//! (whose `table_name` is `varchar(64)`, too short for `schema.table`).

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub(crate) struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared(
                "CREATE TABLE IF NOT EXISTS etl_info_schema.mirror_status (
                    mirror text PRIMARY KEY,
                    table_name text NOT NULL,
                    last_hash text,
                    last_load_id uuid,
                    synced_at timestamptz
                 );
                 CREATE TABLE IF NOT EXISTS etl_info_schema.mirror_runs (
                    load_id uuid PRIMARY KEY,
                    mirror text NOT NULL,
                    table_name text NOT NULL,
                    file text NOT NULL,
                    content_hash text NOT NULL,
                    finished_at timestamptz NOT NULL DEFAULT now(),
                    rows_read bigint NOT NULL,
                    inserted bigint NOT NULL,
                    updated bigint NOT NULL,
                    deleted bigint NOT NULL,
                    rejected bigint NOT NULL,
                    duplicates bigint NOT NULL,
                    journaled bigint NOT NULL,
                    reverted_at timestamptz
                 );
                 CREATE INDEX IF NOT EXISTS mirror_runs_mirror_idx
                    ON etl_info_schema.mirror_runs (mirror, load_id);",
            )
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared(
                "DROP TABLE IF EXISTS etl_info_schema.mirror_runs;
                 DROP TABLE IF EXISTS etl_info_schema.mirror_status;",
            )
            .await?;
        Ok(())
    }
}
