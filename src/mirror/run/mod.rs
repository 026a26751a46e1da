//! The run of one generic mirror (docs/mirrors.md#runs): `sync_mirror` and
//! `revert_mirror`. A sync is, in order:
//!
//! | step   | what                                                                   | module   |
//! |--------|------------------------------------------------------------------------|----------|
//! | lock   | the run lock of the mirror's table (busy: `MirrorRunError::Busy`)      | here     |
//! | source | the file, or the files its glob matches, each confined to `TABLES_DIR` | `source` |
//! | table  | the table checked, its write counter; an absent one is left to `merge` | `merge`  |
//! | hash   | the source's hash; skipped only when it, the definition's fingerprint  | `merge`  |
//! |        | and the table (identity, write counter) are as last left (`trust`)     |          |
//! | read   | every field validated for its column (rejects, `MAX_REJECTS`)          | `read`   |
//! | stage  | COPY into the table's staging table, streaming as the file reads       | `read`   |
//! | check  | the bytes read hash as the bytes hashed did, else `FileChanged`        | here     |
//! | dedupe | a repeated key: the last line wins, reported                           | `merge`  |
//! | merge  | one transaction: an absent table created, writer lock, diff, guard,    | `merge`  |
//! |        | journaled writes, record                                               |          |
//! | retain | after the commit: the journal's and the run records' retention         | `merge`  |
//!
//! Any failure rolls the merge back (the table as it was, or still absent: a
//! first run creates it in the merge's transaction); the staging table is
//! dropped on the run lock's own session, so only while the lock is held.

mod history;
mod merge;
mod read;
mod revert;
mod source;

pub use history::{key_from_args, mirror_history, MirrorEvent};
pub use read::{check_mirror_file, MirrorCheck};
pub use revert::{
    revert_mirror, revert_mirror_last, revert_mirror_last_within, MirrorRevertOptions, RevertTarget,
};
pub(crate) use source::source_files;

/// Checks a configured mirror's existing table against its definition
/// (docs/mirrors.md#an-existing-table): `sync` and `serve` call it once at
/// start-up, so an incompatible table stops them (exit 2) naming the mirror,
/// the column and the fix. An absent table is fine: its first run creates it.
pub async fn check_existing_table(
    db: &DatabaseConnection,
    spec: &MirrorSpec,
) -> Result<(), MirrorRunError> {
    merge::check_table(db, &MirrorSql::new(spec))
        .await
        .map(drop)
}

use super::{MirrorSource, MirrorSpec};
use crate::config::{CsvFormat, DatabaseUrl, RunRetention};
use crate::db::{AdvisoryLock, DbError};
use crate::domain::{LoadId, Stage};
use crate::pipeline::merge::{Emptiness, Guard};
use crate::pipeline::read::ReadError;
use crate::pipeline::timings::StageTimes;
use crate::storage::mirror::{IncompatibleTable, MirrorSql};
use sea_orm::{DatabaseConnection, DbBackend, DbErr, Statement, Value};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The settings a mirror takes from the variables where its definition has no
/// value of its own (`SettingOverrides`), and the run's approvals.
#[derive(Clone, Copy, Debug)]
pub struct MirrorRunOptions {
    /// `CSV_DELIMITER`, `CSV_HEADER`, `CSV_ENCODING`.
    pub csv: CsvFormat,
    /// `MAX_REJECTS`.
    pub max_rejects: u64,
    /// `MAX_DELETE_RATIO`.
    pub max_delete_ratio: f64,
    /// `MAX_UPDATE_RATIO`.
    pub max_update_ratio: f64,
    pub allow_mass_delete: bool,
    pub allow_mass_update: bool,
    /// `JOURNAL_KEEP_RUNS` (0: no journal, so no revert): the newest runs that
    /// changed the table keep their journal (runs that changed nothing hold none).
    pub journal_keep_runs: u64,
    /// `JOURNAL_KEEP_DAYS`: and no run finished longer ago than this keeps it.
    pub journal_keep_days: u64,
    /// `HISTORY_KEEP_RUNS`, `HISTORY_KEEP_DAYS`: how many run records
    /// (`mirror_runs`) a mirror keeps, as `sync_runs`.
    pub history: RunRetention,
    /// `VERIFY_EVERY`: where the table has no write counter, how long an
    /// unchanged file may be skipped before it is compared again.
    pub verify_every: Duration,
    /// `LOCK_WAIT_TIMEOUT`: the longest wait for another writer of the table.
    pub lock_wait: Duration,
    /// Sync even when the file's hash equals the last sync's.
    pub force: bool,
    /// Plan only (docs/mirrors.md#dry-run): the real diff and guard in a
    /// transaction that is rolled back; the table is neither created nor
    /// changed, and no status or journal is written.
    pub dry_run: bool,
}

