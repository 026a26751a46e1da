//! The `[[mirror]]` array of the config file (docs/mirrors.md#configuration): its
//! serde shape (`RawMirror`, `RawColumn`, unknown keys refused) and the rules
//! that turn it into `MirrorSpec`s (docs/mirrors.md#rules). Errors name the
//! mirror, the key and the rule; no message repeats a configured value other
//! than a name.

use super::*;
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Component;

/// One `[[mirror]]` table as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMirror {
    pub name: String,
    pub file: Option<String>,
    pub files: Option<String>,
    pub table: String,
    pub key: Vec<String>,
    pub columns: Vec<RawColumn>,
    pub schedule: Option<String>,
    pub modified_column: Option<String>,
    pub max_delete_ratio: Option<f64>,
    pub max_rejects: Option<i64>,
    pub csv_delimiter: Option<String>,
    pub csv_header: Option<RawHeader>,
    pub csv_encoding: Option<String>,
    pub ready_marker: Option<String>,
    pub journal_keep_runs: Option<i64>,
}

/// `csv_header = true`, `false` or `"auto"` (also `"true"`/`"false"`, as `CSV_HEADER`).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum RawHeader {
    Flag(bool),
    Word(String),
}

/// One entry of `columns`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawColumn {
    pub name: String,
    #[serde(rename = "type")]
    pub ty: String,
    #[serde(default)]
    pub nullable: bool,
    pub max_length: Option<i64>,
    pub source: Option<String>,
}

/// The TOML kind each key must have, to refuse a wrong one by its key (serde's
/// own messages quote the value).
#[derive(Clone, Copy)]
enum Kind {
    Text,
    Texts,
    Number,
    Integer,
    Bool,
    TextOrBool,
    Columns,
}

impl Kind {
    fn fits(self, v: &toml::Value) -> bool {
        use toml::Value as V;
        match (self, v) {
            (Self::Text, V::String(_)) | (Self::Bool, V::Boolean(_)) => true,
            (Self::Texts, V::Array(a)) => a.iter().all(toml::Value::is_str),
            (Self::Number, V::Float(_) | V::Integer(_)) | (Self::Integer, V::Integer(_)) => true,
            (Self::TextOrBool, V::String(_) | V::Boolean(_)) => true,
            (Self::Columns, V::Array(a)) => a.iter().all(toml::Value::is_table),
            _ => false,
        }
    }

    fn expected(self) -> &'static str {
        match self {
            Self::Text => "expected a string",
            Self::Texts => "expected an array of strings, like [\"account_id\", \"email\"]",
            Self::Number => "expected a number",
            Self::Integer => "expected a whole number",
            Self::Bool => "expected true or false",
            Self::TextOrBool => "expected true, false or \"auto\"",
            Self::Columns => {
                "expected an array of inline tables, like [{ name = \"email\", type = \"email\" }]"
            }
        }
    }
}

const MIRROR_KEYS: &[(&str, Kind)] = &[
    ("name", Kind::Text),
    ("file", Kind::Text),
    ("files", Kind::Text),
    ("table", Kind::Text),
    ("key", Kind::Texts),
    ("columns", Kind::Columns),
    ("schedule", Kind::Text),
    ("modified_column", Kind::Text),
    ("max_delete_ratio", Kind::Number),
    ("max_rejects", Kind::Integer),
    ("csv_delimiter", Kind::Text),
    ("csv_header", Kind::TextOrBool),
    ("csv_encoding", Kind::Text),
    ("ready_marker", Kind::Text),
    ("journal_keep_runs", Kind::Integer),
];
const MIRROR_KNOWN: &str = "name, file, files, table, key, columns, schedule, modified_column, max_delete_ratio, max_rejects, csv_delimiter, csv_header, csv_encoding, ready_marker, journal_keep_runs";

const COLUMN_KEYS: &[(&str, Kind)] = &[
    ("name", Kind::Text),
    ("type", Kind::Text),
    ("nullable", Kind::Bool),
    ("max_length", Kind::Integer),
    ("source", Kind::Text),
];
const COLUMN_KNOWN: &str = "name, type, nullable, max_length, source";

/// Schemas a mirror may not write into: the catalogs and the agent's own.
const RESERVED_SCHEMAS: &[&str] = &["pg_catalog", "information_schema", "etl_info_schema"];

