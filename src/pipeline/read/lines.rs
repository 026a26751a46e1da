//! Lines: the file's line terminator (its first line break decides), true line
//! numbers and each record's text as read (`LineTracker`, which also stops a
//! record running past `MAX_RECORD_BYTES` with `RecordTooLong`), and fields
//! handed over in one line-end convention (`normalise_line_ends`).

use super::encoding::Malformed;
use super::{MAX_RECORD_BYTES, RAW_LINE_LIMIT};
use csv::ByteRecord;
use std::io::{self, Read};

/// Keeps the (decoded) bytes not yet attributed to a record, so records get true
/// line numbers (the `csv` crate's own line count is off after CRLF and blank
/// lines) and a rejected row's text can be reported.
pub(super) struct LineTracker<R> {
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
    pub(super) fn new(inner: R, eol: u8) -> Self {
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
        crate::convert::len(bytes.iter().filter(|b| **b == self.eol).count())
    }

    /// How many of the bytes not yet attributed (`pending[head..]`) lie before byte
    /// `at` of the text: all of them when `at` is further on. The distance
    /// saturates at `usize::MAX` (only possible with 32-bit pointers), which is the
    /// right meaning: it is capped at the bytes held either way.
    fn live_before(&self, at: u64) -> usize {
        let live = self.pending.len() - self.head;
        usize::try_from(at.saturating_sub(self.pending_start))
            .unwrap_or(usize::MAX)
            .min(live)
    }

    /// The 1-based line of the record whose span starts at byte `start` (the
    /// span may begin with the rest of the previous terminator and blank lines).
    pub(super) fn line_of_record_at(&mut self, start: u64) -> u64 {
        let live = &self.pending[self.head..];
        let upto = self.live_before(start);
        self.lines += self.count_lines(&live[..upto]);
        self.head += upto;
        self.pending_start += crate::convert::len(upto);
        let leading = crate::convert::len(
            self.pending[self.head..]
                .iter()
                .take_while(|b| matches!(b, b'\r' | b'\n'))
                .filter(|b| **b == self.eol)
                .count(),
        );
        1 + self.lines + leading
    }

    /// The bytes of the record just located by `line_of_record_at`, which ends at
    /// byte `end`, as read: without the line breaks before it (nor a UTF-8 BOM),
    /// its own terminator included.
    pub(super) fn record_bytes(&self, end: u64) -> &[u8] {
        let live = &self.pending[self.head..];
        let len = self.live_before(end);
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
    pub(super) fn record_text(&self, end: u64) -> (u64, Vec<u8>) {
        let live = &self.pending[self.head..];
        let len = self.live_before(end);
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
        (
            self.pending_start + crate::convert::len(lead),
            text.to_vec(),
        )
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
            self.pending_start += crate::convert::len(blank);
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
pub(super) struct RecordTooLong;

/// The line terminator of a file starting with `head`: CR when its first line
/// break is a bare CR, else LF (also for a file without any line break).
pub(super) fn line_terminator(head: &[u8]) -> u8 {
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
pub(super) fn normalise_line_ends(record: &mut ByteRecord, eol: u8) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::read::test_support::{auto, read_all};
    use crate::pipeline::read::{CsvRecords, ReadError};
    use std::io::Write;

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
}
