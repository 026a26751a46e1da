//! Watches the CSV file's directory (non-recursively, inotify or polling) and asks
//! for a run once the file has settled: no event for `WATCH_DEBOUNCE`, and its
//! size, mtime and inode unchanged over that same period. Only events naming the
//! CSV file count, so temporary files (`.x.tmp`, `*.swp`, `*~`) are ignored until
//! they are renamed into place. A glob mirror's watch (docs/mirrors.md#serve)
//! follows every file its glob matches in the glob's directory, their state
//! taken together; open writes are tracked per file, and any part open for
//! writing holds the run. A deleted file is logged and ignored: it never
//! starts a run, so it never purges anything. With `READY_MARKER`, events naming
//! the marker count too, so its arrival starts the run the file was waiting for.
//!
//! The debounce is a small state machine here rather than notify-debouncer-full:
//! the stability check needs the file's state at the last event, which that
//! crate's batched output does not give. Polling (`WATCH_POLL`) stats the one file
//! itself instead of using notify's `PollWatcher`, which compares mtimes in whole
//! seconds only (notify 8.2) and so misses a second write within the same second.

use crate::domain::Trigger;
use crate::pipeline::settle::{file_state, FileState, WriteTracker};
use crate::runner::RunRequests;
use notify::event::{AccessKind, AccessMode, ModifyKind, RemoveKind};
use notify::{Config, Event, EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

#[derive(Debug, thiserror::Error)]
#[error("cannot watch {dir} (set WATCH_POLL=true on bind mounts and network filesystems, or WATCH=false)")]
pub(crate) struct WatchError {
    dir: PathBuf,
    #[source]
    source: notify::Error,
}

/// What a watch follows: one file (and its ready marker), or a configured
/// mirror's glob (every file it matches, and their markers; docs/mirrors.md#serve).
#[derive(Clone, Debug)]
pub(crate) enum Watched {
    File(PathBuf),
    Glob {
        spec: Box<crate::mirror::MirrorSpec>,
        tables_dir: PathBuf,
        /// The glob's directory under `tables_dir`.
        dir: PathBuf,
    },
}

/// The state of what a watch follows: each file with its state, in order.
type WatchedState = Vec<(PathBuf, FileState)>;

impl Watched {
    fn dir(&self) -> PathBuf {
        match self {
            Self::File(file) => file.parent().unwrap_or(Path::new(".")).to_path_buf(),
            Self::Glob { dir, .. } => dir.clone(),
        }
    }

    /// The state now; `None` when there is nothing (the file is missing, or
    /// the glob matches none).
    fn state(&self) -> Option<WatchedState> {
        let files = match self {
            Self::File(file) => vec![file.clone()],
            Self::Glob {
                spec, tables_dir, ..
            } => crate::mirror::run::source_files(spec, tables_dir).ok()?,
        };
        let states: WatchedState = files
            .into_iter()
            .filter_map(|f| file_state(&f).map(|s| (f, s)))
            .collect();
        (!states.is_empty()).then_some(states)
    }

    /// What to say in the log of it.
    fn describe(&self) -> String {
        match self {
            Self::File(file) => file.display().to_string(),
            Self::Glob { spec, dir, .. } => format!("{} ({})", dir.display(), spec.source),
        }
    }
}

/// Whether an event may have changed the content of a file named in `names`.
/// Reads (including the agent's own) are not changes; a queue overflow (events
/// lost) may hide one.
fn is_change(event: &Event, names: &Names) -> bool {
    if event.need_rescan() {
        return true;
    }
    let content_event = match event.kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) | EventKind::Other => false,
        EventKind::Any | EventKind::Create(_) | EventKind::Modify(_) | EventKind::Remove(_) => true,
    };
    content_event
        && event
            .paths
            .iter()
            .any(|p| p.file_name().is_some_and(|n| names.concerns(n, true)))
}

/// The names a watch's events must carry: a file's name and its marker's, or
/// a glob's (a name the glob matches, or such a name with the marker).
#[derive(Clone, Debug)]
enum Names {
    Files(Vec<OsString>),
    Glob {
        pattern: glob::Pattern,
        marker: Option<String>,
    },
}

