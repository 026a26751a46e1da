//! The server's own views (`pg_stat_activity`, `pg_locks`) and the session's
//! settings: who the agent's session is, whether it still holds the run lock,
//! the advisory locks themselves (`db.rs` runs those on the lock's own
//! connection, outside the pool, with sqlx: docs/ARCHITECTURE.md#the-storage-layer).

/// Bounds every lock wait of the transaction to `ms` milliseconds.
pub(crate) fn lock_timeout(ms: i32) -> String {
    format!("SET LOCAL lock_timeout = '{ms}ms'")
}

/// The first statement of every transaction that writes a mirror's table (the
/// merges and reverts): its writes are the agent's own, not counted by the
/// write counter (docs/sync.md#edits-outside-the-agent).
pub(crate) const OWN_WRITE: &str = "SET LOCAL followers_etl.own_write = 'on'";

/// The session's backend pid and start time (as text).
pub(crate) const SESSION: &str = "SELECT pg_backend_pid(), backend_start::text FROM pg_stat_activity WHERE pid = pg_backend_pid()";

/// Ends the session `$1` started at `$2` (as `SESSION` read it), if it is
/// still there: one row per session signalled.
pub(crate) const TERMINATE: &str = "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                      WHERE pid = $1 AND backend_start::text = $2";

/// Whether the session `$1` holds the one-key advisory lock `$2` (1 or 0).
pub(crate) const HOLDS_LOCK: &str = "SELECT count(*) FROM pg_locks
          WHERE locktype = 'advisory' AND granted AND pid = $1
            AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
            AND classid = ($2 >> 32)::oid AND objid = ($2 & 4294967295)::oid AND objsubid = 1";

/// Takes the one-key advisory lock `$1` if it is free; with the session's pid.
pub(crate) const TRY_LOCK: &str = "SELECT pg_try_advisory_lock($1), pg_backend_pid()";

/// Takes the two-key advisory lock `($1, $2)` if it is free; with the session's pid.
pub(crate) const TRY_LOCK_PAIR: &str = "SELECT pg_try_advisory_lock($1, $2), pg_backend_pid()";

/// Waits for the one-key advisory lock `$1`.
pub(crate) const LOCK: &str = "SELECT pg_advisory_lock($1)";

pub(crate) const UNLOCK: &str = "SELECT pg_advisory_unlock($1)";

pub(crate) const UNLOCK_PAIR: &str = "SELECT pg_advisory_unlock($1, $2)";

/// A ping of the lock's session.
pub(crate) const PING: &str = "SELECT 1";

/// What the server says of the lock's session (`$1`, its backend pid) while a
/// run's statement occupies it: whether it is running one (`active`, also
/// while it waits for a lock).
pub(crate) const SESSION_ACTIVE: &str =
    "SELECT coalesce((SELECT state = 'active' FROM pg_catalog.pg_stat_activity WHERE pid = $1), false)";
