//! `sync` and `serve` with configured mirrors (docs/mirrors.md#commands,
//! docs/mirrors.md#serve): every mirror synced, one summary per mirror naming
//! it, the exit code the worst of them, the run records with the mirror's
//! name; in `serve`, one mirror's file change starts only that mirror.

use crate::helpers::*;
use crate::serve::{free_port, http_get};

/// The built-in mirror next to a configured one (a header in another order,
/// an extra column, a nullable one), quick to settle.
const CONFIG: &str = r#"
[[mirror]]
name = "subscribers"
file = "subscribers.csv"
table = "crm.subscribers"
key = ["account_id", "email"]
max_delete_ratio = 0.5
columns = [
  { name = "account_id", type = "bigint" },
  { name = "email",      type = "email" },
  { name = "full_name",  type = "text", source = "Full Name" },
  { name = "plan",       type = "text", nullable = true },
]
"#;

fn config(env: &TestEnv) -> String {
    let path = env.dir.path().join("mirrors.toml");
    std::fs::write(&path, CONFIG).unwrap();
    path.to_str().unwrap().to_owned()
}

const SUBSCRIBERS: &str = "plan,Full Name,email,account_id,extra\n\
                           pro,Ann,ANN@example.com,1,x\n\
                           ,Bob,bob@example.com,1,x\n\
                           free,Ann Two,ann@example.com,2,x\n";

async fn subscribers(env: &TestEnv) -> Vec<(i64, String, String, Option<String>)> {
    sqlx::query_as(
        "SELECT account_id, email, full_name, plan FROM crm.subscribers ORDER BY account_id, email",
    )
    .fetch_all(&env.pool)
    .await
    .unwrap()
}

/// `followers-etl --config PATH ARGS…` with `vars`.
fn with_config(env: &TestEnv, path: &str, args: &[&str], vars: &[(&str, &str)]) -> Run {
    let mut all = vec!["--config", path];
    all.extend_from_slice(args);
    env.run(&all, vars)
}

/// A fresh database with the built-in mirror's file (ann) and the
/// `subscribers` mirror's (`SUBSCRIBERS`, `CONFIG`): the environment and the
/// config file's path.
async fn pair() -> (TestEnv, String) {
    let env = TestEnv::new().await;
    env.write_csv(csv(&[("ann@example.com", "Ann")]));
    env.write_file("subscribers.csv", SUBSCRIBERS);
    let path = config(&env);
    (env, path)
}

/// `pair`, both mirrors synced once.
async fn synced_pair() -> (TestEnv, String) {
    let (env, path) = pair().await;
    let run = with_config(&env, &path, &["sync"], &[]);
    assert_eq!(run.code, 0, "{run:?}");
    (env, path)
}

