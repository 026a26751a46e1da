//! HTTP endpoints of `serve` (`/healthz`, `/readyz`, `/metrics`) and the metrics
//! every run records (Prometheus text through `metrics-exporter-prometheus`).
//! They answer from the start, also while `serve` waits for the database (README,
//! Observability).

use crate::pipeline::Summary;
use crate::runs::Outcome;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use metrics::Unit;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use sea_orm::DatabaseConnection;
use tokio_util::sync::CancellationToken;

/// Metric names (README, "Observability").
const RUNS_TOTAL: &str = "followers_etl_runs_total";
const ROWS_TOTAL: &str = "followers_etl_rows_total";
const RUN_DURATION: &str = "followers_etl_run_duration_seconds";
const STAGE_DURATION: &str = "followers_etl_stage_duration_seconds";
const RUN_IN_PROGRESS: &str = "followers_etl_run_in_progress";
const LAST_SUCCESS: &str = "followers_etl_last_success_timestamp_seconds";
const FOLLOWERS: &str = "followers_etl_followers";

/// Histogram buckets of run and stage durations, in seconds: from a skipped run
/// (milliseconds) to a large file (tens of minutes).
const DURATION_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
    1800.0,
];

/// A run started: the in-progress gauge goes to 1 until `record_run`.
pub fn record_run_started() {
    metrics::gauge!(RUN_IN_PROGRESS).set(1.0);
}

/// Records what a run did; a no-op until `install_recorder` ran.
pub fn record_run(summary: &Summary) {
    let outcome = summary.outcome.as_str();
    metrics::gauge!(RUN_IN_PROGRESS).set(0.0);
    metrics::counter!(RUNS_TOTAL, "outcome" => outcome).increment(1);
    metrics::histogram!(RUN_DURATION, "outcome" => outcome).record(summary.duration.as_secs_f64());
    if summary.outcome == Outcome::Synced {
        let c = &summary.counts;
        for (action, n) in [
            ("read", c.rows_read),
            ("inserted", c.inserted),
            ("updated", c.updated),
            ("deleted", c.deleted),
            ("unchanged", c.unchanged),
            ("rejected", c.rejected),
            ("duplicate", c.duplicates),
        ] {
            metrics::counter!(ROWS_TOTAL, "action" => action).increment(n);
        }
        record_in_sync();
    }
}

/// The table was just confirmed a mirror of the file: synced, or skipped because the
/// file is unchanged since the last successful sync.
pub fn record_in_sync() {
    metrics::gauge!(LAST_SUCCESS).set(chrono::Utc::now().timestamp() as f64);
}

/// Records how long one stage of a run took.
pub fn record_stage(stage: &'static str, seconds: f64) {
    metrics::histogram!(STAGE_DURATION, "stage" => stage).record(seconds);
}

/// Installs the Prometheus recorder (histograms with `DURATION_BUCKETS`) and
/// describes every metric, so each has its HELP and TYPE lines.
pub fn install_recorder() -> Option<PrometheusHandle> {
    let handle = PrometheusBuilder::new()
        .set_buckets(DURATION_BUCKETS)
        .and_then(PrometheusBuilder::install_recorder)
        .map_err(|e| tracing::warn!(error = %e, "metrics disabled"))
        .ok()?;
    metrics::describe_counter!(
        RUNS_TOTAL,
        Unit::Count,
        "Sync runs finished, by outcome (synced, skipped, refused, failed, dry_run)."
    );
    metrics::describe_counter!(ROWS_TOTAL, Unit::Count, "Rows handled by successful syncs, by action (read, inserted, updated, deleted, unchanged, rejected, duplicate).");
    metrics::describe_histogram!(
        RUN_DURATION,
        Unit::Seconds,
        "Duration of sync runs, by outcome."
    );
    metrics::describe_histogram!(
        STAGE_DURATION,
        Unit::Seconds,
        "Duration of each stage of a run (settle, lock, hash, read_and_stage, dedupe, merge, plan)."
    );
    metrics::describe_gauge!(
        RUN_IN_PROGRESS,
        "1 while a sync run is in progress, else 0."
    );
    metrics::describe_gauge!(
        LAST_SUCCESS,
        Unit::Seconds,
        "Unix time this process last confirmed followers mirror the file: a synced run, or one skipped because the file is unchanged."
    );
    metrics::describe_gauge!(
        FOLLOWERS,
        Unit::Count,
        "Rows in public.followers, counted at scrape."
    );
    metrics::gauge!(RUN_IN_PROGRESS).set(0.0);
    Some(handle)
}

#[derive(Clone)]
struct AppState {
    db: DatabaseConnection,
    metrics: Option<PrometheusHandle>,
}

async fn healthz() -> &'static str {
    "ok\n"
}

/// `/readyz` answers within `HTTP_DB_TIMEOUT` (its own pool, see `db::http_pool`).
async fn readyz(State(state): State<AppState>) -> (StatusCode, String) {
    let timeout = crate::db::HTTP_DB_TIMEOUT;
    tokio::time::timeout(timeout, ready(&state))
        .await
        .unwrap_or_else(|_| {
            (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("database did not answer within {timeout:?}\n"),
            )
        })
}

async fn ready(state: &AppState) -> (StatusCode, String) {
    if let Err(e) = state.db.ping().await {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("database unreachable: {e}\n"),
        );
    }
    match crate::db::migrations_pending(&state.db).await {
        Ok(false) => (StatusCode::OK, "ready\n".into()),
        Ok(true) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "migrations pending\n".into(),
        ),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("cannot read migrations: {e}\n"),
        ),
    }
}

/// `/metrics` counts the followers within `HTTP_DB_TIMEOUT`, or keeps the last count.
async fn metrics_text(State(state): State<AppState>) -> String {
    let count = crate::runs::follower_count(&state.db);
    if let Ok(Ok(n)) = tokio::time::timeout(crate::db::HTTP_DB_TIMEOUT, count).await {
        metrics::gauge!(FOLLOWERS).set(n as f64);
    }
    state
        .metrics
        .as_ref()
        .map(PrometheusHandle::render)
        .unwrap_or_default()
}

/// Serves the endpoints until `stop` is cancelled.
pub async fn serve(
    listener: tokio::net::TcpListener,
    db: DatabaseConnection,
    metrics: Option<PrometheusHandle>,
    stop: CancellationToken,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .with_state(AppState { db, metrics });
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "HTTP endpoints listening");
    }
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { stop.cancelled().await })
        .await
}
