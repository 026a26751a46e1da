//! Exact runs of generic mirrors (docs/mirrors.md#runs), as the followers run's
//! (migrations `m20261201_000020` and `m20261201_000040`):
//!
//! - `mirror_status.fingerprint`, `table_oid` and `foreign_writes`: what an
//!   unchanged file's skip must also find unchanged (the definition, the table
//!   itself, and the count of writes by others, docs/mirrors.md#skip);
//!   `reverted_load_id`: the table is on the state before that run, whose
//!   content is held back until the file changes.
//! - `etl_info_schema.count_mirror_write()`: the statement-level trigger function
//!   counting writes outside the agent into the table's own sequence (named by
//!   the trigger's argument, `etl_info_schema.mirror_writes_*`; the agent creates
//!   the sequence and installs the trigger when it prepares the table). SECURITY
//!   DEFINER with a pinned `search_path`, as `count_foreign_write`, so the
//!   application's writers need no privilege on the sequence.
//! - `mirror_runs.commit_seq` from `etl_info_schema.mirror_commit_seq`, taken in
//!   the merge's transaction under the table's writer lock: the runs of one
//!   table in commit order (earlier runs are numbered by `finished_at`).
//! - `mirror_runs.fingerprint`: the definition a run merged with; a revert
//!   with another definition could not be exact.
//! - `mirror_runs.journaled` NULL once the run's journal is pruned, and the
//!   indexes the retention and the revert read.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub(crate) struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared(
                "ALTER TABLE etl_info_schema.mirror_status
                    ADD COLUMN IF NOT EXISTS fingerprint text,
                    ADD COLUMN IF NOT EXISTS table_oid oid,
                    ADD COLUMN IF NOT EXISTS foreign_writes bigint,
                    ADD COLUMN IF NOT EXISTS reverted_load_id uuid;
                 CREATE SEQUENCE IF NOT EXISTS etl_info_schema.mirror_commit_seq;
                 ALTER TABLE etl_info_schema.mirror_runs
                    ADD COLUMN IF NOT EXISTS commit_seq bigint,
                    ADD COLUMN IF NOT EXISTS fingerprint text,
                    ALTER COLUMN journaled DROP NOT NULL;
                 WITH o AS (
                   SELECT load_id, row_number() OVER (ORDER BY finished_at, load_id) AS n
                     FROM etl_info_schema.mirror_runs WHERE commit_seq IS NULL)
                 UPDATE etl_info_schema.mirror_runs r SET commit_seq = o.n FROM o WHERE r.load_id = o.load_id;
                 SELECT setval('etl_info_schema.mirror_commit_seq',
                               coalesce((SELECT max(commit_seq) FROM etl_info_schema.mirror_runs), 1),
                               EXISTS (SELECT 1 FROM etl_info_schema.mirror_runs));
                 ALTER TABLE etl_info_schema.mirror_runs ALTER COLUMN commit_seq SET NOT NULL;
                 CREATE UNIQUE INDEX IF NOT EXISTS mirror_runs_commit_seq
                    ON etl_info_schema.mirror_runs (mirror, commit_seq);
                 CREATE INDEX IF NOT EXISTS mirror_runs_journaled
                    ON etl_info_schema.mirror_runs (mirror, commit_seq) WHERE journaled > 0;
                 CREATE OR REPLACE FUNCTION etl_info_schema.count_mirror_write() RETURNS trigger
                    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
                 BEGIN
                    IF current_setting('followers_etl.own_write', true) IS DISTINCT FROM 'on'
                       AND TG_ARGV[0] LIKE 'mirror\\_writes\\_%' THEN
                       PERFORM nextval(('etl_info_schema.' || quote_ident(TG_ARGV[0]))::regclass);
                    END IF;
                    RETURN NULL;
                 END $$;",
            )
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared(
                "DROP FUNCTION IF EXISTS etl_info_schema.count_mirror_write() CASCADE;
                 DROP INDEX IF EXISTS etl_info_schema.mirror_runs_journaled;
                 DROP INDEX IF EXISTS etl_info_schema.mirror_runs_commit_seq;
                 UPDATE etl_info_schema.mirror_runs SET journaled = 0 WHERE journaled IS NULL;
                 ALTER TABLE etl_info_schema.mirror_runs
                    ALTER COLUMN journaled SET NOT NULL, DROP COLUMN IF EXISTS commit_seq,
                    DROP COLUMN IF EXISTS fingerprint;
                 DROP SEQUENCE IF EXISTS etl_info_schema.mirror_commit_seq;
                 ALTER TABLE etl_info_schema.mirror_status
                    DROP COLUMN IF EXISTS fingerprint, DROP COLUMN IF EXISTS table_oid,
                    DROP COLUMN IF EXISTS foreign_writes, DROP COLUMN IF EXISTS reverted_load_id;",
            )
            .await?;
        Ok(())
    }
}
