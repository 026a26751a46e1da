//! Edits outside the agent (docs/sync.md#edits-outside-the-agent): the hash skip
//! trusts that `followers` is what the last sync or revert left; this module
//! checks that trust, cheaply, before a run skips an unchanged file.
//!
//! A statement-level trigger on `followers` bumps the sequence
//! `etl_info_schema.followers_foreign_writes` once per statement that writes the
//! table (INSERT, UPDATE, DELETE, TRUNCATE), except the agent's own merge and
//! revert, which run `storage::session::OWN_WRITE` first. The merge and the revert record the
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

use crate::storage::followers;
use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, DbErr, Statement};
use std::time::Duration;

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
            followers::CHECK,
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
    if let Err(e) = db.execute_unprepared(followers::ENSURE).await {
        tracing::warn!(
            error = %crate::errors::error_chain(&e),
            "cannot install the write counter on followers or enable it ALWAYS (that needs the table's ownership, see docs/sync.md#database-roles, and the table's writers to let it lock the table within 5 s; the next start tries again): edits outside the agent are found by a full comparison of an unchanged file every VERIFY_EVERY={verify}"
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