/// The longest `varchar` PostgreSQL has.
const MAX_VARCHAR: i64 = 10_485_760;

/// Builds the errors of one mirror.
struct Ctx {
    mirror: String,
}

impl Ctx {
    fn err(&self, field: impl Into<String>, rule: impl Into<String>) -> MirrorError {
        MirrorError::Invalid {
            mirror: self.mirror.clone(),
            field: field.into(),
            rule: rule.into(),
        }
    }
}

/// The mirrors of a whole config file (`[[mirror]]`; no such key: none). Other
/// keys are the variables' layer and left to it. A file that is not TOML is an
/// error naming the line, without its text (another line may hold a secret).
pub fn from_toml_str(text: &str) -> Result<Vec<MirrorSpec>, MirrorError> {
    let doc: toml::Table = text.parse().map_err(|e: toml::de::Error| {
        let line = e
            .span()
            .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
        MirrorError::Document(match line {
            Some(line) => format!("not valid TOML (line {line})"),
            None => "not valid TOML".into(),
        })
    })?;
    match doc.get("mirror") {
        None => Ok(Vec::new()),
        Some(value) => parse_mirrors(value),
    }
}

/// The `mirror` value of a parsed config file (an array of tables), each
/// validated, then the set (`validate_set`).
pub fn parse_mirrors(value: &toml::Value) -> Result<Vec<MirrorSpec>, MirrorError> {
    let tables = value
        .as_array()
        .filter(|a| a.iter().all(toml::Value::is_table))
        .ok_or_else(|| {
            MirrorError::Document(
                "`mirror` must be an array of tables, each written [[mirror]]".into(),
            )
        })?;
    let specs = tables
        .iter()
        .enumerate()
        .map(|(i, t)| parse_one(i, t))
        .collect::<Result<Vec<_>, _>>()?;
    validate_set(&specs)?;
    Ok(specs)
}

fn parse_one(index: usize, value: &toml::Value) -> Result<MirrorSpec, MirrorError> {
    let table = value.as_table().expect("checked by parse_mirrors");
    let mirror = match table.get("name").and_then(toml::Value::as_str) {
        Some(name) if MirrorName::parse(name).is_ok() => name.to_owned(),
        _ => format!("#{}", index + 1),
    };
    let ctx = Ctx { mirror };
    check_keys(
        &ctx,
        table,
        MIRROR_KEYS,
        MIRROR_KNOWN,
        &["name", "table", "key", "columns"],
        "",
    )?;
    if let Some(toml::Value::Array(columns)) = table.get("columns") {
        for (i, column) in columns.iter().enumerate() {
            let column = column.as_table().expect("checked by Kind::Columns");
            let at = match column.get("name").and_then(toml::Value::as_str) {
                Some(name) => format!("columns[{}] ({name:?})", i + 1),
                None => format!("columns[{}]", i + 1),
            };
            check_keys(
                &ctx,
                column,
                COLUMN_KEYS,
                COLUMN_KNOWN,
                &["name", "type"],
                &at,
            )?;
        }
    }
    let raw = RawMirror::deserialize(value.clone()).map_err(|e| ctx.err("shape", sanitised(&e)))?;
    raw.validate_as(&ctx)
}

/// Unknown keys and wrong kinds, by key. `at`: where in the mirror (a column).
fn check_keys(
    ctx: &Ctx,
    table: &toml::Table,
    keys: &[(&str, Kind)],
    known: &'static str,
    required: &[&str],
    at: &str,
) -> Result<(), MirrorError> {
    let field = |key: &str| {
        if at.is_empty() {
            key.to_owned()
        } else {
            format!("{at}.{key}")
        }
    };
    for (key, value) in table {
        match keys.iter().find(|(k, _)| k == key) {
            None => {
                return Err(MirrorError::UnknownKey {
                    mirror: ctx.mirror.clone(),
                    key: field(key),
                    known,
                })
            }
            Some((_, kind)) if !kind.fits(value) => {
                return Err(ctx.err(field(key), kind.expected()))
            }
            Some(_) => {}
        }
    }
    for key in required {
        if !table.contains_key(*key) {
            return Err(ctx.err(field(key), "is required"));
        }
    }
    Ok(())
}