fn lines(stdout: &str) -> Vec<serde_json::Value> {
    stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

#[tokio::test]
async fn sync_runs_every_mirror_and_prints_one_summary_naming_each() {
    let env = TestEnv::new().await;
    env.write_csv(csv(&[
        ("ann@example.com", "Ann"),
        ("bob@example.com", "Bob"),
    ]));
    env.write_file("subscribers.csv", SUBSCRIBERS);
    let path = config(&env);

    let run = with_config(&env, &path, &["sync"], &[]);
    assert_eq!(run.code, 0, "{run:?}");
    let text: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(text.len(), 2, "{run:?}");
    assert!(
        text[0].starts_with("synced mirror=followers load_id="),
        "{run:?}"
    );
    assert!(
        text[1].starts_with("synced mirror=subscribers load_id="),
        "{run:?}"
    );
    assert!(text[1].contains(" inserted=3 "), "{run:?}");
    assert_eq!(
        subscribers(&env).await,
        vec![
            (
                1,
                "ann@example.com".into(),
                "Ann".into(),
                Some("pro".into())
            ),
            (1, "bob@example.com".into(), "Bob".into(), None),
            (
                2,
                "ann@example.com".into(),
                "Ann Two".into(),
                Some("free".into())
            ),
        ]
    );
    assert_eq!(env.scalar("SELECT count(*) FROM followers").await, 2);
    let recorded: Vec<(String, String, i64)> = sqlx::query_as(
        "SELECT mirror, outcome, inserted FROM etl_info_schema.sync_runs ORDER BY mirror",
    )
    .fetch_all(&env.pool)
    .await
    .unwrap();
    assert_eq!(
        recorded,
        vec![
            ("followers".into(), "synced".into(), 2),
            ("subscribers".into(), "synced".into(), 3),
        ]
    );

    // Unchanged files: both skipped; JSON objects name their mirror.
    let run = with_config(&env, &path, &["sync", "--json"], &[]);
    assert_eq!(run.code, 0, "{run:?}");
    let json = lines(&run.stdout);
    assert_eq!(json.len(), 2, "{run:?}");
    assert_eq!(json[0]["mirror"], "followers");
    assert_eq!(json[1]["mirror"], "subscribers");
    assert!(json.iter().all(|j| j["outcome"] == "skipped"), "{run:?}");

    // --mirror narrows the run to that mirror.
    let run = with_config(
        &env,
        &path,
        &["sync", "--json", "--mirror", "subscribers", "--force"],
        &[],
    );
    assert_eq!(run.code, 0, "{run:?}");
    let json = lines(&run.stdout);
    assert_eq!(json.len(), 1, "{run:?}");
    assert_eq!(json[0]["mirror"], "subscribers");
    assert_eq!(json[0]["outcome"], "synced");
    assert_eq!(json[0]["unchanged"], 3, "{run:?}");
}

#[tokio::test]
async fn a_refused_mirror_fails_the_command_while_the_others_sync() {
    let (env, path) = synced_pair().await;

    // Subscribers loses 2 of 3 rows (over its own max_delete_ratio = 0.5);
    // followers gains one.
    env.write_file(
        "subscribers.csv",
        "account_id,email,Full Name,plan\n1,ann@example.com,Ann,pro\n",
    );
    env.write_csv(csv(&[("ann@example.com", "Ann"), ("cy@example.com", "Cy")]));
    let run = with_config(&env, &path, &["sync", "--json"], &[]);
    assert_eq!(run.code, 1, "the worst of the mirrors: {run:?}");
    let json = lines(&run.stdout);
    assert_eq!(json[0]["mirror"], "followers");
    assert_eq!(json[0]["outcome"], "synced", "{run:?}");
    assert_eq!(json[1]["mirror"], "subscribers");
    assert_eq!(json[1]["outcome"], "refused", "{run:?}");
    // A refusal's counts say what the run would have done.
    assert_eq!(
        (
            json[1]["rows_read"].as_u64(),
            json[1]["deleted"].as_u64(),
            json[1]["journaled"].as_u64()
        ),
        (Some(1), Some(2), Some(0)),
        "{run:?}"
    );
    assert!(run.stderr.contains("max_delete_ratio=0.5"), "{run:?}");
    assert_eq!(env.scalar("SELECT count(*) FROM followers").await, 2);
    assert_eq!(
        subscribers(&env).await.len(),
        3,
        "the refused mirror is unchanged"
    );
    let reason: String = sqlx::query_scalar(
        "SELECT error FROM etl_info_schema.sync_runs WHERE mirror = 'subscribers' AND outcome = 'refused'",
    )
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert!(
        reason.contains("mirror subscribers: the file would delete 2 of 3 rows"),
        "{reason}"
    );

    // The same content again: skipped without reading, still refused (exit 1).
    let again = with_config(
        &env,
        &path,
        &["sync", "--json", "--mirror", "subscribers"],
        &[],
    );
    assert_eq!(again.code, 1, "{again:?}");
    assert_eq!(lines(&again.stdout)[0]["outcome"], "skipped", "{again:?}");
    assert_eq!(lines(&again.stdout)[0]["rows_read"], 0, "{again:?}");
    assert!(
        again.stderr.contains("refused earlier: mirror subscribers"),
        "{again:?}"
    );
    // Approved, it syncs.
    let run = with_config(
        &env,
        &path,
        &["sync", "--mirror", "subscribers", "--allow-mass-delete"],
        &[],
    );
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(subscribers(&env).await.len(), 1);
}

#[tokio::test]
async fn rejects_of_a_mirror_are_recorded_with_the_column_named() {
    let env = TestEnv::new().await;
    env.write_csv(csv(&[("ann@example.com", "Ann")]));
    env.write_file(
        "subscribers.csv",
        "account_id,email,Full Name,plan\n1,ann@example.com,Ann,\nnot-a-number,bob@example.com,Bob,\n",
    );
    let path = config(&env);
    let run = with_config(
        &env,
        &path,
        &["sync", "--json", "--mirror", "subscribers"],
        &[],
    );
    assert_eq!(run.code, 1, "MAX_REJECTS=0: refused: {run:?}");
    assert!(run.stderr.contains("line 3"), "{run:?}");
    assert!(run.stderr.contains("account_id"), "{run:?}");
    let (line, reason): (i64, String) = sqlx::query_as(
        "SELECT r.line_no, r.reason FROM etl_info_schema.sync_rejects r
           JOIN etl_info_schema.sync_runs s USING (load_id) WHERE s.mirror = 'subscribers'",
    )
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert_eq!(line, 3);
    assert!(reason.starts_with("column account_id: "), "{reason}");
    assert_eq!(
        env.scalar("SELECT count(*) FROM pg_class WHERE oid = to_regclass('crm.subscribers')")
            .await,
        0,
        "a refused file changes nothing: its first run creates no table"
    );
    // `rejects --mirror` reports them; the mirror is required next to another.
    let run = with_config(
        &env,
        &path,
        &["rejects", "--json", "--mirror", "subscribers"],
        &[],
    );
    assert_eq!(run.code, 0, "{run:?}");
    let report = run.json();
    assert_eq!(report["rejected"], 1, "{report}");
    assert_eq!(report["rejects"][0]["line"], 3, "{report}");
    let run = with_config(&env, &path, &["rejects"], &[]);
    assert_eq!(run.code, 2, "{run:?}");
    assert!(
        run.stderr
            .contains("pass --mirror NAME (the mirrors are: followers, subscribers)"),
        "{run:?}"
    );
}

#[tokio::test]
async fn serve_starts_only_the_mirror_whose_file_changed() {
    let (env, path) = pair().await;
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let agent = env.spawn_agent(&[("CONFIG_FILE", path.as_str()), ("HTTP_ADDR", addr.as_str())]);
    eventually_logged(&agent, 30, "both mirrors' start-up syncs", || async {
        let synced: Option<i64> = sqlx::query_scalar(
            "SELECT count(*) FROM etl_info_schema.sync_runs WHERE trigger = 'start' AND outcome = 'synced'",
        )
        .fetch_one(&env.pool)
        .await
        .ok();
        (synced == Some(2)).then_some(())
    })
    .await;

    env.write_file(
        "subscribers.csv",
        "account_id,email,Full Name,plan\n1,ann@example.com,Ann,pro\n1,bob@example.com,Bob,\n2,ann@example.com,Ann Two,free\n3,cy@example.com,Cy,\n",
    );
    eventually_logged(&agent, 30, "the subscribers' watch sync", || async {
        (env.scalar("SELECT count(*) FROM crm.subscribers").await == 4).then_some(())
    })
    .await;
    let watch: Vec<(String, String)> = sqlx::query_as(
        "SELECT mirror, outcome FROM etl_info_schema.sync_runs WHERE trigger = 'watch'",
    )
    .fetch_all(&env.pool)
    .await
    .unwrap();
    // A write may end in more than one event: later runs find it unchanged.
    assert!(
        watch.iter().all(|(mirror, _)| mirror == "subscribers")
            && watch
                .iter()
                .filter(|(_, outcome)| outcome == "synced")
                .count()
                == 1,
        "only the changed mirror ran: {watch:?}; log:\n{}",
        agent.log_text()
    );
    // The run's record commits with its merge; its metrics follow the run's end.
    let series = [
        "followers_etl_runs_total{outcome=\"synced\",mirror=\"subscribers\"} 2",
        "followers_etl_runs_total{outcome=\"synced\",mirror=\"followers\"} 1",
        "followers_etl_run_in_progress{mirror=\"subscribers\"} 0",
        "followers_etl_refused{mirror=\"followers\"} 0",
    ];
    eventually_logged(&agent, 10, "the labelled series", || async {
        http_get(port, "/metrics").filter(|m| series.iter().all(|s| m.contains(s)))
    })
    .await;
    assert!(
        agent.log_text().contains("sync{mirror=subscribers"),
        "every event of a mirror's run names it: {}",
        agent.log_text()
    );
}

#[tokio::test]
async fn serve_watches_a_glob_mirror_s_directory() {
    let env = TestEnv::new().await;
    env.write_csv(csv(&[("ann@example.com", "Ann")]));
    std::fs::create_dir(env.tables().join("parts")).unwrap();
    env.write_file("parts/part-1.csv", "id,name\n1,One\n");
    env.write_file("parts/part-2.csv", "id,name\n2,Two\n");
    let path = env.write_config(
        "parts.toml",
        r#"
[[mirror]]
name = "parts"
files = "parts/part-*.csv"
table = "crm.parts"
key = ["id"]
max_delete_ratio = 1.0
columns = [{ name = "id", type = "bigint" }, { name = "name", type = "text" }]
"#,
    );
    let agent = env.spawn_agent(&[("CONFIG_FILE", path.as_str())]);
    let rows = |n: i64| {
        let pool = env.pool.clone();
        move || {
            let pool = pool.clone();
            async move {
                let count: Option<i64> = sqlx::query_scalar("SELECT count(*) FROM crm.parts")
                    .fetch_one(&pool)
                    .await
                    .ok();
                (count == Some(n)).then_some(())
            }
        }
    };
    eventually_logged(&agent, 30, "the start-up sync of two parts", rows(2)).await;
    // A temporary name beside them is no change; a third part renamed into place is.
    env.write_file("parts/.part-3.csv.tmp", "id,name\n3,Three\n");
    std::fs::rename(
        env.tables().join("parts/.part-3.csv.tmp"),
        env.tables().join("parts/part-3.csv"),
    )
    .unwrap();
    eventually_logged(&agent, 30, "the third part synced by the watch", rows(3)).await;
    std::fs::remove_file(env.tables().join("parts/part-1.csv")).unwrap();
    eventually_logged(&agent, 30, "a removed part is a change", rows(2)).await;
    let watch = env.runs_by("watch").await;
    assert!(
        watch
            .iter()
            .filter(|(outcome, _)| outcome == "synced")
            .count()
            >= 2,
        "{watch:?}; log:\n{}",
        agent.log_text()
    );
}

#[tokio::test]
async fn an_approved_sync_waits_for_a_busy_mirror_then_is_refused_and_a_plain_one_skips() {
    let (env, path) = synced_pair().await;
    // Another agent's run of the mirror: its run lock, held by a session here.
    let spec = followers_etl::mirror::from_toml_str(CONFIG)
        .unwrap()
        .remove(0);
    let (class, key) = followers_etl::mirror::run::mirror_lock_key(&spec);
    let mut holder = env.pool.acquire().await.unwrap();
    sqlx::query("SELECT pg_advisory_lock($1, $2)")
        .bind(class)
        .bind(key)
        .execute(&mut *holder)
        .await
        .unwrap();
    let plain = with_config(
        &env,
        &path,
        &["sync", "--json", "--mirror", "subscribers"],
        &[],
    );
    assert_eq!(plain.code, 0, "{plain:?}");
    assert_eq!(lines(&plain.stdout)[0]["outcome"], "skipped", "{plain:?}");
    let started = std::time::Instant::now();
    let approved = with_config(
        &env,
        &path,
        &["sync", "--json", "--mirror", "subscribers", "--force"],
        &[("RUN_LOCK_WAIT", "1s")],
    );
    assert_eq!(approved.code, 1, "{approved:?}");
    assert_eq!(
        lines(&approved.stdout)[0]["outcome"],
        "refused",
        "{approved:?}"
    );
    assert!(
        approved
            .stderr
            .contains("held its run lock for RUN_LOCK_WAIT=1s"),
        "{approved:?}"
    );
    assert!(
        started.elapsed() >= std::time::Duration::from_secs(1),
        "it waited"
    );
}

#[tokio::test]
async fn an_incompatible_existing_table_stops_sync_and_serve_at_start_up() {
    let env = TestEnv::new().await;
    env.write_csv(csv(&[("ann@example.com", "Ann")]));
    env.write_file("subscribers.csv", SUBSCRIBERS);
    env.exec("CREATE SCHEMA crm").await;
    env.exec(
        "CREATE TABLE crm.subscribers (account_id bigint, email text, full_name text, plan integer,
                                       PRIMARY KEY (account_id, email))",
    )
    .await;
    let path = config(&env);
    for args in [&["sync"][..], &["serve"][..]] {
        let mut all = vec!["--config", path.as_str()];
        all.extend_from_slice(args);
        let run = env.run(&all, &[("RUN_ON_START", "false")]);
        assert_eq!(run.code, 2, "{args:?}: {run:?}");
        assert!(
            run.stderr.contains("mirror subscribers"),
            "{args:?}: {run:?}"
        );
        assert!(run.stderr.contains("plan"), "{args:?}: {run:?}");
        assert!(
            run.stdout.is_empty(),
            "nothing was synced: {args:?}: {run:?}"
        );
    }
    assert_eq!(env.scalar("SELECT count(*) FROM followers").await, 0);
}

