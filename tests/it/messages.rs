//! Messages that point to the fix, and that never show a secret: `.env` and
//! TOML errors, delimiters, file types, paths, addresses that look alike,
//! schedules and zones that do not mean what they say.

use crate::helpers::*;
use std::path::Path;

const SECRET: &str = "s3cr3t";

fn assert_no_secret(run: &Run, what: &str) {
    assert!(
        !run.stdout.contains(SECRET) && !run.stderr.contains(SECRET),
        "{what}: the password was printed: {run:?}"
    );
}

/// `args` run in the test's directory with `file` (relative to it) holding `text`.
fn run_with_file(env: &TestEnv, file: &str, text: &str, args: &[&str], unset: &[&str]) -> Run {
    std::fs::write(env.dir.path().join(file), text).unwrap();
    let mut cmd = env.command();
    for var in unset {
        cmd.env_remove(var);
    }
    let run: Run = cmd.args(args).output().unwrap().into();
    std::fs::remove_file(env.dir.path().join(file)).unwrap();
    run
}

#[tokio::test]
async fn no_error_shows_a_password() {
    let env = TestEnv::new().await;
    env.write_csv(csv(&[("ann@example.com", "Ann")]));
    // A .env line the parser cannot read (an unterminated quote), and one that
    // is not an assignment at all.
    for (text, line) in [
        (
            "BATCH_SIZE=10\nDSN=host=db password='s3cr3t pw' dbname=\"app\n",
            "line 2",
        ),
        (
            "# settings\n\nDSN=\"host=db user=app password=s3cr3t\\q\"\n",
            "line 3",
        ),
        ("BATCH_SIZE=10\ns3cr3t pasted here\n", "line 2"),
    ] {
        let run = run_with_file(&env, ".env", text, &["sync"], &["DATABASE_URL"]);
        assert_no_secret(&run, text);
        assert!(
            run.code == 2 && run.stderr.contains(".env") && run.stderr.contains(line),
            "{text}: {run:?}"
        );
        if text.contains("DSN=") {
            assert!(run.stderr.contains("DSN"), "the key is named: {run:?}");
        }
    }
    // A TOML file with a syntax error in the connection string's line.
    for text in [
        "batch_size = 10\ndatabase_url = \"postgres://app:s3cr3t@db/app\n",
        "batch_size = 10\ndatabase_url = postgres://app:s3cr3t@db/app\n",
        "batch_size = 10\ndatabase_url = 'host=db password=s3cr3t' x\n",
    ] {
        let run = run_with_file(
            &env,
            "agent.toml",
            text,
            &["--config", "agent.toml", "sync"],
            &["DATABASE_URL"],
        );
        assert_no_secret(&run, text);
        assert!(
            run.code == 2
                && run.stderr.contains("agent.toml")
                && run.stderr.contains("line 2")
                && run.stderr.contains("database_url"),
            "{text}: {run:?}"
        );
    }
    // Two spellings of one variable in the TOML file: refused, naming both keys
    // and never a value (keys match without regard to case).
    let text = "database_url = \"postgres://app:s3cr3t@db/app\"\nDATABASE_URL = \"postgres://app:0ther@db/app\"\n";
    let run = run_with_file(
        &env,
        "agent.toml",
        text,
        &["--config", "agent.toml", "sync"],
        &["DATABASE_URL"],
    );
    assert_no_secret(&run, text);
    assert!(!run.stderr.contains("0ther"), "{run:?}");
    assert!(
        run.code == 2
            && run
                .stderr
                .contains("\"DATABASE_URL\" and \"database_url\" both set DATABASE_URL"),
        "{run:?}"
    );
    // An unreachable database, in URL and keyword form, for every command that connects.
    for url in [
        "postgres://app:s3cr3t@127.0.0.1:1/app",
        "postgres://app@127.0.0.1:1/app?password=s3cr3t",
        "host=127.0.0.1 port=1 user=app password='s3cr3t pw' dbname=app",
    ] {
        for args in [
            &["sync"][..],
            &["sync", "--json"],
            &["status"],
            &["migrate"],
        ] {
            let run = env.run(args, &[("DATABASE_URL", url), ("LOG_LEVEL", "debug")]);
            assert_no_secret(&run, url);
            assert_eq!(run.code, 1, "{url} {args:?}: {run:?}");
        }
        // serve keeps retrying, and logs why, without the password.
        let mut agent = env.spawn_agent(&[("DATABASE_URL", url), ("LOG_LEVEL", "debug")]);
        eventually(60, "serve retrying the database", || async {
            agent.log_text().contains("not reachable").then_some(())
        })
        .await;
        assert_eq!(agent.terminate().await, 0);
        let log = agent.log_text();
        assert!(
            !log.contains(SECRET),
            "{url}: serve printed the password: {log}"
        );
    }
}

