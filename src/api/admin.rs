//! Administration: users, their sessions, and the signing keys.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::extract::{Admin, Caller};
use super::session_view::{session_view, Revoked, SessionView};
use super::{ApiError, ApiJson, ApiPath, ApiState};
use crate::auth::Role;
use crate::promo::timestamp::format_rfc3339_ms;
use crate::store::AuditEntry;

/// Admins only (with the body limit and `no-store` of the token routes: `auth::with_token_layers`).
pub(super) fn routes() -> OpenApiRouter<ApiState> {
    OpenApiRouter::new()
        .routes(routes!(create_user))
        .routes(routes!(disable_user))
        .routes(routes!(user_sessions, revoke_user_sessions))
        .routes(routes!(rotate_keys))
        .routes(routes!(revoke_key))
        .routes(routes!(audit_trail))
}

#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct AuditQuery {
    /// Cursor: the `next` of the previous page.
    after: Option<String>,
    /// Page size, 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<i64>,
}

/// One page of the audit trail, oldest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct AuditPage {
    items: Vec<AuditEntry>,
    /// Pass as `after` for the next page; null on the last page.
    next: Option<String>,
}

/// Every change made through the API to fences, promotions, users, sessions and keys (admin): who, what,
/// to what, when and from where.
#[utoipa::path(get, path = "/v1/admin/audit", tag = "admin", params(AuditQuery),
    responses(
        (status = 200, description = "Entries oldest first", body = AuditPage),
        (status = "default", description = "Error", body = ApiError, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
async fn audit_trail(
    State(state): State<ApiState>,
    _: Caller<Admin>,
    query: Result<axum::extract::Query<AuditQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<AuditPage>, ApiError> {
    let axum::extract::Query(query) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let limit = query.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::bad_request("limit must be between 1 and 1000"));
    }
    let mut items = state
        .store
        .audit_page(query.after.as_deref(), limit + 1)
        .await?;
    let next = (items.len() as i64 > limit).then(|| items[limit as usize - 1].id.clone());
    items.truncate(limit as usize);
    Ok(Json(AuditPage { items, next }))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewUser {
    #[schema(min_length = 1, max_length = 128, pattern = "^[A-Za-z0-9._@+-]+$")]
    username: String,
    #[schema(min_length = 10, max_length = 1024)]
    password: String,
    roles: Vec<Role>,
    /// The user id (token subject, GPS event key); default: the username.
    #[serde(default)]
    id: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct UserView {
    id: String,
    username: String,
    roles: Vec<Role>,
    created_at: String,
}

/// Adds a user (admin).
#[utoipa::path(post, path = "/v1/admin/users", tag = "admin", request_body = NewUser,
    responses(
        (status = 201, description = "Created", body = UserView),
        (status = 409, description = "Username or id taken", body = ApiError, content_type = "application/problem+json"),
        (status = 422, description = "Invalid name, roles or password", body = ApiError, content_type = "application/problem+json"),
        (status = "default", description = "Error", body = ApiError, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
async fn create_user(
    State(state): State<ApiState>,
    _: Caller<Admin>,
    ApiJson(new): ApiJson<NewUser>,
) -> Result<(StatusCode, Json<UserView>), ApiError> {
    let user = state
        .auth
        .create_user(&new.username, new.password, new.roles, new.id)
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(UserView {
            id: user.id,
            username: user.username,
            roles: user.roles,
            created_at: format_rfc3339_ms(user.created_at_ms),
        }),
    ))
}

/// Disables a user (admin): no more logins, every session revoked.
#[utoipa::path(post, path = "/v1/admin/users/{id}/disable", tag = "admin",
    params(("id" = String, Path, description = "User id")),
    responses(
        (status = 204, description = "Disabled"),
        (status = 404, description = "No such user", body = ApiError, content_type = "application/problem+json"),
        (status = "default", description = "Error", body = ApiError, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
async fn disable_user(
    State(state): State<ApiState>,
    _: Caller<Admin>,
    ApiPath(id): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    state.auth.disable_user(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A user's sessions (admin).
#[utoipa::path(get, path = "/v1/admin/users/{id}/sessions", tag = "admin",
    params(("id" = String, Path, description = "User id")),
    responses(
        (status = 200, description = "Sessions, newest first", body = Vec<SessionView>),
        (status = "default", description = "Error", body = ApiError, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
async fn user_sessions(
    State(state): State<ApiState>,
    caller: Caller<Admin>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<Vec<SessionView>>, ApiError> {
    let sessions = state.auth.sessions_of(&id).await?;
    Ok(Json(
        sessions
            .into_iter()
            .map(|s| session_view(s, &caller.session_id))
            .collect(),
    ))
}

/// Revokes every session of a user (admin).
#[utoipa::path(delete, path = "/v1/admin/users/{id}/sessions", tag = "admin",
    params(("id" = String, Path, description = "User id")),
    responses(
        (status = 200, description = "Revoked", body = Revoked),
        (status = "default", description = "Error", body = ApiError, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
async fn revoke_user_sessions(
    State(state): State<ApiState>,
    _: Caller<Admin>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<Revoked>, ApiError> {
    let revoked = state
        .auth
        .revoke_user_sessions(&id, "revoked by an admin")
        .await?;
    Ok(Json(Revoked { revoked }))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RotatedKey {
    /// The new key's id; it signs from `auth.key_publish_ahead_s` on.
    kid: String,
}

/// Adds a signing key (admin); the previous one keeps verifying until its last tokens expire.
#[utoipa::path(post, path = "/v1/admin/keys/rotate", tag = "admin",
    responses(
        (status = 201, description = "New key", body = RotatedKey),
        (status = "default", description = "Error", body = ApiError, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
async fn rotate_keys(
    State(state): State<ApiState>,
    _: Caller<Admin>,
) -> Result<(StatusCode, Json<RotatedKey>), ApiError> {
    let kid = state.auth.rotate_keys().await?;
    Ok((StatusCode::CREATED, Json(RotatedKey { kid })))
}

/// Emergency revocation of a signing key (admin): its tokens are refused on every instance within a
/// poll interval; a new key takes over if it was the only one.
#[utoipa::path(post, path = "/v1/admin/keys/{kid}/revoke", tag = "admin",
    params(("kid" = String, Path, description = "Key id")),
    responses(
        (status = 204, description = "Revoked"),
        (status = 404, description = "No such unrevoked key", body = ApiError, content_type = "application/problem+json"),
        (status = "default", description = "Error", body = ApiError, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
async fn revoke_key(
    State(state): State<ApiState>,
    _: Caller<Admin>,
    ApiPath(kid): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    state.auth.revoke_key(&kid).await?;
    Ok(StatusCode::NO_CONTENT)
}
