//! The configuration of mirrors (docs/mirrors.md, docs/configuration.md#mirrors):
//! the config file's `[[mirror]]` tables read at load, `followers-etl mirrors`,
//! `--mirror`, and the refusal of configured mirrors until their run is wired
//! (docs/mirrors.md#status).

use crate::helpers::*;

/// The issue's example, as an operator would write it.
const SUBSCRIBERS: &str = r#"
[[mirror]]
name = "subscribers"                 # unique, [a-z0-9_]+; used by --mirror, status, metrics labels
file = "subscribers.csv"             # relative to TABLES_DIR, as CSV_FILE is today
table = "crm.subscribers"            # schema-qualified; created if absent (with the key as primary key)
key = ["account_id", "email"]        # one or more columns; a file's duplicate keys: last wins, reported
schedule = "0 */6 * * *"             # optional, else CRON_SCHEDULE
max_delete_ratio = 0.2               # optional, else MAX_DELETE_RATIO; likewise max_rejects, csv_delimiter,
                                     # csv_header, csv_encoding, ready_marker, journal_keep_runs
modified_column = "modified_at"      # optional: a timestamp column the agent sets on insert and change
columns = [
  { name = "account_id", type = "bigint" },
  { name = "email",      type = "email" },                      # the followers rule: trim, lower-case, IDNA
  { name = "full_name",  type = "text", max_length = 255, source = "Full Name" },   # header to read it from
  { name = "plan",       type = "text", nullable = true },
  { name = "signed_up",  type = "date" },
  { name = "opted_in",   type = "boolean" },
  { name = "balance",    type = "numeric", nullable = true },
]
"#;

/// Writes `text` as the env's config file and returns its path for `--config`.
fn config(env: &TestEnv, text: &str) -> String {
    let path = env.dir.path().join("mirrors.toml");
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_owned()
}

async fn followers_is_missing(env: &TestEnv) -> bool {
    env.scalar("SELECT count(*) FROM pg_tables WHERE tablename = 'followers'")
        .await
        == 0
}