impl MirrorRunOptions {
    /// An explicit approval: it reads content refused earlier again.
    pub fn approves(&self) -> bool {
        self.force || self.allow_mass_delete || self.allow_mass_update
    }
}

impl Default for MirrorRunOptions {
    fn default() -> Self {
        Self {
            csv: CsvFormat::default(),
            max_rejects: 0,
            max_delete_ratio: 0.5,
            max_update_ratio: 1.0,
            allow_mass_delete: false,
            allow_mass_update: false,
            journal_keep_runs: 10,
            journal_keep_days: crate::config::DEFAULT_JOURNAL_KEEP_DAYS,
            history: RunRetention {
                keep_days: Some(crate::config::DEFAULT_HISTORY_KEEP_DAYS),
                keep_runs: Some(crate::config::DEFAULT_HISTORY_KEEP_RUNS),
            },
            verify_every: crate::config::DEFAULT_VERIFY_EVERY,
            lock_wait: Duration::from_secs(10),
            force: false,
            dry_run: false,
        }
    }
}

/// One rejected line: the file, its line, the column (none when the line
/// itself is wrong, e.g. its number of fields), the reason and the line's text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MirrorReject {
    pub file: PathBuf,
    pub line: u64,
    pub column: Option<String>,
    pub reason: String,
    /// The line's text as read, as the followers' rejects keep it
    /// (docs/sync.md#rejects-report): decoded, without its line break, cut to
    /// the reader's limit (1000 bytes), invalid UTF-8 and NUL as U+FFFD (so
    /// PostgreSQL text can hold it, `sync_rejects.raw_line`). Not in `Display`.
    pub raw: String,
}

/// A line of the source: its file and the file's line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceLine {
    pub file: PathBuf,
    pub line: u64,
}

impl std::fmt::Display for SourceLine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: line {}", self.file.display(), self.line)
    }
}

impl std::fmt::Display for MirrorReject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: line {}: ", self.file.display(), self.line)?;
        match &self.column {
            Some(column) => write!(f, "column {column}: {}", self.reason),
            None => f.write_str(&self.reason),
        }
    }
}

/// What one sync of a mirror did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MirrorSummary {
    pub mirror: String,
    /// `None`: skipped, the file, the definition and the table unchanged since
    /// the last sync or revert (docs/mirrors.md#skip).
    pub load_id: Option<uuid::Uuid>,
    /// Skipped because a revert holds this content back (until the file
    /// changes, or a forced sync).
    pub held_back: bool,
    /// Skipped unverified: the table has no write counter that counts every
    /// write, and was compared with the file less than `VERIFY_EVERY` ago.
    pub unverified: bool,
    /// A dry run's plan: the counts are what a real run would do.
    pub dry_run: bool,
    /// A dry run only: why a real run would be refused (a guard).
    pub would_refuse: Option<String>,
    /// Skipped without reading: this content was refused earlier under the
    /// same limits and nothing approves it now (the earlier refusal's reason).
    pub refused_earlier: Option<String>,
    /// Why an unchanged file was synced instead of skipped (the definition
    /// changed, the table was replaced or written outside the agent, ...).
    pub sync_reason: Option<String>,
    pub content_hash: String,
    pub rows_read: u64,
    pub inserted: u64,
    pub updated: u64,
    pub deleted: u64,
    pub unchanged: u64,
    pub rejected: u64,
    pub duplicates: u64,
    pub journaled: u64,
    pub rejects: Vec<MirrorReject>,
    /// Up to 10 repeated keys (as `jsonb` text) with their ordinals in the
    /// source as staged (`line_no`): for `file`, the file's lines; for
    /// `files`, see `duplicate_lines`.
    pub duplicate_examples: Vec<(String, Vec<i64>)>,
    /// The same keys with the file and line of each occurrence, in source
    /// order (the last wins).
    pub duplicate_lines: Vec<(String, Vec<SourceLine>)>,
    /// The files read, in order (empty when skipped, or no file matched).
    pub files: Vec<PathBuf>,
}

