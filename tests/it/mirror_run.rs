//! The run of a generic mirror (docs/mirrors.md#runs), `sync_mirror` and
//! `revert_mirror_last` called directly against a fresh migrated database, with
//! the `subscribers` shape of issue 18: a composite key, every type, nullable
//! columns, a header in another order with extra columns. First sync, a change
//! of every kind, an unchanged file skipped, rejects naming line and column,
//! `MAX_REJECTS`, a missing column refused by name, the guards refusing, a
//! failure mid-merge, revert, and concurrent runs.

use crate::helpers::fixtures::subscribers_toml;
use crate::helpers::TestEnv;
use followers_etl::config::DatabaseUrl;
use followers_etl::mirror::run::{
    mirror_lock_key, revert_mirror_last, sync_mirror, MirrorRunError, MirrorRunOptions,
    MirrorSummary,
};
use followers_etl::mirror::{from_toml_str, ColumnType, MirrorSpec};
use sea_orm::{Database, DatabaseConnection};
use sqlx::Row;
use std::time::Duration;

const ACCOUNTS: &str = r#"
[[mirror]]
name = "accounts"
file = "accounts.csv"
table = 'crm."Accounts"'
key = ["id"]
columns = [
  { name = "id",   type = "integer" },
  { name = "name", type = "text" },
]
"#;

/// The file's header: another order than the configuration's, two extra
/// columns (ignored), `Full Name` for `full_name`.
const HEADER: [&str; 13] = [
    "token",
    "Notes",
    "Full Name",
    "EMAIL",
    "account_id",
    "plan",
    "signed_up",
    "opted_in",
    "balance",
    "seats",
    "last_seen",
    "confirmed",
    "Region",
];

fn spec(toml: &str) -> MirrorSpec {
    from_toml_str(toml).unwrap().remove(0)
}

struct Env {
    env: TestEnv,
    db: DatabaseConnection,
    url: DatabaseUrl,
}

async fn env() -> Env {
    let env = TestEnv::migrated().await;
    let db = Database::connect(env.url.as_str()).await.unwrap();
    let url = DatabaseUrl::parse("DATABASE_URL", &env.url).unwrap();
    Env { env, db, url }
}

impl Env {
    async fn sync(
        &self,
        spec: &MirrorSpec,
        options: MirrorRunOptions,
    ) -> Result<MirrorSummary, MirrorRunError> {
        sync_mirror(&self.db, &self.url, spec, &self.env.tables(), options).await
    }
}

/// A subscriber, its fields in the configured order as the file spells them.
type Fields = Vec<String>;

fn base(id: u32) -> Fields {
    vec![
        id.to_string(),
        format!("user{id}@x.io"),
        format!("User {id}"),
        if id.is_multiple_of(2) {
            String::new()
        } else {
            "basic".into()
        },
        format!("2024-01-{id:02}"),
        "true".into(),
        if id == 3 {
            String::new()
        } else {
            "1.50".into()
        },
        "1".into(),
        "2024-03-01 12:00:00".into(),
        "2024-03-01 12:00:00Z".into(),
        format!("00000000-0000-0000-0000-{id:012}"),
    ]
}

fn quoted(field: &str) -> String {
    if field.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", field.replace('"', "\"\""))
    } else {
        field.to_owned()
    }
}

