//! Settle: no run reads a file that is still being written, whatever its trigger
//! (docs/operations.md#files-still-being-written). Before a run reads the file:
//!
//! - its size, mtime, ctime and inode must have been unchanged for `WATCH_DEBOUNCE`
//!   of time this process observed (a monotonic clock from the first sample of
//!   the current state, remembered across the runs of `serve`); the file's
//!   timestamps come from another clock (an NFS/SMB server's), so they may only
//!   lengthen the wait, never shorten it;
//! - a non-empty file whose last byte is not a line break is an unfinished line
//!   until it has been unchanged for `UNTERMINATED_FACTOR × WATCH_DEBOUNCE`, by
//!   the same observed clock;
//! - no writer may hold it open: with inotify, a file that got `IN_MODIFY` and no
//!   `IN_CLOSE_WRITE` since is being written ([`WriteTracker`]); on Linux, a
//!   process of ours (same PID namespace, same user or root) with the file open
//!   for writing in `/proc/*/fdinfo` is a writer.
//!
//! A run waits for that at most `TIMEOUT_FACTOR × WATCH_DEBOUNCE` (at least 1 s),
//! then is refused with the reason. After reading, the pipeline compares the
//! file's state with the settled one (and the bytes through the hash).

use notify::event::{AccessKind, AccessMode, ModifyKind};
use notify::{Event, EventKind};
use std::collections::HashMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use tokio_util::sync::CancellationToken;

/// An unfinished last line waits this many `WATCH_DEBOUNCE`s.
pub(crate) const UNTERMINATED_FACTOR: u32 = 4;
/// A run waits at most this many `WATCH_DEBOUNCE`s for the file to settle.
pub(crate) const TIMEOUT_FACTOR: u32 = 10;

/// What "the file did not change" compares.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct FileState {
    pub len: u64,
    pub modified: Option<SystemTime>,
    /// Status change time (seconds, nanoseconds): set by the kernel on every
    /// write, rename, truncate or chmod, never settable to the past.
    pub changed: (i64, i64),
    pub dev: u64,
    pub inode: u64,
}

impl FileState {
    /// The newest of mtime and ctime.
    fn last_change(&self) -> Option<SystemTime> {
        let (secs, nanos) = self.changed;
        let ctime = u64::try_from(secs).ok().map(|s| {
            SystemTime::UNIX_EPOCH
                + Duration::new(s, u32::try_from(nanos.clamp(0, 999_999_999)).unwrap_or(0))
        });
        match (self.modified, ctime) {
            (Some(m), Some(c)) => Some(m.max(c)),
            (m, c) => m.or(c),
        }
    }
}

/// The file's state, `None` when it does not exist (or cannot be stat'ed).
pub(crate) fn file_state(path: &Path) -> Option<FileState> {
    let meta = std::fs::metadata(path).ok()?;
    #[cfg(unix)]
    let (changed, dev, inode) = {
        use std::os::unix::fs::MetadataExt;
        ((meta.ctime(), meta.ctime_nsec()), meta.dev(), meta.ino())
    };
    #[cfg(not(unix))]
    let (changed, dev, inode) = ((0, 0), 0, 0);
    Some(FileState {
        len: meta.len(),
        modified: meta.modified().ok(),
        changed,
        dev,
        inode,
    })
}

/// Whether the file ends with a line break (an empty file counts as ended): its
/// last byte, or its last two bytes as UTF-16 LE writes one (`0A 00`). A `.gz` or
/// `.zst` file counts as ended: its last bytes are compressed data, and a cut
/// archive fails its own end-of-stream check when read.
fn ends_with_line_break(path: &Path, len: u64) -> bool {
    use std::io::{Read, Seek, SeekFrom};
    if len == 0 || super::read::is_compressed(path) {
        return true;
    }
    let tail = len.min(2);
    let mut last = [0u8; 2];
    // `len` is at least 1 here, `tail` 1 or 2.
    let last = &mut last[..if tail == 1 { 1 } else { 2 }];
    // Never blocks: a FIFO swapped in is refused, not opened for reading.
    super::read::open_regular(path)
        .and_then(|mut f| {
            f.seek(SeekFrom::Start(len - tail))?;
            f.read_exact(last)
        })
        .map(|()| matches!(last, [.., b'\n' | b'\r'] | [b'\n' | b'\r', 0]))
        .unwrap_or(false)
}

