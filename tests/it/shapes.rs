//! The table shapes real databases have (docs/guarantees.md#table-shapes), for
//! the built-in mirror and for a configured `[[mirror]]` alike (the
//! `subscribers` of docs/mirrors.md into `crm."Sub Scribers"`: a composite key,
//! every column type, nullable columns): every sync that matters (first sync,
//! change, refusal, revert, crash recovery) against the old service's DDL
//! (built-in only), a published table with `REPLICA IDENTITY USING INDEX`, a
//! view that depends on the key, a hash-partitioned table, a table that is
//! itself a partition, an inheritance child, an extra index and a user trigger,
//! an application's own nullable column, a generated column, a foreign key
//! from another table, and (configured only) an existing table of the
//! application's own, of wider types and another column order. After each step the table equals the file, rows the step
//! did not change are untouched (their row version, `xmin`, is the same), and
//! the shape's own invariant holds; a revert gives back every row exactly,
//! `modified_at` included. Plus the built-in first sync's fast path: taken only
//! where it loses nothing, never with `FIRST_SYNC_KEY_REBUILD=false`, and given
//! up for the plain insert when the table is being read.

use crate::concurrency::migrate;
use crate::helpers::fixtures::{subscribers_toml, A, B};
use crate::helpers::*;
use followers_etl::mirror::{from_toml_str, MirrorSpec};
use followers_etl::storage::mirror::MirrorSql;
use sqlx::{Connection, Row};
use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::Duration;

/// The mirror whose table has the shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Target {
    /// `CSV_FILE` into `public.followers`.
    BuiltIn,
    /// `[[mirror]] subscribers` (`subscribers.csv`) into `crm."Sub Scribers"`.
    Configured,
}

/// The configured mirror's table, as SQL.
pub(crate) const SUBSCRIBERS_TABLE: &str = r#"crm."Sub Scribers""#;

pub(crate) fn subscribers_spec() -> MirrorSpec {
    from_toml_str(&subscribers_toml(&format!("'{SUBSCRIBERS_TABLE}'")))
        .unwrap()
        .remove(0)
}

/// A follower's account in the configured mirror (its key is the account and
/// the email): 1, 2 or 3, from the email.
fn account(email: &str) -> u32 {
    email.bytes().map(u32::from).sum::<u32>() % 3 + 1
}

/// A follower as the subscribers file spells it, in the configured order:
/// each field as a file may write it, not as it is loaded (the email in upper
/// case, `yes`, `+2`, a `T` in a timestamp, an offset).
fn subscriber_fields((email, name): &Follower) -> Vec<String> {
    let a = account(email);
    [
        a.to_string(),
        email.to_uppercase(),
        name.clone(),
        if a == 2 { "" } else { "pro" }.into(),
        format!("2024-01-0{a}"),
        if a == 1 { "yes" } else { "no" }.into(),
        if a == 3 { "" } else { "1.50" }.into(),
        format!("+{a}"),
        if a == 2 { "" } else { "2024-03-01T12:00:00" }.into(),
        "2024-03-01 12:00:00+01:00".into(),
        format!("00000000-0000-0000-0000-{a:012}"),
    ]
    .into()
}

/// What the table holds for a follower, each column as PostgreSQL's text of
/// it (`timestamptz` in UTC): `subscriber_fields` as loaded.
fn subscriber_cells((email, name): &Follower) -> Vec<Option<String>> {
    let a = account(email);
    let some = |s: &str| Some(s.to_owned());
    vec![
        Some(a.to_string()),
        some(email),
        some(name),
        (a != 2).then(|| "pro".into()),
        Some(format!("2024-01-0{a}")),
        some(if a == 1 { "true" } else { "false" }),
        (a != 3).then(|| "1.50".into()),
        Some(a.to_string()),
        (a != 2).then(|| "2024-03-01 12:00:00".into()),
        some("2024-03-01 11:00:00"),
        Some(format!("00000000-0000-0000-0000-{a:012}")),
    ]
}

fn quoted(field: &str) -> String {
    if field.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", field.replace('"', "\"\""))
    } else {
        field.to_owned()
    }
}

fn subscribers_csv(rows: &[Follower]) -> String {
    let spec = subscribers_spec();
    let header: Vec<&str> = spec.columns.iter().map(|c| c.source.as_str()).collect();
    let mut out = header.join(",") + "\n";
    for row in rows {
        let fields: Vec<String> = subscriber_fields(row).iter().map(|f| quoted(f)).collect();
        out += &fields.join(",");
        out += "\n";
    }
    out
}

