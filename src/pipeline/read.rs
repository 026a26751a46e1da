//! Read: file bytes → CSV records with their line numbers, streaming.
//!
//! The layers, each streaming (docs/sync.md#3-read): the file's raw
//! bytes (hashed, counted for progress) → decompression when the name ends in
//! `.gz` or `.zst` → decoding to UTF-8 (`CSV_ENCODING`; UTF-8 itself passes
//! through) → line tracking → the `csv` crate (RFC 4180 quoting, the UTF-8 BOM).
//! Handles LF, CRLF and bare-CR (old Mac) line endings, blank lines, and the header: with `CSV_HEADER=auto` the
//! first row is a header when any of its fields, trimmed and case-insensitive, is
//! `email` and none is a valid email address (`info@x.io,Email` is a follower).
//! Quotes are checked against the bytes as written: a quoted field still open at
//! the end of the file (a truncated file) refuses it, and a field with text after
//! its closing quote (`"Bob" Jones`) is kept as written, never with its quotes
//! dropped. Every raw byte read feeds the content hash, so the hash recorded for a
//! sync is the hash of exactly the bytes that were loaded.
//!
//! Line endings: the first line break of the (decoded) text decides. A bare CR there makes
//! CR the line terminator of the whole file; otherwise LF is, and a CR right before
//! it is part of the terminator (CRLF). Any other CR (or, in a CR file, an LF) is
//! not a line break: it stays in its field and `validate` rejects that row (a
//! stray CR never splits a line). Line numbers count the file's terminator, so
//! they are right for all three conventions.

use crate::config::{CsvFormat, HeaderMode};
use crate::domain::ContentHash;
use csv::ByteRecord;
use encoding_rs::{DecoderResult, Encoding};
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Where the two columns the agent needs sit in each record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Columns {
    pub email: usize,
    pub full_name: usize,
    /// Number of fields every data row must have.
    pub width: usize,
}

impl Columns {
    /// Without a header: email first, full name second, as the old service read it.
    pub const POSITIONAL: Columns = Columns {
        email: 0,
        full_name: 1,
        width: 2,
    };
}

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

/// No legitimate record comes near this (two fields of at most 255 characters
/// plus whatever extra columns); a longer one is an unbalanced quote swallowing
/// the rest of the file, and reading stops before memory grows with it.
pub const MAX_RECORD_BYTES: usize = 1 << 20;

/// How much of a rejected row's text is kept for the rejects report.
pub const RAW_LINE_LIMIT: usize = 1000;

/// A data row: its first line in the file, its raw fields, and its text as read
/// (without the line break, cut to `RAW_LINE_LIMIT` bytes) starting at byte
/// `offset` of the (decoded) text.
#[derive(Debug)]
pub struct RawRow {
    pub line: u64,
    pub record: ByteRecord,
    pub offset: u64,
    pub raw: Vec<u8>,
}

/// The raw bytes read from the file, shared between the bottom layer (which
/// feeds them) and `CsvRecords` (which hands out the hash and the progress).
struct Tap {
    hasher: Mutex<blake3::Hasher>,
    bytes: AtomicU64,
}

impl Tap {
    fn new(format: &CsvFormat) -> Arc<Self> {
        Arc::new(Self {
            hasher: Mutex::new(settings_hasher(format)),
            bytes: AtomicU64::new(0),
        })
    }
}

/// The file itself: every byte read feeds the hash (the skip compares the raw
/// bytes, compressed or not) and the byte count. Its own I/O errors are marked,
/// so a decompressor passing them up is not mistaken for a corrupt archive.
struct RawBytes {
    file: File,
    tap: Arc<Tap>,
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
        self.tap.bytes.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

/// Marks an I/O error of the file itself (as opposed to its content).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct FileFailure(io::Error);

/// The compression a file's name announces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Compression {
    Gzip,
    Zstd,
}

impl Compression {
    fn of(path: &Path) -> Option<Self> {
        let ext = path.extension()?.to_str()?.to_ascii_lowercase();
        match ext.as_str() {
            "gz" => Some(Self::Gzip),
            "zst" => Some(Self::Zstd),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Gzip => "gzip",
            Self::Zstd => "zstd",
        }
    }
}

/// Whether `path`'s name announces a compressed file (`.gz`, `.zst`).
pub fn is_compressed(path: &Path) -> bool {
    Compression::of(path).is_some()
}

/// A decompressor whose errors (a bad header, a checksum mismatch, a stream that
/// ends before its end-of-stream marker) are marked as a corrupt archive.
struct Decompress<R> {
    inner: R,
    what: &'static str,
}

/// Marks a decompression error.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {source}")]
struct Corrupt {
    what: &'static str,
    source: io::Error,
}

impl<R: Read> Read for Decompress<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.read(buf).map_err(|e| {
            if e.get_ref().is_some_and(|inner| inner.is::<FileFailure>()) {
                e
            } else {
                let what = self.what;
                io::Error::new(io::ErrorKind::InvalidData, Corrupt { what, source: e })
            }
        })
    }
}

/// Decodes another encoding to UTF-8 while streaming (`encoding_rs`, without
/// replacement: a malformed sequence stops the read with its line and offset,
/// since a silently replaced character would store a wrong name or email).
struct Decoded<R> {
    inner: R,
    decoder: encoding_rs::Decoder,
    out: Vec<u8>,
    out_pos: usize,
    /// Input bytes decoded so far.
    offset: u64,
    /// Line breaks decoded so far.
    lines: u64,
    done: bool,
    /// Once malformed input was met, every read fails with it (the decoder has
    /// consumed the bad bytes: reading on would skip them silently).
    failed: Option<Malformed>,
}

/// Marks a byte sequence that is not valid in the file's encoding.
#[derive(Clone, Debug, thiserror::Error)]
#[error("byte {offset} is not valid {encoding}")]
struct Malformed {
    line: u64,
    offset: u64,
    encoding: &'static str,
}

impl<R: BufRead> Decoded<R> {
    fn new(inner: R, encoding: &'static Encoding) -> Self {
        Self {
            inner,
            // BOM sniffing: a UTF-8 or UTF-16 byte order mark wins over the setting.
            decoder: encoding.new_decoder(),
            out: Vec::new(),
            out_pos: 0,
            offset: 0,
            lines: 0,
            done: false,
            failed: None,
        }
    }
}