/// What inotify tells about writers: which files got `IN_MODIFY` and have not
/// had `IN_CLOSE_WRITE` since, and what state this process first saw each file
/// in, and when. Shared by the watcher (which feeds it) and the runs of `serve`
/// (which wait on it). Cheap to clone.
///
/// Each file is tracked on its own, by name (a watch follows one directory,
/// docs/mirrors.md#serve): a glob's parts share one tracker, and one part's
/// close neither ends another's open write nor does one part's state replace
/// another's remembered quiet period.
#[derive(Clone, Debug, Default)]
pub struct WriteTracker(
    Arc<Mutex<HashMap<OsString, Instant>>>,
    Arc<Mutex<HashMap<PathBuf, Observed>>>,
);

/// A file state and when this process first saw it (monotonic clock).
#[derive(Clone, Debug)]
struct Observed {
    state: FileState,
    since: Instant,
}

impl WriteTracker {
    /// Feeds one event naming files of the watch (or a queue overflow).
    pub fn observe(&self, event: &Event) {
        let mut open = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let names = event.paths.iter().filter_map(|p| p.file_name());
        match event.kind {
            _ if event.need_rescan() => {
                // Events were lost, maybe closes among them: forget what we
                // knew (the stat rules and /proc still apply).
                open.clear();
            }
            EventKind::Modify(ModifyKind::Data(_)) => {
                let now = Instant::now();
                for name in names {
                    open.entry(name.to_owned()).or_insert(now);
                }
            }
            // Closed after writing, a new file renamed into place, or removed.
            EventKind::Access(AccessKind::Close(AccessMode::Write))
            | EventKind::Modify(ModifyKind::Name(_))
            | EventKind::Remove(_) => {
                for name in names {
                    open.remove(name);
                }
            }
            _ => {}
        }
    }

    /// Since when `path` has been open for writing, if it is.
    pub fn writing_since(&self, path: &Path) -> Option<Instant> {
        let open = self.0.lock().unwrap_or_else(|e| e.into_inner());
        path.file_name().and_then(|name| open.get(name).copied())
    }

    /// The file open for writing the longest, and since when, if any is.
    pub fn writing(&self) -> Option<(OsString, Instant)> {
        let open = self.0.lock().unwrap_or_else(|e| e.into_inner());
        open.iter()
            .min_by_key(|(_, since)| **since)
            .map(|(name, since)| (name.clone(), *since))
    }

    /// When this process first saw `path` in `state`, if it remembers.
    fn seen_since(&self, path: &Path, state: &FileState) -> Option<Instant> {
        let seen = self.1.lock().unwrap_or_else(|e| e.into_inner());
        seen.get(path)
            .filter(|o| o.state == *state)
            .map(|o| o.since)
    }

    /// Remembers that `path` has been in `state` since `since`; forgets the
    /// files that are gone (a glob's parts come and go).
    fn remember(&self, path: &Path, state: &FileState, since: Instant) {
        let mut seen = self.1.lock().unwrap_or_else(|e| e.into_inner());
        seen.retain(|p, _| p == path || file_state(p).is_some());
        seen.insert(
            path.to_owned(),
            Observed {
                state: state.clone(),
                since,
            },
        );
    }
}

/// The settle rules, derived from `WATCH_DEBOUNCE`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Rules {
    /// How long the file must stay unchanged.
    pub quiet: Duration,
    /// How long a file whose last line has no line break must stay unchanged.
    pub unterminated: Duration,
    /// How long a run waits before it is refused.
    pub timeout: Duration,
}

