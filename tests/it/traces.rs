//! One GPS point is one trace across the Kafka hop: `geopromo serve` exports over OTLP/HTTP to a receiver
//! inside the test, and the spans of the API request, the produce, the processor and the eligibility
//! write must share a trace id and link parent to child. A record produced by someone else with a
//! `traceparent` continues that trace, through to the dead-letter topic.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use prost::Message as _;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

use crate::common::process::{geopromo, post_json, Running};

#[derive(Debug, Clone)]
struct ReceivedSpan {
    service: String,
    name: String,
    trace_id: String,
    span_id: String,
    parent_span_id: String,
    kind: i32,
    attributes: HashMap<String, String>,
    events: Vec<String>,
    error: bool,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn text(value: Option<&opentelemetry_proto::tonic::common::v1::AnyValue>) -> String {
    match value.and_then(|v| v.value.as_ref()) {
        Some(AnyValue::StringValue(s)) => s.clone(),
        Some(AnyValue::IntValue(i)) => i.to_string(),
        Some(AnyValue::BoolValue(b)) => b.to_string(),
        Some(AnyValue::DoubleValue(d)) => d.to_string(),
        Some(AnyValue::ArrayValue(a)) => a
            .values
            .iter()
            .map(|v| text(Some(v)))
            .collect::<Vec<_>>()
            .join(","),
        _ => String::new(),
    }
}

/// An OTLP/HTTP (protobuf) trace receiver on 127.0.0.1:0, keeping every span it is sent.
fn start_receiver() -> (SocketAddr, Arc<Mutex<Vec<ReceivedSpan>>>) {
    let spans = Arc::new(Mutex::new(Vec::new()));
    let sink = spans.clone();
    let (sender, address) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            sender.send(listener.local_addr().unwrap()).unwrap();
            let app = axum::Router::new().route(
                "/v1/traces",
                axum::routing::post(move |body: axum::body::Bytes| {
                    let sink = sink.clone();
                    async move {
                        let request =
                            ExportTraceServiceRequest::decode(body).expect("OTLP protobuf");
                        let mut sink = sink.lock().unwrap();
                        for resource in request.resource_spans {
                            let service = resource
                                .resource
                                .iter()
                                .flat_map(|r| r.attributes.iter())
                                .find(|a| a.key == "service.name")
                                .map(|a| text(a.value.as_ref()))
                                .unwrap_or_default();
                            for scope in resource.scope_spans {
                                for span in scope.spans {
                                    sink.push(ReceivedSpan {
                                        service: service.clone(),
                                        name: span.name.clone(),
                                        trace_id: hex(&span.trace_id),
                                        span_id: hex(&span.span_id),
                                        parent_span_id: hex(&span.parent_span_id),
                                        kind: span.kind,
                                        attributes: span
                                            .attributes
                                            .iter()
                                            .map(|a| (a.key.clone(), text(a.value.as_ref())))
                                            .collect(),
                                        events: span
                                            .events
                                            .iter()
                                            .map(|e| e.name.clone())
                                            .collect(),
                                        error: span.status.as_ref().is_some_and(|s| s.code == 2),
                                    });
                                }
                            }
                        }
                        axum::http::StatusCode::OK
                    }
                }),
            );
            axum::serve(listener, app).await.unwrap();
        });
    });
    (address.recv().unwrap(), spans)
}

fn wait_for_span(
    spans: &Arc<Mutex<Vec<ReceivedSpan>>>,
    what: &str,
    found: impl Fn(&ReceivedSpan) -> bool,
) -> ReceivedSpan {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Some(span) = spans.lock().unwrap().iter().find(|s| found(s)) {
            return span.clone();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("no span {what} among {:#?}", spans.lock().unwrap());
}

/// OTLP span kinds.
const SERVER: i32 = 2;
const PRODUCER: i32 = 4;
const CONSUMER: i32 = 5;

/// The `traceparent` header of the first record on `topic` whose key is `key`.
fn traceparent_on(brokers: &str, topic: &str, key: &str) -> Option<String> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("trace-reader-{topic}"))
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    consumer.subscribe(&[topic]).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        let Some(Ok(message)) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        if message.key() != Some(key.as_bytes()) {
            continue;
        }
        return message.headers().and_then(|headers| {
            headers
                .iter()
                .find(|h| h.key == "traceparent")
                .and_then(|h| String::from_utf8(h.value?.to_vec()).ok())
        });
    }
    None
}

