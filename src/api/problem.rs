//! RFC 9457 problem details: every error the API returns, with a stable `type`.

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Request};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::geofence::GeoJsonError;
use crate::promo::promotion::PromotionProblem;

/// Base of the `type` URIs; the part after it is the stable error code.
const TYPE_BASE: &str = "https://geopromo.dev/problems/";

/// An API error rendered as `application/problem+json` (RFC 9457).
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct ApiError {
    #[serde(skip)]
    pub status: StatusCode,
    /// Stable URI of the error kind, `https://geopromo.dev/problems/{code}`.
    #[serde(rename = "type")]
    pub kind: String,
    pub title: &'static str,
    /// The HTTP status code again.
    #[serde(rename = "status")]
    pub status_code: u16,
    pub detail: String,
    /// Per-item problems (features, fields), when there are several.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    #[schema(required = false)]
    pub errors: Vec<String>,
    /// Seconds to wait, also sent as `Retry-After` (429 only).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(required = false)]
    pub retry_after: Option<u64>,
}

impl ApiError {
    fn new(status: StatusCode, code: &str, title: &'static str, detail: impl Into<String>) -> Self {
        Self {
            status,
            kind: format!("{TYPE_BASE}{code}"),
            title,
            status_code: status.as_u16(),
            detail: detail.into(),
            errors: Vec::new(),
            retry_after: None,
        }
    }

    /// For a stable code and title that has no constructor of its own.
    pub fn with_code(
        status: StatusCode,
        code: &str,
        title: &'static str,
        detail: impl Into<String>,
    ) -> Self {
        Self::new(status, code, title, detail)
    }

    pub fn rate_limited(retry_after_s: u64) -> Self {
        let mut error = Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate-limited",
            "Too many attempts",
            format!("retry in {retry_after_s} s"),
        );
        error.retry_after = Some(retry_after_s);
        error
    }

    pub fn bad_request(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "bad-request",
            "The request is malformed",
            detail,
        )
    }

    pub fn unauthorized(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "Authentication is required",
            detail,
        )
    }

    pub fn forbidden(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "Not allowed for this caller",
            detail,
        )
    }

    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not-found", "Not found", detail)
    }

    pub fn unprocessable(detail: impl Into<String>, errors: Vec<String>) -> Self {
        let mut error = Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation",
            "The content is not valid",
            detail,
        );
        error.errors = errors;
        error
    }

    pub fn invalid_geojson(error: GeoJsonError) -> Self {
        let mut problem = Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid-geojson",
            "The GeoJSON is not a valid fence set",
            error.to_string(),
        );
        problem.errors = error.report_lines();
        problem
    }

    pub fn invalid_promotion(problems: Vec<PromotionProblem>) -> Self {
        Self::unprocessable(
            "the promotion is not valid",
            problems.into_iter().map(|p| p.problem).collect(),
        )
    }

    pub fn unavailable(error: impl std::fmt::Display) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "A dependency is unavailable",
            error.to_string(),
        )
    }

    /// Logs the cause and answers 500 without leaking it.
    pub fn internal(error: impl std::fmt::Display) -> Self {
        tracing::error!(%error, "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "Internal error",
            "the server failed; the cause is in its logs",
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::to_string(&self).unwrap_or_default();
        let mut response = (
            self.status,
            [(header::CONTENT_TYPE, "application/problem+json")],
            body,
        )
            .into_response();
        let headers = response.headers_mut();
        if self.status == StatusCode::UNAUTHORIZED {
            headers.insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer realm=\"geopromo\""),
            );
        }
        if let Some(seconds) = self.retry_after {
            headers.insert(header::RETRY_AFTER, header::HeaderValue::from(seconds));
        }
        response
    }
}

/// `axum::Json`, with its rejections (wrong content type, syntax, wrong types, unknown fields, too large)
/// answered as problem+json.
#[derive(Debug, Clone)]
pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        match axum::Json::<T>::from_request(request, state).await {
            Ok(axum::Json(value)) => Ok(Self(value)),
            Err(rejection) => Err(json_rejection(&rejection)),
        }
    }
}

fn json_rejection(rejection: &JsonRejection) -> ApiError {
    let detail = rejection.body_text();
    match rejection {
        JsonRejection::JsonDataError(_) => ApiError::unprocessable(detail, Vec::new()),
        JsonRejection::MissingJsonContentType(_) => {
            let mut error = ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported-media-type",
                "Send JSON",
                detail,
            );
            error.errors = Vec::new();
            error
        }
        JsonRejection::BytesRejection(_) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too-large",
                "The body is over the size limit",
                detail,
            )
        }
        _ => ApiError::bad_request(detail),
    }
}
