//! Encoding: what the (decompressed) text is, sniffed from its first bytes and
//! `CSV_ENCODING` (UTF-8 passes through; workbooks, UTF-32 and unannounced
//! archives are refused by name), and `Decoded`, which decodes another encoding
//! to UTF-8 while streaming and stops at malformed input (`Malformed`).

use encoding_rs::{DecoderResult, Encoding};
use std::io::{self, BufRead, Read};

/// Decodes another encoding to UTF-8 while streaming (`encoding_rs`, without
/// replacement: a malformed sequence stops the read with its line and offset,
/// since a silently replaced character would store a wrong name or email).
pub(super) struct Decoded<R> {
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
pub(super) struct Malformed {
    pub(super) line: u64,
    pub(super) offset: u64,
    pub(super) encoding: &'static str,
}

impl<R: BufRead> Decoded<R> {
    pub(super) fn new(inner: R, encoding: &'static Encoding) -> Self {
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
            self.lines += crate::convert::len(self.out.iter().filter(|b| **b == b'\n').count());
            match result {
                DecoderResult::Malformed(bad, extra) => {
                    // `line` counts LF; `LineTracker` corrects it for a bare-CR file.
                    self.failed = Some(Malformed {
                        line: 1 + self.lines,
                        offset: self.offset + crate::convert::len(read)
                            - u64::from(bad)
                            - u64::from(extra),
                        encoding: self.decoder.encoding().name(),
                    });
                    continue;
                }
                DecoderResult::InputEmpty => self.done = last,
                DecoderResult::OutputFull => {}
            }
            self.offset += crate::convert::len(read);
        }
    }
}

/// How the text must be read, from its first bytes and `CSV_ENCODING`.
pub(super) enum Sniffed {
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
pub(super) fn sniff(head: &[u8], encoding: Option<&'static Encoding>) -> Sniffed {
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

#[cfg(test)]
mod tests {
    use crate::config::CsvFormat;
    use crate::pipeline::read::test_support::{auto, read_all, utf16, with_encoding};
    use crate::pipeline::read::ReadError;

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
}
