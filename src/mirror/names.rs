//! The names a mirror definition holds: the mirror's own name, the schema-qualified
//! table and its columns (docs/mirrors.md#names). Every identifier is quoted when
//! rendered into SQL, with `"` doubled, so a name that needs quoting works and no
//! configured name is ever read as SQL.

use std::fmt;

/// PostgreSQL keeps the first 63 bytes of an identifier (NAMEDATALEN - 1) and
/// silently drops the rest; a longer name is refused instead.
pub const MAX_IDENTIFIER_BYTES: usize = 63;

/// A mirror's name: `[a-z0-9_]+`, at most 63 characters; used by `--mirror`,
/// `status`, metric labels and the run records.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(transparent)]
pub struct MirrorName(String);

impl MirrorName {
    /// The built-in mirror's name (`CSV_FILE` into `public.followers`).
    pub const FOLLOWERS: &'static str = "followers";

    /// Checks the syntax; the rule as words on error.
    pub fn parse(raw: &str) -> Result<Self, String> {
        if raw.is_empty() {
            return Err("must not be empty".into());
        }
        if raw.len() > MAX_IDENTIFIER_BYTES {
            return Err(format!(
                "is {} characters long, at most {MAX_IDENTIFIER_BYTES} are allowed",
                raw.len()
            ));
        }
        if !raw
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        {
            return Err("may hold only a-z, 0-9 and _ (like subscribers or crm_eu)".into());
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for MirrorName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One SQL identifier as the catalog holds it (case and all), non-empty, without
/// NUL, at most 63 bytes.
fn identifier(raw: &str, what: &str) -> Result<String, String> {
    if raw.is_empty() {
        return Err(format!("{what} must not be empty"));
    }
    if raw.contains('\0') {
        return Err(format!("{what} must not contain a NUL character"));
    }
    if raw.len() > MAX_IDENTIFIER_BYTES {
        return Err(format!(
            "{what} is {} bytes long, PostgreSQL keeps only {MAX_IDENTIFIER_BYTES}",
            raw.len()
        ));
    }
    Ok(raw.to_owned())
}

/// `ident` as a quoted SQL identifier: `"` around it, an inner `"` doubled.
pub fn quote_identifier(ident: &str) -> String {
    let mut out = String::with_capacity(ident.len() + 2);
    out.push('"');
    for c in ident.chars() {
        if c == '"' {
            out.push('"');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// A column's name, taken literally as the catalog holds it (`name = "Full Name"`
/// is the column `"Full Name"`; `name = "email"` is `"email"`, not `"Email"`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(transparent)]
pub struct ColumnName(String);

impl ColumnName {
    pub fn parse(raw: &str) -> Result<Self, String> {
        identifier(raw, "a column name").map(Self)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The name as a quoted SQL identifier, always.
    pub fn sql(&self) -> String {
        quote_identifier(&self.0)
    }
}

impl fmt::Display for ColumnName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A schema-qualified table, `schema.table`. In the configuration each part is
/// either a plain identifier (`[a-z_][a-z0-9_$]*`: lower case, as PostgreSQL
/// folds unquoted names, so an upper-case letter outside quotes is refused rather
/// than silently folded) or a quoted one, with `""` for a `"` inside:
/// `table = 'crm."Sub Scribers"'`. Rendered into SQL, both parts are always quoted.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TableName {
    schema: String,
    table: String,
}

impl TableName {
    /// A table from its two parts as the catalog holds them (no quoting syntax).
    pub fn new(schema: &str, table: &str) -> Result<Self, String> {
        Ok(Self {
            schema: identifier(schema, "the schema")?,
            table: identifier(table, "the table name")?,
        })
    }

    /// Parses the configuration's spelling (see the type's documentation).
    pub fn parse(raw: &str) -> Result<Self, String> {
        let (schema, rest) = part(raw.trim(), "the schema")?;
        let Some(rest) = rest.strip_prefix('.') else {
            return Err(
                "must be schema-qualified, like crm.subscribers (public.followers for the default schema)"
                    .into(),
            );
        };
        let (table, rest) = part(rest, "the table name")?;
        if !rest.is_empty() {
            return Err(if rest.starts_with('.') {
                "must have exactly two parts, schema.table (a database name is not allowed)".into()
            } else {
                "has text after the table name; quote a name that holds spaces or other characters, like crm.\"Sub Scribers\"".into()
            });
        }
        Self::new(&schema, &table)
    }

    pub fn schema(&self) -> &str {
        &self.schema
    }

    pub fn table(&self) -> &str {
        &self.table
    }

    /// `"schema"."table"`, always quoted.
    pub fn sql(&self) -> String {
        format!(
            "{}.{}",
            quote_identifier(&self.schema),
            quote_identifier(&self.table)
        )
    }
}

/// The configuration's spelling back: plain parts bare, others quoted
/// (`crm.subscribers`, `crm."Sub Scribers"`), so it parses to the same name.
impl fmt::Display for TableName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shown = |part: &str| {
            if is_plain(part) {
                part.to_owned()
            } else {
                quote_identifier(part)
            }
        };
        write!(f, "{}.{}", shown(&self.schema), shown(&self.table))
    }
}

impl serde::Serialize for TableName {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

fn is_plain(part: &str) -> bool {
    let mut bytes = part.bytes();
    bytes
        .next()
        .is_some_and(|b| b.is_ascii_lowercase() || b == b'_')
        && bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'$')
}

/// One part of a table name at the start of `raw`: its catalog text and the rest.
fn part<'a>(raw: &'a str, what: &str) -> Result<(String, &'a str), String> {
    if let Some(quoted) = raw.strip_prefix('"') {
        let mut out = String::new();
        let mut chars = quoted.char_indices();
        while let Some((i, c)) = chars.next() {
            if c != '"' {
                out.push(c);
                continue;
            }
            if quoted[i + 1..].starts_with('"') {
                out.push('"');
                chars.next();
                continue;
            }
            return Ok((out, &quoted[i + 1..]));
        }
        return Err(format!("{what} opens a quote that is not closed"));
    }
    let end = raw.find(['.', '"']).unwrap_or(raw.len());
    let bare = &raw[..end];
    if bare.is_empty() {
        return Err(format!("{what} is empty"));
    }
    if !is_plain(bare) {
        return Err(format!(
            "{what} {bare:?} is not a plain lower-case identifier; quote it to keep its case and characters, like \"{bare}\""
        ));
    }
    Ok((bare.to_owned(), &raw[end..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mirror_names() {
        assert!(MirrorName::parse("subscribers_2").is_ok());
        for bad in ["", "Subscribers", "crm-eu", "a b", "é", &"a".repeat(64)] {
            assert!(MirrorName::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn quoting_doubles_quotes() {
        assert_eq!(quote_identifier("a\"b"), "\"a\"\"b\"");
        assert_eq!(quote_identifier("email"), "\"email\"");
        assert_eq!(
            ColumnName::parse("Full Name").unwrap().sql(),
            "\"Full Name\""
        );
    }

    #[test]
    fn plain_table_names() {
        let t = TableName::parse("crm.subscribers").unwrap();
        assert_eq!((t.schema(), t.table()), ("crm", "subscribers"));
        assert_eq!(t.sql(), "\"crm\".\"subscribers\"");
        assert_eq!(t.to_string(), "crm.subscribers");
        assert_eq!(TableName::parse(" crm.subscribers ").unwrap(), t);
    }

    #[test]
    fn a_name_that_needs_quoting_works() {
        let t = TableName::parse(r#"crm."Sub Scribers""#).unwrap();
        assert_eq!(t.table(), "Sub Scribers");
        assert_eq!(t.sql(), r#""crm"."Sub Scribers""#);
        assert_eq!(t.to_string(), r#"crm."Sub Scribers""#);

        let t = TableName::parse(r#""My.Schema"."a ""quoted"" name""#).unwrap();
        assert_eq!((t.schema(), t.table()), ("My.Schema", r#"a "quoted" name"#));
        assert_eq!(t.sql(), r#""My.Schema"."a ""quoted"" name""#);
        assert_eq!(TableName::parse(&t.to_string()).unwrap(), t);

        // Hostile text stays inside one identifier.
        let t = TableName::parse(r#"public."x""; DROP TABLE y; --""#).unwrap();
        assert_eq!(t.table(), r#"x"; DROP TABLE y; --"#);
        assert_eq!(t.sql(), r#""public"."x""; DROP TABLE y; --""#);
    }

    #[test]
    fn bad_table_names() {
        for bad in [
            "subscribers",
            "crm.",
            ".subscribers",
            "db.crm.subscribers",
            "crm.Subscribers",
            "crm.sub scribers",
            r#"crm."open"#,
            r#"crm."""#,
            r#"crm."a"b"#,
            &format!("crm.{}", "a".repeat(64)),
        ] {
            assert!(TableName::parse(bad).is_err(), "{bad:?}");
        }
        assert!(TableName::parse("crm.Subscribers")
            .unwrap_err()
            .contains("quote it"));
    }
}
