//! The service as wired by `app::serve`: fences and promotions come from the store, a change there reaches
//! the running processor within 2 s, and eligibility is materialised back into the store.

use crate::common;

use std::time::{Duration, Instant};

use common::*;
use geopromo::app::{serve, ServeOptions};
use geopromo::config::{Guarantee, Settings};
use geopromo::geofence::{parse_fences, ParseOptions};
use geopromo::promo::parse_promotions;
use geopromo::promo::timestamp::now_ms;
use geopromo::store::Store;
use geopromo::stream::EmbeddedBroker;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;

const FAR_ONLY: &str = r#"{"type":"FeatureCollection","features":[
 {"type":"Feature","id":"far","properties":{"name":"Far"},
  "geometry":{"type":"Polygon","coordinates":[[[110.0,-7.1],[110.1,-7.1],[110.1,-7.0],[110.0,-7.0],[110.0,-7.1]]]}}]}"#;
const FAR_PROMOTION: &str = r#"{"promotions":[{"id":"far-promo","fences":["far"]}]}"#;

fn output_reader(brokers: &str) -> BaseConsumer {
    let consumer: BaseConsumer = rdkafka::config::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "propagation-reader")
        .set("fetch.wait.max.ms", "5")
        .create()
        .unwrap();
    let mut list = rdkafka::TopicPartitionList::new();
    for p in 0..3 {
        list.add_partition_offset("promo-eligible", p, rdkafka::Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&list).unwrap();
    consumer
}

/// Produces `user`'s point every 100 ms until an event for `promotion` arrives; returns when it did.
fn ping_until_eligible(
    brokers: &str,
    reader: &BaseConsumer,
    user: &str,
    lat: f64,
    lon: f64,
    promotion: &str,
) -> Instant {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last_ping = Instant::now() - Duration::from_secs(1);
    loop {
        assert!(Instant::now() < deadline, "no {promotion} event for {user}");
        if last_ping.elapsed() >= Duration::from_millis(100) {
            produce(brokers, "gps-events", &[gps(user, lat, lon, now_ms())]);
            last_ping = Instant::now();
        }
        if let Some(Ok(message)) = reader.poll(Duration::from_millis(20)) {
            let event: serde_json::Value =
                serde_json::from_slice(message.payload().unwrap()).unwrap();
            if event["promotion_id"] == promotion
                && event["user_id"] == user
                && event["kind"] == "enter"
            {
                return Instant::now();
            }
        }
    }
}

/// Settings for a service in `dir`, seeded with the far-away fence and its promotion, on a fresh
/// embedded broker (returned: it must outlive the service).
fn service_settings(dir: &std::path::Path, group: &str) -> (Settings, EmbeddedBroker) {
    std::fs::write(dir.join("fences.geojson"), FAR_ONLY).unwrap();
    std::fs::write(dir.join("promotions.json"), FAR_PROMOTION).unwrap();
    let mut settings = Settings::default();
    settings.kafka = common::settings(group, Guarantee::AtLeastOnce);
    let broker = EmbeddedBroker::start(&settings.kafka, 1).unwrap();
    settings.kafka.brokers = broker.bootstrap_servers().to_owned();
    settings.fences.path = dir.join("fences.geojson");
    settings.promotions.path = dir.join("promotions.json");
    settings.database.url = format!("sqlite://{}", dir.join("geopromo.sqlite").display());
    settings.metrics.listen = String::new();
    (settings, broker)
}

/// Runs `app::serve` (API included) on its own thread until the returned sender fires or drops.
fn start_service(
    settings: &Settings,
) -> (
    tokio::sync::oneshot::Sender<()>,
    std::thread::JoinHandle<anyhow::Result<()>>,
) {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let service_settings = settings.clone();
    let service = std::thread::spawn(move || {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let options = ServeOptions {
            api: true,
            ..ServeOptions::default()
        };
        runtime.block_on(serve(service_settings, options, async {
            let _ = stopped.await;
        }))
    });
    (stop, service)
}

