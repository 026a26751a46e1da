//! The generated statements' shape (their behaviour is proven against the server
//! in tests/it/mirror_store.rs) and the pure parts: COPY's escaping, the table
//! check, the history key.

use super::*;
use crate::mirror::from_toml_str;

fn subscribers() -> MirrorSpec {
    from_toml_str(
        r#"
[[mirror]]
name = "subscribers"
file = "subscribers.csv"
table = 'crm."Sub Scribers"'
key = ["account_id", "email"]
modified_column = "modified_at"
columns = [
  { name = "account_id", type = "bigint" },
  { name = "email",      type = "email" },
  { name = "Full Name",  type = "text", max_length = 255 },
  { name = "plan",       type = "text", nullable = true },
  { name = "balance",    type = "numeric", nullable = true },
]
"#,
    )
    .unwrap()
    .remove(0)
}

fn escaped(value: &str) -> String {
    let mut out = String::new();
    escape_copy_text(&mut out, value);
    out
}

#[test]
fn copy_text_escapes_backslash_tab_and_line_breaks_only() {
    assert_eq!(
        escaped("plain, \"quoted\" 'x' äö 𝄞"),
        "plain, \"quoted\" 'x' äö 𝄞"
    );
    assert_eq!(escaped("a\\b"), "a\\\\b");
    assert_eq!(escaped("\\N"), "\\\\N");
    assert_eq!(escaped("a\tb\nc\r\nd"), "a\\tb\\nc\\r\\nd");
    assert_eq!(escaped("\\\t"), "\\\\\\t");
    assert_eq!(escaped(""), "");
}

#[test]
fn copy_lines_hold_the_load_the_line_and_nulls() {
    let id = uuid::Uuid::nil();
    let mut out = String::new();
    copy_line(&mut out, id, 7, &[Some("1"), None, Some("a\tb"), Some("")]);
    assert_eq!(
        out,
        "00000000-0000-0000-0000-000000000000\t7\t1\t\\N\ta\\tb\t\n"
    );
}

#[test]
fn identifiers_are_quoted_everywhere() {
    let spec = subscribers();
    let sql = MirrorSql::new(&spec);
    let create = sql.create_table();
    assert!(
        create.starts_with("CREATE TABLE IF NOT EXISTS \"crm\".\"Sub Scribers\" ("),
        "{create}"
    );
    assert!(
        create.contains("\"Full Name\" varchar(255) NOT NULL"),
        "{create}"
    );
    assert!(create.contains("\"plan\" text,"), "{create}");
    assert!(create.contains("\"modified_at\" timestamptz"), "{create}");
    assert!(
        create.contains("PRIMARY KEY (\"account_id\", \"email\")"),
        "{create}"
    );
    assert_eq!(sql.create_schema(), "CREATE SCHEMA IF NOT EXISTS \"crm\"");
    // Staging is named by the table (as the run lock is keyed), not the mirror.
    let staging = sql.staging_table();
    assert!(
        staging.starts_with("\"etl_mirror_staging\".\"t_") && staging.len() == 49,
        "{staging}"
    );
    assert_eq!(
        sql.copy_in(),
        format!("COPY {staging} (load_id, line_no, c0, c1, c2, c3, c4) FROM STDIN (FORMAT text)")
    );
    let diff = sql.diff();
    assert!(
        diff.contains("t.\"Full Name\" IS DISTINCT FROM s.c2"),
        "{diff}"
    );
    assert!(
        !diff.contains("t.\"account_id\" IS DISTINCT FROM"),
        "the key is matched, not compared: {diff}"
    );
    assert!(
        diff.contains("ON t.\"account_id\" = s.c0 AND t.\"email\" = s.c1"),
        "{diff}"
    );
    assert!(
        diff.contains(
            "jsonb_to_recordset($2::jsonb) AS p(\"account_id\" bigint, \"email\" varchar(255))"
        ),
        "protected keys: {diff}"
    );
}

#[test]
fn journaled_writes_wrap_the_plain_ones() {
    let spec = subscribers();
    let sql = MirrorSql::new(&spec);
    let writes = [sql.insert(), sql.update().unwrap(), sql.delete()];
    for w in &writes {
        let journaled = w.journaled();
        assert!(journaled.contains(w.plain()), "{journaled}");
        assert!(
            journaled.contains(&format!("'{}'", w.op.code())),
            "{journaled}"
        );
        assert!(journaled.contains(JOURNAL), "{journaled}");
        assert!(
            !w.plain().contains('$'),
            "plain writes take no parameters: {}",
            w.plain()
        );
    }
    assert!(writes[0].plain().contains("now()"));
    assert!(writes[1].plain().contains("\"modified_at\" = now()"));
    assert!(writes[1].plain().contains("t.xmin = d.old_xmin"));
    let set = writes[1].plain().split("FROM").next().unwrap();
    assert!(
        !set.contains("\"account_id\" ="),
        "keys are not rewritten: {set}"
    );
}