#[tokio::test]
async fn a_glob_mirror_s_rejects_name_their_part_and_repeated_keys_are_logged() {
    let env = TestEnv::new().await;
    std::fs::create_dir(env.tables().join("parts")).unwrap();
    env.write_file("parts/part-1.csv", "id,name\n1,One\n2,Two\n");
    env.write_file("parts/part-2.csv", "id,name\n2,Two again\nx,Bad\n");
    let path = env.write_config(
        "parts.toml",
        r#"
max_rejects = 1
[[mirror]]
name = "parts"
files = "parts/part-*.csv"
table = "crm.parts"
key = ["id"]
columns = [{ name = "id", type = "bigint" }, { name = "name", type = "text" }]
"#,
    );
    let run = with_config(&env, &path, &["sync", "--json"], &[("CSV_FILE", "")]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(
        run.stderr.contains("duplicate key; the last line wins"),
        "{run:?}"
    );
    assert!(run.stderr.contains("part-2.csv: line 2"), "{run:?}");
    let rejects = with_config(&env, &path, &["rejects", "--json"], &[("CSV_FILE", "")]);
    assert_eq!(rejects.code, 0, "{rejects:?}");
    let report = rejects.json();
    assert!(
        report["rejects"][0]["reason"]
            .as_str()
            .unwrap()
            .starts_with("part-2.csv: column id: "),
        "{report}"
    );
    assert_eq!(
        env.scalar("SELECT count(*) FROM crm.parts WHERE id = 2 AND name = 'Two again'")
            .await,
        1
    );
}

#[tokio::test]
async fn a_dry_run_of_a_mirror_plans_with_the_real_diff_and_changes_nothing() {
    let (env, path) = pair().await;
    assert_eq!(env.run(&["migrate"], &[]).code, 0);
    let table = "SELECT to_regclass('crm.subscribers') IS NOT NULL";
    // No table yet: every row would be inserted, and the table is not created.
    let run = with_config(
        &env,
        &path,
        &["sync", "--dry-run", "--json", "--mirror", "subscribers"],
        &[],
    );
    assert_eq!(run.code, 0, "{run:?}");
    let plan = &lines(&run.stdout)[0];
    assert_eq!(plan["outcome"], "dry_run", "{run:?}");
    assert_eq!(plan["inserted"], 3, "{run:?}");
    assert_eq!(
        plan["journaled"], 3,
        "what a real run would journal: {run:?}"
    );
    assert_eq!(plan["would_refuse"], false, "{run:?}");
    let created: bool = sqlx::query_scalar(table)
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert!(!created, "a dry run creates no table");

    assert_eq!(with_config(&env, &path, &["sync"], &[]).code, 0);
    let state = "SELECT (SELECT count(*) FROM crm.subscribers)
                      + (SELECT count(*) FROM etl_info_schema.mirror_journal)
                      + (SELECT count(*) FROM etl_info_schema.mirror_runs)";
    let before = env.scalar(state).await;
    let status: Option<uuid::Uuid> = sqlx::query_scalar(
        "SELECT last_load_id FROM etl_info_schema.mirror_status WHERE mirror = 'subscribers'",
    )
    .fetch_one(&env.pool)
    .await
    .unwrap();
    // Two of three rows gone and one renamed: the guard would refuse.
    env.write_file(
        "subscribers.csv",
        "account_id,email,Full Name,plan\n1,ann@example.com,Ann Renamed,pro\n",
    );
    let run = with_config(&env, &path, &["sync", "--dry-run", "--json"], &[]);
    assert_eq!(run.code, 0, "{run:?}");
    let plans = lines(&run.stdout);
    assert_eq!(plans[1]["mirror"], "subscribers");
    assert_eq!(plans[1]["outcome"], "dry_run", "{run:?}");
    assert_eq!(
        (plans[1]["updated"].as_u64(), plans[1]["deleted"].as_u64()),
        (Some(1), Some(2)),
        "{run:?}"
    );
    assert_eq!(plans[1]["would_refuse"], true, "{run:?}");
    assert_eq!(plans[1]["journaled"], 3, "{run:?}");
    assert!(
        plans[1]["would_refuse_reason"]
            .as_str()
            .unwrap()
            .contains("would delete 2 of 3 rows"),
        "{run:?}"
    );
    assert_eq!(env.scalar(state).await, before, "nothing changed");
    let after: Option<uuid::Uuid> = sqlx::query_scalar(
        "SELECT last_load_id FROM etl_info_schema.mirror_status WHERE mirror = 'subscribers'",
    )
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert_eq!(
        after, status,
        "the mirror's status is as the last sync left it"
    );
    assert_eq!(
        env.scalar("SELECT count(*) FROM crm.subscribers WHERE full_name = 'Ann Renamed'")
            .await,
        0
    );
    // Content a revert holds back: the dry run says so, as the real run would.
    let four = "account_id,email,Full Name,plan\n1,ann@example.com,Ann,pro\n1,bob@example.com,Bob,\n2,ann@example.com,Ann Two,free\n3,cy@example.com,Cy,\n";
    env.write_file("subscribers.csv", four);
    assert_eq!(
        with_config(&env, &path, &["sync", "--mirror", "subscribers"], &[]).code,
        0
    );
    let reverted = with_config(
        &env,
        &path,
        &["revert", "--last", "--mirror", "subscribers"],
        &[],
    );
    assert_eq!(reverted.code, 0, "{reverted:?}");
    // The revert is a run of the mirror, and the run it undid says so.
    let (revert, undone): (uuid::Uuid, Option<uuid::Uuid>) = sqlx::query_as(
        "SELECT r.load_id, (SELECT s.reverted_by FROM etl_info_schema.sync_runs s
                             WHERE s.mirror = 'subscribers' AND s.outcome = 'synced'
                             ORDER BY s.started_at DESC LIMIT 1)
           FROM etl_info_schema.sync_runs r
          WHERE r.mirror = 'subscribers' AND r.trigger = 'revert' AND r.outcome = 'reverted'",
    )
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert_eq!(undone, Some(revert));
    let run = with_config(
        &env,
        &path,
        &["sync", "--dry-run", "--json", "--mirror", "subscribers"],
        &[],
    );
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(lines(&run.stdout)[0]["outcome"], "skipped", "{run:?}");
    assert!(run.stderr.contains("held back"), "{run:?}");
}

