//! Mirrors (docs/mirrors.md): one file (or one glob of files) mirrored
//! into one table with its own key and columns. This module is the definition
//! layer: the typed model of a mirror (`MirrorSpec`), its `[[mirror]]` TOML
//! shape and every rule a definition must meet (`parse`), the column types
//! (`types`) and the validation of one CSV field for each of them (`value`); and
//! the storage layer, every SQL statement a mirror's sync needs, generated from
//! its definition (`storage::mirror`, docs/mirrors.md#storage); and the run of one mirror
//! (`run`: lock, hash, read, stage, merge, record, revert; docs/mirrors.md#runs).
//! The configuration reads `[[mirror]]` (`config::mirrors`), `mirrors` prints
//! it, and `sync` and `serve` run it through `pipeline::mirror`
//! (docs/mirrors.md#status).

mod names;
mod parse;
pub mod run;
mod types;
pub mod value;

pub use names::{quote_identifier, ColumnName, MirrorName, TableName, MAX_IDENTIFIER_BYTES};
pub use parse::{from_toml_str, parse_mirrors, validate_set, RawColumn, RawMirror};
pub use types::{modified_column_compatible, ColumnType, EMAIL_MAX_CHARS, TYPE_NAMES};

use crate::config::HeaderMode;
use robfig_cron::Schedule;
use std::fmt;
use std::path::{Path, PathBuf};

/// Where a mirror reads its rows from, relative to `TABLES_DIR`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MirrorSource {
    /// `file = "subscribers.csv"`.
    File(PathBuf),
    /// `files = "exports/subscribers-*.csv.gz"`: the union of the matching files,
    /// sorted by name. Wildcards (`*`, `?`, `[...]`) only in the last component.
    Glob(String),
}

impl MirrorSource {
    /// `file` (for `File`, as configured; the built-in mirror's `CSV_FILE` may be
    /// absolute) confined to `tables_dir` as `CSV_FILE` is
    /// (docs/configuration.md#variables); `None` for a glob.
    pub fn confined_file(
        &self,
        tables_dir: &Path,
    ) -> Option<Result<PathBuf, crate::config::ConfineError>> {
        match self {
            Self::File(path) => Some(crate::config::confine("file", tables_dir, path)),
            Self::Glob(_) => None,
        }
    }

    /// A glob's fixed directory (relative to `TABLES_DIR`, empty for itself) and
    /// its file-name pattern.
    pub fn glob_parts(&self) -> Option<(&str, &str)> {
        match self {
            Self::File(_) => None,
            Self::Glob(pattern) => Some(pattern.rsplit_once('/').unwrap_or(("", pattern))),
        }
    }
}

impl fmt::Display for MirrorSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::File(path) => write!(f, "file {}", path.display()),
            Self::Glob(pattern) => write!(f, "files {pattern}"),
        }
    }
}

/// How a column's field is validated beyond its type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ValueRule {
    /// The type's rule (docs/mirrors.md#types).
    #[default]
    Standard,
    /// The built-in mirror's `full_name`: trimmed, at most 255 characters, no NUL,
    /// and an empty field is the empty name (never NULL, never a reject).
    FollowersFullName,
}

/// One configured column.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ColumnSpec {
    pub name: ColumnName,
    pub ty: ColumnType,
    /// An empty field is NULL only where this is set; elsewhere it is a reject.
    pub nullable: bool,
    /// The header name the column is read from (`source`, default `name`),
    /// matched trimmed and without regard to case, as the header detection does.
    pub source: String,
    pub rule: ValueRule,
}

impl ColumnSpec {
    /// Whether the header field `field` names this column: trimmed and without
    /// regard to ASCII case, as the header detection matches `email`.
    pub fn matches_header(&self, field: &str) -> bool {
        field.trim().eq_ignore_ascii_case(self.source.trim())
    }

    /// A text column's limit in characters.
    pub fn max_length(&self) -> Option<u32> {
        match self.ty {
            ColumnType::Text { max_length } => max_length,
            _ => None,
        }
    }
}

/// A mirror's own values for settings that otherwise come from the variables of
/// the same name (docs/configuration.md#variables); `None`: the variable's value.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct SettingOverrides {
    pub max_delete_ratio: Option<f64>,
    pub max_rejects: Option<u64>,
    pub csv_delimiter: Option<u8>,
    pub csv_header: Option<HeaderMode>,
    /// `Some(None)`: `auto` (UTF-8, or UTF-16 by its byte order mark).
    pub csv_encoding: Option<Option<&'static encoding_rs::Encoding>>,
    pub ready_marker: Option<String>,
    pub journal_keep_runs: Option<u64>,
}

