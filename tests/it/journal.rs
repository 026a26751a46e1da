//! The journal, `revert` and `history` (docs/operations.md#journal-revert-and-history).

use crate::helpers::*;
use sqlx::Row;
use std::time::Duration;

use crate::helpers::fixtures::{A, B};

type Row3 = (String, String, chrono::NaiveDateTime);

/// Every follower with its name and `modified_at`.
async fn table(env: &TestEnv) -> Vec<Row3> {
    sqlx::query("SELECT email, full_name, modified_at FROM followers ORDER BY email")
        .fetch_all(&env.pool)
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect()
}

fn load_id(run: &Run) -> String {
    run.json()["load_id"].as_str().unwrap().to_owned()
}

/// The journal rows run `id` holds (-1: none, pruned; a fill holds none), checked
/// against the rows in the journal.
async fn journaled(env: &TestEnv, id: String) -> i64 {
    let rows = env
        .scalar(&format!(
            "SELECT count(*) FROM etl_info_schema.sync_journal WHERE load_id = '{id}'"
        ))
        .await;
    let recorded = env
        .scalar(&format!(
            "SELECT coalesce(journaled, -1) FROM etl_info_schema.sync_runs WHERE load_id = '{id}'"
        ))
        .await;
    assert_eq!(rows, recorded.max(0), "{id}: journal rows as recorded");
    recorded
}

fn revert(env: &TestEnv, args: &[&str]) -> Run {
    let mut all = vec!["revert", "--json"];
    all.extend_from_slice(args);
    env.run(&all, &[])
}

/// Syncs `rows` and returns the run; distinct `modified_at` between syncs.
fn sync_rows(env: &TestEnv, rows: &[(&str, &str)]) -> Run {
    std::thread::sleep(Duration::from_millis(5));
    env.write_csv(csv(rows));
    env.synced(&[])
}

#[tokio::test]
async fn revert_last_gives_back_exactly_the_previous_table_and_holds_the_file_back() {
    let env = TestEnv::new().await;
    let first = sync_rows(&env, A);
    // The first sync fills an empty table: journaled as a fill, without rows.
    assert_eq!(first.n("journaled"), 0, "{first:?}");
    assert_eq!(
        env.scalar(&format!(
            "SELECT count(*) FROM etl_info_schema.sync_runs WHERE load_id = '{}' AND filled AND journaled = 0",
            load_id(&first)
        ))
        .await,
        1
    );
    let a = table(&env).await;
    env.write_csv(csv(B));
    let dry = env.sync_with(&["--dry-run"], &[]);
    assert_eq!((dry.outcome().as_str(), dry.n("journaled")), ("dry_run", 3));
    let second = sync_rows(&env, B);
    assert_eq!(
        (
            second.n("inserted"),
            second.n("updated"),
            second.n("deleted")
        ),
        (1, 1, 1)
    );
    assert_eq!(second.n("journaled"), 3, "{second:?}");
    let b = table(&env).await;
    // Unchanged rows cost nothing: three journal rows for B.
    let rows = env
        .scalar(&format!(
            "SELECT count(*) FROM etl_info_schema.sync_journal WHERE load_id = '{}'",
            load_id(&second)
        ))
        .await;
    assert_eq!(rows, 3);

    let dry = revert(&env, &["--last", "--dry-run"]);
    assert_eq!(
        (dry.code, dry.outcome().as_str()),
        (0, "dry_run"),
        "{dry:?}"
    );
    assert_eq!(
        dry.json()["undone"][0]["load_id"],
        load_id(&second).as_str()
    );
    assert_eq!(table(&env).await, b, "a dry run changes nothing");

    let done = revert(&env, &["--last"]);
    assert_eq!(
        (done.code, done.outcome().as_str()),
        (0, "reverted"),
        "{done:?}"
    );
    assert_eq!(
        (done.n("inserted"), done.n("updated"), done.n("deleted")),
        (1, 1, 1)
    );
    assert_eq!(table(&env).await, a, "exactly A, modified_at included");
    assert_eq!(env.last_run().await.1, "revert");

    // The reverted file is held back until it changes or --force.
    let again = env.sync();
    assert_eq!((again.code, again.outcome().as_str()), (0, "skipped"));
    assert!(again.stderr.contains("held back: revert"), "{again:?}");
    assert_eq!(table(&env).await, a);
    let status = env.run(&["status", "--json"], &[]);
    let reverted = &status.json()["reverted"];
    assert_eq!(reverted["load_id"], load_id(&done).as_str(), "{status:?}");
    assert!(reverted["held_back_file"]
        .as_str()
        .unwrap()
        .ends_with("followers.csv"));
    let text = env.run(&["status"], &[]);
    assert!(text.stdout.contains("reverted:"), "{text:?}");
    assert!(
        text.stdout
            .contains(&format!("reverted by {}", load_id(&done))),
        "last success names its revert: {text:?}"
    );
    assert!(text.stdout.contains("is held back"), "{text:?}");

    // Reverting again reaches back to A's own sync: the table would empty,
    // which the delete guard refuses unless approved.
    let guarded = revert(&env, &["--last"]);
    assert_eq!(
        (guarded.code, guarded.outcome().as_str()),
        (1, "refused"),
        "{guarded:?}"
    );
    assert!(
        guarded.stderr.contains("MAX_DELETE_RATIO")
            && guarded.stderr.contains("--allow-mass-delete"),
        "{guarded:?}"
    );
    assert_eq!(table(&env).await, a);
    let nothing_left = revert(&env, &["--last", "--allow-mass-delete"]);
    assert_eq!(nothing_left.outcome(), "reverted", "{nothing_left:?}");
    assert_eq!(nothing_left.n("deleted"), 4);
    assert!(table(&env).await.is_empty());
    let none = revert(&env, &["--last"]);
    assert_eq!((none.code, none.outcome().as_str()), (1, "refused"));
    assert!(none.stderr.contains("nothing to revert"), "{none:?}");
    // The file in place (B) was held back by the first revert and has not
    // changed: reverting further back does not release it.
    let still = env.sync();
    assert_eq!(
        (still.code, still.outcome().as_str()),
        (0, "skipped"),
        "{still:?}"
    );
    assert!(table(&env).await.is_empty());

    let forced = env.synced(&["--force"]);
    assert_eq!(forced.n("inserted"), 4);
    assert_eq!(env.followers().await, pairs(B));
}