#[tokio::test]
async fn mirrors_json_shows_the_example_resolved_with_defaults_filled() {
    let env = TestEnv::new().await;
    let path = config(&env, SUBSCRIBERS);
    let run = env.run(
        &["--config", &path, "mirrors", "--json"],
        &[("MAX_REJECTS", "3")],
    );
    assert_eq!(run.code, 0, "{run:?}");
    let json = run.json();
    let mirrors = json["mirrors"].as_array().expect("a mirrors array");
    assert_eq!(mirrors.len(), 2, "{json}");
    let followers = &mirrors[0];
    assert_eq!(followers["name"], "followers");
    assert_eq!(followers["builtin"], true);
    assert_eq!(followers["file"], "followers.csv");
    assert_eq!(followers["table"], "public.followers");
    assert_eq!(followers["key"], serde_json::json!(["email"]));
    let s = &mirrors[1];
    assert_eq!(s["name"], "subscribers");
    assert_eq!(s["builtin"], false);
    assert_eq!(s["file"], "subscribers.csv");
    assert_eq!(s["files"], serde_json::Value::Null);
    assert_eq!(s["table"], "crm.subscribers");
    assert_eq!(s["key"], serde_json::json!(["account_id", "email"]));
    assert_eq!(s["modified_column"], "modified_at");
    assert_eq!(s["schedule"], "0 */6 * * *");
    let columns: Vec<(String, String, bool, String)> = s["columns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["name"].as_str().unwrap().to_owned(),
                c["type"].as_str().unwrap().to_owned(),
                c["nullable"].as_bool().unwrap(),
                c["source"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let expected = [
        ("account_id", "bigint", false, "account_id"),
        ("email", "email", false, "email"),
        ("full_name", "text", false, "Full Name"),
        ("plan", "text", true, "plan"),
        ("signed_up", "date", false, "signed_up"),
        ("opted_in", "boolean", false, "opted_in"),
        ("balance", "numeric", true, "balance"),
    ]
    .map(|(n, t, null, src)| (n.to_owned(), t.to_owned(), null, src.to_owned()));
    assert_eq!(columns, expected);
    assert_eq!(s["columns"][2]["max_length"], 255);
    // The mirror's own values, and the variables' where it sets none.
    assert_eq!(
        s["effective"],
        serde_json::json!({
            "schedule": "0 */6 * * *",
            "max_delete_ratio": 0.2,
            "max_rejects": 3,
            "csv_delimiter": ",",
            "csv_header": "auto",
            "csv_encoding": "auto",
            "ready_marker": null,
            "journal_keep_runs": 100,
        })
    );
    assert_eq!(s["max_rejects"], serde_json::Value::Null, "{s}");
    assert_eq!(followers["effective"]["schedule"], "@every 24h");
    assert_eq!(followers["effective"]["max_delete_ratio"], 0.5);

    let text = env.run(&["--config", &path, "mirrors"], &[]);
    assert_eq!(text.code, 0, "{text:?}");
    for part in [
        "mirror followers (built-in)",
        "mirror subscribers",
        "table: crm.subscribers",
        "key: account_id, email",
        "full_name text(max_length 255), not nullable, source \"Full Name\"",
        "plan text, nullable",
        "max_delete_ratio: 0.2 (the mirror's own)",
        "max_rejects: 0 (MAX_REJECTS)",
    ] {
        assert!(text.stdout.contains(part), "{part:?} in {}", text.stdout);
    }
    assert!(
        followers_is_missing(&env).await,
        "mirrors reads no database"
    );
}

#[tokio::test]
async fn a_bad_mirror_exits_2_naming_it_and_the_key_never_a_secret() {
    let env = TestEnv::new().await;
    let secret = "database_url = \"postgres://app:hunter2@127.0.0.1:1/x\"\n";
    let base = "file = \"a.csv\"\ntable = \"crm.a\"\nkey = [\"id\"]\ncolumns = [{ name = \"id\", type = \"bigint\" }]\n";
    for (mirror, expected) in [
        (
            format!("name = \"Bad Name\"\n{base}"),
            &["[[mirror]] #1", "name:"][..],
        ),
        (
            "name = \"subs\"\nfile = \"a.csv\"\ntable = \"crm.a\"\nkey = [\"acount_id\"]\ncolumns = [{ name = \"id\", type = \"bigint\" }]\n".to_owned(),
            &["[[mirror]] subs", "key:", "\"acount_id\" is not one of the columns"][..],
        ),
        (
            format!("name = \"subs\"\nschedul = \"@daily\"\n{base}"),
            &["[[mirror]] subs", "unknown key \"schedul\""][..],
        ),
        (
            format!("name = \"subs\"\nfiles = \"p-*.csv\"\n{base}"),
            &["[[mirror]] subs", "file:", "not both"][..],
        ),
    ] {
        let path = config(&env, &format!("{secret}[[mirror]]\n{mirror}"));
        for args in [&["--config", &path, "mirrors"][..], &["--config", &path, "sync"][..]] {
            let run = env.run(args, &[]);
            assert_eq!(run.code, 2, "{mirror}: {run:?}");
            for part in expected {
                assert!(run.stderr.contains(part), "{part:?}: {run:?}");
            }
            assert!(!run.stderr.contains("hunter2"), "a secret printed: {run:?}");
            assert!(run.stdout.is_empty(), "{run:?}");
        }
    }
    assert!(
        followers_is_missing(&env).await,
        "a configuration error must not touch the database"
    );
}

#[tokio::test]
async fn sync_mirror_followers_syncs_as_today_and_other_names_exit_2() {
    let env = TestEnv::new().await;
    env.write_csv(csv(&[
        ("ann@example.com", "Ann"),
        ("bob@example.com", "Bob"),
    ]));
    // No [[mirror]]: --mirror followers is the sync of today.
    env.synced(&["--mirror", "followers"]);
    assert_eq!(
        env.followers().await,
        pairs(&[("ann@example.com", "Ann"), ("bob@example.com", "Bob")])
    );
    let run = env.sync_with(&["--mirror", "nope"], &[]);
    assert_eq!(run.code, 2, "{run:?}");
    assert!(
        run.stderr.contains("no mirror named \"nope\"")
            && run.stderr.contains("the mirrors are: followers"),
        "{run:?}"
    );

    let path = config(&env, SUBSCRIBERS);
    env.write_csv(csv(&[("ann@example.com", "Ann B")]));
    let run = env.sync_with(
        &["--config", &path, "--mirror", "followers"],
        &[("MAX_DELETE_RATIO", "1")],
    );
    run.assert_ended(0, "synced");
    assert_eq!(run.n("updated"), 1, "{run:?}");
    assert_eq!(
        env.followers().await,
        pairs(&[("ann@example.com", "Ann B")])
    );

    let run = env.sync_with(&["--config", &path, "--mirror", "nope"], &[]);
    assert_eq!(run.code, 2, "{run:?}");
    assert!(
        run.stderr
            .contains("no mirror named \"nope\"; the mirrors are: followers, subscribers"),
        "{run:?}"
    );
    for args in [
        &["sync", "--mirror", "nope"][..],
        &["check", "--mirror", "nope"][..],
        &["status", "--mirror", "nope"][..],
        &["rejects", "--mirror", "nope"][..],
        &["revert", "--last", "--mirror", "nope"][..],
        &["history", "ann@example.com", "--mirror", "nope"][..],
    ] {
        let mut all = vec!["--config", path.as_str()];
        all.extend_from_slice(args);
        let run = env.run(&all, &[]);
        assert_eq!(run.code, 2, "{args:?}: {run:?}");
        assert!(
            run.stderr.contains("followers, subscribers"),
            "{args:?}: {run:?}"
        );
    }
    // --mirror followers on the other commands: as without it.
    let run = env.run(&["--config", &path, "check", "--mirror", "followers"], &[]);
    assert_eq!(run.code, 0, "{run:?}");
    let run = env.run(
        &[
            "--config",
            &path,
            "status",
            "--json",
            "--mirror",
            "followers",
        ],
        &[],
    );
    assert_eq!(run.code, 0, "{run:?}");
}