#[tokio::test]
async fn a_misspelt_or_unsupported_connection_keyword_is_a_configuration_error_never_showing_its_value(
) {
    let env = TestEnv::new().await;
    env.write_csv(csv(&[("ann@example.com", "Ann")]));
    // `pasword` (a typo): the driver would log the value and then the connection
    // string would be printed with it (issue 17).
    for dsn in [
        "host=127.0.0.1 port=1 user=bob pasword=s3cr3t dbname=x",
        "postgres://bob@127.0.0.1:1/x?pasword=s3cr3t",
        "host=127.0.0.1 port=1 user=bob dbname=x channel_binding=s3cr3t",
    ] {
        for args in [&["sync"][..], &["status"], &["serve"]] {
            let run = env.run(
                args,
                &[("DATABASE_URL", ""), ("DSN", dsn), ("LOG_LEVEL", "debug")],
            );
            assert_no_secret(&run, dsn);
            assert!(
                run.code == 2 && run.stderr.contains("DSN") && run.stdout.is_empty(),
                "{dsn} {args:?}: {run:?}"
            );
        }
    }
    let run = env.run(
        &["sync"],
        &[
            ("DSN", "host=127.0.0.1 user=bob pasword=s3cr3t dbname=x"),
            ("DATABASE_URL", ""),
        ],
    );
    assert!(run.stderr.contains("did you mean `password`"), "{run:?}");
    // A libpq keyword the driver lacks but that changes nothing is dropped with a
    // warning naming it, and the run goes on (here to an unreachable port).
    let dsn = "host=127.0.0.1 port=1 user=app dbname=x connect_timeout=5 sslpassword=s3cr3t";
    let run = env.run(&["sync"], &[("DSN", dsn), ("DATABASE_URL", "")]);
    assert_no_secret(&run, dsn);
    assert!(
        run.code == 1
            && run.stderr.contains("connect_timeout, sslpassword")
            && run.stderr.contains("ignored")
            && !run.stderr.contains("unrecognized"),
        "{run:?}"
    );
    // A password with an unencoded '#' that makes the rest read as a bad port.
    let run = env.run(
        &["sync"],
        &[("DATABASE_URL", "postgres://app:pa#s3cr3t@db/app")],
    );
    assert_no_secret(&run, "#");
    assert!(
        run.code == 2 && run.stderr.contains("percent-encode"),
        "{run:?}"
    );
}

const TABBED: &str = "email\tfull_name\nann@example.com\tAnn Lee\n";

fn checks_one_valid_row(run: &Run, what: &str) {
    assert!(
        run.code == 0 && run.stdout.contains("1 rows, 1 valid"),
        "{what}: {run:?}"
    );
}

#[tokio::test]
async fn a_tab_delimiter_works_in_every_documented_form_and_layer() {
    let env = TestEnv::new().await;
    env.write_csv(TABBED);
    // .env: \t, tab, a literal tab, each quoted or not.
    for value in [
        "\\t",
        "\"\\t\"",
        "'\\t'",
        "tab",
        "\"tab\"",
        "TAB",
        "\t",
        "\"\t\"",
        "'\t'",
        "\\t # tab",
    ] {
        let text = format!("BATCH_SIZE=10\nCSV_DELIMITER={value}\n");
        let run = run_with_file(&env, ".env", &text, &["check"], &[]);
        checks_one_valid_row(&run, &format!(".env {text:?}"));
    }
    // The environment.
    for value in ["\\t", "tab", "Tab", "\t", "\"\\t\"", "'\t'"] {
        let run = env.run(&["check"], &[("CSV_DELIMITER", value)]);
        checks_one_valid_row(&run, &format!("env {value:?}"));
    }
    // The TOML file.
    for value in ["\"\\t\"", "'\\t'", "\"tab\"", "\"\t\""] {
        let text = format!("csv_delimiter = {value}\n");
        let run = run_with_file(
            &env,
            "agent.toml",
            &text,
            &["--config", "agent.toml", "check"],
            &[],
        );
        checks_one_valid_row(&run, &format!("toml {text:?}"));
    }
    // And a real sync through .env.
    std::fs::write(env.dir.path().join(".env"), "CSV_DELIMITER=\\t\n").unwrap();
    env.synced(&[]);
    assert_eq!(
        env.followers().await,
        pairs(&[("ann@example.com", "Ann Lee")])
    );
    // A .env error names its line.
    let run = run_with_file(
        &env,
        ".env",
        "A=1\n\nCSV_DELIMITER=\"\\q\"\n",
        &["check"],
        &[],
    );
    assert!(
        run.code == 2 && run.stderr.contains("line 3") && run.stderr.contains("CSV_DELIMITER"),
        "{run:?}"
    );
}

