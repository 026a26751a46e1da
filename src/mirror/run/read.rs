//! Read and stage (docs/mirrors.md#reading): each file of the source, in
//! order, through the followers' reader (`CsvRecords`, every layer: compression, encoding, line endings,
//! quoting), each configured column found by its header name (or by position
//! without a header), every field validated for its column (`value`), the
//! valid lines streamed to the staging table by one COPY while the file is
//! still being read (a blocking reader thread feeding batches over a bounded
//! channel), the rejects kept with their file, line, column and reason, and
//! each file's hash of the bytes read (the run compares it with the hash it
//! took first).

use super::{MirrorReject, MirrorRunError, MirrorRunOptions};
use crate::config::CsvFormat;
use crate::domain::{ContentHash, LoadId};
use crate::mirror::value::parse_field;
use crate::mirror::MirrorSpec;
use crate::pipeline::read::{CsvRecords, ReadError};
use crate::storage::mirror::{copy_line, key_json, MirrorSql};
use csv::ByteRecord;
use sea_orm::DatabaseConnection;
use std::path::{Path, PathBuf};
use tokio::sync::mpsc;

/// Rejects kept with their details (all are counted), as the followers run's
/// stored rejects (docs/sync.md#rejects-report).
const KEPT_REJECTS: usize = 10_000;

/// Lines per COPY batch handed from the reader to the stager.
const BATCH_LINES: usize = 4096;

/// What reading found (the staged rows are in the staging table).
pub(super) struct ReadOutcome {
    pub rows_read: u64,
    pub staged: u64,
    /// Every rejected line, counted (only the first `KEPT_REJECTS` are kept).
    pub rejected: u64,
    pub rejects: Vec<MirrorReject>,
    /// The keys of rejected lines whose key fields are valid (`key_json`), with
    /// their lines: the file may still hold these rows, so the merge never
    /// deletes them, and an earlier valid line of the key does not change them.
    pub protected: Vec<(serde_json::Value, u64)>,
    /// The source's hash of the bytes read (`source::combine`).
    pub hash: ContentHash,
    /// Each file's hash of the bytes read, in order.
    pub parts: Vec<ContentHash>,
    /// Each file's first ordinal minus one: its line `n` is staged as
    /// `starts[i] + n` (`line_no`).
    pub starts: Vec<u64>,
}

/// Reads the source's files, in order, and COPYs their valid lines into the
/// (fresh) staging table under `load_id`, by one COPY.
#[tracing::instrument(skip_all, fields(mirror = %spec.name, files = files.len()))]
pub(super) async fn read_and_stage(
    db: &DatabaseConnection,
    spec: &MirrorSpec,
    files: &[PathBuf],
    format: CsvFormat,
    options: &MirrorRunOptions,
    load_id: LoadId,
) -> Result<ReadOutcome, MirrorRunError> {
    let mirror = spec.name.to_string();
    let max_rejects = spec.overrides.max_rejects.unwrap_or(options.max_rejects);
    let copy_error = |source| MirrorRunError::Copy {
        mirror: mirror.clone(),
        source,
    };
    let mut conn = db
        .get_postgres_connection_pool()
        .acquire()
        .await
        .map_err(copy_error)?;
    let (tx, mut rx) = mpsc::channel::<String>(4);
    let reader = {
        let (spec, files) = (spec.clone(), files.to_owned());
        tokio::task::spawn_blocking(move || {
            read_files(&spec, &files, format, max_rejects, load_id, &tx)
        })
    };
    let copy_sql = MirrorSql::new(spec).copy_in();
    let staged = stream(&mut conn, &copy_sql, &mut rx)
        .await
        .map_err(copy_error);
    drop(rx);
    let read = reader.await.expect("the reader task does not panic");
    let outcome = match (read, staged) {
        (Err(e), Ok(copy)) => {
            let _ = copy.abort("followers-etl: the file was refused").await;
            Err(e)
        }
        (Err(e), Err(_)) | (Ok(_), Err(e)) => Err(e),
        (Ok(mut outcome), Ok(copy)) => {
            outcome.staged = copy.finish().await.map_err(copy_error)?;
            // Every valid line reached staging, or nothing is merged.
            let accepted = outcome.rows_read.saturating_sub(outcome.rejected);
            if outcome.staged == accepted {
                Ok(outcome)
            } else {
                Err(MirrorRunError::StagedCount {
                    mirror: mirror.clone(),
                    staged: outcome.staged,
                    accepted,
                })
            }
        }
    };
    outcome
}

