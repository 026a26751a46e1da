//! A private PostgreSQL server for tests that stop and restart the database: its
//! own data directory (initdb in a temporary directory), its own free port and
//! socket directory, trust auth. The shared server on 5432 is never touched.
//! Stopped (immediately) and removed when dropped.

use crate::serve::free_port;
use std::path::{Path, PathBuf};
use std::process::Command;

pub(crate) struct PrivatePg {
    dir: tempfile::TempDir,
    bin: PathBuf,
    pub port: u16,
}

/// The newest `/usr/lib/postgresql/*/bin` holding `initdb`, or `PG_BIN`.
fn pg_bin() -> PathBuf {
    if let Ok(bin) = std::env::var("PG_BIN") {
        return bin.into();
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    found.sort();
    found
        .pop()
        .map(|(_, bin)| bin)
        .expect("PostgreSQL server binaries under /usr/lib/postgresql/*/bin (or set PG_BIN)")
}

fn is_root() -> bool {
    std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false)
}

impl PrivatePg {
    /// Creates the cluster (initdb) without starting it.
    pub(crate) fn init() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let pg = Self {
            bin: pg_bin(),
            port: free_port(),
            dir,
        };
        std::fs::create_dir(pg.socket_dir()).unwrap();
        if is_root() {
            // initdb refuses to run as root: the cluster belongs to `postgres`.
            let owner = Command::new("id")
                .args(["-u", "postgres"])
                .output()
                .expect("id -u postgres");
            let uid: u32 = String::from_utf8_lossy(&owner.stdout)
                .trim()
                .parse()
                .expect("a postgres user to own the private cluster");
            for path in [pg.dir.path(), &pg.socket_dir()] {
                std::os::unix::fs::chown(path, Some(uid), None).unwrap();
            }
        }
        let data = pg.data_dir();
        pg.pg(
            "initdb",
            &["-D", path(&data), "-U", "postgres", "--auth=trust", "-N"],
        );
        pg
    }

    /// Creates and starts a cluster.
    pub(crate) fn start_new() -> Self {
        let pg = Self::init();
        pg.start();
        pg
    }

    pub(crate) fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn socket_dir(&self) -> PathBuf {
        self.dir.path().join("socket")
    }

    /// A server program, run as `postgres` when we are root.
    fn command(&self, program: &str) -> Command {
        let exe = self.bin.join(program);
        if is_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(exe);
            c
        } else {
            Command::new(exe)
        }
    }

    /// Runs a server program; panics on failure.
    fn pg(&self, program: &str, args: &[&str]) {
        let out = self
            .command(program)
            .args(args)
            .output()
            .expect("run a PostgreSQL program");
        assert!(
            out.status.success(),
            "{program} {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Starts the server and waits until it accepts connections.
    pub(crate) fn start(&self) {
        self.start_with("-c max_connections=100");
    }

    /// Starts the server with extra `postgres` options (`-c name=value …`).
    pub(crate) fn start_with(&self, extra: &str) {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off {extra}",
            self.port,
            self.socket_dir().display()
        );
        let (data, log) = (self.data_dir(), self.dir.path().join("server.log"));
        self.pg(
            "pg_ctl",
            &[
                "-D",
                path(&data),
                "-l",
                path(&log),
                "-w",
                "-o",
                &options,
                "start",
            ],
        );
    }

    /// Stops the server: `fast` (a clean restart, as an operator does) or
    /// `immediate` (like a crash).
    pub(crate) fn stop(&self, mode: &str) {
        let data = self.data_dir();
        self.pg("pg_ctl", &["-D", path(&data), "-m", mode, "-w", "stop"]);
    }
}

fn path(p: &Path) -> &str {
    p.to_str().expect("UTF-8 temporary path")
}

impl Drop for PrivatePg {
    fn drop(&mut self) {
        let data = self.data_dir();
        if data.join("postmaster.pid").exists() {
            let _ = self
                .command("pg_ctl")
                .args(["-D", path(&data), "-m", "immediate", "-w", "stop"])
                .output();
        }
    }
}