impl<R: BufRead> Read for Decoded<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            // The text before the bad bytes first, so the line is counted right.
            if self.out_pos < self.out.len() {
                let n = buf.len().min(self.out.len() - self.out_pos);
                buf[..n].copy_from_slice(&self.out[self.out_pos..self.out_pos + n]);
                self.out_pos += n;
                return Ok(n);
            }
            if let Some(malformed) = &self.failed {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    malformed.clone(),
                ));
            }
            if self.done {
                return Ok(0);
            }
            let src = self.inner.fill_buf()?;
            let last = src.is_empty();
            self.out.resize(64 * 1024, 0);
            let (result, read, written) =
                self.decoder
                    .decode_to_utf8_without_replacement(src, &mut self.out, last);
            self.inner.consume(read);
            self.out.truncate(written);
            self.out_pos = 0;
            self.lines += self.out.iter().filter(|b| **b == b'\n').count() as u64;
            match result {
                DecoderResult::Malformed(bad, extra) => {
                    // `line` counts LF; `LineTracker` corrects it for a bare-CR file.
                    self.failed = Some(Malformed {
                        line: 1 + self.lines,
                        offset: self.offset + read as u64 - u64::from(bad) - u64::from(extra),
                        encoding: self.decoder.encoding().name(),
                    });
                    continue;
                }
                DecoderResult::InputEmpty => self.done = last,
                DecoderResult::OutputFull => {}
            }
            self.offset += read as u64;
        }
    }
}

/// Keeps the (decoded) bytes not yet attributed to a record, so records get true
/// line numbers (the `csv` crate's own line count is off after CRLF and blank
/// lines) and a rejected row's text can be reported.
struct LineTracker<R> {
    inner: R,
    /// Bytes read and not yet attributed to a record: `pending[head..]`, from
    /// offset `pending_start` on. Attributed bytes are dropped once per read,
    /// not once per record (that moved the buffer for every row).
    pending: Vec<u8>,
    head: usize,
    pending_start: u64,
    /// Line breaks before `pending_start`.
    lines: u64,
    /// The file's line terminator (`\n`, or `\r` for an old Mac file).
    eol: u8,
}

impl<R> LineTracker<R> {
    fn new(inner: R, eol: u8) -> Self {
        Self {
            inner,
            pending: Vec::new(),
            head: 0,
            pending_start: 0,
            lines: 0,
            eol,
        }
    }

    fn count_lines(&self, bytes: &[u8]) -> u64 {
        bytes.iter().filter(|b| **b == self.eol).count() as u64
    }

    /// The 1-based line of the record whose span starts at byte `start` (the
    /// span may begin with the rest of the previous terminator and blank lines).
    fn line_of_record_at(&mut self, start: u64) -> u64 {
        let live = &self.pending[self.head..];
        let upto = (start.saturating_sub(self.pending_start) as usize).min(live.len());
        self.lines += self.count_lines(&live[..upto]);
        self.head += upto;
        self.pending_start += upto as u64;
        let leading = self.pending[self.head..]
            .iter()
            .take_while(|b| matches!(b, b'\r' | b'\n'))
            .filter(|b| **b == self.eol)
            .count() as u64;
        1 + self.lines + leading
    }

    /// The bytes of the record just located by `line_of_record_at`, which ends at
    /// byte `end`, as read: without the line breaks before it (nor a UTF-8 BOM),
    /// its own terminator included.
    fn record_bytes(&self, end: u64) -> &[u8] {
        let live = &self.pending[self.head..];
        let len = (end.saturating_sub(self.pending_start) as usize).min(live.len());
        let span = &live[..len];
        let lead = span
            .iter()
            .take_while(|b| matches!(b, b'\r' | b'\n'))
            .count();
        let span = &span[lead..];
        span.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(span)
    }

    /// The text of the record just located by `line_of_record_at`, which ends at
    /// byte `end`: without line breaks around it, cut to `RAW_LINE_LIMIT` bytes,
    /// and its offset.
    fn record_text(&self, end: u64) -> (u64, Vec<u8>) {
        let live = &self.pending[self.head..];
        let len = (end.saturating_sub(self.pending_start) as usize).min(live.len());
        let span = &live[..len];
        let lead = span
            .iter()
            .take_while(|b| matches!(b, b'\r' | b'\n'))
            .count();
        let mut text = &span[lead..];
        while let [rest @ .., b'\r' | b'\n'] = text {
            text = rest;
        }
        let text = &text[..text.len().min(RAW_LINE_LIMIT)];
        (self.pending_start + lead as u64, text.to_vec())
    }
}

impl<R: Read> Read for LineTracker<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.pending.drain(..self.head);
        self.head = 0;
        if self.pending.len() > MAX_RECORD_BYTES {
            // Blank lines before a record are not part of it: count them off.
            let blank = self
                .pending
                .iter()
                .take_while(|b| matches!(b, b'\r' | b'\n'))
                .count();
            self.lines += self.count_lines(&self.pending[..blank]);
            self.pending.drain(..blank);
            self.pending_start += blank as u64;
        }
        if self.pending.len() > MAX_RECORD_BYTES {
            return Err(io::Error::new(io::ErrorKind::InvalidData, RecordTooLong));
        }
        let n = self.inner.read(buf).map_err(|e| self.locate(e))?;
        self.pending.extend_from_slice(&buf[..n]);
        Ok(n)
    }
}

impl<R> LineTracker<R> {
    /// A decoding error gets the line of the bad bytes in the file's own line
    /// terminator: every byte before them has been read (`Decoded` hands them out
    /// first).
    fn locate(&self, e: io::Error) -> io::Error {
        match e
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<Malformed>())
        {
            Some(m) => {
                let line = 1 + self.lines + self.count_lines(&self.pending[self.head..]);
                io::Error::new(e.kind(), Malformed { line, ..m.clone() })
            }
            None => e,
        }
    }
}