/// The file: `HEADER`, then each row with its fields in the header's order.
fn csv(rows: &[Fields]) -> String {
    let s = spec(&subscribers_toml(r#""crm.subscribers""#));
    let mut out = HEADER.join(",") + "\n";
    for row in rows {
        let line: Vec<String> = HEADER
            .iter()
            .map(|h| {
                match s
                    .columns
                    .iter()
                    .position(|c| c.source.eq_ignore_ascii_case(h))
                {
                    Some(i) => quoted(&row[i]),
                    None => "extra; ignored".to_owned(),
                }
            })
            .collect();
        out += &line.join(",");
        out += "\n";
    }
    out
}

/// The rows as the table should hold them, in PostgreSQL's text output
/// (timestamptz in UTC), by key; the last line of a key wins.
fn expected(rows: &[Fields]) -> Vec<Vec<Option<String>>> {
    let mut out: Vec<Vec<Option<String>>> = Vec::new();
    for row in rows {
        let mut cells: Vec<Option<String>> = row
            .iter()
            .map(|f| (!f.trim().is_empty()).then(|| f.trim().to_owned()))
            .collect();
        cells[1] = cells[1].as_ref().map(|v| v.to_lowercase());
        cells[9] = cells[9]
            .as_ref()
            .map(|v| v.trim_end_matches('Z').to_owned());
        out.retain(|o| o[..2] != cells[..2]);
        out.push(cells);
    }
    out.sort_by_key(|r| r[0].as_ref().unwrap().parse::<i64>().unwrap());
    out
}

async fn table_rows(env: &Env, spec: &MirrorSpec) -> Vec<Vec<Option<String>>> {
    let list: Vec<String> = spec
        .columns
        .iter()
        .map(|c| match c.ty {
            ColumnType::Timestamptz => format!("(t.{} AT TIME ZONE 'UTC')::text", c.name.sql()),
            _ => format!("t.{}::text", c.name.sql()),
        })
        .collect();
    let order: Vec<String> = spec.key.iter().map(|k| format!("t.{}", k.sql())).collect();
    let sql = format!(
        "SELECT {} FROM {} t ORDER BY {}",
        list.join(", "),
        spec.table.sql(),
        order.join(", ")
    );
    sqlx::query(&sql)
        .fetch_all(&env.env.pool)
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

fn file_a() -> Vec<Fields> {
    (1..=6).map(base).collect()
}

/// 1: full_name with quotes and a line break; 2: plan NULL → value; 3:
/// balance NULL → value, opted_in changed; 4: deleted; 5: unchanged, twice
/// (the last line wins); 6: unchanged, spelled differently; 7: new.
fn file_b() -> Vec<Fields> {
    let mut rows = vec![base(5)];
    let mut one = base(1);
    one[2] = "Zoë \"Z\"\nline two".into();
    rows.push(one);
    let mut two = base(2);
    two[3] = "pro".into();
    rows.push(two);
    let mut three = base(3);
    three[5] = "false".into();
    three[6] = "2.75".into();
    rows.push(three);
    rows.push(base(5));
    let mut six = base(6);
    six[1] = " USER6@X.IO ".into();
    rows.push(six);
    rows.push(base(7));
    rows
}

fn write(env: &Env, rows: &[Fields]) {
    env.env.write_file("subscribers.csv", csv(rows));
}

/// Whether a staging table is left (they are named by the table, not the mirror).
async fn staging_exists(env: &Env) -> bool {
    sqlx::query_scalar::<_, bool>(
        "SELECT EXISTS (SELECT 1 FROM pg_tables WHERE schemaname = 'etl_mirror_staging')",
    )
    .fetch_one(&env.env.pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn a_mirror_syncs_every_change_skips_an_unchanged_file_and_reverts() {
    let env = env().await;
    let spec = spec(&subscribers_toml(r#""crm.subscribers""#));
    let options = MirrorRunOptions::default();

    write(&env, &file_a());
    let first = env.sync(&spec, options).await.unwrap();
    assert_eq!(
        (
            first.rows_read,
            first.inserted,
            first.updated,
            first.deleted
        ),
        (6, 6, 0, 0)
    );
    assert_eq!(first.journaled, 6);
    assert_eq!(table_rows(&env, &spec).await, expected(&file_a()));
    assert!(
        !staging_exists(&env).await,
        "staging is dropped after the run"
    );

    let again = env.sync(&spec, options).await.unwrap();
    assert!(again.skipped(), "{again:?}");
    assert_eq!(again.content_hash, first.content_hash);

    write(&env, &file_b());
    let b = env.sync(&spec, options).await.unwrap();
    assert_eq!(
        (
            b.rows_read,
            b.inserted,
            b.updated,
            b.deleted,
            b.duplicates,
            b.unchanged
        ),
        (7, 1, 3, 1, 1, 2),
        "{b:?}"
    );
    assert_eq!(b.duplicate_examples.len(), 1);
    // Lines of the file: subscriber 1's name spans lines 3 and 4.
    assert_eq!(b.duplicate_examples[0].1, vec![2, 7]);
    assert_eq!(b.journaled, 5);
    assert_eq!(table_rows(&env, &spec).await, expected(&file_b()));

    // Forced, an unchanged file is read again and changes nothing.
    let forced = env
        .sync(
            &spec,
            MirrorRunOptions {
                force: true,
                ..options
            },
        )
        .await
        .unwrap();
    assert!(!forced.skipped());
    assert_eq!((forced.inserted, forced.updated, forced.deleted), (0, 0, 0));

    // Revert the last run that changed the table: B.
    let reverted = revert_mirror_last(&env.db, &env.url, &spec, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(reverted.load_id, b.load_id.unwrap());
    assert_eq!(reverted.changed, 5);
    assert_eq!(table_rows(&env, &spec).await, expected(&file_a()));
    // As the followers revert: the content it undid is held back until the
    // file changes (docs/mirrors.md#revert); a forced sync applies it again.
    let held = env.sync(&spec, options).await.unwrap();
    assert!(held.skipped() && held.held_back, "{held:?}");
    assert_eq!(table_rows(&env, &spec).await, expected(&file_a()));
    let reapplied = env
        .sync(
            &spec,
            MirrorRunOptions {
                force: true,
                ..options
            },
        )
        .await
        .unwrap();
    assert_eq!(
        (reapplied.inserted, reapplied.updated, reapplied.deleted),
        (1, 3, 1)
    );
    assert_eq!(table_rows(&env, &spec).await, expected(&file_b()));
    let after = env.sync(&spec, options).await.unwrap();
    assert!(after.skipped() && !after.held_back, "{after:?}");
}

#[tokio::test]
async fn rejects_name_the_line_and_column_and_max_rejects_refuses_the_file() {
    let env = env().await;
    let mut spec = spec(&subscribers_toml(r#""crm.subscribers""#));
    write(&env, &file_a());
    env.sync(&spec, MirrorRunOptions::default()).await.unwrap();

    // Line 3 (subscriber 2): seats is not a number; line 5 (4): a bad date.
    // Subscriber 1 changed on line 2, then rejected on line 9: its last line is
    // the rejected one, so its row stays as it is.
    let mut rows = file_a();
    rows[0][3] = "changed".into();
    rows[1][7] = "12x".into();
    rows[3][4] = "2024-02-30".into();
    rows.push(base(7));
    let mut one = base(1);
    one[10] = "not-a-uuid".into();
    rows.push(one);
    write(&env, &rows);
    let e = env
        .sync(&spec, MirrorRunOptions::default())
        .await
        .unwrap_err();
    let text = e.to_string();
    assert!(
        matches!(
            &e,
            MirrorRunError::TooManyRejects { max: 0, rejected: 3, rejects, .. } if rejects.len() == 2
        ),
        "{text}"
    );
    assert!(
        text.contains("3 rejected lines, more than MAX_REJECTS=0"),
        "{text}"
    );
    assert!(
        text.contains("subscribers.csv: line 3: column seats: seats"),
        "{text}"
    );
    assert_eq!(table_rows(&env, &spec).await, expected(&file_a()));

    // The mirror's own max_rejects: the valid lines sync, the rejected lines'
    // rows stay as they were (never deleted).
    spec.overrides.max_rejects = Some(3);
    let s = env.sync(&spec, MirrorRunOptions::default()).await.unwrap();
    assert_eq!(
        (s.rejected, s.inserted, s.updated, s.deleted),
        (3, 1, 0, 0),
        "{s:?}"
    );
    let lines: Vec<(u64, Option<&str>)> = s
        .rejects
        .iter()
        .map(|r| (r.line, r.column.as_deref()))
        .collect();
    assert_eq!(
        lines,
        [
            (3, Some("seats")),
            (5, Some("signed_up")),
            (9, Some("token"))
        ]
    );
    assert!(s.rejects[0].file.ends_with("subscribers.csv"));
    assert!(
        s.rejects[1].reason.contains("signed_up"),
        "{:?}",
        s.rejects[1]
    );
    let kept = [file_a(), vec![base(7)]].concat();
    assert_eq!(table_rows(&env, &spec).await, expected(&kept));
}

#[tokio::test]
async fn a_missing_column_is_refused_by_name() {
    let env = env().await;
    let spec = spec(&subscribers_toml(r#""crm.subscribers""#));
    let text = csv(&file_a()).replacen("Full Name", "Name", 1);
    env.env.write_file("subscribers.csv", text);
    let e = env
        .sync(&spec, MirrorRunOptions::default())
        .await
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("line 1: the header has no \"Full Name\" column"),
        "{e}"
    );
    assert!(matches!(e, MirrorRunError::MissingColumn { .. }));
    assert!(table_rows(&env, &spec).await.is_empty());
}

#[tokio::test]
async fn the_guards_refuse_and_leave_the_table_unchanged() {
    let env = env().await;
    let spec = spec(&subscribers_toml(r#""crm.subscribers""#));
    write(&env, &file_a());
    env.sync(&spec, MirrorRunOptions::default()).await.unwrap();

    write(&env, &file_a()[..2]);
    let e = env
        .sync(&spec, MirrorRunOptions::default())
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            MirrorRunError::MassDelete {
                deleted: 4,
                current: 6,
                ..
            }
        ),
        "{e}"
    );
    assert!(e
        .to_string()
        .starts_with("mirror subscribers: the file would delete 4 of 6 rows"));
    assert_eq!(table_rows(&env, &spec).await, expected(&file_a()));

    env.env.write_file("subscribers.csv", "");
    let e = env
        .sync(
            &spec,
            MirrorRunOptions {
                max_delete_ratio: 1.0,
                ..MirrorRunOptions::default()
            },
        )
        .await
        .unwrap_err();
    assert!(
        matches!(e, MirrorRunError::EmptyFile { current: 6, .. }),
        "{e}"
    );
    assert_eq!(table_rows(&env, &spec).await, expected(&file_a()));
    assert!(!staging_exists(&env).await);
}

#[tokio::test]
async fn a_failure_mid_merge_leaves_the_table_unchanged() {
    let env = env().await;
    let spec = spec(&subscribers_toml(r#""crm.subscribers""#));
    write(&env, &file_a());
    let first = env.sync(&spec, MirrorRunOptions::default()).await.unwrap();
    // The application's own constraint: the new row's token repeats row 1's,
    // so the insert fails after the update succeeded.
    env.env
        .exec("CREATE UNIQUE INDEX subscribers_token ON crm.subscribers (token)")
        .await;
    let mut rows = file_b();
    let last = rows.len() - 1;
    rows[last][10] = base(1)[10].clone();
    write(&env, &rows);
    let e = env
        .sync(&spec, MirrorRunOptions::default())
        .await
        .unwrap_err();
    assert!(
        matches!(e, MirrorRunError::Db { step: "insert", .. }),
        "{e}"
    );
    assert_eq!(table_rows(&env, &spec).await, expected(&file_a()));
    assert!(!staging_exists(&env).await, "staging is discarded");
    assert_eq!(
        env.env
            .scalar("SELECT count(*) FROM etl_info_schema.mirror_journal WHERE load_id <> (SELECT last_load_id FROM etl_info_schema.mirror_status)")
            .await,
        0,
        "nothing journaled"
    );
    let status: String = sqlx::query_scalar("SELECT last_hash FROM etl_info_schema.mirror_status")
        .fetch_one(&env.env.pool)
        .await
        .unwrap();
    assert_eq!(status, first.content_hash);
}

fn accounts_csv(n: u32, suffix: &str) -> String {
    let mut out = String::from("id,name\n");
    for i in 1..=n {
        out += &format!("{i},Account {i}{suffix}\n");
    }
    out
}

async fn account_rows(env: &Env) -> i64 {
    env.env
        .scalar(r#"SELECT count(*) FROM crm."Accounts""#)
        .await
}

#[tokio::test]
async fn two_mirrors_sync_at_once_and_one_mirror_runs_once_at_a_time() {
    let env = env().await;
    let (subscribers, accounts) = (
        spec(&subscribers_toml(r#""crm.subscribers""#)),
        spec(ACCOUNTS),
    );
    write(&env, &file_a());
    env.env.write_file("accounts.csv", accounts_csv(20_000, ""));
    let options = MirrorRunOptions::default();
    let (a, b) = tokio::join!(
        env.sync(&subscribers, options),
        env.sync(&accounts, options)
    );
    assert_eq!(a.unwrap().inserted, 6);
    assert_eq!(b.unwrap().inserted, 20_000);
    assert_eq!(table_rows(&env, &subscribers).await, expected(&file_a()));
    assert_eq!(account_rows(&env).await, 20_000);

    // The same mirror twice at once: one runs, the other finds it busy.
    env.env
        .write_file("accounts.csv", accounts_csv(20_000, " v2"));
    let (x, y) = tokio::join!(env.sync(&accounts, options), env.sync(&accounts, options));
    let busy = [&x, &y]
        .iter()
        .filter(|r| matches!(r, Err(MirrorRunError::Busy { .. })))
        .count();
    assert_eq!(busy, 1, "{x:?} {y:?}");
    let done = x.or(y).unwrap();
    assert_eq!(done.updated, 20_000);
    let renamed = env
        .env
        .scalar(r#"SELECT count(*) FROM crm."Accounts" WHERE name LIKE '% v2'"#)
        .await;
    assert_eq!(renamed, 20_000);

    // Held by another session: busy, whatever the followers' run lock does.
    let mut holder = env.env.pool.acquire().await.unwrap();
    let (k1, k2) = mirror_lock_key(&accounts);
    sqlx::query("SELECT pg_advisory_lock($1, $2)")
        .bind(k1)
        .bind(k2)
        .execute(&mut *holder)
        .await
        .unwrap();
    let e = env.sync(&accounts, options).await.unwrap_err();
    assert_eq!(
        e.to_string(),
        "mirror accounts: another run of this mirror holds its lock; nothing done (the next run tries again)"
    );
    // The other mirror and the followers' run lock are not affected.
    assert!(env.sync(&subscribers, options).await.unwrap().skipped());
    let followers_lock: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
        .bind(followers_etl::db::RUN_LOCK)
        .fetch_one(&env.env.pool)
        .await
        .unwrap();
    assert!(followers_lock);
}

/// Every reject is counted, beyond the 10,000 kept with their details.
#[tokio::test]
async fn more_rejects_than_are_kept_are_all_counted() {
    let env = env().await;
    let mut accounts = spec(ACCOUNTS);
    accounts.overrides.max_rejects = Some(20_000);
    let mut file = accounts_csv(3, "");
    for i in 0..10_005 {
        file += &format!("not-a-number-{i},Bad\n");
    }
    env.env.write_file("accounts.csv", file);
    let done = env
        .sync(&accounts, MirrorRunOptions::default())
        .await
        .unwrap();
    assert_eq!((done.inserted, done.rejected), (3, 10_005), "{done:?}");
    assert_eq!(account_rows(&env).await, 3);
}
