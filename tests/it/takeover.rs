//! Taking over the old Go service's database (docs/sync.md#taking-over-the-old-services-database), and a `followers` table of another shape.

use crate::helpers::*;
use followers_etl::domain::Email;
use sqlx::Row;

/// The old service's DDL, exactly, plus golang-migrate's table.
pub(crate) const OLD_DDL: &str = "
CREATE TABLE IF NOT EXISTS followers (email VARCHAR(255) PRIMARY KEY, full_name VARCHAR(255) NOT NULL, modified_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP);
CREATE SCHEMA IF NOT EXISTS etl_info_schema;
CREATE TABLE IF NOT EXISTS etl_info_schema.table_status (id SERIAL PRIMARY KEY, table_name VARCHAR(64) UNIQUE, last_activity TIMESTAMP DEFAULT '-infinity');
CREATE TABLE IF NOT EXISTS public.staging_followers (email VARCHAR(255), full_name VARCHAR(255) NOT NULL, load_id UUID NOT NULL);
CREATE TABLE schema_migrations (version bigint NOT NULL PRIMARY KEY, dirty boolean NOT NULL);
INSERT INTO schema_migrations VALUES (1, false);";

type Stored<'a> = (&'a str, &'a str, Option<&'a str>);

/// A database as the old service left it, holding `rows` (email, name, modified_at).
async fn old_service(env: &TestEnv, rows: &[Stored<'_>]) {
    env.exec(OLD_DDL).await;
    insert(env, rows).await;
}

async fn insert(env: &TestEnv, rows: &[Stored<'_>]) {
    for (email, name, modified_at) in rows {
        sqlx::query("INSERT INTO followers VALUES ($1, $2, $3::timestamp)")
            .bind(email)
            .bind(name)
            .bind(modified_at)
            .execute(&env.pool)
            .await
            .unwrap();
    }
}

/// (email, full_name, modified_at as text or "NULL"), by email.
async fn stored(env: &TestEnv) -> Vec<(String, String, String)> {
    sqlx::query("SELECT email::text, full_name::text, coalesce(modified_at::text, 'NULL') FROM followers ORDER BY email COLLATE \"C\"")
        .fetch_all(&env.pool)
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect()
}

fn owned(rows: &[(&str, &str, &str)]) -> Vec<(String, String, String)> {
    rows.iter()
        .map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string()))
        .collect()
}

const FOUR: &[Stored] = &[
    ("Ann@X.io", "Ann", Some("2024-01-01 10:00:00")),
    ("Bob@Example.com", "Bob", Some("2024-02-01 10:00:00")),
    ("Carol@x.io", "Carol", Some("2024-03-01 10:00:00")),
    ("dan@x.io", "Dan", Some("2024-04-01 10:00:00")),
];

#[tokio::test]
async fn the_old_services_table_is_taken_over_and_the_same_file_changes_nothing() {
    let env = TestEnv::new().await;
    old_service(&env, FOUR).await;
    let before = env.follower_versions().await;
    // The file in other letter cases than the table.
    env.write_csv("ann@x.io,Ann\nBOB@EXAMPLE.COM,Bob\nCarol@X.IO,Carol\nDan@x.io,Dan\n");
    let migrated = env.run(&["migrate"], &[]);
    assert_eq!(migrated.code, 0, "{migrated:?}");
    let after_migrate = env.follower_versions().await;
    let run = env.synced(&[]);
    assert_eq!(
        (
            run.n("inserted"),
            run.n("updated"),
            run.n("deleted"),
            run.n("unchanged")
        ),
        (0, 0, 0, 4),
        "{run:?}"
    );
    // The sync touched nothing; the migration kept every modified_at and left
    // the row already stored canonically alone.
    assert_eq!(env.follower_versions().await, after_migrate);
    let emails: Vec<&str> = after_migrate.iter().map(|v| v.0.as_str()).collect();
    assert_eq!(
        emails,
        ["ann@x.io", "bob@example.com", "carol@x.io", "dan@x.io"]
    );
    let times = |v: &[(String, chrono::NaiveDateTime, String)]| {
        let mut t: Vec<_> = v.iter().map(|r| r.1).collect();
        t.sort();
        t
    };
    assert_eq!(times(&after_migrate), times(&before));
    assert_eq!(after_migrate[3], before[3], "dan@x.io was rewritten");
    // The old three-column staging table was replaced.
    assert_eq!(
        env.scalar("SELECT count(*) FROM information_schema.columns WHERE table_name = 'staging_followers' AND column_name = 'line_no'")
            .await,
        1
    );
}

