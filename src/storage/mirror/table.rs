//! The mirror's own table: its creation, the check of an existing one against
//! the definition, the diff of a load against it and the plain writes
//! (docs/mirrors.md#storage). Only the configured columns (and the
//! `modified_column`) are ever read or written: the table's further columns are
//! the application's and survive every sync.

use super::journal::Write;
use super::{distinct, json_object, pos, MirrorSql, Op, MODIFIED};
use crate::mirror::{modified_column_compatible, quote_identifier, ColumnName, ColumnSpec};

/// The merge's diff: the keys of the load and of the table that differ, with the
/// new values (`c{i}`, the key's from either side), the operation, the `xmin`
/// of the table's row and its configured columns as `jsonb` (`before`). It lives
/// in the session's temporary schema and is dropped with the transaction.
const DIFF: &str = "pg_temp.mirror_diff";

/// One column of an existing table, as `CATALOG_COLUMNS` returns it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CatalogColumn {
    pub name: String,
    /// `format_type` of the column (`character varying(255)`, `numeric(12,2)`).
    pub ty: String,
    pub not_null: bool,
    /// The column fills itself on insert: a default, an identity or a
    /// generated column.
    pub fills_itself: bool,
    /// Its collation is nondeterministic (case- or accent-insensitive ICU):
    /// values that differ compare equal.
    pub loose_collation: bool,
}

/// What the check of a table found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TableState {
    /// No such table: `create_table` creates it.
    Absent,
    /// Every rule holds.
    Compatible,
}

/// An existing table cannot be the mirror's (exit 2 at start-up): names the
/// mirror, the table, the column and what to do.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("mirror {mirror}: the existing table {table}: {column} {problem}; fix: {fix}")]
pub struct IncompatibleTable {
    pub mirror: String,
    pub table: String,
    /// `column x`, or `the key (a, b)`.
    pub column: String,
    pub problem: String,
    pub fix: String,
}

