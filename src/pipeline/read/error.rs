//! `ReadError`, and the registry that turns the marker errors the layers stop a
//! read with (`Malformed`, `Corrupt`, `RecordTooLong`, carried inside an
//! `io::Error` through the layers above them and the `csv` crate) back into it.

use super::compression::Corrupt;
use super::encoding::Malformed;
use super::lines::RecordTooLong;
use super::MAX_RECORD_BYTES;
use std::io;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("{path}: cannot read the file")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path}: line {line}: cannot parse CSV")]
    Csv {
        path: PathBuf,
        line: u64,
        #[source]
        source: csv::Error,
    },
    #[error("{path}: line {line}: the header has no {column:?} column (it has: {found})")]
    MissingColumn {
        path: PathBuf,
        line: u64,
        column: &'static str,
        found: String,
    },
    #[error("{path}: line {line}: a record runs on for more than {} MiB (an unbalanced quote?)", MAX_RECORD_BYTES >> 20)]
    RecordTooLong { path: PathBuf, line: u64 },
    #[error("{path}: the file is {what}, not CSV text; nothing was read ({fix})")]
    NotText {
        path: PathBuf,
        what: &'static str,
        fix: &'static str,
    },
    #[error("{path}: line {line}: byte {offset} is not valid {encoding}; nothing was loaded (set CSV_ENCODING to the file's encoding, e.g. windows-1252, utf-16le or utf-16be)")]
    Encoding {
        path: PathBuf,
        line: u64,
        /// In the decompressed text, counted from 0.
        offset: u64,
        encoding: &'static str,
    },
    #[error("{path}: line {line}: the {what} archive is truncated or corrupt ({detail}); nothing was loaded")]
    Archive {
        path: PathBuf,
        line: u64,
        what: &'static str,
        detail: String,
    },
    #[error("{path}: line {line}: a quoted field is still open at the end of the file (the file looks truncated); nothing was loaded")]
    UnclosedQuote { path: PathBuf, line: u64 },
    #[error("{path}: line {line}: the header names {column:?} twice")]
    DuplicateColumn {
        path: PathBuf,
        line: u64,
        column: &'static str,
    },
}

impl ReadError {
    /// Whether the file's content (not the system) is at fault.
    pub fn is_content(&self) -> bool {
        match self {
            Self::Io { .. } => false,
            Self::Csv { source, .. } => !matches!(source.kind(), csv::ErrorKind::Io(_)),
            _ => true,
        }
    }
}

/// The error of a read stopped by one of the layers below the CSV parser (a
/// marked error), at `line`.
pub(super) fn layered_error(path: &Path, line: u64, e: &io::Error) -> Option<ReadError> {
    let inner = e.get_ref()?;
    let path = path.to_owned();
    if let Some(m) = inner.downcast_ref::<Malformed>() {
        return Some(ReadError::Encoding {
            path,
            line: m.line,
            offset: m.offset,
            encoding: m.encoding,
        });
    }
    if let Some(c) = inner.downcast_ref::<Corrupt>() {
        return Some(ReadError::Archive {
            path,
            line,
            what: c.what,
            detail: c.source.to_string(),
        });
    }
    inner
        .is::<RecordTooLong>()
        .then_some(ReadError::RecordTooLong { path, line })
}

/// An error of opening the text (before any record), marked or not.
pub(super) fn io_error(path: &Path, source: io::Error) -> ReadError {
    layered_error(path, 1, &source).unwrap_or_else(|| ReadError::Io {
        path: path.to_owned(),
        source,
    })
}
