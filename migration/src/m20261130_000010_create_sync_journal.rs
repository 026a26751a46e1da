//! `etl_info_schema.sync_journal`: what every synced run (and every revert)
//! changed in `followers`, one row per changed follower, keyed by `load_id`
//! (docs/operations.md#journal). `sync_runs` gains `journaled` (the
//! journal rows the run holds; NULL when it has none: not journaled or pruned),
//! `filled` (the run was the first sync into an empty table, journaled without
//! rows) and `reverted_by` (the revert that undid the run). No index on `email`:
//! journal rows are written in load order, and an index on `email` would
//! dirty one random page per changed follower (after a checkpoint, a full-page
//! image each); `history` scans the journal instead.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub(crate) struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared(
                "CREATE TABLE IF NOT EXISTS etl_info_schema.sync_journal (
                    load_id uuid NOT NULL,
                    action text NOT NULL CHECK (action IN ('insert', 'update', 'delete')),
                    email text NOT NULL,
                    old_name text,
                    new_name text,
                    old_modified_at timestamp,
                    PRIMARY KEY (load_id, email)
                 );
                 ALTER TABLE etl_info_schema.sync_runs
                    ADD COLUMN IF NOT EXISTS journaled bigint,
                    ADD COLUMN IF NOT EXISTS filled boolean NOT NULL DEFAULT false,
                    ADD COLUMN IF NOT EXISTS reverted_by uuid;",
            )
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared(
                "DROP TABLE IF EXISTS etl_info_schema.sync_journal;
                 ALTER TABLE etl_info_schema.sync_runs
                    DROP COLUMN IF EXISTS journaled, DROP COLUMN IF EXISTS filled,
                    DROP COLUMN IF EXISTS reverted_by",
            )
            .await?;
        Ok(())
    }
}