#[test]
fn a_mirror_of_key_columns_only_has_no_update() {
    let mut spec = subscribers();
    spec.columns.truncate(2);
    let sql = MirrorSql::new(&spec);
    assert!(sql.update().is_none());
    assert!(sql.revert_updates().is_none());
    assert!(sql.diff().contains("OR t.\"account_id\" IS NULL"));
    assert!(sql
        .diff()
        .contains("(s.line_no IS NOT NULL AND (\n            false))"));
}

fn column(name: &str, ty: &str, not_null: bool) -> CatalogColumn {
    CatalogColumn {
        name: name.into(),
        ty: ty.into(),
        not_null,
        fills_itself: false,
        loose_collation: false,
    }
}

fn good_columns() -> Vec<CatalogColumn> {
    vec![
        column("account_id", "bigint", true),
        column("email", "character varying(255)", true),
        column("Full Name", "text", true),
        column("plan", "text", false),
        column("balance", "numeric", false),
        column("modified_at", "timestamp without time zone", false),
        column("app_note", "text", false),
    ]
}

#[test]
fn an_existing_table_is_checked() {
    let spec = subscribers();
    let sql = MirrorSql::new(&spec);
    let key = vec![vec!["email".to_owned(), "account_id".to_owned()]];
    assert_eq!(sql.check_table(&[], &[]), Ok(TableState::Absent));
    assert_eq!(
        sql.check_table(&good_columns(), &key),
        Ok(TableState::Compatible)
    );

    let mut cols = good_columns();
    cols[4] = column("balance", "numeric(12,2)", false);
    let e = sql.check_table(&cols, &key).unwrap_err();
    assert_eq!(e.column, "column balance");
    let text = e.to_string();
    assert!(text.starts_with("mirror subscribers: the existing table crm.\"Sub Scribers\": column balance is numeric(12,2)"), "{text}");
    assert!(
        text.contains(
            "fix: ALTER TABLE \"crm\".\"Sub Scribers\" ALTER COLUMN \"balance\" TYPE numeric"
        ),
        "{text}"
    );

    let cols: Vec<_> = good_columns()
        .into_iter()
        .filter(|c| c.name != "plan")
        .collect();
    let e = sql.check_table(&cols, &key).unwrap_err();
    assert_eq!(
        (e.column.as_str(), e.problem.as_str()),
        ("column plan", "is missing")
    );
    assert!(e.fix.contains("ADD COLUMN \"plan\" text"), "{e}");

    let mut cols = good_columns();
    cols[1].not_null = false;
    let e = sql.check_table(&cols, &key).unwrap_err();
    assert!(e.fix.contains("ALTER COLUMN \"email\" SET NOT NULL"), "{e}");

    // An application's own NOT NULL column must fill itself.
    let mut cols = good_columns();
    cols[6].not_null = true;
    let e = sql.check_table(&cols, &key).unwrap_err();
    assert_eq!(e.column, "column app_note");
    assert!(
        e.fix.contains("ALTER COLUMN \"app_note\" SET DEFAULT"),
        "{e}"
    );
    cols[6].fills_itself = true;
    assert_eq!(sql.check_table(&cols, &key), Ok(TableState::Compatible));

    // A citext key column cannot be matched as the unique index compares.
    let mut cols = good_columns();
    cols[1].ty = "citext".to_owned();
    let e = sql.check_table(&cols, &key).unwrap_err();
    assert_eq!(e.column, "column email");
    assert!(e.fix.contains("ALTER COLUMN \"email\" TYPE text"), "{e}");

    let mut cols = good_columns();
    cols[5] = column("modified_at", "date", false);
    let e = sql.check_table(&cols, &key).unwrap_err();
    assert_eq!(e.column, "modified_column modified_at");

    for wrong in [
        vec![],
        vec![vec!["email".to_owned()]],
        vec![vec!["account_id".into(), "email".into(), "plan".into()]],
    ] {
        let e = sql.check_table(&good_columns(), &wrong).unwrap_err();
        assert_eq!(e.column, "the key (\"account_id\", \"email\")");
        assert!(e.fix.contains("CREATE UNIQUE INDEX"), "{e}");
    }
}

