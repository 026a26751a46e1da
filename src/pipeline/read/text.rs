//! The layers below the CSV parser stacked: the file opened as a regular file,
//! its raw bytes tapped, decompressed by its name, sniffed and decoded to UTF-8.

use super::compression::{Compression, Decompress};
use super::encoding::{sniff, Decoded, Sniffed};
use super::error::io_error;
use super::hash::{open_regular, RawBytes, Tap};
use super::ReadError;
use crate::config::CsvFormat;
use std::io::{self, BufRead, BufReader};
use std::path::Path;
use std::sync::Arc;

/// The file as UTF-8 text: decompressed, decoded, streaming.
pub(super) fn open_text(
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
