//! `CsvRecords`: the `csv` crate over the line-tracked text, handing out data
//! rows with their line numbers and text, after blank lines and the header
//! (found by name, or decided by `CSV_HEADER`) are skipped and the quoting
//! rules applied; the hash and the progress of the bytes read.

use super::error::{io_error, layered_error};
use super::hash::Tap;
use super::lines::{line_terminator, normalise_line_ends, LineTracker};
use super::quoting::{keep_literally, quoting};
use super::text::open_text;
use super::{Columns, RawRow, ReadError};
use crate::config::{CsvFormat, HeaderMode};
use crate::domain::ContentHash;
use csv::ByteRecord;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// How the first record is told to be a header, and what it must name.
#[derive(Clone, Debug)]
enum HeaderRule {
    /// The followers file: `email` and `full_name` (`Columns`).
    Followers,
    /// A generic mirror's file: the configured columns' `source`s
    /// (docs/mirrors.md#reading); the header itself is handed out
    /// (`CsvRecords::header`) for the mirror to find its columns in.
    Named(Vec<String>),
}

pub(crate) struct CsvRecords {
    path: PathBuf,
    rule: HeaderRule,
    /// The first non-blank record was seen (header or not).
    decided: bool,
    /// A `Named` file's header, once read.
    header: Option<ByteRecord>,
    format: CsvFormat,
    reader: csv::Reader<LineTracker<Box<dyn BufRead + Send>>>,
    tap: Arc<Tap>,
    columns: Option<Columns>,
    record: ByteRecord,
    eol: u8,
}

impl CsvRecords {
    pub(crate) fn open(path: &Path, format: &CsvFormat) -> Result<Self, ReadError> {
        Self::open_with(path, format, HeaderRule::Followers)
    }

    /// A generic mirror's file, whose columns are named `sources` (trimmed,
    /// without regard to case). With `CSV_HEADER=auto` the first record is a
    /// header when one of its fields names a column and none is a valid email
    /// address, as for the followers file. A quoted field still open at the end
    /// of the file refuses it even where it swallowed line breaks (a mirror's
    /// text may hold line breaks, so no later check would catch it).
    pub(crate) fn open_named(
        path: &Path,
        format: &CsvFormat,
        sources: Vec<String>,
    ) -> Result<Self, ReadError> {
        Self::open_with(path, format, HeaderRule::Named(sources))
    }

    /// The header of a file opened by `open_named`, once the first record was
    /// read; `None` before or without one.
    pub(crate) fn header(&self) -> Option<&ByteRecord> {
        self.header.as_ref()
    }

