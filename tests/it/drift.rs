//! Edits outside the agent (docs/sync.md#edits-outside-the-agent; issue 16 §6):
//! the write counter on `followers` counts the statements that are not the
//! agent's own, and an unchanged file is synced back into a drifted table
//! instead of being skipped. Without the counter, VERIFY_EVERY compares.

use crate::helpers::*;

const FOUR: &[(&str, &str)] = &[
    ("ann@x.io", "Ann"),
    ("bob@x.io", "Bob"),
    ("cy@x.io", "Cy"),
    ("dee@x.io", "Dee"),
];

/// (the counter now, what the last sync or revert saw).
async fn counter(env: &TestEnv) -> (i64, Option<i64>) {
    sqlx::query_as(
        "SELECT etl_info_schema.foreign_writes(), foreign_writes
           FROM etl_info_schema.table_status WHERE table_name = 'followers'",
    )
    .fetch_one(&env.pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn hand_edits_with_an_unchanged_file_are_synced_back_then_skipped_again() {
    let env = TestEnv::migrated().await;
    env.write_csv(csv(FOUR));
    env.synced(&[]);
    env.sync().expect(0, "skipped");
    for (what, edit) in [
        ("delete", "DELETE FROM followers WHERE email = 'bob@x.io'"),
        (
            "rename",
            "UPDATE followers SET full_name = 'Ann Hand' WHERE email = 'ann@x.io'",
        ),
        (
            "insert",
            "INSERT INTO followers VALUES ('eve@x.io', 'Eve', now())",
        ),
        ("truncate", "TRUNCATE followers"),
    ] {
        env.exec(edit).await;
        let run = env.sync_with(&[], &[]);
        run.assert_ended(0, "synced");
        assert!(
            run.stderr.contains("changed outside the agent"),
            "{what}: {run:?}"
        );
        assert_eq!(env.followers().await, pairs(FOUR), "{what}");
        // Repaired: the same file is skipped again.
        env.sync().expect(0, "skipped");
    }
}

#[tokio::test]
async fn application_writes_are_counted_and_the_agents_own_are_not() {
    let env = TestEnv::migrated().await;
    env.write_csv(csv(FOUR));
    env.synced(&[]);
    let (now, seen) = counter(&env).await;
    assert_eq!(Some(now), seen, "the first sync counted itself");
    // The agent's own merge (a change) and revert: not counted.
    env.write_csv(csv(&FOUR[..3]));
    env.synced(&[]);
    assert_eq!(counter(&env).await, (now, Some(now)));
    let revert = env.run(&["revert", "--last"], &[]);
    assert_eq!(revert.code, 0, "{revert:?}");
    assert_eq!(counter(&env).await, (now, Some(now)));
    // An application role with only the table's privileges (none on the
    // counter's sequence) writes: it may, and each statement counts, also one
    // rolled back (the safe side).
    let app = TestRole::new(&env).await;
    env.exec(&format!(
        "GRANT SELECT, INSERT, UPDATE, DELETE ON public.followers TO {0}; GRANT USAGE ON SCHEMA public TO {0}",
        app.name
    ))
    .await;
    let pool = sqlx::PgPool::connect(&app.url).await.unwrap();
    sqlx::query("UPDATE followers SET full_name = 'Bobby' WHERE email = 'bob@x.io'")
        .execute(&pool)
        .await
        .unwrap();
    let mut tx = pool.begin().await.unwrap();
    sqlx::query("DELETE FROM followers WHERE email = 'cy@x.io'")
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    pool.close().await;
    assert_eq!(counter(&env).await, (now + 2, Some(now)));
    let status = env.run(&["status", "--json"], &[]);
    assert_eq!(
        status.json()["drift"],
        serde_json::json!({"state": "written", "writes": 2}),
        "{status:?}"
    );
    let text = env.run(&["status"], &[]);
    assert!(
        text.stdout
            .contains("drift:         !! followers was changed outside the agent"),
        "{text:?}"
    );
    // The reverted content is held back: the drift is named, not repaired.
    let held = env.sync();
    held.expect(0, "skipped");
    let (_, _, reason) = env.last_run().await;
    let reason = reason.unwrap_or_default();
    assert!(
        reason.contains("held back") && reason.contains("changed outside the agent"),
        "{reason}"
    );
    assert_eq!(
        env.scalar("SELECT count(*) FROM followers WHERE full_name = 'Bobby'")
            .await,
        1
    );
}

#[tokio::test]
async fn a_repair_the_delete_guard_refuses_names_the_drift_and_changes_nothing() {
    let env = TestEnv::migrated().await;
    env.write_csv(csv(&FOUR[..2]));
    env.synced(&[]);
    env.exec("INSERT INTO followers VALUES ('x1@x.io', 'X', now()), ('x2@x.io', 'X', now()), ('x3@x.io', 'X', now())")
        .await;
    let before = env.followers().await;
    let run = env.refused(&[]);
    assert!(
        run.stderr.contains("changed outside the agent") && run.stderr.contains("MAX_DELETE_RATIO"),
        "{run:?}"
    );
    assert_eq!(env.followers().await, before);
    let (outcome, _, reason) = env.last_run().await;
    assert_eq!(outcome, "refused");
    assert!(reason
        .unwrap_or_default()
        .contains("changed outside the agent"));
    // A dry run says the same; approving repairs it.
    let dry = env.sync_with(&["--dry-run"], &[]);
    dry.expect(0, "dry_run");
    assert!(
        dry.json()["would_refuse_reason"]
            .as_str()
            .unwrap_or_default()
            .contains("changed outside the agent"),
        "{dry:?}"
    );
    env.synced(&["--allow-mass-delete"]);
    assert_eq!(env.followers().await, pairs(&FOUR[..2]));
    env.sync().expect(0, "skipped");
}

#[tokio::test]
async fn without_the_counter_verify_every_compares_an_unchanged_file() {
    let env = TestEnv::new().await;
    let role = TestRole::new(&env).await;
    assert_eq!(env.run(&["migrate"], &[]).code, 0);
    role.grant_documented_privileges(&env).await;
    // As if the owner could not install it; the runtime role may not either.
    env.exec("DROP TRIGGER followers_etl_foreign_writes ON followers")
        .await;
    env.write_csv(csv(FOUR));
    let as_role = |verify: &'static str| {
        [
            ("DATABASE_URL", role.url.clone()),
            ("VERIFY_EVERY", verify.to_owned()),
        ]
    };
    let sync = |verify: &'static str| {
        let env_vars = as_role(verify);
        let vars: Vec<(&str, &str)> = env_vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
        env.sync_with(&[], &vars)
    };
    let first = sync("1h");
    first.assert_ended(0, "synced");
    assert!(
        first.stderr.contains("cannot install the write counter")
            && first.stderr.contains("VERIFY_EVERY=1h"),
        "{first:?}"
    );
    env.exec("DELETE FROM followers WHERE email = 'bob@x.io'")
        .await;
    // Not due yet: skipped (and the skip cannot vouch for the table).
    sync("1h").expect(0, "skipped");
    assert_eq!(env.followers().await.len(), 3);
    let status = env.run(&["status", "--json"], &[]);
    assert_eq!(status.json()["drift"]["state"], "unknown", "{status:?}");
    // Due: the unchanged file is compared and the follower is back.
    sync("0s").assert_ended(0, "synced");
    assert_eq!(env.followers().await, pairs(FOUR));
}

