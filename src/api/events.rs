//! Live results: `GET /v1/events/stream` (Server-Sent Events of enter/exit events, resumable with
//! `Last-Event-ID`) and the per-fence and per-promotion activity of the last hour.
//!
//! Events come from the output topic through the [`crate::live::LiveHub`] (see `stream::feed`). A reader
//! that falls more than `api.events_reader_lag` events behind is sent a `dropped` event with the reason
//! and disconnected: the server never buffers without bound for a slow client. A token that expires or a
//! session revoked while streaming ends the stream the same way (`event: end`).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::stream;
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast::error::RecvError;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::extract::{bearer_token, Caller, OpsOrConsumer};
use super::{ApiError, ApiState, Role};
use crate::auth::Identity;
use crate::live::{ActivityCount, EventFilter, FeedPosition, LiveEvent};
use crate::promo::EpochMs;

pub(super) fn routes() -> OpenApiRouter<ApiState> {
    OpenApiRouter::new()
        .routes(routes!(event_stream))
        .routes(routes!(fence_activity))
        .routes(routes!(promotion_activity))
}

/// How often an idle stream sends a comment line, so that proxies and clients keep it open.
const KEEP_ALIVE: Duration = Duration::from_secs(15);
/// How often a stream re-checks the caller's token (expiry, revoked session).
const TOKEN_RECHECK: Duration = Duration::from_secs(2);

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct StreamQuery {
    /// Only events of this promotion.
    promotion_id: Option<String>,
    /// Only events of this fence.
    fence_id: Option<String>,
    /// Only this user's events (ops and consumers; a mobile caller always gets only their own).
    user_id: Option<String>,
    /// Resume after this event id (as the `Last-Event-ID` header, which wins when both are given).
    after: Option<String>,
}

