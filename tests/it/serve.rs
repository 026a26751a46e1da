//! `serve`: the triggers (start-up, file watch, cron), coalescing, the HTTP
//! endpoints, and a clean stop. Waits are on observable state (rows, run records).

use crate::helpers::*;
use std::io::Write;
use std::time::Duration;

pub(crate) const ABC: &[(&str, &str)] = &[
    ("ann@example.com", "Ann"),
    ("bob@example.com", "Bob"),
    ("cy@example.com", "Cy"),
];

pub(crate) async fn wait_for_followers(env: &TestEnv, agent: &Agent, expected: &[Follower]) {
    let what = format!("followers == {expected:?}");
    eventually_logged(agent, 30, &what, || async {
        (env.scalar("SELECT count(*) FROM pg_tables WHERE tablename = 'followers'")
            .await
            == 1
            && env.followers().await == expected)
            .then_some(())
    })
    .await;
}

/// Waits until the agent has applied migrations (`sync_runs` exists).
pub(crate) async fn wait_ready(env: &TestEnv) {
    eventually(30, "migrations applied", || async {
        (env.scalar(
            "SELECT count(*) FROM information_schema.tables WHERE table_name = 'sync_runs'",
        )
        .await
            == 1)
            .then_some(())
    })
    .await;
}

#[tokio::test]
#[ignore = "slow group: serve (docs/development.md#slow-test-groups)"]
async fn serve_syncs_once_at_start_up_and_stops_cleanly_on_sigterm() {
    let env = TestEnv::new().await;
    env.write_csv(csv(ABC));
    let mut agent = env.spawn_agent(&[("WATCH", "false")]);
    wait_for_followers(&env, &agent, &pairs(ABC)).await;
    assert_eq!(env.runs_by("start").await, vec![("synced".to_string(), 3)]);
    assert_eq!(agent.terminate().await, 0, "{}", agent.log_text());
}

#[tokio::test]
#[ignore = "slow group: serve (docs/development.md#slow-test-groups)"]
async fn serve_recovers_an_interrupted_run_at_start_up() {
    let env = TestEnv::new().await;
    env.write_csv(csv(ABC));
    env.synced(&[]);
    env.leave_a_crashed_run().await;
    let mut agent = env.spawn_agent(&[("RUN_ON_START", "false"), ("WATCH", "false")]);
    eventually(30, "the interrupted run marked failed", || async {
        (env.last_run().await.0 == "failed" && env.staging_rows().await == 0).then_some(())
    })
    .await;
    assert_eq!(env.followers().await, pairs(ABC));
    assert_eq!(agent.terminate().await, 0);
}

#[tokio::test]
#[ignore = "slow group: serve (docs/development.md#slow-test-groups)"]
async fn a_file_renamed_into_place_is_synced_once() {
    let env = TestEnv::new().await;
    env.write_csv(csv(ABC));
    let mut agent = env.spawn_agent(&[]);
    wait_for_followers(&env, &agent, &pairs(ABC)).await;
    let next = [
        ("ann@example.com", "Ann"),
        ("bob@example.com", "Robert"),
        ("cy@example.com", "Cy"),
        ("dee@example.com", "Dee"),
    ];
    env.write_file(".followers.csv.tmp", csv(&next));
    std::fs::rename(
        env.tables().join(".followers.csv.tmp"),
        env.tables().join("followers.csv"),
    )
    .unwrap();
    wait_for_followers(&env, &agent, &pairs(&next)).await;
    // A quiet period longer than the debounce: no second run appears.
    tokio::time::sleep(Duration::from_millis(900)).await;
    assert_eq!(env.runs_by("watch").await, vec![("synced".to_string(), 4)]);
    assert_eq!(agent.terminate().await, 0);
}

#[tokio::test]
#[ignore = "slow group: serve (docs/development.md#slow-test-groups)"]
async fn polling_mode_notices_a_file_copied_over() {
    let env = TestEnv::new().await;
    env.write_csv(csv(ABC));
    let mut agent = env.spawn_agent(&[("WATCH_POLL", "true")]);
    wait_for_followers(&env, &agent, &pairs(ABC)).await;
    let next = [
        ("ann@example.com", "Ann"),
        ("bob@example.com", "Bob"),
        ("cy@example.com", "Cyrus"),
    ];
    let source = env.dir.path().join("export.csv");
    std::fs::write(&source, csv(&next)).unwrap();
    std::fs::copy(&source, env.tables().join("followers.csv")).unwrap();
    wait_for_followers(&env, &agent, &pairs(&next)).await;
    assert_eq!(env.runs_by("watch").await, vec![("synced".to_string(), 3)]);
    assert_eq!(agent.terminate().await, 0);
}

