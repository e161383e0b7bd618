//! What every request leaves behind: a request id (taken from `x-request-id` when the caller sent a
//! usable one, generated otherwise, returned in the response and put on the request's span), one access
//! log line (target `geopromo::access`, at info), the request metrics by route, method and status, and —
//! for a change that succeeded — an audit entry: who (the token's subject), what (method and route),
//! to what (the path), when and from where.

use std::net::SocketAddr;
use std::time::Instant;

use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::http::{header, HeaderValue, Method};
use axum::middleware::Next;
use axum::response::Response;
use tracing::Instrument as _;

use super::ApiState;
use crate::auth::secret::random_id;
use crate::error::error_chain;
use crate::promo::EpochMs;
use crate::store::AuditEntry;

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

/// Routes whose successful changes go to the audit trail: the catalog, accounts, sessions and keys.
/// Locations are data, not changes to the service, and `/oauth/revoke` is called by a token's holder.
const AUDITED_ROUTES: [&str; 6] = [
    "/v1/fences",
    "/v1/promotions",
    "/v1/admin/",
    "/v1/auth/logout",
    "/v1/auth/sessions",
    "/v1/auth/password",
];

fn is_change_to_audit(method: &Method, route: &str) -> bool {
    !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
        && AUDITED_ROUTES
            .iter()
            .any(|prefix| route.starts_with(prefix))
}

/// The subject of the request's bearer token, read before the handler runs (a logout ends the session the
/// token belongs to).
fn actor(state: &ApiState, request: &Request) -> String {
    request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .and_then(|(_, token)| state.auth.verify(token.trim()).ok())
        .map_or_else(|| "anonymous".to_owned(), |identity| identity.user_id)
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
    let audit = is_change_to_audit(request.method(), &route).then(|| {
        let remote = request
            .extensions()
            .get::<ConnectInfo<SocketAddr>>()
            .map_or_else(|| "unknown".to_owned(), |c| c.0.ip().to_string());
        (
            actor(&state, &request),
            request.uri().path().to_owned(),
            remote,
        )
    });
    let mut request = request;
    let server_span = crate::otel::tracer().map(|tracer| {
        let trace = RequestTrace::start(tracer, &request, &method, &route, &request_id);
        request.extensions_mut().insert(trace.clone());
        trace
    });
    let trace_id = server_span.as_ref().and_then(RequestTrace::trace_id);
    let span = tracing::info_span!("http_request", request_id = %request_id, %method, %route,
        trace_id = trace_id.as_deref().unwrap_or(""));
    let mut response = next.run(request).instrument(span.clone()).await;
    let elapsed = started.elapsed();
    let status = response.status().as_u16();
    if let Some(trace) = server_span {
        trace.end(status);
    }
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
    if let Some((actor, target, remote)) = audit.filter(|_| response.status().is_success()) {
        let now = EpochMs::now().as_millis();
        let action = format!("{method} {route}");
        let entry = AuditEntry::new(now, &random_id(), &actor, &action, &target, &remote)
            .with_detail(format!("request {request_id}"));
        // The change is made; an audit write that fails is logged loudly rather than undoing it.
        if let Err(error) = state.store.record_audit(&entry).await {
            tracing::error!(parent: &span, error = %error_chain(&error), %action, %target, "AUDIT ENTRY LOST");
        }
    }
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert(REQUEST_ID, value);
    }
    response
}

/// The server span of one request, when tracing is on: continues the caller's `traceparent`. Handlers
/// that cause work elsewhere (a produced record) take it from the request's extensions as the parent.
#[derive(Clone)]
pub struct RequestTrace {
    pub context: opentelemetry::Context,
}

impl RequestTrace {
    fn start(
        tracer: &crate::otel::Tracer,
        request: &Request,
        method: &str,
        route: &str,
        request_id: &str,
    ) -> Self {
        use crate::otel::{KeyValue, SpanKind};
        use opentelemetry::trace::{TraceContextExt as _, Tracer as _};
        let parent = crate::otel::context_from_http(request.headers());
        let span = tracer
            .span_builder(format!("{method} {route}"))
            .with_kind(SpanKind::Server)
            .with_attributes([
                KeyValue::new("http.request.method", method.to_owned()),
                KeyValue::new("http.route", route.to_owned()),
                KeyValue::new("url.path", request.uri().path().to_owned()),
                KeyValue::new("geopromo.request_id", request_id.to_owned()),
            ])
            .start_with_context(tracer, &parent);
        Self {
            context: parent.with_span(span),
        }
    }

    fn trace_id(&self) -> Option<String> {
        crate::otel::trace_id(&self.context)
    }

    fn end(self, status: u16) {
        use crate::otel::{KeyValue, Status};
        use opentelemetry::trace::TraceContextExt as _;
        let span = self.context.span();
        span.set_attribute(KeyValue::new(
            "http.response.status_code",
            i64::from(status),
        ));
        if status >= 500 {
            span.set_status(Status::error(format!("HTTP {status}")));
        }
        span.end();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_are_audited_and_reads_and_locations_are_not() {
        assert!(is_change_to_audit(&Method::DELETE, "/v1/fences/{id}"));
        assert!(is_change_to_audit(&Method::POST, "/v1/admin/keys/rotate"));
        assert!(is_change_to_audit(&Method::PUT, "/v1/auth/password"));
        assert!(!is_change_to_audit(&Method::GET, "/v1/fences/{id}"));
        assert!(!is_change_to_audit(&Method::POST, "/v1/locations"));
        assert!(!is_change_to_audit(&Method::POST, "/v1/auth/login"));
    }

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
