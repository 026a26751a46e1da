//! Test helpers: `TestEnv::new()` creates a database and a tables directory for one
//! test and drops both afterwards; `sync()` runs the real binary against them.

use followers_etl::config::{LIBPQ_VARIABLES, VARIABLES};
use sqlx::postgres::PgPoolOptions;
use sqlx::{Connection, PgPool, Row};
use std::path::PathBuf;
use std::process::{Command, Output};

pub(crate) fn server_url() -> String {
    std::env::var("TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

fn with_database(url: &str, name: &str) -> String {
    let mut url = url::Url::parse(url).expect("TEST_DATABASE_URL is a URL");
    url.set_path(&format!("/{name}"));
    url.to_string()
}

/// The variables every test's sync gets besides `DATABASE_URL` and `TABLES_DIR`
/// (the binary's through `command()`, an in-process sync's as its TOML layer).
/// `WATCH_DEBOUNCE`: files written by a test are fresh, and every run waits this
/// long for them to settle (docs/operations.md#files-still-being-written).
const BASE_ENV: &[(&str, &str)] = &[
    ("CSV_FILE", "followers.csv"),
    ("LOG_LEVEL", "warn"),
    ("HTTP_ADDR", "off"),
    ("WATCH_DEBOUNCE", "100ms"),
];

pub(crate) struct TestEnv {
    /// Whether `sync_with` (and so `sync`, `synced`, `refused`) runs the sync in
    /// this process, through the library (`TestEnv::in_process`), not the binary.
    in_process: bool,
    pub name: String,
    /// Whether `name` was created by this env (and is dropped with it).
    owns_database: bool,
    pub url: String,
    pub pool: PgPool,
    pub dir: tempfile::TempDir,
}

#[derive(Debug)]
pub(crate) struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub(crate) fn json(&self) -> serde_json::Value {
        serde_json::from_str(self.stdout.trim())
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {self:?}"))
    }

    /// A count from the JSON summary.
    pub(crate) fn n(&self, key: &str) -> u64 {
        self.json()[key]
            .as_u64()
            .unwrap_or_else(|| panic!("no {key} in {}", self.stdout))
    }

    /// Asserts the exit code and the outcome.
    pub(crate) fn expect(&self, code: i32, outcome: &str) -> &Self {
        assert_eq!(
            (self.code, self.outcome().as_str()),
            (code, outcome),
            "{self:?}"
        );
        self
    }

    pub(crate) fn outcome(&self) -> String {
        self.json()["outcome"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// Asserts the run's exit code and outcome (`sync --json`).
    #[track_caller]
    pub(crate) fn assert_ended(&self, code: i32, outcome: &str) -> &Self {
        assert_eq!(
            (self.code, self.outcome().as_str()),
            (code, outcome),
            "{self:?}"
        );
        self
    }
}

impl From<Output> for Run {
    fn from(o: Output) -> Self {
        Run {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

pub(crate) type Follower = (String, String);

/// A temporary directory holding an empty `tables/`.
fn work_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir(dir.path().join("tables")).unwrap();
    dir
}

impl TestEnv {
    pub(crate) async fn new() -> Self {
        Self::create(None).await
    }

    /// A fresh database created from `template` (else from the server's default).
    async fn create(template: Option<&str>) -> Self {
        let name = format!("fetl_test_{}", uuid::Uuid::now_v7().simple());
        let admin = PgPoolOptions::new()
            .max_connections(1)
            .connect(&server_url())
            .await
            .expect("TEST_DATABASE_URL reachable");
        let create = match template {
            Some(template) => format!("CREATE DATABASE {name} TEMPLATE {template}"),
            None => format!("CREATE DATABASE {name}"),
        };
        sqlx::query(&create)
            .execute(&admin)
            .await
            .unwrap_or_else(|e| panic!("{create}: {e}"));
        admin.close().await;
        let url = with_database(&server_url(), &name);
        let pool = PgPoolOptions::new()
            .max_connections(4)
            .connect(&url)
            .await
            .expect("connect test database");
        let dir = work_dir();
        Self {
            in_process: false,
            name,
            owns_database: true,
            url,
            pool,
            dir,
        }
    }

    /// Like `new`, but `sync_with` (and so `sync`, `synced`, `refused`) runs each
    /// sync in this process through the library's entry point of `sync`
    /// (`followers_etl::cli::sync_with`, see `sync_in_process`): no process to
    /// start, the same settings, summary and exit code. For tests that look at
    /// tables, the summary and the exit code, never at a sync's stderr.
    pub(crate) async fn in_process() -> Self {
        let mut env = Self::new().await;
        env.in_process = true;
        env
    }

    /// Like `in_process`, on a database that already has every migration applied,
    /// as `followers-etl migrate` leaves a fresh one: a copy of a template database
    /// (`migrated_template`), which skips the first sync's migrations. For tests
    /// whose first sync would otherwise migrate an empty database.
    pub(crate) async fn migrated_in_process() -> Self {
        let mut env = Self::migrated().await;
        env.in_process = true;
        env
    }

    /// Like `new`, on a database with every migration applied (see
    /// `migrated_in_process`); its syncs start the binary.
    pub(crate) async fn migrated() -> Self {
        let template = migrated_template().await;
        Self::create(Some(&template)).await
    }

    /// An env on an existing database `url` (e.g. of a private server that may
    /// not be up yet): connects lazily, creates and drops nothing.
    pub(crate) fn on_existing(url: &str) -> Self {
        let pool = PgPoolOptions::new()
            .max_connections(2)
            .acquire_timeout(std::time::Duration::from_secs(5))
            .connect_lazy(url)
            .expect("a database URL");
        let dir = work_dir();
        Self {
            in_process: false,
            name: String::new(),
            owns_database: false,
            url: url.to_owned(),
            pool,
            dir,
        }
    }

    pub(crate) fn tables(&self) -> PathBuf {
        self.dir.path().join("tables")
    }

    /// Writes `tables/followers.csv` (the default CSV_FILE of these tests).
    pub(crate) fn write_csv(&self, content: impl AsRef<[u8]>) -> PathBuf {
        self.write_file("followers.csv", content)
    }

    pub(crate) fn write_file(&self, name: &str, content: impl AsRef<[u8]>) -> PathBuf {
        let path = self.tables().join(name);
        std::fs::write(&path, content).unwrap();
        path
    }

    /// Writes a config file (`--config`, e.g. `[[mirror]]` tables) named `name`
    /// beside the tables directory; its path, for `--config` or `CONFIG_FILE`.
    pub(crate) fn write_config(&self, name: &str, toml: &str) -> String {
        let path = self.dir.path().join(name);
        std::fs::write(&path, toml).unwrap();
        path.to_str().unwrap().to_owned()
    }

    /// The environment of this env's syncs: this test's database and tables
    /// directory, then `BASE_ENV`.
    fn base_env(&self) -> Vec<(&'static str, String)> {
        [
            ("DATABASE_URL", self.url.clone()),
            ("TABLES_DIR", self.tables().display().to_string()),
        ]
        .into_iter()
        .chain(BASE_ENV.iter().map(|&(k, v)| (k, v.to_owned())))
        .collect()
    }

    /// The binary with a clean environment pointing at this test's database.
    pub(crate) fn command(&self) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_followers-etl"));
        for var in VARIABLES
            .iter()
            .chain(LIBPQ_VARIABLES)
            .chain(&["CONFIG_FILE", "RUST_LOG"])
        {
            cmd.env_remove(var);
        }
        cmd.current_dir(self.dir.path()).envs(self.base_env());
        cmd
    }

    pub(crate) fn run(&self, args: &[&str], env: &[(&str, &str)]) -> Run {
        let mut cmd = self.command();
        cmd.args(args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.output().expect("run followers-etl").into()
    }

    /// `sync --json` with extra args and environment (in this process for an
    /// env made by `in_process`, where the process allows it).
    pub(crate) fn sync_with(&self, args: &[&str], env: &[(&str, &str)]) -> Run {
        if self.in_process && in_process_possible(args, env) {
            return self.sync_in_process(args, env);
        }
        let mut all = vec!["sync", "--json"];
        all.extend_from_slice(args);
        self.run(&all, env)
    }

    /// `sync --json ARGS` as the binary that `command()` starts would run it, in
    /// this process: the same settings (the environment `command()` gives plus
    /// `env`, written as the TOML layer, which only the environment and `.env`
    /// would override: see `in_process_possible`), then the command's own code
    /// after settings are loaded (`cli::sync_with`) on a runtime of its own, as
    /// `main` has. Only the signal handlers are left out (they would outlive the
    /// run in the test process). stderr holds a configuration error only: the
    /// run's log events have no subscriber here.
    pub(crate) fn sync_in_process(&self, args: &[&str], env: &[(&str, &str)]) -> Run {
        use followers_etl::cli::{Cli, Command};
        let mut argv = vec!["followers-etl", "sync", "--json"];
        argv.extend_from_slice(args);
        let cli = match <Cli as clap::Parser>::try_parse_from(&argv) {
            Ok(cli) => cli,
            Err(e) => {
                return Run {
                    code: 2,
                    stdout: String::new(),
                    stderr: e.to_string(),
                }
            }
        };
        let mut vars: std::collections::BTreeMap<String, String> = self
            .base_env()
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect();
        for (k, v) in env {
            vars.insert((*k).to_owned(), (*v).to_owned());
        }
        let toml_text: String = vars
            .iter()
            .map(|(k, v)| {
                format!(
                    "{} = {}\n",
                    k.to_ascii_lowercase(),
                    toml::Value::String(v.clone())
                )
            })
            .collect();
        let config = self
            .dir
            .path()
            .join(format!("in-process-{}.toml", uuid::Uuid::now_v7().simple()));
        std::fs::write(&config, toml_text).unwrap();
        let mut overrides = cli.overrides();
        overrides.config_file.get_or_insert(config);
        let settings = match followers_etl::config::Settings::load(&overrides) {
            Ok(settings) => settings,
            Err(e) => {
                return Run {
                    code: 2,
                    stdout: String::new(),
                    stderr: format!("configuration error: {e}"),
                }
            }
        };
        let Some(Command::Sync(sync_args)) = cli.command else {
            unreachable!("parsed as sync")
        };
        let json = sync_args.json;
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Runtime::new().expect("a runtime");
            let mut stdout = String::new();
            let mut print = |summary: &followers_etl::pipeline::Summary, recorded: bool| {
                // As `sync --json` prints it.
                assert!(json, "in-process syncs print --json summaries only");
                stdout.push_str(&followers_etl::cli::summary_json(summary, recorded));
                stdout.push('\n');
                std::process::ExitCode::SUCCESS
            };
            let code = runtime.block_on(followers_etl::cli::sync_with(
                std::sync::Arc::new(settings),
                sync_args,
                |_cancel| {},
                &mut print,
            ));
            runtime.shutdown_timeout(std::time::Duration::from_secs(1));
            let code = [
                (std::process::ExitCode::SUCCESS, 0),
                (followers_etl::exit::failure(), 1),
                (followers_etl::exit::usage(), 2),
            ]
            .into_iter()
            .find_map(|(c, n)| (c == code).then_some(n))
            .expect("sync exits 0, 1 or 2");
            Run {
                code,
                stdout,
                stderr: String::new(),
            }
        })
        .join()
        .expect("the in-process sync panicked")
    }

    pub(crate) fn sync(&self) -> Run {
        self.sync_with(&[], &[])
    }

    /// Syncs and asserts success.
    pub(crate) fn synced(&self, args: &[&str]) -> Run {
        let run = self.sync_with(args, &[]);
        run.assert_ended(0, "synced");
        run
    }

    /// Syncs and asserts it was refused (exit 1).
    pub(crate) fn refused(&self, args: &[&str]) -> Run {
        let run = self.sync_with(args, &[]);
        run.assert_ended(1, "refused");
        run
    }

    pub(crate) async fn followers(&self) -> Vec<Follower> {
        sqlx::query("SELECT email, full_name FROM followers ORDER BY email")
            .fetch_all(&self.pool)
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect()
    }

    /// The followers' whole content as one digest, computed in SQL: md5 of the
    /// rows `email TAB full_name`, ordered by email, joined by newlines.
    pub(crate) async fn followers_digest(&self) -> Result<String, sqlx::Error> {
        sqlx::query_scalar(
            "SELECT md5(coalesce(string_agg(email || E'\\t' || full_name, E'\\n' ORDER BY email COLLATE \"C\"), '')) FROM followers",
        )
        .fetch_one(&self.pool)
        .await
    }

    /// What `followers_digest` is when `followers` holds exactly `rows`.
    pub(crate) async fn digest_of(&self, rows: &[Follower]) -> String {
        let mut rows: Vec<&Follower> = rows.iter().collect();
        rows.sort();
        let text: Vec<String> = rows.iter().map(|(e, n)| format!("{e}\t{n}")).collect();
        sqlx::query_scalar("SELECT md5($1)")
            .bind(text.join("\n"))
            .fetch_one(&self.pool)
            .await
            .unwrap()
    }

    /// Every follower with its `modified_at` and its row version (`xmin`): a row
    /// rewritten with identical values still gets a new `xmin`.
    pub(crate) async fn follower_versions(&self) -> Vec<(String, chrono::NaiveDateTime, String)> {
        sqlx::query("SELECT email, modified_at, xmin::text FROM followers ORDER BY email")
            .fetch_all(&self.pool)
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect()
    }

    /// What a run killed mid-staging leaves: a staging row and a `running` record.
    pub(crate) async fn leave_a_crashed_run(&self) -> uuid::Uuid {
        let crashed = uuid::Uuid::now_v7();
        self.exec(&format!(
            "INSERT INTO staging_followers VALUES ('ghost@example.com', 'Ghost', '{crashed}', 1);
             INSERT INTO etl_info_schema.sync_runs (load_id, trigger, file, started_at, outcome)
             VALUES ('{crashed}', 'cron', 'followers.csv', now() AT TIME ZONE 'UTC', 'running');"
        ))
        .await;
        crashed
    }

    /// Waits (up to 60 s) until a run in flight has staged rows.
    pub(crate) async fn wait_for_staging(&self) {
        eventually(60, "rows being staged", || async {
            (self.staging_rows().await > 0).then_some(())
        })
        .await;
    }

    pub(crate) async fn staging_rows(&self) -> i64 {
        self.scalar("SELECT count(*) FROM staging_followers").await
    }

    pub(crate) async fn scalar(&self, sql: &str) -> i64 {
        sqlx::query_scalar(sql).fetch_one(&self.pool).await.unwrap()
    }

    pub(crate) async fn exec(&self, sql: &str) {
        sqlx::raw_sql(sql)
            .execute(&self.pool)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }

    /// The newest run record: (outcome, trigger, error).
    pub(crate) async fn last_run(&self) -> (String, String, Option<String>) {
        let r = sqlx::query("SELECT outcome, trigger, error FROM etl_info_schema.sync_runs ORDER BY started_at DESC, load_id DESC LIMIT 1")
            .fetch_one(&self.pool)
            .await
            .unwrap();
        (r.get(0), r.get(1), r.get(2))
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        if !self.owns_database {
            return;
        }
        // FORCE ends this test's open connections.
        run_sql_on_drop(
            server_url(),
            vec![format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            )],
        );
    }
}

/// The template of `TestEnv::migrated_in_process`: a database on the test server
/// that `followers-etl migrate` (this build of the binary) migrated, named after the
/// binary's size and modification time so that a rebuilt binary gets its own. Made
/// once, under an advisory lock (test processes run side by side), and published by
/// a rename, so a half-made one is never used; templates of other builds older
/// than a day are dropped then.
async fn migrated_template() -> String {
    let binary = std::fs::metadata(env!("CARGO_BIN_EXE_followers-etl")).expect("the binary");
    let modified = binary
        .modified()
        .unwrap()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    let name = format!(
        "fetl_template_{:x}_{:x}",
        binary.len(),
        modified.as_nanos() % (1u128 << 64)
    );
    let mut admin = sqlx::PgConnection::connect(&server_url())
        .await
        .expect("TEST_DATABASE_URL reachable");
    sqlx::query("SELECT pg_advisory_lock(hashtext('followers-etl test template'))")
        .execute(&mut admin)
        .await
        .unwrap();
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT FROM pg_database WHERE datname = $1)")
            .bind(&name)
            .fetch_one(&mut admin)
            .await
            .unwrap();
    if !exists {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let stale: Vec<String> = sqlx::query_scalar(
            "SELECT datname FROM pg_database WHERE datname LIKE 'fetl\\_template\\_%'
             AND coalesce(shobj_description(oid, 'pg_database'), '0')::bigint < $1",
        )
        .bind(i64::try_from(now).unwrap() - 86_400)
        .fetch_all(&mut admin)
        .await
        .unwrap();
        for old in stale {
            let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {old} WITH (FORCE)"))
                .execute(&mut admin)
                .await;
        }
        let building = format!("{name}_build");
        for sql in [
            format!("DROP DATABASE IF EXISTS {building} WITH (FORCE)"),
            format!("CREATE DATABASE {building}"),
        ] {
            sqlx::query(&sql).execute(&mut admin).await.unwrap();
        }
        let env = TestEnv::on_existing(&with_database(&server_url(), &building));
        let migrate = env.run(&["migrate"], &[]);
        assert_eq!(migrate.code, 0, "migrating the template: {migrate:?}");
        env.pool.close().await;
        // The rename waits for the migrating process's sessions to be gone.
        let rename = format!("ALTER DATABASE {building} RENAME TO {name}");
        let mut tries = 0;
        while let Err(e) = sqlx::query(&rename).execute(&mut admin).await {
            tries += 1;
            assert!(tries < 100, "{rename}: {e}");
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        sqlx::query(&format!("COMMENT ON DATABASE {name} IS '{now}'"))
            .execute(&mut admin)
            .await
            .unwrap();
    }
    sqlx::query("SELECT pg_advisory_unlock(hashtext('followers-etl test template'))")
        .execute(&mut admin)
        .await
        .unwrap();
    name
}

/// The variables whose values the library keeps in a process-wide once-cell
/// (`src/db.rs`'s `CONNECT_TIMEOUT`, `src/telemetry.rs`'s `FORMAT`): the first
/// sync in this process would fix (or, for `FORMAT`, never set) them for the
/// whole test binary, so a sync given one of them starts the binary.
/// `process_wide_settings_are_known` keeps this list complete.
pub(crate) const PROCESS_WIDE: &[&str] = &["DB_CONNECT_TIMEOUT", "LOG_FORMAT"];

/// Whether a sync in this process with `args` and `env` sees the settings the
/// binary would: nothing the binary's environment removes (`command()`) is set
/// here, there is no `.env` in the working directory (both rank above the TOML
/// layer), and neither `env` nor a flag (`--log-format`, or a `--config` file in
/// place of the TOML layer) sets a `PROCESS_WIDE` variable. Otherwise
/// `TestEnv::in_process` envs start the binary as `new` ones do.
fn in_process_possible(args: &[&str], env: &[(&str, &str)]) -> bool {
    let set = VARIABLES
        .iter()
        .chain(LIBPQ_VARIABLES)
        .chain(&["CONFIG_FILE"])
        .any(|var| std::env::var_os(var).is_some());
    let process_wide = env.iter().any(|(k, _)| PROCESS_WIDE.contains(k))
        || args
            .iter()
            .any(|a| a.starts_with("--log-format") || a.starts_with("--config"));
    !set && !process_wide && !std::path::Path::new(".env").exists()
}

/// Runs `statements` at `url`, ignoring errors. Drop cannot await, and the
/// test's runtime is busy dropping: a thread with its own runtime does it.
fn run_sql_on_drop(url: String, statements: Vec<String>) {
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            if let Ok(db) = PgPoolOptions::new().max_connections(1).connect(&url).await {
                for sql in statements {
                    let _ = sqlx::query(&sql).execute(&db).await;
                }
            }
        });
    })
    .join()
    .ok();
}

