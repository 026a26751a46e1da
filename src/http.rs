//! HTTP endpoints of `serve` (`/healthz`, `/readyz`, `/metrics`): installs the
//! Prometheus exporter and serves. What is recorded is `metrics.rs`. They answer
//! from the start, also while `serve` waits for the database (docs/operations.md#endpoints).

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use sea_orm::DatabaseConnection;
use tokio_util::sync::CancellationToken;

/// The Prometheus recorder, or why it could not be installed (then `/metrics`
/// says so instead of serving an empty page).
pub(crate) type Exporter = Result<PrometheusHandle, String>;

/// Installs the Prometheus recorder (histograms with `metrics::DURATION_BUCKETS`)
/// and describes every metric, so each has its HELP and TYPE lines.
pub(crate) fn install_recorder(mirrors: &[Option<&str>]) -> Exporter {
    let handle = PrometheusBuilder::new()
        .set_buckets(crate::metrics::DURATION_BUCKETS)
        .and_then(PrometheusBuilder::install_recorder)
        .map_err(|e| {
            tracing::warn!(error = %e, "metrics disabled");
            e.to_string()
        })?;
    crate::metrics::describe(mirrors);
    Ok(handle)
}

#[derive(Clone)]
struct AppState {
    db: DatabaseConnection,
    metrics: Exporter,
    /// The built-in mirror's label, once mirrors are configured.
    mirror: Option<&'static str>,
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
    // The pool only says that it timed out; when it cannot give a connection in
    // half the time, one direct attempt tells why (connection refused, an
    // authentication failure, ...), within the rest (docs/operations.md#endpoints).
    let half = crate::db::HTTP_DB_TIMEOUT / 2;
    let ping = match tokio::time::timeout(half, state.db.ping()).await {
        Ok(result) => result.map_err(|e| e.to_string()),
        Err(_) => Err(format!("no connection within {half:?}")),
    };
    if let Err(pool_error) = ping {
        use sqlx::Connection;
        let options = state.db.get_postgres_connection_pool().connect_options();
        let cause = match sqlx::PgConnection::connect_with(&options).await {
            Err(e) => crate::errors::error_chain(&e),
            Ok(conn) => {
                let _ = conn.close().await;
                pool_error
            }
        };
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("database unreachable: {cause}\n"),
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
/// Without a recorder it answers 503 with the reason.
async fn metrics_text(State(state): State<AppState>) -> (StatusCode, String) {
    let handle = match &state.metrics {
        Ok(handle) => handle,
        Err(e) => {
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("metrics unavailable: the recorder could not be installed: {e}\n"),
            )
        }
    };
    let count = crate::runs::follower_count(&state.db);
    if let Ok(Ok(n)) = tokio::time::timeout(crate::db::HTTP_DB_TIMEOUT, count).await {
        crate::metrics::record_followers(state.mirror, n);
    }
    (StatusCode::OK, handle.render())
}

/// Serves the endpoints until `stop` is cancelled.
pub(crate) async fn serve(
    listener: tokio::net::TcpListener,
    db: DatabaseConnection,
    metrics: Exporter,
    mirror: Option<&'static str>,
    stop: CancellationToken,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .with_state(AppState {
            db,
            metrics,
            mirror,
        });
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "HTTP endpoints listening");
    }
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { stop.cancelled().await })
        .await
}
