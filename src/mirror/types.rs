//! `ColumnType`: the types a mirror's column may have (docs/mirrors.md#types), the
//! PostgreSQL type a created table gets for each, and which existing column types
//! each may be loaded into (checked once at start-up against the catalog).

use std::fmt;

/// A configured column's type. `Text`'s `max_length` is in characters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ColumnType {
    Text { max_length: Option<u32> },
    Email,
    Bigint,
    Integer,
    Numeric,
    Boolean,
    Date,
    Timestamp,
    Timestamptz,
    Uuid,
}

/// Every type's configuration spelling, in the order the docs list them.
pub const TYPE_NAMES: &[&str] = &[
    "text",
    "email",
    "bigint",
    "integer",
    "numeric",
    "boolean",
    "date",
    "timestamp",
    "timestamptz",
    "uuid",
];

/// The longest address `email` accepts, in characters (as `followers.email`).
pub const EMAIL_MAX_CHARS: u32 = 255;

impl ColumnType {
    /// The type from its configuration spelling (`type = "bigint"`), without a
    /// `max_length` (set apart).
    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "text" => Self::Text { max_length: None },
            "email" => Self::Email,
            "bigint" => Self::Bigint,
            "integer" => Self::Integer,
            "numeric" => Self::Numeric,
            "boolean" => Self::Boolean,
            "date" => Self::Date,
            "timestamp" => Self::Timestamp,
            "timestamptz" => Self::Timestamptz,
            "uuid" => Self::Uuid,
            _ => return None,
        })
    }

    /// The configuration spelling.
    pub fn name(self) -> &'static str {
        match self {
            Self::Text { .. } => "text",
            Self::Email => "email",
            Self::Bigint => "bigint",
            Self::Integer => "integer",
            Self::Numeric => "numeric",
            Self::Boolean => "boolean",
            Self::Date => "date",
            Self::Timestamp => "timestamp",
            Self::Timestamptz => "timestamptz",
            Self::Uuid => "uuid",
        }
    }

    /// The column type a table created by the agent gets: `varchar(n)` for a text
    /// with a `max_length` (so the database enforces it too) and for `email`
    /// (`varchar(255)`, as `followers.email`).
    pub fn create_sql(self) -> String {
        match self {
            Self::Text {
                max_length: Some(n),
            } => format!("varchar({n})"),
            Self::Text { max_length: None } => "text".into(),
            Self::Email => format!("varchar({EMAIL_MAX_CHARS})"),
            Self::Bigint => "bigint".into(),
            Self::Integer => "integer".into(),
            Self::Numeric => "numeric".into(),
            Self::Boolean => "boolean".into(),
            Self::Date => "date".into(),
            Self::Timestamp => "timestamp".into(),
            Self::Timestamptz => "timestamptz".into(),
            Self::Uuid => "uuid".into(),
        }
    }

    /// Whether an existing column of the catalog type `catalog` (a `pg_type.typname`
    /// such as `int8`, an `information_schema.columns.data_type` such as
    /// `character varying`, or `format_type` output such as `character varying(100)`;
    /// any case) can hold every value this type accepts, and compare them as the
    /// file does. `char_max_length` is the column's limit, where it has one
    /// (`character_maximum_length`; taken from `(n)` in `catalog` when not given).
    ///
    /// - `text`, `email`: `text`, `varchar` (its limit at least `max_length`, or 255
    ///   for `email`; a text without `max_length` needs an unlimited column), `citext`.
    ///   Not `char(n)`: it pads values, so they would never compare equal.
    /// - `bigint`: `int8`. `integer`: `int4` or `int8` (every value fits).
    /// - `numeric`: `numeric` without a precision only (a float, or `numeric(p,s)`,
    ///   would round values, which then always differ, or refuse them); so pass
    ///   `format_type` output here, not the bare `data_type`.
    /// - `boolean`, `date`, `uuid`: the same type.
    /// - `timestamp`, `timestamptz`: exactly the same one; one into the other
    ///   would shift values by the session's time zone.
    pub fn compatible(self, catalog: &str, char_max_length: Option<u32>) -> Result<(), String> {
        let lowered = catalog.trim().to_ascii_lowercase();
        let (base, modifier) = match lowered.split_once('(') {
            Some((base, rest)) => (
                base.trim(),
                rest.trim_end_matches(')').trim().parse::<u32>().ok(),
            ),
            None => (lowered.as_str(), None),
        };
        let limit = char_max_length.or(modifier);
        let canonical = match base {
            "int8" | "bigint" => "int8",
            "int4" | "integer" | "int" => "int4",
            "int2" | "smallint" => "int2",
            "varchar" | "character varying" => "varchar",
            "bpchar" | "character" | "char" => "bpchar",
            "bool" | "boolean" => "bool",
            "decimal" | "numeric" => "numeric",
            "timestamp" | "timestamp without time zone" => "timestamp",
            "timestamptz" | "timestamp with time zone" => "timestamptz",
            "float8" | "double precision" => "float8",
            "float4" | "real" => "float4",
            other => other,
        };
        let texts = |needed: Option<u32>| {
            match (canonical, limit, needed) {
            ("text" | "citext", _, _) | ("varchar", None, _) => Ok(()),
            ("varchar", Some(n), Some(m)) if n >= m => Ok(()),
            ("varchar", Some(n), Some(m)) => Err(format!(
                "is varchar({n}), shorter than the {m} characters the configuration allows; widen it or set max_length = {n}"
            )),
            ("varchar", Some(n), None) => Err(format!(
                "is varchar({n}) but the configuration allows any length; set max_length = {n} or make it text"
            )),
            _ => Err(self.mismatch(catalog)),
        }
        };
        match self {
            Self::Text { max_length } => texts(max_length),
            Self::Email => texts(Some(EMAIL_MAX_CHARS)),
            Self::Bigint if canonical == "int8" => Ok(()),
            Self::Integer if matches!(canonical, "int4" | "int8") => Ok(()),
            Self::Numeric if canonical == "numeric" && lowered.contains('(') => Err(format!(
                "is {catalog}: a value with more digits would be rounded (and so always differ) or refused; make it numeric without a precision"
            )),
            Self::Numeric if canonical == "numeric" => Ok(()),
            Self::Boolean if canonical == "bool" => Ok(()),
            Self::Date if canonical == "date" => Ok(()),
            Self::Timestamp if canonical == "timestamp" => Ok(()),
            Self::Timestamptz if canonical == "timestamptz" => Ok(()),
            Self::Uuid if canonical == "uuid" => Ok(()),
            _ => Err(self.mismatch(catalog)),
        }
    }

    fn mismatch(self, catalog: &str) -> String {
        let wanted = match self {
            Self::Text { .. } | Self::Email => "text, varchar or citext",
            Self::Bigint => "bigint",
            Self::Integer => "integer or bigint",
            Self::Numeric => "numeric",
            Self::Boolean => "boolean",
            Self::Date => "date",
            Self::Timestamp => "timestamp (without time zone)",
            Self::Timestamptz => "timestamptz (timestamp with time zone)",
            Self::Uuid => "uuid",
        };
        format!(
            "is {catalog}, which cannot hold a {} column; it must be {wanted}",
            self.name()
        )
    }
}

