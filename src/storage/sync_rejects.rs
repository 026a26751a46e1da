//! `etl_info_schema.sync_rejects`: each run's rejected lines
//! (docs/sync.md#rejects-report), written and read by `rejects.rs`.

/// Stores rejects of the run `$1`: the lines `$2`, reasons `$3` and raw
/// lines `$4` (arrays of one batch); a line stored already is kept.
pub(crate) const INSERT: &str =
    "INSERT INTO etl_info_schema.sync_rejects (load_id, line_no, reason, raw_line)
             SELECT $1, * FROM unnest($2::bigint[], $3::text[], $4::text[])
             ON CONFLICT (load_id, line_no) DO NOTHING";

/// The run of mirror `$2` a `rejects` command reports on (`load_id`,
/// `outcome`, `file`, `rejected`): the run `$1`, or when `$1` is NULL the
/// newest run that read its file.
pub(crate) const RUN: &str =
    "SELECT load_id, outcome, file, rejected FROM etl_info_schema.sync_runs
         WHERE mirror = $2 AND CASE WHEN $1::uuid IS NULL
                    THEN outcome NOT IN ('skipped', 'running') AND trigger <> 'revert'
                         AND (stages IS NULL OR stages ? 'read_and_stage')
                    ELSE load_id = $1 END
         ORDER BY started_at DESC, load_id DESC LIMIT 1";

/// The stored rejects of the run `$1` by line (`line_no`, `reason`, `raw_line`).
pub(crate) const OF_RUN: &str = "SELECT line_no, reason, raw_line FROM etl_info_schema.sync_rejects
         WHERE load_id = $1 ORDER BY line_no";