#[tokio::test]
#[ignore = "slow group: serve (docs/development.md#slow-test-groups)"]
async fn a_slow_in_place_write_is_synced_only_when_complete() {
    let env = TestEnv::new().await;
    env.write_csv(csv(ABC));
    let mut agent = env.spawn_agent(&[("WATCH_DEBOUNCE", "1s"), ("MAX_DELETE_RATIO", "1.0")]);
    wait_for_followers(&env, &agent, &pairs(ABC)).await;
    let rows = many(40);
    let text = csv_owned(&rows);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(env.tables().join("followers.csv"))
        .unwrap();
    for chunk in text.as_bytes().chunks(text.len() / 8 + 1) {
        file.write_all(chunk).unwrap();
        file.flush().unwrap();
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    drop(file);
    let mut expected = rows.clone();
    expected.sort();
    wait_for_followers(&env, &agent, &expected).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let watch_runs = env.runs_by("watch").await;
    assert_eq!(
        watch_runs,
        vec![("synced".to_string(), 40)],
        "a run saw a partial file: {watch_runs:?}"
    );
    assert_eq!(agent.terminate().await, 0);
}

#[tokio::test]
#[ignore = "slow group: serve (docs/development.md#slow-test-groups)"]
async fn touching_the_file_without_changing_it_is_skipped_and_writes_nothing() {
    let env = TestEnv::new().await;
    env.write_csv(csv(ABC));
    let mut agent = env.spawn_agent(&[]);
    wait_for_followers(&env, &agent, &pairs(ABC)).await;
    let before = env.follower_versions().await;
    let file = std::fs::File::options()
        .append(true)
        .open(env.tables().join("followers.csv"))
        .unwrap();
    file.set_modified(std::time::SystemTime::now()).unwrap();
    drop(file);
    let runs = eventually(15, "a finished watch run", || async {
        Some(env.runs_by("watch").await)
            .filter(|r| r.iter().any(|(outcome, _)| outcome != "running"))
    })
    .await;
    assert_eq!(runs[0].0, "skipped");
    assert_eq!(env.follower_versions().await, before);
    assert_eq!(agent.terminate().await, 0);
}

#[tokio::test]
#[ignore = "slow group: serve (docs/development.md#slow-test-groups)"]
async fn deleting_the_file_purges_nothing() {
    let env = TestEnv::new().await;
    env.write_csv(csv(ABC));
    let mut agent = env.spawn_agent(&[]);
    wait_for_followers(&env, &agent, &pairs(ABC)).await;
    // Temporary names next to the file are not the file.
    for name in [
        "followers.csv.swp",
        "followers.csv~",
        ".followers.csv.tmp",
        "followers.csv.tmp",
    ] {
        env.write_file(name, "email,full_name\n");
    }
    // Emptied, then deleted within the debounce.
    env.write_csv("");
    std::fs::remove_file(env.tables().join("followers.csv")).unwrap();
    eventually(15, "the removal to be logged", || async {
        agent.log_text().contains("removed; ignored").then_some(())
    })
    .await;
    assert_eq!(env.followers().await, pairs(ABC));
    assert!(env.runs_by("watch").await.is_empty());
    assert_eq!(agent.terminate().await, 0);
}

#[tokio::test]
#[ignore = "slow group: serve (docs/development.md#slow-test-groups)"]
async fn a_burst_of_200_writes_yields_at_most_two_runs() {
    let env = TestEnv::new().await;
    env.write_csv(csv(ABC));
    let mut agent = env.spawn_agent(&[("MAX_DELETE_RATIO", "1.0")]);
    wait_for_followers(&env, &agent, &pairs(ABC)).await;
    let rows = many(20);
    for i in 0..200 {
        let mut version = rows.clone();
        version[0].1 = format!("Version {i}");
        env.write_csv(csv_owned(&version));
    }
    let mut expected = rows.clone();
    expected[0].1 = "Version 199".into();
    expected.sort();
    wait_for_followers(&env, &agent, &expected).await;
    tokio::time::sleep(Duration::from_millis(900)).await;
    let runs = env.runs_by("watch").await;
    assert!(!runs.is_empty() && runs.len() <= 2, "{runs:?}");
    assert_eq!(agent.terminate().await, 0);
}

#[tokio::test]
#[ignore = "slow group: serve (docs/development.md#slow-test-groups)"]
async fn triggers_during_a_long_run_coalesce_into_one_follow_up_and_never_overlap() {
    let env = TestEnv::new().await;
    env.write_csv(csv_owned(&many(300_000)));
    // Small batches, one worker: the first run spans several ticks even on a
    // quick, idle machine (at 500 rows a batch it took 2.0 s once, at the limit).
    let mut agent = env.spawn_agent(&[
        ("CRON_SCHEDULE", "@every 1s"),
        ("WATCH", "false"),
        ("BATCH_SIZE", "200"),
        ("WORKER_POOL_GOROUTINES", "1"),
    ]);
    wait_ready(&env).await;
    let runs: Vec<(String, f64, f64)> = eventually(120, "the long run and two more", || async {
        let rows: Vec<(String, f64, f64)> = sqlx::query_as(
            "SELECT trigger, extract(epoch FROM started_at)::float8, extract(epoch FROM finished_at)::float8
               FROM etl_info_schema.sync_runs WHERE finished_at IS NOT NULL ORDER BY started_at",
        )
        .fetch_all(&env.pool)
        .await
        .unwrap_or_default();
        (rows.len() >= 3).then_some(rows)
    })
    .await;
    assert_eq!(agent.terminate().await, 0);
    let long = runs[0].2 - runs[0].1;
    assert!(
        long >= 2.0,
        "the first run must span several cron ticks to test anything: {long:.2}s"
    );
    for pair in runs.windows(2) {
        assert!(pair[1].1 >= pair[0].2, "runs overlap: {runs:?}");
    }
    // Many ticks fired during the long run; only one run follows it back to back.
    let back_to_back = runs.windows(2).filter(|p| p[1].1 - p[0].2 < 0.15).count();
    assert!(
        back_to_back <= 2,
        "{back_to_back} runs queued up behind each other: {runs:?}"
    );
}

#[tokio::test]
#[ignore = "slow group: serve (docs/development.md#slow-test-groups)"]
async fn sigterm_with_time_to_spare_lets_the_run_finish() {
    let env = TestEnv::new().await;
    let mut agent = env.agent_mid_run(50_000).await;
    assert_eq!(agent.terminate().await, 0, "{}", agent.log_text());
    assert_eq!(env.last_run().await.0, "synced");
    assert_eq!(env.scalar("SELECT count(*) FROM followers").await, 50_000);
    assert_eq!(env.staging_rows().await, 0);
}

#[tokio::test]
#[ignore = "slow group: serve (docs/development.md#slow-test-groups)"]
async fn an_every_1s_schedule_fires_every_second() {
    let env = TestEnv::new().await;
    env.write_csv(csv(ABC));
    let mut agent = env.spawn_agent(&[
        ("CRON_SCHEDULE", "@every 1s"),
        ("RUN_ON_START", "false"),
        ("WATCH", "false"),
    ]);
    wait_ready(&env).await;
    let runs = eventually(20, "four cron runs", || async {
        Some(env.runs_by("cron").await).filter(|r| r.len() >= 4)
    })
    .await;
    let starts: Vec<f64> = sqlx::query_scalar(
        "SELECT extract(epoch FROM started_at)::float8 FROM etl_info_schema.sync_runs WHERE trigger = 'cron' ORDER BY started_at",
    )
    .fetch_all(&env.pool)
    .await
    .unwrap();
    for pair in starts.windows(2) {
        let gap = pair[1] - pair[0];
        assert!(
            (0.5..1.5).contains(&gap),
            "cron runs {gap:.3}s apart: {starts:?}"
        );
    }
    // robfig's @every fires on whole seconds.
    assert!(starts.iter().all(|t| t.fract() < 0.5), "{starts:?}");
    assert_eq!(runs[0], ("synced".to_string(), 3));
    assert!(runs[1..3].iter().all(|(o, _)| o == "skipped"), "{runs:?}");
    assert_eq!(agent.terminate().await, 0);
}

#[tokio::test]
#[ignore = "slow group: serve (docs/development.md#slow-test-groups)"]
async fn sigterm_during_a_long_run_cancels_it_leaving_followers_whole_and_staging_empty() {
    let env = TestEnv::new().await;
    env.write_csv(csv(ABC));
    env.synced(&[]);
    let rows = many(300_000);
    // A long run: start the agent on a big file and stop it mid-staging.
    env.write_csv(csv_owned(&rows));
    let mut agent = env.spawn_agent(&[
        ("WATCH", "false"),
        ("BATCH_SIZE", "200"),
        ("WORKER_POOL_GOROUTINES", "1"),
        ("SHUTDOWN_TIMEOUT", "0s"),
        ("MAX_DELETE_RATIO", "1.0"),
    ]);
    env.wait_for_staging().await;
    assert_eq!(agent.terminate().await, 0, "{}", agent.log_text());
    assert_eq!(env.staging_rows().await, 0, "staging rows left behind");
    let count = env.scalar("SELECT count(*) FROM followers").await;
    assert!(
        count == 3 || count == 300_000,
        "followers half-applied: {count}"
    );
    let (outcome, trigger, error) = env.last_run().await;
    assert_eq!(trigger, "start");
    assert!(
        outcome == "failed" || outcome == "synced",
        "{outcome} {error:?}"
    );
    if outcome == "failed" {
        assert!(error.unwrap_or_default().contains("cancelled"));
        assert_eq!(count, 3);
    }
}

pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub(crate) fn http_get(port: u16, path: &str) -> Option<String> {
    http_get_within(port, path, Duration::from_secs(60))
}

/// GET `path`; `None` unless the whole answer arrives within `timeout`.
pub(crate) fn http_get_within(port: u16, path: &str, timeout: Duration) -> Option<String> {
    use std::io::Read;
    let deadline = std::time::Instant::now() + timeout;
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(timeout)).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    (std::time::Instant::now() <= deadline).then_some(response)
}

