//! Promotions: create, replace, read, list, deactivate, delete. The store keeps them consistent with the
//! fences (a promotion naming a missing fence is refused in the same transaction).

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::extract::{Caller, Ops, OpsOrConsumer};
use super::{ApiError, ApiJson, ApiPath, ApiState};
use crate::promo::{EpochMs, Promotion, PromotionSpec};

/// Ops change promotions; ops and consumers read them.
pub(super) fn routes() -> OpenApiRouter<ApiState> {
    OpenApiRouter::new()
        .routes(routes!(list_promotions, create_promotion))
        .routes(routes!(get_promotion, replace_promotion, delete_promotion))
        .routes(routes!(deactivate_promotion))
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

impl From<&Promotion> for PromotionView {
    fn from(p: &Promotion) -> Self {
        Self {
            id: p.id.to_string(),
            name: p.name.clone(),
            fences: p.fence_ids.iter().map(ToString::to_string).collect(),
            valid_from: p.valid_from.map(EpochMs::to_rfc3339),
            valid_until: p.valid_until.map(EpochMs::to_rfc3339),
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
    _: Caller<Ops>,
    ApiJson(spec): ApiJson<PromotionSpec>,
) -> Result<(StatusCode, Json<PromotionView>), ApiError> {
    let view = store_promotion(&state, spec).await?;
    Ok((StatusCode::CREATED, Json(view)))
}

/// Checks a promotion and stores it; the store refuses one whose fences do not exist (422).
async fn store_promotion(state: &ApiState, spec: PromotionSpec) -> Result<PromotionView, ApiError> {
    let promotion = spec.parse(0).map_err(ApiError::invalid_promotion)?;
    state
        .store
        .upsert_promotion(&promotion, EpochMs::now().as_millis())
        .await?;
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
    _: Caller<Ops>,
    ApiPath(id): ApiPath<String>,
    ApiJson(spec): ApiJson<PromotionSpec>,
) -> Result<Json<PromotionView>, ApiError> {
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
    _: Caller<Ops>,
    ApiPath(id): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
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
    _: Caller<Ops>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<PromotionView>, ApiError> {
    let mut promotion = state
        .store
        .get_promotion(&id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no promotion {id:?}")))?;
    promotion.active = false;
    state
        .store
        .upsert_promotion(&promotion, EpochMs::now().as_millis())
        .await?;
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
    _: Caller<OpsOrConsumer>,
) -> Result<Json<Vec<PromotionView>>, ApiError> {
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
    _: Caller<OpsOrConsumer>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<PromotionView>, ApiError> {
    let promotion = state
        .store
        .get_promotion(&id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no promotion {id:?}")))?;
    Ok(Json(PromotionView::from(&promotion)))
}
