//! Watches the CSV file's directory (non-recursively, inotify or polling) and asks
//! for a run once the file has settled: no event for `WATCH_DEBOUNCE`, and its
//! size, mtime and inode unchanged over that same period. Only events naming the
//! CSV file count, so temporary files (`.x.tmp`, `*.swp`, `*~`) are ignored until
//! they are renamed into place. A deleted file is logged and ignored: it never
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
pub struct WatchError {
    dir: PathBuf,
    #[source]
    source: notify::Error,
}

/// Whether an event may have changed the content of a file named in `names`.
/// Reads (including the agent's own) are not changes; a queue overflow (events
/// lost) may hide one.
fn is_change(event: &Event, names: &[OsString]) -> bool {
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
            .any(|p| p.file_name().is_some_and(|n| names.iter().any(|x| x == n)))
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

/// Stats `files` every `interval` and reports each change of a file's state as
/// an event.
async fn poll_files(
    files: Vec<PathBuf>,
    interval: Duration,
    tx: mpsc::UnboundedSender<notify::Result<Event>>,
) {
    let mut last: Vec<_> = files.iter().map(|f| file_state(f)).collect();
    let mut tick = tokio::time::interval(interval);
    loop {
        tick.tick().await;
        for (file, last) in files.iter().zip(last.iter_mut()) {
            let now = file_state(file);
            if now != *last {
                let kind = match now {
                    Some(_) => EventKind::Modify(ModifyKind::Any),
                    None => EventKind::Remove(RemoveKind::File),
                };
                if tx
                    .send(Ok(Event::new(kind).add_path(file.clone())))
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
pub struct FileWatch {
    _source: Source,
    events: mpsc::UnboundedReceiver<notify::Result<Event>>,
    file: PathBuf,
    /// The file's name, and its ready marker's.
    names: Vec<OsString>,
    debounce: Duration,
    writes: WriteTracker,
}

impl FileWatch {
    /// Starts watching `file`'s directory (for `file`, and its ready marker when
    /// `marker` is set); `writes` learns from its events which writes are still
    /// open (inotify only).
    pub fn start(
        file: &Path,
        marker: Option<&str>,
        debounce: Duration,
        poll: bool,
        writes: WriteTracker,
    ) -> Result<Self, WatchError> {
        let dir = file.parent().unwrap_or(Path::new(".")).to_path_buf();
        let mut watched = vec![file.to_path_buf()];
        watched.extend(marker.map(|m| crate::pipeline::ready::marker_path(file, m)));
        let names: Vec<OsString> = watched
            .iter()
            .map(|f| f.file_name().map(OsString::from).unwrap_or_default())
            .collect();
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
            Source::Poll(tokio::spawn(poll_files(watched, interval, tx)))
        } else {
            let mut watcher = RecommendedWatcher::new(handler, Config::default()).map_err(err)?;
            watcher
                .watch(&dir, RecursiveMode::NonRecursive)
                .map_err(err)?;
            Source::Notify(watcher)
        };
        tracing::info!(dir = %dir.display(), files = ?names, poll, "watching for changes");
        Ok(Self {
            _source: source,
            events,
            file: file.to_path_buf(),
            names,
            debounce,
            writes,
        })
    }

    /// Sends a `watch` request each time the file settles after a change.
    pub async fn run(mut self, requests: RunRequests, stop: CancellationToken) {
        let mut deadline: Option<Instant> = None;
        let mut at_last_event: Option<FileState> = None;
        loop {
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
                        if is_change(&event, &self.names[..1]) {
                            self.writes.observe(&event);
                        }
                        deadline = Some(Instant::now() + self.debounce);
                        at_last_event = file_state(&self.file);
                    }
                    Some(Ok(_)) => {}
                },
                _ = settle => {
                    let now = file_state(&self.file);
                    match now {
                        None => {
                            tracing::warn!(file = %self.file.display(), "the CSV file was removed; ignored (nothing is purged)");
                            deadline = None;
                        }
                        Some(state) if Some(&state) == at_last_event.as_ref() => {
                            deadline = None;
                            if let Some(since) = self.writes.writing_since() {
                                // Its IN_CLOSE_WRITE re-arms the debounce.
                                tracing::info!(file = %self.file.display(), open_s = since.elapsed().as_secs_f64(), "the CSV file is still open for writing; waiting for it to be closed");
                                continue;
                            }
                            tracing::info!(file = %self.file.display(), "the CSV file changed and settled");
                            requests.send(Trigger::Watch);
                        }
                        Some(state) => {
                            // Still changing without events (polling, network filesystems).
                            at_last_event = Some(state);
                            deadline = Some(Instant::now() + self.debounce);
                        }
                    }
                }
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
            file: file.to_path_buf(),
            names: vec![file.file_name().unwrap().into()],
            debounce: Duration::from_millis(50),
            writes: WriteTracker::default(),
        };
        (watch, tx)
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
}
