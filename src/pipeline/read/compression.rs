//! Compression: the `.gz` or `.zst` a file's name announces, and `Decompress`,
//! which marks the decompressor's errors as a corrupt archive (`Corrupt`) but
//! passes the file's own I/O errors (`FileFailure`) up as they are.

use super::hash::{open_regular, FileFailure};
use crate::pipeline::merge::Emptiness;
use std::io::{self, BufReader, Read};
use std::path::Path;

/// The compression a file's name announces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Compression {
    Gzip,
    Zstd,
}

impl Compression {
    pub(super) fn of(path: &Path) -> Option<Self> {
        let ext = path.extension()?.to_str()?.to_ascii_lowercase();
        match ext.as_str() {
            "gz" => Some(Self::Gzip),
            "zst" => Some(Self::Zstd),
            _ => None,
        }
    }

    pub(super) fn name(self) -> &'static str {
        match self {
            Self::Gzip => "gzip",
            Self::Zstd => "zstd",
        }
    }
}

/// Whether `path`'s name announces a compressed file (`.gz`, `.zst`).
pub(crate) fn is_compressed(path: &Path) -> bool {
    Compression::of(path).is_some()
}

/// Whether `path` holds no data: no bytes, or an archive its name announces that
/// unpacks to none (docs/sync.md#empty-file). A file that cannot be opened, or an
/// archive that is corrupt, is not "empty": reading it says why.
pub(crate) fn emptiness(path: &Path) -> Option<Emptiness> {
    let file = open_regular(path).ok()?;
    if file.metadata().ok()?.len() == 0 {
        return Some(Emptiness::NoBytes);
    }
    let raw = BufReader::new(file);
    let mut one = [0_u8; 1];
    let unpacked = match Compression::of(path)? {
        Compression::Gzip => flate2::bufread::MultiGzDecoder::new(raw).read(&mut one),
        Compression::Zstd => {
            zstd::stream::read::Decoder::with_buffer(raw).and_then(|mut d| d.read(&mut one))
        }
    };
    matches!(unpacked, Ok(0)).then_some(Emptiness::EmptyArchive)
}

/// A decompressor whose errors (a bad header, a checksum mismatch, a stream that
/// ends before its end-of-stream marker) are marked as a corrupt archive.
pub(super) struct Decompress<R> {
    pub(super) inner: R,
    pub(super) what: &'static str,
}

/// Marks a decompression error.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {source}")]
pub(super) struct Corrupt {
    pub(super) what: &'static str,
    pub(super) source: io::Error,
}

impl<R: Read> Read for Decompress<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.read(buf).map_err(|e| {
            if e.get_ref().is_some_and(|inner| inner.is::<FileFailure>()) {
                e
            } else {
                let what = self.what;
                io::Error::new(io::ErrorKind::InvalidData, Corrupt { what, source: e })
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::pipeline::read::test_support::{auto, gzip, read_all, read_named, utf16};
    use crate::pipeline::read::{hash_file, CsvRecords, ReadError};
    use std::io::Write;

    #[test]
    fn emptiness_sees_through_archives_but_not_corrupt_ones() {
        use super::emptiness;
        use crate::pipeline::merge::Emptiness;
        let dir = tempfile::tempdir().unwrap();
        let cases: [(&str, Vec<u8>, Option<Emptiness>); 7] = [
            ("plain.csv", Vec::new(), Some(Emptiness::NoBytes)),
            ("plain.csv", b"\n".to_vec(), None),
            ("zero.csv.gz", Vec::new(), Some(Emptiness::NoBytes)),
            ("empty.csv.gz", gzip(b""), Some(Emptiness::EmptyArchive)),
            (
                "empty.csv.zst",
                zstd::encode_all(&b""[..], 3).unwrap(),
                Some(Emptiness::EmptyArchive),
            ),
            ("data.csv.gz", gzip(b"a@x.io,A\n"), None),
            ("corrupt.csv.gz", b"not gzip at all".to_vec(), None),
        ];
        for (name, bytes, expected) in cases {
            let path = dir.path().join(name);
            std::fs::write(&path, &bytes).unwrap();
            assert_eq!(emptiness(&path), expected, "{name} {bytes:?}");
        }
        assert_eq!(emptiness(&dir.path().join("missing.csv")), None);
    }

    #[test]
    fn gz_and_zst_files_are_decompressed_and_hashed_raw() {
        let text = b"email,full_name\na@x.io,Ann\n\nb@x.io,Bob\n";
        let plain = read_all(text, auto()).unwrap();
        let zst = zstd::encode_all(&text[..], 3).unwrap();
        for (bytes, suffix) in [(gzip(text), ".csv.gz"), (zst, ".csv.zst")] {
            assert_eq!(read_named(&bytes, suffix, auto()).unwrap(), plain);
            let mut file = tempfile::Builder::new().suffix(suffix).tempfile().unwrap();
            file.write_all(&bytes).unwrap();
            let mut records = CsvRecords::open(file.path(), &auto()).unwrap();
            while records.next_row().unwrap().is_some() {}
            assert_eq!(records.bytes_read(), bytes.len() as u64);
            assert_eq!(records.finish(), hash_file(file.path(), &auto()).unwrap());
        }
        // Compressed UTF-16 is decompressed, then decoded.
        let (_, rows) = read_named(&gzip(&utf16("a@x.io,Ä\n", true)), ".gz", auto()).unwrap();
        assert_eq!(rows, vec![(1, vec!["a@x.io".into(), "Ä".into()])]);
    }

    #[test]
    fn a_truncated_or_corrupt_archive_is_refused() {
        let mut text = String::from("email,full_name\n");
        for i in 0..20_000 {
            text.push_str(&format!("u{i}@x.io,User {i}\n"));
        }
        let gz = gzip(text.as_bytes());
        let zst = zstd::encode_all(text.as_bytes(), 3).unwrap();
        for (bytes, suffix, what) in [
            (&gz[..gz.len() - 4], ".gz", "gzip"),
            (&gz[..gz.len() / 2], ".gz", "gzip"),
            (&zst[..zst.len() - 3], ".zst", "zstd"),
            (&b"not gzip at all\n"[..], ".gz", "gzip"),
        ] {
            let err = read_named(bytes, suffix, auto()).unwrap_err();
            assert!(
                matches!(err, ReadError::Archive { what: w, .. } if w == what),
                "{suffix} {}: {err:?}",
                bytes.len()
            );
            assert!(err.is_content());
            assert!(err.to_string().contains("truncated or corrupt"), "{err}");
        }
        // A corrupted checksum too.
        let mut bad = gz.clone();
        let n = bad.len();
        bad[n - 8] ^= 0xFF;
        assert!(matches!(
            read_named(&bad, ".gz", auto()),
            Err(ReadError::Archive { .. })
        ));
    }
}