impl MirrorSql<'_> {
    /// The table's schema, created if absent.
    pub fn create_schema(&self) -> String {
        format!(
            "CREATE SCHEMA IF NOT EXISTS {}",
            quote_identifier(self.spec.table.schema())
        )
    }

    /// The table, only when absent: the configured columns as their types
    /// (`ColumnType::create_sql`), NOT NULL unless `nullable`, the
    /// `modified_column` as `timestamptz`, the key as primary key.
    pub fn create_table(&self) -> String {
        let mut lines: Vec<String> = self
            .columns()
            .map(|(_, c)| {
                let null = if c.nullable { "" } else { " NOT NULL" };
                format!("{} {}{null}", c.name.sql(), c.ty.create_sql())
            })
            .collect();
        if let Some(m) = &self.spec.modified_column {
            lines.push(format!("{} timestamptz", m.sql()));
        }
        let key: Vec<String> = self.spec.key.iter().map(ColumnName::sql).collect();
        lines.push(format!("PRIMARY KEY ({})", key.join(", ")));
        format!(
            "CREATE TABLE IF NOT EXISTS {} (\n  {}\n)",
            self.table(),
            lines.join(",\n  ")
        )
    }

    /// Whether the schema `$1` (its name, unquoted) exists (`boolean`): an
    /// existing one is not created again (`CREATE SCHEMA IF NOT EXISTS` needs
    /// the database's CREATE privilege even then).
    pub const SCHEMA_EXISTS: &'static str =
        "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_namespace WHERE nspname = $1)";

    /// Whether the table exists (`boolean`): `$1` the table quoted
    /// (`TableName::sql`). A revert of a mirror whose table is absent (never
    /// synced, or dropped) has nothing to write back to.
    pub const TABLE_EXISTS: &'static str = "SELECT to_regclass($1) IS NOT NULL";

    /// An existing table's columns: `$1` the schema, `$2` the table (as the
    /// catalog holds them, `TableName::schema`/`table`); no rows: no such table.
    pub const CATALOG_COLUMNS: &'static str =
        "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod), a.attnotnull,
        a.atthasdef OR a.attidentity <> '' OR a.attgenerated <> '',
        coalesce((SELECT NOT co.collisdeterministic FROM pg_collation co
                   WHERE co.oid = a.attcollation), false)
   FROM pg_attribute a
   JOIN pg_class c ON c.oid = a.attrelid
   JOIN pg_namespace n ON n.oid = c.relnamespace
  WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p')
    AND a.attnum > 0 AND NOT a.attisdropped
  ORDER BY a.attnum";

    /// An existing table's primary key and unique indexes that hold for every
    /// row (valid, not partial, no expressions), each as its key columns
    /// (`text[]`, INCLUDE columns left out); `$1` the schema, `$2` the table.
    pub const CATALOG_UNIQUE_KEYS: &'static str = "SELECT array_agg(a.attname::text ORDER BY k.ord)
   FROM pg_index x
   JOIN pg_class c ON c.oid = x.indrelid
   JOIN pg_namespace n ON n.oid = c.relnamespace
   CROSS JOIN LATERAL unnest(x.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord)
   JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = k.attnum
  WHERE n.nspname = $1 AND c.relname = $2
    AND x.indisunique AND x.indisvalid AND x.indpred IS NULL AND x.indexprs IS NULL
    AND k.ord <= x.indnkeyatts
  GROUP BY x.indexrelid";

    /// What is wrong with the table's `found` column for the configured `c`
    /// (its problem and the fix), if anything.
    fn column_problem(&self, c: &ColumnSpec, found: &CatalogColumn) -> Option<(String, String)> {
        if let Err(problem) = c.ty.compatible(&found.ty, None) {
            return Some((
                problem,
                format!(
                    "ALTER TABLE {} ALTER COLUMN {} TYPE {}, or change the column's type in [[mirror]] {}",
                    self.table(),
                    c.name.sql(),
                    c.ty.create_sql(),
                    self.spec.name
                ),
            ));
        }
        // citext compares without regard to case in its unique index but
        // as text in the diff's join (staging holds text): a key differing
        // only in case would be an insert beside its old row, and fail.
        if self.spec.is_key(&c.name) && (found.ty == "citext" || found.loose_collation) {
            let what = if found.ty == "citext" {
                "citext"
            } else {
                "of a nondeterministic (case- or accent-insensitive) collation"
            };
            return Some((
                format!("is part of the key and {what}, which the mirror's key match cannot honour"),
                format!(
                    "ALTER TABLE {} ALTER COLUMN {} TYPE text COLLATE \"default\" (an email key is lower-cased by the email type already)",
                    self.table(),
                    c.name.sql()
                ),
            ));
        }
        // An empty field of a nullable column is NULL: a NOT NULL column
        // would refuse it mid-merge, after the whole file was read.
        if c.nullable && found.not_null {
            return Some((
                format!(
                    "is NOT NULL, but [[mirror]] {} has it nullable = true, so an empty field would fail the merge",
                    self.spec.name
                ),
                format!(
                    "ALTER TABLE {} ALTER COLUMN {} DROP NOT NULL, or set nullable = false on the column in [[mirror]] {}",
                    self.table(),
                    c.name.sql(),
                    self.spec.name
                ),
            ));
        }
        if self.spec.is_key(&c.name) && !found.not_null {
            return Some((
                "is part of the key but allows NULL".into(),
                format!(
                    "ALTER TABLE {} ALTER COLUMN {} SET NOT NULL",
                    self.table(),
                    c.name.sql()
                ),
            ));
        }
        None
    }

    /// Checks an existing table (`columns` from `CATALOG_COLUMNS`, `unique_keys`
    /// from `CATALOG_UNIQUE_KEYS`): every configured column present with a
    /// compatible type (`ColumnType::compatible`), the key's columns NOT NULL,
    /// a `nullable` column not NOT NULL,
    /// the `modified_column` a timestamp, and a primary key or unique index on
    /// exactly the key's columns (in any order).
    pub fn check_table(
        &self,
        columns: &[CatalogColumn],
        unique_keys: &[Vec<String>],
    ) -> Result<TableState, IncompatibleTable> {
        if columns.is_empty() {
            return Ok(TableState::Absent);
        }
        let table = self.spec.table.to_string();
        let error = |column: String, problem: String, fix: String| IncompatibleTable {
            mirror: self.spec.name.to_string(),
            table: table.clone(),
            column,
            problem,
            fix,
        };
        let find = |name: &ColumnName| columns.iter().find(|c| c.name == name.as_str());
        for (_, c) in self.columns() {
            let Some(found) = find(&c.name) else {
                return Err(error(
                    format!("column {}", c.name),
                    "is missing".into(),
                    self.add_column_fix(c),
                ));
            };
            if let Some((problem, fix)) = self.column_problem(c, found) {
                return Err(error(format!("column {}", c.name), problem, fix));
            }
        }
        if let Some(m) = &self.spec.modified_column {
            let problem = match find(m) {
                None => Some("is missing".to_owned()),
                Some(found) => modified_column_compatible(&found.ty).err(),
            };
            if let Some(problem) = problem {
                return Err(error(
                    format!("modified_column {m}"),
                    problem,
                    format!(
                        "ALTER TABLE {} ADD COLUMN {} timestamptz (or drop it, then add it so)",
                        self.table(),
                        m.sql()
                    ),
                ));
            }
        }
        // The application's own columns are left alone, but every insert (and a
        // revert's re-insert) must be able to leave them out.
        let configured = |name: &str| {
            self.columns().any(|(_, c)| c.name.as_str() == name)
                || self.spec.modified_column.as_ref().map(ColumnName::as_str) == Some(name)
        };
        if let Some(own) = columns
            .iter()
            .find(|c| c.not_null && !c.fills_itself && !configured(&c.name))
        {
            return Err(error(
                format!("column {}", own.name),
                format!(
                    "is NOT NULL without a default and not among [[mirror]] {}'s columns, so no row could be inserted",
                    self.spec.name
                ),
                format!(
                    "ALTER TABLE {} ALTER COLUMN {} SET DEFAULT …, or DROP NOT NULL, or configure the column",
                    self.table(),
                    quote_identifier(&own.name)
                ),
            ));
        }
        let mut key: Vec<&str> = self.spec.key.iter().map(ColumnName::as_str).collect();
        key.sort_unstable();
        let keyed = unique_keys.iter().any(|u| {
            let mut u: Vec<&str> = u.iter().map(String::as_str).collect();
            u.sort_unstable();
            u == key
        });
        if !keyed {
            let list: Vec<String> = self.spec.key.iter().map(ColumnName::sql).collect();
            return Err(error(
                format!("the key ({})", list.join(", ")),
                "has no primary key or unique index on exactly these columns".into(),
                format!(
                    "CREATE UNIQUE INDEX ON {} ({}), or set key in [[mirror]] {} to the table's key",
                    self.table(),
                    list.join(", "),
                    self.spec.name
                ),
            ));
        }
        Ok(TableState::Compatible)
    }

    fn add_column_fix(&self, c: &ColumnSpec) -> String {
        format!(
            "ALTER TABLE {} ADD COLUMN {} {}, or remove it from columns of [[mirror]] {}",
            self.table(),
            c.name.sql(),
            c.ty.create_sql(),
            self.spec.name
        )
    }

    /// The select list of the diff: `op`, the configured columns by position
    /// (the key's from whichever side has it, the others from the load), the
    /// table row's `xmin` and its `before` state.
    fn diff_select(&self) -> String {
        let k0 = self.first_key();
        let mut list = vec![format!(
            "CASE WHEN t.{k0} IS NULL THEN 'i' WHEN s.line_no IS NULL THEN 'd' ELSE 'u' END AS op"
        )];
        for (i, c) in self.columns() {
            list.push(if self.spec.is_key(&c.name) {
                format!("coalesce(s.{p}, t.{}) AS {p}", c.name.sql(), p = pos(i))
            } else {
                format!("s.{p} AS {p}", p = pos(i))
            });
        }
        list.push("t.xmin AS old_xmin".into());
        list.push(format!(
            "CASE WHEN t.{k0} IS NOT NULL THEN {} END AS before",
            self.state_json("t")
        ));
        list.join(",\n        ")
    }

    /// The configured columns (and the `modified_column`) of the table's row
    /// `alias` as `jsonb`: the state a journal row keeps.
    pub(super) fn state_json(&self, alias: &str) -> String {
        let mut fields: Vec<(String, &str)> = self
            .columns()
            .map(|(_, c)| (format!("{alias}.{}", c.name.sql()), c.name.as_str()))
            .collect();
        if let Some(m) = &self.spec.modified_column {
            fields.push((format!("{alias}.{}", m.sql()), m.as_str()));
        }
        json_object(fields)
    }

    fn first_key(&self) -> String {
        self.spec.key[0].sql()
    }

    /// The load `load` (an expression) in staging, full-joined with the table
    /// on the key.
    fn diff_from(&self, load: &str) -> String {
        format!(
            "(SELECT * FROM {staging} WHERE load_id = {load}) s
   FULL JOIN {table} t ON {on}",
            staging = self.staging_table(),
            table = self.table(),
            on = self.key_match(
                |_, c| format!("t.{}", c.name.sql()),
                |i, _| format!("s.{}", pos(i))
            ),
        )
    }

    /// The diff table, empty, its column types those of the diff's expressions
    /// (so a key column wider in the table than configured fits). The staging
    /// table must exist. Dropped at the end of the transaction.
    pub fn diff_table(&self) -> String {
        format!(
            "CREATE TEMPORARY TABLE {DIFF} ON COMMIT DROP AS
 SELECT {select}
   FROM {from}
 WITH NO DATA",
            select = self.diff_select(),
            from = self.diff_from("NULL"),
        )
    }

    /// Fills the diff in one pass (a full join of the load `$1` and the table):
    /// new keys (`i`), keys absent from the load (`d`) unless protected, and
    /// keys whose non-key configured columns differ in any way (`IS DISTINCT
    /// FROM`, as `distinct` compares each type: `2` and `2.00` differ, `u`). Unchanged rows are not in it, so nothing writes them. `$2`:
    /// the protected keys, a `jsonb` array of `key_json` objects (`[]`: none),
    /// the keys of rejected lines, which the file may still hold: a rejected
    /// line leaves its row as it is, as in the followers mirror.
    pub fn diff(&self) -> String {
        let k0 = self.first_key();
        let protected = format!(
            "(s.line_no IS NULL AND NOT EXISTS (
          SELECT 1 FROM jsonb_to_recordset($2::jsonb) AS p({def}) WHERE {on}))",
            def = self.key_def(),
            on = self.key_match(
                |_, c| format!("p.{}", c.name.sql()),
                |_, c| format!("t.{}", c.name.sql())
            ),
        );
        // Compared only where both sides have the key: an absent row's columns
        // are all NULL, and would "differ" from a protected key's.
        let changed: Vec<String> = self
            .values()
            .into_iter()
            .map(|(i, c)| {
                distinct(
                    c.ty,
                    &format!("t.{}", c.name.sql()),
                    &format!("s.{}", pos(i)),
                )
            })
            .collect();
        let changed = if changed.is_empty() {
            "false".to_owned()
        } else {
            changed.join("\n            OR ")
        };
        format!(
            "INSERT INTO {DIFF}
 SELECT {select}
   FROM {from}
  WHERE {protected}
     OR t.{k0} IS NULL
     OR (s.line_no IS NOT NULL AND (
            {changed}))",
            select = self.diff_select(),
            from = self.diff_from("$1"),
        )
    }

    /// Bounds every lock wait of the transaction by `ms` milliseconds
    /// (`LOCK_WAIT_TIMEOUT`), then locks the table against other writers
    /// (`SHARE ROW EXCLUSIVE`, as the followers merge: readers go on; it
    /// conflicts with itself, so one merge or revert of the table at a time).
    /// The sessions holding a lock on the table that keeps its writer lock
    /// waiting (the columns `pipeline::merge::blockers_by` reads), oldest
    /// transaction first, at most 3.
    pub fn blockers(&self) -> String {
        format!(
            "SELECT a.pid, coalesce(nullif(a.application_name, ''), '(none)') AS app,
        coalesce(a.usename::text, '?') AS usr, coalesce(a.state, '?') AS state,
        coalesce(to_char(a.xact_start AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS') || ' UTC', '?') AS xact_start,
        coalesce(to_char(a.query_start AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS') || ' UTC', '?') AS query_start
   FROM pg_stat_activity a
  WHERE a.pid <> pg_backend_pid() AND a.pid IN (
        SELECT l.pid FROM pg_locks l
         WHERE l.granted AND l.locktype = 'relation' AND l.mode <> 'AccessShareLock'
           AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
           AND (l.relation = to_regclass({name})
                OR l.relation IN (SELECT relid FROM pg_partition_tree(to_regclass({name})))))
  ORDER BY a.xact_start NULLS LAST, a.pid LIMIT 3",
            name = format!("'{}'", self.table().replace('\'', "''"))
        )
    }

    pub fn lock_writers(&self, ms: i32) -> String {
        format!(
            "{}; LOCK TABLE {} IN SHARE ROW EXCLUSIVE MODE",
            self.lock_timeout(ms),
            self.table()
        )
    }

    /// Bounds every lock wait of the transaction by `ms` milliseconds
    /// (`LOCK_WAIT_TIMEOUT`): before an absent table is created in the merge's
    /// transaction (its schema may be another first run's, not committed yet).
    pub fn lock_timeout(&self, ms: i32) -> String {
        format!("SET LOCAL lock_timeout = '{ms}ms'")
    }

    /// The guard's counts: inserts, updates, deletes (`bigint` each) and the
    /// table's rows before the writes.
    pub fn diff_counts(&self) -> String {
        format!(
            "SELECT count(*) FILTER (WHERE op = 'i')::bigint, count(*) FILTER (WHERE op = 'u')::bigint,
        count(*) FILTER (WHERE op = 'd')::bigint, (SELECT count(*) FROM {})::bigint
   FROM {DIFF}",
            self.table()
        )
    }

    /// `d` (the diff) matches the table row `t` on the key and `t` is still as
    /// the diff read it.
    fn diff_row(&self, op: Op) -> String {
        format!(
            "d.op = '{}' AND {} AND t.xmin = d.old_xmin",
            op.code(),
            self.key_match(
                |_, c| format!("t.{}", c.name.sql()),
                |i, _| format!("d.{}", pos(i))
            )
        )
    }

    /// `t.col AS c{i}` for every configured column (and the `modified_column`).
    fn returning_all(&self) -> Vec<String> {
        let mut list: Vec<String> = self
            .columns()
            .map(|(i, c)| format!("t.{} AS {}", c.name.sql(), pos(i)))
            .collect();
        if let Some(m) = &self.spec.modified_column {
            list.push(format!("t.{} AS {MODIFIED}", m.sql()));
        }
        list
    }

    /// Adds the diff's new keys, `modified_column` = now().
    pub fn insert(&self) -> Write {
        let mut names: Vec<String> = self.columns().map(|(_, c)| c.name.sql()).collect();
        let mut values: Vec<String> = self
            .columns()
            .map(|(i, _)| format!("d.{}", pos(i)))
            .collect();
        if let Some(m) = &self.spec.modified_column {
            names.push(m.sql());
            values.push("now()".into());
        }
        Write::new(
            self,
            Op::Insert,
            format!(
                "INSERT INTO {} AS t ({})\n SELECT {} FROM {DIFF} d WHERE d.op = 'i'",
                self.table(),
                names.join(", "),
                values.join(", ")
            ),
            self.returning_all(),
        )
    }

    /// Rewrites the rows whose non-key columns differ, only those and only while
    /// still as the diff read them; `modified_column` = now(). `None` for a
    /// mirror whose columns are all key columns (no row can differ).
    pub fn update(&self) -> Option<Write> {
        let values = self.values();
        if values.is_empty() {
            return None;
        }
        let mut set: Vec<String> = values
            .into_iter()
            .map(|(i, c)| format!("{} = d.{}", c.name.sql(), pos(i)))
            .collect();
        if let Some(m) = &self.spec.modified_column {
            set.push(format!("{} = now()", m.sql()));
        }
        let mut returning = self.returning_all();
        returning.push("d.before AS before".into());
        Some(Write::new(
            self,
            Op::Update,
            format!(
                "UPDATE {} t SET {}\n  FROM {DIFF} d\n WHERE {}",
                self.table(),
                set.join(", "),
                self.diff_row(Op::Update)
            ),
            returning,
        ))
    }

    /// Removes the rows whose keys the load does not hold, while still as the
    /// diff read them.
    pub fn delete(&self) -> Write {
        let mut returning: Vec<String> = self
            .key()
            .into_iter()
            .map(|(i, c)| format!("t.{} AS {}", c.name.sql(), pos(i)))
            .collect();
        returning.push("d.before AS before".into());
        Write::new(
            self,
            Op::Delete,
            format!(
                "DELETE FROM {} t USING {DIFF} d\n WHERE {}",
                self.table(),
                self.diff_row(Op::Delete)
            ),
            returning,
        )
    }
}
