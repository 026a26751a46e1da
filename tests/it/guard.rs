//! Refusals and approvals (docs/sync.md#refusals-and-approvals): a refused file is
//! remembered by its content hash and skipped cheaply until it changes or a run
//! approves it; approvals wait for the run lock; the rename guard; an empty file;
//! `serve` retrying a transient failure with back-off.

use crate::helpers::*;
use followers_etl::db::RUN_LOCK;
use sqlx::{Connection, PgConnection};
use std::time::Duration;

/// Rows ever inserted into a table of this database (aborted ones included), as
/// the statistics collector counts them.
async fn inserted_into(env: &TestEnv, table: &str) -> i64 {
    env.scalar(&format!(
        "SELECT coalesce(sum(n_tup_ins), 0)::bigint FROM pg_stat_user_tables WHERE relname = '{table}'"
    ))
    .await
}

/// Waits until the statistics of the runs that ended (their backends flush them
/// on exit, shortly after the client is gone) stop changing.
async fn settled_inserts(env: &TestEnv) -> (i64, i64) {
    let mut last = (-1, -1);
    loop {
        tokio::time::sleep(Duration::from_millis(1200)).await;
        let now = (
            inserted_into(env, "staging_followers").await,
            inserted_into(env, "sync_journal").await,
        );
        if now == last {
            return now;
        }
        last = now;
    }
}

/// (outcome, error) of every run, oldest first.
async fn runs(env: &TestEnv) -> Vec<(String, Option<String>)> {
    sqlx::query_as(
        "SELECT outcome, error FROM etl_info_schema.sync_runs ORDER BY started_at, load_id",
    )
    .fetch_all(&env.pool)
    .await
    .unwrap()
}

fn ten() -> Vec<(String, String)> {
    many(10)
}

#[tokio::test]
async fn a_refused_file_is_skipped_without_reading_until_it_is_approved() {
    let env = TestEnv::migrated().await;
    env.write_csv(csv_owned(&ten()));
    env.synced(&[]);
    let everyone = env.followers().await;
    // Deletes 6 of 10: the delete guard refuses it, once at full cost.
    env.write_csv(csv_owned(&ten()[..4]));
    let refused = env.refused(&[]);
    assert_eq!(refused.n("deleted"), 6, "{refused:?}");
    // It rolled back: the journal holds nothing for it, as its record says.
    assert_eq!(refused.n("journaled"), 0, "{refused:?}");
    let (staged, journaled) = settled_inserts(&env).await;
    assert!(
        staged >= 14 && journaled >= 6,
        "the refusal staged and journaled ({staged}, {journaled})"
    );

    // Every later run skips it cheaply and exits 1: the file is still refused.
    for _ in 0..3 {
        let run = env.sync();
        run.assert_ended(1, "skipped");
        assert_eq!(run.n("rows_read"), 0, "{run:?}");
        assert!(run.stderr.contains("refused earlier: "), "{run:?}");
        assert!(run.stderr.contains("MAX_DELETE_RATIO"), "{run:?}");
    }
    assert_eq!(
        settled_inserts(&env).await,
        (staged, journaled),
        "no staging or journal rows written by the skips"
    );
    let recorded = runs(&env).await;
    let skips: Vec<_> = recorded[2..].iter().collect();
    assert_eq!(skips.len(), 3, "{recorded:?}");
    for (outcome, error) in &skips {
        assert_eq!(outcome, "skipped");
        assert!(
            error.as_deref().unwrap().starts_with("refused earlier: "),
            "{error:?}"
        );
    }
    assert_eq!(env.followers().await, everyone);
    // `status` still asks for an operator.
    let status = env.run(&["status", "--json"], &[]).json();
    assert!(
        status["attention"].to_string().contains("MAX_DELETE_RATIO"),
        "{status}"
    );
    // A dry run reads it again and gives the verdict.
    let dry = env.sync_with(&["--dry-run"], &[]);
    dry.assert_ended(0, "dry_run");
    assert_eq!(dry.json()["would_refuse"], true, "{dry:?}");

    // Changed content is read again (and refused again here: 7 of 10).
    env.write_csv(csv_owned(&ten()[..3]));
    env.refused(&[]);
    env.sync().assert_ended(1, "skipped");
    // The approval applies it; afterwards it is an unchanged file.
    let approved = env.synced(&["--allow-mass-delete"]);
    assert_eq!(approved.n("deleted"), 7, "{approved:?}");
    env.sync().assert_ended(0, "skipped");
    let status = env.run(&["status", "--json"], &[]).json();
    assert!(status["attention"].is_null(), "{status}");
}