impl Rules {
    pub(crate) fn from_debounce(debounce: Duration) -> Self {
        Self {
            quiet: debounce,
            unterminated: debounce * UNTERMINATED_FACTOR,
            timeout: (debounce * TIMEOUT_FACTOR).max(Duration::from_secs(1)),
        }
    }

    /// Why a file unchanged for `quiet_for`, ending in a line break or not, is
    /// not settled yet (`None`: settled as far as its state tells).
    fn unsettled(&self, quiet_for: Duration, terminated: bool) -> Option<String> {
        if quiet_for < self.quiet {
            return Some(format!(
                "the agent has seen it unchanged for {:.1}s, less than WATCH_DEBOUNCE={:.1}s",
                quiet_for.as_secs_f64(),
                self.quiet.as_secs_f64()
            ));
        }
        if !terminated && quiet_for < self.unterminated {
            return Some(format!(
                "its last line has no line break and the agent has seen it unchanged for {:.1}s (an unfinished line must stay unchanged for {UNTERMINATED_FACTOR} × WATCH_DEBOUNCE = {:.1}s)",
                quiet_for.as_secs_f64(),
                self.unterminated.as_secs_f64()
            ));
        }
        None
    }
}

/// The file did not settle within the rules' timeout.
#[derive(Debug)]
pub(crate) struct Unsettled {
    pub why: String,
    pub waited: Duration,
}

pub(crate) enum Settled {
    /// The file's state when it was found settled.
    File(FileState),
    /// There is no file (reading it reports that).
    Missing,
}

/// Waits until `path` has settled (see the module's rules), at most
/// `rules.timeout`. `Err(None)` when cancelled.
#[tracing::instrument(skip_all, fields(file = %path.display()))]
pub(crate) async fn wait(
    path: &Path,
    rules: Rules,
    writes: &WriteTracker,
    cancel: &CancellationToken,
) -> Result<Settled, Option<Unsettled>> {
    let started = Instant::now();
    let sample = (rules.quiet / 4).clamp(Duration::from_millis(10), Duration::from_millis(250));
    let mut last: Option<FileState> = None;
    let mut since = started;
    let mut logged = false;
    loop {
        let Some(state) = file_state(path) else {
            return Ok(Settled::Missing);
        };
        if last.as_ref() != Some(&state) {
            since = writes.seen_since(path, &state).unwrap_or_else(Instant::now);
            writes.remember(path, &state, since);
        }
        // Unchanged for as long as this process has seen it so; the file's
        // change time (another machine's clock, maybe) may only shorten that,
        // i.e. lengthen the wait: a change time in the future tells nothing.
        let observed = since.elapsed();
        let quiet_for = state
            .last_change()
            .and_then(|t| SystemTime::now().duration_since(t).ok())
            .map_or(observed, |by_clock| observed.min(by_clock));
        let why = rules
            .unsettled(quiet_for, ends_with_line_break(path, state.len))
            .or_else(|| {
                writes.writing_since(path).map(|t| {
                    format!(
                        "it has been open for writing for {:.1}s (inotify: written, not closed yet)",
                        t.elapsed().as_secs_f64()
                    )
                })
            })
            .or_else(|| open_for_writing(path, &state));
        let Some(why) = why else {
            if logged {
                tracing::info!(
                    waited_s = started.elapsed().as_secs_f64(),
                    "the CSV file has settled"
                );
            }
            return Ok(Settled::File(state));
        };
        let waited = started.elapsed();
        if waited >= rules.timeout {
            return Err(Some(Unsettled { why, waited }));
        }
        if !logged {
            tracing::info!(reason = %why, timeout_s = rules.timeout.as_secs_f64(), "the CSV file is still being written; waiting");
            logged = true;
        }
        last = Some(state);
        tokio::select! {
            _ = cancel.cancelled() => return Err(None),
            _ = tokio::time::sleep(sample) => {}
        }
    }
}