impl MirrorRunError {
    /// What a refused run would have done (a guard's refusal), for its summary
    /// and record (docs/operations.md#the-sync-summary).
    pub fn would_have(&self) -> Option<crate::domain::Counts> {
        match self {
            Self::MassDelete { counts, .. }
            | Self::MassUpdate { counts, .. }
            | Self::EmptyFile { counts, .. }
            | Self::EmptySource { counts, .. } => Some(**counts),
            _ => None,
        }
    }
}

impl MirrorSummary {
    pub fn skipped(&self) -> bool {
        self.load_id.is_none()
    }

    /// The counts as a run record and a summary line hold them.
    pub fn counts(&self) -> crate::domain::Counts {
        crate::domain::Counts {
            rows_read: self.rows_read,
            inserted: self.inserted,
            updated: self.updated,
            deleted: self.deleted,
            unchanged: self.unchanged,
            rejected: self.rejected,
            duplicates: self.duplicates,
            journaled: self.journaled,
        }
    }
}

/// What a revert of a mirror undid (or, a dry run, would undo).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MirrorRevert {
    pub mirror: String,
    /// The newest run undone.
    pub load_id: uuid::Uuid,
    /// The revert's own run record in `sync_runs` (trigger `revert`, outcome
    /// `reverted`, or `dry_run`); the undone runs' `reverted_by` names it.
    pub revert_load_id: LoadId,
    /// Rows written back: `inserted` + `updated` + `deleted`.
    pub changed: u64,
    /// Rows restored (deleted by the runs).
    pub inserted: u64,
    /// Rows given their state before the runs back.
    pub updated: u64,
    /// Rows removed (inserted by the runs).
    pub deleted: u64,
    /// The runs undone, newest first (in commit order).
    pub undone: Vec<MirrorUndoneRun>,
    /// A dry run: nothing changed.
    pub dry_run: bool,
    /// After a revert: the file whose content the next syncs skip until it
    /// changes (`None` for a dry run).
    pub held_back: Option<String>,
}

/// A run a revert undid (or would undo).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct MirrorUndoneRun {
    pub load_id: uuid::Uuid,
    /// When it started (RFC 3339, UTC), from its `sync_runs` record (`None`
    /// without one: a library call).
    pub started_at: Option<String>,
    /// When it committed (RFC 3339, UTC).
    pub finished_at: String,
    pub file: String,
    /// Its trigger, from its `sync_runs` record.
    pub trigger: Option<String>,
}

