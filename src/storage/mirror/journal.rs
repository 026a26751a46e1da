//! `etl_info_schema.mirror_journal`: what every sync of a generic mirror changed,
//! one row per changed row (`op` `i`, `u` or `d`; the `key`, and the `before`
//! and `after` states of the configured columns and the `modified_column`, as
//! `jsonb`), written by the same statement that makes the change (a
//! data-modifying CTE), so the journal commits or rolls back with the merge and
//! unchanged rows cost nothing. From it: `revert` of one or more loads
//! (`undo_plan`: per key, back to its state before the oldest), `history` of one
//! key. The states are read back as the configured columns' types
//! (`jsonb_to_record` with a column definition list generated from the
//! definition), so every value keeps its column's type and the table's further
//! columns (an application's own, maybe of a domain refusing NULL) are never
//! read. Before a revert, `revert_drift` checks that the table is still what the
//! newest of its runs left for every row they changed, and `revert_counts` gives
//! the rows each revert statement must write back.

use super::{exact, json_object, pos, MirrorSql, Op, MODIFIED, RUNS};
use crate::mirror::value::parse_value;
use crate::mirror::MirrorSpec;

/// The journal of every generic mirror (created by the migration).
pub const JOURNAL: &str = "etl_info_schema.mirror_journal";

