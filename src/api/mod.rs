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
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use crate::geofence::geojson::parse_fences_value;
use crate::geofence::ParseOptions;
use crate::promo::timestamp::{format_rfc3339_ms, now_ms};
use crate::promo::PromotionSpec;
use crate::store::{Store, StoredFence};
pub use problem::{ApiError, ApiJson};

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
        .route("/v1/fences/{id}", get(get_fence).delete(delete_fence))
        .route(
            "/v1/promotions",
            get(list_promotions).post(create_promotion),
        )
        .route("/v1/promotions/{id}", get(get_promotion))
        .route("/v1/users/{id}/promotions", get(user_promotions))
        .fallback(|| async { ApiError::not_found("no such route") })
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}

async fn ready(State(state): State<ApiState>) -> Result<&'static str, ApiError> {
    state.store.ping().await.map_err(ApiError::unavailable)?;
    Ok("ready")
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
