//! The table shapes real databases have (docs/sync.md#readers-and-writers-during-a-run): every sync that matters (first sync, change, refusal, revert, crash
//! recovery) against the old service's DDL, a published table with `REPLICA
//! IDENTITY USING INDEX`, a view that depends on the key, a hash-partitioned
//! table, a table that is itself a partition, an extra index and a user
//! trigger, an application's own nullable column, and a foreign key from
//! another table. Plus the first sync's fast path: taken only where it loses
//! nothing, never with `FIRST_SYNC_KEY_REBUILD=false`, and given up for the
//! plain insert when the table is being read.

use crate::concurrency::migrate;
use crate::helpers::*;
use sqlx::{Connection, Row};
use std::process::Stdio;
use std::time::Duration;

use crate::helpers::fixtures::{A, B};

struct Shape {
    /// Run before the agent's migrations (the old service's database).
    before_migrate: &'static str,
    /// Run after them (the agent's table, reshaped).
    after_migrate: &'static str,
    /// Run after the first sync (the application's own rows elsewhere).
    after_first_sync: &'static str,
    /// What must still hold after every run, as SQL returning true.
    invariant: &'static str,
}

type Versions = Vec<(String, String, chrono::NaiveDateTime)>;

async fn versions(env: &TestEnv) -> Versions {
    sqlx::query("SELECT email::text, full_name::text, modified_at FROM followers ORDER BY email")
        .fetch_all(&env.pool)
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect()
}

async fn holds(env: &TestEnv, shape: &Shape, when: &str) {
    let ok: bool = sqlx::query_scalar(shape.invariant)
        .fetch_one(&env.pool)
        .await
        .unwrap_or_else(|e| panic!("{when}: {}: {e}", shape.invariant));
    assert!(ok, "{when}: {}", shape.invariant);
}

/// The primary key's index (its oid: a rebuilt key gets a new one), and
/// whether it is valid.
async fn key_index(env: &TestEnv) -> (i64, bool) {
    let row = sqlx::query(
        "SELECT c.conindid::bigint, i.indisvalid FROM pg_constraint c JOIN pg_index i ON i.indexrelid = c.conindid
          WHERE c.conrelid = 'followers'::regclass AND c.contype = 'p'",
    )
    .fetch_one(&env.pool)
    .await
    .unwrap();
    (row.get(0), row.get(1))
}

/// SIGKILLs a sync of `rows` at a moment after it started staging; the table
/// then holds `old` or `rows`, and the next run recovers and mirrors `rows`.
async fn crash_and_recover(env: &TestEnv, old: &[Follower], rows: &[Follower], shape: &Shape) {
    env.write_csv(csv_owned(rows));
    let mut cmd = env.command();
    cmd.args(["sync", "--json"])
        .env("MAX_DELETE_RATIO", "1.0")
        .env("BATCH_SIZE", "500")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut child = cmd.spawn().unwrap();
    let nanos: u64 = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos()
        .into();
    for _ in 0..3000 {
        if env.staging_rows().await > 0 || child.try_wait().unwrap().is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(nanos % 150)).await;
    let _ = child.kill();
    let _ = child.wait();
    let digest = env.followers_digest().await.unwrap();
    assert!(
        digest == env.digest_of(old).await || digest == env.digest_of(rows).await,
        "after the kill: the old or the new file"
    );
    holds(env, shape, "after the kill").await;
    let next = env.sync_with(&[], &[("MAX_DELETE_RATIO", "1.0")]);
    assert!(
        matches!(next.outcome().as_str(), "synced" | "skipped") && next.code == 0,
        "{next:?}"
    );
    assert_eq!(env.staging_rows().await, 0);
    assert_eq!(
        env.scalar("SELECT count(*) FROM etl_info_schema.sync_runs WHERE outcome = 'running'")
            .await,
        0
    );
    assert_eq!(
        env.followers_digest().await.unwrap(),
        env.digest_of(rows).await
    );
}