impl Names {
    /// Whether `name` is one of them; `markers`: a ready marker counts too.
    fn concerns(&self, name: &std::ffi::OsStr, markers: bool) -> bool {
        match self {
            Self::Files(names) if markers => names.iter().any(|x| x == name),
            Self::Files(names) => names.first().is_some_and(|x| x == name),
            Self::Glob { pattern, marker } => {
                let name = name.to_string_lossy();
                let base = match marker.as_deref().and_then(|m| name.strip_suffix(m)) {
                    Some(base) if markers => base,
                    Some(_) => return false,
                    None => &name,
                };
                // As the glob's files are listed: a leading dot only where the pattern has one.
                let options = glob::MatchOptions {
                    require_literal_leading_dot: true,
                    ..glob::MatchOptions::new()
                };
                pattern.matches_with(base, options)
            }
        }
    }
}

/// What produces the events: notify's watcher, or our own stat poller.
enum Source {
    Notify(#[allow(dead_code)] RecommendedWatcher),
    Poll(tokio::task::JoinHandle<()>),
}

impl Drop for Source {
    fn drop(&mut self) {
        if let Source::Poll(task) = self {
            task.abort();
        }
    }
}

/// Stats `files` every `interval` (a glob's: the files it matches now) and
/// reports each change of a file's state as an event.
async fn poll_files(
    files: Vec<PathBuf>,
    glob: Option<Watched>,
    interval: Duration,
    tx: mpsc::UnboundedSender<notify::Result<Event>>,
) {
    let listed = |files: &[PathBuf]| -> Vec<PathBuf> {
        let mut all = files.to_vec();
        if let Some(state) = glob.as_ref().and_then(Watched::state) {
            all.extend(state.into_iter().map(|(f, _)| f));
        }
        all
    };
    let mut known: std::collections::BTreeMap<PathBuf, Option<FileState>> = listed(&files)
        .into_iter()
        .map(|f| {
            let state = file_state(&f);
            (f, state)
        })
        .collect();
    let mut tick = tokio::time::interval(interval);
    loop {
        tick.tick().await;
        for file in listed(&files) {
            known.entry(file).or_insert(None);
        }
        for (file, last) in known.iter_mut() {
            let now = file_state(file);
            if now != *last {
                let kind = match now {
                    Some(_) => EventKind::Modify(ModifyKind::Any),
                    None => EventKind::Remove(RemoveKind::File),
                };
                if tx
                    .send(Ok(Event::new(kind).add_path(file.to_path_buf())))
                    .is_err()
                {
                    return;
                }
                *last = now;
            }
        }
    }
}

/// A running watcher; dropping it stops the notifications.
pub(crate) struct FileWatch {
    _source: Source,
    events: mpsc::UnboundedReceiver<notify::Result<Event>>,
    watched: Watched,
    /// The file's name and its ready marker's, or the glob's.
    names: Names,
    debounce: Duration,
    writes: WriteTracker,
}

impl FileWatch {
    /// Starts watching `file`'s directory (for `file`, and its ready marker when
    /// `marker` is set); `writes` learns from its events which writes are still
    /// open (inotify only).
    pub(crate) fn start(
        watched: Watched,
        marker: Option<&str>,
        debounce: Duration,
        poll: bool,
        writes: WriteTracker,
    ) -> Result<Self, WatchError> {
        let dir = watched.dir();
        let (polled, names) = match &watched {
            Watched::File(file) => {
                let mut polled = vec![file.to_path_buf()];
                polled.extend(marker.map(|m| crate::pipeline::ready::marker_path(file, m)));
                let names = polled
                    .iter()
                    .map(|f| f.file_name().map(OsString::from).unwrap_or_default())
                    .collect();
                (polled, Names::Files(names))
            }
            Watched::Glob { spec, .. } => {
                let pattern = match &spec.source {
                    crate::mirror::MirrorSource::Glob(p) => p.rsplit('/').next().unwrap_or(p),
                    crate::mirror::MirrorSource::File(_) => "",
                };
                let pattern = glob::Pattern::new(pattern).map_err(|e| WatchError {
                    dir: dir.clone(),
                    source: notify::Error::generic(&e.to_string()),
                })?;
                let marker = marker.map(str::to_owned);
                (Vec::new(), Names::Glob { pattern, marker })
            }
        };
        let (tx, events) = mpsc::unbounded_channel();
        let handler = {
            let tx = tx.clone();
            move |event: notify::Result<Event>| {
                let _ = tx.send(event);
            }
        };
        let err = |source| WatchError {
            dir: dir.clone(),
            source,
        };
        let source = if poll {
            let interval = (debounce / 2).clamp(Duration::from_millis(100), Duration::from_secs(1));
            let glob = matches!(watched, Watched::Glob { .. }).then(|| watched.clone());
            Source::Poll(tokio::spawn(poll_files(polled, glob, interval, tx)))
        } else {
            let mut watcher = RecommendedWatcher::new(handler, Config::default()).map_err(err)?;
            watcher
                .watch(&dir, RecursiveMode::NonRecursive)
                .map_err(err)?;
            Source::Notify(watcher)
        };
        match &names {
            Names::Files(files) => {
                tracing::info!(dir = %dir.display(), files = ?files, poll, "watching for changes");
            }
            Names::Glob { pattern, .. } => {
                tracing::info!(dir = %dir.display(), files = %pattern, poll, "watching for changes");
            }
        }
        Ok(Self {
            _source: source,
            events,
            watched,
            names,
            debounce,
            writes,
        })
    }

