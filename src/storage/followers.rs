//! `public.followers`, the built-in mirror's table (the old service's): the
//! merge's diff and writes, the first sync's fill and key rebuild, the writer
//! lock and who blocks it, counts, and the write counter's trigger
//! (docs/sync.md#edits-outside-the-agent). Parameters are documented on each
//! statement; `pipeline/merge.rs`, `revert.rs` and `drift.rs` bind and run them.

/// The keys of the load and of `followers` that differ, with what to do about
/// each (`insert`, `update`, `delete`), filled by `DIFF` in one pass; dropped
/// with the transaction. It lives in the session's temporary schema: no WAL.
const DIFF_TABLE: &str = "CREATE TEMPORARY TABLE merge_diff (
    email text NOT NULL, full_name text, old_name text, old_modified_at timestamp, old_xmin xid,
    action text NOT NULL
  ) ON COMMIT DROP";

/// `DIFF_TABLE`, with the memory its hash join may use (`DIFF_WORK_MEM`).
pub(crate) fn diff_table() -> String {
    format!("SET LOCAL work_mem = '{DIFF_WORK_MEM}'; {DIFF_TABLE}")
}

/// Fills `merge_diff` in one pass over the load `$1` and `followers` (a hash
/// full join), keeping only the keys that differ.
pub(crate) const DIFF: &str =
    "INSERT INTO merge_diff (email, full_name, old_name, old_modified_at, old_xmin, action)
 SELECT coalesce(s.email, f.email), s.full_name, f.full_name, f.modified_at, f.xmin,
        CASE WHEN f.email IS NULL THEN 'insert' WHEN s.email IS NULL THEN 'delete' ELSE 'update' END
   FROM (SELECT email, full_name FROM public.staging_followers WHERE load_id = $1) s
   FULL JOIN public.followers f ON f.email = s.email
  WHERE s.email IS NULL OR f.email IS NULL OR f.full_name IS DISTINCT FROM s.full_name";

/// New keys, absent followers, all differing keys, and the followers the delete
/// must remove (absent and not protected: `$1`).
pub(crate) const DIFF_COUNTS: &str = "SELECT count(*) FILTER (WHERE action = 'insert')::bigint,
        count(*) FILTER (WHERE action = 'delete')::bigint, count(*)::bigint,
        count(*) FILTER (WHERE action = 'delete' AND email <> ALL($1::text[]))::bigint
   FROM merge_diff";

/// The merge's update: the renamed followers still as the diff read them (same
/// `xmin`); `$1` the zone of `modified_at`.
pub(crate) const UPDATE: &str = "UPDATE public.followers f
    SET full_name = d.full_name, modified_at = (now() AT TIME ZONE $1::text)
   FROM merge_diff d
  WHERE d.action = 'update' AND f.email = d.email AND f.xmin = d.old_xmin";

/// The merge's insert: the emails new to `followers`; `$1` the zone of `modified_at`.
pub(crate) const INSERT: &str = "INSERT INTO public.followers (email, full_name, modified_at)
 SELECT d.email, d.full_name, (now() AT TIME ZONE $1::text) FROM merge_diff d WHERE d.action = 'insert'";

/// The merge's delete: the followers absent from the load, still as the diff
/// read them, and not protected by a rejected row (`$1`, the emails).
pub(crate) const DELETE: &str = "DELETE FROM public.followers f
  USING merge_diff d
  WHERE d.action = 'delete' AND f.email = d.email AND f.xmin = d.old_xmin
    AND f.email <> ALL($1::text[])";

/// The first sync: `followers` is empty, every row of the load is new.
pub(crate) const INSERT_ALL: &str = "INSERT INTO public.followers (email, full_name, modified_at)
 SELECT s.email, s.full_name, (now() AT TIME ZONE $2::text)
   FROM public.staging_followers s WHERE s.load_id = $1";

