//! Edits outside the agent (docs/sync.md#edits-outside-the-agent): the hash skip
//! trusts that `followers` is what the last sync or revert left; this module
//! checks that trust, cheaply, before a run skips an unchanged file.
//!
//! A statement-level trigger on `followers` bumps the sequence
//! `etl_info_schema.followers_foreign_writes` once per statement that writes the
//! table (INSERT, UPDATE, DELETE, TRUNCATE), except the agent's own merge and
//! revert, which run [`OWN_WRITE`] first. The merge and the revert record the
//! counter's value in `table_status.foreign_writes` inside their transaction,
//! under the merge's writer lock; a run whose file is unchanged compares it with
//! the counter now: equal → the table is what the last sync left (skip);
//! different → written outside the agent → the file is synced back (the delete
//! guard applies, and a refusal names the drift).
//!
//! The trigger is enabled ALWAYS (`tgenabled = 'A'`): one enabled ORIGIN
//! (`O`, as `CREATE TRIGGER` makes it and earlier versions left it) does not
//! fire under `session_replication_role = replica` (a logical-replication
//! apply worker, a CDC applier, a restore tool that sets it), so it would miss
//! those writes and counts as no counter.
//!
//! Where the trigger cannot be installed or enabled ALWAYS (a role that does
//! not own the table), or is disabled, an unchanged file is synced again (a
//! full comparison) once the last one is older than `VERIFY_EVERY`; start-up
//! says so.

use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, DbErr, Statement};
use std::time::Duration;

/// The first statement of the merge and revert transactions: their writes are
/// the agent's own, not counted.
pub(crate) const OWN_WRITE: &str = "SET LOCAL followers_etl.own_write = 'on'";

/// Records the counter's value the merge or revert saw (in its transaction).
pub(crate) const RECORD: &str = "UPDATE etl_info_schema.table_status
    SET foreign_writes = etl_info_schema.foreign_writes() WHERE table_name = 'followers'";

/// Installs the trigger, enabled ALWAYS, when it is missing (first start after
/// the migration, or a replaced table), and enables ALWAYS one enabled ORIGIN
/// (an earlier version's, or a dump of one restored; migration
/// `m20261202_000080` converts the one it finds); a table whose counter was
/// missing or blind to replica-role writes is then unverified. A trigger
/// someone disabled (`D`) or set to replica only (`R`) is left so (it counts
/// as none). Enabling ALWAYS needs the table's ownership.
const ENSURE: &str = "DO $$
DECLARE
  state \"char\" := (SELECT tgenabled FROM pg_catalog.pg_trigger
                      WHERE tgrelid = 'public.followers'::regclass
                        AND tgname = 'followers_etl_foreign_writes');
BEGIN
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
const CHECK: &str = "SELECT
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

/// What the last sync's trust in the table is worth now.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub(crate) enum Drift {
    /// The counter is unchanged: the table is what the last sync or revert left.
    None,
    /// Statements outside the agent wrote the table since the last sync or revert.
    Written { writes: i64 },
    /// The counter was (re)installed after the last sync: not confirmed yet.
    Unverified,
    /// No counter: the last comparison is older than `VERIFY_EVERY`.
    VerifyDue,
    /// No counter, and the last comparison is recent: not known.
    Unknown,
}

impl Drift {
    /// Whether an unchanged file must be synced (compared) instead of skipped.
    pub(crate) fn needs_sync(self) -> bool {
        matches!(
            self,
            Self::Written { .. } | Self::Unverified | Self::VerifyDue
        )
    }

    /// Whether a skip confirms the table equals the file (the last-success gauge).
    pub(crate) fn confirmed(self) -> bool {
        self == Self::None
    }

    /// Why an unchanged file is synced or why a skip cannot vouch for the table.
    pub(crate) fn describe(self) -> Option<String> {
        match self {
            Self::None => None,
            Self::Written { writes } => Some(format!(
                "followers was changed outside the agent since the last sync ({writes} writing statement(s) counted)"
            )),
            Self::Unverified => Some(
                "followers' write counter was installed after the last sync: the table is compared with the file".to_owned(),
            ),
            Self::VerifyDue => Some(
                "followers has no write counter and was last compared with the file VERIFY_EVERY ago or longer".to_owned(),
            ),
            Self::Unknown => Some(
                "followers has no write counter: edits outside the agent are found by the comparison every VERIFY_EVERY".to_owned(),
            ),
        }
    }
}

/// Compares the counter with what the last sync or revert saw.
#[tracing::instrument(skip_all, err)]
pub(crate) async fn check(
    db: &impl ConnectionTrait,
    verify_every: Duration,
) -> Result<Drift, DbErr> {
    let row = db
        .query_one(Statement::from_sql_and_values(
            DbBackend::Postgres,
            CHECK,
            [verify_every.as_secs_f64().into()],
        ))
        .await?
        .ok_or_else(|| DbErr::RecordNotFound("drift check".into()))?;
    let (counting, now, seen, due): (bool, i64, Option<i64>, bool) = row.try_get_many_by_index()?;
    Ok(match (counting, seen) {
        (true, Some(seen)) if seen == now => Drift::None,
        (true, Some(seen)) => Drift::Written { writes: now - seen },
        (true, None) => Drift::Unverified,
        (false, _) if due => Drift::VerifyDue,
        (false, _) => Drift::Unknown,
    })
}

/// At start-up (after the migrations): installs the trigger if it is missing and
/// says so when it cannot, naming the fallback.
#[tracing::instrument(skip_all)]
pub(crate) async fn ensure_counter(db: &DatabaseConnection, verify_every: Duration) {
    let verify = robfig_cron::go_duration::format_go_duration(verify_every);
    if let Err(e) = db.execute_unprepared(ENSURE).await {
        tracing::warn!(
            error = %crate::errors::error_chain(&e),
            "cannot install the write counter on followers or enable it ALWAYS (that needs the table's ownership, see docs/sync.md#database-roles): edits outside the agent are found by a full comparison of an unchanged file every VERIFY_EVERY={verify}"
        );
        return;
    }
    match check(db, verify_every).await {
        Ok(Drift::Unknown | Drift::VerifyDue) => tracing::warn!(
            "the write counter on followers is disabled or not enabled ALWAYS (or the table has partitions or inheritance children): edits outside the agent are found by a full comparison of an unchanged file every VERIFY_EVERY={verify}"
        ),
        Ok(_) => {}
        Err(e) => {
            tracing::warn!(error = %crate::errors::error_chain(&e), "cannot read the write counter of followers")
        }
    }
}
