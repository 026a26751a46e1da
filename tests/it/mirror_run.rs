//! The run of a generic mirror (docs/mirrors.md#runs), `sync_mirror` and
//! `revert_mirror_last` called directly against a fresh migrated database, with
//! the `subscribers` shape of issue 18: a composite key, every type, nullable
//! columns, a header in another order with extra columns. First sync, a change
//! of every kind, an unchanged file skipped, rejects naming line and column,
//! `MAX_REJECTS`, a missing column refused by name, the guards refusing, a
//! failure mid-merge, revert, and concurrent runs. Then the defects a
//! black-box test found: a `numeric`'s trailing zeros and a case-only change
//! under a case-insensitive collation are changes, a `nullable` column over a
//! NOT NULL one is refused at the table check, a mirror never synced has
//! nothing to revert and no history, and rejects keep their line's text. Then
//! a review's: held-back content stays held back after an outside edit or
//! `VERIFY_EVERY`; a write into a partition or an inheritance child, or under
//! `session_replication_role = replica`, is found; a run whose lock was taken
//! over, or whose record was marked interrupted, during its merge never commits.

use crate::helpers::fixtures::subscribers_toml;
use crate::helpers::TestEnv;
use followers_etl::config::DatabaseUrl;
use followers_etl::mirror::run::{
    check_mirror_file, key_from_args, mirror_history, mirror_lock_key, revert_mirror,
    revert_mirror_last, sync_mirror, MirrorCheck, MirrorRevertOptions, MirrorRunError,
    MirrorRunOptions, MirrorSummary, RevertTarget,
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
    assert!(!exists(&env, "crm.subscribers").await, "no table created");
}

/// Whether the relation `name` exists (`to_regclass`).
async fn exists(env: &Env, name: &str) -> bool {
    sqlx::query_scalar::<_, bool>("SELECT to_regclass($1) IS NOT NULL")
        .bind(name)
        .fetch_one(&env.env.pool)
        .await
        .unwrap()
}

async fn schema_exists(env: &Env, name: &str) -> bool {
    sqlx::query_scalar::<_, bool>("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)")
        .bind(name)
        .fetch_one(&env.env.pool)
        .await
        .unwrap()
}

/// A first run creates its table (and schema) in the merge's transaction
/// (docs/mirrors.md#runs): refused by its rejects, or failed in the merge after
/// the table was made (the application's event trigger adds a CHECK the file
/// breaks), it leaves neither; a dry run creates nothing; the next run does.
#[tokio::test]
async fn a_first_run_refused_or_failed_leaves_neither_its_table_nor_its_schema() {
    let env = env().await;
    let accounts = spec(ACCOUNTS);
    let table = r#"crm."Accounts""#;
    env.env
        .write_file("accounts.csv", "id,name\n1,Ann\nx,Bob\n-3,Cy\n");
    let e = env
        .sync(&accounts, MirrorRunOptions::default())
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            MirrorRunError::TooManyRejects {
                rows_read: 3,
                rejected: 1,
                ..
            }
        ),
        "{e}"
    );
    assert!(!exists(&env, table).await, "no table after a refusal");
    assert!(
        !schema_exists(&env, "crm").await,
        "no schema after a refusal"
    );
    assert!(!staging_exists(&env).await);

    env.env
        .exec(
            "CREATE FUNCTION positive_ids() RETURNS event_trigger LANGUAGE plpgsql AS $$
             DECLARE r record;
             BEGIN
               FOR r IN SELECT object_identity FROM pg_event_trigger_ddl_commands()
                         WHERE schema_name = 'crm' AND object_type = 'table' LOOP
                 EXECUTE format('ALTER TABLE %s ADD CONSTRAINT positive CHECK (id > 0)', r.object_identity);
               END LOOP;
             END $$;
             CREATE EVENT TRIGGER positive_ids ON ddl_command_end WHEN TAG IN ('CREATE TABLE')
               EXECUTE FUNCTION positive_ids();",
        )
        .await;
    env.env
        .write_file("accounts.csv", "id,name\n1,Ann\n2,Bob\n-3,Cy\n");
    let e = env
        .sync(&accounts, MirrorRunOptions::default())
        .await
        .unwrap_err();
    assert!(
        matches!(e, MirrorRunError::Db { step: "insert", .. }),
        "{e}"
    );
    assert!(!exists(&env, table).await, "no table after a failed merge");
    assert!(
        !schema_exists(&env, "crm").await,
        "no schema after a failed merge"
    );
    assert!(!staging_exists(&env).await);

    let plan = env
        .sync(
            &accounts,
            MirrorRunOptions {
                dry_run: true,
                ..MirrorRunOptions::default()
            },
        )
        .await
        .unwrap();
    assert_eq!((plan.dry_run, plan.inserted), (true, 3), "{plan:?}");
    assert!(!exists(&env, table).await, "a dry run creates nothing");

    env.env
        .write_file("accounts.csv", "id,name\n1,Ann\n2,Bob\n3,Cy\n");
    let done = env
        .sync(&accounts, MirrorRunOptions::default())
        .await
        .unwrap();
    assert_eq!(done.inserted, 3, "{done:?}");
    assert_eq!(account_rows(&env).await, 3);
    assert_eq!(
        counter_state(&env).await,
        "A",
        "its write counter installed"
    );
    let skipped = env
        .sync(&accounts, MirrorRunOptions::default())
        .await
        .unwrap();
    assert!(skipped.skipped(), "{skipped:?}");
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