/// The first sync's primary key, when it can be rebuilt after the insert and
/// the table is provably plain, so that dropping and re-adding the key loses
/// nothing (docs/sync.md#readers-and-writers-during-a-run): the constraint's name
/// and the definition of its index, if the table is an ordinary table (not
/// partitioned, not a partition) the role may alter, in no publication, with the
/// default replica identity, its index not clustered and in the default
/// tablespace, nothing depending on the constraint or its index (a view, a
/// foreign key), and no comment or security label on either. Otherwise the
/// rows are inserted with the key in place.
pub(crate) const FILL_KEY: &str = "SELECT c.conname::text, pg_get_indexdef(c.conindid)
   FROM pg_constraint c
   JOIN pg_class t ON t.oid = c.conrelid
   JOIN pg_class i ON i.oid = c.conindid
   JOIN pg_index x ON x.indexrelid = c.conindid
  WHERE c.conrelid = 'public.followers'::regclass AND c.contype = 'p' AND NOT c.condeferrable
    AND t.relkind = 'r' AND NOT t.relispartition AND t.relreplident = 'd'
    AND NOT x.indisclustered AND i.reltablespace = 0
    AND pg_has_role(t.relowner, 'USAGE')
    AND NOT EXISTS (SELECT 1 FROM pg_publication p WHERE p.puballtables)
    AND NOT EXISTS (SELECT 1 FROM pg_publication_rel p WHERE p.prrelid = t.oid)
    AND NOT EXISTS (SELECT 1 FROM pg_publication_namespace p WHERE p.pnnspid = t.relnamespace)
    AND NOT EXISTS (SELECT 1 FROM pg_depend d
                     WHERE d.refclassid IN ('pg_constraint'::regclass, 'pg_class'::regclass)
                       AND d.refobjid IN (c.oid, c.conindid)
                       AND NOT (d.classid = 'pg_class'::regclass AND d.objid = c.conindid)
                       AND NOT (d.classid = 'pg_constraint'::regclass AND d.objid = c.oid))
    AND NOT EXISTS (SELECT 1 FROM pg_description d WHERE d.objoid IN (c.oid, c.conindid))
    AND NOT EXISTS (SELECT 1 FROM pg_seclabel l WHERE l.objoid IN (c.oid, c.conindid))
    AND NOT EXISTS (SELECT 1 FROM pg_constraint r WHERE r.confrelid = t.oid AND r.contype = 'f')";

/// How long the first sync waits for the exclusive lock that rebuilding the
/// primary key needs before it inserts with the key in place instead.
const FILL_LOCK_TIMEOUT: &str = "1s";

