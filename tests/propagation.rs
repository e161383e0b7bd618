//! The service as wired by `app::serve`: fences and promotions come from the store, a change there reaches
//! the running processor within 2 s, and eligibility is materialised back into the store.

mod common;

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

#[test]
fn a_fence_added_in_the_store_is_matched_within_two_seconds() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("fences.geojson"), FAR_ONLY).unwrap();
    std::fs::write(dir.path().join("promotions.json"), FAR_PROMOTION).unwrap();
    let mut settings = Settings::default();
    settings.kafka = common::settings("propagation", Guarantee::AtLeastOnce);
    let broker = EmbeddedBroker::start(&settings.kafka, 1).unwrap();
    settings.kafka.brokers = broker.bootstrap_servers().to_owned();
    settings.fences.path = dir.path().join("fences.geojson");
    settings.promotions.path = dir.path().join("promotions.json");
    settings.database.url = format!("sqlite://{}", dir.path().join("geopromo.sqlite").display());
    settings.metrics.listen = String::new();
    settings.api.listen = "127.0.0.1:0".into();
    let brokers = settings.kafka.brokers.clone();

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
