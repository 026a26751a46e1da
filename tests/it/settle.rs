//! Settling trusts no foreign clock (docs/operations.md#files-still-being-written;
//! issue 16 §4): only time the agent itself observed counts toward the quiet
//! period and the unfinished-last-line rule. The agent runs with its realtime
//! clock an hour ahead (an `LD_PRELOAD` shim), as against a file server whose
//! clock is behind: the file's timestamps look an hour old at first sight.

use crate::helpers::*;
use std::io::Write;
use std::process::Stdio;
use std::time::Duration;

const SHIM: &str = r#"
#define _GNU_SOURCE
#include <dlfcn.h>
#include <time.h>
int clock_gettime(clockid_t id, struct timespec *ts) {
    static int (*real)(clockid_t, struct timespec *);
    if (!real) real = (int (*)(clockid_t, struct timespec *))dlsym(RTLD_NEXT, "clock_gettime");
    int r = real(id, ts);
    if (r == 0 && (id == CLOCK_REALTIME || id == CLOCK_REALTIME_COARSE)) ts->tv_sec += 3600;
    return r;
}
"#;

/// Builds the shim into `dir`; `None` without a C compiler.
fn clock_shim(dir: &std::path::Path) -> Option<std::path::PathBuf> {
    let src = dir.join("clock_ahead.c");
    let lib = dir.join("clock_ahead.so");
    std::fs::write(&src, SHIM).unwrap();
    let built = std::process::Command::new("cc")
        .args(["-shared", "-fPIC", "-o"])
        .arg(&lib)
        .arg(&src)
        .arg("-ldl")
        .status()
        .ok()?;
    built.success().then_some(lib)
}

#[tokio::test]
async fn a_half_written_file_with_old_looking_timestamps_is_waited_for_not_synced() {
    let env = TestEnv::migrated().await;
    let shim_dir = tempfile::tempdir().unwrap();
    let Some(shim) = clock_shim(shim_dir.path()) else {
        panic!("this test needs a C compiler (cc) for its clock shim");
    };
    let ten: Vec<(String, String)> = (0..10)
        .map(|i| (format!("f{i}@x.io"), format!("Follower Number{i}")))
        .collect();
    let whole = csv_owned(&ten);
    env.write_csv(&whole);
    env.synced(&[]);
    // The writer (on another machine, invisible to inotify and /proc) has
    // written six rows and half of the seventh, and pauses.
    let cut = whole.find("f6@x.io,Follower Num").unwrap() + "f6@x.io,Follower Num".len();
    let path = env.write_csv(&whole[..cut]);
    let mut cmd = env.command();
    cmd.args(["sync", "--json"])
        .env("LD_PRELOAD", &shim)
        .env("WATCH_DEBOUNCE", "400ms")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = cmd.spawn().unwrap();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    // ... and completes the file.
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap();
    file.write_all(&whole.as_bytes()[cut..]).unwrap();
    drop(file);
    let run: Run = child.wait_with_output().unwrap().into();
    assert!(!run.stderr.contains("panicked"), "{run:?}");
    // Synced whole (nothing changed), or refused as still being written: never
    // the half file.
    assert_eq!(
        env.followers().await,
        {
            let mut f = ten.clone();
            f.sort();
            f
        },
        "{run:?}"
    );
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!((run.n("deleted"), run.n("updated")), (0, 0), "{run:?}");
}