/// Waits until each of `paths` has settled, all at once (a glob's parts
/// settle together, not one after another), each on its own evidence in the
/// shared `writes` (docs/mirrors.md#serve): each path with its outcome, in
/// order.
pub(crate) async fn wait_all<'a>(
    paths: &'a [PathBuf],
    rules: Rules,
    writes: &WriteTracker,
    cancel: &CancellationToken,
) -> Vec<(&'a PathBuf, Result<Settled, Option<Unsettled>>)> {
    let settling = paths
        .iter()
        .map(|path| async move { (path, wait(path, rules, writes, cancel).await) });
    futures::future::join_all(settling).await
}

/// A process (visible in our `/proc`) holding the file open for writing.
#[cfg(target_os = "linux")]
fn open_for_writing(path: &Path, state: &FileState) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    // `/proc/*/fd` links name the file as the kernel knows it (symlinks resolved).
    let real = std::fs::canonicalize(path).ok()?;
    let name = real.file_name()?;
    for proc_entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = proc_entry
            .file_name()
            .to_str()
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        // Other users' processes are not readable: skipped.
        let Ok(fds) = std::fs::read_dir(proc_entry.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            let same_name = std::fs::read_link(fd.path())
                .map(|target| target.file_name() == Some(name))
                .unwrap_or(false);
            let same_file = same_name
                && std::fs::metadata(fd.path())
                    .map(|m| (m.dev(), m.ino()) == (state.dev, state.inode))
                    .unwrap_or(false);
            if !same_file {
                continue;
            }
            let fdinfo = proc_entry.path().join("fdinfo").join(fd.file_name());
            if writable(&std::fs::read_to_string(fdinfo).unwrap_or_default()) {
                let comm =
                    std::fs::read_to_string(proc_entry.path().join("comm")).unwrap_or_default();
                return Some(format!(
                    "process {pid} ({}) holds it open for writing",
                    comm.trim()
                ));
            }
        }
    }
    None
}

#[cfg(not(target_os = "linux"))]
fn open_for_writing(_path: &Path, _state: &FileState) -> Option<String> {
    None
}

