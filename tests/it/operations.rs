//! What an operator runs into over time: approving a refused run while the agent
//! runs (as `docker compose exec agent followers-etl sync --allow-mass-delete`), the
//! runs' retention, `status` at a glance, and metrics that aggregate.

use crate::helpers::*;
use crate::serve::{free_port, http_get, wait_for_followers};
use followers_etl::db::RUN_LOCK;
use followers_etl::domain::Stage;
use sqlx::{Connection, PgConnection};
use strum::IntoEnumIterator;

/// The stage names of the first `"stages"` object in `status --json` output (the
/// last run's), in the order printed.
fn last_run_stages(stdout: &str) -> Vec<String> {
    let start = stdout.find("\"stages\":{").expect("a stages object") + "\"stages\":{".len();
    let body = &stdout[start..start + stdout[start..].find('}').unwrap()];
    body.split(',')
        .filter_map(|pair| Some(pair.split(':').next()?.trim_matches('"').to_owned()))
        .filter(|name| !name.is_empty())
        .collect()
}

/// Runs in `sync_runs`.
async fn run_count(env: &TestEnv) -> i64 {
    env.scalar("SELECT count(*) FROM etl_info_schema.sync_runs")
        .await
}

#[tokio::test]
async fn a_run_the_guard_refused_in_serve_is_approved_with_sync_allow_mass_delete() {
    let env = TestEnv::new().await;
    let all = many(10);
    env.write_csv(csv_owned(&all));
    let mut agent = env.spawn_agent(&[("WATCH_DEBOUNCE", "200ms")]);
    let everyone: Vec<Follower> = pairs(
        &all.iter()
            .map(|(e, n)| (e.as_str(), n.as_str()))
            .collect::<Vec<_>>(),
    );
    wait_for_followers(&env, &agent, &everyone).await;
    // A truncated export: the agent's watch run is refused, nothing changes.
    env.write_csv(csv(&[("user0@example.com", "User 0")]));
    eventually(30, "the watch run refused", || async {
        (env.runs_by("watch").await.first().map(|r| r.0.as_str()) == Some("refused")).then_some(())
    })
    .await;
    assert_eq!(env.followers().await, everyone);
    let status = env.run(&["status"], &[]);
    assert!(
        status.stdout.contains("!! REFUSED") && status.stdout.contains("ATTENTION"),
        "{status:?}"
    );
    // The operator approves it, with the agent still running.
    let run = env.synced(&["--allow-mass-delete"]);
    assert_eq!(run.n("deleted"), 9, "{run:?}");
    assert_eq!(
        env.followers().await,
        pairs(&[("user0@example.com", "User 0")])
    );
    let status = env.run(&["status", "--json"], &[]).json();
    assert!(status["attention"].is_null(), "{status}");
    assert_eq!(status["followers"], 1);
    assert_eq!(agent.terminate().await, 0);
}