#[tokio::test]
async fn variants_of_one_email_merge_into_the_latest_row_each_logged_and_counted() {
    let env = TestEnv::new().await;
    old_service(
        &env,
        &[
            ("Ann@X.io", "Ann Old", Some("2024-01-01 00:00:00")),
            (" ann@x.io", "Ann New", Some("2025-01-01 00:00:00")),
            ("ANN@x.io ", "Ann Undated", None),
            ("Bob@x.io", "Bob Upper", Some("2024-06-01 00:00:00")),
            ("bob@x.io", "Bob Lower", Some("2024-06-01 00:00:00")),
            ("Cy@x.io", "Cy", None),
            ("dee@x.io", "Dee", Some("2024-01-01 00:00:00")),
        ],
    )
    .await;
    let migrated = env.run(&["migrate"], &[]);
    assert_eq!(migrated.code, 0, "{migrated:?}");
    let rows = stored(&env).await;
    assert_eq!(
        &rows[..2],
        &owned(&[
            ("ann@x.io", "Ann New", "2025-01-01 00:00:00"),
            // A tie on modified_at: the row already stored canonically wins.
            ("bob@x.io", "Bob Lower", "2024-06-01 00:00:00"),
        ])[..]
    );
    assert_eq!((rows[2].0.as_str(), rows[2].1.as_str()), ("cy@x.io", "Cy"));
    assert_ne!(rows[2].2, "NULL", "a NULL modified_at is filled");
    assert_eq!(
        rows[3],
        owned(&[("dee@x.io", "Dee", "2024-01-01 00:00:00")])[0]
    );
    assert_eq!(rows.len(), 4);
    let log = &migrated.stderr;
    for needle in [
        "email=ann@x.io",
        "\"Ann Old\"",
        "\"Ann Undated\"",
        "email=bob@x.io",
        "\"Bob Upper\"",
        "rewritten=2 merged=3 merged_into=2 null_modified_at=1",
    ] {
        assert!(log.contains(needle), "{needle} not logged: {log}");
    }
    let not_null = env
        .scalar("SELECT count(*) FROM pg_attribute WHERE attrelid = 'followers'::regclass AND attname IN ('email', 'modified_at') AND attnotnull")
        .await;
    assert_eq!(not_null, 2);
    // The unique key now holds canonical emails: a file of them syncs as is.
    env.write_csv("ann@x.io,Ann New\nbob@x.io,Bob Lower\ncy@x.io,Cy\ndee@x.io,Dee\n");
    let run = env.synced(&[]);
    assert_eq!(
        (run.n("inserted"), run.n("deleted"), run.n("unchanged")),
        (0, 0, 4)
    );
    // A second start finds nothing to do.
    let again = env.run(&["migrate"], &[]);
    assert!(
        again.code == 0 && !again.stderr.contains("takeover"),
        "{again:?}"
    );
}

