//! The live results stream and what the console reads: `GET /v1/events/stream` fed from the output topic
//! of a real (mock-cluster) broker through the API's feed consumer, resumed with `Last-Event-ID`,
//! filtered by role and query, ended on revocation, bounded for slow clients; activity counts; the
//! fence upload dry run with placed problems; map outlines; the probe's nearest point; the console's
//! embedded files.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use geopromo::live::{HubLimits, LiveHub};
use geopromo::promo::{EligibilityEvent, EpochMs, TransitionKind};

use crate::common;
use common::http::{
    call, embedded_broker, fresh_store, spawn_app_with_hub, test_auth_settings, Backend, TestApp,
};

/// A Server-Sent Events client over a plain socket: dechunks the body and yields whole events.
struct SseClient {
    reader: BufReader<TcpStream>,
    buffer: String,
    /// Keep-alives arrive every 15 s: without a deadline a stream that never delivers would wait forever.
    deadline: Instant,
}

/// How long a test waits for one event.
const EVENT_WAIT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Default)]
struct SseEvent {
    event: String,
    id: Option<String>,
    data: String,
}

impl SseEvent {
    fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.data).unwrap_or_else(|e| panic!("{e}: {}", self.data))
    }
}

/// Opens the stream; returns the status, the content type, and the client when it is 200.
fn open_stream(
    address: SocketAddr,
    token: &str,
    query: &str,
    last_event_id: Option<&str>,
) -> (u16, String, Option<SseClient>) {
    let stream = TcpStream::connect(address).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut request = format!(
        "GET /v1/events/stream{query} HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer {token}\r\nAccept: text/event-stream\r\n"
    );
    if let Some(id) = last_event_id {
        request.push_str(&format!("Last-Event-ID: {id}\r\n"));
    }
    request.push_str("\r\n");
    (&stream).write_all(request.as_bytes()).unwrap();
    let mut reader = BufReader::new(stream);
    let mut status_line = String::new();
    reader.read_line(&mut status_line).unwrap();
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let mut content_type = String::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        if line == "\r\n" || line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.eq_ignore_ascii_case("content-type") {
                content_type = value.trim().to_owned();
            }
        }
    }
    let client = (status == 200).then_some(SseClient {
        reader,
        buffer: String::new(),
        deadline: Instant::now() + EVENT_WAIT,
    });
    (status, content_type, client)
}

impl SseClient {
    /// The next event that is not a keep-alive comment; None when the server ends the stream.
    fn next_event(&mut self) -> Option<SseEvent> {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let mut event = SseEvent::default();
                for line in block.lines() {
                    if let Some(value) = line.strip_prefix("event:") {
                        event.event = value.trim().to_owned();
                    } else if let Some(value) = line.strip_prefix("id:") {
                        event.id = Some(value.trim().to_owned());
                    } else if let Some(value) = line.strip_prefix("data:") {
                        event.data.push_str(value.trim_start());
                    }
                }
                if !event.event.is_empty() || !event.data.is_empty() {
                    return Some(event);
                }
                assert!(
                    Instant::now() < self.deadline,
                    "no event within {EVENT_WAIT:?}"
                );
                continue;
            }
            // One HTTP/1.1 chunk: hex size line, the bytes, CRLF.
            let mut size_line = String::new();
            if self.reader.read_line(&mut size_line).ok()? == 0 {
                return None;
            }
            let size = usize::from_str_radix(size_line.trim(), 16).ok()?;
            if size == 0 {
                return None;
            }
            let mut chunk = vec![0; size + 2];
            self.reader.read_exact(&mut chunk).ok()?;
            chunk.truncate(size);
            self.buffer.push_str(&String::from_utf8(chunk).unwrap());
        }
    }

    /// The next event (the socket's read timeout bounds the wait).
    fn expect_event(&mut self) -> SseEvent {
        self.deadline = Instant::now() + EVENT_WAIT;
        tokio::task::block_in_place(|| self.next_event()).expect("the stream ended early")
    }
}

