//! Results: what matches a point now, and a user's current eligibility.

use axum::extract::{Query, State};
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::extract::Require;
use super::{ApiError, ApiPath, ApiState};
use crate::auth::{Identity, Role};
use crate::geofence::geojson::parse_fences_value;
use crate::geofence::{draw, GeoPoint, ParseOptions};
use crate::promo::{EpochMs, PointMatch};

/// Any verified caller may probe a point and read their own eligibility; ops and consumers read anyone's.
pub(super) fn routes() -> OpenApiRouter<ApiState> {
    OpenApiRouter::new()
        .routes(routes!(match_point))
        .routes(routes!(user_promotions))
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
    /// Also give each match's nearest boundary point (`nearest`, `[lon, lat]`): for maps; slower.
    nearest: Option<bool>,
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
    let mut matches = state.catalog.load().match_at(point, EpochMs::now());
    if query.nearest == Some(true) {
        for found in &mut matches {
            if let Some(stored) = state.store.get_fence(&found.fence_id).await? {
                let feature = serde_json::json!({
                    "type": "Feature", "id": stored.id,
                    "properties": {"tolerance_m": stored.tolerance_m},
                    "geometry": serde_json::from_str::<serde_json::Value>(&stored.geometry)
                        .map_err(ApiError::internal)?,
                });
                let fence = parse_fences_value(feature, &ParseOptions::default())
                    .map_err(ApiError::internal)?
                    .fences
                    .pop();
                found.nearest = fence.and_then(|f| draw::nearest_boundary_point(&f, point));
            }
        }
    }
    Ok(Json(matches))
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
                since: EpochMs::from_millis(e.since_ms).to_rfc3339(),
                event_id: e.event_id,
            })
            .collect(),
    ))
}
