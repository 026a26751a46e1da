//! Database faults not covered by `faults.rs` (docs/guarantees.md#database-faults; issue 16 §7):
//! a server out of connections, a server or network that accepts connections
//! and never answers, and a database whose disk fills during the merge. Each
//! run fails within a bounded time, clearly, and changes nothing.

use crate::helpers::*;
use crate::private_pg::PrivatePg;
use std::time::{Duration, Instant};

#[tokio::test]
#[ignore = "slow group: faults (docs/development.md#slow-test-groups)"]
async fn a_server_out_of_connections_fails_at_once_naming_max_connections() {
    let pg = PrivatePg::init();
    pg.start_with("-c max_connections=3 -c superuser_reserved_connections=0");
    let env = TestEnv::on_existing(&pg.url());
    env.write_csv(csv(&[("ann@x.io", "Ann")]));
    // Every slot taken by other clients.
    let mut others = Vec::new();
    for _ in 0..3 {
        others.push(
            sqlx::postgres::PgConnection::connect(&pg.url())
                .await
                .expect("a free slot"),
        );
    }
    let started = Instant::now();
    let run = env.sync();
    assert!(started.elapsed() < Duration::from_secs(10), "{run:?}");
    run.expect(1, "failed");
    assert!(
        run.stderr.contains("max_connections") && run.stderr.contains("too many clients"),
        "{run:?}"
    );
    drop(others);
}

use sqlx::Connection;

/// A TCP listener that accepts connections and never answers (a hung server,
/// or a network path that stops forwarding).
async fn black_hole() -> (u16, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    (port, task)
}

#[tokio::test]
#[ignore = "slow group: faults (docs/development.md#slow-test-groups)"]
async fn a_server_that_never_answers_fails_every_command_within_db_connect_timeout() {
    let env = TestEnv::new().await;
    env.write_csv(csv(&[("ann@x.io", "Ann")]));
    let (port, task) = black_hole().await;
    let url = format!("postgres://postgres@127.0.0.1:{port}/postgres?sslmode=disable");
    let vars = [("DATABASE_URL", url.as_str()), ("DB_CONNECT_TIMEOUT", "1s")];
    for args in [
        &["sync", "--json"][..],
        &["status"],
        &["revert", "--last", "--dry-run"],
    ] {
        let started = Instant::now();
        let run = env.run(args, &vars);
        let took = started.elapsed();
        assert_eq!(run.code, 1, "{args:?}: {run:?}");
        assert!(
            run.stderr.contains("DB_CONNECT_TIMEOUT=1s"),
            "{args:?}: {run:?}"
        );
        assert!(took < Duration::from_secs(5), "{args:?} took {took:?}");
    }
    task.abort();
}

