//! Authentication endpoints: login, refresh, logout, sessions, password, admin, RFC 7009 revocation,
//! RFC 7662 introspection and the JWKS.

use axum::extract::rejection::FormRejection;
use axum::extract::{Form, FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::extract::{Caller, ClientIp, ConsumerOrAdmin};
use super::session_view::{session_view, Revoked, SessionView};
use super::{ApiError, ApiJson, ApiPath, ApiState};
use crate::auth::Identity;
use crate::auth::{AuthError, ClientKind, Introspection, IssuedTokens};

/// Largest body an auth endpoint reads: these are reachable without a token, so a large body must be
/// refused before it is buffered.
pub const MAX_AUTH_BODY_BYTES: usize = 8 * 1024;

/// The caller's IP, admitted by the per-IP limit of login. An extractor that runs before the body one, so
/// refused requests cost neither memory nor parsing.
pub struct LoginAdmitted(std::net::IpAddr);

impl FromRequestParts<ApiState> for LoginAdmitted {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &ApiState) -> Result<Self, ApiError> {
        let Ok(ClientIp(ip)) = ClientIp::from_request_parts(parts, state).await;
        state.auth.admit_login(ip)?;
        Ok(Self(ip))
    }
}

/// The caller's IP, admitted by the per-IP limit of refresh (see [`LoginAdmitted`]).
pub struct RefreshAdmitted(std::net::IpAddr);

impl FromRequestParts<ApiState> for RefreshAdmitted {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &ApiState) -> Result<Self, ApiError> {
        let Ok(ClientIp(ip)) = ClientIp::from_request_parts(parts, state).await;
        state.auth.admit_refresh(ip)?;
        Ok(Self(ip))
    }
}

/// Login and refresh are open (limited per IP before the body is read: [`LoginAdmitted`]); the rest needs a token, each
/// handler's [`Caller`] or [`Identity`] saying whose. Every answer is `no-store` except the public keys.
pub(super) fn routes() -> OpenApiRouter<ApiState> {
    let tokens = OpenApiRouter::new()
        .routes(routes!(login))
        .routes(routes!(refresh))
        .routes(routes!(logout))
        .routes(routes!(logout_all))
        .routes(routes!(own_sessions))
        .routes(routes!(revoke_own_session))
        .routes(routes!(change_password))
        .routes(routes!(revoke_token))
        .routes(routes!(introspect));
    // Added after the layers: public keys are meant to be cached.
    with_token_layers(tokens).routes(routes!(jwks))
}

/// The layers of every token, session and account route: a small body limit (several are reachable
/// without a token, so a large body must be refused before it is buffered) and no caching.
pub(super) fn with_token_layers(router: OpenApiRouter<ApiState>) -> OpenApiRouter<ApiState> {
    router
        .layer(axum::extract::DefaultBodyLimit::max(MAX_AUTH_BODY_BYTES))
        .layer(axum::middleware::map_response(no_store))
}

/// Tokens and session details must not be kept by caches or browsers (RFC 6749 §5.1).
async fn no_store(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    headers.insert(header::PRAGMA, header::HeaderValue::from_static("no-cache"));
    response
}

impl From<AuthError> for ApiError {
    fn from(error: AuthError) -> Self {
        let detail = error.to_string();
        match error {
            AuthError::InvalidCredentials => ApiError::with_code(
                StatusCode::UNAUTHORIZED,
                "invalid-credentials",
                "Invalid credentials",
                detail,
            ),
            AuthError::RateLimited { retry_after_s } => ApiError::rate_limited(retry_after_s),
            AuthError::InvalidToken(_) => ApiError::with_code(
                StatusCode::UNAUTHORIZED,
                "invalid-token",
                "The access token is not valid",
                detail,
            ),
            AuthError::SessionEnded(_) => ApiError::with_code(
                StatusCode::UNAUTHORIZED,
                "session-ended",
                "The session has ended",
                detail,
            ),
            AuthError::InvalidGrant => ApiError::with_code(
                StatusCode::UNAUTHORIZED,
                "invalid-grant",
                "The refresh token is not valid",
                detail,
            ),
            AuthError::ClientNotAllowed(_) => ApiError::with_code(
                StatusCode::FORBIDDEN,
                "client-not-allowed",
                "Not allowed for this client kind",
                detail,
            ),
            AuthError::Invalid(_) => ApiError::unprocessable(detail, Vec::new()),
            AuthError::Conflict(_) => {
                ApiError::with_code(StatusCode::CONFLICT, "conflict", "Conflict", detail)
            }
            AuthError::NotFound(_) => ApiError::not_found(detail),
            AuthError::Store(store) => ApiError::from(store),
            AuthError::Key(_) | AuthError::Sign(_) => {
                ApiError::internal(crate::error::error_chain(&error))
            }
        }
    }
}