/// Why a mirror's run did not complete; each names the mirror. After any of
/// them the table is as it was before the run.
#[derive(Debug, thiserror::Error)]
pub enum MirrorRunError {
    #[error("mirror {mirror}: another run of this mirror holds its lock; nothing done (the next run tries again)")]
    Busy { mirror: String },
    #[error("mirror {mirror}: {source}")]
    Lock {
        mirror: String,
        #[source]
        source: DbError,
    },
    #[error(transparent)]
    Incompatible(#[from] IncompatibleTable),
    #[error("mirror {mirror}: {source}")]
    Source {
        mirror: String,
        #[source]
        source: crate::config::ConfineError,
    },
    #[error("mirror {mirror}: files {pattern}: {reason}; nothing was read")]
    GlobDir {
        mirror: String,
        pattern: String,
        reason: String,
    },
    #[error("mirror {mirror}: {file}: the file changed while it was being read; nothing applied (a later run syncs the new content)")]
    FileChanged { mirror: String, file: PathBuf },
    #[error("mirror {mirror}: the source changed after it settled ({what}); nothing read (the next run reads it once it settles again)")]
    SourceMoved { mirror: String, what: String },
    #[error("mirror {mirror}: {source}")]
    Read {
        mirror: String,
        #[source]
        source: ReadError,
    },
    #[error("mirror {mirror}: {file}: line {line}: the header has no {column:?} column (it has: {found}); nothing was loaded")]
    MissingColumn {
        mirror: String,
        file: PathBuf,
        line: u64,
        column: String,
        found: String,
    },
    #[error("mirror {mirror}: {file}: line {line}: the header names {column:?} twice; nothing was loaded")]
    DuplicateColumn {
        mirror: String,
        file: PathBuf,
        line: u64,
        column: String,
    },
    #[error("mirror {mirror}: {rejected} rejected lines, more than MAX_REJECTS={max}; nothing was loaded (first: {first})")]
    TooManyRejects {
        mirror: String,
        max: u64,
        /// The lines read, the rejected ones included.
        rows_read: u64,
        /// Every reject of the file, counted.
        rejected: u64,
        first: Box<MirrorReject>,
        /// The others, up to 10,000 in all with `first`, in file order.
        rejects: Vec<MirrorReject>,
    },
    #[error("mirror {mirror}: the file would delete {deleted} of {current} rows ({:.1}%), more than max_delete_ratio={ratio}; rolled back (use --allow-mass-delete if intended)", crate::convert::percent(*.deleted, *.current))]
    MassDelete {
        mirror: String,
        deleted: u64,
        current: u64,
        ratio: f64,
        /// What the run would have done.
        counts: Box<crate::domain::Counts>,
    },
    #[error("mirror {mirror}: the file would change {updated} of {current} rows ({:.1}%), more than MAX_UPDATE_RATIO={ratio}; rolled back (use --allow-mass-update if intended)", crate::convert::percent(*.updated, *.current))]
    MassUpdate {
        mirror: String,
        updated: u64,
        current: u64,
        ratio: f64,
        /// What the run would have done.
        counts: Box<crate::domain::Counts>,
    },
    #[error("mirror {mirror}: the file is empty ({what}) and would delete all {current} rows; an empty file is refused whatever max_delete_ratio says (use --allow-mass-delete if intended)")]
    EmptyFile {
        mirror: String,
        current: u64,
        what: Emptiness,
        /// What the run would have done.
        counts: Box<crate::domain::Counts>,
    },
    #[error("mirror {mirror}: files {pattern}: {what}, and the empty source would delete all {current} rows; an empty source is refused whatever max_delete_ratio says (use --allow-mass-delete if intended)")]
    EmptySource {
        mirror: String,
        pattern: String,
        /// `no file matches`, or how many files, every one empty.
        what: String,
        current: u64,
        /// What the run would have done.
        counts: Box<crate::domain::Counts>,
    },
    #[error("mirror {mirror}: waited LOCK_WAIT_TIMEOUT={} for another session writing the table: {blockers}; rolled back, nothing changed (the next run tries again)", robfig_cron::go_duration::format_go_duration(*.waited))]
    WritersBusy {
        mirror: String,
        waited: Duration,
        /// The sessions holding the table then (application, user, state, since when).
        blockers: String,
    },
    #[error("mirror {mirror}: the {op} changed {actual} row(s), the diff found {expected} (a trigger, rule or another writer changed the table during the run); rolled back, nothing changed")]
    Mismatch {
        mirror: String,
        op: &'static str,
        expected: u64,
        actual: u64,
    },
    #[error(
        "mirror {mirror}: the run lost its lock (its session ended, or another agent's recovery marked the run interrupted); rolled back, nothing changed"
    )]
    Lost { mirror: String },
    #[error("mirror {mirror}: COPY stored {staged} rows of the {accepted} valid lines read; nothing was merged")]
    StagedCount {
        mirror: String,
        staged: u64,
        accepted: u64,
    },
    #[error("mirror {mirror}: step {step} failed; rolled back, the table is unchanged")]
    Db {
        mirror: String,
        step: &'static str,
        #[source]
        source: DbErr,
    },
    #[error("mirror {mirror}: staging failed; nothing was loaded")]
    Copy {
        mirror: String,
        #[source]
        source: sqlx::Error,
    },
    #[error(
        "mirror {mirror}: no run to revert (none changed the table, or every one is reverted)"
    )]
    NothingToRevert { mirror: String },
    #[error("mirror {mirror}: the table {table} does not exist (dropped since run {load_id} changed it); a revert could not be exact, nothing changed (a sync creates the table again)")]
    TableMissing {
        mirror: String,
        table: String,
        load_id: uuid::Uuid,
    },
    #[error("mirror {mirror}: no run with load_id {load_id}")]
    UnknownRun { mirror: String, load_id: uuid::Uuid },
    #[error("mirror {mirror}: run {load_id} is {outcome}, not synced: only synced runs changed the table")]
    NotSynced {
        mirror: String,
        load_id: uuid::Uuid,
        outcome: String,
    },
    #[error("mirror {mirror}: run {load_id} was already reverted (at {at}{})", .by.map(|by| format!(", by {by}")).unwrap_or_default())]
    AlreadyReverted {
        mirror: String,
        load_id: uuid::Uuid,
        /// The revert's record, when known.
        by: Option<uuid::Uuid>,
        at: String,
    },
    #[error("mirror {mirror}: the revert would delete {deleted} of {current} rows ({:.1}%), more than max_delete_ratio={ratio}; nothing changed (use --allow-mass-delete if intended)", crate::convert::percent(*.deleted, *.current))]
    RevertMassDelete {
        mirror: String,
        deleted: u64,
        current: u64,
        ratio: f64,
    },
    #[error("mirror {mirror}: the run {load_id} has no journal (journal_keep_runs was 0, or its journal was pruned); cannot revert it")]
    NoJournal { mirror: String, load_id: uuid::Uuid },
    /// `check_mirror_file`: the two reads of the file differ.
    #[error("mirror {mirror}: {}: the file changed while it was being checked (read twice to find repeated keys); check it again once it is complete", file.display())]
    CheckedFileChanged { mirror: String, file: PathBuf },
    #[error("mirror {mirror}: run {load_id} merged with another definition of the mirror (table, key, columns or modified_column) than the current one; a revert could not be exact, nothing changed")]
    DefinitionChanged { mirror: String, load_id: uuid::Uuid },
    #[error("mirror {mirror}: the journal of run {load_id} holds {found} rows, {expected} recorded; a revert could not be exact, nothing changed")]
    JournalIncomplete {
        mirror: String,
        load_id: uuid::Uuid,
        found: u64,
        expected: u64,
    },
    #[error("mirror {mirror}: {count} row(s) changed outside the agent since run {load_id} (e.g. {}); a revert would not be exact, nothing changed (sync a corrected file instead)", .examples.join("; "))]
    RevertDrift {
        mirror: String,
        load_id: uuid::Uuid,
        count: u64,
        /// Up to three, each its key (`jsonb`) and what differs.
        examples: Vec<String>,
    },
    #[error("mirror {mirror}: the {op} wrote back {actual} row(s), the journal holds {expected}; rolled back, nothing changed")]
    RevertMismatch {
        mirror: String,
        op: &'static str,
        expected: u64,
        actual: u64,
    },
}