/// A partitioned `followers`: a statement on a partition never fires the
/// counter's trigger on the parent, so the counter does not count; an
/// unchanged file is compared again once VERIFY_EVERY has passed, and a row
/// deleted through the partition comes back.
#[tokio::test]
async fn a_write_into_a_partition_of_followers_is_found_by_the_verify_every_comparison() {
    let env = TestEnv::migrated().await;
    env.exec(
        "DROP TABLE followers;
         CREATE TABLE followers (email varchar(255) PRIMARY KEY, full_name varchar(255) NOT NULL,
                                 modified_at timestamp NOT NULL) PARTITION BY HASH (email);
         CREATE TABLE followers_p0 PARTITION OF followers FOR VALUES WITH (MODULUS 2, REMAINDER 0);
         CREATE TABLE followers_p1 PARTITION OF followers FOR VALUES WITH (MODULUS 2, REMAINDER 1);",
    )
    .await;
    env.write_csv(csv(FOUR));
    env.sync_with(&[], &[("VERIFY_EVERY", "1h")])
        .assert_ended(0, "synced");
    env.exec("DELETE FROM followers_p0; DELETE FROM followers_p1 WHERE email = 'bob@x.io'")
        .await;
    let run = env.sync_with(&[], &[("VERIFY_EVERY", "1s")]);
    // Within VERIFY_EVERY of the sync a skip may still trust the table; past it, never.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let run2 = env.sync_with(&[], &[("VERIFY_EVERY", "1s")]);
    assert!(
        run.outcome() == "synced" || run2.outcome() == "synced",
        "{run:?} {run2:?}"
    );
    assert_eq!(env.followers().await, pairs(FOUR));
}

async fn trigger_state(env: &TestEnv) -> String {
    sqlx::query_scalar(
        "SELECT tgenabled::text FROM pg_catalog.pg_trigger
          WHERE tgrelid = 'public.followers'::regclass AND tgname = 'followers_etl_foreign_writes'",
    )
    .fetch_one(&env.pool)
    .await
    .unwrap()
}