async fn matrix(shape: Shape) {
    let env = TestEnv::in_process().await;
    if !shape.before_migrate.is_empty() {
        env.exec(shape.before_migrate).await;
    }
    migrate(&env);
    if !shape.after_migrate.is_empty() {
        env.exec(shape.after_migrate).await;
    }
    // First sync.
    env.write_csv(csv(A));
    let first = env.synced(&[]);
    assert_eq!(first.n("inserted"), 4, "{first:?}");
    assert_eq!(env.followers().await, pairs(A));
    assert!(key_index(&env).await.1, "the key is valid");
    if !shape.after_first_sync.is_empty() {
        env.exec(shape.after_first_sync).await;
    }
    holds(&env, &shape, "after the first sync").await;
    let a = versions(&env).await;
    // A change.
    std::thread::sleep(Duration::from_millis(5));
    env.write_csv(csv(B));
    let second = env.synced(&[]);
    assert_eq!(
        (
            second.n("inserted"),
            second.n("updated"),
            second.n("deleted")
        ),
        (1, 1, 1),
        "{second:?}"
    );
    assert_eq!(env.followers().await, pairs(B));
    holds(&env, &shape, "after a change").await;
    // A refusal: 3 of 4 deleted (dee, whom a subscription may reference, kept).
    env.write_csv(csv(&B[2..3]));
    env.refused(&[]);
    assert_eq!(env.followers().await, pairs(B));
    // A revert.
    let revert = env.run(&["revert", "--last", "--json"], &[]);
    revert.assert_ended(0, "reverted");
    assert_eq!(versions(&env).await, a, "exactly A, modified_at included");
    holds(&env, &shape, "after a revert").await;
    // A crash, and the recovery.
    let mut big = pairs(A);
    big.extend(many(3000));
    crash_and_recover(&env, &pairs(A), &big, &shape).await;
    holds(&env, &shape, "after the recovery").await;
}

#[tokio::test]
async fn shape_old_service_ddl() {
    matrix(Shape {
        before_migrate: crate::takeover::OLD_DDL,
        after_migrate: "",
        after_first_sync: "",
        invariant: "SELECT count(*) = 1 FROM pg_constraint WHERE conrelid = 'followers'::regclass AND contype = 'p'",
    })
    .await;
}

#[tokio::test]
async fn shape_published_with_replica_identity_using_index() {
    // A publication needs no logical wal_level to be created (or to make an
    // UPDATE without replica identity fail).
    matrix(Shape {
        before_migrate: "",
        after_migrate: "CREATE PUBLICATION followers_cdc FOR TABLE followers;
                        ALTER TABLE followers REPLICA IDENTITY USING INDEX followers_pkey;",
        after_first_sync: "",
        invariant: "SELECT relreplident = 'i' AND EXISTS (SELECT 1 FROM pg_index WHERE indrelid = 'followers'::regclass AND indisreplident)
                      FROM pg_class WHERE oid = 'followers'::regclass",
    })
    .await;
}

#[tokio::test]
async fn shape_a_view_depending_on_the_key() {
    matrix(Shape {
        before_migrate: "",
        after_migrate:
            "CREATE VIEW follower_names AS SELECT email, full_name FROM followers GROUP BY email;",
        after_first_sync: "",
        invariant:
            "SELECT (SELECT count(*) FROM follower_names) = (SELECT count(*) FROM followers)",
    })
    .await;
}

#[tokio::test]
async fn shape_hash_partitioned() {
    matrix(Shape {
        before_migrate: "",
        after_migrate: "DROP TABLE followers;
            CREATE TABLE followers (email varchar(255) PRIMARY KEY, full_name varchar(255) NOT NULL,
                                    modified_at timestamp NOT NULL) PARTITION BY HASH (email);
            CREATE TABLE followers_p0 PARTITION OF followers FOR VALUES WITH (MODULUS 4, REMAINDER 0);
            CREATE TABLE followers_p1 PARTITION OF followers FOR VALUES WITH (MODULUS 4, REMAINDER 1);
            CREATE TABLE followers_p2 PARTITION OF followers FOR VALUES WITH (MODULUS 4, REMAINDER 2);
            CREATE TABLE followers_p3 PARTITION OF followers FOR VALUES WITH (MODULUS 4, REMAINDER 3);",
        after_first_sync: "",
        invariant: "SELECT relkind = 'p' AND (SELECT count(*) FROM pg_inherits WHERE inhparent = 'followers'::regclass) = 4
                      FROM pg_class WHERE oid = 'followers'::regclass",
    })
    .await;
}

#[tokio::test]
async fn shape_a_partition_of_another_table() {
    matrix(Shape {
        before_migrate: "",
        after_migrate: "DROP TABLE followers;
            CREATE TABLE all_followers (email varchar(255) PRIMARY KEY, full_name varchar(255) NOT NULL,
                                        modified_at timestamp NOT NULL) PARTITION BY HASH (email);
            CREATE TABLE followers PARTITION OF all_followers FOR VALUES WITH (MODULUS 1, REMAINDER 0);",
        after_first_sync: "",
        invariant: "SELECT relispartition AND (SELECT count(*) FROM all_followers) = (SELECT count(*) FROM followers)
                      FROM pg_class WHERE oid = 'followers'::regclass",
    })
    .await;
}

