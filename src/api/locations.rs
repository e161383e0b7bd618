//! Locations: mobile apps post GPS points, checked with the processor's own decoder and produced to the
//! input topic keyed by the caller.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Extension;
use axum::Json;
use rdkafka::message::OwnedHeaders;
use rdkafka::producer::FutureRecord;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::access::RequestTrace;
use super::docs;
use super::extract::{Caller, Mobile};
use super::{ApiError, ApiJson, ApiState};
use crate::promo::{decode_gps_event, EpochMs};

/// Mobile callers only: a location is always the caller's own.
pub(super) fn routes() -> OpenApiRouter<ApiState> {
    OpenApiRouter::new().routes(routes!(post_locations))
}

/// A location as a mobile client posts it: the user comes from the identity, never from the body.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PostedLocation {
    #[schema(minimum = -90, maximum = 90)]
    lat: f64,
    #[schema(minimum = -180, maximum = 180)]
    lon: f64,
    /// RFC 3339 string or epoch milliseconds; default: now.
    #[serde(default)]
    #[schema(schema_with = docs::timestamp_input_schema)]
    ts: Option<serde_json::Value>,
    /// Horizontal accuracy (metres); fixes worse than `rules.max_accuracy_m` are ignored.
    #[serde(default)]
    accuracy_m: Option<f64>,
    /// Client-chosen id, for de-duplication downstream.
    #[serde(default)]
    event_id: Option<String>,
}

/// A posted location as it goes to the input topic (the contract in `docs/schemas/gps-event.schema.json`), written
/// straight from the request's fields.
#[derive(Serialize)]
struct OutgoingGpsEvent<'a> {
    user_id: &'a str,
    lat: f64,
    lon: f64,
    ts: serde_json::Value,
    accuracy_m: Option<f64>,
    event_id: Option<&'a str>,
}

/// One location, or up to 1000 as `{"locations": [...]}`. Either form refuses unknown fields, `user_id`
/// included: a location is credited to the caller of the token, never to a user named in the body.
#[derive(Debug, ToSchema)]
#[serde(untagged)]
pub enum LocationBody {
    Batch(LocationBatch),
    One(PostedLocation),
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LocationBatch {
    #[schema(min_items = 1, max_items = 1000)]
    locations: Vec<PostedLocation>,
}

impl<'de> Deserialize<'de> for LocationBody {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let value = serde_json::Value::deserialize(deserializer)?;
        if value.get("user_id").is_some() {
            return Err(D::Error::custom(
                "user_id is not accepted: a location is credited to the caller of the token",
            ));
        }
        if value.get("locations").is_some() {
            with_path(&value).map(Self::Batch).map_err(D::Error::custom)
        } else {
            with_path(&value).map(Self::One).map_err(D::Error::custom)
        }
    }
}

