//! `history KEY… --mirror NAME` (docs/mirrors.md#history): the key as an
//! operator types it (the values in the key's order, or `col=value` pairs),
//! each value validated by its column's type; then every journaled change of
//! that key, oldest first, from the journal's `history` statement.

use super::{stmt, MirrorRunError};
use crate::mirror::value::parse_field;
use crate::mirror::MirrorSpec;
use crate::storage::mirror::{key_json, MirrorSql};
use sea_orm::{ConnectionTrait, DbErr, Value};

/// One journaled change of one key.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct MirrorEvent {
    /// When the run committed (RFC 3339, UTC); null without its record.
    pub time: Option<String>,
    pub load_id: uuid::Uuid,
    /// `inserted`, `updated` or `deleted`.
    pub action: &'static str,
    /// The file the run read; null without its record.
    pub file: Option<String>,
    /// The configured columns outside the key whose value the change set or
    /// changed (an insert: those with a value; a delete: those that had one).
    pub changed: Vec<String>,
    /// The row before (updated, deleted): the configured columns and the
    /// `modified_column`, as the journal holds them.
    pub before: Option<serde_json::Value>,
    /// The row after (inserted, updated).
    pub after: Option<serde_json::Value>,
    /// When the run was reverted, if it was.
    pub reverted_at: Option<String>,
}

impl MirrorEvent {
    /// A column's value before and after, as JSON (null where absent).
    pub fn values(&self, column: &str) -> (&serde_json::Value, &serde_json::Value) {
        (
            value_of(&self.before, column),
            value_of(&self.after, column),
        )
    }
}

fn value_of<'s>(state: &'s Option<serde_json::Value>, column: &str) -> &'s serde_json::Value {
    state
        .as_ref()
        .and_then(|s| s.get(column))
        .unwrap_or(&serde_json::Value::Null)
}

/// `arg` as `col=value` of one of `spec`'s key columns.
fn key_pair<'a>(
    spec: &'a MirrorSpec,
    arg: &'a str,
) -> Option<(&'a crate::mirror::ColumnName, &'a str)> {
    let (column, value) = arg.split_once('=')?;
    let column = spec.key.iter().find(|k| k.as_str() == column.trim())?;
    Some((column, value))
}

/// The key of `spec` from the command line's `KEY` values: the values in the
/// key's order, or one `col=value` pair per key column in any order (each
/// column once), not a mix; each value validated and made canonical by its
/// column's type (`key_json`). The error names the column and why.
pub fn key_from_args(spec: &MirrorSpec, args: &[String]) -> Result<serde_json::Value, String> {
    let columns = || {
        spec.key
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    };
    let pairs: Vec<_> = args.iter().filter_map(|a| key_pair(spec, a)).collect();
    let values: Vec<&str> = if pairs.is_empty() {
        args.iter().map(String::as_str).collect()
    } else if pairs.len() < args.len() {
        return Err(format!(
            "give the key of mirror {} ({}) either as its values in that order or as col=value pairs, not both",
            spec.name,
            columns()
        ));
    } else {
        let mut values = Vec::with_capacity(spec.key.len());
        for column in &spec.key {
            let mut given = pairs.iter().filter(|(c, _)| *c == column);
            match (given.next(), given.next()) {
                (Some((_, value)), None) => values.push(*value),
                (Some(_), Some(_)) => return Err(format!("{column} is given twice")),
                (None, _) => {
                    return Err(format!(
                        "no value for {column}: mirror {} has the key {}, every column once",
                        spec.name,
                        columns()
                    ))
                }
            }
        }
        values
    };
    if values.len() == spec.key.len() {
        // Each value by its column's rule first, for the reason in the words of
        // a reject (`account_id is empty`, `email "x" has no '@'`).
        for (name, raw) in spec.key.iter().zip(&values) {
            if let Some(column) = spec.column(name) {
                match parse_field(column, raw) {
                    Ok(Some(_)) => {}
                    Ok(None) => return Err(format!("{name} is empty")),
                    Err(reason) => return Err(reason),
                }
            }
        }
    }
    key_json(spec, &values)
}