/// A glob's files are listed again under the run lock: a part added while the
/// others settled (its writer not done: no ready marker yet) is not read.
#[tokio::test]
async fn a_part_added_while_the_others_settle_is_not_read() {
    let env = TestEnv::new().await;
    env.write_csv(csv(&[("ann@example.com", "Ann")]));
    std::fs::create_dir(env.tables().join("parts")).unwrap();
    for p in [1, 2] {
        env.write_file(
            &format!("parts/part-{p}.csv"),
            format!("id,name\n{p},P{p}\n"),
        );
        env.write_file(&format!("parts/part-{p}.csv.ready"), "");
    }
    let path = env.write_config(
        "parts.toml",
        r#"
[[mirror]]
name = "parts"
files = "parts/part-*.csv"
table = "crm.parts"
key = ["id"]
columns = [{ name = "id", type = "bigint" }, { name = "name", type = "text" }]
"#,
    );
    // The run has listed its two parts once it waits for them to settle.
    let log = env.dir.path().join("settling.log");
    let mut cmd = env.command();
    cmd.args(["--config", &path, "sync", "--json", "--mirror", "parts"])
        .env("READY_MARKER", ".ready")
        .env("WATCH_DEBOUNCE", "2s")
        .env("LOG_LEVEL", "info")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap());
    let mut child = cmd.spawn().unwrap();
    eventually(30, "the run settling its two parts", || async {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("still being written; waiting")
            .then_some(())
    })
    .await;
    env.write_file("parts/part-3.csv", "id,name\n3,P3\n");
    let status = child.wait().unwrap();
    let stderr = std::fs::read_to_string(&log).unwrap();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("the source changed after it settled"),
        "{stderr}"
    );
    let created: bool = sqlx::query_scalar("SELECT to_regclass('crm.parts') IS NOT NULL")
        .fetch_one(&env.pool)
        .await
        .unwrap();
    if created {
        assert_eq!(
            env.scalar("SELECT count(*) FROM crm.parts").await,
            0,
            "nothing read"
        );
    }
    // Once its marker is there, the next run reads the three.
    env.write_file("parts/part-3.csv.ready", "");
    let run = with_config(
        &env,
        &path,
        &["sync", "--json", "--mirror", "parts"],
        &[("READY_MARKER", ".ready")],
    );
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(env.scalar("SELECT count(*) FROM crm.parts").await, 3);
}

