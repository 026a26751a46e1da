//! Real faults around `serve`: the database down when it starts, the database
//! restarted during a run, and two agents on one database and one file. The
//! database faults use a private PostgreSQL (see `private_pg.rs`).

use crate::helpers::*;
use crate::private_pg::PrivatePg;
use crate::serve::{free_port, http_get_within, wait_for_followers, wait_ready, ABC};
use std::time::Duration;

/// GET `path`; `None` when refused or not answered within 10 s.
fn http_get(port: u16, path: &str) -> Option<String> {
    http_get_within(port, path, Duration::from_secs(10))
}

fn status_line(response: &str) -> &str {
    response.lines().next().unwrap_or_default()
}

/// Polls `path` until it answers with `status` (e.g. "200").
async fn wait_http(port: u16, path: &str, status: &str, agent: &Agent) -> String {
    let what = format!("{path} answering {status}");
    let want = format!("HTTP/1.1 {status}");
    tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            if let Some(r) = http_get(port, path).filter(|r| r.starts_with(&want)) {
                return r;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .unwrap_or_else(|_| {
        panic!(
            "timed out waiting for {what} (last answer: {:?}); log:\n{}",
            http_get(port, path).as_deref().map(status_line),
            agent.log_text()
        )
    })
}

#[tokio::test]
#[ignore = "slow group: faults (docs/development.md#slow-test-groups)"]
async fn serve_started_before_the_database_answers_health_at_once_and_syncs_when_it_comes_up() {
    let pg = PrivatePg::init();
    let env = TestEnv::on_existing(&pg.url());
    env.write_csv(csv(ABC));
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut agent = env.spawn_agent(&[("HTTP_ADDR", &addr), ("WATCH", "false")]);
    // While the database is down: alive, not ready, and retrying.
    wait_http(port, "/healthz", "200", &agent).await;
    let ready = http_get(port, "/readyz").unwrap_or_default();
    assert!(ready.starts_with("HTTP/1.1 503"), "{ready}");
    eventually_logged(&agent, 30, "three connection attempts logged", || async {
        (agent
            .log_text()
            .matches("database not reachable yet")
            .count()
            >= 3)
            .then_some(())
    })
    .await;
    assert!(agent.alive(), "{}", agent.log_text());
    let ready = http_get(port, "/readyz").unwrap_or_default();
    assert!(ready.starts_with("HTTP/1.1 503"), "{ready}");

    pg.start();
    wait_for_followers(&env, &agent, &pairs(ABC)).await;
    wait_http(port, "/readyz", "200", &agent).await;
    assert_eq!(env.runs_by("start").await, vec![("synced".to_string(), 3)]);
    assert_eq!(agent.terminate().await, 0, "{}", agent.log_text());
}

#[tokio::test]
#[ignore = "slow group: faults (docs/development.md#slow-test-groups)"]
async fn serve_waiting_for_the_database_stops_cleanly_on_sigterm() {
    let env = TestEnv::on_existing(&format!(
        "postgres://postgres@127.0.0.1:{}/postgres",
        free_port()
    ));
    env.write_csv(csv(ABC));
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut agent = env.spawn_agent(&[("HTTP_ADDR", &addr)]);
    wait_http(port, "/readyz", "503", &agent).await;
    assert_eq!(agent.terminate().await, 0, "{}", agent.log_text());
    assert!(
        http_get(port, "/healthz").is_none(),
        "the endpoints stopped"
    );
}

#[tokio::test]
#[ignore = "slow group: faults (docs/development.md#slow-test-groups)"]
async fn a_database_restart_during_a_run_leaves_followers_whole_and_the_next_run_syncs() {
    database_stopped_during_a_run("fast").await;
}

#[tokio::test]
#[ignore = "slow group: faults (docs/development.md#slow-test-groups)"]
async fn a_database_crash_during_a_run_leaves_followers_whole_and_the_next_run_syncs() {
    database_stopped_during_a_run("immediate").await;
}

/// Stops the database (`pg_ctl stop -m mode`) while `serve` stages a file of
/// 100,000 rows, then starts it again.
async fn database_stopped_during_a_run(mode: &str) {
    let pg = PrivatePg::start_new();
    let env = TestEnv::on_existing(&pg.url());
    env.write_csv(csv(ABC));
    env.synced(&[]);
    let rows = many(100_000);
    env.write_csv(csv_owned(&rows));
    let (old, new) = (env.digest_of(&pairs(ABC)).await, env.digest_of(&rows).await);
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut agent = env.spawn_agent(&[
        ("HTTP_ADDR", &addr),
        ("WATCH", "false"),
        ("CRON_SCHEDULE", "@every 1s"),
        ("BATCH_SIZE", "500"),
        ("WORKER_POOL_GOROUTINES", "1"),
        ("MAX_DELETE_RATIO", "1.0"),
    ]);
    env.wait_for_staging().await;
    pg.stop(mode);
    // Down: alive, not ready, and still running after several cron ticks.
    wait_http(port, "/readyz", "503", &agent).await;
    wait_http(port, "/healthz", "200", &agent).await;
    let mark = agent.log_text().len();
    eventually_logged(
        &agent,
        30,
        "runs failing while the database is down",
        || async {
            (agent.log_text()[mark..].matches("outcome=failed").count() >= 2).then_some(())
        },
    )
    .await;
    assert!(agent.alive(), "{}", agent.log_text());

    pg.start();
    let now = env.followers_digest().await.unwrap();
    assert!(now == old || now == new, "followers half-applied");
    eventually_logged(&agent, 120, "the next run syncing the file", || async {
        (env.followers_digest().await.ok()? == new && env.staging_rows().await == 0).then_some(())
    })
    .await;
    wait_http(port, "/readyz", "200", &agent).await;
    let interrupted = env
        .scalar("SELECT count(*) FROM etl_info_schema.sync_runs WHERE outcome = 'failed'")
        .await;
    assert!(interrupted >= 1, "the interrupted run is recorded failed");
    // Stopped, so no cron run is in flight: none is left `running`.
    assert_eq!(agent.terminate().await, 0, "{}", agent.log_text());
    assert_eq!(
        env.scalar("SELECT count(*) FROM etl_info_schema.sync_runs WHERE outcome = 'running'")
            .await,
        0
    );
}

#[tokio::test]
#[ignore = "slow group: faults (docs/development.md#slow-test-groups)"]
async fn two_agents_on_one_database_and_file_never_run_at_once() {
    let env = TestEnv::new().await;
    let version = |v: usize| {
        let mut rows = many(30_000);
        for (i, row) in rows.iter_mut().enumerate().filter(|(i, _)| i % 7 == v % 7) {
            row.1 = format!("User {i} v{v}");
        }
        rows
    };
    env.write_csv(csv_owned(&version(0)));
    let settings = [
        ("CRON_SCHEDULE", "@every 1s"),
        ("BATCH_SIZE", "500"),
        ("WORKER_POOL_GOROUTINES", "1"),
    ];
    let agents = [env.spawn_agent(&settings), env.spawn_agent(&settings)];
    wait_ready(&env).await;
    let contended = "another sync of this database is in progress";
    // Each version is synced (by whichever agent gets the lock) before the next.
    for v in 0..=4 {
        if v > 0 {
            env.write_csv(csv_owned(&version(v)));
        }
        let expected = env.digest_of(&version(v)).await;
        eventually(120, &format!("version {v} synced"), || async {
            (env.followers_digest().await.ok()? == expected).then_some(())
        })
        .await;
    }
    let expected = env.digest_of(&version(4)).await;
    // A few more ticks of both agents on the final file.
    tokio::time::sleep(Duration::from_secs(2)).await;
    for mut agent in agents {
        assert_eq!(agent.terminate().await, 0, "{}", agent.log_text());
    }
    assert_eq!(env.followers_digest().await.unwrap(), expected);
    assert_eq!(env.staging_rows().await, 0);
    // Runs that held the run lock: their records span the time they held it.
    let held: Vec<(String, f64, f64)> = sqlx::query_as(&format!(
        "SELECT outcome, extract(epoch FROM started_at)::float8, extract(epoch FROM finished_at)::float8
           FROM etl_info_schema.sync_runs
          WHERE error IS NULL OR error NOT LIKE '{contended}%'
          ORDER BY started_at"
    ))
    .fetch_all(&env.pool)
    .await
    .unwrap();
    assert!(
        held.iter().filter(|r| r.0 == "synced").count() >= 5,
        "{held:?}"
    );
    for pair in held.windows(2) {
        assert!(pair[1].1 >= pair[0].2, "runs overlap: {pair:?}");
    }
    let taken = env
        .scalar(&format!(
            "SELECT count(*) FROM etl_info_schema.sync_runs WHERE error LIKE '{contended}%'"
        ))
        .await;
    // Otherwise the agents never tried at the same time, and this proved nothing.
    assert!(taken > 0, "no run found the lock taken: {held:?}");
    println!(
        "two agents: {} runs held the run lock one after the other, {taken} found it taken",
        held.len()
    );
}
