//! `etl_info_schema.sync_journal`: what each run of the built-in mirror changed
//! in `followers`, one row per changed follower (docs/operations.md#journal).
//! The merge's journaled writes (each a data-modifying CTE that also inserts
//! the rows it changed), the revert's (undo and unfill, journaled too), its
//! drift check, the journal's retention and one follower's history.
//! `pipeline/journal.rs` and `pipeline/merge.rs` bind and run them.

use super::followers;

const JOURNAL: &str = "etl_info_schema.sync_journal";

/// `merge`'s update step, journaled: `followers::UPDATE` (the rows `diff`
/// found renamed and still as it read them, same `xmin`), journaling the old
/// name and `modified_at` the diff read, which are therefore the ones
/// overwritten. `$1` the zone of `modified_at` (the plain write's), `$2` the load.
pub(crate) fn update() -> String {
    super::journaled(
        followers::UPDATE,
        "f.email, d.old_name, d.full_name AS new_name, d.old_modified_at, d.old_xmin",
        JOURNAL,
        "load_id, action, email, old_name, new_name, old_modified_at, old_xmin",
        "$2, 'update', email, old_name, new_name, old_modified_at, old_xmin",
    )
}

/// `merge`'s insert step, journaled: `followers::INSERT`, journaling the email
/// and the name inserted (a revert removes the row if it still has that name).
/// `$1` the zone of `modified_at` (the plain write's), `$2` the load.
pub(crate) fn insert() -> String {
    super::journaled(
        followers::INSERT,
        "email, full_name",
        JOURNAL,
        "load_id, action, email, new_name",
        "$2, 'insert', email, full_name",
    )
}

/// `merge`'s delete step, journaled: `followers::DELETE`, journaling what the
/// deleted rows held. `$1` the protected emails (the plain write's), `$2` the load.
pub(crate) fn delete() -> String {
    super::journaled(
        followers::DELETE,
        "f.email, f.full_name, f.modified_at, d.old_xmin",
        JOURNAL,
        "load_id, action, email, old_name, old_modified_at, old_xmin",
        "$2, 'delete', email, full_name, modified_at, old_xmin",
    )
}

/// The agent's own writes: each run that wrote `followers` (synced runs and
/// reverts) by the transaction id that wrote its rows (`write_xid`), within the
/// last 2^31 transactions (older ids may have wrapped around).
const AGENT: &str = "agent AS (
  SELECT r.load_id, xid(r.write_xid) AS x, r.outcome = 'reverted' AS is_revert,
         r.journaled IS NOT NULL AS journaled
    FROM etl_info_schema.sync_runs r
   WHERE r.write_xid IS NOT NULL AND r.outcome IN ('synced', 'reverted')
     AND pg_current_xact_id()::text::numeric - r.write_xid::text::numeric < 2147483648)";

/// Whether the row version of follower `email` whose `xmin` is `x` is the
/// agent's: written by a sync, or put back by a revert (whose journal is kept)
/// from a version that was itself the agent's (`foreign_origin` false).
fn agent_origin(email: &str, x: &str) -> String {
    format!(
        "EXISTS (SELECT 1 FROM agent a WHERE a.x = {x}
                   AND (NOT a.is_revert OR (a.journaled AND EXISTS (
                        SELECT 1 FROM {JOURNAL} jr
                         WHERE jr.load_id = a.load_id AND jr.email = {email}
                           AND jr.foreign_origin IS FALSE))))"
    )
}

/// The runs a revert undoes, newest first, as `$2` of the statements below. The
/// net effect per follower is its state before the OLDEST of these runs that
/// touched it. When the runs reach back to a first sync (`$3` is true), the
/// followers whose oldest change replaced a row the agent wrote are left out:
/// `unfill` removes them (the table was empty before that sync).
fn oldest() -> String {
    format!(
        "WITH runs AS (SELECT load_id, ord FROM unnest($2::uuid[]) WITH ORDINALITY AS r(load_id, ord)),
  {AGENT},
  all_oldest AS (SELECT DISTINCT ON (j.email) j.email, j.action, j.old_name, j.old_modified_at, j.old_xmin
               FROM {JOURNAL} j JOIN runs USING (load_id)
              ORDER BY j.email, runs.ord DESC),
  oldest AS (SELECT o.*, NOT {origin} AS foreign_origin FROM all_oldest o
              WHERE NOT $3::boolean OR o.action = 'insert' OR NOT {origin})",
        origin = agent_origin("o.email", "o.old_xmin")
    )
}

