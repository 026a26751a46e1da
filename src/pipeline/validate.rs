//! Validate: a raw CSV row → a `Follower`, or a `Reject` with its line and reason.
//! Pure (no I/O), so every rule is unit-tested here.

use super::read::{Columns, RawRow};
use crate::domain::{Email, EmailError, FullName, FullNameError};
use std::fmt;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Follower {
    pub line: u64,
    pub email: Email,
    pub full_name: FullName,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RejectReason {
    FieldCount {
        expected: usize,
        found: usize,
    },
    /// `offset`: of the first invalid byte in the text (decompressed), from 0.
    InvalidUtf8 {
        column: &'static str,
        offset: u64,
    },
    /// A field (1-based, any column) spans lines: taken as an unbalanced quote.
    LineBreak {
        field: usize,
    },
    /// A carriage return that does not end a line (a stray CR, or a file mixing
    /// line endings): a plain reject, never a split of the line.
    CarriageReturn {
        field: usize,
    },
    Email(EmailError),
    FullName(FullNameError),
}

impl fmt::Display for RejectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::FieldCount { expected, found } => {
                write!(f, "expected {expected} fields, found {found}")
            }
            Self::InvalidUtf8 { column, offset } => write!(
                f,
                "{column} is not valid UTF-8 (byte {offset}; if the file is in another encoding, set CSV_ENCODING, e.g. windows-1252)"
            ),
            Self::LineBreak { field } => {
                write!(
                    f,
                    "field {field} contains a line break (is a quote unbalanced?)"
                )
            }
            Self::CarriageReturn { field } => write!(
                f,
                "field {field} contains a carriage return that does not end the line (a stray CR, or mixed line endings)"
            ),
            Self::Email(e) => e.fmt(f),
            Self::FullName(e) => e.fmt(f),
        }
    }
}

/// A row that cannot be loaded. When its email is still valid (say, the name is
/// too long) `email` keeps it, so the follower is protected from deletion.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reject {
    pub line: u64,
    pub reason: RejectReason,
    pub email: Option<Email>,
}

impl fmt::Display for Reject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.reason)
    }
}

fn text<'a>(row: &'a RawRow, index: usize, column: &'static str) -> Result<&'a str, RejectReason> {
    let bytes = row.record.get(index).unwrap_or_default();
    std::str::from_utf8(bytes).map_err(|_| RejectReason::InvalidUtf8 {
        column,
        offset: row.offset + invalid_utf8_at(&row.raw),
    })
}

/// Where the first invalid UTF-8 sequence of a row's text starts (0 when the
/// text, cut to its reported length, shows none).
fn invalid_utf8_at(raw: &[u8]) -> u64 {
    match std::str::from_utf8(raw) {
        Err(e) if e.error_len().is_some() => crate::convert::len(e.valid_up_to()),
        _ => 0,
    }
}

