//! The delimiter hint: a first line that does not split on `CSV_DELIMITER` but
//! does on another common delimiter names the setting to change.

use super::hash::Tap;
use super::text::open_text;
use crate::config::CsvFormat;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;

/// When the first non-blank line does not contain the configured delimiter
/// but splits on another common one (`;`, tab, `,`, `|`), a hint naming
/// `CSV_DELIMITER`; rows of one field are then a delimiter mix-up.
pub(crate) fn delimiter_hint(path: &Path, format: &CsvFormat) -> Option<String> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::read::test_support::auto;
    use std::io::Write;

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
}
