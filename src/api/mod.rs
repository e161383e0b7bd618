//! The HTTP API (axum): fences, promotions, locations, results, authentication and administration, with
//! problem+json errors and an OpenAPI 3.1 document generated from the handlers (utoipa).
//!
//! One module per resource; each declares its routes once with `utoipa_axum::routes!`, which registers
//! the handler and its OpenAPI entry together. Who may call a route is part of its handler's signature
//! ([`extract::Caller`] with the roles it admits).
//!
//! - [`extract`]: the verified caller and the roles a route admits, the peer address, paging.
//! - [`problem`]: problem+json errors, the JSON/path extractors that answer with them.
//! - [`fences`], [`promotions`], [`locations`], [`results`]: the `/v1` resources.
//! - [`events`]: the live enter/exit stream (SSE) and activity counts.
//! - [`auth`], [`admin`]: sessions and tokens; users and keys.
//! - [`access`]: the request id, the access log line and the request metrics of every answer.
//! - [`console`]: the ops console's page and vendored assets (`/console`).
//! - [`ops`]: health, readiness, metrics. [`docs`]: the OpenAPI document and the docs page.

pub mod access;
pub mod admin;
pub mod auth;
pub mod console;
pub mod docs;
pub mod events;
pub mod extract;
pub mod fences;
pub mod locations;
pub mod ops;
pub mod problem;
pub mod promotions;
pub mod results;
pub mod session_view;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::Router;
use prometheus_client::registry::Registry;
use rdkafka::producer::FutureProducer;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;

use crate::auth::Auth;
pub use crate::auth::{Identity, Role};
use crate::promo::SharedCatalog;
use crate::store::Store;
pub use extract::{ClientIp, Require};
pub use problem::{ApiError, ApiJson, ApiPath, ApiQuery};

/// Shared by every handler, behind one `Arc`: axum clones the state for every extractor and middleware
/// of every request, and a clone is then one reference count rather than a dozen and a topic string.
#[derive(Clone)]
pub struct ApiState(Arc<ApiShared>);

impl ApiState {
    #[must_use]
    pub fn new(shared: ApiShared) -> Self {
        Self(Arc::new(shared))
    }
}

impl std::ops::Deref for ApiState {
    type Target = ApiShared;

    fn deref(&self) -> &ApiShared {
        &self.0
    }
}

/// What [`ApiState`] shares.
pub struct ApiShared {
    pub store: Store,
    pub auth: Arc<Auth>,
    pub max_body_bytes: usize,
    /// The catalog `/v1/match` answers from (the same one the processor uses, kept current from the store).
    pub catalog: Arc<SharedCatalog>,
    /// Where posted locations go; `None` when this instance has no broker (then 503).
    pub locations: Option<LocationSink>,
    /// Served at `/metrics`.
    pub registry: Arc<Registry>,
    /// Request counts and latencies, registered in `registry`.
    pub http_metrics: crate::telemetry::HttpMetrics,
    /// Live eligibility events and activity counts (`/v1/events/stream`, `/v1/activity/*`).
    pub live: Arc<crate::live::LiveHub>,
    /// Cancelled when the server stops: endless responses (event streams) end with it.
    pub shutdown: tokio_util::sync::CancellationToken,
    /// The console's settings (`/console`).
    pub console: Arc<crate::config::ConsoleSettings>,
}

/// Produces posted locations to the input topic.
#[derive(Clone)]
pub struct LocationSink {
    pub producer: FutureProducer,
    pub topic: String,
}

/// Serves `router` on `listener` with peer addresses available to handlers, until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(
        listener,
        router.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
}

/// Largest body of any JSON request but a GeoJSON upload (a batch of 1,000 locations is ~200 KiB).
pub const MAX_JSON_BODY_BYTES: usize = 1024 * 1024;

/// Every documented route with its OpenAPI entry. Body limits are per route: only GeoJSON uploads may use
/// `upload_limit_bytes` (`api.max_body_bytes`); the auth endpoints, reachable without a token, take a few
/// KiB (see `auth::routes`).
fn api_routes(upload_limit_bytes: usize) -> OpenApiRouter<ApiState> {
    OpenApiRouter::with_openapi(docs::ApiDoc::openapi())
        .merge(ops::routes())
        .merge(fences::routes().layer(DefaultBodyLimit::max(upload_limit_bytes)))
        .merge(promotions::routes())
        .merge(locations::routes())
        .merge(results::routes())
        .merge(events::routes())
        .merge(auth::routes())
        .merge(auth::with_token_layers(admin::routes()))
        .merge(docs::routes())
}

/// The OpenAPI document of every route, as served at `/openapi.json`.
#[must_use]
pub fn openapi() -> utoipa::openapi::OpenApi {
    api_routes(0).split_for_parts().1
}

/// The whole HTTP surface: the routes, the fallbacks (problem+json 404 and 405), and the layers every
/// request passes (the default body limit, the control-character guard, request metrics).
pub fn router(state: ApiState) -> Router {
    let (routes, _) = api_routes(state.max_body_bytes).split_for_parts();
    routes
        .merge(console::router())
        .fallback(|| async { ApiError::not_found("no such route") })
        .method_not_allowed_fallback(problem::method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_JSON_BODY_BYTES))
        .layer(axum::middleware::from_fn(
            problem::refuse_control_characters,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            access::observe,
        ))
        .with_state(state)
}