/// Builds CSV text from (email, name) pairs with a header.
pub(crate) fn csv(rows: &[(&str, &str)]) -> String {
    let mut text = String::from("email,full_name\n");
    for (email, name) in rows {
        let name = if name.contains([',', '"']) {
            format!("\"{}\"", name.replace('"', "\"\""))
        } else {
            name.to_string()
        };
        text.push_str(&format!("{email},{name}\n"));
    }
    text
}

/// `n` followers `user{i}@example.com`.
pub(crate) fn many(n: usize) -> Vec<(String, String)> {
    (0..n)
        .map(|i| (format!("user{i}@example.com"), format!("User {i}")))
        .collect()
}

pub(crate) fn csv_owned(rows: &[(String, String)]) -> String {
    let pairs: Vec<(&str, &str)> = rows.iter().map(|(e, n)| (e.as_str(), n.as_str())).collect();
    csv(&pairs)
}

pub(crate) fn pairs(rows: &[(&str, &str)]) -> Vec<Follower> {
    let mut v: Vec<Follower> = rows
        .iter()
        .map(|(e, n)| (e.to_string(), n.to_string()))
        .collect();
    v.sort();
    v
}

/// A `serve` process of this test; killed when dropped.
pub(crate) struct Agent {
    child: std::process::Child,
    pub log: PathBuf,
}