/// A glob whose directory does not exist yet is not watched; `serve` goes on
/// with the other mirrors.
#[tokio::test]
async fn serve_goes_on_when_a_glob_s_directory_is_missing() {
    let env = TestEnv::new().await;
    env.write_csv(csv(&[("ann@example.com", "Ann")]));
    env.write_file("subscribers.csv", SUBSCRIBERS);
    let path = env.write_config(
        "both.toml",
        format!(
            r#"{CONFIG}
[[mirror]]
name = "parts"
files = "exports/part-*.csv"
table = "crm.parts"
key = ["id"]
columns = [{{ name = "id", type = "bigint" }}, {{ name = "name", type = "text" }}]
"#
        )
        .as_str(),
    );
    let mut agent = env.spawn_agent(&[("CONFIG_FILE", path.as_str())]);
    eventually_logged(&agent, 30, "the other mirrors' start-up syncs", || async {
        let synced: Option<i64> = sqlx::query_scalar(
            "SELECT count(*) FROM etl_info_schema.sync_runs WHERE trigger = 'start' AND outcome = 'synced'",
        )
        .fetch_one(&env.pool)
        .await
        .ok();
        (synced == Some(2)).then_some(())
    })
    .await;
    assert!(agent.alive(), "{}", agent.log_text());
    assert!(
        agent
            .log_text()
            .contains("the glob's directory cannot be watched"),
        "{}",
        agent.log_text()
    );
}