#[tokio::test]
async fn the_four_row_example_syncs_at_once_and_a_rejected_row_protects_its_follower() {
    let env = TestEnv::in_process().await;
    old_service(&env, FOUR).await;
    let before = stored(&env).await;
    // Bob's row is rejected (name too long): with MAX_REJECTS=1 he stays as he is.
    let long = "B".repeat(300);
    env.write_csv(format!(
        "Ann@X.io,Ann\nBob@Example.com,{long}\nCarol@x.io,Carol\ndan@x.io,Dan\n"
    ));
    let run = env.sync_with(&[], &[("MAX_REJECTS", "1")]);
    run.assert_ended(0, "synced");
    assert_eq!(
        (run.n("inserted"), run.n("deleted"), run.n("rejected")),
        (0, 0, 1)
    );
    let after = stored(&env).await;
    assert_eq!(after.len(), 4);
    for (old, new) in before.iter().zip(&after) {
        assert_eq!(new.0, old.0.to_lowercase());
        assert_eq!((&new.1, &new.2), (&old.1, &old.2));
    }
}

#[tokio::test]
async fn a_database_with_the_earlier_migrations_applied_is_still_canonicalised() {
    let env = TestEnv::new().await;
    env.exec(OLD_DDL).await;
    assert_eq!(env.run(&["migrate"], &[]).code, 0);
    // As an earlier agent version left it: migrations 1-3 applied over the old
    // service's table, whose rows it never canonicalised.
    env.exec(
        "DELETE FROM seaql_migrations WHERE version LIKE 'm20261130_000004%';
         ALTER TABLE followers ALTER COLUMN modified_at DROP NOT NULL;",
    )
    .await;
    insert(&env, FOUR).await;
    env.write_csv("ann@x.io,Ann\nbob@example.com,Bob\ncarol@x.io,Carol\ndan@x.io,Dan\n");
    let run = env.synced(&[]);
    assert_eq!(
        (run.n("inserted"), run.n("deleted"), run.n("unchanged")),
        (0, 0, 4),
        "{run:?}"
    );
}

#[tokio::test]
async fn stored_emails_that_cannot_be_canonicalised_stop_the_takeover_and_change_nothing() {
    let env = TestEnv::new().await;
    old_service(
        &env,
        &[
            ("Ann@X.io", "Ann", None),
            ("not an email", "X", None),
            ("a@b@c.io", "Y", None),
            ("a\u{200b}@x.io", "Z", None),
        ],
    )
    .await;
    let before = stored(&env).await;
    fails_naming(
        &env.run(&["migrate"], &[]),
        &[
            "3 email(s)",
            "\"not an email\": email \"not an email\" contains whitespace",
            "\"a@b@c.io\": email \"a@b@c.io\" has",
            "U+200B",
            "Fix: correct or delete",
        ],
    );
    assert_eq!(stored(&env).await, before);
    // One transaction: the earlier migrations of this start are undone too.
    assert_eq!(
        env.scalar(
            "SELECT count(*) FROM information_schema.tables WHERE table_name = 'seaql_migrations'"
        )
        .await,
        0
    );
    assert_eq!(
        env.scalar("SELECT count(*) FROM information_schema.columns WHERE table_name = 'staging_followers'")
            .await,
        3
    );
    let sync = env.sync();
    assert_eq!(sync.code, 1, "{sync:?}");
    assert!(sync.stderr.contains("\"not an email\""), "{sync:?}");
}

#[tokio::test]
async fn a_followers_table_without_a_unique_key_is_refused_with_the_fix() {
    let env = TestEnv::new().await;
    env.exec(&OLD_DDL.replace("VARCHAR(255) PRIMARY KEY", "VARCHAR(255)"))
        .await;
    insert(
        &env,
        &[("Ann@X.io", "Ann", None), ("ann@x.io", "Ann", None)],
    )
    .await;
    fails_naming(
        &env.run(&["migrate"], &[]),
        &[
            "no primary key or unique key on email alone",
            "ADD PRIMARY KEY (email)",
        ],
    );
    assert_eq!(stored(&env).await.len(), 2);
}

const FOREIGN: &str = "CREATE TABLE followers (id serial, email text UNIQUE, name text)";

/// Exit code 1 and every `needle` on stderr.
fn fails_naming(run: &Run, needles: &[&str]) {
    assert_eq!(run.code, 1, "{run:?}");
    for needle in needles {
        assert!(run.stderr.contains(needle), "{needle}: {}", run.stderr);
    }
}

