//! The processor end to end against librdkafka's mock cluster: real Kafka protocol, consumer groups,
//! transactions and fault injection, in process.

use crate::common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;
use geopromo::config::Guarantee;
use geopromo::stream::EmbeddedBroker;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};

const MINUTE: i64 = 60_000;
const SECONDS_30: Duration = Duration::from_secs(30);
const QUIET: Duration = Duration::from_millis(1500);

/// Longitude `metres` east of the test square's east edge (at latitude -6.05).
fn east_of_square(metres: f64) -> f64 {
    106.1 + metres / 110_700.0
}

#[test]
fn enter_exit_hysteresis_cooldown_late_and_inaccurate() {
    let settings = settings("e2e", Guarantee::AtLeastOnce);
    let broker = EmbeddedBroker::start(&settings, 1).unwrap();
    let brokers = broker.bootstrap_servers().to_owned();
    let t0 = geopromo::promo::timestamp::now_ms() - 86_400_000;
    let lat = -6.05;
    let mut events = vec![
        gps("alice", lat, east_of_square(2000.0), t0), // far: nothing
        gps("alice", lat, east_of_square(1100.0), t0 + MINUTE), // beyond tolerance: nothing
        gps("alice", lat, 106.05, t0 + 2 * MINUTE),    // inside: ENTER
        gps("alice", lat, east_of_square(1100.0), t0 + 3 * MINUTE), // jitter within hysteresis: nothing
        gps("alice", lat, 106.05, t0 + 4 * MINUTE),                 // still eligible: nothing
        gps("alice", lat, east_of_square(2000.0), t0 + 5 * MINUTE), // gone: EXIT
        gps("alice", lat, 106.05, t0 + 7 * MINUTE), // back within the cooldown: nothing
        gps("alice", lat, east_of_square(2000.0), t0 + 8 * MINUTE), // not eligible: nothing
        gps("alice", lat, 106.05, t0 + 120 * MINUTE), // after the cooldown: ENTER
        gps("alice", lat, east_of_square(2000.0), t0 + 60 * MINUTE), // late: ignored
        gps("alice", -7.05, 110.05, t0 + 121 * MINUTE), // other city: EXIT square, ENTER far
        gps("bob", lat, east_of_square(500.0), t0), // within tolerance: ENTER
    ];
    let (key, _) = gps("bob", 0.0, 0.0, 0);
    events.push((
        key,
        format!(
            r#"{{"user_id":"bob","lat":-7.05,"lon":110.05,"ts":{},"accuracy_m":500}}"#,
            t0 + MINUTE
        )
        .into_bytes(),
    )); // inaccurate: ignored, bob stays eligible
    produce(&brokers, &settings.input_topic, &events);

    let running = Running::start(&settings, &brokers, catalog(PROMOTIONS));
    running.wait_consumed(events.len() as u64, SECONDS_30);
    let output = consume(
        &brokers,
        &settings.output_topic,
        6,
        false,
        QUIET,
        SECONDS_30,
    );
    assert_eq!(running.metrics.ignored_late.get(), 1);
    assert_eq!(running.metrics.ignored_inaccurate.get(), 1);
    running.stop();

    let of = |user: &str| -> Vec<serde_json::Value> {
        output
            .iter()
            .filter(|m| m.key.as_deref() == Some(user))
            .map(Received::json)
            .collect()
    };
    let alice: Vec<(String, String)> = of("alice")
        .iter()
        .map(|e| {
            (
                e["kind"].as_str().unwrap().into(),
                e["promotion_id"].as_str().unwrap().into(),
            )
        })
        .collect();
    let pair = |k: &str, p: &str| (k.to_owned(), p.to_owned());
    assert_eq!(
        alice,
        [
            pair("enter", "square-promo"),
            pair("exit", "square-promo"),
            pair("enter", "square-promo"),
            pair("exit", "square-promo"),
            pair("enter", "far-promo"),
        ]
    );
    let first = &of("alice")[0];
    assert_eq!(first["fence_id"], "square");
    assert_eq!(first["fence_name"], "Square");
    assert_eq!(first["inside"], true);
    assert_eq!(first["distance_m"], 0.0);
    assert_eq!(first["lat"], -6.05);
    assert_eq!(
        first["event_ts"],
        geopromo::promo::timestamp::format_rfc3339_ms(t0 + 2 * MINUTE)
    );
    assert_eq!(first["event_id"].as_str().unwrap().len(), 32);
    let bob = of("bob");
    assert_eq!(bob.len(), 1, "{bob:?}");
    assert_eq!(bob[0]["inside"], false);
    let distance = bob[0]["distance_m"].as_f64().unwrap();
    assert!((distance - 500.0).abs() < 5.0, "{distance}");
}