#[tokio::test]
#[ignore = "slow group: serve (docs/development.md#slow-test-groups)"]
async fn health_readiness_and_metrics_endpoints_answer() {
    let env = TestEnv::new().await;
    env.write_csv(csv(ABC));
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut agent = env.spawn_agent(&[("HTTP_ADDR", &addr), ("WATCH", "false")]);
    wait_for_followers(&env, &agent, &pairs(ABC)).await;
    let health = eventually(15, "/healthz", || async { http_get(port, "/healthz") }).await;
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    let ready = http_get(port, "/readyz").unwrap();
    assert!(ready.starts_with("HTTP/1.1 200"), "{ready}");
    let metrics = eventually(15, "metrics after the first run", || async {
        http_get(port, "/metrics")
            .filter(|m| m.contains("followers_etl_runs_total{outcome=\"synced\"} 1"))
    })
    .await;
    for name in [
        "followers_etl_rows_total",
        "followers_etl_run_duration_seconds",
        "followers_etl_last_success_timestamp_seconds",
        "followers_etl_followers 3",
        "followers_etl_stage_duration_seconds",
    ] {
        assert!(metrics.contains(name), "{name} missing:\n{metrics}");
    }
    assert_eq!(agent.terminate().await, 0);
}

#[tokio::test]
async fn schedule_prints_robfig_activations_and_rejects_bad_expressions() {
    let env = TestEnv::new().await;
    let run = env.run(
        &[
            "schedule",
            "CRON_TZ=America/New_York 30 2 * * *",
            "--from",
            "2026-03-07T00:00:00Z",
            "--count",
            "3",
        ],
        &[],
    );
    assert_eq!(run.code, 0, "{run:?}");
    // 2026-03-08 02:30 does not exist in New York (spring forward): robfig skips that day.
    assert_eq!(
        run.stdout,
        "2026-03-07T02:30:00-05:00\n2026-03-09T02:30:00-04:00\n2026-03-10T02:30:00-04:00\n"
    );
    let run = env.run(
        &[
            "schedule",
            "@every 1h30m",
            "--from",
            "2026-01-01T00:00:10Z",
            "--count",
            "2",
        ],
        &[("TZ", "UTC")],
    );
    assert_eq!(
        run.stdout, "2026-01-01T01:30:10+00:00\n2026-01-01T03:00:10+00:00\n",
        "{run:?}"
    );
    let run = env.run(
        &["schedule", "0 12 * * MON"],
        &[("CRON_SCHEDULE", "@daily")],
    );
    assert_eq!((run.code, run.stdout.lines().count()), (0, 5));
    let run = env.run(&["schedule", "0 0 30 FEB *"], &[]);
    assert!(
        run.code == 0 && run.stdout.is_empty() && run.stderr.contains("never fires"),
        "{run:?}"
    );
    let run = env.run(&["schedule", "5 25 * * *"], &[]);
    assert!(
        run.code == 2 && run.stderr.contains("field 2 (hour)"),
        "{run:?}"
    );
    let run = env.run(&["schedule", "0 0 * * 7"], &[]);
    assert_eq!(run.code, 2, "robfig rejects weekday 7: {run:?}");
}