/// Whether an fdinfo's `flags:` (octal) open the file for writing.
fn writable(fdinfo: &str) -> bool {
    fdinfo
        .lines()
        .find_map(|l| l.strip_prefix("flags:"))
        .and_then(|f| u32::from_str_radix(f.trim(), 8).ok())
        .is_some_and(|flags| flags & 0o3 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use notify::event::{DataChange, Flag, MetadataKind, RenameMode};
    use std::io::Write;

    fn event(kind: EventKind) -> Event {
        Event::new(kind).add_path("/t/followers.csv".into())
    }

    #[test]
    fn a_modified_file_is_being_written_until_closed_renamed_or_removed() {
        let t = WriteTracker::default();
        t.observe(&event(EventKind::Modify(ModifyKind::Metadata(
            MetadataKind::Any,
        ))));
        let file = Path::new("/t/followers.csv");
        assert!(t.writing_since(file).is_none(), "a touch is no write");
        for end in [
            EventKind::Access(AccessKind::Close(AccessMode::Write)),
            EventKind::Modify(ModifyKind::Name(RenameMode::To)),
            EventKind::Remove(notify::event::RemoveKind::File),
            EventKind::Other,
        ] {
            t.observe(&event(EventKind::Modify(ModifyKind::Data(DataChange::Any))));
            let since = t.writing_since(file).expect("writing");
            t.observe(&event(EventKind::Access(AccessKind::Read)));
            t.observe(&event(EventKind::Access(AccessKind::Close(
                AccessMode::Read,
            ))));
            t.observe(&event(EventKind::Modify(ModifyKind::Data(DataChange::Any))));
            assert_eq!(t.writing_since(file), Some(since), "reads change nothing");
            let mut ending = event(end);
            if end == EventKind::Other {
                ending = Event::new(EventKind::Other).set_flag(Flag::Rescan);
            }
            t.observe(&ending);
            assert!(t.writing_since(file).is_none(), "{end:?} ends the write");
        }
    }

    #[test]
    fn line_breaks_end_utf8_utf16_and_archives_count_as_ended() {
        let dir = tempfile::tempdir().unwrap();
        for (name, bytes, ended) in [
            ("a.csv", &b"a,b\n"[..], true),
            ("b.csv", b"a,b\r", true),
            ("c.csv", b"a,b", false),
            ("d.csv", b"\n", true),
            ("e.csv", b"a\0,\0b\0\n\0", true),
            ("f.csv", b"a\0,\0b\0", false),
            ("g.csv.gz", b"\x1f\x8b\x08", true),
            ("h.csv.zst", b"\x28\xb5", true),
        ] {
            let path = dir.path().join(name);
            std::fs::write(&path, bytes).unwrap();
            assert_eq!(
                ends_with_line_break(&path, crate::convert::len(bytes.len())),
                ended,
                "{name}"
            );
        }
    }

    #[test]
    fn an_unfinished_last_line_waits_longer() {
        let rules = Rules::from_debounce(Duration::from_secs(2));
        assert_eq!(rules.timeout, Duration::from_secs(20));
        let s = Duration::from_secs;
        assert!(rules
            .unsettled(s(1), true)
            .unwrap()
            .contains("WATCH_DEBOUNCE"));
        assert!(rules.unsettled(s(2), true).is_none());
        assert!(rules
            .unsettled(s(2), false)
            .unwrap()
            .contains("no line break"));
        assert!(rules.unsettled(s(8), false).is_none());
        assert_eq!(
            Rules::from_debounce(Duration::ZERO).timeout,
            Duration::from_secs(1)
        );
    }

    #[test]
    fn fdinfo_flags_tell_writers() {
        assert!(!writable("pos:\t0\nflags:\t0100000\nmnt_id:\t1\n"));
        assert!(writable("pos:\t0\nflags:\t0100001\n"));
        assert!(writable("pos:\t0\nflags:\t02100002\n"));
        assert!(!writable("garbage"));
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_process_holding_the_file_open_for_writing_is_seen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("followers.csv");
        std::fs::write(&path, "email\n").unwrap();
        let state = file_state(&path).unwrap();
        let reader = std::fs::File::open(&path).unwrap();
        assert_eq!(open_for_writing(&path, &state), None);
        let mut writer = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        writer.write_all(b"a@b.c\n").unwrap();
        let found = open_for_writing(&path, &state).expect("our own writer");
        assert!(found.contains(&std::process::id().to_string()), "{found}");
        // Also through a symlink to it.
        let link = dir.path().join("link.csv");
        std::os::unix::fs::symlink(&path, &link).unwrap();
        assert!(open_for_writing(&link, &state).is_some());
        drop(writer);
        assert_eq!(open_for_writing(&path, &state), None);
        drop(reader);
    }

    #[tokio::test]
    async fn old_timestamps_never_shorten_the_observed_quiet_period_which_serve_remembers() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("followers.csv");
        std::fs::write(&path, "email\na@b.c\n").unwrap();
        // Timestamps a day old (ctime stays now: the rule must not need it).
        let day = Duration::from_secs(86_400);
        std::fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(SystemTime::now() - day)
            .unwrap();
        let rules = Rules::from_debounce(Duration::from_millis(300));
        let (writes, cancel) = (WriteTracker::default(), CancellationToken::new());
        let started = Instant::now();
        assert!(matches!(
            wait(&path, rules, &writes, &cancel).await,
            Ok(Settled::File(_))
        ));
        assert!(
            started.elapsed() >= rules.quiet,
            "settled on the file's clock"
        );
        // The next run of the same process knows the file has been quiet since.
        let again = Instant::now();
        assert!(matches!(
            wait(&path, rules, &writes, &cancel).await,
            Ok(Settled::File(_))
        ));
        assert!(again.elapsed() < rules.quiet, "{:?}", again.elapsed());
        // Another process (a fresh tracker) observes for itself.
        let fresh = Instant::now();
        let _ = wait(&path, rules, &WriteTracker::default(), &cancel).await;
        assert!(fresh.elapsed() >= rules.quiet);
    }

    /// A glob's parts share the watch's tracker: one part's close must not end
    /// another's open write, and each part settles on its own evidence.
    #[tokio::test]
    async fn a_glob_part_open_for_writing_stays_so_when_another_part_is_closed() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("part-1.csv"), dir.path().join("part-2.csv"));
        std::fs::write(&a, "id\n1\n").unwrap();
        std::fs::write(&b, "id\n2\n").unwrap();
        let at = |path: &Path, kind| Event::new(kind).add_path(path.to_owned());
        let rules = Rules::from_debounce(Duration::from_millis(20));
        let (writes, cancel) = (WriteTracker::default(), CancellationToken::new());
        writes.observe(&at(
            &a,
            EventKind::Modify(ModifyKind::Data(DataChange::Any)),
        ));
        writes.observe(&at(
            &b,
            EventKind::Modify(ModifyKind::Data(DataChange::Any)),
        ));
        writes.observe(&at(
            &b,
            EventKind::Access(AccessKind::Close(AccessMode::Write)),
        ));
        let refused = wait(&a, rules, &writes, &cancel).await.err().flatten();
        let refused = refused.expect("part-1 is still open for writing");
        assert!(refused.why.contains("inotify"), "{}", refused.why);
        assert!(
            matches!(
                wait(&b, rules, &writes, &cancel).await,
                Ok(Settled::File(_))
            ),
            "part-2 was closed: part-1's open write must not hold it"
        );
        // A run's settle of all the parts: the same evidence, part by part.
        let parts = [a.clone(), b.clone()];
        let all = wait_all(&parts, rules, &writes, &cancel).await;
        assert!(
            matches!(&all[0], (p, Err(Some(u))) if **p == a && u.why.contains("inotify")),
            "{:?}",
            all[0].1.as_ref().err()
        );
        assert!(matches!(all[1], (_, Ok(Settled::File(_)))));
        // Closed: it settles.
        writes.observe(&at(
            &a,
            EventKind::Access(AccessKind::Close(AccessMode::Write)),
        ));
        let all = wait_all(&parts, rules, &writes, &cancel).await;
        assert!(all.iter().all(|(_, r)| matches!(r, Ok(Settled::File(_)))));
        // Each part's quiet period is remembered for the next run, not only the last one's.
        for part in [&a, &b] {
            let state = file_state(part).unwrap();
            assert!(
                writes.seen_since(part, &state).is_some(),
                "{}",
                part.display()
            );
        }
        // A part that is gone is forgotten.
        std::fs::remove_file(&b).unwrap();
        let _ = wait(&a, rules, &writes, &cancel).await;
        writes.remember(&a, &file_state(&a).unwrap(), Instant::now());
        assert_eq!(writes.1.lock().unwrap().len(), 1);
    }

    #[tokio::test]
    async fn a_file_written_long_ago_settles_at_once_and_a_fresh_one_after_the_quiet_period() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("followers.csv");
        std::fs::write(&path, "email\na@b.c").unwrap();
        let rules = Rules::from_debounce(Duration::from_millis(100));
        let (writes, cancel) = (WriteTracker::default(), CancellationToken::new());
        let started = Instant::now();
        assert!(matches!(
            wait(&path, rules, &writes, &cancel).await,
            Ok(Settled::File(_))
        ));
        // The unfinished last line needed 4 × 100 ms of quiet.
        assert!(started.elapsed() >= rules.unterminated - Duration::from_millis(20));
        assert!(matches!(
            wait(&dir.path().join("none.csv"), rules, &writes, &cancel).await,
            Ok(Settled::Missing)
        ));
        writes.observe(&event(EventKind::Modify(ModifyKind::Data(DataChange::Any))));
        let refused = wait(&path, rules, &writes, &cancel).await.err().flatten();
        let refused = refused.expect("refused after the timeout");
        assert!(refused.why.contains("inotify"), "{}", refused.why);
        assert!(refused.waited >= rules.timeout);
    }
}