/// The two keys of a mirror's run lock (`pg_try_advisory_lock(int4, int4)`):
/// 64 bits of the blake3 hash of its quoted table name (one table has one
/// mirror), `MirrorSql::lock_key`.
pub fn mirror_lock_key(spec: &MirrorSpec) -> (i32, i32) {
    MirrorSql::new(spec).lock_key()
}

/// Takes the mirror's run lock, or `Busy`.
pub(crate) async fn run_lock(
    url: &DatabaseUrl,
    spec: &MirrorSpec,
) -> Result<AdvisoryLock, MirrorRunError> {
    let mirror = spec.name.to_string();
    match AdvisoryLock::try_mirror_lock(url, mirror_lock_key(spec)).await {
        Ok(Some(lock)) => Ok(lock),
        Ok(None) => Err(MirrorRunError::Busy { mirror }),
        Err(source) => Err(MirrorRunError::Lock { mirror, source }),
    }
}

/// The mirror's CSV format: its own settings, else the variables'.
fn csv_format(spec: &MirrorSpec, options: &MirrorRunOptions) -> CsvFormat {
    let o = &spec.overrides;
    CsvFormat {
        delimiter: o.csv_delimiter.unwrap_or(options.csv.delimiter),
        header: o.csv_header.unwrap_or(options.csv.header),
        encoding: o.csv_encoding.unwrap_or(options.csv.encoding),
    }
}

fn stmt(sql: &str, values: Vec<Value>) -> Statement {
    Statement::from_sql_and_values(DbBackend::Postgres, sql, values)
}