/// A JSON Web Key Set (RFC 7517) of Ed25519 public keys.
#[derive(Debug, Serialize, ToSchema)]
pub struct Jwks {
    keys: Vec<Jwk>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Jwk {
    kty: String,
    crv: String,
    x: String,
    kid: String,
    #[serde(rename = "use")]
    key_use: String,
    alg: String,
}

/// The public keys that verify access tokens now (the signing key, a key published ahead of a rotation,
/// and superseded keys until their last tokens expire).
#[utoipa::path(get, path = "/.well-known/jwks.json", tag = "auth",
    responses((status = 200, description = "Public keys", body = Jwks, content_type = "application/json")))]
async fn jwks(State(state): State<ApiState>) -> impl IntoResponse {
    (
        [(header::CACHE_CONTROL, "public, max-age=60")],
        Json(state.auth.jwks()),
    )
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    #[schema(min_length = 1, max_length = 128)]
    username: String,
    #[schema(min_length = 1, max_length = 1024)]
    password: String,
    /// The client kind: the token's audience; the session gets the user's roles this kind allows
    /// (mobile: mobile; ops: ops and admin; consumer: consumer).
    client: ClientKind,
    /// Shown in the session list ("Pixel 8", "ops laptop").
    #[serde(default)]
    device_label: Option<String>,
}

fn user_agent(headers: &HeaderMap) -> Option<String> {
    headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// Username and password to an access token and a refresh token. Rate limited per IP and per username.
#[utoipa::path(post, path = "/v1/auth/login", tag = "auth", request_body = LoginRequest,
    responses(
        (status = 200, description = "A new session", body = IssuedTokens),
        (status = 401, description = "Unknown user, wrong password or disabled account (one answer for all)", body = ApiError, content_type = "application/problem+json"),
        (status = 403, description = "No role this client kind may use", body = ApiError, content_type = "application/problem+json"),
        (status = 429, description = "Too many attempts (see Retry-After)", body = ApiError, content_type = "application/problem+json"),
        (status = "default", description = "Error", body = ApiError, content_type = "application/problem+json"),
    ))]
async fn login(
    State(state): State<ApiState>,
    LoginAdmitted(ip): LoginAdmitted,
    headers: HeaderMap,
    ApiJson(request): ApiJson<LoginRequest>,
) -> Result<Json<IssuedTokens>, ApiError> {
    let tokens = state
        .auth
        .login(
            &request.username,
            request.password,
            request.client,
            request.device_label,
            user_agent(&headers),
            ip,
        )
        .await?;
    Ok(Json(tokens))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RefreshRequest {
    refresh_token: String,
}

/// Exchanges a refresh token for the next pair. The old token is then spent: presented again within
/// `auth.refresh_grace_s` it gets the same answer; after that, the whole session is revoked.
#[utoipa::path(post, path = "/v1/auth/refresh", tag = "auth", request_body = RefreshRequest,
    responses(
        (status = 200, description = "The next token pair", body = IssuedTokens),
        (status = 401, description = "Unknown token, ended session, or reuse (the session is now revoked)", body = ApiError, content_type = "application/problem+json"),
        (status = 429, description = "Too many refreshes from this IP", body = ApiError, content_type = "application/problem+json"),
        (status = "default", description = "Error", body = ApiError, content_type = "application/problem+json"),
    ))]
async fn refresh(
    State(state): State<ApiState>,
    RefreshAdmitted(ip): RefreshAdmitted,
    ApiJson(request): ApiJson<RefreshRequest>,
) -> Result<Json<IssuedTokens>, ApiError> {
    Ok(Json(state.auth.refresh(&request.refresh_token, ip).await?))
}

