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

/// From B: 1 renamed again, 3 deleted, 4's seats changed, 5 new.
fn file_c() -> String {
    file(&[
        line(1, "Ann C", "1"),
        line(4, "User 4", "6"),
        line(5, "User 5", "1"),
    ])
}

/// Every row, every column (`modified_at` included), as JSON text.
async fn rows(env: &TestEnv) -> Vec<String> {
    sqlx::query_scalar("SELECT row_to_json(s)::text FROM crm.subscribers s ORDER BY account_id")
        .fetch_all(&env.pool)
        .await
        .unwrap()
}

/// The revert's record: outcome, error, inserted, updated, deleted, journaled.
async fn revert_record(
    env: &TestEnv,
    load_id: &str,
) -> (String, Option<String>, i64, i64, i64, Option<i64>) {
    sqlx::query_as(
        "SELECT outcome, error, inserted, updated, deleted, journaled FROM etl_info_schema.sync_runs
          WHERE load_id = $1::uuid AND mirror = 'subscribers' AND trigger = 'revert'",
    )
    .bind(load_id)
    .fetch_one(&env.pool)
    .await
    .unwrap()
}

/// docs/mirrors.md#revert, as docs/operations.md#revert: `revert LOAD_ID`
/// undoes every run from the newest back to and including LOAD_ID, per row
/// back to its state before the oldest of them (`modified_at` too); the delete
/// guard applies (with `--allow-mass-delete`); `--dry-run` does it all, prints
/// the runs it would undo and changes nothing; a refusal changes nothing and
/// is recorded with its reason.
#[tokio::test]
async fn revert_load_id_of_a_configured_mirror_undoes_every_run_back_to_it() {
    let env = TestEnv::migrated().await;
    let path = config(&env);
    let _a = sync(&env, &file_a()).await;
    let after_a = rows(&env).await;
    let b = sync(&env, &file_b()).await;
    let c = sync(&env, &file_c()).await;
    let after_c = rows(&env).await;
    let (b_id, c_id) = (
        b.load_id.unwrap().to_string(),
        c.load_id.unwrap().to_string(),
    );
    let revert = |args: &[&str]| {
        let mut all = vec!["revert"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--mirror", "subscribers"]);
        env.run(&with_config(&path, &all), &[])
    };
    // Undoing C and B: 1 back to "User 1", 2 and 3 inserted again, 4 and 5
    // removed: 2 of the 3 rows deleted, more than MAX_DELETE_RATIO=0.5.
    for args in [&[b_id.as_str()][..], &[b_id.as_str(), "--dry-run"][..]] {
        let run = revert(&[args, &["--json"]].concat());
        assert_eq!(run.code, 1, "{args:?}: {run:?}");
        let json = run.json();
        assert_eq!(json["outcome"], "refused", "{run:?}");
        assert!(
            run.stderr.contains(
                "mirror subscribers: the revert would delete 2 of 3 rows (66.7%), more than max_delete_ratio=0.5; nothing changed"
            ),
            "{args:?}: {run:?}"
        );
        let record = revert_record(&env, json["load_id"].as_str().unwrap()).await;
        assert_eq!(record.0, "refused", "{record:?}");
        assert!(
            record
                .1
                .as_deref()
                .unwrap()
                .contains("would delete 2 of 3 rows"),
            "{record:?}"
        );
        assert_eq!(rows(&env).await, after_c, "{args:?}");
    }
    // The dry run: what it would undo, newest first; nothing changed.
    let run = revert(&[&b_id, "--dry-run", "--allow-mass-delete"]);
    assert_eq!(run.code, 0, "{run:?}");
    let text: Vec<&str> = run.stdout.lines().collect();
    assert!(
        text[0].starts_with("dry_run mirror=subscribers undone=2 changed=5 duration="),
        "{run:?}"
    );
    assert_eq!(
        text[1..],
        [
            format!("  would undo {c_id}").as_str(),
            format!("  would undo {b_id}").as_str()
        ],
        "{run:?}"
    );
    let run = revert(&[&b_id, "--dry-run", "--allow-mass-delete", "--json"]);
    assert_eq!(run.code, 0, "{run:?}");
    let json = run.json();
    assert_eq!(json["outcome"], "dry_run");
    assert_eq!(json["undone"][0]["load_id"], c_id.as_str());
    assert_eq!(json["undone"][1]["load_id"], b_id.as_str());
    assert!(json["undone"][0]["file"]
        .as_str()
        .unwrap()
        .ends_with("subscribers.csv"));
    assert_eq!(
        (&json["inserted"], &json["updated"], &json["deleted"]),
        (&2.into(), &1.into(), &2.into())
    );
    assert_eq!(json["held_back"], serde_json::Value::Null);
    let record = revert_record(&env, json["load_id"].as_str().unwrap()).await;
    assert_eq!(record, ("dry_run".to_owned(), None, 2, 1, 2, None));
    assert_eq!(rows(&env).await, after_c);
    let reverted: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM etl_info_schema.sync_runs WHERE reverted_by IS NOT NULL",
    )
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert_eq!(reverted, 0, "a dry run marks nothing reverted");
    // The revert: exactly the table A left, every column.
    let run = revert(&[&b_id, "--allow-mass-delete", "--json"]);
    assert_eq!(run.code, 0, "{run:?}");
    let json = run.json();
    assert_eq!(json["outcome"], "reverted");
    assert_eq!(json["changed"], 5);
    let revert_id = json["load_id"].as_str().unwrap().to_owned();
    assert_eq!(rows(&env).await, after_a);
    let record = revert_record(&env, &revert_id).await;
    assert_eq!(record, ("reverted".to_owned(), None, 2, 1, 2, None));
    let by: Vec<Option<uuid::Uuid>> = sqlx::query_scalar(
        "SELECT reverted_by FROM etl_info_schema.mirror_runs m
           LEFT JOIN etl_info_schema.sync_runs r USING (load_id)
          WHERE m.reverted_at IS NOT NULL ORDER BY m.commit_seq",
    )
    .fetch_all(&env.pool)
    .await
    .unwrap();
    assert_eq!(by.len(), 2, "B and C are marked reverted");
    // Refused, each recorded: B again, a run the mirror does not know, one
    // that never synced.
    let unknown = uuid::Uuid::now_v7().to_string();
    env.write_file("subscribers.csv", file(&[line(1, "User 1", "x")]));
    let refused = env.run(
        &with_config(&path, &["sync", "--mirror", "subscribers", "--json"]),
        &[],
    );
    assert_eq!(refused.code, 1, "{refused:?}");
    let refused_id = refused.json()["load_id"].as_str().unwrap().to_owned();
    for (target, reason) in [
        (
            b_id.clone(),
            format!("mirror subscribers: run {b_id} was already reverted (at "),
        ),
        (
            unknown.clone(),
            format!("mirror subscribers: no run with load_id {unknown}"),
        ),
        (
            refused_id.clone(),
            format!("mirror subscribers: run {refused_id} is refused, not synced"),
        ),
    ] {
        let run = revert(&[&target, "--json", "--allow-mass-delete"]);
        assert_eq!(run.code, 1, "{run:?}");
        assert!(run.stderr.contains(&reason), "{reason}: {run:?}");
        let record = revert_record(&env, run.json()["load_id"].as_str().unwrap()).await;
        assert_eq!(record.0, "refused", "{record:?}");
        assert!(record.1.unwrap().contains(&reason), "{reason}");
        assert_eq!(rows(&env).await, after_a);
    }
}