impl TestEnv {
    /// Starts `followers-etl serve` with quiet defaults (no cron, no HTTP) and `env`.
    pub(crate) fn spawn_agent(&self, env: &[(&str, &str)]) -> Agent {
        let log = self
            .dir
            .path()
            .join(format!("agent-{}.log", uuid::Uuid::now_v7().simple()));
        // One open file for both streams: they share its offset.
        let out = std::fs::File::create(&log).unwrap();
        let mut cmd = self.command();
        cmd.arg("serve")
            .env("CRON_SCHEDULE", "0 0 1 1 *")
            .env("WATCH_DEBOUNCE", "300ms")
            .env("LOG_LEVEL", "info")
            .stdout(out.try_clone().unwrap())
            .stderr(out);
        for (k, v) in env {
            cmd.env(k, v);
        }
        Agent {
            child: cmd.spawn().expect("spawn serve"),
            log,
        }
    }

    /// A `serve` in the middle of a start-up run that replaces 3 synced followers
    /// with `rows` new ones (slowly: batches of 500, one worker).
    pub(crate) async fn agent_mid_run(&self, rows: usize) -> Agent {
        self.write_csv(csv(&[
            ("ann@example.com", "Ann"),
            ("bob@example.com", "Bob"),
            ("cy@example.com", "Cy"),
        ]));
        self.synced(&[]);
        self.write_csv(csv_owned(&many(rows)));
        let agent = self.spawn_agent(&[
            ("WATCH", "false"),
            ("BATCH_SIZE", "500"),
            ("WORKER_POOL_GOROUTINES", "1"),
            ("MAX_DELETE_RATIO", "1.0"),
        ]);
        self.wait_for_staging().await;
        agent
    }