    /// Sends a `watch` request each time the file settles after a change.
    pub(crate) async fn run(mut self, requests: RunRequests, stop: CancellationToken) {
        let mut debounce = Debounce::new(self.debounce);
        loop {
            let deadline = debounce.deadline();
            let settle = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = stop.cancelled() => return,
                event = self.events.recv() => match event {
                    None => return,
                    Some(Err(e)) => tracing::warn!(error = %e, "file watch error"),
                    Some(Ok(event)) if is_change(&event, &self.names) => {
                        if event.need_rescan() {
                            tracing::warn!("file events were lost (inotify queue overflow); treating the file as changed");
                        } else {
                            tracing::debug!(kind = ?event.kind, "file event");
                        }
                        // Open writes are the CSV file's own (not the marker's).
                        let own = event.paths.iter().any(|p| {
                            p.file_name().is_some_and(|n| self.names.concerns(n, false))
                        });
                        if own || event.need_rescan() {
                            self.writes.observe(&event);
                        }
                        debounce.event(Instant::now(), self.watched.state());
                    }
                    Some(Ok(_)) => {}
                },
                _ = settle => {
                    // Any of the glob's parts open for writing holds the run: it reads them all.
                    let writing = self.writes.writing();
                    let file = self.watched.describe();
                    match debounce.expired(Instant::now(), self.watched.state(), writing.is_some()) {
                        Verdict::Removed => {
                            tracing::warn!(file, "the CSV file was removed; ignored (nothing is purged)");
                        }
                        Verdict::Writing => {
                            // Its IN_CLOSE_WRITE re-arms the debounce.
                            let (open, open_s) = writing.map_or((None, None), |(name, since)| {
                                (Some(name.to_string_lossy().into_owned()), Some(since.elapsed().as_secs_f64()))
                            });
                            tracing::info!(file, open, open_s, "the CSV file is still open for writing; waiting for it to be closed");
                        }
                        Verdict::Changing => {}
                        Verdict::Settled => {
                            tracing::info!(file, "the CSV file changed and settled");
                            requests.send(Trigger::Watch);
                        }
                    }
                }
            }
        }
    }
}

/// What the debounce decided when its deadline passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// The file is gone: ignored, nothing is purged; disarmed until the next event.
    Removed,
    /// Unchanged, but a writer still holds it open: disarmed until the next event
    /// (its close is one).
    Writing,
    /// Still changing without events (polling, network filesystems): re-armed.
    Changing,
    /// Quiet for the whole period and unchanged: ask for a run.
    Settled,
}

/// The watch debounce, without I/O: fed the file's state at each change event and
/// when its deadline passes, it says when the file has settled. `S` is the file's
/// state (size, mtime, inode: `FileState`).
#[derive(Debug)]
pub(crate) struct Debounce<S> {
    period: Duration,
    deadline: Option<Instant>,
    at_last_event: Option<S>,
}