impl Target {
    /// The table, as SQL.
    pub(crate) fn table(self) -> &'static str {
        match self {
            Self::BuiltIn => "followers",
            Self::Configured => SUBSCRIBERS_TABLE,
        }
    }

    /// The key's columns, as a column list.
    fn key(self) -> &'static str {
        match self {
            Self::BuiltIn => "email",
            Self::Configured => "account_id, email",
        }
    }

    /// The key's columns with their types (for a table referencing it).
    fn key_ddl(self) -> &'static str {
        match self {
            Self::BuiltIn => "email varchar(255)",
            Self::Configured => "account_id bigint, email varchar(255)",
        }
    }

    /// The primary key's index, unqualified.
    fn pkey(self) -> &'static str {
        match self {
            Self::BuiltIn => "followers_pkey",
            Self::Configured => r#""Sub Scribers_pkey""#,
        }
    }

    /// The table's columns and key as the agent creates them (for a table
    /// created again in another shape).
    fn columns_ddl(self) -> String {
        match self {
            Self::BuiltIn => "email varchar(255) PRIMARY KEY, full_name varchar(255) NOT NULL, \
                              modified_at timestamp NOT NULL"
                .into(),
            Self::Configured => {
                let create = MirrorSql::new(&subscribers_spec()).create_table();
                let (open, close) = (create.find('(').unwrap(), create.rfind(')').unwrap());
                create[open + 1..close].to_owned()
            }
        }
    }

    /// The key of dee@example.com, as SQL values.
    fn dee(self) -> String {
        match self {
            Self::BuiltIn => "'dee@example.com'".into(),
            Self::Configured => format!("{}, 'dee@example.com'", account("dee@example.com")),
        }
    }

    /// `sql` with `{table}`, `{key}`, `{key_ddl}`, `{pkey}`, `{columns}` and
    /// `{dee}` filled in.
    pub(crate) fn fill(self, sql: &str) -> String {
        sql.replace("{table}", self.table())
            .replace("{key_ddl}", self.key_ddl())
            .replace("{key}", self.key())
            .replace("{pkey}", self.pkey())
            .replace("{columns}", &self.columns_ddl())
            .replace("{dee}", &self.dee())
    }
}

/// One mirror's table in a test database, and its runs: the built-in mirror
/// in this process (`TestEnv::in_process`), the configured one through the
/// binary with its config file.
pub(crate) struct Case {
    pub target: Target,
    pub env: TestEnv,
    config: String,
}

impl Case {
    pub(crate) async fn new(target: Target) -> Self {
        Self::on(target, TestEnv::in_process().await)
    }

    /// On `env` (e.g. a private server's).
    pub(crate) fn on(target: Target, env: TestEnv) -> Self {
        let config = env.dir.path().join("mirrors.toml");
        std::fs::write(&config, subscribers_toml(&format!("'{SUBSCRIBERS_TABLE}'"))).unwrap();
        Self {
            target,
            env,
            config: config.display().to_string(),
        }
    }

    /// The migrations, and the configured mirror's table as its first run
    /// would create it.
    pub(crate) async fn migrate(&self) {
        migrate(&self.env);
        if self.target == Target::Configured {
            let spec = subscribers_spec();
            let sql = MirrorSql::new(&spec);
            self.env
                .exec(&format!("{}; {}", sql.create_schema(), sql.create_table()))
                .await;
        }
    }