    /// A `sync --json` process in the middle of replacing the one synced follower
    /// (ann@example.com) with 300,000 (slowly: batches of 200, one worker).
    pub(crate) async fn sync_mid_run(&self) -> std::process::Child {
        self.write_csv(csv(&[("ann@example.com", "Ann")]));
        self.synced(&[]);
        self.write_csv(csv_owned(&many(300_000)));
        let mut cmd = self.command();
        cmd.args(["sync", "--json"])
            .env("BATCH_SIZE", "200")
            .env("WORKER_POOL_GOROUTINES", "1")
            .env("MAX_DELETE_RATIO", "1.0")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let child = cmd.spawn().unwrap();
        self.wait_for_staging().await;
        child
    }

    /// Runs recorded with this trigger: (outcome, rows_read).
    pub(crate) async fn runs_by(&self, trigger: &str) -> Vec<(String, i64)> {
        sqlx::query("SELECT outcome, rows_read FROM etl_info_schema.sync_runs WHERE trigger = $1 ORDER BY load_id")
            .bind(trigger)
            .fetch_all(&self.pool)
            .await
            .map(|rows| rows.iter().map(|r| (r.get(0), r.get(1))).collect())
            .unwrap_or_default()
    }
}

impl Agent {
    /// The exit code once the process has exited (-1 when killed by a signal).
    pub(crate) fn exit_code(&mut self) -> Option<i32> {
        self.child
            .try_wait()
            .unwrap()
            .map(|status| status.code().unwrap_or(-1))
    }

