//! `etl_info_schema.mirror_journal`: what every sync of a generic mirror changed,
//! one row per changed row (`op` `i`, `u` or `d`; the `key`, and the `before`
//! and `after` states of the configured columns and the `modified_column`, as
//! `jsonb`), written by the same statement that makes the change (a
//! data-modifying CTE), so the journal commits or rolls back with the merge and
//! unchanged rows cost nothing. From it: `revert` of one load, `history` of one
//! key. The states are read back as the configured columns' types
//! (`jsonb_to_record` with a column definition list generated from the
//! definition), so every value keeps its column's type and the table's further
//! columns (an application's own, maybe of a domain refusing NULL) are never
//! read. Before a revert, `revert_drift` checks that the table is still what the
//! run left for every row it changed, and `revert_counts` gives the rows each
//! revert statement must write back.

use super::{exact, json_object, pos, MirrorSql, Op, MODIFIED, RUNS};
use crate::mirror::value::parse_value;
use crate::mirror::MirrorSpec;

/// The journal of every generic mirror (created by the migration).
pub const JOURNAL: &str = "etl_info_schema.mirror_journal";

/// One of the merge's writes (insert, update, delete), as a plain statement and
/// as its journaled form, both derived here from the same text.
#[derive(Clone, Debug)]
pub struct Write {
    pub op: Op,
    statement: String,
    /// What the journaled form returns from the write (`... AS c{i}`, `cm`,
    /// `before`), for `key`, `before` and `after`.
    returning: Vec<String>,
    key: String,
    before: String,
    after: String,
}

impl Write {
    pub(super) fn new(
        sql: &MirrorSql<'_>,
        op: Op,
        statement: String,
        returning: Vec<String>,
    ) -> Self {
        let key = json_object(
            sql.key()
                .into_iter()
                .map(|(i, c)| (format!("c.{}", pos(i)), c.name.as_str())),
        );
        let mut state: Vec<(String, &str)> = sql
            .columns()
            .map(|(i, c)| (format!("c.{}", pos(i)), c.name.as_str()))
            .collect();
        if let Some(m) = &sql.spec.modified_column {
            state.push((format!("c.{MODIFIED}"), m.as_str()));
        }
        let (before, after) = match op {
            Op::Insert => ("NULL::jsonb".to_owned(), json_object(state)),
            Op::Update => ("c.before".to_owned(), json_object(state)),
            Op::Delete => ("c.before".to_owned(), "NULL::jsonb".to_owned()),
        };
        Self {
            op,
            statement,
            returning,
            key,
            before,
            after,
        }
    }

    /// The write alone (no parameters): for a run that does not journal.
    pub fn plain(&self) -> &str {
        &self.statement
    }

    /// The write and its journal rows in one statement (`storage::journaled`,
    /// as the built-in mirror's): `$1` the load, `$2` the mirror's name.
    pub fn journaled(&self) -> String {
        crate::storage::journaled(
            &self.statement,
            &self.returning.join(", "),
            JOURNAL,
            "load_id, mirror, op, key, before, after",
            &format!(
                "$1, $2, '{op}', {key}, {before}, {after}",
                op = self.op.code(),
                key = self.key,
                before = self.before,
                after = self.after,
            ),
        )
    }
}