    /// `command` (`sync --json`, …) of this case's mirror.
    fn args<'a>(&'a self, command: &[&'a str]) -> Vec<&'a str> {
        match self.target {
            Target::BuiltIn => command.to_vec(),
            Target::Configured => {
                let mut all = vec!["--config", self.config.as_str()];
                all.extend_from_slice(command);
                all.extend_from_slice(&["--mirror", "subscribers"]);
                all
            }
        }
    }

    pub(crate) fn write(&self, rows: &[Follower]) {
        match self.target {
            Target::BuiltIn => self.env.write_csv(csv_owned(rows)),
            Target::Configured => self
                .env
                .write_file("subscribers.csv", subscribers_csv(rows)),
        };
    }

    pub(crate) fn sync(&self, vars: &[(&str, &str)]) -> Run {
        match self.target {
            Target::BuiltIn => self.env.sync_with(&[], vars),
            Target::Configured => self.env.run(&self.args(&["sync", "--json"]), vars),
        }
    }

    pub(crate) fn synced(&self) -> Run {
        let run = self.sync(&[]);
        run.assert_ended(0, "synced");
        run
    }

    pub(crate) fn revert(&self) -> Run {
        self.env
            .run(&self.args(&["revert", "--last", "--json"]), &[])
    }

    /// The binary, set to `sync --json` this case's mirror.
    pub(crate) fn sync_command(&self) -> Command {
        let mut cmd = self.env.command();
        cmd.args(self.args(&["sync", "--json"]));
        cmd
    }

    /// The configured columns, as `rows` selects them.
    fn cells(&self) -> Vec<String> {
        match self.target {
            Target::BuiltIn => vec!["email::text".into(), "full_name::text".into()],
            Target::Configured => subscribers_spec()
                .columns
                .iter()
                .map(|c| match c.ty {
                    followers_etl::mirror::ColumnType::Timestamptz => {
                        format!("({} AT TIME ZONE 'UTC')::text", c.name.sql())
                    }
                    _ => format!("{}::text", c.name.sql()),
                })
                .collect(),
        }
    }

    async fn select(&self, list: &[String]) -> Vec<Vec<Option<String>>> {
        let sql = format!("SELECT {} FROM {}", list.join(", "), self.target.table());
        let mut rows: Vec<Vec<Option<String>>> = sqlx::query(&sql)
            .fetch_all(&self.env.pool)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
            .iter()
            .map(|r| (0..list.len()).map(|i| r.get(i)).collect())
            .collect();
        rows.sort();
        rows
    }

    /// The table's rows, every configured column as text, sorted.
    pub(crate) async fn rows(&self) -> Vec<Vec<Option<String>>> {
        self.select(&self.cells()).await
    }

    /// What `rows` is when the table equals a file of `rows`.
    pub(crate) fn expected(&self, rows: &[Follower]) -> Vec<Vec<Option<String>>> {
        let mut out: Vec<Vec<Option<String>>> = rows
            .iter()
            .map(|row| match self.target {
                Target::BuiltIn => vec![Some(row.0.clone()), Some(row.1.clone())],
                Target::Configured => subscriber_cells(row),
            })
            .collect();
        out.sort();
        out
    }

    /// `rows` with each row's `modified_at`.
    pub(crate) async fn versions(&self) -> Vec<Vec<Option<String>>> {
        let mut list = self.cells();
        list.push("modified_at::text".into());
        self.select(&list).await
    }

    /// Each row's version (`xmin`, new whenever a row is written), by email.
    async fn xmins(&self) -> BTreeMap<String, String> {
        sqlx::query(&format!(
            "SELECT email::text, xmin::text FROM {}",
            self.target.table()
        ))
        .fetch_all(&self.env.pool)
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
    }

    /// The staging table's rows; `None`: it does not exist (a configured
    /// mirror's is dropped at the end of every run, the built-in one's stays).
    pub(crate) async fn staging(&self) -> Option<i64> {
        let table = match self.target {
            Target::BuiltIn => "public.staging_followers".to_owned(),
            Target::Configured => MirrorSql::new(&subscribers_spec()).staging_table(),
        };
        let exists: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
            .bind(&table)
            .fetch_one(&self.env.pool)
            .await
            .unwrap();
        if !exists {
            return None;
        }
        Some(
            self.env
                .scalar(&format!("SELECT count(*) FROM {table}"))
                .await,
        )
    }

    /// Nothing left staged: the built-in mirror's staging table empty, the
    /// configured one's dropped.
    pub(crate) async fn assert_staging_gone(&self, when: &str) {
        let want = match self.target {
            Target::BuiltIn => Some(0),
            Target::Configured => None,
        };
        assert_eq!(self.staging().await, want, "{when}: staging");
    }

    /// Waits (30 s at most) until no session holds an advisory lock in the
    /// test's database: a run's lock is released (also by a killed run, once
    /// the server notices).
    pub(crate) async fn wait_for_locks_released(&self) {
        eventually(30, "the run lock released", || async {
            (self
                .env
                .scalar(
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'
                        AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
                )
                .await
                == 0)
                .then_some(())
        })
        .await;
    }

    /// The mirror's run records left `running`.
    pub(crate) async fn running_records(&self) -> i64 {
        self.env
            .scalar(&format!(
                "SELECT count(*) FROM etl_info_schema.sync_runs WHERE outcome = 'running' AND mirror = '{}'",
                match self.target {
                    Target::BuiltIn => "followers",
                    Target::Configured => "subscribers",
                }
            ))
            .await
    }

    /// The mirror's run records with `outcome`.
    pub(crate) async fn records(&self, outcome: &str) -> i64 {
        self.env
            .scalar(&format!(
                "SELECT count(*) FROM etl_info_schema.sync_runs WHERE outcome = '{outcome}' AND mirror = '{}'",
                match self.target {
                    Target::BuiltIn => "followers",
                    Target::Configured => "subscribers",
                }
            ))
            .await
    }
}

struct Shape {
    /// Run before the agent's migrations (the old service's database).
    before_migrate: &'static str,
    /// Run after them (the agent's table, reshaped). Every SQL of a shape is
    /// filled in by `Target::fill`.
    after_migrate: &'static str,
    /// Run after the first sync (the application's own rows elsewhere).
    after_first_sync: &'static str,
    /// What must still hold after every run, as SQL returning true.
    invariant: &'static str,
}

async fn holds(case: &Case, shape: &Shape, when: &str) {
    let sql = case.target.fill(shape.invariant);
    let ok: bool = sqlx::query_scalar(&sql)
        .fetch_one(&case.env.pool)
        .await
        .unwrap_or_else(|e| panic!("{when}: {sql}: {e}"));
    assert!(ok, "{when}: {sql}");
}

/// The primary key's index (its oid: a rebuilt key gets a new one), and
/// whether it is valid.
async fn key_index(env: &TestEnv, table: &str) -> (i64, bool) {
    let row = sqlx::query(
        "SELECT c.conindid::bigint, i.indisvalid FROM pg_constraint c JOIN pg_index i ON i.indexrelid = c.conindid
          WHERE c.conrelid = $1::regclass AND c.contype = 'p'",
    )
    .bind(table)
    .fetch_one(&env.pool)
    .await
    .unwrap();
    (row.get(0), row.get(1))
}

/// SIGKILLs a sync of `rows` at a moment after it started staging; the table
/// then holds `old` or `rows`, and the next run recovers and mirrors `rows`.
async fn crash_and_recover(case: &Case, old: &[Follower], rows: &[Follower], shape: &Shape) {
    case.write(rows);
    let mut cmd = case.sync_command();
    cmd.env("MAX_DELETE_RATIO", "1.0")
        .env("BATCH_SIZE", "500")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut child = cmd.spawn().unwrap();
    let nanos: u64 = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos()
        .into();
    for _ in 0..3000 {
        // The built-in mirror's rows arrive in batches; a configured
        // mirror's staging table is made just before its one COPY.
        let staging = case.staging().await;
        let started = match case.target {
            Target::BuiltIn => staging > Some(0),
            Target::Configured => staging.is_some(),
        };
        if started || child.try_wait().unwrap().is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(nanos % 150)).await;
    let _ = child.kill();
    let _ = child.wait();
    let now = case.rows().await;
    assert!(
        now == case.expected(old) || now == case.expected(rows),
        "after the kill: the old or the new file"
    );
    holds(case, shape, "after the kill").await;
    case.wait_for_locks_released().await;
    let next = case.sync(&[("MAX_DELETE_RATIO", "1.0")]);
    assert!(
        matches!(next.outcome().as_str(), "synced" | "skipped") && next.code == 0,
        "{next:?}"
    );
    case.assert_staging_gone("after the recovery").await;
    assert_eq!(case.running_records().await, 0);
    assert_eq!(case.rows().await, case.expected(rows));
}

async fn matrix(target: Target, shape: Shape) {
    let case = Case::new(target).await;
    let env = &case.env;
    if !shape.before_migrate.is_empty() {
        env.exec(&target.fill(shape.before_migrate)).await;
    }
    case.migrate().await;
    if !shape.after_migrate.is_empty() {
        env.exec(&target.fill(shape.after_migrate)).await;
    }
    // First sync.
    case.write(&pairs(A));
    let first = case.synced();
    assert_eq!(first.n("inserted"), 4, "{first:?}");
    assert_eq!(case.rows().await, case.expected(&pairs(A)));
    assert!(key_index(env, target.table()).await.1, "the key is valid");
    case.assert_staging_gone("after the first sync").await;
    if !shape.after_first_sync.is_empty() {
        env.exec(&target.fill(shape.after_first_sync)).await;
    }
    holds(&case, &shape, "after the first sync").await;
    let a = case.versions().await;
    let written_a = case.xmins().await;
    // A change: ann renamed, bob deleted, eve inserted; cy and dee untouched.
    std::thread::sleep(Duration::from_millis(5));
    case.write(&pairs(B));
    let second = case.synced();
    assert_eq!(
        (
            second.n("inserted"),
            second.n("updated"),
            second.n("deleted")
        ),
        (1, 1, 1),
        "{second:?}"
    );
    assert_eq!(case.rows().await, case.expected(&pairs(B)));
    let untouched = |written: &BTreeMap<String, String>, now: &BTreeMap<String, String>| {
        for email in ["cy@example.com", "dee@example.com"] {
            assert_eq!(written.get(email), now.get(email), "{email} was rewritten");
        }
    };
    let written_b = case.xmins().await;
    untouched(&written_a, &written_b);
    holds(&case, &shape, "after a change").await;
    case.assert_staging_gone("after a change").await;
    // A refusal: 3 of 4 deleted (dee, whom a subscription may reference, kept).
    case.write(&pairs(&B[2..3]));
    case.sync(&[]).assert_ended(1, "refused");
    assert_eq!(case.rows().await, case.expected(&pairs(B)));
    assert_eq!(case.xmins().await, written_b, "the refusal wrote nothing");
    case.assert_staging_gone("after a refusal").await;
    // A revert.
    let revert = case.revert();
    revert.assert_ended(0, "reverted");
    assert_eq!(case.versions().await, a, "exactly A, modified_at included");
    untouched(&written_a, &case.xmins().await);
    holds(&case, &shape, "after a revert").await;
    // A crash, and the recovery.
    let mut big = pairs(A);
    big.extend(many(3000));
    crash_and_recover(&case, &pairs(A), &big, &shape).await;
    holds(&case, &shape, "after the recovery").await;
}

/// A test per mirror (`built_in`, `configured`) of each shape, in a module
/// named after it.
macro_rules! shapes {
    ($($name:ident: [$($target:ident),+] => $shape:expr;)+) => {$(
        mod $name {
            use super::*;
            $(
                #[tokio::test]
                async fn $target() {
                    let target = match stringify!($target) {
                        "built_in" => Target::BuiltIn,
                        _ => Target::Configured,
                    };
                    matrix(target, $shape).await;
                }
            )+
        }
    )+};
}

shapes! {
    shape_old_service_ddl: [built_in] => Shape {
        before_migrate: crate::takeover::OLD_DDL,
        after_migrate: "",
        after_first_sync: "",
        invariant: "SELECT count(*) = 1 FROM pg_constraint WHERE conrelid = 'followers'::regclass AND contype = 'p'",
    };
    // A publication needs no logical wal_level to be created (or to make an
    // UPDATE without replica identity fail).
    shape_published_with_replica_identity_using_index: [built_in, configured] => Shape {
        before_migrate: "",
        after_migrate: "CREATE PUBLICATION followers_cdc FOR TABLE {table};
                        ALTER TABLE {table} REPLICA IDENTITY USING INDEX {pkey};",
        after_first_sync: "",
        invariant: "SELECT relreplident = 'i' AND EXISTS (SELECT 1 FROM pg_index WHERE indrelid = '{table}'::regclass AND indisreplident)
                      FROM pg_class WHERE oid = '{table}'::regclass",
    };
    shape_a_view_depending_on_the_key: [built_in, configured] => Shape {
        before_migrate: "",
        after_migrate: "CREATE VIEW follower_names AS SELECT {key}, full_name FROM {table} GROUP BY {key};",
        after_first_sync: "",
        invariant: "SELECT (SELECT count(*) FROM follower_names) = (SELECT count(*) FROM {table})",
    };
    shape_hash_partitioned: [built_in, configured] => Shape {
        before_migrate: "",
        after_migrate: "DROP TABLE {table};
            CREATE TABLE {table} ({columns}) PARTITION BY HASH (email);
            CREATE TABLE shape_p0 PARTITION OF {table} FOR VALUES WITH (MODULUS 4, REMAINDER 0);
            CREATE TABLE shape_p1 PARTITION OF {table} FOR VALUES WITH (MODULUS 4, REMAINDER 1);
            CREATE TABLE shape_p2 PARTITION OF {table} FOR VALUES WITH (MODULUS 4, REMAINDER 2);
            CREATE TABLE shape_p3 PARTITION OF {table} FOR VALUES WITH (MODULUS 4, REMAINDER 3);",
        after_first_sync: "",
        invariant: "SELECT relkind = 'p' AND (SELECT count(*) FROM pg_inherits WHERE inhparent = '{table}'::regclass) = 4
                      FROM pg_class WHERE oid = '{table}'::regclass",
    };
    shape_a_partition_of_another_table: [built_in, configured] => Shape {
        before_migrate: "",
        after_migrate: "DROP TABLE {table};
            CREATE TABLE all_followers ({columns}) PARTITION BY HASH (email);
            CREATE TABLE {table} PARTITION OF all_followers FOR VALUES WITH (MODULUS 1, REMAINDER 0);",
        after_first_sync: "",
        invariant: "SELECT relispartition AND (SELECT count(*) FROM all_followers) = (SELECT count(*) FROM {table})
                      FROM pg_class WHERE oid = '{table}'::regclass",
    };
    shape_an_inheritance_child: [built_in, configured] => Shape {
        before_migrate: "",
        after_migrate: "CREATE TABLE people (email varchar(255));
            ALTER TABLE {table} INHERIT people;",
        after_first_sync: "",
        invariant: "SELECT EXISTS (SELECT 1 FROM pg_inherits WHERE inhrelid = '{table}'::regclass)
                       AND (SELECT count(*) FROM people) = (SELECT count(*) FROM {table})",
    };
    shape_an_extra_index_and_a_user_trigger: [built_in, configured] => Shape {
        before_migrate: "",
        after_migrate: "CREATE INDEX followers_by_name ON {table} (full_name);
            CREATE TABLE follower_audit (op text NOT NULL, email text NOT NULL);
            CREATE FUNCTION follower_audit() RETURNS trigger LANGUAGE plpgsql AS $$
              BEGIN
                INSERT INTO follower_audit VALUES (TG_OP, CASE WHEN TG_OP = 'DELETE' THEN OLD.email ELSE NEW.email END);
                RETURN CASE WHEN TG_OP = 'DELETE' THEN OLD ELSE NEW END;
              END $$;
            CREATE TRIGGER follower_audit AFTER INSERT OR UPDATE OR DELETE ON {table}
              FOR EACH ROW EXECUTE FUNCTION follower_audit();",
        after_first_sync: "",
        // Every insert was seen by the trigger, and the index is there and valid.
        invariant: "SELECT (SELECT count(*) FROM follower_audit WHERE op = 'INSERT') >= (SELECT count(*) FROM {table})
                       AND EXISTS (SELECT 1 FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
                                    WHERE c.relname = 'followers_by_name' AND i.indisvalid)",
    };
    shape_an_application_column: [built_in, configured] => Shape {
        before_migrate: "",
        after_migrate: "ALTER TABLE {table} ADD COLUMN notes text;",
        // ann is renamed by the change, cy never changes.
        after_first_sync: "UPDATE {table} SET notes = 'vip' WHERE email IN ('ann@example.com', 'cy@example.com');",
        // The application's values survive every run, the update of their row included.
        invariant: "SELECT count(*) = 2 FROM {table} WHERE notes = 'vip' AND email IN ('ann@example.com', 'cy@example.com')",
    };
    shape_a_generated_column: [built_in, configured] => Shape {
        before_migrate: "",
        after_migrate: "ALTER TABLE {table} ADD COLUMN name_length integer GENERATED ALWAYS AS (length(full_name)) STORED;",
        after_first_sync: "",
        invariant: "SELECT count(*) > 0 AND bool_and(name_length = length(full_name)) FROM {table}",
    };
    // A table the agent did not create (docs/mirrors.md#an-existing-table): the
    // columns in another order and of wider types, the key a unique index in
    // another order, the primary key an identity of the application's, and a
    // column of its own with a default.
    shape_an_existing_table_of_its_own: [configured] => Shape {
        before_migrate: "",
        after_migrate: "DROP TABLE {table};
            CREATE TABLE {table} (
              id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, token uuid NOT NULL,
              note text NOT NULL DEFAULT 'new', seats bigint NOT NULL, full_name varchar(1000),
              email varchar(320) NOT NULL, account_id bigint NOT NULL, plan text,
              signed_up date NOT NULL, opted_in boolean, balance numeric, last_seen timestamp,
              confirmed timestamptz, modified_at timestamptz, UNIQUE (email, account_id));",
        after_first_sync: "",
        invariant: "SELECT count(*) = count(DISTINCT id) AND bool_and(note = 'new') FROM {table}",
    };
    shape_a_foreign_key_from_another_table: [built_in, configured] => Shape {
        before_migrate: "",
        after_migrate: "CREATE TABLE subscriptions ({key_ddl} NOT NULL, plan text,
                            CONSTRAINT subscriptions_follower_fkey FOREIGN KEY ({key}) REFERENCES {table} ({key}));",
        after_first_sync: "INSERT INTO subscriptions VALUES ({dee}, 'gold');",
        invariant: "SELECT count(*) = 0 FROM subscriptions s LEFT JOIN {table} f USING ({key}) WHERE f.email IS NULL",
    };
}