fn action(op: &str) -> &'static str {
    match op {
        "i" => "inserted",
        "u" => "updated",
        _ => "deleted",
    }
}

fn state(text: Option<String>) -> Option<serde_json::Value> {
    text.and_then(|t| serde_json::from_str(&t).ok())
}

fn utc(t: Option<chrono::DateTime<chrono::Utc>>) -> Option<String> {
    t.map(|t| t.to_rfc3339())
}

/// Every journaled change of `key` (`key_from_args`) in `spec`'s table, oldest
/// first. The journal keeps the newest `journal_keep_runs` runs.
#[tracing::instrument(skip_all, fields(mirror = %spec.name))]
pub async fn mirror_history(
    db: &impl ConnectionTrait,
    spec: &MirrorSpec,
    key: &serde_json::Value,
) -> Result<Vec<MirrorEvent>, MirrorRunError> {
    let at = |source| super::merge::db_error(spec, "history", source);
    let rows = db
        .query_all(stmt(
            &MirrorSql::new(spec).history(),
            vec![
                Value::from(spec.name.to_string()),
                Value::from(key.to_string()),
            ],
        ))
        .await
        .map_err(at)?;
    rows.iter()
        .map(|row| {
            let op: String = row.try_get("", "op")?;
            let mut event = MirrorEvent {
                time: utc(row.try_get("", "finished_at")?),
                load_id: row.try_get("", "load_id")?,
                action: action(&op),
                file: row.try_get("", "file")?,
                changed: Vec::new(),
                before: state(row.try_get("", "before")?),
                after: state(row.try_get("", "after")?),
                reverted_at: utc(row.try_get("", "reverted_at")?),
            };
            event.changed = spec
                .value_columns()
                .map(|c| c.name.as_str())
                .filter(|c| {
                    let (before, after) = event.values(c);
                    before != after
                })
                .map(str::to_owned)
                .collect();
            Ok(event)
        })
        .collect::<Result<Vec<_>, DbErr>>()
        .map_err(at)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> MirrorSpec {
        crate::mirror::from_toml_str(
            r#"[[mirror]]
name = "subs"
file = "s.csv"
table = "crm.subs"
key = ["account_id", "email"]
columns = [
  { name = "account_id", type = "bigint" },
  { name = "email", type = "email" },
  { name = "plan", type = "text", nullable = true },
]
"#,
        )
        .unwrap()
        .remove(0)
    }

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn a_key_is_its_values_in_order_or_pairs_in_any_order() {
        let spec = spec();
        let expected = serde_json::json!({"account_id": "7", "email": "ann@x.io"});
        for given in [
            &["+007", " ANN@x.io "][..],
            &["account_id=7", "email=Ann@X.io"][..],
            &["email=ann@x.io", "account_id=7"][..],
        ] {
            assert_eq!(key_from_args(&spec, &args(given)), Ok(expected.clone()));
        }
    }

    #[test]
    fn a_bad_key_names_the_column_and_why() {
        let spec = spec();
        for (given, part) in [
            (
                &["12x", "ann@x.io"][..],
                "account_id \"12x\" is not a whole number",
            ),
            (
                &["1"][..],
                "a key of 2 column(s) (account_id, email), 1 value(s) given",
            ),
            (&["account_id=1"][..], "no value for email"),
            (
                &["account_id=1", "account_id=2"][..],
                "account_id is given twice",
            ),
            (&["account_id=1", "ann@x.io"][..], "not both"),
            (
                &["account_id=1", "email=nope"][..],
                "email \"nope\" has no '@'",
            ),
            (&["", "ann@x.io"][..], "account_id is empty"),
        ] {
            let e = key_from_args(&spec, &args(given)).unwrap_err();
            assert!(e.contains(part), "{given:?}: {e}");
        }
    }
}
