//! The HTTP API (axum): fences, promotions, locations, eligibility and authentication, with
//! problem+json errors and an OpenAPI 3.1 document generated from the handlers (utoipa).
//!
//! Every route that needs a caller takes an [`Identity`] extractor: it reads the bearer token and asks
//! [`Auth`] to verify it (signature, claims, session not revoked). Roles are checked in each handler with
//! [`Require::require`], so the rule sits next to the code it guards.

pub mod auth;
pub mod docs;
pub mod problem;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, DefaultBodyLimit, FromRequestParts, Query, State};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::auth::Auth;
pub use crate::auth::{Identity, Role};
use crate::geofence::geojson::parse_fences_value;
use crate::geofence::GeoPoint;
use crate::geofence::ParseOptions;
use crate::promo::promotion::PointMatch;
use crate::promo::timestamp::{format_rfc3339_ms, now_ms};
use crate::promo::PromotionSpec;
use crate::promo::{decode_gps_event, SharedCatalog};
use crate::store::{Store, StoredFence};
pub use problem::{ApiError, ApiJson, ApiPath, ApiQuery};
use rdkafka::producer::{FutureProducer, FutureRecord};

/// Role checks for handlers.
pub trait Require {
    /// Fails with 403 unless the caller has one of `roles`.
    fn require(&self, roles: &[Role]) -> Result<(), ApiError>;
}

impl Require for Identity {
    fn require(&self, roles: &[Role]) -> Result<(), ApiError> {
        if self.has_any(roles) {
            Ok(())
        } else {
            let names: Vec<&str> = roles.iter().map(|r| r.as_str()).collect();
            Err(ApiError::forbidden(format!(
                "this needs the role {}",
                names.join(" or ")
            )))
        }
    }
}

/// Shared by every handler.
#[derive(Clone)]
pub struct ApiState {
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
}

/// Produces posted locations to the input topic.
#[derive(Clone)]
pub struct LocationSink {
    pub producer: FutureProducer,
    pub topic: String,
}

/// The bearer token of a request, or 401.
fn bearer(parts: &Parts) -> Result<&str, ApiError> {
    let value = parts
        .headers
        .get(header::AUTHORIZATION)
        .ok_or_else(|| ApiError::unauthorized("send Authorization: Bearer <access token>"))?;
    let value = value
        .to_str()
        .map_err(|_| ApiError::unauthorized("the Authorization header is not ASCII"))?;
    match value.split_once(' ') {
        Some((scheme, token))
            if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() =>
        {
            Ok(token.trim())
        }
        _ => Err(ApiError::unauthorized(
            "the Authorization header must be Bearer <access token>",
        )),
    }
}

impl FromRequestParts<ApiState> for Identity {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &ApiState) -> Result<Self, ApiError> {
        let token = bearer(parts)?;
        state.auth.verify(token).map_err(ApiError::from)
    }
}

/// The peer address (for per-IP rate limits); unspecified when the server was not started by [`serve`].
#[derive(Debug, Clone, Copy)]
pub struct ClientIp(pub std::net::IpAddr);

impl<S: Send + Sync> FromRequestParts<S> for ClientIp {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Self(
            parts
                .extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map_or(std::net::IpAddr::from([0, 0, 0, 0]), |c| c.0.ip()),
        ))
    }
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

/// Every route: `/v1`, the auth endpoints, health, metrics, the OpenAPI document and the docs page.
/// Body limits are per route: only GeoJSON uploads may use `api.max_body_bytes`; the auth endpoints,
/// reachable without a token, take a few KiB (see `auth::routes`).
pub fn router(state: ApiState) -> Router {
    let upload_limit = DefaultBodyLimit::max(state.max_body_bytes);
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(ready))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(docs::openapi_json))
        .route("/docs", get(docs::docs_page))
        .route(
            "/v1/fences",
            get(list_fences).post(upload_fences).layer(upload_limit),
        )
        .route(
            "/v1/fences/{id}",
            get(get_fence)
                .put(replace_fence)
                .layer(upload_limit)
                .delete(delete_fence),
        )
        .route(
            "/v1/promotions",
            get(list_promotions).post(create_promotion),
        )
        .route(
            "/v1/promotions/{id}",
            get(get_promotion)
                .put(replace_promotion)
                .delete(delete_promotion),
        )
        .route("/v1/promotions/{id}/deactivate", post(deactivate_promotion))
        .route("/v1/locations", post(post_locations))
        .route("/v1/match", get(match_point))
        .route("/v1/users/{id}/promotions", get(user_promotions))
        .merge(auth::routes(state.clone()))
        .fallback(|| async { ApiError::not_found("no such route") })
        .method_not_allowed_fallback(problem::method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_JSON_BODY_BYTES))
        .layer(axum::middleware::from_fn(
            problem::refuse_control_characters,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            record_http_metrics,
        ))
        .with_state(state)
}