#[test]
fn poison_messages_go_to_the_dead_letter_topic_and_processing_continues() {
    let settings = settings("dlq", Guarantee::AtLeastOnce);
    let broker = EmbeddedBroker::start(&settings, 1).unwrap();
    let brokers = broker.bootstrap_servers().to_owned();
    let t0 = geopromo::promo::timestamp::now_ms() - 86_400_000;
    let raw = |key: &str, payload: &str| (key.to_owned(), payload.as_bytes().to_vec());
    let oversized = format!(
        r#"{{"user_id":"u","lat":1,"lon":1,"ts":{t0},"pad":"{}"}}"#,
        "x".repeat(20_000)
    );
    let events = vec![
        gps("u", -6.05, 106.05, t0),
        raw("u", "{\"user_id\":\"u\",\"lat\":"),
        raw(
            "u",
            &format!(r#"{{"user_id":"u","lat":"NaN","lon":1,"ts":{t0}}}"#),
        ),
        raw(
            "u",
            &format!(r#"{{"user_id":"u","lat":95,"lon":1,"ts":{t0}}}"#),
        ),
        raw("u", &oversized),
        raw(
            "u",
            &format!(r#"{{"user_id":"u","lat":1,"lon":1,"ts":{t0},"schema_version":9}}"#),
        ),
        raw(
            "v",
            &format!(r#"{{"user_id":"u","lat":1,"lon":1,"ts":{t0}}}"#),
        ),
        gps("w", -6.05, 106.05, t0),
    ];
    produce(&brokers, &settings.input_topic, &events);
    let running = Running::start(&settings, &brokers, catalog(PROMOTIONS));
    running.wait_consumed(events.len() as u64, SECONDS_30);
    let dead = consume(&brokers, &settings.dlq_topic, 6, false, QUIET, SECONDS_30);
    let output = consume(
        &brokers,
        &settings.output_topic,
        2,
        false,
        QUIET,
        SECONDS_30,
    );
    assert_eq!(running.metrics.dead_lettered_total(), 6);
    running.stop();

    let mut reasons: Vec<&str> = dead
        .iter()
        .map(|m| m.headers["dlq.reason"].as_str())
        .collect();
    reasons.sort_unstable();
    assert_eq!(
        reasons,
        [
            "invalid_position",
            "key_mismatch",
            "malformed_json",
            "oversized",
            "schema_violation",
            "unsupported_schema_version"
        ]
    );
    for message in &dead {
        assert_eq!(message.headers["dlq.source.topic"], settings.input_topic);
        let _: i64 = message.headers["dlq.source.offset"].parse().unwrap();
        assert!(
            events
                .iter()
                .any(|(key, payload)| *payload == message.payload
                    && message.key.as_deref() == Some(key.as_str())),
            "the original key and payload are kept"
        );
        assert!(!message.headers["dlq.error"].is_empty());
        let partition: i32 = message.headers["dlq.source.partition"].parse().unwrap();
        assert!((0..3).contains(&partition), "{partition}");
    }
    assert_eq!(output.len(), 2, "both good events were still processed");
}

#[test]
fn input_batches_are_read_whatever_codec_their_producer_chose() {
    // Producers pick the compression; a consumer built without a codec stalls its partition on the
    // first such batch ("Local: Not implemented", retried forever), which zstd did before librdkafka
    // was built with it.
    let settings = settings("codecs", Guarantee::AtLeastOnce);
    let broker = EmbeddedBroker::start(&settings, 1).unwrap();
    let brokers = broker.bootstrap_servers().to_owned();
    let t0 = geopromo::promo::timestamp::now_ms() - 86_400_000;
    let codecs = ["none", "gzip", "snappy", "lz4", "zstd"];
    for codec in codecs {
        let events: Vec<_> = (0..20)
            .map(|i| gps(&format!("{codec}-{i}"), -6.05, 106.05, t0))
            .collect();
        produce_with(
            &brokers,
            &settings.input_topic,
            &events,
            &[("compression.type", codec), ("linger.ms", "20")],
        );
    }
    let running = Running::start(&settings, &brokers, catalog(PROMOTIONS));
    running.wait_consumed(100, SECONDS_30);
    let output = consume(
        &brokers,
        &settings.output_topic,
        100,
        false,
        QUIET,
        SECONDS_30,
    );
    running.stop();
    for codec in codecs {
        let entered = output
            .iter()
            .filter(|m| {
                m.key
                    .as_deref()
                    .is_some_and(|key| key.starts_with(&format!("{codec}-")))
            })
            .count();
        assert_eq!(entered, 20, "{codec}");
    }
}

#[test]
fn a_restarted_processor_resumes_from_its_commits_and_restores_state() {
    let settings = settings("restart", Guarantee::AtLeastOnce);
    let broker = EmbeddedBroker::start(&settings, 1).unwrap();
    let brokers = broker.bootstrap_servers().to_owned();
    let (events, _) = traffic(300, 6000, 0.01, 11);
    let catalog = catalog(PROMOTIONS);
    let expected = expected_event_ids(
        &catalog.load(),
        &events,
        geopromo::promo::timestamp::now_ms(),
    );
    assert!(
        expected.len() > 100,
        "the traffic crosses the fence often: {}",
        expected.len()
    );

    produce(&brokers, &settings.input_topic, &events[..3000]);
    let first = Running::start(&settings, &brokers, catalog.clone());
    first.wait_consumed(3000, SECONDS_30);
    first.stop();

    produce(&brokers, &settings.input_topic, &events[3000..]);
    let second = Running::start(&settings, &brokers, catalog.clone());
    second.wait_consumed(3000, SECONDS_30);
    assert!(
        second.metrics.state_restored_users.get() > 0,
        "state came back from the changelog"
    );
    let report = second.stop();
    assert_eq!(
        report.consumed, 3000,
        "the second run started exactly at the first run's commit"
    );

    let output = consume(
        &brokers,
        &settings.output_topic,
        expected.len(),
        false,
        QUIET,
        SECONDS_30,
    );
    let counts = id_counts(&output);
    assert_eq!(
        output.len(),
        expected.len(),
        "a clean restart neither loses nor repeats events"
    );
    for id in &expected {
        assert_eq!(counts.get(id), Some(&1), "event {id}");
    }
}

#[test]
fn a_broker_outage_loses_nothing() {
    let settings = settings("outage", Guarantee::AtLeastOnce);
    let broker = EmbeddedBroker::start(&settings, 1).unwrap();
    let brokers = broker.bootstrap_servers().to_owned();
    let (events, _) = traffic(200, 4000, 0.0, 5);
    let catalog = catalog(PROMOTIONS);
    let expected = expected_event_ids(
        &catalog.load(),
        &events,
        geopromo::promo::timestamp::now_ms(),
    );

    produce(&brokers, &settings.input_topic, &events[..2000]);
    let running = Running::start(&settings, &brokers, catalog);
    running.wait_consumed(1000, SECONDS_30);
    broker.cluster().broker_down(1).unwrap();
    let late_events = events[2000..].to_vec();
    let late_brokers = brokers.clone();
    let topic = settings.input_topic.clone();
    let producing = std::thread::spawn(move || produce(&late_brokers, &topic, &late_events));
    std::thread::sleep(Duration::from_secs(3));
    broker.cluster().broker_up(1).unwrap();
    producing.join().unwrap();
    // Not "4000 consumed": when the outage makes the group drop the assignment, records read before it
    // are read again, and counting reads would stop the processor before the replay is done.
    running.wait_committed_to_end(&settings, &brokers, Duration::from_secs(60));
    running.stop();

    let output = consume(
        &brokers,
        &settings.output_topic,
        expected.len(),
        false,
        QUIET,
        SECONDS_30,
    );
    let counts = id_counts(&output);
    for id in &expected {
        assert!(counts.contains_key(id), "event {id} lost");
    }
    assert_eq!(counts.len(), expected.len(), "no invented events");
}

/// librdkafka's mock broker never reports aborted transactions in fetch responses (it writes an empty
/// AbortedTransactions list), so a `read_committed` reader of the mock sees aborted records too. What this
/// test can check on the mock: the abort happened and was replayed from the transaction's start, nothing
/// was lost or invented, and replays repeat only what aborted transactions had produced (same event ids).
/// The mock also accepts but ignores TxnOffsetCommit, so the offsets sent to the transaction cannot be read
/// back from it either.
#[test]
fn exactly_once_replays_an_aborted_transaction_without_losing_or_inventing_events() {
    let settings = settings("eos", Guarantee::ExactlyOnce);
    let broker = EmbeddedBroker::start(&settings, 1).unwrap();
    let brokers = broker.bootstrap_servers().to_owned();
    let (events, _) = traffic(200, 3000, 0.01, 9);
    let catalog = catalog(PROMOTIONS);
    let expected = expected_event_ids(
        &catalog.load(),
        &events,
        geopromo::promo::timestamp::now_ms(),
    );
    produce(&brokers, &settings.input_topic, &events);

    // The processor's first produce request fails permanently, which dooms its first transaction.
    broker.cluster().request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE],
    );
    let running = Running::start(&settings, &brokers, catalog);
    let output = consume(
        &brokers,
        &settings.output_topic,
        expected.len(),
        true,
        QUIET,
        Duration::from_secs(60),
    );
    let rewinds = running.metrics.rewinds.get();
    assert!(rewinds >= 1, "a transaction was aborted and replayed");
    running.stop();

    let counts = id_counts(&output);
    for id in &expected {
        let seen = counts.get(id).copied().unwrap_or(0);
        assert!(seen >= 1, "event {id} lost");
        assert!(
            seen as u64 <= rewinds + 1,
            "event {id} seen {seen} times with {rewinds} aborts"
        );
    }
    assert_eq!(counts.len(), expected.len(), "no invented events");
}

/// The output events carry exactly the fields their JSON Schema names, with the required ones present.
#[test]
fn output_events_match_their_schema() {
    let schema: serde_json::Value = serde_json::from_str(include_str!(
        "../../docs/schemas/promo-eligible.schema.json"
    ))
    .unwrap();
    let properties = schema["properties"].as_object().unwrap();
    let required: Vec<&str> = schema["required"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    let event = geopromo::promo::EligibilityEvent {
        schema_version: 1,
        event_id: "0".repeat(32),
        kind: geopromo::promo::TransitionKind::Exit,
        user_id: "u".into(),
        promotion_id: "p".into(),
        fence_id: "f".into(),
        fence_name: "F".into(),
        inside: false,
        distance_m: None,
        lat: 1.0,
        lon: 2.0,
        event_ts: geopromo::promo::EpochMs::parse_rfc3339("2026-11-22T08:00:00.000Z").unwrap(),
        emitted_at: geopromo::promo::EpochMs::parse_rfc3339("2026-11-22T08:00:00.010Z").unwrap(),
        source_event_id: Some("e".into()),
    };
    let json = serde_json::to_value(&event).unwrap();
    let object = json.as_object().unwrap();
    for key in object.keys() {
        assert!(properties.contains_key(key), "{key} is not in the schema");
    }
    for key in required {
        assert!(object.contains_key(key), "required {key} missing");
    }
    assert_eq!(object["kind"], "exit");
    assert!(object["distance_m"].is_null());
}

/// A poison pill for a whole fleet, before the fix: a 1.5 MB event (the broker takes it; the processor's
/// producer cannot send it back out whole) killed the processor on every restart. Now the dead letter is
/// cut to fit and says so, an unkeyed event is dead-lettered too, and the good events after both are
/// still processed by a processor that stays up.
#[test]
fn an_oversized_event_and_an_unkeyed_one_are_dead_lettered_and_the_processor_lives_on() {
    let settings = settings("poison", Guarantee::AtLeastOnce);
    let broker = EmbeddedBroker::start(&settings, 1).unwrap();
    let brokers = broker.bootstrap_servers().to_owned();
    let t0 = geopromo::promo::timestamp::now_ms() - 86_400_000;
    let huge = format!(
        r#"{{"user_id":"u","lat":1,"lon":1,"ts":{t0},"pad":"{}"}}"#,
        "x".repeat(1_500_000)
    );
    // A client that allows large records, as an outside producer may.
    let producer: rdkafka::producer::BaseProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("message.max.bytes", "5000000")
        .create()
        .unwrap();
    use rdkafka::producer::Producer;
    let unkeyed = format!(r#"{{"user_id":"nokey","lat":-6.05,"lon":106.05,"ts":{t0}}}"#);
    producer
        .send(
            rdkafka::producer::BaseRecord::<str, str>::to(&settings.input_topic)
                .key("u")
                .payload(&huge),
        )
        .map_err(|(e, _)| e)
        .unwrap();
    producer
        .send(
            rdkafka::producer::BaseRecord::<str, str>::to(&settings.input_topic).payload(&unkeyed),
        )
        .map_err(|(e, _)| e)
        .unwrap();
    producer.flush(Duration::from_secs(30)).unwrap();

    let running = Running::start(&settings, &brokers, catalog(PROMOTIONS));
    running.wait_consumed(2, SECONDS_30);
    let good = vec![gps("a", -6.05, 106.05, t0), gps("b", -6.05, 106.05, t0)];
    produce(&brokers, &settings.input_topic, &good);
    running.wait_consumed(4, SECONDS_30);
    let output = consume(
        &brokers,
        &settings.output_topic,
        2,
        false,
        QUIET,
        SECONDS_30,
    );
    let dead = consume(&brokers, &settings.dlq_topic, 2, false, QUIET, SECONDS_30);
    assert_eq!(
        output.len(),
        2,
        "the good events after the poison were processed"
    );
    assert_eq!(dead.len(), 2, "{dead:?}");
    let report = running.stop();
    assert_eq!(report.consumed, 4);

    let truncated = dead
        .iter()
        .find(|m| m.headers["dlq.reason"] == "oversized")
        .expect("the oversized event was dead-lettered");
    assert_eq!(truncated.headers["dlq.truncated"], "true");
    assert_eq!(
        truncated.headers["dlq.original.size"],
        huge.len().to_string()
    );
    let digest = ring::digest::digest(&ring::digest::SHA256, huge.as_bytes());
    let hex: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(truncated.headers["dlq.original.sha256"], hex);
    assert!(truncated.payload.len() < 1_000_000);
    assert!(huge.as_bytes().starts_with(&truncated.payload));
    assert_eq!(truncated.key.as_deref(), Some("u"));
    let unkeyed_letter = dead
        .iter()
        .find(|m| m.headers["dlq.reason"] == "missing_key")
        .expect("the unkeyed event was dead-lettered");
    assert_eq!(unkeyed_letter.payload, unkeyed.as_bytes());
    assert!(!unkeyed_letter.headers.contains_key("dlq.truncated"));
}

/// Users who enter, stay past the cooldown and exit, with the processor killed (SIGKILL) right after
/// the exits, before it commits: the replay must decide exactly as an uninterrupted run (the pure-core
/// reference model) would. Before the fix, the exit's tombstone was applied on restore whatever the
/// committed offset, and the replayed inside pings invented a second `enter` for most users; a late
/// point after the restart was also judged against the last transition's time instead of the last ping.
#[test]
fn a_crash_after_exits_replays_exactly_like_a_clean_run() {
    let mut kafka = settings("crashy", Guarantee::AtLeastOnce);
    kafka.embedded_partitions = 3;
    let broker = EmbeddedBroker::start(&kafka, 1).unwrap();
    let brokers = broker.bootstrap_servers().to_owned();
    let t0 = geopromo::promo::timestamp::now_ms() - 86_400_000;
    let users: Vec<String> = (0..60).map(|i| format!("stayer-{i}")).collect();
    let inside = |u: &str, minute: i64| gps(u, -6.05, 106.05, t0 + minute * MINUTE);
    let outside =
        |u: &str, minute: i64| gps(u, -6.05, east_of_square(5000.0), t0 + minute * MINUTE);
    let mut phase1 = Vec::new();
    let mut phase2 = Vec::new();
    let mut phase3 = Vec::new();
    for u in &users {
        for minute in 0..=10 {
            phase1.push(inside(u, minute)); // enter at minute 0
        }
        for minute in 11..=70 {
            phase2.push(inside(u, minute)); // stays past the 60-minute cooldown
        }
        phase2.push(outside(u, 75)); // exit; the standing is dropped
        phase2.push(outside(u, 80));
        phase3.push(inside(u, 78)); // late against the last ping (80), not against the exit (75)
        phase3.push(inside(u, 200)); // a genuine re-enter
    }
    let all: Vec<_> = phase1
        .iter()
        .chain(&phase2)
        .chain(&phase3)
        .cloned()
        .collect();
    let catalog = catalog(PROMOTIONS);
    let clean = expected_event_ids(&catalog.load(), &all, geopromo::promo::timestamp::now_ms());
    assert_eq!(
        clean.len(),
        3 * users.len(),
        "enter, exit, re-enter per user"
    );

    let dir = tempfile::tempdir().unwrap();
    let config = process_config(
        dir.path(),
        &brokers,
        PROMOTIONS,
        "commit_interval_ms = 3000",
        "\"fetch.wait.max.ms\" = 5",
    );
    let log = dir.path().join("processor.log");
    let log_text = || std::fs::read_to_string(&log).unwrap_or_default();
    let mut seen: Vec<String> = Vec::new();
    let read_until = |count: usize, seen: &mut Vec<String>| {
        let output = consume(
            &brokers,
            &kafka.output_topic,
            count,
            false,
            Duration::from_millis(100),
            SECONDS_30,
        );
        *seen = output
            .iter()
            .map(|m| m.json()["event_id"].as_str().unwrap().to_owned())
            .collect();
        seen.len() >= count
    };

    produce(&brokers, &kafka.input_topic, &phase1);
    let mut first = start_processor(&config, &log);
    assert!(
        read_until(users.len(), &mut seen),
        "enters; log:\n{}",
        log_text()
    );
    // Let at least one checkpoint commit phase 1.
    std::thread::sleep(Duration::from_millis(4000));
    produce(&brokers, &kafka.input_topic, &phase2);
    assert!(
        read_until(2 * users.len(), &mut seen),
        "exits; log:\n{}",
        log_text()
    );
    first.0.kill().unwrap(); // SIGKILL right after the exits: no checkpoint covers them
    first.0.wait().unwrap();

    let _second = start_processor(&config, &log);
    produce(&brokers, &kafka.input_topic, &phase3);
    read_until(clean.len(), &mut seen);
    // Give an invented event the time to show up.
    std::thread::sleep(Duration::from_secs(2));
    read_until(clean.len(), &mut seen);
    let clean_set: std::collections::HashSet<&String> = clean.iter().collect();
    let seen_set: std::collections::HashSet<&String> = seen.iter().collect();
    let invented = seen_set.difference(&clean_set).count();
    let lost = clean_set.difference(&seen_set).count();
    assert_eq!(
        (invented, lost),
        (0, 0),
        "the crashy run's event ids equal the clean run's (duplicates aside); log:\n{}",
        log_text()
    );
}

/// Two instances with one derived transactional id were not fenced from each other; now there is no
/// derived id, and exactly-once refuses to start without one.
#[test]
fn exactly_once_refuses_to_start_without_a_transactional_id() {
    let mut kafka = settings("no-txid", Guarantee::ExactlyOnce);
    kafka.transactional_id = None;
    let broker = EmbeddedBroker::start(&kafka, 1).unwrap();
    let processor = geopromo::stream::Processor::new(
        kafka,
        broker.bootstrap_servers(),
        catalog(PROMOTIONS),
        geopromo::telemetry::PipelineMetrics::default(),
    );
    let stop = std::sync::atomic::AtomicBool::new(false);
    let error = processor.run(&stop).unwrap_err().to_string();
    assert!(error.contains("transactional"), "{error}");
}

/// A consumer whose position fell out of the retained log (the mock broker keeps about 100 k records per
/// partition) is reset by librdkafka. Before the fix that skipped records silently; now every skipped
/// record is counted (and logged as OFFSET RESET): processed + skipped accounts for every record.
#[test]
fn an_offset_reset_past_the_retained_log_is_counted_record_for_record() {
    let mut settings = settings("reset", Guarantee::AtLeastOnce);
    settings.embedded_partitions = 1;
    let broker = EmbeddedBroker::start(&settings, 1).unwrap();
    let brokers = broker.bootstrap_servers().to_owned();
    let t0 = geopromo::promo::timestamp::now_ms() - 86_400_000;
    let first: Vec<_> = (0..5)
        .map(|i| gps(&format!("u{i}"), 1.0, 1.0, t0))
        .collect();
    produce(&brokers, &settings.input_topic, &first);
    let running = Running::start(&settings, &brokers, catalog(PROMOTIONS));
    running.wait_consumed(5, SECONDS_30);
    running.stop();

    // While no processor runs, a burst far beyond what the partition retains.
    let burst: usize = 300_000;
    let events: Vec<_> = (0..burst)
        .map(|i| gps(&format!("u{}", i % 1000), 1.0, 1.0, t0 + i as i64))
        .collect();
    produce(&brokers, &settings.input_topic, &events);

    let running = Running::start(&settings, &brokers, catalog(PROMOTIONS));
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let accounted =
        |running: &Running| running.metrics.consumed.get() + running.metrics.offsets_skipped.get();
    while accounted(&running) < burst as u64 {
        assert!(
            std::time::Instant::now() < deadline,
            "consumed {} + skipped {} of {burst}",
            running.metrics.consumed.get(),
            running.metrics.offsets_skipped.get()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let (resets, skipped) = (
        running.metrics.offset_resets.get(),
        running.metrics.offsets_skipped.get(),
    );
    let report = running.stop();
    assert_eq!(resets, 1, "one reset, at the start");
    assert!(skipped > 0, "the burst exceeded retention");
    assert_eq!(report.consumed + skipped, burst as u64);
}

/// The checkpoint stage is measured (it always read 0 before: the timer started after the work).
#[test]
fn checkpoints_are_timed_in_the_stage_histogram() {
    let mut settings = settings("timed", Guarantee::AtLeastOnce);
    settings
        .consumer_properties
        .insert("statistics.interval.ms".into(), "100".into());
    let broker = EmbeddedBroker::start(&settings, 1).unwrap();
    let brokers = broker.bootstrap_servers().to_owned();
    let t0 = geopromo::promo::timestamp::now_ms() - 86_400_000;
    let events: Vec<_> = (0..50)
        .map(|i| gps(&format!("u{i}"), -6.05, 106.05, t0))
        .collect();
    produce(&brokers, &settings.input_topic, &events);
    let running = Running::start(&settings, &brokers, catalog(PROMOTIONS));
    running.wait_consumed(50, SECONDS_30);
    std::thread::sleep(Duration::from_millis(3 * settings.commit_interval_ms));
    let text = geopromo::telemetry::encode_metrics(&running.metrics.registry());
    running.stop();
    let value = |name: &str| -> f64 {
        text.lines()
            .find(|l| l.starts_with(name) && l.contains(r#"stage="checkpoint""#))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {name} for the checkpoint stage in:\n{text}"))
    };
    assert!(value("geopromo_stage_seconds_count") >= 1.0, "{text}");
    assert!(value("geopromo_stage_seconds_sum") > 0.0, "{text}");
    // What an operator alerts on: the age of the last durable checkpoint, and lag per partition.
    let last: i64 = text
        .lines()
        .find_map(|l| l.strip_prefix("geopromo_last_checkpoint_timestamp_seconds "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("{text}"));
    assert!(last > 1_700_000_000, "{last}");
    assert!(
        text.contains(r#"geopromo_consumer_partition_lag{partition="0"} 0"#),
        "{text}"
    );
}

/// What the reference model emits for each user (users with no output left out), in order.
fn expected_by_user(
    catalog: &geopromo::promo::Catalog,
    events: &[(String, Vec<u8>)],
) -> BTreeMap<String, Vec<String>> {
    let mut by_user: BTreeMap<String, Vec<(String, Vec<u8>)>> = BTreeMap::new();
    for event in events {
        by_user
            .entry(event.0.clone())
            .or_default()
            .push(event.clone());
    }
    let now = geopromo::promo::timestamp::now_ms();
    by_user
        .into_iter()
        .map(|(user, events)| (user, expected_event_ids(catalog, &events, now)))
        .filter(|(_, ids)| !ids.is_empty())
        .collect()
}

/// The event ids received for each user, in arrival order; with `first_only`, repeats (replays) left out.
fn ids_by_user(output: &[Received], first_only: bool) -> BTreeMap<String, Vec<String>> {
    let mut received: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for message in output {
        let ids = received.entry(message.key.clone().unwrap()).or_default();
        let id = message.json()["event_id"].as_str().unwrap().to_owned();
        if !(first_only && ids.contains(&id)) {
            ids.push(id);
        }
    }
    received
}

/// Reads the output topic until every output of the reference has arrived (or a minute passed), and
/// checks that each user's outputs, replays aside, came in the reference's order.
fn assert_reference_outputs_arrive(
    brokers: &str,
    kafka: &geopromo::config::KafkaSettings,
    expected: &BTreeMap<String, Vec<String>>,
) {
    let total = expected.values().map(Vec::len).sum();
    let output = consume(
        brokers,
        &kafka.output_topic,
        total,
        false,
        QUIET,
        Duration::from_secs(60),
    );
    assert_eq!(ids_by_user(&output, true), *expected);
}

/// An embedded broker with 8 partitions per topic, and at-least-once settings for `workers` evaluation
/// workers: enough partitions that every worker owns some.
fn broker_with_workers(
    group: &str,
    workers: usize,
) -> (geopromo::config::KafkaSettings, EmbeddedBroker, String) {
    let mut kafka = settings(group, Guarantee::AtLeastOnce);
    kafka.embedded_partitions = 8;
    kafka.processor_threads = Some(workers);
    let broker = EmbeddedBroker::start(&kafka, 1).unwrap();
    let brokers = broker.bootstrap_servers().to_owned();
    (kafka, broker, brokers)
}

/// The partition-parallel processor decides like the reference model whatever the number of evaluation
/// workers: no worker (on the consumer's thread), one, and more workers than there are partitions per
/// worker. Each user's outputs arrive once each, in the order the reference decides them, and every bad
/// event is dead-lettered.
#[test]
fn every_worker_count_emits_what_the_reference_decides_in_order() {
    let (events, _) = traffic(300, 6_000, 0.02, 11);
    let catalog = catalog(PROMOTIONS);
    let expected = expected_by_user(&catalog.load(), &events);
    let expected_total: usize = expected.values().map(Vec::len).sum();
    let bad = events
        .iter()
        .filter(|(key, payload)| {
            geopromo::promo::decode_gps_event(Some(key.as_bytes()), payload, 16 * 1024).is_err()
        })
        .count();
    assert!(
        expected_total > 100 && bad > 50,
        "{expected_total} outputs, {bad} bad"
    );

    for workers in [0, 1, 3] {
        let (kafka, _broker, brokers) = broker_with_workers(&format!("workers-{workers}"), workers);
        produce(&brokers, &kafka.input_topic, &events);
        let running = Running::start(&kafka, &brokers, catalog.clone());
        running.wait_consumed(events.len() as u64, SECONDS_30);
        let output = consume(
            &brokers,
            &kafka.output_topic,
            expected_total,
            false,
            QUIET,
            SECONDS_30,
        );
        let busy: Vec<f64> = if workers == 0 {
            vec![running.metrics.worker_busy("consumer").get()]
        } else {
            (0..workers)
                .map(|worker| running.metrics.worker_busy(&worker.to_string()).get())
                .collect()
        };
        // Every worker had partitions (8 over at most 3) and so spent time deciding.
        assert!(
            busy.iter().all(|&seconds| seconds > 0.0),
            "{workers} workers: {busy:?}"
        );
        let report = running.stop();
        assert_eq!(report.dead_lettered, bad as u64, "{workers} workers");
        assert_eq!(ids_by_user(&output, false), expected, "{workers} workers");
    }
}

/// Two members with three workers each share 8 partitions; one leaves mid-stream, so its partitions
/// (spread over its workers) are drained, committed and handed over. Every output the reference model
/// decides arrives, and each user's outputs, duplicates aside, come in the reference's order.
#[test]
fn a_member_with_workers_leaving_mid_stream_hands_over_without_loss_or_reordering() {
    let (events, _) = traffic(300, 8_000, 0.0, 21);
    let catalog = catalog(PROMOTIONS);
    let expected = expected_by_user(&catalog.load(), &events);

    let (kafka, _broker, brokers) = broker_with_workers("handover-workers", 3);
    let staying = Running::start(&kafka, &brokers, catalog.clone());
    let leaving = Running::start(&kafka, &brokers, catalog.clone());
    let (first, second) = events.split_at(events.len() / 2);
    produce(&brokers, &kafka.input_topic, first);
    let deadline = std::time::Instant::now() + SECONDS_30;
    while staying.metrics.consumed.get() + leaving.metrics.consumed.get() < first.len() as u64 {
        assert!(
            std::time::Instant::now() < deadline,
            "first half not consumed"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        leaving.metrics.consumed.get() > 0 && staying.metrics.consumed.get() > 0,
        "both members had partitions"
    );
    leaving.stop();
    produce(&brokers, &kafka.input_topic, second);
    assert_reference_outputs_arrive(&brokers, &kafka, &expected);
    staying.stop();
}

/// The producer fails for good while the workers hold decided batches: librdkafka raises a fatal error
/// when the idempotent producer's sequence numbers fall out of step with the broker's, after which every
/// queued record fails and every send is refused. The processor must stop with that error instead of
/// committing past records it never produced (the users decided in flight are ahead of the positions),
/// and a restart must replay from the last commit: every output the reference decides arrives, each
/// user's in the reference's order (duplicates aside).
#[test]
fn a_fatal_produce_error_mid_batch_stops_the_processor_and_a_restart_loses_nothing() {
    let (events, _) = traffic(300, 20_000, 0.0, 31);
    let catalog = catalog(PROMOTIONS);
    let expected = expected_by_user(&catalog.load(), &events);

    let (kafka, broker, brokers) = broker_with_workers("fatal-produce", 2);
    produce(&brokers, &kafka.input_topic, &events);
    // The next produce request, the processor's first, is answered with a sequence desynchronization at
    // the head of the line: fatal for an idempotent producer.
    broker.cluster().request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_OUT_OF_ORDER_SEQUENCE_NUMBER],
    );
    let failing = Running::start(&kafka, &brokers, catalog.clone());
    let metrics = failing.metrics.clone();
    let error = failing
        .wait_stopped(SECONDS_30)
        .expect_err("a processor whose producer failed fatally must not go on");
    let message = geopromo::error::error_chain(&error);
    // The send refused after the fatal error, not a timeout or a checkpoint that went on regardless.
    assert!(
        message.contains("while producing") && message.contains("Fatal"),
        "{message}"
    );
    assert!(metrics.consumed.get() > 0, "it had started on the backlog");

    let restarted = Running::start(&kafka, &brokers, catalog.clone());
    assert_reference_outputs_arrive(&brokers, &kafka, &expected);
    restarted.stop();
}