impl MirrorSql<'_> {
    /// The journal rows of the load `$1` of mirror `$2` with operation `op`,
    /// each with its `state` (`key`, `before`) as the record `b` of the
    /// configured columns.
    fn journal_rows(&self, op: Op, state: &str) -> String {
        let def = if state == "key" {
            self.key_def()
        } else {
            self.state_def()
        };
        format!(
            "{JOURNAL} j, LATERAL jsonb_to_record(j.{state}) AS b({def})
  WHERE j.load_id = $1 AND j.mirror = $2 AND j.op = '{op}'",
            op = op.code()
        )
    }

    /// The rows of the load `$1` (mirror `$2`) whose state in the table is not
    /// what the load left: an insert or update whose row is absent now or whose
    /// configured columns (or `modified_column`) differ from its `after` (each
    /// compared as the diff compares it, `exact`), a
    /// delete whose key is present again. Up to three, each with the key (`jsonb`
    /// as text), the op and whether the row is present now, and how many in all
    /// (`bigint`). A revert refuses unless this is empty: it would not be exact.
    pub fn revert_drift(&self) -> String {
        // Each column compared as the diff compares it (`exact`): a `numeric`
        // 2.00 written back as 2 outside the agent is a change.
        let (mut now, mut after): (Vec<String>, Vec<String>) = self
            .columns()
            .map(|(_, c)| {
                let n = c.name.sql();
                exact(c.ty, &format!("t.{n}"), &format!("a.{n}"))
            })
            .unzip();
        if let Some(m) = &self.spec.modified_column {
            now.push(format!("t.{}", m.sql()));
            after.push(format!("a.{}", m.sql()));
        }
        let row = |list: Vec<String>| format!("ROW({})", list.join(", "));
        let k0 = self.spec.key[0].sql();
        format!(
            "SELECT j.key::text, j.op::text, t.{k0} IS NOT NULL, count(*) OVER ()::bigint
   FROM {JOURNAL} j
   CROSS JOIN LATERAL jsonb_to_record(j.key) AS k({key_def})
   LEFT JOIN {table} t ON {on}
   LEFT JOIN LATERAL jsonb_to_record(j.after) AS a({state_def}) ON true
  WHERE j.load_id = $1 AND j.mirror = $2
    AND CASE j.op WHEN 'd' THEN t.{k0} IS NOT NULL
                  ELSE t.{k0} IS NULL OR {now} IS DISTINCT FROM {after} END
  ORDER BY j.key::text LIMIT 3",
            key_def = self.key_def(),
            state_def = self.state_def(),
            table = self.table(),
            on = self.key_match(
                |_, c| format!("t.{}", c.name.sql()),
                |_, c| format!("k.{}", c.name.sql())
            ),
            now = row(now),
            after = row(after),
        )
    }

    /// The journal rows of the load `$1` (mirror `$2`) by operation: inserts,
    /// updates, deletes (`bigint` each), what `revert_inserts`, `revert_updates`
    /// and `revert_deletes` must write back.
    pub fn revert_counts(&self) -> String {
        format!(
            "SELECT count(*) FILTER (WHERE op = 'i')::bigint, count(*) FILTER (WHERE op = 'u')::bigint,
        count(*) FILTER (WHERE op = 'd')::bigint
   FROM {JOURNAL} WHERE load_id = $1 AND mirror = $2"
        )
    }

    fn key_is_b(&self) -> String {
        self.key_match(
            |_, c| format!("t.{}", c.name.sql()),
            |_, c| format!("b.{}", c.name.sql()),
        )
    }

    /// Undoes the load `$1`'s inserts (mirror `$2`): deletes the rows it added.
    /// Reverts go newest load first, so each row is as the load left it.
    pub fn revert_inserts(&self) -> String {
        format!(
            "DELETE FROM {table} t USING {rows}\n    AND {on}",
            table = self.table(),
            rows = self.journal_rows(Op::Insert, "key"),
            on = self.key_is_b()
        )
    }

    /// Undoes the load `$1`'s updates (mirror `$2`): every non-key column and
    /// the `modified_column` back to its `before` state. `None` when no row
    /// can be updated (every column is a key column).
    pub fn revert_updates(&self) -> Option<String> {
        let mut set: Vec<String> = self
            .values()
            .into_iter()
            .map(|(_, c)| format!("{n} = b.{n}", n = c.name.sql()))
            .collect();
        if set.is_empty() {
            return None;
        }
        if let Some(m) = &self.spec.modified_column {
            set.push(format!("{n} = b.{n}", n = m.sql()));
        }
        Some(format!(
            "UPDATE {table} t SET {set}\n  FROM {rows}\n    AND {on}",
            table = self.table(),
            set = set.join(", "),
            rows = self.journal_rows(Op::Update, "before"),
            on = self.key_is_b()
        ))
    }

    /// Undoes the load `$1`'s deletes (mirror `$2`): puts the rows back as they
    /// were (the configured columns and the `modified_column`; the table's
    /// further columns get their defaults).
    pub fn revert_deletes(&self) -> String {
        let mut names: Vec<String> = self.columns().map(|(_, c)| c.name.sql()).collect();
        if let Some(m) = &self.spec.modified_column {
            names.push(m.sql());
        }
        let values: Vec<String> = names.iter().map(|n| format!("b.{n}")).collect();
        format!(
            "INSERT INTO {table} ({names})\n SELECT {values}\n   FROM {rows}",
            table = self.table(),
            names = names.join(", "),
            values = values.join(", "),
            rows = self.journal_rows(Op::Delete, "before")
        )
    }

    /// What the journal holds of one key of mirror `$1`, oldest run first (in
    /// commit order, `mirror_runs.commit_seq`): `load_id`, `op`, `before`,
    /// `after` (as the text of a `jsonb` object of text values, each
    /// PostgreSQL's own text of the value, so a `numeric` keeps every digit),
    /// and from the run's record (`mirror_runs`, null without one)
    /// `finished_at`, `file` and `reverted_at`. `$2` is the key as `jsonb` of
    /// text values (`key_json`), read as the key columns' types as the
    /// journal's keys are, so `1` and `"1"` are the same `bigint`.
    pub fn history(&self) -> String {
        let text = |state: &str| {
            format!("(SELECT jsonb_object_agg(e.key, e.value) FROM jsonb_each_text(j.{state}) e)::text AS {state}")
        };
        format!(
            "SELECT j.load_id, j.op::text AS op, {before}, {after},
        r.finished_at, r.file, r.reverted_at
   FROM {JOURNAL} j
        CROSS JOIN LATERAL jsonb_to_record(j.key) AS b({def})
        CROSS JOIN jsonb_to_record($2::jsonb) AS t({def})
        LEFT JOIN {RUNS} r ON r.load_id = j.load_id
  WHERE j.mirror = $1 AND {on}
  ORDER BY r.commit_seq NULLS FIRST, j.load_id",
            def = self.key_def(),
            on = self.key_is_b(),
            before = text("before"),
            after = text("after"),
        )
    }
}

/// A key as `jsonb` (`history`'s `$2`, an element of `diff`'s protected keys)
/// from its `values`, one per key column in the key's order, as a file or an
/// operator spells them: each validated and made canonical by its column's type
/// (an address lower-cased, `+007` as `7`).
pub fn key_json(spec: &MirrorSpec, values: &[&str]) -> Result<serde_json::Value, String> {
    if values.len() != spec.key.len() {
        return Err(format!(
            "mirror {} has a key of {} column(s) ({}), {} value(s) given",
            spec.name,
            spec.key.len(),
            spec.key
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", "),
            values.len()
        ));
    }
    let mut object = serde_json::Map::new();
    for (name, raw) in spec.key.iter().zip(values) {
        let column = spec
            .column(name)
            .ok_or_else(|| format!("{name} is not a column"))?;
        let value =
            parse_value(column.ty, raw.trim()).map_err(|reason| format!("{name} {reason}"))?;
        object.insert(
            name.to_string(),
            serde_json::Value::String(value.into_owned()),
        );
    }
    Ok(serde_json::Value::Object(object))
}
