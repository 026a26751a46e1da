//! The records of a generic mirror's runs (docs/mirrors.md#runs):
//! `etl_info_schema.mirror_status` (one row per mirror: what its last sync or
//! revert left, which an unchanged file's skip checks) and
//! `etl_info_schema.mirror_runs` (one row per sync that merged, in commit order,
//! `commit_seq`), their retention and the journal's; the mirror's run lock and
//! the write counter on its table (docs/mirrors.md#skip), all keyed by the
//! mirror's table.
//!
//! The write counter is the followers' model (docs/sync.md#edits-outside-the-agent):
//! a statement-level trigger on the table, enabled ALWAYS, bumps the table's own
//! sequence once per statement that writes it and is not the agent's merge or
//! revert (those run `SET LOCAL followers_etl.own_write = 'on'` first); the
//! merge and the revert record the sequence's value in
//! `mirror_status.foreign_writes`. It counts only on a table without partitions
//! or inheritance children (a statement on a child never fires the parent's
//! trigger).

use super::{MirrorSql, JOURNAL};
use crate::mirror::MirrorSpec;

/// The run records of every mirror.
pub const RUNS: &str = "etl_info_schema.mirror_runs";
/// One row per mirror.
pub const STATUS: &str = "etl_info_schema.mirror_status";
/// The name of the write counter's trigger on a mirror's table.
pub const COUNTER_TRIGGER: &str = "followers_etl_mirror_writes";

/// A fingerprint of everything in a definition that decides what its table
/// holds for a given file: the table, the key, every column (name, type,
/// `max_length`, nullable, source, rule) and the `modified_column`. A definition
/// whose fingerprint differs from the last sync's never skips an unchanged file.
pub fn definition_fingerprint(spec: &MirrorSpec) -> String {
    let mut text = format!("table {}\nkey", spec.table.sql());
    for k in &spec.key {
        text.push(' ');
        text.push_str(&k.sql());
    }
    for c in &spec.columns {
        text.push_str(&format!(
            "\ncolumn {} {} {:?} nullable={} source={:?} rule={:?}",
            c.name.sql(),
            c.ty.name(),
            c.max_length(),
            c.nullable,
            c.source,
            c.rule
        ));
    }
    if let Some(m) = &spec.modified_column {
        text.push_str(&format!("\nmodified {}", m.sql()));
    }
    blake3::hash(text.as_bytes()).to_hex().to_string()
}