/// A serde message without the value it may quote (`invalid type: string "…",
/// expected …` → `invalid type, expected …`). Reached only for shapes the key
/// check does not know.
fn sanitised(e: &toml::de::Error) -> String {
    let message = e.message();
    for prefix in ["invalid type", "invalid value", "invalid length"] {
        if let Some(rest) = message.strip_prefix(prefix) {
            return match rest.find(", expected") {
                Some(i) => format!("{prefix}{}", &rest[i..]),
                None => prefix.to_owned(),
            };
        }
    }
    message.to_owned()
}

impl RawMirror {
    /// Every per-mirror rule (docs/mirrors.md#rules); `index` (0-based) names a
    /// mirror without a valid name.
    pub fn validate(&self, index: usize) -> Result<MirrorSpec, MirrorError> {
        let mirror = if MirrorName::parse(&self.name).is_ok() {
            self.name.clone()
        } else {
            format!("#{}", index + 1)
        };
        self.validate_as(&Ctx { mirror })
    }

    fn validate_as(&self, ctx: &Ctx) -> Result<MirrorSpec, MirrorError> {
        let name = MirrorName::parse(&self.name).map_err(|rule| ctx.err("name", rule))?;
        if name.as_str() == MirrorName::FOLLOWERS {
            return Err(ctx.err(
                "name",
                "followers is the built-in mirror's name (CSV_FILE into public.followers); choose another",
            ));
        }
        let source = match (&self.file, &self.files) {
            (Some(file), None) => MirrorSource::File(file_path(ctx, file)?),
            (None, Some(pattern)) => MirrorSource::Glob(glob_pattern(ctx, pattern)?),
            (Some(_), Some(_)) => {
                return Err(ctx.err("file", "set either file or files, not both"))
            }
            (None, None) => {
                return Err(ctx.err(
                    "file",
                    "is required: file = \"name.csv\" (relative to TABLES_DIR), or files = \"dir/part-*.csv\" for a glob",
                ))
            }
        };
        let table = TableName::parse(&self.table).map_err(|rule| ctx.err("table", rule))?;
        if RESERVED_SCHEMAS.contains(&table.schema()) || table.schema().starts_with("pg_") {
            return Err(ctx.err(
                "table",
                format!(
                    "the schema {} is PostgreSQL's or the agent's own; choose another schema",
                    table.schema()
                ),
            ));
        }
        let columns = self.columns(ctx)?;
        let key = self.key(ctx, &columns)?;
        let modified_column = match &self.modified_column {
            None => None,
            Some(raw) => {
                let column =
                    ColumnName::parse(raw).map_err(|rule| ctx.err("modified_column", rule))?;
                if columns.iter().any(|c| c.name == column) {
                    return Err(ctx.err(
                        "modified_column",
                        format!("{:?} is also in columns: the agent sets it, the file does not; remove it from columns (or from modified_column)", column.as_str()),
                    ));
                }
                Some(column)
            }
        };
        let schedule = self
            .schedule
            .as_deref()
            .map(|s| {
                Schedule::parse(s.trim()).map_err(|e| {
                    ctx.err("schedule", format!("{e} (robfig/cron v3 standard syntax)"))
                })
            })
            .transpose()?;
        Ok(MirrorSpec {
            name,
            source,
            table,
            key,
            columns,
            schedule,
            modified_column,
            overrides: self.overrides(ctx)?,
        })
    }