impl<S: PartialEq> Debounce<S> {
    pub(crate) fn new(period: Duration) -> Self {
        Self {
            period,
            deadline: None,
            at_last_event: None,
        }
    }

    /// When to look at the file again; `None` while nothing changed.
    pub(crate) fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// A change event at `now`, the file's state (`None`: missing) then.
    pub(crate) fn event(&mut self, now: Instant, state: Option<S>) {
        self.deadline = Some(now + self.period);
        self.at_last_event = state;
    }

    /// The deadline passed at `now`: the file's state now, and whether a writer
    /// still holds it open.
    pub(crate) fn expired(&mut self, now: Instant, state: Option<S>, writing: bool) -> Verdict {
        match state {
            None => {
                self.deadline = None;
                Verdict::Removed
            }
            Some(state) if Some(&state) == self.at_last_event.as_ref() => {
                self.deadline = None;
                if writing {
                    Verdict::Writing
                } else {
                    Verdict::Settled
                }
            }
            Some(state) => {
                self.at_last_event = Some(state);
                self.deadline = Some(now + self.period);
                Verdict::Changing
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use notify::event::{DataChange, Flag};

    /// A watcher fed by the test instead of notify.
    fn fed(file: &Path) -> (FileWatch, mpsc::UnboundedSender<notify::Result<Event>>) {
        let (tx, events) = mpsc::unbounded_channel();
        let watch = FileWatch {
            _source: Source::Poll(tokio::spawn(std::future::pending())),
            events,
            watched: Watched::File(file.to_path_buf()),
            names: Names::Files(vec![file.file_name().unwrap().into()]),
            debounce: Duration::from_millis(50),
            writes: WriteTracker::default(),
        };
        (watch, tx)
    }

    /// A glob mirror's watcher (`files = "part-*.csv"` in `dir`), fed by the test.
    fn glob_fed(dir: &Path) -> (FileWatch, mpsc::UnboundedSender<notify::Result<Event>>) {
        let spec = crate::mirror::from_toml_str(
            r#"[[mirror]]
name = "parts"
files = "part-*.csv"
table = "public.parts"
key = ["id"]
columns = [{ name = "id", type = "bigint" }]"#,
        )
        .unwrap()
        .remove(0);
        let (tx, events) = mpsc::unbounded_channel();
        let watch = FileWatch {
            _source: Source::Poll(tokio::spawn(std::future::pending())),
            events,
            watched: Watched::Glob {
                spec: Box::new(spec),
                tables_dir: dir.to_path_buf(),
                dir: dir.to_path_buf(),
            },
            names: Names::Glob {
                pattern: glob::Pattern::new("part-*.csv").unwrap(),
                marker: None,
            },
            debounce: Duration::from_millis(50),
            writes: WriteTracker::default(),
        };
        (watch, tx)
    }

    const PERIOD: Duration = Duration::from_secs(2);

    /// Events push the deadline; the quiet period after the last one decides.
    #[tokio::test(start_paused = true)]
    async fn the_debounce_waits_for_a_quiet_period_after_the_last_event() {
        let mut d = Debounce::new(PERIOD);
        assert_eq!(d.deadline(), None);
        let start = Instant::now();
        d.event(Instant::now(), Some(1));
        tokio::time::advance(Duration::from_secs(1)).await;
        d.event(Instant::now(), Some(2));
        assert_eq!(d.deadline(), Some(start + Duration::from_secs(3)));
        tokio::time::sleep_until(d.deadline().unwrap()).await;
        assert_eq!(d.expired(Instant::now(), Some(2), false), Verdict::Settled);
        assert_eq!(d.deadline(), None, "one run per settled change");
    }

    #[tokio::test(start_paused = true)]
    async fn a_file_changing_without_events_rearms_the_debounce() {
        let mut d = Debounce::new(PERIOD);
        d.event(Instant::now(), Some(1));
        tokio::time::advance(PERIOD).await;
        let now = Instant::now();
        assert_eq!(d.expired(now, Some(2), false), Verdict::Changing);
        assert_eq!(d.deadline(), Some(now + PERIOD));
        tokio::time::advance(PERIOD).await;
        assert_eq!(d.expired(Instant::now(), Some(2), false), Verdict::Settled);
    }

    #[tokio::test(start_paused = true)]
    async fn a_removed_or_still_open_file_disarms_the_debounce() {
        let mut d = Debounce::new(PERIOD);
        d.event(Instant::now(), Some(1));
        tokio::time::advance(PERIOD).await;
        assert_eq!(d.expired(Instant::now(), None, false), Verdict::Removed);
        assert_eq!(d.deadline(), None);
        d.event(Instant::now(), Some(1));
        tokio::time::advance(PERIOD).await;
        assert_eq!(d.expired(Instant::now(), Some(1), true), Verdict::Writing);
        assert_eq!(d.deadline(), None);
        // The writer's close is the next event.
        d.event(Instant::now(), Some(1));
        tokio::time::advance(PERIOD).await;
        assert_eq!(d.expired(Instant::now(), Some(1), false), Verdict::Settled);
    }

    #[tokio::test]
    async fn a_queue_overflow_is_a_change() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("followers.csv");
        std::fs::write(&file, "email\n").unwrap();
        let (watch, tx) = fed(&file);
        let (requests, mut runs) = RunRequests::channel();
        let stop = CancellationToken::new();
        let task = tokio::spawn(watch.run(requests, stop.clone()));
        // An overflow names no path.
        tx.send(Ok(Event::new(EventKind::Other).set_flag(Flag::Rescan)))
            .unwrap();
        let run = tokio::time::timeout(Duration::from_secs(10), runs.recv()).await;
        assert_eq!(run.ok().flatten(), Some(Trigger::Watch));
        stop.cancel();
        task.await.unwrap();
    }

    #[tokio::test]
    async fn a_file_open_for_writing_waits_for_its_close() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("followers.csv");
        std::fs::write(&file, "email\n").unwrap();
        let (watch, tx) = fed(&file);
        let (requests, mut runs) = RunRequests::channel();
        let stop = CancellationToken::new();
        let task = tokio::spawn(watch.run(requests, stop.clone()));
        let named = |kind| Ok(Event::new(kind).add_path(file.clone()));
        tx.send(named(EventKind::Modify(ModifyKind::Data(DataChange::Any))))
            .unwrap();
        // Many debounce periods: no run while the write is open.
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert!(runs.try_recv().is_err(), "a run during an open write");
        tx.send(named(EventKind::Access(AccessKind::Close(
            AccessMode::Write,
        ))))
        .unwrap();
        let run = tokio::time::timeout(Duration::from_secs(10), runs.recv()).await;
        assert_eq!(run.ok().flatten(), Some(Trigger::Watch));
        stop.cancel();
        task.await.unwrap();
    }

    /// One part closed while another is still open for writing: no run until
    /// that one is closed too (each part's open write is its own).
    #[tokio::test]
    async fn a_glob_part_open_for_writing_holds_the_run_when_another_part_is_closed() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("part-1.csv"), dir.path().join("part-2.csv"));
        std::fs::write(&a, "1\n").unwrap();
        std::fs::write(&b, "2\n").unwrap();
        let (watch, tx) = glob_fed(dir.path());
        let (requests, mut runs) = RunRequests::channel();
        let stop = CancellationToken::new();
        let task = tokio::spawn(watch.run(requests, stop.clone()));
        let at = |path: &Path, kind| Ok(Event::new(kind).add_path(path.to_owned()));
        let (modify, close) = (
            EventKind::Modify(ModifyKind::Data(DataChange::Any)),
            EventKind::Access(AccessKind::Close(AccessMode::Write)),
        );
        tx.send(at(&a, modify)).unwrap();
        tx.send(at(&b, modify)).unwrap();
        tx.send(at(&b, close)).unwrap();
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert!(
            runs.try_recv().is_err(),
            "a run while part-1 is open for writing"
        );
        tx.send(at(&a, close)).unwrap();
        let run = tokio::time::timeout(Duration::from_secs(10), runs.recv()).await;
        assert_eq!(run.ok().flatten(), Some(Trigger::Watch));
        stop.cancel();
        task.await.unwrap();
    }
}