#[tokio::test]
async fn history_lists_every_run_that_changed_a_follower() {
    let env = TestEnv::new().await;
    let first = sync_rows(&env, A);
    let second = sync_rows(&env, B);
    let done = revert(&env, &["--last"]);
    assert_eq!(done.outcome(), "reverted", "{done:?}");
    let run = env.run(&["history", " BOB@example.com ", "--json"], &[]);
    assert_eq!(run.code, 0, "{run:?}");
    let events = run.json()["events"].as_array().unwrap().clone();
    let seen: Vec<_> = events
        .iter()
        .map(|e| {
            (
                e["action"].as_str().unwrap().to_owned(),
                e["load_id"].as_str().unwrap().to_owned(),
                e["trigger"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("inserted".into(), load_id(&first), "manual".into()),
            ("deleted".into(), load_id(&second), "manual".into()),
            ("inserted".into(), load_id(&done), "revert".into()),
        ]
    );
    assert_eq!(events[1]["old_name"], "Bob");
    assert_eq!(events[1]["reverted_by"], load_id(&done).as_str());
    assert!(events[1]["file"]
        .as_str()
        .unwrap()
        .ends_with("followers.csv"));
    let text = env.run(&["history", "ann@example.com"], &[]);
    assert!(
        text.stdout.contains("renamed") && text.stdout.contains("\"Ann\" -> \"Ann Smith\""),
        "{text:?}"
    );
    // Untouched since the first sync (a fill, journaled without rows).
    let cy = env.run(&["history", "cy@example.com", "--json"], &[]);
    let cy: Vec<_> = cy.json()["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["action"].clone(), e["load_id"].clone()))
        .collect();
    assert_eq!(cy, [("inserted".into(), load_id(&first).into())]);
    // Inserted by B, so not by the fill before it.
    let eve = env.run(&["history", "eve@example.com", "--json"], &[]);
    let eve: Vec<_> = eve.json()["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["action"].clone(), e["load_id"].clone()))
        .collect();
    assert_eq!(
        eve,
        [
            ("inserted".into(), load_id(&second).into()),
            ("deleted".into(), load_id(&done).into())
        ]
    );
    let unknown = env.run(&["history", "nobody@example.com", "--json"], &[]);
    assert_eq!(unknown.code, 0);
    assert_eq!(unknown.json()["events"], serde_json::json!([]));
    assert_eq!(env.run(&["history", "not-an-email"], &[]).code, 2);
}

#[tokio::test]
async fn a_chain_of_three_syncs_reverts_to_the_first() {
    let env = TestEnv::new().await;
    sync_rows(&env, A);
    let a = table(&env).await;
    let second = sync_rows(&env, B);
    // C: ann renamed again, bob back (deleted by B), eve renamed, dee deleted.
    sync_rows(
        &env,
        &[
            ("ann@example.com", "Ann Jones"),
            ("bob@example.com", "Robert"),
            ("cy@example.com", "Cy"),
            ("eve@example.com", "Eva"),
        ],
    );
    let done = revert(&env, &[&load_id(&second)]);
    assert_eq!(
        (done.code, done.outcome().as_str()),
        (0, "reverted"),
        "{done:?}"
    );
    assert_eq!(done.json()["undone"].as_array().unwrap().len(), 2);
    assert_eq!(table(&env).await, a);
    // Those runs are done with: reverting one of them again is refused.
    let twice = revert(&env, &[&load_id(&second)]);
    assert_eq!((twice.code, twice.outcome().as_str()), (1, "refused"));
    assert!(twice.stderr.contains("already reverted"), "{twice:?}");
}

#[tokio::test]
async fn revert_refuses_when_the_journal_was_pruned_or_the_table_drifted() {
    let env = TestEnv::migrated().await;
    let keep_one = [("JOURNAL_KEEP_RUNS", "1")];
    env.write_csv(csv(A));
    let first = env.sync_with(&[], &keep_one);
    env.write_csv(csv(B));
    let second = env.sync_with(&[], &keep_one);
    assert_eq!(second.outcome(), "synced");
    let b = table(&env).await;
    assert_eq!(
        journaled(&env, load_id(&first)).await,
        -1,
        "A's journal pruned"
    );
    assert_eq!(journaled(&env, load_id(&second)).await, 3);
    let run = revert(&env, &[&load_id(&first)]);
    assert_eq!(
        (run.code, run.outcome().as_str()),
        (1, "refused"),
        "{run:?}"
    );
    assert!(run.stderr.contains("has no journal"), "{run:?}");
    assert!(run.stderr.contains("pruned"), "{run:?}");
    assert_eq!(table(&env).await, b);
    assert_eq!(env.last_run().await.0, "refused");

    // A follower changed outside the agent: not exact, refused, nothing changes.
    env.exec("UPDATE followers SET full_name = 'Hand Edited' WHERE email = 'ann@example.com'")
        .await;
    let hand = table(&env).await;
    let run = revert(&env, &["--last"]);
    assert_eq!(
        (run.code, run.outcome().as_str()),
        (1, "refused"),
        "{run:?}"
    );
    assert!(
        run.stderr.contains("changed outside the agent") && run.stderr.contains("ann@example.com"),
        "{run:?}"
    );
    assert_eq!(table(&env).await, hand);
    // Put back as B left it, the revert is exact again.
    env.exec("UPDATE followers SET full_name = 'Ann Smith' WHERE email = 'ann@example.com'")
        .await;
    assert_eq!(revert(&env, &["--last"]).outcome(), "reverted");
}

#[tokio::test]
async fn sigkill_during_a_revert_leaves_the_table_as_before() {
    let env = TestEnv::migrated().await;
    let all = many(400);
    env.write_csv(csv_owned(&all));
    env.synced(&[]);
    let a = table(&env).await;
    // B: 100 renamed, 100 deleted, 100 inserted.
    let mut b_rows: Vec<(String, String)> = all[100..].to_vec();
    for row in b_rows.iter_mut().take(100) {
        row.1.push_str(" Renamed");
    }
    b_rows.extend((400..500).map(|i| (format!("user{i}@example.com"), format!("User {i}"))));
    std::thread::sleep(Duration::from_millis(5));
    env.write_csv(csv_owned(&b_rows));
    env.synced(&[]);
    let b = table(&env).await;
    // The revert's last statement (restoring deleted rows) sleeps after it ran,
    // when removals and renames are already done in its transaction.
    env.exec(
        "CREATE FUNCTION slow() RETURNS trigger LANGUAGE plpgsql AS $$
           BEGIN PERFORM pg_sleep(3); RETURN NULL; END $$;
         CREATE TRIGGER slow AFTER INSERT ON followers FOR EACH STATEMENT EXECUTE FUNCTION slow();",
    )
    .await;
    let mut child = env
        .command()
        .args(["revert", "--last"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    eventually(60, "the revert sleeping inside its transaction", || async {
        (env.scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event = 'PgSleep'",
        )
        .await
            > 0)
            .then_some(())
    })
    .await;
    child.kill().unwrap();
    child.wait().unwrap();
    eventually(60, "the killed revert's transaction to end", || async {
        (env.scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()
               AND pid <> pg_backend_pid() AND backend_xid IS NOT NULL",
        )
        .await
            == 0)
            .then_some(())
    })
    .await;
    assert_eq!(table(&env).await, b, "as before the revert, not mixed");
    env.exec("DROP TRIGGER slow ON followers").await;
    let done = revert(&env, &["--last"]);
    assert_eq!(done.outcome(), "reverted", "{done:?}");
    assert_eq!(table(&env).await, a);
}

#[tokio::test]
async fn serve_does_not_reapply_a_reverted_file_but_applies_a_changed_one() {
    let env = TestEnv::new().await;
    sync_rows(&env, A);
    sync_rows(&env, B);
    assert_eq!(revert(&env, &["--last"]).outcome(), "reverted");
    let a = table(&env).await;
    let mut agent = env.spawn_agent(&[("CRON_SCHEDULE", "@every 1s")]);
    let finished = |trigger: &'static str| {
        let env = &env;
        async move {
            Some(env.runs_by(trigger).await)
                .filter(|r| r.iter().any(|(outcome, _)| outcome != "running"))
        }
    };
    let start = eventually(30, "the start-up run", || finished("start")).await;
    assert_eq!(start[0].0, "skipped", "{}", agent.log_text());
    // The same content written again: a file event, skipped.
    env.write_csv(csv(B));
    let watch = eventually(30, "a watch run", || finished("watch")).await;
    assert_eq!(watch[0].0, "skipped", "{}", agent.log_text());
    let cron = eventually(30, "a cron run", || finished("cron")).await;
    assert_eq!(cron[0].0, "skipped", "{}", agent.log_text());
    assert_eq!(table(&env).await, a);
    // A changed file is applied.
    let c = [
        ("ann@example.com", "Ann"),
        ("bob@example.com", "Bob"),
        ("cy@example.com", "Cyrus"),
        ("zoe@example.com", "Zoe"),
    ];
    env.write_csv(csv(&c));
    eventually(30, "the changed file applied", || async {
        (env.followers().await == pairs(&c)).then_some(())
    })
    .await;
    assert_eq!(agent.terminate().await, 0);
}

#[tokio::test]
async fn the_journal_is_pruned_by_age_and_can_be_turned_off() {
    let env = TestEnv::new().await;
    let first = sync_rows(&env, A);
    let second = sync_rows(&env, B);
    // The first run is 31 days old: the next run prunes its journal (default 30 days).
    env.exec(&format!(
        "UPDATE etl_info_schema.sync_runs SET started_at = started_at - interval '31 days'
          WHERE load_id = '{}'",
        load_id(&first)
    ))
    .await;
    assert_eq!(
        journaled(&env, load_id(&first)).await,
        0,
        "a fill, journaled"
    );
    let third = sync_rows(&env, A);
    assert_eq!(
        journaled(&env, load_id(&first)).await,
        -1,
        "older than JOURNAL_KEEP_DAYS"
    );
    assert_eq!(journaled(&env, load_id(&second)).await, 3);
    assert_eq!(journaled(&env, load_id(&third)).await, 3);

    // JOURNAL_KEEP_RUNS=0: revert refuses even while a journal is kept...
    let before = table(&env).await;
    let off = &[("JOURNAL_KEEP_RUNS", "0")];
    let refused = env.run(&["revert", "--json", "--last"], off);
    assert_eq!(
        (refused.code, refused.outcome().as_str()),
        (1, "refused"),
        "{refused:?}"
    );
    assert!(refused.stderr.contains("journal is off"), "{refused:?}");
    assert_eq!(table(&env).await, before);
    assert_eq!(journaled(&env, load_id(&third)).await, 3);
    // ... and the next synced run writes none and drops the journal kept so far.
    env.write_csv(csv(B));
    let off = env.sync_with(&[], off);
    assert_eq!((off.outcome().as_str(), off.n("journaled")), ("synced", 0));
    assert_eq!(
        env.scalar("SELECT count(*) FROM etl_info_schema.sync_journal")
            .await,
        0
    );
    let run = revert(&env, &["--last"]);
    assert_eq!(
        (run.code, run.outcome().as_str()),
        (1, "refused"),
        "{run:?}"
    );
    assert!(run.stderr.contains("has no journal"), "{run:?}");
    assert_eq!(env.followers().await, pairs(B));
}

#[tokio::test]
async fn a_revert_past_a_fill_of_a_table_emptied_outside_the_agent_is_refused() {
    let env = TestEnv::new().await;
    let first = sync_rows(&env, A);
    env.exec("DELETE FROM followers").await;
    // The table is empty again: B's sync is a fill too.
    let second = sync_rows(&env, B);
    assert_eq!((second.n("inserted"), second.n("journaled")), (4, 0));
    let b = table(&env).await;
    let run = revert(&env, &[&load_id(&first)]);
    assert_eq!(
        (run.code, run.outcome().as_str()),
        (1, "refused"),
        "{run:?}"
    );
    assert!(
        run.stderr.contains("emptied outside the agent") && run.stderr.contains(&load_id(&second)),
        "{run:?}"
    );
    assert_eq!(table(&env).await, b);
    // Back to before B: the empty table B filled.
    let done = revert(&env, &["--last", "--allow-mass-delete"]);
    assert_eq!(
        (done.outcome().as_str(), done.n("deleted")),
        ("reverted", 4)
    );
    assert!(table(&env).await.is_empty());
}
