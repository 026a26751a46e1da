//! What an operator runs into (issue 11): signals, least-privilege roles, two
//! files for one table, files that are not regular files, closed pipes, JSON logs.

use crate::helpers::*;
use crate::serve::{free_port, http_get};
use std::io::Read;
use std::process::{Child, Stdio};

const ABC: &[(&str, &str)] = &[
    ("ann@example.com", "Ann"),
    ("bob@example.com", "Bob"),
    ("cy@example.com", "Cy"),
];

fn kill(child: &Child, signal: &str) {
    let ok = std::process::Command::new("kill")
        .args([&format!("-{signal}"), &child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -{signal} failed");
}

#[tokio::test]
async fn sighup_neither_stops_serve_nor_its_run() {
    let env = TestEnv::new().await;
    let mut agent = env.agent_mid_run(50_000).await;
    // During a run.
    agent.signal("HUP");
    eventually(60, "the run in flight to finish", || async {
        (env.last_run().await.0 != "running").then_some(())
    })
    .await;
    assert_eq!(env.last_run().await.0, "synced", "{}", agent.log_text());
    assert_eq!(env.scalar("SELECT count(*) FROM followers").await, 50_000);
    assert_eq!(env.staging_rows().await, 0);
    // While idle.
    agent.signal("HUP");
    eventually(15, "both SIGHUPs logged", || async {
        (agent.log_text().matches("SIGHUP received").count() == 2).then_some(())
    })
    .await;
    assert_eq!(agent.exit_code(), None, "serve died: {}", agent.log_text());
    assert_eq!(agent.terminate().await, 0, "{}", agent.log_text());
}

#[tokio::test]
async fn sighup_cancels_a_sync_and_compensates_it() {
    let env = TestEnv::new().await;
    let child = env.sync_mid_run().await;
    kill(&child, "HUP");
    let run = exit_within(child, 60).await;
    run.assert_ended(1, "failed");
    let (outcome, _, error) = env.last_run().await;
    assert_eq!(outcome, "failed");
    assert!(error.unwrap_or_default().contains("cancelled"));
    assert_eq!(env.staging_rows().await, 0);
    assert_eq!(env.followers().await, pairs(&[("ann@example.com", "Ann")]));
}

/// Waits for `child` to exit (its output is small), failing after `secs`.
async fn exit_within(mut child: Child, secs: u64) -> Run {
    eventually(secs, "the process to exit", || {
        let exited = child.try_wait().unwrap().is_some();
        async move { exited.then_some(()) }
    })
    .await;
    child.wait_with_output().unwrap().into()
}

/// Runs the binary with stdout a pipe whose reading end is already closed.
fn run_into_closed_pipe(env: &TestEnv, args: &[&str]) -> Run {
    let mut cmd = env.command();
    cmd.args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    drop(child.stdout.take());
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    let status = child.wait().unwrap();
    Run {
        code: status.code().unwrap_or(-1),
        stdout: String::new(),
        stderr,
    }
}

#[tokio::test]
async fn a_reader_that_goes_away_early_ends_the_output_quietly() {
    let env = TestEnv::new().await;
    env.write_csv(csv(ABC));
    let run = run_into_closed_pipe(&env, &["sync", "--json"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(!run.stderr.contains("panicked"), "{run:?}");
    assert_eq!(env.followers().await, pairs(ABC));
    // Far more than a pipe's buffer of runs.
    env.exec(
        "INSERT INTO etl_info_schema.sync_runs (load_id, trigger, file, started_at, finished_at, outcome)
         SELECT gen_random_uuid(), 'cron', 'followers.csv', now(), now(), 'skipped' FROM generate_series(1, 1000)",
    )
    .await;
    for args in [
        &["status", "--limit", "1000"][..],
        &["status", "--limit", "1000", "--json"],
        &["schedule", "@every 1s", "--count", "100000"],
    ] {
        let run = run_into_closed_pipe(&env, args);
        assert_eq!(run.code, 0, "{args:?}: {run:?}");
        assert!(run.stderr.is_empty(), "{args:?}: {run:?}");
    }
    // `head -1` reads a little, then closes the pipe.
    let mut child = env
        .command()
        .args(["status", "--limit", "1000"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = [0u8; 16];
    child
        .stdout
        .as_mut()
        .unwrap()
        .read_exact(&mut first)
        .unwrap();
    drop(child.stdout.take());
    let output = child.wait_with_output().unwrap();
    let run: Run = output.into();
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stderr.is_empty(), "{run:?}");
}

fn assert_all_json(what: &str, run: &Run) {
    assert!(!run.stderr.trim().is_empty(), "{what}: nothing on stderr");
    for line in run.stderr.lines() {
        let parsed: Result<serde_json::Value, _> = serde_json::from_str(line);
        assert!(
            parsed.as_ref().is_ok_and(|v| v.is_object()),
            "{what}: stderr line is not a JSON object: {line:?}\n{run:?}"
        );
    }
}

#[tokio::test]
async fn with_log_format_json_every_stderr_line_is_json() {
    let env = TestEnv::new().await;
    let json = ("LOG_FORMAT", "json");
    env.write_csv("email,full_name\nann@example.com,Ann\nnot-an-email,Bob\n");
    let refused = env.sync_with(&[], &[json, ("LOG_LEVEL", "info")]);
    assert_eq!(refused.code, 1, "{refused:?}");
    assert_all_json("refused sync", &refused);
    // Said once: the run's `sync finished` event carries the reason.
    assert_eq!(
        refused.stderr.matches("refused: 1 invalid row").count(),
        1,
        "{}",
        refused.stderr
    );
    let quiet = env.sync_with(&[], &[json, ("LOG_LEVEL", "error")]);
    assert_all_json("refused sync, LOG_LEVEL=error", &quiet);
    assert_eq!(quiet.stderr.matches("refused: 1 invalid row").count(), 1);

    let down = ("DATABASE_URL", "postgres://nobody@127.0.0.1:1/none");
    let failed = env.sync_with(&[], &[json, down]);
    assert_eq!(failed.code, 1, "{failed:?}");
    assert_all_json("unreachable database", &failed);

    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    env.write_csv(csv(ABC));
    let fatal = env.run(
        &["serve"],
        &[json, ("HTTP_ADDR", &addr), ("WATCH", "false")],
    );
    assert_eq!(fatal.code, 1, "{fatal:?}");
    assert_all_json("serve on a taken port", &fatal);
    assert!(fatal.stderr.contains("HTTP_ADDR"), "{fatal:?}");

    let config = env.run(&["sync"], &[json, ("BATCH_SIZE", "0")]);
    assert_eq!(config.code, 2, "{config:?}");
    assert_all_json("configuration error", &config);
    let config = env.run(&["--log-format", "json", "sync"], &[("BATCH_SIZE", "0")]);
    assert_eq!(config.code, 2, "{config:?}");
    assert_all_json("configuration error, --log-format json", &config);
    let usage = env.run(&["sync", "--no-such-flag"], &[json]);
    assert_eq!(usage.code, 2, "{usage:?}");
    assert_all_json("usage error", &usage);
    let check = env.run(&["check", "missing.csv"], &[json]);
    assert_eq!(check.code, 2, "{check:?}");
    assert_all_json("check of a missing file", &check);
}

#[tokio::test]
async fn a_refusal_is_said_once_in_text_logs() {
    let env = TestEnv::migrated().await;
    env.write_csv("email,full_name\nann@example.com,Ann\nnot-an-email,Bob\n");
    for level in ["info", "warn", "error"] {
        let run = env.sync_with(&[], &[("LOG_LEVEL", level)]);
        assert_eq!(run.code, 1, "{run:?}");
        assert_eq!(
            run.stderr.matches("more than MAX_REJECTS").count(),
            1,
            "LOG_LEVEL={level}:\n{}",
            run.stderr
        );
    }
}

fn mkfifo(path: &std::path::Path) {
    let ok = std::process::Command::new("mkfifo")
        .arg(path)
        .status()
        .unwrap()
        .success();
    assert!(ok, "mkfifo failed");
}

#[tokio::test]
async fn a_fifo_as_csv_file_is_refused_and_never_blocks() {
    let env = TestEnv::migrated().await;
    env.write_csv(csv(ABC));
    mkfifo(&env.tables().join("pipe.csv"));
    let run = env.sync_with(&["--file", "pipe.csv"], &[]);
    assert!(
        run.code == 2 && run.stderr.contains("pipe.csv") && run.stderr.contains("regular file"),
        "{run:?}"
    );
    let run = env.run(&["serve"], &[("CSV_FILE", "pipe.csv")]);
    assert!(
        run.code == 2 && run.stderr.contains("regular file"),
        "{run:?}"
    );
    let run = env.run(&["check", "pipe.csv"], &[]);
    assert_eq!(run.code, 2, "{run:?}");

    // Replaced by a FIFO while serve runs: the run is refused, serve stops.
    env.synced(&[]);
    let mut agent = env.spawn_agent(&[("RUN_ON_START", "false"), ("SHUTDOWN_TIMEOUT", "1s")]);
    eventually(30, "serve watching", || async {
        agent.log_text().contains("watching").then_some(())
    })
    .await;
    std::fs::remove_file(env.tables().join("followers.csv")).unwrap();
    mkfifo(&env.tables().join("followers.csv"));
    let (outcome, _, error) = eventually(30, "the watch run to finish", || async {
        Some(env.last_run().await).filter(|(o, t, _)| t == "watch" && o != "running")
    })
    .await;
    assert_eq!(outcome, "refused", "{error:?}\n{}", agent.log_text());
    assert!(error.unwrap_or_default().contains("regular file"));
    assert_eq!(agent.terminate().await, 0, "{}", agent.log_text());
    assert_eq!(env.followers().await, pairs(ABC));
}

/// A file whose read takes far longer than any test (a sparse 4 TiB file): to the
/// agent the same as a read stuck on a hung mount.
fn endless_file(env: &TestEnv) {
    let file = std::fs::File::create(env.tables().join("followers.csv")).unwrap();
    file.set_len(4 << 40).unwrap();
}

#[tokio::test]
async fn a_read_that_does_not_return_does_not_keep_serve_or_sync_alive() {
    let env = TestEnv::migrated().await;
    env.write_csv(csv(ABC));
    env.synced(&[]);
    endless_file(&env);
    let mut agent = env.spawn_agent(&[("WATCH", "false"), ("SHUTDOWN_TIMEOUT", "1s")]);
    eventually(30, "the start-up run reading", || async {
        (env.runs_by("start").await == vec![("running".to_string(), 0)]).then_some(())
    })
    .await;
    let asked = std::time::Instant::now();
    assert_eq!(agent.terminate().await, 0, "{}", agent.log_text());
    assert!(
        asked.elapsed() < std::time::Duration::from_secs(20),
        "serve took {:?} to stop",
        asked.elapsed()
    );
    let (outcome, _, error) = env.last_run().await;
    assert_eq!(outcome, "failed");
    assert!(error.unwrap_or_default().contains("cancelled"));

    let mut cmd = env.command();
    cmd.args(["sync", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = cmd.spawn().unwrap();
    eventually(30, "the sync reading", || async {
        (env.runs_by("manual")
            .await
            .iter()
            .any(|(o, _)| o == "running"))
        .then_some(())
    })
    .await;
    kill(&child, "TERM");
    let run = exit_within(child, 20).await;
    run.assert_ended(1, "failed");
    assert_eq!(env.followers().await, pairs(ABC));
    assert_eq!(env.staging_rows().await, 0);
}

#[tokio::test]
async fn a_table_last_synced_from_another_file_is_refused_unless_forced() {
    let env = TestEnv::migrated().await;
    let b_rows = [("ann@example.com", "Ann B"), ("dee@example.com", "Dee")];
    env.write_file("a.csv", csv(ABC));
    env.write_file("b.csv", csv(&b_rows));
    let tables = env.tables().canonicalize().unwrap();
    let (a, b) = (tables.join("a.csv"), tables.join("b.csv"));
    env.synced(&["--file", "a.csv"]);
    // The same file named otherwise is the same file.
    for same in [a.to_str().unwrap(), "./a.csv"] {
        let run = env.sync_with(&["--file", same], &[]);
        run.assert_ended(0, "skipped");
    }
    let before = env.follower_versions().await;
    let refused = env.sync_with(&["--file", "b.csv"], &[("MAX_DELETE_RATIO", "1.0")]);
    refused.assert_ended(1, "refused");
    for path in [&a, &b] {
        assert!(
            refused.stderr.contains(path.to_str().unwrap()),
            "{path:?} not named: {}",
            refused.stderr
        );
    }
    assert!(refused.stderr.contains("--force"), "{}", refused.stderr);
    assert_eq!(env.follower_versions().await, before);
    // serve refuses too, unless ALLOW_FILE_CHANGE=true.
    let mut agent = env.spawn_agent(&[("CSV_FILE", "b.csv"), ("WATCH", "false")]);
    eventually(30, "the start-up run refused", || async {
        (env.runs_by("start").await.first().map(|r| r.0.as_str()) == Some("refused")).then_some(())
    })
    .await;
    assert_eq!(agent.terminate().await, 0);
    assert!(agent.log_text().contains(b.to_str().unwrap()));
    assert_eq!(env.follower_versions().await, before);

    env.synced(&["--file", "b.csv", "--force", "--allow-mass-delete"]);
    assert_eq!(env.followers().await, pairs(&b_rows));
    let run = env.sync_with(&["--file", "a.csv"], &[]);
    assert_eq!(run.outcome(), "refused", "{run:?}");
    let run = env.sync_with(
        &["--file", "a.csv"],
        &[("ALLOW_FILE_CHANGE", "true"), ("MAX_DELETE_RATIO", "1.0")],
    );
    run.assert_ended(0, "synced");
    assert_eq!(env.followers().await, pairs(ABC));
}

/// A runtime role granted what earlier versions documented (no TRUNCATE on
/// staging) still syncs: the merge deletes the load's rows instead.
#[tokio::test]
async fn a_runtime_role_without_truncate_on_staging_still_syncs_and_leaves_staging_empty() {
    let env = TestEnv::new().await;
    let role = TestRole::new(&env).await;
    assert_eq!(env.run(&["migrate"], &[]).code, 0);
    role.grant_documented_privileges(&env).await;
    env.exec(&format!(
        "REVOKE TRUNCATE ON public.staging_followers FROM {}",
        role.name
    ))
    .await;
    let as_role = [("DATABASE_URL", role.url.as_str())];
    env.write_csv(csv(ABC));
    let run = env.sync_with(&[], &as_role);
    assert_eq!((run.code, run.outcome().as_str()), (0, "synced"), "{run:?}");
    let next = [("ann@example.com", "Ann"), ("bob@example.com", "Robert")];
    env.write_csv(csv(&next));
    let run = env.sync_with(&["--allow-mass-delete"], &as_role);
    assert_eq!((run.code, run.outcome().as_str()), (0, "synced"), "{run:?}");
    assert_eq!(env.followers().await, pairs(&next));
    assert_eq!(env.staging_rows().await, 0);
}

#[tokio::test]
async fn a_runtime_role_with_the_documented_grants_syncs_and_waits_for_pending_migrations() {
    let env = TestEnv::new().await;
    let role = TestRole::new(&env).await;
    env.write_csv(csv(ABC));
    let as_role = [("DATABASE_URL", role.url.as_str())];
    // Nothing applied yet: the role may not, and says which migration and why.
    let run = env.sync_with(&[], &as_role);
    assert_eq!(run.code, 1, "{run:?}");
    for needle in [
        "m20261124_000001_create_followers",
        "permission denied for schema public",
        "it lacks CREATE on schema public",
        &role.name,
        "followers-etl migrate",
    ] {
        assert!(
            run.stderr.contains(needle),
            "{needle} missing: {}",
            run.stderr
        );
    }
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut agent = env.spawn_agent(&[as_role[0], ("WATCH", "false"), ("HTTP_ADDR", &addr)]);
    eventually(30, "serve waiting for the migrations", || async {
        agent
            .log_text()
            .contains("waiting for the pending migrations to be applied")
            .then_some(())
    })
    .await;
    assert_eq!(agent.exit_code(), None, "{}", agent.log_text());
    // The owner applies them and grants the runtime privileges.
    assert_eq!(env.run(&["migrate"], &[]).code, 0);
    role.grant_documented_privileges(&env).await;
    eventually(60, "the start-up run", || async {
        (env.runs_by("start").await == vec![("synced".to_string(), 3)]).then_some(())
    })
    .await;
    let ready = eventually(15, "/readyz", || async { http_get(port, "/readyz") }).await;
    assert!(ready.starts_with("HTTP/1.1 200"), "{ready}");
    assert_eq!(agent.terminate().await, 0, "{}", agent.log_text());
    assert_eq!(env.followers().await, pairs(ABC));
    // sync and status as the role: a change, a crash recovered, the runs.
    let next = [
        ("ann@example.com", "Ann"),
        ("bob@example.com", "Robert"),
        ("cy@example.com", "Cy"),
    ];
    env.write_csv(csv(&next));
    env.leave_a_crashed_run().await;
    let run = env.sync_with(&[], &as_role);
    run.assert_ended(0, "synced");
    assert_eq!(env.followers().await, pairs(&next));
    assert_eq!(env.staging_rows().await, 0);
    let status = env.run(&["status"], &as_role);
    assert_eq!(status.code, 0, "{status:?}");
    // A refused file's rejects are stored and listed as the role.
    env.write_csv(format!("{}nope,Nobody\n", csv(&next)));
    let run = env.sync_with(&[], &as_role);
    assert_eq!(run.outcome(), "refused", "{run:?}");
    let rejects = env.run(&["rejects", "--last"], &as_role);
    assert!(
        rejects.code == 0
            && rejects.stdout.contains("line 5: ")
            && rejects.stdout.contains("nope,Nobody"),
        "{rejects:?}"
    );
}