/// The marker error `LineTracker` stops the CSV reader with.
#[derive(Debug, thiserror::Error)]
#[error("record too long")]
struct RecordTooLong;

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
pub fn open_regular(path: &Path) -> io::Result<File> {
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
pub fn hash_file(path: &Path, format: &CsvFormat) -> Result<ContentHash, ReadError> {
    let io_err = |source| ReadError::Io {
        path: path.to_owned(),
        source,
    };
    let file = open_regular(path).map_err(io_err)?;
    let mut hasher = settings_hasher(format);
    io::copy(&mut BufReader::with_capacity(256 * 1024, file), &mut hasher).map_err(io_err)?;
    Ok(ContentHash::from_hasher(&hasher))
}

/// How the text must be read, from its first bytes and `CSV_ENCODING`.
enum Sniffed {
    /// Not something this reader can load: what it is, and what to do.
    Refuse(&'static str, &'static str),
    /// Decode from this encoding.
    Decode(&'static Encoding),
    /// UTF-8: read as is (a row that is not valid UTF-8 is a reject).
    Utf8,
}

/// What the (decompressed) text is, from its first bytes. With
/// `CSV_ENCODING=auto` a UTF-16 byte order mark selects UTF-16, anything else is
/// read as UTF-8; workbooks, UTF-32 and archives the name does not announce are
/// refused, saying what they are.
fn sniff(head: &[u8], encoding: Option<&'static Encoding>) -> Sniffed {
    const RESAVE: &str = "save it as \"CSV UTF-8\", or convert it with iconv -t UTF-8";
    const LE: &str = "set CSV_ENCODING=utf-16le, or save it as \"CSV UTF-8\"";
    const BE: &str = "set CSV_ENCODING=utf-16be, or save it as \"CSV UTF-8\"";
    const RENAME: &str =
        "name the file *.gz or *.zst to have it decompressed, or decompress it first";
    let utf16_without_bom = |a: usize, b: usize| {
        head.len() >= 4
            && head[a] == 0
            && head[a + 2] == 0
            && head[b].is_ascii_graphic()
            && head[b + 2].is_ascii_graphic()
    };
    let (what, fix) = match head {
        [0xFF, 0xFE, 0, 0, ..] => ("UTF-32 LE text (it starts with FF FE 00 00)", RESAVE),
        [0, 0, 0xFE, 0xFF, ..] => ("UTF-32 BE text (it starts with 00 00 FE FF)", RESAVE),
        [0x1F, 0x8B, ..] => ("gzip-compressed (it starts with 1F 8B)", RENAME),
        [0x28, 0xB5, 0x2F, 0xFD, ..] => ("zstd-compressed (it starts with 28 B5 2F FD)", RENAME),
        [b'P', b'K', 3, 4, ..] => (
            "a ZIP archive, e.g. an Excel .xlsx workbook (it starts with PK 03 04)",
            "export the sheet as \"CSV UTF-8\", or unzip it",
        ),
        [0xD0, 0xCF, 0x11, 0xE0, ..] => (
            "an Excel 97-2003 .xls workbook (it starts with D0 CF 11 E0)",
            "export the sheet as \"CSV UTF-8\"",
        ),
        _ => match encoding {
            Some(e) if e == encoding_rs::UTF_8 => return Sniffed::Utf8,
            Some(e) => return Sniffed::Decode(e),
            None => match head {
                [0xFF, 0xFE, ..] => return Sniffed::Decode(encoding_rs::UTF_16LE),
                [0xFE, 0xFF, ..] => return Sniffed::Decode(encoding_rs::UTF_16BE),
                _ if utf16_without_bom(1, 0) => ("UTF-16 LE text without a byte order mark", LE),
                _ if utf16_without_bom(0, 1) => ("UTF-16 BE text without a byte order mark", BE),
                _ => return Sniffed::Utf8,
            },
        },
    };
    Sniffed::Refuse(what, fix)
}

/// The error of a read stopped by one of the layers below the CSV parser (a
/// marked error), at `line`.
fn layered_error(path: &Path, line: u64, e: &io::Error) -> Option<ReadError> {
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
fn io_error(path: &Path, source: io::Error) -> ReadError {
    layered_error(path, 1, &source).unwrap_or_else(|| ReadError::Io {
        path: path.to_owned(),
        source,
    })
}

/// The file as UTF-8 text: decompressed, decoded, streaming.
fn open_text(
    path: &Path,
    format: &CsvFormat,
    tap: Arc<Tap>,
) -> Result<Box<dyn BufRead + Send>, ReadError> {
    let io_err = |source: io::Error| io_error(path, source);
    let file = open_regular(path).map_err(io_err)?;
    let raw = BufReader::with_capacity(256 * 1024, RawBytes { file, tap });
    let mut plain: Box<dyn BufRead + Send> = match Compression::of(path) {
        None => Box::new(raw),
        Some(c @ Compression::Gzip) => Box::new(BufReader::with_capacity(
            256 * 1024,
            Decompress {
                inner: flate2::bufread::MultiGzDecoder::new(raw),
                what: c.name(),
            },
        )),
        Some(c @ Compression::Zstd) => Box::new(BufReader::with_capacity(
            256 * 1024,
            Decompress {
                inner: zstd::stream::read::Decoder::with_buffer(raw).map_err(io_err)?,
                what: c.name(),
            },
        )),
    };
    Ok(
        match sniff(plain.fill_buf().map_err(io_err)?, format.encoding) {
            Sniffed::Refuse(what, fix) => {
                return Err(ReadError::NotText {
                    path: path.to_owned(),
                    what,
                    fix,
                })
            }
            Sniffed::Utf8 => Box::new(plain),
            Sniffed::Decode(encoding) => Box::new(BufReader::with_capacity(
                64 * 1024,
                Decoded::new(plain, encoding),
            )),
        },
    )
}

/// When the first non-blank line does not contain the configured delimiter
/// but splits on another common one (`;`, tab, `,`, `|`), a hint naming
/// `CSV_DELIMITER`; rows of one field are then a delimiter mix-up.
pub fn delimiter_hint(path: &Path, format: &CsvFormat) -> Option<String> {
    let text = open_text(path, format, Tap::new(format)).ok()?;
    let first = BufReader::new(text.take(64 * 1024))
        .split(b'\n')
        .map_while(Result::ok)
        .find(|l| !l.iter().all(u8::is_ascii_whitespace))?;
    if first.contains(&format.delimiter) {
        return None;
    }
    let name = |d: u8| match d {
        b'\t' => "\\t".to_owned(),
        d => (d as char).to_string(),
    };
    [b';', b'\t', b',', b'|']
        .into_iter()
        .filter(|d| *d != format.delimiter)
        .find_map(|d| {
            let fields = csv::ReaderBuilder::new()
                .has_headers(false)
                .delimiter(d)
                .from_reader(first.as_slice())
                .byte_records()
                .next()?
                .ok()?
                .len();
            (fields >= 2).then(|| {
                format!(
                    "the first line has no {:?} but splits into {fields} fields on {:?}: set CSV_DELIMITER={}",
                    format.delimiter as char,
                    d as char,
                    name(d)
                )
            })
        })
}

pub struct CsvRecords {
    path: PathBuf,
    format: CsvFormat,
    reader: csv::Reader<LineTracker<Box<dyn BufRead + Send>>>,
    tap: Arc<Tap>,
    columns: Option<Columns>,
    record: ByteRecord,
    eol: u8,
}

/// The line terminator of a file starting with `head`: CR when its first line
/// break is a bare CR, else LF (also for a file without any line break).
fn line_terminator(head: &[u8]) -> u8 {
    match head.iter().position(|b| matches!(b, b'\r' | b'\n')) {
        Some(i) if head[i] == b'\r' && i + 1 < head.len() && head[i + 1] != b'\n' => b'\r',
        Some(i) if head[i] == b'\r' && i + 1 == head.len() => b'\r',
        _ => b'\n',
    }
}

/// Hands fields over in one convention whatever the file's line ending: a line
/// break inside a (quoted) field as `\n`, any other line-end character as `\r`.
/// In an LF file the CR of a CRLF ending (left at the end of the last field, the
/// terminator being LF) is dropped.
fn normalise_line_ends(record: &mut ByteRecord, eol: u8) {
    let Some(last) = record.len().checked_sub(1) else {
        return;
    };
    if eol == b'\n' {
        // The common CRLF case: one field rewritten, no other allocation.
        if let Some(field) = record.get(last).and_then(|f| f.strip_suffix(b"\r")) {
            let field = field.to_vec();
            record.truncate(last);
            record.push_field(&field);
        }
        return;
    }
    if !record
        .iter()
        .any(|f| f.iter().any(|b| matches!(b, b'\r' | b'\n')))
    {
        return;
    }
    let swapped: Vec<Vec<u8>> = record
        .iter()
        .map(|f| {
            f.iter()
                .map(|b| match b {
                    b'\r' => b'\n',
                    b'\n' => b'\r',
                    b => *b,
                })
                .collect()
        })
        .collect();
    let position = record.position().cloned();
    *record = ByteRecord::from(swapped);
    record.set_position(position);
}

impl CsvRecords {
    pub fn open(path: &Path, format: &CsvFormat) -> Result<Self, ReadError> {
        let tap = Tap::new(format);
        let mut text = open_text(path, format, tap.clone())?;
        // The first buffer (nothing consumed).
        let eol = line_terminator(text.fill_buf().map_err(|e| io_error(path, e))?);
        let reader = csv::ReaderBuilder::new()
            .has_headers(false)
            .flexible(true)
            .delimiter(format.delimiter)
            .terminator(csv::Terminator::Any(eol))
            .from_reader(LineTracker::new(text, eol));
        Ok(Self {
            path: path.to_owned(),
            format: *format,
            reader,
            tap,
            columns: None,
            record: ByteRecord::new(),
            eol,
        })
    }

    /// Raw bytes of the file read so far (compressed bytes for an archive).
    pub fn bytes_read(&self) -> u64 {
        self.tap.bytes.load(Ordering::Relaxed)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The column layout, known once the first non-blank record was read.
    pub fn columns(&self) -> Option<Columns> {
        self.columns
    }

    /// The next data row, skipping blank lines and the header.
    pub fn next_row(&mut self) -> Result<Option<RawRow>, ReadError> {
        loop {
            let more = self
                .reader
                .read_byte_record(&mut self.record)
                .map_err(|source| {
                    let start = self.record.position().map_or(0, |p| p.byte());
                    let line = self.reader.get_mut().line_of_record_at(start);
                    let layered = match source.kind() {
                        csv::ErrorKind::Io(e) => layered_error(&self.path, line, e),
                        _ => None,
                    };
                    layered.unwrap_or_else(|| ReadError::Csv {
                        path: self.path.clone(),
                        line,
                        source,
                    })
                })?;
            if !more {
                return Ok(None);
            }
            let start = self.record.position().map_or(0, |p| p.byte());
            let line = self.reader.get_mut().line_of_record_at(start);
            let end = self.reader.position().byte();
            let bytes = self.reader.get_ref().record_bytes(end);
            if bytes.contains(&b'"') {
                let quoting = quoting(bytes, self.format.delimiter, self.eol);
                // A quote that swallowed line breaks is the unbalanced-quote rule
                // (`validate`'s line-break reject); one open on the last line
                // swallowed nothing and would load a cut value.
                if quoting.open && !bytes.contains(&self.eol) {
                    return Err(ReadError::UnclosedQuote {
                        path: self.path.clone(),
                        line,
                    });
                }
                if !quoting.literal.is_empty() {
                    let bytes = bytes.to_vec();
                    keep_literally(&mut self.record, &bytes, &quoting.literal);
                }
            }
            normalise_line_ends(&mut self.record, self.eol);
            if is_blank(&self.record) {
                continue;
            }
            if self.columns.is_none() {
                let header = match self.format.header {
                    HeaderMode::Present => true,
                    HeaderMode::Absent => false,
                    // A first line naming a follower "Email" is data.
                    HeaderMode::Auto => {
                        self.record.iter().any(|f| is_named(f, "email"))
                            && !self.record.iter().any(is_email)
                    }
                };
                if header {
                    self.columns = Some(self.header_columns(line)?);
                    continue;
                }
                self.columns = Some(Columns::POSITIONAL);
            }
            let (offset, raw) = self.reader.get_ref().record_text(end);
            return Ok(Some(RawRow {
                line,
                record: self.record.clone(),
                offset,
                raw,
            }));
        }
    }

    fn header_columns(&self, line: u64) -> Result<Columns, ReadError> {
        let find = |column: &'static str| {
            let mut hits = self
                .record
                .iter()
                .enumerate()
                .filter(|(_, f)| is_named(f, column));
            match (hits.next(), hits.next()) {
                (Some((i, _)), None) => Ok(i),
                (Some(_), Some(_)) => Err(ReadError::DuplicateColumn {
                    path: self.path.clone(),
                    line,
                    column,
                }),
                (None, _) => Err(ReadError::MissingColumn {
                    path: self.path.clone(),
                    line,
                    column,
                    found: self
                        .record
                        .iter()
                        .map(|f| format!("{:?}", String::from_utf8_lossy(f).trim()))
                        .collect::<Vec<_>>()
                        .join(", "),
                }),
            }
        };
        Ok(Columns {
            email: find("email")?,
            full_name: find("full_name")?,
            width: self.record.len(),
        })
    }

    /// Consumes the reader; the hash covers every byte read, so call it after the
    /// last row.
    pub fn finish(self) -> ContentHash {
        ContentHash::from_hasher(&self.tap.hasher.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

fn is_named(field: &[u8], name: &str) -> bool {
    std::str::from_utf8(field).is_ok_and(|f| f.trim().eq_ignore_ascii_case(name))
}

/// How a record's quotes were written, read from its bytes by the state machine
/// the `csv` crate follows (RFC 4180: a quote opens a field only as its first
/// byte, `""` inside stands for one quote).
#[derive(Debug, Default, PartialEq, Eq)]
struct Quoting {
    /// The record ends inside an open quote: the parser met the end of the file
    /// there (anywhere else it reads on to the closing quote).
    open: bool,
    /// Fields (0-based) with text other than whitespace after their closing
    /// quote (`"Bob" Jones`), and their bytes as written: the parser would drop
    /// the quotes, so such a field is kept literally (docs/sync.md#3-read).
    literal: Vec<(usize, std::ops::Range<usize>)>,
}

fn quoting(record: &[u8], delimiter: u8, eol: u8) -> Quoting {
    #[derive(Clone, Copy)]
    enum State {
        Start,
        Plain,
        Quoted,
        /// Just after a quote inside a quoted field: closing, or the first of `""`.
        Closing,
        /// Text after the closing quote; `true` once it holds more than whitespace.
        After(bool),
    }
    let mut out = Quoting::default();
    let (mut state, mut field, mut start) = (State::Start, 0, 0);
    for (i, &b) in record.iter().enumerate() {
        state = match state {
            State::Quoted if b == b'"' => State::Closing,
            State::Quoted => State::Quoted,
            State::Closing if b == b'"' => State::Quoted,
            _ if b == delimiter || b == eol => {
                if let State::After(true) = state {
                    out.literal.push((field, start..i));
                }
                field += 1;
                start = i + 1;
                State::Start
            }
            State::Start if b == b'"' => State::Quoted,
            State::Start | State::Plain => State::Plain,
            State::Closing => State::After(!b.is_ascii_whitespace()),
            State::After(text) => State::After(text || !b.is_ascii_whitespace()),
        };
    }
    if let State::After(true) = state {
        out.literal.push((field, start..record.len()));
    }
    out.open = matches!(state, State::Quoted);
    out
}

/// `record` with the fields of `literal` replaced by their bytes in `raw`.
fn keep_literally(
    record: &mut ByteRecord,
    raw: &[u8],
    literal: &[(usize, std::ops::Range<usize>)],
) {
    let fields: Vec<&[u8]> = record
        .iter()
        .enumerate()
        .map(|(i, f)| {
            literal
                .iter()
                .find(|(at, _)| *at == i)
                .map_or(f, |(_, range)| &raw[range.clone()])
        })
        .collect();
    let position = record.position().cloned();
    let mut rebuilt = ByteRecord::from(fields);
    rebuilt.set_position(position);
    *record = rebuilt;
}

/// Whether a field is a valid email address (then its record is data, never a
/// header, whatever the other fields say).
fn is_email(field: &[u8]) -> bool {
    std::str::from_utf8(field).is_ok_and(|f| crate::domain::Email::parse(f).is_ok())
}

/// A line of only whitespace and delimiters carries no row.
fn is_blank(record: &ByteRecord) -> bool {
    record.iter().all(|f| f.iter().all(u8::is_ascii_whitespace))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    type Rows = Vec<(u64, Vec<String>)>;

    fn read_all(bytes: &[u8], format: CsvFormat) -> Result<(Option<Columns>, Rows), ReadError> {
        read_named(bytes, "", format)
    }

    fn read_named(
        bytes: &[u8],
        suffix: &str,
        format: CsvFormat,
    ) -> Result<(Option<Columns>, Rows), ReadError> {
        let mut file = tempfile::Builder::new().suffix(suffix).tempfile().unwrap();
        file.write_all(bytes).unwrap();
        let mut records = CsvRecords::open(file.path(), &format)?;
        let mut rows = Vec::new();
        while let Some(row) = records.next_row()? {
            rows.push((
                row.line,
                row.record
                    .iter()
                    .map(|f| String::from_utf8_lossy(f).into_owned())
                    .collect(),
            ));
        }
        Ok((records.columns(), rows))
    }

    fn auto() -> CsvFormat {
        CsvFormat::default()
    }

    #[test]
    fn header_by_name_in_any_order_with_extra_columns() {
        let (cols, rows) = read_all(b"id,Full_Name , EMAIL\n1,Ann,a@x.io\n", auto()).unwrap();
        assert_eq!(
            cols,
            Some(Columns {
                email: 2,
                full_name: 1,
                width: 3
            })
        );
        assert_eq!(
            rows,
            vec![(2, vec!["1".into(), "Ann".into(), "a@x.io".into()])]
        );
    }

    #[test]
    fn no_header_means_positional() {
        let (cols, rows) = read_all(b"a@x.io,Ann\nb@x.io,Bob\n", auto()).unwrap();
        assert_eq!(cols, Some(Columns::POSITIONAL));
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].0, 1);
    }

    #[test]
    fn bom_crlf_blank_lines_and_quoted_line_numbers() {
        let input = "\u{feff}email,full_name\r\n\r\na@x.io,\"Doe, \"\"J\"\"\"\r\n   \r\n,\r\nb@x.io,Bob\r\n";
        let (_, rows) = read_all(input.as_bytes(), auto()).unwrap();
        assert_eq!(
            rows,
            vec![
                (3, vec!["a@x.io".into(), "Doe, \"J\"".into()]),
                (6, vec!["b@x.io".into(), "Bob".into()])
            ]
        );
    }

    #[test]
    fn forced_header_without_email_column_is_an_error_naming_the_line() {
        let format = CsvFormat {
            header: HeaderMode::Present,
            ..auto()
        };
        let err = read_all(b"mail,name\n", format).unwrap_err().to_string();
        assert!(err.contains("line 1") && err.contains("\"email\""), "{err}");
        let err = read_all(b"email,name\n", auto()).unwrap_err().to_string();
        assert!(err.contains("\"full_name\""), "{err}");
    }

    #[test]
    fn an_unbalanced_quote_stops_reading_before_memory_grows() {
        let mut text = String::from("email,full_name\na@x.io,\"Ann\n");
        while text.len() <= 2 * MAX_RECORD_BYTES {
            text.push_str("b@x.io,Bob\n");
        }
        let err = read_all(text.as_bytes(), auto()).unwrap_err();
        assert!(
            matches!(err, ReadError::RecordTooLong { line: 2, .. }),
            "{err}"
        );
        assert!(err.is_content());
    }

    #[test]
    fn many_blank_lines_are_not_a_long_record() {
        let mut text = b"a@x.io,Ann\n".to_vec();
        text.extend(std::iter::repeat_n(b'\n', MAX_RECORD_BYTES + 10));
        text.extend_from_slice(b"b@x.io,Bob\n");
        let (_, rows) = read_all(&text, auto()).unwrap();
        assert_eq!(rows[1].0, MAX_RECORD_BYTES as u64 + 12);
    }

    #[test]
    fn line_numbers_count_quoted_line_breaks() {
        let (_, rows) = read_all(b"h,x\na,\"x\ny\"\nb,2\n", auto()).unwrap();
        assert_eq!(rows.iter().map(|r| r.0).collect::<Vec<_>>(), vec![1, 2, 4]);
    }

    #[test]
    fn bare_cr_files_read_with_their_own_line_numbers() {
        let input = b"email,full_name\ra@x.io,Ann\r\r \rb@x.io,\"B\r2\"\rc@x.io,C\r";
        let (_, rows) = read_all(input, auto()).unwrap();
        let lines: Vec<(u64, Vec<String>)> = vec![
            (2, vec!["a@x.io".into(), "Ann".into()]),
            // A line break inside quotes is handed over as '\n', as in an LF file.
            (5, vec!["b@x.io".into(), "B\n2".into()]),
            (7, vec!["c@x.io".into(), "C".into()]),
        ];
        assert_eq!(rows, lines);
    }

    #[test]
    fn a_stray_cr_stays_in_its_field_and_never_splits_a_line() {
        for input in [
            &b"a@x.io,Ann\nb@x.io,Bo\rc@x.io,Cy\nd@x.io,Dee\n"[..],
            &b"a@x.io,Ann\r\nb@x.io,Bo\rc@x.io,Cy\r\nd@x.io,Dee\r\n"[..],
        ] {
            let (_, rows) = read_all(input, auto()).unwrap();
            let got: Vec<(u64, usize)> = rows.iter().map(|r| (r.0, r.1.len())).collect();
            assert_eq!(got, vec![(1, 2), (2, 3), (3, 2)], "{input:?}");
            assert_eq!(rows[1].1[1], "Bo\rc@x.io");
        }
        // In a CR file, an LF is the stray character (handed over as '\r').
        let (_, rows) = read_all(b"a@x.io,Ann\rb@x.io,B\nx\rc@x.io,C\r", auto()).unwrap();
        assert_eq!(rows[1], (2, vec!["b@x.io".into(), "B\rx".into()]));
        assert_eq!(rows[2].0, 3);
    }

    #[test]
    fn the_first_line_break_decides_the_terminator() {
        assert_eq!(line_terminator(b"a,b\rc,d\r"), b'\r');
        assert_eq!(line_terminator(b"a,b\r"), b'\r');
        assert_eq!(line_terminator(b"a,b\r\nc\r"), b'\n');
        assert_eq!(line_terminator(b"a,b\nc\rd"), b'\n');
        assert_eq!(line_terminator(b"a,b"), b'\n');
    }

    #[test]
    fn forced_no_header_reads_a_first_row_named_email_as_data() {
        let format = CsvFormat {
            header: HeaderMode::Absent,
            ..auto()
        };
        let (_, rows) = read_all(b"email,full_name\n", format).unwrap();
        assert_eq!(rows.len(), 1);
    }

    #[test]
    fn a_quote_still_open_at_the_end_of_the_file_refuses_it() {
        for text in [
            &b"a@x.io,Ann\ndee@x.io,\"Dee, Jr. (truncat"[..],
            &b"a@x.io,Ann\r\ndee@x.io,\"Dee, \"\"Jr\"\" (truncat"[..],
            &b"a@x.io,Ann\rdee@x.io,\"Dee"[..],
            &b"\"a@x.io\",Ann\ndee@x.io,\""[..],
        ] {
            let err = read_all(text, auto()).unwrap_err();
            assert!(
                matches!(err, ReadError::UnclosedQuote { line: 2, .. }),
                "{text:?}: {err:?}"
            );
            assert!(
                err.is_content() && err.to_string().contains("truncated"),
                "{err}"
            );
        }
        // One that swallowed line breaks is left to the unbalanced-quote rule
        // (validate rejects the field holding them, refusing the file).
        let (_, rows) = read_all(b"a@x.io,\"Ann\nb@x.io,Bob\n", auto()).unwrap();
        assert_eq!(rows[0].1[1], "Ann\nb@x.io,Bob\n");
        // Closed quotes, at the end of the file too, are fine.
        let (_, rows) = read_all(b"a@x.io,\"Ann, A\"\nb@x.io,\"B \"\"q\"\"\"", auto()).unwrap();
        assert_eq!(rows[1].1[1], "B \"q\"");
    }

    #[test]
    fn text_after_a_closing_quote_keeps_the_field_as_written() {
        let text = "a@x.io,\"Bob\" Jones\nb@x.io,\"Bob, Jr\" Jones,x\n\"c@x.io\" ,\"Cy\"  \r\nd@x.io,Dee \"D\" Doe\n";
        let (_, rows) = read_all(text.as_bytes(), auto()).unwrap();
        let fields: Vec<Vec<String>> = rows.into_iter().map(|r| r.1).collect();
        assert_eq!(
            fields,
            vec![
                vec!["a@x.io".to_string(), "\"Bob\" Jones".into()],
                vec!["b@x.io".into(), "\"Bob, Jr\" Jones".into(), "x".into()],
                // Only whitespace after the closing quote: ordinary quoting.
                vec!["c@x.io ".into(), "Cy  ".into()],
                // A quote inside an unquoted field is literal (the csv crate's rule).
                vec!["d@x.io".into(), "Dee \"D\" Doe".into()],
            ]
        );
        // In a bare-CR file, with a BOM, and in another encoding alike.
        let (_, rows) =
            read_all("\u{feff}a@x.io,\"Bob\" J\rb@x.io,B\r".as_bytes(), auto()).unwrap();
        assert_eq!(rows[0].1[1], "\"Bob\" J");
        let (_, rows) = read_all(&utf16("a@x.io,\"Bö\" J\n", true), auto()).unwrap();
        assert_eq!(rows[0].1[1], "\"Bö\" J");
    }

    #[test]
    fn a_first_line_holding_an_email_address_is_data_not_a_header() {
        let (cols, rows) = read_all(b"info@x.io,Email\nb@x.io,Bob\n", auto()).unwrap();
        assert_eq!(cols, Some(Columns::POSITIONAL));
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0], (1, vec!["info@x.io".into(), "Email".into()]));
        // A header is still a header.
        let (_, rows) = read_all(b"Email,full_name\ninfo@x.io,Email\n", auto()).unwrap();
        assert_eq!(rows.len(), 1);
    }

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

    #[test]
    fn workbooks_utf32_unannounced_archives_and_bare_utf16_are_named_not_read() {
        let bare16: Vec<u8> = "a@x.io,A\n"
            .encode_utf16()
            .flat_map(u16::to_le_bytes)
            .collect();
        let bare16be: Vec<u8> = "a@x.io,A\n"
            .encode_utf16()
            .flat_map(u16::to_be_bytes)
            .collect();
        for (bytes, what) in [
            (bare16, "UTF-16 LE text without"),
            (bare16be, "UTF-16 BE text without"),
            (vec![0xFF, 0xFE, 0, 0, b'a', 0, 0, 0], "UTF-32 LE"),
            (vec![0x1F, 0x8B, 8, 0, 0, 0], "gzip"),
            (vec![0x28, 0xB5, 0x2F, 0xFD, 0], "zstd"),
            (b"PK\x03\x04rest".to_vec(), "ZIP"),
            (vec![0xD0, 0xCF, 0x11, 0xE0, 0], ".xls"),
        ] {
            let err = read_all(&bytes, auto()).unwrap_err();
            let text = err.to_string();
            assert!(
                matches!(err, ReadError::NotText { .. }) && text.contains(what),
                "{what}: {text}"
            );
            assert!(err.is_content());
        }
        // A UTF-8 BOM and plain text are fine.
        assert!(read_all("\u{feff}a@x.io,A\n".as_bytes(), auto()).is_ok());
        assert!(read_all(b"a,b\n", auto()).is_ok());
    }

    #[test]
    fn a_delimiter_mix_up_is_named() {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(b"\nemail;full_name\na@x.io;A\n").unwrap();
        let hint = delimiter_hint(file.path(), &auto()).unwrap();
        assert!(hint.contains("CSV_DELIMITER=;"), "{hint}");
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(b"a@x.io\tA\n").unwrap();
        let hint = delimiter_hint(file.path(), &auto()).unwrap();
        assert!(hint.contains("CSV_DELIMITER=\\t"), "{hint}");
        let semi = CsvFormat {
            delimiter: b';',
            ..auto()
        };
        assert!(delimiter_hint(file.path(), &semi).is_some());
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(b"a@x.io,A\nb@x.io\n").unwrap();
        assert_eq!(delimiter_hint(file.path(), &auto()), None);
    }

    fn utf16(text: &str, le: bool) -> Vec<u8> {
        let bom: &[u8] = if le { &[0xFF, 0xFE] } else { &[0xFE, 0xFF] };
        bom.iter()
            .copied()
            .chain(text.encode_utf16().flat_map(
                |u| {
                    if le {
                        u.to_le_bytes()
                    } else {
                        u.to_be_bytes()
                    }
                },
            ))
            .collect()
    }

    fn with_encoding(label: &str) -> CsvFormat {
        CsvFormat {
            encoding: encoding_rs::Encoding::for_label(label.as_bytes()),
            ..auto()
        }
    }

    #[test]
    fn utf16_with_a_bom_is_decoded_under_auto_with_true_line_numbers() {
        let text = "email\tfull_name\r\nä@x.io\tRené Ünal\r\n\r\nb@x.io\t😀 Bob\r\n";
        let tab = CsvFormat {
            delimiter: b'\t',
            ..auto()
        };
        for le in [true, false] {
            let (_, rows) = read_all(&utf16(text, le), tab).unwrap();
            assert_eq!(
                rows,
                vec![
                    (2, vec!["ä@x.io".into(), "René Ünal".into()]),
                    (4, vec!["b@x.io".into(), "😀 Bob".into()])
                ]
            );
        }
    }

    #[test]
    fn windows_1252_is_decoded_when_set() {
        // "Zoë Ça€" in Windows-1252: ë = EB, Ç = C7, € = 80.
        let bytes = b"email,full_name\nz@x.io,Zo\xEB \xC7a\x80\n";
        let (_, rows) = read_all(bytes, with_encoding("windows-1252")).unwrap();
        assert_eq!(rows[0].1, vec!["z@x.io".to_string(), "Zoë Ça€".into()]);
        // latin1 is the same WHATWG encoding.
        assert_eq!(read_all(bytes, with_encoding("latin1")).unwrap().1, rows);
        // Read as UTF-8 the byte is an invalid name (a reject, not a refusal).
        let (_, raw) = read_all(bytes, auto()).unwrap();
        assert!(std::str::from_utf8(raw[0].1[1].as_bytes()).is_ok());
        assert!(raw[0].1[1].contains('\u{FFFD}'));
    }

    #[test]
    fn invalid_bytes_in_the_chosen_encoding_are_refused_with_line_and_offset() {
        // An unpaired surrogate (D800) on line 2, after the BOM and 6 characters.
        let mut bytes = utf16("a,b\nx@", true);
        bytes.extend_from_slice(&[0x00, 0xD8, b'y', 0]);
        let err = read_all(&bytes, auto()).unwrap_err();
        assert!(
            matches!(
                err,
                ReadError::Encoding {
                    line: 2,
                    offset: 14,
                    ..
                }
            ),
            "{err:?}"
        );
        let text = err.to_string();
        assert!(
            text.contains("CSV_ENCODING") && text.contains("UTF-16LE"),
            "{text}"
        );
        assert!(err.is_content());
        // In a bare-CR file, and in a later chunk of the decoder's output.
        let mut cr = utf16(&"a@x.io,A\r".repeat(20_000), true);
        cr.extend_from_slice(&[0x00, 0xD8, b'y', 0]);
        let err = read_all(&cr, auto()).unwrap_err();
        assert!(
            matches!(
                err,
                ReadError::Encoding {
                    line: 20_001,
                    offset: 360_002,
                    ..
                }
            ),
            "{err:?}"
        );
        // Shift_JIS: 0x81 0x20 is not a valid pair.
        let err = read_all(b"a@x.io,A\nb@x.io,\x81\x20\n", with_encoding("shift_jis")).unwrap_err();
        assert!(
            matches!(
                err,
                ReadError::Encoding {
                    line: 2,
                    offset: 16,
                    ..
                }
            ),
            "{err:?}"
        );
    }

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        enc.write_all(bytes).unwrap();
        enc.finish().unwrap()
    }

    #[test]
    fn gz_and_zst_files_are_decompressed_and_hashed_raw() {
        let text = b"email,full_name\na@x.io,Ann\n\nb@x.io,Bob\n";
        let plain = read_all(text, auto()).unwrap();
        let zst = zstd::encode_all(&text[..], 3).unwrap();
        for (bytes, suffix) in [(gzip(text), ".csv.gz"), (zst, ".csv.zst")] {
            assert_eq!(read_named(&bytes, suffix, auto()).unwrap(), plain);
            let mut file = tempfile::Builder::new().suffix(suffix).tempfile().unwrap();
            file.write_all(&bytes).unwrap();
            let mut records = CsvRecords::open(file.path(), &auto()).unwrap();
            while records.next_row().unwrap().is_some() {}
            assert_eq!(records.bytes_read(), bytes.len() as u64);
            assert_eq!(records.finish(), hash_file(file.path(), &auto()).unwrap());
        }
        // Compressed UTF-16 is decompressed, then decoded.
        let (_, rows) = read_named(&gzip(&utf16("a@x.io,Ä\n", true)), ".gz", auto()).unwrap();
        assert_eq!(rows, vec![(1, vec!["a@x.io".into(), "Ä".into()])]);
    }

    #[test]
    fn a_truncated_or_corrupt_archive_is_refused() {
        let mut text = String::from("email,full_name\n");
        for i in 0..20_000 {
            text.push_str(&format!("u{i}@x.io,User {i}\n"));
        }
        let gz = gzip(text.as_bytes());
        let zst = zstd::encode_all(text.as_bytes(), 3).unwrap();
        for (bytes, suffix, what) in [
            (&gz[..gz.len() - 4], ".gz", "gzip"),
            (&gz[..gz.len() / 2], ".gz", "gzip"),
            (&zst[..zst.len() - 3], ".zst", "zstd"),
            (&b"not gzip at all\n"[..], ".gz", "gzip"),
        ] {
            let err = read_named(bytes, suffix, auto()).unwrap_err();
            assert!(
                matches!(err, ReadError::Archive { what: w, .. } if w == what),
                "{suffix} {}: {err:?}",
                bytes.len()
            );
            assert!(err.is_content());
            assert!(err.to_string().contains("truncated or corrupt"), "{err}");
        }
        // A corrupted checksum too.
        let mut bad = gz.clone();
        let n = bad.len();
        bad[n - 8] ^= 0xFF;
        assert!(matches!(
            read_named(&bad, ".gz", auto()),
            Err(ReadError::Archive { .. })
        ));
    }

    #[test]
    fn a_rows_text_is_kept_cut_and_without_its_line_break() {
        let long = "n".repeat(2 * RAW_LINE_LIMIT);
        let text = format!("a@x.io,A\r\n\r\nb@x.io,\"B,\"\"q\"\"\"\r\nc@x.io,{long}\n");
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(text.as_bytes()).unwrap();
        let mut records = CsvRecords::open(file.path(), &auto()).unwrap();
        let a = records.next_row().unwrap().unwrap();
        assert_eq!((a.offset, a.raw.as_slice()), (0, &b"a@x.io,A"[..]));
        let b = records.next_row().unwrap().unwrap();
        assert_eq!((b.line, b.offset), (3, 12));
        assert_eq!(b.raw, b"b@x.io,\"B,\"\"q\"\"\"");
        let c = records.next_row().unwrap().unwrap();
        assert_eq!(c.raw.len(), RAW_LINE_LIMIT);
        assert!(c.raw.starts_with(b"c@x.io,nnn"));
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic_the_reader(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512)) {
            let _ = read_all(&bytes, auto());
            let _ = read_all(&bytes, CsvFormat { delimiter: b';', header: HeaderMode::Present, encoding: None });
            let _ = read_all(&bytes, with_encoding("utf-16le"));
            let _ = read_named(&bytes, ".gz", auto());
            let _ = read_named(&bytes, ".zst", auto());
        }
    }
}
