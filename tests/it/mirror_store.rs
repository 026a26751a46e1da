//! The storage layer of a generic mirror against the real PostgreSQL
//! (docs/mirrors.md#storage): the `subscribers` shape (a composite key, every
//! type, nullable columns, a table name that needs quoting, an application's own
//! column) created, staged by real COPY, merged twice (a first fill, then a change
//! of every kind), reverted, and its history read; and an incompatible table
//! refused with the named error.

use crate::helpers::fixtures::subscribers_toml;
use crate::helpers::TestEnv;
use followers_etl::mirror::value::parse_field;
use followers_etl::mirror::{from_toml_str, MirrorSpec};
use followers_etl::storage::mirror::{copy_line, key_json, CatalogColumn, MirrorSql, TableState};
use sqlx::Row;

const TABLE: &str = r#""crm"."Sub Scribers""#;

fn spec(toml: &str) -> MirrorSpec {
    from_toml_str(toml).unwrap().remove(0)
}

/// A file's row: one field per configured column, as an export spells it.
type Fields = Vec<String>;

/// Subscriber `id` as file A has it.
fn base(id: u32) -> Fields {
    let plan = if id == 10 { "" } else { "basic" };
    let balance = if id == 11 { "5.25" } else { "1.50" };
    vec![
        id.to_string(),
        format!("user{id}@x.io"),
        format!("User {id}"),
        plan.into(),
        format!("2024-01-{id:02}"),
        "true".into(),
        balance.into(),
        "1".into(),
        "2024-03-01 12:00:00".into(),
        "2024-03-01 12:00:00Z".into(),
        format!("00000000-0000-0000-0000-{id:012}"),
    ]
}

fn file_a() -> Vec<Fields> {
    (1..=13).chain([15]).map(base).collect()
}

/// 1 to 9: one column of each non-key type changed; 10: NULL → value;
/// 11: value → NULL; 12: unchanged (spelled differently: the same values);
/// 13: deleted; 14: new; 15: absent but protected (as if its line were
/// rejected), so kept. Subscriber 1 appears twice: the last line wins.
fn file_b() -> Vec<Fields> {
    let mut rows = vec![base(1)];
    for id in 1..=12 {
        let mut row = base(id);
        let (col, value) = match id {
            1 => (2, "Zoë \"Z\" \\ tab\there\nline two"),
            2 => (3, "pro"),
            3 => (4, "2023-12-31"),
            4 => (5, "no"),
            5 => (6, "2.75"),
            6 => (7, "2"),
            7 => (8, "2024-03-01T12:00:01.5"),
            8 => (9, "2024-03-01 14:00:00+01:00"),
            9 => (10, "0190B2C4-3F1E-7C3A-9D2E-5B6F7A8C9D0E"),
            10 => (3, "gold"),
            11 => (6, ""),
            _ => {
                row[0] = "+12".into();
                row[1] = "USER12@X.IO".into();
                row[5] = "yes".into();
                row[6] = "1.50".into();
                (9, "2024-03-01 13:00:00+01:00")
            }
        };
        row[col] = value.into();
        rows.push(row);
    }
    let mut new = base(14);
    new[2] = "\\N is text here".into();
    new[3] = String::new();
    new[6] = String::new();
    new[8] = String::new();
    new[9] = String::new();
    rows.push(new);
    rows
}

