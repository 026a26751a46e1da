//! Exact with the application writing too (docs/sync.md#readers-and-writers-during-a-run): another session writing `followers` during a sync or a revert, the
//! first sync's emptiness under its lock, a revert that undoes only what runs
//! wrote, runs in commit order; and a harness of several sessions inserting,
//! renaming and deleting followers while syncs of changing files run
//! (`CONCURRENCY_ROUNDS`, default 4).

use crate::helpers::*;
use sqlx::{Connection, PgConnection, Row};
use std::collections::BTreeMap;
use std::process::{Child, Stdio};
use std::time::Duration;

const A_E: &[(&str, &str)] = &[
    ("a@example.com", "A"),
    ("b@example.com", "B"),
    ("c@example.com", "C"),
    ("d@example.com", "D"),
    ("e@example.com", "E"),
];

/// A..E with a and b renamed.
const A_E2: &[(&str, &str)] = &[
    ("a@example.com", "A2"),
    ("b@example.com", "B2"),
    ("c@example.com", "C"),
    ("d@example.com", "D"),
    ("e@example.com", "E"),
];

/// Another program's session on the test database, named `app`.
async fn session(env: &TestEnv, app: &str) -> PgConnection {
    let mut conn = PgConnection::connect(&env.url).await.unwrap();
    sqlx::raw_sql(&format!("SET application_name = '{app}'"))
        .execute(&mut conn)
        .await
        .unwrap();
    conn
}