/// One COPY of every batch the reader sends, until it closes the channel.
async fn stream<'c>(
    conn: &'c mut sqlx::pool::PoolConnection<sqlx::Postgres>,
    sql: &str,
    rx: &mut mpsc::Receiver<String>,
) -> Result<sqlx::postgres::PgCopyIn<&'c mut sqlx::PgConnection>, sqlx::Error> {
    let mut copy = conn.copy_in_raw(sql).await?;
    while let Some(batch) = rx.recv().await {
        if let Err(e) = copy.send(batch.as_bytes()).await {
            let _ = copy.abort("followers-etl: send failed").await;
            return Err(e);
        }
    }
    Ok(copy)
}

/// Where each configured column sits in a record, and how many fields a record
/// has (`None`: at least one per column, no header to say).
struct Layout {
    positions: Vec<usize>,
    width: Option<usize>,
}

fn layout(
    spec: &MirrorSpec,
    path: &Path,
    header: Option<(&ByteRecord, u64)>,
) -> Result<Layout, MirrorRunError> {
    let Some((header, line)) = header else {
        return Ok(Layout {
            positions: (0..spec.columns.len()).collect(),
            width: None,
        });
    };
    let text = |f: &[u8]| String::from_utf8_lossy(f).into_owned();
    let mut positions = Vec::with_capacity(spec.columns.len());
    for column in &spec.columns {
        let mut hits = header
            .iter()
            .enumerate()
            .filter(|(_, f)| column.matches_header(&text(f)));
        match (hits.next(), hits.next()) {
            (Some((i, _)), None) => positions.push(i),
            (Some(_), Some(_)) => {
                return Err(MirrorRunError::DuplicateColumn {
                    mirror: spec.name.to_string(),
                    file: path.to_owned(),
                    line,
                    column: column.source.clone(),
                })
            }
            (None, _) => {
                return Err(MirrorRunError::MissingColumn {
                    mirror: spec.name.to_string(),
                    file: path.to_owned(),
                    line,
                    column: column.source.clone(),
                    found: header
                        .iter()
                        .map(|f| format!("{:?}", text(f).trim()))
                        .collect::<Vec<_>>()
                        .join(", "),
                })
            }
        }
    }
    Ok(Layout {
        positions,
        width: Some(header.len()),
    })
}

/// Why a line is rejected: the column (none for the line itself) and the reason.
type LineReject = (Option<String>, String);

/// The line's values, canonical, in the configured order; or its reject (the
/// first column that fails).
fn parse_line<'r>(
    spec: &MirrorSpec,
    layout: &Layout,
    record: &'r ByteRecord,
) -> Result<Vec<Option<std::borrow::Cow<'r, str>>>, LineReject> {
    match layout.width {
        Some(width) if record.len() != width => {
            return Err((
                None,
                format!("the line has {} fields, the header {width}", record.len()),
            ))
        }
        None if record.len() < spec.columns.len() => {
            return Err((
                None,
                format!(
                    "the line has {} fields, the mirror reads {}",
                    record.len(),
                    spec.columns.len()
                ),
            ))
        }
        _ => {}
    }
    let mut values = Vec::with_capacity(spec.columns.len());
    for (column, &at) in spec.columns.iter().zip(&layout.positions) {
        let name = || Some(column.name.to_string());
        let raw = std::str::from_utf8(record.get(at).unwrap_or_default())
            .map_err(|_| (name(), "is not valid text".to_owned()))?;
        values.push(parse_field(column, raw).map_err(|reason| (name(), reason))?);
    }
    Ok(values)
}

