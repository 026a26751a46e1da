//! The rejects report (`etl_info_schema.sync_rejects`): each run's rejected lines
//! with their number, reason and text (cut to `read::RAW_LINE_LIMIT` bytes), for
//! `followers-etl rejects`. Written in bulk after the run's reading ends, whatever
//! its outcome; removed with their run (`ON DELETE CASCADE`), so the runs'
//! retention bounds them too (docs/sync.md#rejects-report).

use crate::domain::LoadId;
use crate::storage::sync_rejects;
use sea_orm::{ConnectionTrait, DbBackend, DbErr, Statement, Value};
use serde::Serialize;
use uuid::Uuid;

/// At most this many rejects are stored per run (all of them are counted).
pub(crate) const STORED_PER_RUN: usize = 10_000;

/// Rows per INSERT statement.
const INSERT_BATCH: usize = 1_000;

/// One rejected line.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub(crate) struct StoredReject {
    pub line: u64,
    pub reason: String,
    pub raw: String,
}

/// Stores a run's rejects, one multi-row INSERT (arrays unnested) per batch.
#[tracing::instrument(skip_all, fields(rejects = rejects.len()), err(level = "debug"))]
pub(crate) async fn store(
    db: &impl ConnectionTrait,
    load_id: LoadId,
    rejects: &[StoredReject],
) -> Result<(), DbErr> {
    for chunk in rejects.chunks(INSERT_BATCH) {
        let lines: Vec<i64> = chunk
            .iter()
            .map(|r| crate::convert::bigint("line_no", r.line))
            .collect::<Result<_, _>>()?;
        let reasons: Vec<String> = chunk.iter().map(|r| r.reason.clone()).collect();
        let raws: Vec<String> = chunk.iter().map(|r| r.raw.clone()).collect();
        db.execute(stmt(
            sync_rejects::INSERT,
            vec![
                load_id.uuid().into(),
                lines.into(),
                reasons.into(),
                raws.into(),
            ],
        ))
        .await?;
    }
    Ok(())
}

fn stmt(sql: &str, values: Vec<Value>) -> Statement {
    Statement::from_sql_and_values(DbBackend::Postgres, sql, values)
}

/// The run a `rejects` command reports on.
#[derive(Debug, Serialize)]
pub(crate) struct RunRejects {
    pub load_id: Uuid,
    pub outcome: String,
    pub file: String,
    /// All rejected rows the run counted.
    pub rejected: i64,
    /// The stored ones, by line.
    pub rejects: Vec<StoredReject>,
}

/// The rejects of `load_id`, or of the newest run that read the file (not
/// `skipped`, not still `running`, not a revert, not refused before reading,
/// as a run whose file is not settled is); `None` when there is no such run.
pub(crate) async fn of_run(
    db: &impl ConnectionTrait,
    mirror: &str,
    load_id: Option<Uuid>,
) -> Result<Option<RunRejects>, DbErr> {
    let Some(run) = db
        .query_one(stmt(sync_rejects::RUN, vec![load_id.into(), mirror.into()]))
        .await?
    else {
        return Ok(None);
    };
    let load_id: Uuid = run.try_get("", "load_id")?;
    let rows = db
        .query_all(stmt(sync_rejects::OF_RUN, vec![load_id.into()]))
        .await?;
    let rejects = rows
        .iter()
        .map(|row| {
            let line: i64 = row.try_get("", "line_no")?;
            Ok(StoredReject {
                line: crate::convert::count("line_no", line)?,
                reason: row.try_get("", "reason")?,
                raw: row.try_get("", "raw_line")?,
            })
        })
        .collect::<Result<_, DbErr>>()?;
    Ok(Some(RunRejects {
        load_id,
        outcome: run.try_get("", "outcome")?,
        file: run.try_get("", "file")?,
        rejected: run.try_get("", "rejected")?,
        rejects,
    }))
}
