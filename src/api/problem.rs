//! RFC 9457 problem details: every error the API returns, with a stable `type`.

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Request};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::geofence::GeoJsonError;
use crate::promo::promotion::PromotionProblem;
use crate::store::StoreError;

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

    /// Logs the cause (with its whole chain) and answers 500 without leaking it.
    pub fn internal(error: impl std::fmt::Display) -> Self {
        tracing::error!(error = %error, "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "Internal error",
            "the server failed; the cause is in its logs",
        )
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        match &error {
            StoreError::FenceInUse { promotions, .. } => {
                let mut problem = Self::new(
                    StatusCode::CONFLICT,
                    "fence-in-use",
                    "Promotions target this fence",
                    error.to_string(),
                );
                problem.errors = promotions
                    .iter()
                    .map(|p| format!("promotion {p:?} targets it"))
                    .collect();
                problem
            }
            StoreError::UnknownFences { missing, .. } => Self::unprocessable(
                error.to_string(),
                missing
                    .iter()
                    .map(|f| format!("fence {f:?} does not exist"))
                    .collect(),
            ),
            StoreError::Conflict(_) => Self::new(
                StatusCode::CONFLICT,
                "conflict",
                "Conflict",
                error.to_string(),
            ),
            _ if error.is_unavailable() => {
                tracing::warn!(error = %crate::error::error_chain(&error), "database unavailable");
                Self::unavailable("the database is unavailable; retry shortly")
            }
            _ => Self::internal(crate::error::error_chain(&error)),
        }
    }
}

impl From<tokio::task::JoinError> for ApiError {
    fn from(error: tokio::task::JoinError) -> Self {
        Self::internal(format!("a blocking task failed: {error}"))
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
        let is_json = request
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<mime_type::Essence>().ok())
            .is_some_and(|essence| essence.is_json());
        if !is_json {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported-media-type",
                "Send JSON",
                "Expected request with `Content-Type: application/json`",
            ));
        }
        let bytes = axum::body::Bytes::from_request(request, state)
            .await
            .map_err(|rejection| {
                if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    ApiError::new(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "too-large",
                        "The body is over the size limit",
                        rejection.body_text(),
                    )
                } else {
                    ApiError::bad_request(rejection.body_text())
                }
            })?;
        if let Some(at) = find_nul_escape(&bytes) {
            return Err(ApiError::unprocessable(
                format!("the body has a NUL character (\\u0000) at byte {at}; text may not contain control characters"),
                Vec::new(),
            ));
        }
        match axum::Json::<T>::from_bytes(&bytes) {
            Ok(axum::Json(value)) => Ok(Self(value)),
            Err(rejection) => Err(json_rejection(&rejection)),
        }
    }
}

/// Byte position of a JSON `\u0000` escape (an escaped backslash followed by `u0000` is not one).
/// No stored text may hold NUL: PostgreSQL cannot, and no id or name needs it.
#[must_use]
pub fn find_nul_escape(bytes: &[u8]) -> Option<usize> {
    let needle = b"u0000";
    let mut from = 0;
    while let Some(found) = bytes[from..]
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|p| p + from)
    {
        let backslashes = bytes[..found]
            .iter()
            .rev()
            .take_while(|&&b| b == b'\\')
            .count();
        if backslashes % 2 == 1 {
            return Some(found - 1);
        }
        from = found + 1;
    }
    None
}

/// Content types: `application/json` and any `+json` suffix, parameters ignored.
mod mime_type {
    pub struct Essence(String);

    impl std::str::FromStr for Essence {
        type Err = ();
        fn from_str(value: &str) -> Result<Self, ()> {
            let essence = value
                .split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase();
            if essence.is_empty() {
                Err(())
            } else {
                Ok(Self(essence))
            }
        }
    }

    impl Essence {
        pub fn is_json(&self) -> bool {
            self.0 == "application/json"
                || (self.0.starts_with("application/") && self.0.ends_with("+json"))
        }
    }
}

/// `axum::extract::Path`, with its rejections (a segment that is not UTF-8, a wrong type) answered as
/// problem+json instead of `text/plain`.
#[derive(Debug, Clone)]
pub struct ApiPath<T>(pub T);

impl<S, T> axum::extract::FromRequestParts<S> for ApiPath<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, ApiError> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Path(value)| Self(value))
            .map_err(|rejection| ApiError::bad_request(rejection.body_text()))
    }
}

/// `axum::extract::Query`, with its rejections answered as problem+json.
#[derive(Debug, Clone)]
pub struct ApiQuery<T>(pub T);

impl<S, T> axum::extract::FromRequestParts<S> for ApiQuery<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, ApiError> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Query(value)| Self(value))
            .map_err(|rejection| ApiError::bad_request(rejection.body_text()))
    }
}

/// Refuses a request whose path or query has a percent-encoded control character (`%00`..`%1F`,
/// `%7F`) before any handler sees it: ids, names and cursors never hold one, and PostgreSQL cannot
/// store NUL (it answered 500 before this).
pub async fn refuse_control_characters(request: Request, next: axum::middleware::Next) -> Response {
    let uri = request.uri();
    let text = uri.path_and_query().map_or("", |pq| pq.as_str());
    if let Some(at) = encoded_control_character(text) {
        return ApiError::bad_request(format!(
            "the URL has a control character ({}) at position {at}; ids and query values may not hold one",
            &text[at..at + 3]
        ))
        .into_response();
    }
    next.run(request).await
}

fn encoded_control_character(text: &str) -> Option<usize> {
    let bytes = text.as_bytes();
    (0..bytes.len().saturating_sub(2)).find(|&i| {
        bytes[i] == b'%'
            && match (bytes[i + 1], bytes[i + 2].to_ascii_uppercase()) {
                (b'0' | b'1', c) => c.is_ascii_hexdigit(),
                (b'7', b'F') => true,
                _ => false,
            }
    })
}

/// 405 with a problem body (axum's own answer has none).
pub async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method-not-allowed",
        "Method not allowed",
        "this route does not take that method",
    )
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nul_escapes_are_found_and_escaped_backslashes_are_not_mistaken() {
        assert_eq!(find_nul_escape(br#"{"a":"x\u0000"}"#), Some(7));
        assert_eq!(find_nul_escape(br#"{"a":"x\\u0000"}"#), None);
        assert_eq!(find_nul_escape(br#"{"a":"x\\\u0000"}"#), Some(9));
        assert_eq!(find_nul_escape(br#"{"a":"u0000"}"#), None);
    }

    #[test]
    fn encoded_control_characters_in_urls_are_found() {
        assert_eq!(encoded_control_character("/v1/fences/a%00b"), Some(12));
        assert_eq!(encoded_control_character("/v1/fences?name=%1f"), Some(16));
        assert_eq!(encoded_control_character("/v1/fences/%7f"), Some(11));
        assert_eq!(encoded_control_character("/v1/fences/caf%C3%A9%20x"), None);
    }
}