mod a_delete_a_foreign_key_forbids_fails_the_run_naming_the_constraint {
    use super::*;

    async fn case(target: Target) {
        // The binary: its stderr names the constraint.
        let case = Case::on(target, TestEnv::new().await);
        case.migrate().await;
        case.env
            .exec(&target.fill(
                "CREATE TABLE subscriptions ({key_ddl} NOT NULL, plan text,
                   CONSTRAINT subscriptions_follower_fkey FOREIGN KEY ({key}) REFERENCES {table} ({key}))",
            ))
            .await;
        case.write(&pairs(A));
        case.synced();
        case.env
            .exec(&target.fill("INSERT INTO subscriptions VALUES ({dee}, 'gold')"))
            .await;
        let a = case.versions().await;
        case.write(&pairs(&A[..3]));
        let run = case.sync(&[]);
        run.assert_ended(1, "failed");
        assert!(
            run.stderr.contains("subscriptions_follower_fkey")
                && run.stderr.contains("rolled back"),
            "{run:?}"
        );
        assert_eq!(case.versions().await, a, "nothing changed");
        case.assert_staging_gone("after the failure").await;
        assert_eq!(case.records("failed").await, 1);
    }

    #[tokio::test]
    async fn built_in() {
        case(Target::BuiltIn).await;
    }

    #[tokio::test]
    async fn configured() {
        case(Target::Configured).await;
    }
}