#[tokio::test]
async fn under_serve_every_trigger_after_a_refusal_skips_the_file() {
    let env = TestEnv::migrated().await;
    env.write_csv(csv_owned(&ten()));
    env.synced(&[]);
    env.write_csv(csv_owned(&ten()[..2]));
    let port = crate::serve::free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut agent = env.spawn_agent(&[
        ("WATCH", "false"),
        ("CRON_SCHEDULE", "@every 1s"),
        ("HTTP_ADDR", &addr),
    ]);
    eventually_logged(&agent, 30, "four cron runs after the refusal", || async {
        (env.runs_by("cron").await.len() >= 4).then_some(())
    })
    .await;
    // The refusal stands for the alert while the runs skip.
    let metrics = crate::serve::http_get(port, "/metrics").unwrap_or_default();
    assert!(metrics.contains("\nfollowers_etl_refused 1"), "{metrics}");
    assert!(
        metrics.contains("followers_etl_runs_total{outcome=\"refused\"} 1"),
        "{metrics}"
    );
    assert_eq!(agent.terminate().await, 0);
    let outcomes: Vec<String> = env
        .runs_by("start")
        .await
        .into_iter()
        .chain(env.runs_by("cron").await)
        .map(|(outcome, _)| outcome)
        .collect();
    assert_eq!(outcomes[0], "refused", "{outcomes:?}");
    assert!(
        outcomes[1..].iter().all(|o| o == "skipped"),
        "one refusal, then skips: {outcomes:?}"
    );
    let read = env
        .scalar("SELECT coalesce(sum(rows_read), 0)::bigint FROM etl_info_schema.sync_runs WHERE outcome = 'skipped'")
        .await;
    assert_eq!(read, 0, "the skips read nothing");
    assert!(
        agent.log_text().contains("refused earlier: "),
        "{}",
        agent.log_text()
    );
    assert_eq!(env.followers().await.len(), 10);
}

#[tokio::test]
async fn an_approval_waits_for_the_run_lock_or_fails() {
    let env = TestEnv::migrated().await;
    env.write_csv(csv_owned(&ten()));
    env.synced(&[]);
    env.write_csv(csv_owned(&ten()[..1]));
    env.refused(&[]);
    let mut lock = PgConnection::connect(&env.url).await.unwrap();
    sqlx::query("SELECT pg_advisory_lock($1)")
        .bind(RUN_LOCK)
        .execute(&mut lock)
        .await
        .unwrap();
    // A run without approval skips as before (the holder syncs the file) ...
    let plain = env.sync();
    plain.assert_ended(0, "skipped");
    assert!(plain.stderr.contains("another sync"), "{plain:?}");
    // ... an approval waits RUN_LOCK_WAIT, then fails: never a silent skip.
    env.sync_with(&["--force"], &[("RUN_LOCK_WAIT", "300ms")])
        .assert_ended(1, "failed");
    let busy = env.sync_with(&["--allow-mass-delete"], &[("RUN_LOCK_WAIT", "1s")]);
    busy.assert_ended(1, "failed");
    assert!(busy.stderr.contains("RUN_LOCK_WAIT"), "{busy:?}");
    assert_eq!(env.followers().await.len(), 10);
    // With the lock released while it waits, the approval applies.
    let mut waiting = env.command();
    waiting
        .args(["sync", "--json", "--allow-mass-delete"])
        .env("RUN_LOCK_WAIT", "1m")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let child = waiting.spawn().unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    lock.close().await.unwrap();
    let run: Run = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
        .await
        .unwrap()
        .into();
    run.assert_ended(0, "synced");
    assert_eq!(run.n("deleted"), 9);
    assert_eq!(env.followers().await.len(), 1);
}