    fn columns(&self, ctx: &Ctx) -> Result<Vec<ColumnSpec>, MirrorError> {
        if self.columns.is_empty() {
            return Err(ctx.err("columns", "must list at least the key's columns"));
        }
        let mut names = BTreeSet::new();
        let mut sources = BTreeMap::new();
        let mut out = Vec::with_capacity(self.columns.len());
        for (i, raw) in self.columns.iter().enumerate() {
            let at = format!("columns[{}]", i + 1);
            let name =
                ColumnName::parse(&raw.name).map_err(|rule| ctx.err(format!("{at}.name"), rule))?;
            let at = format!("columns[{}] ({:?})", i + 1, name.as_str());
            let mut ty = ColumnType::from_name(&raw.ty).ok_or_else(|| {
                ctx.err(
                    format!("{at}.type"),
                    format!("unknown type; expected one of {}", TYPE_NAMES.join(", ")),
                )
            })?;
            if let Some(n) = raw.max_length {
                let ColumnType::Text { max_length } = &mut ty else {
                    return Err(ctx.err(
                        format!("{at}.max_length"),
                        format!("applies to text columns only, this one is {}", ty.name()),
                    ));
                };
                if !(1..=MAX_VARCHAR).contains(&n) {
                    return Err(ctx.err(
                        format!("{at}.max_length"),
                        format!("expected a whole number from 1 to {MAX_VARCHAR}"),
                    ));
                }
                *max_length = u32::try_from(n).ok();
            }
            let source = raw.source.clone().unwrap_or_else(|| raw.name.clone());
            let matched = source.trim().to_ascii_lowercase();
            if matched.is_empty() {
                return Err(ctx.err(format!("{at}.source"), "must not be empty"));
            }
            if !names.insert(name.clone()) {
                return Err(ctx.err(format!("{at}.name"), "names a column a second time"));
            }
            if let Some(first) = sources.insert(matched, name.clone()) {
                return Err(ctx.err(
                    format!("{at}.source"),
                    format!("reads the same header as {:?} (headers match trimmed and without regard to case); give one of them another source", first.as_str()),
                ));
            }
            out.push(ColumnSpec {
                name,
                ty,
                nullable: raw.nullable,
                source,
                rule: ValueRule::Standard,
            });
        }
        Ok(out)
    }

    fn key(&self, ctx: &Ctx, columns: &[ColumnSpec]) -> Result<Vec<ColumnName>, MirrorError> {
        if self.key.is_empty() {
            return Err(ctx.err("key", "must name at least one column"));
        }
        let mut key = Vec::with_capacity(self.key.len());
        for raw in &self.key {
            let Some(column) = columns.iter().find(|c| c.name.as_str() == raw) else {
                let listed: Vec<&str> = columns.iter().map(|c| c.name.as_str()).collect();
                return Err(ctx.err(
                    "key",
                    format!("{raw:?} is not one of the columns ({})", listed.join(", ")),
                ));
            };
            if column.nullable {
                return Err(ctx.err(
                    "key",
                    format!(
                        "{raw:?} is nullable; a key column may not be (remove nullable = true)"
                    ),
                ));
            }
            if key.contains(&column.name) {
                return Err(ctx.err("key", format!("{raw:?} is named twice")));
            }
            key.push(column.name.clone());
        }
        Ok(key)
    }

    fn overrides(&self, ctx: &Ctx) -> Result<SettingOverrides, MirrorError> {
        let whole = |field: &str, v: Option<i64>| {
            v.map(|n| u64::try_from(n).map_err(|_| ctx.err(field, "expected a whole number ≥ 0")))
                .transpose()
        };
        let max_delete_ratio = self
            .max_delete_ratio
            .map(|r| {
                if (0.0..=1.0).contains(&r) {
                    Ok(r)
                } else {
                    Err(ctx.err(
                        "max_delete_ratio",
                        "expected a number from 0.0 to 1.0 (1.0 disables the delete guard)",
                    ))
                }
            })
            .transpose()?;
        let csv_header = match &self.csv_header {
            None => None,
            Some(RawHeader::Flag(true)) => Some(HeaderMode::Present),
            Some(RawHeader::Flag(false)) => Some(HeaderMode::Absent),
            Some(RawHeader::Word(w)) => Some(match w.trim().to_ascii_lowercase().as_str() {
                "auto" => HeaderMode::Auto,
                "true" => HeaderMode::Present,
                "false" => HeaderMode::Absent,
                _ => return Err(ctx.err("csv_header", "expected true, false or \"auto\"")),
            }),
        };
        let csv_encoding = match self.csv_encoding.as_deref().map(str::trim) {
            None => None,
            Some(v) if v.eq_ignore_ascii_case("auto") => Some(None),
            Some(v) => Some(Some(
                encoding_rs::Encoding::for_label(v.as_bytes())
                    .filter(|e| *e != encoding_rs::REPLACEMENT)
                    .ok_or_else(|| ctx.err(
                        "csv_encoding",
                        "expected auto, utf-8, utf-16 (LE), utf-16be, windows-1252, latin1 or another WHATWG encoding label",
                    ))?,
            )),
        };
        let ready_marker = match self.ready_marker.as_deref().map(str::trim) {
            None => None,
            Some(v) if v.is_empty() || v.contains(['/', '\\']) || v == "." || v == ".." => {
                return Err(ctx.err(
                    "ready_marker",
                    "expected a suffix added to the file's name, such as .done (no path separators)",
                ))
            }
            Some(v) => Some(v.to_owned()),
        };
        Ok(SettingOverrides {
            max_delete_ratio,
            max_rejects: whole("max_rejects", self.max_rejects)?,
            csv_delimiter: self
                .csv_delimiter
                .as_deref()
                .map(|d| delimiter(d).ok_or_else(|| ctx.err(
                    "csv_delimiter",
                    "expected one ASCII character other than a quote or line break (\\t or tab for a tab)",
                )))
                .transpose()?,
            csv_header,
            csv_encoding,
            ready_marker,
            journal_keep_runs: whole("journal_keep_runs", self.journal_keep_runs)?,
        })
    }
}

