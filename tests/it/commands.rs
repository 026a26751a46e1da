//! The other commands and the configuration contract: exit codes and messages.

use crate::helpers::*;

#[tokio::test]
async fn invalid_configuration_exits_2_naming_variable_value_and_rule() {
    let env = TestEnv::new().await;
    env.write_csv(csv(&[("ann@example.com", "Ann")]));
    let run = env.run(
        &["sync"],
        &[("DB_MAX_CONNS", "2"), ("WORKER_POOL_GOROUTINES", "3")],
    );
    assert!(
        run.code == 2
            && run.stderr.contains("WORKER_POOL_GOROUTINES=\"3\"")
            && run.stderr.contains("≤ DB_MAX_CONNS"),
        "{run:?}"
    );
    for (var, value, rule) in [
        ("BATCH_SIZE", "0", "≥ 1"),
        ("MAX_DELETE_RATIO", "2", "0.0 to 1.0"),
        ("CSV_FILE", "../outside.csv", "TABLES_DIR"),
        ("CRON_SCHEDULE", "not a schedule", "CRON_SCHEDULE"),
        ("WATCH_DEBOUNCE", "soon", "Go duration"),
    ] {
        let run = env.run(&["sync"], &[(var, value)]);
        assert_eq!(run.code, 2, "{var}={value}: {run:?}");
        assert!(
            run.stderr.contains(var) && run.stderr.contains(value) && run.stderr.contains(rule),
            "{var}: {}",
            run.stderr
        );
    }
    let run = env.run(
        &["sync"],
        &[
            ("DSN", "postgres://app:hunter2@db/a"),
            ("DATABASE_URL", "postgres://app:hunter2@db/b"),
        ],
    );
    assert_eq!(run.code, 2);
    assert!(
        !run.stderr.contains("hunter2"),
        "password printed: {}",
        run.stderr
    );
    let mut cmd = env.command();
    cmd.env_remove("CSV_FILE").arg("sync");
    let run: Run = cmd.output().unwrap().into();
    assert!(run.code == 2 && run.stderr.contains("CSV_FILE"), "{run:?}");
    assert!(
        followers_is_missing(&env).await,
        "a configuration error must not touch the database"
    );
}

async fn followers_is_missing(env: &TestEnv) -> bool {
    env.scalar("SELECT count(*) FROM pg_tables WHERE tablename = 'followers'")
        .await
        == 0
}

#[tokio::test]
async fn usage_errors_exit_2() {
    let env = TestEnv::new().await;
    assert_eq!(env.run(&["sync", "--no-such-flag"], &[]).code, 2);
    assert_eq!(env.run(&["frobnicate"], &[]).code, 2);
}

#[tokio::test]
async fn the_old_dsn_variable_and_a_dotenv_file_configure_the_agent() {
    let env = TestEnv::new().await;
    env.write_csv(csv(&[("ann@example.com", "Ann")]));
    std::fs::write(
        env.dir.path().join(".env"),
        format!("DSN={}\nCSV_FILE=followers.csv\nBATCH_SIZE=7\n", env.url),
    )
    .unwrap();
    let mut cmd = env.command();
    cmd.env_remove("DATABASE_URL")
        .env_remove("CSV_FILE")
        .args(["sync", "--json"]);
    let run: Run = cmd.output().unwrap().into();
    run.assert_ended(0, "synced");
    // The process environment wins over .env.
    let run = env.run(&["sync", "--json"], &[("BATCH_SIZE", "0")]);
    assert_eq!(run.code, 2, "{run:?}");
}

#[tokio::test]
async fn a_toml_config_file_is_a_layer_below_the_environment() {
    let env = TestEnv::new().await;
    env.write_file("other.csv", csv(&[("ann@example.com", "Ann")]));
    let config = env.dir.path().join("agent.toml");
    std::fs::write(&config, "csv_file = \"other.csv\"\nmax_rejects = 3\n").unwrap();
    let mut cmd = env.command();
    cmd.env_remove("CSV_FILE")
        .args(["--config", config.to_str().unwrap(), "sync", "--json"]);
    let run: Run = cmd.output().unwrap().into();
    run.assert_ended(0, "synced");
    std::fs::write(&config, "no_such_setting = 1\n").unwrap();
    let run = env.run(&["--config", config.to_str().unwrap(), "sync"], &[]);
    assert!(
        run.code == 2 && run.stderr.contains("no_such_setting"),
        "{run:?}"
    );
}