    fn open_with(path: &Path, format: &CsvFormat, rule: HeaderRule) -> Result<Self, ReadError> {
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
            rule,
            decided: false,
            header: None,
            format: *format,
            reader,
            tap,
            columns: None,
            record: ByteRecord::new(),
            eol,
        })
    }

    /// Raw bytes of the file read so far (compressed bytes for an archive).
    pub(crate) fn bytes_read(&self) -> u64 {
        self.tap.bytes.load(Ordering::Relaxed)
    }

    /// The column layout, known once the first non-blank record was read.
    pub(crate) fn columns(&self) -> Option<Columns> {
        self.columns
    }

    /// The next data row, skipping blank lines and the header.
    pub(crate) fn next_row(&mut self) -> Result<Option<RawRow>, ReadError> {
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
                let named = matches!(self.rule, HeaderRule::Named(_));
                if quoting.open && (named || !bytes.contains(&self.eol)) {
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
            if !self.decided {
                self.decided = true;
                let names = |f: &[u8]| match &self.rule {
                    HeaderRule::Followers => is_named(f, "email"),
                    HeaderRule::Named(sources) => sources.iter().any(|s| is_named(f, s.trim())),
                };
                let header = match self.format.header {
                    HeaderMode::Present => true,
                    HeaderMode::Absent => false,
                    // A first line naming a follower "Email" is data.
                    HeaderMode::Auto => {
                        self.record.iter().any(names) && !self.record.iter().any(is_email)
                    }
                };
                match (&self.rule, header) {
                    (HeaderRule::Followers, true) => {
                        self.columns = Some(self.header_columns(line)?);
                        continue;
                    }
                    (HeaderRule::Followers, false) => self.columns = Some(Columns::POSITIONAL),
                    (HeaderRule::Named(_), true) => {
                        self.header = Some(self.record.clone());
                        continue;
                    }
                    (HeaderRule::Named(_), false) => {}
                }
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
    pub(crate) fn finish(self) -> ContentHash {
        ContentHash::from_hasher(&self.tap.hasher.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

fn is_named(field: &[u8], name: &str) -> bool {
    std::str::from_utf8(field).is_ok_and(|f| f.trim().eq_ignore_ascii_case(name))
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
    use crate::pipeline::read::test_support::{auto, read_all, read_named, with_encoding};

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
    fn forced_no_header_reads_a_first_row_named_email_as_data() {
        let format = CsvFormat {
            header: HeaderMode::Absent,
            ..auto()
        };
        let (_, rows) = read_all(b"email,full_name\n", format).unwrap();
        assert_eq!(rows.len(), 1);
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

    /// A mirror's file read to the end: its header (as text) and rows.
    fn read_mirror(
        bytes: &[u8],
        format: CsvFormat,
        sources: &[&str],
    ) -> Result<
        (
            Option<Vec<String>>,
            crate::pipeline::read::test_support::Rows,
        ),
        ReadError,
    > {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        std::io::Write::write_all(&mut file, bytes).unwrap();
        let sources = sources.iter().map(|s| (*s).to_owned()).collect();
        let mut records = CsvRecords::open_named(file.path(), &format, sources)?;
        let text = |r: &ByteRecord| -> Vec<String> {
            r.iter()
                .map(|f| String::from_utf8_lossy(f).into_owned())
                .collect()
        };
        let mut rows = Vec::new();
        while let Some(row) = records.next_row()? {
            rows.push((row.line, text(&row.record)));
        }
        Ok((records.header().map(text), rows))
    }

    #[test]
    fn a_mirror_header_is_found_by_any_of_its_names_and_handed_out() {
        let (header, rows) = read_mirror(
            b"Region, ID ,Full Name
eu,1,Ann
",
            auto(),
            &["id", "full name"],
        )
        .unwrap();
        assert_eq!(header.unwrap(), ["Region", " ID ", "Full Name"]);
        assert_eq!(rows, vec![(2, vec!["eu".into(), "1".into(), "Ann".into()])]);
        // No field names a column: data. An address among them: data.
        let (header, rows) = read_mirror(
            b"1,Ann
",
            auto(),
            &["id", "name"],
        )
        .unwrap();
        assert_eq!((header, rows.len()), (None, 1));
        let (header, _) = read_mirror(
            b"id,a@x.io
",
            auto(),
            &["id", "email"],
        )
        .unwrap();
        assert_eq!(header, None);
        let absent = CsvFormat {
            header: HeaderMode::Absent,
            ..auto()
        };
        let (header, rows) = read_mirror(
            b"id,name
",
            absent,
            &["id", "name"],
        )
        .unwrap();
        assert_eq!((header, rows.len()), (None, 1));
    }

    #[test]
    fn a_mirror_keeps_line_breaks_in_quoted_fields_but_refuses_a_quote_open_at_the_end() {
        let (_, rows) = read_mirror(
            b"id,note
1,\"two\nlines\"
2,x
",
            auto(),
            &["id", "note"],
        )
        .unwrap();
        assert_eq!(
            rows,
            vec![
                (2, vec!["1".into(), "two\nlines".into()]),
                (4, vec!["2".into(), "x".into()])
            ]
        );
        let e = read_mirror(
            b"id,note
1,\"open
2,x
",
            auto(),
            &["id", "note"],
        )
        .unwrap_err();
        assert!(matches!(e, ReadError::UnclosedQuote { line: 2, .. }), "{e}");
        // The followers file leaves that to validate's line-break reject.
        assert!(read_all(
            b"email,full_name
a@x.io,\"open
b@x.io,x
",
            auto()
        )
        .is_ok());
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
