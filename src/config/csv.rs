//! The CSV settings: which file (`CSV_FILE`, confined to `TABLES_DIR`), how its
//! bytes become rows (`CSV_DELIMITER`, `CSV_HEADER`, `CSV_ENCODING`: part of the
//! content hash), when it is ready to read (`READY_MARKER`, `READY_TIMEOUT`), and
//! how it is loaded (`BATCH_SIZE`, `WORKER_POOL_GOROUTINES`).

use super::parse::{duration_or, parse_int, parse_int_in};
use super::sources::Raw;
use super::{invalid, var, ConfigError, DatabaseSettings};
use std::path::PathBuf;
use std::time::Duration;

/// Rows per batch: the best median of `bench/load.sh` (docs/performance.md#batch-size-benchloadsh).
pub const DEFAULT_BATCH_SIZE: usize = 10_000;
/// COPY workers: 4 staged 1M rows fastest on 2 cores, within 64 MiB; 16
/// oversubscribed them and took 70 MiB (docs/performance.md#defaults).
pub const DEFAULT_WORKERS: usize = 4;
/// Larger batches only cost memory (the channel holds up to 3 per worker).
pub const MAX_BATCH_SIZE: u64 = 1_000_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeaderMode {
    Auto,
    Present,
    Absent,
}

impl HeaderMode {
    /// As `CSV_HEADER` spells it.
    pub(super) fn as_str(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Present => "true",
            Self::Absent => "false",
        }
    }
}

/// The settings that decide how bytes become rows; part of the content hash.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CsvFormat {
    pub delimiter: u8,
    pub header: HeaderMode,
    /// `CSV_ENCODING`; `None` is `auto` (UTF-8, or UTF-16 by its byte order mark).
    pub encoding: Option<&'static encoding_rs::Encoding>,
}

impl Default for CsvFormat {
    fn default() -> Self {
        Self {
            delimiter: b',',
            header: HeaderMode::Auto,
            encoding: None,
        }
    }
}

#[derive(Clone, Debug)]
pub struct CsvSettings {
    /// `CSV_FILE`, as given (`Settings::resolve_csv_file` confines it).
    pub file: Option<PathBuf>,
    pub tables_dir: PathBuf,
    pub format: CsvFormat,
    /// `READY_MARKER`: a suffix; `CSV_FILE` + it must exist, and be no older than
    /// `CSV_FILE`, before any run reads the file.
    pub ready_marker: Option<String>,
    /// How long a run started by hand waits for the ready marker.
    pub ready_timeout: Duration,
    pub batch_size: usize,
    /// COPY workers, at most `DB_MAX_CONNS`.
    pub workers: usize,
    /// The variable that set `workers` (`WORKER_POOL_GOROUTINES` or its old name
    /// `WORKER_POOL_SIZE`); `None` for the default.
    pub(super) workers_from: Option<&'static str>,
}

impl CsvSettings {
    pub(super) fn from_raw(raw: &Raw, database: &DatabaseSettings) -> Result<Self, ConfigError> {
        let (workers, workers_from) = workers(raw, database.max_conns)?;
        Ok(Self {
            file: raw.get(var::CSV_FILE).map(PathBuf::from),
            tables_dir: PathBuf::from(raw.get(var::TABLES_DIR).unwrap_or("./tables")),
            batch_size: raw
                .get(var::BATCH_SIZE)
                .map(|v| parse_int_in(var::BATCH_SIZE, v, 1, MAX_BATCH_SIZE))
                .transpose()?
                .unwrap_or(DEFAULT_BATCH_SIZE),
            workers,
            workers_from,
            format: CsvFormat {
                delimiter: match raw.untrimmed(var::CSV_DELIMITER) {
                    None => b',',
                    Some(v) => parse_delimiter(v)?,
                },
                header: header(raw)?,
                encoding: encoding(raw)?,
            },
            ready_marker: ready_marker(raw)?,
            ready_timeout: duration_or(raw, var::READY_TIMEOUT, Duration::from_secs(60))?,
        })
    }

    /// `workers` when `var` set it, else empty: for `describe`.
    pub(super) fn workers_if_from(&self, var: &str) -> String {
        if self.workers_from == Some(var) {
            self.workers.to_string()
        } else {
            String::new()
        }
    }
}

