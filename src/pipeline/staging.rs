//! Staging: batches of followers → `COPY` into `staging_followers` under the run's
//! `load_id`, by a pool of worker tasks fed through a bounded channel (so memory
//! stays at a few batches whatever the file size). Afterwards duplicates are
//! reported and resolved in SQL: the last occurrence in the file wins.
//!
//! Compensation: `discard` deletes every staging row of the load.

use super::dupes::Candidates;
use super::validate::Follower;
use crate::convert::{self, OutOfRange};
use crate::domain::LoadId;
use crate::storage::staging_followers as table;
use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, DbErr, Statement};
use sqlx::PgPool;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

pub type Batch = Vec<Follower>;

#[derive(Debug, thiserror::Error)]
pub enum StagingError {
    #[error("COPY into staging_followers failed")]
    Copy(#[source] sqlx::Error),
    #[error("cancelled")]
    Cancelled,
    #[error("staging worker panicked")]
    Worker(#[source] tokio::task::JoinError),
    #[error("resolving duplicates failed")]
    Dedupe(#[source] DbErr),
    #[error("a row cannot be staged")]
    Encode(#[from] OutOfRange),
}

/// A batch in COPY's binary format: the server neither scans the text for
/// delimiters and escapes nor parses the uuid and the line number (measured
/// against the text format: docs/performance.md#binary-copy).
fn encode(batch: &[Follower], load_id: &[u8; 16], buf: &mut Vec<u8>) -> Result<(), OutOfRange> {
    buf.clear();
    // Signature, flags (no OIDs), no header extension.
    buf.extend_from_slice(b"PGCOPY\n\xff\r\n\0");
    buf.extend_from_slice(&0i32.to_be_bytes());
    buf.extend_from_slice(&0i32.to_be_bytes());
    for f in batch {
        buf.extend_from_slice(&4i16.to_be_bytes());
        push_field(buf, f.email.as_str().as_bytes())?;
        push_field(buf, f.full_name.as_str().as_bytes())?;
        push_field(buf, load_id)?;
        push_field(buf, &convert::bigint("line_no", f.line)?.to_be_bytes())?;
    }
    buf.extend_from_slice(&(-1i16).to_be_bytes());
    Ok(())
}

/// One field: its length, then its bytes. Emails and names are at most 255
/// characters (validated), so the length fits.
fn push_field(buf: &mut Vec<u8>, value: &[u8]) -> Result<(), OutOfRange> {
    buf.extend_from_slice(&convert::int4_len("COPY field length", value.len())?.to_be_bytes());
    buf.extend_from_slice(value);
    Ok(())
}

/// Runs `workers` tasks that COPY every batch from `batches` until the channel
/// closes. On the first error the others stop (through `cancel`) and the error is
/// returned; rows already copied stay until `discard`.
#[tracing::instrument(skip_all, fields(load_id = %load_id, workers), err(level = "debug"))]
pub async fn copy_batches(
    pool: &PgPool,
    load_id: LoadId,
    workers: usize,
    batches: async_channel::Receiver<Batch>,
    staged: Arc<AtomicU64>,
    cancel: CancellationToken,
) -> Result<u64, StagingError> {
    let mut tasks = JoinSet::new();
    for _ in 0..workers {
        let (pool, batches, staged, cancel) = (
            pool.clone(),
            batches.clone(),
            staged.clone(),
            cancel.clone(),
        );
        tasks.spawn(
            async move {
                let load_id = *load_id.uuid().as_bytes();
                let mut conn = None;
                let mut buf = Vec::new();
                let mut copied = 0u64;
                loop {
                    let batch = tokio::select! {
                        _ = cancel.cancelled() => return Err(StagingError::Cancelled),
                        batch = batches.recv() => match batch {
                            Ok(batch) => batch,
                            Err(_) => return Ok(copied),
                        },
                    };
                    let conn = match &mut conn {
                        Some(conn) => conn,
                        None => conn.insert(pool.acquire().await.map_err(StagingError::Copy)?),
                    };
                    encode(&batch, &load_id, &mut buf)?;
                    let mut copy = conn
                        .copy_in_raw(table::COPY)
                        .await
                        .map_err(StagingError::Copy)?;
                    if let Err(e) = copy.send(buf.as_slice()).await {
                        let _ = copy.abort("followers-etl: send failed").await;
                        return Err(StagingError::Copy(e));
                    }
                    let n = copy.finish().await.map_err(StagingError::Copy)?;
                    copied += n;
                    staged.fetch_add(n, Ordering::Relaxed);
                }
            }
            .instrument(tracing::Span::current()),
        );
    }
    drop(batches);
    let mut total = 0;
    let mut first_error = None;
    while let Some(joined) = tasks.join_next().await {
        match joined.map_err(StagingError::Worker).and_then(|r| r) {
            Ok(n) => total += n,
            Err(e) => {
                cancel.cancel();
                // A real failure explains the cancellations it causes in the others.
                if first_error.is_none() || matches!(first_error, Some(StagingError::Cancelled)) {
                    first_error = Some(e);
                }
            }
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(total),
    }
}

/// Duplicate emails of a load: how many extra rows, and up to `limit` examples
/// (email and every line it appears on).
pub struct Duplicates {
    pub extra_rows: u64,
    pub examples: Vec<(String, Vec<i64>)>,
}

fn stmt(sql: &str, values: Vec<sea_orm::Value>) -> Statement {
    Statement::from_sql_and_values(DbBackend::Postgres, sql, values)
}

/// A statement of `resolve_duplicates` over the load `id`, restricted to the
/// candidates the reader found (`dupes.rs`): `{only}` in `sql` becomes the filter
/// on parameter `$n`, the last of `values`.
fn only(sql: &str, candidates: &Candidates, mut values: Vec<sea_orm::Value>) -> Statement {
    match candidates {
        Candidates::All => stmt(&table::only(sql, None), values),
        Candidates::Only(emails) => {
            values.push(emails.clone().into());
            let n = values.len();
            stmt(&table::only(sql, Some(n)), values)
        }
    }
}

/// Reports duplicates, then deletes every occurrence but the last, so the load
/// holds one row per email. Only `candidates` can be duplicates; none: nothing to do.
#[tracing::instrument(skip_all, fields(load_id = %load_id), err(level = "debug"))]
pub async fn resolve_duplicates(
    db: &DatabaseConnection,
    load_id: LoadId,
    limit: u64,
    candidates: &Candidates,
) -> Result<Duplicates, StagingError> {
    if candidates == &Candidates::Only(vec![]) {
        return Ok(Duplicates {
            extra_rows: 0,
            examples: vec![],
        });
    }
    let id = load_id.uuid();
    let row = db
        .query_one(only(table::EXTRA, candidates, vec![id.into()]))
        .await
        .map_err(StagingError::Dedupe)?;
    let extra: i64 = match row {
        Some(row) => row.try_get("", "extra").map_err(StagingError::Dedupe)?,
        None => 0,
    };
    let mut examples = Vec::new();
    if extra > 0 {
        for row in db
            .query_all(only(
                table::DUPLICATES,
                candidates,
                vec![
                    id.into(),
                    convert::bigint("duplicate report limit", limit)
                        .map_err(|e| StagingError::Dedupe(e.into()))?
                        .into(),
                ],
            ))
            .await
            .map_err(StagingError::Dedupe)?
        {
            examples.push((
                row.try_get("", "email").map_err(StagingError::Dedupe)?,
                row.try_get("", "lines").map_err(StagingError::Dedupe)?,
            ));
        }
        db.execute(only(
            table::DROP_EARLIER_COPIES,
            candidates,
            vec![id.into()],
        ))
        .await
        .map_err(StagingError::Dedupe)?;
    }
    Ok(Duplicates {
        extra_rows: convert::count("duplicate rows", extra)
            .map_err(|e| StagingError::Dedupe(e.into()))?,
        examples,
    })
}

/// Removes staged rows whose email appears again later in the file on a
/// rejected row (`protected`: email and line): the last occurrence wins, and a
/// rejected one leaves the follower as it is. Returns the rows removed.
#[tracing::instrument(skip_all, fields(load_id = %load_id), err(level = "debug"))]
pub async fn drop_superseded(
    db: &DatabaseConnection,
    load_id: LoadId,
    protected: &[(String, u64)],
) -> Result<u64, StagingError> {
    if protected.is_empty() {
        return Ok(0);
    }
    let emails: Vec<String> = protected.iter().map(|(e, _)| e.clone()).collect();
    let lines = protected
        .iter()
        .map(|(_, l)| convert::bigint("line_no", *l))
        .collect::<Result<Vec<i64>, _>>()
        .map_err(|e| StagingError::Dedupe(e.into()))?;
    let result = db
        .execute(stmt(
            table::DROP_SUPERSEDED,
            vec![load_id.uuid().into(), emails.into(), lines.into()],
        ))
        .await
        .map_err(StagingError::Dedupe)?;
    Ok(result.rows_affected())
}

/// Removes a finished run's staging rows without leaving dead rows behind
/// (docs/guarantees.md#database-faults: a failed run after a full disk): `TRUNCATE` when the role
/// may and staging holds no other load's rows (under an exclusive lock, waited
/// for at most 5 s), else the load's rows are deleted.
#[tracing::instrument(skip_all, err)]
pub async fn purge(db: &DatabaseConnection, load_id: LoadId) -> Result<u64, DbErr> {
    use sea_orm::TransactionTrait;
    let txn = db.begin().await?;
    txn.execute_unprepared(table::PURGE_LOCK).await?;
    let row = txn
        .query_one(stmt(table::PURGE_ALONE, vec![load_id.uuid().into()]))
        .await?
        .ok_or_else(|| DbErr::RecordNotFound("staging".into()))?;
    let (alone, rows): (bool, i64) = row.try_get_many_by_index()?;
    let removed = if alone {
        txn.execute_unprepared(table::TRUNCATE).await?;
        convert::count("staging rows", rows)?
    } else {
        discard(&txn, load_id).await?
    };
    txn.commit().await?;
    Ok(removed)
}

/// Compensation of staging: removes the load's rows.
#[tracing::instrument(skip_all, fields(load_id = %load_id), err(level = "debug"))]
pub async fn discard(db: &impl ConnectionTrait, load_id: LoadId) -> Result<u64, DbErr> {
    let result = db
        .execute(stmt(table::DISCARD, vec![load_id.uuid().into()]))
        .await?;
    Ok(result.rows_affected())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_binary_frames_each_field_by_length_and_keeps_bytes_as_they_are() {
        use crate::domain::{Email, FullName};
        let follower = Follower {
            line: 7,
            email: Email::parse("a@x.io").unwrap(),
            full_name: FullName::parse("Zoë\\ \"Z\"\tL").unwrap(),
        };
        let mut buf = Vec::new();
        encode(&[follower], &[9; 16], &mut buf).unwrap();
        let mut want = b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0".to_vec();
        want.extend_from_slice(&[0, 4]);
        want.extend_from_slice(&[0, 0, 0, 6]);
        want.extend_from_slice(b"a@x.io");
        let name = "Zoë\\ \"Z\"\tL".as_bytes();
        want.extend_from_slice(&i32::try_from(name.len()).unwrap().to_be_bytes());
        want.extend_from_slice(name);
        want.extend_from_slice(&[0, 0, 0, 16]);
        want.extend_from_slice(&[9; 16]);
        want.extend_from_slice(&[0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0, 7]);
        want.extend_from_slice(&[0xff, 0xff]);
        assert_eq!(buf, want);
    }
}