/// A write as a logical-replication apply worker, a CDC applier or a restore
/// tool makes it (`session_replication_role = replica`): the counter's
/// trigger is enabled ALWAYS, so it is counted and the unchanged file synced
/// back. One enabled ORIGIN only (as earlier versions installed it) is made
/// ALWAYS at start-up, and the table compared once.
#[tokio::test]
async fn a_write_under_replica_role_is_counted_and_an_origin_counter_is_made_always() {
    let env = TestEnv::migrated().await;
    env.write_csv(csv(FOUR));
    env.synced(&[]);
    assert_eq!(trigger_state(&env).await, "A", "installed ALWAYS");
    let replica = "BEGIN; SET LOCAL session_replication_role = replica;
        DELETE FROM followers WHERE email = 'bob@x.io'; COMMIT";
    env.exec(replica).await;
    let run = env.sync_with(&[], &[]);
    run.assert_ended(0, "synced");
    assert!(run.stderr.contains("changed outside the agent"), "{run:?}");
    assert_eq!(env.followers().await, pairs(FOUR));
    env.sync().expect(0, "skipped");

    // An ORIGIN trigger (an earlier version's, or a dump of one restored).
    env.exec("ALTER TABLE followers ENABLE TRIGGER followers_etl_foreign_writes")
        .await;
    env.exec(replica).await;
    let run = env.sync_with(&[], &[]);
    run.assert_ended(0, "synced");
    assert_eq!(trigger_state(&env).await, "A");
    assert_eq!(env.followers().await, pairs(FOUR));
    env.sync().expect(0, "skipped");
    env.exec(replica).await;
    env.sync_with(&[], &[]).assert_ended(0, "synced");
    assert_eq!(env.followers().await, pairs(FOUR));
}

/// An ORIGIN trigger the agent's role cannot enable ALWAYS (it does not own
/// `followers`) counts as no counter: start-up says so, and an unchanged file
/// is compared once VERIFY_EVERY has passed, which finds a replica-role write.
#[tokio::test]
async fn an_origin_counter_the_role_cannot_enable_always_falls_back_to_verify_every() {
    let env = TestEnv::new().await;
    let role = TestRole::new(&env).await;
    assert_eq!(env.run(&["migrate"], &[]).code, 0);
    role.grant_documented_privileges(&env).await;
    env.exec(&format!(
        "ALTER TABLE followers ENABLE TRIGGER followers_etl_foreign_writes;
         GRANT TRIGGER ON followers TO {}",
        role.name
    ))
    .await;
    env.write_csv(csv(FOUR));
    let sync = |verify: &str| {
        env.sync_with(
            &[],
            &[
                ("DATABASE_URL", role.url.as_str()),
                ("VERIFY_EVERY", verify),
            ],
        )
    };
    let first = sync("1h");
    first.assert_ended(0, "synced");
    assert!(
        first.stderr.contains("enable it ALWAYS") && first.stderr.contains("VERIFY_EVERY=1h"),
        "{first:?}"
    );
    assert_eq!(trigger_state(&env).await, "O");
    env.exec(
        "BEGIN; SET LOCAL session_replication_role = replica;
         DELETE FROM followers WHERE email = 'bob@x.io'; COMMIT",
    )
    .await;
    sync("1h").expect(0, "skipped");
    let status = env.run(&["status", "--json"], &[]);
    assert_eq!(status.json()["drift"]["state"], "unknown", "{status:?}");
    sync("0s").assert_ended(0, "synced");
    assert_eq!(env.followers().await, pairs(FOUR));
}

/// The upgrade: migration `m20261202_000085` enables ALWAYS the ORIGIN trigger
/// an earlier version installed, and forgets the count the last sync saw (the
/// writes it missed are unknown), so the next unchanged file is compared.
#[tokio::test]
async fn the_migration_enables_an_earlier_versions_origin_counter_always() {
    use migration::MigratorTrait;
    let env = TestEnv::migrated().await;
    env.write_csv(csv(FOUR));
    env.synced(&[]);
    env.exec(
        "ALTER TABLE followers ENABLE TRIGGER followers_etl_foreign_writes;
         DELETE FROM seaql_migrations WHERE version = 'm20261202_000085_followers_counter_always'",
    )
    .await;
    let db = sea_orm::Database::connect(env.url.as_str()).await.unwrap();
    migration::Migrator::up(&db, None).await.unwrap();
    assert_eq!(trigger_state(&env).await, "A");
    assert_eq!(counter(&env).await.1, None, "the last count is forgotten");
    env.sync_with(&[], &[]).assert_ended(0, "synced");
    env.sync().expect(0, "skipped");
}
