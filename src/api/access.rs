//! What every request leaves behind: a request id (taken from `x-request-id` when the caller sent a
//! usable one, generated otherwise, returned in the response and put on the request's span), one access
//! log line (target `geopromo::access`, at info), and the request metrics by route, method and status.

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;
use tracing::Instrument as _;

use super::ApiState;
use crate::auth::secret::random_id;

pub const REQUEST_ID: &str = "x-request-id";

/// The caller's request id when it is one a log can carry safely (1 to 128 of `A-Z a-z 0-9 . _ : -`);
/// anything else is replaced, never echoed.
fn usable_request_id(value: &HeaderValue) -> Option<&str> {
    let text = value.to_str().ok()?;
    let usable = (1..=128).contains(&text.len())
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'));
    usable.then_some(text)
}

/// Runs outside the other layers, so refused bodies and control characters are logged and counted too.
pub(super) async fn observe(
    State(state): State<ApiState>,
    request: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    let request_id = request
        .headers()
        .get(REQUEST_ID)
        .and_then(usable_request_id)
        .map_or_else(random_id, str::to_owned);
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |path| path.as_str().to_owned());
    let method = request.method().as_str().to_owned();
    let span = tracing::info_span!("http_request", request_id = %request_id, %method, %route);
    let mut response = next.run(request).instrument(span.clone()).await;
    let elapsed = started.elapsed();
    let status = response.status().as_u16();
    state
        .http_metrics
        .observe(&route, &method, status, elapsed.as_secs_f64());
    tracing::info!(
        target: "geopromo::access",
        parent: &span,
        status,
        elapsed_ms = elapsed.as_secs_f64() * 1000.0,
        "{method} {route} {status}"
    );
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert(REQUEST_ID, value);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_request_ids_are_taken() {
        let take = |text: &str| usable_request_id(&HeaderValue::from_str(text).unwrap()).is_some();
        assert!(take("abc-123_x.y:z"));
        assert!(!take(""));
        assert!(!take("has space"));
        assert!(!take("quote\"d"));
        assert!(!take(&"x".repeat(129)));
        assert!(take(&"x".repeat(128)));
    }
}