/// One mirror, validated: made only by `parse_mirrors`/`from_toml_str` (which
/// check every rule of docs/mirrors.md#rules) or by `MirrorSpec::followers`.
#[derive(Clone, Debug)]
pub struct MirrorSpec {
    pub name: MirrorName,
    pub source: MirrorSource,
    pub table: TableName,
    /// The columns of the table's primary key (or unique index), in order.
    pub key: Vec<ColumnName>,
    /// In the configured order; with no header, also the order of the fields.
    pub columns: Vec<ColumnSpec>,
    /// `None`: `CRON_SCHEDULE`.
    pub schedule: Option<Schedule>,
    /// A timestamp column the agent sets on insert and on change; not a file column.
    pub modified_column: Option<ColumnName>,
    pub overrides: SettingOverrides,
}

impl MirrorSpec {
    /// The built-in mirror, as the agent has always run it: `csv_file` (`CSV_FILE`,
    /// already confined by the settings) into `public.followers`, keyed by `email`,
    /// `full_name` with its own rule, `modified_at` set by the agent; every other
    /// setting from the variables.
    pub fn followers(csv_file: &Path) -> Self {
        let column = |name: &str, ty, rule| ColumnSpec {
            name: ColumnName::parse(name).expect("a valid column name"),
            ty,
            nullable: false,
            source: name.to_owned(),
            rule,
        };
        let email = column("email", ColumnType::Email, ValueRule::Standard);
        Self {
            name: MirrorName::parse(MirrorName::FOLLOWERS).expect("a valid mirror name"),
            source: MirrorSource::File(csv_file.to_path_buf()),
            table: TableName::new("public", "followers").expect("a valid table name"),
            key: vec![email.name.clone()],
            columns: vec![
                email,
                column(
                    "full_name",
                    ColumnType::Text {
                        max_length: u32::try_from(crate::domain::MAX_FIELD_CHARS).ok(),
                    },
                    ValueRule::FollowersFullName,
                ),
            ],
            schedule: None,
            modified_column: Some(ColumnName::parse("modified_at").expect("a valid column name")),
            overrides: SettingOverrides::default(),
        }
    }

    pub fn column(&self, name: &ColumnName) -> Option<&ColumnSpec> {
        self.columns.iter().find(|c| &c.name == name)
    }

    /// Whether `name` is one of the key's columns.
    pub fn is_key(&self, name: &ColumnName) -> bool {
        self.key.contains(name)
    }

    /// The resolved definition, for `followers-etl mirrors --json`: every key as
    /// the configuration spells it, `null` where the variable's value applies.
    pub fn to_json(&self) -> serde_json::Value {
        let o = &self.overrides;
        let (file, files) = match &self.source {
            MirrorSource::File(path) => (Some(path.display().to_string()), None),
            MirrorSource::Glob(pattern) => (None, Some(pattern.clone())),
        };
        serde_json::json!({
            "name": self.name,
            "file": file,
            "files": files,
            "table": self.table,
            "key": self.key,
            "columns": self.columns.iter().map(|c| serde_json::json!({
                "name": c.name,
                "type": c.ty.name(),
                "max_length": c.max_length(),
                "nullable": c.nullable,
                "source": c.source,
            })).collect::<Vec<_>>(),
            "schedule": self.schedule.as_ref().map(ToString::to_string),
            "modified_column": self.modified_column,
            "max_delete_ratio": o.max_delete_ratio,
            "max_rejects": o.max_rejects,
            "csv_delimiter": o.csv_delimiter.map(|d| char::from(d).to_string()),
            "csv_header": o.csv_header.map(|h| match h {
                HeaderMode::Auto => "auto",
                HeaderMode::Present => "true",
                HeaderMode::Absent => "false",
            }),
            "csv_encoding": o.csv_encoding.map(|e| e.map_or("auto", encoding_rs::Encoding::name)),
            "ready_marker": o.ready_marker,
            "journal_keep_runs": o.journal_keep_runs,
        })
    }

    /// The columns outside the key: a change is any of them differing.
    pub fn value_columns(&self) -> impl Iterator<Item = &ColumnSpec> {
        self.columns.iter().filter(|c| !self.is_key(&c.name))
    }
}

/// A definition breaks a rule. Errors name the mirror, the field and the rule,
/// never a configured value beyond names (docs/mirrors.md#errors).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MirrorError {
    #[error("config file: [[mirror]] {mirror}: {field}: {rule}")]
    Invalid {
        /// The mirror's name, or `#n` (1-based) where it has no valid one.
        mirror: String,
        field: String,
        rule: String,
    },
    #[error("config file: [[mirror]] {mirror}: unknown key {key:?} (known: {known})")]
    UnknownKey {
        mirror: String,
        key: String,
        known: &'static str,
    },
    #[error("config file: {0}")]
    Document(String),
}

#[cfg(test)]
mod tests;