/// A tmpfs of `size` mounted for this test (we are root in CI), unmounted when
/// dropped: declare it before the server using it, so it outlives the server.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(size: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0700")])
            .arg("tmpfs")
            .arg(dir.path())
            .output()
            .expect("mount");
        assert!(
            out.status.success(),
            "this test mounts a tmpfs (as root): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let uid = String::from_utf8_lossy(
            &std::process::Command::new("id")
                .args(["-u", "postgres"])
                .output()
                .unwrap()
                .stdout,
        )
        .trim()
        .parse()
        .unwrap();
        std::os::unix::fs::chown(dir.path(), Some(uid), None).unwrap();
        Self { dir }
    }

    fn resize(&self, size: &str) {
        let status = std::process::Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(self.dir.path())
            .status()
            .unwrap();
        assert!(status.success());
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

#[tokio::test]
#[ignore = "slow group: faults (docs/development.md#slow-test-groups)"]
async fn a_disk_full_during_the_merge_fails_changes_nothing_and_the_next_run_syncs() {
    let disk = SmallDisk::mount("2m");
    let pg = PrivatePg::start_new();
    let env = TestEnv::on_existing(&pg.url());
    let abc = [("ann@x.io", "Ann"), ("bob@x.io", "Bob"), ("cy@x.io", "Cy")];
    env.write_csv(csv(&abc));
    env.synced(&[]);
    // followers (and its key) live on the small disk; staging does not.
    env.exec(&format!(
        "CREATE TABLESPACE small LOCATION '{}'",
        disk.dir.path().display()
    ))
    .await;
    env.exec("ALTER TABLE followers SET TABLESPACE small; ALTER INDEX followers_pkey SET TABLESPACE small")
        .await;
    let mut rows: Vec<(String, String)> = abc
        .iter()
        .map(|(e, n)| (e.to_string(), n.to_string()))
        .collect();
    rows.extend(many(60_000));
    env.write_csv(csv_owned(&rows));
    let run = env.sync();
    run.expect(1, "failed");
    assert!(
        run.stderr.contains("No space left on device") || run.stderr.contains("could not extend"),
        "{run:?}"
    );
    assert_eq!(env.followers().await, pairs(&abc));
    assert_eq!(env.staging_rows().await, 0);
    // Emptied by TRUNCATE: no dead rows (nor their pages) left in staging.
    assert_eq!(
        env.scalar("SELECT pg_relation_size('public.staging_followers')")
            .await,
        0
    );
    // Space freed: the next run syncs.
    disk.resize("64m");
    let run = env.sync();
    run.expect(0, "synced");
    assert_eq!(run.n("inserted"), 60_000);
    assert_eq!(env.scalar("SELECT count(*) FROM followers").await, 60_003);
    drop(env);
    drop(pg);
}

/// A TCP proxy to the test PostgreSQL that forwards until `stop`, then
/// forwards nothing more, keeping every connection open (a network path that
/// hangs without refusing); `close` drops them all.
struct Staller {
    port: u16,
    stopped: std::sync::Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Staller {
    async fn start() -> Self {
        use std::sync::atomic::{AtomicBool, Ordering};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let upstream = url::Url::parse(&server_url()).unwrap();
        let upstream = format!(
            "{}:{}",
            upstream.host_str().unwrap(),
            upstream.port().unwrap_or(5432)
        );
        let stopped = std::sync::Arc::new(AtomicBool::new(false));
        let flag = stopped.clone();
        let task = tokio::spawn(async move {
            let mut pipes = tokio::task::JoinSet::new();
            while let Ok((client, _)) = listener.accept().await {
                let server = tokio::net::TcpStream::connect(&upstream).await.unwrap();
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                for (mut from, mut to) in [
                    (
                        Box::new(cr) as Box<dyn tokio::io::AsyncRead + Unpin + Send>,
                        Box::new(sw) as Box<dyn tokio::io::AsyncWrite + Unpin + Send>,
                    ),
                    (Box::new(sr), Box::new(cw)),
                ] {
                    let flag = flag.clone();
                    pipes.spawn(async move {
                        let mut buf = vec![0u8; 16 * 1024];
                        while let Ok(n @ 1..) = from.read(&mut buf).await {
                            if flag.load(Ordering::SeqCst) {
                                // Hang: hold both ends, forward nothing.
                                std::future::pending::<()>().await;
                            }
                            if to.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    });
                }
            }
        });
        Self {
            port,
            stopped,
            task,
        }
    }

    fn url(&self, env: &TestEnv) -> String {
        let mut url = url::Url::parse(&env.url).unwrap();
        url.set_host(Some("127.0.0.1")).unwrap();
        url.set_port(Some(self.port)).unwrap();
        url.set_query(Some("sslmode=disable"));
        url.to_string()
    }

    fn stop(&self) {
        self.stopped
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    fn close(self) {
        self.task.abort();
    }
}

#[tokio::test]
#[ignore = "slow group: faults (docs/development.md#slow-test-groups)"]
async fn a_network_that_hangs_mid_run_fails_the_run_within_db_timeout_and_changes_nothing() {
    let env = TestEnv::new().await;
    let abc = [("ann@x.io", "Ann"), ("bob@x.io", "Bob"), ("cy@x.io", "Cy")];
    env.write_csv(csv(&abc));
    env.synced(&[]);
    let mut rows: Vec<(String, String)> = abc
        .iter()
        .map(|(e, n)| (e.to_string(), n.to_string()))
        .collect();
    rows.extend(many(30_000));
    env.write_csv(csv_owned(&rows));
    let proxy = Staller::start().await;
    let mut cmd = env.command();
    cmd.args(["sync", "--json"])
        .env("DATABASE_URL", proxy.url(&env))
        .env("DB_TIMEOUT", "2s")
        .env("BATCH_SIZE", "100")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let child = cmd.spawn().unwrap();
    env.wait_for_staging().await;
    proxy.stop();
    let stopped = Instant::now();
    let run: Run = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap().into())
        .await
        .unwrap();
    let took = stopped.elapsed();
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stderr.contains("DB_TIMEOUT=2s"), "{run:?}");
    // DB_TIMEOUT (plus a third of it before the first ping), then `sync`'s
    // last step (pruning old runs) waits DB_TIMEOUT at most: 4.7 s measured.
    assert!(took < Duration::from_secs(8), "took {took:?}: {run:?}");
    assert_eq!(env.followers().await, pairs(&abc));
    // The proxy's connections close; the next run cleans up and syncs.
    proxy.close();
    eventually(30, "the hung sessions to end", || async {
        (env
            .scalar("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' OR relation = 'public.staging_followers'::regclass")
            .await
            == 0)
            .then_some(())
    })
    .await;
    let run = env.sync();
    run.expect(0, "synced");
    assert_eq!(env.staging_rows().await, 0);
}

/// A revert is held to DB_TIMEOUT like a sync: while it waits for the table
/// (an application's open transaction), the network hangs; it fails within
/// DB_TIMEOUT instead of waiting for ever, and nothing changed.
#[tokio::test]
#[ignore = "slow group: faults (docs/development.md#slow-test-groups)"]
async fn a_network_that_hangs_mid_revert_fails_it_within_db_timeout_and_changes_nothing() {
    let env = TestEnv::migrated().await;
    let abc = [("ann@x.io", "Ann"), ("bob@x.io", "Bob"), ("cy@x.io", "Cy")];
    env.write_csv(csv(&abc));
    env.synced(&[]);
    env.write_csv(csv(&[
        ("ann@x.io", "Ann"),
        ("bob@x.io", "Bobby"),
        ("cy@x.io", "Cy"),
    ]));
    env.synced(&[]);
    let before = env.follower_versions().await;
    // An application's open write transaction (its lock only: a write would be
    // drift): the revert waits for its lock on the table.
    let mut app = sqlx::PgConnection::connect(&env.url).await.unwrap();
    sqlx::raw_sql("BEGIN; LOCK TABLE followers IN ROW EXCLUSIVE MODE")
        .execute(&mut app)
        .await
        .unwrap();
    let proxy = Staller::start().await;
    let mut cmd = env.command();
    cmd.args(["revert", "--last", "--json"])
        .env("DATABASE_URL", proxy.url(&env))
        .env("DB_TIMEOUT", "2s")
        .env("LOCK_WAIT_TIMEOUT", "5m")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let child = cmd.spawn().unwrap();
    eventually(30, "the revert to wait for the table", || async {
        (env.scalar("SELECT count(*) FROM pg_locks WHERE relation = 'public.followers'::regclass AND NOT granted")
            .await
            > 0)
        .then_some(())
    })
    .await;
    proxy.stop();
    let stopped = Instant::now();
    let run: Run = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap().into())
        .await
        .unwrap();
    let took = stopped.elapsed();
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stderr.contains("DB_TIMEOUT=2s"), "{run:?}");
    assert!(took < Duration::from_secs(8), "took {took:?}: {run:?}");
    sqlx::raw_sql("ROLLBACK").execute(&mut app).await.unwrap();
    proxy.close();
    eventually(30, "the hung sessions to end", || async {
        (env.scalar("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'")
            .await
            == 0)
            .then_some(())
    })
    .await;
    assert_eq!(env.follower_versions().await, before);
    // The next revert undoes the run.
    let run = env.run(&["revert", "--last"], &[]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(env.followers().await, pairs(&abc));
}

/// A configured mirror's run waiting in its staging DDL on the run lock's
/// session (another session's lock on the staging table) when the network
/// hangs: the ping cannot go through the busy session, and its probe session
/// gets no answer either, so the run fails within DB_TIMEOUT, changing nothing.
#[tokio::test]
#[ignore = "slow group: faults (docs/development.md#slow-test-groups)"]
async fn a_network_that_hangs_while_a_mirror_waits_in_its_staging_ddl_fails_within_db_timeout() {
    const CONFIG: &str = r#"
[[mirror]]
name = "accounts"
file = "accounts.csv"
table = "public.accounts"
key = ["id"]
columns = [{ name = "id", type = "bigint" }, { name = "name", type = "text" }]
"#;
    let env = TestEnv::new().await;
    let config = env.write_config("mirrors.toml", CONFIG);
    env.write_file("accounts.csv", "id,name\n1,Ann\n");
    let first = env.run(&["--config", &config, "sync", "--mirror", "accounts"], &[]);
    assert_eq!(first.code, 0, "{first:?}");
    env.write_file("accounts.csv", "id,name\n1,Ann\n2,Bob\n");
    let spec = followers_etl::mirror::from_toml_str(CONFIG)
        .unwrap()
        .remove(0);
    let hold = StagingHold::take(&env, &spec).await;
    let proxy = Staller::start().await;
    let mut cmd = env.command();
    cmd.args([
        "--config", &config, "sync", "--json", "--mirror", "accounts",
    ])
    .env("DATABASE_URL", proxy.url(&env))
    .env("DB_TIMEOUT", "2s")
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::piped());
    let child = cmd.spawn().unwrap();
    let stopped = std::cell::Cell::new(None);
    hold.release(|| {
        proxy.stop();
        stopped.set(Some(Instant::now()));
        std::thread::sleep(Duration::from_secs(1));
    })
    .await;
    let run: Run = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap().into())
        .await
        .unwrap();
    let took = stopped.get().unwrap().elapsed();
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stderr.contains("DB_TIMEOUT=2s"), "{run:?}");
    assert!(took < Duration::from_secs(8), "took {took:?}: {run:?}");
    let names: i64 = env.scalar("SELECT count(*) FROM public.accounts").await;
    assert_eq!(names, 1, "nothing merged");
    // The proxy's connections close; the next run recovers the record and syncs.
    proxy.close();
    eventually(30, "the hung sessions to end", || async {
        (env.scalar("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'")
            .await
            == 0)
            .then_some(())
    })
    .await;
    let next = env.run(&["--config", &config, "sync", "--mirror", "accounts"], &[]);
    assert_eq!(next.code, 0, "{next:?}");
    assert_eq!(env.scalar("SELECT count(*) FROM public.accounts").await, 2);
}