/// Counts every answer by route pattern, method and status, with its latency. Runs outside the
/// other layers, so refused bodies and control characters are counted too.
async fn record_http_metrics(
    State(state): State<ApiState>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let started = std::time::Instant::now();
    let route = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |path| path.as_str().to_owned());
    let method = request.method().as_str().to_owned();
    let response = next.run(request).await;
    state.http_metrics.observe(
        &route,
        &method,
        response.status().as_u16(),
        started.elapsed().as_secs_f64(),
    );
    response
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

/// What a fence upload stored.
#[derive(Debug, Serialize, ToSchema)]
pub struct UploadResult {
    /// Fences inserted or replaced.
    stored: usize,
    /// The catalog version that includes them.
    catalog_version: i64,
    /// Repairs applied (collapsed holes dropped, ...).
    repairs: Vec<String>,
}

/// `PUT /v1/fences/{id}`: replaces one fence with the Feature in the body (its id must match or be absent).
#[utoipa::path(put, path = "/v1/fences/{id}", tag = "fences",
    params(("id" = String, Path, description = "Fence id")),
    request_body(content = docs::FenceFeature, description = "One GeoJSON Feature (Polygon or MultiPolygon)"),
    responses(
        (status = 200, description = "Stored", body = UploadResult),
        (status = 422, description = "Invalid GeoJSON, with every problem", body = ApiError, content_type = "application/problem+json"),
        (status = "default", description = "Error", body = ApiError, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
async fn replace_fence(
    State(state): State<ApiState>,
    identity: Identity,
    ApiPath(id): ApiPath<String>,
    ApiJson(mut body): ApiJson<serde_json::Value>,
) -> Result<Json<UploadResult>, ApiError> {
    identity.require(&[Role::Ops])?;
    if body.get("type").and_then(|t| t.as_str()) != Some("Feature") {
        return Err(ApiError::unprocessable(
            "the body must be one GeoJSON Feature",
            Vec::new(),
        ));
    }
    match body.get("id") {
        None => body["id"] = serde_json::Value::from(id.clone()),
        Some(given) if given.as_str() == Some(id.as_str()) => {}
        Some(given) => {
            return Err(ApiError::unprocessable(
                format!("feature id {given} differs from {id:?} in the path"),
                Vec::new(),
            ))
        }
    }
    let parsed =
        parse_fences_value(body, &ParseOptions::default()).map_err(ApiError::invalid_geojson)?;
    let catalog_version = state.store.upsert_fences(&parsed.fences, now_ms()).await?;
    Ok(Json(UploadResult {
        stored: parsed.fences.len(),
        catalog_version,
        repairs: parsed.repairs.iter().map(ToString::to_string).collect(),
    }))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct MatchQuery {
    /// Latitude, WGS84 degrees.
    #[param(minimum = -90, maximum = 90)]
    lat: f64,
    /// Longitude, WGS84 degrees.
    #[param(minimum = -180, maximum = 180)]
    lon: f64,
}

/// `GET /v1/match?lat=&lon=`: the fences the point is inside or within tolerance of, and the promotions
/// valid now that target them.
#[utoipa::path(get, path = "/v1/match", tag = "results", params(MatchQuery),
    responses(
        (status = 200, description = "Matching fences, closest first", body = Vec<PointMatch>),
        (status = "default", description = "Error", body = ApiError, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
async fn match_point(
    State(state): State<ApiState>,
    identity: Identity,
    query: Result<Query<MatchQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Vec<PointMatch>>, ApiError> {
    let _ = identity;
    let Query(query) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let point = GeoPoint::new(query.lat, query.lon)
        .map_err(|e| ApiError::unprocessable(e.to_string(), Vec::new()))?;
    Ok(Json(state.catalog.load().match_now(point, now_ms())))
}

/// A location as a mobile client posts it: the user comes from the identity, never from the body.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PostedLocation {
    #[schema(minimum = -90, maximum = 90)]
    lat: f64,
    #[schema(minimum = -180, maximum = 180)]
    lon: f64,
    /// RFC 3339 string or epoch milliseconds; default: now.
    #[serde(default)]
    #[schema(schema_with = docs::timestamp_input_schema)]
    ts: Option<serde_json::Value>,
    /// Horizontal accuracy (metres); fixes worse than `rules.max_accuracy_m` are ignored.
    #[serde(default)]
    accuracy_m: Option<f64>,
    /// Client-chosen id, for de-duplication downstream.
    #[serde(default)]
    event_id: Option<String>,
}

/// A posted location as it goes to the input topic (the contract in `docs/schemas/gps-event.schema.json`), written
/// straight from the request's fields.
#[derive(Serialize)]
struct OutgoingGpsEvent<'a> {
    user_id: &'a str,
    lat: f64,
    lon: f64,
    ts: serde_json::Value,
    accuracy_m: Option<f64>,
    event_id: Option<&'a str>,
}

/// One location, or up to 1000 as `{"locations": [...]}`. Either form refuses unknown fields, `user_id`
/// included: a location is credited to the caller of the token, never to a user named in the body.
#[derive(Debug, ToSchema)]
#[serde(untagged)]
pub enum LocationBody {
    Batch(LocationBatch),
    One(PostedLocation),
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LocationBatch {
    #[schema(min_items = 1, max_items = 1000)]
    locations: Vec<PostedLocation>,
}

impl<'de> Deserialize<'de> for LocationBody {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let value = serde_json::Value::deserialize(deserializer)?;
        if value.get("user_id").is_some() {
            return Err(D::Error::custom(
                "user_id is not accepted: a location is credited to the caller of the token",
            ));
        }
        if value.get("locations").is_some() {
            LocationBatch::deserialize(value)
                .map(Self::Batch)
                .map_err(D::Error::custom)
        } else {
            PostedLocation::deserialize(value)
                .map(Self::One)
                .map_err(D::Error::custom)
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Accepted {
    /// Events the broker acknowledged.
    accepted: usize,
}

/// Largest batch accepted in one `POST /v1/locations`.
const MAX_LOCATION_BATCH: usize = 1000;

/// `POST /v1/locations`: one point or `{"locations":[...]}` for the caller; 202 once the broker has
/// acknowledged every event. Each event is checked with the processor's own decoder first, so a bad point
/// is a 422 here instead of a dead letter later.
#[utoipa::path(post, path = "/v1/locations", tag = "locations", request_body = LocationBody,
    responses(
        (status = 202, description = "Produced to the input topic, keyed by the caller", body = Accepted),
        (status = 422, description = "A location is invalid; none was sent", body = ApiError, content_type = "application/problem+json"),
        (status = 503, description = "No broker, or it did not acknowledge", body = ApiError, content_type = "application/problem+json"),
        (status = "default", description = "Error", body = ApiError, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
async fn post_locations(
    State(state): State<ApiState>,
    identity: Identity,
    ApiJson(body): ApiJson<LocationBody>,
) -> Result<(StatusCode, Json<Accepted>), ApiError> {
    identity.require(&[Role::Mobile])?;
    let sink = state
        .locations
        .as_ref()
        .ok_or_else(|| ApiError::unavailable("this instance has no broker for locations"))?;
    let locations = match body {
        LocationBody::One(one) => vec![one],
        LocationBody::Batch(batch) => batch.locations,
    };
    if locations.is_empty() || locations.len() > MAX_LOCATION_BATCH {
        return Err(ApiError::unprocessable(
            format!("send 1 to {MAX_LOCATION_BATCH} locations"),
            Vec::new(),
        ));
    }
    let now = now_ms();
    let max_future_skew_ms = state.catalog.load().rules().max_future_skew_ms;
    let mut payloads = Vec::with_capacity(locations.len());
    let mut problems = Vec::new();
    for (i, location) in locations.into_iter().enumerate() {
        let payload = serde_json::to_string(&OutgoingGpsEvent {
            user_id: &identity.user_id,
            lat: location.lat,
            lon: location.lon,
            ts: location.ts.unwrap_or_else(|| serde_json::Value::from(now)),
            accuracy_m: location.accuracy_m,
            event_id: location.event_id.as_deref(),
        })
        .map_err(ApiError::internal)?;
        match decode_gps_event(
            Some(identity.user_id.as_bytes()),
            payload.as_bytes(),
            16 * 1024,
        ) {
            // The processor would clamp it to its clock; refusing it here tells the client, instead of
            // making a far-future time the user's eligibility `since`.
            Ok(event) if event.ts_ms > now.saturating_add(max_future_skew_ms) => {
                problems.push(format!(
                    "location {i}: ts is in the future, more than {} s ahead of the server clock",
                    max_future_skew_ms / 1000
                ))
            }
            Ok(_) => payloads.push(payload),
            Err(error) => problems.push(format!("location {i}: {error}")),
        }
    }
    if !problems.is_empty() {
        return Err(ApiError::unprocessable(
            "some locations are invalid; none was sent",
            problems,
        ));
    }
    let sends = payloads.iter().map(|payload| {
        sink.producer.send(
            FutureRecord::to(&sink.topic)
                .key(identity.user_id.as_str())
                .payload(payload.as_str()),
            std::time::Duration::from_secs(5),
        )
    });
    for result in futures_util::future::join_all(sends).await {
        result.map_err(|(error, _)| {
            ApiError::unavailable(format!("broker did not acknowledge: {error}"))
        })?;
    }
    Ok((
        StatusCode::ACCEPTED,
        Json(Accepted {
            accepted: payloads.len(),
        }),
    ))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct Page {
    /// Cursor: the `next` of the previous page.
    after: Option<String>,
    /// Only fences whose name contains this.
    name: Option<String>,
    /// Page size, 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<i64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct FenceSummary {
    id: String,
    name: String,
    tolerance_m: f64,
    vertex_count: i64,
    version: i64,
    updated_at: String,
}

impl From<&StoredFence> for FenceSummary {
    fn from(f: &StoredFence) -> Self {
        Self {
            id: f.id.clone(),
            name: f.name.clone(),
            tolerance_m: f.tolerance_m,
            vertex_count: f.vertex_count,
            version: f.version,
            updated_at: format_rfc3339_ms(f.updated_at_ms),
        }
    }
}

/// One page of fences.
#[derive(Debug, Serialize, ToSchema)]
pub struct FencePage {
    items: Vec<FenceSummary>,
    /// Pass as `after` for the next page; null on the last page.
    next: Option<String>,
}

#[utoipa::path(get, path = "/v1/fences", tag = "fences", params(Page),
    responses(
        (status = 200, description = "Fences ordered by id", body = FencePage),
        (status = "default", description = "Error", body = ApiError, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
async fn list_fences(
    State(state): State<ApiState>,
    identity: Identity,
    query: Result<Query<Page>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<FencePage>, ApiError> {
    identity.require(&[Role::Ops])?;
    let Query(page) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let limit = page.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::bad_request("limit must be between 1 and 1000"));
    }
    let rows = state
        .store
        .list_fences(page.after.as_deref(), page.name.as_deref(), limit + 1)
        .await?;
    let next = (rows.len() as i64 > limit).then(|| rows[limit as usize - 1].id.clone());
    let items = rows
        .iter()
        .take(limit as usize)
        .map(FenceSummary::from)
        .collect();
    Ok(Json(FencePage { items, next }))
}

#[utoipa::path(get, path = "/v1/fences/{id}", tag = "fences",
    params(("id" = String, Path, description = "Fence id")),
    responses(
        (status = 200, description = "The fence as a GeoJSON Feature", body = serde_json::Value, content_type = "application/geo+json"),
        (status = 404, description = "No such fence", body = ApiError, content_type = "application/problem+json"),
        (status = "default", description = "Error", body = ApiError, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
async fn get_fence(
    State(state): State<ApiState>,
    identity: Identity,
    ApiPath(id): ApiPath<String>,
) -> Result<Response, ApiError> {
    identity.require(&[Role::Ops])?;
    let fence = state
        .store
        .get_fence(&id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no fence {id:?}")))?;
    let geometry: serde_json::Value =
        serde_json::from_str(&fence.geometry).map_err(ApiError::internal)?;
    let feature = serde_json::json!({
        "type": "Feature",
        "id": fence.id,
        "properties": {"name": fence.name, "tolerance_m": fence.tolerance_m, "version": fence.version},
        "geometry": geometry,
    });
    Ok((
        [(header::CONTENT_TYPE, "application/geo+json")],
        feature.to_string(),
    )
        .into_response())
}

/// Stores every feature of a GeoJSON Feature or FeatureCollection (insert or replace by id), or none:
/// invalid features give 422 with each feature's problems. The body is read up to `api.max_body_bytes`
/// and parsed on a blocking thread, so a large upload does not stall other requests.
#[utoipa::path(post, path = "/v1/fences", tag = "fences",
    request_body(content = docs::FenceUpload, description = "GeoJSON Feature or FeatureCollection of Polygon/MultiPolygon; `id` (or `properties.id`), `properties.name`, `properties.tolerance_m`"),
    responses(
        (status = 201, description = "Every feature stored", body = UploadResult),
        (status = 413, description = "Over `api.max_body_bytes`", body = ApiError, content_type = "application/problem+json"),
        (status = 422, description = "Invalid features, each with its problems", body = ApiError, content_type = "application/problem+json"),
        (status = "default", description = "Error", body = ApiError, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
async fn upload_fences(
    State(state): State<ApiState>,
    identity: Identity,
    ApiJson(body): ApiJson<serde_json::Value>,
) -> Result<(StatusCode, Json<UploadResult>), ApiError> {
    identity.require(&[Role::Ops])?;
    let parsed =
        tokio::task::spawn_blocking(move || parse_fences_value(body, &ParseOptions::default()))
            .await?
            .map_err(ApiError::invalid_geojson)?;
    let catalog_version = state.store.upsert_fences(&parsed.fences, now_ms()).await?;
    Ok((
        StatusCode::CREATED,
        Json(UploadResult {
            stored: parsed.fences.len(),
            catalog_version,
            repairs: parsed.repairs.iter().map(ToString::to_string).collect(),
        }),
    ))
}

#[utoipa::path(delete, path = "/v1/fences/{id}", tag = "fences",
    params(("id" = String, Path, description = "Fence id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 409, description = "Promotions target the fence (named in `errors`); delete or change them first", body = ApiError, content_type = "application/problem+json"),
        (status = 404, description = "No such fence", body = ApiError, content_type = "application/problem+json"),
        (status = "default", description = "Error", body = ApiError, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
async fn delete_fence(
    State(state): State<ApiState>,
    identity: Identity,
    ApiPath(id): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    identity.require(&[Role::Ops])?;
    if state.store.delete_fence(&id).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found(format!("no fence {id:?}")))
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PromotionView {
    id: String,
    name: String,
    fences: Vec<String>,
    valid_from: Option<String>,
    valid_until: Option<String>,
    active: bool,
    cooldown_s: f64,
}

impl From<&crate::promo::Promotion> for PromotionView {
    fn from(p: &crate::promo::Promotion) -> Self {
        Self {
            id: p.id.to_string(),
            name: p.name.clone(),
            fences: p.fence_ids.iter().map(ToString::to_string).collect(),
            valid_from: p.valid_from_ms.map(format_rfc3339_ms),
            valid_until: p.valid_until_ms.map(format_rfc3339_ms),
            active: p.active,
            cooldown_s: p.cooldown_ms as f64 / 1000.0,
        }
    }
}

#[utoipa::path(post, path = "/v1/promotions", tag = "promotions", request_body = PromotionSpec,
    responses(
        (status = 201, description = "Created (or replaced, same id)", body = PromotionView),
        (status = 422, description = "Invalid, or targets a fence that does not exist", body = ApiError, content_type = "application/problem+json"),
        (status = "default", description = "Error", body = ApiError, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
async fn create_promotion(
    State(state): State<ApiState>,
    identity: Identity,
    ApiJson(spec): ApiJson<PromotionSpec>,
) -> Result<(StatusCode, Json<PromotionView>), ApiError> {
    identity.require(&[Role::Ops])?;
    let view = store_promotion(&state, spec).await?;
    Ok((StatusCode::CREATED, Json(view)))
}

/// Checks a promotion and stores it; the store refuses one whose fences do not exist (422).
async fn store_promotion(state: &ApiState, spec: PromotionSpec) -> Result<PromotionView, ApiError> {
    let promotion = spec.parse(0).map_err(ApiError::invalid_promotion)?;
    state.store.upsert_promotion(&promotion, now_ms()).await?;
    Ok(PromotionView::from(&promotion))
}

/// `PUT /v1/promotions/{id}`: replaces a promotion (the body's id must match the path).
#[utoipa::path(put, path = "/v1/promotions/{id}", tag = "promotions",
    params(("id" = String, Path, description = "Promotion id")),
    request_body = PromotionSpec,
    responses(
        (status = 200, description = "Replaced", body = PromotionView),
        (status = 422, description = "Invalid", body = ApiError, content_type = "application/problem+json"),
        (status = "default", description = "Error", body = ApiError, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
async fn replace_promotion(
    State(state): State<ApiState>,
    identity: Identity,
    ApiPath(id): ApiPath<String>,
    ApiJson(spec): ApiJson<PromotionSpec>,
) -> Result<Json<PromotionView>, ApiError> {
    identity.require(&[Role::Ops])?;
    if spec.id != id {
        return Err(ApiError::unprocessable(
            format!("id {:?} differs from {id:?} in the path", spec.id),
            Vec::new(),
        ));
    }
    Ok(Json(store_promotion(&state, spec).await?))
}

/// `DELETE /v1/promotions/{id}`: removes a promotion. Users eligible for it exit at their next point.
#[utoipa::path(delete, path = "/v1/promotions/{id}", tag = "promotions",
    params(("id" = String, Path, description = "Promotion id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, description = "No such promotion", body = ApiError, content_type = "application/problem+json"),
        (status = "default", description = "Error", body = ApiError, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
async fn delete_promotion(
    State(state): State<ApiState>,
    identity: Identity,
    ApiPath(id): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    identity.require(&[Role::Ops])?;
    if state.store.delete_promotion(&id).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found(format!("no promotion {id:?}")))
    }
}

/// `POST /v1/promotions/{id}/deactivate`: stops new eligibility; eligible users exit at their next point.
#[utoipa::path(post, path = "/v1/promotions/{id}/deactivate", tag = "promotions",
    params(("id" = String, Path, description = "Promotion id")),
    responses(
        (status = 200, description = "Deactivated", body = PromotionView),
        (status = 404, description = "No such promotion", body = ApiError, content_type = "application/problem+json"),
        (status = "default", description = "Error", body = ApiError, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
async fn deactivate_promotion(
    State(state): State<ApiState>,
    identity: Identity,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<PromotionView>, ApiError> {
    identity.require(&[Role::Ops])?;
    let mut promotion = state
        .store
        .get_promotion(&id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no promotion {id:?}")))?;
    promotion.active = false;
    state.store.upsert_promotion(&promotion, now_ms()).await?;
    Ok(Json(PromotionView::from(&promotion)))
}

#[utoipa::path(get, path = "/v1/promotions", tag = "promotions",
    responses(
        (status = 200, description = "Every promotion, by id", body = Vec<PromotionView>),
        (status = "default", description = "Error", body = ApiError, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
async fn list_promotions(
    State(state): State<ApiState>,
    identity: Identity,
) -> Result<Json<Vec<PromotionView>>, ApiError> {
    identity.require(&[Role::Ops, Role::Consumer])?;
    let promotions = state.store.load_promotions().await?;
    Ok(Json(promotions.iter().map(PromotionView::from).collect()))
}

#[utoipa::path(get, path = "/v1/promotions/{id}", tag = "promotions",
    params(("id" = String, Path, description = "Promotion id")),
    responses(
        (status = 200, description = "The promotion", body = PromotionView),
        (status = 404, description = "No such promotion", body = ApiError, content_type = "application/problem+json"),
        (status = "default", description = "Error", body = ApiError, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
async fn get_promotion(
    State(state): State<ApiState>,
    identity: Identity,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<PromotionView>, ApiError> {
    identity.require(&[Role::Ops, Role::Consumer])?;
    let promotion = state
        .store
        .get_promotion(&id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no promotion {id:?}")))?;
    Ok(Json(PromotionView::from(&promotion)))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct EligibilityView {
    promotion_id: String,
    fence_id: String,
    /// When the user became eligible (RFC 3339).
    since: String,
    /// The `event_id` of the enter event on the output topic.
    event_id: String,
}

/// A user's current eligible promotions: their own (`me` or their id) for any caller, anyone's for ops
/// and consumers.
#[utoipa::path(get, path = "/v1/users/{id}/promotions", tag = "results",
    params(("id" = String, Path, description = "User id, or `me`")),
    responses(
        (status = 200, description = "Current eligibility, by promotion id", body = Vec<EligibilityView>),
        (status = "default", description = "Error", body = ApiError, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
async fn user_promotions(
    State(state): State<ApiState>,
    identity: Identity,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<Vec<EligibilityView>>, ApiError> {
    let user = if id == "me" {
        identity.user_id.clone()
    } else {
        id
    };
    if user != identity.user_id {
        identity.require(&[Role::Ops, Role::Consumer])?;
    }
    let rows = state.store.eligibility_of(&user).await?;
    Ok(Json(
        rows.into_iter()
            .map(|e| EligibilityView {
                promotion_id: e.promotion_id,
                fence_id: e.fence_id,
                since: format_rfc3339_ms(e.since_ms),
                event_id: e.event_id,
            })
            .collect(),
    ))
}
