//! The HTTP API (axum): fences, promotions and eligibility over the store, problem+json errors, health.
//!
//! Authentication slots in through [`Identity`]: every route that needs a caller takes it as an
//! extractor, and the extractor asks the [`Authenticator`] in the state. Until the auth issue lands the only
//! authenticator is [`DevHeaders`], which trusts `X-Geopromo-User` / `X-Geopromo-Roles` headers and is meant
//! for local development only.

pub mod problem;

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use crate::geofence::geojson::parse_fences_value;
use crate::geofence::GeoPoint;
use crate::geofence::ParseOptions;
use crate::promo::timestamp::{format_rfc3339_ms, now_ms};
use crate::promo::PromotionSpec;
use crate::promo::{decode_gps_event, SharedCatalog};
use crate::store::{Store, StoredFence};
pub use problem::{ApiError, ApiJson};
use rdkafka::producer::{FutureProducer, FutureRecord};

/// What a caller may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Mobile,
    Ops,
    Consumer,
    Admin,
}

/// The authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub user_id: String,
    pub roles: Vec<Role>,
}

impl Identity {
    /// Fails with 403 unless the caller has one of `roles`.
    pub fn require(&self, roles: &[Role]) -> Result<(), ApiError> {
        if self.roles.iter().any(|r| roles.contains(r)) {
            Ok(())
        } else {
            Err(ApiError::forbidden(format!(
                "this needs one of the roles {roles:?}"
            )))
        }
    }
}

/// Turns a request into an identity; the auth issue provides the JWT implementation.
pub trait Authenticator: Send + Sync + 'static {
    fn authenticate(&self, parts: &Parts) -> Result<Identity, ApiError>;
}

/// Development only: trusts `X-Geopromo-User` and `X-Geopromo-Roles` (comma-separated) headers.
#[derive(Debug, Clone, Copy, Default)]
pub struct DevHeaders;

impl Authenticator for DevHeaders {
    fn authenticate(&self, parts: &Parts) -> Result<Identity, ApiError> {
        let header = |name: &str| parts.headers.get(name).and_then(|v| v.to_str().ok());
        let user_id = header("x-geopromo-user")
            .filter(|u| !u.is_empty())
            .ok_or_else(|| {
                ApiError::unauthorized("missing X-Geopromo-User (dev identity headers)")
            })?;
        let roles = header("x-geopromo-roles")
            .unwrap_or("mobile")
            .split(',')
            .map(|r| serde_json::from_value(serde_json::Value::from(r.trim())))
            .collect::<Result<Vec<Role>, _>>()
            .map_err(|_| ApiError::unauthorized("X-Geopromo-Roles lists an unknown role"))?;
        Ok(Identity {
            user_id: user_id.to_owned(),
            roles,
        })
    }
}

/// Shared by every handler.
#[derive(Clone)]
pub struct ApiState {
    pub store: Store,
    pub authenticator: Arc<dyn Authenticator>,
    pub max_body_bytes: usize,
    /// The catalog `/v1/match` answers from (the same one the processor uses, kept current from the store).
    pub catalog: Arc<SharedCatalog>,
    /// Where posted locations go; `None` when this instance has no broker (then 503).
    pub locations: Option<LocationSink>,
}

/// Produces posted locations to the input topic.
#[derive(Clone)]
pub struct LocationSink {
    pub producer: FutureProducer,
    pub topic: String,
}

impl FromRequestParts<ApiState> for Identity {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &ApiState) -> Result<Self, ApiError> {
        state.authenticator.authenticate(parts)
    }
}

/// The `/v1` routes plus `/healthz` and `/readyz`.
pub fn router(state: ApiState) -> Router {
    let limit = state.max_body_bytes;
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(ready))
        .route("/v1/fences", get(list_fences).post(upload_fences))
        .route(
            "/v1/fences/{id}",
            get(get_fence).put(replace_fence).delete(delete_fence),
        )
        .route(
            "/v1/promotions",
            get(list_promotions).post(create_promotion),
        )
        .route(
            "/v1/promotions/{id}",
            get(get_promotion).put(replace_promotion),
        )
        .route("/v1/promotions/{id}/deactivate", post(deactivate_promotion))
        .route("/v1/locations", post(post_locations))
        .route("/v1/match", get(match_point))
        .route("/v1/users/{id}/promotions", get(user_promotions))
        .fallback(|| async { ApiError::not_found("no such route") })
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}

async fn ready(State(state): State<ApiState>) -> Result<&'static str, ApiError> {
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
        .await
        .map_err(ApiError::internal)?
        .map_err(|e| ApiError::unavailable(format!("broker: {e}")))?;
    }
    Ok("ready")
}

