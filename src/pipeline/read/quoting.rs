//! Quoting: how a record's quotes were written, checked against its bytes (a
//! quote still open at the end of the file, text after a closing quote), and
//! such fields kept as written.

use csv::ByteRecord;

/// How a record's quotes were written, read from its bytes by the state machine
/// the `csv` crate follows (RFC 4180: a quote opens a field only as its first
/// byte, `""` inside stands for one quote).
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Quoting {
    /// The record ends inside an open quote: the parser met the end of the file
    /// there (anywhere else it reads on to the closing quote).
    pub(super) open: bool,
    /// Fields (0-based) with text other than whitespace after their closing
    /// quote (`"Bob" Jones`), and their bytes as written: the parser would drop
    /// the quotes, so such a field is kept literally (docs/sync.md#3-read).
    pub(super) literal: Vec<(usize, std::ops::Range<usize>)>,
}

pub(super) fn quoting(record: &[u8], delimiter: u8, eol: u8) -> Quoting {
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
pub(super) fn keep_literally(
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

#[cfg(test)]
mod tests {
    use crate::pipeline::read::test_support::{auto, read_all, utf16};
    use crate::pipeline::read::ReadError;

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
}
