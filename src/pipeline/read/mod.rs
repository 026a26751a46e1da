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
//!
//! How the layers stack, bottom up, one file each (all streaming `Read`s):
//!
//! ```text
//! file (hash: open_regular; RawBytes feeds the Tap: the hash and the byte count)
//!   → Decompress     (compression: .gz / .zst, by the file's name)
//!   → Decoded        (encoding: to UTF-8 when sniff says so; UTF-8 passes through)
//!   → LineTracker    (lines: true line numbers, the text of each record)
//!   → csv::Reader    (records: CsvRecords, the header, quoting's checks)
//! ```
//!
//! `text` stacks the layers up to the decoded text; `error` turns the marker
//! errors the layers stop a read with into a `ReadError`; `hints` reads the first
//! line again to name a delimiter mix-up.

mod compression;
mod encoding;
mod error;
mod hash;
mod hints;
mod lines;
mod quoting;
mod records;
#[cfg(test)]
mod test_support;
mod text;

pub(crate) use compression::{emptiness, is_compressed};
pub(crate) use error::ReadError;
pub(crate) use hash::{hash_file, open_regular};
pub(crate) use hints::delimiter_hint;
pub(crate) use records::CsvRecords;

use csv::ByteRecord;

/// Where the two columns the agent needs sit in each record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Columns {
    pub email: usize,
    pub full_name: usize,
    /// Number of fields every data row must have.
    pub width: usize,
}

impl Columns {
    /// Without a header: email first, full name second, as the old service read it.
    pub(crate) const POSITIONAL: Columns = Columns {
        email: 0,
        full_name: 1,
        width: 2,
    };
}

/// No legitimate record comes near this (two fields of at most 255 characters
/// plus whatever extra columns); a longer one is an unbalanced quote swallowing
/// the rest of the file, and reading stops before memory grows with it.
pub(crate) const MAX_RECORD_BYTES: usize = 1 << 20;

/// How much of a rejected row's text is kept for the rejects report.
pub(crate) const RAW_LINE_LIMIT: usize = 1000;

/// A data row: its first line in the file, its raw fields, and its text as read
/// (without the line break, cut to `RAW_LINE_LIMIT` bytes) starting at byte
/// `offset` of the (decoded) text.
#[derive(Debug)]
pub(crate) struct RawRow {
    pub line: u64,
    pub record: ByteRecord,
    pub offset: u64,
    pub raw: Vec<u8>,
}