/// docs/mirrors.md#commands: a configured mirror's synced run records its
/// journal rows in `sync_runs.journaled` as the built-in mirror's does (NULL
/// with the journal off), so `status --json` reports them as `sync` printed
/// them.
#[tokio::test]
async fn a_mirror_s_synced_run_records_its_journal_rows_as_the_built_in_one_does() {
    let (env, path) = pair().await;
    let run = with_config(&env, &path, &["sync", "--json"], &[]);
    assert_eq!(run.code, 0, "{run:?}");
    let synced = &lines(&run.stdout)[1];
    assert_eq!(synced["mirror"], "subscribers");
    assert_eq!(synced["journaled"], 3, "{run:?}");
    let load_id = synced["load_id"].as_str().unwrap();
    let journaled = |load_id: String| {
        let pool = env.pool.clone();
        async move {
            sqlx::query_scalar::<_, Option<i64>>(
                "SELECT journaled FROM etl_info_schema.sync_runs WHERE load_id = $1::uuid",
            )
            .bind(load_id)
            .fetch_one(&pool)
            .await
            .unwrap()
        }
    };
    assert_eq!(journaled(load_id.to_owned()).await, Some(3));
    let status = with_config(
        &env,
        &path,
        &["status", "--json", "--mirror", "subscribers"],
        &[],
    );
    assert_eq!(status.code, 0, "{status:?}");
    let mirror = &status.json()["mirrors"][0];
    assert_eq!(mirror["last_run"]["load_id"], load_id, "{status:?}");
    assert_eq!(mirror["last_run"]["journaled"], 3, "{status:?}");
    assert_eq!(mirror["runs"][0]["journaled"], 3, "{status:?}");
    // With the journal off: no journal, as for the built-in mirror.
    env.write_file(
        "subscribers.csv",
        "account_id,email,Full Name,plan\n1,ann@example.com,Ann,pro\n",
    );
    let run = with_config(
        &env,
        &path,
        &[
            "sync",
            "--json",
            "--mirror",
            "subscribers",
            "--allow-mass-delete",
        ],
        &[("JOURNAL_KEEP_RUNS", "0")],
    );
    assert_eq!(run.code, 0, "{run:?}");
    let synced = &lines(&run.stdout)[0];
    assert_eq!(synced["outcome"], "synced", "{run:?}");
    assert_eq!(
        journaled(synced["load_id"].as_str().unwrap().to_owned()).await,
        None
    );
}