#[tokio::test]
async fn check_reports_every_invalid_line_and_duplicates_without_a_database() {
    let env = TestEnv::new().await;
    let path = env
        .write_csv("email,full_name\nann@example.com,Ann\nbad,Bad\nANN@example.com,Ann2\nx@y.z\n");
    let mut cmd = env.command();
    cmd.env("DATABASE_URL", "postgres://nobody@127.0.0.1:1/none")
        .args(["check", path.to_str().unwrap()]);
    let run: Run = cmd.output().unwrap().into();
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stderr.contains("line 3") && run.stderr.contains("line 5"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("ann@example.com") && run.stderr.contains("[2, 4]"),
        "{}",
        run.stderr
    );
    assert!(
        run.stdout
            .contains("4 rows, 2 valid, 2 invalid, 1 duplicates"),
        "{}",
        run.stdout
    );
    env.write_csv(csv(&[("ann@example.com", "Ann")]));
    assert_eq!(env.run(&["check"], &[]).code, 0);
    assert_eq!(env.run(&["check", "/no/such/file.csv"], &[]).code, 2);
}

#[tokio::test]
async fn status_shows_runs_and_table_status_and_fails_when_unreachable() {
    let env = TestEnv::migrated().await;
    env.write_csv(csv(&[("ann@example.com", "Ann")]));
    env.synced(&[]);
    let run = env.run(&["status", "--json"], &[]);
    assert_eq!(run.code, 0, "{run:?}");
    let json = run.json();
    assert_eq!(json["runs"][0]["outcome"], "synced");
    assert_eq!(json["table_status"][0]["table_name"], "followers");
    let down = env.run(
        &["status"],
        &[("DATABASE_URL", "postgres://nobody@127.0.0.1:1/none")],
    );
    assert_eq!(down.code, 1, "{down:?}");
}

#[tokio::test]
async fn migrate_is_idempotent_and_creates_the_schema() {
    let env = TestEnv::new().await;
    assert_eq!(env.run(&["migrate"], &[]).code, 0);
    assert_eq!(env.run(&["migrate"], &[]).code, 0);
    let tables = env
        .scalar("SELECT count(*) FROM information_schema.tables WHERE (table_schema, table_name) IN (('public','followers'),('public','staging_followers'),('etl_info_schema','table_status'),('etl_info_schema','sync_runs'))")
        .await;
    assert_eq!(tables, 4);
}

#[tokio::test]
async fn agents_migrating_the_same_database_at_once_do_not_race() {
    let env = TestEnv::new().await;
    let children: Vec<_> = (0..4)
        .map(|_| env.command().arg("migrate").spawn().unwrap())
        .collect();
    for mut child in children {
        assert!(child.wait().unwrap().success());
    }
    // Each migration recorded exactly once.
    use migration::MigratorTrait;
    let applied = env.scalar("SELECT count(*) FROM seaql_migrations").await;
    assert_eq!(
        usize::try_from(applied).unwrap(),
        migration::Migrator::migrations().len()
    );
}

#[tokio::test]
async fn a_dotenv_in_a_parent_directory_is_not_read() {
    let env = TestEnv::new().await;
    env.write_csv(csv(&[("ann@example.com", "Ann")]));
    std::fs::write(env.dir.path().join(".env"), "BATCH_SIZE=0\n").unwrap();
    let sub = env.dir.path().join("sub");
    std::fs::create_dir(&sub).unwrap();
    let mut cmd = env.command();
    cmd.current_dir(&sub).args(["sync", "--json"]);
    let run: Run = cmd.output().unwrap().into();
    assert_eq!(run.code, 0, "{run:?}");
}

#[tokio::test]
async fn a_malformed_dotenv_or_an_absurd_batch_size_exits_2() {
    let env = TestEnv::new().await;
    env.write_csv(csv(&[("ann@example.com", "Ann")]));
    std::fs::write(
        env.dir.path().join(".env"),
        "GOOD=1\nthis line is not an assignment\nCRON_SCHEDULE=@hourly\n",
    )
    .unwrap();
    let run = env.run(&["sync"], &[]);
    assert!(run.code == 2 && run.stderr.contains(".env"), "{run:?}");
    std::fs::remove_file(env.dir.path().join(".env")).unwrap();
    let run = env.run(&["sync"], &[("BATCH_SIZE", "18446744073709551615")]);
    assert!(
        run.code == 2 && run.stderr.contains("BATCH_SIZE"),
        "{run:?}"
    );
}

