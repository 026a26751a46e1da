//! Files still being written are never read, whatever the trigger (README,
//! "Files still being written").

use crate::helpers::*;
use crate::serve::wait_for_followers;
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
    while !writer.is_finished() || env.followers().await != new {
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
    let env = TestEnv::new().await;
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
        (len as usize == grown().0.len()).then_some(())
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
