//! Watches the CSV file's directory (non-recursively, inotify or polling) and asks
//! for a run once the file has settled: no event for `WATCH_DEBOUNCE`, and its
//! size, mtime and inode unchanged over that same period. Only events naming the
//! CSV file count, so temporary files (`.x.tmp`, `*.swp`, `*~`) are ignored until
//! they are renamed into place. A deleted file is logged and ignored: it never
//! starts a run, so it never purges anything.
//!
//! The debounce is a small state machine here rather than notify-debouncer-full:
//! the stability check needs the file's state at the last event, which that
//! crate's batched output does not give. Polling (`WATCH_POLL`) stats the one file
//! itself instead of using notify's `PollWatcher`, which compares mtimes in whole
//! seconds only (notify 8.2) and so misses a second write within the same second.

use crate::runner::RunRequests;
use crate::runs::Trigger;
use notify::event::{AccessKind, AccessMode, ModifyKind, RemoveKind};
use notify::{Config, Event, EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};
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

/// What "the file did not change" compares.
#[derive(Clone, Debug, PartialEq, Eq)]
struct FileState {
    len: u64,
    modified: Option<SystemTime>,
    inode: u64,
}

fn file_state(path: &Path) -> Option<FileState> {
    let meta = std::fs::metadata(path).ok()?;
    #[cfg(unix)]
    let inode = std::os::unix::fs::MetadataExt::ino(&meta);
    #[cfg(not(unix))]
    let inode = 0;
    Some(FileState {
        len: meta.len(),
        modified: meta.modified().ok(),
        inode,
    })
}

/// Whether an event may have changed the file's content. Reads (including the
/// agent's own) are not changes.
fn is_change(event: &Event, name: &OsString) -> bool {
    let content_event = match event.kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) | EventKind::Other => false,
        EventKind::Any | EventKind::Create(_) | EventKind::Modify(_) | EventKind::Remove(_) => true,
    };
    content_event
        && event
            .paths
            .iter()
            .any(|p| p.file_name() == Some(name.as_os_str()))
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

/// Stats `file` every `interval` and reports each change of its state as an event.
async fn poll_file(
    file: PathBuf,
    interval: Duration,
    tx: mpsc::UnboundedSender<notify::Result<Event>>,
) {
    let mut last = file_state(&file);
    let mut tick = tokio::time::interval(interval);
    loop {
        tick.tick().await;
        let now = file_state(&file);
        if now != last {
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
            last = now;
        }
    }
}

/// A running watcher; dropping it stops the notifications.
pub struct FileWatch {
    _source: Source,
    events: mpsc::UnboundedReceiver<notify::Result<Event>>,
    file: PathBuf,
    name: OsString,
    debounce: Duration,
}

impl FileWatch {
    /// Starts watching `file`'s directory.
    pub fn start(file: &Path, debounce: Duration, poll: bool) -> Result<Self, WatchError> {
        let dir = file.parent().unwrap_or(Path::new(".")).to_path_buf();
        let name = file.file_name().map(OsString::from).unwrap_or_default();
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
            Source::Poll(tokio::spawn(poll_file(file.to_path_buf(), interval, tx)))
        } else {
            let mut watcher = RecommendedWatcher::new(handler, Config::default()).map_err(err)?;
            watcher
                .watch(&dir, RecursiveMode::NonRecursive)
                .map_err(err)?;
            Source::Notify(watcher)
        };
        tracing::info!(dir = %dir.display(), file = ?name, poll, "watching for changes");
        Ok(Self {
            _source: source,
            events,
            file: file.to_path_buf(),
            name,
            debounce,
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
                    Some(Ok(event)) if is_change(&event, &self.name) => {
                        tracing::debug!(kind = ?event.kind, "file event");
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