/// A revert's plan (`revert_plan`): in the session's temporary schema, dropped
/// with the transaction.
const PLAN: &str = "pg_temp.mirror_revert_plan";

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
    /// The revert's plan, a `WITH` clause ending in the CTE `plan`: one row per
    /// key that the loads `$1` (a `uuid[]`, newest first in commit order: the
    /// runs a revert undoes) of mirror `$2` changed, with the key's columns by
    /// position (`c{i}`, read as their types, so a key is matched by value as
    /// the table's unique index matches it), from the newest load that changed
    /// the key its `key` (`jsonb`), `op` and `after` (what the table must still
    /// hold), and from the oldest its `before` (what the revert puts back; NULL:
    /// the row was absent before). Per key, the state before the oldest of the
    /// loads is restored, so a chain of runs is undone exactly
    /// (docs/operations.md#revert).
    fn undo_plan(&self) -> String {
        let key = self.key();
        let list = key
            .iter()
            .map(|(i, _)| pos(*i))
            .collect::<Vec<_>>()
            .join(", ");
        let typed = key
            .iter()
            .map(|(i, c)| format!("k.{} AS {}", c.name.sql(), pos(*i)))
            .collect::<Vec<_>>()
            .join(", ");
        let on = key
            .iter()
            .map(|(i, _)| format!("n.{p} = o.{p}", p = pos(*i)))
            .collect::<Vec<_>>()
            .join(" AND ");
        format!(
            "WITH journaled AS (
  SELECT {typed}, j.key, j.op, j.before, j.after,
         array_position($1::uuid[], j.load_id) AS age
    FROM {JOURNAL} j CROSS JOIN LATERAL jsonb_to_record(j.key) AS k({key_def})
   WHERE j.load_id = ANY($1::uuid[]) AND j.mirror = $2),
oldest AS (
  SELECT DISTINCT ON ({list}) {list}, before FROM journaled ORDER BY {list}, age DESC),
newest AS (
  SELECT DISTINCT ON ({list}) {list}, key, op, after FROM journaled ORDER BY {list}, age),
plan AS (
  SELECT n.*, o.before FROM newest n JOIN oldest o ON {on})
",
            key_def = self.key_def(),
        )
    }

    fn key_is_b(&self) -> String {
        self.key_match(
            |_, c| format!("t.{}", c.name.sql()),
            |_, c| format!("b.{}", c.name.sql()),
        )
    }

    /// Makes the revert's plan of the loads `$1` (a `uuid[]`, newest first) of
    /// mirror `$2` (`undo_plan`), once, for the statements below (which take
    /// no parameters): a temporary table dropped with the transaction.
    pub fn revert_plan(&self) -> String {
        format!(
            "CREATE TEMPORARY TABLE {PLAN} ON COMMIT DROP AS
{plan}SELECT * FROM plan",
            plan = self.undo_plan()
        )
    }

    /// `t.key = j.c{i}` over the key: the table's row of a plan's key.
    fn key_is_planned(&self) -> String {
        self.key_match(
            |_, c| format!("t.{}", c.name.sql()),
            |i, _| format!("j.{}", pos(i)),
        )
    }

    /// The keys of the revert's plan (`revert_plan`) whose state in the table
    /// is not what the newest of its loads left:
    /// an insert or update whose row is absent now or whose configured columns
    /// (or `modified_column`) differ from its `after` (each compared as the
    /// diff compares it, `exact`), a delete whose key is present again. Up to
    /// three, each with the key (`jsonb` as text), the op and whether the row is
    /// present now, and how many in all (`bigint`). A revert refuses unless this
    /// is empty: it would not be exact.
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
   FROM {PLAN} j
   LEFT JOIN {table} t ON {on}
   LEFT JOIN LATERAL jsonb_to_record(j.after) AS a({state_def}) ON true
  WHERE CASE j.op WHEN 'd' THEN t.{k0} IS NOT NULL
                  ELSE t.{k0} IS NULL OR {now} IS DISTINCT FROM {after} END
  ORDER BY j.key::text LIMIT 3",
            state_def = self.state_def(),
            table = self.table(),
            on = self.key_is_planned(),
            now = row(now),
            after = row(after),
        )
    }

    /// What the revert's plan (`revert_plan`) must write back, `bigint` each: the rows to delete
    /// (absent before the oldest load, present now: `revert_inserts`), to put
    /// back (present before and now: `revert_updates`) and to insert again
    /// (present before, deleted by the newest load: `revert_deletes`).
    pub fn revert_counts(&self) -> String {
        format!(
            "SELECT count(*) FILTER (WHERE before IS NULL AND op <> 'd')::bigint,
        count(*) FILTER (WHERE before IS NOT NULL AND op <> 'd')::bigint,
        count(*) FILTER (WHERE before IS NOT NULL AND op = 'd')::bigint
   FROM {PLAN}"
        )
    }

    /// Undoes the plan's inserts (`revert_plan`): deletes the rows absent
    /// before the oldest of its loads.
    pub fn revert_inserts(&self) -> String {
        format!(
            "DELETE FROM {table} t USING {PLAN} j
  WHERE j.before IS NULL AND j.op <> 'd'
    AND {on}",
            table = self.table(),
            on = self.key_is_planned()
        )
    }

    /// Undoes the plan's updates (`revert_plan`): every non-key column and the `modified_column` of a row present
    /// before the oldest of them and now back to its state then. `None` when
    /// no row can be updated (every column is a key column).
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
            "UPDATE {table} t SET {set}
  FROM {PLAN} j, LATERAL jsonb_to_record(j.before) AS b({state_def})
  WHERE j.before IS NOT NULL AND j.op <> 'd'
    AND {on}",
            table = self.table(),
            set = set.join(", "),
            state_def = self.state_def(),
            on = self.key_is_planned()
        ))
    }

    /// Undoes the plan's deletes (`revert_plan`): puts the rows the newest of
    /// its loads deleted back as they were before
    /// the oldest (the configured columns and the `modified_column`; the
    /// table's further columns get their defaults).
    pub fn revert_deletes(&self) -> String {
        let mut names: Vec<String> = self.columns().map(|(_, c)| c.name.sql()).collect();
        if let Some(m) = &self.spec.modified_column {
            names.push(m.sql());
        }
        let values: Vec<String> = names.iter().map(|n| format!("b.{n}")).collect();
        format!(
            "INSERT INTO {table} ({names})
 SELECT {values}
   FROM {PLAN} j, LATERAL jsonb_to_record(j.before) AS b({state_def})
  WHERE j.before IS NOT NULL AND j.op = 'd'",
            table = self.table(),
            names = names.join(", "),
            values = values.join(", "),
            state_def = self.state_def()
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
