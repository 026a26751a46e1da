//! Crash harness: `sync` and `serve` are SIGKILLed at random moments of a run
//! that changes 200,000 followers; `followers` must then hold exactly the old or
//! the new file, and the next run must recover (no staging rows, no run left
//! `running`, `followers` equal to the new file). A configured mirror's first
//! run, killed likewise, leaves neither its table nor its schema, or the full
//! table (docs/guarantees.md#a-configured-mirrors-first-run-killed-leaves-no-table-or-the-full-one).
//!
//! `CRASH_TRIALS` (default 3) sets the trials per test, `CRASH_SEED` replays a
//! failed run (the seed is printed at the start; the output of a failed test is
//! shown). docs/guarantees.md#measured has the command of the long run and its result.

use crate::helpers::*;
use std::process::Stdio;
use std::time::{Duration, Instant};

const ROWS: usize = 200_000;

fn trials() -> usize {
    std::env::var("CRASH_TRIALS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3)
}

/// SplitMix64: a seeded generator, so a failing run can be replayed.
struct Rng(u64);

impl Rng {
    fn from_env() -> Self {
        let seed = seed_from_env("CRASH_SEED");
        println!("crash harness: CRASH_SEED={seed}");
        Self(seed)
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A moment in `0..window`.
    fn moment(&mut self, window: Duration) -> Duration {
        Duration::from_micros(
            self.next() % u64::try_from(window.as_micros()).unwrap_or(u64::MAX).max(1),
        )
    }
}

/// The old file (200,000 followers) and the new one: every 10th renamed, every
/// 20th deleted (5%, within the default delete guard), 10,000 new ones.
fn versions() -> (Vec<Follower>, Vec<Follower>) {
    let old = many(ROWS);
    let mut new: Vec<Follower> = old
        .iter()
        .enumerate()
        .filter(|(i, _)| i % 20 != 1)
        .map(|(i, (email, name))| {
            let name = if i % 10 == 0 {
                format!("{name} Renamed")
            } else {
                name.clone()
            };
            (email.clone(), name)
        })
        .collect();
    new.extend(
        (ROWS..ROWS + ROWS / 20).map(|i| (format!("user{i}@example.com"), format!("User {i}"))),
    );
    (old, new)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Old,
    New,
}

/// A database synced from the old file, with the new file in place, that can be
/// put back into that state between trials.
struct Fixture {
    env: TestEnv,
    old: String,
    new: String,
    old_hash: String,
    /// Odd trials draw the kill moment from `0..window`: 1.2 × what one whole
    /// `sync` of the change took here.
    window: Duration,
    /// Even trials wait until every row is staged, then draw it from
    /// `0..merge_window`: 1.5 × how long the rest of that run (duplicates,
    /// merge, commit) took, so the kills land around the commit.
    merge_window: Duration,
}

/// Rows of the new file, all staged once reading is done.
/// (10,000 deleted, 10,000 inserted).
const NEW_ROWS: usize = ROWS;

impl Fixture {
    async fn new() -> Self {
        let env = TestEnv::new().await;
        let (old_rows, new_rows) = versions();
        env.write_csv(csv_owned(&old_rows));
        env.synced(&[]);
        let old = env.digest_of(&old_rows).await;
        assert_eq!(env.followers_digest().await.unwrap(), old);
        let new = env.digest_of(&new_rows).await;
        env.exec("CREATE TABLE crash_snapshot AS SELECT * FROM followers")
            .await;
        let old_hash = sqlx::query_scalar(
            "SELECT content_hash FROM etl_info_schema.table_status WHERE table_name = 'followers'",
        )
        .fetch_one(&env.pool)
        .await
        .unwrap();
        env.write_csv(csv_owned(&new_rows));
        let mut fixture = Self {
            env,
            old,
            new,
            old_hash,
            window: Duration::ZERO,
            merge_window: Duration::ZERO,
        };
        // One whole run of the change, timed.
        let finished = fixture.finished_runs().await;
        let started = Instant::now();
        let mut child = spawn_sync(&fixture.env);
        fixture.wait_all_staged(finished).await;
        let staged = started.elapsed();
        assert!(child.wait().unwrap().success());
        let whole = started.elapsed();
        fixture.window = whole.mul_f64(1.2);
        fixture.merge_window = (whole - staged).mul_f64(1.5);
        fixture.assert_recovered("the whole run").await;
        fixture
    }

    async fn finished_runs(&self) -> i64 {
        self.env
            .scalar("SELECT count(*) FROM etl_info_schema.sync_runs WHERE outcome <> 'running'")
            .await
    }

    /// Waits until every row of the new file is staged, or the run that started
    /// after `finished` runs were recorded has ended.
    async fn wait_all_staged(&self, finished: i64) {
        eventually(120, "every row staged", || async {
            (usize::try_from(self.env.staging_rows().await).unwrap() == NEW_ROWS
                || self.finished_runs().await > finished)
                .then_some(())
        })
        .await;
    }

    /// Waits for trial `trial`'s kill moment (the victim was just started, when
    /// `finished` runs were recorded); describes it.
    async fn kill_moment(&self, rng: &mut Rng, trial: usize, finished: i64) -> String {
        if trial % 2 == 1 {
            let at = rng.moment(self.window);
            tokio::time::sleep(at).await;
            format!("kill after {at:?}")
        } else {
            self.wait_all_staged(finished).await;
            let at = rng.moment(self.merge_window);
            tokio::time::sleep(at).await;
            format!("kill {at:?} after every row was staged")
        }
    }

    /// Back to the state after the old file's sync (the new file stays in place).
    async fn reset(&self) {
        self.env
            .exec(&format!(
                "TRUNCATE followers;
                 INSERT INTO followers SELECT * FROM crash_snapshot;
                 UPDATE etl_info_schema.table_status SET content_hash = '{}' WHERE table_name = 'followers';",
                self.old_hash
            ))
            .await;
        assert_eq!(self.state("reset").await, State::Old);
    }

    /// Which file `followers` holds exactly; panics if neither.
    async fn state(&self, context: &str) -> State {
        let digest = self.env.followers_digest().await.unwrap();
        match digest {
            d if d == self.old => State::Old,
            d if d == self.new => State::New,
            _ => panic!(
                "{context}: followers hold neither the old nor the new file ({} rows)",
                self.env.scalar("SELECT count(*) FROM followers").await
            ),
        }
    }

    /// What a killed run left behind: (staging rows, runs left `running`).
    async fn leftovers(&self) -> (i64, i64) {
        (
            self.env.staging_rows().await,
            self.env
                .scalar("SELECT count(*) FROM etl_info_schema.sync_runs WHERE outcome = 'running'")
                .await,
        )
    }

    async fn assert_recovered(&self, context: &str) {
        assert_eq!(self.leftovers().await, (0, 0), "{context}: leftovers");
        assert_eq!(self.state(context).await, State::New, "{context}");
    }
}

/// What the trials saw, for the summary line (and the figures of docs/guarantees.md#measured).
#[derive(Default)]
struct Tally {
    old: usize,
    new: usize,
    /// Trials whose kill left staging rows or a `running` record behind.
    mid_run: usize,
}

impl Tally {
    fn add(&mut self, context: &str, state: State, leftovers: (i64, i64)) {
        println!(
            "{context}: followers = {state:?} file, staging rows left {}, runs left running {}",
            leftovers.0, leftovers.1
        );
        match state {
            State::Old => self.old += 1,
            State::New => self.new += 1,
        }
        if leftovers != (0, 0) {
            self.mid_run += 1;
        }
    }

    fn print(&self, what: &str, fx: &Fixture) {
        println!(
            "{what}: {} trials, kill moment uniform in 0..{:?} (odd trials) or 0..{:?} after every row was staged (even trials): followers held the old file {} times, the new file {} times (never anything else); {} kills left staging rows or a running record; every next run recovered",
            self.old + self.new,
            fx.window,
            fx.merge_window,
            self.old,
            self.new,
            self.mid_run
        );
    }
}

fn spawn_sync(env: &TestEnv) -> std::process::Child {
    env.command()
        .args(["sync", "--json"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn sync")
}

#[tokio::test]
#[ignore = "slow group: crash (docs/development.md#slow-test-groups)"]
async fn sync_killed_at_a_random_moment_leaves_the_old_or_the_new_file_and_the_next_run_recovers() {
    let mut rng = Rng::from_env();
    let fx = Fixture::new().await;
    let env = &fx.env;
    let mut tally = Tally::default();
    for trial in 1..=trials() {
        fx.reset().await;
        let finished = fx.finished_runs().await;
        let mut child = spawn_sync(env);
        let moment = fx.kill_moment(&mut rng, trial, finished).await;
        let context = format!("sync trial {trial}, {moment}");
        child.kill().unwrap();
        child.wait().unwrap();
        let state = fx.state(&context).await;
        tally.add(&context, state, fx.leftovers().await);

        let next = env.sync();
        assert!(
            next.code == 0 && ["synced", "skipped"].contains(&next.outcome().as_str()),
            "{context}: the next run: {next:?}"
        );
        fx.assert_recovered(&context).await;
    }
    tally.print("sync SIGKILL", &fx);
}

/// Waits until `serve`'s start-up run is finished and returns how many start-up
/// runs are recorded.
async fn wait_start_runs(env: &TestEnv, at_least: usize, agent: &Agent) -> usize {
    let what = format!(
        "{at_least} finished start-up run(s); log:\n{}",
        agent.log_text()
    );
    eventually(120, &what, || async {
        let runs = env.runs_by("start").await;
        (runs.len() >= at_least && runs.iter().all(|(outcome, _)| outcome != "running"))
            .then_some(runs.len())
    })
    .await
}

#[tokio::test]
#[ignore = "slow group: crash (docs/development.md#slow-test-groups)"]
async fn serve_killed_at_a_random_moment_leaves_the_old_or_the_new_file_and_a_restart_recovers() {
    let mut rng = Rng::from_env();
    let fx = Fixture::new().await;
    let env = &fx.env;
    let quiet = [("WATCH", "false")];
    let mut tally = Tally::default();
    for trial in 1..=trials() {
        fx.reset().await;
        let finished = fx.finished_runs().await;
        let mut agent = env.spawn_agent(&quiet);
        let moment = fx.kill_moment(&mut rng, trial, finished).await;
        let context = format!("serve trial {trial}, {moment}");
        agent.kill();
        let state = fx.state(&context).await;
        tally.add(&context, state, fx.leftovers().await);

        let before = env.runs_by("start").await.len();
        let mut restarted = env.spawn_agent(&quiet);
        wait_start_runs(env, before + 1, &restarted).await;
        let last = env.runs_by("start").await.pop().unwrap().0;
        assert!(
            last == "synced" || last == "skipped",
            "{context}: the restarted agent's run: {last}; log:\n{}",
            restarted.log_text()
        );
        assert_eq!(restarted.terminate().await, 0, "{context}");
        fx.assert_recovered(&context).await;
    }
    tally.print("serve SIGKILL", &fx);
}

/// The first sync into an empty table drops and rebuilds the primary key in its
/// transaction (docs/performance.md#the-first-sync): killed at any moment, it leaves the
/// table empty or full, with its key, and the next run fills it.
#[tokio::test]
#[ignore = "slow group: crash (docs/development.md#slow-test-groups)"]
async fn first_sync_killed_at_a_random_moment_leaves_an_empty_or_full_table_with_its_key() {
    let mut rng = Rng::from_env();
    let env = TestEnv::new().await;
    let (_, rows) = versions();
    env.write_csv(csv_owned(&rows));
    env.run(&["migrate"], &[]);
    let full = env.digest_of(&rows).await;
    let key = "SELECT count(*) FROM pg_constraint
                WHERE conrelid = 'public.followers'::regclass AND contype = 'p'
                  AND pg_get_constraintdef(oid) = 'PRIMARY KEY (email)'";
    let empty_again = || async {
        env.exec(
            "TRUNCATE followers;
             UPDATE etl_info_schema.table_status SET content_hash = NULL WHERE table_name = 'followers'",
        )
        .await
    };
    let started = Instant::now();
    env.synced(&[]);
    let window = started.elapsed().mul_f64(1.2);
    let (mut empty, mut filled) = (0, 0);
    for trial in 1..=trials() {
        empty_again().await;
        let mut child = spawn_sync(&env);
        let at = rng.moment(window);
        tokio::time::sleep(at).await;
        child.kill().unwrap();
        child.wait().unwrap();
        let context = format!("first sync trial {trial}, kill after {at:?}");
        // Reading waits for the killed run's transaction to end.
        let count = env.scalar("SELECT count(*) FROM followers").await;
        match count {
            0 => empty += 1,
            n if usize::try_from(n).unwrap() == rows.len() => {
                assert_eq!(env.followers_digest().await.unwrap(), full, "{context}");
                filled += 1;
            }
            n => panic!("{context}: {n} followers, neither none nor all"),
        }
        assert_eq!(env.scalar(key).await, 1, "{context}: the primary key");
        let next = env.sync();
        assert!(
            next.code == 0 && ["synced", "skipped"].contains(&next.outcome().as_str()),
            "{context}: the next run: {next:?}"
        );
        assert_eq!(env.followers_digest().await.unwrap(), full, "{context}");
        assert_eq!(env.scalar(key).await, 1, "{context}: the primary key");
        assert_eq!(env.staging_rows().await, 0, "{context}: staging rows left");
    }
    println!(
        "first sync SIGKILL: {} trials in 0..{window:?}: empty {empty} times, full {filled} times (never anything else), the key always there; every next run filled the table",
        empty + filled
    );
}

/// Two `serve` agents with the same three mirrors (followers from the old
/// variables, a configured file mirror, a glob mirror of three parts) on one
/// database; the first is SIGKILLed while it runs a sync. The other takes the
/// mirrors over on its schedule: every table ends equal to its file, the killed
/// run's record is recovered as interrupted, and no two runs of one mirror
/// that held its lock overlap (docs/mirrors.md#serve).
#[tokio::test]
#[ignore = "slow group: crash (docs/development.md#slow-test-groups)"]
async fn two_agents_share_three_mirrors_and_one_killed_mid_run_loses_nothing() {
    const N: usize = 60_000;
    let env = TestEnv::new().await;
    env.write_csv(csv_owned(&many(N)));
    let subscribers: String = std::iter::once("id,name\n".to_owned())
        .chain((0..N).map(|i| format!("{i},Sub {i}\n")))
        .collect();
    env.write_file("subscribers.csv", subscribers);
    std::fs::create_dir(env.tables().join("parts")).unwrap();
    for part in 0..3 {
        let rows: String = std::iter::once("id,name\n".to_owned())
            .chain((part * N / 3..(part + 1) * N / 3).map(|i| format!("{i},Part {i}\n")))
            .collect();
        env.write_file(&format!("parts/part-{part}.csv"), rows);
    }
    let config = env.write_config(
        "mirrors.toml",
        r#"
[[mirror]]
name = "subscribers"
file = "subscribers.csv"
table = "crm.subscribers"
key = ["id"]
columns = [{ name = "id", type = "bigint" }, { name = "name", type = "text" }]

[[mirror]]
name = "parts"
files = "parts/part-*.csv"
table = "crm.parts"
key = ["id"]
columns = [{ name = "id", type = "bigint" }, { name = "name", type = "text" }]
"#,
    );
    let settings = [
        ("CONFIG_FILE", config.as_str()),
        ("CRON_SCHEDULE", "@every 2s"),
        ("WATCH", "false"),
        ("BATCH_SIZE", "500"),
        ("WORKER_POOL_GOROUTINES", "1"),
    ];
    // The first agent is killed in the middle of a run: once a run of it is
    // recorded `running`, it is killed, and the runs still `running` then are
    // the ones it was in (only it runs; they stay so until recovered). A run
    // that finished in between is no kill mid-run: then the first agent starts
    // again (the next one has less left to do, so this ends).
    let mut running: Vec<(uuid::Uuid, String)> = Vec::new();
    for _ in 0..5 {
        let mut first = env.spawn_agent(&settings);
        eventually_logged(&first, 60, "a run in flight", || async {
            let n: Option<i64> = sqlx::query_scalar(
                "SELECT count(*) FROM etl_info_schema.sync_runs WHERE outcome = 'running'",
            )
            .fetch_one(&env.pool)
            .await
            .ok();
            (n.unwrap_or(0) > 0).then_some(())
        })
        .await;
        first.kill();
        running = sqlx::query_as(
            "SELECT load_id, mirror FROM etl_info_schema.sync_runs WHERE outcome = 'running'",
        )
        .fetch_all(&env.pool)
        .await
        .unwrap();
        if !running.is_empty() {
            break;
        }
    }
    assert!(
        !running.is_empty(),
        "no run was in flight at any of the kills"
    );
    let second = env.spawn_agent(&settings);

    let tables = [
        ("followers", "SELECT count(*) FROM followers WHERE full_name = 'User ' || substring(email FROM 'user([0-9]+)@')"),
        ("subscribers", "SELECT count(*) FROM crm.subscribers WHERE name = 'Sub ' || id"),
        ("parts", "SELECT count(*) FROM crm.parts WHERE name = 'Part ' || id"),
    ];
    let n = i64::try_from(N).unwrap();
    for (mirror, exact) in tables {
        let what = format!("{mirror} equal to its file");
        eventually_logged(&second, 180, &what, || async {
            let rows: Option<i64> = sqlx::query_scalar(exact).fetch_one(&env.pool).await.ok();
            (rows == Some(n)).then_some(())
        })
        .await;
    }
    for (mirror, table) in [
        ("followers", "followers"),
        ("subscribers", "crm.subscribers"),
        ("parts", "crm.parts"),
    ] {
        assert_eq!(
            env.scalar(&format!("SELECT count(*) FROM {table}")).await,
            n,
            "{mirror}: no row beyond the file's"
        );
    }
    for (load_id, mirror) in &running {
        let what = format!("the killed run {load_id} of {mirror} recovered");
        eventually_logged(&second, 60, &what, || async {
            let (outcome, error): (String, Option<String>) = sqlx::query_as(
                "SELECT outcome, error FROM etl_info_schema.sync_runs WHERE load_id = $1",
            )
            .bind(load_id)
            .fetch_one(&env.pool)
            .await
            .ok()?;
            (outcome == "failed" && error.is_some_and(|e| e.starts_with("interrupted")))
                .then_some(())
        })
        .await;
    }
    let overlapping: Vec<(String, uuid::Uuid, uuid::Uuid)> = sqlx::query_as(
        "SELECT a.mirror, a.load_id, b.load_id FROM etl_info_schema.sync_runs a
           JOIN etl_info_schema.sync_runs b ON a.mirror = b.mirror AND a.load_id < b.load_id
          WHERE a.outcome NOT IN ('skipped', 'running') AND b.outcome NOT IN ('skipped', 'running')
            AND a.started_at < b.finished_at AND b.started_at < a.finished_at",
    )
    .fetch_all(&env.pool)
    .await
    .unwrap();
    assert!(
        overlapping.is_empty(),
        "runs of one mirror overlapped: {overlapping:?}; log:\n{}",
        second.log_text()
    );
    assert_eq!(
        env.scalar("SELECT count(*) FROM public.staging_followers")
            .await,
        0,
        "no staging rows left"
    );
}

/// A configured mirror's first run creates its table and schema in its merge's
/// transaction (docs/mirrors.md#runs): SIGKILLed at any moment, it leaves no
/// table and no schema, or the full table; the next run recovers the killed
/// run's record and fills the table.
#[tokio::test]
#[ignore = "slow group: crash (docs/development.md#slow-test-groups)"]
async fn a_configured_mirror_s_first_run_killed_at_a_random_moment_leaves_no_table_or_the_full_one()
{
    const N: i64 = 100_000;
    let mut rng = Rng::from_env();
    let env = TestEnv::migrated().await;
    let rows: String = std::iter::once("id,name\n".to_owned())
        .chain((0..N).map(|i| format!("{i},Sub {i}\n")))
        .collect();
    env.write_file("subscribers.csv", rows);
    let config = env.write_config(
        "mirrors.toml",
        r#"
[[mirror]]
name = "subscribers"
file = "subscribers.csv"
table = "crm.subscribers"
key = ["id"]
columns = [{ name = "id", type = "bigint" }, { name = "name", type = "text" }]
"#,
    );
    let args = [
        "--config",
        config.as_str(),
        "sync",
        "--mirror",
        "subscribers",
    ];
    let exact = "SELECT count(*) FROM crm.subscribers WHERE name = 'Sub ' || id";
    let started = Instant::now();
    let first = env.run(&args, &[]);
    assert_eq!(first.code, 0, "{first:?}");
    let window = started.elapsed().mul_f64(1.2);
    assert_eq!(env.scalar(exact).await, N);
    let (mut absent, mut full) = (0, 0);
    for trial in 1..=trials() {
        env.exec("DROP SCHEMA crm CASCADE").await;
        let mut child = env
            .command()
            .args(args)
            .env("PGAPPNAME", "killed-first-run")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn sync");
        let at = rng.moment(window);
        tokio::time::sleep(at).await;
        child.kill().unwrap();
        child.wait().unwrap();
        let context = format!("first run trial {trial}, kill after {at:?}");
        // Its sessions end (and their transactions roll back) once they find it gone.
        eventually(60, &format!("{context}: its sessions ended"), || async {
            let n = env
                .scalar("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'killed-first-run'")
                .await;
            (n == 0).then_some(())
        })
        .await;
        let table = env
            .scalar("SELECT count(*) FROM pg_class WHERE oid = to_regclass('crm.subscribers')")
            .await;
        let schema = env
            .scalar("SELECT count(*) FROM pg_namespace WHERE nspname = 'crm'")
            .await;
        match (schema, table) {
            (0, 0) => absent += 1,
            (1, 1) => {
                assert_eq!(env.scalar(exact).await, N, "{context}: a partial table");
                full += 1;
            }
            other => panic!("{context}: schema and table {other:?}, neither none nor both"),
        }
        let next = env.run(&args, &[]);
        assert_eq!(next.code, 0, "{context}: the next run: {next:?}");
        assert_eq!(env.scalar(exact).await, N, "{context}");
        assert_eq!(
            env.scalar("SELECT count(*) FROM etl_info_schema.sync_runs WHERE outcome = 'running'")
                .await,
            0,
            "{context}: a run left running"
        );
    }
    println!(
        "configured first run SIGKILL: {} trials in 0..{window:?}: no table {absent} times, the full table {full} times (never anything else); every next run filled it",
        absent + full
    );
}