/// The key fields of a rejected line, as a protected key, when they are valid.
fn protected_key(
    spec: &MirrorSpec,
    layout: &Layout,
    record: &ByteRecord,
) -> Option<serde_json::Value> {
    let fields: Option<Vec<&str>> = spec
        .key
        .iter()
        .map(|k| {
            let i = spec.columns.iter().position(|c| &c.name == k)?;
            std::str::from_utf8(record.get(layout.positions[i])?).ok()
        })
        .collect();
    key_json(spec, &fields?).ok()
}

/// Where the reader is across the source's files.
struct Reading<'s> {
    spec: &'s MirrorSpec,
    format: CsvFormat,
    max_rejects: u64,
    load_id: LoadId,
    tx: &'s mpsc::Sender<String>,
    rows_read: u64,
    rejected: u64,
    rejects: Vec<MirrorReject>,
    protected: Vec<(serde_json::Value, u64)>,
    batch: String,
    batch_lines: usize,
    /// The ordinals of the file being read start after this one.
    offset: u64,
    /// The stager stopped taking batches (it reports why).
    stopped: bool,
}

impl Reading<'_> {
    fn read_error(&self, source: ReadError) -> MirrorRunError {
        MirrorRunError::Read {
            mirror: self.spec.name.to_string(),
            source,
        }
    }

    /// Reads one file of the source, every line, sending COPY batches; returns
    /// the hash of the bytes it read.
    fn file(&mut self, path: &Path) -> Result<ContentHash, MirrorRunError> {
        let spec = self.spec;
        let sources = spec.columns.iter().map(|c| c.source.clone()).collect();
        let mut records =
            CsvRecords::open_named(path, &self.format, sources).map_err(|e| self.read_error(e))?;
        let mut layout_found = None;
        let mut last_line = 0u64;
        let file: PathBuf = path.to_owned();
        while let Some(row) = records.next_row().map_err(|e| self.read_error(e))? {
            if layout_found.is_none() {
                let header = records.header().map(|h| (h, header_line(h)));
                layout_found = Some(layout(spec, path, header)?);
            }
            let layout = layout_found.as_ref().expect("set above");
            self.rows_read += 1;
            last_line = row.line;
            let ordinal = self.offset.saturating_add(row.line);
            match parse_line(spec, layout, &row.record) {
                Ok(values) => {
                    let values: Vec<Option<&str>> = values.iter().map(Option::as_deref).collect();
                    copy_line(&mut self.batch, self.load_id.uuid(), ordinal, &values);
                    self.batch_lines += 1;
                }
                Err((column, reason)) => {
                    self.protected
                        .extend(protected_key(spec, layout, &row.record).map(|k| (k, ordinal)));
                    self.rejected += 1;
                    if self.rejects.len() < KEPT_REJECTS {
                        self.rejects.push(MirrorReject {
                            file: file.clone(),
                            line: row.line,
                            column,
                            reason,
                            raw: raw_text(&row.raw),
                        });
                    }
                }
            }
            if self.rejected > self.max_rejects {
                // Refused: read on only to count (and report) every reject.
                self.batch.clear();
                self.batch_lines = 0;
                continue;
            }
            if self.batch_lines >= BATCH_LINES {
                self.batch_lines = 0;
                if self
                    .tx
                    .blocking_send(std::mem::take(&mut self.batch))
                    .is_err()
                {
                    self.stopped = true;
                    break;
                }
            }
        }
        if layout_found.is_none() {
            // A header without data rows still has to name every column.
            let header = records.header().map(|h| (h, header_line(h)));
            layout(spec, path, header)?;
        }
        self.offset = self.offset.saturating_add(last_line);
        Ok(records.finish())
    }
}