/// Ends the caller's session.
#[utoipa::path(post, path = "/v1/auth/logout", tag = "auth",
    responses(
        (status = 204, description = "Session revoked"),
        (status = "default", description = "Error", body = ApiError, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
async fn logout(State(state): State<ApiState>, identity: Identity) -> Result<StatusCode, ApiError> {
    state
        .auth
        .revoke_session(&identity.session_id, Some(&identity.user_id), "logout")
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Ends every session of the caller, this one included.
#[utoipa::path(post, path = "/v1/auth/logout-all", tag = "auth",
    responses(
        (status = 200, description = "Sessions revoked", body = Revoked),
        (status = "default", description = "Error", body = ApiError, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
async fn logout_all(
    State(state): State<ApiState>,
    identity: Identity,
) -> Result<Json<Revoked>, ApiError> {
    let revoked = state
        .auth
        .revoke_user_sessions(&identity.user_id, "logout everywhere")
        .await?;
    Ok(Json(Revoked { revoked }))
}

/// The caller's sessions, newest first (revoked ones included, with the reason).
#[utoipa::path(get, path = "/v1/auth/sessions", tag = "auth",
    responses(
        (status = 200, description = "Sessions", body = Vec<SessionView>),
        (status = "default", description = "Error", body = ApiError, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
async fn own_sessions(
    State(state): State<ApiState>,
    identity: Identity,
) -> Result<Json<Vec<SessionView>>, ApiError> {
    let sessions = state.auth.sessions_of(&identity.user_id).await?;
    Ok(Json(
        sessions
            .into_iter()
            .map(|s| session_view(s, &identity.session_id))
            .collect(),
    ))
}

/// Revokes one of the caller's sessions (a lost phone).
#[utoipa::path(delete, path = "/v1/auth/sessions/{id}", tag = "auth",
    params(("id" = String, Path, description = "Session id")),
    responses(
        (status = 204, description = "Revoked"),
        (status = 404, description = "Not one of the caller's sessions", body = ApiError, content_type = "application/problem+json"),
        (status = "default", description = "Error", body = ApiError, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
async fn revoke_own_session(
    State(state): State<ApiState>,
    identity: Identity,
    ApiPath(id): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    state
        .auth
        .revoke_session(&id, Some(&identity.user_id), "revoked by its user")
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PasswordChange {
    #[schema(min_length = 1, max_length = 1024)]
    current_password: String,
    #[schema(min_length = 10, max_length = 1024)]
    new_password: String,
}

/// Changes the caller's password; every other session of theirs is revoked.
#[utoipa::path(put, path = "/v1/auth/password", tag = "auth", request_body = PasswordChange,
    responses(
        (status = 200, description = "Changed; other sessions revoked", body = Revoked),
        (status = 401, description = "Wrong current password", body = ApiError, content_type = "application/problem+json"),
        (status = 422, description = "The new password is too short or too long", body = ApiError, content_type = "application/problem+json"),
        (status = "default", description = "Error", body = ApiError, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
async fn change_password(
    State(state): State<ApiState>,
    identity: Identity,
    ApiJson(change): ApiJson<PasswordChange>,
) -> Result<Json<Revoked>, ApiError> {
    let revoked = state
        .auth
        .change_password(&identity, change.current_password, change.new_password)
        .await?;
    Ok(Json(Revoked { revoked }))
}

/// RFC 7009 / RFC 7662 form body.
#[derive(Debug, Deserialize, ToSchema)]
pub struct TokenForm {
    token: String,
    /// `access_token` or `refresh_token`; both are tried whatever it says.
    #[serde(default)]
    #[allow(dead_code)]
    token_type_hint: Option<String>,
}

fn form(form: Result<Form<TokenForm>, FormRejection>) -> Result<TokenForm, ApiError> {
    form.map(|Form(f)| f)
        .map_err(|e| ApiError::bad_request(e.body_text()))
}

/// RFC 7009: revokes the session of an access or refresh token. Holding the token is the authority, as
/// for public clients; the answer is 200 whether or not the token was valid.
#[utoipa::path(post, path = "/oauth/revoke", tag = "auth",
    request_body(content = TokenForm, content_type = "application/x-www-form-urlencoded"),
    responses(
        (status = 200, description = "Revoked, or was not valid"),
        (status = "default", description = "Error", body = ApiError, content_type = "application/problem+json"),
    ))]
async fn revoke_token(
    State(state): State<ApiState>,
    body: Result<Form<TokenForm>, FormRejection>,
) -> Result<StatusCode, ApiError> {
    let body = form(body)?;
    state.auth.revoke_token(&body.token).await?;
    Ok(StatusCode::OK)
}

/// RFC 7662: whether a token is active (consumers and admins).
#[utoipa::path(post, path = "/oauth/introspect", tag = "auth",
    request_body(content = TokenForm, content_type = "application/x-www-form-urlencoded"),
    responses(
        (status = 200, description = "Token state", body = Introspection),
        (status = "default", description = "Error", body = ApiError, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
async fn introspect(
    State(state): State<ApiState>,
    _: Caller<ConsumerOrAdmin>,
    body: Result<Form<TokenForm>, FormRejection>,
) -> Result<Json<Introspection>, ApiError> {
    let body = form(body)?;
    Ok(Json(state.auth.introspect(&body.token).await?))
}