/// `csv_delimiter`: one ASCII character, a tab also as `\t` or `tab`.
fn delimiter(raw: &str) -> Option<u8> {
    if raw == "\\t" || raw.eq_ignore_ascii_case("tab") {
        return Some(b'\t');
    }
    match raw.as_bytes() {
        [b] if b.is_ascii() && !matches!(b, b'"' | b'\n' | b'\r') => Some(*b),
        _ => None,
    }
}

/// A path's rule shared by `file` and `files`: relative to `TABLES_DIR`, no `..`.
fn relative(ctx: &Ctx, field: &str, raw: &str) -> Result<(), MirrorError> {
    let path = Path::new(raw);
    if raw.trim().is_empty() {
        return Err(ctx.err(field, "must not be empty"));
    }
    if path.is_absolute() || raw.starts_with(['/', '\\']) {
        return Err(ctx.err(
            field,
            "must be relative to TABLES_DIR (no absolute path), like subscribers.csv",
        ));
    }
    if path.components().any(|c| c == Component::ParentDir) {
        return Err(ctx.err(field, "must lie inside TABLES_DIR; '..' is not allowed"));
    }
    if raw.ends_with('/') {
        return Err(ctx.err(field, "must name a file, not a directory"));
    }
    Ok(())
}

const WILDCARDS: &[char] = &['*', '?', '['];

fn file_path(ctx: &Ctx, raw: &str) -> Result<PathBuf, MirrorError> {
    relative(ctx, "file", raw)?;
    if raw.contains(WILDCARDS) {
        return Err(ctx.err(
            "file",
            "holds a wildcard; for the union of several files write files = \"…\" instead",
        ));
    }
    Ok(PathBuf::from(raw))
}

fn glob_pattern(ctx: &Ctx, raw: &str) -> Result<String, MirrorError> {
    relative(ctx, "files", raw)?;
    let (dir, name) = raw.rsplit_once('/').unwrap_or(("", raw));
    if dir.contains(WILDCARDS) {
        return Err(ctx.err(
            "files",
            "may hold wildcards only in the file name, not in its directories",
        ));
    }
    if !name.contains(WILDCARDS) {
        return Err(ctx.err(
            "files",
            "holds no wildcard (*, ? or [...]); for one file write file = \"…\"",
        ));
    }
    if name.matches('[').count() != name.matches(']').count() {
        return Err(ctx.err("files", "opens a [ set it does not close"));
    }
    // The run matches with the `glob` crate (docs/mirrors.md#source-files).
    if let Err(e) = glob::Pattern::new(name) {
        return Err(ctx.err(
            "files",
            format!(
                "is not a valid pattern: {} (at character {})",
                e.msg,
                e.pos + 1
            ),
        ));
    }
    Ok(raw.to_owned())
}

/// The rules across mirrors: names unique, and no two mirrors into one table
/// (the built-in one included, when it is in `specs`).
pub fn validate_set(specs: &[MirrorSpec]) -> Result<(), MirrorError> {
    let mut names = BTreeSet::new();
    let mut tables: BTreeMap<&TableName, &MirrorName> = BTreeMap::new();
    for spec in specs {
        let ctx = Ctx {
            mirror: spec.name.to_string(),
        };
        if !names.insert(&spec.name) {
            return Err(ctx.err("name", "another mirror has this name; names must be unique"));
        }
        if let Some(other) = tables.insert(&spec.table, &spec.name) {
            return Err(ctx.err(
                "table",
                format!(
                    "mirror {other} already writes {}; one table has one mirror",
                    spec.table
                ),
            ));
        }
    }
    Ok(())
}
