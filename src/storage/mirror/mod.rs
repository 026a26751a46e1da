//! The storage layer of a generic mirror (docs/mirrors.md#storage): every SQL
//! statement a mirror's sync needs, generated from its `MirrorSpec` in one place,
//! one module per table the statements touch:
//!
//! | module    | table                                   | statements                          |
//! |-----------|-----------------------------------------|-------------------------------------|
//! | `table`   | the mirror's own table                  | create, compatibility, diff, writes |
//! | `staging` | `etl_mirror_staging.<mirror>` (UNLOGGED)| create, COPY, duplicates, discard   |
//! | `journal` | `etl_info_schema.mirror_journal`        | journaled writes, revert, history   |
//! | `status`  | `mirror_status`, `mirror_runs`, the lock | skip check, records, retention      |
//!
//! Every configured identifier is quoted (`names.rs`, `.sql()`); every value is a
//! bound parameter, never formatted into the text. Internal tables (staging and
//! the merge's diff) name the configured columns by position (`c0`, `c1`, ... in
//! the configured order), so no configured name can collide with the columns
//! the agent adds (`load_id`, `line_no`, `op`, ...). Nothing here runs a
//! statement: callers bind the documented parameters and execute the text.
//! Not wired into `sync` yet.

mod journal;
mod staging;
mod status;
mod table;

pub use journal::{key_json, Write, JOURNAL};
pub use staging::{copy_line, escape_copy_text, STAGING_SCHEMA};
pub use status::{definition_fingerprint, COUNTER_TRIGGER, RUNS, STATUS};
pub use table::{CatalogColumn, IncompatibleTable, TableState};

use crate::mirror::{quote_identifier, ColumnSpec, ColumnType, MirrorSpec};

/// One of a journal row's operations (`mirror_journal.op`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Insert,
    Update,
    Delete,
}

impl Op {
    /// The one-character code stored in `op` and in the diff.
    pub fn code(self) -> &'static str {
        match self {
            Self::Insert => "i",
            Self::Update => "u",
            Self::Delete => "d",
        }
    }
}

/// The statements of one mirror. Cheap: it borrows the definition.
#[derive(Clone, Copy, Debug)]
pub struct MirrorSql<'a> {
    spec: &'a MirrorSpec,
}

impl<'a> MirrorSql<'a> {
    pub fn new(spec: &'a MirrorSpec) -> Self {
        Self { spec }
    }

    pub fn spec(&self) -> &'a MirrorSpec {
        self.spec
    }

    /// The mirror's table, quoted.
    fn table(&self) -> String {
        self.spec.table.sql()
    }

    /// How many rows the mirror's table holds (`status`).
    pub fn row_count(&self) -> String {
        format!("SELECT count(*) FROM {}", self.table())
    }

    /// The configured columns with their position (their internal name `c{i}`).
    fn columns(&self) -> impl Iterator<Item = (usize, &'a ColumnSpec)> {
        self.spec.columns.iter().enumerate()
    }

    /// The key's columns, in the key's order, with their positions.
    fn key(&self) -> Vec<(usize, &'a ColumnSpec)> {
        self.spec
            .key
            .iter()
            .filter_map(|k| self.columns().find(|(_, c)| &c.name == k))
            .collect()
    }

    /// The columns outside the key, with their positions.
    fn values(&self) -> Vec<(usize, &'a ColumnSpec)> {
        self.columns()
            .filter(|(_, c)| !self.spec.is_key(&c.name))
            .collect()
    }

    /// A column definition list of the key's columns (`"a" bigint, "b" text`),
    /// for `jsonb_to_record(...) AS x(...)`: only the mirror's own columns are
    /// read back from a `jsonb` key, never the table's whole row type (whose
    /// further columns may be of a domain that refuses NULL).
    fn key_def(&self) -> String {
        self.key()
            .into_iter()
            .map(|(_, c)| format!("{} {}", c.name.sql(), c.ty.create_sql()))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// A column definition list of a journal state: every configured column
    /// and the `modified_column` (as `timestamptz`).
    fn state_def(&self) -> String {
        let mut list: Vec<String> = self
            .columns()
            .map(|(_, c)| format!("{} {}", c.name.sql(), c.ty.create_sql()))
            .collect();
        if let Some(m) = &self.spec.modified_column {
            list.push(format!("{} timestamptz", m.sql()));
        }
        list.join(", ")
    }

    /// `a.x = b.y AND ...` over the key: `left(i, column)` and `right(i, column)`
    /// render each side.
    fn key_match(
        &self,
        left: impl Fn(usize, &ColumnSpec) -> String,
        right: impl Fn(usize, &ColumnSpec) -> String,
    ) -> String {
        self.key()
            .into_iter()
            .map(|(i, c)| format!("{} = {}", left(i, c), right(i, c)))
            .collect::<Vec<_>>()
            .join(" AND ")
    }
}

/// `left IS DISTINCT FROM right` as the mirror compares a column of type `ty`
/// (docs/mirrors.md#storage, "diff"): equal only where the file's value and the
/// table's are the same value *as loaded*, so the mirror equals the file.
/// `numeric` by its text (`2` and `2.00` are equal numbers, but the file
/// changed: trailing zeros are kept); `text` and `email` byte by byte
/// (`COLLATE "C"`: a column of a case-insensitive, nondeterministic collation
/// would hold `Ann` equal to `ann`); every other type by its value (a
/// `timestamptz` compares instants, as its canonical text is one spelling of
/// each).
fn distinct(ty: ColumnType, left: &str, right: &str) -> String {
    let (left, right) = exact(ty, left, right);
    format!("{left} IS DISTINCT FROM {right}")
}

/// Both sides of `distinct`'s comparison, as it compares them.
fn exact(ty: ColumnType, left: &str, right: &str) -> (String, String) {
    match ty {
        ColumnType::Numeric => (format!("{left}::text"), format!("{right}::text")),
        ColumnType::Text { .. } | ColumnType::Email => {
            (left.to_owned(), format!("{right} COLLATE \"C\""))
        }
        _ => (left.to_owned(), right.to_owned()),
    }
}

/// A configured column's internal (positional) name in staging and the diff.
fn pos(i: usize) -> String {
    format!("c{i}")
}

/// The internal name of the `modified_column` in the diff and in RETURNING lists.
const MODIFIED: &str = "cm";

/// A `jsonb` object of `fields` (an expression and the configured name it is
/// stored under): the object's keys come from the column aliases, so no name is
/// ever written as a string literal. `r.*`, not `r`: a column named `r` would
/// be read instead of the row.
fn json_object<'n>(fields: impl IntoIterator<Item = (String, &'n str)>) -> String {
    let list = fields
        .into_iter()
        .map(|(expr, name)| format!("{expr} AS {}", quote_identifier(name)))
        .collect::<Vec<_>>()
        .join(", ");
    format!("(SELECT to_jsonb(r.*) FROM (SELECT {list}) r)")
}

#[cfg(test)]
mod tests;