/// A row as the table holds it, in PostgreSQL's text output (timestamptz in UTC).
fn expected(rows: &[Fields]) -> Vec<Vec<Option<String>>> {
    let mut out: Vec<Vec<Option<String>>> = Vec::new();
    for row in rows {
        let mut cells: Vec<Option<String>> = row
            .iter()
            .map(|f| (!f.is_empty()).then(|| f.clone()))
            .collect();
        cells[0] = cells[0]
            .as_ref()
            .map(|v| v.trim_start_matches('+').to_owned());
        cells[1] = cells[1].as_ref().map(|v| v.to_lowercase());
        cells[5] = cells[5].as_ref().map(|v| {
            if ["true", "yes"].contains(&v.as_str()) {
                "true".into()
            } else {
                "false".into()
            }
        });
        cells[8] = cells[8].as_ref().map(|v| v.replace('T', " "));
        cells[9] = cells[9].as_ref().map(|v| {
            let utc =
                chrono::DateTime::parse_from_str(&v.replace('Z', "+00:00"), "%Y-%m-%d %H:%M:%S%:z")
                    .unwrap()
                    .naive_utc();
            utc.format("%Y-%m-%d %H:%M:%S").to_string()
        });
        cells[10] = cells[10].as_ref().map(|v| v.to_lowercase());
        // The last line of a key wins.
        out.retain(|o| o[..2] != cells[..2]);
        out.push(cells);
    }
    out.sort_by_key(|r| r[0].as_ref().unwrap().parse::<i64>().unwrap());
    out
}

/// The configured columns of every row, as text, by key (and the
/// `modified_column` where `modified` is set).
async fn table_rows(env: &TestEnv, spec: &MirrorSpec, modified: bool) -> Vec<Vec<Option<String>>> {
    let mut list: Vec<String> = spec
        .columns
        .iter()
        .map(|c| match c.ty {
            followers_etl::mirror::ColumnType::Timestamptz => {
                format!("(t.{} AT TIME ZONE 'UTC')::text", c.name.sql())
            }
            _ => format!("t.{}::text", c.name.sql()),
        })
        .collect();
    if let Some(m) = spec.modified_column.as_ref().filter(|_| modified) {
        list.push(format!("t.{}::text", m.sql()));
    }
    let order: Vec<String> = spec.key.iter().map(|k| format!("t.{}", k.sql())).collect();
    let sql = format!(
        "SELECT {} FROM {} t ORDER BY {}",
        list.join(", "),
        spec.table.sql(),
        order.join(", ")
    );
    sqlx::query(&sql)
        .fetch_all(&env.pool)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .iter()
        .map(|row| {
            (0..list.len())
                .map(|i| row.get::<Option<String>, _>(i))
                .collect()
        })
        .collect()
}