#[tokio::test]
async fn the_shipped_env_example_and_an_old_unquoted_dotenv_load() {
    let env = TestEnv::new().await;
    let example =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/.env.example")).unwrap();
    std::fs::write(env.dir.path().join(".env"), example).unwrap();
    let mut cmd = env.command();
    cmd.env_remove("CRON_SCHEDULE")
        .args(["schedule", "--from", "2026-01-01T00:00:00Z", "--count", "1"])
        .env("TZ", "UTC");
    let run: Run = cmd.output().unwrap().into();
    assert_eq!(
        (run.code, run.stdout.as_str()),
        (0, "2026-01-02T00:00:00+00:00\n"),
        "{run:?}"
    );
    std::fs::write(
        env.dir.path().join(".env"),
        "CRON_SCHEDULE=0 */6 * * *   # every six hours\n",
    )
    .unwrap();
    let mut cmd = env.command();
    cmd.args(["schedule", "--from", "2026-01-01T00:00:00Z", "--count", "2"])
        .env("TZ", "UTC");
    let run: Run = cmd.output().unwrap().into();
    assert_eq!(
        run.stdout, "2026-01-01T06:00:00+00:00\n2026-01-01T12:00:00+00:00\n",
        "{run:?}"
    );
}

#[tokio::test]
async fn an_interrupted_sync_is_compensated_and_exits_1() {
    let env = TestEnv::new().await;
    let child = env.sync_mid_run().await;
    let ok = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok);
    let run: Run = child.wait_with_output().unwrap().into();
    run.assert_ended(1, "failed");
    assert!(run.stderr.contains("cancelled"), "{}", run.stderr);
    // It had read rows before it was cancelled, and says so.
    assert!(run.n("rows_read") > 0, "{run:?}");
    let recorded = env
        .scalar("SELECT rows_read FROM etl_info_schema.sync_runs WHERE outcome = 'failed'")
        .await;
    assert_eq!(u64::try_from(recorded).unwrap(), run.n("rows_read"));
    assert_eq!(env.staging_rows().await, 0);
    assert_eq!(env.followers().await, pairs(&[("ann@example.com", "Ann")]));
}

#[tokio::test]
async fn check_reads_any_path_writes_nothing_and_lists_rejects_as_rejects_does() {
    let env = TestEnv::new().await;
    // An export outside TABLES_DIR, before it is copied in.
    let text =
        "email,full_name\nann@example.com,Ann\nbad,\"Bad, B\"\nANN@example.com,Ann2\nx@y.z\n";
    let outside = env.dir.path().join("export.csv");
    std::fs::write(&outside, text).unwrap();
    // No database at all: an unreachable one is never tried.
    let run = env.run(
        &["check", "--json", outside.to_str().unwrap()],
        &[("DATABASE_URL", "postgres://nobody@127.0.0.1:1/none")],
    );
    assert_eq!(run.code, 1, "{run:?}");
    let report = run.json();
    assert_eq!(
        (
            report["rows"].as_u64(),
            report["valid"].as_u64(),
            report["invalid"].as_u64(),
            report["duplicates"].as_u64()
        ),
        (Some(4), Some(2), Some(2), Some(1)),
        "{run:?}"
    );
    assert_eq!(
        report["duplicate_lines"],
        serde_json::json!([{ "email": "ann@example.com", "lines": [2, 4] }])
    );
    // Relative to the working directory too, when TABLES_DIR has no such file.
    let run = env.run(&["check", "export.csv"], &[]);
    assert!(
        run.code == 1 && run.stdout.contains("4 rows, 2 valid, 2 invalid"),
        "{run:?}"
    );
    // The same lines, reasons and texts, under the same keys, as the rejects of a
    // sync of that file.
    env.write_csv(text);
    let sync = env.sync_with(&[], &[("MAX_REJECTS", "10")]);
    assert_eq!(sync.outcome(), "synced", "{sync:?}");
    let rejects = env.run(&["rejects", "--json"], &[]);
    assert_eq!(rejects.code, 0, "{rejects:?}");
    assert_eq!(report["rejects"], rejects.json()["rejects"], "{rejects:?}");
    assert_eq!(report["rejects"][0]["raw"], "bad,\"Bad, B\"");
    assert_eq!(report["rejects"][1]["line"], 5);
    // check wrote nothing: the only run is the sync.
    assert_eq!(
        env.scalar("SELECT count(*) FROM etl_info_schema.sync_runs")
            .await,
        1
    );
    // A valid file outside TABLES_DIR: exit 0, an empty list.
    std::fs::write(&outside, "email,full_name\nann@example.com,Ann\n").unwrap();
    let run = env.run(&["check", "--json", outside.to_str().unwrap()], &[]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(run.json()["rejects"], serde_json::json!([]));
}

#[tokio::test]
async fn rejects_last_is_the_newest_run_that_read_a_file_and_writes_like_every_command() {
    let env = TestEnv::migrated().await;
    env.write_csv(csv(&[("ann@example.com", "Ann")]));
    env.synced(&[]);
    let mut text = String::from("email,full_name\nann@example.com,Ann Lee\n");
    for i in 0..3000 {
        text.push_str(&format!("bad{i},{}\n", "n".repeat(40)));
    }
    env.write_csv(&text);
    let sync = env.sync_with(&["--allow-mass-update"], &[("MAX_REJECTS", "5000")]);
    assert_eq!(sync.outcome(), "synced", "{sync:?}");
    let load_id = sync.json()["load_id"].as_str().unwrap().to_owned();
    // A refused revert (the table drifted) reads no file.
    env.exec("UPDATE followers SET full_name = 'Hand Edited'")
        .await;
    let revert = env.run(&["revert", "--last"], &[]);
    assert_eq!(revert.code, 1, "{revert:?}");
    for args in [&["rejects", "--json"][..], &["rejects", "--last", "--json"]] {
        let run = env.run(args, &[]);
        assert_eq!(run.code, 0, "{args:?}: {run:?}");
        let json = run.json();
        assert_eq!(json["load_id"], load_id.as_str(), "{args:?}: {run:?}");
        assert_eq!(json["rejects"].as_array().map(Vec::len), Some(3000));
    }
    // A reader that goes away early ends the output quietly, with the exit status kept.
    let mut cmd = env.command();
    cmd.arg("rejects")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.code() == Some(0) && stderr.is_empty(),
        "{:?} {stderr}",
        out.status
    );
    // Its errors are JSON lines under LOG_FORMAT=json.
    let run = env.run(
        &["rejects", "0192a0b1-0000-7000-8000-000000000000"],
        &[("LOG_FORMAT", "json")],
    );
    assert_eq!(run.code, 1, "{run:?}");
    let line: serde_json::Value = serde_json::from_str(run.stderr.trim()).expect("a JSON line");
    assert!(
        line["message"]
            .as_str()
            .unwrap()
            .contains("no run with load_id"),
        "{run:?}"
    );
}