/// Followers whose current state is not what the NEWEST of the runs left: the
/// table changed outside the agent, so a revert would not be exact.
pub(crate) const DRIFT: &str =
    "WITH runs AS (SELECT load_id, ord FROM unnest($1::uuid[]) WITH ORDINALITY AS r(load_id, ord)),
  newest AS (SELECT DISTINCT ON (j.email) j.email, j.action, j.new_name
               FROM etl_info_schema.sync_journal j JOIN runs USING (load_id)
              ORDER BY j.email, runs.ord ASC)
SELECT n.email, n.action, n.new_name, f.full_name, count(*) OVER ()::bigint AS drifted
  FROM newest n LEFT JOIN public.followers f ON f.email = n.email
 WHERE CASE n.action WHEN 'delete' THEN f.email IS NOT NULL
                     WHEN 'update' THEN f.email IS NULL OR f.full_name IS DISTINCT FROM n.new_name
                     ELSE f.email IS NULL
                          OR (n.new_name IS NOT NULL AND f.full_name IS DISTINCT FROM n.new_name) END
 ORDER BY n.email LIMIT 3";

/// Undo inserts: followers whose oldest change was their insert are removed.
pub(crate) fn undo_inserts() -> String {
    format!(
        "{}, changed AS (
  DELETE FROM public.followers f USING oldest o
   WHERE o.action = 'insert' AND f.email = o.email
  RETURNING f.email, f.full_name, f.modified_at, f.xmin)
INSERT INTO {JOURNAL} (load_id, action, email, old_name, old_modified_at, old_xmin)
SELECT $1, 'delete', email, full_name, modified_at, xmin FROM changed",
        oldest()
    )
}

/// Undo renames (and deletes followed by a re-insert): the old name and
/// `modified_at` come back on rows that exist. The journal marks a row put back
/// from a version another session wrote (`foreign_origin`).
pub(crate) fn undo_renames() -> String {
    format!(
        "{}, changed AS (
  UPDATE public.followers f SET full_name = o.old_name, modified_at = o.old_modified_at
    FROM (SELECT o.email, o.old_name, o.old_modified_at, o.foreign_origin, c.full_name AS cur_name,
                 c.modified_at AS cur_modified_at, c.xmin AS cur_xmin
            FROM oldest o JOIN public.followers c ON c.email = o.email
           WHERE o.action <> 'insert') o
   WHERE f.email = o.email AND (f.full_name, f.modified_at) IS DISTINCT FROM (o.old_name, o.old_modified_at)
  RETURNING f.email, o.cur_name, o.old_name, o.cur_modified_at, o.cur_xmin, o.foreign_origin)
INSERT INTO {JOURNAL} (load_id, action, email, old_name, new_name, old_modified_at, old_xmin, foreign_origin)
SELECT $1, 'update', email, cur_name, old_name, cur_modified_at, cur_xmin, foreign_origin FROM changed",
        oldest()
    )
}

/// Undo deletes: followers that existed before the runs and are absent now come
/// back with their old name and `modified_at`.
pub(crate) fn undo_deletes() -> String {
    format!(
        "{}, changed AS (
  INSERT INTO public.followers (email, full_name, modified_at)
  SELECT o.email, o.old_name, o.old_modified_at FROM oldest o
   WHERE o.action <> 'insert'
     AND NOT EXISTS (SELECT 1 FROM public.followers f WHERE f.email = o.email)
  RETURNING email, full_name)
INSERT INTO {JOURNAL} (load_id, action, email, new_name, foreign_origin)
SELECT $1, 'insert', c.email, c.full_name, o.foreign_origin FROM changed c JOIN oldest o USING (email)",
        oldest()
    )
}

