//! Read: file bytes → CSV records with their line numbers, streaming.
//!
//! Handles the UTF-8 BOM, LF, CRLF and bare-CR (old Mac) line endings, RFC 4180
//! quoting (the `csv` crate), blank lines, and the header: with `CSV_HEADER=auto` the first row is a header when any
//! of its fields, trimmed and case-insensitive, is `email`. Every byte read also
//! feeds the content hash, so the hash recorded for a sync is the hash of exactly
//! the bytes that were loaded.
//!
//! Line endings: the first line break of the file decides. A bare CR there makes
//! CR the line terminator of the whole file; otherwise LF is, and a CR right before
//! it is part of the terminator (CRLF). Any other CR (or, in a CR file, an LF) is
//! not a line break: it stays in its field and `validate` rejects that row (a
//! stray CR never splits a line). Line numbers count the file's terminator, so
//! they are right for all three conventions.

use crate::config::{CsvFormat, HeaderMode};
use crate::domain::ContentHash;
use csv::ByteRecord;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

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
    #[error("{path}: the file is {what}, not UTF-8 CSV; nothing was read ({fix})")]
    NotText {
        path: PathBuf,
        what: &'static str,
        fix: &'static str,
    },
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

/// A data row: its first line in the file and its raw fields.
#[derive(Debug)]
pub struct RawRow {
    pub line: u64,
    pub record: ByteRecord,
}

/// Feeds everything it reads into a blake3 hasher, and keeps the bytes not yet
/// attributed to a record so records get true line numbers (the `csv` crate's own
/// line count is off after CRLF and blank lines).
struct HashingReader<R> {
    inner: R,
    hasher: blake3::Hasher,
    /// Bytes from offset `pending_start` on.
    pending: Vec<u8>,
    pending_start: u64,
    /// Line breaks before `pending_start`.
    lines: u64,
    /// The file's line terminator (`\n`, or `\r` for an old Mac file).
    eol: u8,
}

