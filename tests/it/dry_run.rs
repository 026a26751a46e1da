//! A dry run never writes (docs/sync.md#dry-run, issue 16 §5): against the old
//! service's database, with every migration pending, `sync --dry-run`,
//! `revert --dry-run`, `status`, `history`, `rejects` and `check` leave the
//! database exactly as they found it.

use crate::helpers::*;
use crate::takeover::OLD_DDL;
use sqlx::Row;

/// Everything a command could have changed: the followers as stored (with
/// `modified_at`), and every table and sequence outside the catalogs.
async fn snapshot(env: &TestEnv) -> (Vec<String>, Vec<String>) {
    let rows = sqlx::query(
        "SELECT format('%s|%s|%s', email, full_name, coalesce(modified_at::text, 'NULL'))
         FROM followers ORDER BY email COLLATE \"C\"",
    )
    .fetch_all(&env.pool)
    .await
    .unwrap()
    .iter()
    .map(|r| r.get(0))
    .collect();
    let relations = sqlx::query(
        "SELECT format('%s.%s %s', n.nspname, c.relname, c.relkind) FROM pg_class c
         JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast')
         ORDER BY 1",
    )
    .fetch_all(&env.pool)
    .await
    .unwrap()
    .iter()
    .map(|r| r.get(0))
    .collect();
    (rows, relations)
}

#[tokio::test]
async fn dry_runs_and_read_commands_leave_the_old_services_database_untouched() {
    let env = TestEnv::new().await;
    env.exec(OLD_DDL).await;
    env.exec(
        "INSERT INTO followers VALUES ('Ann@X.io', 'Ann', '2024-01-01 10:00:00'), (' ann@x.io', 'Ann B', NULL)",
    )
    .await;
    env.write_csv("ann@x.io,Ann\nbob@x.io,Bob\n");
    let before = snapshot(&env).await;
    assert_eq!(before.0.len(), 2);

    let dry = env.sync_with(&["--dry-run"], &[]);
    dry.expect(1, "refused");
    assert!(
        dry.stderr.contains("`followers-etl migrate`") && dry.stderr.contains("is pending"),
        "{dry:?}"
    );
    let revert = env.run(&["revert", "--last", "--dry-run"], &[]);
    assert_eq!(revert.code, 1, "{revert:?}");
    assert!(
        revert.stderr.contains("`followers-etl migrate`"),
        "{revert:?}"
    );
    for args in [
        &["status"][..],
        &["status", "--json"],
        &["history", "ann@x.io"],
        &["rejects"],
        &["check"],
    ] {
        let run = env.run(args, &[]);
        assert!(!run.stderr.contains("panicked"), "{args:?}: {run:?}");
    }
    let after = snapshot(&env).await;
    assert_eq!(after, before, "a read-only command changed the database");
    assert_eq!(
        env.scalar("SELECT count(*) FROM followers WHERE modified_at IS NULL")
            .await,
        1
    );
    assert_eq!(
        env.scalar("SELECT count(*) FROM pg_class WHERE relname = 'seaql_migrations'")
            .await,
        0,
        "a migration was recorded"
    );

    // Once migrated (on purpose), the dry run plans and still changes nothing.
    env.run(&["migrate"], &[]);
    let migrated = snapshot(&env).await;
    let dry = env.sync_with(&["--dry-run"], &[]);
    dry.expect(0, "dry_run");
    assert_eq!(snapshot(&env).await.0, migrated.0);
}

/// The dry run plans with the merge's own diff (docs/sync.md#dry-run): what it
/// reports is what a sync of the same file then does, count for count, for the
/// first sync into the empty table and for a later one with a rename, a new
/// follower, a delete, a duplicated email (its last line renames) and a
/// rejected line that protects its follower from the delete.
#[tokio::test]
async fn a_dry_runs_counts_are_those_of_the_sync_that_follows() {
    let env = TestEnv::migrated_in_process().await;
    let limits = [
        ("MAX_REJECTS", "5"),
        ("MAX_DELETE_RATIO", "1"),
        ("MAX_UPDATE_RATIO", "1"),
    ];
    let too_long = "x".repeat(300);
    let files = [
        csv(&[
            ("ann@example.com", "Ann"),
            ("bob@example.com", "Bob"),
            ("cat@example.com", "Cat"),
            ("dee@example.com", "Dee"),
            ("eve@example.com", "Eve"),
        ]),
        csv(&[
            ("ann@example.com", "Ann"),
            ("bob@example.com", "Robert"),
            ("cat@example.com", &too_long),
            ("eve@example.com", "Eve"),
            ("fay@example.com", "Fay"),
            ("eve@example.com", "Eva"),
        ]),
    ];
    let mut changed = Vec::new();
    for file in files {
        env.write_csv(file);
        let before = env.follower_versions().await;
        let dry = env.sync_with(&["--dry-run"], &limits);
        dry.expect(0, "dry_run");
        assert_eq!(env.follower_versions().await, before, "{dry:?}");
        assert_eq!(env.staging_rows().await, 0);
        let real = env.sync_with(&[], &limits);
        real.expect(0, "synced");
        for key in [
            "rows_read",
            "inserted",
            "updated",
            "deleted",
            "unchanged",
            "rejected",
            "duplicates",
        ] {
            assert_eq!(dry.n(key), real.n(key), "{key}: {dry:?} then {real:?}");
        }
        changed.push((real.n("inserted"), real.n("updated"), real.n("deleted")));
    }
    assert_eq!(changed, [(5, 0, 0), (1, 2, 1)], "the cases happened");
}