/// Syncs one mirror: its file into its table (the steps above). Returns what it
/// did, or why not; the table is then unchanged.
#[tracing::instrument(skip_all, fields(mirror = %spec.name))]
pub async fn sync_mirror(
    db: &DatabaseConnection,
    url: &DatabaseUrl,
    spec: &MirrorSpec,
    tables_dir: &Path,
    options: MirrorRunOptions,
) -> Result<MirrorSummary, MirrorRunError> {
    let lock = run_lock(url, spec).await?;
    let mut stages = StageTimes::labelled(Some(spec.name.as_str()));
    let result = locked_sync(
        db,
        spec,
        tables_dir,
        &options,
        Held {
            lock: &lock,
            load_id: LoadId::new(),
            settled: None,
        },
        &mut stages,
        &mut crate::domain::Counts::default(),
    )
    .await;
    lock.release().await;
    result
}

/// The steps after the lock (the table above), timed in `stages`; `counts`
/// holds what the run read once it is known (rows, rejects, duplicates), for
/// the summary and record of a run that fails after its read.
pub(crate) async fn locked_sync(
    db: &DatabaseConnection,
    spec: &MirrorSpec,
    tables_dir: &Path,
    options: &MirrorRunOptions,
    held: Held<'_>,
    stages: &mut StageTimes,
    counts: &mut crate::domain::Counts,
) -> Result<MirrorSummary, MirrorRunError> {
    let Held {
        lock,
        load_id,
        settled,
    } = held;
    let mirror = spec.name.to_string();
    let files = source_files(spec, tables_dir)?;
    if let Some(settled) = settled {
        unmoved(spec, &files, settled)?;
    }
    let sql = MirrorSql::new(spec);
    // An absent table is created by the merge, in its transaction; a dry run
    // creates nothing and plans every row as an insert.
    let absent = merge::prepare_table(db, &sql, options).await?;
    stages.begin(Stage::Hash);
    let format = csv_format(spec, options);
    let hash = {
        let (spec, files) = (spec.clone(), files.clone());
        tokio::task::spawn_blocking(move || source::hash_source(&spec, &files, &format))
            .await
            .expect("the hash task does not panic")?
    };
    let refusal = refusal_key(spec, options, &hash.combined);
    let sync_reason = match decide(db, &sql, options, &hash.combined, &refusal).await? {
        Decision::Skip(summary) => {
            // A staging table left by a run that lost its lock (step 8 of
            // docs/mirrors.md#runs) goes now: an unchanged file would
            // otherwise keep its rows there for as long as every run skips.
            // Not waited for long: a lost run still holding it is left to the
            // next run.
            let _ = lock.execute_holding(&sql.drop_staging_within(1000)).await;
            return Ok(*summary);
        }
        Decision::Read(reason) => reason,
    };
    stages.begin(Stage::ReadAndStage);
    // On the lock's session: a staging table is made and dropped only by the
    // run that holds the table's lock.
    for statement in [sql.drop_staging(), sql.create_staging()] {
        lock.execute_holding(&statement)
            .await
            .map_err(|source| MirrorRunError::Copy {
                mirror: mirror.clone(),
                source,
            })?;
    }
    // What the run records as its file: the file, or the glob.
    let recorded = match &spec.source {
        MirrorSource::File(_) => files.first().cloned().unwrap_or_default(),
        MirrorSource::Glob(pattern) => tables_dir.join(pattern),
    };
    let result = async {
        let read = read::read_and_stage(db, spec, &files, format, options, load_id).await?;
        *counts = crate::domain::Counts {
            rows_read: read.rows_read,
            rejected: read.rejected,
            ..crate::domain::Counts::default()
        };
        // The bytes read are the bytes hashed (docs/mirrors.md#runs).
        let changed = files
            .iter()
            .zip(hash.parts.iter().zip(&read.parts))
            .find(|(_, (hashed, read))| hashed != read);
        if let Some((file, _)) = changed {
            return Err(MirrorRunError::FileChanged {
                mirror: mirror.clone(),
                file: file.clone(),
            });
        }
        let guard = Guard {
            max_delete_ratio: spec
                .overrides
                .max_delete_ratio
                .unwrap_or(options.max_delete_ratio),
            allow_mass_delete: options.allow_mass_delete,
            max_update_ratio: options.max_update_ratio,
            allow_mass_update: options.allow_mass_update,
            empty_file: source::emptiness(&files),
        };
        let load = merge::Load {
            load_id,
            lock_pid: lock.pid(),
            path: &recorded,
            guard,
            absent,
        };
        stages.begin(Stage::Dedupe);
        let starts = read.starts.clone();
        let mut summary = merge::dedupe_and_merge(db, &sql, options, &load, read, stages, counts)
            .await
            .map_err(|e| empty_source(spec, &files, e))?;
        summary.duplicate_lines = summary
            .duplicate_examples
            .iter()
            .map(|(key, ordinals)| {
                let lines = ordinals
                    .iter()
                    .map(|&n| source_line(&files, &starts, n))
                    .collect();
                (key.clone(), lines)
            })
            .collect();
        summary.files = files.clone();
        Ok(summary)
    }
    .await;
    // Only while the lock is held: a run that lost it leaves the table to the
    // run that took it over (which drops it before its own COPY).
    let _ = lock.execute_holding(&sql.drop_staging()).await;
    if result.as_ref().is_err_and(refuses_content) {
        // Remembered with the run's record, which its caller finishes `refused`.
        if let Err(e) = crate::runs::mark_refusal(db, load_id, &refusal).await {
            tracing::warn!(error = %e, "could not remember the refusal; the next run reads the file again");
        }
    }
    let mut summary = result?;
    summary.sync_reason = sync_reason;
    if !options.dry_run {
        merge::retain(db, &sql, options).await;
    }
    Ok(summary)
}

