//! `etl_info_schema.sync_runs`: one record per run of every mirror (`mirror`
//! names it: docs/mirrors.md#runs). The records written through the entity
//! (`runs.rs`: start, finish, recover) are SeaORM's; these are the statements
//! that entity cannot say. `runs.rs`, `pipeline/journal.rs`, `pipeline/revert.rs`
//! and `pipeline/merge.rs` bind and run them.

/// Sets the run `$1`'s `refusal_key` to `$2` while its outcome is `$3`.
pub(crate) const SET_REFUSAL_KEY: &str =
    "UPDATE etl_info_schema.sync_runs SET refusal_key = $2 WHERE load_id = $1 AND outcome = $3";

/// Marks the runs `$2` (an array) undone by the revert `$1`.
pub(crate) const MARK_UNDONE: &str =
    "UPDATE etl_info_schema.sync_runs SET reverted_by = $1 WHERE load_id = ANY($2)";

/// The newest decisive run of mirror `$2` (`load_id`, `error`) and whether it
/// refused with the key `$1` (`stands`).
pub(crate) const STANDING_REFUSAL: &str =
    "SELECT load_id, error, outcome = 'refused' AND refusal_key IS NOT DISTINCT FROM $1 AS stands
               FROM etl_info_schema.sync_runs
              WHERE outcome IN ('synced', 'refused', 'failed') AND mirror = $2
              ORDER BY started_at DESC, load_id DESC LIMIT 1";

/// Stores the run `$2`'s stage durations (`$1`, JSON text).
pub(crate) const RECORD_STAGES: &str =
    "UPDATE etl_info_schema.sync_runs SET stages = $1::jsonb WHERE load_id = $2";

/// The run of mirror `$2` just beyond the newest `$1` (`started_at`, `load_id`).
pub(crate) const BEYOND_COUNT: &str =
    "SELECT started_at, load_id FROM etl_info_schema.sync_runs WHERE mirror = $2
                 ORDER BY started_at DESC, load_id DESC OFFSET $1 LIMIT 1";

/// Deletes up to `$4` runs of mirror `$5` started before `$1` or at or before
/// (`$2`, `$3`), oldest first, with their journal rows, except the runs the
/// retention keeps (`runs::prune_of`); how many (`deleted`).
pub(crate) const PRUNE: &str = "WITH gone AS (
                  DELETE FROM etl_info_schema.sync_runs WHERE load_id IN (
                    SELECT r.load_id FROM etl_info_schema.sync_runs r
                    WHERE r.mirror = $5
                      AND (r.started_at < $1 OR (r.started_at, r.load_id) <= ($2, $3))
                      AND r.outcome <> 'running'
                      AND r.load_id NOT IN (SELECT t.load_id FROM etl_info_schema.table_status t
                                            WHERE t.load_id IS NOT NULL)
                      AND r.load_id NOT IN (SELECT m.last_load_id FROM etl_info_schema.mirror_status m
                                            WHERE m.last_load_id IS NOT NULL)
                      AND r.load_id IS DISTINCT FROM (
                          SELECT s.load_id FROM etl_info_schema.sync_runs s
                          WHERE s.outcome = 'synced' AND s.mirror = $5
                          ORDER BY s.started_at DESC LIMIT 1)
                      AND r.load_id IS DISTINCT FROM (
                          SELECT d.load_id FROM etl_info_schema.sync_runs d
                          WHERE d.outcome IN ('synced', 'refused', 'failed') AND d.mirror = $5
                          ORDER BY d.started_at DESC LIMIT 1)
                    ORDER BY r.started_at LIMIT $4)
                  RETURNING load_id, journaled),
                journal AS (
                  DELETE FROM etl_info_schema.sync_journal j USING gone g
                   WHERE j.load_id = g.load_id AND g.journaled IS NOT NULL)
                SELECT count(*) AS deleted FROM gone";

/// How many runs of the built-in mirror still hold a journal (`n`).
pub(crate) const JOURNALED_RUNS: &str = "SELECT count(*) AS n FROM etl_info_schema.sync_runs
              WHERE journaled IS NOT NULL AND mirror = 'followers'";

/// The runs of mirror `$2` matching `condition` (which may use `$3`), newest
/// first, at most `$1`: every column of the entity and `stages` as text.
pub(crate) fn runs_where(condition: &str) -> String {
    format!(
        "SELECT load_id, trigger, file, content_hash, started_at, finished_at, outcome,
                    rows_read, inserted, updated, deleted, unchanged, rejected, duplicates,
                    error, journaled, filled, reverted_by, mirror, stages::text AS stages
             FROM etl_info_schema.sync_runs WHERE mirror = $2 AND ({condition})
             ORDER BY started_at DESC, load_id DESC LIMIT $1"
    )
}