async fn exec(conn: &mut PgConnection, sql: &str) {
    sqlx::raw_sql(sql)
        .execute(conn)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

/// Applies the migrations (the agent's empty `followers`).
pub(crate) fn migrate(env: &TestEnv) {
    let run = env.run(&["migrate"], &[]);
    assert_eq!(run.code, 0, "{run:?}");
}

/// Starts the binary in the background.
fn spawn(env: &TestEnv, args: &[&str], vars: &[(&str, &str)]) -> Child {
    let mut cmd = env.command();
    cmd.args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
    for (k, v) in vars {
        cmd.env(k, v);
    }
    cmd.spawn().unwrap()
}

async fn finish(child: Child) -> Run {
    tokio::task::spawn_blocking(move || child.wait_with_output().unwrap().into())
        .await
        .unwrap()
}

/// Waits until a session of the agent waits for the writer lock on followers.
async fn waiting_for_the_writer_lock(env: &TestEnv) {
    eventually(30, "the agent waiting for the writer lock", || async {
        (env.scalar(
            "SELECT count(*) FROM pg_stat_activity
              WHERE datname = current_database() AND wait_event_type = 'Lock'
                AND query LIKE 'LOCK TABLE public.followers IN SHARE ROW EXCLUSIVE MODE%'",
        )
        .await
            > 0)
        .then_some(())
    })
    .await;
}

fn load_id(run: &Run) -> String {
    run.json()["load_id"].as_str().unwrap().to_owned()
}

/// The journal rows of run `id`: email -> (action, old_name, new_name).
async fn journal_of(
    env: &TestEnv,
    id: &str,
) -> BTreeMap<String, (String, Option<String>, Option<String>)> {
    sqlx::query(
        "SELECT email, action, old_name, new_name FROM etl_info_schema.sync_journal WHERE load_id = $1::uuid",
    )
    .bind(id)
    .fetch_all(&env.pool)
    .await
    .unwrap()
    .iter()
    .map(|r| (r.get(0), (r.get(1), r.get(2), r.get(3))))
    .collect()
}

#[tokio::test]
async fn a_writer_during_the_merge_is_serialized_and_the_table_equals_the_file() {
    let env = TestEnv::migrated().await;
    env.write_csv(csv(A_E));
    env.synced(&[]);
    // The reproduction: another session renames a and deletes b, and
    // commits while the sync that renames a and b runs.
    let mut app = session(&env, "shop-backend").await;
    exec(
        &mut app,
        "BEGIN; UPDATE followers SET full_name = 'A-app' WHERE email = 'a@example.com';
         DELETE FROM followers WHERE email = 'b@example.com'",
    )
    .await;
    env.write_csv(csv(A_E2));
    let sync = spawn(&env, &["sync", "--json"], &[]);
    waiting_for_the_writer_lock(&env).await;
    exec(&mut app, "COMMIT").await;
    let run = finish(sync).await;
    run.assert_ended(0, "synced");
    // After the other session: a renamed (A-app -> A2), b inserted again.
    assert_eq!(
        (
            run.n("updated"),
            run.n("inserted"),
            run.n("deleted"),
            run.n("unchanged")
        ),
        (1, 1, 0, 3),
        "{run:?}"
    );
    assert_eq!(env.followers().await, pairs(A_E2));
    // The journal holds what the run replaced: the other session's name.
    let journal = journal_of(&env, &load_id(&run)).await;
    assert_eq!(
        journal["a@example.com"],
        ("update".into(), Some("A-app".into()), Some("A2".into()))
    );
    assert_eq!(journal["b@example.com"].0, "insert");
    assert_eq!(journal.len(), 2);
    // The next sync of the same file has nothing to do, and the table is the file.
    let again = env.sync();
    assert_eq!(again.outcome(), "skipped", "{again:?}");
    // Revert gives back the table just before the run: the other session's state.
    let revert = env.run(&["revert", "--last", "--json"], &[]);
    revert.assert_ended(0, "reverted");
    assert_eq!(
        env.followers().await,
        pairs(&[
            ("a@example.com", "A-app"),
            ("c@example.com", "C"),
            ("d@example.com", "D"),
            ("e@example.com", "E"),
        ])
    );
}

#[tokio::test]
async fn a_writer_that_does_not_commit_fails_the_run_naming_it_and_nothing_changes() {
    let env = TestEnv::migrated().await;
    env.write_csv(csv(A_E));
    env.synced(&[]);
    let mut app = session(&env, "shop-backend").await;
    exec(
        &mut app,
        "BEGIN; UPDATE followers SET full_name = 'A-app' WHERE email = 'a@example.com'",
    )
    .await;
    env.write_csv(csv(A_E2));
    let started = std::time::Instant::now();
    let run = env.sync_with(&[], &[("LOCK_WAIT_TIMEOUT", "1s")]);
    run.assert_ended(1, "failed");
    assert!(started.elapsed() < Duration::from_secs(20), "bounded wait");
    for part in [
        "LOCK_WAIT_TIMEOUT=1s",
        "application \"shop-backend\"",
        "idle in transaction",
        "transaction since",
        "nothing changed",
    ] {
        assert!(run.stderr.contains(part), "{part}: {run:?}");
    }
    // Nothing changed (the other session's change is still uncommitted).
    assert_eq!(env.followers().await, pairs(A_E));
    assert_eq!(env.staging_rows().await, 0);
    exec(&mut app, "ROLLBACK").await;
    env.synced(&[]);
    assert_eq!(env.followers().await, pairs(A_E2));
    // A revert waits for writers the same way.
    exec(
        &mut app,
        "BEGIN; DELETE FROM followers WHERE email = 'e@example.com'",
    )
    .await;
    let revert = env.run(
        &["revert", "--last", "--json"],
        &[("LOCK_WAIT_TIMEOUT", "1s")],
    );
    revert.assert_ended(1, "failed");
    assert!(
        revert.stderr.contains("shop-backend") && revert.stderr.contains("LOCK_WAIT_TIMEOUT=1s"),
        "{revert:?}"
    );
    exec(&mut app, "ROLLBACK").await;
    assert_eq!(env.followers().await, pairs(A_E2));
}

#[tokio::test]
async fn a_row_committed_while_the_first_sync_waits_for_its_lock_is_seen() {
    let env = TestEnv::migrated().await;
    migrate(&env);
    let mut app = session(&env, "signup-form").await;
    exec(
        &mut app,
        "BEGIN; INSERT INTO followers VALUES ('zed@example.com', 'Zed', now())",
    )
    .await;
    env.write_csv(csv(A_E));
    let sync = spawn(&env, &["sync", "--json"], &[]);
    waiting_for_the_writer_lock(&env).await;
    exec(&mut app, "COMMIT").await;
    let run = finish(sync).await;
    // Not a fill: the table held zed, whom the file lacks (1 of 1 deleted).
    run.assert_ended(1, "refused");
    assert!(run.stderr.contains("MAX_DELETE_RATIO"), "{run:?}");
    assert_eq!(env.followers().await, pairs(&[("zed@example.com", "Zed")]));
    let run = env.synced(&["--allow-mass-delete"]);
    assert_eq!((run.n("inserted"), run.n("deleted")), (5, 1), "{run:?}");
    assert_eq!(
        env.scalar(&format!(
            "SELECT count(*) FROM etl_info_schema.sync_runs WHERE load_id = '{}' AND NOT filled",
            load_id(&run)
        ))
        .await,
        1
    );
    assert_eq!(env.followers().await, pairs(A_E));
    let revert = env.run(&["revert", "--last", "--json", "--allow-mass-delete"], &[]);
    revert.assert_ended(0, "reverted");
    assert_eq!(env.followers().await, pairs(&[("zed@example.com", "Zed")]));
}

#[tokio::test]
async fn revert_refuses_a_follower_the_run_inserted_and_a_person_renamed() {
    let env = TestEnv::migrated().await;
    env.write_csv(csv(A_E));
    env.synced(&[]);
    let mut more = A_E.to_vec();
    more.push(("f@example.com", "F"));
    env.write_csv(csv(&more));
    env.synced(&[]);
    env.exec("UPDATE followers SET full_name = 'F by hand' WHERE email = 'f@example.com'")
        .await;
    let revert = env.run(&["revert", "--last", "--json"], &[]);
    revert.assert_ended(1, "refused");
    assert!(
        revert
            .stderr
            .contains("f@example.com: inserted by the run, \"F by hand\" now"),
        "{revert:?}"
    );
    assert_eq!(env.scalar("SELECT count(*) FROM followers").await, 6);
}

#[tokio::test]
async fn a_revert_to_a_first_sync_deletes_only_what_the_agent_wrote() {
    let env = TestEnv::migrated().await;
    env.write_csv(csv(A_E));
    let fill = env.synced(&[]);
    // By hand after the first sync: zed added, a renamed.
    env.exec(
        "INSERT INTO followers VALUES ('zed@example.com', 'Zed', now());
         UPDATE followers SET full_name = 'A by hand' WHERE email = 'a@example.com'",
    )
    .await;
    let revert = env.run(&["revert", "--last", "--json"], &[]);
    // 4 of 6 deleted: the delete guard applies to reverts too.
    revert.assert_ended(1, "refused");
    assert!(revert.stderr.contains("--allow-mass-delete"), "{revert:?}");
    assert_eq!(env.scalar("SELECT count(*) FROM followers").await, 6);
    let revert = env.run(&["revert", "--last", "--json", "--allow-mass-delete"], &[]);
    revert.assert_ended(0, "reverted");
    assert_eq!(
        env.followers().await,
        pairs(&[("a@example.com", "A by hand"), ("zed@example.com", "Zed")])
    );
    let json = revert.json();
    assert_eq!(
        (json["deleted"].as_u64(), json["left"].as_u64()),
        (Some(4), Some(2))
    );
    assert_eq!(json["left_examples"][1], "zed@example.com", "{json}");
    assert_eq!(json["undone"][0]["load_id"], load_id(&fill).as_str());
}

#[tokio::test]
async fn a_revert_to_a_first_sync_through_later_runs_puts_back_what_others_wrote() {
    let env = TestEnv::migrated().await;
    env.write_csv(csv(A_E));
    let fill = env.synced(&[]);
    env.exec("INSERT INTO followers VALUES ('zed@example.com', 'Zed', now())")
        .await;
    // The next file renames zed (the agent now changed a row someone else wrote)
    // and b (a row the fill wrote), and adds f.
    let mut next = A_E.to_vec();
    next[1] = ("b@example.com", "B2");
    next.push(("f@example.com", "F"));
    next.push(("zed@example.com", "Zed2"));
    env.write_csv(csv(&next));
    env.synced(&[]);
    let revert = env.run(
        &["revert", &load_id(&fill), "--json", "--allow-mass-delete"],
        &[],
    );
    revert.assert_ended(0, "reverted");
    // zed is back as its writer left it; everything the agent wrote is gone.
    assert_eq!(env.followers().await, pairs(&[("zed@example.com", "Zed")]));
    assert_eq!(revert.json()["left"].as_u64(), Some(1), "{revert:?}");
}

#[tokio::test]
async fn revert_last_follows_the_commit_order_not_the_clock() {
    let env = TestEnv::migrated().await;
    env.write_csv(csv(A_E));
    env.synced(&[]);
    env.write_csv(csv(A_E2));
    let second = env.synced(&[]);
    // The agent's clock stepped back an hour before the second run started.
    env.exec(&format!(
        "UPDATE etl_info_schema.sync_runs SET started_at = started_at - interval '1 hour'
          WHERE load_id = '{}'",
        load_id(&second)
    ))
    .await;
    let revert = env.run(&["revert", "--last", "--json"], &[]);
    revert.assert_ended(0, "reverted");
    assert_eq!(
        revert.json()["undone"][0]["load_id"],
        load_id(&second).as_str()
    );
    assert_eq!(env.followers().await, pairs(A_E));
}

/// SplitMix64, seeded (`CONCURRENCY_SEED` replays a run).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Emails the writers and the files use (so they collide).
const POOL: u64 = 300;

fn email(k: u64) -> String {
    format!("p{k:03}@example.com")
}

type State = BTreeMap<String, String>;

/// The writers' log: one row per committed change of one follower, in the same
/// transaction, with that transaction's id (the change comes first, so the id is
/// taken only once the writer holds its lock on followers). A run's own id is
/// taken once it holds its writer lock, so writers' ids below it committed
/// before the run read the table, and those above it wrote after its commit.
const LOG: &str = "CREATE TABLE writer_log (xid xid8 NOT NULL, email text NOT NULL, old_name text, new_name text)";

/// One writer: short REPEATABLE READ transactions (a conflict with another
/// writer or with a merge fails and is not logged), each inserting, renaming
/// or deleting one random follower and logging what it replaced, in one
/// statement.
async fn writer(url: String, seed: u64, stop: tokio_util::sync::CancellationToken) -> u64 {
    let mut rng = Rng(seed);
    // Each change is one statement in its own REPEATABLE READ transaction.
    let options: sqlx::postgres::PgConnectOptions = url.parse().unwrap();
    let options = options.application_name("harness-writer").options([
        ("lock_timeout", "20s"),
        ("default_transaction_isolation", "repeatable\\ read"),
    ]);
    let conn = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect_with(options)
        .await
        .unwrap();
    let mut committed = 0;
    while !stop.is_cancelled() {
        let who = email(rng.below(POOL));
        let name = format!("W{}", rng.below(1_000_000));
        let sql = match rng.below(3) {
            0 => "WITH c AS (INSERT INTO followers VALUES ($1, $2, now()) RETURNING email)
                  INSERT INTO writer_log SELECT pg_current_xact_id(), email, NULL, $2 FROM c",
            1 => "WITH o AS (SELECT email, full_name FROM followers WHERE email = $1),
                       c AS (UPDATE followers f SET full_name = $2, modified_at = now() FROM o
                              WHERE f.email = o.email RETURNING o.email, o.full_name)
                  INSERT INTO writer_log SELECT pg_current_xact_id(), email, full_name, $2 FROM c",
            _ => "WITH c AS (DELETE FROM followers WHERE email = $1 AND $2 <> '' RETURNING email, full_name)
                  INSERT INTO writer_log SELECT pg_current_xact_id(), email, full_name, NULL FROM c",
        };
        let done = sqlx::query(sql).bind(&who).bind(&name).execute(&conn).await;
        if done.is_ok() {
            committed += 1;
        }
        tokio::time::sleep(Duration::from_millis(rng.below(15))).await;
    }
    committed
}

/// The log's changes with ids in (after, upto], applied in id order to `state`
/// (per follower, id order is commit order: REPEATABLE READ fails the later of
/// two overlapping changes of one follower).
async fn apply_log(env: &TestEnv, state: &mut State, after: Option<u64>, upto: Option<u64>) {
    let rows = sqlx::query(
        "SELECT email, new_name FROM writer_log
          WHERE ($1::bigint IS NULL OR xid::text::bigint > $1) AND ($2::bigint IS NULL OR xid::text::bigint < $2)
          ORDER BY xid::text::bigint",
    )
    .bind(after.map(|v| i64::try_from(v).unwrap()))
    .bind(upto.map(|v| i64::try_from(v).unwrap()))
    .fetch_all(&env.pool)
    .await
    .unwrap();
    for r in rows {
        let email: String = r.get(0);
        match r.get::<Option<String>, _>(1) {
            Some(name) => state.insert(email, name),
            None => state.remove(&email),
        };
    }
}

/// The run's transaction id (`write_xid`).
async fn write_xid(env: &TestEnv, id: &str) -> u64 {
    let xid = env
        .scalar(&format!(
            "SELECT write_xid::text::bigint FROM etl_info_schema.sync_runs WHERE load_id = '{id}'"
        ))
        .await;
    u64::try_from(xid).unwrap()
}

/// The table when the run with id `xid` committed: the current table with the
/// writers' later changes (ids above `xid`) taken back, both read in one snapshot.
async fn at_commit(env: &TestEnv, xid: u64) -> State {
    let mut tx = env.pool.begin().await.unwrap();
    sqlx::raw_sql("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        .execute(&mut *tx)
        .await
        .unwrap();
    let mut state: State = sqlx::query("SELECT email, full_name FROM followers")
        .fetch_all(&mut *tx)
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let later = sqlx::query(
        "SELECT DISTINCT ON (email) email, old_name FROM writer_log
          WHERE xid::text::bigint > $1 ORDER BY email, xid::text::bigint",
    )
    .bind(i64::try_from(xid).unwrap())
    .fetch_all(&mut *tx)
    .await
    .unwrap();
    tx.commit().await.unwrap();
    for r in later {
        let email: String = r.get(0);
        match r.get::<Option<String>, _>(1) {
            Some(name) => state.insert(email, name),
            None => state.remove(&email),
        };
    }
    state
}

/// What a run must have journaled, from the table just before it and the file.
fn expected_journal(
    before: &State,
    file: &State,
) -> BTreeMap<String, (String, Option<String>, Option<String>)> {
    let mut expected = BTreeMap::new();
    for (email, name) in file {
        match before.get(email) {
            None => {
                expected.insert(
                    email.clone(),
                    ("insert".to_owned(), None, Some(name.clone())),
                );
            }
            Some(old) if old != name => {
                expected.insert(
                    email.clone(),
                    ("update".to_owned(), Some(old.clone()), Some(name.clone())),
                );
            }
            _ => {}
        }
    }
    for (email, old) in before {
        if !file.contains_key(email) {
            expected.insert(
                email.clone(),
                ("delete".to_owned(), Some(old.clone()), None),
            );
        }
    }
    expected
}

/// A file of about two thirds of the pool, names varying by round.
fn random_file(rng: &mut Rng, round: u64) -> State {
    let mut file = State::new();
    for k in 0..POOL {
        if rng.below(3) > 0 {
            file.insert(email(k), format!("F{round}-{}", rng.below(3)));
        }
    }
    file
}

/// Syncs `file` (no delete guard) and checks the run against the state just
/// before it (`before`, from the previous run's result and the writers' log):
/// its counts and journal are exactly what it replaced, and the table when it
/// committed is the file. Returns its load_id and xid.
async fn synced_exactly(
    env: &TestEnv,
    file: &State,
    after_previous: &State,
    previous_xid: Option<u64>,
    round: u64,
) -> (String, u64, State) {
    let rows: Vec<(String, String)> = file.clone().into_iter().collect();
    env.write_csv(csv_owned(&rows));
    let cmd = env.command();
    let run = tokio::task::spawn_blocking(move || {
        let mut cmd = cmd;
        cmd.args(["sync", "--json"])
            .env("MAX_DELETE_RATIO", "1.0")
            .env("MAX_UPDATE_RATIO", "1.0");
        Run::from(cmd.output().unwrap())
    })
    .await
    .unwrap();
    run.assert_ended(0, "synced");
    let id = load_id(&run);
    let xid = write_xid(env, &id).await;
    let mut before = after_previous.clone();
    apply_log(env, &mut before, previous_xid, Some(xid)).await;
    let expected = expected_journal(&before, file);
    let filled = env
        .scalar(&format!(
            "SELECT count(*) FROM etl_info_schema.sync_runs WHERE load_id = '{id}' AND filled"
        ))
        .await
        == 1;
    if filled {
        assert!(
            before.is_empty(),
            "round {round}: a fill into a table that held {before:?}"
        );
    } else {
        let journal = journal_of(env, &id).await;
        let differ: Vec<_> = expected
            .keys()
            .chain(journal.keys())
            .filter(|e| expected.get(*e) != journal.get(*e))
            .map(|e| (e, expected.get(e), journal.get(e)))
            .collect();
        if !differ.is_empty() {
            let log: Vec<(String, String, Option<String>, Option<String>)> = sqlx::query_as(
                "SELECT xid::text, email, old_name, new_name FROM writer_log WHERE email = ANY($1) ORDER BY xid::text::bigint",
            )
            .bind(differ.iter().map(|d| d.0.clone()).collect::<Vec<_>>())
            .fetch_all(&env.pool)
            .await
            .unwrap();
            panic!("round {round}: journal = what the run replaced; (email, expected, journaled): {differ:?}; run xid {xid}, log {log:?}");
        }
    }
    let actions = |a: &str| expected.values().filter(|(x, _, _)| x == a).count();
    let count = |a: &str| u64::try_from(actions(a)).unwrap();
    assert_eq!(
        (run.n("inserted"), run.n("updated"), run.n("deleted")),
        (count("insert"), count("update"), count("delete")),
        "round {round}: counts: {run:?}"
    );
    assert_eq!(
        &at_commit(env, xid).await,
        file,
        "round {round}: the table at the run's commit is the file"
    );
    (id, xid, before)
}

#[tokio::test]
async fn concurrent_writers_never_make_a_synced_run_inexact() {
    let rounds = env_number("CONCURRENCY_ROUNDS", 4);
    let seed = seed_from_env("CONCURRENCY_SEED");
    println!("concurrency harness: CONCURRENCY_SEED={seed} CONCURRENCY_ROUNDS={rounds}");
    let mut rng = Rng(seed);
    let env = TestEnv::migrated().await;
    migrate(&env);
    env.exec(LOG).await;
    let stop = tokio_util::sync::CancellationToken::new();
    let writers: Vec<_> = (0..3)
        .map(|i| tokio::spawn(writer(env.url.clone(), seed ^ (i + 1), stop.clone())))
        .collect();
    let mut after_previous = State::new();
    let mut previous_xid = None;
    let mut runs = Vec::new();
    for round in 0..rounds {
        let file = random_file(&mut rng, round);
        let (id, xid, before) =
            synced_exactly(&env, &file, &after_previous, previous_xid, round).await;
        runs.push((id, before));
        after_previous = file;
        previous_xid = Some(xid);
    }
    stop.cancel();
    let mut committed = 0;
    for w in writers {
        committed += w.await.unwrap();
    }
    println!(
        "concurrency harness: {committed} writer transactions committed during {rounds} syncs"
    );
    assert!(committed > 0, "the writers wrote");
    // Quiet now: a last run, and revert gives back exactly the table before it.
    let file = random_file(&mut rng, rounds);
    let (_, _, before) = synced_exactly(&env, &file, &after_previous, previous_xid, rounds).await;
    let revert = env.run(&["revert", "--last", "--json", "--allow-mass-delete"], &[]);
    revert.assert_ended(0, "reverted");
    assert_eq!(
        env.followers().await.into_iter().collect::<State>(),
        before,
        "revert of the last run: the table just before it"
    );
    // Earlier runs: a revert either refuses (the writers changed what the run
    // left) or gives every follower the run changed its state just before it.
    for (id, before) in runs.iter().rev() {
        let touched = journal_of(&env, id).await;
        let revert = env.run(&["revert", "--last", "--json", "--allow-mass-delete"], &[]);
        if revert.outcome() == "refused" {
            assert!(
                revert.stderr.contains("changed outside the agent"),
                "{revert:?}"
            );
            break;
        }
        revert.assert_ended(0, "reverted");
        assert_eq!(revert.json()["undone"][0]["load_id"], id.as_str());
        let now: State = env.followers().await.into_iter().collect();
        for email in touched.keys() {
            assert_eq!(
                now.get(email),
                before.get(email),
                "{email} after reverting {id}"
            );
        }
    }
}