fn assert_names_the_shape(run: &Run) {
    fails_naming(
        run,
        &[
            "public.followers is not a table followers-etl can mirror into",
            "column full_name is missing",
            "column modified_at is missing",
            "Fix:",
        ],
    );
    assert!(!run.stderr.contains("merge step"), "{}", run.stderr);
}

#[tokio::test]
async fn an_incompatible_followers_table_is_named_at_migrate_and_at_every_start() {
    let env = TestEnv::new().await;
    env.exec(FOREIGN).await;
    env.write_csv(csv(&[("ann@example.com", "Ann")]));
    assert_names_the_shape(&env.run(&["migrate"], &[]));
    assert_names_the_shape(&env.sync());
    // Replaced after the migrations ran: every start still says so.
    let env = TestEnv::new().await;
    env.write_csv(csv(&[("ann@example.com", "Ann")]));
    env.synced(&[]);
    env.exec(&format!("DROP TABLE followers; {FOREIGN}")).await;
    env.write_csv(csv(&[("bob@example.com", "Bob")]));
    assert_names_the_shape(&env.sync());
    assert_names_the_shape(&env.run(&["migrate"], &[]));
    assert_names_the_shape(&env.run(&["serve"], &[("RUN_ON_START", "true")]));
    // A column too short for a valid email, and a NOT NULL column without a default.
    env.exec(
        "DROP TABLE followers;
         CREATE TABLE followers (email varchar(100) PRIMARY KEY, full_name text NOT NULL,
                                 modified_at timestamptz NOT NULL, owner int NOT NULL)",
    )
    .await;
    fails_naming(
        &env.sync(),
        &[
            "column email is character varying(100), not varchar(255) or text",
            "column owner is NOT NULL without a default",
        ],
    );
}

/// Stored spellings whose canonical form needs more than ASCII lower-casing.
const UNICODE: &[Stored] = &[
    ("ÄRGER@Example.DE", "Ärger", Some("2024-01-01 00:00:00")),
    ("user@XN--BCHER-KVA.DE", "Old", Some("2024-01-01 00:00:00")),
    ("User@Bücher.de", "New", Some("2025-01-01 00:00:00")),
    ("ΑΣ@x.io", "Sigma", None),
    ("İnci@X.io", "Inci", None),
    (" Padded@X.io\u{3000}", "Padded", None),
];

#[tokio::test]
async fn stored_emails_get_exactly_the_file_rows_rule_unicode_and_idna_included() {
    let env = TestEnv::new().await;
    old_service(&env, UNICODE).await;
    let migrated = env.run(&["migrate"], &[]);
    assert_eq!(migrated.code, 0, "{migrated:?}");
    let mut expected: Vec<String> = UNICODE
        .iter()
        .map(|(e, _, _)| Email::parse(e).unwrap().as_str().to_owned())
        .collect();
    expected.sort();
    expected.dedup();
    let mut got: Vec<String> = stored(&env).await.into_iter().map(|r| r.0).collect();
    got.sort();
    assert_eq!(got, expected);
    assert!(got.contains(&"user@bücher.de".to_owned()), "{got:?}");
    assert!(got.contains(&"ας@x.io".to_owned()), "{got:?}");
    // The file, in the stored spellings, changes nothing.
    let file: String = UNICODE
        .iter()
        .filter(|(e, _, _)| !e.starts_with("user@XN"))
        .map(|(e, n, _)| format!("{},{n}\n", e.trim()))
        .collect();
    env.write_csv(format!("email,full_name\n{file}"));
    let run = env.synced(&[]);
    assert_eq!(
        (run.n("inserted"), run.n("updated"), run.n("deleted")),
        (0, 0, 0),
        "{run:?}"
    );
}