#[tokio::test]
async fn the_first_sync_rebuilds_the_key_only_where_allowed_and_gives_way_to_readers() {
    let fill = |env: &TestEnv, vars: &[(&str, &str)]| {
        env.write_csv(csv(A));
        let run = env.sync_with(&[], vars);
        run.assert_ended(0, "synced");
    };
    // A plain table: rebuilt (a new index), valid.
    let env = TestEnv::in_process().await;
    migrate(&env);
    let before = key_index(&env, "followers").await.0;
    fill(&env, &[]);
    let after = key_index(&env, "followers").await;
    assert!(
        after.0 != before && after.1,
        "rebuilt: {before} -> {after:?}"
    );
    // FIRST_SYNC_KEY_REBUILD=false: never.
    let env = TestEnv::in_process().await;
    migrate(&env);
    let before = key_index(&env, "followers").await.0;
    fill(&env, &[("FIRST_SYNC_KEY_REBUILD", "false")]);
    assert_eq!(key_index(&env, "followers").await.0, before);
    // A reader holding the table: the exclusive lock is given up, the rows go
    // in with the key in place, and the reader was never blocked for long.
    let env = TestEnv::in_process().await;
    migrate(&env);
    let before = key_index(&env, "followers").await.0;
    let mut reader = sqlx::PgConnection::connect(&env.url).await.unwrap();
    sqlx::raw_sql("BEGIN; SELECT count(*) FROM followers")
        .execute(&mut reader)
        .await
        .unwrap();
    fill(&env, &[]);
    assert_eq!(key_index(&env, "followers").await.0, before);
    sqlx::raw_sql("COMMIT").execute(&mut reader).await.unwrap();
    assert_eq!(env.followers().await, pairs(A));
}
