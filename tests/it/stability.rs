//! Files still being written are never read, whatever the trigger (docs/operations.md#files-still-being-written).

use crate::helpers::*;
use crate::serve::{free_port, http_get_within, wait_for_followers, wait_ready};
use std::io::Write;
use std::sync::mpsc;
use std::time::Duration;

const ABC: &[(&str, &str)] = &[
    ("ann@example.com", "Ann"),
    ("bob@example.com", "Bob"),
    ("cy@example.com", "Cy"),
];

/// The old followers followed by 40 new ones: every prefix of it is a file
/// that deletes nothing, so no guard would stop a prefix from committing.
fn grown() -> (String, Vec<Follower>) {
    let mut rows: Vec<(String, String)> = ABC
        .iter()
        .map(|(e, n)| (e.to_string(), n.to_string()))
        .collect();
    rows.extend(many(40));
    let mut expected = rows.clone();
    expected.sort();
    (csv_owned(&rows), expected)
}

/// Byte offsets that cut `text` mid-line and exactly after a line break, in turn.
fn cuts(text: &str) -> Vec<usize> {
    let ends: Vec<usize> = text.match_indices('\n').map(|(i, _)| i + 1).collect();
    let mut cuts: Vec<usize> = (1..ends.len())
        .step_by(5)
        .enumerate()
        .map(|(k, line)| {
            if k % 2 == 0 {
                ends[line] - 7
            } else {
                ends[line]
            }
        })
        .collect();
    cuts.push(text.len());
    cuts
}

/// Writes `text` in place through one open file, chunk by chunk (see `cuts`),
/// pausing `pause` after each chunk but the last; waits for `go` before
/// closing when given.
fn slow_writer(
    path: std::path::PathBuf,
    text: String,
    pause: Duration,
    go: Option<mpsc::Receiver<()>>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(path)
            .unwrap();
        let mut from = 0;
        for cut in cuts(&text) {
            file.write_all(&text.as_bytes()[from..cut]).unwrap();
            from = cut;
            if cut < text.len() {
                std::thread::sleep(pause);
            }
        }
        if let Some(go) = go {
            let _ = go.recv();
        }
    })
}