#[tokio::test]
async fn a_mass_rename_is_refused_until_approved_with_allow_mass_update() {
    let env = TestEnv::migrated().await;
    env.write_csv(csv_owned(&ten()));
    env.synced(&[]);
    let everyone = env.followers().await;
    // Excel's formula mangling: every name became #NAME?.
    let mangled: Vec<(String, String)> = ten()
        .into_iter()
        .map(|(email, _)| (email, "#NAME?".to_owned()))
        .collect();
    env.write_csv(csv_owned(&mangled));
    let dry = env.sync_with(&["--dry-run"], &[]);
    dry.assert_ended(0, "dry_run");
    let verdict = dry.json();
    assert_eq!(verdict["would_refuse"], true, "{dry:?}");
    assert!(
        verdict["would_refuse_reason"]
            .as_str()
            .unwrap()
            .contains("MAX_UPDATE_RATIO=0.5"),
        "{dry:?}"
    );
    assert_eq!(verdict["updated"], 10);
    let refused = env.refused(&[]);
    assert_eq!(refused.n("updated"), 10, "{refused:?}");
    assert!(
        refused.stderr.contains("--allow-mass-update"),
        "{refused:?}"
    );
    assert_eq!(env.followers().await, everyone);
    // The delete approval does not approve renames.
    env.refused(&["--allow-mass-delete"]);
    // A change of a few names passes: 5 of 10 is not more than 0.5.
    let mut some = ten();
    for row in &mut some[..5] {
        row.1.push_str(" Jr.");
    }
    env.write_csv(csv_owned(&some));
    assert_eq!(env.synced(&[]).n("updated"), 5);
    env.write_csv(csv_owned(&mangled));
    env.refused(&[]);
    env.sync().assert_ended(1, "skipped");
    let approved = env.synced(&["--allow-mass-update"]);
    assert_eq!(approved.n("updated"), 10);
    assert!(env
        .followers()
        .await
        .iter()
        .all(|(_, name)| name == "#NAME?"));
    // Renaming them all back is refused too; under other limits (here
    // MAX_UPDATE_RATIO=1.0, which disables the guard) it is read again.
    env.write_csv(csv_owned(&ten()));
    env.refused(&[]);
    env.sync().assert_ended(1, "skipped");
    let run = env.sync_with(&[], &[("MAX_UPDATE_RATIO", "1.0")]);
    run.assert_ended(0, "synced");
    assert_eq!(run.n("updated"), 10);
}

#[tokio::test]
async fn a_zero_byte_file_is_refused_whatever_max_delete_ratio() {
    let env = TestEnv::migrated().await;
    env.write_csv(csv_owned(&ten()));
    env.synced(&[]);
    let everyone = env.followers().await;
    env.write_csv("");
    let no_guard = [("MAX_DELETE_RATIO", "1.0")];
    let run = env.sync_with(&[], &no_guard);
    run.assert_ended(1, "refused");
    assert!(run.stderr.contains("empty (0 bytes)"), "{run:?}");
    assert_eq!(env.followers().await, everyone);
    assert_eq!(env.staging_rows().await, 0);
    let dry = env.sync_with(&["--dry-run"], &no_guard);
    dry.assert_ended(0, "dry_run");
    assert_eq!(dry.json()["would_refuse"], true, "{dry:?}");
    assert_eq!(dry.json()["deleted"], 10, "{dry:?}");
    env.sync_with(&[], &no_guard).assert_ended(1, "skipped");
    let approved = env.sync_with(&["--allow-mass-delete"], &no_guard);
    approved.assert_ended(0, "synced");
    assert_eq!(approved.n("deleted"), 10);
    assert!(env.followers().await.is_empty());
}

