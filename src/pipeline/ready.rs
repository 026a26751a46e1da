//! The ready marker (`READY_MARKER`, docs/operations.md#ready-marker): when set, `CSV_FILE` is
//! read only once `CSV_FILE` + the marker exists and is not older than it, the
//! convention of SFTP and batch pipelines that write the marker after the file.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// `file`'s marker: the same path with `suffix` appended to its name.
pub(crate) fn marker_path(file: &Path, suffix: &str) -> PathBuf {
    let mut name = OsString::from(file.as_os_str());
    name.push(suffix);
    PathBuf::from(name)
}

/// Why the file is not ready yet.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NotReady {
    #[error("the ready marker {0} does not exist")]
    Missing(PathBuf),
    #[error("the ready marker {0} is older than the file")]
    Stale(PathBuf),
}

/// Whether `file` may be read now. A missing `file` is "ready": reading it then
/// fails as it would without a marker.
pub(crate) fn check(file: &Path, suffix: &str) -> Result<(), NotReady> {
    let marker = marker_path(file, suffix);
    let Ok(marker_meta) = std::fs::metadata(&marker) else {
        return Err(NotReady::Missing(marker));
    };
    let modified = |m: &std::fs::Metadata| m.modified().ok();
    match std::fs::metadata(file) {
        Ok(file_meta) if modified(&marker_meta) < modified(&file_meta) => {
            Err(NotReady::Stale(marker))
        }
        _ => Ok(()),
    }
}

/// `check`, retried every 200 ms until `timeout` (for a run started by hand).
pub(crate) async fn wait(
    file: &Path,
    suffix: &str,
    timeout: Duration,
    cancel: &CancellationToken,
) -> Result<(), NotReady> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let state = check(file, suffix);
        if state.is_ok() || tokio::time::Instant::now() >= deadline || cancel.is_cancelled() {
            return state;
        }
        tokio::select! {
            _ = cancel.cancelled() => {}
            _ = tokio::time::sleep(Duration::from_millis(200).min(deadline - tokio::time::Instant::now())) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marker_must_exist_and_be_no_older_than_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f.csv");
        std::fs::write(&file, "a@x.io,A\n").unwrap();
        let marker = marker_path(&file, ".done");
        assert_eq!(marker, dir.path().join("f.csv.done"));
        assert_eq!(
            check(&file, ".done"),
            Err(NotReady::Missing(marker.clone()))
        );
        std::fs::write(&marker, "").unwrap();
        assert_eq!(check(&file, ".done"), Ok(()));
        let old = std::time::SystemTime::now() - Duration::from_secs(60);
        std::fs::File::options()
            .write(true)
            .open(&marker)
            .unwrap()
            .set_modified(old)
            .unwrap();
        assert_eq!(check(&file, ".done"), Err(NotReady::Stale(marker)));
    }
}