/// The sessions that hold a lock on `followers` (or one of its partitions) other
/// than a plain read, or any lock on staging: who a lock wait of the merge was
/// waiting for. Read after the merge rolled back, on another connection.
pub(crate) const BLOCKERS: &str = "SELECT a.pid, coalesce(nullif(a.application_name, ''), '(none)') AS app,
        coalesce(a.usename::text, '?') AS usr, coalesce(a.state, '?') AS state,
        coalesce(to_char(a.xact_start AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS') || ' UTC', '?') AS xact_start,
        coalesce(to_char(a.query_start AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS') || ' UTC', '?') AS query_start
   FROM pg_stat_activity a
  WHERE a.pid <> pg_backend_pid() AND a.pid IN (
        SELECT l.pid FROM pg_locks l
         WHERE l.granted AND l.locktype = 'relation'
           AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
           AND ((l.relation = 'public.followers'::regclass
                 OR l.relation IN (SELECT relid FROM pg_partition_tree('public.followers'::regclass)))
                AND l.mode <> 'AccessShareLock'
                OR l.relation = 'public.staging_followers'::regclass))
  ORDER BY a.xact_start NULLS LAST, a.pid LIMIT 3";

/// Memory for sorting the first sync's primary key (a server setting, for this
/// transaction only): 1M rows sort in memory.
const FILL_SORT_MEM: &str = "128MB";

/// Memory for the diff's hash join (for this transaction only): the keys and
/// names of 1M followers fit in one batch (with PostgreSQL's default
/// `hash_mem_multiplier` of 2); more spill to disk in batches.
const DIFF_WORK_MEM: &str = "64MB";

fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// The savepoint the first sync's key rebuild runs in (`pipeline/merge.rs`, `fill`).
pub(crate) const FILL_SAVEPOINT: &str = "SAVEPOINT fill";
pub(crate) const FILL_RELEASE: &str = "RELEASE SAVEPOINT fill";
pub(crate) const FILL_ROLLBACK: &str = "ROLLBACK TO SAVEPOINT fill";

/// Drops the primary key `name` (as `FILL_KEY` read it) under the exclusive
/// lock, waited for at most `FILL_LOCK_TIMEOUT`.
pub(crate) fn drop_key(name: &str) -> String {
    let name = quote_ident(name);
    format!(
        "SET LOCAL lock_timeout = '{FILL_LOCK_TIMEOUT}';
         LOCK TABLE public.followers IN ACCESS EXCLUSIVE MODE;
         ALTER TABLE public.followers DROP CONSTRAINT {name}"
    )
}

/// Builds the index `index` (its definition, as `FILL_KEY` read it) and makes
/// it the primary key `name` again.
pub(crate) fn add_key(name: &str, index: &str) -> String {
    let name = quote_ident(name);
    format!(
        "SET LOCAL maintenance_work_mem = '{FILL_SORT_MEM}'; {index};
         ALTER TABLE public.followers ADD CONSTRAINT {name} PRIMARY KEY USING INDEX {name}"
    )
}

/// The writer lock of a merge or a revert (`pipeline/merge.rs`, `lock_writers`).
pub(crate) const LOCK_WRITERS: &str = "LOCK TABLE public.followers IN SHARE ROW EXCLUSIVE MODE";

/// Whether the table is empty (0 or 1).
pub(crate) const IS_EMPTY: &str = "SELECT count(*) FROM (SELECT 1 FROM public.followers LIMIT 1) t";

/// How many followers the table holds (`n`).
pub(crate) const COUNT: &str = "SELECT count(*) AS n FROM public.followers";

/// Makes the update and delete probe the primary key once per changed key
/// (a few changes: `pipeline/merge.rs`, `PROBE_BELOW`).
pub(crate) const PROBE_KEYS: &str =
    "SET LOCAL enable_hashjoin = off; SET LOCAL enable_mergejoin = off";

/// How many followers the table holds and up to three of their emails (a
/// revert to before a first sync names the ones it left).
pub(crate) const LEFT: &str = "SELECT count(*)::bigint,
                    coalesce((SELECT array_agg(email) FROM (SELECT email FROM public.followers ORDER BY email LIMIT 3) e), '{}')
               FROM public.followers";

/// Whether follower `$1` is present (a row, or none).
pub(crate) const PRESENT: &str = "SELECT 1 FROM public.followers WHERE email = $1";

/// Installs the trigger, enabled ALWAYS, when it is missing (first start after
/// the migration, or a replaced table), and enables ALWAYS one enabled ORIGIN
/// (an earlier version's, or a dump of one restored; migration
/// `m20261202_000085` converts the one it finds); a table whose counter was
/// missing or blind to replica-role writes is then unverified. A trigger
/// someone disabled (`D`) or set to replica only (`R`) is left so (it counts
/// as none). Enabling ALWAYS needs the table's ownership, and at most 5 s of
/// waiting for the table's writers (else it is tried again at the next start).
pub(crate) const ENSURE: &str = "DO $$
DECLARE
  state \"char\" := (SELECT tgenabled FROM pg_catalog.pg_trigger
                      WHERE tgrelid = 'public.followers'::regclass
                        AND tgname = 'followers_etl_foreign_writes');
BEGIN
  -- Its lock waits for every open write on followers, and later writes queue
  -- behind it: at most 5 s, for this statement only.
  PERFORM set_config('lock_timeout', '5s', true);
  IF state IS NULL THEN
    CREATE TRIGGER followers_etl_foreign_writes
      AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON public.followers
      FOR EACH STATEMENT EXECUTE FUNCTION etl_info_schema.count_foreign_write();
  END IF;
  IF state IS NULL OR state = 'O' THEN
    ALTER TABLE public.followers ENABLE ALWAYS TRIGGER followers_etl_foreign_writes;
    UPDATE etl_info_schema.table_status SET foreign_writes = NULL WHERE table_name = 'followers';
  END IF;
END $$";

/// Whether the trigger counts (enabled ALWAYS, on a table
/// with no partitions or inheritance children and that is no partition or
/// child itself: a statement-level trigger fires only for statements on its
/// own table), the counter now, what the last sync or revert saw, and whether
/// the last comparison is older than `$1` seconds.
pub(crate) const CHECK: &str = "SELECT
    EXISTS (SELECT 1 FROM pg_catalog.pg_trigger
             WHERE tgrelid = to_regclass('public.followers')
               AND tgname = 'followers_etl_foreign_writes' AND tgenabled = 'A')
      AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_inherits
                       WHERE inhparent = to_regclass('public.followers')
                          OR inhrelid = to_regclass('public.followers')),
    etl_info_schema.foreign_writes(),
    t.foreign_writes,
    coalesce((now() AT TIME ZONE 'UTC') - t.last_activity >= make_interval(secs => $1), true)
  FROM (SELECT 1) one
  LEFT JOIN etl_info_schema.table_status t ON t.table_name = 'followers'";