pub(crate) fn validate(row: &RawRow, columns: &Columns) -> Result<Follower, Reject> {
    let reject = |reason, email| Reject {
        line: row.line,
        reason,
        email,
    };
    // First, in every column (also ignored ones): a quote left open swallows the
    // following lines into one field, whatever the field count turns out to be.
    // The reader hands over line breaks as '\n' and stray line-end characters as
    // '\r', whatever the file's line ending (see `read/lines.rs`, `normalise_line_ends`).
    let field_with = |byte: u8| row.record.iter().position(|f| f.contains(&byte));
    if let Some(i) = field_with(b'\n') {
        return Err(reject(RejectReason::LineBreak { field: i + 1 }, None));
    }
    let email = text(row, columns.email, "email")
        .and_then(|e| Email::parse(e).map_err(RejectReason::Email));
    if let Some(i) = field_with(b'\r') {
        return Err(reject(
            RejectReason::CarriageReturn { field: i + 1 },
            email.ok(),
        ));
    }
    if row.record.len() != columns.width {
        let reason = RejectReason::FieldCount {
            expected: columns.width,
            found: row.record.len(),
        };
        return Err(reject(reason, email.ok()));
    }
    let email = email.map_err(|reason| reject(reason, None))?;
    let full_name = text(row, columns.full_name, "full_name")
        .and_then(|n| FullName::parse(n).map_err(RejectReason::FullName))
        .map_err(|reason| reject(reason, Some(email.clone())))?;
    Ok(Follower {
        line: row.line,
        email,
        full_name,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use csv::ByteRecord;

    fn row(fields: &[&[u8]]) -> RawRow {
        RawRow {
            line: 7,
            record: ByteRecord::from(fields.to_vec()),
            offset: 100,
            raw: fields.join(&b","[..]),
        }
    }

    fn reason(fields: &[&[u8]]) -> RejectReason {
        validate(&row(fields), &Columns::POSITIONAL)
            .unwrap_err()
            .reason
    }

    #[test]
    fn valid_row_is_normalised() {
        let f = validate(&row(&[b" Ann@X.io ", b"  Ann Lee "]), &Columns::POSITIONAL).unwrap();
        assert_eq!(
            (f.line, f.email.as_str(), f.full_name.as_str()),
            (7, "ann@x.io", "Ann Lee")
        );
    }

    #[test]
    fn each_reject_reason_carries_the_line() {
        assert_eq!(
            reason(&[b"a@x.io"]),
            RejectReason::FieldCount {
                expected: 2,
                found: 1
            }
        );
        assert_eq!(
            reason(&[b"a@x.io", b"A", b"extra"]),
            RejectReason::FieldCount {
                expected: 2,
                found: 3
            }
        );
        assert_eq!(
            reason(&[b"a\xff@x.io", b"A"]),
            RejectReason::InvalidUtf8 {
                column: "email",
                offset: 101
            }
        );
        assert_eq!(
            reason(&[b"a@x.io", b"\xc3("]),
            RejectReason::InvalidUtf8 {
                column: "full_name",
                offset: 107
            }
        );
        assert_eq!(
            reason(&[b"a@x.io", b"A\nb@x.io,B"]),
            RejectReason::LineBreak { field: 2 }
        );
        // Checked before the field count, and in every column.
        assert_eq!(
            reason(&[b"a@x.io", b"A", b"n\nb@x.io,B,n"]),
            RejectReason::LineBreak { field: 3 }
        );
        assert_eq!(
            reason(&[b"a@x.io\nb@x.io"]),
            RejectReason::LineBreak { field: 1 }
        );
        assert!(matches!(
            reason(&[b"nope", b"A"]),
            RejectReason::Email(EmailError::NoAt(_))
        ));
        assert_eq!(
            reason(&[b"a@x.io", b"A\0"]),
            RejectReason::FullName(FullNameError::Nul)
        );
        let r = validate(&row(&[b"nope", b"A"]), &Columns::POSITIONAL).unwrap_err();
        assert_eq!(r.line, 7);
        assert!(r.to_string().starts_with("line 7: "), "{r}");
    }

    #[test]
    fn a_reject_with_a_valid_email_protects_that_follower() {
        let long = "n".repeat(256);
        let r = validate(&row(&[b"A@x.io", long.as_bytes()]), &Columns::POSITIONAL).unwrap_err();
        assert_eq!(r.email.unwrap().as_str(), "a@x.io");
        let r = validate(&row(&[b"A@x.io", b"Ann", b"x"]), &Columns::POSITIONAL).unwrap_err();
        assert_eq!(r.email.unwrap().as_str(), "a@x.io");
        let r = validate(&row(&[b"bad", b"Ann"]), &Columns::POSITIONAL).unwrap_err();
        assert_eq!(r.email, None);
    }

    #[test]
    fn a_stray_carriage_return_is_a_plain_reject_that_still_protects() {
        let r = validate(&row(&[b"A@x.io", b"Ann\rLee"]), &Columns::POSITIONAL).unwrap_err();
        assert_eq!(r.reason, RejectReason::CarriageReturn { field: 2 });
        assert!(r.to_string().contains("carriage return"), "{r}");
        assert_eq!(r.email.unwrap().as_str(), "a@x.io");
        // A line break is still the unbalanced-quote rule, even next to a CR.
        assert_eq!(
            reason(&[b"a@x.io", b"A\r\nB"]),
            RejectReason::LineBreak { field: 2 }
        );
    }
}