#[test]
fn one_gps_point_is_one_trace_from_the_api_through_kafka_to_the_eligibility_write() {
    let (receiver, spans) = start_receiver();
    let dir = tempfile::tempdir().unwrap();
    let env = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{receiver}")),
        ("OTEL_SERVICE_NAME", "geopromo-under-test".to_owned()),
        ("OTEL_TRACES_SAMPLER", "parentbased_always_on".to_owned()),
        ("OTEL_BSP_SCHEDULE_DELAY", "100".to_owned()),
    ];
    let serve = Running::start(dir.path(), &["serve"], &env);
    let address = serve.api_address();
    let log = serve.wait_for("processor started");
    assert!(log.contains("exporting traces over OTLP/HTTP"), "{log}");
    let brokers = log
        .lines()
        .find_map(|l| l.trim().strip_prefix("bootstrap servers : "))
        .expect("the dev banner names the broker")
        .trim()
        .to_owned();

    let added = geopromo(
        dir.path(),
        &[
            "user",
            "add",
            "walker",
            "--role",
            "mobile",
            "--password-stdin",
        ],
        "a long enough password\n",
        &[],
    );
    assert!(
        added.status.success(),
        "{}",
        String::from_utf8_lossy(&added.stderr)
    );
    let issued = geopromo(dir.path(), &["session", "issue", "walker"], "", &[]);
    assert!(
        issued.status.success(),
        "{}",
        String::from_utf8_lossy(&issued.stderr)
    );
    let session: serde_json::Value = serde_json::from_slice(&issued.stdout).unwrap();
    let token = session["access_token"].as_str().unwrap();

    // Central Jakarta: inside the fence of the built-in, active "jakarta-coffee-10".
    let (status, body) = post_json(
        address,
        "/v1/locations",
        &[("Authorization", &format!("Bearer {token}"))],
        r#"{"lat":-6.2,"lon":106.82,"accuracy_m":10}"#,
    );
    assert_eq!(status, 202, "{body}");

    let request = wait_for_span(&spans, "POST /v1/locations", |s| {
        s.name == "POST /v1/locations"
    });
    assert_eq!(request.kind, SERVER);
    assert_eq!(request.service, "geopromo-under-test");
    assert_eq!(request.attributes["http.response.status_code"], "202");
    assert_eq!(
        request.parent_span_id, "",
        "no traceparent came in: the request is the root"
    );
    let trace = request.trace_id.clone();

    let send = wait_for_span(&spans, "send gps-events", |s| {
        s.name == "send gps-events" && s.trace_id == trace
    });
    assert_eq!(send.kind, PRODUCER);
    assert_eq!(send.parent_span_id, request.span_id);

    let process = wait_for_span(&spans, "process gps-events", |s| {
        s.name == "process gps-events" && s.trace_id == trace
    });
    assert_eq!(process.kind, CONSUMER);
    assert_eq!(
        process.parent_span_id, send.span_id,
        "the processor continues the record's traceparent"
    );
    assert_eq!(process.attributes["enduser.id"], "walker");
    assert_eq!(process.attributes["geopromo.fences"], "jakarta");
    assert_eq!(process.attributes["geopromo.outcome"], "applied");
    assert_eq!(process.attributes["geopromo.outputs"], "1");
    assert_eq!(
        process.attributes["messaging.destination.name"],
        "gps-events"
    );
    for event in ["decoded", "matched", "rules"] {
        assert!(
            process.events.iter().any(|e| e == event),
            "{event} in {:?}",
            process.events
        );
    }

    let write = wait_for_span(&spans, "record eligibility", |s| {
        s.name == "record eligibility" && s.trace_id == trace
    });
    assert_eq!(write.parent_span_id, process.span_id);
    assert!(!write.error);

    // The output record carries the processor span as its parent for consumers downstream.
    let output =
        traceparent_on(&brokers, "promo-eligible", "walker").expect("traceparent on the output");
    assert_eq!(output, format!("00-{trace}-{}-01", process.span_id));

    // A record from another producer continues that producer's trace, to the dead-letter topic.
    let foreign_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let foreign_parent = "00f067aa0ba902b7";
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .create()
        .unwrap();
    let traceparent = format!("00-{foreign_trace}-{foreign_parent}-01");
    producer
        .send(
            BaseRecord::to("gps-events")
                .key("stranger")
                .payload("{not json")
                .headers(OwnedHeaders::new().insert(Header {
                    key: "traceparent",
                    value: Some(&traceparent),
                })),
        )
        .unwrap();
    producer.flush(Duration::from_secs(10)).unwrap();
    let rejected = wait_for_span(&spans, "process of the foreign record", |s| {
        s.name == "process gps-events" && s.trace_id == foreign_trace
    });
    assert_eq!(rejected.parent_span_id, foreign_parent);
    assert!(rejected.error, "a dead-lettered record's span is an error");
    assert!(
        rejected.events.iter().any(|e| e == "dead-lettered"),
        "{:?}",
        rejected.events
    );
    let dead_letter = traceparent_on(&brokers, "gps-events.dlq", "stranger")
        .expect("traceparent on the dead letter");
    assert!(
        dead_letter.starts_with(&format!("00-{foreign_trace}-{}", rejected.span_id)),
        "{dead_letter}"
    );
}