#[tokio::test]
async fn the_old_services_padded_names_are_trimmed_so_the_same_file_changes_nothing() {
    let env = TestEnv::new().await;
    old_service(
        &env,
        &[
            ("cy@x.io", "Cy ", Some("2024-01-01 10:00:00")),
            ("dee@x.io", " Dee", Some("2024-02-01 10:00:00")),
            ("eve@x.io", "\u{3000}Eve\t", Some("2024-03-01 10:00:00")),
            ("fay@x.io", "Fay", Some("2024-04-01 10:00:00")),
        ],
    )
    .await;
    // The file holds exactly the stored values (the reader trims them).
    env.write_csv("cy@x.io,Cy \ndee@x.io, Dee\neve@x.io,\u{3000}Eve\t\nfay@x.io,Fay\n");
    let migrated = env.run(&["migrate"], &[]);
    assert_eq!(migrated.code, 0, "{migrated:?}");
    assert!(
        migrated.stderr.contains("names_trimmed=3"),
        "{}",
        migrated.stderr
    );
    let after = env.follower_versions().await;
    let run = env.synced(&[]);
    assert_eq!(
        (
            run.n("inserted"),
            run.n("updated"),
            run.n("deleted"),
            run.n("unchanged")
        ),
        (0, 0, 0, 4),
        "{run:?}"
    );
    assert_eq!(env.follower_versions().await, after);
    assert_eq!(
        stored(&env).await,
        owned(&[
            ("cy@x.io", "Cy", "2024-01-01 10:00:00"),
            ("dee@x.io", "Dee", "2024-02-01 10:00:00"),
            ("eve@x.io", "Eve", "2024-03-01 10:00:00"),
            ("fay@x.io", "Fay", "2024-04-01 10:00:00"),
        ])
    );
}

#[tokio::test]
async fn the_takeover_applies_the_strict_email_rules_root_dot_and_nfc_included() {
    let env = TestEnv::new().await;
    old_service(
        &env,
        &[
            ("Dee@X.io.", "Dee Dot", Some("2024-01-01 00:00:00")),
            ("dee@x.io", "Dee", Some("2025-01-01 00:00:00")),
            ("JOSE\u{301}@x.io", "Jose", None),
            ("User@XN--BCHER-KVA.de", "Bu", None),
        ],
    )
    .await;
    let migrated = env.run(&["migrate"], &[]);
    assert_eq!(migrated.code, 0, "{migrated:?}");
    let emails: Vec<String> = stored(&env).await.into_iter().map(|r| r.0).collect();
    assert_eq!(emails, ["dee@x.io", "jos\u{e9}@x.io", "user@bücher.de"]);
    assert_eq!(stored(&env).await[0].1, "Dee");
    // A stored email the rules refuse stops the takeover, naming it.
    let env = TestEnv::new().await;
    old_service(
        &env,
        &[("q@x..io", "Q", None), ("w@exa_mple.com", "W", None)],
    )
    .await;
    fails_naming(
        &env.run(&["migrate"], &[]),
        &["2 email(s)", "\"q@x..io\"", "empty label", "underscore"],
    );
}

#[tokio::test]
async fn followers_stored_under_the_earlier_rules_are_canonicalised_once_and_invalid_ones_kept() {
    let env = TestEnv::new().await;
    env.write_csv(csv(&[("ann@x.io", "Ann")]));
    env.synced(&[]);
    // As an earlier version left it: rows its laxer rules let in.
    env.exec(
        "DELETE FROM seaql_migrations WHERE version LIKE 'm20261201_000011%';
         INSERT INTO followers VALUES ('dee@x.io.', 'Dee Dot', '2024-01-01'),
           ('dee@x.io', 'Dee', '2025-01-01'), (E'jose\\u0301@x.io', ' Jose ', '2024-01-01'),
           ('q@x..io', 'Q', '2024-01-01');",
    )
    .await;
    let migrated = env.run(&["migrate"], &[]);
    assert_eq!(migrated.code, 0, "{migrated:?}");
    for needle in [
        "rewritten=1 merged=1 merged_into=1 names_trimmed=1",
        "\"q@x..io\"",
        "left as they are",
    ] {
        assert!(
            migrated.stderr.contains(needle),
            "{needle}: {}",
            migrated.stderr
        );
    }
    let rows: Vec<(String, String)> = stored(&env).await.into_iter().map(|r| (r.0, r.1)).collect();
    assert_eq!(
        rows,
        [
            ("ann@x.io".to_string(), "Ann".to_string()),
            ("dee@x.io".into(), "Dee".into()),
            ("jos\u{e9}@x.io".into(), "Jose".into()),
            ("q@x..io".into(), "Q".into()),
        ]
    );
    let again = env.run(&["migrate"], &[]);
    assert!(
        again.code == 0 && !again.stderr.contains("takeover"),
        "{again:?}"
    );
}

