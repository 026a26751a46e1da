//! `seaql_migrations`: the migrations applied (SeaORM's table), read with plain
//! SELECTs so a role without CREATE starts (`db.rs`, docs/sync.md#database-roles),
//! and what the role lacks to apply the pending ones.

/// Whether `seaql_migrations` exists.
pub(crate) const EXISTS: &str = "SELECT to_regclass('seaql_migrations') IS NOT NULL";

/// The applied migrations' names.
pub(crate) const APPLIED: &str = "SELECT version FROM seaql_migrations";

/// The role, and the CREATE privileges the migrations need that it lacks
/// (comma-separated, empty when none).
pub(crate) const LACKING: &str = "SELECT current_user::text, concat_ws(', ',
                CASE WHEN NOT has_schema_privilege(current_schema(), 'CREATE')
                     THEN 'CREATE on schema ' || current_schema() END,
                CASE WHEN NOT has_database_privilege(current_database(), 'CREATE')
                     THEN 'CREATE on database ' || current_database() END)";