#[tokio::test]
async fn addresses_that_look_alike_are_one_follower_or_refused() {
    let env = TestEnv::migrated().await;
    env.write_csv(
        "email,full_name\nuser@bücher.de,Ann\nUSER@xn--bcher-kva.de,Ann B\nbob@example.com,Bob\n",
    );
    let run = env.synced(&[]);
    assert_eq!(run.n("duplicates"), 1, "{run:?}");
    assert_eq!(
        env.followers().await,
        pairs(&[("bob@example.com", "Bob"), ("user@bücher.de", "Ann B")])
    );
    // Synced again in the other spelling: nothing changes.
    env.write_csv("email,full_name\nuser@xn--bcher-kva.de,Ann B\nbob@example.com,Bob\n");
    let run = env.synced(&[]);
    assert_eq!(
        (run.n("unchanged"), run.n("inserted"), run.n("deleted")),
        (2, 0, 0)
    );
    for (line, reason) in [
        ("a\u{200b}@example.com,Zed", "U+200B"),
        ("bob\u{202e}@example.com,Bob", "U+202E"),
        (
            "\"a,b\"@example.com,Quoted",
            "quoted local parts are not supported",
        ),
    ] {
        env.write_csv(format!("email,full_name\nbob@example.com,Bob\n{line}\n"));
        let run = env.sync();
        assert_eq!(
            (run.code, run.outcome().as_str()),
            (1, "refused"),
            "{line}: {run:?}"
        );
        assert!(
            run.stderr.contains("line 3") && run.stderr.contains(reason),
            "{line}: {}",
            run.stderr
        );
        let check = env.run(&["check"], &[]);
        assert!(
            check.code == 1 && check.stderr.contains(reason),
            "{check:?}"
        );
    }
    assert_eq!(
        env.followers().await,
        pairs(&[("bob@example.com", "Bob"), ("user@bücher.de", "Ann B")])
    );
}

#[tokio::test]
async fn a_tz_that_is_no_zone_and_an_every_below_one_second_are_warned_about() {
    let env = TestEnv::new().await;
    env.write_csv(csv(&[("ann@example.com", "Ann")]));
    let posix = "CET-1CEST,M3.5.0,M10.5.0/3";
    let run = env.run(
        &[
            "schedule",
            "0 3 * * *",
            "--from",
            "2026-01-01T00:00:00Z",
            "--count",
            "1",
        ],
        &[("TZ", posix)],
    );
    assert_eq!(run.stdout, "2026-01-01T03:00:00+00:00\n", "{run:?}");
    assert!(
        run.stderr.contains(posix) && run.stderr.contains("UTC"),
        "{run:?}"
    );
    // A zone prefix makes TZ irrelevant; a known zone is no problem.
    for (expr, tz) in [
        ("CRON_TZ=Europe/Berlin 0 3 * * *", posix),
        ("0 3 * * *", "Europe/Berlin"),
    ] {
        let run = env.run(&["schedule", expr, "--count", "1"], &[("TZ", tz)]);
        assert!(
            run.code == 0 && run.stderr.is_empty(),
            "{expr} TZ={tz}: {run:?}"
        );
    }
    for every in ["@every 0s", "@every -5m"] {
        let run = env.run(
            &[
                "schedule",
                every,
                "--from",
                "2026-01-01T00:00:00Z",
                "--count",
                "2",
            ],
            &[],
        );
        assert_eq!(
            run.stdout, "2026-01-01T00:00:01+00:00\n2026-01-01T00:00:02+00:00\n",
            "{run:?}"
        );
        assert!(
            run.stderr.contains(every) && run.stderr.contains("every second"),
            "{run:?}"
        );
    }
    // serve warns at start-up.
    let mut agent =
        env.spawn_agent(&[("TZ", posix), ("RUN_ON_START", "false"), ("WATCH", "false")]);
    eventually(60, "the TZ warning in the log", || async {
        agent.log_text().contains(posix).then_some(())
    })
    .await;
    assert_eq!(agent.terminate().await, 0);
    let mut agent = env.spawn_agent(&[
        ("CRON_SCHEDULE", "@every -5m"),
        ("RUN_ON_START", "false"),
        ("WATCH", "false"),
    ]);
    eventually(60, "the @every warning in the log", || async {
        let log = agent.log_text();
        (log.contains("@every -5m") && log.contains("every second")).then_some(())
    })
    .await;
    assert_eq!(agent.terminate().await, 0);
}

