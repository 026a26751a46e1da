//! The storage layer (docs/ARCHITECTURE.md#the-storage-layer): every SQL
//! statement, one module per table: the built-in mirror `followers`'s here,
//! a configured mirror's generated in `mirror/`. The
//! pipeline decides what runs when and what a result means (`pipeline/`,
//! `runs.rs`, `rejects.rs`, `db.rs`); the statements themselves live here, and
//! nothing here runs one: callers bind the parameters each documents and
//! execute the text on SeaORM's connection (COPY and the advisory locks, on
//! connections of their own, go through sqlx).
//!
//! | module              | table                                  | statements                                   |
//! |---------------------|----------------------------------------|----------------------------------------------|
//! | `followers`         | `public.followers`                     | diff, writes, first-sync fill and key rebuild, counts, writer lock, blockers, write counter |
//! | `staging_followers` | `public.staging_followers`             | COPY, duplicates, lock, count, cleanup       |
//! | `sync_journal`      | `etl_info_schema.sync_journal`         | journaled writes, revert, drift, retention, history |
//! | `sync_runs`         | `etl_info_schema.sync_runs`            | refusal key, seal, commit order, write xid, revert's runs, retention |
//! | `table_status`      | `etl_info_schema.table_status`         | write counter's value, revert's status       |
//! | `sync_rejects`      | `etl_info_schema.sync_rejects`         | store, read a run's rejects                  |
//! | `seaql_migrations`  | `seaql_migrations` (SeaORM's)          | applied migrations, missing CREATE privileges |
//! | `session`           | (`pg_stat_activity`, `pg_locks`)       | own session, run lock held, advisory locks   |
//! | `mirror`            | a configured mirror's tables           | generated from its definition (its own table of modules) |
//!
//! The built-in mirror keeps the old Go service's tables and behaviour, so its
//! statements are written out for those tables. A configured mirror's
//! statements are generated from its definition (`MirrorSpec`) in
//! `mirror/` here, one module per table too (docs/mirrors.md#storage).
//! The built-in mirror's identifiers are fixed (the one read from the
//! catalog, the primary key's name in the first sync's rebuild, is quoted); a
//! configured one is always quoted. Values are always bound parameters; only
//! settings the agent computes (a `lock_timeout` in milliseconds) are
//! formatted into the text.

pub(crate) mod followers;
pub mod mirror;
pub(crate) mod seaql_migrations;
pub(crate) mod session;
pub(crate) mod staging_followers;
pub(crate) mod sync_journal;
pub(crate) mod sync_rejects;
pub(crate) mod sync_runs;
pub(crate) mod table_status;

/// A write and its journal rows in one statement (a data-modifying CTE), so
/// the journal commits or rolls back with the change and unchanged rows cost
/// nothing: `write` (a plain UPDATE, INSERT or DELETE, without `RETURNING`)
/// returns `returning` as the rows `c`, and `select` makes one row of
/// `journal` (`columns`) of each. The write is kept verbatim, so its
/// parameters keep their numbers; `select`'s come after them. The journaled
/// writes of both the built-in mirror (`sync_journal`) and configured ones
/// (`mirror/journal.rs`, `Write::journaled`) are made here.
pub(crate) fn journaled(
    write: &str,
    returning: &str,
    journal: &str,
    columns: &str,
    select: &str,
) -> String {
    format!(
        "WITH changed AS (
{write}
 RETURNING {returning})
INSERT INTO {journal} ({columns})
SELECT {select} FROM changed c"
    )
}
