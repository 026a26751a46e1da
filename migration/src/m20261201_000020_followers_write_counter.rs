//! The change counter of `followers` (docs/sync.md#edits-outside-the-agent): a
//! sequence bumped once per statement that writes the table and is not the
//! agent's own merge or revert (those run `SET LOCAL followers_etl.own_write =
//! 'on'`), and `table_status.foreign_writes`, the counter's value the last sync
//! or revert saw. The trigger itself is installed (and re-installed, should the
//! table be replaced) at every start by `followers_etl::pipeline::drift`, since
//! the role that applies the migrations may not hold TRIGGER on `followers`.
//!
//! A sequence, not a counter row: `nextval` takes no lock and is not rolled
//! back, so the application's writers never queue on it, and a rolled-back
//! foreign write still counts (the safe side: one extra comparison). Both
//! functions are SECURITY DEFINER with a pinned `search_path`, so roles without
//! privileges on the sequence can still write `followers` and read the counter.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub(crate) struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared(
                "CREATE SEQUENCE IF NOT EXISTS etl_info_schema.followers_foreign_writes;
                 CREATE OR REPLACE FUNCTION etl_info_schema.count_foreign_write() RETURNS trigger
                    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
                 BEGIN
                    IF current_setting('followers_etl.own_write', true) IS DISTINCT FROM 'on' THEN
                       PERFORM nextval('etl_info_schema.followers_foreign_writes');
                    END IF;
                    RETURN NULL;
                 END $$;
                 CREATE OR REPLACE FUNCTION etl_info_schema.foreign_writes() RETURNS bigint
                    LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
                    SELECT CASE WHEN is_called THEN last_value ELSE 0 END
                      FROM etl_info_schema.followers_foreign_writes $$;
                 ALTER TABLE etl_info_schema.table_status
                    ADD COLUMN IF NOT EXISTS foreign_writes bigint;",
            )
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared(
                "DROP TRIGGER IF EXISTS followers_etl_foreign_writes ON public.followers;
                 DROP FUNCTION IF EXISTS etl_info_schema.count_foreign_write();
                 DROP FUNCTION IF EXISTS etl_info_schema.foreign_writes();
                 DROP SEQUENCE IF EXISTS etl_info_schema.followers_foreign_writes;
                 ALTER TABLE etl_info_schema.table_status DROP COLUMN IF EXISTS foreign_writes;",
            )
            .await?;
        Ok(())
    }
}