#[tokio::test]
async fn retention_keeps_the_newest_runs_and_always_the_last_synced_and_running_ones() {
    let env = TestEnv::migrated().await;
    env.write_csv(csv(&[("ann@example.com", "Ann")]));
    let bound = [("HISTORY_KEEP_RUNS", "3"), ("HISTORY_KEEP_DAYS", "0")];
    let first = env.sync_with(&[], &bound);
    assert_eq!(first.outcome(), "synced", "{first:?}");
    for _ in 0..5 {
        assert_eq!(env.sync_with(&[], &bound).outcome(), "skipped");
    }
    // The 3 newest runs, and the last successful sync although it is older.
    assert_eq!(run_count(&env).await, 4);
    let kept = env
        .scalar(&format!(
            "SELECT count(*) FROM etl_info_schema.sync_runs WHERE load_id = '{}'",
            first.json()["load_id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(kept, 1);

    // A run in flight elsewhere (this test holds the run lock, so the syncs below
    // are skipped and recover nothing) is never pruned, however old.
    let mut lock = PgConnection::connect(&env.url).await.unwrap();
    sqlx::query("SELECT pg_advisory_lock($1)")
        .bind(RUN_LOCK)
        .execute(&mut lock)
        .await
        .unwrap();
    env.exec(
        "INSERT INTO etl_info_schema.sync_runs (load_id, trigger, file, started_at, outcome)
         VALUES (gen_random_uuid(), 'cron', 'followers.csv',
                 (now() AT TIME ZONE 'UTC') - interval '1 day', 'running')",
    )
    .await;
    for _ in 0..4 {
        let run = env.sync_with(&[], &bound);
        assert!(run.stderr.contains("another sync"), "{run:?}");
    }
    assert_eq!(run_count(&env).await, 5, "3 newest + synced + running");
    let running = env
        .scalar("SELECT count(*) FROM etl_info_schema.sync_runs WHERE outcome = 'running'")
        .await;
    assert_eq!(running, 1);
    lock.close().await.unwrap();
}

#[tokio::test]
async fn many_runs_are_pruned_in_batches_by_count_and_by_age() {
    let env = TestEnv::migrated().await;
    env.write_csv(csv(&[("ann@example.com", "Ann")]));
    env.synced(&[]);
    // 1,500 old skipped runs (more than one pruning batch), 10 to 100 days old.
    env.exec(
        "INSERT INTO etl_info_schema.sync_runs (load_id, trigger, file, started_at, finished_at, outcome)
         SELECT gen_random_uuid(), 'cron', 'followers.csv', t, t, 'skipped'
         FROM (SELECT (now() AT TIME ZONE 'UTC') - (interval '1 day' * (10 + i % 90)) - (interval '1 second' * i) AS t
               FROM generate_series(1, 1500) i) g",
    )
    .await;
    let run = env.sync_with(
        &[],
        &[("HISTORY_KEEP_RUNS", "1000"), ("HISTORY_KEEP_DAYS", "0")],
    );
    assert_eq!(run.outcome(), "skipped", "{run:?}");
    assert_eq!(
        run_count(&env).await,
        1000,
        "the newest 1000 (the synced run among them)"
    );
    let run = env.sync_with(
        &[],
        &[("HISTORY_KEEP_RUNS", "0"), ("HISTORY_KEEP_DAYS", "30")],
    );
    assert_eq!(run.outcome(), "skipped", "{run:?}");
    let old = env
        .scalar("SELECT count(*) FROM etl_info_schema.sync_runs WHERE started_at < (now() AT TIME ZONE 'UTC') - interval '30 days'")
        .await;
    assert_eq!(old, 0);
    assert!(run_count(&env).await >= 3, "the recent runs stay");
    // `status` still answers, with the last success and the next run.
    let status = env.run(&["status", "--json", "--limit", "2"], &[]).json();
    assert_eq!(status["runs"].as_array().unwrap().len(), 2);
    assert!(status["last_success"]["at"]
        .as_str()
        .unwrap()
        .ends_with('Z'));
}

#[tokio::test]
async fn status_shows_what_an_operator_needs_at_a_glance() {
    let env = TestEnv::migrated().await;
    env.write_csv(csv(&[
        ("ann@example.com", "Ann"),
        ("bob@example.com", "Bob"),
    ]));
    env.synced(&[]);
    assert_eq!(env.sync().outcome(), "skipped");
    let cron = [("CRON_SCHEDULE", "30 2 * * *"), ("TZ", "UTC")];
    let text = env.run(&["status"], &cron);
    assert_eq!(text.code, 0, "{text:?}");
    let out = &text.stdout;
    for needle in [
        "followers:     2",
        "last success:  ",
        " ago)",
        "T02:30:00.000Z (in ",
        "last run:      skipped",
        "stages:      settle ",
        "times are UTC, RFC 3339",
        "reason=\"unchanged since the last successful sync\"",
    ] {
        assert!(out.contains(needle), "{needle:?} missing:\n{out}");
    }
    assert!(!out.contains("error="), "{out}");
    assert!(!out.contains("ATTENTION"), "{out}");

    // A refused run: highlighted with its reason, in text and JSON alike.
    env.write_csv("email,full_name\nnot-an-email,X\n");
    assert_eq!(env.sync().outcome(), "refused");
    let out = env.run(&["status"], &cron).stdout;
    assert!(
        out.contains("!! REFUSED") && out.contains("ATTENTION"),
        "{out}"
    );
    assert!(out.contains("not-an-email"), "{out}");
    let run = env.run(&["status", "--json"], &cron);
    assert_eq!(
        last_run_stages(&run.stdout),
        [Stage::Settle, Stage::Lock, Stage::Hash, Stage::ReadAndStage].map(Stage::as_str),
        "{run:?}"
    );
    let json = run.json();
    assert_eq!(json["followers"], 2);
    assert!(
        json["attention"].as_str().unwrap().starts_with("refused: "),
        "{json}"
    );
    assert_eq!(json["last_run"]["outcome"], "refused");
    assert!(json["last_success"]["ago_seconds"].as_i64().unwrap() >= 0);
    assert!(
        json["next_run"]
            .as_str()
            .unwrap()
            .ends_with("T02:30:00.000Z"),
        "{json}"
    );
    for t in [
        &json["now"],
        &json["last_run"]["started_at"],
        &json["table_status"][0]["last_activity"],
    ] {
        let t = t.as_str().unwrap();
        assert!(
            t.ends_with('Z') && chrono::DateTime::parse_from_rfc3339(t).is_ok(),
            "{t}"
        );
    }
    // `@every`: the next run keeps the beat of the agent's last cron run.
    let started: chrono::NaiveDateTime = sqlx::query_scalar(
        "INSERT INTO etl_info_schema.sync_runs (load_id, trigger, file, started_at, finished_at, outcome)
         VALUES (gen_random_uuid(), 'cron', 'followers.csv',
                 date_trunc('second', now() AT TIME ZONE 'UTC') - interval '10 minutes' + interval '0.25 seconds',
                 now() AT TIME ZONE 'UTC', 'skipped')
         RETURNING started_at",
    )
    .fetch_one(&env.pool)
    .await
    .unwrap();
    let json = env
        .run(&["status", "--json"], &[("CRON_SCHEDULE", "@every 1h")])
        .json();
    let beat = (started.and_utc() - chrono::TimeDelta::milliseconds(250)
        + chrono::TimeDelta::hours(1))
    .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    assert_eq!(json["next_run"], beat.as_str(), "{json}");
    // A synced run records every stage (but `ready`, without READY_MARKER, and a
    // dry run's `plan`), and the merge transaction's steps, timed one by one
    // (`merge.guard` and `merge.record` are timed within the steps around them).
    env.write_csv(csv(&[
        ("ann@example.com", "Ann"),
        ("bob@example.com", "Bobby"),
    ]));
    env.synced(&[]);
    let run = env.run(&["status", "--json"], &[]);
    let not_reached = [
        Stage::Ready,
        Stage::MergeGuard,
        Stage::MergeRecord,
        Stage::Plan,
    ];
    assert_eq!(
        last_run_stages(&run.stdout),
        Stage::iter()
            .filter(|s| !not_reached.contains(s))
            .map(Stage::as_str)
            .collect::<Vec<_>>(),
        "{run:?}"
    );
}

#[tokio::test]
async fn metrics_have_histogram_buckets_help_texts_and_an_in_progress_gauge() {
    let env = TestEnv::migrated().await;
    assert_eq!(env.run(&["migrate"], &[]).code, 0);
    // Hold the run in its merge: writes to followers wait for this SHARE lock
    // (reads, such as the followers gauge at scrape, do not).
    let mut blocker = PgConnection::connect(&env.url).await.unwrap();
    sqlx::query("BEGIN").execute(&mut blocker).await.unwrap();
    sqlx::query("LOCK TABLE followers IN SHARE MODE")
        .execute(&mut blocker)
        .await
        .unwrap();
    env.write_csv(csv(&[("ann@example.com", "Ann")]));
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut agent = env.spawn_agent(&[("HTTP_ADDR", &addr), ("WATCH", "false")]);
    let during = eventually(30, "the in-progress gauge at 1", || async {
        http_get(port, "/metrics").filter(|m| m.contains("\nfollowers_etl_run_in_progress 1"))
    })
    .await;
    assert!(
        env.followers().await.is_empty(),
        "the run is still in flight"
    );
    assert!(!during.contains("followers_etl_runs_total{"), "{during}");
    sqlx::query("COMMIT").execute(&mut blocker).await.unwrap();
    let after = eventually(30, "the run finished", || async {
        http_get(port, "/metrics").filter(|m| {
            m.contains("followers_etl_runs_total{outcome=\"synced\"} 1")
                && m.contains("\nfollowers_etl_run_in_progress 0")
        })
    })
    .await;
    for name in [
        "followers_etl_runs_total",
        "followers_etl_rows_total",
        "followers_etl_run_duration_seconds",
        "followers_etl_stage_duration_seconds",
        "followers_etl_run_in_progress",
        "followers_etl_last_success_timestamp_seconds",
        "followers_etl_followers",
    ] {
        assert!(
            after.contains(&format!("# HELP {name} ")),
            "no HELP for {name}:\n{after}"
        );
    }
    for bucket in [
        "followers_etl_run_duration_seconds_bucket{outcome=\"synced\",le=\"0.1\"}",
        "followers_etl_run_duration_seconds_bucket{outcome=\"synced\",le=\"+Inf\"} 1",
        "followers_etl_stage_duration_seconds_bucket{stage=\"merge\",le=\"+Inf\"} 1",
        "# TYPE followers_etl_run_duration_seconds histogram",
    ] {
        assert!(after.contains(bucket), "{bucket} missing:\n{after}");
    }
    assert_eq!(agent.terminate().await, 0);
    // Restarted with the file unchanged: the start-up run is skipped, and still
    // confirms the mirror for the last-success gauge (no false "no recent sync").
    let mut agent = env.spawn_agent(&[("HTTP_ADDR", &addr), ("WATCH", "false")]);
    let restarted = eventually(30, "the skipped start-up run", || async {
        http_get(port, "/metrics")
            .filter(|m| m.contains("followers_etl_runs_total{outcome=\"skipped\"} 1"))
    })
    .await;
    assert!(
        restarted.contains("\nfollowers_etl_last_success_timestamp_seconds "),
        "{restarted}"
    );
    assert_eq!(agent.terminate().await, 0);
}