impl<R> HashingReader<R> {
    fn new(inner: R, hasher: blake3::Hasher, eol: u8) -> Self {
        Self {
            inner,
            hasher,
            pending: Vec::new(),
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
        let upto = (start.saturating_sub(self.pending_start) as usize).min(self.pending.len());
        self.lines += self.count_lines(&self.pending[..upto]);
        self.pending.drain(..upto);
        self.pending_start += upto as u64;
        let leading = self
            .pending
            .iter()
            .take_while(|b| matches!(b, b'\r' | b'\n'))
            .filter(|b| **b == self.eol)
            .count() as u64;
        1 + self.lines + leading
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
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
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.pending.extend_from_slice(&buf[..n]);
        Ok(n)
    }
}

/// The marker error `HashingReader` stops the CSV reader with.
#[derive(Debug, thiserror::Error)]
#[error("record too long")]
struct RecordTooLong;

/// A hasher primed with the settings that decide how bytes become rows: the same
/// bytes read with another delimiter or header mode are a different input.
fn settings_hasher(format: &CsvFormat) -> blake3::Hasher {
    let mut hasher = blake3::Hasher::new();
    hasher.update(b"followers-etl/v1\0");
    hasher.update(&[format.delimiter]);
    hasher.update(match format.header {
        HeaderMode::Auto => b"auto\0",
        HeaderMode::Present => b"true\0",
        HeaderMode::Absent => b"fals\0",
    });
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

/// The content hash of `path` under `format`, read in one streaming pass.
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

/// What a file that is not UTF-8 text is, from its first bytes, and what to do
/// about it. (Decoding other encodings is not supported.)
fn sniff(head: &[u8]) -> Option<(&'static str, &'static str)> {
    const RESAVE: &str = "save it as \"CSV UTF-8\", or convert it with iconv -t UTF-8";
    const UNPACK: &str = "decompress it first";
    let utf16_without_bom = |a: usize, b: usize| {
        head.len() >= 4
            && head[a] == 0
            && head[a + 2] == 0
            && head[b].is_ascii_graphic()
            && head[b + 2].is_ascii_graphic()
    };
    Some(match head {
        [0xFF, 0xFE, 0, 0, ..] => ("UTF-32 LE text (it starts with FF FE 00 00)", RESAVE),
        [0, 0, 0xFE, 0xFF, ..] => ("UTF-32 BE text (it starts with 00 00 FE FF)", RESAVE),
        [0xFF, 0xFE, ..] => (
            "UTF-16 LE text (it starts with FF FE, as Excel's \"Unicode Text\" does)",
            RESAVE,
        ),
        [0xFE, 0xFF, ..] => ("UTF-16 BE text (it starts with FE FF)", RESAVE),
        [0x1F, 0x8B, ..] => ("gzip-compressed (it starts with 1F 8B)", UNPACK),
        [0x28, 0xB5, 0x2F, 0xFD, ..] => ("zstd-compressed (it starts with 28 B5 2F FD)", UNPACK),
        [b'P', b'K', 3, 4, ..] => (
            "a ZIP archive, e.g. an Excel .xlsx workbook (it starts with PK 03 04)",
            "export the sheet as \"CSV UTF-8\", or unzip it",
        ),
        [0xD0, 0xCF, 0x11, 0xE0, ..] => (
            "an Excel 97-2003 .xls workbook (it starts with D0 CF 11 E0)",
            "export the sheet as \"CSV UTF-8\"",
        ),
        _ if utf16_without_bom(1, 0) => ("UTF-16 LE text without a byte order mark", RESAVE),
        _ if utf16_without_bom(0, 1) => ("UTF-16 BE text without a byte order mark", RESAVE),
        _ => return None,
    })
}

/// When the first non-blank line does not contain the configured delimiter
/// but splits on another common one (`;`, tab, `,`, `|`), a hint naming
/// `CSV_DELIMITER`; rows of one field are then a delimiter mix-up.
pub fn delimiter_hint(path: &Path, format: &CsvFormat) -> Option<String> {
    let file = open_regular(path).ok()?;
    let first = BufReader::new(file.take(64 * 1024))
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
    reader: csv::Reader<HashingReader<BufReader<File>>>,
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
        let io_err = |source| ReadError::Io {
            path: path.to_owned(),
            source,
        };
        let file = open_regular(path).map_err(io_err)?;
        let mut inner = BufReader::with_capacity(256 * 1024, file);
        if let Some((what, fix)) = sniff(inner.fill_buf().map_err(io_err)?) {
            return Err(ReadError::NotText {
                path: path.to_owned(),
                what,
                fix,
            });
        }
        Ok(Self::from_reader(path, format, inner))
    }

    fn from_reader(path: &Path, format: &CsvFormat, mut inner: BufReader<File>) -> Self {
        // The first buffer (nothing consumed: the hash still sees every byte).
        let eol = inner.fill_buf().map_or(b'\n', line_terminator);
        let reader = csv::ReaderBuilder::new()
            .has_headers(false)
            .flexible(true)
            .delimiter(format.delimiter)
            .terminator(csv::Terminator::Any(eol))
            .from_reader(HashingReader::new(inner, settings_hasher(format), eol));
        Self {
            path: path.to_owned(),
            format: *format,
            reader,
            columns: None,
            record: ByteRecord::new(),
            eol,
        }
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
                    let too_long = matches!(source.kind(), csv::ErrorKind::Io(e)
                        if e.get_ref().is_some_and(|inner| inner.is::<RecordTooLong>()));
                    let start = self.record.position().map_or(0, |p| p.byte());
                    let line = self.reader.get_mut().line_of_record_at(start);
                    if too_long {
                        ReadError::RecordTooLong {
                            path: self.path.clone(),
                            line,
                        }
                    } else {
                        ReadError::Csv {
                            path: self.path.clone(),
                            line,
                            source,
                        }
                    }
                })?;
            if !more {
                return Ok(None);
            }
            let start = self.record.position().map_or(0, |p| p.byte());
            let line = self.reader.get_mut().line_of_record_at(start);
            normalise_line_ends(&mut self.record, self.eol);
            if is_blank(&self.record) {
                continue;
            }
            if self.columns.is_none() {
                let header = match self.format.header {
                    HeaderMode::Present => true,
                    HeaderMode::Absent => false,
                    HeaderMode::Auto => self.record.iter().any(|f| is_named(f, "email")),
                };
                if header {
                    self.columns = Some(self.header_columns(line)?);
                    continue;
                }
                self.columns = Some(Columns::POSITIONAL);
            }
            return Ok(Some(RawRow {
                line,
                record: self.record.clone(),
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
        ContentHash::from_hasher(&self.reader.into_inner().hasher)
    }
}

fn is_named(field: &[u8], name: &str) -> bool {
    std::str::from_utf8(field).is_ok_and(|f| f.trim().eq_ignore_ascii_case(name))
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
        let mut file = tempfile::NamedTempFile::new().unwrap();
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
    fn utf16_and_compressed_files_are_named_not_read() {
        let utf16le: Vec<u8> = [0xFF, 0xFE]
            .into_iter()
            .chain(
                "email,full_name\n"
                    .encode_utf16()
                    .flat_map(u16::to_le_bytes),
            )
            .collect();
        let utf16be: Vec<u8> = [0xFE, 0xFF]
            .into_iter()
            .chain("a@x.io,A\n".encode_utf16().flat_map(u16::to_be_bytes))
            .collect();
        let bare16: Vec<u8> = "a@x.io,A\n"
            .encode_utf16()
            .flat_map(u16::to_le_bytes)
            .collect();
        for (bytes, what) in [
            (utf16le, "UTF-16 LE"),
            (utf16be, "UTF-16 BE"),
            (bare16, "UTF-16 LE text without"),
            (vec![0x1F, 0x8B, 8, 0, 0, 0], "gzip"),
            (vec![0x28, 0xB5, 0x2F, 0xFD, 0], "zstd"),
            (b"PK\x03\x04rest".to_vec(), "ZIP"),
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

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic_the_reader(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512)) {
            let _ = read_all(&bytes, auto());
            let _ = read_all(&bytes, CsvFormat { delimiter: b';', header: HeaderMode::Present });
        }
    }
}