/// What the run does with its source.
enum Decision {
    /// Skipped: unchanged, held back by a revert, or refused earlier.
    Skip(Box<MirrorSummary>),
    /// Read it; with why, when the file itself is unchanged.
    Read(Option<String>),
}

/// Whether the run reads its source (docs/mirrors.md#skip): the skip check,
/// then a refusal of this content that still stands.
async fn decide(
    db: &DatabaseConnection,
    sql: &MirrorSql<'_>,
    options: &MirrorRunOptions,
    hash: &crate::domain::ContentHash,
    refusal: &str,
) -> Result<Decision, MirrorRunError> {
    let spec = sql.spec();
    let mirror = spec.name.to_string();
    // A dry run plans an unchanged file too, but not content a revert holds back.
    let sync_reason = if options.force {
        None
    } else {
        match merge::trust(db, sql, hash.as_str(), options.verify_every).await? {
            merge::Trust::Skip {
                held_back: false, ..
            } if options.dry_run => None,
            merge::Trust::Skip {
                held_back,
                unverified,
            } => {
                return Ok(Decision::Skip(Box::new(MirrorSummary {
                    mirror,
                    content_hash: hash.as_str().to_owned(),
                    held_back,
                    unverified,
                    ..MirrorSummary::default()
                })))
            }
            merge::Trust::Sync(reason) => reason,
        }
    };
    if let Some(reason) = &sync_reason {
        tracing::info!(mirror = %spec.name, reason = %reason, "the file is unchanged but synced");
    }
    // Content refused earlier under the same limits is not read again until
    // something approves it (docs/sync.md#refusals-and-approvals).
    if !options.dry_run && !options.approves() {
        let refused = crate::runs::standing_refusal_of(db, spec.name.as_str(), refusal)
            .await
            .map_err(|e| merge::db_error(spec, "status", e))?;
        if let Some((earlier, why)) = refused {
            return Ok(Decision::Skip(Box::new(MirrorSummary {
                mirror,
                content_hash: hash.as_str().to_owned(),
                refused_earlier: Some(format!(
                    "{} (run {earlier})",
                    why.as_deref().unwrap_or("refused")
                )),
                ..MirrorSummary::default()
            })));
        }
    }
    Ok(Decision::Read(sync_reason))
}

/// The key a refusal of this content is remembered by: the source's hash, the
/// limits that refused it and the definition, so another file, other limits or
/// another definition read it again.
fn refusal_key(
    spec: &MirrorSpec,
    options: &MirrorRunOptions,
    hash: &crate::domain::ContentHash,
) -> String {
    let o = &spec.overrides;
    let key = format!(
        "{hash} MAX_REJECTS={} MAX_DELETE_RATIO={} MAX_UPDATE_RATIO={} {}",
        o.max_rejects.unwrap_or(options.max_rejects),
        o.max_delete_ratio.unwrap_or(options.max_delete_ratio),
        options.max_update_ratio,
        crate::storage::mirror::definition_fingerprint(spec)
    );
    blake3::hash(key.as_bytes()).to_hex().to_string()
}