/// Whether an existing column of the catalog type `catalog` can be a mirror's
/// `modified_column`: `timestamp` or `timestamptz` (the agent writes either,
/// as it writes `followers.modified_at`, docs/sync.md#modified_at-and-the-time-zone).
pub fn modified_column_compatible(catalog: &str) -> Result<(), String> {
    ColumnType::Timestamp
        .compatible(catalog, None)
        .or_else(|_| ColumnType::Timestamptz.compatible(catalog, None))
        .map_err(|_| format!("is {catalog}; modified_column must be timestamp or timestamptz"))
}

impl fmt::Display for ColumnType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Text {
                max_length: Some(n),
            } => write!(f, "text (at most {n} characters)"),
            other => f.write_str(other.name()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_round_trips() {
        for name in TYPE_NAMES {
            assert_eq!(ColumnType::from_name(name).unwrap().name(), *name);
        }
        assert_eq!(ColumnType::from_name("int"), None);
        assert_eq!(ColumnType::from_name("Text"), None);
    }

    #[test]
    fn created_types() {
        let text = |max_length| ColumnType::Text { max_length };
        assert_eq!(text(None).create_sql(), "text");
        assert_eq!(text(Some(80)).create_sql(), "varchar(80)");
        assert_eq!(ColumnType::Email.create_sql(), "varchar(255)");
        assert_eq!(ColumnType::Timestamptz.create_sql(), "timestamptz");
    }

    #[test]
    fn compatibility_with_the_catalog() {
        let ok = |t: ColumnType, c: &str| t.compatible(c, None).is_ok();
        let text = |max_length| ColumnType::Text { max_length };
        assert!(ok(ColumnType::Email, "text"));
        assert!(ok(ColumnType::Email, "citext"));
        assert!(ok(ColumnType::Email, "character varying(255)"));
        assert!(ok(ColumnType::Email, "varchar"));
        assert!(!ok(ColumnType::Email, "varchar(100)"));
        assert!(ColumnType::Email.compatible("varchar", Some(255)).is_ok());
        assert!(!ok(ColumnType::Email, "bpchar"));
        assert!(ok(text(Some(80)), "varchar(80)"));
        assert!(ok(text(Some(80)), "VARCHAR(100)"));
        assert!(!ok(text(Some(81)), "varchar(80)"));
        assert!(!ok(text(None), "varchar(80)"));
        assert!(ok(text(None), "text"));
        assert!(!ok(text(None), "character(10)"));
        assert!(ok(ColumnType::Bigint, "int8"));
        assert!(ok(ColumnType::Bigint, "bigint"));
        assert!(!ok(ColumnType::Bigint, "int4"));
        assert!(!ok(ColumnType::Bigint, "numeric"));
        assert!(ok(ColumnType::Integer, "int4"));
        assert!(ok(ColumnType::Integer, "integer"));
        assert!(ok(ColumnType::Integer, "int8"));
        assert!(!ok(ColumnType::Integer, "int2"));
        assert!(ok(ColumnType::Numeric, "numeric"));
        assert!(!ok(ColumnType::Numeric, "numeric(12,2)"));
        assert!(!ok(ColumnType::Numeric, "double precision"));
        assert!(ok(ColumnType::Boolean, "bool"));
        assert!(ok(ColumnType::Date, "date"));
        assert!(ok(ColumnType::Timestamp, "timestamp without time zone"));
        assert!(!ok(ColumnType::Timestamp, "timestamptz"));
        assert!(ok(ColumnType::Timestamptz, "timestamp with time zone"));
        assert!(ok(ColumnType::Timestamptz, "timestamptz"));
        assert!(!ok(ColumnType::Timestamptz, "timestamp"));
        assert!(ok(ColumnType::Uuid, "uuid"));
        assert!(!ok(ColumnType::Uuid, "text"));
        let e = ColumnType::Uuid.compatible("text", None).unwrap_err();
        assert!(e.contains("must be uuid"), "{e}");
        assert!(modified_column_compatible("timestamp without time zone").is_ok());
        assert!(modified_column_compatible("timestamptz").is_ok());
        let e = modified_column_compatible("date").unwrap_err();
        assert!(e.contains("must be timestamp or timestamptz"), "{e}");
        let e = text(None).compatible("varchar(80)", None).unwrap_err();
        assert!(e.contains("max_length = 80"), "{e}");
    }
}
