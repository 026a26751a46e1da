//! Connection strings people already use (docs/configuration.md#libpq-variables): a Unix-socket
//! directory in keyword and URL form, and the libpq variables, against the real
//! server's socket.

use crate::helpers::*;

/// The directory holding the test server's Unix socket, if it has one.
fn socket_dir() -> Option<String> {
    let port = url::Url::parse(&server_url()).ok()?.port().unwrap_or(5432);
    ["/var/run/postgresql", "/run/postgresql", "/tmp"]
        .into_iter()
        .find(|dir| {
            std::path::Path::new(dir)
                .join(format!(".s.PGSQL.{port}"))
                .exists()
        })
        .map(str::to_owned)
}

macro_rules! socket_or_skip {
    () => {
        match socket_dir() {
            Some(dir) => dir,
            None => {
                eprintln!("SKIPPED: the test server has no Unix socket in /var/run/postgresql, /run/postgresql or /tmp");
                return;
            }
        }
    };
}

#[tokio::test]
async fn a_socket_directory_connects_in_keyword_and_url_form() {
    let dir = socket_or_skip!();
    let env = TestEnv::new().await;
    env.write_csv(csv(&[("ann@example.com", "Ann")]));
    let keyword = format!("host={dir} user=postgres dbname={}", env.name);
    let run = env.sync_with(&[], &[("DATABASE_URL", &keyword)]);
    run.assert_ended(0, "synced");
    env.write_csv(csv(&[("bob@example.com", "Bob")]));
    let url = format!("postgres:///{}?host={dir}&user=postgres", env.name);
    let run = env.sync_with(
        &["--allow-mass-delete"],
        &[("DSN", &url), ("DATABASE_URL", "")],
    );
    run.assert_ended(0, "synced");
    assert_eq!(env.followers().await, pairs(&[("bob@example.com", "Bob")]));
}

#[tokio::test]
async fn libpq_variables_are_honoured_without_database_url_and_the_password_never_shows() {
    let dir = socket_or_skip!();
    let env = TestEnv::new().await;
    env.write_csv(csv(&[("ann@example.com", "Ann")]));
    let secret = "pg-s3cret-never-shown";
    let mut cmd = env.command();
    cmd.env_remove("DATABASE_URL")
        .args(["sync", "--json"])
        .env("PGHOST", &dir)
        .env("PGUSER", "postgres")
        .env("PGDATABASE", &env.name)
        .env("PGPASSWORD", secret)
        .env("LOG_LEVEL", "debug");
    let run: Run = cmd.output().unwrap().into();
    run.assert_ended(0, "synced");
    assert_eq!(env.followers().await, pairs(&[("ann@example.com", "Ann")]));
    assert!(!format!("{run:?}").contains(secret), "{run:?}");
    // Unreachable through the variables: the error names the target, not the password.
    let mut cmd = env.command();
    cmd.env_remove("DATABASE_URL")
        .arg("migrate")
        .env("PGHOST", "127.0.0.1")
        .env("PGPORT", "1")
        .env("PGDATABASE", &env.name)
        .env("PGPASSWORD", secret);
    let run: Run = cmd.output().unwrap().into();
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stderr
            .contains(&format!("postgres://postgres@127.0.0.1:1/{}", env.name)),
        "{run:?}"
    );
    assert!(!format!("{run:?}").contains(secret), "{run:?}");
    // DATABASE_URL wins over the variables.
    let run = env.sync_with(&["--force"], &[("PGHOST", "/nonexistent"), ("PGPORT", "1")]);
    run.assert_ended(0, "synced");
}

/// `.env` is not loaded into the process environment, yet the libpq variables it
/// sets reach the driver as if it were (docs/configuration.md#libpq-variables); the process's own
/// values still win over it.
#[tokio::test]
async fn libpq_variables_in_dotenv_reach_the_driver_and_the_environment_wins() {
    let env = TestEnv::new().await;
    env.write_csv(csv(&[("ann@example.com", "Ann")]));
    std::fs::write(
        env.dir.path().join(".env"),
        "PGSSLMODE=verify-full\nPGSSLROOTCERT=/nonexistent/root.crt\n",
    )
    .unwrap();
    let run = env.run(&["migrate"], &[]);
    assert_eq!(run.code, 1, "sslmode from .env was not used: {run:?}");
    let run = env.sync_with(&[], &[("PGSSLMODE", "disable")]);
    run.assert_ended(0, "synced");
    std::fs::write(
        env.dir.path().join(".env"),
        "PGOPTIONS=-c default_transaction_read_only=on\n",
    )
    .unwrap();
    let run = env.sync_with(&["--force"], &[]);
    assert_ne!(run.code, 0, "options from .env were not used: {run:?}");
}