#[test]
fn a_fence_added_in_the_store_is_matched_within_two_seconds() {
    let dir = tempfile::tempdir().unwrap();
    let (mut settings, _broker) = service_settings(dir.path(), "propagation");
    settings.api.listen = "127.0.0.1:0".into();
    let brokers = settings.kafka.brokers.clone();

    let (stop, service) = start_service(&settings);

    // The store was seeded from the files, and the pipeline works on them.
    let reader = output_reader(&brokers);
    ping_until_eligible(&brokers, &reader, "walker", -7.05, 110.05, "far-promo");

    // An ops change lands in the store (as the API or `fences import` would write it).
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let changed_at = runtime.block_on(async {
        let store = Store::connect(&settings.database.url).await.unwrap();
        let square = parse_fences(FENCES.as_bytes(), &ParseOptions::default())
            .unwrap()
            .fences;
        store.upsert_fences(&square[..1], now_ms()).await.unwrap();
        let promotion =
            parse_promotions(br#"{"promotions":[{"id":"square-promo","fences":["square"]}]}"#)
                .unwrap()
                .remove(0);
        store.upsert_promotion(&promotion, now_ms()).await.unwrap();
        Instant::now()
    });
    let matched_at =
        ping_until_eligible(&brokers, &reader, "runner", -6.05, 106.05, "square-promo");
    let took = matched_at - changed_at;
    eprintln!("store change → first eligibility event: {took:?}");
    assert!(took < Duration::from_secs(2), "took {took:?}");

    // Eligibility is materialised in the store for any API instance to serve.
    runtime.block_on(async {
        let store = Store::connect(&settings.database.url).await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let current = store.eligibility_of("runner").await.unwrap();
            if current
                .iter()
                .any(|e| e.promotion_id == "square-promo" && e.fence_id == "square")
            {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "eligibility not materialised: {current:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });

    stop.send(()).unwrap();
    service.join().unwrap().unwrap();
}

#[test]
fn a_fence_uploaded_through_the_api_makes_posted_locations_eligible() {
    use common::http::{send, test_auth_settings, Call};
    use geopromo::auth::{Auth, ClientKind, Role};

    let dir = tempfile::tempdir().unwrap();
    let (mut settings, _broker) = service_settings(dir.path(), "propagation-api");
    settings.database.poll_interval_ms = 250;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    settings.api.listen = format!("127.0.0.1:{port}");
    settings.auth = test_auth_settings();
    let address: std::net::SocketAddr = settings.api.listen.parse().unwrap();
    let brokers = settings.kafka.brokers.clone();

    let (stop, service) = start_service(&settings);

    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(address).is_err()
            || send(address, Call::new("GET", "/readyz")).await.status != 200
        {
            assert!(Instant::now() < deadline, "the API did not become ready");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // Users and tokens, as `geopromo user add` and `geopromo session issue` make them.
        let store = Store::connect(&settings.database.url).await.unwrap();
        let auth = Auth::start(store, settings.auth.clone()).await.unwrap();
        auth.create_user("ops-1", "ops password 1".into(), vec![Role::Ops], None)
            .await
            .unwrap();
        auth.create_user("rider", "rider password".into(), vec![Role::Mobile], None)
            .await
            .unwrap();
        let ops = auth
            .issue_session("ops-1", ClientKind::Ops, None)
            .await
            .unwrap()
            .access_token;
        let rider = auth
            .issue_session("rider", ClientKind::Mobile, None)
            .await
            .unwrap()
            .access_token;

        let lake = r#"{"type":"Feature","id":"lake","properties":{"name":"Lake","tolerance_m":500},
          "geometry":{"type":"Polygon","coordinates":[[[120.0,-8.1],[120.1,-8.1],[120.1,-8.0],[120.0,-8.0],[120.0,-8.1]]]}}"#;
        let uploaded = send(address, Call::new("POST", "/v1/fences").bearer(&ops).json(lake)).await;
        assert_eq!(uploaded.status, 201, "{}", uploaded.body);
        let promotion = send(
            address,
            Call::new("POST", "/v1/promotions")
                .bearer(&ops)
                .json(r#"{"id":"lake-promo","name":"Lake","fences":["lake"]}"#),
        )
        .await;
        assert_eq!(promotion.status, 201, "{}", promotion.body);
        let changed_at = Instant::now();

        // The rider posts locations (300 m outside the lake: within its tolerance) until the result API
        // shows the promotion; the output topic carries the enter event too.
        let reader = output_reader(&brokers);
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut seen_on_topic = false;
        loop {
            assert!(Instant::now() < deadline, "rider never became eligible");
            let posted = send(
                address,
                Call::new("POST", "/v1/locations")
                    .bearer(&rider)
                    .json(r#"{"lat":-8.05,"lon":120.1027,"accuracy_m":5}"#),
            )
            .await;
            assert_eq!(posted.status, 202, "{}", posted.body);
            while let Some(Ok(message)) = reader.poll(Duration::from_millis(10)) {
                let event: serde_json::Value =
                    serde_json::from_slice(message.payload().unwrap()).unwrap();
                if event["user_id"] == "rider" && event["promotion_id"] == "lake-promo" {
                    assert_eq!(event["kind"], "enter");
                    seen_on_topic = true;
                }
            }
            let mine = send(
                address,
                Call::new("GET", "/v1/users/me/promotions").bearer(&rider),
            )
            .await;
            if seen_on_topic && mine.json().to_string().contains("lake-promo") {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        eprintln!(
            "API upload → eligibility on the topic and in the results API: {:?}",
            changed_at.elapsed()
        );
    });

    stop.send(()).unwrap();
    service.join().unwrap().unwrap();
}

/// PostgreSQL unreachable for 10 s under API and processor load: the API answers 503 problem+json,
/// the processor keeps matching with the catalog it has, and both recover by themselves, with every
/// eligibility change made during the outage in the store afterwards.
#[test]
fn a_ten_second_database_outage_is_answered_with_503_and_loses_nothing() {
    use common::http::{send, test_auth_settings, Call};

    let dir = tempfile::tempdir().unwrap();
    let (mut settings, _broker) = service_settings(dir.path(), "outage");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let direct = runtime.block_on(fresh_postgres_url("geopromo_outage"));
    let proxy = Outage::start("127.0.0.1:5432");
    settings.database.url = direct.replace(":5432/", &format!(":{}/", proxy.port));
    settings.database.poll_interval_ms = 250;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    settings.api.listen = format!("127.0.0.1:{port}");
    settings.auth = test_auth_settings();
    let address: std::net::SocketAddr = settings.api.listen.parse().unwrap();
    let brokers = settings.kafka.brokers.clone();
    let (stop, service) = start_service(&settings);
    let reader = output_reader(&brokers);
    ping_until_eligible(&brokers, &reader, "before", -7.05, 110.05, "far-promo");

    proxy.down();
    let outage_started = Instant::now();
    // During the outage: new users still become eligible (the processor has its catalog) ...
    let during: Vec<String> = (0..5).map(|i| format!("during-{i}")).collect();
    for user in &during {
        ping_until_eligible(&brokers, &reader, user, -7.05, 110.05, "far-promo");
    }
    // ... and the API says the database is unavailable, in problem+json, without hanging.
    let (ready, login) = runtime.block_on(async {
        let ready = send(address, Call::new("GET", "/readyz")).await;
        let login = send(
            address,
            Call::new("POST", "/v1/auth/login")
                .json(r#"{"username":"nobody","password":"whatever-it-is","client":"ops"}"#),
        )
        .await;
        (ready, login)
    });
    for reply in [&ready, &login] {
        assert_eq!(reply.status, 503, "{}", reply.body);
        assert_eq!(reply.content_type, "application/problem+json");
    }
    let remaining = Duration::from_secs(10).saturating_sub(outage_started.elapsed());
    std::thread::sleep(remaining);
    proxy.up();

    runtime.block_on(async {
        let deadline = Instant::now() + Duration::from_secs(30);
        while send(address, Call::new("GET", "/readyz")).await.status != 200 {
            assert!(Instant::now() < deadline, "the API did not recover");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let store = Store::connect(&direct).await.unwrap();
        for user in during.iter().map(String::as_str).chain(["before"]) {
            loop {
                let current = store.eligibility_of(user).await.unwrap();
                if current.iter().any(|e| e.promotion_id == "far-promo") {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "{user}'s eligibility was lost in the outage"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    });
    // The processor matched throughout and is still running.
    ping_until_eligible(&brokers, &reader, "after", -7.05, 110.05, "far-promo");
    stop.send(()).unwrap();
    service.join().unwrap().unwrap();
}
