//! Database faults not covered by `faults.rs` (README, "Faults"; issue 16 §7):
//! a server out of connections, a server or network that accepts connections
//! and never answers, and a database whose disk fills during the merge. Each
//! run fails within a bounded time, clearly, and changes nothing.

use crate::helpers::*;
use crate::private_pg::PrivatePg;
use std::time::{Duration, Instant};

#[tokio::test]
async fn a_server_out_of_connections_fails_at_once_naming_max_connections() {
    let pg = PrivatePg::init();
    pg.start_with("-c max_connections=3 -c superuser_reserved_connections=0");
    let env = TestEnv::on_existing(&pg.url());
    env.write_csv(csv(&[("ann@x.io", "Ann")]));
    // Every slot taken by other clients.
    let mut others = Vec::new();
    for _ in 0..3 {
        others.push(
            sqlx::postgres::PgConnection::connect(&pg.url())
                .await
                .expect("a free slot"),
        );
    }
    let started = Instant::now();
    let run = env.sync();
    assert!(started.elapsed() < Duration::from_secs(10), "{run:?}");
    run.expect(1, "failed");
    assert!(
        run.stderr.contains("max_connections") && run.stderr.contains("too many clients"),
        "{run:?}"
    );
    drop(others);
}

use sqlx::Connection;

/// A TCP listener that accepts connections and never answers (a hung server,
/// or a network path that stops forwarding).
async fn black_hole() -> (u16, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    (port, task)
}

#[tokio::test]
async fn a_server_that_never_answers_fails_every_command_within_db_connect_timeout() {
    let env = TestEnv::new().await;
    env.write_csv(csv(&[("ann@x.io", "Ann")]));
    let (port, task) = black_hole().await;
    let url = format!("postgres://postgres@127.0.0.1:{port}/postgres?sslmode=disable");
    let vars = [("DATABASE_URL", url.as_str()), ("DB_CONNECT_TIMEOUT", "1s")];
    for args in [
        &["sync", "--json"][..],
        &["status"],
        &["revert", "--last", "--dry-run"],
    ] {
        let started = Instant::now();
        let run = env.run(args, &vars);
        let took = started.elapsed();
        assert_eq!(run.code, 1, "{args:?}: {run:?}");
        assert!(
            run.stderr.contains("DB_CONNECT_TIMEOUT=1s"),
            "{args:?}: {run:?}"
        );
        assert!(took < Duration::from_secs(5), "{args:?} took {took:?}");
    }
    task.abort();
}