/// A first run SIGKILLed while it waits at its staging table (after its table
/// check and hash) leaves no table and no schema: the merge creates them, in
/// its transaction (docs/mirrors.md#runs). The mirror then renamed in the
/// configuration (the same table), the next run recovers the killed run's
/// record as interrupted (recovery is the table's, as the run lock is) and
/// creates and fills the table.
#[tokio::test]
async fn a_killed_first_run_leaves_no_table_and_the_renamed_mirror_recovers_its_run() {
    let env = TestEnv::migrated().await;
    env.write_csv(csv(&[("ann@example.com", "Ann")]));
    env.write_file("subscribers.csv", SUBSCRIBERS);
    let path = config(&env);
    let spec = followers_etl::mirror::from_toml_str(CONFIG)
        .unwrap()
        .remove(0);
    let hold = StagingHold::take(&env, &spec).await;
    let mut child = env
        .command()
        .args(["--config", &path, "sync", "--mirror", "subscribers"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn sync");
    hold.release(|| {
        child.kill().unwrap();
        child.wait().unwrap();
    })
    .await;
    // The killed run's lock session ends once it finds its client gone.
    eventually(30, "the killed run's run lock released", || async {
        let held = env
            .scalar(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'
                  AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
            )
            .await;
        (held == 0).then_some(())
    })
    .await;
    let absent = |name: &'static str| {
        let pool = env.pool.clone();
        async move {
            sqlx::query_scalar::<_, bool>("SELECT to_regclass($1) IS NULL")
                .bind(name)
                .fetch_one(&pool)
                .await
                .unwrap()
        }
    };
    assert!(
        absent("crm.subscribers").await,
        "the killed run created its table"
    );
    assert_eq!(
        env.scalar("SELECT count(*) FROM pg_namespace WHERE nspname = 'crm'")
            .await,
        0,
        "the killed run created its schema"
    );
    let (killed, outcome): (uuid::Uuid, String) = sqlx::query_as(
        "SELECT load_id, outcome FROM etl_info_schema.sync_runs WHERE mirror = 'subscribers'",
    )
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert_eq!(outcome, "running");
    // `status` before any run created the table (nor its schema): no rows yet.
    let status = with_config(
        &env,
        &path,
        &["status", "--json", "--mirror", "subscribers"],
        &[],
    );
    let json = status.json();
    let shown = &json["mirrors"][0];
    assert_eq!(shown["mirror"], "subscribers", "{status:?}");
    assert!(shown["rows"].is_null(), "{status:?}");
    assert_eq!(shown["last_run"]["outcome"], "running", "{status:?}");
    let status = with_config(&env, &path, &["status", "--mirror", "subscribers"], &[]);
    assert!(
        status
            .stdout
            .contains("rows:          none (the table is created by the first sync that merges)"),
        "{status:?}"
    );

    std::fs::write(
        &path,
        CONFIG.replace(r#"name = "subscribers""#, r#"name = "members""#),
    )
    .unwrap();
    let run = with_config(&env, &path, &["sync", "--mirror", "members"], &[]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(
        run.stdout.starts_with("synced mirror=members ") && run.stdout.contains(" inserted=3 "),
        "{run:?}"
    );
    let (outcome, error): (String, Option<String>) =
        sqlx::query_as("SELECT outcome, error FROM etl_info_schema.sync_runs WHERE load_id = $1")
            .bind(killed)
            .fetch_one(&env.pool)
            .await
            .unwrap();
    assert_eq!(outcome, "failed");
    assert!(
        error
            .as_deref()
            .is_some_and(|e| e.starts_with("interrupted")),
        "{error:?}"
    );
    assert_eq!(subscribers(&env).await.len(), 3);
}

/// A run that fails in its merge (the application's unique index refuses an
/// insert) reports the rows it read in its summary and record, nothing applied.
#[tokio::test]
async fn a_failed_merge_reports_the_rows_it_read() {
    let (env, path) = pair().await;
    let run = with_config(&env, &path, &["sync", "--mirror", "subscribers"], &[]);
    assert_eq!(run.code, 0, "{run:?}");
    env.exec("CREATE UNIQUE INDEX subscribers_name ON crm.subscribers (full_name)")
        .await;
    env.write_file(
        "subscribers.csv",
        format!("{SUBSCRIBERS}pro,Ann,cy@example.com,3,x\n"),
    );
    let run = with_config(
        &env,
        &path,
        &["sync", "--json", "--mirror", "subscribers"],
        &[],
    );
    assert_eq!(run.code, 1, "{run:?}");
    let json = lines(&run.stdout);
    assert_eq!(json.len(), 1, "{run:?}");
    assert_eq!(json[0]["outcome"], "failed", "{run:?}");
    assert_eq!(json[0]["rows_read"], 4, "{run:?}");
    assert_eq!(json[0]["inserted"], 0, "{run:?}");
    let (outcome, rows_read): (String, i64) = sqlx::query_as(
        "SELECT outcome, rows_read FROM etl_info_schema.sync_runs
          WHERE mirror = 'subscribers' ORDER BY started_at DESC LIMIT 1",
    )
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert_eq!((outcome.as_str(), rows_read), ("failed", 4));
    assert_eq!(subscribers(&env).await.len(), 3, "nothing applied");
}

/// The run lock's session also runs the staging DDL (docs/mirrors.md#runs): a
/// statement there that waits (here for another session's lock on the staging
/// table, three times DB_TIMEOUT) is a slow statement, not a database that
/// stopped answering. The ping measures the session (the server answers, the
/// session is running the statement), so the run goes on once the lock is
/// released, and syncs.
#[tokio::test]
async fn a_staging_statement_waiting_on_the_lock_session_is_not_a_stalled_database() {
    let (env, path) = synced_pair().await;
    env.write_file(
        "subscribers.csv",
        format!("{SUBSCRIBERS}pro,Cy,cy@example.com,3,x\n"),
    );
    let spec = followers_etl::mirror::from_toml_str(CONFIG)
        .unwrap()
        .remove(0);
    let hold = StagingHold::take(&env, &spec).await;
    let mut cmd = env.command();
    cmd.args([
        "--config",
        &path,
        "sync",
        "--json",
        "--mirror",
        "subscribers",
    ])
    .env("DB_TIMEOUT", "1s")
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::piped());
    let child = cmd.spawn().unwrap();
    hold.release(|| std::thread::sleep(std::time::Duration::from_secs(3)))
        .await;
    let run: Run = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap().into())
        .await
        .unwrap();
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(lines(&run.stdout)[0]["outcome"], "synced", "{run:?}");
    assert_eq!(subscribers(&env).await.len(), 4);
}

/// docs/mirrors.md#an-applications-own-publicfollowers: with only configured
/// mirrors (`CSV_FILE` unset), an application's own `public.followers` of
/// another shape neither blocks the migrations nor is touched by them (no
/// email canonicalised, no trigger installed), and the mirrors sync; once
/// `CSV_FILE` is set, the built-in mirror refuses the table by name, still
/// changing nothing in it.
#[tokio::test]
async fn an_application_s_own_followers_table_is_left_alone_without_the_built_in_mirror() {
    let env = TestEnv::new().await;
    env.exec(
        "CREATE TABLE public.followers (id serial PRIMARY KEY, email text, followed_id int NOT NULL);
         INSERT INTO public.followers (email, followed_id) VALUES ('  Ann@Example.COM', 7)",
    )
    .await;
    let table = || async {
        sqlx::query_as::<_, (i32, String, i32)>(
            "SELECT id, email, followed_id FROM public.followers ORDER BY id",
        )
        .fetch_all(&env.pool)
        .await
        .unwrap()
    };
    let before = table().await;
    env.write_file("subscribers.csv", SUBSCRIBERS);
    let path = config(&env);
    let run = with_config(&env, &path, &["sync"], &[("CSV_FILE", "")]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(
        run.stdout.starts_with("synced mirror=subscribers "),
        "{run:?}"
    );
    assert_eq!(subscribers(&env).await.len(), 3);
    assert_eq!(table().await, before, "the application's table was changed");
    assert_eq!(
        env.scalar(
            "SELECT count(*) FROM pg_trigger WHERE tgrelid = 'public.followers'::regclass AND NOT tgisinternal"
        )
        .await,
        0,
        "a trigger was installed on the application's table"
    );
    // The built-in mirror, once asked for, names the table and what differs.
    env.write_csv(csv(&[("ann@example.com", "Ann")]));
    let builtin = with_config(&env, &path, &["sync"], &[]);
    assert_ne!(builtin.code, 0, "{builtin:?}");
    assert!(
        builtin.stderr.contains("column full_name is missing"),
        "{builtin:?}"
    );
    assert_eq!(table().await, before, "the application's table was changed");
}

/// docs/sync.md#dry-run: a configured mirror's dry run takes no writer lock
/// on its table. An application's write transaction left open on the table
/// (an uncommitted UPDATE) neither makes the dry run wait past
/// `LOCK_WAIT_TIMEOUT` nor is made to wait by it; the real sync does wait
/// (and is refused as busy).
#[tokio::test]
async fn a_mirror_s_dry_run_makes_no_writer_wait_and_waits_for_none() {
    let (env, path) = synced_pair().await;
    env.write_file(
        "subscribers.csv",
        format!("{SUBSCRIBERS}pro,Cy,cy@example.com,3,x\n"),
    );
    let mut app = env.pool.begin().await.unwrap();
    sqlx::query("UPDATE crm.subscribers SET plan = plan WHERE account_id = 2")
        .execute(&mut *app)
        .await
        .unwrap();
    let vars = [("LOCK_WAIT_TIMEOUT", "1s")];
    let plan = with_config(
        &env,
        &path,
        &["sync", "--dry-run", "--json", "--mirror", "subscribers"],
        &vars,
    );
    assert_eq!(plan.code, 0, "{plan:?}");
    let plan = &lines(&plan.stdout)[0];
    assert_eq!(plan["outcome"], "dry_run", "{plan}");
    assert_eq!(plan["inserted"], 1, "{plan}");
    let real = with_config(&env, &path, &["sync", "--mirror", "subscribers"], &vars);
    assert_eq!(real.code, 1, "the real sync waits for the writer: {real:?}");
    app.rollback().await.unwrap();
    assert_eq!(subscribers(&env).await.len(), 3);
}