// A configured mirror's run (docs/mirrors.md#runs) under the same faults: its
// merge's connection lost mid-COPY, during the merge and at COMMIT, a statement
// timeout, and a restart of the server. After each, the table is exactly as
// before (or, for the restart, as before or the file), the run is recorded
// failed (none left `running`), its run lock is released, its staging table is
// gone, and the next run syncs the file.

use crate::shapes::{Case, Target};
use followers_etl::storage::mirror::MirrorSql;

/// The configured mirror of `crate::shapes` on `env`, migrated, its table
/// holding the four followers of `fixtures::A`.
async fn configured_with_a(env: TestEnv) -> Case {
    let case = Case::on(Target::Configured, env);
    case.migrate().await;
    case.write(&pairs(crate::helpers::fixtures::A));
    case.synced();
    case
}

/// The pid of the first other session of the test's database for which
/// `filter` (SQL over `pg_stat_activity`) holds, waiting up to 60 s for one.
async fn session_where(env: &TestEnv, what: &str, filter: &str) -> i32 {
    let sql = format!(
        "SELECT pid FROM pg_stat_activity
          WHERE datname = current_database() AND pid <> pg_backend_pid() AND ({filter})
          LIMIT 1"
    );
    eventually(60, what, || async {
        sqlx::query_scalar::<_, i32>(&sql)
            .fetch_optional(&env.pool)
            .await
            .unwrap()
    })
    .await
}

