//! `public.followers`, the mirrored table (docs/sync.md).

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub(crate) struct Migration;

#[derive(DeriveIden)]
enum Followers {
    Table,
    Email,
    FullName,
    ModifiedAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Followers::Table)
                    .if_not_exists()
                    .col(
                        ColumnDef::new(Followers::Email)
                            .string_len(255)
                            .not_null()
                            .primary_key(),
                    )
                    .col(
                        ColumnDef::new(Followers::FullName)
                            .string_len(255)
                            .not_null(),
                    )
                    .col(ColumnDef::new(Followers::ModifiedAt).timestamp().not_null())
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(Followers::Table).to_owned())
            .await
    }
}
