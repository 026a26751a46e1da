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
    let config = env.dir.path().join("mirrors.toml");
    std::fs::write(&config, CONFIG).unwrap();
    let config = config.to_str().unwrap().to_owned();
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