async fn terminate(env: &TestEnv, pid: i32) {
    let done: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
        .bind(pid)
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert!(done, "terminated {pid}");
}

/// Starts `sync --json` of the configured mirror in the background.
fn spawn_sync(case: &Case, vars: &[(&str, &str)]) -> std::process::Child {
    let mut cmd = case.sync_command();
    cmd.env("MAX_DELETE_RATIO", "1.0")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    for (k, v) in vars {
        cmd.env(k, v);
    }
    cmd.spawn().unwrap()
}

async fn finished(child: std::process::Child) -> Run {
    tokio::task::spawn_blocking(move || child.wait_with_output().unwrap().into())
        .await
        .unwrap()
}

/// What must hold after a run the fault failed: exit 1, `failed`, the table
/// exactly `before`, the run recorded failed and none `running`, the run lock
/// released, the staging table gone.
async fn failed_and_unchanged(case: &Case, run: &Run, before: &[Vec<Option<String>>]) {
    run.assert_ended(1, "failed");
    assert_eq!(case.versions().await, before, "the table changed: {run:?}");
    case.wait_for_locks_released().await;
    assert_eq!(case.records("failed").await, 1, "{run:?}");
    assert_eq!(case.running_records().await, 0, "{run:?}");
    case.assert_staging_gone("after the failed run").await;
}