/// Removes what the agent wrote when a revert reaches back to before a first
/// sync (`pipeline/journal.rs`, `unfill`): `$1` the revert, `$2` the later runs
/// (newest first), `$3` true.
pub(crate) fn unfill() -> String {
    format!(
        "{oldest}, changed AS (
  DELETE FROM public.followers f
   WHERE (NOT EXISTS (SELECT 1 FROM all_oldest o WHERE o.email = f.email) AND {current})
      OR f.email IN (SELECT o.email FROM all_oldest o WHERE o.action = 'insert' OR {origin})
  RETURNING f.email, f.full_name, f.modified_at, f.xmin)
INSERT INTO {JOURNAL} (load_id, action, email, old_name, old_modified_at, old_xmin)
SELECT $1, 'delete', email, full_name, modified_at, xmin FROM changed",
        oldest = oldest(),
        current = agent_origin("f.email", "f.xmin"),
        origin = agent_origin("o.email", "o.old_xmin"),
    )
}

/// Whether the fill's transaction id `$1` (`xid8` as text) is more than 2^31
/// transactions old.
pub(crate) const FILL_TOO_OLD: &str =
    "SELECT pg_current_xact_id()::text::numeric - $1::xid8::text::numeric > 2147483647";

/// Drops the journal of the runs beyond the newest `$1` journaled runs or
/// older than `$2` days (and marks them so: `journaled` NULL).
pub(crate) const PRUNE: &str = "WITH keep AS (
               SELECT load_id FROM etl_info_schema.sync_runs WHERE journaled IS NOT NULL
                ORDER BY commit_seq DESC NULLS LAST, started_at DESC LIMIT $1),
             dropped AS (
               UPDATE etl_info_schema.sync_runs SET journaled = NULL
                WHERE journaled IS NOT NULL
                  AND (load_id NOT IN (SELECT load_id FROM keep)
                       OR started_at < (now() AT TIME ZONE 'UTC') - make_interval(days => $2))
               RETURNING load_id)
             DELETE FROM etl_info_schema.sync_journal j USING dropped d WHERE j.load_id = d.load_id";

/// Drops the journal rows of runs older than the oldest run kept.
pub(crate) const PRUNE_ORPHANS: &str = "DELETE FROM etl_info_schema.sync_journal
              WHERE load_id < (SELECT load_id FROM etl_info_schema.sync_runs ORDER BY load_id LIMIT 1)";

/// Every journaled change of follower `$1` and every fill, ordered by commit
/// (`old_modified_at` as an instant, its wall time read in zone `$2`).
pub(crate) const HISTORY: &str =
    "SELECT r.load_id, r.started_at, coalesce(r.finished_at, r.started_at) AS at, r.file,
                    r.trigger, r.reverted_by, j.action, j.old_name, j.new_name,
                    j.old_modified_at AT TIME ZONE $2 AS old_modified_at, r.commit_seq
               FROM etl_info_schema.sync_journal j
               JOIN etl_info_schema.sync_runs r ON r.load_id = j.load_id
              WHERE j.email = $1 AND r.journaled IS NOT NULL
             UNION ALL
             SELECT r.load_id, r.started_at, coalesce(r.finished_at, r.started_at), r.file,
                    r.trigger, r.reverted_by, 'fill', NULL, NULL, NULL::timestamptz, r.commit_seq
               FROM etl_info_schema.sync_runs r
              WHERE r.filled AND r.journaled IS NOT NULL
              ORDER BY 11 NULLS FIRST, 2, 1";

#[cfg(test)]
mod tests {
    use super::*;

    /// The highest `$n` in `sql`.
    fn last_parameter(sql: &str) -> usize {
        sql.match_indices('$')
            .filter_map(|(i, _)| {
                let digits: String = sql[i + 1..]
                    .chars()
                    .take_while(char::is_ascii_digit)
                    .collect();
                digits.parse().ok()
            })
            .max()
            .unwrap_or(0)
    }

    #[test]
    fn each_journaled_write_is_its_plain_write_verbatim_with_the_load_as_the_next_parameter() {
        for (plain, journaled) in [
            (followers::UPDATE, update()),
            (followers::INSERT, insert()),
            (followers::DELETE, delete()),
        ] {
            assert!(
                journaled.contains(plain),
                "{journaled}\n does not contain the plain write\n{plain}"
            );
            assert!(!plain.contains("RETURNING"), "{plain}");
            // The journaled form binds the plain one's parameters, then the load.
            assert_eq!(last_parameter(plain), 1, "{plain}");
            assert_eq!(last_parameter(&journaled), 2, "{journaled}");
            assert!(journaled.contains("SELECT $2, '"), "{journaled}");
            assert!(journaled.contains("INSERT INTO etl_info_schema.sync_journal"));
        }
    }
}