    pub(crate) fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub(crate) fn signal(&self, name: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{name} failed");
    }

    /// Whether the process is still running.
    pub(crate) fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// SIGKILL, and waits for the process to be gone.
    pub(crate) fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends SIGTERM and waits (up to 60 s) for the exit code.
    pub(crate) async fn terminate(&mut self) -> i32 {
        self.signal("TERM");
        for _ in 0..600 {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code().unwrap_or(-1);
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        panic!(
            "serve did not stop within 60 s after SIGTERM; log:\n{}",
            self.log_text()
        );
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Polls `probe` every 50 ms until it returns `Some`, or panics after `secs`.
pub(crate) async fn eventually<T, F, Fut>(secs: u64, what: &str, probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    poll(secs, probe)
        .await
        .unwrap_or_else(|| panic!("timed out after {secs}s waiting for: {what}"))
}

/// Like `eventually`, with the agent's log in the panic message.
pub(crate) async fn eventually_logged<T, F, Fut>(
    agent: &Agent,
    secs: u64,
    what: &str,
    probe: F,
) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    poll(secs, probe).await.unwrap_or_else(|| {
        panic!(
            "timed out after {secs}s waiting for: {what}; log:\n{}",
            agent.log_text()
        )
    })
}

/// Polls `probe` every 50 ms until it returns `Some`; `None` after `secs`.
async fn poll<T, F, Fut>(secs: u64, mut probe: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    loop {
        if let Some(value) = probe().await {
            return Some(value);
        }
        if std::time::Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// A login role of this test (roles are cluster-wide: a unique name), with the
/// runtime grants `docs/sync.md#database-roles` documents; dropped (with its grants) afterwards.
pub(crate) struct TestRole {
    pub name: String,
    /// This test's database, connecting as the role (trust auth).
    pub url: String,
    admin_url: String,
}

impl TestRole {
    pub(crate) async fn new(env: &TestEnv) -> Self {
        let name = format!("fetl_role_{}", uuid::Uuid::now_v7().simple());
        env.exec(&format!("CREATE ROLE {name} LOGIN")).await;
        let mut url = url::Url::parse(&env.url).unwrap();
        url.set_username(&name).unwrap();
        url.set_password(None).unwrap();
        Self {
            name,
            url: url.to_string(),
            admin_url: env.url.clone(),
        }
    }

    /// Runs the GRANT statements of `docs/sync.md#database-roles` for this role.
    pub(crate) async fn grant_documented_privileges(&self, env: &TestEnv) {
        let doc =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/sync.md")).unwrap();
        let section = &doc[doc
            .find("\n## Database roles\n")
            .expect("docs/sync.md section")..];
        let start = section.find("```sql\n").expect("an sql block") + 7;
        let block = &section[start..start + section[start..].find("```").unwrap()];
        assert!(block.contains("GRANT"), "{block}");
        env.exec(&block.replace("followers_etl_runtime", &self.name))
            .await;
    }
}

impl Drop for TestRole {
    fn drop(&mut self) {
        // Its grants live in the test's database, the role in the cluster.
        run_sql_on_drop(
            self.admin_url.clone(),
            vec![
                format!("DROP OWNED BY {}", self.name),
                format!("DROP ROLE IF EXISTS {}", self.name),
            ],
        );
    }
}

/// Two versions of a small file shared by the journal and table-shape tests.
pub(crate) mod fixtures {
    /// The `subscribers` mirror of docs/mirrors.md (a composite key, every
    /// column type, nullable columns, a header name unlike the column's) into
    /// `table`, written as its TOML value (`'crm."Sub Scribers"'`).
    pub(crate) fn subscribers_toml(table: &str) -> String {
        format!(
            r#"[[mirror]]
name = "subscribers"
file = "subscribers.csv"
table = {table}
key = ["account_id", "email"]
modified_column = "modified_at"
columns = [
  {{ name = "account_id", type = "bigint" }},
  {{ name = "email",      type = "email" }},
  {{ name = "full_name",  type = "text", max_length = 255, source = "Full Name" }},
  {{ name = "plan",       type = "text", nullable = true }},
  {{ name = "signed_up",  type = "date" }},
  {{ name = "opted_in",   type = "boolean" }},
  {{ name = "balance",    type = "numeric", nullable = true }},
  {{ name = "seats",      type = "integer" }},
  {{ name = "last_seen",  type = "timestamp", nullable = true }},
  {{ name = "confirmed",  type = "timestamptz", nullable = true }},
  {{ name = "token",      type = "uuid" }},
]
"#
        )
    }

    /// Four followers.
    pub(crate) const A: &[(&str, &str)] = &[
        ("ann@example.com", "Ann"),
        ("bob@example.com", "Bob"),
        ("cy@example.com", "Cy"),
        ("dee@example.com", "Dee"),
    ];

    /// From A: ann renamed, bob deleted, eve inserted; cy and dee unchanged.
    pub(crate) const B: &[(&str, &str)] = &[
        ("ann@example.com", "Ann Smith"),
        ("cy@example.com", "Cy"),
        ("dee@example.com", "Dee"),
        ("eve@example.com", "Eve"),
    ];
}

/// A harness's seed: `var` when set (to replay a failing run), else one drawn
/// from the clock.
pub(crate) fn seed_from_env(var: &str) -> u64 {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos();
            u64::try_from(nanos % (1u128 << 64)).unwrap()
        })
}

/// Holds a configured mirror's run at its staging table (after its hash,
/// before its read: the run drops the table first) with another session's
/// lock, taken here, before the run starts; `release` runs `meanwhile` once the
/// run waits there, then lets it go (join it with the run).
pub(crate) struct StagingHold<'a> {
    env: &'a TestEnv,
    relname: String,
    holder: sqlx::Transaction<'static, sqlx::Postgres>,
}

impl<'a> StagingHold<'a> {
    pub(crate) async fn take(env: &'a TestEnv, spec: &followers_etl::mirror::MirrorSpec) -> Self {
        let staging = followers_etl::storage::mirror::MirrorSql::new(spec).staging_table();
        let relname = staging
            .rsplit('.')
            .next()
            .unwrap()
            .trim_matches('"')
            .to_owned();
        env.exec(&format!("CREATE TABLE IF NOT EXISTS {staging} (x int)"))
            .await;
        let mut holder = env.pool.begin().await.unwrap();
        sqlx::query(&format!("LOCK TABLE {staging} IN ACCESS EXCLUSIVE MODE"))
            .execute(&mut *holder)
            .await
            .unwrap();
        Self {
            env,
            relname,
            holder,
        }
    }

    pub(crate) async fn release(self, meanwhile: impl FnOnce()) {
        let (env, relname) = (self.env, &self.relname);
        eventually(30, "the run waiting for its staging table", || async {
            let waiting: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation
                  WHERE c.relname = $1 AND NOT l.granted
                    AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())",
            )
            .bind(relname)
            .fetch_one(&env.pool)
            .await
            .unwrap();
            (waiting > 0).then_some(())
        })
        .await;
        meanwhile();
        self.holder.commit().await.unwrap();
    }
}
