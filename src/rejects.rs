//! The rejects report (`etl_info_schema.sync_rejects`): each run's rejected lines
//! with their number, reason and text (cut to `read::RAW_LINE_LIMIT` bytes), for
//! `followers-etl rejects`. Written in bulk after the run's reading ends, whatever
//! its outcome; removed with their run (`ON DELETE CASCADE`), so the runs'
//! retention bounds them too (docs/sync.md#rejects-report).

use crate::domain::LoadId;
use crate::storage::sync_rejects;
use serde::Serialize;
use sqlx::PgPool;
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
    pool: &PgPool,
    load_id: LoadId,
    rejects: &[StoredReject],
) -> Result<(), sqlx::Error> {
    for chunk in rejects.chunks(INSERT_BATCH) {
        let lines: Vec<i64> = chunk
            .iter()
            .map(|r| crate::convert::bigint("line_no", r.line))
            .collect::<Result<_, _>>()
            .map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
        let reasons: Vec<&str> = chunk.iter().map(|r| r.reason.as_str()).collect();
        let raws: Vec<&str> = chunk.iter().map(|r| r.raw.as_str()).collect();
        sqlx::query(sync_rejects::INSERT)
            .bind(load_id.uuid())
            .bind(&lines)
            .bind(&reasons)
            .bind(&raws)
            .execute(pool)
            .await?;
    }
    Ok(())
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
    pool: &PgPool,
    mirror: &str,
    load_id: Option<Uuid>,
) -> Result<Option<RunRejects>, sqlx::Error> {
    let run: Option<(Uuid, String, String, i64)> = sqlx::query_as(sync_rejects::RUN)
        .bind(load_id)
        .bind(mirror)
        .fetch_optional(pool)
        .await?;
    let Some((load_id, outcome, file, rejected)) = run else {
        return Ok(None);
    };
    let rows: Vec<(i64, String, String)> = sqlx::query_as(sync_rejects::OF_RUN)
        .bind(load_id)
        .fetch_all(pool)
        .await?;
    Ok(Some(RunRejects {
        load_id,
        outcome,
        file,
        rejected,
        rejects: rows
            .into_iter()
            .map(|(line, reason, raw)| {
                Ok(StoredReject {
                    line: crate::convert::count("line_no", line)?,
                    reason,
                    raw,
                })
            })
            .collect::<Result<_, crate::convert::OutOfRange>>()
            .map_err(|e| sqlx::Error::Decode(Box::new(e)))?,
    }))
}