impl MirrorSql<'_> {
    /// The hash of the quoted table name: the run lock, the staging table and
    /// the write counter are keyed by the table (one table has one mirror).
    pub(super) fn table_hash(&self) -> blake3::Hash {
        blake3::hash(self.spec.table.sql().as_bytes())
    }

    /// The mirror's run lock: the two keys of `pg_try_advisory_lock(int4, int4)`,
    /// the first eight bytes of `table_hash` (64 bits: two tables do not meet).
    /// PostgreSQL keeps two-key locks apart from the one-key locks of the
    /// followers run and the migrations (`db::RUN_LOCK`).
    pub fn lock_key(&self) -> (i32, i32) {
        let b = self.table_hash();
        let b = b.as_bytes();
        (
            i32::from_be_bytes([b[0], b[1], b[2], b[3]]),
            i32::from_be_bytes([b[4], b[5], b[6], b[7]]),
        )
    }

    /// Whether the session `$1` (a backend pid) holds the run lock: one row,
    /// `bigint` (0 or 1). Checked inside the merge and the revert, so a run whose
    /// lock session ended (and which another run may have overtaken) never commits.
    pub fn holds_lock(&self) -> String {
        let (k1, k2) = self.lock_key();
        format!(
            "SELECT count(*)::bigint FROM pg_catalog.pg_locks
  WHERE locktype = 'advisory' AND granted AND pid = $1
    AND database = (SELECT oid FROM pg_catalog.pg_database WHERE datname = current_database())
    AND classid = ({k1})::int4::oid AND objid = ({k2})::int4::oid AND objsubid = 2"
        )
    }

    /// The write counter's sequence, unqualified (the trigger's argument).
    fn counter_name(&self) -> String {
        format!("mirror_writes_{}", &self.table_hash().to_hex()[..24])
    }

    /// The write counter's sequence, qualified and quoted.
    pub fn counter_sequence(&self) -> String {
        format!("etl_info_schema.\"{}\"", self.counter_name())
    }

    /// The counter's value now (`bigint`, 0 before the first counted write).
    fn counter_value(&self) -> String {
        format!(
            "coalesce(pg_catalog.pg_sequence_last_value(to_regclass('{}')), 0)",
            self.counter_sequence()
        )
    }

    /// The counter trigger's state on the table `$1` (quoted): one row, its
    /// `tgenabled` as text (`A` always, `O` origin and local only, `R`
    /// replica only, `D` disabled), NULL when there is no such trigger.
    pub fn counter_state(&self) -> String {
        format!(
            "SELECT (SELECT tgenabled::text FROM pg_catalog.pg_trigger
                  WHERE tgrelid = to_regclass($1) AND tgname = '{COUNTER_TRIGGER}')"
        )
    }

    /// Installs the counter (its sequence, then its trigger, enabled ALWAYS) on
    /// the table, which must not have it yet. Then `forget_counter`: the table
    /// is unverified.
    pub fn install_counter(&self) -> String {
        format!(
            "CREATE SEQUENCE IF NOT EXISTS {seq};
CREATE TRIGGER {COUNTER_TRIGGER}
  AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON {table}
  FOR EACH STATEMENT EXECUTE FUNCTION etl_info_schema.count_mirror_write('{name}');
{always}",
            seq = self.counter_sequence(),
            table = self.table(),
            name = self.counter_name(),
            always = self.counter_always()
        )
    }

    /// Enables the counter's trigger ALWAYS (`tgenabled = 'A'`), so that it
    /// also fires under `session_replication_role = replica` (logical
    /// replication's apply, `pg_restore --disable-triggers`, a tool that sets
    /// it); an ORIGIN one (`O`, as `CREATE TRIGGER` makes it, and as earlier
    /// versions left it) misses those writes. Needs the table's ownership.
    /// Then `forget_counter`: writes it missed are unknown.
    pub fn counter_always(&self) -> String {
        format!(
            "ALTER TABLE {} ENABLE ALWAYS TRIGGER {COUNTER_TRIGGER}",
            self.table()
        )
    }

    /// After `install_counter`: the count the last sync saw is unknown (`$1` the mirror).
    pub fn forget_counter(&self) -> String {
        format!("UPDATE {STATUS} SET foreign_writes = NULL WHERE mirror = $1")
    }

    /// What an unchanged file's skip checks, one row for mirror `$1` (`$2` the
    /// quoted table name, `$3` `VERIFY_EVERY` in seconds): the last hash (text,
    /// NULL without a sync), the fingerprint (text), whether the table is the
    /// one the last sync or revert wrote (`boolean`), whether the counter counts
    /// (its trigger enabled ALWAYS, and the table has no partitions nor
    /// inheritance children: the statement-level trigger is on the parent only,
    /// and a write into a child never fires it), the counter now, the count the last sync or revert saw
    /// (NULL: not known), whether that is `VERIFY_EVERY` old or older, and the
    /// run whose content a revert holds back (`uuid`, NULL when none).
    pub fn skip_check(&self) -> String {
        format!(
            "SELECT s.last_hash, s.fingerprint,
       coalesce(s.table_oid = to_regclass($2)::oid, false),
       EXISTS (SELECT 1 FROM pg_catalog.pg_trigger
                WHERE tgrelid = to_regclass($2) AND tgname = '{COUNTER_TRIGGER}'
                  AND tgenabled = 'A')
         AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_inherits
                          WHERE inhparent = to_regclass($2) OR inhrelid = to_regclass($2)),
       {counter}::bigint,
       s.foreign_writes,
       coalesce(now() - s.synced_at >= make_interval(secs => $3), true),
       s.reverted_load_id
  FROM (SELECT 1) one LEFT JOIN {STATUS} s ON s.mirror = $1",
            counter = self.counter_value()
        )
    }

    /// The run's record, in the merge's transaction (after the table's writer
    /// lock: `commit_seq` then orders the table's runs by commit). `$1` load,
    /// `$2` mirror, `$3` table, `$4` file, `$5` hash, `$6`..`$12` rows read,
    /// inserted, updated, deleted, rejected, duplicates, journaled, `$13` the
    /// definition's fingerprint.
    pub fn record_run(&self) -> String {
        format!(
            "INSERT INTO {RUNS} (load_id, mirror, table_name, file, content_hash,
    rows_read, inserted, updated, deleted, rejected, duplicates, journaled, fingerprint, commit_seq)
 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13,
         nextval('etl_info_schema.mirror_commit_seq'))"
        )
    }

    /// The mirror's status after a sync, in its transaction: `$1` mirror, `$2`
    /// table (as shown), `$3` hash, `$4` load, `$5` fingerprint, `$6` the table
    /// quoted (for its oid); the counter now; no longer on a reverted state.
    pub fn record_status(&self) -> String {
        format!(
            "INSERT INTO {STATUS} (mirror, table_name, last_hash, last_load_id, synced_at,
    fingerprint, table_oid, foreign_writes, reverted_load_id)
 VALUES ($1, $2, $3, $4, now(), $5, to_regclass($6)::oid, {counter}, NULL)
 ON CONFLICT (mirror) DO UPDATE SET table_name = EXCLUDED.table_name,
    last_hash = EXCLUDED.last_hash, last_load_id = EXCLUDED.last_load_id,
    synced_at = EXCLUDED.synced_at, fingerprint = EXCLUDED.fingerprint,
    table_oid = EXCLUDED.table_oid, foreign_writes = EXCLUDED.foreign_writes,
    reverted_load_id = NULL",
            counter = self.counter_value()
        )
    }

    /// A revertible run's row, newest first in commit order, each locked (a
    /// concurrent prune of its journal waits, or has committed and `journaled`
    /// reads NULL): `load_id`, `journaled` (`bigint`, NULL once pruned), the
    /// journal rows kept of it (`bigint`), the fingerprint of the definition it
    /// merged with (text), the rows it changed (`bigint`), its file (text),
    /// when it finished (`timestamptz`), and from its `sync_runs` record (NULL
    /// without one, a library call) when it started (`timestamp`, UTC) and its
    /// trigger (text).
    fn revertible(&self, condition: &str, limit: &str) -> String {
        format!(
            "SELECT r.load_id, r.journaled,
       (SELECT count(*) FROM {JOURNAL} j WHERE j.load_id = r.load_id AND j.mirror = r.mirror)::bigint,
       r.fingerprint, (r.inserted + r.updated + r.deleted)::bigint, r.file, r.finished_at,
       s.started_at, s.trigger
  FROM {RUNS} r LEFT JOIN etl_info_schema.sync_runs s ON s.load_id = r.load_id
 WHERE r.mirror = $1 AND r.reverted_at IS NULL AND {condition}
 ORDER BY r.commit_seq DESC{limit}
   FOR UPDATE OF r"
        )
    }

    /// The newest run of mirror `$1` (in commit order) that changed the table
    /// and is not reverted (`revert --last`), as `revertible_since` gives it.
    pub fn newest_revertible(&self) -> String {
        self.revertible("r.inserted + r.updated + r.deleted > 0", " LIMIT 1")
    }

    /// Every run of mirror `$1` not reverted yet from the newest back to and
    /// including the one whose `commit_seq` is `$2` (`revert LOAD_ID`), newest
    /// first in commit order: `load_id`, `journaled`, the journal rows kept,
    /// the fingerprint, the rows changed, the file, `finished_at`, and the
    /// `sync_runs` record's `started_at` and `trigger`.
    pub fn revertible_since(&self) -> String {
        self.revertible("r.commit_seq >= $2", "")
    }

    /// The run `$2` of mirror `$1`: its `commit_seq` (`bigint`) and when it was
    /// reverted (`timestamptz`, NULL: not reverted). No row: no run of the
    /// mirror merged with that load.
    pub fn run_of(&self) -> String {
        format!("SELECT commit_seq, reverted_at FROM {RUNS} WHERE mirror = $1 AND load_id = $2")
    }

    /// What a revert of mirror `$1` holds back (the content of its last sync,
    /// `last_hash`, which stays): one row, the hash and the file of the run
    /// `mirror_status` names (text each, NULL when unknown).
    pub fn held_back(&self) -> String {
        format!(
            "SELECT s.last_hash, r.file FROM {STATUS} s
   LEFT JOIN {RUNS} r ON r.load_id = s.last_load_id
  WHERE s.mirror = $1"
        )
    }

    /// The outcome of the run `$1`'s `sync_runs` record (text; no row: the run
    /// has none, a library call of `sync_mirror`), its row locked until the
    /// merge's transaction ends: the merge finishes it as synced only while it
    /// is still `running` (another agent's recovery may have marked it
    /// interrupted), and that recovery then waits for the merge's end.
    pub const RUN_OUTCOME: &'static str =
        "SELECT outcome FROM etl_info_schema.sync_runs WHERE load_id = $1 FOR UPDATE";

    /// Marks the runs `$1` (`uuid[]`) reverted.
    pub fn mark_reverted(&self) -> String {
        format!("UPDATE {RUNS} SET reverted_at = now() WHERE load_id = ANY($1::uuid[])")
    }

    /// The mirror `$1`'s status after a revert of the run `$2` (`$3` the table
    /// quoted): on a reverted
    /// state (the last hash stays, so the content in place is held back until
    /// the file changes or a forced sync), with the table's oid and the counter
    /// now. A revert while already on a reverted state keeps that hash too,
    /// and the run it names.
    pub fn record_revert(&self) -> String {
        format!(
            "UPDATE {STATUS} SET reverted_load_id = coalesce(reverted_load_id, $2), synced_at = now(),
    table_oid = to_regclass($3)::oid, foreign_writes = {counter}
  WHERE mirror = $1",
            counter = self.counter_value()
        )
    }

    /// The journal's retention for mirror `$1`, one batch of at most `$4` runs:
    /// every run beyond the newest `$2` runs holding a journal (`journaled > 0`,
    /// in commit order), or finished more than `$3` days ago, loses its journal
    /// (`journaled` NULL; its rows deleted). Indexed (`mirror_runs_journaled`,
    /// the journal's `load_id`); runs that changed nothing hold no journal and
    /// are not counted. Returns the runs pruned (`bigint`).
    pub fn prune_journal(&self) -> String {
        format!(
            "WITH keep AS (
  SELECT load_id FROM {RUNS} WHERE mirror = $1 AND journaled > 0
   ORDER BY commit_seq DESC LIMIT $2),
dropped AS (
  UPDATE {RUNS} r SET journaled = NULL
   WHERE r.load_id IN (
     SELECT o.load_id FROM {RUNS} o
      WHERE o.mirror = $1 AND o.journaled > 0
        AND (o.load_id NOT IN (SELECT load_id FROM keep)
             OR o.finished_at < now() - make_interval(days => $3))
      ORDER BY o.commit_seq LIMIT $4)
  RETURNING r.load_id),
gone AS (
  DELETE FROM {JOURNAL} j USING dropped d WHERE j.load_id = d.load_id)
SELECT count(*)::bigint FROM dropped"
        )
    }

    /// The run records' retention for mirror `$1` (`HISTORY_KEEP_RUNS`,
    /// `HISTORY_KEEP_DAYS`), one batch of at most `$4` runs, oldest first: the
    /// runs finished more than `$3` days ago (NULL: no bound) and those beyond
    /// the newest `$2` (NULL: no bound) go, with their journal rows; never the
    /// newest run nor the one `mirror_status` names. Returns the runs deleted.
    pub fn prune_runs(&self) -> String {
        format!(
            "WITH gone AS (
  DELETE FROM {RUNS} r WHERE r.load_id IN (
    SELECT o.load_id FROM {RUNS} o
     WHERE o.mirror = $1
       AND (o.finished_at < now() - make_interval(days => $3)
            OR ($2::bigint IS NOT NULL AND o.commit_seq <= (SELECT b.commit_seq FROM {RUNS} b WHERE b.mirror = $1
                                 ORDER BY b.commit_seq DESC OFFSET $2 LIMIT 1)))
       AND o.load_id IS DISTINCT FROM (SELECT s.last_load_id FROM {STATUS} s WHERE s.mirror = $1)
       AND o.commit_seq < (SELECT max(n.commit_seq) FROM {RUNS} n WHERE n.mirror = $1)
     ORDER BY o.commit_seq LIMIT $4)
  RETURNING r.load_id),
journal AS (
  DELETE FROM {JOURNAL} j USING gone g WHERE j.load_id = g.load_id)
SELECT count(*)::bigint FROM gone"
        )
    }
}
