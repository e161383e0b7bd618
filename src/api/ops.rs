//! Operations: liveness, readiness (with what is degraded), Prometheus metrics.

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{ApiError, ApiState};

/// Open to everyone: probes and scrapers carry no token.
pub(super) fn routes() -> OpenApiRouter<ApiState> {
    OpenApiRouter::new()
        .routes(routes!(healthz))
        .routes(routes!(ready))
        .routes(routes!(metrics))
}

#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses((status = 200, description = "The process is up", body = String, content_type = "text/plain")))]
async fn healthz() -> &'static str {
    "ok"
}

#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses(
        (status = 200, description = "Store and broker reachable", body = String, content_type = "text/plain"),
        (status = 503, description = "A dependency is unreachable", body = ApiError, content_type = "application/problem+json"),
    ))]
async fn ready(State(state): State<ApiState>) -> Result<String, ApiError> {
    state.store.ping().await.map_err(ApiError::unavailable)?;
    if let Some(sink) = &state.locations {
        let producer = sink.producer.clone();
        let topic = sink.topic.clone();
        tokio::task::spawn_blocking(move || {
            use rdkafka::producer::Producer;
            producer
                .client()
                .fetch_metadata(Some(&topic), std::time::Duration::from_secs(2))
                .map(|_| ())
        })
        .await?
        .map_err(|e| ApiError::unavailable(format!("broker: {e}")))?;
    }
    // Quarantined rows do not make the instance unready (the rest of the catalog serves), but they are
    // listed where an operator looks first.
    let catalog = state.catalog.load();
    let quarantined = catalog.quarantined();
    if quarantined.is_empty() {
        Ok("ready".into())
    } else {
        let mut text = format!(
            "ready, degraded: {} stored row(s) quarantined (left out of the catalog)\n",
            quarantined.len()
        );
        for line in quarantined {
            text.push_str("quarantined: ");
            text.push_str(line);
            text.push('\n');
        }
        Ok(text)
    }
}

#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Prometheus / OpenMetrics text", body = String,
        content_type = "application/openmetrics-text")))]
async fn metrics(State(state): State<ApiState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        crate::telemetry::encode_metrics(&state.registry),
    )
        .into_response()
}