/// Deserializes `value`; when that fails, once more through `serde_path_to_error` for the message: a
/// `Value` has no positions, so only the path says where the problem is (`locations[3].lat: invalid
/// type ...`). Tracking the path only on failure keeps it off the accepted requests' path.
fn with_path<'de, T: Deserialize<'de>>(value: &'de serde_json::Value) -> Result<T, String> {
    T::deserialize(value).map_err(|error| {
        serde_path_to_error::deserialize::<_, T>(value)
            .err()
            .map_or_else(|| error.to_string(), |located| located.to_string())
    })
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Accepted {
    /// Events the broker acknowledged.
    accepted: usize,
}

/// Largest batch accepted in one `POST /v1/locations`.
const MAX_LOCATION_BATCH: usize = 1000;

/// `POST /v1/locations`: one point or `{"locations":[...]}` for the caller; 202 once the broker has
/// acknowledged every event. Each event is checked with the processor's own decoder first, so a bad point
/// is a 422 here instead of a dead letter later.
#[utoipa::path(post, path = "/v1/locations", tag = "locations", request_body = LocationBody,
    responses(
        (status = 202, description = "Produced to the input topic, keyed by the caller", body = Accepted),
        (status = 422, description = "A location is invalid; none was sent", body = ApiError, content_type = "application/problem+json"),
        (status = 503, description = "No broker, or it did not acknowledge", body = ApiError, content_type = "application/problem+json"),
        (status = "default", description = "Error", body = ApiError, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
async fn post_locations(
    State(state): State<ApiState>,
    trace: Option<Extension<RequestTrace>>,
    caller: Caller<Mobile>,
    ApiJson(body): ApiJson<LocationBody>,
) -> Result<(StatusCode, Json<Accepted>), ApiError> {
    let sink = state
        .locations
        .as_ref()
        .ok_or_else(|| ApiError::unavailable("this instance has no broker for locations"))?;
    let locations = match body {
        LocationBody::One(one) => vec![one],
        LocationBody::Batch(batch) => batch.locations,
    };
    if locations.is_empty() || locations.len() > MAX_LOCATION_BATCH {
        return Err(ApiError::unprocessable(
            format!("send 1 to {MAX_LOCATION_BATCH} locations"),
            Vec::new(),
        ));
    }
    let now = EpochMs::now().as_millis();
    let max_future_skew_ms = state.catalog.load().rules().max_future_skew_ms;
    let mut payloads = Vec::with_capacity(locations.len());
    let mut problems = Vec::new();
    for (i, location) in locations.into_iter().enumerate() {
        let payload = serde_json::to_string(&OutgoingGpsEvent {
            user_id: &caller.user_id,
            lat: location.lat,
            lon: location.lon,
            ts: location.ts.unwrap_or_else(|| serde_json::Value::from(now)),
            accuracy_m: location.accuracy_m,
            event_id: location.event_id.as_deref(),
        })
        .map_err(ApiError::internal)?;
        match decode_gps_event(
            Some(caller.user_id.as_bytes()),
            payload.as_bytes(),
            16 * 1024,
        ) {
            // The processor would clamp it to its clock; refusing it here tells the client, instead of
            // making a far-future time the user's eligibility `since`.
            Ok(event) if event.ts.as_millis() > now.saturating_add(max_future_skew_ms) => problems
                .push(format!(
                    "location {i}: ts is in the future, more than {} s ahead of the server clock",
                    max_future_skew_ms / 1000
                )),
            Ok(_) => payloads.push(payload),
            Err(error) => problems.push(format!("location {i}: {error}")),
        }
    }
    if !problems.is_empty() {
        return Err(ApiError::unprocessable(
            "some locations are invalid; none was sent",
            problems,
        ));
    }
    // One producer span for the batch; its `traceparent` goes on every record, so the processor's span of
    // each point is its child.
    let publish = trace
        .map(|Extension(trace)| publish_span(&trace, &sink.topic, &caller.user_id, payloads.len()));
    let headers = publish
        .as_ref()
        .map(|context| crate::otel::with_trace_headers(OwnedHeaders::new(), context));
    let sends = payloads.iter().map(|payload| {
        let mut record = FutureRecord::to(&sink.topic)
            .key(caller.user_id.as_str())
            .payload(payload.as_str());
        if let Some(headers) = &headers {
            record = record.headers(headers.clone());
        }
        sink.producer
            .send(record, std::time::Duration::from_secs(5))
    });
    let acknowledged: Result<Vec<_>, _> = futures_util::future::join_all(sends)
        .await
        .into_iter()
        .collect();
    if let Some(context) = publish {
        use opentelemetry::trace::TraceContextExt as _;
        if let Err((error, _)) = &acknowledged {
            context
                .span()
                .set_status(crate::otel::Status::error(error.to_string()));
        }
        context.span().end();
    }
    acknowledged.map_err(|(error, _)| {
        ApiError::unavailable(format!("broker did not acknowledge: {error}"))
    })?;
    Ok((
        StatusCode::ACCEPTED,
        Json(Accepted {
            accepted: payloads.len(),
        }),
    ))
}

/// The producer span of posted locations, child of the request's span.
fn publish_span(
    trace: &RequestTrace,
    topic: &str,
    user_id: &str,
    count: usize,
) -> opentelemetry::Context {
    use crate::otel::{KeyValue, SpanKind};
    use opentelemetry::trace::{TraceContextExt as _, Tracer as _};
    let Some(tracer) = crate::otel::tracer() else {
        return trace.context.clone();
    };
    let span = tracer
        .span_builder(format!("send {topic}"))
        .with_kind(SpanKind::Producer)
        .with_attributes([
            KeyValue::new("messaging.system", "kafka"),
            KeyValue::new("messaging.operation.type", "send"),
            KeyValue::new("messaging.destination.name", topic.to_owned()),
            KeyValue::new("messaging.batch.message_count", count as i64),
            KeyValue::new("enduser.id", user_id.to_owned()),
        ])
        .start_with_context(tracer, &trace.context);
    trace.context.with_span(span)
}