/// Two first runs into one new schema at once: the first creates the schema
/// in its merge's transaction and is slow to commit (the application's event
/// trigger sleeps in its CREATE TABLE); the other's merge waits for that commit
/// (at most `LOCK_WAIT_TIMEOUT`), then finds the schema and creates its own
/// table. Waiting longer than `LOCK_WAIT_TIMEOUT` fails it naming the wait,
/// its table not created.
#[tokio::test]
async fn first_runs_of_two_mirrors_into_one_new_schema_wait_for_each_other() {
    let env = env().await;
    let (subscribers, accounts) = (
        spec(&subscribers_toml(r#""crm.subscribers""#)),
        spec(ACCOUNTS),
    );
    write(&env, &file_a());
    env.env.write_file("accounts.csv", accounts_csv(10, ""));
    env.env
        .exec(
            r#"CREATE FUNCTION slow_accounts() RETURNS event_trigger LANGUAGE plpgsql AS $$
               BEGIN
                 IF EXISTS (SELECT 1 FROM pg_event_trigger_ddl_commands()
                             WHERE object_identity = 'crm."Accounts"') THEN
                   PERFORM pg_sleep(2);
                 END IF;
               END $$;
               CREATE EVENT TRIGGER slow_accounts ON ddl_command_end WHEN TAG IN ('CREATE TABLE')
                 EXECUTE FUNCTION slow_accounts();"#,
        )
        .await;
    let sleeping = || async {
        crate::helpers::eventually(30, "the accounts' merge creating its table", || async {
            let n = env
                .env
                .scalar("SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'PgSleep'")
                .await;
            (n > 0).then_some(())
        })
        .await;
    };
    let options = MirrorRunOptions::default();
    let (a, b) = tokio::join!(env.sync(&accounts, options), async {
        sleeping().await;
        env.sync(&subscribers, options).await
    });
    assert_eq!(a.unwrap().inserted, 10);
    assert_eq!(b.unwrap().inserted, 6);
    assert_eq!(table_rows(&env, &subscribers).await, expected(&file_a()));

    env.env.exec("DROP SCHEMA crm CASCADE").await;
    let short = MirrorRunOptions {
        lock_wait: Duration::from_millis(300),
        force: true,
        ..MirrorRunOptions::default()
    };
    let (a, b) = tokio::join!(env.sync(&accounts, short), async {
        sleeping().await;
        env.sync(&subscribers, short).await
    });
    assert_eq!(a.unwrap().inserted, 10);
    let e = b.unwrap_err();
    assert!(
        matches!(e, MirrorRunError::WritersBusy { .. })
            && e.to_string().contains("creating the schema \"crm\""),
        "{e}"
    );
    assert!(!exists(&env, "crm.subscribers").await);
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

/// The bytes read are the bytes hashed: a file rewritten after the hash (the
/// run held at its staging table by another session's lock) fails the run
/// before anything is merged.
#[tokio::test]
async fn a_file_rewritten_between_the_hash_and_the_read_fails_the_run() {
    let env = env().await;
    let accounts = spec(ACCOUNTS);
    env.env.write_file("accounts.csv", accounts_csv(10, ""));
    env.sync(&accounts, MirrorRunOptions::default())
        .await
        .unwrap();
    env.env.write_file("accounts.csv", accounts_csv(10, " v2"));
    let hold = crate::helpers::StagingHold::take(&env.env, &accounts).await;
    let rewrite = hold.release(|| {
        env.env.write_file("accounts.csv", accounts_csv(10, " v3"));
    });
    let (result, ()) = tokio::join!(env.sync(&accounts, MirrorRunOptions::default()), rewrite);
    let e = result.unwrap_err();
    assert!(
        matches!(&e, MirrorRunError::FileChanged { file, .. } if file.ends_with("accounts.csv")),
        "{e}"
    );
    let renamed = env
        .env
        .scalar(r#"SELECT count(*) FROM crm."Accounts" WHERE name LIKE '% v%'"#)
        .await;
    assert_eq!(renamed, 0, "nothing merged");
    let done = env
        .sync(&accounts, MirrorRunOptions::default())
        .await
        .unwrap();
    assert_eq!(done.updated, 10);
}

#[tokio::test]
async fn a_missing_file_is_a_read_error_naming_it() {
    let env = env().await;
    let e = env
        .sync(&spec(ACCOUNTS), MirrorRunOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(e, MirrorRunError::Read { .. }), "{e}");
    assert!(
        e.to_string().contains("accounts.csv: cannot read the file"),
        "{e}"
    );
}

// Exactness (docs/mirrors.md#skip, #revert, #retention): the skip trusts the
// table only as far as its write counter, identity and definition vouch for
// it; runs are in commit order; a revert is exact or refused; retention counts
// the runs that hold a journal.

/// `accounts` with `name` read from another header column (`title`).
const ACCOUNTS_BY_TITLE: &str = r#"
[[mirror]]
name = "accounts"
file = "accounts.csv"
table = 'crm."Accounts"'
key = ["id"]
columns = [
  { name = "id",   type = "integer" },
  { name = "name", type = "text", source = "title" },
]
"#;

/// `id,name` and the accounts' names, by id.
async fn accounts(env: &Env) -> Vec<(i32, String)> {
    sqlx::query_as(r#"SELECT id, name FROM crm."Accounts" ORDER BY id"#)
        .fetch_all(&env.env.pool)
        .await
        .unwrap()
}

fn numbered(n: u32, suffix: &str) -> Vec<(i32, String)> {
    (1..=n)
        .map(|i| (i32::try_from(i).unwrap(), format!("Account {i}{suffix}")))
        .collect()
}

/// Version 2 of 20 accounts: 1 to 5 renamed, 20 deleted, 21 new.
fn accounts_v2() -> String {
    let mut out = String::from("id,name\n");
    for i in 1..=19 {
        let suffix = if i <= 5 { " v2" } else { "" };
        out += &format!("{i},Account {i}{suffix}\n");
    }
    out + "21,Account 21\n"
}

fn accounts_v2_rows() -> Vec<(i32, String)> {
    let mut rows: Vec<(i32, String)> = accounts_v2()
        .lines()
        .skip(1)
        .map(|l| {
            let (id, name) = l.split_once(',').unwrap();
            (id.parse().unwrap(), name.to_owned())
        })
        .collect();
    rows.sort();
    rows
}

#[tokio::test]
async fn a_dropped_and_recreated_table_is_filled_again_by_an_unchanged_file() {
    let env = env().await;
    let spec = spec(ACCOUNTS);
    env.env.write_file("accounts.csv", accounts_csv(20, ""));
    let options = MirrorRunOptions::default();
    env.sync(&spec, options).await.unwrap();
    assert!(env.sync(&spec, options).await.unwrap().skipped());

    env.env.exec(r#"DROP TABLE crm."Accounts""#).await;
    let again = env.sync(&spec, options).await.unwrap();
    assert!(!again.skipped(), "the table was replaced: {again:?}");
    assert_eq!(again.inserted, 20);
    assert!(
        again
            .sync_reason
            .as_deref()
            .is_some_and(|r| r.contains("dropped, replaced or renamed")),
        "{again:?}"
    );
    assert_eq!(accounts(&env).await, numbered(20, ""));
    assert!(env.sync(&spec, options).await.unwrap().skipped());
}

#[tokio::test]
async fn edits_outside_the_agent_are_undone_by_an_unchanged_file() {
    let env = env().await;
    let spec = spec(ACCOUNTS);
    env.env.write_file("accounts.csv", accounts_csv(20, ""));
    let options = MirrorRunOptions::default();
    env.sync(&spec, options).await.unwrap();
    // The agent's own merge is not counted as an edit.
    assert!(env.sync(&spec, options).await.unwrap().skipped());
    assert!(
        env.env
            .scalar(
                r#"SELECT count(*) FROM pg_trigger
                    WHERE tgrelid = 'crm."Accounts"'::regclass AND tgname = 'followers_etl_mirror_writes'"#
            )
            .await
            == 1,
        "the write counter is installed when the table is prepared"
    );

    env.env
        .exec(r#"UPDATE crm."Accounts" SET name = 'edited' WHERE id = 3"#)
        .await;
    env.env
        .exec(r#"DELETE FROM crm."Accounts" WHERE id = 4"#)
        .await;
    env.env
        .exec(r#"INSERT INTO crm."Accounts" (id, name) VALUES (99, 'stray')"#)
        .await;
    let s = env.sync(&spec, options).await.unwrap();
    assert_eq!((s.inserted, s.updated, s.deleted), (1, 1, 1), "{s:?}");
    assert!(
        s.sync_reason
            .as_deref()
            .is_some_and(|r| r.contains("changed outside the agent") && r.contains("3 writing")),
        "{s:?}"
    );
    assert_eq!(accounts(&env).await, numbered(20, ""));
    assert!(env.sync(&spec, options).await.unwrap().skipped());

    env.env.exec(r#"TRUNCATE crm."Accounts""#).await;
    let s = env
        .sync(
            &spec,
            MirrorRunOptions {
                max_delete_ratio: 1.0,
                ..options
            },
        )
        .await
        .unwrap();
    assert_eq!(s.inserted, 20, "{s:?}");
    assert_eq!(accounts(&env).await, numbered(20, ""));

    // A disabled counter vouches for nothing: compared once VERIFY_EVERY passed.
    env.env
        .exec(r#"ALTER TABLE crm."Accounts" DISABLE TRIGGER followers_etl_mirror_writes"#)
        .await;
    env.env
        .exec(r#"UPDATE crm."Accounts" SET name = 'unseen' WHERE id = 5"#)
        .await;
    let no_counter = MirrorRunOptions {
        verify_every: Duration::ZERO,
        ..options
    };
    let s = env.sync(&spec, no_counter).await.unwrap();
    assert_eq!(s.updated, 1, "{s:?}");
    assert_eq!(accounts(&env).await, numbered(20, ""));
}

#[tokio::test]
async fn a_changed_definition_syncs_an_unchanged_file() {
    let env = env().await;
    let mut file = String::from("id,name,title\n");
    for i in 1..=20 {
        file += &format!("{i},Account {i},Title {i}\n");
    }
    env.env.write_file("accounts.csv", file);
    let options = MirrorRunOptions::default();
    env.sync(&spec(ACCOUNTS), options).await.unwrap();
    assert!(env.sync(&spec(ACCOUNTS), options).await.unwrap().skipped());

    let by_title = spec(ACCOUNTS_BY_TITLE);
    let s = env
        .sync(
            &by_title,
            MirrorRunOptions {
                max_update_ratio: 1.0,
                ..options
            },
        )
        .await
        .unwrap();
    assert_eq!(s.updated, 20, "{s:?}");
    assert!(
        s.sync_reason
            .as_deref()
            .is_some_and(|r| r.contains("definition")),
        "{s:?}"
    );
    let titled: Vec<(i32, String)> = (1..=20).map(|i| (i, format!("Title {i}"))).collect();
    assert_eq!(accounts(&env).await, titled);
    assert!(env.sync(&by_title, options).await.unwrap().skipped());

    // A run is reverted only with the definition it merged with.
    let e = revert_mirror_last(&env.db, &env.url, &spec(ACCOUNTS), Duration::from_secs(5))
        .await
        .unwrap_err();
    assert!(
        matches!(e, MirrorRunError::DefinitionChanged { load_id, .. } if Some(load_id) == s.load_id),
        "{e}"
    );
    assert_eq!(accounts(&env).await, titled);
    revert_mirror_last(&env.db, &env.url, &by_title, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(accounts(&env).await, numbered(20, ""));
}

#[tokio::test]
async fn runs_are_reverted_in_commit_order_not_load_id_order() {
    let env = env().await;
    let spec = spec(ACCOUNTS);
    let options = MirrorRunOptions::default();
    env.env.write_file("accounts.csv", accounts_csv(20, ""));
    env.sync(&spec, options).await.unwrap();
    env.env.write_file("accounts.csv", accounts_v2());
    let b = env.sync(&spec, options).await.unwrap();
    // The second run's agent had its clock behind: its UUID v7 sorts first.
    let early = uuid::Uuid::parse_str("00000000-0000-7000-8000-000000000001").unwrap();
    for table in ["mirror_journal", "mirror_runs"] {
        sqlx::query(&format!(
            "UPDATE etl_info_schema.{table} SET load_id = $1 WHERE load_id = $2"
        ))
        .bind(early)
        .bind(b.load_id.unwrap())
        .execute(&env.env.pool)
        .await
        .unwrap();
    }
    let reverted = revert_mirror_last(&env.db, &env.url, &spec, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(reverted.load_id, early, "the run committed last is undone");
    assert_eq!(reverted.changed, 7);
    assert_eq!(accounts(&env).await, numbered(20, ""));
}

#[tokio::test]
async fn a_revert_refuses_rows_changed_since_the_run_and_checks_its_counts() {
    let env = env().await;
    let spec = spec(ACCOUNTS);
    let options = MirrorRunOptions::default();
    env.env.write_file("accounts.csv", accounts_csv(20, ""));
    env.sync(&spec, options).await.unwrap();
    env.env.write_file("accounts.csv", accounts_v2());
    let b = env.sync(&spec, options).await.unwrap();
    let revert = || revert_mirror_last(&env.db, &env.url, &spec, Duration::from_secs(5));

    // A renamed row edited again, and the deleted row back: not exact.
    env.env
        .exec(r#"UPDATE crm."Accounts" SET name = 'by hand' WHERE id = 2"#)
        .await;
    env.env
        .exec(r#"INSERT INTO crm."Accounts" (id, name) VALUES (20, 'back')"#)
        .await;
    let e = revert().await.unwrap_err();
    assert!(
        matches!(&e, MirrorRunError::RevertDrift { count: 2, load_id, .. } if Some(*load_id) == b.load_id),
        "{e}"
    );
    let text = e.to_string();
    assert!(
        text.contains(r#"{"id": 2}: changed by the run, changed again now"#)
            && text.contains(r#"{"id": 20}: deleted by the run, present now"#),
        "{text}"
    );
    let mut edited = accounts_v2_rows();
    edited[1].1 = "by hand".into();
    edited.insert(19, (20, "back".into()));
    assert_eq!(accounts(&env).await, edited, "nothing changed");

    // Put back as the run left it, but a trigger keeps one row from being
    // written back: the counts differ from the journal's, so it rolls back.
    env.env
        .exec(r#"UPDATE crm."Accounts" SET name = 'Account 2 v2' WHERE id = 2"#)
        .await;
    env.env
        .exec(r#"DELETE FROM crm."Accounts" WHERE id = 20"#)
        .await;
    env.env
        .exec(
            r#"CREATE FUNCTION crm.keep_three() RETURNS trigger LANGUAGE plpgsql AS $$
               BEGIN IF OLD.id = 3 THEN RETURN NULL; END IF; RETURN NEW; END $$;
               CREATE TRIGGER keep_three BEFORE UPDATE ON crm."Accounts"
                  FOR EACH ROW EXECUTE FUNCTION crm.keep_three()"#,
        )
        .await;
    let e = revert().await.unwrap_err();
    assert!(
        matches!(
            e,
            MirrorRunError::RevertMismatch {
                expected: 5,
                actual: 4,
                ..
            }
        ),
        "{e}"
    );
    assert_eq!(accounts(&env).await, accounts_v2_rows(), "rolled back");

    env.env
        .exec(r#"DROP TRIGGER keep_three ON crm."Accounts""#)
        .await;
    let done = revert().await.unwrap();
    assert_eq!(done.changed, 7);
    assert_eq!(accounts(&env).await, numbered(20, ""));
}

#[tokio::test]
async fn a_revert_holds_its_content_back_until_the_file_changes() {
    let env = env().await;
    let spec = spec(ACCOUNTS);
    let options = MirrorRunOptions::default();
    env.env.write_file("accounts.csv", accounts_csv(20, ""));
    env.sync(&spec, options).await.unwrap();
    env.env.write_file("accounts.csv", accounts_v2());
    env.sync(&spec, options).await.unwrap();
    // A run that changes nothing after it: the file in place is still held back.
    assert!(!env
        .sync(
            &spec,
            MirrorRunOptions {
                force: true,
                ..options
            }
        )
        .await
        .unwrap()
        .skipped());
    revert_mirror_last(&env.db, &env.url, &spec, Duration::from_secs(5))
        .await
        .unwrap();
    for _ in 0..2 {
        let held = env.sync(&spec, options).await.unwrap();
        assert!(held.skipped() && held.held_back, "{held:?}");
        assert_eq!(accounts(&env).await, numbered(20, ""));
    }
    // A new file is applied.
    env.env.write_file("accounts.csv", accounts_csv(20, " v3"));
    let s = env.sync(&spec, options).await.unwrap();
    assert_eq!(s.updated, 20);
    assert_eq!(accounts(&env).await, numbered(20, " v3"));
}

async fn journal_rows(env: &Env) -> i64 {
    env.env
        .scalar("SELECT count(*) FROM etl_info_schema.mirror_journal")
        .await
}

#[tokio::test]
async fn retention_counts_the_runs_that_hold_a_journal_and_honours_days() {
    let env = env().await;
    let mut spec = spec(ACCOUNTS);
    spec.overrides.journal_keep_runs = Some(2);
    let options = MirrorRunOptions {
        history: followers_etl::config::RunRetention {
            keep_days: None,
            keep_runs: None,
        },
        ..MirrorRunOptions::default()
    };
    let forced = MirrorRunOptions {
        force: true,
        ..options
    };
    env.env.write_file("accounts.csv", accounts_csv(20, ""));
    let a = env.sync(&spec, options).await.unwrap();
    env.env.write_file("accounts.csv", accounts_v2());
    env.sync(&spec, options).await.unwrap();
    for _ in 0..3 {
        let s = env.sync(&spec, forced).await.unwrap();
        assert_eq!(s.journaled, 0);
    }
    // Runs that changed nothing hold no journal and do not count.
    assert_eq!(journal_rows(&env).await, 27);

    // JOURNAL_KEEP_DAYS: the first run's journal is too old.
    sqlx::query(
        "UPDATE etl_info_schema.mirror_runs SET finished_at = now() - interval '40 days' WHERE load_id = $1",
    )
    .bind(a.load_id.unwrap())
    .execute(&env.env.pool)
    .await
    .unwrap();
    env.sync(
        &spec,
        MirrorRunOptions {
            journal_keep_days: 30,
            ..forced
        },
    )
    .await
    .unwrap();
    assert_eq!(journal_rows(&env).await, 7);
    let journaled: Option<i64> =
        sqlx::query_scalar("SELECT journaled FROM etl_info_schema.mirror_runs WHERE load_id = $1")
            .bind(a.load_id.unwrap())
            .fetch_one(&env.env.pool)
            .await
            .unwrap();
    assert_eq!(journaled, None, "a pruned journal is marked so");

    // HISTORY_KEEP_RUNS: the run records too, each with its journal.
    let last = env
        .sync(
            &spec,
            MirrorRunOptions {
                history: followers_etl::config::RunRetention {
                    keep_days: None,
                    keep_runs: Some(3),
                },
                ..forced
            },
        )
        .await
        .unwrap();
    assert_eq!(
        env.env
            .scalar("SELECT count(*) FROM etl_info_schema.mirror_runs")
            .await,
        3
    );
    let newest: uuid::Uuid = sqlx::query_scalar(
        "SELECT load_id FROM etl_info_schema.mirror_runs ORDER BY commit_seq DESC LIMIT 1",
    )
    .fetch_one(&env.env.pool)
    .await
    .unwrap();
    assert_eq!(Some(newest), last.load_id);
    assert_eq!(journal_rows(&env).await, 0);
}

#[tokio::test]
async fn an_application_column_of_a_not_null_domain_does_not_break_revert_or_rejects() {
    let env = env().await;
    let mut spec = spec(ACCOUNTS);
    spec.overrides.max_rejects = Some(1);
    let options = MirrorRunOptions::default();
    env.env.write_file("accounts.csv", accounts_csv(20, ""));
    env.sync(&spec, options).await.unwrap();
    env.env
        .exec(
            r#"CREATE DOMAIN crm.level AS int NOT NULL;
               ALTER TABLE crm."Accounts" ADD COLUMN app_level crm.level DEFAULT 1"#,
        )
        .await;
    // A rejected line (its key valid) protects its key: read back as the
    // key's type, not through the table's row type.
    env.env.write_file("accounts.csv", accounts_v2() + "7\n");
    let s = env.sync(&spec, options).await.unwrap();
    assert_eq!((s.inserted, s.updated, s.deleted, s.rejected), (1, 5, 1, 1));
    let done = revert_mirror_last(&env.db, &env.url, &spec, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(done.changed, 7);
    assert_eq!(accounts(&env).await, numbered(20, ""));
    assert_eq!(
        env.env
            .scalar(r#"SELECT count(*) FROM crm."Accounts" WHERE app_level = 1"#)
            .await,
        20
    );
}

/// The pid of the session holding the mirror's run lock in this test's
/// database, if any (other tests' databases have tables of the same name).
async fn lock_holder(env: &Env, spec: &MirrorSpec) -> Option<i32> {
    let (k1, k2) = mirror_lock_key(spec);
    sqlx::query_scalar(
        "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted
            AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
            AND classid = $1::int4::oid AND objid = $2::int4::oid AND objsubid = 2",
    )
    .bind(k1)
    .bind(k2)
    .fetch_optional(&env.env.pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn a_run_that_lost_its_lock_leaves_staging_to_the_run_that_took_it() {
    let env = env().await;
    let spec = spec(ACCOUNTS);
    env.env.write_file("accounts.csv", accounts_csv(20, ""));
    env.sync(&spec, MirrorRunOptions::default()).await.unwrap();
    env.env.write_file("accounts.csv", accounts_v2());
    let options = MirrorRunOptions {
        lock_wait: Duration::from_secs(60),
        ..MirrorRunOptions::default()
    };
    // Another session holds a writer's lock on the table: the merge waits.
    let mut writer = env.env.pool.begin().await.unwrap();
    sqlx::query(r#"LOCK TABLE crm."Accounts" IN ROW EXCLUSIVE MODE"#)
        .execute(&mut *writer)
        .await
        .unwrap();
    let mut taker = env.env.pool.acquire().await.unwrap();
    let control = async {
        crate::helpers::eventually(30, "the merge waiting for the table", || async {
            let waiting = env
                .env
                .scalar(
                    r#"SELECT count(*) FROM pg_locks WHERE NOT granted
                        AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
                        AND relation = 'crm."Accounts"'::regclass"#,
                )
                .await;
            (waiting > 0).then_some(())
        })
        .await;
        // The run's lock session ends; another run takes the lock over.
        let pid = lock_holder(&env, &spec).await.unwrap();
        sqlx::query("SELECT pg_terminate_backend($1)")
            .bind(pid)
            .execute(&env.env.pool)
            .await
            .unwrap();
        let (k1, k2) = mirror_lock_key(&spec);
        sqlx::query("SELECT pg_advisory_lock($1, $2)")
            .bind(k1)
            .bind(k2)
            .execute(&mut *taker)
            .await
            .unwrap();
        writer.commit().await.unwrap();
    };
    let (result, ()) = tokio::join!(env.sync(&spec, options), control);
    let e = result.unwrap_err();
    assert!(matches!(e, MirrorRunError::Lost { .. }), "{e}");
    assert_eq!(accounts(&env).await, numbered(20, ""), "nothing committed");
    assert!(
        staging_exists(&env).await,
        "the staging table is the new holder's: not dropped without the lock"
    );
}

#[tokio::test]
async fn tables_whose_32_bit_lock_keys_collide_have_their_own_locks() {
    let env = env().await;
    let base = spec(ACCOUNTS);
    // Two tables whose keys share their first 32 bits (the old key).
    let mut seen = std::collections::HashMap::new();
    let with_table = |i: u32| {
        let mut s = base.clone();
        s.table = followers_etl::mirror::TableName::new("crm", &format!("t{i}")).unwrap();
        s
    };
    let (one, two) = (0u32..)
        .find_map(|i| {
            let k = mirror_lock_key(&with_table(i));
            seen.insert(k.0, i).map(|j| (j, i))
        })
        .unwrap();
    let (one, two) = (with_table(one), with_table(two));
    assert_eq!(mirror_lock_key(&one).0, mirror_lock_key(&two).0);
    assert_ne!(mirror_lock_key(&one), mirror_lock_key(&two));
    // Staging is keyed as the lock: by the table, whatever the mirror's name.
    let mut renamed = one.clone();
    renamed.name = followers_etl::mirror::MirrorName::parse("other").unwrap();
    assert_eq!(
        followers_etl::storage::mirror::MirrorSql::new(&renamed).staging_table(),
        followers_etl::storage::mirror::MirrorSql::new(&one).staging_table()
    );

    let mut holder = env.env.pool.acquire().await.unwrap();
    let (k1, k2) = mirror_lock_key(&one);
    sqlx::query("SELECT pg_advisory_lock($1, $2)")
        .bind(k1)
        .bind(k2)
        .execute(&mut *holder)
        .await
        .unwrap();
    env.env.write_file("accounts.csv", accounts_csv(3, ""));
    let options = MirrorRunOptions::default();
    assert!(matches!(
        env.sync(&one, options).await,
        Err(MirrorRunError::Busy { .. })
    ));
    let s = env.sync(&two, options).await.unwrap();
    assert_eq!(s.inserted, 3);
}

const BALANCES: &str = r#"
[[mirror]]
name = "balances"
file = "balances.csv"
table = "crm.balances"
key = ["id"]
columns = [
  { name = "id",     type = "integer" },
  { name = "amount", type = "numeric" },
  { name = "label",  type = "text" },
]
"#;

/// `crm.balances` by id, each value as PostgreSQL's text of it.
async fn balances(env: &Env) -> Vec<(i32, String, String)> {
    sqlx::query_as("SELECT id, amount::text, label FROM crm.balances ORDER BY id")
        .fetch_all(&env.env.pool)
        .await
        .unwrap()
}

fn rows(list: &[(i32, &str, &str)]) -> Vec<(i32, String, String)> {
    list.iter()
        .map(|(id, a, l)| (*id, (*a).to_owned(), (*l).to_owned()))
        .collect()
}

/// docs/mirrors.md#types: a `numeric` is loaded with its trailing zeros, so
/// `2` becoming `2.00` is a change (the numbers are equal, the file's text is
/// not), in the diff and in a revert's check of the table alike.
#[tokio::test]
async fn a_numeric_spelled_with_other_trailing_zeros_is_a_change() {
    let env = env().await;
    let spec = spec(BALANCES);
    let options = MirrorRunOptions::default();
    env.env
        .write_file("balances.csv", "id,amount,label\n1,2,a\n2,1.5,b\n3,7,c\n");
    env.sync(&spec, options).await.unwrap();
    env.env.write_file(
        "balances.csv",
        "id,amount,label\n1,2.00,a\n2,1.50,b\n3,7,c\n",
    );
    let s = env.sync(&spec, options).await.unwrap();
    assert_eq!(
        (s.inserted, s.updated, s.deleted, s.unchanged),
        (0, 2, 0, 1),
        "{s:?}"
    );
    let synced = rows(&[(1, "2.00", "a"), (2, "1.50", "b"), (3, "7", "c")]);
    assert_eq!(balances(&env).await, synced);

    // Written back outside the agent as an equal number of another spelling:
    // the table is no longer what the run left, so no exact revert.
    env.env
        .exec("UPDATE crm.balances SET amount = 2 WHERE id = 1")
        .await;
    let e = revert_mirror_last(&env.db, &env.url, &spec, Duration::from_secs(5))
        .await
        .unwrap_err();
    assert!(
        matches!(&e, MirrorRunError::RevertDrift { count: 1, load_id, .. } if Some(*load_id) == s.load_id),
        "{e}"
    );
    // The unchanged file makes the table equal to it again.
    let again = env.sync(&spec, options).await.unwrap();
    assert_eq!((again.inserted, again.updated, again.deleted), (0, 1, 0));
    assert_eq!(balances(&env).await, synced);
    let done = revert_mirror_last(&env.db, &env.url, &spec, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!((done.load_id, done.changed), (again.load_id.unwrap(), 1));
    assert_eq!(
        balances(&env).await,
        rows(&[(1, "2", "a"), (2, "1.50", "b"), (3, "7", "c")])
    );
}

/// A text column of a case-insensitive (nondeterministic) collation holds
/// `a` equal to `A`; the mirror compares text byte by byte, so a case-only
/// change is synced.
#[tokio::test]
async fn a_case_only_change_is_a_change_whatever_the_column_collation() {
    let env = env().await;
    let spec = spec(BALANCES);
    let options = MirrorRunOptions::default();
    env.env
        .exec(
            "CREATE SCHEMA crm;
             CREATE COLLATION crm.ci (provider = icu, locale = 'und-u-ks-level2', deterministic = false);
             CREATE TABLE crm.balances (id integer PRIMARY KEY, amount numeric NOT NULL,
                                        label text COLLATE crm.ci NOT NULL)",
        )
        .await;
    env.env
        .write_file("balances.csv", "id,amount,label\n1,1,ann\n2,2,bob\n");
    env.sync(&spec, options).await.unwrap();
    env.env
        .write_file("balances.csv", "id,amount,label\n1,1,Ann\n2,2,bob\n");
    let s = env.sync(&spec, options).await.unwrap();
    assert_eq!((s.inserted, s.updated, s.deleted), (0, 1, 0), "{s:?}");
    assert_eq!(
        balances(&env).await,
        rows(&[(1, "1", "Ann"), (2, "2", "bob")])
    );
    // The revert's check compares as the diff does: a case-only edit since
    // the run is a change.
    env.env
        .exec("UPDATE crm.balances SET label = 'ANN' WHERE id = 1")
        .await;
    let e = revert_mirror_last(&env.db, &env.url, &spec, Duration::from_secs(5))
        .await
        .unwrap_err();
    assert!(
        matches!(&e, MirrorRunError::RevertDrift { count: 1, .. }),
        "{e}"
    );
}

/// docs/mirrors.md#an-existing-table: a `nullable` column's empty field is
/// NULL, which a NOT NULL column refuses; refused at the table check, naming
/// the mirror, the column and the fix, before anything is read.
#[tokio::test]
async fn a_nullable_column_over_a_not_null_one_is_refused_at_the_table_check() {
    let env = env().await;
    let spec = spec(&BALANCES.replace(
        r#"{ name = "label",  type = "text" }"#,
        r#"{ name = "label",  type = "text", nullable = true }"#,
    ));
    assert!(spec.columns[2].nullable);
    env.env
        .exec(
            "CREATE SCHEMA crm;
             CREATE TABLE crm.balances (id integer PRIMARY KEY, amount numeric NOT NULL, label text NOT NULL)",
        )
        .await;
    env.env
        .write_file("balances.csv", "id,amount,label\n1,1,\n2,2,bob\n");
    let e = env
        .sync(&spec, MirrorRunOptions::default())
        .await
        .unwrap_err();
    let text = e.to_string();
    assert!(
        matches!(&e, MirrorRunError::Incompatible(i) if i.column == "column label"),
        "{text}"
    );
    assert!(
        text.starts_with(
            "mirror balances: the existing table crm.balances: column label is NOT NULL"
        ),
        "{text}"
    );
    assert!(
        text.contains(r#"fix: ALTER TABLE "crm"."balances" ALTER COLUMN "label" DROP NOT NULL, or set nullable = false"#),
        "{text}"
    );
    assert!(balances(&env).await.is_empty());

    env.env
        .exec("ALTER TABLE crm.balances ALTER COLUMN label DROP NOT NULL")
        .await;
    let s = env.sync(&spec, MirrorRunOptions::default()).await.unwrap();
    assert_eq!(s.inserted, 2);
    let nulls = env
        .env
        .scalar("SELECT count(*) FROM crm.balances WHERE label IS NULL")
        .await;
    assert_eq!(nulls, 1);
}

/// docs/mirrors.md#revert: a mirror whose table does not exist yet has no run
/// to revert (not a raw "relation does not exist"), and its history is empty;
/// one whose table was dropped after a sync cannot be written back.
#[tokio::test]
async fn a_mirror_never_synced_has_nothing_to_revert_and_no_history() {
    let env = env().await;
    let spec = spec(
        &ACCOUNTS
            .replace(r#"'crm."Accounts"'"#, r#""e.never""#)
            .replace("accounts.csv", "never.csv"),
    );
    let revert = || revert_mirror_last(&env.db, &env.url, &spec, Duration::from_secs(5));
    let e = revert().await.unwrap_err();
    assert!(
        matches!(&e, MirrorRunError::NothingToRevert { mirror } if mirror == "accounts"),
        "{e}"
    );
    let key = key_from_args(&spec, &["1".to_owned()]).unwrap();
    let events = mirror_history(&env.db, &spec, &key).await.unwrap();
    assert!(events.is_empty(), "{events:?}");

    env.env.write_file("never.csv", accounts_csv(2, ""));
    let s = env.sync(&spec, MirrorRunOptions::default()).await.unwrap();
    assert_eq!(mirror_history(&env.db, &spec, &key).await.unwrap().len(), 1);
    env.env.exec("DROP TABLE e.never").await;
    let e = revert().await.unwrap_err();
    assert!(
        matches!(&e, MirrorRunError::TableMissing { load_id, .. } if Some(*load_id) == s.load_id),
        "{e}"
    );
    assert!(
        e.to_string().contains("the table e.never does not exist"),
        "{e}"
    );
    assert_eq!(mirror_history(&env.db, &spec, &key).await.unwrap().len(), 1);
}

/// docs/mirrors.md#reading: every reject keeps its line's text as read, as the
/// followers' rejects do (without the line break, line breaks inside quotes
/// kept, cut to 1000 bytes), for `sync_rejects.raw_line`; `check` hands the
/// same text; the reject's own text (`Display`) is unchanged.
#[tokio::test]
async fn rejects_keep_the_text_of_their_line() {
    let env = env().await;
    let mut spec = spec(ACCOUNTS);
    let long = format!("y4,{}", "n".repeat(1500));
    let file = format!(
        "id,name\r\n1,Account 1\r\nx2,Account 2\r\n3,\"Account\n3\",extra\r\n{long}\r\n5,Account 5\r\n"
    );
    let path = env.env.write_file("accounts.csv", &file);
    let expected = vec![
        (3, "x2,Account 2".to_owned()),
        (4, "3,\"Account\n3\",extra".to_owned()),
        (6, long[..1000].to_owned()),
    ];
    let raws = |rejects: &[followers_etl::mirror::run::MirrorReject]| -> Vec<(u64, String)> {
        rejects.iter().map(|r| (r.line, r.raw.clone())).collect()
    };

    let e = env
        .sync(&spec, MirrorRunOptions::default())
        .await
        .unwrap_err();
    match &e {
        MirrorRunError::TooManyRejects { first, rejects, .. } => {
            let all = [vec![(**first).clone()], rejects.clone()].concat();
            assert_eq!(raws(&all), expected);
        }
        other => panic!("{other}"),
    }

    spec.overrides.max_rejects = Some(3);
    let s = env.sync(&spec, MirrorRunOptions::default()).await.unwrap();
    assert_eq!((s.inserted, s.rejected), (2, 3));
    assert_eq!(raws(&s.rejects), expected);
    let shown = s.rejects[0].to_string();
    assert!(
        shown.ends_with("accounts.csv: line 3: column id: id \"x2\" is not a whole number"),
        "{shown}"
    );

    let mut report = MirrorCheck::default();
    let mut checked = Vec::new();
    check_mirror_file(
        &spec,
        &path,
        &followers_etl::config::CsvFormat::default(),
        &mut report,
        |r, bytes| {
            assert_eq!(r.raw, String::from_utf8_lossy(bytes));
            checked.push((r.line, r.raw.clone()));
        },
    )
    .unwrap();
    assert_eq!(checked, expected);
}

/// The state of the write counter's trigger on `crm."Accounts"` (`tgenabled`).
async fn counter_state(env: &Env) -> String {
    sqlx::query_scalar(
        r#"SELECT tgenabled::text FROM pg_trigger
            WHERE tgrelid = 'crm."Accounts"'::regclass AND tgname = 'followers_etl_mirror_writes'"#,
    )
    .fetch_one(&env.env.pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn held_back_content_stays_held_back_after_an_outside_edit_or_verify_every() {
    let env = env().await;
    let spec = spec(&subscribers_toml(r#""crm.subscribers""#));
    let options = MirrorRunOptions::default();
    write(&env, &file_a());
    env.sync(&spec, options).await.unwrap();
    write(&env, &file_b());
    assert!(!env.sync(&spec, options).await.unwrap().skipped());
    revert_mirror_last(&env.db, &env.url, &spec, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(table_rows(&env, &spec).await, expected(&file_a()));

    // An application touches one row after the revert: the write counter
    // moves, but the content in place stays held back.
    env.env
        .exec("UPDATE crm.subscribers SET seats = seats WHERE account_id = 1")
        .await;
    let next = env.sync(&spec, options).await.unwrap();
    assert!(next.skipped() && next.held_back, "{next:?}");
    assert_eq!(
        table_rows(&env, &spec).await,
        expected(&file_a()),
        "the reverted content was applied again"
    );

    // Without a counting trigger, a comparison due after VERIFY_EVERY does not
    // apply it either.
    env.env
        .exec("ALTER TABLE crm.subscribers DISABLE TRIGGER followers_etl_mirror_writes")
        .await;
    let due = MirrorRunOptions {
        verify_every: Duration::ZERO,
        ..options
    };
    let next = env.sync(&spec, due).await.unwrap();
    assert!(next.skipped() && next.held_back, "{next:?}");
    assert_eq!(table_rows(&env, &spec).await, expected(&file_a()));

    // A forced run applies it.
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
    assert!(!forced.skipped() && !forced.held_back, "{forced:?}");
    assert_eq!(table_rows(&env, &spec).await, expected(&file_b()));
}

/// The mirror's table with a child (`child` made after `parent`), synced; then
/// `write` into the child and a sync, which must not trust the counter (its
/// trigger on the parent never sees a statement on the child). Returns the
/// second sync.
async fn sync_after_a_write_into_a_child(
    env: &Env,
    spec: &MirrorSpec,
    parent: &str,
    child: &str,
    write: &str,
) -> MirrorSummary {
    env.env.exec("CREATE SCHEMA crm").await;
    env.env.exec(parent).await;
    env.env.exec(child).await;
    env.env.write_file("accounts.csv", accounts_csv(20, ""));
    let options = MirrorRunOptions {
        verify_every: Duration::ZERO,
        ..MirrorRunOptions::default()
    };
    env.sync(spec, options).await.unwrap();
    env.env.exec(write).await;
    let again = env.sync(spec, options).await.unwrap();
    assert!(!again.skipped(), "the skip trusted the counter: {again:?}");
    assert_eq!(accounts(env).await, numbered(20, ""));
    again
}

#[tokio::test]
async fn a_write_into_a_partition_is_found_by_the_verify_every_comparison() {
    let env = env().await;
    let spec = spec(ACCOUNTS);
    let again = sync_after_a_write_into_a_child(
        &env,
        &spec,
        r#"CREATE TABLE crm."Accounts" (id integer PRIMARY KEY, name text) PARTITION BY RANGE (id)"#,
        r#"CREATE TABLE crm.accounts_all PARTITION OF crm."Accounts" FOR VALUES FROM (MINVALUE) TO (MAXVALUE)"#,
        "DELETE FROM crm.accounts_all WHERE id = 1",
    )
    .await;
    assert_eq!(again.inserted, 1, "{again:?}");
    assert!(
        again
            .sync_reason
            .as_deref()
            .is_some_and(|r| r.contains("partitions or inheritance children")),
        "{again:?}"
    );
    // Until VERIFY_EVERY has passed, an unchanged file is skipped.
    let later = env.sync(&spec, MirrorRunOptions::default()).await.unwrap();
    assert!(later.skipped(), "{later:?}");
}

#[tokio::test]
async fn a_write_into_an_inheritance_child_is_found_by_the_verify_every_comparison() {
    let env = env().await;
    let spec = spec(ACCOUNTS);
    // A row written into the child is a row of the parent's scan.
    let again = sync_after_a_write_into_a_child(
        &env,
        &spec,
        r#"CREATE TABLE crm."Accounts" (id integer PRIMARY KEY, name text)"#,
        r#"CREATE TABLE crm.archived () INHERITS (crm."Accounts")"#,
        "INSERT INTO crm.archived VALUES (99, 'Account 99')",
    )
    .await;
    assert_eq!(again.deleted, 1, "{again:?}");
}

#[tokio::test]
async fn the_write_counter_counts_writes_under_replica_role_and_an_origin_one_is_made_always() {
    let env = env().await;
    let spec = spec(ACCOUNTS);
    let options = MirrorRunOptions::default();
    env.env.write_file("accounts.csv", accounts_csv(20, ""));
    env.sync(&spec, options).await.unwrap();
    assert_eq!(counter_state(&env).await, "A", "installed ALWAYS");

    // A write as logical replication's apply or a restore makes it.
    let replica = r#"BEGIN; SET LOCAL session_replication_role = replica;
        DELETE FROM crm."Accounts" WHERE id = 1; COMMIT"#;
    env.env.exec(replica).await;
    let again = env.sync(&spec, options).await.unwrap();
    assert!(
        !again.skipped(),
        "the replica-role write was not counted: {again:?}"
    );
    assert_eq!(again.inserted, 1, "{again:?}");
    assert_eq!(accounts(&env).await, numbered(20, ""));

    // A trigger enabled ORIGIN only (as earlier versions installed it) is made
    // ALWAYS, and the table compared once.
    env.env
        .exec(r#"ALTER TABLE crm."Accounts" ENABLE TRIGGER followers_etl_mirror_writes"#)
        .await;
    assert_eq!(counter_state(&env).await, "O");
    let again = env.sync(&spec, options).await.unwrap();
    assert!(!again.skipped(), "{again:?}");
    assert_eq!(counter_state(&env).await, "A");
    assert!(env.sync(&spec, options).await.unwrap().skipped());
    env.env.exec(replica).await;
    let again = env.sync(&spec, options).await.unwrap();
    assert_eq!(again.inserted, 1, "{again:?}");
    assert_eq!(accounts(&env).await, numbered(20, ""));
}

/// The application's trigger on `crm."Accounts"`: slow (3 s), changes nothing;
/// then waits until the merge's update is in it.
async fn slow_update_trigger(env: &Env) {
    env.env
        .exec(
            r#"CREATE FUNCTION crm.slow() RETURNS trigger LANGUAGE plpgsql AS $$
                 BEGIN PERFORM pg_sleep(3); RETURN NULL; END $$;
               CREATE TRIGGER slow AFTER UPDATE ON crm."Accounts"
                 FOR EACH STATEMENT EXECUTE FUNCTION crm.slow()"#,
        )
        .await;
}

async fn in_the_slow_update(env: &Env) {
    crate::helpers::eventually(30, "the merge in its slow update", || async {
        let n = env
            .env
            .scalar("SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'PgSleep' AND datname = current_database()")
            .await;
        (n > 0).then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_run_whose_lock_is_taken_over_during_its_writes_does_not_commit() {
    let env = env().await;
    let spec = spec(ACCOUNTS);
    env.env.write_file("accounts.csv", accounts_csv(20, ""));
    env.sync(&spec, MirrorRunOptions::default()).await.unwrap();
    env.env.write_file("accounts.csv", accounts_v2());
    slow_update_trigger(&env).await;
    let mut taker = env.env.pool.acquire().await.unwrap();
    let control = async {
        in_the_slow_update(&env).await;
        // The run's lock session ends mid-merge; another run takes the lock.
        let pid = lock_holder(&env, &spec).await.unwrap();
        sqlx::query("SELECT pg_terminate_backend($1)")
            .bind(pid)
            .execute(&env.env.pool)
            .await
            .unwrap();
        let (k1, k2) = mirror_lock_key(&spec);
        sqlx::query("SELECT pg_advisory_lock($1, $2)")
            .bind(k1)
            .bind(k2)
            .execute(&mut *taker)
            .await
            .unwrap();
    };
    let (result, ()) = tokio::join!(env.sync(&spec, MirrorRunOptions::default()), control);
    assert!(
        matches!(result, Err(MirrorRunError::Lost { .. })),
        "committed after its lock was taken over: {result:?}"
    );
    assert_eq!(accounts(&env).await, numbered(20, ""), "nothing committed");
}

#[tokio::test]
async fn a_run_whose_record_was_marked_interrupted_does_not_commit() {
    let env = env().await;
    let spec = spec(ACCOUNTS);
    env.env.write_file("accounts.csv", accounts_csv(20, ""));
    env.sync(&spec, MirrorRunOptions::default()).await.unwrap();
    env.env.write_file("accounts.csv", accounts_v2());
    slow_update_trigger(&env).await;
    let config = env.env.dir.path().join("accounts.toml");
    std::fs::write(&config, ACCOUNTS).unwrap();
    let mut cmd = env.env.command();
    cmd.args([
        "--config",
        config.to_str().unwrap(),
        "sync",
        "--mirror",
        "accounts",
    ]);
    let sync = tokio::task::spawn_blocking(move || cmd.output().unwrap());
    in_the_slow_update(&env).await;
    // Another agent's recovery marks the run interrupted while it merges.
    env.env
        .exec(
            "UPDATE etl_info_schema.sync_runs SET outcome = 'failed', finished_at = now(),
                    error = 'interrupted: the agent stopped during this run; nothing of it was merged'
              WHERE mirror = 'accounts' AND outcome = 'running'",
        )
        .await;
    let out = sync.await.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("lost its lock"), "{stderr}");
    assert_eq!(accounts(&env).await, numbered(20, ""), "nothing committed");
    let (outcome, error): (String, Option<String>) = sqlx::query_as(
        "SELECT outcome, error FROM etl_info_schema.sync_runs WHERE mirror = 'accounts'",
    )
    .fetch_one(&env.env.pool)
    .await
    .unwrap();
    assert_eq!(outcome, "failed");
    assert!(error.unwrap().starts_with("interrupted"));
}

/// The mirror's table is itself an inheritance child (or a partition): a
/// statement on its parent writes its rows without firing its own trigger, so
/// its counter does not count, and an unchanged file is skipped only
/// unverified, until VERIFY_EVERY.
#[tokio::test]
async fn a_table_that_is_a_child_is_compared_again_after_verify_every() {
    let env = env().await;
    let spec = spec(ACCOUNTS);
    env.env.exec("CREATE SCHEMA crm").await;
    env.env
        .exec("CREATE TABLE crm.parent (id integer, name text)")
        .await;
    env.env
        .exec(r#"CREATE TABLE crm."Accounts" (id integer PRIMARY KEY, name text) INHERITS (crm.parent)"#)
        .await;
    env.env.write_file("accounts.csv", accounts_csv(20, ""));
    env.sync(&spec, MirrorRunOptions::default()).await.unwrap();
    env.env
        .exec("UPDATE crm.parent SET name = 'EDIT' WHERE id = 2")
        .await;
    let trusted = env.sync(&spec, MirrorRunOptions::default()).await.unwrap();
    assert!(trusted.skipped() && trusted.unverified, "{trusted:?}");
    let options = MirrorRunOptions {
        verify_every: Duration::ZERO,
        ..MirrorRunOptions::default()
    };
    let compared = env.sync(&spec, options).await.unwrap();
    assert_eq!(compared.updated, 1, "{compared:?}");
    assert_eq!(accounts(&env).await, numbered(20, ""));
}

/// A key column of a case-insensitive collation is refused at the table
/// check, as a citext one is: its unique index would take `Ann` and `ann`
/// for one key.
#[tokio::test]
async fn a_key_of_a_nondeterministic_collation_is_refused_at_the_table_check() {
    let env = env().await;
    let spec = spec(ACCOUNTS_BY_NAME);
    env.env
        .exec("CREATE COLLATION ci (provider = icu, locale = 'und-u-ks-level2', deterministic = false)")
        .await;
    env.env.exec("CREATE SCHEMA crm").await;
    env.env
        .exec(r#"CREATE TABLE crm."Names" (name text COLLATE ci PRIMARY KEY, note text)"#)
        .await;
    let e = env
        .sync(&spec, MirrorRunOptions::default())
        .await
        .unwrap_err();
    assert!(
        matches!(e, MirrorRunError::Incompatible(_)) && e.to_string().contains("nondeterministic"),
        "{e}"
    );
}

const ACCOUNTS_BY_NAME: &str = r#"
[[mirror]]
name = "names"
file = "names.csv"
table = 'crm."Names"'
key = ["name"]
columns = [{ name = "name", type = "text" }, { name = "note", type = "text", nullable = true }]
"#;

/// Version 3, from version 2: 6 to 10 renamed, 21 deleted, 22 new.
fn accounts_v3() -> String {
    let mut out = String::from("id,name\n");
    for i in 1..=19 {
        let suffix = match i {
            1..=5 => " v2",
            6..=10 => " v3",
            _ => "",
        };
        out += &format!("{i},Account {i}{suffix}\n");
    }
    out + "22,Account 22\n"
}

/// docs/mirrors.md#revert, as docs/operations.md#revert: a revert back to a
/// run undoes every run since, newest first, and refuses (changing nothing)
/// when a row any of them changed was changed since, when one of them has no
/// journal, or when it would delete more than the mirror's own
/// `max_delete_ratio` (not `MAX_DELETE_RATIO`) unless approved.
#[tokio::test]
async fn a_revert_back_to_a_run_undoes_every_run_since_or_refuses_as_the_followers_revert() {
    let env = env().await;
    let spec = spec(&format!("{ACCOUNTS}max_delete_ratio = 0.2\n"));
    let options = MirrorRunOptions {
        journal_keep_runs: 2,
        ..MirrorRunOptions::default()
    };
    env.env.write_file("accounts.csv", accounts_csv(20, ""));
    let a = env.sync(&spec, options).await.unwrap().load_id.unwrap();
    env.env.write_file("accounts.csv", accounts_v2());
    let b = env.sync(&spec, options).await.unwrap().load_id.unwrap();
    env.env.write_file("accounts.csv", accounts_v3());
    let c = env.sync(&spec, options).await.unwrap().load_id.unwrap();
    let v3 = accounts(&env).await;
    let revert = |target, max_delete_ratio, allow_mass_delete| {
        revert_mirror(
            &env.db,
            &env.url,
            &spec,
            MirrorRevertOptions {
                target,
                max_delete_ratio,
                allow_mass_delete,
                ..MirrorRevertOptions::last(Duration::from_secs(5))
            },
        )
    };
    // Row 3, renamed by B only (not by the newest run), edited by hand.
    env.env
        .exec(r#"UPDATE crm."Accounts" SET name = 'by hand' WHERE id = 3"#)
        .await;
    let e = revert(RevertTarget::Run(b), 1.0, false).await.unwrap_err();
    assert!(
        matches!(&e, MirrorRunError::RevertDrift { count: 1, load_id, .. } if *load_id == c),
        "{e}"
    );
    assert!(
        e.to_string()
            .contains(r#"{"id": 3}: changed by the run, changed again now"#),
        "{e}"
    );
    env.env
        .exec(r#"UPDATE crm."Accounts" SET name = 'Account 3 v2' WHERE id = 3"#)
        .await;
    // A's journal is gone (journal_keep_runs = 2): back to A is not exact.
    let e = revert(RevertTarget::Run(a), 1.0, true).await.unwrap_err();
    assert!(
        matches!(&e, MirrorRunError::NoJournal { load_id, .. } if *load_id == a),
        "{e}"
    );
    assert_eq!(accounts(&env).await, v3, "nothing changed");
    // Back to B: C and B undone, newest first; 20 back, 22 gone, 1 to 10 renamed back.
    let done = revert(RevertTarget::Run(b), 1.0, false).await.unwrap();
    let undone: Vec<uuid::Uuid> = done.undone.iter().map(|r| r.load_id).collect();
    assert_eq!(undone, [c, b]);
    assert_eq!((done.inserted, done.updated, done.deleted), (1, 10, 1));
    assert_eq!(accounts(&env).await, numbered(20, ""));
    // 10 new rows of 30: a revert deletes a third, above the mirror's own
    // max_delete_ratio = 0.2 though MAX_DELETE_RATIO allows it.
    env.env.write_file("accounts.csv", accounts_csv(30, ""));
    let d = env.sync(&spec, options).await.unwrap().load_id.unwrap();
    let e = revert(RevertTarget::Last, 1.0, false).await.unwrap_err();
    assert!(
        matches!(
            e,
            MirrorRunError::RevertMassDelete {
                deleted: 10,
                current: 30,
                ..
            }
        ),
        "{e}"
    );
    assert!(
        e.to_string().contains("more than max_delete_ratio=0.2"),
        "{e}"
    );
    assert_eq!(accounts(&env).await, numbered(30, ""), "nothing changed");
    let done = revert(RevertTarget::Last, 1.0, true).await.unwrap();
    assert_eq!((done.load_id, done.deleted), (d, 10));
    assert_eq!(accounts(&env).await, numbered(20, ""));
    // Every revert is a run of the mirror in `sync_runs`, as the followers'
    // are: each refusal with its reason, each revert with its counts.
    let records: Vec<(String, Option<String>, i64, i64, i64)> = sqlx::query_as(
        "SELECT outcome, error, inserted, updated, deleted FROM etl_info_schema.sync_runs
          WHERE mirror = 'accounts' AND trigger = 'revert' ORDER BY started_at, load_id",
    )
    .fetch_all(&env.env.pool)
    .await
    .unwrap();
    let outcomes: Vec<&str> = records.iter().map(|r| r.0.as_str()).collect();
    assert_eq!(
        outcomes,
        ["refused", "refused", "reverted", "refused", "reverted"]
    );
    assert!(records[0]
        .1
        .as_deref()
        .unwrap()
        .contains("changed outside the agent since run"));
    assert!(records[1]
        .1
        .as_deref()
        .unwrap()
        .contains(&format!("the run {a} has no journal")));
    assert_eq!((records[2].2, records[2].3, records[2].4), (1, 10, 1));
    assert!(records[3]
        .1
        .as_deref()
        .unwrap()
        .contains("max_delete_ratio=0.2"));
    // Busy: another session holds the mirror's run lock; refused, recorded.
    let mut holder = env.env.pool.acquire().await.unwrap();
    let (k1, k2) = mirror_lock_key(&spec);
    sqlx::query("SELECT pg_advisory_lock($1, $2)")
        .bind(k1)
        .bind(k2)
        .execute(&mut *holder)
        .await
        .unwrap();
    let options = MirrorRevertOptions::last(Duration::from_secs(5));
    let e = revert_mirror(&env.db, &env.url, &spec, options)
        .await
        .unwrap_err();
    assert!(matches!(e, MirrorRunError::Busy { .. }), "{e}");
    let (outcome, error): (String, Option<String>) =
        sqlx::query_as("SELECT outcome, error FROM etl_info_schema.sync_runs WHERE load_id = $1")
            .bind(options.load_id.uuid())
            .fetch_one(&env.env.pool)
            .await
            .unwrap();
    assert_eq!(outcome, "refused");
    assert!(error
        .unwrap()
        .contains("another run of this mirror holds its lock"));
}

/// docs/operations.md#revert: per row, the state before the oldest run undone
/// comes back, whatever the runs did in between: a row one run deleted and a
/// later one inserted again is written back (not inserted twice), a row one
/// inserted and a later one deleted stays absent.
#[tokio::test]
async fn a_row_deleted_then_inserted_again_is_put_back_by_a_revert_of_both_runs() {
    let env = env().await;
    let spec = spec(ACCOUNTS);
    let options = MirrorRunOptions::default();
    env.env.write_file("accounts.csv", accounts_csv(10, ""));
    env.sync(&spec, options).await.unwrap();
    // B: 2 deleted, 11 new.
    env.env.write_file(
        "accounts.csv",
        accounts_csv(10, "").replace("2,Account 2\n", "") + "11,Account 11\n",
    );
    let b = env.sync(&spec, options).await.unwrap().load_id.unwrap();
    // C: 2 back under another name, 11 deleted.
    env.env.write_file(
        "accounts.csv",
        accounts_csv(10, "").replace("2,Account 2\n", "2,Account 2 again\n"),
    );
    let c = env.sync(&spec, options).await.unwrap().load_id.unwrap();
    let done = revert_mirror(
        &env.db,
        &env.url,
        &spec,
        MirrorRevertOptions {
            target: RevertTarget::Run(b),
            ..MirrorRevertOptions::last(Duration::from_secs(5))
        },
    )
    .await
    .unwrap();
    let undone: Vec<uuid::Uuid> = done.undone.iter().map(|r| r.load_id).collect();
    assert_eq!(undone, [c, b]);
    assert_eq!((done.inserted, done.updated, done.deleted), (0, 1, 0));
    assert_eq!(accounts(&env).await, numbered(10, ""));
}
