//! `etl_info_schema.table_status` (the old service's table, plus the hash and load of
//! the last successful sync) and `etl_info_schema.sync_runs` (the run records).

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub(crate) struct Migration;

#[derive(DeriveIden)]
enum TableStatus {
    Table,
    Id,
    TableName,
    LastActivity,
    ContentHash,
    LoadId,
}

#[derive(DeriveIden)]
enum SyncRuns {
    Table,
    LoadId,
    Trigger,
    File,
    ContentHash,
    StartedAt,
    FinishedAt,
    Outcome,
    RowsRead,
    Inserted,
    Updated,
    Deleted,
    Unchanged,
    Rejected,
    Duplicates,
    Error,
}

fn schema() -> Alias {
    Alias::new("etl_info_schema")
}

fn count(col: SyncRuns) -> ColumnDef {
    ColumnDef::new(col)
        .big_integer()
        .not_null()
        .default(0)
        .to_owned()
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        db.execute_unprepared("CREATE SCHEMA IF NOT EXISTS etl_info_schema")
            .await?;
        // The old service may have created table_status already (without our extra
        // columns): create it if missing, then add what is missing.
        manager
            .create_table(
                Table::create()
                    .table((schema(), TableStatus::Table))
                    .if_not_exists()
                    .col(
                        ColumnDef::new(TableStatus::Id)
                            .integer()
                            .not_null()
                            .auto_increment()
                            .primary_key(),
                    )
                    .col(
                        ColumnDef::new(TableStatus::TableName)
                            .string_len(64)
                            .not_null()
                            .unique_key(),
                    )
                    .col(ColumnDef::new(TableStatus::LastActivity).timestamp().null())
                    .to_owned(),
            )
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table((schema(), TableStatus::Table))
                    .add_column_if_not_exists(
                        ColumnDef::new(TableStatus::ContentHash)
                            .string_len(64)
                            .null(),
                    )
                    .add_column_if_not_exists(ColumnDef::new(TableStatus::LoadId).uuid().null())
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table((schema(), SyncRuns::Table))
                    .if_not_exists()
                    .col(
                        ColumnDef::new(SyncRuns::LoadId)
                            .uuid()
                            .not_null()
                            .primary_key(),
                    )
                    .col(ColumnDef::new(SyncRuns::Trigger).string_len(16).not_null())
                    .col(ColumnDef::new(SyncRuns::File).text().not_null())
                    .col(ColumnDef::new(SyncRuns::ContentHash).string_len(64).null())
                    .col(ColumnDef::new(SyncRuns::StartedAt).timestamp().not_null())
                    .col(ColumnDef::new(SyncRuns::FinishedAt).timestamp().null())
                    .col(ColumnDef::new(SyncRuns::Outcome).string_len(16).not_null())
                    .col(count(SyncRuns::RowsRead))
                    .col(count(SyncRuns::Inserted))
                    .col(count(SyncRuns::Updated))
                    .col(count(SyncRuns::Deleted))
                    .col(count(SyncRuns::Unchanged))
                    .col(count(SyncRuns::Rejected))
                    .col(count(SyncRuns::Duplicates))
                    .col(ColumnDef::new(SyncRuns::Error).text().null())
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .if_not_exists()
                    .name("sync_runs_started_at_idx")
                    .table((schema(), SyncRuns::Table))
                    .col(SyncRuns::StartedAt)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared(
                "DROP TABLE IF EXISTS etl_info_schema.sync_runs;
                 ALTER TABLE etl_info_schema.table_status
                    DROP COLUMN IF EXISTS content_hash, DROP COLUMN IF EXISTS load_id",
            )
            .await?;
        Ok(())
    }
}