/// `GET /v1/events/stream`: enter and exit events as they are emitted.
///
/// Each SSE message has `event: enter` or `event: exit`, `data:` the output topic's JSON record, and
/// `id:` the position after it; reconnect with `Last-Event-ID: <id>` to get every event after it that is
/// still in the server's window (the last `api.events_window_minutes`, at most `api.events_retained`
/// events). Older positions get an `event: gap` first. Other events: `dropped` (the client fell too far
/// behind; reconnect with the last id) and `end` (the token expired or the session was revoked).
#[utoipa::path(get, path = "/v1/events/stream", tag = "results", params(StreamQuery,
        ("Last-Event-ID" = Option<String>, Header, description = "Resume after this event id")),
    responses(
        (status = 200, description = "An endless text/event-stream of enter and exit events", body = String, content_type = "text/event-stream"),
        (status = "default", description = "Error", body = ApiError, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
async fn event_stream(
    State(state): State<ApiState>,
    identity: Identity,
    headers: HeaderMap,
    query: Result<Query<StreamQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let reads_everyone = identity.has_any(&[Role::Ops, Role::Consumer]);
    let user_id = match (reads_everyone, query.user_id) {
        (true, wanted) => wanted,
        (false, Some(other)) if other != identity.user_id => {
            return Err(ApiError::forbidden(
                "a mobile caller may stream only their own events",
            ))
        }
        (false, _) => Some(identity.user_id.clone()),
    };
    let filter = EventFilter {
        user_id,
        promotion_id: query.promotion_id,
        fence_id: query.fence_id,
    };
    let resume = headers
        .get("last-event-id")
        .map(|v| {
            v.to_str()
                .map(str::to_owned)
                .map_err(|_| ApiError::bad_request("Last-Event-ID is not ASCII"))
        })
        .transpose()?
        .or(query.after)
        .map(|id| {
            id.parse::<FeedPosition>()
                .map_err(|e| ApiError::bad_request(e.to_string()))
        })
        .transpose()?;
    let token = bearer_token(&headers)?.to_owned();
    let subscription = state.live.subscribe(resume.as_ref());
    let reader = Reader {
        state: state.clone(),
        token,
        filter,
        backlog: subscription.backlog.into_iter(),
        live: subscription.live,
        gap: subscription.gap,
        resume: resume.unwrap_or_default(),
        last: None,
        finished: false,
        recheck: tokio::time::interval(TOKEN_RECHECK),
    };
    let events = stream::unfold(reader, |mut reader| async move {
        let event = reader.next().await?;
        Some((Ok::<_, Infallible>(event), reader))
    });
    Ok(Sse::new(events)
        .keep_alive(KeepAlive::new().interval(KEEP_ALIVE).text("keep-alive"))
        .into_response())
}

/// One client's stream: the backlog, then live events, until it lags, its token lapses or the server
/// stops.
struct Reader {
    state: ApiState,
    token: String,
    filter: EventFilter,
    backlog: std::vec::IntoIter<Arc<LiveEvent>>,
    live: tokio::sync::broadcast::Receiver<Arc<LiveEvent>>,
    gap: bool,
    /// Where this client started, until it is sent an event...
    resume: FeedPosition,
    /// ...then the last event it passed (sent or filtered out): a live event it already got from the
    /// backlog is skipped. The hub's own position, shared, not parsed back from the id.
    last: Option<Arc<LiveEvent>>,
    finished: bool,
    recheck: tokio::time::Interval,
}

impl Reader {
    async fn next(&mut self) -> Option<Event> {
        if self.finished {
            return None;
        }
        if std::mem::take(&mut self.gap) {
            return Some(json_event(
                "gap",
                &serde_json::json!({"detail": "the Last-Event-ID is older than this server's window; events between it and the next one were not kept here (they are on the output topic)"}),
            ));
        }
        for event in self.backlog.by_ref() {
            self.last = Some(event.clone());
            if self.filter.admits(&event.event) {
                return Some(sse_event(&event));
            }
        }
        loop {
            let received = tokio::select! {
                () = self.state.shutdown.cancelled() => {
                    return self.finish("end", "the server is shutting down; reconnect with the last event id");
                }
                _ = self.recheck.tick() => {
                    if let Err(error) = self.state.auth.verify(&self.token) {
                        let reason = format!("{}; reconnect with a fresh token and the last event id", error);
                        return self.finish("end", &reason);
                    }
                    continue;
                }
                received = self.live.recv() => received,
            };
            match received {
                Ok(event) => {
                    if self.position().covers(event.partition, event.offset) {
                        continue;
                    }
                    self.last = Some(event.clone());
                    if self.filter.admits(&event.event) {
                        return Some(sse_event(&event));
                    }
                }
                Err(RecvError::Lagged(missed)) => {
                    let reason = format!(
                        "this client fell {missed} events behind the feed (the bound is {}); reconnect with Last-Event-ID {} to resume",
                        self.state.live.limits().reader_lag,
                        self.position()
                    );
                    return self.finish("dropped", &reason);
                }
                Err(RecvError::Closed) => {
                    return self.finish("end", "the feed stopped");
                }
            }
        }
    }

    fn position(&self) -> &FeedPosition {
        self.last.as_ref().map_or(&self.resume, |e| &e.position)
    }

    fn finish(&mut self, kind: &str, reason: &str) -> Option<Event> {
        self.finished = true;
        Some(json_event(kind, &serde_json::json!({"reason": reason})))
    }
}

fn sse_event(event: &LiveEvent) -> Event {
    Event::default()
        .event(event.event.kind.as_str())
        .id(event.id.clone())
        .data(event.json.trim_end())
}

fn json_event(kind: &str, data: &serde_json::Value) -> Event {
    Event::default().event(kind).data(data.to_string())
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct ActivityQuery {
    /// Window length in minutes, 1 to 60 (default 60).
    #[param(minimum = 1, maximum = 60)]
    minutes: Option<i64>,
}

/// Enters, exits and distinct users per fence or promotion over a window ending now.
#[derive(Debug, Serialize, ToSchema)]
pub struct ActivityReport {
    /// Window start (RFC 3339), minute-aligned.
    since: String,
    minutes: i64,
    /// Busiest first; ids with no event in the window are left out.
    items: Vec<ActivityCount>,
}

fn activity(
    state: &ApiState,
    query: Result<Query<ActivityQuery>, axum::extract::rejection::QueryRejection>,
    count: impl Fn(&crate::live::LiveHub, i64, i64) -> Vec<ActivityCount>,
) -> Result<Json<ActivityReport>, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let minutes = query.minutes.unwrap_or(60);
    if !(1..=60).contains(&minutes) {
        return Err(ApiError::bad_request("minutes must be between 1 and 60"));
    }
    let now = EpochMs::now().as_millis();
    let since = (now.div_euclid(60_000) - minutes + 1) * 60_000;
    Ok(Json(ActivityReport {
        since: EpochMs::from_millis(since).to_rfc3339(),
        minutes,
        items: count(&state.live, now, minutes),
    }))
}

/// `GET /v1/activity/fences`: per fence, the enters, exits and distinct users of the last `minutes`.
#[utoipa::path(get, path = "/v1/activity/fences", tag = "results", params(ActivityQuery),
    responses(
        (status = 200, description = "Activity per fence", body = ActivityReport),
        (status = "default", description = "Error", body = ApiError, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
async fn fence_activity(
    State(state): State<ApiState>,
    _: Caller<OpsOrConsumer>,
    query: Result<Query<ActivityQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<ActivityReport>, ApiError> {
    activity(&state, query, crate::live::LiveHub::fence_activity)
}

/// `GET /v1/activity/promotions`: per promotion, the enters, exits and distinct users of the last
/// `minutes`.
#[utoipa::path(get, path = "/v1/activity/promotions", tag = "results", params(ActivityQuery),
    responses(
        (status = 200, description = "Activity per promotion", body = ActivityReport),
        (status = "default", description = "Error", body = ApiError, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
async fn promotion_activity(
    State(state): State<ApiState>,
    _: Caller<OpsOrConsumer>,
    query: Result<Query<ActivityQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<ActivityReport>, ApiError> {
    activity(&state, query, crate::live::LiveHub::promotion_activity)
}