/// Rows whose `modified_at` is within ten minutes of now in `zone`'s wall time.
async fn written_in(env: &TestEnv, zone: &str) -> i64 {
    env.scalar(&format!(
        "SELECT count(*) FROM followers
          WHERE abs(extract(epoch FROM modified_at - (now() AT TIME ZONE '{zone}'))) < 600"
    ))
    .await
}

#[tokio::test]
async fn modified_at_is_written_in_the_clock_of_the_old_services_column() {
    let env = TestEnv::new().await;
    env.exec(&format!(
        "ALTER DATABASE {} SET TimeZone = 'America/New_York'",
        env.name
    ))
    .await;
    env.exec(OLD_DDL).await;
    // As the old service wrote: its sessions had the database's time zone.
    env.exec(
        "BEGIN; SET LOCAL TimeZone = 'America/New_York';
         INSERT INTO followers (email, full_name) VALUES ('ann@x.io', 'Ann'), ('cy@x.io', 'Cy');
         COMMIT;",
    )
    .await;
    assert_eq!(written_in(&env, "America/New_York").await, 2);
    env.write_csv("ann@x.io,Ann Renamed\nbob@x.io,Bob\ncy@x.io,Cy\n");
    let run = env.synced(&[]);
    assert_eq!((run.n("inserted"), run.n("updated")), (1, 1), "{run:?}");
    // Old, renamed and new rows alike: New York wall time, not UTC.
    assert_eq!(written_in(&env, "America/New_York").await, 3);
    assert_eq!(written_in(&env, "UTC").await, 0);
    // history shows Ann's old modified_at as the instant it was, not New York's
    // wall time labelled UTC.
    let history = env.run(&["history", "ann@x.io", "--json"], &[]);
    let json: serde_json::Value = serde_json::from_str(history.stdout.trim()).unwrap();
    let old = json["events"][0]["old_modified_at"].as_str().unwrap();
    let old = chrono::DateTime::parse_from_rfc3339(old).unwrap();
    let age = chrono::Utc::now().signed_duration_since(old).num_seconds();
    assert!((0..600).contains(&age), "{old} is {age} s ago: {history:?}");
    assert!(
        run.stderr.contains("America/New_York") && run.stderr.contains("ALTER DATABASE"),
        "{}",
        run.stderr
    );
    // The first sync into an empty table too.
    env.exec("DELETE FROM followers").await;
    env.write_csv("dee@x.io,Dee\n");
    env.synced(&["--force"]);
    assert_eq!(written_in(&env, "America/New_York").await, 1);

    // The agent's own table (no default) holds UTC whatever the database's zone.
    let env = TestEnv::new().await;
    env.exec(&format!(
        "ALTER DATABASE {} SET TimeZone = 'America/New_York'",
        env.name
    ))
    .await;
    env.write_csv("ann@x.io,Ann\n");
    let run = env.synced(&[]);
    env.write_csv("ann@x.io,Ann\nbob@x.io,Bob\n");
    env.synced(&[]);
    assert_eq!(written_in(&env, "UTC").await, 2);
    assert!(!run.stderr.contains("America/New_York"), "{}", run.stderr);
}