/// Whether `e` refuses the content itself (a guard, the rejects, the header):
/// the same content is refused again until something approves it.
fn refuses_content(e: &MirrorRunError) -> bool {
    use MirrorRunError as E;
    matches!(
        e,
        E::MassDelete { .. }
            | E::MassUpdate { .. }
            | E::EmptyFile { .. }
            | E::EmptySource { .. }
            | E::TooManyRejects { .. }
            | E::MissingColumn { .. }
            | E::DuplicateColumn { .. }
    )
}

/// A run holding its mirror's run lock: the lock, the run's load, and its
/// source as it settled before the lock (`None`: not checked, a library call).
#[derive(Clone, Copy)]
pub(crate) struct Held<'a> {
    pub lock: &'a AdvisoryLock,
    pub load_id: LoadId,
    pub settled: Option<&'a [Settled]>,
}

/// A source file as it was found settled (and ready) before the lock; `None`:
/// missing then.
pub(crate) type Settled = (PathBuf, Option<crate::pipeline::settle::FileState>);

/// The source under the lock is the one that settled before it: the same
/// files, each in the same state; a file added, removed or written since has
/// passed neither the ready marker nor the settle rules (docs/mirrors.md#runs).
fn unmoved(
    spec: &MirrorSpec,
    files: &[PathBuf],
    settled: &[Settled],
) -> Result<(), MirrorRunError> {
    let moved = |what: String| MirrorRunError::SourceMoved {
        mirror: spec.name.to_string(),
        what,
    };
    let before: Vec<&PathBuf> = settled.iter().map(|(f, _)| f).collect();
    if files.iter().collect::<Vec<_>>() != before {
        return Err(moved(format!(
            "{} file(s) now, {} when it settled",
            files.len(),
            settled.len()
        )));
    }
    for (file, state) in settled {
        if crate::pipeline::settle::file_state(file) != *state {
            return Err(moved(format!("{} was written", file.display())));
        }
    }
    Ok(())
}

/// A glob's empty source refused, in the glob's words.
fn empty_source(spec: &MirrorSpec, files: &[PathBuf], e: MirrorRunError) -> MirrorRunError {
    match (&spec.source, e) {
        (
            MirrorSource::Glob(pattern),
            MirrorRunError::EmptyFile {
                mirror,
                current,
                counts,
                ..
            },
        ) => MirrorRunError::EmptySource {
            mirror,
            pattern: pattern.clone(),
            what: match files.len() {
                0 => "no file matches".to_owned(),
                1 => "its one file is empty".to_owned(),
                n => format!("its {n} files are all empty"),
            },
            current,
            counts,
        },
        (_, e) => e,
    }
}

/// The file and line of a staged ordinal (`read::ReadOutcome::starts`).
fn source_line(files: &[PathBuf], starts: &[u64], ordinal: i64) -> SourceLine {
    let ordinal = u64::try_from(ordinal).unwrap_or(0);
    let i = starts
        .partition_point(|&start| start < ordinal)
        .saturating_sub(1);
    SourceLine {
        file: files.get(i).cloned().unwrap_or_default(),
        line: ordinal.saturating_sub(starts.get(i).copied().unwrap_or(0)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ordinal_names_its_file_and_line_past_files_without_rows() {
        let files: Vec<PathBuf> = ["a.csv", "b.csv", "c.csv"].map(PathBuf::from).into();
        // a.csv: lines 1 to 5; b.csv: no rows; c.csv: from ordinal 6.
        let starts = [0, 5, 5];
        let at = |n| {
            let s = source_line(&files, &starts, n);
            (s.file.display().to_string(), s.line)
        };
        assert_eq!(at(2), ("a.csv".to_owned(), 2));
        assert_eq!(at(5), ("a.csv".to_owned(), 5));
        assert_eq!(at(6), ("c.csv".to_owned(), 1));
        assert_eq!(at(9), ("c.csv".to_owned(), 4));
    }
}