async fn exec(env: &TestEnv, sql: &str) {
    sqlx::query(sql)
        .execute(&env.pool)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

/// Creates the table if absent, then checks it.
async fn prepare(env: &TestEnv, spec: &MirrorSpec) -> Result<TableState, String> {
    let sql = MirrorSql::new(spec);
    let state = check(env, spec).await?;
    if state == TableState::Absent {
        exec(env, &sql.create_schema()).await;
        exec(env, &sql.create_table()).await;
        assert_eq!(check(env, spec).await?, TableState::Compatible);
    }
    Ok(state)
}

async fn check(env: &TestEnv, spec: &MirrorSpec) -> Result<TableState, String> {
    let sql = MirrorSql::new(spec);
    let (schema, table) = (spec.table.schema(), spec.table.table());
    let columns: Vec<CatalogColumn> = sqlx::query(MirrorSql::CATALOG_COLUMNS)
        .bind(schema)
        .bind(table)
        .fetch_all(&env.pool)
        .await
        .unwrap()
        .iter()
        .map(|r| CatalogColumn {
            name: r.get(0),
            ty: r.get(1),
            not_null: r.get(2),
            fills_itself: r.get(3),
            loose_collation: r.get(4),
        })
        .collect();
    let keys: Vec<Vec<String>> = sqlx::query_scalar(MirrorSql::CATALOG_UNIQUE_KEYS)
        .bind(schema)
        .bind(table)
        .fetch_all(&env.pool)
        .await
        .unwrap();
    sql.check_table(&columns, &keys).map_err(|e| e.to_string())
}

/// Stages `rows` (validated field by field, as the reader will) under `load`
/// by real COPY on a pooled connection, then resolves duplicate keys; returns
/// the duplicates' report (extra rows, each duplicate key with its lines).
async fn stage(
    env: &TestEnv,
    spec: &MirrorSpec,
    load: uuid::Uuid,
    rows: &[Fields],
) -> (i64, Vec<(String, Vec<i64>)>) {
    let sql = MirrorSql::new(spec);
    exec(env, &sql.drop_staging()).await;
    exec(env, &sql.create_staging()).await;
    let mut text = String::new();
    for (i, row) in rows.iter().enumerate() {
        let values: Vec<Option<String>> = spec
            .columns
            .iter()
            .zip(row)
            .map(|(c, raw)| {
                parse_field(c, raw)
                    .unwrap_or_else(|e| panic!("{raw:?}: {e}"))
                    .map(|v| v.into_owned())
            })
            .collect();
        let values: Vec<Option<&str>> = values.iter().map(Option::as_deref).collect();
        copy_line(&mut text, load, u64::try_from(i + 2).unwrap(), &values);
    }
    let mut conn = env.pool.acquire().await.unwrap();
    let mut copy = conn.copy_in_raw(&sql.copy_in()).await.unwrap();
    copy.send(text.as_bytes()).await.unwrap();
    let copied = copy.finish().await.unwrap();
    assert_eq!(copied, u64::try_from(rows.len()).unwrap());
    drop(conn);

    let extra: i64 = sqlx::query_scalar(&sql.duplicate_count())
        .bind(load)
        .fetch_one(&env.pool)
        .await
        .unwrap();
    let examples = sqlx::query(&format!(
        "SELECT key::text, lines FROM ({}) d",
        sql.duplicate_examples()
    ))
    .bind(load)
    .bind(10i64)
    .fetch_all(&env.pool)
    .await
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1)))
    .collect();
    let dropped = sqlx::query(&sql.drop_earlier_copies())
        .bind(load)
        .execute(&env.pool)
        .await
        .unwrap()
        .rows_affected();
    assert_eq!(dropped, u64::try_from(extra).unwrap());
    (extra, examples)
}

/// The merge of `load` in one transaction: diff (never deleting the
/// `protected` keys), counts, the three journaled writes (each writing exactly
/// what the diff found); returns the counts (inserted, updated, deleted, rows
/// before).
async fn merge(
    env: &TestEnv,
    spec: &MirrorSpec,
    load: uuid::Uuid,
    protected: serde_json::Value,
) -> [i64; 4] {
    let sql = MirrorSql::new(spec);
    let mut tx = env.pool.begin().await.unwrap();
    sqlx::query(&sql.diff_table())
        .execute(&mut *tx)
        .await
        .unwrap();
    sqlx::query(&sql.diff())
        .bind(load)
        .bind(protected.to_string())
        .execute(&mut *tx)
        .await
        .unwrap();
    let row = sqlx::query(&sql.diff_counts())
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    let counts: [i64; 4] = [row.get(0), row.get(1), row.get(2), row.get(3)];
    let writes = [
        (sql.update().unwrap(), counts[1]),
        (sql.insert(), counts[0]),
        (sql.delete(), counts[2]),
    ];
    for (write, expected) in writes {
        let journaled = write.journaled();
        let n = sqlx::query(&journaled)
            .bind(load)
            .bind(spec.name.as_str())
            .execute(&mut *tx)
            .await
            .unwrap_or_else(|e| panic!("{journaled}: {e}"))
            .rows_affected();
        assert_eq!(i64::try_from(n).unwrap(), expected, "{journaled}");
    }
    tx.commit().await.unwrap();
    counts
}