/// Whether the run `$1` is recorded with outcome `$2` (1 or 0).
pub(crate) const HAS_OUTCOME: &str =
    "SELECT count(*) FROM etl_info_schema.sync_runs WHERE load_id = $1 AND outcome = $2";

/// Records on the run `$1` how many journal rows it holds (`$2`) and whether
/// it filled an empty table (`$3`).
pub(crate) const SEAL: &str =
    "UPDATE etl_info_schema.sync_runs SET journaled = $2, filled = $3 WHERE load_id = $1";

/// Gives the run `$1` the next place in the commit order (`commit_seq`).
pub(crate) const ORDER: &str = "UPDATE etl_info_schema.sync_runs
            SET commit_seq = (SELECT coalesce(max(commit_seq), 0) + 1 FROM etl_info_schema.sync_runs)
          WHERE load_id = $1";

/// Records the transaction id that wrote the run `$1`'s rows (`write_xid`):
/// the transaction's own, or when it filled an empty table (`$2`) its rows'
/// `xmin`, widened with the top transaction's epoch.
pub(crate) const MARK_XID: &str = "UPDATE etl_info_schema.sync_runs SET write_xid = (
           SELECT (top + (coalesce(x, top % 4294967296) - top % 4294967296 + 4294967296) % 4294967296)::text::xid8
             FROM (SELECT pg_current_xact_id()::text::bigint AS top,
                          CASE WHEN $2 THEN (SELECT xmin::text::bigint FROM public.followers LIMIT 1) END AS x) t)
          WHERE load_id = $1";

/// The built-in mirror's newest synced run not reverted yet (`load_id`).
pub(crate) const LAST_REVERTIBLE: &str = "SELECT load_id FROM etl_info_schema.sync_runs
                      WHERE outcome = 'synced' AND reverted_by IS NULL AND mirror = 'followers'
                      ORDER BY commit_seq DESC NULLS LAST, started_at DESC, load_id DESC LIMIT 1";

/// The built-in mirror's run `$1`: `outcome`, `reverted_by`, `commit_seq`.
pub(crate) const REVERT_TARGET: &str =
    "SELECT outcome, reverted_by, commit_seq FROM etl_info_schema.sync_runs
              WHERE load_id = $1 AND mirror = 'followers'";

/// The built-in mirror's synced runs not reverted yet from commit `$1` on,
/// newest first, locked, each with the journal rows it holds (`found`).
pub(crate) const TO_UNDO: &str = "SELECT r.load_id, r.started_at, r.file, r.trigger, r.content_hash, r.journaled, r.filled,
                    r.write_xid::text AS write_xid,
                    (SELECT count(*) FROM etl_info_schema.sync_journal j WHERE j.load_id = r.load_id)::bigint AS found
               FROM etl_info_schema.sync_runs r
              WHERE r.outcome = 'synced' AND r.reverted_by IS NULL AND r.commit_seq >= $1
                AND r.mirror = 'followers'
              ORDER BY r.commit_seq DESC
                FOR UPDATE OF r";

/// Names on the revert `$1`'s record the file (`$2`) it holds back and its
/// content hash (`$3`).
pub(crate) const DESCRIBE: &str =
    "UPDATE etl_info_schema.sync_runs SET file = $2, content_hash = $3 WHERE load_id = $1";

/// Records how many journal rows (`$2`, NULL: the journal off) the synced run
/// `$1` of a configured mirror holds.
pub(crate) const SET_JOURNALED: &str =
    "UPDATE etl_info_schema.sync_runs SET journaled = $2 WHERE load_id = $1";

/// The outcome of mirror `$2`'s run `$1` and the revert that undid it.
pub(crate) const OUTCOME_OF: &str = "SELECT outcome, reverted_by FROM etl_info_schema.sync_runs
  WHERE load_id = $1 AND mirror = $2";

/// Marks failed (`$1`, at `$2`) every run still `running` of a configured
/// mirror (not `$3`, the built-in one) into the table `$4`, whatever the
/// mirror was called then, or of the mirror `$5` when recorded before runs
/// kept their table.
pub(crate) const RECOVER_TABLE: &str = "UPDATE etl_info_schema.sync_runs
    SET outcome = $1, finished_at = $2,
        error = 'interrupted: the agent stopped during this run; nothing of it was merged'
  WHERE outcome = 'running' AND mirror <> $3
    AND (table_name = $4 OR (table_name IS NULL AND mirror = $5))";

/// Records the table (`$2`) of a configured mirror's run `$1`.
pub(crate) const SET_TABLE: &str =
    "UPDATE etl_info_schema.sync_runs SET table_name = $2 WHERE load_id = $1";