#[tokio::test]
async fn a_semicolon_file_under_the_default_delimiter_names_csv_delimiter() {
    let env = TestEnv::migrated().await;
    env.write_csv(csv(&[("ann@example.com", "Ann")]));
    env.synced(&[]);
    env.write_csv("email;full_name\nann@example.com;Ann\nbob@example.com;Bob\n");
    let run = env.sync();
    run.assert_ended(1, "refused");
    assert!(run.stderr.contains("CSV_DELIMITER=;"), "{}", run.stderr);
    let check = env.run(&["check"], &[]);
    assert!(
        check.code == 1 && check.stderr.contains("CSV_DELIMITER=;"),
        "{check:?}"
    );
    env.write_csv("ann@example.com\tAnn\n");
    let run = env.sync();
    assert!(run.stderr.contains("CSV_DELIMITER=\\t"), "{}", run.stderr);
    // With the delimiter set, the file syncs.
    let run = env.sync_with(&[], &[("CSV_DELIMITER", "tab")]);
    assert_eq!(run.outcome(), "synced", "{run:?}");
}

#[tokio::test]
async fn unsupported_and_unannounced_formats_are_refused_naming_what_they_are() {
    // UTF-16 with a byte order mark and files named .gz/.zst are loaded (see
    // exports.rs); these are not, and the refusal says what they are and what to set.
    let env = TestEnv::migrated().await;
    env.write_csv(csv(&[("ann@example.com", "Ann")]));
    env.synced(&[]);
    let text = "email\tfull_name\r\nann@example.com\tAnn\r\n";
    let bare16le: Vec<u8> = text.encode_utf16().flat_map(u16::to_le_bytes).collect();
    let bare16be: Vec<u8> = text.encode_utf16().flat_map(u16::to_be_bytes).collect();
    let gzip = vec![0x1F, 0x8B, 0x08, 0x00, 0, 0, 0, 0, 0, 0x03, 0x4B, 0x04, 0];
    let zstd = vec![0x28, 0xB5, 0x2F, 0xFD, 0x24, 0x00, 0x01, 0x00];
    let xlsx = b"PK\x03\x04\x14\x00\x06\x00".to_vec();
    for (bytes, what, fix) in [
        (bare16le, "UTF-16 LE", "CSV_ENCODING=utf-16le"),
        (bare16be, "UTF-16 BE", "CSV_ENCODING=utf-16be"),
        (gzip, "gzip", "*.gz"),
        (zstd, "zstd", "*.zst"),
        (xlsx, ".xlsx", "CSV UTF-8"),
    ] {
        env.write_csv(&bytes);
        let run = env.sync_with(&[], &[("CSV_DELIMITER", "tab")]);
        assert_eq!(
            (run.code, run.outcome().as_str()),
            (1, "refused"),
            "{what}: {run:?}"
        );
        assert!(
            run.stderr.contains(what) && run.stderr.contains(fix) && !run.stderr.contains('\0'),
            "{what}: {}",
            run.stderr
        );
        let check = env.run(&["check"], &[]);
        assert!(
            check.code == 1 && check.stderr.contains(what),
            "{what}: {check:?}"
        );
    }
    assert_eq!(env.followers().await, pairs(&[("ann@example.com", "Ann")]));
}

#[tokio::test]
async fn check_resolves_paths_as_sync_does_and_exits_2_on_what_it_cannot_read() {
    let env = TestEnv::new().await;
    env.write_csv(csv(&[("ann@example.com", "Ann")]));
    // An invalid file of the same name in the working directory is not the one read.
    std::fs::write(env.dir.path().join("followers.csv"), "not,an,email\n").unwrap();
    let check = env.run(&["check", "followers.csv"], &[]);
    assert!(
        check.code == 0 && check.stdout.contains("1 valid"),
        "{check:?}"
    );
    let sync = env.sync_with(&["--file", "followers.csv"], &[]);
    assert_eq!((sync.code, sync.n("inserted")), (0, 1), "{sync:?}");
    // A directory is not a file: exit 2, as documented.
    std::fs::create_dir(env.tables().join("sub")).unwrap();
    for args in [&["check", "sub"][..], &["check", "/no/such/file.csv"]] {
        let run = env.run(args, &[]);
        assert_eq!(run.code, 2, "{args:?}: {run:?}");
    }
    // A TABLES_DIR that is a regular file fails validation.
    let file = env.tables().join("followers.csv");
    for args in [&["sync"][..], &["check"]] {
        let run = env.run(args, &[("TABLES_DIR", file.to_str().unwrap())]);
        assert!(
            run.code == 2 && run.stderr.contains("TABLES_DIR") && run.stderr.contains("directory"),
            "{args:?}: {run:?}"
        );
    }
}