/// `WORKER_POOL_GOROUTINES` (or `WORKER_POOL_SIZE`), at most `DB_MAX_CONNS`; by
/// default `DEFAULT_WORKERS` capped by it.
fn workers(raw: &Raw, max_conns: u32) -> Result<(usize, Option<&'static str>), ConfigError> {
    match raw.aliased(var::WORKER_POOL_GOROUTINES, var::WORKER_POOL_SIZE)? {
        Some((var, value)) => {
            let n: usize = parse_int(var, value, 1)?;
            // A count beyond u32 is beyond DB_MAX_CONNS too.
            if u32::try_from(n).map_or(true, |n| n > max_conns) {
                return Err(invalid(
                    var,
                    value,
                    format!("must be ≤ DB_MAX_CONNS ({max_conns})"),
                ));
            }
            Ok((n, Some(var)))
        }
        // A DB_MAX_CONNS beyond usize is beyond the default too.
        None => Ok((
            usize::try_from(max_conns).map_or(DEFAULT_WORKERS, |m| DEFAULT_WORKERS.min(m)),
            None,
        )),
    }
}

fn header(raw: &Raw) -> Result<HeaderMode, ConfigError> {
    match raw
        .get(var::CSV_HEADER)
        .map(|v| v.trim().to_ascii_lowercase())
    {
        None => Ok(HeaderMode::Auto),
        Some(v) if v == "auto" => Ok(HeaderMode::Auto),
        Some(v) if v == "true" => Ok(HeaderMode::Present),
        Some(v) if v == "false" => Ok(HeaderMode::Absent),
        Some(v) => Err(invalid(var::CSV_HEADER, &v, "expected auto, true or false")),
    }
}

fn encoding(raw: &Raw) -> Result<Option<&'static encoding_rs::Encoding>, ConfigError> {
    match raw.get(var::CSV_ENCODING).map(str::trim) {
        None => Ok(None),
        Some(v) if v.eq_ignore_ascii_case("auto") => Ok(None),
        Some(v) => encoding_rs::Encoding::for_label(v.as_bytes())
            .filter(|e| *e != encoding_rs::REPLACEMENT)
            .map(Some)
            .ok_or_else(|| {
                invalid(
                    var::CSV_ENCODING,
                    v,
                    "expected auto, utf-8, utf-16 (LE), utf-16be, windows-1252, latin1 or another WHATWG encoding label",
                )
            }),
    }
}

fn ready_marker(raw: &Raw) -> Result<Option<String>, ConfigError> {
    match raw.get(var::READY_MARKER).map(str::trim) {
        None => Ok(None),
        Some(v) if v.contains(['/', '\\']) || v == "." || v == ".." => Err(invalid(
            var::READY_MARKER,
            v,
            "expected a suffix added to CSV_FILE's name, such as .done (no path separators)",
        )),
        Some(v) => Ok(Some(v.to_owned())),
    }
}

/// `CSV_DELIMITER`: one ASCII character; a tab also as `\t` or `tab` (any
/// case), with or without surrounding quotes or spaces. Read without the usual
/// trimming, since a tab is whitespace; empty (or only spaces) means the default.
pub(super) fn parse_delimiter(raw: &str) -> Result<u8, ConfigError> {
    let unquoted = |v: &str| {
        ['"', '\'']
            .iter()
            .find_map(|q| v.strip_prefix(*q).and_then(|v| v.strip_suffix(*q)))
            .map(str::to_owned)
            .unwrap_or_else(|| v.to_owned())
    };
    let spaces = |v: &str| v.trim_matches(' ').to_owned();
    let inner = unquoted(&spaces(raw));
    if inner == " " {
        return Ok(b' ');
    }
    let value = spaces(&inner);
    if value.is_empty() {
        return Ok(b',');
    }
    let tab = value.eq_ignore_ascii_case("tab") || value == "\\t" || value.trim().is_empty();
    match value.as_bytes() {
        _ if tab => Ok(b'\t'),
        [b] if b.is_ascii() && !matches!(b, b'"' | b'\n' | b'\r') => Ok(*b),
        _ => Err(invalid(
            "CSV_DELIMITER",
            raw,
            "expected one ASCII character other than a quote or line break (\\t or tab for a tab)",
        )),
    }
}

/// `CSV_DELIMITER` as `describe` shows it: quoted, a tab as `\t`, so that it
/// reads back as the same delimiter.
pub(super) fn show_delimiter(delimiter: u8) -> String {
    format!("{:?}", char::from(delimiter).to_string())
}