async fn revert(env: &TestEnv, spec: &MirrorSpec, load: uuid::Uuid) -> u64 {
    let sql = MirrorSql::new(spec);
    let mut tx = env.pool.begin().await.unwrap();
    sqlx::query(&sql.revert_plan())
        .bind([load])
        .bind(spec.name.as_str())
        .execute(&mut *tx)
        .await
        .unwrap();
    let mut changed = 0;
    for statement in [
        sql.revert_updates().unwrap(),
        sql.revert_inserts(),
        sql.revert_deletes(),
    ] {
        changed += sqlx::query(&statement)
            .execute(&mut *tx)
            .await
            .unwrap_or_else(|e| panic!("{statement}: {e}"))
            .rows_affected();
    }
    tx.commit().await.unwrap();
    changed
}

async fn xmin(env: &TestEnv, id: i64) -> String {
    sqlx::query_scalar(&format!(
        "SELECT xmin::text FROM {TABLE} WHERE account_id = $1"
    ))
    .bind(id)
    .fetch_one(&env.pool)
    .await
    .unwrap()
}

async fn note(env: &TestEnv, id: i64) -> Option<String> {
    sqlx::query_scalar(&format!(
        "SELECT app_note FROM {TABLE} WHERE account_id = $1"
    ))
    .bind(id)
    .fetch_one(&env.pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn a_generic_mirror_merges_every_change_journals_it_and_reverts() {
    let env = TestEnv::migrated().await;
    let spec = spec(&subscribers_toml(r#"'crm."Sub Scribers"'"#));
    assert_eq!(prepare(&env, &spec).await, Ok(TableState::Absent));
    // The application's own column: never read or written by the mirror.
    exec(
        &env,
        &format!("ALTER TABLE {TABLE} ADD COLUMN app_note text DEFAULT 'app'"),
    )
    .await;
    assert_eq!(check(&env, &spec).await, Ok(TableState::Compatible));

    // A: the first fill.
    let a = uuid::Uuid::now_v7();
    assert_eq!(stage(&env, &spec, a, &file_a()).await, (0, vec![]));
    assert_eq!(
        merge(&env, &spec, a, serde_json::json!([])).await,
        [14, 0, 0, 0]
    );
    assert_eq!(table_rows(&env, &spec, false).await, expected(&file_a()));
    let snapshot_a = table_rows(&env, &spec, true).await;
    exec(
        &env,
        &format!("UPDATE {TABLE} SET app_note = 'kept' WHERE account_id IN (1, 12)"),
    )
    .await;
    let unchanged_xmin = xmin(&env, 12).await;

    // B: every kind of change, and a duplicate key.
    let b = uuid::Uuid::now_v7();
    let (extra, examples) = stage(&env, &spec, b, &file_b()).await;
    assert_eq!(extra, 1);
    assert_eq!(
        examples,
        vec![(
            r#"{"email": "user1@x.io", "account_id": 1}"#.to_owned(),
            vec![2, 3]
        )]
    );
    let protected = serde_json::json!([key_json(&spec, &["15", "User15@x.io"]).unwrap()]);
    assert_eq!(merge(&env, &spec, b, protected).await, [1, 11, 1, 14]);
    let kept = [file_b(), vec![base(15)]].concat();
    assert_eq!(table_rows(&env, &spec, false).await, expected(&kept));
    assert_eq!(
        xmin(&env, 12).await,
        unchanged_xmin,
        "an unchanged row is not written"
    );
    assert_eq!(
        note(&env, 1).await.as_deref(),
        Some("kept"),
        "an updated row keeps the application's column"
    );
    assert_eq!(note(&env, 12).await.as_deref(), Some("kept"));
    assert_eq!(
        note(&env, 14).await.as_deref(),
        Some("app"),
        "a new row gets its default"
    );
    let journal: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM etl_info_schema.mirror_journal WHERE load_id = $1",
    )
    .bind(b)
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert_eq!(journal, 13);
    // modified_at: set on insert and change only.
    let modified = table_rows(&env, &spec, true).await;
    for row in &modified {
        let id: i64 = row[0].as_ref().unwrap().parse().unwrap();
        let before = snapshot_a
            .iter()
            .find(|r| r[0] == row[0])
            .map(|r| r[11].clone());
        if id == 12 || id == 15 {
            assert_eq!(before, Some(row[11].clone()));
        } else {
            assert_ne!(before, Some(row[11].clone()), "subscriber {id}");
            assert!(row[11].is_some());
        }
    }

    // History of one key, typed as an operator would.
    let sql = MirrorSql::new(&spec);
    let key = key_json(&spec, &["1", "USER1@X.IO"]).unwrap();
    let history: Vec<(String, Option<String>, Option<String>)> = sqlx::query(&format!(
        "SELECT h.op, h.before::text, h.after::text FROM ({}) h",
        sql.history()
    ))
    .bind(spec.name.as_str())
    .bind(key.to_string())
    .fetch_all(&env.pool)
    .await
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1), r.get(2)))
    .collect();
    assert_eq!(history.len(), 2, "{history:?}");
    assert_eq!(
        (history[0].0.as_str(), history[0].1.as_deref()),
        ("i", None)
    );
    assert_eq!((history[1].0.as_str(), history[1].2.is_some()), ("u", true));
    let state = |text: &Option<String>| -> serde_json::Value {
        serde_json::from_str(text.as_deref().unwrap()).unwrap()
    };
    assert_eq!(state(&history[1].1)["full_name"], "User 1");
    assert_eq!(
        state(&history[1].2)["full_name"],
        "Zoë \"Z\" \\ tab\there\nline two"
    );
    assert_eq!(
        state(&history[1].1),
        state(&history[0].2),
        "before is what the fill wrote"
    );

    // Revert B: the table is A again, modified_at included; the application's
    // column stays where the row stayed.
    assert_eq!(revert(&env, &spec, b).await, 13);
    assert_eq!(table_rows(&env, &spec, true).await, snapshot_a);
    assert_eq!(note(&env, 1).await.as_deref(), Some("kept"));
    assert_eq!(xmin(&env, 12).await, unchanged_xmin);
}

