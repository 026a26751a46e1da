//! HTTP endpoints of `serve` (`/healthz`, `/readyz`, `/metrics`) and the metrics
//! every run records (Prometheus text through `metrics-exporter-prometheus`).

use crate::pipeline::Summary;
use crate::runs::Outcome;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use sea_orm::{ConnectionTrait, DatabaseConnection};
use tokio_util::sync::CancellationToken;

/// Records what a run did; a no-op until `install_recorder` ran.
pub fn record_run(summary: &Summary) {
    let outcome = summary.outcome.as_str();
    metrics::counter!("followers_etl_runs_total", "outcome" => outcome).increment(1);
    metrics::histogram!("followers_etl_run_duration_seconds", "outcome" => outcome)
        .record(summary.duration.as_secs_f64());
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
            metrics::counter!("followers_etl_rows_total", "action" => action).increment(n);
        }
        metrics::gauge!("followers_etl_last_success_timestamp_seconds")
            .set(chrono::Utc::now().timestamp() as f64);
    }
}

/// Records how long one stage of a run took.
pub fn record_stage(stage: &'static str, seconds: f64) {
    metrics::histogram!("followers_etl_stage_duration_seconds", "stage" => stage).record(seconds);
}

pub fn install_recorder() -> Option<PrometheusHandle> {
    PrometheusBuilder::new().install_recorder().ok()
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
    let count = state.db.query_one(sea_orm::Statement::from_string(
        sea_orm::DbBackend::Postgres,
        "SELECT count(*) FROM public.followers",
    ));
    if let Ok(Ok(Some(row))) = tokio::time::timeout(crate::db::HTTP_DB_TIMEOUT, count).await {
        if let Ok(n) = row.try_get_by_index::<i64>(0) {
            metrics::gauge!("followers_etl_followers").set(n as f64);
        }
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