/// The next run syncs `rows`, and leaves nothing staged.
async fn next_run_syncs(case: &Case, rows: &[Follower]) {
    let run = case.sync(&[("MAX_DELETE_RATIO", "1.0")]);
    run.assert_ended(0, "synced");
    assert_eq!(case.rows().await, case.expected(rows));
    case.assert_staging_gone("after the next run").await;
    assert_eq!(case.running_records().await, 0);
}

/// A trigger sleeping for a minute once the merge inserts: `AFTER INSERT …
/// FOR EACH STATEMENT` (the merge's insert waits in it), or a deferred
/// constraint trigger (`COMMIT` waits in it).
async fn sleep_on_insert(case: &Case, at_commit: bool) {
    sleep_on_insert_for(case, at_commit, 60).await;
}

async fn sleep_on_insert_for(case: &Case, at_commit: bool, seconds: u32) {
    let trigger = if at_commit {
        "CREATE CONSTRAINT TRIGGER slow_write AFTER INSERT ON {table}
           DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION slow_write()"
    } else {
        "CREATE TRIGGER slow_write AFTER INSERT ON {table}
           FOR EACH STATEMENT EXECUTE FUNCTION slow_write()"
    };
    case.env
        .exec(&case.target.fill(&format!(
            "CREATE FUNCTION slow_write() RETURNS trigger LANGUAGE plpgsql AS $$
               BEGIN PERFORM pg_sleep({seconds}); RETURN NULL; END $$;
             {trigger}"
        )))
        .await;
}

async fn drop_sleep(case: &Case) {
    case.env
        .exec(
            &case
                .target
                .fill("DROP TRIGGER slow_write ON {table}; DROP FUNCTION slow_write()"),
        )
        .await;
}

#[tokio::test]
#[ignore = "slow group: faults (docs/development.md#slow-test-groups)"]
async fn a_configured_mirror_s_connection_lost_mid_copy_fails_the_run_and_changes_nothing() {
    let case = configured_with_a(TestEnv::new().await).await;
    let before = case.versions().await;
    let mut rows = pairs(crate::helpers::fixtures::A);
    rows.extend(many(200_000));
    case.write(&rows);
    let child = spawn_sync(&case, &[]);
    let pid = session_where(
        &case.env,
        "the run's COPY",
        "state = 'active' AND query ILIKE 'COPY %'",
    )
    .await;
    // Some rows on their way, the COPY still open.
    tokio::time::sleep(Duration::from_millis(300)).await;
    terminate(&case.env, pid).await;
    let run = finished(child).await;
    assert!(run.stderr.contains("staging failed"), "{run:?}");
    failed_and_unchanged(&case, &run, &before).await;
    next_run_syncs(&case, &rows).await;
}

#[tokio::test]
#[ignore = "slow group: faults (docs/development.md#slow-test-groups)"]
async fn a_configured_mirror_s_connection_lost_during_the_merge_fails_the_run_and_changes_nothing()
{
    merge_connection_lost(false).await;
}

#[tokio::test]
#[ignore = "slow group: faults (docs/development.md#slow-test-groups)"]
async fn a_configured_mirror_s_connection_lost_at_commit_fails_the_run_and_changes_nothing() {
    merge_connection_lost(true).await;
}

/// The merge's session ends while its insert (or its `COMMIT`) waits in a
/// trigger of the application.
async fn merge_connection_lost(at_commit: bool) {
    use crate::helpers::fixtures::B;
    let case = configured_with_a(TestEnv::new().await).await;
    sleep_on_insert(&case, at_commit).await;
    let before = case.versions().await;
    case.write(&pairs(B));
    let child = spawn_sync(&case, &[]);
    let filter = if at_commit {
        "wait_event = 'PgSleep' AND query = 'COMMIT'"
    } else {
        "wait_event = 'PgSleep' AND query ILIKE '%INSERT INTO%'"
    };
    let pid = session_where(&case.env, "the merge in the trigger", filter).await;
    terminate(&case.env, pid).await;
    let run = finished(child).await;
    failed_and_unchanged(&case, &run, &before).await;
    drop_sleep(&case).await;
    next_run_syncs(&case, &pairs(B)).await;
}

