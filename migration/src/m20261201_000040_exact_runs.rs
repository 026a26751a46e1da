//! Exact runs (docs/sync.md#readers-and-writers-during-a-run; "Journal, revert and
//! history"): `sync_runs.commit_seq` orders the runs that changed `followers`
//! (synced runs and reverts) by commit, taken inside their transaction while it
//! holds the writer lock on `followers`, so two agents or a clock step cannot
//! reorder them; earlier runs are numbered in start order. `sync_runs.write_xid`
//! is the transaction id (`xid8`) that wrote a run's rows (for a first sync into
//! an empty table, the subtransaction of its insert), so a row whose `xmin` is one
//! of these was last written by the agent. `sync_journal.old_xmin` is, for a
//! renamed or deleted follower, the `xmin` of the row the run replaced;
//! `sync_journal.foreign_origin` marks a row a revert put back whose original
//! was written by another session. With these a revert to before a first sync
//! deletes only what the agent wrote and leaves what others wrote.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub(crate) struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared(
                "ALTER TABLE etl_info_schema.sync_runs
                    ADD COLUMN IF NOT EXISTS commit_seq bigint,
                    ADD COLUMN IF NOT EXISTS write_xid xid8;
                 ALTER TABLE etl_info_schema.sync_journal
                    ADD COLUMN IF NOT EXISTS old_xmin xid,
                    ADD COLUMN IF NOT EXISTS foreign_origin boolean;
                 WITH o AS (
                   SELECT load_id, row_number() OVER (ORDER BY started_at, load_id) AS n
                     FROM etl_info_schema.sync_runs
                    WHERE outcome IN ('synced', 'reverted') AND commit_seq IS NULL)
                 UPDATE etl_info_schema.sync_runs r SET commit_seq = o.n FROM o WHERE r.load_id = o.load_id;
                 CREATE UNIQUE INDEX IF NOT EXISTS sync_runs_commit_seq
                     ON etl_info_schema.sync_runs (commit_seq) WHERE commit_seq IS NOT NULL;",
            )
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared(
                "DROP INDEX IF EXISTS etl_info_schema.sync_runs_commit_seq;
                 ALTER TABLE etl_info_schema.sync_journal
                    DROP COLUMN IF EXISTS old_xmin, DROP COLUMN IF EXISTS foreign_origin;
                 ALTER TABLE etl_info_schema.sync_runs
                    DROP COLUMN IF EXISTS commit_seq, DROP COLUMN IF EXISTS write_xid",
            )
            .await?;
        Ok(())
    }
}
