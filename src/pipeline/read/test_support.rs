//! Test helpers shared by the read modules' unit tests: a file of given bytes
//! read to the end, and inputs in other encodings and compressed.

use super::{Columns, CsvRecords, ReadError};
use crate::config::CsvFormat;
use std::io::Write;

pub(super) type Rows = Vec<(u64, Vec<String>)>;

pub(super) fn read_all(
    bytes: &[u8],
    format: CsvFormat,
) -> Result<(Option<Columns>, Rows), ReadError> {
    read_named(bytes, "", format)
}

pub(super) fn read_named(
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

pub(super) fn auto() -> CsvFormat {
    CsvFormat::default()
}

pub(super) fn utf16(text: &str, le: bool) -> Vec<u8> {
    let bom: &[u8] = if le { &[0xFF, 0xFE] } else { &[0xFE, 0xFF] };
    bom.iter()
        .copied()
        .chain(
            text.encode_utf16()
                .flat_map(|u| if le { u.to_le_bytes() } else { u.to_be_bytes() }),
        )
        .collect()
}

pub(super) fn with_encoding(label: &str) -> CsvFormat {
    CsvFormat {
        encoding: encoding_rs::Encoding::for_label(label.as_bytes()),
        ..auto()
    }
}

pub(super) fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}