/// The run lock's own session ends while the merge waits in a trigger: the
/// merge finds its lock gone before the commit and rolls back; the staging
/// table, made on the lost session, is left to the next holder of the lock
/// (docs/mirrors.md#runs, step 8), which drops it.
#[tokio::test]
#[ignore = "slow group: faults (docs/development.md#slow-test-groups)"]
async fn a_configured_mirror_s_lock_session_lost_during_the_merge_never_commits() {
    use crate::helpers::fixtures::B;
    let case = configured_with_a(TestEnv::new().await).await;
    sleep_on_insert_for(&case, false, 3).await;
    let before = case.versions().await;
    case.write(&pairs(B));
    let child = spawn_sync(&case, &[]);
    session_where(
        &case.env,
        "the merge in the trigger",
        "wait_event = 'PgSleep' AND query ILIKE '%INSERT INTO%'",
    )
    .await;
    let lock = session_where(
        &case.env,
        "the run lock's session",
        "pid IN (SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted)",
    )
    .await;
    terminate(&case.env, lock).await;
    let run = finished(child).await;
    run.assert_ended(1, "failed");
    assert!(run.stderr.contains("lost its lock"), "{run:?}");
    assert_eq!(case.versions().await, before, "the table changed: {run:?}");
    case.wait_for_locks_released().await;
    assert_eq!(case.records("failed").await, 1, "{run:?}");
    assert_eq!(case.running_records().await, 0, "{run:?}");
    drop_sleep(&case).await;
    next_run_syncs(&case, &pairs(B)).await;
}

#[tokio::test]
#[ignore = "slow group: faults (docs/development.md#slow-test-groups)"]
async fn a_configured_mirror_s_merge_cancelled_by_statement_timeout_fails_the_run_and_changes_nothing(
) {
    use crate::helpers::fixtures::B;
    let case = configured_with_a(TestEnv::new().await).await;
    sleep_on_insert(&case, false).await;
    let before = case.versions().await;
    case.env
        .exec(&format!(
            "ALTER DATABASE {} SET statement_timeout = '1s'",
            case.env.name
        ))
        .await;
    case.write(&pairs(B));
    let run = case.sync(&[]);
    assert!(
        run.stderr.contains("statement timeout") && run.stderr.contains("rolled back"),
        "{run:?}"
    );
    failed_and_unchanged(&case, &run, &before).await;
    drop_sleep(&case).await;
    next_run_syncs(&case, &pairs(B)).await;
}

#[tokio::test]
#[ignore = "slow group: faults (docs/development.md#slow-test-groups)"]
async fn a_database_restart_during_a_configured_mirror_s_run_leaves_it_whole_and_the_next_run_syncs(
) {
    configured_server_stopped_mid_run("fast").await;
}

#[tokio::test]
#[ignore = "slow group: faults (docs/development.md#slow-test-groups)"]
async fn a_database_crash_during_a_configured_mirror_s_run_leaves_it_whole_and_the_next_run_syncs()
{
    configured_server_stopped_mid_run("immediate").await;
}