#[tokio::test]
async fn runs_pruned_by_retention_take_their_journal_with_them() {
    let env = TestEnv::migrated().await;
    let a = [("ann@example.com", "Ann"), ("bob@example.com", "Bob")];
    let b = [("ann@example.com", "Ann B"), ("bob@example.com", "Bob")];
    let c = [("ann@example.com", "Ann C"), ("bob@example.com", "Bob C")];
    for rows in [&a[..], &b, &c] {
        env.write_csv(csv(rows));
        env.synced(&["--allow-mass-update"]); // renames most followers
    }
    // Two reverts: the first (of C) is journaled and then no longer the run
    // table_status names; C stays the newest synced run, kept by retention.
    for _ in 0..2 {
        let run = env.run(&["revert", "--last"], &[]);
        assert_eq!(run.code, 0, "{run:?}");
    }
    let journal_rows = || {
        env.scalar(
            "SELECT count(*) FROM etl_info_schema.sync_journal j
              WHERE NOT EXISTS (SELECT 1 FROM etl_info_schema.sync_runs r WHERE r.load_id = j.load_id)",
        )
    };
    assert_eq!(journal_rows().await, 0);
    // The next run prunes the runs to the newest one (and the two retention must keep).
    let run = env.sync_with(&[], &[("HISTORY_KEEP_RUNS", "1")]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(
        env.scalar("SELECT count(*) FROM etl_info_schema.sync_runs")
            .await,
        3,
        "the new run, the newest synced run, the run table_status names"
    );
    assert_eq!(journal_rows().await, 0, "no journal rows of pruned runs");
}

#[tokio::test]
async fn a_one_off_run_with_the_journal_off_says_at_warn_that_it_dropped_the_journal() {
    let env = TestEnv::migrated().await;
    env.write_csv(csv(&[("ann@example.com", "Ann")]));
    env.synced(&[]);
    env.write_csv(csv(&[("ann@example.com", "Ann Lee")]));
    env.synced(&["--allow-mass-update"]); // renames the only follower
    env.write_csv(csv(&[
        ("ann@example.com", "Ann Lee"),
        ("bob@example.com", "Bob"),
    ]));
    let run = env.run(
        &["sync", "--log-level", "warn"],
        &[("JOURNAL_KEEP_RUNS", "0")],
    );
    assert_eq!(run.code, 0, "{run:?}");
    assert!(
        run.stderr.contains("WARN")
            && run.stderr.contains("JOURNAL_KEEP_RUNS=0")
            && run.stderr.contains("runs=2"),
        "{run:?}"
    );
    // Once dropped, nothing is left to drop: no warning again.
    env.write_csv(csv(&[("ann@example.com", "Ann")]));
    let run = env.run(&["sync"], &[("JOURNAL_KEEP_RUNS", "0")]);
    assert!(run.code == 0 && run.stderr.is_empty(), "{run:?}");
}