/// `PUT /v1/fences/{id}`: replaces one fence with the Feature in the body (its id must match or be absent).
async fn replace_fence(
    State(state): State<ApiState>,
    identity: Identity,
    Path(id): Path<String>,
    ApiJson(mut body): ApiJson<serde_json::Value>,
) -> Result<Json<UploadResult>, ApiError> {
    identity.require(&[Role::Ops, Role::Admin])?;
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
    let catalog_version = state
        .store
        .upsert_fences(&parsed.fences, now_ms())
        .await
        .map_err(ApiError::internal)?;
    Ok(Json(UploadResult {
        stored: parsed.fences.len(),
        catalog_version,
        repairs: parsed.repairs.iter().map(ToString::to_string).collect(),
    }))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MatchQuery {
    lat: f64,
    lon: f64,
}

/// `GET /v1/match?lat=&lon=`: the fences the point is inside or within tolerance of, and the promotions
/// valid now that target them.
async fn match_point(
    State(state): State<ApiState>,
    identity: Identity,
    query: Result<Query<MatchQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Vec<crate::promo::promotion::PointMatch>>, ApiError> {
    let _ = identity;
    let Query(query) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let point = GeoPoint::new(query.lat, query.lon)
        .map_err(|e| ApiError::unprocessable(e.to_string(), Vec::new()))?;
    Ok(Json(state.catalog.load().match_now(point, now_ms())))
}

/// A location as a mobile client posts it: the user comes from the identity, never from the body.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct PostedLocation {
    lat: f64,
    lon: f64,
    /// RFC 3339 or epoch ms; default: now.
    #[serde(default)]
    ts: Option<serde_json::Value>,
    #[serde(default)]
    accuracy_m: Option<f64>,
    #[serde(default)]
    event_id: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum LocationBody {
    Batch { locations: Vec<PostedLocation> },
    One(PostedLocation),
}

#[derive(Debug, Serialize)]
struct Accepted {
    accepted: usize,
}

/// Largest batch accepted in one `POST /v1/locations`.
const MAX_LOCATION_BATCH: usize = 1000;

/// `POST /v1/locations`: one point or `{"locations":[...]}` for the caller; 202 once the broker has
/// acknowledged every event. Each event is checked with the processor's own decoder first, so a bad point
/// is a 422 here instead of a dead letter later.
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
        LocationBody::Batch { locations } => locations,
    };
    if locations.is_empty() || locations.len() > MAX_LOCATION_BATCH {
        return Err(ApiError::unprocessable(
            format!("send 1 to {MAX_LOCATION_BATCH} locations"),
            Vec::new(),
        ));
    }
    let now = now_ms();
    let mut payloads = Vec::with_capacity(locations.len());
    let mut problems = Vec::new();
    for (i, location) in locations.into_iter().enumerate() {
        let event = serde_json::json!({
            "user_id": identity.user_id,
            "lat": location.lat,
            "lon": location.lon,
            "ts": location.ts.unwrap_or_else(|| serde_json::Value::from(now)),
            "accuracy_m": location.accuracy_m,
            "event_id": location.event_id,
        });
        let payload = event.to_string();
        match decode_gps_event(
            Some(identity.user_id.as_bytes()),
            payload.as_bytes(),
            16 * 1024,
        ) {
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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Page {
    after: Option<String>,
    name: Option<String>,
    limit: Option<i64>,
}

#[derive(Debug, Serialize)]
struct FenceSummary {
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

#[derive(Debug, Serialize)]
struct Paged<T> {
    items: Vec<T>,
    /// Pass as `after` for the next page; absent on the last page.
    next: Option<String>,
}

async fn list_fences(
    State(state): State<ApiState>,
    identity: Identity,
    query: Result<Query<Page>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Paged<FenceSummary>>, ApiError> {
    identity.require(&[Role::Ops, Role::Admin])?;
    let Query(page) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let limit = page.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::bad_request("limit must be between 1 and 1000"));
    }
    let rows = state
        .store
        .list_fences(page.after.as_deref(), page.name.as_deref(), limit + 1)
        .await
        .map_err(ApiError::internal)?;
    let next = (rows.len() as i64 > limit).then(|| rows[limit as usize - 1].id.clone());
    let items = rows
        .iter()
        .take(limit as usize)
        .map(FenceSummary::from)
        .collect();
    Ok(Json(Paged { items, next }))
}

async fn get_fence(
    State(state): State<ApiState>,
    identity: Identity,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    identity.require(&[Role::Ops, Role::Admin, Role::Consumer])?;
    let fence = state
        .store
        .get_fence(&id)
        .await
        .map_err(ApiError::internal)?
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
        [(axum::http::header::CONTENT_TYPE, "application/geo+json")],
        feature.to_string(),
    )
        .into_response())
}

#[derive(Debug, Serialize)]
struct UploadResult {
    stored: usize,
    catalog_version: i64,
    repairs: Vec<String>,
}

/// Stores every feature of a GeoJSON Feature or FeatureCollection (insert or replace by id), or none:
/// invalid features give 422 with each feature's problems.
async fn upload_fences(
    State(state): State<ApiState>,
    identity: Identity,
    ApiJson(body): ApiJson<serde_json::Value>,
) -> Result<(StatusCode, Json<UploadResult>), ApiError> {
    identity.require(&[Role::Ops, Role::Admin])?;
    let parsed =
        tokio::task::spawn_blocking(move || parse_fences_value(body, &ParseOptions::default()))
            .await
            .map_err(ApiError::internal)?
            .map_err(ApiError::invalid_geojson)?;
    let catalog_version = state
        .store
        .upsert_fences(&parsed.fences, now_ms())
        .await
        .map_err(ApiError::internal)?;
    Ok((
        StatusCode::CREATED,
        Json(UploadResult {
            stored: parsed.fences.len(),
            catalog_version,
            repairs: parsed.repairs.iter().map(ToString::to_string).collect(),
        }),
    ))
}

async fn delete_fence(
    State(state): State<ApiState>,
    identity: Identity,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    identity.require(&[Role::Ops, Role::Admin])?;
    if state
        .store
        .delete_fence(&id)
        .await
        .map_err(ApiError::internal)?
    {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found(format!("no fence {id:?}")))
    }
}