#[tokio::test]
async fn a_file_written_in_place_with_pauses_is_never_committed_half_written() {
    let env = TestEnv::new().await;
    env.write_csv(csv(ABC));
    let old = pairs(ABC);
    let mut agent = env.spawn_agent(&[("CRON_SCHEDULE", "@every 1s")]);
    wait_for_followers(&env, &agent, &old).await;
    let (text, new) = grown();
    assert!(cuts(&text).len() >= 9, "{:?}", cuts(&text));
    // Pauses longer than WATCH_DEBOUNCE (300 ms) but shorter than the wait
    // for an unfinished line (4 × 300 ms).
    let writer = slow_writer(
        env.tables().join("followers.csv"),
        text,
        Duration::from_millis(700),
        None,
    );
    let mut seen = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    while !writer.is_finished() || env.followers().await != new {
        assert!(
            std::time::Instant::now() < deadline,
            "the complete file was not synced; log:\n{}",
            agent.log_text()
        );
        let now = env.followers().await;
        assert!(
            now == old || now == new,
            "followers hold a part of the file being written ({} rows); log:\n{}",
            now.len(),
            agent.log_text()
        );
        if seen.last() != Some(&now.len()) {
            seen.push(now.len());
        }
        assert!(seen.len() <= 2, "{seen:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    writer.join().unwrap();
    // Cron runs came during the write, waited, and were refused for it.
    let refused: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM etl_info_schema.sync_runs
          WHERE trigger = 'cron' AND outcome = 'refused' AND error LIKE '%still being written%'",
    )
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert!(
        refused >= 1,
        "no run waited for the write; log:\n{}",
        agent.log_text()
    );
    assert_eq!(agent.terminate().await, 0);
}

#[tokio::test]
async fn a_manual_sync_during_a_write_waits_then_refuses_and_changes_nothing() {
    let env = TestEnv::migrated().await;
    env.write_csv(csv(ABC));
    env.synced(&[]);
    let (text, new) = grown();
    let (go, wait) = mpsc::channel();
    let writer = slow_writer(
        env.tables().join("followers.csv"),
        text,
        Duration::from_millis(150),
        Some(wait),
    );
    // The whole file is written, but its writer still holds it open.
    eventually(30, "the complete file", || async {
        let len = std::fs::metadata(env.tables().join("followers.csv"))
            .unwrap()
            .len();
        (len == u64::try_from(grown().0.len()).unwrap()).then_some(())
    })
    .await;
    let run = env.refused(&[]);
    assert!(
        run.stderr.contains("still being written") && run.stderr.contains("open for writing"),
        "{run:?}"
    );
    assert_eq!(run.n("rows_read"), 0);
    assert_eq!(env.followers().await, pairs(ABC));
    let (outcome, trigger, error) = env.last_run().await;
    assert_eq!((outcome.as_str(), trigger.as_str()), ("refused", "manual"));
    assert!(error.unwrap_or_default().contains("waited"));
    go.send(()).unwrap();
    writer.join().unwrap();
    env.synced(&[]);
    assert_eq!(env.followers().await, new);
}

#[tokio::test]
async fn copied_and_renamed_files_still_sync_promptly() {
    let env = TestEnv::new().await;
    env.write_csv(csv(ABC));
    let mut agent = env.spawn_agent(&[]);
    wait_for_followers(&env, &agent, &pairs(ABC)).await;
    // `cp` over the file (inotify: truncate, write, close).
    let (text, new) = grown();
    let export = env.dir.path().join("export.csv");
    std::fs::write(&export, &text).unwrap();
    std::fs::copy(&export, env.tables().join("followers.csv")).unwrap();
    eventually(30, "the copied file synced", || async {
        (env.followers().await == new).then_some(())
    })
    .await;
    assert_eq!(env.runs_by("watch").await, vec![("synced".to_string(), 43)]);
    assert_eq!(agent.terminate().await, 0);
    // Renamed into place, then synced at once by hand: it waits out the quiet
    // period and syncs.
    env.write_file(".next.tmp", csv(ABC));
    std::fs::rename(
        env.tables().join(".next.tmp"),
        env.tables().join("followers.csv"),
    )
    .unwrap();
    env.synced(&["--allow-mass-delete"]);
    assert_eq!(env.followers().await, pairs(ABC));
}

/// A TCP proxy to the test PostgreSQL that cuts the connection of the first
/// merge transaction at its COMMIT: the client gets no answer, and the server
/// gets the COMMIT (`deliver`) or not. With `deliver`, the client's connection
/// is cut only once the server has answered the COMMIT, so the commit has
/// happened (otherwise the agent's check could end the session before the
/// server read the COMMIT, and it would rightly count as not committed).
/// Other connections pass unchanged.
struct CommitCutter {
    port: u16,
    cut: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl CommitCutter {
    async fn start(deliver: bool) -> Self {
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::Arc;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let upstream = url::Url::parse(&server_url()).unwrap();
        let upstream = format!(
            "{}:{}",
            upstream.host_str().unwrap(),
            upstream.port().unwrap_or(5432)
        );
        let cut = Arc::new(AtomicBool::new(false));
        let done = cut.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let server = tokio::net::TcpStream::connect(&upstream).await.unwrap();
                let (mut cr, cw) = client.into_split();
                let (mut sr, mut sw) = server.into_split();
                let cw = Arc::new(tokio::sync::Mutex::new(Some(cw)));
                let to_client = cw.clone();
                // Set at a delivered cut: the server's next answer (to the
                // COMMIT) is dropped, and the client's connection closed.
                let swallow = Arc::new(AtomicBool::new(false));
                let swallowing = swallow.clone();
                // Server → client, until the cut; then the server's answers are dropped.
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 64 * 1024];
                    while let Ok(n @ 1..) = sr.read(&mut buf).await {
                        let mut to_client = to_client.lock().await;
                        if swallowing.load(Ordering::SeqCst) {
                            drop(to_client.take());
                        } else if let Some(cw) = to_client.as_mut() {
                            let _ = cw.write_all(&buf[..n]).await;
                        }
                    }
                });
                let done = done.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 64 * 1024];
                    let mut merging = false;
                    let mut seen: Vec<u8> = Vec::new();
                    while let Ok(n @ 1..) = cr.read(&mut buf).await {
                        let chunk = &buf[..n];
                        seen.extend_from_slice(chunk);
                        merging |= find(&seen, b"INSERT INTO public.followers").is_some();
                        if seen.len() > 1 << 20 {
                            seen.drain(..seen.len() - 64);
                        }
                        let commit = b"Q\0\0\0\x0bCOMMIT\0";
                        match find(chunk, commit) {
                            Some(at) if merging && !done.swap(true, Ordering::SeqCst) => {
                                // The client hears nothing more (with `deliver`,
                                // once the server has answered the COMMIT)...
                                if deliver {
                                    swallow.store(true, Ordering::SeqCst);
                                } else {
                                    drop(cw.lock().await.take());
                                }
                                let upto = if deliver { at + commit.len() } else { at };
                                let _ = sw.write_all(&chunk[..upto]).await;
                                // ...and the server sees the end of its input.
                                let _ = sw.shutdown().await;
                                return;
                            }
                            _ => {
                                if sw.write_all(chunk).await.is_err() {
                                    return;
                                }
                            }
                        }
                    }
                    let _ = sw.shutdown().await;
                });
            }
        });
        Self { port, cut }
    }

    /// The test database's URL through the proxy.
    fn url(&self, env: &TestEnv) -> String {
        let mut url = url::Url::parse(&env.url).unwrap();
        url.set_host(Some("127.0.0.1")).unwrap();
        url.set_port(Some(self.port)).unwrap();
        url.set_query(Some("sslmode=disable"));
        url.to_string()
    }

    fn has_cut(&self) -> bool {
        self.cut.load(std::sync::atomic::Ordering::SeqCst)
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

const NEXT: &[(&str, &str)] = &[
    ("ann@example.com", "Ann"),
    ("bob@example.com", "Robert"),
    ("cy@example.com", "Cy"),
    ("dee@example.com", "Dee"),
];

/// Syncs ABC, then NEXT through a `CommitCutter`; the cut must have happened.
async fn sync_with_a_cut_commit(deliver: bool) -> (TestEnv, Run) {
    let env = TestEnv::migrated().await;
    env.write_csv(csv(ABC));
    env.synced(&[]);
    env.write_csv(csv(NEXT));
    let proxy = CommitCutter::start(deliver).await;
    let run = tokio::task::spawn_blocking({
        let mut cmd = env.command();
        cmd.args(["sync", "--json"])
            .env("DATABASE_URL", proxy.url(&env));
        move || Run::from(cmd.output().unwrap())
    })
    .await
    .unwrap();
    assert!(proxy.has_cut(), "the COMMIT was not cut: {run:?}");
    (env, run)
}

#[tokio::test]
async fn a_commit_that_happened_while_its_connection_was_lost_is_synced() {
    let (env, run) = sync_with_a_cut_commit(true).await;
    run.assert_ended(0, "synced");
    assert_eq!((run.n("inserted"), run.n("updated")), (1, 1));
    assert!(run.stderr.contains("lost during COMMIT"), "{run:?}");
    assert_eq!(env.followers().await, pairs(NEXT));
    assert_eq!(env.last_run().await.0, "synced");
    assert_eq!(env.staging_rows().await, 0);
}

#[tokio::test]
async fn a_commit_that_never_arrived_is_failed_and_changes_nothing() {
    let (env, run) = sync_with_a_cut_commit(false).await;
    run.assert_ended(1, "failed");
    assert!(run.stderr.contains("merge step commit failed"), "{run:?}");
    assert_eq!(env.followers().await, pairs(ABC));
    let (outcome, _, error) = env.last_run().await;
    assert_eq!(outcome, "failed", "{error:?}");
    assert_eq!(env.staging_rows().await, 0);
    env.synced(&[]);
    assert_eq!(env.followers().await, pairs(NEXT));
}

#[tokio::test]
async fn readyz_and_metrics_answer_within_a_second_while_a_run_holds_every_connection() {
    let env = TestEnv::new().await;
    env.write_csv(csv_owned(&many(400_000)));
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut agent = env.spawn_agent(&[
        ("HTTP_ADDR", &addr),
        ("WATCH", "false"),
        ("DB_MAX_CONNS", "2"),
        ("WORKER_POOL_GOROUTINES", "2"),
        ("BATCH_SIZE", "100"),
        ("SHUTDOWN_TIMEOUT", "0s"),
    ]);
    wait_ready(&env).await;
    env.wait_for_staging().await;
    for _ in 0..3 {
        for path in ["/readyz", "/metrics"] {
            let answer = http_get_within(port, path, Duration::from_secs(1));
            let answer = answer.unwrap_or_else(|| {
                panic!(
                    "{path} did not answer within 1 s; log:\n{}",
                    agent.log_text()
                )
            });
            assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        }
    }
    // The run was still staging (holding both connections) all along.
    assert!(
        env.staging_rows().await > 0,
        "the run ended too soon to test anything"
    );
    assert_eq!(env.last_run().await.0, "running");
    assert_eq!(agent.terminate().await, 0);
}

#[tokio::test]
async fn a_merge_whose_backend_is_killed_at_commit_is_failed_and_changes_nothing() {
    let env = TestEnv::migrated().await;
    env.write_csv(csv(ABC));
    env.synced(&[]);
    env.write_csv(csv(NEXT));
    // At COMMIT (a deferred trigger), the merge's own backend is terminated.
    env.exec(
        "CREATE FUNCTION die() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN PERFORM pg_terminate_backend(pg_backend_pid()); PERFORM pg_sleep(5); RETURN NULL; END $$;
         CREATE CONSTRAINT TRIGGER die_at_commit AFTER INSERT OR UPDATE ON etl_info_schema.table_status
         DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION die();",
    )
    .await;
    let run = env.sync();
    run.assert_ended(1, "failed");
    assert!(run.stderr.contains("merge step commit failed"), "{run:?}");
    assert_eq!(env.followers().await, pairs(ABC));
    assert_eq!(env.last_run().await.0, "failed");
    assert_eq!(env.staging_rows().await, 0);
    env.exec("DROP TRIGGER die_at_commit ON etl_info_schema.table_status")
        .await;
    env.synced(&[]);
    assert_eq!(env.followers().await, pairs(NEXT));
}
