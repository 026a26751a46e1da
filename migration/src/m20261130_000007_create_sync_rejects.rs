//! `etl_info_schema.sync_rejects`: each run's rejected lines (line number, reason,
//! the line's text cut to a bounded length), for `followers-etl rejects`. Rows
//! belong to their run: deleting a `sync_runs` row (retention) deletes its rejects.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub(crate) struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared(
                "CREATE TABLE IF NOT EXISTS etl_info_schema.sync_rejects (
                    load_id uuid NOT NULL
                        REFERENCES etl_info_schema.sync_runs (load_id) ON DELETE CASCADE,
                    line_no bigint NOT NULL,
                    reason text NOT NULL,
                    raw_line text NOT NULL,
                    PRIMARY KEY (load_id, line_no)
                )",
            )
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared("DROP TABLE IF EXISTS etl_info_schema.sync_rejects")
            .await?;
        Ok(())
    }
}
