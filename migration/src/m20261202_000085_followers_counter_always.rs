//! The write counter of `followers` enabled ALWAYS
//! (docs/sync.md#edits-outside-the-agent). Earlier versions installed its
//! trigger `followers_etl_foreign_writes` as `CREATE TRIGGER` makes it, enabled
//! ORIGIN (`tgenabled = 'O'`), which does not fire under
//! `session_replication_role = replica` (a logical-replication apply worker, a
//! CDC applier, a restore tool that sets it): those writes were not counted,
//! and an unchanged file was skipped although the table differed. This enables
//! such a trigger ALWAYS and forgets the count the last sync saw (writes it
//! missed are unknown), so the next unchanged file is compared once.
//!
//! A trigger someone disabled (`D`) or set to replica only (`R`) is left so.
//! Enabling needs the table's ownership: a role without it (a `followers` the
//! old service's role owns) changes nothing here; the agent's start-up
//! (`followers_etl::pipeline::drift`) tries again and says so, and the table
//! is then treated as one without a counter (the `VERIFY_EVERY` comparison).

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub(crate) struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared(
                // The ALTER's lock waits for every open write on followers,
                // and every later write would queue behind it: at most 5 s
                // (the block's subtransaction undoes the setting on error).
                "DO $$
                 DECLARE
                   before text := current_setting('lock_timeout');
                 BEGIN
                   PERFORM set_config('lock_timeout', '5s', true);
                   IF EXISTS (SELECT 1 FROM pg_catalog.pg_trigger
                               WHERE tgrelid = to_regclass('public.followers')
                                 AND tgname = 'followers_etl_foreign_writes' AND tgenabled = 'O') THEN
                     ALTER TABLE public.followers ENABLE ALWAYS TRIGGER followers_etl_foreign_writes;
                     UPDATE etl_info_schema.table_status SET foreign_writes = NULL
                      WHERE table_name = 'followers';
                   END IF;
                   PERFORM set_config('lock_timeout', before, true);
                 EXCEPTION WHEN insufficient_privilege OR lock_not_available THEN
                   RAISE NOTICE 'the write counter on followers stays enabled ORIGIN (start-up tries again): %', SQLERRM;
                 END $$",
            )
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared(
                "DO $$ BEGIN
                   IF EXISTS (SELECT 1 FROM pg_catalog.pg_trigger
                               WHERE tgrelid = to_regclass('public.followers')
                                 AND tgname = 'followers_etl_foreign_writes' AND tgenabled = 'A') THEN
                     ALTER TABLE public.followers ENABLE TRIGGER followers_etl_foreign_writes;
                   END IF;
                 END $$",
            )
            .await?;
        Ok(())
    }
}