/// The blocking side: reads every line of every file, in order, sends COPY
/// batches to `tx`. Each line is staged with its ordinal in the source (the
/// file's line after the lines of the files before it), so "the last line of
/// a key" is the last in name order, then line order.
fn read_files(
    spec: &MirrorSpec,
    files: &[PathBuf],
    format: CsvFormat,
    max_rejects: u64,
    load_id: LoadId,
    tx: &mpsc::Sender<String>,
) -> Result<ReadOutcome, MirrorRunError> {
    let mut reading = Reading {
        spec,
        format,
        max_rejects,
        load_id,
        tx,
        rows_read: 0,
        rejected: 0,
        rejects: Vec::new(),
        protected: Vec::new(),
        batch: String::new(),
        batch_lines: 0,
        offset: 0,
        stopped: false,
    };
    let mut parts = Vec::with_capacity(files.len());
    let mut starts = Vec::with_capacity(files.len());
    for path in files {
        starts.push(reading.offset);
        parts.push(reading.file(path)?);
        if reading.stopped {
            break;
        }
    }
    let Reading {
        rows_read,
        rejected,
        mut rejects,
        protected,
        batch,
        ..
    } = reading;
    if rejected > max_rejects {
        return Err(MirrorRunError::TooManyRejects {
            mirror: spec.name.to_string(),
            max: max_rejects,
            rows_read,
            rejected,
            first: Box::new(rejects.remove(0)),
            rejects,
        });
    }
    if !batch.is_empty() {
        let _ = tx.blocking_send(batch);
    }
    Ok(ReadOutcome {
        rows_read,
        staged: 0,
        rejected,
        rejects,
        protected,
        hash: super::source::combine(spec, files, &parts),
        parts,
        starts,
    })
}

/// A rejected line's text (`MirrorReject::raw`) from the reader's `RawRow::raw`
/// (already cut to `RAW_LINE_LIMIT` bytes): as the followers' rejects keep it,
/// invalid UTF-8 and NUL (which PostgreSQL text cannot hold) as U+FFFD.
fn raw_text(raw: &[u8]) -> String {
    String::from_utf8_lossy(raw).replace('\0', "\u{FFFD}")
}

/// The header's line in the file (the `csv` crate's position of the record).
fn header_line(header: &ByteRecord) -> u64 {
    header.position().map_or(1, csv::Position::line)
}

/// What `check_mirror_file` found: the totals, and each repeated key with every
/// line it is on (as a sync would report them, the last line winning).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MirrorCheck {
    pub rows: u64,
    pub valid: u64,
    pub invalid: u64,
    /// The lines beyond the first of each repeated key (a sync's `duplicates`).
    pub duplicates: u64,
    /// Each repeated key (`key_json`'s object, canonical values) with every
    /// line it is on, by first line.
    pub duplicate_lines: Vec<(serde_json::Value, Vec<u64>)>,
}

/// `check --mirror NAME` (docs/mirrors.md#check): reads `path` as a sync of
/// the mirror reads it (its columns by header or position, every field
/// validated for its column) without staging anything or touching a database.
/// `format` is the variables' CSV format; the mirror's own `csv_*` settings win.
/// Each invalid line is handed to `on_reject` with its text, in file order; the
/// counts in `report` are those read so far when an error ends the check.
/// Repeated keys are found in flat memory as the followers `check` finds
/// emails (a Bloom filter, then a second read for the candidates alone); a
/// file that changes between the two reads is `CheckedFileChanged`.
#[tracing::instrument(skip_all, fields(mirror = %spec.name, path = %path.display()))]
pub fn check_mirror_file(
    spec: &MirrorSpec,
    path: &Path,
    format: &CsvFormat,
    report: &mut MirrorCheck,
    mut on_reject: impl FnMut(&MirrorReject, &[u8]),
) -> Result<(), MirrorRunError> {
    let options = MirrorRunOptions {
        csv: *format,
        ..MirrorRunOptions::default()
    };
    let format = super::csv_format(spec, &options);
    let mut filter = crate::pipeline::dupes::DuplicateFilter::default();
    let hash = check_pass(spec, path, &format, |row, values| match values {
        Ok(values) => {
            report.rows += 1;
            report.valid += 1;
            filter.insert(&key_text(spec, &values));
        }
        Err((column, reason)) => {
            report.rows += 1;
            report.invalid += 1;
            let reject = MirrorReject {
                file: path.to_owned(),
                line: row.line,
                column,
                reason,
                raw: raw_text(&row.raw),
            };
            on_reject(&reject, &row.raw);
        }
    })?;
    let wanted: Option<std::collections::HashSet<String>> = match filter.finish() {
        crate::pipeline::dupes::Candidates::Only(c) if c.is_empty() => return Ok(()),
        crate::pipeline::dupes::Candidates::Only(c) => Some(c.into_iter().collect()),
        // More candidates than the filter lists: every key is collected.
        crate::pipeline::dupes::Candidates::All => None,
    };
    let mut lines: std::collections::HashMap<String, Vec<u64>> = Default::default();
    let again = check_pass(spec, path, &format, |row, values| {
        if let Ok(values) = values {
            let key = key_text(spec, &values);
            if wanted.as_ref().is_none_or(|w| w.contains(&key)) {
                lines.entry(key).or_default().push(row.line);
            }
        }
    })?;
    if again != hash {
        return Err(MirrorRunError::CheckedFileChanged {
            mirror: spec.name.to_string(),
            file: path.to_owned(),
        });
    }
    let mut repeated: Vec<(String, Vec<u64>)> =
        lines.into_iter().filter(|(_, l)| l.len() > 1).collect();
    repeated.sort_by_key(|(_, l)| l[0]);
    report.duplicates = repeated
        .iter()
        .map(|(_, l)| crate::convert::len(l.len()) - 1)
        .sum();
    report.duplicate_lines = repeated
        .into_iter()
        .map(|(key, l)| (key_object(spec, &key), l))
        .collect();
    Ok(())
}