#[tokio::test]
async fn shape_an_extra_index_and_a_user_trigger() {
    matrix(Shape {
        before_migrate: "",
        after_migrate: "CREATE INDEX followers_by_name ON followers (full_name);
            CREATE TABLE follower_audit (op text NOT NULL, email text NOT NULL);
            CREATE FUNCTION follower_audit() RETURNS trigger LANGUAGE plpgsql AS $$
              BEGIN
                INSERT INTO follower_audit VALUES (TG_OP, CASE WHEN TG_OP = 'DELETE' THEN OLD.email ELSE NEW.email END);
                RETURN CASE WHEN TG_OP = 'DELETE' THEN OLD ELSE NEW END;
              END $$;
            CREATE TRIGGER follower_audit AFTER INSERT OR UPDATE OR DELETE ON followers
              FOR EACH ROW EXECUTE FUNCTION follower_audit();",
        after_first_sync: "",
        // Every insert was seen by the trigger, and the index is there and valid.
        invariant: "SELECT (SELECT count(*) FROM follower_audit WHERE op = 'INSERT') >= (SELECT count(*) FROM followers)
                       AND EXISTS (SELECT 1 FROM pg_index WHERE indexrelid = 'followers_by_name'::regclass AND indisvalid)",
    })
    .await;
}

#[tokio::test]
async fn shape_an_application_column() {
    matrix(Shape {
        before_migrate: "",
        after_migrate: "ALTER TABLE followers ADD COLUMN notes text;",
        after_first_sync: "UPDATE followers SET notes = 'vip' WHERE email = 'cy@example.com';",
        // The application's value survives every run that leaves cy as is.
        invariant:
            "SELECT notes IS NOT DISTINCT FROM 'vip' FROM followers WHERE email = 'cy@example.com'",
    })
    .await;
}

#[tokio::test]
async fn shape_a_foreign_key_from_another_table() {
    matrix(Shape {
        before_migrate: "",
        after_migrate: "CREATE TABLE subscriptions (email varchar(255) NOT NULL REFERENCES followers (email), plan text);",
        after_first_sync: "INSERT INTO subscriptions VALUES ('dee@example.com', 'gold');",
        invariant: "SELECT count(*) = 0 FROM subscriptions s WHERE NOT EXISTS (SELECT 1 FROM followers f WHERE f.email = s.email)",
    })
    .await;
}

#[tokio::test]
async fn a_delete_a_foreign_key_forbids_fails_the_run_naming_the_constraint() {
    let env = TestEnv::new().await;
    migrate(&env);
    env.exec("CREATE TABLE subscriptions (email varchar(255) NOT NULL REFERENCES followers (email), plan text)")
        .await;
    env.write_csv(csv(A));
    env.synced(&[]);
    env.exec("INSERT INTO subscriptions VALUES ('dee@example.com', 'gold')")
        .await;
    let a = versions(&env).await;
    env.write_csv(csv(&A[..3]));
    let run = env.sync();
    run.assert_ended(1, "failed");
    assert!(
        run.stderr.contains("subscriptions_email_fkey") && run.stderr.contains("rolled back"),
        "{run:?}"
    );
    assert_eq!(versions(&env).await, a, "nothing changed");
    assert_eq!(env.staging_rows().await, 0);
}

#[tokio::test]
async fn the_first_sync_rebuilds_the_key_only_where_allowed_and_gives_way_to_readers() {
    let fill = |env: &TestEnv, vars: &[(&str, &str)]| {
        env.write_csv(csv(A));
        let run = env.sync_with(&[], vars);
        run.assert_ended(0, "synced");
    };
    // A plain table: rebuilt (a new index), valid.
    let env = TestEnv::in_process().await;
    migrate(&env);
    let before = key_index(&env).await.0;
    fill(&env, &[]);
    let after = key_index(&env).await;
    assert!(
        after.0 != before && after.1,
        "rebuilt: {before} -> {after:?}"
    );
    // FIRST_SYNC_KEY_REBUILD=false: never.
    let env = TestEnv::in_process().await;
    migrate(&env);
    let before = key_index(&env).await.0;
    fill(&env, &[("FIRST_SYNC_KEY_REBUILD", "false")]);
    assert_eq!(key_index(&env).await.0, before);
    // A reader holding the table: the exclusive lock is given up, the rows go
    // in with the key in place, and the reader was never blocked for long.
    let env = TestEnv::in_process().await;
    migrate(&env);
    let before = key_index(&env).await.0;
    let mut reader = sqlx::PgConnection::connect(&env.url).await.unwrap();
    sqlx::raw_sql("BEGIN; SELECT count(*) FROM followers")
        .execute(&mut reader)
        .await
        .unwrap();
    fill(&env, &[]);
    assert_eq!(key_index(&env).await.0, before);
    sqlx::raw_sql("COMMIT").execute(&mut reader).await.unwrap();
    assert_eq!(env.followers().await, pairs(A));
}