/// `serve` retries a run that a concurrent writer made fail (its transaction held
/// `followers` beyond `LOCK_WAIT_TIMEOUT`: docs/sync.md#readers-and-writers-during-a-run),
/// without waiting for the next trigger.
#[tokio::test]
async fn serve_retries_a_run_failed_by_a_concurrent_writer() {
    let env = TestEnv::migrated().await;
    env.write_csv(csv_owned(&ten()));
    env.synced(&[]);
    let mut grown = ten();
    grown.push(("new@example.com".into(), "New".into()));
    env.write_csv(csv_owned(&grown));
    // Another writer inserts the new email and keeps its transaction open.
    let mut writer = PgConnection::connect(&env.url).await.unwrap();
    sqlx::raw_sql(
        "BEGIN; INSERT INTO public.followers (email, full_name, modified_at)
         VALUES ('new@example.com', 'Writer', now() AT TIME ZONE 'UTC')",
    )
    .execute(&mut writer)
    .await
    .unwrap();
    let mut agent = env.spawn_agent(&[
        ("WATCH", "false"),
        ("RETRY_BACKOFF", "500ms"),
        ("RETRY_MAX_ATTEMPTS", "3"),
        ("LOCK_WAIT_TIMEOUT", "1s"),
    ]);
    eventually_logged(&agent, 30, "the merge waiting for the writer", || async {
        (env.scalar(
            "SELECT count(*) FROM pg_stat_activity
              WHERE datname = current_database() AND wait_event_type = 'Lock'",
        )
        .await
            > 0)
        .then_some(())
    })
    .await;
    eventually_logged(
        &agent,
        30,
        "the first run failed on the lock wait",
        || async {
            env.runs_by("start")
                .await
                .iter()
                .any(|r| r.0 == "failed")
                .then_some(())
        },
    )
    .await;
    sqlx::raw_sql("COMMIT").execute(&mut writer).await.unwrap();
    wait_until_synced(&env, &agent, &grown).await;
    let start = env.runs_by("start").await;
    let outcomes: Vec<&str> = start.iter().map(|r| r.0.as_str()).collect();
    assert_eq!(outcomes, ["failed", "synced"], "{}", agent.log_text());
    let (_, _, error) = first_failure(&env).await;
    assert!(
        error.contains("LOCK_WAIT_TIMEOUT=1s") && error.contains("lock timeout"),
        "{error}"
    );
    assert!(
        agent.log_text().contains("retrying"),
        "{}",
        agent.log_text()
    );
    assert_eq!(agent.terminate().await, 0);
}

async fn wait_until_synced(env: &TestEnv, agent: &Agent, rows: &[(String, String)]) {
    let expected = env.digest_of(rows).await;
    eventually_logged(agent, 60, "the file synced", || async {
        (env.followers_digest().await.ok()? == expected).then_some(())
    })
    .await;
}

async fn first_failure(env: &TestEnv) -> (String, String, String) {
    sqlx::query_as(
        "SELECT outcome, trigger, error FROM etl_info_schema.sync_runs
          WHERE outcome = 'failed' ORDER BY started_at LIMIT 1",
    )
    .fetch_one(&env.pool)
    .await
    .unwrap()
}

/// `serve` retries a run that failed because the database restarted.
#[tokio::test]
#[ignore = "slow group: faults (docs/development.md#slow-test-groups)"]
async fn serve_retries_a_run_failed_by_a_database_restart() {
    let pg = crate::private_pg::PrivatePg::start_new();
    let env = TestEnv::on_existing(&pg.url());
    env.write_csv(csv_owned(&ten()));
    env.synced(&[]);
    let mut agent = env.spawn_agent(&[
        ("RUN_ON_START", "false"),
        ("RETRY_BACKOFF", "1s"),
        ("RETRY_MAX_ATTEMPTS", "5"),
    ]);
    eventually_logged(&agent, 30, "serve watching", || async {
        agent
            .log_text()
            .contains("watching for changes")
            .then_some(())
    })
    .await;
    pg.stop("fast");
    // The watch run fails with the database down.
    let grown = many(12);
    env.write_csv(csv_owned(&grown));
    eventually_logged(&agent, 30, "a run failing", || async {
        agent.log_text().contains("outcome=failed").then_some(())
    })
    .await;
    pg.start();
    // No trigger follows: only a retry can sync it.
    wait_until_synced(&env, &agent, &grown).await;
    assert!(
        agent.log_text().contains("retrying"),
        "{}",
        agent.log_text()
    );
    assert_eq!(agent.terminate().await, 0);
}