#[test]
fn a_nullable_column_must_allow_null_in_the_table() {
    let spec = subscribers();
    let sql = MirrorSql::new(&spec);
    let key = vec![vec!["email".to_owned(), "account_id".to_owned()]];
    let mut cols = good_columns();
    cols[3].not_null = true;
    let e = sql.check_table(&cols, &key).unwrap_err();
    assert_eq!(e.column, "column plan");
    assert!(e.problem.contains("nullable = true"), "{e}");
    assert_eq!(
        e.fix,
        "ALTER TABLE \"crm\".\"Sub Scribers\" ALTER COLUMN \"plan\" DROP NOT NULL, or set nullable = false on the column in [[mirror]] subscribers"
    );
    // Not nullable: a NOT NULL column, or one that allows NULL, both hold it.
    let mut cols = good_columns();
    cols[2].not_null = false;
    assert_eq!(sql.check_table(&cols, &key), Ok(TableState::Compatible));
}

#[test]
fn the_diff_and_the_revert_check_compare_numeric_by_text_and_text_by_bytes() {
    let spec = subscribers();
    let sql = MirrorSql::new(&spec);
    let diff = sql.diff();
    assert!(
        diff.contains("t.\"balance\"::text IS DISTINCT FROM s.c4::text"),
        "{diff}"
    );
    assert!(
        diff.contains("t.\"plan\" IS DISTINCT FROM s.c3 COLLATE \"C\""),
        "{diff}"
    );
    let drift = sql.revert_drift();
    assert!(
        drift.contains("ROW(t.\"account_id\", t.\"email\", t.\"Full Name\", t.\"plan\", t.\"balance\"::text, t.\"modified_at\")"),
        "{drift}"
    );
    assert!(
        drift.contains("ROW(a.\"account_id\", a.\"email\" COLLATE \"C\", a.\"Full Name\" COLLATE \"C\", a.\"plan\" COLLATE \"C\", a.\"balance\"::text, a.\"modified_at\")"),
        "{drift}"
    );
}

#[test]
fn key_jsons_are_canonical_text() {
    let spec = subscribers();
    assert_eq!(
        key_json(&spec, &["+007", " Ann@X.io "]).unwrap(),
        serde_json::json!({"account_id": "7", "email": "ann@x.io"})
    );
    assert!(key_json(&spec, &["7"])
        .unwrap_err()
        .contains("key of 2 column(s)"));
    assert!(key_json(&spec, &["x", "a@x.io"])
        .unwrap_err()
        .starts_with("account_id "));
}

#[test]
fn the_lock_staging_and_counter_are_keyed_by_the_table_not_the_mirror() {
    let one = subscribers();
    let mut renamed = one.clone();
    renamed.name = crate::mirror::MirrorName::parse("other").unwrap();
    let mut moved = one.clone();
    moved.table = crate::mirror::TableName::new("crm", "elsewhere").unwrap();
    let (a, b, c) = (
        MirrorSql::new(&one),
        MirrorSql::new(&renamed),
        MirrorSql::new(&moved),
    );
    assert_eq!(a.lock_key(), b.lock_key());
    assert_eq!(a.staging_table(), b.staging_table());
    assert_eq!(a.counter_sequence(), b.counter_sequence());
    assert_ne!(a.lock_key(), c.lock_key());
    assert_ne!(a.staging_table(), c.staging_table());
    assert_ne!(a.counter_sequence(), c.counter_sequence());
    // The fingerprint follows the definition, not the mirror's name.
    assert_eq!(
        definition_fingerprint(&one),
        definition_fingerprint(&renamed)
    );
    assert_ne!(definition_fingerprint(&one), definition_fingerprint(&moved));
    let mut nullable = one.clone();
    nullable.columns[2].nullable = true;
    assert_ne!(
        definition_fingerprint(&one),
        definition_fingerprint(&nullable)
    );
}

#[test]
fn journal_states_are_read_as_the_configured_columns_only() {
    let spec = subscribers();
    let sql = MirrorSql::new(&spec);
    for statement in [
        sql.revert_inserts(),
        sql.revert_updates().unwrap(),
        sql.revert_deletes(),
        sql.revert_drift(),
        sql.history(),
        sql.drop_rejected_keys(),
        sql.diff(),
    ] {
        assert!(!statement.contains("populate_record"), "{statement}");
    }
    assert!(
        sql.revert_deletes().contains(
            "jsonb_to_record(j.before) AS b(\"account_id\" bigint, \"email\" varchar(255), \"Full Name\" varchar(255), \"plan\" text, \"balance\" numeric, \"modified_at\" timestamptz)"
        ),
        "{}",
        sql.revert_deletes()
    );
}
