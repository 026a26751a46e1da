//! `etl_info_schema.table_status`: the built-in mirror's last sync or revert
//! (the old service's table: one row, `table_name = 'followers'`). Written
//! through the entity by `runs::mark_synced`; these are the statements beside it.

/// Records the write counter's value the merge or revert saw (in its
/// transaction: docs/sync.md#edits-outside-the-agent).
pub(crate) const RECORD: &str = "UPDATE etl_info_schema.table_status
    SET foreign_writes = etl_info_schema.foreign_writes() WHERE table_name = 'followers'";

/// The file and content hash of the run the status of table `$1` names, when
/// that run's outcome is `$2` (`reverted`): what that revert holds back.
pub(crate) const HELD_BACK: &str =
    "SELECT r.file, r.content_hash FROM etl_info_schema.table_status t
               JOIN etl_info_schema.sync_runs r ON r.load_id = t.load_id
              WHERE t.table_name = $1 AND r.outcome = $2";

/// Points the status of table `$3` at the revert `$1`, holding back the
/// content hash `$2`.
pub(crate) const REVERTED: &str = "UPDATE etl_info_schema.table_status
            SET last_activity = (now() AT TIME ZONE 'UTC'), content_hash = $2, load_id = $1
          WHERE table_name = $3";