/// A line's parsed values, or why it is rejected (`parse_line`).
type Parsed<'r> = Result<Vec<Option<std::borrow::Cow<'r, str>>>, LineReject>;

/// One read of the file for `check_mirror_file`: every data row with its
/// parse, the columns found from the header (a missing or repeated column
/// refuses the file); returns the content hash.
fn check_pass(
    spec: &MirrorSpec,
    path: &Path,
    format: &CsvFormat,
    mut each: impl FnMut(&crate::pipeline::read::RawRow, Parsed<'_>),
) -> Result<ContentHash, MirrorRunError> {
    let read_error = |source| MirrorRunError::Read {
        mirror: spec.name.to_string(),
        source,
    };
    let sources = spec.columns.iter().map(|c| c.source.clone()).collect();
    let mut records = CsvRecords::open_named(path, format, sources).map_err(read_error)?;
    let mut layout_found = None;
    while let Some(row) = records.next_row().map_err(read_error)? {
        if layout_found.is_none() {
            let header = records.header().map(|h| (h, header_line(h)));
            layout_found = Some(layout(spec, path, header)?);
        }
        let layout = layout_found.as_ref().expect("set above");
        each(&row, parse_line(spec, layout, &row.record));
    }
    if layout_found.is_none() {
        // A header without data rows still has to name every column.
        let header = records.header().map(|h| (h, header_line(h)));
        layout(spec, path, header)?;
    }
    Ok(records.finish())
}

/// A valid line's key, canonical, as one string (a JSON array of the key's
/// values in the key's order): what the duplicate filter and the second read
/// compare.
fn key_text(spec: &MirrorSpec, values: &[Option<std::borrow::Cow<'_, str>>]) -> String {
    let key: Vec<Option<&str>> = spec
        .key
        .iter()
        .map(|k| {
            spec.columns
                .iter()
                .position(|c| &c.name == k)
                .and_then(|i| values.get(i))
                .and_then(|v| v.as_deref())
        })
        .collect();
    serde_json::to_string(&key).expect("strings serialise")
}

/// `key_text` back as an object of the key's columns (`key_json`'s shape).
fn key_object(spec: &MirrorSpec, text: &str) -> serde_json::Value {
    let values: Vec<Option<String>> = serde_json::from_str(text).unwrap_or_default();
    spec.key
        .iter()
        .zip(values)
        .map(|(k, v)| (k.to_string(), serde_json::Value::from(v)))
        .collect::<serde_json::Map<_, _>>()
        .into()
}