#[derive(Debug, Serialize)]
struct PromotionView {
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

async fn create_promotion(
    State(state): State<ApiState>,
    identity: Identity,
    ApiJson(spec): ApiJson<PromotionSpec>,
) -> Result<(StatusCode, Json<PromotionView>), ApiError> {
    identity.require(&[Role::Ops, Role::Admin])?;
    let promotion = spec.parse(0).map_err(ApiError::invalid_promotion)?;
    for fence in &promotion.fence_ids {
        if state
            .store
            .get_fence(fence)
            .await
            .map_err(ApiError::internal)?
            .is_none()
        {
            return Err(ApiError::unprocessable(
                format!("fence {fence:?} does not exist"),
                Vec::new(),
            ));
        }
    }
    state
        .store
        .upsert_promotion(&promotion, now_ms())
        .await
        .map_err(ApiError::internal)?;
    Ok((StatusCode::CREATED, Json(PromotionView::from(&promotion))))
}

/// `PUT /v1/promotions/{id}`: replaces a promotion (the body's id must match the path).
async fn replace_promotion(
    State(state): State<ApiState>,
    identity: Identity,
    Path(id): Path<String>,
    ApiJson(spec): ApiJson<PromotionSpec>,
) -> Result<Json<PromotionView>, ApiError> {
    if spec.id != id {
        return Err(ApiError::unprocessable(
            format!("id {:?} differs from {id:?} in the path", spec.id),
            Vec::new(),
        ));
    }
    let (_, Json(view)) = create_promotion(State(state), identity, ApiJson(spec)).await?;
    Ok(Json(view))
}

/// `POST /v1/promotions/{id}/deactivate`: stops new eligibility; eligible users exit at their next point.
async fn deactivate_promotion(
    State(state): State<ApiState>,
    identity: Identity,
    Path(id): Path<String>,
) -> Result<Json<PromotionView>, ApiError> {
    identity.require(&[Role::Ops, Role::Admin])?;
    let mut promotion = state
        .store
        .get_promotion(&id)
        .await
        .map_err(ApiError::internal)?
        .ok_or_else(|| ApiError::not_found(format!("no promotion {id:?}")))?;
    promotion.active = false;
    state
        .store
        .upsert_promotion(&promotion, now_ms())
        .await
        .map_err(ApiError::internal)?;
    Ok(Json(PromotionView::from(&promotion)))
}

async fn list_promotions(
    State(state): State<ApiState>,
    identity: Identity,
) -> Result<Json<Vec<PromotionView>>, ApiError> {
    identity.require(&[Role::Ops, Role::Admin, Role::Consumer])?;
    let promotions = state
        .store
        .load_promotions()
        .await
        .map_err(ApiError::internal)?;
    Ok(Json(promotions.iter().map(PromotionView::from).collect()))
}

async fn get_promotion(
    State(state): State<ApiState>,
    identity: Identity,
    Path(id): Path<String>,
) -> Result<Json<PromotionView>, ApiError> {
    identity.require(&[Role::Ops, Role::Admin, Role::Consumer])?;
    let promotion = state
        .store
        .get_promotion(&id)
        .await
        .map_err(ApiError::internal)?
        .ok_or_else(|| ApiError::not_found(format!("no promotion {id:?}")))?;
    Ok(Json(PromotionView::from(&promotion)))
}

#[derive(Debug, Serialize)]
struct EligibilityView {
    promotion_id: String,
    fence_id: String,
    since: String,
    event_id: String,
}

/// A user's current eligible promotions: their own (`me` or their id) for mobile callers, anyone's for
/// ops, consumers and admins.
async fn user_promotions(
    State(state): State<ApiState>,
    identity: Identity,
    Path(id): Path<String>,
) -> Result<Json<Vec<EligibilityView>>, ApiError> {
    let user = if id == "me" {
        identity.user_id.clone()
    } else {
        id
    };
    if user != identity.user_id {
        identity.require(&[Role::Ops, Role::Admin, Role::Consumer])?;
    }
    let rows = state
        .store
        .eligibility_of(&user)
        .await
        .map_err(ApiError::internal)?;
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