fn eligibility(
    user: &str,
    kind: TransitionKind,
    promotion: &str,
    fence: &str,
) -> (String, Vec<u8>) {
    let now = EpochMs::now();
    let event = EligibilityEvent {
        schema_version: 1,
        event_id: format!("{user}-{promotion}-{}", kind.as_str()),
        kind,
        user_id: user.into(),
        promotion_id: promotion.into(),
        fence_id: fence.into(),
        fence_name: fence.into(),
        inside: kind == TransitionKind::Enter,
        distance_m: Some(0.0),
        lat: -6.05,
        lon: 106.05,
        event_ts: now,
        emitted_at: now,
        source_event_id: None,
    };
    (user.to_owned(), serde_json::to_vec(&event).unwrap())
}

/// One SQLite-backed app on its own embedded broker, streaming from `hub`.
async fn sqlite_app(hub: Arc<LiveHub>) -> TestApp {
    let broker = Rc::new(embedded_broker());
    let (store, dir) = fresh_store(Backend::Sqlite).await;
    spawn_app_with_hub(
        store,
        dir,
        Backend::Sqlite,
        broker,
        test_auth_settings(),
        hub,
    )
    .await
}

/// One SQLite-backed app whose live hub is fed by the real feed consumer from the broker's output topic.
async fn app_with_feed(limits: HubLimits) -> (TestApp, tokio_util::sync::CancellationToken) {
    let hub = Arc::new(LiveHub::new(limits));
    let app = sqlite_app(hub.clone()).await;
    let stop = tokio_util::sync::CancellationToken::new();
    tokio::spawn(geopromo::stream::feed::run_live_feed(
        geopromo::config::KafkaSettings::default(),
        app.brokers.clone(),
        hub.clone(),
        stop.clone(),
    ));
    // The mock cluster answers a lookup by time with the end offset, so records produced before the
    // feed has its partitions would be behind it: wait for it (a real broker back-fills the window).
    let started = Instant::now();
    while !hub.reading() {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the live feed did not start"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    (app, stop)
}

const OUTPUT: &str = "promo-eligible";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_delivers_output_records_resumes_and_filters() {
    let (app, stop) = app_with_feed(HubLimits::default()).await;
    let (status, content_type, ops) = open_stream(app.address, &app.tokens["ops"], "", None);
    assert_eq!(status, 200);
    assert_eq!(content_type, "text/event-stream");
    let mut ops = ops.unwrap();
    let (_, _, mobile) = open_stream(app.address, &app.tokens["mobile"], "", None);
    let mut mobile = mobile.unwrap();
    let (_, _, bakery_only) = open_stream(
        app.address,
        &app.tokens["consumer"],
        "?promotion_id=bakery",
        None,
    );
    let mut bakery_only = bakery_only.unwrap();

    let records = [
        eligibility("alice", TransitionKind::Enter, "coffee", "square"),
        eligibility("tester", TransitionKind::Enter, "coffee", "square"),
        eligibility("alice", TransitionKind::Exit, "coffee", "square"),
        eligibility("bob", TransitionKind::Enter, "bakery", "square"),
    ];
    let brokers = app.brokers.clone();
    tokio::task::spawn_blocking(move || common::produce(&brokers, OUTPUT, &records))
        .await
        .unwrap();

    let seen: Vec<SseEvent> = (0..4).map(|_| ops.expect_event()).collect();
    let mut users: Vec<(String, String)> = seen
        .iter()
        .map(|e| {
            (
                e.event.clone(),
                e.json()["user_id"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    users.sort();
    assert_eq!(
        users,
        [
            ("enter".to_owned(), "alice".to_owned()),
            ("enter".to_owned(), "bob".to_owned()),
            ("enter".to_owned(), "tester".to_owned()),
            ("exit".to_owned(), "alice".to_owned()),
        ]
    );
    assert!(seen.iter().all(|e| e.id.is_some()));

    // The mobile user sees only their own event; the consumer only the bakery one.
    let own = mobile.expect_event();
    assert_eq!(own.json()["user_id"], "tester");
    let bakery = bakery_only.expect_event();
    assert_eq!(bakery.json()["promotion_id"], "bakery");

    // Resuming after the first event gives exactly the three after it, in the same order.
    let first_id = seen[0].id.clone().unwrap();
    let (status, _, resumed) = open_stream(app.address, &app.tokens["ops"], "", Some(&first_id));
    assert_eq!(status, 200);
    let mut resumed = resumed.unwrap();
    let again: Vec<Option<String>> = (0..3).map(|_| resumed.expect_event().id).collect();
    let expected: Vec<Option<String>> = seen[1..].iter().map(|e| e.id.clone()).collect();
    assert_eq!(again, expected);

    // Activity: counts per fence and promotion over the last hour.
    let fences = call(&app, "GET", "/v1/activity/fences", Some("consumer"), None).await;
    assert_eq!(fences.status, 200, "{}", fences.body);
    let square = &fences.json()["items"][0];
    assert_eq!(
        (
            square["id"].as_str(),
            square["enters"].as_u64(),
            square["exits"].as_u64(),
            square["unique_users"].as_u64()
        ),
        (Some("square"), Some(3), Some(1), Some(3))
    );
    let promotions = call(
        &app,
        "GET",
        "/v1/activity/promotions?minutes=5",
        Some("ops"),
        None,
    )
    .await;
    assert_eq!(promotions.json()["items"].as_array().unwrap().len(), 2);
    let mobile_activity = call(&app, "GET", "/v1/activity/fences", Some("mobile"), None).await;
    assert_eq!(mobile_activity.status, 403);
    let bad_window = call(
        &app,
        "GET",
        "/v1/activity/fences?minutes=61",
        Some("ops"),
        None,
    )
    .await;
    assert_eq!(bad_window.status, 400);
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_are_refused_before_streaming() {
    let app = sqlite_app(Arc::new(LiveHub::default())).await;
    let (status, content_type, _) =
        open_stream(app.address, &app.tokens["ops"], "", Some("not-an-id"));
    assert_eq!(
        (status, content_type.as_str()),
        (400, "application/problem+json")
    );
    let (status, _, _) = open_stream(app.address, "nonsense", "", None);
    assert_eq!(status, 401);
    let (status, _, _) = open_stream(
        app.address,
        &app.tokens["mobile"],
        "?user_id=someone-else",
        None,
    );
    assert_eq!(status, 403);
    let (status, _, _) = open_stream(app.address, &app.tokens["ops"], "?colour=red", None);
    assert_eq!(status, 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_is_dropped_with_the_reason_and_can_resume() {
    let hub = Arc::new(LiveHub::new(HubLimits {
        reader_lag: 8,
        ..HubLimits::default()
    }));
    let app = sqlite_app(hub.clone()).await;
    let (_, _, reader) = open_stream(app.address, &app.tokens["ops"], "", None);
    let mut reader = reader.unwrap();
    // Wait until the server has subscribed this reader (the first push reaches it), then flood it
    // while it does not read.
    let (_, payload) = eligibility("u0", TransitionKind::Enter, "coffee", "square");
    hub.push(
        0,
        0,
        serde_json::from_slice(&payload).unwrap(),
        String::from_utf8(payload).unwrap(),
    );
    let first = reader.expect_event();
    assert_eq!(first.id.as_deref(), Some("1"));
    // 20 MB: more than the socket buffers hold, so the server's writer blocks and falls behind.
    let padding = "x".repeat(1000);
    for offset in 1..20_000 {
        let (_, payload) = eligibility(
            &format!("u{offset}"),
            TransitionKind::Enter,
            "coffee",
            "square",
        );
        let mut json: serde_json::Value = serde_json::from_slice(&payload).unwrap();
        json["padding"] = padding.clone().into();
        hub.push(
            0,
            offset,
            serde_json::from_slice(&payload).unwrap(),
            json.to_string(),
        );
    }
    let mut last = first;
    let dropped = loop {
        let event = reader.expect_event();
        if event.event == "dropped" {
            break event;
        }
        last = event;
    };
    let reason = dropped.json()["reason"].as_str().unwrap().to_owned();
    assert!(
        reason.contains("fell") && reason.contains("behind"),
        "{reason}"
    );
    assert!(
        tokio::task::block_in_place(|| reader.next_event()).is_none(),
        "the stream must end"
    );
    // It resumes from its last id and gets the rest, nothing twice.
    let (_, _, resumed) = open_stream(app.address, &app.tokens["ops"], "", last.id.as_deref());
    let mut resumed = resumed.unwrap();
    let next = resumed.expect_event();
    let last_offset: i64 = last.id.unwrap().parse().unwrap();
    assert_eq!(next.id, Some((last_offset + 1).to_string()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_session_ends_its_stream() {
    let app = sqlite_app(Arc::new(LiveHub::default())).await;
    let (_, _, reader) = open_stream(app.address, &app.tokens["consumer"], "", None);
    let mut reader = reader.unwrap();
    let logout = call(&app, "POST", "/v1/auth/logout", Some("consumer"), None).await;
    assert_eq!(logout.status, 204);
    let started = Instant::now();
    let end = reader.expect_event();
    assert_eq!(end.event, "end");
    assert!(end.json()["reason"].as_str().unwrap().contains("reconnect"));
    assert!(started.elapsed() < Duration::from_secs(10));
}

const BOWTIE_AND_SQUARE: &str = r#"{"type":"FeatureCollection","features":[
 {"type":"Feature","id":"ok","properties":{"name":"Fine","tolerance_m":1000},
  "geometry":{"type":"Polygon","coordinates":[[[106.0,-6.1],[106.1,-6.1],[106.1,-6.0],[106.0,-6.0],[106.0,-6.1]]]}},
 {"type":"Feature","id":"bowtie","properties":{"name":"Crossed"},
  "geometry":{"type":"Polygon","coordinates":[[[107.0,-6.0],[107.1,-6.1],[107.1,-6.0],[107.0,-6.1],[107.0,-6.0]]]}}]}"#;

#[tokio::test]
async fn a_dry_run_places_each_problem_and_stores_nothing() {
    for app in common::http::spawn_apps().await {
        let report = call(
            &app,
            "POST",
            "/v1/fences?dry_run=true",
            Some("ops"),
            Some(BOWTIE_AND_SQUARE),
        )
        .await;
        assert_eq!(report.status, 200, "{}", report.body);
        let body = report.json();
        assert_eq!(
            (
                body["features"].as_u64(),
                body["valid"].as_u64(),
                body["invalid"].as_u64()
            ),
            (Some(2), Some(1), Some(1))
        );
        let problem = &body["problems"][0];
        assert_eq!(problem["feature"], 1);
        assert_eq!(problem["id"], "bowtie");
        assert_eq!(problem["code"], "self_intersection");
        let at = problem["at"].as_array().unwrap();
        assert!(
            (at[0].as_f64().unwrap() - 107.05).abs() < 1e-9
                && (at[1].as_f64().unwrap() + 6.05).abs() < 1e-9,
            "{at:?}"
        );
        assert_eq!(body["preview"]["features"][0]["id"], "ok");
        assert_eq!(
            app.store.catalog_version().await.unwrap(),
            0,
            "a dry run stores nothing"
        );
        let mobile = call(
            &app,
            "POST",
            "/v1/fences?dry_run=true",
            Some("mobile"),
            Some(BOWTIE_AND_SQUARE),
        )
        .await;
        assert_eq!(mobile.status, 403);
    }
}

#[tokio::test]
async fn map_outlines_and_the_probe_carry_what_a_map_draws() {
    let apps = common::http::spawn_apps().await;
    let app = &apps[0];
    // The same square as the test catalog `/v1/match` answers from.
    let fence = r#"{"type":"Feature","id":"square","properties":{"name":"Square","tolerance_m":750},
      "geometry":{"type":"Polygon","coordinates":[[[106.0,-6.1],[106.1,-6.1],[106.1,-6.0],[106.0,-6.0],[106.0,-6.1]]]}}"#;
    assert_eq!(
        call(app, "POST", "/v1/fences", Some("ops"), Some(fence))
            .await
            .status,
        201
    );
    let promotion = r#"{"id":"coffee-square","fences":["square"]}"#;
    assert_eq!(
        call(app, "POST", "/v1/promotions", Some("ops"), Some(promotion))
            .await
            .status,
        201
    );
    let outlines = call(app, "GET", "/v1/map/fences", Some("ops"), None).await;
    assert_eq!(outlines.status, 200);
    assert_eq!(outlines.content_type, "application/geo+json");
    let feature = &outlines.json()["features"][0];
    assert_eq!(
        feature["properties"]["promotions"],
        serde_json::json!(["coffee-square"])
    );
    assert_eq!(feature["properties"]["band_lat"], -6.05);
    assert_eq!(feature["geometry"]["type"], "MultiPolygon");
    assert_eq!(
        call(app, "GET", "/v1/map/fences", Some("consumer"), None)
            .await
            .status,
        403
    );

    // The probe (the test catalog's square, 750 m tolerance): 500 m east of its east edge.
    let east = 106.1 + 500.0 / (111_320.0 * (6.05f64).to_radians().cos());
    let probe = call(
        app,
        "GET",
        &format!("/v1/match?lat=-6.05&lon={east}&nearest=true"),
        Some("ops"),
        None,
    )
    .await;
    assert_eq!(probe.status, 200, "{}", probe.body);
    let found = &probe.json()[0];
    assert_eq!(found["inside"], false);
    let nearest = found["nearest"].as_array().unwrap();
    assert!(
        (nearest[0].as_f64().unwrap() - 106.1).abs() < 1e-6,
        "{nearest:?}"
    );
    assert!(
        (nearest[1].as_f64().unwrap() + 6.05).abs() < 1e-6,
        "{nearest:?}"
    );
    let plain = call(
        app,
        "GET",
        &format!("/v1/match?lat=-6.05&lon={east}"),
        Some("ops"),
        None,
    )
    .await;
    assert!(plain.json()[0].get("nearest").is_none());
}

#[tokio::test]
async fn the_console_is_served_from_the_binary() {
    let apps = common::http::spawn_apps().await;
    let app = &apps[0];
    let send =
        |path: &'static str| common::http::send(app.address, common::http::Call::new("GET", path));
    let redirect = send("/console").await;
    assert_eq!(redirect.status, 308);
    let page = send("/console/").await;
    assert_eq!(page.status, 200);
    assert_eq!(page.content_type, "text/html; charset=utf-8");
    assert!(page
        .body
        .contains("<script type=\"module\" src=\"./app.js\">"));
    assert!(page
        .header("content-security-policy")
        .unwrap()
        .contains("default-src 'self'"));
    let library = send("/console/vendor/maplibre-gl.mjs").await;
    assert_eq!(library.status, 200);
    assert_eq!(library.content_type, "text/javascript; charset=utf-8");
    assert!(library.body.len() > 500_000);
    let config = send("/console/config.json").await;
    assert_eq!(config.json()["raster_tiles"], "");
    let missing = send("/console/secret.txt").await;
    assert_eq!(missing.status, 404);
    assert_eq!(missing.content_type, "application/problem+json");
}