/// Stops the database (`pg_ctl stop -m mode`) while a configured mirror's run
/// stages 200,000 rows, then starts it again.
async fn configured_server_stopped_mid_run(mode: &str) {
    let pg = PrivatePg::start_new();
    let case = configured_with_a(TestEnv::on_existing(&pg.url())).await;
    let old = case.rows().await;
    let mut rows = pairs(crate::helpers::fixtures::A);
    rows.extend(many(200_000));
    case.write(&rows);
    let child = spawn_sync(&case, &[]);
    session_where(
        &case.env,
        "the run's COPY",
        "state = 'active' AND query ILIKE 'COPY %'",
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    pg.stop(mode);
    let stopped = Instant::now();
    let run = finished(child).await;
    // Its record is left to the next run's recovery, not waited for over the
    // pool's acquire timeout (60 s, twice: it took 120 s).
    let took = stopped.elapsed();
    assert!(took < Duration::from_secs(20), "took {took:?}: {run:?}");
    assert_eq!(run.code, 1, "{run:?}");
    pg.start();
    let now = case.rows().await;
    assert!(now == old, "the table changed by the interrupted run");
    // The interrupted run's record: failed by the run, else marked
    // interrupted by the next one.
    next_run_syncs(&case, &rows).await;
    assert_eq!(case.records("failed").await, 1, "{run:?}");
    case.wait_for_locks_released().await;
    let staging = MirrorSql::new(&crate::shapes::subscribers_spec()).staging_table();
    let left: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
        .bind(&staging)
        .fetch_one(&case.env.pool)
        .await
        .unwrap();
    assert!(!left, "staging left");
    drop(case);
    drop(pg);
}

/// The network stops forwarding while the configured mirror's `COMMIT` runs
/// (a deferred trigger of the application holds it 2 s): the server commits,
/// the run never hears it and fails within `DB_TIMEOUT`. The one case a run
/// cannot tell (docs/guarantees.md#database-faults): the table is the file,
/// and its record, committed with it, says `synced`; the next run skips the
/// unchanged file.
#[tokio::test]
#[ignore = "slow group: faults (docs/development.md#slow-test-groups)"]
async fn a_configured_mirror_s_commit_whose_answer_is_lost_is_told_by_its_record() {
    use crate::helpers::fixtures::B;
    let case = configured_with_a(TestEnv::new().await).await;
    sleep_on_insert_for(&case, true, 2).await;
    case.write(&pairs(B));
    let proxy = Staller::start().await;
    let child = spawn_sync(
        &case,
        &[
            ("DATABASE_URL", proxy.url(&case.env).as_str()),
            ("DB_TIMEOUT", "2s"),
        ],
    );
    session_where(
        &case.env,
        "the COMMIT in the trigger",
        "wait_event = 'PgSleep' AND query = 'COMMIT'",
    )
    .await;
    proxy.stop();
    let stopped = Instant::now();
    let run = finished(child).await;
    let took = stopped.elapsed();
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stderr.contains("DB_TIMEOUT=2s"), "{run:?}");
    assert!(took < Duration::from_secs(15), "took {took:?}: {run:?}");
    proxy.close();
    case.wait_for_locks_released().await;
    assert_eq!(case.rows().await, case.expected(&pairs(B)));
    let outcome: String = sqlx::query_scalar(
        "SELECT outcome FROM etl_info_schema.sync_runs WHERE mirror = 'subscribers'
          ORDER BY started_at DESC LIMIT 1",
    )
    .fetch_one(&case.env.pool)
    .await
    .unwrap();
    assert_eq!(outcome, "synced", "{run:?}");
    assert_eq!(case.running_records().await, 0);
    drop_sleep(&case).await;
    let next = case.sync(&[]);
    next.assert_ended(0, "skipped");
    assert_eq!(case.rows().await, case.expected(&pairs(B)));
    case.assert_staging_gone("after the next run").await;
}

/// The configured mirror's table (and its key) on a 2 MB tablespace; a file
/// adding 60,000 subscribers fills it during the merge.
#[tokio::test]
#[ignore = "slow group: faults (docs/development.md#slow-test-groups)"]
async fn a_disk_full_during_a_configured_mirror_s_merge_fails_changes_nothing_and_the_next_run_syncs(
) {
    let disk = SmallDisk::mount("2m");
    let pg = PrivatePg::start_new();
    let case = configured_with_a(TestEnv::on_existing(&pg.url())).await;
    case.env
        .exec(&format!(
            "CREATE TABLESPACE small LOCATION '{}'",
            disk.dir.path().display()
        ))
        .await;
    case.env
        .exec(&case.target.fill(
            "ALTER TABLE {table} SET TABLESPACE small; ALTER INDEX crm.{pkey} SET TABLESPACE small",
        ))
        .await;
    let before = case.versions().await;
    let mut rows = pairs(crate::helpers::fixtures::A);
    rows.extend(many(60_000));
    case.write(&rows);
    let run = case.sync(&[]);
    assert!(
        run.stderr.contains("No space left on device") || run.stderr.contains("could not extend"),
        "{run:?}"
    );
    failed_and_unchanged(&case, &run, &before).await;
    disk.resize("64m");
    next_run_syncs(&case, &rows).await;
    drop(case);
    drop(pg);
}
