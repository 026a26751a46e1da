//! The file's raw bytes: opened as a regular file only, every byte read fed to
//! the content hash (primed with the settings) and counted for progress, by
//! `RawBytes` into the `Tap` that `CsvRecords` reads them from.

use super::ReadError;
use crate::config::{CsvFormat, HeaderMode};
use crate::domain::ContentHash;
use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// The raw bytes read from the file, shared between the bottom layer (which
/// feeds them) and `CsvRecords` (which hands out the hash and the progress).
pub(super) struct Tap {
    pub(super) hasher: Mutex<blake3::Hasher>,
    pub(super) bytes: AtomicU64,
}

impl Tap {
    pub(super) fn new(format: &CsvFormat) -> Arc<Self> {
        Arc::new(Self {
            hasher: Mutex::new(settings_hasher(format)),
            bytes: AtomicU64::new(0),
        })
    }
}

/// The file itself: every byte read feeds the hash (the skip compares the raw
/// bytes, compressed or not) and the byte count. Its own I/O errors are marked,
/// so a decompressor passing them up is not mistaken for a corrupt archive.
pub(super) struct RawBytes {
    pub(super) file: File,
    pub(super) tap: Arc<Tap>,
}

impl Read for RawBytes {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self
            .file
            .read(buf)
            .map_err(|e| io::Error::new(e.kind(), FileFailure(e)))?;
        self.tap
            .hasher
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .update(&buf[..n]);
        self.tap
            .bytes
            .fetch_add(crate::convert::len(n), Ordering::Relaxed);
        Ok(n)
    }
}

/// Marks an I/O error of the file itself (as opposed to its content).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(super) struct FileFailure(io::Error);

/// A hasher primed with the settings that decide how bytes become rows: the same
/// bytes read with another delimiter, header mode or encoding are a different
/// input. (`CSV_ENCODING=auto` adds nothing, so hashes from before the setting
/// existed still match.)
fn settings_hasher(format: &CsvFormat) -> blake3::Hasher {
    let mut hasher = blake3::Hasher::new();
    hasher.update(b"followers-etl/v1\0");
    hasher.update(&[format.delimiter]);
    hasher.update(match format.header {
        HeaderMode::Auto => b"auto\0",
        HeaderMode::Present => b"true\0",
        HeaderMode::Absent => b"fals\0",
    });
    if let Some(encoding) = format.encoding {
        hasher.update(b"encoding=");
        hasher.update(encoding.name().as_bytes());
        hasher.update(b"\0");
    }
    hasher
}

/// Opens `path` for reading, refusing anything but a regular file. The open does
/// not wait (`O_NONBLOCK`: a FIFO without a writer would block `open()` for ever),
/// and the check is on the opened file, so a file swapped for a FIFO after the
/// run's first check is refused too. Reads of a regular file ignore `O_NONBLOCK`.
pub(crate) fn open_regular(path: &Path) -> io::Result<File> {
    let mut options = std::fs::OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::custom_flags(&mut options, libc::O_NONBLOCK);
    let file = options.open(path)?;
    if !file.metadata()?.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file (a FIFO, device or directory cannot be synced)",
        ));
    }
    Ok(file)
}

/// The content hash of `path` under `format`, read in one streaming pass over the
/// raw (compressed) bytes.
pub(crate) fn hash_file(path: &Path, format: &CsvFormat) -> Result<ContentHash, ReadError> {
    let io_err = |source| ReadError::Io {
        path: path.to_owned(),
        source,
    };
    let file = open_regular(path).map_err(io_err)?;
    let mut hasher = settings_hasher(format);
    io::copy(&mut BufReader::with_capacity(256 * 1024, file), &mut hasher).map_err(io_err)?;
    Ok(ContentHash::from_hasher(&hasher))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::read::test_support::auto;
    use crate::pipeline::read::CsvRecords;
    use std::io::Write;

    #[test]
    fn hash_depends_on_bytes_and_settings_and_matches_the_streaming_read() {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(b"a@x.io,Ann\n").unwrap();
        let h1 = hash_file(file.path(), &auto()).unwrap();
        let semi = CsvFormat {
            delimiter: b';',
            ..auto()
        };
        assert_ne!(h1, hash_file(file.path(), &semi).unwrap());
        let mut records = CsvRecords::open(file.path(), &auto()).unwrap();
        while records.next_row().unwrap().is_some() {}
        assert_eq!(records.finish(), h1);
    }
}
