//! The commands of a configured mirror (docs/mirrors.md#commands), through the
//! binary: the `--mirror` rule (required when more than one mirror exists, the
//! error listing them), `check --mirror NAME [PATH]` with the mirror's columns,
//! `history KEY… --mirror NAME` by values or `col=value` pairs, and `revert
//! (--last | LOAD_ID) --mirror NAME [--dry-run]` with the built-in revert's rules. The syncs run through `mirror::run::sync_mirror`
//! (the library), as `sync` does not run configured mirrors in this version.

use crate::helpers::fixtures::subscribers_toml;
use crate::helpers::TestEnv;
use followers_etl::config::DatabaseUrl;
use followers_etl::mirror::run::{sync_mirror, MirrorRunOptions, MirrorSummary};
use followers_etl::mirror::{from_toml_str, MirrorSpec};
use sea_orm::Database;

/// The mirror's TOML (`crm.subscribers`, a key of `account_id` and `email`).
fn toml() -> String {
    subscribers_toml(r#""crm.subscribers""#)
}

fn spec() -> MirrorSpec {
    from_toml_str(&toml()).unwrap().remove(0)
}

/// Writes the config file and returns its path for `--config`.
fn config(env: &TestEnv) -> String {
    let path = env.dir.path().join("mirrors.toml");
    std::fs::write(&path, toml()).unwrap();
    path.to_str().unwrap().to_owned()
}

/// The header, with the columns in another order than the configuration's
/// and one extra column.
const HEADER: &str =
    "EMAIL,account_id,Full Name,plan,signed_up,opted_in,balance,seats,last_seen,confirmed,token,Region";

/// One line of subscriber `id` named `name`, in `HEADER`'s order.
fn line(id: u32, name: &str, seats: &str) -> String {
    format!(
        "User{id}@X.io,{id},{name},,2024-01-{id:02},true,1.50,{seats},,2024-03-01 12:00:00Z,00000000-0000-0000-0000-{id:012},eu"
    )
}

fn file(lines: &[String]) -> String {
    let mut text = HEADER.to_owned() + "\n";
    for l in lines {
        text += l;
        text += "\n";
    }
    text
}

/// Subscribers 1 to 3.
fn file_a() -> String {
    file(&[
        line(1, "User 1", "1"),
        line(2, "User 2", "1"),
        line(3, "User 3", "2"),
    ])
}

/// From A: 1 renamed (quoted, with a comma), 2 deleted, 3 unchanged, 4 new.
fn file_b() -> String {
    file(&[
        line(1, "\"Ann, the first\"", "1"),
        line(3, "User 3", "2"),
        line(4, "User 4", "5"),
    ])
}

/// Syncs the mirror once with the library's run, as `sync` will.
async fn sync(env: &TestEnv, content: &str) -> MirrorSummary {
    env.write_file("subscribers.csv", content);
    let db = Database::connect(env.url.as_str()).await.unwrap();
    let url = DatabaseUrl::parse("DATABASE_URL", &env.url).unwrap();
    let summary = sync_mirror(
        &db,
        &url,
        &spec(),
        &env.tables(),
        MirrorRunOptions {
            max_delete_ratio: 1.0,
            ..MirrorRunOptions::default()
        },
    )
    .await
    .unwrap();
    db.close().await.unwrap();
    summary
}

async fn names(env: &TestEnv) -> Vec<(i64, String)> {
    sqlx::query_as("SELECT account_id, full_name FROM crm.subscribers ORDER BY account_id")
        .fetch_all(&env.pool)
        .await
        .unwrap()
}

fn with_config<'a>(path: &'a str, args: &[&'a str]) -> Vec<&'a str> {
    let mut all = vec!["--config", path];
    all.extend_from_slice(args);
    all
}

#[tokio::test]
async fn with_two_mirrors_every_command_needs_mirror_and_the_error_lists_them() {
    let env = TestEnv::new().await;
    let path = config(&env);
    env.write_csv("email,full_name\nann@example.com,Ann\n");
    env.write_file("subscribers.csv", file_a());
    let message = "more than one mirror is configured: pass --mirror NAME (the mirrors are: followers, subscribers)";
    for args in [
        &["check"][..],
        &["check", "--json"][..],
        &["rejects"][..],
        &["revert", "--last"][..],
        &["history", "ann@example.com"][..],
        &["history", "1", "user1@x.io"][..],
    ] {
        let run = env.run(&with_config(&path, args), &[]);
        assert_eq!(run.code, 2, "{args:?}: {run:?}");
        assert!(run.stderr.contains(message), "{args:?}: {run:?}");
        assert!(run.stdout.is_empty(), "{args:?}: {run:?}");
    }
    // --mirror followers: the command as always.
    let run = env.run(
        &with_config(&path, &["check", "--mirror", "followers"]),
        &[],
    );
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stdout.contains("1 rows, 1 valid"), "{run:?}");
    // Without CSV_FILE the configured mirror is the only one: no flag needed.
    let mut cmd = env.command();
    cmd.env_remove("CSV_FILE")
        .args(with_config(&path, &["check"]));
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(
        stdout.contains("subscribers.csv: 3 rows, 3 valid, 0 invalid, 0 duplicates"),
        "{stdout}"
    );
    // No [[mirror]]: --mirror stays optional; the followers' key is one email.
    let run = env.run(&["check"], &[]);
    assert_eq!(run.code, 0, "{run:?}");
    let run = env.run(&["history", "ann@example.com", "bob@example.com"], &[]);
    assert_eq!(run.code, 2, "{run:?}");
    assert!(
        run.stderr
            .contains("the followers mirror's key is one email, 2 values given"),
        "{run:?}"
    );
    assert!(
        env.scalar(
            "SELECT count(*) FROM pg_tables WHERE tablename IN ('followers', 'subscribers')"
        )
        .await
            == 0,
        "a refused command and check touch no database"
    );
}

#[tokio::test]
async fn check_reads_a_mirrors_file_with_its_columns_naming_line_and_column() {
    let env = TestEnv::new().await;
    let path = config(&env);
    let check = |args: &[&str]| {
        let mut all = vec!["check", "--mirror", "subscribers"];
        all.extend_from_slice(args);
        env.run(&with_config(&path, &all), &[])
    };
    env.write_file("subscribers.csv", file_a());
    let run = check(&[]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(
        run.stdout
            .ends_with("subscribers.csv: 3 rows, 3 valid, 0 invalid, 0 duplicates\n"),
        "{run:?}"
    );

    // Line 3: seats is no number; line 5 repeats subscriber 1 (spelled otherwise).
    let bad = file(&[
        line(1, "User 1", "1"),
        line(2, "User 2", "12x"),
        line(3, "User 3", "2"),
        line(1, "User 1 again", "1").replace("User1@X.io", " user1@x.IO "),
    ]);
    env.write_file("subscribers.csv", &bad);
    let run = check(&[]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stderr
            .contains("subscribers.csv: line 3: column seats: seats \"12x\" is not a whole number"),
        "{run:?}"
    );
    assert!(
        run.stderr.contains(
            "warning: the key account_id=1, email=user1@x.io appears on lines [2, 5]; the last wins"
        ),
        "{run:?}"
    );
    assert!(
        run.stdout
            .ends_with("4 rows, 3 valid, 1 invalid, 1 duplicates\n"),
        "{run:?}"
    );

    let run = check(&["--json"]);
    assert_eq!(run.code, 1, "{run:?}");
    let json = run.json();
    assert_eq!(json["mirror"], "subscribers");
    assert_eq!(
        (
            json["rows"].as_u64(),
            json["valid"].as_u64(),
            json["invalid"].as_u64()
        ),
        (Some(4), Some(3), Some(1)),
        "{json}"
    );
    let reject = &json["rejects"][0];
    assert_eq!(reject["line"], 3, "{json}");
    assert_eq!(reject["column"], "seats", "{json}");
    assert!(reject["raw"].as_str().unwrap().contains(",12x,"), "{json}");
    assert_eq!(
        json["duplicate_lines"],
        serde_json::json!([{"key": {"account_id": "1", "email": "user1@x.io"}, "lines": [2, 5]}])
    );

    // A PATH outside TABLES_DIR, checked before it is copied in; a column missing.
    let outside = env.dir.path().join("export.csv");
    std::fs::write(&outside, file_a().replace("Full Name", "Name")).unwrap();
    let run = check(&[outside.to_str().unwrap()]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stderr
            .contains("the header has no \"Full Name\" column"),
        "{run:?}"
    );
    // A file that is not there: usage.
    let run = check(&["missing.csv"]);
    assert_eq!(run.code, 2, "{run:?}");

    // A mirror of a glob: its files are checked one PATH at a time.
    let glob = env.dir.path().join("glob.toml");
    std::fs::write(
        &glob,
        "[[mirror]]\nname = \"parts\"\nfiles = \"parts-*.csv\"\ntable = \"crm.parts\"\nkey = [\"id\"]\ncolumns = [{ name = \"id\", type = \"bigint\" }]\n",
    )
    .unwrap();
    env.write_file("parts-1.csv", "id\n1\n2\n");
    let glob = glob.to_str().unwrap();
    let run = env.run(&with_config(glob, &["check", "--mirror", "parts"]), &[]);
    assert_eq!(run.code, 2, "{run:?}");
    assert!(run.stderr.contains("pass the PATH of one file"), "{run:?}");
    let run = env.run(
        &with_config(glob, &["check", "--mirror", "parts", "parts-1.csv"]),
        &[],
    );
    assert_eq!(run.code, 0, "{run:?}");
    assert!(
        run.stdout.contains("parts-1.csv: 2 rows, 2 valid"),
        "{run:?}"
    );
}

#[tokio::test]
async fn history_of_a_composite_key_by_values_or_pairs_after_two_syncs() {
    let env = TestEnv::migrated().await;
    let path = config(&env);
    let a = sync(&env, &file_a()).await;
    let b = sync(&env, &file_b()).await;
    assert_eq!((b.inserted, b.updated, b.deleted), (1, 1, 1), "{b:?}");
    let history = |args: &[&str]| {
        let mut all = vec!["history"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--mirror", "subscribers"]);
        env.run(&with_config(&path, &all), &[])
    };

    // The key's values in its order, spelled as a file may spell them.
    let run = history(&["+1", " USER1@x.io "]);
    assert_eq!(run.code, 0, "{run:?}");
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{run:?}");
    let a_id = a.load_id.unwrap().to_string();
    let b_id = b.load_id.unwrap().to_string();
    assert!(
        lines[0].contains(&format!(" inserted load_id={a_id} file=")),
        "{run:?}"
    );
    assert!(lines[0].contains(" full_name=\"User 1\""), "{run:?}");
    assert!(
        lines[1].contains(&format!(" updated load_id={b_id} file=")),
        "{run:?}"
    );
    assert!(
        lines[1].ends_with(" full_name: \"User 1\" -> \"Ann, the first\""),
        "{run:?}"
    );

    // col=value pairs, in any order: the same events.
    let run = history(&["email=user1@x.io", "account_id=1", "--json"]);
    assert_eq!(run.code, 0, "{run:?}");
    let json = run.json();
    assert_eq!(json["mirror"], "subscribers");
    assert_eq!(
        json["key"],
        serde_json::json!({"account_id": "1", "email": "user1@x.io"})
    );
    let events = json["events"].as_array().unwrap();
    assert_eq!(events.len(), 2, "{json}");
    assert_eq!(events[0]["action"], "inserted");
    assert_eq!(events[0]["before"], serde_json::Value::Null);
    assert_eq!(events[1]["action"], "updated");
    assert_eq!(events[1]["load_id"], b_id.as_str());
    assert_eq!(events[1]["changed"], serde_json::json!(["full_name"]));
    assert_eq!(events[1]["before"]["full_name"], "User 1");
    assert_eq!(events[1]["after"]["full_name"], "Ann, the first");
    // Each value as PostgreSQL's text of it: a numeric keeps its digits.
    assert_eq!(events[1]["after"]["seats"], "1");
    assert_eq!(events[1]["after"]["balance"], "1.50");
    assert!(
        events[1]["time"].as_str().unwrap().ends_with("+00:00"),
        "{json}"
    );

    // Subscriber 2: inserted, then deleted.
    let run = history(&["2", "user2@x.io"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(
        run.stdout
            .lines()
            .nth(1)
            .unwrap()
            .contains(" deleted load_id="),
        "{run:?}"
    );

    // A bad value names its column; nothing is read.
    for (args, part) in [
        (
            &["12x", "user1@x.io"][..],
            "account_id \"12x\" is not a whole number",
        ),
        (
            &["1", "not-an-email"][..],
            ": email \"not-an-email\" has no '@'",
        ),
        (
            &["1"][..],
            "2 column(s) (account_id, email), 1 value(s) given",
        ),
        (&["account_id=1"][..], "no value for email"),
    ] {
        let run = history(args);
        assert_eq!(run.code, 2, "{args:?}: {run:?}");
        assert!(
            run.stderr.contains("invalid key for mirror subscribers: ")
                && run.stderr.contains(part),
            "{args:?}: {run:?}"
        );
        assert!(run.stdout.is_empty(), "{args:?}: {run:?}");
    }
    // A key the journal does not know.
    let run = history(&["9", "nobody@x.io"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stdout.contains("no journaled change"), "{run:?}");
}

#[tokio::test]
async fn revert_last_of_a_configured_mirror_undoes_its_newest_runs() {
    let env = TestEnv::migrated().await;
    let path = config(&env);
    let a = sync(&env, &file_a()).await;
    let b = sync(&env, &file_b()).await;
    let (a_id, b_id) = (
        a.load_id.unwrap().to_string(),
        b.load_id.unwrap().to_string(),
    );
    // revert --last undoes B: 1 renamed back, 2 back, 4 gone.
    let revert = |args: &[&str]| {
        let mut all = vec!["revert"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--mirror", "subscribers"]);
        env.run(&with_config(&path, &all), &[])
    };
    let run = revert(&["--last"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(
        run.stdout
            .starts_with("reverted mirror=subscribers undone=1 changed=3 duration="),
        "{run:?}"
    );
    assert!(run.stdout.contains(&format!("  undid {b_id}\n")), "{run:?}");
    assert_eq!(
        names(&env).await,
        vec![
            (1, "User 1".to_owned()),
            (2, "User 2".to_owned()),
            (3, "User 3".to_owned()),
        ]
    );
    let run = env.run(
        &with_config(
            &path,
            &["history", "1", "user1@x.io", "--mirror", "subscribers"],
        ),
        &[],
    );
    assert!(
        run.stdout
            .lines()
            .nth(1)
            .unwrap()
            .contains(" (reverted at "),
        "{run:?}"
    );
    // Then A, which deletes every row: the delete guard (MAX_DELETE_RATIO
    // 0.5) refuses it, changing nothing, unless approved; approved (as JSON).
    let run = revert(&["--last"]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stdout
            .starts_with("refused mirror=subscribers undone=0 changed=0"),
        "{run:?}"
    );
    assert!(
        run.stderr
            .contains("the revert would delete 3 of 3 rows (100.0%), more than max_delete_ratio=0.5; nothing changed (use --allow-mass-delete if intended)"),
        "{run:?}"
    );
    assert_eq!(names(&env).await.len(), 3);
    let run = revert(&["--last", "--json", "--allow-mass-delete"]);
    assert_eq!(run.code, 0, "{run:?}");
    let json = run.json();
    assert_eq!(json["outcome"], "reverted");
    assert_eq!(json["mirror"], "subscribers");
    assert_eq!(json["undone"][0]["load_id"], a_id.as_str());
    assert_eq!(json["changed"], 3);
    assert_eq!(json["deleted"], 3);
    assert_eq!(json["inserted"], 0);
    assert!(json["held_back"]
        .as_str()
        .is_some_and(|f| f.ends_with("subscribers.csv")));
    assert!(names(&env).await.is_empty());
    // Then nothing is left to revert: refused, exit 1.
    let run = revert(&["--last"]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stdout
            .starts_with("refused mirror=subscribers undone=0 changed=0"),
        "{run:?}"
    );
    assert!(run.stderr.contains("no run to revert"), "{run:?}");
}