#[tokio::test]
async fn an_incompatible_existing_table_is_refused_by_name() {
    let env = TestEnv::migrated().await;
    let toml = subscribers_toml(r#""crm.bad""#);
    let spec = spec(&toml);
    exec(&env, "CREATE SCHEMA crm").await;
    exec(
        &env,
        "CREATE TABLE crm.bad (account_id bigint NOT NULL, email text NOT NULL, full_name text NOT NULL,
           plan text, signed_up date NOT NULL, opted_in boolean NOT NULL, balance numeric(12,2),
           seats integer NOT NULL, last_seen timestamp, confirmed timestamptz, token uuid NOT NULL,
           modified_at timestamptz, PRIMARY KEY (account_id, email))",
    )
    .await;
    let e = prepare(&env, &spec).await.unwrap_err();
    assert!(
        e.starts_with(
            "mirror subscribers: the existing table crm.bad: column balance is numeric(12,2)"
        ),
        "{e}"
    );
    assert!(
        e.contains("fix: ALTER TABLE \"crm\".\"bad\" ALTER COLUMN \"balance\" TYPE numeric"),
        "{e}"
    );

    exec(
        &env,
        "ALTER TABLE crm.bad ALTER COLUMN balance TYPE numeric",
    )
    .await;
    assert_eq!(prepare(&env, &spec).await, Ok(TableState::Compatible));
    exec(&env, "ALTER TABLE crm.bad DROP CONSTRAINT bad_pkey").await;
    exec(&env, "CREATE UNIQUE INDEX ON crm.bad (email)").await;
    let e = prepare(&env, &spec).await.unwrap_err();
    assert!(
        e.contains(r#"the key ("account_id", "email") has no primary key or unique index"#),
        "{e}"
    );
    exec(
        &env,
        "CREATE UNIQUE INDEX ON crm.bad (email, account_id) INCLUDE (plan)",
    )
    .await;
    assert_eq!(prepare(&env, &spec).await, Ok(TableState::Compatible));
    // An application's own NOT NULL column: refused unless it fills itself.
    exec(&env, "ALTER TABLE crm.bad ADD COLUMN app_id bigint").await;
    exec(&env, "ALTER TABLE crm.bad ALTER COLUMN app_id SET NOT NULL").await;
    let e = prepare(&env, &spec).await.unwrap_err();
    assert!(
        e.contains("column app_id is NOT NULL without a default"),
        "{e}"
    );
    for fills in [
        "ALTER TABLE crm.bad ALTER COLUMN app_id SET DEFAULT 0",
        "ALTER TABLE crm.bad ALTER COLUMN app_id DROP DEFAULT, ALTER COLUMN app_id ADD GENERATED ALWAYS AS IDENTITY",
    ] {
        exec(&env, fills).await;
        assert_eq!(prepare(&env, &spec).await, Ok(TableState::Compatible), "{fills}");
    }
}

/// Names that would break generated SQL if any were not quoted, or collided with
/// the columns the agent adds: a table name holding SQL, columns named like the
/// staging's, the diff's and the journal's own (`load_id`, `op`, `before`), `r`
/// (the alias of a `jsonb` row) and `x$1` (a parameter's spelling).
#[tokio::test]
async fn any_name_works() {
    let env = TestEnv::migrated().await;
    let spec = spec(
        r#"
[[mirror]]
name = "odd_names"
file = "odd.csv"
table = 'public."x""; DROP TABLE y; --"'
key = ["load_id", "op"]
modified_column = "before"
columns = [
  { name = "load_id", type = "integer" },
  { name = "op",      type = "text" },
  { name = "r",       type = "text", nullable = true },
  { name = "x$1",     type = "boolean" },
  { name = "line_no", type = "bigint" },
]
"#,
    );
    assert_eq!(prepare(&env, &spec).await, Ok(TableState::Absent));
    let row = |id: &str, r: &str, flag: &str| -> Fields {
        vec![id.into(), "op".into(), r.into(), flag.into(), "7".into()]
    };
    let a = uuid::Uuid::now_v7();
    let file_a = vec![
        row("1", "one", "yes"),
        row("2", "", "no"),
        row("3", "three", "no"),
    ];
    stage(&env, &spec, a, &file_a).await;
    assert_eq!(
        merge(&env, &spec, a, serde_json::json!([])).await,
        [3, 0, 0, 0]
    );
    let snapshot_a = table_rows(&env, &spec, true).await;
    let b = uuid::Uuid::now_v7();
    let file_b = vec![
        row("1", "one", "no"),
        row("2", "two", "no"),
        row("4", "", "yes"),
    ];
    stage(&env, &spec, b, &file_b).await;
    assert_eq!(
        merge(&env, &spec, b, serde_json::json!([])).await,
        [1, 2, 1, 3]
    );
    let cells = |r: &[&str]| -> Vec<Option<String>> {
        r.iter()
            .map(|v| (!v.is_empty()).then(|| (*v).to_owned()))
            .collect()
    };
    assert_eq!(
        table_rows(&env, &spec, false).await,
        vec![
            cells(&["1", "op", "one", "false", "7"]),
            cells(&["2", "op", "two", "false", "7"]),
            cells(&["4", "op", "", "true", "7"]),
        ]
    );
    let sql = MirrorSql::new(&spec);
    let key = key_json(&spec, &["2", "op"]).unwrap();
    let ops: Vec<String> = sqlx::query_scalar(&format!("SELECT h.op FROM ({}) h", sql.history()))
        .bind(spec.name.as_str())
        .bind(key.to_string())
        .fetch_all(&env.pool)
        .await
        .unwrap();
    assert_eq!(ops, ["i", "u"]);
    assert_eq!(revert(&env, &spec, b).await, 4);
    assert_eq!(table_rows(&env, &spec, true).await, snapshot_a);
}
