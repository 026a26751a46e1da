//! A mirror's staging table, `etl_mirror_staging.t_<hash of the table>` (UNLOGGED, as
//! `public.staging_followers`: its rows live only while a run is in flight):
//! `load_id`, `line_no` and the configured columns by position (`c0`, `c1`,
//! ...) as their types, so the diff compares values, not their spellings. The
//! rows arrive by COPY in text format: the values are `mirror::value`'s canonical
//! text, which each column's type reads back as the same value, so COPY never
//! refuses one; only COPY's own escapes are added (`escape_copy_text`).

use super::{json_object, pos, MirrorSql};
use crate::mirror::quote_identifier;
use std::fmt::Write as _;

/// The schema of every mirror's staging table (created by the migration).
pub const STAGING_SCHEMA: &str = "etl_mirror_staging";

impl MirrorSql<'_> {
    /// The staging table, quoted: named by the mirror's table (`t_` and 24
    /// hex digits of `table_hash`), as the run lock is keyed, so the run that
    /// holds the table's lock is the only one using it.
    pub fn staging_table(&self) -> String {
        format!(
            "{}.{}",
            quote_identifier(STAGING_SCHEMA),
            quote_identifier(&format!("t_{}", &self.table_hash().to_hex()[..24]))
        )
    }

    /// The load `$1`'s rows in staging (`bigint`): what the diff compares.
    pub fn staged_count(&self) -> String {
        format!(
            "SELECT count(*)::bigint FROM {} WHERE load_id = $1",
            self.staging_table()
        )
    }

    /// Drops the staging table (with any rows of an interrupted run), so that
    /// `create_staging` makes it with the current definition's columns. Only
    /// under the mirror's run lock: no other run of the mirror is in flight.
    pub fn drop_staging(&self) -> String {
        format!("DROP TABLE IF EXISTS {}", self.staging_table())
    }

    /// `drop_staging` waiting at most `ms` milliseconds for a lock on it (one
    /// simple query: its implicit transaction bounds the setting), for a drop
    /// that may be left to a later run.
    pub fn drop_staging_within(&self, ms: i32) -> String {
        format!("SET LOCAL lock_timeout = '{ms}ms'; {}", self.drop_staging())
    }

    /// The staging table, if absent.
    pub fn create_staging(&self) -> String {
        let mut lines = vec![
            "load_id uuid NOT NULL".to_owned(),
            "line_no bigint NOT NULL".to_owned(),
        ];
        lines.extend(
            self.columns()
                .map(|(i, c)| format!("{} {}", pos(i), c.ty.create_sql())),
        );
        format!(
            "CREATE UNLOGGED TABLE IF NOT EXISTS {} (\n  {}\n)",
            self.staging_table(),
            lines.join(",\n  ")
        )
    }

    /// COPY into staging, text format: each line `copy_line`'s.
    pub fn copy_in(&self) -> String {
        let columns: Vec<String> = self.columns().map(|(i, _)| pos(i)).collect();
        format!(
            "COPY {} (load_id, line_no, {}) FROM STDIN (FORMAT text)",
            self.staging_table(),
            columns.join(", ")
        )
    }

    /// The load's key as `jsonb` of the staging row `s`.
    fn staged_key_json(&self) -> String {
        json_object(
            self.key()
                .into_iter()
                .map(|(i, c)| (format!("s.{}", pos(i)), c.name.as_str())),
        )
    }

    fn staged_key_list(&self) -> String {
        self.key()
            .into_iter()
            .map(|(i, _)| format!("s.{}", pos(i)))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// How many rows of the load `$1` repeat a key of an earlier one (`bigint`).
    pub fn duplicate_count(&self) -> String {
        format!(
            "SELECT (count(*) - count(DISTINCT ROW({})))::bigint FROM {} s WHERE s.load_id = $1",
            self.staged_key_list(),
            self.staging_table()
        )
    }

    /// Up to `$2` duplicate keys of the load `$1`, in the order of their first
    /// line: the key as `jsonb` and every line it is on (`bigint[]`).
    pub fn duplicate_examples(&self) -> String {
        format!(
            "SELECT {json} AS key, array_agg(s.line_no ORDER BY s.line_no) AS lines
   FROM {staging} s WHERE s.load_id = $1
  GROUP BY {keys} HAVING count(*) > 1
  ORDER BY min(s.line_no) LIMIT $2",
            json = self.staged_key_json(),
            staging = self.staging_table(),
            keys = self.staged_key_list(),
        )
    }

    /// `duplicate_examples` as text: the key (`jsonb` as text) and its lines
    /// joined by commas; `$1` the load, `$2` the limit.
    pub fn duplicate_examples_text(&self) -> String {
        format!(
            "SELECT d.key::text, array_to_string(d.lines, ',') FROM ({}) d",
            self.duplicate_examples()
        )
    }

    /// Keeps one row per key of the load `$1`, the last line's (one sort of the
    /// load, as the followers' `DROP_EARLIER_COPIES`; `ctid` breaks ties).
    pub fn drop_earlier_copies(&self) -> String {
        format!(
            "DELETE FROM {staging} x
  USING (SELECT ctid AS tid,
                row_number() OVER (PARTITION BY {keys} ORDER BY s.line_no DESC, s.ctid DESC) AS rank
           FROM {staging} s WHERE s.load_id = $1) copies
  WHERE copies.rank > 1 AND x.ctid = copies.tid",
            staging = self.staging_table(),
            keys = self.staged_key_list(),
        )
    }

    /// Removes the load `$1`'s rows whose key a later rejected line repeats: `$2`
    /// is a `jsonb` array of `{"key": key_json, "line": n}`, one per rejected
    /// line with a valid key. As in the followers mirror, a rejected line that
    /// is its key's last leaves the row as it is (the diff's protected keys then
    /// keep it from being deleted); a valid line after it still wins.
    pub fn drop_rejected_keys(&self) -> String {
        format!(
            "DELETE FROM {staging} s
  USING jsonb_array_elements($2::jsonb) e,
        LATERAL jsonb_to_record(e -> 'key') AS p({def})
  WHERE s.load_id = $1 AND s.line_no < (e ->> 'line')::bigint AND {on}",
            staging = self.staging_table(),
            def = self.key_def(),
            on = self.key_match(
                |i, _| format!("s.{}", pos(i)),
                |_, c| format!("p.{}", c.name.sql())
            ),
        )
    }

    /// Removes the load `$1`'s rows (the compensation of staging).
    pub fn discard_staging(&self) -> String {
        format!("DELETE FROM {} WHERE load_id = $1", self.staging_table())
    }
}

/// `value` escaped for COPY's text format: a backslash, tab, line feed and
/// carriage return as their backslash escapes; everything else as it is.
pub fn escape_copy_text(out: &mut String, value: &str) {
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c => out.push(c),
        }
    }
}

/// One line of `MirrorSql::copy_in`'s COPY: the load, the file's line, then
/// each configured column's canonical value (`None`: NULL, `\N`), in order.
pub fn copy_line(out: &mut String, load_id: uuid::Uuid, line_no: u64, values: &[Option<&str>]) {
    let _ = write!(out, "{load_id}\t{line_no}");
    for value in values {
        out.push('\t');
        match value {
            Some(v) => escape_copy_text(out, v),
            None => out.push_str("\\N"),
        }
    }
    out.push('\n');
}
