//! Fences: upload GeoJSON (all or nothing, every problem reported), list, read, replace, delete.

use std::collections::HashMap;

use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::docs;
use super::extract::{Caller, Ops, Page};
use super::{ApiError, ApiJson, ApiPath, ApiState};
use crate::geofence::geojson::parse_fences_value;
use crate::geofence::{draw, ParseOptions};
use crate::promo::EpochMs;
use crate::store::StoredFence;

/// Ops only. Uploads may be as large as `api.max_body_bytes` (the caller sets that limit on this router).
pub(super) fn routes() -> OpenApiRouter<ApiState> {
    OpenApiRouter::new()
        .routes(routes!(list_fences, upload_fences))
        .routes(routes!(get_fence, replace_fence, delete_fence))
        .routes(routes!(fence_outlines))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct UploadQuery {
    /// Validate only: answer 200 with the report of every feature and store nothing.
    dry_run: Option<bool>,
}

/// One problem of one feature, placed where it is when it has a place.
#[derive(Debug, Serialize, ToSchema)]
pub struct PlacedProblem {
    /// The feature's position in the upload.
    feature: usize,
    /// The feature's id, when it has one.
    id: Option<String>,
    /// Stable machine-readable code (`self_intersection`, `ring_not_closed`, ...).
    code: &'static str,
    message: String,
    /// `[lon, lat]` of the problem (the crossing, the bad vertex, the ring), when it has one.
    at: Option<[f64; 2]>,
}

/// What an upload would store: every feature's problems and the valid fences to preview.
#[derive(Debug, Serialize, ToSchema)]
pub struct ValidationReport {
    features: usize,
    valid: usize,
    invalid: usize,
    problems: Vec<PlacedProblem>,
    repairs: Vec<String>,
    /// The valid fences, as they would be stored, outlined for a map (see `GET /v1/map/fences`).
    #[schema(value_type = Object)]
    preview: serde_json::Value,
}

fn validation_report(body: serde_json::Value) -> Result<ValidationReport, ApiError> {
    let originals: Vec<serde_json::Value> = match body.get("type").and_then(|t| t.as_str()) {
        Some("FeatureCollection") => body
            .get("features")
            .and_then(|f| f.as_array())
            .cloned()
            .unwrap_or_default(),
        _ => vec![body.clone()],
    };
    let parsed = parse_fences_value(body, &ParseOptions::default().skip_invalid(true))
        .map_err(ApiError::invalid_geojson)?;
    let problems: Vec<PlacedProblem> = parsed
        .skipped
        .iter()
        .flat_map(|rejected| {
            let geometry = originals
                .get(rejected.feature.index)
                .and_then(|f| f.get("geometry"));
            rejected.problems.iter().map(move |problem| PlacedProblem {
                feature: rejected.feature.index,
                id: rejected.feature.id.clone(),
                code: problem.code(),
                message: problem.to_string(),
                at: draw::problem_position(problem, geometry),
            })
        })
        .collect();
    Ok(ValidationReport {
        features: originals.len(),
        valid: parsed.fences.len(),
        invalid: parsed.skipped.len(),
        problems,
        repairs: parsed.repairs.iter().map(ToString::to_string).collect(),
        preview: outline_collection(&parsed.fences, &HashMap::new()),
    })
}

/// Fences as one compact FeatureCollection for a map: id, name, tolerance, the latitude to draw the band
/// at, the promotions targeting each, and the outline rounded to about a metre.
fn outline_collection(
    fences: &[crate::geofence::Fence],
    promotions: &HashMap<String, Vec<String>>,
) -> serde_json::Value {
    let features: Vec<serde_json::Value> = fences
        .iter()
        .map(|fence| {
            serde_json::json!({
                "type": "Feature",
                "id": fence.id,
                "properties": {
                    "id": fence.id,
                    "name": fence.name,
                    "tolerance_m": fence.tolerance_m,
                    "band_lat": (draw::band_latitude(fence) * 1e3).round() / 1e3,
                    "vertices": fence.vertex_count(),
                    "radius_m": fence.circle.map(|c| c.radius_m),
                    "promotions": promotions.get(&fence.id).cloned().unwrap_or_default(),
                },
                "geometry": draw::outline_geometry(fence),
            })
        })
        .collect();
    serde_json::json!({"type": "FeatureCollection", "features": features})
}

/// `GET /v1/map/fences`: every fence outlined for a map in one compact GeoJSON FeatureCollection (the
/// console draws it; MapLibre simplifies it per zoom level on the client).
#[utoipa::path(get, path = "/v1/map/fences", tag = "fences",
    responses(
        (status = 200, description = "Every fence: properties `id`, `name`, `tolerance_m`, `band_lat`, `vertices`, `radius_m`, `promotions`; MultiPolygon outlines", body = serde_json::Value, content_type = "application/geo+json"),
        (status = "default", description = "Error", body = ApiError, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
async fn fence_outlines(
    State(state): State<ApiState>,
    _: Caller<Ops>,
) -> Result<Response, ApiError> {
    let fences = state.store.load_fences().await?;
    let mut by_fence: HashMap<String, Vec<String>> = HashMap::new();
    for promotion in state.store.load_promotions().await? {
        for fence in &promotion.fence_ids {
            by_fence
                .entry(fence.to_string())
                .or_default()
                .push(promotion.id.to_string());
        }
    }
    let body =
        tokio::task::spawn_blocking(move || outline_collection(&fences, &by_fence).to_string())
            .await?;
    Ok(([(header::CONTENT_TYPE, "application/geo+json")], body).into_response())
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
    _: Caller<Ops>,
    ApiPath(id): ApiPath<String>,
    ApiJson(mut body): ApiJson<serde_json::Value>,
) -> Result<Json<UploadResult>, ApiError> {
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
        .upsert_fences(&parsed.fences, EpochMs::now().as_millis())
        .await?;
    Ok(Json(UploadResult {
        stored: parsed.fences.len(),
        catalog_version,
        repairs: parsed.repairs.iter().map(ToString::to_string).collect(),
    }))
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
            updated_at: EpochMs::from_millis(f.updated_at_ms).to_rfc3339(),
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
    _: Caller<Ops>,
    query: Result<Query<Page>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<FencePage>, ApiError> {
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
    _: Caller<Ops>,
    ApiPath(id): ApiPath<String>,
) -> Result<Response, ApiError> {
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
/// invalid features give 422 with each feature's problems. With `dry_run=true`, stores nothing and
/// answers 200 with the validation report (each problem placed at its coordinate, the valid fences
/// outlined). The body is read up to `api.max_body_bytes` and parsed on a blocking thread, so a large
/// upload does not stall other requests.
#[utoipa::path(post, path = "/v1/fences", tag = "fences", params(UploadQuery),
    request_body(content = docs::FenceUpload, description = "GeoJSON Feature or FeatureCollection of Polygon/MultiPolygon; `id` (or `properties.id`), `properties.name`, `properties.tolerance_m`"),
    responses(
        (status = 201, description = "Every feature stored", body = UploadResult),
        (status = 200, description = "`dry_run=true`: the validation report; nothing stored", body = ValidationReport),
        (status = 413, description = "Over `api.max_body_bytes`", body = ApiError, content_type = "application/problem+json"),
        (status = 422, description = "Invalid features, each with its problems", body = ApiError, content_type = "application/problem+json"),
        (status = "default", description = "Error", body = ApiError, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
async fn upload_fences(
    State(state): State<ApiState>,
    _: Caller<Ops>,
    query: Result<Query<UploadQuery>, axum::extract::rejection::QueryRejection>,
    ApiJson(body): ApiJson<serde_json::Value>,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    if query.dry_run == Some(true) {
        let report = tokio::task::spawn_blocking(move || validation_report(body)).await??;
        return Ok(Json(report).into_response());
    }
    let parsed =
        tokio::task::spawn_blocking(move || parse_fences_value(body, &ParseOptions::default()))
            .await?
            .map_err(ApiError::invalid_geojson)?;
    let catalog_version = state
        .store
        .upsert_fences(&parsed.fences, EpochMs::now().as_millis())
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(UploadResult {
            stored: parsed.fences.len(),
            catalog_version,
            repairs: parsed.repairs.iter().map(ToString::to_string).collect(),
        }),
    )
        .into_response())
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
    _: Caller<Ops>,
    ApiPath(id): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    if state.store.delete_fence(&id).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found(format!("no fence {id:?}")))
    }
}