#[tokio::test]
async fn a_dry_run_says_whether_the_guard_would_refuse() {
    let env = TestEnv::migrated().await;
    env.write_csv(csv_owned(&many(10)));
    env.synced(&[]);
    env.write_csv(csv_owned(&many(9)));
    let run = env.sync_with(&["--dry-run"], &[]);
    let json = run.json();
    assert_eq!(
        (
            run.code,
            json["would_refuse"].as_bool(),
            json["would_refuse_reason"].is_null()
        ),
        (0, Some(false), true),
        "{run:?}"
    );
    env.write_csv(csv_owned(&many(2)));
    let run = env.sync_with(&["--dry-run"], &[]);
    let json = run.json();
    assert_eq!(
        (run.code, run.outcome().as_str(), run.n("deleted")),
        (0, "dry_run", 8)
    );
    assert_eq!(json["would_refuse"], true, "{run:?}");
    let reason = json["would_refuse_reason"].as_str().unwrap_or_default();
    assert!(reason.contains("MAX_DELETE_RATIO"), "{run:?}");
    let text = env.run(&["sync", "--dry-run"], &[]);
    assert!(text.stdout.contains("would_refuse=true"), "{text:?}");
    // A real sync's keys are unchanged (tested in sync.rs), and nothing changed.
    assert_eq!(env.followers().await.len(), 10);
}

#[tokio::test]
async fn the_shipped_env_example_allows_lowering_db_max_conns_alone() {
    let env = TestEnv::new().await;
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join(".env.example");
    std::fs::copy(example, env.dir.path().join(".env")).unwrap();
    let run = env.run(
        &["schedule", "--count", "1"],
        &[("DB_MAX_CONNS", "4"), ("TZ", "UTC")],
    );
    assert_eq!(run.code, 0, "{run:?}");
}

#[tokio::test]
async fn an_unreachable_database_is_named_as_such_and_no_unrecorded_load_id_is_shown() {
    let url = format!(
        "postgres://postgres@127.0.0.1:{}/postgres",
        crate::serve::free_port()
    );
    let env = TestEnv::on_existing(&url);
    env.write_csv(csv(&[("ann@example.com", "Ann")]));
    // The run was recorded nowhere: no load_id to look up.
    let run = env.sync();
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.json()["load_id"].is_null(), "{run:?}");
    let run = env.run(&["sync"], &[]);
    assert!(
        run.code == 1 && run.stdout.starts_with("failed load_id=none "),
        "{run:?}"
    );
    // /readyz says why, as the log does, not that a pool timed out.
    let port = crate::serve::free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut agent = env.spawn_agent(&[("HTTP_ADDR", &addr), ("WATCH", "false")]);
    let ready = eventually(30, "/readyz", || async {
        crate::serve::http_get(port, "/readyz")
    })
    .await;
    assert!(
        ready.starts_with("HTTP/1.1 503")
            && ready.contains("Connection refused")
            && !ready.contains("timed out"),
        "{ready}"
    );
    assert_eq!(agent.terminate().await, 0, "{}", agent.log_text());
}

#[tokio::test]
async fn a_refusal_reason_is_printed_once_at_every_log_level() {
    let env = TestEnv::migrated().await;
    env.write_csv(csv_owned(&many(10)));
    env.synced(&[]);
    env.write_csv(csv_owned(&many(2)));
    for level in ["error", "warn", "info"] {
        for json in [false, true] {
            let mut args = vec!["sync", "--log-level", level];
            if json {
                args.push("--json");
            }
            let run = env.run(&args, &[]);
            assert_eq!(run.code, 1, "{run:?}");
            assert_eq!(
                run.stderr.matches("MAX_DELETE_RATIO").count(),
                1,
                "{level} json={json}: {}",
                run.stderr
            );
        }
    }
}
